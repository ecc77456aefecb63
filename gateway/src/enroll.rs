//! One PKIOperation, top to bottom (RFC 8894 §3.3): read the request, decide, answer.
//!
//! ```text
//! parse ─▶ verify ─▶ (PKCSReq/RenewalReq: store.start_claim) ─▶ open (RA key) ─▶ by messageType:
//!   PKCSReq/RenewalReq: claim answer ─▶ challenge or renewal check ─▶ ca.issue ─▶ store.issued
//!   CertPoll:           store.get (a PendingUpstream record: ca.poll, once)
//!   GetCert:            store.certificate
//!   GetCRL:             ca.crl
//! ─▶ certrep::build (RA key)
//! ```
//! Where it runs depends on what it may wait for ([`Gateway::inline`]):
//! - nothing can block a thread (software keys, the embedded CA alone, the in-process or
//!   the Redis store, a challenge that calls nobody): in a task of its own on the worker
//!   that received the request, like any other computation; no thread hand-off (≈ 10 %
//!   of an enrollment's CPU on a VM). Redis is awaited on its async connection, its
//!   round trips overlapped with the RSA work (`store/overlap.rs`);
//! - otherwise (an HSM key, an upstream CA, a webhook or Intune): on tokio's blocking
//!   pool, in one hop, so that no PKCS#11 or network call stalls a reactor thread. The
//!   async steps (store, challenge, an upstream CA) are driven from that thread with
//!   `Handle::block_on`; Redis is then reached over blocking connections
//!   (`store::blocking_scope`).
//!
//! Either way the operation is a task of its own: a request that outlives
//! `request_timeout` is answered 503 by `http/routes.rs` while its operation runs to its
//! end (store and upstream calls carry their own timeouts), so an issued certificate is
//! still recorded for the client's retry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::ca::{self, AnswerBy, IssueOutcome, IssueRequest, Route};
use crate::challenge::ChallengeContext;
use crate::cms::algorithms::Digest;
use crate::cms::signed::CertificateFields;
use crate::cms::{envelope, public_keys};
use crate::csr::CertificationRequest;
use crate::error::{Answer, Error, Result};
use crate::metrics;
use crate::scep::certrep::{self, Outcome};
use crate::scep::message::MessageType;
use crate::scep::request::{Request, RequestBody, RequestHeader, SignedRequest};
use crate::service::Gateway;
use crate::store::{observe, Claim, InFlight, Record, TransactionKey};

/// What happened, for the request log and metrics.
#[derive(Debug, Clone)]
pub struct Summary {
    pub message_type: Option<MessageType>,
    pub transaction_id: Option<String>,
    /// "success", "pending", or the failInfo name.
    pub outcome: &'static str,
    /// Why, for the log (never secret material).
    pub detail: Option<String>,
    /// The CA that issued or answered (PKCSReq, RenewalReq, CertPoll, GetCRL), by its
    /// name: the `[[cas]]` name of the CA the router picked, `store` for a retry or
    /// CertPoll answered from the store, else the gateway's CA.
    pub ca: Option<String>,
}

/// Handles one pkiMessage and returns the CertRep bytes, or an error answered over HTTP.
pub async fn pki_operation(
    gateway: Arc<Gateway>,
    message: bytes::Bytes,
) -> (Result<Vec<u8>>, Summary) {
    pki_operation_from(gateway, message, None).await
}

