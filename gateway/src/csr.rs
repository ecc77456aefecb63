//! PKCS#10 certification requests (RFC 2986), as SCEP carries them in PKCSReq and
//! RenewalReq (RFC 8894 §3.3.1).
//!
//! A [`CertificationRequest`] only exists once its self-signature has verified: the
//! signature over `certificationRequestInfo` is the client's proof that it holds the
//! private key (RFC 2986 §3, step 3). The signature is checked over the *raw* bytes of
//! that field as received; nothing is decoded and re-encoded first, because der
//! re-sorts SET OF (attributes, multi-valued RDNs) on decode and a re-encoding could
//! differ from what the client signed.
//!
//! Everything wrong with a CSR is a refusal (`Error::Refused`, CertRep FAILURE
//! badRequest, RFC 8894 §3.3.2.2): the CSR arrives inside an envelope that already
//! verified and decrypted, so the client can be told. A signature algorithm or key type
//! we cannot check is `Error::UnsupportedAlgorithm` (badAlg).
//!
//! Size limits, chosen far above what real clients send but low enough that one
//! request cannot make us allocate much:
//! - the whole CSR: [`MAX_CSR_LEN`] (64 KiB);
//! - the subject Name: [`MAX_SUBJECT_LEN`] (8 KiB);
//! - the challengePassword: [`MAX_CHALLENGE_LEN`] (16 KiB; Intune's challenges are
//!   signed blobs of a few KiB);
//! - attributes: [`MAX_ATTRIBUTES`] (32); requested extensions: [`MAX_EXTENSIONS`] (64);
//! - subjectAltName: [`MAX_SAN_ENTRIES`] (100) names in at most [`MAX_SAN_LEN`] (16 KiB).

use std::fmt;

use der::asn1::{AnyRef, BitStringRef, IntRef, ObjectIdentifier};
use der::flagset::FlagSet;
use der::{Decode, Reader, Sequence, SliceReader, Tag, TagNumber, Tagged};
use scep_hsm::KeyAlgorithm;
use spki::AlgorithmIdentifierRef;
use x509_cert::ext::pkix::{KeyUsage, KeyUsages, SubjectAltName};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use zeroize::Zeroizing;

use crate::ca::certificate::{oid, public_key_algorithm, verify_signature, SignatureCheck};
use crate::error::{Error, Result};

pub const MAX_CSR_LEN: usize = 64 * 1024;
pub const MAX_SUBJECT_LEN: usize = 8 * 1024;
pub const MAX_CHALLENGE_LEN: usize = 16 * 1024;
pub const MAX_ATTRIBUTES: usize = 32;
pub const MAX_EXTENSIONS: usize = 64;
pub const MAX_SAN_ENTRIES: usize = 100;
pub const MAX_SAN_LEN: usize = 16 * 1024;

fn refused(text: impl fmt::Display) -> Error {
    Error::Refused(format!("CSR: {text}"))
}

fn malformed(e: der::Error) -> Error {
    refused(format_args!("not a DER PKCS#10 request: {e}"))
}

/// A PKCS#10 request whose self-signature has verified.
/// Cloned by the CA router when it hands one request to several CAs at once (hedging).
#[derive(Clone)]
pub struct CertificationRequest {
    der: Vec<u8>,
    subject: Vec<u8>,
    subject_display: String,
    public_key_info: Vec<u8>,
    key_algorithm: KeyAlgorithm,
    challenge_password: Option<Zeroizing<String>>,
    extensions: RequestedExtensions,
}

/// What the extensionRequest attribute asked for (RFC 2985 §5.4.2).
#[derive(Debug, Clone, Default)]
pub struct RequestedExtensions {
    /// The subjectAltName extension's value: DER `GeneralNames`, as received.
    pub subject_alt_name: Option<Vec<u8>>,
    /// The requested keyUsage bits.
    pub key_usage: Option<FlagSet<KeyUsages>>,
    /// Every requested extension, including the two above.
    pub all: Vec<Extension>,
}

