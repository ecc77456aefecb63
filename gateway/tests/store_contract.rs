//! One contract, two stores: every body here runs against the in-process `MemoryStore`
//! and against `RedisStore` on a real `redis-server`, both over its async connection and
//! over the blocking connections a PKIOperation uses, so that a replica fleet behaves
//! exactly like one node. Plus the outage behaviour only Redis has.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::{RedisCluster, RedisServer, ReplicatedPair, SentinelGroup, SENTINEL_MASTER};
use scep_gateway::error::Error;
use scep_gateway::scep::message::TransactionId;
use scep_gateway::store::memory::MemoryStore;
use scep_gateway::store::redis::{ClusterSettings, RedisSettings, RedisStore, SentinelSettings};
use scep_gateway::store::{Claim, OtpPut, OtpRecord, Record, Store, TransactionKey};

const LEASE: Duration = Duration::from_secs(5);

/// One request's key. Calling it again for the same transaction is another request (a
/// retry), with a claimant of its own.
fn key(id: &str, spki: &[u8]) -> TransactionKey {
    TransactionKey::new(TransactionId::new(id.into()).unwrap(), spki, None)
}

fn redis_store(server: &RedisServer, timeout: Duration) -> RedisStore {
    RedisStore::connect(RedisSettings {
        url: server.url(),
        tls_ca_pem: None,
        key_prefix: "test:".into(),
        command_timeout: timeout,
        ttl: Duration::from_secs(60),
        sentinel: None,
        replica_acks: 0,
        cluster: None,
    })
    .unwrap()
}

/// A store on the master of `pair` whose writes wait for its replica
/// (`store.replica_acks = 1`).
fn replicated_store(pair: &ReplicatedPair, timeout: Duration) -> RedisStore {
    RedisStore::connect(RedisSettings {
        url: pair.master.url(),
        tls_ca_pem: None,
        key_prefix: "test:".into(),
        command_timeout: timeout,
        ttl: Duration::from_secs(60),
        sentinel: None,
        replica_acks: 1,
        cluster: None,
    })
    .unwrap()
}

/// The tag every key of a cluster store with the tests' prefix carries.
const CLUSTER_TAG: &str = "{test:}";

/// A store on Redis Cluster, seeded at `url` (and `nodes`), looking the topology up again
/// every `recheck` besides after a redirection.
fn cluster_store(
    url: String,
    nodes: Vec<String>,
    recheck: Duration,
    replica_acks: u32,
) -> RedisStore {
    RedisStore::connect(cluster_settings(url, nodes, recheck, replica_acks)).unwrap()
}

/// The settings of [`cluster_store`] (2 s command timeout).
fn cluster_settings(
    url: String,
    nodes: Vec<String>,
    recheck: Duration,
    replica_acks: u32,
) -> RedisSettings {
    RedisSettings {
        url,
        tls_ca_pem: None,
        key_prefix: "test:".into(),
        command_timeout: Duration::from_secs(2),
        ttl: Duration::from_secs(60),
        sentinel: None,
        replica_acks,
        cluster: Some(ClusterSettings { nodes, recheck }),
    }
}

/// A three-master cluster and a store on it, seeded at a node that does not serve the
/// store's slot (so that it must look the master up).
fn contract_cluster() -> (RedisCluster, Arc<dyn Store>) {
    let cluster = RedisCluster::start();
    let url = cluster.url_away_from(CLUSTER_TAG);
    let store = cluster_store(url, vec![], Duration::from_secs(600), 0);
    (cluster, Arc::new(store))
}

/// Generates `memory`, `redis` and `redis_blocking` tests running `$body(store)`, the
/// two Redis ones again with writes that wait for a replica (`replica_acks`), and again
/// on a Redis Cluster seeded at a node that does not serve the store's slot.
macro_rules! both_stores {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                let store: Arc<dyn Store> =
                    Arc::new(MemoryStore::new(Duration::from_secs(60), 10_000));
                super::$name(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                let server = RedisServer::start();
                let store: Arc<dyn Store> = Arc::new(redis_store(&server, Duration::from_secs(2)));
                super::$name(store).await;
            }

            /// As a PKIOperation calls the store: its blocking connections.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_blocking() {
                let server = RedisServer::start();
                let store: Arc<dyn Store> = Arc::new(redis_store(&server, Duration::from_secs(2)));
                on_blocking_thread(super::$name(store)).await;
                drop(server);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_replicated() {
                let pair = ReplicatedPair::start();
                let store: Arc<dyn Store> =
                    Arc::new(replicated_store(&pair, Duration::from_secs(2)));
                super::$name(store).await;
                assert!(pair.waits() > 0, "no write waited for the replica");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_replicated_blocking() {
                let pair = ReplicatedPair::start();
                let store: Arc<dyn Store> =
                    Arc::new(replicated_store(&pair, Duration::from_secs(2)));
                on_blocking_thread(super::$name(store)).await;
                assert!(pair.waits() > 0, "no write waited for the replica");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_cluster() {
                let (cluster, store) = contract_cluster();
                super::$name(store).await;
                drop(cluster);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_cluster_blocking() {
                let (cluster, store) = contract_cluster();
                on_blocking_thread(super::$name(store)).await;
                drop(cluster);
            }
        }
    };
}

/// Runs `body` as `enroll.rs` runs a PKIOperation: on a tokio blocking-pool thread
/// inside `store::blocking_scope`, where `RedisStore` uses its blocking connections.
/// (Tasks the body spawns run on worker threads, over the async connection.)
async fn on_blocking_thread<F>(body: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _scope = scep_gateway::store::blocking_scope();
        handle.block_on(body)
    })
    .await
    .unwrap();
}

both_stores!(a_claim_is_won_once_then_replayed);
async fn a_claim_is_won_once_then_replayed(store: Arc<dyn Store>) {
    let k = key("t1", b"key-a");
    assert_eq!(store.claim(&k, LEASE).await.unwrap(), Claim::Won);
    let retry = key("t1", b"key-a");
    assert_eq!(
        store.claim(&retry, LEASE).await.unwrap(),
        Claim::Existing(Record::InProgress)
    );
    // The same request claiming again (its first answer lost) still holds it.
    assert_eq!(store.claim(&k, LEASE).await.unwrap(), Claim::Won);
    assert_eq!(store.get(&retry).await.unwrap(), Some(Record::InProgress));
    let cert: Arc<[u8]> = Arc::from(&b"cert"[..]);
    store
        .issued(&k, b"issuer", &[1, 2], cert.clone())
        .await
        .unwrap();
    let issued = Record::Issued { certificate: cert };
    assert_eq!(
        store.claim(&k, LEASE).await.unwrap(),
        Claim::Existing(issued.clone())
    );
    assert_eq!(store.get(&k).await.unwrap(), Some(issued));
}

both_stores!(another_key_with_the_same_transaction_id_is_a_conflict);
async fn another_key_with_the_same_transaction_id_is_a_conflict(store: Arc<dyn Store>) {
    let k = key("t2", b"key-a");
    assert_eq!(store.claim(&k, LEASE).await.unwrap(), Claim::Won);
    let other = key("t2", b"key-b");
    assert_eq!(store.claim(&other, LEASE).await.unwrap(), Claim::Conflict);
    // The other key reads nothing and releases nothing.
    assert_eq!(store.get(&other).await.unwrap(), None);
    store.release(&other).await.unwrap();
    assert_eq!(
        store.claim(&key("t2", b"key-a"), LEASE).await.unwrap(),
        Claim::Existing(Record::InProgress)
    );
    store.finish(&k, Record::Pending).await.unwrap();
    assert_eq!(store.claim(&other, LEASE).await.unwrap(), Claim::Conflict);
    // A renewal with the same key and transactionID is a transaction of its own.
    let renewal = TransactionKey::new(k.id.clone(), b"key-a", Some(b"old cert"));
    assert_eq!(store.claim(&renewal, LEASE).await.unwrap(), Claim::Won);
}

