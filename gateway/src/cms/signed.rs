//! SignedData (RFC 5652 §5): lenient parsing, signature verification over the bytes as
//! received, DER building with a [`scep_hsm::Key`], and the degenerate certs-only form.
//!
//! Client certificates are never decoded into `x509-cert` types and never re-encoded:
//! certmonger's self-signed certificate has a 32-byte serial that x509-cert's default
//! profile refuses, and re-encoding can change a certificate's bytes (UTCTime versus
//! GeneralizedTime). [`CertificateFields`] reads the handful of fields we need straight
//! from the DER, and everything is copied byte for byte.

use std::time::SystemTime;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, VerificationAlgorithm};
use const_oid::ObjectIdentifier;
use scep_hsm::{KeyAlgorithm, KeyError, SignatureAlgorithm};

use crate::cms::algorithms::Digest;
use crate::cms::ber::{self, tag, Tlv};
use crate::error::{Error, Result};
use crate::ra::Credential;

/// Object identifiers of CMS, PKCS#1, X9.62 and NIST used here.
pub mod oid {
    use const_oid::ObjectIdentifier;

    /// id-data, RFC 5652 §4.
    pub const DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
    /// id-signedData, RFC 5652 §5.
    pub const SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
    /// id-envelopedData, RFC 5652 §6.
    pub const ENVELOPED_DATA: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3");
    /// id-contentType, RFC 5652 §11.1.
    pub const CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
    /// id-messageDigest, RFC 5652 §11.2.
    pub const MESSAGE_DIGEST: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
    /// id-signingTime, RFC 5652 §11.3.
    pub const SIGNING_TIME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.5");

    pub const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
    pub const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
    pub const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
    pub const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

    /// rsaEncryption (RFC 8017 appendix C): a key algorithm, also used as a
    /// SignerInfo signatureAlgorithm, where the digestAlgorithm then names the hash.
    pub const RSA_ENCRYPTION: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    pub const SHA1_WITH_RSA: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");
    pub const SHA256_WITH_RSA: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
    pub const SHA384_WITH_RSA: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
    pub const SHA512_WITH_RSA: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");

    /// id-ecPublicKey (RFC 5480 §2.1.1).
    pub const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    pub const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    pub const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
    pub const ECDSA_WITH_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.1");
    pub const ECDSA_WITH_SHA256: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
    pub const ECDSA_WITH_SHA384: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
    pub const ECDSA_WITH_SHA512: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");

    /// id-ce-subjectKeyIdentifier (RFC 5280 §4.2.1.2).
    pub const SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
}

// ---------------------------------------------------------------------------------------
// Digests
// ---------------------------------------------------------------------------------------

/// The digestAlgorithm OID of `d` (RFC 5754 §2, RFC 3370 §2.1).
pub fn digest_oid(d: Digest) -> ObjectIdentifier {
    match d {
        Digest::Sha1 => oid::SHA1,
        Digest::Sha256 => oid::SHA256,
        Digest::Sha384 => oid::SHA384,
        Digest::Sha512 => oid::SHA512,
    }
}

/// The digest a digestAlgorithm OID names, if we support it (MD5 is not).
pub fn digest_from_oid(o: &ObjectIdentifier) -> Option<Digest> {
    [Digest::Sha1, Digest::Sha256, Digest::Sha384, Digest::Sha512]
        .into_iter()
        .find(|d| digest_oid(*d) == *o)
}

/// Hashes `data` with `d`.
pub fn compute_digest(d: Digest, data: &[u8]) -> Vec<u8> {
    let alg = match d {
        Digest::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        Digest::Sha256 => &digest::SHA256,
        Digest::Sha384 => &digest::SHA384,
        Digest::Sha512 => &digest::SHA512,
    };
    digest::digest(alg, data).as_ref().to_vec()
}

// ---------------------------------------------------------------------------------------
// Attributes
// ---------------------------------------------------------------------------------------

/// One attribute (RFC 5652 §5.3): a type and its values, each value kept as the DER (or
/// BER, when received) bytes of one element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub oid: ObjectIdentifier,
    pub values: Vec<Vec<u8>>,
}

impl Attribute {
    /// An attribute with one already encoded value.
    pub fn new(oid: ObjectIdentifier, value_der: Vec<u8>) -> Self {
        Attribute {
            oid,
            values: vec![value_der],
        }
    }

    /// A PrintableString value, as SCEP's messageType, pkiStatus, failInfo and
    /// transactionID are (RFC 8894 §3.2.1). Text outside the PrintableString alphabet
    /// (which a lenient parse may have accepted from a client) goes out as UTF8String
    /// rather than failing the reply.
    pub fn printable(oid: ObjectIdentifier, text: &str) -> Result<Self> {
        let value = match der::asn1::PrintableStringRef::new(text) {
            Ok(p) => ber::der_string(&p),
            Err(_) => der::asn1::Utf8StringRef::new(text).and_then(|u| ber::der_string(&u)),
        }
        .map_err(|e| Error::Malformed(format!("attribute text: {e}")))?;
        Ok(Attribute::new(oid, value))
    }

