//! Latency and throughput bookkeeping of one target: an HDR histogram of latencies, the
//! completions per time slice (throughput over time), errors by kind; and the open-loop
//! schedule.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Width of one throughput-over-time slice.
pub const SLICE: Duration = Duration::from_millis(250);

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes, 3 significant
/// digits (0.1 % resolution), which is what the percentiles are read with.
const MAX_US: u64 = 600_000_000;

/// Everything measured for one target.
pub struct Recorder {
    pub latency_us: Histogram<u64>,
    /// Successful HTTP exchanges per `SLICE` since the run clock's start (all targets
    /// share one clock, so that alternating rounds show up side by side).
    pub slices: Vec<u64>,
    /// Exchanges that got an HTTP 200 with a body.
    pub answered: u64,
    /// Errors by kind ("http 503", "pkiStatus FAILURE badRequest", "timeout", ...).
    pub errors: BTreeMap<String, u64>,
    /// Time spent in this target's measured rounds (the throughput's denominator).
    pub busy: Duration,
    /// Server CPU seconds used during this target's rounds, if its PID was given.
    pub server_cpu: Option<f64>,
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            latency_us: Histogram::new_with_bounds(1, MAX_US, 3)
                .expect("constant histogram bounds are valid"),
            slices: Vec::new(),
            answered: 0,
            errors: BTreeMap::new(),
            busy: Duration::ZERO,
            server_cpu: None,
        }
    }

    /// One answered exchange: `latency` from the (intended) send time, completed at
    /// `done` on the run clock that started at `clock`.
    pub fn answered(&mut self, latency: Duration, clock: Instant, done: Instant) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_US);
        // Saturating: the bounds are wide enough that this never drops a value.
        self.latency_us.saturating_record(us);
        self.answered += 1;
        let slice = (done.saturating_duration_since(clock).as_nanos() / SLICE.as_nanos()) as usize;
        if self.slices.len() <= slice {
            self.slices.resize(slice + 1, 0);
        }
        self.slices[slice] += 1;
    }

    pub fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The latency at quantile `q` (0..=1), in milliseconds; `None` without data.
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        percentile_ms(&self.latency_us, q)
    }

    /// Answered exchanges per second of this target's rounds.
    pub fn throughput(&self) -> f64 {
        let secs = self.busy.as_secs_f64();
        if secs > 0.0 {
            self.answered as f64 / secs
        } else {
            0.0
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// The value at quantile `q` of a microsecond histogram, in milliseconds.
pub fn percentile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    if h.is_empty() {
        return None;
    }
    let us = if q >= 1.0 {
        h.max()
    } else {
        h.value_at_quantile(q)
    };
    Some(us as f64 / 1000.0)
}

/// The quantiles reported, with their labels.
pub const QUANTILES: [(&str, f64); 5] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("max", 1.0),
];

/// Open loop: when request `i` of a round that started at `start` is meant to leave, at
/// `rate` requests per second. Latency is measured from this instant, not from when the
/// request actually left: a server that stalls the sender is charged for the wait of
/// every request queued behind the stall (no coordinated omission).
pub fn intended_send(start: Instant, rate: f64, i: u64) -> Instant {
    start + Duration::from_secs_f64(i as f64 / rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut r = Recorder::new();
        let clock = Instant::now();
        // 1 ms .. 1000 ms, one each.
        for ms in 1..=1000u64 {
            r.answered(Duration::from_millis(ms), clock, clock);
        }
        let p = |q| r.percentile_ms(q).unwrap();
        // HDR with 3 significant digits: within 0.1 %.
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 1e-9;
        assert!(close(p(0.5), 500.0), "p50 {}", p(0.5));
        assert!(close(p(0.9), 900.0), "p90 {}", p(0.9));
        assert!(close(p(0.99), 990.0), "p99 {}", p(0.99));
        assert!(close(p(0.999), 999.0), "p99.9 {}", p(0.999));
        assert!(close(p(1.0), 1000.0), "max {}", p(1.0));
        assert_eq!(r.answered, 1000);
    }

    #[test]
    fn one_slow_request_in_a_thousand_shows_at_p999_not_p99() {
        let mut r = Recorder::new();
        let clock = Instant::now();
        for _ in 0..999 {
            r.answered(Duration::from_millis(2), clock, clock);
        }
        r.answered(Duration::from_secs(3), clock, clock);
        assert!(r.percentile_ms(0.99).unwrap() < 2.01);
        assert!(r.percentile_ms(0.9995).unwrap() > 2990.0);
        assert!(r.percentile_ms(1.0).unwrap() > 2990.0);
    }

    #[test]
    fn empty_has_no_percentiles_and_no_throughput() {
        let r = Recorder::new();
        assert_eq!(r.percentile_ms(0.5), None);
        assert_eq!(r.throughput(), 0.0);
    }

    #[test]
    fn slices_count_completions_over_time() {
        let mut r = Recorder::new();
        let clock = Instant::now();
        r.answered(Duration::from_millis(1), clock, clock);
        r.answered(
            Duration::from_millis(1),
            clock,
            clock + SLICE * 3 + SLICE / 2,
        );
        r.answered(Duration::from_millis(1), clock, clock + SLICE * 3);
        assert_eq!(r.slices, vec![1, 0, 0, 2]);
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let mut r = Recorder::new();
        r.error("http 503");
        r.error("http 503");
        r.error("timeout");
        assert_eq!(r.error_count(), 3);
        assert_eq!(r.errors["http 503"], 2);
    }

    #[test]
    fn open_loop_schedule_is_evenly_spaced_from_the_start() {
        let start = Instant::now();
        assert_eq!(intended_send(start, 100.0, 0), start);
        assert_eq!(
            intended_send(start, 100.0, 1) - start,
            Duration::from_millis(10)
        );
        assert_eq!(
            intended_send(start, 100.0, 250) - start,
            Duration::from_millis(2500)
        );
        // Fractional rates keep their precision (no per-step rounding drift).
        let d = intended_send(start, 3.0, 3000) - start;
        assert!((d.as_secs_f64() - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn open_loop_latency_counts_from_the_intended_time() {
        // A request meant to leave at t=10 ms that left late, at 50 ms, and was answered
        // at 52 ms waited 42 ms: that is its latency, not 2 ms.
        let start = Instant::now();
        let intended = intended_send(start, 100.0, 1);
        let done = start + Duration::from_millis(52);
        let mut r = Recorder::new();
        r.answered(done - intended, start, done);
        let p = r.percentile_ms(1.0).unwrap();
        assert!((p - 42.0).abs() < 0.05, "{p}");
    }
}