both_stores!(a_pending_record_answers_pending);
async fn a_pending_record_answers_pending(store: Arc<dyn Store>) {
    let k = key("t3", b"key-a");
    assert_eq!(store.claim(&k, LEASE).await.unwrap(), Claim::Won);
    store.finish(&k, Record::Pending).await.unwrap();
    assert_eq!(
        store.claim(&k, LEASE).await.unwrap(),
        Claim::Existing(Record::Pending)
    );
    assert_eq!(store.get(&k).await.unwrap(), Some(Record::Pending));
    // Release only drops an InProgress claim, never a recorded outcome.
    store.release(&k).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), Some(Record::Pending));
}

both_stores!(a_released_claim_can_be_won_again);
async fn a_released_claim_can_be_won_again(store: Arc<dyn Store>) {
    let k = key("t4", b"key-a");
    assert_eq!(store.claim(&k, LEASE).await.unwrap(), Claim::Won);
    store.release(&k).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), None);
    assert_eq!(store.claim(&k, LEASE).await.unwrap(), Claim::Won);
}

both_stores!(a_resubmission_lock_is_a_claim_beside_the_record);
async fn a_resubmission_lock_is_a_claim_beside_the_record(store: Arc<dyn Store>) {
    let k = key("t4r", b"key-a");
    let ticket: Arc<[u8]> = Arc::from(&b"queued"[..]);
    assert_eq!(store.claim(&k, LEASE).await.unwrap(), Claim::Won);
    store
        .finish(
            &k,
            Record::PendingUpstream {
                ticket: ticket.clone(),
            },
        )
        .await
        .unwrap();
    // Two CertPolls: the first holds the lock, the second is told someone is at it.
    let (first, second) = (key("t4r", b"key-a"), key("t4r", b"key-a"));
    let lock = first.resubmission();
    assert_eq!(store.claim(&lock, LEASE).await.unwrap(), Claim::Won);
    assert_eq!(
        store.claim(&second.resubmission(), LEASE).await.unwrap(),
        Claim::Existing(Record::InProgress)
    );
    // The record is untouched by the lock, and the lock by the record's release.
    assert_eq!(
        store.get(&first).await.unwrap(),
        Some(Record::PendingUpstream { ticket })
    );
    store.release(&first).await.unwrap();
    assert_eq!(
        store.claim(&second.resubmission(), LEASE).await.unwrap(),
        Claim::Existing(Record::InProgress)
    );
    store.release(&lock).await.unwrap();
    assert_eq!(
        store.claim(&second.resubmission(), LEASE).await.unwrap(),
        Claim::Won
    );
}

both_stores!(a_lapsed_lease_can_be_won_again);
async fn a_lapsed_lease_can_be_won_again(store: Arc<dyn Store>) {
    let k = key("t5", b"key-a");
    // Long enough for two calls on a loaded CI machine, each waiting for a replica in
    // the replicated variants.
    let short = Duration::from_secs(2);
    assert_eq!(store.claim(&k, short).await.unwrap(), Claim::Won);
    assert_eq!(
        store.claim(&key("t5", b"key-a"), short).await.unwrap(),
        Claim::Existing(Record::InProgress)
    );
    tokio::time::sleep(short + Duration::from_millis(300)).await;
    // The replica that held it is presumed dead: the retry proceeds.
    assert_eq!(store.get(&k).await.unwrap(), None);
    let retry = key("t5", b"key-a");
    assert_eq!(store.claim(&retry, LEASE).await.unwrap(), Claim::Won);
    // The first request, not dead after all, ends without a certificate: its release
    // leaves the retry's claim alone (else a third request could win it too).
    store.release(&k).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), Some(Record::InProgress));
    assert_eq!(
        store.claim(&key("t5", b"key-a"), LEASE).await.unwrap(),
        Claim::Existing(Record::InProgress)
    );
    store.release(&retry).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), None);
}

both_stores!(certificates_are_found_by_issuer_and_serial);
async fn certificates_are_found_by_issuer_and_serial(store: Arc<dyn Store>) {
    let cert: Arc<[u8]> = Arc::from(&b"c1"[..]);
    store
        .put_certificate(b"issuer", &[1, 2], cert.clone())
        .await
        .unwrap();
    assert_eq!(
        store.certificate(b"issuer", &[1, 2]).await.unwrap(),
        Some(cert)
    );
    assert_eq!(store.certificate(b"issuer", &[1, 3]).await.unwrap(), None);
    assert_eq!(store.certificate(b"other", &[1, 2]).await.unwrap(), None);
    let k = key("t6", b"key-a");
    store.claim(&k, LEASE).await.unwrap();
    store
        .issued(&k, b"issuer", &[9], Arc::from(&b"c9"[..]))
        .await
        .unwrap();
    assert_eq!(
        store.certificate(b"issuer", &[9]).await.unwrap().as_deref(),
        Some(&b"c9"[..])
    );
    store.health().await.unwrap();
}

both_stores!(fifty_concurrent_claims_have_one_winner);
async fn fifty_concurrent_claims_have_one_winner(store: Arc<dyn Store>) {
    for round in 0..3 {
        let id = format!("race-{round}");
        let start = Arc::new(tokio::sync::Barrier::new(50));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                // Fifty requests of one transaction (one on each of fifty replicas).
                let (store, k, start) = (store.clone(), key(&id, b"key-a"), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    store.claim(&k, LEASE).await.unwrap()
                })
            })
            .collect();
        let mut won = 0;
        for task in tasks {
            match task.await.unwrap() {
                Claim::Won => won += 1,
                Claim::Existing(Record::InProgress) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(won, 1, "round {round}");
    }
}

both_stores!(revocations_are_kept_once_per_serial);
async fn revocations_are_kept_once_per_serial(store: Arc<dyn Store>) {
    assert!(store.revocations(b"issuer-a").await.unwrap().is_empty());
    store.revoke(b"issuer-a", &[1, 2], 100).await.unwrap();
    // Revoked again later: the first time stays.
    store.revoke(b"issuer-a", &[1, 2], 200).await.unwrap();
    store.revoke(b"issuer-a", &[0, 0x80], 150).await.unwrap();
    store.revoke(b"issuer-b", &[9], 300).await.unwrap();
    let mut a = store.revocations(b"issuer-a").await.unwrap();
    a.sort();
    assert_eq!(a, vec![(vec![0, 0x80], 150), (vec![1, 2], 100)]);
    assert_eq!(
        store.revocations(b"issuer-b").await.unwrap(),
        vec![(vec![9], 300)]
    );
}

fn otp(requester: &str) -> OtpRecord {
    OtpRecord {
        requester: requester.into(),
        cn_pattern: Some("device-[0-9]+".into()),
        expires_at: u64::MAX / 2,
    }
}

