//! Survey and catch-up (phases 1 to 3): the replicas that granted the tenure report their
//! applied positions; a majority of them, this replica included, is needed. If one is ahead,
//! this replica first reads the decided slots it lacks from the most advanced one straight into
//! its own log (keeping its own copies' ballots in their adoption records, since a read cut
//! short could tear them), checks that they chain, and applies them. Then the surveyed members
//! become active: each is sent everything from its applied position. A member that joins later
//! goes through the same path, and has its promises checked first.
//!
//! # Invariants
//! - Members are opened only once this replica's log holds every decided position a surveyed
//!   member applied: a member ahead of it dooms the tenure (a new survey catches up from it).
//! - The own log ships only slots that open whole (`log_holds`): a torn own copy is never sent
//!   as if it were the value.

use super::{
    ring_pieces, Leading, MemberState, Phase, CATCH_UP_APPLY_BATCH, MARKED_REWRITES, TAG_RECYCLE,
    TAG_SURVEY,
};
use crate::fabric::{Fabric, ReplicaId};
use crate::layout::{PROMISE_BYTES, RECORD_BYTES};
use crate::log::Source;
use crate::record;
use crate::slot::{self, SlotError};
use crate::state_machine::StateMachine;
use crate::wrid::Kind;

impl<const SLOT: usize, const ENTRY: usize, const QUEUE: usize>
    Leading<'_, '_, SLOT, ENTRY, QUEUE>
{
    /// Confirmed followers (and lost ones, after a pause) are asked for their applied position.
    // Inlined into its one caller, `lead`: its check runs at every leader poll (see
    // `mu-bench instructions`).
    #[inline(always)]
    pub(super) fn admit_members<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        // To survey, or surveyed and waiting to be activated below.
        let waiting = |state: &MemberState| {
            matches!(
                state,
                MemberState::Absent
                    | MemberState::Joining
                    | MemberState::Lost { .. }
                    | MemberState::Surveyed { .. }
            )
        };
        let members = &self.t.members;
        if !self
            .log
            .others()
            .any(|peer| waiting(&members[peer as usize].state))
        {
            return; // Every member is being surveyed or active: the common poll.
        }
        let confirmed = self.shared.lead().map_or(0, |l| l.confirmed);
        for peer in self.log.others() {
            let state = self.t.members[peer as usize].state;
            let wants_survey = match state {
                MemberState::Absent => confirmed & (1 << peer) != 0,
                MemberState::Joining => true,
                MemberState::Lost { retry_at } => now >= retry_at,
                _ => false,
            };
            if !wants_survey {
                continue;
            }
            let (local, remote) = (
                self.log.layout.landing_applied(peer),
                self.log.layout.applied(),
            );
            let posted = self.post(
                now,
                fabric,
                peer,
                Kind::ReadApplied,
                TAG_SURVEY,
                (0, 0),
                local,
                remote,
                RECORD_BYTES,
            );
            self.t.members[peer as usize].state = if posted {
                MemberState::Surveying
            } else {
                MemberState::Joining
            };
        }
        if self.t.members_open() {
            self.activate_surveyed(now, fabric, true);
        }
    }

    /// Surveyed members become active: they will be sent everything from their applied position.
    /// A member that joins after the prepare was posted (`late`) is checked first: its
    /// min-proposal records must not hold a ballot above this tenure's, or a newer leader has
    /// prepared there and may have decided values this tenure never saw.
    fn activate_surveyed<F: Fabric>(&mut self, now: u64, fabric: &mut F, late: bool) {
        for peer in self.log.others() {
            let leader = &*self.t;
            let (state, next) = (leader.members[peer as usize].state, leader.next);
            let MemberState::Surveyed { applied } = state else {
                continue;
            };
            if applied > self.log.applied {
                // It applied positions this leader has not: they are decided. While streaming,
                // another leader holds the grants; while preparing, this tenure would rewrite
                // (adopt) positions a member already applied, and a revoke tearing such a rewrite
                // destroys a copy that a lagging replica may need. Either way: a new tenure, whose
                // survey waits for this member and catches up from it.
                self.t.ahead = Some(peer);
                self.doom();
                return;
            }
            let from = applied.min(next);
            // It needs [from, next): if the own log no longer holds all of it, the member needs
            // a state transfer.
            let lapped = !self.log_holds(fabric, from, next);
            let member = &mut self.t.members[peer as usize];
            member.lapped = lapped;
            member.resend_from(from);
            member.commit_sent = 0; // A reset may have dropped the last commit record write.
            if !late {
                member.state = MemberState::Active;
                continue;
            }
            let (local, remote) = (
                self.log.layout.landing_promises(peer),
                self.log.layout.min_proposal(),
            );
            let range = (0, 0);
            let len = PROMISE_BYTES;
            if self.post(
                now,
                fabric,
                peer,
                Kind::ReadMinProposal,
                0,
                range,
                local,
                remote,
                len,
            ) {
                self.t.members[peer as usize].state = MemberState::Checking;
            }
        }
    }

    /// True when the own log holds every position of `[from, to)`. Not only `[to - slot_count,
    /// to)` may be missing: a tenure that proposed past its commit point (and then lost its
    /// grants) overwrote older slots with positions that were never decided.
    pub(super) fn log_holds<F: Fabric>(&mut self, fabric: &mut F, from: u64, to: u64) -> bool {
        if to - from > self.log.config.slot_count as u64 {
            return false;
        }
        // The whole slot must open, its header vouched for: a torn copy in the own log must
        // never be shipped as if it were the value.
        (from..to).all(|position| self.log.open_vouched(fabric, position).is_ok())
    }

    pub(super) fn complete_applied_read<F: Fabric>(
        &mut self,
        now: u64,
        peer: ReplicaId,
        tag: u32,
        ok: bool,
        fabric: &mut F,
    ) {
        let mut bytes = [0u8; RECORD_BYTES as usize];
        fabric.load(self.log.layout.landing_applied(peer), &mut bytes);
        let value = if ok {
            record::decode(self.log.layout.applied(), &bytes)
        } else {
            None
        };
        let leader = &mut *self.t;
        let member = &mut leader.members[peer as usize];
        if tag == TAG_RECYCLE {
            member.recycle_read = false;
        }
        let surveying = tag == TAG_SURVEY && member.state == MemberState::Surveying;
        if let Some(applied) = value {
            // A survey follows a reset connection, which a restart of the member causes: its
            // applied position may have gone back.
            if applied > leader.applied_of[peer as usize] || surveying {
                leader.applied_of[peer as usize] = applied;
                leader.applied_moved_at[peer as usize] = now;
            }
        }
        if !surveying {
            return;
        }
        match (ok, value) {
            (true, Some(applied)) => member.state = MemberState::Surveyed { applied },
            (true, None) => member.state = MemberState::Joining, // Torn: read again.
            _ => self.reset_connection(now, peer, fabric),
        }
    }

    pub(super) fn step_survey<F: Fabric>(&mut self, now: u64, fabric: &mut F, late: bool) {
        let leader = &*self.t;
        let mut surveyed = 0u8;
        let mut best: Option<(u64, ReplicaId)> = None;
        for peer in self.log.others() {
            if let MemberState::Surveyed { applied } = leader.members[peer as usize].state {
                surveyed |= 1 << peer;
                if best.is_none_or(|(a, _)| applied > a) {
                    best = Some((applied, peer));
                }
            }
        }
        if !self.quorum_with(surveyed) {
            if late {
                self.doom();
            }
            return;
        }
        // The member that ended the last tenure by being ahead answers before the survey goes
        // on, or it would end this one the same way, and every later one that it answers late.
        if let Some(peer) = leader.awaited {
            if surveyed & (1 << peer) == 0 && !late {
                return;
            }
        }
        match best {
            Some((upto, source)) if upto > self.log.applied => {
                self.catch_up_self(now, upto, source, fabric)
            }
            _ => self.open_members(now, fabric),
        }
    }

    /// Reads the decided slots `[applied, upto)` from `source` straight into this log.
    fn catch_up_self<F: Fabric>(&mut self, now: u64, upto: u64, source: ReplicaId, fabric: &mut F) {
        let slot_count = self.log.config.slot_count as u64;
        if upto - self.log.applied > slot_count {
            // The positions this replica lacks were recycled everywhere: it installs a
            // snapshot instead (and stops leading meanwhile).
            self.need_snapshot(upto);
            return;
        }
        self.keep_own_ballots(self.log.applied, upto, fabric);
        let mut reads = 0u8;
        for (start, end) in ring_pieces(self.log.applied, upto, slot_count) {
            let offset = self.log.layout.slot(start);
            let len = (end - start) as u32 * self.log.config.slot_size;
            if !self.post(
                now,
                fabric,
                source,
                Kind::ReadLog,
                0,
                (start, end),
                offset,
                offset,
                len,
            ) {
                self.doom();
                return;
            }
            reads += 1;
        }
        info!(
            "catching up {} slots from {}",
            upto - self.log.applied,
            source
        );
        let deadline = now + self.timeout;
        let leader = &mut *self.t;
        leader.phase = Phase::CatchUpSelf {
            upto,
            reads_left: reads,
        };
        leader.deadline = deadline;
    }

    /// The catch-up reads of `[from, to)` land slots in the own log, and a read cut short
    /// could tear the acceptance record of a copy the own log holds: its highest ballot is
    /// first copied into its adoption record, which the reads do not touch, so the copy keeps
    /// it (see `slot`). `[from, to)` is at most a lap.
    fn keep_own_ballots<F: Fabric>(&mut self, from: u64, to: u64, fabric: &mut F) {
        if !MARKED_REWRITES {
            return;
        }
        let mut adoption = [0u8; RECORD_BYTES as usize];
        for position in from..to {
            let Ok(copy) = self.log.open_local(fabric, position) else {
                continue;
            };
            let Some(accepted) = copy.accepted else {
                continue;
            };
            let at = self.log.layout.adoption_record(position);
            fabric.load(at, &mut adoption);
            if slot::decode_adoption(copy.chain, &adoption).is_none_or(|b| b < accepted.ballot) {
                fabric.store(at, &slot::encode_adoption(copy.chain, accepted.ballot));
            }
        }
    }

    pub(super) fn finish_catch_up<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        upto: u64,
        fabric: &mut F,
        sm: &mut S,
    ) {
        // Bounded work per poll: a lap of catch-up is applied over several polls.
        let batch_end = upto.min(self.log.applied + CATCH_UP_APPLY_BATCH);
        while self.log.applied < batch_end {
            // Vouched for: a read that raced a write may land one writer's header words over
            // another's, and such a header's chain is nobody's.
            match self.log.open_vouched(fabric, self.log.applied) {
                Ok(opened) if opened.header.chain_prev == self.log.applied_chain => {
                    self.log
                        .apply_slot(opened.header, opened.chain, Source::Scratch, sm);
                }
                Err(SlotError::Torn) => {
                    // The source changed under the read. Try again later.
                    self.doom();
                    return;
                }
                _ => {
                    // The source's log no longer holds what it applied (recycled, or rewritten
                    // since): a snapshot of it is the way forward.
                    self.need_snapshot(upto);
                    return;
                }
            }
        }
        if self.log.applied < upto {
            return; // More next poll.
        }
        let (applied, chain) = (self.log.applied, self.log.applied_chain);
        let leader = &mut *self.t;
        leader.next = applied;
        leader.next_chain = chain;
        self.open_members(now, fabric);
    }

    /// This replica's log is up to date: members may be synced, and the prepare starts.
    fn open_members<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let deadline = now + self.timeout;
        let leader = &mut *self.t;
        leader.phase = Phase::ReadMinProposal;
        leader.deadline = deadline;
        leader.replies = 0;
        self.activate_surveyed(now, fabric, false);
        if cfg!(feature = "bug-skip-prepare") {
            // Planted defect: no prepare after a leader change.
            let ballot = self.next_ballot(0, fabric).unwrap_or(0);
            let leader = &mut *self.t;
            leader.ballot = ballot;
            leader.phase = Phase::Streaming;
            leader.streaming_from = Some(leader.next);
            return;
        }
        for peer in self.log.others() {
            if !self.is_active(peer) {
                continue;
            }
            let (local, remote) = (
                self.log.layout.landing_promises(peer),
                self.log.layout.min_proposal(),
            );
            if !self.post(
                now,
                fabric,
                peer,
                Kind::ReadMinProposal,
                0,
                (0, 0),
                local,
                remote,
                PROMISE_BYTES,
            ) {
                self.reset_connection(now, peer, fabric);
            }
        }
    }
}
