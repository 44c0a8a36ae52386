//! A cluster of real replica processes on one host, and a client that drives it: what `mu demo`,
//! the process fault tests and the fail-over benchmark are made of.
//!
//! Each replica is a `mu replica --config FILE --id N` child process over the shared-memory
//! fabric. The client talks to every replica through its client port (one client per cluster)
//! within an exactly-once session (`mu_apps::session`), keeps a window of commands in flight at
//! the leader, re-sends what comes back undecided or went to a replica that died (the session
//! answers from its cache one that had been decided), and records every command reported
//! committed with its position. [`Cluster::verify`] then checks, on every live replica, that
//! each of those commands is in the journal at its position (nothing committed is lost), that
//! no command is in it twice (nothing applied twice) and that the state digests are identical. [`kill_leader`] times a
//! fail-over, and splits it with the take-over timestamps the new leader published in its port.
//!
//! # Invariants
//! - A replica id has at most one child process at a time; a killed child is reaped before its
//!   replacement starts (not at the kill: the kernel takes milliseconds to tear a replica's locked
//!   memory down, and a client timing a fail-over must not wait for that).
//! - The client never has more than `window` commands in flight, and each in-flight command is
//!   tracked by the port it went to, so a killed leader's commands are re-sent elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use board_configs::Deployment;
use hdrhistogram::Histogram;
use mu_apps::session::{self, Refusal, Reply, Session, SessionError};

use crate::clock::monotonic_ns;
use crate::kv;
use crate::port::{Outcome, Port, Response, Stat, JOURNAL_POSITIONS};

/// A failure of the harness or of a check, with what was seen.
#[derive(Debug)]
pub struct ClusterError(pub String);

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

fn fail<T>(message: impl Into<String>) -> Result<T, ClusterError> {
    Err(ClusterError(message.into()))
}

/// The replica processes of one deployment.
pub struct Cluster {
    exe: PathBuf,
    dir: PathBuf,
    config_path: PathBuf,
    /// What every `mu replica` is started with beyond its config and id (its store's keys,
    /// its application, its network front end).
    replica_args: Vec<String>,
    replicas: u8,
    children: Vec<Option<Child>>,
    /// Killed children, by id, until reaped.
    killed: Vec<Option<Child>>,
    ports: Vec<Option<Port>>,
    /// When processes were last looked up, and which ran.
    running_cache: std::cell::Cell<(Instant, u8)>,
}

impl Cluster {
    /// Writes `deployment` to `<shm dir>/cluster.toml` and starts every replica with `exe`.
    pub fn start(exe: &Path, deployment: &Deployment) -> Result<Cluster, ClusterError> {
        Cluster::start_with_keys(exe, deployment, crate::node::KV_KEYS)
    }

    /// [`Cluster::start`], with stores of `kv_keys` keys.
    pub fn start_with_keys(
        exe: &Path,
        deployment: &Deployment,
        kv_keys: usize,
    ) -> Result<Cluster, ClusterError> {
        let args = ["--kv-keys".to_string(), kv_keys.to_string()];
        Cluster::start_with_args(exe, deployment, &args)
    }

