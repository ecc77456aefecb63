//! Hostile input, end to end: one running `scep-gateway`, a table of crafted requests,
//! each with the answer README.md ("How it answers bad input") promises for it.
//!
//! Every case names what it models. A request is raw bytes over TCP, a GET target, or a
//! pkiMessage built with [`Requester`] and then mutated at the CMS/DER level (and
//! re-signed where the mutation is meant to get past the signature check). An answer is
//! an HTTP status, or HTTP 200 with a CertRep signed by the RA whose pkiStatus is
//! FAILURE with a given failInfo (or SUCCESS, for the replay and GetCRL cases).
//!
//! The loop runs every case and reports all failing ones at once. After the table the
//! gateway must still be alive, without a panic in its log and without the challenge
//! in it. A second test checks that every kind of decryption failure is answered
//! identically (no padding oracle).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{parse_response, Gateway, Options, Response, CHALLENGE};
use const_oid::ObjectIdentifier;
use scep_gateway::ca::certificate::{self as x509, Signer};
use scep_gateway::cms::algorithms::{ContentCipher, Digest};
use scep_gateway::cms::ber::{self, tag, Tlv};
use scep_gateway::cms::envelope;
use scep_gateway::cms::signed::{self, Attribute, CertificateFields, SignedData, SignerInfo};
use scep_gateway::scep::client::{MessageSpec, Reply, Requester};
use scep_gateway::scep::message::{oid, FailInfo, MessageType, Nonce, PkiStatus, TransactionId};
use scep_hsm::{Key, SoftwareKey};

/// Where PKIOperation is POSTed.
const PKI_TARGET: &str = "/scep?operation=PKIOperation";
/// A challenge that is not the configured one.
const WRONG_CHALLENGE: &str = "wrong-challenge-xyzzy";
/// `header_timeout_secs` and `request_timeout_secs` of the gateway under test.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A 1024-bit RSA PKCS#10 request (CN=weak-rsa-1024, challengePassword "secret123",
/// SHA-256), made with `openssl req -newkey rsa:1024`: aws-lc-rs cannot sign with keys
/// that small, so it is a fixed vector.
const RSA1024_CSR_B64: &str = "MIIBcTCB2wIBADAYMRYwFAYDVQQDDA13ZWFrLXJzYS0xMDI0MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCdFX810PmJ+DpvwtpH1eKfuOw9r8XaOmrnZlgv9B/Y8wfmOy565iIRIQ5KS8XwIdCbdbtSOjtLNq639t3Z1lRlBNAUdSo/SZADA/LgvTDsuB78KzkM1iFWxoEIDW7QZkLI/ajGm7gcj39AxF2/WU0AwNVL/505Xcv5sLBNXUN8YQIDAQABoBowGAYJKoZIhvcNAQkHMQsMCXNlY3JldDEyMzANBgkqhkiG9w0BAQsFAAOBgQBY8CIZRBk+NcT9DCCjhShZUDOCLtrI+ZxAVLQaU+rO7zxeaodnJSnzc68LVlgK4Ug6FqIV1+THVk4Kc5UHXt8saU60IGiT5iVwIlX2Ox3gTrTflt2gkfyKkT4VSIX5d0yIqHhRfcX70Ci6up5Uma15lECHJ2LRzxq843/ncAdF4Q==";

// ---------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------

struct Case {
    name: &'static str,
    request: Request,
    expect: Expect,
}

/// What goes over the wire.
enum Request {
    /// A POST PKIOperation body that is not (or no longer) a message we can match a
    /// reply to.
    Post(Vec<u8>),
    /// A pkiMessage POSTed; `Sent` says which transactionID and senderNonce the reply
    /// must echo and, for SUCCESS, who decrypts it.
    Pki(Vec<u8>, Sent),
    /// A GET request target.
    Get(String),
    /// A GET PKIOperation whose reply answers `Sent`.
    PkiGet(String, Sent),
    /// Raw bytes over TCP; the request says `Connection: close` or is HTTP/1.0.
    Raw(Vec<u8>),
    /// A connection-level behaviour (slow, truncated or oversized streams): the
    /// function drives the socket and checks the outcome itself.
    Stream(Box<dyn Fn(SocketAddr) -> Result<String, String>>),
}

/// What must come back.
enum Expect {
    /// This HTTP status (no CertRep).
    Status(u16),
    /// HTTP 200, a CertRep signed by the RA, pkiStatus FAILURE with this failInfo.
    Failure(FailInfo),
    /// HTTP 200, a CertRep SUCCESS that the `Sent` requester verifies and decrypts,
    /// and this check of its content.
    Success(ReplyCheck),
    /// Whatever the `Stream` function checked.
    Behaviour,
}

/// A check of a decrypted SUCCESS reply's content.
type ReplyCheck = Box<dyn Fn(&Reply) -> Result<(), String>>;

/// What a pkiMessage was sent as.
#[derive(Clone)]
struct Sent {
    requester: Requester,
    spec: MessageSpec,
}

#[test]
fn hostile_input_gets_the_documented_answer_and_nothing_worse() {
    let started = Instant::now();
    let mut gateway = Gateway::start(Options {
        legacy_des: false,
        extra_config: vec![
            (
                "header_timeout_secs".into(),
                HEADER_TIMEOUT.as_secs().to_string(),
            ),
            (
                "request_timeout_secs".into(),
                REQUEST_TIMEOUT.as_secs().to_string(),
            ),
        ],
        ..Options::default()
    });
    let pki = Pki::load(&gateway);
    let addr = gateway.addr;

    // The requester most cases use, with a key from the test data (no key generation),
    // and a second key for the transactionID conflict.
    let alice = requester(&data_key("certmonger-client.key.pem"), "hostile-alice");
    let mallory = requester(&data_key("ra-ca.key.pem"), "hostile-mallory");

    // Baseline: a well-formed PKCSReq enrolls. The replay cases below refer to it.
    let alice_subject = x509::common_name("hostile-alice").unwrap();
    let alice_csr = alice
        .certification_request(&alice_subject, Some(CHALLENGE))
        .unwrap();
    let alice_tid = alice.key_transaction_id();
    let (first, first_sent) = pki.message(&alice, MessageType::PkcsReq, &alice_tid, &alice_csr);
    let first_response = common::post(addr, PKI_TARGET, &first);
    assert_eq!(
        first_response.status,
        200,
        "baseline enrollment: {}",
        body_text(&first_response)
    );
    let first_reply = first_sent
        .requester
        .read_reply(&first_response.body, &first_sent.spec, false)
        .unwrap();
    assert_eq!(first_reply.status, PkiStatus::Success, "{first_reply:?}");
    let first_certificate = first_reply.certificates[0].clone();

    let cases = table(&pki, &alice, &mallory, &alice_csr, &first, &first_sent, {
        let first_certificate = first_certificate.clone();
        let first_reply_nonce = first_reply.sender_nonce;
        move |reply: &Reply| {
            if reply.certificates.first() != Some(&first_certificate) {
                return Err("answered with another certificate than the first".into());
            }
            if reply.sender_nonce == first_reply_nonce {
                return Err("the reply's senderNonce is not fresh".into());
            }
            Ok(())
        }
    });
    assert!(cases.len() >= 40, "only {} cases", cases.len());

    let mut failures = Vec::new();
    let mut report = Vec::new();
    for case in &cases {
        let t = Instant::now();
        let result = run(case, &pki, addr);
        let ms = t.elapsed().as_millis();
        match result {
            Ok(seen) => report.push(format!("  ok    {:<58} {seen} ({ms} ms)", case.name)),
            Err(why) => {
                report.push(format!("  FAIL  {:<58} {why} ({ms} ms)", case.name));
                failures.push(format!("{}: {why}", case.name));
            }
        }
    }
    eprintln!(
        "hostile cases ({} in {:.1} s):\n{}",
        cases.len(),
        started.elapsed().as_secs_f64(),
        report.join("\n")
    );

    // Replays and the conflict never issued a second certificate for Alice's
    // transaction.
    let log = gateway.log();
    let issued_for_alice = log
        .lines()
        .filter(|l| l.contains("certificate issued") && l.contains(alice_tid.as_str()))
        .count();
    if issued_for_alice != 1 {
        failures.push(format!(
            "{issued_for_alice} certificates were issued for Alice's transaction, not 1"
        ));
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases failed:\n{}\n\ngateway log (tail):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        tail(&log, 60)
    );
    gateway.assert_healthy();
    let log = gateway.log();
    assert!(!log.contains(CHALLENGE), "the challenge was logged");
    assert!(
        !log.contains(WRONG_CHALLENGE),
        "a presented challenge was logged"
    );
}

