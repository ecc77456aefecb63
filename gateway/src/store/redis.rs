//! The shared store: one Redis (or Valkey, or a managed Redis) for a fleet of replicas.
//!
//! Any replica can answer any request, and a device never gets two certificates for one
//! transaction because its retry landed elsewhere (RFC 8894 §3.2.1.1: the transactionID
//! stays the same for every message of a transaction):
//!
//! - **claim**: `SET key <InProgress> NX PX <lease> GET` — one round trip that either
//!   creates the claim or returns what was there (<https://redis.io/docs/latest/commands/set/>;
//!   NX together with GET needs Redis ≥ 7.0). The old value says who owns it.
//! - **issued** / **finish**: `SET key <record> PX <ttl>` (pipelined with the certificate's
//!   own key for GetCert): the happy path costs two round trips.
//! - **release**: compare-and-delete in a Lua script (a plain `EVAL`,
//!   <https://redis.io/docs/latest/commands/eval/>), so that a lapsed claim re-won by
//!   another replica is never deleted by the first. Releases are rare (a failed
//!   request), so sending the script's text each time costs nothing that matters, and a
//!   plain command can be pipelined, followed by `WAIT`, and redirected like any other.
//! - a claim whose replica died simply expires with its lease (`PX`).
//!
//! Every call is bounded by `command_timeout`: when Redis is down the caller gets
//! [`Error::Unavailable`] (HTTP 503, nothing issued, the client retries) — never a hang,
//! and never an issuance without a claim. The service resumes without a restart.
//!
//! Two kinds of connection, one set of commands ([`Command`]):
//! - a PKIOperation on tokio's blocking pool (HSM keys, upstream CAs, a webhook or Intune
//!   challenge) runs inside [`super::blocking_scope`]; there each call takes a plain
//!   blocking connection from a small pool (made on demand, dropped after any error, so a
//!   Redis restart costs one failed call at most, retried at once on a new connection);
//! - everything else — a PKIOperation run inline on a worker (software keys), readiness,
//!   the admin endpoint, background polling — uses the async `ConnectionManager`, which
//!   reconnects by itself; an inline PKIOperation's claim and issued record are
//!   [`Overlapped`] with its RSA work.
//!
//! Where the commands go — one endpoint, or the master Redis Sentinel names, followed
//! through failovers — is [`super::master`]'s job; a command that failed the way a
//! failover makes commands fail is sent once more to the node it finds.
//!
//! Redis replicates asynchronously: a write the master acknowledged can be lost when a
//! replica is promoted before it arrived, and a lost claim is how a retry during a
//! failover could get a second certificate. With `replica_acks = N` every write that
//! matters (claim, records, certificates, revocations, spent one-time passwords) is
//! followed in the same pipeline by `WAIT N timeout`
//! (<https://redis.io/docs/latest/commands/wait/>), and a claim fewer than N replicas
//! acknowledged is given up (HTTP 503, nothing issued): see [`ReplicaAcks`].
//!
//! The blocking path exists for CPU, not latency: from a blocking-pool thread a round trip
//! through the async connection wakes four or five threads (bench/README.md, "Redis store").
//!
//! Keys (`prefix` defaults to `scep:`):
//! ```text
//! {prefix}tx:n:{transactionID}                      a PKCSReq transaction
//! {prefix}tx:r:{sha256(renewed cert) hex}:{transactionID}   a renewal
//! {prefix}resubmit:{n|r}:…                           the same, a queued request's
//!                                                    resubmission lock (a claim)
//! {prefix}cert:{sha256(issuer Name) hex}:{serial hex}       an issued certificate
//! {prefix}revoked:{sha256(issuer Name) hex}         hash: serial hex → revoked since (Unix s)
//! {prefix}otp:{sha256(password) hex}                 a one-time password's record (JSON)
//! {prefix}otpreq:{sha256(requester) hex}             sorted set: that requester's live
//!                                                    passwords, scored by expiry (ms)
//! ```
//!
//! One-time passwords: **put** is a Lua script (drop expired members, count, refuse at
//! the bound, `SET … PX`, `ZADD`) so that two replicas cannot both add a requester's
//! last allowed password; **take** is `GETDEL` (Redis ≥ 6.2,
//! <https://redis.io/docs/latest/commands/getdel/>): of any concurrent takes exactly one
//! gets the record, which is what makes a password single-use across replicas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManagerConfig;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{Client, ConnectionAddr, IntoConnectionInfo, RedisError};

use super::cluster::Seeds;
use super::master::{Connections, Lane, Locator, Master, Node};
use super::migration;
use super::overlap::{Orphan, Overlapped};
use super::{
    codec, observe, Claim, InFlight, OtpPut, OtpRecord, Record, Revocation, Store, TransactionKey,
};
use crate::ca::BoxFuture;
use crate::error::{Error, Result};

/// Deletes the transaction only if it still holds exactly our InProgress record
/// (ARGV[1]): a claim that lapsed and was won by another replica is left alone.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Adds a one-time password unless its requester is at the bound. KEYS[1] the password
/// key, KEYS[2] the requester's set; ARGV: record, ttl ms, bound, member. Time is the
/// server's (`TIME`), so replicas with skewed clocks agree on what has expired.
const PUT_OTP: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[4])
if redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
";

/// How to reach Redis and what to keep for how long.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://[user][:password@]host[:port][/db]` or `rediss://…` for TLS. May hold a
    /// password: never logged (see [`redact`]).
    pub url: String,
    /// PEM CA certificate(s) for `rediss://` endpoints not signed by a public CA
    /// (Memorystore's server CA, a private CA); the system roots otherwise.
    pub tls_ca_pem: Option<Vec<u8>>,
    pub key_prefix: String,
    /// Bound on every store call, the (re)connection included.
    pub command_timeout: Duration,
    /// How long finished transactions and issued certificates are kept.
    pub ttl: Duration,
    /// Find the master through Redis Sentinel; `url` then gives only how to talk to it
    /// (user, password, database), not where it is.
    pub sentinel: Option<SentinelSettings>,
    /// Replicas that must acknowledge each write before it counts (`WAIT`); 0: none,
    /// the master's acknowledgement is enough.
    pub replica_acks: u32,
    /// `url` is a node of a Redis Cluster: the store's keys share one hash slot, and
    /// the master serving it is looked up ([`super::cluster`]).
    pub cluster: Option<ClusterSettings>,
}

/// A Redis Cluster's further seed nodes, and how often its topology is read again.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// `host:port` of more nodes to read the topology from, after the URL's.
    pub nodes: Vec<String>,
    /// How often the topology is read while every command succeeds (it is also read at
    /// once after a redirection or a dropped connection).
    pub recheck: Duration,
}

/// `WAIT replicas timeout` after each write that matters: the write counts once that
/// many replicas have it, so a failover promoting one of them cannot lose it.
///
/// Redis documents the limit: "WAIT does not make Redis a strongly consistent store"
/// (a write acknowledged by the replicas can still be lost if the failover promotes
/// another replica, e.g. one that was partitioned). Sentinel promotes the replica with
/// the most replicated data, so with `replicas` equal to the number of replicas the
/// window closes for the failovers Sentinel drives.
#[derive(Debug, Clone, Copy)]
struct ReplicaAcks {
    replicas: u32,
    /// Half the command timeout: WAIT answers (with a count) before the call's own
    /// deadline, so that a missing replica is named as such, not as a timeout.
    timeout_ms: u64,
}

