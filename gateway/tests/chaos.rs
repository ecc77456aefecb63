//! The chaos run (issue 9): a fleet under a steady enrollment load while its parts fail.
//!
//! Three `scep-gateway` replicas started from one PKI (RA and CA keys in one SoftHSM2
//! token that the three processes share; they only read it), one real `redis-server`,
//! and two micromdm `scepserver` upstream CAs behind one failover profile (each behind a
//! front that passes one request at a time: scepserver is not safe under concurrency). A load loop
//! starts `SCEP_CHAOS_RATE` enrollments a second for `SCEP_CHAOS_SECS` seconds, each a
//! fresh device (its own RSA key) that sends ONE PKCSReq message and, after an HTTP
//! error, a refused/reset connection or PENDING, resends the same bytes to the next
//! replica, at most `SCEP_CHAOS_RETRIES` times, then asks with CertPoll.
//!
//! During the run, at fixed fractions of it: one replica is SIGKILLed and a new one
//! started; the first CA is SIGKILLed and restarted on its port; Redis is killed and
//! restarted (empty: no persistence); the token folder is moved away for
//! `SCEP_CHAOS_HSM_SECS` seconds and back.
//!
//! Afterwards the run proves:
//! - per transaction, one certificate: all SUCCESS replies (PKCSReq and CertPoll) carry
//!   one serial; every replica's log says `certificate issued` at most once per
//!   transactionID; the CAs' depots hold at most one certificate per device key;
//! - no (issuer, serial) pair twice overall;
//! - every transaction ended SUCCESS, FAILURE or PENDING, and no request hung (every
//!   exchange got an answer or a connection error within `REQUEST_TIMEOUT`);
//! - every replica's peak RSS (VmHWM) under `SCEP_CHAOS_MAX_RSS_MIB` (default 200);
//! - no `panicked` in any replica's log (killed ones included).
//!
//! It prints a summary table. The defaults keep it well under 90 s on two cores; a
//! longer run by hand, e.g.:
//!
//! ```sh
//! SCEP_CHAOS_SECS=600 SCEP_CHAOS_RATE=10 cargo test --release -p scep-gateway \
//!     --test chaos -- --nocapture
//! ```
//!
//! (see docs/chaos.md).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::scepserver::{profile, scep_ca, ScepServer};
use common::{get, memory_kib, try_post, Backend, Gateway, Options, Pki, CHALLENGE};
use scep_gateway::ca::certificate::common_name;
use scep_gateway::cms::algorithms::{ContentCipher, Digest};
use scep_gateway::cms::ber::der_sequence;
use scep_gateway::cms::signed::CertificateFields;
use scep_gateway::scep::client::{self, MessageSpec, Reply, Requester};
use scep_gateway::scep::message::{MessageType, Nonce, PkiStatus};
use scep_hsm::{Key, SoftwareKey};

/// A claim left by a killed replica lapses after this long (a retry then proceeds).
const LEASE_SECS: u64 = 5;
/// No exchange may take longer: beyond it the request counts as a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between a device's attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(700);
/// CertPolls after the retries, until one gets a CertRep.
const POLLS: usize = 5;

/// The run's size, from the environment (defaults: the small run of the test command).
struct Settings {
    secs: f64,
    rate: f64,
    retries: usize,
    hsm_secs: f64,
    max_rss_mib: u64,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str, default: f64| -> f64 {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
                })
                .unwrap_or(default)
        };
        Settings {
            secs: var("SCEP_CHAOS_SECS", 30.0),
            rate: var("SCEP_CHAOS_RATE", 4.0),
            retries: var("SCEP_CHAOS_RETRIES", 12.0) as usize,
            hsm_secs: var("SCEP_CHAOS_HSM_SECS", 3.0),
            max_rss_mib: var("SCEP_CHAOS_MAX_RSS_MIB", 200.0) as u64,
        }
    }
}

/// How one transaction ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Success,
    Failure(String),
    Pending,
    /// Neither: the retries and CertPolls ran out without a CertRep.
    Unfinished(String),
}

/// What one device saw.
struct Transaction {
    transaction_id: String,
    /// The device's SubjectPublicKeyInfo (to find its certificates in the CA depots).
    spki: Vec<u8>,
    end: End,
    /// (issuer, serial) of every SUCCESS reply, PKCSReq and CertPoll alike.
    issued: Vec<(Vec<u8>, Vec<u8>)>,
    /// Attempts after the first PKCSReq (resends and CertPolls).
    retries: usize,
    /// Exchanges that got no answer within REQUEST_TIMEOUT.
    hangs: usize,
    /// The answers that were not final, by kind ("HTTP 503", "PENDING", ...).
    setbacks: BTreeMap<String, usize>,
    took: Duration,
    /// When it ended, from the start of the load.
    finished: Duration,
}

