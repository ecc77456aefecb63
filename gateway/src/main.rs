//! `scep-gateway`: the command line.
//!
//! - `scep-gateway serve [--config FILE] [--listen ADDR]`: run the gateway. Without a
//!   config it runs on the embedded default in `./scep-data` (created on first start).
//! - `scep-gateway init --dir DIR [--challenge SECRET] [--legacy-des]`: create a
//!   development PKI and a commented `gateway.toml`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use scep_gateway::config::FileConfig;
use scep_gateway::http::server::Server;
use scep_gateway::init;
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
        } => init::init(&dir, challenge, legacy_des).map(|created| print_init(&created)),
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
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
        let gateway = Arc::new(Gateway::from_config(&config).map_err(|e| e.to_string())?);
        let server = Server::bind(config.server.clone(), gateway.clone())
            .await
            .map_err(|e| e.to_string())?;
        let scheme = if server.is_tls() { "https" } else { "http" };
        let fingerprint = init::fingerprint(&gateway.ca.chain()[0]);
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
        server.run(shutdown_signal()).await;
        Ok(())
    })
}

/// `serve` without a config: reuse `./scep-data/gateway.toml`, creating it on first start.
fn embedded_default() -> Result<PathBuf, String> {
    let dir = Path::new("scep-data");
    let config = dir.join("gateway.toml");
    if !config.exists() {
        let created = init::init(dir, None, false)?;
        print_init(&created);
    }
    Ok(config)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}
