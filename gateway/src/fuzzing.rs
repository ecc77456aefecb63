//! "Decode these bytes the way fuzz target X does": one function per fuzz target.
//!
//! Not part of the gateway's API. The cargo-fuzz targets in `fuzz/fuzz_targets/` call
//! these functions, and so does the stable corpus replay `tests/fuzz_corpus.rs`, so that
//! CI checks every committed seed and every crash regression without nightly features
//! and without a second copy of the target bodies.
//!
//! Every function feeds arbitrary bytes through the real decoders, in the order the
//! gateway calls them, and throws the results away: errors are expected, a panic is a
//! bug. Keys come from the caller ([`Fixtures`]), so no test key is compiled into the
//! library.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use scep_hsm::{DecryptPadding, Key, KeyAlgorithm, KeyError, SignatureAlgorithm, SoftwareKey};
use zeroize::Zeroizing;

use crate::ca::certificate::{self as x509, ParsedCertificate, Signer};
use crate::cms::algorithms::{ContentCipher, Digest};
use crate::cms::ber::{self, tag, Tlv};
use crate::cms::envelope::{self, EnvelopedData};
use crate::cms::signed::{CertificateFields, SignedData};
use crate::config::FileConfig;
use crate::csr::CertificationRequest;
use crate::http::query::{decode_message, ScepQuery};
use crate::ra::{Credential, RaKeys};
use crate::scep::client::{self, MessageSpec, Requester};
use crate::scep::message::{oid, MessageType, Nonce, TransactionId};
use crate::scep::request::{CryptoPolicy, RequestBody, SignedRequest};

/// The files the targets need, as bytes (the callers use `include_bytes!`, so a fuzz
/// binary runs from any folder). All of them are test keys from `tests/data/`.
pub struct FixtureFiles<'a> {
    /// `ra-ca.pem`: the RA certificate (PEM).
    pub ra_certificate_pem: &'a [u8],
    /// `ra-ca.key.pem`: its PKCS#8 key, which opens the captured requests.
    pub ra_key_pem: &'a [u8],
    /// The captured clients: (PKCS#8 key PEM, a PKCSReq it signed). The signer
    /// certificate inside the PKCSReq is the one their CertReps are encrypted to.
    pub clients: &'a [(&'a [u8], &'a [u8])],
    /// `fuzz-csr-p256.key.pem`: the key [`csr_info`] signs mutated requests with.
    pub csr_key_pem: &'a [u8],
}

/// The keys, loaded once per process.
pub struct Fixtures {
    ra: RaKeys,
    requesters: Vec<Requester>,
    csr_signer: Signer,
}

impl Fixtures {
    /// Loads the keys. Panics on bad fixture files (a broken harness, not a finding).
    pub fn new(files: &FixtureFiles<'_>) -> Self {
        let ra_certificate = pem(files.ra_certificate_pem, "CERTIFICATE");
        let ra = Credential {
            key: memoized_key("ra", files.ra_key_pem),
            certificate: ra_certificate.into(),
        };
        let requesters = files
            .clients
            .iter()
            .enumerate()
            .map(|(i, (key_pem, request))| {
                let request = SignedRequest::parse(request).expect("a fixture PKCSReq parses");
                Requester::with_certificate(
                    memoized_key(&format!("client-{i}"), key_pem),
                    request.header.signer_certificate.into(),
                )
            })
            .collect();
        let csr_key =
            SoftwareKey::from_pkcs8("fuzz-csr".into(), &private_key_der(files.csr_key_pem))
                .expect("the CSR fixture key loads");
        Fixtures {
            ra: RaKeys {
                signer: ra.clone(),
                decrypter: ra,
                previous: Vec::new(),
            },
            requesters,
            csr_signer: Signer::new(Arc::new(csr_key)),
        }
    }

    /// The RA credentials (signer = decrypter).
    pub fn ra(&self) -> &RaKeys {
        &self.ra
    }

    /// The signer [`csr_info`] uses; its SubjectPublicKeyInfo is what seeds for that
    /// target must carry for the signature to verify.
    pub fn csr_signer(&self) -> &Signer {
        &self.csr_signer
    }
}

fn pem(bytes: &[u8], label: &str) -> Vec<u8> {
    let (found, der) = der::pem::decode_vec(bytes).expect("a fixture PEM file");
    assert_eq!(found, label, "fixture PEM label");
    der
}

