//! A SoftHSM2 token made for the benches: its own token directory and configuration in a
//! temp dir, the CA and RA keys generated in it with the project's own keygen
//! (`scep_hsm::pkcs11::admin::keygen`, as `scep-gateway init --pkcs11-...` does: labels
//! `scep-gateway-ca`/`scep-gateway-ra`, ids `01`/`02`, RSA-2048, non-extractable), and
//! opened as `scep_hsm::Pkcs11Key`s, i.e. through the gateway's session pool.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` when the module is initialised, so [`SoftHsm::create`]
//! sets it in this process's environment: call it before anything else loads the module,
//! and before the process starts threads that read the environment (the bench setup does).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use scep_hsm::pkcs11::admin::{keygen, KeySpec, TokenAccess};
use scep_hsm::pkcs11::module::TokenSelector;
use scep_hsm::pkcs11::{Pin, Purpose};
use scep_hsm::{Key, Pkcs11Key, Pkcs11KeyConfig};

use crate::Result;

/// Debian's SoftHSM2 module (`apt-get install softhsm2`), as the gateway's tests use it.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The bench token's label and user PIN (a throwaway token in a temp dir).
pub const TOKEN_LABEL: &str = "scep-bench";
pub const PIN: &str = "1234";
/// The environment variable the keys' configuration reads the PIN from.
pub const PIN_ENV: &str = "SCEP_BENCH_HSM_PIN";

/// Labels and ids as `scep-gateway init --pkcs11-...` makes them.
pub const CA_LABEL: &str = "scep-gateway-ca";
pub const RA_LABEL: &str = "scep-gateway-ra";

/// A SoftHSM2 token store in a temp dir, with one initialised token. Deleted on drop.
pub struct SoftHsm {
    dir: tempfile::TempDir,
}

impl SoftHsm {
    /// Makes the token store and the token, and points this process at it
    /// (`SOFTHSM2_CONF`, and the PIN in [`PIN_ENV`]). A missing SoftHSM2 is an error that
    /// says how to install it: the HSM benches never skip silently.
    pub fn create() -> Result<SoftHsm> {
        if !Path::new(SOFTHSM_MODULE).is_file() {
            return Err(format!(
                "SoftHSM2 is missing ({SOFTHSM_MODULE} not found): the HSM benches need it \
                 (apt-get install softhsm2, or scripts/test-all)"
            )
            .into());
        }
        let dir = tempfile::tempdir()?;
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens)?;
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )?;
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", TOKEN_LABEL])
            .args(["--so-pin", "12345678", "--pin", PIN])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .map_err(|e| {
                format!(
                    "softhsm2-util: {e} (the HSM benches need SoftHSM2: apt-get install softhsm2)"
                )
            })?;
        if !out.status.success() {
            return Err(format!(
                "softhsm2-util --init-token: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        // Edition 2021: `set_var` is safe. Done before the module is first loaded.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        std::env::set_var(PIN_ENV, PIN);
        Ok(SoftHsm { dir })
    }

    /// The configuration file, for child processes (`SOFTHSM2_CONF`).
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// Generates an RSA-2048 key pair in the token with the project's keygen.
    pub fn keygen(&self, label: &str, id: u8) -> Result<()> {
        let access = TokenAccess {
            module: SOFTHSM_MODULE.into(),
            token: TokenSelector::Label(TOKEN_LABEL.into()),
            pin: Pin::new(PIN.into()),
        };
        keygen(&access, label, &[id], KeySpec::Rsa(2048))?;
        Ok(())
    }

    /// Opens a key of the token as the gateway does (`Pkcs11Key::open`), with a pool of
    /// `sessions` sessions (`None`: the gateway's default, two per core). The pool is
    /// the token's: the first key opened decides its size.
    pub fn open(
        &self,
        label: &str,
        id: u8,
        purpose: Purpose,
        sessions: Option<usize>,
    ) -> Result<Arc<dyn Key>> {
        let mut config = Pkcs11KeyConfig::new(SOFTHSM_MODULE.into(), TOKEN_LABEL, label, PIN_ENV);
        config.key_id = Some(format!("{id:02x}"));
        config.sessions = sessions;
        Ok(Arc::new(Pkcs11Key::open(&config, purpose)?))
    }

    /// The CA (`01`, sign) and RA (`02`, sign + decrypt) keys, generated and opened.
    pub fn ca_and_ra(&self, sessions: Option<usize>) -> Result<(Arc<dyn Key>, Arc<dyn Key>)> {
        self.keygen(CA_LABEL, 1)?;
        self.keygen(RA_LABEL, 2)?;
        // The RA key first, so it is opened with the purpose that needs the most.
        let ra = self.open(RA_LABEL, 2, Purpose::BOTH, sessions)?;
        let ca = self.open(CA_LABEL, 1, Purpose::SIGN, sessions)?;
        Ok((ca, ra))
    }
}
