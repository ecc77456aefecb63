//! Where transactions are remembered, so that a retried request gets the same answer
//! and never a second certificate (RFC 8894 §3.2.1.1: "the transactionID MUST be kept
//! the same for all messages in one transaction").
//!
//! A transaction is keyed by its transactionID *and* a hash of the requester's public
//! key: clients derive the transactionID from the key, so a reused key repeats it, and a
//! different key presenting the same transactionID is someone else (refused).
//!
//! The in-process [`memory::MemoryStore`] serves one node; the shared
//! [`redis::RedisStore`] (same trait) serves a fleet of replicas behind a load balancer,
//! so that a retry landing on another replica is answered from the same record.

mod cluster;
mod codec;
mod master;
pub mod memory;
mod migration;
pub mod observe;
mod overlap;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use crate::ca::BoxFuture;
use crate::error::Result;
use crate::scep::message::TransactionId;

/// The identity of one transaction.
///
/// A renewal is its own transaction even when the client keeps its key and therefore its
/// transactionID (micromdm scepclient does): it is told apart by the certificate it
/// renews, so a renewal is never answered with the certificate it is renewing, while a
/// retry of the same renewal still is answered from the store.
///
/// It is made once per request, and its `claimant` is that request's: the same
/// transaction retried is a new `TransactionKey` with another claimant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransactionKey {
    pub id: TransactionId,
    /// SHA-256 of the certificate being renewed, for requests signed by one of ours.
    pub renewing: Option<[u8; 32]>,
    /// SHA-256 of the DER SubjectPublicKeyInfo of the request's signer certificate.
    pub key_hash: [u8; 32],
    /// Random, one per request: whose claim an InProgress record is. Every request of a
    /// transaction has the same id and key hash, so without it a request could not tell
    /// its own claim from a retry's, and would release a claim that lapsed and was won
    /// by the retry (which a third retry could then win: two certificates). With it, a
    /// claim is released only by the request that made it, and a claim sent again after
    /// a lost answer reads as won, not as somebody else's.
    pub claimant: [u8; 16],
    /// This is the transaction's resubmission lock ([`TransactionKey::resubmission`]),
    /// not its record.
    pub resubmission: bool,
}

impl TransactionKey {
    pub fn new(id: TransactionId, signer_spki: &[u8], renewing: Option<&[u8]>) -> Self {
        let mut claimant = [0u8; 16];
        aws_lc_rs::rand::fill(&mut claimant).expect("the system RNG does not fail");
        TransactionKey {
            id,
            renewing: renewing.map(sha256),
            key_hash: sha256(signer_spki),
            claimant,
            resubmission: false,
        }
    }

    /// The lock a request holds while it submits a queued request to a CA again (the
    /// CertPoll of a transaction that a `queue_when_down` profile deferred while every
    /// CA was down). The transaction's record says PENDING to every request meanwhile,
    /// so without a lock concurrent CertPolls, on one replica or several, would each
    /// submit it: two certificates. It is claimed, and released, like a transaction of
    /// its own beside the record; same id, key hash and claimant.
    pub fn resubmission(&self) -> TransactionKey {
        TransactionKey {
            resubmission: true,
            ..self.clone()
        }
    }

    /// What the store indexes by: the transactionID and, for renewals, the certificate
    /// renewed. The key hash is compared, not indexed, so that another key presenting the
    /// same transactionID is detected as a conflict.
    pub fn slot(&self) -> Slot {
        (self.id.clone(), self.renewing, self.resubmission)
    }
}

/// See [`TransactionKey::slot`]: transactionID, renewed certificate, resubmission lock.
pub type Slot = (TransactionId, Option<[u8; 32]>, bool);

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// What is known of a transaction that has been claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A replica is working on it right now (until the lease runs out).
    InProgress,
    /// The CA has not decided yet; CertPoll answers PENDING.
    Pending,
    /// An upstream CA answered PENDING, or every CA of a queueing profile was down:
    /// CertPoll asks again with this ticket (opaque here; see `ca::Ca::poll`).
    PendingUpstream { ticket: Arc<[u8]> },
    /// The certificate was issued; every retry and CertPoll gets it again.
    Issued { certificate: Arc<[u8]> },
}

