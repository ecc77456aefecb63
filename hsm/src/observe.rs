//! A hook for the time each private-key operation takes.
//!
//! The HSM is the bottleneck of an enrollment once the RA keys live in a token (issue 3:
//! "the gateway must saturate it, not add to it"), so operators need the latency of every
//! sign and decrypt, per key. This crate does not depend on a metrics library: a key calls
//! an [`Observer`] that the gateway wires to Prometheus (or to a test counter).

use std::sync::Arc;
use std::time::Duration;

/// Called once per operation with the operation name (`"sign/<mechanism>"`,
/// `"decrypt/<mechanism>"`, `"health"`; see `SignatureAlgorithm::operation`),
/// the key's label, the time it took (retries included) and whether it succeeded.
///
/// Runs on the thread that did the operation: keep it cheap and non-blocking.
pub type Observer = Arc<dyn Fn(&str, &str, Duration, bool) + Send + Sync>;
