//! Certificate authorities behind one trait, so that the enrollment pipeline never knows
//! which one answered: the embedded CA today, upstream SCEP CAs reached as an RA later.

pub mod certificate;
pub mod embedded;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::csr::CertificationRequest;
use crate::error::Result;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the pipeline asks a CA for.
#[derive(Debug)]
pub struct IssueRequest<'a> {
    pub csr: &'a CertificationRequest,
    /// For a RenewalReq: the certificate being renewed (DER, as received).
    pub renewing: Option<&'a [u8]>,
}

/// A certificate a CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// DER of the new certificate.
    pub certificate: Arc<[u8]>,
    /// The serial number's INTEGER content bytes (big-endian, minimal).
    pub serial: Vec<u8>,
}

/// A certificate authority.
pub trait Ca: Send + Sync + std::fmt::Debug {
    /// Issues a certificate for `request`. A policy refusal is `Error::Refused`; an
    /// outage is `Error::Unavailable`.
    fn issue<'a>(&'a self, request: IssueRequest<'a>) -> BoxFuture<'a, Result<Issued>>;

    /// [`Ca::issue`] for a caller that is already on a thread allowed to block (tokio's
    /// blocking pool: the enrollment pipeline runs there), saving the hop `issue` makes.
    /// `None` (the default) means "use `issue`": a CA that waits on the network (an
    /// upstream CA) keeps to the async path.
    fn issue_blocking(&self, request: IssueRequest<'_>) -> Option<Result<Issued>> {
        let _ = request;
        None
    }

    /// The CA chain devices receive: the issuing CA certificate first, then any
    /// intermediates and the root.
    fn chain(&self) -> &[Arc<[u8]>];

    /// The current CRL, DER (GetCRL, RFC 8894 §3.3.4).
    fn crl<'a>(&'a self) -> BoxFuture<'a, Result<Vec<u8>>>;

    /// Whether `certificate` (DER) was issued by this CA and is still valid: the
    /// condition for accepting a RenewalReq signed with it.
    fn issued_and_valid(&self, certificate: &[u8]) -> bool;
}