both_stores!(a_one_time_password_is_taken_once);
async fn a_one_time_password_is_taken_once(store: Arc<dyn Store>) {
    let hash = [1u8; 32];
    let record = otp("alice");
    assert_eq!(
        store.put_otp(&hash, &record, LEASE, 5).await.unwrap(),
        OtpPut::Stored
    );
    assert_eq!(store.outstanding_otps("alice").await.unwrap(), 1);
    assert_eq!(store.take_otp(&[2u8; 32]).await.unwrap(), None);
    assert_eq!(store.take_otp(&hash).await.unwrap(), Some(record));
    assert_eq!(store.take_otp(&hash).await.unwrap(), None);
    assert_eq!(store.outstanding_otps("alice").await.unwrap(), 0);
}

both_stores!(a_requester_holds_at_most_the_bound);
async fn a_requester_holds_at_most_the_bound(store: Arc<dyn Store>) {
    for i in 0..3u8 {
        assert_eq!(
            store
                .put_otp(&[10 + i; 32], &otp("bob"), LEASE, 3)
                .await
                .unwrap(),
            OtpPut::Stored
        );
    }
    assert_eq!(
        store
            .put_otp(&[20; 32], &otp("bob"), LEASE, 3)
            .await
            .unwrap(),
        OtpPut::CacheFull
    );
    // Another requester has a cache of its own.
    assert_eq!(
        store
            .put_otp(&[21; 32], &otp("carol"), LEASE, 3)
            .await
            .unwrap(),
        OtpPut::Stored
    );
    // A used password frees its place.
    assert!(store.take_otp(&[10; 32]).await.unwrap().is_some());
    assert_eq!(
        store
            .put_otp(&[20; 32], &otp("bob"), LEASE, 3)
            .await
            .unwrap(),
        OtpPut::Stored
    );
    assert_eq!(store.outstanding_otps("bob").await.unwrap(), 3);
}

both_stores!(an_expired_password_is_gone_and_frees_its_place);
async fn an_expired_password_is_gone_and_frees_its_place(store: Arc<dyn Store>) {
    // Long enough that the second put comes before the first expires on a loaded
    // machine, where each put also waits for a replica in the replicated variants.
    let short = Duration::from_secs(2);
    assert_eq!(
        store
            .put_otp(&[30; 32], &otp("dave"), short, 1)
            .await
            .unwrap(),
        OtpPut::Stored
    );
    assert_eq!(
        store
            .put_otp(&[31; 32], &otp("dave"), short, 1)
            .await
            .unwrap(),
        OtpPut::CacheFull
    );
    tokio::time::sleep(short + Duration::from_millis(300)).await;
    assert_eq!(store.take_otp(&[30; 32]).await.unwrap(), None);
    assert_eq!(store.outstanding_otps("dave").await.unwrap(), 0);
    assert_eq!(
        store
            .put_otp(&[31; 32], &otp("dave"), LEASE, 1)
            .await
            .unwrap(),
        OtpPut::Stored
    );
}

both_stores!(fifty_concurrent_takes_have_one_winner);
async fn fifty_concurrent_takes_have_one_winner(store: Arc<dyn Store>) {
    let hash = [40u8; 32];
    store.put_otp(&hash, &otp("erin"), LEASE, 5).await.unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (store, start) = (store.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                store.take_otp(&hash).await.unwrap()
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        won += usize::from(task.await.unwrap().is_some());
    }
    assert_eq!(won, 1);
}

/// Redis down: every call fails within the timeout with `Unavailable` (HTTP 503), never
/// hangs; Redis back on the same port: the same store works again, no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_unavailable_within_the_timeout_then_recovers() {
    outage_then_recovery().await;
}

/// The same over the blocking connections: a pooled connection to the dead Redis is
/// dropped, and a new one is made when Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_on_the_blocking_path_then_recovers() {
    on_blocking_thread(outage_then_recovery()).await;
}

/// Three claims in a row each fail `Unavailable` (HTTP 503) within twice `timeout`, and
/// readiness is false: an outage is answered, never waited out.
async fn unavailable_in_time(store: &RedisStore, timeout: Duration) {
    for _ in 0..3 {
        let started = Instant::now();
        let claimed = store.claim(&key("outage-2", b"k"), LEASE).await;
        assert!(matches!(claimed, Err(Error::Unavailable(_))), "{claimed:?}");
        assert!(
            started.elapsed() < timeout * 2,
            "took {:?}",
            started.elapsed()
        );
        assert!(store.health().await.is_err());
    }
}

async fn outage_then_recovery() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(500);
    let store = redis_store(&server, timeout);
    let k = key("outage", b"key-a");
    assert_eq!(store.claim(&k, LEASE).await.unwrap(), Claim::Won);

    server.stop();
    unavailable_in_time(&store, timeout).await;
    let message = store.health().await.unwrap_err().to_string();
    assert!(message.contains("redis"), "{message}");

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.health().await.is_err() {
        assert!(Instant::now() < deadline, "the store did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The restarted Redis is empty (no persistence): the claim is new.
    assert_eq!(store.claim(&k, LEASE).await.unwrap(), Claim::Won);
}

/// A claim sent into a hung Redis (frozen, not dead) fails within the timeout, but its
/// command is on the wire and lands when Redis resumes. The release sent after it on the
/// same connection then removes it: the device's retry wins at once instead of being
/// told PENDING until the lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_sent_into_a_hung_redis_is_released_when_it_resumes() {
    claim_into_a_hang(false).await;
}

/// The same over the blocking connections, where the release is written on the claim's
/// own connection before it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_sent_into_a_hung_redis_on_the_blocking_path_is_released() {
    on_blocking_thread(claim_into_a_hang(true)).await;
}

async fn claim_into_a_hang(overlapped: bool) {
    let server = RedisServer::start();
    let store = redis_store(&server, Duration::from_millis(500));
    let lease = Duration::from_secs(60);
    let hung = key("hung", b"key-a");
    store.health().await.unwrap();

    server.pause();
    let claimed = if overlapped {
        match store.start_claim(&hung, lease).await {
            Some(in_flight) => in_flight.await,
            None => store.claim(&hung, lease).await,
        }
    } else {
        store.claim(&hung, lease).await
    };
    assert!(matches!(claimed, Err(Error::Unavailable(_))), "{claimed:?}");
    server.resume();

    let deadline = Instant::now() + Duration::from_secs(5);
    retry_until_won(&store, "hung", b"key-a", lease, deadline).await;
}

