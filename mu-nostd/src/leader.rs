//! The leader's replicator: one tenure at a time, from the permission grant to the fast path.
//!
//! A tenure goes through these phases (each with a deadline in ticks; missing it aborts the
//! tenure and the background plane asks for permissions again; every tenure in a row that ends
//! before the fast path doubles the next one's deadlines, to 4 times the configured one at most,
//! so that set-up slower than a deadline cannot end tenure after tenure forever; the fast path's
//! stall deadline counts from the moment it starts):
//!
//! 1. `Survey`: read the applied position of every confirmed follower; wait for a majority.
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
//!    ballot alone (see `slot`, "torn rewrites", and [`Adoption`]); the others get it once
//!    it is decided.
//! 6. `Streaming` (the fast path, no more prepare until the tenure ends): every poll encodes
//!    queued commands into the leader's own log and posts, per member, one write of everything
//!    not yet sent. A position is decided when a majority (leader included) holds it; the
//!    leader applies it and reports the command's ticket if the decided command is its own.
//!
//! Recycling: the leader writes position `p` only when every replica showing a sign of life (a
//! moving heartbeat, or a rising applied position) has applied `p - slot_count` (it reads their
//! published applied positions every `recycle_period_ticks`); a failed replica does not hold the
//! log back. A replica that comes back more than a lap behind gets no log writes (writing older
//! positions over its slots could destroy values a newer leader decided there) but a lap notice
//! in its log header (under its grant, so a deposed leader cannot halt it), and halts (it needs a state transfer); it does not hold the log back
//! either.
//!
//! Recovery: a replica's memory is its acceptor state, so a replica that restarts with a fresh
//! region has forgotten its promises and accepted values. Each life of a replica has a standing
//! record in its log area (see [`crate::layout`]): zero (a fresh region) while it is recovering,
//! else the ballot of the tenure that admitted it. The rules:
//! 1. The prepare (min-proposal read, promise write, slot reads) counts voters only, and needs a
//!    quorum of them with this replica among them.
//! 2. A member's write acks count toward decisions only if it answered this tenure's promise
//!    read during the prepare (`counted`), or if it joined later as a voter whose promise is not
//!    above this tenure's ballot. A recovering member that joins later is sent the log but
//!    does not count until a recount: a fresh promise read of a quorum of voters, posted after
//!    it joined, finds none above this tenure's ballot (else the tenure ends). Its earlier life
//!    may have promised a higher ballot than this one; the recount proves it did not.
//! 3. A counted recovering member is admitted (its standing set to this tenure's ballot) once
//!    it has applied `admit_at`: `streaming_from`, the position where this tenure's prepare
//!    found nothing accepted and went to the fast path, or for a recounted member the position
//!    this tenure was writing at the recount, whichever is higher.
//! 4. With too few voters for a quorum, a tenure whose promise read was answered by all `n`
//!    replicas prepares with all of them (`full`: promises to all, every slot read from all)
//!    and admits them by rule 3; this also forms a new cluster, whose regions are all fresh.
//!
//! Why this is safe (crash faults; a lost life counts as a failure until its replica is
//! admitted again, so at most `n - quorum` replicas are lost or recovering at once):
//! - A prepare of rule 1 finds every decided value: a decided value is held by its accept
//!   quorum less the lives lost since, and a quorum of the other replicas intersects that set
//!   (`2 * quorum > n`). A prepare of rule 4 reads everyone, so it meets a holder too.
//! - Its ballot is above every promise a lost life made: such a promise was written by a
//!   prepare whose quorum, less the lost replica, intersects this prepare's voters, which
//!   carry that ballot or higher; and a lost life that answered this prepare's read had died
//!   before this tenure chose its ballot. So a member counted by rule 2 never accepts against
//!   a promise of its earlier life; a member joining later might (its earlier life may have
//!   promised a later prepare's ballot), so it does not count.
//! - A recount is as good: an earlier-life promise above this ballot came from a prepare whose
//!   quorum, less that replica, meets every quorum of voters; the voter it meets carries that
//!   promise (or a higher one, if it was admitted since) unless it answers as recovering.
//! - An admitted member holds every position a lost life of it could have helped decide:
//!   those are below `streaming_from` (this tenure's prepare found each of them) or, in this
//!   tenure, below the write position at its recount, and it applied them. Above, it holds what
//!   it acked. From then on it is a replica that never forgot anything.
//! - The survey is not a quorum in this sense: it only picks where to catch up from (an
//!   applied position is honest in any life); the prepare decides what is chosen.

//! # Invariants
//! - `prepared` and, outside a `full` prepare, the voters of `replies` are members whose
//!   standing was nonzero in this tenure's read; `counted` holds `replies` at the promise write
//!   and late voters; a reset connection clears the member's bits in all three (what it
//!   answered may come from an earlier life).
//! - `applied <= next`, `next - applied < ACK_WINDOW`; `acks[p % ACK_WINDOW]` describes `p` only
//!   for `applied <= p < next`, and always includes the leader itself.
//! - A position is written with this tenure's ballot only after that ballot was written to a
//!   majority's min-proposal records (unless the tenure adopted nothing and went straight to the
//!   fast path with the ballot it prepared).
//! - Rewrites (positions below `fresh_from`) never overwrite the only intact record of a copy's
//!   highest ballot: a decided position's slot is written only after its decided mark landed
//!   (`fenced`), an undecided one only as its member's [`Adoption`] plan says; the own log's
//!   copies that catch-up reads may overwrite keep their ballot in their adoption records.
//! - A member is sent positions in increasing order; its acks count only for positions this
//!   tenure wrote to it.
//! - Any `Denied` completion of this tenure aborts it: another leader was granted.

use crate::config::REPLICAS_MAX;
use crate::fabric::{Fabric, PostError, ReplicaId, Status};
use crate::layout::{COMMIT_RECORD_BYTES, PROMISE_BYTES, RECORD_BYTES};
use crate::record;
use crate::replication::{encode_commit, ReplicationPlane, COMPLETION_BATCH};
use crate::slot::{self, origin, Acceptance, Opened, SlotError, SlotHeader, SLOT_HEADER_BYTES};
use crate::state_machine::StateMachine;
use crate::wrid::{Kind, WrId};

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
/// Operations outstanding per connection that the plane keeps track of.
const PENDING_MAX: usize = 96;
const COMPLETION_BATCHES_MAX: usize = 8;
const TAG_SURVEY: u32 = 0;
/// Slots a bulk catch-up applies per poll.
const CATCH_UP_APPLY_BATCH: u64 = 256;
const TAG_RECYCLE: u32 = 1;
/// A promise read of a recount (rule 2 of "Recovery"), not of the prepare.
const TAG_RECOUNT: u32 = 2;

/// An operation posted on the replication plane, waiting for its completion.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    pub(crate) kind: Kind,
    tenure: u32,
    tag: u32,
    pub(crate) start: u64,
    end: u64,
    posted_at: u64,
}

impl Pending {
    const NONE: Pending = Pending {
        kind: Kind::WriteLog,
        tenure: 0,
        tag: 0,
        start: 0,
        end: 0,
        posted_at: 0,
    };
}

/// This plane's connection to one peer: its epoch and the operations outstanding on it, in the
/// order posted (which is the order they complete in).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Connection {
    epoch: u16,
    broken: bool,
    pending: [Pending; PENDING_MAX],
    head: usize,
    len: usize,
}

impl Connection {
    pub(crate) const NEW: Connection = Connection {
        epoch: 0,
        broken: false,
        pending: [Pending::NONE; PENDING_MAX],
        head: 0,
        len: 0,
    };

    fn push(&mut self, pending: Pending) {
        assert!(self.len < PENDING_MAX);
        self.pending[(self.head + self.len) % PENDING_MAX] = pending;
        self.len += 1;
    }

    fn pop(&mut self) -> Option<Pending> {
        if self.len == 0 {
            return None;
        }
        let front = self.pending[self.head];
        self.head = (self.head + 1) % PENDING_MAX;
        self.len -= 1;
        Some(front)
    }

    fn front(&self) -> Option<Pending> {
        (self.len > 0).then(|| self.pending[self.head])
    }

    /// Drops whatever is outstanding: after `Fabric::reconnect` none of it lands any more.
    fn drop_outstanding<F: Fabric>(&mut self, peer: ReplicaId, fabric: &mut F) {
        self.epoch = self.epoch.wrapping_add(1);
        self.head = 0;
        self.len = 0;
        self.broken = false;
        let reconnected = fabric.reconnect(peer);
        debug_assert!(reconnected.is_ok());
    }
}

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

#[derive(Clone, Copy, Debug)]
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

/// How the adopted value goes to a member whose copy of its position the prepare read (this
/// tenure is its only writer since, so the copy is still as read). Whatever it writes, the
/// record that holds the copy's highest ballot is not the one overwritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Adoption {
    /// Its copy of the value is marked decided: nothing to write, its vote counts.
    Held,
    /// Its copy of the value has its highest ballot in the slot's acceptance record: only the
    /// adoption record is written.
    Record,
    /// Anything else (another value, a torn one, or a copy whose adoption record holds its
    /// highest ballot): the slot is written.
    Slot,
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

