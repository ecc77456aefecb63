//! The bytes a shared store keeps for one transaction.
//!
//! ```text
//! version (1) │ state (1) │ key_hash (32) │ certificate DER (Issued) or ticket (PendingUpstream)
//! ```
//! Hand-written rather than serde: three fields, no dependency, and the InProgress value
//! is a fixed 34-byte string that a Lua script can compare byte for byte
//! (compare-and-delete in [`super::redis`]). A record from a newer version, or garbage,
//! decodes to an error rather than to a guess.

use std::sync::Arc;

use super::Record;
use crate::error::{Error, Result};

const VERSION: u8 = 1;
const IN_PROGRESS: u8 = 0;
const PENDING: u8 = 1;
const ISSUED: u8 = 2;
const PENDING_UPSTREAM: u8 = 3;
const HEADER: usize = 2 + 32;

/// Encodes `record` as claimed by the key with hash `key_hash`.
pub fn encode(key_hash: &[u8; 32], record: &Record) -> Vec<u8> {
    let (state, certificate): (u8, &[u8]) = match record {
        Record::InProgress => (IN_PROGRESS, &[]),
        Record::Pending => (PENDING, &[]),
        Record::Issued { certificate } => (ISSUED, certificate),
        Record::PendingUpstream { ticket } => (PENDING_UPSTREAM, ticket),
    };
    let mut out = Vec::with_capacity(HEADER + certificate.len());
    out.push(VERSION);
    out.push(state);
    out.extend_from_slice(key_hash);
    out.extend_from_slice(certificate);
    out
}

/// Decodes a stored value into the key hash that owns it and its record.
pub fn decode(bytes: &[u8]) -> Result<([u8; 32], Record)> {
    let bad = || Error::Unavailable("the store holds a transaction record we cannot read".into());
    if bytes.len() < HEADER || bytes[0] != VERSION {
        return Err(bad());
    }
    let mut key_hash = [0u8; 32];
    key_hash.copy_from_slice(&bytes[2..HEADER]);
    let rest = &bytes[HEADER..];
    let record = match (bytes[1], rest.is_empty()) {
        (IN_PROGRESS, true) => Record::InProgress,
        (PENDING, true) => Record::Pending,
        (ISSUED, false) => Record::Issued {
            certificate: Arc::from(rest),
        },
        (PENDING_UPSTREAM, false) => Record::PendingUpstream {
            ticket: Arc::from(rest),
        },
        _ => return Err(bad()),
    };
    Ok((key_hash, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_round_trips() {
        let hash = [7u8; 32];
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
            assert_eq!(decode(&encode(&hash, &record)).unwrap(), (hash, record));
        }
        assert_eq!(encode(&hash, &Record::InProgress).len(), HEADER);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"").is_err());
        assert!(decode(&[2; 40]).is_err());
        let mut issued_without_cert = encode(&[0; 32], &Record::Pending);
        issued_without_cert[1] = ISSUED;
        assert!(decode(&issued_without_cert).is_err());
    }
}
