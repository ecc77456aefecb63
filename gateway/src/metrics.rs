//! Every Prometheus metric of the gateway: its name, labels and buckets, in this one file.
//!
//! The rest of the code calls one function per event (`metrics::request(...)`,
//! `metrics::store_command(...)`): a name is never spelt twice, and the README's metric
//! table can be checked against this file alone. Values go to the `metrics` facade; the
//! Prometheus recorder ([`install`]) keeps them and [`render`] writes the text format that
//! `GET /metrics` serves (on the main listener, and on `[server] admin_listen` if set).
//!
//! Labels never carry a secret: no challenge, PIN, token or URL. Label values that come
//! from a client (the `operation=` parameter) are mapped onto a fixed set, so a scanner
//! cannot grow the number of series.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use x509_cert::der::Decode;

use crate::enroll::Summary;

pub const REQUESTS: &str = "scep_requests_total";
pub const REQUEST_DURATION: &str = "scep_request_duration_seconds";
pub const HSM_DURATION: &str = "scep_hsm_operation_duration_seconds";
pub const HSM_ERRORS: &str = "scep_hsm_operation_errors_total";
pub const HSM_SESSIONS: &str = "scep_hsm_sessions";
pub const STORE_DURATION: &str = "scep_store_command_duration_seconds";
pub const STORE_ERRORS: &str = "scep_store_command_errors_total";
pub const STORE_CLAIMS: &str = "scep_store_claims_total";
pub const STORE_RETRIES: &str = "scep_store_retries_answered_total";
pub const STORE_EVICTED: &str = "scep_store_evicted_total";
pub const STORE_MASTER_CHANGES: &str = "scep_store_master_changes_total";
pub const STORE_UNREPLICATED: &str = "scep_store_unreplicated_writes_total";
pub const STORE_REDIRECTIONS: &str = "scep_store_redirections_total";
pub const CERT_EXPIRY: &str = "scep_cert_expiry_seconds";
pub const LEGACY_CRYPTO: &str = "scep_legacy_crypto_total";
pub const BUILD_INFO: &str = "scep_build_info";
pub const CONFIG_GENERATION: &str = "scep_config_generation";
pub const SHUTTING_DOWN: &str = "scep_shutting_down";
pub const READY: &str = "scep_ready";
pub const READINESS_CHECK: &str = "scep_readiness_check";
pub const ADMISSION_REFUSED: &str = "scep_admission_refused_total";
pub const CA_REQUESTS: &str = "scep_ca_requests_total";
pub const CA_DURATION: &str = "scep_ca_request_duration_seconds";
pub const CA_BREAKER_OPEN: &str = "scep_ca_breaker_open";
pub const CA_IN_FLIGHT: &str = "scep_ca_requests_in_flight";
pub const CHALLENGE_VALIDATIONS: &str = "scep_challenge_validations_total";
pub const CHALLENGE_CALL_DURATION: &str = "scep_challenge_call_duration_seconds";

/// Latency buckets, from half a millisecond (a GetCACaps, a software-key signature) to
/// ten seconds (a stalled HSM or upstream CA). Applied to every `*_seconds` histogram.
pub const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process; later calls return the same
/// handle) and sets the constant gauges. If another recorder was installed first (a test
/// harness), metrics go there and [`render`] shows only what this module set up.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = || {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("BUCKETS is not empty")
        };
        let handle = builder()
            .install_recorder()
            .unwrap_or_else(|_| builder().build_recorder().handle());
        describe();
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        // Bumped by every configuration reload (SIGHUP).
        gauge!(CONFIG_GENERATION).set(1.0);
        gauge!(SHUTTING_DOWN).set(0.0);
        handle
    })
}

/// The text exposition of every metric, with the gauges sampled now (certificate expiry,
/// HSM sessions) brought up to date first.
pub fn render() -> String {
    let handle = install();
    sample();
    handle.render()
}

/// Drains the histograms' internal buffers. `main` calls it every few seconds, so that
/// memory stays flat between scrapes.
pub fn run_upkeep() {
    install().run_upkeep();
}

