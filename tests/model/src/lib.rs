//! An exhaustive model of Mu's replication protocol, checked with [`stateright`].
//!
//! The model explores every interleaving of a small bounded cluster (breadth-first) and checks
//! that a value decided at a log position is never contradicted by another decision there and
//! never becomes unrecoverable. It has two slot formats ([`Variant`]):
//!
//! - [`Variant::Fixed`]: the value part of a slot (position, `chain_prev`, origin, payload) is
//!   protected by one checksum; what a copy was accepted under lives in two checked records,
//!   each bound to the value's chain: the *acceptance record A* inside the slot and the
//!   *rewrite record B* in a separate area of the log (under the same grant). Every rewrite
//!   (adoption of a value the prepare found, catch-up of a position the leader knows decided) is
//!   two-phase: the leader rewrites its own copy (A and B), then on each member lands B first
//!   and, only after B's completion, posts the whole slot (value part + A). Fast-path writes are
//!   one write (value + A).
//! - [`Variant::Planted`]: the old format, one checksum over value, ballot and commit, and
//!   single-phase rewrites; catch-up copies the leader's own copy with its old ballot. A cut
//!   rewrite of the same value under another ballot leaves the slot torn, and a prepare counts a
//!   torn slot as "nothing accepted".
//!
//! # Findings
//!
//! - `planted` loses a decided value (found in seconds; `mu-model planted` prints the trace).
//! - `fixed`, as specified, also loses one. Within 3 tenures and 1 crash no two decisions
//!   differ, but a decided value can be left with no valid record on the only copy a quorum
//!   still has (`recoverable` is violated); with a fourth tenure (no crash needed,
//!   [`Bounds::deep`]) another value is decided at the same position. The shortest trace:
//!   `A` decides `v1` at p0 with `B` (C never has it). `A`'s next tenure catches p0 up on `B`:
//!   phase 1 lands B = (6, v1), phase 2 is cut by `A`'s third tenure's revoke, which keeps the
//!   value bytes (identical) but tears A. `B`'s copy now rests on record B alone. `A`'s third
//!   tenure catches p0 up again: its phase 1 overwrites that very record B and is cut (by
//!   `B` granting `B`'s own tenure), so `B`'s copy has a valid `v1` and neither record: nothing
//!   accepted. `B` prepares with `C`, reads nothing accepted, and decides `v2` at p0. The flaw:
//!   phase 1 overwrites record B in place even when B is the only valid record of the copy
//!   (a torn phase 2 left A invalid). A remedy must never tear the record that holds a copy's
//!   highest ballot while it is the only one, e.g. write the other record, or land a record
//!   whose bytes every writer of a decided value writes identically.
//!
//! # What the model covers
//!
//! - Three replicas, `A`, `B`, `C`. Each has a memory region that others access with one-sided
//!   reads and writes: the promise `min_proposal`, `standing` (0 while a restarted replica is
//!   recovering and may not vote; initially every replica is a voter with standing 1: a fresh
//!   cluster already formed), the `grant` (which tenure may access this memory: at most one),
//!   and per position a slot (value part, record A, record B). A reader sees a value part as
//!   empty, valid (which value) or torn, and a record as valid only if its check binds it to the
//!   valid value there; the *accepted ballot* is the higher valid record, and a torn value, or a
//!   valid one with no valid record, is "nothing accepted".
//! - A *tenure* of leader `L`. Every replica (`L` included), independently and in any
//!   interleaving, revokes its grantee and grants the tenure. `L` leads only while it holds its
//!   own grant: every access to its own memory requires it (remote accesses need only the
//!   member's grant, so `L` may go on with members after granting someone else).
//!   Prepare: `L` reads promise and standing of any subset of the members that granted it (at
//!   least one a voter; a recovering member does not count); the prepared quorum is `L` plus the
//!   voters read. The ballot is the smallest `round * 3 + L` above every promise read, `L`'s own
//!   and every ballot `L` used before (unique and increasing per replica; a ghost counter that
//!   survives crashes stands for however the implementation ensures that). `L` writes it to its
//!   own promise, then to each quorum member, and waits for those writes.
//! - The log, one position at a time from `L`'s first undecided position (the positions it
//!   decided itself: a CPU-side count lost in a crash). Positions below it are caught up on
//!   every member from `L`'s own copy (`fixed`: a rewrite under the new ballot; `planted`: its
//!   bytes as they are). From there `L` reads the slot of every quorum member and its own, and
//!   adopts the value with the highest accepted ballot (a rewrite); if none has one, the fast
//!   path starts there and `L` proposes its own value at this and every later position. `L`
//!   writes its own copy first, then to every member it read in the prepare, per member in
//!   position order: a member's next position is posted once the previous one's slot write is
//!   posted (writes pipeline; phase 2 waits for phase 1's completion). A position is decided
//!   when `L`'s copy plus the completions of the slot write from members `L` counts as voters
//!   are a majority; then `L` moves on.
//! - Admission: once the tenure's recovery is over (its fast path started, or every position
//!   was adopted) and a recovering member acknowledged every position the tenure caught up,
//!   adopted or decided, `L` may write the member's standing = `b`; from its completion `L`
//!   counts the member's acknowledgements (and later prepares count it as a voter).
//! - Permissions and tearing. A remote write lands only while its target grants the writing
//!   tenure; a revoke fences every write posted before it, and so does the writer's crash. A
//!   write lands whole (in posting order per connection) and completes, or is *cut*: it then
//!   lands with any mixture of old and new bytes, independently per field (value part, record):
//!   each field keeps its old bytes, takes the new ones whole, or is mixed, which tears it
//!   unless the old and new bytes are identical (identical value bytes stay valid; an identical
//!   record stays valid). A cut slot write of `planted` tears the whole slot unless identical.
//!   The worst case (value torn unless identical, record torn unless identical) is one of the
//!   outcomes. Reads, promises and standing are atomic words.
//! - Crash and restart: any replica may crash at any time: its tenure ends, every write it has
//!   in flight is cut there and then, writes to it are lost. A restart gives it fresh memory:
//!   empty log, promise 0, standing 0, no grant, no decided prefix.
//!
//! # Steps merged (without losing behaviours)
//!
//! - Reads of a member's memory happen in the leader's next local step (closing the prepare,
//!   choosing a position's value): while the leader holds the member's grant nobody else can
//!   write there, and a revoke before the read only ends what the leader could still do.
//! - Writes are posted as soon as they may be: a write posted early and cut with its old bytes
//!   kept is the same as one not posted yet.
//! - A tenure starts with its first grant; a tenure that can never act again is ended; an ended
//!   tenure's ballot and an idle grant to it do not distinguish states.
//! - A leader is never forced to act: stopping at any point is always an interleaving.
//!
//! # Properties
//!
//! - `agreement`: at most one value is ever decided at a position (ghost set per position).
//! - `no loss`: once a value is decided at a position, no later decision there differs (ghost:
//!   the first decision per position). In an interleaving model it fails exactly when
//!   `agreement` does.
//! - `recoverable` (stronger: an early warning): for each decided position, every set of two or
//!   three live voters would, if a leader prepared with it now, adopt the decided value. When it
//!   fails, one more tenure can decide another value.
//! - Witnesses that the model is not vacuous (sometimes-properties): `every position decided`,
//!   `restarted replica admitted`, `rewrite cut with value kept`.
//!
//! # What the model abstracts away
//!
//! - Promises are atomic words (the real code keeps two checked records and overwrites the
//!   older, so a torn promise never loses the highest value).
//! - Bytes are a few abstract pieces: value part, record A, record B. A value is the id of the
//!   tenure that proposed it (per position); "same value" means identical value bytes
//!   (`chain_prev` is the digest of the decided prefix, which every later leader shares). The
//!   commit point in A is left out: a rewrite by another tenure differs in ballot anyway, and a
//!   tenure writes each record of a member at most once.
//! - No circular-log recycling (laps), no state transfer, no failure detector, no clients, no
//!   timing: tenures start whenever the bounds allow, and message timing is interleaving.
//! - Followers do not learn commit points; only `L`'s own decisions shorten its recovery, and it
//!   catches up every member at every position below that (it does not track what they applied).
//! - A tenure collects grants only before its prepare closes and replicates to the members whose
//!   promise it read; a refused access (Denied) simply disables that member for the tenure.
//! - Three replicas, so a quorum is two.
//!
//! # Bounds
//!
//! [`Bounds`] sets positions (at most [`MAX_POSITIONS`]), tenures in total (at most
//! [`MAX_TENURES`]), crashes, restarts and which replicas may lead. Unique states and times
//! measured on two shared cores, release build (`mu-model all`: 158 s, 4.3 GiB peak):
//!
//! - [`Bounds::positions`] (2 positions, 3 tenures, no crash): `fixed` 34,996,420 states, whole
//!   space, 101 s, about 4 GiB.
//! - [`Bounds::quick`] (1 position, 3 tenures, 1 crash, 1 restart; the integration test):
//!   `fixed` 6,775,416 states, whole space, 19 s; `planted` stops at its first conflicting
//!   decision after about 1.6 million.
//! - [`Bounds::standard`] (2 positions, 3 tenures, 1 crash, 1 restart): `planted` stops after
//!   5,572,411 states (14 s); `fixed`'s whole space does not fit a 24 GiB machine breadth-first
//!   (over 10 GiB of frontier after five minutes, still growing), so `mu-model fixed` checks it
//!   as the two bounds above.
//! - [`Bounds::deep`] (1 position, 4 tenures, no crash, leaders `A` and `B`): `fixed` reaches
//!   its conflicting decision after 9,057,358 states (25 s).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use stateright::{Checker, HasDiscoveries, Model, Path, Property};
use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

