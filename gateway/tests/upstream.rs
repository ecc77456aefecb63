//! Upstream CAs end to end: a real `scep-gateway` process in front of real micromdm
//! `scepserver` processes (Debian's `scep` package; a missing binary fails the test),
//! and of tiny fake upstreams that misbehave. Devices are driven with the library's own
//! requester (`scep::client`), certificates checked with `openssl verify`.
//!
//! scepserver 2.1.0 is not safe above one request at a time, so every scepserver CA is
//! configured with `max_in_flight = 1` and the enrollments run one after another.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::redis::RedisServer;
use common::scepserver::{free_port, profile, scep_ca, ScepServer};
use common::{
    get, must, openssl_verify, openssl_x509, post, sample, write_pem, Gateway, Options, Pki,
    CHALLENGE,
};
use der::flagset::FlagSet;
use scep_gateway::ca::certificate::{self as x509, common_name, Signer};
use scep_gateway::cms::algorithms::{ContentCipher, Digest};
use scep_gateway::cms::ber::der_sequence;
use scep_gateway::cms::signed::CertificateFields;
use scep_gateway::csr::CertificationRequest;
use scep_gateway::ra::{Credential, RaKeys};
use scep_gateway::scep::certrep::{self, Outcome};
use scep_gateway::scep::client::{ca_certificates, encryption_certificate, MessageSpec, Requester};
use scep_gateway::scep::message::{FailInfo, MessageType, Nonce, PkiStatus};
use scep_gateway::scep::request::{CryptoPolicy, Request, RequestBody, SignedRequest};
use scep_hsm::{Key, SoftwareKey};
use x509_cert::ext::pkix::KeyUsages;

// ---------------------------------------------------------------------------------
// Gateway configuration
// ---------------------------------------------------------------------------------

fn embedded_ca(name: &str) -> Vec<String> {
    vec![
        "[[cas]]".into(),
        format!("name = \"{name}\""),
        "kind = \"embedded\"".into(),
    ]
}

fn gateway(append: Vec<Vec<String>>) -> Gateway {
    Gateway::start(Options {
        append: append.concat(),
        ..Options::default()
    })
}

// ---------------------------------------------------------------------------------
// A device
// ---------------------------------------------------------------------------------

/// What a device got (the details are read through Debug, in failure messages).
#[derive(Debug)]
#[allow(dead_code)]
enum Enrolled {
    Certificate(Vec<u8>),
    Failure(FailInfo, Option<String>),
    Pending,
    Http(u16, String),
}

impl Enrolled {
    fn certificate(self) -> Vec<u8> {
        match self {
            Enrolled::Certificate(c) => c,
            other => panic!("no certificate: {other:?}"),
        }
    }
}

/// A device: its key and self-signed certificate, its CSR, the RA certificate.
struct Device {
    requester: Requester,
    ra: Vec<u8>,
    subject: Vec<u8>,
    csr: Vec<u8>,
}

impl Device {
    /// A fresh device key and a CSR (with `usage` requested, if any).
    fn new(gw: &Gateway, cn: &str, usage: Option<FlagSet<KeyUsages>>) -> Device {
        let answer = get(gw.addr, "/scep?operation=GetCACert");
        assert_eq!(answer.status, 200);
        let certs = ca_certificates(&answer.body).unwrap();
        let ra = encryption_certificate(&certs).unwrap().to_vec();
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate_rsa(cn.into(), 2048).unwrap());
        let subject = common_name(cn).unwrap();
        let requester = Requester::self_signed(key.clone(), &subject).unwrap();
        let extensions = match usage {
            Some(bits) => vec![x509::key_usage(bits).unwrap()],
            None => Vec::new(),
        };
        let csr =
            scep_gateway::csr::build(&Signer::new(key), &subject, Some(CHALLENGE), &extensions)
                .unwrap();
        Device {
            requester,
            ra,
            subject,
            csr,
        }
    }

    fn pkcsreq(&self, gw: &Gateway) -> Enrolled {
        self.send(gw, MessageType::PkcsReq, &self.csr)
    }

    /// CertPoll with IssuerAndSubject (RFC 8894 §3.3.3).
    fn certpoll(&self, gw: &Gateway, ca: &[u8]) -> Enrolled {
        let issuer = CertificateFields::parse(ca).unwrap().subject.to_vec();
        let content = der_sequence(&[&issuer, &self.subject]);
        self.send(gw, MessageType::CertPoll, &content)
    }

    fn send(&self, gw: &Gateway, message_type: MessageType, content: &[u8]) -> Enrolled {
        let spec = MessageSpec {
            message_type,
            transaction_id: self.requester.key_transaction_id(),
            sender_nonce: Nonce::random(),
            digest: Digest::Sha256,
            cipher: ContentCipher::Aes256Cbc,
        };
        let message = self
            .requester
            .pki_message(&spec, &self.ra, content)
            .unwrap();
        let response = post(gw.addr, "/scep?operation=PKIOperation", &message);
        if response.status != 200 {
            return Enrolled::Http(
                response.status,
                String::from_utf8_lossy(&response.body).into_owned(),
            );
        }
        let reply = self
            .requester
            .read_reply(&response.body, &spec, false)
            .unwrap();
        match reply.status {
            PkiStatus::Success => Enrolled::Certificate(reply.certificates[0].clone()),
            PkiStatus::Failure => Enrolled::Failure(reply.fail_info.unwrap(), reply.fail_info_text),
            PkiStatus::Pending => Enrolled::Pending,
        }
    }
}

/// A fresh device, one PKCSReq.
fn enroll(gw: &Gateway, cn: &str, usage: Option<FlagSet<KeyUsages>>) -> Enrolled {
    Device::new(gw, cn, usage).pkcsreq(gw)
}

/// `openssl verify` of `cert` against the CA in `ca_pem`.
fn verify_against(cert: &[u8], ca_pem: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cert.pem");
    write_pem(&path, "CERTIFICATE", cert);
    openssl_verify(ca_pem, &path);
    openssl_x509(&path, &["-issuer"])
}

