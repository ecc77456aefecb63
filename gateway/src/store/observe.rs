//! Metrics hooks of the transaction store, in one place: the store code calls these, and
//! they forward to [`crate::metrics`], which owns the names and labels.

use std::time::Duration;

use super::Claim;
use crate::metrics;

/// One store command: `op` is the command ("claim", "finish", …), `ok` false for an
/// error or a timeout. Feeds a latency histogram labelled by backend, op and result, and
/// an error counter.
pub fn command(backend: &'static str, op: &'static str, elapsed: Duration, ok: bool) {
    metrics::store_command(backend, op, elapsed, ok);
}

/// The result of a claim: won (this replica issues), lost (another request holds or
/// finished it: the answer comes from the record), conflict (another key).
pub fn claim(claim: &Claim) {
    metrics::store_claim(match claim {
        Claim::Won => "won",
        Claim::Existing(_) => "lost",
        Claim::Conflict => "conflict",
    });
}

/// A retried PKCSReq or a CertPoll answered with a certificate recorded earlier,
/// possibly by another replica.
pub fn retry_answered(kind: &'static str) {
    metrics::store_retry_answered(kind);
}

/// The Redis store moved to another node: `sentinel` (the sentinels named another
/// master), `cluster` (another master serves the store's slot) or `readonly` (a fixed
/// endpoint answered READONLY and was connected again).
pub fn master_changed(reason: &'static str) {
    metrics::store_master_changed(reason);
}

/// A command answered `-ASK` (`kind` "ask") or `-TRYAGAIN` ("tryagain") while the
/// store's cluster slot migrates ([`super::migration`]).
pub fn redirected(kind: &'static str) {
    metrics::store_redirected(kind);
}

/// A Redis write that fewer replicas acknowledged than `store.replica_acks` asks for.
pub fn unreplicated(op: &'static str) {
    metrics::store_unreplicated(op);
}

/// Finished transactions dropped from a full in-process store before their TTL.
pub fn evicted(n: usize) {
    metrics::store_evicted(n);
}
