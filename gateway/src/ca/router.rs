//! Profiles and strategies: which CA serves a request, and what happens when it is down.
//!
//! NDES answers to one CA; here each certificate **profile** is served by an ordered list
//! of CAs (embedded or upstream SCEP), and an outage of one is invisible to devices.
//!
//! ## Which profile
//! Like NDES's `SignatureTemplate`/`EncryptionTemplate`/`GeneralPurposeTemplate`
//! registry values, by the keyUsage the CSR requests (its extensionRequest, RFC 2985
//! §5.4.2): digitalSignature without keyEncipherment → the profile with
//! `key_usage = "signature"`; keyEncipherment without digitalSignature → `"encryption"`;
//! both or neither → `"general"`. No profile of that class → the general one → the
//! default one (named "default", else the first). A profile named by the challenge check
//! ([`Route::profile`]) wins over all that. GetCACert's `message` (the CA identifier,
//! RFC 8894 §4.2) selects the profile whose chain is served.
//!
//! ## Which CA of the profile
//! - `failover` (default): in order; the next CA only on an outage (`Error::Unavailable`).
//!   A policy answer (CertRep FAILURE) is final for the request: it is the CA working.
//! - `round-robin`: the starting CA rotates; failover from there.
//! - `hedged` (opt-in): when the first CA has not answered within its recent p95, the
//!   request also goes to the next one; the first answer wins. **Trade-off**: a slow CA
//!   may still issue after the winner did, so one device can get two valid certificates
//!   for one request. The loser's certificate is not dropped silently: it is recorded in
//!   the store (GetCert finds it) and logged as "duplicate issuance by hedging", so that
//!   it can be revoked. Use hedging where latency matters more than a unique certificate
//!   per request.
//!
//! Each CA has a circuit breaker ([`super::breaker`]): consecutive outages open it and
//! requests skip the CA until its back-off ends (then one request tries it) or an active
//! probe (GetCACaps) succeeds. Each CA has a timeout and a bound on requests in flight;
//! a CA at its bound counts as unavailable for that request (without opening its breaker).
//! When every CA of a profile is unavailable the answer is `Error::Unavailable` (HTTP
//! 503: nothing was issued, retry later), or PENDING when the profile sets
//! `queue_when_down` (the device's CertPoll submits the request again).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use x509_cert::ext::pkix::KeyUsages;

use super::breaker::{Breaker, BreakerSettings, LatencyWindow, Permit, Transition};
use super::upstream::{self, CipherPreference, DigestPreference, UpstreamCa};
use super::{BoxFuture, Ca, IssueOutcome, IssueRequest, Issued, Route};
use crate::cms::signed::CertificateFields;
use crate::csr::CertificationRequest;
use crate::error::{Error, Result};
use crate::store::Store;

// ---------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------
// Members: one CA with its breaker, bound and latencies
// ---------------------------------------------------------------------------------

/// A CA the router can send to.
#[derive(Debug)]
pub enum Backend {
    Embedded(Arc<dyn Ca>),
    Upstream(Arc<UpstreamCa>),
}

/// A request as the router keeps it: owned, so that hedged attempts can outlive the
/// device's request.
#[derive(Debug)]
struct Owned {
    csr: CertificationRequest,
    renewing: Option<Vec<u8>>,
}

/// One CA of the router.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    backend: Backend,
    breaker: Breaker,
    permits: Arc<Semaphore>,
    timeout: Duration,
    probe_interval: Duration,
    latency: LatencyWindow,
}

/// Re-opens the trial slot if a trial request is dropped before it tells anything.
struct TrialGuard<'a>(Option<&'a Breaker>);

impl Drop for TrialGuard<'_> {
    fn drop(&mut self) {
        if let Some(breaker) = self.0 {
            breaker.trial_abandoned();
        }
    }
}

