//! Which Redis node the store writes to: one fixed endpoint, the master that Redis
//! Sentinel names, or the Redis Cluster master that holds the store's hash slot.
//!
//! - **Fixed endpoint** (a single Redis, or a managed Redis's primary endpoint, whose DNS
//!   name follows its failovers): one URL for the life of the store. Its connection
//!   manager reconnects by itself after a dropped connection. A write answered
//!   `-READONLY` means the name now leads elsewhere while our connection still reaches
//!   the old primary, demoted to a replica: the node is replaced by a new one on the same
//!   URL, whose first connection resolves the name again (at most once per
//!   [`RENEW_GAP`], so that a URL that names a replica for good does not make every
//!   request open a connection).
//! - **Sentinel** (the "Sentinel client spec",
//!   <https://redis.io/docs/latest/develop/reference/sentinel-clients/>): a background task
//!   asks the sentinels for the master (`SENTINEL MASTERS`, then `ROLE` on the node they
//!   name, which must call itself master: steps 1–3 of the spec) when the store starts,
//!   every `recheck`, and at once when a command failed in a way a failover explains (a
//!   dropped connection: Sentinel disconnects the clients of a master it demotes,
//!   "Sentinel failover disconnection"; or `-READONLY`). A new address becomes a new node.
//! - **Cluster** ([`super::cluster`]): the same task, asking a seed node which master
//!   serves the one slot all of the store's keys hash to; besides the errors above,
//!   `-MOVED` and `-CLUSTERDOWN` make it look again at once. (`-ASK` and `-TRYAGAIN`,
//!   a slot migrating, are answered command by command: [`super::migration`].)
//!
//! A command that failed that way is tried once more, on the node the lookup it triggered
//! found, within the command's own deadline (see `redis::run_async`). Every node carries a
//! generation, so that blocking connections made to an older node are dropped rather than
//! reused.
//!
//! A node has one async connection for commands that answer at once, and, with
//! `replica_acks`, a few more for writes followed by `WAIT` ([`Lane`]): Redis holds every
//! later command of a connection until its `WAIT` returns, a replica round trip later.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::SentinelClient;
use redis::{Client, ErrorKind, RedisError, ServerErrorKind};
use tokio::sync::{watch, Notify};

use super::cluster::Seeds;
use super::migration::AskedNode;

/// The shortest gap between two lookups: a burst of failed commands asks once.
const LOOKUP_GAP: Duration = Duration::from_millis(50);

/// The youngest a fixed endpoint's node may be to be replaced after `-READONLY`.
const RENEW_GAP: Duration = Duration::from_secs(1);

/// The node commands go to now.
pub(super) struct Node {
    /// Bumped each time the node is replaced.
    pub generation: u64,
    /// For blocking connections.
    pub client: Client,
    /// For async commands that Redis answers at once; reconnects by itself to the same
    /// address.
    manager: ConnectionManager,
    /// For async writes followed by `WAIT` (empty without `replica_acks`), taken in
    /// turn or by a transaction's key. "WAIT ... blocks the current client" until the
    /// replicas acknowledge (<https://redis.io/docs/latest/commands/wait/>), and a
    /// blocked client's later commands wait in its input buffer: on one shared
    /// connection every write would wait for the one before it, a replica round trip
    /// each, and every read behind them. Lazy, like `manager`: each connects on first
    /// use.
    waiting: Box<[ConnectionManager]>,
    next_waiting: AtomicUsize,
    /// `host:port`, for logs.
    pub address: String,
    made_at: Instant,
    /// How `waiting` and `manager` were made, for an [`AskedNode`]'s.
    config: ConnectionManagerConfig,
    /// The node the last `-ASK` named: the new master of the store's slot while it
    /// migrates ([`super::migration`]). The lock is held to read or swap, never across
    /// I/O.
    asked: Mutex<Option<Arc<AskedNode>>>,
}

/// Which of a node's async connections a command goes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Answered at once: reads, writes without `WAIT`, scripts, `PING`.
    Direct,
    /// Ends with `WAIT` (held by Redis until the replicas acknowledge), or must follow
    /// such a command: the next connection in turn, or with `Some(affinity)` always the
    /// same one for the same affinity, so that Redis runs what goes over it in the order
    /// it was sent (a claim, then the release sent after the claim's answer was lost).
    Waiting(Option<u64>),
}

