//! A token without CKM_RSA_PKCS: an RSA key meant for decryption is refused at open,
//! naming the mechanism. (Its own test binary: SoftHSM2 reads its mechanism list from
//! its config file, once per process.)

mod softhsm;

use scep_hsm::pkcs11::admin::{keygen, KeySpec};
use scep_hsm::pkcs11::{Pkcs11Error, Pkcs11Key, Purpose};
use scep_hsm::{Key, SignatureAlgorithm};
use softhsm::*;

#[test]
fn a_missing_mechanism_is_named_at_open() {
    // SoftHSM2 2.6.1 ignores a "-CKM_..." exclusion list; an inclusion list works.
    softhsm(&[], Some("CKM_RSA_PKCS_KEY_PAIR_GEN,CKM_SHA256_RSA_PKCS"));
    let (label, id) = unique("nomech");
    keygen(&access(TOKEN), &label, &id, KeySpec::Rsa(2048)).unwrap();
    let err = Pkcs11Key::open(&config(TOKEN, &label), Purpose::DECRYPT).unwrap_err();
    assert!(matches!(err, Pkcs11Error::MissingMechanism { .. }), "{err}");
    assert!(err.to_string().contains("CKM_RSA_PKCS"), "{err}");
    // Signing needs only CKM_SHA256_RSA_PKCS, which the token still offers.
    let key = Pkcs11Key::open(&config(TOKEN, &label), Purpose::SIGN).unwrap();
    key.sign(SignatureAlgorithm::RsaPkcs1Sha256, b"m").unwrap();
}
