//! The SCEP operations end to end against a real `scep-gateway` process, driven by the
//! library's own requester (`scep::client`) and checked with OpenSSL and curl: GetCACaps,
//! GetCACert, GetNextCACert, PKIOperation by POST and by GET over HTTP/1.0, 1.1 and 2,
//! replays, CertPoll, GetCert, GetCRL, TLS and graceful shutdown.

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::{
    get, openssl_verify, post, raw_request, read_der, require_tool, write_pem, Gateway, Options,
    CHALLENGE,
};
use scep_gateway::ca::certificate::common_name;
use scep_gateway::cms::signed::CertificateFields;
use scep_gateway::scep::client::{ca_certificates, MessageSpec};
use scep_gateway::scep::message::{FailInfo, MessageType, PkiStatus};

use common::device::Device;

fn serial_of(cert: &[u8]) -> Vec<u8> {
    CertificateFields::parse(cert).unwrap().serial.to_vec()
}

#[test]
fn capabilities_and_ca_certificates_are_served_on_every_scep_path() {
    let mut gateway = Gateway::start(Options::default());
    for path in [
        "/scep",
        "/certsrv/mscep/mscep.dll",
        "/cgi-bin/pkiclient.exe",
    ] {
        let caps = get(gateway.addr, &format!("{path}?operation=GetCACaps"));
        assert_eq!(caps.status, 200, "{path}");
        let text = String::from_utf8(caps.body).unwrap();
        for kw in [
            "AES",
            "SHA-256",
            "SHA-512",
            "POSTPKIOperation",
            "Renewal",
            "SCEPStandard",
        ] {
            assert!(
                text.lines().any(|l| l == kw),
                "{path}: {kw} missing in {text:?}"
            );
        }
        assert!(
            !text.lines().any(|l| l == "DES3" || l == "GetNextCACert"),
            "{text:?}"
        );
    }
    let answer = get(gateway.addr, "/scep?operation=GetCACert&message=anything");
    assert_eq!(
        answer.header("content-type"),
        Some("application/x-x509-ca-ra-cert")
    );
    let certs = ca_certificates(&answer.body).unwrap();
    assert_eq!(certs.len(), 2, "the RA certificate, then the CA");
    assert_eq!(certs[0], read_der(&gateway.pki().join("ra.pem")));
    assert_eq!(certs[1], read_der(&gateway.ca_pem()));
    assert_eq!(
        get(gateway.addr, "/scep?operation=GetNextCACert").status,
        404
    );
    // Routers: HTTP/1.0 without a Host header.
    let old = raw_request(
        gateway.addr,
        b"GET /cgi-bin/pkiclient.exe?operation=GetCACaps HTTP/1.0\r\n\r\n",
    );
    assert_eq!(old.status, 200);
    gateway.assert_healthy();
}

