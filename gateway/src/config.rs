//! The gateway's TOML configuration, validated once at start.
//!
//! Loading is two steps: [`FileConfig`] is the file as written (serde, unknown keys
//! refused so that a typo is an error, not a silently ignored setting), and
//! [`FileConfig::resolve`] turns relative paths into absolute ones against the config
//! file's folder. Keys and certificates are then loaded by [`crate::service`], whose
//! errors name the key in the file and the file on disk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use scep_hsm::Pkcs11KeyConfig;
use serde::Deserialize;

use crate::ca::embedded::EmbeddedCaConfig;
use crate::ca::profile::{CaEntryConfig, ProfileConfig};
use crate::challenge::intune::IntuneConfig;
use crate::challenge::one_time::OneTimeConfig;
use crate::challenge::policy::CsrPolicyConfig;
use crate::challenge::webhook::WebhookConfig;

/// Why the configuration cannot be used. Every message names the setting and, where
/// there is one, the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    #[error("{setting} = {path}: {reason}")]
    File {
        setting: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerConfig,
    pub ra: RaConfig,
    /// The embedded CA. Required unless `[[cas]]` lists only upstream CAs.
    #[serde(default)]
    pub ca: Option<CaConfig>,
    /// Issuance policy of the embedded CA (key usage, EKU, validity, key sizes).
    #[serde(default)]
    pub profile: EmbeddedCaConfig,
    #[serde(default)]
    pub crypto: CryptoConfig,
    pub challenge: ChallengeConfig,
    /// Named challenge modes that profiles choose with `[[profiles]] challenge = "<name>"`
    /// (`[challenges.<name>]`, the same keys as `[challenge]`); a profile without one uses
    /// `[challenge]`.
    #[serde(default)]
    pub challenges: std::collections::BTreeMap<String, ChallengeConfig>,
    #[serde(default)]
    pub renewal: RenewalConfig,
    #[serde(default)]
    pub store: StoreConfig,
    /// The next RA/CA set, served by GetNextCACert (RFC 8894 §4.6) ahead of a rollover.
    #[serde(default)]
    pub next: Option<NextConfig>,
    /// The CAs requests can go to (`[[cas]]`): upstream SCEP CAs and the embedded CA.
    /// Empty: the embedded CA of `[ca]` serves everything, as one profile "default".
    #[serde(default)]
    pub cas: Vec<CaEntryConfig>,
    /// Which CAs serve which requests (`[[profiles]]`); needed with `[[cas]]`.
    #[serde(default)]
    pub profiles: Vec<ProfileConfig>,
}

/// `[server]`: the listener and the bounds on what a client may make us do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Largest POST body accepted (HTTP 413 beyond). A PKCSReq is 2–8 KiB.
    pub max_body_bytes: usize,
    /// Time a client has to send its request headers.
    pub header_timeout_secs: u64,
    /// Time a whole request may take, body included, before the connection is closed.
    pub request_timeout_secs: u64,
    /// Connections served at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
    /// After SIGTERM, `/readyz` answers 503 at once but the listener keeps accepting for
    /// this long, so that load balancers (Kubernetes endpoints) stop sending new requests
    /// before it closes. 0 for development; about 5 on Kubernetes.
    pub shutdown_delay_secs: u64,
    /// A second listener for `/metrics`, `/healthz` and `/readyz` only (then `/metrics`
    /// is not served on `listen`), e.g. `127.0.0.1:9090` or a pod port that only the
    /// monitoring network reaches.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token for `POST /admin/reload` (the same reload as SIGHUP, for operators
    /// and tools that cannot signal the process), from an environment variable or a
    /// file. Without one the endpoint answers 404.
    pub reload_token_env: Option<String>,
    pub reload_token_file: Option<PathBuf>,
    /// PKIOperations processed at once; more get HTTP 503 with Retry-After at once
    /// instead of queueing in front of the HSM.
    pub max_in_flight_operations: usize,
    /// PKIOperations per second per client IP address (0: no limit), and the burst a
    /// client may send at once; beyond it HTTP 429 with Retry-After. Off by default:
    /// behind a load balancer or NAT many devices share an address.
    pub per_client_rate: f64,
    pub per_client_burst: f64,
    /// Optional TLS (rustls). SCEP itself does not need it (the messages are signed and
    /// encrypted), but it hides the challenge of GET requests from the network.
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().expect("a valid literal address"),
            max_body_bytes: 256 * 1024,
            header_timeout_secs: 10,
            request_timeout_secs: 30,
            max_connections: 1024,
            shutdown_grace_secs: 20,
            shutdown_delay_secs: 0,
            admin_listen: None,
            reload_token_env: None,
            reload_token_file: None,
            max_in_flight_operations: 256,
            per_client_rate: 0.0,
            per_client_burst: 20.0,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificate(s) that issue the admin clients' certificates, for mutual TLS
    /// on the one-time password endpoint (`[[challenge.admin_clients]]`). With it the
    /// listener asks every client for a certificate but requires none: devices have
    /// none, and a connection without one is authenticated by bearer token or not at all.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// `[ra]`: the RA certificate(s) and their keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaConfig {
    /// PEM or DER certificate of the RA signing key (digitalSignature).
    pub certificate: PathBuf,
    /// Its private key: a PKCS#8 file, or `{ pkcs11 = { ... } }`.
    pub key: KeyRef,
    /// A separate encryption RA certificate (keyEncipherment) and key; when absent the
    /// signing RA also decrypts.
    pub encryption_certificate: Option<PathBuf>,
    pub encryption_key: Option<KeyRef>,
    /// Earlier RA encryption certificates and keys, kept for decryption only after a
    /// rollover (`[[ra.previous]]`): devices that fetched the old RA certificate still
    /// enroll until they fetch the new one.
    #[serde(default)]
    pub previous: Vec<PreviousRa>,
}

/// One `[[ra.previous]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousRa {
    pub certificate: PathBuf,
    pub key: KeyRef,
}

