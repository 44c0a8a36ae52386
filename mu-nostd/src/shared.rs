//! The few words the two planes share. Each plane may run on its own core, so these are atomics
//! of 32 bits (the widest every target has).
//!
//! # Invariants
//! - `lead` is written only by the background plane; `acting`, `aborted`, `progress`, `halted`
//!   and `catching_up` only by the replication plane.
//! - Single writer of the own log (the step-down handshake): the background plane grants this
//!   replica's log to a peer only after it stored `lead = 0` and then read `acting == 0`; the
//!   replication plane writes its own log as leader only after it stored `acting = tenure` and
//!   then read that `lead` still carries `tenure`. Both sides use `SeqCst`, so at least one of
//!   them sees the other's store.
//! - Tenures are 24-bit, never 0.

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};

/// Bits of a tenure number.
pub const TENURE_MASK: u32 = 0x00FF_FFFF;

/// State shared by the replication plane and the background plane of one replica.
#[derive(Debug, Default)]
pub struct Shared {
    lead: AtomicU32,
    acting: AtomicU32,
    aborted: AtomicU32,
    alive: AtomicU32,
    lively: AtomicU32,
    leader: AtomicU32,
    progress: AtomicU32,
    halted: AtomicU32,
    catching_up: AtomicU32,
}

/// A leadership grant from the background plane: the tenure and the peers that acked it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Lead {
    /// The tenure (this replica's permission request number, truncated).
    pub tenure: u32,
    /// Replicas whose logs this replica may write in this tenure (itself included).
    pub confirmed: u8,
}

impl Shared {
    /// Fresh shared state: nobody leads, nobody is known alive.
    pub const fn new() -> Shared {
        Shared {
            lead: AtomicU32::new(0),
            acting: AtomicU32::new(0),
            aborted: AtomicU32::new(0),
            alive: AtomicU32::new(0),
            lively: AtomicU32::new(0),
            leader: AtomicU32::new(0),
            progress: AtomicU32::new(0),
            halted: AtomicU32::new(0),
            catching_up: AtomicU32::new(0),
        }
    }

    /// Background: publish (or withdraw, with `None`) this replica's leadership.
    pub(crate) fn set_lead(&self, lead: Option<Lead>) {
        let word = match lead {
            Some(l) => {
                assert!(l.tenure != 0 && l.tenure <= TENURE_MASK);
                (l.tenure << 8) | l.confirmed as u32
            }
            None => 0,
        };
        self.lead.store(word, SeqCst);
    }

    /// The current leadership grant, if any.
    pub fn lead(&self) -> Option<Lead> {
        let word = self.lead.load(SeqCst);
        if word == 0 {
            return None;
        }
        Some(Lead {
            tenure: word >> 8,
            confirmed: word as u8,
        })
    }

    /// Replication: start acting as leader of `tenure`. True when the background plane still
    /// grants it (see the handshake in the module invariants).
    pub(crate) fn start_acting(&self, tenure: u32) -> bool {
        self.acting.store(tenure, SeqCst);
        if self.lead().map(|l| l.tenure) == Some(tenure) {
            return true;
        }
        self.acting.store(0, SeqCst);
        false
    }

    /// Replication: stop acting as leader.
    pub(crate) fn stop_acting(&self) {
        self.acting.store(0, SeqCst);
    }

    /// Background: true when the replication plane is not writing its own log as leader.
    pub(crate) fn stood_down(&self) -> bool {
        self.acting.load(SeqCst) == 0
    }

    /// The tenure the replication plane acts on, if any.
    pub fn acting(&self) -> Option<u32> {
        match self.acting.load(SeqCst) {
            0 => None,
            t => Some(t),
        }
    }

    /// Replication: give up `tenure` (a write was denied); the background plane asks again.
    pub(crate) fn abort(&self, tenure: u32) {
        self.aborted.store(tenure, SeqCst);
    }

    /// The last tenure the replication plane gave up.
    pub(crate) fn aborted(&self) -> u32 {
        self.aborted.load(SeqCst)
    }

    /// Background: the detector's view of who is alive, who showed a moving heartbeat within
    /// the read timeout, and of the leader.
    pub(crate) fn set_view(&self, alive: u8, lively: u8, leader: Option<u8>) {
        self.alive.store(alive as u32, SeqCst);
        self.lively.store(lively as u32, SeqCst);
        self.leader
            .store(leader.map_or(0, |l| l as u32 + 1), SeqCst);
    }

    /// Replicas the failure detector considers alive (bit per id).
    pub fn alive(&self) -> u8 {
        self.alive.load(SeqCst) as u8
    }

    /// Replicas whose heartbeat was seen moving within the detector's read timeout (bit per id):
    /// a sign of life that does not wait for the hysteresis.
    pub fn lively(&self) -> u8 {
        self.lively.load(SeqCst) as u8
    }

    /// The replica this one considers leader (lowest id alive).
    pub fn leader(&self) -> Option<u8> {
        match self.leader.load(SeqCst) {
            0 => None,
            l => Some((l - 1) as u8),
        }
    }

    /// Replication: one more poll happened (fate sharing watches this).
    pub(crate) fn tick_progress(&self) {
        self.progress.fetch_add(1, SeqCst);
    }

    pub(crate) fn progress(&self) -> u32 {
        self.progress.load(SeqCst)
    }

    /// Replication: this replica can no longer take part (its log was lapped).
    pub(crate) fn halt(&self, reason: u32) {
        assert!(reason != 0);
        self.halted.store(reason, SeqCst);
    }

    /// Replication: this replica is installing a snapshot (it is no candidate for leadership
    /// meanwhile), or no longer.
    pub(crate) fn set_catching_up(&self, on: bool) {
        self.catching_up.store(on as u32, SeqCst);
    }

    /// True while the replica installs a snapshot from another replica.
    pub fn catching_up(&self) -> bool {
        self.catching_up.load(SeqCst) != 0
    }

    /// Nonzero when the replica halted; see [`crate::HALT_LAPPED`].
    pub fn halted(&self) -> u32 {
        self.halted.load(SeqCst)
    }
}