fn issuer_of(cert: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cert.pem");
    write_pem(&path, "CERTIFICATE", cert);
    openssl_x509(&path, &["-issuer"])
}

fn readyz(gw: &Gateway) -> (u16, String) {
    let r = get(gw.addr, "/readyz");
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// Polls `check` every 100 ms until it holds or `within` passes.
fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /metrics`.
fn scrape(gw: &Gateway) -> String {
    common::scrape(gw.addr)
}

fn log_has(gw: &Gateway, ca: &str, message: &str) -> bool {
    gw.log()
        .lines()
        .any(|l| l.contains(message) && l.contains(&format!("ca={ca}")))
}

fn count_in_log(gw: &Gateway, ca: &str, message: &str) -> usize {
    gw.log()
        .lines()
        .filter(|l| l.contains(message) && l.contains(&format!("ca={ca}")))
        .count()
}

// ---------------------------------------------------------------------------------
// Tests against real scepserver CAs
// ---------------------------------------------------------------------------------

#[test]
fn a_certificate_from_an_upstream_scepserver_verifies_against_its_ca() {
    let upstream = ScepServer::start("upstream-a");
    let mut gw = gateway(vec![
        scep_ca("a", &upstream.url(), 5000),
        profile("default", &["a"], None),
    ]);
    eventually(Duration::from_secs(10), "ready", || readyz(&gw).0 == 200);

    // GetCACert serves the RA certificate and the upstream's CA.
    let answer = get(gw.addr, "/scep?operation=GetCACert");
    let served = ca_certificates(&answer.body).unwrap();
    let upstream_ca = common::read_der(&upstream.ca_pem());
    assert!(
        served.contains(&upstream_ca),
        "GetCACert lacks the upstream CA"
    );

    for i in 0..3 {
        let cert = enroll(&gw, &format!("device-{i}"), None).certificate();
        let issuer = verify_against(&cert, &upstream.ca_pem());
        assert!(issuer.contains("upstream-a"), "{issuer}");
    }
    gw.assert_healthy();
}

#[test]
fn a_killed_ca_is_invisible_to_devices_and_is_taken_back_after_restart() {
    let mut a = ScepServer::start("upstream-a");
    let b = ScepServer::start("upstream-b");
    let mut gw = gateway(vec![
        scep_ca("a", &a.url(), 3000),
        scep_ca("b", &b.url(), 3000),
        profile("default", &["a", "b"], None),
    ]);
    eventually(Duration::from_secs(10), "ready", || readyz(&gw).0 == 200);

    // A run of sequential enrollments; the first CA dies (SIGKILL) in the middle.
    let mut issuers = Vec::new();
    for i in 0..10 {
        if i == 4 {
            a.kill();
        }
        let cert = enroll(&gw, &format!("run-{i}"), None).certificate();
        let ca = if i < 4 { a.ca_pem() } else { b.ca_pem() };
        issuers.push(verify_against(&cert, &ca));
    }
    assert!(
        issuers[..4].iter().all(|i| i.contains("upstream-a")),
        "{issuers:?}"
    );
    assert!(
        issuers[4..].iter().all(|i| i.contains("upstream-b")),
        "{issuers:?}"
    );
    eventually(Duration::from_secs(5), "breaker of a opens", || {
        log_has(&gw, "a", "circuit breaker opened")
    });
    // b still serves the profile: ready.
    assert_eq!(readyz(&gw).0, 200);

    // Restarted on the same port: an answered probe makes the next request a trial,
    // whose success closes the breaker, and a takes requests again.
    let closed_before = count_in_log(&gw, "a", "circuit breaker closed");
    a.restart();
    eventually(Duration::from_secs(10), "a probe answered by a", || {
        log_has(&gw, "a", "circuit breaker half-open")
    });
    let cert = enroll(&gw, "after-restart", None).certificate();
    assert!(verify_against(&cert, &a.ca_pem()).contains("upstream-a"));
    assert_eq!(
        count_in_log(&gw, "a", "circuit breaker closed"),
        closed_before + 1
    );
    let cert = enroll(&gw, "after-the-trial", None).certificate();
    assert!(verify_against(&cert, &a.ca_pem()).contains("upstream-a"));
    gw.assert_healthy();
}

#[test]
fn with_every_ca_down_devices_get_a_quick_clean_answer_and_service_resumes() {
    let mut a = ScepServer::start("upstream-a");
    let mut b = ScepServer::start("upstream-b");
    let mut gw = gateway(vec![
        scep_ca("a", &a.url(), 3000),
        scep_ca("b", &b.url(), 3000),
        profile("default", &["a", "b"], None),
    ]);
    eventually(Duration::from_secs(10), "ready", || readyz(&gw).0 == 200);
    enroll(&gw, "before", None).certificate();

    a.kill();
    b.kill();
    for i in 0..3 {
        let started = Instant::now();
        match enroll(&gw, &format!("down-{i}"), None) {
            Enrolled::Http(503, _) | Enrolled::Failure(..) => {}
            other => panic!("not a clean refusal: {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no quick answer: {:?}",
            started.elapsed()
        );
    }
    eventually(Duration::from_secs(10), "not ready", || {
        let (status, body) = readyz(&gw);
        status == 503 && body.contains("\"cas\"")
    });

    b.restart();
    eventually(Duration::from_secs(10), "ready again", || {
        readyz(&gw).0 == 200
    });
    let cert = enroll(&gw, "after", None).certificate();
    assert!(verify_against(&cert, &b.ca_pem()).contains("upstream-b"));
    gw.assert_healthy();
}

#[test]
fn signature_and_encryption_requests_land_on_different_profiles() {
    let upstream = ScepServer::start("upstream-enc");
    let mut gw = gateway(vec![
        embedded_ca("local"),
        scep_ca("enc", &upstream.url(), 5000),
        profile("signing", &["local"], Some("signature")),
        profile("encrypting", &["enc"], Some("encryption")),
        profile("default", &["local"], Some("general")),
    ]);
    eventually(Duration::from_secs(10), "ready", || readyz(&gw).0 == 200);
    let local_ca = gw.ca_pem();

    let signing = enroll(&gw, "signer", Some(KeyUsages::DigitalSignature.into())).certificate();
    verify_against(&signing, &local_ca);
    let encrypting =
        enroll(&gw, "encrypter", Some(KeyUsages::KeyEncipherment.into())).certificate();
    assert!(verify_against(&encrypting, &upstream.ca_pem()).contains("upstream-enc"));
    let both = enroll(
        &gw,
        "both",
        Some(KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment),
    )
    .certificate();
    verify_against(&both, &local_ca);
    let none = enroll(&gw, "none", None).certificate();
    verify_against(&none, &local_ca);
    assert_ne!(issuer_of(&signing), issuer_of(&encrypting));

    // GetCACert's CA identifier picks the profile whose chain is served.
    let upstream_ca = common::read_der(&upstream.ca_pem());
    let local = common::read_der(&local_ca);
    let served = |message: &str| {
        let r = get(
            gw.addr,
            &format!("/scep?operation=GetCACert&message={message}"),
        );
        ca_certificates(&r.body).unwrap()
    };
    assert!(served("encrypting").contains(&upstream_ca));
    assert!(!served("encrypting").contains(&local));
    assert!(served("signing").contains(&local));
    assert!(served("unknown").contains(&local), "unknown → default");
    gw.assert_healthy();
}

// ---------------------------------------------------------------------------------
// Misbehaving upstreams (a fake HTTP server in the test)
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// 200 with bytes that are no CertRep.
    Garbage,
    /// Accepts PKIOperation and never answers.
    Hang,
    /// A SUCCESS CertRep signed with its CA key, whose signature is then damaged.
    BadSignature,
    /// A SUCCESS CertRep signed by a key it never announced in GetCACert.
    ForeignSigner,
    /// Works, but answers PKCSReq with PENDING and issues on the first CertPoll.
    Pending,
    /// Works, but takes this long to issue.
    Slow(Duration),
    /// Issues a PKCSReq's certificate, then closes the connection without answering (it
    /// died, or the network did); answers CertPoll for it with the certificate.
    IssueThenDrop,
    /// Garbage (an outage) until `up` is set; then issues after `delay`, keeping each
    /// certificate by its (upstream) transactionID.
    Recovering {
        up: &'static AtomicBool,
        delay: Duration,
    },
}

/// A fake upstream: answers GetCACaps and GetCACert properly (so that its probes pass)
/// and PKIOperation according to `mode`. Runs until the test process ends. Returns its
/// URL and its CA certificate.
fn fake_upstream(mode: Misbehaviour) -> (String, Vec<u8>) {
    fake_upstream_with(mode, Pending::default())
}

/// [`fake_upstream`] keeping the certificates it issued (Pending, IssueThenDrop) in
/// `pending`, where the test can count them.
fn fake_upstream_with(mode: Misbehaviour, pending: Pending) -> (String, Vec<u8>) {
    let ca = fake_ca("fake-upstream-ca");
    let rogue = fake_ca("rogue");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/scep", listener.local_addr().unwrap());
    let ca_certificate = ca.certificate.to_vec();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (ca, rogue, pending) = (ca.clone(), rogue.clone(), pending.clone());
            std::thread::spawn(move || serve_fake(stream, mode, &ca, &rogue, &pending));
        }
    });
    (url, ca_certificate)
}

/// Certificates a `Pending` fake issued, by transactionID, waiting for a CertPoll.
type Pending = Arc<Mutex<HashMap<String, Vec<u8>>>>;

fn fake_ca(cn: &str) -> Credential {
    let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate_rsa(cn.into(), 2048).unwrap());
    let name = common_name(cn).unwrap();
    let now = SystemTime::now();
    let certificate = Signer::new(key.clone())
        .sign_certificate(&x509::CertificateFields {
            serial: &x509::random_serial().unwrap(),
            issuer: &name,
            subject: &name,
            public_key_info: key.public_key_info(),
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(24 * 3600),
            extensions: vec![x509::basic_constraints(true).unwrap()],
        })
        .unwrap();
    Credential {
        key,
        certificate: Arc::from(certificate),
    }
}

fn serve_fake(
    stream: TcpStream,
    mode: Misbehaviour,
    ca: &Credential,
    rogue: &Credential,
    pending: &Pending,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split(' ').nth(1).unwrap_or("").to_owned();
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (content_type, reply): (&str, Vec<u8>) = if target.contains("GetCACaps") {
            ("text/plain", b"POSTPKIOperation\nAES\nSHA-256\n".to_vec())
        } else if target.contains("GetCACert") {
            ("application/x-x509-ca-cert", ca.certificate.to_vec())
        } else {
            match mode {
                Misbehaviour::Garbage => ("application/x-pki-message", b"\x30\x80garbage".to_vec()),
                Misbehaviour::Hang => {
                    std::thread::sleep(Duration::from_secs(600));
                    return;
                }
                Misbehaviour::BadSignature => {
                    let mut reply = signed_success(&body, ca);
                    let last = reply.len() - 1;
                    reply[last] ^= 0x01;
                    ("application/x-pki-message", reply)
                }
                Misbehaviour::ForeignSigner => {
                    ("application/x-pki-message", signed_success(&body, rogue))
                }
                Misbehaviour::Pending => ("application/x-pki-message", pend(&body, ca, pending)),
                Misbehaviour::IssueThenDrop => {
                    let (request, issued) = issue(&body, ca);
                    let id = request.header.transaction_id.as_str().to_owned();
                    if let Some(certificate) = issued {
                        let earlier = pending.lock().unwrap().insert(id, certificate);
                        assert!(earlier.is_none(), "one transactionID issued twice");
                        return;
                    }
                    let kept = pending.lock().unwrap().get(&id).cloned();
                    let outcome = match kept {
                        Some(certificate) => Outcome::Issued {
                            certificates: vec![certificate.into()],
                        },
                        None => Outcome::Failure {
                            info: FailInfo::BadCertId,
                            text: "unknown transaction".into(),
                        },
                    };
                    let reply = certrep::build(ca, &request.header, Some(request.cipher), &outcome)
                        .unwrap();
                    ("application/x-pki-message", reply)
                }
                Misbehaviour::Recovering { up, .. } if !up.load(Ordering::SeqCst) => {
                    ("application/x-pki-message", b"\x30\x80garbage".to_vec())
                }
                Misbehaviour::Recovering { delay, .. } => {
                    std::thread::sleep(delay);
                    let (request, issued) = issue(&body, ca);
                    let certificate = issued.unwrap();
                    let id = request.header.transaction_id.as_str().to_owned();
                    pending.lock().unwrap().insert(id, certificate.clone());
                    let outcome = Outcome::Issued {
                        certificates: vec![certificate.into()],
                    };
                    let reply = certrep::build(ca, &request.header, Some(request.cipher), &outcome)
                        .unwrap();
                    ("application/x-pki-message", reply)
                }
                Misbehaviour::Slow(delay) => {
                    std::thread::sleep(delay);
                    let (request, issued) = issue(&body, ca);
                    let reply = certrep::build(
                        ca,
                        &request.header,
                        Some(request.cipher),
                        &Outcome::Issued {
                            certificates: vec![issued.unwrap().into()],
                        },
                    )
                    .unwrap();
                    ("application/x-pki-message", reply)
                }
            }
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        );
        if stream.write_all(head.as_bytes()).is_err() || stream.write_all(&reply).is_err() {
            return;
        }
    }
}

/// A SUCCESS answering `request`, carrying the signer's own certificate as the "issued"
/// one, signed by `signer`.
fn signed_success(request: &[u8], signer: &Credential) -> Vec<u8> {
    let header = SignedRequest::parse(request).unwrap().header;
    certrep::build(
        signer,
        &header,
        Some(ContentCipher::Aes256Cbc),
        &Outcome::Issued {
            certificates: vec![header.signer_certificate.clone().into()],
        },
    )
    .unwrap()
}

/// Opens a request as the fake CA and, for a PKCSReq, issues the certificate.
fn issue(request: &[u8], ca: &Credential) -> (Request, Option<Vec<u8>>) {
    let keys = RaKeys {
        signer: ca.clone(),
        decrypter: ca.clone(),
        previous: Vec::new(),
    };
    let opened = SignedRequest::parse(request)
        .unwrap()
        .open(&keys, CryptoPolicy::default())
        .unwrap();
    let RequestBody::CertificationRequest(der) = &opened.body else {
        return (opened, None);
    };
    let csr = CertificationRequest::from_der(der).unwrap();
    let issuer = CertificateFields::parse(&ca.certificate)
        .unwrap()
        .subject
        .to_vec();
    let now = SystemTime::now();
    let certificate = Signer::new(ca.key.clone())
        .sign_certificate(&x509::CertificateFields {
            serial: &x509::random_serial().unwrap(),
            issuer: &issuer,
            subject: csr.subject_der(),
            public_key_info: csr.public_key_info(),
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(24 * 3600),
            extensions: Vec::new(),
        })
        .unwrap();
    (opened, Some(certificate))
}

/// PKCSReq: PENDING (the certificate is kept); CertPoll: SUCCESS with it.
fn pend(body: &[u8], ca: &Credential, pending: &Pending) -> Vec<u8> {
    let (request, issued) = issue(body, ca);
    let id = request.header.transaction_id.as_str().to_owned();
    let outcome = match issued {
        Some(certificate) => {
            pending.lock().unwrap().insert(id, certificate);
            Outcome::Pending
        }
        None => match pending.lock().unwrap().remove(&id) {
            Some(certificate) => Outcome::Issued {
                certificates: vec![certificate.into()],
            },
            None => Outcome::Failure {
                info: FailInfo::BadCertId,
                text: "unknown transaction".into(),
            },
        },
    };
    certrep::build(ca, &request.header, Some(request.cipher), &outcome).unwrap()
}

#[test]
fn an_upstream_pending_becomes_a_certificate_on_the_devices_certpoll() {
    let (url, ca) = fake_upstream(Misbehaviour::Pending);
    let mut gw = gateway(vec![
        scep_ca("slow-approver", &url, 5000),
        profile("default", &["slow-approver"], None),
    ]);
    eventually(Duration::from_secs(10), "ready", || readyz(&gw).0 == 200);
    let device = Device::new(&gw, "waiting-device", None);
    assert!(matches!(device.pkcsreq(&gw), Enrolled::Pending));
    // The device's CertPoll makes the gateway poll the upstream once, which issues.
    let certificate = device.certpoll(&gw, &ca).certificate();
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = dir.path().join("ca.pem");
    write_pem(&ca_pem, "CERTIFICATE", &ca);
    verify_against(&certificate, &ca_pem);
    // Answered from the store afterwards.
    assert_eq!(device.certpoll(&gw, &ca).certificate(), certificate);
    assert_eq!(device.pkcsreq(&gw).certificate(), certificate);
    gw.assert_healthy();
}

#[test]
fn an_upstream_pending_is_fetched_in_the_background_before_the_device_polls() {
    let (url, ca) = fake_upstream(Misbehaviour::Pending);
    let mut ca_entry = scep_ca("slow-approver", &url, 5000);
    ca_entry.push("poll_interval_secs = 1".into());
    let mut gw = gateway(vec![ca_entry, profile("default", &["slow-approver"], None)]);
    eventually(Duration::from_secs(10), "ready", || readyz(&gw).0 == 200);
    let device = Device::new(&gw, "patient-device", None);
    assert!(matches!(device.pkcsreq(&gw), Enrolled::Pending));
    // The gateway CertPolls the upstream by itself and records the certificate...
    eventually(Duration::from_secs(10), "the background poll", || {
        gw.log()
            .contains("certificate recorded by the background poll")
    });
    // ...so the device's CertPoll is answered from the store (the fake upstream hands a
    // certificate out only once): the upstream was asked twice in all, the PKCSReq
    // (pending) and the background CertPoll (success).
    let certificate = device.certpoll(&gw, &ca).certificate();
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = dir.path().join("ca.pem");
    write_pem(&ca_pem, "CERTIFICATE", &ca);
    verify_against(&certificate, &ca_pem);
    let text = scrape(&gw);
    let retries = [("kind", "certpoll")];
    assert_eq!(
        must(&text, "scep_store_retries_answered_total", &retries),
        1.0
    );
    let requests = |outcome| {
        must(
            &text,
            "scep_ca_requests_total",
            &[("ca", "slow-approver"), ("outcome", outcome)],
        )
    };
    assert_eq!(requests("pending"), 1.0);
    assert_eq!(requests("success"), 1.0);
    // The request log names the CA for the PKCSReq and the store for the CertPoll.
    let log = gw.log();
    let request_lines: Vec<&str> = log.lines().filter(|l| l.contains("scep request")).collect();
    assert!(
        request_lines
            .iter()
            .any(|l| l.contains("outcome=\"pending\"") && l.contains("ca=\"slow-approver\"")),
        "{log}"
    );
    assert!(
        request_lines
            .iter()
            .any(|l| l.contains("outcome=\"success\"") && l.contains("ca=\"store\"")),
        "{log}"
    );
    gw.assert_healthy();
}

#[test]
fn ca_metrics_and_the_request_log_name_the_upstream_that_answered() {
    let (url, ca) = fake_upstream(Misbehaviour::Slow(Duration::ZERO));
    // A CA that is not there, first in the profile: its breaker opens at start and the
    // request fails over to the working one.
    let dead = format!("http://127.0.0.1:{}/scep", free_port());
    let mut gw = gateway(vec![
        scep_ca("dead-ca", &dead, 1000),
        scep_ca("answering-ca", &url, 5000),
        profile("default", &["dead-ca", "answering-ca"], None),
    ]);
    eventually(Duration::from_secs(10), "ready", || readyz(&gw).0 == 200);
    let certificate = enroll(&gw, "metered-device", None).certificate();
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = dir.path().join("ca.pem");
    write_pem(&ca_pem, "CERTIFICATE", &ca);
    verify_against(&certificate, &ca_pem);

    let text = scrape(&gw);
    let answering = [("ca", "answering-ca"), ("outcome", "success")];
    assert_eq!(must(&text, "scep_ca_requests_total", &answering), 1.0);
    assert_eq!(
        must(&text, "scep_ca_request_duration_seconds_count", &answering),
        1.0
    );
    let breaker = |ca| must(&text, "scep_ca_breaker_open", &[("ca", ca)]);
    assert_eq!(breaker("answering-ca"), 0.0);
    assert_eq!(breaker("dead-ca"), 1.0);
    let in_flight = [("ca", "answering-ca")];
    assert_eq!(must(&text, "scep_ca_requests_in_flight", &in_flight), 0.0);
    // The open breaker kept the request away from the dead CA: nothing was sent to it.
    assert!(sample(&text, "scep_ca_requests_total", &[("ca", "dead-ca")]).is_none());

    let log = gw.log();
    assert!(
        log.lines().any(|l| l.contains("scep request")
            && l.contains("outcome=\"success\"")
            && l.contains("ca=\"answering-ca\"")),
        "{log}"
    );
    gw.assert_healthy();
}

#[test]
fn hedging_takes_the_first_answer_and_records_the_slow_duplicate() {
    let (slow, _) = fake_upstream(Misbehaviour::Slow(Duration::from_millis(4000)));
    let fast = ScepServer::start("upstream-fast");
    let mut gw = gateway(vec![
        // No latency history yet: the hedge fires after half the timeout (2.5 s).
        scep_ca("slow", &slow, 5000),
        scep_ca("fast", &fast.url(), 5000),
        vec![
            "[[profiles]]".into(),
            "name = \"default\"".into(),
            "cas = [\"slow\", \"fast\"]".into(),
            "strategy = \"hedged\"".into(),
        ],
    ]);
    eventually(Duration::from_secs(10), "ready", || readyz(&gw).0 == 200);
    let device = Device::new(&gw, "hedged", None);
    let started = Instant::now();
    let certificate = device.pkcsreq(&gw).certificate();
    let took = started.elapsed();
    assert!(verify_against(&certificate, &fast.ca_pem()).contains("upstream-fast"));
    assert!(took < Duration::from_millis(4000), "{took:?}");
    eventually(Duration::from_secs(5), "the duplicate is recorded", || {
        log_has(&gw, "slow", "duplicate issuance by hedging")
    });
    gw.assert_healthy();
}

#[test]
fn garbage_hangs_and_bad_signatures_are_outages_never_a_success() {
    let (garbage, _) = fake_upstream(Misbehaviour::Garbage);
    let (hang, _) = fake_upstream(Misbehaviour::Hang);
    let (bad_signature, _) = fake_upstream(Misbehaviour::BadSignature);
    let (foreign, _) = fake_upstream(Misbehaviour::ForeignSigner);
    let ca = |name: &str, url: &str| {
        let mut lines = scep_ca(name, url, 1500);
        lines.retain(|l| !l.starts_with("failure_threshold"));
        lines.push("failure_threshold = 100".into());
        lines
    };
    let mut gw = gateway(vec![
        ca("garbage", &garbage),
        ca("hang", &hang),
        ca("badsig", &bad_signature),
        ca("foreign", &foreign),
        embedded_ca("local"),
        profile("signature", &["garbage"], Some("signature")),
        profile("encryption", &["hang"], Some("encryption")),
        profile("general", &["badsig", "foreign", "local"], Some("general")),
    ]);
    eventually(Duration::from_secs(10), "ready", || readyz(&gw).0 == 200);

    // Alone in their profile: the device gets a 503 (nothing issued), quickly.
    let started = Instant::now();
    match enroll(&gw, "s", Some(KeyUsages::DigitalSignature.into())) {
        Enrolled::Http(503, _) => {}
        other => panic!("garbage upstream: {other:?}"),
    }
    match enroll(&gw, "e", Some(KeyUsages::KeyEncipherment.into())) {
        Enrolled::Http(503, _) => {}
        other => panic!("hanging upstream: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // In front of a working CA: failed over, the certificate is the working CA's.
    let cert = enroll(&gw, "g", None).certificate();
    verify_against(&cert, &gw.ca_pem());

    let log = gw.log();
    let outage = |ca: &str, why: &str| {
        assert!(
            log.lines().any(|l| l.contains("CA unavailable")
                && l.contains(&format!("ca={ca}"))
                && l.contains(why)),
            "no outage of {ca} ({why}) in the log:\n{log}"
        )
    };
    outage("garbage", "unusable CertRep");
    outage("hang", "no answer within 1500 ms");
    outage("badsig", "does not verify");
    outage("foreign", "not signed by a known certificate");
    gw.assert_healthy();
}

#[test]
fn a_queueing_profile_answers_pending_while_down_and_issues_on_certpoll_after() {
    let mut a = ScepServer::start("upstream-queue");
    let mut gw = gateway(vec![
        scep_ca("a", &a.url(), 3000),
        vec![
            "[[profiles]]".into(),
            "name = \"default\"".into(),
            "cas = [\"a\"]".into(),
            "queue_when_down = true".into(),
        ],
    ]);
    eventually(Duration::from_secs(10), "ready", || readyz(&gw).0 == 200);
    a.kill();
    let device = Device::new(&gw, "queued", None);
    assert!(matches!(device.pkcsreq(&gw), Enrolled::Pending));
    let ca = common::read_der(&a.ca_pem());
    assert!(matches!(device.certpoll(&gw, &ca), Enrolled::Pending));

    // Back: once a probe has been answered, the next CertPoll submits the request.
    eventually(Duration::from_secs(5), "breaker of a opens", || {
        log_has(&gw, "a", "circuit breaker opened")
    });
    a.restart();
    eventually(Duration::from_secs(10), "a probe answered by a", || {
        log_has(&gw, "a", "circuit breaker half-open")
    });
    let certificate = match device.certpoll(&gw, &ca) {
        Enrolled::Certificate(c) => c,
        other => panic!("{other:?}\n{}", gw.log()),
    };
    assert!(verify_against(&certificate, &a.ca_pem()).contains("upstream-queue"));
    gw.assert_healthy();
}

/// A queued request is submitted again by the device's CertPoll; three CertPolls at once
/// (a device retrying, or its retry landing beside a slow first try) submit it once: one
/// holds the transaction's resubmission lock, the others are answered PENDING. On one
/// node (in-process store) and on two replicas sharing a real Redis.
#[test]
fn concurrent_certpolls_of_a_queued_request_submit_it_once() {
    static UP: AtomicBool = AtomicBool::new(false);
    let (config, issued, ca) = recovering_queue(&UP);
    let mut gw = gateway(vec![config]);
    certpolls_submit_once(&[&gw, &gw, &gw], &UP, &issued, &ca);
    gw.assert_healthy();
}

#[test]
fn concurrent_certpolls_on_two_replicas_submit_a_queued_request_once() {
    static UP: AtomicBool = AtomicBool::new(false);
    let (config, issued, ca) = recovering_queue(&UP);
    let redis = RedisServer::start();
    let pki = Pki::init(&Options {
        extra_config: vec![("backend".into(), "\"redis\"".into())],
        // The end of [store], then the CA and its queueing profile.
        append: [vec![format!("url = \"{}\"", redis.url())], config].concat(),
        ..Options::default()
    });
    let (mut a, mut b) = (pki.serve(), pki.serve());
    certpolls_submit_once(&[&a, &b, &a], &UP, &issued, &ca);
    a.assert_healthy();
    b.assert_healthy();
}

/// A `Recovering` upstream (down until `up`, then 1.5 s to issue) alone in a queueing
/// profile: the config lines, where its certificates are kept, its CA certificate.
fn recovering_queue(up: &'static AtomicBool) -> (Vec<String>, Pending, Vec<u8>) {
    let issued = Pending::default();
    let mode = Misbehaviour::Recovering {
        up,
        delay: Duration::from_millis(1500),
    };
    let (url, ca) = fake_upstream_with(mode, issued.clone());
    let mut config = scep_ca("recovering", &url, 5000);
    // Its outages must not open the breaker, and it takes several requests at once (a
    // CA at its bound would turn the other CertPolls away by itself).
    config.retain(|l| !l.starts_with("failure_threshold") && !l.starts_with("max_in_flight"));
    config.push("failure_threshold = 100".into());
    config.push("max_in_flight = 8".into());
    config.extend(profile("default", &["recovering"], None));
    config.push("queue_when_down = true".into());
    (config, issued, ca)
}

/// The device's PKCSReq is queued (the CA down); the CA comes back; one CertPoll per
/// gateway of `gateways`, all at once: one certificate issued, and every answer is it or
/// PENDING.
fn certpolls_submit_once(gateways: &[&Gateway], up: &AtomicBool, issued: &Pending, ca: &[u8]) {
    for gw in gateways {
        eventually(Duration::from_secs(10), "ready", || readyz(gw).0 == 200);
    }
    let device = Device::new(gateways[0], "queued-and-polled-thrice", None);
    assert!(matches!(device.pkcsreq(gateways[0]), Enrolled::Pending));
    assert!(issued.lock().unwrap().is_empty());

    up.store(true, Ordering::SeqCst);
    let answers: Vec<Enrolled> = std::thread::scope(|s| {
        let polls: Vec<_> = gateways
            .iter()
            .map(|gw| s.spawn(|| device.certpoll(gw, ca)))
            .collect();
        polls.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let kinds: Vec<&str> = answers
        .iter()
        .map(|a| match a {
            Enrolled::Certificate(_) => "certificate",
            Enrolled::Pending => "pending",
            _ => "other",
        })
        .collect();
    assert_eq!(issued.lock().unwrap().len(), 1, "answers: {kinds:?}");
    let last = gateways[gateways.len() - 1];
    let certificate = device.certpoll(last, ca).certificate();
    for answer in answers {
        match answer {
            Enrolled::Certificate(c) => assert_eq!(c, certificate),
            Enrolled::Pending => {}
            other => panic!("{other:?}"),
        }
    }
    for gw in gateways {
        assert_eq!(device.pkcsreq(gw).certificate(), certificate);
    }
    assert_eq!(issued.lock().unwrap().len(), 1);
}

/// Failover never asks a CA that might answer after the transaction's claim lapsed: the
/// device's retry, which wins the lapsed claim, would get a second certificate. Here a
/// hanging CA (2 s timeout) takes half of a 4 s claim, so the slow CA behind it (3 s to
/// issue, 3.5 s timeout) is not asked; the device's retries get 503 until the hanging
/// CA's breaker opens, then one certificate. (Asking it anyway issued two: the first
/// request's, landing after its claim lapsed, and the retry's.)
#[test]
fn failover_asks_no_ca_that_could_answer_after_the_claim_lapsed() {
    static UP: AtomicBool = AtomicBool::new(true);
    let (hang, _) = fake_upstream(Misbehaviour::Hang);
    let issued = Pending::default();
    let slow_mode = Misbehaviour::Recovering {
        up: &UP,
        delay: Duration::from_secs(3),
    };
    let (slow, _) = fake_upstream_with(slow_mode, issued.clone());
    let mut hang_entry = scep_ca("hang", &hang, 2000);
    // Only its back-off lets requests past its open breaker (so would an answered probe).
    for line in hang_entry.iter_mut() {
        if line.starts_with("probe_interval_secs") {
            *line = "probe_interval_secs = 3600".into();
        }
    }
    let mut gw = Gateway::start(Options {
        extra_config: vec![("request_timeout_secs".into(), "4".into())],
        append: [
            vec!["claim_lease_secs = 4".into()],
            hang_entry,
            scep_ca("slow", &slow, 3500),
            profile("default", &["hang", "slow"], None),
        ]
        .concat(),
        ..Options::default()
    });
    eventually(Duration::from_secs(10), "ready", || readyz(&gw).0 == 200);
    let device = Device::new(&gw, "claim-bound-device", None);
    let mut answers = Vec::new();
    let certificate = loop {
        match device.pkcsreq(&gw) {
            Enrolled::Certificate(c) => break c,
            Enrolled::Http(503, _) if answers.len() < 5 => answers.push(503),
            other => panic!("after {answers:?}: {other:?}\n{}", gw.log()),
        }
        // A device waits a little before it tries again.
        std::thread::sleep(Duration::from_millis(200));
    };
    // Anything still on its way from the slow CA has landed by now.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(issued.lock().unwrap().len(), 1, "after {answers:?}");
    assert_eq!(device.pkcsreq(&gw).certificate(), certificate);
    let log = gw.log();
    assert!(
        log.contains(
            "CA slow: not asked: its 3500 ms timeout would outlast the transaction's claim"
        ),
        "{log}"
    );
    gw.assert_healthy();
}

/// A CA that answers GetCACaps but hangs on PKIOperation (NDES with its CA stuck): once
/// its breaker is open, an answered probe lets one trial device through, not every
/// device that arrives within its timeout; the others go to the next CA at once.
#[test]
fn after_an_answered_probe_one_device_tries_a_hanging_ca_not_all() {
    let (hang, _) = fake_upstream(Misbehaviour::Hang);
    let (backup, _) = fake_upstream(Misbehaviour::Slow(Duration::ZERO));
    let entry = |name: &str, url: &str| {
        let mut lines = scep_ca(name, url, 1500);
        lines.retain(|l| {
            !["failure_threshold", "max_in_flight", "backoff_"]
                .iter()
                .any(|k| l.starts_with(k))
        });
        lines.extend([
            "failure_threshold = 1".into(),
            "max_in_flight = 16".into(),
            // Only a probe ends the back-off within the test.
            "backoff_initial_ms = 60000".into(),
            "backoff_max_ms = 60000".into(),
        ]);
        lines
    };
    let mut gw = gateway(vec![
        entry("hang", &hang),
        entry("backup", &backup),
        profile("default", &["hang", "backup"], None),
    ]);
    eventually(Duration::from_secs(10), "ready", || readyz(&gw).0 == 200);
    // The first device opens hang's breaker (its timeout, then the backup).
    enroll(&gw, "opener", None).certificate();
    eventually(Duration::from_secs(5), "a probe answered by hang", || {
        log_has(&gw, "hang", "circuit breaker half-open")
    });
    let sent_to_hang = |gw: &Gateway| {
        sample(&scrape(gw), "scep_ca_requests_total", &[("ca", "hang")]).unwrap_or(0.0)
    };
    let before = sent_to_hang(&gw);

    let devices: Vec<Device> = (0..4)
        .map(|i| Device::new(&gw, &format!("after-probe-{i}"), None))
        .collect();
    let took: Vec<Duration> = std::thread::scope(|s| {
        let sends: Vec<_> = devices
            .iter()
            .map(|d| {
                s.spawn(|| {
                    let started = Instant::now();
                    d.pkcsreq(&gw).certificate();
                    started.elapsed()
                })
            })
            .collect();
        sends.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let waited = took.iter().filter(|t| **t >= Duration::from_millis(1400));
    assert_eq!(waited.count(), 1, "one trial, the rest at once: {took:?}");
    assert_eq!(sent_to_hang(&gw), before + 1.0);
    gw.assert_healthy();
}

#[test]
fn round_robin_spreads_enrollments_over_the_profiles_cas() {
    let (url_a, _) = fake_upstream(Misbehaviour::Slow(Duration::ZERO));
    let (url_b, _) = fake_upstream(Misbehaviour::Slow(Duration::ZERO));
    let mut gw = gateway(vec![
        scep_ca("rr-a", &url_a, 5000),
        scep_ca("rr-b", &url_b, 5000),
        vec![
            "[[profiles]]".into(),
            "name = \"default\"".into(),
            "cas = [\"rr-a\", \"rr-b\"]".into(),
            "strategy = \"round-robin\"".into(),
        ],
    ]);
    eventually(Duration::from_secs(10), "ready", || readyz(&gw).0 == 200);
    for i in 0..4 {
        enroll(&gw, &format!("rr-device-{i}"), None).certificate();
    }
    // Both CAs answered, two enrollments each: the starting CA alternates.
    let text = scrape(&gw);
    for ca in ["rr-a", "rr-b"] {
        assert_eq!(
            must(
                &text,
                "scep_ca_requests_total",
                &[("ca", ca), ("outcome", "success")]
            ),
            2.0
        );
    }
    gw.assert_healthy();
}

/// `[[profiles]] challenge = "<name>"`: each profile may check its own challenge mode
/// (`[challenges.<name>]`), as NDES operators run one password policy per template; a
/// profile without one uses `[challenge]`.
#[test]
fn a_profile_checks_the_challenge_mode_it_names() {
    let setup = common::Pki::init(&Options {
        // The gateway-wide challenge is another password than the devices know...
        extra_config: vec![("password_file".into(), "\"other.txt\"".into())],
        append: [
            embedded_ca("local"),
            {
                let mut p = profile("signing", &["local"], Some("signature"));
                p.push("challenge = \"signing\"".into());
                p
            },
            profile("default", &["local"], Some("general")),
            // ...while the signing profile's own mode takes the devices' password.
            vec![
                "[challenges.signing]".into(),
                "mode = \"static\"".into(),
                "password_file = \"challenge.txt\"".into(),
            ],
        ]
        .concat(),
        ..Options::default()
    });
    std::fs::write(setup.path().join("other.txt"), "another-password\n").unwrap();
    let mut gw = setup.serve();
    eventually(Duration::from_secs(10), "ready", || readyz(&gw).0 == 200);
    enroll(&gw, "signer", Some(KeyUsages::DigitalSignature.into())).certificate();
    match enroll(&gw, "general", None) {
        Enrolled::Failure(FailInfo::BadRequest, _) => {}
        other => panic!("the default profile must check [challenge]: {other:?}"),
    }
    gw.assert_healthy();
}

#[test]
fn a_profile_naming_an_unknown_challenge_is_a_start_up_error() {
    let setup = common::Pki::init(&Options {
        append: [embedded_ca("local"), {
            let mut p = profile("default", &["local"], None);
            p.push("challenge = \"nope\"".into());
            p
        }]
        .concat(),
        ..Options::default()
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scep-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(setup.config())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("profiles.challenge") && err.contains("nope"),
        "{err}"
    );
}

/// An upstream that issues and then loses its answer. `lost_answer = "poll"`: the device
/// gets PENDING, nothing goes to the next CA, and its CertPoll fetches the one
/// certificate; lost answers still open the CA's breaker, so later devices fail over. The default (`fail-over`): the next CA serves the device at once, and the
/// lost certificate is a second one for the transaction (what "poll" is for).
#[test]
fn a_lost_answer_is_polled_on_the_ca_that_may_have_issued_never_issued_again() {
    let issued = Pending::default();
    let (flaky, flaky_ca) = fake_upstream_with(Misbehaviour::IssueThenDrop, issued.clone());
    let (backup, backup_ca) = fake_upstream(Misbehaviour::Slow(Duration::ZERO));
    let mut flaky_entry = scep_ca("flaky", &flaky, 3000);
    flaky_entry.push("lost_answer = \"poll\"".into());
    // The flaky CA answers GetCACaps, and an answered probe lets a trial request past an
    // open breaker: no
    // probe after the first, so that none lands between the breaker opening and the
    // device that must go to the backup (every second, one sometimes did).
    for line in flaky_entry.iter_mut() {
        if line.starts_with("probe_interval_secs") {
            *line = "probe_interval_secs = 3600".into();
        }
    }
    let mut gw = gateway(vec![
        flaky_entry,
        scep_ca("backup", &backup, 3000),
        profile("default", &["flaky", "backup"], None),
    ]);
    eventually(Duration::from_secs(10), "ready", || readyz(&gw).0 == 200);
    let device = Device::new(&gw, "lost-answer-device", None);
    assert!(matches!(device.pkcsreq(&gw), Enrolled::Pending));
    assert_eq!(issued.lock().unwrap().len(), 1);
    let certificate = device.certpoll(&gw, &flaky_ca).certificate();
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = dir.path().join("flaky.pem");
    write_pem(&ca_pem, "CERTIFICATE", &flaky_ca);
    verify_against(&certificate, &ca_pem);
    assert_eq!(
        issued.lock().unwrap().len(),
        1,
        "issued once, fetched by CertPoll"
    );
    let text = scrape(&gw);
    assert!(sample(&text, "scep_ca_requests_total", &[("ca", "backup")]).is_none());

    // A lost answer is still the CA not answering: after `failure_threshold` (2) of them
    // with no answered request in between (the CertPoll above was one; the probes that
    // GetCACaps answers do not count), its breaker opens and new devices go to the next
    // CA, while the pending ones stay.
    for name in ["lost-answer-device-2", "lost-answer-device-3"] {
        let device = Device::new(&gw, name, None);
        assert!(matches!(device.pkcsreq(&gw), Enrolled::Pending));
    }
    let text = scrape(&gw);
    assert_eq!(
        sample(&text, "scep_ca_breaker_open", &[("ca", "flaky")]),
        Some(1.0),
        "{text}"
    );
    let certificate = enroll(&gw, "after-the-breaker-opened", None).certificate();
    let backup_pem = dir.path().join("backup.pem");
    write_pem(&backup_pem, "CERTIFICATE", &backup_ca);
    verify_against(&certificate, &backup_pem);
    gw.assert_healthy();

    // The default: failed over at once, the device served by the backup.
    let issued = Pending::default();
    let (flaky, _) = fake_upstream_with(Misbehaviour::IssueThenDrop, issued.clone());
    let gw = gateway(vec![
        scep_ca("flaky", &flaky, 3000),
        scep_ca("backup", &backup, 3000),
        profile("default", &["flaky", "backup"], None),
    ]);
    eventually(Duration::from_secs(10), "ready", || readyz(&gw).0 == 200);
    let certificate = enroll(&gw, "failed-over-device", None).certificate();
    verify_against(&certificate, &backup_pem);
    assert_eq!(issued.lock().unwrap().len(), 1, "the lost one exists too");
}