/// An acceptor's promises: its two min-proposal records and its standing record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Promises {
    /// The highest ballot promised, standing included.
    pub(crate) highest: u64,
    /// Which min-proposal record to overwrite (the invalid or lower one).
    pub(crate) older: u32,
    /// Its min-proposal records hold a promise (a prepare reached it in this life).
    pub(crate) pledged: bool,
    /// Its standing is nonzero: this life is a voter.
    pub(crate) voter: bool,
}

impl Promises {
    const NONE: Promises = Promises {
        highest: 0,
        older: 0,
        pledged: false,
        voter: false,
    };

    /// Decodes the promise bytes (`PROMISE_BYTES`, read from `layout.min_proposal()`).
    pub(crate) fn decode(layout: &crate::layout::Layout, bytes: &[u8]) -> Promises {
        assert_eq!(bytes.len(), PROMISE_BYTES as usize);
        let r = RECORD_BYTES as usize;
        let first = record::decode(layout.min_proposal_record(0), &bytes[..r]);
        let second = record::decode(layout.min_proposal_record(1), &bytes[r..2 * r]);
        let standing = record::decode(layout.standing(), &bytes[2 * r..]).filter(|&b| b != 0);
        let (recorded, older) = match (first, second) {
            (Some(a), Some(b)) => (a.max(b), if a <= b { 0 } else { 1 }),
            (Some(a), None) => (a, 1),
            (None, Some(b)) => (b, 0),
            (None, None) => (0, 0),
        };
        // Planted defect: a restarted replica votes at once, with its empty log.
        let voter = standing.is_some() || cfg!(feature = "bug-restart-votes");
        let promises = Promises {
            highest: recorded.max(standing.unwrap_or(0)),
            older,
            pledged: recorded != 0,
            voter,
        };
        assert!(promises.older < 2);
        assert!(promises.highest >= recorded);
        promises
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

/// The state of one tenure.
pub(crate) struct Leader {
    pub(crate) tenure: u32,
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
    applied_of: [u64; REPLICAS_MAX as usize],
    /// When each peer's applied position was last seen to rise.
    applied_moved_at: [u64; REPLICAS_MAX as usize],
    recycle_at: u64,
    commit_inflight: u8,
    /// When the first undecided position last moved (or nothing was undecided).
    progress_at: u64,
    /// When the tenure started.
    started_at: u64,
    /// The tenure must end; `lead` aborts it between steps.
    doomed: bool,
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
}

/// A recount of the voters' promises for a recovering member that joined after the prepare.
#[derive(Clone, Copy, Debug)]
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

impl Leader {
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
        let phase = match self.phase {
            Phase::Survey => TenurePhase::Survey,
            Phase::CatchUpSelf { .. } => TenurePhase::CatchUp,
            Phase::ReadMinProposal => TenurePhase::ReadMinProposal,
            Phase::WriteMinProposal => TenurePhase::WriteMinProposal,
            Phase::ReadSlot { .. } => TenurePhase::ReadSlot,
            Phase::Adopting { .. } => TenurePhase::Adopting,
            Phase::Streaming => TenurePhase::Streaming,
        };
        LeaderStatus {
            tenure: self.tenure,
            ballot: self.ballot,
            next: self.next,
            phase,
            members,
            confirmed,
        }
    }

    /// A tenure starting at `now`, whose survey must be answered within `timeout` ticks.
    pub(crate) fn new(
        tenure: u32,
        now: u64,
        (applied, chain): (u64, u64),
        voter: bool,
        timeout: u64,
    ) -> Leader {
        Leader {
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
            applied_of: [0; REPLICAS_MAX as usize],
            // No sign of life before one is seen: a peer this tenure cannot read (crashed) must
            // not hold the log back for `op_timeout_ticks` after every fail-over.
            applied_moved_at: [0; REPLICAS_MAX as usize],
            recycle_at: now,
            commit_inflight: 0,
            progress_at: now,
            started_at: now,
            doomed: false,
            polled_at: now,
            voter,
            full: false,
            counted: 0,
            streaming_from: None,
            recount: None,
            held_from: None,
        }
    }

    pub(crate) fn fast_path(&self) -> bool {
        self.phase == Phase::Streaming
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

/// What one replica's copy of the slot at the prepare position says.
enum SlotAnswer {
    /// A value accepted under this ballot.
    Value(u64),
    /// Nothing was accepted there (never written, or an older lap).
    Nothing,
    /// A torn or malformed value, or a value with none of its three records intact: taken as
    /// nothing accepted (see `choose_value`).
    Unknown,
    /// A later lap: that replica recycled past this position.
    Ahead,
}

impl SlotAnswer {
    /// The answer of a copy of the slot at `position`, with the bytes of its adoption record
    /// and decided mark.
    fn of(
        opened: Result<Opened, SlotError>,
        (adoption, decided): (&[u8], &[u8]),
        position: u64,
    ) -> SlotAnswer {
        match opened {
            Ok(opened) => match slot::accepted_ballot(&opened, adoption, decided) {
                Some(ballot) => SlotAnswer::Value(ballot),
                None => SlotAnswer::Unknown,
            },
            Err(SlotError::Empty) => SlotAnswer::Nothing,
            Err(SlotError::Stale { found }) if found < position => SlotAnswer::Nothing,
            Err(SlotError::Stale { .. }) => SlotAnswer::Ahead,
            Err(SlotError::Torn | SlotError::Malformed) => SlotAnswer::Unknown,
        }
    }
}

fn count(mask: u8) -> u8 {
    mask.count_ones() as u8
}

impl<const SLOT: usize, const ENTRY: usize, const QUEUE: usize>
    ReplicationPlane<'_, SLOT, ENTRY, QUEUE>
{
    fn quorum_with(&self, replies: u8) -> bool {
        1 + count(replies) >= self.config.quorum()
    }

    pub(crate) fn others(&self) -> impl Iterator<Item = ReplicaId> {
        let me = self.me;
        (0..self.config.replica_count).filter(move |&p| p != me)
    }

    fn leader_mut(&mut self) -> &mut Leader {
        self.leader.as_mut().expect("leading")
    }

    /// Marks the tenure for abortion; `lead` ends it before the next step.
    pub(crate) fn doom(&mut self) {
        if let Some(leader) = &mut self.leader {
            leader.doomed = true;
        }
    }

    /// A tenure's operations never outlive it: when this replica stops acting as leader, every
    /// connection with work outstanding is dropped, so that no write of the tenure lands in a
    /// peer's log later (a peer that grants this replica again would let it in), and no read
    /// lands in the own log after the background plane may have granted it to a peer.
    pub(crate) fn fence_tenure<F: Fabric>(&mut self, fabric: &mut F) {
        for peer in self.others() {
            let connection = &mut self.connections[peer as usize];
            if connection.front().is_some() {
                connection.drop_outstanding(peer, fabric);
            }
        }
    }

    /// Aborts a doomed tenure; true when the tenure goes on.
    fn carry_on<F: Fabric>(&mut self, fabric: &mut F) -> bool {
        match &self.leader {
            Some(leader) if leader.doomed => {
                self.abort(fabric);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// One round of leader work.
    pub(crate) fn lead<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        fabric: &mut F,
        sm: &mut S,
    ) {
        let applied_before = self.applied;
        self.discount_own_pause(now);
        self.drain_completions(now, fabric, sm);
        self.expire_operations(now, fabric);
        if !self.carry_on(fabric) {
            return;
        }
        self.admit_members(now, fabric);
        if !self.carry_on(fabric) {
            return;
        }
        self.step_phase(now, fabric, sm);
        if !self.carry_on(fabric) || !self.leader_mut().members_open() {
            return;
        }
        if self.leader_mut().fast_path() {
            self.propose(now, fabric);
        }
        self.post_log_writes(now, fabric);
        // A fabric that completes writes within microseconds (shared memory, a NIC next door)
        // often has them done already: taking their completions now decides the positions in
        // this poll rather than the next.
        self.drain_completions(now, fabric, sm);
        if !self.carry_on(fabric) {
            return;
        }
        self.advance_commit(now, fabric, sm);
        if self.stalled(now) {
            // No majority took a position in time: the grants may be gone without a write
            // having been refused yet. Ask again.
            self.doom();
        }
        if !self.carry_on(fabric) {
            return;
        }
        self.post_commit_record(now, fabric, self.applied != applied_before);
        self.tend_members(now, fabric);
        self.carry_on(fabric);
    }

    /// A leader that was not polled for a while (descheduled, stopped) watched nothing
    /// meanwhile: its own gap is not its peers' silence. The recency marks move forward by the
    /// gap, so that recycling never passes a replica only because the leader could not read it
    /// (seed 316614 halted a correct replica that way), and a stall is not called for the
    /// leader's own pause.
    fn discount_own_pause(&mut self, now: u64) {
        let read_period = self.config.detector.read_period_ticks as u64;
        let leader = self.leader.as_mut().expect("leading");
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

    // ---- connections -------------------------------------------------------------------------

    pub(crate) fn drain_completions<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        fabric: &mut F,
        sm: &mut S,
    ) {
        for _ in 0..COMPLETION_BATCHES_MAX {
            let n = fabric.poll(&mut self.completions).min(COMPLETION_BATCH);
            for index in 0..n {
                let completion = self.completions[index];
                let Some(id) = WrId::decode(completion.wr_id) else {
                    continue;
                };
                if !self.config.contains(id.peer) || id.peer == self.me {
                    continue;
                }
                let connection = &mut self.connections[id.peer as usize];
                if id.epoch != connection.epoch {
                    continue; // From before a reconnect.
                }
                let Some(pending) = connection.pop() else {
                    continue;
                };
                assert_eq!(
                    pending.kind, id.kind,
                    "completions arrive in the order posted"
                );
                if completion.status != Status::Ok {
                    connection.broken = true;
                }
                match &self.leader {
                    Some(l) if l.tenure == pending.tenure => {
                        self.complete(now, id.peer, pending, completion.status, fabric)
                    }
                    None if pending.tenure == 0 => {
                        self.complete_transfer(now, id.peer, pending, completion.status, fabric, sm)
                    }
                    _ => {}
                }
            }
            if n < COMPLETION_BATCH {
                break;
            }
        }
    }

    /// Resets the connection to `peer`: what was outstanding on it is dropped, so a member of
    /// this tenure must be synced again from its applied position.
    ///
    /// A broken connection (an operation failed) still delivers what is outstanding on it,
    /// failed: that is kept until it drained (the reset happens at the next post, or when it
    /// takes too long, in `expire_operations`), because one of those completions may be the
    /// `Denied` that must end the tenure.
    pub(crate) fn reset_connection<F: Fabric>(
        &mut self,
        now: u64,
        peer: ReplicaId,
        fabric: &mut F,
    ) {
        let connection = &self.connections[peer as usize];
        if connection.broken && connection.len > 0 {
            self.lose_member(now, peer);
            return;
        }
        self.drop_connection(now, peer, fabric);
    }

    /// Resets the connection to `peer` at once, dropping what is outstanding on it.
    pub(crate) fn drop_connection<F: Fabric>(&mut self, now: u64, peer: ReplicaId, fabric: &mut F) {
        let connection = &mut self.connections[peer as usize];
        let tenure = self.leader.as_ref().map_or(0, |l| l.tenure);
        let dropped_catch_up = (0..connection.len).any(|i| {
            let pending = connection.pending[(connection.head + i) % PENDING_MAX];
            pending.tenure == tenure && pending.kind == Kind::ReadLog
        });
        connection.drop_outstanding(peer, fabric);
        if dropped_catch_up {
            self.doom(); // The catch-up source went away: start over with a new tenure.
            return;
        }
        self.lose_member(now, peer);
    }

    /// `peer` takes no part in this tenure until it rejoins (read again from scratch).
    fn lose_member(&mut self, now: u64, peer: ReplicaId) {
        let retry_at = now + self.config.permission_retry_ticks as u64;
        let Some(leader) = &mut self.leader else {
            return;
        };
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

    /// Posts an operation for the current tenure; false when it could not be posted now.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn post<F: Fabric>(
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
        if self.connections[peer as usize].broken {
            if self.connections[peer as usize].len > 0 {
                // What is outstanding completes first (a broken connection fails it), and says
                // why it broke: a reset now would drop a `Denied` that must end the tenure.
                return false;
            }
            let state = self.leader.as_ref().map(|l| l.members[peer as usize].state);
            self.reset_connection(now, peer, fabric);
            if self.leader.as_ref().map(|l| l.members[peer as usize].state) != state {
                return false; // The reset changed what this post was for.
            }
        }
        let tenure = self.leader.as_ref().map_or(0, |l| l.tenure);
        let connection = &mut self.connections[peer as usize];
        if connection.len == PENDING_MAX {
            return false;
        }
        let id = WrId {
            kind,
            peer,
            epoch: connection.epoch,
            tag,
        }
        .encode();
        let posted = if kind.is_write() {
            fabric.write(peer, local, remote, len, id)
        } else {
            fabric.read(peer, remote, local, len, id)
        };
        match posted {
            Ok(()) => {
                let (start, end) = range;
                connection.push(Pending {
                    kind,
                    tenure,
                    tag,
                    start,
                    end,
                    posted_at: now,
                });
                true
            }
            Err(PostError::Broken) => {
                connection.broken = true;
                false
            }
            Err(_) => false,
        }
    }

    /// An operation past its deadline resets its connection; a member that had work of this
    /// tenure outstanding there is lost (and rejoins later).
    pub(crate) fn expire_operations<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let timeout = self.phase_timeout();
        for peer in self.others() {
            let connection = &self.connections[peer as usize];
            let Some(front) = connection.front() else {
                continue;
            };
            if now.saturating_sub(front.posted_at) <= timeout {
                continue;
            }
            self.drop_connection(now, peer, fabric);
        }
    }

    // ---- membership --------------------------------------------------------------------------

    /// Confirmed followers (and lost ones, after a pause) are asked for their applied position.
    fn admit_members<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let confirmed = self.shared.lead().map_or(0, |l| l.confirmed);
        for peer in self.others() {
            let state = self.leader_mut().members[peer as usize].state;
            let wants_survey = match state {
                MemberState::Absent => confirmed & (1 << peer) != 0,
                MemberState::Joining => true,
                MemberState::Lost { retry_at } => now >= retry_at,
                _ => false,
            };
            if !wants_survey {
                continue;
            }
            let (local, remote) = (self.layout.landing_applied(peer), self.layout.applied());
            let posted = self.post(
                now,
                fabric,
                peer,
                Kind::ReadApplied,
                TAG_SURVEY,
                (0, 0),
                local,
                remote,
                RECORD_BYTES,
            );
            self.leader_mut().members[peer as usize].state = if posted {
                MemberState::Surveying
            } else {
                MemberState::Joining
            };
        }
        if self.leader_mut().members_open() {
            self.activate_surveyed(now, fabric, true);
        }
    }

    /// Surveyed members become active: they will be sent everything from their applied position.
    /// A member that joins after the prepare was posted (`late`) is checked first: its
    /// min-proposal records must not hold a ballot above this tenure's, or a newer leader has
    /// prepared there and may have decided values this tenure never saw.
    fn activate_surveyed<F: Fabric>(&mut self, now: u64, fabric: &mut F, late: bool) {
        for peer in self.others() {
            let leader = self.leader.as_ref().expect("leading");
            let (state, next) = (leader.members[peer as usize].state, leader.next);
            let MemberState::Surveyed { applied } = state else {
                continue;
            };
            if applied > self.applied {
                // It applied positions this leader has not: they are decided. While streaming,
                // another leader holds the grants; while preparing, this tenure would rewrite
                // (adopt) positions a member already applied, and a revoke tearing such a rewrite
                // destroys a copy that a lagging replica may need. Either way: a new tenure, whose
                // survey catches up from this member.
                self.doom();
                return;
            }
            let from = applied.min(next);
            // It needs [from, next): if the own log no longer holds all of it, the member needs
            // a state transfer.
            let lapped = !self.log_holds(fabric, from, next);
            let member = &mut self.leader_mut().members[peer as usize];
            member.lapped = lapped;
            member.resend_from(from);
            member.commit_sent = 0; // A reset may have dropped the last commit record write.
            if !late {
                member.state = MemberState::Active;
                continue;
            }
            let (local, remote) = (
                self.layout.landing_promises(peer),
                self.layout.min_proposal(),
            );
            let range = (0, 0);
            let len = PROMISE_BYTES;
            if self.post(
                now,
                fabric,
                peer,
                Kind::ReadMinProposal,
                0,
                range,
                local,
                remote,
                len,
            ) {
                self.leader_mut().members[peer as usize].state = MemberState::Checking;
            }
        }
    }

    /// True when the own log holds every position of `[from, to)`. Not only `[to - slot_count,
    /// to)` may be missing: a tenure that proposed past its commit point (and then lost its
    /// grants) overwrote older slots with positions that were never decided.
    fn log_holds<F: Fabric>(&mut self, fabric: &mut F, from: u64, to: u64) -> bool {
        if to - from > self.config.slot_count as u64 {
            return false;
        }
        // The whole slot must open: a torn copy in the own log must never be shipped as if it
        // were the value.
        (from..to).all(|position| self.open_local(fabric, position).is_ok())
    }

    fn is_active(&self, peer: ReplicaId) -> bool {
        let leader = self.leader.as_ref().expect("leading");
        leader.members[peer as usize].state == MemberState::Active
    }

    fn active_members(&self) -> u8 {
        let leader = self.leader.as_ref().expect("leading");
        let mut mask = 0;
        for peer in self.others() {
            if leader.members[peer as usize].state == MemberState::Active {
                mask |= 1 << peer;
            }
        }
        mask
    }

    // ---- completions -------------------------------------------------------------------------

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
                let leader = self.leader_mut();
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
            Kind::WriteMinProposal if ok => self.leader_mut().prepared |= bit,
            Kind::ReadSlot | Kind::ReadAdoption | Kind::ReadDecided if ok => {
                let leader = self.leader_mut();
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
                let member = &mut self.leader_mut().members[peer as usize];
                if pending.start <= member.fenced {
                    member.fenced = member.fenced.max(pending.end);
                }
            }
            Kind::WriteCommit if ok => self.leader_mut().commit_inflight &= !bit,
            Kind::WriteStanding if ok => self.complete_standing(peer),
            Kind::WriteLapNotice if ok => {}
            _ => self.reset_connection(now, peer, fabric),
        }
    }

    fn complete_applied_read<F: Fabric>(
        &mut self,
        now: u64,
        peer: ReplicaId,
        tag: u32,
        ok: bool,
        fabric: &mut F,
    ) {
        let mut bytes = [0u8; RECORD_BYTES as usize];
        fabric.load(self.layout.landing_applied(peer), &mut bytes);
        let value = if ok {
            record::decode(self.layout.applied(), &bytes)
        } else {
            None
        };
        let leader = self.leader_mut();
        let member = &mut leader.members[peer as usize];
        if tag == TAG_RECYCLE {
            member.recycle_read = false;
        }
        let surveying = tag == TAG_SURVEY && member.state == MemberState::Surveying;
        if let Some(applied) = value {
            // A survey follows a reset connection, which a restart of the member causes: its
            // applied position may have gone back.
            if applied > leader.applied_of[peer as usize] || surveying {
                leader.applied_of[peer as usize] = applied;
                leader.applied_moved_at[peer as usize] = now;
            }
        }
        if !surveying {
            return;
        }
        match (ok, value) {
            (true, Some(applied)) => member.state = MemberState::Surveyed { applied },
            (true, None) => member.state = MemberState::Joining, // Torn: read again.
            _ => self.reset_connection(now, peer, fabric),
        }
    }

    fn ack_range(&mut self, peer: ReplicaId, start: u64, end: u64) {
        let applied = self.applied;
        let leader = self.leader_mut();
        if leader.counted & (1 << peer) == 0 {
            return; // Rule 2 of "Recovery": it is sent the log, but does not vote.
        }
        let from = start.max(applied);
        let to = end.min(leader.next);
        for position in from..to {
            leader.acks[(position % ACK_WINDOW as u64) as usize] |= 1 << peer;
        }
    }

    fn complete_min_proposal_read<F: Fabric>(&mut self, peer: ReplicaId, fabric: &mut F) {
        let mut bytes = [0u8; PROMISE_BYTES as usize];
        fabric.load(self.layout.landing_promises(peer), &mut bytes);
        let promises = Promises::decode(&self.layout, &bytes);
        let value = promises.highest;
        let leader = self.leader_mut();
        leader.ballot_floor = leader.ballot_floor.max(value);
        leader.members[peer as usize].min_record = promises.older;
        leader.members[peer as usize].promises = promises;
        let member = &mut leader.members[peer as usize];
        let checking = member.state == MemberState::Checking;
        if checking {
            member.state = MemberState::Active;
        }
        if leader.phase == Phase::ReadMinProposal {
            leader.replies |= 1 << peer;
            return;
        }
        // An answer after the prepare moved on (a late joiner, or a slow reply).
        if value > leader.ballot {
            // A newer leader prepared on this member's log after this tenure's prepare.
            self.doom();
            return;
        }
        if promises.voter {
            leader.counted |= 1 << peer;
        }
    }

    /// A voter answered a recount: its promise must not be above this tenure's ballot.
    fn complete_recount_read<F: Fabric>(&mut self, peer: ReplicaId, fabric: &mut F) {
        let mut bytes = [0u8; PROMISE_BYTES as usize];
        fabric.load(self.layout.landing_promises(peer), &mut bytes);
        let promises = Promises::decode(&self.layout, &bytes);
        let leader = self.leader_mut();
        if promises.highest > leader.ballot {
            self.doom(); // A newer leader prepared there.
            return;
        }
        let Some(recount) = &mut leader.recount else {
            return;
        };
        if promises.voter {
            recount.answered |= 1 << peer;
        }
        let (member, answered) = (recount.member, recount.answered);
        if !self.quorum_with(answered) {
            return;
        }
        let leader = self.leader_mut();
        leader.recount = None;
        leader.counted |= 1 << member;
        leader.members[member as usize].admit_at = leader.next;
        info!(
            "tenure {}: recovering replica {} counted from position {}",
            leader.tenure, member, leader.next
        );
    }

    /// Starts a recount for one recovering member that joined after the prepare (rule 2 of
    /// "Recovery"); a recount that has not finished within `op_timeout_ticks` starts over.
    fn recount_late_members<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let timeout = self.config.op_timeout_ticks as u64;
        let others = self.everyone_else();
        let leader = self.leader.as_mut().expect("leading");
        if !leader.fast_path() {
            return;
        }
        if let Some(recount) = leader.recount {
            if now.saturating_sub(recount.started_at) <= timeout {
                return;
            }
            leader.recount = None;
        }
        let late = (0..REPLICAS_MAX).find(|&peer| {
            let member = leader.members[peer as usize];
            others & (1 << peer) != 0
                && member.state == MemberState::Active
                && !member.promises.voter
                && leader.counted & (1 << peer) == 0
        });
        let Some(member) = late else {
            return;
        };
        leader.recount = Some(Recount {
            member,
            answered: 0,
            started_at: now,
        });
        for peer in self.others() {
            let leader = self.leader.as_ref().expect("leading");
            let voter = leader.members[peer as usize];
            if voter.state != MemberState::Active || !voter.promises.voter {
                continue;
            }
            let (local, remote) = (
                self.layout.landing_promises(peer),
                self.layout.min_proposal(),
            );
            self.post(
                now,
                fabric,
                peer,
                Kind::ReadMinProposal,
                TAG_RECOUNT,
                (0, 0),
                local,
                remote,
                PROMISE_BYTES,
            );
        }
    }

