//! Operator functions behind `scep-gateway hsm ...`: generate a key pair in a token,
//! list what a token holds, and time a sign and decrypt round trip.
//!
//! Generated private keys are token objects (CKA_TOKEN), private (CKA_PRIVATE: only a
//! logged-in user sees them), sensitive and not extractable (CKA_SENSITIVE, CKA_EXTRACTABLE
//! false: PKCS#11 3.0 §4.9, the key never leaves the token in the clear), and allowed
//! exactly the operations an RA or CA needs (CKA_SIGN, and CKA_DECRYPT for RSA).

use std::time::{Duration, Instant};

use aws_lc_rs::rsa::{Pkcs1PublicEncryptingKey, PublicEncryptingKey};
use aws_lc_rs::signature::{self, UnparsedPublicKey};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::Ulong;

use super::config::Pin;
use super::error::{rv, Pkcs11Error};
use super::lookup::{self, P256_PARAMS, P384_PARAMS};
use super::module::{Module, TokenSelector};
use crate::{DecryptPadding, Key, KeyAlgorithm, KeyError, SignatureAlgorithm};

/// The kind of key pair to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    Rsa(usize),
    EcP256,
    EcP384,
}

impl std::str::FromStr for KeySpec {
    type Err = String;
    /// `rsa:2048`, `rsa:3072`, `rsa:4096`, `ec:p256`, `ec:p384` (pkcs11-tool's spelling).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "rsa:2048" => Ok(KeySpec::Rsa(2048)),
            "rsa:3072" => Ok(KeySpec::Rsa(3072)),
            "rsa:4096" => Ok(KeySpec::Rsa(4096)),
            "ec:p256" | "ec:prime256v1" | "ec:secp256r1" => Ok(KeySpec::EcP256),
            "ec:p384" | "ec:secp384r1" => Ok(KeySpec::EcP384),
            other => Err(format!(
                "unknown key type {other:?}: use rsa:2048, rsa:3072, rsa:4096, ec:p256 or ec:p384"
            )),
        }
    }
}

/// Where an operator function works: module, token, PIN.
#[derive(Debug, Clone)]
pub struct TokenAccess {
    pub module: std::path::PathBuf,
    pub token: TokenSelector,
    pub pin: Pin,
}

impl TokenAccess {
    /// A read-write session on `module`, logged in as the user (PKCS#11 3.0 §5.6).
    /// The caller holds `module.enter()` while it uses the session, as every operation
    /// does: a restart of the module by another thread (C_Finalize) would otherwise
    /// close it, and its object handles, mid-use.
    fn session(&self, module: &Module) -> Result<Session, Pkcs11Error> {
        let slot = module.find_slot(&self.token)?;
        let session = module
            .context()
            .open_rw_session(slot)
            .map_err(|e| Pkcs11Error::device("opening a session", e))?;
        match session.login(UserType::User, Some(&self.pin.to_auth())) {
            Ok(()) => {}
            Err(e) => match rv(&e) {
                Some(RvError::UserAlreadyLoggedIn) => {}
                Some(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange) => {
                    return Err(Pkcs11Error::PinIncorrect {
                        token: self.token.to_string(),
                    })
                }
                Some(RvError::PinLocked) => {
                    return Err(Pkcs11Error::PinLocked {
                        token: self.token.to_string(),
                    })
                }
                _ => return Err(Pkcs11Error::device("logging in", e)),
            },
        }
        Ok(session)
    }
}

/// A key pair made by [`keygen`].
#[derive(Debug, Clone)]
pub struct Generated {
    pub label: String,
    pub id: Vec<u8>,
    pub algorithm: KeyAlgorithm,
    /// DER SubjectPublicKeyInfo.
    pub public_key_info: Vec<u8>,
}