/// Builds every case. `first` is Alice's completed PKCSReq; `same_certificate` checks
/// that a reply carries the certificate it got, with a fresh senderNonce.
fn table(
    pki: &Pki,
    alice: &Requester,
    mallory: &Requester,
    alice_csr: &[u8],
    first: &[u8],
    first_sent: &Sent,
    same_certificate: impl Fn(&Reply) -> Result<(), String> + Clone + 'static,
) -> Vec<Case> {
    use Expect::*;
    use Request::*;
    let good = first.to_vec();
    // A fresh, well-formed PKCSReq to mutate (wrong challenge, so nothing is issued if
    // a mutation were wrongly accepted: it would be badRequest, not badMessageCheck).
    let probe_csr = alice
        .certification_request(
            &x509::common_name("hostile-probe").unwrap(),
            Some(WRONG_CHALLENGE),
        )
        .unwrap();
    let csr_with = |who: &Requester, subject: &[u8], challenge: Option<&str>| {
        who.certification_request(subject, challenge).unwrap()
    };
    let cn = |s: &str| x509::common_name(s).unwrap();
    let ca = CertificateFields::parse(&pki.ca_cert).unwrap();
    let ca_subject = ca.subject.to_vec();

    // A fresh pkiMessage by Alice, of `mt` with `content`, under a fresh transactionID.
    let fresh = |mt: MessageType, content: &[u8]| {
        let tid = fresh_tid();
        pki.message(alice, mt, &tid, content)
    };
    // A pkiMessage whose envelope is mutated by `f`, then signed properly.
    let with_envelope = |f: &dyn Fn(&mut Node), cipher: ContentCipher| {
        let mut env = Node::decode(&envelope::seal(&probe_csr, &pki.ra_cert, cipher).unwrap());
        f(&mut env);
        let tid = fresh_tid();
        pki.message_with_envelope(alice, MessageType::PkcsReq, &tid, &env.encode())
    };
    // A signed pkiMessage with exactly these SCEP attributes (nothing else changed).
    let with_attrs = |attrs: Vec<Attribute>| {
        let env = envelope::seal(&probe_csr, &pki.ra_cert, ContentCipher::Aes128Cbc).unwrap();
        signed::build_signed(
            &alice.credential,
            Digest::Sha256,
            &signed::oid::DATA,
            &env,
            &attrs,
        )
        .unwrap()
    };
    let nonce = || Nonce::random().0.to_vec();
    let tid_attr = |t: &str| Attribute::printable(oid::TRANSACTION_ID, t).unwrap();
    let type_attr = |t: &str| Attribute::printable(oid::MESSAGE_TYPE, t).unwrap();
    let nonce_attr = |n: &[u8]| Attribute::octet_string(oid::SENDER_NONCE, n);
    // `good` with the DER tree changed by `f` (the signature is not redone).
    let mutate = |f: &dyn Fn(&mut Node)| {
        let mut n = Node::decode(&good);
        f(&mut n);
        n.encode()
    };

    let mut cases = vec![
        // --- Not a pkiMessage at all: HTTP 400, nothing to sign a reply to ----------
        Case {
            name: "empty POST body",
            request: Post(Vec::new()),
            expect: Status(400),
        },
        Case {
            name: "1-byte body",
            request: Post(vec![0x30]),
            expect: Status(400),
        },
        Case {
            name: "4 KiB of random garbage",
            request: Post(random_bytes(4096)),
            expect: Status(400),
        },
        Case {
            name: "garbage behind a SEQUENCE header (fuzzer-style)",
            request: Post([&[0x30, 0x82, 0x10, 0x00][..], &random_bytes(4096)].concat()),
            expect: Status(400),
        },
        // Truncated in transit or by a buggy client, at several depths.
        Case {
            name: "truncated DER: 2 bytes (tag + length only)",
            request: Post(good[..2].to_vec()),
            expect: Status(400),
        },
        Case {
            name: "truncated DER: 40 bytes (inside the SignedData header)",
            request: Post(good[..40].to_vec()),
            expect: Status(400),
        },
        Case {
            name: "truncated DER: half",
            request: Post(good[..good.len() / 2].to_vec()),
            expect: Status(400),
        },
        Case {
            name: "truncated DER: last byte missing",
            request: Post(good[..good.len() - 1].to_vec()),
            expect: Status(400),
        },
        Case {
            name: "trailing garbage after the ContentInfo",
            request: Post([&good[..], b"trailing"].concat()),
            expect: Status(400),
        },
        // Over-long length fields: lengths far beyond the input, or unrepresentable.
        Case {
            name: "over-long outer length (0x84 7fffffff)",
            request: Post({
                let mut v = vec![0x30, 0x84, 0x7f, 0xff, 0xff, 0xff];
                v.extend_from_slice(ber::parse(&good).unwrap().content());
                v
            }),
            expect: Status(400),
        },
        Case {
            name: "9-byte length field (0x89 ...)",
            request: Post(vec![
                0x30, 0x89, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0x06, 0x09,
            ]),
            expect: Status(400),
        },
        Case {
            name: "inner length beyond its parent (signature claims 2 GiB)",
            request: Post(mutate(&|n| {
                let sig = n.at(&SIGNATURE).bytes().to_vec();
                *n.at(&SIGNATURE) =
                    Node::Raw([&[0x04, 0x84, 0x7f, 0xff, 0xff, 0xff][..], &sig].concat());
            })),
            expect: Status(400),
        },
        Case {
            name: "huge INTEGER as SignedData version (1000 bytes)",
            request: Post(mutate(&|n| {
                *n.at(&[1, 0, 0]) = Node::Prim(tag::INTEGER, vec![0x7f; 1000]);
            })),
            expect: Status(400),
        },
        Case {
            name: "nested indefinite lengths, 1000 deep",
            request: Post([[0x30, 0x80].repeat(1000), [0, 0].repeat(1000)].concat()),
            expect: Status(400),
        },
        // Wrong or mismatched structure.
        Case {
            name: "wrong outer OID (envelopedData instead of signedData)",
            request: Post(mutate(&|n| {
                *n.at(&[0]) = Node::Prim(tag::OID, oid_content(&signed::oid::ENVELOPED_DATA));
            })),
            expect: Status(400),
        },
        Case {
            name: "a bare EnvelopedData POSTed as the pkiMessage",
            request: Post(envelope::seal(&probe_csr, &pki.ra_cert, ContentCipher::Aes128Cbc).unwrap()),
            expect: Status(400),
        },
        Case {
            name: "SignedData without signers",
            request: Post(mutate(&|n| n.at(&SIGNER_INFOS).children().clear())),
            expect: Status(400),
        },
        Case {
            name: "SignedData with two signers",
            request: Post(mutate(&|n| {
                let signer = n.at(&SIGNER).clone();
                n.at(&SIGNER_INFOS).children().push(signer);
            })),
            expect: Status(400),
        },
        Case {
            name: "no certificates (signer certificate missing)",
            request: Post(mutate(&|n| {
                n.at(&[1, 0]).children().remove(3);
            })),
            expect: Status(400),
        },
        // --- SCEP attributes missing or out of bounds: nothing to address a reply to
        Case {
            name: "missing transactionID",
            request: Post(with_attrs(vec![type_attr("19"), nonce_attr(&nonce())])),
            expect: Status(400),
        },
        Case {
            name: "missing senderNonce",
            request: Post(with_attrs(vec![type_attr("19"), tid_attr(fresh_tid().as_str())])),
            expect: Status(400),
        },
        Case {
            name: "missing messageType",
            request: Post(with_attrs(vec![
                tid_attr(fresh_tid().as_str()),
                nonce_attr(&nonce()),
            ])),
            expect: Status(400),
        },
        Case {
            name: "senderNonce of 15 bytes",
            request: Post(with_attrs(vec![
                type_attr("19"),
                tid_attr(fresh_tid().as_str()),
                nonce_attr(&[7; 15]),
            ])),
            expect: Status(400),
        },
        Case {
            name: "senderNonce of 17 bytes",
            request: Post(with_attrs(vec![
                type_attr("19"),
                tid_attr(fresh_tid().as_str()),
                nonce_attr(&[7; 17]),
            ])),
            expect: Status(400),
        },
        Case {
            name: "transactionID of 300 characters",
            request: Post(with_attrs(vec![
                type_attr("19"),
                tid_attr(&"T".repeat(300)),
                nonce_attr(&nonce()),
            ])),
            expect: Status(400),
        },
        Case {
            // 1 MiB of transactionID makes the body exceed max_body_bytes (256 KiB).
            name: "transactionID of 1 MiB (body limit)",
            request: Post(with_attrs(vec![
                type_attr("19"),
                tid_attr(&"T".repeat(1 << 20)),
                nonce_attr(&nonce()),
            ])),
            expect: Status(413),
        },
        Case {
            name: "transactionID given twice",
            request: Post(with_attrs(vec![
                type_attr("19"),
                tid_attr("first-id"),
                tid_attr("second-id"),
                nonce_attr(&nonce()),
            ])),
            expect: Status(400),
        },
        Case {
            // RFC 8894 §3.2.1.2 defines no type 99. The message cannot be processed
            // as any request; the gateway documents HTTP 400 for it.
            name: "unknown messageType \"99\"",
            request: Post(with_attrs(vec![
                type_attr("99"),
                tid_attr(fresh_tid().as_str()),
                nonce_attr(&nonce()),
            ])),
            expect: Status(400),
        },
        // --- Readable header, but the message is refused: a signed CertRep FAILURE -
        Case {
            name: "a CertRep (messageType 3) sent as a request",
            request: {
                let (m, s) = fresh(MessageType::CertRep, &probe_csr);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadRequest),
        },
        Case {
            // A server that DER-sorted the attributes before hashing would accept
            // this: the signature only verifies over the re-encoded SET.
            name: "signature over re-encoded (sorted) attributes only",
            request: {
                let (m, s) = fresh(MessageType::PkcsReq, &probe_csr);
                let mut n = Node::decode(&m);
                n.at(&SIGNED_ATTRS).children().reverse();
                Pki(n.encode(), s)
            },
            expect: Failure(FailInfo::BadMessageCheck),
        },
        Case {
            name: "flipped signature byte",
            request: {
                let (m, s) = fresh(MessageType::PkcsReq, &probe_csr);
                let mut n = Node::decode(&m);
                n.at(&SIGNATURE).bytes()[10] ^= 0x01;
                Pki(n.encode(), s)
            },
            expect: Failure(FailInfo::BadMessageCheck),
        },
        Case {
            // The envelope swapped after signing: messageDigest no longer matches.
            name: "eContent replaced after signing (messageDigest mismatch)",
            request: {
                let (m, s) = fresh(MessageType::PkcsReq, &probe_csr);
                let mut n = Node::decode(&m);
                *n.at(&ECONTENT).bytes() =
                    envelope::seal(&probe_csr, &pki.ra_cert, ContentCipher::Aes128Cbc).unwrap();
                Pki(n.encode(), s)
            },
            expect: Failure(FailInfo::BadMessageCheck),
        },
        Case {
            name: "envelope to another RA key",
            request: {
                let env = envelope::seal(
                    &probe_csr,
                    &mallory.credential.certificate,
                    ContentCipher::Aes128Cbc,
                )
                .unwrap();
                let (m, s) = pki.message_with_envelope(alice, MessageType::PkcsReq, &fresh_tid(), &env);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadMessageCheck),
        },
        Case {
            name: "tampered encrypted key (RSA block)",
            request: {
                let (m, s) = with_envelope(&|e| e.at(&ENCRYPTED_KEY).bytes()[100] ^= 0x40, ContentCipher::Aes128Cbc);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadMessageCheck),
        },
        Case {
            name: "tampered last ciphertext block",
            request: {
                let (m, s) = with_envelope(
                    &|e| {
                        let c = e.at(&ENCRYPTED_CONTENT).bytes();
                        let at = c.len() - 3;
                        c[at] ^= 0x5a;
                    },
                    ContentCipher::Aes128Cbc,
                );
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadMessageCheck),
        },
        Case {
            name: "zero-length encryptedContent",
            request: {
                let (m, s) = with_envelope(&|e| e.at(&ENCRYPTED_CONTENT).bytes().clear(), ContentCipher::Aes128Cbc);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadMessageCheck),
        },
        Case {
            name: "encryptedContent absent",
            request: {
                let (m, s) = with_envelope(&|e| {
                    e.at(&[1, 0, 2]).children().truncate(2);
                }, ContentCipher::Aes128Cbc);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadMessageCheck),
        },
        Case {
            name: "IV of the wrong length (8 bytes for AES)",
            request: {
                let (m, s) = with_envelope(&|e| e.at(&[1, 0, 2, 1, 1]).bytes().truncate(8), ContentCipher::Aes128Cbc);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadMessageCheck),
        },
        Case {
            name: "single DES with legacy_des off",
            request: {
                let (m, s) = with_envelope(&|_| {}, ContentCipher::DesCbc);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadAlg),
        },
        Case {
            name: "3DES with legacy_des off",
            request: {
                let (m, s) = with_envelope(&|_| {}, ContentCipher::DesEde3Cbc);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadAlg),
        },
        Case {
            name: "unknown content cipher (RC2-CBC OID)",
            request: {
                let rc2 = ObjectIdentifier::new_unwrap("1.2.840.113549.3.2");
                let (m, s) = with_envelope(&|e| *e.at(&[1, 0, 2, 1, 0]) = Node::Prim(tag::OID, oid_content(&rc2)), ContentCipher::Aes128Cbc);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadAlg),
        },
        Case {
            name: "unknown key transport (RSA-KEM OID)",
            request: {
                let kem = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.3.14");
                let (m, s) = with_envelope(&|e| *e.at(&[1, 0, 1, 0, 2, 0]) = Node::Prim(tag::OID, oid_content(&kem)), ContentCipher::Aes128Cbc);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadAlg),
        },
        // --- The CSR is read and refused (badRequest) ------------------------------
        Case {
            name: "wrong challenge",
            request: {
                let (m, s) = fresh(MessageType::PkcsReq, &probe_csr);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadRequest),
        },
        Case {
            name: "no challenge",
            request: {
                let (m, s) = fresh(MessageType::PkcsReq, &csr_with(alice, &cn("no-challenge"), None));
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadRequest),
        },
        Case {
            name: "CSR with an RSA-1024 key",
            request: {
                let csr = base64::engine::general_purpose::STANDARD
                    .decode(RSA1024_CSR_B64)
                    .unwrap();
                let (m, s) = fresh(MessageType::PkcsReq, &csr);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadRequest),
        },
        Case {
            name: "CSR with a broken self-signature",
            request: {
                let mut csr = csr_with(alice, &cn("broken-pop"), Some(CHALLENGE));
                let last = csr.len() - 1;
                csr[last] ^= 0x01;
                let (m, s) = fresh(MessageType::PkcsReq, &csr);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadRequest),
        },
        Case {
            name: "CSR with a 16 KiB subject",
            request: {
                let long_cn = ber::der_tlv(tag::UTF8_STRING, &["S".repeat(16 * 1024).as_bytes()]);
                let atv = ber::der_sequence(&[&ber::der_oid(&x509::oid::COMMON_NAME), &long_cn]);
                let subject = ber::der_sequence(&[&ber::der_tlv(tag::SET, &[&atv])]);
                let (m, s) = fresh(MessageType::PkcsReq, &csr_with(alice, &subject, Some(CHALLENGE)));
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadRequest),
        },
        Case {
            name: "CSR with 10,000 subjectAltNames",
            request: {
                let names: Vec<Vec<u8>> = (0..10_000)
                    .map(|i| ber::der_tlv(0x82, &[format!("{:x}", i % 16).as_bytes()]))
                    .collect();
                let refs: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
                let san = x509::raw_extension(
                    x509::oid::SUBJECT_ALT_NAME,
                    false,
                    ber::der_sequence(&refs),
                )
                .unwrap();
                let csr = scep_gateway::csr::build(
                    &Signer::new(alice.credential.key.clone()),
                    &cn("many-sans"),
                    Some(CHALLENGE),
                    &[san],
                )
                .unwrap();
                let (m, s) = fresh(MessageType::PkcsReq, &csr);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadRequest),
        },
        Case {
            name: "PKCSReq whose content is not a CSR (an IssuerAndSerial)",
            request: {
                let ias = ber::der_sequence(&[&ca_subject, &ber::der_tlv(tag::INTEGER, &[&[1]])]);
                let (m, s) = fresh(MessageType::PkcsReq, &ias);
                Pki(m, s)
            },
            // Decrypts fine but is not the structure its messageType needs: treated
            // like undecodable plaintext (request.rs: no oracle on the plaintext).
            expect: Failure(FailInfo::BadMessageCheck),
        },
        Case {
            // The signed contentType attribute says id-data, eContentType is changed
            // to envelopedData after signing (RFC 5652 §5.4: they must match).
            name: "eContentType differs from the signed contentType",
            request: {
                let (m, s) = fresh(MessageType::PkcsReq, &probe_csr);
                let mut n = Node::decode(&m);
                *n.at(&[1, 0, 2, 0]) = Node::Prim(tag::OID, oid_content(&signed::oid::ENVELOPED_DATA));
                Pki(n.encode(), s)
            },
            expect: Failure(FailInfo::BadMessageCheck),
        },
        Case {
            // RenewalReq signed with a self-signed certificate, not one of this CA.
            name: "RenewalReq signed by a certificate we did not issue",
            request: {
                let (m, s) = fresh(MessageType::RenewalReq, &csr_with(alice, &cn("hostile-alice"), None));
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadRequest),
        },
        Case {
            // An EC requester: its CSR is acceptable, but a SUCCESS reply must be
            // enveloped to its signer certificate with RSA key transport, which an
            // EC key cannot receive.
            name: "PKCSReq signed with an EC P-256 key (no reply can be encrypted to it)",
            request: {
                let ec = requester(&(Arc::new(SoftwareKey::generate_p256("ec".into()).unwrap()) as Arc<dyn Key>), "hostile-ec");
                let csr = csr_with(&ec, &cn("hostile-ec"), Some(CHALLENGE));
                let (m, s) = pki.message(&ec, MessageType::PkcsReq, &fresh_tid(), &csr);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadAlg),
        },
        // --- Transactions: conflicts and replays -----------------------------------
        Case {
            // Clients derive the transactionID from the key: another key reusing it
            // is someone else's transaction.
            name: "Alice's transactionID with another key (Mallory)",
            request: {
                let csr = csr_with(mallory, &cn("hostile-mallory"), Some(CHALLENGE));
                let (m, s) = pki.message(mallory, MessageType::PkcsReq, &first_sent.spec.transaction_id, &csr);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadRequest),
        },
        Case {
            name: "replay: byte-identical completed PKCSReq",
            request: Pki(good.clone(), first_sent.clone()),
            expect: Success(Box::new(same_certificate.clone())),
        },
        Case {
            // What a client does when it lost the reply: the same CSR, key and
            // transactionID, a new senderNonce (read_reply checks the echo).
            name: "replay: same PKCSReq, new senderNonce",
            request: {
                let (m, s) = pki.message(alice, MessageType::PkcsReq, &first_sent.spec.transaction_id, alice_csr);
                Pki(m, s)
            },
            expect: Success(Box::new(same_certificate.clone())),
        },
        Case {
            // Documents current behaviour: the store answers the transaction with
            // the certificate already issued; the altered CSR is not looked at and
            // no second certificate is issued (counted after the table).
            name: "replay with an altered CSR (same key and transactionID)",
            request: {
                let csr = csr_with(alice, &cn("hostile-alice-altered"), Some(CHALLENGE));
                let (m, s) = pki.message(alice, MessageType::PkcsReq, &first_sent.spec.transaction_id, &csr);
                Pki(m, s)
            },
            expect: Success(Box::new(same_certificate.clone())),
        },
        // --- Queries for things we do not know --------------------------------------
        Case {
            name: "GetCert for an unknown serial",
            request: {
                let ias = ber::der_sequence(&[&ca_subject, &ber::der_tlv(tag::INTEGER, &[&[0x12, 0x34, 0x56, 0x78]])]);
                let (m, s) = fresh(MessageType::GetCert, &ias);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadCertId),
        },
        Case {
            name: "CertPoll for an unknown transaction",
            request: {
                let ias = ber::der_sequence(&[&ca_subject, &cn("nobody")]);
                let (m, s) = fresh(MessageType::CertPoll, &ias);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadCertId),
        },
        Case {
            name: "GetCRL of another issuer",
            request: {
                let ias = ber::der_sequence(&[&cn("Some Other CA"), ca.serial_tlv]);
                let (m, s) = fresh(MessageType::GetCrl, &ias);
                Pki(m, s)
            },
            expect: Failure(FailInfo::BadCertId),
        },
        Case {
            name: "GetCRL of our CA (the one well-formed query)",
            request: {
                let ias = ber::der_sequence(&[&ca_subject, ca.serial_tlv]);
                let (m, s) = fresh(MessageType::GetCrl, &ias);
                Pki(m, s)
            },
            expect: Success(Box::new(|reply: &Reply| {
                if reply.crls.len() == 1 && reply.certificates.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "{} CRLs and {} certificates",
                        reply.crls.len(),
                        reply.certificates.len()
                    ))
                }
            })),
        },
        // --- HTTP --------------------------------------------------------------------
        Case {
            name: "GET PKIOperation with invalid percent-encoding",
            request: Get("/scep?operation=PKIOperation&message=MIIB%zzAA".into()),
            expect: Status(400),
        },
        Case {
            name: "GET PKIOperation with a truncated escape at the end",
            request: Get("/scep?operation=PKIOperation&message=MIIB%4".into()),
            expect: Status(400),
        },
        Case {
            name: "GET PKIOperation without message",
            request: Get("/scep?operation=PKIOperation".into()),
            expect: Status(400),
        },
        Case {
            name: "GET without operation",
            request: Get("/scep".into()),
            expect: Status(400),
        },
        Case {
            name: "unknown operation",
            request: Get("/scep?operation=DropTables".into()),
            expect: Status(400),
        },
        Case {
            name: "wrong method (PUT GetCACaps)",
            request: Raw(b"PUT /scep?operation=GetCACaps HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()),
            expect: Status(405),
        },
        Case {
            name: "wrong method (DELETE PKIOperation)",
            request: Raw(b"DELETE /scep?operation=PKIOperation HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec()),
            expect: Status(405),
        },
        Case {
            name: "unknown path",
            request: Get("/admin/../../etc/passwd?operation=GetCACaps".into()),
            expect: Status(404),
        },
        Case {
            // Cisco routers: HTTP/1.0, no Host header.
            name: "HTTP/1.0 GetCACaps without Host",
            request: Raw(b"GET /cgi-bin/pkiclient.exe?operation=GetCACaps HTTP/1.0\r\n\r\n".to_vec()),
            expect: Status(200),
        },
        Case {
            name: "not HTTP at all",
            request: Raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello?\r\n\r\n".to_vec()),
            expect: Status(400),
        },
        Case {
            // Intune-sized GET: a PKCSReq (wrong challenge) whose base64 is spread
            // with %0A line breaks up to a 60,000-byte request target.
            name: "60,000-byte GET URI (PKIOperation)",
            request: {
                let (m, s) = fresh(MessageType::PkcsReq, &probe_csr);
                PkiGet(long_get_target(&m, 60_000), s)
            },
            expect: Failure(FailInfo::BadRequest),
        },
        Case {
            // Beyond hyper's HTTP/1 URI limit (65,534 bytes): refused, not dropped.
            name: "70,000-byte GET URI",
            request: Get(format!("/scep?operation=PKIOperation&message={}", "A".repeat(70_000))),
            expect: Status(414),
        },
        Case {
            // hyper's HTTP/1 read buffer is ~400 KB; a 300 KiB header section still
            // fits (answered), a 1 MiB one does not (431).
            name: "a 1 MiB header section",
            request: Raw(format!(
                "GET /scep?operation=GetCACaps HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
                "b".repeat(1024 * 1024)
            ).into_bytes()),
            expect: Status(431),
        },
        Case {
            name: "200 header fields",
            request: Raw(format!(
                "GET /scep?operation=GetCACaps HTTP/1.1\r\nHost: t\r\n{}Connection: close\r\n\r\n",
                (0..200).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
            ).into_bytes()),
            expect: Status(431),
        },
        // --- Streams: oversized, truncated and slow ---------------------------------
        Case {
            name: "10 MB POST body (Content-Length): 413 before the body is sent",
            request: Stream(Box::new(ten_megabytes_declared)),
            expect: Behaviour,
        },
        Case {
            name: "10 MB POST body (chunked): 413, not read to the end",
            request: Stream(Box::new(ten_megabytes_chunked)),
            expect: Behaviour,
        },
        Case {
            name: "Content-Length larger than sent, then close",
            request: Stream(Box::new(short_body_then_close)),
            expect: Behaviour,
        },
        Case {
            name: "Content-Length larger than sent, connection kept open",
            request: Stream(Box::new(short_body_kept_open)),
            expect: Behaviour,
        },
        Case {
            name: "slowloris: header section dripped byte by byte",
            request: Stream(Box::new(slowloris)),
            expect: Behaviour,
        },
    ];
    // The same gateway still answers well-formed traffic after all of the above.
    cases.push(Case {
        name: "afterwards: GetCACaps still answered",
        request: Get("/scep?operation=GetCACaps".into()),
        expect: Status(200),
    });
    cases
}

