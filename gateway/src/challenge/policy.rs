//! `[challenge.policy]`: what a CSR must look like, whatever the challenge mode.
//!
//! Checked *before* the mode's own validation, so that a CSR against policy never spends
//! a one-time password, never reaches a webhook and never costs an Intune call. Patterns
//! are `regex` expressions matched against the whole text (implicitly anchored), and
//! the regex crate matches in linear time: a pattern cannot be made to backtrack.

use regex::Regex;
use scep_hsm::KeyAlgorithm;
use serde::Deserialize;

use super::{Challenge, ChallengeContext, OneTimeChallenge, Validated};
use crate::ca::{BoxFuture, Issued};
use crate::config::ConfigError;
use crate::error::{Error, Result};

/// The policy as written in the config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsrPolicyConfig {
    /// `"rsa"` and/or `"ec"`; empty: any key type the gateway can read.
    pub allowed_key_types: Vec<String>,
    /// Smallest RSA modulus, in bits.
    pub min_rsa_bits: Option<usize>,
    /// Regex the subject (RFC 4514 text, e.g. `CN=device1,O=Example`) must match whole.
    pub subject_pattern: Option<String>,
    /// Regex every requested subjectAltName entry (`dns:host.example`, `email:…`,
    /// `ip:…`, `uri:…`, `upn:…`) must match whole.
    pub san_pattern: Option<String>,
}

/// A compiled whole-text pattern.
#[derive(Debug, Clone)]
pub struct Pattern(Regex);

impl Pattern {
    pub fn new(setting: &'static str, pattern: &str) -> Result<Self, ConfigError> {
        Regex::new(&format!("^(?:{pattern})$"))
            .map(Pattern)
            .map_err(|e| ConfigError::Invalid {
                setting,
                reason: format!("not a valid regular expression: {e}"),
            })
    }

    pub fn matches(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

/// The compiled policy.
#[derive(Debug, Clone, Default)]
pub struct CsrPolicy {
    rsa: bool,
    ec: bool,
    min_rsa_bits: usize,
    subject: Option<Pattern>,
    san: Option<Pattern>,
}

impl CsrPolicy {
    pub fn new(config: &CsrPolicyConfig) -> Result<Self, ConfigError> {
        let (mut rsa, mut ec) = (config.allowed_key_types.is_empty(), false);
        ec |= rsa;
        for kind in &config.allowed_key_types {
            match kind.to_ascii_lowercase().as_str() {
                "rsa" => rsa = true,
                "ec" | "ecdsa" => ec = true,
                other => {
                    return Err(ConfigError::Invalid {
                        setting: "challenge.policy.allowed_key_types",
                        reason: format!("unknown key type {other:?} (\"rsa\" or \"ec\")"),
                    })
                }
            }
        }
        Ok(CsrPolicy {
            rsa,
            ec,
            min_rsa_bits: config.min_rsa_bits.unwrap_or(0),
            subject: config
                .subject_pattern
                .as_deref()
                .map(|p| Pattern::new("challenge.policy.subject_pattern", p))
                .transpose()?,
            san: config
                .san_pattern
                .as_deref()
                .map(|p| Pattern::new("challenge.policy.san_pattern", p))
                .transpose()?,
        })
    }

    /// `Error::Refused` (badRequest) naming the rule the CSR breaks.
    pub fn check(&self, csr: &crate::csr::CertificationRequest) -> Result<()> {
        let refuse = |why: String| Err(Error::Refused(format!("CSR policy: {why}")));
        match csr.key_algorithm() {
            KeyAlgorithm::Rsa { .. } if !self.rsa => {
                return refuse("RSA keys are not allowed".into())
            }
            KeyAlgorithm::Rsa { bits } if bits < self.min_rsa_bits => {
                return refuse(format!(
                    "an RSA key of {bits} bits is below the minimum of {}",
                    self.min_rsa_bits
                ))
            }
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 if !self.ec => {
                return refuse("EC keys are not allowed".into())
            }
            _ => {}
        }
        if let Some(p) = &self.subject {
            if !p.matches(csr.subject()) {
                return refuse("the subject does not match subject_pattern".into());
            }
        }
        if let Some(p) = &self.san {
            if let Some(bad) = csr.subject_alt_names().into_iter().find(|n| !p.matches(n)) {
                return refuse(format!(
                    "the subjectAltName {bad:?} does not match san_pattern"
                ));
            }
        }
        Ok(())
    }
}

/// A mode with a policy in front of it.
#[derive(Debug)]
pub struct PolicyChallenge {
    pub policy: CsrPolicy,
    pub inner: Box<dyn Challenge>,
}

impl Challenge for PolicyChallenge {
    fn validate<'a>(&'a self, ctx: &'a ChallengeContext<'a>) -> BoxFuture<'a, Result<Validated>> {
        Box::pin(async move {
            self.policy.check(ctx.csr)?;
            self.inner.validate(ctx).await
        })
    }

    fn notify_issued<'a>(
        &'a self,
        ctx: &'a ChallengeContext<'a>,
        issued: &'a Issued,
    ) -> BoxFuture<'a, Result<()>> {
        self.inner.notify_issued(ctx, issued)
    }

    fn notify_failed<'a>(
        &'a self,
        ctx: &'a ChallengeContext<'a>,
        error: &'a Error,
    ) -> BoxFuture<'a, ()> {
        self.inner.notify_failed(ctx, error)
    }

    fn one_time(&self) -> Option<&OneTimeChallenge> {
        self.inner.one_time()
    }

    fn mode(&self) -> &'static str {
        self.inner.mode()
    }
}
