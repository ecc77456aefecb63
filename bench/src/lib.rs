//! Shared setup of the hot-path benches (`benches/hot_path.rs`) and of the `ratio`
//! binary: a development PKI, pools of distinct PKCSReq messages built with the
//! gateway's own requester code, and one enrollment done step by step.
//!
//! Everything here calls the gateway's public API only, so that what is measured is what
//! the server runs.
#![forbid(unsafe_code)]

pub mod hsm;
pub mod load;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use scep_gateway::ca::certificate::{self as x509, CertificateFields, ParsedCertificate, Signer};
use scep_gateway::ca::embedded::{EmbeddedCa, EmbeddedCaConfig};
use scep_gateway::ca::{Ca, IssueRequest};
use scep_gateway::challenge::static_secret::StaticChallenge;
use scep_gateway::cms::algorithms::{ContentCipher, Digest};
use scep_gateway::config::RenewalConfig;
use scep_gateway::csr::CertificationRequest;
use scep_gateway::ra::{Credential, RaKeys};
use scep_gateway::scep::cacert;
use scep_gateway::scep::certrep::{self, Outcome};
use scep_gateway::scep::client::{MessageSpec, Requester};
use scep_gateway::scep::message::{MessageType, Nonce, PkiStatus, TransactionId};
use scep_gateway::scep::request::{CryptoPolicy, RequestBody, SignedRequest};
use scep_gateway::service::Gateway;
use scep_gateway::store::memory::MemoryStore;
use scep_hsm::{DecryptPadding, Key, KeyAlgorithm, SignatureAlgorithm, SoftwareKey};
use x509_cert::ext::pkix::KeyUsages;
use zeroize::Zeroizing;

/// Errors of the setup are reported, never unwrapped: a bench that cannot set up should
/// say why.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = BoxError> = std::result::Result<T, E>;

/// The challenge password every benched CSR carries (and the pipeline checks).
pub const CHALLENGE: &str = "bench-secret";

/// The key shapes benched. The RA decryption key is always RSA (SCEP key transport is
/// RSA); only the CA key may be EC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `scep-gateway init`'s PKI: RSA-2048 CA and RA.
    Rsa2048,
    /// RSA-2048 CA, RSA-3072 RA (signs CertReps, opens envelopes).
    Ra3072,
    /// EC P-256 CA, RSA-2048 RA.
    CaP256,
    /// RSA-2048 CA and RA keys in a SoftHSM2 token (see `hsm.rs`), used through the
    /// gateway's `Pkcs11Key` and its session pool. Not in [`Variant::ALL`]: it needs
    /// SoftHSM2, and the `ratio` binary and `scep-load` stay software-only.
    Hsm,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Rsa2048, Variant::Ra3072, Variant::CaP256];

    /// The name used in bench ids and in the ratio output.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Rsa2048 => "rsa2048",
            Variant::Ra3072 => "ra-rsa3072",
            Variant::CaP256 => "ca-p256",
            Variant::Hsm => "hsm-rsa2048",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Variant::ALL
            .into_iter()
            .chain([Variant::Hsm])
            .find(|v| v.name() == name)
    }
}

/// The server side of one variant: the RA keys and the embedded CA, as the gateway
/// loads them.
pub struct Pki {
    pub variant: Variant,
    pub ra: RaKeys,
    pub ca: Arc<EmbeddedCa>,
    /// The RA and CA keys as the gateway holds them.
    pub ra_key: Arc<dyn Key>,
    pub ca_key: Arc<dyn Key>,
    /// The same keys as concrete `SoftwareKey`s, for the bare-operation baselines
    /// (static dispatch beside the `dyn Key` the gateway uses); `None` for [`Variant::Hsm`].
    pub ra_software: Option<Arc<SoftwareKey>>,
    pub ca_software: Option<Arc<SoftwareKey>>,
    /// Keeps `init`'s key files (or the SoftHSM2 token) until the benches are done.
    _dir: Arc<dyn std::any::Any + Send + Sync>,
}

