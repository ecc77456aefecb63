//! Everything a request needs, built once from the configuration: RA keys, the CA, the
//! store, the challenge validator, and the prepared GetCACaps/GetCACert answers.
//!
//! Every check that can fail on bad configuration happens here, at start, with a message
//! that names the setting and the file: a certificate that does not match its key, an RA
//! certificate without the key usage clients need, an unreadable challenge file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use scep_hsm::pkcs11::Purpose;
use scep_hsm::{Key, Pkcs11Key, SoftwareKey};
use x509_cert::der::Decode;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
use zeroize::Zeroizing;

use crate::ca::embedded::EmbeddedCa;
use crate::ca::member::{Backend, Member};
use crate::ca::profile::CaKind;
use crate::ca::router::Router;
use crate::ca::upstream::{UpstreamCa, UpstreamSettings};
use crate::ca::Ca;
use crate::challenge::intune::IntuneChallenge;
use crate::challenge::one_time::OneTimeChallenge;
use crate::challenge::policy::{CsrPolicy, PolicyChallenge};
use crate::challenge::static_secret::StaticChallenge;
use crate::challenge::webhook::WebhookChallenge;
use crate::challenge::{Challenge, NoChallenge};
use crate::cms::signed::CertificateFields;
use crate::config::{
    ChallengeConfig, ConfigError, FileConfig, KeyRef, RenewalConfig, StoreBackend, StoreConfig,
};
use crate::health::Readiness;
use crate::metrics;
use crate::ra::{Credential, RaKeys};
use crate::scep::cacert::{self, CaCertAnswer};
use crate::scep::capabilities::Capabilities;
use crate::scep::request::CryptoPolicy;
use crate::store::memory::MemoryStore;
use crate::store::redis::{ClusterSettings, RedisSettings, RedisStore, SentinelSettings};
use crate::store::Store;

/// The running gateway's shared state.
#[derive(Debug)]
pub struct Gateway {
    pub ra: RaKeys,
    pub ca: Arc<dyn Ca>,
    pub store: Arc<dyn Store>,
    pub challenge: Arc<dyn Challenge>,
    pub policy: CryptoPolicy,
    pub renewal: RenewalConfig,
    /// The GetCACaps body.
    pub capabilities: String,
    pub ca_cert: CaCertAnswer,
    pub next_ca_cert: Option<CaCertAnswer>,
    /// The `[next]` certificates GetNextCACert serves (DER), for their expiry gauge.
    pub next_certificates: Vec<Arc<[u8]>>,
    /// How long a claimed transaction stays claimed if this process dies mid-way.
    pub claim_lease: Duration,
    /// `[challenges.<name>]`: the challenge modes profiles name.
    pub profile_challenges: std::collections::HashMap<String, Arc<dyn Challenge>>,
    /// Every RA and CA key by its setting name, for the readiness check.
    pub keys: Vec<(&'static str, Arc<dyn Key>)>,
    /// The admission gate of PKIOperations (in-flight bound, per-client rate).
    pub admission: crate::http::admission::Admission,
    /// SHA-256 of the `POST /admin/reload` bearer token, if one is configured.
    pub reload_token: Option<[u8; 32]>,
    /// `/readyz`, cached.
    pub readiness: Arc<Readiness>,
    /// No step of a PKIOperation blocks a thread (software keys, the embedded CA alone,
    /// the in-process store or Redis through its async connection, a challenge that
    /// calls nobody): it runs on the worker that received it, saving the blocking-pool
    /// hand-off (`enroll::pki_operation_from`). False as soon as anything may block: an
    /// HSM key (PKCS#11 calls block), an upstream CA, a webhook or Intune.
    pub inline: bool,
}

impl Gateway {
    /// The GetCACert answer for the CA identifier `message` (RFC 8894 §4.2): the answer
    /// prepared at start, or, with upstream CAs (whose chains are learnt at run time),
    /// the RA certificates and the chains of the profile `message` names.
    pub fn ca_cert_for(&self, identifier: Option<&str>) -> CaCertAnswer {
        match self.ca.ca_chain(identifier) {
            None => self.ca_cert.clone(),
            Some(chain) => cacert::ca_cert(&self.ra, &chain),
        }
    }

    /// Loads keys and certificates and assembles the gateway.
    pub fn from_config(config: &FileConfig) -> Result<Self, ConfigError> {
        Self::with_store(config, None)
    }

