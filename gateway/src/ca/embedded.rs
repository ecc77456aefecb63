//! The embedded CA: issues end-entity certificates and a CRL itself, with a CA key
//! behind [`scep_hsm::Key`] (a file or an HSM).
//!
//! Issuance follows the RFC 5280 §4.1 profile for end-entity certificates:
//! - version 3, a random positive 127-bit serial (§4.1.2.2), never reused within this
//!   process (an in-memory set, retried on collision; across replicas the 127 random
//!   bits make a collision negligible). The set grows by about 50 bytes per
//!   certificate, some 50 MB per million issued before a restart;
//! - the issuer and the subject copied as raw DER Names: the issuer is the CA
//!   certificate's subject byte for byte (§4.1.2.4), the subject the CSR's;
//! - the SubjectPublicKeyInfo copied from the CSR;
//! - notBefore five minutes in the past (devices with slow clocks), notAfter after the
//!   configured validity, never after the CA's own notAfter (§6.1.3: a path is only
//!   valid while every certificate in it is);
//! - basicConstraints cA=FALSE (critical), keyUsage from the policy (critical),
//!   extKeyUsage, subjectKeyIdentifier (§4.2.1.2 method 1), authorityKeyIdentifier =
//!   the CA certificate's own subjectKeyIdentifier (§4.2.1.1), and the CSR's
//!   subjectAltName when `copy_san` is on (critical when the subject is empty,
//!   §4.2.1.6).
//!
//! Signing blocks (an HSM round trip), so [`Ca::issue`] and [`Ca::crl`] run it on
//! tokio's blocking pool; both must be called inside a tokio runtime.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use const_oid::ObjectIdentifier;
use der::flagset::FlagSet;
use scep_hsm::KeyAlgorithm;
use serde::{Deserialize, Deserializer};
use x509_cert::ext::pkix::KeyUsages;
use x509_cert::ext::Extension;

use super::certificate::{self as x509, oid, CertificateFields, CrlFields, ParsedCertificate};
use super::certificate::{RevokedCertificate, Signer};
use super::{BoxFuture, Ca, IssueRequest, Issued};
use crate::csr::CertificationRequest;
use crate::error::{Error, Result};
use crate::ra::Credential;

/// How far notBefore lies in the past, for clients whose clocks run slow.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const HOUR: Duration = Duration::from_secs(60 * 60);
/// Attempts at drawing an unused serial before giving up (a collision of 127 random
/// bits twice in a row means the random generator is broken).
const SERIAL_ATTEMPTS: usize = 8;

// ---------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------

/// The embedded CA's issuance policy; the TOML table `[ca.embedded]` or similar.
///
/// ```toml
/// validity_days = 365
/// key_usage = ["digitalSignature", "keyEncipherment"]
/// extended_key_usage = ["clientAuth"]      # names or dotted OIDs; [] for none
/// copy_san = true
/// min_rsa_bits = 2048
/// allowed_ec_curves = ["P-256", "P-384"]
/// crl_validity_hours = 24
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedCaConfig {
    /// Lifetime of issued certificates, in days (clamped to the CA's notAfter).
    pub validity_days: u32,
    /// keyUsage bits of issued certificates.
    pub key_usage: KeyUsagePolicy,
    /// extKeyUsage purposes of issued certificates; empty leaves the extension out.
    #[serde(deserialize_with = "deserialize_purposes")]
    pub extended_key_usage: Vec<ObjectIdentifier>,
    /// Copy the CSR's subjectAltName into the certificate.
    pub copy_san: bool,
    /// RSA keys with fewer bits are refused.
    pub min_rsa_bits: usize,
    /// The curves EC keys may use.
    pub allowed_ec_curves: Vec<EcCurve>,
    /// The CRL's nextUpdate lies this many hours after its thisUpdate.
    pub crl_validity_hours: u32,
}

