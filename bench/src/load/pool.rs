//! The requests, built before the run so that the client costs little while it runs:
//! a pool of device keys (RSA-2048, generated on every core: a key takes ~0.1 s) and
//! one distinct PKCSReq per request.

use std::sync::Arc;

use scep_gateway::ca::certificate as x509;
use scep_gateway::cms::algorithms::{ContentCipher, Digest};
use scep_gateway::scep::client::{MessageSpec, Requester};
use scep_gateway::scep::message::{MessageType, Nonce, TransactionId};
use scep_hsm::{Key, SoftwareKey};

use crate::Result;

/// One pre-built PKCSReq and what it takes to check its reply.
pub struct Request {
    pub bytes: Vec<u8>,
    pub spec: MessageSpec,
    /// Index into the key pool.
    pub requester: usize,
}

/// Runs `f(i)` for `i` in `0..count` on every core, results in order. The first error
/// wins (setup errors are fatal: nothing has been measured yet).
fn parallel<T: Send>(count: usize, f: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(count.max(1));
    let chunks: Vec<Result<Vec<T>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = &f;
                // Thread t takes every t-th index; reassembled below.
                s.spawn(move || (t..count).step_by(threads).map(f).collect())
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a setup thread panicked".into()))
            })
            .collect()
    });
    let mut columns = Vec::with_capacity(threads);
    for chunk in chunks {
        columns.push(chunk?.into_iter());
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        match columns[i % threads].next() {
            Some(v) => out.push(v),
            None => return Err("setup threads returned too few results".into()),
        }
    }
    Ok(out)
}

/// `count` devices with fresh RSA-2048 keys and self-signed certificates.
pub fn requesters(count: usize) -> Result<Vec<Requester>> {
    parallel(count, |i| {
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate_rsa(format!("load-{i}"), 2048)?);
        let subject = x509::common_name(&format!("scep-load-device-{i}"))?;
        Ok(Requester::self_signed(key, &subject)?)
    })
}

/// How the requests are shaped.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub digest: Digest,
    pub cipher: ContentCipher,
}

/// `count` distinct PKCSReqs enveloped to `recipient` (the RA's encryption
/// certificate). Request `i` has transactionID `{tag}-{i}` and subject
/// `CN=scep-load-{tag}-{i}`; `tag` should be unique per run, so that a server's
/// transaction store never answers one from memory.
pub fn requests(
    requesters: &[Requester],
    recipient: &[u8],
    shape: Shape,
    challenge: Option<&str>,
    tag: &str,
    count: usize,
) -> Result<Vec<Request>> {
    if requesters.is_empty() {
        return Err("no device keys".into());
    }
    parallel(count, |i| {
        let requester = i % requesters.len();
        let device = &requesters[requester];
        let subject = x509::common_name(&format!("scep-load-{tag}-{i}"))?;
        let csr = device.certification_request(&subject, challenge)?;
        let spec = MessageSpec {
            message_type: MessageType::PkcsReq,
            transaction_id: TransactionId::new(format!("{tag}-{i}"))
                .ok_or("transactionID too long")?,
            sender_nonce: Nonce::random(),
            digest: shape.digest,
            cipher: shape.cipher,
        };
        let bytes = device.pki_message(&spec, recipient, &csr)?;
        Ok(Request {
            bytes,
            spec,
            requester,
        })
    })
}

/// A random tag for this run's transactionIDs.
pub fn run_tag() -> String {
    let mut bytes = [0u8; 6];
    // A failing RNG only makes the tag less unique; the time still differs per run.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    hex_lower(&bytes)
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_keeps_the_order() {
        let v = parallel(103, |i| Ok(i * 2)).unwrap();
        assert_eq!(v, (0..103).map(|i| i * 2).collect::<Vec<_>>());
        assert!(parallel(0, Ok::<usize, crate::BoxError>)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn parallel_reports_errors() {
        let r = parallel(10, |i| if i == 7 { Err("seven".into()) } else { Ok(i) });
        assert!(r.is_err());
    }
}
