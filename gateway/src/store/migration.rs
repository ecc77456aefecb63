//! Redis Cluster: the store's slot on its way to another master (live resharding, or a
//! managed service rebalancing its shards).
//!
//! While a slot migrates, each of its keys lives on exactly one of the two masters, and
//! the keys move one batch at a time (`MIGRATE`). The old master serves the keys it still
//! holds and redirects the rest: "If the hash slot is being migrated … the client is sent
//! an `-ASK` redirection", and the client then sends "the ASKING command … and then the
//! actual command" to the new master, which serves a slot it is importing only after
//! `ASKING`, and only for that one command. A command over several keys whose keys are
//! split between the two answers `-TRYAGAIN`; "the client should try again later"
//! (cluster spec, "ASK redirection" and "Live resharding",
//! <https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#ask-redirection>).
//! When the migration ends the old master answers `-MOVED`, and [`super::master`] looks
//! the new one up as after a failover. A `-MOVED` in the middle of the rounds (the slot
//! handed over meanwhile) ends them the same way: the whole command is sent once more
//! to the master the lookup finds.
//!
//! So an answer of `-ASK` or `-TRYAGAIN` makes the store send the command again **one
//! command at a time**: a pipeline's commands that the old master served keep their
//! answers; only those it redirected go to the new master, each after its own `ASKING`;
//! those answered `-TRYAGAIN` go again after [`TRYAGAIN_PAUSE`], until the call's
//! deadline. Sending a whole pipeline to the new master instead would create there a key
//! that still exists on the old one, and the migration of that key would then fail.
//! With `replica_acks`, every round ends with its own `WAIT`, on the connection it went
//! over, and the write counts the fewest replicas any of them reached.
//!
//! Resending a pipeline's commands to the old master is safe because every command the
//! store pipelines may be repeated (a claim then reads our own claim: won; a `SET` sets
//! the same value). A single command answered `-ASK` or `-TRYAGAIN` was not run at all.
//!
//! [`Rounds`] decides what goes where and puts the answers together; it does no I/O, so
//! that the blocking and the async path share it and the unit tests drive it with answers
//! written by hand.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, ErrorKind, RedisError, RedisResult, ServerErrorKind, Value};

use super::master::{Lane, Node};

/// How long commands answered `-TRYAGAIN` wait before they are sent again: a migration
/// moves keys in batches, each within milliseconds.
const TRYAGAIN_PAUSE: Duration = Duration::from_millis(20);

/// Idle blocking connections kept to a migration's new master.
const MAX_IDLE_ASKED: usize = 8;

/// `-ASK` or `-TRYAGAIN`: the store's slot is migrating.
pub(super) fn applies(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Server(ServerErrorKind::Ask | ServerErrorKind::TryAgain)
    )
}

/// Where a round goes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum To {
    /// The node the store writes to: the slot's old master.
    Master,
    /// The node an `-ASK` named (`host:port`): the slot's new master.
    Asked(String),
}

/// What to do next.
pub(super) enum Step {
    /// Send this pipeline (its errors kept per command: `ignore_errors`) and hand its
    /// replies to [`Rounds::take`].
    Send(To, redis::Pipeline),
    /// Wait [`TRYAGAIN_PAUSE`], then ask again.
    Pause,
    /// The answer, shaped as the original command's would have been.
    Done(Value),
}

/// One command or pipeline, answered command by command (see the module's doc).
pub(super) struct Rounds<'c> {
    commands: Vec<&'c Cmd>,
    /// The pipeline's closing `WAIT`, sent again at the end of every round.
    wait: Option<&'c Cmd>,
    /// A single command: its answer is its reply, not an array of one.
    single: bool,
    answers: Vec<Option<Value>>,
    /// The fewest replicas a round's `WAIT` counted.
    acked: Option<i64>,
    to_master: Vec<usize>,
    /// Commands an `-ASK` sent elsewhere, by the node it named.
    asked: BTreeMap<String, Vec<usize>>,
    again: Vec<usize>,
    /// The commands of the round sent last, and whether each went after `ASKING`.
    sent: (Vec<usize>, bool),
}