    /// A UTF8String value (failInfoText, RFC 8894 §3.2.1.4).
    pub fn utf8(oid: ObjectIdentifier, text: &str) -> Result<Self> {
        let value = der::asn1::Utf8StringRef::new(text)
            .and_then(|u| ber::der_string(&u))
            .map_err(|e| Error::Malformed(format!("attribute text: {e}")))?;
        Ok(Attribute::new(oid, value))
    }

    /// An OCTET STRING value (senderNonce, recipientNonce, messageDigest).
    pub fn octet_string(oid: ObjectIdentifier, bytes: &[u8]) -> Self {
        Attribute::new(oid, ber::der_octet_string(bytes))
    }

    /// `Attribute ::= SEQUENCE { attrType OBJECT IDENTIFIER, attrValues SET OF
    /// AttributeValue }`, values DER-sorted.
    pub fn to_der(&self) -> Vec<u8> {
        let values = ber::der_set_of(self.values.clone());
        ber::der_sequence(&[&ber::der_oid(&self.oid), &values])
    }

    /// The single value, parsed. SCEP attributes are single-valued (RFC 8894 §3.2.1).
    pub fn single_value(&self) -> Result<Tlv<'_>> {
        match self.values.as_slice() {
            [one] => Ok(ber::parse(one)?),
            _ => Err(Error::Malformed(format!(
                "attribute {} must have exactly one value",
                self.oid
            ))),
        }
    }
}

/// Parses `SET OF Attribute` content; rejects an attribute type given twice, so that
/// there is never a question of which value was meant (RFC 5652 §5.3 forbids it for
/// contentType, messageDigest and signingTime; SCEP's are single as well).
fn parse_attributes(set: Tlv<'_>) -> Result<Vec<Attribute>> {
    let mut attributes: Vec<Attribute> = Vec::new();
    let mut items = set.children()?;
    while let Some(item) = items.next_tlv()? {
        let mut fields = item.sequence("Attribute")?;
        let oid = fields.required("attrType")?.oid()?;
        let values = fields
            .required("attrValues")?
            .set("attrValues")?
            .collect_all()?
            .into_iter()
            .map(|v| v.raw().to_vec())
            .collect();
        if attributes.iter().any(|a| a.oid == oid) {
            return Err(Error::Malformed(format!("attribute {oid} given twice")));
        }
        attributes.push(Attribute { oid, values });
    }
    Ok(attributes)
}

// ---------------------------------------------------------------------------------------
// Certificates, read leniently
// ---------------------------------------------------------------------------------------

/// How a SignerInfo or RecipientInfo names its certificate (RFC 5652 §5.3 `sid`,
/// §6.2.1 `rid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerId {
    /// `issuer` is the raw `Name` element, `serial` the INTEGER's content octets, both
    /// as received (serials up to any length: certmonger's have 32 bytes).
    IssuerAndSerial { issuer: Vec<u8>, serial: Vec<u8> },
    /// The subjectKeyIdentifier value.
    SubjectKeyId(Vec<u8>),
}

impl SignerId {
    /// Reads `IssuerAndSerialNumber` or `[0] SubjectKeyIdentifier`.
    pub fn parse(tlv: Tlv<'_>) -> Result<Self> {
        if tlv.tag() == tag::SEQUENCE {
            let mut fields = tlv.sequence("IssuerAndSerialNumber")?;
            let issuer = fields.required("issuer")?.expect(tag::SEQUENCE, "Name")?;
            let serial = fields.required("serialNumber")?.integer_bytes()?;
            return Ok(SignerId::IssuerAndSerial {
                issuer: issuer.raw().to_vec(),
                serial: serial.to_vec(),
            });
        }
        if tlv.is_context(0) {
            return Ok(SignerId::SubjectKeyId(
                tlv.implicit_octet_string(0)?.into_owned(),
            ));
        }
        Err(Error::Malformed("unknown signer identifier".into()))
    }
}

/// The fields of an X.509 certificate (RFC 5280 §4.1) that CMS needs, borrowed from
/// its DER without decoding or re-encoding anything else.
#[derive(Debug, Clone, Copy)]
pub struct CertificateFields<'a> {
    /// The whole certificate.
    pub raw: &'a [u8],
    /// The serialNumber element (tag, length, content).
    pub serial_tlv: &'a [u8],
    /// The serialNumber's content octets.
    pub serial: &'a [u8],
    /// The issuer `Name` element.
    pub issuer: &'a [u8],
    /// The subject `Name` element.
    pub subject: &'a [u8],
    /// The `SubjectPublicKeyInfo` element.
    pub spki: &'a [u8],
    /// The subjectKeyIdentifier extension's key identifier, if present.
    pub subject_key_id: Option<&'a [u8]>,
}

