//! The own log, below both roles of the replication plane (the follower's replay and the
//! leader's tenure): what is applied, the chain through it, the scratch buffers a slot is
//! opened and a command reassembled in, and the queue of commands this replica submitted.
//!
//! Replay: a slot at the next position to apply is taken only when it opens (chain, position)
//! and its `chain_prev` equals the chain of everything applied so far; a position is applied
//! only below a commit point carried by a slot that chains back to the applied prefix (or by the
//! commit record, which carries the chain digest it vouches for). So a torn slot, a slot of an
//! earlier lap and an undecided value of an earlier leader are never applied. A valid slot of a
//! *later* lap at the next position, or a lap notice, means the leader recycled past this
//! replica: it needs a snapshot of another replica instead (`transfer`).
//!
//! A follower hashes a value once. Its scan reads headers: each new slot's chain is a hash of
//! its header words, the body digest among them (`slot`), and the scan records it. A commit
//! point is trusted only from a slot whose chain links header by header back to the applied
//! prefix; a header torn between two writers yields a chain nobody wrote, which neither the next
//! slot's `chain_prev` nor any acceptance record matches. The walk is kept between replays while
//! they find new slots or apply, so a streaming follower reads each header once in its scan; a
//! slot that no longer chains to the walk (the leader rewrote walked slots) restarts it from
//! `applied`, and so does a replay that found and applied nothing. The next two positions to
//! apply are loaded whole by the walk, and staged when their payload matches the body digest:
//! a streaming follower walks a slot in one poll and applies it in the next, from the staged
//! bytes, which hold the value whose chain the walk linked, as it was then (what the slot holds
//! now does not matter: that value is the one decided). Any other slot is loaded whole at its
//! apply and taken only if its header yields the chain the walk recorded and its payload
//! matches the body digest (`slot::reopen`): the bytes may have been rewritten since, or be
//! torn as a write lands.
//!
//! # Invariants
//! - `applied` only grows, except when a snapshot is installed (`install_position`, never while
//!   leading); `applied_chain` is the chain digest through `applied - 1`.
//! - Every replica applies the same command at the same position (agreement), because every
//!   applied slot chains to the same decided prefix.
//! - A command submitted here is reported `committed` only when the command itself (its origin)
//!   is applied, never when another value was decided in its place.
//! - Work per replay is bounded: the scan and the applies stop after a fixed number of slots.
//! - `applied <= walk.end <= applied + scan bound <= applied + WALK_MAX` whenever a walk is
//!   kept, and `walked` holds the linked chain of every position in `[applied, walk.end)`; the
//!   walk is forgotten when this replica starts leading (its proposals rewrite its own log) or
//!   installs a snapshot.
//! - A position is applied only if its slot opened whole with the chain the walk linked there
//!   (at the apply, or when the walk staged it), below a commit point the same walk learned
//!   (`commit_known == applied` whenever no walk is kept).
//! - A staged slot's bytes are exactly what one load of it returned, its payload matching its
//!   body digest and its header yielding the chain it is staged with; only the walk writes them.

use crate::config::{Config, ENTRY_SLOTS_MAX, PIPELINE_DEPTH_MAX};
use crate::fabric::{Fabric, ReplicaId};
use crate::hash::Hasher;
use crate::layout::{Layout, COMMIT_RECORD_BYTES, RECORD_BYTES};
use crate::queue::RequestQueue;
use crate::record;
use crate::slot::{
    self, Opened, Reopened, SlotError, SlotHeader, CHAIN_GENESIS, SLOT_HEADER_BYTES,
};
use crate::state_machine::StateMachine;

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