/// `[ca]`: the embedded CA's certificate and key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    pub certificate: PathBuf,
    /// The CA's private key: a PKCS#8 file, or `{ pkcs11 = { ... } }`.
    pub key: KeyRef,
    /// Certificates above the CA (intermediates, then the root), PEM files, served after
    /// the CA certificate in GetCACert.
    #[serde(default)]
    pub chain: Vec<PathBuf>,
}

/// Where a private key lives: a PKCS#8 file (a path string, as before), or a key in a
/// PKCS#11 token (a table `{ pkcs11 = { module = "...", token_label = "...",
/// key_label = "...", pin_env = "..." } }`). Switching is an edit of this one setting:
/// the protocol code only sees `scep_hsm::Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    File(PathBuf),
    Pkcs11 { pkcs11: Pkcs11KeyConfig },
}

impl<'de> Deserialize<'de> for KeyRef {
    /// By hand rather than `#[serde(untagged)]`, so that a typo inside the `pkcs11`
    /// table is reported with its name instead of "did not match any variant".
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = KeyRef;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key file path or a table { pkcs11 = { ... } }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyRef, E> {
                Ok(KeyRef::File(PathBuf::from(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<KeyRef, A::Error> {
                let mut pkcs11 = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "pkcs11" || pkcs11.is_some() {
                        return Err(serde::de::Error::unknown_field(&key, &["pkcs11"]));
                    }
                    pkcs11 = Some(map.next_value::<Pkcs11KeyConfig>()?);
                }
                pkcs11
                    .map(|pkcs11| KeyRef::Pkcs11 { pkcs11 })
                    .ok_or_else(|| serde::de::Error::missing_field("pkcs11"))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl KeyRef {
    /// Relative key files and PIN files are relative to the config file.
    pub(crate) fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        match self {
            KeyRef::File(p) => fix(p),
            KeyRef::Pkcs11 { pkcs11 } => {
                if let Some(p) = pkcs11.pin_file.as_mut() {
                    fix(p)
                }
            }
        }
    }

    /// A name for messages: the file, or the token and key.
    pub fn describe(&self) -> String {
        match self {
            KeyRef::File(p) => p.display().to_string(),
            KeyRef::Pkcs11 { pkcs11 } => pkcs11.describe(),
        }
    }
}

/// `[crypto]`: the legacy switches. Both are off by default, and every use is logged
/// and counted, so an operator can see when the last old client is gone.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CryptoConfig {
    /// Accept DES-CBC and DES-EDE3-CBC envelopes and answer in them (micromdm
    /// scepclient, old Cisco IOS, Junos); advertises DES3 in GetCACaps.
    pub legacy_des: bool,
    /// Advertise SHA-1 in GetCACaps. SHA-1-signed requests are accepted either way;
    /// replies are always signed with SHA-2.
    pub legacy_sha1: bool,
}

/// `[challenge]`: how a PKCSReq's challengePassword is checked (README, "Challenges").
/// Every mode takes an optional `[challenge.policy]` table
/// ([`crate::challenge::policy::CsrPolicyConfig`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "mode", rename_all = "kebab-case")]
pub enum ChallengeConfig {
    /// One shared secret, read from a file (trailing newline ignored) or an environment
    /// variable, never written inline in the config.
    Static {
        password_file: Option<PathBuf>,
        password_env: Option<String>,
        #[serde(default)]
        policy: Option<CsrPolicyConfig>,
    },
    /// Single-use passwords from the admin endpoint or `scep-gateway challenge new`.
    OneTime(OneTimeConfig),
    /// An HTTP service decides.
    Webhook(WebhookConfig),
    /// Microsoft Intune's SCEP validation API.
    Intune(Box<IntuneConfig>),
    /// No challenge at all: anyone who can reach the gateway gets a certificate. Only
    /// for closed test networks; logged loudly at start.
    None {
        #[serde(default)]
        policy: Option<CsrPolicyConfig>,
    },
}

impl ChallengeConfig {
    /// The `[challenge.policy]` table, whatever the mode.
    pub fn policy(&self) -> Option<&CsrPolicyConfig> {
        match self {
            ChallengeConfig::Static { policy, .. } | ChallengeConfig::None { policy } => {
                policy.as_ref()
            }
            ChallengeConfig::OneTime(c) => c.policy.as_ref(),
            ChallengeConfig::Webhook(c) => c.policy.as_ref(),
            ChallengeConfig::Intune(c) => c.policy.as_ref(),
        }
    }

    fn resolve(&mut self, base: &Path) {
        match self {
            ChallengeConfig::Static { password_file, .. } => {
                crate::challenge::http::resolve(password_file, base)
            }
            ChallengeConfig::OneTime(c) => {
                for token in &mut c.admin_tokens {
                    crate::challenge::http::resolve(&mut token.token_file, base);
                }
            }
            ChallengeConfig::Webhook(c) => c.resolve(base),
            ChallengeConfig::Intune(c) => c.resolve(base),
            ChallengeConfig::None { .. } => {}
        }
    }
}

/// `[renewal]`: RenewalReq policy (RFC 8894 §3.3.1.2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenewalConfig {
    /// Accept RenewalReq signed by a valid certificate of our CA, without a challenge.
    pub allow: bool,
    /// The new CSR must carry the same subject as the certificate being renewed.
    pub require_same_subject: bool,
}

impl Default for RenewalConfig {
    fn default() -> Self {
        RenewalConfig {
            allow: true,
            require_same_subject: true,
        }
    }
}

/// `[store]`: where transactions are remembered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `memory` (one node) or `redis` (shared by every replica).
    pub backend: StoreBackend,
    /// How long a finished transaction and an issued certificate (GetCert) are kept, so
    /// that a retry gets the same answer.
    pub transaction_ttl_secs: u64,
    /// Most transactions kept in memory (memory backend only; ≈ 1.5–2.5 KB each with
    /// its certificate). A full store drops its oldest finished transactions first
    /// (`store::memory`); new ones are refused with HTTP 503 only when every one left is
    /// live (claimed or pending).
    pub max_transactions: usize,
    /// How long a claimed transaction stays claimed if the replica working on it dies;
    /// a retry elsewhere proceeds after it. Default: `server.request_timeout_secs`, at
    /// least 30. Refused below `request_timeout_secs`: a slow replica could finish a
    /// transaction another one has re-claimed.
    pub claim_lease_secs: Option<u64>,
    /// Redis: the URL (`redis://host:port/db`, `rediss://` for TLS) when it holds no
    /// password. A URL with a password goes in `url_env`.
    pub url: Option<String>,
    /// Redis: the environment variable holding the URL (and its password).
    pub url_env: Option<String>,
    /// Redis: PEM CA certificate(s) the `rediss://` server certificate chains to, when
    /// it is not a public CA (Memorystore, a private CA). System roots otherwise.
    pub tls_ca_file: Option<PathBuf>,
    /// Redis: prepended to every key, so that several gateways can share one Redis.
    pub key_prefix: String,
    /// Redis: bound on every store call; beyond it the request gets HTTP 503.
    pub command_timeout_ms: u64,
    /// Redis: find the master through Redis Sentinel (`[store.sentinel]`). `url` /
    /// `url_env` then say only how to talk to it (user, password, database); its host
    /// and port are not used.
    pub sentinel: Option<SentinelConfig>,
    /// Redis: replicas that must have each write (a claim, a record, an issued
    /// certificate, a revocation, a spent one-time password) before it counts (`WAIT`).
    /// Redis replicates asynchronously: without this a failover can lose a claim, and a
    /// retry during it could get a second certificate. A claim fewer replicas
    /// acknowledged within half of `command_timeout_ms` gets HTTP 503 (nothing issued),
    /// and readiness is false while they do not acknowledge.
    /// 0 (the default): the master's acknowledgement is enough.
    pub replica_acks: u32,
    /// Redis: `url` is a node of a Redis Cluster (`[store.cluster]`). Every key then
    /// carries `key_prefix` as its hash tag (`{scep:}…`), so that all of them share one
    /// slot, and the gateway talks to the master serving it.
    pub cluster: Option<ClusterConfig>,
}

/// `[store.cluster]`: the store's Redis is a Redis Cluster; `store.url` / `url_env`
/// names one of its nodes (a managed service's configuration or discovery endpoint).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `host:port` of further nodes to read the topology from when the URL's node does
    /// not answer (self-managed clusters; a managed endpoint is one name for all).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// How often the topology is read while every command succeeds (it is read at once
    /// after a `MOVED` redirection or a dropped connection).
    #[serde(default = "SentinelConfig::default_recheck_ms")]
    pub recheck_ms: u64,
}

