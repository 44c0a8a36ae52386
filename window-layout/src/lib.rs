#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # window-layout: where everything lives in a Mu firmware cluster's shared window
//!
//! The shared window is one block of memory every firmware replica maps (an ivshmem BAR under
//! QEMU, a dual-ported RAM or a NIC's memory on a board):
//!
//! ```text
//! offset 0        control block (64 B): words an operator or test harness writes
//! offset 64       telemetry[8] (128 B each): what each replica reports about itself
//! offset 4096     region[0], region[1], ...: each replica's Mu region (mu_nostd::layout),
//!                 each rounded up to 4 KiB
//! then            rings[sender][receiver][plane]: one work-request ring per ordered pair of
//!                 replicas and plane (their format: `runtime_embedded::ring`)
//! ```
//!
//! The layout is computed from the cluster configuration alone, so every replica, the host
//! tooling, and the build script that checks a board file agree on it. This crate holds just
//! that: the layout, the ring geometry it needs ([`ring`]) and the firmware's buffer sizes a
//! board file is checked against ([`firmware`]). It sits below both `runtime-embedded` (the
//! firmware, which re-exports it as `runtime_embedded::window`) and `board-configs` (which
//! checks board files at build time), so the build-time checker does not depend on the
//! firmware runtime. `no_std`, no heap, no `unsafe`.
//!
//! # Invariants
//! - The control block, the telemetry blocks, the regions and the rings do not overlap and appear
//!   in that order; regions start on 4 KiB boundaries, rings on 64-byte boundaries.
//! - Every offset fits `u32` and the whole window fits `u64` (checked by [`WindowLayout::new`]).

use mu_nostd::layout::Layout;
use mu_nostd::{Config, ReplicaId};

/// The geometry of one work-request ring: what the window layout needs of it. The ring's format
/// and protocol are `runtime_embedded::ring`'s.
pub mod ring {
    /// Requests a sender may have outstanding per ring; a power of two that divides `1 << 16`.
    pub const RING_DEPTH: u32 = 32;
    /// Bytes of one entry.
    pub const ENTRY_BYTES: u32 = 32;
    /// Bytes of the ring header: the two count words, on separate 64-byte lines.
    pub const HEADER_BYTES: u32 = 128;
    /// Bytes of one ring.
    pub const RING_BYTES: u32 = HEADER_BYTES + RING_DEPTH * ENTRY_BYTES;

    const _: () = assert!(RING_DEPTH.is_power_of_two() && (1 << 16) % RING_DEPTH == 0);
    const _: () = assert!(RING_BYTES % 64 == 0);
}

/// The firmware's buffer sizes (`runtime_embedded::run`), which bound what a firmware cluster's
/// configuration may ask for: a board file is checked against them at build time.
pub mod firmware {
    /// Bytes of the slot buffer: the largest `slot_size` a firmware cluster may use.
    pub const SLOT_BYTES: usize = 256;
    /// Bytes of the entry buffer: the largest command.
    pub const ENTRY_BYTES: usize = 1024;
}

/// Regions start on this boundary (a page: a board may map or protect them separately).
pub const REGION_ALIGN_BYTES: u64 = 4096;
/// Bytes of the control block at the start of the window.
pub const CONTROL_BYTES: u64 = 64;
/// Bytes of one replica's telemetry block.
pub const TELEMETRY_BYTES: u64 = 128;
/// Telemetry blocks reserved, one per possible replica id.
pub const TELEMETRY_BLOCKS: u64 = 8;

/// The two planes (the core's vocabulary); each has its own connections, so its own rings.
pub use mu_nostd::fabric::Plane;

/// Why a configuration has no window layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WindowError {
    /// The configuration does not validate.
    Config(mu_nostd::ConfigError),
    /// The window would need offsets beyond `u32`.
    TooLarge {
        /// Bytes it would need.
        bytes: u64,
    },
}

impl core::fmt::Display for WindowError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WindowError::Config(e) => write!(f, "invalid configuration: {e}"),
            WindowError::TooLarge { bytes } => {
                write!(
                    f,
                    "the window would need {bytes} bytes, beyond 32-bit offsets"
                )
            }
        }
    }
}

/// Where everything lives in the shared window of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowLayout {
    /// The region layout (identical for every replica).
    pub region: Layout,
    /// Replicas in the cluster.
    pub replica_count: u8,
    /// Distance between two regions: the region size rounded up to [`REGION_ALIGN_BYTES`].
    pub region_stride: u32,
    /// Offset of the first ring.
    pub rings: u32,
    /// Bytes the window must have.
    pub bytes: u64,
}

