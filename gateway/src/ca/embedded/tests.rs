//! Tests of the embedded CA against OpenSSL, with a PKI from `init`.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use scep_hsm::SoftwareKey;

use super::*;
use crate::csr::tests::{config as req_config, openssl_csr, rsa_csr};
use crate::init::{certificate_pem, create_dev_pki, DevPki};

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // `openssl crl -verify` reports on stderr.
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn read_pem(path: &Path) -> Vec<u8> {
    der::pem::decode_vec(&std::fs::read(path).unwrap())
        .unwrap()
        .1
}

fn dev_ca(dir: &Path, config: EmbeddedCaConfig) -> (EmbeddedCa, DevPki) {
    let pki = create_dev_pki(dir).unwrap();
    let credential = Credential {
        key: Arc::new(SoftwareKey::from_file(&pki.ca_key).unwrap()),
        certificate: read_pem(&pki.ca_certificate).into(),
    };
    (EmbeddedCa::new(credential, vec![], config).unwrap(), pki)
}

async fn issue(ca: &EmbeddedCa, csr_der: &[u8]) -> Result<Issued> {
    let csr = CertificationRequest::from_der(csr_der)?;
    ca.issue(IssueRequest {
        csr: &csr,
        renewing: None,
    })
    .await
}

fn write_pem(dir: &Path, name: &str, der: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, certificate_pem(der)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn issued_rsa_certificate_verifies_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, pki) = dev_ca(dir.path(), EmbeddedCaConfig::default());
    let csr = rsa_csr(2048, Some("pw"), Some("DNS:a.example,email:x@a.example"));
    let issued = issue(&ca, &csr).await.unwrap();

    let cert = write_pem(dir.path(), "cert.pem", &issued.certificate);
    let ca_pem = pki.ca_certificate.to_str().unwrap();
    openssl(&["verify", "-CAfile", ca_pem, &cert]);
    let text = openssl(&["x509", "-in", &cert, "-noout", "-text"]);
    for expected in [
        "DNS:a.example",
        "email:x@a.example",
        "TLS Web Client Authentication",
        "Digital Signature, Key Encipherment",
        "CA:FALSE",
        "Subject Key Identifier",
        "Version: 3",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
    assert!(
        text.contains("CN = device-1") || text.contains("CN=device-1"),
        "{text}"
    );

    let parsed = ParsedCertificate::from_der(&issued.certificate).unwrap();
    assert_eq!(parsed.serial, &issued.serial[..]);
    // The subject is the CSR's, byte for byte; the AKI is the CA's SKI.
    let request = CertificationRequest::from_der(&csr).unwrap();
    assert_eq!(parsed.subject, request.subject_der());
    assert_eq!(parsed.public_key_info, request.public_key_info());
    let ca_cert = ParsedCertificate::from_der(&ca.chain()[0]).unwrap();
    let aki = parsed.extension(oid::AUTHORITY_KEY_IDENTIFIER).unwrap();
    let aki = <x509_cert::ext::pkix::AuthorityKeyIdentifier as der::Decode>::from_der(
        aki.extn_value.as_bytes(),
    )
    .unwrap();
    assert_eq!(
        aki.key_identifier.unwrap().as_bytes(),
        &ca_cert.subject_key_identifier().unwrap()[..]
    );
    // Backdated by five minutes, one year long.
    let now = SystemTime::now();
    assert!(parsed.not_before <= now - Duration::from_secs(240));
    let lifetime = parsed.not_after.duration_since(parsed.not_before).unwrap();
    assert_eq!(lifetime.as_secs(), 365 * 86400 + 300);
    assert!(ca.issued_and_valid(&issued.certificate));
}

#[tokio::test]
async fn ec_p256_certificate_has_no_key_encipherment() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, pki) = dev_ca(dir.path(), EmbeddedCaConfig::default());
    let csr = openssl_csr(
        dir.path(),
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        &req_config("ec-device", None, Some("DNS:ec.example")),
    );
    let issued = issue(&ca, &csr).await.unwrap();
    let cert = write_pem(dir.path(), "ec.pem", &issued.certificate);
    openssl(&[
        "verify",
        "-CAfile",
        pki.ca_certificate.to_str().unwrap(),
        &cert,
    ]);
    let text = openssl(&["x509", "-in", &cert, "-noout", "-text"]);
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(!text.contains("Key Encipherment"), "{text}");
}

