//! One CA as the router uses it: its backend (embedded or upstream), its circuit
//! breaker, its bound on requests in flight, its timeout, its recent latencies, and the
//! active probe loop of an upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::breaker::{Breaker, BreakerSettings, LatencyWindow, Permit, Transition};
use super::profile::CaEntryConfig;
use super::upstream::UpstreamCa;
use super::{AnswerBy, BoxFuture, Ca, IssueOutcome, IssueRequest, Route};
use crate::csr::CertificationRequest;
use crate::error::{Error, Result};
use crate::metrics;

/// A CA the router can send to.
#[derive(Debug)]
pub enum Backend {
    Embedded(Arc<dyn Ca>),
    Upstream(Arc<UpstreamCa>),
}

/// A request as the router keeps it: owned, so that hedged attempts can outlive the
/// device's request.
#[derive(Debug)]
pub(super) struct Owned {
    pub(super) csr: CertificationRequest,
    pub(super) renewing: Option<Vec<u8>>,
    /// When every attempt must have been answered (the transaction's claim).
    pub(super) answer_by: AnswerBy,
}

/// One CA of the router.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub(super) backend: Backend,
    pub(super) breaker: Breaker,
    permits: Arc<Semaphore>,
    timeout: Duration,
    probe_interval: Duration,
    latency: LatencyWindow,
    /// Background CertPoll of a PENDING answer: interval (zero: off) and attempts.
    pub(super) poll_interval: Duration,
    pub(super) poll_attempts: u32,
}

/// Re-opens the trial slot if a trial request is dropped before it tells anything.
struct TrialGuard<'a>(Option<&'a Breaker>);

impl Drop for TrialGuard<'_> {
    fn drop(&mut self) {
        if let Some(breaker) = self.0 {
            breaker.trial_abandoned();
        }
    }
}

/// Counts a request in `scep_ca_requests_in_flight` while it lives (also when a hedged
/// or timed-out call is dropped half-way).
struct InFlight<'a>(&'a str);

impl<'a> InFlight<'a> {
    fn start(ca: &'a str) -> Self {
        metrics::ca_in_flight(ca, 1.0);
        InFlight(ca)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        metrics::ca_in_flight(self.0, -1.0);
    }
}

impl Member {
    pub fn new(config: &CaEntryConfig, backend: Backend) -> Self {
        // The gauges exist from the start (closed, nothing in flight), so that a
        // dashboard shows every configured CA before its first request.
        metrics::ca_breaker(&config.name, false);
        metrics::ca_in_flight(&config.name, 0.0);
        Member {
            name: config.name.clone(),
            backend,
            breaker: Breaker::new(BreakerSettings {
                failure_threshold: config.failure_threshold,
                initial_backoff: Duration::from_millis(config.backoff_initial_ms),
                max_backoff: Duration::from_millis(
                    config.backoff_max_ms.max(config.backoff_initial_ms),
                ),
            }),
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            timeout: Duration::from_millis(config.timeout_ms),
            probe_interval: Duration::from_secs(config.probe_interval_secs),
            latency: LatencyWindow::default(),
            poll_interval: Duration::from_secs(config.poll_interval_secs),
            poll_attempts: config.poll_attempts,
        }
    }

    /// Sends `request` to this CA, through its breaker, bound and timeout, and feeds the
    /// breaker with the result.
    pub(super) async fn attempt(self: Arc<Self>, request: Arc<Owned>) -> Result<IssueOutcome> {
        let answer_by = request.answer_by;
        self.guarded(answer_by, |backend| {
            Box::pin(async move {
                match backend {
                    Backend::Embedded(ca) => {
                        ca.submit(
                            IssueRequest {
                                csr: &request.csr,
                                renewing: request.renewing.as_deref(),
                            },
                            Route::default(),
                        )
                        .await
                    }
                    Backend::Upstream(ca) => return ca.enroll(&request.csr).await,
                }
                .into()
            })
        })
        .await
    }

    /// Asks this CA about a deferred request. That issues nothing new: no `answer_by`.
    pub(super) async fn poll(self: Arc<Self>, ticket: Vec<u8>) -> Result<IssueOutcome> {
        self.guarded(None, |backend| {
            Box::pin(async move {
                match backend {
                    Backend::Embedded(ca) => ca.poll(&ticket, None).await,
                    Backend::Upstream(ca) => ca.poll_ticket(&ticket).await,
                }
                .into()
            })
        })
        .await
    }