impl Node {
    /// A connection for a command of `lane`.
    pub(super) fn connection(&self, lane: Lane) -> ConnectionManager {
        let count = self.waiting.len();
        match lane {
            Lane::Waiting(affinity) if count > 0 => {
                let turn = match affinity {
                    Some(affinity) => (affinity % count as u64) as usize,
                    None => self.next_waiting.fetch_add(1, Ordering::Relaxed) % count,
                };
                self.waiting[turn].clone()
            }
            _ => self.manager.clone(),
        }
    }

    /// The node at `address` that an `-ASK` named, its connections kept while the
    /// migration lasts.
    pub(super) fn asked(&self, address: &str) -> Result<Arc<AskedNode>, RedisError> {
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = asked.as_ref().filter(|n| n.address == address) {
            return Ok(node.clone());
        }
        let client = super::cluster::client_at(&self.client, address)?;
        let node = Arc::new(AskedNode::new(address, client, self.config.clone())?);
        *asked = Some(node.clone());
        Ok(node)
    }
}

/// How a node's async connections are made.
#[derive(Clone)]
pub(super) struct Connections {
    pub config: ConnectionManagerConfig,
    /// Connections of [`Lane::Waiting`]: 0 without `replica_acks`.
    pub waiting: usize,
}

/// The current node, shared by every clone.
#[derive(Clone)]
pub(super) struct Master(Arc<Shared>);

struct Shared {
    /// `None` only before the locator first named a master. The lock is held to read
    /// or swap the `Arc`, never across I/O.
    node: RwLock<Option<Arc<Node>>>,
    connections: Connections,
    /// `None` for a fixed endpoint.
    lookups: Option<Arc<Lookups>>,
}

/// Who names the node: the sentinels, or a Redis Cluster's seed nodes.
pub(super) enum Locator {
    Sentinel(Box<SentinelClient>),
    Cluster(Seeds),
}

impl Locator {
    /// A client for the node that serves the store's keys now.
    async fn locate(&mut self) -> Result<Client, String> {
        match self {
            Locator::Sentinel(sentinel) => {
                sentinel.async_get_client().await.map_err(|e| e.to_string())
            }
            Locator::Cluster(seeds) => seeds.locate().await,
        }
    }

    /// For logs, and the `reason` of the master-changed metric.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Locator::Sentinel(_) => ("redis sentinel", "sentinel"),
            Locator::Cluster(_) => ("redis cluster", "cluster"),
        }
    }
}

/// The lookup task's side of [`Master`].
struct Lookups {
    /// What the master is known by: the name the sentinels monitor it under
    /// (`sentinel monitor <name> …`), or a cluster's hash slot.
    name: String,
    /// Asks the task to look again now.
    wake: Notify,
    /// Lookups finished so far: a command waits for the next one.
    done: watch::Sender<u64>,
}

impl Master {
    /// One endpoint for the life of the store.
    pub(super) fn fixed(client: Client, connections: Connections) -> Result<Self, RedisError> {
        let node = new_node(0, client, &connections)?;
        Ok(Master(Arc::new(Shared {
            node: RwLock::new(Some(Arc::new(node))),
            connections,
            lookups: None,
        })))
    }

    /// The master `name` that `locator` names; looked up by a task spawned on the
    /// current tokio runtime, which ends when the last clone of the store's `Master` is
    /// dropped. `timeout` bounds each lookup; `recheck` is how often the locator is
    /// asked while every command succeeds, which bounds how long writes can go to a master
    /// that was replaced without our connections to it being closed (a partition).
    pub(super) fn located(
        locator: Locator,
        name: String,
        connections: Connections,
        timeout: Duration,
        recheck: Duration,
    ) -> Self {
        let lookups = Arc::new(Lookups {
            name,
            wake: Notify::new(),
            done: watch::channel(0).0,
        });
        let shared = Arc::new(Shared {
            node: RwLock::new(None),
            connections,
            lookups: Some(lookups.clone()),
        });
        tokio::spawn(watch_locator(
            Arc::downgrade(&shared),
            lookups,
            locator,
            timeout,
            recheck,
        ));
        Master(shared)
    }

