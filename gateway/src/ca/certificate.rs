//! The one place that encodes and signs X.509 structures: certificates (RFC 5280 §4.1)
//! and CRLs (RFC 5280 §5.1), for the embedded CA's issuance, its CRL, and the
//! development PKI of `init` alike.
//!
//! Why our own `TBSCertificate` struct instead of x509-cert's: x509-cert 0.3 keeps the
//! fields of `TbsCertificate` crate-private (only its `builder`, which needs a custom
//! profile, can fill them), and its `Name` type re-sorts SET OF on decode, so copying a
//! CSR's subject through it could change the bytes the client asked for. The structs
//! below use x509-cert's and spki's types for everything that we *generate* (validity,
//! extensions, algorithm identifiers) and carry names and public keys as raw DER TLVs,
//! copied byte for byte.
//!
//! The same module also reads certificates leniently ([`ParsedCertificate`]) and checks
//! signatures ([`verify_signature`]), so that the CSR code, the CA and `init` share one
//! algorithm table.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{self as ring_sig, VerificationAlgorithm};
use const_oid::ObjectIdentifier;
use der::asn1::{Any, AnyRef, BitString, BitStringRef, Int, IntRef, Null, OctetString, UintRef};
use der::{Decode, Encode, Reader, Sequence, SliceReader, Tag, TagNumber, Tagged};
use scep_hsm::{Key, KeyAlgorithm, SignatureAlgorithm};
use spki::{AlgorithmIdentifierOwned, AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};
use x509_cert::certificate::{Profile, Rfc5280, Version};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::time::{Time, Validity};

use crate::error::{Error, Result};

/// Object identifiers this module and its users need (RFC 5280, RFC 4055, RFC 5480,
/// RFC 5758, RFC 2985).
pub mod oid {
    use const_oid::ObjectIdentifier as Oid;

    pub const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
    pub const SHA1_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.5");
    pub const SHA256_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
    pub const SHA384_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
    pub const SHA512_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
    pub const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
    pub const SECP256R1: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
    pub const SECP384R1: Oid = Oid::new_unwrap("1.3.132.0.34");
    pub const ECDSA_WITH_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
    pub const ECDSA_WITH_SHA384: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
    pub const ECDSA_WITH_SHA512: Oid = Oid::new_unwrap("1.2.840.10045.4.3.4");

    pub const COMMON_NAME: Oid = Oid::new_unwrap("2.5.4.3");

    pub const SUBJECT_KEY_IDENTIFIER: Oid = Oid::new_unwrap("2.5.29.14");
    pub const KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.15");
    pub const SUBJECT_ALT_NAME: Oid = Oid::new_unwrap("2.5.29.17");
    pub const BASIC_CONSTRAINTS: Oid = Oid::new_unwrap("2.5.29.19");
    pub const CRL_NUMBER: Oid = Oid::new_unwrap("2.5.29.20");
    pub const AUTHORITY_KEY_IDENTIFIER: Oid = Oid::new_unwrap("2.5.29.35");
    pub const EXTENDED_KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.37");

    pub const KP_SERVER_AUTH: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.1");
    pub const KP_CLIENT_AUTH: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.2");
    pub const KP_CODE_SIGNING: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.3");
    pub const KP_EMAIL_PROTECTION: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.4");
    pub const KP_TIME_STAMPING: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.8");
    pub const KP_OCSP_SIGNING: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.9");
    pub const KP_IPSEC_IKE: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.17");

    /// PKCS#9 challengePassword (RFC 2985 §5.4.1).
    pub const CHALLENGE_PASSWORD: Oid = Oid::new_unwrap("1.2.840.113549.1.9.7");
    /// PKCS#9 extensionRequest (RFC 2985 §5.4.2).
    pub const EXTENSION_REQUEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.14");
    /// Microsoft's older twin of extensionRequest, still sent by some Windows clients.
    pub const MS_EXTENSION_REQUEST: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.2.1.14");
}

