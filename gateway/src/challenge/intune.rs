//! `mode = "intune"`: Microsoft Intune's SCEP challenge validation, exactly as
//! `shared/docs/intune-scep-validation.md` describes the wire format (itself taken from
//! Microsoft's reference library, microsoft/Intune-Resource-Access `src/CsrValidation`).
//!
//! ```text
//! token (Entra ID, client credentials; cached until shortly before expires_in)
//!   ─▶ Graph service discovery (cached; dropped on a connection failure)
//!   ─▶ POST {ScepRequestValidationFEService}/ScepActions/validateRequest     before issuing
//!   ─▶ POST …/ScepActions/successNotification   after issuing, before the certificate leaves
//!   ─▶ POST …/ScepActions/failureNotification   on a failure after the validation
//! ```
//!
//! The doc's rules, as implemented:
//! - validateRequest fails for any reason, *including Intune or Entra ID being
//!   unreachable* → nothing issued, CertRep FAILURE badRequest, the reason in
//!   failInfoText (never the challenge);
//! - successNotification fails → the certificate is not returned (FAILURE badRequest;
//!   the transaction is released, so no retry is answered with it);
//! - a CA failure after a successful validation → failureNotification (best effort).
//!
//! Every call has a timeout and is retried a bounded number of times on connection
//! errors, timeouts, 429 and 5xx; an answer with a non-Success `code` is final. Proxies
//! come from `HTTPS_PROXY`/`NO_PROXY` (reqwest). Base URLs are settings, for sovereign
//! clouds and for tests. The client secret, tokens and the challenge are never logged.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use scep_hsm::pkcs11::Purpose;
use scep_hsm::{Key, SignatureAlgorithm};
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::http::{self, describe, read_limited, uuid_v4};
use super::{Challenge, ChallengeContext, Validated};
use crate::ca::certificate::ParsedCertificate;
use crate::ca::{BoxFuture, Issued};
use crate::config::{ConfigError, KeyRef};
use crate::error::{Error, Result};

/// The Intune service principal's appId (doc, "Service discovery").
const INTUNE_APP_ID: &str = "0000000a-0000-0000-c000-000000000000";
/// The provider whose uri the ScepActions are posted under.
const PROVIDER: &str = "ScepRequestValidationFEService";
const API_VERSION: &str = "2018-02-20";
/// failureNotification's hResult: 0x8000FFFF (E_UNEXPECTED), the doc's example.
const FAILURE_HRESULT: u32 = 2_147_549_183;
const MAX_ANSWER: usize = 256 * 1024;
/// Entra ID tokens live about an hour; a longer `expires_in` is not believed.
const MAX_TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// `[challenge] mode = "intune"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntuneConfig {
    /// The Entra ID tenant (`contoso.onmicrosoft.com` or its GUID).
    pub tenant: String,
    /// The app registration's application (client) id.
    pub client_id: String,
    /// Client secret, from a variable or a file...
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    /// ...or a certificate credential: the certificate registered with the app (PEM) and
    /// its RSA key (a PKCS#8 file or `{ pkcs11 = {...} }`), signing an RS256 client
    /// assertion.
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<KeyRef>,
    #[serde(default = "default_login_url")]
    pub login_url: String,
    #[serde(default = "default_graph_url")]
    pub graph_url: String,
    /// The Intune resource; its token scope is this + `/.default` (the doc's double
    /// slash comes from the trailing slash here).
    #[serde(default = "default_intune_resource")]
    pub intune_resource: String,
    /// PEM CA certificate(s) trusted for these endpoints instead of the system roots
    /// (a TLS-inspecting proxy, tests).
    pub ca_file: Option<PathBuf>,
    /// Bound on each HTTP call.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Retries after a connection error, timeout, 429 or 5xx.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// `callerInfo` and `UserAgent`: product and version.
    #[serde(default = "default_caller_info")]
    pub caller_info: String,
    /// successNotification's `caConfiguration` and `certificateAuthority`; default:
    /// `caller_info` and the issuer's DN.
    pub ca_configuration: Option<String>,
    pub certificate_authority: Option<String>,
    #[serde(default)]
    pub policy: Option<super::policy::CsrPolicyConfig>,
}