/// Builds the PKI of each of `variants`, from one `scep-gateway init` PKI (key
/// generation is most of the setup time, so the RSA-2048 keys are shared).
///
/// The RSA-2048 variant is exactly `init`'s output loaded back from its files the way
/// `service.rs` does; the others swap one key and issue the certificates with the same
/// builders `init.rs` uses.
pub fn pkis(variants: &[Variant]) -> Result<Vec<Pki>> {
    let dir: Arc<dyn std::any::Any + Send + Sync> = Arc::new(tempfile::tempdir()?);
    let dir_path = dir
        .downcast_ref::<tempfile::TempDir>()
        .unwrap_or_else(|| unreachable!("a TempDir"))
        .path()
        .to_owned();
    let dev = scep_gateway::init::create_dev_pki(&dir_path)?;
    let (ca_dev_key, ca_dev_cert) = load_credential(&dev.ca_certificate, &dev.ca_key)?;
    let (ra_dev_key, ra_dev_cert) = load_credential(&dev.ra_certificate, &dev.ra_key)?;
    let ca_dev = credential(ca_dev_key.clone(), ca_dev_cert);
    variants
        .iter()
        .map(|&variant| {
            if variant == Variant::Hsm {
                return hsm_pki(None);
            }
            let (ca_key, ca, ra_key, ra_cert) = match variant {
                Variant::Hsm => unreachable!("handled above"),
                Variant::Rsa2048 => (
                    ca_dev_key.clone(),
                    ca_dev.clone(),
                    ra_dev_key.clone(),
                    ra_dev_cert.clone(),
                ),
                Variant::Ra3072 => {
                    let key = Arc::new(SoftwareKey::generate_rsa("ra-3072".into(), 3072)?);
                    let cert = ra_certificate(&ca_dev, key.public_key_info())?;
                    (ca_dev_key.clone(), ca_dev.clone(), key, Arc::from(cert))
                }
                Variant::CaP256 => {
                    let key = Arc::new(SoftwareKey::generate_p256("ca-p256".into())?);
                    let cert = ca_certificate(key.clone(), "SCEP Bench P-256 CA")?;
                    let ca = credential(key.clone(), Arc::from(cert));
                    let ra_cert = ra_certificate(&ca, ra_dev_key.public_key_info())?;
                    (key, ca, ra_dev_key.clone(), Arc::from(ra_cert))
                }
            };
            let ra = credential(ra_key.clone(), ra_cert);
            let ca = EmbeddedCa::new(ca, Vec::new(), EmbeddedCaConfig::default())?;
            Ok(Pki {
                variant,
                // One RA certificate for both jobs, as `init` sets it up.
                ra: RaKeys {
                    signer: ra.clone(),
                    decrypter: ra,
                    previous: Vec::new(),
                },
                ca: Arc::new(ca),
                ra_key: ra_key.clone(),
                ca_key: ca_key.clone(),
                ra_software: Some(ra_key),
                ca_software: Some(ca_key),
                _dir: dir.clone(),
            })
        })
        .collect()
}

/// The [`Variant::Hsm`] PKI: a fresh SoftHSM2 token (see `hsm.rs`), RSA-2048 CA and RA
/// keys generated in it, the development certificates `init --pkcs11-...` makes for them
/// (`scep_gateway::init::dev_certificates`, signed by the CA key in the token), a session
/// pool of `sessions` (`None`: the gateway's default, two per core).
pub fn hsm_pki(sessions: Option<usize>) -> Result<Pki> {
    let token = hsm::SoftHsm::create()?;
    let (ca_key, ra_key) = token.ca_and_ra(sessions)?;
    let (ca_cert, ra_cert) = scep_gateway::init::dev_certificates(ca_key.clone(), ra_key.clone())?;
    let ca = Credential {
        key: ca_key.clone(),
        certificate: Arc::from(ca_cert),
    };
    let ra = Credential {
        key: ra_key.clone(),
        certificate: Arc::from(ra_cert),
    };
    Ok(Pki {
        variant: Variant::Hsm,
        ra: RaKeys {
            signer: ra.clone(),
            decrypter: ra,
            previous: Vec::new(),
        },
        ca: Arc::new(EmbeddedCa::new(
            ca,
            Vec::new(),
            EmbeddedCaConfig::default(),
        )?),
        ra_key,
        ca_key,
        ra_software: None,
        ca_software: None,
        _dir: Arc::new(token),
    })
}

fn credential(key: Arc<SoftwareKey>, certificate: Arc<[u8]>) -> Credential {
    Credential { key, certificate }
}

