//! `scep-load`: a load generator for any SCEP server (RFC 8894), ours or another's.
//!
//! GetCACaps + GetCACert, then N distinct PKCSReqs built before the run (a pool of
//! device keys, unique transactionIDs), fired closed-loop at a concurrency or open-loop
//! at a rate; every reply checked; throughput, latency percentiles and, given the
//! server's PID, its CPU seconds per enrollment and peak RSS. `--compare` runs the same
//! request shape against a second server in alternating rounds, so that a neighbour's
//! load on a shared machine weighs on both alike.
//!
//! The library holds everything; `src/bin/scep-load.rs` only parses the flags.

pub mod check;
mod driver;
pub mod pool;
pub mod procstat;
pub mod report;
pub mod stats;
pub mod target;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use driver::{closed_loop, open_loop, Ctx};
use scep_gateway::cms::algorithms::{ContentCipher, Digest};

use crate::Result;
use check::Checked;
use pool::Shape;
use stats::Recorder;
use target::{Method, Target};

/// Content ciphers a request can be enveloped with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Cipher {
    Aes128,
    Aes256,
    Des3,
    Des,
}

impl From<Cipher> for ContentCipher {
    fn from(c: Cipher) -> Self {
        match c {
            Cipher::Aes128 => ContentCipher::Aes128Cbc,
            Cipher::Aes256 => ContentCipher::Aes256Cbc,
            Cipher::Des3 => ContentCipher::DesEde3Cbc,
            Cipher::Des => ContentCipher::DesCbc,
        }
    }
}

/// Request signature digests. SHA-1 is listed so that asking for it gets a clear
/// refusal rather than clap's "invalid value".
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DigestArg {
    Sha256,
    Sha384,
    Sha512,
    Sha1,
}

/// The flags of `scep-load`.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// The SCEP URL, e.g. http://127.0.0.1:8080/scep
    pub url: String,
    /// A second SCEP server to run the same request shape against, in alternating
    /// rounds; the ratios are printed.
    #[arg(long)]
    pub compare: Option<String>,
    /// Measured enrollments per target.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub requests: usize,
    /// Closed loop: requests in flight at any time.
    #[arg(short = 'c', long, default_value_t = 1)]
    pub concurrency: usize,
    /// Open loop: requests per second, on a fixed schedule; latency counts from each
    /// request's scheduled send time. Overrides --concurrency.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: the most requests in flight; past it sends wait (and their latency
    /// still counts from the schedule).
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,
    /// How PKIOperation is sent.
    #[arg(long, value_enum, default_value = "post")]
    pub method: Method,
    /// Content encryption of the requests.
    #[arg(long, value_enum, default_value = "aes128")]
    pub cipher: Cipher,
    /// Signature digest of the requests.
    #[arg(long, value_enum, default_value = "sha256")]
    pub digest: DigestArg,
    /// The challenge password put in every CSR.
    #[arg(long)]
    pub challenge: Option<String>,
    /// Device keys generated up front (requests cycle through them; each request still
    /// has its own transactionID, subject, nonce and content key).
    #[arg(long, default_value_t = 8)]
    pub keys: usize,
    /// Decrypt and check every reply's certificate (default: every 10th; all replies
    /// have their signature and status checked).
    #[arg(long)]
    pub verify_all: bool,
    /// Decrypt every K-th reply.
    #[arg(long, default_value_t = 10)]
    pub verify_every: u64,
    /// Rounds the run is split into; with --compare the targets alternate per round,
    /// in alternating order.
    #[arg(long, default_value_t = 4)]
    pub rounds: usize,
    /// Unmeasured enrollments per target before the first round (connections, caches).
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
    /// The server's PID (same machine): CPU seconds per enrollment and peak RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The --compare server's PID.
    #[arg(long)]
    pub compare_pid: Option<u32>,
    /// Between rounds, time the three RSA-2048 private operations of an enrollment (RA
    /// decrypt, CA sign, RA sign) in this process, and print server CPU per enrollment
    /// divided by it.
    #[arg(long)]
    pub rsa_baseline: bool,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Write an HTML report (inline SVG: latency histogram, throughput over time).
    #[arg(long)]
    pub html: Option<std::path::PathBuf>,
}

/// Everything measured against one server.
pub struct TargetResult {
    pub url: String,
    pub capabilities: String,
    pub pid: Option<u32>,
    pub recorder: Recorder,
    pub checked: Checked,
    pub peak_rss_kib: Option<u64>,
}

