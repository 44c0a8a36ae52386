//! An exhaustive model of Mu's replication protocol, checked with [`stateright`].
//!
//! The model explores every interleaving of a small bounded cluster (breadth-first) and checks
//! that a value decided at a log position is never contradicted by another decision there and
//! never becomes unrecoverable. It has three slot formats and rewrite protocols ([`Variant`]):
//!
//! - [`Variant::Fixed`], the core's design (`mu-nostd/src/slot.rs`; in `mu-nostd/src/tenure/`:
//!   `post_log_writes`, `fence_decided`, `plan_adoption`, `post_adoption`). The value part of a
//!   slot (position, `chain_prev`, origin, payload) is protected by one checksum; what a copy
//!   was accepted under lives in three checked records, each bound to the value's chain: the
//!   *acceptance record A* inside the slot (the ballot; every slot write writes it), and in the
//!   log's rewrite area the *adoption record B* (a ballot) and the *decided mark D* (one fixed
//!   content per value, "decided": identical bytes whoever writes it, so rewriting an intact D
//!   never tears it). A copy's accepted ballot is [`DECIDED`] (above every ballot) when D is
//!   valid for its value, else the higher of valid A and valid B; an empty or torn value, or a
//!   valid one with none of the three, is "nothing accepted". Writes of a tenure with ballot b:
//!   - a fresh value on the fast path: one slot write (value + A = b);
//!   - a *decided rewrite* (a position the leader knows decided: it decided it itself, in this
//!     or an earlier tenure of the same memory; or an adopted position decided since, for a
//!     member that has no adoption write posted for it): the leader marks its own copy D (a
//!     local store), posts D to the member (phase 1) and, only once that completed, the slot
//!     as its own copy holds it (value + the own copy's record A, not re-sealed; phase 2);
//!   - an *adoption* of value v at an undecided position: the leader writes its own copy
//!     (v, A = b, B = b); each member whose copy the prepare read gets, by what it read:
//!     *held* (v with a valid D: nothing written, counted as an acknowledgement at once),
//!     *record* (v with a valid A and B invalid or not above A: record B := b alone, a
//!     16-byte write whose cut tears only B), else *slot* (value + A = b). A member whose copy
//!     was not read gets the position once it is decided, as a decided rewrite.
//! - [`Variant::TwoPhase`], a rejected design: records A and B only; every rewrite (adoption,
//!   catch-up of a known-decided position) is two-phase, B = (b, v) first and, once that
//!   completed, the whole slot under the new ballot. It loses a decided value (below).
//! - [`Variant::Planted`]: the old format, one checksum over value, ballot and commit, and
//!   single-phase rewrites; catch-up copies the leader's own copy with its old ballot. A cut
//!   rewrite of the same value under another ballot leaves the slot torn, and a prepare counts a
//!   torn slot as "nothing accepted".
//!
//! # Findings
//!
//! - `fixed` holds: `agreement`, `no loss` and `recoverable` hold in every reachable state
//!   within [`Bounds::positions`], [`Bounds::quick`] and [`Bounds::deep`] (numbers under
//!   "Bounds"), and, checked once by hand (`mu-model fixed --tenures 4 --crashes 1 --restarts 0
//!   --leaders 7 --positions 1`), within 1 position, 4 tenures, 1 crash, leaders `A`, `B`, `C`
//!   (75,876,146 states, 455 s, 9.9 GiB: too big for the tests).
//! - With three replicas these bounds cannot tell two of `fixed`'s rules from weaker ones:
//!   variants of `fixed` that (1) always write record B alone to a copy holding the value (even
//!   when B is its highest record) or (2) post a decided rewrite's slot together with its mark,
//!   without waiting for the mark, also hold in all those bounds (variant 1 also within those
//!   larger bounds; tried by hand, not kept). Both rules guard a copy whose highest
//!   ballot sits in the one record a cut write tears. With three replicas the quorum that
//!   misses the writer is the two others; the writer's own copy holds the decided value at its
//!   highest, and in a decided rewrite the shipped record A is the very bytes the member
//!   already holds unless a third leader rewrote it (and then holds the value itself), so a
//!   failure needs more tenures, crashes or replicas than these bounds allow. So the model
//!   shows these two rules are enough, not that they are needed; they are expected to matter
//!   with five replicas or longer histories, which it does not reach. A variant that always
//!   writes the slot (never record B alone) is caught within [`Bounds::quick`] (`recoverable`:
//!   two cut slot writes tear the A records of both members, each of which had its ballot only
//!   there).
//! - `two-phase` loses a decided value. Within 3 tenures and 1 crash no two decisions differ,
//!   but a decided value can be left with no valid record on the only copies a quorum still has
//!   (`recoverable` fails); with a fourth tenure (no crash needed, [`Bounds::deep`]) another
//!   value is decided at the same position. The shortest trace (`mu-model two-phase`): `A`
//!   decides `v1` at p0 with `B` (C never has it). `A`'s next tenure catches p0 up on `B`:
//!   phase 1 lands B = (6, v1), phase 2 is cut by `A`'s third tenure's revoke, which keeps the
//!   value bytes (identical) but tears A. `B`'s copy now rests on record B alone. `A`'s third
//!   tenure catches p0 up again: its phase 1 overwrites that very record B and is cut (by `B`
//!   granting `B`'s own tenure), so `B`'s copy has a valid `v1` and neither record: nothing
//!   accepted. `B` prepares with `C`, reads nothing accepted, and decides `v2` at p0. The flaw:
//!   phase 1 overwrites record B in place even when it is the only valid record of the copy.
//!   `fixed` never does: its decided rewrites land D (identical bytes) first and ship the own
//!   copy's record A unchanged, and its adoptions write only the record that is not the
//!   copy's highest.
//! - `planted` loses a decided value (found in seconds; `mu-model planted` prints the trace).
//!
//! # What changed from the first version of the model
//!
//! - The first version's `fixed` (records A and B, two-phase rewrites) is now `two-phase`,
//!   unchanged (its state counts and traces are the same); `fixed` is the core's design above:
//!   the decided mark D per position, adoption plans per member (held, record, slot) from the
//!   copy the prepare read, decided rewrites that ship the own copy's record A as it is, and
//!   the rule that a member whose copy was not read gets an adopted position only once it is
//!   decided. Record B of `fixed` is written only by adoptions.
//! - A step that acknowledges a position records every decision that follows (the first
//!   version recorded one per step; `fixed`'s held acknowledgements and decided rewrites make
//!   several in a row possible).
//! - Two reachability witnesses of `fixed`: `adopted by record B alone`, `held copy counted`.
//! - [`Stop::FirstViolation`] and `mu-model --first`: stop at the first counterexample to any
//!   safety property, to try a variant in bounds too large to exhaust.
//!
//! # What the model covers
//!
//! - Three replicas, `A`, `B`, `C`. Each has a memory region that others access with one-sided
//!   reads and writes: the promise `min_proposal`, `standing` (0 while a restarted replica is
//!   recovering and may not vote; initially every replica is a voter with standing 1: a fresh
//!   cluster already formed), the `grant` (which tenure may access this memory: at most one),
//!   and per position a slot (value part, record A) and its records in the rewrite area (B,
//!   and in `fixed` D). A reader sees a value part as empty, valid (which value) or torn, and a
//!   record as valid only if its check binds it to the valid value there.
//! - A *tenure* of leader `L`. Every replica (`L` included), independently and in any
//!   interleaving, revokes its grantee and grants the tenure. `L` leads only while it holds its
//!   own grant: every step that reads or writes its own memory requires it (remote accesses need
//!   only the member's grant, so `L` may go on with members after granting someone else; the
//!   local store of a decided mark on its own copy, made when it posts one, is not held back).
//!   Prepare: `L` reads promise and standing of any subset of the members that granted it (at
//!   least one a voter; a recovering member does not count); the prepared quorum is `L` plus the
//!   voters read. The ballot is the smallest `round * 3 + L` above every promise read, `L`'s own
//!   and every ballot `L` used before (unique and increasing per replica; a ghost counter that
//!   survives crashes stands for however the implementation ensures that). `L` writes it to its
//!   own promise, then to each quorum member, and waits for those writes.
//! - The log, one position at a time from `L`'s first undecided position (the positions it
//!   decided itself: a CPU-side count lost in a crash). Positions below it are caught up on
//!   every member from `L`'s own copy (`fixed`: decided rewrites; `two-phase`: a two-phase
//!   rewrite under the new ballot; `planted`: its bytes as they are). From there `L` reads the
//!   slot of every quorum member and its own, and adopts the value with the highest accepted
//!   ballot; if none has one, the fast path starts there and `L` proposes its own value at this
//!   and every later position. `L` writes its own copy first, then to every member it read in
//!   the prepare, per member in position order: a member's slot writes go in position order, a
//!   phase 2 only after its phase 1 completed (`fixed` posts the decided marks of later decided
//!   positions meanwhile, as `fence_decided` does). A position is decided when `L`'s copy plus
//!   the acknowledgements of members `L` counts as voters are a majority (acknowledgements:
//!   completion of a fast-path slot write, of a decided rewrite's phase 2, of an adoption
//!   write, or a held copy); then `L` moves on.
//! - Admission: once the tenure's recovery is over (its fast path started, or every position
//!   was adopted) and a recovering member acknowledged every position the tenure caught up,
//!   adopted or decided, `L` may write the member's standing = `b`; from its completion `L`
//!   counts the member's acknowledgements (and later prepares count it as a voter).
//! - Permissions and tearing. A remote write lands only while its target grants the writing
//!   tenure; a revoke fences every write posted before it, and so does the writer's crash. A
//!   write lands whole (in posting order per connection) and completes, or is *cut*: it then
//!   lands with any mixture of old and new bytes, independently per field it covers (value
//!   part, record): each field keeps its old bytes, takes the new ones whole, or is mixed, which
//!   tears it unless the old and new bytes are identical (identical value bytes stay valid; an
//!   identical record stays valid). A cut slot write of `planted` tears the whole slot unless
//!   identical. Reads, promises and standing are atomic words; the leader's stores to its own
//!   memory are atomic.
//! - Crash and restart: any replica may crash at any time: its tenure ends, every write it has
//!   in flight is cut there and then, writes to it are lost. A restart gives it fresh memory:
//!   empty log, promise 0, standing 0, no grant, no decided prefix.
//!
//! # Steps merged (without losing behaviours)
//!
//! - Reads of a member's memory happen in the leader's next local step (closing the prepare,
//!   choosing a position's value and planning its adoption): while the leader holds the
//!   member's grant nobody else can write there, and a revoke before the read only ends what
//!   the leader could still do. So an adoption plan is made from the copy as it is when posted.
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
//!   `restarted replica admitted`, `rewrite cut with value kept` (a cut slot write kept a valid
//!   value and tore its record A), and for `fixed`, `adopted by record B alone` and `held copy
//!   counted`.
//!
//! # What the model abstracts away
//!
//! - Promises are atomic words (the real code keeps two checked records and overwrites the
//!   older, so a torn promise never loses the highest value).
//! - Bytes are a few abstract pieces: value part, records A, B, D. A value is the id of the
//!   tenure that proposed it (per position); "same value" means identical value bytes. The core
//!   re-seals an adopted value with the adopter's `chain_prev` (the chain of its decided
//!   prefix), so two copies of one command at a position differ in bytes when written over
//!   different prefixes. The model takes them as one value: it plans "record" or "held" and
//!   keeps a cut value valid where the core would see another value (and write, or tear, the
//!   slot). That only spares copies written over a prefix that was not the decided one; such a
//!   copy is never a copy of a decided value (a leader decides in position order, so every
//!   decided copy at `p` chains to the decided prefix), so what the model spares is never what
//!   keeps a decision. With one position (the bounds with a crash and with four tenures) every
//!   value chains to the genesis and the model is exact here.
//! - The commit point in A is left out: a rewrite by another tenure differs in ballot anyway, and
//!   a tenure writes each record of a member at most once (a decided rewrite ships the own
//!   copy's record A, commit included, whole).
//! - A decided rewrite ships the own copy's record A as the step that chose the position read
//!   it (the catch-up step, or `L`'s own adoption write); the core ships the slot bytes as they
//!   are when it posts phase 2. They differ only if another tenure wrote `L`'s memory in
//!   between, which needs `L` to have granted it; its writes there carry the same value bytes,
//!   and phase 2 is posted only after the mark landed, so whatever record A it carries the
//!   member's copy reads as decided.
//! - The leader's own catch-up (`CatchUpSelf`: reading decided slots from a more advanced
//!   replica straight into its own log) and `keep_own_ballots` (which first copies each own
//!   copy's record A into its record B, so that a read cut short cannot lose the own copy's
//!   highest ballot) are not modelled: a leader's log here changes only by its own writes and
//!   other tenures' writes, and it knows decided only what it decided itself. Leaving them out
//!   is sound only by argument, not by the check: the reads land decided value bytes (the
//!   source applied them), so they tear no decided value; on a copy that already holds that
//!   value the only record they can tear is A, whose ballot `keep_own_ballots` has saved in B
//!   (the reads never touch B or D), so the copy's accepted ballot never goes down; a copy of
//!   another value there is not decided (the position is decided with the source's value), so
//!   tearing it loses nothing a prepare must find. Without `keep_own_ballots` a cut read could
//!   leave the own copy of a decided value with no record, exactly the `two-phase` failure on
//!   the leader's own copy. What a leader learns this way it treats as decided (decided
//!   rewrites with marks), which is true because the source applied it.
//! - No circular-log recycling (laps), no state transfer, no failure detector, no clients, no
//!   timing: tenures start whenever the bounds allow, and message timing is interleaving.
//! - Followers do not learn commit points; only `L`'s own decisions shorten its recovery, and it
//!   catches up every member at every position below that (the core starts from what each
//!   member applied: fewer rewrites).
//! - A tenure collects grants only before its prepare closes and replicates to the members whose
//!   promise it read; a refused access (Denied) simply disables that member for the tenure (the
//!   core ends the tenure; the model keeps more behaviours). An adoption step needs every quorum
//!   member still reachable (the core proceeds with a quorum of replies; the model's prepare may
//!   read fewer members instead). No connection resets: a member once revoked stays out of the
//!   tenure, so a lost adoption plan is never replanned. No recounts or full prepares (rules 2
//!   and 4 of the core's recovery).
//! - Three replicas, so a quorum is two (see "Findings" for what that leaves unchecked).
//!
//! # Bounds
//!
//! [`Bounds`] sets positions (at most [`MAX_POSITIONS`]), tenures in total (at most
//! [`MAX_TENURES`]), crashes, restarts and which replicas may lead. Unique states and times
//! measured on two shared cores, release build (`mu-model all`: 179 s, 3.7 GiB peak):
//!
//! | variant | bounds | unique states | time | result |
//! |---|---|---|---|---|
//! | `fixed` | [`Bounds::positions`]: 2 positions, 3 tenures, no crash | 24,994,258 | 84 s | holds (whole space, 3.7 GiB) |
//! | `fixed` | [`Bounds::quick`]: 1 position, 3 tenures, 1 crash, 1 restart | 5,020,119 | 14 s | holds (whole space) |
//! | `fixed` | [`Bounds::deep`]: 1 position, 4 tenures, no crash, leaders `A`, `B` | 6,407,579 | 22 s | holds (whole space) |
//! | `two-phase` | [`Bounds::quick`] | 6,775,416 | 18 s | `recoverable` violated (whole space; no two decisions) |
//! | `two-phase` | [`Bounds::deep`] | 9,057,358 | 25 s | agreement violated (stops at the first conflict) |
//! | `planted` | [`Bounds::standard`]: 2 positions, 3 tenures, 1 crash, 1 restart | 5,572,411 | 14 s | agreement violated (stops at the first conflict) |
//!
//! [`Bounds::standard`]'s whole space does not fit a 24 GiB machine breadth-first (the first
//! version's `fixed` had over 10 GiB of frontier after five minutes), so `fixed` is checked
//! within the bounds above instead.

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
    /// The core's design: acceptance record A in the slot, adoption record B and decided mark D
    /// in the rewrite area; decided rewrites land D first, adoptions write whichever of the
    /// slot and B leaves the record holding the copy's highest ballot alone.
    Fixed,
    /// A rejected design: records A and B only, every rewrite two-phase (B, then the slot).
    TwoPhase,
    /// One checksum over value, ballot and commit; single-phase rewrites.
    Planted,
}

