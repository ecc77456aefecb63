//! Revocations of the embedded CA, kept in step between the CA and the store.
//!
//! The CA signs its CRL (RFC 5280 §5) from a list in its own process. On its own that
//! list would differ from replica to replica, and vanish with a restart or with a reload
//! that rebuilds the CA. So every revocation is also written to the store
//! ([`crate::store::Store::revoke`], shared by a fleet through Redis), and the CA adopts what the store
//! holds ([`crate::ca::Ca::adopt_revocations`]): before each GetCRL (RFC 8894 §3.3.4), so that any
//! replica answers with every revocation; and every [`REFRESH`] in the background, so
//! that a certificate revoked on another replica stops renewing here too.
//!
//! Two ways in: a certificate withheld from its device (`enroll.rs`: the challenge
//! validator did not acknowledge it), and an operator's `POST /admin/revoke`
//! (`http/routes.rs`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::reload::Live;
use crate::service::Gateway;

/// How often each replica adopts the store's revocations for its renewal check.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Revokes `serial` (INTEGER content bytes) at the embedded CA and records it in the
/// store. `Ok(false)`: it already was revoked here. Without an embedded CA:
/// `Err(NotFound)`. A store that cannot record it fails the call (the CA's own list
/// keeps it; the caller may retry, which is harmless).
pub async fn revoke(gateway: &Gateway, serial: &[u8]) -> Result<bool> {
    let new = gateway.ca.revoke_serial(serial)?;
    record(gateway, serial).await?;
    Ok(new)
}

/// Records in the store a revocation the CA has just made (e.g. `Ca::revoke_withheld`).
pub async fn record(gateway: &Gateway, serial: &[u8]) -> Result<()> {
    let Some(issuer) = gateway.ca.crl_issuer() else {
        return Ok(());
    };
    gateway.store.revoke(issuer, serial, unix_now()).await
}

/// Adds the store's revocations to the CA's list (nothing without an embedded CA).
pub async fn adopt(gateway: &Gateway) -> Result<()> {
    let Some(issuer) = gateway.ca.crl_issuer() else {
        return Ok(());
    };
    let revoked = gateway.store.revocations(issuer).await?;
    gateway.ca.adopt_revocations(&revoked);
    Ok(())
}

/// Adopts the store's revocations now and every [`REFRESH`], into whichever gateway
/// `live` holds at the time (a reload builds a new CA with an empty list).
pub fn spawn_refresher(live: Arc<Live>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(REFRESH);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(e) = adopt(&live.get()).await {
                tracing::warn!(error = %e, "revocations not read from the store; retrying in {}s", REFRESH.as_secs());
            }
        }
    });
}

/// A serial number given by an operator: hex, as OpenSSL prints it (`serial=0A1B…`,
/// optional `0x`, colons allowed), as INTEGER content bytes (a leading 00 where the high
/// bit is set, as DER wants it).
pub fn parse_serial(text: &str) -> Result<Vec<u8>> {
    let digits: String = text
        .trim()
        .trim_start_matches("0x")
        .trim_start_matches("0X")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let refused = || Error::Refused(format!("not a serial number in hex: {text:?}"));
    if digits.is_empty() || digits.len() > 40 {
        return Err(refused());
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let mut bytes = hex::decode(padded).map_err(|_| refused())?;
    while bytes.len() > 1 && bytes[0] == 0 && bytes[1] < 0x80 {
        bytes.remove(0);
    }
    if bytes[0] >= 0x80 {
        bytes.insert(0, 0);
    }
    if bytes.iter().all(|b| *b == 0) {
        return Err(refused());
    }
    Ok(bytes)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_read_as_openssl_prints_them() {
        assert_eq!(parse_serial("0A1B").unwrap(), vec![0x0a, 0x1b]);
        assert_eq!(parse_serial("a1b").unwrap(), vec![0x0a, 0x1b]);
        assert_eq!(parse_serial("0x0a:1b").unwrap(), vec![0x0a, 0x1b]);
        // DER INTEGER content: positive, minimal.
        assert_eq!(parse_serial("FF").unwrap(), vec![0x00, 0xff]);
        assert_eq!(parse_serial("0000FF").unwrap(), vec![0x00, 0xff]);
        assert_eq!(parse_serial("007F").unwrap(), vec![0x7f]);
        for bad in ["", "zz", "00", &"1".repeat(41)] {
            assert!(parse_serial(bad).is_err(), "{bad:?}");
        }
    }
}