/// Replicas in the model.
pub const REPLICAS: usize = 3;
/// Largest number of log positions a [`Bounds`] may ask for.
pub const MAX_POSITIONS: usize = 3;
/// Largest number of tenures a [`Bounds`] may ask for.
pub const MAX_TENURES: usize = 4;
/// Writes in flight to one replica at most (every position of one tenure plus a standing write).
const MAX_INFLIGHT: usize = MAX_POSITIONS + 1;
/// Majority of three.
const QUORUM: u32 = 2;
/// No position (as a `u8`).
const NO_POS: u8 = u8::MAX;
/// Replica names in traces.
const NAMES: [char; REPLICAS] = ['A', 'B', 'C'];

/// Which slot format and rewrite protocol the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Value part under its own checksum, records A and B bound to it, two-phase rewrites.
    Fixed,
    /// One checksum over value, ballot and commit; single-phase rewrites.
    Planted,
}

impl Variant {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Fixed => "fixed",
            Variant::Planted => "planted",
        }
    }
}

/// How far the exploration goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Log positions (1 to [`MAX_POSITIONS`]).
    pub positions: u8,
    /// Tenures started in total (1 to [`MAX_TENURES`]).
    pub tenures: u8,
    /// Crashes in total.
    pub crashes: u8,
    /// Restarts in total (a restarted replica recovers and may be admitted).
    pub restarts: u8,
    /// Replicas that may lead (bit per replica; the others only grant and accept).
    pub leaders: u8,
}

impl Bounds {
    /// 2 positions, 3 tenures, 1 crash, 1 restart.
    pub const fn standard() -> Self {
        Bounds {
            positions: 2,
            tenures: 3,
            crashes: 1,
            restarts: 1,
            leaders: 0b111,
        }
    }

    /// 2 positions, 3 tenures, no crash.
    pub const fn positions() -> Self {
        Bounds {
            crashes: 0,
            restarts: 0,
            ..Bounds::standard()
        }
    }

    /// 1 position, 3 tenures, 1 crash, 1 restart: the bounds of the integration test.
    pub const fn quick() -> Self {
        Bounds {
            positions: 1,
            ..Bounds::standard()
        }
    }

    /// 1 position, 4 tenures, no crash, only `A` and `B` lead: deep enough for a decision, two
    /// successive cut rewrites of one member's copy, and a second deciding tenure.
    pub const fn deep() -> Self {
        Bounds {
            positions: 1,
            tenures: 4,
            crashes: 0,
            restarts: 0,
            leaders: 0b011,
        }
    }
}

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let leaders: String = (0..REPLICAS as u8)
            .filter(|&r| has(self.leaders, r))
            .map(|r| NAMES[r as usize])
            .collect();
        write!(
            f,
            "{} replicas, {} positions, {} tenures, {} crash(es), {} restart(s), leaders {}",
            REPLICAS, self.positions, self.tenures, self.crashes, self.restarts, leaders
        )
    }
}

/// The value part of a slot as a reader sees it. A value is named by the tenure that proposed
/// it (its index, 0-based; traces print it 1-based as `v1`, `v2`, ...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Bytes {
    /// Never written.
    #[default]
    Empty,
    /// Checksum matches: the value proposed by this tenure.
    Valid(u8),
    /// Checksum fails.
    Torn,
}

/// A checked record (A or B): the ballot and the value whose chain it is bound to. It counts
/// only while the slot's value part is that very value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rec {
    /// Ballot the copy was written under.
    pub ballot: u8,
    /// The value the record's check binds it to.
    pub bound: u8,
}

/// One log position of one replica. In the planted format `a` is the ballot part of the one
/// checksummed slot (valid exactly when the value part is) and `b` is unused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Slot {
    /// The value part.
    pub value: Bytes,
    /// Acceptance record inside the slot (`None`: torn or never written).
    pub a: Option<Rec>,
    /// Rewrite record in the rewrite area (`None`: torn or never written).
    pub b: Option<Rec>,
}

impl Slot {
    /// The accepted `(ballot, value)`: the highest valid record bound to the valid value there.
    pub fn accepted(&self) -> Option<(u8, u8)> {
        let Bytes::Valid(v) = self.value else {
            return None;
        };
        [self.a, self.b]
            .into_iter()
            .flatten()
            .filter(|r| r.bound == v)
            .map(|r| r.ballot)
            .max()
            .map(|b| (b, v))
    }
}

/// A remote write posted by a tenure and not landed yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Write {
    /// Unused entry.
    #[default]
    Nothing,
    /// The slot: value part and record A (planted: the whole checksummed slot).
    Slot {
        /// Writing tenure.
        tenure: u8,
        /// Position.
        pos: u8,
        /// Value.
        val: u8,
        /// Ballot carried in record A.
        ballot: u8,
    },
    /// Phase 1 of a rewrite: record B.
    Rewrite {
        /// Writing tenure.
        tenure: u8,
        /// Position.
        pos: u8,
        /// Value the record is bound to.
        val: u8,
        /// Ballot.
        ballot: u8,
    },
    /// Admission: the member's standing.
    Standing {
        /// Writing tenure.
        tenure: u8,
        /// The admitting ballot.
        ballot: u8,
    },
}

impl Write {
    fn tenure(self) -> u8 {
        match self {
            Write::Nothing => NO_POS,
            Write::Slot { tenure, .. }
            | Write::Rewrite { tenure, .. }
            | Write::Standing { tenure, .. } => tenure,
        }
    }
}

/// One replica: its memory (what others read and write) and a little CPU state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Replica {
    /// Running (false between a crash and its restart).
    pub up: bool,
    /// `min_proposal`.
    pub promise: u8,
    /// 0 while recovering, else the ballot that admitted it.
    pub standing: u8,
    /// The tenure that may access this memory.
    pub grant: Option<u8>,
    /// The log.
    pub log: [Slot; MAX_POSITIONS],
    /// Writes posted to this replica by its grantee and not landed, in posting order.
    pub inflight: [Write; MAX_INFLIGHT],
    /// CPU: positions below this it decided itself as a leader (lost in a crash).
    pub known: u8,
    /// Ghost: the highest ballot it ever used (keeps ballots unique per replica).
    pub last_ballot: u8,
}

impl Replica {
    fn fresh(up: bool, standing: u8, last_ballot: u8) -> Self {
        Replica {
            up,
            promise: 0,
            standing,
            grant: None,
            log: [Slot::default(); MAX_POSITIONS],
            inflight: [Write::Nothing; MAX_INFLIGHT],
            known: 0,
            last_ballot,
        }
    }