impl fmt::Debug for CertificationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The challenge is a secret: only whether there is one.
        f.debug_struct("CertificationRequest")
            .field("subject", &self.subject_display)
            .field("key_algorithm", &self.key_algorithm)
            .field(
                "challenge_password",
                &self.challenge_password.as_ref().map(|_| "<redacted>"),
            )
            .field("extensions", &self.extensions)
            .finish_non_exhaustive()
    }
}

impl CertificationRequest {
    /// Parses a DER `CertificationRequest` (RFC 2986 §4.2) and verifies its
    /// self-signature.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        if der.len() > MAX_CSR_LEN {
            return Err(refused(format_args!("larger than {MAX_CSR_LEN} bytes")));
        }
        let outer = Outer::parse(der).map_err(malformed)?;
        let info = Info::parse(outer.info).map_err(malformed)?;

        let key_algorithm = public_key_algorithm(info.public_key_info).map_err(key_error)?;
        let signature = outer
            .signature
            .as_bytes()
            .ok_or_else(|| refused("the signature BIT STRING has unused bits"))?;
        verify_signature(
            info.public_key_info,
            &outer.algorithm,
            outer.info,
            signature,
        )
        .map_err(signature_error)?;

        if info.subject.len() > MAX_SUBJECT_LEN {
            return Err(refused(format_args!(
                "the subject is longer than {MAX_SUBJECT_LEN} bytes"
            )));
        }
        let subject_display = crate::name::display(info.subject)
            .map_err(|e| refused(format_args!("the subject: {e}")))?;

        let mut challenge_password = None;
        let mut extensions = None;
        for attribute in &info.attributes {
            match attribute.oid {
                oid::CHALLENGE_PASSWORD => set_once(
                    &mut challenge_password,
                    challenge(attribute)?,
                    "challengePassword",
                )?,
                oid::EXTENSION_REQUEST | oid::MS_EXTENSION_REQUEST => set_once(
                    &mut extensions,
                    requested_extensions(attribute)?,
                    "extensionRequest",
                )?,
                // Other attributes (unstructuredName, Microsoft's OS version and CSP
                // name, ...) carry nothing the CA uses.
                _ => {}
            }
        }

        Ok(CertificationRequest {
            der: der.to_vec(),
            subject: info.subject.to_vec(),
            subject_display,
            public_key_info: info.public_key_info.to_vec(),
            key_algorithm,
            challenge_password,
            extensions: extensions.unwrap_or_default(),
        })
    }

    /// The request exactly as received.
    pub fn as_der(&self) -> &[u8] {
        &self.der
    }

    /// The subject's DER `Name`, exactly as received (the CA copies it into the
    /// certificate).
    pub fn subject_der(&self) -> &[u8] {
        &self.subject
    }

    /// The subject in RFC 4514 form, for logs; cut at 1 KiB.
    pub fn subject(&self) -> &str {
        &self.subject_display
    }

    /// Whether the subject is the empty sequence (RFC 5280 §4.1.2.6 then wants a
    /// critical subjectAltName).
    pub fn subject_is_empty(&self) -> bool {
        self.subject.len() == 2
    }

    /// The DER `SubjectPublicKeyInfo`, exactly as received.
    pub fn public_key_info(&self) -> &[u8] {
        &self.public_key_info
    }

    /// The key's algorithm; for RSA with the modulus size.
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.key_algorithm
    }

    /// The key size in bits (the modulus for RSA, the field size for EC).
    pub fn key_bits(&self) -> usize {
        match self.key_algorithm {
            KeyAlgorithm::Rsa { bits } => bits,
            KeyAlgorithm::EcP256 => 256,
            KeyAlgorithm::EcP384 => 384,
        }
    }

    /// The challengePassword attribute (RFC 2985 §5.4.1), if present.
    pub fn challenge_password(&self) -> Option<&str> {
        self.challenge_password.as_ref().map(|s| s.as_str())
    }

    /// The extensions the client asked for.
    pub fn requested_extensions(&self) -> &RequestedExtensions {
        &self.extensions
    }

    /// The requested subjectAltName value (DER `GeneralNames`), if any.
    pub fn subject_alt_name(&self) -> Option<&[u8]> {
        self.extensions.subject_alt_name.as_deref()
    }

    /// The subject's first commonName, if any (for CN-bound one-time passwords and
    /// policy patterns).
    pub fn common_name(&self) -> Option<String> {
        let name = Name::from_der(&self.subject).ok()?;
        name.common_name().ok().flatten().map(String::from)
    }

    /// The requested subjectAltName entries as text: `dns:…`, `email:…`, `uri:…`,
    /// `ip:…`, `upn:…`, `dirName:…`, `rid:…`, `other:<oid>` (webhook documents, SAN
    /// patterns). Undecodable names are left out.
    pub fn subject_alt_names(&self) -> Vec<String> {
        let Some(der) = self.subject_alt_name() else {
            return Vec::new();
        };
        let Ok(SubjectAltName(names)) = SubjectAltName::from_der(der) else {
            return Vec::new();
        };
        names.iter().filter_map(general_name_text).collect()
    }

    /// The requested keyUsage bits by their RFC 5280 names (`digitalSignature`, …).
    pub fn key_usage_names(&self) -> Vec<&'static str> {
        let Some(usage) = self.extensions.key_usage else {
            return Vec::new();
        };
        [
            (KeyUsages::DigitalSignature, "digitalSignature"),
            (KeyUsages::NonRepudiation, "nonRepudiation"),
            (KeyUsages::KeyEncipherment, "keyEncipherment"),
            (KeyUsages::DataEncipherment, "dataEncipherment"),
            (KeyUsages::KeyAgreement, "keyAgreement"),
            (KeyUsages::KeyCertSign, "keyCertSign"),
            (KeyUsages::CRLSign, "cRLSign"),
            (KeyUsages::EncipherOnly, "encipherOnly"),
            (KeyUsages::DecipherOnly, "decipherOnly"),
        ]
        .into_iter()
        .filter(|(bit, _)| usage.contains(*bit))
        .map(|(_, name)| name)
        .collect()
    }
}

