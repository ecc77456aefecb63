//! `scep-gateway`: the command line.
//!
//! - `scep-gateway serve [--config FILE] [--listen ADDR]`: run the gateway. Without a
//!   config it runs on the embedded default in `./scep-data` (created on first start).
//! - `scep-gateway init --dir DIR [--challenge SECRET] [--legacy-des]
//!   [--pkcs11-module M --pkcs11-token-label T --pkcs11-pin-env VAR]`: create a
//!   development PKI (keys in files, or in a PKCS#11 token) and a commented `gateway.toml`.
//! - `scep-gateway hsm keygen|list|check|csr ...`: keys in a PKCS#11 token.
//! - `scep-gateway challenge new [--config F] [--requester R] [--cn-pattern P]`: a
//!   one-time challenge password.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use scep_gateway::config::FileConfig;
use scep_gateway::http::server::Server;
use scep_gateway::init;
use scep_gateway::metrics;
use scep_gateway::reload::Live;
use scep_gateway::service::Gateway;

#[derive(Parser)]
#[command(
    name = "scep-gateway",
    version,
    about = "A stateless SCEP (RFC 8894) registration authority"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SCEP_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The configuration file. Without it: the embedded default in ./scep-data.
        #[arg(long, env = "SCEP_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address, overriding `[server] listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Create a development PKI (CA, RA certificate, keys) and a gateway.toml.
    Init {
        /// The folder to create the files in (must not hold them already).
        #[arg(long)]
        dir: PathBuf,
        /// The static challenge password; a random one when omitted.
        #[arg(long)]
        challenge: Option<String>,
        /// Accept DES/3DES envelopes (micromdm scepclient, old routers).
        #[arg(long)]
        legacy_des: bool,
        /// Generate the CA and RA keys in this PKCS#11 module's token instead of files.
        #[arg(long, requires = "pkcs11_token_label")]
        pkcs11_module: Option<PathBuf>,
        /// The token's label.
        #[arg(long, requires = "pkcs11_module")]
        pkcs11_token_label: Option<String>,
        /// Environment variable holding the token's user PIN (also written to the config).
        #[arg(long, conflicts_with = "pkcs11_pin_file")]
        pkcs11_pin_env: Option<String>,
        /// File holding the token's user PIN (also written to the config).
        #[arg(long)]
        pkcs11_pin_file: Option<PathBuf>,
    },
    /// Keys in a PKCS#11 token: keygen, list, check, csr.
    Hsm {
        #[command(subcommand)]
        command: scep_gateway::cli::hsm::HsmCommand,
    },
    /// One-time challenge passwords: new.
    Challenge {
        #[command(subcommand)]
        command: scep_gateway::cli::challenge::ChallengeCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Init {
            dir,
            challenge,
            legacy_des,
            pkcs11_module,
            pkcs11_token_label,
            pkcs11_pin_env,
            pkcs11_pin_file,
        } => {
            let pkcs11 = pkcs11_module.map(|module| init::Pkcs11Init {
                module,
                token_label: pkcs11_token_label.unwrap_or_default(),
                pin_env: pkcs11_pin_env,
                pin_file: pkcs11_pin_file,
            });
            init::init(&dir, challenge, legacy_des, pkcs11.as_ref()).map(|c| print_init(&c))
        }
        Command::Hsm { command } => scep_gateway::cli::hsm::run(command),
        Command::Challenge { command } => scep_gateway::cli::challenge::run(command),
        Command::Serve { config, listen } => serve(config, listen),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("scep-gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SCEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // cryptoki logs an error for every vendor mechanism in a token's list that it
        // does not know: noise, not a problem.
        .add_directive(
            "cryptoki::mechanism=off"
                .parse()
                .unwrap_or_else(|_| unreachable!("a valid directive")),
        );
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn print_init(created: &init::Created) {
    println!("created a development PKI in {}", created.dir.display());
    println!("  config:         {}", created.config.display());
    println!("  challenge file: {}", created.challenge_file.display());
    println!("  CA SHA-256:     {}", created.ca_fingerprint);
}

fn serve(config: Option<PathBuf>, listen: Option<SocketAddr>) -> Result<(), String> {
    let config_path = match config {
        Some(path) => path,
        None => embedded_default()?,
    };
    let mut config = FileConfig::load(&config_path).map_err(|e| e.to_string())?;
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        // Before any key is loaded, so that their first operations are recorded.
        metrics::install();
        let gateway = Arc::new(Gateway::from_config(&config).map_err(|e| e.to_string())?);
        let live = Arc::new(Live::new(&config_path, config.clone(), gateway.clone()));
        reload_on_sighup(live.clone());
        scep_gateway::revocation::spawn_refresher(live.clone());
        let shutdown = shutdown_signal();
        let server = Server::bind(config.server.clone(), live.clone())
            .await
            .map_err(|e| e.to_string())?;
        let admin = Server::bind_admin(config.server.clone(), live.clone())
            .await
            .map_err(|e| e.to_string())?;
        let tls_chain = match &config.server.tls {
            Some(tls) => {
                scep_gateway::service::load_certificates("server.tls.certificate", &tls.certificate)
                    .map_err(|e| e.to_string())?
            }
            None => Vec::new(),
        };
        metrics::served_certificates(metrics::gateway_certificates(&gateway, &tls_chain));
        tokio::spawn(async {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                every.tick().await;
                metrics::run_upkeep();
            }
        });
        // Printed before the main line, which tests and scripts wait for.
        if let Some(admin) = &admin {
            println!("admin (metrics, probes) on http://{}", admin.local_addr());
        }
        let scheme = if server.is_tls() { "https" } else { "http" };
        let fingerprint = gateway.ca.chain().first().map_or_else(
            || "(upstream CAs only)".to_owned(),
            |ca| init::fingerprint(ca),
        );
        println!(
            "SCEP gateway listening on {scheme}://{}/scep",
            server.local_addr()
        );
        println!("  config:     {}", config_path.display());
        println!("  CA SHA-256: {fingerprint}");
        if let scep_gateway::config::ChallengeConfig::Static {
            password_file: Some(p),
            ..
        } = &config.challenge
        {
            println!("  challenge:  in {}", p.display());
        }
        tracing::info!(listen = %server.local_addr(), "serving");
        // The admin listener outlives the main one's drain, so that probes keep
        // seeing /readyz 503 until the process exits.
        let (stopped, admin_stop) = tokio::sync::oneshot::channel::<()>();
        let admin = admin.map(|admin| {
            tokio::spawn(admin.run(async {
                let _ = admin_stop.await;
            }))
        });
        server.run(shutdown).await;
        let _ = stopped.send(());
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        Ok(())
    })
}

