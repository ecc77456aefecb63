//! The operator rotates the token's PIN and reloads the configuration with the new one:
//! the keys keep working, and so does the next login, after the module restarts (a token
//! that vanished and came back), which must use the new PIN: the old one no longer
//! works. (Its own process: it moves the token folder away.)

mod softhsm;

use std::process::Command;
use std::time::Duration;

use scep_hsm::pkcs11::admin::{keygen, KeySpec};
use scep_hsm::pkcs11::{Pkcs11Key, Purpose};
use scep_hsm::{Key, KeyError, SignatureAlgorithm};
use softhsm::*;

const NEW_PIN: &str = "8765";

#[test]
fn a_rotated_pin_taken_by_a_reload_is_used_for_the_next_login() {
    let hsm = softhsm(&[], None);
    let (label, id) = unique("rotated");
    keygen(&access(TOKEN), &label, &id, KeySpec::Rsa(2048)).unwrap();
    let key = Pkcs11Key::open(&config(TOKEN, &label), Purpose::BOTH).unwrap();
    key.sign(SignatureAlgorithm::RsaPkcs1Sha256, b"before")
        .unwrap();

    // The vendor's tool changes the PIN on the token (here opensc's pkcs11-tool) ...
    let out = Command::new(require_tool("pkcs11-tool"))
        .args(["--module", MODULE, "--token-label", TOKEN, "--login"])
        .args(["--pin", PIN, "--change-pin", "--new-pin", NEW_PIN])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pkcs11-tool --change-pin: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and a reload opens the key again with the new one (the PIN variable changed).
    std::env::set_var(PIN_ENV, NEW_PIN);
    let reloaded = Pkcs11Key::open(&config(TOKEN, &label), Purpose::BOTH).unwrap();
    reloaded
        .sign(SignatureAlgorithm::RsaPkcs1Sha256, b"reloaded")
        .unwrap();

    // The token vanishes and comes back: the module restarts and logs in again.
    let tokens = hsm.dir.path().join("tokens");
    let away = hsm.dir.path().join("tokens.away");
    std::fs::rename(&tokens, &away).unwrap();
    let during = reloaded.sign(SignatureAlgorithm::RsaPkcs1Sha256, b"during");
    assert!(
        matches!(during, Err(KeyError::Unavailable(_))),
        "{during:?}"
    );
    std::fs::rename(&away, &tokens).unwrap();
    // Restarts of the module are at most one a second.
    std::thread::sleep(Duration::from_millis(1100));
    for k in [&reloaded, &key] {
        k.health().unwrap();
        let sig = k
            .sign(SignatureAlgorithm::RsaPkcs1Sha256, b"after")
            .unwrap();
        assert_eq!(sig.len(), 256);
    }
}
