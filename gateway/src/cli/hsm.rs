//! `scep-gateway hsm ...`: the operator's tools for keys in a PKCS#11 token.
//!
//! - `keygen`: an RSA (2048/3072/4096) or EC (P-256/P-384) key pair, non-extractable and
//!   sensitive, with a label and an id;
//! - `list`: the keys and certificates on the token;
//! - `check`: a sign and a decrypt round trip with the key, with timings;
//! - `csr`: a PKCS#10 request (RFC 2986) signed by the key in the token, to have the
//!   enterprise CA issue the RA (or CA) certificate, as NDES's "Exchange Enrollment Agent
//!   (Offline request)" and "CEP Encryption" templates do.
//!
//! The PIN comes from an environment variable or a file, never from the command line
//! (it would show in `ps` and shell history).

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use clap::{Args, Subcommand};
use der::Encode;
use scep_hsm::pkcs11::admin::{self, KeySpec, TokenAccess};
use scep_hsm::pkcs11::module::TokenSelector;
use scep_hsm::pkcs11::{read_pin, Pkcs11Key, Pkcs11KeyConfig, Purpose};
use scep_hsm::Key;

use crate::ca::certificate::Signer;

/// Which token, and its PIN.
#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// The PKCS#11 module (the vendor's library).
    #[arg(long, env = "SCEP_PKCS11_MODULE")]
    pub module: PathBuf,
    /// The token's label.
    #[arg(long)]
    pub token_label: String,
    /// Environment variable holding the user PIN.
    #[arg(
        long,
        conflicts_with = "pin_file",
        required_unless_present = "pin_file"
    )]
    pub pin_env: Option<String>,
    /// File holding the user PIN.
    #[arg(long)]
    pub pin_file: Option<PathBuf>,
}

impl TokenArgs {
    pub fn access(&self) -> Result<TokenAccess, String> {
        Ok(TokenAccess {
            module: self.module.clone(),
            token: TokenSelector::Label(self.token_label.clone()),
            pin: read_pin(self.pin_env.as_deref(), self.pin_file.as_ref())
                .map_err(|e| e.to_string())?,
        })
    }

    /// The `Pkcs11KeyConfig` of a key on this token.
    pub fn key_config(&self, label: &str, id: Option<&str>) -> Pkcs11KeyConfig {
        Pkcs11KeyConfig {
            module: self.module.clone(),
            token_label: Some(self.token_label.clone()),
            token_serial: None,
            slot: None,
            key_label: Some(label.into()),
            key_id: id.map(str::to_owned),
            pin_env: self.pin_env.clone(),
            pin_file: self.pin_file.clone(),
            sessions: Some(1),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum HsmCommand {
    /// Generate a key pair in the token (non-extractable, sensitive).
    Keygen {
        #[command(flatten)]
        token: TokenArgs,
        /// CKA_LABEL of the new key pair.
        #[arg(long)]
        label: String,
        /// CKA_ID, hex (e.g. 01).
        #[arg(long)]
        id: String,
        /// rsa:2048, rsa:3072, rsa:4096, ec:p256 or ec:p384.
        #[arg(long = "type", default_value = "rsa:2048")]
        key_type: String,
    },
    /// List the keys and certificates on the token.
    List {
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Sign and (RSA) decrypt once with a key, and print the timings.
    Check {
        #[command(flatten)]
        token: TokenArgs,
        #[arg(long)]
        label: String,
        #[arg(long)]
        id: Option<String>,
    },
    /// Write a PKCS#10 certificate request signed by a key in the token.
    Csr {
        #[command(flatten)]
        token: TokenArgs,
        #[arg(long)]
        label: String,
        #[arg(long)]
        id: Option<String>,
        /// The subject, RFC 4514 style: "CN=SCEP RA,O=Example".
        #[arg(long)]
        subject: String,
        /// Where to write the PEM request; standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs one `hsm` subcommand, printing its result.
pub fn run(command: HsmCommand) -> Result<(), String> {
    match command {
        HsmCommand::Keygen {
            token,
            label,
            id,
            key_type,
        } => {
            let spec = KeySpec::from_str(&key_type)?;
            let id_bytes = hex::decode(id.trim_start_matches("0x"))
                .map_err(|_| format!("--id {id:?} is not hex"))?;
            let generated = admin::keygen(&token.access()?, &label, &id_bytes, spec)
                .map_err(|e| e.to_string())?;
            println!(
                "generated {:?} key {label:?} (id {}) on token {:?}",
                generated.algorithm,
                hex::encode(&generated.id),
                token.token_label
            );
            print!(
                "{}",
                der::pem::encode_string(
                    "PUBLIC KEY",
                    der::pem::LineEnding::LF,
                    &generated.public_key_info
                )
                .map_err(|e| e.to_string())?
            );
            Ok(())
        }
        HsmCommand::List { token } => {
            let objects = admin::list(&token.access()?).map_err(|e| e.to_string())?;
            if objects.is_empty() {
                println!("no objects visible on token {:?}", token.token_label);
            }
            for o in objects {
                println!(
                    "{:<12} label={:?} id={} {} {}",
                    o.class,
                    o.label,
                    o.id,
                    o.kind,
                    o.flags.join(",")
                );
            }
            Ok(())
        }
        HsmCommand::Check { token, label, id } => {
            let key = Pkcs11Key::open(&token.key_config(&label, id.as_deref()), Purpose::SIGN)
                .map_err(|e| e.to_string())?;
            let report = admin::round_trip(&key).map_err(|e| format!("{}: {e}", key.label()))?;
            println!("{}: {:?}", key.label(), key.algorithm());
            println!("  sign:    ok in {:.2} ms", report.sign.as_secs_f64() * 1e3);
            match report.decrypt {
                Some(d) => println!("  decrypt: ok in {:.2} ms", d.as_secs_f64() * 1e3),
                None => println!("  decrypt: not applicable (EC key)"),
            }
            Ok(())
        }
        HsmCommand::Csr {
            token,
            label,
            id,
            subject,
            out,
        } => {
            let key = Pkcs11Key::open(&token.key_config(&label, id.as_deref()), Purpose::SIGN)
                .map_err(|e| e.to_string())?;
            let pem = csr_pem(Arc::new(key), &subject)?;
            match out {
                Some(path) => std::fs::write(&path, pem)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
                None => print!("{pem}"),
            }
            Ok(())
        }
    }
}

/// A PEM `CERTIFICATE REQUEST` for `key` with `subject` (RFC 4514 string), built by
/// [`crate::csr::build`] and signed through the key (in the token).
pub fn csr_pem(key: Arc<dyn Key>, subject: &str) -> Result<String, String> {
    let name = x509_cert::name::Name::from_str(subject)
        .map_err(|e| format!("--subject {subject:?} is not a distinguished name: {e}"))?;
    let name = name.to_der().map_err(|e| e.to_string())?;
    let der = crate::csr::build(&Signer::new(key), &name, None, &[]).map_err(|e| e.to_string())?;
    der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, &der)
        .map_err(|e| e.to_string())
}
