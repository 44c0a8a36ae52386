//! The shared window: one block of memory every firmware replica maps (an ivshmem BAR under
//! QEMU, a dual-ported RAM or a NIC's memory on a board) and the place of everything in it.
//!
//! ```text
//! offset 0        control block (64 B): words an operator or test harness writes
//! offset 64       telemetry[8] (128 B each): what each replica reports about itself
//! offset 4096     region[0], region[1], ...: each replica's Mu region (mu_nostd::layout),
//!                 each rounded up to 4 KiB
//! then            rings[sender][receiver][plane]: one work-request ring per ordered pair of
//!                 replicas and plane (see `ring`)
//! ```
//!
//! The layout lives in the `window-layout` crate, below this one and `board-configs` (which
//! checks a board file's window against it at build time); it is re-exported here unchanged.
//! Its invariants are that crate's.

pub use window_layout::{
    Plane, WindowError, WindowLayout, CONTROL_BYTES, REGION_ALIGN_BYTES, TELEMETRY_BLOCKS,
    TELEMETRY_BYTES,
};