/// One exchange: a CertRep, an HTTP error status, or a transport error.
enum Answer {
    Reply(Reply),
    Http(u16),
    Transport(String),
}

/// A device: key, self-signed signer certificate, the RA certificate it encrypts to.
struct Device {
    requester: Requester,
    subject: Vec<u8>,
    ra: Arc<Vec<u8>>,
}

impl Device {
    fn new(name: &str, ra: Arc<Vec<u8>>) -> Device {
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate_rsa(name.into(), 2048).unwrap());
        let subject = common_name(name).unwrap();
        let requester = Requester::self_signed(key, &subject).unwrap();
        Device {
            requester,
            subject,
            ra,
        }
    }

    /// A pkiMessage of `message_type` (fresh senderNonce) and its spec.
    fn message(&self, message_type: MessageType, content: &[u8]) -> (MessageSpec, Vec<u8>) {
        let spec = MessageSpec {
            message_type,
            transaction_id: self.requester.key_transaction_id(),
            sender_nonce: Nonce::random(),
            digest: Digest::Sha256,
            cipher: ContentCipher::Aes128Cbc,
        };
        let message = self
            .requester
            .pki_message(&spec, &self.ra, content)
            .unwrap();
        (spec, message)
    }

    /// A CertPoll (RFC 8894 §3.3.3). The issuer is not known before the certificate:
    /// the RA's is as good as any, the gateway finds the transaction by its ID and key.
    fn certpoll(&self) -> (MessageSpec, Vec<u8>) {
        let issuer = CertificateFields::parse(&self.ra).unwrap().issuer.to_vec();
        let content = der_sequence(&[&issuer, &self.subject]);
        self.message(MessageType::CertPoll, &content)
    }

    fn exchange(&self, addr: SocketAddr, spec: &MessageSpec, message: &[u8]) -> Answer {
        match try_post(
            addr,
            "/scep?operation=PKIOperation",
            message,
            REQUEST_TIMEOUT,
        ) {
            Err(e) => Answer::Transport(e),
            Ok(r) if r.status != 200 => Answer::Http(r.status),
            Ok(r) => Answer::Reply(
                self.requester
                    .read_reply(&r.body, spec, false)
                    .expect("an HTTP 200 that is not a valid CertRep"),
            ),
        }
    }

    /// The whole life of one enrollment, spread over the replicas from `first`.
    fn enroll(
        &self,
        replicas: &RwLock<Vec<SocketAddr>>,
        first: usize,
        retries: usize,
    ) -> Transaction {
        let started = Instant::now();
        let csr = self
            .requester
            .certification_request(&self.subject, Some(CHALLENGE))
            .unwrap();
        let mut t = Transaction {
            transaction_id: self.requester.key_transaction_id().to_string(),
            spki: self.requester.credential.key.public_key_info().to_vec(),
            end: End::Unfinished(String::new()),
            issued: Vec::new(),
            retries: 0,
            hangs: 0,
            setbacks: BTreeMap::new(),
            took: Duration::ZERO,
            finished: Duration::ZERO,
        };
        let addr = |attempt: usize| {
            let replicas = replicas.read().unwrap();
            replicas[(first + attempt) % replicas.len()]
        };
        // Records one answer; `Some(end)` when it is final.
        let settle = |t: &mut Transaction, answer: Answer| -> Option<End> {
            match answer {
                Answer::Reply(reply) => match reply.status {
                    PkiStatus::Success => {
                        let fields = CertificateFields::parse(&reply.certificates[0]).unwrap();
                        t.issued
                            .push((fields.issuer.to_vec(), fields.serial.to_vec()));
                        Some(End::Success)
                    }
                    PkiStatus::Failure => Some(End::Failure(format!(
                        "{:?}",
                        reply.fail_info.expect("FAILURE without failInfo")
                    ))),
                    PkiStatus::Pending => {
                        *t.setbacks.entry("PENDING".into()).or_default() += 1;
                        t.end = End::Pending;
                        None
                    }
                },
                Answer::Http(status) => {
                    *t.setbacks.entry(format!("HTTP {status}")).or_default() += 1;
                    t.end = End::Unfinished(format!("HTTP {status}"));
                    None
                }
                Answer::Transport(e) => {
                    if e.contains("timed out")
                        || e.contains("WouldBlock")
                        || e.contains("temporarily")
                    {
                        t.hangs += 1;
                    }
                    let kind = e.split(':').next().unwrap_or("").to_owned();
                    *t.setbacks.entry(format!("{kind} error")).or_default() += 1;
                    t.end = End::Unfinished(e);
                    None
                }
            }
        };

        // The PKCSReq: one message, resent as is.
        let (spec, message) = self.message(MessageType::PkcsReq, &csr);
        for attempt in 0..=retries {
            if attempt > 0 {
                t.retries += 1;
                std::thread::sleep(RETRY_PAUSE);
            }
            let answer = self.exchange(addr(attempt), &spec, &message);
            if let Some(end) = settle(&mut t, answer) {
                t.end = end;
                t.took = started.elapsed();
                return t;
            }
        }
        // Then CertPoll.
        for poll in 0..POLLS {
            t.retries += 1;
            std::thread::sleep(RETRY_PAUSE);
            let (spec, message) = self.certpoll();
            let answer = self.exchange(addr(retries + 1 + poll), &spec, &message);
            match settle(&mut t, answer) {
                Some(end) => {
                    t.end = end;
                    break;
                }
                // A CertRep PENDING is an answer: the transaction ends PENDING.
                None if t.end == End::Pending => break,
                None => {}
            }
        }
        t.took = started.elapsed();
        t
    }
}

