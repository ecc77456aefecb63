//! `scep-gateway challenge new`: a one-time challenge password from the command line,
//! written straight into the configured store (the Redis of a replica fleet, so every
//! replica accepts it). The same rules as the admin endpoint: validity, single use, the
//! per-requester bound ("password cache full").

use std::path::PathBuf;

use clap::Subcommand;

use crate::challenge::one_time::{Issue, OneTimeChallenge};
use crate::config::{ChallengeConfig, FileConfig};
use crate::service::build_store;

#[derive(Subcommand, Debug)]
pub enum ChallengeCommand {
    /// Issues a one-time password and prints it (and nothing else) on stdout.
    New {
        /// The configuration file (its `[challenge]` must be `mode = "one-time"`).
        #[arg(long, env = "SCEP_CONFIG", default_value = "scep-data/gateway.toml")]
        config: PathBuf,
        /// Whom the password counts against (default: `cli`).
        #[arg(long, default_value = "cli")]
        requester: String,
        /// A regex the CSR's commonName must match whole.
        #[arg(long)]
        cn_pattern: Option<String>,
    },
}

pub fn run(command: ChallengeCommand) -> Result<(), String> {
    let ChallengeCommand::New {
        config,
        requester,
        cn_pattern,
    } = command;
    let config = FileConfig::load(&config).map_err(|e| e.to_string())?;
    let ChallengeConfig::OneTime(one_time) = &config.challenge else {
        return Err("[challenge] mode is not \"one-time\"".into());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let store = build_store(&config.store).map_err(|e| e.to_string())?;
        let issuer = OneTimeChallenge::new(one_time, store).map_err(|e| e.to_string())?;
        match issuer
            .issue(&requester, cn_pattern.as_deref())
            .await
            .map_err(|e| e.to_string())?
        {
            Issue::Issued(new) => {
                println!("{}", new.password.as_str());
                Ok(())
            }
            Issue::CacheFull => Err(format!(
                "password cache full: {requester} already has {} unused passwords",
                one_time.max_outstanding_per_requester
            )),
        }
    })
}
