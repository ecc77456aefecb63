//! SCEP itself (RFC 8894): the messages, how a request is read, how a reply is built,
//! and the two GET operations that describe the server.
//!
//! - [`message`]: the vocabulary (messageType, pkiStatus, failInfo, nonces, transactionID).
//! - [`request`]: pkiMessage in: verify the signature, open the envelope.
//! - [`certrep`]: CertRep out: certs-only → envelope → signed (RFC 8894 §3.3.2).
//! - [`capabilities`]: GetCACaps (§3.5.2).
//! - [`cacert`]: GetCACert and GetNextCACert (§4.2, §4.6).

pub mod cacert;
pub mod capabilities;
pub mod certrep;
pub mod client;
pub mod message;
pub mod request;
