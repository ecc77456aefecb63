//! Readiness (`/readyz`): can this replica serve enrollments now?
//!
//! A load balancer or Kubernetes probe takes a replica out of rotation while a dependency
//! it needs is down, and puts it back when the dependency returns, without a restart.
//! Each dependency is one named check in [`checks`]; the answer is cached for
//! [`CACHE_FOR`] so that a probe storm costs one check per second, and concurrent probes
//! during a refresh wait for the one check in flight rather than each running their own.
//!
//! Liveness (`/healthz`) stays a constant: a dependency outage must not get every replica
//! restarted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::service::Gateway;

/// How long a readiness answer is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

/// One dependency's state: `Err` holds a short reason (no secrets: the store's errors
/// name a redacted endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub result: Result<(), String>,
}

/// The gathered checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.result.is_ok())
    }

    /// `{"ready":true}`, or `{"ready":false,"<check>":"<reason>",…}` naming the failed
    /// checks.
    pub fn to_json(&self) -> String {
        let mut out = format!("{{\"ready\":{}", self.ready());
        for check in &self.checks {
            if let Err(reason) = &check.result {
                out.push_str(&format!(
                    ",{}:{}",
                    json_string(check.name),
                    json_string(reason)
                ));
            }
        }
        out.push('}');
        out
    }
}

/// Runs every named check. A new dependency (an upstream CA) adds one entry.
async fn checks(gateway: &Gateway) -> Vec<Check> {
    vec![
        Check {
            name: "store",
            result: gateway
                .store
                .health()
                .await
                .map_err(|e| short(&e.to_string())),
        },
        Check {
            name: "hsm",
            result: keys_health(gateway).await,
        },
        Check {
            name: "cas",
            result: gateway.ca.health().map_err(|e| short(&e)),
        },
    ]
}

/// Every RA and CA key's [`scep_hsm::Key::health`]: a cheap round trip to the token for
/// PKCS#11 keys (always fine for software keys). It may block, so it runs on the
/// blocking pool, never on a reactor thread.
async fn keys_health(gateway: &Gateway) -> Result<(), String> {
    let keys = gateway.keys.clone();
    tokio::task::spawn_blocking(move || {
        for (setting, key) in &keys {
            key.health()
                .map_err(|e| short(&format!("{setting}: {e}")))?;
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| Err(format!("health check task failed: {e}")))
}

/// The cached readiness of one gateway.
#[derive(Debug, Default)]
pub struct Readiness {
    last: Mutex<Option<(Instant, Report)>>,
    /// Set once on SIGTERM: from then on the replica is never ready again.
    draining: AtomicBool,
}

impl Readiness {
    /// The current report, from the cache when it is younger than [`CACHE_FOR`]; while
    /// draining, `{"ready":false,"shutdown":"draining"}` at once, without the cache.
    pub async fn report(&self, gateway: &Gateway) -> Report {
        if self.is_draining() {
            return Report {
                checks: vec![Check {
                    name: "shutdown",
                    result: Err("draining".into()),
                }],
            };
        }
        self.cached(|| checks(gateway)).await
    }

    /// SIGTERM: answer not-ready from now on, so that load balancers take this replica
    /// out of rotation while it finishes its in-flight requests.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        crate::metrics::readiness(&Report {
            checks: vec![Check {
                name: "shutdown",
                result: Err("draining".into()),
            }],
        });
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    async fn cached<F, Fut>(&self, run: F) -> Report
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Vec<Check>>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, report)) = &*last {
            if at.elapsed() < CACHE_FOR {
                return report.clone();
            }
        }
        let report = Report {
            checks: run().await,
        };
        if !report.ready() {
            tracing::warn!(report = %report.to_json(), "not ready");
        }
        crate::metrics::readiness(&report);
        *last = Some((Instant::now(), report.clone()));
        report
    }
}

/// A reason short enough for a probe log line.
fn short(reason: &str) -> String {
    const MAX: usize = 200;
    match reason.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &reason[..cut]),
        None => reason.to_owned(),
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_probe_storm_runs_the_checks_once_a_second() {
        let readiness = Arc::new(Readiness::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let probe = |readiness: Arc<Readiness>, runs: Arc<AtomicUsize>| async move {
            readiness
                .cached(|| async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    vec![Check {
                        name: "store",
                        result: Err("down".into()),
                    }]
                })
                .await
        };
        let storm: Vec<_> = (0..100)
            .map(|_| tokio::spawn(probe(readiness.clone(), runs.clone())))
            .collect();
        for probe in storm {
            assert!(!probe.await.unwrap().ready());
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        tokio::time::sleep(CACHE_FOR + Duration::from_millis(50)).await;
        probe(readiness.clone(), runs.clone()).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_report_names_what_failed() {
        let ok = Report {
            checks: vec![Check {
                name: "store",
                result: Ok(()),
            }],
        };
        assert_eq!(ok.to_json(), r#"{"ready":true}"#);
        let down = Report {
            checks: vec![Check {
                name: "store",
                result: Err("redis \"x\"\n down".into()),
            }],
        };
        assert!(!down.ready());
        assert_eq!(
            down.to_json(),
            r#"{"ready":false,"store":"redis \"x\"\u000a down"}"#
        );
    }
}
