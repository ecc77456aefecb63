//! The health of one CA as the router sees it: a circuit breaker fed by real requests
//! (passive: timeouts, connection errors, HTTP 5xx, garbage) and by probes (active:
//! GetCACaps every few seconds), and a window of recent latencies for hedging.
//!
//! ```text
//!            threshold outages, no answered request in between
//!   Closed ───────────────────────────────▶ Open (back-off b)
//!     ▲                                      │ b elapsed, or a probe answered:
//!     │ the trial request succeeds           │ one request may try
//!     │                                      ▼
//!     └───────────────────────────────── HalfOpen ── outage ─▶ Open (back-off 2b, ≤ max)
//! ```
//! A policy answer (CertRep FAILURE) is the CA working: it counts as a success. Only an
//! outage counts against the CA (the issue's rule: a refusal is final and is no reason to
//! fail over). A probe's answer ends an open breaker's back-off, but only a request closes
//! it: a CA that answers GetCACaps and hangs on every PKIOperation (NDES's IIS up, the
//! CA behind it stuck) then gets one trial device per probe interval, not every device
//! that arrives within its timeout. For the same reason a probe's answer does not clear
//! the outages a closed breaker has counted. No lock is held across an await: every
//! method is synchronous.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tuning of one breaker.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Consecutive outages that open the breaker.
    pub failure_threshold: u32,
    /// First back-off; doubled after each failed trial, up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        backoff: Duration,
    },
    /// Open, and a probe has been answered since it opened: the next request is the
    /// trial. A state of its own (not an `Open` whose `until` has passed) so that the
    /// answer is reported once, also when the back-off ran out before it came (a CA
    /// back after a long outage, or a slow probe).
    Probed {
        backoff: Duration,
    },
    /// One trial request is out; everyone else is refused until it ends.
    HalfOpen {
        backoff: Duration,
    },
}

/// What [`Breaker::allow`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// The CA is healthy: go.
    Go,
    /// The back-off has elapsed: this request is the trial.
    Trial,
    /// Open: do not send.
    Refused,
}

/// A transition worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened {
        backoff: Duration,
    },
    /// A probe answered while open: the next request is the trial. The CA is no longer
    /// known to be down (readiness, `scep_ca_breaker_open`), not yet known to be up.
    Probed,
    Closed,
}