fn default_login_url() -> String {
    "https://login.microsoftonline.com".into()
}
fn default_graph_url() -> String {
    "https://graph.microsoft.com".into()
}
fn default_intune_resource() -> String {
    "https://api.manage.microsoft.com/".into()
}
fn default_timeout() -> u64 {
    10_000
}
fn default_retries() -> u32 {
    2
}
fn default_caller_info() -> String {
    concat!("scep-gateway/", env!("CARGO_PKG_VERSION")).into()
}

impl IntuneConfig {
    pub fn resolve(&mut self, base: &std::path::Path) {
        http::resolve(&mut self.client_secret_file, base);
        http::resolve(&mut self.client_certificate, base);
        http::resolve(&mut self.ca_file, base);
        if let Some(key) = &mut self.client_key {
            key.resolve(base);
        }
    }
}

enum Credential {
    Secret(Zeroizing<String>),
    /// The key and the base64url SHA-1 thumbprint of its certificate (JWT `x5t`).
    Certificate {
        key: Arc<dyn Key>,
        x5t: String,
    },
}

/// A cached access token.
struct Token {
    value: Zeroizing<String>,
    /// When to fetch a new one: shortly before `expires_in`.
    refresh_at: Instant,
}

/// Why a call failed.
pub(crate) enum CallError {
    /// Intune answered with a `code` other than Success.
    Code(String, String),
    /// No usable answer (network, HTTP status, garbage, token, discovery).
    Unreachable(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Code(code, description) if description.is_empty() => f.write_str(code),
            CallError::Code(code, description) => write!(f, "{code}: {description}"),
            CallError::Unreachable(why) => write!(f, "Intune unreachable: {why}"),
        }
    }
}

/// The Intune validator.
pub struct IntuneChallenge {
    client: reqwest::Client,
    token_url: String,
    client_id: String,
    credential: Credential,
    graph_scope: String,
    intune_scope: String,
    discovery_url: String,
    retries: u32,
    caller_info: String,
    ca_configuration: String,
    certificate_authority: Option<String>,
    tokens: Mutex<HashMap<String, Token>>,
    /// providerName (lower case) → uri.
    endpoints: Mutex<Option<Arc<HashMap<String, String>>>>,
}

impl std::fmt::Debug for IntuneChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntuneChallenge")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("discovery_url", &self.discovery_url)
            .finish_non_exhaustive()
    }
}

fn trim(url: &str) -> &str {
    url.trim_end_matches('/')
}

impl IntuneChallenge {
    pub fn new(config: &IntuneConfig) -> Result<Self, ConfigError> {
        let credential = match (&config.client_certificate, &config.client_key) {
            (None, None) => Credential::Secret(http::read_secret(
                "challenge.client_secret_env",
                config.client_secret_env.as_deref(),
                config.client_secret_file.as_deref(),
            )?),
            (Some(cert), Some(key_ref))
                if config.client_secret_env.is_none() && config.client_secret_file.is_none() =>
            {
                certificate_credential(cert, key_ref)?
            }
            _ => {
                return Err(ConfigError::Invalid {
                    setting: "challenge.client_secret_env",
                    reason: "use a client secret (client_secret_env or client_secret_file) or a certificate (client_certificate and client_key), not both".into(),
                })
            }
        };
        if config.timeout_ms == 0 {
            return Err(ConfigError::Invalid {
                setting: "challenge.timeout_ms",
                reason: "must be at least 1".into(),
            });
        }
        Ok(IntuneChallenge {
            client: http::client(
                "challenge.ca_file",
                Duration::from_millis(config.timeout_ms),
                config.ca_file.as_deref(),
            )?,
            token_url: format!(
                "{}/{}/oauth2/v2.0/token",
                trim(&config.login_url),
                config.tenant
            ),
            client_id: config.client_id.clone(),
            credential,
            graph_scope: format!("{}/.default", trim(&config.graph_url)),
            intune_scope: format!("{}/.default", config.intune_resource),
            discovery_url: format!(
                "{}/v1.0/servicePrincipals/appId={INTUNE_APP_ID}/endpoints",
                trim(&config.graph_url)
            ),
            retries: config.retries.min(5),
            caller_info: config.caller_info.clone(),
            ca_configuration: config
                .ca_configuration
                .clone()
                .unwrap_or_else(|| config.caller_info.clone()),
            certificate_authority: config.certificate_authority.clone(),
            tokens: Mutex::new(HashMap::new()),
            endpoints: Mutex::new(None),
        })
    }