/// A key and certificate from `init`'s files, checked to belong together as
/// `service.rs` checks them.
fn load_credential(cert: &Path, key: &Path) -> Result<(Arc<SoftwareKey>, Arc<[u8]>)> {
    let mut certs = scep_gateway::service::load_certificates("bench", cert)?;
    let certificate = certs.remove(0);
    let key = Arc::new(SoftwareKey::from_file(key)?);
    if ParsedCertificate::from_der(&certificate)?.public_key_info != key.public_key_info() {
        return Err(format!("{} does not belong to its key", cert.display()).into());
    }
    Ok((key, certificate))
}

/// A self-signed CA certificate for any key (the EC CA): the profile of `init.rs`'s
/// root (cA=TRUE, keyCertSign+cRLSign, SKI, AKI).
fn ca_certificate(key: Arc<SoftwareKey>, common_name: &str) -> Result<Vec<u8>> {
    let now = SystemTime::now();
    let name = x509::common_name(common_name)?;
    let spki = key.public_key_info().to_vec();
    let fields = CertificateFields {
        serial: &x509::random_serial()?,
        issuer: &name,
        subject: &name,
        public_key_info: &spki,
        not_before: now - Duration::from_secs(300),
        not_after: now + Duration::from_secs(3650 * 86400),
        extensions: vec![
            x509::basic_constraints(true)?,
            x509::key_usage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)?,
            x509::subject_key_identifier(&spki)?,
            x509::authority_key_identifier(&x509::key_identifier(&spki)?)?,
        ],
    };
    Ok(Signer::new(key).sign_certificate(&fields)?)
}

/// An RA certificate issued by `ca`: `init.rs`'s RA profile (digitalSignature +
/// keyEncipherment, no extKeyUsage).
fn ra_certificate(ca: &Credential, ra_spki: &[u8]) -> Result<Vec<u8>> {
    let now = SystemTime::now();
    let parsed = ParsedCertificate::from_der(&ca.certificate)?;
    let ca_key_id = match parsed.subject_key_identifier() {
        Some(id) => id,
        None => x509::key_identifier(parsed.public_key_info)?,
    };
    let fields = CertificateFields {
        serial: &x509::random_serial()?,
        issuer: parsed.subject,
        subject: &x509::common_name("SCEP Bench RA")?,
        public_key_info: ra_spki,
        not_before: now - Duration::from_secs(300),
        not_after: now + Duration::from_secs(730 * 86400),
        extensions: vec![
            x509::basic_constraints(false)?,
            x509::key_usage(KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment)?,
            x509::subject_key_identifier(ra_spki)?,
            x509::authority_key_identifier(&ca_key_id)?,
        ],
    };
    Ok(Signer::new(ca.key.clone()).sign_certificate(&fields)?)
}

/// Requesters (devices): RSA-2048 keys with self-signed certificates. Generating an
/// RSA key costs ~0.1 s, so a handful is shared by every message pool; the messages
/// still differ (transactionID, nonce, subject, content key, IV, signatures).
pub fn requesters(count: usize) -> Result<Vec<Requester>> {
    (0..count)
        .map(|i| {
            let key: Arc<dyn Key> =
                Arc::new(SoftwareKey::generate_rsa(format!("device-{i}"), 2048)?);
            let subject = x509::common_name(&format!("bench-device-{i}"))?;
            Ok(Requester::self_signed(key, &subject)?)
        })
        .collect()
}

/// One PKCSReq as a device sends it, with what it takes to read the reply.
pub struct Message {
    pub bytes: Vec<u8>,
    pub spec: MessageSpec,
    /// Index into the requester pool.
    pub requester: usize,
}

/// `count` distinct PKCSReq messages to `ra`, SHA-256 signed, enveloped with `cipher`.
/// Message `i` carries transactionID `{tag}-{i}` and subject `CN=bench-{tag}-{i}`:
/// nothing repeats, so no cache (the store's replay answer included) can serve one.
pub fn messages(
    requesters: &[Requester],
    ra: &RaKeys,
    cipher: ContentCipher,
    tag: &str,
    count: usize,
) -> Result<Vec<Message>> {
    (0..count)
        .map(|i| {
            let requester = i % requesters.len();
            let client = &requesters[requester];
            let subject = x509::common_name(&format!("bench-{tag}-{i}"))?;
            let csr = client.certification_request(&subject, Some(CHALLENGE))?;
            let spec = MessageSpec {
                message_type: MessageType::PkcsReq,
                transaction_id: TransactionId::new(format!("{tag}-{i}"))
                    .ok_or("transactionID too long")?,
                sender_nonce: Nonce::random(),
                digest: Digest::Sha256,
                cipher,
            };
            let bytes = client.pki_message(&spec, &ra.decrypter.certificate, &csr)?;
            Ok(Message {
                bytes,
                spec,
                requester,
            })
        })
        .collect()
}