/// `[store.sentinel]`: the sentinels that name the Redis master, and what they call it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The name the sentinels monitor the master under (`sentinel monitor <name> …`).
    pub master: String,
    /// `host:port` of each sentinel (usually three or more), asked in this order.
    pub nodes: Vec<String>,
    /// The sentinels' own ACL user, if they have one.
    #[serde(default)]
    pub username: Option<String>,
    /// The environment variable holding the sentinels' own password (`requirepass` in
    /// sentinel.conf), if they have one; not the master's, which is in the URL.
    #[serde(default)]
    pub password_env: Option<String>,
    /// How often the sentinels are asked for the master while every command succeeds
    /// (they are asked at once after a failure a failover explains). Bounds how long
    /// writes may go to a master the sentinels replaced while our connections to it stay
    /// open (a partition).
    #[serde(default = "SentinelConfig::default_recheck_ms")]
    pub recheck_ms: u64,
    /// The sentinels speak TLS (their `tls-port`), checked against `store.tls_ca_file`
    /// or the system roots. The master speaks TLS when the URL is `rediss://`.
    #[serde(default)]
    pub tls: bool,
}

impl SentinelConfig {
    fn default_recheck_ms() -> u64 {
        5000
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Memory,
    Redis,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Memory,
            transaction_ttl_secs: 7 * 24 * 3600,
            max_transactions: 50_000,
            claim_lease_secs: None,
            url: None,
            url_env: None,
            tls_ca_file: None,
            key_prefix: "scep:".into(),
            command_timeout_ms: 1000,
            sentinel: None,
            replica_acks: 0,
            cluster: None,
        }
    }
}

impl StoreConfig {
    /// The claim lease; see [`StoreConfig::claim_lease_secs`].
    pub fn claim_lease(&self, server: &ServerConfig) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.claim_lease_secs
                .unwrap_or(server.request_timeout_secs.max(30)),
        )
    }

    /// The last stretch of a claim kept for recording its outcome (`Store::record_bound`
    /// of the store this configures).
    pub fn record_bound(&self) -> std::time::Duration {
        match self.backend {
            StoreBackend::Memory => std::time::Duration::ZERO,
            StoreBackend::Redis => crate::store::redis::record_bound(
                std::time::Duration::from_millis(self.command_timeout_ms),
            ),
        }
    }

    /// The Redis URL, from `url` or the variable `url_env` names.
    pub fn redis_url(&self) -> Result<String, ConfigError> {
        match (&self.url, &self.url_env) {
            (Some(url), None) => Ok(url.clone()),
            (None, Some(var)) => std::env::var(var).map_err(|_| ConfigError::Invalid {
                setting: "store.url_env",
                reason: format!("the environment variable {var} is not set"),
            }),
            _ => Err(ConfigError::Invalid {
                setting: "store.url",
                reason: "the redis backend needs exactly one of url or url_env".into(),
            }),
        }
    }
}

/// `[next]`: the certificates of the next RA/CA set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextConfig {
    /// PEM files: the next CA certificate and the next RA certificate(s).
    pub certificates: Vec<PathBuf>,
}