fn describe() {
    describe_counter!(
        REQUESTS,
        "SCEP requests by operation, message type, outcome, failInfo and HTTP status"
    );
    describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "SCEP request latency by operation and message type"
    );
    describe_histogram!(
        HSM_DURATION,
        metrics::Unit::Seconds,
        "Private-key operation latency by key setting, key label and operation (retries included)"
    );
    describe_counter!(HSM_ERRORS, "Failed private-key operations");
    describe_gauge!(
        HSM_SESSIONS,
        "PKCS#11 sessions of a key's token by state (in_use, idle, max)"
    );
    describe_histogram!(
        STORE_DURATION,
        metrics::Unit::Seconds,
        "Transaction store command latency by backend, command and result"
    );
    describe_counter!(STORE_ERRORS, "Failed or timed-out store commands");
    describe_counter!(
        STORE_CLAIMS,
        "Transaction claims: won (this request issues), lost (answered from the record), conflict"
    );
    describe_counter!(
        STORE_RETRIES,
        "Retried PKCSReq and CertPoll answered with a certificate recorded earlier"
    );
    describe_counter!(
        STORE_EVICTED,
        "Finished transactions dropped before their TTL because the in-process store was full"
    );
    describe_counter!(
        STORE_MASTER_CHANGES,
        "Redis store moved to another node: the master Sentinel names changed (sentinel), the cluster master serving the store's slot changed (cluster), or a fixed endpoint answered READONLY and was connected again (readonly)"
    );
    describe_counter!(
        STORE_UNREPLICATED,
        "Redis writes that fewer replicas than store.replica_acks acknowledged in time (the request gets HTTP 503 for a claim; see README)"
    );
    describe_counter!(
        STORE_REDIRECTIONS,
        "Redis Cluster commands redirected while the store's slot migrates: ask (sent to the new master after ASKING), tryagain (a script whose keys were split, sent again)"
    );
    describe_gauge!(
        CERT_EXPIRY,
        metrics::Unit::Seconds,
        "Seconds until a served certificate expires (negative once expired)"
    );
    describe_counter!(
        LEGACY_CRYPTO,
        "Requests that used legacy cryptography (DES/3DES envelope, SHA-1 signature)"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label");
    describe_gauge!(
        CONFIG_GENERATION,
        "Configuration generation: 1 at start, +1 per successful reload"
    );
    describe_gauge!(SHUTTING_DOWN, "1 once SIGTERM was received (draining)");
    describe_counter!(
        ADMISSION_REFUSED,
        "PKIOperations refused before any work: busy (503) or rate (429)"
    );
    describe_gauge!(READY, "1 if the last /readyz evaluation was ready, else 0");
    describe_gauge!(
        READINESS_CHECK,
        "1 if the named readiness check (store, hsm, ...) passed at the last evaluation"
    );
}

// --- Requests ------------------------------------------------------------------------

/// One HTTP request on a SCEP path. `operation` is the `operation=` parameter as sent
/// (mapped onto the known operations, else `other`); `summary` is the PKIOperation's
/// outcome, `None` for the other operations.
///
/// `outcome` is `success`, `pending`, `failure` (a CertRep FAILURE, with its `fail_info`)
/// or `http_error` (no CertRep: the HTTP `status` says why).
pub fn request(operation: Option<&str>, summary: Option<&Summary>, status: u16, elapsed: Duration) {
    let operation = known_operation(operation);
    let message_type = summary
        .and_then(|s| s.message_type)
        .map_or("", |m| m.name());
    let (outcome, fail_info) = match summary.map(|s| s.outcome) {
        _ if status >= 400 => ("http_error", ""),
        Some("success") | None => ("success", ""),
        Some("pending") => ("pending", ""),
        Some(fail_info) => ("failure", fail_info),
    };
    counter!(
        REQUESTS,
        "operation" => operation,
        "message_type" => message_type,
        "outcome" => outcome,
        "fail_info" => fail_info,
        "status" => status_label(status),
    )
    .increment(1);
    histogram!(REQUEST_DURATION, "operation" => operation, "message_type" => message_type)
        .record(elapsed.as_secs_f64());
}

fn known_operation(operation: Option<&str>) -> &'static str {
    match operation {
        Some("GetCACaps") => "GetCACaps",
        Some("GetCACert") => "GetCACert",
        Some("GetNextCACert") => "GetNextCACert",
        // A POST without operation= is a PKIOperation.
        Some("PKIOperation") | None => "PKIOperation",
        Some(_) => "other",
    }
}

fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        400 => "400",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        500 => "500",
        503 => "503",
        s if s < 400 => "2xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// A request used legacy cryptography: `algorithm` is `des-cbc`, `des-ede3-cbc` (the
