//! `/readyz`: whether every RA and CA key can be used now.
//!
//! With keys in an HSM the gateway is only as ready as its token: a load balancer should
//! stop sending enrollments while the token is unusable and resume when it returns
//! (issue 3). Each key's [`scep_hsm::Key::health`] is a cheap round trip to where it lives
//! (always fine for software keys). The probe runs on the blocking pool, never on a
//! reactor thread, and its answer is cached for [`CACHE`] so that frequent probes do not
//! load the token.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scep_hsm::Key;

/// How long one health answer is reused.
pub const CACHE: Duration = Duration::from_secs(1);

/// The keys to check, by setting name.
pub struct Readiness {
    keys: Arc<Vec<(&'static str, Arc<dyn Key>)>>,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").finish_non_exhaustive()
    }
}

impl Readiness {
    pub fn new(keys: Vec<(&'static str, Arc<dyn Key>)>) -> Self {
        Readiness {
            keys: Arc::new(keys),
            last: Mutex::new(None),
        }
    }

    /// `Ok` when every key is usable, else the first failure ("ra.key: ...").
    pub async fn check(&self) -> Result<(), String> {
        if let Some((at, answer)) = &*self.last.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < CACHE {
                return answer.clone();
            }
        }
        let keys = self.keys.clone();
        let answer = tokio::task::spawn_blocking(move || {
            for (setting, key) in keys.iter() {
                key.health().map_err(|e| format!("{setting}: {e}"))?;
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(format!("health check task failed: {e}")));
        if let Err(reason) = &answer {
            tracing::warn!(%reason, "not ready");
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), answer.clone()));
        answer
    }

    /// The `/readyz` body: `{"ready":true}` or `{"ready":false,"hsm":"..."}`.
    pub fn body(answer: &Result<(), String>) -> String {
        match answer {
            Ok(()) => "{\"ready\":true}\n".into(),
            Err(reason) => format!("{{\"ready\":false,\"hsm\":\"{}\"}}\n", json_escape(reason)),
        }
    }
}

/// Escapes a string for a JSON string literal (RFC 8259 §7).
fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json() {
        assert_eq!(Readiness::body(&Ok(())), "{\"ready\":true}\n");
        assert_eq!(
            Readiness::body(&Err("ra.key: \"t\"\n".into())),
            "{\"ready\":false,\"hsm\":\"ra.key: \\\"t\\\"\\u000a\"}\n"
        );
    }
}