/// The fleet: Redis, two upstream CAs, the PKI and three replicas (plus the killed ones,
/// kept for their logs).
struct Fleet {
    redis: RedisServer,
    cas: Vec<ScepServer>,
    pki: Pki,
    replicas: Vec<Gateway>,
    killed: Vec<Gateway>,
    /// Where the load goes; updated when a replica is replaced.
    addrs: Arc<RwLock<Vec<SocketAddr>>>,
}

impl Fleet {
    fn start() -> Fleet {
        let redis = RedisServer::start();
        // Behind a front that passes one request at a time: scepserver gives concurrent
        // requests the same serial, and three replicas each with max_in_flight = 1
        // would send it three at once.
        let cas = vec![
            ScepServer::start_serialized("chaos-a"),
            ScepServer::start_serialized("chaos-b"),
        ];
        let mut append = vec![
            // The end of [store].
            format!("url = \"{}\"", redis.url()),
            format!("claim_lease_secs = {LEASE_SECS}"),
            "command_timeout_ms = 1000".into(),
        ];
        // A CA is asked only when its timeout ends within the claim, less the 2 s kept
        // for recording the outcome (2 × command_timeout_ms).
        append.extend(scep_ca("a", &cas[0].url(), 2000));
        append.extend(scep_ca("b", &cas[1].url(), 2000));
        append.extend(profile("default", &["a", "b"], None));
        let pki = Pki::init(&Options {
            backend: Backend::SoftHsm,
            // A short lease, so that a dead replica's claim lapses within the test; the
            // gateway refuses a lease shorter than the request timeout.
            extra_config: vec![
                ("backend".into(), "\"redis\"".into()),
                ("request_timeout_secs".into(), LEASE_SECS.to_string()),
            ],
            append,
            ..Options::default()
        });
        let replicas: Vec<Gateway> = (0..3).map(|_| pki.serve()).collect();
        let addrs = Arc::new(RwLock::new(replicas.iter().map(|r| r.addr).collect()));
        for replica in &replicas {
            wait_ready(replica.addr, Duration::from_secs(20));
        }
        Fleet {
            redis,
            cas,
            pki,
            replicas,
            killed: Vec::new(),
            addrs,
        }
    }

    /// SIGKILL replica `i` and start a new one in its place (a new port, as a pod).
    fn replace_replica(&mut self, i: usize, down_for: Duration) {
        self.replicas[i].kill();
        std::thread::sleep(down_for);
        let fresh = self.pki.serve();
        self.addrs.write().unwrap()[i] = fresh.addr;
        let dead = std::mem::replace(&mut self.replicas[i], fresh);
        self.killed.push(dead);
    }
}