impl<'a> CertificateFields<'a> {
    pub fn parse(der: &'a [u8]) -> Result<Self> {
        let cert = ber::parse(der)?;
        let mut outer = cert.sequence("Certificate")?;
        let mut tbs = outer
            .required("tbsCertificate")?
            .sequence("TBSCertificate")?;
        // version [0] EXPLICIT DEFAULT v1: absent in certmonger's v1 certificate.
        tbs.optional(tag::context_constructed(0))?;
        let serial = tbs.required("serialNumber")?;
        let serial_bytes = serial.integer_bytes()?;
        tbs.required("signature")?
            .expect(tag::SEQUENCE, "AlgorithmIdentifier")?;
        let issuer = tbs.required("issuer")?.expect(tag::SEQUENCE, "Name")?;
        tbs.required("validity")?
            .expect(tag::SEQUENCE, "Validity")?;
        let subject = tbs.required("subject")?.expect(tag::SEQUENCE, "Name")?;
        let spki = tbs
            .required("subjectPublicKeyInfo")?
            .expect(tag::SEQUENCE, "SubjectPublicKeyInfo")?;
        tbs.optional(tag::context_primitive(1))?;
        tbs.optional(tag::context_primitive(2))?;
        let subject_key_id = match tbs.optional(tag::context_constructed(3))? {
            Some(exts) => find_subject_key_id(exts)?,
            None => None,
        };
        Ok(CertificateFields {
            raw: der,
            serial_tlv: serial.raw(),
            serial: serial_bytes,
            issuer: issuer.raw(),
            subject: subject.raw(),
            spki: spki.raw(),
            subject_key_id,
        })
    }

    /// Whether `id` names this certificate.
    pub fn matches(&self, id: &SignerId) -> bool {
        match id {
            SignerId::IssuerAndSerial { issuer, serial } => {
                issuer.as_slice() == self.issuer && serial.as_slice() == self.serial
            }
            SignerId::SubjectKeyId(ski) => self.subject_key_id == Some(ski.as_slice()),
        }
    }

    /// `IssuerAndSerialNumber ::= SEQUENCE { issuer Name, serialNumber
    /// CertificateSerialNumber }` (RFC 5652 §10.2.4), copied from the certificate's own
    /// bytes, so that a 32-byte serial or an unusual Name survives unchanged.
    pub fn issuer_and_serial_der(&self) -> Vec<u8> {
        ber::der_sequence(&[self.issuer, self.serial_tlv])
    }
}

