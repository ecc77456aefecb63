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
//! requests skip the CA until its back-off ends or an active probe (GetCACaps) is
//! answered; then one request tries it, and its success closes the breaker. Each CA has
//! a timeout and a bound on requests in flight; a CA at its bound counts as unavailable
//! for that request (without opening its breaker),
//! and so does a CA whose timeout would end after the transaction's claim
//! ([`super::AnswerBy`]): its answer could come after the device's retry won the lapsed
//! claim and got a certificate of its own.
//! When every CA of a profile is unavailable the answer is `Error::Unavailable` (HTTP
//! 503: nothing was issued, retry later), or PENDING when the profile sets
//! `queue_when_down` (the device's CertPoll submits the request again).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::task::JoinSet;

use super::member::{Backend, Member, Owned};
use super::profile::{classify, ProfileConfig, Strategy, UsageClass};
use super::upstream;
use super::{AnswerBy, BoxFuture, Ca, IssueOutcome, IssueRequest, Issued, Route};
use crate::cms::signed::CertificateFields;
use crate::csr::CertificationRequest;
use crate::error::{Error, Result};
use crate::store::Store;

#[derive(Debug)]
struct Profile {
    name: String,
    members: Vec<usize>,
    strategy: Strategy,
    class: Option<UsageClass>,
    queue_when_down: bool,
    challenge: Option<String>,
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
                    challenge: p.challenge.clone(),
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
            Ok((index, IssueOutcome::Pending { ticket, .. })) => Ok(IssueOutcome::Pending {
                ticket: RouterTicket {
                    profile: profile.name.clone(),
                    ca: self.members[index].name.clone(),
                    inner: ticket,
                    csr: Vec::new(),
                }
                .encode(),
                ca: self.members[index].name.as_str().into(),
            }),
            // The member's `[[cas]]` name, also for the embedded CA (which calls itself
            // "embedded").
            Ok((index, IssueOutcome::Issued { issued, chain, .. })) => Ok(IssueOutcome::Issued {
                issued,
                chain,
                ca: self.members[index].name.as_str().into(),
            }),
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
                    ca: "".into(),
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

impl Ca for Router {
    /// What the log says when no CA of a profile answered (a refusal before issuance, an
    /// outage of every CA): the router itself. The CA that answered is named by
    /// `IssueOutcome`.
    fn name(&self) -> &str {
        "router"
    }

    fn challenge_for(&self, csr: &CertificationRequest) -> Option<&str> {
        self.select(csr, Route::default()).challenge.as_deref()
    }

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
                answer_by: route.answer_by,
            });
            self.route(profile, owned).await
        })
    }

    fn poll<'a>(
        &'a self,
        ticket: &'a [u8],
        answer_by: AnswerBy,
    ) -> BoxFuture<'a, Result<IssueOutcome>> {
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
                    answer_by,
                });
                return self.route(profile, owned).await;
            }
            let member = self
                .members
                .iter()
                .find(|m| m.name == ticket.ca)
                .ok_or_else(|| Error::NotFound("the CA of this request is gone".into()))?;
            match member.clone().poll(ticket.inner).await? {
                IssueOutcome::Pending { ticket: inner, .. } => Ok(IssueOutcome::Pending {
                    ticket: RouterTicket {
                        profile: ticket.profile,
                        ca: ticket.ca,
                        inner,
                        csr: Vec::new(),
                    }
                    .encode(),
                    ca: member.name.as_str().into(),
                }),
                IssueOutcome::Issued { issued, chain, .. } => Ok(IssueOutcome::Issued {
                    issued,
                    chain,
                    ca: member.name.as_str().into(),
                }),
            }
        })
    }

    /// A ticket without a CA: queued while every CA of its profile was down.
    fn resubmits(&self, ticket: &[u8]) -> bool {
        RouterTicket::decode(ticket).is_ok_and(|t| t.ca.is_empty())
    }

    /// Background polling of a request an upstream CA deferred: that CA's
    /// `poll_interval_secs` and `poll_attempts`. A request queued while every CA was
    /// down is not polled in the background (the device's CertPoll submits it again).
    fn poll_schedule(&self, ticket: &[u8]) -> Option<(std::time::Duration, u32)> {
        let ticket = RouterTicket::decode(ticket).ok()?;
        let member = self.members.iter().find(|m| m.name == ticket.ca)?;
        let upstream = matches!(member.backend, Backend::Upstream(_));
        (upstream && !member.poll_interval.is_zero() && member.poll_attempts > 0)
            .then_some((member.poll_interval, member.poll_attempts))
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

    /// Only the embedded CA can revoke; an upstream's certificate is left to its CA.
    fn revoke_withheld(&self, certificate: &[u8]) -> Result<bool> {
        match &self.embedded {
            Some(ca) => ca.revoke_withheld(certificate),
            None => Ok(false),
        }
    }

    fn revoke_serial(&self, serial: &[u8]) -> Result<bool> {
        match &self.embedded {
            Some(ca) => ca.revoke_serial(serial),
            None => Err(Error::NotFound(
                "no embedded CA: revoke at the upstream CA that issued it".into(),
            )),
        }
    }

    fn crl_issuer(&self) -> Option<&[u8]> {
        self.embedded.as_ref().and_then(|ca| ca.crl_issuer())
    }

    fn adopt_revocations(&self, revoked: &[crate::store::Revocation]) {
        if let Some(ca) = &self.embedded {
            ca.adopt_revocations(revoked);
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
}
