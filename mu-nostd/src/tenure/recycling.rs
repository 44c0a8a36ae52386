//! Recycling: how far the fast path may write, and what a replica left a lap behind gets.
//!
//! The leader writes position `p` only when every replica showing a sign of life (a moving
//! heartbeat, or a rising applied position) has applied `p - slot_count` (it reads their
//! published applied positions every `recycle_period_ticks`, and at every poll while this holds
//! a queued command back, so that the command waits for their progress, not for a period); a
//! failed replica does not hold the log back. A replica that comes back more than a lap behind
//! gets no log writes (writing older positions over its slots could destroy values a newer
//! leader decided there) but a lap notice in its log header (under its grant, so a deposed
//! leader cannot write one), and installs a snapshot; it does not hold the log back either.
//!
//! # Invariants
//! - No position is written over one that a replica showing a sign of life has not applied.
//! - A lapped member gets no slot writes, only lap notices in its log header, under its grant.

use super::{Leading, MemberState, TAG_RECYCLE};
use crate::fabric::{Fabric, ReplicaId};
use crate::layout::RECORD_BYTES;
use crate::record;
use crate::wrid::Kind;

impl<const SLOT: usize, const ENTRY: usize, const QUEUE: usize>
    Leading<'_, '_, SLOT, ENTRY, QUEUE>
{
    /// What `propose` needs to know of the members, in one walk of them: which take writes
    /// whose acks count (active, counted and not lapped; bit per id), and the recycling limit.
    ///
    /// The limit is the first position that may not be written yet: one lap past the least
    /// applied position among this replica and every replica that shows a sign of life:
    /// considered alive, a heartbeat seen moving within the read timeout (a leader back from a
    /// partition still rates everyone low), or an applied position that rose within
    /// `op_timeout_ticks`. A lapped replica never holds the log back.
    pub(super) fn takers_and_limit(&self, now: u64) -> (u8, u64) {
        let leader = &*self.t;
        let alive = self.shared.alive() | self.shared.lively();
        let recent = self.log.config.op_timeout_ticks as u64;
        let mut least = self.log.applied;
        let mut takers = 0u8;
        for peer in self.log.others() {
            let (p, bit) = (peer as usize, 1 << peer);
            let member = &leader.members[p];
            if member.lapped {
                continue;
            }
            if member.state == MemberState::Active && leader.counted & bit != 0 {
                takers |= bit;
            }
            let applying = now.saturating_sub(leader.applied_moved_at[p]) <= recent;
            if alive & bit != 0 || applying {
                least = least.min(leader.applied_of[p]);
            }
        }
        let limit = least.saturating_add(self.log.config.slot_count as u64);
        (takers, limit)
    }

    /// Tells a lapped member, in its log header (never its slots), the lowest position
    /// from which this log can still send every position up to `next`; the member halts when
    /// that is above what it applied. Sent again every `recycle_period_ticks` while it stays a
    /// member: a lost or torn notice heals.
    pub(super) fn post_lap_notice<F: Fabric>(&mut self, now: u64, peer: ReplicaId, fabric: &mut F) {
        let leader = &*self.t;
        if now < leader.members[peer as usize].notice_at {
            return;
        }
        let applied = leader.applied_of[peer as usize];
        let floor = self.oldest_held(fabric);
        if applied >= floor {
            // Its applied position was stale: this log can serve it after all.
            let member = &mut self.t.members[peer as usize];
            member.lapped = false;
            member.resend_from(applied);
            return;
        }
        let remote = self.log.layout.lap_notice();
        let local = self.log.layout.outbox_lap_notice();
        fabric.store(local, &record::encode(remote, floor));
        if self.post(
            now,
            fabric,
            peer,
            Kind::WriteLapNotice,
            0,
            (0, 0),
            local,
            remote,
            RECORD_BYTES,
        ) {
            let period = self.log.config.recycle_period_ticks as u64;
            self.t.members[peer as usize].notice_at = now + period;
        }
    }

    /// The lowest position `q` such that the own log holds every position of `[q, next)`.
    ///
    /// The scan opens up to a lap of slots: on the fast path it runs once per tenure (a lapped
    /// member gets a notice every recycle period, and a lap of checksums each time would take
    /// the leader's polls from the commit path).
    fn oldest_held<F: Fabric>(&mut self, fabric: &mut F) -> u64 {
        let slot_count = self.log.config.slot_count as u64;
        let leader = &*self.t;
        let (next, streaming) = (leader.next, leader.fast_path());
        if let (true, Some(from)) = (streaming, leader.held_from) {
            return from.max(next.saturating_sub(slot_count));
        }
        let mut floor = next;
        while floor > 0 && next - floor < slot_count {
            if !self.log_holds(fabric, floor - 1, floor) {
                break;
            }
            floor -= 1;
        }
        if streaming {
            self.t.held_from = Some(floor);
        }
        floor
    }

    /// When `peer`, if it holds what it was sent without applying it, is taken for stuck
    /// (`resync_if_stuck`): `op_timeout_ticks` after its applied position last rose, or after
    /// the tenure started.
    #[inline]
    pub(super) fn repair_due_at(&self, peer: ReplicaId) -> u64 {
        let leader = &*self.t;
        let since = leader.applied_moved_at[peer as usize].max(leader.started_at);
        since.saturating_add(self.log.config.op_timeout_ticks as u64 + 1)
    }

    /// A member that holds what it was sent but does not apply it for `op_timeout_ticks` lost a
    /// slot (damaged, or a write dropped by a reset): send everything from its applied position
    /// again, if this log still holds it.
    pub(super) fn resync_if_stuck<F: Fabric>(&mut self, now: u64, peer: ReplicaId, fabric: &mut F) {
        let stuck = now >= self.repair_due_at(peer);
        let leader = &*self.t;
        let p = peer as usize;
        let (applied, member, next) = (leader.applied_of[p], leader.members[p], leader.next);
        // It cannot apply past what is decided: a member waiting for a decision lost nothing
        // (and a repair of it, counted as progress, would hide a tenure that decides nothing;
        // simulator seed 17601).
        if !stuck || member.lapped || applied >= member.sent.min(self.log.applied) {
            return;
        }
        debug_assert!(applied < next, "applied < sent <= next");
        let holds = applied >= self.oldest_held(fabric);
        let leader = &mut *self.t;
        let member = &mut leader.members[p];
        member.lapped = !holds;
        if holds {
            member.resend_from(applied);
        }
        member.commit_sent = 0;
        leader.applied_moved_at[p] = now;
        // A repair under way is progress: give it a timeout before calling the tenure stalled
        // (only for a member whose acks count: repairing another one decides nothing).
        if leader.counted & (1 << peer) != 0 {
            leader.progress_at = now;
        }
    }

    /// Every `recycle_period_ticks` (off the fast path's polls in between), and at the end of a
    /// poll whose `propose` recycling held back: reads the applied positions, admits recovered
    /// members (their applied positions change only through these reads) and recounts members
    /// that joined recovering.
    // Inlined into its one caller, `lead`: its check runs at every leader poll (see
    // `mu-bench instructions`).
    #[inline(always)]
    pub(super) fn tend_members<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let period = self.log.config.recycle_period_ticks as u64;
        if now < self.t.recycle_at {
            return;
        }
        self.t.recycle_at = now + period;
        self.read_applied_positions(now, fabric);
        self.admit_recovered(now, fabric);
        self.recount_late_members(now, fabric);
    }

    /// Reads the applied position of every replica considered alive and of every active member.
    fn read_applied_positions<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let alive = self.shared.alive() | self.shared.lively();
        let active = self.active_members();
        for peer in self.log.others() {
            let wanted = (alive | active) & (1 << peer) != 0;
            if !wanted || self.t.members[peer as usize].recycle_read {
                continue;
            }
            let (local, remote) = (
                self.log.layout.landing_applied(peer),
                self.log.layout.applied(),
            );
            if self.post(
                now,
                fabric,
                peer,
                Kind::ReadApplied,
                TAG_RECYCLE,
                (0, 0),
                local,
                remote,
                RECORD_BYTES,
            ) {
                self.t.members[peer as usize].recycle_read = true;
            }
        }
    }
}
