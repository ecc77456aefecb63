//! Checking a PKCSReq's challengePassword (RFC 8894 §2.3): the proof that the device is
//! allowed to enroll. Only the static shared secret exists yet; one-time passwords,
//! webhooks and Intune validation implement the same trait.

pub mod static_secret;

use crate::ca::BoxFuture;
use crate::csr::CertificationRequest;
use crate::error::Result;

/// A challenge validator.
pub trait Challenge: Send + Sync + std::fmt::Debug {
    /// Accepts or refuses `csr` (`Error::Refused`, answered as badRequest). Never logs
    /// the challenge.
    fn validate<'a>(&'a self, csr: &'a CertificationRequest) -> BoxFuture<'a, Result<()>>;

    /// A name for logs and metrics.
    fn mode(&self) -> &'static str;
}

/// `mode = "none"`: accepts everything. For closed test networks only.
#[derive(Debug)]
pub struct NoChallenge;

impl Challenge for NoChallenge {
    fn validate<'a>(&'a self, _csr: &'a CertificationRequest) -> BoxFuture<'a, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn mode(&self) -> &'static str {
        "none"
    }
}