impl ReplicaAcks {
    fn new(replicas: u32, command_timeout: Duration) -> Option<Self> {
        (replicas > 0).then(|| ReplicaAcks {
            replicas,
            timeout_ms: millis(command_timeout / 2),
        })
    }

    /// `pipe` with the `WAIT` appended (its reply is the last).
    fn append_to(self, pipe: &mut redis::Pipeline) {
        pipe.cmd("WAIT").arg(self.replicas).arg(self.timeout_ms);
    }
}

/// Where the sentinels are and what they call the master.
#[derive(Clone)]
pub struct SentinelSettings {
    /// The name the sentinels monitor the master under (`sentinel monitor <name> …`).
    pub master: String,
    /// `host:port` of each sentinel, tried in order.
    pub nodes: Vec<String>,
    /// The sentinels' own credentials (`requirepass`, or an ACL user, in their
    /// sentinel.conf), if they need any. Never logged.
    pub username: Option<String>,
    pub password: Option<String>,
    /// How often the sentinels are asked while every command succeeds (they are also
    /// asked at once after a command fails in a way a failover explains).
    pub recheck: Duration,
    /// The sentinels speak TLS (their `tls-port`), checked against
    /// [`RedisSettings::tls_ca_pem`] or the system roots. (The master speaks TLS when
    /// the URL is `rediss://`.)
    pub tls: bool,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("command_timeout", &self.command_timeout)
            .field("ttl", &self.ttl)
            .field(
                "sentinel",
                &self.sentinel.as_ref().map(|s| (&s.master, &s.nodes)),
            )
            .field("replica_acks", &self.replica_acks)
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// Transactions and issued certificates in Redis.
pub struct RedisStore {
    /// The node commands go to (fixed, or named by the sentinels).
    master: Master,
    /// Idle blocking connections and the generation of the node they reach, at most
    /// [`MAX_IDLE_BLOCKING`]. The lock is held only to push or pop, never across I/O.
    idle: std::sync::Mutex<Vec<(u64, redis::Connection)>>,
    /// The URL without its password, for logs and errors.
    endpoint: String,
    prefix: String,
    timeout: Duration,
    ttl: Duration,
    /// `WAIT` after each write that matters, if configured.
    acks: Option<ReplicaAcks>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("endpoint", &self.endpoint)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisStore {
    /// Prepares the connection without waiting for it: a gateway started while Redis is
    /// down starts not-ready and becomes ready when Redis answers. Must be called inside
    /// a tokio runtime (the connection manager spawns its task there).
    pub fn connect(settings: RedisSettings) -> Result<Self> {
        let endpoint = redact(&settings.url);
        let invalid = |e: RedisError| {
            // The parse errors of the redis crate do not echo the URL; the endpoint we
            // name is redacted.
            Error::Unavailable(format!("redis store {endpoint}: {e}"))
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Unavailable(
                "the redis store must be created inside the tokio runtime".into(),
            ));
        }
        let sentinel_tls = settings.sentinel.as_ref().is_some_and(|s| s.tls);
        if settings.url.starts_with("rediss://") || sentinel_tls {
            // rustls picks its provider from the process default; make it the one the
            // gateway uses everywhere (aws-lc-rs), even if another crate enables ring.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let client = match &settings.tls_ca_pem {
            Some(pem) => Client::build_with_tls(
                settings.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => Client::open(settings.url.as_str()),
        }
        .map_err(invalid)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.command_timeout))
            .set_response_timeout(Some(settings.command_timeout))
            // Reconnect attempts are cheap and our own timeout bounds each call: keep the
            // backoff short so that the service resumes within a second of Redis.
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connections = Connections {
            config,
            waiting: if settings.replica_acks > 0 {
                WAITING_CONNECTIONS
            } else {
                0
            },
        };
        // In a cluster every key carries the prefix as its hash tag (see `cluster`).
        let prefix = match &settings.cluster {
            Some(_) => format!("{{{}}}", settings.key_prefix),
            None => settings.key_prefix,
        };
        let (master, endpoint) = match (&settings.sentinel, &settings.cluster) {
            (Some(_), Some(_)) => {
                return Err(Error::Unavailable(format!(
                    "redis store {endpoint}: Sentinel and Cluster exclude each other"
                )))
            }
            (None, Some(cluster)) => {
                if client.get_connection_info().redis_settings().db() != 0 {
                    return Err(Error::Unavailable(format!(
                        "redis store {endpoint}: a Redis Cluster has only database 0"
                    )));
                }
                let seeds = Seeds::new(
                    &client,
                    &cluster.nodes,
                    prefix.clone(),
                    settings.command_timeout,
                )
                .map_err(invalid)?;
                let slot = format!("the slot of {prefix}");
                let master = Master::located(
                    Locator::Cluster(seeds),
                    slot.clone(),
                    connections,
                    settings.command_timeout,
                    cluster.recheck,
                );
                let mut seeds = vec![endpoint];
                seeds.extend(cluster.nodes.iter().cloned());
                (master, format!("cluster {} ({slot})", seeds.join(",")))
            }
            (None, None) => (
                Master::fixed(client, connections).map_err(invalid)?,
                endpoint,
            ),
            (Some(sentinel), None) => {
                let located = sentinel_client(&client, sentinel, settings.tls_ca_pem.as_deref())
                    .map_err(invalid)?;
                let master = Master::located(
                    Locator::Sentinel(Box::new(located)),
                    sentinel.master.clone(),
                    connections,
                    settings.command_timeout,
                    sentinel.recheck,
                );
                let endpoint = format!(
                    "sentinel {} master {:?}",
                    sentinel.nodes.join(","),
                    sentinel.master
                );
                (master, endpoint)
            }
        };
        Ok(RedisStore {
            master,
            idle: std::sync::Mutex::new(Vec::new()),
            endpoint,
            prefix,
            timeout: settings.command_timeout,
            ttl: settings.ttl,
            acks: ReplicaAcks::new(settings.replica_acks, settings.command_timeout),
        })
    }

