//! EnvelopedData (RFC 5652 §6): opened with the RA's decryption key, sealed to a
//! requester's certificate.
//!
//! SCEP puts the pkcsPKIEnvelope, a `ContentInfo { envelopedData }`, as the eContent
//! of the signed pkiMessage (RFC 8894 §3.2.2); requests and replies (the captured
//! micromdm CertReps too) look the same, so [`seal`] returns that ContentInfo and
//! [`open`] accepts it (or a bare EnvelopedData, leniently).
//!
//! ## No padding oracle
//! Once the algorithms are accepted, every failure (RSA unwrap, content-encryption key
//! length, CBC padding, and whatever the caller finds wrong in the plaintext) yields
//! the one [`Error::Undecryptable`]. When the RSA unwrap fails, a random key of the
//! right length takes its place and the symmetric decryption runs anyway (implicit
//! rejection), so that neither the answer nor the work done tells a Bleichenbacher
//! attacker whether the PKCS#1 padding was valid.

use aws_lc_rs::cipher::{
    Algorithm, DecryptionContext, EncryptionContext, PaddedBlockDecryptingKey,
    PaddedBlockEncryptingKey, UnboundCipherKey, AES_128, AES_192, AES_256,
};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::Pkcs1PublicEncryptingKey;
use const_oid::ObjectIdentifier;
use scep_hsm::{DecryptPadding, KeyError, Zeroizing};

use crate::cms::algorithms::{ContentCipher, Digest};
use crate::cms::ber::{self, tag, Tlv};
use crate::cms::signed::{self, content_info, digest_from_oid, CertificateFields, SignerId};
use crate::error::{Error, Result};
use crate::ra::Credential;

/// Content-encryption and key-transport algorithm identifiers.
pub mod oid {
    use const_oid::ObjectIdentifier;

    /// aes128-CBC, aes192-CBC, aes256-CBC (RFC 3565 §4.1).
    pub const AES128_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.2");
    pub const AES192_CBC: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.22");
    pub const AES256_CBC: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");
    /// des-ede3-cbc (RFC 3370 §5.1).
    pub const DES_EDE3_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.3.7");
    /// desCBC (OIW).
    pub const DES_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.7");
    /// id-RSAES-OAEP (RFC 3560 §2.2, RFC 8017 appendix A.2.1).
    pub const RSAES_OAEP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.7");
    /// id-mgf1.
    pub const MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
    /// id-pSpecified.
    pub const P_SPECIFIED: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.9");
}

/// The OID naming `cipher` in a contentEncryptionAlgorithm.
pub fn cipher_oid(cipher: ContentCipher) -> ObjectIdentifier {
    match cipher {
        ContentCipher::DesCbc => oid::DES_CBC,
        ContentCipher::DesEde3Cbc => oid::DES_EDE3_CBC,
        ContentCipher::Aes128Cbc => oid::AES128_CBC,
        ContentCipher::Aes192Cbc => oid::AES192_CBC,
        ContentCipher::Aes256Cbc => oid::AES256_CBC,
    }
}

/// The cipher a contentEncryptionAlgorithm OID names, if we know it.
pub fn cipher_from_oid(o: &ObjectIdentifier) -> Option<ContentCipher> {
    [
        ContentCipher::DesCbc,
        ContentCipher::DesEde3Cbc,
        ContentCipher::Aes128Cbc,
        ContentCipher::Aes192Cbc,
        ContentCipher::Aes256Cbc,
    ]
    .into_iter()
    .find(|c| cipher_oid(*c) == *o)
}

/// The aws-lc-rs algorithm for `cipher`. DES and 3DES are deprecated in aws-lc-rs,
/// and allowed here only behind `CryptoPolicy::legacy_des`, decided by the caller.
#[allow(deprecated)]
fn aws_algorithm(cipher: ContentCipher) -> &'static Algorithm {
    use aws_lc_rs::cipher::{DES_EDE3_FOR_LEGACY_USE_ONLY, DES_FOR_LEGACY_USE_ONLY};
    match cipher {
        ContentCipher::DesCbc => &DES_FOR_LEGACY_USE_ONLY,
        ContentCipher::DesEde3Cbc => &DES_EDE3_FOR_LEGACY_USE_ONLY,
        ContentCipher::Aes128Cbc => &AES_128,
        ContentCipher::Aes192Cbc => &AES_192,
        ContentCipher::Aes256Cbc => &AES_256,
    }
}

