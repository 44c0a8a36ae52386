//! The owner's log permission: which peer may write this replica's log area, enforced by the
//! responder, and the handshake that makes `revoke` synchronous.
//!
//! The responder marks every permission-checked copy by making `serving` odd before it reads
//! `writers` and even again after the copy. `revoke` clears the writer's bit and then, if a copy
//! is under way, waits until it ends. With sequentially consistent accesses on both sides (a
//! Dekker handshake) either the copy saw the cleared bit, or `revoke` saw `serving` odd and
//! waited: once `revoke` returns, no write of that peer lands in the log again (the Fabric
//! contract, rule 5), whether the responder runs in the same loop or on another core.
//!
//! A revoke also fences what the peer posted before it: `revoke` records the peer's posted count
//! (its `fence`), and a write tagged below it fails even if a later grant lets the peer write
//! again: a write posted before a revoke never lands, as when a NIC resets the queue pair.
//!
//! # Invariants
//! - `serving` is odd exactly while a permission-checked copy is between its check and its end.
//! - `fences[peer]` only moves forward while the peer's generation stays the same.
//! - Only 32-bit atomics: the same code runs on 32-bit targets.

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};

use mu_nostd::config::REPLICAS_MAX;
use mu_nostd::ReplicaId;

use crate::ring::{self, Count};

/// Spins `revoke` tolerates before it declares the responder stuck. A copy is at most one
/// region's worth of bytes, so this bound is never reached by a responder that makes progress.
const REVOKE_SPINS_MAX: u32 = 1 << 30;

/// The log permission of one replica's region.
pub struct Permissions {
    writers: AtomicU32,
    serving: AtomicU32,
    /// Per peer: the count word of its log-writing ring when it was last revoked.
    fences: [AtomicU32; REPLICAS_MAX as usize],
}

impl Default for Permissions {
    fn default() -> Self {
        Self::new()
    }
}

impl Permissions {
    /// Nobody may write.
    pub const fn new() -> Permissions {
        Permissions {
            writers: AtomicU32::new(0),
            serving: AtomicU32::new(0),
            fences: [const { AtomicU32::new(0) }; REPLICAS_MAX as usize],
        }
    }

    /// Lets `peer` write the log area.
    pub fn grant(&self, peer: ReplicaId) {
        assert!(peer < 32);
        self.writers.fetch_or(1 << peer, SeqCst);
    }

    /// Stops `peer` writing the log area; returns once no copy of `peer` can land any more, and
    /// fences every request `peer` posted up to `posted` (its ring's count word now).
    pub fn revoke(&self, peer: ReplicaId, posted: Count) {
        assert!(peer < REPLICAS_MAX);
        self.writers.fetch_and(!(1 << peer), SeqCst);
        self.fences[peer as usize].store(posted.word(), SeqCst);
        let serving = self.serving.load(SeqCst);
        if serving % 2 == 0 {
            return;
        }
        for _ in 0..REVOKE_SPINS_MAX {
            if self.serving.load(SeqCst) != serving {
                return;
            }
            core::hint::spin_loop();
        }
        panic!("revoke: the responder stayed inside one copy for {REVOKE_SPINS_MAX} spins");
    }

    /// True when `peer` may write now.
    pub fn allows(&self, peer: ReplicaId) -> bool {
        peer < REPLICAS_MAX && self.writers.load(SeqCst) & (1 << peer) != 0
    }

    /// True when request `tag` of `peer` was posted before `peer`'s last revoke.
    fn fenced(&self, peer: ReplicaId, tag: Count) -> bool {
        let Some(fence) = Count::from_word(self.fences[peer as usize].load(SeqCst)) else {
            return false;
        };
        fence.generation == tag.generation
            && ring::distance(tag.count, fence.count).is_some_and(|ahead| ahead > 0)
    }

    /// Responder: runs `copy` of request `tag` if `peer` may write the log area and posted it
    /// after its last revoke; says which it was.
    pub fn checked_write(&self, peer: ReplicaId, tag: Count, copy: impl FnOnce()) -> Checked {
        assert!(peer < REPLICAS_MAX);
        let before = self.serving.fetch_add(1, SeqCst);
        assert!(before % 2 == 0, "nested permission-checked copies");
        let checked = if !self.allows(peer) {
            Checked::Denied
        } else if self.fenced(peer, tag) {
            Checked::Fenced
        } else {
            copy();
            Checked::Copied
        };
        let during = self.serving.fetch_add(1, SeqCst);
        assert!(during == before.wrapping_add(1));
        checked
    }
}

/// What [`Permissions::checked_write`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// The bytes were copied.
    Copied,
    /// The peer may not write the log: the request completes `Denied`.
    Denied,
    /// Posted before a revoke the peer has since been granted over: flushed, `Failed`.
    Fenced,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_and_revoke_switch_one_peer() {
        let p = Permissions::new();
        assert!(!p.allows(1));
        p.grant(1);
        p.grant(2);
        assert!(p.allows(1) && p.allows(2));
        let tag = |count| Count {
            generation: 5,
            count,
        };
        p.revoke(1, tag(10));
        assert!(!p.allows(1) && p.allows(2));
        let mut ran = false;
        assert_eq!(p.checked_write(1, tag(12), || ran = true), Checked::Denied);
        assert!(!ran);
        assert_eq!(p.checked_write(2, tag(3), || ran = true), Checked::Copied);
        assert!(ran);
        assert!(!p.allows(40));
        // Granted again: what was posted before the revoke stays fenced, what came after lands.
        p.grant(1);
        assert_eq!(p.checked_write(1, tag(9), || {}), Checked::Fenced);
        assert_eq!(p.checked_write(1, tag(10), || {}), Checked::Copied);
        let other_generation = Count {
            generation: 6,
            count: 0,
        };
        assert_eq!(p.checked_write(1, other_generation, || {}), Checked::Copied);
    }
}
