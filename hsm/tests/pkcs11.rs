//! The PKCS#11 key against a SoftHSM2 token: signatures verified with aws-lc-rs,
//! decryption of PKCS#1 v1.5 and OAEP, start-up errors, concurrency, the timing hook.

mod softhsm;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aws_lc_rs::rsa::{
    OaepPublicEncryptingKey, Pkcs1PublicEncryptingKey, PublicEncryptingKey, OAEP_SHA1_MGF1SHA1,
    OAEP_SHA256_MGF1SHA256,
};
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use scep_hsm::pkcs11::admin::{keygen, list, round_trip, KeySpec};
use scep_hsm::pkcs11::module::{Module, TokenSelector};
use scep_hsm::pkcs11::{Pkcs11Error, Pkcs11Key, Purpose};
use scep_hsm::{DecryptPadding, Key, KeyAlgorithm, KeyError, SignatureAlgorithm};
use softhsm::*;

fn verify(key: &dyn Key, alg: &'static dyn VerificationAlgorithm, message: &[u8], sig: &[u8]) {
    let spki = spki::SubjectPublicKeyInfoRef::try_from(key.public_key_info()).unwrap();
    UnparsedPublicKey::new(alg, spki.subject_public_key.raw_bytes())
        .verify(message, sig)
        .unwrap_or_else(|_| panic!("signature of {} does not verify", key.label()));
}

#[test]
fn rsa_signs_with_sha256_384_512_and_aws_lc_verifies() {
    softhsm(&["wrong-pin"], None);
    let key = new_key(KeySpec::Rsa(2048), Purpose::BOTH);
    assert_eq!(key.algorithm(), KeyAlgorithm::Rsa { bits: 2048 });
    for (alg, check) in [
        (
            SignatureAlgorithm::RsaPkcs1Sha256,
            &signature::RSA_PKCS1_2048_8192_SHA256,
        ),
        (
            SignatureAlgorithm::RsaPkcs1Sha384,
            &signature::RSA_PKCS1_2048_8192_SHA384,
        ),
        (
            SignatureAlgorithm::RsaPkcs1Sha512,
            &signature::RSA_PKCS1_2048_8192_SHA512,
        ),
    ] {
        let sig = key.sign(alg, b"to be signed").unwrap();
        verify(&key, check, b"to be signed", &sig);
    }
    assert!(matches!(
        key.sign(SignatureAlgorithm::EcdsaSha256, b"x"),
        Err(KeyError::Unsupported(_))
    ));
}

#[test]
fn ecdsa_p256_and_p384_signatures_are_der_and_verify() {
    softhsm(&["wrong-pin"], None);
    for (spec, alg, algorithm, check) in [
        (
            KeySpec::EcP256,
            SignatureAlgorithm::EcdsaSha256,
            KeyAlgorithm::EcP256,
            &signature::ECDSA_P256_SHA256_ASN1,
        ),
        (
            KeySpec::EcP384,
            SignatureAlgorithm::EcdsaSha384,
            KeyAlgorithm::EcP384,
            &signature::ECDSA_P384_SHA384_ASN1,
        ),
    ] {
        let key = new_key(spec, Purpose::SIGN);
        assert_eq!(key.algorithm(), algorithm);
        // Many signatures, so that r or s with a high bit (a 0x00 in DER) shows up.
        for i in 0..20u8 {
            let message = [i; 40];
            let sig = key.sign(alg, &message).unwrap();
            assert_eq!(sig[0], 0x30, "not a DER SEQUENCE");
            verify(&key, check, &message, &sig);
        }
        assert!(key.decrypt(DecryptPadding::Pkcs1v15, b"x").is_err());
    }
}

