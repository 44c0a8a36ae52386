//! The region layout: where everything lives in a replica's remote-visible memory. Identical on
//! every replica because it is computed from the [`Config`] alone.
//!
//! ```text
//! offset 0     region header (64 B): magic, layout version, replica count, config hash, life
//!              (the incarnation of the process that wrote it), check
//!              background area, writable by every peer:
//!                heartbeat record, applied record, permission request[n], permission ack[n],
//!                transfer request[n]
//!              log area, writable only by the granted peer:
//!                min proposal records [2], standing record, commit record, lap notice, then
//!                slot_count slots, then the rewrite area: slot_count adoption records, then
//!                slot_count decided marks (one of each per slot, see `slot`)
//!              transfer area, read by peers, written only by the owner:
//!                offer (64 B), progress record (padded to 64 B), transfer_window chunk slots
//!                (a 64-byte header, then transfer_chunk_bytes)
//!              scratch area, never written remotely:
//!                outbox (records staged for remote writes), landing buffers for reads (one per
//!                peer, then the transfer's: offer, progress, transfer_window chunk slots)
//!              (commit record: commit position u64, chain through commit - 1 u64, check u64)
//! ```
//!
//! The standing record says whether this life of the replica is a voter: zero (a fresh or
//! restarted region) means it is recovering; a value is the ballot of the tenure that admitted
//! it, and counts as a promise of that ballot (see `tenure::admission`).
//!
//! # Invariants
//! - Areas do not overlap and appear in the order above; the log area and every slot start on a
//!   64-byte boundary.
//! - Every record is 16 bytes at an 8-aligned offset; a record's check covers its own offset, so
//!   a record copied to another place never validates (an adoption record's or decided mark's check
//!   covers the chain of its value instead, which names its position).
//! - Everything a leader writes into a member (slots, rewrite records, commit record, standing,
//!   min proposals, lap notice) lies in the log area, under the member's grant.
//! - The applied record follows the heartbeat record: the background plane reads both at once.
//! - The whole region fits in `u32` offsets (guaranteed by [`Config::validate`]).

use crate::config::Config;
use crate::fabric::ReplicaId;
use crate::hash::Hasher;

/// Bumped whenever the layout, the slot format or a record's meaning changes (4: a heartbeat
/// names its replica's leader view; 5: the ballot moved out of the value's checksum into an
/// acceptance record, an adoption record and a decided mark per slot, and the lap notice into
/// the log area; 6: a slot stores its payload's digest, and its chain is a hash of its header).
pub const LAYOUT_VERSION: u32 = 6;
/// Where `position` falls in a ring of `count` slots: a mask when `count` is a power of two
/// (every shipped configuration), since a 64-bit division costs tens of cycles and the fast
/// path computes this for every slot it touches; a division otherwise.
#[inline(always)]
pub(crate) const fn ring_index(position: u64, count: u64) -> u64 {
    if count.is_power_of_two() {
        position & (count - 1)
    } else {
        position % count
    }
}

/// Identifies a Mu region.
pub const REGION_MAGIC: u64 = 0x4D55_5245_4749_4F4E; // "MUREGION"
/// Bytes of the region header.
pub const HEADER_BYTES: u32 = 64;
/// Bytes of the header its check covers (the check follows them).
const HEADER_CHECKED: usize = 32;
/// Bytes of one checked record.
pub const RECORD_BYTES: u32 = 16;
/// Bytes of the commit record (commit position, chain, check), padded.
pub const COMMIT_RECORD_BYTES: u32 = 32;
/// Bytes of the log area's header: two min-proposal records, the standing record, the commit
/// record and the lap notice, padded.
pub const LOG_HEADER_BYTES: u32 = 128;
/// Bytes of the background plane's heartbeat read: the heartbeat record and the applied record,
/// which follow each other.
pub const HEARTBEAT_READ_BYTES: u32 = 2 * RECORD_BYTES;
/// Bytes of both min-proposal records.
pub const MIN_PROPOSAL_BYTES: u32 = 2 * RECORD_BYTES;
/// Bytes of a state-transfer offer (see `transfer`).
pub const OFFER_BYTES: u32 = 64;
/// Bytes of a state-transfer chunk's header (index, length, checksum), padded.
pub const CHUNK_HEADER_BYTES: u32 = 64;
/// Bytes of an acceptor's promises: both min-proposal records and the standing record, which
/// follow each other and are read together.
pub const PROMISE_BYTES: u32 = MIN_PROPOSAL_BYTES + RECORD_BYTES;

