//! The leader's tenure: one at a time, from the permission grant to the fast path.
//!
//! A tenure goes through these phases (each with a deadline in ticks; missing it aborts the
//! tenure and the background plane asks for permissions again; every tenure in a row that ends
//! before the fast path doubles the next one's deadlines, to 4 times the configured one at most,
//! so that set-up slower than a deadline cannot end tenure after tenure forever; the fast path's
//! stall deadline counts from the moment it starts):
//!
//! 1. `Survey`: read the applied position of every confirmed follower; wait for a majority,
//!    and for the member that ended the previous tenure by being ahead, if one did.
//! 2. `CatchUpSelf`: if a follower is ahead, read the decided slots this replica lacks from the
//!    most advanced one (bulk, at most two reads), check that they chain, apply them.
//! 3. Followers become active members: each gets, in at most two writes, every slot from its
//!    applied position to the leader's write position (bulk catch-up). Late grantors go through
//!    the same path whenever their ack arrives.
//! 4. `ReadMinProposal`, `WriteMinProposal`: read both min-proposal records of a majority, pick
//!    a ballot above all of them (unique: `round * 8 + id`), write it over the older record.
//! 5. `ReadSlot` / `Adopting`: read the slot at the first undecided position from the prepared
//!    members; if any holds a value, adopt the one with the highest ballot (rewritten under this
//!    ballot), wait until it is decided, and repeat at the next position.
//!    The adopted value goes only to members whose copy of that position the slot read
//!    returned, and to each by the write that leaves the record holding its copy's highest
//!    ballot alone (see `slot`, "torn rewrites", and `Adoption`); the others get it once
//!    it is decided.
//! 6. `Streaming` (the fast path, no more prepare until the tenure ends): every poll encodes
//!    queued commands into the leader's own log and posts, per member, one write of everything
//!    not yet sent. A position is decided when a majority (leader included) holds it; the
//!    leader applies it and reports the command's ticket if the decided command is its own.
//!
//! Its parts, one module each: [`survey`] (phases 1 to 3), [`prepare`] (4 and 5),
//! [`fast_path`] (6), [`admission`] (recovering replicas become voters again: the rules the
//! prepare's counting follows, and why they are safe) and [`recycling`] (how far the fast path
//! may write, and what a replica left a lap behind gets).
//!
//! # Invariants
//! - `prepared` and, outside a `full` prepare, the voters of `replies` are members whose
//!   standing was nonzero in this tenure's read; `counted` holds `replies` at the promise write
//!   and late voters; a reset connection clears the member's bits in all three (what it
//!   answered may come from an earlier life).
//! - `applied <= next`, `next - applied < ACK_WINDOW`; `acks[p % ACK_WINDOW]` describes `p` only
//!   for `applied <= p < next`, and always includes the leader itself; so does
//!   `proposals[p % ACK_WINDOW]` for such `p >= fresh_from`, which `propose` wrote, and whose
//!   chain is the one the own log's slot of `p` yields (debug builds check it at the apply).
//! - A position is written with this tenure's ballot only after that ballot was written to a
//!   majority's min-proposal records (unless the tenure adopted nothing and went straight to the
//!   fast path with the ballot it prepared).
//! - Rewrites (positions below `fresh_from`) never overwrite the only intact record of a copy's
//!   highest ballot: a decided position's slot is written only after its decided mark landed
//!   (`fenced`), an undecided one only as its member's `Adoption` plan says; the own log's
//!   copies that catch-up reads may overwrite keep their ballot in their adoption records.
//! - A member is sent positions in increasing order; its acks count only for positions this
//!   tenure wrote to it.
//! - Any `Denied` completion of this tenure aborts it: another leader was granted.

pub mod admission;
pub mod fast_path;
pub mod prepare;
pub mod quiet;
pub mod recycling;
pub mod survey;

use crate::config::REPLICAS_MAX;
use crate::fabric::{Fabric, ReplicaId, Status};
use crate::links::{Answers, Inbox, Links, Pending, Posted, Readiness, Work};
use crate::log::Log;
use crate::shared::Shared;
use crate::state_machine::StateMachine;
use crate::wrid::Kind;
use fast_path::Serve;
use prepare::{Adoption, Promises};

