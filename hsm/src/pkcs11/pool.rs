//! A pool of logged-in read-only sessions on one token.
//!
//! A cryptoki `Session` is `Send` but not `Sync` (PKCS#11 3.0 §5.1.2: one session runs one
//! operation at a time), so each concurrent operation needs a session of its own. The pool
//! hands them out under a short mutex and holds no lock during the PKCS#11 call itself; a
//! caller finding every session busy waits on a condition variable, up to [`WAIT`].
//!
//! Sessions are opened lazily up to the pool's size. After a fault the pool is
//! *invalidated*: idle sessions are closed and sessions still lent out are closed when
//! they come back, so no caller reuses a session of the old token state.

use std::ops::Deref;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};

use super::error::{rv, Pkcs11Error};
use super::module::Token;

/// How long a caller waits for a free session before the operation is reported
/// unavailable (the HTTP layer answers 503 and the client retries).
const WAIT: Duration = Duration::from_secs(5);

pub(crate) struct SessionPool {
    size: usize,
    state: Mutex<State>,
    returned: Condvar,
}

struct State {
    idle: Vec<Session>,
    /// Sessions open, idle or lent out.
    open: usize,
    /// Bumped by [`SessionPool::invalidate`]; a lease of an older generation is closed on
    /// return instead of going back to the pool.
    generation: u64,
}

/// A snapshot of a pool's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCounts {
    /// Lent out to an operation now.
    pub in_use: usize,
    /// Open and free.
    pub idle: usize,
    /// The pool's size: `max - in_use` more operations can start without waiting.
    pub max: usize,
}

/// Why no session could be had.
pub(crate) enum GetError {
    /// Every session stayed busy for [`WAIT`].
    Busy,
    /// C_OpenSession failed.
    Open(CkError),
    /// The token is not where it was (not listed, module not initialised).
    Token(Pkcs11Error),
    /// C_Login failed for a reason that a retry will not fix (wrong or locked PIN).
    Login(Pkcs11Error),
}

impl GetError {
    pub(crate) fn into_error(self, token: &Token) -> Pkcs11Error {
        match self {
            GetError::Busy => Pkcs11Error::Device {
                during: "waiting for a free session",
                error: format!("all sessions of token {} stayed busy", token.name()),
            },
            GetError::Open(e) => Pkcs11Error::device("opening a session", e),
            GetError::Token(e) => e,
            GetError::Login(e) => e,
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SessionPool {
    pub(crate) fn new(size: usize) -> Self {
        SessionPool {
            size: size.max(1),
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
                generation: 0,
            }),
            returned: Condvar::new(),
        }
    }

    /// How many sessions are lent out, idle, and at most open: for a gauge, so that an
    /// operator sees a pool that is always full before requests start to wait.
    pub(crate) fn counts(&self) -> SessionCounts {
        let state = lock(&self.state);
        SessionCounts {
            in_use: state.open.saturating_sub(state.idle.len()),
            idle: state.idle.len(),
            max: self.size,
        }
    }

    /// Opens one session (and so logs in) now, so that configuration errors show at
    /// start rather than at the first request.
    pub(crate) fn warm(&self, token: &Token) -> Result<(), Pkcs11Error> {
        self.get(token).map(drop).map_err(|e| e.into_error(token))
    }

    /// A session for one operation: an idle one, a new one if the pool is not full, or
    /// the next one returned.
    pub(crate) fn get<'a>(&'a self, token: &Token) -> Result<Lease<'a>, GetError> {
        let deadline = Instant::now() + WAIT;
        let mut state = lock(&self.state);
        loop {
            if let Some(session) = state.idle.pop() {
                return Ok(Lease {
                    pool: self,
                    session: Some(session),
                    generation: state.generation,
                });
            }
            if state.open < self.size {
                state.open += 1;
                let generation = state.generation;
                drop(state);
                return match open_logged_in(token) {
                    Ok(session) => Ok(Lease {
                        pool: self,
                        session: Some(session),
                        generation,
                    }),
                    Err(e) => {
                        lock(&self.state).open -= 1;
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(GetError::Busy);
            }
            state = self
                .returned
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Forgets every session: idle ones are closed now, lent ones when they return.
    pub(crate) fn invalidate(&self) {
        let idle = {
            let mut state = lock(&self.state);
            state.generation += 1;
            let idle = std::mem::take(&mut state.idle);
            state.open -= idle.len();
            idle
        };
        // C_CloseSession outside the lock: on a failing token it may be slow.
        drop(idle);
        self.returned.notify_all();
    }

    fn give_back(&self, session: Session, generation: u64, keep: bool) {
        let mut state = lock(&self.state);
        if keep && generation == state.generation {
            state.idle.push(session);
            drop(state);
        } else {
            state.open -= 1;
            drop(state);
            drop(session);
        }
        self.returned.notify_one();
    }
}

/// Opens a read-only session on the token and logs the user in. PKCS#11 3.0 §5.6: the
/// login state belongs to the application, so the first C_Login logs in every session
/// of the token and later ones answer CKR_USER_ALREADY_LOGGED_IN, which is success.
fn open_logged_in(token: &Token) -> Result<Session, GetError> {
    let session = token
        .module
        .context()
        .open_ro_session(token.slot().map_err(GetError::Token)?)
        .map_err(GetError::Open)?;
    match session.login(UserType::User, Some(&token.login_pin())) {
        Ok(()) => Ok(session),
        Err(e) => match rv(&e) {
            Some(RvError::UserAlreadyLoggedIn) => Ok(session),
            Some(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange) => {
                Err(GetError::Login(Pkcs11Error::PinIncorrect {
                    token: token.name(),
                }))
            }
            Some(RvError::PinLocked) => Err(GetError::Login(Pkcs11Error::PinLocked {
                token: token.name(),
            })),
            _ => Err(GetError::Open(e)),
        },
    }
}

/// A session lent to one operation; back to the pool on drop.
pub(crate) struct Lease<'a> {
    pool: &'a SessionPool,
    session: Option<Session>,
    generation: u64,
}

impl Lease<'_> {
    /// Closes this session instead of returning it (after a fault on it).
    pub(crate) fn discard(mut self) {
        if let Some(session) = self.session.take() {
            self.pool.give_back(session, self.generation, false);
        }
    }
}

impl Deref for Lease<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session
            .as_ref()
            .unwrap_or_else(|| unreachable!("a lease holds its session until dropped"))
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.pool.give_back(session, self.generation, true);
        }
    }
}
