//! The replication plane: the follower's replayer and the leader's replicator (in `leader`).
//!
//! Follower: the replayer polls its own log. A slot at the next position to apply is taken only
//! when it opens (chain, position) and its `chain_prev` equals the chain of everything applied
//! so far; a position is applied only below a commit point carried by a slot that chains back to
//! the applied prefix (or by the commit record, which carries the chain digest it vouches for).
//! So a torn slot, a slot of an earlier lap and an undecided value of an earlier leader are never
//! applied. A valid slot of a *later* lap at the next position, or a lap notice, means the leader
//! recycled past this replica: it installs a snapshot of another replica instead (`transfer`).
//!
//! # Invariants
//! - `applied` only grows; `applied_chain` is the chain digest through `applied - 1`.
//! - Every replica applies the same command at the same position (agreement), because every
//!   applied slot chains to the same decided prefix.
//! - A command submitted here is reported `committed` only when the command itself (its origin)
//!   is applied, never when another value was decided in its place.
//! - Work per poll is bounded: scans and applies stop after a fixed number of slots; completions
//!   are drained in bounded batches.

use crate::config::{Config, REPLICAS_MAX};
use crate::fabric::{Completion, Fabric, ReplicaId};
use crate::hash::Hasher;
use crate::layout::{Layout, COMMIT_RECORD_BYTES};
use crate::leader::{Connection, Leader, LeaderStatus};
use crate::queue::RequestQueue;
use crate::record;
use crate::shared::Shared;
use crate::slot::{self, Opened, SlotError, SlotHeader, CHAIN_GENESIS, SLOT_HEADER_BYTES};
use crate::state_machine::{StateMachine, Ticket};

/// Why the replication plane stopped for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Halt {
    /// It needs positions no log holds any more, and its application cannot install a
    /// snapshot of another replica's state.
    Lapped,
}

impl Halt {
    /// The reason's number where a runtime publishes it as a word (never 0: 0 is "running").
    pub const fn code(self) -> u32 {
        match self {
            Halt::Lapped => 1,
        }
    }

    /// The reason a published word names; `None` for 0 (running) or an unknown number.
    pub const fn from_code(code: u32) -> Option<Halt> {
        match code {
            1 => Some(Halt::Lapped),
            _ => None,
        }
    }

    /// What the reason means, for an operator.
    pub const fn describe(self) -> &'static str {
        match self {
            Halt::Lapped => {
                "it needs log positions that no replica holds any more and could not install a \
                 snapshot of another replica's state"
            }
        }
    }
}

/// Why a command was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SubmitError {
    /// This replica does not lead; `leader` is who it considers leader.
    NotLeader {
        /// The replica to try instead, if known.
        leader: Option<ReplicaId>,
    },
    /// Empty commands are not accepted.
    Empty,
    /// The command is longer than the largest entry.
    TooLarge {
        /// Its length.
        len: u32,
        /// The most accepted.
        max: u32,
    },
    /// The queue is full; poll and try again.
    Busy,
    /// This replica halted (its log was lapped) and no longer takes part.
    Halted,
}

/// A snapshot of the replication plane, for runtimes and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReplicationStatus {
    /// Positions below this are applied here.
    pub applied: u64,
    /// Chain digest of every slot applied (through `applied - 1`): two replicas with the same
    /// `applied` hold the same log prefix exactly when these are equal.
    pub applied_chain: u64,
    /// The tenure this replica leads in, if it does.
    pub leading: Option<u32>,
    /// True once the leader finished its prepare and replicates on the fast path.
    pub fast_path: bool,
    /// Commands waiting in the leader's queue.
    pub queued: u32,
    /// Why it halted, once it did.
    pub halted: Option<Halt>,
    /// This life of the replica is a voter: it was admitted (or the cluster was formed with it).
    /// A restarted replica is recovering until a leader admits it.
    pub voter: bool,
    /// True while it installs a snapshot from another replica.
    pub catching_up: bool,
    /// The replica it serves a snapshot to, while it donates one.
    pub donating_to: Option<ReplicaId>,
    /// How many times the next tenure's deadlines are doubled after tenures that got nowhere.
    pub deadline_doublings: u8,
    /// A follower whose last poll found valid slots as far as one poll scans: the leader may
    /// have written more. A runtime that rests between polls polls again at once instead, or a
    /// follower that rests falls behind a leader of large commands by up to a lap, and the leader
    /// waits on its recycling (and, elected, would first apply that lap).
    pub backlog: bool,
}