/// Key length in bytes.
pub fn key_len(cipher: ContentCipher) -> usize {
    match cipher {
        ContentCipher::DesCbc => 8,
        ContentCipher::DesEde3Cbc => 24,
        ContentCipher::Aes128Cbc => 16,
        ContentCipher::Aes192Cbc => 24,
        ContentCipher::Aes256Cbc => 32,
    }
}

/// Block (and IV) length in bytes.
pub fn block_len(cipher: ContentCipher) -> usize {
    if cipher.is_legacy() {
        8
    } else {
        16
    }
}

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

/// One KeyTransRecipientInfo (RFC 5652 §6.2.1).
#[derive(Debug, Clone)]
struct KeyTransRecipient {
    rid: SignerId,
    /// The padding, or why the keyEncryptionAlgorithm is not acceptable.
    padding: std::result::Result<DecryptPadding, String>,
    encrypted_key: Vec<u8>,
}

/// An EnvelopedData, parsed but not decrypted.
#[derive(Debug, Clone)]
pub struct EnvelopedData {
    recipients: Vec<KeyTransRecipient>,
    /// The contentEncryptionAlgorithm OID.
    pub cipher_oid: ObjectIdentifier,
    /// Its parameters element as received (the IV OCTET STRING for CBC).
    cipher_params: Option<Vec<u8>>,
    /// encryptedContent, reassembled; `None` if absent (detached).
    encrypted_content: Option<Vec<u8>>,
}

impl EnvelopedData {
    /// Parses a `ContentInfo { envelopedData }` or a bare EnvelopedData.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let outer = ber::parse(bytes)?;
        let mut fields = outer.sequence("ContentInfo")?;
        match fields.peek_tag() {
            Some(tag::OID) => {
                if fields.required("contentType")?.oid()? != signed::oid::ENVELOPED_DATA {
                    return Err(Error::Malformed("not an EnvelopedData".into()));
                }
                let ed = fields.required("content")?.explicit(0, "content")?;
                Self::parse_enveloped(ed)
            }
            _ => Self::parse_enveloped(outer),
        }
    }

    /// `EnvelopedData ::= SEQUENCE { version, originatorInfo [0] IMPLICIT OPTIONAL,
    /// recipientInfos SET OF RecipientInfo, encryptedContentInfo, unprotectedAttrs [1]
    /// IMPLICIT OPTIONAL }`.
    fn parse_enveloped(ed: Tlv<'_>) -> Result<Self> {
        let mut fields = ed.sequence("EnvelopedData")?;
        fields.required("version")?.small_uint()?;
        fields.optional_context(0)?;
        let mut recipients = Vec::new();
        let mut infos = fields.required("recipientInfos")?.set("recipientInfos")?;
        while let Some(ri) = infos.next_tlv()? {
            // Only ktri is an untagged SEQUENCE; kari [1], kekri [2], pwri [3] and
            // ori [4] are skipped: SCEP uses key transport (RFC 8894 §3.2.2).
            if ri.tag() == tag::SEQUENCE {
                recipients.push(parse_ktri(ri)?);
            }
        }
        let mut eci = fields
            .required("encryptedContentInfo")?
            .sequence("EncryptedContentInfo")?;
        eci.required("contentType")?.oid()?;
        let mut alg = eci
            .required("contentEncryptionAlgorithm")?
            .sequence("AlgorithmIdentifier")?;
        let cipher_oid = alg.required("algorithm")?.oid()?;
        let cipher_params = alg.next_tlv()?.map(|p| p.raw().to_vec());
        // encryptedContent [0] IMPLICIT OCTET STRING: primitive (0x80) or, as micromdm
        // scepclient sends it, constructed (0xA0) with OCTET STRING segments.
        let encrypted_content = match eci.optional_context(0)? {
            Some(ec) => Some(ec.implicit_octet_string(0)?.into_owned()),
            None => None,
        };
        Ok(EnvelopedData {
            recipients,
            cipher_oid,
            cipher_params,
            encrypted_content,
        })
    }

    /// The content cipher, if known.
    pub fn cipher(&self) -> Option<ContentCipher> {
        cipher_from_oid(&self.cipher_oid)
    }

    /// The IV: `OCTET STRING` parameters of the block length (RFC 3565 §4.1,
    /// RFC 3370 §5.1).
    fn iv(&self, cipher: ContentCipher) -> Option<Vec<u8>> {
        let params = ber::parse(self.cipher_params.as_deref()?).ok()?;
        let iv = params.octet_string().ok()?;
        (iv.len() == block_len(cipher)).then(|| iv.into_owned())
    }

    /// The first candidate credential that a RecipientInfo names, with that
    /// RecipientInfo; else the first candidate with the first RecipientInfo: clients
    /// address the RA certificate they chose, and some name it oddly.
    fn addressed<'c>(
        &self,
        candidates: &[&'c Credential],
    ) -> Option<(&'c Credential, &KeyTransRecipient)> {
        for candidate in candidates {
            let Ok(fields) = CertificateFields::parse(&candidate.certificate) else {
                continue;
            };
            if let Some(r) = self.recipients.iter().find(|r| fields.matches(&r.rid)) {
                return Some((candidate, r));
            }
        }
        Some((*candidates.first()?, self.recipients.first()?))
    }
}

