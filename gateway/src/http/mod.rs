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

/// The client certificate a TLS connection presented and `[server.tls] client_ca`
/// verified, put in every request's extensions of that connection. Only the one-time
/// password admin endpoint uses it (mutual TLS instead of a bearer token); SCEP
/// devices present none and need none.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// SHA-256 of the DER certificate.
    pub sha256: [u8; 32],
    /// The subject's first commonName, if any.
    pub common_name: Option<String>,
}

impl ClientCertificate {
    pub fn from_der(der: &[u8]) -> Self {
        use der::Decode;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref());
        let common_name = crate::ca::certificate::ParsedCertificate::from_der(der)
            .ok()
            .and_then(|c| x509_cert::name::Name::from_der(c.subject).ok())
            .and_then(|name| name.common_name().ok().flatten().map(String::from));
        ClientCertificate {
            sha256,
            common_name,
        }
    }
}