/// One GeneralName (RFC 5280 §4.2.1.6) as `kind:value` text.
fn general_name_text(name: &x509_cert::ext::pkix::name::GeneralName) -> Option<String> {
    use x509_cert::ext::pkix::name::GeneralName;
    /// Microsoft's userPrincipalName otherName (an Intune/AD staple).
    const UPN: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.20.2.3");
    Some(match name {
        GeneralName::DnsName(s) => format!("dns:{}", s.as_str()),
        GeneralName::Rfc822Name(s) => format!("email:{}", s.as_str()),
        GeneralName::UniformResourceIdentifier(s) => format!("uri:{}", s.as_str()),
        GeneralName::IpAddress(o) => match o.as_bytes().len() {
            4 => {
                let b: [u8; 4] = o.as_bytes().try_into().ok()?;
                format!("ip:{}", std::net::Ipv4Addr::from(b))
            }
            16 => {
                let b: [u8; 16] = o.as_bytes().try_into().ok()?;
                format!("ip:{}", std::net::Ipv6Addr::from(b))
            }
            _ => return None,
        },
        GeneralName::DirectoryName(n) => format!("dirName:{n}"),
        GeneralName::RegisteredId(oid) => format!("rid:{oid}"),
        GeneralName::OtherName(other) if other.type_id == UPN => {
            let text = other
                .value
                .decode_as::<der::asn1::Utf8StringRef<'_>>()
                .ok()?;
            format!("upn:{}", text.as_str())
        }
        GeneralName::OtherName(other) => format!("other:{}", other.type_id),
        GeneralName::EdiPartyName(_) => return None,
    })
}

fn set_once<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<()> {
    if slot.replace(value).is_some() {
        return Err(refused(format_args!("more than one {name} attribute")));
    }
    Ok(())
}

fn key_error(e: SignatureCheck) -> Error {
    match e {
        SignatureCheck::Unsupported(what) => Error::UnsupportedAlgorithm(format!("CSR: {what}")),
        SignatureCheck::BadKey => refused("the public key does not decode"),
        SignatureCheck::Invalid => refused("the signature does not verify"),
    }
}

fn signature_error(e: SignatureCheck) -> Error {
    match e {
        SignatureCheck::Invalid => refused(
            "the self-signature does not verify (no proof of possession of the private key)",
        ),
        other => key_error(other),
    }
}

