//! What `[[cas]]` and `[[profiles]]` say, and which class of profile a request asks
//! for (NDES's template selection by requested keyUsage). See [`super::router`] for how
//! the profiles are served.

use serde::Deserialize;
use x509_cert::ext::pkix::KeyUsages;

use super::upstream::{CipherPreference, DigestPreference, LostAnswer};
use crate::csr::CertificationRequest;

/// What a `[[cas]]` entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaKind {
    /// An upstream SCEP CA (`url` required).
    #[default]
    Scep,
    /// The embedded CA of `[ca]` and `[profile]`.
    Embedded,
}

/// One `[[cas]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaEntryConfig {
    pub name: String,
    pub kind: CaKind,
    /// scep: the upstream's SCEP URL.
    pub url: Option<String>,
    /// Bound on one exchange with this CA (request, probe).
    pub timeout_ms: u64,
    /// Requests in flight to this CA at most; more count as "unavailable" for it.
    pub max_in_flight: usize,
    /// scep: GetCACaps every this many seconds (the active health probe).
    pub probe_interval_secs: u64,
    /// scep: GetCACert again every this many seconds.
    pub refresh_secs: u64,
    /// scep: accept DES/3DES replies (micromdm scepserver replies in DES).
    pub legacy_des: bool,
    pub cipher: CipherPreference,
    pub digest: DigestPreference,
    /// Consecutive outages that open the breaker.
    pub failure_threshold: u32,
    /// First back-off of an open breaker, doubled per failed trial up to the max.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// scep: after a PENDING answer, CertPoll the upstream every this many seconds in
    /// the background and record the certificate when it comes (0: only the device's
    /// CertPoll asks).
    pub poll_interval_secs: u64,
    /// scep: background CertPolls of one pending request at most.
    pub poll_attempts: u32,
    /// scep: a PKCSReq sent whose answer was lost (timeout, connection closed while
    /// waiting): `fail-over` (default) or `poll` (keep it PENDING on this CA; no second
    /// certificate). See [`LostAnswer`].
    pub lost_answer: LostAnswer,
}

impl Default for CaEntryConfig {
    fn default() -> Self {
        CaEntryConfig {
            name: String::new(),
            kind: CaKind::Scep,
            url: None,
            timeout_ms: 10_000,
            max_in_flight: 16,
            probe_interval_secs: 5,
            refresh_secs: 3600,
            legacy_des: false,
            cipher: CipherPreference::default(),
            digest: DigestPreference::default(),
            failure_threshold: 3,
            backoff_initial_ms: 1000,
            backoff_max_ms: 60_000,
            poll_interval_secs: 60,
            poll_attempts: 60,
            lost_answer: LostAnswer::default(),
        }
    }
}

/// How a profile picks among its CAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    Failover,
    RoundRobin,
    Hedged,
}

/// NDES's three template classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageClass {
    Signature,
    Encryption,
    General,
}

/// One `[[profiles]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    pub name: String,
    /// Names of `[[cas]]` entries, in priority order.
    pub cas: Vec<String>,
    #[serde(default)]
    pub strategy: Strategy,
    /// The requests this profile serves by their requested keyUsage; none: only by name
    /// (or as the default).
    #[serde(default)]
    pub key_usage: Option<UsageClass>,
    /// All CAs down: answer PENDING and submit again on the device's CertPoll, instead
    /// of HTTP 503.
    #[serde(default)]
    pub queue_when_down: bool,
    /// The name of a `[challenges.<name>]` mode for the requests of this profile (NDES
    /// operators run one password policy per template); none: `[challenge]`.
    #[serde(default)]
    pub challenge: Option<String>,
}

/// Checks that need no network: names unique and known, numbers sane.
pub fn check(cas: &[CaEntryConfig], profiles: &[ProfileConfig]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for ca in cas {
        if ca.name.is_empty() {
            return Err("every [[cas]] entry needs a name".into());
        }
        if !names.insert(ca.name.as_str()) {
            return Err(format!("[[cas]] name {:?} is used twice", ca.name));
        }
        if ca.kind == CaKind::Scep {
            let url = ca
                .url
                .as_deref()
                .ok_or_else(|| format!("[[cas]] {:?}: kind = \"scep\" needs a url", ca.name))?;
            reqwest::Url::parse(url).map_err(|e| format!("[[cas]] {:?}: url: {e}", ca.name))?;
        }
        if ca.timeout_ms == 0 || ca.max_in_flight == 0 || ca.failure_threshold == 0 {
            return Err(format!(
                "[[cas]] {:?}: timeout_ms, max_in_flight and failure_threshold must be at least 1",
                ca.name
            ));
        }
        if ca.probe_interval_secs == 0 || ca.refresh_secs == 0 || ca.backoff_initial_ms == 0 {
            return Err(format!(
                "[[cas]] {:?}: probe_interval_secs, refresh_secs and backoff_initial_ms must be at least 1",
                ca.name
            ));
        }
    }
    if cas.iter().filter(|c| c.kind == CaKind::Embedded).count() > 1 {
        return Err("one [[cas]] entry at most can be the embedded CA".into());
    }
    if profiles.is_empty() {
        return Err("[[cas]] needs at least one [[profiles]] entry".into());
    }
    let mut profile_names = std::collections::HashSet::new();
    for p in profiles {
        if !profile_names.insert(p.name.as_str()) {
            return Err(format!("[[profiles]] name {:?} is used twice", p.name));
        }
        if p.cas.is_empty() {
            return Err(format!("[[profiles]] {:?} lists no CA", p.name));
        }
        if let Some(unknown) = p.cas.iter().find(|c| !names.contains(c.as_str())) {
            return Err(format!(
                "[[profiles]] {:?} names the unknown CA {unknown:?}",
                p.name
            ));
        }
    }
    Ok(())
}

/// NDES's rule: the keyUsage the CSR requests decides the template class.
pub fn classify(csr: &CertificationRequest) -> UsageClass {
    let Some(usage) = csr.requested_extensions().key_usage else {
        return UsageClass::General;
    };
    let sign = usage.contains(KeyUsages::DigitalSignature);
    let encipher = usage.contains(KeyUsages::KeyEncipherment);
    match (sign, encipher) {
        (true, false) => UsageClass::Signature,
        (false, true) => UsageClass::Encryption,
        _ => UsageClass::General,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_checked() {
        let ca = |name: &str| CaEntryConfig {
            name: name.into(),
            url: Some("http://127.0.0.1:1/scep".into()),
            ..Default::default()
        };
        let profile = |cas: &[&str]| ProfileConfig {
            name: "default".into(),
            cas: cas.iter().map(|s| s.to_string()).collect(),
            strategy: Strategy::Failover,
            key_usage: None,
            queue_when_down: false,
            challenge: None,
        };
        assert!(check(&[ca("a"), ca("b")], &[profile(&["a", "b"])]).is_ok());
        assert!(check(&[ca("a"), ca("a")], &[profile(&["a"])]).is_err());
        assert!(check(&[ca("a")], &[profile(&["x"])])
            .unwrap_err()
            .contains("unknown CA"));
        assert!(check(&[ca("a")], &[]).is_err());
        let no_url = CaEntryConfig {
            url: None,
            ..ca("a")
        };
        assert!(check(&[no_url], &[profile(&["a"])])
            .unwrap_err()
            .contains("url"));
    }
}
