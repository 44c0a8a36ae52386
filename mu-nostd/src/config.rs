//! The cluster configuration: identical on every replica, validated before use, and hashed into
//! the region header so that replicas with different configurations refuse each other.
//!
//! # Invariants
//! - A [`Config`] that passed [`Config::validate`] yields a layout that fits in `u32` offsets,
//!   a slot that holds its header plus at least 8 payload bytes, and quorums that exist.
//! - [`Config::hash`] covers every field, so two replicas agree on the hash only if they agree on
//!   everything that shapes the region or the protocol's timing.

use crate::fabric::ReplicaId;
use crate::hash::Hasher;
use crate::layout::RECORD_BYTES;
use crate::slot::SLOT_HEADER_BYTES;

/// Most replicas a cluster may have.
pub const REPLICAS_MAX: u8 = 7;
/// Largest slot the core accepts (it keeps one slot in its scratch buffer).
pub const SLOT_BYTES_MAX: u32 = 64 * 1024;
/// Most slots a log may have (positions are `u64`, slot indexes fit `u32` offsets).
pub const SLOT_COUNT_MAX: u32 = 1 << 24;
/// Most pipelined (written but undecided) slots on the leader's fast path.
pub const PIPELINE_DEPTH_MAX: u16 = 64;
/// Most slots one command may span.
pub const ENTRY_SLOTS_MAX: u16 = 64;
/// Largest state-transfer chunk.
pub const TRANSFER_CHUNK_BYTES_MAX: u32 = 1 << 20;
/// Most state-transfer chunks in flight.
pub const TRANSFER_WINDOW_MAX: u8 = 16;

/// Parameters of the pull-score failure detector, in ticks of the runtime's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DetectorConfig {
    /// How often a replica bumps its own heartbeat counter.
    pub heartbeat_period_ticks: u32,
    /// How often a replica reads each peer's heartbeat.
    pub read_period_ticks: u32,
    /// A heartbeat read still outstanding after this long counts as "unchanged" and resets the
    /// connection to that peer.
    pub read_timeout_ticks: u32,
    /// Scores are clamped to `0..=score_max`.
    pub score_max: u8,
    /// A peer considered alive is declared failed when its score falls below this.
    pub fail_below: u8,
    /// A peer considered failed is declared alive when its score rises above this.
    pub recover_above: u8,
    /// Fate sharing: when the replication plane has not been polled for this long, this replica
    /// stops its heartbeat so that the others fail over.
    pub fate_ticks: u32,
}

/// The cluster configuration shared by every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config {
    /// Number of replicas, `1..=7`; ids are `0..replica_count`.
    pub replica_count: u8,
    /// Slots in the circular log.
    pub slot_count: u32,
    /// Bytes per slot, header included; a multiple of 64.
    pub slot_size: u32,
    /// Most slots one command may span.
    pub entry_slots_max: u16,
    /// Most written-but-undecided slots the leader keeps in flight.
    pub pipeline_depth: u16,
    /// A replication-plane operation outstanding longer than this aborts what waited for it.
    pub op_timeout_ticks: u32,
    /// How long a permission request or an ack waits before it is posted again (one whose write
    /// is still in flight, at least two detector read periods), and a member a tenure lost
    /// before it is asked again; at most `op_timeout_ticks`.
    pub permission_retry_ticks: u32,
    /// How often the leader reads the replicas' applied positions to recycle the log.
    pub recycle_period_ticks: u32,
    /// Bytes of one state-transfer chunk (a multiple of 64).
    pub transfer_chunk_bytes: u32,
    /// State-transfer chunks a donor keeps ready ahead of the joiner.
    pub transfer_window: u8,
    /// The failure detector.
    pub detector: DetectorConfig,
}

/// A configuration that cannot be used, naming the field and what is wrong with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConfigError {
    /// The offending field, as named in [`Config`] (dotted for the detector's fields).
    pub field: &'static str,
    /// What is wrong.
    pub reason: &'static str,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn check(ok: bool, field: &'static str, reason: &'static str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError { field, reason })
    }
}

impl DetectorConfig {
    /// The paper's scores (0..=15, failed below 2, alive above 6) with periods in ticks.
    pub const fn paper(read_period_ticks: u32) -> DetectorConfig {
        DetectorConfig {
            heartbeat_period_ticks: if read_period_ticks / 2 == 0 {
                1
            } else {
                read_period_ticks / 2
            },
            read_period_ticks,
            read_timeout_ticks: read_period_ticks.saturating_mul(4),
            score_max: 15,
            fail_below: 2,
            recover_above: 6,
            fate_ticks: read_period_ticks.saturating_mul(8),
        }
    }

