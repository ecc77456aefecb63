//! Keys in a PKCS#11 token (an HSM, a smart card, SoftHSM2), through `cryptoki`.
//!
//! The operator names the module, the token, the key and where the user PIN comes from
//! ([`Pkcs11KeyConfig`]); [`Pkcs11Key::open`] loads the module once per process
//! ([`module`]), logs in once per token, checks that the key exists, has the permissions
//! (CKA_SIGN, CKA_DECRYPT) and that the token offers the mechanisms ([`mechanisms`]) its
//! use needs, and fails with a message naming what is missing.
//!
//! Each operation borrows a logged-in session from the token's [`pool`] (no lock is held
//! during the PKCS#11 call). When the call fails with a return value that says the
//! session, login or token went away ([`error::is_fault`]), the sessions are dropped, the
//! token is found again, the key handle looked up again on a fresh logged-in session,
//! and the call retried once; if that fails too the key reports
//! [`KeyError::Unavailable`], which the protocol answers with HTTP 503. The next
//! operation starts the same recovery again, so a token that comes back is used again
//! without a restart.

pub mod admin;
mod config;
mod error;
mod lookup;
pub mod mechanisms;
pub mod module;
mod pool;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{AttributeType, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroizing;

pub use config::{read_pin, Pin, Pkcs11KeyConfig};
pub use error::Pkcs11Error;
pub use mechanisms::Purpose;
pub use pool::SessionCounts;

use crate::observe::{Observer, ObserverSlot};
use crate::{DecryptPadding, Key, KeyAlgorithm, KeyError, SignatureAlgorithm};
use error::{is_fault, rv};
use lookup::FindError;
use module::{Module, Token};
use pool::GetError;

/// A private key in a PKCS#11 token.
pub struct Pkcs11Key {
    label: String,
    key_label: Option<String>,
    key_id: Option<Vec<u8>>,
    token: Arc<Token>,
    /// Looked up again after a fault: handles may change when a token is re-inserted.
    /// With the module epoch it was found in (a handle of an older epoch may name
    /// another object now).
    handle: Mutex<(ObjectHandle, u64)>,
    algorithm: KeyAlgorithm,
    spki: Vec<u8>,
    offered: Vec<MechanismType>,
    observer: ObserverSlot,
    /// The last fault was CKR_CRYPTOKI_NOT_INITIALIZED: recovery restarts the module.
    not_initialised: AtomicBool,
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("label", &self.label)
            .field("algorithm", &self.algorithm)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// The outcome of one PKCS#11 call with its retry.
enum CallError {
    /// Still failing after a fresh session: the token is unusable now.
    Unavailable(String),
    /// The call itself failed (bad ciphertext, mechanism refused): no retry.
    Failed(CkError),
}

impl Pkcs11Key {
    /// Opens the key `config` names, for `purpose`. Blocks (module loading, login).
    pub fn open(config: &Pkcs11KeyConfig, purpose: Purpose) -> Result<Self, Pkcs11Error> {
        config.check()?;
        let pin = config.read_pin()?;
        let module = Module::get(&config.module)?;
        let token = module.token(config, pin)?;
        let label = config.describe();
        let key_id = config.key_id_bytes()?;
        let _calls = module.enter();
        let epoch = module.epoch();
        let offered = mechanisms::offered(module.context(), token.slot()?)
            .map_err(|e| Pkcs11Error::device("listing the token's mechanisms", e))?;
        let lease = token.pool.get(&token).map_err(|e| e.into_error(&token))?;
        let key_name = || match (&config.key_label, &config.key_id) {
            (Some(l), Some(id)) => format!("{l:?} with id {id}"),
            (Some(l), None) => format!("{l:?}"),
            (None, Some(id)) => format!("with id {id}"),
            (None, None) => String::new(),
        };
        let found = |e: FindError| match e {
            FindError::NotFound => Pkcs11Error::KeyNotFound {
                key: key_name(),
                token: token.name(),
            },
            FindError::Ambiguous(count) => Pkcs11Error::KeyAmbiguous {
                key: key_name(),
                token: token.name(),
                count,
            },
            FindError::Token(e) => Pkcs11Error::device("looking up the key", e),
            FindError::Unusable(reason) => Pkcs11Error::UnsupportedKey {
                key: key_name(),
                reason,
            },
        };
        let handle =
            lookup::find_private_key(&lease, config.key_label.as_deref(), key_id.as_deref())
                .map_err(found)?;
        let facts = lookup::key_facts(&lease, handle).map_err(found)?;
        drop(lease);

        let denied = |attribute, purpose| {
            Err(Pkcs11Error::NotPermitted {
                key: key_name(),
                attribute,
                purpose,
            })
        };
        if purpose.decrypt && !facts.algorithm.is_rsa() {
            return Err(Pkcs11Error::UnsupportedKey {
                key: key_name(),
                reason: "SCEP key transport needs an RSA key for decryption".into(),
            });
        }
        if purpose.decrypt && !facts.can_decrypt {
            return denied("CKA_DECRYPT", "opening request envelopes");
        }
        if purpose.sign && !facts.can_sign {
            return denied("CKA_SIGN", "signing");
        }
        for (mechanism, alternative, what) in mechanisms::required(facts.algorithm, purpose) {
            let ok =
                offered.contains(&mechanism) || alternative.is_some_and(|a| offered.contains(&a));
            if !ok {
                return Err(Pkcs11Error::MissingMechanism {
                    token: token.name(),
                    mechanism: mechanisms::name(mechanism),
                    purpose: what,
                });
            }
        }
        Ok(Pkcs11Key {
            label,
            key_label: config.key_label.clone(),
            key_id,
            token,
            handle: Mutex::new((handle, epoch)),
            algorithm: facts.algorithm,
            spki: facts.spki,
            offered,
            observer: ObserverSlot::default(),
            not_initialised: AtomicBool::new(false),
        })
    }

