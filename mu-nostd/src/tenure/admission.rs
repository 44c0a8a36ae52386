//! Admission: how replicas that restarted with an empty log become voters again.
//!
//! A replica's memory is its acceptor state, so a replica that restarts with a fresh
//! region has forgotten its promises and accepted values. Each life of a replica has a standing
//! record in its log area (see [`crate::layout`]): zero (a fresh region) while it is recovering,
//! else the ballot of the tenure that admitted it. The rules:
//! 1. The prepare (min-proposal read, promise write, slot reads) counts voters only, and needs a
//!    quorum of them with this replica among them.
//! 2. A member's write acks count toward decisions only if it answered this tenure's promise
//!    read during the prepare (`counted`), or if it joined later as a voter whose promise is not
//!    above this tenure's ballot. A recovering member that joins later is sent the log but
//!    does not count until a recount: a fresh promise read of a quorum of voters, posted after
//!    it joined, finds none above this tenure's ballot (else the tenure ends). Its earlier life
//!    may have promised a higher ballot than this one; the recount proves it did not.
//! 3. A counted recovering member is admitted (its standing set to this tenure's ballot) once
//!    it has applied `admit_at`: `streaming_from`, the position where this tenure's prepare
//!    found nothing accepted and went to the fast path, or for a recounted member the position
//!    this tenure was writing at the recount, whichever is higher.
//! 4. With too few voters for a quorum, a tenure whose promise read was answered by all `n`
//!    replicas prepares with all of them (`full`: promises to all, every slot read from all)
//!    and admits them by rule 3; this also forms a new cluster, whose regions are all fresh.
//!
//! Why this is safe (crash faults; a lost life counts as a failure until its replica is
//! admitted again, so at most `n - quorum` replicas are lost or recovering at once):
//! - A prepare of rule 1 finds every decided value: a decided value is held by its accept
//!   quorum less the lives lost since, and a quorum of the other replicas intersects that set
//!   (`2 * quorum > n`). A prepare of rule 4 reads everyone, so it meets a holder too.
//! - Its ballot is above every promise a lost life made: such a promise was written by a
//!   prepare whose quorum, less the lost replica, intersects this prepare's voters, which
//!   carry that ballot or higher; and a lost life that answered this prepare's read had died
//!   before this tenure chose its ballot. So a member counted by rule 2 never accepts against
//!   a promise of its earlier life; a member joining later might (its earlier life may have
//!   promised a later prepare's ballot), so it does not count.
//! - A recount is as good: an earlier-life promise above this ballot came from a prepare whose
//!   quorum, less that replica, meets every quorum of voters; the voter it meets carries that
//!   promise (or a higher one, if it was admitted since) unless it answers as recovering.
//! - An admitted member holds every position a lost life of it could have helped decide:
//!   those are below `streaming_from` (this tenure's prepare found each of them) or, in this
//!   tenure, below the write position at its recount, and it applied them. Above, it holds what
//!   it acked. From then on it is a replica that never forgot anything.
//! - The survey is not a quorum in this sense: it only picks where to catch up from (an
//!   applied position is honest in any life); the prepare decides what is chosen.

use super::prepare::Promises;
use super::{Leading, MemberState, Recount, TAG_RECOUNT};
use crate::config::REPLICAS_MAX;
use crate::fabric::{Fabric, ReplicaId};
use crate::layout::{PROMISE_BYTES, RECORD_BYTES};
use crate::record;
use crate::wrid::Kind;