impl FileConfig {
    /// Reads and parses `path`, then resolves every path in it against its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses `text` as if it were the file at `path`, with everything [`load`]
    /// does after reading: relative paths are resolved against `path`'s folder, errors
    /// name `path`, and the checks that need no file access run. `path` itself is never
    /// read (the fuzz target and tests give the text directly).
    ///
    /// [`load`]: FileConfig::load
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve(base);
        config.check()?;
        Ok(config)
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.ra.certificate);
        self.ra.key.resolve(base);
        self.ra.encryption_certificate.as_mut().map(fix);
        for previous in &mut self.ra.previous {
            fix(&mut previous.certificate);
            previous.key.resolve(base);
        }
        if let Some(k) = self.ra.encryption_key.as_mut() {
            k.resolve(base);
        }
        if let Some(ca) = &mut self.ca {
            fix(&mut ca.certificate);
            ca.key.resolve(base);
            ca.chain.iter_mut().for_each(fix);
        }
        if let Some(p) = self.server.reload_token_file.as_mut() {
            fix(p);
        }
        if let Some(tls) = &mut self.server.tls {
            fix(&mut tls.certificate);
            fix(&mut tls.key);
            tls.client_ca.as_mut().map(fix);
        }
        self.challenge.resolve(base);
        for challenge in self.challenges.values_mut() {
            challenge.resolve(base);
        }
        if let Some(next) = &mut self.next {
            next.certificates.iter_mut().for_each(fix);
        }
        self.store.tls_ca_file.as_mut().map(fix);
    }

    /// Checks that need no file access.
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.into(),
            })
        };
        if self.server.max_body_bytes < 4096 {
            return invalid("server.max_body_bytes", "must be at least 4096");
        }
        if self.server.max_connections == 0 {
            return invalid("server.max_connections", "must be at least 1");
        }
        if self.server.admin_listen == Some(self.server.listen) && self.server.listen.port() != 0 {
            return invalid("server.admin_listen", "must differ from server.listen");
        }
        if self.ra.encryption_certificate.is_some() != self.ra.encryption_key.is_some() {
            return invalid(
                "ra.encryption_certificate",
                "encryption_certificate and encryption_key go together",
            );
        }
        if let ChallengeConfig::Static {
            password_file,
            password_env,
            ..
        } = &self.challenge
        {
            if password_file.is_some() == password_env.is_some() {
                return invalid(
                    "challenge.password_file",
                    "a static challenge needs exactly one of password_file or password_env",
                );
            }
        }
        for (setting, key) in [
            ("ra.key", Some(&self.ra.key)),
            ("ra.encryption_key", self.ra.encryption_key.as_ref()),
            ("ca.key", self.ca.as_ref().map(|ca| &ca.key)),
        ] {
            if let Some(KeyRef::Pkcs11 { pkcs11 }) = key {
                pkcs11.check().map_err(|e| ConfigError::Invalid {
                    setting,
                    reason: e.to_string(),
                })?;
            }
        }
        self.check_token_pins()?;
        let mutual_tls = self
            .server
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some());
        let admin_clients = std::iter::once(&self.challenge)
            .chain(self.challenges.values())
            .any(|c| matches!(c, ChallengeConfig::OneTime(o) if !o.admin_clients.is_empty()));
        if admin_clients && !mutual_tls {
            return invalid(
                "challenge.admin_clients",
                "admin clients authenticate by mutual TLS: set [server.tls] client_ca",
            );
        }
        if let Some(next) = &self.next {
            if next.certificates.is_empty() {
                return invalid("next.certificates", "lists no certificate");
            }
        }
        self.check_cas()?;
        self.check_store()
    }

    /// `[ca]`, `[[cas]]` and `[[profiles]]` fit together.
    fn check_cas(&self) -> Result<(), ConfigError> {
        use crate::ca::profile::{self, CaKind};
        let invalid = |setting, reason: String| Err(ConfigError::Invalid { setting, reason });
        if self.cas.is_empty() {
            if !self.profiles.is_empty() {
                return invalid("profiles", "[[profiles]] needs [[cas]]".into());
            }
            if self.ca.is_none() {
                return invalid("ca", "the [ca] table is required without [[cas]]".into());
            }
            return Ok(());
        }
        if let Err(reason) = profile::check(&self.cas, &self.profiles) {
            return invalid("cas", reason);
        }
        if self.ca.is_none() && self.cas.iter().any(|c| c.kind == CaKind::Embedded) {
            return invalid(
                "ca",
                "a [[cas]] entry of kind \"embedded\" needs the [ca] table".into(),
            );
        }
        Ok(())
    }

    /// Keys on one token name one PIN: PKCS#11 keeps one login per token per process,
    /// so a second PIN would be used by nobody until the next login, and then by every key.
    fn check_token_pins(&self) -> Result<(), ConfigError> {
        let keys = [Some(&self.ra.key), self.ra.encryption_key.as_ref()]
            .into_iter()
            .chain(self.ra.previous.iter().map(|p| Some(&p.key)))
            .chain([self.ca.as_ref().map(|ca| &ca.key)])
            .flatten();
        let mut pins = std::collections::HashMap::new();
        for key in keys {
            let KeyRef::Pkcs11 { pkcs11: p } = key else {
                continue;
            };
            let token = (&p.module, &p.token_label, &p.token_serial, p.slot);
            let pin = (&p.pin_env, &p.pin_file);
            if *pins.entry(token).or_insert(pin) != pin {
                return Err(ConfigError::Invalid {
                    setting: "pin_env",
                    reason: format!(
                        "keys on one token ({}) name different PINs: a token has one login per process, give them the same pin_env or pin_file",
                        p.describe()
                    ),
                });
            }
        }
        Ok(())
    }

    fn check_store(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.into(),
            })
        };
        let store = &self.store;
        if store.claim_lease_secs == Some(0) {
            return invalid("store.claim_lease_secs", "must be at least 1");
        }
        // A claim that lapses while its request may still be working lets the client's
        // retry claim the transaction again: two certificates for one transaction.
        if store
            .claim_lease_secs
            .is_some_and(|lease| lease < self.server.request_timeout_secs)
        {
            return invalid(
                "store.claim_lease_secs",
                "must be at least server.request_timeout_secs (a claim must outlive the request that holds it)",
            );
        }
        if store.transaction_ttl_secs == 0 {
            return invalid("store.transaction_ttl_secs", "must be at least 1");
        }
        // A CA is asked only when its timeout ends within the claim, before the time kept
        // for recording the outcome (`ca::AnswerBy`): one whose timeout never fits would
        // never be asked.
        let lease_ms = store.claim_lease(&self.server).as_millis();
        let record_ms = store.record_bound().as_millis();
        if let Some(ca) = self
            .cas
            .iter()
            .find(|ca| u128::from(ca.timeout_ms) + record_ms >= lease_ms)
        {
            return Err(ConfigError::Invalid {
                setting: "cas.timeout_ms",
                reason: format!(
                    "[[cas]] {:?}: {} ms would outlast the claim a request holds (store.claim_lease_secs, less twice store.command_timeout_ms with Redis): raise the lease",
                    ca.name, ca.timeout_ms
                ),
            });
        }
        if store.backend == StoreBackend::Memory {
            if store.sentinel.is_some() {
                return invalid("store.sentinel", "is for the redis backend only");
            }
            if store.replica_acks > 0 {
                return invalid("store.replica_acks", "is for the redis backend only");
            }
            if store.cluster.is_some() {
                return invalid("store.cluster", "is for the redis backend only");
            }
            return Ok(());
        }
        if let Some(sentinel) = &store.sentinel {
            check_sentinel(sentinel)?;
        }
        if let Some(cluster) = &store.cluster {
            if store.sentinel.is_some() {
                return invalid(
                    "store.cluster",
                    "and store.sentinel exclude each other (a cluster fails over by itself)",
                );
            }
            check_cluster(cluster, &store.key_prefix)?;
        }
        if store.url.is_some() == store.url_env.is_some() {
            return invalid(
                "store.url",
                "the redis backend needs exactly one of url or url_env",
            );
        }
        // Passwords never sit in the config file (it is read by humans, copied into
        // tickets, committed): a URL with credentials belongs in url_env.
        if let Some(url) = &store.url {
            let authority = url.split_once("://").map_or("", |(_, rest)| {
                rest.split(['/', '?', '#']).next().unwrap_or("")
            });
            let credentials = authority
                .rsplit_once('@')
                .is_some_and(|(userinfo, _)| userinfo.contains(':'));
            if credentials || url.contains("pass=") {
                return invalid(
                    "store.url",
                    "holds a password: put the URL in an environment variable and name it in store.url_env",
                );
            }
        }
        if store.command_timeout_ms == 0 {
            return invalid("store.command_timeout_ms", "must be at least 1");
        }
        if store.replica_acks > MAX_REPLICA_ACKS {
            return invalid(
                "store.replica_acks",
                "must be at most 16 (more is a mistyped value)",
            );
        }
        if store.replica_acks > 0 && store.command_timeout_ms < 2 {
            return invalid(
                "store.command_timeout_ms",
                "must be at least 2 with store.replica_acks (replicas get half of it)",
            );
        }
        // The last 2 × command_timeout of a claim is kept for recording its outcome: a
        // CA must answer before (`ca::AnswerBy`). A lease no longer than that leaves the
        // CA no time at all.
        if lease_ms <= record_ms {
            return invalid(
                "store.command_timeout_ms",
                "must be below half of store.claim_lease_secs (the end of a claim is kept for recording its outcome)",
            );
        }
        if store.key_prefix.is_empty() {
            return invalid("store.key_prefix", "must not be empty");
        }
        Ok(())
    }
}

