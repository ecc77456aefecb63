//! An upstream SCEP CA reached as a Registration Authority: NDES/AD CS, EJBCA, OpenXPKI,
//! step-ca in RA mode, micromdm's scepserver, or another gateway.
//!
//! The gateway is then a SCEP *client* of the upstream (RFC 8894 §2.3, §3.3): it wraps
//! the device's PKCS#10 request, byte for byte, in a new PKCSReq signed by the gateway's
//! RA credential and enveloped to the upstream's RA (or CA) certificate, sends it, and
//! reads the CertRep with [`Requester::read_trusted_reply`]: the reply must be signed by
//! a certificate learnt with GetCACert (§4.2), never by one it merely carries, and the
//! issued certificate must chain to the learnt CA.
//!
//! ## What the device's challenge has to do with it
//! The device's CSR is forwarded unchanged: it is signed with the device's key, so the
//! gateway cannot replace its challengePassword without breaking the proof of possession
//! (RFC 2986 §3). An upstream that checks the challenge (scepserver, EJBCA, NDES in
//! password mode) therefore sees the *device's* challenge, which must be valid there too
//! (give both the same static secret, or configure the upstream to trust the RA's
//! signature instead).
//!
//! ## Outcomes (RFC 8894 §3.3.2)
//! - SUCCESS: the certificate for the CSR's key, and the learnt chain.
//! - FAILURE: `Error::Refused`, a policy answer, final: the router does not fail over.
//! - PENDING: [`IssueOutcome::Pending`] with a ticket (the upstream transactionID and
//!   the IssuerAndSubject of RFC 8894 §3.3.3) from which [`UpstreamCa::poll_ticket`]
//!   builds a CertPoll later.
//! - Anything else (timeout, connection refused, HTTP status other than 200, a body that
//!   is not a CertRep, a bad signature, an undecryptable envelope, a certificate not
//!   from the learnt CA): `Error::Unavailable`, an outage, and a reason to fail over.
//!   Except an answer that the RA key cannot open because the key is unavailable (an
//!   HSM outage): the CA may have issued, so the answer is kept in a PENDING ticket and
//!   read on the next poll (failing over would issue a second certificate).
//! - A request sent whose answer was lost (a timeout or a connection closed after the
//!   connection was made): the CA may have issued. [`LostAnswer::FailOver`] (default)
//!   treats it as an outage; [`LostAnswer::Poll`] keeps it PENDING with the CertPoll
//!   ticket of this CA, so the certificate, if any, is fetched rather than issued again.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;

use super::certificate::ParsedCertificate;
use super::{AnswerBy, BoxFuture, Ca, IssueOutcome, IssueRequest, Issued, Route};
use crate::cms::algorithms::{ContentCipher, Digest};
use crate::cms::ber;
use crate::cms::signed::CertificateFields;
use crate::csr::CertificationRequest;
use crate::error::{Error, Result};
use crate::ra::RaKeys;
use crate::scep::client::{self, MessageSpec, Reply, Requester};
use crate::scep::message::{MessageType, Nonce, PkiStatus, TransactionId};

/// The largest upstream answer read (a CertRep or GetCACert is a few KiB).
const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// The content cipher asked of an upstream when it offers it (GetCACaps `AES`/`DES3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CipherPreference {
    #[default]
    Aes256,
    Aes128,
    /// Only for upstreams without AES; needs `legacy_des`.
    Des3,
}

/// The digest asked of an upstream when it offers it (`SHA-256`, `SHA-512`). SHA-1 is
/// never used for signing (RFC 8894 §3.5.2; aws-lc-rs does not sign RSA with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DigestPreference {
    #[default]
    Sha256,
    Sha512,
}

/// What to do when a PKCSReq reached an upstream CA but its answer did not come back (a
/// timeout or a connection closed while waiting). The CA may have issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LostAnswer {
    /// Treat it as an outage and try the profile's next CA at once: the device is served
    /// now, but if this CA had issued, the transaction has two certificates (one the
    /// device never got). For CAs that cannot answer CertPoll (micromdm scepserver).
    #[default]
    FailOver,
    /// Keep the request PENDING on this CA: the device's CertPoll (and the background
    /// poll) sends CertPoll there (RFC 8894 §3.3.3), which returns the certificate if it
    /// was issued, so a transaction never gets two. For CAs that answer CertPoll for a
    /// request they have issued (NDES/AD CS, EJBCA, another gateway).
    Poll,
}

