//! A Jepsen-style test of `mu serve`: concurrent Redis clients on every replica, a nemesis that
//! kills (and once SIGSTOPs) the leader and restarts it, and a linearizability check of the
//! recorded history.
//!
//! Each client thread holds one connection (through the `redis` crate's sync API) to one
//! replica and does a seeded mix of GET, SET (unique values: integers, and now and then a
//! string, so that INCR can find a value that is not an integer) and INCR on a handful of keys.
//! Every operation is recorded with its invocation and completion times and its outcome: done
//! (with the reply), failed for sure (a reply that proves no effect), or unknown (a timeout, a
//! broken connection, `-ERR ... outcome is unknown`: it may or may not have taken effect, at any
//! time after its invocation). A client whose connection breaks records its in-flight operation
//! as unknown and reconnects to the next replica.
//!
//! The history is checked per key (linearizability is compositional: a history is linearizable
//! exactly when each key's sub-history is) against a register with increment, by a Wing–Gong
//! search with Lowe's memoization of (linearized set, state), as in Porcupine. An unknown
//! operation's completion is at infinity, and the model accepts any reply for it: linearizing it
//! last is the same as it never having happened, so "may or may not" needs nothing more. An
//! unknown GET has no effect and is left out.
//!
//! Seeded: `MU_JEPSEN_SEED` overrides the printed default. No pass or fail on timing: deadlines
//! only turn a hang into a failure (and a search step budget turns a search that explodes into
//! one).

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{ConnectionLike, Value};
use runtime_linux::cluster::Cluster;
use runtime_linux::demo::serve_cluster;

// ---- the history -------------------------------------------------------------------------------

/// A value a key holds: SETs write unique integers and now and then unique strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Val {
    Int(i64),
    Str(String),
}

impl Val {
    fn parse(bytes: &[u8]) -> Val {
        let text = String::from_utf8_lossy(bytes).into_owned();
        match text.parse::<i64>() {
            // Only the integer's own spelling is an integer to INCR ("007" is not stored by
            // this test, so any such reply is garbage and must fail the check).
            Ok(n) if n.to_string() == text => Val::Int(n),
            _ => Val::Str(text),
        }
    }

