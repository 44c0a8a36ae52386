//! The few words the two planes share. Each plane may run on its own core, so these are atomics
//! of 32 bits (the widest every target has).
//!
//! # Invariants
//! - `lead` and the view (`alive`, `lively`, `leader`) are written only by the background
//!   plane; `acting`, `aborted`, `progress`, `halted`, `catching_up` and the transfer request
//!   words only by the replication plane.
//! - The transfer request (donor, nonce, chunk wanted) is published under a sequence word that
//!   is odd while it is being written and never 0 once published: a reader that sees the same
//!   even sequence before and after reading the other words read one whole request.
//! - Single writer of the own log (the step-down handshake): the background plane grants this
//!   replica's log to a peer only after it stored `lead = 0` and then read `acting == 0`; the
//!   replication plane writes its own log as leader only after it stored `acting = tenure` and
//!   then read that `lead` still carries `tenure`. Both sides use `SeqCst`, so at least one of
//!   them sees the other's store.
//! - Tenures are 24-bit, never 0.

use core::sync::atomic::{
    AtomicU32,
    Ordering::{Relaxed, Release, SeqCst},
};

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
    request_seq: AtomicU32,
    request_donor: AtomicU32,
    request_nonce: AtomicU32,
    request_wanted: AtomicU32,
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
            request_seq: AtomicU32::new(0),
            request_donor: AtomicU32::new(0),
            request_nonce: AtomicU32::new(0),
            request_wanted: AtomicU32::new(0),
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
    #[inline]
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
        store_changed(&self.alive, alive as u32);
        store_changed(&self.lively, lively as u32);
        store_changed(&self.leader, leader.map_or(0, |l| l as u32 + 1));
    }

    /// Replicas the failure detector considers alive (bit per id).
    #[inline]
    pub fn alive(&self) -> u8 {
        self.alive.load(SeqCst) as u8
    }

    /// Replicas whose heartbeat or applied position was seen moving within the detector's read
    /// timeout (bit per id):
    /// a sign of life that does not wait for the hysteresis.
    #[inline]
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
        // Its one writer needs no read-modify-write: a plain store keeps a locked instruction
        // off every poll. The background plane only compares it with what it saw before.
        let next = self.progress.load(Relaxed).wrapping_add(1);
        self.progress.store(next, Release);
    }

    pub(crate) fn progress(&self) -> u32 {
        self.progress.load(SeqCst)
    }

    /// Replication: this replica can no longer take part (its log was lapped).
    pub(crate) fn halt(&self, reason: crate::Halt) {
        assert!(reason.code() != 0);
        self.halted.store(reason.code(), SeqCst);
    }

    /// Replication: this replica is installing a snapshot (it is no candidate for leadership
    /// meanwhile), or no longer.
    pub(crate) fn set_catching_up(&self, on: bool) {
        self.catching_up.store(on as u32, SeqCst);
    }

    /// Replication: hands a transfer request (`value`: nonce and chunk wanted) for `donor` to
    /// the background plane, which writes it into the donor's background area. A joiner does
    /// not hold the donor's grant, and on a fabric whose grant gates every write of the
    /// replication plane (verbs access flags) only the background plane may write there.
    pub(crate) fn publish_transfer_request(&self, donor: u8, value: u64) {
        let seq = self.request_seq.load(SeqCst);
        assert!(seq % 2 == 0, "one writer");
        self.request_seq.store(seq.wrapping_add(1), SeqCst);
        self.request_donor.store(donor as u32, SeqCst);
        self.request_nonce.store((value >> 32) as u32, SeqCst);
        self.request_wanted.store(value as u32, SeqCst);
        let next = seq.wrapping_add(2);
        self.request_seq
            .store(if next == 0 { 2 } else { next }, SeqCst);
    }

    /// Background: the last transfer request published (its sequence, donor and value), if one
    /// was, its sequence is not `known` (the idle poll's answer, in one load), and it was not
    /// being rewritten meanwhile.
    pub(crate) fn transfer_request(&self, known: u32) -> Option<(u32, u8, u64)> {
        let seq = self.request_seq.load(SeqCst);
        if seq == known || seq == 0 || seq % 2 == 1 {
            return None;
        }
        let donor = self.request_donor.load(SeqCst) as u8;
        let value = (self.request_nonce.load(SeqCst) as u64) << 32
            | self.request_wanted.load(SeqCst) as u64;
        (self.request_seq.load(SeqCst) == seq).then_some((seq, donor, value))
    }

    /// True while the replica installs a snapshot from another replica.
    pub fn catching_up(&self) -> bool {
        self.catching_up.load(SeqCst) != 0
    }

    /// Why the replica halted, once it did.
    pub fn halted(&self) -> Option<crate::Halt> {
        crate::Halt::from_code(self.halted.load(SeqCst))
    }
}

/// Stores `value` into a word this side alone writes, unless it holds it already: the view is
/// set on every background poll and read on every replication poll, and an unchanged store
/// would still take the cache line from the reader's core.
fn store_changed(word: &AtomicU32, value: u32) {
    if word.load(Relaxed) != value {
        word.store(value, SeqCst);
    }
}
