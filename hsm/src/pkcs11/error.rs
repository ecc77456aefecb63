//! Errors of the PKCS#11 backend, and the one place that decides which PKCS#11 return
//! values mean "this session or token is gone" (retry on a fresh session) rather than
//! "this operation failed" (answer the caller).

use std::path::PathBuf;

use cryptoki::error::{Error as CkError, RvError};

/// Why a PKCS#11 key could not be opened or used. The messages name the module, token,
/// key, mechanism or attribute at fault, and never a PIN.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    #[error("invalid PKCS#11 key configuration: {0}")]
    Config(String),
    #[error("PKCS#11 PIN: {0}")]
    Pin(String),
    #[error("the PKCS#11 module {0} does not exist")]
    ModuleNotFound(PathBuf),
    #[error("the PKCS#11 module {path} could not be loaded: {reason}")]
    ModuleLoad { path: PathBuf, reason: String },
    #[error("no PKCS#11 token {token} (tokens present: {present})")]
    TokenNotFound { token: String, present: String },
    #[error("the user PIN of token {token} is incorrect (CKR_PIN_INCORRECT)")]
    PinIncorrect { token: String },
    #[error("the user PIN of token {token} is locked (CKR_PIN_LOCKED)")]
    PinLocked { token: String },
    #[error("no private key {key} on token {token}")]
    KeyNotFound { key: String, token: String },
    #[error("{count} private keys match {key} on token {token}; give key_id too")]
    KeyAmbiguous {
        key: String,
        token: String,
        count: usize,
    },
    #[error("the token {token} does not offer {mechanism}, which {purpose} needs")]
    MissingMechanism {
        token: String,
        mechanism: &'static str,
        purpose: &'static str,
    },
    #[error("the key {key} does not allow {attribute}, which {purpose} needs")]
    NotPermitted {
        key: String,
        attribute: &'static str,
        purpose: &'static str,
    },
    #[error("the key {key} is not usable: {reason}")]
    UnsupportedKey { key: String, reason: String },
    #[error("PKCS#11 error while {during}: {error}")]
    Device { during: &'static str, error: String },
}

impl Pkcs11Error {
    pub(crate) fn device(during: &'static str, e: CkError) -> Self {
        Pkcs11Error::Device {
            during,
            error: e.to_string(),
        }
    }
}

/// The return value inside a cryptoki error, if it came from the module.
pub(crate) fn rv(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// True for the return values after which the session, the login or the object handles
/// may be gone while the key itself is fine: the caller drops its sessions, opens fresh
/// ones (login, find the key again) and retries once (PKCS#11 3.0 §5.1.3: a session
/// becomes invalid when its token is removed; §5.6: handles belong to the session's
/// application and may change when the token is re-inserted).
pub(crate) fn is_fault(e: &CkError) -> bool {
    matches!(
        rv(e),
        Some(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::SessionCount
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::CryptokiNotInitialized
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::SlotIdInvalid
                | RvError::HostMemory
                | RvError::FunctionFailed
                | RvError::GeneralError
        )
    )
}
