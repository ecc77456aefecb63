//! Algorithm identifiers (RFC 5652 §10, RFC 8894 §3.5.2) and what we accept of them.

/// A message digest, as named by a SignerInfo's digestAlgorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Digest {
    /// Accepted on requests (micromdm scepclient signs with it); never used for replies.
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

/// A content-encryption algorithm of an EnvelopedData (all in CBC mode with PKCS#7
/// padding, RFC 5652 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentCipher {
    /// Single DES: RFC 8894 §3.5.2 says MUST NOT, yet micromdm scepclient and old Cisco
    /// IOS send nothing else. Only with `legacy_des` on.
    DesCbc,
    /// Triple DES (DES-EDE3-CBC): RFC 8894 MAY; legacy, only with `legacy_des` on.
    DesEde3Cbc,
    Aes128Cbc,
    Aes192Cbc,
    Aes256Cbc,
}

impl ContentCipher {
    pub fn is_legacy(self) -> bool {
        matches!(self, ContentCipher::DesCbc | ContentCipher::DesEde3Cbc)
    }

    pub fn name(self) -> &'static str {
        match self {
            ContentCipher::DesCbc => "des-cbc",
            ContentCipher::DesEde3Cbc => "des-ede3-cbc",
            ContentCipher::Aes128Cbc => "aes128-cbc",
            ContentCipher::Aes192Cbc => "aes192-cbc",
            ContentCipher::Aes256Cbc => "aes256-cbc",
        }
    }
}
