//! `scep-gateway init`: a development PKI in one step, so that a first enrollment
//! works before anyone has talked to the PKI team.
//!
//! Creates, with software keys:
//! - a self-signed root CA, RSA-2048, "CN=SCEP Gateway Development CA", valid ten
//!   years: basicConstraints cA=TRUE and keyUsage keyCertSign+cRLSign, both critical
//!   (RFC 5280 §4.2.1.9, §4.2.1.3), subjectKeyIdentifier (§4.2.1.2, MUST for CAs);
//! - an RA certificate issued by it, RSA-2048, "CN=SCEP Gateway RA", valid two years:
//!   keyUsage digitalSignature (signs CertReps) + keyEncipherment (opens request
//!   envelopes), critical; no extKeyUsage, which some clients would check against
//!   purposes they do not expect (RFC 8894 §2.1 asks for none); SKI and AKI.
//!
//! Both are built by [`crate::ca::certificate`], the same code the embedded CA issues
//! with.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use scep_hsm::{Key, KeyError, SoftwareKey};
use x509_cert::ext::pkix::KeyUsages;

use crate::ca::certificate::{self as x509, CertificateFields, ParsedCertificate, Signer};

pub const CA_COMMON_NAME: &str = "SCEP Gateway Development CA";
pub const RA_COMMON_NAME: &str = "SCEP Gateway RA";
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 60 * 60);
const RA_VALIDITY: Duration = Duration::from_secs(730 * 24 * 60 * 60);
/// notBefore lies this far in the past, for devices whose clocks run slow.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Why the development PKI could not be created.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key generation failed: {0}")]
    Key(#[from] KeyError),
    #[error("certificate creation failed: {0}")]
    Certificate(#[from] crate::error::Error),
}

/// What [`create_dev_pki`] wrote.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub ca_certificate: PathBuf,
    pub ca_key: PathBuf,
    pub ra_certificate: PathBuf,
    pub ra_key: PathBuf,
    /// SHA-256 of the CA certificate, colon-separated hex: what MDM profiles pin.
    pub ca_fingerprint_sha256: String,
}

