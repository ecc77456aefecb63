//! Reading a pkiMessage (RFC 8894 §3.2): SignedData → signed attributes → signature
//! check → EnvelopedData → decrypted messageData.
//!
//! The three steps are separate so that the caller can answer each failure the way
//! RFC 8894 §3.3.2 wants: [`SignedRequest::parse`] fails only when there is nobody to
//! answer (no signer certificate, transactionID or senderNonce: HTTP 400); after it,
//! every failure can become a signed CertRep FAILURE addressed with the header.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::cms::algorithms::{ContentCipher, Digest};
use crate::cms::ber::{self, tag};
use crate::cms::envelope;
use crate::cms::signed::{digest_from_oid, Attribute, SignedData, SignerInfo};
use crate::error::{Error, Result};
use crate::ra::RaKeys;
use crate::scep::message::{oid, MessageType, Nonce, TransactionId};

/// Which legacy algorithms this server accepts (config `[crypto]`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CryptoPolicy {
    /// Accept DES and 3DES content encryption (and answer in them).
    pub legacy_des: bool,
}

/// What every request carries outside its envelope: enough to sign and address a reply.
#[derive(Debug, Clone)]
pub struct RequestHeader {
    pub message_type: MessageType,
    pub transaction_id: TransactionId,
    pub sender_nonce: Nonce,
    /// The signer certificate exactly as received (self-signed for PKCSReq, the
    /// certificate being renewed for RenewalReq). The reply is encrypted to it.
    pub signer_certificate: Vec<u8>,
    /// The request's digest; the reply uses it when it is SHA-2, else SHA-256.
    pub digest: Digest,
}

/// A parsed, not yet verified, pkiMessage.
#[derive(Debug)]
pub struct SignedRequest {
    pub header: RequestHeader,
    signed: SignedData,
    signer: SignerInfo,
    /// The SignerInfo's digest, `None` if we do not support it (then `verify` answers
    /// badAlg, while `header.digest` still says SHA-256 for the FAILURE reply).
    digest: Option<Digest>,
    /// Set by a successful `verify`, so that `open` never decrypts unverified input
    /// and does not verify twice.
    verified: AtomicBool,
}