/// What one upstream CA is and how to talk to it.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub name: String,
    /// The SCEP URL, e.g. `https://ndes.example/certsrv/mscep/mscep.dll`.
    pub url: reqwest::Url,
    /// Bound on each exchange with the upstream (connect, send, answer).
    pub timeout: Duration,
    /// Accept DES/3DES-enveloped replies (micromdm scepserver answers in DES whatever
    /// it is asked), and send 3DES to an upstream without AES.
    pub legacy_des: bool,
    pub cipher: CipherPreference,
    pub digest: DigestPreference,
    /// How often GetCACert is fetched again (a CA rollover is picked up without restart).
    pub refresh: Duration,
    pub lost_answer: LostAnswer,
}

/// Why a PKIOperation got no usable answer, as far as the transport can tell.
enum Unanswered {
    /// It never reached the CA, or the CA refused it at the HTTP level: nothing issued.
    Outage(Error),
    /// It may have reached the CA, which may have acted on it, but no answer came back
    /// (a timeout or a connection lost while waiting): see [`LostAnswer`].
    Lost(Error),
}

impl From<Unanswered> for Error {
    fn from(unanswered: Unanswered) -> Error {
        match unanswered {
            Unanswered::Outage(e) | Unanswered::Lost(e) => e,
        }
    }
}

/// What GetCACaps said (RFC 8894 §3.5.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamCaps {
    pub post: bool,
    pub aes: bool,
    pub des3: bool,
    pub sha256: bool,
    pub sha512: bool,
}

impl UpstreamCaps {
    /// Keywords are case-insensitive; `SCEPStandard` implies AES, POSTPKIOperation and
    /// SHA-256; unknown keywords are ignored.
    pub fn parse(body: &str) -> Self {
        let mut caps = UpstreamCaps::default();
        for keyword in body.lines().map(str::trim) {
            match keyword.to_ascii_lowercase().as_str() {
                "postpkioperation" => caps.post = true,
                "aes" => caps.aes = true,
                "des3" => caps.des3 = true,
                "sha-256" => caps.sha256 = true,
                "sha-512" => caps.sha512 = true,
                "scepstandard" => {
                    caps.aes = true;
                    caps.post = true;
                    caps.sha256 = true;
                }
                _ => {}
            }
        }
        caps
    }
}

/// What GetCACaps and GetCACert taught us about the upstream.
#[derive(Debug)]
pub struct Learnt {
    pub caps: UpstreamCaps,
    /// Every certificate of GetCACert: the only signers a CertRep may have.
    pub certificates: Vec<Vec<u8>>,
    /// The certificate requests are enveloped to (its RA encryption certificate, else
    /// its CA certificate: `client::encryption_certificate`).
    pub recipient: Vec<u8>,
    /// The CA certificates (basicConstraints cA), as served: the chain devices get.
    pub chain: Vec<Arc<[u8]>>,
    pub fetched: Instant,
}

/// An upstream SCEP CA.
#[derive(Debug)]
pub struct UpstreamCa {
    settings: UpstreamSettings,
    http: reqwest::Client,
    /// The gateway's RA signing credential: it signs our requests, and the upstream
    /// envelopes its replies to its certificate.
    requester: Requester,
    /// Never held across an await.
    learnt: RwLock<Option<Arc<Learnt>>>,
}