/// Any DER encoding failure while building our own structures: deterministic, so
/// retrying would not help; the request is refused with the reason.
fn encoding(what: &str, e: der::Error) -> Error {
    Error::Refused(format!("{what} could not be encoded: {e}"))
}

// ---------------------------------------------------------------------------------
// Signing
// ---------------------------------------------------------------------------------

/// A CA key together with the signature algorithm it signs certificates and CRLs with.
///
/// RSA keys sign with sha256WithRSAEncryption (RFC 4055 §5: parameters NULL), P-256
/// with ecdsa-with-SHA256 and P-384 with ecdsa-with-SHA384 (RFC 5758 §3.2: parameters
/// absent). Cheap to clone, so it can move into `spawn_blocking`.
#[derive(Debug, Clone)]
pub struct Signer {
    key: Arc<dyn Key>,
    algorithm: SignatureAlgorithm,
    identifier: AlgorithmIdentifierOwned,
}

impl Signer {
    pub fn new(key: Arc<dyn Key>) -> Self {
        let (algorithm, oid, null_params) = match key.algorithm() {
            KeyAlgorithm::Rsa { .. } => (
                SignatureAlgorithm::RsaPkcs1Sha256,
                oid::SHA256_WITH_RSA,
                true,
            ),
            KeyAlgorithm::EcP256 => (
                SignatureAlgorithm::EcdsaSha256,
                oid::ECDSA_WITH_SHA256,
                false,
            ),
            KeyAlgorithm::EcP384 => (
                SignatureAlgorithm::EcdsaSha384,
                oid::ECDSA_WITH_SHA384,
                false,
            ),
        };
        let identifier = AlgorithmIdentifierOwned {
            oid,
            parameters: null_params.then(|| Any::from(Null)),
        };
        Signer {
            key,
            algorithm,
            identifier,
        }
    }

    /// The AlgorithmIdentifier that goes into both the TBS `signature` field and the
    /// outer `signatureAlgorithm` (RFC 5280 §4.1.1.2: they MUST match).
    pub fn identifier(&self) -> &AlgorithmIdentifierOwned {
        &self.identifier
    }

    pub fn key(&self) -> &Arc<dyn Key> {
        &self.key
    }

    /// Signs DER `tbs` bytes and wraps them as `SEQUENCE { tbs, signatureAlgorithm,
    /// signatureValue BIT STRING }`, the shape both a Certificate (RFC 5280 §4.1) and a
    /// CertificateList (§5.1) have.
    ///
    /// Blocks (the key may sit in an HSM): async callers use `spawn_blocking`.
    pub fn sign_tbs(&self, tbs: &[u8]) -> Result<Vec<u8>> {
        let signature = self.key.sign(self.algorithm, tbs).map_err(|e| {
            Error::Unavailable(format!("the CA key {} did not sign: {e}", self.key.label()))
        })?;
        assemble(tbs, &self.identifier, &signature)
    }

    /// Encodes and signs a certificate (blocking, see [`Signer::sign_tbs`]).
    pub fn sign_certificate(&self, fields: &CertificateFields<'_>) -> Result<Vec<u8>> {
        let tbs = fields.to_tbs_der(self)?;
        self.sign_tbs(&tbs)
    }
}

/// `SEQUENCE { tbs (raw), AlgorithmIdentifier, BIT STRING }`.
#[derive(Sequence)]
struct Signed<'a> {
    tbs: AnyRef<'a>,
    algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
}

fn assemble(tbs: &[u8], algorithm: &AlgorithmIdentifierOwned, signature: &[u8]) -> Result<Vec<u8>> {
    let signed = Signed {
        tbs: AnyRef::from_der(tbs).map_err(|e| encoding("the to-be-signed part", e))?,
        algorithm: algorithm.clone(),
        signature: BitString::from_bytes(signature).map_err(|e| encoding("the signature", e))?,
    };
    signed
        .to_der()
        .map_err(|e| encoding("the signed structure", e))
}

// ---------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------