/// Most doublings of the prepare's deadlines after tenures that ended before the fast path: a
/// set-up of up to 4 deadlines gets through, and a tenure that cannot succeed for another reason
/// (too few voters it can reach, members still installing snapshots) is given up within 4
/// deadlines, not 16 (simulator seed 3905 waited 1,920 ticks in one adoption at 16).
pub(crate) const DEADLINE_DOUBLINGS_MAX: u8 = 2;

/// Reassembles commands that span several slots.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Assembly {
    active: bool,
    /// The position of its first fragment, and the chain before it.
    start: u64,
    start_chain: u64,
    origin: u64,
    entry_len: u32,
    next_frag: u16,
    filled: u32,
}

const COMMIT_DOMAIN: u64 = 0x434F_4D4D_4954;
pub(crate) const COMPLETION_BATCH: usize = 16;

/// Encodes the commit record: everything below `commit` is decided, and the chain through
/// `commit - 1` is `chain`.
pub(crate) fn encode_commit(
    offset: u32,
    commit: u64,
    chain: u64,
) -> [u8; COMMIT_RECORD_BYTES as usize] {
    let mut bytes = [0u8; COMMIT_RECORD_BYTES as usize];
    let check = Hasher::new(COMMIT_DOMAIN)
        .word(offset as u64)
        .word(commit)
        .word(chain)
        .finish();
    bytes[0..8].copy_from_slice(&commit.to_le_bytes());
    bytes[8..16].copy_from_slice(&chain.to_le_bytes());
    bytes[16..24].copy_from_slice(&check.to_le_bytes());
    debug_assert_eq!(decode_commit(offset, &bytes), Some((commit, chain)));
    bytes
}

#[cfg(test)]
pub(crate) fn decode_commit_for_tests(offset: u32, bytes: &[u8]) -> Option<(u64, u64)> {
    decode_commit(offset, bytes.try_into().ok()?)
}

fn decode_commit(offset: u32, bytes: &[u8; COMMIT_RECORD_BYTES as usize]) -> Option<(u64, u64)> {
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    let (commit, chain, check) = (word(0), word(8), word(16));
    let expected = Hasher::new(COMMIT_DOMAIN)
        .word(offset as u64)
        .word(commit)
        .word(chain)
        .finish();
    (check == expected).then_some((commit, chain))
}

/// The replication plane of one replica.
///
/// `SLOT` bounds the slot size, `ENTRY` the command size (and the response buffer), `QUEUE` the
/// bytes of commands the leader may hold undecided.
pub struct ReplicationPlane<'s, const SLOT: usize, const ENTRY: usize, const QUEUE: usize> {
    pub(crate) config: Config,
    pub(crate) layout: Layout,
    pub(crate) me: ReplicaId,
    pub(crate) shared: &'s Shared,
    pub(crate) applied: u64,
    pub(crate) applied_chain: u64,
    commit_known: u64,
    /// The last replay found valid slots up to its scan bound: more may follow.
    backlog: bool,
    assembly: Assembly,
    entry: [u8; ENTRY],
    pub(crate) slot: [u8; SLOT],
    response: [u8; ENTRY],
    pub(crate) queue: RequestQueue<QUEUE>,
    pub(crate) connections: [Connection; REPLICAS_MAX as usize],
    pub(crate) leader: Option<Leader>,
    pub(crate) spent_tenure: u32,
    /// Tenures in a row (at most [`DEADLINE_DOUBLINGS_MAX`]) that ended before the fast path: each
    /// doubles the next tenure's phase and operation deadlines (see `phase_timeout`).
    pub(crate) deadline_doublings: u8,
    halted: Option<Halt>,
    /// Cached once true: a standing is never withdrawn within a life.
    pub(crate) voter: bool,
    published_applied: Option<u64>,
    publish_at: u64,
    pub(crate) completions: [Completion; COMPLETION_BATCH],
    /// This replica's life, and its transfer attempts: a transfer's nonce is unique to both.
    pub(crate) incarnation: u32,
    pub(crate) attempts: u32,
    /// The snapshot this replica installs, while it does.
    pub(crate) transfer: Option<crate::transfer::Join>,
    /// The peers' applied positions, as a transfer's survey read them.
    pub(crate) survey_applied: [u64; REPLICAS_MAX as usize],
    /// The snapshot this replica serves to another, if any.
    pub(crate) donor: crate::transfer::Donor,
}