#[test]
fn enrollment_replay_poll_getcert_and_getcrl() {
    let mut gateway = Gateway::start(Options::default());
    let device = Device::new(&gateway, "device-7");
    let (message, spec) = device.pkcsreq(CHALLENGE);
    let reply = device.send(&gateway, &message, &spec);
    assert_eq!(
        reply.status,
        PkiStatus::Success,
        "{:?}",
        reply.fail_info_text
    );
    assert_eq!(
        reply.certificates.len(),
        2,
        "the issued certificate, then the CA"
    );
    let issued = reply.certificates[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let cert_pem = dir.path().join("cert.pem");
    write_pem(&cert_pem, "CERTIFICATE", &issued);
    openssl_verify(&gateway.ca_pem(), &cert_pem);

    // The same message again: the same certificate, re-wrapped with fresh nonces.
    let again = device.send(&gateway, &message, &spec);
    assert_eq!(again.status, PkiStatus::Success);
    assert_eq!(
        again.certificates[0], issued,
        "a retry must not issue a second certificate"
    );
    assert_ne!(again.sender_nonce, reply.sender_nonce);

    // A new PKCSReq of the same transaction (new nonce): still the same certificate.
    let (message2, spec2) = device.pkcsreq(CHALLENGE);
    let third = device.send(&gateway, &message2, &spec2);
    assert_eq!(third.certificates[0], issued);

    // CertPoll (IssuerAndSubject) answers from the store.
    let ca = read_der(&gateway.ca_pem());
    let ca_fields = CertificateFields::parse(&ca).unwrap();
    let subject = common_name("device-7").unwrap();
    let issuer_and_subject = der_sequence(&[ca_fields.subject, &subject]);
    let poll_spec = device.spec(MessageType::CertPoll);
    let poll = device
        .requester
        .pki_message(&poll_spec, &device.ra_certificate, &issuer_and_subject)
        .unwrap();
    let polled = device.send(&gateway, &poll, &poll_spec);
    assert_eq!(polled.status, PkiStatus::Success);
    assert_eq!(polled.certificates[0], issued);

    // GetCert by issuer and serial.
    let fields = CertificateFields::parse(&issued).unwrap();
    let ias = fields.issuer_and_serial_der();
    let get_spec = MessageSpec {
        transaction_id: scep_gateway::scep::message::TransactionId::new("getcert-1".into())
            .unwrap(),
        ..device.spec(MessageType::GetCert)
    };
    let get_cert = device
        .requester
        .pki_message(&get_spec, &device.ra_certificate, &ias)
        .unwrap();
    let got = device.send(&gateway, &get_cert, &get_spec);
    assert_eq!(got.status, PkiStatus::Success);
    assert_eq!(got.certificates, vec![issued.clone()]);

    // GetCert for a serial nobody issued: badCertID.
    let mut unknown = issued.clone();
    let serial = fields.serial;
    let at = unknown
        .windows(serial.len())
        .position(|w| w == serial)
        .unwrap();
    unknown[at + serial.len() - 1] ^= 0x55;
    let unknown_ias = CertificateFields::parse(&unknown)
        .unwrap()
        .issuer_and_serial_der();
    let missing_spec = MessageSpec {
        transaction_id: scep_gateway::scep::message::TransactionId::new("getcert-2".into())
            .unwrap(),
        ..device.spec(MessageType::GetCert)
    };
    let missing = device
        .requester
        .pki_message(&missing_spec, &device.ra_certificate, &unknown_ias)
        .unwrap();
    let answer = device.send(&gateway, &missing, &missing_spec);
    assert_eq!(
        (answer.status, answer.fail_info),
        (PkiStatus::Failure, Some(FailInfo::BadCertId))
    );

    // GetCRL: a CRL signed by the CA.
    let crl_spec = MessageSpec {
        transaction_id: scep_gateway::scep::message::TransactionId::new("getcrl-1".into()).unwrap(),
        ..device.spec(MessageType::GetCrl)
    };
    let get_crl = device
        .requester
        .pki_message(&crl_spec, &device.ra_certificate, &ias)
        .unwrap();
    let crl = device.send(&gateway, &get_crl, &crl_spec);
    assert_eq!(crl.status, PkiStatus::Success);
    assert_eq!(crl.crls.len(), 1);
    let crl_pem = dir.path().join("crl.pem");
    write_pem(&crl_pem, "X509 CRL", &crl.crls[0]);
    let out = Command::new(require_tool("openssl"))
        .args(["crl", "-noout", "-in"])
        .arg(&crl_pem)
        .arg("-CAfile")
        .arg(gateway.ca_pem())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("verify OK"),
        "{out:?}"
    );

    // Another key presenting the same transactionID is refused.
    let other = Device::new(&gateway, "device-7");
    let subject = common_name("device-7").unwrap();
    let csr = other
        .requester
        .certification_request(&subject, Some(CHALLENGE))
        .unwrap();
    let stolen = MessageSpec {
        transaction_id: spec.transaction_id.clone(),
        ..other.spec(MessageType::PkcsReq)
    };
    let msg = other
        .requester
        .pki_message(&stolen, &other.ra_certificate, &csr)
        .unwrap();
    let refused = other.send(&gateway, &msg, &stolen);
    assert_eq!(
        (refused.status, refused.fail_info),
        (PkiStatus::Failure, Some(FailInfo::BadRequest))
    );
    assert_ne!(serial_of(&issued), Vec::<u8>::new());
    gateway.assert_healthy();
}