    /// Ticks the quickest observer needs to declare a silent peer failed, at patience 1: every
    /// unchanged read costs a point, from a full score.
    pub const fn detection_ticks(&self) -> u64 {
        (self.score_max.saturating_sub(self.fail_below) as u64 + 1) * self.read_period_ticks as u64
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check(
            self.heartbeat_period_ticks > 0,
            "detector.heartbeat_period_ticks",
            "must be > 0",
        )?;
        check(
            self.read_period_ticks > 0,
            "detector.read_period_ticks",
            "must be > 0",
        )?;
        check(
            self.read_timeout_ticks >= self.read_period_ticks,
            "detector.read_timeout_ticks",
            "must be >= read_period_ticks",
        )?;
        check(self.score_max >= 2, "detector.score_max", "must be >= 2")?;
        check(self.fail_below > 0, "detector.fail_below", "must be > 0")?;
        check(
            self.fail_below <= self.recover_above,
            "detector.fail_below",
            "must be <= recover_above (hysteresis)",
        )?;
        check(
            self.recover_above < self.score_max,
            "detector.recover_above",
            "must be < score_max",
        )?;
        check(
            self.fate_ticks > self.heartbeat_period_ticks,
            "detector.fate_ticks",
            "must be > heartbeat_period_ticks",
        )
    }
}

