//! RA certificate rollover without a reinstall (what NDES cannot do): announce the next
//! RA certificate with GetNextCACert, promote it with a config edit and SIGHUP, and keep
//! enrolling devices that still encrypt to the previous RA certificate.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{get, metric, post, read_der, Gateway, Options, CHALLENGE};
use scep_gateway::ca::certificate::common_name;
use scep_gateway::cms::algorithms::{ContentCipher, Digest};
use scep_gateway::scep::client::{ca_certificates, encryption_certificate, MessageSpec, Requester};
use scep_gateway::scep::message::{MessageType, Nonce, PkiStatus};
use scep_hsm::{Key, SoftwareKey};

/// A new RA certificate and PKCS#8 key, issued by the development CA with OpenSSL.
fn new_ra(pki: &Path) {
    let run = |args: &[&str]| common::openssl_in(pki, args);
    std::fs::write(
        pki.join("ext.cnf"),
        "keyUsage=critical,digitalSignature,keyEncipherment\n",
    )
    .unwrap();
    run(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ra2.key.pem",
        "-subj",
        "/CN=SCEP Gateway RA 2",
        "-out",
        "ra2.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "ra2.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key.pem",
        "-days",
        "30",
        "-extfile",
        "ext.cnf",
        "-out",
        "ra2.pem",
    ]);
}