#[tokio::test]
async fn key_policy_refuses_small_rsa_and_other_curves() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedCaConfig {
        allowed_ec_curves: vec![EcCurve::P384],
        ..EmbeddedCaConfig::default()
    };
    let (ca, _) = dev_ca(dir.path(), config);
    let err = issue(&ca, &rsa_csr(1024, None, None)).await.unwrap_err();
    assert!(
        matches!(err, Error::Refused(ref t) if t.contains("1024")),
        "{err}"
    );
    assert_eq!(
        err.answer(),
        crate::error::Answer::Failure(crate::scep::message::FailInfo::BadRequest)
    );

    let csr = openssl_csr(
        dir.path(),
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        &req_config("ec", None, None),
    );
    let err = issue(&ca, &csr).await.unwrap_err();
    assert!(
        matches!(err, Error::Refused(ref t) if t.contains("P256")),
        "{err}"
    );
}

#[tokio::test]
async fn validity_is_clamped_to_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedCaConfig {
        validity_days: 100 * 365,
        extended_key_usage: vec![],
        copy_san: false,
        ..EmbeddedCaConfig::default()
    };
    let (ca, _) = dev_ca(dir.path(), config);
    let issued = issue(&ca, &rsa_csr(2048, None, Some("DNS:x.example")))
        .await
        .unwrap();
    let cert = ParsedCertificate::from_der(&issued.certificate).unwrap();
    let ca_cert = ParsedCertificate::from_der(&ca.chain()[0]).unwrap();
    assert_eq!(cert.not_after, ca_cert.not_after);
    assert!(cert.extension(oid::EXTENDED_KEY_USAGE).is_none());
    assert!(cert.extension(oid::SUBJECT_ALT_NAME).is_none());
}

#[tokio::test]
async fn serials_are_unique_over_a_thousand_issues() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = dev_ca(dir.path(), EmbeddedCaConfig::default());
    let csr = CertificationRequest::from_der(&rsa_csr(2048, None, None)).unwrap();
    let mut serials = HashSet::new();
    for _ in 0..1000 {
        let issued = ca
            .issue(IssueRequest {
                csr: &csr,
                renewing: None,
            })
            .await
            .unwrap();
        assert_eq!(issued.serial[0] & 0x80, 0);
        assert!(serials.insert(issued.serial));
    }
    assert_eq!(lock(&ca.issued).len(), 1000);
}

#[tokio::test]
async fn crl_verifies_and_follows_revocations() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, pki) = dev_ca(dir.path(), EmbeddedCaConfig::default());
    let ca_pem = pki.ca_certificate.to_str().unwrap();
    let crl_path = dir.path().join("crl.der");
    let crl_file = crl_path.to_str().unwrap();

    let first = ca.crl().await.unwrap();
    std::fs::write(&crl_path, &first).unwrap();
    let out = openssl(&[
        "crl", "-inform", "DER", "-in", crl_file, "-CAfile", ca_pem, "-noout", "-verify", "-text",
    ]);
    assert!(out.contains("verify OK"), "{out}");
    assert!(out.contains("No Revoked Certificates"), "{out}");
    assert!(out.contains("X509v3 CRL Number"), "{out}");
    assert!(out.contains("Authority Key Identifier"), "{out}");
    // Cached while nothing changes.
    assert_eq!(ca.crl().await.unwrap(), first);

    let issued = issue(&ca, &rsa_csr(2048, None, None)).await.unwrap();
    assert!(ca.issued_and_valid(&issued.certificate));
    assert!(ca.revoke(&issued.serial).unwrap());
    assert!(!ca.revoke(&issued.serial).unwrap());
    assert!(!ca.issued_and_valid(&issued.certificate));

    let second = ca.crl().await.unwrap();
    assert_ne!(second, first);
    std::fs::write(&crl_path, &second).unwrap();
    let out = openssl(&[
        "crl", "-inform", "DER", "-in", crl_file, "-CAfile", ca_pem, "-noout", "-verify", "-text",
    ]);
    assert!(out.contains("verify OK"), "{out}");
    let serial_hex = hex::encode_upper(&issued.serial);
    assert!(out.contains(&serial_hex), "{serial_hex} not in {out}");

    // The revoked certificate fails `openssl verify -crl_check`.
    let cert = write_pem(dir.path(), "revoked.pem", &issued.certificate);
    let crl_pem = dir.path().join("crl.pem");
    openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        crl_file,
        "-out",
        crl_pem.to_str().unwrap(),
    ]);
    let out = Command::new("openssl")
        .args([
            "verify",
            "-crl_check",
            "-CAfile",
            ca_pem,
            "-CRLfile",
            crl_pem.to_str().unwrap(),
            &cert,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoked")
            || String::from_utf8_lossy(&out.stderr).contains("revoked")
    );
}

