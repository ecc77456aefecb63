//! The requester's side of SCEP (RFC 8894 §2.3, §3.3): build a pkiMessage, read the
//! CertRep that answers it.
//!
//! The gateway itself is a client when it forwards a request to an upstream SCEP CA, and
//! the tests, benches and load generator build their requests here, so that every
//! message they send goes through the same CMS code the server reads with.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use scep_hsm::Key;

use crate::ca::certificate::{self as x509, Signer};
use crate::cms::algorithms::{ContentCipher, Digest};
use crate::cms::envelope;
use crate::cms::signed::{self, Attribute, SignedData};
use crate::error::{Error, Result};
use crate::ra::Credential;
use crate::scep::message::{oid, FailInfo, MessageType, Nonce, PkiStatus, TransactionId};
use crate::scep::request::{parse_nonce, text_attribute};

/// A requester: its key and the certificate it signs requests with (self-signed for a
/// first enrollment, RFC 8894 §2.3; the certificate being renewed for a RenewalReq).
#[derive(Debug, Clone)]
pub struct Requester {
    pub credential: Credential,
}

/// How a request is sent.
#[derive(Debug, Clone)]
pub struct MessageSpec {
    pub message_type: MessageType,
    pub transaction_id: TransactionId,
    pub sender_nonce: Nonce,
    pub digest: Digest,
    pub cipher: ContentCipher,
}

/// A CertRep, verified and, for SUCCESS, decrypted.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: PkiStatus,
    pub fail_info: Option<FailInfo>,
    pub fail_info_text: Option<String>,
    pub transaction_id: TransactionId,
    pub sender_nonce: Nonce,
    pub recipient_nonce: Nonce,
    /// The RA certificate that signed the reply.
    pub signer_certificate: Vec<u8>,
    /// SUCCESS: the certificates of the certs-only reply, in order.
    pub certificates: Vec<Vec<u8>>,
    /// SUCCESS to a GetCRL: the CRLs.
    pub crls: Vec<Vec<u8>>,
}

impl Requester {
    /// A requester with a fresh self-signed certificate for `key`, named `subject` (DER
    /// Name), valid from an hour ago for a day.
    pub fn self_signed(key: Arc<dyn Key>, subject: &[u8]) -> Result<Self> {
        let signer = Signer::new(key.clone());
        let serial = x509::random_serial()?;
        let now = SystemTime::now();
        let certificate = signer.sign_certificate(&x509::CertificateFields {
            serial: &serial,
            issuer: subject,
            subject,
            public_key_info: key.public_key_info(),
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(24 * 3600),
            extensions: Vec::new(),
        })?;
        Ok(Requester {
            credential: Credential {
                key,
                certificate: Arc::from(certificate),
            },
        })
    }

    /// A requester signing with an existing certificate (renewal).
    pub fn with_certificate(key: Arc<dyn Key>, certificate: Arc<[u8]>) -> Self {
        Requester {
            credential: Credential { key, certificate },
        }
    }

    /// A PKCS#10 request for this requester's key.
    pub fn certification_request(
        &self,
        subject: &[u8],
        challenge: Option<&str>,
    ) -> Result<Vec<u8>> {
        crate::csr::build(
            &Signer::new(self.credential.key.clone()),
            subject,
            challenge,
            &[],
        )
    }

