//! Background CertPoll of requests an upstream CA deferred (PENDING, RFC 8894 §3.3.2).
//!
//! When an upstream CA answers PENDING, the transaction is recorded as
//! [`Record::PendingUpstream`] and the device polls us with CertPoll. Without help, each
//! device CertPoll costs an upstream round trip, and a certificate that an operator
//! approved is only fetched when the device comes back. So, beside that, one tokio task
//! per pending transaction polls the CA every `[[cas]] poll_interval_secs` (at most
//! `poll_attempts` times) and records the certificate in the store as soon as it is
//! issued: the device's next CertPoll is then answered from the store.
//!
//! Bounds: at most [`MAX_POLLERS`] such tasks run at once in a process; a pending
//! request beyond that is only polled on the device's CertPoll (as before). A task stops
//! when the certificate is recorded, when the record is no longer pending (the device's
//! CertPoll got the answer first, or the record expired), when the CA refuses (the
//! record stays, so the device's CertPoll asks once more and gets the FAILURE), or after
//! its attempts. An outage of the CA only costs an attempt. Tasks are not persisted: a
//! restart forgets them and device CertPolls take over.

use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

use crate::ca::{Ca, IssueOutcome};
use crate::cms::signed::CertificateFields;
use crate::error::Error;
use crate::store::{Record, Store, TransactionKey};

/// Background pollers running at once, at most (per process).
pub const MAX_POLLERS: usize = 1024;

fn pollers() -> &'static Arc<Semaphore> {
    static POLLERS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    POLLERS.get_or_init(|| Arc::new(Semaphore::new(MAX_POLLERS)))
}

/// Starts polling the CA about `ticket` (the pending record of `key`) in the background,
/// if the CA asks for it ([`Ca::poll_schedule`]) and the cap allows. Must run inside the
/// tokio runtime.
pub fn watch(ca: Arc<dyn Ca>, store: Arc<dyn Store>, key: TransactionKey, ticket: Vec<u8>) {
    let Some((interval, attempts)) = ca.poll_schedule(&ticket) else {
        return;
    };
    let Ok(permit) = pollers().clone().try_acquire_owned() else {
        tracing::info!(transaction_id = %key.id, "too many pending requests polled in the background: this one waits for the device's CertPoll");
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        poll_until_decided(ca.as_ref(), store.as_ref(), &key, interval, attempts).await;
    });
}

async fn poll_until_decided(
    ca: &dyn Ca,
    store: &dyn Store,
    key: &TransactionKey,
    interval: std::time::Duration,
    attempts: u32,
) {
    let id = &key.id;
    for _ in 0..attempts {
        tokio::time::sleep(interval).await;
        // The ticket as recorded now: the device's CertPoll may have moved it on.
        let ticket = match store.get(key).await {
            Ok(Some(Record::PendingUpstream { ticket })) => ticket,
            Ok(_) => return, // answered, expired or gone: nothing left to do
            Err(e) => {
                tracing::info!(transaction_id = %id, error = %e, "background poll: store unavailable, trying later");
                continue;
            }
        };
        match ca.poll(&ticket, None).await {
            Ok(IssueOutcome::Issued { issued, ca, .. }) => {
                let fields = match CertificateFields::parse(&issued.certificate) {
                    Ok(fields) => fields,
                    Err(e) => {
                        tracing::error!(transaction_id = %id, error = %e, "background poll: unreadable certificate");
                        return;
                    }
                };
                match store
                    .issued(
                        key,
                        fields.issuer,
                        fields.serial,
                        issued.certificate.clone(),
                    )
                    .await
                {
                    Ok(()) => {
                        tracing::info!(transaction_id = %id, ca = %ca, serial = %hex::encode(&issued.serial), "pending request issued: certificate recorded by the background poll")
                    }
                    // The CA handed it over once; the device's CertPoll asks the CA again.
                    Err(e) => {
                        tracing::error!(transaction_id = %id, ca = %ca, error = %e, "background poll: issued certificate not recorded")
                    }
                }
                return;
            }
            Ok(IssueOutcome::Pending { ticket: again, .. }) if again[..] == ticket[..] => {}
            Ok(IssueOutcome::Pending { ticket: again, .. }) => {
                // A new ticket is written only while the record is still pending (not
                // atomic: a device CertPoll answered in between could be overwritten, but
                // upstream tickets do not change between polls in practice).
                let still_pending = matches!(
                    store.get(key).await,
                    Ok(Some(Record::PendingUpstream { .. }))
                );
                if still_pending {
                    let record = Record::PendingUpstream {
                        ticket: again.into(),
                    };
                    if let Err(e) = store.finish(key, record).await {
                        tracing::warn!(transaction_id = %id, error = %e, "background poll: new ticket not recorded");
                    }
                }
            }
            Err(Error::Unavailable(reason)) => {
                tracing::debug!(transaction_id = %id, reason = %reason, "background poll: CA unavailable, trying later");
            }
            Err(e) => {
                tracing::info!(transaction_id = %id, error = %e, "background poll stopped: the CA refused the pending request");
                return;
            }
        }
    }
    tracing::info!(transaction_id = %id, attempts, "background poll gave up; the device's CertPoll still asks the CA");
}