/// `KeyTransRecipientInfo ::= SEQUENCE { version, rid, keyEncryptionAlgorithm,
/// encryptedKey OCTET STRING }`.
fn parse_ktri(tlv: Tlv<'_>) -> Result<KeyTransRecipient> {
    let mut fields = tlv.sequence("KeyTransRecipientInfo")?;
    fields.required("version")?.small_uint()?;
    let rid = SignerId::parse(fields.required("rid")?)?;
    let padding = key_transport_padding(fields.required("keyEncryptionAlgorithm")?)?;
    let encrypted_key = fields
        .required("encryptedKey")?
        .octet_string()?
        .into_owned();
    Ok(KeyTransRecipient {
        rid,
        padding,
        encrypted_key,
    })
}

/// rsaEncryption → PKCS#1 v1.5; id-RSAES-OAEP → OAEP with SHA-1 (the RFC 3560 §3
/// defaults, also when the parameters are absent) or SHA-256 for both the hash and
/// MGF1. Anything else is an algorithm we refuse (Ok(Err(..))), decided before any
/// private-key operation.
fn key_transport_padding(alg: Tlv<'_>) -> Result<std::result::Result<DecryptPadding, String>> {
    let mut fields = alg.sequence("AlgorithmIdentifier")?;
    let o = fields.required("algorithm")?.oid()?;
    if o == signed::oid::RSA_ENCRYPTION {
        return Ok(Ok(DecryptPadding::Pkcs1v15));
    }
    if o != oid::RSAES_OAEP {
        return Ok(Err(format!("key transport {o}")));
    }
    let params = match fields.next_tlv()? {
        None => return Ok(Ok(DecryptPadding::OaepSha1)),
        Some(p) if p.tag() == tag::NULL => return Ok(Ok(DecryptPadding::OaepSha1)),
        Some(p) => p,
    };
    let mut items = params.sequence("RSAES-OAEP-params")?;
    let mut hash = Digest::Sha1;
    let mut mgf_hash = Digest::Sha1;
    if let Some(h) = items.optional(tag::context_constructed(0))? {
        let o = algorithm_oid(h.explicit(0, "hashAlgorithm")?)?;
        hash = match digest_from_oid(&o) {
            Some(d) => d,
            None => return Ok(Err(format!("OAEP hash {o}"))),
        };
    }
    if let Some(m) = items.optional(tag::context_constructed(1))? {
        let mut mgf = m.explicit(1, "maskGenAlgorithm")?.sequence("MGF")?;
        if mgf.required("algorithm")?.oid()? != oid::MGF1 {
            return Ok(Err("OAEP mask generation function".into()));
        }
        let o = algorithm_oid(mgf.required("MGF1 hash")?)?;
        mgf_hash = match digest_from_oid(&o) {
            Some(d) => d,
            None => return Ok(Err(format!("MGF1 hash {o}"))),
        };
    }
    if let Some(p) = items.optional(tag::context_constructed(2))? {
        // Only the empty label (pSpecifiedEmpty) is supported.
        let mut source = p.explicit(2, "pSourceAlgorithm")?.sequence("pSource")?;
        let is_specified = source.required("algorithm")?.oid()? == oid::P_SPECIFIED;
        let label_empty = match source.next_tlv()? {
            Some(l) => l.octet_string()?.is_empty(),
            None => true,
        };
        if !(is_specified && label_empty) {
            return Ok(Err("OAEP with a label".into()));
        }
    }
    Ok(match (hash, mgf_hash) {
        (Digest::Sha1, Digest::Sha1) => Ok(DecryptPadding::OaepSha1),
        (Digest::Sha256, Digest::Sha256) => Ok(DecryptPadding::OaepSha256),
        (h, m) => Err(format!("OAEP with {h:?} and MGF1-{m:?}")),
    })
}