fn der_sequence(parts: &[&[u8]]) -> Vec<u8> {
    scep_gateway::cms::ber::der_sequence(parts)
}

#[test]
fn long_get_pkioperation_over_http1_and_http2() {
    let curl = require_tool("curl");
    let mut gateway = Gateway::start(Options::default());
    let device = Device::new(&gateway, "device-get");
    let (message, spec) = device.pkcsreq(CHALLENGE);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&message);
    let escaped =
        percent_encoding::utf8_percent_encode(&b64, percent_encoding::NON_ALPHANUMERIC).to_string();
    // An Intune challenge makes the URI tens of KiB: pad to ~60,000 bytes with a
    // parameter SCEP ignores.
    let base = format!("/scep?operation=PKIOperation&message={escaped}&pad=");
    let target = format!("{base}{}", "x".repeat(60_000 - base.len()));
    let first = get(gateway.addr, &target);
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let reply = device
        .requester
        .read_reply(&first.body, &spec, false)
        .unwrap();
    assert_eq!(reply.status, PkiStatus::Success);

    // The same over HTTP/2 (h2c, prior knowledge), where hyper's default header list
    // limit (16 KiB) would refuse it.
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("reply.der");
    let status = Command::new(curl)
        .args(["-sS", "--http2-prior-knowledge", "-o"])
        .arg(&out_file)
        .args(["-w", "%{http_version} %{http_code}"])
        .arg(format!("http://{}{}", gateway.addr, target))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&status.stdout),
        "2 200",
        "{status:?}"
    );
    let reply2 = device
        .requester
        .read_reply(&std::fs::read(&out_file).unwrap(), &spec, false)
        .unwrap();
    assert_eq!(
        reply2.certificates[0], reply.certificates[0],
        "the replay over HTTP/2 returns the same certificate"
    );
    gateway.assert_healthy();
}