/// A client's retries of transaction `id` (each a new request: [`key`]) every 50 ms until
/// one wins the claim, i.e. a late claim of an earlier request was released; fails at
/// `deadline`.
async fn retry_until_won(
    store: &RedisStore,
    id: &str,
    spki: &[u8],
    lease: Duration,
    deadline: Instant,
) {
    loop {
        match store.claim(&key(id, spki), lease).await {
            Ok(Claim::Won) => break,
            other => assert!(
                Instant::now() < deadline,
                "{id}: the retry still gets {other:?}: a late claim was not released"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Managed-Redis style: `rediss://` with a private CA (`tls_ca_pem`) and AUTH. The same
/// contract body runs over it; a wrong password is Unavailable, and not shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_password() {
    let server = RedisServer::start_tls("s3cret-pw");
    let (tls_port, ca_pem) = server.tls.clone().unwrap();
    let connect = |password: &str| {
        RedisStore::connect(RedisSettings {
            url: format!("rediss://default:{password}@127.0.0.1:{tls_port}/0"),
            tls_ca_pem: Some(ca_pem.clone()),
            key_prefix: "tls:".into(),
            command_timeout: Duration::from_secs(2),
            ttl: Duration::from_secs(60),
            sentinel: None,
            replica_acks: 0,
            cluster: None,
        })
        .unwrap()
    };
    let store: Arc<dyn Store> = Arc::new(connect("s3cret-pw"));
    store.health().await.unwrap();
    a_claim_is_won_once_then_replayed(store.clone()).await;
    // And over the blocking connections (TLS and AUTH on each new connection).
    let again = key("tls-blocking", b"key-a");
    on_blocking_thread(async move {
        assert_eq!(store.claim(&again, LEASE).await.unwrap(), Claim::Won);
        assert_eq!(
            store
                .claim(&key("tls-blocking", b"key-a"), LEASE)
                .await
                .unwrap(),
            Claim::Existing(Record::InProgress)
        );
    })
    .await;

    let wrong = connect("not-it");
    let error = wrong.health().await.unwrap_err();
    assert!(matches!(error, Error::Unavailable(_)), "{error}");
    assert!(!error.to_string().contains("not-it"), "{error}");
}

/// A password in the URL never appears in the store's Debug output or its errors.
#[tokio::test]
async fn the_redis_password_is_never_shown() {
    let store = RedisStore::connect(RedisSettings {
        url: "redis://default:hunter2@127.0.0.1:1/0".into(),
        tls_ca_pem: None,
        key_prefix: "test:".into(),
        command_timeout: Duration::from_millis(200),
        ttl: Duration::from_secs(60),
        sentinel: None,
        replica_acks: 0,
        cluster: None,
    })
    .unwrap();
    let error = store.health().await.unwrap_err().to_string();
    assert!(!error.contains("hunter2"), "{error}");
    assert!(!format!("{store:?}").contains("hunter2"));
}

/// `start_claim` (the claim sent before the RA decryption) and `start_issued` (the
/// record sent before the CertRep signature): their answers are the ordinary calls';
/// dropped unread, a claim it won is released (at once on the blocking path; by a task
/// of its own on the async one) and a record is still written. The in-process store has
/// no round trip to overlap: `None`, and the caller makes the ordinary call.
async fn calls_started_early_answer_like_the_calls(store: Arc<dyn Store>) {
    let k = key("early-1", b"key-a");
    let Some(first) = store.start_claim(&k, LEASE).await else {
        assert!(format!("{store:?}").starts_with("MemoryStore"), "{store:?}");
        let cert: Arc<[u8]> = Arc::from(&b"early cert"[..]);
        assert!(store
            .start_issued(&k, b"issuer", &[7], cert)
            .await
            .is_none());
        return;
    };
    assert_eq!(first.await.unwrap(), Claim::Won);
    let again = store.start_claim(&k, LEASE).await.expect("sent");
    assert_eq!(again.await.unwrap(), Claim::Won, "the same request's claim");
    let retry = store
        .start_claim(&key("early-1", b"key-a"), LEASE)
        .await
        .expect("sent");
    assert_eq!(retry.await.unwrap(), Claim::Existing(Record::InProgress));
    let other = store
        .start_claim(&key("early-1", b"key-b"), LEASE)
        .await
        .unwrap();
    assert_eq!(other.await.unwrap(), Claim::Conflict);

    // Won but never read: released, so the retry wins.
    let unused = key("early-2", b"key-a");
    drop(store.start_claim(&unused, LEASE).await.unwrap());
    let retry_key = key("early-2", b"key-a");
    let mut retry = store.claim(&retry_key, LEASE).await.unwrap();
    for _ in 0..200 {
        if retry == Claim::Won {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        retry = store.claim(&retry_key, LEASE).await.unwrap();
    }
    assert_eq!(retry, Claim::Won);
    // Someone else's claim is not released by a dropped one.
    drop(
        store
            .start_claim(&key("early-2", b"key-a"), LEASE)
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.get(&unused).await.unwrap(), Some(Record::InProgress));

    // The issued record, sent early, lands as `issued` would put it.
    let cert: Arc<[u8]> = Arc::from(&b"early cert"[..]);
    let recording = store
        .start_issued(&k, b"issuer", &[7], cert.clone())
        .await
        .expect("sent");
    recording.await.unwrap();
    let issued = Record::Issued {
        certificate: cert.clone(),
    };
    assert_eq!(store.get(&k).await.unwrap(), Some(issued.clone()));
    assert_eq!(
        store.certificate(b"issuer", &[7]).await.unwrap().as_deref(),
        Some(&cert[..])
    );
    let retry = store.start_claim(&k, LEASE).await.unwrap();
    assert_eq!(retry.await.unwrap(), Claim::Existing(issued));

    // A record sent early and dropped unread is written all the same.
    let k3 = key("early-3", b"key-a");
    assert_eq!(store.claim(&k3, LEASE).await.unwrap(), Claim::Won);
    let cert3: Arc<[u8]> = Arc::from(&b"dropped cert"[..]);
    drop(
        store
            .start_issued(&k3, b"issuer", &[8], cert3.clone())
            .await,
    );
    let mut found = None;
    for _ in 0..200 {
        found = store.certificate(b"issuer", &[8]).await.unwrap();
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(found.as_deref(), Some(&cert3[..]));
}

both_stores!(calls_started_early_answer_like_the_calls);

/// The master the sentinel of `group` names, reached with the group's password (the
/// URL's host is not used); over TLS, with the group's CA, when the group speaks it.
fn sentinel_store(group: &SentinelGroup, timeout: Duration, recheck: Duration) -> RedisStore {
    sentinel_store_with(group, timeout, recheck, 0)
}

/// [`sentinel_store`] whose writes wait for `replica_acks` replicas.
fn sentinel_store_with(
    group: &SentinelGroup,
    timeout: Duration,
    recheck: Duration,
    replica_acks: u32,
) -> RedisStore {
    let scheme = if group.ca_pem().is_some() {
        "rediss"
    } else {
        "redis"
    };
    RedisStore::connect(RedisSettings {
        url: format!("{scheme}://:{}@sentinel/0", group.password),
        tls_ca_pem: group.ca_pem(),
        key_prefix: "test:".into(),
        command_timeout: timeout,
        ttl: Duration::from_secs(60),
        sentinel: Some(SentinelSettings {
            master: SENTINEL_MASTER.into(),
            nodes: vec![group.sentinel_node()],
            username: None,
            password: None,
            recheck,
            tls: group.ca_pem().is_some(),
        }),
        replica_acks,
        cluster: None,
    })
    .unwrap()
}

/// Redis Sentinel: the store finds the master through the sentinel, and the first
/// command after a failover (its connection closed by the sentinel, or answered
/// READONLY by the demoted master) is sent again to the new master within its own
/// timeout: no call fails, and what was written before is there. The periodic lookup
/// is set beyond the test, so that only the failed command can have moved the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_behind_sentinel_follows_failovers() {
    follow_failovers(SentinelGroup::start, Duration::from_secs(600)).await;
}

/// The same over the blocking connections: those to the old master are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_behind_sentinel_follows_failovers_on_the_blocking_path() {
    on_blocking_thread(follow_failovers(
        SentinelGroup::start,
        Duration::from_secs(600),
    ))
    .await;
}

/// The same with TLS everywhere: to the sentinel, to the master it names (checked
/// against the group's CA), and between the nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_behind_sentinel_over_tls_follows_failovers() {
    follow_failovers(SentinelGroup::start_tls, Duration::from_secs(600)).await;
}

/// With the periodic lookup on, the store has usually moved before the next command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_behind_sentinel_rechecks_the_master() {
    follow_failovers(SentinelGroup::start, Duration::from_millis(200)).await;
}

/// With `replica_acks = 1`: after a failover the demoted master, replicating from the
/// new one, acknowledges at once (a partial resync), so no write fails either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_behind_sentinel_with_replica_acks_follows_failovers() {
    follow_failovers_with(SentinelGroup::start, Duration::from_secs(600), 1).await;
}