impl<'c> Rounds<'c> {
    /// `commands` as they were sent (the last one a `WAIT` with `replica_acks`); `single`
    /// for a plain command, not a pipeline.
    pub(super) fn new(commands: Vec<&'c Cmd>, single: bool) -> Self {
        let mut commands = commands;
        let wait = match commands.last() {
            Some(last) if !single && is_wait(last) => commands.pop(),
            _ => None,
        };
        let count = commands.len();
        Rounds {
            commands,
            wait,
            single,
            answers: vec![None; count],
            acked: None,
            to_master: (0..count).collect(),
            asked: BTreeMap::new(),
            again: Vec::new(),
            sent: (Vec::new(), false),
        }
    }

    /// The next round, a pause, or the answer.
    pub(super) fn next(&mut self) -> Step {
        if !self.to_master.is_empty() {
            let round = std::mem::take(&mut self.to_master);
            let pipe = self.pipeline(&round, false);
            self.sent = (round, false);
            return Step::Send(To::Master, pipe);
        }
        if let Some((node, round)) = self.asked.pop_first() {
            let pipe = self.pipeline(&round, true);
            self.sent = (round, true);
            return Step::Send(To::Asked(node), pipe);
        }
        if !self.again.is_empty() {
            self.to_master = std::mem::take(&mut self.again);
            return Step::Pause;
        }
        let mut answers: Vec<Value> = self
            .answers
            .iter_mut()
            .map(|a| a.take().unwrap_or(Value::Nil))
            .collect();
        if self.single {
            return Step::Done(answers.pop().unwrap_or(Value::Nil));
        }
        if self.wait.is_some() {
            answers.push(Value::Int(self.acked.unwrap_or(0)));
        }
        Step::Done(Value::Array(answers))
    }

    /// The replies of the round sent last. An error other than a redirection ends the
    /// rounds (as it would have ended the call without the migration), and so does an
    /// `-ASK` from the node an `-ASK` named, or a `-MOVED` (the migration ended
    /// meanwhile: the caller looks the new master up and sends the command there).
    pub(super) fn take(&mut self, replies: Vec<RedisResult<Value>>) -> RedisResult<()> {
        let (round, asking) = std::mem::take(&mut self.sent);
        let mut replies = replies.into_iter();
        let mut next = || {
            replies.next().unwrap_or_else(|| {
                Err(RedisError::from((
                    ErrorKind::Parse,
                    "fewer replies than commands",
                )))
            })
        };
        for i in round {
            if asking {
                next()?; // ASKING's OK
            }
            match next() {
                Ok(value) => self.answers[i] = Some(value),
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::TryAgain) => {
                    super::observe::redirected("tryagain");
                    self.again.push(i)
                }
                Err(e) if !asking && e.kind() == ErrorKind::Server(ServerErrorKind::Ask) => {
                    let Some((node, _slot)) = e.redirect_node() else {
                        return Err(e);
                    };
                    super::observe::redirected("ask");
                    self.asked.entry(node.to_owned()).or_default().push(i);
                }
                Err(e) => return Err(e),
            }
        }
        if self.wait.is_some() {
            let counted: i64 = redis::from_redis_value(next()?)?;
            self.acked = Some(self.acked.map_or(counted, |fewest| fewest.min(counted)));
        }
        Ok(())
    }

    fn pipeline(&self, round: &[usize], asking: bool) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for &i in round {
            if asking {
                pipe.cmd("ASKING");
            }
            pipe.add_command(self.commands[i].clone());
        }
        if let Some(wait) = self.wait {
            pipe.add_command(wait.clone());
        }
        pipe
    }
}

fn is_wait(cmd: &Cmd) -> bool {
    matches!(cmd.args_iter().next(), Some(redis::Arg::Simple(name)) if name.eq_ignore_ascii_case(b"WAIT"))
}

/// A migration's new master, as an `-ASK` named it: reached with the URL's credentials
/// and TLS settings. A [`Node`] keeps the last one it was redirected to.
pub(super) struct AskedNode {
    /// `host:port`, as the `-ASK` named it.
    pub address: String,
    client: Client,
    manager: ConnectionManager,
    /// The lock is held only to push or pop, never across I/O.
    idle: Mutex<Vec<redis::Connection>>,
}

impl AskedNode {
    pub(super) fn new(
        address: &str,
        client: Client,
        config: ConnectionManagerConfig,
    ) -> RedisResult<Self> {
        Ok(AskedNode {
            address: address.to_owned(),
            manager: ConnectionManager::new_lazy_with_config(client.clone(), config)?,
            client,
            idle: Mutex::new(Vec::new()),
        })
    }
}