/// A current-thread runtime, for `Ca::issue` (async because the CA signs on tokio's
/// blocking pool). Its blocking pool gets threads on demand, as the server's does.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// One PKCSReq enrollment, step by step as `enroll.rs` runs it on its blocking-pool
/// thread, minus the HTTP layer, the transaction store and the challenge check: parse, verify, open (RA decrypt),
/// CSR parse and self-signature check, issuance (CA sign), CertRep (envelope to the
/// requester, RA sign). Returns the CertRep.
pub fn enroll(pki: &Pki, rt: &tokio::runtime::Runtime, message: &[u8]) -> Result<Vec<u8>> {
    // As `enroll::pki_operation` does: the requester's key parsed once for its uses.
    let _keys = scep_gateway::cms::public_keys::scope();
    let signed = SignedRequest::parse(message)?;
    signed.verify()?;
    let request = signed.open(&pki.ra, CryptoPolicy::default())?;
    let RequestBody::CertificationRequest(der) = &request.body else {
        return Err("the PKCSReq does not carry a CSR".into());
    };
    let csr = CertificationRequest::from_der(der)?;
    // The server signs in place when the CA can (it is on the blocking pool already);
    // else through `Ca::issue`, which hops.
    let issue = || IssueRequest {
        csr: &csr,
        renewing: None,
    };
    let issued = match pki.ca.issue_blocking(issue()) {
        Some(issued) => issued?,
        None => rt.block_on(pki.ca.issue(issue()))?,
    };
    // The new certificate, then the CA chain, as `enroll.rs` answers.
    let mut certificates = vec![issued.certificate];
    certificates.extend(pki.ca.chain().iter().cloned());
    Ok(certrep::build(
        &pki.ra.signer,
        &request.header,
        Some(request.cipher),
        &Outcome::Issued { certificates },
    )?)
}

/// Reads `reply` as the device would and checks that it is a SUCCESS carrying a
/// certificate for the device's key: the benches measure working enrollments only.
pub fn check_reply(requesters: &[Requester], message: &Message, reply: &[u8]) -> Result<()> {
    let client = &requesters[message.requester];
    let read = client.read_reply(reply, &message.spec, false)?;
    if read.status != PkiStatus::Success {
        return Err(format!("pkiStatus {:?}, not SUCCESS", read.status).into());
    }
    let issued = read.certificates.first().ok_or("no certificate")?;
    let parsed = ParsedCertificate::from_der(issued)?;
    if parsed.public_key_info != client.credential.key.public_key_info() {
        return Err("the issued certificate is not for the device's key".into());
    }
    Ok(())
}

/// The gateway's full shared state around `pki`, as `Gateway::from_config` assembles
/// it: memory store, static challenge. For the pipeline bench (`enroll::pki_operation`).
pub fn gateway(pki: &Pki) -> Result<Arc<Gateway>> {
    // Large enough that a whole bench run never fills it.
    gateway_with_store(
        pki,
        Arc::new(MemoryStore::new(Duration::from_secs(3600), 10_000_000)),
    )
}

/// [`gateway`] with another transaction store (the `ratio` tool's Redis pipeline).
pub fn gateway_with_store(
    pki: &Pki,
    store: Arc<dyn scep_gateway::store::Store>,
) -> Result<Arc<Gateway>> {
    let ca: Arc<dyn Ca> = pki.ca.clone();
    Ok(Arc::new(Gateway {
        ca_cert: cacert::ca_cert(&pki.ra, ca.chain()),
        ra: pki.ra.clone(),
        ca,
        store,
        challenge: Arc::new(StaticChallenge::new(Zeroizing::new(CHALLENGE.to_owned()))),
        policy: CryptoPolicy::default(),
        renewal: RenewalConfig::default(),
        capabilities: String::new(),
        next_ca_cert: None,
        next_certificates: Vec::new(),
        claim_lease: Duration::from_secs(30),
        keys: vec![("ra.key", pki.ra.signer.key.clone())],
        // No admission limit worth the name: the bench measures the pipeline.
        admission: scep_gateway::http::admission::Admission::new(usize::MAX >> 4, None),
        reload_token: None,
        profile_challenges: Default::default(),
        readiness: Default::default(),
        // As `from_config` decides it: software keys compute in place, HSM keys block.
        inline: pki.ra_software.is_some(),
    }))
}