impl Member {
    pub fn new(config: &CaEntryConfig, backend: Backend) -> Self {
        Member {
            name: config.name.clone(),
            backend,
            breaker: Breaker::new(BreakerSettings {
                failure_threshold: config.failure_threshold,
                initial_backoff: Duration::from_millis(config.backoff_initial_ms),
                max_backoff: Duration::from_millis(
                    config.backoff_max_ms.max(config.backoff_initial_ms),
                ),
            }),
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            timeout: Duration::from_millis(config.timeout_ms),
            probe_interval: Duration::from_secs(config.probe_interval_secs),
            latency: LatencyWindow::default(),
        }
    }

    /// Sends `request` to this CA, through its breaker, bound and timeout, and feeds the
    /// breaker with the result.
    async fn attempt(self: Arc<Self>, request: Arc<Owned>) -> Result<IssueOutcome> {
        self.guarded(|backend| {
            Box::pin(async move {
                match backend {
                    Backend::Embedded(ca) => {
                        ca.submit(
                            IssueRequest {
                                csr: &request.csr,
                                renewing: request.renewing.as_deref(),
                            },
                            Route::default(),
                        )
                        .await
                    }
                    Backend::Upstream(ca) => ca.enroll(&request.csr).await,
                }
            })
        })
        .await
    }

    /// Asks this CA about a deferred request.
    async fn poll(self: Arc<Self>, ticket: Vec<u8>) -> Result<IssueOutcome> {
        self.guarded(|backend| {
            Box::pin(async move {
                match backend {
                    Backend::Embedded(ca) => ca.poll(&ticket).await,
                    Backend::Upstream(ca) => ca.poll_ticket(&ticket).await,
                }
            })
        })
        .await
    }

    async fn guarded<'a, F>(&'a self, call: F) -> Result<IssueOutcome>
    where
        F: FnOnce(&'a Backend) -> BoxFuture<'a, Result<IssueOutcome>>,
    {
        let permit = self.breaker.allow();
        if permit == Permit::Refused {
            return Err(Error::Unavailable(format!(
                "CA {}: circuit breaker open",
                self.name
            )));
        }
        let mut trial = TrialGuard((permit == Permit::Trial).then_some(&self.breaker));
        let Ok(_slot) = self.permits.clone().try_acquire_owned() else {
            return Err(Error::Unavailable(format!(
                "CA {}: max_in_flight requests already in flight",
                self.name
            )));
        };
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, call(&self.backend))
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(format!(
                    "CA {}: no answer within {} ms",
                    self.name,
                    self.timeout.as_millis()
                )))
            });
        trial.0 = None;
        match &result {
            Err(e @ Error::Unavailable(_)) => self.outage(e),
            _ => {
                self.latency.record(started.elapsed());
                self.answered("a request");
            }
        }
        result
    }

    fn outage(&self, error: &Error) {
        tracing::info!(ca = %self.name, error = %error, "CA unavailable");
        if let Some(Transition::Opened { backoff }) = self.breaker.failure() {
            tracing::warn!(ca = %self.name, backoff_ms = backoff.as_millis() as u64, error = %error, "circuit breaker opened: CA unavailable, requests go to the next CA");
        }
    }

    fn answered(&self, by: &str) {
        if let Some(Transition::Closed) = self.breaker.success() {
            tracing::info!(ca = %self.name, by, "circuit breaker closed: CA answers again");
        }
    }

    /// Up for readiness: its breaker is not open and, for an upstream, its chain has
    /// been learnt (GetCACert must be able to serve it).
    fn is_up(&self) -> bool {
        self.breaker.is_healthy()
            && match &self.backend {
                Backend::Embedded(_) => true,
                Backend::Upstream(ca) => !ca.current_chain().is_empty(),
            }
    }

    /// How long a hedged request waits for this CA before asking the next one.
    fn hedge_delay(&self) -> Duration {
        self.latency.p95().unwrap_or(self.timeout / 2)
    }

    /// The chain of this CA as known now.
    fn chain(&self) -> Vec<Arc<[u8]>> {
        match &self.backend {
            Backend::Embedded(ca) => ca.chain().to_vec(),
            Backend::Upstream(ca) => ca.current_chain(),
        }
    }

    /// The active probe loop of an upstream CA: GetCACaps (and GetCACert when due) every
    /// `probe_interval`. An answer closes the breaker; an outage counts like a failed
    /// request. A CA unreachable at start opens at once.
    async fn probe_forever(self: Arc<Self>) {
        let Backend::Upstream(ca) = &self.backend else {
            return;
        };
        let mut first = true;
        loop {
            let result = tokio::time::timeout(self.timeout, ca.probe())
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Unavailable(format!(
                        "CA {}: probe not answered within {} ms",
                        self.name,
                        self.timeout.as_millis()
                    )))
                });
            match result {
                Ok(()) => self.answered("the probe"),
                Err(e) if first => {
                    tracing::warn!(ca = %self.name, error = %e, "CA unreachable at start");
                    if let Some(Transition::Opened { backoff }) = self.breaker.force_open() {
                        tracing::warn!(ca = %self.name, backoff_ms = backoff.as_millis() as u64, "circuit breaker opened: CA unavailable, requests go to the next CA");
                    }
                }
                Err(e) => self.outage(&e),
            }
            first = false;
            tokio::time::sleep(self.probe_interval).await;
        }
    }
}

