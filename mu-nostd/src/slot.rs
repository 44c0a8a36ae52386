//! The slot format of the circular log. Every log position is one slot and one Paxos instance;
//! a command longer than one slot's payload spans consecutive positions as fragments.
//!
//! ```text
//! 0  body       u64  digest of this fragment's payload bytes (their checksum)
//! 8  position   u64  the log position, so a slot of an earlier lap never passes for this one
//! 16 chain_prev u64  chain digest of the decided prefix up to position - 1
//! 24 origin     u64  proposer id << 56 | proposer's request sequence (identifies the command)
//! 32 entry_len  u32  length of the whole command in bytes
//! 36 frag_index u16, frag_count u16
//! 40 ballot     u64  } the acceptance record: the ballot this copy was written under and the
//! 48 commit     u64  } writer's first undecided position (piggybacked commit), with a check
//! 56 check      u64  } that binds both to the value's chain
//! 64 payload    this fragment's bytes, then zero padding
//! ```
//!
//! The chain digest of position `p` covers `chain_prev`, the position, the origin, the fragment
//! fields and the body digest, so every byte of the *value* (the payload through its digest),
//! and nothing of the acceptance record. It is computed from the header, never stored. Every
//! copy of a decided value therefore has the same value bytes, whoever wrote it and under
//! whichever ballot, and a follower applies a slot only when its `chain_prev` equals the chain
//! of what it has applied so far, and only below a commit point carried by a slot that chains
//! back to it (see `replication`).
//!
//! # Each payload byte is hashed once per replica
//!
//! The leader hashes a payload once, when it seals it ([`body_digest`]); a follower hashes it
//! once, when its walk loads the slot whole or else when it applies it ([`check_body`],
//! [`reopen`]). Everything else reads headers ([`open_header`]): the
//! chain is a hash of five header words. A header torn between two writers yields a chain no
//! writer computed, so no acceptance record, adoption record or decided mark verifies against
//! it and no slot's `chain_prev` names it: it counts as nothing accepted and links to nothing,
//! as a torn value does. Only a header its own acceptance record vouches for tells another lap
//! ([`SlotError::Stale`]); a torn one could name any position. Whoever takes a slot on its own,
//! with no chain to link it to (a leader shipping or marking its own decided copies, a catch-up
//! applying what it read), takes it only when one of its records verifies against that chain
//! ([`SlotError::Unvouched`] otherwise): then the header is one writer's.
//!
//! # Why the ballot is not in the value's checksum (torn rewrites)
//!
//! A leader rewrites values a member may already hold: the value its prepare adopts, and the
//! decided positions a member has not applied. A write can be cut anywhere (a revoke, the
//! writer's crash), and its bytes land in any order. Were the ballot inside the checksum, a cut
//! rewrite of the same value under a new ballot would leave the member's only copy torn, and a
//! later prepare would count it as "nothing accepted" and could decide another value over a
//! decided one (the gap the original Mu leaves open). Here:
//!
//! - A rewrite of a decided value writes byte-identical value bytes (the chain of a decided
//!   prefix is the same everywhere), so no cut can tear the value: a torn value is only ever a
//!   value that was not decided.
//! - What a copy was accepted under lives in three checked records, each bound to the value's
//!   chain: the *acceptance record* inside the slot (written with the slot), the *adoption
//!   record* ([`encode_adoption`]) and the *decided mark* ([`encode_decided`]) in the log's
//!   rewrite area. A write never overwrites the record that holds a copy's highest ballot
//!   while it is the only one: a decided position is rewritten by landing its decided mark
//!   first (one fixed content, so rewriting it cannot tear it), and only then its slot; an
//!   adopted value is rewritten, on a member whose copy the prepare read, into whichever of the
//!   acceptance and adoption records is not the higher one (see `tenure`). Fresh values of the
//!   fast path go in one write: their slot holds nothing decided (the prepare found nothing).
//!
//! A copy's *accepted ballot* is [`DECIDED`] when its decided mark is intact, else the higher of
//! its intact acceptance and adoption records; a torn value, or a value with none of the three,
//! counts as nothing accepted. The reported ballot of a copy of a decided value never goes down.
//!
//! # Invariants
//! - A slot opens only if its payload matches its body digest and its header names the position
//!   asked for; its acceptance is reported only if its check matches the chain its header
//!   yields. A chain some record or link verifies is one writer's whole value.
//! - `1 <= frag_count`, `frag_index < frag_count`, and `entry_len` is consistent with the fragment
//!   count and the payload capacity; anything else is `Malformed`, never a panic.
//! - An adoption record or decided mark decodes only against the chain of the value it was
//!   written for; a decided mark is written only for a value its writer knows decided.