    /// As [`Gateway::from_config`], but keeps `store` (the running gateway's) instead of
    /// building one: a reload must not forget the transactions in flight.
    pub fn with_store(
        config: &FileConfig,
        store: Option<Arc<dyn Store>>,
    ) -> Result<Self, ConfigError> {
        // The signing RA key also decrypts unless a separate encryption key is set.
        let signer_purpose = if config.ra.encryption_key.is_some() {
            Purpose::SIGN
        } else {
            Purpose::BOTH
        };
        let signer = load_credential(
            "ra.certificate",
            &config.ra.certificate,
            "ra.key",
            &config.ra.key,
            signer_purpose,
        )?;
        require_usage(
            "ra.certificate",
            &config.ra.certificate,
            &signer.certificate,
            Usage::Sign,
        )?;
        let decrypter = match (&config.ra.encryption_certificate, &config.ra.encryption_key) {
            (Some(cert), Some(key)) => {
                let c = load_credential(
                    "ra.encryption_certificate",
                    cert,
                    "ra.encryption_key",
                    key,
                    Purpose::DECRYPT,
                )?;
                require_usage(
                    "ra.encryption_certificate",
                    cert,
                    &c.certificate,
                    Usage::Decrypt,
                )?;
                c
            }
            _ => {
                require_usage(
                    "ra.certificate",
                    &config.ra.certificate,
                    &signer.certificate,
                    Usage::Decrypt,
                )?;
                signer.clone()
            }
        };
        if !decrypter.key.algorithm().is_rsa() {
            return Err(ConfigError::Invalid {
                setting: "ra.key",
                reason: "the RA decryption key must be RSA (SCEP key transport is RSA)".into(),
            });
        }
        let mut previous = Vec::new();
        for entry in &config.ra.previous {
            let c = load_credential(
                "ra.previous.certificate",
                &entry.certificate,
                "ra.previous.key",
                &entry.key,
                Purpose::DECRYPT,
            )?;
            previous.push(c);
        }
        let ra = RaKeys {
            signer,
            decrypter,
            previous,
        };

        let mut keys = vec![
            ("ra.key", ra.signer.key.clone()),
            ("ra.encryption_key", ra.decrypter.key.clone()),
        ];
        keys.extend(
            ra.previous
                .iter()
                .map(|c| ("ra.previous.key", c.key.clone())),
        );
        let embedded = match &config.ca {
            Some(ca_config) => {
                let ca = load_embedded(ca_config, config)?;
                keys.push(("ca.key", ca.1));
                Some(ca.0)
            }
            None => None,
        };
        let store = match store {
            Some(store) => store,
            None => build_store(&config.store)?,
        };
        let ca: Arc<dyn Ca> = match embedded {
            Some(ca) if config.cas.is_empty() => ca,
            embedded => build_router(config, &ra, embedded, store.clone())?,
        };

        let mut next_certificates = Vec::new();
        let next = match &config.next {
            Some(next) => {
                let mut certs = Vec::new();
                for path in &next.certificates {
                    certs.extend(load_certificates("next.certificates", path)?);
                }
                next_certificates = certs.clone();
                Some(cacert::next_ca_cert(&ra.signer, &certs).map_err(|e| {
                    ConfigError::Invalid {
                        setting: "next.certificates",
                        reason: e.to_string(),
                    }
                })?)
            }
            None => None,
        };

        let capabilities = Capabilities {
            legacy_des: config.crypto.legacy_des,
            legacy_sha1: config.crypto.legacy_sha1,
            next_ca: next.is_some(),
        };
        if config.crypto.legacy_des {
            tracing::warn!(
                "legacy DES/3DES envelopes are enabled ([crypto] legacy_des); every use is logged"
            );
        }
        let claim_lease = config.store.claim_lease(&config.server);
        if claim_lease < Duration::from_secs(config.server.request_timeout_secs) {
            tracing::warn!(
                claim_lease_secs = claim_lease.as_secs(),
                request_timeout_secs = config.server.request_timeout_secs,
                "[store] claim_lease_secs is below [server] request_timeout_secs: a slow replica may finish a transaction another one re-claimed"
            );
        }
        Ok(Gateway {
            ca_cert: cacert::ca_cert(&ra, ca.chain()),
            ra,
            ca,
            challenge: load_challenge(&config.challenge, store.clone())?,
            profile_challenges: load_profile_challenges(config, &store)?,
            store,
            policy: CryptoPolicy {
                legacy_des: config.crypto.legacy_des,
            },
            renewal: config.renewal.clone(),
            capabilities: capabilities.render(),
            next_ca_cert: next,
            next_certificates,
            claim_lease,
            keys,
            admission: crate::http::admission::Admission::new(
                config.server.max_in_flight_operations,
                (config.server.per_client_rate > 0.0).then_some((
                    config.server.per_client_rate,
                    config.server.per_client_burst,
                )),
            ),
            reload_token: crate::challenge::http::optional_secret(
                "server.reload_token",
                config.server.reload_token_env.as_deref(),
                config.server.reload_token_file.as_deref(),
            )?
            .map(|token| crate::reload::token_digest(&token)),
            readiness: Arc::default(),
            inline: never_blocks(config),
        })
    }
}

/// Whether nothing a PKIOperation does under `config` can block its thread (see
/// [`Gateway::inline`]). Either store qualifies: Redis is then awaited, not waited for.
fn never_blocks(config: &FileConfig) -> bool {
    use crate::ca::profile::CaKind;
    use crate::config::{ChallengeConfig, KeyRef};
    let software = |key: &KeyRef| matches!(key, KeyRef::File(_));
    let keys = std::iter::once(&config.ra.key)
        .chain(config.ra.encryption_key.as_ref())
        .chain(config.ra.previous.iter().map(|p| &p.key))
        .chain(config.ca.as_ref().map(|ca| &ca.key));
    let quiet = |c: &ChallengeConfig| {
        matches!(
            c,
            ChallengeConfig::Static { .. }
                | ChallengeConfig::None { .. }
                | ChallengeConfig::OneTime(_)
        )
    };
    keys.into_iter().all(software)
        && config.cas.iter().all(|c| c.kind == CaKind::Embedded)
        && quiet(&config.challenge)
        && config.challenges.values().all(quiet)
}

/// The embedded CA and its signing key (for readiness).
type EmbeddedAndKey = (Arc<dyn Ca>, Arc<dyn Key>);

/// The embedded CA of `[ca]` (with the `[profile]` policy) and its key.
fn load_embedded(
    ca_config: &crate::config::CaConfig,
    config: &FileConfig,
) -> Result<EmbeddedAndKey, ConfigError> {
    let ca_credential = load_credential(
        "ca.certificate",
        &ca_config.certificate,
        "ca.key",
        &ca_config.key,
        Purpose::SIGN,
    )?;
    let key = ca_credential.key.clone();
    require_usage(
        "ca.certificate",
        &ca_config.certificate,
        &ca_credential.certificate,
        Usage::Ca,
    )?;
    let mut chain_above = Vec::new();
    for path in &ca_config.chain {
        chain_above.extend(load_certificates("ca.chain", path)?);
    }
    let ca = EmbeddedCa::new(ca_credential, chain_above, config.profile.clone()).map_err(|e| {
        ConfigError::Invalid {
            setting: "profile",
            reason: e.to_string(),
        }
    })?;
    Ok((Arc::new(ca), key))
}

/// The CA router of `[[cas]]` and `[[profiles]]` (see [`crate::ca::router`]). Inside a
/// tokio runtime (as `serve` builds it) the upstream CAs' probes start at once; their
/// first probe learns each upstream's chain.
fn build_router(
    config: &FileConfig,
    ra: &RaKeys,
    embedded: Option<Arc<dyn Ca>>,
    store: Arc<dyn Store>,
) -> Result<Arc<dyn Ca>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        setting: "cas",
        reason,
    };
    let mut members = Vec::with_capacity(config.cas.len());
    for entry in &config.cas {
        let backend = match entry.kind {
            CaKind::Embedded => Backend::Embedded(
                embedded
                    .clone()
                    .ok_or_else(|| invalid("kind = \"embedded\" needs [ca]".into()))?,
            ),
            CaKind::Scep => {
                let url = reqwest::Url::parse(entry.url.as_deref().unwrap_or_default())
                    .map_err(|e| invalid(format!("{}: url: {e}", entry.name)))?;
                let settings = UpstreamSettings {
                    name: entry.name.clone(),
                    url,
                    timeout: Duration::from_millis(entry.timeout_ms),
                    legacy_des: entry.legacy_des,
                    cipher: entry.cipher,
                    digest: entry.digest,
                    refresh: Duration::from_secs(entry.refresh_secs),
                    lost_answer: entry.lost_answer,
                };
                let upstream = UpstreamCa::new(settings, ra)
                    .map_err(|reason| invalid(format!("{}: {reason}", entry.name)))?;
                Backend::Upstream(Arc::new(upstream))
            }
        };
        members.push(Member::new(entry, backend));
    }
    let router = Router::new(members, &config.profiles, store).map_err(invalid)?;
    if tokio::runtime::Handle::try_current().is_ok() {
        router.start();
    } else {
        tracing::warn!("no async runtime: upstream CAs are not probed");
    }
    tracing::info!(
        cas = config.cas.len(),
        profiles = config.profiles.len(),
        "CA router: requests go to profiles of CAs"
    );
    Ok(Arc::new(router))
}