    fn text(&self) -> String {
        match self {
            Val::Int(n) => n.to_string(),
            Val::Str(s) => s.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Get,
    Set(Val),
    Incr,
}

/// A definite reply.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ret {
    /// GET's value (`None`: nil).
    Got(Option<Val>),
    /// SET's `+OK`.
    Ok,
    /// INCR's new value.
    Int(i64),
    /// INCR's `-ERR value is not an integer`: it observed a string and changed nothing.
    NotInteger,
    /// A reply of the wrong shape: no state explains it, so the check fails on it.
    Other(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Done(Ret),
    /// A reply that proves the command had no effect (the reply's text).
    Failed(String),
    /// It may or may not have taken effect (why).
    Unknown(String),
}

/// One operation of the history. Times are nanoseconds since the run started; an unknown
/// operation completes at `u64::MAX`.
#[derive(Clone, Debug)]
struct Event {
    client: usize,
    /// Where the client was connected.
    replica: u8,
    key: usize,
    op: Op,
    invoke: u64,
    complete: u64,
    outcome: Outcome,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let complete = if self.complete == u64::MAX {
            "      ∞".to_string()
        } else {
            format!("{:>10.3}ms", self.complete as f64 / 1e6)
        };
        write!(
            f,
            "[{:>10.3}ms, {complete}] client {} on replica {} k{} {:?} -> {:?}",
            self.invoke as f64 / 1e6,
            self.client,
            self.replica,
            self.key,
            self.op,
            self.outcome
        )
    }
}

// ---- the model ---------------------------------------------------------------------------------

/// The register's state: the key's value, `None` while it has none.
type State = Option<Val>;

/// The state after `op` on `state` answered `ret` (`None`: unknown, any reply), or `None` when
/// `op` cannot answer `ret` in `state`.
fn step(state: &State, op: &Op, ret: Option<&Ret>) -> Option<State> {
    match (op, ret) {
        (Op::Get, None) => Some(state.clone()),
        (Op::Get, Some(Ret::Got(value))) => (value == state).then(|| state.clone()),
        (Op::Set(value), None | Some(Ret::Ok)) => Some(Some(value.clone())),
        (Op::Incr, _) => {
            let (next, reply) = match state {
                None => (Some(Val::Int(1)), Ret::Int(1)),
                Some(Val::Int(n)) => (Some(Val::Int(n + 1)), Ret::Int(n + 1)),
                Some(Val::Str(_)) => (state.clone(), Ret::NotInteger),
            };
            match ret {
                None => Some(next),
                Some(ret) => (*ret == reply).then_some(next),
            }
        }
        _ => None,
    }
}

// ---- the checker -------------------------------------------------------------------------------

/// Why a key's sub-history is not linearizable (or could not be decided).
#[derive(Debug)]
struct Violation {
    /// The operation no linearization got past: its completion came while it could not be
    /// linearized yet, at the deepest point the search reached.
    stuck: usize,
    /// The deepest linearization found: its operations in order.
    prefix: Vec<usize>,
    gave_up: bool,
}

/// Search steps per key at most: a hang becomes a failure.
const STEP_BUDGET: u64 = 50_000_000;

/// Wing–Gong–Lowe: linearize some operation whose invocation is minimal among those left,
/// backtrack when a completion comes before its operation was linearized; (linearized set,
/// state) pairs already explored are not explored again. `events` are one key's operations,
/// without failed ones and without unknown GETs.
fn linearizable(events: &[Event]) -> Result<(), Violation> {
    let n = events.len();
    // Entries: a call and a return per operation, by time; a call before a return at the same
    // time (the operations count as concurrent: the lenient reading).
    let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in events.iter().enumerate() {
        assert!(e.invoke <= e.complete, "{e}");
        assert!(!matches!(e.outcome, Outcome::Failed(_)));
        entries.push((e.invoke, false, i));
        entries.push((e.complete, true, i));
    }
    entries.sort_unstable();
    // A doubly linked list over the entries, with a head sentinel at index `m`.
    let m = entries.len();
    const NIL: usize = usize::MAX;
    let head = m;
    let mut next: Vec<usize> = (1..=m).map(|i| if i < m { i } else { NIL }).collect();
    next.push(if m > 0 { 0 } else { NIL });
    let mut prev: Vec<usize> = (0..m).map(|i| if i == 0 { head } else { i - 1 }).collect();
    prev.push(NIL);
    let mut return_of = vec![NIL; n];
    for (index, &(_, is_return, op)) in entries.iter().enumerate() {
        if is_return {
            return_of[op] = index;
        }
    }
    assert!(return_of.iter().all(|&r| r != NIL));

    let ret_of = |op: usize| match &events[op].outcome {
        Outcome::Done(ret) => Some(ret),
        _ => None,
    };
    let mut linearized = vec![0u64; n.div_ceil(64)];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut deepest: Option<Violation> = None;
    let mut steps = 0u64;
    let mut entry = next[head];
    while next[head] != NIL {
        steps += 1;
        if steps > STEP_BUDGET {
            let mut violation = deepest.unwrap_or(Violation {
                stuck: 0,
                prefix: Vec::new(),
                gave_up: true,
            });
            violation.gave_up = true;
            return Err(violation);
        }
        assert!(entry != NIL, "a call's return follows it in the list");
        let (_, is_return, op) = entries[entry];
        if !is_return {
            if let Some(after) = step(&state, &events[op].op, ret_of(op)) {
                linearized[op / 64] |= 1 << (op % 64);
                if cache.insert((linearized.clone(), after.clone())) {
                    let before = std::mem::replace(&mut state, after);
                    stack.push((entry, before));
                    // Lift the call and its return out of the list.
                    let ret = return_of[op];
                    next[prev[entry]] = next[entry];
                    prev[next[entry]] = prev[entry];
                    next[prev[ret]] = next[ret];
                    if next[ret] != NIL {
                        prev[next[ret]] = prev[ret];
                    }
                    entry = next[head];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            entry = next[entry];
        } else {
            // `op` completed before it was linearized: undo the last choice.
            if deepest
                .as_ref()
                .is_none_or(|d| stack.len() > d.prefix.len())
            {
                deepest = Some(Violation {
                    stuck: op,
                    prefix: stack.iter().map(|&(call, _)| entries[call].2).collect(),
                    gave_up: false,
                });
            }
            let Some((call, before)) = stack.pop() else {
                return Err(deepest.expect("recorded above"));
            };
            state = before;
            let op = entries[call].2;
            linearized[op / 64] &= !(1 << (op % 64));
            // Put the return, then the call, back where they were.
            let ret = return_of[op];
            if next[ret] != NIL {
                prev[next[ret]] = ret;
            }
            next[prev[ret]] = ret;
            prev[next[call]] = call;
            next[prev[call]] = call;
            entry = next[call];
        }
    }
    Ok(())
}

/// The sub-history around a violation: the deepest linearization's last operations, the
/// operation it could not get past, and every operation concurrent with that one.
fn describe(events: &[Event], violation: &Violation) -> String {
    let mut text = String::new();
    if violation.gave_up {
        text.push_str(&format!(
            "the search gave up after {STEP_BUDGET} steps (undecided)\n"
        ));
    }
    let tail = violation.prefix.len().saturating_sub(15);
    text.push_str(&format!(
        "deepest linearization: {} operations; its last ones, with the state after each:\n",
        violation.prefix.len()
    ));
    let mut state = None;
    for (i, &op) in violation.prefix.iter().enumerate() {
        let ret = match &events[op].outcome {
            Outcome::Done(ret) => Some(ret),
            _ => None,
        };
        state = step(&state, &events[op].op, ret).expect("a linearization replays");
        if i >= tail {
            text.push_str(&format!("  {}   => {state:?}\n", events[op]));
        }
    }
    let stuck = &events[violation.stuck];
    text.push_str(&format!(
        "no linearization gets past the completion of:\n  {stuck}\nconcurrent with it (or \
         completed within 1 ms before it):\n"
    ));
    let mut shown = 0;
    for (i, e) in events.iter().enumerate() {
        let overlaps =
            e.invoke <= stuck.complete && e.complete.saturating_add(1_000_000) >= stuck.invoke;
        if overlaps && i != violation.stuck && shown < 60 {
            text.push_str(&format!("  {e}\n"));
            shown += 1;
        }
    }
    text
}

/// Checks `history` key by key; every violation, described.
fn check(history: &[Event], keys: usize) -> Result<(), String> {
    let mut failures = String::new();
    for key in 0..keys {
        let events: Vec<Event> = history
            .iter()
            .filter(|e| e.key == key)
            .filter(|e| {
                let no_effect = matches!(
                    (&e.op, &e.outcome),
                    (_, Outcome::Failed(_)) | (Op::Get, Outcome::Unknown(_))
                );
                !no_effect
            })
            .cloned()
            .collect();
        if let Err(violation) = linearizable(&events) {
            failures.push_str(&format!(
                "key k{key} ({} operations) is not linearizable:\n{}",
                events.len(),
                describe(&events, &violation)
            ));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

// ---- the run -----------------------------------------------------------------------------------

/// A small deterministic PRNG (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

const REPLICAS: u8 = 3;
const CLIENTS: usize = 6;
const KEYS: usize = 4;
/// The store's capacity: far more than the test's keys.
const STORE_KEYS: usize = 64;
/// Nemesis rounds: each takes the leader out and brings it back.
const ROUNDS: usize = 5;
/// A client's wait for a reply or a connection; past it the operation's outcome is unknown.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_SEED: u64 = 0x4A45_5053_454E;

/// Ports below Linux's ephemeral range, unique to this test binary's process.
fn first_port() -> u16 {
    23_000 + (std::process::id() % 300) as u16 * 16
}

fn seed() -> u64 {
    match std::env::var("MU_JEPSEN_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("MU_JEPSEN_SEED={text}: not a number"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

fn connect(port: u16) -> Option<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let conn = client.get_connection_with_timeout(CLIENT_TIMEOUT).ok()?;
    conn.set_read_timeout(Some(CLIENT_TIMEOUT)).ok()?;
    conn.set_write_timeout(Some(CLIENT_TIMEOUT)).ok()?;
    Some(conn)
}

/// The outcome of `op` given the server's reply or the client's error. `Err` means the
/// connection cannot be trusted any more (a reply may still be on its way).
fn outcome(op: &Op, reply: redis::RedisResult<Value>) -> Result<Outcome, Outcome> {
    let value = match reply {
        Ok(value) => value,
        Err(e) => return Err(Outcome::Unknown(format!("client: {e}"))),
    };
    Ok(match (op, value) {
        (_, Value::ServerError(e)) => {
            let text = format!("{} {}", e.code(), e.details().unwrap_or(""));
            if *op == Op::Incr && text.contains("not an integer") {
                Outcome::Done(Ret::NotInteger)
            } else if text.contains("unknown command") || text.contains("wrong number of arg") {
                Outcome::Failed(text)
            } else {
                // "outcome is unknown", "rejected by the replica", anything else: maybe applied.
                Outcome::Unknown(text)
            }
        }
        (Op::Get, Value::Nil) => Outcome::Done(Ret::Got(None)),
        (Op::Get, Value::BulkString(bytes)) => Outcome::Done(Ret::Got(Some(Val::parse(&bytes)))),
        (Op::Set(_), Value::Okay) => Outcome::Done(Ret::Ok),
        (Op::Set(_), Value::SimpleString(s)) if s == "OK" => Outcome::Done(Ret::Ok),
        (Op::Incr, Value::Int(n)) => Outcome::Done(Ret::Int(n)),
        (_, other) => Outcome::Done(Ret::Other(format!("{other:?}"))),
    })
}

/// One client: operations until `stop`, reconnecting to the next replica when its connection
/// breaks.
fn client(id: usize, seed: u64, base: u16, t0: Instant, stop: Arc<AtomicBool>) -> Vec<Event> {
    let mut rng = Rng(seed ^ (id as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut replica = (id % REPLICAS as usize) as u8;
    let mut conn: Option<redis::Connection> = None;
    let mut history = Vec::new();
    let mut sets = 0i64;
    let now = || t0.elapsed().as_nanos() as u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_mut() else {
            conn = connect(base + replica as u16);
            if conn.is_none() {
                replica = (replica + 1) % REPLICAS;
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        };
        let key = rng.below(KEYS as u64) as usize;
        let op = match rng.below(10) {
            0..=3 => Op::Get,
            4..=6 => {
                sets += 1;
                // Unique: a client's own range, far apart so that INCRs do not reach the next.
                let n = (id as i64 + 1) * 1_000_000_000 + sets * 1_000;
                if rng.below(8) == 0 {
                    Op::Set(Val::Str(format!("s{n}")))
                } else {
                    Op::Set(Val::Int(n))
                }
            }
            _ => Op::Incr,
        };
        let key_name = format!("k{key}");
        let mut cmd = match &op {
            Op::Get => redis::cmd("GET"),
            Op::Set(_) => redis::cmd("SET"),
            Op::Incr => redis::cmd("INCR"),
        };
        cmd.arg(&key_name);
        if let Op::Set(value) = &op {
            cmd.arg(value.text());
        }
        let invoke = now();
        let reply = c.req_command(&cmd);
        let complete = now();
        let (outcome, broken) = match outcome(&op, reply) {
            Ok(outcome) => (outcome, false),
            Err(outcome) => (outcome, true),
        };
        let complete = match outcome {
            Outcome::Unknown(_) => u64::MAX,
            _ => complete,
        };
        history.push(Event {
            client: id,
            replica,
            key,
            op,
            invoke,
            complete,
            outcome,
        });
        if broken {
            conn = None;
            replica = (replica + 1 + rng.below(REPLICAS as u64 - 1) as u8) % REPLICAS;
        } else if rng.below(200) == 0 {
            // Now and then to another replica (after a completed operation: nothing unknown),
            // so that clients keep being spread over all of them, the restarted leader too.
            conn = None;
            replica = rng.below(REPLICAS as u64) as u8;
        }
        // A little think time: keeps the history a size the checker decides quickly.
        std::thread::sleep(Duration::from_micros(rng.below(400)));
    }
    history
}

/// Sets its flag when dropped: on the way out, panicking or not.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Waits for a settled cluster, or panics with its state and logs.
fn settle(cluster: &Cluster) -> u8 {
    match cluster.await_settled(Duration::from_secs(30)) {
        Ok(leader) => leader,
        Err(e) => {
            for id in 0..REPLICAS {
                eprintln!("--- replica {id} log ---\n{}", cluster.log_tail(id));
            }
            panic!("{e}");
        }
    }
}

#[test]
fn linearizable_across_leader_kills_and_restarts() {
    let seed = seed();
    let base = first_port();
    eprintln!("jepsen: seed {seed:#x} (MU_JEPSEN_SEED overrides), ports {base}..");
    let exe = Path::new(env!("CARGO_BIN_EXE_mu"));
    let mut cluster = serve_cluster(exe, REPLICAS, base, STORE_KEYS).expect("the cluster starts");
    settle(&cluster);

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Should the nemesis panic, the clients stop too.
    let _stop_clients = StopOnDrop(stop.clone());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let stop = stop.clone();
            std::thread::spawn(move || client(id, seed, base, t0, stop))
        })
        .collect();

    // The nemesis: each round takes the leader out (SIGKILL; SIGSTOP in one round, which the
    // fabric answers by killing the stopped process when a new leader revokes its access),
    // waits, brings it back and waits for the cluster to settle.
    let mut rng = Rng(seed ^ 0x004E_454D_4553_4953);
    let (mut kills, mut stops) = (0, 0);
    for round in 0..ROUNDS {
        std::thread::sleep(rng.millis(300, 900));
        let leader = settle(&cluster);
        let at = t0.elapsed().as_secs_f64() * 1e3;
        if round == 2 {
            cluster.signal(leader, libc::SIGSTOP);
            stops += 1;
            std::thread::sleep(rng.millis(400, 1200));
            let meanwhile = cluster.leader();
            cluster.signal(leader, libc::SIGCONT);
            std::thread::sleep(Duration::from_millis(100));
            let alive = cluster.running(leader);
            eprintln!(
                "jepsen: {at:.0} ms: SIGSTOP leader {leader} (then {meanwhile:?} led), SIGCONT; \
                 still running: {alive}"
            );
            if cluster
                .await_settled(Duration::from_secs(10))
                .is_ok_and(|_| cluster.running(leader))
            {
                continue;
            }
            if cluster.running(leader) {
                cluster.kill(leader);
            }
        } else {
            cluster.kill(leader);
            kills += 1;
            eprintln!("jepsen: {at:.0} ms: killed leader {leader}");
            std::thread::sleep(rng.millis(100, 500));
        }
        cluster.spawn(leader).expect("the replica restarts");
        let leader = settle(&cluster);
        eprintln!(
            "jepsen: {:.0} ms: replica restarted; {leader} leads",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut history: Vec<Event> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("a client thread"))
        .collect();
    // What the front ends say they did (since each one's last start): proposals whose tenure
    // ended and that were proposed again.
    let retried: Vec<String> = (0..REPLICAS)
        .map(|id| {
            let info = connect(base + id as u16)
                .and_then(|mut c| c.req_command(&redis::cmd("INFO")).ok())
                .and_then(|v| match v {
                    Value::BulkString(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                    _ => None,
                })
                .unwrap_or_default();
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or("?")
                    .to_string()
            };
            format!(
                "replica {id}: {} retried, {} commands",
                field("proposals_retried:"),
                field("commands_processed:")
            )
        })
        .collect();
    eprintln!(
        "jepsen: since each replica's last start: {}",
        retried.join("; ")
    );
    cluster.shutdown();
    history.sort_by_key(|e| e.invoke);

    let count = |f: &dyn Fn(&Outcome) -> bool| history.iter().filter(|e| f(&e.outcome)).count();
    let ok = count(&|o| matches!(o, Outcome::Done(_)));
    let failed = count(&|o| matches!(o, Outcome::Failed(_)));
    let unknown = count(&|o| matches!(o, Outcome::Unknown(_)));
    let not_integer = count(&|o| *o == Outcome::Done(Ret::NotInteger));
    let mut reasons: Vec<String> = history
        .iter()
        .filter_map(|e| match &e.outcome {
            Outcome::Unknown(why) | Outcome::Failed(why) => Some(why.clone()),
            _ => None,
        })
        .collect();
    reasons.sort();
    reasons.dedup();
    eprintln!(
        "jepsen: seed {seed:#x}: {} operations: {ok} ok ({not_integer} INCRs of a string), \
         {failed} failed, {unknown} unknown; {kills} leader kills, {stops} SIGSTOPs",
        history.len()
    );
    for reason in reasons.iter().take(10) {
        eprintln!("jepsen: not ok: {reason}");
    }
    assert!(ok > 0, "no operation succeeded");
    let started = Instant::now();
    if let Err(failures) = check(&history, KEYS) {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("jepsen-{seed:#x}.txt"));
        let all: String = history.iter().map(|e| format!("{e}\n")).collect();
        let _ = std::fs::write(&path, all);
        panic!(
            "seed {seed:#x}: not linearizable (whole history in {}):\n{failures}",
            path.display()
        );
    }
    eprintln!(
        "jepsen: linearizable, every key ({:.0} ms to check)",
        started.elapsed().as_secs_f64() * 1e3
    );
}

// ---- the checker's own tests -------------------------------------------------------------------

fn ev(client: usize, op: Op, invoke: u64, complete: Option<u64>, ret: Option<Ret>) -> Event {
    Event {
        client,
        replica: 0,
        key: 0,
        op,
        invoke,
        complete: complete.unwrap_or(u64::MAX),
        outcome: match ret {
            Some(ret) => Outcome::Done(ret),
            None => Outcome::Unknown("test".into()),
        },
    }
}

fn int(n: i64) -> Val {
    Val::Int(n)
}

#[test]
fn the_checker_rejects_a_stale_read_after_an_acknowledged_write() {
    let history = [
        ev(0, Op::Set(int(1)), 0, Some(10), Some(Ret::Ok)),
        ev(0, Op::Set(int(2)), 20, Some(30), Some(Ret::Ok)),
        // Invoked after SET 2 was acknowledged, yet reads 1.
        ev(1, Op::Get, 40, Some(50), Some(Ret::Got(Some(int(1))))),
    ];
    let violation = linearizable(&history).expect_err("a stale read");
    assert!(!violation.gave_up);
    assert_eq!(violation.stuck, 2, "the stale GET is where it stops");
    let text = describe(&history, &violation);
    assert!(text.contains("Got(Some(Int(1)))"), "{text}");
    // The same read concurrent with the second write is fine.
    let concurrent = [
        history[0].clone(),
        history[1].clone(),
        ev(1, Op::Get, 25, Some(50), Some(Ret::Got(Some(int(1))))),
    ];
    linearizable(&concurrent).expect("a read concurrent with a write may see the old value");
}

#[test]
fn the_checker_rejects_an_increment_applied_twice_or_lost() {
    let twice = [
        ev(0, Op::Incr, 0, Some(10), Some(Ret::Int(1))),
        ev(1, Op::Incr, 20, Some(30), Some(Ret::Int(3))),
    ];
    assert!(
        linearizable(&twice).is_err(),
        "an acknowledged INCR skipped"
    );
    let lost = [
        ev(0, Op::Incr, 0, Some(10), Some(Ret::Int(1))),
        ev(1, Op::Incr, 20, Some(30), Some(Ret::Int(1))),
    ];
    assert!(linearizable(&lost).is_err(), "an acknowledged INCR lost");
    // Concurrent increments answered 2 then 1 in real time: either order is fine.
    let concurrent = [
        ev(0, Op::Incr, 0, Some(30), Some(Ret::Int(2))),
        ev(1, Op::Incr, 5, Some(20), Some(Ret::Int(1))),
        ev(2, Op::Get, 40, Some(50), Some(Ret::Got(Some(int(2))))),
    ];
    linearizable(&concurrent).expect("concurrent INCRs");
    // An INCR that observed a string, then the string read back.
    let string = [
        ev(0, Op::Set(Val::Str("s".into())), 0, Some(10), Some(Ret::Ok)),
        ev(0, Op::Incr, 20, Some(30), Some(Ret::NotInteger)),
        ev(
            0,
            Op::Get,
            40,
            Some(50),
            Some(Ret::Got(Some(Val::Str("s".into())))),
        ),
    ];
    linearizable(&string).expect("INCR of a string changes nothing");
    let not_string = [
        ev(0, Op::Set(int(7)), 0, Some(10), Some(Ret::Ok)),
        ev(0, Op::Incr, 20, Some(30), Some(Ret::NotInteger)),
    ];
    assert!(
        linearizable(&not_string).is_err(),
        "INCR of an integer refused"
    );
}

#[test]
fn an_unknown_write_may_or_may_not_take_effect_but_only_once_and_after_its_invocation() {
    let unknown = ev(0, Op::Set(int(5)), 10, None, None);
    let read = |value: Option<i64>, at: u64| {
        ev(
            1,
            Op::Get,
            at,
            Some(at + 5),
            Some(Ret::Got(value.map(Val::Int))),
        )
    };
    // Seen, not seen, seen late: each fine.
    linearizable(&[unknown.clone(), read(Some(5), 100)]).expect("took effect");
    linearizable(&[unknown.clone(), read(None, 100)]).expect("did not take effect (yet)");
    linearizable(&[unknown.clone(), read(None, 100), read(Some(5), 200)])
        .expect("took effect late");
    // Not before it was invoked.
    assert!(linearizable(&[read(Some(5), 0), unknown.clone()]).is_err());
    // Not twice: seen, overwritten, seen again.
    let history = [
        unknown.clone(),
        read(Some(5), 100),
        ev(2, Op::Set(int(6)), 150, Some(160), Some(Ret::Ok)),
        read(Some(5), 200),
    ];
    assert!(
        linearizable(&history).is_err(),
        "an unknown write applied twice"
    );
    // An unknown INCR counts at most once.
    let incrs = [
        ev(0, Op::Incr, 0, None, None),
        read(Some(1), 100),
        read(Some(1), 200),
    ];
    linearizable(&incrs).expect("one unknown INCR applied");
    let twice = [ev(0, Op::Incr, 0, None, None), read(Some(2), 100)];
    assert!(
        linearizable(&twice).is_err(),
        "one unknown INCR applied twice"
    );
}

#[test]
fn the_check_is_per_key_and_reports_the_offending_key() {
    let mut history = vec![
        ev(0, Op::Set(int(1)), 0, Some(10), Some(Ret::Ok)),
        ev(1, Op::Get, 20, Some(30), Some(Ret::Got(Some(int(1))))),
    ];
    // Key 1 never held 1: the read on key 1 is not explained by key 0's write.
    let mut other = history[1].clone();
    other.key = 1;
    history.push(other);
    // A failed write and an unknown read are left out.
    let mut failed = ev(2, Op::Set(int(9)), 0, Some(5), None);
    failed.outcome = Outcome::Failed("-ERR unknown command".into());
    history.push(failed);
    history.push(ev(3, Op::Get, 0, None, None));
    let failures = check(&history, 2).expect_err("key 1 read a value never written to it");
    assert!(failures.contains("key k1"), "{failures}");
    assert!(!failures.contains("key k0"), "{failures}");
}
