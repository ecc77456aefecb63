#![allow(dead_code)]
//! A micromdm `scepserver` (Debian's `scep` package) on a loopback port with its own
//! depot, as an upstream CA of the gateway; and the gateway's `[[cas]]`/`[[profiles]]`
//! lines for it. It can be killed and restarted on the same port.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{get, require_tool, CHALLENGE};

// ---------------------------------------------------------------------------------
// A micromdm scepserver on a loopback port, with its own depot
// ---------------------------------------------------------------------------------

pub struct ScepServer {
    pub dir: tempfile::TempDir,
    /// The port of `url()` (the serializing front of `start_serialized`, if any).
    pub port: u16,
    /// The port scepserver itself listens on.
    backend_port: u16,
    child: Option<Child>,
}

impl ScepServer {
    /// Makes a CA (`O=<org>`) and starts the server on a free port.
    pub fn start(org: &str) -> ScepServer {
        Self::init(org)
    }

    /// As `start`, behind a front that passes one HTTP request at a time, whoever sends
    /// it. scepserver 2.1.0 gives two concurrent PKCSReqs the same serial number, and
    /// `max_in_flight = 1` bounds each gateway *replica*, not the fleet: several replicas
    /// in front of one scepserver need this (a real deployment needs a CA that is safe
    /// under concurrency).
    pub fn start_serialized(org: &str) -> ScepServer {
        let mut server = Self::init(org);
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        server.port = front.local_addr().unwrap().port();
        let backend = server.backend_port;
        let one_at_a_time = Arc::new(Mutex::new(()));
        std::thread::spawn(move || {
            for client in front.incoming() {
                let Ok(client) = client else { continue };
                let lock = one_at_a_time.clone();
                std::thread::spawn(move || serialize_one(client, backend, &lock));
            }
        });
        server
    }

    fn init(org: &str) -> ScepServer {
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
            backend_port: port,
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
            .args(["-port", &self.backend_port.to_string()])
            .args(["-challenge", CHALLENGE, "-allowrenew", "0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.backend_port)) {
                drop(stream);
                let caps = get(
                    format!("127.0.0.1:{}", self.backend_port).parse().unwrap(),
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

/// The front of `start_serialized`: reads one request from `client`, forwards it to the
/// backend with `Connection: close` while holding `lock`, relays the answer (502 when
/// the backend is down), and closes the connection.
fn serialize_one(mut client: TcpStream, backend: u16, lock: &Mutex<()>) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let mut request = Vec::new();
    let mut buf = [0u8; 8192];
    // The head, then Content-Length bytes of body.
    let head_end = loop {
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while request.len() < head_end + length {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    // Drop the client's Connection header; ask the backend to close after answering.
    let mut lines = head.trim_end().split("\r\n");
    let mut forwarded = format!("{}\r\nConnection: close\r\n", lines.next().unwrap_or(""));
    for line in lines.filter(|l| !l.to_ascii_lowercase().starts_with("connection:")) {
        forwarded.push_str(line);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("\r\n");
    let mut forwarded = forwarded.into_bytes();
    forwarded.extend_from_slice(&request[head_end..]);
    let answer = {
        let _one = lock.lock().unwrap_or_else(|e| e.into_inner());
        TcpStream::connect(("127.0.0.1", backend)).and_then(|mut b| {
            b.set_read_timeout(Some(Duration::from_secs(30)))?;
            b.write_all(&forwarded)?;
            let mut answer = Vec::new();
            b.read_to_end(&mut answer)?;
            Ok(answer)
        })
    };
    let answer = match answer {
        Ok(a) if !a.is_empty() => a,
        _ => b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
    };
    let _ = client.write_all(&answer);
}
