//! A token that becomes unusable while keys are open: operations fail promptly as
//! `Unavailable` (never hang, never panic) and work again, without reopening the key,
//! once the token is back. (Its own process: it moves the token folder away.)

mod softhsm;

use std::time::{Duration, Instant};

use scep_hsm::pkcs11::admin::KeySpec;
use scep_hsm::pkcs11::Purpose;
use scep_hsm::{Key, KeyError, SignatureAlgorithm};
use softhsm::*;

#[test]
fn a_vanished_token_is_unavailable_and_recovers_without_reopening() {
    let hsm = softhsm(&[], None);
    let key = new_key(KeySpec::Rsa(2048), Purpose::BOTH);
    key.sign(SignatureAlgorithm::RsaPkcs1Sha256, b"before")
        .unwrap();
    key.health().unwrap();

    let tokens = hsm.dir.path().join("tokens");
    let away = hsm.dir.path().join("tokens.away");
    std::fs::rename(&tokens, &away).unwrap();
    let started = Instant::now();
    let sign = key.sign(SignatureAlgorithm::RsaPkcs1Sha256, b"during");
    assert!(matches!(sign, Err(KeyError::Unavailable(_))), "{sign:?}");
    let health = key.health();
    assert!(
        matches!(health, Err(KeyError::Unavailable(_))),
        "{health:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let text = health.unwrap_err().to_string();
    assert!(text.contains(TOKEN) && !text.contains(PIN), "{text}");

    std::fs::rename(&away, &tokens).unwrap();
    // Restarts of the module are at most one a second.
    std::thread::sleep(Duration::from_millis(1100));
    key.health().unwrap();
    let sig = key
        .sign(SignatureAlgorithm::RsaPkcs1Sha256, b"after")
        .unwrap();
    assert_eq!(sig.len(), 256);
}