/// A bound on `store.replica_acks` that catches a typo (a timeout in the wrong field),
/// well above any real replica count.
const MAX_REPLICA_ACKS: u32 = 16;

/// `[store.sentinel]`: a master name and at least one `host:port`.
fn check_sentinel(sentinel: &SentinelConfig) -> Result<(), ConfigError> {
    let invalid = |setting, reason: &str| {
        Err(ConfigError::Invalid {
            setting,
            reason: reason.into(),
        })
    };
    if sentinel.master.is_empty() {
        return invalid("store.sentinel.master", "must not be empty");
    }
    if sentinel.recheck_ms < 100 {
        return invalid("store.sentinel.recheck_ms", "must be at least 100");
    }
    if sentinel.nodes.is_empty() {
        return invalid("store.sentinel.nodes", "needs at least one host:port");
    }
    check_nodes("store.sentinel.nodes", &sentinel.nodes)
}

/// `[store.cluster]`: `host:port` seeds, a sane recheck, and a key prefix that can be
/// the hash tag (Redis takes the text up to the first `}` after the first `{`).
fn check_cluster(cluster: &ClusterConfig, key_prefix: &str) -> Result<(), ConfigError> {
    if cluster.recheck_ms < 100 {
        return Err(ConfigError::Invalid {
            setting: "store.cluster.recheck_ms",
            reason: "must be at least 100".into(),
        });
    }
    check_nodes("store.cluster.nodes", &cluster.nodes)?;
    if key_prefix.contains(['{', '}']) {
        return Err(ConfigError::Invalid {
            setting: "store.key_prefix",
            reason:
                "must not hold braces with store.cluster (the gateway makes it the keys' hash tag)"
                    .into(),
        });
    }
    Ok(())
}

/// Each of `nodes` is `host:port`.
fn check_nodes(setting: &'static str, nodes: &[String]) -> Result<(), ConfigError> {
    for node in nodes {
        let port = node
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) {
            return Err(ConfigError::Invalid {
                setting,
                reason: format!("{node:?} is not host:port"),
            });
        }
    }
    Ok(())
}