fn algorithm_oid(tlv: Tlv<'_>) -> Result<ObjectIdentifier> {
    Ok(tlv
        .sequence("AlgorithmIdentifier")?
        .required("algorithm")?
        .oid()?)
}

// ---------------------------------------------------------------------------------------
// Opening
// ---------------------------------------------------------------------------------------

/// A decrypted envelope.
#[derive(Debug)]
pub struct Opened {
    /// The content cipher the sender used (a reply uses the same).
    pub cipher: ContentCipher,
    /// The plaintext, wiped on drop (a CSR carries the challenge password).
    pub content: Zeroizing<Vec<u8>>,
}

/// Decrypts an envelope with the RA's decryption credential.
///
/// Errors, in the order they are decided:
/// - [`Error::Undecryptable`] if the structure cannot be read (the envelope sits
///   inside a verified signature, so this reveals nothing; a CertRep FAILURE
///   badMessageCheck is still possible);
/// - [`Error::UnsupportedAlgorithm`] for an unknown content cipher, DES/3DES without
///   `legacy_des`, or a key transport other than RSA PKCS#1 v1.5 / OAEP (SHA-1,
///   SHA-256): all decided from the algorithm identifiers, before the private key is
///   touched;
/// - [`Error::Unavailable`] if the RA key cannot be used at all now (HSM down);
/// - [`Error::Undecryptable`] for everything else, uniformly (see the module docs).
pub fn open(bytes: &[u8], decrypter: &Credential, legacy_des: bool) -> Result<Opened> {
    open_for(bytes, &[decrypter], legacy_des)
}

/// [`open`] with several candidate credentials (the current RA encryption key and
/// earlier ones during a rollover): the credential whose certificate a RecipientInfo
/// names opens it; when none is named, the first candidate tries the first
/// RecipientInfo. Which key was tried is decided from the rids alone, before any
/// private-key operation, so the answer stays uniform.
pub fn open_for(bytes: &[u8], candidates: &[&Credential], legacy_des: bool) -> Result<Opened> {
    let envelope = EnvelopedData::parse(bytes).map_err(|_| Error::Undecryptable)?;
    let cipher = envelope.cipher().ok_or_else(|| {
        Error::UnsupportedAlgorithm(format!("content encryption {}", envelope.cipher_oid))
    })?;
    if cipher.is_legacy() && !legacy_des {
        return Err(Error::UnsupportedAlgorithm(format!(
            "{} is disabled (crypto.legacy_des)",
            cipher.name()
        )));
    }
    let (decrypter, recipient) = envelope
        .addressed(candidates)
        .ok_or_else(|| Error::UnsupportedAlgorithm("no key transport recipient".into()))?;
    let padding = recipient
        .padding
        .clone()
        .map_err(Error::UnsupportedAlgorithm)?;

    // From here on, every failure is Error::Undecryptable.
    let (cek, unwrapped) = unwrap_key(decrypter, padding, &recipient.encrypted_key, cipher)?;
    let plaintext = decrypt_content(
        cipher,
        &cek,
        envelope.iv(cipher).as_deref(),
        envelope.encrypted_content.as_deref(),
    );
    match (unwrapped, plaintext) {
        (true, Some(content)) => Ok(Opened { cipher, content }),
        _ => Err(Error::Undecryptable),
    }
}