    /// The current node, if there is one.
    pub(super) fn now(&self) -> Option<Arc<Node>> {
        self.0
            .node
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current node; before the locator first named one, asks it again and waits
    /// for its answer until `deadline`. Returns at once (no await point) when there is a node, so that
    /// an overlapped call still hands its command over on its first poll.
    pub(super) async fn node(&self, deadline: Instant) -> Option<Arc<Node>> {
        if let Some(node) = self.now() {
            return Some(node);
        }
        let lookups = self.0.lookups.as_ref()?;
        let mut done = lookups.done.subscribe();
        if let Some(node) = self.now() {
            return Some(node); // found between the two looks
        }
        lookups.wake.notify_one();
        let _ = tokio::time::timeout_at(deadline.into(), done.changed()).await;
        self.now()
    }

    /// [`Master::node`] for a blocking thread.
    pub(super) fn node_blocking(&self, deadline: Instant) -> Option<Arc<Node>> {
        if let Some(node) = self.now() {
            return Some(node);
        }
        let lookups = self.0.lookups.as_ref()?;
        let done = lookups.done.subscribe();
        if let Some(node) = self.now() {
            return Some(node);
        }
        lookups.wake.notify_one();
        wait_blocking(&done, deadline);
        self.now()
    }

    /// After `error` on `node`: the node to try the command once more on, or `None`
    /// when the error is not one a failover explains (or a reconnect mends). With
    /// Sentinel, waits until `deadline` for the lookup it triggers.
    pub(super) async fn after(
        &self,
        node: &Node,
        error: &RedisError,
        deadline: Instant,
    ) -> Option<Arc<Node>> {
        let mut done = match self.suspect(node, error)? {
            Suspicion::Moved(next) => return Some(next),
            Suspicion::LookingUp(done) => done,
        };
        let _ = tokio::time::timeout_at(deadline.into(), done.changed()).await;
        self.now()
    }

    /// [`Master::after`] for a blocking thread.
    pub(super) fn after_blocking(
        &self,
        node: &Node,
        error: &RedisError,
        deadline: Instant,
    ) -> Option<Arc<Node>> {
        let done = match self.suspect(node, error)? {
            Suspicion::Moved(next) => return Some(next),
            Suspicion::LookingUp(done) => done,
        };
        wait_blocking(&done, deadline);
        self.now()
    }

    fn suspect(&self, node: &Node, error: &RedisError) -> Option<Suspicion> {
        let read_only = is_read_only(error);
        let dropped = error.is_io_error() || error.is_connection_dropped();
        if !read_only && !dropped && !is_redirection(error) {
            return None;
        }
        match &self.0.lookups {
            Some(lookups) => {
                let done = lookups.done.subscribe();
                lookups.wake.notify_one();
                Some(Suspicion::LookingUp(done))
            }
            // The same node once more: its manager reconnects by itself.
            None if dropped => self.now().map(Suspicion::Moved),
            None => self.renew(node).map(Suspicion::Moved),
        }
    }

    /// A fixed endpoint answered `-READONLY`: a new node on the same URL (new
    /// connections, the host name resolved again), unless another command already
    /// replaced `stale`, or `stale` was made less than [`RENEW_GAP`] ago.
    fn renew(&self, stale: &Node) -> Option<Arc<Node>> {
        let mut slot = self.0.node.write().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = slot.as_ref().filter(|n| n.generation != stale.generation) {
            return Some(current.clone());
        }
        if stale.made_at.elapsed() < RENEW_GAP {
            return None;
        }
        let node = new_node(
            stale.generation + 1,
            stale.client.clone(),
            &self.0.connections,
        )
        .ok()?;
        tracing::warn!(
            endpoint = %node.address,
            "redis answered READONLY (its primary moved): connecting again"
        );
        super::observe::master_changed("readonly");
        let node = Arc::new(node);
        *slot = Some(node.clone());
        Some(node)
    }
}

enum Suspicion {
    /// Try again on this node.
    Moved(Arc<Node>),
    /// A lookup (sentinels or cluster) was asked for; this changes when it is done.
    LookingUp(watch::Receiver<u64>),
}

/// `-READONLY`: the node is a replica now.
pub(super) fn is_read_only(error: &RedisError) -> bool {
    error.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

/// A Redis Cluster's answer that the slot is served elsewhere now (a failover, or a
/// migration that ended), or not served right now: `-MOVED`, `-CLUSTERDOWN`
/// (<https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#redirection-and-resharding>).
/// A lookup does not help with `-ASK` and `-TRYAGAIN`: the old master still serves the
/// slot while it migrates.
fn is_redirection(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::ClusterDown)
    )
}