/// The commented `gateway.toml` that `scep-gateway init` writes.
pub fn example(challenge_file: &str) -> String {
    format!(
        r#"# SCEP gateway configuration. Relative paths are relative to this file.
# Every setting is documented in README.md ("Configuration").

[server]
# Address and port to listen on. Use 0.0.0.0:8080 to serve other machines.
listen = "127.0.0.1:8080"
# Largest PKIOperation POST body, in bytes (a PKCSReq is a few KiB).
max_body_bytes = 262144
header_timeout_secs = 10
request_timeout_secs = 30
max_connections = 1024
# After SIGTERM: /readyz turns 503 at once; keep accepting this long (5 on Kubernetes, so
# the endpoints update), then give in-flight requests shutdown_grace_secs to finish.
shutdown_delay_secs = 0
# A separate listener for /metrics, /healthz and /readyz (then /metrics leaves `listen`):
# admin_listen = "127.0.0.1:9090"
shutdown_grace_secs = 20
# Optional TLS:
# [server.tls]
# certificate = "tls.pem"
# key = "tls.key.pem"
# client_ca = "admin-clients-ca.pem"  # mutual TLS for [[challenge.admin_clients]]

[ra]
# The RA certificate devices encrypt to and whose key signs every reply.
certificate = "ra.pem"
key = "ra.key.pem"
# or a key in a PKCS#11 token (HSM); the PIN comes from an environment variable or a file:
# key = {{ pkcs11 = {{ module = "/usr/lib/softhsm/libsofthsm2.so", token_label = "scep", key_label = "scep-ra", pin_env = "SCEP_HSM_PIN" }} }}
# A separate encryption RA (keyEncipherment), if wanted:
# encryption_certificate = "ra-enc.pem"
# encryption_key = "ra-enc.key.pem"

[ca]
# The embedded CA that issues certificates.
certificate = "ca.pem"
key = "ca.key.pem"
# Intermediates and root above it, served after it in GetCACert:
# chain = ["root.pem"]

[profile]
# What the embedded CA puts in the certificates it issues.
validity_days = 365
key_usage = ["digitalSignature", "keyEncipherment"]
extended_key_usage = ["1.3.6.1.5.5.7.3.2"]   # clientAuth
copy_san = true
min_rsa_bits = 2048

[crypto]
# DES and 3DES envelopes (micromdm scepclient, old routers). RFC 8894 forbids single DES.
legacy_des = false
# Advertise SHA-1 in GetCACaps (requests signed with SHA-1 are accepted regardless).
legacy_sha1 = false

[challenge]
# "static": one shared challenge password, kept in a file next to this one.
mode = "static"
password_file = "{challenge_file}"
# or: password_env = "SCEP_CHALLENGE"
# Other modes (README, "Challenges"): "one-time" (admin endpoint and `challenge new`),
# "webhook" (your HTTP service decides), "intune" (Intune's SCEP validation API).
# Any mode may add a CSR policy:
# [challenge.policy]
# allowed_key_types = ["rsa", "ec"]
# min_rsa_bits = 2048
# subject_pattern = "CN=[a-z0-9-]+(,.*)?"

[renewal]
# RenewalReq signed by a valid certificate of this CA needs no challenge.
allow = true
require_same_subject = true

[store]
# "memory": this process only. "redis": shared by every replica behind a load balancer.
backend = "memory"
# How long a finished transaction and its certificate are remembered (retries, GetCert).
transaction_ttl_secs = 604800
# Memory backend: most transactions kept (~1.5-2.5 KB each); when full, the oldest
# finished ones are dropped first.
max_transactions = 50000
# How long a claim outlives a replica that died mid-request (default: request timeout, >= 30).
# claim_lease_secs = 30
# Redis backend: the URL, or the environment variable holding it (when it has a password).
# url = "redis://127.0.0.1:6379/0"
# url_env = "SCEP_REDIS_URL"          # e.g. rediss://default:PASSWORD@cache.example:6380/0
# tls_ca_file = "redis-ca.pem"        # rediss:// with a private CA
# key_prefix = "scep:"
# command_timeout_ms = 1000
# replica_acks = 1                    # each write counts once a replica has it (WAIT)
# Redis Sentinel: the master is the one the sentinels name; url/url_env then give only
# its user, password and database (e.g. redis://:PASSWORD@sentinel/0, host not used).
# [store.sentinel]
# master = "scep"
# nodes = ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"]
# password_env = "SCEP_SENTINEL_PASSWORD"   # the sentinels' own requirepass, if any
# tls = true                          # the sentinels' tls-port (the master: rediss://)
# Redis Cluster (ElastiCache Serverless or cluster mode, Memorystore for Redis Cluster, a
# self-managed cluster): url/url_env names one node or the configuration endpoint. Every
# key then carries key_prefix as its hash tag ({{scep:}}...): all of them sit on one shard.
# [store.cluster]
# nodes = ["10.0.0.2:6379", "10.0.0.3:6379"]   # more seeds, if the URL's node is down
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("gateway.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_example_parses_and_paths_are_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &example("challenge.txt"));
        let c = FileConfig::load(&p).unwrap();
        assert_eq!(c.ra.certificate, dir.path().join("ra.pem"));
        assert!(
            matches!(c.challenge, ChallengeConfig::Static { password_file: Some(ref f), .. } if f == &dir.path().join("challenge.txt"))
        );
        assert_eq!(c.server.max_body_bytes, 262144);
    }

    #[test]
    fn admin_clients_need_a_client_ca() {
        let one_time = example("c.txt").replace(
            "mode = \"static\"\npassword_file = \"c.txt\"\n# or: password_env = \"SCEP_CHALLENGE\"",
            "mode = \"one-time\"\n[[challenge.admin_clients]]\nname = \"ops\"\ncommon_name = \"ops\"",
        );
        assert!(one_time.contains("admin_clients"));
        let err = FileConfig::from_toml(&one_time, Path::new("/x/gateway.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("client_ca"), "{err}");
        let with_ca = one_time.replace(
            "\n[ra]\n",
            "\n[server.tls]\ncertificate = \"t.pem\"\nkey = \"t.key\"\nclient_ca = \"admins.pem\"\n\n[ra]\n",
        );
        let config = FileConfig::from_toml(&with_ca, Path::new("/x/gateway.toml")).unwrap();
        assert_eq!(
            config.server.tls.unwrap().client_ca,
            Some(PathBuf::from("/x/admins.pem"))
        );
    }

    #[test]
    fn a_typo_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = example("c.txt").replace("max_body_bytes", "max_body_byte");
        let err = FileConfig::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_body_byte"), "{err}");
        assert!(err.contains("gateway.toml"), "{err}");
    }

    #[test]
    fn sentinel_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let sentinel = |store: &str, section: &str| {
            let text = example("c.txt")
                .replace("backend = \"memory\"", store)
                .replace(
                    "# url = \"redis://127.0.0.1:6379/0\"",
                    "url = \"redis://sentinel/0\"",
                )
                + section;
            FileConfig::load(&write(dir.path(), &text)).map_err(|e| e.to_string())
        };
        let good = "[store.sentinel]\nmaster = \"scep\"\nnodes = [\"10.0.0.1:26379\", \"s2.internal:26379\"]\n";
        let c = sentinel("backend = \"redis\"", good).unwrap();
        let s = c.store.sentinel.unwrap();
        assert_eq!(
            (s.master.as_str(), s.nodes.len(), s.recheck_ms),
            ("scep", 2, 5000)
        );
        let err = sentinel("backend = \"memory\"", good).unwrap_err();
        assert!(err.contains("store.sentinel"), "{err}");
        for (bad, setting) in [
            (
                good.replace("10.0.0.1:26379", "10.0.0.1"),
                "store.sentinel.nodes",
            ),
            (good.replace("\"scep\"", "\"\""), "store.sentinel.master"),
            (
                good.replace("[\"10.0.0.1:26379\", \"s2.internal:26379\"]", "[]"),
                "store.sentinel.nodes",
            ),
            (
                good.to_string() + "recheck_ms = 10\n",
                "store.sentinel.recheck_ms",
            ),
            (good.to_string() + "password = \"x\"\n", "password"),
        ] {
            let err = sentinel("backend = \"redis\"", &bad).unwrap_err();
            assert!(err.contains(setting), "{bad}: {err}");
        }
        let tls = format!("{good}tls = true\n");
        let c = sentinel("backend = \"redis\"\ntls_ca_file = \"ca.pem\"", &tls).unwrap();
        assert!(c.store.sentinel.unwrap().tls);
    }

    #[test]
    fn cluster_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = |store: &str, section: &str| {
            let text = example("c.txt")
                .replace("backend = \"memory\"", store)
                .replace(
                    "# url = \"redis://127.0.0.1:6379/0\"",
                    "url = \"rediss://clustercfg.scep.example:6379\"",
                )
                + section;
            FileConfig::load(&write(dir.path(), &text)).map_err(|e| e.to_string())
        };
        let c = cluster("backend = \"redis\"", "[store.cluster]\n").unwrap();
        let s = c.store.cluster.unwrap();
        assert_eq!((s.nodes.len(), s.recheck_ms), (0, 5000));
        let seeds = "[store.cluster]\nnodes = [\"10.0.0.2:6379\", \"[::1]:7000\"]\n";
        let c = cluster("backend = \"redis\"", seeds).unwrap();
        assert_eq!(c.store.cluster.unwrap().nodes.len(), 2);
        let err = cluster("backend = \"memory\"", "[store.cluster]\n").unwrap_err();
        assert!(err.contains("store.cluster"), "{err}");
        for (store, section, setting) in [
            (
                "backend = \"redis\"",
                "[store.cluster]\nnodes = [\"10.0.0.2\"]\n",
                "store.cluster.nodes",
            ),
            (
                "backend = \"redis\"",
                "[store.cluster]\nrecheck_ms = 5\n",
                "store.cluster.recheck_ms",
            ),
            (
                "backend = \"redis\"\nkey_prefix = \"{scep}:\"",
                "[store.cluster]\n",
                "store.key_prefix",
            ),
            (
                "backend = \"redis\"",
                "[store.cluster]\n[store.sentinel]\nmaster = \"m\"\nnodes = [\"s:26379\"]\n",
                "exclude each other",
            ),
        ] {
            let err = cluster(store, section).unwrap_err();
            assert!(err.contains(setting), "{section}: {err}");
        }
    }

    #[test]
    fn replica_acks_are_for_redis_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let load = |store: &str| {
            let text = example("c.txt")
                .replace("backend = \"memory\"", store)
                .replace(
                    "# url = \"redis://127.0.0.1:6379/0\"",
                    "url = \"redis://redis.internal/0\"",
                );
            FileConfig::load(&write(dir.path(), &text)).map_err(|e| e.to_string())
        };
        assert_eq!(load("backend = \"redis\"").unwrap().store.replica_acks, 0);
        let c = load("backend = \"redis\"\nreplica_acks = 2").unwrap();
        assert_eq!(c.store.replica_acks, 2);
        for (store, setting) in [
            (
                "backend = \"memory\"\nreplica_acks = 1",
                "store.replica_acks",
            ),
            (
                "backend = \"redis\"\nreplica_acks = 1000",
                "store.replica_acks",
            ),
            (
                "backend = \"redis\"\nreplica_acks = 1\ncommand_timeout_ms = 1",
                "store.command_timeout_ms",
            ),
        ] {
            let err = load(store).unwrap_err();
            assert!(err.contains(setting), "{store}: {err}");
        }
    }

    #[test]
    fn a_redis_store_needs_a_url_without_a_password() {
        let dir = tempfile::tempdir().unwrap();
        let base = example("c.txt").replace("backend = \"memory\"", "backend = \"redis\"");
        let err = FileConfig::load(&write(dir.path(), &base))
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.url"), "{err}");
        let with_password = base.replace(
            "# url = \"redis://127.0.0.1:6379/0\"",
            "url = \"redis://default:hunter2@127.0.0.1:6379/0\"",
        );
        let err = FileConfig::load(&write(dir.path(), &with_password))
            .unwrap_err()
            .to_string();
        assert!(err.contains("url_env") && !err.contains("hunter2"), "{err}");
        let fine = base.replace(
            "# url = \"redis://127.0.0.1:6379/0\"",
            "url = \"redis://127.0.0.1:6379/0\"",
        );
        let c = FileConfig::load(&write(dir.path(), &fine)).unwrap();
        assert_eq!(c.store.backend, StoreBackend::Redis);
        assert_eq!(c.store.key_prefix, "scep:");
        assert_eq!(
            c.store.claim_lease(&c.server),
            std::time::Duration::from_secs(30)
        );
        // A lease shorter than a request could run is refused, by name.
        let short = fine.replace("# claim_lease_secs = 30", "claim_lease_secs = 10");
        let err = FileConfig::load(&write(dir.path(), &short))
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.claim_lease_secs"), "{err}");
        let long = fine.replace("# claim_lease_secs = 30", "claim_lease_secs = 45");
        // A command timeout that would leave a CA no time within the lease.
        let slow = long.replace("# command_timeout_ms = 1000", "command_timeout_ms = 22500");
        let err = FileConfig::load(&write(dir.path(), &slow))
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.command_timeout_ms"), "{err}");
        let c = FileConfig::load(&write(dir.path(), &long)).unwrap();
        assert_eq!(
            c.store.claim_lease(&c.server),
            std::time::Duration::from_secs(45)
        );
    }

    #[test]
    fn keys_are_files_or_pkcs11_tables() {
        let dir = tempfile::tempdir().unwrap();
        let text = example("c.txt").replace(
            "key = \"ca.key.pem\"",
            "key = { pkcs11 = { module = \"/m.so\", token_label = \"t\", key_label = \"ca\", pin_file = \"pin.txt\" } }",
        );
        let c = FileConfig::load(&write(dir.path(), &text)).unwrap();
        assert_eq!(c.ra.key, KeyRef::File(dir.path().join("ra.key.pem")));
        let ca = c.ca.as_ref().unwrap();
        let KeyRef::Pkcs11 { pkcs11 } = &ca.key else {
            panic!("{:?}", ca.key)
        };
        assert_eq!(pkcs11.key_label.as_deref(), Some("ca"));
        assert_eq!(pkcs11.pin_file, Some(dir.path().join("pin.txt")));

        // A typo inside the table is named.
        let typo = text.replace("key_label", "key_lable");
        let err = FileConfig::load(&write(dir.path(), &typo))
            .unwrap_err()
            .to_string();
        assert!(err.contains("key_lable"), "{err}");
        // So is a missing PIN source.
        let nopin = text.replace(", pin_file = \"pin.txt\"", "");
        let err = FileConfig::load(&write(dir.path(), &nopin))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca.key") && err.contains("pin_env"), "{err}");
        // Two keys on one token with two PINs: one login per token, refused.
        let ra = "key = { pkcs11 = { module = \"/m.so\", token_label = \"t\", key_label = \"ra\", pin_file = \"PIN\" } }";
        let same = text.replace("key = \"ra.key.pem\"", &ra.replace("PIN", "pin.txt"));
        FileConfig::load(&write(dir.path(), &same)).unwrap();
        let other = text.replace("key = \"ra.key.pem\"", &ra.replace("PIN", "other.txt"));
        let err = FileConfig::load(&write(dir.path(), &other))
            .unwrap_err()
            .to_string();
        assert!(err.contains("different PINs"), "{err}");
        let elsewhere = other.replace(
            "token_label = \"t\", key_label = \"ra\"",
            "token_label = \"u\", key_label = \"ra\"",
        );
        FileConfig::load(&write(dir.path(), &elsewhere)).unwrap();
    }

    #[test]
    fn cas_and_profiles_parse_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let cas = r#"
