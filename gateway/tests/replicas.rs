//! Stateless replicas (issue 4): several `scep-gateway` processes sharing one CA and one
//! real `redis-server`. A device's retry may land on any replica, at the same time as
//! the original, after a replica died, or while Redis is down: it never gets two
//! certificates for one transaction, and never a hang.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::{RedisCluster, RedisServer, ReplicatedPair, SentinelGroup, SENTINEL_MASTER};
use common::{get, post, Gateway, Options, Pki};
use scep_gateway::ca::certificate::common_name;
use scep_gateway::cms::algorithms::{ContentCipher, Digest};
use scep_gateway::cms::signed::CertificateFields;
use scep_gateway::scep::client::{self, MessageSpec, Reply, Requester};
use scep_gateway::scep::message::{MessageType, Nonce, PkiStatus};
use scep_gateway::store::redis::{RedisSettings, RedisStore};
use scep_gateway::store::{Claim, Store, TransactionKey};
use scep_hsm::{Key, SoftwareKey};

const LEASE_SECS: u64 = 5;
/// The `/admin/reload` and `/admin/revoke` bearer token.
const ADMIN_TOKEN: &str = "fleet-admin-token";

/// One Redis and `n` replicas started from one `init` (one CA, one RA).
struct Fleet {
    redis: RedisServer,
    pki: Pki,
    replicas: Vec<Gateway>,
    /// The RA certificate devices encrypt to, from GetCACert.
    ra: Vec<u8>,
}

impl Fleet {
    fn start(n: usize) -> Fleet {
        let redis = RedisServer::start();
        let pki = Pki::init(&Options {
            // A short lease, so that a dead replica's claim lapses within the test; the
            // gateway refuses a lease shorter than the request timeout.
            extra_config: vec![
                ("backend".into(), "\"redis\"".into()),
                (
                    "request_timeout_secs".into(),
                    format!("{LEASE_SECS}\nreload_token_file = \"admin.token\""),
                ),
            ],
            append: vec![
                format!("url = \"{}\"", redis.url()),
                format!("claim_lease_secs = {LEASE_SECS}"),
                "command_timeout_ms = 1000".into(),
            ],
            ..Options::default()
        });
        std::fs::write(pki.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
        let replicas: Vec<Gateway> = (0..n).map(|_| pki.serve()).collect();
        let answer = get(replicas[0].addr, "/scep?operation=GetCACert");
        assert_eq!(answer.status, 200);
        let certs = client::ca_certificates(&answer.body).unwrap();
        let ra = client::encryption_certificate(&certs).unwrap().to_vec();
        Fleet {
            redis,
            pki,
            replicas,
            ra,
        }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.replicas[i].addr
    }
}

/// A device: its key, self-signed certificate and CSR (with the challenge).
struct Device {
    requester: Requester,
    csr: Vec<u8>,
    subject: Vec<u8>,
}

impl Device {
    fn new(name: &str) -> Device {
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate_rsa(name.into(), 2048).unwrap());
        let subject = common_name(name).unwrap();
        let requester = Requester::self_signed(key, &subject).unwrap();
        let csr = requester
            .certification_request(&subject, Some(common::CHALLENGE))
            .unwrap();
        Device {
            requester,
            csr,
            subject,
        }
    }

    fn spec(&self, message_type: MessageType) -> MessageSpec {
        MessageSpec {
            message_type,
            transaction_id: self.requester.key_transaction_id(),
            sender_nonce: Nonce::random(),
            digest: Digest::Sha256,
            cipher: ContentCipher::Aes128Cbc,
        }
    }

    fn pkcsreq(&self, ra: &[u8]) -> (MessageSpec, Vec<u8>) {
        let spec = self.spec(MessageType::PkcsReq);
        let message = self.requester.pki_message(&spec, ra, &self.csr).unwrap();
        (spec, message)
    }