/// Runs one case; `Ok` carries what was seen, for the report.
fn run(case: &Case, pki: &Pki, addr: SocketAddr) -> Result<String, String> {
    let (response, sent) = match &case.request {
        Request::Post(body) => (send_post(addr, body)?, None),
        Request::Pki(body, sent) => (send_post(addr, body)?, Some(sent)),
        Request::Get(target) => (send_get(addr, target)?, None),
        Request::PkiGet(target, sent) => (send_get(addr, target)?, Some(sent)),
        Request::Raw(bytes) => (send_raw(addr, bytes)?, None),
        Request::Stream(f) => return f(addr),
    };
    let seen = describe(pki, &response);
    if response.status >= 500 {
        return Err(format!("a 5xx on bad input: {seen}"));
    }
    match &case.expect {
        Expect::Status(status) => {
            if response.status != *status {
                return Err(format!("expected HTTP {status}, got {seen}"));
            }
            Ok(seen)
        }
        Expect::Failure(info) => {
            let rep = certrep_of(pki, &response).map_err(|e| format!("{e}; got {seen}"))?;
            if rep.status != PkiStatus::Failure.code()
                || rep.fail_info.as_deref() != Some(info.code())
            {
                return Err(format!("expected FAILURE {}, got {seen}", info.name()));
            }
            if rep.fail_info_text.as_deref().unwrap_or("").is_empty() {
                return Err("FAILURE without failInfoText".into());
            }
            if let Some(sent) = sent {
                rep.answers(sent)?;
            }
            Ok(seen)
        }
        Expect::Success(check) => {
            let sent = sent.expect("a SUCCESS case names what it sent");
            if response.status != 200 {
                return Err(format!("expected a CertRep SUCCESS, got {seen}"));
            }
            let reply = sent
                .requester
                .read_reply(&response.body, &sent.spec, false)
                .map_err(|e| format!("the reply does not answer the request: {e}; got {seen}"))?;
            if reply.status != PkiStatus::Success {
                return Err(format!("expected SUCCESS, got {seen}"));
            }
            if reply.sender_nonce == sent.spec.sender_nonce {
                return Err("the reply's senderNonce repeats the request's".into());
            }
            check(&reply)?;
            Ok(seen)
        }
        Expect::Behaviour => unreachable!("only Stream requests check behaviour"),
    }
}