/// `TBSCertificate` (RFC 5280 §4.1), always v3, without the unique identifiers
/// (§4.1.2.8: CAs conforming to the profile MUST NOT generate them).
#[derive(Sequence)]
struct TbsCertificate<'a> {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    version: Version,
    serial_number: Int,
    signature: AlgorithmIdentifierOwned,
    issuer: AnyRef<'a>,
    validity: Validity<Rfc5280>,
    subject: AnyRef<'a>,
    subject_public_key_info: AnyRef<'a>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    extensions: Option<Vec<Extension>>,
}

/// What a certificate says, before it is signed.
#[derive(Debug, Clone)]
pub struct CertificateFields<'a> {
    /// The serial number's INTEGER content bytes (positive, minimal), e.g. from
    /// [`random_serial`].
    pub serial: &'a [u8],
    /// The issuer's DER `Name`, byte for byte the issuer certificate's subject
    /// (RFC 5280 §4.1.2.4, §7.1: chain building compares names).
    pub issuer: &'a [u8],
    /// The subject's DER `Name`.
    pub subject: &'a [u8],
    /// The subject's DER `SubjectPublicKeyInfo`.
    pub public_key_info: &'a [u8],
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub extensions: Vec<Extension>,
}

impl CertificateFields<'_> {
    /// The DER `TBSCertificate` that `signer` will sign.
    pub fn to_tbs_der(&self, signer: &Signer) -> Result<Vec<u8>> {
        let raw = |what: &str, bytes| AnyRef::from_der(bytes).map_err(|e| encoding(what, e));
        let tbs = TbsCertificate {
            version: Version::V3,
            serial_number: Int::new(self.serial).map_err(|e| encoding("the serial number", e))?,
            signature: signer.identifier.clone(),
            issuer: raw("the issuer name", self.issuer)?,
            validity: Validity::new(to_time(self.not_before)?, to_time(self.not_after)?),
            subject: raw("the subject name", self.subject)?,
            subject_public_key_info: raw("the public key", self.public_key_info)?,
            extensions: (!self.extensions.is_empty()).then(|| self.extensions.clone()),
        };
        tbs.to_der().map_err(|e| encoding("the certificate", e))
    }
}

/// A `Time` for `t`, truncated to whole seconds (DER times carry no fractions,
/// RFC 5280 §4.1.2.5.1/§4.1.2.5.2) and as UTCTime before 2050 (§4.1.2.5).
fn to_time(t: SystemTime) -> Result<Time> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Error::Refused("a time before 1970".into()))?
        .as_secs();
    let time = Time::try_from(UNIX_EPOCH + Duration::from_secs(secs))
        .map_err(|e| encoding("a time", e))?;
    Rfc5280::time_encoding(time).map_err(|e| encoding("a time", e))
}

/// A fresh random serial number: 16 random bytes with the top bit cleared, so the
/// INTEGER is positive (RFC 5280 §4.1.2.2) with 127 bits of entropy and fits the
/// 20-octet limit. Returned as minimal INTEGER content bytes; never zero.
pub fn random_serial() -> Result<Vec<u8>> {
    let rng = SystemRandom::new();
    loop {
        let mut bytes = [0u8; 16];
        rng.fill(&mut bytes)
            .map_err(|_| Error::Unavailable("the random generator failed".into()))?;
        bytes[0] &= 0x7f;
        let first = bytes.iter().position(|&b| b != 0);
        let Some(first) = first else { continue };
        // Minimal encoding: no leading zero octets; the top bit of the first remaining
        // octet may now be set (e.g. 00 80 ..), in which case one zero must stay.
        let start = if bytes[first] & 0x80 != 0 {
            first - 1
        } else {
            first
        };
        return Ok(bytes[start..].to_vec());
    }
}