/// `extensions [3] EXPLICIT SEQUENCE OF Extension`: the subjectKeyIdentifier's value,
/// `SubjectKeyIdentifier ::= OCTET STRING` inside the extnValue OCTET STRING.
fn find_subject_key_id<'a>(exts: Tlv<'a>) -> Result<Option<&'a [u8]>> {
    let mut list = exts.explicit(3, "extensions")?.sequence("Extensions")?;
    while let Some(ext) = list.next_tlv()? {
        let mut fields = ext.sequence("Extension")?;
        if fields.required("extnID")?.oid()? != oid::SUBJECT_KEY_IDENTIFIER {
            continue;
        }
        fields.optional(tag::BOOLEAN)?;
        let value = fields
            .required("extnValue")?
            .expect(tag::OCTET_STRING, "extnValue")?;
        let inner = ber::parse(value.content())?.expect(tag::OCTET_STRING, "keyIdentifier")?;
        return Ok(Some(inner.content()));
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------
// SignedData, parsed
// ---------------------------------------------------------------------------------------

/// One SignerInfo (RFC 5652 §5.3), owned.
#[derive(Debug, Clone)]
pub struct SignerInfo {
    pub sid: SignerId,
    pub digest_algorithm: ObjectIdentifier,
    /// The `[0] IMPLICIT SET OF Attribute` element exactly as received. RFC 5652 §5.4:
    /// the signature covers its DER encoding with the SET OF tag (0x31), so
    /// verification hashes these bytes retagged, never a re-encoding.
    pub signed_attrs_raw: Option<Vec<u8>>,
    pub signed_attrs: Vec<Attribute>,
    pub signature_algorithm: ObjectIdentifier,
    pub signature: Vec<u8>,
}

impl SignerInfo {
    /// The signed attribute of type `oid`.
    pub fn attribute(&self, oid: &ObjectIdentifier) -> Option<&Attribute> {
        self.signed_attrs.iter().find(|a| a.oid == *oid)
    }

    fn parse(tlv: Tlv<'_>) -> Result<Self> {
        let mut fields = tlv.sequence("SignerInfo")?;
        fields.required("version")?.small_uint()?;
        let sid = SignerId::parse(fields.required("sid")?)?;
        let digest_algorithm = algorithm_oid(fields.required("digestAlgorithm")?)?;
        let (signed_attrs_raw, signed_attrs) = match fields.optional(tag::context_constructed(0))? {
            Some(attrs) => (Some(attrs.raw().to_vec()), parse_attributes(attrs)?),
            None => (None, Vec::new()),
        };
        let signature_algorithm = algorithm_oid(fields.required("signatureAlgorithm")?)?;
        let signature = fields.required("signature")?.octet_string()?.into_owned();
        // unsignedAttrs [1] is ignored: nothing in SCEP uses it.
        Ok(SignerInfo {
            sid,
            digest_algorithm,
            signed_attrs_raw,
            signed_attrs,
            signature_algorithm,
            signature,
        })
    }
}

/// The OID of an `AlgorithmIdentifier` (parameters are checked where they matter).
fn algorithm_oid(tlv: Tlv<'_>) -> Result<ObjectIdentifier> {
    Ok(tlv
        .sequence("AlgorithmIdentifier")?
        .required("algorithm")?
        .oid()?)
}

/// A ContentInfo of type signedData (RFC 5652 §3, §5.1), owned.
#[derive(Debug, Clone)]
pub struct SignedData {
    /// eContentType.
    pub content_type: ObjectIdentifier,
    /// eContent, reassembled if it came as a constructed OCTET STRING; `None` when
    /// absent (detached or degenerate).
    pub content: Option<Vec<u8>>,
    /// Each certificate's bytes as received.
    pub certificates: Vec<Vec<u8>>,
    /// Each CRL's bytes as received.
    pub crls: Vec<Vec<u8>>,
    pub signers: Vec<SignerInfo>,
}

impl SignedData {
    /// Parses a `ContentInfo { id-signedData, [0] EXPLICIT SignedData }`, BER allowed.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut ci = ber::parse(bytes)?.sequence("ContentInfo")?;
        if ci.required("contentType")?.oid()? != oid::SIGNED_DATA {
            return Err(Error::Malformed("not a SignedData".into()));
        }
        let sd = ci.required("content")?.explicit(0, "content")?;
        Self::parse_signed_data(sd)
    }

    fn parse_signed_data(sd: Tlv<'_>) -> Result<Self> {
        let mut fields = sd.sequence("SignedData")?;
        fields.required("version")?.small_uint()?;
        fields
            .required("digestAlgorithms")?
            .set("digestAlgorithms")?;
        let (content_type, content) = parse_encap_content(fields.required("encapContentInfo")?)?;
        // certificates [0] IMPLICIT CertificateSet: kept as raw bytes, each.
        let certificates = match fields.optional_context(0)? {
            Some(set) => raw_children(set)?,
            None => Vec::new(),
        };
        let crls = match fields.optional_context(1)? {
            Some(set) => raw_children(set)?,
            None => Vec::new(),
        };
        let mut signer_set = fields.required("signerInfos")?.set("signerInfos")?;
        let mut signers = Vec::new();
        while let Some(si) = signer_set.next_tlv()? {
            signers.push(SignerInfo::parse(si)?);
        }
        Ok(SignedData {
            content_type,
            content,
            certificates,
            crls,
            signers,
        })
    }

    /// The one signer SCEP messages have (RFC 8894 §3.2).
    pub fn single_signer(&self) -> Result<&SignerInfo> {
        match self.signers.as_slice() {
            [one] => Ok(one),
            [] => Err(Error::Malformed("the SignedData has no signer".into())),
            _ => Err(Error::Malformed(
                "the SignedData has several signers".into(),
            )),
        }
    }

    /// The certificate among `certificates` that `signer.sid` names.
    pub fn signer_certificate(&self, signer: &SignerInfo) -> Result<&[u8]> {
        self.certificates
            .iter()
            .find(|c| CertificateFields::parse(c).is_ok_and(|f| f.matches(&signer.sid)))
            .map(Vec::as_slice)
            .ok_or_else(|| Error::Malformed("the signer certificate is not included".into()))
    }

    /// Verifies `signer` with the public key of `certificate` (DER):
    /// RFC 5652 §5.4 (messageDigest equals the digest of eContent, contentType equals
    /// eContentType) and §5.6 (the signature over the signed attributes as received).
    /// Does not validate the certificate itself: SCEP requesters sign with self-signed
    /// certificates (RFC 8894 §2.3).
    pub fn verify_signer(&self, signer: &SignerInfo, certificate: &[u8]) -> Result<()> {
        let digest = digest_from_oid(&signer.digest_algorithm).ok_or_else(|| {
            Error::UnsupportedAlgorithm(format!("digest {}", signer.digest_algorithm))
        })?;
        let content = self.content.as_deref().unwrap_or_default();
        let cert = CertificateFields::parse(certificate)
            .map_err(|_| Error::BadSignature("the signer certificate is unreadable".into()))?;
        let signed_bytes = match &signer.signed_attrs_raw {
            Some(raw) => {
                self.check_signed_attributes(signer, digest, content)?;
                let mut retagged = raw.clone();
                if let Some(first) = retagged.first_mut() {
                    *first = tag::SET;
                }
                retagged
            }
            // RFC 5652 §5.4: without signed attributes the signature covers the content.
            None => content.to_vec(),
        };
        verify_signature(
            cert.spki,
            &signer.signature_algorithm,
            digest,
            &signed_bytes,
            &signer.signature,
        )
    }

    /// RFC 5652 §5.3: with signed attributes, contentType and messageDigest MUST be
    /// present; messageDigest binds the content to the signature.
    fn check_signed_attributes(
        &self,
        signer: &SignerInfo,
        digest: Digest,
        content: &[u8],
    ) -> Result<()> {
        let bad = |what: &str| Error::BadSignature(what.to_string());
        let md_attr = signer
            .attribute(&oid::MESSAGE_DIGEST)
            .ok_or_else(|| bad("no messageDigest attribute"))?;
        let md_value = md_attr
            .single_value()
            .map_err(|_| bad("bad messageDigest"))?;
        let md = md_value
            .octet_string()
            .map_err(|_| bad("bad messageDigest"))?;
        if *md != compute_digest(digest, content)[..] {
            return Err(bad("messageDigest does not match the content"));
        }
        if let Some(ct) = signer.attribute(&oid::CONTENT_TYPE) {
            let ct = ct
                .single_value()
                .and_then(|v| Ok(v.oid()?))
                .map_err(|_| bad("bad contentType attribute"))?;
            if ct != self.content_type {
                return Err(bad("contentType attribute differs from eContentType"));
            }
        }
        Ok(())
    }
}