// ---------------------------------------------------------------------------------------
// The padding-oracle check
// ---------------------------------------------------------------------------------------

/// Every way the envelope can fail to open must look the same from outside: same HTTP
/// status, pkiStatus, failInfo and failInfoText, and the same size of reply. Otherwise
/// a client could learn from the answer whether its RSA block or its CBC padding was
/// right (Bleichenbacher, Vaudenay).
#[test]
fn every_decryption_failure_is_answered_identically() {
    let mut gateway = Gateway::start(Options::default());
    let pki = Pki::load(&gateway);
    let alice = requester(&data_key("certmonger-client.key.pem"), "oracle-alice");
    let other = requester(&data_key("ra-ca.key.pem"), "oracle-other");
    let csr = alice
        .certification_request(&x509::common_name("oracle").unwrap(), Some(CHALLENGE))
        .unwrap();
    let aes = ContentCipher::Aes128Cbc;
    let sealed = || Node::decode(&envelope::seal(&csr, &pki.ra_cert, aes).unwrap());

    let kinds: Vec<(&str, Vec<u8>)> = vec![
        (
            "wrong RA key",
            envelope::seal(&csr, &other.credential.certificate, aes).unwrap(),
        ),
        ("tampered RSA block", {
            let mut e = sealed();
            e.at(&ENCRYPTED_KEY).bytes()[7] ^= 0x01;
            e.encode()
        }),
        ("tampered last CBC block", {
            let mut e = sealed();
            let c = e.at(&ENCRYPTED_CONTENT).bytes();
            let at = c.len() - 1;
            c[at] ^= 0x01;
            e.encode()
        }),
        ("truncated ciphertext (last block dropped)", {
            let mut e = sealed();
            let c = e.at(&ENCRYPTED_CONTENT).bytes();
            c.truncate(c.len() - 16);
            e.encode()
        }),
        ("truncated ciphertext (not block-aligned)", {
            let mut e = sealed();
            let c = e.at(&ENCRYPTED_CONTENT).bytes();
            c.truncate(c.len() - 5);
            e.encode()
        }),
        ("CEK of the wrong length, correctly encrypted", {
            let mut e = sealed();
            *e.at(&ENCRYPTED_KEY).bytes() = rsa_encrypt(&pki.ra_cert, &random_bytes(24));
            e.encode()
        }),
        ("valid decryption of garbage plaintext", {
            envelope::seal(&random_bytes(600), &pki.ra_cert, aes).unwrap()
        }),
        ("valid decryption of an empty plaintext", {
            envelope::seal(&[], &pki.ra_cert, aes).unwrap()
        }),
    ];

    let mut answers = Vec::new();
    for (kind, env) in &kinds {
        // Same transactionID length for every kind, so the replies can be compared
        // byte for byte in size.
        let tid = fresh_tid();
        let (message, sent) = pki.message_with_envelope(&alice, MessageType::PkcsReq, &tid, env);
        let response = send_post(gateway.addr, &message).unwrap();
        let rep = certrep_of(&pki, &response)
            .unwrap_or_else(|e| panic!("{kind}: {e}; got {}", describe(&pki, &response)));
        rep.answers(&sent).unwrap_or_else(|e| panic!("{kind}: {e}"));
        answers.push((
            *kind,
            response.status,
            rep.status.clone(),
            rep.fail_info.clone(),
            rep.fail_info_text.clone(),
            response.body.len(),
        ));
    }
    let table: Vec<String> = answers
        .iter()
        .map(|(k, s, p, f, t, n)| {
            format!("  {k:<46} HTTP {s} pkiStatus {p} failInfo {f:?} {t:?} {n} bytes")
        })
        .collect();
    eprintln!("decryption failures:\n{}", table.join("\n"));

    let (_, status, pki_status, fail_info, text, size) = answers[0].clone();
    assert_eq!(status, 200);
    assert_eq!(pki_status, PkiStatus::Failure.code());
    assert_eq!(fail_info.as_deref(), Some(FailInfo::BadMessageCheck.code()));
    for (kind, s, p, f, t, n) in &answers {
        assert_eq!(
            (s, p, f, t),
            (&status, &pki_status, &fail_info, &text),
            "{kind} is answered differently:\n{}",
            table.join("\n")
        );
        assert!(
            n.abs_diff(size) <= 4,
            "{kind}: a {n}-byte reply against {size}:\n{}",
            table.join("\n")
        );
    }
    gateway.assert_healthy();
}