impl Default for EmbeddedCaConfig {
    fn default() -> Self {
        EmbeddedCaConfig {
            validity_days: 365,
            key_usage: KeyUsagePolicy::default(),
            extended_key_usage: vec![oid::KP_CLIENT_AUTH],
            copy_san: true,
            min_rsa_bits: 2048,
            allowed_ec_curves: vec![EcCurve::P256, EcCurve::P384],
            crl_validity_hours: 24,
        }
    }
}

impl EmbeddedCaConfig {
    /// Rejects settings that would produce certificates RFC 5280 forbids or no
    /// client can use.
    pub fn validate(&self) -> Result<(), String> {
        if self.validity_days == 0 {
            return Err("validity_days must be at least 1".into());
        }
        if self.crl_validity_hours == 0 {
            return Err("crl_validity_hours must be at least 1".into());
        }
        if self.key_usage.0.is_empty() {
            return Err("key_usage needs at least one bit (RFC 5280 §4.2.1.3)".into());
        }
        // §4.2.1.9: keyCertSign only with cA=TRUE; these are end-entity certificates.
        if self
            .key_usage
            .0
            .iter()
            .any(|b| matches!(b, KeyUsageBit::KeyCertSign | KeyUsageBit::CrlSign))
        {
            return Err("key_usage keyCertSign/cRLSign are for CA certificates".into());
        }
        if self.min_rsa_bits < 1024 {
            return Err("min_rsa_bits below 1024 is not supported".into());
        }
        Ok(())
    }
}

/// One keyUsage bit (RFC 5280 §4.2.1.3), named as in the RFC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KeyUsageBit {
    DigitalSignature,
    #[serde(alias = "contentCommitment")]
    NonRepudiation,
    KeyEncipherment,
    DataEncipherment,
    KeyAgreement,
    KeyCertSign,
    #[serde(rename = "cRLSign", alias = "crlSign")]
    CrlSign,
    EncipherOnly,
    DecipherOnly,
}

impl From<KeyUsageBit> for KeyUsages {
    fn from(bit: KeyUsageBit) -> Self {
        match bit {
            KeyUsageBit::DigitalSignature => KeyUsages::DigitalSignature,
            KeyUsageBit::NonRepudiation => KeyUsages::NonRepudiation,
            KeyUsageBit::KeyEncipherment => KeyUsages::KeyEncipherment,
            KeyUsageBit::DataEncipherment => KeyUsages::DataEncipherment,
            KeyUsageBit::KeyAgreement => KeyUsages::KeyAgreement,
            KeyUsageBit::KeyCertSign => KeyUsages::KeyCertSign,
            KeyUsageBit::CrlSign => KeyUsages::CRLSign,
            KeyUsageBit::EncipherOnly => KeyUsages::EncipherOnly,
            KeyUsageBit::DecipherOnly => KeyUsages::DecipherOnly,
        }
    }
}

/// The keyUsage bits of issued certificates: a TOML list of bit names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct KeyUsagePolicy(pub Vec<KeyUsageBit>);

impl Default for KeyUsagePolicy {
    /// digitalSignature + keyEncipherment: what SCEP clients (VPN, Wi-Fi/EAP-TLS, MDM
    /// identities) with RSA keys expect.
    fn default() -> Self {
        KeyUsagePolicy(vec![
            KeyUsageBit::DigitalSignature,
            KeyUsageBit::KeyEncipherment,
        ])
    }
}

impl KeyUsagePolicy {
    /// The bits for a key of type `key`. RFC 5480 §3 forbids keyEncipherment and
    /// dataEncipherment for EC keys, so they are dropped there; should nothing remain,
    /// digitalSignature is used (a keyUsage needs one bit set).
    pub fn flags_for(&self, key: KeyAlgorithm) -> FlagSet<KeyUsages> {
        let mut flags = FlagSet::<KeyUsages>::default();
        for &bit in &self.0 {
            let ec_forbidden = matches!(
                bit,
                KeyUsageBit::KeyEncipherment | KeyUsageBit::DataEncipherment
            );
            if key.is_rsa() || !ec_forbidden {
                flags |= KeyUsages::from(bit);
            }
        }
        if flags.is_empty() {
            flags |= KeyUsages::DigitalSignature;
        }
        flags
    }
}

