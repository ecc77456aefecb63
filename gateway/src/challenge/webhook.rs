//! `mode = "webhook"`: an HTTP service of the operator's decides who may enroll.
//!
//! The gateway POSTs a JSON document describing the request (README, "Challenges") to
//! `url`, signed with HMAC-SHA256 (`X-Scep-Signature: sha256=<hex>` over the exact
//! body) and/or with a bearer token, and reads `{"allow": bool, "profile": "…"?,
//! "reason": "…"?}`.
//!
//! An explicit `"allow": false` is a refusal: CertRep FAILURE badRequest (RFC 8894
//! §3.3.2.2), with the reason as failInfoText. Anything else that is not a 2xx with a
//! readable answer — timeout, connection refused, 5xx, 4xx, garbage — is an outage of
//! the webhook, not a verdict on the device: HTTP 503, nothing issued, the claim is
//! released and the device retries later with the same transactionID.
//!
//! An optional second URL (`notify_url`) is told, after the answer is decided and
//! without delaying it, about each issuance (serial, expiry, certificate) or failure
//! after an allowed validation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::http::{self, describe, hmac_sha256_hex, read_limited};
use super::{Challenge, ChallengeContext, Validated};
use crate::ca::certificate::ParsedCertificate;
use crate::ca::{BoxFuture, Issued};
use crate::config::ConfigError;
use crate::error::{Error, Result};

/// Largest webhook answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// `[challenge] mode = "webhook"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where the validation request is POSTed (`https://…`; `http://` for loopback).
    pub url: String,
    /// Bound on each webhook call (connect + answer).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// HMAC-SHA256 key for `X-Scep-Signature`, from a variable or a file.
    pub hmac_key_env: Option<String>,
    pub hmac_key_file: Option<PathBuf>,
    /// Bearer token for `Authorization`, from a variable or a file.
    pub bearer_token_env: Option<String>,
    pub bearer_token_file: Option<PathBuf>,
    /// PEM CA certificate(s) the webhook's TLS certificate chains to (instead of the
    /// system roots).
    pub ca_file: Option<PathBuf>,
    /// Told about issuances and failures (same authentication).
    pub notify_url: Option<String>,
    #[serde(default)]
    pub policy: Option<super::policy::CsrPolicyConfig>,
}

fn default_timeout() -> u64 {
    5000
}

impl WebhookConfig {
    pub fn resolve(&mut self, base: &std::path::Path) {
        http::resolve(&mut self.hmac_key_file, base);
        http::resolve(&mut self.bearer_token_file, base);
        http::resolve(&mut self.ca_file, base);
    }
}

/// The validation request (README, "Challenges").
#[derive(Serialize)]
struct ValidationRequest<'a> {
    transaction_id: &'a str,
    message_type: &'a str,
    /// base64 (standard, padded) of the DER PKCS#10.
    csr: String,
    /// RFC 4514 text.
    subject: &'a str,
    common_name: Option<String>,
    sans: Vec<String>,
    requested_key_usage: Vec<&'static str>,
    client_address: Option<String>,
    challenge: Option<&'a str>,
    /// Unix seconds: lets the receiver refuse replayed signed bodies.
    timestamp: u64,
}

/// The webhook's answer: `{"allow": bool, "profile"?: name, "reason"?: text}`.
#[derive(Debug, Deserialize)]
pub(crate) struct Answer {
    allow: bool,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

impl Answer {
    /// Reads a 2xx answer's body; anything else than the JSON above is unreadable,
    /// which the caller treats as an outage, never as a denial.
    pub(crate) fn read(body: &[u8]) -> std::result::Result<Answer, String> {
        serde_json::from_slice(body).map_err(|e| format!("unreadable answer: {e}"))
    }