impl UpstreamCa {
    /// An upstream CA; nothing is fetched yet (see [`UpstreamCa::probe`]).
    ///
    /// The upstream encrypts its reply to the certificate that signed the request, so
    /// the RA key that signs must also decrypt: a split signing/encryption RA cannot
    /// front an upstream CA (refused here).
    pub fn new(settings: UpstreamSettings, ra: &RaKeys) -> Result<Self, String> {
        if ra.signer.certificate != ra.decrypter.certificate {
            return Err(
                "an upstream CA envelopes its replies to the RA certificate that signed the request: use one RA certificate for signing and decryption".into(),
            );
        }
        if !ra.signer.key.algorithm().is_rsa() {
            return Err("the RA key must be RSA to receive upstream replies".into());
        }
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(UpstreamCa {
            requester: Requester::with_certificate(
                ra.signer.key.clone(),
                ra.signer.certificate.clone(),
            ),
            settings,
            http,
            learnt: RwLock::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    fn current(&self) -> Option<Arc<Learnt>> {
        self.learnt
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The learnt CA chain; empty until GetCACert has been answered once.
    pub fn current_chain(&self) -> Vec<Arc<[u8]>> {
        self.current().map(|l| l.chain.clone()).unwrap_or_default()
    }

    /// The active health probe: GetCACaps, and GetCACert when never fetched or older
    /// than `refresh`. An answer closes the breaker; an error is an outage.
    pub async fn probe(&self) -> Result<()> {
        let stale = self
            .current()
            .is_none_or(|l| l.fetched.elapsed() >= self.settings.refresh);
        if stale {
            self.refresh().await.map(|_| ())
        } else {
            self.capabilities().await.map(|_| ())
        }
    }

    /// GetCACaps and GetCACert, then remembers what they said.
    pub async fn refresh(&self) -> Result<Arc<Learnt>> {
        let caps = self.capabilities().await?;
        let body = self.get(&[("operation", "GetCACert")]).await?;
        let certificates = client::ca_certificates(&body)
            .map_err(|e| self.outage(format_args!("GetCACert: {e}")))?;
        let recipient = client::encryption_certificate(&certificates)
            .ok_or_else(|| self.outage("GetCACert: no certificate"))?
            .to_vec();
        let chain: Vec<Arc<[u8]>> = certificates
            .iter()
            .filter(|c| is_ca(c))
            .map(|c| Arc::from(&c[..]))
            .collect();
        if chain.is_empty() {
            return Err(self.outage("GetCACert: no CA certificate"));
        }
        let learnt = Arc::new(Learnt {
            caps,
            certificates,
            recipient,
            chain,
            fetched: Instant::now(),
        });
        let mut slot = self
            .learnt
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.as_ref().is_some_and(|old| old.chain != learnt.chain) {
            tracing::warn!(ca = %self.settings.name, "the upstream CA chain changed (GetCACert)");
        }
        *slot = Some(learnt.clone());
        Ok(learnt)
    }

    async fn capabilities(&self) -> Result<UpstreamCaps> {
        let body = self.get(&[("operation", "GetCACaps")]).await?;
        Ok(UpstreamCaps::parse(&String::from_utf8_lossy(&body)))
    }

    async fn learnt(&self) -> Result<Arc<Learnt>> {
        match self.current() {
            Some(learnt) => Ok(learnt),
            None => self.refresh().await,
        }
    }

    /// PKCSReq with the device's CSR, forwarded as received. `answer_lost` is set when the
    /// answer was lost and the request kept PENDING ([`LostAnswer::Poll`]).
    pub(super) async fn enroll(&self, csr: &CertificationRequest) -> super::member::Attempted {
        let mut answer_lost = false;
        let result = self.enroll_inner(csr, &mut answer_lost).await;
        super::member::Attempted {
            result,
            answer_lost,
        }
    }

    async fn enroll_inner(
        &self,
        csr: &CertificationRequest,
        answer_lost: &mut bool,
    ) -> Result<IssueOutcome> {
        let learnt = self.learnt().await?;
        let spec = self.spec(&learnt, MessageType::PkcsReq, random_transaction_id()?);
        let issuer = learnt.chain.first().map(|c| c.to_vec()).unwrap_or_default();
        let mut poll = PollTicket {
            transaction_id: spec.transaction_id.as_str().to_owned(),
            issuer_and_subject: issuer_and_subject(&issuer, csr.subject_der()),
            spki: csr.public_key_info().to_vec(),
            unread: None,
        };
        let body = match self
            .send_message(&learnt, &spec, csr.as_der().to_vec())
            .await
        {
            Ok(body) => body,
            Err(Unanswered::Lost(e)) if self.settings.lost_answer == LostAnswer::Poll => {
                tracing::warn!(ca = %self.settings.name, error = %e, "the request reached the CA but its answer was lost: kept PENDING on this CA (lost_answer = \"poll\"); CertPoll asks it");
                *answer_lost = true;
                return Ok(IssueOutcome::Pending {
                    ticket: poll.encode(),
                    ca: self.settings.name.as_str().into(),
                });
            }
            Err(unanswered) => return Err(unanswered.into()),
        };
        let Some(reply) = self.read(&learnt, &spec, &body).await? else {
            // The CA answered (it may have issued) but the RA key cannot open the answer
            // now (an HSM outage). Failing over or failing the request would let the
            // device's retry issue a second certificate: keep the answer, as PENDING,
            // and read it when the device asks again (`poll_ticket`).
            tracing::warn!(ca = %self.settings.name, "the CA answered while the RA key is unavailable: answer kept, the device gets PENDING");
            poll.unread = Some((body, spec.sender_nonce.0.to_vec()));
            return Ok(IssueOutcome::Pending {
                ticket: poll.encode(),
                ca: self.settings.name.as_str().into(),
            });
        };
        let spki = poll.spki.clone();
        self.outcome(&learnt, reply, &spki, poll)
    }

    /// CertPoll (RFC 8894 §3.3.3) for a request the upstream answered PENDING.
    pub async fn poll_ticket(&self, ticket: &[u8]) -> Result<IssueOutcome> {
        let mut poll = PollTicket::decode(ticket)?;
        let learnt = self.learnt().await?;
        let id = TransactionId::new(poll.transaction_id.clone())
            .ok_or_else(|| Error::Unavailable("a pending ticket we cannot read".into()))?;
        // An answer kept unread (see `enroll`): read it now, without asking the CA.
        if let Some((body, nonce)) = poll.unread.take() {
            let mut spec = self.spec(&learnt, MessageType::PkcsReq, id);
            spec.sender_nonce = Nonce(
                nonce
                    .try_into()
                    .map_err(|_| Error::Unavailable("a pending ticket we cannot read".into()))?,
            );
            let reply = self.read(&learnt, &spec, &body).await?.ok_or_else(|| {
                Error::Unavailable("the RA key is still unavailable to read the CA's answer".into())
            })?;
            let spki = poll.spki.clone();
            return self.outcome(&learnt, reply, &spki, poll);
        }
        let spec = self.spec(&learnt, MessageType::CertPoll, id);
        let reply = self
            .exchange(&learnt, spec, poll.issuer_and_subject.clone())
            .await?;
        let spki = poll.spki.clone();
        self.outcome(&learnt, reply, &spki, poll)
    }

    fn spec(&self, learnt: &Learnt, message_type: MessageType, id: TransactionId) -> MessageSpec {
        let caps = learnt.caps;
        let s = &self.settings;
        let digest = match s.digest {
            DigestPreference::Sha512 if caps.sha512 => Digest::Sha512,
            _ if caps.sha256 || !caps.sha512 => Digest::Sha256,
            _ => Digest::Sha512,
        };
        let aes = match s.cipher {
            CipherPreference::Aes128 => ContentCipher::Aes128Cbc,
            _ => ContentCipher::Aes256Cbc,
        };
        let cipher = match s.cipher {
            CipherPreference::Des3 if caps.des3 && s.legacy_des => ContentCipher::DesEde3Cbc,
            _ if caps.aes => aes,
            // RFC 8894 §3.5.2: without AES in GetCACaps, only 3DES is left.
            _ if caps.des3 && s.legacy_des => ContentCipher::DesEde3Cbc,
            _ => aes,
        };
        MessageSpec {
            message_type,
            transaction_id: id,
            sender_nonce: Nonce::random(),
            digest,
            cipher,
        }
    }

    /// Builds, sends and reads one pkiMessage. The RA key's work (signing; opening the
    /// reply) runs on the blocking pool. Every failure is an outage; an answer the RA
    /// key cannot open now is `Error::Unavailable` too.
    async fn exchange(
        &self,
        learnt: &Arc<Learnt>,
        spec: MessageSpec,
        content: Vec<u8>,
    ) -> Result<Reply> {
        let body = self.send_message(learnt, &spec, content).await?;
        self.read(learnt, &spec, &body).await?.ok_or_else(|| {
            Error::Unavailable("the RA key is unavailable to read the CA's answer".into())
        })
    }

    /// Builds and sends one pkiMessage; the CA's answer, unread.
    async fn send_message(
        &self,
        learnt: &Arc<Learnt>,
        spec: &MessageSpec,
        content: Vec<u8>,
    ) -> std::result::Result<Vec<u8>, Unanswered> {
        let requester = self.requester.clone();
        let recipient = learnt.recipient.clone();
        let build_spec = spec.clone();
        let message = tokio::task::spawn_blocking(move || {
            requester.pki_message(&build_spec, &recipient, &content)
        })
        .await
        .map_err(|e| Error::Unavailable(format!("request task failed: {e}")))
        .and_then(|built| built)
        .map_err(Unanswered::Outage)?;

        let request = if learnt.caps.post {
            self.http
                .post(self.endpoint(&[("operation", "PKIOperation")]))
                .header(reqwest::header::CONTENT_TYPE, "application/x-pki-message")
                .body(message)
        } else {
            let encoded = base64::engine::general_purpose::STANDARD.encode(&message);
            self.http
                .get(self.endpoint(&[("operation", "PKIOperation"), ("message", &encoded)]))
        };
        self.exchange_http(request).await
    }

    /// Opens and checks the CA's answer. `Ok(None)`: the RA key is unavailable (an HSM
    /// outage), so the answer cannot be read now; anything wrong with the answer itself
    /// is an outage.
    async fn read(
        &self,
        learnt: &Arc<Learnt>,
        spec: &MessageSpec,
        body: &[u8],
    ) -> Result<Option<Reply>> {
        let requester = self.requester.clone();
        let trusted = learnt.clone();
        let legacy_des = self.settings.legacy_des;
        let (body, spec) = (body.to_vec(), spec.clone());
        let reply = tokio::task::spawn_blocking(move || {
            requester.read_trusted_reply(&body, &spec, legacy_des, &trusted.certificates)
        })
        .await
        .map_err(|e| Error::Unavailable(format!("reply task failed: {e}")))?;
        match reply {
            Ok(reply) => Ok(Some(reply)),
            Err(Error::Unavailable(_)) => Ok(None),
            Err(e) => Err(self.outage(format_args!("unusable CertRep: {e}"))),
        }
    }

    /// Reads the CertRep's verdict.
    fn outcome(
        &self,
        learnt: &Learnt,
        reply: Reply,
        csr_spki: &[u8],
        poll: PollTicket,
    ) -> Result<IssueOutcome> {
        match reply.status {
            PkiStatus::Success => {
                let certificate = reply
                    .certificates
                    .iter()
                    .find(|c| CertificateFields::parse(c).is_ok_and(|f| f.spki == csr_spki))
                    .ok_or_else(|| {
                        self.outage("SUCCESS without a certificate for the CSR's key")
                    })?;
                let parsed = ParsedCertificate::from_der(certificate)
                    .map_err(|e| self.outage(format_args!("issued certificate: {e}")))?;
                let from_our_ca = learnt.chain.iter().any(|ca| {
                    CertificateFields::parse(ca).is_ok_and(|f| parsed.verify_with(f.spki).is_ok())
                });
                if !from_our_ca {
                    return Err(self.outage(
                        "the issued certificate is not signed by the CA learnt with GetCACert",
                    ));
                }
                let serial = parsed.serial.to_vec();
                Ok(IssueOutcome::Issued {
                    issued: Issued {
                        certificate: Arc::from(&certificate[..]),
                        serial,
                    },
                    chain: learnt.chain.clone(),
                    ca: self.settings.name.as_str().into(),
                })
            }
            PkiStatus::Failure => {
                let info = reply.fail_info.map(|f| f.name()).unwrap_or("failure");
                let text = reply.fail_info_text.unwrap_or_default();
                Err(Error::Refused(format!(
                    "upstream CA {}: {info} {}",
                    self.settings.name,
                    text.chars().take(200).collect::<String>()
                )))
            }
            PkiStatus::Pending => Ok(IssueOutcome::Pending {
                ticket: poll.encode(),
                ca: self.settings.name.as_str().into(),
            }),
        }
    }

    fn endpoint(&self, query: &[(&str, &str)]) -> reqwest::Url {
        let mut url = self.settings.url.clone();
        url.query_pairs_mut().extend_pairs(query);
        url
    }

    async fn get(&self, query: &[(&str, &str)]) -> Result<Vec<u8>> {
        let request = self.http.get(self.endpoint(query));
        self.send(request).await
    }

    /// One HTTP exchange: 200 and a bounded body, else an outage. The error names the
    /// CA and the cause, never the URL's query (a GET PKIOperation carries the request).
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Vec<u8>> {
        self.exchange_http(request).await.map_err(Error::from)
    }

    /// [`Self::send`], telling a request that never got through (no connection, an HTTP
    /// error status) from one whose answer was lost once sent: any transport error after
    /// the connection was made, a timeout included, may have come after the CA acted.
    async fn exchange_http(
        &self,
        request: reqwest::RequestBuilder,
    ) -> std::result::Result<Vec<u8>, Unanswered> {
        let lost_or_not = |e: reqwest::Error| {
            if e.is_connect() {
                Unanswered::Outage(self.http_outage(e))
            } else {
                Unanswered::Lost(self.http_outage(e))
            }
        };
        let mut response = request.send().await.map_err(lost_or_not)?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(Unanswered::Outage(
                self.outage(format_args!("HTTP {status}")),
            ));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_REPLY_BYTES as u64)
        {
            return Err(Unanswered::Outage(self.outage("answer too large")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(lost_or_not)? {
            if body.len() + chunk.len() > MAX_REPLY_BYTES {
                return Err(Unanswered::Outage(self.outage("answer too large")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// A transport failure, with its causes (reqwest's own message is only "error
    /// sending request") but without the URL.
    fn http_outage(&self, error: reqwest::Error) -> Error {
        if error.is_timeout() {
            return self.outage(format_args!(
                "no answer within {} ms",
                self.settings.timeout.as_millis()
            ));
        }
        let error = error.without_url();
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        self.outage(text)
    }

    fn outage(&self, what: impl std::fmt::Display) -> Error {
        Error::Unavailable(format!("upstream CA {}: {what}", self.settings.name))
    }
}

impl Ca for UpstreamCa {
    fn issue<'a>(&'a self, request: IssueRequest<'a>) -> BoxFuture<'a, Result<Issued>> {
        Box::pin(async move {
            match self.enroll(request.csr).await.result? {
                IssueOutcome::Issued { issued, .. } => Ok(issued),
                IssueOutcome::Pending { .. } => Err(Error::Unavailable(format!(
                    "upstream CA {} answered PENDING",
                    self.settings.name
                ))),
            }
        })
    }

    fn submit<'a>(
        &'a self,
        request: IssueRequest<'a>,
        _route: Route<'a>,
    ) -> BoxFuture<'a, Result<IssueOutcome>> {
        Box::pin(async move { self.enroll(request.csr).await.result })
    }

    /// Asking about a request it already has never issues another: `_answer_by` is
    /// not needed.
    fn poll<'a>(
        &'a self,
        ticket: &'a [u8],
        _answer_by: AnswerBy,
    ) -> BoxFuture<'a, Result<IssueOutcome>> {
        Box::pin(self.poll_ticket(ticket))
    }

    /// Learnt at run time: see [`Ca::ca_chain`] and [`UpstreamCa::current_chain`].
    fn chain(&self) -> &[Arc<[u8]>] {
        &[]
    }

    fn chain_of(&self, _certificate: &[u8]) -> Vec<Arc<[u8]>> {
        self.current_chain()
    }

    fn ca_chain(&self, _identifier: Option<&str>) -> Option<Vec<Arc<[u8]>>> {
        Some(self.current_chain())
    }

    fn crl<'a>(&'a self) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(std::future::ready(Err(Error::NotFound(
            "the CRL of an upstream CA is published by that CA".into(),
        ))))
    }

    /// Renewals of upstream certificates are new enrollments: the upstream decides by
    /// the CSR (and its challenge), so the gateway does not waive the challenge.
    fn issued_and_valid(&self, _certificate: &[u8]) -> bool {
        false
    }
}

/// What a CertPoll needs (RFC 8894 §3.3.3): the transactionID of the PKCSReq and
/// `IssuerAndSubject`; plus the key the certificate must be for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PollTicket {
    transaction_id: String,
    issuer_and_subject: Vec<u8>,
    spki: Vec<u8>,
    /// The CA's answer to the PKCSReq and the PKCSReq's senderNonce, when the RA key
    /// could not open it (read on the next poll instead of asking the CA again).
    unread: Option<(Vec<u8>, Vec<u8>)>,
}

impl PollTicket {
    const VERSION: u8 = 1;

    /// `version ‖ (u32 length ‖ bytes) × 3`, then the unread answer and nonce if any.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![Self::VERSION];
        for field in [
            self.transaction_id.as_bytes(),
            &self.issuer_and_subject,
            &self.spki,
        ] {
            put_field(&mut out, field);
        }
        if let Some((body, nonce)) = &self.unread {
            put_field(&mut out, body);
            put_field(&mut out, nonce);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = || Error::Unavailable("a pending ticket we cannot read".into());
        let (version, mut rest) = bytes.split_first().ok_or_else(bad)?;
        if *version != Self::VERSION {
            return Err(bad());
        }
        let mut fields = Vec::with_capacity(3);
        for _ in 0..3 {
            let (field, tail) = take_field(rest).ok_or_else(bad)?;
            fields.push(field.to_vec());
            rest = tail;
        }
        let unread = if rest.is_empty() {
            None
        } else {
            let (body, tail) = take_field(rest).ok_or_else(bad)?;
            let (nonce, _) = take_field(tail).ok_or_else(bad)?;
            Some((body.to_vec(), nonce.to_vec()))
        };
        let spki = fields.pop().ok_or_else(bad)?;
        let issuer_and_subject = fields.pop().ok_or_else(bad)?;
        let transaction_id = String::from_utf8(fields.pop().ok_or_else(bad)?).map_err(|_| bad())?;
        Ok(PollTicket {
            transaction_id,
            issuer_and_subject,
            spki,
            unread,
        })
    }
}

/// Appends a u32-length-prefixed field (tickets and router records).
pub(crate) fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&field[..len as usize]);
}

/// Reads one field written by [`put_field`]; `None` when truncated.
pub(crate) fn take_field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let rest = &bytes[4..];
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// `IssuerAndSubject ::= SEQUENCE { issuer Name, subject Name }` (RFC 8894 §3.3.3),
/// from the CA certificate's subject and the CSR's subject, both as raw bytes.
fn issuer_and_subject(ca_certificate: &[u8], subject: &[u8]) -> Vec<u8> {
    let issuer = CertificateFields::parse(ca_certificate)
        .map(|f| f.subject.to_vec())
        .unwrap_or_default();
    ber::der_sequence(&[&issuer, subject])
}

/// A fresh transactionID per upstream submission: the device's own may repeat (clients
/// derive it from the key, and renewals keep the key), and a retry is answered from
/// our store, so the upstream never needs to recognise one.
fn random_transaction_id() -> Result<TransactionId> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| Error::Unavailable("the system RNG failed".into()))?;
    TransactionId::new(hex::encode(bytes)).ok_or_else(|| Error::Unavailable("transactionID".into()))
}