/// An elliptic curve EC keys may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum EcCurve {
    #[serde(rename = "P-256", alias = "prime256v1", alias = "secp256r1")]
    P256,
    #[serde(rename = "P-384", alias = "secp384r1")]
    P384,
}

/// extKeyUsage purposes by RFC 5280 §4.2.1.12 name, or as dotted OIDs.
fn deserialize_purposes<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<ObjectIdentifier>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    names
        .iter()
        .map(|name| purpose(name).map_err(serde::de::Error::custom))
        .collect()
}

fn purpose(name: &str) -> Result<ObjectIdentifier, String> {
    Ok(match name {
        "serverAuth" => oid::KP_SERVER_AUTH,
        "clientAuth" => oid::KP_CLIENT_AUTH,
        "codeSigning" => oid::KP_CODE_SIGNING,
        "emailProtection" => oid::KP_EMAIL_PROTECTION,
        "timeStamping" => oid::KP_TIME_STAMPING,
        "OCSPSigning" | "ocspSigning" => oid::KP_OCSP_SIGNING,
        "ipsecIKE" => oid::KP_IPSEC_IKE,
        dotted => ObjectIdentifier::new(dotted).map_err(|_| {
            format!("unknown extended key usage {dotted:?} (a name or a dotted OID)")
        })?,
    })
}

// ---------------------------------------------------------------------------------
// The CA
// ---------------------------------------------------------------------------------

/// A CA that signs certificates and CRLs itself.
pub struct EmbeddedCa {
    signer: Signer,
    /// The CA certificate, then the certificates above it.
    chain: Vec<Arc<[u8]>>,
    /// The CA certificate's subject, raw DER: issuer of everything we sign.
    subject: Vec<u8>,
    public_key_info: Vec<u8>,
    /// The CA certificate's subjectKeyIdentifier: our authorityKeyIdentifier.
    key_id: Vec<u8>,
    not_after: SystemTime,
    config: EmbeddedCaConfig,
    /// Every serial number this process issued (INTEGER content bytes).
    issued: Mutex<HashSet<Vec<u8>>>,
    revoked: Mutex<Revocations>,
    /// The last signed CRL; a tokio mutex so that concurrent GetCRLs wait for one
    /// signature instead of each making their own.
    crl: tokio::sync::Mutex<Option<SignedCrl>>,
}

#[derive(Default)]
struct Revocations {
    list: Vec<RevokedCertificate>,
    /// Bumped on every change, so the cached CRL knows it is stale.
    generation: u64,
}

struct SignedCrl {
    der: Vec<u8>,
    this_update: SystemTime,
    next_update: SystemTime,
    number: u64,
    generation: u64,
}

impl std::fmt::Debug for EmbeddedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCa")
            .field("key", &self.signer.key().label())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data under these locks stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn setup(text: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("embedded CA: {text}"))
}

impl EmbeddedCa {
    /// Builds the CA from its key and certificate (`credential`), the certificates
    /// above it (intermediates, root; served in GetCACert) and the policy.
    ///
    /// Fails (`Error::Unavailable`) if the certificate does not decode, does not match
    /// the key, or the policy is invalid.
    pub fn new(
        credential: Credential,
        chain_above: Vec<Arc<[u8]>>,
        config: EmbeddedCaConfig,
    ) -> Result<Self> {
        config.validate().map_err(setup)?;
        let cert = ParsedCertificate::from_der(&credential.certificate)
            .map_err(|e| setup(format_args!("the CA certificate does not decode: {e}")))?;
        if cert.public_key_info != credential.key.public_key_info() {
            return Err(setup(format_args!(
                "the key {} does not belong to the CA certificate",
                credential.key.label()
            )));
        }
        let key_id = match cert.subject_key_identifier() {
            Some(id) => id,
            None => {
                // RFC 5280 §4.2.1.2 makes SKI a MUST for CAs; without one, fall back
                // to the method-1 hash most CAs use.
                tracing::warn!("the CA certificate has no subjectKeyIdentifier; deriving one");
                x509::key_identifier(cert.public_key_info)?
            }
        };
        let mut chain = vec![credential.certificate.clone()];
        chain.extend(chain_above);
        Ok(EmbeddedCa {
            signer: Signer::new(credential.key.clone()),
            subject: cert.subject.to_vec(),
            public_key_info: cert.public_key_info.to_vec(),
            key_id,
            not_after: cert.not_after,
            chain,
            config,
            issued: Mutex::new(HashSet::new()),
            revoked: Mutex::new(Revocations::default()),
            crl: tokio::sync::Mutex::new(None),
        })
    }