/// [`pki_operation`] for a request that came from `client_addr` (given to the challenge
/// validator, e.g. a webhook).
pub async fn pki_operation_from(
    gateway: Arc<Gateway>,
    message: bytes::Bytes,
    client_addr: Option<SocketAddr>,
) -> (Result<Vec<u8>>, Summary) {
    if gateway.inline {
        // A task of its own, so that it runs to its end even if the request times out
        // while it waits on the store (the certificate is recorded for the retry). From
        // a worker, tokio runs it next on this same worker: no thread hand-off.
        let operation = tokio::spawn(InKeyScope(Box::pin(operation(
            gateway,
            message,
            client_addr,
        ))));
        return operation.await.unwrap_or_else(|e| task_failed(&e));
    }
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        // The requester's key is parsed once for its three uses (see public_keys).
        let _keys = public_keys::scope();
        // A shared store may block this thread on its I/O: cheaper than waking the
        // reactor for each round trip (see store::blocking_scope).
        let _store = crate::store::blocking_scope();
        handle.block_on(operation(gateway, message, client_addr))
    })
    .await
    .unwrap_or_else(|e| task_failed(&e))
}

/// The answer when the operation's task panicked (a bug): 503, and the log says why.
fn task_failed(e: &tokio::task::JoinError) -> (Result<Vec<u8>>, Summary) {
    let error = Error::Unavailable(format!("request task failed: {e}"));
    let summary = Summary {
        message_type: None,
        transaction_id: None,
        outcome: "unavailable",
        detail: Some(error.to_string()),
        ca: None,
    };
    (Err(error), summary)
}

/// An inline operation ([`Gateway::inline`]), each poll inside the key-parsing scope
/// (see `public_keys`; the scope belongs to the thread, so it cannot span an await). With
/// the in-process store the first poll is the whole operation.
struct InKeyScope<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for InKeyScope<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let _keys = public_keys::scope();
        self.0.as_mut().poll(cx)
    }
}

/// [`pki_operation`] itself, on a blocking-pool thread (blocking calls are allowed there)
/// or, for a [`Gateway::inline`] configuration, on the receiving worker.
async fn operation(
    gateway: Arc<Gateway>,
    message: bytes::Bytes,
    client_addr: Option<SocketAddr>,
) -> (Result<Vec<u8>>, Summary) {
    let mut summary = Summary {
        message_type: None,
        transaction_id: None,
        outcome: "malformed",
        detail: None,
        ca: None,
    };
    // Parse, verify and decrypt; a PKCSReq's claim is sent before the decryption.
    let mut early = None;
    let opened = match SignedRequest::parse(&message) {
        Ok(signed) => {
            let header = signed.header.clone();
            let opened = match signed.verify() {
                Ok(()) => {
                    early = Early::start(&gateway, &header).await;
                    signed.open(&gateway.ra, gateway.policy)
                }
                Err(e) => Err(e),
            };
            Ok((header, opened))
        }
        Err(e) => Err(e),
    };

    let (header, opened) = match opened {
        Ok(pair) => pair,
        Err(e) => {
            summary.detail = Some(e.to_string());
            return (Err(e), summary);
        }
    };
    summary.message_type = Some(header.message_type);
    summary.transaction_id = Some(header.transaction_id.to_string());
    if header.digest == Digest::Sha1 {
        metrics::legacy_crypto("sha1");
    }

    // Filled by `decide` with the CA that actually answered.
    let mut trail = Trail::default();
    let (cipher, outcome) = match opened {
        Ok(request) => {
            let cipher = request.cipher;
            if cipher.is_legacy() {
                tracing::info!(transaction_id = %header.transaction_id, cipher = cipher.name(), "legacy content cipher used");
                metrics::legacy_crypto(cipher.name());
            }
            let outcome = decide(&gateway, request, client_addr, early, &mut trail).await;
            (Some(cipher), outcome)
        }
        Err(e) => (None, Err(e)),
    };

    if trail.answered_by.is_some() {
        summary.ca = trail.answered_by.take();
    } else if matches!(
        header.message_type,
        MessageType::PkcsReq | MessageType::RenewalReq | MessageType::GetCrl
    ) {
        // No CA answered (refused before issuing, an outage): the gateway's CA.
        summary.ca = Some(gateway.ca.name().to_owned());
    }
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => match e.answer() {
            Answer::Failure(info) => {
                summary.detail = Some(e.to_string());
                Outcome::Failure {
                    info,
                    text: e.fail_info_text(),
                }
            }
            Answer::Http(_) => {
                summary.outcome = "unavailable";
                summary.detail = Some(e.to_string());
                return (Err(e), summary);
            }
        },
    };
    summary.outcome = match &outcome {
        Outcome::Issued { .. } | Outcome::Crl(_) => "success",
        Outcome::Pending => "pending",
        Outcome::Failure { info, .. } => info.name(),
    };
    let reply = certrep::build(&gateway.ra.signer, &header, cipher, &outcome);
    // The record of an issued certificate was sent before the signature: read its answer
    // now, before the reply leaves, as if it had been written first.
    if let Some(recording) = trail.recording.take() {
        if let Err(e) = recording.await {
            tracing::error!(transaction_id = %header.transaction_id, error = %e, "issued certificate not recorded for retries and GetCert");
        }
    }
    (reply, summary)
}