use crate::hash::Hasher;
use crate::layout::RECORD_BYTES;

/// Bytes of a slot header: the value's header and the acceptance record.
pub const SLOT_HEADER_BYTES: u32 = 64;
/// Where the acceptance record starts inside a slot.
pub const ACCEPTANCE_AT: u32 = 40;
/// Where the position word is inside a slot.
pub const POSITION_AT: u32 = 8;
/// Where the `chain_prev` word is inside a slot.
pub const CHAIN_PREV_AT: u32 = 16;
/// Bytes of the acceptance record.
pub const ACCEPTANCE_BYTES: u32 = SLOT_HEADER_BYTES - ACCEPTANCE_AT;
/// Chain digest before position 0.
pub const CHAIN_GENESIS: u64 = 0x4D75_4745_4E45_5349; // "MuGENESI"

const CHAIN_DOMAIN: u64 = 0x0043_4841_494E; // "CHAIN"
const ACCEPT_DOMAIN: u64 = 0x4143_4345_5054; // "ACCEPT"
const ADOPTION_DOMAIN: u64 = 0x4144_4F50_5421; // "ADOPT!"
const DECIDED_DOMAIN: u64 = 0x4445_4349_4445; // "DECIDE"

/// The accepted ballot of a copy whose decided mark is intact: above every real ballot.
pub const DECIDED: u64 = u64::MAX;

/// The decoded value header of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SlotHeader {
    /// Log position.
    pub position: u64,
    /// Chain digest through `position - 1`.
    pub chain_prev: u64,
    /// Who proposed the command and its request sequence there.
    pub origin: u64,
    /// Bytes of the whole command.
    pub entry_len: u32,
    /// Which fragment this is.
    pub frag_index: u16,
    /// How many fragments the command has.
    pub frag_count: u16,
}

/// A slot's acceptance record: under which ballot its writer wrote this copy, and the writer's
/// first undecided position then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Acceptance {
    /// Ballot of the writing leader.
    pub ballot: u64,
    /// Its first undecided position when it wrote this copy.
    pub commit: u64,
}

/// A slot that opened (or a header, [`open_header`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Opened {
    /// Its value header.
    pub header: SlotHeader,
    /// The digest of its payload, as stored.
    pub body: u64,
    /// The chain digest through its position, as its header yields it.
    pub chain: u64,
    /// Its acceptance record, unless that is torn (a rewrite cut short).
    pub accepted: Option<Acceptance>,
}

/// Why a slot does not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SlotError {
    /// Never written (all-zero value header).
    Empty,
    /// Chain mismatch: torn, half-read or garbage.
    Torn,
    /// Fragment fields that cannot be right.
    Malformed,
    /// A valid slot for another position (an earlier or later lap).
    Stale {
        /// The position the slot holds.
        found: u64,
    },
    /// Its value opens, but no record vouches for its header (see `Log::open_vouched`): a
    /// header torn between two writers, or a copy whose three records are all torn.
    Unvouched,
}