/// Positions the leader may have written but not yet decided, plus one.
pub(crate) const ACK_WINDOW: usize = 128;
const _: () = assert!(
    (crate::config::PIPELINE_DEPTH_MAX as usize - 1 + crate::config::ENTRY_SLOTS_MAX as usize)
        < ACK_WINDOW
);
/// Rewrites keep a copy's highest ballot intact (see `post_log_writes` and `slot`). The planted
/// defect `bug-torn-rewrite` writes no decided marks or adoption records and rewrites every slot
/// in one write, as before layout 5: a rewrite cut by a revoke can then leave a member's only
/// copy of a decided value with no intact ballot, which a prepare counts as nothing accepted.
const MARKED_REWRITES: bool = !cfg!(feature = "bug-torn-rewrite");
/// Reads of one member's copy of the slot a prepare reads: the slot, its adoption record, its
/// decided mark.
const SLOT_READS: u8 = 3;
const TAG_SURVEY: u32 = 0;
/// Slots a bulk catch-up applies per poll.
const CATCH_UP_APPLY_BATCH: u64 = 256;
const TAG_RECYCLE: u32 = 1;
/// A promise read of a recount (rule 2 of "Recovery"), not of the prepare.
const TAG_RECOUNT: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemberState {
    Absent,
    Joining,
    Surveying,
    Surveyed {
        applied: u64,
    },
    /// Joined after the prepare was posted: its min-proposal records are being read.
    Checking,
    Active,
    Lost {
        retry_at: u64,
    },
}

impl MemberState {
    fn phase(self) -> MemberPhase {
        match self {
            MemberState::Absent => MemberPhase::Absent,
            MemberState::Joining => MemberPhase::Joining,
            MemberState::Surveying => MemberPhase::Surveying,
            MemberState::Surveyed { .. } => MemberPhase::Surveyed,
            MemberState::Checking => MemberPhase::Checking,
            MemberState::Active => MemberPhase::Active,
            MemberState::Lost { .. } => MemberPhase::Lost,
        }
    }
}

/// Where a peer stands in the current tenure (see [`MemberStatus`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MemberPhase {
    /// It has not granted the tenure.
    #[default]
    Absent,
    /// It granted; its applied position is to be read.
    Joining,
    /// Its applied position is being read.
    Surveying,
    /// Its applied position is known.
    Surveyed,
    /// It joined after the prepare began: its promises are being read.
    Checking,
    /// It is sent the log.
    Active,
    /// Its connection was reset; it is surveyed again after a pause.
    Lost,
}

impl MemberPhase {
    /// The phase's name, for logs and status lines.
    pub const fn name(self) -> &'static str {
        match self {
            MemberPhase::Absent => "absent",
            MemberPhase::Joining => "joining",
            MemberPhase::Surveying => "surveying",
            MemberPhase::Surveyed => "surveyed",
            MemberPhase::Checking => "checking",
            MemberPhase::Active => "active",
            MemberPhase::Lost => "lost",
        }
    }
}