impl SignedRequest {
    /// Parses the outer SignedData and the SCEP signed attributes. Fails with
    /// `Error::Malformed` (HTTP 400) when there is nothing we could address a reply to:
    /// no readable SignedData, not exactly one signer, no signer certificate, or a
    /// missing or invalid messageType, transactionID (printable text of at most
    /// [`TransactionId::MAX_LEN`] bytes) or senderNonce (exactly 16 bytes).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let signed = SignedData::parse(bytes)?;
        let signer = signed.single_signer()?.clone();
        let signer_certificate = signed.signer_certificate(&signer)?.to_vec();
        let message_type = MessageType::from_code(text_attribute(&signer, &oid::MESSAGE_TYPE)?)
            .ok_or_else(|| Error::Malformed("unknown messageType".into()))?;
        let transaction_id = parse_transaction_id(text_attribute(&signer, &oid::TRANSACTION_ID)?)?;
        let sender_nonce = parse_nonce(&signer, &oid::SENDER_NONCE)?;
        let digest = digest_from_oid(&signer.digest_algorithm);
        Ok(SignedRequest {
            header: RequestHeader {
                message_type,
                transaction_id,
                sender_nonce,
                signer_certificate,
                digest: digest.unwrap_or(Digest::Sha256),
            },
            signed,
            signer,
            digest,
            verified: AtomicBool::new(false),
        })
    }

    /// Checks the signature over the signed attributes as received
    /// (`Error::BadSignature`), and that messageDigest matches the content (RFC 5652
    /// §5.4). An unsupported digest or signature algorithm is
    /// `Error::UnsupportedAlgorithm` (badAlg). The signer certificate is not validated:
    /// for PKCSReq it is self-signed (RFC 8894 §2.3); for RenewalReq the enrollment
    /// code checks that the CA issued it.
    pub fn verify(&self) -> Result<()> {
        if self.digest.is_none() {
            return Err(Error::UnsupportedAlgorithm(format!(
                "digest {}",
                self.signer.digest_algorithm
            )));
        }
        self.signed
            .verify_signer(&self.signer, &self.header.signer_certificate)
            .map_err(|e| match e {
                Error::Malformed(m) => Error::BadSignature(m),
                other => other,
            })?;
        self.verified.store(true, Ordering::Release);
        Ok(())
    }

    /// The recipientNonce attribute, present in CertRep messages (for tests and
    /// clients of this crate that read replies).
    pub fn recipient_nonce(&self) -> Result<Option<Nonce>> {
        if self.signer.attribute(&oid::RECIPIENT_NONCE).is_none() {
            return Ok(None);
        }
        parse_nonce(&self.signer, &oid::RECIPIENT_NONCE).map(Some)
    }

    /// A signed attribute by type, for callers that need more than the header
    /// (pkiStatus and failInfo of a CertRep, the signingTime).
    pub fn attribute(&self, oid: &const_oid::ObjectIdentifier) -> Option<&Attribute> {
        self.signer.attribute(oid)
    }

    /// The encapsulated content (the pkcsPKIEnvelope), if any.
    pub fn content(&self) -> Option<&[u8]> {
        self.signed.content.as_deref()
    }

    /// Decrypts the envelope with the RA key its RecipientInfo names and decodes the
    /// messageData for the message type.
    ///
    /// Verifies first if [`verify`](Self::verify) has not succeeded yet. Then:
    /// `Error::UnsupportedAlgorithm` for a refused cipher or key transport (decided
    /// before the RA key is used), and the single `Error::Undecryptable` for every
    /// failure after that, including a plaintext that is not the structure the
    /// messageType calls for (a wrong key can yield valid-looking padding, so a decode
    /// error must not be distinguishable from a decryption error). A CertRep is not a
    /// request (`Error::Refused`).
    pub fn open(self, ra: &RaKeys, policy: CryptoPolicy) -> Result<Request> {
        if !self.verified.load(Ordering::Acquire) {
            self.verify()?;
        }
        if self.header.message_type == MessageType::CertRep {
            return Err(Error::Refused("a CertRep is not a request".into()));
        }
        let content = self.signed.content.as_deref().ok_or(Error::Undecryptable)?;
        let opened = envelope::open_for(content, &ra.decrypters(), policy.legacy_des)?;
        let body =
            decode_body(self.header.message_type, &opened.content).ok_or(Error::Undecryptable)?;
        Ok(Request {
            header: self.header,
            cipher: opened.cipher,
            body,
        })
    }
}

/// The single text value of a SCEP attribute (PrintableString per RFC 8894 §3.2.1).
pub(crate) fn text_attribute<'a>(
    signer: &'a SignerInfo,
    oid: &const_oid::ObjectIdentifier,
) -> Result<&'a str> {
    let attr = signer
        .attribute(oid)
        .ok_or_else(|| Error::Malformed(format!("missing attribute {oid}")))?;
    let value = attr.single_value()?;
    let text = value
        .text()
        .map_err(|e| Error::Malformed(format!("attribute {oid}: {e}")))?;
    Ok(text)
}

/// transactionID: RFC 8894 §3.2.1.1 says PrintableString; we take any printable ASCII
/// (some clients send URL-safe base64, whose `_` PrintableString lacks), bounded.
fn parse_transaction_id(text: &str) -> Result<TransactionId> {
    if !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Error::Malformed("transactionID is not printable".into()));
    }
    TransactionId::new(text.to_string())
        .ok_or_else(|| Error::Malformed("transactionID empty or too long".into()))
}

/// senderNonce / recipientNonce: an OCTET STRING of exactly 16 bytes (RFC 8894 §3.2.1.5).
pub(crate) fn parse_nonce(signer: &SignerInfo, oid: &const_oid::ObjectIdentifier) -> Result<Nonce> {
    let attr = signer
        .attribute(oid)
        .ok_or_else(|| Error::Malformed(format!("missing attribute {oid}")))?;
    let bytes = attr.single_value()?.octet_string()?;
    Nonce::from_slice(&bytes).ok_or_else(|| Error::Malformed("a nonce must have 16 bytes".into()))
}

