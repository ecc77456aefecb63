//! The loaded PKCS#11 modules and the tokens in them, shared by every key of the process.
//!
//! PKCS#11 3.0 §5.4 (C_Initialize) is per process: a module must be initialised once
//! and its state (logins, sessions) is shared by everything in the process that uses it.
//! So the process keeps one [`Module`] per library path and one [`Token`] (PIN, session
//! pool) per token in it; several keys on one token share both.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::slot::Slot;

use super::config::{Pin, Pkcs11KeyConfig};
use super::error::{rv, Pkcs11Error};
use super::pool::SessionPool;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A loaded and initialised PKCS#11 library.
pub struct Module {
    path: PathBuf,
    context: Pkcs11,
    tokens: Mutex<HashMap<u64, Arc<Token>>>,
    /// Held shared by every operation, exclusively by [`Module::restart`]: C_Finalize
    /// while another thread is inside the module is undefined (PKCS#11 3.0 §5.4).
    calls: RwLock<()>,
    /// Bumped by each restart: slot ids, sessions and object handles of an older epoch
    /// mean nothing (a handle could even name another object now).
    epoch: AtomicU64,
    last_restart: Mutex<Option<Instant>>,
}

/// The fewest seconds between two restarts of a module, so that a token that stays
/// away does not turn every request into a C_Finalize/C_Initialize.
const RESTART_INTERVAL: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").field("path", &self.path).finish()
    }
}

static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();