/// Generates a key pair in the token. Refuses when a key with the same label or id
/// exists already: two matches would make the key configuration ambiguous.
pub fn keygen(
    access: &TokenAccess,
    label: &str,
    id: &[u8],
    spec: KeySpec,
) -> Result<Generated, Pkcs11Error> {
    if label.is_empty() || id.is_empty() {
        return Err(Pkcs11Error::Config(
            "a generated key needs a label and an id".into(),
        ));
    }
    let module = Module::get(&access.module)?;
    let _calls = module.enter();
    let session = access.session(&module)?;
    for attr in [
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ] {
        let existing = session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), attr])
            .map_err(|e| Pkcs11Error::device("looking for existing keys", e))?;
        if !existing.is_empty() {
            return Err(Pkcs11Error::Config(format!(
                "the token {} already holds a private key with label {label:?} or id {}",
                access.token,
                hex::encode(id)
            )));
        }
    }
    let common = |private: bool| {
        vec![
            Attribute::Token(true),
            Attribute::Private(private),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ]
    };
    let mut public = common(false);
    let mut private = common(true);
    private.extend([
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ]);
    public.push(Attribute::Verify(true));
    let mechanism = match spec {
        KeySpec::Rsa(bits) => {
            public.extend([
                Attribute::Encrypt(true),
                Attribute::ModulusBits(Ulong::from(bits as u64)),
                Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
            ]);
            private.push(Attribute::Decrypt(true));
            Mechanism::RsaPkcsKeyPairGen
        }
        KeySpec::EcP256 | KeySpec::EcP384 => {
            let params = if spec == KeySpec::EcP256 {
                P256_PARAMS
            } else {
                P384_PARAMS
            };
            public.push(Attribute::EcParams(params.to_vec()));
            private.extend([Attribute::Derive(false), Attribute::Decrypt(false)]);
            Mechanism::EccKeyPairGen
        }
    };
    let (_, private_handle) = session
        .generate_key_pair(&mechanism, &public, &private)
        .map_err(|e| Pkcs11Error::device("generating the key pair", e))?;
    let facts = lookup::key_facts(&session, private_handle).map_err(|e| Pkcs11Error::Device {
        during: "reading the new key",
        error: format!("{e:?}"),
    })?;
    Ok(Generated {
        label: label.into(),
        id: id.to_vec(),
        algorithm: facts.algorithm,
        public_key_info: facts.spki,
    })
}

/// One object on a token, as `hsm list` shows it.
#[derive(Debug, Clone)]
pub struct ObjectSummary {
    /// "private key", "public key" or "certificate".
    pub class: &'static str,
    pub label: String,
    pub id: String,
    /// "RSA 2048", "EC P-256", ... for keys.
    pub kind: String,
    /// CKA_SIGN, CKA_DECRYPT, CKA_SENSITIVE, CKA_EXTRACTABLE of private keys.
    pub flags: Vec<&'static str>,
}

/// The keys and certificates on the token.
pub fn list(access: &TokenAccess) -> Result<Vec<ObjectSummary>, Pkcs11Error> {
    let module = Module::get(&access.module)?;
    let _calls = module.enter();
    let session = access.session(&module)?;
    let mut out = Vec::new();
    for (class, name) in [
        (ObjectClass::PRIVATE_KEY, "private key"),
        (ObjectClass::PUBLIC_KEY, "public key"),
        (ObjectClass::CERTIFICATE, "certificate"),
    ] {
        let handles = session
            .find_objects(&[Attribute::Class(class)])
            .map_err(|e| Pkcs11Error::device("listing objects", e))?;
        for handle in handles {
            let attrs = match session.get_attributes(
                handle,
                &[
                    AttributeType::Label,
                    AttributeType::Id,
                    AttributeType::KeyType,
                    AttributeType::Modulus,
                    AttributeType::EcParams,
                    AttributeType::Sign,
                    AttributeType::Decrypt,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                ],
            ) {
                Ok(attrs) => attrs,
                // Gone since it was found (deleted meanwhile, e.g. by another process):
                // not on the token any more, so not listed.
                Err(e) if rv(&e) == Some(RvError::ObjectHandleInvalid) => continue,
                Err(e) => return Err(Pkcs11Error::device("reading object attributes", e)),
            };
            let mut summary = ObjectSummary {
                class: name,
                label: String::new(),
                id: String::new(),
                kind: String::new(),
                flags: Vec::new(),
            };
            for a in attrs {
                match a {
                    Attribute::Label(l) => summary.label = String::from_utf8_lossy(&l).into(),
                    Attribute::Id(id) => summary.id = hex::encode(id),
                    Attribute::KeyType(t) if t == KeyType::RSA && summary.kind.is_empty() => {
                        summary.kind = "RSA".into()
                    }
                    Attribute::KeyType(t) if t == KeyType::EC => summary.kind = "EC".into(),
                    Attribute::Modulus(n) => {
                        let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                        summary.kind = format!("RSA {bits}");
                    }
                    Attribute::EcParams(p) if p == P256_PARAMS => summary.kind = "EC P-256".into(),
                    Attribute::EcParams(p) if p == P384_PARAMS => summary.kind = "EC P-384".into(),
                    Attribute::Sign(true) if class == ObjectClass::PRIVATE_KEY => {
                        summary.flags.push("sign")
                    }
                    Attribute::Decrypt(true) if class == ObjectClass::PRIVATE_KEY => {
                        summary.flags.push("decrypt")
                    }
                    Attribute::Sensitive(true) if class == ObjectClass::PRIVATE_KEY => {
                        summary.flags.push("sensitive")
                    }
                    Attribute::Extractable(true) if class == ObjectClass::PRIVATE_KEY => {
                        summary.flags.push("extractable")
                    }
                    _ => {}
                }
            }
            out.push(summary);
        }
    }
    Ok(out)
}

