//! A real `redis-server` (Debian's) on a free loopback port, for the tests of the shared
//! store. No persistence (`--save "" --appendonly no`), its files in a temp dir, killed on
//! drop. It can be stopped and started again on the same port to play an outage.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::require_tool;

pub struct RedisServer {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    /// Extra arguments (TLS, AUTH).
    args: Vec<String>,
    /// TLS: the port and the PEM CA certificate the server's certificate chains to.
    pub tls: Option<(u16, Vec<u8>)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts a server and waits until it answers PING. Panics if `redis-server` is not
    /// installed (scripts/test-all installs it): a store test never skips.
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            child: None,
            args: Vec::new(),
            tls: None,
        };
        server.run();
        server
    }

    /// A server as managed Redis offerings run it: TLS (a test CA made with the
    /// `openssl` CLI; certificate for IP 127.0.0.1) and a password. The plain port stays
    /// open (for the readiness ping only; it needs the password like the TLS one).
    pub fn start_tls(password: &str) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        super::tls_files(dir.path());
        let ca_pem = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let tls_port = free_port();
        let file = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let args = vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            file("server.pem"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
            "--requirepass".into(),
            password.into(),
        ];
        let mut server = RedisServer {
            dir,
            port: free_port(),
            child: None,
            args,
            tls: Some((tls_port, ca_pem)),
        };
        server.run();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections are still accepted by the kernel and
    /// commands still sent, but nothing is answered: a hung Redis, not a dead one.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a [`RedisServer::pause`]d server (SIGCONT): it answers what was queued.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}: {status:?}");
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    fn run(&mut self) {
        let binary = require_tool("redis-server");
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        let child = Command::new(binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server did not answer on port {}: {}",
            self.port,
            std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
        );
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        // "+PONG", or "-NOAUTH …" from a server with a password: either way it answers.
        let mut reply = [0u8; 5];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && (&reply == b"+PONG" || &reply == b"-NOAU")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