    /// [`Cluster::start`], every `mu replica` with `replica_args` beyond its config and id.
    pub fn start_with_args(
        exe: &Path,
        deployment: &Deployment,
        replica_args: &[String],
    ) -> Result<Cluster, ClusterError> {
        let dir = match deployment.replicas.first().map(|r| &r.host) {
            // Verbs replicas on one host keep their client ports in one directory too.
            Some(board_configs::Host::Linux(host)) => host.fabric.dir().to_path_buf(),
            _ => return fail("the cluster harness runs Linux deployments"),
        };
        crate::shm::RegionDir::open(&dir).map_err(|e| ClusterError(e.to_string()))?;
        let config_path = dir.join("cluster.toml");
        fs::write(&config_path, deployment.to_toml())
            .map_err(|e| ClusterError(format!("{}: {e}", config_path.display())))?;
        let replicas = deployment.cluster.config.replica_count;
        let mut cluster = Cluster {
            exe: exe.to_path_buf(),
            dir,
            config_path,
            replica_args: replica_args.to_vec(),
            replicas,
            children: (0..replicas).map(|_| None).collect(),
            killed: (0..replicas).map(|_| None).collect(),
            ports: (0..replicas).map(|_| None).collect(),
            running_cache: std::cell::Cell::new((Instant::now(), 0)),
        };
        for id in 0..replicas {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// The cluster's shared-memory directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replicas in the cluster.
    pub fn replicas(&self) -> u8 {
        self.replicas
    }

    /// Starts (or restarts) replica `id` and waits until its port serves.
    pub fn spawn(&mut self, id: u8) -> Result<(), ClusterError> {
        assert!(self.children[id as usize].is_none(), "one process per id");
        self.reap_killed(id);
        let log = self.dir.join(format!("replica-{id}.log"));
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| ClusterError(format!("{}: {e}", log.display())))?;
        let child = Command::new(&self.exe)
            .arg("replica")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--id")
            .arg(id.to_string())
            .args(&self.replica_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| ClusterError(format!("cannot start {}: {e}", self.exe.display())))?;
        let pid = child.id() as u64;
        self.children[id as usize] = Some(child);
        self.forget_running();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(port) = Port::attach(&self.dir, id) {
                if port.get(Stat::Pid) == pid && port.get(Stat::Ready) == 1 {
                    self.ports[id as usize] = Some(port);
                    return Ok(());
                }
            }
            if let Some(status) = self.children[id as usize]
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.children[id as usize] = None;
                return fail(format!(
                    "replica {id} exited at start ({status}):\n{}",
                    self.log_tail(id)
                ));
            }
            if Instant::now() > deadline {
                return fail(format!(
                    "replica {id} did not start:\n{}",
                    self.log_tail(id)
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The last lines replica `id` wrote to its log.
    pub fn log_tail(&self, id: u8) -> String {
        let text = self.log(id);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Everything replica `id`'s processes wrote to stderr.
    pub fn log(&self, id: u8) -> String {
        fs::read_to_string(self.dir.join(format!("replica-{id}.log"))).unwrap_or_default()
    }

    /// The process id of replica `id`, while it runs.
    pub fn pid(&self, id: u8) -> Option<u32> {
        self.children[id as usize].as_ref().map(Child::id)
    }

    /// Sends `signal` to replica `id`; returns `CLOCK_MONOTONIC` ns just before it was sent.
    pub fn signal(&self, id: u8, signal: i32) -> Option<u64> {
        let pid = self.pid(id)?;
        let at = monotonic_ns();
        // SAFETY: kill(2) takes two integers and touches no memory; `pid` is our own child,
        // not yet reaped (`children` drops a child as soon as `try_wait` reaps it), so no other
        // process can have its pid.
        unsafe { libc::kill(pid as i32, signal) };
        Some(at)
    }

    /// SIGKILLs replica `id`; returns the time of the kill. The process is reaped before the
    /// id is spawned again, or at shutdown.
    pub fn kill(&mut self, id: u8) -> Option<u64> {
        let at = self.signal(id, libc::SIGKILL)?;
        self.killed[id as usize] = self.children[id as usize].take();
        self.ports[id as usize] = None;
        self.forget_running();
        Some(at)
    }

    fn reap_killed(&mut self, id: u8) {
        if let Some(mut killed) = self.killed[id as usize].take() {
            let _ = killed.wait();
        }
    }

    fn forget_running(&self) {
        let now = Instant::now();
        let long_ago = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        self.running_cache.set((long_ago, 0));
    }

    /// Whether replica `id`'s process is still there (not reaped, not exited).
    pub fn running(&mut self, id: u8) -> bool {
        match self.children[id as usize].as_mut() {
            Some(child) => match child.try_wait() {
                Ok(None) => true,
                _ => {
                    self.children[id as usize] = None;
                    self.ports[id as usize] = None;
                    false
                }
            },
            None => false,
        }
    }

    /// Replica `id`'s port, while it runs.
    pub fn port(&self, id: u8) -> Option<&Port> {
        self.ports[id as usize].as_ref()
    }

    /// Live replica ids: started, and their process still runs (a replica the fabric fenced by
    /// killing it is not live even before it is reaped). Processes are looked up in `/proc` at
    /// most once a millisecond: the client asks on every round.
    pub fn live(&self) -> Vec<u8> {
        let (checked_at, mut running) = self.running_cache.get();
        if checked_at.elapsed() > Duration::from_millis(1) {
            running = (0..self.replicas)
                .filter(|&id| self.pid(id).is_some_and(crate::procfs::is_running))
                .fold(0u8, |mask, id| mask | 1 << id);
            self.running_cache.set((Instant::now(), running));
        }
        (0..self.replicas)
            .filter(|&id| self.ports[id as usize].is_some() && running & (1 << id) != 0)
            .collect()
    }

    /// The replica that leads on the fast path. When more than one says so (a stopped old
    /// leader's port still shows what it showed when it stopped), the one most live replicas
    /// consider leader.
    pub fn leader(&self) -> Option<u8> {
        let live = self.live();
        let votes = |id: u8| {
            live.iter()
                .filter(|&&v| self.port(v).is_some_and(|p| p.leader_view() == Some(id)))
                .count()
        };
        let mut leaders: Vec<(usize, u8)> = live
            .iter()
            .filter(|&&id| self.port(id).is_some_and(|p| p.get(Stat::FastPath) == 1))
            .map(|&id| (votes(id), id))
            .collect();
        leaders.sort_unstable();
        match leaders.as_slice() {
            [] => None,
            [(_, only)] => Some(*only),
            [.., (second, _), (best, id)] => (best > second).then_some(*id),
        }
    }

    /// The applied position of the replica that leads on the fast path; 0 while none does.
    pub fn leader_applied(&self) -> u64 {
        self.leader()
            .and_then(|l| self.port(l))
            .map_or(0, |p| p.get(Stat::Applied))
    }

    /// Waits up to `limit` until the cluster is settled: one leader on the fast path, every live
    /// replica considering it leader and every live replica alive, and every live replica
    /// caught up with the leader's applied position and a voter (a restarted replica admitted).
    pub fn await_settled(&self, limit: Duration) -> Result<u8, ClusterError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(leader) = self.leader() {
                let live = self.live();
                let mask = live.iter().fold(0u64, |m, &id| m | 1 << id);
                let applied = self.port(leader).map_or(0, |p| p.get(Stat::Applied));
                let settled = live.iter().all(|&id| {
                    self.port(id).is_some_and(|p| {
                        p.leader_view() == Some(leader)
                            && p.get(Stat::Alive) & mask == mask
                            && p.get(Stat::Applied) >= applied
                            && p.get(Stat::Voter) == 1
                    })
                });
                if settled {
                    return Ok(leader);
                }
            }
            if Instant::now() > deadline {
                return fail(format!("not settled within {limit:?}: {}", self.describe()));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// One line per replica: role and progress.
    pub fn describe(&self) -> String {
        (0..self.replicas)
            .map(|id| match self.port(id) {
                Some(p) => format!(
                    "replica {id}: leading {} fast {} applied {} queued {} waiting {} view {} alive {:#b} voter {} tenures {} halted {} catching up {} installs {} donating to {}",
                    p.get(Stat::Leading),
                    p.get(Stat::FastPath),
                    p.get(Stat::Applied),
                    p.get(Stat::Queued),
                    p.requests_waiting(),
                    p.get(Stat::LeaderView),
                    p.get(Stat::Alive),
                    p.get(Stat::Voter),
                    p.get(Stat::Tenures),
                    p.get(Stat::Halted),
                    p.get(Stat::CatchingUp),
                    p.get(Stat::Installs),
                    p.get(Stat::DonatingTo)
                ),
                None => format!("replica {id}: down"),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Asks replica `id` for its propose-to-commit histogram (in cycles).
    pub fn latency(&self, id: u8) -> Result<Histogram<u64>, ClusterError> {
        let port = self
            .port(id)
            .ok_or_else(|| ClusterError(format!("replica {id} is down")))?;
        let request = port.get(Stat::DumpRequest) + 1;
        port.set(Stat::DumpRequest, request);
        let deadline = Instant::now() + Duration::from_secs(5);
        while port.get(Stat::Dumped) != request {
            if Instant::now() > deadline {
                return fail(format!("replica {id} did not write its latency histogram"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let bytes = fs::read(crate::node::latency_path(&self.dir, id))
            .map_err(|e| ClusterError(e.to_string()))?;
        hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| ClusterError(format!("latency histogram: {e:?}")))
    }

    /// Waits until every live replica applied the same prefix, then checks that their state
    /// digests agree, that every command in `committed` is in every live replica's journal
    /// at its position, and that no journal holds a command id twice (nothing was applied
    /// twice). Returns the digest and the applied position.
    pub fn verify(
        &self,
        committed: &[(u64, u64)],
        limit: Duration,
    ) -> Result<(u64, u64), ClusterError> {
        let live = self.live();
        if live.is_empty() {
            return fail("no live replica to verify");
        }
        let deadline = Instant::now() + limit;
        let highest = committed.iter().map(|&(p, _)| p + 1).max().unwrap_or(0);
        let (digest, applied) = loop {
            let pairs: Vec<(u64, u64)> = live
                .iter()
                .map(|&id| self.port(id).map_or((0, 0), Port::digest))
                .collect();
            let settled = pairs.iter().all(|p| p.1 == pairs[0].1 && p.1 >= highest);
            if settled {
                if pairs.iter().any(|p| p.0 != pairs[0].0) {
                    return fail(format!(
                        "replicas {live:?} applied {} commands each but their states differ: {pairs:x?}",
                        pairs[0].1
                    ));
                }
                break pairs[0];
            }
            if Instant::now() > deadline {
                return fail(format!(
                    "replicas did not converge (need position {highest}): {pairs:?}; {}",
                    self.describe()
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        for &id in &live {
            let port = self.port(id).expect("live");
            // A replica that installed a snapshot applied only the positions after it; the
            // equal digests above cover the rest.
            let installed_at = port.get(Stat::InstalledAt);
            for &(position, command) in committed {
                if position + JOURNAL_POSITIONS <= applied || position < installed_at {
                    continue; // The journal wrapped past it, or this life never applied it.
                }
                let found = port.journal_at(position);
                if found != command {
                    return fail(format!(
                        "lost: command {command:#x} was reported committed at position {position}, \
                         but replica {id} applied {found:#x} there"
                    ));
                }
            }
            let first = installed_at.max(applied.saturating_sub(JOURNAL_POSITIONS));
            let journal = (first..applied).map(|position| (position, port.journal_at(position)));
            if let Some((command, at)) = applied_twice(journal) {
                return fail(format!(
                    "applied twice: replica {id} applied command {command:#x} at positions \
                     {at:?}"
                ));
            }
        }
        Ok((digest, applied))
    }

    /// Stops every replica (SIGTERM, then SIGKILL after a grace period) and removes the
    /// directory.
    /// Set `MU_KEEP_FILES=1` to keep the directory (replica logs, region files) for a look.
    pub fn shutdown(mut self) {
        self.stop_all();
        if std::env::var_os("MU_KEEP_FILES").is_some() {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn stop_all(&mut self) {
        for id in 0..self.replicas {
            self.signal(id, libc::SIGCONT);
            self.signal(id, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for id in 0..self.replicas {
            if let Some(mut child) = self.children[id as usize].take() {
                while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            self.ports[id as usize] = None;
            self.reap_killed(id);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// When the new leader passed each step of its take-over (`CLOCK_MONOTONIC` ns), as its client
/// port published them (`Stat::ElectedNs`, `TenureNs`, `FastPathNs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marks {
    /// Its background plane began to consider itself leader. In that same poll it started a
    /// tenure: it took write access to its own log (revoking the old leader's) and asked every
    /// peer for theirs.
    pub elected_at: u64,
    /// Its replication plane took that tenure up (at its next poll) and began the prepare.
    pub tenure_at: u64,
    /// The tenure reached the fast path: a majority granted their logs, and the survey,
    /// catch-up, min-proposal and adoption were done.
    pub fast_path_at: u64,
}

impl Marks {
    /// The marks a port shows for a fail-over from `killed_at` to `committed_at`, or `None` when
    /// they do not date that take-over: one is missing (0), or they are out of order, which is
    /// what a stale mark of an earlier tenure, or one of a later tenure, looks like.
    pub fn dating(port: &Port, killed_at: u64, committed_at: u64) -> Option<Marks> {
        Marks {
            elected_at: port.get(Stat::ElectedNs),
            tenure_at: port.get(Stat::TenureNs),
            fast_path_at: port.get(Stat::FastPathNs),
        }
        .within(killed_at, committed_at)
    }

    fn within(self, killed_at: u64, committed_at: u64) -> Option<Marks> {
        let chain = [
            killed_at,
            self.elected_at,
            self.tenure_at,
            self.fast_path_at,
            committed_at,
        ];
        (self.elected_at != 0 && chain.windows(2).all(|w| w[0] <= w[1])).then_some(self)
    }
}

/// A fail-over as the client saw it.
#[derive(Clone, Copy, Debug)]
pub struct FailOver {
    /// The replica killed.
    pub killed: u8,
    /// `CLOCK_MONOTONIC` ns just before the SIGKILL.
    pub killed_at: u64,
    /// The replica that committed first afterwards.
    pub new_leader: u8,
    /// When it applied that command.
    pub committed_at: u64,
    /// The new leader's take-over, when its port dated it consistently.
    pub marks: Option<Marks>,
}

/// The segments below split [`FailOver::nanos`]: `detection + switch_and_prepare + first_commit`
/// is the total, and `switch_and_prepare` is `handoff + prepare`. Each is `None` when the marks
/// are.
impl FailOver {
    /// From the kill to the first commit of the new leader, in ns.
    pub fn nanos(&self) -> u64 {
        self.committed_at.saturating_sub(self.killed_at)
    }

    /// Kill -> elected, in ns: the new leader's failure detector saw the killed leader's
    /// heartbeat stop and its score fall below the threshold, and the election picked it.
    pub fn detection(&self) -> Option<u64> {
        self.marks.map(|m| m.elected_at - self.killed_at)
    }

    /// Elected -> fast path, in ns: [`handoff`](Self::handoff) then [`prepare`](Self::prepare).
    pub fn switch_and_prepare(&self) -> Option<u64> {
        self.marks.map(|m| m.fast_path_at - m.elected_at)
    }

    /// Elected -> tenure start, in ns: the background plane starts a tenure in the poll that
    /// elected it; the replication plane takes it up at its next poll.
    pub fn handoff(&self) -> Option<u64> {
        self.marks.map(|m| m.tenure_at - m.elected_at)
    }

    /// Tenure start -> fast path, in ns: the permission switch at the followers (each one's
    /// background plane serves the request only once it, too, considers the new leader leader;
    /// it revokes the old leader, grants, acks) overlapped with the prepare, whose survey
    /// waits for a majority of grants.
    pub fn prepare(&self) -> Option<u64> {
        self.marks.map(|m| m.fast_path_at - m.tenure_at)
    }

    /// Fast path -> first commit, in ns: the client notices the new leader (or its probe is
    /// already queued there), the command is replicated to a majority and applied.
    pub fn first_commit(&self) -> Option<u64> {
        self.marks.map(|m| self.committed_at - m.fast_path_at)
    }
}

/// The first command id found at two positions of a journal, with both positions. Positions
/// that name no command (0: never written; `u64::MAX`: nothing applied there) are skipped.
fn applied_twice(journal: impl Iterator<Item = (u64, u64)>) -> Option<(u64, [u64; 2])> {
    let mut seen = HashMap::new();
    for (position, command) in journal {
        if command == 0 || command == u64::MAX {
            continue;
        }
        if let Some(first) = seen.insert(command, position) {
            return Some((command, [first, position]));
        }
    }
    None
}

/// How long [`kill_leader`] waits for the new leader's `ElectedNs` and `FastPathNs` after its
/// first commit: each is written just after the poll it dates, and the poll that reached the
/// fast path may already have committed (a descheduled thread can make that late).
const ELECTED_GRACE: Duration = Duration::from_millis(5);

/// How the fail-over benchmark takes the leader out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL: the process dies, and the kernel says so.
    Kill,
    /// SIGSTOP: the process hangs, alive to the kernel; only its silence tells. It is killed
    /// once another replica committed.
    Stop,
}

impl Fault {
    /// The signal's name.
    pub fn signal_name(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILL",
            Fault::Stop => "SIGSTOP",
        }
    }
}

/// Takes `leader` out by `fault` while `client` keeps sending, and waits up to `limit` for the
/// first command another replica commits. A stopped leader is killed afterwards.
pub fn kill_leader(
    cluster: &mut Cluster,
    client: &mut Client,
    leader: u8,
    fault: Fault,
    limit: Duration,
) -> Result<FailOver, ClusterError> {
    let killed_at = match fault {
        Fault::Kill => cluster.kill(leader),
        Fault::Stop => cluster.signal(leader, libc::SIGSTOP),
    }
    .ok_or_else(|| ClusterError(format!("replica {leader} is not running")))?;
    client.watch_from(killed_at);
    client.watch_excluding(leader);
    let deadline = Instant::now() + limit;
    loop {
        client.pump(cluster);
        if let Some((new_leader, committed_at)) = client.first_commit_after {
            let marks = cluster.port(new_leader).and_then(|port| {
                let grace = Instant::now() + ELECTED_GRACE;
                let dated = |p: &Port| p.get(Stat::ElectedNs) != 0 && p.get(Stat::FastPathNs) != 0;
                while !dated(port) && Instant::now() < grace {
                    std::thread::yield_now();
                }
                Marks::dating(port, killed_at, committed_at)
            });
            if fault == Fault::Stop {
                cluster.kill(leader);
            }
            return Ok(FailOver {
                killed: leader,
                killed_at,
                new_leader,
                committed_at,
                marks,
            });
        }
        if Instant::now() > deadline {
            if fault == Fault::Stop {
                cluster.kill(leader);
            }
            return fail(format!(
                "nothing committed within {limit:?} after replica {leader} was taken out by \
                 {}: {}",
                fault.signal_name(),
                cluster.describe()
            ));
        }
    }
}

/// Keeps `client` committing until the leader applied `positions` more positions (the log
/// wraps once every `slot_count` of them); gives up after `limit`. Returns the commands
/// committed meanwhile.
pub fn commit_positions(
    cluster: &Cluster,
    client: &mut Client,
    positions: u64,
    limit: Duration,
) -> Result<u64, ClusterError> {
    let from = cluster.leader_applied();
    let committed = client.committed_count();
    let deadline = Instant::now() + limit;
    while cluster.leader_applied() < from + positions {
        client.pump(cluster);
        if Instant::now() > deadline {
            return fail(format!(
                "{} of {positions} positions applied within {limit:?}: {}",
                cluster.leader_applied().saturating_sub(from),
                cluster.describe()
            ));
        }
    }
    Ok(client.committed_count() - committed)
}

/// How a restarted replica rejoined ([`restart_and_rejoin`]); times in ns from its restart.
#[derive(Clone, Copy, Debug)]
pub struct Rejoin {
    /// The replica.
    pub id: u8,
    /// Snapshots it installed (0: the logs still held everything it needed).
    pub installs: u64,
    /// The position the last snapshot covered, and its bytes.
    pub installed_at: u64,
    /// See `installed_at`.
    pub bytes: u64,
    /// When it began and finished installing the last snapshot.
    pub install_began: u64,
    /// See `install_began`.
    pub install_ended: u64,
    /// When a leader admitted it as a voter.
    pub voter: u64,
    /// When it had applied as far as the leader had when it restarted.
    pub caught_up: u64,
    /// The leader's applied position when it restarted.
    pub leader_applied: u64,
    /// Commands the client committed from the restart until it was a voter.
    pub committed_meanwhile: u64,
    /// Commands the client committed while it saw the replica install a snapshot, and for how
    /// long it saw that (ns): the leader's throughput while the transfer ran.
    pub install_commits: u64,
    /// See `install_commits`.
    pub install_seen_ns: u64,
}

impl Rejoin {
    /// Commands per second the client committed while it saw the install run.
    pub fn throughput_during_install(&self) -> Option<f64> {
        (self.install_seen_ns > 0)
            .then(|| self.install_commits as f64 * 1e9 / self.install_seen_ns as f64)
    }

    /// Bytes per second of the last install.
    pub fn install_rate(&self) -> f64 {
        let ns = self.install_ended.saturating_sub(self.install_began).max(1);
        self.bytes as f64 * 1e9 / ns as f64
    }

    /// One line for a person.
    pub fn describe(&self) -> String {
        let ms = |ns: u64| ns as f64 / 1e6;
        let install = if self.installs == 0 {
            "no snapshot needed (the logs still held every position)".to_string()
        } else {
            format!(
                "installed {} (the last: {} bytes covering positions below {}, {:.1} ms, \
                 {:.0} MB/s, began {:.1} ms after the restart)",
                match self.installs {
                    1 => "a snapshot".to_string(),
                    n => format!("{n} snapshots, lapped again after the first"),
                },
                self.bytes,
                self.installed_at,
                ms(self.install_ended.saturating_sub(self.install_began)),
                self.install_rate() / 1e6,
                ms(self.install_began)
            )
        };
        format!(
            "replica {} {install}; caught up with position {} after {:.1} ms; a voter after \
             {:.1} ms; {} commands committed meanwhile",
            self.id,
            self.leader_applied,
            ms(self.caught_up),
            ms(self.voter),
            self.committed_meanwhile
        )
    }
}

/// Restarts replica `id` (down) with a fresh region while `client` keeps committing, and waits
/// up to `limit` until it is a voter caught up with where the leader stood at the restart.
pub fn restart_and_rejoin(
    cluster: &mut Cluster,
    client: &mut Client,
    id: u8,
    limit: Duration,
) -> Result<Rejoin, ClusterError> {
    let leader_applied = cluster.leader_applied();
    let committed = client.committed_count();
    let restarted_at = monotonic_ns();
    cluster.spawn(id)?;
    let deadline = Instant::now() + limit;
    let (mut voter, mut caught_up) = (None, None);
    // (ns, commits) when the client first saw the install run, and how many ran while it did.
    let (mut install_seen, mut install_commits, mut install_seen_ns) = (None, 0, 0);
    loop {
        client.pump(cluster);
        let port = cluster
            .port(id)
            .ok_or_else(|| ClusterError(format!("replica {id} went down while rejoining")))?;
        let since = || monotonic_ns() - restarted_at;
        match (port.get(Stat::CatchingUp) == 1, install_seen) {
            (true, None) => install_seen = Some((monotonic_ns(), client.committed_count())),
            (false, Some((at, commits))) => {
                install_commits += client.committed_count() - commits;
                install_seen_ns += monotonic_ns() - at;
                install_seen = None;
            }
            _ => {}
        }
        if caught_up.is_none() && port.get(Stat::Applied) >= leader_applied {
            caught_up = Some(since());
        }
        if voter.is_none() && port.get(Stat::Voter) == 1 {
            voter = Some((since(), client.committed_count() - committed));
        }
        if let (Some((voter, committed_meanwhile)), Some(caught_up)) = (voter, caught_up) {
            let relative = |stat| port.get(stat).saturating_sub(restarted_at);
            return Ok(Rejoin {
                id,
                installs: port.get(Stat::Installs),
                installed_at: port.get(Stat::InstalledAt),
                bytes: port.get(Stat::InstalledBytes),
                install_began: relative(Stat::InstallBeganNs),
                install_ended: relative(Stat::InstallEndedNs),
                voter,
                caught_up,
                leader_applied,
                committed_meanwhile,
                install_commits,
                install_seen_ns,
            });
        }
        if Instant::now() > deadline || !cluster.running(id) {
            return fail(format!(
                "replica {id} did not rejoin within {limit:?} (running: {}): {}\n{}",
                cluster.running(id),
                cluster.describe(),
                cluster.log_tail(id)
            ));
        }
    }
}

/// A request the client sent and has not heard back about.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    replica: u8,
    /// The replica's incarnation when it was sent: a restarted replica never answers it.
    incarnation: u64,
    /// The put's command id, also the request's sequence number in the port
    /// ([`REGISTER_ID`] for the session's registration).
    id: u64,
    /// Its number in the session; `None` for the registration.
    seq: Option<u64>,
    sent_ns: u64,
}

/// The port sequence number of a session registration (command ids are never 0).
const REGISTER_ID: u64 = 0;

/// What the client saw.
pub struct Client {
    client_id: u64,
    payload: Vec<u8>,
    keys: u64,
    window: usize,
    next: u64,
    /// Its exactly-once session, once registered.
    session: Option<Session>,
    /// The requests of the session not yet settled: sequence number to command id.
    unsettled: BTreeMap<u64, u64>,
    in_flight: Vec<InFlight>,
    /// Requests to send again (sequence numbers): their replica went away or did not decide them.
    resend: Vec<u64>,
    /// Commands the store applied: (position, command id).
    pub committed: Vec<(u64, u64)>,
    /// Requests sent again and answered from the session's cache: decided before (through a
    /// leader that went away before it answered), applied once.
    pub duplicates: u64,
    /// Requests whose outcome the client cannot learn: their session was evicted, or the
    /// session no longer remembers them. Never sent again.
    pub unknown: u64,
    /// Requests sent again: their replica went away, or answered before deciding them.
    pub resent: u64,
    /// Client round trips (send to committed response), in ns.
    pub round_trip: Histogram<u64>,
    /// Responses other than committed (not leader, dropped, rejected).
    pub retries: u64,
    /// The first commit at or after `watch_after` and who made it.
    pub first_commit_after: Option<(u8, u64)>,
    watch_after: u64,
    /// A replica whose commits the watch ignores (a stopped leader answering what it committed
    /// just before its signal).
    watch_excluded: Option<u8>,
    /// The put being built, and its envelope.
    put: Vec<u8>,
    command: Vec<u8>,
    /// When the client last heard a commit (ns), for [`Client::pump`]'s rest.
    active_at: u64,
}

/// How long a client that hears no commit keeps polling before it rests: a leader that answers
/// within microseconds finds it still polling.
const CLIENT_SPIN_GRACE_NS: u64 = 200_000;
/// How long an idle client rests: on the leader's port doorbell, which every response rings, or
/// (no leader known) asleep. Without it, a client polling on a host with few cores takes a core
/// from the replicas that must elect, grant and prepare a new leader.
const CLIENT_REST: Duration = Duration::from_micros(100);

impl Client {
    /// A client of a `mu replica --app kv` cluster sending puts of `payload` bytes (command
    /// bytes, session and store headers included: at least [`kv::CLIENT_HEADER_BYTES`]) over
    /// `keys` keys, with at most `window` in flight (at most the session's window).
    pub fn new(client_id: u16, payload: usize, keys: u64, window: usize) -> Client {
        let value = payload
            .saturating_sub(kv::CLIENT_HEADER_BYTES)
            .min(kv::VALUE_MAX);
        Client {
            client_id: client_id as u64,
            payload: (0..value).map(|i| i as u8).collect(),
            keys: keys.max(1),
            window: window.clamp(1, kv::SESSION_WINDOW),
            next: 0,
            session: None,
            unsettled: BTreeMap::new(),
            in_flight: Vec::new(),
            resend: Vec::new(),
            committed: Vec::new(),
            duplicates: 0,
            unknown: 0,
            resent: 0,
            round_trip: Histogram::new_with_bounds(1, 1 << 40, 3).expect("static bounds"),
            retries: 0,
            first_commit_after: None,
            watch_after: u64::MAX,
            watch_excluded: None,
            put: vec![0; kv::HEADER_BYTES + kv::VALUE_MAX],
            command: vec![0; kv::CLIENT_HEADER_BYTES + kv::VALUE_MAX],
            active_at: monotonic_ns(),
        }
    }

    /// Records the first commit applied at or after `at` (`CLOCK_MONOTONIC` ns), and by whom:
    /// the fail-over measurement.
    pub fn watch_from(&mut self, at: u64) {
        self.watch_after = at;
        self.watch_excluded = None;
        self.first_commit_after = None;
    }

    /// From now on the watch of [`Client::watch_from`] ignores commits by `replica`.
    pub fn watch_excluding(&mut self, replica: u8) {
        self.watch_excluded = Some(replica);
    }

    /// Commands reported committed so far: applied now, or answered from the session's cache.
    pub fn committed_count(&self) -> u64 {
        self.committed.len() as u64 + self.duplicates
    }

    /// One round: collect responses, then fill the window at the leader (or, with no known
    /// leader, probe every live replica with one request each so that a new leader is used the
    /// moment it leads).
    /// After 200 µs without a commit it rests before it returns: on the leader's response
    /// doorbell, or (no leader known) asleep, up to 100 µs.
    pub fn pump(&mut self, cluster: &Cluster) {
        let leader = cluster.leader();
        let bell = leader
            .and_then(|l| cluster.port(l))
            .map(|p| p.client_bell());
        let seen = bell.map(|b| b.seen());
        let heard = self.collect(cluster);
        self.send(cluster, leader);
        let now = monotonic_ns();
        if heard {
            self.active_at = now;
        } else if now - self.active_at > CLIENT_SPIN_GRACE_NS {
            match (bell, seen) {
                (Some(bell), Some(seen)) => bell.sleep(seen, CLIENT_REST),
                _ => std::thread::sleep(CLIENT_REST),
            }
        }
    }

    /// Fills the window at `leader`, or probes; registers the session first.
    fn send(&mut self, cluster: &Cluster, leader: Option<u8>) {
        let targets: Vec<u8> = match leader {
            Some(l) => vec![l],
            None => cluster.live(),
        };
        for target in targets {
            let Some(port) = cluster.port(target) else {
                continue;
            };
            let limit = if leader.is_some() { self.window } else { 1 };
            while self
                .in_flight
                .iter()
                .filter(|f| f.replica == target)
                .count()
                < limit
                && self.in_flight.len() < self.window * cluster.replicas() as usize
            {
                let Some((id, seq, len)) = self.next_request() else {
                    break;
                };
                if !port.push_request(id, &self.command[..len]) {
                    self.unsent(seq);
                    break;
                }
                self.in_flight.push(InFlight {
                    replica: target,
                    incarnation: port.get(Stat::Incarnation),
                    id,
                    seq,
                    sent_ns: monotonic_ns(),
                });
            }
        }
    }

    /// Builds the next request into `command`: the registration while there is no session
    /// (one at a time), else a request to send again, else a new put. Returns its port
    /// sequence number, its number in the session and its length; `None` when nothing may be
    /// sent now.
    fn next_request(&mut self) -> Option<(u64, Option<u64>, usize)> {
        let Some(session) = &mut self.session else {
            if self.in_flight.iter().any(|f| f.seq.is_none()) {
                return None;
            }
            let len = session::encode_register(&mut self.command).expect("fits");
            return Some((REGISTER_ID, None, len));
        };
        if let Some(seq) = self.resend.pop() {
            self.resent += 1;
            let id = self.unsettled[&seq];
            let len = kv::encode_put(&mut self.put, id % self.keys, id, &self.payload);
            let len = session
                .retry(seq, &self.put[..len], &mut self.command)
                .expect("an unsettled request of this session");
            return Some((id, Some(seq), len));
        }
        let id = self.client_id << 48 | (self.next + 1);
        let len = kv::encode_put(&mut self.put, id % self.keys, id, &self.payload);
        match session.request(&self.put[..len], &mut self.command) {
            Ok((seq, len)) => {
                self.next += 1;
                self.unsettled.insert(seq, id);
                Some((id, Some(seq), len))
            }
            Err(SessionError::WindowFull) => None,
            Err(e) => unreachable!("the command buffer holds the largest put: {e:?}"),
        }
    }

    /// Request `seq` of the session did not reach a replica or was not decided there: it is
    /// sent again later, while unsettled (a registration is simply made again).
    fn unsent(&mut self, seq: Option<u64>) {
        if let Some(seq) = seq.filter(|seq| self.unsettled.contains_key(seq)) {
            self.resend.push(seq);
        }
    }

    /// Takes every response; true when any was a commit (a replica that answers "not the
    /// leader" at once would otherwise keep a probing client polling through a take-over).
    fn collect(&mut self, cluster: &Cluster) -> bool {
        let mut heard = false;
        // Requests sent to a replica that went away (or was restarted) never come back, and
        // one that another replica now leads may not answer for long (stopped, starved): send
        // them again to the leader. The session answers from its cache the ones that had been
        // decided, and the other replica's late answer is ignored.
        let leader = cluster.leader();
        let answerable = |f: &InFlight| {
            leader.is_none_or(|l| l == f.replica)
                && cluster
                    .port(f.replica)
                    .is_some_and(|p| p.get(Stat::Incarnation) == f.incarnation)
        };
        let (kept, gone): (Vec<InFlight>, Vec<InFlight>) =
            self.in_flight.drain(..).partition(answerable);
        self.in_flight = kept;
        for flight in gone {
            self.unsent(flight.seq);
        }
        for id in cluster.live() {
            let Some(port) = cluster.port(id) else {
                continue;
            };
            while let Some(response) = port.take_response() {
                let Some(index) = self
                    .in_flight
                    .iter()
                    .position(|f| f.replica == id && f.id == response.seq)
                else {
                    continue;
                };
                let flight = self.in_flight.swap_remove(index);
                if response.outcome != Outcome::Committed {
                    self.retries += 1;
                    self.unsent(flight.seq);
                    continue;
                }
                if self.settle(&flight, &response) {
                    heard = true;
                    let rtt = monotonic_ns().saturating_sub(flight.sent_ns);
                    self.round_trip.saturating_record(rtt.max(1));
                    if response.commit_ns >= self.watch_after
                        && self.first_commit_after.is_none()
                        && self.watch_excluded != Some(id)
                    {
                        self.first_commit_after = Some((id, response.commit_ns));
                    }
                }
            }
        }
        heard
    }

    /// Takes the session's reply to a decided request; true when it was a put's commit
    /// (applied now or before).
    fn settle(&mut self, flight: &InFlight, response: &Response) -> bool {
        let reply = session::decode_reply(response.reply());
        let Some(seq) = flight.seq else {
            if let (Ok(Reply::Registered { client }), None) = (reply, self.session) {
                self.session = Some(Session::new(client, kv::SESSION_WINDOW));
            }
            return false;
        };
        if !self.unsettled.contains_key(&seq) {
            return false; // Settled already, or of a session that expired.
        }
        match reply {
            Ok(Reply::Applied(_)) => self.committed.push((response.position, flight.id)),
            Ok(Reply::Duplicate(_)) => self.duplicates += 1,
            Ok(Reply::Refused(Refusal::Expired)) => {
                // The table evicted the session: nothing it sent can be settled any more.
                self.unknown += self.unsettled.len() as u64;
                self.unsettled.clear();
                self.resend.clear();
                self.in_flight.retain(|f| f.seq.is_none());
                self.session = None;
                return false;
            }
            _ => self.unknown += 1,
        }
        self.unsettled.remove(&seq);
        if let Some(session) = &mut self.session {
            session.settle(seq);
        }
        matches!(reply, Ok(Reply::Applied(_) | Reply::Duplicate(_)))
    }

    /// Waits until nothing is in flight (or `limit` passes), collecting responses.
    pub fn drain(&mut self, cluster: &Cluster, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.in_flight.is_empty() && Instant::now() < deadline {
            self.collect(cluster);
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail_over(marks: [u64; 3]) -> FailOver {
        let [elected_at, tenure_at, fast_path_at] = marks;
        let marks = Marks {
            elected_at,
            tenure_at,
            fast_path_at,
        };
        FailOver {
            killed: 0,
            killed_at: 1_000,
            new_leader: 1,
            committed_at: 2_000,
            marks: marks.within(1_000, 2_000),
        }
    }

    #[test]
    fn a_command_at_two_positions_is_applied_twice() {
        let journal = [(10, 0x1_0001), (11, u64::MAX), (12, 0), (13, 0x1_0002)];
        assert_eq!(applied_twice(journal.into_iter()), None);
        let twice = [
            (10, 0x1_0001),
            (11, u64::MAX),
            (12, u64::MAX),
            (14, 0x1_0001),
        ];
        assert_eq!(applied_twice(twice.into_iter()), Some((0x1_0001, [10, 14])));
    }

    #[test]
    fn segments_split_the_fail_over() {
        let f = fail_over([1_400, 1_450, 1_900]);
        assert_eq!(f.detection(), Some(400));
        assert_eq!(f.handoff(), Some(50));
        assert_eq!(f.prepare(), Some(450));
        assert_eq!(f.switch_and_prepare(), Some(500));
        assert_eq!(f.first_commit(), Some(100));
        assert_eq!(400 + 500 + 100, f.nanos());
    }

    #[test]
    fn marks_of_another_take_over_give_no_split() {
        for marks in [
            [0, 1_450, 1_900],     // Not elected (any more).
            [900, 1_450, 1_900],   // Elected before the kill: an earlier take-over.
            [1_400, 1_300, 1_900], // A tenure older than the election.
            [1_400, 2_100, 2_200], // A later tenure.
            [1_400, 1_450, 0],     // Not on the fast path.
        ] {
            let f = fail_over(marks);
            assert_eq!(f.marks, None, "{marks:?}");
            assert_eq!(f.detection(), None);
            assert_eq!(f.first_commit(), None);
        }
    }
}