    /// What the answer means for the request: the profile it names, or a refusal with
    /// the webhook's reason (truncated: it becomes failInfoText).
    pub(crate) fn verdict(self) -> Result<Validated> {
        if self.allow {
            return Ok(Validated {
                profile: self.profile,
            });
        }
        let reason = self
            .reason
            .map(|r| http::truncate(&r, 200))
            .unwrap_or_else(|| "no reason given".into());
        Err(Error::Refused(format!(
            "denied by the challenge webhook: {reason}"
        )))
    }
}

/// The notification (README, "Challenges").
#[derive(Serialize)]
struct Notification<'a> {
    transaction_id: &'a str,
    /// `issued` or `failed`.
    status: &'static str,
    serial: Option<String>,
    not_after: Option<String>,
    certificate: Option<String>,
    error: Option<String>,
    timestamp: u64,
}

struct Auth {
    hmac_key: Option<Zeroizing<String>>,
    bearer: Option<Zeroizing<String>>,
}

impl Auth {
    fn apply(&self, request: reqwest::RequestBuilder, body: &[u8]) -> reqwest::RequestBuilder {
        let mut request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.hmac_key {
            request = request.header(
                "X-Scep-Signature",
                format!("sha256={}", hmac_sha256_hex(key.as_bytes(), body)),
            );
        }
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token.as_str());
        }
        request
    }
}

/// The webhook validator.
pub struct WebhookChallenge {
    client: reqwest::Client,
    url: reqwest::Url,
    notify_url: Option<reqwest::Url>,
    auth: Arc<Auth>,
}

impl std::fmt::Debug for WebhookChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookChallenge")
            .field("url", &self.url.as_str())
            .field("notify_url", &self.notify_url.as_ref().map(|u| u.as_str()))
            .finish_non_exhaustive()
    }
}

fn parse_url(setting: &'static str, url: &str) -> Result<reqwest::Url, ConfigError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| ConfigError::Invalid {
        setting,
        reason: format!("not a URL: {e}"),
    })?;
    let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    if parsed.scheme() != "https" && !(parsed.scheme() == "http" && loopback) {
        return Err(ConfigError::Invalid {
            setting,
            reason: "must be https:// (http:// only to a loopback address)".into(),
        });
    }
    Ok(parsed)
}

impl WebhookChallenge {
    pub fn new(config: &WebhookConfig) -> Result<Self, ConfigError> {
        let hmac_key = http::optional_secret(
            "challenge.hmac_key_env",
            config.hmac_key_env.as_deref(),
            config.hmac_key_file.as_deref(),
        )?;
        let bearer = http::optional_secret(
            "challenge.bearer_token_env",
            config.bearer_token_env.as_deref(),
            config.bearer_token_file.as_deref(),
        )?;
        if hmac_key.is_none() && bearer.is_none() {
            return Err(ConfigError::Invalid {
                setting: "challenge",
                reason: "a webhook needs an HMAC key (hmac_key_env/hmac_key_file) or a bearer token (bearer_token_env/bearer_token_file)".into(),
            });
        }
        if config.timeout_ms == 0 {
            return Err(ConfigError::Invalid {
                setting: "challenge.timeout_ms",
                reason: "must be at least 1".into(),
            });
        }
        Ok(WebhookChallenge {
            client: http::client(
                "challenge.ca_file",
                Duration::from_millis(config.timeout_ms),
                config.ca_file.as_deref(),
            )?,
            url: parse_url("challenge.url", &config.url)?,
            notify_url: config
                .notify_url
                .as_deref()
                .map(|u| parse_url("challenge.notify_url", u))
                .transpose()?,
            auth: Arc::new(Auth { hmac_key, bearer }),
        })
    }

    /// One validation call, timed as `scep_challenge_call_duration_seconds{kind="webhook"}`
    /// (ok: a 2xx answer we could read).
    async fn ask(&self, body: &[u8]) -> std::result::Result<Answer, String> {
        let started = std::time::Instant::now();
        let answer = self.ask_once(body).await;
        crate::metrics::challenge_call("webhook", started.elapsed(), answer.is_ok());
        answer
    }

