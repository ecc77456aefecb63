//! A stateless SCEP (RFC 8894) gateway: the Registration Authority between devices and
//! one or more CAs, with its keys behind the `scep-hsm` interface.
//!
//! The path of one enrollment, file by file:
//! ```text
//! http::server   accept, TLS, limits          ─▶ http::routes  operation + message bytes
//!   (GET: http::query decodes the base64 leniently)
//! scep::request  SignedData → verify → EnvelopedData → RA key (hsm) → messageData
//! enroll         store.claim → challenge → ca.issue → store.issued
//! scep::certrep  certs-only → envelope to the device → signed by the RA key (hsm)
//! ```
//! Every failure is one [`error::Error`]; [`error::Error::answer`] turns it into a CertRep
//! FAILURE with its failInfo, or an HTTP status.
#![forbid(unsafe_code)]

pub mod ca;
pub mod challenge;
pub mod cli;
pub mod cms;
pub mod config;
pub mod csr;
pub mod enroll;
pub mod error;
/// The decoders as the fuzz targets and the corpus replay call them; not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod init;
pub mod metrics;
pub mod name;
pub mod pending;
pub mod ra;
pub mod reload;
pub mod revocation;
pub mod scep;
pub mod secrets;
pub mod service;
pub mod store;