    fn inflight_len(&self) -> usize {
        self.inflight
            .iter()
            .take_while(|w| **w != Write::Nothing)
            .count()
    }

    fn push(&mut self, w: Write) {
        let n = self.inflight_len();
        assert!(n < MAX_INFLIGHT, "in-flight queue overflow");
        self.inflight[n] = w;
    }

    fn pop_front(&mut self) -> Write {
        let w = self.inflight[0];
        self.inflight.copy_within(1.., 0);
        self.inflight[MAX_INFLIGHT - 1] = Write::Nothing;
        w
    }
}

/// Where a tenure is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Collecting grants and reading promises.
    Prepare,
    /// Writing the ballot to the quorum.
    Promise,
    /// Catch-up, recovery reads, rewrites, fast path, admission.
    Log,
    /// Over (crashed leader, or the leader started another tenure).
    Ended,
}

/// Per member and position: how far the tenure's writes got.
const P_NONE: u8 = 0;
const P_B_POSTED: u8 = 1;
const P_B_DONE: u8 = 2;
const P_SLOT_POSTED: u8 = 3;
const P_ACKED: u8 = 4;

/// A leader's tenure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tenure {
    /// The leader.
    pub leader: u8,
    /// Its ballot (0 until the prepare closes).
    pub ballot: u8,
    /// Where it is.
    pub stage: Stage,
    /// Replicas that granted it (during prepare).
    granted: u8,
    /// Members whose promise and standing it read: the replicas it replicates to.
    read: u8,
    /// Members it counts as voters (read with standing != 0, or admitted by it).
    voters: u8,
    /// Voters read in the prepare (the prepared quorum, besides the leader).
    quorum: u8,
    /// Highest promise read.
    max_promise: u8,
    /// Quorum members whose promise write is outstanding.
    pending: u8,
    /// First position it did not know decided; positions below are caught up.
    start: u8,
    /// Positions whose value is chosen and own copy written.
    own_done: u8,
    /// Positions below this are decided (or caught up).
    decided: u8,
    /// First position of the fast path (`NO_POS` while recovering).
    fast_from: u8,
    /// Value of each position below `own_done`.
    vals: [u8; MAX_POSITIONS],
    /// Ballot written with each position (planted catch-up keeps the old one).
    wballot: [u8; MAX_POSITIONS],
    /// Positions written as two-phase rewrites.
    rewrite: u8,
    /// Per member, per position: `P_*`.
    progress: [[u8; MAX_POSITIONS]; REPLICAS],
    /// Members whose standing write is outstanding.
    admitting: u8,
}

/// An ended tenure hashes as its leader (a crash of the leader cuts the writes the tenure left in
/// flight) and "ended": its ballot is kept only to name it in traces (every write it left in
/// flight carries its own ballot), so states that differ only there are one state.
impl std::hash::Hash for Tenure {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.stage.hash(h);
        self.leader.hash(h);
        if self.stage == Stage::Ended {
            return;
        }
        self.ballot.hash(h);
        self.granted.hash(h);
        self.read.hash(h);
        self.voters.hash(h);
        self.quorum.hash(h);
        self.max_promise.hash(h);
        self.pending.hash(h);
        self.start.hash(h);
        self.own_done.hash(h);
        self.decided.hash(h);
        self.fast_from.hash(h);
        self.vals.hash(h);
        self.wballot.hash(h);
        self.rewrite.hash(h);
        self.progress.hash(h);
        self.admitting.hash(h);
    }
}

impl Tenure {
    fn new(leader: u8) -> Self {
        Tenure {
            leader,
            ballot: 0,
            stage: Stage::Prepare,
            granted: 0,
            read: 0,
            voters: 0,
            quorum: 0,
            max_promise: 0,
            pending: 0,
            start: 0,
            own_done: 0,
            decided: 0,
            fast_from: NO_POS,
            vals: [0; MAX_POSITIONS],
            wballot: [0; MAX_POSITIONS],
            rewrite: 0,
            progress: [[P_NONE; MAX_POSITIONS]; REPLICAS],
            admitting: 0,
        }
    }

    fn ended(leader: u8, ballot: u8) -> Self {
        Tenure {
            ballot,
            stage: Stage::Ended,
            ..Tenure::new(leader)
        }
    }

    fn active(&self) -> bool {
        self.stage != Stage::Ended
    }
}

/// The whole system plus ghost state for the properties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// The replicas.
    pub reps: [Replica; REPLICAS],
    /// Tenures started so far (`n_tenures` of them).
    pub tenures: [Tenure; MAX_TENURES],
    /// How many tenures started.
    pub n_tenures: u8,
    /// Crashes so far.
    pub crashes: u8,
    /// Restarts so far.
    pub restarts: u8,
    /// Ghost: per position, the set (bit per value) of values ever decided there.
    pub decided: [u8; MAX_POSITIONS],
    /// Ghost: per position, the first value decided there (`NO_POS`: none).
    pub first: [u8; MAX_POSITIONS],
    /// Ghost: some decision differed from an earlier decision at its position.
    pub later_differs: bool,
    /// Ghost: a restarted replica was admitted.
    pub admitted_after_restart: bool,
    /// Ghost: a cut rewrite kept a decided value's bytes while tearing its record A.
    pub cut_rewrite_kept_value: bool,
}

/// One step of the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `member` revokes its grantee and grants `tenure` of `leader`; `cut[i]` is how the i-th
    /// write still in flight to it lands (see [`MuModel::cut_outcomes`]). A `tenure` equal to the
    /// number of tenures started is a new one: `leader` starts it with this first grant (a
    /// start is a step of the leader alone, so it can wait until then), ending its previous
    /// tenure.
    Grant {
        /// The tenure's leader.
        leader: u8,
        /// The granting replica.
        member: u8,
        /// The tenure granted.
        tenure: u8,
        /// Outcome code per in-flight write.
        cut: [u8; MAX_INFLIGHT],
    },
    /// The leader reads the promise and standing of the members in `read` (each must grant the
    /// tenure; at least one must be a voter), picks its ballot and writes its own promise.
    ClosePrepare {
        /// Tenure.
        tenure: u8,
        /// Members read (bit per replica).
        read: u8,
    },
    /// The leader's promise write to a quorum member.
    WritePromise {
        /// Tenure.
        tenure: u8,
        /// Member written.
        member: u8,
    },
    /// The leader reads its next position's slot from every quorum member and from its own
    /// copy (or catches up / continues the fast path), chooses the value, writes its own copy and
    /// posts the writes to its members.
    OwnWrite(u8),
    /// The leader posts a recovering member's standing (admission).
    Admit {
        /// Tenure.
        tenure: u8,
        /// Member admitted.
        member: u8,
    },
    /// The oldest write in flight to a member lands whole and completes.
    Land(u8),
    /// A replica crashes; `cut[m][i]` is how the i-th write it posted that is still in flight
    /// to `m` lands: the crash cuts it there and then (see [`MuModel::cut_outcomes`]).
    Crash {
        /// The crashing replica.
        replica: u8,
        /// Outcome code per write it has in flight, per target.
        cut: [[u8; MAX_INFLIGHT]; REPLICAS],
    },
    /// A crashed replica restarts with fresh memory.
    Restart(u8),
}

/// The model: a variant and its bounds.
#[derive(Clone, Debug)]
pub struct MuModel {
    /// Slot format and rewrite protocol.
    pub variant: Variant,
    /// Exploration bounds.
    pub bounds: Bounds,
}

/// Outcome of one field of a cut write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece {
    /// None of the new bytes landed.
    Old,
    /// All of them landed.
    New,
    /// A mixture: torn unless the new bytes equal the old ones.
    Mixed,
}

const PIECES: [Piece; 3] = [Piece::Old, Piece::New, Piece::Mixed];

fn bit(i: u8) -> u8 {
    1 << i
}

fn has(mask: u8, i: u8) -> bool {
    mask & bit(i) != 0
}

impl MuModel {
    /// A model of `variant` within `bounds`.
    pub fn new(variant: Variant, bounds: Bounds) -> Self {
        assert!((1..=MAX_POSITIONS as u8).contains(&bounds.positions));
        assert!((1..=MAX_TENURES as u8).contains(&bounds.tenures));
        MuModel { variant, bounds }
    }