/// [`Rounds`] over the async connections, until `deadline` (after which the last
/// `-TRYAGAIN` is the answer).
pub(super) async fn run_async(
    node: &Node,
    lane: Lane,
    commands: Vec<&Cmd>,
    single: bool,
    deadline: Instant,
) -> RedisResult<Value> {
    let mut rounds = Rounds::new(commands, single);
    loop {
        match rounds.next() {
            Step::Send(to, pipe) => {
                let mut connection = match to {
                    To::Master => node.connection(lane),
                    To::Asked(address) => node.asked(&address)?.manager.clone(),
                };
                let replies: Vec<RedisResult<Value>> = pipe.query_async(&mut connection).await?;
                rounds.take(replies)?;
            }
            Step::Pause => {
                pause_before(deadline)?;
                tokio::time::sleep(TRYAGAIN_PAUSE).await;
            }
            Step::Done(value) => return Ok(value),
        }
    }
}

/// [`Rounds`] on a blocking thread: the old master's rounds over `connection`, the new
/// master's over a pooled connection of its own, every read bounded by `deadline`.
pub(super) fn run_blocking(
    node: &Node,
    connection: &mut redis::Connection,
    commands: Vec<&Cmd>,
    single: bool,
    deadline: Instant,
) -> RedisResult<Value> {
    let mut rounds = Rounds::new(commands, single);
    loop {
        match rounds.next() {
            Step::Send(To::Master, pipe) => {
                bound(connection, deadline)?;
                rounds.take(pipe.query(connection)?)?;
            }
            Step::Send(To::Asked(address), pipe) => {
                let asked = node.asked(&address)?;
                let pooled = asked.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let mut other = match pooled {
                    Some(c) => c,
                    None => asked.client.get_connection_with_timeout(left(deadline)?)?,
                };
                bound(&mut other, deadline)?;
                let replies = pipe.query(&mut other)?;
                let mut idle = asked.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < MAX_IDLE_ASKED {
                    idle.push(other);
                }
                drop(idle);
                rounds.take(replies)?;
            }
            Step::Pause => {
                pause_before(deadline)?;
                std::thread::sleep(TRYAGAIN_PAUSE);
            }
            Step::Done(value) => return Ok(value),
        }
    }
}

fn bound(connection: &mut redis::Connection, deadline: Instant) -> RedisResult<()> {
    let left = left(deadline)?;
    connection.set_read_timeout(Some(left))?;
    connection.set_write_timeout(Some(left))
}

/// What is left of the call's time; past `deadline`, a timeout (HTTP 503 "no answer
/// within …", like any other call that ran out of time).
fn left(deadline: Instant) -> RedisResult<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
    }
    Ok(left)
}

/// `Err` when a pause would end past `deadline`: the keys stayed split that long.
fn pause_before(deadline: Instant) -> RedisResult<()> {
    if Instant::now() + TRYAGAIN_PAUSE >= deadline {
        return Err(tryagain_until_deadline());
    }
    Ok(())
}

