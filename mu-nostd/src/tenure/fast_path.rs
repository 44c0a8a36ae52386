//! The fast path (phase 6): queued commands go into the own log and, per member, in one write
//! of everything not yet sent; a position is decided when a majority (leader included) holds
//! it, and applied in order. Rewrites of positions below `fresh_from` go in two steps (decided
//! marks, then slots), so no write cut short leaves a member's only copy of a decided value
//! without an intact ballot. A decided one-slot command of this tenure is applied from the
//! queue it was proposed from, with the chain `propose` computed (no load of the own slot, no
//! hash); a fragment, a rewrite, or a command decided meanwhile at another position as an
//! earlier tenure's value is applied from the own log. Where the fabric does writes within
//! their post (shared memory), the members beyond a majority are written after that decision
//! and its apply, in the same poll: a command's commit waits for a majority's copies only.
//!
//! # Invariants
//! - A position is proposed only while a quorum of members takes writes whose acks count, and
//!   never past the recycling limit.
//! - A decided position's slot is rewritten to a member only after its decided mark landed
//!   there (`fenced`).
//! - A position is applied only when a quorum holds it, the leader among them.

use super::{
    count, ring_pieces, Leading, MemberState, Proposal, Tenure, ACK_WINDOW, MARKED_REWRITES,
};
use crate::fabric::{Fabric, ReplicaId};
use crate::layout::{Layout, COMMIT_RECORD_BYTES, RECORD_BYTES};
use crate::links::{Readiness, Work};
use crate::log::{encode_commit, Source};
use crate::slot::{self, origin, Acceptance, SlotHeader, SLOT_HEADER_BYTES};
use crate::state_machine::StateMachine;
use crate::wrid::Kind;

/// Which members one call of `post_log_writes` serves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Serve {
    /// Those it reaches before a majority holds the last position proposed.
    UntilDecidable,
    /// All of them.
    All,
}

/// What the slots of one proposed command share, and which of them one is.
#[derive(Clone, Copy)]
struct Fragment {
    origin: u64,
    entry_len: u32,
    index: u16,
    count: u16,
    /// The acceptance its slots carry: the tenure's ballot (read once per command) and the
    /// commit point when it was proposed.
    ballot: u64,
    commit: u64,
}

impl Tenure {
    /// Seals `fragment`'s slot, holding `chunk`, at the next position of the own log, and
    /// counts the leader's own vote for it; `queued` is the sequence of the queued command
    /// `advance_commit` applies it from (0 for a fragment of a larger one, which is applied
    /// from the own log).
    #[inline(always)]
    fn write_fragment<F: Fabric>(
        &mut self,
        layout: &Layout,
        me: ReplicaId,
        fragment: Fragment,
        chunk: &[u8],
        queued: u64,
        fabric: &mut F,
    ) {
        let position = self.next;
        let header = SlotHeader {
            position,
            chain_prev: self.next_chain,
            origin: fragment.origin,
            entry_len: fragment.entry_len,
            frag_index: fragment.index,
            frag_count: fragment.count,
        };
        let acceptance = Acceptance {
            ballot: fragment.ballot,
            commit: fragment.commit,
        };
        let mut sealed = [0u8; SLOT_HEADER_BYTES as usize];
        self.next_chain = header.seal(chunk, acceptance, &mut sealed);
        let offset = layout.slot(position);
        fabric.store(offset, &sealed);
        fabric.store(offset + SLOT_HEADER_BYTES, chunk);
        let window = (position % ACK_WINDOW as u64) as usize;
        self.acks[window] = 1 << me;
        self.proposals[window] = Proposal {
            sequence: queued,
            chain: self.next_chain,
        };
        self.next += 1;
    }
}