/// A PKCS#8 key from a `PRIVATE KEY` PEM file, or from an `RSA PRIVATE KEY` (PKCS#1)
/// one wrapped into PKCS#8 (RFC 5208 §5): micromdm scepclient's key is PKCS#1.
fn private_key_der(key_pem: &[u8]) -> Vec<u8> {
    let (label, der) = der::pem::decode_vec(key_pem).expect("a fixture PEM file");
    match label {
        "PRIVATE KEY" => der,
        "RSA PRIVATE KEY" => ber::der_sequence(&[
            &ber::der_small_uint(0),
            &ber::der_sequence(&[
                &ber::der_oid(&crate::cms::signed::oid::RSA_ENCRYPTION),
                &[tag::NULL, 0],
            ]),
            &ber::der_octet_string(&der),
        ]),
        other => panic!("fixture key PEM label {other}"),
    }
}

fn memoized_key(label: &str, key_pem: &[u8]) -> Arc<dyn Key> {
    let key = SoftwareKey::from_pkcs8(label.into(), &private_key_der(key_pem))
        .expect("a fixture key loads");
    Arc::new(MemoizedKey {
        inner: key,
        memo: Mutex::new(HashMap::new()),
    })
}

/// A software key whose RSA decryptions are remembered, for speed only: a 2048-bit
/// private-key operation costs about a millisecond, and most fuzz inputs carry one of
/// the seeds' few encryptedKeys unchanged. The answer for a ciphertext never changes
/// (the key and PKCS#1/OAEP decoding are deterministic), so the gateway code under
/// test sees exactly what the real key would give.
#[derive(Debug)]
struct MemoizedKey {
    inner: SoftwareKey,
    memo: Mutex<HashMap<(DecryptPadding, Vec<u8>), Decrypted>>,
}

/// A remembered decryption: the plaintext, or `None` for `KeyError::Operation`.
type Decrypted = Option<Zeroizing<Vec<u8>>>;

/// Entries kept before the memo starts over (bounds the fuzzer's memory).
const MEMO_ENTRIES: usize = 4096;

impl Key for MemoizedKey {
    fn label(&self) -> &str {
        self.inner.label()
    }

    fn public_key_info(&self) -> &[u8] {
        self.inner.public_key_info()
    }

    fn algorithm(&self) -> KeyAlgorithm {
        self.inner.algorithm()
    }

    fn sign(&self, alg: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.inner.sign(alg, message)
    }

    fn decrypt(
        &self,
        padding: DecryptPadding,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let entry = (padding, ciphertext.to_vec());
        if let Some(known) = self.memo.lock().expect("memo lock").get(&entry) {
            return known.clone().ok_or(KeyError::Operation);
        }
        let result = self.inner.decrypt(padding, ciphertext);
        // Only the two deterministic answers are remembered.
        let remembered = match &result {
            Ok(plain) => Some(plain.clone()),
            Err(KeyError::Operation) => None,
            Err(_) => return result,
        };
        let mut memo = self.memo.lock().expect("memo lock");
        if memo.len() >= MEMO_ENTRIES {
            memo.clear();
        }
        memo.insert(entry, remembered);
        result
    }
}

/// Every fuzz target, by the name of its folder in `fuzz/fuzz_targets/` and
/// `fuzz/corpus/`.
pub const TARGETS: &[&str] = &[
    "ber",
    "signed_data",
    "enveloped_data",
    "scep_request",
    "csr",
    "csr_info",
    "query",
    "certrep",
    "certificate",
    "config",
    "webhook_answer",
    "intune_answer",
];

/// Runs target `name` on `data` (the corpus replay's entry point); `false` for an
/// unknown name.
pub fn run(name: &str, fixtures: &Fixtures, data: &[u8]) -> bool {
    match name {
        "ber" => ber(data),
        "signed_data" => signed_data(data),
        "enveloped_data" => enveloped_data(fixtures, data),
        "scep_request" => scep_request(fixtures, data),
        "csr" => csr(data),
        "csr_info" => csr_info(fixtures, data),
        "query" => query(data),
        "certrep" => certrep(fixtures, data),
        "certificate" => certificate(data),
        "config" => config(data),
        "webhook_answer" => webhook_answer(data),
        "intune_answer" => intune_answer(data),
        _ => return false,
    }
    true
}

// ---------------------------------------------------------------------------------------
// One function per fuzz target. Each returns nothing: only a panic (or a sanitizer
// report) is a finding.
// ---------------------------------------------------------------------------------------

/// Target `ber`: the lenient BER reader (`cms/ber.rs`). Reads one element, then walks
/// the whole tree with every accessor the CMS code uses.
pub fn ber(data: &[u8]) {
    if let Ok((tlv, _rest)) = ber::parse_prefix(data) {
        walk(tlv);
    }
    let _ = ber::parse(data);
}