#[tokio::test]
async fn issued_and_valid_rejects_foreign_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = dev_ca(dir.path(), EmbeddedCaConfig::default());
    // A self-signed certificate, as a PKCSReq's signer certificate would be.
    let key = dir.path().join("self.key");
    let cert = dir.path().join("self.pem");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=self",
        "-days",
        "1",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    assert!(!ca.issued_and_valid(&read_pem(&cert)));
    // The CA certificate names us as issuer and verifies, but was not issued by us.
    assert!(!ca.issued_and_valid(&ca.chain()[0]));
    assert!(!ca.issued_and_valid(b"not a certificate"));
    // A certificate from another CA with the same name does not verify.
    let other_dir = tempfile::tempdir().unwrap();
    let (other, _) = dev_ca(other_dir.path(), EmbeddedCaConfig::default());
    let issued = issue(&other, &rsa_csr(2048, None, None)).await.unwrap();
    assert!(other.issued_and_valid(&issued.certificate));
    assert!(!ca.issued_and_valid(&issued.certificate));
    // Nor is it ours to revoke.
    assert!(!ca.revoke_withheld(&issued.certificate).unwrap());
}

#[tokio::test]
async fn a_withheld_certificate_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = dev_ca(dir.path(), EmbeddedCaConfig::default());
    let issued = issue(&ca, &rsa_csr(2048, None, None)).await.unwrap();
    assert!(ca.issued_and_valid(&issued.certificate));
    assert!(ca.revoke_withheld(&issued.certificate).unwrap());
    assert!(!ca.issued_and_valid(&issued.certificate));
    assert!(ca.is_revoked(&issued.serial));
    assert!(!ca.revoke_withheld(&ca.chain()[0]).unwrap());
}

#[test]
fn chain_starts_with_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = create_dev_pki(dir.path()).unwrap();
    let ca_der: Arc<[u8]> = read_pem(&pki.ca_certificate).into();
    let above: Arc<[u8]> = read_pem(&pki.ra_certificate).into();
    let credential = Credential {
        key: Arc::new(SoftwareKey::from_file(&pki.ca_key).unwrap()),
        certificate: ca_der.clone(),
    };
    let ca = EmbeddedCa::new(credential, vec![above.clone()], EmbeddedCaConfig::default()).unwrap();
    assert_eq!(ca.chain(), &[ca_der, above][..]);
    // A key that does not match the certificate is refused.
    let wrong = Credential {
        key: Arc::new(SoftwareKey::from_file(&pki.ra_key).unwrap()),
        certificate: read_pem(&pki.ca_certificate).into(),
    };
    assert!(EmbeddedCa::new(wrong, vec![], EmbeddedCaConfig::default()).is_err());
}

#[test]
fn config_from_toml() {
    let config: EmbeddedCaConfig = toml::from_str("").unwrap();
    assert_eq!(config, EmbeddedCaConfig::default());
    assert_eq!(config.extended_key_usage, vec![oid::KP_CLIENT_AUTH]);

    let config: EmbeddedCaConfig = toml::from_str(
        r#"
        validity_days = 30
        key_usage = ["digitalSignature", "keyAgreement", "contentCommitment"]
        extended_key_usage = ["serverAuth", "clientAuth", "1.3.6.1.4.1.311.20.2.2"]
        copy_san = false
        min_rsa_bits = 3072
        allowed_ec_curves = ["P-384", "prime256v1"]
        crl_validity_hours = 6
        "#,
    )
    .unwrap();
    assert_eq!(config.validity_days, 30);
    assert_eq!(config.extended_key_usage.len(), 3);
    assert_eq!(config.allowed_ec_curves, vec![EcCurve::P384, EcCurve::P256]);
    let flags = config.key_usage.flags_for(KeyAlgorithm::Rsa { bits: 2048 });
    assert!(flags.contains(KeyUsages::NonRepudiation) && flags.contains(KeyUsages::KeyAgreement));
    assert!(config.validate().is_ok());

    assert!(toml::from_str::<EmbeddedCaConfig>("extended_key_usage = [\"bogus\"]").is_err());
    assert!(toml::from_str::<EmbeddedCaConfig>("key_usage = [\"everything\"]").is_err());
    assert!(toml::from_str::<EmbeddedCaConfig>("unknown = 1").is_err());
    let bad: EmbeddedCaConfig = toml::from_str("key_usage = [\"keyCertSign\"]").unwrap();
    assert!(bad.validate().is_err());
}