impl<const SLOT: usize, const ENTRY: usize, const QUEUE: usize>
    Leading<'_, '_, SLOT, ENTRY, QUEUE>
{
    /// A voter answered a recount: its promise must not be above this tenure's ballot.
    pub(super) fn complete_recount_read<F: Fabric>(&mut self, peer: ReplicaId, fabric: &mut F) {
        let mut bytes = [0u8; PROMISE_BYTES as usize];
        fabric.load(self.log.layout.landing_promises(peer), &mut bytes);
        let promises = Promises::decode(&self.log.layout, &bytes);
        let leader = &mut *self.t;
        if promises.highest > leader.ballot {
            self.doom(); // A newer leader prepared there.
            return;
        }
        let Some(recount) = &mut leader.recount else {
            return;
        };
        if promises.voter {
            recount.answered |= 1 << peer;
        }
        let (member, answered) = (recount.member, recount.answered);
        if !self.quorum_with(answered) {
            return;
        }
        let leader = &mut *self.t;
        leader.recount = None;
        leader.counted |= 1 << member;
        leader.members[member as usize].admit_at = leader.next;
        info!(
            "tenure {}: recovering replica {} counted from position {}",
            leader.tenure, member, leader.next
        );
    }

    /// Starts a recount for one recovering member that joined after the prepare (rule 2 of
    /// "Recovery"); a recount that has not finished within `op_timeout_ticks` starts over.
    pub(super) fn recount_late_members<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let timeout = self.log.config.op_timeout_ticks as u64;
        let others = self.everyone_else();
        let leader = &mut *self.t;
        if !leader.fast_path() {
            return;
        }
        if let Some(recount) = leader.recount {
            if now.saturating_sub(recount.started_at) <= timeout {
                return;
            }
            leader.recount = None;
        }
        let late = (0..REPLICAS_MAX).find(|&peer| {
            let member = leader.members[peer as usize];
            others & (1 << peer) != 0
                && member.state == MemberState::Active
                && !member.promises.voter
                && leader.counted & (1 << peer) == 0
        });
        let Some(member) = late else {
            return;
        };
        leader.recount = Some(Recount {
            member,
            answered: 0,
            started_at: now,
        });
        for peer in self.log.others() {
            let leader = &*self.t;
            let voter = leader.members[peer as usize];
            if voter.state != MemberState::Active || !voter.promises.voter {
                continue;
            }
            let (local, remote) = (
                self.log.layout.landing_promises(peer),
                self.log.layout.min_proposal(),
            );
            self.post(
                now,
                fabric,
                peer,
                Kind::ReadMinProposal,
                TAG_RECOUNT,
                (0, 0),
                local,
                remote,
                PROMISE_BYTES,
            );
        }
    }

    /// A standing write landed: the member is a voter from now on.
    pub(super) fn complete_standing(&mut self, peer: ReplicaId) {
        let leader = &mut *self.t;
        let member = &mut leader.members[peer as usize];
        member.standing_inflight = false;
        member.promises.voter = true;
        member.promises.highest = member.promises.highest.max(leader.ballot);
        info!("tenure {}: replica {} admitted", leader.tenure, peer);
    }

    /// Writes this tenure's ballot into `peer`'s standing record: it becomes a voter.
    fn post_standing<F: Fabric>(&mut self, now: u64, peer: ReplicaId, fabric: &mut F) -> bool {
        let ballot = self.t.ballot;
        assert!(
            ballot != 0,
            "a standing carries the ballot that admitted it"
        );
        let (local, remote) = (
            self.log.layout.outbox_standing(),
            self.log.layout.standing(),
        );
        fabric.store(local, &record::encode(remote, ballot));
        let posted = self.post(
            now,
            fabric,
            peer,
            Kind::WriteStanding,
            0,
            (0, 0),
            local,
            remote,
            RECORD_BYTES,
        );
        if posted {
            self.t.members[peer as usize].standing_inflight = true;
        }
        posted
    }

    /// Admits every counted member that is recovering and has applied `streaming_from` (rule 3
    /// of "Recovery").
    pub(super) fn admit_recovered<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let leader = &*self.t;
        let Some(streaming_from) = leader.streaming_from else {
            return;
        };
        for peer in self.log.others() {
            let leader = &*self.t;
            let member = leader.members[peer as usize];
            let ready = member.state == MemberState::Active
                && leader.counted & (1 << peer) != 0
                && !member.promises.voter
                && !member.standing_inflight
                && !member.lapped
                && leader.applied_of[peer as usize] >= streaming_from.max(member.admit_at);
            if ready {
                self.post_standing(now, peer, fabric);
            }
        }
    }
}