    /// GetCRL (RFC 8894 §3.3.4) for `issuer`; the serials on the CRL that comes back.
    fn crl_serials(&self, addr: SocketAddr, ra: &[u8], issuer: &[u8]) -> Vec<Vec<u8>> {
        use der::Decode;
        let spec = self.spec(MessageType::GetCrl);
        // IssuerAndSerialNumber: the serial is not used for GetCRL; any will do.
        let content = der_sequence(&[issuer, &[0x02, 0x01, 0x01]]);
        let message = self.requester.pki_message(&spec, ra, &content).unwrap();
        let reply = self.exchange(addr, &spec, &message);
        assert_success(&reply);
        let crl = x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(
            &reply.crls[0],
        )
        .unwrap();
        crl.tbs_cert_list
            .revoked_certificates
            .unwrap_or_default()
            .iter()
            .map(|r| r.serial_number.as_bytes().to_vec())
            .collect()
    }

    /// CertPoll (RFC 8894 §3.3.3): IssuerAndSubject of the certificate awaited.
    fn certpoll(&self, ra: &[u8], issuer: &[u8]) -> (MessageSpec, Vec<u8>) {
        let spec = self.spec(MessageType::CertPoll);
        let content = der_sequence(&[issuer, &self.subject]);
        let message = self.requester.pki_message(&spec, ra, &content).unwrap();
        (spec, message)
    }

    /// The store's key for this device's first enrollment, as a replica computes it.
    fn transaction_key(&self) -> TransactionKey {
        TransactionKey::new(
            self.requester.key_transaction_id(),
            self.requester.credential.key.public_key_info(),
            None,
        )
    }

    /// A first PKCSReq to `addr`, which must be answered SUCCESS.
    fn enrolls(&self, addr: SocketAddr, ra: &[u8]) {
        let (spec, message) = self.pkcsreq(ra);
        let reply = self.exchange(addr, &spec, &message);
        assert_success(&reply);
    }

    /// Sends a pkiMessage and reads the CertRep (HTTP 200 required).
    fn exchange(&self, addr: SocketAddr, spec: &MessageSpec, message: &[u8]) -> Reply {
        let response = pki_operation(addr, message, 200);
        self.requester
            .read_reply(&response.body, spec, false)
            .unwrap()
    }
}

fn der_sequence(parts: &[&[u8]]) -> Vec<u8> {
    let content: Vec<u8> = parts.concat();
    let mut out = vec![0x30];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend(content);
    out
}

/// (serial, certificate) of a SUCCESS reply's issued certificate.
fn issued(reply: &Reply) -> (Vec<u8>, Vec<u8>) {
    let cert = reply
        .certificates
        .first()
        .expect("SUCCESS without a certificate");
    let fields = CertificateFields::parse(cert).unwrap();
    (fields.serial.to_vec(), cert.clone())
}

