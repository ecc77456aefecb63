//! `hsm-rate`: the raw RSA-2048 private-operation rate of a SoftHSM2 token through the
//! gateway's own `Pkcs11Key` and session pool, at full concurrency: the HSM-bound limit
//! an enrollment rate is compared with (issue 3's target: enrollments/s ≥ 0.85 × raw
//! ops/s ÷ 3 when the RA and CA keys are both in the token).
//!
//! A fresh token in a temp dir (`scep_bench::hsm`), the CA and RA keys generated as
//! `scep-gateway init --pkcs11-...` generates them, opened with the gateway's default
//! pool (two sessions per core) unless `--sessions` says otherwise. Each of `--threads`
//! threads repeats an enrollment's three private operations (RA decrypt of a wrapped
//! AES key, CA sign of 700 bytes, RA sign of 250 bytes) for `--secs` seconds; the
//! count of operations ÷ wall time is the raw rate. Several thread counts may be given
//! (`--threads 1,2,4,8`); each is run `--rounds` times, alternately.
//!
//! ```text
//! cargo run --release -p scep-bench --bin hsm-rate -- --threads 1,4,8 --secs 5 --rounds 2
//! ```
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scep_bench::{PrivateOps, Result};

struct Args {
    threads: Vec<usize>,
    secs: f64,
    rounds: usize,
    sessions: Option<usize>,
}

fn args() -> Result<Args> {
    let mut out = Args {
        threads: vec![1, 4],
        secs: 5.0,
        rounds: 1,
        sessions: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--threads" => {
                out.threads = value()?
                    .split(',')
                    .map(|t| t.parse::<usize>().map_err(|e| format!("--threads: {e}")))
                    .collect::<std::result::Result<_, _>>()?
            }
            "--secs" => out.secs = value()?.parse()?,
            "--rounds" => out.rounds = value()?.parse()?,
            "--sessions" => out.sessions = Some(value()?.parse()?),
            "-h" | "--help" => {
                println!("hsm-rate [--threads 1,4] [--secs 5] [--rounds 1] [--sessions N]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(out)
}

/// `threads` threads doing enrollment-shaped triples for `secs`: (ops, wall seconds,
/// this process's CPU seconds).
fn run(ops: &Arc<PrivateOps>, threads: usize, secs: f64) -> Result<(u64, f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let cpu0 = process_cpu();
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (ops, stop, count) = (ops.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || -> Result<()> {
                let mut i = t * 1000;
                while !stop.load(Ordering::Relaxed) {
                    // Decrypt, CA sign, RA sign: counted one by one, so that a stop in
                    // the middle of a triple is not lost.
                    ops.decrypt(i)?;
                    count.fetch_add(1, Ordering::Relaxed);
                    ops.ca_sign()?;
                    count.fetch_add(1, Ordering::Relaxed);
                    ops.ra_sign()?;
                    count.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let n = count.load(Ordering::Relaxed);
    let wall = start.elapsed().as_secs_f64();
    for h in handles {
        h.join().map_err(|_| "a worker panicked")??;
    }
    Ok((n, wall, process_cpu() - cpu0))
}

/// utime + stime of this process, in seconds (/proc/self/stat, clock ticks of 100 Hz).
fn process_cpu() -> f64 {
    scep_bench::load::procstat::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

fn main() -> Result<()> {
    let args = args()?;
    let pki = scep_bench::hsm_pki(args.sessions)?;
    let ops = Arc::new(PrivateOps::new(&pki, 64)?);
    // One triple first: the keys work.
    ops.all(0)?;
    let sessions = args
        .sessions
        .map_or("default (2 per core)".to_owned(), |s| s.to_string());
    println!("SoftHSM2 token, RSA-2048 CA and RA keys, session pool: {sessions}");
    println!("threads  ops    wall s  ops/s    enrollments/s bound (÷3)  CPU s/op (this process)");
    for round in 0..args.rounds {
        for &threads in &args.threads {
            let (n, wall, cpu) = run(&ops, threads, args.secs)?;
            let rate = n as f64 / wall;
            println!(
                "{threads:<8} {n:<6} {wall:<7.2} {rate:<8.1} {:<25.1} {:.3} ms   (round {})",
                rate / 3.0,
                cpu / n as f64 * 1e3,
                round + 1
            );
        }
    }
    Ok(())
}
