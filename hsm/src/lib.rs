//! RA and CA keys behind one interface.
//!
//! The SCEP protocol code never knows where a private key lives: a PKCS#8 file in
//! this process ([`software::SoftwareKey`]) or a PKCS#11 token (the HSM backend, which
//! implements the same [`Key`] trait). That seam is what lets an operator move the RA
//! key into an HSM, or rotate it, by editing configuration instead of reinstalling.
//!
//! A key does exactly the two private operations an RA or CA needs:
//! - [`Key::sign`]: the RA signs every CertRep (RFC 8894 §3.3.2), the CA signs certificates
//!   and CRLs;
//! - [`Key::decrypt`]: the RA unwraps the content-encryption key of a request's
//!   EnvelopedData (RFC 5652 §6.2.1, key transport). Only the key unwrap happens here; the
//!   symmetric decryption of the content runs in the caller, in software.
//!
//! Calls block (an HSM round trip, or a few hundred microseconds of RSA): async callers run
//! them on a blocking pool, never on a reactor thread.
#![forbid(unsafe_code)]

pub mod observe;
pub mod pkcs11;
pub mod software;

use std::fmt;

pub use pkcs11::{Pkcs11Key, Pkcs11KeyConfig};
pub use software::SoftwareKey;
pub use zeroize::Zeroizing;

/// What kind of key pair this is: it decides which signature algorithms and which
/// decryption paddings make sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// An RSA key with a modulus of `bits` bits.
    Rsa { bits: usize },
    /// An ECDSA key on NIST P-256.
    EcP256,
    /// An ECDSA key on NIST P-384.
    EcP384,
}

impl KeyAlgorithm {
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyAlgorithm::Rsa { .. })
    }
}

/// A digest-and-sign algorithm. The key hashes `message` itself, so an HSM can use its
/// combined mechanisms (CKM_SHA256_RSA_PKCS, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureAlgorithm {
    RsaPkcs1Sha256,
    RsaPkcs1Sha384,
    RsaPkcs1Sha512,
    /// ECDSA with SHA-256; the signature is the DER `Ecdsa-Sig-Value` (RFC 5480 §2.2),
    /// which X.509 and CMS carry.
    EcdsaSha256,
    /// ECDSA with SHA-384, DER encoded.
    EcdsaSha384,
}

impl SignatureAlgorithm {
    /// The operation as observers name it, `sign/<mechanism>` (a static string: no
    /// allocation per operation).
    pub fn operation(self) -> &'static str {
        match self {
            SignatureAlgorithm::RsaPkcs1Sha256 => "sign/sha256-rsa-pkcs",
            SignatureAlgorithm::RsaPkcs1Sha384 => "sign/sha384-rsa-pkcs",
            SignatureAlgorithm::RsaPkcs1Sha512 => "sign/sha512-rsa-pkcs",
            SignatureAlgorithm::EcdsaSha256 => "sign/ecdsa-sha256",
            SignatureAlgorithm::EcdsaSha384 => "sign/ecdsa-sha384",
        }
    }
}

/// The padding of an RSA key-transport ciphertext (RFC 5652 §6.2.1 keyEncryptionAlgorithm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecryptPadding {
    /// rsaEncryption: PKCS#1 v1.5, what Intune, Jamf, Apple and most clients send.
    Pkcs1v15,
    /// RSAES-OAEP with SHA-1 and MGF1-SHA-1 (RFC 3560's default parameters).
    OaepSha1,
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256.
    OaepSha256,
}

impl DecryptPadding {
    /// The operation as observers name it, `decrypt/<mechanism>`.
    pub fn operation(self) -> &'static str {
        match self {
            DecryptPadding::Pkcs1v15 => "decrypt/rsa-pkcs",
            DecryptPadding::OaepSha1 => "decrypt/rsa-pkcs-oaep-sha1",
            DecryptPadding::OaepSha256 => "decrypt/rsa-pkcs-oaep-sha256",
        }
    }
}

/// Why a private-key operation did not happen.
///
/// Deliberately coarse: callers map every decryption failure to one answer (no padding
/// oracle), and no variant ever carries key material, a PIN or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the key file {path} could not be read: {reason}")]
    Load { path: String, reason: String },
    #[error("the key cannot do this: {0}")]
    Unsupported(&'static str),
    #[error("the private-key operation failed")]
    Operation,
    #[error("the key is unavailable: {0}")]
    Unavailable(String),
}

/// One private key, wherever it lives.
pub trait Key: Send + Sync + fmt::Debug {
    /// A name for logs and metrics (a file path or a token label), never secret.
    fn label(&self) -> &str;

    /// The DER `SubjectPublicKeyInfo` of this key, to match it against its certificate.
    fn public_key_info(&self) -> &[u8];

    fn algorithm(&self) -> KeyAlgorithm;

    /// Signs `message` (hashing it first, as `alg` says).
    fn sign(&self, alg: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, KeyError>;

    /// Decrypts a key-transport ciphertext. Returns [`KeyError::Operation`] for every
    /// decryption failure, whatever its cause.
    fn decrypt(
        &self,
        padding: DecryptPadding,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError>;

    /// Whether the key can be used right now: a cheap round trip to where it lives
    /// (readiness probes call it). Keys in this process are always ready.
    fn health(&self) -> Result<(), KeyError> {
        Ok(())
    }
}