/// The answer to [`Store::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody had it: the caller now owns the transaction and must `finish` or `release`.
    Won,
    /// Already known: answer from the record.
    Existing(Record),
    /// The transactionID belongs to another public key.
    Conflict,
}

/// What is kept of a one-time challenge password (never the password itself: it is
/// stored under its SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OtpRecord {
    /// Who asked for it: the bound on outstanding passwords counts per requester.
    pub requester: String,
    /// A regex the CSR's commonName must match whole, if the password is bound to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cn_pattern: Option<String>,
    /// Unix seconds after which it is no longer valid (the store also expires it).
    pub expires_at: u64,
}

/// A recorded revocation ([`Store::revoke`]): the serial (INTEGER content bytes) and
/// since when (Unix seconds).
pub type Revocation = (Vec<u8>, u64);

/// The answer to [`Store::put_otp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtpPut {
    Stored,
    /// The requester already has `max_outstanding` unused, unexpired passwords (NDES:
    /// "The password cache is full").
    CacheFull,
}

fn no_otp<'a, T: Send + 'a>() -> BoxFuture<'a, Result<T>> {
    Box::pin(std::future::ready(Err(crate::error::Error::Unavailable(
        "this store does not keep one-time passwords".into(),
    ))))
}

thread_local! {
    /// Set by [`blocking_scope`]; read by [`may_block`].
    static MAY_BLOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While the returned guard lives, store calls made *on this thread* may do their
/// network I/O synchronously, blocking the thread.
///
/// Only `enroll.rs` takes it, on the tokio blocking-pool thread that runs a whole
/// PKIOperation (`Handle::block_on`) of a configuration that may block (an HSM key, an
/// upstream CA, a webhook); an operation run inline on a worker never has it. There a shared store talks to Redis over a plain
/// blocking connection (write, then sleep in `read` until the answer): one wake-up per
/// round trip, where the async connection costs four or five cross-thread wake-ups
/// (blocking thread → connection task on a worker → back), which on a VM cost more CPU
/// than the Redis command itself (bench/README.md, "Redis store"). Worker threads never
/// hold the guard, so nothing blocks the reactor.
pub fn blocking_scope() -> BlockingScope {
    BlockingScope {
        previous: MAY_BLOCK.with(|b| b.replace(true)),
    }
}

/// See [`blocking_scope`].
#[must_use = "the scope ends when the guard is dropped"]
pub struct BlockingScope {
    previous: bool,
}

impl Drop for BlockingScope {
    fn drop(&mut self) {
        MAY_BLOCK.with(|b| b.set(self.previous));
    }
}

/// Whether this thread is inside a [`blocking_scope`].
pub(crate) fn may_block() -> bool {
    MAY_BLOCK.with(std::cell::Cell::get)
}

/// A store call already sent ([`Store::start_claim`], [`Store::start_issued`]): awaiting
/// it gives the answer the ordinary call would.
///
/// A claim dropped without being awaited (the request turned out invalid before it
/// needed the claim) still reads its answer and releases a claim it won, so that the
/// transaction is not held until its lease runs out; a dropped record is still written.
pub type InFlight<'a, T> = BoxFuture<'a, Result<T>>;

/// The transaction store.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Atomically claims `key` for `lease` if it is unknown; otherwise tells what is known.
    /// A claim this same `key` (this request) already holds is [`Claim::Won`] again: the
    /// command may have landed although its answer was lost.
    fn claim<'a>(
        &'a self,
        key: &'a TransactionKey,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim>>;

    /// Sends a claim now and reads its answer when the returned [`InFlight`] is awaited,
    /// so that a shared store's round trip runs while this thread decrypts the request
    /// (`enroll.rs`). `None` when there is nothing to gain (an in-process store) or the
    /// claim could not be sent: the caller then calls [`Store::claim`] when it needs the
    /// answer.
    fn start_claim<'a>(
        &'a self,
        _key: &TransactionKey,
        _lease: Duration,
    ) -> BoxFuture<'a, Option<InFlight<'a, Claim>>> {
        Box::pin(std::future::ready(None))
    }

    /// [`Store::issued`], sent now and answered when the returned [`InFlight`] is
    /// awaited, so that a shared store's round trip overlaps the CertRep's signature.
    /// `None` as for [`Store::start_claim`]: the caller then calls [`Store::issued`].
    fn start_issued<'a>(
        &'a self,
        _key: &TransactionKey,
        _issuer: &[u8],
        _serial: &[u8],
        _certificate: Arc<[u8]>,
    ) -> BoxFuture<'a, Option<InFlight<'a, ()>>> {
        Box::pin(std::future::ready(None))
    }

    /// Records the final state of a claimed transaction (Issued or Pending).
    fn finish<'a>(&'a self, key: &'a TransactionKey, record: Record) -> BoxFuture<'a, Result<()>>;

    /// Forgets a claimed transaction that ended without a certificate (a refusal, an
    /// outage), so that the client's retry runs again instead of replaying a failure.
    /// Only this request's own claim (`key.claimant`) is forgotten: never a recorded
    /// outcome, nor a claim that lapsed and was won by a retry.
    fn release<'a>(&'a self, key: &'a TransactionKey) -> BoxFuture<'a, Result<()>>;

    /// Reads a transaction without claiming it (CertPoll).
    fn get<'a>(&'a self, key: &'a TransactionKey) -> BoxFuture<'a, Result<Option<Record>>>;

    /// Keeps an issued certificate findable by issuer and serial (GetCert).
    fn put_certificate<'a>(
        &'a self,
        issuer: &'a [u8],
        serial: &'a [u8],
        certificate: Arc<[u8]>,
    ) -> BoxFuture<'a, Result<()>>;

    /// Finds a certificate by its issuer Name (DER) and serial (INTEGER content bytes).
    fn certificate<'a>(
        &'a self,
        issuer: &'a [u8],
        serial: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<Arc<[u8]>>>>;

    /// Records an issued certificate: findable by issuer and serial, and the final state
    /// of its transaction. One call so that a shared store can send both writes in one
    /// round trip (the happy path then costs two: the claim and this).
    fn issued<'a>(
        &'a self,
        key: &'a TransactionKey,
        issuer: &'a [u8],
        serial: &'a [u8],
        certificate: Arc<[u8]>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let stored = self
                .put_certificate(issuer, serial, certificate.clone())
                .await;
            self.finish(key, Record::Issued { certificate }).await?;
            stored
        })
    }

    /// Records that the certificate `serial` (INTEGER content bytes) of `issuer` (its
    /// Name, DER) is revoked since `at` (Unix seconds); a serial already recorded keeps
    /// its first time. A shared store keeps it for every replica's CRL and beyond a
    /// restart, without expiry (RFC 5280 §3.3: an entry may leave the CRL only after
    /// the certificate expires).
    fn revoke<'a>(
        &'a self,
        issuer: &'a [u8],
        serial: &'a [u8],
        at: u64,
    ) -> BoxFuture<'a, Result<()>>;

    /// Every revocation recorded for `issuer`: (serial, Unix seconds), in no order.
    fn revocations<'a>(&'a self, issuer: &'a [u8]) -> BoxFuture<'a, Result<Vec<Revocation>>>;

    /// Stores a one-time password's record under `hash` (SHA-256 of the password) for
    /// `ttl`, unless its requester already has `max_outstanding` live ones: the count
    /// and the insertion are one atomic step, across replicas for a shared store.
    fn put_otp<'a>(
        &'a self,
        _hash: &'a [u8; 32],
        _record: &'a OtpRecord,
        _ttl: Duration,
        _max_outstanding: usize,
    ) -> BoxFuture<'a, Result<OtpPut>> {
        no_otp()
    }

    /// Removes and returns the record under `hash`, atomically: of any number of
    /// concurrent takes, on any replicas, exactly one gets it.
    fn take_otp<'a>(&'a self, _hash: &'a [u8; 32]) -> BoxFuture<'a, Result<Option<OtpRecord>>> {
        no_otp()
    }

    /// The requester's live (unused, unexpired) passwords.
    fn outstanding_otps<'a>(&'a self, _requester: &'a str) -> BoxFuture<'a, Result<usize>> {
        no_otp()
    }

    /// How long recording an outcome may take at most: the last stretch of a claim's
    /// lease is kept for it, the CA must answer before (`ca::AnswerBy`). Zero for an
    /// in-process store; a shared store's command timeout, twice (one retry on a new
    /// connection).
    fn record_bound(&self) -> Duration {
        Duration::ZERO
    }

    /// Whether the store can serve requests now (readiness). Bounded in time.
    fn health(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
}