const fn round_up_64(x: u32) -> u32 {
    (x + 63) & !63
}

/// Offsets of everything in a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Layout {
    /// Replicas in the cluster.
    pub replica_count: u8,
    /// Slots in the log.
    pub slot_count: u32,
    /// Bytes per slot.
    pub slot_size: u32,
    /// Start of the background area.
    pub background: u32,
    /// Start of the log area (its header first).
    pub log: u32,
    /// Start of slot 0.
    pub slots: u32,
    /// Start of the rewrite area: the adoption records, then the decided marks.
    pub rewrites: u32,
    /// Start of the transfer area.
    pub transfer: u32,
    /// Bytes of one transfer chunk and of the window.
    chunk_bytes: u32,
    /// Start of the scratch area.
    pub scratch: u32,
    /// Start of the outbox inside the scratch area.
    outbox: u32,
    /// Start of the read landing buffers inside the scratch area.
    landing: u32,
    /// Start of the transfer's landing buffers.
    landing_transfer: u32,
    /// Total bytes.
    pub region_bytes: u32,
    /// `slot_count - 1` when `slot_count` is a power of two, else 0 (see [`ring_index`]).
    ring_mask: u32,
}

/// The region header of a peer is not what this replica expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HeaderError {
    /// Not a Mu region, or the header is torn or unwritten.
    NotARegion,
    /// Another layout version (the peer runs other software).
    LayoutVersion {
        /// The version found.
        found: u32,
    },
    /// Another cluster configuration.
    ConfigHash {
        /// The hash found.
        found: u64,
    },
}

impl Layout {
    /// The layout of a validated configuration.
    pub const fn new(config: &Config) -> Layout {
        let n = config.replica_count as u32;
        let background = HEADER_BYTES;
        let background_bytes = round_up_64((2 + 3 * n) * RECORD_BYTES);
        let log = background + background_bytes;
        let slots = log + LOG_HEADER_BYTES;
        let rewrites = slots + config.slot_count * config.slot_size;
        let transfer = rewrites + 2 * config.slot_count * RECORD_BYTES;
        let chunk_bytes = config.transfer_chunk_bytes;
        let transfer_bytes = Layout::transfer_bytes(config);
        let scratch = transfer + transfer_bytes;
        let outbox = scratch;
        // Outbox: one request, one ack per peer, min proposal, commit record, lap notice,
        // standing, transfer request.
        let outbox_bytes = round_up_64(
            RECORD_BYTES
                + n * RECORD_BYTES
                + MIN_PROPOSAL_BYTES
                + COMMIT_RECORD_BYTES
                + 3 * RECORD_BYTES,
        );
        let landing = outbox + outbox_bytes;
        // Landing, per peer: header, heartbeat and applied (the background plane's read),
        // applied (the replication plane's), promises, one slot and its rewrite record.
        let landing_bytes = n * Layout::landing_stride(config.slot_size);
        let landing_transfer = landing + landing_bytes;
        let layout = Layout {
            replica_count: config.replica_count,
            slot_count: config.slot_count,
            slot_size: config.slot_size,
            background,
            log,
            slots,
            rewrites,
            transfer,
            chunk_bytes,
            scratch,
            outbox,
            landing,
            landing_transfer,
            region_bytes: landing_transfer + transfer_bytes,
            ring_mask: if config.slot_count.is_power_of_two() {
                config.slot_count - 1
            } else {
                0
            },
        };
        // The areas follow each other in this order, the log and its slots on 64-byte
        // boundaries (with slot sizes a multiple of 64, a slot never straddles a cache line
        // more than it must); the outbox ends before the landing buffers. (The transfer area
        // is aligned only for an even slot count: the rewrite area is 32 bytes per slot.)
        assert!(HEADER_BYTES <= background && background < log && log < slots);
        assert!(slots < rewrites && rewrites < transfer && transfer < scratch);
        assert!(scratch == outbox && outbox < landing && landing < landing_transfer);
        assert!(log % 64 == 0 && slots % 64 == 0);
        assert!(layout.outbox_transfer_request() + RECORD_BYTES <= landing);
        assert!(log + layout.log_bytes() == transfer);
        layout
    }

