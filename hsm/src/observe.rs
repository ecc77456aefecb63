//! A hook for the time each private-key operation takes.
//!
//! The HSM is the bottleneck of an enrollment once the RA keys live in a token (issue 3:
//! "the gateway must saturate it, not add to it"), so operators need the latency of every
//! sign and decrypt, per key. This crate does not depend on a metrics library: a key calls
//! an [`Observer`] that the gateway wires to Prometheus (or to a test counter).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Called once per operation with the operation name (`"sign/<mechanism>"`,
/// `"decrypt/<mechanism>"`, `"health"`; see `SignatureAlgorithm::operation`),
/// the key's label, the time it took (retries included) and whether it succeeded.
///
/// Runs on the thread that did the operation: keep it cheap and non-blocking.
pub type Observer = Arc<dyn Fn(&str, &str, Duration, bool) + Send + Sync>;

/// Where a key keeps its observer: set once by the gateway after the key is loaded, read
/// (a shared lock, never held across anything slow) after every operation.
#[derive(Default)]
pub struct ObserverSlot(RwLock<Option<Observer>>);

impl ObserverSlot {
    pub fn set(&self, observer: Observer) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(observer);
    }

    /// Reports one operation of the key `label` that began at `started`.
    pub fn record(&self, op: &str, label: &str, started: Instant, ok: bool) {
        let observer = self.0.read().unwrap_or_else(|p| p.into_inner());
        if let Some(observer) = observer.as_ref() {
            observer(op, label, started.elapsed(), ok);
        }
    }
}