impl core::fmt::Display for MemberPhase {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a tenure is (see [`LeaderStatus`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TenurePhase {
    /// Reading the applied positions of the replicas that granted it.
    Survey,
    /// Reading the decided positions it lacks from the most advanced one.
    CatchUp,
    /// Reading the min-proposal records of a quorum.
    ReadMinProposal,
    /// Writing its ballot into them.
    WriteMinProposal,
    /// Reading the slot at its first undecided position.
    ReadSlot,
    /// Waiting for the value it adopted there to be decided.
    Adopting,
    /// The fast path.
    Streaming,
}

impl TenurePhase {
    /// The phase's name, for logs and status lines.
    pub const fn name(self) -> &'static str {
        match self {
            TenurePhase::Survey => "survey",
            TenurePhase::CatchUp => "catch-up",
            TenurePhase::ReadMinProposal => "read min proposal",
            TenurePhase::WriteMinProposal => "write min proposal",
            TenurePhase::ReadSlot => "read slot",
            TenurePhase::Adopting => "adopting",
            TenurePhase::Streaming => "streaming",
        }
    }
}

impl core::fmt::Display for TenurePhase {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Member {
    state: MemberState,
    /// Behind by more than a lap (this log no longer holds what it needs). It gets no log
    /// writes (writing older positions over its slots could destroy values a newer leader
    /// decided there), only a lap notice in its log header, after which it halts. It does
    /// not hold recycling back.
    lapped: bool,
    /// When to (re)send the lap notice.
    notice_at: u64,
    sent: u64,
    /// The commit point last written to its commit record.
    commit_sent: u64,
    /// When its commit record was last written.
    commit_sent_at: u64,
    min_record: u32,
    recycle_read: bool,
    /// Its promises as last read in this tenure.
    promises: Promises,
    /// A standing write to it is in flight.
    standing_inflight: bool,
    /// A counted recovering member is admitted once it applied this (and `streaming_from`).
    admit_at: u64,
    /// Decided rewrites (see `post_log_writes`): the decided marks of the positions from
    /// `sent` up to this landed in its log, so those slots may be rewritten.
    fenced: u64,
    /// Decided marks posted up to here.
    fence_posted: u64,
    /// How the value adopted at a position goes to it, as its copy read in the prepare says.
    adoption: Option<(u64, Adoption)>,
}

impl Member {
    const NEW: Member = Member {
        state: MemberState::Absent,
        lapped: false,
        notice_at: 0,
        sent: 0,
        commit_sent: 0,
        commit_sent_at: 0,
        min_record: 0,
        recycle_read: false,
        promises: Promises::NONE,
        standing_inflight: false,
        admit_at: 0,
        fenced: 0,
        fence_posted: 0,
        adoption: None,
    };

    /// It will be sent everything from `from` again: nothing above is fenced yet, and what
    /// the prepare read of it may have changed under writes of this tenure cut short.
    fn resend_from(&mut self, from: u64) {
        self.sent = from;
        self.fence_from(from);
        self.adoption = None;
    }

    /// Decided marks are fenced from `from` on only.
    fn fence_from(&mut self, from: u64) {
        self.fenced = from;
        self.fence_posted = from;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Survey,
    CatchUpSelf { upto: u64, reads_left: u8 },
    ReadMinProposal,
    WriteMinProposal,
    ReadSlot { position: u64 },
    Adopting { position: u64 },
    Streaming,
}

/// One tenure of this replica as leader: it exists only while the background plane names this
/// replica leader for it, from the grant to the tenure's end, and leader-only code runs only
/// through it ([`crate::ReplicationPlane::tenure`] shows it).
///
/// Its parts, in the order a tenure goes through them (the module docs say why each is safe):
/// - [`survey`]: the applied positions of the replicas that granted it, and the bulk catch-up
///   of what this replica lacks;
/// - [`prepare`]: min proposals, the slot reads at the first undecided position, and the
///   adoption of what they found;
/// - [`admission`]: which members' acks count, and when a replica that restarted with an empty
///   log becomes a voter again;
/// - [`fast_path`]: proposing queued commands, the per-member log writes (fresh positions and
///   rewrites), decisions and the commit record;
/// - [`recycling`]: reading the replicas' applied positions, holding the log back for the
///   slowest live one, lap notices and repairs of members that lost a slot;
/// - [`quiet`]: the gate that lets an idle leader's polls skip the work they would not do.
#[derive(Clone, PartialEq, Eq)]
pub struct Tenure {
    tenure: u32,
    phase: Phase,
    deadline: u64,
    ballot: u64,
    ballot_floor: u64,
    members: [Member; REPLICAS_MAX as usize],
    replies: u8,
    /// Per member: how many of the `SLOT_READS` reads of the current slot read completed.
    reads_done: [u8; REPLICAS_MAX as usize],
    prepared: u8,
    next: u64,
    next_chain: u64,
    acks: [u8; ACK_WINDOW],
    /// What `propose` wrote at each position from `fresh_from` on, by position modulo
    /// `ACK_WINDOW` (for `applied <= p < next`): the leader applies it from its queue.
    proposals: [Proposal; ACK_WINDOW],
    applied_of: [u64; REPLICAS_MAX as usize],
    /// When each peer's applied position was last seen to rise.
    applied_moved_at: [u64; REPLICAS_MAX as usize],
    recycle_at: u64,
    commit_inflight: u8,
    /// When the first undecided position last moved (or nothing was undecided).
    progress_at: u64,
    /// When the tenure started.
    started_at: u64,
    /// The tenure must end; `poll` returns before the next step, and the plane ends it.
    doomed: bool,
    /// It ends because this replica needs a snapshot of positions from here on.
    snapshot_from: Option<u64>,
    /// When this tenure was last polled (see `discount_own_pause`).
    polled_at: u64,
    /// This replica's own life is a voter (its standing is nonzero).
    voter: bool,
    /// The prepare counts every replica (rule 4 of "Recovery").
    full: bool,
    /// Members whose write acks count toward decisions (rule 2).
    counted: u8,
    /// Where the prepare found nothing accepted: recovering members are admitted once they
    /// applied it (rule 3).
    streaming_from: Option<u64>,
    /// A recount under way (rule 2): the member, the voters that answered, when it started.
    recount: Option<Recount>,
    /// On the fast path, once computed: the lowest position from which the own log holds
    /// every position below `next` (see `oldest_held`). Only `propose` writes the own log on
    /// the fast path, and it overwrites the oldest positions only: `next - slot_count` bounds
    /// the rest.
    held_from: Option<u64>,
    /// Polls before this time find nothing to do while the leader's view (`quiet_confirmed`
    /// granted) and the state stay as the last full poll left them (see `quiet`); 0: no gate.
    quiet_until: u64,
    quiet_confirmed: u8,
    /// A member that applied positions this replica had not when it ended the last tenure
    /// (`survey`): this tenure's survey waits for its answer, until the survey's deadline.
    awaited: Option<ReplicaId>,
    /// This tenure ends because of that: a surveyed member had applied more than this replica,
    /// too late to catch up from it.
    ahead: Option<ReplicaId>,
}

/// A position that `propose` wrote: the command's sequence when it took the slot alone
/// (0 for a fragment of a larger one, which is applied from the own log), and the chain the
/// slot yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Proposal {
    sequence: u64,
    chain: u64,
}

/// A recount of the voters' promises for a recovering member that joined after the prepare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Recount {
    member: ReplicaId,
    answered: u8,
    started_at: u64,
}

/// What the leader knows of one peer in the current tenure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MemberStatus {
    /// The peer receives log writes in this tenure.
    pub active: bool,
    /// More than a lap behind: it is sent the current window only and will halt.
    pub lapped: bool,
    /// Positions below this were posted to it.
    pub sent: u64,
    /// Its applied position, as last read.
    pub applied: u64,
    /// Its standing, as last read in this tenure, says it is a voter.
    pub voter: bool,
    /// Where it stands in this tenure.
    pub state: MemberPhase,
}

/// The leader's view of its tenure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LeaderStatus {
    /// The tenure.
    pub tenure: u32,
    /// Its ballot (0 before the prepare chose one).
    pub ballot: u64,
    /// The next position it writes.
    pub next: u64,
    /// Where the tenure is.
    pub phase: TenurePhase,
    /// Per peer (this replica's own entry is unused).
    pub members: [MemberStatus; REPLICAS_MAX as usize],
    /// The replicas that granted this tenure (acked its permission request), as a bit mask;
    /// this replica's own bit included.
    pub confirmed: u8,
}

