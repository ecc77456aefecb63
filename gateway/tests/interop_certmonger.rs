//! certmonger 0.79 (`getcert`, `scep-submit`) enrolls over GET with SHA-256 and
//! AES-256-CBC, without systemd or the system bus: a private session bus and state in a
//! temporary folder, as `../shared/docs/peers.md` describes.

#[macro_use]
mod common;

use std::process::Command;

use common::{openssl_verify, openssl_x509, require_tool, Backend, Gateway, Options, CHALLENGE};

backends!(certmonger_enrolls_by_get_with_aes_and_the_certificate_verifies);
fn certmonger_enrolls_by_get_with_aes_and_the_certificate_verifies(backend: Backend) {
    require_tool("certmonger");
    require_tool("getcert");
    require_tool("dbus-run-session");
    let mut gateway = Gateway::start(Options {
        backend,
        ..Options::default()
    });
    let state = tempfile::tempdir().unwrap();
    let s = state.path();
    for d in ["cas", "requests", "local", "config", "tmp"] {
        std::fs::create_dir_all(s.join(d)).unwrap();
    }
    let cert = s.join("cert.pem");
    let script = format!(
        r#"
        certmonger -s -n -d 2 > "$S/certmonger.log" 2>&1 & pid=$!
        for i in $(seq 1 50); do getcert list -s >/dev/null 2>&1 && break; sleep 0.1; done
        getcert add-scep-ca -s -c gw -u '{url}' -N '{ca}' || {{ kill $pid; exit 10; }}
        getcert request -s -c gw -f "$S/cert.pem" -k "$S/key.pem" -N CN=certmonger-device \
            -L '{challenge}' -w --wait-timeout=60 -v
        rc=$?
        getcert list -s > "$S/list.txt" 2>&1
        kill $pid
        exit $rc
        "#,
        url = gateway.url(),
        ca = gateway.ca_pem().display(),
        challenge = CHALLENGE,
    );
    let out = Command::new("dbus-run-session")
        .args(["--", "bash", "-c", &script])
        .env("S", s)
        .env("CERTMONGER_CAS_DIR", s.join("cas"))
        .env("CERTMONGER_REQUESTS_DIR", s.join("requests"))
        .env("CERTMONGER_LOCAL_CA_DIR", s.join("local"))
        .env("CERTMONGER_CONFIG_DIR", s.join("config"))
        .env("CERTMONGER_TMPDIR", s.join("tmp"))
        .env("HOME", s)
        .output()
        .unwrap();
    let read = |name: &str| std::fs::read_to_string(s.join(name)).unwrap_or_default();
    assert!(
        out.status.success() && cert.exists(),
        "certmonger did not get a certificate: {}\n{}\nlist: {}\ncertmonger log: {}\ngateway log: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        read("list.txt"),
        read("certmonger.log"),
        gateway.log()
    );
    openssl_verify(&gateway.ca_pem(), &cert);
    assert!(openssl_x509(&cert, &["-subject"]).contains("certmonger-device"));
    let log = gateway.log();
    assert!(
        log.lines().any(|l| l.contains("method=GET")
            && l.contains("operation=\"PKIOperation\"")
            && l.contains("outcome=\"success\"")),
        "no successful GET PKIOperation in the log:\n{log}"
    );
    assert!(!log.contains(CHALLENGE), "the challenge was logged");
    gateway.assert_healthy();
}