impl Assembly {
    /// Adds `fragment`, of the slot whose header is `header`, to `entry`, a command that `fits`
    /// it; `chain` is the chain before the slot. True when it completed its command. Fragments
    /// out of sequence (a command cut short by a leader change) are dropped the same way on
    /// every replica, because every replica applies the same decided slots.
    fn add<const ENTRY: usize>(
        &mut self,
        header: SlotHeader,
        fits: bool,
        chain: u64,
        fragment: &[u8],
        entry: &mut [u8; ENTRY],
    ) -> bool {
        if header.frag_index == 0 {
            *self = Assembly {
                active: fits,
                start: header.position,
                start_chain: chain,
                origin: header.origin,
                entry_len: header.entry_len,
                next_frag: 0,
                filled: 0,
            };
        }
        let in_sequence = self.active
            && self.origin == header.origin
            && self.entry_len == header.entry_len
            && self.next_frag == header.frag_index;
        if !in_sequence {
            self.active = false;
            return false;
        }
        let from = self.filled as usize;
        entry[from..from + fragment.len()].copy_from_slice(fragment);
        self.filled += fragment.len() as u32;
        self.next_frag += 1;
        if self.next_frag < header.frag_count {
            return false;
        }
        assert_eq!(self.filled, header.entry_len);
        self.active = false;
        true
    }
}

const COMMIT_DOMAIN: u64 = 0x434F_4D4D_4954;

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

/// The most positions a scan walks past `applied` (`scan_bound` at the largest pipeline and
/// command the configuration allows).
const WALK_MAX: usize = PIPELINE_DEPTH_MAX as usize + ENTRY_SLOTS_MAX as usize + 2;

/// Entries of `walked`, a power of two at least [`WALK_MAX`]: a position's entry is a mask away,
/// where a modulo by `WALK_MAX` cost a multiply and a few more instructions at each walked and
/// each applied position.
const WALK_RING: usize = WALK_MAX.next_power_of_two();

/// The entry of `walked` that holds `position`'s chain.
#[inline(always)]
const fn walk_entry(position: u64) -> usize {
    (position & (WALK_RING as u64 - 1)) as usize
}

/// True when the slot at `offset` holds nothing of `position`'s lap, by its position word alone
/// (at position 0 that word cannot tell).
#[inline(always)]
fn unwritten_at<F: Fabric>(fabric: &F, offset: u32, position: u64) -> bool {
    fabric.load_word(offset + slot::POSITION_AT) < position
}

/// How far a follower's scan walked the log: the headers of `[applied, end)` opened and
/// chained, each to its predecessor, and `chain` is the last one's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Walk {
    end: u64,
    chain: u64,
}

/// What a scan found: where its walk ended, whether it found new slots, and the slot it could
/// not take short of that.
struct Walked {
    end: u64,
    advanced: bool,
    stopped: Option<(u64, Blocked)>,
}

/// A slot the follower's walk loaded whole and found whole: its apply takes it from here,
/// without loading and opening it again. The walk stages the next two positions to apply, each
/// in the buffer of its parity: a streaming follower walks a slot in one poll and applies it in
/// the next, when the walk of the one after it has been staged in the other buffer.
struct Staged<const SLOT: usize> {
    /// The header and chain of the value `bytes` hold, whole; `None`: nothing.
    held: Option<(SlotHeader, u64)>,
    bytes: [u8; SLOT],
}

/// Where the bytes of a slot to apply are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The scratch slot (`Log::slot`).
    Scratch,
    /// The walk's staged slot of this parity.
    Staged(usize),
}

/// The own log of one replica, as both roles of its replication plane use it.
pub(crate) struct Log<const SLOT: usize, const ENTRY: usize, const QUEUE: usize> {
    pub(crate) config: Config,
    pub(crate) layout: Layout,
    pub(crate) me: ReplicaId,
    pub(crate) applied: u64,
    pub(crate) applied_chain: u64,
    commit_known: u64,
    /// What the follower's scans walked so far, kept between replays.
    walk: Option<Walk>,
    /// The chain of each walked position in `[applied, walk.end)`, by position modulo
    /// `WALK_RING`: the value the walk linked, which the apply must find again.
    walked: [u64; WALK_RING],
    /// When a replay that finds nothing new reads the lap notice next.
    lap_check_at: u64,
    /// The last replay found valid slots up to its scan bound: more may follow.
    pub(crate) backlog: bool,
    assembly: Assembly,
    entry: [u8; ENTRY],
    /// Scratch for one slot: the one being opened, applied or adopted.
    pub(crate) slot: [u8; SLOT],
    /// The next two positions to apply, as the walk loaded them (see [`Staged`]).
    staged: [Staged<SLOT>; 2],
    response: [u8; ENTRY],
    /// The commands this replica submitted, until decided (or dropped).
    pub(crate) queue: RequestQueue<QUEUE>,
    /// Where the last replay stopped at a slot that was written but could not be taken.
    pub(crate) blocked: Option<(u64, Blocked)>,
    /// Times a replay stopped at a new such slot, by reason; lap notices taken.
    pub(crate) refusals: Refusals,
}