impl Tenure {
    /// The tenure's number (the background plane's count of tenures).
    pub fn number(&self) -> u32 {
        self.tenure
    }

    /// Its ballot (0 before the prepare chose one).
    pub fn ballot(&self) -> u64 {
        self.ballot
    }

    /// Where it is.
    pub fn phase(&self) -> TenurePhase {
        match self.phase {
            Phase::Survey => TenurePhase::Survey,
            Phase::CatchUpSelf { .. } => TenurePhase::CatchUp,
            Phase::ReadMinProposal => TenurePhase::ReadMinProposal,
            Phase::WriteMinProposal => TenurePhase::WriteMinProposal,
            Phase::ReadSlot { .. } => TenurePhase::ReadSlot,
            Phase::Adopting { .. } => TenurePhase::Adopting,
            Phase::Streaming => TenurePhase::Streaming,
        }
    }

    /// True once the prepare is done and it replicates on the fast path.
    #[inline]
    pub fn fast_path(&self) -> bool {
        self.phase == Phase::Streaming
    }

    /// This replica's own life is a voter (it was, or the tenure admitted it).
    pub(crate) fn voter(&self) -> bool {
        self.voter
    }

    /// The tenure at work for one poll, over the parts of the replication plane it drives.
    pub(crate) fn leading<'a, 's, const SLOT: usize, const ENTRY: usize, const QUEUE: usize>(
        &'a mut self,
        log: &'a mut Log<SLOT, ENTRY, QUEUE>,
        links: &'a mut Links,
        inbox: &'a mut Inbox,
        shared: &'s Shared,
        timeout: u64,
    ) -> Leading<'a, 's, SLOT, ENTRY, QUEUE> {
        Leading {
            t: self,
            log,
            links,
            inbox,
            shared,
            timeout,
        }
    }

    /// The leader's view of the tenure; `confirmed` is who granted it.
    pub(crate) fn status(&self, confirmed: u8) -> LeaderStatus {
        let mut members = [MemberStatus::default(); REPLICAS_MAX as usize];
        for (status, (member, applied)) in members
            .iter_mut()
            .zip(self.members.iter().zip(self.applied_of))
        {
            *status = MemberStatus {
                active: member.state == MemberState::Active,
                lapped: member.lapped,
                sent: member.sent,
                applied,
                voter: member.promises.voter,
                state: member.state.phase(),
            };
        }
        LeaderStatus {
            tenure: self.tenure,
            ballot: self.ballot,
            next: self.next,
            phase: self.phase(),
            members,
            confirmed,
        }
    }