impl Module {
    /// The process's instance of the module at `path`, loaded and initialised on first use.
    pub fn get(path: &Path) -> Result<Arc<Module>, Pkcs11Error> {
        if !path.exists() {
            return Err(Pkcs11Error::ModuleNotFound(path.to_owned()));
        }
        let key = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        let mut modules = lock(MODULES.get_or_init(Default::default));
        if let Some(m) = modules.get(&key) {
            return Ok(m.clone());
        }
        let context = Pkcs11::new(&key).map_err(|e| Pkcs11Error::ModuleLoad {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let module = Arc::new(Module {
            path: path.to_owned(),
            context,
            tokens: Mutex::new(HashMap::new()),
            calls: RwLock::new(()),
            epoch: AtomicU64::new(0),
            last_restart: Mutex::new(None),
        });
        module.initialize().map_err(|e| Pkcs11Error::ModuleLoad {
            path: path.to_owned(),
            reason: format!("C_Initialize failed: {e}"),
        })?;
        modules.insert(key, module.clone());
        Ok(module)
    }

    /// C_Initialize with OS locking (§5.4: the module may be called from several
    /// threads). "Already initialised" is success: another part of the process (or a
    /// recovery racing with us) did it.
    pub(crate) fn initialize(&self) -> Result<(), CkError> {
        match self
            .context
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Err(e) if rv(&e) == Some(RvError::CryptokiAlreadyInitialized) => Ok(()),
            other => other,
        }
    }

    /// Shared access for one operation (see `calls`). Whoever opens a session of its own
    /// on [`Module::context`] holds this while using it: a restart by another thread
    /// would close the session, and void its object handles, mid-use.
    pub fn enter(&self) -> RwLockReadGuard<'_, ()> {
        self.calls.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// C_Finalize and C_Initialize again: what makes a module rescan its tokens (SoftHSM2
    /// forgets a token whose files went away until then; a network HSM's module may need
    /// it after the appliance restarted). Every session of every token of the module is
    /// closed first; no operation runs meanwhile. At most once per [`RESTART_INTERVAL`].
    pub(crate) fn restart(&self) -> Result<(), Pkcs11Error> {
        let _exclusive = self.calls.write().unwrap_or_else(|p| p.into_inner());
        {
            let mut last = lock(&self.last_restart);
            if last.is_some_and(|t| t.elapsed() < RESTART_INTERVAL) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        for token in lock(&self.tokens).values() {
            token.pool.invalidate();
        }
        // Sessions are all closed and none is lent (leases live inside `enter`).
        let _ = self.context.clone().finalize();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.initialize()
            .map_err(|e| Pkcs11Error::device("re-initialising the module", e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn context(&self) -> &Pkcs11 {
        &self.context
    }

    /// Finds the slot holding the token the config names: by label, else serial, else
    /// slot id (PKCS#11 3.0 §3.2: labels and serials are blank-padded; cryptoki trims).
    pub fn find_slot(&self, selector: &TokenSelector) -> Result<Slot, Pkcs11Error> {
        let slots = self
            .context
            .get_slots_with_token()
            .map_err(|e| Pkcs11Error::device("listing the slots", e))?;
        let mut present = Vec::new();
        for slot in slots {
            let Ok(info) = self.context.get_token_info(slot) else {
                continue;
            };
            let label = info.label().trim().to_owned();
            let serial = info.serial_number().trim().to_owned();
            let hit = match selector {
                TokenSelector::Label(l) => &label == l,
                TokenSelector::Serial(s) => &serial == s,
                TokenSelector::Slot(id) => slot.id() == *id,
            };
            if hit {
                return Ok(slot);
            }
            present.push(format!("{label:?} (serial {serial}, slot {})", slot.id()));
        }
        Err(Pkcs11Error::TokenNotFound {
            token: selector.to_string(),
            present: if present.is_empty() {
                "none".into()
            } else {
                present.join(", ")
            },
        })
    }

    /// The shared token state for the token `config` names, logging in on first use.
    ///
    /// A token already open keeps its login (PKCS#11 has one login state per token per
    /// process) and takes `pin` for its next login, after a module restart: the key was
    /// opened again by a configuration reload after the operator rotated the PIN, and
    /// the PIN it was first opened with no longer works. (A wrong new PIN is therefore
    /// only found at that next login; two keys of one configuration on one token must
    /// name the same PIN.)
    pub(crate) fn token(
        self: &Arc<Self>,
        config: &Pkcs11KeyConfig,
        pin: Pin,
    ) -> Result<Arc<Token>, Pkcs11Error> {
        let selector = TokenSelector::from_config(config)?;
        let slot = self.find_slot(&selector)?;
        let mut tokens = lock(&self.tokens);
        if let Some(t) = tokens.get(&slot.id()) {
            *lock(&t.pin) = pin;
            return Ok(t.clone());
        }
        let sessions = config.sessions.unwrap_or_else(default_sessions);
        let token = Arc::new(Token {
            module: self.clone(),
            selector,
            slot: Mutex::new((slot, self.epoch())),
            pin: Mutex::new(pin),
            pool: SessionPool::new(sessions),
        });
        // Open (and log in) one session now, so that a wrong PIN fails at start.
        token.pool.warm(&token)?;
        tokens.insert(slot.id(), token.clone());
        Ok(token)
    }
}

/// Two sessions per core: enough to keep a token busy while other requests wait on it.
fn default_sessions() -> usize {
    2 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// How the configuration names a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    Label(String),
    Serial(String),
    Slot(u64),
}

impl TokenSelector {
    pub fn from_config(config: &Pkcs11KeyConfig) -> Result<Self, Pkcs11Error> {
        match (&config.token_label, &config.token_serial, config.slot) {
            (Some(l), _, _) => Ok(TokenSelector::Label(l.clone())),
            (None, Some(s), _) => Ok(TokenSelector::Serial(s.clone())),
            (None, None, Some(id)) => Ok(TokenSelector::Slot(id)),
            _ => Err(Pkcs11Error::Config(
                "name the token with token_label, token_serial or slot".into(),
            )),
        }
    }
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "{l:?}"),
            TokenSelector::Serial(s) => write!(f, "with serial {s}"),
            TokenSelector::Slot(id) => write!(f, "in slot {id}"),
        }
    }
}

/// One token: where it is now, its PIN, and its pool of logged-in sessions.
pub struct Token {
    pub(crate) module: Arc<Module>,
    pub(crate) selector: TokenSelector,
    /// Re-resolved after a fault: a re-inserted token may come back in another slot. With
    /// the module epoch it was found in.
    slot: Mutex<(Slot, u64)>,
    /// For the next login; the latest PIN a key on this token was opened with.
    pin: Mutex<Pin>,
    pub(crate) pool: SessionPool,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("module", &self.module.path)
            .field("token", &self.selector)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// The PIN to log in with (see [`Module::token`]).
    pub(crate) fn login_pin(&self) -> cryptoki::types::AuthPin {
        lock(&self.pin).to_auth()
    }

    /// The token's slot; found again if the module restarted since.
    pub fn slot(&self) -> Result<Slot, Pkcs11Error> {
        let mut slot = lock(&self.slot);
        let epoch = self.module.epoch();
        if slot.1 != epoch {
            *slot = (self.module.find_slot(&self.selector)?, epoch);
        }
        Ok(slot.0)
    }

    pub fn name(&self) -> String {
        self.selector.to_string()
    }

    /// After a fault: drop every pooled session and find the token again. When the module
    /// says it is not initialised, or no longer lists the token, restart the module.
    pub(crate) fn reset(&self, cause: &CkError) -> Result<(), Pkcs11Error> {
        self.pool.invalidate();
        let found = match rv(cause) {
            Some(RvError::CryptokiNotInitialized) => None,
            _ => self.module.find_slot(&self.selector).ok(),
        };
        let slot = match found {
            Some(slot) => slot,
            None => {
                self.module.restart()?;
                self.module.find_slot(&self.selector)?
            }
        };
        *lock(&self.slot) = (slot, self.module.epoch());
        Ok(())
    }
}
