//! The in-process store: two `dashmap`s, for one gateway node.
//!
//! dashmap shards its locks, and no lock is held across an await (every method does its
//! map work synchronously and returns a ready future).
//!
//! Memory is bounded by `max_entries` transactions (about 2.5 KB each with an issued
//! certificate). A full store first drops what has expired, then the oldest *finished*
//! transactions (an issued certificate: what a very late retry would be answered with),
//! a tenth of the bound at a time; claims in progress and pending requests are never
//! dropped, so that no transaction is issued twice while it is live. A retry of an evicted
//! transaction is enrolled again. Only when everything left is live does the store refuse
//! (HTTP 503): a store sized below the requests in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;

use super::{Claim, OtpPut, OtpRecord, Record, Revocation, Slot, Store, TransactionKey};
use crate::ca::BoxFuture;
use crate::error::{Error, Result};

#[derive(Debug)]
struct Entry {
    key_hash: [u8; 32],
    record: Record,
    /// The request that claimed it ([`TransactionKey::claimant`]); read while InProgress.
    claimant: [u8; 16],
    /// When this entry may be dropped: the lease end while InProgress, else the TTL.
    expires: Instant,
}

/// Issued certificates by (issuer, serial), with their expiry.
type Certificates = DashMap<(Vec<u8>, Vec<u8>), (Arc<[u8]>, Instant)>;

/// Issuer → serial → revoked since (Unix seconds).
type Revocations = HashMap<Vec<u8>, HashMap<Vec<u8>, u64>>;

/// Transactions and issued certificates in memory.
#[derive(Debug)]
pub struct MemoryStore {
    transactions: DashMap<Slot, Entry>,
    certificates: Certificates,
    /// One-time passwords by SHA-256. One lock: issuing checks the requester's count
    /// and inserts in one step; admin-rate traffic, never on the hot path.
    otps: Mutex<HashMap<[u8; 32], (OtpRecord, Instant)>>,
    /// Revocations by issuer, then serial → Unix seconds. Outlives a configuration
    /// reload that rebuilds the CA (the store is kept), not the process.
    revocations: Mutex<Revocations>,
    ttl: Duration,
    max_entries: usize,
    /// Held while a full store evicts, so that concurrent claims do not all scan it.
    evicting: Mutex<()>,
}