    /// How many outcome codes a write has when a revoke cuts it.
    pub fn cut_outcomes(&self, w: Write) -> u8 {
        match (w, self.variant) {
            (Write::Nothing, _) => 1,
            (Write::Slot { .. }, Variant::Fixed) => 9, // value part x record A
            (Write::Slot { .. }, Variant::Planted) => 3, // one checksum
            (Write::Rewrite { .. }, _) => 3,
            (Write::Standing { .. }, _) => 2, // atomic: not landed / landed
        }
    }

    /// Lands `w` on `rep` whole (`code` = `None`) or cut with outcome `code`. Returns whether a
    /// cut rewrite kept a valid value while tearing its record A (a witness).
    fn land(&self, rep: &mut Replica, w: Write, code: Option<u8>) -> bool {
        match w {
            Write::Nothing => false,
            Write::Slot {
                pos, val, ballot, ..
            } => {
                let slot = &mut rep.log[pos as usize];
                let rec = Rec { ballot, bound: val };
                let before = *slot;
                match self.variant {
                    Variant::Fixed => {
                        let (vp, ap) = match code {
                            None => (Piece::New, Piece::New),
                            Some(c) => (PIECES[(c / 3) as usize], PIECES[(c % 3) as usize]),
                        };
                        match vp {
                            Piece::Old => {}
                            Piece::New => slot.value = Bytes::Valid(val),
                            Piece::Mixed => {
                                if slot.value != Bytes::Valid(val) {
                                    slot.value = Bytes::Torn;
                                }
                            }
                        }
                        match ap {
                            Piece::Old => {}
                            Piece::New => slot.a = Some(rec),
                            Piece::Mixed => {
                                if slot.a != Some(rec) {
                                    slot.a = None;
                                }
                            }
                        }
                    }
                    Variant::Planted => {
                        let p = code.map_or(Piece::New, |c| PIECES[c as usize]);
                        match p {
                            Piece::Old => {}
                            Piece::New => {
                                slot.value = Bytes::Valid(val);
                                slot.a = Some(rec);
                            }
                            Piece::Mixed => {
                                if slot.value != Bytes::Valid(val) || slot.a != Some(rec) {
                                    slot.value = Bytes::Torn;
                                    slot.a = None;
                                }
                            }
                        }
                    }
                }
                code.is_some()
                    && before.value == Bytes::Valid(val)
                    && slot.value == Bytes::Valid(val)
                    && before.a.is_some()
                    && slot.a.is_none()
            }
            Write::Rewrite {
                pos, val, ballot, ..
            } => {
                let slot = &mut rep.log[pos as usize];
                let rec = Rec { ballot, bound: val };
                match code.map_or(Piece::New, |c| PIECES[c as usize]) {
                    Piece::Old => {}
                    Piece::New => slot.b = Some(rec),
                    Piece::Mixed => {
                        if slot.b != Some(rec) {
                            slot.b = None;
                        }
                    }
                }
                false
            }
            Write::Standing { ballot, .. } => {
                if code != Some(0) {
                    rep.standing = ballot;
                }
                false
            }
        }
    }

    /// The position a tenure posts to `member` next, if any.
    fn next_post(&self, t: &Tenure, member: u8) -> Option<u8> {
        for q in 0..t.own_done {
            match t.progress[member as usize][q as usize] {
                P_ACKED | P_SLOT_POSTED => continue,
                P_NONE | P_B_DONE => return Some(q),
                _ => return None, // phase 1 in flight: phase 2 and later positions wait
            }
        }
        None
    }

    /// Records the decision of the tenure's current position if a majority holds it.
    fn try_decide(&self, s: &mut State, ti: u8) {
        let t = s.tenures[ti as usize];
        let q = t.decided;
        if t.stage != Stage::Log || q >= t.own_done || q < t.start {
            return;
        }
        let acks = (0..REPLICAS as u8)
            .filter(|&m| has(t.voters, m) && t.progress[m as usize][q as usize] == P_ACKED)
            .count() as u32;
        if 1 + acks < QUORUM {
            return;
        }
        let v = t.vals[q as usize];
        let qi = q as usize;
        s.decided[qi] |= bit(v);
        if s.first[qi] == NO_POS {
            s.first[qi] = v;
        } else if s.first[qi] != v {
            s.later_differs = true;
        }
        let t = &mut s.tenures[ti as usize];
        t.decided += 1;
        let l = t.leader as usize;
        let d = t.decided;
        s.reps[l].known = s.reps[l].known.max(d);
    }

    /// Clears what no longer matters, so equal situations are equal states: a tenure that can
    /// never act again is ended, a grant held by an ended tenure with nothing in flight is
    /// dropped, and bookkeeping of finished stages is zeroed.
    fn normalize(&self, s: &mut State) {
        for ti in 0..s.n_tenures {
            if s.tenures[ti as usize].active() && self.dormant(s, ti) {
                s.tenures[ti as usize].stage = Stage::Ended;
            }
            let t = &mut s.tenures[ti as usize];
            match t.stage {
                Stage::Ended => *t = Tenure::ended(t.leader, t.ballot),
                Stage::Prepare => {}
                Stage::Promise | Stage::Log => {
                    t.granted = 0;
                    t.max_promise = 0;
                }
            }
        }
        for r in s.reps.iter_mut() {
            if let Some(g) = r.grant {
                if !s.tenures[g as usize].active() && r.inflight_len() == 0 {
                    r.grant = None;
                }
            }
        }
    }

    /// Whether an active tenure can never take a step again (nothing of it in flight, and none
    /// of its own actions enabled now or later).
    fn dormant(&self, s: &State, ti: u8) -> bool {
        let t = &s.tenures[ti as usize];
        match t.stage {
            Stage::Ended => true,
            // Its own grant, once revoked, never comes back.
            Stage::Prepare => has(t.granted, t.leader) && !self.leader_holds_own(s, ti),
            Stage::Promise => {
                (0..REPLICAS as u8).any(|m| has(t.pending, m) && !self.can_reach(s, ti, m))
            }
            Stage::Log => {
                let in_flight = s.reps.iter().any(|r| {
                    r.inflight[..r.inflight_len()]
                        .iter()
                        .any(|w| w.tenure() == ti)
                });
                !in_flight && !self.can_admit_any(s, ti) && !self.own_write_ready(s, ti)
            }
        }
    }

    fn can_admit(&self, s: &State, ti: u8, m: u8) -> bool {
        let t = &s.tenures[ti as usize];
        let recovered = t.fast_from != NO_POS || t.decided == self.bounds.positions;
        m != t.leader
            && self.can_reach(s, ti, m)
            && has(t.read, m)
            && !has(t.voters, m)
            && !has(t.admitting, m)
            && recovered
            && (0..t.decided).all(|p| t.progress[m as usize][p as usize] == P_ACKED)
    }

    fn can_admit_any(&self, s: &State, ti: u8) -> bool {
        (0..REPLICAS as u8).any(|m| self.can_admit(s, ti, m))
    }

    fn own_write_ready(&self, s: &State, ti: u8) -> bool {
        let t = &s.tenures[ti as usize];
        let q = t.own_done;
        if q >= self.bounds.positions || !self.leader_holds_own(s, ti) {
            return false;
        }
        q < t.start
            || (t.decided == q
                && (t.fast_from <= q
                    || (0..REPLICAS as u8).all(|m| !has(t.quorum, m) || self.can_reach(s, ti, m))))
    }

    /// Whether every quorum of live voters would adopt each decided value now.
    pub fn recoverable(&self, s: &State) -> bool {
        let voters = (0..REPLICAS as u8)
            .filter(|&r| s.reps[r as usize].up && s.reps[r as usize].standing != 0)
            .fold(0u8, |acc, r| acc | bit(r));
        for p in 0..self.bounds.positions as usize {
            let set = s.decided[p];
            if set == 0 {
                continue;
            }
            if set.count_ones() > 1 {
                return false;
            }
            let v = set.trailing_zeros() as u8;
            for quorum in 1u8..(1 << REPLICAS) {
                if quorum & !voters != 0 || quorum.count_ones() < QUORUM {
                    continue;
                }
                let best = (0..REPLICAS as u8)
                    .filter(|&r| has(quorum, r))
                    .filter_map(|r| s.reps[r as usize].log[p].accepted())
                    .max();
                if best.map(|(_, w)| w) != Some(v) {
                    return false;
                }
            }
        }
        true
    }