/// `EncapsulatedContentInfo ::= SEQUENCE { eContentType, eContent [0] EXPLICIT OCTET
/// STRING OPTIONAL }`; the OCTET STRING may be constructed (BER).
fn parse_encap_content(tlv: Tlv<'_>) -> Result<(ObjectIdentifier, Option<Vec<u8>>)> {
    let mut fields = tlv.sequence("EncapsulatedContentInfo")?;
    let content_type = fields.required("eContentType")?.oid()?;
    let content = match fields.optional(tag::context_constructed(0))? {
        Some(explicit) => {
            let mut inner = explicit.children()?;
            // An empty [0] (seen in the wild) is taken as empty content.
            match inner.next_tlv()? {
                Some(os) => Some(os.octet_string()?.into_owned()),
                None => Some(Vec::new()),
            }
        }
        None => None,
    };
    Ok((content_type, content))
}

/// The raw bytes of each child of an IMPLICIT SET (certificates, crls).
fn raw_children(set: Tlv<'_>) -> Result<Vec<Vec<u8>>> {
    Ok(set
        .children()?
        .collect_all()?
        .into_iter()
        .map(|c| c.raw().to_vec())
        .collect())
}

// ---------------------------------------------------------------------------------------
// Signature verification
// ---------------------------------------------------------------------------------------

/// The public key in a SubjectPublicKeyInfo (RFC 5280 §4.1.2.7).
enum PublicKey<'a> {
    /// The PKCS#1 RSAPublicKey, which aws-lc-rs's `UnparsedPublicKey` takes.
    Rsa(&'a [u8]),
    /// The uncompressed point, with its curve.
    Ec {
        point: &'a [u8],
        curve: ObjectIdentifier,
    },
}

fn parse_spki(spki: &[u8]) -> Result<PublicKey<'_>> {
    let mut fields = ber::parse(spki)?.sequence("SubjectPublicKeyInfo")?;
    let mut alg = fields
        .required("algorithm")?
        .sequence("AlgorithmIdentifier")?;
    let alg_oid = alg.required("algorithm")?.oid()?;
    let key = fields.required("subjectPublicKey")?.bit_string_bytes()?;
    if alg_oid == oid::RSA_ENCRYPTION {
        Ok(PublicKey::Rsa(key))
    } else if alg_oid == oid::EC_PUBLIC_KEY {
        let curve = alg.required("namedCurve")?.oid()?;
        Ok(PublicKey::Ec { point: key, curve })
    } else {
        Err(Error::UnsupportedAlgorithm(format!("public key {alg_oid}")))
    }
}

/// What a SignerInfo signatureAlgorithm says: the key type and the hash. Plain
/// rsaEncryption or id-ecPublicKey (RFC 3370 §3.2, seen from older clients) take the
/// hash from the digestAlgorithm.
fn signature_hash(sig_alg: &ObjectIdentifier, digest: Digest) -> Result<(bool, Digest)> {
    let (is_rsa, hash) = match *sig_alg {
        oid::RSA_ENCRYPTION => (true, digest),
        oid::SHA1_WITH_RSA => (true, Digest::Sha1),
        oid::SHA256_WITH_RSA => (true, Digest::Sha256),
        oid::SHA384_WITH_RSA => (true, Digest::Sha384),
        oid::SHA512_WITH_RSA => (true, Digest::Sha512),
        oid::EC_PUBLIC_KEY => (false, digest),
        oid::ECDSA_WITH_SHA1 => (false, Digest::Sha1),
        oid::ECDSA_WITH_SHA256 => (false, Digest::Sha256),
        oid::ECDSA_WITH_SHA384 => (false, Digest::Sha384),
        oid::ECDSA_WITH_SHA512 => (false, Digest::Sha512),
        other => {
            return Err(Error::UnsupportedAlgorithm(format!(
                "signature algorithm {other}"
            )))
        }
    };
    Ok((is_rsa, hash))
}

/// Picks the aws-lc-rs verification algorithm. RSA accepts 1024-bit keys and up
/// (`..._1024_8192_..._FOR_LEGACY_USE_ONLY`): devices with 1024-bit self-signed
/// signer keys exist, and a request signature protects only the request, whose CSR is
/// checked by policy anyway. aws-lc-rs has no 1024-bit SHA-384 variant.
fn verification_algorithm(
    key: &PublicKey<'_>,
    hash: Digest,
) -> Result<&'static dyn VerificationAlgorithm> {
    Ok(match (key, hash) {
        (PublicKey::Rsa(_), Digest::Sha1) => {
            &signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY
        }
        (PublicKey::Rsa(_), Digest::Sha256) => {
            &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY
        }
        (PublicKey::Rsa(_), Digest::Sha384) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (PublicKey::Rsa(_), Digest::Sha512) => {
            &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY
        }
        (PublicKey::Ec { curve, .. }, hash) => match (*curve, hash) {
            (oid::SECP256R1, Digest::Sha1) => &signature::ECDSA_P256_SHA1_ASN1,
            (oid::SECP256R1, Digest::Sha256) => &signature::ECDSA_P256_SHA256_ASN1,
            (oid::SECP256R1, Digest::Sha384) => &signature::ECDSA_P256_SHA384_ASN1,
            (oid::SECP256R1, Digest::Sha512) => &signature::ECDSA_P256_SHA512_ASN1,
            (oid::SECP384R1, Digest::Sha256) => &signature::ECDSA_P384_SHA256_ASN1,
            (oid::SECP384R1, Digest::Sha384) => &signature::ECDSA_P384_SHA384_ASN1,
            (oid::SECP384R1, Digest::Sha512) => &signature::ECDSA_P384_SHA512_ASN1,
            (curve, hash) => {
                return Err(Error::UnsupportedAlgorithm(format!(
                    "ECDSA on {curve} with {hash:?}"
                )))
            }
        },
    })
}