// ---------------------------------------------------------------------------------------
// Building and reading messages
// ---------------------------------------------------------------------------------------

/// Paths into the DER tree of a pkiMessage as `signed::build_signed` writes it:
/// ContentInfo { oid, [0] SignedData { version, digestAlgorithms, encapContentInfo
/// { oid, [0] eContent }, [0] certificates, signerInfos { SignerInfo { version, sid,
/// digestAlgorithm, [0] signedAttrs, signatureAlgorithm, signature } } } }.
const ECONTENT: [usize; 5] = [1, 0, 2, 1, 0];
const SIGNER_INFOS: [usize; 3] = [1, 0, 4];
const SIGNER: [usize; 4] = [1, 0, 4, 0];
const SIGNED_ATTRS: [usize; 5] = [1, 0, 4, 0, 3];
const SIGNATURE: [usize; 5] = [1, 0, 4, 0, 5];
/// Paths into an EnvelopedData as `envelope::seal` writes it: ContentInfo { oid, [0]
/// EnvelopedData { version, recipientInfos { ktri { version, rid, keyEncryptionAlgorithm,
/// encryptedKey } }, encryptedContentInfo { oid, contentEncryptionAlgorithm { oid, iv },
/// [0] encryptedContent } } }.
const ENCRYPTED_KEY: [usize; 5] = [1, 0, 1, 0, 3];
const ENCRYPTED_CONTENT: [usize; 4] = [1, 0, 2, 2];

