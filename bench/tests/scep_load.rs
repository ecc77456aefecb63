//! Smoke tests of `scep-load`: a tiny load against a real `scep-gateway` process and
//! against micromdm's `scepserver`, every reply checked, the report files written.
//! Benchmarks are not timed tests: nothing here asserts a speed.
//!
//! The gateway binary belongs to another package, so `CARGO_BIN_EXE_` does not name
//! it: the test builds it (`cargo build -p scep-gateway`, a no-op when fresh) into the
//! target directory this test runs from, and starts it from there.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child on drop, so that a failing assertion leaves no server behind.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `target/<profile>/scep-gateway`, built now if needed. The test binary lives in
/// `target/<profile>/deps/`.
fn gateway_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in <target>/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("<target>/<profile>");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "-p", "scep-gateway", "--bin", "scep-gateway"])
        .arg("--target-dir")
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo build -p scep-gateway");
    assert!(status.success(), "cargo build -p scep-gateway failed");
    let bin = profile_dir.join("scep-gateway");
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}

/// `scep-gateway init` + `serve` on a free port; returns the server and its URL.
fn start_gateway(dir: &Path) -> (Server, String) {
    let bin = gateway_binary();
    let pki = dir.join("pki");
    let out = Command::new(&bin)
        .args(["init", "--dir"])
        .arg(&pki)
        .args(["--challenge", "load-secret"])
        .output()
        .expect("scep-gateway init");
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(pki.join("gateway.toml"))
        .env("SCEP_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("scep-gateway serve");
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let server = Server(child);
    // The first line names the URL; keep draining stdout in a thread afterwards.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = stdout.lines();
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some((_, url)) = line.split_once("listening on ") {
                let _ = tx.send(url.trim().to_owned());
                break;
            }
        }
        for _ in lines {}
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the gateway did not say where it listens");
    (server, url)
}

/// Runs scep-load with `args`; returns (success, stdout + stderr).
fn scep_load(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scep-load"))
        .args(args)
        .output()
        .expect("run scep-load");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("JSON report written"))
        .expect("the JSON report parses")
}

#[test]
fn fifty_enrollments_against_the_gateway_at_concurrency_2() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url) = start_gateway(dir.path());
    let pid = server.0.id().to_string();
    let (json, html) = (dir.path().join("out.json"), dir.path().join("out.html"));
    let (ok, output) = scep_load(&[
        &url,
        "--challenge",
        "load-secret",
        "-n",
        "50",
        "-c",
        "2",
        "--keys",
        "4",
        "--warmup",
        "2",
        "--verify-all",
        "--server-pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    assert!(ok, "scep-load failed:\n{output}");
    let report = read_json(&json);
    let target = &report["targets"][0];
    assert_eq!(report["ok"], true, "{output}");
    assert_eq!(target["answered"], 50, "{output}");
    assert_eq!(target["errors"], serde_json::json!({}), "{output}");
    // Every reply (warm-up included) verified and decrypted.
    assert_eq!(target["replies_decrypted"], 52, "{output}");
    assert!(target["server_cpu_ms_per_enrollment"].as_f64().unwrap() > 0.0);
    assert!(target["server_peak_rss_kib"].as_u64().unwrap() > 0);
    assert!(target["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("<svg").count(), 2, "histogram + throughput");
}

#[test]
fn wrong_challenge_fails_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = start_gateway(dir.path());
    let (ok, output) = scep_load(&[
        &url,
        "--challenge",
        "not-the-secret",
        "-n",
        "5",
        "--keys",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(!ok, "a run with failed enrollments must fail:\n{output}");
    assert!(
        output.contains("5  pkiStatus FAILURE badRequest"),
        "{output}"
    );
}

/// micromdm's scepserver (Debian `scep`), one request at a time: its file depot is not
/// safe under concurrency. A missing binary fails the test.
#[test]
fn enrollments_against_micromdm_scepserver_at_concurrency_1() {
    let scepserver = ["/usr/bin/scepserver", "/usr/local/bin/scepserver"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("`scepserver` is not installed: run scripts/test-all (apt-get install scep)");
    let dir = tempfile::tempdir().unwrap();
    let depot = dir.path().join("depot");
    let out = Command::new(&scepserver)
        .args(["ca", "-init", "-depot"])
        .arg(&depot)
        .args(["-keySize", "2048", "-organization", "scep-load"])
        .output()
        .expect("scepserver ca -init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let server = Server(
        Command::new(&scepserver)
            .arg("-depot")
            .arg(&depot)
            .args(["-port", &port.to_string()])
            .args(["-challenge", "secret", "-allowrenew", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("scepserver"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "scepserver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let json = dir.path().join("mm.json");
    let url = format!("http://127.0.0.1:{port}/scep");
    let pid = server.0.id().to_string();
    let (ok, output) = scep_load(&[
        &url,
        "--challenge",
        "secret",
        "-n",
        "20",
        "-c",
        "1",
        "--keys",
        "2",
        "--warmup",
        "2",
        "--verify-every",
        "5",
        "--server-pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "scep-load against scepserver failed:\n{output}");
    let report = read_json(&json);
    assert_eq!(report["targets"][0]["answered"], 20, "{output}");
    assert!(report["targets"][0]["replies_decrypted"].as_u64().unwrap() >= 4);
}
