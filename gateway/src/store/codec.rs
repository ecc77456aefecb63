//! The bytes a shared store keeps for one transaction.
//!
//! ```text
//! version (1) │ state (1) │ key_hash (32) │ claimant (16, InProgress)
//!                                         │ certificate DER (Issued) or ticket (PendingUpstream)
//! ```
//! Hand-written rather than serde: a few fields, no dependency, and an InProgress value
//! is a fixed 50-byte string that a Lua script can compare byte for byte
//! (compare-and-delete of one request's claim in [`super::redis`]). A record from a
//! newer version, or garbage, decodes to an error rather than to a guess. An InProgress
//! value without a claimant (34 bytes, written before claimants existed) still reads as
//! InProgress, claimed by nobody here.

use std::sync::Arc;

use super::{Record, TransactionKey};
use crate::error::{Error, Result};

const VERSION: u8 = 1;
const IN_PROGRESS: u8 = 0;
const PENDING: u8 = 1;
const ISSUED: u8 = 2;
const PENDING_UPSTREAM: u8 = 3;
const HEADER: usize = 2 + 32;
const CLAIMANT: usize = 16;

/// A decoded value: whose key it belongs to, its record and, for InProgress, which
/// request claimed it.
#[derive(Debug, PartialEq, Eq)]
pub struct Stored {
    pub key_hash: [u8; 32],
    pub record: Record,
    pub claimant: Option<[u8; CLAIMANT]>,
}

/// Encodes `record` as kept for `key`; an InProgress record is `key`'s claim.
pub fn encode(key: &TransactionKey, record: &Record) -> Vec<u8> {
    let (state, rest): (u8, &[u8]) = match record {
        Record::InProgress => (IN_PROGRESS, &key.claimant),
        Record::Pending => (PENDING, &[]),
        Record::Issued { certificate } => (ISSUED, certificate),
        Record::PendingUpstream { ticket } => (PENDING_UPSTREAM, ticket),
    };
    let mut out = Vec::with_capacity(HEADER + rest.len());
    out.push(VERSION);
    out.push(state);
    out.extend_from_slice(&key.key_hash);
    out.extend_from_slice(rest);
    out
}

/// Decodes a stored value.
pub fn decode(bytes: &[u8]) -> Result<Stored> {
    let bad = || Error::Unavailable("the store holds a transaction record we cannot read".into());
    if bytes.len() < HEADER || bytes[0] != VERSION {
        return Err(bad());
    }
    let mut key_hash = [0u8; 32];
    key_hash.copy_from_slice(&bytes[2..HEADER]);
    let rest = &bytes[HEADER..];
    let mut claimant = None;
    let record = match (bytes[1], rest.len()) {
        (IN_PROGRESS, 0) => Record::InProgress,
        (IN_PROGRESS, CLAIMANT) => {
            let mut who = [0u8; CLAIMANT];
            who.copy_from_slice(rest);
            claimant = Some(who);
            Record::InProgress
        }
        (PENDING, 0) => Record::Pending,
        (ISSUED, 1..) => Record::Issued {
            certificate: Arc::from(rest),
        },
        (PENDING_UPSTREAM, 1..) => Record::PendingUpstream {
            ticket: Arc::from(rest),
        },
        _ => return Err(bad()),
    };
    Ok(Stored {
        key_hash,
        record,
        claimant,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scep::message::TransactionId;

    fn key() -> TransactionKey {
        TransactionKey::new(TransactionId::new("t".into()).unwrap(), b"spki", None)
    }

    #[test]
    fn every_record_round_trips() {
        let k = key();
        for record in [
            Record::InProgress,
            Record::Pending,
            Record::PendingUpstream {
                ticket: Arc::from(&b"\x01ticket"[..]),
            },
            Record::Issued {
                certificate: Arc::from(&b"\x30\x03\x02\x01\x01"[..]),
            },
        ] {
            let stored = decode(&encode(&k, &record)).unwrap();
            assert_eq!((stored.key_hash, &stored.record), (k.key_hash, &record));
            let claimant = (record == Record::InProgress).then_some(k.claimant);
            assert_eq!(stored.claimant, claimant);
        }
        assert_eq!(encode(&k, &Record::InProgress).len(), HEADER + CLAIMANT);
    }

    #[test]
    fn each_request_claims_with_its_own_value() {
        let (a, b) = (key(), key());
        assert_eq!(a.key_hash, b.key_hash);
        assert_ne!(
            encode(&a, &Record::InProgress),
            encode(&b, &Record::InProgress)
        );
    }

    #[test]
    fn a_claim_without_a_claimant_is_nobodys() {
        let mut old = encode(&key(), &Record::Pending);
        old[1] = IN_PROGRESS;
        let stored = decode(&old).unwrap();
        assert_eq!((stored.record, stored.claimant), (Record::InProgress, None));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"").is_err());
        assert!(decode(&[2; 40]).is_err());
        let mut issued_without_cert = encode(&key(), &Record::Pending);
        issued_without_cert[1] = ISSUED;
        assert!(decode(&issued_without_cert).is_err());
        let mut short_claimant = encode(&key(), &Record::InProgress);
        short_claimant.pop();
        assert!(decode(&short_claimant).is_err());
    }
}