/// The gateway's certificates, read from the PKI `init` made.
struct Pki {
    ra_cert: Vec<u8>,
    ca_cert: Vec<u8>,
}

impl Pki {
    fn load(gateway: &Gateway) -> Self {
        let pem = |name: &str| {
            let bytes = std::fs::read(gateway.pki().join(name)).unwrap();
            der::pem::decode_vec(&bytes).unwrap().1
        };
        Pki {
            ra_cert: pem("ra.pem"),
            ca_cert: pem("ca.pem"),
        }
    }

    /// A well-formed pkiMessage: `content` enveloped to the RA with AES-128, signed by
    /// `who`, with a fresh senderNonce.
    fn message(
        &self,
        who: &Requester,
        mt: MessageType,
        tid: &TransactionId,
        content: &[u8],
    ) -> (Vec<u8>, Sent) {
        let spec = spec(mt, tid);
        let message = who.pki_message(&spec, &self.ra_cert, content).unwrap();
        (
            message,
            Sent {
                requester: who.clone(),
                spec,
            },
        )
    }

    /// A pkiMessage around a given (possibly broken) envelope, signed properly.
    fn message_with_envelope(
        &self,
        who: &Requester,
        mt: MessageType,
        tid: &TransactionId,
        enveloped: &[u8],
    ) -> (Vec<u8>, Sent) {
        let spec = spec(mt, tid);
        let attributes = [
            Attribute::printable(oid::MESSAGE_TYPE, &mt.code().to_string()).unwrap(),
            Attribute::printable(oid::TRANSACTION_ID, tid.as_str()).unwrap(),
            Attribute::octet_string(oid::SENDER_NONCE, &spec.sender_nonce.0),
        ];
        let message = signed::build_signed(
            &who.credential,
            Digest::Sha256,
            &signed::oid::DATA,
            enveloped,
            &attributes,
        )
        .unwrap();
        (
            message,
            Sent {
                requester: who.clone(),
                spec,
            },
        )
    }
}

fn spec(mt: MessageType, tid: &TransactionId) -> MessageSpec {
    MessageSpec {
        message_type: mt,
        transaction_id: tid.clone(),
        sender_nonce: Nonce::random(),
        digest: Digest::Sha256,
        cipher: ContentCipher::Aes128Cbc,
    }
}

/// A transactionID of fixed length (40 hex digits), never seen before.
fn fresh_tid() -> TransactionId {
    TransactionId::new(hex::encode(random_bytes(20))).unwrap()
}

fn data_key(name: &str) -> Arc<dyn Key> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    Arc::new(SoftwareKey::from_file(&path).unwrap())
}

fn requester(key: &Arc<dyn Key>, cn: &str) -> Requester {
    Requester::self_signed(key.clone(), &x509::common_name(cn).unwrap()).unwrap()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut v).unwrap();
    v
}

