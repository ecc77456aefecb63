//! The overhead ratio: what one enrollment costs beside the three RSA private operations
//! it cannot avoid (RA decrypt, CA sign, RA sign). Target: ≤ 1.25.
//!
//! Both sides run in this one process, interleaved in small batches whose order rotates,
//! so that a neighbour's build slowing the machine down slows both sides alike: the
//! ratio survives a noisy machine even when the absolute figures do not.
//!
//! Wall time and CPU time are both reported. CPU time is the sum over this process's
//! threads (`/proc/self/task/*/schedstat`), so it includes the tokio blocking-pool
//! thread the CA signs on, and leaves out the time other processes held the core.
//!
//! ```text
//! cargo run --release -p scep-bench --bin ratio -- [--n 2000] [--batch 50] [--variant all|rsa2048|ra-rsa3072|ca-p256]
//! ```
//! `--profile K` runs only K end-to-end enrollments (cycling through the N messages)
//! after the setup, for a profiler to look at (`perf record`, `valgrind --tool=callgrind`).
//!
//! `--redis URL` adds a fourth, interleaved like the others: the same pipeline with the
//! Redis store (`redis://127.0.0.1:16379/0`; keys under `scep-ratio:`), and prints its
//! CPU beside the in-process store's. This process's CPU only: Redis's own is not in it.

use std::time::{Duration, Instant};

use scep_bench::{Message, Pki, PrivateOps, Result, Variant};
use scep_gateway::cms::algorithms::ContentCipher;

struct Options {
    n: usize,
    batch: usize,
    variants: Vec<Variant>,
    profile: Option<usize>,
    redis: Option<String>,
}

