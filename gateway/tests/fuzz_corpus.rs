//! The fuzz corpora, replayed on the stable toolchain (no libFuzzer, no nightly flags).
//!
//! Every committed seed in `fuzz/corpus/<target>/` (files named `seed-*`) and every
//! crash regression in `tests/data/fuzz-regressions/` (files named `<target>-*`) goes
//! through the same function the fuzz target calls (`scep_gateway::fuzzing`), so CI
//! checks the corpus on every run. Files that a local fuzzing run added to the corpus
//! folders are git-ignored and not replayed here: this test stays well under 5 s.
//!
//! `write_seeds` (ignored) regenerates the seeds from the captures in `tests/data/`:
//! `cargo test -p scep-gateway --test fuzz_corpus -- --ignored write_seeds`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use scep_gateway::cms::ber;
use scep_gateway::cms::envelope;
use scep_gateway::cms::signed;
use scep_gateway::fuzzing::{self, FixtureFiles, Fixtures, TARGETS};
use scep_gateway::ra::Credential;
use scep_gateway::scep::request::{CryptoPolicy, RequestBody, SignedRequest};

fn fixtures() -> Fixtures {
    Fixtures::new(&FixtureFiles {
        ra_certificate_pem: include_bytes!("data/ra-ca.pem"),
        ra_key_pem: include_bytes!("data/ra-ca.key.pem"),
        clients: &[
            (
                include_bytes!("data/certmonger-client.key.pem"),
                include_bytes!("data/certmonger-pkcsreq.der"),
            ),
            (
                include_bytes!("data/scepclient-client.key.pem"),
                include_bytes!("data/scepclient-pkcsreq.der"),
            ),
        ],
        csr_key_pem: include_bytes!("data/fuzz-csr-p256.key.pem"),
    })
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn corpus_dir() -> PathBuf {
    manifest_dir().join("../fuzz/corpus")
}

fn regressions_dir() -> PathBuf {
    manifest_dir().join("tests/data/fuzz-regressions")
}

/// The files of `dir` whose names start with `prefix`, sorted; none if `dir` is missing.
fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    out.sort();
    out
}

/// Runs `target` on each file and returns the files that panicked.
fn replay(fixtures: &Fixtures, target: &str, paths: &[PathBuf]) -> Vec<String> {
    let mut panicked = Vec::new();
    for path in paths {
        let data = std::fs::read(path).unwrap();
        let known = catch_unwind(AssertUnwindSafe(|| fuzzing::run(target, fixtures, &data)));
        match known {
            Ok(true) => {}
            Ok(false) => panic!("{}: no fuzz target named {target}", path.display()),
            Err(_) => panicked.push(path.display().to_string()),
        }
    }
    panicked
}

#[test]
fn every_seed_of_every_target_decodes_without_panic() {
    let fixtures = fixtures();
    // Every corpus folder belongs to a target...
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(TARGETS.contains(&name.as_str()), "fuzz/corpus/{name}");
    }
    // ...and every target has seeds, none of which panics.
    let mut panicked = Vec::new();
    for target in TARGETS {
        let seeds = files(&corpus_dir().join(target), "seed-");
        assert!(!seeds.is_empty(), "fuzz/corpus/{target} has no seed-* file");
        panicked.extend(replay(&fixtures, target, &seeds));
    }
    assert!(panicked.is_empty(), "panicked on: {panicked:#?}");
}

#[test]
fn every_fuzz_regression_decodes_without_panic() {
    let fixtures = fixtures();
    let mut panicked = Vec::new();
    for path in files(&regressions_dir(), "") {
        let name = path.file_name().unwrap().to_str().unwrap();
        // `<target>-<what>`: target names have no `-`.
        let (target, _) = name
            .split_once('-')
            .unwrap_or_else(|| panic!("{name}: expected <target>-<what>"));
        panicked.extend(replay(&fixtures, target, std::slice::from_ref(&path)));
    }
    assert!(panicked.is_empty(), "panicked on: {panicked:#?}");
}

// ---------------------------------------------------------------------------------------
// Seed generation
// ---------------------------------------------------------------------------------------

fn data(name: &str) -> Vec<u8> {
    std::fs::read(manifest_dir().join("tests/data").join(name)).unwrap()
}

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = corpus_dir().join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