/// What the steps of one operation leave for its end.
#[derive(Default)]
struct Trail<'g> {
    /// The CA that issued or deferred, or "store" (for the request log and metrics).
    answered_by: Option<String>,
    /// An issued certificate's record, sent to a shared store and still to be answered
    /// (`Store::start_issued`): its round trip overlaps the CertRep's signature.
    recording: Option<InFlight<'g, ()>>,
}

/// Decides the outcome of a verified, decrypted request; `trail.answered_by` is set to the
/// CA that issued or deferred (or "store").
async fn decide<'g>(
    gateway: &'g Gateway,
    request: Request,
    client_addr: Option<SocketAddr>,
    early: Option<Early<'g>>,
    trail: &mut Trail<'g>,
) -> Result<Outcome> {
    let header = &request.header;
    // Every SUCCESS is enveloped to the signer certificate: refuse a signer key we
    // cannot encrypt to (EC, RSA below 2048 bits) before anything is claimed or issued,
    // rather than issue a certificate that no reply can carry.
    envelope::check_recipient(&header.signer_certificate)?;
    match (header.message_type, &request.body) {
        (
            MessageType::PkcsReq | MessageType::RenewalReq,
            RequestBody::CertificationRequest(der),
        ) => enroll(gateway, header, der, client_addr, early, trail).await,
        (MessageType::CertPoll, RequestBody::CertPoll { .. }) => poll(gateway, header, trail).await,
        (MessageType::GetCert, RequestBody::IssuerAndSerial { issuer, serial }) => {
            match gateway.store.certificate(issuer, serial).await? {
                Some(certificate) => Ok(Outcome::Issued {
                    certificates: vec![certificate],
                }),
                None => Err(Error::NotFound(
                    "no certificate with that issuer and serial".into(),
                )),
            }
        }
        (MessageType::GetCrl, RequestBody::IssuerAndSerial { issuer, .. }) => {
            let ca_subject = match gateway.ca.chain().first() {
                Some(ca) => CertificateFields::parse(ca)?.subject,
                None => &[][..],
            };
            if ca_subject.is_empty() || issuer[..] != *ca_subject {
                return Err(Error::NotFound(
                    "the CRL of an issuer we do not know".into(),
                ));
            }
            // Every replica's revocations, and those from before a restart or reload.
            crate::revocation::adopt(gateway).await?;
            Ok(Outcome::Crl(gateway.ca.crl().await?))
        }
        (MessageType::CertRep, _) => Err(Error::Refused("a CertRep is not a request".into())),
        _ => Err(Error::Refused(
            "the message content does not fit its messageType".into(),
        )),
    }
}