    /// Whether the writes in flight to `target` were posted by `writer` (they all come from
    /// `target`'s grantee).
    fn posted_by(&self, s: &State, target: u8, writer: u8) -> bool {
        let r = &s.reps[target as usize];
        target != writer
            && r.inflight_len() > 0
            && r.grant
                .is_some_and(|g| s.tenures[g as usize].leader == writer)
    }

    fn leader_holds_own(&self, s: &State, ti: u8) -> bool {
        let t = &s.tenures[ti as usize];
        s.reps[t.leader as usize].grant == Some(ti)
    }

    fn can_reach(&self, s: &State, ti: u8, m: u8) -> bool {
        let r = &s.reps[m as usize];
        r.up && r.grant == Some(ti)
    }

    /// One line per replica: what its memory holds.
    pub fn show_state(&self, s: &State) -> String {
        let mut out = String::new();
        for (i, r) in s.reps.iter().enumerate() {
            let _ = write!(out, "    {}: ", NAMES[i]);
            if !r.up {
                out.push_str("DOWN\n");
                continue;
            }
            let grant = r
                .grant
                .map_or("-".to_string(), |g| tenure_name(s, g).to_string());
            let _ = write!(
                out,
                "promise={:<2} standing={:<2} grant={:<6} known={}",
                r.promise, r.standing, grant, r.known
            );
            for p in 0..self.bounds.positions as usize {
                let _ = write!(out, " | p{}: {}", p, self.show_slot(&r.log[p]));
            }
            let n = r.inflight_len();
            if n > 0 {
                out.push_str(" | in flight:");
                for w in &r.inflight[..n] {
                    let _ = write!(out, " [{}]", show_write(s, *w));
                }
            }
            out.push('\n');
        }
        let mut dec = String::new();
        for p in 0..self.bounds.positions as usize {
            let vals: Vec<String> = (0..8u8)
                .filter(|&v| has(s.decided[p], v))
                .map(|v| format!("v{}", v + 1))
                .collect();
            let _ = write!(
                dec,
                " p{}={}",
                p,
                if vals.is_empty() {
                    "-".into()
                } else {
                    vals.join("+")
                }
            );
        }
        let _ = writeln!(out, "    decided:{dec}");
        out
    }

    fn show_slot(&self, slot: &Slot) -> String {
        let val = match slot.value {
            Bytes::Empty => return "empty".into(),
            Bytes::Valid(v) => format!("v{}", v + 1),
            Bytes::Torn => "TORN".into(),
        };
        let rec = |r: Option<Rec>| match r {
            None => "-".to_string(),
            Some(r) => {
                let ok = slot.value == Bytes::Valid(r.bound);
                format!(
                    "{}@v{}{}",
                    r.ballot,
                    r.bound + 1,
                    if ok { "" } else { "(stale)" }
                )
            }
        };
        let acc = match slot.accepted() {
            Some((b, _)) => format!("accepted@{b}"),
            None => "NOTHING accepted".into(),
        };
        match self.variant {
            Variant::Fixed => format!("{val} A={} B={} => {acc}", rec(slot.a), rec(slot.b)),
            Variant::Planted => format!("{val} ballot={} => {acc}", rec(slot.a)),
        }
    }

    /// Says in words what `action` does from state `s`.
    pub fn describe(&self, s: &State, action: &Action) -> String {
        let name = |r: u8| NAMES[r as usize];
        let lead = |ti: u8| {
            format!(
                "{} ({})",
                name(s.tenures[ti as usize].leader),
                tenure_name(s, ti)
            )
        };
        let Some(n) = self.step(s, *action) else {
            return format!("{action:?} (disabled)");
        };
        match *action {
            Action::Grant {
                leader,
                member,
                tenure,
                cut,
            } => {
                let r = &s.reps[member as usize];
                let started = if tenure == s.n_tenures {
                    format!(
                        "{} starts tenure {} (its value: v{}); ",
                        name(leader),
                        tenure_name_raw(tenure, leader),
                        tenure + 1
                    )
                } else {
                    String::new()
                };
                let mut text = format!(
                    "{}{} grants {}{}",
                    started,
                    name(member),
                    tenure_name_raw(tenure, leader),
                    r.grant
                        .map(|g| format!(", revoking {}", tenure_name(s, g)))
                        .unwrap_or_default()
                );
                for (i, w) in r.inflight[..r.inflight_len()].iter().enumerate() {
                    let _ = write!(
                        text,
                        "; its in-flight [{}] is CUT: {}",
                        show_write(s, *w),
                        self.show_cut(*w, cut[i])
                    );
                }
                text
            }
            Action::ClosePrepare { tenure, read } => {
                let t = &n.tenures[tenure as usize];
                let reads: Vec<String> = (0..REPLICAS as u8)
                    .filter(|&m| has(read, m))
                    .map(|m| {
                        let r = &s.reps[m as usize];
                        format!(
                            "{}'s promise {} standing {}{}",
                            name(m),
                            r.promise,
                            r.standing,
                            if r.standing == 0 { " (recovering)" } else { "" }
                        )
                    })
                    .collect();
                let quorum: String = (0..REPLICAS as u8)
                    .filter(|&m| m == t.leader || has(t.quorum, m))
                    .map(name)
                    .collect();
                format!(
                    "{} reads {}; prepared quorum {}, ballot {}",
                    lead(tenure),
                    reads.join(", "),
                    quorum,
                    t.ballot
                )
            }
            Action::WritePromise { tenure, member } => format!(
                "{} writes promise {} to {}{}",
                lead(tenure),
                s.tenures[tenure as usize].ballot,
                name(member),
                if n.tenures[tenure as usize].stage == Stage::Log {
                    "; prepare complete"
                } else {
                    ""
                }
            ),
            Action::OwnWrite(ti) => {
                let t = &n.tenures[ti as usize];
                let q = t.own_done - 1;
                let v = t.vals[q as usize] + 1;
                let what = if q < t.start {
                    format!("catches up p{q}, which it knows decided, from its own copy (v{v})")
                } else if t.fast_from < q
                    || (t.fast_from == q && s.tenures[ti as usize].fast_from == q)
                {
                    format!("proposes its own v{v} at p{q} (fast path)")
                } else {
                    let reads: Vec<String> = (0..REPLICAS as u8)
                        .filter(|&m| has(t.quorum, m) || m == t.leader)
                        .map(|m| {
                            format!(
                                "{}: {}",
                                name(m),
                                self.show_slot(&s.reps[m as usize].log[q as usize])
                            )
                        })
                        .collect();
                    if t.fast_from == q {
                        format!(
                            "reads p{q} [{}]: nothing accepted, so the fast path starts: proposes v{v}",
                            reads.join("; ")
                        )
                    } else {
                        format!("reads p{q} [{}]: adopts v{v}", reads.join("; "))
                    }
                };
                format!(
                    "{} {}; own copy now {}{}",
                    lead(ti),
                    what,
                    self.show_slot(&n.reps[t.leader as usize].log[q as usize]),
                    self.show_posted(s, &n, None)
                )
            }
            Action::Admit { tenure, member } => format!(
                "{} admits {}: posts its standing = {}",
                lead(tenure),
                name(member),
                s.tenures[tenure as usize].ballot
            ),
            Action::Land(m) => {
                let w = s.reps[m as usize].inflight[0];
                let ti = w.tenure() as usize;
                let (before, after) = (s.tenures[ti], n.tenures[ti]);
                let decided = if after.stage == Stage::Log && after.decided > before.decided {
                    let p = before.decided as usize;
                    format!(
                        "; {} DECIDES v{} at p{}",
                        tenure_name(s, ti as u8),
                        after.vals[p] + 1,
                        p
                    )
                } else {
                    String::new()
                };
                let orphan = if s.tenures[ti].active() {
                    ""
                } else {
                    " (its writer is gone: no one hears the completion)"
                };
                format!(
                    "[{}] lands whole on {}{}{}{}",
                    show_write(s, w),
                    name(m),
                    orphan,
                    decided,
                    self.show_posted(s, &n, Some(m))
                )
            }
            Action::Crash { replica, cut } => {
                let mut text = format!("{} CRASHES (its memory is lost)", name(replica));
                for m in 0..REPLICAS {
                    if !self.posted_by(s, m as u8, replica) {
                        continue;
                    }
                    let r = &s.reps[m];
                    for (i, w) in r.inflight[..r.inflight_len()].iter().enumerate() {
                        let _ = write!(
                            text,
                            "; its in-flight [{}] to {} is CUT: {}",
                            show_write(s, *w),
                            NAMES[m],
                            self.show_cut(*w, cut[m][i])
                        );
                    }
                }
                text
            }
            Action::Restart(r) => format!(
                "{} restarts with fresh memory (standing 0: recovering)",
                name(r)
            ),
        }
    }

