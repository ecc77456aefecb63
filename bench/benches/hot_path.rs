//! Criterion benches of the SCEP hot path: each step of a PKCSReq enrollment, the whole
//! enrollment, and the bare private-key operations it is made of, so that the
//! protocol's cost can be read beside the RSA cost on the same machine, in the same run.
//!
//! ```text
//! cargo bench -p scep-bench -- --warm-up-time 1 --measurement-time 3
//! cargo test  -p scep-bench --benches          # each bench once, as a smoke test
//! ```
//! Setup (a development PKI per key variant, two device keys, pools of messages) takes
//! a few seconds and is shared by every group. The `hsm-rsa2048` variant puts the CA
//! and RA keys in a SoftHSM2 token made in a temp dir (`scep_bench::hsm`): the
//! enrollment groups and the bare `rsa2048/{sign,decrypt}/Pkcs11Key` run through the
//! gateway's `Pkcs11Key` and its session pool. SoftHSM2 missing: the setup panics and
//! says so (`apt-get install softhsm2`). The overhead ratio itself is printed by
//! the `ratio` binary, which interleaves both sides (see `src/bin/ratio.rs`).

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use scep_bench::{Message, Pki, PrivateOps, Variant};
use scep_gateway::ca::{Ca, IssueRequest};
use scep_gateway::cms::algorithms::ContentCipher;
use scep_gateway::csr::CertificationRequest;
use scep_gateway::scep::certrep::{self, Outcome};
use scep_gateway::scep::client::Requester;
use scep_gateway::scep::request::{CryptoPolicy, Request, RequestBody, SignedRequest};
use scep_hsm::{DecryptPadding, Key, SignatureAlgorithm};

/// Distinct messages per pool. Criterion cycles through them; each differs in every
/// byte that matters (transactionID, nonce, content key, IV, signatures), and nothing
/// in the steps benched caches anything anyway.
const POOL: usize = 32;

/// Everything the groups share, built once.
struct Setup {
    pkis: Vec<Pki>,
    requesters: Vec<Requester>,
    rt: tokio::runtime::Runtime,
}

impl Setup {
    fn pki(&self, variant: Variant) -> &Pki {
        self.pkis
            .iter()
            .find(|p| p.variant == variant)
            .unwrap_or_else(|| unreachable!("every variant is set up"))
    }

    fn messages(&self, pki: &Pki, cipher: ContentCipher, tag: &str) -> Vec<Message> {
        scep_bench::messages(&self.requesters, &pki.ra, cipher, tag, POOL)
            .unwrap_or_else(|e| panic!("building the {tag} messages: {e}"))
    }
}

fn setup() -> Setup {
    let build = || -> scep_bench::Result<Setup> {
        // The HSM PKI first: it sets SOFTHSM2_CONF before anything loads the module.
        let hsm = scep_bench::hsm_pki(None).map_err(|e| format!("the HSM variant: {e}"))?;
        let mut pkis = scep_bench::pkis(&Variant::ALL)?;
        pkis.push(hsm);
        Ok(Setup {
            pkis,
            requesters: scep_bench::requesters(2)?,
            rt: scep_bench::runtime()?,
        })
    };
    build().unwrap_or_else(|e| panic!("bench setup: {e}"))
}

/// Cycles through a pool: a new index on every call, across batches and samples.
fn cycle(len: usize) -> impl FnMut() -> usize {
    let next = AtomicUsize::new(0);
    move || next.fetch_add(1, Ordering::Relaxed) % len
}