/// PKCSReq and RenewalReq (RFC 8894 §3.3.1): claim the transaction, check the right to
/// enroll, issue, remember.
async fn enroll<'g>(
    gateway: &'g Gateway,
    header: &RequestHeader,
    csr_der: &[u8],
    client_addr: Option<SocketAddr>,
    early: Option<Early<'g>>,
    trail: &mut Trail<'g>,
) -> Result<Outcome> {
    let csr = CertificationRequest::from_der(csr_der)?;
    let (key, in_flight, claimed_at) = match early {
        Some(early) => (early.key, early.claim, early.claimed_at),
        None => (transaction_key(gateway, header)?, None, Instant::now()),
    };

    let claim = match in_flight {
        Some(in_flight) => in_flight.await?,
        None => gateway.store.claim(&key, gateway.claim_lease).await?,
    };
    observe::claim(&claim);
    match claim {
        Claim::Won => {}
        Claim::Existing(Record::Issued { certificate }) => {
            tracing::info!(transaction_id = %header.transaction_id, "retry answered from the store");
            return Ok(from_store(gateway, certificate, "pkcsreq", trail));
        }
        Claim::Existing(Record::Pending | Record::InProgress) => return Ok(Outcome::Pending),
        Claim::Existing(Record::PendingUpstream { ticket }) => {
            return resume(gateway, &key, header, &ticket, trail).await
        }
        Claim::Conflict => {
            return Err(Error::Refused(
                "this transactionID belongs to another public key".into(),
            ))
        }
    }

    let answer_by = answer_by_for(gateway, claimed_at);
    match authorize_and_issue(gateway, &key, header, &csr, client_addr, answer_by).await {
        Ok(outcome) => {
            let pending = match &outcome {
                IssueOutcome::Pending { ticket, .. } => Some(ticket.clone()),
                IssueOutcome::Issued { .. } => None,
            };
            let reply = record(gateway, &key, header, outcome, Some(csr.subject()), trail).await?;
            // Recorded as pending: poll the CA in the background too (if it asks for it).
            if let Some(ticket) = pending {
                crate::pending::watch(gateway.ca.clone(), gateway.store.clone(), key, ticket);
            }
            Ok(reply)
        }
        Err(e) => {
            // Also after a withheld certificate (a failed Intune success notification):
            // the retry runs again instead of being answered with that certificate.
            if let Err(release) = gateway.store.release(&key).await {
                tracing::warn!(transaction_id = %header.transaction_id, error = %release, "claim not released; it lapses with its lease");
            }
            Err(e)
        }
    }
}

/// Records what the CA decided and turns it into the reply.
///
/// Every certificate a transaction gets is recorded here, whichever way it came (issued
/// at once, fetched by a CertPoll, a queued request submitted again), so this is where
/// the one `certificate issued` audit line per certificate is written. `subject`: the
/// CSR's, when the caller has it parsed.
async fn record<'g>(
    gateway: &'g Gateway,
    key: &TransactionKey,
    header: &RequestHeader,
    outcome: IssueOutcome,
    subject: Option<&str>,
    trail: &mut Trail<'g>,
) -> Result<Outcome> {
    match &outcome {
        IssueOutcome::Issued { ca, .. } | IssueOutcome::Pending { ca, .. } if !ca.is_empty() => {
            trail.answered_by = Some(ca.to_string());
        }
        _ => {}
    }
    match outcome {
        IssueOutcome::Issued {
            issued: new, chain, ..
        } => {
            let certificate = new.certificate;
            let fields = CertificateFields::parse(&certificate)?;
            let subject = match subject {
                Some(s) => std::borrow::Cow::Borrowed(s),
                None => crate::name::display(fields.subject)
                    .unwrap_or_default()
                    .into(),
            };
            tracing::info!(
                transaction_id = %header.transaction_id,
                serial = %hex::encode(&new.serial),
                subject = subject.as_ref(),
                ca = trail.answered_by.as_deref().unwrap_or(""),
                renewal = key.renewing.is_some() && gateway.renewal.allow,
                "certificate issued"
            );
            // The certificate exists now: losing it from the store must not lose it
            // from the reply. (If the store is down here, the claim stays InProgress
            // until its lease lapses: retries get PENDING meanwhile.) A shared store
            // gets it now and answers after the CertRep is signed (`operation`).
            match gateway
                .store
                .start_issued(key, fields.issuer, fields.serial, certificate.clone())
                .await
            {
                Some(recording) => trail.recording = Some(recording),
                None => {
                    if let Err(e) = gateway
                        .store
                        .issued(key, fields.issuer, fields.serial, certificate.clone())
                        .await
                    {
                        tracing::error!(transaction_id = %header.transaction_id, error = %e, "issued certificate not recorded for retries and GetCert");
                    }
                }
            }
            Ok(issued(certificate, chain))
        }
        IssueOutcome::Pending { ticket, .. } => {
            // Without the record the device's CertPoll could not be answered: an
            // error (503) here lets the device retry its PKCSReq instead.
            gateway
                .store
                .finish(
                    key,
                    Record::PendingUpstream {
                        ticket: ticket.into(),
                    },
                )
                .await?;
            tracing::info!(transaction_id = %header.transaction_id, "the CA deferred the request (PENDING)");
            Ok(Outcome::Pending)
        }
    }
}

