//! Admission of PKIOperations: a global bound on how many run at once and an optional
//! per-client-address rate, so that a flood (a misbehaving fleet, a retry storm, an
//! attacker) meets a clear 503 or 429 instead of queueing unboundedly in front of the
//! HSM. GetCACaps and GetCACert are cheap, prepared answers and are not limited here.
//!
//! The rate limit is a token bucket per client IP address. It is off by default: behind
//! a load balancer or a carrier-grade NAT many devices share one address, and only the
//! operator knows what a fair rate is there.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Addresses remembered at most; beyond it, idle buckets are dropped.
const MAX_CLIENTS: usize = 100_000;

/// Why a PKIOperation was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every operation slot is taken (HTTP 503, Retry-After).
    Busy,
    /// This client address exceeded its rate (HTTP 429, Retry-After).
    Rate,
}

/// The admission gate of one gateway.
#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    rate: Option<RateLimit>,
}

#[derive(Debug)]
struct RateLimit {
    per_second: f64,
    burst: f64,
    buckets: DashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Admission {
    /// `max_in_flight` operations at once; `per_client` = (requests per second, burst),
    /// `None` for no per-address limit.
    pub fn new(max_in_flight: usize, per_client: Option<(f64, f64)>) -> Self {
        Admission {
            slots: Arc::new(Semaphore::new(max_in_flight.max(1))),
            rate: per_client.map(|(per_second, burst)| RateLimit {
                per_second,
                burst: burst.max(1.0),
                buckets: DashMap::new(),
            }),
        }
    }

    /// Admits one PKIOperation from `client`, or says why not. The permit is held for the
    /// operation's whole life.
    pub fn admit(&self, client: Option<IpAddr>) -> Result<OwnedSemaphorePermit, Refusal> {
        if let (Some(rate), Some(ip)) = (&self.rate, client) {
            if !rate.take(ip, Instant::now()) {
                return Err(Refusal::Rate);
            }
        }
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy)
    }
}

impl RateLimit {
    fn take(&self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_CLIENTS {
            // Idle buckets are full again anyway: forgetting them changes nothing.
            let refill =
                Duration::from_secs_f64(self.burst / self.per_second.max(f64::MIN_POSITIVE));
            self.buckets
                .retain(|_, b| now.duration_since(b.last) < refill);
        }
        let mut bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_bound_operations_in_flight() {
        let gate = Admission::new(2, None);
        let a = gate.admit(None).unwrap();
        let _b = gate.admit(None).unwrap();
        assert_eq!(gate.admit(None).unwrap_err(), Refusal::Busy);
        drop(a);
        assert!(gate.admit(None).is_ok());
    }

    #[test]
    fn a_client_gets_its_burst_then_its_rate() {
        let limit = RateLimit {
            per_second: 2.0,
            burst: 3.0,
            buckets: DashMap::new(),
        };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..3).all(|_| limit.take(ip, t0)));
        assert!(!limit.take(ip, t0), "the burst is spent");
        assert!(limit.take(other, t0), "another address has its own bucket");
        assert!(
            limit.take(ip, t0 + Duration::from_millis(600)),
            "refilled at 2/s"
        );
        assert!(!limit.take(ip, t0 + Duration::from_millis(700)));
    }
}