#[test]
fn tls_serves_http1_and_http2() {
    let curl = require_tool("curl");
    let openssl = require_tool("openssl");
    let tls_dir = tempfile::tempdir().unwrap();
    let (cert, key) = (
        tls_dir.path().join("tls.pem"),
        tls_dir.path().join("tls.key.pem"),
    );
    let out = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args([
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The [server.tls] table goes right after [server]'s last key.
    let tls_table = format!(
        "20\n[server.tls]\ncertificate = \"{}\"\nkey = \"{}\"",
        cert.display(),
        key.display()
    );
    let mut gateway = Gateway::start(Options {
        extra_config: vec![("shutdown_grace_secs".into(), tls_table)],
        ..Options::default()
    });
    for flag in ["--http1.1", "--http2"] {
        let out = Command::new(&curl)
            .args(["-sS", flag, "--cacert"])
            .arg(&cert)
            .args(["-w", " %{http_version}"])
            .arg(format!(
                "https://127.0.0.1:{}/scep?operation=GetCACaps",
                gateway.addr.port()
            ))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("SCEPStandard"), "{flag}: {out:?}");
        let expected = if flag == "--http2" { " 2" } else { " 1.1" };
        assert!(text.ends_with(expected), "{flag}: {text}");
    }
    gateway.assert_healthy();
}

#[test]
fn get_next_ca_cert_when_a_next_set_is_configured() {
    let mut gateway = Gateway::start(Options {
        extra_config: vec![(
            "max_transactions".into(),
            "1000000\n\n[next]\ncertificates = [\"ra.pem\", \"ca.pem\"]".into(),
        )],
        ..Options::default()
    });
    let caps = String::from_utf8(get(gateway.addr, "/scep?operation=GetCACaps").body).unwrap();
    assert!(caps.lines().any(|l| l == "GetNextCACert"), "{caps}");
    let next = get(gateway.addr, "/scep?operation=GetNextCACert");
    assert_eq!(next.status, 200);
    assert_eq!(
        next.header("content-type"),
        Some("application/x-x509-next-ca-cert")
    );
    // RFC 8894 §4.6.1: signed by the current RA; its content is certs-only.
    let signed = scep_gateway::cms::signed::SignedData::parse(&next.body).unwrap();
    let signer = signed.single_signer().unwrap();
    let signer_cert = signed.signer_certificate(signer).unwrap().to_vec();
    signed.verify_signer(signer, &signer_cert).unwrap();
    let inner = ca_certificates(signed.content.as_deref().unwrap()).unwrap();
    assert_eq!(inner.len(), 2);
    gateway.assert_healthy();
}

#[test]
fn sigterm_stops_gracefully() {
    let mut gateway = Gateway::start(Options::default());
    assert_eq!(get(gateway.addr, "/healthz").status, 200);
    let status = gateway
        .terminate(Duration::from_secs(10))
        .expect("the gateway did not stop within 10 s");
    assert!(status.success(), "{status:?}");
}

/// `scep-gateway serve` with no config: creates the embedded default in ./scep-data on
/// first start, prints where things are, and reuses it on the next start.
#[test]
fn serve_without_config_creates_then_reuses_the_embedded_default() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let cwd = tempfile::tempdir().unwrap();
    let start = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_scep-gateway"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .current_dir(cwd.path())
            .env_remove("SCEP_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut printed = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let done = line.trim_start().starts_with("challenge:");
            printed.push(line);
            if done {
                break;
            }
        }
        (child, printed.join("\n"))
    };
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };

    let (mut first, text) = start();
    assert!(
        text.contains("created a development PKI in scep-data"),
        "{text}"
    );
    let url = field(&text, "SCEP gateway listening on");
    let fingerprint = field(&text, "CA SHA-256:");
    assert!(
        field(&text, "challenge:").contains("challenge.txt"),
        "{text}"
    );
    let addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches("/scep")
        .parse()
        .unwrap();
    assert_eq!(get(addr, "/scep?operation=GetCACaps").status, 200);
    first.kill().unwrap();
    first.wait().unwrap();
    for file in [
        "gateway.toml",
        "ca.pem",
        "ca.key.pem",
        "ra.pem",
        "ra.key.pem",
        "challenge.txt",
    ] {
        assert!(cwd.path().join("scep-data").join(file).exists(), "{file}");
    }

    let (mut second, text) = start();
    assert!(!text.contains("created a development PKI"), "{text}");
    assert_eq!(
        field(&text, "CA SHA-256:"),
        fingerprint,
        "the same CA is reused"
    );
    second.kill().unwrap();
    second.wait().unwrap();
}

/// A client over its per-address rate gets HTTP 429 with Retry-After, before any work.
#[test]
fn a_flooding_client_address_gets_429() {
    let mut gateway = Gateway::start(Options {
        extra_config: vec![(
            "shutdown_grace_secs".into(),
            "20\nper_client_rate = 0.5\nper_client_burst = 2".into(),
        )],
        ..Options::default()
    });
    let statuses: Vec<u16> = (0..4)
        .map(|_| {
            post(
                gateway.addr,
                "/scep?operation=PKIOperation",
                b"not a message",
            )
            .status
        })
        .collect();
    assert_eq!(
        &statuses[..2],
        &[400, 400],
        "the burst is served (and the garbage refused)"
    );
    let refused = post(gateway.addr, "/scep?operation=PKIOperation", b"x");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(statuses[2..].iter().all(|s| *s == 429), "{statuses:?}");
    // The cheap operations are not limited.
    assert_eq!(get(gateway.addr, "/scep?operation=GetCACaps").status, 200);
    let metrics = String::from_utf8(get(gateway.addr, "/metrics").body).unwrap();
    assert!(
        metrics.contains("scep_admission_refused_total{reason=\"rate\"}"),
        "{metrics}"
    );
    gateway.assert_healthy();
}