    /// Bytes of the transfer area (and of the transfer's landing buffers).
    const fn transfer_bytes(config: &Config) -> u32 {
        OFFER_BYTES
            + 64
            + config.transfer_window as u32 * Layout::chunk_stride(config.transfer_chunk_bytes)
    }

    const fn chunk_stride(chunk_bytes: u32) -> u32 {
        CHUNK_HEADER_BYTES + chunk_bytes
    }

    /// Where `joiner` asks this replica for a snapshot: its nonce and the next chunk it wants.
    pub const fn transfer_request(&self, joiner: ReplicaId) -> u32 {
        self.background + (2 + 2 * self.replica_count as u32 + joiner as u32) * RECORD_BYTES
    }
    /// The offer of the snapshot this replica serves.
    pub const fn offer(&self) -> u32 {
        self.transfer
    }
    /// How many chunks of the served snapshot are in the window so far.
    pub const fn progress(&self) -> u32 {
        self.transfer + OFFER_BYTES
    }
    /// Chunk slot `slot` of the window (its header; the data follows).
    pub const fn chunk(&self, slot: u32) -> u32 {
        self.transfer + OFFER_BYTES + 64 + slot * Layout::chunk_stride(self.chunk_bytes)
    }
    /// Outbox: a transfer request, staged.
    pub const fn outbox_transfer_request(&self) -> u32 {
        self.outbox_standing() + RECORD_BYTES
    }
    /// Landing buffer for a donor's offer.
    pub const fn landing_offer(&self) -> u32 {
        self.landing_transfer
    }
    /// Landing buffer for a donor's progress record.
    pub const fn landing_progress(&self) -> u32 {
        self.landing_transfer + OFFER_BYTES
    }
    /// Landing buffer for chunk slot `slot`.
    pub const fn landing_chunk(&self, slot: u32) -> u32 {
        self.landing_transfer + OFFER_BYTES + 64 + slot * Layout::chunk_stride(self.chunk_bytes)
    }

    const fn landing_stride(slot_size: u32) -> u32 {
        HEADER_BYTES
            + HEARTBEAT_READ_BYTES
            + RECORD_BYTES
            + PROMISE_BYTES
            + slot_size
            + 2 * RECORD_BYTES
    }

    /// Bytes of the log area: its header, the slots and the rewrite area.
    pub const fn log_bytes(&self) -> u32 {
        LOG_HEADER_BYTES + self.slot_count * (self.slot_size + 2 * RECORD_BYTES)
    }

    /// True when `[offset, offset + len)` lies inside the log area (which ends where the
    /// transfer area starts, as `new` asserts: no multiplication on a fabric's every post).
    pub const fn in_log_area(&self, offset: u32, len: u32) -> bool {
        offset >= self.log && (offset as u64 + len as u64) <= self.transfer as u64
    }

    /// True when `[offset, offset + len)` overlaps the log area.
    #[inline]
    pub const fn touches_log_area(&self, offset: u32, len: u32) -> bool {
        (offset as u64 + len as u64) > self.log as u64 && offset < self.transfer
    }