fn ciphers() -> [(ContentCipher, &'static str); 2] {
    [
        (ContentCipher::Aes128Cbc, "aes128"),
        (ContentCipher::Aes256Cbc, "aes256"),
    ]
}

fn parse_verify(bytes: &[u8]) -> SignedRequest {
    let signed = SignedRequest::parse(bytes).expect("the pool's messages parse");
    signed.verify().expect("the pool's messages verify");
    signed
}

/// Reading a request: signature check, envelope decryption, both.
fn pkcsreq(c: &mut Criterion, s: &Setup) {
    let pki = s.pki(Variant::Rsa2048);
    for (cipher, name) in ciphers() {
        let pool = s.messages(pki, cipher, name);

        let mut next = cycle(POOL);
        c.bench_function(&format!("pkcsreq/parse_verify/{name}"), |b| {
            b.iter(|| parse_verify(black_box(&pool[next()].bytes)))
        });

        // `open` consumes the parsed request: parse and verify outside the timing.
        let mut next = cycle(POOL);
        c.bench_function(&format!("pkcsreq/open/{name}"), |b| {
            b.iter_batched(
                || parse_verify(&pool[next()].bytes),
                |signed| signed.open(&pki.ra, CryptoPolicy::default()),
                BatchSize::SmallInput,
            )
        });

        let mut next = cycle(POOL);
        c.bench_function(&format!("pkcsreq/parse_verify_open/{name}"), |b| {
            b.iter(|| {
                parse_verify(black_box(&pool[next()].bytes))
                    .open(&pki.ra, CryptoPolicy::default())
                    .expect("the pool's messages open")
            })
        });
    }
}

/// The requests of a pool, verified and decrypted (the input of issuance and CertRep).
fn opened(pki: &Pki, pool: &[Message]) -> Vec<Request> {
    pool.iter()
        .map(|m| {
            parse_verify(&m.bytes)
                .open(&pki.ra, CryptoPolicy::default())
                .expect("the pool's messages open")
        })
        .collect()
}

fn csr_der(request: &Request) -> &[u8] {
    match &request.body {
        RequestBody::CertificationRequest(der) => der,
        _ => unreachable!("the pool holds PKCSReqs"),
    }
}

/// Issuance by the embedded CA: CSR parse and self-signature check, TBSCertificate,
/// one CA signature (on tokio's blocking pool, as in the server).
fn issue(c: &mut Criterion, s: &Setup) {
    let mut group = c.benchmark_group("issue/embedded_ca");
    for variant in [Variant::Rsa2048, Variant::CaP256] {
        let pki = s.pki(variant);
        let requests = opened(pki, &s.messages(pki, ContentCipher::Aes256Cbc, "issue"));
        let mut next = cycle(POOL);
        group.bench_function(variant.name(), |b| {
            b.iter(|| {
                let csr = CertificationRequest::from_der(csr_der(&requests[next()]))
                    .expect("the pool's CSRs parse");
                s.rt.block_on(pki.ca.issue(IssueRequest {
                    csr: &csr,
                    renewing: None,
                }))
                .expect("the CA issues")
            })
        });
    }
    group.finish();
}

/// The CertRep: certs-only SignedData, envelope to the device, RA signature.
fn certrep(c: &mut Criterion, s: &Setup) {
    let mut group = c.benchmark_group("certrep/build");
    for variant in [Variant::Rsa2048, Variant::Ra3072] {
        let pki = s.pki(variant);
        let requests = opened(pki, &s.messages(pki, ContentCipher::Aes256Cbc, "certrep"));
        // Real issued certificates, so the envelope carries what a device receives.
        let replies: Vec<Outcome> = requests
            .iter()
            .map(|r| {
                let csr = CertificationRequest::from_der(csr_der(r)).expect("CSR parses");
                let issued =
                    s.rt.block_on(pki.ca.issue(IssueRequest {
                        csr: &csr,
                        renewing: None,
                    }))
                    .expect("the CA issues");
                let mut certificates = vec![issued.certificate];
                certificates.extend(pki.ca.chain().iter().cloned());
                Outcome::Issued { certificates }
            })
            .collect();
        let mut next = cycle(POOL);
        group.bench_function(variant.name(), |b| {
            b.iter(|| {
                let i = next();
                certrep::build(
                    &pki.ra.signer,
                    &requests[i].header,
                    Some(requests[i].cipher),
                    &replies[i],
                )
                .expect("the CertRep builds")
            })
        });
    }
    group.finish();
}

/// One enrollment, all steps, beside its three private operations done bare: the two
/// lines to compare in the report.
fn enrollment(c: &mut Criterion, s: &Setup) {
    let mut group = c.benchmark_group("enrollment");
    for variant in Variant::ALL.into_iter().chain([Variant::Hsm]) {
        let pki = s.pki(variant);
        let pool = s.messages(pki, ContentCipher::Aes256Cbc, "e2e");
        // A broken enrollment must not be timed as a fast one.
        let reply = scep_bench::enroll(pki, &s.rt, &pool[0].bytes).expect("enrollment works");
        scep_bench::check_reply(&s.requesters, &pool[0], &reply).expect("the reply is right");

        let mut next = cycle(POOL);
        group.bench_function(BenchmarkId::new("end_to_end", variant.name()), |b| {
            b.iter(|| scep_bench::enroll(pki, &s.rt, &pool[next()].bytes).expect("enrolls"))
        });

        let ops = PrivateOps::new(pki, POOL).expect("baseline setup");
        let mut next = cycle(POOL);
        group.bench_function(BenchmarkId::new("private_ops", variant.name()), |b| {
            b.iter(|| ops.all(next()).expect("private operations"))
        });

        // The server's own function, store and challenge included. The store answers a
        // repeated transactionID from memory, so every iteration gets a fresh message
        // (built outside the timing).
        let gateway = scep_bench::gateway(pki).expect("gateway");
        let serial = AtomicUsize::new(0);
        group.bench_function(BenchmarkId::new("pipeline", variant.name()), |b| {
            b.iter_batched(
                || {
                    let tag = format!("pipe-{}", serial.fetch_add(1, Ordering::Relaxed));
                    let m = scep_bench::messages(
                        &s.requesters,
                        &pki.ra,
                        ContentCipher::Aes256Cbc,
                        &tag,
                        1,
                    )
                    .expect("message");
                    bytes::Bytes::from(m.into_iter().next().expect("one message").bytes)
                },
                |msg| {
                    let (reply, summary) =
                        s.rt.block_on(scep_gateway::enroll::pki_operation(gateway.clone(), msg));
                    assert_eq!(summary.outcome, "success", "{:?}", summary.detail);
                    reply
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The bare private operations through `SoftwareKey` (static dispatch) and through
/// `Arc<dyn Key>` (what the gateway holds): the baseline of everything above. For
/// RSA-2048 also through `Pkcs11Key` (the SoftHSM2 RA key, one call through the session
/// pool: take a logged-in session, C_SignInit/C_Sign or C_DecryptInit/C_Decrypt, give it
/// back).
fn bare_ops(c: &mut Criterion, s: &Setup) {
    let software = |v| {
        s.pki(v)
            .ra_software
            .clone()
            .unwrap_or_else(|| unreachable!("software variant"))
    };
    let rsa2048 = software(Variant::Rsa2048);
    let rsa3072 = software(Variant::Ra3072);
    let hsm = s.pki(Variant::Hsm).ra_key.clone();
    for (name, key) in [("rsa2048", rsa2048), ("rsa3072", rsa3072)] {
        let in_token = (name == "rsa2048").then(|| hsm.clone());
        let dynamic: Arc<dyn Key> = key.clone();
        // A CertRep's signed attributes are about this long.
        let message = vec![0xa5u8; 250];
        let mut group = c.benchmark_group(format!("{name}/sign"));
        group.bench_function("SoftwareKey", |b| {
            b.iter(|| sign(&*key, SignatureAlgorithm::RsaPkcs1Sha256, &message))
        });
        group.bench_function("dyn Key", |b| {
            b.iter(|| sign(&*dynamic, SignatureAlgorithm::RsaPkcs1Sha256, &message))
        });
        if let Some(token) = &in_token {
            group.bench_function("Pkcs11Key", |b| {
                b.iter(|| sign(&**token, SignatureAlgorithm::RsaPkcs1Sha256, &message))
            });
        }
        group.finish();

        let ciphertexts: Vec<Vec<u8>> = (0..POOL)
            .map(|_| scep_bench::wrapped_key(key.public_key_info()).expect("wrap a key"))
            .collect();
        let mut group = c.benchmark_group(format!("{name}/decrypt"));
        let mut next = cycle(POOL);
        group.bench_function("SoftwareKey", |b| {
            b.iter(|| decrypt(&*key, &ciphertexts[next()]))
        });
        let mut next = cycle(POOL);
        group.bench_function("dyn Key", |b| {
            b.iter(|| decrypt(&*dynamic, &ciphertexts[next()]))
        });
        if let Some(token) = &in_token {
            // Its own ciphertexts: wrapped to the token's RA key.
            let ciphertexts: Vec<Vec<u8>> = (0..POOL)
                .map(|_| scep_bench::wrapped_key(token.public_key_info()).expect("wrap a key"))
                .collect();
            let mut next = cycle(POOL);
            group.bench_function("Pkcs11Key", |b| {
                b.iter(|| decrypt(&**token, &ciphertexts[next()]))
            });
        }
        group.finish();
    }

    // The EC CA's signature, for the ca-p256 variant's baseline.
    let p256 = s
        .pki(Variant::CaP256)
        .ca_software
        .clone()
        .unwrap_or_else(|| unreachable!("software variant"));
    let tbs = vec![0x5au8; 700];
    c.bench_function("p256/sign/SoftwareKey", |b| {
        b.iter(|| sign(&*p256, SignatureAlgorithm::EcdsaSha256, &tbs))
    });
}

fn sign(key: &(impl Key + ?Sized), alg: SignatureAlgorithm, message: &[u8]) -> Vec<u8> {
    key.sign(alg, black_box(message)).expect("the key signs")
}

fn decrypt(key: &(impl Key + ?Sized), ciphertext: &[u8]) -> usize {
    key.decrypt(DecryptPadding::Pkcs1v15, black_box(ciphertext))
        .expect("the key decrypts")
        .len()
}

/// Lenient GET decoding of a percent-encoded PKCSReq, as certmonger sends it.
fn get_decode(c: &mut Criterion, s: &Setup) {
    let pki = s.pki(Variant::Rsa2048);
    let pool = s.messages(pki, ContentCipher::Aes256Cbc, "get");
    let queries: Vec<String> = pool
        .iter()
        .map(|m| scep_bench::get_query_message(&m.bytes))
        .collect();
    for (query, m) in queries.iter().zip(&pool) {
        let decoded = scep_gateway::http::query::decode_message(query).expect("decodes");
        assert_eq!(decoded, m.bytes, "GET decoding round trip");
    }
    let mut next = cycle(POOL);
    c.bench_function("get/decode", |b| {
        b.iter(|| {
            scep_gateway::http::query::decode_message(black_box(&queries[next()])).expect("decodes")
        })
    });
}

/// What one hop to tokio's blocking pool costs: `Ca::issue` makes one per issuance,
/// the server's pipeline three per enrollment.
fn blocking_hop(c: &mut Criterion, s: &Setup) {
    c.bench_function("tokio/spawn_blocking_round_trip", |b| {
        // Spawned inside the runtime's context, as `Ca::issue` spawns it.
        b.iter(|| {
            s.rt.block_on(async { tokio::task::spawn_blocking(|| black_box(1)).await })
                .expect("the blocking task runs")
        })
    });
}

fn hot_path(c: &mut Criterion) {
    let s = setup();
    pkcsreq(c, &s);
    issue(c, &s);
    certrep(c, &s);
    enrollment(c, &s);
    bare_ops(c, &s);
    get_decode(c, &s);
    blocking_hop(c, &s);
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
