//! The results: a text summary (stdout), JSON, and an HTML page with inline SVG charts
//! (latency histogram, throughput over time). No JavaScript, no external assets.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::stats::{QUANTILES, SLICE};
use super::{Outcome, TargetResult};

/// The text summary printed at the end of a run.
pub fn text(o: &Outcome) -> String {
    let mut s = String::new();
    let opt = &o.options;
    let mode = match opt.rate {
        Some(r) => format!(
            "open loop at {r} req/s (max {} in flight)",
            opt.max_in_flight
        ),
        None => format!("closed loop, concurrency {}", opt.concurrency),
    };
    let _ = writeln!(
        s,
        "scep-load: {} enrollments per target, {mode}, {:?} {:?} {:?}, {} rounds, {:.1} s",
        opt.requests,
        opt.method,
        opt.cipher,
        opt.digest,
        opt.rounds,
        o.wall.as_secs_f64()
    );
    for t in &o.targets {
        let r = &t.recorder;
        let _ = writeln!(s, "\n{}", t.url);
        let _ = writeln!(
            s,
            "  answered {} in {:.2} s: {:.1} replies/s, {:.1} successful enrollments/s",
            r.answered,
            r.busy.as_secs_f64(),
            r.throughput(),
            t.successful_throughput()
        );
        let lat: Vec<String> = QUANTILES
            .iter()
            .map(|(name, q)| match r.percentile_ms(*q) {
                Some(ms) => format!("{name} {ms:.2}"),
                None => format!("{name} -"),
            })
            .collect();
        let _ = writeln!(s, "  latency ms: {}", lat.join("  "));
        let _ = writeln!(
            s,
            "  replies checked: {} (signature, status, ids), {} decrypted",
            t.checked.verified, t.checked.decrypted
        );
        if let Some(ms) = t.cpu_ms_per_enrollment() {
            let _ = writeln!(s, "  server CPU: {ms:.3} ms per enrollment");
            if let Some(b) = &o.baseline {
                let _ = writeln!(
                    s,
                    "  server CPU / RSA private ops ({:.3} ms): {:.3}",
                    b.ms_per_enrollment(),
                    ms / b.ms_per_enrollment()
                );
            }
        }
        if let Some(kib) = t.peak_rss_kib {
            let _ = writeln!(s, "  server peak RSS: {:.1} MiB", kib as f64 / 1024.0);
        }
        let errors = t.errors();
        if errors.is_empty() {
            let _ = writeln!(s, "  errors: none");
        } else {
            let _ = writeln!(s, "  ERRORS: {}", errors.values().sum::<u64>());
            for (kind, n) in errors {
                let _ = writeln!(s, "    {n:>7}  {kind}");
            }
        }
    }
    if let Some(b) = &o.baseline {
        let _ = writeln!(
            s,
            "\nRSA-2048 baseline (RA decrypt + CA sign + RA sign, this process, between rounds): {:.3} ms CPU over {} enrollments",
            b.ms_per_enrollment(),
            b.enrollments
        );
    }
    if let [a, b] = &o.targets[..] {
        let _ = writeln!(s, "\nratios, {} ÷ {}:", a.url, b.url);
        for (name, x) in ratios(a, b) {
            let _ = writeln!(s, "  {name:<22} {x:.2}×");
        }
    }
    s
}

/// First target ÷ second: throughput, and second ÷ first for costs (latency, CPU), so
/// that every ratio above 1 favours the first target.
pub fn ratios(a: &TargetResult, b: &TargetResult) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    // Successful enrollments: a server that answers FAILURE fast is not faster.
    let (ta, tb) = (a.successful_throughput(), b.successful_throughput());
    if tb > 0.0 {
        out.push(("throughput".into(), ta / tb));
    }
    for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
        if let (Some(x), Some(y)) = (a.recorder.percentile_ms(q), b.recorder.percentile_ms(q)) {
            if x > 0.0 {
                out.push((format!("{name} latency (inv.)"), y / x));
            }
        }
    }
    if let (Some(x), Some(y)) = (a.cpu_ms_per_enrollment(), b.cpu_ms_per_enrollment()) {
        if x > 0.0 {
            out.push(("CPU/enrollment (inv.)".into(), y / x));
        }
    }
    out
}

fn target_json(t: &TargetResult, baseline_ms: Option<f64>) -> Value {
    let r = &t.recorder;
    let latency: serde_json::Map<String, Value> = QUANTILES
        .iter()
        .map(|(name, q)| ((*name).to_owned(), json!(r.percentile_ms(*q))))
        .collect();
    let cpu = t.cpu_ms_per_enrollment();
    json!({
        "url": t.url,
        "capabilities": t.capabilities.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>(),
        "server_pid": t.pid,
        "answered": r.answered,
        "busy_seconds": r.busy.as_secs_f64(),
        "throughput_per_second": r.throughput(),
        "successful_per_second": t.successful_throughput(),
        "latency_ms": latency,
        "latency_mean_ms": (!r.latency_us.is_empty()).then(|| r.latency_us.mean() / 1000.0),
        "server_cpu_seconds": r.server_cpu,
        "server_cpu_ms_per_enrollment": cpu,
        "server_cpu_over_rsa_private_ops": cpu.zip(baseline_ms).map(|(c, b)| c / b),
        "server_peak_rss_kib": t.peak_rss_kib,
        "replies_verified": t.checked.verified,
        "replies_decrypted": t.checked.decrypted,
        "errors": t.errors(),
        "throughput_slices": { "slice_seconds": SLICE.as_secs_f64(), "completions": r.slices },
        "latency_histogram": histogram_buckets(t).into_iter()
            .map(|(lo, hi, n)| json!({"from_ms": lo, "to_ms": hi, "count": n}))
            .collect::<Vec<_>>(),
    })
}

