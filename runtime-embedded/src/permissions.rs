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
//! # Invariants
//! - `serving` is odd exactly while a permission-checked copy is between its check and its end.
//! - Only 32-bit atomics: the same code runs on 32-bit targets.

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};

use mu_nostd::ReplicaId;

/// Spins `revoke` tolerates before it declares the responder stuck. A copy is at most one
/// region's worth of bytes, so this bound is never reached by a responder that makes progress.
const REVOKE_SPINS_MAX: u32 = 1 << 30;

/// The log permission of one replica's region.
pub struct Permissions {
    writers: AtomicU32,
    serving: AtomicU32,
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
        }
    }

    /// Lets `peer` write the log area.
    pub fn grant(&self, peer: ReplicaId) {
        assert!(peer < 32);
        self.writers.fetch_or(1 << peer, SeqCst);
    }

    /// Stops `peer` writing the log area; returns once no copy of `peer` can land any more.
    pub fn revoke(&self, peer: ReplicaId) {
        assert!(peer < 32);
        self.writers.fetch_and(!(1 << peer), SeqCst);
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
        peer < 32 && self.writers.load(SeqCst) & (1 << peer) != 0
    }

    /// Responder: runs `copy` if `peer` may write the log area; returns whether it ran.
    pub fn checked_write(&self, peer: ReplicaId, copy: impl FnOnce()) -> bool {
        let before = self.serving.fetch_add(1, SeqCst);
        assert!(before % 2 == 0, "nested permission-checked copies");
        let allowed = self.allows(peer);
        if allowed {
            copy();
        }
        let during = self.serving.fetch_add(1, SeqCst);
        assert!(during == before.wrapping_add(1));
        allowed
    }
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
        p.revoke(1);
        assert!(!p.allows(1) && p.allows(2));
        let mut ran = false;
        assert!(!p.checked_write(1, || ran = true));
        assert!(!ran);
        assert!(p.checked_write(2, || ran = true));
        assert!(ran);
        assert!(!p.allows(40));
    }
}