fn word(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Request sequences are 56 bits wide (the proposer id takes the top byte of the origin).
pub const SEQUENCE_LIMIT: u64 = 1 << 56;
/// Sequences an incarnation of a replica process may use before it reaches the next one's range.
pub const SEQUENCES_PER_INCARNATION: u64 = 1 << 32;

/// The first request sequence of `incarnation` (see
/// [`crate::ReplicationPlane::begin_incarnation`]); incarnations wrap after 2^24.
pub const fn incarnation_base(incarnation: u32) -> u64 {
    let slot = (incarnation as u64) % (SEQUENCE_LIMIT / SEQUENCES_PER_INCARNATION);
    slot * SEQUENCES_PER_INCARNATION + 1
}

/// The origin word for `proposer`'s request `sequence`.
pub const fn origin(proposer: u8, sequence: u64) -> u64 {
    ((proposer as u64) << 56) | (sequence & ((1 << 56) - 1))
}

impl SlotHeader {
    /// Bytes of payload this fragment carries, given the slot's payload capacity.
    #[inline]
    pub fn frag_len(&self, capacity: u32) -> u32 {
        let before = self.frag_index as u64 * capacity as u64;
        (self.entry_len as u64)
            .saturating_sub(before)
            .min(capacity as u64) as u32
    }

    fn well_formed(&self, capacity: u32) -> bool {
        let count = self.frag_count as u64;
        let len = self.entry_len as u64;
        self.frag_count >= 1
            && self.frag_index < self.frag_count
            && len <= count * capacity as u64
            && len > (count - 1) * capacity as u64
    }

    /// Chain digest through this slot's position, for the payload whose digest is `body`.
    pub fn link(&self, body: u64) -> u64 {
        let frag = ((self.entry_len as u64) << 32)
            | ((self.frag_index as u64) << 16)
            | self.frag_count as u64;
        Hasher::new(CHAIN_DOMAIN)
            .word(self.chain_prev)
            .word(self.position)
            .word(self.origin)
            .word(frag)
            .word(body)
            .finish()
    }

    /// Chain digest through this slot's position, holding `payload`.
    pub fn chain(&self, payload: &[u8]) -> u64 {
        self.link(body_digest(payload))
    }

    /// Writes the whole slot header for `payload`: the value's header and the acceptance
    /// record. Returns the chain digest.
    #[inline]
    pub fn seal(&self, payload: &[u8], acceptance: Acceptance, out: &mut [u8]) -> u64 {
        self.seal_body(body_digest(payload), acceptance, out)
    }

    /// [`SlotHeader::seal`] for the payload whose digest is `body` (a value read and checked
    /// before, sealed again under another `chain_prev` or acceptance).
    #[inline]
    pub fn seal_body(&self, body: u64, acceptance: Acceptance, out: &mut [u8]) -> u64 {
        assert!(out.len() >= SLOT_HEADER_BYTES as usize);
        assert!(self.frag_index < self.frag_count);
        let chain = self.link(body);
        out[0..8].copy_from_slice(&body.to_le_bytes());
        out[8..16].copy_from_slice(&self.position.to_le_bytes());
        out[16..24].copy_from_slice(&self.chain_prev.to_le_bytes());
        out[24..32].copy_from_slice(&self.origin.to_le_bytes());
        out[32..36].copy_from_slice(&self.entry_len.to_le_bytes());
        out[36..38].copy_from_slice(&self.frag_index.to_le_bytes());
        out[38..40].copy_from_slice(&self.frag_count.to_le_bytes());
        seal_acceptance(chain, acceptance, &mut out[ACCEPTANCE_AT as usize..]);
        debug_assert_eq!(SlotHeader::parse(out), *self);
        chain
    }

    /// Decodes the value header's fields without validating anything.
    fn parse(slot: &[u8]) -> SlotHeader {
        // The fragment fields are one little-endian word: entry_len, frag_index, frag_count.
        let frag = word(slot, 32);
        SlotHeader {
            position: word(slot, POSITION_AT as usize),
            chain_prev: word(slot, CHAIN_PREV_AT as usize),
            origin: word(slot, 24),
            entry_len: frag as u32,
            frag_index: (frag >> 32) as u16,
            frag_count: (frag >> 48) as u16,
        }
    }
}

fn acceptance_check(chain: u64, acceptance: Acceptance) -> u64 {
    Hasher::new(ACCEPT_DOMAIN)
        .word(chain)
        .word(acceptance.ballot)
        .word(acceptance.commit)
        .finish()
}

/// Writes the acceptance record (`ACCEPTANCE_BYTES`, at the start of `out`) of the value whose
/// chain is `chain`.
pub fn seal_acceptance(chain: u64, acceptance: Acceptance, out: &mut [u8]) {
    assert!(out.len() >= ACCEPTANCE_BYTES as usize);
    out[0..8].copy_from_slice(&acceptance.ballot.to_le_bytes());
    out[8..16].copy_from_slice(&acceptance.commit.to_le_bytes());
    out[16..24].copy_from_slice(&acceptance_check(chain, acceptance).to_le_bytes());
    debug_assert_eq!(open_acceptance(chain, out), Some(acceptance));
}

/// Decodes an acceptance record (at the start of `bytes`) against the chain of the value it
/// should belong to.
fn open_acceptance(chain: u64, bytes: &[u8]) -> Option<Acceptance> {
    let acceptance = Acceptance {
        ballot: word(bytes, 0),
        commit: word(bytes, 8),
    };
    (word(bytes, 16) == acceptance_check(chain, acceptance)).then_some(acceptance)
}

fn record_check(domain: u64, chain: u64, value: u64) -> u64 {
    Hasher::new(domain).word(chain).word(value).finish()
}

fn encode_bound(domain: u64, chain: u64, value: u64) -> [u8; RECORD_BYTES as usize] {
    let mut bytes = [0u8; RECORD_BYTES as usize];
    bytes[0..8].copy_from_slice(&value.to_le_bytes());
    bytes[8..16].copy_from_slice(&record_check(domain, chain, value).to_le_bytes());
    bytes
}

fn decode_bound(domain: u64, chain: u64, bytes: &[u8]) -> Option<u64> {
    if bytes.len() < RECORD_BYTES as usize {
        return None;
    }
    let value = word(bytes, 0);
    (word(bytes, 8) == record_check(domain, chain, value)).then_some(value)
}

/// The adoption record of the value whose chain is `chain`, adopted under `ballot`.
pub fn encode_adoption(chain: u64, ballot: u64) -> [u8; RECORD_BYTES as usize] {
    let bytes = encode_bound(ADOPTION_DOMAIN, chain, ballot);
    debug_assert_eq!(decode_adoption(chain, &bytes), Some(ballot));
    bytes
}

/// The ballot of an adoption record, if it is intact and was written for the value whose chain
/// is `chain` (a record of another value, an earlier lap or a torn write decodes to `None`).
pub fn decode_adoption(chain: u64, bytes: &[u8]) -> Option<u64> {
    decode_bound(ADOPTION_DOMAIN, chain, bytes)
}

/// The decided mark of the value whose chain is `chain`: the same bytes from every writer.
pub fn encode_decided(chain: u64) -> [u8; RECORD_BYTES as usize] {
    let bytes = encode_bound(DECIDED_DOMAIN, chain, DECIDED);
    debug_assert!(is_decided(chain, &bytes));
    bytes
}

/// True when `bytes` hold an intact decided mark of the value whose chain is `chain`.
pub fn is_decided(chain: u64, bytes: &[u8]) -> bool {
    decode_bound(DECIDED_DOMAIN, chain, bytes) == Some(DECIDED)
}

/// Bytes of a slot's value header (before the acceptance record): what [`probe`] reads.
pub const VALUE_HEADER_BYTES: u32 = ACCEPTANCE_AT;

/// What the value header of a slot that should hold `position` says before it is opened:
/// [`SlotError::Empty`] when nothing of this lap is there (never written, or a slot of an
/// earlier lap), [`SlotError::Stale`] for a later lap, `Ok` when it names `position` (only
/// [`open`] can tell whether it is whole). `head` holds at least [`VALUE_HEADER_BYTES`].
pub fn probe(head: &[u8], position: u64) -> Result<(), SlotError> {
    assert!(head.len() >= VALUE_HEADER_BYTES as usize);
    // The position word first: it tells a poll with nothing new at once (an empty header
    // names position 0, so only there are the bytes checked).
    let found = word(head, POSITION_AT as usize);
    if found < position
        || (found == 0 && head[..VALUE_HEADER_BYTES as usize].iter().all(|&b| b == 0))
    {
        return Err(SlotError::Empty);
    }
    if found != position {
        return Err(SlotError::Stale { found });
    }
    Ok(())
}

/// The digest of a fragment's payload bytes: its checksum, and through it part of the chain.
///
/// XXH3-64: the one pass over every payload byte on each replica, so the hash with the widest
/// lanes the target has, chosen at build time (SSE2, AVX2 or AVX-512 on x86-64, NEON on
/// aarch64, scalar on Cortex-M and RISC-V; the digest is the same everywhere). A 32-bit CRC32C
/// would be cheaper with hardware help, but a follower reads slots as they land, and a torn
/// read that passed one check in 2^32 would apply a value nobody wrote.
pub fn body_digest(payload: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(payload)
}

/// Opens a slot of the own log that this replica wrote itself while it leads (nobody else
/// writes there meanwhile): its header and chain, without hashing its value again or reading
/// its acceptance record. `None` when the header is not the one for `position`; in debug
/// builds the value is checked all the same.
pub fn open_own(slot: &[u8], position: u64) -> Option<(SlotHeader, u64)> {
    let capacity = slot.len() as u32 - SLOT_HEADER_BYTES;
    let header = SlotHeader::parse(slot);
    if header.position != position || !header.well_formed(capacity) {
        return None;
    }
    let chain = header.link(word(slot, 0));
    debug_assert_eq!(open(slot, position).map(|o| o.chain), Ok(chain));
    Some((header, chain))
}

/// Opens the header (its first [`SLOT_HEADER_BYTES`] in `head`) of a slot of `capacity`
/// payload bytes that should hold `position`, without reading its payload: the chain its
/// header yields and its acceptance. Whether the payload is whole is left to [`check_body`].
pub fn open_header(head: &[u8], capacity: u32, position: u64) -> Result<Opened, SlotError> {
    assert!(head.len() >= SLOT_HEADER_BYTES as usize);
    if head[..VALUE_HEADER_BYTES as usize].iter().all(|&b| b == 0) {
        return Err(SlotError::Empty);
    }
    let header = SlotHeader::parse(head);
    if !header.well_formed(capacity) {
        return Err(SlotError::Malformed);
    }
    let body = word(head, 0);
    let chain = header.link(body);
    let accepted = open_acceptance(chain, &head[ACCEPTANCE_AT as usize..]);
    if header.position != position {
        return Err(match accepted {
            Some(_) => SlotError::Stale {
                found: header.position,
            },
            None => SlotError::Torn,
        });
    }
    Ok(Opened {
        header,
        body,
        chain,
        accepted,
    })
}

/// Checks that the payload of `slot` (the whole slot, its header opened as `opened`) is the one
/// its header's body digest names: [`SlotError::Torn`] if not.
#[inline]
pub fn check_body(slot: &[u8], opened: &Opened) -> Result<(), SlotError> {
    if body_matches(slot, &opened.header, opened.body) {
        Ok(())
    } else {
        Err(SlotError::Torn)
    }
}

/// True when the payload of the whole `slot`, as long as `header` says, hashes to `body`.
#[inline]
fn body_matches(slot: &[u8], header: &SlotHeader, body: u64) -> bool {
    let capacity = slot.len() as u32 - SLOT_HEADER_BYTES;
    let payload = &slot[SLOT_HEADER_BYTES as usize..][..header.frag_len(capacity) as usize];
    // Planted defect: take the slot's digest on trust instead of recomputing it, so a torn
    // payload under an intact header passes.
    cfg!(feature = "bug-no-checksum") || body_digest(payload) == body
}

/// What a slot holds now, of a value whose chain is known (see [`reopen`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reopened {
    /// That value, whole.
    Same(SlotHeader),
    /// That value's header over a torn payload: a write is landing, or was cut.
    Torn,
    /// Anything else: another value (the slot was rewritten), a later lap, a torn header.
    Other,
}