fn hangup(gateway: &Gateway) {
    let ok = Command::new("kill")
        .args(["-HUP", &gateway.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Waits until `check` holds (the reload runs in the background).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Enrolls a new device that encrypts to `ra`; returns the pkiStatus.
fn enroll_to(gateway: &Gateway, ra: &[u8], cn: &str) -> PkiStatus {
    let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate_rsa(cn.into(), 2048).unwrap());
    let subject = common_name(cn).unwrap();
    let requester = Requester::self_signed(key, &subject).unwrap();
    let csr = requester
        .certification_request(&subject, Some(CHALLENGE))
        .unwrap();
    let spec = MessageSpec {
        message_type: MessageType::PkcsReq,
        transaction_id: requester.key_transaction_id(),
        sender_nonce: Nonce::random(),
        digest: Digest::Sha256,
        cipher: ContentCipher::Aes128Cbc,
    };
    let message = requester.pki_message(&spec, ra, &csr).unwrap();
    let response = post(gateway.addr, "/scep?operation=PKIOperation", &message);
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    requester
        .read_reply(&response.body, &spec, false)
        .unwrap()
        .status
}

fn current_ra(gateway: &Gateway) -> Vec<u8> {
    let certs = ca_certificates(&get(gateway.addr, "/scep?operation=GetCACert").body).unwrap();
    encryption_certificate(&certs).unwrap().to_vec()
}

#[test]
fn the_ra_certificate_rolls_over_with_a_config_edit_and_sighup() {
    let mut gateway = Gateway::start(Options::default());
    let pki = gateway.pki();
    let config = pki.join("gateway.toml");
    let old_ra = current_ra(&gateway);
    assert_eq!(old_ra, read_der(&pki.join("ra.pem")));
    new_ra(&pki);
    let new_ra = read_der(&pki.join("ra2.pem"));

    // 1. Announce: GetNextCACert serves the next RA certificate.
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{original}\n[next]\ncertificates = [\"ra2.pem\", \"ca.pem\"]\n"),
    )
    .unwrap();
    hangup(&gateway);
    eventually("GetNextCACert", || {
        get(gateway.addr, "/scep?operation=GetNextCACert").status == 200
    });
    let caps = String::from_utf8(get(gateway.addr, "/scep?operation=GetCACaps").body).unwrap();
    assert!(caps.lines().any(|l| l == "GetNextCACert"), "{caps}");
    // The announced certificates are watched for expiry too.
    let next_expiry = metric(
        gateway.addr,
        "scep_cert_expiry_seconds",
        &[("role", "next")],
    );
    assert!(next_expiry.is_some_and(|s| s > 0.0), "{next_expiry:?}");

    // 2. Promote: the new RA serves, the old one only decrypts.
    let promoted = original
        .replacen("certificate = \"ra.pem\"", "certificate = \"ra2.pem\"", 1)
        .replacen("key = \"ra.key.pem\"", "key = \"ra2.key.pem\"", 1);
    std::fs::write(
        &config,
        format!("{promoted}\n[[ra.previous]]\ncertificate = \"ra.pem\"\nkey = \"ra.key.pem\"\n"),
    )
    .unwrap();
    hangup(&gateway);
    eventually("the new RA certificate in GetCACert", || {
        current_ra(&gateway) == new_ra
    });
    assert_eq!(
        get(gateway.addr, "/scep?operation=GetNextCACert").status,
        404
    );

    // A device that fetched the old RA certificate before the switch still enrolls, and
    // so does one that fetched the new one.
    assert_eq!(
        enroll_to(&gateway, &old_ra, "old-ra-device"),
        PkiStatus::Success
    );
    assert_eq!(
        enroll_to(&gateway, &new_ra, "new-ra-device"),
        PkiStatus::Success
    );

    // 3. A broken edit leaves the running configuration in place.
    std::fs::write(&config, "this is not toml").unwrap();
    hangup(&gateway);
    eventually("the failed reload to be logged", || {
        gateway.log().contains("reload failed")
    });
    assert_eq!(current_ra(&gateway), new_ra);
    assert_eq!(
        enroll_to(&gateway, &old_ra, "after-bad-edit"),
        PkiStatus::Success
    );
    gateway.assert_healthy();
}

#[test]
fn without_the_previous_key_a_device_on_the_old_ra_gets_bad_message_check() {
    let mut gateway = Gateway::start(Options::default());
    let pki = gateway.pki();
    let config = pki.join("gateway.toml");
    let old_ra = current_ra(&gateway);
    new_ra(&pki);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen("certificate = \"ra.pem\"", "certificate = \"ra2.pem\"", 1)
        .replacen("key = \"ra.key.pem\"", "key = \"ra2.key.pem\"", 1);
    std::fs::write(&config, text).unwrap();
    hangup(&gateway);
    let new_ra = read_der(&pki.join("ra2.pem"));
    eventually("the new RA certificate", || current_ra(&gateway) == new_ra);
    assert_eq!(enroll_to(&gateway, &old_ra, "stranded"), PkiStatus::Failure);
    gateway.assert_healthy();
}

#[test]
fn an_admin_call_reloads_like_sighup_and_needs_its_token() {
    let setup = common::Pki::init(&Options {
        extra_config: vec![(
            "shutdown_grace_secs".into(),
            "20\nreload_token_file = \"reload.token\"".into(),
        )],
        ..Options::default()
    });
    std::fs::write(setup.path().join("reload.token"), "let-me-reload\n").unwrap();
    let mut gateway = setup.serve();
    let pki = gateway.pki();
    let reload = |token: Option<&str>| {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        common::raw_request(
            gateway.addr,
            format!("POST /admin/reload HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    };
    assert_eq!(reload(None).status, 401);
    assert_eq!(reload(Some("wrong")).status, 401);

    let config = pki.join("gateway.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{original}\n[next]\ncertificates = [\"ra.pem\", \"ca.pem\"]\n"),
    )
    .unwrap();
    let ok = reload(Some("let-me-reload"));
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(
        get(gateway.addr, "/scep?operation=GetNextCACert").status,
        200
    );

    // A broken file: 422 naming the problem, the running configuration stays.
    std::fs::write(&config, format!("{original}\n[next]\ncertificates = []\n")).unwrap();
    let bad = reload(Some("let-me-reload"));
    assert_eq!(bad.status, 422, "{}", String::from_utf8_lossy(&bad.body));
    assert!(String::from_utf8_lossy(&bad.body).contains("next.certificates"));
    assert_eq!(
        get(gateway.addr, "/scep?operation=GetNextCACert").status,
        200
    );
    assert!(
        !gateway.log().contains("let-me-reload"),
        "the token was logged"
    );
    gateway.assert_healthy();
}
