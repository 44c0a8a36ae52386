//! The `Board` trait: what a board gives the runtime.
//!
//! - a tick source: a free-running counter and its frequency (the core's ticks are derived from
//!   it with the cluster's `tick_ns`);
//! - the shared window, which holds the replica's region and carries the fabric (an ivshmem BAR
//!   under QEMU, RAM for a single-node board);
//! - the replica's identity (from the board's straps, EEPROM or boot arguments);
//! - the end of the road: `halt`, after the fail-safe stopped the heartbeat.
//!
//! The console is the `defmt` global logger, which the board binary installs: the runtime logs
//! through `defmt` and never picks the logger itself.

use mu_nostd::ReplicaId;

use crate::words::Words;

/// Why the firmware stopped, as an exit or reset code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ExitCode {
    /// Finished as asked and reported.
    Finished = 0,
    /// The fail-safe caught a panic.
    Panic = 101,
    /// The replica could not start: window, configuration or identity.
    Start = 102,
    /// The self-test found a wrong result.
    SelfTest = 103,
    /// The CPU took a fault (an exception the board does not handle).
    Fault = 104,
}

/// A board the firmware runs on.
pub trait Board {
    /// A free-running, monotonic counter.
    fn counter(&self) -> u64;
    /// Counts per second of [`Board::counter`].
    fn counter_hz(&self) -> u64;
    /// The shared window: every replica's region, the rings, control and telemetry.
    fn window(&self) -> Words<'static>;
    /// This replica's id.
    fn replica_id(&self) -> ReplicaId;
    /// Stops the board for good (reset, power off, or leave the emulator with `code`).
    fn halt(&mut self, code: ExitCode) -> !;
}