fn oid_content(o: &ObjectIdentifier) -> Vec<u8> {
    o.as_bytes().to_vec()
}

/// RSA PKCS#1 v1.5 encryption of `plaintext` to the key of `certificate`.
fn rsa_encrypt(certificate: &[u8], plaintext: &[u8]) -> Vec<u8> {
    use aws_lc_rs::rsa::{Pkcs1PublicEncryptingKey, PublicEncryptingKey};
    let spki = CertificateFields::parse(certificate).unwrap().spki;
    let key = Pkcs1PublicEncryptingKey::new(PublicEncryptingKey::from_der(spki).unwrap()).unwrap();
    let mut out = vec![0u8; key.ciphertext_size()];
    key.encrypt(plaintext, &mut out).unwrap().to_vec()
}

/// A GET PKIOperation target of exactly `len` bytes: the message's base64,
/// percent-encoded, with `%0A` line breaks (as sscep and Cisco IOS send) every 64
/// characters and as filler.
fn long_get_target(message: &[u8], len: usize) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(message);
    let mut escaped = String::new();
    for (i, c) in b64.chars().enumerate() {
        if i > 0 && i % 64 == 0 {
            escaped.push_str("%0A");
        }
        match c {
            '+' => escaped.push_str("%2B"),
            '/' => escaped.push_str("%2F"),
            '=' => escaped.push_str("%3D"),
            c => escaped.push(c),
        }
    }
    let mut target = format!("/scep?operation=PKIOperation&message={escaped}");
    assert!(
        target.len() + 3 <= len,
        "the message alone is {} bytes",
        target.len()
    );
    while target.len() + 3 <= len {
        target.push_str("%0A");
    }
    while target.len() < len {
        target.push('&');
    }
    target
}

/// A CertRep's SCEP attributes, read without knowing the request (the signature by
/// the RA certificate is checked).
#[derive(Debug)]
struct CertRep {
    status: String,
    fail_info: Option<String>,
    fail_info_text: Option<String>,
    transaction_id: String,
    sender_nonce: Vec<u8>,
    recipient_nonce: Vec<u8>,
}

impl CertRep {
    /// Checks the reply answers `sent`: transactionID echoed, recipientNonce = our
    /// senderNonce, a fresh senderNonce.
    fn answers(&self, sent: &Sent) -> Result<(), String> {
        if self.transaction_id != sent.spec.transaction_id.as_str() {
            return Err("the transactionID is not echoed".into());
        }
        if self.recipient_nonce != sent.spec.sender_nonce.0 {
            return Err("the recipientNonce does not echo the senderNonce".into());
        }
        if self.sender_nonce == sent.spec.sender_nonce.0 || self.sender_nonce.len() != 16 {
            return Err("the senderNonce is not a fresh 16-byte nonce".into());
        }
        Ok(())
    }
}

fn certrep_of(pki: &Pki, response: &Response) -> Result<CertRep, String> {
    if response.status != 200 {
        return Err(format!("HTTP {}", response.status));
    }
    if response.header("content-type") != Some("application/x-pki-message") {
        return Err(format!(
            "content type {:?}",
            response.header("content-type")
        ));
    }
    let sd = SignedData::parse(&response.body).map_err(|e| format!("not a SignedData: {e}"))?;
    let signer = sd.single_signer().map_err(|e| e.to_string())?;
    let certificate = sd.signer_certificate(signer).map_err(|e| e.to_string())?;
    if certificate != pki.ra_cert.as_slice() {
        return Err("the CertRep is not signed with the RA certificate".into());
    }
    sd.verify_signer(signer, certificate)
        .map_err(|e| format!("the CertRep signature: {e}"))?;
    let text = |o: &ObjectIdentifier| attribute_text(signer, o);
    let octets = |o: &ObjectIdentifier| attribute_octets(signer, o);
    if text(&oid::MESSAGE_TYPE).as_deref() != Some("3") {
        return Err("messageType is not CertRep".into());
    }
    Ok(CertRep {
        status: text(&oid::PKI_STATUS).ok_or("no pkiStatus")?,
        fail_info: text(&oid::FAIL_INFO),
        fail_info_text: text(&oid::FAIL_INFO_TEXT),
        transaction_id: text(&oid::TRANSACTION_ID).ok_or("no transactionID")?,
        sender_nonce: octets(&oid::SENDER_NONCE).ok_or("no senderNonce")?,
        recipient_nonce: octets(&oid::RECIPIENT_NONCE).ok_or("no recipientNonce")?,
    })
}

fn attribute_text(signer: &SignerInfo, o: &ObjectIdentifier) -> Option<String> {
    let value = signer.attribute(o)?.single_value().ok()?;
    value.text().ok().map(str::to_owned)
}

fn attribute_octets(signer: &SignerInfo, o: &ObjectIdentifier) -> Option<Vec<u8>> {
    let value = signer.attribute(o)?.single_value().ok()?;
    value.octet_string().ok().map(|c| c.into_owned())
}

/// One line on what came back.
fn describe(pki: &Pki, response: &Response) -> String {
    if response.status != 200
        || response.header("content-type") != Some("application/x-pki-message")
    {
        return format!("HTTP {} {:?}", response.status, body_text(response));
    }
    match certrep_of(pki, response) {
        Ok(rep) => {
            let status = match PkiStatus::from_code(&rep.status) {
                Some(PkiStatus::Success) => "SUCCESS",
                Some(PkiStatus::Failure) => "FAILURE",
                Some(PkiStatus::Pending) => "PENDING",
                None => "?",
            };
            let info = rep
                .fail_info
                .as_deref()
                .and_then(FailInfo::from_code)
                .map(FailInfo::name)
                .unwrap_or("");
            format!(
                "CertRep {status} {info} {}",
                rep.fail_info_text
                    .as_deref()
                    .map(|t| format!("({t})"))
                    .unwrap_or_default()
            )
            .trim_end()
            .to_owned()
        }
        Err(e) => format!("HTTP 200, unreadable CertRep: {e}"),
    }
}