/// Why a follower's replay stopped at a slot that holds something, short of the next decided
/// position: the leader is rewriting it (or tore it), or it is damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Blocked {
    /// Its value does not open: torn (a write in flight or cut short), or corrupted.
    Torn,
    /// It opens but does not chain to what was applied: an earlier leader's undecided value,
    /// waiting for the current leader's rewrite.
    Unchained,
}

impl Blocked {
    /// The reason's number where a runtime publishes it as a word (never 0: 0 is "not
    /// blocked").
    pub const fn code(self) -> u32 {
        match self {
            Blocked::Torn => 1,
            Blocked::Unchained => 2,
        }
    }

    /// The reason a published word names; `None` for 0 (not blocked) or an unknown number.
    pub const fn from_code(code: u32) -> Option<Blocked> {
        match code {
            1 => Some(Blocked::Torn),
            2 => Some(Blocked::Unchained),
            _ => None,
        }
    }

    /// Its name in status lines.
    pub const fn name(self) -> &'static str {
        match self {
            Blocked::Torn => "torn",
            Blocked::Unchained => "unchained",
        }
    }
}

/// What a follower's replays refused, counted once per slot and reason: a count that keeps
/// rising, or a [`Blocked`] that stays, explains a follower that does not keep up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Refusals {
    /// Slots whose value did not open.
    pub torn: u32,
    /// Slots that did not chain to the applied prefix.
    pub unchained: u32,
    /// Lap notices taken: a leader said this replica needs positions no log holds.
    pub lap_notices: u32,
}

impl<const SLOT: usize, const ENTRY: usize, const QUEUE: usize> Log<SLOT, ENTRY, QUEUE> {
    /// The empty log of replica `me`; the caller validated the configuration against the buffer
    /// sizes.
    pub(crate) fn new(config: Config, me: ReplicaId) -> Self {
        assert!(config.validate().is_ok());
        assert!(config.slot_size as usize <= SLOT);
        assert!(config.entry_bytes_max() as usize <= ENTRY);
        assert!(config.contains(me));
        Log {
            config,
            layout: Layout::new(&config),
            me,
            applied: 0,
            applied_chain: CHAIN_GENESIS,
            commit_known: 0,
            walk: None,
            walked: [0; WALK_RING],
            lap_check_at: 0,
            backlog: false,
            assembly: Assembly::default(),
            entry: [0; ENTRY],
            slot: [0; SLOT],
            staged: [const {
                Staged {
                    held: None,
                    bytes: [0; SLOT],
                }
            }; 2],
            response: [0; ENTRY],
            queue: RequestQueue::new(),
            blocked: None,
            refusals: Refusals {
                torn: 0,
                unchained: 0,
                lap_notices: 0,
            },
        }
    }

    /// Every replica but this one.
    pub(crate) fn others(&self) -> impl Iterator<Item = ReplicaId> {
        let me = self.me;
        (0..self.config.replica_count).filter(move |&p| p != me)
    }

    /// Loads the slot of `position` that this replica wrote as leader, from its own log into
    /// the scratch slot, without hashing its value again ([`slot::open_own`]).
    pub(crate) fn open_own<F: Fabric>(
        &mut self,
        fabric: &mut F,
        position: u64,
    ) -> Option<(SlotHeader, u64)> {
        let size = self.config.slot_size as usize;
        fabric.load(self.layout.slot(position), &mut self.slot[..size]);
        slot::open_own(&self.slot[..size], position)
    }

    /// The scan walks from this replica's own log again, from what is applied: it starts
    /// leading (its proposals rewrite the log) or installed a snapshot.
    pub(crate) fn forget_walk(&mut self) {
        self.walk = None;
        self.forget_commit_points();
    }