impl Variant {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Fixed => "fixed",
            Variant::TwoPhase => "two-phase",
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

/// The accepted ballot of a copy whose decided mark is intact: above every real ballot.
pub const DECIDED: u8 = u8::MAX;

/// One log position of one replica. In the planted format `a` is the ballot part of the one
/// checksummed slot (valid exactly when the value part is); `b` is used by `fixed` (the
/// adoption record) and `two-phase` (the rewrite record), `d` by `fixed` only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Slot {
    /// The value part.
    pub value: Bytes,
    /// Acceptance record inside the slot (`None`: torn or never written).
    pub a: Option<Rec>,
    /// Record B in the rewrite area (`None`: torn or never written).
    pub b: Option<Rec>,
    /// Decided mark in the rewrite area: the value it is bound to (`None`: torn or never
    /// written). Its content is fixed per value, so every writer writes identical bytes.
    pub d: Option<u8>,
}

impl Slot {
    /// The accepted `(ballot, value)`: [`DECIDED`] if the decided mark is bound to the valid
    /// value there, else the highest valid record bound to it; `None` for an empty or torn
    /// value, or a valid one with no valid record (nothing accepted).
    pub fn accepted(&self) -> Option<(u8, u8)> {
        let Bytes::Valid(v) = self.value else {
            return None;
        };
        if self.d == Some(v) {
            return Some((DECIDED, v));
        }
        [self.a, self.b]
            .into_iter()
            .flatten()
            .filter(|r| r.bound == v)
            .map(|r| r.ballot)
            .max()
            .map(|b| (b, v))
    }