/// One CA's circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Breaker {
            settings,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves a valid state behind: keep using it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// May a request go to this CA now?
    pub fn allow(&self) -> Permit {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Permit::Go,
            State::Open { until, backoff } if Instant::now() >= until => {
                *state = State::HalfOpen { backoff };
                Permit::Trial
            }
            State::Probed { backoff } => {
                *state = State::HalfOpen { backoff };
                Permit::Trial
            }
            State::Open { .. } | State::HalfOpen { .. } => Permit::Refused,
        }
    }

    /// Whether the CA counts as up (readiness): closed, or open with its back-off over
    /// or a probe answered (the next request will try it).
    pub fn is_healthy(&self) -> bool {
        match *self.lock() {
            State::Closed { .. } | State::Probed { .. } => true,
            State::Open { until, .. } => Instant::now() >= until,
            State::HalfOpen { .. } => false,
        }
    }

    /// The CA answered (a certificate, a refusal, PENDING, or a probe reply).
    pub fn success(&self) -> Option<Transition> {
        let mut state = self.lock();
        let was_closed = matches!(*state, State::Closed { .. });
        *state = State::Closed { failures: 0 };
        (!was_closed).then_some(Transition::Closed)
    }

    /// A probe was answered: an open breaker's back-off ends, so that the next request
    /// is the trial (see the module doc). `Probed` once per opening, whether or not the
    /// back-off had run out: not again while the trial is out or still waits for a
    /// request.
    pub fn probe_answered(&self) -> Option<Transition> {
        let mut state = self.lock();
        match *state {
            State::Open { backoff, .. } => {
                *state = State::Probed { backoff };
                Some(Transition::Probed)
            }
            State::Closed { .. } | State::Probed { .. } | State::HalfOpen { .. } => None,
        }
    }

    /// The CA did not answer usefully (an outage).
    pub fn failure(&self) -> Option<Transition> {
        let s = self.settings;
        let mut state = self.lock();
        let (next, transition) = match *state {
            State::Closed { failures } if failures + 1 < s.failure_threshold => (
                State::Closed {
                    failures: failures + 1,
                },
                None,
            ),
            State::Closed { .. } => {
                let backoff = s.initial_backoff;
                (
                    State::Open {
                        until: Instant::now() + backoff,
                        backoff,
                    },
                    Some(Transition::Opened { backoff }),
                )
            }
            State::HalfOpen { backoff }
            | State::Probed { backoff }
            | State::Open { backoff, .. } => {
                let backoff = (backoff * 2).min(s.max_backoff);
                // Back from a state that counted as healthy (a trial out, a probe
                // answered, or the back-off over): open again, and say so.
                let reopened = match *state {
                    State::Open { until, .. } => Instant::now() >= until,
                    _ => true,
                };
                (
                    State::Open {
                        until: Instant::now() + backoff,
                        backoff,
                    },
                    reopened.then_some(Transition::Opened { backoff }),
                )
            }
        };
        *state = next;
        transition
    }

    /// A trial request that ended without telling anything (it was cancelled, or the
    /// CA was busy): let the next request try again.
    pub fn trial_abandoned(&self) {
        let mut state = self.lock();
        if let State::HalfOpen { backoff } = *state {
            *state = State::Open {
                until: Instant::now(),
                backoff,
            };
        }
    }

    /// Opens at once (the CA could not be reached at start).
    pub fn force_open(&self) -> Option<Transition> {
        let backoff = self.settings.initial_backoff;
        let mut state = self.lock();
        let was_open = matches!(*state, State::Open { .. });
        *state = State::Open {
            until: Instant::now() + backoff,
            backoff,
        };
        (!was_open).then_some(Transition::Opened { backoff })
    }

    /// "closed", "open", "half-open", for messages.
    pub fn describe(&self) -> &'static str {
        match *self.lock() {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::Probed { .. } | State::HalfOpen { .. } => "half-open",
        }
    }
}

/// The latencies of the last [`LatencyWindow::SIZE`] answers of one CA, for the hedging
/// delay (its p95).
#[derive(Debug, Default)]
pub struct LatencyWindow {
    samples: Mutex<VecDeque<Duration>>,
}

impl LatencyWindow {
    const SIZE: usize = 128;
    /// Fewer samples than this give no p95.
    const MIN_SAMPLES: usize = 5;

    pub fn record(&self, latency: Duration) {
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if samples.len() == Self::SIZE {
            samples.pop_front();
        }
        samples.push_back(latency);
    }

    /// The 95th percentile of the recent latencies, or `None` with too few samples.
    pub fn p95(&self) -> Option<Duration> {
        let mut sorted: Vec<Duration> = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        if sorted.len() < Self::MIN_SAMPLES {
            return None;
        }
        sorted.sort_unstable();
        let rank = (sorted.len() * 95).div_ceil(100).max(1) - 1;
        Some(sorted[rank])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, backoff_ms: u64) -> Breaker {
        Breaker::new(BreakerSettings {
            failure_threshold: threshold,
            initial_backoff: Duration::from_millis(backoff_ms),
            max_backoff: Duration::from_millis(backoff_ms * 4),
        })
    }

    #[test]
    fn opens_after_consecutive_outages_and_a_success_resets_the_count() {
        let b = breaker(3, 10_000);
        assert_eq!(b.failure(), None);
        assert_eq!(b.failure(), None);
        assert_eq!(b.success(), None);
        assert_eq!(b.failure(), None);
        assert_eq!(b.failure(), None);
        assert!(matches!(b.failure(), Some(Transition::Opened { .. })));
        assert_eq!(b.allow(), Permit::Refused);
        assert!(!b.is_healthy());
        assert_eq!(b.describe(), "open");
    }