/// `CertificationRequest ::= SEQUENCE { certificationRequestInfo, signatureAlgorithm,
/// signature BIT STRING }`, with the info kept as raw bytes.
struct Outer<'a> {
    info: &'a [u8],
    algorithm: AlgorithmIdentifierRef<'a>,
    signature: BitStringRef<'a>,
}

impl<'a> Outer<'a> {
    fn parse(der: &'a [u8]) -> der::Result<Self> {
        let mut reader = SliceReader::new(der)?;
        let outer = reader.sequence(|r| {
            Ok::<_, der::Error>(Outer {
                info: r.tlv_bytes()?,
                algorithm: AlgorithmIdentifierRef::decode(r)?,
                signature: BitStringRef::decode(r)?,
            })
        })?;
        reader.finish()?;
        Ok(outer)
    }
}

/// `CertificationRequestInfo` (RFC 2986 §4.1) with subject and key as raw TLVs.
struct Info<'a> {
    subject: &'a [u8],
    public_key_info: &'a [u8],
    attributes: Vec<AttributeRef<'a>>,
}

/// `Attribute ::= SEQUENCE { type OBJECT IDENTIFIER, values SET OF ANY }`; the values
/// stay as one raw SET so that nothing gets re-sorted.
#[derive(Sequence)]
struct AttributeRef<'a> {
    oid: ObjectIdentifier,
    values: AnyRef<'a>,
}

impl<'a> AttributeRef<'a> {
    /// The single value of a single-valued attribute (both of ours are, RFC 2985
    /// §5.4.1/§5.4.2).
    fn single_value(&self, name: &str) -> Result<AnyRef<'a>> {
        if self.values.tag() != Tag::Set {
            return Err(refused(format_args!(
                "the {name} attribute has no SET of values"
            )));
        }
        let mut reader = SliceReader::new(self.values.value()).map_err(malformed)?;
        let value = AnyRef::decode(&mut reader).map_err(malformed)?;
        if !reader.is_finished() {
            return Err(refused(format_args!(
                "the {name} attribute has several values"
            )));
        }
        Ok(value)
    }
}

impl<'a> Info<'a> {
    fn parse(der: &'a [u8]) -> der::Result<Self> {
        let mut reader = SliceReader::new(der)?;
        let info = reader.sequence(|r| {
            let version = IntRef::decode(r)?;
            if version.as_bytes() != [0] {
                return Err(der::Error::from(Tag::Integer.value_error()));
            }
            if Tag::peek(r)? != Tag::Sequence {
                return Err(der::Error::from(Tag::Sequence.value_error()));
            }
            let subject = r.tlv_bytes()?;
            let public_key_info = r.tlv_bytes()?;
            let mut attributes = Vec::new();
            // `attributes [0] IMPLICIT SET OF Attribute`; tolerated when absent, which
            // a few embedded clients do.
            if !r.is_finished() {
                let header = der::Header::decode(r)?;
                let attributes_tag = Tag::ContextSpecific {
                    constructed: true,
                    number: TagNumber(0),
                };
                header.tag().assert_eq(attributes_tag)?;
                r.read_nested(header.length(), |r| {
                    while !r.is_finished() {
                        if attributes.len() == MAX_ATTRIBUTES {
                            return Err(der::Error::from(der::ErrorKind::Overlength));
                        }
                        attributes.push(AttributeRef::decode(r)?);
                    }
                    Ok(())
                })?;
            }
            Ok(Info {
                subject,
                public_key_info,
                attributes,
            })
        })?;
        reader.finish()?;
        Ok(info)
    }
}

