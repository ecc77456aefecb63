#![allow(dead_code)]
//! A micromdm `scepserver` (Debian's `scep` package) on a loopback port with its own
//! depot, as an upstream CA of the gateway; and the gateway's `[[cas]]`/`[[profiles]]`
//! lines for it. It can be killed and restarted on the same port.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{get, require_tool, CHALLENGE};

// ---------------------------------------------------------------------------------
// A micromdm scepserver on a loopback port, with its own depot
// ---------------------------------------------------------------------------------

pub struct ScepServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl ScepServer {
    /// Makes a CA (`O=<org>`) and starts the server on a free port.
    pub fn start(org: &str) -> ScepServer {
        let bin = require_tool("scepserver");
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(&bin)
            .args(["ca", "-init", "-depot"])
            .arg(dir.path().join("depot"))
            .args(["-keySize", "2048", "-organization", org])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scepserver ca -init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut server = ScepServer {
            dir,
            port,
            child: None,
        };
        server.restart();
        server
    }

    /// (Re)starts the server on its port and waits until it answers GetCACaps.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("scepserver.log"))
            .unwrap();
        let child = Command::new(require_tool("scepserver"))
            .arg("-depot")
            .arg(self.dir.path().join("depot"))
            .args(["-port", &self.port.to_string()])
            .args(["-challenge", CHALLENGE, "-allowrenew", "0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                drop(stream);
                let caps = get(
                    format!("127.0.0.1:{}", self.port).parse().unwrap(),
                    "/scep?operation=GetCACaps",
                );
                if caps.status == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "scepserver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/scep", self.port)
    }

    /// The certificates the CA issued (DER), read from its depot: every `*.pem` beside
    /// `ca.pem` (scepserver writes `<cn>.<serial>.pem` before it replies).
    pub fn issued_certificates(&self) -> Vec<Vec<u8>> {
        let depot = self.dir.path().join("depot");
        let mut certs = Vec::new();
        for entry in std::fs::read_dir(&depot).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".pem") && name != "ca.pem" {
                certs.push(super::read_der(&path));
            }
        }
        certs
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("depot").join("ca.pem")
    }
}

impl Drop for ScepServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `[[cas]]` entry for a scepserver-like upstream: one request at a time, fast probes,
/// DES replies accepted.
pub fn scep_ca(name: &str, url: &str, timeout_ms: u64) -> Vec<String> {
    vec![
        "[[cas]]".into(),
        format!("name = \"{name}\""),
        "kind = \"scep\"".into(),
        format!("url = \"{url}\""),
        format!("timeout_ms = {timeout_ms}"),
        "max_in_flight = 1".into(),
        "probe_interval_secs = 1".into(),
        "legacy_des = true".into(),
        "failure_threshold = 2".into(),
        "backoff_initial_ms = 1000".into(),
        "backoff_max_ms = 4000".into(),
    ]
}

/// A `[[profiles]]` entry.
pub fn profile(name: &str, cas: &[&str], key_usage: Option<&str>) -> Vec<String> {
    let cas: Vec<String> = cas.iter().map(|c| format!("\"{c}\"")).collect();
    let mut lines = vec![
        "[[profiles]]".into(),
        format!("name = \"{name}\""),
        format!("cas = [{}]", cas.join(", ")),
    ];
    if let Some(usage) = key_usage {
        lines.push(format!("key_usage = \"{usage}\""));
    }
    lines
}
