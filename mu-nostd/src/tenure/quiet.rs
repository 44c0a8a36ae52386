//! The quiet gate of an idle leader: a poll that would do nothing is skipped, as the
//! follower's and the background plane's are.
//!
//! A full poll that posted nothing and applied nothing arms the gate: it computes the first
//! time at which a poll of the state it leaves would do something (`quiet_until`). Until then,
//! a poll that finds the same state skips its work and only notes the time, as the full poll
//! would (`polled_at`, and `progress_at` since nothing is undecided). The state is the same
//! while nothing arrives from outside the tenure; what can is checked on every gated poll:
//! a completion (the fabric is polled), a submitted command (the queue), the background
//! plane's view (the tenure still led, the same replicas granting it), and a pause of the
//! leader's own (longer than a read period, which `discount_own_pause` handles).
//!
//! The time terms are each step's own deadline: the periodic recycling reads
//! (`recycle_at`), a lost member's retry, each member's commit-record probe, and the repair of
//! a member that holds what it was sent without applying it.
//!
//! # Invariants
//! - The gate is armed only on the fast path, with nothing undecided or queued, nothing
//!   outstanding on any connection, and every member active and sent everything, absent and
//!   not granting, or lost (waiting for its retry).
//! - Every full poll disarms it first; only a full poll that posted and applied nothing
//!   arms it again.
//! - A gated poll changes the tenure exactly as the full poll would: debug builds run the full
//!   poll after it and assert that it changed nothing else and posted nothing, unless the
//!   background plane (another thread in a runtime) changed the view in between
//!   (`ReplicationPlane::check_quiet_leader`).

use super::{Leading, MemberState, Tenure};
use crate::shared::Lead;

impl Tenure {
    /// The background plane's view under which the gate was armed: this tenure, granted by
    /// `quiet_confirmed`.
    pub(crate) fn quiet_view(&self) -> Lead {
        Lead {
            tenure: self.tenure,
            confirmed: self.quiet_confirmed,
        }
    }

    /// True when a poll at `now` finds nothing to do, given the background plane's view `lead`
    /// and what else the plane checked (no completion, nothing queued); the poll's only effect,
    /// noting the time, is done.
    #[inline(always)]
    pub(crate) fn quiet_poll(&mut self, now: u64, lead: Option<Lead>, read_period: u64) -> bool {
        let view = lead == Some(self.quiet_view());
        if now >= self.quiet_until || !view || now.saturating_sub(self.polled_at) > read_period {
            return false;
        }
        self.polled_at = now;
        self.progress_at = now;
        true
    }
}

impl<const SLOT: usize, const ENTRY: usize, const QUEUE: usize>
    Leading<'_, '_, SLOT, ENTRY, QUEUE>
{
    /// Arms the gate, at the end of a full poll that posted and applied nothing, if the state it
    /// leaves is quiet.
    pub(super) fn arm_quiet(&mut self) {
        let confirmed = self.shared.lead().map_or(0, |l| l.confirmed);
        self.t.quiet_until = self.quiet_deadline(confirmed).unwrap_or(0);
        self.t.quiet_confirmed = confirmed;
    }

    /// The first time at which a poll of the current state would do something, with `confirmed`
    /// granting; `None` when it may at once.
    fn quiet_deadline(&self, confirmed: u8) -> Option<u64> {
        let leader = &*self.t;
        let applied = self.log.applied;
        let idle = leader.fast_path() && applied == leader.next && self.log.queue.len() == 0;
        if !idle || leader.doomed || leader.recount.is_some() || self.links.any_done() {
            return None;
        }
        let slot_count = self.log.config.slot_count as u64;
        let mut until = leader.recycle_at;
        for peer in self.log.others() {
            if self.links.front(peer).is_some() {
                return None; // Its completion may come, or its deadline pass.
            }
            let p = peer as usize;
            let member = leader.members[p];
            match member.state {
                MemberState::Absent if confirmed & (1 << peer) == 0 => {}
                MemberState::Lost { retry_at } => until = until.min(retry_at),
                MemberState::Active => {
                    let peer_applied = leader.applied_of[p];
                    let behind = leader.next > peer_applied.saturating_add(slot_count);
                    if member.lapped || behind || member.sent < leader.next {
                        return None; // Lap notices, or log writes, to post.
                    }
                    if member.commit_sent < applied {
                        return None; // Its commit record, to post.
                    }
                    until = until.min(self.commit_probe_at(peer));
                    if peer_applied < applied {
                        until = until.min(self.repair_due_at(peer));
                    }
                }
                _ => return None,
            }
        }
        Some(until)
    }
}
