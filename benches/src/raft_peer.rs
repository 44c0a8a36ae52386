//! The peer: raft-rs.
//!
//! TiKV's `raft` crate (0.7) run as an `N`-node cluster inside the calling thread, with in-memory
//! storage (`MemStorage`) and in-memory message passing, so that Mu and raft are measured in the
//! same process on the same machine. Two measurements:
//!
//! - [`serial_latency`]: propose one command at the leader, drive the cluster until the leader
//!   applies that command from its committed entries, record the TSC cycles in between, let the
//!   cluster settle (untimed), repeat.
//! - [`throughput`]: keep `window` proposals outstanding at the leader for a while and count the
//!   commands the leader sees committed per second.
//!
//! The driver is one loop of rounds. In a round every node steps the messages in its inbox, then
//! handles its `Ready` the way raft 0.7 requires (the leader takes a turn before each follower
//! and at the end, so a command commits after a quorum of followers, not all of them) (send, persist, send persisted, apply, advance,
//! then the same for the `LightReady`). Node 1 is made leader by campaigning before any
//! measurement; nothing ticks afterwards, so no election can disturb a run.
//!
//! Each command's first 8 bytes carry its sequence number (little endian), so `payload` must be at
//! least 8 bytes; a shorter one is an error.
//!
//! # Invariants
//!
//! Checked and reported as errors rather than panics:
//! - every node, the leader included, applies commands exactly in proposal order, so every
//!   proposal the leader counts as committed was committed in its log, in order;
//! - each run ends, after driving the cluster to quiescence, with every proposal committed and
//!   every node having applied the same number of commands with the same digest;
//! - no snapshot is ever needed: storage is compacted only below what every node applied and
//!   the leader knows every follower holds, so memory stays bounded over millions of entries.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use raft::eraftpb::{Entry, EntryType, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, Ready, StateRole};
use runtime_linux::clock::{cycles_end, cycles_start};

/// What a throughput run did.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    /// Commands the leader saw committed during the run.
    pub commands: u64,
    /// Length of the run.
    pub seconds: f64,
}