    /// Sends what `build` makes, retrying connection errors, timeouts, 429 and 5xx up
    /// to `retries` times with a short doubling pause. The whole call (retries
    /// included) is one `scep_challenge_call_duration_seconds` sample of `kind`
    /// (`intune_token`, `intune_discovery`, `intune_validate`, `intune_notify`): ok
    /// when it ends with a 2xx answer.
    async fn send(
        &self,
        kind: &'static str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> std::result::Result<reqwest::Response, String> {
        let started = Instant::now();
        let result = self.send_with_retries(build).await;
        let ok = matches!(&result, Ok(r) if r.status().is_success());
        crate::metrics::challenge_call(kind, started.elapsed(), ok);
        result
    }

    async fn send_with_retries(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> std::result::Result<reqwest::Response, String> {
        let mut attempt = 0;
        loop {
            let outcome = build().send().await;
            let retry = match &outcome {
                Ok(r) => r.status().is_server_error() || r.status().as_u16() == 429,
                Err(e) => e.is_connect() || e.is_timeout(),
            };
            if !retry || attempt >= self.retries {
                return match outcome {
                    Ok(r) => Ok(r),
                    Err(e) => Err(describe(&e)),
                };
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
    }

    /// An access token for `scope`, from the cache while it has time left.
    async fn token(&self, scope: &str) -> std::result::Result<Zeroizing<String>, String> {
        if let Some(t) = self.lock_tokens().get(scope) {
            if Instant::now() < t.refresh_at {
                return Ok(t.value.clone());
            }
        }
        // The form holds the secret or the assertion: built in a zeroized buffer.
        let mut form = Zeroizing::new(String::new());
        let mut field = |name: &str, value: &str| {
            if !form.is_empty() {
                form.push('&');
            }
            form.push_str(name);
            form.push('=');
            form.extend(percent_encoding::utf8_percent_encode(
                value,
                percent_encoding::NON_ALPHANUMERIC,
            ));
        };
        field("grant_type", "client_credentials");
        field("client_id", &self.client_id);
        field("scope", scope);
        match &self.credential {
            Credential::Secret(secret) => field("client_secret", secret),
            Credential::Certificate { key, x5t } => {
                let assertion = Zeroizing::new(self.client_assertion(key.clone(), x5t).await?);
                field(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                );
                field("client_assertion", &assertion);
            }
        }
        let response = self
            .send("intune_token", || {
                self.client
                    .post(&self.token_url)
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(form.as_str().to_owned())
            })
            .await
            .map_err(|e| format!("token endpoint: {e}"))?;
        let status = response.status();
        let body = Zeroizing::new(
            read_limited(response, MAX_ANSWER)
                .await
                .map_err(|e| format!("token endpoint: {e}"))?,
        );
        if !status.is_success() {
            // Entra ID's error JSON names the problem (`error`, e.g. invalid_client);
            // it never echoes the secret.
            let error = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            return Err(format!(
                "token endpoint answered HTTP {} {error}",
                status.as_u16()
            ));
        }
        let (value, fresh_for) = read_token(&body)?;
        self.lock_tokens().insert(
            scope.to_owned(),
            Token {
                value: value.clone(),
                refresh_at: Instant::now() + fresh_for,
            },
        );
        Ok(value)
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, Token>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_endpoints(&self) -> std::sync::MutexGuard<'_, Option<Arc<HashMap<String, String>>>> {
        self.endpoints.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// RFC 7523 client assertion (Entra ID "certificate credentials"): RS256 over
    /// header `{alg, typ, x5t}` and claims `{aud: token endpoint, iss = sub = client id,
    /// jti, nbf, iat, exp}`, signed by the key wherever it lives (blocking pool).
    async fn client_assertion(
        &self,
        key: Arc<dyn Key>,
        x5t: &str,
    ) -> std::result::Result<String, String> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = super::one_time::unix_now();
        let header = json!({"alg": "RS256", "typ": "JWT", "x5t": x5t});
        let claims = json!({
            "aud": self.token_url,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": uuid_v4(),
            "nbf": now,
            "iat": now,
            "exp": now + 600,
        });
        let input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let signing_input = input.clone();
        let signature = tokio::task::spawn_blocking(move || {
            key.sign(SignatureAlgorithm::RsaPkcs1Sha256, signing_input.as_bytes())
        })
        .await
        .map_err(|e| format!("client assertion: {e}"))?
        .map_err(|e| format!("client assertion: {e}"))?;
        Ok(format!("{input}.{}", b64.encode(signature)))
    }

    /// The discovered endpoints, from the cache or Graph.
    async fn endpoints(&self) -> std::result::Result<Arc<HashMap<String, String>>, String> {
        if let Some(map) = self.lock_endpoints().clone() {
            return Ok(map);
        }
        let token = self.token(&self.graph_scope).await?;
        let response = self
            .send("intune_discovery", || {
                self.client
                    .get(&self.discovery_url)
                    .bearer_auth(token.as_str())
                    .header("client-request-id", uuid_v4())
            })
            .await
            .map_err(|e| format!("service discovery: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!(
                "service discovery answered HTTP {}",
                status.as_u16()
            ));
        }
        let body = read_limited(response, MAX_ANSWER)
            .await
            .map_err(|e| format!("service discovery: {e}"))?;
        let map = read_discovery(&body)?;
        let map = Arc::new(map);
        *self.lock_endpoints() = Some(map.clone());
        Ok(map)
    }

    /// POSTs one ScepAction and reads `{"code", "errorDescription"}`.
    async fn scep_action(&self, action: &str, body: &Value) -> std::result::Result<(), CallError> {
        let unreachable = CallError::Unreachable;
        let endpoints = self.endpoints().await.map_err(unreachable)?;
        let base = endpoints
            .get(&PROVIDER.to_ascii_lowercase())
            .ok_or_else(|| {
                CallError::Unreachable(format!("service discovery lists no {PROVIDER}"))
            })?;
        let url = format!("{}/ScepActions/{action}", trim(base));
        let token = self.token(&self.intune_scope).await.map_err(unreachable)?;
        let body = Zeroizing::new(body.to_string());
        let kind = if action == "validateRequest" {
            "intune_validate"
        } else {
            "intune_notify"
        };
        let response = self
            .send(kind, || {
                self.client
                    .post(&url)
                    .bearer_auth(token.as_str())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("client-request-id", uuid_v4())
                    .header("api-version", API_VERSION)
                    .header("UserAgent", &self.caller_info)
                    .body(body.as_str().to_owned())
            })
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                // The doc: drop the discovered map on a connection or DNS failure.
                *self.lock_endpoints() = None;
                return Err(CallError::Unreachable(format!("{action}: {e}")));
            }
        };
        let status = response.status();
        let answer = read_limited(response, MAX_ANSWER)
            .await
            .map_err(|e| CallError::Unreachable(format!("{action}: {e}")))?;
        if !status.is_success() {
            return Err(CallError::Unreachable(format!(
                "{action} answered HTTP {}",
                status.as_u16()
            )));
        }
        read_action(action, &answer)
    }

