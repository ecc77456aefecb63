//! Keys held in this process, loaded from PKCS#8 files: the embedded default.
//!
//! aws-lc-rs does the RSA and ECDSA work (about ten times the `rsa` crate's speed on the
//! same machine), which keeps an enrollment's cost at its three private operations.

use std::path::Path;
use std::time::Instant;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, Pkcs1PrivateDecryptingKey, PrivateDecryptingKey,
    OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256,
};
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use zeroize::Zeroizing;

use crate::observe::{Observer, ObserverSlot};
use crate::{DecryptPadding, Key, KeyAlgorithm, KeyError, SignatureAlgorithm};

/// A private key in memory.
pub struct SoftwareKey {
    label: String,
    spki: Vec<u8>,
    inner: Inner,
    /// The PKCS#8 document, kept only so that `init` can write a freshly generated key out.
    pkcs8: Zeroizing<Vec<u8>>,
    /// Receives each operation's duration, as a PKCS#11 key's does: one metrics path for
    /// every key, wherever it lives.
    observer: ObserverSlot,
}

enum Inner {
    /// aws-lc-rs splits one RSA key into a signing and a decrypting handle; both are built
    /// once from the same PKCS#8 bytes.
    Rsa {
        signing: RsaKeyPair,
        pkcs1: Pkcs1PrivateDecryptingKey,
        oaep: OaepPrivateDecryptingKey,
        bits: usize,
    },
    Ec {
        pair: EcdsaKeyPair,
        algorithm: KeyAlgorithm,
    },
}

impl std::fmt::Debug for SoftwareKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("SoftwareKey")
            .field("label", &self.label)
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl SoftwareKey {
    /// Loads a PKCS#8 private key (PEM `PRIVATE KEY` or DER) from a file.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let load = |reason: String| KeyError::Load {
            path: path.display().to_string(),
            reason,
        };
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| load(e.to_string()))?);
        let der = if bytes.starts_with(b"-----BEGIN") {
            let (label, der) = der::pem::decode_vec(&bytes).map_err(|e| load(e.to_string()))?;
            if label != "PRIVATE KEY" {
                return Err(load(format!(
                    "expected a PKCS#8 \"PRIVATE KEY\" PEM block, found \"{label}\" \
                     (convert with `openssl pkcs8 -topk8 -nocrypt`)"
                )));
            }
            Zeroizing::new(der)
        } else {
            bytes
        };
        Self::from_pkcs8(path.display().to_string(), &der).map_err(|e| match e {
            KeyError::Load { reason, .. } => load(reason),
            other => other,
        })
    }

    /// Builds a key from PKCS#8 DER bytes; `label` names it in logs.
    pub fn from_pkcs8(label: String, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let reject = |reason: String| KeyError::Load {
            path: label.clone(),
            reason,
        };
        if let Ok(signing) = RsaKeyPair::from_pkcs8(pkcs8) {
            let decrypting = PrivateDecryptingKey::from_pkcs8(pkcs8)
                .map_err(|e| reject(format!("RSA key rejected for decryption: {e}")))?;
            let bits = decrypting.key_size_bits();
            let spki = signing
                .public_key()
                .as_der()
                .map_err(|_| reject("cannot encode the public key".into()))?
                .as_ref()
                .to_vec();
            let pkcs1 = Pkcs1PrivateDecryptingKey::new(decrypting.clone())
                .map_err(|_| reject("RSA key rejected".into()))?;
            let oaep = OaepPrivateDecryptingKey::new(decrypting)
                .map_err(|_| reject("RSA key rejected".into()))?;
            return Ok(SoftwareKey {
                label,
                spki,
                inner: Inner::Rsa {
                    signing,
                    pkcs1,
                    oaep,
                    bits,
                },
                pkcs8: Zeroizing::new(pkcs8.to_vec()),
                observer: ObserverSlot::default(),
            });
        }
        for (alg, algorithm) in [
            (
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                KeyAlgorithm::EcP256,
            ),
            (
                &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                KeyAlgorithm::EcP384,
            ),
        ] {
            if let Ok(pair) = EcdsaKeyPair::from_pkcs8(alg, pkcs8) {
                let spki = pair
                    .public_key()
                    .as_der()
                    .map_err(|_| reject("cannot encode the public key".into()))?
                    .as_ref()
                    .to_vec();
                return Ok(SoftwareKey {
                    label,
                    spki,
                    inner: Inner::Ec { pair, algorithm },
                    pkcs8: Zeroizing::new(pkcs8.to_vec()),
                    observer: ObserverSlot::default(),
                });
            }
        }
        Err(reject(
            "not a PKCS#8 RSA, P-256 or P-384 private key".into(),
        ))
    }

    /// Generates a new RSA key (2048, 3072 or 4096 bits).
    pub fn generate_rsa(label: String, bits: usize) -> Result<Self, KeyError> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            _ => {
                return Err(KeyError::Unsupported(
                    "RSA keys are 2048, 3072 or 4096 bits",
                ))
            }
        };
        let pair = RsaKeyPair::generate(size).map_err(|_| KeyError::Operation)?;
        let der: Pkcs8V1Der = pair.as_der().map_err(|_| KeyError::Operation)?;
        Self::from_pkcs8(label, der.as_ref())
    }

    /// Generates a new ECDSA P-256 key.
    pub fn generate_p256(label: String) -> Result<Self, KeyError> {
        let doc = EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &SystemRandom::new(),
        )
        .map_err(|_| KeyError::Operation)?;
        Self::from_pkcs8(label, doc.as_ref())
    }

    /// The key as a PEM `PRIVATE KEY` document, for writing a generated key to a file.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(
            der::pem::encode_string("PRIVATE KEY", der::pem::LineEnding::LF, &self.pkcs8)
                .expect("PEM encoding of bytes in memory cannot fail"),
        )
    }
}