    /// The endpoint, password removed.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// What every key starts with: `key_prefix`, in braces on a cluster (its hash tag).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn transaction_key(&self, key: &TransactionKey) -> String {
        let kind = if key.resubmission { "resubmit" } else { "tx" };
        match &key.renewing {
            None => format!("{}{kind}:n:{}", self.prefix, key.id.as_str()),
            Some(renewed) => format!(
                "{}{kind}:r:{}:{}",
                self.prefix,
                hex::encode(renewed),
                key.id.as_str()
            ),
        }
    }

    fn certificate_key(&self, issuer: &[u8], serial: &[u8]) -> String {
        format!(
            "{}cert:{}:{}",
            self.prefix,
            hex::encode(super::sha256(issuer)),
            hex::encode(serial)
        )
    }

    fn revocations_key(&self, issuer: &[u8]) -> String {
        format!(
            "{}revoked:{}",
            self.prefix,
            hex::encode(super::sha256(issuer))
        )
    }

    fn otp_key(&self, hash: &[u8; 32]) -> String {
        format!("{}otp:{}", self.prefix, hex::encode(hash))
    }

    fn otp_requester_key(&self, requester: &str) -> String {
        format!(
            "{}otpreq:{}",
            self.prefix,
            hex::encode(super::sha256(requester.as_bytes()))
        )
    }

    fn ttl_ms(&self) -> u64 {
        millis(self.ttl)
    }

    /// Runs one store command within the timeout, retrying once on a connection error
    /// (the first command after Redis comes back fails while the connection is made
    /// again). Retrying is safe for every command here: a claim whose first SET did land
    /// answers Existing(InProgress) with our own key hash, i.e. PENDING, never a second
    /// issuance.
    ///
    /// On a [`super::blocking_scope`] thread the command goes over a pooled blocking
    /// connection; everywhere else over the async connection manager.
    async fn call<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        command: Command,
    ) -> Result<T> {
        let started = Instant::now();
        let result = if super::may_block() {
            self.call_blocking(&command)
        } else {
            self.call_async(&command).await
        };
        let result = result.map_err(|e| self.unavailable(op, e));
        observe::command("redis", op, started.elapsed(), result.is_ok());
        result
    }

    /// A write that matters (see [`ReplicaAcks`]): `command`, with the `WAIT` if
    /// configured; the answer is the write's own.
    async fn call_write<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        command: Command,
    ) -> Result<T> {
        self.call_write_on(op, command, None).await
    }

    /// [`RedisStore::call_write`] over the waiting connection of `affinity`.
    async fn call_write_on<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        command: Command,
        affinity: Option<u64>,
    ) -> Result<T> {
        let value: redis::Value = self.call(op, self.with_wait(command, affinity)).await?;
        answer_of(value, self.acks).map_err(|e| self.unavailable(op, e))
    }

    /// `command` followed by `WAIT` in one pipeline, when replica acknowledgements are
    /// configured, sent over the waiting connection of `affinity` (see
    /// [`RedisStore::claim_affinity`]) or the next in turn.
    fn with_wait(&self, command: Command, affinity: Option<u64>) -> Command {
        let Some(acks) = self.acks else {
            return command;
        };
        let mut pipe = match command {
            Command::Cmd(cmd) => {
                let mut pipe = redis::pipe();
                pipe.add_command(cmd);
                pipe
            }
            Command::Pipe(pipe) | Command::Waiting(pipe, _) => pipe,
        };
        acks.append_to(&mut pipe);
        Command::Waiting(pipe, affinity)
    }

    fn unavailable(&self, op: &'static str, failure: Failure) -> Error {
        if let Failure::Unreplicated { acked, wanted } = failure {
            observe::unreplicated(op);
            tracing::warn!(
                op,
                acked,
                wanted,
                "a redis write reached fewer replicas than store.replica_acks asks"
            );
        }
        Error::Unavailable(match failure {
            Failure::Timeout => format!(
                "redis store {}: {op}: no answer within {} ms",
                self.endpoint,
                self.timeout.as_millis()
            ),
            Failure::Redis(e) => format!("redis store {}: {op}: {e}", self.endpoint),
            Failure::NoMaster => format!(
                "redis store {}: {op}: no master is known (the sentinels or the cluster name none)",
                self.endpoint
            ),
            Failure::Unreplicated { acked, wanted } => format!(
                "redis store {}: {op}: acknowledged by {acked} of the {wanted} replicas store.replica_acks asks for",
                self.endpoint
            ),
        })
    }

    async fn call_async<T: redis::FromRedisValue>(
        &self,
        command: &Command,
    ) -> std::result::Result<T, Failure> {
        run_async(&self.master, self.timeout, command).await
    }

    /// A write ([`RedisStore::call_write`]) on the async connection as a future that
    /// owns what it needs, to be [`Overlapped`] (its metric and error are the caller's).
    fn write_owned<T: redis::FromRedisValue + Send + 'static>(
        &self,
        command: Command,
        affinity: Option<u64>,
    ) -> BoxFuture<'static, std::result::Result<T, Failure>> {
        let master = self.master.clone();
        let (timeout, acks) = (self.timeout, self.acks);
        let command = self.with_wait(command, affinity);
        Box::pin(async move {
            let value = run_async::<redis::Value>(&master, timeout, &command).await?;
            answer_of(value, acks)
        })
    }

    /// A claim's answer nobody awaited: a claim it may have won (`redis_key` holding
    /// `ours`, the claim's own value) is released, so that the transaction is not held
    /// until its lease runs out.
    fn release_if_won(&self, redis_key: String, ours: Vec<u8>) -> Orphan<ClaimAnswer> {
        let master = self.master.clone();
        let timeout = self.timeout;
        Box::new(move |answer| {
            Box::pin(async move {
                // Released unless the transaction was someone else's: won (nothing was
                // there), our own claim sent earlier, or no answer (it may have landed).
                if matches!(&answer, Ok(Some(old)) if *old != ours) {
                    return;
                }
                let release = Command::Cmd(release_command(&redis_key, &ours));
                if run_async::<i64>(&master, timeout, &release).await.is_err() {
                    tracing::debug!("an unused claim was not released; it lapses with its lease");
                }
            })
        })
    }

    /// The blocking path: an idle pooled connection (or a new one), read and write
    /// timeouts set to what is left of the command timeout. A connection goes back to
    /// the pool only after a clean answer; after any error its state is unknown and it
    /// is dropped. A pooled connection that fails on I/O (Redis restarted since), or any
    /// connection to a node that has since been replaced (a failover: `-READONLY`, or a
    /// dropped connection the sentinels explain), is replaced by a new one once, within
    /// the same deadline.
    fn call_blocking<T: redis::FromRedisValue>(
        &self,
        command: &Command,
    ) -> std::result::Result<T, Failure> {
        let deadline = Instant::now() + self.timeout;
        let node = self
            .master
            .node_blocking(deadline)
            .ok_or(Failure::NoMaster)?;
        let pooled = self.idle_connection(node.generation);
        let retry_allowed = pooled.is_some();
        let mut connection = match pooled {
            Some(c) => c,
            None => connect_blocking(&node, deadline)?,
        };
        let mut generation = node.generation;
        let result = match run_blocking(command, &node, &mut connection, deadline) {
            Err(Failure::Redis(e)) => match self.master.after_blocking(&node, &e, deadline) {
                Some(next) if retry_allowed || next.generation != node.generation => {
                    connection = connect_blocking(&next, deadline)?;
                    generation = next.generation;
                    run_blocking(command, &next, &mut connection, deadline)
                }
                _ => Err(Failure::Redis(e)),
            },
            other => other,
        };
        if result.is_ok() {
            self.return_connection(generation, connection);
        }
        result
    }

    /// The issued certificate under its issuer and serial (GetCert) and the transaction's
    /// final record, in one pipeline. Its replies are kept (`OK`, `OK`), not `ignore`d, so
    /// that a pipeline answered command by command during a slot migration
    /// ([`super::migration`]) has the same shape as one answered at once.
    fn issued_pipeline(
        &self,
        key: &TransactionKey,
        issuer: &[u8],
        serial: &[u8],
        certificate: Arc<[u8]>,
    ) -> redis::Pipeline {
        let ttl = self.ttl_ms();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.certificate_key(issuer, serial))
            .arg(&*certificate)
            .arg("PX")
            .arg(ttl)
            .cmd("SET")
            .arg(self.transaction_key(key))
            .arg(codec::encode(key, &Record::Issued { certificate }))
            .arg("PX")
            .arg(ttl);
        pipe
    }

    /// Writes `command` (a write: with the `WAIT` if configured) on a blocking connection
    /// without reading its `replies` (those of `command` itself); `None`
    /// off a [`super::blocking_scope`] thread or when it cannot be sent (the caller then
    /// makes the ordinary call, with its retry).
    fn send(&self, op: &'static str, command: Command, replies: usize) -> Option<Sent<'_>> {
        if !super::may_block() {
            return None;
        }
        let started = Instant::now();
        let deadline = started + self.timeout;
        let command = self.with_wait(command, None);
        let replies = replies + usize::from(self.acks.is_some());
        let packed = match &command {
            Command::Cmd(c) => c.get_packed_command(),
            Command::Pipe(p) | Command::Waiting(p, _) => p.get_packed_pipeline(),
        };
        // Before a locator first named the master, waits for it (as `call_blocking` does).
        let node = self.master.node_blocking(deadline)?;
        let mut connection = match self.idle_connection(node.generation) {
            Some(c) => c,
            None => connect_blocking(&node, deadline).ok()?,
        };
        let left = remaining(deadline).ok()?;
        connection.set_write_timeout(Some(left)).ok()?;
        connection.send_packed_command(&packed).ok()?;
        Some(Sent {
            store: self,
            op,
            command,
            replies,
            acks: self.acks,
            connection: Some(connection),
            generation: node.generation,
            abandon: None,
            sending: started.elapsed(),
            deadline,
        })
    }

    /// A claim written on a blocking connection ([`RedisStore::send`]); `None` off a
    /// [`super::blocking_scope`] thread or when it cannot be sent.
    fn send_claim(&self, key: &TransactionKey, lease: Duration) -> Option<RedisClaim<'_>> {
        let (redis_key, ours, command) = self.claim_command(key, lease);
        let mut sent = self.send("claim", Command::Cmd(command), 1)?;
        sent.abandon = Some((redis_key, ours));
        Some(RedisClaim {
            sent,
            key: key.clone(),
        })
    }

    /// The waiting connection a claim of `redis_key` goes over ([`affinity`]); `None`
    /// without `replica_acks`, where there is one connection and nothing to compute.
    fn claim_affinity(&self, redis_key: &str) -> Option<u64> {
        self.acks.map(|_| affinity(redis_key))
    }

    /// After a claim whose answer was lost (a timeout, a dropped connection): the claim
    /// may still land, e.g. on a Redis that hung and resumes, or (with `replica_acks`)
    /// behind other requests' `WAIT`s on its connection. A release sent after it on the
    /// same (multiplexed) connection then deletes it, if it is still this request's
    /// claim, so that the client's retry does not wait out the lease as PENDING. Best
    /// effort: the lease remains the backstop.
    fn release_later(&self, key: &TransactionKey) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let redis_key = self.transaction_key(key);
        let ours = codec::encode(key, &Record::InProgress);
        let release = release_command(&redis_key, &ours);
        let release = match self.acks {
            // The claim went over the waiting connection of its key: so does this.
            Some(_) => {
                let mut pipe = redis::pipe();
                pipe.add_command(release);
                Command::Waiting(pipe, Some(affinity(&redis_key)))
            }
            None => Command::Cmd(release),
        };
        let (master, timeout) = (self.master.clone(), self.timeout);
        runtime.spawn(async move {
            if run_async::<redis::Value>(&master, timeout, &release)
                .await
                .is_err()
            {
                tracing::debug!("a claim whose answer was lost was not released (yet); it lapses with its lease");
            }
        });
    }

    /// The claim of `key`: its Redis key and the value it sets (our InProgress record),
    /// and the `SET … NX PX … GET` that sets it.
    fn claim_command(
        &self,
        key: &TransactionKey,
        lease: Duration,
    ) -> (String, Vec<u8>, redis::Cmd) {
        let redis_key = self.transaction_key(key);
        let ours = codec::encode(key, &Record::InProgress);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&redis_key)
            .arg(&ours)
            .arg("NX")
            .arg("PX")
            .arg(millis(lease))
            .arg("GET");
        (redis_key, ours, cmd)
    }

    /// An idle connection to the node of `generation`; those to an older node are
    /// dropped on the way.
    fn idle_connection(&self, generation: u64) -> Option<redis::Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((made_for, connection)) = idle.pop() {
            if made_for == generation {
                return Some(connection);
            }
        }
        None
    }

    /// Back to the pool after a clean answer (beyond the bound it is closed).
    fn return_connection(&self, generation: u64, connection: redis::Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_BLOCKING {
            idle.push((generation, connection));
        }
    }
}