    fn csr_base64(ctx: &ChallengeContext<'_>) -> String {
        base64::engine::general_purpose::STANDARD.encode(ctx.csr.as_der())
    }
}

/// Reads Entra ID's token answer (`{"access_token", "expires_in", …}`): the token and
/// how long to use it, five minutes short of `expires_in` (at half-life for tokens
/// shorter than ten minutes; 300 s when it is missing). `expires_in` is capped at a
/// day, so that an absurd value can neither overflow an `Instant` nor pin a token.
pub(crate) fn read_token(
    body: &[u8],
) -> std::result::Result<(Zeroizing<String>, Duration), String> {
    let answer: Value =
        serde_json::from_slice(body).map_err(|_| "token endpoint: unreadable answer".to_owned())?;
    let token = answer
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or("token endpoint: no access_token in the answer")?;
    let lifetime = match answer.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(300)
    .min(MAX_TOKEN_LIFETIME_SECS);
    let margin = if lifetime > 600 { 300 } else { lifetime / 2 };
    Ok((
        Zeroizing::new(token.to_owned()),
        Duration::from_secs(lifetime - margin),
    ))
}

/// Reads Graph's service discovery answer (`{"value": [{"providerName", "uri"}, …]}`)
/// into provider name (lower case) → base URI; entries without both are skipped.
pub(crate) fn read_discovery(body: &[u8]) -> std::result::Result<HashMap<String, String>, String> {
    let answer: Value = serde_json::from_slice(body)
        .map_err(|_| "service discovery: unreadable answer".to_owned())?;
    Ok(answer
        .get("value")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e.get("providerName")?.as_str()?.to_ascii_lowercase(),
                e.get("uri")?.as_str()?.to_owned(),
            ))
        })
        .collect())
}