    /// The writes posted by a step (`popped`: the replica whose oldest write the step landed).
    fn show_posted(&self, s: &State, n: &State, popped: Option<u8>) -> String {
        let mut out = String::new();
        for (m, name) in NAMES.iter().enumerate() {
            let old = s.reps[m].inflight_len() - usize::from(popped == Some(m as u8));
            for w in &n.reps[m].inflight[old..n.reps[m].inflight_len()] {
                let _ = write!(out, "; posts [{}] to {}", show_write(s, *w), name);
            }
        }
        out
    }

    fn show_cut(&self, w: Write, code: u8) -> String {
        let piece = |p: Piece| match p {
            Piece::Old => "old bytes kept",
            Piece::New => "new bytes landed",
            Piece::Mixed => "mixed (torn unless identical)",
        };
        match (w, self.variant) {
            (Write::Slot { .. }, Variant::Fixed) => format!(
                "value part {}, record A {}",
                piece(PIECES[(code / 3) as usize]),
                piece(PIECES[(code % 3) as usize])
            ),
            (Write::Slot { .. }, Variant::Planted) | (Write::Rewrite { .. }, _) => {
                piece(PIECES[code as usize]).to_string()
            }
            (Write::Standing { .. }, _) => {
                if code == 0 {
                    "not landed".into()
                } else {
                    "landed".into()
                }
            }
            (Write::Nothing, _) => String::new(),
        }
    }

    fn pick_ballot(&self, s: &State, ti: u8) -> u8 {
        let t = &s.tenures[ti as usize];
        let l = &s.reps[t.leader as usize];
        let floor = t.max_promise.max(l.promise).max(l.last_ballot);
        let mut b = REPLICAS as u8 + t.leader;
        while b <= floor {
            b += REPLICAS as u8;
        }
        b
    }

    /// Posts every write a tenure may post now (writes are posted as soon as they may be: a
    /// write posted early and cut with its old bytes kept is the same as one not posted).
    fn post_all(&self, s: &mut State, ti: u8) {
        let t = s.tenures[ti as usize];
        if t.stage != Stage::Log {
            return;
        }
        for m in 0..REPLICAS as u8 {
            if m == t.leader || !has(t.read, m) || !self.can_reach(s, ti, m) {
                continue;
            }
            while let Some(q) = self.next_post(&s.tenures[ti as usize], m) {
                let t = &mut s.tenures[ti as usize];
                let qi = q as usize;
                let p = &mut t.progress[m as usize][qi];
                let w = if has(t.rewrite, q) && *p == P_NONE {
                    *p = P_B_POSTED;
                    Write::Rewrite {
                        tenure: ti,
                        pos: q,
                        val: t.vals[qi],
                        ballot: t.wballot[qi],
                    }
                } else {
                    *p = P_SLOT_POSTED;
                    Write::Slot {
                        tenure: ti,
                        pos: q,
                        val: t.vals[qi],
                        ballot: t.wballot[qi],
                    }
                };
                s.reps[m as usize].push(w);
            }
        }
    }
}

fn tenure_name_raw(ti: u8, leader: u8) -> String {
    format!("#{}({})", ti + 1, NAMES[leader as usize])
}

fn tenure_name(s: &State, ti: u8) -> String {
    tenure_name_raw(ti, s.tenures[ti as usize].leader)
}

fn show_write(s: &State, w: Write) -> String {
    match w {
        Write::Nothing => "-".into(),
        Write::Slot {
            tenure,
            pos,
            val,
            ballot,
        } => format!(
            "{} slot p{} = v{}, ballot {}",
            tenure_name(s, tenure),
            pos,
            val + 1,
            ballot
        ),
        Write::Rewrite {
            tenure,
            pos,
            val,
            ballot,
        } => format!(
            "{} phase-1 record B p{} = {}@v{}",
            tenure_name(s, tenure),
            pos,
            ballot,
            val + 1
        ),
        Write::Standing { tenure, ballot } => {
            format!("{} standing = {}", tenure_name(s, tenure), ballot)
        }
    }
}

impl Model for MuModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            reps: [Replica::fresh(true, 1, 0); REPLICAS],
            tenures: [Tenure::ended(0, 0); MAX_TENURES],
            n_tenures: 0,
            crashes: 0,
            restarts: 0,
            decided: [0; MAX_POSITIONS],
            first: [NO_POS; MAX_POSITIONS],
            later_differs: false,
            admitted_after_restart: false,
            cut_rewrite_kept_value: false,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        // Grants, to tenures in their prepare and to a new tenure of any voter.
        let mut targets = Vec::with_capacity(MAX_TENURES + REPLICAS);
        for ti in 0..s.n_tenures {
            let t = &s.tenures[ti as usize];
            if t.stage == Stage::Prepare {
                targets.push((ti, t.leader, t.granted));
            }
        }
        if s.n_tenures < self.bounds.tenures {
            for l in 0..REPLICAS as u8 {
                let r = &s.reps[l as usize];
                if r.up && r.standing != 0 && has(self.bounds.leaders, l) {
                    targets.push((s.n_tenures, l, 0));
                }
            }
        }
        for (ti, leader, granted) in targets {
            for m in 0..REPLICAS as u8 {
                let r = &s.reps[m as usize];
                if !r.up || has(granted, m) {
                    continue;
                }
                // Every combination of outcomes of the writes the revoke cuts.
                let n = r.inflight_len();
                let mut counts = [1u8; MAX_INFLIGHT];
                for (c, w) in counts.iter_mut().zip(&r.inflight[..n]) {
                    *c = self.cut_outcomes(*w);
                }
                let mut cut = [0u8; MAX_INFLIGHT];
                loop {
                    actions.push(Action::Grant {
                        leader,
                        member: m,
                        tenure: ti,
                        cut,
                    });
                    // Odometer over the outcome codes.
                    let mut i = 0;
                    while i < n {
                        cut[i] += 1;
                        if cut[i] < counts[i] {
                            break;
                        }
                        cut[i] = 0;
                        i += 1;
                    }
                    if i == n {
                        break;
                    }
                }
            }
        }
        // Tenure steps.
        for ti in 0..s.n_tenures {
            let t = &s.tenures[ti as usize];
            match t.stage {
                Stage::Ended => {}
                Stage::Prepare => {
                    if self.leader_holds_own(s, ti) {
                        let reach = (0..REPLICAS as u8)
                            .filter(|&m| m != t.leader && self.can_reach(s, ti, m))
                            .fold(0u8, |acc, m| acc | bit(m));
                        for read in 1u8..(1 << REPLICAS) {
                            let voter = (0..REPLICAS as u8)
                                .any(|m| has(read, m) && s.reps[m as usize].standing != 0);
                            if read & !reach == 0 && voter {
                                actions.push(Action::ClosePrepare { tenure: ti, read });
                            }
                        }
                    }
                }
                Stage::Promise => {
                    for m in 0..REPLICAS as u8 {
                        if has(t.pending, m) && self.can_reach(s, ti, m) {
                            actions.push(Action::WritePromise {
                                tenure: ti,
                                member: m,
                            });
                        }
                    }
                }
                Stage::Log => {
                    for m in 0..REPLICAS as u8 {
                        if self.can_admit(s, ti, m) {
                            actions.push(Action::Admit {
                                tenure: ti,
                                member: m,
                            });
                        }
                    }
                    if self.own_write_ready(s, ti) {
                        actions.push(Action::OwnWrite(ti));
                    }
                }
            }
        }
        // Network and failures.
        for m in 0..REPLICAS as u8 {
            let r = &s.reps[m as usize];
            if r.up && r.inflight_len() > 0 {
                actions.push(Action::Land(m));
            }
            if r.up && s.crashes < self.bounds.crashes {
                // Every combination of outcomes of the writes it has in flight.
                let mut slots = Vec::new();
                for target in 0..REPLICAS {
                    if self.posted_by(s, target as u8, m) {
                        let q = &s.reps[target];
                        for (i, w) in q.inflight[..q.inflight_len()].iter().enumerate() {
                            slots.push((target, i, self.cut_outcomes(*w)));
                        }
                    }
                }
                let mut cut = [[0u8; MAX_INFLIGHT]; REPLICAS];
                loop {
                    actions.push(Action::Crash { replica: m, cut });
                    let mut k = 0;
                    while k < slots.len() {
                        let (t, i, count) = slots[k];
                        cut[t][i] += 1;
                        if cut[t][i] < count {
                            break;
                        }
                        cut[t][i] = 0;
                        k += 1;
                    }
                    if k == slots.len() {
                        break;
                    }
                }
            }
            if !r.up && s.restarts < self.bounds.restarts {
                actions.push(Action::Restart(m));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = self.step(last, action)?;
        self.normalize(&mut s);
        Some(s)
    }

    fn format_action(&self, action: &Action) -> String {
        format!("{action:?}")
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties()
    }
}

