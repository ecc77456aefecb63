//! `mode = "one-time"`: NDES's `mscep_admin` for everyone else.
//!
//! An administrator (or an MDM, a provisioning script) asks the admin endpoint
//! (`POST /admin/challenges`, bearer token) or the CLI (`scep-gateway challenge new`) for
//! a password; the device enrolls with it once. As in NDES
//! (`shared/docs/intune-scep-validation.md`, "NDES behaviour worth matching"): valid for
//! `validity_secs` (60 minutes by default), usable once, at most
//! `max_outstanding_per_requester` (5) unused at a time per requester — "the password
//! cache is full" beyond.
//!
//! - Passwords are 160 random bits in base32 (32 characters), so a plain SHA-256 is a
//!   safe way to keep them: the store holds only the hash, and a guess cannot be
//!   brute-forced from it.
//! - Single use across replicas: validation *takes* the record ([`Store::take_otp`],
//!   Redis `GETDEL`), so of two devices presenting one password at once on two replicas
//!   exactly one gets it. The first use spends the password even when the request is
//!   then refused (a CN that does not match): a leaked password gets one try.
//! - Optionally bound to a commonName pattern (per password, or a default in config).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::policy::Pattern;
use super::{presented, Challenge, ChallengeContext, Validated};
use crate::ca::BoxFuture;
use crate::config::ConfigError;
use crate::error::{Error, Result};
use crate::http::ClientCertificate;
use crate::store::{sha256, OtpPut, OtpRecord, Store};

/// `[challenge] mode = "one-time"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneTimeConfig {
    /// How long a password stays valid (NDES: 60 minutes).
    #[serde(default = "default_validity")]
    pub validity_secs: u64,
    /// Unused passwords one requester may hold at once (NDES `PasswordMax`, 5).
    #[serde(default = "default_max_outstanding")]
    pub max_outstanding_per_requester: usize,
    /// A commonName regex every password is bound to unless the request names one.
    #[serde(default)]
    pub cn_pattern: Option<String>,
    /// Who may ask for passwords over HTTP. None: the admin endpoint answers 404.
    #[serde(default)]
    pub admin_tokens: Vec<AdminTokenConfig>,
    /// Who may ask for passwords by mutual TLS: a client certificate verified against
    /// `[server.tls] client_ca` and named here. Tokens and clients may be combined.
    #[serde(default)]
    pub admin_clients: Vec<AdminClientConfig>,
    #[serde(default)]
    pub policy: Option<super::policy::CsrPolicyConfig>,
}

fn default_validity() -> u64 {
    3600
}

fn default_max_outstanding() -> usize {
    5
}

/// `[[challenge.admin_tokens]]`: a named bearer token, from a variable or a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenConfig {
    /// The requester its passwords count against (unless the request names one).
    pub name: String,
    pub token_env: Option<String>,
    pub token_file: Option<std::path::PathBuf>,
}

/// `[[challenge.admin_clients]]`: an admin client known by its TLS client certificate,
/// by the certificate's SHA-256 fingerprint (pins one certificate) or by its subject
/// commonName (any certificate `client_ca` issues with that name, so it survives
/// renewal). Exactly one of the two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminClientConfig {
    /// The requester its passwords count against (unless the request names one).
    pub name: String,
    /// Hex, with or without colons, as `openssl x509 -fingerprint -sha256` prints it.
    pub sha256: Option<String>,
    pub common_name: Option<String>,
}

/// How an admin client is recognised (see [`AdminClientConfig`]).
#[derive(Debug, Clone)]
enum ClientMatch {
    Fingerprint([u8; 32]),
    CommonName(String),
}

/// A password just made. The only time it exists in clear.
pub struct NewPassword {
    pub password: Zeroizing<String>,
    pub requester: String,
    /// Unix seconds.
    pub expires_at: u64,
}

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPassword")
            .field("requester", &self.requester)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The answer to [`OneTimeChallenge::issue`].
#[derive(Debug)]
pub enum Issue {
    Issued(NewPassword),
    /// NDES: "The password cache is full".
    CacheFull,
}

/// The one-time password issuer and validator.
pub struct OneTimeChallenge {
    store: Arc<dyn Store>,
    validity: Duration,
    max_outstanding: usize,
    default_cn_pattern: Option<String>,
    /// (name, SHA-256 of the token).
    tokens: Vec<(String, [u8; 32])>,
    /// (name, what its client certificate must be).
    clients: Vec<(String, ClientMatch)>,
}