    /// A tenure starting at `now`, whose survey must be answered within `timeout` ticks, and
    /// waits for `awaited` (the member that ended the last tenure by being ahead, if one did).
    pub(crate) fn new(
        tenure: u32,
        now: u64,
        (applied, chain): (u64, u64),
        voter: bool,
        timeout: u64,
        awaited: Option<ReplicaId>,
    ) -> Tenure {
        Tenure {
            tenure,
            phase: Phase::Survey,
            deadline: now + timeout,
            ballot: 0,
            ballot_floor: 0,
            members: [Member::NEW; REPLICAS_MAX as usize],
            replies: 0,
            reads_done: [0; REPLICAS_MAX as usize],
            prepared: 0,
            next: applied,
            next_chain: chain,
            acks: [0; ACK_WINDOW],
            proposals: [Proposal {
                sequence: 0,
                chain: 0,
            }; ACK_WINDOW],
            applied_of: [0; REPLICAS_MAX as usize],
            // No sign of life before one is seen: a peer this tenure cannot read (crashed) must
            // not hold the log back for `op_timeout_ticks` after every fail-over.
            applied_moved_at: [0; REPLICAS_MAX as usize],
            recycle_at: now,
            commit_inflight: 0,
            progress_at: now,
            started_at: now,
            doomed: false,
            snapshot_from: None,
            polled_at: now,
            voter,
            full: false,
            counted: 0,
            streaming_from: None,
            recount: None,
            held_from: None,
            quiet_until: 0,
            quiet_confirmed: 0,
            awaited,
            ahead: None,
        }
    }

    /// The member that ended this tenure by having applied more than this replica, too late
    /// for its survey (see `survey`).
    pub(crate) fn ended_by_member_ahead(&self) -> Option<ReplicaId> {
        self.ahead
    }

    /// True once members may be sent log writes (this replica's log is up to date).
    fn members_open(&self) -> bool {
        !matches!(self.phase, Phase::Survey | Phase::CatchUpSelf { .. })
    }

    /// The first position this tenure writes fresh (its own proposals, never held by a member
    /// before): where its fast path started. Everything below is a rewrite.
    fn fresh_from(&self) -> u64 {
        self.streaming_from.unwrap_or(u64::MAX)
    }
}

/// Why a tenure must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// It cannot go on (a write was refused, a deadline passed, it stalled, a newer leader
    /// prepared): the background plane asks for permissions again.
    Doomed,
    /// This replica needs positions from `floor` on that no log holds: it installs a snapshot.
    Lapped {
        /// The first position it needs.
        floor: u64,
    },
}

/// A tenure at work for one poll: the tenure with the own log, the connections and the
/// shared atomics. Every leader step is a method of it, so none runs without a tenure.
pub(crate) struct Leading<'a, 's, const SLOT: usize, const ENTRY: usize, const QUEUE: usize> {
    t: &'a mut Tenure,
    log: &'a mut Log<SLOT, ENTRY, QUEUE>,
    links: &'a mut Links,
    inbox: &'a mut Inbox,
    shared: &'s Shared,
    /// The deadline of a phase or an operation, in ticks (see `phase_timeout`).
    timeout: u64,
}

fn count(mask: u8) -> u8 {
    mask.count_ones() as u8
}