    /// The transactionID most clients use: a hash of the public key (RFC 8894
    /// §3.2.1.1 suggests it), here hex SHA-256.
    pub fn key_transaction_id(&self) -> TransactionId {
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            self.credential.key.public_key_info(),
        );
        TransactionId::new(hex::encode(digest.as_ref())).expect("64 hex digits fit")
    }

    /// A pkiMessage (RFC 8894 §3.2): `content` (a CSR, IssuerAndSubject or
    /// IssuerAndSerialNumber) enveloped to `recipient` (the RA encryption certificate),
    /// signed by this requester.
    pub fn pki_message(
        &self,
        spec: &MessageSpec,
        recipient: &[u8],
        content: &[u8],
    ) -> Result<Vec<u8>> {
        let enveloped = envelope::seal(content, recipient, spec.cipher)?;
        let attributes = [
            Attribute::printable(oid::MESSAGE_TYPE, &spec.message_type.code().to_string())?,
            Attribute::printable(oid::TRANSACTION_ID, spec.transaction_id.as_str())?,
            Attribute::octet_string(oid::SENDER_NONCE, &spec.sender_nonce.0),
        ];
        signed::build_signed(
            &self.credential,
            spec.digest,
            &signed::oid::DATA,
            &enveloped,
            &attributes,
        )
    }

    /// Verifies a CertRep and, for SUCCESS, decrypts its certificates with this
    /// requester's key. Checks that it answers `spec` (transactionID echoed,
    /// recipientNonce = our senderNonce). `legacy_des` allows a DES/3DES reply.
    pub fn read_reply(&self, reply: &[u8], spec: &MessageSpec, legacy_des: bool) -> Result<Reply> {
        self.read_reply_from(reply, spec, legacy_des, None)
    }

    /// [`Requester::read_reply`] for a reply that must come from a CA we already know:
    /// the signer must be one of `trusted` (the upstream's RA/CA certificates learnt with
    /// GetCACert) and the signature must verify with that certificate, never merely with
    /// a certificate the reply carries itself (anyone can sign a reply with their own).
    pub fn read_trusted_reply(
        &self,
        reply: &[u8],
        spec: &MessageSpec,
        legacy_des: bool,
        trusted: &[Vec<u8>],
    ) -> Result<Reply> {
        self.read_reply_from(reply, spec, legacy_des, Some(trusted))
    }

    fn read_reply_from(
        &self,
        reply: &[u8],
        spec: &MessageSpec,
        legacy_des: bool,
        trusted: Option<&[Vec<u8>]>,
    ) -> Result<Reply> {
        let (mut read, signed) = self.check_reply(reply, spec, trusted)?;
        if read.status == PkiStatus::Success {
            let content = signed
                .content
                .as_deref()
                .ok_or_else(|| Error::Malformed("SUCCESS without content".into()))?;
            let opened = envelope::open(content, &self.credential, legacy_des)?;
            let certs_only = SignedData::parse(&opened.content)?;
            read.certificates = certs_only.certificates;
            read.crls = certs_only.crls;
        }
        Ok(read)
    }

    /// [`Requester::read_reply`] without the decryption: the signature, messageType,
    /// pkiStatus, transactionID and nonces are checked, `certificates` and `crls` are
    /// left empty. A load generator checks every reply this way and decrypts a sample
    /// (the decryption is a private-key operation on the client's side).
    pub fn verify_reply(&self, reply: &[u8], spec: &MessageSpec) -> Result<Reply> {
        self.check_reply(reply, spec, None).map(|(read, _)| read)
    }

    fn check_reply(
        &self,
        reply: &[u8],
        spec: &MessageSpec,
        trusted: Option<&[Vec<u8>]>,
    ) -> Result<(Reply, SignedData)> {
        let signed = SignedData::parse(reply)?;
        let signer = signed.single_signer()?;
        let signer_certificate = match trusted {
            None => signed.signer_certificate(signer)?.to_vec(),
            Some(trusted) => trusted
                .iter()
                .find(|c| signed::CertificateFields::parse(c).is_ok_and(|f| f.matches(&signer.sid)))
                .cloned()
                .ok_or_else(|| {
                    Error::BadSignature("the reply is not signed by a known certificate".into())
                })?,
        };
        signed.verify_signer(signer, &signer_certificate)?;
        let message_type = text_attribute(signer, &oid::MESSAGE_TYPE)?;
        if MessageType::from_code(message_type) != Some(MessageType::CertRep) {
            return Err(Error::Malformed(format!(
                "messageType {message_type} is not CertRep"
            )));
        }
        let status = PkiStatus::from_code(text_attribute(signer, &oid::PKI_STATUS)?)
            .ok_or_else(|| Error::Malformed("unknown pkiStatus".into()))?;
        let transaction_id =
            TransactionId::new(text_attribute(signer, &oid::TRANSACTION_ID)?.to_owned())
                .ok_or_else(|| Error::Malformed("bad transactionID".into()))?;
        if transaction_id != spec.transaction_id {
            return Err(Error::Malformed(
                "the reply has another transactionID".into(),
            ));
        }
        let recipient_nonce = parse_nonce(signer, &oid::RECIPIENT_NONCE)?;
        if recipient_nonce != spec.sender_nonce {
            return Err(Error::Malformed(
                "recipientNonce does not echo our senderNonce".into(),
            ));
        }
        let sender_nonce = parse_nonce(signer, &oid::SENDER_NONCE)?;
        let fail_info = match status {
            PkiStatus::Failure => Some(
                FailInfo::from_code(text_attribute(signer, &oid::FAIL_INFO)?)
                    .ok_or_else(|| Error::Malformed("unknown failInfo".into()))?,
            ),
            _ => None,
        };
        let fail_info_text = text_attribute(signer, &oid::FAIL_INFO_TEXT)
            .ok()
            .map(str::to_owned);
        let read = Reply {
            status,
            fail_info,
            fail_info_text,
            transaction_id,
            sender_nonce,
            recipient_nonce,
            signer_certificate,
            certificates: Vec::new(),
            crls: Vec::new(),
        };
        Ok((read, signed))
    }
}