    /// My heartbeat: a counter, my leader view and my voter flag (see `background`).
    pub const fn heartbeat(&self) -> u32 {
        self.background
    }
    /// My applied position (everything below it is applied here).
    pub const fn applied(&self) -> u32 {
        self.background + RECORD_BYTES
    }
    /// Where `requester` asks me for permission to write my log.
    pub const fn request(&self, requester: ReplicaId) -> u32 {
        self.background + (2 + requester as u32) * RECORD_BYTES
    }
    /// Where `owner` acknowledges my permission request.
    pub const fn ack(&self, owner: ReplicaId) -> u32 {
        self.background + (2 + self.replica_count as u32 + owner as u32) * RECORD_BYTES
    }
    /// Both min-proposal records.
    pub const fn min_proposal(&self) -> u32 {
        self.log
    }
    /// One of the two min-proposal records.
    pub const fn min_proposal_record(&self, which: u32) -> u32 {
        self.log + which * RECORD_BYTES
    }
    /// The standing record: zero while this life of the replica is recovering, else the ballot
    /// that admitted it as a voter.
    pub const fn standing(&self) -> u32 {
        self.log + MIN_PROPOSAL_BYTES
    }
    /// The commit record.
    pub const fn commit_record(&self) -> u32 {
        self.log + PROMISE_BYTES + RECORD_BYTES
    }
    /// Where a leader tells this replica it was lapped: the lowest position the leader's log
    /// can still send; above this replica's applied position, it halts. In the log area, so
    /// that only the leader this replica granted can write it (a deposed one is fenced).
    pub const fn lap_notice(&self) -> u32 {
        self.commit_record() + COMMIT_RECORD_BYTES
    }
    /// The slot that holds `position`.
    #[inline]
    pub const fn slot(&self, position: u64) -> u32 {
        // Cannot wrap: `new` placed every slot below `rewrites`, a `u32`.
        self.slots
            .wrapping_add(self.ring_index(position).wrapping_mul(self.slot_size))
    }
    /// The adoption record of the slot that holds `position` (see `slot`).
    #[inline]
    pub const fn adoption_record(&self, position: u64) -> u32 {
        self.rewrites + self.ring_index(position) * RECORD_BYTES
    }
    /// `ring_index(position, slot_count)`, with the mask worked out once: the fast path asks
    /// for every slot it touches.
    #[inline(always)]
    const fn ring_index(&self, position: u64) -> u32 {
        if self.ring_mask != 0 {
            position as u32 & self.ring_mask
        } else {
            (position % self.slot_count as u64) as u32
        }
    }
    /// The decided mark of the slot that holds `position` (see `slot`).
    #[inline]
    pub const fn decided_mark(&self, position: u64) -> u32 {
        self.adoption_record(position) + self.slot_count * RECORD_BYTES
    }
    /// Outbox: my permission request, staged.
    pub const fn outbox_request(&self) -> u32 {
        self.outbox
    }
    /// Outbox: my ack to `requester`, staged.
    pub const fn outbox_ack(&self, requester: ReplicaId) -> u32 {
        self.outbox + (1 + requester as u32) * RECORD_BYTES
    }
    /// Outbox: min-proposal record `which` (0 or 1), staged.
    pub const fn outbox_min_proposal(&self, which: u32) -> u32 {
        self.outbox + (1 + self.replica_count as u32 + which) * RECORD_BYTES
    }
    /// Outbox: the commit record, staged.
    pub const fn outbox_commit(&self) -> u32 {
        self.outbox + (3 + self.replica_count as u32) * RECORD_BYTES
    }
    /// Outbox: a lap notice, staged.
    pub const fn outbox_lap_notice(&self) -> u32 {
        self.outbox_commit() + COMMIT_RECORD_BYTES
    }
    /// Outbox: a standing record, staged.
    pub const fn outbox_standing(&self) -> u32 {
        self.outbox_lap_notice() + RECORD_BYTES
    }
    const fn landing_of(&self, peer: ReplicaId) -> u32 {
        self.landing + peer as u32 * Layout::landing_stride(self.slot_size)
    }
    /// Landing buffer for `peer`'s region header.
    pub const fn landing_header(&self, peer: ReplicaId) -> u32 {
        self.landing_of(peer)
    }
    /// Landing buffer for the background plane's read of `peer`'s heartbeat and applied
    /// records (`HEARTBEAT_READ_BYTES`).
    pub const fn landing_heartbeat(&self, peer: ReplicaId) -> u32 {
        self.landing_of(peer) + HEADER_BYTES
    }
    /// Landing buffer for the replication plane's reads of `peer`'s applied position.
    pub const fn landing_applied(&self, peer: ReplicaId) -> u32 {
        self.landing_heartbeat(peer) + HEARTBEAT_READ_BYTES
    }
    /// Landing buffer for `peer`'s promises (min-proposal records and standing).
    pub const fn landing_promises(&self, peer: ReplicaId) -> u32 {
        self.landing_applied(peer) + RECORD_BYTES
    }
    /// Landing buffer for one slot of `peer`.
    pub const fn landing_slot(&self, peer: ReplicaId) -> u32 {
        self.landing_promises(peer) + PROMISE_BYTES
    }
    /// Landing buffer for the adoption record of that slot.
    pub const fn landing_adoption(&self, peer: ReplicaId) -> u32 {
        self.landing_slot(peer) + self.slot_size
    }
    /// Landing buffer for the decided mark of that slot.
    pub const fn landing_decided(&self, peer: ReplicaId) -> u32 {
        self.landing_adoption(peer) + RECORD_BYTES
    }