/// RSA-unwraps the content-encryption key. On any decryption failure, or a key of the
/// wrong length, returns a random key instead and `false` (implicit rejection): the
/// caller runs the symmetric decryption either way. Only an RA key that cannot work
/// at all (HSM unavailable, wrong key type) is an error, and it does not depend on the
/// ciphertext.
fn unwrap_key(
    decrypter: &Credential,
    padding: DecryptPadding,
    encrypted_key: &[u8],
    cipher: ContentCipher,
) -> Result<(Zeroizing<Vec<u8>>, bool)> {
    let fake = random_key(cipher)?;
    match decrypter.key.decrypt(padding, encrypted_key) {
        Ok(cek) if cek.len() == key_len(cipher) => Ok((cek, true)),
        Ok(_) | Err(KeyError::Operation) => Ok((fake, false)),
        // The key cannot do this padding at all (a token without OAEP, or OAEP with
        // SHA-256 on SoftHSM2): decided by the mechanism, which the algorithm identifier
        // names, never by the ciphertext, so saying so is no oracle. badAlg, not a 503 the
        // client would retry forever.
        Err(KeyError::Unsupported(what)) => Err(Error::UnsupportedAlgorithm(format!(
            "the RA decryption key cannot do this key transport: {what}"
        ))),
        Err(e @ (KeyError::Unavailable(_) | KeyError::Load { .. })) => {
            Err(Error::Unavailable(format!("the RA decryption key: {e}")))
        }
    }
}

/// CBC-decrypts and unpads; `None` on any failure (no detail on purpose).
fn decrypt_content(
    cipher: ContentCipher,
    key: &[u8],
    iv: Option<&[u8]>,
    ciphertext: Option<&[u8]>,
) -> Option<Zeroizing<Vec<u8>>> {
    let unbound = UnboundCipherKey::new(aws_algorithm(cipher), key).ok()?;
    let decrypting = PaddedBlockDecryptingKey::cbc_pkcs7(unbound).ok()?;
    let context = match iv? {
        iv if iv.len() == 16 => DecryptionContext::Iv128(FixedLength::try_from(iv).ok()?),
        iv => DecryptionContext::Iv64(FixedLength::try_from(iv).ok()?),
    };
    let mut buffer = Zeroizing::new(ciphertext?.to_vec());
    let len = decrypting.decrypt(&mut buffer, context).ok()?.len();
    buffer.truncate(len);
    Some(buffer)
}

/// A fresh random key for `cipher`. DES keys get odd parity (FIPS 46-3 §3) and are
/// drawn again if weak or semi-weak (aws-lc refuses those, and so would some clients).
fn random_key(cipher: ContentCipher) -> Result<Zeroizing<Vec<u8>>> {
    for _ in 0..16 {
        let mut key = Zeroizing::new(vec![0u8; key_len(cipher)]);
        aws_lc_rs::rand::fill(&mut key)
            .map_err(|_| Error::Unavailable("the system RNG failed".into()))?;
        if cipher.is_legacy() {
            set_odd_parity(&mut key);
        }
        let usable = UnboundCipherKey::new(aws_algorithm(cipher), &key)
            .ok()
            .and_then(|k| PaddedBlockEncryptingKey::cbc_pkcs7(k).ok())
            .is_some();
        if usable {
            return Ok(key);
        }
    }
    Err(Error::Unavailable("no usable random key".into()))
}

/// Sets each byte's low bit so that the byte has an odd number of one bits.
fn set_odd_parity(key: &mut [u8]) {
    for b in key.iter_mut() {
        let high = *b & 0xfe;
        *b = high | u8::from(high.count_ones() % 2 == 0);
    }
}

// ---------------------------------------------------------------------------------------
// Sealing
// ---------------------------------------------------------------------------------------