    /// A standing write landed: the member is a voter from now on.
    fn complete_standing(&mut self, peer: ReplicaId) {
        let leader = self.leader_mut();
        let member = &mut leader.members[peer as usize];
        member.standing_inflight = false;
        member.promises.voter = true;
        member.promises.highest = member.promises.highest.max(leader.ballot);
        info!("tenure {}: replica {} admitted", leader.tenure, peer);
    }

    // ---- phases ------------------------------------------------------------------------------

    fn step_phase<F: Fabric, S: StateMachine>(&mut self, now: u64, fabric: &mut F, sm: &mut S) {
        let leader = self.leader.as_ref().expect("leading");
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
                let next = self.leader_mut().next;
                self.read_slot(now, next, fabric);
            }
            Phase::ReadSlot { position } => self.choose_value(now, position, late, fabric),
            Phase::Adopting { position } if self.applied > position => {
                let next = self.leader_mut().next;
                self.read_slot(now, next, fabric);
            }
            Phase::Streaming => {}
            _ if late => self.doom(),
            _ => {}
        }
    }

    fn step_survey<F: Fabric>(&mut self, now: u64, fabric: &mut F, late: bool) {
        let leader = self.leader.as_ref().expect("leading");
        let mut surveyed = 0u8;
        let mut best: Option<(u64, ReplicaId)> = None;
        for peer in self.others() {
            if let MemberState::Surveyed { applied } = leader.members[peer as usize].state {
                surveyed |= 1 << peer;
                if best.is_none_or(|(a, _)| applied > a) {
                    best = Some((applied, peer));
                }
            }
        }
        if !self.quorum_with(surveyed) {
            if late {
                self.doom();
            }
            return;
        }
        match best {
            Some((upto, source)) if upto > self.applied => {
                self.catch_up_self(now, upto, source, fabric)
            }
            _ => self.open_members(now, fabric),
        }
    }

    /// Reads the decided slots `[applied, upto)` from `source` straight into this log.
    fn catch_up_self<F: Fabric>(&mut self, now: u64, upto: u64, source: ReplicaId, fabric: &mut F) {
        let slot_count = self.config.slot_count as u64;
        if upto - self.applied > slot_count {
            // The positions this replica lacks were recycled everywhere: it installs a
            // snapshot instead (and stops leading meanwhile).
            self.start_transfer(now, upto, fabric);
            return;
        }
        self.keep_own_ballots(self.applied, upto, fabric);
        let mut reads = 0u8;
        for (start, end) in ring_pieces(self.applied, upto, slot_count) {
            let offset = self.layout.slot(start);
            let len = (end - start) as u32 * self.config.slot_size;
            if !self.post(
                now,
                fabric,
                source,
                Kind::ReadLog,
                0,
                (start, end),
                offset,
                offset,
                len,
            ) {
                self.doom();
                return;
            }
            reads += 1;
        }
        info!("catching up {} slots from {}", upto - self.applied, source);
        let deadline = now + self.phase_timeout();
        let leader = self.leader_mut();
        leader.phase = Phase::CatchUpSelf {
            upto,
            reads_left: reads,
        };
        leader.deadline = deadline;
    }

    /// The catch-up reads of `[from, to)` land slots in the own log, and a read cut short
    /// could tear the acceptance record of a copy the own log holds: its highest ballot is
    /// first copied into its adoption record, which the reads do not touch, so the copy keeps
    /// it (see `slot`). `[from, to)` is at most a lap.
    fn keep_own_ballots<F: Fabric>(&mut self, from: u64, to: u64, fabric: &mut F) {
        if !MARKED_REWRITES {
            return;
        }
        let mut adoption = [0u8; RECORD_BYTES as usize];
        for position in from..to {
            let Ok(copy) = self.open_local(fabric, position) else {
                continue;
            };
            let Some(accepted) = copy.accepted else {
                continue;
            };
            let at = self.layout.adoption_record(position);
            fabric.load(at, &mut adoption);
            if slot::decode_adoption(copy.chain, &adoption).is_none_or(|b| b < accepted.ballot) {
                fabric.store(at, &slot::encode_adoption(copy.chain, accepted.ballot));
            }
        }
    }

    fn finish_catch_up<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        upto: u64,
        fabric: &mut F,
        sm: &mut S,
    ) {
        // Bounded work per poll: a lap of catch-up is applied over several polls.
        let batch_end = upto.min(self.applied + CATCH_UP_APPLY_BATCH);
        while self.applied < batch_end {
            match self.open_local(fabric, self.applied) {
                Ok(opened) if opened.header.chain_prev == self.applied_chain => {
                    self.apply_slot(opened.header, opened.chain, sm);
                }
                Err(SlotError::Torn) => {
                    // The source changed under the read. Try again later.
                    self.doom();
                    return;
                }
                _ => {
                    // The source's log no longer holds what it applied (recycled, or rewritten
                    // since): a snapshot of it is the way forward.
                    self.start_transfer(now, upto, fabric);
                    return;
                }
            }
        }
        if self.applied < upto {
            return; // More next poll.
        }
        let (applied, chain) = (self.applied, self.applied_chain);
        let leader = self.leader_mut();
        leader.next = applied;
        leader.next_chain = chain;
        self.open_members(now, fabric);
    }

    /// This replica's log is up to date: members may be synced, and the prepare starts.
    fn open_members<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let deadline = now + self.phase_timeout();
        let leader = self.leader_mut();
        leader.phase = Phase::ReadMinProposal;
        leader.deadline = deadline;
        leader.replies = 0;
        self.activate_surveyed(now, fabric, false);
        if cfg!(feature = "bug-skip-prepare") {
            // Planted defect: no prepare after a leader change.
            let ballot = self.next_ballot(0, fabric).unwrap_or(0);
            let leader = self.leader_mut();
            leader.ballot = ballot;
            leader.phase = Phase::Streaming;
            leader.streaming_from = Some(leader.next);
            return;
        }
        for peer in self.others() {
            if !self.is_active(peer) {
                continue;
            }
            let (local, remote) = (
                self.layout.landing_promises(peer),
                self.layout.min_proposal(),
            );
            if !self.post(
                now,
                fabric,
                peer,
                Kind::ReadMinProposal,
                0,
                (0, 0),
                local,
                remote,
                PROMISE_BYTES,
            ) {
                self.reset_connection(now, peer, fabric);
            }
        }
    }

    /// This replica's own promises.
    fn own_promises<F: Fabric>(&self, fabric: &mut F) -> Promises {
        let mut bytes = [0u8; PROMISE_BYTES as usize];
        fabric.load(self.layout.min_proposal(), &mut bytes);
        Promises::decode(&self.layout, &bytes)
    }

    /// The voters among the members that answered the promise read.
    fn voter_replies(&self) -> u8 {
        let leader = self.leader.as_ref().expect("leading");
        let mut voters = 0;
        for peer in self.others() {
            if leader.replies & (1 << peer) != 0 && leader.members[peer as usize].promises.voter {
                voters |= 1 << peer;
            }
        }
        voters
    }

    /// Waits for a quorum of voters (this replica among them) to answer the promise read; with
    /// too few voters, for every replica (rule 4 of "Recovery").
    fn step_promises<F: Fabric>(&mut self, now: u64, late: bool, fabric: &mut F) {
        let voters = self.voter_replies();
        let everyone = self.everyone_else();
        let leader = self.leader.as_ref().expect("leading");
        if leader.voter && self.quorum_with(voters) {
            self.write_min_proposal(now, voters, fabric);
        } else if leader.replies == everyone {
            info!(
                "tenure {}: too few voters, preparing with every replica",
                leader.tenure
            );
            self.leader_mut().full = true;
            self.write_min_proposal(now, everyone, fabric);
        } else if late {
            self.doom();
        }
    }

    /// Every replica but this one.
    fn everyone_else(&self) -> u8 {
        self.others().fold(0u8, |mask, peer| mask | 1 << peer)
    }

    /// True when the answers of `members` (plus this replica) suffice for a prepare step: a
    /// quorum, or every replica in a `full` prepare.
    fn promised(&self, members: u8) -> bool {
        if self.leader.as_ref().expect("leading").full {
            return members == self.everyone_else();
        }
        self.quorum_with(members)
    }

    /// A ballot above `floor`, above every ballot this replica promised, unique to this replica.
    /// `None` only if a peer published a promise at the very top of the ballot space, which
    /// no correct replica does; the tenure then ends instead of panicking.
    fn next_ballot<F: Fabric>(&self, floor: u64, fabric: &mut F) -> Option<u64> {
        let own = self.own_promises(fabric).highest;
        let highest = floor
            .max(own)
            .max(self.leader.as_ref().map_or(0, |l| l.ballot));
        let ballot = (highest / 8 + 1)
            .checked_mul(8)?
            .checked_add(self.me as u64)?;
        assert!(ballot > highest && ballot % 8 == self.me as u64);
        Some(ballot)
    }

    /// Promises the new ballot locally and to every member that answered the read.
    /// Members of `to` are counted from now on (rule 2 of "Recovery").
    fn write_min_proposal<F: Fabric>(&mut self, now: u64, to: u8, fabric: &mut F) {
        let floor = self.leader_mut().ballot_floor;
        let Some(ballot) = self.next_ballot(floor, fabric) else {
            self.doom();
            return;
        };
        let own_offset = self
            .layout
            .min_proposal_record(self.own_promises(fabric).older);
        fabric.store(own_offset, &record::encode(own_offset, ballot));
        for which in 0..2 {
            let remote = self.layout.min_proposal_record(which);
            fabric.store(
                self.layout.outbox_min_proposal(which),
                &record::encode(remote, ballot),
            );
        }
        let deadline = now + self.phase_timeout();
        let leader = self.leader_mut();
        leader.ballot = ballot;
        leader.counted = leader.replies;
        leader.phase = Phase::WriteMinProposal;
        leader.deadline = deadline;
        leader.prepared = 0;
        info!("tenure {} ballot {}", leader.tenure, ballot);
        for peer in self.others() {
            if to & (1 << peer) == 0 {
                continue;
            }
            let which = self.leader_mut().members[peer as usize].min_record;
            let local = self.layout.outbox_min_proposal(which);
            let remote = self.layout.min_proposal_record(which);
            if !self.post(
                now,
                fabric,
                peer,
                Kind::WriteMinProposal,
                0,
                (0, 0),
                local,
                remote,
                RECORD_BYTES,
            ) {
                self.reset_connection(now, peer, fabric);
            }
        }
    }

    /// Writes this tenure's ballot into `peer`'s standing record: it becomes a voter.
    fn post_standing<F: Fabric>(&mut self, now: u64, peer: ReplicaId, fabric: &mut F) -> bool {
        let ballot = self.leader_mut().ballot;
        assert!(
            ballot != 0,
            "a standing carries the ballot that admitted it"
        );
        let (local, remote) = (self.layout.outbox_standing(), self.layout.standing());
        fabric.store(local, &record::encode(remote, ballot));
        let posted = self.post(
            now,
            fabric,
            peer,
            Kind::WriteStanding,
            0,
            (0, 0),
            local,
            remote,
            RECORD_BYTES,
        );
        if posted {
            self.leader_mut().members[peer as usize].standing_inflight = true;
        }
        posted
    }

    /// Admits every counted member that is recovering and has applied `streaming_from` (rule 3
    /// of "Recovery").
    fn admit_recovered<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let leader = self.leader.as_ref().expect("leading");
        let Some(streaming_from) = leader.streaming_from else {
            return;
        };
        for peer in self.others() {
            let leader = self.leader.as_ref().expect("leading");
            let member = leader.members[peer as usize];
            let ready = member.state == MemberState::Active
                && leader.counted & (1 << peer) != 0
                && !member.promises.voter
                && !member.standing_inflight
                && !member.lapped
                && leader.applied_of[peer as usize] >= streaming_from.max(member.admit_at);
            if ready {
                self.post_standing(now, peer, fabric);
            }
        }
    }

    /// Reads the slot at `position`, its adoption record and its decided mark from every
    /// prepared member.
    fn read_slot<F: Fabric>(&mut self, now: u64, position: u64, fabric: &mut F) {
        let deadline = now + self.phase_timeout();
        let leader = self.leader_mut();
        assert_eq!(
            position, leader.next,
            "the prepare reads where the leader writes next"
        );

        leader.phase = Phase::ReadSlot { position };
        leader.deadline = deadline;
        leader.replies = 0;
        leader.reads_done = [0; REPLICAS_MAX as usize];
        let prepared = leader.prepared;
        for peer in self.others() {
            if prepared & (1 << peer) == 0 || !self.is_active(peer) {
                continue;
            }
            let reads = [
                (
                    Kind::ReadSlot,
                    self.layout.landing_slot(peer),
                    self.layout.slot(position),
                    self.config.slot_size,
                ),
                (
                    Kind::ReadAdoption,
                    self.layout.landing_adoption(peer),
                    self.layout.adoption_record(position),
                    RECORD_BYTES,
                ),
                (
                    Kind::ReadDecided,
                    self.layout.landing_decided(peer),
                    self.layout.decided_mark(position),
                    RECORD_BYTES,
                ),
            ];
            const _: () = assert!(SLOT_READS == 3);
            for (kind, local, remote, len) in reads {
                let range = (position, position + 1);
                if !self.post(now, fabric, peer, kind, 0, range, local, remote, len) {
                    self.reset_connection(now, peer, fabric);
                    break;
                }
            }
        }
    }

    /// Picks the value with the highest accepted ballot among the slots read (this replica's
    /// own included) and adopts it; with none, the tenure moves to the fast path.
    ///
    /// A torn copy, or a copy with none of its three records intact, counts as "nothing
    /// accepted". That is safe because no write tears a copy of a decided value: every later
    /// write of its position carries the same value bytes (see `slot`), and no write overwrites
    /// the record holding a copy's highest ballot while it is the only one (`post_log_writes`,
    /// `adopt`), so a copy's reported ballot never goes down. A torn value is therefore one that
    /// was not decided, which a leader that crashed in the middle of a write leaves behind, and
    /// waiting for such copies to heal would stall the simplest fail-over forever.
    fn choose_value<F: Fabric>(&mut self, now: u64, position: u64, late: bool, fabric: &mut F) {
        let size = self.config.slot_size as usize;
        let mut best: Option<(u64, Option<ReplicaId>)> = None;
        let mut adoption = [0u8; RECORD_BYTES as usize];
        let mut decided = [0u8; RECORD_BYTES as usize];
        fabric.load(self.layout.adoption_record(position), &mut adoption);
        fabric.load(self.layout.decided_mark(position), &mut decided);
        let own = self.open_local(fabric, position);
        let own_known = match SlotAnswer::of(own, (&adoption, &decided), position) {
            SlotAnswer::Value(ballot) => {
                best = Some((ballot, None));
                true
            }
            SlotAnswer::Nothing | SlotAnswer::Unknown => true,
            SlotAnswer::Ahead => false,
        };
        let replies = self.leader_mut().replies;
        for peer in self.others() {
            if replies & (1 << peer) == 0 {
                continue;
            }
            fabric.load(self.layout.landing_slot(peer), &mut self.slot[..size]);
            fabric.load(self.layout.landing_adoption(peer), &mut adoption);
            fabric.load(self.layout.landing_decided(peer), &mut decided);
            let opened = slot::open(&self.slot[..size], position);
            match SlotAnswer::of(opened, (&adoption, &decided), position) {
                SlotAnswer::Value(ballot) => {
                    if best.is_none_or(|(b, _)| ballot > b) {
                        best = Some((ballot, Some(peer)));
                    }
                }
                SlotAnswer::Nothing | SlotAnswer::Unknown => {}
                SlotAnswer::Ahead => {
                    // A member recycled a position this leader has not applied: start over.
                    self.doom();
                    return;
                }
            }
        }
        if !own_known || !self.promised(replies) {
            if late {
                self.doom();
            }
            return;
        }
        match best {
            None => self.start_streaming(now, position, fabric),
            Some((_, source)) => self.adopt(now, position, source, fabric),
        }
    }

    /// The prepare found nothing accepted at `position`: the fast path starts there. A leader
    /// that prepared with every replica (rule 4 of "Recovery") applied everything below it and
    /// admits itself.
    fn start_streaming<F: Fabric>(&mut self, now: u64, position: u64, fabric: &mut F) {
        assert_eq!(
            position, self.applied,
            "the prepare applied what it adopted"
        );
        self.deadline_doublings = 0;
        let leader = self.leader.as_mut().expect("leading");
        info!("tenure {} on the fast path at {}", leader.tenure, position);
        leader.phase = Phase::Streaming;
        leader.streaming_from = Some(position);
        // The stall deadline counts from here: a prepare that took longer than
        // `op_timeout_ticks` (its deadlines doubled) must not call the fast path stalled at
        // its first poll, which ended such tenures forever (simulator seed 2969).
        leader.progress_at = now;
        if !leader.voter {
            let offset = self.layout.standing();
            fabric.store(offset, &record::encode(offset, leader.ballot));
            leader.voter = true;
            self.voter = true;
            info!("tenure {}: admitted itself", leader.tenure);
        }
    }

    /// Rewrites the chosen value under this tenure's ballot into the own log, its adoption
    /// record included, and plans how each member whose copy the prepare read gets it (see
    /// [`Adoption`]); the others get it once it is decided, as a decided rewrite.
    fn adopt<F: Fabric>(
        &mut self,
        now: u64,
        position: u64,
        source: Option<ReplicaId>,
        fabric: &mut F,
    ) {
        let size = self.config.slot_size as usize;
        let from = match source {
            Some(peer) => self.layout.landing_slot(peer),
            None => self.layout.slot(position),
        };
        fabric.load(from, &mut self.slot[..size]);
        let Ok(opened) = slot::open(&self.slot[..size], position) else {
            self.doom(); // Changed under us; cannot happen while this replica holds the grants.
            return;
        };
        let (applied, capacity) = (self.applied, self.config.slot_payload_bytes());
        let deadline = now + self.phase_timeout();
        let leader = self.leader.as_mut().expect("leading");
        // A decided value keeps its value bytes: its chain_prev is the decided prefix's chain,
        // which this leader applied. Only an undecided value may change (and tear) here.
        let adopted = SlotHeader {
            chain_prev: leader.next_chain,
            ..opened.header
        };
        let acceptance = Acceptance {
            ballot: leader.ballot,
            commit: applied,
        };
        let payload_end = SLOT_HEADER_BYTES as usize + opened.header.frag_len(capacity) as usize;
        let mut sealed = [0u8; SLOT_HEADER_BYTES as usize];
        let chain = adopted.seal(
            &self.slot[SLOT_HEADER_BYTES as usize..payload_end],
            acceptance,
            &mut sealed,
        );
        debug_assert!(adopted.chain_prev != opened.header.chain_prev || chain == opened.chain);
        self.slot[..SLOT_HEADER_BYTES as usize].copy_from_slice(&sealed);
        fabric.store(self.layout.slot(position), &self.slot[..size]);
        if MARKED_REWRITES {
            let record = self.layout.adoption_record(position);
            fabric.store(record, &slot::encode_adoption(chain, acceptance.ballot));
        }
        leader.next = position + 1;
        leader.next_chain = chain;
        leader.acks[(position % ACK_WINDOW as u64) as usize] = 1 << self.me;
        leader.phase = Phase::Adopting { position };
        leader.deadline = deadline;
        debug!("adopted position {}", position);
        self.plan_adoption(position, chain, fabric);
    }

    // ---- fast path ---------------------------------------------------------------------------

    /// The first position that may not be written yet: one lap past the least applied position
    /// among this replica and every replica that shows a sign of life: considered alive, a
    /// heartbeat seen moving within the read timeout (a leader back from a partition still
    /// rates everyone low), or an applied position that rose within `op_timeout_ticks`. A lapped
    /// replica never holds the log back.
    fn recycle_limit(&self, now: u64) -> u64 {
        let leader = self.leader.as_ref().expect("leading");
        let alive = self.shared.alive() | self.shared.lively();
        let recent = self.config.op_timeout_ticks as u64;
        let mut least = self.applied;
        for peer in self.others() {
            let p = peer as usize;
            let applying = now.saturating_sub(leader.applied_moved_at[p]) <= recent;
            if (alive & (1 << peer) != 0 || applying) && !leader.members[p].lapped {
                least = least.min(leader.applied_of[p]);
            }
        }
        least.saturating_add(self.config.slot_count as u64)
    }

    /// Encodes queued commands into the own log, as far as the pipeline and recycling allow,
    /// and only while a majority of members takes writes whose acks count: proposing without one decides
    /// nothing and overwrites slots of the own log that a lagging replica may still need.
    fn propose<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let leader = self.leader.as_ref().expect("leading");
        let mut takers = 0u8;
        for peer in self.others() {
            let member = leader.members[peer as usize];
            let counted = leader.counted & (1 << peer) != 0;
            if member.state == MemberState::Active && counted && !member.lapped {
                takers |= 1 << peer;
            }
        }
        if !self.quorum_with(takers) {
            return;
        }
        let limit = self.recycle_limit(now);
        let capacity = self.config.slot_payload_bytes() as usize;
        let depth = self.config.pipeline_depth as u64;
        let (me, applied) = (self.me, self.applied);
        let leader = self.leader.as_mut().expect("leading");
        while leader.next - applied < depth {
            let Some((sequence, command)) = self.queue.next_to_propose() else {
                break;
            };
            let frag_count = command.len().div_ceil(capacity);
            if leader.next + frag_count as u64 > limit {
                break; // Recycling: wait until the slowest alive replica applied more.
            }
            for (index, chunk) in command.chunks(capacity).enumerate() {
                let position = leader.next;
                let header = SlotHeader {
                    position,
                    chain_prev: leader.next_chain,
                    origin: origin(me, sequence),
                    entry_len: command.len() as u32,
                    frag_index: index as u16,
                    frag_count: frag_count as u16,
                };
                let acceptance = Acceptance {
                    ballot: leader.ballot,
                    commit: applied,
                };
                let mut sealed = [0u8; SLOT_HEADER_BYTES as usize];
                leader.next_chain = header.seal(chunk, acceptance, &mut sealed);
                let offset = self.layout.slot(position);
                fabric.store(offset, &sealed);
                fabric.store(offset + SLOT_HEADER_BYTES, chunk);
                leader.acks[(position % ACK_WINDOW as u64) as usize] = 1 << me;
                leader.next += 1;
            }
            assert!(((leader.next - applied) as usize) < ACK_WINDOW);
            self.queue.mark_proposed(sequence);
        }
    }

    /// Sends every active member what it has not been sent, in at most two writes each.
    ///
    /// Positions below `fresh_from` are *rewrites*: the member may hold their values already,
    /// perhaps as the only intact copy of a decided one. Decided positions go in two phases:
    /// their decided marks first, and their slots only once those completed, so that a slot
    /// write cut anywhere leaves the copy marked decided (see `slot`). The value being adopted
    /// goes only to members whose copy the prepare read (`post_adoption`). Fresh positions go
    /// in one write.
    fn post_log_writes<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let slot_count = self.config.slot_count as u64;
        let leader = self.leader_mut();
        let (next, fresh_from) = (leader.next, leader.fresh_from());
        for peer in self.others() {
            if !self.is_active(peer) {
                continue;
            }
            self.resync_if_stuck(now, peer, fabric);
            let leader = self.leader_mut();
            let applied = leader.applied_of[peer as usize];
            let member = &mut leader.members[peer as usize];
            if !member.lapped && next > applied.saturating_add(slot_count) {
                // It shows no sign of life, did not hold recycling back, and now needs a
                // position this log no longer holds.
                member.lapped = true;
            }
            if member.lapped {
                self.post_lap_notice(now, peer, fabric);
                continue;
            }
            // Never overwrite a position a member has not applied yet.
            let end = next.min(applied.saturating_add(slot_count));
            // More than a lap unsent only happens to a member that was ahead (it holds what it
            // was not sent: end <= applied + slot_count).
            let sent = member.sent.max(end.saturating_sub(slot_count));
            if sent >= end {
                continue;
            }
            if member.fenced < sent {
                member.fence_from(sent);
            }
            // On the fast path everything below `fresh_from` is decided; while adopting,
            // everything below the own applied position.
            let decided_end = end.min(fresh_from).min(self.applied);
            let send_end = if sent < decided_end {
                match self.fence_decided(now, peer, decided_end, fabric) {
                    None => {
                        self.leader_mut().members[peer as usize].lapped = true;
                        continue;
                    }
                    Some(fenced) if fenced < decided_end => fenced,
                    Some(_) if decided_end == fresh_from => end,
                    Some(_) => decided_end,
                }
            } else if sent >= fresh_from {
                end
            } else {
                self.post_adoption(now, peer, fabric);
                continue;
            };
            for (start, end) in ring_pieces(sent, send_end, slot_count) {
                let offset = self.layout.slot(start);
                let len = (end - start) as u32 * self.config.slot_size;
                if !self.post(
                    now,
                    fabric,
                    peer,
                    Kind::WriteLog,
                    start as u32,
                    (start, end),
                    offset,
                    offset,
                    len,
                ) {
                    break;
                }
                self.leader_mut().members[peer as usize].sent = end;
            }
        }
    }

    /// Phase one of the decided rewrites of `[sent, decided_end)` to `peer`: marks the own
    /// copies of the positions not posted yet decided and posts their marks, each position once
    /// per resend. Returns how far its slots may be written now, the end of the marks that
    /// landed (with the planted defect `bug-torn-rewrite`, `decided_end` at once); `None` when a
    /// slot of the range does not open any more (recycled since): the member cannot be served
    /// from this log.
    fn fence_decided<F: Fabric>(
        &mut self,
        now: u64,
        peer: ReplicaId,
        decided_end: u64,
        fabric: &mut F,
    ) -> Option<u64> {
        let slot_count = self.config.slot_count as u64;
        let member = self.leader_mut().members[peer as usize];
        assert!(member.sent <= member.fenced && member.fenced <= member.fence_posted);
        if member.fence_posted >= decided_end {
            return Some(member.fenced);
        }
        for (start, end) in ring_pieces(member.fence_posted, decided_end, slot_count) {
            if !(start..end).all(|position| self.mark_decided_at(position, fabric)) {
                return None;
            }
            if !MARKED_REWRITES {
                continue;
            }
            let offset = self.layout.decided_mark(start);
            let len = (end - start) as u32 * RECORD_BYTES;
            let (kind, tag, range) = (Kind::WriteDecided, start as u32, (start, end));
            if !self.post(now, fabric, peer, kind, tag, range, offset, offset, len) {
                break;
            }
            self.leader_mut().members[peer as usize].fence_posted = end;
        }
        if !MARKED_REWRITES {
            self.leader_mut().members[peer as usize].fence_from(decided_end);
            return Some(decided_end);
        }
        Some(self.leader_mut().members[peer as usize].fenced)
    }

    /// Marks the own copy of the decided `position` decided; false if it does not open.
    fn mark_decided_at<F: Fabric>(&mut self, position: u64, fabric: &mut F) -> bool {
        assert!(
            position < self.applied,
            "only a decided position is marked decided"
        );
        let Ok(opened) = self.open_local(fabric, position) else {
            return false;
        };
        if MARKED_REWRITES {
            let mark = slot::encode_decided(opened.chain);
            fabric.store(self.layout.decided_mark(position), &mark);
        }
        true
    }

    /// Plans, for every member whose copy of `position` the prepare read, how the value adopted
    /// there (whose chain is `chain`) goes to it: the write that leaves the record holding the
    /// copy's highest ballot alone (see [`Adoption`]).
    fn plan_adoption<F: Fabric>(&mut self, position: u64, chain: u64, fabric: &mut F) {
        let size = self.config.slot_size as usize;
        let replies = self.leader_mut().replies;
        let mut adoption = [0u8; RECORD_BYTES as usize];
        let mut decided = [0u8; RECORD_BYTES as usize];
        for peer in self.others() {
            if replies & (1 << peer) == 0 {
                continue;
            }
            fabric.load(self.layout.landing_slot(peer), &mut self.slot[..size]);
            fabric.load(self.layout.landing_adoption(peer), &mut adoption);
            fabric.load(self.layout.landing_decided(peer), &mut decided);
            let plan = match slot::open(&self.slot[..size], position) {
                _ if !MARKED_REWRITES => Adoption::Slot,
                Ok(copy) if copy.chain == chain && slot::is_decided(chain, &decided) => {
                    Adoption::Held
                }
                Ok(copy) if copy.chain == chain => {
                    let in_slot = copy.accepted.map(|a| a.ballot);
                    match (in_slot, slot::decode_adoption(chain, &adoption)) {
                        (Some(a), b) if b.is_none_or(|b| a >= b) => Adoption::Record,
                        _ => Adoption::Slot,
                    }
                }
                _ => Adoption::Slot,
            };
            self.leader_mut().members[peer as usize].adoption = Some((position, plan));
        }
    }

    /// Sends `peer` the value adopted at the position it is due next, as planned; a member
    /// without a plan for it gets it once it is decided.
    fn post_adoption<F: Fabric>(&mut self, now: u64, peer: ReplicaId, fabric: &mut F) {
        let member = self.leader_mut().members[peer as usize];
        let Some((position, plan)) = member.adoption else {
            return;
        };
        if position != member.sent {
            return;
        }
        assert!(
            position >= self.applied,
            "an adoption under way is undecided"
        );
        let range = (position, position + 1);
        let posted = match plan {
            Adoption::Held => {
                self.ack_range(peer, position, position + 1);
                true
            }
            Adoption::Record => {
                let offset = self.layout.adoption_record(position);
                let (kind, tag) = (Kind::WriteAdoption, position as u32);
                self.post(
                    now,
                    fabric,
                    peer,
                    kind,
                    tag,
                    range,
                    offset,
                    offset,
                    RECORD_BYTES,
                )
            }
            Adoption::Slot => {
                let (offset, len) = (self.layout.slot(position), self.config.slot_size);
                let (kind, tag) = (Kind::WriteLog, position as u32);
                self.post(now, fabric, peer, kind, tag, range, offset, offset, len)
            }
        };
        if posted {
            let member = &mut self.leader_mut().members[peer as usize];
            member.sent = position + 1;
            member.fence_from(position + 1);
            member.adoption = None;
        }
    }

    /// Tells a lapped member, in its log header (never its slots), the lowest position
    /// from which this log can still send every position up to `next`; the member halts when
    /// that is above what it applied. Sent again every `recycle_period_ticks` while it stays a
    /// member: a lost or torn notice heals.
    fn post_lap_notice<F: Fabric>(&mut self, now: u64, peer: ReplicaId, fabric: &mut F) {
        let leader = self.leader.as_ref().expect("leading");
        if now < leader.members[peer as usize].notice_at {
            return;
        }
        let applied = leader.applied_of[peer as usize];
        let floor = self.oldest_held(fabric);
        if applied >= floor {
            // Its applied position was stale: this log can serve it after all.
            let member = &mut self.leader_mut().members[peer as usize];
            member.lapped = false;
            member.resend_from(applied);
            return;
        }
        let remote = self.layout.lap_notice();
        let local = self.layout.outbox_lap_notice();
        fabric.store(local, &record::encode(remote, floor));
        if self.post(
            now,
            fabric,
            peer,
            Kind::WriteLapNotice,
            0,
            (0, 0),
            local,
            remote,
            RECORD_BYTES,
        ) {
            let period = self.config.recycle_period_ticks as u64;
            self.leader_mut().members[peer as usize].notice_at = now + period;
        }
    }

    /// The lowest position `q` such that the own log holds every position of `[q, next)`.
    ///
    /// The scan opens up to a lap of slots: on the fast path it runs once per tenure (a lapped
    /// member gets a notice every recycle period, and a lap of checksums each time would take
    /// the leader's polls from the commit path).
    fn oldest_held<F: Fabric>(&mut self, fabric: &mut F) -> u64 {
        let slot_count = self.config.slot_count as u64;
        let leader = self.leader.as_ref().expect("leading");
        let (next, streaming) = (leader.next, leader.fast_path());
        if let (true, Some(from)) = (streaming, leader.held_from) {
            return from.max(next.saturating_sub(slot_count));
        }
        let mut floor = next;
        while floor > 0 && next - floor < slot_count {
            if !self.log_holds(fabric, floor - 1, floor) {
                break;
            }
            floor -= 1;
        }
        if streaming {
            self.leader_mut().held_from = Some(floor);
        }
        floor
    }

    /// True when a written position waited longer than `op_timeout_ticks` for a majority, or a
    /// queued command waited that long to be proposed.
    fn stalled(&self, now: u64) -> bool {
        let leader = self.leader.as_ref().expect("leading");
        leader.fast_path()
            && now.saturating_sub(leader.progress_at) > self.config.op_timeout_ticks as u64
    }

    /// A member that holds what it was sent but does not apply it for `op_timeout_ticks` lost a
    /// slot (damaged, or a write dropped by a reset): send everything from its applied position
    /// again, if this log still holds it.
    fn resync_if_stuck<F: Fabric>(&mut self, now: u64, peer: ReplicaId, fabric: &mut F) {
        let patience = self.config.op_timeout_ticks as u64;
        let leader = self.leader.as_ref().expect("leading");
        let p = peer as usize;
        let (applied, member, next) = (leader.applied_of[p], leader.members[p], leader.next);
        let since = leader.applied_moved_at[p].max(leader.started_at);
        let stuck = now.saturating_sub(since) > patience;
        // It cannot apply past what is decided: a member waiting for a decision lost nothing
        // (and a repair of it, counted as progress, would hide a tenure that decides nothing;
        // simulator seed 17601).
        if !stuck || member.lapped || applied >= member.sent.min(self.applied) {
            return;
        }
        debug_assert!(applied < next, "applied < sent <= next");
        let holds = applied >= self.oldest_held(fabric);
        let leader = self.leader_mut();
        let member = &mut leader.members[p];
        member.lapped = !holds;
        if holds {
            member.resend_from(applied);
        }
        member.commit_sent = 0;
        leader.applied_moved_at[p] = now;
        // A repair under way is progress: give it a timeout before calling the tenure stalled
        // (only for a member whose acks count: repairing another one decides nothing).
        if leader.counted & (1 << peer) != 0 {
            leader.progress_at = now;
        }
    }

    /// Applies every position a majority holds, in order.
    fn advance_commit<F: Fabric, S: StateMachine>(&mut self, now: u64, fabric: &mut F, sm: &mut S) {
        loop {
            let leader = self.leader.as_mut().expect("leading");
            if self.applied >= leader.next {
                // Nothing undecided. Idle only if nothing waits to be proposed either: queued
                // commands that cannot be proposed (no majority of members, recycling held back)
                // count as a stall, which ends the tenure and surveys everyone again.
                if self.queue.next_to_propose().is_none() {
                    leader.progress_at = now;
                }
                return;
            }
            let votes = leader.acks[(self.applied % ACK_WINDOW as u64) as usize];
            assert!(
                votes & (1 << self.me) != 0,
                "the leader holds what it sends"
            );
            if count(votes) < self.config.quorum() {
                return;
            }
            let position = self.applied;
            let opened = self
                .open_local(fabric, position)
                .expect("the own log holds what the leader wrote");
            assert_eq!(
                opened.header.chain_prev, self.applied_chain,
                "the own log chains"
            );
            self.apply_slot(opened.header, opened.chain, sm);
            self.leader_mut().progress_at = now;
        }
    }

    /// When the leader is idle, followers learn the last commit point from the commit record
    /// (otherwise they would lag one command behind until the next one); it is written from the
    /// poll after the one that decided the last position (`just_decided`), since a command
    /// arriving meanwhile carries the commit point in its slot for free. An idle leader also
    /// writes it again every `permission_retry_ticks`: a write into the member's log is how it
    /// learns that its grant was revoked meanwhile (another replica led for a while and the
    /// others then chose this one again: they wait for its new request, which it makes only once
    /// a write is refused).
    fn post_commit_record<F: Fabric>(&mut self, now: u64, fabric: &mut F, just_decided: bool) {
        let leader = self.leader.as_ref().expect("leading");
        // Nothing undecided after `propose` ran: the leader is idle, or cannot propose what it
        // queued (recycling held back, too few members). Then no slot carries the commit point
        // either, and members that lack it would not apply what is decided (nor count as
        // stuck only because of that; simulator seed 17772).
        let idle = leader.fast_path() && self.applied == leader.next;
        // Not in the poll that decided the last position: a client that sends its next command
        // right after a commit (the common case under load) lets that command's slot carry the
        // commit point, which saves a write per member per command; an idle leader writes the
        // record at its next poll.
        if !idle || just_decided {
            return;
        }
        let applied = self.applied;
        let offset = self.layout.commit_record();
        let probe_period = self.config.permission_retry_ticks as u64;
        let mut staged = false;
        for peer in self.others() {
            let leader = self.leader_mut();
            let member = leader.members[peer as usize];
            let in_flight = leader.commit_inflight & (1 << peer) != 0;
            let probe_due = now.saturating_sub(member.commit_sent_at) >= probe_period;
            if member.state != MemberState::Active
                || member.sent < applied
                || (member.commit_sent >= applied && !probe_due)
                || in_flight
            {
                continue;
            }
            if !staged {
                // Staged once per commit point; nothing of an older one is in flight to anyone
                // who still needs this one.
                fabric.store(
                    self.layout.outbox_commit(),
                    &encode_commit(offset, applied, self.applied_chain),
                );
                staged = true;
            }
            let local = self.layout.outbox_commit();
            if self.post(
                now,
                fabric,
                peer,
                Kind::WriteCommit,
                0,
                (0, 0),
                local,
                offset,
                COMMIT_RECORD_BYTES,
            ) {
                let leader = self.leader_mut();
                leader.commit_inflight |= 1 << peer;
                let member = &mut leader.members[peer as usize];
                member.commit_sent = applied;
                member.commit_sent_at = now;
            }
        }
    }

    /// Every `recycle_period_ticks` (off the fast path's polls in between): reads the applied
    /// positions, admits recovered members (their applied positions change only through these
    /// reads) and recounts members that joined recovering.
    fn tend_members<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let period = self.config.recycle_period_ticks as u64;
        if now < self.leader_mut().recycle_at {
            return;
        }
        self.leader_mut().recycle_at = now + period;
        self.read_applied_positions(now, fabric);
        self.admit_recovered(now, fabric);
        self.recount_late_members(now, fabric);
    }

    /// Reads the applied position of every replica considered alive and of every active member.
    fn read_applied_positions<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let alive = self.shared.alive() | self.shared.lively();
        let active = self.active_members();
        for peer in self.others() {
            let wanted = (alive | active) & (1 << peer) != 0;
            if !wanted || self.leader_mut().members[peer as usize].recycle_read {
                continue;
            }
            let (local, remote) = (self.layout.landing_applied(peer), self.layout.applied());
            if self.post(
                now,
                fabric,
                peer,
                Kind::ReadApplied,
                TAG_RECYCLE,
                (0, 0),
                local,
                remote,
                RECORD_BYTES,
            ) {
                self.leader_mut().members[peer as usize].recycle_read = true;
            }
        }
    }
}

/// Splits the positions `[start, end)` of a ring of `slot_count` slots into at most two
/// contiguous pieces.
fn ring_pieces(start: u64, end: u64, slot_count: u64) -> impl Iterator<Item = (u64, u64)> {
    assert!(start <= end && end - start <= slot_count);
    let boundary = start - start % slot_count + slot_count;
    let first = (start, end.min(boundary));
    let second = (boundary, end);
    [first, second].into_iter().filter(|(a, b)| a < b)
}