async fn follow_failovers(start: fn() -> SentinelGroup, recheck: Duration) {
    follow_failovers_with(start, recheck, 0).await;
}

async fn follow_failovers_with(start: fn() -> SentinelGroup, recheck: Duration, replica_acks: u32) {
    let group = start();
    let store = sentinel_store_with(&group, Duration::from_secs(2), recheck, replica_acks);
    survives_failovers(&store, 2, || {
        group.wait_replicated();
        let old = group.master_port();
        group.fail_over();
        assert_ne!(group.master_port(), old);
    })
    .await;
}

/// What was written before is there after each of `rounds` failovers (`fail_over` waits
/// until the replica has everything, then promotes it), and the first command after
/// each, answered by the demoted master or cut off, is sent again to the new one within
/// its own timeout: no call fails.
async fn survives_failovers(store: &RedisStore, rounds: u8, mut fail_over: impl FnMut() + Send) {
    let cert: Arc<[u8]> = Arc::from(&b"cert"[..]);
    let issued = Record::Issued {
        certificate: cert.clone(),
    };
    let before = key("before", b"key-a");
    assert_eq!(store.claim(&before, LEASE).await.unwrap(), Claim::Won);
    store
        .issued(&before, b"issuer", &[1], cert.clone())
        .await
        .unwrap();
    let password = [7u8; 32];
    assert_eq!(
        store
            .put_otp(&password, &otp("alice"), Duration::from_secs(60), 5)
            .await
            .unwrap(),
        OtpPut::Stored
    );

    for round in 0..rounds {
        fail_over();
        let fresh = key(&format!("after-{round}"), b"key-b");
        let started = Instant::now();
        assert_eq!(
            store.claim(&fresh, LEASE).await.unwrap(),
            Claim::Won,
            "round {round}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        store
            .issued(&fresh, b"issuer", &[2, round], cert.clone())
            .await
            .unwrap();
        assert_eq!(
            store.claim(&key("before", b"key-a"), LEASE).await.unwrap(),
            Claim::Existing(issued.clone())
        );
        assert_eq!(
            store.certificate(b"issuer", &[1]).await.unwrap().as_deref(),
            Some(&b"cert"[..])
        );
        assert!(store.health().await.is_ok());
    }
    // The scripts run on the new master too, and the password is still single-use.
    assert_eq!(store.take_otp(&password).await.unwrap(), Some(otp("alice")));
    assert_eq!(store.take_otp(&password).await.unwrap(), None);
}

/// The sentinels name no master: every call fails within the timeout (HTTP 503),
/// none hangs. When they are back, the next call (a readiness probe) finds the master,
/// without waiting for the periodic lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_sentinels_are_gone_is_unavailable_in_time() {
    let mut group = SentinelGroup::start();
    group.stop_sentinel();
    let timeout = Duration::from_millis(500);
    let store = sentinel_store(&group, timeout, Duration::from_secs(600));
    for _ in 0..3 {
        let started = Instant::now();
        let claimed = store.claim(&key("nobody", b"k"), LEASE).await;
        assert!(matches!(claimed, Err(Error::Unavailable(_))), "{claimed:?}");
        assert!(
            started.elapsed() < timeout * 2,
            "took {:?}",
            started.elapsed()
        );
    }
    let message = store.health().await.unwrap_err().to_string();
    assert!(
        message.contains("sentinel") && !message.contains(&group.password),
        "{message}"
    );

    group.restart_sentinel();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.health().await.is_err() {
        assert!(Instant::now() < deadline, "the master was not found again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let claimed = store.claim(&key("somebody", b"k"), LEASE).await;
    assert_eq!(claimed.unwrap(), Claim::Won);
}

/// A fixed endpoint that is a replica now (a managed Redis whose primary moved while our
/// connection still reaches the old one): writes get a clear 503 within the timeout, the
/// store connects again (a new connection resolves the name again) but not for every
/// failed write, and once the node is a master again writes go through. (That the new
/// connection follows a DNS change is not tested here: the test cannot move a name.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_endpoint_answering_readonly_is_unavailable_then_recovers() {
    let server = RedisServer::start();
    let other = RedisServer::start();
    let timeout = Duration::from_millis(500);
    let store = redis_store(&server, timeout);
    assert_eq!(
        store.claim(&key("ro-1", b"k"), LEASE).await.unwrap(),
        Claim::Won
    );

    let mut admin = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let replicaof = |host: &str, port: &str, admin: &mut redis::Connection| {
        redis::cmd("REPLICAOF")
            .arg(host)
            .arg(port)
            .query::<()>(admin)
            .unwrap();
    };
    replicaof("127.0.0.1", &other.port.to_string(), &mut admin);
    let connections = |admin: &mut redis::Connection| {
        let info: String = redis::cmd("INFO").arg("stats").query(admin).unwrap();
        let line = info
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .unwrap();
        line.trim().parse::<u64>().unwrap()
    };
    // Old enough to be replaced once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = connections(&mut admin);
    for op in 0..20 {
        let started = Instant::now();
        let claimed = store.claim(&key(&format!("ro-{op}-b"), b"k"), LEASE).await;
        let message = match claimed {
            Err(Error::Unavailable(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(message.contains("ReadOnly"), "{message}");
        assert!(
            started.elapsed() < timeout * 2,
            "took {:?}",
            started.elapsed()
        );
    }
    let opened = connections(&mut admin) - before;
    assert!(
        (1..=2).contains(&opened),
        "{opened} new connections for 20 writes"
    );
    replicaof("NO", "ONE", &mut admin);
    assert_eq!(
        store.claim(&key("ro-2", b"k"), LEASE).await.unwrap(),
        Claim::Won
    );
}

/// `store.replica_acks`: a write counts once the replica has it, so a failover that
/// promotes the replica cannot lose a claim (and give a retry a second certificate).
/// Without the replica a claim is refused (503, nothing to issue) and released; with it
/// back the store serves again. On both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_the_replica_and_a_claim_it_missed_is_refused() {
    writes_wait_for_the_replica(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_the_replica_on_the_blocking_path() {
    writes_wait_for_the_replica(true).await;
}

async fn writes_wait_for_the_replica(blocking: bool) {
    let pair = Arc::new(ReplicatedPair::start());
    // WAIT gives the replica half of it: room for a loaded CI machine.
    let timeout = Duration::from_secs(2);
    let store = Arc::new(replicated_store(&pair, timeout));
    let body = {
        let pair = pair.clone();
        async move {
            let cert: Arc<[u8]> = Arc::from(&b"cert"[..]);
            let first = key("replicated", b"key-a");
            // Claim and issued record, each overlapped as a PKIOperation sends them.
            let claim = store.start_claim(&first, LEASE).await.unwrap();
            assert_eq!(claim.await.unwrap(), Claim::Won);
            // Answered means on the replica: read there at once, no waiting.
            assert!(pair.on_replica("test:tx:n:replicated").is_some());
            let recorded = store
                .start_issued(&first, b"issuer", &[9], cert.clone())
                .await
                .unwrap();
            recorded.await.unwrap();
            let on_replica = pair.on_replica("test:tx:n:replicated").unwrap();
            assert_eq!(on_replica, pair.on_master("test:tx:n:replicated").unwrap());
            assert_eq!(
                store
                    .claim(&key("replicated", b"key-a"), LEASE)
                    .await
                    .unwrap(),
                Claim::Existing(Record::Issued {
                    certificate: cert.clone()
                })
            );

            // The replica hangs: the master takes the claim, but it is not safe.
            pair.replica.pause();
            let lost = key("unreplicated", b"key-b");
            let started = Instant::now();
            let refused = match store.start_claim(&lost, LEASE).await {
                Some(claim) => claim.await,
                None => store.claim(&lost, LEASE).await,
            };
            let elapsed = started.elapsed();
            match refused {
                Err(Error::Unavailable(why)) => {
                    assert!(why.contains("acknowledged by 0 of the 1 replicas"), "{why}")
                }
                other => panic!("a claim the replica missed was used: {other:?}"),
            }
            assert!(elapsed < timeout * 2, "{elapsed:?}");
            // ... and released, so that the client's retry need not wait out the lease.
            let deadline = Instant::now() + Duration::from_secs(5);
            while pair.on_master("test:tx:n:unreplicated").is_some() {
                assert!(Instant::now() < deadline, "the refused claim was kept");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // A record that cannot be made safe is reported, not silently kept as safe.
            assert!(matches!(
                store.finish(&lost, Record::Pending).await,
                Err(Error::Unavailable(_))
            ));
            // A store that cannot enroll is not ready.
            assert!(matches!(store.health().await, Err(Error::Unavailable(_))));
            // A new one-time password that may not survive a failover is not handed out.
            match store
                .put_otp(&[7; 32], &otp("mdm"), Duration::from_secs(60), 10)
                .await
            {
                Err(Error::Unavailable(why)) => {
                    assert!(why.contains("put_otp: acknowledged by 0"), "{why}")
                }
                other => panic!("a password the replica missed was handed out: {other:?}"),
            }

            pair.replica.resume();
            pair.wait_in_sync();
            assert!(store.health().await.is_ok());
            let after = key("after", b"key-c");
            assert_eq!(store.claim(&after, LEASE).await.unwrap(), Claim::Won);
            assert!(pair.on_replica("test:tx:n:after").is_some());
            let hash = [8; 32];
            assert_eq!(
                store
                    .put_otp(&hash, &otp("mdm"), Duration::from_secs(60), 10)
                    .await
                    .unwrap(),
                OtpPut::Stored
            );
            let on_replica = pair.on_replica(&format!("test:otp:{}", hex(&hash)));
            assert!(on_replica.is_some(), "a new password is not on the replica");
        }
    };
    if blocking {
        on_blocking_thread(body).await;
    } else {
        body.await;
    }
    assert!(pair.waits() >= 4, "{}", pair.waits());
}

/// `store.replica_acks` with the replica a network round trip away (here 2 × 100 ms, a
/// slow link, so that the timing shows under a loaded test machine): Redis holds every later command of a
/// connection behind a `WAIT`, so the writes that wait go over connections of their own,
/// several. Concurrent claims then wait for the replica side by side, not one after the
/// other, and a read is answered while they wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_waiting_for_a_distant_replica_wait_side_by_side() {
    let one_way = Duration::from_millis(100);
    let pair = ReplicatedPair::start_distant(one_way);
    let store = Arc::new(replicated_store(&pair, Duration::from_secs(5)));
    // Connections are made on first use; make them now, and a record to read later.
    let earlier = key("distant-earlier", b"key-a");
    assert_eq!(store.claim(&earlier, LEASE).await.unwrap(), Claim::Won);
    store.finish(&earlier, Record::Pending).await.unwrap();
    let mut warm = tokio::task::JoinSet::new();
    for n in 0..16 {
        let store = store.clone();
        warm.spawn(async move { store.claim(&key(&format!("warm-{n}"), b"k"), LEASE).await });
    }
    while let Some(done) = warm.join_next().await {
        assert_eq!(done.unwrap().unwrap(), Claim::Won);
    }

    let started = Instant::now();
    let mut claims = tokio::task::JoinSet::new();
    for n in 0..8 {
        let store = store.clone();
        claims.spawn(async move {
            let claim = store
                .claim(&key(&format!("distant-{n}"), b"k"), LEASE)
                .await;
            (claim, started.elapsed())
        });
    }
    // While they wait for the replica, a read (a CertPoll) is answered at once.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let reading = Instant::now();
    assert_eq!(
        store.get(&key("distant-earlier", b"key-a")).await.unwrap(),
        Some(Record::Pending)
    );
    let read_took = reading.elapsed();
    let mut slowest = Duration::ZERO;
    while let Some(done) = claims.join_next().await {
        let (claim, took) = done.unwrap();
        assert_eq!(claim.unwrap(), Claim::Won);
        slowest = slowest.max(took);
    }
    assert!(
        read_took < one_way,
        "a read waited {read_took:?} behind the writes waiting for the replica"
    );
    // One after the other they would take 8 replica round trips (≥ 1.6 s). Each claim's
    // connection follows its key, so two may share one: at most a few round trips.
    assert!(
        slowest < one_way * 2 * 4,
        "8 concurrent claims took {slowest:?}: they waited for the replica in turn"
    );
    assert!(
        slowest >= one_way * 2,
        "{slowest:?}: did not wait for the replica"
    );
}

/// `store.replica_acks` with the replica frozen and more concurrent claims than the
/// store has connections for writes that wait: claims queue behind other claims' `WAIT`s
/// on a connection and their answers are lost at the deadline, before Redis has even run
/// them. The release sent after each must run after its claim (on its connection), or the
/// claim lands later and holds the transaction until the lease runs out: every retry
/// must win within moments of the replica's return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_queued_behind_waits_are_released_when_their_answers_are_lost() {
    let pair = ReplicatedPair::start();
    let store = Arc::new(replicated_store(&pair, Duration::from_secs(2)));
    let lease = Duration::from_secs(60);
    store.health().await.unwrap();
    pair.replica.pause();
    let mut claims = tokio::task::JoinSet::new();
    for n in 0..40 {
        let store = store.clone();
        // Half as a PKIOperation sends them (overlapped with the decryption).
        claims.spawn(async move {
            let k = key(&format!("queued-{n}"), b"k");
            if n % 2 == 0 {
                if let Some(in_flight) = store.start_claim(&k, lease).await {
                    return in_flight.await;
                }
            }
            store.claim(&k, lease).await
        });
    }
    while let Some(done) = claims.join_next().await {
        let refused = done.unwrap();
        assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
    }
    pair.replica.resume();
    pair.wait_in_sync();
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 0..40 {
        retry_until_won(&store, &format!("queued-{n}"), b"k", lease, deadline).await;
    }
}

/// An ACL user without `WAIT` (or a Redis that refuses it): with `replica_acks` nothing
/// is written as if it were safe: claims fail with Redis's own error, and the store is
/// not ready, so the misconfiguration shows at the first readiness check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_acks_without_the_right_to_wait_are_unavailable() {
    let server = RedisServer::start();
    let mut admin = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "nowait",
            "on",
            ">nowait-secret",
            "~*",
            "+@all",
            "-wait",
        ])
        .query(&mut admin)
        .unwrap();
    let store = RedisStore::connect(RedisSettings {
        url: format!("redis://nowait:nowait-secret@127.0.0.1:{}/0", server.port),
        tls_ca_pem: None,
        key_prefix: "test:".into(),
        command_timeout: Duration::from_secs(2),
        ttl: Duration::from_secs(60),
        sentinel: None,
        replica_acks: 1,
        cluster: None,
    })
    .unwrap();
    match store.health().await {
        Err(Error::Unavailable(why)) => {
            assert!(why.to_lowercase().contains("wait"), "{why}");
            assert!(!why.contains("nowait-secret"), "{why}");
        }
        other => panic!("ready without the right to WAIT: {other:?}"),
    }
    let refused = store.claim(&key("no-wait", b"key-a"), LEASE).await;
    assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Redis Cluster: the store's keys are all in the slot of its tag, on the master the
/// seed names (not the seed itself here), and after a failover of that master the first
/// command, answered `-MOVED` by the demoted one or cut off, is sent again to the new
/// master within its own timeout: no call fails, and what was written before is there.
/// The periodic lookup is set beyond the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_a_cluster_follows_a_failover() {
    cluster_failover(0).await;
}

/// The same over the blocking connections: those to the old master are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_a_cluster_follows_a_failover_on_the_blocking_path() {
    on_blocking_thread(cluster_failover(0)).await;
}