/// The configured transaction store. The Redis store connects lazily: a gateway started
/// while Redis is down starts not-ready (`/readyz` 503) and becomes ready when it answers.
pub fn build_store(config: &StoreConfig) -> Result<Arc<dyn Store>, ConfigError> {
    let ttl = Duration::from_secs(config.transaction_ttl_secs);
    match config.backend {
        StoreBackend::Memory => {
            let store = Arc::new(MemoryStore::new(ttl, config.max_transactions));
            store.spawn_sweeper(Duration::from_secs(60));
            Ok(store)
        }
        StoreBackend::Redis => {
            let tls_ca_pem = match &config.tls_ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| ConfigError::File {
                    setting: "store.tls_ca_file",
                    path: path.clone(),
                    reason: e.to_string(),
                })?),
                None => None,
            };
            let sentinel = match &config.sentinel {
                Some(s) => Some(SentinelSettings {
                    master: s.master.clone(),
                    nodes: s.nodes.clone(),
                    username: s.username.clone(),
                    password: match &s.password_env {
                        Some(var) => {
                            Some(std::env::var(var).map_err(|_| ConfigError::Invalid {
                                setting: "store.sentinel.password_env",
                                reason: format!("the environment variable {var} is not set"),
                            })?)
                        }
                        None => None,
                    },
                    recheck: Duration::from_millis(s.recheck_ms),
                    tls: s.tls,
                }),
                None => None,
            };
            let store = RedisStore::connect(RedisSettings {
                url: config.redis_url()?,
                tls_ca_pem,
                key_prefix: config.key_prefix.clone(),
                command_timeout: Duration::from_millis(config.command_timeout_ms),
                ttl,
                sentinel,
                replica_acks: config.replica_acks,
                cluster: config.cluster.as_ref().map(|c| ClusterSettings {
                    nodes: c.nodes.clone(),
                    recheck: Duration::from_millis(c.recheck_ms),
                }),
            })
            .map_err(|e| ConfigError::Invalid {
                setting: "store.url",
                reason: e.to_string(),
            })?;
            tracing::info!(
                endpoint = store.endpoint(),
                prefix = store.prefix(),
                "redis transaction store"
            );
            Ok(Arc::new(store))
        }
    }
}