    pub fn config(&self) -> &EmbeddedCaConfig {
        &self.config
    }

    /// Adds a serial number (INTEGER content bytes) to the CRL, revoked now. Returns
    /// whether it was not revoked before. The next [`Ca::crl`] call re-signs.
    ///
    /// The list lives in this process; the caller records the revocation in the store
    /// too (`Store::revoke`), from which other replicas and later runs adopt it
    /// ([`Ca::adopt_revocations`]).
    pub fn revoke(&self, serial: &[u8]) -> Result<bool> {
        if !is_serial(serial) {
            return Err(Error::Refused(
                "not a serial number (a positive INTEGER, minimally encoded)".into(),
            ));
        }
        let mut revoked = lock(&self.revoked);
        if revoked.list.iter().any(|r| r.serial == serial) {
            return Ok(false);
        }
        revoked.list.push(RevokedCertificate {
            serial: serial.to_vec(),
            revocation_date: SystemTime::now(),
        });
        revoked.generation += 1;
        Ok(true)
    }

    fn is_revoked(&self, serial: &[u8]) -> bool {
        lock(&self.revoked).list.iter().any(|r| r.serial == serial)
    }

    /// Refuses CSRs against the key policy (`Error::Refused`).
    fn check_policy(&self, csr: &CertificationRequest) -> Result<()> {
        match csr.key_algorithm() {
            KeyAlgorithm::Rsa { bits } if bits < self.config.min_rsa_bits => {
                return Err(Error::Refused(format!(
                    "an RSA key of {bits} bits; this CA requires at least {}",
                    self.config.min_rsa_bits
                )))
            }
            KeyAlgorithm::Rsa { .. } => {}
            KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 => {
                let curve = if csr.key_algorithm() == KeyAlgorithm::EcP256 {
                    EcCurve::P256
                } else {
                    EcCurve::P384
                };
                if !self.config.allowed_ec_curves.contains(&curve) {
                    return Err(Error::Refused(format!(
                        "EC keys on {curve:?} are not accepted by this CA"
                    )));
                }
            }
        }
        if csr.subject_is_empty() && (csr.subject_alt_name().is_none() || !self.config.copy_san) {
            // RFC 5280 §4.1.2.6: an empty subject needs a subjectAltName.
            return Err(Error::Refused(
                "the CSR has neither a subject nor a subjectAltName to copy".into(),
            ));
        }
        Ok(())
    }

    /// Draws a serial number no certificate of this process has.
    fn fresh_serial(&self) -> Result<Vec<u8>> {
        for _ in 0..SERIAL_ATTEMPTS {
            let serial = x509::random_serial()?;
            if lock(&self.issued).insert(serial.clone()) {
                return Ok(serial);
            }
        }
        Err(Error::Unavailable(
            "no unused serial number could be drawn".into(),
        ))
    }