/// The same with `replica_acks = 1`: WAIT counts the shard's replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_a_cluster_with_replica_acks_follows_a_failover() {
    cluster_failover(1).await;
}

async fn cluster_failover(replica_acks: u32) {
    let mut cluster = RedisCluster::start_with_replica(CLUSTER_TAG);
    let store = cluster_store(
        cluster.url_away_from(CLUSTER_TAG),
        vec![],
        Duration::from_secs(600),
        replica_acks,
    );
    assert!(
        store.endpoint().contains("the slot of {test:}"),
        "{}",
        store.endpoint()
    );
    // One: a cluster's masters vote for one failover of a shard per twice the node
    // timeout, so a second manual failover right after the first would not happen.
    survives_failovers(&store, 1, || {
        cluster.wait_replicated(CLUSTER_TAG);
        let old = cluster.master_of(CLUSTER_TAG);
        cluster.fail_over(CLUSTER_TAG);
        assert_ne!(cluster.master_of(CLUSTER_TAG), old);
    })
    .await;
}

/// Redis Cluster, the store's slot migrating to another master (a resharding, or a
/// managed service rebalancing its shards) with some of its keys moved: a key that moved
/// is read and written on the new master (`-ASK`, then `ASKING`); a key not moved yet on
/// the old one; a new transaction is created on the new master, once; a pipeline whose
/// keys are split is split too. A new one-time password, a script over two keys one of
/// which cannot exist yet, gets `-TRYAGAIN` for as long as the migration lasts: it is
/// refused within the timeout; the same request waiting when the slot is handed over
/// (`-MOVED`) succeeds on the new master. Everything written meanwhile is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_a_cluster_follows_a_slot_migration() {
    let (cluster, store) = migration_cluster(0);
    slot_migration(cluster, store, 0).await;
}

