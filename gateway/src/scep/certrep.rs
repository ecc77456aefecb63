//! Building a CertRep (RFC 8894 §3.3.2).
//!
//! A CertRep is a SignedData signed by the RA whose signed attributes carry
//! transactionID (echoed), messageType 3, pkiStatus, a fresh senderNonce, and
//! recipientNonce (the request's senderNonce), plus failInfo and failInfoText for a
//! FAILURE. For SUCCESS the eContent is the pkcsPKIEnvelope: an EnvelopedData,
//! encrypted to the requester's signer certificate with the request's content
//! cipher, around a degenerate certs-only SignedData (RFC 8894 §3.3.2, §3.4).
//!
//! ## FAILURE and PENDING carry an empty eContent
//! RFC 8894 §3.2.2 says these replies lack signed content. With eContent *absent*,
//! OpenSSL's `PKCS7_verify` sees a detached signature with no data and fails ("no
//! content"), so certmonger reports every refusal as "CA unreachable" and retries
//! forever. micromdm answers with an empty OCTET STRING eContent instead, which
//! OpenSSL, Go's pkcs7 and micromdm's own client all accept, and which still carries
//! no envelope. We do the same: eContentType id-data, eContent `04 00`, messageDigest
//! the digest of the empty string.

use std::sync::Arc;

use crate::cms::algorithms::{ContentCipher, Digest};
use crate::cms::envelope;
use crate::cms::signed::{self, build_signed, Attribute};
use crate::error::{Error, Result};
use crate::ra::Credential;
use crate::scep::message::{oid, FailInfo, MessageType, Nonce, PkiStatus};
use crate::scep::request::RequestHeader;

/// What the CertRep says.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// SUCCESS with certificates: the issued one first, then the CA chain.
    Issued { certificates: Vec<Arc<[u8]>> },
    /// SUCCESS with a CRL (GetCRL).
    Crl(Vec<u8>),
    /// PENDING: the client polls with CertPoll.
    Pending,
    /// FAILURE with failInfo and a short failInfoText.
    Failure { info: FailInfo, text: String },
}

/// Builds the signed (and, for SUCCESS, enveloped) CertRep answering `request`.
/// `cipher` is the request's content cipher; `None` only when the request could not be
/// decrypted, in which case the outcome is a FAILURE and nothing is enveloped.
///
/// The digest is the request's when it is SHA-2, else SHA-256 (RFC 8894 §3.5.2 makes
/// SHA-256 mandatory; aws-lc-rs cannot sign RSA with SHA-1, and micromdm's client
/// accepts a SHA-256 reply to its SHA-1 request). A SUCCESS without `cipher` is
/// refused with `Error::Malformed`, as is a SUCCESS to a requester key that cannot be
/// encrypted to (`Error::UnsupportedAlgorithm`, from `envelope::seal`).
pub fn build(
    signer: &Credential,
    request: &RequestHeader,
    cipher: Option<ContentCipher>,
    outcome: &Outcome,
) -> Result<Vec<u8>> {
    let digest = reply_digest(request.digest);
    let mut attributes = vec![
        Attribute::printable(oid::TRANSACTION_ID, request.transaction_id.as_str())?,
        Attribute::printable(oid::MESSAGE_TYPE, &MessageType::CertRep.code().to_string())?,
        Attribute::printable(oid::PKI_STATUS, outcome.status().code())?,
        Attribute::octet_string(oid::SENDER_NONCE, &Nonce::random().0),
        Attribute::octet_string(oid::RECIPIENT_NONCE, &request.sender_nonce.0),
    ];
    let content = match outcome {
        Outcome::Issued { certificates } => {
            let certs: Vec<&[u8]> = certificates.iter().map(|c| &c[..]).collect();
            envelope_to_requester(request, cipher, &signed::certs_only(&certs))?
        }
        Outcome::Crl(crl) => {
            envelope_to_requester(request, cipher, &signed::degenerate(&[], &[crl]))?
        }
        Outcome::Pending => Vec::new(),
        Outcome::Failure { info, text } => {
            attributes.push(Attribute::printable(oid::FAIL_INFO, info.code())?);
            if !text.is_empty() {
                attributes.push(Attribute::utf8(oid::FAIL_INFO_TEXT, text)?);
            }
            Vec::new()
        }
    };
    build_signed(signer, digest, &signed::oid::DATA, &content, &attributes)
}

