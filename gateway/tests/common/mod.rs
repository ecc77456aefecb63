//! Shared pieces of the end-to-end tests: a real `scep-gateway` process on a free
//! loopback port, a raw HTTP client (so that tests can send what no polite client
//! would), and the check that a peer tool exists.
#![allow(dead_code)]

pub mod device;
pub mod redis;
pub mod scepserver;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const CHALLENGE: &str = "secret123";

/// Panics when a peer program is missing. `scripts/test-all` installs them all; a test
/// that silently skipped would hide a broken interop.
pub fn require_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` is not installed: run scripts/test-all, which installs every tool the tests drive");
}

/// Where the gateway's CA and RA keys live.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PKCS#8 files, made by `init`.
    #[default]
    Software,
    /// A SoftHSM2 token made for this gateway (its own SOFTHSM2_CONF and token folder),
    /// keys generated in it by `init --pkcs11-...`.
    SoftHsm,
}

pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const SOFTHSM_TOKEN: &str = "scep-e2e";
pub const SOFTHSM_PIN: &str = "pin-Zq7-never-logged";
pub const SOFTHSM_PIN_ENV: &str = "SCEP_E2E_HSM_PIN";

/// Runs one test body once per backend: `backends!(name);` makes the tests
/// `name::software` and `name::softhsm`, each calling `name(Backend::...)`.
#[macro_export]
macro_rules! backends {
    ($body:ident) => {
        mod $body {
            #[test]
            fn software() {
                super::$body($crate::common::Backend::Software)
            }
            #[test]
            fn softhsm() {
                super::$body($crate::common::Backend::SoftHsm)
            }
        }
    };
}

/// Options for a gateway under test.
#[derive(Default, Clone)]
pub struct Options {
    pub backend: Backend,
    pub legacy_des: bool,
    /// `key = value` replacements in gateway.toml (the first `key =` line is replaced).
    pub extra_config: Vec<(String, String)>,
    /// Lines appended to gateway.toml, i.e. to its last table (`[store]`).
    pub append: Vec<String>,
    /// Extra environment of `serve` (e.g. `SCEP_LOG_FORMAT=json`).
    pub env: Vec<(String, String)>,
}

/// A development PKI and its gateway.toml, made by `scep-gateway init`: several gateways
/// started from it share one CA and RA (replicas).
pub struct Pki {
    pub dir: tempfile::TempDir,
    /// The environment the gateways run with (SoftHSM2 config, PIN).
    env: Vec<(String, String)>,
}

impl Pki {
    pub fn init(options: &Options) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let mut env = match options.backend {
            Backend::Software => Vec::new(),
            Backend::SoftHsm => softhsm_token(dir.path()),
        };
        let mut init = Command::new(env!("CARGO_BIN_EXE_scep-gateway"));
        init.args(["init", "--dir"])
            .arg(&pki)
            .args(["--challenge", CHALLENGE])
            .envs(env.iter().map(|(k, v)| (k, v)));
        if options.legacy_des {
            init.arg("--legacy-des");
        }
        if options.backend == Backend::SoftHsm {
            init.args(["--pkcs11-module", SOFTHSM_MODULE])
                .args(["--pkcs11-token-label", SOFTHSM_TOKEN])
                .args(["--pkcs11-pin-env", SOFTHSM_PIN_ENV]);
        }
        let out = init.output().unwrap();
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = pki.join("gateway.toml");
        let mut text = std::fs::read_to_string(&config).unwrap();
        if options.backend == Backend::SoftHsm {
            assert!(
                text.contains("pkcs11 = {"),
                "init did not put the keys in the token:\n{text}"
            );
            assert!(!pki.join("ra.key.pem").exists() && !pki.join("ca.key.pem").exists());
        }
        for (key, replacement) in &options.extra_config {
            text = set_config(&text, key, replacement);
        }
        for line in &options.append {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&config, text).unwrap();
        env.extend(options.env.iter().cloned());
        Pki { dir, env }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    pub fn config(&self) -> PathBuf {
        self.path().join("gateway.toml")
    }

    /// Starts a gateway on a free port from this PKI's config.
    pub fn serve(&self) -> Gateway {
        Gateway::serve(tempfile::tempdir().unwrap(), self.path(), self.env.clone())
    }

    /// The SoftHSM2 token folder (for fault tests).
    pub fn softhsm_tokens(&self) -> PathBuf {
        self.dir.path().join("softhsm").join("tokens")
    }
}

/// A running `scep-gateway serve`, killed on drop.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pki: PathBuf,
    env: Vec<(String, String)>,
    pub addr: SocketAddr,
    /// The `[server] admin_listen` address, when one is configured.
    pub admin: Option<SocketAddr>,
    child: Child,
    log: PathBuf,
}

impl Gateway {
    pub fn start(options: Options) -> Gateway {
        let pki = Pki::init(&options);
        let path = pki.path();
        Self::serve(pki.dir, path, pki.env)
    }

    /// The SoftHSM2 token folder (for fault tests).
    pub fn softhsm_tokens(&self) -> PathBuf {
        self.pki.parent().unwrap().join("softhsm").join("tokens")
    }

    /// Runs `serve` with `pki`/gateway.toml; `dir` (kept alive) holds the log.
    fn serve(dir: tempfile::TempDir, pki: PathBuf, env: Vec<(String, String)>) -> Gateway {
        let config = pki.join("gateway.toml");
        let log = dir.path().join("gateway.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_scep-gateway"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env("SCEP_LOG", "debug")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Read the "listening on" line in a thread, so that a gateway that neither
        // starts nor exits fails the test after a deadline instead of hanging it.
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = stdout.lines();
            let mut admin = None;
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                // The admin line comes first, when there is one.
                if let Some((_, url)) = line.trim().split_once("admin (metrics, probes) on ") {
                    admin = url.split("://").nth(1).and_then(|a| a.parse().ok());
                }
                if let Some((_, url)) = line.trim().split_once("listening on ") {
                    let host_port = url.split("://").nth(1).unwrap_or("");
                    let _ = tx.send((host_port.trim_end_matches("/scep").to_owned(), admin));
                    break;
                }
            }
            // Keep draining stdout so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let started = rx.recv_timeout(Duration::from_secs(60)).ok();
        let admin = started.as_ref().and_then(|(_, admin)| *admin);
        let addr = started.and_then(|(a, _)| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            panic!(
                "the gateway did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Gateway {
            dir,
            pki,
            env,
            addr,
            admin,
            child,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/scep", self.addr)
    }

    pub fn pki(&self) -> PathBuf {
        self.pki.clone()
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.pki().join("ca.pem")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the process dies mid-request, holding whatever it held.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Still running (not crashed)?
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Asserts the process is alive and no panic was logged.
    pub fn assert_healthy(&mut self) {
        assert!(self.alive(), "the gateway died:\n{}", self.log());
        let log = self.log();
        assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes a SoftHSM2 token store in `dir/softhsm` with one token, and returns the
/// environment the gateway needs for it. A missing SoftHSM2 fails the test.
fn softhsm_token(dir: &Path) -> Vec<(String, String)> {
    let util = require_tool("softhsm2-util");
    assert!(
        Path::new(SOFTHSM_MODULE).is_file(),
        "{SOFTHSM_MODULE} is missing: run scripts/test-all (apt-get install softhsm2)"
    );
    let root = dir.join("softhsm");
    let tokens = root.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = root.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = Command::new(util)
        .args(["--init-token", "--free", "--label", SOFTHSM_TOKEN])
        .args(["--so-pin", "12345678", "--pin", SOFTHSM_PIN])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "softhsm2-util: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    vec![
        ("SOFTHSM2_CONF".into(), conf.display().to_string()),
        (SOFTHSM_PIN_ENV.into(), SOFTHSM_PIN.into()),
    ]
}

/// Replaces `key = ...` in the TOML text (the first occurrence), or appends the line.
fn set_config(text: &str, key: &str, value: &str) -> String {
    let mut done = false;
    let mut out = String::new();
    for line in text.lines() {
        if !done && line.trim_start().starts_with(&format!("{key} =")) {
            out.push_str(&format!("{key} = {value}\n"));
            done = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(done, "no `{key} =` line in gateway.toml");
    out
}

/// An HTTP response as read off the socket.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends raw request bytes and reads the reply (the request should say
/// `Connection: close`, or be HTTP/1.0).
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    parse_response(&bytes)
}

pub fn get(addr: SocketAddr, target: &str) -> Response {
    raw_request(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub fn post(addr: SocketAddr, target: &str, body: &[u8]) -> Response {
    let mut req = format!(
        "POST {target} HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-pki-message\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw_request(addr, &req)
}

pub fn parse_response(bytes: &[u8]) -> Response {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(bytes)));
    let head = std::str::from_utf8(&bytes[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = bytes[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
    out
}

/// Runs `openssl verify -CAfile ca cert` and asserts it says OK.
pub fn openssl_verify(ca: &Path, cert: &Path) {
    let openssl = require_tool("openssl");
    let out = Command::new(openssl)
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg(cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(": OK"),
        "openssl verify failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl x509 -noout -<what>` of a PEM certificate.