fn tryagain_until_deadline() -> RedisError {
    RedisError::from((
        ErrorKind::Server(ServerErrorKind::TryAgain),
        "the store's slot is migrating and a command's keys stayed split",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str) -> Cmd {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg("v");
        cmd
    }

    fn wait() -> Cmd {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(1).arg(500);
        cmd
    }

    fn server(line: &str) -> RedisError {
        let mut parts = line.splitn(2, ' ');
        let code = parts.next().unwrap();
        let kind = match code {
            "ASK" => ServerErrorKind::Ask,
            "TRYAGAIN" => ServerErrorKind::TryAgain,
            "MOVED" => ServerErrorKind::Moved,
            _ => ServerErrorKind::ResponseError,
        };
        match parts.next() {
            Some(detail) => {
                RedisError::from((ErrorKind::Server(kind), "server error", detail.to_owned()))
            }
            None => RedisError::from((ErrorKind::Server(kind), "server error")),
        }
    }

    fn ok() -> RedisResult<Value> {
        Ok(Value::Okay)
    }

    /// The commands of a pipeline as sent (`ASKING` shown as such).
    fn names(pipe: &redis::Pipeline) -> Vec<String> {
        pipe.cmd_iter()
            .map(|cmd| {
                cmd.args_iter()
                    .filter_map(|arg| match arg {
                        redis::Arg::Simple(bytes) => Some(String::from_utf8_lossy(bytes).into()),
                        _ => None,
                    })
                    .collect::<Vec<String>>()
                    .join(" ")
            })
            .collect()
    }

    fn send(rounds: &mut Rounds<'_>) -> (To, Vec<String>) {
        match rounds.next() {
            Step::Send(to, pipe) => (to, names(&pipe)),
            Step::Pause => panic!("a pause, not a round"),
            Step::Done(value) => panic!("done: {value:?}"),
        }
    }

    #[test]
    fn only_the_redirected_commands_go_to_the_new_master_each_after_asking() {
        let (a, b, c) = (set("a"), set("b"), wait());
        let mut rounds = Rounds::new(vec![&a, &b, &c], false);
        assert_eq!(
            send(&mut rounds),
            (
                To::Master,
                vec!["SET a v".into(), "SET b v".into(), "WAIT 1 500".into()]
            )
        );
        rounds
            .take(vec![
                Err(server("ASK 4242 127.0.0.1:7002")),
                ok(),
                Ok(Value::Int(1)),
            ])
            .unwrap();
        assert_eq!(
            send(&mut rounds),
            (
                To::Asked("127.0.0.1:7002".into()),
                vec!["ASKING".into(), "SET a v".into(), "WAIT 1 500".into()]
            )
        );
        rounds.take(vec![ok(), ok(), Ok(Value::Int(0))]).unwrap();
        let Step::Done(answer) = rounds.next() else {
            panic!("not done")
        };
        // The answers in the pipeline's order; WAIT's count the fewest of the two rounds.
        assert_eq!(
            answer,
            Value::Array(vec![Value::Okay, Value::Okay, Value::Int(0)])
        );
    }

    #[test]
    fn tryagain_pauses_then_asks_the_old_master_again() {
        let a = set("a");
        let mut rounds = Rounds::new(vec![&a], true);
        send(&mut rounds);
        rounds.take(vec![Err(server("TRYAGAIN"))]).unwrap();
        assert!(matches!(rounds.next(), Step::Pause));
        assert_eq!(send(&mut rounds), (To::Master, vec!["SET a v".into()]));
        rounds.take(vec![Ok(Value::Nil)]).unwrap();
        // A single command's answer is its reply, not an array.
        assert!(matches!(rounds.next(), Step::Done(Value::Nil)));
    }

    #[test]
    fn the_new_master_redirecting_again_or_refusing_ends_the_call() {
        let a = set("a");
        for refusal in [
            "ASK 4242 127.0.0.1:7003",
            "MOVED 4242 127.0.0.1:7003",
            "ERR no",
        ] {
            let mut rounds = Rounds::new(vec![&a], true);
            send(&mut rounds);
            rounds
                .take(vec![Err(server("ASK 4242 127.0.0.1:7002"))])
                .unwrap();
            send(&mut rounds);
            assert!(rounds.take(vec![ok(), Err(server(refusal))]).is_err());
        }
    }

    #[test]
    fn a_wait_not_last_or_in_a_single_command_is_a_command_like_any_other() {
        let a = wait();
        let mut rounds = Rounds::new(vec![&a], true);
        assert_eq!(send(&mut rounds), (To::Master, vec!["WAIT 1 500".into()]));
        rounds.take(vec![Ok(Value::Int(1))]).unwrap();
        assert!(matches!(rounds.next(), Step::Done(Value::Int(1))));
    }

    #[test]
    fn too_few_replies_are_an_error_not_a_panic() {
        let (a, b) = (set("a"), set("b"));
        let mut rounds = Rounds::new(vec![&a, &b], false);
        send(&mut rounds);
        assert!(rounds.take(vec![ok()]).is_err());
    }

    #[test]
    fn out_of_time_before_a_round_is_a_timeout() {
        assert!(left(Instant::now()).unwrap_err().is_timeout());
        assert!(left(Instant::now() + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn past_the_deadline_the_answer_is_tryagain() {
        let e = pause_before(Instant::now()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Server(ServerErrorKind::TryAgain));
        assert!(pause_before(Instant::now() + Duration::from_secs(1)).is_ok());
    }
}