/// The same over the blocking connections, whose claims and records are overlapped
/// (sent, then read after the RSA work): an `-ASK` read there sends them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_a_cluster_follows_a_slot_migration_on_the_blocking_path() {
    let (cluster, store) = migration_cluster(0);
    on_blocking_thread(slot_migration(cluster, store, 0)).await;
}

/// The same with `replica_acks = 1`, both masters with a replica: a write on either
/// master waits for its own replica (a `WAIT` on each connection written to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_a_cluster_with_replica_acks_follows_a_slot_migration() {
    let (cluster, store) = migration_cluster(1);
    slot_migration(cluster, store, 1).await;
}

/// The same on a cluster over TLS with a password (ElastiCache Serverless moves slots
/// when it scales): the new master is reached with the URL's CA and password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_follows_a_slot_migration() {
    let (cluster, store) = tls_cluster("s3cret-pw");
    slot_migration(cluster, store, 0).await;
}

/// A cluster over TLS whose nodes take `password`, and a store on it seeded at a node
/// that does not serve the store's slot, with the URL's CA and password.
fn tls_cluster(password: &str) -> (RedisCluster, RedisStore) {
    let cluster = RedisCluster::start_tls(password);
    let (url, ca_pem) = cluster.tls_url_away_from(CLUSTER_TAG);
    let mut settings = cluster_settings(url, vec![], Duration::from_secs(600), 0);
    settings.tls_ca_pem = Some(ca_pem);
    let store = RedisStore::connect(settings).unwrap();
    (cluster, store)
}

/// A cluster, with a replica of both the store's master and the one its slot will move
/// to when `replica_acks` asks for one, and a store on it.
fn migration_cluster(replica_acks: u32) -> (RedisCluster, RedisStore) {
    let mut cluster = RedisCluster::start();
    if replica_acks > 0 {
        cluster.add_replica_of(cluster.master_of(CLUSTER_TAG));
        cluster.add_replica_of(cluster.migration_target(CLUSTER_TAG));
    }
    let store = cluster_store(
        cluster.url_away_from(CLUSTER_TAG),
        vec![],
        Duration::from_secs(600),
        replica_acks,
    );
    (cluster, store)
}