/// The CA of the captured requests was made by OpenSSL (PrintableString names, three
/// RDNs, its own SKI): issuing under it must copy its subject byte for byte and use its
/// SKI as our AKI, or `openssl verify` fails.
#[tokio::test]
async fn foreign_ca_certificate_issues_verifiable_certificates() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let credential = Credential {
        key: Arc::new(SoftwareKey::from_file(&data.join("ra-ca.key.pem")).unwrap()),
        certificate: read_pem(&data.join("ra-ca.pem")).into(),
    };
    let ca = EmbeddedCa::new(credential, vec![], EmbeddedCaConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let issued = issue(&ca, &rsa_csr(2048, None, Some("DNS:b.example")))
        .await
        .unwrap();
    let cert = write_pem(dir.path(), "cert.pem", &issued.certificate);
    let ca_pem = data.join("ra-ca.pem");
    openssl(&["verify", "-CAfile", ca_pem.to_str().unwrap(), &cert]);
    let text = openssl(&["x509", "-in", &cert, "-noout", "-text"]);
    assert!(
        text.contains("84:F8:53:41:0F:D5:C5:C3:65:5C:6C:E1:00:9B:54:4A:5C:8D:A2:0F"),
        "{text}"
    );
    let crl = ca.crl().await.unwrap();
    let crl_path = dir.path().join("crl.der");
    std::fs::write(&crl_path, crl).unwrap();
    let out = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        crl_path.to_str().unwrap(),
        "-CAfile",
        ca_pem.to_str().unwrap(),
        "-noout",
        "-verify",
    ]);
    assert!(out.contains("verify OK"), "{out}");
}

/// The signer certificates real clients put in their PKCSReqs: certmonger's has a
/// 32-byte serial and a validity into 2126 (GeneralizedTime), micromdm scepclient's a
/// serial with the top bit set. Both must read, and neither was issued by us.
#[test]
fn client_signer_certificates_parse_leniently() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = dev_ca(dir.path(), EmbeddedCaConfig::default());
    for (client, serial_len) in [("certmonger", 32), ("scepclient", 17)] {
        let request = data.join(format!("{client}-pkcsreq.der"));
        let pem = openssl(&[
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            request.to_str().unwrap(),
            "-print_certs",
        ]);
        let start = pem.find("-----BEGIN CERTIFICATE-----").unwrap();
        let end = pem.find("-----END CERTIFICATE-----").unwrap() + 25;
        let (_, der) = der::pem::decode_vec(&pem.as_bytes()[start..end]).unwrap();
        let cert = ParsedCertificate::from_der(&der).unwrap();
        assert_eq!(cert.serial.len(), serial_len, "{client}");
        assert_eq!(cert.issuer, cert.subject, "{client}: self-signed");
        cert.verify_with(cert.public_key_info).unwrap();
        assert!(!ca.issued_and_valid(&der));
    }
}

/// Revocations from the store (other replicas, earlier runs) join the CRL and the
/// renewal check; known ones change nothing, so the signed CRL stays cached.
#[tokio::test]
async fn adopted_revocations_join_the_crl_once() {
    use der::Decode;
    let dir = tempfile::tempdir().unwrap();
    let (ca, _pki) = dev_ca(dir.path(), EmbeddedCaConfig::default());
    let issued = issue(&ca, &rsa_csr(2048, None, None)).await.unwrap();
    assert_eq!(ca.crl_issuer(), Some(&ca.subject[..]));
    assert!(ca.issued_and_valid(&issued.certificate));

    let at = 1_790_000_000;
    // Anything that is not a serial number is skipped: it would spoil the CRL.
    ca.adopt_revocations(&[
        (issued.serial.clone(), at),
        (vec![], at),
        (vec![0x00], at),
        (vec![0x00, 0x01], at),
        (vec![0x80], at),
        (vec![0x01; 21], at),
    ]);
    assert!(!ca.issued_and_valid(&issued.certificate));
    let crl = ca.crl().await.unwrap();
    let list =
        x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&crl).unwrap();
    let revoked = list.tbs_cert_list.revoked_certificates.unwrap();
    assert_eq!(revoked.len(), 1, "only the real serial");
    assert_eq!(revoked[0].serial_number.as_bytes(), &issued.serial[..]);
    assert_eq!(revoked[0].revocation_date.to_unix_duration().as_secs(), at);

    ca.adopt_revocations(&[(issued.serial.clone(), at + 60)]);
    assert_eq!(ca.crl().await.unwrap(), crl, "nothing new: the same CRL");
    assert!(!ca.revoke(&issued.serial).unwrap(), "already revoked");
}