/// envelope) or `sha1` (the signature's digest). When this stays at zero for a while, the
/// legacy switches can go off.
pub fn legacy_crypto(algorithm: &'static str) {
    counter!(LEGACY_CRYPTO, "algorithm" => algorithm).increment(1);
}

// --- HSM -----------------------------------------------------------------------------

/// The [`scep_hsm::observe::Observer`] for the key of `setting` (`ra.key`, `ca.key`, …):
/// latency of every sign/decrypt/health, and errors.
///
/// The observer keeps the histogram handle of each series it has seen (a key has a few:
/// one label, an operation per use), so that the three key operations of an enrollment
/// do not each make the recorder build, allocate and hash four labels to find it again
/// (by profile 0.39 % of an enrollment's CPU before, 0.12 % with the handles kept).
pub fn key_observer(setting: &'static str) -> scep_hsm::observe::Observer {
    let series: Mutex<Vec<KeySeries>> = Mutex::default();
    Arc::new(
        move |operation: &str, label: &str, elapsed: Duration, ok: bool| {
            let seen = {
                let series = series.lock().unwrap_or_else(|p| p.into_inner());
                series
                    .iter()
                    .find(|s| s.operation == operation && s.label == label)
                    .map(|s| s.duration.clone())
            };
            let duration = seen.unwrap_or_else(|| {
                let (op, mechanism) = key_operation(operation);
                let duration = histogram!(HSM_DURATION, "key" => setting, "label" => label.to_owned(), "op" => op, "mechanism" => mechanism.to_owned());
                let mut series = series.lock().unwrap_or_else(|p| p.into_inner());
                // The operations are the hsm crate's fixed set; the bound only guards
                // against a label that changes with every call.
                if series.len() < MAX_KEY_SERIES {
                    series.push(KeySeries {
                        operation: operation.to_owned(),
                        label: label.to_owned(),
                        duration: duration.clone(),
                    });
                }
                duration
            });
            duration.record(elapsed.as_secs_f64());
            if !ok {
                let (op, mechanism) = key_operation(operation);
                counter!(HSM_ERRORS, "key" => setting, "label" => label.to_owned(), "op" => op, "mechanism" => mechanism.to_owned()).increment(1);
            }
        },
    )
}

/// The most series one key observer keeps handles for.
const MAX_KEY_SERIES: usize = 16;

/// One series of [`key_observer`]: the operation and label it was called with, and the
/// histogram they name.
struct KeySeries {
    operation: String,
    label: String,
    duration: metrics::Histogram,
}

/// "sign/sha256-rsa-pkcs" → op "sign", mechanism "sha256-rsa-pkcs" (a fixed set, chosen
/// by the hsm crate, never by a client).
fn key_operation(operation: &str) -> (&'static str, &str) {
    let (op, mechanism) = operation.split_once('/').unwrap_or((operation, ""));
    let op = match op {
        "sign" => "sign",
        "decrypt" => "decrypt",
        "health" => "health",
        _ => "other",
    };
    (op, mechanism)
}

/// Session counts of one PKCS#11 key's token, read at each scrape.
pub type SessionSampler = Box<dyn Fn() -> scep_hsm::pkcs11::SessionCounts + Send + Sync>;

/// Registers (or replaces) the session sampler of the key of `setting`.
pub fn hsm_sessions(setting: &'static str, sampler: SessionSampler) {
    samplers()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .sessions
        .insert(setting, sampler);
}

// --- Store ---------------------------------------------------------------------------

/// One store command (`op`: claim, finish, get, …) of `backend`; `ok` false for an error
/// or a timeout.
pub fn store_command(backend: &'static str, op: &'static str, elapsed: Duration, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    histogram!(STORE_DURATION, "backend" => backend, "op" => op, "result" => result)
        .record(elapsed.as_secs_f64());
    if !ok {
        counter!(STORE_ERRORS, "backend" => backend, "op" => op).increment(1);
    }
}

/// A claim's result: `won`, `lost` or `conflict`.
pub fn store_claim(outcome: &'static str) {
    counter!(STORE_CLAIMS, "outcome" => outcome).increment(1);
}

/// A retry (`kind`: pkcsreq, certpoll) answered from the store.
pub fn store_retry_answered(kind: &'static str) {
    counter!(STORE_RETRIES, "kind" => kind).increment(1);
}

/// `n` finished transactions evicted from a full in-process store.
pub fn store_evicted(n: usize) {
    counter!(STORE_EVICTED).increment(n as u64);
}