/// The configured challenge mode, behind its CSR policy when one is set.
/// The `[challenges.<name>]` modes; every `[[profiles]] challenge` must name one.
fn load_profile_challenges(
    config: &FileConfig,
    store: &Arc<dyn Store>,
) -> Result<std::collections::HashMap<String, Arc<dyn Challenge>>, ConfigError> {
    for profile in &config.profiles {
        if let Some(name) = &profile.challenge {
            if !config.challenges.contains_key(name) {
                return Err(ConfigError::Invalid {
                    setting: "profiles.challenge",
                    reason: format!(
                        "profile {:?} names the challenge {name:?}, but there is no [challenges.{name}]",
                        profile.name
                    ),
                });
            }
        }
    }
    config
        .challenges
        .iter()
        .map(|(name, c)| Ok((name.clone(), load_challenge(c, store.clone())?)))
        .collect()
}

pub fn load_challenge(
    config: &ChallengeConfig,
    store: Arc<dyn Store>,
) -> Result<Arc<dyn Challenge>, ConfigError> {
    let mode = load_mode(config, store)?;
    tracing::info!(mode = mode.mode(), "challenge validation");
    Ok(match config.policy() {
        Some(policy) => Arc::new(PolicyChallenge {
            policy: CsrPolicy::new(policy)?,
            inner: mode,
        }),
        None => Arc::from(mode),
    })
}