    fn extensions(&self, csr: &CertificationRequest) -> Result<Vec<Extension>> {
        let mut extensions = vec![
            x509::basic_constraints(false)?,
            x509::key_usage(self.config.key_usage.flags_for(csr.key_algorithm()))?,
        ];
        if !self.config.extended_key_usage.is_empty() {
            extensions.push(x509::extended_key_usage(&self.config.extended_key_usage)?);
        }
        extensions.push(x509::subject_key_identifier(csr.public_key_info())?);
        extensions.push(x509::authority_key_identifier(&self.key_id)?);
        if let (true, Some(san)) = (self.config.copy_san, csr.subject_alt_name()) {
            extensions.push(x509::raw_extension(
                oid::SUBJECT_ALT_NAME,
                csr.subject_is_empty(),
                san.to_vec(),
            )?);
        }
        Ok(extensions)
    }

    /// Policy check, serial and the DER TBSCertificate: everything but the signature.
    fn prepare(&self, csr: &CertificationRequest, now: SystemTime) -> Result<(Vec<u8>, Vec<u8>)> {
        self.check_policy(csr)?;
        let not_after = (now + DAY * self.config.validity_days).min(self.not_after);
        if not_after <= now {
            return Err(Error::Unavailable("the CA certificate has expired".into()));
        }
        let serial = self.fresh_serial()?;
        let fields = CertificateFields {
            serial: &serial,
            issuer: &self.subject,
            subject: csr.subject_der(),
            public_key_info: csr.public_key_info(),
            not_before: now - BACKDATE,
            not_after,
            extensions: self.extensions(csr)?,
        };
        let tbs = fields.to_tbs_der(&self.signer)?;
        Ok((serial, tbs))
    }

    /// Signs `tbs` on the blocking pool.
    async fn sign(&self, tbs: Vec<u8>) -> Result<Vec<u8>> {
        let signer = self.signer.clone();
        tokio::task::spawn_blocking(move || signer.sign_tbs(&tbs))
            .await
            .map_err(|e| Error::Unavailable(format!("the signing task failed: {e}")))?
    }

    async fn current_crl(&self) -> Result<Vec<u8>> {
        let mut cached = self.crl.lock().await;
        let now = SystemTime::now();
        let (generation, revoked) = {
            let r = lock(&self.revoked);
            (r.generation, r.list.clone())
        };
        if let Some(crl) = cached.as_ref() {
            if crl.generation == generation && !crl_is_aging(crl, now) {
                return Ok(crl.der.clone());
            }
        }
        // RFC 5280 §5.2.3: monotonically increasing. Seconds since the epoch keep
        // increasing across restarts and replicas without shared state.
        let epoch_secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let number = cached
            .as_ref()
            .map_or(epoch_secs, |c| epoch_secs.max(c.number + 1));
        let next_update = now + HOUR * self.config.crl_validity_hours;
        let fields = CrlFields {
            issuer: &self.subject,
            this_update: now,
            next_update,
            revoked: &revoked,
            extensions: vec![
                x509::authority_key_identifier(&self.key_id)?,
                x509::crl_number(number)?,
            ],
        };
        let tbs = fields.to_tbs_der(&self.signer)?;
        let der = self.sign(tbs).await?;
        *cached = Some(SignedCrl {
            der: der.clone(),
            this_update: now,
            next_update,
            number,
            generation,
        });
        Ok(der)
    }
}

/// Whether `serial` is the content of a DER INTEGER that can be a certificate's serial
/// number: not empty, minimal (no leading 00 unless the next byte needs it), positive
/// (RFC 5280 §4.1.2.2), at most 20 bytes after that 00. Anything else on the CRL would
/// make it undecodable.
fn is_serial(serial: &[u8]) -> bool {
    match serial {
        [] => false,
        [0x00] => false,
        [0x00, next, ..] if *next < 0x80 => false,
        [first, ..] if *first >= 0x80 => false,
        [0x00, rest @ ..] => rest.len() <= 20,
        _ => serial.len() <= 20,
    }
}

/// A CRL is re-signed once half of its validity has passed, so relying parties that
/// fetch it shortly before nextUpdate still get a fresh one.
fn crl_is_aging(crl: &SignedCrl, now: SystemTime) -> bool {
    let lifetime = crl
        .next_update
        .duration_since(crl.this_update)
        .unwrap_or_default();
    now >= crl.this_update + lifetime / 2 || now < crl.this_update
}