/// A Redis Cluster command redirected during a slot migration (`kind`: ask, tryagain).
pub fn store_redirected(kind: &'static str) {
    counter!(STORE_REDIRECTIONS, "kind" => kind).increment(1);
}

/// The Redis store moved to another node (`reason`: sentinel, cluster, readonly).
pub fn store_master_changed(reason: &'static str) {
    counter!(STORE_MASTER_CHANGES, "reason" => reason).increment(1);
}

/// A Redis write (`op`) acknowledged by fewer replicas than `store.replica_acks`.
pub fn store_unreplicated(op: &'static str) {
    counter!(STORE_UNREPLICATED, "op" => op).increment(1);
}

// --- Certificates --------------------------------------------------------------------

/// A certificate the gateway serves, for its expiry gauge.
#[derive(Debug, Clone)]
pub struct ServedCertificate {
    /// `ra`, `ra_encryption`, `ca`, `chain`, `next` or `tls`.
    pub role: &'static str,
    /// The subject DN (RFC 4514 text).
    pub subject: String,
    pub not_after: SystemTime,
}

impl ServedCertificate {
    /// `None` for bytes that are not a certificate (checked at load, so not expected).
    pub fn from_der(role: &'static str, der: &[u8]) -> Option<Self> {
        let cert = x509_cert::Certificate::from_der(der).ok()?;
        let tbs = cert.tbs_certificate();
        Some(ServedCertificate {
            role,
            subject: tbs.subject().to_string(),
            not_after: tbs.validity().not_after.to_system_time(),
        })
    }
}

/// Sets the list of served certificates (replacing an earlier one); their gauges are
/// recomputed from notAfter − now at every scrape.
pub fn served_certificates(certificates: Vec<ServedCertificate>) {
    samplers()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .certificates = certificates;
    sample();
}

/// A configuration reload took effect: the generation goes up and the expiry gauges
/// follow the new RA/CA certificates (the TLS certificate belongs to the listener, which
/// a reload does not change).
pub fn config_reloaded(gateway: &crate::service::Gateway) {
    gauge!(CONFIG_GENERATION).increment(1.0);
    let mut samplers = samplers().lock().unwrap_or_else(|p| p.into_inner());
    let tls: Vec<ServedCertificate> = samplers
        .certificates
        .drain(..)
        .filter(|c| c.role == "tls")
        .collect();
    samplers.certificates = gateway_certificates(gateway, &[]);
    samplers.certificates.extend(tls);
    drop(samplers);
    sample();
}

/// The certificates of a gateway (RA, encryption RA, CA and chain, the `[next]`
/// certificates of GetNextCACert) plus the TLS chain.
pub fn gateway_certificates(
    gateway: &crate::service::Gateway,
    tls: &[Arc<[u8]>],
) -> Vec<ServedCertificate> {
    let mut served = Vec::new();
    let mut add = |role, der: &[u8]| served.extend(ServedCertificate::from_der(role, der));
    add("ra", &gateway.ra.signer.certificate);
    if gateway.ra.decrypter.certificate != gateway.ra.signer.certificate {
        add("ra_encryption", &gateway.ra.decrypter.certificate);
    }
    for (i, cert) in gateway.ca.chain().iter().enumerate() {
        add(if i == 0 { "ca" } else { "chain" }, cert);
    }
    for cert in &gateway.next_certificates {
        add("next", cert);
    }
    if let Some(tls_leaf) = tls.first() {
        add("tls", tls_leaf);
    }
    served
}

// --- Readiness -----------------------------------------------------------------------

/// A fresh readiness evaluation (probes run it every few seconds; see
/// [`crate::health`]): `scep_ready` and one `scep_readiness_check` per named check, so
/// that an alert can say which dependency is down.
pub fn readiness(report: &crate::health::Report) {
    gauge!(READY).set(if report.ready() { 1.0 } else { 0.0 });
    for check in &report.checks {
        let ok = if check.result.is_ok() { 1.0 } else { 0.0 };
        gauge!(READINESS_CHECK, "check" => check.name).set(ok);
    }
}

// --- Shutdown ------------------------------------------------------------------------

/// SIGTERM received: the replica is draining.
pub fn shutting_down() {
    gauge!(SHUTTING_DOWN).set(1.0);
}

// --- CAs and challenges ----------------------------------------------------------------