fn connect_blocking(
    node: &Node,
    deadline: Instant,
) -> std::result::Result<redis::Connection, Failure> {
    let left = remaining(deadline)?;
    node.client
        .get_connection_with_timeout(left)
        .map_err(Failure::from)
}

/// The sentinels of `sentinel`, asked for a master reached the way `client`'s URL says
/// (TLS or not, user, password, database; its host and port are not used). `ca_pem`
/// checks the TLS certificates of both, the system roots if `None`.
fn sentinel_client(
    client: &Client,
    sentinel: &SentinelSettings,
    ca_pem: Option<&[u8]>,
) -> std::result::Result<redis::sentinel::SentinelClient, RedisError> {
    let certificates = || redis::TlsCertificates {
        client_tls: None,
        root_cert: ca_pem.map(<[u8]>::to_vec),
    };
    let mut nodes = Vec::with_capacity(sentinel.nodes.len());
    for node in &sentinel.nodes {
        let info = format!("redis://{node}").into_connection_info()?;
        let addr = match info.addr().clone() {
            ConnectionAddr::Tcp(host, port) if sentinel.tls => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                tls_params: None,
            },
            addr => addr,
        };
        nodes.push(addr);
    }
    let info = client.get_connection_info();
    let redis = info.redis_settings();
    let mut builder =
        SentinelClientBuilder::new(nodes, &sentinel.master, SentinelServerType::Master)?
            .set_client_to_redis_db(redis.db());
    if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
        if ca_pem.is_some() {
            builder = builder.set_client_to_redis_certificates(certificates());
        }
    }
    if sentinel.tls {
        builder = builder.set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        if ca_pem.is_some() {
            builder = builder.set_client_to_sentinel_certificates(certificates());
        }
    }
    if let Some(username) = redis.username() {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = redis.password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(username) = &sentinel.username {
        builder = builder.set_client_to_sentinel_username(username);
    }
    if let Some(password) = &sentinel.password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    builder.build()
}

/// How long a read past its deadline waits for an answer that should already be there
/// (see `read_replies`).
const READY_ANSWER_GRACE: Duration = Duration::from_millis(1);

/// Idle blocking connections kept per store: enough for the PKIOperations a replica runs
/// at once in practice; beyond it a connection is closed after use.
const MAX_IDLE_BLOCKING: usize = 64;