    /// A commit point is only as good as the walk that linked it: the position it covers may
    /// hold another header by the next walk (whose chain nothing vouches for, if it is torn
    /// between two writers), so a new walk learns its commit points again, from the slots and
    /// the commit record, which stay in the log.
    fn forget_commit_points(&mut self) {
        self.commit_known = self.commit_known.min(self.applied);
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

    /// Loads the slot of `position` from this replica's own log into the scratch slot, and opens
    /// it only if something vouches for its header ([`SlotError::Unvouched`] otherwise): its
    /// acceptance record, the next position's slot naming its chain as `chain_prev` (its writer
    /// computed that chain from these very words), or the adoption record or decided mark of its
    /// position. For whoever takes a slot on its own, with no chain to link it to: a header torn
    /// between two writers yields a chain nobody wrote, and what is shipped or applied must be
    /// one writer's.
    pub(crate) fn open_vouched<F: Fabric>(
        &mut self,
        fabric: &mut F,
        position: u64,
    ) -> Result<Opened, SlotError> {
        let opened = self.open_local(fabric, position)?;
        if opened.accepted.is_some() || self.linked_from_next(fabric, position, opened.chain) {
            return Ok(opened);
        }
        let (adoption, decided) = self.own_records(fabric, position);
        match slot::accepted_ballot(&opened, &adoption, &decided) {
            Some(_) => Ok(opened),
            None => Err(SlotError::Unvouched),
        }
    }

    /// The adoption record and decided mark of `position` in the own log.
    pub(crate) fn own_records<F: Fabric>(
        &self,
        fabric: &mut F,
        position: u64,
    ) -> ([u8; RECORD_BYTES as usize], [u8; RECORD_BYTES as usize]) {
        let mut adoption = [0u8; RECORD_BYTES as usize];
        let mut decided = [0u8; RECORD_BYTES as usize];
        fabric.load(self.layout.adoption_record(position), &mut adoption);
        fabric.load(self.layout.decided_mark(position), &mut decided);
        (adoption, decided)
    }

    /// True when the slot after `position` in the own log names `chain` as its `chain_prev`
    /// (its word alone is read: the scratch slot keeps what it holds).
    fn linked_from_next<F: Fabric>(&self, fabric: &mut F, position: u64, chain: u64) -> bool {
        let mut word = [0u8; 8];
        fabric.load(
            self.layout.slot(position + 1) + slot::CHAIN_PREV_AT,
            &mut word,
        );
        u64::from_le_bytes(word) == chain
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
        self.forget_walk();
        self.applied = position;
        self.applied_chain = chain;
        self.commit_known = position;
        self.assembly = Assembly::default();
    }

    // ---- follower replay ------------------------------------------------------------------

    fn scan_bound(&self) -> u32 {
        self.config.pipeline_depth as u32 + self.config.entry_slots_max as u32 + 2
    }

    /// Finds how far the log is decided and chained, then applies up to there. Returns the
    /// position from which this replica needs a snapshot instead, when the log was recycled
    /// past it.
    ///
    /// A lapped follower is sent nothing but lap notices, so its replays apply nothing: only
    /// such a replay reads the lap notice, at most once every `recycle_period_ticks` (the
    /// period at which a leader writes it), which keeps it off the polls of a follower that
    /// keeps up. "Applies nothing", not "finds nothing new": a slot whose header is intact but
    /// whose payload was damaged is walked again at every replay and refused at its apply, and
    /// a lapped leader never rewrites it (simulator seed 6032, with a leader that tends its
    /// members less often).
    pub(crate) fn replay<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        fabric: &mut F,
        sm: &mut S,
    ) -> Option<u64> {
        let walked = if self.walk.is_none() && self.unwritten(fabric, self.applied) {
            // The common idle poll: nothing at the next position, so nowhere to walk.
            Walked {
                end: self.applied,
                advanced: false,
                stopped: None,
            }
        } else {
            match self.walk_on(fabric) {
                Ok(walked) => walked,
                Err(floor) => return Some(floor),
            }
        };
        let mut stopped = walked.stopped;
        let applied_before = self.applied;
        let decided_end = self.commit_known.min(walked.end);
        let size = self.config.slot_size as usize;
        while self.applied < decided_end {
            let walked_chain = self.walked[walk_entry(self.applied)];
            let parity = (self.applied % 2) as usize;
            let (reopened, source) = match self.staged[parity].held {
                // Loaded whole by the walk that linked it: that value, as it was then.
                Some((header, chain))
                    if header.position == self.applied && chain == walked_chain =>
                {
                    debug_assert_eq!(
                        slot::reopen(&self.staged[parity].bytes[..size], chain),
                        Reopened::Same(header)
                    );
                    (Reopened::Same(header), Source::Staged(parity))
                }
                _ => {
                    fabric.load(self.layout.slot(self.applied), &mut self.slot[..size]);
                    (
                        slot::reopen(&self.slot[..size], walked_chain),
                        Source::Scratch,
                    )
                }
            };
            let why = match reopened {
                Reopened::Same(header) if header.chain_prev == self.applied_chain => {
                    debug_assert_eq!(header.position, self.applied);
                    self.apply_slot(header, walked_chain, source, sm);
                    continue;
                }
                // Not the value the walk linked: rewritten since (the walk restarts).
                Reopened::Same(_) | Reopened::Other => Blocked::Unchained,
                // Its payload is landing, or damaged.
                Reopened::Torn => Blocked::Torn,
            };
            stopped = Some((self.applied, why));
            self.forget_walk();
            break;
        }
        if self.applied == applied_before {
            // A replay that neither found nor applied anything walks from `applied` again
            // next time, so that commit points the leader rewrote into walked slots (a repair,
            // a new tenure's rewrite) are seen. An idle follower has nothing between `applied`
            // and the end to read again.
            if !walked.advanced {
                self.forget_walk();
            }
            if now >= self.lap_check_at {
                self.lap_check_at = now + self.config.recycle_period_ticks as u64;
                if let Some(floor) = self.lapped_by_notice(fabric) {
                    self.refusals.lap_notices = self.refusals.lap_notices.wrapping_add(1);
                    return Some(floor);
                }
            }
        }
        self.note_stop(stopped);
        None
    }

