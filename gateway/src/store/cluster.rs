//! Redis Cluster: which master holds the store's keys.
//!
//! Redis Cluster runs a pipeline or a script only when all of its keys hash to one slot
//! (`-CROSSSLOT` otherwise), and the store's do not keep to one key: an issued record
//! goes with its certificate, a one-time password with its requester's set. So in
//! cluster mode every key carries one hash tag, the key prefix in braces
//! (`{scep:}tx:n:…`). Redis hashes only what is inside the first braces: "Hash tags are
//! a way to ensure that multiple keys are allocated in the same hash slot"
//! (<https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags>).
//!
//! All of the store's keys therefore live on one shard, and the store talks to that
//! shard's master like to any single Redis ([`super::master`]). Only finding it differs:
//! a seed node is asked which slot the tag hashes to (`CLUSTER KEYSLOT`) and which
//! master serves that slot (`CLUSTER SLOTS`), at start, every `recheck`, and at once when
//! a command is redirected (`-MOVED`, a failover or a finished resharding) or its
//! connection drops. While the slot migrates, `-ASK` is followed command by command
//! ([`super::migration`]). One shard is plenty: an enrollment costs two commands, and a
//! shard serves tens of thousands a second. Cluster mode is for the managed services that offer nothing
//! else (ElastiCache Serverless, Memorystore for Redis Cluster) and for operators who
//! run a cluster anyway; it spreads nothing over the shards.

use std::time::Duration;

use redis::{Client, ConnectionAddr, ConnectionInfo, Value};

/// The seed nodes a cluster's topology is read from, and the slot the store's keys are
/// in.
pub(super) struct Seeds {
    /// One client per seed: the URL's node first, then `[store.cluster] nodes`, each
    /// with the URL's credentials and TLS settings.
    seeds: Vec<Client>,
    /// A key with the store's hash tag (the tagged prefix itself).
    tag: String,
    /// Asked once: it depends only on the tag.
    slot: Option<u16>,
    /// How long one seed may take to answer before the next is asked: the lookup's
    /// timeout shared out, so that a seed that hangs (not one that refuses) leaves time
    /// for the others.
    per_seed: Duration,
}

impl Seeds {
    /// `url` names the first seed and how to talk to every node (TLS, user, password);
    /// `nodes` (`host:port`) are further seeds, tried in order when it does not answer.
    /// `timeout` bounds a whole lookup.
    pub(super) fn new(
        url: &Client,
        nodes: &[String],
        tag: String,
        timeout: Duration,
    ) -> redis::RedisResult<Self> {
        let info = url.get_connection_info();
        let mut seeds = vec![url.clone()];
        for node in nodes {
            let (host, port) = host_port(node).ok_or_else(|| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "a cluster seed is not host:port",
                ))
            })?;
            seeds.push(Client::open(at(info, host, port))?);
        }
        let per_seed = timeout / seeds.len() as u32;
        Ok(Seeds {
            seeds,
            tag,
            slot: None,
            per_seed,
        })
    }

    /// A client for the master that serves the store's slot now: the first seed that
    /// answers decides.
    pub(super) async fn locate(&mut self) -> Result<Client, String> {
        let mut last = String::from("no seed node");
        for seed in &self.seeds {
            let asked = tokio::time::timeout(self.per_seed, ask(seed, &self.tag, &mut self.slot));
            let error = match asked.await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(e)) => e,
                Err(_) => format!("no answer within {} ms", self.per_seed.as_millis()),
            };
            last = format!("{}: {error}", seed.get_connection_info().addr());
        }
        Err(last)
    }
}

/// Asks `seed` for the slot of `tag` (once) and that slot's master.
async fn ask(seed: &Client, tag: &str, slot: &mut Option<u16>) -> Result<Client, String> {
    let mut connection = seed
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let slot = match *slot {
        Some(slot) => slot,
        None => {
            let asked: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(tag)
                .query_async(&mut connection)
                .await
                .map_err(|e| e.to_string())?;
            *slot = Some(asked);
            asked
        }
    };
    let slots: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut connection)
        .await
        .map_err(|e| e.to_string())?;
    let info = seed.get_connection_info();
    let (host, port) = master_of(&slots, slot).ok_or_else(|| {
        format!("no master serves slot {slot} (the cluster is still forming, or failing over)")
    })?;
    // An empty host (or "?") is the node that answered (the cluster spec: "an unknown
    // endpoint"), i.e. the seed.
    let host = match host.as_str() {
        "" | "?" => seed_host(info),
        _ => host,
    };
    Client::open(at(info, host, port)).map_err(|e| e.to_string())
}

