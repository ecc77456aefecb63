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
        RedisServer::start_with(Vec::new())
    }

    /// [`RedisServer::start`] with extra arguments (`--replicaof`, `--requirepass`, …).
    pub fn start_with(args: Vec<String>) -> RedisServer {
        let mut server = RedisServer {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            child: None,
            args,
            tls: None,
        };
        server.run();
        server
    }

    /// A server as managed Redis offerings run it: TLS (a test CA made with the
    /// `openssl` CLI; certificate for IP 127.0.0.1) and a password. The plain port stays
    /// open (for the readiness ping only; it needs the password like the TLS one).
    pub fn start_tls(password: &str) -> RedisServer {
        RedisServer::start_tls_with(password, Vec::new())
    }

    /// [`RedisServer::start_tls`] with extra arguments.
    pub fn start_tls_with(password: &str, extra: Vec<String>) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        super::tls_files(dir.path());
        let ca_pem = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let tls_port = free_port();
        let file = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let mut args = vec![
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
        args.extend(extra);
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
        let mut command = Command::new(binary);
        // A config file (a sentinel's) must come first.
        let config = self.args.first().filter(|a| a.ends_with(".conf"));
        command.args(config);
        let child = command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args[usize::from(config.is_some())..])
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

/// Redis Sentinel in miniature: a master, its replica and one sentinel watching them
/// (quorum 1), all on loopback, every node with the same password. The master is
/// failed over on demand (`SENTINEL FAILOVER`), as an operator or a lost master would.
pub struct SentinelGroup {
    /// The two data nodes; which one is master changes with each failover.
    pub nodes: [RedisServer; 2],
    sentinel: RedisServer,
    /// The data nodes' password (`requirepass`, and `masterauth` between them).
    pub password: String,
    /// The test CA and the nodes' certificate and key (TLS groups).
    _certificates: Option<tempfile::TempDir>,
}

/// The name the sentinel monitors the master under.
pub const SENTINEL_MASTER: &str = "scep";

impl SentinelGroup {
    pub fn start() -> SentinelGroup {
        SentinelGroup::start_with(false)
    }

    /// Every node and the sentinel speak TLS (a test CA, certificates for IP
    /// 127.0.0.1), replication included: the sentinel then names the masters' TLS ports.
    /// The plain ports stay open for the harness's own checks.
    pub fn start_tls() -> SentinelGroup {
        SentinelGroup::start_with(true)
    }

    fn start_with(tls: bool) -> SentinelGroup {
        let password = "group-secret".to_string();
        let certificates = tls.then(|| {
            let dir = tempfile::tempdir().unwrap();
            super::tls_files(dir.path());
            dir
        });
        let file = |name: &str| {
            let dir = certificates.as_ref().unwrap().path();
            dir.join(name).to_string_lossy().into_owned()
        };
        // (TLS port, arguments) of a data node.
        let node_args = |replica_of: Option<u16>| {
            let mut args: Vec<String> = vec![
                "--requirepass".into(),
                password.clone(),
                "--masterauth".into(),
                password.clone(),
                // A demoted master that must resync fully does so at once (the default
                // waits 5 s for more replicas to share the transfer).
                "--repl-diskless-sync-delay".into(),
                "0".into(),
            ];
            let tls_port = tls.then(free_port);
            if let Some(port) = tls_port {
                args.extend(["--tls-port".into(), port.to_string()]);
                args.extend(["--tls-cert-file".into(), file("server.pem")]);
                args.extend(["--tls-key-file".into(), file("server.key")]);
                args.extend(["--tls-ca-cert-file".into(), file("ca.pem")]);
                args.extend(["--tls-auth-clients".into(), "no".into()]);
                args.extend(["--tls-replication".into(), "yes".into()]);
            }
            if let Some(master) = replica_of {
                args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
            }
            (tls_port, args)
        };
        let ca_pem = certificates
            .as_ref()
            .map(|dir| std::fs::read(dir.path().join("ca.pem")).unwrap());
        let start_node = |(tls_port, args): (Option<u16>, Vec<String>)| {
            let mut node = RedisServer::start_with(args);
            node.tls = tls_port.map(|port| (port, ca_pem.clone().unwrap()));
            node
        };
        let master = start_node(node_args(None));
        let master_named = master.tls.as_ref().map_or(master.port, |t| t.0);
        let replica = start_node(node_args(Some(master_named)));
        // Sentinel rewrites its config file: it lives in the sentinel's own directory.
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sentinel.conf");
        let mut text = format!(
            "sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_named} 1\n\
             sentinel auth-pass {SENTINEL_MASTER} {password}\n\
             sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
             sentinel failover-timeout {SENTINEL_MASTER} 5000\n"
        );
        let sentinel_tls = tls.then(free_port);
        if let Some(port) = sentinel_tls {
            text.push_str(&format!(
                "tls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                 tls-auth-clients no\ntls-replication yes\n",
                file("server.pem"),
                file("server.key"),
                file("ca.pem")
            ));
        }
        std::fs::write(&conf, text).unwrap();
        let mut sentinel = RedisServer {
            dir,
            port: free_port(),
            child: None,
            args: vec![conf.to_string_lossy().into_owned(), "--sentinel".into()],
            tls: sentinel_tls.map(|port| (port, ca_pem.clone().unwrap())),
        };
        sentinel.run();
        let group = SentinelGroup {
            nodes: [master, replica],
            sentinel,
            password,
            _certificates: certificates,
        };
        group.wait_master(master_named);
        group.wait_replicated();
        group
    }