impl MemoryStore {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        MemoryStore {
            transactions: DashMap::new(),
            certificates: DashMap::new(),
            otps: Mutex::new(HashMap::new()),
            revocations: Mutex::new(HashMap::new()),
            ttl,
            max_entries,
            evicting: Mutex::new(()),
        }
    }

    /// Starts a task that sweeps expired entries every `every`, so that memory follows
    /// the live transactions rather than the busiest hour since start. The task holds a
    /// weak reference and ends with the store. Needs a tokio runtime.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match store.upgrade() {
                    Some(store) => store.sweep(),
                    None => break,
                }
            }
        });
    }

    /// Drops expired entries. Called by the sweeper task, and when full.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.transactions.retain(|_, e| e.expires > now);
        self.certificates.retain(|_, (_, expires)| *expires > now);
        self.otp_table().retain(|_, (_, expires)| *expires > now);
    }

    fn otp_table(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (OtpRecord, Instant)>> {
        // A panic while holding it cannot leave the map half-updated: recover it.
        self.otps.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ensure_room(&self) -> Result<()> {
        if self.transactions.len() < self.max_entries {
            return Ok(());
        }
        // One claim makes room for the next tenth; the others wait for it briefly.
        let _evicting = self.evicting.lock().unwrap_or_else(|e| e.into_inner());
        if self.transactions.len() >= self.max_entries {
            self.sweep();
        }
        if self.transactions.len() >= self.max_entries {
            let evicted = self.evict_oldest_finished((self.max_entries / 10).max(1));
            if evicted > 0 {
                super::observe::evicted(evicted);
                tracing::warn!(
                    evicted,
                    max_transactions = self.max_entries,
                    "the transaction store is full: the oldest finished transactions were dropped before their TTL (raise [store] max_transactions, or use Redis)"
                );
            }
        }
        if self.transactions.len() >= self.max_entries {
            return Err(Error::Unavailable(
                "the transaction store is full of live transactions".into(),
            ));
        }
        Ok(())
    }

    /// Drops about `n` of the finished transactions that would expire first (the oldest),
    /// and the GetCert entries as old; returns how many transactions went.
    fn evict_oldest_finished(&self, n: usize) -> usize {
        let mut finished: Vec<Instant> = self
            .transactions
            .iter()
            .filter(|e| matches!(e.record, Record::Issued { .. }))
            .map(|e| e.expires)
            .collect();
        if finished.is_empty() {
            return 0;
        }
        let nth = n.min(finished.len()) - 1;
        let (_, cutoff, _) = finished.select_nth_unstable(nth);
        let cutoff = *cutoff;
        let before = self.transactions.len();
        self.transactions
            .retain(|_, e| !(matches!(e.record, Record::Issued { .. }) && e.expires <= cutoff));
        self.certificates
            .retain(|_, (_, expires)| *expires > cutoff);
        before.saturating_sub(self.transactions.len())
    }

    fn claim_now(&self, key: &TransactionKey, lease: Duration) -> Result<Claim> {
        let now = Instant::now();
        self.ensure_room()?;
        match self.transactions.entry(key.slot()) {
            MapEntry::Occupied(mut slot) => {
                let entry = slot.get_mut();
                if entry.expires <= now {
                    // A lapsed lease or an expired record: start over.
                    *entry = Entry {
                        key_hash: key.key_hash,
                        record: Record::InProgress,
                        claimant: key.claimant,
                        expires: now + lease,
                    };
                    Ok(Claim::Won)
                } else if entry.key_hash != key.key_hash {
                    Ok(Claim::Conflict)
                } else if entry.record == Record::InProgress && entry.claimant == key.claimant {
                    Ok(Claim::Won)
                } else {
                    Ok(Claim::Existing(entry.record.clone()))
                }
            }
            MapEntry::Vacant(slot) => {
                slot.insert(Entry {
                    key_hash: key.key_hash,
                    record: Record::InProgress,
                    claimant: key.claimant,
                    expires: now + lease,
                });
                Ok(Claim::Won)
            }
        }
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

impl Store for MemoryStore {
    fn claim<'a>(
        &'a self,
        key: &'a TransactionKey,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim>> {
        ready(self.claim_now(key, lease))
    }

    fn finish<'a>(&'a self, key: &'a TransactionKey, record: Record) -> BoxFuture<'a, Result<()>> {
        let expires = Instant::now() + self.ttl;
        self.transactions.insert(
            key.slot(),
            Entry {
                key_hash: key.key_hash,
                record,
                claimant: key.claimant,
                expires,
            },
        );
        ready(Ok(()))
    }

    fn release<'a>(&'a self, key: &'a TransactionKey) -> BoxFuture<'a, Result<()>> {
        self.transactions.remove_if(&key.slot(), |_, e| {
            e.key_hash == key.key_hash
                && e.record == Record::InProgress
                && e.claimant == key.claimant
        });
        ready(Ok(()))
    }

    fn revoke<'a>(
        &'a self,
        issuer: &'a [u8],
        serial: &'a [u8],
        at: u64,
    ) -> BoxFuture<'a, Result<()>> {
        let mut revocations = self.revocations.lock().unwrap_or_else(|e| e.into_inner());
        revocations
            .entry(issuer.to_vec())
            .or_default()
            .entry(serial.to_vec())
            .or_insert(at);
        ready(Ok(()))
    }

    fn revocations<'a>(&'a self, issuer: &'a [u8]) -> BoxFuture<'a, Result<Vec<Revocation>>> {
        let revocations = self.revocations.lock().unwrap_or_else(|e| e.into_inner());
        let list = revocations.get(issuer).map_or_else(Vec::new, |serials| {
            serials.iter().map(|(s, at)| (s.clone(), *at)).collect()
        });
        ready(Ok(list))
    }

    fn get<'a>(&'a self, key: &'a TransactionKey) -> BoxFuture<'a, Result<Option<Record>>> {
        let now = Instant::now();
        let found = self.transactions.get(&key.slot()).and_then(|e| {
            (e.key_hash == key.key_hash && e.expires > now).then(|| e.record.clone())
        });
        ready(Ok(found))
    }

    fn put_certificate<'a>(
        &'a self,
        issuer: &'a [u8],
        serial: &'a [u8],
        certificate: Arc<[u8]>,
    ) -> BoxFuture<'a, Result<()>> {
        let expires = Instant::now() + self.ttl;
        self.certificates
            .insert((issuer.to_vec(), serial.to_vec()), (certificate, expires));
        ready(Ok(()))
    }

    fn certificate<'a>(
        &'a self,
        issuer: &'a [u8],
        serial: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<Arc<[u8]>>>> {
        let found = self
            .certificates
            .get(&(issuer.to_vec(), serial.to_vec()))
            .map(|e| e.0.clone());
        ready(Ok(found))
    }

    fn put_otp<'a>(
        &'a self,
        hash: &'a [u8; 32],
        record: &'a OtpRecord,
        ttl: Duration,
        max_outstanding: usize,
    ) -> BoxFuture<'a, Result<OtpPut>> {
        let now = Instant::now();
        let mut table = self.otp_table();
        table.retain(|_, (_, expires)| *expires > now);
        let outstanding = table
            .values()
            .filter(|(r, _)| r.requester == record.requester)
            .count();
        let result = if outstanding >= max_outstanding {
            Ok(OtpPut::CacheFull)
        } else if table.len() >= self.max_entries {
            Err(Error::Unavailable(
                "the one-time password store is full".into(),
            ))
        } else {
            table.insert(*hash, (record.clone(), now + ttl));
            Ok(OtpPut::Stored)
        };
        ready(result)
    }

    fn take_otp<'a>(&'a self, hash: &'a [u8; 32]) -> BoxFuture<'a, Result<Option<OtpRecord>>> {
        let now = Instant::now();
        let taken = self
            .otp_table()
            .remove(hash)
            .and_then(|(record, expires)| (expires > now).then_some(record));
        ready(Ok(taken))
    }

    fn outstanding_otps<'a>(&'a self, requester: &'a str) -> BoxFuture<'a, Result<usize>> {
        let now = Instant::now();
        let count = self
            .otp_table()
            .values()
            .filter(|(r, expires)| r.requester == requester && *expires > now)
            .count();
        ready(Ok(count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scep::message::TransactionId;

    fn key(id: &str, spki: &[u8]) -> TransactionKey {
        TransactionKey::new(TransactionId::new(id.into()).unwrap(), spki, None)
    }

    #[tokio::test]
    async fn a_transaction_is_claimed_once_and_replayed_after() {
        let store = MemoryStore::new(Duration::from_secs(60), 10);
        let k = key("t1", b"key-a");
        assert_eq!(
            store.claim(&k, Duration::from_secs(5)).await.unwrap(),
            Claim::Won
        );
        // A retry (another request of the transaction) finds it in progress.
        assert_eq!(
            store
                .claim(&key("t1", b"key-a"), Duration::from_secs(5))
                .await
                .unwrap(),
            Claim::Existing(Record::InProgress)
        );
        let cert: Arc<[u8]> = Arc::from(&b"cert"[..]);
        store
            .finish(
                &k,
                Record::Issued {
                    certificate: cert.clone(),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            store.claim(&k, Duration::from_secs(5)).await.unwrap(),
            Claim::Existing(Record::Issued { certificate: cert })
        );
        assert_eq!(
            store
                .claim(&key("t1", b"key-b"), Duration::from_secs(5))
                .await
                .unwrap(),
            Claim::Conflict
        );
        // A renewal with the same key and transactionID is a transaction of its own.
        let renewal = TransactionKey::new(k.id.clone(), b"key-a", Some(b"old cert"));
        assert_eq!(
            store.claim(&renewal, Duration::from_secs(5)).await.unwrap(),
            Claim::Won
        );
    }

    #[tokio::test]
    async fn a_released_or_lapsed_claim_can_be_won_again() {
        let store = MemoryStore::new(Duration::from_secs(60), 10);
        let k = key("t2", b"key-a");
        assert_eq!(
            store.claim(&k, Duration::from_secs(5)).await.unwrap(),
            Claim::Won
        );
        store.release(&k).await.unwrap();
        assert_eq!(store.claim(&k, Duration::ZERO).await.unwrap(), Claim::Won);
        // The zero lease has lapsed already: another claim wins.
        assert_eq!(
            store.claim(&k, Duration::from_secs(5)).await.unwrap(),
            Claim::Won
        );
    }

    #[tokio::test]
    async fn a_store_full_of_live_claims_refuses_instead_of_growing() {
        let store = MemoryStore::new(Duration::from_secs(60), 2);
        for i in 0..2 {
            store
                .claim(&key(&format!("t{i}"), b"k"), Duration::from_secs(5))
                .await
                .unwrap();
        }
        assert!(matches!(
            store.claim(&key("t9", b"k"), Duration::from_secs(5)).await,
            Err(Error::Unavailable(_))
        ));
    }

    /// Full: the oldest finished transactions (and their GetCert entries) make room; a
    /// claim in progress or a pending request is never dropped.
    #[tokio::test]
    async fn a_full_store_drops_its_oldest_finished_transactions_never_live_ones() {
        let lease = Duration::from_secs(30);
        let store = MemoryStore::new(Duration::from_secs(600), 20);
        let live = key("live", b"k");
        assert_eq!(store.claim(&live, lease).await.unwrap(), Claim::Won);
        let pending = key("pending", b"k");
        store.claim(&pending, lease).await.unwrap();
        store.finish(&pending, Record::Pending).await.unwrap();
        for i in 0..18u8 {
            let k = key(&format!("done-{i:02}"), b"k");
            store.claim(&k, lease).await.unwrap();
            store
                .issued(&k, b"issuer", &[i], Arc::from(&[i][..]))
                .await
                .unwrap();
            // Distinct expiry instants, in order.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Full (20): the next claim drops the oldest tenth (2) of the finished ones.
        assert_eq!(
            store.claim(&key("new", b"k"), lease).await.unwrap(),
            Claim::Won
        );
        assert_eq!(store.get(&key("done-00", b"k")).await.unwrap(), None);
        assert_eq!(store.get(&key("done-01", b"k")).await.unwrap(), None);
        assert!(store.certificate(b"issuer", &[0]).await.unwrap().is_none());
        assert!(store.get(&key("done-02", b"k")).await.unwrap().is_some());
        assert!(store.certificate(b"issuer", &[2]).await.unwrap().is_some());
        assert_eq!(store.get(&live).await.unwrap(), Some(Record::InProgress));
        assert_eq!(store.get(&pending).await.unwrap(), Some(Record::Pending));
        assert_eq!(store.transactions.len(), 19);
    }

    #[tokio::test]
    async fn certificates_are_found_by_issuer_and_serial() {
        let store = MemoryStore::new(Duration::from_secs(60), 10);
        store
            .put_certificate(b"issuer", &[1, 2], Arc::from(&b"c"[..]))
            .await
            .unwrap();
        assert!(store
            .certificate(b"issuer", &[1, 2])
            .await
            .unwrap()
            .is_some());
        assert!(store
            .certificate(b"issuer", &[1, 3])
            .await
            .unwrap()
            .is_none());
    }
}