    /// Sets the hook that receives the duration of every operation of this key.
    pub fn set_observer(&self, observer: Observer) {
        self.observer.set(observer);
    }

    /// The token's session pool now (shared by every key of the token).
    pub fn sessions(&self) -> SessionCounts {
        self.token.pool.counts()
    }

    /// The mechanisms of interest that the token offers.
    pub fn mechanisms(&self) -> &[MechanismType] {
        &self.offered
    }

    fn observe<T, E>(&self, op: &str, started: Instant, result: &Result<T, E>) {
        self.observer
            .record(op, &self.label, started, result.is_ok());
    }

    /// The key's handle, looked up again if the module restarted since it was found.
    /// Called with the module entered.
    fn handle(&self, session: &Session) -> Result<ObjectHandle, CkError> {
        let mut handle = self.handle.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.token.module.epoch();
        if handle.1 != epoch {
            let found = lookup::find_private_key(
                session,
                self.key_label.as_deref(),
                self.key_id.as_deref(),
            )
            .map_err(|e| match e {
                FindError::Token(e) => e,
                // Gone from the token: as if the handle were invalid (a fault).
                _ => CkError::Pkcs11(RvError::KeyHandleInvalid, Function::FindObjects),
            })?;
            *handle = (found, epoch);
        }
        Ok(handle.0)
    }

    /// Runs `f` on a pooled session, with one recovery and retry after a fault.
    fn call<T>(
        &self,
        fault: fn(&CkError) -> bool,
        f: impl Fn(&Session, ObjectHandle) -> Result<T, CkError>,
    ) -> Result<T, CallError> {
        let mut last = String::new();
        for attempt in 0..2 {
            if attempt == 1 {
                // Outside the module's shared lock: a recovery may restart the module.
                self.recover()
                    .map_err(|r| CallError::Unavailable(r.to_string()))?;
            }
            let calls = self.token.module.enter();
            let lease = match self.token.pool.get(&self.token) {
                Ok(lease) => lease,
                Err(GetError::Open(e)) => {
                    last = e.to_string();
                    self.last_fault(&e);
                    continue;
                }
                Err(GetError::Token(e)) => {
                    last = e.to_string();
                    continue;
                }
                Err(e) => {
                    return Err(CallError::Unavailable(
                        e.into_error(&self.token).to_string(),
                    ))
                }
            };
            match self.handle(&lease).and_then(|key| f(&lease, key)) {
                Ok(value) => return Ok(value),
                Err(e) if fault(&e) => {
                    lease.discard();
                    drop(calls);
                    last = e.to_string();
                    self.last_fault(&e);
                }
                Err(e) => return Err(CallError::Failed(e)),
            }
        }
        Err(CallError::Unavailable(last))
    }

    /// Remembers whether the last fault said the module is not initialised, which
    /// decides whether recovery restarts the module outright.
    fn last_fault(&self, e: &CkError) {
        let not_initialised = rv(e) == Some(RvError::CryptokiNotInitialized);
        self.not_initialised
            .store(not_initialised, std::sync::atomic::Ordering::Relaxed);
    }