/// The three private-key operations of one enrollment, done bare through the same
/// `Key` objects the gateway uses: the RA unwraps a content key (PKCS#1 v1.5), the CA
/// signs a certificate, the RA signs a CertRep. This is the floor an enrollment cannot
/// go below.
pub struct PrivateOps {
    ra: Arc<dyn Key>,
    ca: Arc<dyn Key>,
    ca_alg: SignatureAlgorithm,
    /// Distinct wrapped content keys, so that each decryption is a fresh one.
    ciphertexts: Vec<Vec<u8>>,
    /// What the signatures cover: about the size of a TBSCertificate and of a CertRep's
    /// signed attributes (the digest of a few hundred bytes is noise beside RSA).
    tbs: Vec<u8>,
    attrs: Vec<u8>,
}

impl PrivateOps {
    pub fn new(pki: &Pki, count: usize) -> Result<Self> {
        let ra = pki.ra.decrypter.key.clone();
        Ok(PrivateOps {
            ciphertexts: (0..count)
                .map(|_| wrapped_key(ra.public_key_info()))
                .collect::<Result<_>>()?,
            ra,
            ca: pki.ca_key.clone(),
            ca_alg: signature_algorithm(pki.ca_key.algorithm()),
            tbs: vec![0x5a; 700],
            attrs: vec![0xa5; 250],
        })
    }

    /// RA decrypt of wrapped key `i` (modulo the pool).
    pub fn decrypt(&self, i: usize) -> Result<()> {
        let ct = &self.ciphertexts[i % self.ciphertexts.len()];
        let cek = self.ra.decrypt(DecryptPadding::Pkcs1v15, ct)?;
        std::hint::black_box(cek);
        Ok(())
    }

    /// CA signature over a TBSCertificate-sized message.
    pub fn ca_sign(&self) -> Result<()> {
        std::hint::black_box(self.ca.sign(self.ca_alg, &self.tbs)?);
        Ok(())
    }

    /// RA signature over CertRep-sized signed attributes.
    pub fn ra_sign(&self) -> Result<()> {
        std::hint::black_box(
            self.ra
                .sign(SignatureAlgorithm::RsaPkcs1Sha256, &self.attrs)?,
        );
        Ok(())
    }

    /// The three together: one enrollment's worth.
    pub fn all(&self, i: usize) -> Result<()> {
        self.decrypt(i)?;
        self.ca_sign()?;
        self.ra_sign()
    }
}

/// The signature algorithm `Signer` picks for a key, so the baseline signs as the CA does.
pub fn signature_algorithm(key: KeyAlgorithm) -> SignatureAlgorithm {
    match key {
        KeyAlgorithm::Rsa { .. } => SignatureAlgorithm::RsaPkcs1Sha256,
        KeyAlgorithm::EcP256 => SignatureAlgorithm::EcdsaSha256,
        KeyAlgorithm::EcP384 => SignatureAlgorithm::EcdsaSha384,
    }
}

/// A random AES-256 key wrapped with PKCS#1 v1.5 to the RSA key `spki`, as a device's
/// RecipientInfo carries it.
pub fn wrapped_key(spki: &[u8]) -> Result<Vec<u8>> {
    use aws_lc_rs::rsa::{Pkcs1PublicEncryptingKey, PublicEncryptingKey};
    let public = PublicEncryptingKey::from_der(spki).map_err(|e| e.to_string())?;
    let rsa = Pkcs1PublicEncryptingKey::new(public).map_err(|e| e.to_string())?;
    let mut cek = [0u8; 32];
    aws_lc_rs::rand::fill(&mut cek).map_err(|e| e.to_string())?;
    let mut out = vec![0u8; rsa.ciphertext_size()];
    Ok(rsa
        .encrypt(&cek, &mut out)
        .map_err(|e| e.to_string())?
        .to_vec())
}

/// A pkiMessage as certmonger puts it in a GET: base64 with `+`, `/` and `=`
/// percent-encoded (and, like sscep, an escaped newline every 64 characters).
pub fn get_query_message(message: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(message);
    let mut out = String::with_capacity(b64.len() * 11 / 10);
    for (i, c) in b64.chars().enumerate() {
        if i > 0 && i % 64 == 0 {
            out.push_str("%0A");
        }
        match c {
            '+' => out.push_str("%2B"),
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
    out
}