impl Outcome {
    /// The pkiStatus this outcome is reported with.
    pub fn status(&self) -> PkiStatus {
        match self {
            Outcome::Issued { .. } | Outcome::Crl(_) => PkiStatus::Success,
            Outcome::Pending => PkiStatus::Pending,
            Outcome::Failure { .. } => PkiStatus::Failure,
        }
    }
}

/// SHA-2 as requested, SHA-256 instead of SHA-1.
fn reply_digest(requested: Digest) -> Digest {
    match requested {
        Digest::Sha1 => Digest::Sha256,
        other => other,
    }
}

/// The pkcsPKIEnvelope of a SUCCESS: `inner` sealed to the requester's signer
/// certificate, in the content cipher the request used.
fn envelope_to_requester(
    request: &RequestHeader,
    cipher: Option<ContentCipher>,
    inner: &[u8],
) -> Result<Vec<u8>> {
    let cipher = cipher.ok_or_else(|| {
        Error::Malformed("a SUCCESS reply needs the request's content cipher".into())
    })?;
    envelope::seal(inner, &request.signer_certificate, cipher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    use crate::cms::envelope::tests::credential;
    use crate::cms::signed::SignedData;
    use crate::scep::request::tests::{data, ra_keys};
    use crate::scep::request::{CryptoPolicy, Request, SignedRequest};

    const LEGACY: CryptoPolicy = CryptoPolicy { legacy_des: true };

    fn opened(name: &str) -> Request {
        SignedRequest::parse(&data(name))
            .unwrap()
            .open(&ra_keys(), LEGACY)
            .unwrap()
    }

    fn text_of(reply: &SignedRequest, o: &const_oid::ObjectIdentifier) -> Option<String> {
        let attr = reply.attribute(o)?;
        Some(attr.single_value().unwrap().text().unwrap().to_string())
    }

    /// Builds a SUCCESS to `request` (issuing, for the test, the RA certificate and the
    /// client's own one), then reads it back the way a client does.
    fn success_round_trip(request_file: &str, client_key: &str) {
        let ra = ra_keys();
        let req = opened(request_file);
        let issued: Vec<Arc<[u8]>> = vec![
            req.header.signer_certificate.clone().into(),
            ra.signer.certificate.clone(),
        ];
        let reply = build(
            &ra.signer,
            &req.header,
            Some(req.cipher),
            &Outcome::Issued {
                certificates: issued.clone(),
            },
        )
        .unwrap();

        let parsed = SignedRequest::parse(&reply).unwrap();
        assert_eq!(parsed.header.message_type, MessageType::CertRep);
        assert_eq!(parsed.header.transaction_id, req.header.transaction_id);
        assert_eq!(
            parsed.recipient_nonce().unwrap(),
            Some(req.header.sender_nonce)
        );
        assert_ne!(parsed.header.sender_nonce, req.header.sender_nonce);
        assert_eq!(parsed.header.digest, reply_digest(req.header.digest));
        assert_eq!(text_of(&parsed, &oid::PKI_STATUS).as_deref(), Some("0"));
        parsed.verify().unwrap();

        // The client opens the envelope with its own key.
        let client = credential(client_key, req.header.signer_certificate.clone());
        let inner = envelope::open(parsed.content().unwrap(), &client, true).unwrap();
        assert_eq!(inner.cipher, req.cipher);
        let certs = SignedData::parse(&inner.content).unwrap().certificates;
        let expected: Vec<Vec<u8>> = issued.iter().map(|c| c.to_vec()).collect();
        assert_eq!(certs, expected);

        openssl_check(
            &reply,
            Some((&req.header.signer_certificate, client_key)),
            2,
        );
    }

    #[test]
    fn success_round_trip_certmonger() {
        success_round_trip("certmonger-pkcsreq.der", "certmonger-client.key.pem");
    }

    #[test]
    fn success_round_trip_scepclient_des() {
        success_round_trip("scepclient-pkcsreq.der", "scepclient-client.key.pem");
    }

    #[test]
    fn failure_and_pending() {
        let ra = ra_keys();
        let req = opened("certmonger-pkcsreq.der");
        let failure = build(
            &ra.signer,
            &req.header,
            None,
            &Outcome::Failure {
                info: FailInfo::BadRequest,
                text: "wrong challenge password".into(),
            },
        )
        .unwrap();
        let parsed = SignedRequest::parse(&failure).unwrap();
        parsed.verify().unwrap();
        assert_eq!(text_of(&parsed, &oid::PKI_STATUS).as_deref(), Some("2"));
        assert_eq!(text_of(&parsed, &oid::FAIL_INFO).as_deref(), Some("2"));
        assert_eq!(
            text_of(&parsed, &oid::FAIL_INFO_TEXT).as_deref(),
            Some("wrong challenge password")
        );
        assert_eq!(parsed.content(), Some(&[][..]));
        openssl_check(&failure, None, 0);

        let pending = build(&ra.signer, &req.header, None, &Outcome::Pending).unwrap();
        let parsed = SignedRequest::parse(&pending).unwrap();
        parsed.verify().unwrap();
        assert_eq!(text_of(&parsed, &oid::PKI_STATUS).as_deref(), Some("3"));
        assert!(text_of(&parsed, &oid::FAIL_INFO).is_none());

        // SUCCESS needs a cipher.
        assert!(build(
            &ra.signer,
            &req.header,
            None,
            &Outcome::Crl(vec![0x30, 0x00])
        )
        .is_err());
    }

    fn openssl_available() -> bool {
        Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Checks the reply with OpenSSL, when installed: `cms -verify` (CMS API) and
    /// `smime -verify` (the PKCS7 API certmonger uses), then, for SUCCESS, `cms
    /// -decrypt` with the client's key and a count of the certificates inside.
    fn openssl_check(reply: &[u8], client: Option<(&[u8], &str)>, expected_certs: usize) {
        if !openssl_available() {
            eprintln!("openssl not found: skipping the OpenSSL interoperability check");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
        std::fs::write(path("reply.der"), reply).unwrap();
        for api in ["cms", "smime"] {
            let out = Command::new("openssl")
                .args([api, "-verify", "-noverify", "-binary", "-inform", "DER"])
                .args(["-in", &path("reply.der"), "-out", &path("content.der")])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {api} -verify: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let Some((cert, key)) = client else {
            assert!(std::fs::read(path("content.der")).unwrap().is_empty());
            return;
        };
        let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, cert).unwrap();
        std::fs::write(path("client.pem"), pem).unwrap();
        let key_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(key);
        let out = Command::new("openssl")
            .args([
                "cms",
                "-decrypt",
                "-inform",
                "DER",
                "-in",
                &path("content.der"),
            ])
            .args([
                "-recip",
                &path("client.pem"),
                "-inkey",
                key_path.to_str().unwrap(),
            ])
            .args(["-provider", "legacy", "-provider", "default"])
            .args(["-out", &path("certs.der")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl cms -decrypt: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("openssl")
            .args(["pkcs7", "-inform", "DER", "-print_certs", "-noout"])
            .args(["-in", &path("certs.der")])
            .output()
            .unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            listing.matches("subject=").count(),
            expected_certs,
            "{listing}"
        );
    }
}