impl MuModel {
    /// The effect of `action` on `last`, before [`MuModel::normalize`]; `None` if disabled.
    fn step(&self, last: &State, action: Action) -> Option<State> {
        let mut s = *last;
        match action {
            Action::Grant {
                leader,
                member,
                tenure,
                cut,
            } => {
                if tenure == s.n_tenures {
                    for t in s.tenures.iter_mut().take(s.n_tenures as usize) {
                        if t.leader == leader && t.active() {
                            t.stage = Stage::Ended;
                        }
                    }
                    s.tenures[tenure as usize] = Tenure::new(leader);
                    s.n_tenures += 1;
                }
                let mut r = s.reps[member as usize];
                let n = r.inflight_len();
                let writes = r.inflight;
                for (i, w) in writes[..n].iter().copied().enumerate() {
                    if self.land(&mut r, w, Some(cut[i])) {
                        s.cut_rewrite_kept_value = true;
                    }
                }
                r.inflight = [Write::Nothing; MAX_INFLIGHT];
                r.grant = Some(tenure);
                s.reps[member as usize] = r;
                s.tenures[tenure as usize].granted |= bit(member);
            }
            Action::ClosePrepare { tenure: ti, read } => {
                {
                    let t = &mut s.tenures[ti as usize];
                    t.read = read;
                    for m in 0..REPLICAS as u8 {
                        if has(read, m) {
                            let r = &s.reps[m as usize];
                            t.max_promise = t.max_promise.max(r.promise);
                            if r.standing != 0 {
                                t.voters |= bit(m);
                            }
                        }
                    }
                    t.quorum = t.voters;
                }
                let b = self.pick_ballot(&s, ti);
                let t = &mut s.tenures[ti as usize];
                let l = t.leader as usize;
                t.ballot = b;
                t.stage = Stage::Promise;
                t.pending = t.quorum;
                t.start = s.reps[l].known.min(self.bounds.positions);
                t.decided = t.start;
                s.reps[l].promise = b;
                s.reps[l].last_ballot = b;
            }
            Action::WritePromise { tenure, member } => {
                let t = &mut s.tenures[tenure as usize];
                s.reps[member as usize].promise = t.ballot;
                t.pending &= !bit(member);
                if t.pending == 0 {
                    t.stage = Stage::Log;
                }
            }
            Action::OwnWrite(ti) => {
                let t = s.tenures[ti as usize];
                let l = t.leader as usize;
                let q = t.own_done as usize;
                let b = t.ballot;
                // The prepare's reads of this position: every quorum member's copy.
                let read_best = (0..REPLICAS)
                    .filter(|&m| has(t.quorum, m as u8))
                    .filter_map(|m| s.reps[m].log[q].accepted())
                    .max();
                let t = &mut s.tenures[ti as usize];
                let own = &mut s.reps[l].log[q];
                if q < t.start as usize {
                    // Catch-up of a position it knows decided, from its own copy.
                    match self.variant {
                        Variant::Fixed => {
                            let Bytes::Valid(v) = own.value else {
                                return None;
                            };
                            let rec = Some(Rec {
                                ballot: b,
                                bound: v,
                            });
                            own.a = rec;
                            own.b = rec;
                            t.vals[q] = v;
                            t.wballot[q] = b;
                            t.rewrite |= bit(q as u8);
                        }
                        Variant::Planted => {
                            let (bo, v) = own.accepted()?;
                            t.vals[q] = v;
                            t.wballot[q] = bo;
                        }
                    }
                } else {
                    let adopted = if t.fast_from <= q as u8 {
                        None
                    } else {
                        let best = read_best.max(own.accepted());
                        if best.is_none() {
                            t.fast_from = q as u8;
                        }
                        best.map(|(_, v)| v)
                    };
                    let rec_of = |v| {
                        Some(Rec {
                            ballot: b,
                            bound: v,
                        })
                    };
                    match adopted {
                        Some(v) => {
                            own.value = Bytes::Valid(v);
                            own.a = rec_of(v);
                            if self.variant == Variant::Fixed {
                                own.b = rec_of(v);
                                t.rewrite |= bit(q as u8);
                            }
                            t.vals[q] = v;
                        }
                        None => {
                            own.value = Bytes::Valid(ti);
                            own.a = rec_of(ti);
                            t.vals[q] = ti;
                        }
                    }
                    t.wballot[q] = b;
                }
                t.own_done += 1;
                self.post_all(&mut s, ti);
            }
            Action::Admit { tenure, member } => {
                let t = &mut s.tenures[tenure as usize];
                t.admitting |= bit(member);
                let w = Write::Standing {
                    tenure,
                    ballot: t.ballot,
                };
                s.reps[member as usize].push(w);
            }
            Action::Land(m) => {
                let mut r = s.reps[m as usize];
                let w = r.pop_front();
                self.land(&mut r, w, None);
                s.reps[m as usize] = r;
                let ti = w.tenure();
                if s.tenures[ti as usize].active() {
                    let t = &mut s.tenures[ti as usize];
                    match w {
                        Write::Rewrite { pos, .. } => {
                            t.progress[m as usize][pos as usize] = P_B_DONE;
                        }
                        Write::Slot { pos, .. } => {
                            t.progress[m as usize][pos as usize] = P_ACKED;
                        }
                        Write::Standing { .. } => {
                            t.voters |= bit(m);
                            t.admitting &= !bit(m);
                            if s.restarts > 0 {
                                s.admitted_after_restart = true;
                            }
                        }
                        Write::Nothing => unreachable!("empty queue entry landed"),
                    }
                    self.try_decide(&mut s, ti);
                    self.post_all(&mut s, ti);
                }
            }
            Action::Crash { replica: r, cut } => {
                for (m, codes) in cut.iter().enumerate() {
                    if !self.posted_by(&s, m as u8, r) {
                        continue;
                    }
                    let mut rep = s.reps[m];
                    let writes = rep.inflight;
                    for (i, w) in writes[..rep.inflight_len()].iter().copied().enumerate() {
                        if self.land(&mut rep, w, Some(codes[i])) {
                            s.cut_rewrite_kept_value = true;
                        }
                    }
                    rep.inflight = [Write::Nothing; MAX_INFLIGHT];
                    s.reps[m] = rep;
                }
                for t in s.tenures.iter_mut().take(s.n_tenures as usize) {
                    if t.leader == r {
                        t.stage = Stage::Ended;
                    }
                }
                let last_ballot = s.reps[r as usize].last_ballot;
                s.reps[r as usize] = Replica::fresh(false, 0, last_ballot);
                s.crashes += 1;
            }
            Action::Restart(r) => {
                s.reps[r as usize].up = true;
                s.restarts += 1;
            }
        }
        Some(s)
    }
}

