//! Checking a PKCSReq's challengePassword (RFC 8894 §2.3): the proof that the device is
//! allowed to enroll.
//!
//! Modes, one file each, behind one trait:
//! - [`static_secret`]: one shared secret (NDES "single password");
//! - [`one_time`]: random single-use passwords from an admin endpoint (NDES `mscep_admin`);
//! - [`webhook`]: an HTTP service of the operator's decides;
//! - [`intune`]: Microsoft Intune's SCEP validation API
//!   (`shared/docs/intune-scep-validation.md`).
//!
//! Any mode may be wrapped in a [`policy::PolicyChallenge`] (key types and sizes,
//! subject and SAN patterns), checked before the mode runs so that a CSR against policy
//! never consumes a one-time password nor reaches a webhook.
//!
//! The pipeline (`enroll.rs`) calls [`Challenge::validate`] before issuing, then
//! [`Challenge::notify_issued`] after issuing and *before* returning the certificate (a
//! failed notification withholds it: Intune's rule), or [`Challenge::notify_failed`] when
//! something fails after a successful validation.

pub mod http;
pub mod intune;
pub mod one_time;
pub mod policy;
pub mod static_secret;
pub mod webhook;

pub use one_time::OneTimeChallenge;

use std::net::SocketAddr;

use crate::ca::{BoxFuture, Issued};
use crate::csr::CertificationRequest;
use crate::error::{Error, Result};
use crate::scep::message::MessageType;

/// What a validator may look at: the CSR and the transaction around it.
#[derive(Debug, Clone, Copy)]
pub struct ChallengeContext<'a> {
    pub csr: &'a CertificationRequest,
    /// The SCEP transactionID (RFC 8894 §3.2.1.1), as the client sent it.
    pub transaction_id: &'a str,
    /// The TCP peer (a load balancer's address unless it passes the client's through).
    pub client_addr: Option<SocketAddr>,
    pub message_type: MessageType,
}

/// A successful validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validated {
    /// A certificate profile named by the validator (a webhook's `profile`); routing
    /// by profile is the CA layer's business.
    pub profile: Option<String>,
}

/// A challenge validator.
pub trait Challenge: Send + Sync + std::fmt::Debug {
    /// Accepts (`Ok`) or refuses the request: `Error::Refused` (badRequest) for a wrong
    /// challenge, `Error::Unavailable` (HTTP 503) when the validator cannot decide now.
    /// Never logs the challenge.
    fn validate<'a>(&'a self, ctx: &'a ChallengeContext<'a>) -> BoxFuture<'a, Result<Validated>>;

    /// Called after the CA issued and before the certificate is returned. An error
    /// withholds the certificate (the device gets FAILURE badRequest, and the
    /// transaction is released rather than recorded as issued).
    fn notify_issued<'a>(
        &'a self,
        _ctx: &'a ChallengeContext<'a>,
        _issued: &'a Issued,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Called when the request fails after a successful validation (CA failure, a
    /// failed success notification). Best effort: it cannot change the answer.
    fn notify_failed<'a>(
        &'a self,
        _ctx: &'a ChallengeContext<'a>,
        _error: &'a Error,
    ) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    /// The issuer of one-time passwords, when this mode has one (the admin endpoint and
    /// `scep-gateway challenge new` use it).
    fn one_time(&self) -> Option<&one_time::OneTimeChallenge> {
        None
    }

    /// A name for logs and metrics.
    fn mode(&self) -> &'static str;
}

/// `mode = "none"`: accepts everything. For closed test networks only.
#[derive(Debug)]
pub struct NoChallenge;

impl Challenge for NoChallenge {
    fn validate<'a>(&'a self, _ctx: &'a ChallengeContext<'a>) -> BoxFuture<'a, Result<Validated>> {
        Box::pin(std::future::ready(Ok(Validated::default())))
    }

    fn mode(&self) -> &'static str {
        "none"
    }
}

/// The presented challengePassword, or the refusal for a request without one.
pub(crate) fn presented<'a>(ctx: &ChallengeContext<'a>) -> Result<&'a str> {
    ctx.csr
        .challenge_password()
        .ok_or_else(|| Error::Refused("the request carries no challenge password".into()))
}