    #[test]
    fn half_open_lets_one_trial_through_and_backs_off_exponentially() {
        let b = breaker(1, 20);
        assert!(matches!(
            b.failure(),
            Some(Transition::Opened { backoff }) if backoff == Duration::from_millis(20)
        ));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.allow(), Permit::Trial);
        assert_eq!(b.allow(), Permit::Refused, "only one trial at a time");
        assert!(matches!(
            b.failure(),
            Some(Transition::Opened { backoff }) if backoff == Duration::from_millis(40)
        ));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(b.allow(), Permit::Trial);
        assert_eq!(b.success(), Some(Transition::Closed));
        assert_eq!(b.allow(), Permit::Go);
    }

    #[test]
    fn a_probe_answer_makes_the_next_request_the_trial() {
        let b = breaker(1, 60_000);
        b.failure();
        assert_eq!(b.allow(), Permit::Refused);
        assert!(!b.is_healthy());
        assert_eq!(b.probe_answered(), Some(Transition::Probed));
        assert!(b.is_healthy());
        // Said once: the next probes find the back-off already over.
        assert_eq!(b.probe_answered(), None);
        assert_eq!(b.allow(), Permit::Trial);
        assert_eq!(b.allow(), Permit::Refused, "one trial at a time");
        assert_eq!(b.probe_answered(), None);
        assert_eq!(b.success(), Some(Transition::Closed));
        assert_eq!(b.allow(), Permit::Go);
    }

    /// A CA whose probes answer and whose requests fail: one trial per probe, and the
    /// back-off still doubles.
    #[test]
    fn a_failed_trial_after_a_probe_opens_again_with_a_longer_back_off() {
        let b = breaker(1, 60_000);
        b.failure();
        assert_eq!(b.probe_answered(), Some(Transition::Probed));
        assert_eq!(b.allow(), Permit::Trial);
        assert_eq!(
            b.failure(),
            Some(Transition::Opened {
                backoff: Duration::from_secs(120)
            })
        );
        assert_eq!(b.allow(), Permit::Refused);
        // A failed probe after an answered one: open again, said again.
        assert_eq!(b.probe_answered(), Some(Transition::Probed));
        assert!(matches!(b.failure(), Some(Transition::Opened { .. })));
        assert!(!b.is_healthy());
    }

    /// A probe answered after the back-off ran out (a slow probe, or a CA back after a
    /// long outage) still reports the CA back, once: the next request is the trial.
    #[test]
    fn a_probe_answered_after_the_back_off_ran_out_is_still_reported_once() {
        let b = breaker(1, 10);
        b.failure();
        std::thread::sleep(Duration::from_millis(20));
        assert!(b.is_healthy(), "the back-off is over");
        assert_eq!(b.probe_answered(), Some(Transition::Probed));
        assert_eq!(b.probe_answered(), None, "said once");
        assert_eq!(b.describe(), "half-open");
        assert_eq!(b.allow(), Permit::Trial);
        assert_eq!(b.allow(), Permit::Refused, "one trial at a time");
        assert_eq!(b.success(), Some(Transition::Closed));
    }

    /// A CA that answers GetCACaps but not requests: the probes in between do not
    /// clear the requests' outages.
    #[test]
    fn a_probe_answer_does_not_clear_the_outages_of_requests() {
        let b = breaker(2, 60_000);
        assert_eq!(b.failure(), None);
        assert_eq!(b.probe_answered(), None);
        assert!(matches!(b.failure(), Some(Transition::Opened { .. })));
    }

    #[test]
    fn back_off_is_capped() {
        let b = breaker(1, 10);
        b.failure();
        for _ in 0..10 {
            b.failure();
        }
        assert!(
            matches!(*b.lock(), State::Open { backoff, .. } if backoff == Duration::from_millis(40))
        );
    }

    #[test]
    fn p95_needs_samples() {
        let w = LatencyWindow::default();
        assert_eq!(w.p95(), None);
        for ms in 1..=100 {
            w.record(Duration::from_millis(ms));
        }
        assert_eq!(w.p95(), Some(Duration::from_millis(95)));
    }
}