fn properties() -> Vec<Property<MuModel>> {
    vec![
        Property::always("agreement", |_, s: &State| {
            s.decided.iter().all(|d| d.count_ones() <= 1)
        }),
        Property::always("no loss", |_, s: &State| !s.later_differs),
        Property::always("recoverable", |m: &MuModel, s: &State| m.recoverable(s)),
        Property::sometimes("every position decided", |m: &MuModel, s: &State| {
            (0..m.bounds.positions as usize).all(|p| s.decided[p] != 0)
        }),
        Property::sometimes("restarted replica admitted", |_, s: &State| {
            s.admitted_after_restart
        }),
        Property::sometimes("rewrite cut with value kept", |_, s: &State| {
            s.cut_rewrite_kept_value
        }),
    ]
}

/// The safety properties (always-properties) of the model.
pub const SAFETY: [&str; 3] = ["agreement", "no loss", "recoverable"];
/// The reachability witnesses (sometimes-properties) of the model.
pub const WITNESSES: [&str; 3] = [
    "every position decided",
    "restarted replica admitted",
    "rewrite cut with value kept",
];

/// What one exhaustive check found.
#[derive(Debug)]
pub struct Report {
    /// The variant checked.
    pub variant: Variant,
    /// Its bounds.
    pub bounds: Bounds,
    /// Unique states explored.
    pub unique_states: usize,
    /// States generated, repeats included.
    pub total_states: usize,
    /// Deepest path explored.
    pub max_depth: usize,
    /// Wall-clock time of the check.
    pub elapsed: Duration,
    /// Whether the search stopped early (on the first counterexample) rather than exhausting
    /// the bounded space.
    pub stopped_early: bool,
    /// Safety properties violated, each with its counterexample printed step by step.
    pub violations: Vec<(&'static str, String)>,
    /// Reachability witnesses found.
    pub witnesses: Vec<&'static str>,
}

impl Report {
    /// Whether `property` has a counterexample.
    pub fn violated(&self, property: &str) -> bool {
        self.violations.iter().any(|(p, _)| *p == property)
    }
}

/// How a check ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Explore the whole bounded space (unless every property got a discovery).
    Exhaust,
    /// Stop at the first counterexample of `agreement` (breadth-first: a shortest one).
    FirstConflict,
}

/// Checks `variant` within `bounds` by breadth-first search on `threads` threads.
pub fn check(variant: Variant, bounds: Bounds, stop: Stop, threads: usize) -> Report {
    let model = MuModel::new(variant, bounds);
    let started = Instant::now();
    let mut builder = model.clone().checker().threads(threads);
    if stop == Stop::FirstConflict {
        builder = builder.finish_when(HasDiscoveries::AnyOf(BTreeSet::from(["agreement"])));
    }
    let checker = builder.spawn_bfs().join();
    let elapsed = started.elapsed();
    let discoveries = checker.discoveries();
    let mut violations = Vec::new();
    for name in SAFETY {
        if let Some(path) = discoveries.get(name) {
            violations.push((name, model.show_path(path)));
        }
    }
    let witnesses = WITNESSES
        .into_iter()
        .filter(|w| discoveries.contains_key(w))
        .collect();
    Report {
        variant,
        bounds,
        unique_states: checker.unique_state_count(),
        total_states: checker.state_count(),
        max_depth: checker.max_depth(),
        elapsed,
        stopped_early: stop == Stop::FirstConflict && discoveries.contains_key("agreement"),
        violations,
        witnesses,
    }
}

impl MuModel {
    /// A counterexample, one numbered step per line, each followed by the replicas' memory.
    pub fn show_path(&self, path: &Path<State, Action>) -> String {
        let steps = path.clone().into_vec();
        let mut out = String::new();
        let _ = writeln!(out, "  initial state:");
        out.push_str(&self.show_state(&steps[0].0));
        for (i, (state, action)) in steps.iter().enumerate() {
            let Some(action) = action else { break };
            let next = &steps[i + 1].0;
            let _ = writeln!(out, "  step {:>2}: {}", i + 1, self.describe(state, action));
            out.push_str(&self.show_state(next));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep_with(slot: Slot) -> Replica {
        let mut r = Replica::fresh(true, 1, 0);
        r.log[0] = slot;
        r
    }

    fn v1_at(ballot: u8) -> Slot {
        Slot {
            value: Bytes::Valid(0),
            a: Some(Rec { ballot, bound: 0 }),
            b: None,
        }
    }

    #[test]
    fn fixed_cut_rewrite_of_the_same_value_keeps_it_and_phase_one_record() {
        let m = MuModel::new(Variant::Fixed, Bounds::quick());
        let mut r = rep_with(v1_at(3));
        let phase1 = Write::Rewrite {
            tenure: 1,
            pos: 0,
            val: 0,
            ballot: 6,
        };
        let phase2 = Write::Slot {
            tenure: 1,
            pos: 0,
            val: 0,
            ballot: 6,
        };
        m.land(&mut r, phase1, None);
        // Worst case: value part and record A both mixed.
        assert!(m.land(&mut r, phase2, Some(8)));
        assert_eq!(r.log[0].value, Bytes::Valid(0));
        assert_eq!(r.log[0].a, None);
        assert_eq!(r.log[0].accepted(), Some((6, 0)));
        // The next rewrite's phase 1, cut, tears the only valid record: nothing accepted.
        let next = Write::Rewrite {
            tenure: 2,
            pos: 0,
            val: 0,
            ballot: 9,
        };
        m.land(&mut r, next, Some(2));
        assert_eq!(r.log[0].accepted(), None);
    }

    #[test]
    fn fixed_cut_write_of_another_value_tears_the_value() {
        let m = MuModel::new(Variant::Fixed, Bounds::quick());
        let mut r = rep_with(v1_at(3));
        let w = Write::Slot {
            tenure: 1,
            pos: 0,
            val: 1,
            ballot: 4,
        };
        m.land(&mut r, w, Some(8));
        assert_eq!(r.log[0].value, Bytes::Torn);
        assert_eq!(r.log[0].accepted(), None);
    }

    #[test]
    fn planted_cut_rewrite_of_the_same_value_tears_the_slot() {
        let m = MuModel::new(Variant::Planted, Bounds::quick());
        let mut r = rep_with(v1_at(3));
        let w = Write::Slot {
            tenure: 1,
            pos: 0,
            val: 0,
            ballot: 4,
        };
        m.land(&mut r, w, Some(2));
        assert_eq!(r.log[0].value, Bytes::Torn);
        assert_eq!(r.log[0].accepted(), None);
        // An identical rewrite (same ballot) cannot tear it.
        let mut r = rep_with(v1_at(3));
        let same = Write::Slot {
            tenure: 1,
            pos: 0,
            val: 0,
            ballot: 3,
        };
        m.land(&mut r, same, Some(2));
        assert_eq!(r.log[0].accepted(), Some((3, 0)));
    }

    #[test]
    fn a_record_counts_only_with_the_value_it_is_bound_to() {
        let slot = Slot {
            value: Bytes::Valid(1),
            a: Some(Rec {
                ballot: 5,
                bound: 0,
            }),
            b: Some(Rec {
                ballot: 4,
                bound: 1,
            }),
        };
        assert_eq!(slot.accepted(), Some((4, 1)));
    }

    #[test]
    fn the_first_steps_are_grants_that_start_tenures() {
        let m = MuModel::new(Variant::Fixed, Bounds::quick());
        let init = m.init_states().remove(0);
        let mut actions = Vec::new();
        m.actions(&init, &mut actions);
        assert_eq!(actions.len(), 9 + 3); // 3 leaders x 3 granting replicas, 3 crashes
        assert!(m.recoverable(&init));
    }
}