/// The messageData for `message_type` (RFC 8894 §3.3): `None` if the plaintext is not
/// exactly that structure.
fn decode_body(message_type: MessageType, plaintext: &[u8]) -> Option<RequestBody> {
    let tlv = ber::parse(plaintext).ok()?;
    match message_type {
        // PKCSReq, RenewalReq: a PKCS#10 CertificationRequest (RFC 2986 §4.2), kept as
        // received for the CSR module to parse and check.
        MessageType::PkcsReq | MessageType::RenewalReq => {
            let mut fields = tlv.sequence("CertificationRequest").ok()?;
            fields.required("certificationRequestInfo").ok()?;
            fields.required("signatureAlgorithm").ok()?;
            fields.required("signature").ok()?;
            fields.finish().ok()?;
            Some(RequestBody::CertificationRequest(plaintext.to_vec()))
        }
        // CertPoll: IssuerAndSubject ::= SEQUENCE { issuer Name, subject Name }.
        MessageType::CertPoll => {
            let mut fields = tlv.sequence("IssuerAndSubject").ok()?;
            let issuer = fields
                .required("issuer")
                .ok()?
                .expect(tag::SEQUENCE, "Name")
                .ok()?;
            let subject = fields
                .required("subject")
                .ok()?
                .expect(tag::SEQUENCE, "Name")
                .ok()?;
            fields.finish().ok()?;
            Some(RequestBody::CertPoll {
                issuer: issuer.raw().to_vec(),
                subject: subject.raw().to_vec(),
            })
        }
        // GetCert, GetCRL: IssuerAndSerialNumber (RFC 5652 §10.2.4).
        MessageType::GetCert | MessageType::GetCrl => {
            let mut fields = tlv.sequence("IssuerAndSerialNumber").ok()?;
            let issuer = fields
                .required("issuer")
                .ok()?
                .expect(tag::SEQUENCE, "Name")
                .ok()?;
            let serial = fields.required("serialNumber").ok()?.integer_bytes().ok()?;
            fields.finish().ok()?;
            Some(RequestBody::IssuerAndSerial {
                issuer: issuer.raw().to_vec(),
                serial: serial.to_vec(),
            })
        }
        MessageType::CertRep => None,
    }
}

/// A verified and decrypted request.
#[derive(Debug)]
pub struct Request {
    pub header: RequestHeader,
    /// The content cipher the client used; the reply uses the same.
    pub cipher: ContentCipher,
    pub body: RequestBody,
}

/// The decrypted messageData (RFC 8894 §3.3).
#[derive(Debug)]
pub enum RequestBody {
    /// PKCSReq and RenewalReq: a PKCS#10 CertificationRequest, DER.
    CertificationRequest(Vec<u8>),
    /// CertPoll: IssuerAndSubject; both are DER `Name`s.
    CertPoll { issuer: Vec<u8>, subject: Vec<u8> },
    /// GetCert and GetCRL: IssuerAndSerialNumber; `issuer` is a DER `Name`, `serial` the
    /// INTEGER's content bytes.
    IssuerAndSerial { issuer: Vec<u8>, serial: Vec<u8> },
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;

    use crate::ra::Credential;