/// Encrypts `content` to the RSA key of `recipient_certificate_der` and returns the DER
/// `ContentInfo { envelopedData }` (RFC 5652 §6, RFC 8894 §3.2.2):
/// a random content-encryption key and IV, CBC with PKCS#7 padding, the key
/// transported with RSA PKCS#1 v1.5 (rsaEncryption, what every SCEP client decrypts),
/// and the rid an IssuerAndSerialNumber copied from the certificate's own bytes.
///
/// The recipient key must be RSA of 2048 to 8192 bits (aws-lc-rs refuses smaller
/// keys for encryption): anything else is [`Error::UnsupportedAlgorithm`].
pub fn seal(
    content: &[u8],
    recipient_certificate_der: &[u8],
    cipher: ContentCipher,
) -> Result<Vec<u8>> {
    let cert = CertificateFields::parse(recipient_certificate_der)
        .map_err(|e| Error::Malformed(format!("recipient certificate: {e}")))?;
    let rsa = recipient_key(cert.spki)?;

    let cek = random_key(cipher)?;
    let mut iv = vec![0u8; block_len(cipher)];
    aws_lc_rs::rand::fill(&mut iv)
        .map_err(|_| Error::Unavailable("the system RNG failed".into()))?;
    let ciphertext = encrypt_content(cipher, &cek, &iv, content)?;

    let mut encrypted_key = vec![0u8; rsa.ciphertext_size()];
    let encrypted_key = rsa
        .encrypt(&cek, &mut encrypted_key)
        .map_err(|_| Error::Unavailable("RSA encryption failed".into()))?
        .to_vec();

    let ktri = ber::der_sequence(&[
        &ber::der_small_uint(0),
        &cert.issuer_and_serial_der(),
        &ber::der_sequence(&[&ber::der_oid(&signed::oid::RSA_ENCRYPTION), &ber::DER_NULL]),
        &ber::der_octet_string(&encrypted_key),
    ]);
    let encrypted_content_info = ber::der_sequence(&[
        &ber::der_oid(&signed::oid::DATA),
        &ber::der_sequence(&[
            &ber::der_oid(&cipher_oid(cipher)),
            &ber::der_octet_string(&iv),
        ]),
        &ber::der_tlv(tag::context_primitive(0), &[&ciphertext]),
    ]);
    // RFC 5652 §6.1: version 0 with only ktri version 0 and no originatorInfo.
    let enveloped = ber::der_sequence(&[
        &ber::der_small_uint(0),
        &ber::der_set_of(vec![ktri]),
        &encrypted_content_info,
    ]);
    Ok(content_info(&signed::oid::ENVELOPED_DATA, &enveloped))
}

/// Whether [`seal`] can encrypt to this certificate's key, decided without encrypting:
/// `Error::UnsupportedAlgorithm` unless it is RSA of 2048 to 8192 bits. A CertRep
/// SUCCESS is sealed to the requester's signer certificate (RFC 8894 §3.3.2), so a
/// request signed with any other key can only ever be answered with a FAILURE.
pub fn check_recipient(recipient_certificate_der: &[u8]) -> Result<()> {
    let cert = CertificateFields::parse(recipient_certificate_der)
        .map_err(|e| Error::Malformed(format!("recipient certificate: {e}")))?;
    recipient_key(cert.spki).map(|_| ())
}

fn recipient_key(spki: &[u8]) -> Result<Pkcs1PublicEncryptingKey> {
    let public = super::public_keys::encrypting_key(spki).map_err(|e| {
        Error::UnsupportedAlgorithm(format!(
            "the recipient key is not RSA of 2048 bits or more: {e}"
        ))
    })?;
    Pkcs1PublicEncryptingKey::new(public)
        .map_err(|_| Error::UnsupportedAlgorithm("RSA key transport".into()))
}