/// Timings of [`round_trip`].
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub sign: Duration,
    /// `None` for keys that do not decrypt (EC).
    pub decrypt: Option<Duration>,
}

/// Signs a test message and verifies it with the public key, then (RSA) encrypts a
/// random 32-byte key to the public key and decrypts it with the private key
/// (PKCS#1 v1.5, as most SCEP clients send). Works on any [`Key`].
pub fn round_trip(key: &dyn Key) -> Result<CheckReport, KeyError> {
    let message = b"scep-gateway hsm check";
    let spki = spki::SubjectPublicKeyInfoRef::try_from(key.public_key_info())
        .map_err(|_| KeyError::Unsupported("the public key does not decode"))?;
    let public = spki.subject_public_key.raw_bytes();
    let (alg, verify): (_, &dyn signature::VerificationAlgorithm) = match key.algorithm() {
        KeyAlgorithm::Rsa { .. } => (
            SignatureAlgorithm::RsaPkcs1Sha256,
            &signature::RSA_PKCS1_2048_8192_SHA256,
        ),
        KeyAlgorithm::EcP256 => (
            SignatureAlgorithm::EcdsaSha256,
            &signature::ECDSA_P256_SHA256_ASN1,
        ),
        KeyAlgorithm::EcP384 => (
            SignatureAlgorithm::EcdsaSha384,
            &signature::ECDSA_P384_SHA384_ASN1,
        ),
    };
    let started = Instant::now();
    let sig = key.sign(alg, message)?;
    let sign = started.elapsed();
    UnparsedPublicKey::new(verify, public)
        .verify(message, &sig)
        .map_err(|_| KeyError::Unsupported("the signature does not verify with the public key"))?;
    let decrypt = if key.algorithm().is_rsa() {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| KeyError::Operation)?;
        let unusable = |_| KeyError::Unsupported("the RSA public key is unusable");
        let enc = PublicEncryptingKey::from_der(key.public_key_info())
            .map_err(|_| KeyError::Unsupported("the RSA public key is unusable"))
            .and_then(|k| Pkcs1PublicEncryptingKey::new(k).map_err(unusable))?;
        let mut ct = vec![0u8; enc.ciphertext_size()];
        let ct = enc
            .encrypt(&secret, &mut ct)
            .map_err(|_| KeyError::Operation)?
            .to_vec();
        let started = Instant::now();
        let plain = key.decrypt(DecryptPadding::Pkcs1v15, &ct)?;
        let took = started.elapsed();
        if plain[..] != secret[..] {
            return Err(KeyError::Operation);
        }
        Some(took)
    } else {
        None
    };
    Ok(CheckReport { sign, decrypt })
}