/// A DER `Name` with a single RDN holding one commonName as UTF8String (RFC 5280
/// §4.1.2.6, §4.1.2.4: UTF8String for new names).
pub fn common_name(cn: &str) -> Result<Vec<u8>> {
    #[derive(Sequence, der::ValueOrd)]
    struct AttributeTypeAndValue<'a> {
        oid: ObjectIdentifier,
        value: der::asn1::Utf8StringRef<'a>,
    }
    let value = der::asn1::Utf8StringRef::new(cn).map_err(|e| encoding("a common name", e))?;
    let atv = AttributeTypeAndValue {
        oid: oid::COMMON_NAME,
        value,
    };
    let rdn = der::asn1::SetOfVec::try_from(vec![atv]).map_err(|e| encoding("a name", e))?;
    vec![rdn].to_der().map_err(|e| encoding("a name", e))
}

// ---------------------------------------------------------------------------------
// Extensions
// ---------------------------------------------------------------------------------

fn extension(extn_id: ObjectIdentifier, critical: bool, value: &impl Encode) -> Result<Extension> {
    let der = value.to_der().map_err(|e| encoding("an extension", e))?;
    raw_extension(extn_id, critical, der)
}

/// An extension whose value is already DER (e.g. a SubjectAltName copied from a CSR).
pub fn raw_extension(
    extn_id: ObjectIdentifier,
    critical: bool,
    value: Vec<u8>,
) -> Result<Extension> {
    Ok(Extension {
        extn_id,
        critical,
        extn_value: OctetString::new(value).map_err(|e| encoding("an extension", e))?,
    })
}

/// basicConstraints, critical (RFC 5280 §4.2.1.9: MUST be critical in CA certificates;
/// we mark it critical in end-entity certificates too so that no relying party can
/// mistake them for a CA).
pub fn basic_constraints(ca: bool) -> Result<Extension> {
    extension(
        oid::BASIC_CONSTRAINTS,
        true,
        &BasicConstraints {
            ca,
            path_len_constraint: None,
        },
    )
}

/// keyUsage, critical (RFC 5280 §4.2.1.3: SHOULD be critical).
pub fn key_usage(bits: impl Into<der::flagset::FlagSet<KeyUsages>>) -> Result<Extension> {
    extension(oid::KEY_USAGE, true, &KeyUsage(bits.into()))
}

/// extKeyUsage, not critical (RFC 5280 §4.2.1.12: MAY be either).
pub fn extended_key_usage(purposes: &[ObjectIdentifier]) -> Result<Extension> {
    extension(
        oid::EXTENDED_KEY_USAGE,
        false,
        &ExtendedKeyUsage(purposes.to_vec()),
    )
}

/// subjectKeyIdentifier for a DER SubjectPublicKeyInfo, not critical (RFC 5280
/// §4.2.1.2; the key identifier is [`key_identifier`]).
pub fn subject_key_identifier(public_key_info: &[u8]) -> Result<Extension> {
    let id = key_identifier(public_key_info)?;
    let value = OctetString::new(id).map_err(|e| encoding("a key identifier", e))?;
    extension(
        oid::SUBJECT_KEY_IDENTIFIER,
        false,
        &SubjectKeyIdentifier(value),
    )
}

/// authorityKeyIdentifier holding only `keyIdentifier`, not critical (RFC 5280
/// §4.2.1.1). `key_id` must be the issuer certificate's own SKI value, not a hash we
/// compute: relying parties match the two byte for byte.
pub fn authority_key_identifier(key_id: &[u8]) -> Result<Extension> {
    let value = OctetString::new(key_id).map_err(|e| encoding("a key identifier", e))?;
    extension(
        oid::AUTHORITY_KEY_IDENTIFIER,
        false,
        &AuthorityKeyIdentifier {
            key_identifier: Some(value),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        },
    )
}

/// cRLNumber, not critical (RFC 5280 §5.2.3: MUST be included, monotonically
/// increasing).
pub fn crl_number(number: u64) -> Result<Extension> {
    let bytes = number.to_be_bytes();
    let uint = UintRef::new(&bytes).map_err(|e| encoding("a CRL number", e))?;
    extension(oid::CRL_NUMBER, false, &uint)
}