/// Connections of the async [`Lane::Waiting`] per node, with `replica_acks`: writes that
/// wait for the replicas at the same time, each for about one round trip to them. With
/// a replica 1 ms away, 8 connections carry ≈ 8,000 such writes a second, i.e. ≈ 4,000
/// enrollments (two each), more than a replica's cores sign.
const WAITING_CONNECTIONS: usize = 8;

/// One Redis command or pipeline, run over either kind of connection.
enum Command {
    Cmd(redis::Cmd),
    Pipe(redis::Pipeline),
    /// A pipeline ending with `WAIT` ([`RedisStore::with_wait`]), or one that must follow
    /// such a pipeline on its connection ([`RedisStore::release_later`]); on the async
    /// path it goes over a connection of [`Lane::Waiting`] (the one of its affinity, if
    /// any), so that nothing else waits behind it.
    Waiting(redis::Pipeline, Option<u64>),
}

impl Command {
    /// The command on `node`'s async connection; after `-ASK` or `-TRYAGAIN` (the
    /// store's cluster slot migrating), again one command at a time ([`migration`]).
    async fn run_async<T: redis::FromRedisValue>(
        &self,
        node: &Node,
        deadline: Instant,
    ) -> redis::RedisResult<T> {
        let mut connection = node.connection(self.lane());
        let answer = match self {
            Command::Cmd(c) => c.query_async(&mut connection).await,
            Command::Pipe(p) | Command::Waiting(p, _) => p.query_async(&mut connection).await,
        };
        match answer {
            Err(e) if migration::applies(&e) => {
                let (commands, single) = self.parts();
                let value =
                    migration::run_async(node, self.lane(), commands, single, deadline).await?;
                Ok(redis::from_redis_value(value)?)
            }
            answer => answer,
        }
    }

    fn lane(&self) -> Lane {
        match self {
            Command::Waiting(_, affinity) => Lane::Waiting(*affinity),
            _ => Lane::Direct,
        }
    }

    /// The commands sent, and whether this is a single command (its answer a reply,
    /// not an array of replies).
    fn parts(&self) -> (Vec<&redis::Cmd>, bool) {
        match self {
            Command::Cmd(c) => (vec![c], true),
            Command::Pipe(p) | Command::Waiting(p, _) => (p.cmd_iter().collect(), false),
        }
    }
}

/// Runs `command` on the async connection within `timeout`, once more after a
/// connection error or on the node a failover moved the master to (see
/// [`RedisStore::call`] and [`Master::after`]).
async fn run_async<T: redis::FromRedisValue>(
    master: &Master,
    timeout: Duration,
    command: &Command,
) -> std::result::Result<T, Failure> {
    let deadline = Instant::now() + timeout;
    let attempts = async {
        let node = master.node(deadline).await.ok_or(Failure::NoMaster)?;
        match command.run_async(&node, deadline).await {
            Err(e) => match master.after(&node, &e, deadline).await {
                Some(next) => command
                    .run_async(&next, deadline)
                    .await
                    .map_err(Failure::Redis),
                None => Err(Failure::Redis(e)),
            },
            Ok(answer) => Ok(answer),
        }
    };
    match tokio::time::timeout_at(deadline.into(), attempts).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Timeout),
    }
}

/// What a claim's `SET … NX … GET` returns: the old value, if there was one.
type ClaimAnswer = std::result::Result<Option<Vec<u8>>, Failure>;

/// Why a command failed: [`RedisStore::call`] names it.
enum Failure {
    Timeout,
    Redis(RedisError),
    /// The sentinels have named no master (yet).
    NoMaster,
    /// `WAIT` counted fewer replicas than [`ReplicaAcks`] asks for.
    Unreplicated {
        acked: i64,
        wanted: u32,
    },
}

/// The answer of a write out of what the connection returned: with [`ReplicaAcks`],
/// `value` holds the pipeline's replies, the last one `WAIT`'s count and the one before
/// it the write's own.
fn answer_of<T: redis::FromRedisValue>(
    value: redis::Value,
    acks: Option<ReplicaAcks>,
) -> std::result::Result<T, Failure> {
    let parsing = |e: redis::ParsingError| Failure::Redis(e.into());
    let value = match acks {
        None => value,
        Some(acks) => {
            let mut replies: Vec<redis::Value> = redis::from_redis_value(value).map_err(parsing)?;
            let acked: i64 = match replies.pop() {
                Some(count) => redis::from_redis_value(count).map_err(parsing)?,
                None => 0,
            };
            if acked < i64::from(acks.replicas) {
                return Err(Failure::Unreplicated {
                    acked,
                    wanted: acks.replicas,
                });
            }
            replies.pop().unwrap_or(redis::Value::Nil)
        }
    };
    redis::from_redis_value(value).map_err(parsing)
}

/// A socket timeout of a blocking connection is a [`Failure::Timeout`].
impl From<RedisError> for Failure {
    fn from(e: RedisError) -> Self {
        if e.is_timeout() {
            Failure::Timeout
        } else {
            Failure::Redis(e)
        }
    }
}

fn remaining(deadline: Instant) -> std::result::Result<Duration, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(Failure::Timeout)
    } else {
        Ok(left)
    }
}

/// `command` over `connection` (to `node`); after `-ASK` or `-TRYAGAIN` (the store's
/// cluster slot migrating), again one command at a time ([`migration`]).
fn run_blocking<T: redis::FromRedisValue>(
    command: &Command,
    node: &Node,
    connection: &mut redis::Connection,
    deadline: Instant,
) -> std::result::Result<T, Failure> {
    let left = remaining(deadline)?;
    connection
        .set_read_timeout(Some(left))
        .map_err(Failure::from)?;
    connection
        .set_write_timeout(Some(left))
        .map_err(Failure::from)?;
    let answer = match command {
        Command::Cmd(c) => c.query(connection),
        Command::Pipe(p) | Command::Waiting(p, _) => p.query(connection),
    };
    match answer {
        Err(e) if migration::applies(&e) => {
            let (commands, single) = command.parts();
            migration::run_blocking(node, connection, commands, single, deadline)
                .and_then(|value| Ok(redis::from_redis_value(value)?))
        }
        answer => answer,
    }
    .map_err(Failure::from)
}

/// What a claim's `GET` part returned: nothing (won), our own claim (won: an earlier
/// send of this same claim landed), or the record and whose it is.
fn claim_answer(key: &TransactionKey, old: Option<Vec<u8>>) -> Result<Claim> {
    let Some(bytes) = old else {
        return Ok(Claim::Won);
    };
    let stored = codec::decode(&bytes)?;
    Ok(if stored.key_hash != key.key_hash {
        Claim::Conflict
    } else if stored.claimant == Some(key.claimant) {
        Claim::Won
    } else {
        Claim::Existing(stored.record)
    })
}

/// A command written on a blocking connection ([`RedisStore::send`]), its replies not
/// read yet: its round trip runs while the thread does RSA work.
struct Sent<'a> {
    store: &'a RedisStore,
    op: &'static str,
    /// Kept to send again after a failed read. Everything sent this way may be repeated:
    /// SETs, and a claim (which then reads our own InProgress record: won).
    command: Command,
    /// Replies to read: the commands of a pipeline; the last one is the answer, or,
    /// with `acks`, `WAIT`'s count after it.
    replies: usize,
    acks: Option<ReplicaAcks>,
    /// `None` once read.
    connection: Option<redis::Connection>,
    /// Of the node `connection` reaches.
    generation: u64,
    /// A claim's Redis key and value. When its answer cannot be read, the release of
    /// that claim is written on the connection before it is dropped, so that Redis runs
    /// it right after the claim if the claim lands late (a Redis that hung and resumes).
    abandon: Option<(String, Vec<u8>)>,
    /// The time spent sending. The store latency metric of an overlapped command is
    /// what the request waited on the store: this plus the wait for the answer, not the
    /// RSA work in between.
    sending: Duration,
    deadline: Instant,
}

