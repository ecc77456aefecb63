//! `mode = "static"`: one shared secret, as NDES's "single password" mode.

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{presented, Challenge, ChallengeContext, Validated};
use crate::ca::BoxFuture;
use crate::error::{Error, Result};
use crate::store::sha256;

/// The shared secret, kept only as its SHA-256 so that comparing takes the same time
/// whatever the length or content of the guess.
pub struct StaticChallenge {
    digest: [u8; 32],
}

impl std::fmt::Debug for StaticChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticChallenge(..)")
    }
}

impl StaticChallenge {
    pub fn new(secret: Zeroizing<String>) -> Self {
        StaticChallenge {
            digest: sha256(secret.as_bytes()),
        }
    }

    /// Constant-time check of a presented password.
    pub fn matches(&self, presented: &str) -> bool {
        sha256(presented.as_bytes()).ct_eq(&self.digest).into()
    }
}

impl Challenge for StaticChallenge {
    fn validate<'a>(&'a self, ctx: &'a ChallengeContext<'a>) -> BoxFuture<'a, Result<Validated>> {
        let result = presented(ctx).and_then(|p| {
            if self.matches(p) {
                Ok(Validated::default())
            } else {
                Err(Error::Refused("the challenge password is wrong".into()))
            }
        });
        Box::pin(std::future::ready(result))
    }

    fn mode(&self) -> &'static str {
        "static"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_secret_matches() {
        let c = StaticChallenge::new(Zeroizing::new("secret123".into()));
        assert!(c.matches("secret123"));
        assert!(!c.matches("secret12"));
        assert!(!c.matches("secret1234"));
        assert!(!c.matches(""));
        assert_eq!(format!("{c:?}"), "StaticChallenge(..)");
    }
}