/// SIGHUP reloads the configuration file (RA/CA keys and certificates, next set,
/// challenge, policy) without dropping a request; a file that does not load leaves the
/// running configuration in place and says why.
fn reload_on_sighup(live: Arc<Live>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Installed here, not in the task, so that a SIGHUP sent right after start-up
        // reloads instead of killing the process (SIGHUP's default action).
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("SIGHUP cannot be handled here; reload needs a restart");
            return;
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let live = live.clone();
                let result = tokio::task::spawn_blocking(move || live.reload()).await;
                match result {
                    Ok(Ok(())) => tracing::info!("configuration reloaded"),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "reload failed; the running configuration stays")
                    }
                    Err(e) => tracing::error!(error = %e, "reload task failed"),
                }
            }
        });
    }
}

/// `serve` without a config: reuse `./scep-data/gateway.toml`, creating it on first start.
fn embedded_default() -> Result<PathBuf, String> {
    let dir = Path::new("scep-data");
    let config = dir.join("gateway.toml");
    if !config.exists() {
        let created = init::init(dir, None, false, None)?;
        print_init(&created);
    }
    Ok(config)
}

/// Installs the SIGTERM/SIGINT handlers now and returns the future that completes on
/// the first of them. Installing them before the "listening" line matters: a signal
/// that arrives between that line and the accept loop's first poll would otherwise hit
/// the default action and kill the process without a drain.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    #[cfg(unix)]
    let interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    async move {
        #[cfg(unix)]
        {
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(term) => {}
                () = wait(interrupt) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown signal received");
    }
}
