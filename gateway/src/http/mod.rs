//! HTTP transport of SCEP (RFC 8894 §4.1): the server that accepts connections and the
//! routes that turn a request into a SCEP operation.
//!
//! - [`server`]: accept loop, optional TLS, connection and size limits, graceful shutdown.
//! - [`routes`]: `operation=` dispatch on the SCEP paths, health endpoints.
//! - [`query`]: lenient decoding of the GET query string.
//! - [`admin`]: the one-time challenge password endpoint (off unless configured).

pub mod admin;
pub mod admission;
pub mod query;
pub mod routes;
pub mod server;

/// The TCP peer of a request, put in its extensions by the server (the challenge
/// validators receive it as the client address).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);