async fn slot_migration(cluster: RedisCluster, store: RedisStore, replica_acks: u32) {
    let issued = |c: &[u8]| Record::Issued {
        certificate: Arc::from(c),
    };
    let certificate = |serial: u8| {
        let store = &store;
        async move { store.certificate(b"issuer", &[serial]).await.unwrap() }
    };
    let moved = key("moved", b"key-a");
    assert_eq!(store.claim(&moved, LEASE).await.unwrap(), Claim::Won);
    store
        .issued(&moved, b"issuer", &[1], Arc::from(&b"c1"[..]))
        .await
        .unwrap();
    let stays = key("stays", b"key-a");
    assert_eq!(store.claim(&stays, LEASE).await.unwrap(), Claim::Won);
    let password = [7u8; 32];
    assert_eq!(
        store
            .put_otp(&password, &otp("alice"), Duration::from_secs(60), 5)
            .await
            .unwrap(),
        OtpPut::Stored
    );
    store.revoke(b"issuer-a", &[1], 100).await.unwrap();

    let migration = cluster.begin_migration(CLUSTER_TAG);
    // The first transaction's record and its certificate (serial 01) move.
    assert_eq!(
        migration.move_keys(|k| k.contains("tx:n:moved") || k.ends_with(":01")),
        2
    );
    assert_eq!(
        store.claim(&key("moved", b"key-a"), LEASE).await.unwrap(),
        Claim::Existing(issued(b"c1"))
    );
    assert_eq!(certificate(1).await.as_deref(), Some(&b"c1"[..]));

    let fresh = key("fresh", b"key-b");
    assert_eq!(store.claim(&fresh, LEASE).await.unwrap(), Claim::Won);
    assert_eq!(
        store.claim(&key("fresh", b"key-b"), LEASE).await.unwrap(),
        Claim::Existing(Record::InProgress)
    );
    store
        .issued(&fresh, b"issuer", &[2], Arc::from(&b"c2"[..]))
        .await
        .unwrap();
    // Started early, as an enrollment does.
    let early = key("early", b"key-b");
    let claim = store.start_claim(&early, LEASE).await.expect("sent");
    assert_eq!(claim.await.unwrap(), Claim::Won);
    let record = store
        .start_issued(&early, b"issuer", &[4], Arc::from(&b"c4"[..]))
        .await
        .expect("sent");
    record.await.unwrap();

    // Still on the old master: its record is updated there, its new certificate (a new
    // key) is written on the new master, in one pipeline.
    assert_eq!(store.get(&stays).await.unwrap(), Some(Record::InProgress));
    store
        .issued(&stays, b"issuer", &[3], Arc::from(&b"c3"[..]))
        .await
        .unwrap();
    assert_eq!(
        store.claim(&key("stays", b"key-a"), LEASE).await.unwrap(),
        Claim::Existing(issued(b"c3"))
    );
    // Every key is in one place: nothing new was written on the old master.
    let left = migration.keys_left();
    assert!(left.iter().any(|k| k.contains("tx:n:stays")), "{left:?}");
    assert_eq!(
        left.len(),
        4,
        "stays, the password, its requester, the revocations: {left:?}"
    );

    store.revoke(b"issuer-b", &[9], 300).await.unwrap();
    assert_eq!(
        store.revocations(b"issuer-a").await.unwrap(),
        vec![(vec![1], 100)]
    );
    assert_eq!(store.take_otp(&password).await.unwrap(), Some(otp("alice")));
    assert_eq!(store.take_otp(&password).await.unwrap(), None);
    let released = key("released", b"key-c");
    assert_eq!(store.claim(&released, LEASE).await.unwrap(), Claim::Won);
    store.release(&released).await.unwrap();
    assert_eq!(store.claim(&released, LEASE).await.unwrap(), Claim::Won);
    store.health().await.unwrap();

    let started = Instant::now();
    let refused = store
        .put_otp(&[8u8; 32], &otp("bob"), Duration::from_secs(60), 5)
        .await;
    assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    if replica_acks > 0 {
        // A write on the new master waits for the new master's replica.
        let replica = cluster.replica_of(migration.to);
        replica.pause();
        let refused = store.claim(&key("unacked", b"key-d"), LEASE).await;
        replica.resume();
        assert!(
            matches!(&refused, Err(Error::Unavailable(m)) if m.contains("replicas")),
            "{refused:?}"
        );
    }

    // The same request again, the slot handed over while it waits out `-TRYAGAIN`: the
    // old master's `-MOVED` ends the migration's rounds, and the request is sent again,
    // whole, to the master a lookup finds.
    let handing_over = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        migration.finish();
    });
    let stored = store
        .put_otp(&[8u8; 32], &otp("bob"), Duration::from_secs(60), 5)
        .await;
    handing_over.join().unwrap();
    assert_eq!(stored.unwrap(), OtpPut::Stored);
    assert_eq!(store.get(&fresh).await.unwrap(), Some(issued(b"c2")));
    assert_eq!(store.get(&stays).await.unwrap(), Some(issued(b"c3")));
    assert_eq!(store.get(&early).await.unwrap(), Some(issued(b"c4")));
    for (serial, cert) in [(1, &b"c1"[..]), (2, b"c2"), (3, b"c3"), (4, b"c4")] {
        assert_eq!(
            certificate(serial).await.as_deref(),
            Some(cert),
            "serial {serial}"
        );
    }
    assert_eq!(
        store.revocations(b"issuer-b").await.unwrap(),
        vec![(vec![9], 300)]
    );
    assert_eq!(store.take_otp(&[8u8; 32]).await.unwrap(), Some(otp("bob")));
}

/// The URL's node is down: the topology is read from the next seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_store_whose_first_seed_is_down_reads_the_next() {
    let mut cluster = RedisCluster::start();
    let serving = cluster.master_of(CLUSTER_TAG);
    let (down, up): (Vec<_>, Vec<_>) = cluster.masters.iter_mut().partition(|m| m.port != serving);
    let dead = down.into_iter().next().unwrap();
    let dead_url = dead.url();
    dead.stop();
    let store = cluster_store(
        dead_url,
        vec![format!("127.0.0.1:{}", up[0].port)],
        Duration::from_secs(600),
        0,
    );
    assert_eq!(
        store.claim(&key("t", b"k"), LEASE).await.unwrap(),
        Claim::Won
    );
}

/// The master serving the store's slot dies (no replica to take over): every call fails
/// within the timeout (HTTP 503), none hangs, readiness is false; the master back on its
/// port (with its cluster configuration, without data): the store works again, with no
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_store_whose_master_dies_is_unavailable_in_time_then_recovers() {
    let mut cluster = RedisCluster::start();
    let timeout = Duration::from_millis(500);
    let mut settings = cluster_settings(
        cluster.url_away_from(CLUSTER_TAG),
        vec![],
        Duration::from_secs(600),
        0,
    );
    settings.command_timeout = timeout;
    let store = RedisStore::connect(settings).unwrap();
    let k = key("cluster-outage", b"key-a");
    assert_eq!(store.claim(&k, LEASE).await.unwrap(), Claim::Won);

    let serving = cluster.master_of(CLUSTER_TAG);
    let master = cluster
        .masters
        .iter_mut()
        .find(|m| m.port == serving)
        .unwrap();
    master.stop();
    unavailable_in_time(&store, timeout).await;

    master.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.health().await.is_err() {
        assert!(Instant::now() < deadline, "the store did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.claim(&k, LEASE).await {
            // The restarted master is empty (no persistence): the claim is new.
            Ok(claim) => break assert_eq!(claim, Claim::Won),
            // Until the cluster has taken the node back (`-CLUSTERDOWN`).
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A managed service in cluster mode (ElastiCache Serverless takes TLS only): `rediss://`
/// with a private CA and a password, seeded away from the slot. The topology is read over
/// TLS, so the master is reached on its TLS port, with the URL's password and CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_with_a_password() {
    let (cluster, store) = tls_cluster("s3cret-pw");
    let store: Arc<dyn Store> = Arc::new(store);
    a_claim_is_won_once_then_replayed(store.clone()).await;
    a_one_time_password_is_taken_once(store.clone()).await;
    assert!(!format!("{store:?}").contains("s3cret-pw"));
    drop(cluster);
}

/// The URL's node hangs (frozen: it accepts connections and answers nothing): the lookup
/// gives it its share of the timeout and reads the topology from the next seed, so the
/// first call still succeeds within the command timeout (the default, 1 s: as long as
/// the `redis` crate's own connection timeout, so without the share the hung seed would
/// take the whole of every lookup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_store_whose_first_seed_hangs_reads_the_next_in_time() {
    let cluster = RedisCluster::start();
    let serving = cluster.master_of(CLUSTER_TAG);
    let (hung, up): (Vec<_>, Vec<_>) = cluster.masters.iter().partition(|m| m.port != serving);
    let hung = hung[0];
    hung.pause();
    let mut settings = cluster_settings(
        hung.url(),
        vec![format!("127.0.0.1:{}", up[0].port)],
        Duration::from_secs(600),
        0,
    );
    settings.command_timeout = Duration::from_secs(1);
    let store = RedisStore::connect(settings).unwrap();
    assert_eq!(
        store.claim(&key("t", b"k"), LEASE).await.unwrap(),
        Claim::Won
    );
    hung.resume();
}

/// On the blocking path (HSM keys, upstream CAs), an answer that arrived during the RSA
/// work is taken even when that work outlasted the command timeout (an HSM queueing under
/// load): Redis answered in time, and the request is not told otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_answer_is_taken_after_slow_work_on_the_blocking_path() {
    let server = RedisServer::start();
    let store = redis_store(&server, Duration::from_millis(500));
    on_blocking_thread(async move {
        let k = key("slow-work", b"key-a");
        let claim = store.start_claim(&k, LEASE).await.expect("sent");
        // Longer than the timeout: the HSM's RSA work on this thread.
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(claim.await.unwrap(), Claim::Won);
    })
    .await;
    drop(server);
}