/// Verifies `sig` over `message` with the key in `spki`.
pub fn verify_signature(
    spki: &[u8],
    sig_alg: &ObjectIdentifier,
    digest: Digest,
    message: &[u8],
    sig: &[u8],
) -> Result<()> {
    let key = parse_spki(spki)?;
    let (wants_rsa, hash) = signature_hash(sig_alg, digest)?;
    let key_bytes = match (&key, wants_rsa) {
        (PublicKey::Rsa(k), true) => *k,
        (PublicKey::Ec { point, .. }, false) => *point,
        _ => {
            return Err(Error::BadSignature(
                "the signature algorithm does not fit the signer's key".into(),
            ))
        }
    };
    let alg = verification_algorithm(&key, hash)?;
    super::public_keys::verify(alg, key_bytes, message, sig)
        .map_err(|_| Error::BadSignature("the signature does not verify".into()))
}

// ---------------------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------------------

/// The signature algorithm for a key and a wanted digest. An EC key signs with its
/// curve's digest (what an HSM's combined mechanism does), so the digest follows the
/// key there. RSA with SHA-1 is refused: aws-lc-rs cannot sign it, and RFC 8894 §3.5.2
/// prefers SHA-256 anyway.
fn signing_choice(key: KeyAlgorithm, digest: Digest) -> Result<(SignatureAlgorithm, Digest)> {
    Ok(match (key, digest) {
        (KeyAlgorithm::Rsa { .. }, Digest::Sha256) => (SignatureAlgorithm::RsaPkcs1Sha256, digest),
        (KeyAlgorithm::Rsa { .. }, Digest::Sha384) => (SignatureAlgorithm::RsaPkcs1Sha384, digest),
        (KeyAlgorithm::Rsa { .. }, Digest::Sha512) => (SignatureAlgorithm::RsaPkcs1Sha512, digest),
        (KeyAlgorithm::Rsa { .. }, Digest::Sha1) => {
            return Err(Error::UnsupportedAlgorithm(
                "the RA does not sign with SHA-1".into(),
            ))
        }
        (KeyAlgorithm::EcP256, _) => (SignatureAlgorithm::EcdsaSha256, Digest::Sha256),
        (KeyAlgorithm::EcP384, _) => (SignatureAlgorithm::EcdsaSha384, Digest::Sha384),
    })
}

/// The SignerInfo signatureAlgorithm: sha*WithRSAEncryption with NULL parameters (RFC
/// 4055 §5), ecdsa-with-SHA* with absent parameters (RFC 5758 §3.2).
fn signature_algorithm_der(alg: SignatureAlgorithm) -> Vec<u8> {
    let (o, null) = match alg {
        SignatureAlgorithm::RsaPkcs1Sha256 => (oid::SHA256_WITH_RSA, true),
        SignatureAlgorithm::RsaPkcs1Sha384 => (oid::SHA384_WITH_RSA, true),
        SignatureAlgorithm::RsaPkcs1Sha512 => (oid::SHA512_WITH_RSA, true),
        SignatureAlgorithm::EcdsaSha256 => (oid::ECDSA_WITH_SHA256, false),
        SignatureAlgorithm::EcdsaSha384 => (oid::ECDSA_WITH_SHA384, false),
    };
    if null {
        ber::der_sequence(&[&ber::der_oid(&o), &ber::DER_NULL])
    } else {
        ber::der_sequence(&[&ber::der_oid(&o)])
    }
}

/// A digestAlgorithm: RFC 5754 §2 says the SHA-2 parameters SHOULD be absent.
fn digest_algorithm_der(d: Digest) -> Vec<u8> {
    ber::der_sequence(&[&ber::der_oid(&digest_oid(d))])
}

/// signingTime (RFC 5652 §11.3) as UTCTime, or `None` past 2049 where UTCTime ends
/// (the attribute is optional).
fn signing_time_attribute() -> Option<Attribute> {
    let time = der::asn1::UtcTime::from_system_time(SystemTime::now()).ok()?;
    let value = ber::der_string(&time).ok()?;
    Some(Attribute::new(oid::SIGNING_TIME, value))
}

/// Maps a signing failure of the RA key: an HSM that cannot sign now is an outage.
fn key_error(e: KeyError) -> Error {
    Error::Unavailable(format!("the RA key cannot sign: {e}"))
}

