//! The requester's public key, parsed once per enrollment instead of once per use.
//!
//! A PKCSReq's signer key is used three times: the request signature, the CSR's
//! self-signature (the same key) and the reply's key transport. Parsing it into an
//! aws-lc key and setting up its Montgomery context each time cost ~20 µs per use,
//! about a third of an enrollment's non-RSA CPU. Threading a parsed key through
//! `cms::signed`, `csr` and `cms::envelope` would change three APIs for one caller, so
//! the enrollment pipeline opens a [`scope`] on its thread instead, and the checks
//! below reuse within it what they already parsed, keyed by the exact key bytes (and
//! the verification algorithm, which a parsed key is bound to). Outside a scope
//! nothing is kept: every call parses, as before.

use std::cell::RefCell;
use std::marker::PhantomData;

use aws_lc_rs::error::{KeyRejected, Unspecified};
use aws_lc_rs::rsa::PublicEncryptingKey;
use aws_lc_rs::signature::{ParsedPublicKey, UnparsedPublicKey, VerificationAlgorithm};

/// More keys than one request ever has (signer, CSR, recipient): a bound, not a size.
const MAX_KEYS: usize = 4;

#[derive(Default)]
struct Keys {
    /// (algorithm address, key bytes, parsed key).
    verify: Vec<(usize, Vec<u8>, ParsedPublicKey)>,
    /// (SubjectPublicKeyInfo, parsed key).
    encrypt: Vec<(Vec<u8>, PublicEncryptingKey)>,
}

thread_local! {
    static KEYS: RefCell<Option<Keys>> = const { RefCell::new(None) };
}

/// Keeps parsed public keys on this thread until dropped. Not `Send`: it must be
/// dropped on the thread that made it.
pub struct Scope {
    _thread_bound: PhantomData<*const ()>,
}

/// Starts reusing parsed keys on this thread (one enrollment).
pub fn scope() -> Scope {
    KEYS.with(|k| *k.borrow_mut() = Some(Keys::default()));
    Scope {
        _thread_bound: PhantomData,
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        KEYS.with(|k| *k.borrow_mut() = None);
    }
}

fn algorithm_id(alg: &'static dyn VerificationAlgorithm) -> usize {
    // The algorithms are statics: their address names them.
    alg as *const dyn VerificationAlgorithm as *const () as usize
}

/// `UnparsedPublicKey::new(alg, key).verify(message, signature)`, with the parsed key
/// reused within a scope.
pub fn verify(
    alg: &'static dyn VerificationAlgorithm,
    key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), Unspecified> {
    KEYS.with(|cell| {
        let mut keys = cell.borrow_mut();
        let Some(keys) = keys.as_mut() else {
            return UnparsedPublicKey::new(alg, key).verify(message, signature);
        };
        let id = algorithm_id(alg);
        if let Some((_, _, parsed)) = keys.verify.iter().find(|(a, k, _)| *a == id && k == key) {
            return parsed.verify_sig(message, signature);
        }
        let parsed = ParsedPublicKey::new(alg, key).map_err(|_| Unspecified)?;
        let result = parsed.verify_sig(message, signature);
        if keys.verify.len() < MAX_KEYS {
            keys.verify.push((id, key.to_vec(), parsed));
        }
        result
    })
}

/// `PublicEncryptingKey::from_der(spki)`, reused within a scope.
pub fn encrypting_key(spki: &[u8]) -> Result<PublicEncryptingKey, KeyRejected> {
    KEYS.with(|cell| {
        let mut keys = cell.borrow_mut();
        let Some(keys) = keys.as_mut() else {
            return PublicEncryptingKey::from_der(spki);
        };
        if let Some((_, parsed)) = keys.encrypt.iter().find(|(k, _)| k == spki) {
            return Ok(parsed.clone());
        }
        let parsed = PublicEncryptingKey::from_der(spki)?;
        if keys.encrypt.len() < MAX_KEYS {
            keys.encrypt.push((spki.to_vec(), parsed.clone()));
        }
        Ok(parsed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};

    fn keypair() -> RsaKeyPair {
        RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap()
    }

    fn sign(k: &RsaKeyPair, msg: &[u8]) -> Vec<u8> {
        let mut sig = vec![0; k.public_modulus_len()];
        k.sign(
            &RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            msg,
            &mut sig,
        )
        .unwrap();
        sig
    }

    #[test]
    fn reuse_never_confuses_keys_or_signatures() {
        let alg = &aws_lc_rs::signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY;
        let (a, b) = (keypair(), keypair());
        let (pa, pb) = (a.public_key().as_ref(), b.public_key().as_ref());
        let (sa, sb) = (sign(&a, b"m"), sign(&b, b"m"));
        for scoped in [false, true] {
            let _scope = scoped.then(scope);
            // Twice each: the second call is served from the scope.
            for _ in 0..2 {
                assert!(verify(alg, pa, b"m", &sa).is_ok());
                assert!(verify(alg, pa, b"other", &sa).is_err());
                assert!(verify(alg, pa, b"m", &sb).is_err());
                assert!(verify(alg, pb, b"m", &sb).is_ok());
                // The same key under another algorithm is another parsed key.
                let sha512 = &aws_lc_rs::signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY;
                assert!(verify(sha512, pa, b"m", &sa).is_err());
            }
            if scoped {
                KEYS.with(|k| assert_eq!(k.borrow().as_ref().unwrap().verify.len(), 3));
            }
        }
        // The scope is gone with its guard.
        KEYS.with(|k| assert!(k.borrow().is_none()));
    }

    #[test]
    fn encrypting_keys_are_reused_only_for_the_same_bytes() {
        let a = aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .unwrap();
        let spki = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(
            &a.public_key(),
        )
        .unwrap();
        let _scope = scope();
        let k1 = encrypting_key(spki.as_ref()).unwrap();
        let k2 = encrypting_key(spki.as_ref()).unwrap();
        assert_eq!(k1.key_size_bits(), k2.key_size_bits());
        assert!(encrypting_key(b"not a key").is_err());
        KEYS.with(|k| assert_eq!(k.borrow().as_ref().unwrap().encrypt.len(), 1));
    }
}