fn load_mode(
    config: &ChallengeConfig,
    store: Arc<dyn Store>,
) -> Result<Box<dyn Challenge>, ConfigError> {
    match config {
        ChallengeConfig::None { .. } => {
            tracing::warn!("challenge mode \"none\": every request that reaches this gateway gets a certificate");
            Ok(Box::new(NoChallenge))
        }
        ChallengeConfig::OneTime(c) => {
            let one_time = OneTimeChallenge::new(c, store)?;
            if !one_time.admin_enabled() {
                tracing::info!("one-time challenges: no admin_tokens, the admin endpoint is off (use `scep-gateway challenge new`)");
            }
            Ok(Box::new(one_time))
        }
        ChallengeConfig::Webhook(c) => Ok(Box::new(WebhookChallenge::new(c)?)),
        ChallengeConfig::Intune(c) => Ok(Box::new(IntuneChallenge::new(c)?)),
        ChallengeConfig::Static {
            password_file,
            password_env,
            ..
        } => {
            let secret = match (password_file, password_env) {
                (Some(path), _) => {
                    crate::secrets::check_permissions("challenge.password_file", path);
                    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                        ConfigError::File {
                            setting: "challenge.password_file",
                            path: path.clone(),
                            reason: e.to_string(),
                        }
                    })?);
                    Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned())
                }
                (None, Some(var)) => {
                    Zeroizing::new(std::env::var(var).map_err(|_| ConfigError::Invalid {
                        setting: "challenge.password_env",
                        reason: format!("the environment variable {var} is not set"),
                    })?)
                }
                (None, None) => unreachable!("checked when the config was parsed"),
            };
            if secret.is_empty() {
                return Err(ConfigError::Invalid {
                    setting: "challenge",
                    reason: "the static challenge password is empty".into(),
                });
            }
            Ok(Box::new(StaticChallenge::new(secret)))
        }
    }
}

/// Loads a private key wherever it lives, for `purpose`. The one place that turns a
/// key setting into a [`Key`]; its errors name the setting and the problem (file
/// unreadable, wrong PIN, no such key label, module missing, a key without CKA_DECRYPT
/// configured for decryption, a token without the mechanism).
pub fn load_key(
    setting: &'static str,
    key: &KeyRef,
    purpose: Purpose,
) -> Result<Arc<dyn Key>, ConfigError> {
    match key {
        KeyRef::File(path) => {
            crate::secrets::check_permissions(setting, path);
            let key = SoftwareKey::from_file(path).map_err(|e| ConfigError::File {
                setting,
                path: path.clone(),
                reason: e.to_string(),
            })?;
            key.set_observer(metrics::key_observer(setting));
            Ok(Arc::new(key))
        }
        KeyRef::Pkcs11 { pkcs11 } => {
            if let Some(pin_file) = &pkcs11.pin_file {
                crate::secrets::check_permissions(setting, pin_file);
            }
            let key = Pkcs11Key::open(pkcs11, purpose).map_err(|e| ConfigError::Invalid {
                setting,
                reason: e.to_string(),
            })?;
            tracing::info!(setting, key = %pkcs11.describe(), algorithm = ?key.algorithm(), "PKCS#11 key opened");
            key.set_observer(metrics::key_observer(setting));
            let key = Arc::new(key);
            let sampled = key.clone();
            metrics::hsm_sessions(setting, Box::new(move || sampled.sessions()));
            Ok(key)
        }
    }
}

/// Loads a certificate and its private key and checks that they belong together.
fn load_credential(
    cert_setting: &'static str,
    cert_path: &Path,
    key_setting: &'static str,
    key_ref: &KeyRef,
    purpose: Purpose,
) -> Result<Credential, ConfigError> {
    let mut certs = load_certificates(cert_setting, cert_path)?;
    let certificate = certs.remove(0);
    let key = load_key(key_setting, key_ref, purpose)?;
    let fields = CertificateFields::parse(&certificate).map_err(|e| ConfigError::File {
        setting: cert_setting,
        path: cert_path.to_owned(),
        reason: e.to_string(),
    })?;
    if fields.spki != key.public_key_info() {
        return Err(ConfigError::Invalid {
            setting: key_setting,
            reason: format!(
                "the key {} does not belong to the certificate {}",
                key_ref.describe(),
                cert_path.display()
            ),
        });
    }
    Ok(Credential { key, certificate })
}