/// The whole run as JSON.
pub fn json(o: &Outcome) -> Value {
    let opt = &o.options;
    let baseline_ms = o.baseline.as_ref().map(|b| b.ms_per_enrollment());
    let started = o
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut v = json!({
        "tool": "scep-load",
        "started_unix": started,
        "wall_seconds": o.wall.as_secs_f64(),
        "ok": o.ok(),
        "options": {
            "requests": opt.requests,
            "concurrency": opt.concurrency,
            "rate": opt.rate,
            "method": format!("{:?}", opt.method).to_lowercase(),
            "cipher": format!("{:?}", opt.cipher).to_lowercase(),
            "digest": format!("{:?}", opt.digest).to_lowercase(),
            "rounds": opt.rounds,
            "warmup": opt.warmup,
            "keys": opt.keys,
            "verify_all": opt.verify_all,
        },
        "rsa_baseline_ms_per_enrollment": baseline_ms,
        "targets": o.targets.iter().map(|t| target_json(t, baseline_ms)).collect::<Vec<_>>(),
    });
    if let [a, b] = &o.targets[..] {
        v["ratios_first_over_second"] = ratios(a, b)
            .into_iter()
            .map(|(k, x)| (k, json!(x)))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    v
}

/// Latency histogram buckets for the chart: 40 log-spaced buckets from the minimum to
/// the maximum latency (ms), each (from, to, count).
pub fn histogram_buckets(t: &TargetResult) -> Vec<(f64, f64, u64)> {
    let h = &t.recorder.latency_us;
    if h.is_empty() {
        return Vec::new();
    }
    let lo = (h.min().max(1)) as f64;
    let hi = (h.max().max(h.min() + 1)) as f64 * 1.001;
    let n = 40;
    let step = (hi / lo).ln() / n as f64;
    let edges: Vec<f64> = (0..=n).map(|i| lo * (step * i as f64).exp()).collect();
    let mut counts = vec![0u64; n];
    for v in h.iter_recorded() {
        let x = v.value_iterated_to() as f64;
        let i = edges
            .partition_point(|&e| e <= x)
            .saturating_sub(1)
            .min(n - 1);
        counts[i] += v.count_at_value();
    }
    (0..n)
        .map(|i| (edges[i] / 1000.0, edges[i + 1] / 1000.0, counts[i]))
        .collect()
}

const COLORS: [&str; 2] = ["#2b6cb0", "#c05621"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A bar chart: `bars` per series (same length), x labels at the ends.
fn bar_chart(
    title: &str,
    series: &[(String, Vec<f64>)],
    x_from: &str,
    x_to: &str,
    y_label: &str,
) -> String {
    let (w, h, pad) = (760.0, 260.0, 40.0);
    let n = series
        .iter()
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let slot = (w - 2.0 * pad) / n as f64;
    let bar = slot / series.len().max(1) as f64;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">
<text x="{pad}" y="14" font-size="13">{}</text>
<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="#333"/>
<text x="{pad}" y="{}">{}</text><text x="{}" y="{}" text-anchor="end">{}</text>
<text x="4" y="{}" >{}</text><text x="4" y="30">{max:.1}</text>
"##,
        esc(title),
        h - pad,
        w - pad,
        h - pad,
        h - pad + 14.0,
        esc(x_from),
        w - pad,
        h - pad + 14.0,
        esc(x_to),
        h - pad + 28.0,
        esc(y_label),
    );
    for (k, (name, values)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        for (i, v) in values.iter().enumerate() {
            let bh = v / max * (h - 2.0 * pad - 10.0);
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
                pad + i as f64 * slot + k as f64 * bar,
                h - pad - bh,
                (bar - 0.5).max(0.5),
                bh
            );
        }
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            w - 300.0,
            22.0 + 14.0 * k as f64,
            w - 285.0,
            31.0 + 14.0 * k as f64,
            esc(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The HTML report.
pub fn html(o: &Outcome) -> String {
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>scep-load report</title>\
         <style>body{font-family:sans-serif;max-width:820px;margin:2em auto}pre{background:#f4f4f4;padding:1em;overflow-x:auto}</style>\
         </head><body><h1>scep-load</h1>\n",
    );
    let _ = writeln!(page, "<pre>{}</pre>", esc(&text(o)));
    for t in &o.targets {
        let buckets = histogram_buckets(t);
        if let (Some(first), Some(last)) = (buckets.first(), buckets.last()) {
            let counts = buckets.iter().map(|b| b.2 as f64).collect();
            page.push_str(&bar_chart(
                &format!("latency histogram, {} (log-spaced buckets)", t.url),
                &[(t.url.clone(), counts)],
                &format!("{:.2} ms", first.0),
                &format!("{:.2} ms", last.1),
                "requests",
            ));
        }
    }
    let per_sec = 1.0 / SLICE.as_secs_f64();
    let series: Vec<(String, Vec<f64>)> = o
        .targets
        .iter()
        .map(|t| {
            let v = t
                .recorder
                .slices
                .iter()
                .map(|&c| c as f64 * per_sec)
                .collect();
            (t.url.clone(), v)
        })
        .collect();
    let slices = series.iter().map(|s| s.1.len()).max().unwrap_or(0);
    page.push_str(&bar_chart(
        &format!(
            "throughput over time (enrollments/s per {} ms slice)",
            SLICE.as_millis()
        ),
        &series,
        "0 s",
        &format!("{:.1} s", slices as f64 * SLICE.as_secs_f64()),
        "enrollments/s",
    ));
    page.push_str("</body></html>\n");
    page
}