/// RFC 5280 §4.2.1.2 method (1): the SHA-1 of the subjectPublicKey BIT STRING's bits
/// (without tag, length and unused-bits octet).
pub fn key_identifier(public_key_info: &[u8]) -> Result<Vec<u8>> {
    let spki = SubjectPublicKeyInfoRef::from_der(public_key_info)
        .map_err(|e| Error::Refused(format!("the public key info does not decode: {e}")))?;
    let bits = spki.subject_public_key.raw_bytes();
    Ok(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, bits)
        .as_ref()
        .to_vec())
}

/// The SHA-256 fingerprint of DER bytes as colon-separated upper-case hex, the form
/// `openssl x509 -fingerprint -sha256` prints and MDM consoles ask for.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    let hash = digest::digest(&digest::SHA256, der);
    hash.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------------------------
// CRLs
// ---------------------------------------------------------------------------------

/// `TBSCertList` (RFC 5280 §5.1.2), always v2.
#[derive(Sequence)]
struct TbsCertList<'a> {
    version: Version,
    signature: AlgorithmIdentifierOwned,
    issuer: AnyRef<'a>,
    this_update: Time,
    next_update: Option<Time>,
    revoked_certificates: Option<Vec<RevokedEntry>>,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    crl_extensions: Option<Vec<Extension>>,
}

#[derive(Sequence)]
struct RevokedEntry {
    user_certificate: Int,
    revocation_date: Time,
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// INTEGER content bytes of the serial number.
    pub serial: Vec<u8>,
    pub revocation_date: SystemTime,
}

/// What a CRL says, before it is signed.
#[derive(Debug, Clone)]
pub struct CrlFields<'a> {
    /// The CA's DER subject `Name`, byte for byte.
    pub issuer: &'a [u8],
    pub this_update: SystemTime,
    pub next_update: SystemTime,
    pub revoked: &'a [RevokedCertificate],
    /// CRL extensions: cRLNumber and authorityKeyIdentifier (RFC 5280 §5.2.1, §5.2.3:
    /// MUST be included).
    pub extensions: Vec<Extension>,
}

