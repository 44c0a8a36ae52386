//! What each replica reports in the window, and what an operator or test harness asks of it: the
//! only interface a firmware replica has besides its console, readable from the host side of a
//! shared window (`/dev/shm/...` under QEMU) while the replicas run.
//!
//! ```text
//! control (window offset 0, written by the harness):
//!   word 0 stop  1 finish  2 panic  3 start  4-11 life of replica 0-7 (top bit: it ended)
//! telemetry[id] (128 B, written by replica id only):
//!   word 0 magic  1 phase  2 loops  3 leader + 1  4 flags  5-6 applied  7-8 applied chain
//!   9-10 state digest  11-12 committed by this replica as leader  13 leader changes  14 code
//!   15 halt reason  16 snapshots installed  17-18 position of the last one  19-20 bytes
//!   installed  21 snapshots donated  22 peers failed on a notice of their end  23 peers
//!   suspected wrongly  24 slots refused torn  25 slots refused unchained  26-27 blocked at + 1
//!   28 blocked why | refused peers << 8  29 lap notices  30 transfers started  31 permission
//!   switches
//! ```
//!
//! Words 24 to 31 are the counters that explain trouble, as `mu serve`'s `INFO` and `mu status`
//! show them on Linux (`mu_nostd::Refusals`, `mu_nostd::Blocked`, the background plane's
//! permission switches and refused peers).
//!
//! 64-bit values are two little-endian words written one after the other: a reader that needs
//! them exact reads twice and keeps a value it saw twice.
//!
//! # Invariants
//! - A replica writes only its own block; the harness only the control block.

use core::sync::atomic::Ordering::{Acquire, Release};

use crate::window::WindowLayout;
use crate::words::Words;
use mu_nostd::ReplicaId;

/// Marks a block a replica has written.
pub const MAGIC: u32 = 0x4D55_4657; // "MUFW"

/// Telemetry words (index into the block).
pub mod word {
    /// [`super::MAGIC`] once the replica booted.
    pub const MAGIC: usize = 0;
    /// One of the `PHASE_*` values.
    pub const PHASE: usize = 1;
    /// Run-loop passes, wrapping: advances while the replica runs.
    pub const LOOPS: usize = 2;
    /// The leader this replica sees, plus one; 0 for none.
    pub const LEADER: usize = 3;
    /// [`super::FLAG_LEADING`].
    pub const FLAGS: usize = 4;
    /// Positions applied (64-bit).
    pub const APPLIED: usize = 5;
    /// Chain digest of the applied log prefix (64-bit).
    pub const CHAIN: usize = 7;
    /// Digest of the application state (64-bit).
    pub const DIGEST: usize = 9;
    /// Commands this replica committed while it led (64-bit).
    pub const COMMITTED: usize = 11;
    /// Times the leader this replica sees changed to another replica.
    pub const LEADER_CHANGES: usize = 13;
    /// Why it failed (`PHASE_FAILED`): one of the `CODE_*` values.
    pub const CODE: usize = 14;
    /// Why its replication plane halted ([`super::FLAG_HALTED`]): the core's reason,
    /// [`mu_nostd::Halt::code`].
    pub const HALT: usize = 15;
    /// Snapshots this life of the replica installed (state transfers it took part in as joiner).
    pub const INSTALLS: usize = 16;
    /// The position the last snapshot installed covers (64-bit).
    pub const INSTALLED_POSITION: usize = 17;
    /// Bytes of every snapshot installed (64-bit).
    pub const INSTALLED_BYTES: usize = 19;
    /// Snapshots this replica froze for a joiner (state transfers it served as donor).
    pub const DONATIONS: usize = 21;
    /// Peers this replica failed at once because the control block said their life ended.
    pub const DEATHS: usize = 22;
    /// Peers this replica declared failed by suspicion that turned out alive.
    pub const FALSE_SUSPICIONS: usize = 23;
    /// Slots its replays stopped at because their value did not open, once per slot.
    pub const SLOTS_TORN: usize = 24;
    /// Slots its replays stopped at because they did not chain, once per slot.
    pub const SLOTS_UNCHAINED: usize = 25;
    /// The position its replay is blocked at, plus one; 0: none (64-bit).
    pub const BLOCKED_AT: usize = 26;
    /// Low byte: why it is blocked (`mu_nostd::Blocked::code`, 0 none); next byte: the peers
    /// it refuses (bit per id).
    pub const BLOCKED_WHY_REFUSED: usize = 28;
    /// Lap notices it took.
    pub const LAP_NOTICES: usize = 29;
    /// State transfers it started (each attempt).
    pub const TRANSFERS: usize = 30;
    /// Grants of its log to a new tenure it made.
    pub const PERMISSION_SWITCHES: usize = 31;
}

