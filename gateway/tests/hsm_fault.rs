//! The RA and CA keys in a SoftHSM2 token that becomes unusable mid-run: `/readyz` turns
//! 503 naming the key, enrollments fail promptly and cleanly (HTTP 503 or a CertRep
//! FAILURE; no hang, no crash), and once the token is back both recover without a
//! restart. Also the start-up errors of bad PKCS#11 key settings.

#[macro_use]
mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{
    get, openssl_verify, require_tool, Backend, Gateway, Options, CHALLENGE, SOFTHSM_PIN_ENV,
};

fn scepclient(gateway: &Gateway, dir: &Path, cn: &str) -> Output {
    Command::new(require_tool("scepclient"))
        .args([
            "-server-url",
            &gateway.url(),
            "-challenge",
            CHALLENGE,
            "-cn",
            cn,
        ])
        .arg("-private-key")
        .arg(dir.join("key.pem"))
        .arg("-certificate")
        .arg(dir.join("cert.pem"))
        .args(["-keySize", "2048"])
        .output()
        .unwrap()
}

fn readyz(gateway: &Gateway) -> (u16, String) {
    let r = get(gateway.addr, "/readyz");
    (
        r.status,
        String::from_utf8_lossy(&r.body).trim_end().to_owned(),
    )
}

#[test]
fn a_lost_token_makes_the_gateway_unready_and_it_recovers_without_a_restart() {
    let mut gateway = Gateway::start(Options {
        backend: Backend::SoftHsm,
        legacy_des: true,
        ..Options::default()
    });
    assert_eq!(readyz(&gateway), (200, "{\"ready\":true}".into()));
    let first = tempfile::tempdir().unwrap();
    let out = scepclient(&gateway, first.path(), "before-fault");
    assert!(out.status.success(), "{:?}\n{}", out, gateway.log());
    openssl_verify(&gateway.ca_pem(), &first.path().join("cert.pem"));

    // The token's files go away (a removed token, a lost network HSM).
    let tokens = gateway.softhsm_tokens();
    let away = tokens.with_extension("away");
    std::fs::rename(&tokens, &away).unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // past the readiness cache
    let (status, body) = readyz(&gateway);
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("{\"ready\":false,\"hsm\":\""), "{body}");
    assert!(body.contains("ra.key"), "{body}");
    assert!(!body.contains(common::SOFTHSM_PIN), "{body}");

    let during = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = scepclient(&gateway, during.path(), "during-fault");
    assert!(!out.status.success(), "enrolled without a token");
    assert!(!during.path().join("cert.pem").exists());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the failure took {:?}",
        started.elapsed()
    );
    let log = gateway.log();
    assert!(
        log.contains("status=503") || log.contains("outcome=\"badMessageCheck\""),
        "neither a 503 nor a CertRep FAILURE:\n{log}"
    );
    gateway.assert_healthy();

    // The token comes back: ready again and enrolling, same process.
    std::fs::rename(&away, &tokens).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = readyz(&gateway);
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still not ready: {body}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let after = tempfile::tempdir().unwrap();
    let out = scepclient(&gateway, after.path(), "after-fault");
    assert!(out.status.success(), "{:?}\n{}", out, gateway.log());
    openssl_verify(&gateway.ca_pem(), &after.path().join("cert.pem"));
    gateway.assert_healthy();
    assert!(
        !gateway.log().contains(common::SOFTHSM_PIN),
        "the PIN was logged"
    );
}

/// `serve` with one setting changed: it must refuse to start, naming the problem.
fn start_fails(edit: impl Fn(&str) -> String, env: &[(&str, &str)]) -> String {
    let gateway = Gateway::start(Options {
        backend: Backend::SoftHsm,
        ..Options::default()
    });
    let config = gateway.pki().join("gateway.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit changed nothing");
    std::fs::write(&config, edited).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_scep-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env(
            "SOFTHSM2_CONF",
            gateway.dir.path().join("softhsm").join("softhsm2.conf"),
        )
        .env(SOFTHSM_PIN_ENV, common::SOFTHSM_PIN)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with a bad key setting");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_pkcs11_key_settings_are_clear_start_up_errors() {
    require_tool("softhsm2-util");
    // (Every key of the token: keys on one token must name one PIN.)
    let err = start_fails(
        |t| t.replace(SOFTHSM_PIN_ENV, "SCEP_E2E_WRONG_PIN"),
        &[("SCEP_E2E_WRONG_PIN", "000000")],
    );
    assert!(
        err.contains("ra.key") && err.contains("PIN") && err.contains("incorrect"),
        "{err}"
    );
    assert!(!err.contains("000000"), "{err}");

    let err = start_fails(
        |t| {
            t.replacen(
                "key_label = \"scep-gateway-ca\"",
                "key_label = \"no-such-ca\"",
                1,
            )
        },
        &[],
    );
    assert!(
        err.contains("ca.key") && err.contains("no-such-ca"),
        "{err}"
    );

    let err = start_fails(
        |t| {
            t.replace(
                "/usr/lib/softhsm/libsofthsm2.so",
                "/nonexistent/libvendor.so",
            )
        },
        &[],
    );
    assert!(
        err.contains("/nonexistent/libvendor.so") && err.contains("does not exist"),
        "{err}"
    );

    // The CA's token key named as the RA key: it does not match the RA certificate.
    // (A key without CKA_DECRYPT named for decryption is refused by Pkcs11Key::open:
    // hsm/tests/pkcs11.rs, a_key_without_decrypt_permission_is_refused_for_decryption.)
    let err = start_fails(
        |t| {
            t.replacen(
                "key_label = \"scep-gateway-ra\", key_id = \"02\"",
                "key_label = \"scep-gateway-ca\", key_id = \"01\"",
                1,
            )
        },
        &[],
    );
    assert!(
        err.contains("ra.key") && err.contains("does not belong"),
        "{err}"
    );
}