/// Builds a DER `ContentInfo { signedData }` (RFC 5652 §5) signed by `signer`:
///
/// - eContent is `content` (present even when empty; see `scep::certrep` for why);
/// - signedAttrs are contentType, messageDigest, signingTime and `attributes` (which
///   must not repeat those three), DER-sorted (X.690 §11.6) before signing, because the
///   signature covers their DER encoding (RFC 5652 §5.4);
/// - sid is the RA certificate's IssuerAndSerialNumber, never a subjectKeyIdentifier:
///   OpenSSL's PKCS7 API (certmonger) and Go's pkcs7 (micromdm) find no signer otherwise;
/// - the RA certificate is included, so that clients can verify without a lookup.
pub fn build_signed(
    signer: &Credential,
    digest: Digest,
    content_type: &ObjectIdentifier,
    content: &[u8],
    attributes: &[Attribute],
) -> Result<Vec<u8>> {
    let (sig_alg, digest) = signing_choice(signer.key.algorithm(), digest)?;
    let cert = CertificateFields::parse(&signer.certificate)
        .map_err(|e| Error::Unavailable(format!("the RA certificate is unreadable: {e}")))?;

    let mut attrs = vec![
        Attribute::new(oid::CONTENT_TYPE, ber::der_oid(content_type)),
        Attribute::octet_string(oid::MESSAGE_DIGEST, &compute_digest(digest, content)),
    ];
    attrs.extend(signing_time_attribute());
    attrs.extend_from_slice(attributes);
    let signed_attrs = ber::der_set_of(attrs.iter().map(Attribute::to_der).collect());
    let signature = signer.key.sign(sig_alg, &signed_attrs).map_err(key_error)?;

    // The same bytes go into the SignerInfo with the [0] IMPLICIT tag.
    let mut signed_attrs_implicit = signed_attrs;
    signed_attrs_implicit[0] = tag::context_constructed(0);
    let signer_info = ber::der_sequence(&[
        &ber::der_small_uint(1),
        &cert.issuer_and_serial_der(),
        &digest_algorithm_der(digest),
        &signed_attrs_implicit,
        &signature_algorithm_der(sig_alg),
        &ber::der_octet_string(&signature),
    ]);

    let encap = ber::der_sequence(&[
        &ber::der_oid(content_type),
        &ber::der_tlv(
            tag::context_constructed(0),
            &[&ber::der_octet_string(content)],
        ),
    ]);
    // RFC 5652 §5.1: version 1 for id-data and issuerAndSerialNumber signers, else 3.
    let version = if *content_type == oid::DATA { 1 } else { 3 };
    let signed_data = ber::der_sequence(&[
        &ber::der_small_uint(version),
        &ber::der_set_of(vec![digest_algorithm_der(digest)]),
        &encap,
        &ber::der_tlv(tag::context_constructed(0), &[&signer.certificate]),
        &ber::der_set_of(vec![signer_info]),
    ]);
    Ok(content_info(&oid::SIGNED_DATA, &signed_data))
}

/// `ContentInfo ::= SEQUENCE { contentType, content [0] EXPLICIT ANY }` (RFC 5652 §3).
pub fn content_info(content_type: &ObjectIdentifier, content: &[u8]) -> Vec<u8> {
    ber::der_sequence(&[
        &ber::der_oid(content_type),
        &ber::der_tlv(tag::context_constructed(0), &[content]),
    ])
}

/// The degenerate certs-only SignedData (RFC 8894 §3.4 and §4.2.1.2, RFC 5652 §5.1): no
/// signers, no content, the certificates copied byte for byte. GetCACert with an RA
/// and a CertRep SUCCESS carry this.
pub fn certs_only(certs: &[&[u8]]) -> Vec<u8> {
    degenerate(certs, &[])
}