    /// Walks on from where the last scan stopped (from `applied` when there is no walk, or
    /// when the walked slots were rewritten), opening each new slot's header as far as they
    /// chain, up to the scan bound, and records each one's chain;
    /// takes the commit points they carry, and the commit record's. Returns where the walk
    /// ended and why it stopped short of an empty slot, or the position from which this
    /// replica needs a snapshot.
    fn walk_on<F: Fabric>(&mut self, fabric: &mut F) -> Result<Walked, u64> {
        let from_applied = Walk {
            end: self.applied,
            chain: self.applied_chain,
        };
        let limit = self.applied + self.scan_bound() as u64;
        let mut walk = self
            .walk
            .filter(|w| w.end >= self.applied && w.end <= limit)
            .unwrap_or(from_applied);
        let kept_end = walk.end;
        let mut stopped = None;
        // A kept walk may restart once: at most twice the scan bound.
        let mut may_restart = walk != from_applied;
        while walk.end < limit {
            match self.open_new(fabric, walk.end) {
                Ok(link) if link.chain_prev != walk.chain => {
                    if may_restart {
                        may_restart = false;
                        walk = from_applied; // Rewritten since it was walked.
                        self.forget_commit_points();
                        continue;
                    }
                    stopped = Some((walk.end, Blocked::Unchained));
                    break;
                }
                Ok(link) => {
                    // A writer's commit point never exceeds the position it wrote; a torn
                    // acceptance record (a rewrite cut short) just carries none.
                    if let Some(commit) = link.commit {
                        self.commit_known = self.commit_known.max(commit.min(walk.end));
                    }
                    self.walked[walk_entry(walk.end)] = link.chain;
                    walk.chain = link.chain;
                    walk.end += 1;
                }
                Err(SlotError::Stale { found }) if found > walk.end => {
                    self.forget_walk();
                    return Err(walk.end + 1);
                }
                Err(SlotError::Torn | SlotError::Malformed | SlotError::Unvouched) => {
                    stopped = Some((walk.end, Blocked::Torn));
                    break;
                }
                // Not written in this lap yet: the end of what the leader sent.
                Err(SlotError::Empty | SlotError::Stale { .. }) => break,
            }
        }
        assert!(walk.end >= self.applied && walk.end <= limit);
        assert!(walk.end - self.applied <= WALK_MAX as u64);
        self.backlog = walk.end == limit;
        // Nothing walked waits for a decision: the record cannot tell more.
        if self.commit_known < walk.end {
            self.read_commit_record(fabric, walk.end, walk.chain);
        }
        self.walk = Some(walk);
        Ok(Walked {
            end: walk.end,
            advanced: walk.end > kept_end,
            stopped,
        })
    }