    /// Fresh sessions, the token found again, the key handle looked up again.
    fn recover(&self) -> Result<(), Pkcs11Error> {
        let cause = if self
            .not_initialised
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            CkError::Pkcs11(RvError::CryptokiNotInitialized, Function::Initialize)
        } else {
            CkError::Pkcs11(RvError::SessionHandleInvalid, Function::OpenSession)
        };
        self.token.reset(&cause)?;
        let _calls = self.token.module.enter();
        let lease = self
            .token
            .pool
            .get(&self.token)
            .map_err(|e| e.into_error(&self.token))?;
        let handle =
            lookup::find_private_key(&lease, self.key_label.as_deref(), self.key_id.as_deref())
                .map_err(|e| match e {
                    FindError::Token(e) => Pkcs11Error::device("looking up the key again", e),
                    _ => Pkcs11Error::KeyNotFound {
                        key: self.label.clone(),
                        token: self.token.name(),
                    },
                })?;
        *self.handle.lock().unwrap_or_else(|p| p.into_inner()) =
            (handle, self.token.module.epoch());
        Ok(())
    }

    fn unavailable(&self, reason: String) -> KeyError {
        KeyError::Unavailable(format!("{}: {reason}", self.label))
    }
}

/// Decryption failures that an attacker's ciphertext can cause must not look like a
/// token fault (no retry, no 503): SoftHSM2, for one, answers a bad padding with
/// CKR_GENERAL_ERROR. Those are opaque [`KeyError::Operation`] like any bad padding.
fn decrypt_fault(e: &CkError) -> bool {
    is_fault(e) && !matches!(rv(e), Some(RvError::GeneralError | RvError::FunctionFailed))
}

impl Key for Pkcs11Key {
    fn label(&self) -> &str {
        &self.label
    }

    fn public_key_info(&self) -> &[u8] {
        &self.spki
    }

    fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    fn sign(&self, alg: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let started = Instant::now();
        let result = (|| {
            let plan = mechanisms::sign_plan(self.algorithm, alg, message, &self.offered)?;
            let raw = self
                .call(is_fault, |s, key| s.sign(&plan.mechanism, key, &plan.input))
                .map_err(|e| match e {
                    CallError::Unavailable(reason) => self.unavailable(reason),
                    CallError::Failed(e) => match rv(&e) {
                        Some(RvError::MechanismInvalid | RvError::KeyFunctionNotPermitted) => {
                            KeyError::Unsupported("the token refused the signing mechanism")
                        }
                        _ => self.unavailable(e.to_string()),
                    },
                })?;
            if plan.ecdsa {
                mechanisms::ecdsa_raw_to_der(&raw)
            } else {
                Ok(raw)
            }
        })();
        self.observe(alg.operation(), started, &result);
        result
    }

    fn decrypt(
        &self,
        padding: DecryptPadding,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let started = Instant::now();
        let result = (|| {
            if !self.algorithm.is_rsa() {
                return Err(KeyError::Unsupported(
                    "an EC key cannot decrypt key transport",
                ));
            }
            let mechanism = mechanisms::decrypt_mechanism(padding);
            if !self.offered.contains(&mechanism.mechanism_type()) {
                return Err(KeyError::Unsupported(
                    "the token does not offer this key-transport mechanism",
                ));
            }
            self.call(decrypt_fault, |s, key| {
                s.decrypt(&mechanism, key, ciphertext).map(Zeroizing::new)
            })
            .map_err(|e| match e {
                CallError::Unavailable(reason) => self.unavailable(reason),
                // C_DecryptInit has not seen the ciphertext: a refusal there is about the
                // mechanism or its parameters (SoftHSM2 2.6 has OAEP with SHA-1 only).
                CallError::Failed(CkError::Pkcs11(_, Function::DecryptInit)) => {
                    KeyError::Unsupported("the token refused this key-transport mechanism")
                }
                // One answer for every failure of C_Decrypt itself (no padding oracle).
                CallError::Failed(_) => KeyError::Operation,
            })
        })();
        self.observe(padding.operation(), started, &result);
        result
    }

    /// A cheap round trip: session state and one attribute of the key (which also
    /// proves the handle still names the key).
    fn health(&self) -> Result<(), KeyError> {
        let started = Instant::now();
        let result = self
            .call(is_fault, |s, key| {
                s.get_session_info()?;
                s.get_attributes(key, &[AttributeType::KeyType])?;
                Ok(())
            })
            .map_err(|e| match e {
                CallError::Unavailable(reason) => self.unavailable(reason),
                CallError::Failed(e) => self.unavailable(e.to_string()),
            });
        self.observe("health", started, &result);
        result
    }
}