impl Key for SoftwareKey {
    fn label(&self) -> &str {
        &self.label
    }

    fn public_key_info(&self) -> &[u8] {
        &self.spki
    }

    fn algorithm(&self) -> KeyAlgorithm {
        match &self.inner {
            Inner::Rsa { bits, .. } => KeyAlgorithm::Rsa { bits: *bits },
            Inner::Ec { algorithm, .. } => *algorithm,
        }
    }

    fn sign(&self, alg: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let started = Instant::now();
        let result = self.sign_now(alg, message);
        self.observe(alg.operation(), started, &result);
        result
    }

    fn decrypt(
        &self,
        padding: DecryptPadding,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let started = Instant::now();
        let result = self.decrypt_now(padding, ciphertext);
        self.observe(padding.operation(), started, &result);
        result
    }
}

impl SoftwareKey {
    /// Sets the hook that receives the duration of every sign and decrypt of this key.
    pub fn set_observer(&self, observer: Observer) {
        self.observer.set(observer);
    }

    fn observe<T>(&self, op: &str, started: Instant, result: &Result<T, KeyError>) {
        self.observer
            .record(op, &self.label, started, result.is_ok());
    }

    fn sign_now(&self, alg: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        match (&self.inner, alg) {
            (Inner::Rsa { signing, .. }, _) => {
                let encoding: &'static dyn signature::RsaEncoding = match alg {
                    SignatureAlgorithm::RsaPkcs1Sha256 => &signature::RSA_PKCS1_SHA256,
                    SignatureAlgorithm::RsaPkcs1Sha384 => &signature::RSA_PKCS1_SHA384,
                    SignatureAlgorithm::RsaPkcs1Sha512 => &signature::RSA_PKCS1_SHA512,
                    _ => return Err(KeyError::Unsupported("ECDSA with an RSA key")),
                };
                let mut sig = vec![0; signing.public_modulus_len()];
                signing
                    .sign(encoding, &rng, message, &mut sig)
                    .map_err(|_| KeyError::Operation)?;
                Ok(sig)
            }
            (Inner::Ec { pair, algorithm }, _) => {
                let ok = matches!(
                    (algorithm, alg),
                    (KeyAlgorithm::EcP256, SignatureAlgorithm::EcdsaSha256)
                        | (KeyAlgorithm::EcP384, SignatureAlgorithm::EcdsaSha384)
                );
                if !ok {
                    return Err(KeyError::Unsupported(
                        "an EC key signs with ECDSA and its curve's digest",
                    ));
                }
                let sig = pair.sign(&rng, message).map_err(|_| KeyError::Operation)?;
                Ok(sig.as_ref().to_vec())
            }
        }
    }

    fn decrypt_now(
        &self,
        padding: DecryptPadding,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let Inner::Rsa { pkcs1, oaep, .. } = &self.inner else {
            return Err(KeyError::Unsupported(
                "an EC key cannot decrypt key transport",
            ));
        };
        let mut out = Zeroizing::new(vec![0u8; pkcs1.min_output_size()]);
        let len = match padding {
            DecryptPadding::Pkcs1v15 => pkcs1.decrypt(ciphertext, &mut out),
            DecryptPadding::OaepSha1 => {
                oaep.decrypt(&OAEP_SHA1_MGF1SHA1, ciphertext, &mut out, None)
            }
            DecryptPadding::OaepSha256 => {
                oaep.decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut out, None)
            }
        }
        .map_err(|_| KeyError::Operation)?
        .len();
        out.truncate(len);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rsa::{Pkcs1PublicEncryptingKey, PublicEncryptingKey};
    use aws_lc_rs::signature::UnparsedPublicKey;

    #[test]
    fn rsa_sign_verifies_and_decrypt_round_trips() {
        let key = SoftwareKey::generate_rsa("test".into(), 2048).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::Rsa { bits: 2048 });
        let sig = key
            .sign(SignatureAlgorithm::RsaPkcs1Sha256, b"hello")
            .unwrap();
        let public = PublicEncryptingKey::from_der(key.public_key_info()).unwrap();
        let enc = Pkcs1PublicEncryptingKey::new(public).unwrap();
        let mut ct = vec![0; enc.ciphertext_size()];
        let ct = enc.encrypt(b"0123456789abcdef", &mut ct).unwrap().to_vec();
        assert_eq!(
            &key.decrypt(DecryptPadding::Pkcs1v15, &ct).unwrap()[..],
            b"0123456789abcdef"
        );
        // A flipped byte fails as one opaque error.
        let mut bad = ct.clone();
        bad[10] ^= 1;
        assert!(matches!(
            key.decrypt(DecryptPadding::Pkcs1v15, &bad),
            Err(KeyError::Operation)
        ));
        // Verify with the public key taken from the SPKI.
        let spki = spki::SubjectPublicKeyInfoRef::try_from(key.public_key_info()).unwrap();
        UnparsedPublicKey::new(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            spki.subject_public_key.raw_bytes(),
        )
        .verify(b"hello", &sig)
        .unwrap();
    }

    #[test]
    fn pem_round_trip_through_a_file() {
        let key = SoftwareKey::generate_p256("ec".into()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, key.to_pkcs8_pem().as_bytes()).unwrap();
        let again = SoftwareKey::from_file(&path).unwrap();
        assert_eq!(again.public_key_info(), key.public_key_info());
        assert_eq!(again.algorithm(), KeyAlgorithm::EcP256);
        assert!(again.sign(SignatureAlgorithm::EcdsaSha256, b"x").is_ok());
        assert!(again.decrypt(DecryptPadding::Pkcs1v15, b"x").is_err());
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.pem");
        let err = SoftwareKey::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");
    }
}