/// The challengePassword's text. RFC 2985 §5.4.1 says DirectoryString (PrintableString
/// or UTF8String in practice); IA5String and BMPString also occur in the wild. The text
/// lives only in zeroizing buffers.
fn challenge(attribute: &AttributeRef<'_>) -> Result<Zeroizing<String>> {
    let value = attribute.single_value("challengePassword")?;
    let bytes = value.value();
    if bytes.len() > MAX_CHALLENGE_LEN {
        return Err(refused(format_args!(
            "the challengePassword is longer than {MAX_CHALLENGE_LEN} bytes"
        )));
    }
    let not_text = || refused("the challengePassword is not valid text");
    match value.tag() {
        Tag::PrintableString | Tag::Utf8String | Tag::Ia5String | Tag::TeletexString => {
            let text = std::str::from_utf8(bytes).map_err(|_| not_text())?;
            if value.tag() != Tag::Utf8String && !text.is_ascii() {
                return Err(not_text());
            }
            Ok(Zeroizing::new(text.to_owned()))
        }
        Tag::BmpString => {
            if bytes.len() % 2 != 0 {
                return Err(not_text());
            }
            let units = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            let mut text = Zeroizing::new(String::with_capacity(bytes.len() / 2));
            for c in char::decode_utf16(units) {
                text.push(c.map_err(|_| not_text())?);
            }
            Ok(text)
        }
        other => Err(refused(format_args!(
            "the challengePassword is a {other}, not a string"
        ))),
    }
}

/// The extensionRequest attribute: `SEQUENCE OF Extension` (RFC 2985 §5.4.2).
fn requested_extensions(attribute: &AttributeRef<'_>) -> Result<RequestedExtensions> {
    let value = attribute.single_value("extensionRequest")?;
    let all: Vec<Extension> = value
        .decode_as()
        .map_err(|e| refused(format_args!("the extensionRequest: {e}")))?;
    if all.len() > MAX_EXTENSIONS {
        return Err(refused(format_args!(
            "more than {MAX_EXTENSIONS} requested extensions"
        )));
    }
    // RFC 5280 §4.2: an extension appears at most once.
    for (i, e) in all.iter().enumerate() {
        if all[..i].iter().any(|d| d.extn_id == e.extn_id) {
            return Err(refused(format_args!(
                "extension {} requested twice",
                e.extn_id
            )));
        }
    }
    let mut requested = RequestedExtensions::default();
    for e in &all {
        let value = e.extn_value.as_bytes();
        match e.extn_id {
            oid::SUBJECT_ALT_NAME => requested.subject_alt_name = Some(subject_alt_name(value)?),
            oid::KEY_USAGE => {
                let ku = KeyUsage::from_der(value)
                    .map_err(|e| refused(format_args!("the requested keyUsage: {e}")))?;
                requested.key_usage = Some(ku.0);
            }
            _ => {}
        }
    }
    requested.all = all;
    Ok(requested)
}

/// Checks a requested subjectAltName (RFC 5280 §4.2.1.6) decodes and is within bounds,
/// and returns its bytes unchanged.
fn subject_alt_name(value: &[u8]) -> Result<Vec<u8>> {
    if value.len() > MAX_SAN_LEN {
        return Err(refused(format_args!(
            "the subjectAltName is longer than {MAX_SAN_LEN} bytes"
        )));
    }
    let san = SubjectAltName::from_der(value)
        .map_err(|e| refused(format_args!("the subjectAltName: {e}")))?;
    if san.0.is_empty() {
        return Err(refused("the subjectAltName is empty"));
    }
    if san.0.len() > MAX_SAN_ENTRIES {
        return Err(refused(format_args!(
            "more than {MAX_SAN_ENTRIES} subjectAltName entries"
        )));
    }
    Ok(value.to_vec())
}