fn new_node(
    generation: u64,
    client: Client,
    connections: &Connections,
) -> Result<Node, RedisError> {
    let address = client.get_connection_info().addr().to_string();
    let manager =
        || ConnectionManager::new_lazy_with_config(client.clone(), connections.config.clone());
    Ok(Node {
        generation,
        manager: manager()?,
        waiting: (0..connections.waiting)
            .map(|_| manager())
            .collect::<Result<_, _>>()?,
        next_waiting: AtomicUsize::new(0),
        client,
        address,
        made_at: Instant::now(),
        config: connections.config.clone(),
        asked: Mutex::new(None),
    })
}

/// Waits on a blocking thread until `done` changes or `deadline` passes. Polls: a
/// lookup takes a round trip or two, and this runs only after a failed command.
fn wait_blocking(done: &watch::Receiver<u64>, deadline: Instant) {
    while !done.has_changed().unwrap_or(true) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The lookup task: looks the master up now, every `recheck`, and whenever a command
/// asks ([`Lookups::wake`]); adopts a new address as a new node.
async fn watch_locator(
    shared: Weak<Shared>,
    lookups: Arc<Lookups>,
    mut locator: Locator,
    timeout: Duration,
    recheck: Duration,
) {
    let mut failing = false;
    loop {
        let Some(master) = shared.upgrade().map(Master) else {
            return;
        };
        let found = tokio::time::timeout(timeout, locator.locate()).await;
        let (kind, reason) = locator.kind();
        match found {
            Ok(Ok(client)) => {
                if failing {
                    tracing::info!(master = %lookups.name, "{kind}: a master is named again");
                }
                failing = false;
                master.adopt(client, &lookups.name, kind, reason);
            }
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::warn!(master = %lookups.name, error = %e, "{kind}: no master found; the store is unavailable until one is");
            }
            Err(_) if !failing => {
                failing = true;
                tracing::warn!(master = %lookups.name, timeout_ms = timeout.as_millis() as u64, "{kind}: no answer in time; the store is unavailable until there is one");
            }
            _ => {}
        }
        lookups.done.send_modify(|n| *n += 1);
        drop(master);
        tokio::select! {
            _ = lookups.wake.notified() => {}
            _ = tokio::time::sleep(recheck) => {}
        }
        tokio::time::sleep(LOOKUP_GAP).await;
    }
}

impl Master {
    /// The locator named `client`'s address: a new node unless it is the current one.
    fn adopt(&self, client: Client, name: &str, kind: &'static str, reason: &'static str) {
        let address = client.get_connection_info().addr().to_string();
        let mut slot = self.0.node.write().unwrap_or_else(|e| e.into_inner());
        let generation = match slot.as_ref() {
            Some(current) if current.address == address => return,
            Some(current) => current.generation + 1,
            None => 0,
        };
        let node = match new_node(generation, client, &self.0.connections) {
            Ok(node) => node,
            Err(e) => {
                tracing::warn!(master = %name, %address, error = %e, "{kind}: cannot use the master named");
                return;
            }
        };
        match slot.as_ref() {
            Some(old) => {
                tracing::warn!(master = %name, from = %old.address, to = %address, "{kind}: the master moved (failover); commands go to the new one");
                super::observe::master_changed(reason);
            }
            None => tracing::info!(master = %name, %address, "{kind}: master found"),
        }
        *slot = Some(Arc::new(node));
    }
}