impl<'s, const SLOT: usize, const ENTRY: usize, const QUEUE: usize>
    ReplicationPlane<'s, SLOT, ENTRY, QUEUE>
{
    /// The replication plane of replica `me`; the caller validated the configuration and checked
    /// it against the buffer sizes (see [`crate::Replica`]).
    pub(crate) fn new(config: Config, me: ReplicaId, shared: &'s Shared) -> Self {
        assert!(config.validate().is_ok());
        assert!(config.slot_size as usize <= SLOT);
        assert!(config.entry_bytes_max() as usize <= ENTRY);
        ReplicationPlane {
            config,
            layout: Layout::new(&config),
            me,
            shared,
            applied: 0,
            applied_chain: CHAIN_GENESIS,
            commit_known: 0,
            backlog: false,
            assembly: Assembly::default(),
            entry: [0; ENTRY],
            slot: [0; SLOT],
            response: [0; ENTRY],
            queue: RequestQueue::new(),
            connections: [Connection::NEW; REPLICAS_MAX as usize],
            leader: None,
            spent_tenure: 0,
            deadline_doublings: 0,
            halted: None,
            voter: false,
            published_applied: None,
            publish_at: 0,
            completions: [Completion::EMPTY; COMPLETION_BATCH],
            incarnation: 0,
            attempts: 0,
            transfer: None,
            survey_applied: [0; REPLICAS_MAX as usize],
            donor: crate::transfer::Donor::NEW,
        }
    }

    /// Numbers this plane's commands from `incarnation`'s own range, so that a replica process
    /// restarted with a fresh region never reuses the origin of a command its earlier life
    /// proposed (a decided old command would otherwise be reported committed for a new one).
    /// Call it once, before the first `submit`; the runtime keeps `incarnation` rising across
    /// restarts.
    pub fn begin_incarnation(&mut self, incarnation: u32) {
        self.incarnation = incarnation;
        self.queue
            .start_sequences_at(crate::slot::incarnation_base(incarnation));
    }

    /// Does one bounded round of replication work at time `now`.
    pub fn poll<F: Fabric, S: StateMachine>(&mut self, now: u64, fabric: &mut F, sm: &mut S) {
        self.shared.tick_progress();
        self.backlog = false;
        if self.halted.is_some() {
            // Whatever it queued as leader will never be decided through this replica.
            self.queue.drain(|ticket| sm.dropped(ticket));
            return;
        }
        self.follow_role(now, fabric, sm);
        if self.leader.is_some() {
            self.lead(now, fabric, sm);
        } else {
            self.drain_completions(now, fabric, sm);
            if self.transfer.is_some() {
                self.step_transfer(now, fabric, sm);
            } else {
                self.replay(now, fabric, sm);
                self.refresh_voter(fabric);
            }
        }
        if self.halted.is_none() {
            self.serve_transfers(now, fabric, sm);
        }
        self.publish_applied(now, fabric);
    }

    /// Queues a command for replication; only the leader accepts commands.
    pub fn submit(&mut self, command: &[u8]) -> Result<Ticket, SubmitError> {
        if self.halted.is_some() {
            return Err(SubmitError::Halted);
        }
        if self.leader.is_none() {
            return Err(SubmitError::NotLeader {
                leader: self.shared.leader(),
            });
        }
        if command.is_empty() {
            return Err(SubmitError::Empty);
        }
        let max = self.config.entry_bytes_max();
        if command.len() as u64 > max as u64 {
            return Err(SubmitError::TooLarge {
                len: command.len().min(u32::MAX as usize) as u32,
                max,
            });
        }
        self.queue.push(command).ok_or(SubmitError::Busy)
    }

    /// The leader's view of its tenure, while it leads.
    pub fn leader_status(&self) -> Option<LeaderStatus> {
        let confirmed = self.shared.lead().map_or(0, |l| l.confirmed);
        self.leader.as_ref().map(|leader| leader.status(confirmed))
    }

    /// A snapshot for runtimes and tests.
    pub fn status(&self) -> ReplicationStatus {
        ReplicationStatus {
            applied: self.applied,
            applied_chain: self.applied_chain,
            leading: self.leader.as_ref().map(|l| l.tenure),
            fast_path: self.leader.as_ref().is_some_and(|l| l.fast_path()),
            queued: self.queue.len() as u32,
            halted: self.halted,
            voter: self.voter,
            catching_up: self.transfer.is_some(),
            donating_to: self.donor.joiner(),
            deadline_doublings: self.deadline_doublings,
            backlog: self.backlog,
        }
    }

    /// The last command boundary: the position and chain the state machine's state stands
    /// for. Below `applied` while a command spanning several slots is half applied (the state
    /// machine has not seen its fragments yet).
    pub(crate) fn boundary(&self) -> (u64, u64) {
        let a = &self.assembly;
        if a.active {
            assert!(a.start < self.applied);
            (a.start, a.start_chain)
        } else {
            (self.applied, self.applied_chain)
        }
    }

    /// A snapshot covering every position below `position`, whose chain through `position - 1`
    /// is `chain`, was installed: the log continues from there.
    pub(crate) fn install_position(&mut self, position: u64, chain: u64) {
        assert!(self.leader.is_none(), "a leader never installs a snapshot");
        self.applied = position;
        self.applied_chain = chain;
        self.commit_known = position;
        self.assembly = Assembly::default();
        self.published_applied = None;
    }

    /// True when this life of the replica is a voter; reads the standing record until it is.
    pub(crate) fn refresh_voter<F: Fabric>(&mut self, fabric: &mut F) -> bool {
        if !self.voter {
            self.voter = crate::background::own_voter(&self.layout, fabric);
        }
        self.voter
    }

    /// Takes up or gives up leadership as the background plane says.
    fn follow_role<F: Fabric, S: StateMachine>(&mut self, now: u64, fabric: &mut F, sm: &mut S) {
        let lead = self.shared.lead();
        if let Some(leader) = &self.leader {
            if lead.map(|l| l.tenure) == Some(leader.tenure) {
                return;
            }
            info!("tenure {} over", leader.tenure);
            self.stand_down(fabric);
        }
        let Some(lead) = lead else {
            // Not leading any more, whether the tenure just ended or was aborted earlier (the
            // queue outlives an abort, for the next tenure): nothing queued will be proposed here.
            if self.queue.len() > 0 {
                self.queue.drain(|ticket| sm.dropped(ticket));
            }
            return;
        };
        let transferring = self.transfer.is_some();
        if transferring
            || lead.tenure == self.spent_tenure
            || !self.shared.start_acting(lead.tenure)
        {
            return;
        }
        info!(
            "leading in tenure {} from position {}",
            lead.tenure, self.applied
        );
        self.queue.restart_proposals();
        let voter = self.refresh_voter(fabric);
        let timeout = self.phase_timeout();
        self.leader = Some(Leader::new(
            lead.tenure,
            now,
            (self.applied, self.applied_chain),
            voter,
            timeout,
        ));
    }

    /// Ticks a phase of the prepare, or an operation of it, may take: `op_timeout_ticks`,
    /// doubled for every tenure in a row that ended before its fast path. A fabric whose
    /// connections or grants take longer than a deadline to set up (a verbs re-pairing under
    /// load) would otherwise end every tenure in its survey and start the next, which needs the
    /// same set-up again, forever; with the deadline growing, one tenure gets through, and the
    /// next fast path puts it back.
    pub(crate) fn phase_timeout(&self) -> u64 {
        debug_assert!(self.deadline_doublings <= DEADLINE_DOUBLINGS_MAX);
        (self.config.op_timeout_ticks as u64) << self.deadline_doublings
    }

    /// Stops acting as leader: nothing the tenure posted lands after this (see `fence_tenure`);
    /// only then may the background plane grant this replica's log to a peer.
    fn stand_down<F: Fabric>(&mut self, fabric: &mut F) -> Option<u32> {
        let leader = self.leader.take()?;
        if !leader.fast_path() {
            self.deadline_doublings = (self.deadline_doublings + 1).min(DEADLINE_DOUBLINGS_MAX);
        }
        self.fence_tenure(fabric);
        self.shared.stop_acting();
        Some(leader.tenure)
    }

    /// Gives up the current tenure: the background plane will ask for permissions again.
    pub(crate) fn abort<F: Fabric>(&mut self, fabric: &mut F) {
        let Some(tenure) = self.stand_down(fabric) else {
            return;
        };
        warn!("tenure {} aborted", tenure);
        self.spent_tenure = tenure;
        self.shared.abort(tenure);
    }

    pub(crate) fn halt<F: Fabric>(&mut self, reason: Halt, fabric: &mut F) {
        warn!("replication halted: {}", reason.code());
        self.abort(fabric);
        self.halted = Some(reason);
        self.shared.halt(reason);
    }

    /// Publishes the applied position when it changes, and every `recycle_period_ticks` anyway
    /// (a damaged record heals).
    fn publish_applied<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        if self.published_applied == Some(self.applied) && now < self.publish_at {
            return;
        }
        let offset = self.layout.applied();
        fabric.store(offset, &record::encode(offset, self.applied));
        self.published_applied = Some(self.applied);
        self.publish_at = now + self.config.recycle_period_ticks as u64;
    }

    /// Loads the slot of `position` from this replica's own log into the scratch slot.
    pub(crate) fn open_local<F: Fabric>(
        &mut self,
        fabric: &mut F,
        position: u64,
    ) -> Result<Opened, SlotError> {
        let size = self.config.slot_size as usize;
        fabric.load(self.layout.slot(position), &mut self.slot[..size]);
        slot::open(&self.slot[..size], position)
    }

    // ---- follower ----------------------------------------------------------------------------

    fn scan_bound(&self) -> u32 {
        self.config.pipeline_depth as u32 + self.config.entry_slots_max as u32 + 2
    }

    /// Finds how far the log is decided and chained, then applies up to there.
    fn replay<F: Fabric, S: StateMachine>(&mut self, now: u64, fabric: &mut F, sm: &mut S) {
        if let Some(floor) = self.lapped_by_notice(fabric) {
            self.start_transfer(now, floor, fabric);
            return;
        }
        let mut position = self.applied;
        let mut chain = self.applied_chain;
        let bound = self.scan_bound();
        for _ in 0..bound {
            match self.open_local(fabric, position) {
                Ok(opened) if opened.header.chain_prev == chain => {
                    // A writer's commit point never exceeds the position it wrote; a torn
                    // acceptance record (a rewrite cut short) just carries none.
                    if let Some(accepted) = opened.accepted {
                        self.commit_known = self.commit_known.max(accepted.commit.min(position));
                    }
                    chain = opened.chain;
                    position += 1;
                }
                Err(SlotError::Stale { found }) if found > position => {
                    self.start_transfer(now, position + 1, fabric);
                    return;
                }
                _ => break,
            }
        }
        assert!(position - self.applied <= bound as u64);
        self.backlog = position - self.applied == bound as u64;
        self.read_commit_record(fabric, position, chain);
        let decided_end = self.commit_known.min(position);
        while self.applied < decided_end {
            match self.open_local(fabric, self.applied) {
                Ok(opened) if opened.header.chain_prev == self.applied_chain => {
                    self.apply_slot(opened.header, opened.chain, sm);
                }
                // Rewritten since the scan (by the leader, with the same decided value): retry.
                _ => break,
            }
        }
    }

    /// A leader left a lap notice: the lowest position it can still send is above what this
    /// replica applied, so nobody will send it the positions it lacks. Returns that position.
    fn lapped_by_notice<F: Fabric>(&self, fabric: &mut F) -> Option<u64> {
        let offset = self.layout.lap_notice();
        let mut bytes = [0u8; crate::layout::RECORD_BYTES as usize];
        fabric.load(offset, &mut bytes);
        record::decode(offset, &bytes).filter(|&floor| floor > self.applied)
    }

    /// The commit record vouches for positions below its commit point when this replica's
    /// chain through `commit - 1` is the one it carries.
    fn read_commit_record<F: Fabric>(&mut self, fabric: &mut F, scanned_end: u64, chain: u64) {
        let offset = self.layout.commit_record();
        let mut bytes = [0u8; COMMIT_RECORD_BYTES as usize];
        fabric.load(offset, &mut bytes);
        if let Some((commit, commit_chain)) = decode_commit(offset, &bytes) {
            if commit == scanned_end && commit_chain == chain {
                self.commit_known = self.commit_known.max(commit);
            }
        }
    }

    /// Applies the slot in the scratch buffer (already opened and chained) at `applied`.
    pub(crate) fn apply_slot<S: StateMachine>(
        &mut self,
        header: SlotHeader,
        chain: u64,
        sm: &mut S,
    ) {
        assert_eq!(header.position, self.applied);
        assert_eq!(header.chain_prev, self.applied_chain);
        let capacity = self.config.slot_payload_bytes();
        let frag_len = header.frag_len(capacity) as usize;
        let start = SLOT_HEADER_BYTES as usize;
        let single = header.frag_count == 1;
        let complete = if single {
            self.assembly.active = false;
            true
        } else {
            self.assemble(header, frag_len)
        };
        if complete {
            let command = if single {
                &self.slot[start..start + frag_len]
            } else {
                &self.entry[..header.entry_len as usize]
            };
            let (position, origin) = (header.position, header.origin);
            deliver(
                sm,
                &mut self.queue,
                &mut self.response,
                self.me,
                position,
                origin,
                command,
            );
        }
        self.applied += 1;
        self.applied_chain = chain;
    }

    /// Adds a fragment; true when it completed its command. Fragments out of sequence (a
    /// command cut short by a leader change) are dropped the same way on every replica, because
    /// every replica applies the same decided slots.
    fn assemble(&mut self, header: SlotHeader, frag_len: usize) -> bool {
        let fits =
            header.entry_len as usize <= ENTRY && header.frag_count <= self.config.entry_slots_max;
        if header.frag_index == 0 {
            self.assembly = Assembly {
                active: fits,
                start: header.position,
                start_chain: self.applied_chain,
                origin: header.origin,
                entry_len: header.entry_len,
                next_frag: 0,
                filled: 0,
            };
        }
        let a = &mut self.assembly;
        let in_sequence = a.active
            && a.origin == header.origin
            && a.entry_len == header.entry_len
            && a.next_frag == header.frag_index;
        if !in_sequence {
            a.active = false;
            return false;
        }
        let from = a.filled as usize;
        let start = SLOT_HEADER_BYTES as usize;
        self.entry[from..from + frag_len].copy_from_slice(&self.slot[start..start + frag_len]);
        a.filled += frag_len as u32;
        a.next_frag += 1;
        if a.next_frag < header.frag_count {
            return false;
        }
        assert_eq!(a.filled, header.entry_len);
        a.active = false;
        true
    }
}

/// Applies a complete command and, when this replica submitted it, reports its ticket.
fn deliver<S: StateMachine, const QUEUE: usize>(
    sm: &mut S,
    queue: &mut RequestQueue<QUEUE>,
    response: &mut [u8],
    me: ReplicaId,
    position: u64,
    origin: u64,
    command: &[u8],
) {
    let len = sm.apply(position, command, response).min(response.len());
    let proposer = (origin >> 56) as u8;
    let sequence = origin & ((1 << 56) - 1);
    if proposer == me && queue.mark_decided(sequence) {
        sm.committed(sequence, position, &response[..len]);
        queue.pop_decided();
    }
}