impl std::fmt::Debug for OneTimeChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneTimeChallenge")
            .field("validity", &self.validity)
            .field("max_outstanding", &self.max_outstanding)
            .field("admin_tokens", &self.tokens.len())
            .field("admin_clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

impl OneTimeChallenge {
    pub fn new(config: &OneTimeConfig, store: Arc<dyn Store>) -> Result<Self, ConfigError> {
        let invalid = |setting, reason: &str| ConfigError::Invalid {
            setting,
            reason: reason.into(),
        };
        if config.validity_secs == 0 {
            return Err(invalid("challenge.validity_secs", "must be at least 1"));
        }
        if config.max_outstanding_per_requester == 0 {
            return Err(invalid(
                "challenge.max_outstanding_per_requester",
                "must be at least 1",
            ));
        }
        if let Some(p) = &config.cn_pattern {
            Pattern::new("challenge.cn_pattern", p)?;
        }
        let mut tokens = Vec::new();
        for token in &config.admin_tokens {
            let secret = super::http::read_secret(
                "challenge.admin_tokens",
                token.token_env.as_deref(),
                token.token_file.as_deref(),
            )?;
            if secret.len() < 16 {
                return Err(invalid(
                    "challenge.admin_tokens",
                    "an admin token must be at least 16 characters",
                ));
            }
            tokens.push((token.name.clone(), sha256(secret.as_bytes())));
        }
        let mut clients = Vec::new();
        for client in &config.admin_clients {
            let matcher = match (&client.sha256, &client.common_name) {
                (Some(hex), None) => {
                    ClientMatch::Fingerprint(parse_fingerprint(hex).ok_or_else(|| {
                        invalid("challenge.admin_clients", "sha256 must be 32 bytes of hex")
                    })?)
                }
                (None, Some(cn)) if !cn.is_empty() => ClientMatch::CommonName(cn.clone()),
                _ => {
                    return Err(invalid(
                        "challenge.admin_clients",
                        "each admin client needs exactly one of sha256 or common_name",
                    ))
                }
            };
            clients.push((client.name.clone(), matcher));
        }
        Ok(OneTimeChallenge {
            store,
            validity: Duration::from_secs(config.validity_secs),
            max_outstanding: config.max_outstanding_per_requester,
            default_cn_pattern: config.cn_pattern.clone(),
            tokens,
            clients,
        })
    }

    /// Whether the HTTP admin endpoint is on (at least one token configured).
    pub fn admin_enabled(&self) -> bool {
        !self.tokens.is_empty() || !self.clients.is_empty()
    }

    /// The name of the admin client whose verified TLS certificate this is, if any.
    pub fn authenticate_client(&self, client: &ClientCertificate) -> Option<&str> {
        self.clients.iter().find_map(|(name, matcher)| {
            let matched = match matcher {
                ClientMatch::Fingerprint(f) => bool::from(f.ct_eq(&client.sha256)),
                ClientMatch::CommonName(cn) => client.common_name.as_deref() == Some(cn),
            };
            matched.then_some(name.as_str())
        })
    }

    /// The name of the admin token `presented` is, compared in constant time against
    /// every configured token (hashes of equal length, no early exit).
    pub fn authenticate(&self, presented: &str) -> Option<&str> {
        let digest = sha256(presented.as_bytes());
        let mut found = None;
        for (name, token) in &self.tokens {
            if bool::from(digest.ct_eq(token)) {
                found = Some(name.as_str());
            }
        }
        found
    }

    /// Makes a password for `requester`, bound to `cn_pattern` (or the configured
    /// default), unless the requester's cache is full.
    pub async fn issue(&self, requester: &str, cn_pattern: Option<&str>) -> Result<Issue> {
        if requester.is_empty() || requester.len() > 256 {
            return Err(Error::Refused(
                "the requester must be 1 to 256 characters".into(),
            ));
        }
        let cn_pattern = cn_pattern
            .map(str::to_owned)
            .or_else(|| self.default_cn_pattern.clone());
        if let Some(p) = &cn_pattern {
            Pattern::new("cn_pattern", p).map_err(|e| Error::Refused(e.to_string()))?;
        }
        let password = random_password()?;
        let expires_at = unix_now() + self.validity.as_secs();
        let record = OtpRecord {
            requester: requester.to_owned(),
            cn_pattern,
            expires_at,
        };
        let hash = sha256(password.as_bytes());
        match self
            .store
            .put_otp(&hash, &record, self.validity, self.max_outstanding)
            .await?
        {
            OtpPut::CacheFull => Ok(Issue::CacheFull),
            OtpPut::Stored => {
                tracing::info!(requester, expires_at, "one-time challenge password issued");
                Ok(Issue::Issued(NewPassword {
                    password,
                    requester: requester.to_owned(),
                    expires_at,
                }))
            }
        }
    }
}

impl Challenge for OneTimeChallenge {
    fn validate<'a>(&'a self, ctx: &'a ChallengeContext<'a>) -> BoxFuture<'a, Result<Validated>> {
        Box::pin(async move {
            let hash = sha256(presented(ctx)?.as_bytes());
            let Some(record) = self.store.take_otp(&hash).await? else {
                return Err(Error::Refused(
                    "the challenge password is wrong, already used or expired".into(),
                ));
            };
            if record.expires_at <= unix_now() {
                return Err(Error::Refused("the challenge password has expired".into()));
            }
            if let Some(pattern) = &record.cn_pattern {
                let bound = Pattern::new("cn_pattern", pattern)
                    .map_err(|_| Error::Refused("the password's CN binding is invalid".into()))?;
                let cn = ctx.csr.common_name().unwrap_or_default();
                if !bound.matches(&cn) {
                    return Err(Error::Refused(
                        "the subject's commonName is not the one this password was issued for"
                            .into(),
                    ));
                }
            }
            tracing::info!(transaction_id = ctx.transaction_id, requester = %record.requester, "one-time challenge password used");
            Ok(Validated::default())
        })
    }

    fn one_time(&self) -> Option<&OneTimeChallenge> {
        Some(self)
    }

    fn mode(&self) -> &'static str {
        "one-time"
    }
}