/// Words in a block.
pub const WORDS: usize = (crate::window::TELEMETRY_BYTES / 4) as usize;

const _: () = assert!(word::PERMISSION_SWITCHES < WORDS);

/// Booting.
pub const PHASE_BOOTING: u32 = 0;
/// Replicating.
pub const PHASE_RUNNING: u32 = 1;
/// Finished on request and reported.
pub const PHASE_FINISHED: u32 = 2;
/// Stopped by the fail-safe (panic or fatal error).
pub const PHASE_FAILED: u32 = 3;

/// Leads on the fast path.
pub const FLAG_LEADING: u32 = 1;
/// Replication halted for good, for the reason in [`word::HALT`]: the replica still runs its
/// background plane but no longer applies anything.
pub const FLAG_HALTED: u32 = 2;
/// This life of the replica is a voter: admitted by a leader, or formed the cluster. A restarted
/// replica is recovering until a leader admits it.
pub const FLAG_VOTER: u32 = 4;
/// Installing a snapshot from another replica.
pub const FLAG_CATCHING_UP: u32 = 8;

/// Control words.
pub mod control {
    /// Nonzero: the leader stops submitting new commands (the cluster drains).
    pub const STOP: usize = 0;
    /// Nonzero: every replica reports and ends.
    pub const FINISH: usize = 1;
    /// Fault injection, to test the fail-safe: the replica whose id plus one is written here
    /// panics.
    pub const PANIC: usize = 2;
    /// Nonzero: a leader may submit the workload. In a cluster the harness sets it once every
    /// replica booted, so that none starts a whole log behind (the single-node self-test
    /// ignores it).
    pub const START: usize = 3;
    /// `LIVES + id`: the life of replica `id`, written by whoever starts and stops it (the
    /// harness under QEMU, a supervisor or watchdog on a board). Before the replica boots: its
    /// incarnation, rising from 1 across restarts (0: nobody numbers its lives). Once its VM or
    /// board certainly stopped: the same incarnation with [`super::LIFE_ENDED`] set, which its
    /// peers take as a certain death (`Fabric::ended_life`).
    pub const LIVES: usize = 4;
}

/// The bit of a life word that says the life ended.
pub const LIFE_ENDED: u32 = 1 << 31;

/// The control word that holds replica `id`'s life.
pub fn life_word(id: ReplicaId) -> usize {
    assert!(id < 8);
    control::LIVES + usize::from(id)
}

/// Replica `id`'s life as the control block of `window` says: its incarnation, and whether it
/// ended.
pub fn life(window: Words<'_>, id: ReplicaId) -> (u32, bool) {
    let word = control_word(window, life_word(id));
    (word & !LIFE_ENDED, word & LIFE_ENDED != 0)
}

/// The block of one replica in a window.
#[derive(Clone, Copy)]
pub struct Telemetry<'w> {
    window: Words<'w>,
    base: usize,
}

impl<'w> Telemetry<'w> {
    /// Replica `id`'s block.
    pub fn new(window: Words<'w>, layout: &WindowLayout, id: ReplicaId) -> Telemetry<'w> {
        let base = layout.telemetry(id) as usize;
        assert!(window.fits(base, WORDS * 4));
        Telemetry { window, base }
    }

    /// Writes one word.
    pub fn set(&self, index: usize, value: u32) {
        assert!(index < WORDS);
        self.window
            .word(self.base + 4 * index)
            .store(value, Release);
    }

    /// Writes a 64-bit value at `index`, `index + 1`.
    pub fn set_u64(&self, index: usize, value: u64) {
        self.set(index, value as u32);
        self.set(index + 1, (value >> 32) as u32);
    }
}

/// Reads a control word of `window`.
pub fn control_word(window: Words<'_>, index: usize) -> u32 {
    assert!(index < 16);
    window.word(4 * index).load(Acquire)
}

/// Writes a control word of `window`.
pub fn set_control_word(window: Words<'_>, index: usize, value: u32) {
    assert!(index < 16);
    window.word(4 * index).store(value, Release);
}