/// Whether the whole `slot` still holds the value whose chain is `chain` (which names its
/// position): its header must yield that chain, and its payload match the body digest. Its
/// acceptance record is not read: a follower applies a value the walk linked below a commit
/// point, whatever ballot this copy carries.
pub fn reopen(slot: &[u8], chain: u64) -> Reopened {
    assert!(slot.len() > SLOT_HEADER_BYTES as usize);
    let capacity = slot.len() as u32 - SLOT_HEADER_BYTES;
    let header = SlotHeader::parse(slot);
    let body = word(slot, 0);
    if !header.well_formed(capacity) || header.link(body) != chain {
        Reopened::Other
    } else if body_matches(slot, &header, body) {
        Reopened::Same(header)
    } else {
        Reopened::Torn
    }
}

/// Validates a whole slot (`slot.len()` is the slot size) that should hold `position`: its
/// header, and its payload against the header's body digest.
pub fn open(slot: &[u8], position: u64) -> Result<Opened, SlotError> {
    assert!(slot.len() > SLOT_HEADER_BYTES as usize);
    let capacity = slot.len() as u32 - SLOT_HEADER_BYTES;
    let opened = open_header(slot, capacity, position)?;
    check_body(slot, &opened)?;
    Ok(opened)
}

/// The ballot a copy of a value was accepted under, given the bytes of its position's adoption
/// record and decided mark: [`DECIDED`] if the mark is intact, else the higher of its intact
/// acceptance and adoption records. `None`: this copy counts as nothing accepted.
pub fn accepted_ballot(opened: &Opened, adoption: &[u8], decided: &[u8]) -> Option<u64> {
    if is_decided(opened.chain, decided) {
        return Some(DECIDED);
    }
    let in_slot = opened.accepted.map(|a| a.ballot);
    match (in_slot, decode_adoption(opened.chain, adoption)) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCEPTED: Acceptance = Acceptance {
        ballot: 9,
        commit: 77,
    };

    fn sealed(position: u64, payload: &[u8], acceptance: Acceptance) -> ([u8; 256], SlotHeader) {
        let header = SlotHeader {
            position,
            chain_prev: CHAIN_GENESIS,
            origin: origin(1, 5),
            entry_len: payload.len() as u32,
            frag_index: 0,
            frag_count: 1,
        };
        let mut slot = [0u8; 256];
        header.seal(payload, acceptance, &mut slot);
        slot[SLOT_HEADER_BYTES as usize..][..payload.len()].copy_from_slice(payload);
        (slot, header)
    }

    #[test]
    fn round_trip() {
        let (slot, header) = sealed(77, b"set x 1", ACCEPTED);
        let opened = open(&slot[..128], 77).unwrap();
        assert_eq!(opened.header, header);
        assert_eq!(opened.chain, header.chain(b"set x 1"));
        assert_eq!(opened.accepted, Some(ACCEPTED));
    }

    #[test]
    fn rejects_empty_torn_stale_and_malformed() {
        let (slot, _) = sealed(77, b"set x 1", ACCEPTED);
        assert_eq!(open(&[0u8; 128], 77), Err(SlotError::Empty));
        assert_eq!(
            open(&slot[..128], 77 + 64),
            Err(SlotError::Stale { found: 77 })
        );
        // The body digest, the position and the payload are checked as such.
        for byte in (0..16).chain(64..64 + 7) {
            let mut torn = slot;
            torn[byte] ^= 0x01;
            assert_eq!(
                open(&torn[..128], 77),
                Err(SlotError::Torn),
                "flip at {byte}"
            );
        }
        // The other header words yield another chain: nothing vouches for it.
        let chain = open(&slot[..128], 77).unwrap().chain;
        for byte in 16..ACCEPTANCE_AT as usize {
            let mut torn = slot;
            torn[byte] ^= 0x01;
            if let Ok(opened) = open(&torn[..128], 77) {
                assert_ne!(opened.chain, chain, "flip at {byte} kept the chain");
                assert_eq!(opened.accepted, None, "flip at {byte} kept the acceptance");
            }
        }
        let mut malformed = slot;
        malformed[38] = 0; // frag_count = 0
        assert_eq!(open(&malformed[..128], 77), Err(SlotError::Malformed));
        let mut garbage = [0xA5u8; 128];
        garbage[0] = 1;
        assert!(open(&garbage, 77).is_err());
    }

    /// A probe tells nothing new, a later lap and this position apart from the position word
    /// (and an empty header at position 0); it cannot see a damaged value, which `open`
    /// refuses.
    #[test]
    fn a_probe_reads_the_position_and_leaves_the_value_to_open() {
        let (slot, header) = sealed(77, b"set x 1", ACCEPTED);
        assert_eq!(probe(&slot[..40], 77), Ok(()));
        assert_eq!(probe(&[0u8; 40], 77), Err(SlotError::Empty));
        assert_eq!(probe(&[0u8; 40], 0), Err(SlotError::Empty));
        assert_eq!(probe(&slot[..40], 78), Err(SlotError::Empty));
        assert_eq!(probe(&slot[..40], 76), Err(SlotError::Stale { found: 77 }));
        let mut damaged = slot;
        damaged[SLOT_HEADER_BYTES as usize] ^= 1;
        assert_eq!(probe(&damaged[..40], 77), Ok(()));
        let head = open_header(&damaged[..64], 64, 77).expect("the header is whole");
        assert_eq!(check_body(&damaged[..128], &head), Err(SlotError::Torn));
        assert_eq!(reopen(&damaged[..128], head.chain), Reopened::Torn);
        assert_eq!(reopen(&slot[..128], head.chain), Reopened::Same(header));
        assert_eq!(reopen(&slot[..128], head.chain ^ 1), Reopened::Other);
        assert_eq!(open(&damaged[..128], 77), Err(SlotError::Torn));
        let chain = header.chain(b"set x 1");
        assert_eq!(open_own(&slot[..128], 77), Some((header, chain)));
        assert_eq!(open_own(&slot[..128], 78), None);
    }

    /// Only a header its own acceptance record vouches for names another lap: a header with a
    /// torn position word is torn, not stale.
    #[test]
    fn only_a_vouched_header_tells_another_lap() {
        let (slot, _) = sealed(77, b"set x 1", ACCEPTED);
        assert_eq!(
            open_header(&slot[..64], 64, 13),
            Err(SlotError::Stale { found: 77 })
        );
        let mut unvouched = slot;
        unvouched[ACCEPTANCE_AT as usize] ^= 1;
        assert_eq!(open_header(&unvouched[..64], 64, 13), Err(SlotError::Torn));
        let mut torn_position = slot;
        torn_position[12] ^= 1;
        assert_eq!(
            open_header(&torn_position[..64], 64, 77),
            Err(SlotError::Torn)
        );
    }

    /// A torn acceptance record loses the ballot of that copy, never its value.
    #[test]
    fn a_torn_acceptance_leaves_the_value() {
        let (slot, _) = sealed(77, b"set x 1", ACCEPTED);
        for byte in ACCEPTANCE_AT as usize..SLOT_HEADER_BYTES as usize {
            let mut torn = slot;
            torn[byte] ^= 0x40;
            let opened = open(&torn[..128], 77).unwrap();
            assert_eq!(opened.accepted, None, "flip at {byte} kept the acceptance");
        }
    }

    /// The same value rewritten under another ballot differs only in the acceptance record: any
    /// mixture of the two copies opens as the value.
    #[test]
    fn a_rewrite_of_the_same_value_cannot_tear_it() {
        let (old, _) = sealed(5, b"value", ACCEPTED);
        let (new, _) = sealed(
            5,
            b"value",
            Acceptance {
                ballot: 17,
                commit: 3,
            },
        );
        assert_eq!(old[..ACCEPTANCE_AT as usize], new[..ACCEPTANCE_AT as usize]);
        assert_eq!(old[64..], new[64..]);
        for cut in 0..128 {
            let mut mixed = old;
            mixed[..cut].copy_from_slice(&new[..cut]);
            let opened = open(&mixed[..128], 5).expect("the value survives any cut");
            assert!(matches!(
                opened.accepted.map(|a| a.ballot),
                None | Some(9) | Some(17)
            ));
        }
    }

    #[test]
    fn records_bind_to_their_value() {
        let (slot, header) = sealed(5, b"value", ACCEPTED);
        let opened = open(&slot[..128], 5).unwrap();
        let none = [0u8; 16];
        let adoption = encode_adoption(opened.chain, 25);
        let decided = encode_decided(opened.chain);
        assert_eq!(decode_adoption(opened.chain, &adoption), Some(25));
        assert_eq!(accepted_ballot(&opened, &none, &none), Some(9));
        assert_eq!(accepted_ballot(&opened, &adoption, &none), Some(25));
        assert_eq!(accepted_ballot(&opened, &adoption, &decided), Some(DECIDED));
        // Neither record passes for the other, nor for another value.
        assert_eq!(accepted_ballot(&opened, &decided, &adoption), Some(9));
        let other = SlotHeader {
            origin: origin(2, 1),
            ..header
        }
        .chain(b"value");
        assert_eq!(decode_adoption(other, &adoption), None);
        assert!(!is_decided(other, &decided));
        let mut torn = adoption;
        torn[3] ^= 1;
        assert_eq!(accepted_ballot(&opened, &torn, &none), Some(9));
        let lone = Opened {
            accepted: None,
            ..opened
        };
        assert_eq!(accepted_ballot(&lone, &torn, &none), None);
        assert_eq!(accepted_ballot(&lone, &adoption, &none), Some(25));
        assert_eq!(accepted_ballot(&lone, &none, &decided), Some(DECIDED));
    }

    #[test]
    fn chain_ignores_the_acceptance() {
        let (_, a) = sealed(3, b"v", ACCEPTED);
        assert_ne!(a.chain(b"v"), a.chain(b"w"));
        let (one, _) = sealed(3, b"v", ACCEPTED);
        let (two, _) = sealed(
            3,
            b"v",
            Acceptance {
                ballot: 100,
                commit: 0,
            },
        );
        assert_eq!(word(&one, 0), word(&two, 0));
    }
}