/// Reads a ScepAction's answer (`{"code", "errorDescription"}`): `Success` or the
/// code and description, both truncated (they reach failInfoText and the log).
pub(crate) fn read_action(action: &str, body: &[u8]) -> std::result::Result<(), CallError> {
    let answer: Value = serde_json::from_slice(body)
        .map_err(|_| CallError::Unreachable(format!("{action}: unreadable answer")))?;
    let code = answer
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or("Unknown");
    if code == "Success" {
        return Ok(());
    }
    let description = answer
        .get("errorDescription")
        .and_then(Value::as_str)
        .unwrap_or("");
    Err(CallError::Code(
        http::truncate(code, 64),
        http::truncate(description, 200),
    ))
}

/// Loads the certificate credential: the certificate's SHA-1 thumbprint (`x5t`) and its
/// RSA key, which must belong together.
fn certificate_credential(
    cert: &std::path::Path,
    key_ref: &KeyRef,
) -> Result<Credential, ConfigError> {
    let der = crate::service::load_certificates("challenge.client_certificate", cert)?.remove(0);
    let key = crate::service::load_key("challenge.client_key", key_ref, Purpose::SIGN)?;
    let parsed = ParsedCertificate::from_der(&der).map_err(|e| ConfigError::File {
        setting: "challenge.client_certificate",
        path: cert.to_owned(),
        reason: e.to_string(),
    })?;
    if parsed.public_key_info != key.public_key_info() || !key.algorithm().is_rsa() {
        return Err(ConfigError::Invalid {
            setting: "challenge.client_key",
            reason: "must be the RSA key of client_certificate".into(),
        });
    }
    let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
    Ok(Credential::Certificate {
        key,
        x5t: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha1.as_ref()),
    })
}