impl TargetResult {
    /// Server CPU milliseconds per answered enrollment.
    pub fn cpu_ms_per_enrollment(&self) -> Option<f64> {
        let cpu = self.recorder.server_cpu?;
        (self.recorder.answered > 0).then(|| cpu * 1000.0 / self.recorder.answered as f64)
    }

    /// Correct enrollments per second: answered exchanges minus wrong replies.
    pub fn successful_throughput(&self) -> f64 {
        let secs = self.recorder.busy.as_secs_f64();
        let ok = self
            .recorder
            .answered
            .saturating_sub(self.checked.measured_errors);
        if secs > 0.0 {
            ok as f64 / secs
        } else {
            0.0
        }
    }

    /// Every error: transport and HTTP (recorder) and reply checks (checker).
    pub fn errors(&self) -> std::collections::BTreeMap<String, u64> {
        let mut all = self.recorder.errors.clone();
        for (k, v) in &self.checked.errors {
            *all.entry(k.clone()).or_default() += v;
        }
        all
    }
}

/// The RSA baseline: CPU of (RA decrypt + CA sign + RA sign) with RSA-2048 keys.
pub struct Baseline {
    pub enrollments: u64,
    pub cpu_seconds: f64,
}

impl Baseline {
    pub fn ms_per_enrollment(&self) -> f64 {
        self.cpu_seconds * 1000.0 / self.enrollments.max(1) as f64
    }
}

/// The whole run.
pub struct Outcome {
    pub options: Options,
    pub started: SystemTime,
    pub wall: Duration,
    pub targets: Vec<TargetResult>,
    pub baseline: Option<Baseline>,
}

impl Outcome {
    /// Whether every reply was right (and there was at least one).
    pub fn ok(&self) -> bool {
        self.targets
            .iter()
            .all(|t| t.errors().is_empty() && t.recorder.answered > 0)
    }
}

/// Checks the flags before anything is generated.
fn validate(o: &Options) -> Result<Shape> {
    let digest = match o.digest {
        DigestArg::Sha256 => Digest::Sha256,
        DigestArg::Sha384 => Digest::Sha384,
        DigestArg::Sha512 => Digest::Sha512,
        DigestArg::Sha1 => {
            return Err(
                "--digest sha1: refused. aws-lc-rs cannot make RSA PKCS#1 v1.5 \
                        signatures with SHA-1 (and RFC 8894 §3.5.2 prefers SHA-256), so \
                        this client cannot sign SHA-1 requests; use sha256"
                    .into(),
            )
        }
    };
    if o.requests == 0 || o.concurrency == 0 || o.keys == 0 || o.rounds == 0 {
        return Err("--requests, --concurrency, --keys and --rounds must be positive".into());
    }
    if let Some(rate) = o.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err("--rate must be a positive number of requests per second".into());
        }
    }
    if o.compare_pid.is_some() && o.compare.is_none() {
        return Err("--compare-pid needs --compare".into());
    }
    Ok(Shape {
        digest,
        cipher: o.cipher.into(),
    })
}