/// The eContent of a pkiMessage: its EnvelopedData.
fn envelope_of(message: &[u8]) -> Vec<u8> {
    signed::SignedData::parse(message).unwrap().content.unwrap()
}

/// The certificationRequestInfo of a DER CSR.
fn info_of(csr: &[u8]) -> Vec<u8> {
    let mut fields = ber::parse(csr).unwrap().sequence("csr").unwrap();
    fields.required("info").unwrap().raw().to_vec()
}

#[test]
#[ignore = "writes fuzz/corpus/*/seed-*; run by hand when the captures change"]
fn write_seeds() {
    use scep_gateway::ca::certificate as x509;
    use scep_gateway::csr;

    let fixtures = fixtures();
    let (_, ra_cert) = der::pem::decode_vec(&data("ra-ca.pem")).unwrap();
    let requests = [
        ("certmonger-pkcsreq", data("certmonger-pkcsreq.der")),
        ("scepclient-pkcsreq", data("scepclient-pkcsreq.der")),
    ];
    let replies = [
        ("certmonger-certrep", data("certmonger-certrep.der")),
        ("scepclient-certrep", data("scepclient-certrep.der")),
    ];
    let get_target = data("certmonger-get-request-target.txt");

    // The CSRs inside the captured requests, and the clients' self-signed certificates.
    let mut csrs = Vec::new();
    let mut client_certs = Vec::new();
    for (name, message) in &requests {
        let request = SignedRequest::parse(message).unwrap();
        client_certs.push((name, request.header.signer_certificate.clone()));
        let opened = request
            .open(fixtures.ra(), CryptoPolicy { legacy_des: true })
            .unwrap();
        let RequestBody::CertificationRequest(der) = opened.body else {
            panic!("{name}: not a CSR");
        };
        csrs.push((name.replace("pkcsreq", "csr"), der));
    }

    // The certs-only SignedData inside certmonger's CertRep (opened with its key), and
    // the certificate it carries; a certs-only GetCACert answer of the RA certificate.
    let certmonger_key = scep_hsm::SoftwareKey::from_file(
        &manifest_dir().join("tests/data/certmonger-client.key.pem"),
    )
    .unwrap();
    let certmonger = Credential {
        key: Arc::new(certmonger_key),
        certificate: client_certs[0].1.clone().into(),
    };
    let certs_only = envelope::open(&envelope_of(&replies[0].1), &certmonger, true)
        .unwrap()
        .content
        .to_vec();
    let issued = signed::SignedData::parse(&certs_only)
        .unwrap()
        .certificates
        .remove(0);
    let ra_cacert = signed::certs_only(&[&ra_cert]);

    // CSRs signed with the csr_info key: plain, and with a subjectAltName and keyUsage
    // extension request and an empty subject.
    let signer = fixtures.csr_signer();
    let subject = x509::common_name("fuzz-device").unwrap();
    let general_names = ber::der_sequence(&[
        &ber::der_tlv(0x82, &[b"device.example"]), // dNSName
        &ber::der_tlv(0x81, &[b"a@b.example"]),    // rfc822Name
    ]);
    let san = x509::raw_extension(x509::oid::SUBJECT_ALT_NAME, false, general_names).unwrap();
    let ku = x509::key_usage(x509_cert::ext::pkix::KeyUsages::DigitalSignature).unwrap();
    let p256_plain = csr::build(signer, &subject, Some("secret123"), &[]).unwrap();
    let p256_exts = csr::build(signer, &[0x30, 0x00], None, &[san, ku]).unwrap();

    for (name, bytes) in requests.iter().chain(&replies) {
        write_seed("ber", name, bytes);
        write_seed("signed_data", name, bytes);
        write_seed("scep_request", name, bytes);
        write_seed(
            "enveloped_data",
            &name.replace('-', "-envelope-"),
            &envelope_of(bytes),
        );
    }
    for (name, bytes) in &replies {
        write_seed("certrep", name, bytes);
    }
    write_seed("certrep", "ra-cacert-certs-only", &ra_cacert);
    write_seed("certrep", "ra-cacert.der", &ra_cert);
    write_seed("signed_data", "certmonger-certs-only", &certs_only);
    write_seed("signed_data", "ra-cacert-certs-only", &ra_cacert);

    write_seed("ber", "ra-ca.der", &ra_cert);
    write_seed("certificate", "ra-ca.der", &ra_cert);
    write_seed("certificate", "certmonger-issued.der", &issued);
    for (name, cert) in &client_certs {
        let name = name.replace("pkcsreq", "signer.der");
        write_seed("certificate", &name, cert);
    }
    for (name, der) in &csrs {
        write_seed("csr", name, der);
        write_seed("ber", name, der);
    }
    write_seed("csr", "p256-challenge", &p256_plain);
    write_seed("csr", "p256-san-empty-subject", &p256_exts);
    write_seed("csr_info", "p256-challenge", &info_of(&p256_plain));
    write_seed("csr_info", "p256-san-empty-subject", &info_of(&p256_exts));

    write_seed("query", "certmonger-get-pkioperation", &get_target);
    write_seed(
        "query",
        "getcacert",
        b"/cgi-bin/pkiclient.exe?operation=GetCACert&message=CA%20one",
    );
    write_seed("query", "getcacaps", b"/scep?Operation=GetCACaps");

    let example = scep_gateway::config::example("c.txt");
    write_seed("config", "example.toml", example.as_bytes());
    let redis_pkcs11 = example
        .replace("backend = \"memory\"", "backend = \"redis\"")
        .replace(
            "# url = \"redis://127.0.0.1:6379/0\"",
            "url = \"rediss://cache.example:6380/0\"\nkey_prefix = \"a:\"\nclaim_lease_secs = 45",
        )
        .replace(
            "key = \"ca.key.pem\"",
            "key = { pkcs11 = { module = \"/m.so\", token_label = \"t\", key_label = \"ca\", pin_file = \"pin.txt\" } }",
        )
        .replace(
            "# chain = [\"root.pem\"]",
            "chain = [\"root.pem\"]\n[[ra.previous]]\ncertificate = \"old.pem\"\nkey = \"old.key.pem\"\n[next]\ncertificates = [\"next.pem\"]",
        );
    let parsed = scep_gateway::config::FileConfig::from_toml(&redis_pkcs11, Path::new("/g.toml"));
    assert!(parsed.is_ok(), "{parsed:?}");
    write_seed("config", "redis-pkcs11.toml", redis_pkcs11.as_bytes());
    // The JSON answers of a challenge webhook, Entra ID, Graph and Intune (README,
    // "Challenges"; ../shared/docs/intune-scep-validation.md).
    for (target, name, json) in [
        (
            "webhook_answer",
            "allow-profile.json",
            r#"{"allow": true, "profile": "wifi", "reason": null}"#,
        ),
        (
            "webhook_answer",
            "deny-reason.json",
            r#"{"allow": false, "reason": "device not in inventory"}"#,
        ),
        ("webhook_answer", "allow-minimal.json", r#"{"allow": true}"#),
        (
            "intune_answer",
            "token.json",
            r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.e30.c2ln"}"#,
        ),
        (
            "intune_answer",
            "token-string-expiry.json",
            r#"{"token_type":"Bearer","expires_in":"3599","access_token":"eyJ0eXAiOiJKV1QifQ.e30.c2ln"}"#,
        ),
        (
            "intune_answer",
            "token-error.json",
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#,
        ),
        (
            "intune_answer",
            "discovery.json",
            r#"{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#servicePrincipals('0000000a-0000-0000-c000-000000000000')/endpoints","value":[{"id":"1","capability":"Intune","providerId":null,"providerName":"ScepRequestValidationFEService","providerResourceId":null,"uri":"https://fef.msua06.manage.microsoft.com/ScepRequestValidationFEService"},{"providerName":"IntuneSomethingElse","uri":"https://example"}]}"#,
        ),
        (
            "intune_answer",
            "action-success.json",
            r#"{"code":"Success","errorDescription":""}"#,
        ),
        (
            "intune_answer",
            "action-failure.json",
            r#"{"code":"ChallengeExpired","errorDescription":"The challenge has expired."}"#,
        ),
    ] {
        write_seed(target, name, json.as_bytes());
    }
}