fn walk(tlv: Tlv<'_>) {
    let _ = (tlv.raw().len(), tlv.content().len(), tlv.is_indefinite());
    let _ = tlv.oid();
    let _ = tlv.small_uint();
    let _ = tlv.integer_bytes();
    let _ = tlv.octet_string();
    let _ = tlv.implicit_octet_string(0);
    let _ = tlv.bit_string_bytes();
    let _ = tlv.text();
    let _ = tlv.explicit(0, "fuzz");
    if let Ok(mut children) = tlv.children() {
        let _ = children.peek_tag();
        let _ = children.clone().optional(tag::SEQUENCE);
        let _ = children.clone().optional_context(0);
        // Nesting is bounded by ber::MAX_DEPTH, so this recursion is too.
        while let Ok(Some(child)) = children.next_tlv() {
            walk(child);
        }
        let _ = children.finish();
    }
}

/// Target `signed_data`: `SignedData::parse` (`cms/signed.rs`), then what the request
/// path does with it: the single signer, its certificate, the signature check, and
/// the fields of every certificate included.
pub fn signed_data(data: &[u8]) {
    let Ok(signed) = SignedData::parse(data) else {
        return;
    };
    for certificate in &signed.certificates {
        let _ = CertificateFields::parse(certificate);
    }
    for signer in &signed.signers {
        for attribute in &signer.signed_attrs {
            let _ = attribute.single_value();
        }
    }
    if let Ok(signer) = signed.single_signer() {
        if let Ok(certificate) = signed.signer_certificate(signer) {
            let _ = signed.verify_signer(signer, certificate);
        }
    }
}

/// Target `enveloped_data`: `EnvelopedData::parse` and `envelope::open` with the RA
/// key (`cms/envelope.rs`), DES allowed so that every cipher is reached.
pub fn enveloped_data(fixtures: &Fixtures, data: &[u8]) {
    if let Ok(parsed) = EnvelopedData::parse(data) {
        let _ = parsed.cipher();
    }
    let _ = envelope::open_for(data, &fixtures.ra.decrypters(), true);
}

/// Target `scep_request`: the server's path for a PKIOperation body
/// (`scep/request.rs`): `SignedRequest::parse` → `verify` → `open` with the RA key
/// (legacy DES on), then the CSR of a PKCSReq/RenewalReq, as `enroll.rs` does.
pub fn scep_request(fixtures: &Fixtures, data: &[u8]) {
    let Ok(request) = SignedRequest::parse(data) else {
        return;
    };
    let _ = request.recipient_nonce();
    let _ = request.attribute(&oid::PKI_STATUS);
    if request.verify().is_err() {
        return;
    }
    let Ok(opened) = request.open(&fixtures.ra, CryptoPolicy { legacy_des: true }) else {
        return;
    };
    if let RequestBody::CertificationRequest(der) = &opened.body {
        csr_accessors(der);
    }
}

/// Target `csr`: `CertificationRequest::from_der` (`csr.rs`) on the bytes as given.
/// Mutated requests rarely keep a valid self-signature, so this mostly covers the
/// outer structure, the key and the signature check; [`csr_info`] covers the rest.
pub fn csr(data: &[u8]) {
    csr_accessors(data);
}

/// Target `csr_info`: the bytes are a `certificationRequestInfo`; they are signed with
/// the fixture P-256 key and the request is parsed. When the info carries that key's
/// SubjectPublicKeyInfo (as the seeds do) the self-signature verifies, and the fuzzer
/// reaches what comes after the proof of possession: subject, challengePassword,
/// extensionRequest, subjectAltName and the size limits.
pub fn csr_info(fixtures: &Fixtures, data: &[u8]) {
    if data.len() > crate::csr::MAX_CSR_LEN {
        return;
    }
    if let Ok(request) = fixtures.csr_signer.sign_tbs(data) {
        csr_accessors(&request);
    }
}

fn csr_accessors(der: &[u8]) {
    let Ok(csr) = CertificationRequest::from_der(der) else {
        return;
    };
    let _ = (csr.subject(), csr.subject_der(), csr.subject_is_empty());
    let _ = (csr.key_algorithm(), csr.key_bits(), csr.public_key_info());
    let _ = (csr.challenge_password(), csr.subject_alt_name());
    let _ = format!("{csr:?}");
}