    async fn ask_once(&self, body: &[u8]) -> std::result::Result<Answer, String> {
        let request = self.auth.apply(self.client.post(self.url.clone()), body);
        let response = request
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered HTTP {}", status.as_u16()));
        }
        let bytes = read_limited(response, MAX_ANSWER).await?;
        Answer::read(&bytes)
    }

    /// Sends a notification in the background: it must not delay or change the answer.
    fn notify(&self, notification: &Notification<'_>) {
        let Some(url) = self.notify_url.clone() else {
            return;
        };
        let Ok(body) = serde_json::to_vec(notification) else {
            return;
        };
        let request = self.auth.apply(self.client.post(url), &body).body(body);
        let transaction_id = notification.transaction_id.to_owned();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let sent = request.send().await;
            let ok = matches!(&sent, Ok(r) if r.status().is_success());
            crate::metrics::challenge_call("webhook_notify", started.elapsed(), ok);
            match sent {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    tracing::warn!(%transaction_id, status = r.status().as_u16(), "notify webhook refused the notification")
                }
                Err(e) => {
                    tracing::warn!(%transaction_id, error = %describe(&e), "notify webhook unreachable")
                }
            }
        });
    }
}

/// The messageType as RFC 8894 §3.2.1.2 spells it.
fn rfc_name(message_type: crate::scep::message::MessageType) -> &'static str {
    use crate::scep::message::MessageType;
    match message_type {
        MessageType::PkcsReq => "PKCSReq",
        MessageType::RenewalReq => "RenewalReq",
        MessageType::CertPoll => "CertPoll",
        MessageType::GetCert => "GetCert",
        MessageType::GetCrl => "GetCRL",
        MessageType::CertRep => "CertRep",
    }
}

impl Challenge for WebhookChallenge {
    fn validate<'a>(&'a self, ctx: &'a ChallengeContext<'a>) -> BoxFuture<'a, Result<Validated>> {
        Box::pin(async move {
            let document = ValidationRequest {
                transaction_id: ctx.transaction_id,
                message_type: rfc_name(ctx.message_type),
                csr: base64::engine::general_purpose::STANDARD.encode(ctx.csr.as_der()),
                subject: ctx.csr.subject(),
                common_name: ctx.csr.common_name(),
                sans: ctx.csr.subject_alt_names(),
                requested_key_usage: ctx.csr.key_usage_names(),
                client_address: ctx.client_addr.map(|a| a.ip().to_string()),
                challenge: ctx.csr.challenge_password(),
                timestamp: super::one_time::unix_now(),
            };
            let body = Zeroizing::new(
                serde_json::to_vec(&document)
                    .map_err(|e| Error::Unavailable(format!("challenge webhook: {e}")))?,
            );
            match self.ask(&body).await {
                Ok(answer) => answer.verdict(),
                Err(why) => Err(Error::Unavailable(format!("challenge webhook: {why}"))),
            }
        })
    }

    fn notify_issued<'a>(
        &'a self,
        ctx: &'a ChallengeContext<'a>,
        issued: &'a Issued,
    ) -> BoxFuture<'a, Result<()>> {
        let not_after = ParsedCertificate::from_der(&issued.certificate)
            .ok()
            .map(|c| http::utc_timestamp(c.not_after, ""));
        self.notify(&Notification {
            transaction_id: ctx.transaction_id,
            status: "issued",
            serial: Some(hex::encode(&issued.serial)),
            not_after,
            certificate: Some(
                base64::engine::general_purpose::STANDARD.encode(&issued.certificate),
            ),
            error: None,
            timestamp: super::one_time::unix_now(),
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn notify_failed<'a>(
        &'a self,
        ctx: &'a ChallengeContext<'a>,
        error: &'a Error,
    ) -> BoxFuture<'a, ()> {
        self.notify(&Notification {
            transaction_id: ctx.transaction_id,
            status: "failed",
            serial: None,
            not_after: None,
            certificate: None,
            error: Some(http::truncate(&error.to_string(), 255)),
            timestamp: super::one_time::unix_now(),
        });
        Box::pin(std::future::ready(()))
    }

    fn mode(&self) -> &'static str {
        "webhook"
    }
}