/// basicConstraints cA = TRUE.
fn is_ca(der: &[u8]) -> bool {
    use x509_cert::ext::pkix::BasicConstraints;
    ParsedCertificate::from_der(der).is_ok_and(|cert| {
        cert.extension(super::certificate::oid::BASIC_CONSTRAINTS)
            .and_then(|e| <BasicConstraints as der::Decode>::from_der(e.extn_value.as_bytes()).ok())
            .is_some_and(|bc| bc.ca)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_read_like_a_client_reads_them() {
        let micromdm = "Renewal\nSHA-1\nSHA-256\nAES\nDES3\nSCEPStandard\nPOSTPKIOperation\n";
        let caps = UpstreamCaps::parse(micromdm);
        assert!(caps.post && caps.aes && caps.des3 && caps.sha256 && !caps.sha512);
        let old = UpstreamCaps::parse("GetNextCACert\r\ndes3\r\n");
        assert!(!old.post && !old.aes && old.des3);
        assert_eq!(UpstreamCaps::parse(""), UpstreamCaps::default());
    }

    #[test]
    fn a_poll_ticket_round_trips_and_garbage_is_refused() {
        let t = PollTicket {
            transaction_id: "abc".into(),
            issuer_and_subject: vec![0x30, 0x00],
            spki: vec![1, 2, 3],
            unread: None,
        };
        assert_eq!(PollTicket::decode(&t.encode()).unwrap(), t);
        let kept = PollTicket {
            unread: Some((vec![0x30, 0x80], vec![7; 16])),
            ..t.clone()
        };
        assert_eq!(PollTicket::decode(&kept.encode()).unwrap(), kept);
        let mut cut = kept.encode();
        cut.pop();
        assert!(PollTicket::decode(&cut).is_err());
        assert!(PollTicket::decode(&[]).is_err());
        assert!(PollTicket::decode(&[1, 0, 0, 0, 9]).is_err());
        let mut truncated = t.encode();
        truncated.pop();
        assert!(PollTicket::decode(&truncated).is_err());
    }
}