impl<const SLOT: usize, const ENTRY: usize, const QUEUE: usize>
    Leading<'_, '_, SLOT, ENTRY, QUEUE>
{
    /// Encodes queued commands into the own log, as far as the pipeline and recycling allow,
    /// and only while a majority of members takes writes whose acks count: proposing without one decides
    /// nothing and overwrites slots of the own log that a lagging replica may still need.
    pub(super) fn propose<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        if self.log.queue.next_to_propose().is_none() {
            return; // The common idle poll: nothing to work out.
        }
        let (takers, limit) = self.takers_and_limit(now);
        if !self.quorum_with(takers) {
            return;
        }
        debug_assert_eq!(self.t.polled_at, now, "`lead` noted the poll's time first");
        let capacity = self.log.config.slot_payload_bytes() as usize;
        let depth = self.log.config.pipeline_depth as u64;
        let (me, applied) = (self.log.me, self.log.applied);
        let leader = &mut *self.t;
        while leader.next - applied < depth {
            let Some((sequence, command)) = self.log.queue.next_to_propose() else {
                break;
            };
            // Most commands fit one slot: no division for them (tens of cycles).
            let frag_count = if command.len() <= capacity {
                1
            } else {
                command.len().div_ceil(capacity)
            };
            if leader.next + frag_count as u64 > limit {
                // Recycling: wait until the slowest alive replica applied more, and read the
                // applied positions again at this poll's end, not a recycle period later: a
                // command waits for the followers' progress, not for the next periodic read
                // (at 4,096 B, with followers slower than the leader, that was the p99).
                // (`polled_at` is `now`: it keeps `now` out of the loop's registers.)
                leader.recycle_at = leader.polled_at;
                break;
            }
            let fragment = Fragment {
                origin: origin(me, sequence),
                entry_len: command.len() as u32,
                index: 0,
                count: frag_count as u16,
                ballot: leader.ballot,
                commit: applied,
            };
            if frag_count == 1 {
                // Most commands: no chunking to set up.
                leader.write_fragment(&self.log.layout, me, fragment, command, sequence, fabric);
            } else {
                for (index, chunk) in command.chunks(capacity).enumerate() {
                    let fragment = Fragment {
                        index: index as u16,
                        ..fragment
                    };
                    leader.write_fragment(&self.log.layout, me, fragment, chunk, 0, fabric);
                }
            }
            assert!(((leader.next - applied) as usize) < ACK_WINDOW);
            self.log.queue.mark_proposed(sequence);
        }
    }

    /// Sends every active member what it has not been sent, in at most two writes each.
    ///
    /// Positions below `fresh_from` are *rewrites*: the member may hold their values already,
    /// perhaps as the only intact copy of a decided one. Decided positions go in two phases:
    /// their decided marks first, and their slots only once those completed, so that a slot
    /// write cut anywhere leaves the copy marked decided (see `slot`). The value being adopted
    /// goes only to members whose copy the prepare read (`post_adoption`). Fresh positions go
    /// in one write. A member in step (`post_in_step`: owed fresh positions of one lap only,
    /// nothing to repair, no decided marks to post) is served first, without the general path's
    /// checks, which would decide the same for it.
    ///
    /// Members from `from` on are served. With `Serve::UntilDecidable` the walk stops after a
    /// member in step once a majority holds the last position proposed, and returns the next
    /// member to serve; `lead` serves the rest in the same poll, after deciding and applying.
    /// On a fabric that does a write within its post (shared memory, where the leader's CPU
    /// makes every copy), a commit then waits for a majority's copies, not for every member's.
    /// On a fabric whose writes complete later (verbs), nothing this poll posted is acknowledged
    /// before a drain: the walk stops early only where earlier acknowledgements already make a
    /// majority (a member in step that is behind), and that member's post then follows the
    /// apply.
    pub(super) fn post_log_writes<F: Fabric>(
        &mut self,
        now: u64,
        fabric: &mut F,
        from: ReplicaId,
        serve: Serve,
    ) -> Option<ReplicaId> {
        let slot_count = self.log.config.slot_count as u64;
        let leader = &mut *self.t;
        let (next, fresh_from) = (leader.next, leader.fresh_from());
        let (me, replicas) = (self.log.me, self.log.config.replica_count);
        for peer in from..replicas {
            if peer == me {
                continue;
            }
            if self.post_in_step(now, fabric, peer, next, fresh_from, slot_count) {
                if serve == Serve::UntilDecidable && self.decidable_through(next) {
                    // The member after `peer`, if there is one.
                    let rest = if peer + 1 == me { me + 1 } else { peer + 1 };
                    return (rest < replicas).then_some(rest);
                }
                continue;
            }
            if !self.is_active(peer) {
                continue;
            }
            self.resync_if_stuck(now, peer, fabric);
            let leader = &mut *self.t;
            let applied = leader.applied_of[peer as usize];
            let member = &mut leader.members[peer as usize];
            if !member.lapped && next > applied.saturating_add(slot_count) {
                // It shows no sign of life, did not hold recycling back, and now needs a
                // position this log no longer holds.
                member.lapped = true;
            }
            if member.lapped {
                self.post_lap_notice(now, peer, fabric);
                continue;
            }
            // Never overwrite a position a member has not applied yet.
            let end = next.min(applied.saturating_add(slot_count));
            // More than a lap unsent only happens to a member that was ahead (it holds what it
            // was not sent: end <= applied + slot_count).
            let sent = member.sent.max(end.saturating_sub(slot_count));
            if sent >= end {
                continue;
            }
            if member.fenced < sent {
                member.fence_from(sent);
            }
            // On the fast path everything below `fresh_from` is decided; while adopting,
            // everything below the own applied position.
            let decided_end = end.min(fresh_from).min(self.log.applied);
            let send_end = if sent < decided_end {
                match self.fence_decided(now, peer, decided_end, fabric) {
                    None => {
                        self.t.members[peer as usize].lapped = true;
                        continue;
                    }
                    Some(fenced) if fenced < decided_end => fenced,
                    Some(_) if decided_end == fresh_from => end,
                    Some(_) => decided_end,
                }
            } else if sent >= fresh_from {
                end
            } else {
                self.post_adoption(now, peer, fabric);
                continue;
            };
            for (start, end) in ring_pieces(sent, send_end, slot_count) {
                let offset = self.log.layout.slot(start);
                let len = (end - start) as u32 * self.log.config.slot_size;
                if !self.post(
                    now,
                    fabric,
                    peer,
                    Kind::WriteLog,
                    start as u32,
                    (start, end),
                    offset,
                    offset,
                    len,
                ) {
                    break;
                }
                self.t.members[peer as usize].sent = end;
            }
        }
        None
    }

    /// True when something is undecided and a majority holds the last position proposed
    /// (`next - 1`): posting may pause for `advance_commit`, which checks every position itself.
    #[inline(always)]
    fn decidable_through(&self, next: u64) -> bool {
        let leader = &*self.t;
        next > self.log.applied
            && count(leader.acks[((next - 1) % ACK_WINDOW as u64) as usize])
                >= self.log.config.quorum()
    }

    /// The common case of `post_log_writes`, for one member: an active member that is owed
    /// only fresh positions of the lap it holds, and needs no repair, on a connection that
    /// takes posts. Posts them in one write and returns true; false, having done nothing, for
    /// anything else (the general path then decides).
    #[inline(always)]
    fn post_in_step<F: Fabric>(
        &mut self,
        now: u64,
        fabric: &mut F,
        peer: ReplicaId,
        next: u64,
        fresh_from: u64,
        slot_count: u64,
    ) -> bool {
        let repair_due = now >= self.repair_due_at(peer);
        let leader = &*self.t;
        let p = peer as usize;
        let (member, applied) = (&leader.members[p], leader.applied_of[p]);
        let sent = member.sent;
        let in_step = matches!(member.state, MemberState::Active)
            && !member.lapped
            && sent >= fresh_from
            && sent < next
            && next <= applied.saturating_add(slot_count)
            && !(repair_due && applied < sent.min(self.log.applied))
            && crate::layout::ring_index(sent, slot_count) + (next - sent) <= slot_count
            && self.links.readiness(peer) == Readiness::Open;
        if !in_step {
            return false;
        }
        let member = &mut self.t.members[p];
        if member.fenced < sent {
            member.fence_from(sent);
        }
        let offset = self.log.layout.slot(sent);
        let work = Work {
            kind: Kind::WriteLog,
            tag: sent as u32,
            range: (sent, next),
            local: offset,
            remote: offset,
            len: (next - sent) as u32 * self.log.config.slot_size,
        };
        if self.post_open(now, fabric, peer, work) {
            self.t.members[p].sent = next;
        }
        true
    }

    /// Phase one of the decided rewrites of `[sent, decided_end)` to `peer`: marks the own
    /// copies of the positions not posted yet decided and posts their marks, each position once
    /// per resend. Returns how far its slots may be written now, the end of the marks that
    /// landed (with the planted defect `bug-torn-rewrite`, `decided_end` at once); `None` when a
    /// slot of the range does not open any more (recycled since): the member cannot be served
    /// from this log.
    fn fence_decided<F: Fabric>(
        &mut self,
        now: u64,
        peer: ReplicaId,
        decided_end: u64,
        fabric: &mut F,
    ) -> Option<u64> {
        let slot_count = self.log.config.slot_count as u64;
        let member = self.t.members[peer as usize];
        assert!(member.sent <= member.fenced && member.fenced <= member.fence_posted);
        if member.fence_posted >= decided_end {
            return Some(member.fenced);
        }
        for (start, end) in ring_pieces(member.fence_posted, decided_end, slot_count) {
            if !(start..end).all(|position| self.mark_decided_at(position, fabric)) {
                return None;
            }
            if !MARKED_REWRITES {
                continue;
            }
            let offset = self.log.layout.decided_mark(start);
            let len = (end - start) as u32 * RECORD_BYTES;
            let (kind, tag, range) = (Kind::WriteDecided, start as u32, (start, end));
            if !self.post(now, fabric, peer, kind, tag, range, offset, offset, len) {
                break;
            }
            self.t.members[peer as usize].fence_posted = end;
        }
        if !MARKED_REWRITES {
            self.t.members[peer as usize].fence_from(decided_end);
            return Some(decided_end);
        }
        Some(self.t.members[peer as usize].fenced)
    }

    /// Marks the own copy of the decided `position` decided; false if it does not open.
    fn mark_decided_at<F: Fabric>(&mut self, position: u64, fabric: &mut F) -> bool {
        assert!(
            position < self.log.applied,
            "only a decided position is marked decided"
        );
        // Vouched for: the mark binds to the chain the header yields, and the slot goes out next.
        let Ok(opened) = self.log.open_vouched(fabric, position) else {
            return false;
        };
        if MARKED_REWRITES {
            let mark = slot::encode_decided(opened.chain);
            fabric.store(self.log.layout.decided_mark(position), &mark);
        }
        true
    }

    /// Applies every position a majority holds, in order.
    pub(super) fn advance_commit<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        fabric: &mut F,
        sm: &mut S,
    ) {
        loop {
            let leader = &mut *self.t;
            if self.log.applied >= leader.next {
                // Nothing undecided. Idle only if nothing waits to be proposed either: queued
                // commands that cannot be proposed (no majority of members, recycling held back)
                // count as a stall, which ends the tenure and surveys everyone again.
                if self.log.queue.next_to_propose().is_none() {
                    leader.progress_at = now;
                }
                return;
            }
            let votes = leader.acks[(self.log.applied % ACK_WINDOW as u64) as usize];
            assert!(
                votes & (1 << self.log.me) != 0,
                "the leader holds what it sends"
            );
            if count(votes) < self.log.config.quorum() {
                return;
            }
            let position = self.log.applied;
            let proposal = leader.proposals[(position % ACK_WINDOW as u64) as usize];
            debug_assert!(
                position < leader.fresh_from()
                    || self
                        .log
                        .open_own(fabric, position)
                        .is_some_and(|(header, chain)| {
                            let own = header.origin == origin(self.log.me, proposal.sequence);
                            chain == proposal.chain && (own || proposal.sequence == 0)
                        }),
                "the leader applies from its queue what it wrote to its log"
            );
            let queued = position >= leader.fresh_from()
                && proposal.sequence != 0
                && self
                    .log
                    .apply_proposed(proposal.sequence, proposal.chain, sm);
            if !queued {
                let (header, chain) = self
                    .log
                    .open_own(fabric, position)
                    .expect("the own log holds what the leader wrote");
                assert_eq!(
                    header.chain_prev, self.log.applied_chain,
                    "the own log chains"
                );
                self.log.apply_slot(header, chain, Source::Scratch, sm);
            }
            self.t.progress_at = now;
        }
    }

    /// When `peer`'s commit record, though current, is written again (`post_commit_record`): a
    /// write into its log is how the leader learns that its grant was revoked meanwhile.
    #[inline]
    pub(super) fn commit_probe_at(&self, peer: ReplicaId) -> u64 {
        let sent_at = self.t.members[peer as usize].commit_sent_at;
        sent_at.saturating_add(self.log.config.permission_retry_ticks as u64)
    }

    /// When the leader is idle, followers learn the last commit point from the commit record
    /// (otherwise they would lag one command behind until the next one); it is written from the
    /// poll after the one that decided the last position (`just_decided`), since a command
    /// arriving meanwhile carries the commit point in its slot for free. An idle leader also
    /// writes it again every `permission_retry_ticks`: a write into the member's log is how it
    /// learns that its grant was revoked meanwhile (another replica led for a while and the
    /// others then chose this one again: they wait for its new request, which it makes only once
    /// a write is refused).
    // Inlined into its one caller, `lead`: its check runs at every leader poll (see
    // `mu-bench instructions`).
    #[inline(always)]
    pub(super) fn post_commit_record<F: Fabric>(
        &mut self,
        now: u64,
        fabric: &mut F,
        just_decided: bool,
    ) {
        let leader = &*self.t;
        // Nothing undecided after `propose` ran: the leader is idle, or cannot propose what it
        // queued (recycling held back, too few members). Then no slot carries the commit point
        // either, and members that lack it would not apply what is decided (nor count as
        // stuck only because of that; simulator seed 17772).
        let idle = leader.fast_path() && self.log.applied == leader.next;
        // Not in the poll that decided the last position: a client that sends its next command
        // right after a commit (the common case under load) lets that command's slot carry the
        // commit point, which saves a write per member per command; an idle leader writes the
        // record at its next poll.
        if !idle || just_decided {
            return;
        }
        let applied = self.log.applied;
        let offset = self.log.layout.commit_record();
        let mut staged = false;
        for peer in self.log.others() {
            let probe_due = now >= self.commit_probe_at(peer);
            let leader = &mut *self.t;
            let member = leader.members[peer as usize];
            let in_flight = leader.commit_inflight & (1 << peer) != 0;
            if member.state != MemberState::Active
                || member.sent < applied
                || (member.commit_sent >= applied && !probe_due)
                || in_flight
            {
                continue;
            }
            if !staged {
                // Staged once per commit point; nothing of an older one is in flight to anyone
                // who still needs this one.
                fabric.store(
                    self.log.layout.outbox_commit(),
                    &encode_commit(offset, applied, self.log.applied_chain),
                );
                staged = true;
            }
            let local = self.log.layout.outbox_commit();
            if self.post(
                now,
                fabric,
                peer,
                Kind::WriteCommit,
                0,
                (0, 0),
                local,
                offset,
                COMMIT_RECORD_BYTES,
            ) {
                let leader = &mut *self.t;
                leader.commit_inflight |= 1 << peer;
                let member = &mut leader.members[peer as usize];
                member.commit_sent = applied;
                member.commit_sent_at = now;
            }
        }
    }

    /// True when a written position waited longer than `op_timeout_ticks` for a majority, or a
    /// queued command waited that long to be proposed.
    pub(super) fn stalled(&self, now: u64) -> bool {
        let leader = &*self.t;
        leader.fast_path()
            && now.saturating_sub(leader.progress_at) > self.log.config.op_timeout_ticks as u64
    }
}