impl Sent<'_> {
    /// The answer; after a connection error, the command once more on a fresh
    /// connection (within a new `command_timeout`). A timeout is final: the deadline
    /// set when it was sent has passed.
    fn finish<T: redis::FromRedisValue>(&mut self) -> Result<T> {
        let reading = Instant::now();
        let result = match self.read_answer() {
            Ok(value) => answer_of(value, self.acks),
            Err(failure @ (Failure::Timeout | Failure::Unreplicated { .. })) => Err(failure),
            Err(Failure::Redis(_) | Failure::NoMaster) => self
                .store
                .call_blocking::<redis::Value>(&self.command)
                .and_then(|value| answer_of(value, self.acks)),
        };
        let waited = self.sending + reading.elapsed();
        observe::command("redis", self.op, waited, result.is_ok());
        result.map_err(|e| self.store.unavailable(self.op, e))
    }

    /// Reads every reply and returns the last, or with `acks` all of them (for
    /// [`answer_of`]); the connection goes back to the pool after clean replies only.
    /// After a failed read, a claim's release is written on the connection before it is
    /// dropped (see `abandon`).
    fn read_answer(&mut self) -> std::result::Result<redis::Value, Failure> {
        let mut connection = self.connection.take().ok_or(Failure::Timeout)?;
        let keep_all = self.acks.is_some();
        match read_replies(&mut connection, self.replies, keep_all, self.deadline) {
            Ok(answer) => {
                self.store.return_connection(self.generation, connection);
                Ok(answer)
            }
            Err(failure) => {
                if let Some((redis_key, ours)) = self.abandon.take() {
                    let release = release_command(&redis_key, &ours).get_packed_command();
                    let _ = connection.set_write_timeout(Some(Duration::from_millis(100)));
                    let _ = connection.send_packed_command(&release);
                }
                Err(failure)
            }
        }
    }
}

/// Reads `replies` replies within `deadline`: the last one, or all of them as an array
/// (`keep_all`, for [`answer_of`] to take `WAIT`'s count apart).
fn read_replies(
    connection: &mut redis::Connection,
    replies: usize,
    keep_all: bool,
    deadline: Instant,
) -> std::result::Result<redis::Value, Failure> {
    // The RSA work between sending and reading (an HSM's, on this path) may have
    // outlasted the deadline, which was set when the command was sent. An answer already
    // in the socket is still taken: past the deadline a read waits only a moment.
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(READY_ANSWER_GRACE);
    connection
        .set_read_timeout(Some(left))
        .map_err(Failure::from)?;
    let mut all = Vec::with_capacity(if keep_all { replies } else { 0 });
    let mut last = redis::Value::Nil;
    for _ in 0..replies {
        // A server error (`-READONLY` after a failover) is a failed read: the caller
        // sends the command again, on the node the master moved to.
        let reply = connection
            .recv_response()
            .and_then(redis::Value::extract_error)
            .map_err(Failure::from)?;
        if keep_all {
            all.push(reply);
        } else {
            last = reply;
        }
    }
    Ok(if keep_all {
        redis::Value::Array(all)
    } else {
        last
    })
}

/// A claim sent on a blocking connection ([`RedisStore::send_claim`]).
struct RedisClaim<'a> {
    sent: Sent<'a>,
    key: TransactionKey,
}

impl RedisClaim<'_> {
    fn finish(mut self) -> Result<Claim> {
        match self.sent.finish() {
            Ok(old) => claim_answer(&self.key, old),
            Err(e) => {
                // A timed-out read has written the release on its own connection; a
                // failed resend has not.
                self.sent.store.release_later(&self.key);
                Err(e)
            }
        }
    }
}

impl Drop for RedisClaim<'_> {
    /// Not finished: the request failed before it needed the claim. A claim it won is
    /// released now rather than held until the lease runs out.
    fn drop(&mut self) {
        if self.sent.connection.is_none() {
            return;
        }
        let store = self.sent.store;
        let acks = self.sent.acks;
        let answer = self
            .sent
            .read_answer()
            .and_then(|value| answer_of::<Option<Vec<u8>>>(value, acks));
        // Unread: its release went out on its connection (`Sent::abandon`).
        let Some((redis_key, ours)) = self.sent.abandon.take() else {
            return;
        };
        let won = match answer {
            Ok(None) | Err(Failure::Unreplicated { .. }) => true,
            Ok(Some(old)) => old == ours,
            Err(_) => false,
        };
        if won {
            let release = release_command(&redis_key, &ours);
            if store.call_blocking::<i64>(&Command::Cmd(release)).is_err() {
                tracing::debug!("an unused claim was not released; it lapses with its lease");
            }
        }
    }
}

/// Which connection of the waiting lane a transaction's claim goes over
/// ([`Lane::Waiting`]): the same for every request of the transaction, so that the
/// release [`RedisStore::release_later`] sends after a lost answer runs after the claim.
/// Any hash spreads transactions over the connections; this one is fixed per process.
fn affinity(redis_key: &str) -> u64 {
    use std::hash::BuildHasher;
    std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one(redis_key)
}

/// The [`RELEASE`] script as a plain `EVAL`: self-contained, so that it can be written
/// after a claim without reading anything first (`EVALSHA` may answer NOSCRIPT).
fn release_command(redis_key: &str, ours: &[u8]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(RELEASE).arg(1).arg(redis_key).arg(ours);
    cmd
}

/// [`Store::record_bound`] of a Redis store whose calls time out after `command_timeout`:
/// twice that, since a call is retried once on a new connection. (Also what `config.rs`
/// checks the lease against.)
pub fn record_bound(command_timeout: Duration) -> Duration {
    command_timeout * 2
}

/// Milliseconds for `PX`, at least 1 (`PX 0` is an error) and within Redis' range.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, i64::MAX as u64 / 2)
}