fn body_text(response: &Response) -> String {
    String::from_utf8_lossy(&response.body[..response.body.len().min(200)])
        .trim()
        .to_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// A DER tree to mutate
// ---------------------------------------------------------------------------------------

/// An element: primitive (tag, content), constructed (tag, children), or raw bytes
/// written verbatim (to plant a lying length).
#[derive(Clone, Debug)]
enum Node {
    Prim(u8, Vec<u8>),
    Cons(u8, Vec<Node>),
    Raw(Vec<u8>),
}

impl Node {
    /// Decodes DER (what our builders write); re-encoding gives the same bytes.
    fn decode(der: &[u8]) -> Node {
        let node = Self::from_tlv(ber::parse(der).unwrap());
        assert_eq!(node.encode(), der, "not DER: the tree would not round-trip");
        node
    }

    fn from_tlv(tlv: Tlv<'_>) -> Node {
        if tlv.is_constructed() {
            let mut children = tlv.children().unwrap();
            let mut nodes = Vec::new();
            while let Some(child) = children.next_tlv().unwrap() {
                nodes.push(Self::from_tlv(child));
            }
            Node::Cons(tlv.tag(), nodes)
        } else {
            Node::Prim(tlv.tag(), tlv.content().to_vec())
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Node::Prim(t, content) => ber::der_tlv(*t, &[content]),
            Node::Cons(t, children) => {
                let encoded: Vec<Vec<u8>> = children.iter().map(Node::encode).collect();
                let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
                ber::der_tlv(*t, &refs)
            }
            Node::Raw(bytes) => bytes.clone(),
        }
    }

    fn at(&mut self, path: &[usize]) -> &mut Node {
        match path.split_first() {
            None => self,
            Some((&i, rest)) => self.children()[i].at(rest),
        }
    }

    fn children(&mut self) -> &mut Vec<Node> {
        match self {
            Node::Cons(_, children) => children,
            other => panic!("not constructed: {other:?}"),
        }
    }

    fn bytes(&mut self) -> &mut Vec<u8> {
        match self {
            Node::Prim(_, content) => content,
            other => panic!("not primitive: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP over raw sockets
// ---------------------------------------------------------------------------------------

/// What a connection gave back before it was closed or `deadline` passed.
struct Received {
    bytes: Vec<u8>,
    /// The server closed (EOF or reset) before the deadline.
    closed: bool,
    elapsed: Duration,
}

/// Reads until the peer closes or `deadline` passes.
fn read_until_closed(stream: &mut TcpStream, deadline: Duration) -> Received {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let closed = loop {
        if started.elapsed() > deadline {
            break false;
        }
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break true,
        }
    };
    Received {
        bytes,
        closed,
        elapsed: started.elapsed(),
    }
}

fn has_response(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| w == b"\r\n\r\n")
}

/// Sends `head` then `body` (from another thread, ignoring write errors: the server may
/// answer and close early), and reads the response within 20 s.
fn exchange(addr: SocketAddr, head: &[u8], body: Vec<u8>) -> Result<Response, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.write_all(head).map_err(|e| format!("write: {e}"))?;
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for chunk in body.chunks(64 * 1024) {
            if writer.write_all(chunk).is_err() {
                break;
            }
        }
    });
    let received = read_until_closed(&mut stream, Duration::from_secs(20));
    drop(stream);
    let _ = sender.join();
    if !has_response(&received.bytes) {
        return Err(format!(
            "no HTTP response ({} after {:?}, {} bytes)",
            if received.closed {
                "closed"
            } else {
                "still open"
            },
            received.elapsed,
            received.bytes.len()
        ));
    }
    Ok(parse_response(&received.bytes))
}

fn send_post(addr: SocketAddr, body: &[u8]) -> Result<Response, String> {
    let head = format!(
        "POST {PKI_TARGET} HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-pki-message\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    exchange(addr, head.as_bytes(), body.to_vec())
}

fn send_get(addr: SocketAddr, target: &str) -> Result<Response, String> {
    let head = format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    exchange(addr, head.as_bytes(), Vec::new())
}

fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Result<Response, String> {
    exchange(addr, bytes, Vec::new())
}

const TEN_MB: usize = 10 * 1000 * 1000;

/// A client announcing 10 MB: refused from the Content-Length alone, before a byte of
/// the body is sent.
fn ten_megabytes_declared(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).unwrap();
    let head =
        format!("POST {PKI_TARGET} HTTP/1.1\r\nHost: test\r\nContent-Length: {TEN_MB}\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let received = read_until_closed(&mut stream, Duration::from_secs(5));
    if !has_response(&received.bytes) {
        return Err(format!(
            "no answer to the headers alone within {:?}",
            received.elapsed
        ));
    }
    let response = parse_response(&received.bytes);
    if response.status != 413 {
        return Err(format!("HTTP {}, not 413", response.status));
    }
    Ok(format!("413 after {:?}, body never sent", received.elapsed))
}

/// 10 MB streamed without a declared length: cut off at max_body_bytes with 413; the
/// connection is closed instead of reading (and buffering) the rest.
fn ten_megabytes_chunked(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).unwrap();
    let head =
        format!("POST {PKI_TARGET} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'A'; 64 * 1024];
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        let mut sent = 0usize;
        while sent < TEN_MB {
            if writer.write_all(&framed).is_err() {
                return (sent, false);
            }
            sent += chunk.len();
        }
        let done = writer.write_all(b"0\r\n\r\n").is_ok();
        (sent, done)
    });
    let received = read_until_closed(&mut stream, Duration::from_secs(10));
    drop(stream);
    let (sent, completed) = sender.join().unwrap();
    if !has_response(&received.bytes) {
        return Err(format!("no response (closed: {})", received.closed));
    }
    let response = parse_response(&received.bytes);
    if response.status != 413 {
        return Err(format!("HTTP {}, not 413", response.status));
    }
    if completed {
        return Err(format!(
            "the whole 10 MB body was accepted ({sent} bytes) before the connection closed"
        ));
    }
    Ok(format!(
        "413; the client could push only {:.1} MB (socket buffers) before the close",
        sent as f64 / 1e6
    ))
}

/// Announces 5000 bytes, sends 100, half-closes: answered or closed at once, not left
/// waiting for bytes that will never come.
fn short_body_then_close(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!("POST {PKI_TARGET} HTTP/1.1\r\nHost: test\r\nContent-Length: 5000\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&[0x30; 100]).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let received = read_until_closed(&mut stream, REQUEST_TIMEOUT + Duration::from_secs(3));
    if !received.closed {
        return Err(format!("still open after {:?}", received.elapsed));
    }
    if received.elapsed > Duration::from_secs(2) {
        return Err(format!("closed only after {:?}", received.elapsed));
    }
    if has_response(&received.bytes) {
        let response = parse_response(&received.bytes);
        if !(400..500).contains(&response.status) {
            return Err(format!("HTTP {}", response.status));
        }
        return Ok(format!(
            "HTTP {} after {:?}",
            response.status, received.elapsed
        ));
    }
    Ok(format!(
        "closed without a response after {:?}",
        received.elapsed
    ))
}

/// Announces 5000 bytes, sends 100 and waits: the request timeout ends it with 408
/// (the client's fault; 503 would tell it that we are down and to retry).
fn short_body_kept_open(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!("POST {PKI_TARGET} HTTP/1.1\r\nHost: test\r\nContent-Length: 5000\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&[0x30; 100]).unwrap();
    let received = read_until_closed(&mut stream, REQUEST_TIMEOUT + Duration::from_secs(3));
    if !has_response(&received.bytes) {
        return Err(format!(
            "no answer ({}) after {:?}",
            if received.closed {
                "closed"
            } else {
                "still open"
            },
            received.elapsed
        ));
    }
    let status = parse_response(&received.bytes).status;
    if received.elapsed < REQUEST_TIMEOUT - Duration::from_millis(500) {
        return Err(format!("HTTP {status} after only {:?}", received.elapsed));
    }
    if status != 408 {
        return Err(format!(
            "HTTP {status}, not 408, after {:?}",
            received.elapsed
        ));
    }
    Ok(format!(
        "HTTP 408 after {:?} (request timeout)",
        received.elapsed
    ))
}

/// A header section dripped slowly: the connection is closed once header_timeout_secs
/// have passed, however steadily bytes keep coming.
fn slowloris(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /scep?operation=GetCACaps HTTP/1.1\r\nHost: test\r\n")
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let closed_after = loop {
        if started.elapsed() > HEADER_TIMEOUT * 4 {
            return Err(format!("still open after {:?}", started.elapsed()));
        }
        if stream.write_all(b"X").is_err() {
            break started.elapsed();
        }
        match stream.read(&mut buf) {
            Ok(0) => break started.elapsed(),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break started.elapsed(),
        }
    };
    if closed_after < HEADER_TIMEOUT - Duration::from_millis(300) {
        return Err(format!("closed too early, after {closed_after:?}"));
    }
    if has_response(&received) {
        let status = parse_response(&received).status;
        if status != 408 && status != 400 {
            return Err(format!("HTTP {status} to an unfinished header section"));
        }
    }
    Ok(format!("closed after {closed_after:?}"))
}