impl<const SLOT: usize, const ENTRY: usize, const QUEUE: usize>
    Leading<'_, '_, SLOT, ENTRY, QUEUE>
{
    fn quorum_with(&self, replies: u8) -> bool {
        1 + count(replies) >= self.log.config.quorum()
    }

    /// Marks the tenure for its end; `poll` returns before the next step.
    fn doom(&mut self) {
        self.t.doomed = true;
    }

    /// This replica needs positions from `floor` on that no log holds any more: the tenure
    /// ends, and the plane installs a snapshot instead.
    fn need_snapshot(&mut self, floor: u64) {
        self.t.snapshot_from = Some(floor);
        self.doom();
    }

    /// True while the tenure goes on.
    fn carry_on(&self) -> bool {
        !self.t.doomed
    }

    /// One round of leader work; says how the tenure ends, when it must.
    pub(crate) fn poll<F: Fabric, S: StateMachine>(
        mut self,
        now: u64,
        fabric: &mut F,
        sm: &mut S,
    ) -> Option<End> {
        self.lead(now, fabric, sm);
        match (self.t.doomed, self.t.snapshot_from) {
            (false, _) => None,
            (true, None) => Some(End::Doomed),
            (true, Some(floor)) => Some(End::Lapped { floor }),
        }
    }

    fn lead<F: Fabric, S: StateMachine>(&mut self, now: u64, fabric: &mut F, sm: &mut S) {
        let applied_before = self.log.applied;
        let posts_before = self.links.posts();
        self.t.quiet_until = 0;
        self.discount_own_pause(now);
        self.drain(now, fabric);
        let posts = self.links.posts();
        self.expire_operations(now, fabric);
        if !self.carry_on() {
            return;
        }
        self.admit_members(now, fabric);
        if !self.carry_on() {
            return;
        }
        self.step_phase(now, fabric, sm);
        if !self.carry_on() || !self.t.members_open() {
            return;
        }
        if self.t.fast_path() {
            self.propose(now, fabric);
        }
        let deferred = self.post_log_writes(now, fabric, 0, Serve::UntilDecidable);
        // A fabric that completes writes within microseconds (shared memory, a NIC next door)
        // often has them done already: taking their completions now decides the positions in
        // this poll rather than the next. A poll that posted nothing has nothing new to take.
        if self.links.posts() != posts {
            self.drain(now, fabric);
        }
        if !self.carry_on() {
            return;
        }
        self.advance_commit(now, fabric, sm);
        if let Some(from) = deferred {
            // Members beyond the majority that decided: their writes wait only for the apply.
            self.post_log_writes(now, fabric, from, Serve::All);
        }
        if self.stalled(now) {
            // No majority took a position in time: the grants may be gone without a write
            // having been refused yet. Ask again.
            self.doom();
        }
        if !self.carry_on() {
            return;
        }
        self.post_commit_record(now, fabric, self.log.applied != applied_before);
        self.tend_members(now, fabric);
        if self.links.posts() == posts_before && self.log.applied == applied_before {
            self.arm_quiet(); // A poll that did nothing: the next ones may not need to.
        }
    }

    /// A leader that was not polled for a while (descheduled, stopped) watched nothing
    /// meanwhile: its own gap is not its peers' silence. The recency marks move forward by the
    /// gap, so that recycling never passes a replica only because the leader could not read it
    /// (seed 316614 halted a correct replica that way), and a stall is not called for the
    /// leader's own pause.
    fn discount_own_pause(&mut self, now: u64) {
        let read_period = self.log.config.detector.read_period_ticks as u64;
        let leader = &mut *self.t;
        let gap = now.saturating_sub(leader.polled_at);
        leader.polled_at = now;
        if gap <= read_period {
            return;
        }
        for at in leader.applied_moved_at.iter_mut().filter(|at| **at != 0) {
            *at = (*at + gap).min(now);
        }
        leader.progress_at = (leader.progress_at + gap).min(now);
    }

    /// Takes the completions of this tenure's operations (those of anything else are dropped):
    /// first of the writes done within their post, to the last (those posted meanwhile
    /// included), then the fabric's.
    // The check inlined into `lead`, which drains twice a poll, mostly finding nothing the first
    // time (see `mu-bench instructions`).
    #[inline(always)]
    fn drain<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        if self.links.any_done() || !self.inbox.empty(fabric) {
            self.drain_now(now, fabric);
        }
    }

    fn drain_now<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        while let Some((peer, pending, status)) = self.links.take_done() {
            self.completed(now, peer, pending, status, fabric);
        }
        if self.inbox.empty(fabric) {
            return; // Most polls: one look at the fabric, no drain to set up.
        }
        let (replicas, me) = (self.log.config.replica_count, self.log.me);
        while let Some((id, status)) = self.inbox.next(fabric, replicas, me) {
            if let Some(pending) = self.links.take(id, status) {
                self.completed(now, id.peer, pending, status, fabric);
            }
        }
    }

    /// An operation `pending` to `peer` ended with `status`: `complete` it if this tenure
    /// posted it. The fast path's log write is acknowledged here, without the call (the
    /// `WriteLog` arm of `complete` does the same).
    #[inline(always)]
    fn completed<F: Fabric>(
        &mut self,
        now: u64,
        peer: ReplicaId,
        pending: Pending,
        status: Status,
        fabric: &mut F,
    ) {
        if pending.tenure != self.t.tenure {
            return;
        }
        if pending.kind == Kind::WriteLog && status == Status::Ok {
            self.ack_range(peer, pending.start, pending.end);
        } else {
            self.complete(now, peer, pending, status, fabric);
        }
    }

    /// Resets the connection to `peer`: what was outstanding on it is dropped, so a member of
    /// this tenure must be synced again from its applied position.
    ///
    /// A broken connection (an operation failed) still delivers what is outstanding on it,
    /// failed: that is kept until it drained (the reset happens at the next post, or when it
    /// takes too long, in `expire_operations`), because one of those completions may be the
    /// `Denied` that must end the tenure.
    fn reset_connection<F: Fabric>(&mut self, now: u64, peer: ReplicaId, fabric: &mut F) {
        if self.links.readiness(peer) == Readiness::Draining {
            self.lose_member(now, peer);
            return;
        }
        self.drop_connection(now, peer, fabric);
    }

    /// Resets the connection to `peer` at once, dropping what is outstanding on it.
    fn drop_connection<F: Fabric>(&mut self, now: u64, peer: ReplicaId, fabric: &mut F) {
        let tenure = self.t.tenure;
        let dropped_catch_up = self
            .links
            .outstanding(peer)
            .any(|pending| pending.tenure == tenure && pending.kind == Kind::ReadLog);
        self.links.drop(peer, fabric);
        if dropped_catch_up {
            self.doom(); // The catch-up source went away: start over with a new tenure.
            return;
        }
        self.lose_member(now, peer);
    }

    /// `peer` takes no part in this tenure until it rejoins (read again from scratch).
    fn lose_member(&mut self, now: u64, peer: ReplicaId) {
        let retry_at = now + self.log.config.permission_retry_ticks as u64;
        let leader = &mut *self.t;
        let member = &mut leader.members[peer as usize];
        if !matches!(member.state, MemberState::Absent | MemberState::Lost { .. }) {
            member.state = MemberState::Lost { retry_at };
        }
        member.recycle_read = false;
        // What it answered or took before the reset may come from another life of it (a
        // restart breaks every connection to it): it is read again when it rejoins.
        member.promises = Promises::NONE;
        member.standing_inflight = false;
        member.admit_at = 0;
        member.adoption = None;
        leader.replies &= !(1 << peer);
        leader.prepared &= !(1 << peer);
        leader.counted &= !(1 << peer);
        leader.commit_inflight &= !(1 << peer);
        if let Some(recount) = &mut leader.recount {
            recount.answered &= !(1 << peer);
            if recount.member == peer {
                leader.recount = None;
            }
        }
    }

    /// Posts an operation for this tenure; false when it could not be posted now. A log write
    /// the fabric did successfully within its post is acknowledged at once; any other answer
    /// waits in the done list for the drain.
    #[allow(clippy::too_many_arguments)]
    fn post<F: Fabric>(
        &mut self,
        now: u64,
        fabric: &mut F,
        peer: ReplicaId,
        kind: Kind,
        tag: u32,
        range: (u64, u64),
        local: u32,
        remote: u32,
        len: u32,
    ) -> bool {
        match self.links.readiness(peer) {
            // What is outstanding completes first (a broken connection fails it), and says why
            // it broke: a reset now would drop a `Denied` that must end the tenure.
            Readiness::Draining => return false,
            Readiness::Broken => {
                let state = self.t.members[peer as usize].state;
                self.reset_connection(now, peer, fabric);
                if self.t.members[peer as usize].state != state {
                    return false; // The reset changed what this post was for.
                }
            }
            Readiness::Open => {}
        }
        let work = Work {
            kind,
            tag,
            range,
            local,
            remote,
            len,
        };
        self.post_open(now, fabric, peer, work)
    }

    /// `post` on a connection that takes posts (`Readiness::Open`).
    #[inline(always)]
    fn post_open<F: Fabric>(
        &mut self,
        now: u64,
        fabric: &mut F,
        peer: ReplicaId,
        work: Work,
    ) -> bool {
        debug_assert_eq!(self.links.readiness(peer), Readiness::Open);
        let answers = match (self.inbox.idle(), work.kind) {
            (false, _) => Answers::Never,
            // Its completion is an ack and nothing else (`completed`): taken now, as in a drain.
            (true, Kind::WriteLog) => Answers::Settle,
            (true, _) => Answers::List,
        };
        match self
            .links
            .post(now, fabric, peer, self.t.tenure, work, answers)
        {
            Posted::Refused => false,
            Posted::Pending => true,
            Posted::Done => {
                self.ack_range(peer, work.range.0, work.range.1);
                true
            }
        }
    }

    /// An operation past its deadline resets its connection; a member that had work of this
    /// tenure outstanding there is lost (and rejoins later).
    fn expire_operations<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        for peer in self.log.others() {
            if self.links.expired(peer, now, self.timeout) {
                self.drop_connection(now, peer, fabric);
            }
        }
    }

    fn is_active(&self, peer: ReplicaId) -> bool {
        let leader = &*self.t;
        leader.members[peer as usize].state == MemberState::Active
    }

    fn active_members(&self) -> u8 {
        let leader = &*self.t;
        let mut mask = 0;
        for peer in self.log.others() {
            if leader.members[peer as usize].state == MemberState::Active {
                mask |= 1 << peer;
            }
        }
        mask
    }

    fn complete<F: Fabric>(
        &mut self,
        now: u64,
        peer: ReplicaId,
        pending: Pending,
        status: Status,
        fabric: &mut F,
    ) {
        let ok = status == Status::Ok;
        if status == Status::Denied {
            // Someone revoked this leader: another replica was granted.
            self.doom();
            return;
        }
        let bit = 1u8 << peer;
        match pending.kind {
            Kind::ReadApplied => self.complete_applied_read(now, peer, pending.tag, ok, fabric),
            Kind::ReadLog => {
                let leader = &mut *self.t;
                match (&mut leader.phase, ok) {
                    (Phase::CatchUpSelf { reads_left, .. }, true) => *reads_left -= 1,
                    _ => self.doom(),
                }
            }
            Kind::WriteLog if ok => self.ack_range(peer, pending.start, pending.end),
            Kind::ReadMinProposal if ok && pending.tag == TAG_RECOUNT => {
                self.complete_recount_read(peer, fabric)
            }
            Kind::ReadMinProposal if ok => self.complete_min_proposal_read(peer, fabric),
            Kind::WriteMinProposal if ok => self.t.prepared |= bit,
            Kind::ReadSlot | Kind::ReadAdoption | Kind::ReadDecided if ok => {
                let leader = &mut *self.t;
                let current = Phase::ReadSlot {
                    position: pending.start,
                };
                if leader.phase == current {
                    let done = &mut leader.reads_done[peer as usize];
                    *done += 1;
                    assert!(*done <= SLOT_READS);
                    if *done == SLOT_READS {
                        leader.replies |= bit;
                    }
                }
            }
            Kind::WriteAdoption if ok => self.ack_range(peer, pending.start, pending.end),
            Kind::WriteDecided if ok => {
                let member = &mut self.t.members[peer as usize];
                if pending.start <= member.fenced {
                    member.fenced = member.fenced.max(pending.end);
                }
            }
            Kind::WriteCommit if ok => self.t.commit_inflight &= !bit,
            Kind::WriteStanding if ok => self.complete_standing(peer),
            Kind::WriteLapNotice if ok => {}
            _ => self.reset_connection(now, peer, fabric),
        }
    }

    fn ack_range(&mut self, peer: ReplicaId, start: u64, end: u64) {
        let applied = self.log.applied;
        let leader = &mut *self.t;
        if leader.counted & (1 << peer) == 0 {
            return; // Rule 2 of "Recovery": it is sent the log, but does not vote.
        }
        let from = start.max(applied);
        let to = end.min(leader.next);
        for position in from..to {
            leader.acks[(position % ACK_WINDOW as u64) as usize] |= 1 << peer;
        }
    }

    fn step_phase<F: Fabric, S: StateMachine>(&mut self, now: u64, fabric: &mut F, sm: &mut S) {
        let leader = &*self.t;
        let (phase, deadline, prepared) = (leader.phase, leader.deadline, leader.prepared);
        let late = now > deadline;
        match phase {
            Phase::Survey => self.step_survey(now, fabric, late),
            Phase::CatchUpSelf { upto, reads_left } => {
                if reads_left == 0 {
                    self.finish_catch_up(now, upto, fabric, sm);
                } else if late {
                    self.doom();
                }
            }
            Phase::ReadMinProposal => self.step_promises(now, late, fabric),
            Phase::WriteMinProposal if self.promised(prepared) => {
                let next = self.t.next;
                self.read_slot(now, next, fabric);
            }
            Phase::ReadSlot { position } => self.choose_value(now, position, late, fabric),
            Phase::Adopting { position } if self.log.applied > position => {
                let next = self.t.next;
                self.read_slot(now, next, fabric);
            }
            Phase::Streaming => {}
            _ if late => self.doom(),
            _ => {}
        }
    }

    /// Every replica but this one.
    fn everyone_else(&self) -> u8 {
        self.log.others().fold(0u8, |mask, peer| mask | 1 << peer)
    }
}

/// Splits the positions `[start, end)` of a ring of `slot_count` slots into at most two
/// contiguous pieces.
// Inlined: every log write of the fast path goes through it (see `mu-bench instructions`).
#[inline]
fn ring_pieces(start: u64, end: u64, slot_count: u64) -> impl Iterator<Item = (u64, u64)> {
    assert!(start <= end && end - start <= slot_count);
    let boundary = start - crate::layout::ring_index(start, slot_count) + slot_count;
    let first = (start, end.min(boundary));
    let second = (boundary, end);
    [first, second].into_iter().filter(|(a, b)| a < b)
}