/// Extracts the certificates of a GetCACert answer: a lone DER certificate
/// (`application/x-x509-ca-cert`) or a certs-only SignedData (`x-x509-ca-ra-cert`).
pub fn ca_certificates(body: &[u8]) -> Result<Vec<Vec<u8>>> {
    match SignedData::parse(body) {
        Ok(signed) => Ok(signed.certificates),
        Err(_) => {
            signed::CertificateFields::parse(body)?;
            Ok(vec![body.to_vec()])
        }
    }
}

/// The RA certificate to encrypt to: the first certificate with keyEncipherment that is
/// not a CA, as jscep chooses; else the first (sscep's choice).
pub fn encryption_certificate(certs: &[Vec<u8>]) -> Option<&[u8]> {
    use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
    let suits = |der: &[u8]| {
        let Ok(cert) = x509::ParsedCertificate::from_der(der) else {
            return false;
        };
        let ext = |id| cert.extension(id).map(|e| e.extn_value.as_bytes().to_vec());
        let is_ca = ext(x509::oid::BASIC_CONSTRAINTS)
            .and_then(|v| <BasicConstraints as der::Decode>::from_der(&v).ok())
            .is_some_and(|bc| bc.ca);
        let encipher = ext(x509::oid::KEY_USAGE)
            .and_then(|v| <KeyUsage as der::Decode>::from_der(&v).ok())
            .is_none_or(|ku| ku.key_encipherment());
        !is_ca && encipher
    };
    certs
        .iter()
        .find(|c| suits(c))
        .or(certs.first())
        .map(Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scep::certrep::{self, Outcome};
    use crate::scep::request::{CryptoPolicy, RequestBody, SignedRequest};
    use scep_hsm::SoftwareKey;

    fn ra() -> crate::ra::RaKeys {
        crate::scep::request::tests::ra_keys()
    }

    #[test]
    fn a_request_we_build_is_read_by_the_server_side_and_the_reply_by_us() {
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate_rsa("client".into(), 2048).unwrap());
        let subject = x509::common_name("client-1").unwrap();
        let client = Requester::self_signed(key, &subject).unwrap();
        let csr = client.certification_request(&subject, Some("pw")).unwrap();
        let ra = ra();
        let spec = MessageSpec {
            message_type: MessageType::PkcsReq,
            transaction_id: client.key_transaction_id(),
            sender_nonce: Nonce::random(),
            digest: Digest::Sha256,
            cipher: ContentCipher::Aes128Cbc,
        };
        let message = client
            .pki_message(&spec, &ra.decrypter.certificate, &csr)
            .unwrap();

        let request = SignedRequest::parse(&message).unwrap();
        request.verify().unwrap();
        let opened = request.open(&ra, CryptoPolicy::default()).unwrap();
        let RequestBody::CertificationRequest(der) = &opened.body else {
            panic!("not a CSR")
        };
        let parsed = crate::csr::CertificationRequest::from_der(der).unwrap();
        assert_eq!(parsed.challenge_password(), Some("pw"));
        assert_eq!(parsed.subject_der(), &subject[..]);

        let issued: Arc<[u8]> = client.credential.certificate.clone();
        let reply = certrep::build(
            &ra.signer,
            &opened.header,
            Some(opened.cipher),
            &Outcome::Issued {
                certificates: vec![issued.clone()],
            },
        )
        .unwrap();
        let read = client.read_reply(&reply, &spec, false).unwrap();
        assert_eq!(read.status, PkiStatus::Success);
        assert_eq!(read.certificates, vec![issued.to_vec()]);
    }
}