impl Store for RedisStore {
    fn claim<'a>(
        &'a self,
        key: &'a TransactionKey,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim>> {
        Box::pin(async move {
            if let Some(claim) = self.send_claim(key, lease) {
                return claim.finish();
            }
            let (redis_key, _, claim) = self.claim_command(key, lease);
            let answer = self
                .call_write_on(
                    "claim",
                    Command::Cmd(claim),
                    self.claim_affinity(&redis_key),
                )
                .await;
            if answer.is_err() {
                self.release_later(key);
            }
            claim_answer(key, answer?)
        })
    }

    /// The claim's `SET … NX PX … GET` sent now, its answer read after the RA
    /// decryption. On a [`super::blocking_scope`] thread it is written on a blocking
    /// connection and read from the socket buffer, where it has arrived meanwhile;
    /// elsewhere it goes through the async connection ([`Overlapped`]).
    fn start_claim<'a>(
        &'a self,
        key: &TransactionKey,
        lease: Duration,
    ) -> BoxFuture<'a, Option<InFlight<'a, Claim>>> {
        if super::may_block() {
            let claim = self.send_claim(key, lease);
            return Box::pin(std::future::ready(claim.map(|claim| {
                Box::pin(async move { claim.finish() }) as InFlight<'a, Claim>
            })));
        }
        let (redis_key, ours, command) = self.claim_command(key, lease);
        let key = key.clone();
        let call = self
            .write_owned::<Option<Vec<u8>>>(Command::Cmd(command), self.claim_affinity(&redis_key));
        let orphan = self.release_if_won(redis_key, ours);
        Box::pin(async move {
            let sent = Overlapped::send(call, Some(orphan)).await;
            Some(Box::pin(async move {
                let (answer, waited) = sent.await;
                observe::command("redis", "claim", waited, answer.is_ok());
                if answer.is_err() {
                    self.release_later(&key);
                }
                claim_answer(&key, answer.map_err(|e| self.unavailable("claim", e))?)
            }) as InFlight<'a, Claim>)
        })
    }

    /// The `issued` pipeline sent now, its replies read after the CertRep is signed
    /// (the same two ways as [`RedisStore::start_claim`]).
    fn start_issued<'a>(
        &'a self,
        key: &TransactionKey,
        issuer: &[u8],
        serial: &[u8],
        certificate: Arc<[u8]>,
    ) -> BoxFuture<'a, Option<InFlight<'a, ()>>> {
        let command = Command::Pipe(self.issued_pipeline(key, issuer, serial, certificate));
        if super::may_block() {
            let sent = self.send("issued", command, 2);
            return Box::pin(std::future::ready(sent.map(|mut sent| {
                Box::pin(async move { sent.finish() }) as InFlight<'a, ()>
            })));
        }
        let call = self.write_owned::<()>(command, None);
        Box::pin(async move {
            let sent = Overlapped::send(call, None).await;
            Some(Box::pin(async move {
                let (answer, waited) = sent.await;
                observe::command("redis", "issued", waited, answer.is_ok());
                answer.map_err(|e| self.unavailable("issued", e))
            }) as InFlight<'a, ()>)
        })
    }

    fn finish<'a>(&'a self, key: &'a TransactionKey, record: Record) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let redis_key = self.transaction_key(key);
            let value = codec::encode(key, &record);
            let ttl = self.ttl_ms();
            let mut cmd = redis::cmd("SET");
            cmd.arg(&redis_key).arg(&value).arg("PX").arg(ttl);
            self.call_write("finish", Command::Cmd(cmd)).await
        })
    }

    fn release<'a>(&'a self, key: &'a TransactionKey) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let redis_key = self.transaction_key(key);
            let ours = codec::encode(key, &Record::InProgress);
            let release = release_command(&redis_key, &ours);
            self.call::<i64>("release", Command::Cmd(release))
                .await
                .map(drop)
        })
    }

    fn get<'a>(&'a self, key: &'a TransactionKey) -> BoxFuture<'a, Result<Option<Record>>> {
        Box::pin(async move {
            let redis_key = self.transaction_key(key);
            let found: Option<Vec<u8>> = self
                .call(
                    "get",
                    Command::Cmd(redis::cmd("GET").arg(&redis_key).clone()),
                )
                .await?;
            match found {
                None => Ok(None),
                Some(bytes) => {
                    let stored = codec::decode(&bytes)?;
                    Ok((stored.key_hash == key.key_hash).then_some(stored.record))
                }
            }
        })
    }

    fn put_certificate<'a>(
        &'a self,
        issuer: &'a [u8],
        serial: &'a [u8],
        certificate: Arc<[u8]>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let redis_key = self.certificate_key(issuer, serial);
            let ttl = self.ttl_ms();
            let mut cmd = redis::cmd("SET");
            cmd.arg(&redis_key).arg(&*certificate).arg("PX").arg(ttl);
            self.call_write("put_certificate", Command::Cmd(cmd)).await
        })
    }

    fn certificate<'a>(
        &'a self,
        issuer: &'a [u8],
        serial: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<Arc<[u8]>>>> {
        Box::pin(async move {
            let redis_key = self.certificate_key(issuer, serial);
            let found: Option<Vec<u8>> = self
                .call(
                    "certificate",
                    Command::Cmd(redis::cmd("GET").arg(&redis_key).clone()),
                )
                .await?;
            Ok(found.map(Arc::from))
        })
    }

    /// `HSETNX`: the first time recorded stays.
    fn revoke<'a>(
        &'a self,
        issuer: &'a [u8],
        serial: &'a [u8],
        at: u64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("HSETNX");
            cmd.arg(self.revocations_key(issuer))
                .arg(hex::encode(serial))
                .arg(at);
            self.call_write::<i64>("revoke", Command::Cmd(cmd))
                .await
                .map(drop)
        })
    }

    fn revocations<'a>(&'a self, issuer: &'a [u8]) -> BoxFuture<'a, Result<Vec<Revocation>>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(self.revocations_key(issuer));
            let found: Vec<(String, u64)> = self.call("revocations", Command::Cmd(cmd)).await?;
            found
                .into_iter()
                .map(|(serial, at)| {
                    hex::decode(&serial)
                        .map(|serial| (serial, at))
                        .map_err(|_| {
                            Error::Unavailable("the store holds a revocation we cannot read".into())
                        })
                })
                .collect()
        })
    }

    /// Both writes in one pipeline: one round trip after the claim.
    fn issued<'a>(
        &'a self,
        key: &'a TransactionKey,
        issuer: &'a [u8],
        serial: &'a [u8],
        certificate: Arc<[u8]>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let pipe = self.issued_pipeline(key, issuer, serial, certificate);
            self.call_write("issued", Command::Pipe(pipe)).await
        })
    }

    fn put_otp<'a>(
        &'a self,
        hash: &'a [u8; 32],
        record: &'a OtpRecord,
        ttl: Duration,
        max_outstanding: usize,
    ) -> BoxFuture<'a, Result<OtpPut>> {
        Box::pin(async move {
            let otp_key = self.otp_key(hash);
            let set_key = self.otp_requester_key(&record.requester);
            let value = serde_json::to_vec(record)
                .map_err(|e| Error::Unavailable(format!("one-time password record: {e}")))?;
            let ttl_ms = millis(ttl);
            let member = hex::encode(hash);
            // A plain EVAL (not EVALSHA, which may answer NOSCRIPT), so that it can be
            // followed by `WAIT` in one pipeline: a password handed out must survive a
            // failover, or the device it was meant for fails to enroll. Passwords are made
            // one at a time by an administrator or an MDM; sending the script costs nothing.
            let mut eval = redis::cmd("EVAL");
            eval.arg(PUT_OTP)
                .arg(2)
                .arg(&otp_key)
                .arg(&set_key)
                .arg(&value)
                .arg(ttl_ms)
                .arg(max_outstanding)
                .arg(&member);
            let stored: i64 = self.call_write("put_otp", Command::Cmd(eval)).await?;
            Ok(if stored == 1 {
                OtpPut::Stored
            } else {
                OtpPut::CacheFull
            })
        })
    }

    fn take_otp<'a>(&'a self, hash: &'a [u8; 32]) -> BoxFuture<'a, Result<Option<OtpRecord>>> {
        Box::pin(async move {
            let otp_key = self.otp_key(hash);
            let taken: Option<Vec<u8>> = self
                .call_write(
                    "take_otp",
                    Command::Cmd(redis::cmd("GETDEL").arg(&otp_key).clone()),
                )
                .await?;
            let Some(bytes) = taken else {
                return Ok(None);
            };
            let record: OtpRecord = serde_json::from_slice(&bytes).map_err(|_| {
                Error::Unavailable(
                    "the store holds a one-time password record we cannot read".into(),
                )
            })?;
            // The password is spent (GETDEL above); dropping it from the requester's
            // count is bookkeeping: if this fails it drops out when it expires.
            let set_key = self.otp_requester_key(&record.requester);
            let member = hex::encode(hash);
            if let Err(e) = self
                .call::<i64>(
                    "take_otp_count",
                    Command::Cmd(redis::cmd("ZREM").arg(&set_key).arg(&member).clone()),
                )
                .await
            {
                tracing::warn!(error = %e, "a spent one-time password still counts for its requester until it expires");
            }
            Ok(Some(record))
        })
    }

    fn outstanding_otps<'a>(&'a self, requester: &'a str) -> BoxFuture<'a, Result<usize>> {
        Box::pin(async move {
            let set_key = self.otp_requester_key(requester);
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let mut cmd = redis::cmd("ZCOUNT");
            cmd.arg(&set_key).arg(format!("({now_ms}")).arg("+inf");
            self.call("outstanding_otps", Command::Cmd(cmd)).await
        })
    }

    fn record_bound(&self) -> Duration {
        record_bound(self.timeout)
    }

    /// `PING` within the timeout (<https://redis.io/docs/latest/commands/ping/>); with
    /// [`ReplicaAcks`], followed by the same `WAIT` as a write: a store whose claims the
    /// replicas cannot acknowledge cannot enroll, so the replica is not ready, as when
    /// Redis is down.
    fn health(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.call_write("ping", Command::Cmd(redis::cmd("PING")))
                .await
        })
    }
}