/// The master of `slot` in a `CLUSTER SLOTS` answer: an array of
/// `[start, end, [host, port, id, …] (the master), [host, port, …] (replicas)…]`
/// (<https://redis.io/docs/latest/commands/cluster-slots/>).
fn master_of(slots: &Value, slot: u16) -> Option<(String, u16)> {
    let Value::Array(ranges) = slots else {
        return None;
    };
    ranges.iter().find_map(|range| {
        let Value::Array(fields) = range else {
            return None;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return None;
        };
        if !(*start..=*end).contains(&i64::from(slot)) {
            return None;
        }
        let host = match master.first()? {
            Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok()?,
            Value::SimpleString(text) => text.clone(),
            Value::Nil => String::new(),
            _ => return None,
        };
        let Value::Int(port) = master.get(1)? else {
            return None;
        };
        Some((host, u16::try_from(*port).ok()?))
    })
}

/// A client for the node at `address` (`host:port`, as a redirection names it), with
/// `like`'s credentials and TLS settings.
pub(super) fn client_at(like: &Client, address: &str) -> redis::RedisResult<Client> {
    let (host, port) = host_port(address).ok_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::Parse, "a redirection names no host:port"))
    })?;
    Client::open(at(like.get_connection_info(), host, port))
}

/// `info` (credentials, database, TLS settings) for another node.
fn at(info: &ConnectionInfo, host: String, port: u16) -> ConnectionInfo {
    let addr = match info.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    info.clone().set_addr(addr)
}

fn seed_host(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
        _ => String::new(),
    }
}

/// `host:port`, the host possibly an IPv6 address in brackets.
fn host_port(node: &str) -> Option<(String, u16)> {
    let (host, port) = node.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    fn range(start: i64, end: i64, nodes: Vec<Value>) -> Value {
        let mut fields = vec![Value::Int(start), Value::Int(end)];
        fields.extend(nodes);
        Value::Array(fields)
    }

    #[test]
    fn the_master_of_the_range_holding_the_slot_is_chosen() {
        let slots = Value::Array(vec![
            range(
                0,
                5460,
                vec![node("10.0.0.1", 6379), node("10.0.0.4", 6379)],
            ),
            range(
                5461,
                10922,
                vec![node("10.0.0.2", 6380), node("10.0.0.5", 6379)],
            ),
            range(10923, 16383, vec![node("10.0.0.3", 6381)]),
        ]);
        assert_eq!(master_of(&slots, 0), Some(("10.0.0.1".into(), 6379)));
        assert_eq!(master_of(&slots, 5461), Some(("10.0.0.2".into(), 6380)));
        assert_eq!(master_of(&slots, 10922), Some(("10.0.0.2".into(), 6380)));
        assert_eq!(master_of(&slots, 16383), Some(("10.0.0.3".into(), 6381)));
    }

    #[test]
    fn an_unserved_slot_or_a_strange_answer_names_no_master() {
        let slots = Value::Array(vec![range(0, 100, vec![node("a", 1)])]);
        assert_eq!(master_of(&slots, 101), None);
        assert_eq!(master_of(&Value::Nil, 0), None);
        let no_port = Value::Array(vec![range(
            0,
            100,
            vec![Value::Array(vec![Value::BulkString(b"a".to_vec())])],
        )]);
        assert_eq!(master_of(&no_port, 5), None);
        let bad_port = Value::Array(vec![range(0, 100, vec![node("a", 70000)])]);
        assert_eq!(master_of(&bad_port, 5), None);
    }

    #[test]
    fn other_nodes_keep_the_credentials_and_tls_of_the_url() {
        let client = Client::open("rediss://user:secret@seed.example:6380/0").unwrap();
        let info = at(client.get_connection_info(), "10.0.0.9".into(), 7000);
        assert!(matches!(
            info.addr(),
            ConnectionAddr::TcpTls { host, port: 7000, insecure: false, .. } if host == "10.0.0.9"
        ));
        assert_eq!(info.redis_settings().username(), Some("user"));
        assert_eq!(info.redis_settings().password(), Some("secret"));
        let plain = Client::open("redis://seed:6379").unwrap();
        let info = at(plain.get_connection_info(), "10.0.0.9".into(), 7000);
        assert_eq!(info.addr(), &ConnectionAddr::Tcp("10.0.0.9".into(), 7000));
    }

    #[test]
    fn seeds_are_host_and_port() {
        assert_eq!(host_port("10.0.0.1:6379"), Some(("10.0.0.1".into(), 6379)));
        assert_eq!(host_port("[::1]:7000"), Some(("::1".into(), 7000)));
        assert_eq!(host_port("redis.internal"), None);
        assert_eq!(host_port(":6379"), None);
        assert_eq!(host_port("h:0"), None);
    }
}