/// (The `certificate issued` audit line is `enroll.rs`'s, where the certificate is
/// recorded with its transaction.)
fn issued(serial: Vec<u8>, certificate: Vec<u8>) -> Issued {
    Issued {
        certificate: certificate.into(),
        serial,
    }
}

impl Ca for EmbeddedCa {
    fn issue<'a>(&'a self, request: IssueRequest<'a>) -> BoxFuture<'a, Result<Issued>> {
        Box::pin(async move {
            let (serial, tbs) = self.prepare(request.csr, SystemTime::now())?;
            let certificate = self.sign(tbs).await?;
            Ok(issued(serial, certificate))
        })
    }

    /// Signs on the calling thread (the caller is on the blocking pool).
    ///
    /// Only the pipeline calls this, when the embedded CA is the gateway's CA (no
    /// `[[cas]]`), so this is where that issuance is counted in the CA metrics
    /// (`ca="embedded"`); behind the router, `ca::member` counts the calls.
    fn issue_blocking(&self, request: IssueRequest<'_>) -> Option<Result<Issued>> {
        let started = std::time::Instant::now();
        crate::metrics::ca_in_flight(self.name(), 1.0);
        let result = self
            .prepare(request.csr, SystemTime::now())
            .and_then(|(serial, tbs)| {
                let certificate = self.signer.sign_tbs(&tbs)?;
                Ok(issued(serial, certificate))
            });
        crate::metrics::ca_in_flight(self.name(), -1.0);
        let outcome = match &result {
            Ok(_) => "success",
            Err(Error::Unavailable(_)) => "unavailable",
            Err(_) => "refused",
        };
        crate::metrics::ca_request(self.name(), outcome, started.elapsed());
        Some(result)
    }

    fn chain(&self) -> &[Arc<[u8]>] {
        &self.chain
    }

    fn crl<'a>(&'a self) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(self.current_crl())
    }

    /// Parsed leniently (long serials, any time encoding) and never re-encoded: the
    /// issuer must be our subject byte for byte, the signature must verify with our
    /// key, now must lie within the validity, and the serial must not be revoked. The
    /// CA's own (self-signed) certificate is not one it issued.
    fn revoke_withheld(&self, certificate: &[u8]) -> Result<bool> {
        match ParsedCertificate::from_der(certificate) {
            Ok(cert)
                if cert.issuer == self.subject
                    && certificate != &*self.chain[0]
                    && cert.verify_with(&self.public_key_info).is_ok() =>
            {
                self.revoke(cert.serial)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn revoke_serial(&self, serial: &[u8]) -> Result<bool> {
        self.revoke(serial)
    }

    fn crl_issuer(&self) -> Option<&[u8]> {
        Some(&self.subject)
    }

    fn adopt_revocations(&self, revoked: &[crate::store::Revocation]) {
        let mut known = lock(&self.revoked);
        let before = known.list.len();
        for (serial, at) in revoked {
            if !is_serial(serial) || known.list.iter().any(|r| r.serial == *serial) {
                continue;
            }
            known.list.push(RevokedCertificate {
                serial: serial.clone(),
                revocation_date: UNIX_EPOCH + Duration::from_secs(*at),
            });
        }
        if known.list.len() != before {
            known.generation += 1;
        }
    }

    fn issued_and_valid(&self, certificate: &[u8]) -> bool {
        if certificate == &*self.chain[0] {
            return false;
        }
        let Ok(cert) = ParsedCertificate::from_der(certificate) else {
            return false;
        };
        let now = SystemTime::now();
        cert.issuer == self.subject
            && cert.verify_with(&self.public_key_info).is_ok()
            && cert.not_before <= now
            && now <= cert.not_after
            && !self.is_revoked(cert.serial)
    }
}

#[cfg(test)]
mod tests;