impl CrlFields<'_> {
    /// The DER `TBSCertList` that `signer` will sign.
    pub fn to_tbs_der(&self, signer: &Signer) -> Result<Vec<u8>> {
        let revoked = self
            .revoked
            .iter()
            .map(|r| {
                Ok(RevokedEntry {
                    user_certificate: Int::new(&r.serial)
                        .map_err(|e| encoding("a revoked serial number", e))?,
                    revocation_date: to_time(r.revocation_date)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tbs = TbsCertList {
            version: Version::V2,
            signature: signer.identifier.clone(),
            issuer: AnyRef::from_der(self.issuer).map_err(|e| encoding("the issuer", e))?,
            this_update: to_time(self.this_update)?,
            next_update: Some(to_time(self.next_update)?),
            // §5.1.2.6: absent, not empty, when nothing is revoked.
            revoked_certificates: (!revoked.is_empty()).then_some(revoked),
            crl_extensions: (!self.extensions.is_empty()).then(|| self.extensions.clone()),
        };
        tbs.to_der().map_err(|e| encoding("the CRL", e))
    }
}

// ---------------------------------------------------------------------------------
// Reading certificates
// ---------------------------------------------------------------------------------

/// A certificate read leniently, with its parts as the exact bytes received.
///
/// Only what the gateway needs is decoded; serial numbers of any length are accepted
/// (certmonger uses 32 bytes) and nothing is ever re-encoded.
#[derive(Debug, Clone)]
pub struct ParsedCertificate<'a> {
    /// The DER `TBSCertificate`, the bytes the signature covers.
    pub tbs: &'a [u8],
    pub signature_algorithm: AlgorithmIdentifierRef<'a>,
    /// The signature BIT STRING's bytes.
    pub signature: &'a [u8],
    /// The serial number's INTEGER content bytes.
    pub serial: &'a [u8],
    /// DER `Name`s and `SubjectPublicKeyInfo`, exactly as encoded.
    pub issuer: &'a [u8],
    pub subject: &'a [u8],
    pub public_key_info: &'a [u8],
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub extensions: Vec<Extension>,
}

impl<'a> ParsedCertificate<'a> {
    /// Reads a DER certificate (RFC 5280 §4.1).
    pub fn from_der(der: &'a [u8]) -> der::Result<Self> {
        let mut reader = SliceReader::new(der)?;
        let (tbs, signature_algorithm, signature) = reader.sequence(|r| {
            let tbs = r.tlv_bytes()?;
            let alg = AlgorithmIdentifierRef::decode(r)?;
            let sig = BitStringRef::decode(r)?;
            Ok::<_, der::Error>((tbs, alg, sig))
        })?;
        reader.finish()?;
        let signature = signature.as_bytes().ok_or_else(|| {
            der::Error::from(der::ErrorKind::Length {
                tag: Tag::BitString,
            })
        })?;
        let mut reader = SliceReader::new(tbs)?;
        let parsed = reader.sequence(|r| {
            if Tag::peek(r)? == context_tag(0, true) {
                r.tlv_bytes()?; // version
            }
            let serial = IntRef::decode(r)?.as_bytes();
            r.tlv_bytes()?; // signature AlgorithmIdentifier
            let issuer = r.tlv_bytes()?;
            let validity = Validity::<Rfc5280>::decode(r)?;
            let subject = r.tlv_bytes()?;
            let public_key_info = r.tlv_bytes()?;
            let mut extensions = Vec::new();
            while !r.is_finished() {
                let tag = Tag::peek(r)?;
                if tag == context_tag(3, true) {
                    let header = der::Header::decode(r)?;
                    extensions = r.read_nested(header.length(), Vec::<Extension>::decode)?;
                } else {
                    r.tlv_bytes()?; // issuerUniqueID, subjectUniqueID
                }
            }
            Ok::<_, der::Error>(ParsedCertificate {
                tbs,
                signature_algorithm,
                signature,
                serial,
                issuer,
                subject,
                public_key_info,
                not_before: validity.not_before.to_system_time(),
                not_after: validity.not_after.to_system_time(),
                extensions,
            })
        })?;
        reader.finish()?;
        Ok(parsed)
    }

    /// The value of the extension `id`, if present once.
    pub fn extension(&self, id: ObjectIdentifier) -> Option<&Extension> {
        self.extensions.iter().find(|e| e.extn_id == id)
    }

    /// The subjectKeyIdentifier's key identifier octets.
    pub fn subject_key_identifier(&self) -> Option<Vec<u8>> {
        let ext = self.extension(oid::SUBJECT_KEY_IDENTIFIER)?;
        let ski = SubjectKeyIdentifier::from_der(ext.extn_value.as_bytes()).ok()?;
        Some(ski.0.as_bytes().to_vec())
    }

    /// Whether the certificate's signature verifies with `issuer_public_key_info`.
    pub fn verify_with(&self, issuer_public_key_info: &[u8]) -> Result<(), SignatureCheck> {
        verify_signature(
            issuer_public_key_info,
            &self.signature_algorithm,
            self.tbs,
            self.signature,
        )
    }
}

fn context_tag(number: u8, constructed: bool) -> Tag {
    Tag::ContextSpecific {
        constructed,
        number: TagNumber(number.into()),
    }
}

// ---------------------------------------------------------------------------------
// Verifying signatures
// ---------------------------------------------------------------------------------

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureCheck {
    /// A key or signature algorithm we do not verify (RSA-PSS, P-521, Ed25519, ...).
    #[error("unsupported algorithm: {0}")]
    Unsupported(String),
    /// The public key does not decode.
    #[error("the public key does not decode")]
    BadKey,
    /// The signature is wrong.
    #[error("the signature does not verify")]
    Invalid,
}

/// The algorithm and size of a DER `SubjectPublicKeyInfo`: RSA (RFC 3279 §2.3.1) or
/// ECDSA on P-256/P-384 (RFC 5480 §2.1.1, named curves only).
pub fn public_key_algorithm(public_key_info: &[u8]) -> Result<KeyAlgorithm, SignatureCheck> {
    let spki =
        SubjectPublicKeyInfoRef::from_der(public_key_info).map_err(|_| SignatureCheck::BadKey)?;
    key_algorithm_of(&spki)
}

fn key_algorithm_of(spki: &SubjectPublicKeyInfoRef<'_>) -> Result<KeyAlgorithm, SignatureCheck> {
    match spki.algorithm.oid {
        oid::RSA_ENCRYPTION => {
            let key = spki
                .subject_public_key
                .as_bytes()
                .ok_or(SignatureCheck::BadKey)?;
            let bits = rsa_modulus_bits(key).ok_or(SignatureCheck::BadKey)?;
            Ok(KeyAlgorithm::Rsa { bits })
        }
        oid::EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                .ok_or(SignatureCheck::BadKey)?;
            match curve {
                oid::SECP256R1 => Ok(KeyAlgorithm::EcP256),
                oid::SECP384R1 => Ok(KeyAlgorithm::EcP384),
                other => Err(SignatureCheck::Unsupported(format!(
                    "elliptic curve {other}"
                ))),
            }
        }
        other => Err(SignatureCheck::Unsupported(format!(
            "public key algorithm {other}"
        ))),
    }
}

/// The bit length of an RSAPublicKey's modulus (RFC 8017 §A.1.1).
fn rsa_modulus_bits(rsa_public_key: &[u8]) -> Option<usize> {
    #[derive(Sequence)]
    struct RsaPublicKey<'a> {
        modulus: UintRef<'a>,
        #[allow(dead_code)]
        public_exponent: UintRef<'a>,
    }
    let key = RsaPublicKey::from_der(rsa_public_key).ok()?;
    let m = key.modulus.as_bytes();
    let first = *m.first()?;
    Some(m.len() * 8 - first.leading_zeros() as usize)
}

