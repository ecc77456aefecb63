//! The accept loop: plain TCP or TLS (rustls), HTTP/1.1, HTTP/1.0 and HTTP/2, with
//! bounds on connections, header time and request size, and a graceful stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::routes::{self, Limits, Role};
use crate::config::{ConfigError, ServerConfig, TlsConfig};
use crate::reload::Live;

/// hyper's HTTP/2 header list default is 16 KiB; an Intune challenge makes a GET
/// PKIOperation URI tens of KiB long, so allow what HTTP/1 allows (65,534 bytes) and more.
const MAX_HEADER_LIST: u32 = 256 * 1024;

/// The HTTP/1 read buffer: what one connection may hold of an unfinished request head.
const MAX_HTTP1_BUFFER: usize = 96 * 1024;

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    config: ServerConfig,
    live: Arc<Live>,
    role: Role,
}

impl Server {
    /// Binds the listen address (and loads the TLS certificate) so that start-up errors
    /// appear before anything is served.
    pub async fn bind(config: ServerConfig, live: Arc<Live>) -> Result<Self, ConfigError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|e| ConfigError::Invalid {
                    setting: "server.listen",
                    reason: format!("cannot listen on {}: {e}", config.listen),
                })?;
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let role = Role::Public {
            metrics: config.admin_listen.is_none(),
        };
        Ok(Server {
            listener,
            tls,
            config,
            live,
            role,
        })
    }

    /// Binds `[server] admin_listen`, if set: plain HTTP, `/metrics` and the probes only.
    /// It stops with the main listener (see [`Server::run`]'s caller), so that probes
    /// see `/readyz` 503 for the whole drain.
    pub async fn bind_admin(
        config: ServerConfig,
        live: Arc<Live>,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(addr) = config.admin_listen else {
            return Ok(None);
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| ConfigError::Invalid {
                setting: "server.admin_listen",
                reason: format!("cannot listen on {addr}: {e}"),
            })?;
        Ok(Some(Server {
            listener,
            tls: None,
            config: ServerConfig {
                // Probes and scrapes are small and quick; no drain delay of its own.
                shutdown_delay_secs: 0,
                max_connections: 64,
                ..config
            },
            live,
            role: Role::Admin,
        }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` completes; then `/readyz` answers 503 at once, the
    /// listener keeps accepting for `shutdown_delay_secs` (so that load balancers stop
    /// sending first), stops, and in-flight requests get `shutdown_grace_secs` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let role = self.role;
        let live = self.live.clone();
        let delay = Duration::from_secs(self.config.shutdown_delay_secs);
        let shutdown = async move {
            shutdown.await;
            if role != Role::Admin {
                live.get().readiness.start_draining();
                crate::metrics::shutting_down();
                tracing::info!(
                    delay_secs = delay.as_secs(),
                    "draining: /readyz answers 503; still accepting for the delay"
                );
                tokio::time::sleep(delay).await;
            }
        };
        let limits = Limits {
            max_body_bytes: self.config.max_body_bytes,
            request_timeout: Duration::from_secs(self.config.request_timeout_secs),
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(self.config.header_timeout_secs))
            // Room for the longest request line HTTP/1 allows here (a 65,534-byte URI, an
            // Intune GET) plus headers, and no more: hyper's default (~400 KB) would let
            // each of `max_connections` clients pin that much memory with headers alone.
            .max_buf_size(MAX_HTTP1_BUFFER)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_LIST)
            .max_concurrent_streams(64)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let builder = Arc::new(builder);
        let connections = Arc::new(Semaphore::new(self.config.max_connections));
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);

        loop {
            // Take a connection slot first: beyond the limit, clients wait in the
            // kernel's accept queue instead of costing us memory.
            let permit = tokio::select! {
                permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let live = self.live.clone();
            let builder = builder.clone();
            let tls = self.tls.clone();
            let watcher = graceful.watcher();
            let handshake_timeout = Duration::from_secs(self.config.header_timeout_secs);
            tokio::spawn(async move {
                let _permit = permit;
                // Each request takes the gateway current when it arrives (see `reload`).
                let service = |client: Option<Arc<super::ClientCertificate>>| {
                    service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(super::PeerAddr(peer));
                        if let Some(client) = &client {
                            req.extensions_mut().insert(client.clone());
                        }
                        routes::handle(live.clone(), limits, role, req)
                    })
                };
                let result = match tls {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), service(None));
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                        // Verified against `client_ca` by the handshake, if one was sent.
                        let client = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(<[_]>::first)
                            .map(|leaf| Arc::new(super::ClientCertificate::from_der(leaf)));
                        let conn = builder.serve_connection(TokioIo::new(stream), service(client));
                        watcher.watch(conn.into_owned()).await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }

        drop(self.listener);
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        tracing::info!(
            grace_secs = grace.as_secs(),
            "stopped accepting; finishing in-flight requests"
        );
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; closing the remaining connections");
        }
    }
}

fn tls_acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, ConfigError> {
    let file_error = |setting, path: &std::path::Path, reason: String| ConfigError::File {
        setting,
        path: path.to_owned(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.certificate)
        .map_err(|e| file_error("server.tls.certificate", &tls.certificate, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error("server.tls.certificate", &tls.certificate, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error(
            "server.tls.certificate",
            &tls.certificate,
            "holds no certificate".into(),
        ));
    }
    crate::secrets::check_permissions("server.tls.key", &tls.key);
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| file_error("server.tls.key", &tls.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| file_error("server.tls", &tls.certificate, e.to_string()))?
        .with_client_cert_verifier(client_verifier(tls, provider.clone())?)
        .with_single_cert(certs, key)
        .map_err(|e| file_error("server.tls.key", &tls.key, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// `[server.tls] client_ca`: ask for a client certificate and verify it against these
/// CAs, but let clients without one in (devices); without `client_ca`, ask nobody.
fn client_verifier(
    tls: &TlsConfig,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, ConfigError> {
    let Some(path) = &tls.client_ca else {
        return Ok(rustls::server::WebPkiClientVerifier::no_client_auth());
    };
    let error = |reason: String| ConfigError::File {
        setting: "server.tls.client_ca",
        path: path.clone(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| error(e.to_string()))? {
        roots
            .add(cert.map_err(|e| error(e.to_string()))?)
            .map_err(|e| error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(error("holds no certificate".into()));
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| error(e.to_string()))
}