/// The same PKCSReq sent to three replicas at once, for 50 devices: one certificate per
/// transaction, every reply SUCCESS or PENDING, and a CertPoll on each replica
/// afterwards returns that certificate.
#[test]
fn the_same_request_on_three_replicas_at_once_gets_one_certificate() {
    let mut fleet = Fleet::start(3);
    let started = Instant::now();
    let devices: Vec<Device> = std::thread::scope(|s| {
        let halves: Vec<_> = (0..2)
            .map(|half| {
                s.spawn(move || {
                    (0..25)
                        .map(|i| Device::new(&format!("replica-device-{}", half * 25 + i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    eprintln!("50 devices made in {:?}", started.elapsed());

    let (mut successes, mut pendings) = (0, 0);
    let mut certificates = Vec::new();
    for device in &devices {
        let (spec, message) = device.pkcsreq(&fleet.ra);
        let replies: Vec<Reply> = std::thread::scope(|s| {
            let sent: Vec<_> = (0..3)
                .map(|i| {
                    let (addr, spec, message) = (fleet.addr(i), &spec, &message);
                    s.spawn(move || device.exchange(addr, spec, message))
                })
                .collect();
            sent.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let mut serials = Vec::new();
        for reply in &replies {
            match reply.status {
                PkiStatus::Success => {
                    successes += 1;
                    serials.push(issued(reply));
                }
                PkiStatus::Pending => pendings += 1,
                other => panic!("{other:?}: {:?}", reply.fail_info_text),
            }
        }
        assert!(!serials.is_empty(), "no replica issued");
        serials.dedup();
        assert_eq!(serials.len(), 1, "two certificates for one transaction");
        certificates.push(serials.remove(0));
    }
    eprintln!("{successes} SUCCESS and {pendings} PENDING replies");

    for (device, (serial, cert)) in devices.iter().zip(&certificates) {
        let issuer = CertificateFields::parse(cert).unwrap().issuer.to_vec();
        for i in 0..3 {
            let (spec, message) = device.certpoll(&fleet.ra, &issuer);
            let reply = device.exchange(fleet.addr(i), &spec, &message);
            assert_success(&reply);
            assert_eq!(&issued(&reply).0, serial, "CertPoll on replica {i}");
        }
    }
    for replica in &mut fleet.replicas {
        replica.assert_healthy();
    }
}

/// A replica dies (SIGKILL) holding a claim: the device's retry on another replica gets
/// PENDING until the lease lapses, then SUCCESS, and only one certificate exists.
#[test]
fn a_claim_held_by_a_killed_replica_lapses_and_the_retry_completes() {
    let mut fleet = Fleet::start(3);
    let device = Device::new("orphaned-device");
    // Replica 2 claims the transaction (as its store call would), then dies mid-request.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = RedisStore::connect(RedisSettings {
            url: fleet.redis.url(),
            tls_ca_pem: None,
            key_prefix: "scep:".into(),
            command_timeout: Duration::from_secs(2),
            ttl: Duration::from_secs(60),
            sentinel: None,
            replica_acks: 0,
            cluster: None,
        })
        .unwrap();
        let claim = store
            .claim(&device.transaction_key(), Duration::from_secs(LEASE_SECS))
            .await
            .unwrap();
        assert_eq!(claim, Claim::Won);
    });
    let claimed_at = Instant::now();
    fleet.replicas[2].kill();

    let (spec, message) = device.pkcsreq(&fleet.ra);
    let first = device.exchange(fleet.addr(0), &spec, &message);
    assert_eq!(first.status, PkiStatus::Pending);

    // The client retries, on whichever replica the load balancer picks.
    let mut attempt = 0;
    let reply = loop {
        std::thread::sleep(Duration::from_millis(500));
        attempt += 1;
        let (spec, message) = device.pkcsreq(&fleet.ra);
        let reply = device.exchange(fleet.addr(attempt % 2), &spec, &message);
        match reply.status {
            PkiStatus::Pending => {
                assert!(
                    claimed_at.elapsed() < Duration::from_secs(LEASE_SECS + 10),
                    "still PENDING long after the lease"
                );
            }
            PkiStatus::Success => break reply,
            other => panic!("{other:?}: {:?}", reply.fail_info_text),
        }
    };
    assert!(
        claimed_at.elapsed() >= Duration::from_secs(LEASE_SECS) - Duration::from_millis(500),
        "the claim was overridden before its lease ran out"
    );
    let (serial, cert) = issued(&reply);
    let issuer = CertificateFields::parse(&cert).unwrap().issuer.to_vec();
    for i in 0..2 {
        let (spec, message) = device.pkcsreq(&fleet.ra);
        let again = device.exchange(fleet.addr(i), &spec, &message);
        assert_eq!(again.status, PkiStatus::Success);
        assert_eq!(issued(&again).0, serial, "a second certificate");
        let (spec, message) = device.certpoll(&fleet.ra, &issuer);
        let polled = device.exchange(fleet.addr(i), &spec, &message);
        assert_eq!(issued(&polled).0, serial);
    }
    fleet.replicas[0].assert_healthy();
    fleet.replicas[1].assert_healthy();
}

fn wait_ready(addr: SocketAddr, want: u16, within: Duration) -> common::Response {
    let deadline = Instant::now() + within;
    loop {
        let response = get(addr, "/readyz");
        if response.status == want {
            return response;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {} ({})",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Redis stops mid-run: readiness 503, PKIOperation answers promptly with 503 and the
/// processes live on; Redis starts again on the same port: ready, enrollments work, no
/// gateway restart.
#[test]
fn a_redis_outage_makes_replicas_unready_and_they_recover_without_restart() {
    let mut fleet = Fleet::start(2);
    let ready = wait_ready(fleet.addr(0), 200, Duration::from_secs(5));
    assert_eq!(ready.body, br#"{"ready":true}"#);
    assert_eq!(ready.header("content-type"), Some("application/json"));
    Device::new("before-outage").enrolls(fleet.addr(0), &fleet.ra);

    fleet.redis.stop();
    for i in 0..2 {
        let unready = wait_ready(fleet.addr(i), 503, Duration::from_secs(5));
        let body = String::from_utf8_lossy(&unready.body).into_owned();
        assert!(
            body.starts_with(r#"{"ready":false,"store":""#) && body.contains("redis"),
            "{body}"
        );
    }
    let during = Device::new("during-outage");
    for i in 0..2 {
        let (_, message) = during.pkcsreq(&fleet.ra);
        assert_unavailable(fleet.addr(i), &message, Duration::from_secs(5));
        // What needs no store still works.
        assert_eq!(get(fleet.addr(i), "/scep?operation=GetCACaps").status, 200);
        fleet.replicas[i].assert_healthy();
    }

    fleet.redis.restart();
    for i in 0..2 {
        wait_ready(fleet.addr(i), 200, Duration::from_secs(10));
        let (spec, message) = during.pkcsreq(&fleet.ra);
        let reply = during.exchange(fleet.addr(i), &spec, &message);
        assert_success(&reply);
        fleet.replicas[i].assert_healthy();
    }
}

/// A hung Redis (frozen, not dead): every enrollment that needs it gets HTTP 503 within
/// `command_timeout_ms`, and while they wait nothing else waits with them. Enrollments run
/// on the tokio workers and await Redis there (`Gateway::inline`), so a blocked worker
/// would show as a slow GetCACaps. Thawed, the replica enrolls again by itself.
#[test]
fn a_hung_redis_answers_in_time_and_stalls_no_other_request() {
    let mut fleet = Fleet::start(1);
    wait_ready(fleet.addr(0), 200, Duration::from_secs(5));
    Device::new("before-the-hang").enrolls(fleet.addr(0), &fleet.ra);

    fleet.redis.pause();
    // More enrollments at once than the replica has worker threads.
    let addr = fleet.addr(0);
    let devices: Vec<_> = (0..8)
        .map(|i| Device::new(&format!("during-the-hang-{i}")))
        .collect();
    let waiting: Vec<_> = devices
        .iter()
        .map(|device| {
            let (_, message) = device.pkcsreq(&fleet.ra);
            std::thread::spawn(move || {
                let started = Instant::now();
                let response = post(addr, "/scep?operation=PKIOperation", &message);
                (response.status, started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(get(addr, "/scep?operation=GetCACaps").status, 200);
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "GetCACaps took {took:?} while enrollments waited on Redis"
        );
    }
    for handle in waiting {
        let (status, took) = handle.join().unwrap();
        assert_eq!(status, 503);
        assert!(took < Duration::from_secs(4), "took {took:?}");
    }

    fleet.redis.resume();
    wait_ready(addr, 200, Duration::from_secs(10));
    Device::new("after-the-hang").enrolls(addr, &fleet.ra);
    // The claims sent into the hang landed when Redis resumed, and were released right
    // after them: the devices' retries enroll now, not PENDING until the lease runs out.
    for device in &devices {
        device.enrolls(addr, &fleet.ra);
    }
    fleet.replicas[0].assert_healthy();
}

/// POSTs `message` as a PKIOperation; the answer must have HTTP `status`.
fn pki_operation(addr: SocketAddr, message: &[u8], status: u16) -> common::Response {
    let response = post(addr, "/scep?operation=PKIOperation", message);
    let body = String::from_utf8_lossy(&response.body).into_owned();
    assert_eq!(response.status, status, "{body}");
    response
}

/// POSTs `message` and expects HTTP 503 within `within`.
fn assert_unavailable(addr: SocketAddr, message: &[u8], within: Duration) {
    let started = Instant::now();
    pki_operation(addr, message, 503);
    let took = started.elapsed();
    assert!(took < within, "took {took:?}");
}

/// `POST /admin/revoke` with the fleet's token (or `token`).
fn revoke(addr: SocketAddr, serial_hex: &str, token: &str) -> common::Response {
    let body = format!("{{\"serial\":\"{serial_hex}\"}}");
    common::raw_request(
        addr,
        format!(
            "POST /admin/revoke HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

/// A certificate revoked on one replica (`POST /admin/revoke`) is on every replica's
/// CRL, also on a replica started afterwards: revocations live in the shared store, not
/// in the process that made them.
#[test]
fn a_revocation_on_one_replica_is_on_every_replicas_crl() {
    let mut fleet = Fleet::start(2);
    let device = Device::new("to-be-revoked");
    let (spec, message) = device.pkcsreq(&fleet.ra);
    let reply = device.exchange(fleet.addr(0), &spec, &message);
    let (serial, certificate) = issued(&reply);
    let issuer = CertificateFields::parse(&certificate)
        .unwrap()
        .issuer
        .to_vec();
    assert!(device
        .crl_serials(fleet.addr(1), &fleet.ra, &issuer)
        .is_empty());

    assert_eq!(
        revoke(fleet.addr(0), &hex::encode(&serial), "wrong").status,
        401
    );
    let answer = revoke(fleet.addr(0), &hex::encode(&serial), ADMIN_TOKEN);
    let body = String::from_utf8_lossy(&answer.body).to_string();
    assert_eq!(answer.status, 200, "{body}");
    assert!(body.contains("\"already\":false"), "{body}");
    let bad = revoke(fleet.addr(0), "not-hex", ADMIN_TOKEN);
    assert_eq!(bad.status, 400);

    for i in 0..2 {
        assert_eq!(
            device.crl_serials(fleet.addr(i), &fleet.ra, &issuer),
            vec![serial.clone()],
            "replica {i}"
        );
    }
    let late = fleet.pki.serve();
    assert_eq!(
        device.crl_serials(late.addr, &fleet.ra, &issuer),
        vec![serial.clone()],
        "a replica started after the revocation"
    );
    // Revoked again on another replica: already known, still one entry.
    let again = revoke(fleet.addr(1), &hex::encode(&serial), ADMIN_TOKEN);
    assert!(String::from_utf8_lossy(&again.body).contains("\"already\":true"));
    assert_eq!(
        device.crl_serials(fleet.addr(1), &fleet.ra, &issuer).len(),
        1
    );
    for replica in &mut fleet.replicas {
        replica.assert_healthy();
    }
}

/// The CertRep must be SUCCESS (else its failInfo text is shown).
fn assert_success(reply: &Reply) {
    assert_eq!(
        reply.status,
        PkiStatus::Success,
        "{:?}",
        reply.fail_info_text
    );
}

/// Redis Sentinel (issue 4): two replicas find the master through a sentinel. A
/// device enrolls; the master fails over; the device's retry on the other replica is
/// answered from the store with the same certificate (the record was replicated before
/// the failover), a new device enrolls on both replicas without an error, and both stay
/// ready. Neither gateway restarts.
#[test]
fn a_fleet_behind_sentinel_follows_a_failover() {
    let group = SentinelGroup::start();
    let pki = Pki::init(&Options {
        extra_config: vec![("backend".into(), "\"redis\"".into())],
        append: vec![
            // The master's password and database; the host is not used.
            "url_env = \"SCEP_TEST_REDIS_URL\"".into(),
            "[store.sentinel]".into(),
            format!("master = \"{SENTINEL_MASTER}\""),
            format!("nodes = [\"{}\"]", group.sentinel_node()),
        ],
        env: vec![(
            "SCEP_TEST_REDIS_URL".into(),
            format!("redis://:{}@sentinel/0", group.password),
        )],
        ..Options::default()
    });
    let log_check =
        |log: &str| assert!(!log.contains(&group.password), "the password is in the log");
    fleet_follows_a_failover(&pki, "sentinel", log_check, || {
        group.wait_replicated();
        group.fail_over();
    });
}

/// Two gateway replicas of `pki` enroll a device; `fail_over` moves the store's master;
/// the device's retry on the other replica is answered from the store with the same
/// certificate, a new device enrolls on both, both stay ready and healthy, and each
/// logged and counted one move of the master (`reason`); `check_log` looks at each log.
fn fleet_follows_a_failover(
    pki: &Pki,
    reason: &str,
    check_log: impl Fn(&str),
    fail_over: impl FnOnce(),
) {
    let (mut replicas, ra) = two_ready_replicas(pki);

    let first = Device::new("before-failover");
    let (spec, message) = first.pkcsreq(&ra);
    let (serial, _) = issued(&first.exchange(replicas[0].addr, &spec, &message));

    fail_over();

    let retry = first.exchange(replicas[1].addr, &spec, &message);
    assert_success(&retry);
    assert_eq!(
        issued(&retry).0,
        serial,
        "the retry got another certificate"
    );
    let second = Device::new("after-failover");
    for replica in &mut replicas {
        let (spec, message) = second.pkcsreq(&ra);
        assert_success(&second.exchange(replica.addr, &spec, &message));
        wait_ready(replica.addr, 200, Duration::from_secs(5));
        replica.assert_healthy();
    }
    for replica in &replicas {
        let log = replica.log();
        assert!(log.contains("the master moved"), "{log}");
        check_log(&log);
        let moved = [("reason", reason)];
        let text = common::scrape(replica.addr);
        assert_eq!(
            common::must(&text, "scep_store_master_changes_total", &moved),
            1.0
        );
    }
}

/// Two replicas of `pki`, ready, and the RA certificate devices encrypt to.
fn two_ready_replicas(pki: &Pki) -> ([Gateway; 2], Vec<u8>) {
    let replicas = [pki.serve(), pki.serve()];
    let answer = get(replicas[0].addr, "/scep?operation=GetCACert");
    let certs = client::ca_certificates(&answer.body).unwrap();
    let ra = client::encryption_certificate(&certs).unwrap().to_vec();
    for replica in &replicas {
        wait_ready(replica.addr, 200, Duration::from_secs(10));
    }
    (replicas, ra)
}

/// The default key prefix `scep:` is the keys' hash tag on a cluster.
const CLUSTER_TAG: &str = "{scep:}";

/// A gateway configuration on `cluster`, seeded at a node that does not serve the
/// store's slot.
fn cluster_pki(cluster: &RedisCluster) -> Pki {
    Pki::init(&Options {
        extra_config: vec![("backend".into(), "\"redis\"".into())],
        append: vec![
            format!("url = \"{}\"", cluster.url_away_from(CLUSTER_TAG)),
            "[store.cluster]".into(),
        ],
        ..Options::default()
    })
}

/// The same on a Redis Cluster, seeded at a node that does not serve the store's slot:
/// the slot's master fails over to its replica.
#[test]
fn a_fleet_on_a_redis_cluster_follows_a_failover() {
    let mut cluster = RedisCluster::start_with_replica(CLUSTER_TAG);
    let pki = cluster_pki(&cluster);
    let check_log = |log: &str| assert!(log.contains("redis cluster: the master moved"), "{log}");
    fleet_follows_a_failover(&pki, "cluster", check_log, || {
        cluster.wait_replicated(CLUSTER_TAG);
        cluster.fail_over(CLUSTER_TAG);
    });
}

/// A Redis Cluster moving the store's slot to another master (a resharding, or a
/// managed service rebalancing) while two replicas enroll: keys move two at a time in
/// the background, then the slot is handed over. Every request is answered SUCCESS, a
/// device's retry on the other replica gets the same certificate (whether its record has
/// moved or not), and both replicas follow the hand-over with no restart.
#[test]
fn a_fleet_on_a_redis_cluster_keeps_enrolling_while_the_slot_migrates() {
    let cluster = RedisCluster::start();
    let pki = cluster_pki(&cluster);
    let (mut replicas, ra) = two_ready_replicas(&pki);
    let enroll = |device: &Device, on: usize| {
        let (spec, message) = device.pkcsreq(&ra);
        let reply = device.exchange(replicas[on].addr, &spec, &message);
        assert_success(&reply);
        let (serial, _) = issued(&reply);
        (spec, message, serial)
    };
    let before: Vec<_> = (0..4)
        .map(|i| {
            let device = Device::new(&format!("before-migration-{i}"));
            let sent = enroll(&device, i % 2);
            (device, sent)
        })
        .collect();

    let migration = cluster.begin_migration(CLUSTER_TAG);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Two keys every 30 ms for about a second, then the hand-over, while the
        // enrollments go on (or as soon as they end).
        let mover = scope.spawn(|| {
            let mut moved = 0;
            for _ in 0..30 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let budget = std::cell::Cell::new(2u32);
                moved +=
                    migration.move_keys(|_| budget.replace(budget.get().saturating_sub(1)) > 0);
                std::thread::sleep(Duration::from_millis(30));
            }
            migration.finish();
            moved
        });
        // Set when this thread leaves the scope, a failed assertion included: the scope
        // waits for the mover.
        let stopping = SetOnDrop(&stop);
        let retry_elsewhere = |device: &Device,
                               (spec, message, serial): &(MessageSpec, Vec<u8>, Vec<u8>),
                               on: usize| {
            let retry = device.exchange(replicas[on].addr, spec, message);
            assert_success(&retry);
            assert_eq!(
                &issued(&retry).0,
                serial,
                "the retry got another certificate"
            );
        };
        for (i, (device, sent)) in before.iter().enumerate() {
            retry_elsewhere(device, sent, (i + 1) % 2);
        }
        for i in 0..14 {
            let device = Device::new(&format!("during-migration-{i}"));
            let sent = enroll(&device, i % 2);
            retry_elsewhere(&device, &sent, (i + 1) % 2);
        }
        drop(stopping);
        assert!(
            mover.join().unwrap() > 0,
            "no key moved during the enrollments"
        );
    });

    for (i, replica) in replicas.iter_mut().enumerate() {
        let device = Device::new(&format!("after-migration-{i}"));
        let (spec, message) = device.pkcsreq(&ra);
        assert_success(&device.exchange(replica.addr, &spec, &message));
        wait_ready(replica.addr, 200, Duration::from_secs(5));
        replica.assert_healthy();
        // Redirections counted while the slot migrated; one move once it was handed over.
        let text = common::scrape(replica.addr);
        let asked = common::must(&text, "scep_store_redirections_total", &[("kind", "ask")]);
        assert!(asked > 0.0, "{text}");
        let moved = [("reason", "cluster")];
        assert_eq!(
            common::must(&text, "scep_store_master_changes_total", &moved),
            1.0
        );
    }
}

/// Sets its flag when dropped, also while a panic unwinds.
struct SetOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `store.replica_acks = 1`: while the replica hangs, a PKCSReq gets HTTP 503 in time
/// (its claim was not acknowledged: nothing is issued) and the metric counts it; the
/// same request, once the replica is back, enrolls.
#[test]
fn a_replica_that_misses_a_claim_makes_the_request_unavailable_until_it_is_back() {
    let pair = ReplicatedPair::start();
    let pki = Pki::init(&Options {
        extra_config: vec![("backend".into(), "\"redis\"".into())],
        append: vec![
            format!("url = \"{}\"", pair.master.url()),
            "command_timeout_ms = 1000".into(),
            "replica_acks = 1".into(),
        ],
        ..Options::default()
    });
    let mut replica = pki.serve();
    let answer = get(replica.addr, "/scep?operation=GetCACert");
    let certs = client::ca_certificates(&answer.body).unwrap();
    let ra = client::encryption_certificate(&certs).unwrap().to_vec();
    wait_ready(replica.addr, 200, Duration::from_secs(10));
    Device::new("replicated").enrolls(replica.addr, &ra);

    pair.replica.pause();
    let device = Device::new("while-the-replica-hangs");
    let (spec, message) = device.pkcsreq(&ra);
    assert_unavailable(replica.addr, &message, Duration::from_secs(3));
    let unready = wait_ready(replica.addr, 503, Duration::from_secs(5));
    let body = String::from_utf8_lossy(&unready.body).into_owned();
    assert!(body.contains("replicas"), "{body}");
    let text = common::scrape(replica.addr);
    assert_eq!(
        common::must(
            &text,
            "scep_store_unreplicated_writes_total",
            &[("op", "claim")]
        ),
        1.0
    );

    pair.replica.resume();
    pair.wait_in_sync();
    wait_ready(replica.addr, 200, Duration::from_secs(5));
    let reply = device.exchange(replica.addr, &spec, &message);
    assert_success(&reply);
    replica.assert_healthy();
}