#[test]
fn decrypts_pkcs1_v15_and_oaep_and_fails_opaquely() {
    softhsm(&["wrong-pin"], None);
    let key = new_key(KeySpec::Rsa(2048), Purpose::BOTH);
    let public = PublicEncryptingKey::from_der(key.public_key_info()).unwrap();
    let secret = b"0123456789abcdef0123456789abcdef";

    let pkcs1 = Pkcs1PublicEncryptingKey::new(public.clone()).unwrap();
    let mut ct = vec![0; pkcs1.ciphertext_size()];
    let ct = pkcs1.encrypt(secret, &mut ct).unwrap().to_vec();
    assert_eq!(
        &key.decrypt(DecryptPadding::Pkcs1v15, &ct).unwrap()[..],
        secret
    );

    let oaep = OaepPublicEncryptingKey::new(public).unwrap();
    for (padding, alg) in [
        (DecryptPadding::OaepSha1, &OAEP_SHA1_MGF1SHA1),
        (DecryptPadding::OaepSha256, &OAEP_SHA256_MGF1SHA256),
    ] {
        let mut out = vec![0; oaep.ciphertext_size()];
        let ct = oaep.encrypt(alg, secret, &mut out, None).unwrap().to_vec();
        match key.decrypt(padding, &ct) {
            Ok(plain) => assert_eq!(&plain[..], secret, "{padding:?}"),
            // SoftHSM2 2.6 implements OAEP with SHA-1 only; the refusal comes from
            // C_DecryptInit and says so, it is not a decryption failure.
            Err(KeyError::Unsupported(_)) if padding == DecryptPadding::OaepSha256 => {}
            Err(e) => panic!("{padding:?}: {e}"),
        }
    }

    // A flipped byte, a wrong length, the wrong padding: one opaque error, no 503.
    let mut bad = ct.clone();
    bad[5] ^= 0x40;
    for (padding, ct) in [
        (DecryptPadding::Pkcs1v15, &bad[..]),
        (DecryptPadding::Pkcs1v15, &ct[..10]),
        (DecryptPadding::OaepSha1, &ct[..]),
    ] {
        assert!(
            matches!(key.decrypt(padding, ct), Err(KeyError::Operation)),
            "{padding:?}"
        );
    }
    // The key still works afterwards.
    assert_eq!(
        &key.decrypt(DecryptPadding::Pkcs1v15, &ct).unwrap()[..],
        secret
    );
}

#[test]
fn a_wrong_pin_is_a_clear_start_up_error_without_the_pin() {
    softhsm(&["wrong-pin"], None);
    let _objects = object_store();
    std::env::set_var("SCEP_HSM_WRONG_PIN", "999999");
    let mut config = config("wrong-pin", "whatever");
    config.pin_env = Some("SCEP_HSM_WRONG_PIN".into());
    let err = Pkcs11Key::open(&config, Purpose::SIGN).unwrap_err();
    assert!(matches!(err, Pkcs11Error::PinIncorrect { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("PIN") && text.contains("wrong-pin"), "{text}");
    assert!(
        !text.contains("999999"),
        "the PIN is in the message: {text}"
    );
    assert!(!format!("{err:?}").contains("999999"));

    config.pin_env = Some("SCEP_HSM_UNSET_PIN_VARIABLE".into());
    let text = Pkcs11Key::open(&config, Purpose::SIGN)
        .unwrap_err()
        .to_string();
    assert!(text.contains("SCEP_HSM_UNSET_PIN_VARIABLE"), "{text}");
}

#[test]
fn a_missing_key_label_or_token_is_named() {
    softhsm(&["wrong-pin"], None);
    let _objects = object_store();
    let err = Pkcs11Key::open(&config(TOKEN, "no-such-key"), Purpose::SIGN).unwrap_err();
    assert!(matches!(err, Pkcs11Error::KeyNotFound { .. }), "{err}");
    assert!(err.to_string().contains("no-such-key"), "{err}");

    let err = Pkcs11Key::open(&config("no-such-token", "k"), Purpose::SIGN).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no-such-token") && text.contains(TOKEN),
        "{text}"
    );
}

#[test]
fn a_module_that_does_not_exist_is_named() {
    let mut config = config(TOKEN, "k");
    config.module = "/nonexistent/libpkcs11.so".into();
    let err = Pkcs11Key::open(&config, Purpose::SIGN).unwrap_err();
    assert!(matches!(err, Pkcs11Error::ModuleNotFound(_)), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/libpkcs11.so"),
        "{err}"
    );

    // A file that is not a PKCS#11 library.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake.so");
    std::fs::write(&fake, b"not a library").unwrap();
    config.module = fake;
    let err = Pkcs11Key::open(&config, Purpose::SIGN).unwrap_err();
    assert!(matches!(err, Pkcs11Error::ModuleLoad { .. }), "{err}");
}

#[test]
fn a_key_without_decrypt_permission_is_refused_for_decryption() {
    softhsm(&["wrong-pin"], None);
    let _objects = object_store();
    // A sign-only RSA key, made directly through cryptoki (pkcs11-tool cannot clear
    // CKA_DECRYPT, which SoftHSM2 sets by default).
    let (label, id) = unique("signonly");
    let module = Module::get(MODULE.as_ref()).unwrap();
    // Another test may restart the module (a missing token makes it rescan).
    let calls = module.enter();
    let slot = module
        .find_slot(&TokenSelector::Label(TOKEN.into()))
        .unwrap();
    let session = module.context().open_rw_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from(PIN))) {
        Ok(()) => {}
        Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let common = vec![
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.clone()),
    ];
    let mut public = common.clone();
    public.extend([
        Attribute::ModulusBits(2048u64.into()),
        Attribute::PublicExponent(vec![1, 0, 1]),
    ]);
    let mut private = common;
    private.extend([
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Private(true),
    ]);
    session
        .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
        .unwrap();
    drop(session);
    drop(calls);
    let err = Pkcs11Key::open(&config(TOKEN, &label), Purpose::DECRYPT).unwrap_err();
    assert!(matches!(err, Pkcs11Error::NotPermitted { .. }), "{err}");
    assert!(err.to_string().contains("CKA_DECRYPT"), "{err}");
    // For signing it is fine.
    let key = Pkcs11Key::open(&config(TOKEN, &label), Purpose::SIGN).unwrap();
    let sig = key.sign(SignatureAlgorithm::RsaPkcs1Sha256, b"m").unwrap();
    verify(&key, &signature::RSA_PKCS1_2048_8192_SHA256, b"m", &sig);
}

