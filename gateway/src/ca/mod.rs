//! Certificate authorities behind one trait, so that the enrollment pipeline never knows
//! which one answered: the embedded CA, upstream SCEP CAs reached as an RA
//! ([`upstream`]), and the [`router`] that spreads requests over several of them by
//! profile ([`profile`]), each CA with its breaker, bound and timeout ([`member`],
//! [`breaker`]).

pub mod breaker;
pub mod certificate;
pub mod embedded;
pub mod member;
pub mod profile;
pub mod router;
pub mod upstream;

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

/// What a CA made of a request: a certificate now, or a decision later (an upstream CA
/// answered PENDING, RFC 8894 §3.3.2, or every CA of a queueing profile was down).
#[derive(Debug, Clone)]
pub enum IssueOutcome {
    /// The certificate and the chain to send after it in the CertRep. `ca` names the
    /// CA that issued it (its [`Ca::name`], or its `[[cas]]` name behind the router),
    /// for the request log.
    Issued {
        issued: Issued,
        chain: Vec<Arc<[u8]>>,
        ca: Arc<str>,
    },
    /// Not decided yet. `ticket` is opaque to the pipeline: it is kept in the store
    /// ([`crate::store::Record::PendingUpstream`]) and handed back to [`Ca::poll`] on the
    /// device's CertPoll. `ca` names the CA that answered PENDING; empty when no CA
    /// answered (a queueing profile with every CA down).
    Pending { ticket: Vec<u8>, ca: Arc<str> },
}

/// Hints for choosing where a request goes, besides its CSR, and how long it may take.
#[derive(Debug, Clone, Copy, Default)]
pub struct Route<'a> {
    /// A profile named by the challenge check (an Intune/webhook answer), overriding the
    /// key-usage selection.
    pub profile: Option<&'a str>,
    /// When the CA must have answered (see [`AnswerBy`]); `None`: its own timeout only.
    pub answer_by: AnswerBy,
}

/// The instant by which a CA must have answered a request made under a claim in the
/// store: the claim's lease end, less the time recording the answer may take. A CA
/// whose timeout would end later is not asked (`ca::member`; with failover, a later CA
/// of the profile may not be), so that no certificate comes back after the claim has
/// lapsed and may have been won by the device's retry, which would issue a second
/// one. `None` where no claim is held (the background poll of an upstream PENDING,
/// which cannot issue twice).
pub type AnswerBy = Option<std::time::Instant>;

/// Whether `answer_by` has passed: then no CA may be asked.
pub fn too_late(answer_by: AnswerBy) -> bool {
    answer_by.is_some_and(|t| t <= std::time::Instant::now())
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

    /// Revokes a certificate this CA issued that must never be used: one withheld from
    /// the device because its challenge validator did not acknowledge it (Intune's
    /// successNotification failed), whose transaction is then issued again. `Ok(false)`
    /// when this CA did not issue it or cannot revoke (an upstream CA: the log names the
    /// serial for its operator).
    fn revoke_withheld(&self, _certificate: &[u8]) -> Result<bool> {
        Ok(false)
    }

    /// Revokes the certificate with this serial (INTEGER content bytes), at an
    /// operator's request (`POST /admin/revoke`). `Ok(false)`: already revoked.
    /// `Err(NotFound)` for a CA that keeps no CRL here (upstream CAs only).
    fn revoke_serial(&self, _serial: &[u8]) -> Result<bool> {
        Err(crate::error::Error::NotFound(
            "no embedded CA: revoke at the upstream CA that issued it".into(),
        ))
    }

    /// The issuer Name (DER) whose revocations this CA's CRL lists (the embedded CA's
    /// subject); `None` for a CA that keeps no CRL here.
    fn crl_issuer(&self) -> Option<&[u8]> {
        None
    }

    /// Revocations recorded in the store (by other replicas, or before a restart or a
    /// reload; `Store::revocations`), added to this CA's CRL and to its renewal check.
    /// Known ones are skipped.
    fn adopt_revocations(&self, _revoked: &[crate::store::Revocation]) {}

    /// The CA's name for the request log and metrics (never a URL with credentials).
    /// The embedded CA keeps this default; every other CA overrides it.
    fn name(&self) -> &str {
        "embedded"
    }

    /// The named challenge mode (`[challenges.<name>]`) of the profile that would serve
    /// `csr`; `None`: the gateway's `[challenge]`.
    fn challenge_for(&self, _csr: &CertificationRequest) -> Option<&str> {
        None
    }

    /// Issues or defers: what the pipeline calls. A CA that always decides at once
    /// (the embedded one) keeps this default.
    fn submit<'a>(
        &'a self,
        request: IssueRequest<'a>,
        _route: Route<'a>,
    ) -> BoxFuture<'a, Result<IssueOutcome>> {
        Box::pin(async move {
            let issued = self.issue(request).await?;
            Ok(IssueOutcome::Issued {
                issued,
                chain: self.chain().to_vec(),
                ca: self.name().into(),
            })
        })
    }

    /// Asks again about a deferred request (the device's CertPoll, RFC 8894 §3.3.3);
    /// a queued request ([`Ca::resubmits`]) is submitted, answered by `answer_by`.
    fn poll<'a>(
        &'a self,
        _ticket: &'a [u8],
        _answer_by: AnswerBy,
    ) -> BoxFuture<'a, Result<IssueOutcome>> {
        Box::pin(std::future::ready(Err(crate::error::Error::NotFound(
            "no pending request of this CA".into(),
        ))))
    }

    /// Whether [`Ca::poll`] of this ticket submits the request to a CA again (a request
    /// a `queue_when_down` profile deferred while every CA was down) rather than ask
    /// about one a CA already has. Such a poll may issue, so the caller holds the
    /// transaction's resubmission lock around it (`TransactionKey::resubmission`).
    fn resubmits(&self, _ticket: &[u8]) -> bool {
        false
    }

    /// The chain to send after `certificate` (which this CA, or one behind it, issued)
    /// when a retry or CertPoll is answered from the store.
    fn chain_of(&self, _certificate: &[u8]) -> Vec<Arc<[u8]>> {
        self.chain().to_vec()
    }

    /// The CA chain GetCACert serves for the CA identifier `message` (RFC 8894 §4.2),
    /// when it is only known at run time (upstream CAs). `None`: the chain is
    /// [`Ca::chain`] and GetCACert is the answer prepared at start.
    fn ca_chain(&self, _identifier: Option<&str>) -> Option<Vec<Arc<[u8]>>> {
        None
    }

    /// How often a deferred request with this `ticket` should be polled in the
    /// background (see `crate::pending`), and how many times at most. `None` (the
    /// default): only the device's CertPoll asks again.
    fn poll_schedule(&self, _ticket: &[u8]) -> Option<(std::time::Duration, u32)> {
        None
    }

    /// Whether every profile can be served now (readiness). A short reason otherwise.
    fn health(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}