/// A deferred request asked about again (CertPoll, or the PKCSReq resent): the CA is
/// asked once. Still undecided, or the CA is down: PENDING. Refused: FAILURE; the record
/// stays until it expires, and each later CertPoll asks the CA again.
async fn resume<'g>(
    gateway: &'g Gateway,
    key: &TransactionKey,
    header: &RequestHeader,
    ticket: &[u8],
    trail: &mut Trail<'g>,
) -> Result<Outcome> {
    if gateway.ca.resubmits(ticket) {
        return resubmit(gateway, key, header, ticket, trail).await;
    }
    ask(gateway, key, header, ticket, None, trail).await
}

/// A queued request (`Ca::resubmits`) submitted again, under the transaction's
/// resubmission lock: of concurrent CertPolls or resent PKCSReqs, on any replicas, one
/// submits and the others are answered PENDING, so that the transaction gets one
/// certificate. The lock is released once the outcome is recorded; if it cannot be
/// recorded, the lock stays until its lease lapses (as a claim does in `enroll`).
async fn resubmit<'g>(
    gateway: &'g Gateway,
    key: &TransactionKey,
    header: &RequestHeader,
    ticket: &[u8],
    trail: &mut Trail<'g>,
) -> Result<Outcome> {
    let lock = key.resubmission();
    let claimed_at = Instant::now();
    if gateway.store.claim(&lock, gateway.claim_lease).await? != Claim::Won {
        return Ok(Outcome::Pending);
    }
    // Read again under the lock: a request that held it a moment ago may have recorded
    // the outcome after this one read the record.
    let outcome = match gateway.store.get(key).await {
        Ok(Some(Record::PendingUpstream { ticket: current })) if *current == *ticket => {
            let answer_by = answer_by_for(gateway, claimed_at);
            let outcome = ask(gateway, key, header, ticket, answer_by, trail).await;
            // Recorded before anyone else may submit: the record, not the lock, is
            // what the next holder reads.
            if let Some(recording) = trail.recording.take() {
                if let Err(e) = recording.await {
                    tracing::error!(transaction_id = %header.transaction_id, error = %e, "issued certificate not recorded; the resubmission lock is kept until its lease lapses");
                    return outcome;
                }
            }
            outcome
        }
        Ok(Some(Record::Issued { certificate })) => {
            Ok(from_store(gateway, certificate, "certpoll", trail))
        }
        Ok(Some(_)) => Ok(Outcome::Pending),
        Ok(None) => Err(Error::NotFound("no such transaction".into())),
        Err(e) => Err(e),
    };
    if let Err(e) = gateway.store.release(&lock).await {
        tracing::warn!(transaction_id = %header.transaction_id, error = %e, "resubmission lock not released; it lapses with its lease");
    }
    outcome
}