    /// True when the slot of `position` in the own log holds nothing of this lap, by its
    /// position word alone (at position 0 that word cannot tell).
    #[inline(always)]
    fn unwritten<F: Fabric>(&self, fabric: &F, position: u64) -> bool {
        unwritten_at(fabric, self.layout.slot(position), position)
    }

    /// True when a replay now would change nothing and find nothing: no walk or stop to
    /// remember, no commit point above what is applied, no lap notice due, and nothing at the
    /// next position. An idle follower's poll asks this instead of replaying.
    #[inline(always)]
    pub(crate) fn quiet<F: Fabric>(&self, now: u64, fabric: &F) -> bool {
        self.walk.is_none()
            && self.blocked.is_none()
            && self.commit_known <= self.applied
            && now < self.lap_check_at
            && self.unwritten(fabric, self.applied)
    }

    /// Opens the header of the slot of `position` in the own log if anything of this lap is
    /// there: the position word tells a poll with nothing new at once. A later lap is believed
    /// only of a header its acceptance record vouches for. One of the next two positions to
    /// apply is loaded whole and its payload checked, here rather than at its apply (staged);
    /// one staged already has its header read again, as any walk does.
    fn open_new<F: Fabric>(&mut self, fabric: &mut F, position: u64) -> Result<Link, SlotError> {
        let offset = self.layout.slot(position);
        if unwritten_at(fabric, offset, position) {
            return Err(SlotError::Empty); // The end of a walk, seen in one word.
        }
        let capacity = self.config.slot_payload_bytes();
        let staged = &mut self.staged[(position % 2) as usize];
        // A follower behind its walk takes the header only (the apply loads the slot anyway),
        // and so does a walk over a slot staged before, which it checks is still that one.
        let behind = position > self.applied + 1;
        let held = match behind {
            true => None,
            false => staged.held.filter(|(h, _)| h.position == position),
        };
        if behind || held.is_some() {
            let mut head = [0u8; SLOT_HEADER_BYTES as usize];
            fabric.load(offset, &mut head);
            let link = open_head(&head, capacity, position).map(|o| Link::of(&o));
            if held.is_some_and(|(_, chain)| link.map(|l| l.chain) != Ok(chain)) {
                staged.held = None; // Rewritten since: its apply loads it again.
            }
            return link;
        }
        let size = self.config.slot_size as usize;
        staged.held = None;
        fabric.load(offset, &mut staged.bytes[..size]);
        let opened = open_head(&staged.bytes, capacity, position)?;
        if slot::check_body(&staged.bytes[..size], &opened).is_ok() {
            staged.held = Some((opened.header, opened.chain));
        }
        Ok(Link::of(&opened))
    }