/// Reads every certificate of a PEM file (or the one certificate of a DER file), keeping
/// each certificate's bytes exactly as they are.
pub fn load_certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<Arc<[u8]>>, ConfigError> {
    let fail = |reason: String| ConfigError::File {
        setting,
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let mut certs = Vec::new();
    if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        let text = String::from_utf8(bytes).map_err(|_| fail("not a text PEM file".into()))?;
        for block in text.split("-----BEGIN ").skip(1) {
            let pem = format!("-----BEGIN {block}");
            let (label, der) =
                der::pem::decode_vec(pem.trim_end().as_bytes()).map_err(|e| fail(e.to_string()))?;
            if label == "CERTIFICATE" {
                certs.push(Arc::from(der));
            }
        }
    } else {
        certs.push(Arc::from(bytes));
    }
    if certs.is_empty() {
        return Err(fail("holds no CERTIFICATE".into()));
    }
    for cert in &certs {
        x509_cert::Certificate::from_der(cert)
            .map_err(|e| fail(format!("not a valid X.509 certificate: {e}")))?;
    }
    Ok(certs)
}

enum Usage {
    Sign,
    Decrypt,
    Ca,
}

/// RFC 8894 §2.1 and the field notes: RA certificates must carry digitalSignature (and
/// keyEncipherment for the one clients encrypt to), or Windows and jscep refuse them.
fn require_usage(
    setting: &'static str,
    path: &Path,
    der: &[u8],
    usage: Usage,
) -> Result<(), ConfigError> {
    let fail = |reason: &str| {
        Err(ConfigError::File {
            setting,
            path: path.to_owned(),
            reason: reason.into(),
        })
    };
    let Ok(cert) = x509_cert::Certificate::from_der(der) else {
        return fail("not a valid X.509 certificate");
    };
    let tbs = cert.tbs_certificate();
    let ku = tbs
        .get_extension::<KeyUsage>()
        .ok()
        .flatten()
        .map(|(_, ku)| ku);
    match usage {
        Usage::Sign if ku.is_some_and(|ku| !ku.digital_signature()) => {
            fail("the RA certificate lacks the digitalSignature key usage")
        }
        Usage::Decrypt if ku.is_some_and(|ku| !ku.key_encipherment()) => {
            fail("the RA certificate clients encrypt to lacks the keyEncipherment key usage")
        }
        Usage::Ca => {
            let is_ca = tbs
                .get_extension::<BasicConstraints>()
                .ok()
                .flatten()
                .is_some_and(|(_, bc)| bc.ca);
            if !is_ca {
                return fail("the CA certificate is not a CA (basicConstraints cA is not true)");
            }
            if ku.is_some_and(|ku| !ku.key_cert_sign()) {
                return fail("the CA certificate lacks the keyCertSign key usage");
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod inline_tests {
    use super::never_blocks;
    use crate::config::{example, FileConfig};
    use std::path::Path;

    fn config(edit: impl Fn(String) -> String) -> FileConfig {
        FileConfig::from_toml(&edit(example("c.txt")), Path::new("/x/gateway.toml")).unwrap()
    }

    #[test]
    fn only_configs_where_nothing_can_block_run_inline() {
        assert!(never_blocks(&config(|t| t)));
        let redis = config(|t| {
            t.replace("backend = \"memory\"", "backend = \"redis\"")
                .replace(
                    "# url = \"redis://127.0.0.1:6379/0\"",
                    "url = \"redis://127.0.0.1:6379/0\"",
                )
        });
        assert!(never_blocks(&redis));
        let hsm = config(|t| {
            t.replace(
                "key = \"ca.key.pem\"",
                "key = { pkcs11 = { module = \"/m.so\", token_label = \"t\", key_label = \"ca\", pin_env = \"P\" } }",
            )
        });
        assert!(!never_blocks(&hsm));
        let webhook = config(|t| {
            t.replace(
                "mode = \"static\"\npassword_file = \"c.txt\"",
                "mode = \"webhook\"\nurl = \"https://hook.example/\"\nbearer_token_env = \"T\"",
            )
        });
        assert!(!never_blocks(&webhook));
    }
}