/// The CA asked once about a deferred request (see [`resume`]); `answer_by` when it is
/// submitted again under the resubmission lock.
async fn ask<'g>(
    gateway: &'g Gateway,
    key: &TransactionKey,
    header: &RequestHeader,
    ticket: &[u8],
    answer_by: AnswerBy,
    trail: &mut Trail<'g>,
) -> Result<Outcome> {
    match gateway.ca.poll(ticket, answer_by).await {
        Ok(IssueOutcome::Pending { ticket: again, ca }) if again == ticket => {
            trail.answered_by = (!ca.is_empty()).then(|| ca.to_string());
            Ok(Outcome::Pending)
        }
        Ok(outcome) => record(gateway, key, header, outcome, None, trail).await,
        Err(Error::Unavailable(reason)) => {
            tracing::info!(transaction_id = %header.transaction_id, reason = %reason, "pending request: the CA is still unavailable");
            Ok(Outcome::Pending)
        }
        Err(e) => {
            // The background poll (`crate::pending`) may have fetched the certificate
            // while we asked, and an upstream that hands a certificate out once refuses
            // the second CertPoll: the recorded certificate wins over that refusal.
            if let Ok(Some(Record::Issued { certificate })) = gateway.store.get(key).await {
                return Ok(from_store(gateway, certificate, "certpoll", trail));
            }
            Err(e)
        }
    }
}

/// The right to enroll: a RenewalReq (or a PKCSReq signed with a certificate we issued,
/// as macOS renews) needs a valid certificate of our CA; anything else the challenge.
///
/// A challenge-validated request is reported back to the validator: after issuing and
/// before the certificate leaves (`notify_issued`; its failure withholds the
/// certificate, as the Intune validation API requires), or on a failure after the
/// validation (`notify_failed`: Intune's failureNotification).
async fn authorize_and_issue(
    gateway: &Gateway,
    key: &TransactionKey,
    header: &RequestHeader,
    csr: &CertificationRequest,
    client_addr: Option<SocketAddr>,
    answer_by: AnswerBy,
) -> Result<IssueOutcome> {
    let signed_by_ours = key.renewing.is_some();
    let renewing = match header.message_type {
        MessageType::RenewalReq if !gateway.renewal.allow => {
            return Err(Error::Refused("renewal is not allowed here".into()))
        }
        MessageType::RenewalReq if !signed_by_ours => {
            return Err(Error::Refused(
                "a RenewalReq must be signed with a valid certificate of this CA".into(),
            ))
        }
        MessageType::RenewalReq => true,
        _ => signed_by_ours && gateway.renewal.allow,
    };
    let ctx = ChallengeContext {
        csr,
        transaction_id: header.transaction_id.as_str(),
        client_addr,
        message_type: header.message_type,
    };
    // The challenge mode of the profile this CSR goes to, else the gateway's.
    let challenge = gateway
        .ca
        .challenge_for(csr)
        .and_then(|name| gateway.profile_challenges.get(name))
        .unwrap_or(&gateway.challenge);
    let validated = if renewing {
        if gateway.renewal.require_same_subject {
            let old = CertificateFields::parse(&header.signer_certificate)?;
            if old.subject != csr.subject_der() {
                return Err(Error::Refused(
                    "a renewal must keep the subject of the certificate it renews".into(),
                ));
            }
        }
        None
    } else {
        let result = challenge.validate(&ctx).await;
        metrics::challenge_validation(
            challenge.mode(),
            match &result {
                Ok(_) => "accepted",
                Err(Error::Unavailable(_)) => "error",
                Err(_) => "rejected",
            },
        );
        let validated = result?;
        if let Some(profile) = &validated.profile {
            tracing::info!(transaction_id = %header.transaction_id, profile, "the challenge validator named a profile");
        }
        Some(validated)
    };
    let route = Route {
        profile: validated.as_ref().and_then(|v| v.profile.as_deref()),
        answer_by,
    };
    let request = || IssueRequest {
        csr,
        renewing: renewing.then_some(&header.signer_certificate[..]),
    };
    // On the blocking pool already (see `pki_operation`): a CA that can sign right here
    // does, without another hop; the others (the router, upstream CAs) go through
    // `submit`.
    // (The challenge check may have taken the claim's time: the CA is not asked then.)
    let submitted = if ca::too_late(answer_by) {
        Err(Error::Unavailable(
            "not issued: the transaction's claim ends before a CA could answer".into(),
        ))
    } else {
        match gateway.ca.issue_blocking(request()) {
            Some(issued) => issued.map(|issued| IssueOutcome::Issued {
                issued,
                chain: gateway.ca.chain().to_vec(),
                ca: gateway.ca.name().into(),
            }),
            None => gateway.ca.submit(request(), route).await,
        }
    };
    let outcome = match submitted {
        Ok(outcome) => outcome,
        Err(e) => {
            if validated.is_some() {
                challenge.notify_failed(&ctx, &e).await;
            }
            return Err(e);
        }
    };
    if let IssueOutcome::Issued { issued, .. } = &outcome {
        // A certificate that comes back after the claim's end (an embedded CA's HSM that
        // hung), or that the validator does not acknowledge in time, is never used: the
        // device's retry may already hold the transaction.
        let acknowledged = if ca::too_late(answer_by) {
            Err(Error::Unavailable(
                "the CA answered after the transaction's claim ended".into(),
            ))
        } else if validated.is_some() {
            notify_issued(challenge.as_ref(), &ctx, issued, answer_by).await
        } else {
            Ok(())
        };
        if let Err(e) = acknowledged {
            withhold(gateway, header, issued, &e).await;
            if validated.is_some() {
                challenge.notify_failed(&ctx, &e).await;
            }
            return Err(e);
        }
    }
    Ok(outcome)
}