fn progress_bar(total: u64) -> ProgressBar {
    use std::io::IsTerminal;
    let bar = ProgressBar::new(total);
    if std::io::stderr().is_terminal() {
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} {per_sec} ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// Says what is happening, on stderr (stdout carries the report).
fn note(text: impl AsRef<str>) {
    eprintln!("scep-load: {}", text.as_ref());
}

/// Runs the whole load: setup, warm-up, measured rounds, checks.
pub async fn run(options: Options) -> Result<Outcome> {
    let shape = validate(&options)?;
    let started = SystemTime::now();
    let timeout = Duration::from_secs(options.timeout_secs.max(1));
    let pool = options
        .concurrency
        .max(if options.rate.is_some() { 64 } else { 1 });
    let mut urls = vec![(options.url.clone(), options.server_pid)];
    if let Some(url) = &options.compare {
        urls.push((url.clone(), options.compare_pid));
    }

    let mut targets = Vec::new();
    for (url, _) in &urls {
        let target = Target::connect(url, timeout, pool).await?;
        if options.method == Method::Post && !target.has_capability("POSTPKIOperation") {
            note(format!(
                "{url}: GetCACaps does not list POSTPKIOperation; posting anyway"
            ));
        }
        if matches!(options.cipher, Cipher::Aes128 | Cipher::Aes256)
            && !target.has_capability("AES")
        {
            note(format!(
                "{url}: GetCACaps does not list AES; sending AES anyway"
            ));
        }
        targets.push(Arc::new(target));
    }

    let setup = Instant::now();
    let keys = options.keys.min(options.requests + options.warmup);
    note(format!("generating {keys} RSA-2048 device keys"));
    let requesters = Arc::new(tokio::task::block_in_place(|| pool::requesters(keys))?);
    let tag = pool::run_tag();
    let per_target = options.warmup + options.requests;
    let mut requests = Vec::new();
    for (t, target) in targets.iter().enumerate() {
        note(format!("building {per_target} PKCSReqs for {}", target.url));
        let built = tokio::task::block_in_place(|| {
            pool::requests(
                &requesters,
                &target.recipient,
                shape,
                options.challenge.as_deref(),
                &format!("{tag}-t{t}"),
                per_target,
            )
        })?;
        requests.push(Arc::new(built));
    }
    let baseline_ops = if options.rsa_baseline {
        let pki = crate::pkis(&[crate::Variant::Rsa2048])?
            .pop()
            .ok_or("no baseline PKI")?;
        Some(crate::PrivateOps::new(&pki, 64)?)
    } else {
        None
    };
    note(format!("setup took {:.1} s", setup.elapsed().as_secs_f64()));

    let decrypt_every = if options.verify_all {
        1
    } else {
        options.verify_every
    };
    let (checker, checker_done) = check::spawn(
        requesters.clone(),
        requests.clone(),
        decrypt_every,
        options.warmup,
    );
    let ctx = Arc::new(Ctx {
        method: options.method,
        targets: targets.clone(),
        requests,
        recorders: targets
            .iter()
            .map(|_| Mutex::new(Recorder::new()))
            .collect(),
        checker,
        progress: progress_bar((options.requests * targets.len()) as u64),
        clock: Instant::now(),
    });

    for t in 0..targets.len() {
        closed_loop(&ctx, t, 0..options.warmup, options.concurrency, false).await;
    }

    let mut baseline = baseline_ops.as_ref().map(|_| Baseline {
        enrollments: 0,
        cpu_seconds: 0.0,
    });
    let clock = Instant::now();
    let rounds = options.rounds.min(options.requests);
    for round in 0..rounds {
        // Each target's measured requests, split evenly over the rounds.
        let chunk = |r: usize| options.warmup + r * options.requests / rounds;
        let range = chunk(round)..chunk(round + 1);
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for t in order {
            let pid = urls[t].1;
            let cpu0 = pid.and_then(procstat::cpu_seconds);
            let t0 = Instant::now();
            match options.rate {
                Some(rate) => open_loop(&ctx, t, range.clone(), rate, options.max_in_flight).await,
                None => closed_loop(&ctx, t, range.clone(), options.concurrency, true).await,
            }
            let elapsed = t0.elapsed();
            let cpu1 = pid.and_then(procstat::cpu_seconds);
            let mut rec = ctx.recorder(t);
            rec.busy += elapsed;
            if let (Some(a), Some(b)) = (cpu0, cpu1) {
                *rec.server_cpu.get_or_insert(0.0) += b - a;
            }
        }
        if let (Some(ops), Some(b)) = (&baseline_ops, baseline.as_mut()) {
            // As many private-op triples as one target's round had enrollments, at
            // most 200: enough to average, short enough not to stretch the run.
            let n = (range.len()).clamp(20, 200);
            let cpu0 = procstat::thread_cpu_seconds().unwrap_or(0.0);
            tokio::task::block_in_place(|| -> Result<()> {
                for i in 0..n {
                    ops.all(i)?;
                }
                Ok(())
            })?;
            b.cpu_seconds += procstat::thread_cpu_seconds().unwrap_or(0.0) - cpu0;
            b.enrollments += n as u64;
        }
    }
    ctx.progress.finish_and_clear();
    let wall = clock.elapsed();

    let recorders: Vec<Recorder> = match Arc::try_unwrap(ctx) {
        Ok(ctx) => ctx
            .recorders
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
            .collect(),
        Err(_) => return Err("a request task outlived the run".into()),
    };
    // Every sender is gone with the context: the checker finishes its queue and ends.
    let checked = tokio::task::block_in_place(|| checker_done.join())
        .map_err(|_| "the reply checker panicked")?;

    let results = recorders
        .into_iter()
        .zip(checked)
        .zip(targets.iter().zip(&urls))
        .map(|((recorder, checked), (target, (url, pid)))| TargetResult {
            url: url.clone(),
            capabilities: target.capabilities.clone(),
            pid: *pid,
            recorder,
            checked,
            peak_rss_kib: pid.and_then(procstat::peak_rss_kib),
        })
        .collect();
    Ok(Outcome {
        options,
        started,
        wall,
        targets: results,
        baseline,
    })
}