    /// The region header of this configuration, written by life `life` of its replica (the
    /// incarnation a fabric names when it reports that life ended, see
    /// [`crate::Fabric::ended_life`]).
    pub fn header(config: &Config, life: u32) -> [u8; HEADER_BYTES as usize] {
        let mut header = [0u8; HEADER_BYTES as usize];
        header[0..8].copy_from_slice(&REGION_MAGIC.to_le_bytes());
        header[8..12].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        header[12] = config.replica_count;
        header[16..24].copy_from_slice(&config.hash().to_le_bytes());
        header[24..28].copy_from_slice(&life.to_le_bytes());
        let check = Hasher::new(REGION_MAGIC)
            .bytes(&header[0..HEADER_CHECKED])
            .finish();
        header[HEADER_CHECKED..HEADER_CHECKED + 8].copy_from_slice(&check.to_le_bytes());
        debug_assert_eq!(Layout::check_header(config, &header), Ok(life));
        header
    }

    /// Checks a peer's region header against this configuration; the life that wrote it.
    pub fn check_header(config: &Config, header: &[u8]) -> Result<u32, HeaderError> {
        if header.len() < HEADER_CHECKED + 8 {
            return Err(HeaderError::NotARegion);
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let check = Hasher::new(REGION_MAGIC)
            .bytes(&header[0..HEADER_CHECKED])
            .finish();
        if word(0) != REGION_MAGIC || word(HEADER_CHECKED) != check {
            return Err(HeaderError::NotARegion);
        }
        let version = word(8) as u32;
        if version != LAYOUT_VERSION {
            return Err(HeaderError::LayoutVersion { found: version });
        }
        let hash = word(16);
        if hash != config.hash() {
            return Err(HeaderError::ConfigHash { found: hash });
        }
        Ok(word(24) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_valid_slot_count_has_a_layout() {
        // Odd slot counts leave the transfer area off a 64-byte boundary; the layout's own
        // assertions hold for them too (a benchmark's configuration found the one that did not).
        for slot_count in [1023, 1024, 4095] {
            let mut config = Config::new(3);
            config.slot_count = slot_count;
            assert_eq!(config.validate(), Ok(()));
            let l = Layout::new(&config);
            assert_eq!(l.log + l.log_bytes(), l.transfer);
        }
    }

    #[test]
    fn areas_are_ordered_aligned_and_disjoint() {
        for n in 1..=7 {
            let mut config = Config::new(n);
            config.slot_size = 192;
            let l = Layout::new(&config);
            assert!(HEADER_BYTES <= l.background);
            assert!(l.ack(n - 1) + RECORD_BYTES <= l.transfer_request(0));
            assert_eq!(l.log % 64, 0);
            assert_eq!(l.slots % 64, 0);
            assert_eq!(l.slot(1) - l.slot(0), 192);
            assert_eq!(l.slot(config.slot_count as u64), l.slot(0));
            assert_eq!(l.rewrites, l.slot(config.slot_count as u64 - 1) + 192);
            let last = config.slot_count as u64 - 1;
            assert_eq!(l.adoption_record(0), l.rewrites);
            assert_eq!(l.adoption_record(1) - l.adoption_record(0), RECORD_BYTES);
            assert_eq!(l.adoption_record(last + 1), l.adoption_record(0));
            assert_eq!(l.adoption_record(last) + RECORD_BYTES, l.decided_mark(0));
            assert_eq!(l.decided_mark(1) - l.decided_mark(0), RECORD_BYTES);
            assert_eq!(l.decided_mark(last + 1), l.decided_mark(0));
            assert_eq!(l.decided_mark(last) + RECORD_BYTES, l.transfer);
            assert_eq!(l.log + l.log_bytes(), l.transfer);
            assert!(l.transfer_request(n - 1) + RECORD_BYTES <= l.log);
            assert_eq!(l.offer() % 64, 0);
            assert!(l.progress() + RECORD_BYTES <= l.chunk(0));
            let last = config.transfer_window as u32 - 1;
            assert!(l.chunk(last) + CHUNK_HEADER_BYTES + config.transfer_chunk_bytes <= l.scratch);
            assert!(l.outbox_transfer_request() + RECORD_BYTES <= l.landing_header(0));
            assert!(
                l.landing_chunk(last) + CHUNK_HEADER_BYTES + config.transfer_chunk_bytes
                    <= l.region_bytes
            );
            assert!(l.outbox_commit() + COMMIT_RECORD_BYTES <= l.outbox_lap_notice());
            assert!(l.outbox_lap_notice() + RECORD_BYTES <= l.outbox_standing());
            assert!(l.outbox_standing() + RECORD_BYTES <= l.outbox_transfer_request());
            assert_eq!(l.min_proposal() + MIN_PROPOSAL_BYTES, l.standing());
            assert!(l.standing() + RECORD_BYTES <= l.commit_record());
            assert!(l.commit_record() + COMMIT_RECORD_BYTES <= l.lap_notice());
            assert!(l.lap_notice() + RECORD_BYTES <= l.slots);
            assert!(l.in_log_area(l.lap_notice(), RECORD_BYTES));
            assert!(l.in_log_area(l.adoption_record(3), RECORD_BYTES));
            assert!(l.in_log_area(l.decided_mark(3), RECORD_BYTES));
            assert!(l.landing_promises(0) + PROMISE_BYTES <= l.landing_slot(0));
            assert_eq!(l.landing_slot(0) + 192, l.landing_adoption(0));
            assert!(l.landing_decided(n - 1) + RECORD_BYTES <= l.landing_offer());
            // The background plane reads both records in one read, into its own landing.
            assert_eq!(l.heartbeat() + RECORD_BYTES, l.applied());
            assert!(l.landing_heartbeat(0) + HEARTBEAT_READ_BYTES <= l.landing_applied(0));
            assert!(l.landing_applied(0) + RECORD_BYTES <= l.landing_promises(0));

            assert!(l.in_log_area(l.slot(5), 192));
            assert!(!l.in_log_area(l.heartbeat(), 16));
            assert!(!l.touches_log_area(l.ack(n - 1), 16));
            assert!(!l.touches_log_area(l.scratch, 16));
        }
    }

    #[test]
    fn header_mismatches_are_typed() {
        let config = Config::new(3);
        let header = Layout::header(&config, 0xDEAD_BEEF);
        assert_eq!(Layout::check_header(&config, &header), Ok(0xDEAD_BEEF));
        // The life is checked too: a header whose life changed under its check is refused.
        let mut relived = header;
        relived[24] ^= 1;
        assert_eq!(
            Layout::check_header(&config, &relived),
            Err(HeaderError::NotARegion)
        );
        let mut other = config;
        other.slot_count *= 2;
        assert!(matches!(
            Layout::check_header(&other, &header),
            Err(HeaderError::ConfigHash { .. })
        ));
        let mut torn = header;
        torn[3] ^= 1;
        assert_eq!(
            Layout::check_header(&config, &torn),
            Err(HeaderError::NotARegion)
        );
        assert_eq!(
            Layout::check_header(&config, &[0u8; 64]),
            Err(HeaderError::NotARegion)
        );
        assert_eq!(
            Layout::check_header(&config, &[0u8; 3]),
            Err(HeaderError::NotARegion)
        );
    }
}
