//! The request loops: closed (C workers, each sending as soon as its previous request
//! is answered) and open (a fixed schedule, latency from the intended send time).

use std::ops::Range;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use indicatif::ProgressBar;

use super::check;
use super::pool::Request;
use super::stats::{self, Recorder};
use super::target::{Method, Target};

/// What the request tasks share.
pub(super) struct Ctx {
    pub(super) method: Method,
    pub(super) targets: Vec<Arc<Target>>,
    pub(super) requests: Vec<Arc<Vec<Request>>>,
    pub(super) recorders: Vec<Mutex<Recorder>>,
    pub(super) checker: mpsc::Sender<check::Reply>,
    pub(super) progress: ProgressBar,
    pub(super) clock: Instant,
}

impl Ctx {
    pub(super) fn recorder(&self, t: usize) -> std::sync::MutexGuard<'_, Recorder> {
        // A poisoned lock only means a panic elsewhere; the counts are still usable.
        self.recorders[t].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One exchange. `sent` is when it was sent (closed loop) or meant to be sent (open
    /// loop); `measured` is false during warm-up.
    async fn exchange(&self, t: usize, i: usize, sent: Instant, measured: bool) {
        let result = self.targets[t]
            .pki_operation(self.method, &self.requests[t][i].bytes)
            .await;
        let done = Instant::now();
        match result {
            Ok(bytes) => {
                if measured {
                    self.recorder(t).answered(
                        done.saturating_duration_since(sent),
                        self.clock,
                        done,
                    );
                }
                // The checker lives until every exchange is done.
                let _ = self.checker.send(check::Reply {
                    target: t,
                    request: i,
                    bytes,
                });
            }
            Err(kind) => {
                let kind = if measured {
                    kind
                } else {
                    format!("warm-up: {kind}")
                };
                self.recorder(t).error(kind);
            }
        }
        if measured {
            self.progress.inc(1);
        }
    }
}

/// Closed loop: `concurrency` workers, each sending the next request as soon as its
/// previous one is answered.
pub(super) async fn closed_loop(
    ctx: &Arc<Ctx>,
    t: usize,
    range: Range<usize>,
    concurrency: usize,
    measured: bool,
) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(range.start));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (ctx, next, end) = (ctx.clone(), next.clone(), range.end);
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= end {
                    break;
                }
                ctx.exchange(t, i, Instant::now(), measured).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// Open loop: request k of the range leaves at `start + k / rate`, whatever happened
/// to the earlier ones.
pub(super) async fn open_loop(
    ctx: &Arc<Ctx>,
    t: usize,
    range: Range<usize>,
    rate: f64,
    max_in_flight: usize,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let start = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    for (k, i) in range.enumerate() {
        let intended = stats::intended_send(start, rate, k as u64);
        tokio::time::sleep_until(intended.into()).await;
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let ctx = ctx.clone();
        in_flight.spawn(async move {
            ctx.exchange(t, i, intended, true).await;
            drop(slot);
        });
        // Reap what finished, so that a long run holds no finished task handles.
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}
