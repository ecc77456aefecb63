//! A device for the end-to-end tests: its own RSA key and self-signed certificate, the RA
//! certificate it learnt from GetCACert, and the library's requester to build pkiMessages
//! and read CertReps (`scep_gateway::scep::client`).

use std::sync::Arc;

use scep_gateway::ca::certificate::common_name;
use scep_gateway::cms::algorithms::{ContentCipher, Digest};
use scep_gateway::scep::client::{
    ca_certificates, encryption_certificate, MessageSpec, Reply, Requester,
};
use scep_gateway::scep::message::{MessageType, Nonce};
use scep_hsm::{Key, SoftwareKey};

use super::{get, post, Gateway};

pub struct Device {
    pub requester: Requester,
    pub ra_certificate: Vec<u8>,
    pub cn: String,
}

impl Device {
    /// A new device named `cn` that fetched `gateway`'s RA certificate.
    pub fn new(gateway: &Gateway, cn: &str) -> Device {
        let answer = get(gateway.addr, "/scep?operation=GetCACert");
        assert_eq!(answer.status, 200);
        let certs = ca_certificates(&answer.body).unwrap();
        let ra_certificate = encryption_certificate(&certs).unwrap().to_vec();
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate_rsa(cn.into(), 2048).unwrap());
        Device {
            requester: Requester::self_signed(key, &common_name(cn).unwrap()).unwrap(),
            ra_certificate,
            cn: cn.into(),
        }
    }

    /// A message spec of this device's transaction: SHA-256, AES-256, a fresh nonce.
    pub fn spec(&self, message_type: MessageType) -> MessageSpec {
        MessageSpec {
            message_type,
            transaction_id: self.requester.key_transaction_id(),
            sender_nonce: Nonce::random(),
            digest: Digest::Sha256,
            cipher: ContentCipher::Aes256Cbc,
        }
    }

    /// A PKCSReq with `challenge`, in AES-256.
    pub fn pkcsreq(&self, challenge: &str) -> (Vec<u8>, MessageSpec) {
        self.pkcsreq_in(challenge, ContentCipher::Aes256Cbc)
    }

    /// A PKCSReq with `challenge`, enveloped in `cipher`.
    pub fn pkcsreq_in(&self, challenge: &str, cipher: ContentCipher) -> (Vec<u8>, MessageSpec) {
        let csr = self
            .requester
            .certification_request(&common_name(&self.cn).unwrap(), Some(challenge))
            .unwrap();
        let spec = MessageSpec {
            cipher,
            ..self.spec(MessageType::PkcsReq)
        };
        let message = self
            .requester
            .pki_message(&spec, &self.ra_certificate, &csr)
            .unwrap();
        (message, spec)
    }

    /// POSTs `message` and reads the CertRep (a DES/3DES reply when the request was).
    pub fn send(&self, gateway: &Gateway, message: &[u8], spec: &MessageSpec) -> Reply {
        let response = post(gateway.addr, "/scep?operation=PKIOperation", message);
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(
            response.header("content-type"),
            Some("application/x-pki-message")
        );
        self.requester
            .read_reply(&response.body, spec, spec.cipher.is_legacy())
            .unwrap()
    }
}