/// Verifies `signature` over `message` with a DER `SubjectPublicKeyInfo`, as
/// `algorithm` (a signatureAlgorithm from a certificate, CRL or CSR) says.
///
/// RSA PKCS#1 v1.5 with SHA-1/256/384/512 (RFC 4055 §5; SHA-1 only for verifying, as
/// old clients still sign CSRs with it) and keys from 1024 bits on (policy on key size
/// belongs to the CA, not to signature checking; SHA-384 needs 2048 bits in aws-lc-rs);
/// ECDSA with SHA-256/384/512 on P-256 and P-384 (RFC 5758 §3.2).
pub fn verify_signature(
    public_key_info: &[u8],
    algorithm: &AlgorithmIdentifierRef<'_>,
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureCheck> {
    let spki =
        SubjectPublicKeyInfoRef::from_der(public_key_info).map_err(|_| SignatureCheck::BadKey)?;
    let key_alg = key_algorithm_of(&spki)?;
    if let KeyAlgorithm::Rsa { bits } = key_alg {
        if !(1024..=8192).contains(&bits) {
            return Err(SignatureCheck::Unsupported(format!(
                "RSA keys of {bits} bits"
            )));
        }
    }
    let verifier = verification_algorithm(key_alg, algorithm)?;
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or(SignatureCheck::BadKey)?;
    crate::cms::public_keys::verify(verifier, key, message, signature)
        .map_err(|_| SignatureCheck::Invalid)
}

fn verification_algorithm(
    key: KeyAlgorithm,
    algorithm: &AlgorithmIdentifierRef<'_>,
) -> Result<&'static dyn VerificationAlgorithm, SignatureCheck> {
    let rsa_params_ok = || match algorithm.parameters {
        None => true,
        Some(p) => p.tag() == Tag::Null,
    };
    let unsupported = || {
        SignatureCheck::Unsupported(format!(
            "signature algorithm {} with a {key:?} key",
            algorithm.oid
        ))
    };
    let alg: &'static dyn VerificationAlgorithm = match (key, algorithm.oid) {
        (KeyAlgorithm::Rsa { .. }, oid) if !rsa_params_ok() => {
            return Err(SignatureCheck::Unsupported(format!(
                "parameters of signature algorithm {oid}"
            )))
        }
        (KeyAlgorithm::Rsa { .. }, oid::SHA1_WITH_RSA) => {
            &ring_sig::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY
        }
        (KeyAlgorithm::Rsa { .. }, oid::SHA256_WITH_RSA) => {
            &ring_sig::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY
        }
        (KeyAlgorithm::Rsa { .. }, oid::SHA384_WITH_RSA) => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
        (KeyAlgorithm::Rsa { .. }, oid::SHA512_WITH_RSA) => {
            &ring_sig::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY
        }
        (KeyAlgorithm::EcP256, oid::ECDSA_WITH_SHA256) => &ring_sig::ECDSA_P256_SHA256_ASN1,
        (KeyAlgorithm::EcP256, oid::ECDSA_WITH_SHA384) => &ring_sig::ECDSA_P256_SHA384_ASN1,
        (KeyAlgorithm::EcP256, oid::ECDSA_WITH_SHA512) => &ring_sig::ECDSA_P256_SHA512_ASN1,
        (KeyAlgorithm::EcP384, oid::ECDSA_WITH_SHA256) => &ring_sig::ECDSA_P384_SHA256_ASN1,
        (KeyAlgorithm::EcP384, oid::ECDSA_WITH_SHA384) => &ring_sig::ECDSA_P384_SHA384_ASN1,
        (KeyAlgorithm::EcP384, oid::ECDSA_WITH_SHA512) => &ring_sig::ECDSA_P384_SHA512_ASN1,
        _ => return Err(unsupported()),
    };
    Ok(alg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scep_hsm::SoftwareKey;

    #[test]
    fn serials_are_positive_and_minimal() {
        for _ in 0..2000 {
            let s = random_serial().unwrap();
            assert!(!s.is_empty() && s.len() <= 16);
            assert_eq!(s[0] & 0x80, 0, "{s:02x?}");
            assert!(s[0] != 0 || (s.len() > 1 && s[1] & 0x80 != 0), "{s:02x?}");
            Int::new(&s).unwrap();
        }
    }

    #[test]
    fn self_signed_certificate_round_trips() {
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate_p256("t".into()).unwrap());
        let signer = Signer::new(key.clone());
        let name = common_name("Test").unwrap();
        let serial = random_serial().unwrap();
        let now = SystemTime::now();
        let fields = CertificateFields {
            serial: &serial,
            issuer: &name,
            subject: &name,
            public_key_info: key.public_key_info(),
            not_before: now,
            not_after: now + Duration::from_secs(3600),
            extensions: vec![
                basic_constraints(true).unwrap(),
                subject_key_identifier(key.public_key_info()).unwrap(),
            ],
        };
        let der = signer.sign_certificate(&fields).unwrap();
        let parsed = ParsedCertificate::from_der(&der).unwrap();
        assert_eq!(parsed.serial, &serial[..]);
        assert_eq!(parsed.subject, &name[..]);
        assert_eq!(parsed.issuer, &name[..]);
        assert_eq!(
            parsed.subject_key_identifier().unwrap(),
            key_identifier(key.public_key_info()).unwrap()
        );
        parsed.verify_with(key.public_key_info()).unwrap();
        // x509-cert agrees it is a certificate.
        x509_cert::Certificate::from_der(&der).unwrap();
        // A flipped bit in the TBS breaks the signature.
        let mut bad = der.clone();
        let i = bad.len() / 3;
        bad[i] ^= 1;
        if let Ok(p) = ParsedCertificate::from_der(&bad) {
            assert!(p.verify_with(key.public_key_info()).is_err());
        }
    }
}
