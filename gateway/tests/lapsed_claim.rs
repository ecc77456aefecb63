//! Nothing issued after a transaction's claim has lapsed is used: the device's retry may
//! have won the lapsed claim and be getting a certificate of its own. Here the gateway
//! is assembled in process (`Gateway::from_config` of an `init` PKI) around a CA that
//! takes longer to sign than the claim lasts (an HSM that hung), which no real process
//! can be made to do on demand.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use scep_gateway::ca::certificate::common_name;
use scep_gateway::ca::{BoxFuture, Ca, IssueRequest, Issued};
use scep_gateway::cms::algorithms::{ContentCipher, Digest};
use scep_gateway::config::FileConfig;
use scep_gateway::error::{Answer, Result};
use scep_gateway::scep::client::{ca_certificates, encryption_certificate, MessageSpec, Requester};
use scep_gateway::scep::message::{MessageType, Nonce, PkiStatus};
use scep_gateway::service::Gateway;
use scep_hsm::{Key, SoftwareKey};

/// The gateway's embedded CA, signing `delay` late; counts what it issued.
#[derive(Debug)]
struct LateCa {
    inner: Arc<dyn Ca>,
    delay: Duration,
    issued: AtomicUsize,
}

impl LateCa {
    fn late(&self) {
        std::thread::sleep(self.delay);
        self.issued.fetch_add(1, Ordering::SeqCst);
    }
}

impl Ca for LateCa {
    fn issue<'a>(&'a self, request: IssueRequest<'a>) -> BoxFuture<'a, Result<Issued>> {
        self.late();
        self.inner.issue(request)
    }

    fn issue_blocking(&self, request: IssueRequest<'_>) -> Option<Result<Issued>> {
        self.late();
        self.inner.issue_blocking(request)
    }

    fn chain(&self) -> &[Arc<[u8]>] {
        self.inner.chain()
    }

    fn crl<'a>(&'a self) -> BoxFuture<'a, Result<Vec<u8>>> {
        self.inner.crl()
    }

    fn issued_and_valid(&self, certificate: &[u8]) -> bool {
        self.inner.issued_and_valid(certificate)
    }

    fn revoke_withheld(&self, certificate: &[u8]) -> Result<bool> {
        self.inner.revoke_withheld(certificate)
    }

    fn crl_issuer(&self) -> Option<&[u8]> {
        self.inner.crl_issuer()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_signed_after_the_claim_lapsed_is_withheld() {
    let dir = tempfile::tempdir().unwrap();
    scep_gateway::init::init(dir.path(), Some("secret".into()), false, None).unwrap();
    let config = FileConfig::load(&dir.path().join("gateway.toml")).unwrap();
    let mut gateway = Gateway::from_config(&config).unwrap();
    let late = Arc::new(LateCa {
        inner: gateway.ca.clone(),
        delay: Duration::from_millis(400),
        issued: AtomicUsize::new(0),
    });
    gateway.ca = late.clone();
    gateway.claim_lease = Duration::from_millis(300);
    let gateway = Arc::new(gateway);

    let certs = ca_certificates(&gateway.ca_cert.body).unwrap();
    let ra = encryption_certificate(&certs).unwrap().to_vec();
    let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate_rsa("late".into(), 2048).unwrap());
    let subject = common_name("late-device").unwrap();
    let device = Requester::self_signed(key, &subject).unwrap();
    let csr = device
        .certification_request(&subject, Some("secret"))
        .unwrap();
    let spec = MessageSpec {
        message_type: MessageType::PkcsReq,
        transaction_id: device.key_transaction_id(),
        sender_nonce: Nonce::random(),
        digest: Digest::Sha256,
        cipher: ContentCipher::Aes128Cbc,
    };
    let message = device.pki_message(&spec, &ra, &csr).unwrap();

    let (result, summary) =
        scep_gateway::enroll::pki_operation(gateway.clone(), message.clone().into()).await;
    let error = result.unwrap_err();
    assert!(
        matches!(error.answer(), Answer::Http(s) if s == 503),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("after the transaction's claim ended"),
        "{error}"
    );
    assert_eq!(summary.outcome, "unavailable");
    assert_eq!(late.issued.load(Ordering::SeqCst), 1);
    // Revoked (on the CRL), and not recorded: the retry is a new issuance, not a replay.
    let crl = gateway.ca.crl().await.unwrap();
    let crl = <x509_cert::crl::CertificateList as der::Decode>::from_der(&crl).unwrap();
    let revoked = crl.tbs_cert_list.revoked_certificates.unwrap_or_default();
    assert_eq!(revoked.len(), 1);

    // A CA in time again: the retry gets a certificate, another one.
    let gateway = {
        let mut g = Gateway::from_config(&config).unwrap();
        g.store = gateway.store.clone();
        Arc::new(g)
    };
    let (result, _) = scep_gateway::enroll::pki_operation(gateway, message.into()).await;
    let reply = device.read_reply(&result.unwrap(), &spec, false).unwrap();
    assert_eq!(reply.status, PkiStatus::Success);
}
