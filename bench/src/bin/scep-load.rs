//! `scep-load`: load any SCEP server with distinct, pre-built PKCSReqs and report
//! throughput, latency, the server's CPU per enrollment and peak RSS. See
//! `scep_bench::load` and bench/README.md.
//!
//! ```text
//! scep-load http://127.0.0.1:8080/scep --challenge secret -n 2000 -c 2 --server-pid PID
//! scep-load URL --rate 300 -n 3000            # open loop
//! scep-load URL --compare URL2 -c 1 --cipher des
//! ```
//! Exit status: 0 when every reply was a verified SUCCESS, 1 when any was not, 2 when
//! the run could not start.

use clap::Parser;
use scep_bench::load::{self, report};

#[derive(Parser)]
#[command(
    name = "scep-load",
    about = "Load generator for SCEP (RFC 8894) servers"
)]
struct Cli {
    #[command(flatten)]
    options: load::Options,
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scep-load: no runtime: {e}");
            std::process::exit(2);
        }
    };
    let outcome = match runtime.block_on(load::run(cli.options)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("scep-load: {e}");
            std::process::exit(2);
        }
    };
    print!("{}", report::text(&outcome));
    let mut failed = !outcome.ok();
    if let Some(path) = &outcome.options.json {
        let text = serde_json::to_string_pretty(&report::json(&outcome)).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("scep-load: {}: {e}", path.display());
            failed = true;
        }
    }
    if let Some(path) = &outcome.options.html {
        if let Err(e) = std::fs::write(path, report::html(&outcome)) {
            eprintln!("scep-load: {}: {e}", path.display());
            failed = true;
        }
    }
    if failed {
        eprintln!("scep-load: FAILED: some replies were missing or wrong (see ERRORS)");
        std::process::exit(1);
    }
}