pub fn openssl_x509(cert: &Path, what: &[&str]) -> String {
    let out = Command::new(require_tool("openssl"))
        .args(["x509", "-noout", "-in"])
        .arg(cert)
        .args(what)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Gateway {
    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `within` for a clean exit; returns the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.signal_term();
        self.wait(within)
    }

    /// Sends SIGTERM and returns at once (the gateway starts draining).
    pub fn signal_term(&self) {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
    }

    /// Waits up to `within` for the process to exit; returns the exit status.
    pub fn wait(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Reads a PEM or DER certificate file into DER.
pub fn read_der(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    if bytes.starts_with(b"-----BEGIN") {
        der_from_pem(&String::from_utf8(bytes).unwrap())
    } else {
        bytes
    }
}

fn der_from_pem(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// Writes DER as a PEM file of the given label.
pub fn write_pem(path: &Path, label: &str, der: &[u8]) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    std::fs::write(path, pem).unwrap();
}

/// The text of `GET /metrics` at `addr`.
pub fn scrape(addr: SocketAddr) -> String {
    let response = get(addr, "/metrics");
    assert_eq!(response.status, 200);
    String::from_utf8(response.body).unwrap()
}

/// The value of the first sample of `name` in a scrape whose labels include every
/// `labels` pair.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.parse().unwrap())
}

/// [`sample`] that must exist.
pub fn must(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or_else(|| panic!("no {name} with {labels:?} in\n{text}"))
}

/// Scrapes `/metrics` of `addr` and returns the value of the first sample of `name`
/// whose labels include every `labels` pair.
pub fn metric(addr: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    sample(&scrape(addr), name, labels)
}

/// A PKIOperation POST that may fail: a refused or reset connection (a killed replica)
/// or no answer within `timeout` (a hang) is an `Err` describing it, not a panic.
pub fn try_post(
    addr: SocketAddr,
    target: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Response, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut req = format!(
        "POST {target} HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-pki-message\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    stream.write_all(&req).map_err(|e| format!("write: {e}"))?;
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .map_err(|e| format!("read: {e}"))?;
    if !bytes.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err(format!("no HTTP response ({} bytes)", bytes.len()));
    }
    Ok(parse_response(&bytes))
}

/// Peak and current resident memory of a process, in KiB (`VmHWM`, `VmRSS` of
/// /proc/<pid>/status).
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Runs `openssl ARGS` in `dir` and asserts it succeeded.
pub fn openssl_in(dir: &Path, args: &[&str]) {
    let out = Command::new(require_tool("openssl"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate for `subject` issued by `dir`/ca.pem (key `dir`/ca.key) with the
/// extensions `extensions` (openssl extfile lines), written as `<name>.pem` and
/// `<name>.key` in `dir`.
pub fn issue_leaf(dir: &Path, name: &str, subject: &str, extensions: &str) {
    let run = |args: &[&str]| openssl_in(dir, args);
    let (key, csr, pem, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.cnf"),
    );
    std::fs::write(dir.join(&ext), extensions).unwrap();
    run(&[
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        &pem,
        "-days",
        "1",
        "-extfile",
        &ext,
    ]);
}

/// A self-signed certificate for `subject`, valid a day, with `-addext` `extensions`,
/// written as `<name>.pem` and `<name>.key` in `dir`.
pub fn self_signed_in(dir: &Path, name: &str, subject: &str, extensions: &[&str]) {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    let mut args = vec![
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem, "-subj",
        subject, "-days", "1",
    ];
    for extension in extensions {
        args.extend(["-addext", extension]);
    }
    openssl_in(dir, &args);
}

/// A test CA and a server certificate for IP 127.0.0.1, made with the `openssl` CLI.
/// Returns (CA PEM, server chain PEM, server key PEM).
pub fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    self_signed_in(
        dir,
        "ca",
        "/CN=test CA",
        &[
            "basicConstraints=critical,CA:TRUE",
            "keyUsage=keyCertSign,cRLSign",
        ],
    );
    issue_leaf(
        dir,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}