/// Creates `ca.pem`, `ca.key.pem`, `ra.pem` and `ra.key.pem` in `dir` (created if
/// missing). Key files get mode 0600 on unix. Nothing is written if any of the four
/// exists already.
pub fn create_dev_pki(dir: &Path) -> Result<DevPki, InitError> {
    let pki = DevPki {
        ca_certificate: dir.join("ca.pem"),
        ca_key: dir.join("ca.key.pem"),
        ra_certificate: dir.join("ra.pem"),
        ra_key: dir.join("ra.key.pem"),
        ca_fingerprint_sha256: String::new(),
    };
    for path in [
        &pki.ca_certificate,
        &pki.ca_key,
        &pki.ra_certificate,
        &pki.ra_key,
    ] {
        if path.exists() {
            return Err(InitError::Exists(path.clone()));
        }
    }

    let ca_key = Arc::new(SoftwareKey::generate_rsa(CA_COMMON_NAME.into(), 2048)?);
    let ra_key = Arc::new(SoftwareKey::generate_rsa(RA_COMMON_NAME.into(), 2048)?);
    let (ca_cert, ra_cert) = dev_certificates(ca_key.clone(), ra_key.clone())?;

    std::fs::create_dir_all(dir).map_err(|source| InitError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_new(&pki.ca_key, ca_key.to_pkcs8_pem().as_bytes(), true)?;
    write_new(&pki.ra_key, ra_key.to_pkcs8_pem().as_bytes(), true)?;
    let certificates = write_certificates(dir, &ca_cert, &ra_cert)?;
    Ok(DevPki {
        ca_fingerprint_sha256: certificates.ca_fingerprint_sha256,
        ..pki
    })
}

/// The two certificates of the development PKI, for keys made elsewhere (in this process
/// or in a token): a root signed by `ca_key` and an RA certificate for `ra_key`.
pub fn dev_certificates(
    ca_key: Arc<dyn Key>,
    ra_key: Arc<dyn Key>,
) -> Result<(Vec<u8>, Vec<u8>), InitError> {
    let now = SystemTime::now();
    let ca_cert = root_certificate(ca_key.clone(), now)?;
    let ra_cert = ra_certificate(ca_key, &ca_cert, ra_key.public_key_info(), now)?;
    Ok((ca_cert, ra_cert))
}

/// What [`write_certificates`] wrote.
#[derive(Debug, Clone)]
pub struct DevCertificates {
    pub ca_certificate: PathBuf,
    pub ra_certificate: PathBuf,
    pub ca_fingerprint_sha256: String,
}

/// Writes `ca.pem` and `ra.pem` into `dir` (created if missing; neither may exist).
pub fn write_certificates(
    dir: &Path,
    ca_cert: &[u8],
    ra_cert: &[u8],
) -> Result<DevCertificates, InitError> {
    std::fs::create_dir_all(dir).map_err(|source| InitError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let out = DevCertificates {
        ca_certificate: dir.join("ca.pem"),
        ra_certificate: dir.join("ra.pem"),
        ca_fingerprint_sha256: x509::sha256_fingerprint(ca_cert),
    };
    write_new(
        &out.ca_certificate,
        certificate_pem(ca_cert).as_bytes(),
        false,
    )?;
    write_new(
        &out.ra_certificate,
        certificate_pem(ra_cert).as_bytes(),
        false,
    )?;
    Ok(out)
}

/// The self-signed root (RFC 5280 §4.1.2.4: issuer = subject).
fn root_certificate(key: Arc<dyn Key>, now: SystemTime) -> Result<Vec<u8>, InitError> {
    let name = x509::common_name(CA_COMMON_NAME)?;
    let spki = key.public_key_info().to_vec();
    let key_id = x509::key_identifier(&spki)?;
    let serial = x509::random_serial()?;
    let fields = CertificateFields {
        serial: &serial,
        issuer: &name,
        subject: &name,
        public_key_info: &spki,
        not_before: now - BACKDATE,
        not_after: now + CA_VALIDITY,
        extensions: vec![
            x509::basic_constraints(true)?,
            x509::key_usage(KeyUsages::KeyCertSign | KeyUsages::CRLSign)?,
            x509::subject_key_identifier(&spki)?,
            // §4.2.1.1: MAY be omitted for self-signed; OpenSSL includes it.
            x509::authority_key_identifier(&key_id)?,
        ],
    };
    Ok(Signer::new(key).sign_certificate(&fields)?)
}

/// The RA certificate, issued by the root.
fn ra_certificate(
    ca_key: Arc<dyn Key>,
    ca_cert: &[u8],
    ra_public_key_info: &[u8],
    now: SystemTime,
) -> Result<Vec<u8>, InitError> {
    let ca = ParsedCertificate::from_der(ca_cert).map_err(|e| {
        crate::error::Error::Refused(format!("the new CA certificate does not decode: {e}"))
    })?;
    let ca_key_id = match ca.subject_key_identifier() {
        Some(id) => id,
        None => x509::key_identifier(ca.public_key_info)?,
    };
    let name = x509::common_name(RA_COMMON_NAME)?;
    let serial = x509::random_serial()?;
    let fields = CertificateFields {
        serial: &serial,
        issuer: ca.subject,
        subject: &name,
        public_key_info: ra_public_key_info,
        not_before: now - BACKDATE,
        not_after: (now + RA_VALIDITY).min(ca.not_after).max(now + DAY),
        extensions: vec![
            x509::basic_constraints(false)?,
            x509::key_usage(KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment)?,
            x509::subject_key_identifier(ra_public_key_info)?,
            x509::authority_key_identifier(&ca_key_id)?,
        ],
    };
    Ok(Signer::new(ca_key).sign_certificate(&fields)?)
}

/// A DER certificate as PEM `CERTIFICATE` (RFC 7468 §5).
pub fn certificate_pem(der: &[u8]) -> String {
    der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, der)
        .unwrap_or_else(|_| unreachable!("PEM encoding of bytes in memory cannot fail"))
}

/// Writes `contents` to a file that must not exist yet; `secret` files get mode 0600
/// on unix, set at creation so the key is never readable by others, not even briefly.
fn write_new(path: &Path, contents: &[u8], secret: bool) -> Result<(), InitError> {
    let io = |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            InitError::Exists(path.to_path_buf())
        } else {
            io(e)
        }
    })?;
    #[cfg(unix)]
    if secret {
        // `mode` is filtered by the umask, which can only remove bits; make it exact.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

/// What [`init`] created: the PKI and the files around it.
#[derive(Debug, Clone)]
pub struct Created {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub challenge_file: PathBuf,
    pub ca_fingerprint: String,
}

/// Where `init --pkcs11-...` puts the CA and RA keys.
#[derive(Debug, Clone)]
pub struct Pkcs11Init {
    pub module: PathBuf,
    pub token_label: String,
    pub pin_env: Option<String>,
    pub pin_file: Option<PathBuf>,
}

/// Labels and ids of the keys `init --pkcs11-...` generates.
pub const PKCS11_CA_LABEL: &str = "scep-gateway-ca";
pub const PKCS11_RA_LABEL: &str = "scep-gateway-ra";

impl Pkcs11Init {
    fn key_config(&self, label: &str, id: &str) -> scep_hsm::Pkcs11KeyConfig {
        scep_hsm::Pkcs11KeyConfig {
            module: self.module.clone(),
            token_label: Some(self.token_label.clone()),
            token_serial: None,
            slot: None,
            key_label: Some(label.into()),
            key_id: Some(id.into()),
            pin_env: self.pin_env.clone(),
            pin_file: self.pin_file.clone(),
            sessions: None,
        }
    }

    /// Generates the CA and RA keys in the token (RSA-2048, non-extractable) with the
    /// project's keygen and opens them.
    fn generate(&self) -> Result<GeneratedKeys, String> {
        use scep_hsm::pkcs11::admin::{keygen, KeySpec, TokenAccess};
        use scep_hsm::pkcs11::{module::TokenSelector, read_pin, Pkcs11Key, Purpose};
        let access = TokenAccess {
            module: self.module.clone(),
            token: TokenSelector::Label(self.token_label.clone()),
            pin: read_pin(self.pin_env.as_deref(), self.pin_file.as_ref())
                .map_err(|e| e.to_string())?,
        };
        let mut out = Vec::new();
        for (label, id, purpose) in [
            (PKCS11_CA_LABEL, "01", Purpose::SIGN),
            (PKCS11_RA_LABEL, "02", Purpose::BOTH),
        ] {
            let id_bytes = hex::decode(id).unwrap_or_default();
            keygen(&access, label, &id_bytes, KeySpec::Rsa(2048)).map_err(|e| e.to_string())?;
            let config = self.key_config(label, id);
            let key = Pkcs11Key::open(&config, purpose).map_err(|e| e.to_string())?;
            out.push((Arc::new(key) as Arc<dyn Key>, toml_key(&config)));
        }
        let (ra, ra_toml) = out.pop().unwrap_or_else(|| unreachable!("two keys"));
        let (ca, ca_toml) = out.pop().unwrap_or_else(|| unreachable!("two keys"));
        Ok((ca, ra, ca_toml, ra_toml))
    }
}

/// The CA key, the RA key, and their `gateway.toml` settings.
type GeneratedKeys = (Arc<dyn Key>, Arc<dyn Key>, String, String);

/// `{ pkcs11 = { ... } }` for gateway.toml, every string TOML-quoted.
fn toml_key(c: &scep_hsm::Pkcs11KeyConfig) -> String {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut fields = vec![format!("module = {}", q(&c.module.display().to_string()))];
    if let Some(t) = &c.token_label {
        fields.push(format!("token_label = {}", q(t)));
    }
    if let Some(l) = &c.key_label {
        fields.push(format!("key_label = {}", q(l)));
    }
    if let Some(id) = &c.key_id {
        fields.push(format!("key_id = {}", q(id)));
    }
    if let Some(e) = &c.pin_env {
        fields.push(format!("pin_env = {}", q(e)));
    }
    if let Some(f) = &c.pin_file {
        fields.push(format!("pin_file = {}", q(&f.display().to_string())));
    }
    format!("{{ pkcs11 = {{ {} }} }}", fields.join(", "))
}

/// `scep-gateway init`: the development PKI, a challenge file (the given password, or 24
/// random characters) and a commented `gateway.toml` that uses them. With `pkcs11`, the
/// CA and RA keys are generated in the token and the config names them there.
pub fn init(
    dir: &Path,
    challenge: Option<String>,
    legacy_des: bool,
    pkcs11: Option<&Pkcs11Init>,
) -> Result<Created, String> {
    let config = dir.join("gateway.toml");
    let challenge_file = dir.join("challenge.txt");
    for path in [&config, &challenge_file] {
        if path.exists() {
            return Err(InitError::Exists(path.clone()).to_string());
        }
    }
    let mut text = crate::config::example("challenge.txt");
    let fingerprint = match pkcs11 {
        None => {
            create_dev_pki(dir)
                .map_err(|e| e.to_string())?
                .ca_fingerprint_sha256
        }
        Some(p) => {
            let (ca, ra, ca_toml, ra_toml) = p.generate()?;
            let (ca_cert, ra_cert) = dev_certificates(ca, ra).map_err(|e| e.to_string())?;
            text = text
                .replace("key = \"ra.key.pem\"", &format!("key = {ra_toml}"))
                .replace("key = \"ca.key.pem\"", &format!("key = {ca_toml}"));
            write_certificates(dir, &ca_cert, &ra_cert)
                .map_err(|e| e.to_string())?
                .ca_fingerprint_sha256
        }
    };
    let challenge = zeroize::Zeroizing::new(challenge.unwrap_or_else(random_challenge));
    write_new(
        &challenge_file,
        format!("{}\n", &*challenge).as_bytes(),
        true,
    )
    .map_err(|e| e.to_string())?;
    if legacy_des {
        text = text.replace("legacy_des = false", "legacy_des = true");
    }
    write_new(&config, text.as_bytes(), false).map_err(|e| e.to_string())?;
    Ok(Created {
        dir: dir.to_owned(),
        config,
        challenge_file,
        ca_fingerprint: fingerprint,
    })
}

/// 24 characters from an unambiguous alphabet: about 130 bits.
fn random_challenge() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";
    let mut bytes = [0u8; 24];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system RNG does not fail");
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The SHA-256 fingerprint of a certificate, as `init` prints it.
pub fn fingerprint(der: &[u8]) -> String {
    x509::sha256_fingerprint(der)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn openssl(args: &[&str]) -> String {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn creates_a_pki_openssl_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let pki = create_dev_pki(&dir.path().join("pki")).unwrap();
        let ca = pki.ca_certificate.to_str().unwrap();
        let ra = pki.ra_certificate.to_str().unwrap();
        openssl(&["verify", "-CAfile", ca, ca]);
        openssl(&["verify", "-CAfile", ca, ra]);

        let text = openssl(&["x509", "-in", ca, "-noout", "-text"]);
        assert!(
            text.contains("CN=SCEP Gateway Development CA")
                || text.contains("CN = SCEP Gateway Development CA"),
            "{text}"
        );
        assert!(text.contains("CA:TRUE"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
        let text = openssl(&["x509", "-in", ra, "-noout", "-text"]);
        assert!(
            text.contains("Digital Signature, Key Encipherment"),
            "{text}"
        );
        assert!(!text.contains("Extended Key Usage"), "{text}");
        assert!(text.contains("Authority Key Identifier"), "{text}");

        // The fingerprint is OpenSSL's.
        let fp = openssl(&["x509", "-in", ca, "-noout", "-fingerprint", "-sha256"]);
        assert!(
            fp.trim().ends_with(&pki.ca_fingerprint_sha256),
            "{fp} vs {}",
            pki.ca_fingerprint_sha256
        );

        // Keys load, match their certificates, and are private.
        for (key, cert) in [
            (&pki.ca_key, &pki.ca_certificate),
            (&pki.ra_key, &pki.ra_certificate),
        ] {
            let k = SoftwareKey::from_file(key).unwrap();
            let (_, der) = der::pem::decode_vec(&std::fs::read(cert).unwrap()).unwrap();
            let parsed = ParsedCertificate::from_der(&der).unwrap();
            assert_eq!(parsed.public_key_info, k.public_key_info());
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(key).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ra.key.pem"), b"keep me").unwrap();
        let err = create_dev_pki(dir.path()).unwrap_err();
        assert!(matches!(err, InitError::Exists(_)), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join("ra.key.pem")).unwrap(),
            b"keep me"
        );
        assert!(!dir.path().join("ca.pem").exists());
    }
}