fn wait_ready(addr: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    while get(addr, "/readyz").status != 200 {
        assert!(Instant::now() < deadline, "replica {addr} never ready");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_fleet_under_load_survives_replica_ca_redis_and_hsm_faults() {
    let settings = Settings::from_env();
    let started = Instant::now();
    let mut fleet = Fleet::start();
    let answer = get(fleet.replicas[0].addr, "/scep?operation=GetCACert");
    assert_eq!(answer.status, 200);
    let certs = client::ca_certificates(&answer.body).unwrap();
    let ra = Arc::new(client::encryption_certificate(&certs).unwrap().to_vec());
    eprintln!("fleet up in {:?}", started.elapsed());

    // The load: transaction i starts at i / rate s (later if every worker is busy).
    let total = (settings.secs * settings.rate).ceil() as usize;
    let workers = ((settings.rate * 8.0) as usize).clamp(8, 256);
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let load_start = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (next, results, addrs, ra) = (
                next.clone(),
                results.clone(),
                fleet.addrs.clone(),
                ra.clone(),
            );
            let (rate, retries) = (settings.rate, settings.retries);
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    break;
                }
                let due = load_start + Duration::from_secs_f64(i as f64 / rate);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                let device = Device::new(&format!("chaos-device-{i}"), ra.clone());
                let mut transaction = device.enroll(&addrs, i, retries);
                transaction.finished = load_start.elapsed();
                results.lock().unwrap().push((device, transaction));
            })
        })
        .collect();

    // The faults, at fixed fractions of the run.
    let at = |fraction: f64| {
        let due = load_start + Duration::from_secs_f64(settings.secs * fraction);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        format!("{:5.1}s", load_start.elapsed().as_secs_f64())
    };
    let mut events = Vec::new();
    let t = at(0.15);
    fleet.replace_replica(1, Duration::from_secs(2));
    events.push(format!("{t} SIGKILL replica 1, a new one after 2 s"));
    let t = at(0.35);
    fleet.cas[0].kill();
    std::thread::sleep(Duration::from_secs(3));
    fleet.cas[0].restart();
    events.push(format!("{t} SIGKILL CA a, restarted after 3 s"));
    let t = at(0.55);
    let redis_down = load_start.elapsed();
    fleet.redis.stop();
    std::thread::sleep(Duration::from_secs(1));
    fleet.redis.restart();
    let redis_up = load_start.elapsed();
    events.push(format!("{t} Redis killed, restarted (empty) after 1 s"));
    let t = at(0.75);
    let tokens = fleet.pki.softhsm_tokens();
    let away = tokens.with_extension("away");
    std::fs::rename(&tokens, &away).unwrap();
    std::thread::sleep(Duration::from_secs_f64(settings.hsm_secs));
    std::fs::rename(&away, &tokens).unwrap();
    events.push(format!("{t} token folder away for {} s", settings.hsm_secs));

    for handle in handles {
        handle.join().expect("a load worker panicked");
    }
    let load_took = load_start.elapsed();
    let mut done = std::mem::take(&mut *results.lock().unwrap());
    assert_eq!(done.len(), total, "a transaction was lost");

    // Every device that got a certificate asks again (CertPoll, another replica): the
    // same certificate, or none for a transaction that ended before Redis restarted
    // empty or while it was down (FAILURE badCertID: a certificate issued while the
    // store was down is delivered but not recorded; the gateway logs it). The margin
    // covers a request that was already past its store write when Redis came back.
    let (mut repolled, mut forgotten) = (0, 0);
    let mut problems = Vec::new();
    for (i, (device, t)) in done.iter_mut().enumerate() {
        if t.end != End::Success {
            continue;
        }
        let addr = fleet.replicas[i % 3].addr;
        let (spec, message) = device.certpoll();
        match device.exchange(addr, &spec, &message) {
            Answer::Reply(reply) if reply.status == PkiStatus::Success => {
                let fields = CertificateFields::parse(&reply.certificates[0]).unwrap();
                t.issued
                    .push((fields.issuer.to_vec(), fields.serial.to_vec()));
                repolled += 1;
            }
            Answer::Reply(reply)
                if reply.status == PkiStatus::Failure
                    && t.finished < redis_up + Duration::from_secs(2) =>
            {
                forgotten += 1;
            }
            Answer::Reply(reply) => problems.push(format!(
                "{}: ended at {:?} (Redis down {redis_down:?}..{redis_up:?}), the CertPoll after the run got {:?} {:?}",
                t.transaction_id, t.finished, reply.status, reply.fail_info
            )),
            Answer::Http(status) => problems.push(format!(
                "{}: the CertPoll after the run got HTTP {status}",
                t.transaction_id
            )),
            Answer::Transport(e) => problems.push(format!(
                "{}: the CertPoll after the run got {e}",
                t.transaction_id
            )),
        }
    }
    let transactions: Vec<Transaction> = done.into_iter().map(|(_, t)| t).collect();

    // ---- The proofs ----------------------------------------------------------------

    // Replies: one serial per transaction, no (issuer, serial) twice overall.
    let mut owner: HashMap<(Vec<u8>, Vec<u8>), &str> = HashMap::new();
    let mut reply_duplicates = 0;
    for t in &transactions {
        let distinct: HashSet<_> = t.issued.iter().collect();
        if distinct.len() > 1 {
            reply_duplicates += 1;
            problems.push(format!(
                "{}: {} certificates in replies",
                t.transaction_id,
                distinct.len()
            ));
        }
        for id in distinct {
            if let Some(other) = owner.insert(id.clone(), &t.transaction_id) {
                problems.push(format!(
                    "serial {} given to {other} and {}",
                    hex::encode(&id.1),
                    t.transaction_id
                ));
            }
        }
    }

    // The gateways' side: `certificate issued` lines per transactionID, every log.
    let mut issued_lines: HashMap<String, usize> = HashMap::new();
    let mut logs = Vec::new();
    for gw in fleet.replicas.iter().chain(&fleet.killed) {
        logs.push(gw.log());
    }
    for log in &logs {
        for line in log.lines().filter(|l| l.contains("certificate issued")) {
            if let Some(id) = line
                .split("transaction_id=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
            {
                *issued_lines
                    .entry(id.trim_matches('"').to_owned())
                    .or_default() += 1;
            }
        }
        if log.contains("panicked") {
            problems.push(format!("a replica panicked:\n{log}"));
        }
    }
    let not_recorded: usize = logs
        .iter()
        .map(|log| log.matches("issued certificate not recorded").count())
        .sum();
    let log_duplicates = issued_lines.values().filter(|n| **n > 1).count();
    for (id, n) in &issued_lines {
        if *n > 1 {
            problems.push(format!(
                "{id}: `certificate issued` {n} times in the replica logs"
            ));
        }
    }

    // The CAs' side: certificates per device key in both depots.
    let ours: HashMap<&[u8], &str> = transactions
        .iter()
        .map(|t| (&t.spki[..], &t.transaction_id[..]))
        .collect();
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    let mut where_issued: HashMap<&str, Vec<String>> = HashMap::new();
    let depot: Vec<(&str, Vec<u8>)> = ["a", "b"]
        .into_iter()
        .zip(&fleet.cas)
        .flat_map(|(name, ca)| ca.issued_certificates().into_iter().map(move |c| (name, c)))
        .collect();
    // scepserver writes a certificate file in place: one killed mid-write leaves a
    // truncated file (a certificate it never sent). Counted, not parsed.
    let mut truncated = 0;
    for (name, cert) in &depot {
        let Ok(fields) = CertificateFields::parse(cert) else {
            truncated += 1;
            continue;
        };
        if let Some(id) = ours.get(fields.spki) {
            *per_key.entry(id).or_default() += 1;
            where_issued
                .entry(id)
                .or_default()
                .push(format!("CA {name} serial {}", hex::encode(fields.serial)));
        }
    }
    // And no (issuer, serial) twice in the depots.
    let mut depot_serials = HashSet::new();
    for (_, cert) in &depot {
        let Ok(fields) = CertificateFields::parse(cert) else {
            continue;
        };
        if !depot_serials.insert((fields.issuer.to_vec(), fields.serial.to_vec())) {
            problems.push(format!(
                "serial {} issued twice by one CA (depot)",
                hex::encode(fields.serial)
            ));
        }
    }
    let ca_duplicates = per_key.values().filter(|n| **n > 1).count();
    for (id, n) in &per_key {
        if *n > 1 {
            // What the replicas logged about it, to tell which fault did it.
            let lines: Vec<&str> = logs
                .iter()
                .flat_map(|log| log.lines())
                .filter(|l| l.contains(*id))
                .collect();
            problems.push(format!(
                "{id}: {n} certificates in the CA depots ({:?}); the replicas logged:\n{}",
                where_issued[id],
                lines.join("\n")
            ));
        }
    }
    // A certificate the CA issued that no device received (issued, then the reply was
    // lost): not a duplicate, but worth seeing.
    let delivered: HashSet<&str> = transactions
        .iter()
        .filter(|t| t.end == End::Success)
        .map(|t| &t.transaction_id[..])
        .collect();
    let orphans = per_key.keys().filter(|id| !delivered.contains(*id)).count();

    // Every transaction ended, no hang.
    let mut ends: BTreeMap<End, usize> = BTreeMap::new();
    for t in &transactions {
        *ends.entry(t.end.clone()).or_default() += 1;
        if let End::Unfinished(why) = &t.end {
            problems.push(format!(
                "{} unfinished after {} retries: {why}",
                t.transaction_id, t.retries
            ));
        }
    }
    let hangs: usize = transactions.iter().map(|t| t.hangs).sum();
    if hangs > 0 {
        problems.push(format!(
            "{hangs} requests got no answer within {REQUEST_TIMEOUT:?}"
        ));
    }

    // Memory of the live replicas, and they are alive.
    let mut max_hwm = 0;
    let mut rss = Vec::new();
    for gw in &mut fleet.replicas {
        if !gw.alive() {
            problems.push(format!("replica {} died:\n{}", gw.addr, gw.log()));
        }
        let (hwm, now) = memory_kib(gw.pid());
        max_hwm = max_hwm.max(hwm);
        rss.push(format!("{}/{} MiB", hwm / 1024, now / 1024));
    }
    if max_hwm / 1024 >= settings.max_rss_mib {
        problems.push(format!(
            "peak RSS {} MiB >= {} MiB",
            max_hwm / 1024,
            settings.max_rss_mib
        ));
    }

    // ---- The summary ---------------------------------------------------------------
    let count = |f: &dyn Fn(&End) -> bool| {
        ends.iter()
            .filter(|(e, _)| f(e))
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    let retries: usize = transactions.iter().map(|t| t.retries).sum();
    let slowest = transactions
        .iter()
        .map(|t| t.took)
        .max()
        .unwrap_or_default();
    eprintln!(
        "\nchaos run: {total} transactions at {}/s over {load_took:.1?} (whole test {:.1?})",
        settings.rate,
        started.elapsed()
    );
    for event in &events {
        eprintln!("  {event}");
    }
    eprintln!("  {:<34} {:>8}", "transactions", total);
    eprintln!("  {:<34} {:>8}", "SUCCESS", count(&|e| *e == End::Success));
    for (end, n) in &ends {
        if let End::Failure(info) = end {
            eprintln!("  {:<34} {:>8}", format!("FAILURE {info}"), n);
        }
    }
    eprintln!("  {:<34} {:>8}", "PENDING", count(&|e| *e == End::Pending));
    eprintln!(
        "  {:<34} {:>8}",
        "unfinished",
        count(&|e| matches!(e, End::Unfinished(_)))
    );
    eprintln!("  {:<34} {:>8}", "retries (resends + CertPolls)", retries);
    eprintln!(
        "  {:<34} {:>8}",
        "slowest transaction (ms)",
        slowest.as_millis()
    );
    let mut setbacks: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &transactions {
        for (kind, n) in &t.setbacks {
            *setbacks.entry(kind).or_default() += n;
        }
    }
    for (kind, n) in &setbacks {
        eprintln!("  {:<34} {:>8}", format!("  answered {kind}"), n);
    }
    eprintln!("  {:<34} {:>8}", "hung requests", hangs);
    eprintln!(
        "  {:<34} {:>8}",
        "CertPoll after: same certificate", repolled
    );
    eprintln!(
        "  {:<34} {:>8}",
        "CertPoll after: forgotten (Redis)", forgotten
    );
    eprintln!(
        "  {:<34} {:>8}",
        "issued while the store was down", not_recorded
    );
    eprintln!("  {:<34} {:>8}", "duplicates in replies", reply_duplicates);
    eprintln!(
        "  {:<34} {:>8}",
        "duplicates in replica logs", log_duplicates
    );
    eprintln!("  {:<34} {:>8}", "duplicates in CA depots", ca_duplicates);
    eprintln!("  {:<34} {:>8}", "CA certificates never delivered", orphans);
    eprintln!(
        "  {:<34} {:>8}",
        "truncated depot files (CA killed)", truncated
    );
    eprintln!("  {:<34} {:>8}", "max RSS (VmHWM, MiB)", max_hwm / 1024);
    eprintln!("  replicas VmHWM/VmRSS: {}", rss.join(", "));

    assert!(
        problems.is_empty(),
        "the chaos run found:\n{}",
        problems.join("\n")
    );
    // Most devices got through: the faults are short and the retries outlast them.
    assert!(
        count(&|e| *e == End::Success) * 10 >= total * 8,
        "fewer than 80% SUCCESS: {ends:?}"
    );
}
