//! What an operator writes to name a key in a PKCS#11 token, and where its PIN comes from.
//!
//! The PIN is never written inline in the configuration: it comes from an environment
//! variable or a file (issue 3), is kept in zeroizing memory, and is absent from every
//! `Debug` output, log line and error message.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::error::Pkcs11Error;

/// One private key in a PKCS#11 token.
///
/// The token is chosen by `token_label`, else `token_serial`, else `slot` (slot ids are
/// not stable across reboots or token re-insertion, so labels are preferred: PKCS#11 3.0
/// §5.5 leaves slot numbering to the module). The key is the private-key object
/// (CKO_PRIVATE_KEY) matching `key_label` and/or `key_id` (CKA_LABEL, CKA_ID; at least
/// one of the two).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11KeyConfig {
    /// The vendor's PKCS#11 library, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    pub token_label: Option<String>,
    pub token_serial: Option<String>,
    pub slot: Option<u64>,
    /// CKA_LABEL of the private key.
    pub key_label: Option<String>,
    /// CKA_ID of the private key, hex (`"01"`, `"a1b2"`).
    pub key_id: Option<String>,
    /// Environment variable holding the user PIN.
    pub pin_env: Option<String>,
    /// File holding the user PIN (trailing newline ignored).
    pub pin_file: Option<PathBuf>,
    /// Sessions kept open on the token (default: two per CPU core). Shared by all the
    /// keys of the token; the first key opened on a token decides.
    pub sessions: Option<usize>,
}

impl fmt::Debug for Pkcs11KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No PIN is ever in here, but say where it comes from, not more.
        f.debug_struct("Pkcs11KeyConfig")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("token_serial", &self.token_serial)
            .field("slot", &self.slot)
            .field("key_label", &self.key_label)
            .field("key_id", &self.key_id)
            .field("pin_env", &self.pin_env)
            .field("pin_file", &self.pin_file)
            .field("sessions", &self.sessions)
            .finish()
    }
}

impl Pkcs11KeyConfig {
    /// A config for `key_label` on the token `token_label`, PIN from `pin_env`.
    pub fn new(module: PathBuf, token_label: &str, key_label: &str, pin_env: &str) -> Self {
        Pkcs11KeyConfig {
            module,
            token_label: Some(token_label.into()),
            token_serial: None,
            slot: None,
            key_label: Some(key_label.into()),
            key_id: None,
            pin_env: Some(pin_env.into()),
            pin_file: None,
            sessions: None,
        }
    }

    /// Checks that need neither the module nor the PIN.
    pub fn check(&self) -> Result<(), Pkcs11Error> {
        let bad = |reason: &str| Err(Pkcs11Error::Config(reason.into()));
        if self.token_label.is_none() && self.token_serial.is_none() && self.slot.is_none() {
            return bad("name the token with token_label, token_serial or slot");
        }
        if self.key_label.is_none() && self.key_id.is_none() {
            return bad("name the key with key_label and/or key_id");
        }
        if self.pin_env.is_some() == self.pin_file.is_some() {
            return bad("give exactly one of pin_env or pin_file");
        }
        if self.sessions == Some(0) {
            return bad("sessions must be at least 1");
        }
        self.key_id_bytes()?;
        Ok(())
    }

    /// CKA_ID as bytes.
    pub fn key_id_bytes(&self) -> Result<Option<Vec<u8>>, Pkcs11Error> {
        self.key_id
            .as_deref()
            .map(|id| {
                hex::decode(id.trim_start_matches("0x")).map_err(|_| {
                    Pkcs11Error::Config(format!("key_id {id:?} is not hex (e.g. \"01\")"))
                })
            })
            .transpose()
    }

    /// A short name of the key for logs and metrics: `token/key`.
    pub fn describe(&self) -> String {
        let token = self
            .token_label
            .clone()
            .or_else(|| self.token_serial.as_ref().map(|s| format!("serial {s}")))
            .or_else(|| self.slot.map(|s| format!("slot {s}")))
            .unwrap_or_default();
        let key = match (&self.key_label, &self.key_id) {
            (Some(l), Some(id)) => format!("{l} (id {id})"),
            (Some(l), None) => l.clone(),
            (None, Some(id)) => format!("id {id}"),
            (None, None) => String::new(),
        };
        format!("pkcs11:{token}/{key}")
    }

    /// Reads the user PIN from its source.
    pub fn read_pin(&self) -> Result<Pin, Pkcs11Error> {
        read_pin(self.pin_env.as_deref(), self.pin_file.as_ref())
    }
}

/// Reads a PIN from an environment variable or a file (exactly one).
pub fn read_pin(env: Option<&str>, file: Option<&PathBuf>) -> Result<Pin, Pkcs11Error> {
    let text =
        match (env, file) {
            (Some(var), None) => Zeroizing::new(std::env::var(var).map_err(|_| {
                Pkcs11Error::Pin(format!("the environment variable {var} is not set"))
            })?),
            (None, Some(path)) => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    Pkcs11Error::Pin(format!("cannot read the PIN file {}: {e}", path.display()))
                })?);
                Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned())
            }
            _ => {
                return Err(Pkcs11Error::Pin(
                    "give exactly one of pin_env or pin_file".into(),
                ))
            }
        };
    if text.is_empty() {
        return Err(Pkcs11Error::Pin("the PIN is empty".into()));
    }
    Ok(Pin(text))
}

/// A user PIN: zeroized on drop, never printed.
#[derive(Clone)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    pub fn new(pin: String) -> Self {
        Pin(Zeroizing::new(pin))
    }

    pub(crate) fn to_auth(&self) -> cryptoki::types::AuthPin {
        // secrecy's SecretString zeroizes its copy on drop too.
        cryptoki::types::AuthPin::from(self.0.as_str())
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_is_never_printed() {
        let pin = Pin::new("987654".into());
        assert_eq!(format!("{pin:?}"), "Pin(..)");
    }

    #[test]
    fn config_checks_name_the_problem() {
        let mut c = Pkcs11KeyConfig::new("/x.so".into(), "t", "k", "PIN");
        assert!(c.check().is_ok());
        c.key_id = Some("zz".into());
        assert!(c.check().unwrap_err().to_string().contains("key_id"));
        c.key_id = None;
        c.pin_file = Some("/p".into());
        assert!(c
            .check()
            .unwrap_err()
            .to_string()
            .contains("pin_env or pin_file"));
    }
}
