//! Reply checking, off the request path: a thread that reads every reply as the device
//! would (signature, messageType, pkiStatus SUCCESS, transactionID, nonces) and decrypts
//! a sample (or all) of them, checking the certificate is for the device's key.
//! Decryption is an RSA private operation on the client's side: sampling keeps the
//! client from eating the cores the server is measured on.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use scep_gateway::ca::certificate::ParsedCertificate;
use scep_gateway::scep::client::Requester;
use scep_gateway::scep::message::PkiStatus;

use super::pool::Request;

/// A reply to check: which target, which request, the bytes.
pub struct Reply {
    pub target: usize,
    pub request: usize,
    pub bytes: Vec<u8>,
}

/// What the checker found, per target.
#[derive(Default, Clone, Debug)]
pub struct Checked {
    pub verified: u64,
    pub decrypted: u64,
    pub errors: BTreeMap<String, u64>,
    /// Wrong replies among the measured requests (warm-up excluded): what separates
    /// answered exchanges from successful enrollments.
    pub measured_errors: u64,
}

/// The checker thread. Send replies on the returned sender; drop it and join the
/// handle for the results.
pub fn spawn(
    requesters: Arc<Vec<Requester>>,
    requests: Vec<Arc<Vec<Request>>>,
    decrypt_every: u64,
    warmup: usize,
) -> (mpsc::Sender<Reply>, JoinHandle<Vec<Checked>>) {
    let (tx, rx) = mpsc::channel::<Reply>();
    let handle = std::thread::spawn(move || {
        let mut out = vec![Checked::default(); requests.len()];
        for reply in rx {
            let request = &requests[reply.target][reply.request];
            let checked = &mut out[reply.target];
            let decrypt = decrypt_every > 0 && (reply.request as u64).is_multiple_of(decrypt_every);
            match check(&requesters, request, &reply.bytes, decrypt) {
                Ok(()) => {
                    checked.verified += 1;
                    checked.decrypted += u64::from(decrypt);
                }
                Err(kind) => {
                    *checked.errors.entry(kind).or_default() += 1;
                    checked.measured_errors += u64::from(reply.request >= warmup);
                }
            }
        }
        out
    });
    (tx, handle)
}

/// Checks one reply; the error is a kind, for counting.
pub fn check(
    requesters: &[Requester],
    request: &Request,
    reply: &[u8],
    decrypt: bool,
) -> Result<(), String> {
    let device = &requesters[request.requester];
    let read = if decrypt {
        // DES replies allowed: micromdm answers in DES whatever it was asked in; what
        // is checked here is that the server answered, not its cipher choice.
        device.read_reply(reply, &request.spec, true)
    } else {
        device.verify_reply(reply, &request.spec)
    }
    .map_err(|e| format!("unreadable reply: {}", error_kind(&e)))?;
    match read.status {
        PkiStatus::Success => {}
        PkiStatus::Failure => {
            let info = read.fail_info.map(|f| f.name()).unwrap_or("?");
            return Err(format!("pkiStatus FAILURE {info}"));
        }
        PkiStatus::Pending => return Err("pkiStatus PENDING".into()),
    }
    if decrypt {
        let issued = read
            .certificates
            .first()
            .ok_or("SUCCESS without a certificate")?;
        let parsed = ParsedCertificate::from_der(issued)
            .map_err(|_| "the issued certificate is unreadable")?;
        if parsed.public_key_info != device.credential.key.public_key_info() {
            return Err("the issued certificate is for another key".into());
        }
    }
    Ok(())
}

/// The error's text, bounded (an error kind to count, not a log line).
fn error_kind(e: &scep_gateway::error::Error) -> String {
    e.to_string().chars().take(120).collect()
}