/// Withheld means never to be used: the certificate is revoked where it can be (the
/// embedded CA; on every replica's CRL through the store), and the claim released by the
/// caller, so that the retry issues another one.
async fn withhold(
    gateway: &Gateway,
    header: &RequestHeader,
    issued: &crate::ca::Issued,
    why: &Error,
) {
    tracing::warn!(
        transaction_id = %header.transaction_id,
        serial = %hex::encode(&issued.serial),
        error = %why,
        "certificate withheld (issued, never delivered)"
    );
    match gateway.ca.revoke_withheld(&issued.certificate) {
        Ok(true) => {
            tracing::info!(
                transaction_id = %header.transaction_id,
                serial = %hex::encode(&issued.serial),
                "withheld certificate revoked (on the next CRL)"
            );
            if let Err(record) = crate::revocation::record(gateway, &issued.serial).await {
                tracing::error!(
                    transaction_id = %header.transaction_id,
                    serial = %hex::encode(&issued.serial),
                    error = %record,
                    "withheld certificate revoked on this replica only: the store did not record it"
                );
            }
        }
        Ok(false) => tracing::warn!(
            transaction_id = %header.transaction_id,
            serial = %hex::encode(&issued.serial),
            "withheld certificate not revoked here: revoke it at the CA that issued it"
        ),
        Err(revoke) => tracing::error!(
            transaction_id = %header.transaction_id,
            serial = %hex::encode(&issued.serial),
            error = %revoke,
            "withheld certificate could not be revoked"
        ),
    }
}

/// The validator told of the issuance (`Challenge::notify_issued`), by `answer_by`: an
/// acknowledgement that would come after the transaction's claim lapsed counts as none,
/// so the certificate is withheld and revoked rather than recorded while the device's
/// retry, having won the lapsed claim, gets another one.
async fn notify_issued(
    challenge: &dyn crate::challenge::Challenge,
    ctx: &ChallengeContext<'_>,
    issued: &crate::ca::Issued,
    answer_by: AnswerBy,
) -> Result<()> {
    let Some(by) = answer_by else {
        return challenge.notify_issued(ctx, issued).await;
    };
    let left = by.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, challenge.notify_issued(ctx, issued))
        .await
        .unwrap_or_else(|_| {
            Err(Error::Unavailable(
                "the challenge validator did not acknowledge the issuance before the transaction's claim ends".into(),
            ))
        })
}