[[cas]]
name = "ndes"
url = "https://ndes.example/certsrv/mscep/mscep.dll"
timeout_ms = 5000
max_in_flight = 4
[[cas]]
name = "local"
kind = "embedded"
[[profiles]]
name = "default"
cas = ["ndes", "local"]
strategy = "round-robin"
key_usage = "general"
queue_when_down = true
"#;
        let text = format!("{}{cas}", example("c.txt"));
        let c = FileConfig::load(&write(dir.path(), &text)).unwrap();
        assert_eq!(c.cas.len(), 2);
        assert_eq!(c.cas[0].max_in_flight, 4);
        assert_eq!(c.cas[0].probe_interval_secs, 5, "defaults fill the rest");
        assert!(c.profiles[0].queue_when_down);

        // Only upstream CAs: [ca] may go.
        let without_ca = text
            .replace("[ca]\n", "")
            .replace("certificate = \"ca.pem\"\n", "")
            .replace("key = \"ca.key.pem\"\n", "");
        let err = FileConfig::load(&write(dir.path(), &without_ca))
            .unwrap_err()
            .to_string();
        assert!(err.contains("embedded"), "{err}");
        let upstream_only = without_ca.replace("cas = [\"ndes\", \"local\"]", "cas = [\"ndes\"]");
        let upstream_only = upstream_only.replace(
            "name = \"local\"\nkind = \"embedded\"",
            "name = \"other\"\nurl = \"http://127.0.0.1:9/scep\"",
        );
        let c = FileConfig::load(&write(dir.path(), &upstream_only)).unwrap();
        assert!(c.ca.is_none());

        for (from, to, named) in [
            (
                "cas = [\"ndes\", \"local\"]",
                "cas = [\"nope\"]",
                "unknown CA",
            ),
            (
                "strategy = \"round-robin\"",
                "strategy = \"random\"",
                "random",
            ),
            ("timeout_ms = 5000", "timeout_ms = 0", "timeout_ms"),
            // No room within the (default, 30 s) claim lease: never asked.
            (
                "timeout_ms = 5000",
                "timeout_ms = 30000",
                "claim_lease_secs",
            ),
            (
                "url = \"https://ndes.example/certsrv/mscep/mscep.dll\"\n",
                "",
                "url",
            ),
        ] {
            let err = FileConfig::load(&write(dir.path(), &text.replace(from, to)))
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{named}: {err}");
        }
    }

    #[test]
    fn a_static_challenge_needs_one_source() {
        let dir = tempfile::tempdir().unwrap();
        let text = example("c.txt").replace("# or: password_env", "password_env");
        let err = FileConfig::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("challenge.password_file"), "{err}");
    }
}