/// The degenerate SignedData carrying certificates and/or CRLs (a GetCRL reply, RFC
/// 8894 §3.3.4, carries one CRL and no certificate).
pub fn degenerate(certs: &[&[u8]], crls: &[&[u8]]) -> Vec<u8> {
    let mut parts: Vec<Vec<u8>> = vec![
        ber::der_small_uint(1),
        ber::der_tlv(tag::SET, &[]),
        ber::der_sequence(&[&ber::der_oid(&oid::DATA)]),
    ];
    if !certs.is_empty() {
        parts.push(ber::der_tlv(tag::context_constructed(0), certs));
    }
    if !crls.is_empty() {
        parts.push(ber::der_tlv(tag::context_constructed(1), crls));
    }
    parts.push(ber::der_tlv(tag::SET, &[]));
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    content_info(&oid::SIGNED_DATA, &ber::der_sequence(&refs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;

    fn data(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name);
        std::fs::read(path).unwrap()
    }

    fn pem_cert(name: &str) -> Vec<u8> {
        let pem = data(name);
        let (label, der) = der::pem::decode_vec(&pem).unwrap();
        assert_eq!(label, "CERTIFICATE");
        der
    }

    pub(crate) fn ra_credential() -> Credential {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ra-ca.key.pem");
        Credential {
            key: Arc::new(scep_hsm::SoftwareKey::from_file(&path).unwrap()),
            certificate: pem_cert("ra-ca.pem").into(),
        }
    }

    #[test]
    fn parses_and_verifies_captured_messages() {
        for name in [
            "scepclient-pkcsreq.der",
            "certmonger-pkcsreq.der",
            "scepclient-certrep.der",
            "certmonger-certrep.der",
        ] {
            let bytes = data(name);
            let sd = SignedData::parse(&bytes).unwrap();
            assert_eq!(sd.content_type, oid::DATA, "{name}");
            let signer = sd.single_signer().unwrap();
            let cert = sd.signer_certificate(signer).unwrap();
            sd.verify_signer(signer, cert)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let bytes = data("certmonger-pkcsreq.der");
        let sd = SignedData::parse(&bytes).unwrap();
        let signer = sd.single_signer().unwrap();
        let cert = sd.signer_certificate(signer).unwrap().to_vec();
        let mut changed = sd.clone();
        if let Some(c) = changed.content.as_mut() {
            c[40] ^= 1;
        }
        assert!(matches!(
            changed.verify_signer(signer, &cert),
            Err(Error::BadSignature(_))
        ));
        let mut bad_sig = signer.clone();
        bad_sig.signature[5] ^= 1;
        assert!(matches!(
            sd.verify_signer(&bad_sig, &cert),
            Err(Error::BadSignature(_))
        ));
    }

    #[test]
    fn certmonger_long_serial_is_kept() {
        let bytes = data("certmonger-pkcsreq.der");
        let sd = SignedData::parse(&bytes).unwrap();
        let signer = sd.single_signer().unwrap();
        let SignerId::IssuerAndSerial { serial, .. } = &signer.sid else {
            panic!("expected issuerAndSerialNumber");
        };
        assert_eq!(serial.len(), 32);
        let cert = CertificateFields::parse(sd.signer_certificate(signer).unwrap()).unwrap();
        assert_eq!(cert.serial.len(), 32);
        // IssuerAndSerialNumber rebuilt from the certificate equals the SignerInfo's.
        let ias = cert.issuer_and_serial_der();
        assert!(bytes.windows(ias.len()).any(|w| w == ias.as_slice()));
    }

    #[test]
    fn build_signed_round_trips() {
        let ra = ra_credential();
        let attrs =
            [Attribute::printable(crate::scep::message::oid::TRANSACTION_ID, "abc").unwrap()];
        let out = build_signed(&ra, Digest::Sha256, &oid::DATA, b"hello", &attrs).unwrap();
        let sd = SignedData::parse(&out).unwrap();
        assert_eq!(sd.content.as_deref(), Some(&b"hello"[..]));
        assert_eq!(sd.certificates, vec![ra.certificate.to_vec()]);
        let signer = sd.single_signer().unwrap();
        assert!(matches!(signer.sid, SignerId::IssuerAndSerial { .. }));
        sd.verify_signer(signer, sd.signer_certificate(signer).unwrap())
            .unwrap();
        // SHA-1 signing is refused.
        assert!(matches!(
            build_signed(&ra, Digest::Sha1, &oid::DATA, b"x", &[]),
            Err(Error::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn ec_signer_round_trips() {
        // An EC RA key with a certificate is not in the test data; verify the raw
        // signature path with a generated key and a hand-made SPKI instead.
        let key = scep_hsm::SoftwareKey::generate_p256("ec".into()).unwrap();
        use scep_hsm::Key;
        let sig = key.sign(SignatureAlgorithm::EcdsaSha256, b"attrs").unwrap();
        verify_signature(
            key.public_key_info(),
            &oid::ECDSA_WITH_SHA256,
            Digest::Sha256,
            b"attrs",
            &sig,
        )
        .unwrap();
        assert!(verify_signature(
            key.public_key_info(),
            &oid::SHA256_WITH_RSA,
            Digest::Sha256,
            b"attrs",
            &sig,
        )
        .is_err());
    }

    #[test]
    fn subject_key_identifier_signer_ids() {
        let ra = pem_cert("ra-ca.pem");
        let fields = CertificateFields::parse(&ra).unwrap();
        let ski = fields.subject_key_id.unwrap();
        assert_eq!(hex::encode(ski), "84f853410fd5c5c3655c6ce1009b544a5c8da20f");
        assert!(fields.matches(&SignerId::SubjectKeyId(ski.to_vec())));
        assert!(!fields.matches(&SignerId::SubjectKeyId(vec![1, 2, 3])));
        // [0] IMPLICIT SubjectKeyIdentifier as a SignerIdentifier.
        let sid = ber::der_tlv(tag::context_primitive(0), &[ski]);
        assert_eq!(
            SignerId::parse(ber::parse(&sid).unwrap()).unwrap(),
            SignerId::SubjectKeyId(ski.to_vec())
        );
    }

    #[test]
    fn certs_only_copies_certificates() {
        let a = pem_cert("ra-ca.pem");
        let req = data("certmonger-pkcsreq.der");
        let sd = SignedData::parse(&req).unwrap();
        let b = sd.certificates[0].clone();
        let out = certs_only(&[&a, &b]);
        let parsed = SignedData::parse(&out).unwrap();
        assert_eq!(parsed.certificates, vec![a.clone(), b]);
        assert!(parsed.signers.is_empty());
        assert!(parsed.content.is_none());
        let crl_only = degenerate(&[], &[&a]);
        assert_eq!(SignedData::parse(&crl_only).unwrap().crls, vec![a]);
    }
}