    /// Counts a replay's stop at a slot it could not take, once per slot and reason.
    fn note_stop(&mut self, stopped: Option<(u64, Blocked)>) {
        if let Some((_, why)) = stopped.filter(|&now| Some(now) != self.blocked) {
            let counter = match why {
                Blocked::Torn => &mut self.refusals.torn,
                Blocked::Unchained => &mut self.refusals.unchained,
            };
            *counter = counter.wrapping_add(1);
        }
        self.blocked = stopped;
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
    ///
    /// Only a record whose commit point is `scanned_end` can tell anything, so its commit word
    /// is looked at first: a streaming follower learns commit points from the slots and, while
    /// its leader is busy, finds the record behind them (it is written only when the leader is
    /// idle), which one word tells without loading and checking the whole record.
    fn read_commit_record<F: Fabric>(&mut self, fabric: &mut F, scanned_end: u64, chain: u64) {
        let offset = self.layout.commit_record();
        if fabric.load_word(offset) != scanned_end {
            return;
        }
        let mut bytes = [0u8; COMMIT_RECORD_BYTES as usize];
        fabric.load(offset, &mut bytes);
        if let Some((commit, commit_chain)) = decode_commit(offset, &bytes) {
            if commit == scanned_end && commit_chain == chain {
                self.commit_known = self.commit_known.max(commit);
            }
        }
    }

    /// Applies the slot in `source` (already opened and chained) at `applied`.
    pub(crate) fn apply_slot<S: StateMachine>(
        &mut self,
        header: SlotHeader,
        chain: u64,
        source: Source,
        sm: &mut S,
    ) {
        assert_eq!(header.position, self.applied);
        assert_eq!(header.chain_prev, self.applied_chain);
        let capacity = self.config.slot_payload_bytes();
        let frag_len = header.frag_len(capacity) as usize;
        let bytes = match source {
            Source::Scratch => &self.slot,
            Source::Staged(parity) => &self.staged[parity].bytes,
        };
        let fragment = &bytes[SLOT_HEADER_BYTES as usize..][..frag_len];
        let single = header.frag_count == 1;
        let complete = if single {
            self.assembly.active = false;
            true
        } else {
            let fits = header.entry_len as usize <= ENTRY
                && header.frag_count <= self.config.entry_slots_max;
            self.assembly
                .add(header, fits, self.applied_chain, fragment, &mut self.entry)
        };
        if complete {
            let command = if single {
                fragment
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

    /// Applies at `applied` the one-slot command `sequence` that this replica proposed as
    /// leader, taking its bytes from the queue it proposed them from: the own log holds the
    /// same bytes (the leader wrote them there, and nobody else writes there while it leads), so
    /// they are not loaded and parsed again. `chain` is the chain its slot yields. False, having
    /// applied nothing, when the command is no longer waiting (decided at an earlier position
    /// as another tenure's value): its slot is then applied from the log.
    #[inline]
    pub(crate) fn apply_proposed<S: StateMachine>(
        &mut self,
        sequence: u64,
        chain: u64,
        sm: &mut S,
    ) -> bool {
        let Some(index) = self.queue.undecided(sequence) else {
            return false;
        };
        let position = self.applied;
        self.assembly.active = false; // As any one-slot command does (`apply_slot`).
        let command = self.queue.payload_at(index);
        let len = sm.apply(position, command, &mut self.response);
        sm.committed(sequence, position, &self.response[..len.min(ENTRY)]);
        self.queue.decide_at(index);
        self.applied += 1;
        self.applied_chain = chain;
        true
    }
}

/// What the walk takes of a slot it opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Link {
    /// The chain it links to.
    chain_prev: u64,
    /// Its own chain.
    chain: u64,
    /// The commit point its acceptance record carries, unless that is torn.
    commit: Option<u64>,
}

impl Link {
    #[inline(always)]
    fn of(opened: &Opened) -> Link {
        Link {
            chain_prev: opened.header.chain_prev,
            chain: opened.chain,
            commit: opened.accepted.map(|a| a.commit),
        }
    }
}

/// Opens the header in `head` (at least [`SLOT_HEADER_BYTES`]) of a slot of `capacity` payload
/// bytes that should hold `position`, if anything of this lap is there.
#[inline(always)]
fn open_head(head: &[u8], capacity: u32, position: u64) -> Result<Opened, SlotError> {
    if slot::probe(head, position) == Err(SlotError::Empty) {
        return Err(SlotError::Empty);
    }
    slot::open_header(head, capacity, position)
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

#[cfg(test)]
mod tests {
    use super::Blocked;

    #[test]
    fn blocked_reasons_round_trip_their_code() {
        for why in [Blocked::Torn, Blocked::Unchained] {
            assert_ne!(why.code(), 0, "0 means not blocked");
            assert_eq!(Blocked::from_code(why.code()), Some(why));
        }
        assert_eq!(Blocked::from_code(0), None);
        assert_eq!(Blocked::from_code(3), None);
    }
}