/// Target `query`: a GET request target (`http/query.rs`): the query string split off
/// at the first `?` as hyper does, `ScepQuery::parse`, `message_text` (GetCACert) and
/// `decode_message` (PKIOperation). Non-UTF-8 input is read lossily (hyper only hands
/// over ASCII, so this is a superset).
pub fn query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let query = text.split_once('?').map_or(&*text, |(_, q)| q);
    let parsed = ScepQuery::parse(query);
    let _ = parsed.message_text();
    if let Some(message) = parsed.message.as_deref() {
        let _ = decode_message(message);
    }
    let _ = decode_message(&text);
}

/// Target `certrep`: what the gateway reads from an upstream SCEP CA
/// (`scep/client.rs`): `ca_certificates` and `encryption_certificate` (a GetCACert
/// answer), and `Requester::read_reply` (a CertRep) with the captured clients' keys.
/// The reply's own transactionID and recipientNonce are taken as the expected ones,
/// so that the fuzzer gets past those two comparisons.
pub fn certrep(fixtures: &Fixtures, data: &[u8]) {
    if let Ok(certificates) = client::ca_certificates(data) {
        let _ = client::encryption_certificate(&certificates);
    }
    let spec = expected_by(data).unwrap_or_else(|| MessageSpec {
        message_type: MessageType::PkcsReq,
        transaction_id: TransactionId::new("fuzz".into()).expect("a valid transactionID"),
        sender_nonce: Nonce([0; 16]),
        digest: Digest::Sha256,
        cipher: ContentCipher::Aes256Cbc,
    });
    for requester in &fixtures.requesters {
        let _ = requester.read_reply(data, &spec, true);
    }
}

/// The MessageSpec a CertRep answers, read from the CertRep itself.
fn expected_by(data: &[u8]) -> Option<MessageSpec> {
    let reply = SignedRequest::parse(data).ok()?;
    let recipient_nonce = reply.recipient_nonce().ok()??;
    Some(MessageSpec {
        message_type: MessageType::PkcsReq,
        transaction_id: reply.header.transaction_id.clone(),
        sender_nonce: recipient_nonce,
        digest: reply.header.digest,
        cipher: ContentCipher::Aes256Cbc,
    })
}

/// Target `certificate`: a certificate from outside (a signer certificate, an
/// upstream CA's): `ParsedCertificate::from_der` (`ca/certificate.rs`) with its
/// extension lookups and a self-signature check, `CertificateFields::parse`
/// (`cms/signed.rs`) and `envelope::check_recipient` (can a reply be sealed to it).
pub fn certificate(data: &[u8]) {
    if let Ok(parsed) = ParsedCertificate::from_der(data) {
        let _ = parsed.subject_key_identifier();
        let _ = parsed.extension(x509::oid::KEY_USAGE);
        let _ = x509::public_key_algorithm(parsed.public_key_info);
        let _ = parsed.verify_with(parsed.public_key_info);
    }
    let _ = CertificateFields::parse(data).map(|f| f.issuer_and_serial_der());
    let _ = envelope::check_recipient(data);
}

/// Target `config`: the TOML configuration (`config.rs`): `FileConfig::from_toml`
/// (serde, path resolution, the static checks), then the profile's own validation
/// and the derived claim lease, as `service.rs` uses them. Non-UTF-8 is refused
/// before parsing, as `load` refuses it when reading the file.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = FileConfig::from_toml(text, Path::new("/fuzz/gateway.toml")) {
        let _ = config.profile.validate();
        let _ = config.store.claim_lease(&config.server);
    }
}

/// Target `webhook_answer`: a challenge webhook's 2xx answer body
/// (`challenge/webhook.rs`): `Answer::read`, then `verdict` (profile or refusal text).
pub fn webhook_answer(data: &[u8]) {
    if let Ok(answer) = crate::challenge::webhook::Answer::read(data) {
        let _ = answer.verdict().map_err(|e| e.to_string());
    }
}

/// Target `intune_answer`: the three JSON answers the Intune client reads
/// (`challenge/intune.rs`), each given the same bytes: Entra ID's token answer
/// (`read_token`, including the refresh time derived from `expires_in`), Graph's
/// service discovery (`read_discovery`) and a ScepAction's `{"code",
/// "errorDescription"}` (`read_action`).
pub fn intune_answer(data: &[u8]) {
    use crate::challenge::intune;
    if let Ok((_, fresh_for)) = intune::read_token(data) {
        let _ = std::time::Instant::now() + fresh_for;
    }
    let _ = intune::read_discovery(data);
    let _ = intune::read_action("validateRequest", data).map_err(|e| e.to_string());
}