/// The URL without its password (userinfo after the first `:`, and any query, where
/// the redis crate also accepts credentials): safe for logs and error messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsed redis url>".into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let host = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let path = match path.split_once('?') {
        Some((before, _query)) => format!("{before}?…"),
        None => path.to_owned(),
    };
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            redact("rediss://default:s3cret@cache.example:6380/0"),
            "rediss://default:***@cache.example:6380/0"
        );
        assert_eq!(
            redact("redis://:p@ss:w@127.0.0.1"),
            "redis://:***@127.0.0.1"
        );
        assert_eq!(
            redact("redis://127.0.0.1:6379/0?pass=x"),
            "redis://127.0.0.1:6379/0?…"
        );
        assert_eq!(redact("redis://127.0.0.1"), "redis://127.0.0.1");
        assert!(!redact("s3cret").contains("s3cret"));
    }

    #[test]
    fn sentinel_passwords_never_reach_the_log() {
        let settings = RedisSettings {
            url: "redis://:m4ster@sentinel/0".into(),
            tls_ca_pem: None,
            key_prefix: "scep:".into(),
            command_timeout: Duration::from_millis(100),
            ttl: Duration::from_secs(60),
            replica_acks: 0,
            cluster: None,
            sentinel: Some(SentinelSettings {
                master: "scep".into(),
                nodes: vec!["10.0.0.1:26379".into()],
                username: None,
                password: Some("s3ntinel".into()),
                recheck: Duration::from_secs(5),
                tls: false,
            }),
        };
        let shown = format!("{settings:?}");
        assert!(
            shown.contains("10.0.0.1:26379") && shown.contains("scep"),
            "{shown}"
        );
        assert!(
            !shown.contains("m4ster") && !shown.contains("s3ntinel"),
            "{shown}"
        );
    }

    #[test]
    fn renewals_and_first_enrollments_never_share_a_key() {
        // A transactionID that looks like a renewal key must not collide with one.
        let rt = runtime();
        let _guard = rt.enter();
        let mut settings = cluster_settings("redis://127.0.0.1:1");
        settings.cluster = None;
        let store = RedisStore::connect(settings).unwrap();
        let id = crate::scep::message::TransactionId::new("t".into()).unwrap();
        let renewal = TransactionKey::new(id.clone(), b"k", Some(b"old"));
        let forged_id = format!("r:{}:t", hex::encode(renewal.renewing.unwrap()));
        let forged = TransactionKey::new(
            crate::scep::message::TransactionId::new(forged_id).unwrap(),
            b"k",
            None,
        );
        assert_ne!(
            store.transaction_key(&renewal),
            store.transaction_key(&forged)
        );
        assert_eq!(
            store.transaction_key(&TransactionKey::new(id, b"k", None)),
            "scep:tx:n:t"
        );
    }

    /// `RedisStore::connect` spawns its tasks on the current runtime.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Settings for a Redis Cluster at `url` (none listens there: nothing is sent).
    fn cluster_settings(url: &str) -> RedisSettings {
        RedisSettings {
            url: url.into(),
            tls_ca_pem: None,
            key_prefix: "scep:".into(),
            command_timeout: Duration::from_millis(100),
            ttl: Duration::from_secs(60),
            sentinel: None,
            replica_acks: 0,
            cluster: Some(ClusterSettings {
                nodes: vec![],
                recheck: Duration::from_secs(5),
            }),
        }
    }

    /// In a cluster every key, of every kind, carries the same hash tag: the store's
    /// pipelines (record + certificate) and scripts (password + requester's set) must
    /// stay within one slot.
    #[test]
    fn in_a_cluster_every_key_carries_the_prefix_as_its_hash_tag() {
        let rt = runtime();
        let _guard = rt.enter();
        let store = RedisStore::connect(cluster_settings("redis://127.0.0.1:1")).unwrap();
        let id = crate::scep::message::TransactionId::new("t".into()).unwrap();
        let keys = [
            store.transaction_key(&TransactionKey::new(id.clone(), b"k", None)),
            store.transaction_key(&TransactionKey::new(id, b"k", Some(b"old"))),
            store.certificate_key(b"issuer", &[1]),
            store.revocations_key(b"issuer"),
            store.otp_key(&[0; 32]),
            store.otp_requester_key("alice"),
        ];
        for key in keys {
            assert!(key.starts_with("{scep:}"), "{key}");
        }
        assert!(store.endpoint().contains("cluster"), "{}", store.endpoint());
    }

    #[test]
    fn a_cluster_has_database_0_only_and_no_sentinel() {
        let rt = runtime();
        let _guard = rt.enter();
        let err = RedisStore::connect(cluster_settings("redis://127.0.0.1:1/3")).unwrap_err();
        assert!(err.to_string().contains("database 0"), "{err}");
        let mut both = cluster_settings("redis://127.0.0.1:1");
        both.sentinel = Some(SentinelSettings {
            master: "m".into(),
            nodes: vec!["127.0.0.1:2".into()],
            username: None,
            password: None,
            recheck: Duration::from_secs(5),
            tls: false,
        });
        let err = RedisStore::connect(both).unwrap_err();
        assert!(err.to_string().contains("exclude each other"), "{err}");
    }
}
