//! The slot format of the circular log. Every log position is one slot and one Paxos instance;
//! a command longer than one slot's payload spans consecutive positions as fragments.
//!
//! ```text
//! 0  checksum   u64  hash of (chain, ballot, commit): detects torn and half-read slots
//! 8  position   u64  the log position, so a slot of an earlier lap never passes for this one
//! 16 ballot     u64  proposal number under which this value was accepted
//! 24 commit     u64  the writer's first undecided position (piggybacked commit)
//! 32 chain_prev u64  chain digest of the decided prefix up to position - 1
//! 40 origin     u64  proposer id << 56 | proposer's request sequence (identifies the command)
//! 48 entry_len  u32  length of the whole command in bytes
//! 52 frag_index u16, frag_count u16
//! 56 payload    this fragment's bytes, then zero padding
//! ```
//!
//! The chain digest of position `p` covers `chain_prev`, the position, the origin, the fragment
//! fields and the payload, but not the ballot or the commit: two copies of the same decided
//! value written by different leaders have the same chain. A follower applies a slot only when
//! its `chain_prev` equals the chain of what it has applied so far, and only below a commit point
//! carried by a slot that chains back to it (see `follower`).
//!
//! # Invariants
//! - A slot opens only if its checksum matches (so all fields are as one writer wrote them) and
//!   its position is the one asked for.
//! - `1 <= frag_count`, `frag_index < frag_count`, and `entry_len` is consistent with the fragment
//!   count and the payload capacity; anything else is `Malformed`, never a panic.

use crate::hash::Hasher;

/// Bytes of a slot header.
pub const SLOT_HEADER_BYTES: u32 = 56;
/// Chain digest before position 0.
pub const CHAIN_GENESIS: u64 = 0x4D75_4745_4E45_5349; // "MuGENESI"

const CHAIN_DOMAIN: u64 = 0x0043_4841_494E; // "CHAIN"
const SUM_DOMAIN: u64 = 0x0053_554D; // "SUM"

/// The decoded header of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SlotHeader {
    /// Log position.
    pub position: u64,
    /// Ballot of the accepting leader.
    pub ballot: u64,
    /// Writer's first undecided position when it wrote this slot.
    pub commit: u64,
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

/// Why a slot does not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SlotError {
    /// Never written (all-zero header).
    Empty,
    /// Checksum mismatch: torn, half-read or garbage.
    Torn,
    /// Fragment fields that cannot be right.
    Malformed,
    /// A valid slot for another position (an earlier or later lap).
    Stale {
        /// The position the slot holds.
        found: u64,
    },
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

    /// Chain digest through this slot's position.
    pub fn chain(&self, payload: &[u8]) -> u64 {
        let frag = ((self.entry_len as u64) << 32)
            | ((self.frag_index as u64) << 16)
            | self.frag_count as u64;
        Hasher::new(CHAIN_DOMAIN)
            .word(self.chain_prev)
            .word(self.position)
            .word(self.origin)
            .word(frag)
            .bytes(payload)
            .finish()
    }

    fn checksum(&self, chain: u64) -> u64 {
        Hasher::new(SUM_DOMAIN)
            .word(chain)
            .word(self.ballot)
            .word(self.commit)
            .finish()
    }

    /// Writes the header, checksum included, for `payload`; returns the chain digest.
    pub fn seal(&self, payload: &[u8], out: &mut [u8]) -> u64 {
        assert!(out.len() >= SLOT_HEADER_BYTES as usize);
        assert!(self.frag_index < self.frag_count);
        let chain = self.chain(payload);
        out[0..8].copy_from_slice(&self.checksum(chain).to_le_bytes());
        out[8..16].copy_from_slice(&self.position.to_le_bytes());
        out[16..24].copy_from_slice(&self.ballot.to_le_bytes());
        out[24..32].copy_from_slice(&self.commit.to_le_bytes());
        out[32..40].copy_from_slice(&self.chain_prev.to_le_bytes());
        out[40..48].copy_from_slice(&self.origin.to_le_bytes());
        out[48..52].copy_from_slice(&self.entry_len.to_le_bytes());
        out[52..54].copy_from_slice(&self.frag_index.to_le_bytes());
        out[54..56].copy_from_slice(&self.frag_count.to_le_bytes());
        chain
    }

    /// Decodes the header fields without validating anything.
    fn parse(slot: &[u8]) -> SlotHeader {
        SlotHeader {
            position: word(slot, 8),
            ballot: word(slot, 16),
            commit: word(slot, 24),
            chain_prev: word(slot, 32),
            origin: word(slot, 40),
            entry_len: u32::from_le_bytes([slot[48], slot[49], slot[50], slot[51]]),
            frag_index: u16::from_le_bytes([slot[52], slot[53]]),
            frag_count: u16::from_le_bytes([slot[54], slot[55]]),
        }
    }
}