// ---------------------------------------------------------------------------------
// The router
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct Profile {
    name: String,
    members: Vec<usize>,
    strategy: Strategy,
    class: Option<UsageClass>,
    queue_when_down: bool,
    next: AtomicUsize,
}

/// The CA the pipeline sees when `[[cas]]` is configured.
#[derive(Debug)]
pub struct Router {
    members: Vec<Arc<Member>>,
    profiles: Vec<Profile>,
    default: usize,
    /// Where the loser of a hedged request is recorded.
    store: Arc<dyn Store>,
    /// The embedded CA, if one is a member: GetCRL, renewals, [`Ca::chain`].
    embedded: Option<Arc<dyn Ca>>,
}

impl Router {
    /// Assembles the router; `members` in `[[cas]]` order. Call [`Router::start`] inside
    /// the runtime to begin probing.
    pub fn new(
        members: Vec<Member>,
        profiles: &[ProfileConfig],
        store: Arc<dyn Store>,
    ) -> Result<Self, String> {
        let members: Vec<Arc<Member>> = members.into_iter().map(Arc::new).collect();
        let index = |name: &str| {
            members
                .iter()
                .position(|m| m.name == name)
                .ok_or_else(|| format!("unknown CA {name:?}"))
        };
        let profiles = profiles
            .iter()
            .map(|p| {
                Ok(Profile {
                    name: p.name.clone(),
                    members: p
                        .cas
                        .iter()
                        .map(|c| index(c))
                        .collect::<Result<_, String>>()?,
                    strategy: p.strategy,
                    class: p.key_usage,
                    queue_when_down: p.queue_when_down,
                    next: AtomicUsize::new(0),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if profiles.is_empty() {
            return Err("no profile".into());
        }
        let default = profiles
            .iter()
            .position(|p| p.name == "default")
            .unwrap_or(0);
        let embedded = members.iter().find_map(|m| match &m.backend {
            Backend::Embedded(ca) => Some(ca.clone()),
            Backend::Upstream(_) => None,
        });
        Ok(Router {
            members,
            profiles,
            default,
            store,
            embedded,
        })
    }

    /// Starts the probe loop of every upstream CA (the first probe learns its chain).
    pub fn start(&self) {
        for member in &self.members {
            if matches!(member.backend, Backend::Upstream(_)) {
                tokio::spawn(member.clone().probe_forever());
            }
        }
    }

    /// The profile for a request: named by the route, else by requested keyUsage.
    fn select(&self, csr: &CertificationRequest, route: Route<'_>) -> &Profile {
        if let Some(named) = route
            .profile
            .and_then(|n| self.profiles.iter().find(|p| p.name == n))
        {
            return named;
        }
        let class = classify(csr);
        self.profiles
            .iter()
            .find(|p| p.class == Some(class))
            .or_else(|| {
                self.profiles
                    .iter()
                    .find(|p| p.class == Some(UsageClass::General))
            })
            .unwrap_or(&self.profiles[self.default])
    }

    fn profile_named(&self, name: Option<&str>) -> &Profile {
        name.and_then(|n| self.profiles.iter().find(|p| p.name == n))
            .unwrap_or(&self.profiles[self.default])
    }

    /// The order in which the profile's CAs are tried.
    fn order(&self, profile: &Profile) -> Vec<usize> {
        let mut order = profile.members.clone();
        if profile.strategy == Strategy::RoundRobin && !order.is_empty() {
            let start = profile.next.fetch_add(1, Ordering::Relaxed) % order.len();
            order.rotate_left(start);
        }
        order
    }

    async fn sequential(
        &self,
        profile: &Profile,
        request: Arc<Owned>,
    ) -> Result<(usize, IssueOutcome)> {
        let mut outages = Vec::new();
        for index in self.order(profile) {
            match self.members[index].clone().attempt(request.clone()).await {
                Ok(outcome) => return Ok((index, outcome)),
                Err(e @ Error::Unavailable(_)) => outages.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        Err(all_down(profile, &outages))
    }

    async fn hedged(
        &self,
        profile: &Profile,
        request: Arc<Owned>,
    ) -> Result<(usize, IssueOutcome)> {
        let order = self.order(profile);
        let mut tasks = JoinSet::new();
        let mut launched = 0;
        let mut outages = Vec::new();
        let launch = |tasks: &mut JoinSet<_>, index: usize| {
            let member = self.members[index].clone();
            let request = request.clone();
            tasks.spawn(async move { (index, member.attempt(request).await) });
        };
        loop {
            if tasks.is_empty() {
                let Some(&index) = order.get(launched) else {
                    return Err(all_down(profile, &outages));
                };
                launch(&mut tasks, index);
                launched += 1;
                continue;
            }
            let delay = self.members[order[launched - 1]].hedge_delay();
            tokio::select! {
                joined = tasks.join_next() => {
                    let (index, result) = match joined {
                        Some(Ok(done)) => done,
                        Some(Err(e)) => {
                            outages.push(format!("attempt failed: {e}"));
                            continue;
                        }
                        None => continue,
                    };
                    match result {
                        Err(e @ Error::Unavailable(_)) => outages.push(e.to_string()),
                        other => {
                            self.record_losers(tasks);
                            return other.map(|outcome| (index, outcome));
                        }
                    }
                }
                () = tokio::time::sleep(delay), if launched < order.len() => {
                    let index = order[launched];
                    tracing::debug!(profile = %profile.name, ca = %self.members[index].name, delay_ms = delay.as_millis() as u64, "hedging: asking the next CA too");
                    launch(&mut tasks, index);
                    launched += 1;
                }
            }
        }
    }

    /// Lets the losers of a hedged request finish in the background; a certificate one
    /// of them issues is recorded (GetCert) and logged, never silently dropped.
    fn record_losers(&self, mut tasks: JoinSet<(usize, Result<IssueOutcome>)>) {
        if tasks.is_empty() {
            return;
        }
        let store = self.store.clone();
        let members = self.members.clone();
        tokio::spawn(async move {
            while let Some(joined) = tasks.join_next().await {
                let Ok((index, Ok(IssueOutcome::Issued { issued, .. }))) = joined else {
                    continue;
                };
                let ca = &members[index].name;
                tracing::warn!(ca = %ca, serial = %hex::encode(&issued.serial), "duplicate issuance by hedging: a slower CA issued a second certificate for the same request; it is recorded for GetCert and should be revoked if unwanted");
                match CertificateFields::parse(&issued.certificate) {
                    Ok(fields) => {
                        if let Err(e) = store
                            .put_certificate(
                                fields.issuer,
                                fields.serial,
                                issued.certificate.clone(),
                            )
                            .await
                        {
                            tracing::error!(ca = %ca, error = %e, "the duplicate certificate could not be recorded");
                        }
                    }
                    Err(e) => {
                        tracing::error!(ca = %ca, error = %e, "the duplicate certificate is unreadable")
                    }
                }
            }
        });
    }

    async fn route(&self, profile: &Profile, request: Arc<Owned>) -> Result<IssueOutcome> {
        let result = match profile.strategy {
            Strategy::Failover | Strategy::RoundRobin => {
                self.sequential(profile, request.clone()).await
            }
            Strategy::Hedged => self.hedged(profile, request.clone()).await,
        };
        match result {
            Ok((index, IssueOutcome::Pending { ticket })) => Ok(IssueOutcome::Pending {
                ticket: RouterTicket {
                    profile: profile.name.clone(),
                    ca: self.members[index].name.clone(),
                    inner: ticket,
                    csr: Vec::new(),
                }
                .encode(),
            }),
            Ok((_, issued)) => Ok(issued),
            Err(Error::Unavailable(reason))
                if profile.queue_when_down && request.renewing.is_none() =>
            {
                tracing::warn!(profile = %profile.name, reason = %reason, "every CA of the profile is down: the request is queued (PENDING)");
                Ok(IssueOutcome::Pending {
                    ticket: RouterTicket {
                        profile: profile.name.clone(),
                        ca: String::new(),
                        inner: Vec::new(),
                        csr: request.csr.as_der().to_vec(),
                    }
                    .encode(),
                })
            }
            Err(e) => Err(e),
        }
    }
}

fn all_down(profile: &Profile, outages: &[String]) -> Error {
    Error::Unavailable(format!(
        "profile {}: no CA could take the request ({})",
        profile.name,
        outages.join("; ")
    ))
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

impl Ca for Router {
    fn issue<'a>(&'a self, request: IssueRequest<'a>) -> BoxFuture<'a, Result<Issued>> {
        Box::pin(async move {
            match self.submit(request, Route::default()).await? {
                IssueOutcome::Issued { issued, .. } => Ok(issued),
                IssueOutcome::Pending { .. } => Err(Error::Unavailable(
                    "the request was deferred (PENDING)".into(),
                )),
            }
        })
    }

    fn submit<'a>(
        &'a self,
        request: IssueRequest<'a>,
        route: Route<'a>,
    ) -> BoxFuture<'a, Result<IssueOutcome>> {
        Box::pin(async move {
            let profile = self.select(request.csr, route);
            tracing::debug!(profile = %profile.name, "CA profile chosen");
            let owned = Arc::new(Owned {
                csr: request.csr.clone(),
                renewing: request.renewing.map(<[u8]>::to_vec),
            });
            self.route(profile, owned).await
        })
    }

    fn poll<'a>(&'a self, ticket: &'a [u8]) -> BoxFuture<'a, Result<IssueOutcome>> {
        Box::pin(async move {
            let ticket = RouterTicket::decode(ticket)?;
            let profile = self
                .profiles
                .iter()
                .find(|p| p.name == ticket.profile)
                .ok_or_else(|| Error::NotFound("the profile of this request is gone".into()))?;
            if ticket.ca.is_empty() {
                // Queued while every CA was down: submit it now. (The challenge was
                // checked when it was queued.) Still down: still PENDING.
                let csr = CertificationRequest::from_der(&ticket.csr)?;
                let owned = Arc::new(Owned {
                    csr,
                    renewing: None,
                });
                return self.route(profile, owned).await;
            }
            let member = self
                .members
                .iter()
                .find(|m| m.name == ticket.ca)
                .ok_or_else(|| Error::NotFound("the CA of this request is gone".into()))?;
            match member.clone().poll(ticket.inner).await? {
                IssueOutcome::Pending { ticket: inner } => Ok(IssueOutcome::Pending {
                    ticket: RouterTicket {
                        profile: ticket.profile,
                        ca: ticket.ca,
                        inner,
                        csr: Vec::new(),
                    }
                    .encode(),
                }),
                issued => Ok(issued),
            }
        })
    }

    /// The embedded CA's chain (static); upstream chains are learnt at run time and
    /// come from [`Ca::ca_chain`] and [`Ca::chain_of`].
    fn chain(&self) -> &[Arc<[u8]>] {
        self.embedded.as_ref().map_or(&[], |ca| ca.chain())
    }

    fn chain_of(&self, certificate: &[u8]) -> Vec<Arc<[u8]>> {
        let Ok(cert) = CertificateFields::parse(certificate) else {
            return Vec::new();
        };
        self.members
            .iter()
            .map(|m| m.chain())
            .find(|chain| {
                chain
                    .first()
                    .and_then(|ca| CertificateFields::parse(ca).ok())
                    .is_some_and(|ca| ca.subject == cert.issuer)
            })
            .unwrap_or_default()
    }

    /// The chains of every CA of the profile the identifier names (else the default
    /// profile's), deduplicated: a device may get its certificate from any of them.
    fn ca_chain(&self, identifier: Option<&str>) -> Option<Vec<Arc<[u8]>>> {
        let profile = self.profile_named(identifier);
        let mut all: Vec<Arc<[u8]>> = Vec::new();
        for &index in &profile.members {
            for cert in self.members[index].chain() {
                if !all.contains(&cert) {
                    all.push(cert);
                }
            }
        }
        Some(all)
    }

    fn crl<'a>(&'a self) -> BoxFuture<'a, Result<Vec<u8>>> {
        match &self.embedded {
            Some(ca) => ca.crl(),
            None => Box::pin(std::future::ready(Err(Error::NotFound(
                "no embedded CA: CRLs are published by the upstream CAs".into(),
            )))),
        }
    }

    fn issued_and_valid(&self, certificate: &[u8]) -> bool {
        self.embedded
            .as_ref()
            .is_some_and(|ca| ca.issued_and_valid(certificate))
    }

    /// Not ready when a profile has no CA that is up (every breaker open).
    fn health(&self) -> std::result::Result<(), String> {
        let mut down = Vec::new();
        for profile in &self.profiles {
            if !profile.members.iter().any(|&i| self.members[i].is_up()) {
                let states: Vec<String> = profile
                    .members
                    .iter()
                    .map(|&i| {
                        let m = &self.members[i];
                        let state = match m.breaker.describe() {
                            "closed" => "not yet reached",
                            other => other,
                        };
                        format!("{} {state}", m.name)
                    })
                    .collect();
                down.push(format!(
                    "profile {}: no CA available ({})",
                    profile.name,
                    states.join(", ")
                ));
            }
        }
        if down.is_empty() {
            Ok(())
        } else {
            Err(down.join("; "))
        }
    }
}

/// What the store keeps for a deferred request: the profile, the CA that answered
/// PENDING and its own ticket, or (queued while all were down) no CA and the CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouterTicket {
    profile: String,
    ca: String,
    inner: Vec<u8>,
    csr: Vec<u8>,
}

impl RouterTicket {
    const VERSION: u8 = 1;

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![Self::VERSION];
        for field in [
            self.profile.as_bytes(),
            self.ca.as_bytes(),
            &self.inner,
            &self.csr,
        ] {
            upstream::put_field(&mut out, field);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = || Error::NotFound("a pending record we cannot read".into());
        let (version, mut rest) = bytes.split_first().ok_or_else(bad)?;
        if *version != Self::VERSION {
            return Err(bad());
        }
        let mut fields = Vec::with_capacity(4);
        for _ in 0..4 {
            let (field, tail) = upstream::take_field(rest).ok_or_else(bad)?;
            fields.push(field.to_vec());
            rest = tail;
        }
        let mut fields = fields.into_iter();
        let mut next = || fields.next().ok_or_else(bad);
        let profile = String::from_utf8(next()?).map_err(|_| bad())?;
        let ca = String::from_utf8(next()?).map_err(|_| bad())?;
        Ok(RouterTicket {
            profile,
            ca,
            inner: next()?,
            csr: next()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_router_ticket_round_trips() {
        let t = RouterTicket {
            profile: "p".into(),
            ca: "ca-a".into(),
            inner: vec![1, 2],
            csr: vec![],
        };
        assert_eq!(RouterTicket::decode(&t.encode()).unwrap(), t);
        assert!(RouterTicket::decode(&[2]).is_err());
        assert!(RouterTicket::decode(&t.encode()[..5]).is_err());
    }

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