    pub(crate) fn data(name: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data")
                .join(name),
        )
        .unwrap()
    }

    pub(crate) fn ra_keys() -> RaKeys {
        let pem = data("ra-ca.pem");
        let (_, cert) = der::pem::decode_vec(&pem).unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ra-ca.key.pem");
        let cred = Credential {
            key: Arc::new(scep_hsm::SoftwareKey::from_file(&path).unwrap()),
            certificate: cert.into(),
        };
        RaKeys {
            signer: cred.clone(),
            decrypter: cred,
            previous: Vec::new(),
        }
    }

    const LEGACY: CryptoPolicy = CryptoPolicy { legacy_des: true };

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn scepclient_request_opens() {
        let req = SignedRequest::parse(&data("scepclient-pkcsreq.der")).unwrap();
        assert_eq!(req.header.message_type, MessageType::PkcsReq);
        assert_eq!(
            req.header.transaction_id.as_str(),
            "GbgDwvWdxziOReO+vuqlgilBIi0="
        );
        assert_eq!(
            hex::encode(req.header.sender_nonce.0),
            "f2f226d0baaafac8abede9d877994969"
        );
        assert_eq!(req.header.digest, Digest::Sha1);
        req.verify().unwrap();
        let opened = req.open(&ra_keys(), LEGACY).unwrap();
        assert_eq!(opened.cipher, ContentCipher::DesCbc);
        let RequestBody::CertificationRequest(csr) = opened.body else {
            panic!("expected a CSR");
        };
        assert_eq!(csr[0], 0x30);
        assert!(contains(&csr, b"ref-scepclient"));
        assert!(contains(&csr, b"secret123"));
    }

    #[test]
    fn certmonger_request_opens() {
        let req = SignedRequest::parse(&data("certmonger-pkcsreq.der")).unwrap();
        assert_eq!(req.header.message_type, MessageType::PkcsReq);
        let tid = req.header.transaction_id.as_str();
        assert!(
            tid.len() > 40 && tid.bytes().all(|b| b.is_ascii_digit()),
            "{tid}"
        );
        assert_eq!(
            hex::encode(req.header.sender_nonce.0),
            "3d3a00da17df37822ec045279cfa0fbf"
        );
        assert_eq!(req.header.digest, Digest::Sha256);
        // open() verifies by itself when verify() was not called.
        let opened = req
            .open(&ra_keys(), CryptoPolicy { legacy_des: false })
            .unwrap();
        assert_eq!(opened.cipher, ContentCipher::Aes256Cbc);
        let RequestBody::CertificationRequest(csr) = opened.body else {
            panic!("expected a CSR");
        };
        assert_eq!(csr[0], 0x30);
        assert!(contains(&csr, b"ref-certmonger"));
    }

    #[test]
    fn single_des_needs_the_legacy_switch() {
        let req = SignedRequest::parse(&data("scepclient-pkcsreq.der")).unwrap();
        let err = req
            .open(&ra_keys(), CryptoPolicy { legacy_des: false })
            .unwrap_err();
        assert!(matches!(err, Error::UnsupportedAlgorithm(_)), "{err:?}");
    }

    #[test]
    fn micromdm_replies_parse_and_verify() {
        for (name, request) in [
            ("scepclient-certrep.der", "scepclient-pkcsreq.der"),
            ("certmonger-certrep.der", "certmonger-pkcsreq.der"),
        ] {
            let reply = SignedRequest::parse(&data(name)).unwrap();
            let req = SignedRequest::parse(&data(request)).unwrap();
            assert_eq!(reply.header.message_type, MessageType::CertRep);
            assert_eq!(reply.header.transaction_id, req.header.transaction_id);
            assert_eq!(
                reply.recipient_nonce().unwrap(),
                Some(req.header.sender_nonce)
            );
            reply.verify().unwrap();
            // A CertRep is not something to open as a request.
            assert!(matches!(
                reply.open(&ra_keys(), LEGACY),
                Err(Error::Refused(_))
            ));
        }
    }

    #[test]
    fn a_tampered_signature_is_bad_signature() {
        let mut bytes = data("certmonger-pkcsreq.der");
        let n = bytes.len();
        bytes[n - 10] ^= 0x01; // inside the signature value, the last element
        let req = SignedRequest::parse(&bytes).unwrap();
        assert!(matches!(req.verify(), Err(Error::BadSignature(_))));
        assert!(matches!(
            req.open(&ra_keys(), LEGACY),
            Err(Error::BadSignature(_))
        ));
    }

    /// Every prefix of a real request fails cleanly: no panic, and an error.
    #[test]
    fn truncations_never_panic() {
        for name in ["scepclient-pkcsreq.der", "certmonger-pkcsreq.der"] {
            let bytes = data(name);
            for len in 0..bytes.len() {
                assert!(SignedRequest::parse(&bytes[..len]).is_err(), "{name} {len}");
            }
        }
    }

    /// Random byte changes: whatever parses is verified and opened, and nothing
    /// panics. A tiny xorshift keeps the test deterministic without a dependency.
    #[test]
    fn random_flips_never_panic() {
        let ra = ra_keys();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for name in ["scepclient-pkcsreq.der", "certmonger-pkcsreq.der"] {
            let original = data(name);
            for _ in 0..1500 {
                let mut bytes = original.clone();
                for _ in 0..(1 + next() % 4) {
                    let at = (next() % bytes.len() as u64) as usize;
                    bytes[at] ^= (next() % 255 + 1) as u8;
                }
                if let Ok(req) = SignedRequest::parse(&bytes) {
                    let _ = req.verify();
                    let _ = req.open(&ra, LEGACY);
                }
            }
        }
    }

    /// The certmonger request re-encoded as BER the way old clients write it:
    /// indefinite lengths everywhere on the path to the content, and eContent as a
    /// constructed OCTET STRING in 100-byte segments. The signature still verifies
    /// (it covers the signed attributes, unchanged) and the envelope opens.
    #[test]
    fn indefinite_length_ber_is_accepted() {
        fn indefinite(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
            let mut out = vec![tag, 0x80];
            for p in parts {
                out.extend_from_slice(p);
            }
            out.extend_from_slice(&[0, 0]);
            out
        }
        let bytes = data("certmonger-pkcsreq.der");
        let mut ci = ber::parse(&bytes).unwrap().sequence("ci").unwrap();
        let ct = ci.required("oid").unwrap().raw();
        let sd = ci.required("sd").unwrap().explicit(0, "sd").unwrap();
        let parts = sd.children().unwrap().collect_all().unwrap();
        let mut encap = parts[2].sequence("encap").unwrap();
        let e_type = encap.required("type").unwrap().raw();
        let e_content = encap
            .required("content")
            .unwrap()
            .explicit(0, "content")
            .unwrap()
            .octet_string()
            .unwrap();
        let segments: Vec<Vec<u8>> = e_content.chunks(100).map(ber::der_octet_string).collect();
        let segment_refs: Vec<&[u8]> = segments.iter().map(Vec::as_slice).collect();
        let os = indefinite(0x24, &segment_refs);
        let new_encap = indefinite(0x30, &[e_type, &indefinite(0xa0, &[&os])]);
        let new_sd = indefinite(
            0x30,
            &[
                parts[0].raw(),
                parts[1].raw(),
                &new_encap,
                parts[3].raw(),
                parts[4].raw(),
            ],
        );
        let ber_bytes = indefinite(0x30, &[ct, &indefinite(0xa0, &[&new_sd])]);
        assert_ne!(ber_bytes, bytes);

        let req = SignedRequest::parse(&ber_bytes).unwrap();
        req.verify().unwrap();
        let opened = req.open(&ra_keys(), LEGACY).unwrap();
        assert!(matches!(
            opened.body,
            RequestBody::CertificationRequest(ref csr) if contains(csr, b"ref-certmonger")
        ));
    }

    #[test]
    fn hostile_structures_are_malformed() {
        let mut deep = Vec::new();
        for _ in 0..5000 {
            deep.extend_from_slice(&[0x30, 0x80]);
        }
        let huge = [0x30, 0x84, 0x7f, 0xff, 0xff, 0xff, 0x06, 0x09];
        let huge8 = [0x30, 0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        for bytes in [&deep[..], &huge[..], &huge8[..], &[][..], &[0x00, 0x00][..]] {
            assert!(matches!(
                SignedRequest::parse(bytes),
                Err(Error::Malformed(_))
            ));
        }
    }
}
