//! micromdm `scepclient` 2.1.0 (Debian `scep`) enrolls, renews, and is refused with a
//! wrong challenge. It sends POST, SHA-1, PKCS#1 v1.5 key transport and single-DES
//! envelopes in BER, so the gateway runs with `--legacy-des`.

#[macro_use]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{openssl_verify, openssl_x509, require_tool, Backend, Gateway, Options, CHALLENGE};

fn scepclient(gateway: &Gateway, dir: &Path, cn: &str, challenge: &str) -> Output {
    Command::new(require_tool("scepclient"))
        .args([
            "-server-url",
            &gateway.url(),
            "-challenge",
            challenge,
            "-cn",
            cn,
        ])
        .arg("-private-key")
        .arg(dir.join("key.pem"))
        .arg("-certificate")
        .arg(dir.join("cert.pem"))
        .args(["-keySize", "2048", "-debug"])
        .output()
        .unwrap()
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

backends!(scepclient_enrolls_and_renews_and_the_certificates_verify);
fn scepclient_enrolls_and_renews_and_the_certificates_verify(backend: Backend) {
    let mut gateway = Gateway::start(Options {
        backend,
        legacy_des: true,
        ..Options::default()
    });
    let client = tempfile::tempdir().unwrap();
    let cert = client.path().join("cert.pem");

    let out = scepclient(&gateway, client.path(), "device-1", CHALLENGE);
    assert!(
        out.status.success() && cert.exists(),
        "enrollment failed: {}\n{}",
        describe(&out),
        gateway.log()
    );
    openssl_verify(&gateway.ca_pem(), &cert);
    let subject = openssl_x509(&cert, &["-subject"]);
    assert!(subject.contains("device-1"), "{subject}");
    let first_serial = openssl_x509(&cert, &["-serial"]);

    // With cert.pem present scepclient sends a RenewalReq signed by it, without a
    // challenge check on our side (it still sends one; a wrong one must not matter).
    let out = scepclient(&gateway, client.path(), "device-1", "not-the-challenge");
    assert!(
        out.status.success(),
        "renewal failed: {}\n{}",
        describe(&out),
        gateway.log()
    );
    openssl_verify(&gateway.ca_pem(), &cert);
    let second_serial = openssl_x509(&cert, &["-serial"]);
    assert_ne!(
        first_serial, second_serial,
        "renewal must issue a new certificate"
    );
    assert!(
        gateway.log().contains("renewalreq"),
        "the second request was not a RenewalReq"
    );
    gateway.assert_healthy();
}

backends!(a_wrong_challenge_is_a_certrep_failure_not_an_http_error);
fn a_wrong_challenge_is_a_certrep_failure_not_an_http_error(backend: Backend) {
    let mut gateway = Gateway::start(Options {
        backend,
        legacy_des: true,
        ..Options::default()
    });
    let client = tempfile::tempdir().unwrap();
    let out = scepclient(&gateway, client.path(), "device-2", "xyzzy-not-it");
    assert!(
        !out.status.success(),
        "enrolled with a wrong challenge: {}",
        describe(&out)
    );
    assert!(!client.path().join("cert.pem").exists());
    let log = gateway.log();
    assert!(log.contains("outcome=\"badRequest\""), "{log}");
    assert!(
        !log.contains("xyzzy-not-it"),
        "the presented challenge was logged"
    );
    assert!(
        !log.contains(CHALLENGE),
        "the configured challenge was logged"
    );
    gateway.assert_healthy();
}

backends!(without_the_legacy_switch_single_des_is_refused_with_bad_alg);
fn without_the_legacy_switch_single_des_is_refused_with_bad_alg(backend: Backend) {
    let mut gateway = Gateway::start(Options {
        backend,
        ..Options::default()
    });
    let client = tempfile::tempdir().unwrap();
    let out = scepclient(&gateway, client.path(), "device-3", CHALLENGE);
    assert!(
        !out.status.success(),
        "single DES was accepted: {}",
        describe(&out)
    );
    let log = gateway.log();
    assert!(log.contains("badAlg"), "{log}");
    gateway.assert_healthy();
}