/// 160 random bits, RFC 4648 base32 without padding (32 characters: easy to read out,
/// no case or 0/O confusion in the alphabet's digits 2–7).
fn random_password() -> Result<Zeroizing<String>> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bytes = Zeroizing::new([0u8; 20]);
    aws_lc_rs::rand::fill(&mut bytes[..])
        .map_err(|_| Error::Unavailable("no randomness for a password".into()))?;
    let mut out = Zeroizing::new(String::with_capacity(32));
    for chunk in bytes.chunks(5) {
        let n = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        for i in (0..8).rev() {
            out.push(ALPHABET[((n >> (i * 5)) & 31) as usize] as char);
        }
    }
    Ok(out)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `AB:CD:…` or `abcd…` → 32 bytes.
fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex_digits: String = text.chars().filter(|c| *c != ':').collect();
    hex::decode(hex_digits).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_32_base32_characters_and_differ() {
        let a = random_password().unwrap();
        let b = random_password().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)));
        assert_ne!(*a, *b);
    }

    #[test]
    fn admin_clients_match_by_fingerprint_or_common_name_only() {
        let store: Arc<dyn Store> = Arc::new(crate::store::memory::MemoryStore::new(
            Duration::from_secs(60),
            1000,
        ));
        let cert = ClientCertificate {
            sha256: [0xAB; 32],
            common_name: Some("portal".into()),
        };
        let config = |clients: &str| -> OneTimeConfig { toml::from_str(clients).unwrap() };
        let colons = vec!["AB"; 32].join(":");
        let by_hash = OneTimeChallenge::new(
            &config(&format!(
                "[[admin_clients]]\nname = \"ops\"\nsha256 = \"{colons}\""
            )),
            store.clone(),
        )
        .unwrap();
        assert!(by_hash.admin_enabled());
        assert_eq!(by_hash.authenticate_client(&cert), Some("ops"));
        let by_name = OneTimeChallenge::new(
            &config("[[admin_clients]]\nname = \"mdm\"\ncommon_name = \"portal\""),
            store.clone(),
        )
        .unwrap();
        assert_eq!(by_name.authenticate_client(&cert), Some("mdm"));
        let other = ClientCertificate {
            sha256: [0xAC; 32],
            common_name: Some("portal2".into()),
        };
        assert_eq!(by_hash.authenticate_client(&other), None);
        assert_eq!(by_name.authenticate_client(&other), None);
        for bad in [
            "[[admin_clients]]\nname = \"x\"",
            "[[admin_clients]]\nname = \"x\"\nsha256 = \"abcd\"",
            "[[admin_clients]]\nname = \"x\"\ncommon_name = \"\"",
            "[[admin_clients]]\nname = \"x\"\ncommon_name = \"a\"\nsha256 = \"00\"",
        ] {
            let error = OneTimeChallenge::new(&config(bad), store.clone()).unwrap_err();
            assert!(
                error.to_string().contains("admin_clients"),
                "{bad}: {error}"
            );
        }
    }
}