/// One request to a CA (`ca`: its `[[cas]]` name behind the router, `embedded` for the
/// built-in CA without `[[cas]]`): `outcome` is `success`, `pending`, `refused` (a policy
/// answer: CertRep FAILURE) or `unavailable` (an outage: timeout, connection error,
/// garbage). A request the breaker or the in-flight bound kept from the CA is not
/// counted: nothing was sent. Recorded by
/// `ca::member` around each call of the router, and by `enroll` around the embedded
/// CA's direct issuance.
pub fn ca_request(ca: &str, outcome: &'static str, elapsed: Duration) {
    counter!(CA_REQUESTS, "ca" => ca.to_owned(), "outcome" => outcome).increment(1);
    histogram!(CA_DURATION, "ca" => ca.to_owned(), "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// A CA's circuit breaker opened (`true`) or closed (`false`); set to closed when the
/// router is built. Recorded by `ca::member` on every transition.
pub fn ca_breaker(ca: &str, open: bool) {
    gauge!(CA_BREAKER_OPEN, "ca" => ca.to_owned()).set(if open { 1.0 } else { 0.0 });
}

/// Requests in flight to a CA; called with +1 before and −1 after each call.
pub fn ca_in_flight(ca: &str, delta: f64) {
    gauge!(CA_IN_FLIGHT, "ca" => ca.to_owned()).increment(delta);
}

/// A PKIOperation turned away before any work: `busy` (every slot taken, 503) or
/// `rate` (the client address over its rate, 429).
pub fn admission_refused(refusal: crate::http::admission::Refusal) {
    let reason = match refusal {
        crate::http::admission::Refusal::Busy => "busy",
        crate::http::admission::Refusal::Rate => "rate",
    };
    counter!(ADMISSION_REFUSED, "reason" => reason).increment(1);
}

/// One challenge validation: `mode` (static, intune, webhook, none) and `outcome`
/// (`accepted`, `rejected`, `error`). For the challenge validators.
pub fn challenge_validation(mode: &'static str, outcome: &'static str) {
    counter!(CHALLENGE_VALIDATIONS, "mode" => mode, "outcome" => outcome).increment(1);
}

/// One outbound call of a challenge validator, its latency (retries included) and
/// whether it succeeded. `kind`: `intune_token`, `intune_discovery`, `intune_validate`,
/// `intune_notify` (success and failure notifications), `webhook`, `webhook_notify`.
pub fn challenge_call(kind: &'static str, elapsed: Duration, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    histogram!(CHALLENGE_CALL_DURATION, "kind" => kind, "result" => result)
        .record(elapsed.as_secs_f64());
}

// --- Sampled gauges ------------------------------------------------------------------

#[derive(Default)]
struct Samplers {
    certificates: Vec<ServedCertificate>,
    sessions: HashMap<&'static str, SessionSampler>,
}

fn samplers() -> &'static Mutex<Samplers> {
    static SAMPLERS: OnceLock<Mutex<Samplers>> = OnceLock::new();
    SAMPLERS.get_or_init(Default::default)
}

/// Brings the sampled gauges up to date: cheap (a subtraction per certificate, a lock
/// per token pool), so it runs at every scrape rather than on a timer that could lag.
fn sample() {
    let samplers = samplers().lock().unwrap_or_else(|p| p.into_inner());
    let now = SystemTime::now();
    for cert in &samplers.certificates {
        let seconds = match cert.not_after.duration_since(now) {
            Ok(left) => left.as_secs_f64(),
            Err(past) => -past.duration().as_secs_f64(),
        };
        gauge!(CERT_EXPIRY, "role" => cert.role, "subject" => cert.subject.clone()).set(seconds);
    }
    for (setting, sampler) in &samplers.sessions {
        let counts = sampler();
        let set = |state: &'static str, n: usize| {
            gauge!(HSM_SESSIONS, "key" => *setting, "state" => state).set(n as f64)
        };
        set("in_use", counts.in_use);
        set("idle", counts.idle);
        set("max", counts.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_supplied_operations_map_onto_a_fixed_set() {
        assert_eq!(known_operation(Some("GetCACaps")), "GetCACaps");
        assert_eq!(known_operation(None), "PKIOperation");
        assert_eq!(known_operation(Some("../../etc/passwd")), "other");
        assert_eq!(status_label(418), "4xx");
    }

    #[test]
    fn buckets_go_from_half_a_millisecond_to_ten_seconds() {
        assert_eq!(BUCKETS.first(), Some(&0.0005));
        assert_eq!(BUCKETS.last(), Some(&10.0));
        assert!(BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }
}