/// Builds a PKCS#10 request (RFC 2986 §4.1) signed by `signer`: what a SCEP client
/// sends inside its PKCSReq, and what the gateway sends an upstream CA or an enterprise
/// CA for its own RA certificate.
///
/// ```text
/// CertificationRequestInfo ::= SEQUENCE {
///      version       INTEGER { v1(0) },
///      subject       Name,
///      subjectPKInfo SubjectPublicKeyInfo,
///      attributes    [0] IMPLICIT SET OF Attribute }
/// ```
/// The challengePassword goes in as a PrintableString when it fits, else UTF8String
/// (RFC 2985 §5.4.1); `extensions` go in one extensionRequest attribute (§5.4.2).
/// Blocks while the key signs.
pub fn build(
    signer: &crate::ca::certificate::Signer,
    subject: &[u8],
    challenge: Option<&str>,
    extensions: &[x509_cert::ext::Extension],
) -> Result<Vec<u8>> {
    use crate::cms::ber;
    use der::Encode;
    let encoding = |what: &str, e: der::Error| Error::Malformed(format!("encoding {what}: {e}"));
    let mut attributes = Vec::new();
    if let Some(challenge) = challenge {
        let value = match der::asn1::PrintableStringRef::new(challenge) {
            Ok(p) => ber::der_string(&p),
            Err(_) => der::asn1::Utf8StringRef::new(challenge).and_then(|u| ber::der_string(&u)),
        }
        .map_err(|e| encoding("the challenge password", e))?;
        attributes.push(ber::der_sequence(&[
            &ber::der_oid(&oid::CHALLENGE_PASSWORD),
            &ber::der_set_of(vec![value]),
        ]));
    }
    if !extensions.is_empty() {
        let exts = extensions
            .to_vec()
            .to_der()
            .map_err(|e| encoding("the extensions", e))?;
        attributes.push(ber::der_sequence(&[
            &ber::der_oid(&oid::EXTENSION_REQUEST),
            &ber::der_set_of(vec![exts]),
        ]));
    }
    let public_key = signer.key().public_key_info().to_vec();
    let mut attrs = ber::der_set_of(attributes);
    attrs[0] = 0xA0; // [0] IMPLICIT SET OF
    let info = ber::der_sequence(&[&ber::der_small_uint(0), subject, &public_key, &attrs]);
    signer.sign_tbs(&info)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// Runs `openssl req` in `dir` with `config` and returns the DER CSR.
    pub(crate) fn openssl_csr(dir: &Path, newkey: &[&str], config: &str) -> Vec<u8> {
        let cfg = dir.join("req.cnf");
        std::fs::write(&cfg, config).unwrap();
        let out = dir.join("req.der");
        let status = Command::new("openssl")
            .args(["req", "-new", "-nodes", "-outform", "DER"])
            .args(newkey)
            .arg("-keyout")
            .arg(dir.join("req.key"))
            .arg("-config")
            .arg(&cfg)
            .arg("-out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        std::fs::read(out).unwrap()
    }

    pub(crate) fn config(cn: &str, challenge: Option<&str>, san: Option<&str>) -> String {
        let mut c = format!(
            "[req]\nprompt=no\ndistinguished_name=dn\nattributes=attrs\nreq_extensions=ext\n\
             [dn]\nCN={cn}\nO=Example\n[attrs]\n"
        );
        if let Some(ch) = challenge {
            c += &format!("challengePassword={ch}\n");
        }
        c += "[ext]\nkeyUsage=critical,digitalSignature,keyEncipherment\n";
        if let Some(san) = san {
            c += &format!("subjectAltName={san}\n");
        }
        c
    }

    pub(crate) fn rsa_csr(bits: u32, challenge: Option<&str>, san: Option<&str>) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        openssl_csr(
            dir.path(),
            &["-newkey", &format!("rsa:{bits}")],
            &config("device-1", challenge, san),
        )
    }

    #[test]
    fn rsa_csr_with_challenge_and_san() {
        let der = rsa_csr(
            2048,
            Some("s3cret-Ch4llenge"),
            Some("DNS:a.example,IP:192.0.2.1"),
        );
        let csr = CertificationRequest::from_der(&der).unwrap();
        assert_eq!(csr.challenge_password(), Some("s3cret-Ch4llenge"));
        assert_eq!(csr.key_algorithm(), KeyAlgorithm::Rsa { bits: 2048 });
        assert_eq!(csr.key_bits(), 2048);
        assert!(csr.subject().contains("CN=device-1"), "{}", csr.subject());
        assert!(!csr.subject_is_empty());
        let san = SubjectAltName::from_der(csr.subject_alt_name().unwrap()).unwrap();
        assert_eq!(san.0.len(), 2);
        let ku = csr.requested_extensions().key_usage.unwrap();
        assert!(
            ku.contains(KeyUsages::DigitalSignature) && ku.contains(KeyUsages::KeyEncipherment)
        );
        assert_eq!(csr.as_der(), &der[..]);
        // The subject bytes are a slice of the request.
        assert!(der
            .windows(csr.subject_der().len())
            .any(|w| w == csr.subject_der()));
        // Debug output never shows the challenge.
        let debug = format!("{csr:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("redacted"));
    }

    #[test]
    fn csr_without_attributes() {
        let der = rsa_csr(2048, None, None);
        let csr = CertificationRequest::from_der(&der).unwrap();
        assert_eq!(csr.challenge_password(), None);
        assert!(csr.subject_alt_name().is_none());
    }

    #[test]
    fn ec_p256_and_p384_csrs() {
        for (curve, alg, digest) in [
            ("prime256v1", KeyAlgorithm::EcP256, "-sha256"),
            ("secp384r1", KeyAlgorithm::EcP384, "-sha384"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let der = openssl_csr(
                dir.path(),
                &[
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    &format!("ec_paramgen_curve:{curve}"),
                    digest,
                ],
                &config("ec", Some("pw"), Some("DNS:ec.example")),
            );
            let csr = CertificationRequest::from_der(&der).unwrap();
            assert_eq!(csr.key_algorithm(), alg);
            assert_eq!(csr.challenge_password(), Some("pw"));
        }
    }

    #[test]
    fn sha1_signed_csr_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let der = openssl_csr(
            dir.path(),
            &["-newkey", "rsa:2048", "-sha1"],
            &config("old", None, None),
        );
        CertificationRequest::from_der(&der).unwrap();
    }

    #[test]
    fn rsa_1024_parses() {
        // Key size is CA policy, not a parse error.
        let der = rsa_csr(1024, None, None);
        let csr = CertificationRequest::from_der(&der).unwrap();
        assert_eq!(csr.key_bits(), 1024);
    }

    #[test]
    fn tampered_csr_fails_proof_of_possession() {
        let der = rsa_csr(2048, Some("pw"), None);
        // Change one letter of the CN "device-1" inside the signed info.
        let pos = der.windows(8).position(|w| w == b"device-1").unwrap();
        let mut bad = der.clone();
        bad[pos] = b'D';
        let err = CertificationRequest::from_der(&bad).unwrap_err();
        assert!(
            matches!(err, Error::Refused(ref t) if t.contains("proof of possession")),
            "{err}"
        );
        // Garbage and truncation are refusals too, never panics.
        for cut in [0, 1, 10, der.len() / 2, der.len() - 1] {
            assert!(matches!(
                CertificationRequest::from_der(&der[..cut]),
                Err(Error::Refused(_))
            ));
        }
    }

    #[test]
    fn oversized_csr_is_refused() {
        let big = vec![0x30; MAX_CSR_LEN + 1];
        assert!(matches!(
            CertificationRequest::from_der(&big),
            Err(Error::Refused(_))
        ));
    }

    #[test]
    fn bmp_and_utf8_challenges() {
        let attr_der = |tag: u8, value: &[u8]| {
            // SEQUENCE { OID challengePassword, SET { <tag> value } }
            let oid = [
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x07,
            ];
            let mut inner = vec![tag, value.len() as u8];
            inner.extend_from_slice(value);
            let mut set = vec![0x31, inner.len() as u8];
            set.extend(inner);
            let mut seq = vec![0x30, (oid.len() + set.len()) as u8];
            seq.extend_from_slice(&oid);
            seq.extend(set);
            seq
        };
        let bmp: Vec<u8> = "pä".encode_utf16().flat_map(|u| u.to_be_bytes()).collect();
        let der = attr_der(0x1e, &bmp);
        let attr = AttributeRef::from_der(&der).unwrap();
        assert_eq!(challenge(&attr).unwrap().as_str(), "pä");
        let der = attr_der(0x0c, "pä".as_bytes());
        let attr = AttributeRef::from_der(&der).unwrap();
        assert_eq!(challenge(&attr).unwrap().as_str(), "pä");
        let der = attr_der(0x02, &[1]);
        let attr = AttributeRef::from_der(&der).unwrap();
        assert!(challenge(&attr).is_err());
    }
}