/// Validates a whole slot (`slot.len()` is the slot size) that should hold `position`; returns
/// its header and its chain digest.
pub fn open(slot: &[u8], position: u64) -> Result<(SlotHeader, u64), SlotError> {
    assert!(slot.len() > SLOT_HEADER_BYTES as usize);
    let header_bytes = &slot[..SLOT_HEADER_BYTES as usize];
    if header_bytes.iter().all(|&b| b == 0) {
        return Err(SlotError::Empty);
    }
    let capacity = slot.len() as u32 - SLOT_HEADER_BYTES;
    let header = SlotHeader::parse(slot);
    if !header.well_formed(capacity) {
        return Err(SlotError::Malformed);
    }
    let payload = &slot[SLOT_HEADER_BYTES as usize..][..header.frag_len(capacity) as usize];
    let chain = header.chain(payload);
    let checksum_ok = word(slot, 0) == header.checksum(chain);
    // Planted defect: accept a slot whatever its checksum says.
    if !checksum_ok && !cfg!(feature = "bug-no-checksum") {
        return Err(SlotError::Torn);
    }
    if header.position != position {
        return Err(SlotError::Stale {
            found: header.position,
        });
    }
    Ok((header, chain))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(position: u64, payload: &[u8]) -> ([u8; 256], SlotHeader) {
        let header = SlotHeader {
            position,
            ballot: 9,
            commit: position,
            chain_prev: CHAIN_GENESIS,
            origin: origin(1, 5),
            entry_len: payload.len() as u32,
            frag_index: 0,
            frag_count: 1,
        };
        let mut slot = [0u8; 256];
        header.seal(payload, &mut slot);
        slot[SLOT_HEADER_BYTES as usize..][..payload.len()].copy_from_slice(payload);
        (slot, header)
    }

    #[test]
    fn round_trip() {
        let (slot, header) = sealed(77, b"set x 1");
        let (opened, chain) = open(&slot[..128], 77).unwrap();
        assert_eq!(opened, header);
        assert_eq!(chain, header.chain(b"set x 1"));
    }

    #[test]
    fn rejects_empty_torn_stale_and_malformed() {
        let (slot, _) = sealed(77, b"set x 1");
        assert_eq!(open(&[0u8; 128], 77), Err(SlotError::Empty));
        assert_eq!(
            open(&slot[..128], 77 + 64),
            Err(SlotError::Stale { found: 77 })
        );
        for byte in 0..(SLOT_HEADER_BYTES as usize + 7) {
            let mut torn = slot;
            torn[byte] ^= 0x01;
            assert!(open(&torn[..128], 77).is_err(), "flip at {byte} accepted");
        }
        let mut malformed = slot;
        malformed[54] = 0; // frag_count = 0
        assert_eq!(open(&malformed[..128], 77), Err(SlotError::Malformed));
        let mut garbage = [0xA5u8; 128];
        garbage[0] = 1;
        assert!(open(&garbage, 77).is_err());
    }

    #[test]
    fn chain_ignores_ballot_and_commit() {
        let (_, a) = sealed(3, b"v");
        let b = SlotHeader {
            ballot: 100,
            commit: 0,
            ..a
        };
        assert_eq!(a.chain(b"v"), b.chain(b"v"));
        assert_ne!(a.chain(b"v"), a.chain(b"w"));
    }
}