#[test]
fn eight_threads_share_a_small_pool() {
    softhsm(&["wrong-pin"], None);
    let (label, id) = unique("pool");
    let objects = object_store();
    keygen(&access(TOKEN), &label, &id, KeySpec::Rsa(2048)).unwrap();
    let mut cfg = config(TOKEN, &label);
    cfg.sessions = Some(3);
    let key = Arc::new(Pkcs11Key::open(&cfg, Purpose::BOTH).unwrap());
    drop(objects);
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    key.set_observer(Arc::new(move |op, label, _took, ok| {
        assert!(ok, "{op} on {label} failed");
        c.fetch_add(1, Ordering::Relaxed);
    }));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let key = key.clone();
            std::thread::spawn(move || {
                let public = PublicEncryptingKey::from_der(key.public_key_info()).unwrap();
                let enc = Pkcs1PublicEncryptingKey::new(public).unwrap();
                for i in 0..10u8 {
                    let message = [t, i];
                    let sig = key
                        .sign(SignatureAlgorithm::RsaPkcs1Sha256, &message)
                        .unwrap();
                    verify(
                        &*key,
                        &signature::RSA_PKCS1_2048_8192_SHA256,
                        &message,
                        &sig,
                    );
                    let mut ct = vec![0; enc.ciphertext_size()];
                    let ct = enc.encrypt(&message, &mut ct).unwrap();
                    assert_eq!(
                        &key.decrypt(DecryptPadding::Pkcs1v15, ct).unwrap()[..],
                        &message
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(count.load(Ordering::Relaxed), 8 * 10 * 2);
    key.health().unwrap();
}

#[test]
fn check_round_trip_and_list_show_a_protected_key() {
    softhsm(&["wrong-pin"], None);
    let (label, id) = unique("listed");
    let _objects = object_store();
    keygen(&access(TOKEN), &label, &id, KeySpec::Rsa(2048)).unwrap();
    let key = Pkcs11Key::open(&config(TOKEN, &label), Purpose::BOTH).unwrap();
    let report = round_trip(&key).unwrap();
    assert!(report.decrypt.is_some());

    let objects = list(&access(TOKEN)).unwrap();
    let private = objects
        .iter()
        .find(|o| o.label == label && o.class == "private key")
        .expect("the key is listed");
    assert_eq!(private.id, hex::encode(&id));
    assert_eq!(private.kind, "RSA 2048");
    for flag in ["sign", "decrypt", "sensitive"] {
        assert!(private.flags.contains(&flag), "{:?}", private.flags);
    }
    assert!(
        !private.flags.contains(&"extractable"),
        "{:?}",
        private.flags
    );

    // A second key with the same label is refused (it would make the config ambiguous).
    let err = keygen(&access(TOKEN), &label, &[0xee], KeySpec::EcP256).unwrap_err();
    assert!(err.to_string().contains("already holds"), "{err}");
}