    /// Kills the sentinel: nobody names a master any more.
    pub fn stop_sentinel(&mut self) {
        self.sentinel.stop();
    }

    /// Starts the sentinel again on its port, from the config it rewrote.
    pub fn restart_sentinel(&mut self) {
        self.sentinel.restart();
    }

    /// `host:port` of the sentinel (its TLS port in a TLS group).
    pub fn sentinel_node(&self) -> String {
        let port = self
            .sentinel
            .tls
            .as_ref()
            .map_or(self.sentinel.port, |t| t.0);
        format!("127.0.0.1:{port}")
    }

    /// The PEM CA certificate of a TLS group.
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        self.sentinel.tls.as_ref().map(|t| t.1.clone())
    }

    /// The port the sentinel names a data node by (its TLS port in a TLS group).
    fn named(node: &RedisServer) -> u16 {
        node.tls.as_ref().map_or(node.port, |t| t.0)
    }

    /// The plain port of the node the sentinel names by `named`.
    fn plain(&self, named: u16) -> u16 {
        let node = self.nodes.iter().find(|n| Self::named(n) == named);
        node.map_or(named, |n| n.port)
    }

    /// The port the sentinel names the master by now.
    pub fn master_port(&self) -> u16 {
        let mut sentinel = connect(self.sentinel.port, None);
        let (_, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(SENTINEL_MASTER)
            .query(&mut sentinel)
            .unwrap();
        port
    }

    /// Waits until the master's writes so far are on its replica (`WAIT 1`), so that a
    /// failover loses none of them.
    pub fn wait_replicated(&self) {
        wait_one_replica(
            connect(self.plain(self.master_port()), Some(&self.password)),
            "harness:in-sync",
        );
    }

    /// Promotes the replica (`SENTINEL FAILOVER`) and waits until the sentinel names it
    /// and it answers as master.
    pub fn fail_over(&self) {
        let new = self.other_node(self.master_port());
        let mut sentinel = connect(self.sentinel.port, None);
        let deadline = Instant::now() + Duration::from_secs(15);
        // NOGOODSLAVE until the sentinel has read the replica's INFO since it changed.
        while let Err(e) = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(SENTINEL_MASTER)
            .query::<()>(&mut sentinel)
        {
            assert!(
                e.code() == Some("NOGOODSLAVE") && Instant::now() < deadline,
                "SENTINEL FAILOVER: {e}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.wait_master(new);
    }

    /// Waits until the sentinel names the node on `port` and that node is master, with
    /// the other one replicating from it.
    fn wait_master(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let named = std::panic::catch_unwind(|| self.master_port()).ok();
            let other = self.other_node(port);
            if named == Some(port)
                && self.role(port) == "master"
                && self.replicating(other)
                && self.sentinel_sees_replica(other)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel did not settle on port {port} (names {named:?})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The port of the data node that is not on `port`.
    fn other_node(&self, port: u16) -> u16 {
        let mut ports = self.nodes.iter().map(Self::named);
        ports.find(|p| *p != port).unwrap()
    }

    /// Whether the sentinel knows the node on `port` as a healthy replica (it learns
    /// replicas from the master's INFO, every few seconds): only then can it fail over.
    fn sentinel_sees_replica(&self, port: u16) -> bool {
        let mut sentinel = connect(self.sentinel.port, None);
        let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(SENTINEL_MASTER)
            .query(&mut sentinel)
            .unwrap_or_default();
        replicas.iter().any(|r| {
            r.get("port").map(String::as_str) == Some(&port.to_string())
                && r.get("flags").map(String::as_str) == Some("slave")
        })
    }

    /// Whether the node on `port` is a replica in sync with its master (its own
    /// `INFO replication`, fresher than what the sentinel last read).
    fn replicating(&self, port: u16) -> bool {
        let info = self.ask::<String>(port, redis::cmd("INFO").arg("replication"));
        info.is_ok_and(|i| i.contains("role:slave") && i.contains("master_link_status:up"))
    }

    /// `command` on the data node the sentinel names by `port` (over its plain port), an
    /// error while it does not answer (loading a resync).
    fn ask<T: redis::FromRedisValue>(
        &self,
        port: u16,
        command: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let port = self.plain(port);
        let url = format!("redis://:{}@127.0.0.1:{port}/0", self.password);
        let client = redis::Client::open(url)?;
        let mut node = client.get_connection_with_timeout(Duration::from_secs(2))?;
        command.query(&mut node)
    }

    /// `master` or `slave` (ROLE's first field); `unknown` while the node does not
    /// answer (loading a resync).
    fn role(&self, port: u16) -> String {
        let role = self.ask::<Vec<redis::Value>>(port, &redis::cmd("ROLE"));
        match role.as_deref() {
            Ok([redis::Value::BulkString(b), ..]) => String::from_utf8_lossy(b).into_owned(),
            _ => "unknown".into(),
        }
    }
}

/// A write, then `WAIT 1` on `master`: its writes so far are on its replica (15 s at
/// most) and the replica acknowledges. (A `WAIT` with no write of its own returns as
/// soon as a replica is online, possibly still loading what the master sent it; the
/// first write after that can wait for the replica's periodic acknowledgement, up to a
/// second.) The write goes to `key` (a cluster node takes only keys of its own slots).
fn wait_one_replica(mut master: redis::Connection, key: &str) {
    let copies: i64 = redis::pipe()
        .cmd("SET")
        .arg(key)
        .arg(1)
        .ignore()
        .cmd("WAIT")
        .arg(1)
        .arg(15000)
        .query::<(i64,)>(&mut master)
        .unwrap()
        .0;
    assert_eq!(copies, 1, "the replica did not catch up");
}

fn connect(port: u16, password: Option<&str>) -> redis::Connection {
    let url = match password {
        Some(p) => format!("redis://:{p}@127.0.0.1:{port}/0"),
        None => format!("redis://127.0.0.1:{port}/0"),
    };
    redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap()
}

/// A master and one replica, no sentinel: for writes that must reach a replica
/// (`store.replica_acks`). The replica can be frozen to play a lagging or lost one.
pub struct ReplicatedPair {
    pub master: RedisServer,
    pub replica: RedisServer,
}

impl ReplicatedPair {
    pub fn start() -> ReplicatedPair {
        ReplicatedPair::start_with_link(None)
    }

    /// A pair whose replica is `one_way` away from its master, as a replica in another
    /// zone is: its link goes through a [`DelayLink`], so a `WAIT` takes about twice
    /// `one_way`.
    pub fn start_distant(one_way: Duration) -> ReplicatedPair {
        ReplicatedPair::start_with_link(Some(one_way))
    }

    fn start_with_link(one_way: Option<Duration>) -> ReplicatedPair {
        let master = RedisServer::start_with(vec![
            // The replica's first full sync starts at once (the default waits 5 s for
            // more replicas to share it).
            "--repl-diskless-sync-delay".into(),
            "0".into(),
        ]);
        let upstream = match one_way {
            None => master.port,
            Some(delay) => DelayLink::start(master.port, delay),
        };
        let replica = RedisServer::start_with(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            upstream.to_string(),
        ]);
        let pair = ReplicatedPair { master, replica };
        pair.wait_in_sync();
        pair
    }

    /// Waits until the replica is online and has every write so far (`WAIT 1`).
    pub fn wait_in_sync(&self) {
        wait_one_replica(connect(self.master.port, None), "harness:in-sync");
    }

    /// `GET key` on the replica itself.
    pub fn on_replica(&self, key: &str) -> Option<Vec<u8>> {
        let mut replica = connect(self.replica.port, None);
        redis::cmd("GET").arg(key).query(&mut replica).unwrap()
    }

    /// `GET key` on the master.
    pub fn on_master(&self, key: &str) -> Option<Vec<u8>> {
        let mut master = connect(self.master.port, None);
        redis::cmd("GET").arg(key).query(&mut master).unwrap()
    }

    /// How many `WAIT`s the master has run (`INFO commandstats`).
    pub fn waits(&self) -> u64 {
        let mut master = connect(self.master.port, None);
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut master)
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }
}

/// A TCP relay on a free loopback port to `target`, holding every chunk `delay` in each
/// direction (order kept): a network link of that latency. Its threads live as long as
/// the test process.
pub struct DelayLink;

impl DelayLink {
    /// Starts relaying; returns the port to connect to instead of `target`'s.
    pub fn start(target: u16, delay: Duration) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { return };
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                relay(
                    inbound.try_clone().unwrap(),
                    outbound.try_clone().unwrap(),
                    delay,
                );
                relay(outbound, inbound, delay);
            }
        });
        port
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read.
fn relay(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (chunks, delayed) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if chunks
                        .send((Instant::now() + delay, buffer[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (due, chunk) in delayed {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&chunk).is_err() {
                let _ = to.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// Redis Cluster in miniature: three masters sharing the 16,384 slots (0–5460,
/// 5461–10922, 10923–16383), on loopback, and optionally a replica of the master that
/// serves a given key. Built by hand (`CLUSTER ADDSLOTSRANGE`, `MEET`, `REPLICATE`) so
/// that it is ready in well under a second.
pub struct RedisCluster {
    pub masters: Vec<RedisServer>,
    pub replica: Option<RedisServer>,
    /// Replicas of other masters, by their master's port
    /// ([`RedisCluster::add_replica_of`]).
    others: Vec<(u16, RedisServer)>,
    /// Every node's `requirepass` (TLS clusters only).
    password: Option<String>,
    /// TLS clusters: the certificates every node shares, `ca.pem` among them.
    certificates: Option<tempfile::TempDir>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        RedisCluster::start_nodes(None, || RedisServer::start_with(cluster_args()))
    }

    /// As managed services in cluster mode run it: TLS for clients and between the nodes
    /// (`tls-cluster`, so that `CLUSTER SLOTS` asked over TLS names the TLS ports), and a
    /// password. The plain ports stay open for the harness. The nodes share one CA, and
    /// present a client certificate to each other: the cluster bus always asks for one.
    pub fn start_tls(password: &str) -> RedisCluster {
        let certificates = tempfile::tempdir().unwrap();
        let dir = certificates.path();
        super::tls_files(dir);
        super::issue_leaf(
            dir,
            "node",
            "/CN=cluster node",
            "extendedKeyUsage=clientAuth\n",
        );
        let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let mut args = cluster_args();
        args.extend(["--tls-cluster".into(), "yes".into()]);
        // Given after the server's own files: the later setting wins.
        for (setting, name) in [
            ("--tls-cert-file", "server.pem"),
            ("--tls-key-file", "server.key"),
            ("--tls-ca-cert-file", "ca.pem"),
            ("--tls-client-cert-file", "node.pem"),
            ("--tls-client-key-file", "node.key"),
        ] {
            args.extend([setting.to_string(), file(name)]);
        }
        let mut cluster = RedisCluster::start_nodes(Some(password.into()), || {
            RedisServer::start_tls_with(password, args.clone())
        });
        cluster.certificates = Some(certificates);
        cluster
    }

    fn start_nodes(password: Option<String>, start: impl Fn() -> RedisServer) -> RedisCluster {
        let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
        let masters: Vec<RedisServer> = ranges.iter().map(|_| start()).collect();
        for (server, (first, last)) in masters.iter().zip(ranges) {
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query(&mut connect(server.port, password.as_deref()))
                .unwrap();
        }
        let cluster = RedisCluster {
            masters,
            replica: None,
            others: Vec::new(),
            password,
            certificates: None,
        };
        for other in &cluster.masters[1..] {
            cluster.meet(other);
        }
        let ports: Vec<u16> = cluster.masters.iter().map(|m| m.port).collect();
        for port in ports {
            // Every node knows the others and sees every slot served (`cluster_state:ok`
            // alone proves little with `cluster-require-full-coverage no`).
            wait_for(
                || {
                    let info = cluster.info(port);
                    info.contains("cluster_state:ok")
                        && info.contains("cluster_known_nodes:3\r\n")
                        && info.contains("cluster_slots_ok:16384\r\n")
                },
                "every node sees the whole cluster",
            );
        }
        cluster
    }

    /// The `rediss://` URL (with the password) of a node that does not serve `key`'s
    /// slot, and the CA its certificate chains to.
    pub fn tls_url_away_from(&self, key: &str) -> (String, Vec<u8>) {
        let serving = self.master_of(key);
        let other = self.masters.iter().find(|m| m.port != serving).unwrap();
        let (tls_port, _) = other.tls.clone().expect("a TLS cluster");
        let ca_pem =
            std::fs::read(self.certificates.as_ref().unwrap().path().join("ca.pem")).unwrap();
        let password = self.password.as_deref().unwrap_or_default();
        (
            format!("rediss://default:{password}@127.0.0.1:{tls_port}/0"),
            ca_pem,
        )
    }

    fn info(&self, port: u16) -> String {
        redis::cmd("CLUSTER")
            .arg("INFO")
            .query(&mut connect(port, self.password.as_deref()))
            .unwrap_or_default()
    }

    /// [`RedisCluster::start`] with a replica of the master serving `key`, in sync.
    pub fn start_with_replica(key: &str) -> RedisCluster {
        let mut cluster = RedisCluster::start();
        let replica = cluster.replicate(cluster.master_of(key));
        cluster.replica = Some(replica);
        cluster
    }

    /// A replica, in sync, of the master at `port`, for writes that wait for one
    /// (not one [`RedisCluster::fail_over`] promotes). Its first sync starts at once:
    /// Redis otherwise waits 5 s for more replicas to share it. (The replica of
    /// [`RedisCluster::start_with_replica`] keeps the wait: a manual failover right after
    /// a replica joined is refused or never voted on until the cluster bus has settled.)
    pub fn add_replica_of(&mut self, port: u16) {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("repl-diskless-sync-delay")
            .arg(0)
            .query(&mut connect(port, None))
            .unwrap();
        let replica = self.replicate(port);
        self.others.push((port, replica));
    }

    /// The replica [`RedisCluster::add_replica_of`] gave the master at `port`.
    pub fn replica_of(&self, port: u16) -> &RedisServer {
        self.others
            .iter()
            .find_map(|(master, replica)| (*master == port).then_some(replica))
            .expect("a replica of that master")
    }

    fn replicate(&self, master: u16) -> RedisServer {
        let master_id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut connect(master, None))
            .unwrap();
        let replica = RedisServer::start_with(cluster_args());
        self.meet(&replica);
        let port = replica.port;
        wait_for(
            || {
                redis::cmd("CLUSTER")
                    .arg("REPLICATE")
                    .arg(&master_id)
                    .query::<()>(&mut connect(port, None))
                    .is_ok()
            },
            "the replica knows its master",
        );
        wait_for(
            || {
                redis::cmd("INFO")
                    .arg("replication")
                    .query::<String>(&mut connect(port, None))
                    .unwrap()
                    .contains("master_link_status:up")
            },
            "the replica is in sync",
        );
        replica
    }

    /// The URL of a node that does not serve `key`'s slot: a store seeded there must
    /// find the right one.
    pub fn url_away_from(&self, key: &str) -> String {
        let serving = self.master_of(key);
        let other = self.masters.iter().find(|m| m.port != serving).unwrap();
        other.url()
    }

    /// The port of the master serving `key`'s slot, as the first master sees it.
    pub fn master_of(&self, key: &str) -> u16 {
        self.master_of_as_seen_by(self.masters[0].port, key)
    }

    fn master_of_as_seen_by(&self, port: u16, key: &str) -> u16 {
        master_as_seen_by(port, self.password.as_deref(), key)
    }

    /// A manual failover (`CLUSTER FAILOVER` on the replica): the replica becomes the
    /// master of `key`'s slot, and every master agrees.
    pub fn fail_over(&mut self, key: &str) {
        let replica = self.replica.as_ref().expect("a replica").port;
        let old = self.master_of(key);
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query(&mut connect(replica, None))
            .unwrap();
        let ports: Vec<u16> = self.masters.iter().map(|m| m.port).collect();
        for port in ports {
            wait_for(
                || self.master_of_as_seen_by(port, key) == replica,
                "the cluster names the new master",
            );
        }
        // The two swap roles: the old master now replicates from the new one.
        let i = self.masters.iter().position(|m| m.port == old).unwrap();
        let promoted = self.replica.take().unwrap();
        let demoted = std::mem::replace(&mut self.masters[i], promoted);
        self.replica = Some(demoted);
    }

    /// A write in `key`'s slot, then `WAIT 1` on its master: the replica has everything.
    pub fn wait_replicated(&self, key: &str) {
        wait_one_replica(
            connect(self.master_of(key), None),
            &format!("{key}harness:in-sync"),
        );
    }

    /// Starts moving `key`'s slot to another master, the way `redis-cli --cluster
    /// reshard` does: `CLUSTER SETSLOT … IMPORTING` on the new master, then `MIGRATING`
    /// on the old one. Keys move with [`Migration::move_keys`]; [`Migration::finish`]
    /// moves the rest and gives the slot to the new master.
    pub fn begin_migration(&self, key: &str) -> Migration {
        let from = self.master_of(key);
        let to = self.migration_target(key);
        let password = self.password.clone();
        let on = |port: u16| connect(port, password.as_deref());
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut on(from))
            .unwrap();
        let id = |port: u16| -> String {
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query(&mut on(port))
                .unwrap()
        };
        let (from_id, to_id) = (id(from), id(to));
        let setslot = |port: u16, state: &str, node: &str| {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(node)
                .query(&mut on(port))
                .unwrap();
        };
        setslot(to, "IMPORTING", &from_id);
        setslot(from, "MIGRATING", &to_id);
        // With `tls-cluster`, MIGRATE speaks TLS to the new master: its TLS port.
        let target = self.masters.iter().find(|m| m.port == to).unwrap();
        let migrate_to = target.tls.as_ref().map_or(to, |(tls_port, _)| *tls_port);
        Migration {
            migrate_to,
            key: key.to_owned(),
            slot,
            from,
            to,
            to_id,
            masters: self.masters.iter().map(|m| m.port).collect(),
            password,
        }
    }

    /// The master [`RedisCluster::begin_migration`] moves `key`'s slot to.
    pub fn migration_target(&self, key: &str) -> u16 {
        let from = self.master_of(key);
        self.masters.iter().find(|m| m.port != from).unwrap().port
    }

    /// Introduces `node` to the first master. With `tls-cluster` a node's cluster port
    /// is its TLS port + 10,000, so that is the port to name.
    fn meet(&self, node: &RedisServer) {
        let port = node
            .tls
            .as_ref()
            .map_or(node.port, |(tls_port, _)| *tls_port);
        let _: () = redis::cmd("CLUSTER")
            .arg("MEET")
            .arg("127.0.0.1")
            .arg(port)
            .query(&mut connect(self.masters[0].port, self.password.as_deref()))
            .unwrap();
    }
}

/// A slot on its way from one master to another ([`RedisCluster::begin_migration`]).
pub struct Migration {
    key: String,
    slot: i64,
    pub from: u16,
    pub to: u16,
    to_id: String,
    /// The port MIGRATE reaches the new master on.
    migrate_to: u16,
    masters: Vec<u16>,
    /// Every node's `requirepass` (TLS clusters).
    password: Option<String>,
}

impl Migration {
    fn connect(&self, port: u16) -> redis::Connection {
        connect(port, self.password.as_deref())
    }

    /// The slot's keys still on the old master.
    pub fn keys_left(&self) -> Vec<String> {
        redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(self.slot)
            .arg(100_000)
            .query(&mut self.connect(self.from))
            .unwrap()
    }

    /// Moves the keys of the slot that `pick` chooses (`MIGRATE … KEYS`, atomic per
    /// batch); returns how many moved.
    pub fn move_keys(&self, pick: impl Fn(&str) -> bool) -> usize {
        let keys: Vec<String> = self.keys_left().into_iter().filter(|k| pick(k)).collect();
        if keys.is_empty() {
            return 0;
        }
        let mut migrate = redis::cmd("MIGRATE");
        migrate
            .arg("127.0.0.1")
            .arg(self.migrate_to)
            .arg("")
            .arg(0)
            .arg(5000);
        if let Some(password) = &self.password {
            migrate.arg("AUTH").arg(password);
        }
        let _: redis::Value = migrate
            .arg("KEYS")
            .arg(&keys)
            .query(&mut self.connect(self.from))
            .unwrap();
        keys.len()
    }

    /// Moves every key left, then hands the slot over (`CLUSTER SETSLOT … NODE`, the new
    /// master first) and waits until every master names the new one.
    pub fn finish(&self) {
        self.move_keys(|_| true);
        for port in
            std::iter::once(self.to).chain(self.masters.iter().copied().filter(|p| *p != self.to))
        {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(self.slot)
                .arg("NODE")
                .arg(&self.to_id)
                .query(&mut self.connect(port))
                .unwrap();
        }
        for &port in &self.masters {
            wait_for(
                || master_as_seen_by(port, self.password.as_deref(), &self.key) == self.to,
                "every master names the slot's new master",
            );
        }
    }
}

/// The port of the master serving `key`'s slot, as the node at `port` sees it.
fn master_as_seen_by(port: u16, password: Option<&str>, key: &str) -> u16 {
    let mut connection = connect(port, password);
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut connection)
        .unwrap();
    let ranges: Vec<(i64, i64, (String, i64))> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query::<Vec<redis::Value>>(&mut connection)
        .unwrap()
        .into_iter()
        .map(|range| {
            let redis::Value::Array(fields) = range else {
                panic!("CLUSTER SLOTS: {range:?}")
            };
            let start: i64 = redis::from_redis_value(fields[0].clone()).unwrap();
            let end: i64 = redis::from_redis_value(fields[1].clone()).unwrap();
            let redis::Value::Array(master) = &fields[2] else {
                panic!("CLUSTER SLOTS: {fields:?}")
            };
            let host: String = redis::from_redis_value(master[0].clone()).unwrap();
            let port: i64 = redis::from_redis_value(master[1].clone()).unwrap();
            (start, end, (host, port))
        })
        .collect();
    let (_, _, (_, port)) = ranges
        .into_iter()
        .find(|(start, end, _)| (*start..=*end).contains(&slot))
        .expect("the slot is served");
    port as u16
}

fn cluster_args() -> Vec<String> {
    [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "2000",
        // A master stopped on purpose must not stop the others' slots.
        "--cluster-require-full-coverage",
        "no",
    ]
    .map(String::from)
    .to_vec()
}

/// Polls `done` every 20 ms for up to 20 s.
fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis cluster: timed out waiting until {what}");
}