    /// Whether record `r` counts for this copy (bound to its valid value).
    fn holds(&self, r: Option<Rec>) -> Option<u8> {
        match (self.value, r) {
            (Bytes::Valid(v), Some(r)) if r.bound == v => Some(r.ballot),
            _ => None,
        }
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
        /// Record A as written (`fixed`'s decided rewrite ships the leader's own copy's record
        /// A as it is, which may be torn: `None`).
        rec: Option<Rec>,
    },
    /// Record B alone: `two-phase`'s phase 1 of a rewrite; `fixed`'s adoption record write.
    RecordB {
        /// Writing tenure.
        tenure: u8,
        /// Position.
        pos: u8,
        /// The record.
        rec: Rec,
    },
    /// `fixed`'s phase 1 of a decided rewrite: the decided mark of `val`.
    Mark {
        /// Writing tenure.
        tenure: u8,
        /// Position.
        pos: u8,
        /// The decided value the mark is bound to.
        val: u8,
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
            | Write::RecordB { tenure, .. }
            | Write::Mark { tenure, .. }
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

/// Per member and position: how far the tenure's writes got. Nothing posted yet.
const P_NONE: u8 = 0;
/// Phase 1 of a rewrite (`two-phase`: record B; `fixed`: the decided mark) posted.
const P_B_POSTED: u8 = 1;
/// Phase 1 completed: phase 2 (the slot) may be posted.
const P_B_DONE: u8 = 2;
/// The write that acknowledges the position (slot, or `fixed`'s adoption record) posted.
const P_SLOT_POSTED: u8 = 3;
/// Acknowledged: that write completed (or `fixed`'s "held": the copy is marked decided).
const P_ACKED: u8 = 4;
/// `fixed`, adoption planned from the copy the prepare read, not posted: "held" (the copy
/// holds the value and its decided mark; counts as an acknowledgement when its turn comes).
const P_PLAN_HELD: u8 = 5;
/// `fixed`, adoption planned, not posted: write only the adoption record B.
const P_PLAN_RECORD: u8 = 6;
/// `fixed`, adoption planned, not posted: write the slot (value part + record A).
const P_PLAN_SLOT: u8 = 7;

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
    /// Record A written with each position (`planted` catch-up keeps the old ballot; `fixed`
    /// ships the own copy's record A as it is).
    wrec: [Option<Rec>; MAX_POSITIONS],
    /// `two-phase`: positions written as two-phase rewrites (`fixed` tells its decided
    /// rewrites by position: below `start`, or adopted and decided).
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
        self.wrec.hash(h);
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
            wrec: [None; MAX_POSITIONS],
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
    /// Ghost (`fixed`): an adoption record write (record B alone) completed.
    pub adopted_by_record: bool,
    /// Ghost (`fixed`): a member's copy marked decided counted as an acknowledgement (held).
    pub held_counted: bool,
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
            (Write::Slot { .. }, Variant::Planted) => 3, // one checksum
            (Write::Slot { .. }, _) => 9,                // value part x record A
            (Write::RecordB { .. } | Write::Mark { .. }, _) => 3,
            (Write::Standing { .. }, _) => 2, // atomic: not landed / landed
        }
    }

    /// Lands `w` on `rep` whole (`code` = `None`) or cut with outcome `code`. Returns whether a
    /// cut rewrite kept a valid value while tearing its record A (a witness).
    fn land(&self, rep: &mut Replica, w: Write, code: Option<u8>) -> bool {
        match w {
            Write::Nothing => false,
            Write::Slot { pos, val, rec, .. } => {
                let slot = &mut rep.log[pos as usize];
                let before = *slot;
                match self.variant {
                    Variant::Fixed | Variant::TwoPhase => {
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
                            Piece::New => slot.a = rec,
                            Piece::Mixed => {
                                if slot.a != rec {
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
                                slot.a = rec;
                            }
                            Piece::Mixed => {
                                if slot.value != Bytes::Valid(val) || slot.a != rec {
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
            Write::RecordB { pos, rec, .. } => {
                let slot = &mut rep.log[pos as usize];
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
            Write::Mark { pos, val, .. } => {
                let slot = &mut rep.log[pos as usize];
                match code.map_or(Piece::New, |c| PIECES[c as usize]) {
                    Piece::Old => {}
                    Piece::New => slot.d = Some(val),
                    Piece::Mixed => {
                        if slot.d != Some(val) {
                            slot.d = None;
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

    /// Records the decision of the tenure's first undecided position if a majority holds it;
    /// returns whether it did.
    fn try_decide(&self, s: &mut State, ti: u8) -> bool {
        let t = s.tenures[ti as usize];
        let q = t.decided;
        if t.stage != Stage::Log || q >= t.own_done || q < t.start {
            return false;
        }
        let acks = (0..REPLICAS as u8)
            .filter(|&m| has(t.voters, m) && t.progress[m as usize][q as usize] == P_ACKED)
            .count() as u32;
        if 1 + acks < QUORUM {
            return false;
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
        true
    }

    /// Posts what the tenure may post, and records every decision that follows (a `fixed`
    /// "held" acknowledgement counts when posted; a decision lets decided rewrites go out).
    fn advance(&self, s: &mut State, ti: u8) {
        loop {
            self.post_all(s, ti);
            if !self.try_decide(s, ti) {
                break;
            }
        }
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
                    let _ = write!(out, " [{}]", show_write(s, *w, self.variant));
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
            Some((DECIDED, _)) => "accepted@DECIDED".into(),
            Some((b, _)) => format!("accepted@{b}"),
            None => "NOTHING accepted".into(),
        };
        match self.variant {
            Variant::Fixed => {
                let d = match slot.d {
                    None => "-".to_string(),
                    Some(v) if slot.value == Bytes::Valid(v) => format!("v{}", v + 1),
                    Some(v) => format!("v{}(stale)", v + 1),
                };
                format!("{val} A={} B={} D={d} => {acc}", rec(slot.a), rec(slot.b))
            }
            Variant::TwoPhase => {
                format!("{val} A={} B={} => {acc}", rec(slot.a), rec(slot.b))
            }
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
                        show_write(s, *w, self.variant),
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
                    } else if self.variant == Variant::Fixed {
                        let plans: Vec<String> = (0..REPLICAS as u8)
                            .filter(|&m| has(t.quorum, m))
                            .map(|m| {
                                let how = match plan(
                                    &s.reps[m as usize].log[q as usize],
                                    t.vals[q as usize],
                                ) {
                                    P_PLAN_HELD => "held",
                                    P_PLAN_RECORD => "record B only",
                                    _ => "slot",
                                };
                                format!("{} {how}", name(m))
                            })
                            .collect();
                        format!(
                            "reads p{q} [{}]: adopts v{v}; plans: {}",
                            reads.join("; "),
                            plans.join(", ")
                        )
                    } else {
                        format!("reads p{q} [{}]: adopts v{v}", reads.join("; "))
                    }
                };
                format!(
                    "{} {}; own copy now {}{}{}",
                    lead(ti),
                    what,
                    self.show_slot(&n.reps[t.leader as usize].log[q as usize]),
                    decisions(s, &n, ti),
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
                let decided = decisions(s, &n, ti as u8);
                let orphan = if s.tenures[ti].active() {
                    ""
                } else {
                    " (its writer is gone: no one hears the completion)"
                };
                format!(
                    "[{}] lands whole on {}{}{}{}",
                    show_write(s, w, self.variant),
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
                            show_write(s, *w, self.variant),
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
                let _ = write!(
                    out,
                    "; posts [{}] to {}",
                    show_write(s, *w, self.variant),
                    name
                );
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
            (Write::Slot { .. }, Variant::Planted)
            | (Write::RecordB { .. } | Write::Mark { .. }, _) => {
                piece(PIECES[code as usize]).to_string()
            }
            (Write::Slot { .. }, _) => format!(
                "value part {}, record A {}",
                piece(PIECES[(code / 3) as usize]),
                piece(PIECES[(code % 3) as usize])
            ),
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
            if self.variant == Variant::Fixed {
                self.post_fixed(s, ti, m);
                continue;
            }
            while let Some(q) = self.next_post(&s.tenures[ti as usize], m) {
                let t = &mut s.tenures[ti as usize];
                let qi = q as usize;
                let p = &mut t.progress[m as usize][qi];
                let w = if has(t.rewrite, q) && *p == P_NONE {
                    *p = P_B_POSTED;
                    Write::RecordB {
                        tenure: ti,
                        pos: q,
                        rec: t.wrec[qi].expect("a rewrite carries its record"),
                    }
                } else {
                    *p = P_SLOT_POSTED;
                    Write::Slot {
                        tenure: ti,
                        pos: q,
                        val: t.vals[qi],
                        rec: t.wrec[qi],
                    }
                };
                s.reps[m as usize].push(w);
            }
        }
    }

    /// `fixed`: posts to member `m`, in position order, what may go now (the core's
    /// `post_log_writes`, `fence_decided`, `post_adoption`).
    ///
    /// - A decided rewrite (a position the tenure knew decided when it started, or an adopted
    ///   position decided since that the member has no adoption write posted for): phase 1 is
    ///   the decided mark (the own copy is marked first, a local store); phase 2, the slot as
    ///   the own copy holds it, goes once the mark completed. Marks of later decided positions
    ///   go out meanwhile; slots of later positions wait.
    /// - An adopted position not decided yet: the member's plan (held: acknowledged at once;
    ///   record: record B alone; slot: the slot), or, without a plan, nothing until it is
    ///   decided.
    /// - A fresh position: the slot, one write.
    fn post_fixed(&self, s: &mut State, ti: u8, m: u8) {
        let mi = m as usize;
        // A slot write of an earlier position waits for its mark: later slots wait too.
        let mut slots_wait = false;
        for q in 0..s.tenures[ti as usize].own_done {
            let t = s.tenures[ti as usize];
            let qi = q as usize;
            let p = t.progress[mi][qi];
            if p == P_SLOT_POSTED || p == P_ACKED {
                continue;
            }
            let v = t.vals[qi];
            let adopted = q >= t.start && q < t.fast_from;
            if q < t.start || (adopted && q < t.decided) {
                match p {
                    P_B_POSTED => slots_wait = true,
                    P_B_DONE => {
                        if !slots_wait {
                            s.tenures[ti as usize].progress[mi][qi] = P_SLOT_POSTED;
                            s.reps[mi].push(Write::Slot {
                                tenure: ti,
                                pos: q,
                                val: v,
                                rec: t.wrec[qi],
                            });
                        }
                    }
                    _ => {
                        // The own copy must open (it holds the decided value) to be marked and
                        // shipped; else this member cannot be served from this log.
                        let own = &mut s.reps[t.leader as usize].log[qi];
                        if own.value != Bytes::Valid(v) {
                            return;
                        }
                        own.d = Some(v);
                        let t = &mut s.tenures[ti as usize];
                        t.progress[mi][qi] = P_B_POSTED;
                        s.reps[mi].push(Write::Mark {
                            tenure: ti,
                            pos: q,
                            val: v,
                        });
                        slots_wait = true;
                    }
                }
                continue;
            }
            if slots_wait {
                return;
            }
            let w = if !adopted {
                Write::Slot {
                    tenure: ti,
                    pos: q,
                    val: v,
                    rec: t.wrec[qi],
                }
            } else {
                match p {
                    P_PLAN_HELD => {
                        s.tenures[ti as usize].progress[mi][qi] = P_ACKED;
                        if has(t.voters, m) {
                            s.held_counted = true;
                        }
                        continue;
                    }
                    P_PLAN_RECORD => Write::RecordB {
                        tenure: ti,
                        pos: q,
                        rec: t.wrec[qi].expect("an adoption carries its record"),
                    },
                    P_PLAN_SLOT => Write::Slot {
                        tenure: ti,
                        pos: q,
                        val: v,
                        rec: t.wrec[qi],
                    },
                    // No plan (its copy was not read): it gets the position once decided.
                    _ => return,
                }
            };
            s.tenures[ti as usize].progress[mi][qi] = P_SLOT_POSTED;
            s.reps[mi].push(w);
        }
    }
}

/// `fixed`: how the value `v` adopted at a position goes to a member whose copy of it the
/// prepare read as `copy` (the core's `plan_adoption`): held (it holds `v` marked decided),
/// record B alone (it holds `v` with its highest ballot in record A), else the slot.
fn plan(copy: &Slot, v: u8) -> u8 {
    if copy.value != Bytes::Valid(v) {
        return P_PLAN_SLOT;
    }
    if copy.d == Some(v) {
        return P_PLAN_HELD;
    }
    match (copy.holds(copy.a), copy.holds(copy.b)) {
        (Some(a), b) if b.is_none_or(|b| a >= b) => P_PLAN_RECORD,
        _ => P_PLAN_SLOT,
    }
}

/// The decisions tenure `ti` made in a step from `s` to `n`, as text.
fn decisions(s: &State, n: &State, ti: u8) -> String {
    let (before, after) = (&s.tenures[ti as usize], &n.tenures[ti as usize]);
    let mut out = String::new();
    if after.stage == Stage::Log {
        for p in before.decided..after.decided {
            let _ = write!(
                out,
                "; {} DECIDES v{} at p{}",
                tenure_name(s, ti),
                after.vals[p as usize] + 1,
                p
            );
        }
    }
    out
}

fn tenure_name_raw(ti: u8, leader: u8) -> String {
    format!("#{}({})", ti + 1, NAMES[leader as usize])
}

fn tenure_name(s: &State, ti: u8) -> String {
    tenure_name_raw(ti, s.tenures[ti as usize].leader)
}

fn show_write(s: &State, w: Write, variant: Variant) -> String {
    let rec = |r: Option<Rec>| match r {
        None => "torn".to_string(),
        Some(r) => format!("{}@v{}", r.ballot, r.bound + 1),
    };
    match w {
        Write::Nothing => "-".into(),
        Write::Slot {
            tenure,
            pos,
            val,
            rec: a,
        } => format!(
            "{} slot p{} = v{}, A {}",
            tenure_name(s, tenure),
            pos,
            val + 1,
            rec(a)
        ),
        Write::RecordB {
            tenure,
            pos,
            rec: b,
        } => format!(
            "{} {} p{} = {}",
            tenure_name(s, tenure),
            if variant == Variant::TwoPhase {
                "phase-1 record B"
            } else {
                "adoption record B"
            },
            pos,
            rec(Some(b))
        ),
        Write::Mark { tenure, pos, val } => format!(
            "{} phase-1 decided mark p{} = D(v{})",
            tenure_name(s, tenure),
            pos,
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
            adopted_by_record: false,
            held_counted: false,
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
                let rec_of = |v| {
                    Some(Rec {
                        ballot: b,
                        bound: v,
                    })
                };
                let reps = s.reps;
                let t = &mut s.tenures[ti as usize];
                let own = &mut s.reps[l].log[q];
                if q < t.start as usize {
                    // Catch-up of a position it knows decided, from its own copy.
                    match self.variant {
                        Variant::Fixed => {
                            // Decided rewrite: the own copy as it is (marked decided when the
                            // first member's phase 1 is posted).
                            let Bytes::Valid(v) = own.value else {
                                return None;
                            };
                            t.vals[q] = v;
                            t.wrec[q] = own.a;
                        }
                        Variant::TwoPhase => {
                            let Bytes::Valid(v) = own.value else {
                                return None;
                            };
                            own.a = rec_of(v);
                            own.b = rec_of(v);
                            t.vals[q] = v;
                            t.wrec[q] = rec_of(v);
                            t.rewrite |= bit(q as u8);
                        }
                        Variant::Planted => {
                            let (bo, v) = own.accepted()?;
                            t.vals[q] = v;
                            t.wrec[q] = Some(Rec {
                                ballot: bo,
                                bound: v,
                            });
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
                    match adopted {
                        Some(v) => {
                            own.value = Bytes::Valid(v);
                            own.a = rec_of(v);
                            match self.variant {
                                Variant::Fixed => {
                                    own.b = rec_of(v);
                                    // Plan each member whose copy the prepare read.
                                    for (m, rep) in reps.iter().enumerate() {
                                        if has(t.quorum, m as u8) {
                                            t.progress[m][q] = plan(&rep.log[q], v);
                                        }
                                    }
                                }
                                Variant::TwoPhase => {
                                    own.b = rec_of(v);
                                    t.rewrite |= bit(q as u8);
                                }
                                Variant::Planted => {}
                            }
                            t.vals[q] = v;
                        }
                        None => {
                            own.value = Bytes::Valid(ti);
                            own.a = rec_of(ti);
                            t.vals[q] = ti;
                        }
                    }
                    t.wrec[q] = own.a;
                }
                t.own_done += 1;
                self.advance(&mut s, ti);
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
                        Write::RecordB { pos, .. } if self.variant == Variant::TwoPhase => {
                            t.progress[m as usize][pos as usize] = P_B_DONE;
                        }
                        Write::RecordB { pos, .. } => {
                            t.progress[m as usize][pos as usize] = P_ACKED;
                            s.adopted_by_record = true;
                        }
                        Write::Mark { pos, .. } => {
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
                    self.advance(&mut s, ti);
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
        Property::sometimes("adopted by record B alone", |_, s: &State| {
            s.adopted_by_record
        }),
        Property::sometimes("held copy counted", |_, s: &State| s.held_counted),
    ]
}

/// The safety properties (always-properties) of the model.
pub const SAFETY: [&str; 3] = ["agreement", "no loss", "recoverable"];
/// The reachability witnesses (sometimes-properties) of the model; the last two exist only in
/// `fixed` (see [`Variant::witnesses`]).
pub const WITNESSES: [&str; 5] = [
    "every position decided",
    "restarted replica admitted",
    "rewrite cut with value kept",
    "adopted by record B alone",
    "held copy counted",
];

impl Variant {
    /// The witnesses that `self` can reach (given bounds with a crash and a restart).
    pub fn witnesses(self) -> &'static [&'static str] {
        match self {
            Variant::Fixed => &WITNESSES,
            Variant::TwoPhase | Variant::Planted => &WITNESSES[..3],
        }
    }
}

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
    /// Stop at the first counterexample of any safety property (breadth-first: a shortest one).
    FirstViolation,
}

/// Checks `variant` within `bounds` by breadth-first search on `threads` threads.
pub fn check(variant: Variant, bounds: Bounds, stop: Stop, threads: usize) -> Report {
    let model = MuModel::new(variant, bounds);
    let started = Instant::now();
    let mut builder = model.clone().checker().threads(threads);
    match stop {
        Stop::Exhaust => {}
        Stop::FirstConflict => {
            builder = builder.finish_when(HasDiscoveries::AnyOf(BTreeSet::from(["agreement"])));
        }
        Stop::FirstViolation => {
            builder = builder.finish_when(HasDiscoveries::AnyOf(BTreeSet::from(SAFETY)));
        }
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
        stopped_early: match stop {
            Stop::Exhaust => false,
            Stop::FirstConflict => discoveries.contains_key("agreement"),
            Stop::FirstViolation => SAFETY.iter().any(|p| discoveries.contains_key(p)),
        },
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

    fn rec(ballot: u8, bound: u8) -> Option<Rec> {
        Some(Rec { ballot, bound })
    }

    fn v1_at(ballot: u8) -> Slot {
        Slot {
            value: Bytes::Valid(0),
            a: rec(ballot, 0),
            ..Slot::default()
        }
    }

    fn slot_write(tenure: u8, val: u8, ballot: u8) -> Write {
        Write::Slot {
            tenure,
            pos: 0,
            val,
            rec: rec(ballot, val),
        }
    }

    /// Outcome code of a cut slot write: value part and record A both mixed (the worst case).
    const BOTH_MIXED: u8 = 8;
    /// Outcome code of a cut one-field write: mixed.
    const MIXED: u8 = 2;

    #[test]
    fn two_phase_cut_rewrites_leave_nothing_accepted() {
        let m = MuModel::new(Variant::TwoPhase, Bounds::quick());
        let mut r = rep_with(v1_at(3));
        let phase1 = Write::RecordB {
            tenure: 1,
            pos: 0,
            rec: Rec {
                ballot: 6,
                bound: 0,
            },
        };
        m.land(&mut r, phase1, None);
        assert!(m.land(&mut r, slot_write(1, 0, 6), Some(BOTH_MIXED)));
        assert_eq!(r.log[0].value, Bytes::Valid(0));
        assert_eq!(r.log[0].a, None);
        assert_eq!(r.log[0].accepted(), Some((6, 0)));
        // The next rewrite's phase 1, cut, tears the only valid record: nothing accepted.
        let next = Write::RecordB {
            tenure: 2,
            pos: 0,
            rec: Rec {
                ballot: 9,
                bound: 0,
            },
        };
        m.land(&mut r, next, Some(MIXED));
        assert_eq!(r.log[0].accepted(), None);
    }

    #[test]
    fn fixed_decided_mark_survives_every_cut_rewrite() {
        let m = MuModel::new(Variant::Fixed, Bounds::quick());
        let mut r = rep_with(v1_at(3));
        let mark = |tenure| Write::Mark {
            tenure,
            pos: 0,
            val: 0,
        };
        m.land(&mut r, mark(1), None);
        assert_eq!(r.log[0].accepted(), Some((DECIDED, 0)));
        // Phase 2 cut: record A torn, the mark still says decided.
        assert!(m.land(&mut r, slot_write(1, 0, 6), Some(BOTH_MIXED)));
        assert_eq!(r.log[0].accepted(), Some((DECIDED, 0)));
        // The next decided rewrite's phase 1, cut: identical bytes, nothing torn.
        m.land(&mut r, mark(2), Some(MIXED));
        assert_eq!(r.log[0].d, Some(0));
        assert_eq!(r.log[0].accepted(), Some((DECIDED, 0)));
        // A mark counts only with the value it is bound to.
        m.land(&mut r, slot_write(3, 1, 9), None);
        assert_eq!(r.log[0].accepted(), Some((9, 1)));
    }

    #[test]
    fn fixed_adoption_plans_spare_the_highest_record() {
        let v1 = Bytes::Valid(0);
        let only_a = v1_at(3);
        assert_eq!(plan(&only_a, 0), P_PLAN_RECORD);
        let a_high = Slot {
            b: rec(2, 0),
            ..only_a
        };
        assert_eq!(plan(&a_high, 0), P_PLAN_RECORD);
        let b_high = Slot {
            b: rec(5, 0),
            ..only_a
        };
        assert_eq!(plan(&b_high, 0), P_PLAN_SLOT);
        let only_b = Slot {
            value: v1,
            b: rec(5, 0),
            ..Slot::default()
        };
        assert_eq!(plan(&only_b, 0), P_PLAN_SLOT);
        let marked = Slot {
            d: Some(0),
            ..only_b
        };
        assert_eq!(plan(&marked, 0), P_PLAN_HELD);
        assert_eq!(plan(&only_a, 1), P_PLAN_SLOT);
        assert_eq!(plan(&Slot::default(), 0), P_PLAN_SLOT);
        // A cut record-B write keeps record A; a cut slot write keeps record B.
        let m = MuModel::new(Variant::Fixed, Bounds::quick());
        let mut r = rep_with(a_high);
        let adopt = Write::RecordB {
            tenure: 1,
            pos: 0,
            rec: Rec {
                ballot: 7,
                bound: 0,
            },
        };
        m.land(&mut r, adopt, Some(MIXED));
        assert_eq!(r.log[0].accepted(), Some((3, 0)));
        let mut r = rep_with(b_high);
        m.land(&mut r, slot_write(1, 0, 7), Some(BOTH_MIXED));
        assert_eq!(r.log[0].accepted(), Some((5, 0)));
    }

    #[test]
    fn fixed_cut_write_of_another_value_tears_the_value() {
        let m = MuModel::new(Variant::Fixed, Bounds::quick());
        let mut r = rep_with(v1_at(3));
        m.land(&mut r, slot_write(1, 1, 4), Some(BOTH_MIXED));
        assert_eq!(r.log[0].value, Bytes::Torn);
        assert_eq!(r.log[0].accepted(), None);
    }

    #[test]
    fn planted_cut_rewrite_of_the_same_value_tears_the_slot() {
        let m = MuModel::new(Variant::Planted, Bounds::quick());
        let mut r = rep_with(v1_at(3));
        m.land(&mut r, slot_write(1, 0, 4), Some(MIXED));
        assert_eq!(r.log[0].value, Bytes::Torn);
        assert_eq!(r.log[0].accepted(), None);
        // An identical rewrite (same ballot) cannot tear it.
        let mut r = rep_with(v1_at(3));
        m.land(&mut r, slot_write(1, 0, 3), Some(MIXED));
        assert_eq!(r.log[0].accepted(), Some((3, 0)));
    }

    #[test]
    fn a_record_counts_only_with_the_value_it_is_bound_to() {
        let slot = Slot {
            value: Bytes::Valid(1),
            a: rec(5, 0),
            b: rec(4, 1),
            d: Some(0),
        };
        assert_eq!(slot.accepted(), Some((4, 1)));
    }

    #[test]
    fn the_first_steps_are_grants_that_start_tenures() {
        for variant in [Variant::Fixed, Variant::TwoPhase, Variant::Planted] {
            let m = MuModel::new(variant, Bounds::quick());
            let init = m.init_states().remove(0);
            let mut actions = Vec::new();
            m.actions(&init, &mut actions);
            assert_eq!(actions.len(), 9 + 3); // 3 leaders x 3 granting replicas, 3 crashes
            assert!(m.recoverable(&init));
        }
    }
}