impl Config {
    /// A small, valid configuration for `replica_count` replicas; the runtimes override fields.
    pub const fn new(replica_count: u8) -> Config {
        Config {
            replica_count,
            slot_count: 1024,
            slot_size: 128,
            entry_slots_max: 8,
            pipeline_depth: 8,
            op_timeout_ticks: 2_000,
            permission_retry_ticks: 1_000,
            recycle_period_ticks: 100,
            transfer_chunk_bytes: 1024,
            transfer_window: 2,
            detector: DetectorConfig::paper(50),
        }
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            self.replica_count >= 1,
            "replica_count",
            "must be at least 1",
        )?;
        check(
            self.replica_count <= REPLICAS_MAX,
            "replica_count",
            "must be at most 7",
        )?;
        check(self.slot_count >= 8, "slot_count", "must be at least 8")?;
        check(
            self.slot_count <= SLOT_COUNT_MAX,
            "slot_count",
            "must be at most 2^24",
        )?;
        check(
            self.slot_size % 64 == 0,
            "slot_size",
            "must be a multiple of 64",
        )?;
        check(
            self.slot_size >= SLOT_HEADER_BYTES + 8,
            "slot_size",
            "must hold the slot header and 8 payload bytes",
        )?;
        check(
            self.slot_size <= SLOT_BYTES_MAX,
            "slot_size",
            "must be at most 64 KiB",
        )?;
        check(
            (self.slot_count as u64) * (self.slot_size as u64 + 2 * RECORD_BYTES as u64)
                <= (u32::MAX / 2) as u64,
            "slot_count",
            "slot_count * (slot_size + 32) must stay below 2 GiB",
        )?;
        check(
            self.entry_slots_max >= 1,
            "entry_slots_max",
            "must be at least 1",
        )?;
        // The leader tracks at most pipeline_depth - 1 + entry_slots_max undecided positions.
        check(
            self.entry_slots_max <= ENTRY_SLOTS_MAX,
            "entry_slots_max",
            "must be at most 64",
        )?;
        check(
            (self.entry_slots_max as u32) * 4 <= self.slot_count,
            "entry_slots_max",
            "must be at most a quarter of slot_count",
        )?;
        check(
            self.pipeline_depth >= 1,
            "pipeline_depth",
            "must be at least 1",
        )?;
        check(
            self.pipeline_depth <= PIPELINE_DEPTH_MAX,
            "pipeline_depth",
            "must be at most 64",
        )?;
        check(
            (self.pipeline_depth as u32) * 4 <= self.slot_count,
            "pipeline_depth",
            "must be at most a quarter of slot_count",
        )?;
        check(self.op_timeout_ticks > 0, "op_timeout_ticks", "must be > 0")?;
        check(
            self.permission_retry_ticks > 0,
            "permission_retry_ticks",
            "must be > 0",
        )?;
        // A tenure's set-up deadlines are `op_timeout_ticks`, doubled to 4 times at most after
        // set-ups that failed: a member lost during one (a read failed on a pairing the
        // tenure's own grant closed, routinely on verbs) must be asked again well within it.
        // With 5 times `op_timeout_ticks` the simulator saw every tenure end in its survey
        // (`sim --wide-timing`, seed 25 of 271c718's generator: 300 against 60).
        check(
            self.permission_retry_ticks <= self.op_timeout_ticks,
            "permission_retry_ticks",
            "must be at most op_timeout_ticks (a member lost while a tenure sets up is asked \
             again after it; longer, and no set-up deadline leaves room for that)",
        )?;
        check(
            self.recycle_period_ticks > 0,
            "recycle_period_ticks",
            "must be > 0",
        )?;
        check(
            self.transfer_chunk_bytes >= 64 && self.transfer_chunk_bytes % 64 == 0,
            "transfer_chunk_bytes",
            "must be a multiple of 64, at least 64",
        )?;
        check(
            self.transfer_chunk_bytes <= TRANSFER_CHUNK_BYTES_MAX,
            "transfer_chunk_bytes",
            "must be at most 1 MiB",
        )?;
        check(
            (1..=TRANSFER_WINDOW_MAX).contains(&self.transfer_window),
            "transfer_window",
            "must be 1 to 16",
        )?;
        check(
            (self.slot_count as u64) * (self.slot_size as u64 + 2 * RECORD_BYTES as u64)
                + 2 * (self.transfer_window as u64) * (self.transfer_chunk_bytes as u64)
                <= (u32::MAX / 2) as u64,
            "transfer_chunk_bytes",
            "the log and two transfer windows must stay below 2 GiB",
        )?;
        self.detector.validate()
    }

    /// Votes needed to decide: a majority, `n / 2 + 1`, this replica included.
    pub const fn quorum(&self) -> u8 {
        if cfg!(feature = "bug-small-quorum") && self.replica_count > 1 {
            // Planted defect: one vote short of a majority.
            return self.replica_count / 2;
        }
        self.replica_count / 2 + 1
    }

    /// Payload bytes one slot carries.
    pub const fn slot_payload_bytes(&self) -> u32 {
        self.slot_size - SLOT_HEADER_BYTES
    }

    /// The largest command, in bytes.
    pub const fn entry_bytes_max(&self) -> u32 {
        self.slot_payload_bytes() * self.entry_slots_max as u32
    }

    /// True when `id` names a replica of this cluster.
    pub const fn contains(&self, id: ReplicaId) -> bool {
        id < self.replica_count
    }

    /// A digest of every field; part of the region header.
    pub fn hash(&self) -> u64 {
        let d = &self.detector;
        Hasher::new(0xC0F1_6000)
            .word(self.replica_count as u64)
            .word(self.slot_count as u64)
            .word(self.slot_size as u64)
            .word(self.entry_slots_max as u64)
            .word(self.pipeline_depth as u64)
            .word(self.op_timeout_ticks as u64)
            .word(self.permission_retry_ticks as u64)
            .word(self.recycle_period_ticks as u64)
            .word(self.transfer_chunk_bytes as u64)
            .word(self.transfer_window as u64)
            .word(d.heartbeat_period_ticks as u64)
            .word(d.read_period_ticks as u64)
            .word(d.read_timeout_ticks as u64)
            .word(
                ((d.score_max as u64) << 16)
                    | ((d.fail_below as u64) << 8)
                    | d.recover_above as u64,
            )
            .word(d.fate_ticks as u64)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_is_a_majority_for_odd_and_even_sizes() {
        let expected = [1u8, 2, 2, 3, 3, 4, 4];
        for n in 1..=REPLICAS_MAX {
            let quorum = Config::new(n).quorum();
            assert_eq!(quorum, expected[n as usize - 1], "n = {n}");
            // Two quorums always intersect.
            assert!(2 * quorum > n);
        }
    }

    #[test]
    fn bad_configs_name_their_field() {
        let mut c = Config::new(3);
        assert!(c.validate().is_ok());
        c.replica_count = 0;
        assert_eq!(c.validate().unwrap_err().field, "replica_count");
        c.replica_count = 8;
        assert_eq!(c.validate().unwrap_err().field, "replica_count");
        let mut c = Config::new(3);
        c.slot_size = 100;
        assert_eq!(c.validate().unwrap_err().field, "slot_size");
        let mut c = Config::new(3);
        c.slot_count = 0;
        assert_eq!(c.validate().unwrap_err().field, "slot_count");
        let mut c = Config::new(3);
        c.detector.fail_below = 9;
        assert_eq!(c.validate().unwrap_err().field, "detector.fail_below");
        let mut c = Config::new(3);
        c.pipeline_depth = 0;
        assert_eq!(c.validate().unwrap_err().field, "pipeline_depth");
        let mut c = Config::new(3);
        c.slot_size = 128;
        c.slot_count = 512;
        c.entry_slots_max = 129;
        assert_eq!(c.validate().unwrap_err().field, "entry_slots_max");
        let mut c = Config::new(3);
        c.permission_retry_ticks = c.op_timeout_ticks + 1;
        assert_eq!(c.validate().unwrap_err().field, "permission_retry_ticks");
        c.permission_retry_ticks = c.op_timeout_ticks;
        assert!(c.validate().is_ok(), "a retry as long as the timeout");
        let mut c = Config::new(3);
        c.detector.score_max = 255;
        c.detector.recover_above = 254;
        assert!(
            c.validate().is_ok(),
            "a saturating score handles the top of the range"
        );
    }

    #[test]
    fn hash_covers_fields() {
        let a = Config::new(3);
        let mut b = a;
        b.detector.read_period_ticks += 1;
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), Config::new(3).hash());
    }
}