impl WindowLayout {
    /// The layout for `config`, which must validate.
    pub fn new(config: &Config) -> Result<WindowLayout, WindowError> {
        config.validate().map_err(WindowError::Config)?;
        let region = Layout::new(config);
        let n = u64::from(config.replica_count);
        let stride = round_up(u64::from(region.region_bytes), REGION_ALIGN_BYTES);
        let rings = REGION_ALIGN_BYTES + n * stride;
        let bytes = rings + n * n * 2 * ring::RING_BYTES as u64;
        if bytes > u64::from(u32::MAX) {
            return Err(WindowError::TooLarge { bytes });
        }
        let layout = WindowLayout {
            region,
            replica_count: config.replica_count,
            region_stride: stride as u32,
            rings: rings as u32,
            bytes,
        };
        assert!(layout.region_stride >= region.region_bytes);
        assert!(layout.rings % 64 == 0);
        Ok(layout)
    }

    /// Offset of replica `id`'s region.
    pub fn region(&self, id: ReplicaId) -> u32 {
        assert!(id < self.replica_count);
        REGION_ALIGN_BYTES as u32 + u32::from(id) * self.region_stride
    }

    /// Offset of the ring that carries `sender`'s work requests on `plane` to `receiver`.
    pub fn ring(&self, sender: ReplicaId, receiver: ReplicaId, plane: Plane) -> u32 {
        assert!(sender < self.replica_count);
        assert!(receiver < self.replica_count);
        let n = u32::from(self.replica_count);
        let index = (u32::from(sender) * n + u32::from(receiver)) * 2 + plane as u32;
        self.rings + index * ring::RING_BYTES
    }

    /// The parts of the window that hold replica `id`'s life, as (offset, bytes): its telemetry
    /// block, its region, and every ring it posts on or serves. A new life of `id` starts with
    /// them zeroed: a fresh region (no log, no promise, standing "recovering"), and no request
    /// of or to an earlier life left to complete (a peer's completes `Failed` or never, and the
    /// peer reconnects).
    pub fn parts_of(&self, id: ReplicaId) -> impl Iterator<Item = (u32, u32)> + '_ {
        let own = [
            (self.telemetry(id), TELEMETRY_BYTES as u32),
            (self.region(id), self.region_stride),
        ];
        let rings = (0..self.replica_count)
            .filter(move |&peer| peer != id)
            .flat_map(move |peer| {
                [Plane::Replication, Plane::Background]
                    .into_iter()
                    .flat_map(move |plane| [self.ring(id, peer, plane), self.ring(peer, id, plane)])
            })
            .map(|ring| (ring, ring::RING_BYTES));
        own.into_iter().chain(rings)
    }

    /// Offset of replica `id`'s telemetry block.
    pub fn telemetry(&self, id: ReplicaId) -> u32 {
        assert!(u64::from(id) < TELEMETRY_BLOCKS);
        (CONTROL_BYTES + u64::from(id) * TELEMETRY_BYTES) as u32
    }
}

const _: () = assert!(CONTROL_BYTES + TELEMETRY_BLOCKS * TELEMETRY_BYTES <= REGION_ALIGN_BYTES);

const fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::vec::Vec;

    #[test]
    fn parts_do_not_overlap() {
        let config = Config::new(3);
        let w = WindowLayout::new(&config).unwrap();
        assert_eq!(w.region(0), 4096);
        assert!(w.region(1) >= w.region(0) + w.region.region_bytes);
        assert!(w.rings >= w.region(2) + w.region.region_bytes);
        assert_eq!(w.ring(0, 0, Plane::Replication), w.rings);
        let last = w.ring(2, 2, Plane::Background);
        assert_eq!(u64::from(last + ring::RING_BYTES), w.bytes);
        assert!(w.telemetry(7) as u64 + TELEMETRY_BYTES <= REGION_ALIGN_BYTES);
    }

    #[test]
    fn the_parts_of_a_replica_are_its_own() {
        let w = WindowLayout::new(&Config::new(3)).unwrap();
        let parts = |id| w.parts_of(id).collect::<Vec<_>>();
        // Telemetry, region, and 2 planes x 2 directions x 2 peers of rings.
        assert_eq!(parts(1).len(), 2 + 8);
        assert!(parts(1).contains(&(w.region(1), w.region_stride)));
        for (a, b) in [(0, 1), (1, 2), (0, 2)] {
            // Two replicas share only the rings between them.
            let shared: Vec<_> = parts(a)
                .into_iter()
                .filter(|p| parts(b).contains(p))
                .collect();
            assert_eq!(shared.len(), 4);
            assert!(shared
                .iter()
                .all(|&(at, len)| at >= w.rings && len == ring::RING_BYTES));
        }
        let end = parts(2).iter().map(|&(at, len)| u64::from(at + len)).max();
        assert!(end <= Some(w.bytes));
    }

    #[test]
    fn invalid_or_huge_configurations_have_no_layout() {
        let mut bad = Config::new(3);
        bad.slot_size = 100;
        assert!(matches!(
            WindowLayout::new(&bad),
            Err(WindowError::Config(_))
        ));
        let mut huge = Config::new(7);
        huge.slot_count = 1 << 24;
        huge.slot_size = 1024;
        assert!(matches!(
            WindowLayout::new(&huge),
            Err(WindowError::TooLarge { .. }) | Err(WindowError::Config(_))
        ));
    }
}
