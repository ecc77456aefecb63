//! Metrics hooks of the transaction store, in one place.
//!
//! Today each hook is a `tracing::debug!` event (target `scep::store`); a Prometheus
//! layer replaces the bodies later (counters and a latency histogram with the labels
//! named here) without touching the callers.

use std::time::Duration;

use super::Claim;

/// One store command: `op` is the command ("claim", "finish", …), `ok` false for an
/// error or a timeout. Feeds a latency histogram labelled by backend, op and outcome.
pub fn command(backend: &'static str, op: &'static str, elapsed: Duration, ok: bool) {
    tracing::debug!(
        target: "scep::store",
        backend,
        op,
        ok,
        latency_us = elapsed.as_micros() as u64,
        "store command"
    );
}

/// The result of a claim: won (this replica issues), lost (another request holds or
/// finished it: the answer comes from the record), conflict (another key).
pub fn claim(claim: &Claim) {
    let outcome = match claim {
        Claim::Won => "won",
        Claim::Existing(_) => "lost",
        Claim::Conflict => "conflict",
    };
    tracing::debug!(target: "scep::store", outcome, "claim");
}

/// A retried PKCSReq or a CertPoll answered with a certificate recorded earlier,
/// possibly by another replica.
pub fn retry_answered(kind: &'static str) {
    tracing::debug!(target: "scep::store", kind, "answered from the store");
}