fn encrypt_content(
    cipher: ContentCipher,
    key: &[u8],
    iv: &[u8],
    content: &[u8],
) -> Result<Vec<u8>> {
    let fail = || Error::Unavailable("content encryption failed".into());
    let unbound = UnboundCipherKey::new(aws_algorithm(cipher), key).map_err(|_| fail())?;
    let encrypting = PaddedBlockEncryptingKey::cbc_pkcs7(unbound).map_err(|_| fail())?;
    let context = if iv.len() == 16 {
        EncryptionContext::Iv128(FixedLength::try_from(iv).map_err(|_| fail())?)
    } else {
        EncryptionContext::Iv64(FixedLength::try_from(iv).map_err(|_| fail())?)
    };
    let mut buffer = content.to_vec();
    encrypting
        .less_safe_encrypt(&mut buffer, context)
        .map_err(|_| fail())?;
    Ok(buffer)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cms::signed::SignedData;
    use std::path::Path;
    use std::sync::Arc;

    fn data(name: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data")
                .join(name),
        )
        .unwrap()
    }

    /// Loads a PKCS#8 key, or a PKCS#1 one (scepclient's) wrapped into PKCS#8 here.
    pub(crate) fn credential(key: &str, cert_der: Vec<u8>) -> Credential {
        let pem = data(key);
        let (label, der) = der::pem::decode_vec(&pem).unwrap();
        let pkcs8 = match label {
            "PRIVATE KEY" => der,
            "RSA PRIVATE KEY" => ber::der_sequence(&[
                &ber::der_small_uint(0),
                &ber::der_sequence(&[&ber::der_oid(&signed::oid::RSA_ENCRYPTION), &ber::DER_NULL]),
                &ber::der_octet_string(&der),
            ]),
            other => panic!("unexpected PEM label {other}"),
        };
        Credential {
            key: Arc::new(scep_hsm::SoftwareKey::from_pkcs8(key.into(), &pkcs8).unwrap()),
            certificate: cert_der.into(),
        }
    }

    fn ra() -> Credential {
        let pem = data("ra-ca.pem");
        let (_, der) = der::pem::decode_vec(&pem).unwrap();
        credential("ra-ca.key.pem", der)
    }

    fn envelope_of(request: &str) -> Vec<u8> {
        SignedData::parse(&data(request)).unwrap().content.unwrap()
    }

    #[test]
    fn opens_captured_requests() {
        let ra = ra();
        let opened = open(&envelope_of("scepclient-pkcsreq.der"), &ra, true).unwrap();
        assert_eq!(opened.cipher, ContentCipher::DesCbc);
        assert_eq!(opened.content[0], 0x30);
        let opened = open(&envelope_of("certmonger-pkcsreq.der"), &ra, false).unwrap();
        assert_eq!(opened.cipher, ContentCipher::Aes256Cbc);
        assert_eq!(opened.content[0], 0x30);
    }

    #[test]
    fn des_is_refused_without_the_legacy_switch() {
        assert!(matches!(
            open(&envelope_of("scepclient-pkcsreq.der"), &ra(), false),
            Err(Error::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn seal_then_open_every_cipher() {
        // The RA's own certificate and key serve as the recipient here.
        let ra = ra();
        for cipher in [
            ContentCipher::DesCbc,
            ContentCipher::DesEde3Cbc,
            ContentCipher::Aes128Cbc,
            ContentCipher::Aes192Cbc,
            ContentCipher::Aes256Cbc,
        ] {
            for len in [0usize, 1, 15, 16, 17, 1000] {
                let content = vec![0x5a; len];
                let sealed = seal(&content, &ra.certificate, cipher).unwrap();
                let opened = open(&sealed, &ra, true).unwrap();
                assert_eq!(opened.cipher, cipher);
                assert_eq!(&opened.content[..], &content[..]);
            }
        }
    }

    #[test]
    fn check_recipient_agrees_with_seal() {
        let rsa = ra().certificate;
        assert!(check_recipient(&rsa).is_ok());
        assert!(seal(b"x", &rsa, ContentCipher::Aes128Cbc).is_ok());

        let key: Arc<dyn scep_hsm::Key> =
            Arc::new(scep_hsm::SoftwareKey::generate_p256("ec".into()).unwrap());
        let name = crate::ca::certificate::common_name("ec").unwrap();
        let ec = crate::scep::client::Requester::self_signed(key, &name)
            .unwrap()
            .credential
            .certificate;
        assert!(matches!(
            check_recipient(&ec),
            Err(Error::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            seal(b"x", &ec, ContentCipher::Aes128Cbc),
            Err(Error::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn random_des_keys_have_odd_parity() {
        for _ in 0..50 {
            let key = random_key(ContentCipher::DesEde3Cbc).unwrap();
            assert!(key.iter().all(|b| b.count_ones() % 2 == 1));
        }
    }

    /// Every failure after the algorithm check is the same Error::Undecryptable.
    #[test]
    fn no_padding_oracle() {
        let ra = ra();
        let sealed = seal(b"a secret CSR", &ra.certificate, ContentCipher::Aes128Cbc).unwrap();
        let env = EnvelopedData::parse(&sealed).unwrap();
        let key = env.recipients[0].encrypted_key.clone();
        let ct = env.encrypted_content.clone().unwrap();

        let find = |needle: &[u8]| {
            sealed
                .windows(needle.len())
                .position(|w| w == needle)
                .unwrap()
        };
        // Tampered RSA-encrypted key.
        let mut bad_key = sealed.clone();
        let at = find(&key);
        bad_key[at + 7] ^= 0x40;
        // Broken CBC padding, deterministically: the 12-byte content is one block ending
        // in four 0x04 bytes, and flipping the IV's last bit makes the last one 0x05. (A
        // tampered ciphertext block would decrypt to random bytes, whose padding is
        // valid about once in 256 runs.)
        assert_eq!(ct.len(), 16);
        let iv = env.cipher_params.clone().unwrap();
        let mut bad_block = sealed.clone();
        let at = find(&iv) + iv.len() - 1;
        bad_block[at] ^= 0x01;
        // Truncated content: drop the last block and fix the lengths by rebuilding.
        let truncated = {
            let mut e = env.clone();
            let c = e.encrypted_content.as_mut().unwrap();
            c.truncate(c.len() - 16);
            rebuild(&e, &ra)
        };
        let empty = {
            let mut e = env.clone();
            e.encrypted_content = Some(Vec::new());
            rebuild(&e, &ra)
        };
        // Another RA key (the certmonger client's): RSA unwrap fails.
        let other = {
            let req = SignedData::parse(&data("certmonger-pkcsreq.der")).unwrap();
            credential("certmonger-client.key.pem", req.certificates[0].clone())
        };
        for (what, bytes, cred) in [
            ("tampered key", &bad_key, &ra),
            ("tampered block", &bad_block, &ra),
            ("truncated", &truncated, &ra),
            ("empty", &empty, &ra),
            ("wrong RA key", &sealed, &other),
        ] {
            match open(bytes, cred, true) {
                Err(Error::Undecryptable) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    /// Re-encodes a parsed envelope (for the tests that need consistent lengths).
    fn rebuild(e: &EnvelopedData, _ra: &Credential) -> Vec<u8> {
        let r = &e.recipients[0];
        let SignerId::IssuerAndSerial { issuer, serial } = &r.rid else {
            panic!()
        };
        let ktri = ber::der_sequence(&[
            &ber::der_small_uint(0),
            &ber::der_sequence(&[issuer, &ber::der_tlv(tag::INTEGER, &[serial])]),
            &ber::der_sequence(&[&ber::der_oid(&signed::oid::RSA_ENCRYPTION), &ber::DER_NULL]),
            &ber::der_octet_string(&r.encrypted_key),
        ]);
        let eci = ber::der_sequence(&[
            &ber::der_oid(&signed::oid::DATA),
            &ber::der_sequence(&[
                &ber::der_oid(&e.cipher_oid),
                e.cipher_params.as_ref().unwrap(),
            ]),
            &ber::der_tlv(
                tag::context_primitive(0),
                &[e.encrypted_content.as_ref().unwrap()],
            ),
        ]);
        let ed = ber::der_sequence(&[&ber::der_small_uint(0), &ber::der_set_of(vec![ktri]), &eci]);
        content_info(&signed::oid::ENVELOPED_DATA, &ed)
    }

    #[test]
    fn oaep_parameters() {
        let sha256_params = {
            let sha256 = ber::der_sequence(&[&ber::der_oid(&signed::oid::SHA256)]);
            let hash = ber::der_tlv(tag::context_constructed(0), &[&sha256]);
            let mgf = ber::der_tlv(
                tag::context_constructed(1),
                &[&ber::der_sequence(&[&ber::der_oid(&oid::MGF1), &sha256])],
            );
            ber::der_sequence(&[&hash, &mgf])
        };
        let cases: [(Vec<u8>, Option<DecryptPadding>); 4] = [
            (
                ber::der_sequence(&[&ber::der_oid(&oid::RSAES_OAEP)]),
                Some(DecryptPadding::OaepSha1),
            ),
            (
                ber::der_sequence(&[&ber::der_oid(&oid::RSAES_OAEP), &ber::der_sequence(&[])]),
                Some(DecryptPadding::OaepSha1),
            ),
            (
                ber::der_sequence(&[&ber::der_oid(&oid::RSAES_OAEP), &sha256_params]),
                Some(DecryptPadding::OaepSha256),
            ),
            (ber::der_sequence(&[&ber::der_oid(&oid::DES_CBC)]), None),
        ];
        for (alg, expected) in cases {
            let got = key_transport_padding(ber::parse(&alg).unwrap())
                .unwrap()
                .ok();
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn opens_micromdm_replies_with_the_client_keys() {
        for (reply, key) in [
            ("scepclient-certrep.der", "scepclient-client.key.pem"),
            ("certmonger-certrep.der", "certmonger-client.key.pem"),
        ] {
            let sd = SignedData::parse(&data(reply)).unwrap();
            let env = EnvelopedData::parse(sd.content.as_ref().unwrap()).unwrap();
            // Any certificate will do: the first RecipientInfo is the fallback.
            let cred = credential(key, sd.certificates[0].clone());
            let opened = open(sd.content.as_ref().unwrap(), &cred, true).unwrap();
            assert_eq!(Some(opened.cipher), env.cipher());
            let certs = SignedData::parse(&opened.content).unwrap().certificates;
            assert!(!certs.is_empty(), "{reply}");
        }
    }
}