impl Throughput {
    /// Committed commands per second.
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.commands as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Serial propose-to-commit latency at the leader of an in-memory raft-rs cluster of `nodes`, in
/// TSC cycles: `warmup` unrecorded commands, then `samples` recorded ones, each `payload` bytes.
pub fn serial_latency(
    nodes: usize,
    payload: usize,
    warmup: usize,
    samples: usize,
) -> Result<Histogram<u64>, String> {
    let mut histogram =
        Histogram::new_with_bounds(1, 1 << 40, 3).map_err(|e| format!("latency histogram: {e}"))?;
    let mut cluster = Cluster::elect(nodes, payload)?;
    for i in 0..warmup + samples {
        let cycles = cluster.one_command()?;
        if i >= warmup {
            histogram.saturating_record(cycles.max(1));
        }
        // Outside the timed interval: each sample starts from a settled cluster (followers have
        // learned the last commit and acknowledged it), and compaction never lands in a sample.
        cluster.quiesce()?;
        cluster.maybe_compact()?;
    }
    cluster.finish()?;
    Ok(histogram)
}

/// Commands committed per second with `window` proposals outstanding.
pub fn throughput(
    nodes: usize,
    payload: usize,
    window: usize,
    duration: Duration,
) -> Result<Throughput, String> {
    if window == 0 {
        return Err("raft throughput: window must be at least 1".into());
    }
    let mut cluster = Cluster::elect(nodes, payload)?;
    let committed_before = cluster.leader().commands;
    let start = Instant::now();
    let mut idle_rounds = 0;
    while start.elapsed() < duration {
        cluster.fill_window(window as u64)?;
        if cluster.round()? {
            idle_rounds = 0;
        } else {
            idle_rounds += 1;
            if idle_rounds > STALL_ROUNDS {
                return Err(format!(
                    "raft throughput: cluster stalled with {} proposals outstanding",
                    cluster.outstanding()
                ));
            }
        }
        cluster.maybe_compact()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let commands = cluster.leader().commands - committed_before;
    cluster.finish()?;
    Ok(Throughput { commands, seconds })
}

/// Rounds allowed for node 1 to win its election.
const ELECTION_ROUNDS: usize = 1_000;
/// Rounds allowed for one serial command to commit; it takes two when all is well.
const COMMAND_ROUNDS: usize = 10_000;
/// Rounds allowed to reach quiescence; a pipelined window drains in far fewer.
const QUIESCE_ROUNDS: usize = 1_000_000;
/// Consecutive rounds without progress that mean the throughput run is stuck.
const STALL_ROUNDS: usize = 10_000;
/// Applied entries between storage compactions: rare enough to cost nothing, frequent enough to
/// keep each `MemStorage` small.
pub(crate) const COMPACT_EVERY: u64 = 4096;
/// The leader: node id 1, at index 0.
pub(crate) const LEADER: usize = 0;
/// Bytes at the start of every command that carry its sequence number.
const SEQ_BYTES: usize = 8;

/// Checks a cluster's shape before anything is built: at least one node, and commands long
/// enough for their sequence numbers.
pub(crate) fn check_shape(nodes: usize, payload: usize) -> Result<(), String> {
    if nodes == 0 {
        return Err("raft cluster: needs at least one node".into());
    }
    if payload < SEQ_BYTES {
        return Err(format!(
            "raft cluster: payload of {payload} bytes cannot carry the {SEQ_BYTES}-byte sequence number"
        ));
    }
    Ok(())
}

/// An in-process raft-rs cluster and the commands proposed to it.
struct Cluster {
    nodes: Vec<Node>,
    /// `inboxes[i]` holds the messages addressed to node id `i + 1`, in send order.
    inboxes: Vec<VecDeque<Message>>,
    /// The command template; each proposal writes its sequence number into the first bytes.
    payload: Vec<u8>,
    /// Sequence number of the last command proposed; commands are numbered from 1.
    proposed: u64,
    /// Leader applied index at the last compaction.
    compacted_at: u64,
}

impl Cluster {
    /// Builds `nodes` raft nodes and drives them until node 1 leads and everything settles.
    fn elect(nodes: usize, payload: usize) -> Result<Self, String> {
        check_shape(nodes, payload)?;
        let nodes = (1..=nodes as u64)
            .map(|id| Node::new(id, nodes))
            .collect::<Result<Vec<_>, _>>()?;
        let mut cluster = Cluster {
            inboxes: (0..nodes.len()).map(|_| VecDeque::new()).collect(),
            nodes,
            payload: vec![0; payload],
            proposed: 0,
            compacted_at: 0,
        };
        cluster.nodes[LEADER]
            .raw
            .campaign()
            .map_err(|e| format!("raft campaign: {e}"))?;
        cluster.drive_until(ELECTION_ROUNDS, "election", |c| c.leads())?;
        // Let the leader's no-op entry commit everywhere so measurements start from rest.
        cluster.quiesce()?;
        Ok(cluster)
    }

    fn leader(&self) -> &Node {
        &self.nodes[LEADER]
    }

    fn leads(&self) -> bool {
        self.leader().leads()
    }

    fn outstanding(&self) -> u64 {
        self.proposed - self.leader().last_seq
    }

    /// Proposes one command and drives until the leader applies it; returns the cycles taken.
    fn one_command(&mut self) -> Result<u64, String> {
        let start = cycles_start();
        self.propose()?;
        let seq = self.proposed;
        self.drive_until(COMMAND_ROUNDS, "serial command", |c| {
            c.leader().last_seq >= seq
        })?;
        Ok(self.leader().applied_at.saturating_sub(start))
    }

    fn fill_window(&mut self, window: u64) -> Result<(), String> {
        while self.outstanding() < window {
            self.propose()?;
        }
        Ok(())
    }

    fn propose(&mut self) -> Result<(), String> {
        let seq = self.proposed + 1;
        self.nodes[LEADER].propose(&mut self.payload, seq)?;
        self.proposed = seq;
        Ok(())
    }

    /// Runs rounds until `done`, failing after `limit` rounds.
    fn drive_until(
        &mut self,
        limit: usize,
        what: &str,
        done: impl Fn(&Self) -> bool,
    ) -> Result<(), String> {
        for _ in 0..limit {
            if done(self) {
                return Ok(());
            }
            self.round()?;
        }
        if done(self) {
            Ok(())
        } else {
            Err(format!("raft {what}: not done after {limit} rounds"))
        }
    }

    /// Runs rounds until one does nothing: no message left in flight, no `Ready` pending.
    fn quiesce(&mut self) -> Result<(), String> {
        for _ in 0..QUIESCE_ROUNDS {
            if !self.round()? {
                return Ok(());
            }
        }
        Err(format!(
            "raft quiesce: still busy after {QUIESCE_ROUNDS} rounds"
        ))
    }

    /// Lets every node step its inbox and handle its `Ready`; returns whether anything happened.
    ///
    /// The leader takes a turn before each follower and once more at the end, so that it sees
    /// each acknowledgement as soon as it is sent: a command commits once a quorum of followers
    /// had their turn, not after every follower's (followers would work in parallel on their
    /// own cores, and the serial driver must not put all of them on the measured path).
    fn round(&mut self) -> Result<bool, String> {
        let mut progressed = false;
        for follower in (0..self.nodes.len()).filter(|&i| i != LEADER) {
            progressed |= self.turn(LEADER)?;
            progressed |= self.turn(follower)?;
        }
        progressed |= self.turn(LEADER)?;
        Ok(progressed)
    }

    /// Node `index` steps its inbox and handles its `Ready`; returns whether it did anything.
    fn turn(&mut self, index: usize) -> Result<bool, String> {
        let node = &mut self.nodes[index];
        let mut progressed = node.step_inbox(&mut self.inboxes[index])?;
        if node.raw.has_ready() {
            let inboxes = &mut self.inboxes;
            node.handle_ready(&mut |messages| send(messages, inboxes))?;
            progressed = true;
        }
        Ok(progressed)
    }

    /// Compacts every node's storage once the leader has applied another `COMPACT_EVERY` entries.
    ///
    /// The floor is the lowest index every node applied and the leader knows every node holds:
    /// raft never again reads an entry below it (its next append to anyone starts above it), so
    /// it never falls back to a snapshot, which `MemStorage` could not fill with applied state.
    fn maybe_compact(&mut self) -> Result<(), String> {
        let leader = self.leader();
        if leader.applied_index < self.compacted_at + COMPACT_EVERY {
            return Ok(());
        }
        let applied = self.nodes.iter().map(|n| n.applied_index);
        let matched = leader.raw.raft.prs().iter().map(|(_, p)| p.matched);
        let floor = applied.chain(matched).min().unwrap_or(0);
        for node in &self.nodes {
            node.compact(floor)?;
        }
        self.compacted_at = self.leader().applied_index;
        Ok(())
    }

    /// Drives to quiescence and checks that every proposal committed and all nodes agree.
    fn finish(&mut self) -> Result<(), String> {
        self.quiesce()?;
        let leader = self.leader();
        if leader.last_seq != self.proposed {
            return Err(format!(
                "raft: {} commands proposed but the leader applied {}",
                self.proposed, leader.last_seq
            ));
        }
        for (id, node) in (1..).zip(&self.nodes) {
            if (node.commands, node.digest) != (leader.commands, leader.digest) {
                return Err(format!(
                    "raft: node {id} applied {} commands (digest {:#x}), the leader {} ({:#x})",
                    node.commands, node.digest, leader.commands, leader.digest
                ));
            }
        }
        Ok(())
    }
}

/// One raft node and the state machine it applies to; the peer over TCP runs the same.
pub(crate) struct Node {
    pub(crate) raw: RawNode<MemStorage>,
    /// Index of the last entry applied, commands and no-ops alike.
    pub(crate) applied_index: u64,
    /// Commands applied.
    pub(crate) commands: u64,
    /// Order-sensitive digest of every command applied.
    pub(crate) digest: u64,
    /// Sequence number of the last command applied.
    pub(crate) last_seq: u64,
    /// TSC when this node last applied a command: the moment the leader sees a commit.
    pub(crate) applied_at: u64,
}

impl Node {
    /// Node `id` of a cluster of voters `1..=nodes`.
    pub(crate) fn new(id: u64, nodes: usize) -> Result<Self, String> {
        let config = Config {
            id,
            election_tick: 10,
            heartbeat_tick: 3,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            applied: 0,
            check_quorum: false,
            pre_vote: false,
            // Merges the appends queued for one follower into one message: raft's own answer to
            // pipelining, about doubling its throughput with a window of 8 or more.
            batch_append: true,
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| format!("raft config of node {id}: {e}"))?;
        let storage = MemStorage::new_with_conf_state((1..=nodes as u64, Vec::new()));
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw =
            RawNode::new(&config, storage, &logger).map_err(|e| format!("raft node {id}: {e}"))?;
        Ok(Node {
            raw,
            applied_index: 0,
            commands: 0,
            digest: 0,
            last_seq: 0,
            applied_at: 0,
        })
    }

    pub(crate) fn id(&self) -> u64 {
        self.raw.raft.id
    }

    pub(crate) fn leads(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Proposes command `seq`: `payload` with the sequence number written into its first bytes.
    pub(crate) fn propose(&mut self, payload: &mut [u8], seq: u64) -> Result<(), String> {
        if !self.leads() {
            return Err(format!("raft propose: node {} lost leadership", self.id()));
        }
        payload[..SEQ_BYTES].copy_from_slice(&seq.to_le_bytes());
        // raft takes the command by value, so one copy per proposal is unavoidable.
        self.raw
            .propose(Vec::new(), payload.to_vec())
            .map_err(|e| format!("raft propose of command {seq}: {e}"))
    }

    /// Drops this node's entries up to `floor`, which no node may need from it again.
    pub(crate) fn compact(&self, floor: u64) -> Result<(), String> {
        self.raw
            .store()
            .wl()
            .compact(floor)
            .map_err(|e| format!("raft node {} compact to {floor}: {e}", self.id()))
    }

    /// Steps every message waiting for this node; returns whether there were any.
    fn step_inbox(&mut self, inbox: &mut VecDeque<Message>) -> Result<bool, String> {
        let any = !inbox.is_empty();
        while let Some(message) = inbox.pop_front() {
            self.raw
                .step(message)
                .map_err(|e| format!("raft node {} step: {e}", self.id()))?;
        }
        Ok(any)
    }

    /// Handles one `Ready` and the `LightReady` that follows it, in the order raft 0.7 requires;
    /// `send` takes each batch of messages at the moment they may go out.
    pub(crate) fn handle_ready(
        &mut self,
        send: &mut impl FnMut(Vec<Message>) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut ready = self.raw.ready();
        // These may go out before persisting: they are the leader's appends, safe in parallel.
        send(ready.take_messages())?;
        if !ready.snapshot().is_empty() {
            return Err(format!(
                "raft node {}: unexpected snapshot; MemStorage snapshots carry no applied state",
                self.id()
            ));
        }
        self.persist(&ready)?;
        // These promise the persisted state, so only now may they go out.
        send(ready.take_persisted_messages())?;
        self.apply(ready.take_committed_entries())?;
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.store().wl().mut_hard_state().set_commit(commit);
        }
        send(light.take_messages())?;
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        Ok(())
    }

    fn persist(&self, ready: &Ready) -> Result<(), String> {
        if ready.entries().is_empty() && ready.hs().is_none() {
            return Ok(());
        }
        let mut storage = self.raw.store().wl();
        storage
            .append(ready.entries())
            .map_err(|e| format!("raft node {} append: {e}", self.id()))?;
        if let Some(hs) = ready.hs() {
            storage.set_hardstate(hs.clone());
        }
        Ok(())
    }

    /// Applies committed entries to the state machine, checking they come in proposal order.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        let commands_before = self.commands;
        for entry in &entries {
            self.applied_index = entry.index;
            let data = entry.get_data();
            // A new leader's no-op: nothing to apply.
            if data.is_empty() {
                continue;
            }
            if entry.get_entry_type() != EntryType::EntryNormal {
                return Err(format!(
                    "raft node {}: unexpected {:?} entry at {}",
                    self.id(),
                    entry.get_entry_type(),
                    entry.index
                ));
            }
            let seq = sequence(data).ok_or_else(|| {
                format!(
                    "raft node {}: entry {} too short for a sequence number",
                    self.id(),
                    entry.index
                )
            })?;
            if seq != self.last_seq + 1 {
                return Err(format!(
                    "raft node {}: applied command {seq} after {}",
                    self.id(),
                    self.last_seq
                ));
            }
            self.last_seq = seq;
            self.commands += 1;
            self.digest = crate::digest(self.digest, data);
        }
        if self.commands != commands_before {
            self.applied_at = cycles_end();
        }
        Ok(())
    }
}

/// Queues each message in its target node's inbox.
fn send(messages: Vec<Message>, inboxes: &mut [VecDeque<Message>]) -> Result<(), String> {
    for message in messages {
        let to = message.to;
        let inbox = to
            .checked_sub(1)
            .and_then(|i| inboxes.get_mut(usize::try_from(i).ok()?))
            .ok_or_else(|| format!("raft: message to unknown node {to}"))?;
        inbox.push_back(message);
    }
    Ok(())
}

fn sequence(data: &[u8]) -> Option<u64> {
    let bytes = data.get(..SEQ_BYTES)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_latency_records_every_sample() {
        let histogram = serial_latency(3, 64, 10, 200).expect("serial latency run");
        assert_eq!(histogram.len(), 200);
        assert!(histogram.min() > 0);
    }

    #[test]
    fn throughput_commits_commands() {
        let run = throughput(3, 64, 32, Duration::from_millis(50)).expect("throughput run");
        assert!(run.commands > 0);
        assert!(run.per_second() > 0.0);
    }

    #[test]
    fn five_nodes_work() {
        let histogram = serial_latency(5, 64, 5, 50).expect("five-node latency run");
        assert_eq!(histogram.len(), 50);
        let run = throughput(5, 64, 16, Duration::from_millis(20)).expect("five-node throughput");
        assert!(run.commands > 0);
    }

    #[test]
    fn large_payload_works() {
        let histogram = serial_latency(3, 4096, 5, 50).expect("4 KiB latency run");
        assert_eq!(histogram.len(), 50);
        let run = throughput(3, 4096, 16, Duration::from_millis(20)).expect("4 KiB throughput");
        assert!(run.commands > 0);
    }

    #[test]
    fn long_runs_compact_and_stay_consistent() {
        let mut cluster = Cluster::elect(3, 8).expect("cluster");
        for _ in 0..3 * COMPACT_EVERY {
            cluster.one_command().expect("command");
            cluster.maybe_compact().expect("compaction");
        }
        for node in &cluster.nodes {
            let first = raft::Storage::first_index(node.raw.store()).expect("first index");
            assert!(
                first > 2 * COMPACT_EVERY,
                "storage not compacted: first index {first}"
            );
        }
        cluster.finish().expect("all nodes agree after compaction");
    }

    #[test]
    fn payload_shorter_than_sequence_is_an_error() {
        assert!(serial_latency(3, 7, 0, 1).is_err());
        assert!(throughput(3, 7, 1, Duration::from_millis(1)).is_err());
    }

    #[test]
    fn zero_nodes_or_window_is_an_error() {
        assert!(serial_latency(0, 64, 0, 1).is_err());
        assert!(throughput(3, 64, 0, Duration::from_millis(1)).is_err());
    }
}