fn options() -> Result<Options> {
    let mut options = Options {
        n: 2000,
        batch: 50,
        variants: Variant::ALL.to_vec(),
        profile: None,
        redis: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => options.n = value()?.parse()?,
            "--batch" => options.batch = value()?.parse()?,
            "--profile" => options.profile = Some(value()?.parse()?),
            "--redis" => options.redis = Some(value()?),
            "--variant" => {
                let v = value()?;
                options.variants = if v == "all" {
                    Variant::ALL.to_vec()
                } else {
                    vec![Variant::parse(&v).ok_or(format!("unknown variant {v}"))?]
                };
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if options.n == 0 || options.batch == 0 {
        return Err("--n and --batch must be positive".into());
    }
    options.batch = options.batch.min(options.n);
    Ok(options)
}

/// CPU time used so far by every thread of this process.
fn process_cpu() -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// Wall and CPU time spent in one kind of work, and how many operations.
#[derive(Default, Clone, Copy)]
struct Tally {
    wall: Duration,
    cpu: Duration,
    ops: usize,
}

impl Tally {
    fn per_op_us(self) -> (f64, f64) {
        let n = self.ops.max(1) as f64;
        (
            self.wall.as_secs_f64() * 1e6 / n,
            self.cpu.as_secs_f64() * 1e6 / n,
        )
    }
}

/// Times `batch` calls of `f(i)`, `i` counting on from `start`.
fn timed(
    tally: &mut Tally,
    start: usize,
    batch: usize,
    mut f: impl FnMut(usize) -> Result<()>,
) -> Result<()> {
    let (cpu0, wall0) = (process_cpu(), Instant::now());
    for i in start..start + batch {
        f(i)?;
    }
    tally.wall += wall0.elapsed();
    // A thread that exited in the batch takes its CPU time with it; never go negative.
    tally.cpu += process_cpu().saturating_sub(cpu0);
    tally.ops += batch;
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn run(pki: &Pki, requesters: &[scep_gateway::scep::client::Requester], o: &Options) -> Result<()> {
    let rt = scep_bench::runtime()?;
    let gateway = scep_bench::gateway(pki)?;
    // Distinct messages for every enrollment of both kinds: the pipeline's store would
    // answer a repeated transactionID from memory.
    let build = |tag: &str| -> Result<Vec<Message>> {
        scep_bench::messages(requesters, &pki.ra, ContentCipher::Aes256Cbc, tag, o.n)
    };
    let e2e_msgs = build(&format!("{}-e2e", pki.variant.name()))?;
    let pipe_msgs: Vec<bytes::Bytes> = build(&format!("{}-pipe", pki.variant.name()))?
        .into_iter()
        .map(|m| bytes::Bytes::from(m.bytes))
        .collect();
    let ops = PrivateOps::new(pki, o.n)?;
    let redis = match &o.redis {
        Some(url) => {
            let _runtime = rt.enter();
            let store = scep_gateway::store::redis::RedisStore::connect(
                scep_gateway::store::redis::RedisSettings {
                    url: url.clone(),
                    tls_ca_pem: None,
                    key_prefix: "scep-ratio:".into(),
                    command_timeout: Duration::from_secs(2),
                    ttl: Duration::from_secs(600),
                    sentinel: None,
                    replica_acks: 0,
                    cluster: None,
                },
            )?;
            let gateway = scep_bench::gateway_with_store(pki, std::sync::Arc::new(store))?;
            let msgs: Vec<bytes::Bytes> = build(&format!("{}-redis", pki.variant.name()))?
                .into_iter()
                .map(|m| bytes::Bytes::from(m.bytes))
                .collect();
            Some((gateway, msgs))
        }
        None => None,
    };

    // Every enrollment measured must be a working one: check one reply of each kind.
    let reply = scep_bench::enroll(pki, &rt, &e2e_msgs[0].bytes)?;
    scep_bench::check_reply(requesters, &e2e_msgs[0], &reply)?;
    if let Some(k) = o.profile {
        let start = Instant::now();
        for i in 0..k {
            scep_bench::enroll(pki, &rt, &e2e_msgs[i % o.n].bytes)?;
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / k.max(1) as f64;
        println!(
            "profile {}: {k} enrollments, {us:.1} µs each",
            pki.variant.name()
        );
        return Ok(());
    }
    let through = |gateway: &std::sync::Arc<scep_gateway::service::Gateway>,
                   message: &bytes::Bytes|
     -> Result<()> {
        let (reply, summary) = rt.block_on(scep_gateway::enroll::pki_operation(
            gateway.clone(),
            message.clone(),
        ));
        reply?;
        if summary.outcome != "success" {
            return Err(
                format!("pipeline outcome {}: {:?}", summary.outcome, summary.detail).into(),
            );
        }
        Ok(())
    };
    let pipeline = |i: usize| through(&gateway, &pipe_msgs[i]);

    let (mut e2e, mut pipe, mut bare) = (Tally::default(), Tally::default(), Tally::default());
    let mut piped_redis = Tally::default();
    let (mut r_e2e, mut r_pipe, mut r_redis) = (Vec::new(), Vec::new(), Vec::new());
    let kinds = if redis.is_some() { 4 } else { 3 };
    let mut start = 0;
    let mut round = 0;
    while start < o.n {
        let batch = o.batch.min(o.n - start);
        let (mut a, mut b, mut c) = (Tally::default(), Tally::default(), Tally::default());
        let mut d = Tally::default();
        // Rotate the order so that none of the kinds always runs first (warm caches,
        // a neighbour's burst at the start of a round).
        for k in 0..kinds {
            match (round + k) % kinds {
                0 => timed(&mut a, start, batch, |i| {
                    scep_bench::enroll(pki, &rt, &e2e_msgs[i].bytes).map(drop)
                })?,
                1 => timed(&mut b, start, batch, pipeline)?,
                2 => timed(&mut c, start, batch, |i| ops.all(i))?,
                _ => {
                    if let Some((gateway, msgs)) = &redis {
                        timed(&mut d, start, batch, |i| through(gateway, &msgs[i]))?;
                    }
                }
            }
        }
        r_e2e.push(a.cpu.as_secs_f64() / c.cpu.as_secs_f64());
        r_pipe.push(b.cpu.as_secs_f64() / c.cpu.as_secs_f64());
        if redis.is_some() {
            r_redis.push(b.cpu.as_secs_f64() / d.cpu.as_secs_f64());
        }
        for (total, part) in [
            (&mut e2e, a),
            (&mut pipe, b),
            (&mut bare, c),
            (&mut piped_redis, d),
        ] {
            total.wall += part.wall;
            total.cpu += part.cpu;
            total.ops += part.ops;
        }
        start += batch;
        round += 1;
    }

    let name = pki.variant.name();
    println!(
        "variant {name}: N={} in batches of {}, interleaved",
        o.n, o.batch
    );
    for (label, t) in [
        ("end_to_end (parse..certrep)", e2e),
        ("pipeline (enroll::pki_operation)", pipe),
        ("private_ops (decrypt + 2 sign)", bare),
    ] {
        let (wall, cpu) = t.per_op_us();
        println!("  {label:<34} wall {wall:8.1} µs/op   cpu {cpu:8.1} µs/op");
    }
    let ratio = |t: Tally| {
        (
            t.wall.as_secs_f64() / bare.wall.as_secs_f64(),
            t.cpu.as_secs_f64() / bare.cpu.as_secs_f64(),
        )
    };
    let (w, c) = ratio(e2e);
    println!(
        "  end_to_end / private_ops = {c:.3} (cpu), {w:.3} (wall); median of {round} rounds (cpu) {:.3}",
        median(r_e2e)
    );
    let (w, c) = ratio(pipe);
    println!(
        "  pipeline   / private_ops = {c:.3} (cpu), {w:.3} (wall); median of {round} rounds (cpu) {:.3}",
        median(r_pipe)
    );
    if redis.is_some() {
        let (wall, cpu) = piped_redis.per_op_us();
        println!(
            "  {:<34} wall {wall:8.1} µs/op   cpu {cpu:8.1} µs/op",
            "pipeline, Redis store"
        );
        println!(
            "  pipeline (in-process store) / pipeline (Redis) = {:.3} (cpu), {:.3} (wall); median of {round} rounds (cpu) {:.3}",
            pipe.cpu.as_secs_f64() / piped_redis.cpu.as_secs_f64(),
            pipe.wall.as_secs_f64() / piped_redis.wall.as_secs_f64(),
            median(r_redis)
        );
    }
    Ok(())
}

fn main() {
    if let Err(e) = (|| -> Result<()> {
        let o = options()?;
        let pkis = scep_bench::pkis(&o.variants)?;
        let requesters = scep_bench::requesters(2)?;
        for pki in &pkis {
            run(pki, &requesters, &o)?;
        }
        println!("target: end_to_end / private_ops ≤ 1.25");
        Ok(())
    })() {
        eprintln!("ratio: {e}");
        std::process::exit(1);
    }
}
