//! The running configuration, replaceable while the gateway serves.
//!
//! NDES fixes its RA certificates at install time; here they are configuration, and an
//! operator who rotates the RA certificate, adds a next set, or moves a key into an HSM
//! edits `gateway.toml` and sends SIGHUP. The new [`Gateway`] is built beside the old one
//! (every check of a start runs again); only when it is complete does it replace the old
//! one. Requests already running keep the `Arc` of the gateway they started with, so
//! nothing in flight is dropped. A configuration that does not load leaves the running
//! one in place.
//!
//! The same reload is offered as `POST /admin/reload` ([`handle`]) with a bearer token
//! (`[server] reload_token_env`/`reload_token_file`), for tools that cannot signal the
//! process.
//!
//! What a reload does not change: the listen address, TLS and the other `[server]`
//! settings (they belong to the socket), and the store when `[store]` is unchanged (the
//! same store is kept, so in-process transactions survive the reload).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::config::{ConfigError, FileConfig};
use crate::service::Gateway;

/// The current gateway and the file it came from.
#[derive(Debug)]
pub struct Live {
    path: PathBuf,
    current: RwLock<(Arc<Gateway>, FileConfig)>,
}

impl Live {
    pub fn new(path: &Path, config: FileConfig, gateway: Arc<Gateway>) -> Self {
        Live {
            path: path.to_owned(),
            current: RwLock::new((gateway, config)),
        }
    }

    /// The gateway to serve the next request with. The lock is held only to clone an
    /// `Arc`, never across an await.
    pub fn get(&self) -> Arc<Gateway> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0
            .clone()
    }

    /// Reads the configuration file again and, if it loads, serves with it from now on.
    /// Blocks (keys are loaded, an HSM may be opened): call it off the reactor.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let config = FileConfig::load(&self.path)?;
        let (old_gateway, old_config) = {
            let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
            (guard.0.clone(), guard.1.clone())
        };
        let keep_store = store_settings(&old_config) == store_settings(&config);
        let store = keep_store.then(|| old_gateway.store.clone());
        let mut gateway = Gateway::with_store(&config, store)?;
        // Readiness carries the draining state of a shutdown in progress: keep it.
        gateway.readiness = old_gateway.readiness.clone();
        crate::metrics::config_reloaded(&gateway);
        let gateway = Arc::new(gateway);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (gateway, config);
        Ok(())
    }
}

/// The digest a reload token is kept and compared as (constant time, any length).
pub fn token_digest(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether `authorization` (the header value) carries the configured reload token.
pub fn authorized(gateway: &Gateway, authorization: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    let (Some(expected), Some(header)) = (gateway.reload_token, authorization) else {
        return false;
    };
    let Some(token) = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
    else {
        return false;
    };
    token_digest(token.trim()).ct_eq(&expected).into()
}

/// `POST /admin/reload`: 404 unless a token is configured, 401 without the right one,
/// 200 `{"reloaded":true}` or 422 `{"reloaded":false,"error":"…"}` (the configuration
/// error, which names settings and files, never secrets).
pub async fn handle(live: Arc<Live>, authorization: Option<String>) -> (u16, String) {
    let gateway = live.get();
    if gateway.reload_token.is_none() {
        return (404, "not found\n".into());
    }
    if !authorized(&gateway, authorization.as_deref()) {
        tracing::warn!("reload refused: missing or wrong bearer token");
        return (401, "unauthorized\n".into());
    }
    match tokio::task::spawn_blocking(move || live.reload()).await {
        Ok(Ok(())) => {
            tracing::info!("configuration reloaded (admin call)");
            (200, "{\"reloaded\":true}\n".into())
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "reload failed; the running configuration stays");
            let body = serde_json::json!({ "reloaded": false, "error": e.to_string() });
            (422, format!("{body}\n"))
        }
        Err(e) => (503, format!("{{\"reloaded\":false,\"error\":\"{e}\"}}\n")),
    }
}

/// `[store]` as text: equal text, same store.
fn store_settings(config: &FileConfig) -> String {
    format!("{:?}", config.store)
}