impl Challenge for IntuneChallenge {
    fn validate<'a>(&'a self, ctx: &'a ChallengeContext<'a>) -> BoxFuture<'a, Result<Validated>> {
        Box::pin(async move {
            super::presented(ctx)?;
            let body = json!({"request": {
                "transactionId": ctx.transaction_id,
                "certificateRequest": Self::csr_base64(ctx),
                "callerInfo": self.caller_info,
            }});
            match self.scep_action("validateRequest", &body).await {
                Ok(()) => Ok(Validated::default()),
                Err(e) => Err(Error::Refused(format!("Intune validation failed: {e}"))),
            }
        })
    }

    fn notify_issued<'a>(
        &'a self,
        ctx: &'a ChallengeContext<'a>,
        issued: &'a Issued,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let parsed = ParsedCertificate::from_der(&issued.certificate)
                .map_err(|e| Error::Refused(format!("the issued certificate: {e}")))?;
            let issuer = <x509_cert::name::Name as der::Decode>::from_der(parsed.issuer)
                .map(|n| n.to_string())
                .unwrap_or_default();
            let thumbprint = aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                &issued.certificate,
            );
            let body = json!({"notification": {
                "transactionId": ctx.transaction_id,
                "certificateRequest": Self::csr_base64(ctx),
                "certificateThumbprint": hex::encode_upper(thumbprint.as_ref()),
                "certificateSerialNumber": hex::encode_upper(&issued.serial),
                "certificateExpirationDateUtc": http::utc_timestamp(parsed.not_after, ".0000000"),
                "issuingCertificateAuthority": issuer,
                "callerInfo": self.caller_info,
                "caConfiguration": self.ca_configuration,
                "certificateAuthority": self.certificate_authority.clone().unwrap_or_else(|| issuer.clone()),
            }});
            self.scep_action("successNotification", &body)
                .await
                .map_err(|e| {
                    Error::Refused(format!(
                        "Intune did not acknowledge the issuance, the certificate is withheld: {e}"
                    ))
                })
        })
    }

    fn notify_failed<'a>(
        &'a self,
        ctx: &'a ChallengeContext<'a>,
        error: &'a Error,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let body = json!({"notification": {
                "transactionId": ctx.transaction_id,
                "certificateRequest": Self::csr_base64(ctx),
                "hResult": FAILURE_HRESULT,
                "errorDescription": http::truncate(&error.to_string(), 255),
                "callerInfo": self.caller_info,
            }});
            if let Err(e) = self.scep_action("failureNotification", &body).await {
                tracing::warn!(transaction_id = ctx.transaction_id, error = %e, "Intune failureNotification not delivered");
            }
        })
    }

    fn mode(&self) -> &'static str {
        "intune"
    }
}

/// For tests of the timestamp format: `certificateExpirationDateUtc` of `time`.
pub fn expiration_text(time: SystemTime) -> String {
    http::utc_timestamp(time, ".0000000")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lifetimes_are_believed_up_to_a_day() {
        let read = |json: &str| read_token(json.as_bytes()).map(|(_, d)| d.as_secs());
        assert_eq!(read(r#"{"access_token":"t","expires_in":3599}"#), Ok(3299));
        assert_eq!(read(r#"{"access_token":"t","expires_in":"600"}"#), Ok(300));
        assert_eq!(read(r#"{"access_token":"t"}"#), Ok(150));
        // An absurd lifetime neither overflows an Instant nor keeps a token for ever.
        let huge = read(r#"{"access_token":"t","expires_in":18446744073709551615}"#).unwrap();
        assert_eq!(huge, MAX_TOKEN_LIFETIME_SECS - 300);
        let _ = Instant::now() + Duration::from_secs(huge);
        assert!(read(r#"{"expires_in":1}"#)
            .unwrap_err()
            .contains("access_token"));
        assert!(read("not json").is_err());
    }

    #[test]
    fn action_answers_are_success_or_a_truncated_code() {
        assert!(read_action("a", br#"{"code":"Success","errorDescription":""}"#).is_ok());
        let long = "x".repeat(1000);
        let answer = format!(r#"{{"code":"{long}","errorDescription":"{long}"}}"#);
        match read_action("a", answer.as_bytes()) {
            Err(CallError::Code(code, description)) => {
                assert!(code.len() <= 70 && description.len() <= 210)
            }
            other => panic!("{:?}", other.map_err(|e| e.to_string())),
        }
        assert!(matches!(
            read_action("a", b"[]"),
            Err(CallError::Code(c, _)) if c == "Unknown"
        ));
        assert!(matches!(
            read_action("a", b"{"),
            Err(CallError::Unreachable(_))
        ));
        let map = read_discovery(
            br#"{"value":[{"providerName":"ScepRequestValidationFEService","uri":"https://x"},{"uri":"y"}]}"#,
        )
        .unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(map["sceprequestvalidationfeservice"], "https://x");
    }
}