    /// The call through this CA's breaker, bound and timeout. Not made when this CA's
    /// timeout would end after `answer_by` (see [`AnswerBy`]): a call is never cut
    /// short, since a CA that got the request may issue all the same; it is only
    /// started when its answer, or its timeout, comes while the transaction's claim
    /// still holds.
    async fn guarded<'a, F>(&'a self, answer_by: AnswerBy, call: F) -> Result<IssueOutcome>
    where
        F: FnOnce(&'a Backend) -> BoxFuture<'a, Attempted>,
    {
        if answer_by.is_some_and(|by| Instant::now() + self.timeout > by) {
            return Err(Error::Unavailable(format!(
                "CA {}: not asked: its {} ms timeout would outlast the transaction's claim",
                self.name,
                self.timeout.as_millis()
            )));
        }
        let permit = self.breaker.allow();
        if permit == Permit::Refused {
            return Err(Error::Unavailable(format!(
                "CA {}: circuit breaker open",
                self.name
            )));
        }
        let mut trial = TrialGuard((permit == Permit::Trial).then_some(&self.breaker));
        let Ok(_slot) = self.permits.clone().try_acquire_owned() else {
            return Err(Error::Unavailable(format!(
                "CA {}: max_in_flight requests already in flight",
                self.name
            )));
        };
        let started = Instant::now();
        let in_flight = InFlight::start(&self.name);
        let Attempted {
            result,
            answer_lost,
        } = tokio::time::timeout(self.timeout, call(&self.backend))
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(format!(
                    "CA {}: no answer within {} ms",
                    self.name,
                    self.timeout.as_millis()
                )))
                .into()
            });
        drop(in_flight);
        trial.0 = None;
        let outcome = match &result {
            _ if answer_lost => "unavailable",
            Ok(IssueOutcome::Issued { .. }) => "success",
            Ok(IssueOutcome::Pending { .. }) => "pending",
            Err(Error::Unavailable(_)) => "unavailable",
            Err(_) => "refused",
        };
        metrics::ca_request(&self.name, outcome, started.elapsed());
        match &result {
            Err(e @ Error::Unavailable(_)) => self.outage(e),
            // Kept PENDING on this CA, but the CA did not answer: its breaker counts it,
            // so that a CA that takes requests and never answers stops getting new ones.
            Ok(_) if answer_lost => self.outage(&Error::Unavailable(format!(
                "CA {}: the answer to a request was lost",
                self.name
            ))),
            _ => {
                self.latency.record(started.elapsed());
                self.answered("a request");
            }
        }
        result
    }

    fn outage(&self, error: &Error) {
        tracing::info!(ca = %self.name, error = %error, "CA unavailable");
        if let Some(Transition::Opened { backoff }) = self.breaker.failure() {
            metrics::ca_breaker(&self.name, true);
            tracing::warn!(ca = %self.name, backoff_ms = backoff.as_millis() as u64, error = %error, "circuit breaker opened: CA unavailable, requests go to the next CA");
        }
    }

    fn answered(&self, by: &str) {
        if let Some(Transition::Closed) = self.breaker.success() {
            metrics::ca_breaker(&self.name, false);
            tracing::info!(ca = %self.name, by, "circuit breaker closed: CA answers again");
        }
    }

    /// Up for readiness: its breaker is not open and, for an upstream, its chain has
    /// been learnt (GetCACert must be able to serve it).
    pub(super) fn is_up(&self) -> bool {
        self.breaker.is_healthy()
            && match &self.backend {
                Backend::Embedded(_) => true,
                Backend::Upstream(ca) => !ca.current_chain().is_empty(),
            }
    }

    /// How long a hedged request waits for this CA before asking the next one.
    pub(super) fn hedge_delay(&self) -> Duration {
        self.latency.p95().unwrap_or(self.timeout / 2)
    }

    /// The chain of this CA as known now.
    pub(super) fn chain(&self) -> Vec<Arc<[u8]>> {
        match &self.backend {
            Backend::Embedded(ca) => ca.chain().to_vec(),
            Backend::Upstream(ca) => ca.current_chain(),
        }
    }

    /// The active probe loop of an upstream CA: GetCACaps (and GetCACert when due) every
    /// `probe_interval`. An answer ends an open breaker's back-off (the next request is
    /// the trial that may close it); an outage counts like a failed request. A CA
    /// unreachable at start opens at once.
    pub(super) async fn probe_forever(self: Arc<Self>) {
        let Backend::Upstream(ca) = &self.backend else {
            return;
        };
        let mut first = true;
        loop {
            let result = tokio::time::timeout(self.timeout, ca.probe())
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Unavailable(format!(
                        "CA {}: probe not answered within {} ms",
                        self.name,
                        self.timeout.as_millis()
                    )))
                });
            match result {
                Ok(()) => {
                    if let Some(Transition::Probed) = self.breaker.probe_answered() {
                        metrics::ca_breaker(&self.name, false);
                        tracing::info!(ca = %self.name, "circuit breaker half-open: the probe was answered, the next request tries the CA");
                    }
                }
                Err(e) if first => {
                    tracing::warn!(ca = %self.name, error = %e, "CA unreachable at start");
                    if let Some(Transition::Opened { backoff }) = self.breaker.force_open() {
                        metrics::ca_breaker(&self.name, true);
                        tracing::warn!(ca = %self.name, backoff_ms = backoff.as_millis() as u64, "circuit breaker opened: CA unavailable, requests go to the next CA");
                    }
                }
                Err(e) => self.outage(&e),
            }
            first = false;
            tokio::time::sleep(self.probe_interval).await;
        }
    }
}

/// What one call to a CA gave: its result and, for an upstream's PKCSReq kept PENDING
/// because its answer was lost (`lost_answer = "poll"`), that the CA did not answer.
pub(super) struct Attempted {
    pub(super) result: Result<IssueOutcome>,
    pub(super) answer_lost: bool,
}

impl From<Result<IssueOutcome>> for Attempted {
    fn from(result: Result<IssueOutcome>) -> Self {
        Attempted {
            result,
            answer_lost: false,
        }
    }
}