/// CertPoll (RFC 8894 §3.3.3): the state of a transaction, from the store.
async fn poll<'g>(
    gateway: &'g Gateway,
    header: &RequestHeader,
    trail: &mut Trail<'g>,
) -> Result<Outcome> {
    let key = transaction_key(gateway, header)?;
    match gateway.store.get(&key).await? {
        Some(Record::Issued { certificate }) => {
            Ok(from_store(gateway, certificate, "certpoll", trail))
        }
        Some(Record::Pending | Record::InProgress) => Ok(Outcome::Pending),
        Some(Record::PendingUpstream { ticket }) => {
            resume(gateway, &key, header, &ticket, trail).await
        }
        None => Err(Error::NotFound("no such transaction".into())),
    }
}

/// The transaction a request belongs to: its transactionID, its signer's key, and, when
/// it is signed by a valid certificate of our CA (a renewal), that certificate.
/// What a PKCSReq or RenewalReq knows before its envelope is opened: its transaction
/// key, and the claim already on its way to a shared store (`Store::start_claim`), so
/// that the store's round trip overlaps the RA decryption instead of following it.
struct Early<'g> {
    key: TransactionKey,
    claim: Option<InFlight<'g, Claim>>,
    /// When the claim was sent: its lease counts from (at the latest) then.
    claimed_at: Instant,
}

impl<'g> Early<'g> {
    /// After the signature check, before the decryption. `None` for other message
    /// types, or when the key cannot be made (`enroll` then says why).
    async fn start(gateway: &'g Gateway, header: &RequestHeader) -> Option<Self> {
        if !matches!(
            header.message_type,
            MessageType::PkcsReq | MessageType::RenewalReq
        ) {
            return None;
        }
        let key = transaction_key(gateway, header).ok()?;
        let claimed_at = Instant::now();
        let claim = gateway.store.start_claim(&key, gateway.claim_lease).await;
        Some(Early {
            key,
            claim,
            claimed_at,
        })
    }
}

/// When a CA must have answered a request whose claim was sent at `claimed_at` (see
/// [`AnswerBy`]): the lease's end, less the time recording the answer may take. The
/// store's lease starts when the claim reaches it, later than `claimed_at`: this errs
/// on the early side.
fn answer_by_for(gateway: &Gateway, claimed_at: Instant) -> AnswerBy {
    Some(
        claimed_at
            + gateway
                .claim_lease
                .saturating_sub(gateway.store.record_bound()),
    )
}

fn transaction_key(gateway: &Gateway, header: &RequestHeader) -> Result<TransactionKey> {
    let signer = CertificateFields::parse(&header.signer_certificate)?;
    let renewing = gateway
        .ca
        .issued_and_valid(&header.signer_certificate)
        .then_some(&header.signer_certificate[..]);
    Ok(TransactionKey::new(
        header.transaction_id.clone(),
        signer.spki,
        renewing,
    ))
}

/// SUCCESS with a certificate recorded earlier, for a retry (`what`: "pkcsreq") or a
/// CertPoll ("certpoll").
fn from_store(
    gateway: &Gateway,
    certificate: Arc<[u8]>,
    what: &'static str,
    trail: &mut Trail<'_>,
) -> Outcome {
    observe::retry_answered(what);
    trail.answered_by = Some("store".into());
    let chain = gateway.ca.chain_of(&certificate);
    issued(certificate, chain)
}

/// SUCCESS with the new certificate first, then the chain of the CA that issued it
/// (what micromdm and NDES send, and what clients that build the chain from the reply
/// expect).
fn issued(certificate: Arc<[u8]>, chain: Vec<Arc<[u8]>>) -> Outcome {
    let mut certificates = Vec::with_capacity(1 + chain.len());
    certificates.push(certificate);
    certificates.extend(chain);
    Outcome::Issued { certificates }
}
