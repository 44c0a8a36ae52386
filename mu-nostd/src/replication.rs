//! The replication plane: one replica's log replication, in one of two roles at a time.
//!
//! - **Follower**: it replays its own log ([`crate::log`]: the chain and commit rules that keep a
//!   torn, stale or undecided slot from being applied) and, a lap behind, installs another
//!   replica's snapshot ([`crate::transfer`]).
//! - **Leader**: while the background plane says this replica leads, a [`Tenure`] exists and
//!   drives the log from its grant to the fast path ([`crate::tenure`]); leader-only code runs
//!   only through it, so it cannot run otherwise.
//!
//! Below both roles: the own log ([`crate::log`]) and the plane's connections ([`crate::links`]).
//!
//! # Invariants
//! - At most one tenure exists, and only while the background plane names this replica leader
//!   for exactly that tenure and it is not transferring a snapshot; when it ends, everything it
//!   posted is fenced (`fence_tenure`) before the background plane may grant the log.
//! - A tenure's operations complete into the tenure that posted them, a transfer's (tenure 0)
//!   into the transfer, anything older nowhere.
//! - Work per poll is bounded: scans and applies stop after a fixed number of slots; completions
//!   are drained in bounded batches.
//! - A poll skips its work only in a state on which every step of that work returns at once
//!   (`quiet`); a completion polled on the way waits in the inbox for the next drain.

use crate::config::REPLICAS_MAX;
use crate::fabric::{Fabric, ReplicaId};
use crate::links::{Answers, Inbox, Links, Readiness, Work};
use crate::log::{Blocked, Log, Refusals};
use crate::record;
use crate::shared::Shared;
use crate::state_machine::{StateMachine, Ticket};
use crate::tenure::{LeaderStatus, Tenure};
use crate::wrid::Kind;

/// Why the replication plane stopped for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Halt {
    /// It needs positions no log holds any more, and its application cannot install a
    /// snapshot of another replica's state.
    Lapped,
}

impl Halt {
    /// The reason's number where a runtime publishes it as a word (never 0: 0 is "running").
    pub const fn code(self) -> u32 {
        match self {
            Halt::Lapped => 1,
        }
    }

    /// The reason a published word names; `None` for 0 (running) or an unknown number.
    pub const fn from_code(code: u32) -> Option<Halt> {
        match code {
            1 => Some(Halt::Lapped),
            _ => None,
        }
    }

    /// What the reason means, for an operator.
    pub const fn describe(self) -> &'static str {
        match self {
            Halt::Lapped => {
                "it needs log positions that no replica holds any more and could not install a \
                 snapshot of another replica's state"
            }
        }
    }
}

/// Why a command was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SubmitError {
    /// This replica does not lead; `leader` is who it considers leader.
    NotLeader {
        /// The replica to try instead, if known.
        leader: Option<ReplicaId>,
    },
    /// Empty commands are not accepted.
    Empty,
    /// The command is longer than the largest entry.
    TooLarge {
        /// Its length.
        len: u32,
        /// The most accepted.
        max: u32,
    },
    /// The queue is full; poll and try again.
    Busy,
    /// This replica halted (its log was lapped) and no longer takes part.
    Halted,
}

/// A snapshot of the replication plane, for runtimes and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReplicationStatus {
    /// Positions below this are applied here.
    pub applied: u64,
    /// Chain digest of every slot applied (through `applied - 1`): two replicas with the same
    /// `applied` hold the same log prefix exactly when these are equal.
    pub applied_chain: u64,
    /// The tenure this replica leads in, if it does.
    pub leading: Option<u32>,
    /// True once the leader finished its prepare and replicates on the fast path.
    pub fast_path: bool,
    /// Commands waiting in the leader's queue.
    pub queued: u32,
    /// Why it halted, once it did.
    pub halted: Option<Halt>,
    /// This life of the replica is a voter: it was admitted (or the cluster was formed with it).
    /// A restarted replica is recovering until a leader admits it.
    pub voter: bool,
    /// True while it installs a snapshot from another replica.
    pub catching_up: bool,
    /// The replica it serves a snapshot to, while it donates one.
    pub donating_to: Option<ReplicaId>,
    /// How many times the next tenure's deadlines are doubled after tenures that got nowhere.
    pub deadline_doublings: u8,
    /// A follower whose last poll found valid slots as far as one poll scans: the leader may
    /// have written more. A runtime that rests between polls polls again at once instead, or a
    /// follower that rests falls behind a leader of large commands by up to a lap, and the leader
    /// waits on its recycling (and, elected, would first apply that lap).
    pub backlog: bool,
    /// Where its last replay stopped at a slot it could not take, and why: one that stays
    /// says why a follower does not keep up (a damaged slot, a rewrite that never came).
    pub blocked: Option<(u64, Blocked)>,
    /// What its replays refused, and the lap notices it took.
    pub refusals: Refusals,
    /// State transfers it started (each attempt counts).
    pub transfers: u32,
    /// Operations it posted so far, wrapping: two readings tell whether it posted any in
    /// between (a write answered within its post leaves no completion to see).
    pub posted: u32,
}

/// Most doublings of the prepare's deadlines after tenures that ended before the fast path: a
/// set-up of up to 4 deadlines gets through, and a tenure that cannot succeed for another reason
/// (too few voters it can reach, members still installing snapshots) is given up within 4
/// deadlines, not 16 (simulator seed 3905 waited 1,920 ticks in one adoption at 16).
pub(crate) const DEADLINE_DOUBLINGS_MAX: u8 = 2;

/// The replication plane of one replica.
///
/// `SLOT` bounds the slot size, `ENTRY` the command size (and the response buffer), `QUEUE` the
/// bytes of commands the leader may hold undecided.
pub struct ReplicationPlane<'s, const SLOT: usize, const ENTRY: usize, const QUEUE: usize> {
    pub(crate) log: Log<SLOT, ENTRY, QUEUE>,
    pub(crate) links: Links,
    inbox: Inbox,
    pub(crate) shared: &'s Shared,
    /// The tenure this replica leads in, while it does.
    tenure: Option<Tenure>,
    spent_tenure: u32,
    /// Tenures in a row (at most [`DEADLINE_DOUBLINGS_MAX`]) that ended before the fast path: each
    /// doubles the next tenure's phase and operation deadlines (see `phase_timeout`).
    deadline_doublings: u8,
    /// The member that ended the last tenure by having applied more than this replica: the
    /// next tenure's survey waits for it (see `tenure::survey`).
    survey_awaits: Option<ReplicaId>,
    halted: Option<Halt>,
    /// Cached once true: a standing is never withdrawn within a life.
    voter: bool,
    /// The applied position last published; meaningless while `publish_due` is 0.
    published_applied: u64,
    /// The applied position from which a change is published at once: a quarter lap past
    /// `published_applied`.
    publish_stride_at: u64,
    /// From when the applied position is to be published (again): at the end of `work`, no
    /// later than `recycle_period_ticks` after the last publication, nor than the end of its
    /// hold once the position moved (see `publish_applied`).
    publish_due: u64,
    /// A change of the applied position is held back until then (see `publish_applied`).
    publish_held_until: u64,
    /// This replica's life, and its transfer attempts: a transfer's nonce is unique to both.
    pub(crate) incarnation: u32,
    pub(crate) attempts: u32,
    /// The snapshot this replica installs, while it does.
    pub(crate) transfer: Option<crate::transfer::Join>,
    /// The peers' applied positions, as a transfer's survey read them.
    pub(crate) survey_applied: [u64; REPLICAS_MAX as usize],
    /// The snapshot this replica serves to another, if any.
    pub(crate) donor: crate::transfer::Donor,
}

impl<'s, const SLOT: usize, const ENTRY: usize, const QUEUE: usize>
    ReplicationPlane<'s, SLOT, ENTRY, QUEUE>
{
    /// The replication plane of replica `me`; the caller validated the configuration and checked
    /// it against the buffer sizes (see [`crate::Replica`]).
    pub(crate) fn new(config: crate::Config, me: ReplicaId, shared: &'s Shared) -> Self {
        ReplicationPlane {
            log: Log::new(config, me),
            links: Links::NEW,
            inbox: Inbox::NEW,
            shared,
            tenure: None,
            spent_tenure: 0,
            deadline_doublings: 0,
            survey_awaits: None,
            halted: None,
            voter: false,
            published_applied: 0,
            publish_stride_at: 0,
            publish_due: 0,
            publish_held_until: 0,
            incarnation: 0,
            attempts: 0,
            transfer: None,
            survey_applied: [0; REPLICAS_MAX as usize],
            donor: crate::transfer::Donor::NEW,
        }
    }

    /// Numbers this plane's commands from `incarnation`'s own range, so that a replica process
    /// restarted with a fresh region never reuses the origin of a command its earlier life
    /// proposed (a decided old command would otherwise be reported committed for a new one).
    /// Call it once, before the first `submit`; the runtime keeps `incarnation` rising across
    /// restarts.
    pub fn begin_incarnation(&mut self, incarnation: u32) {
        self.incarnation = incarnation;
        self.log
            .queue
            .start_sequences_at(crate::slot::incarnation_base(incarnation));
    }

    /// Does one bounded round of replication work at time `now`.
    #[inline(always)]
    pub fn poll<F: Fabric, S: StateMachine>(&mut self, now: u64, fabric: &mut F, sm: &mut S) {
        self.shared.tick_progress();
        self.log.backlog = false;
        if !self.quiet(now, fabric) {
            self.work(now, fabric, sm);
        } else if cfg!(debug_assertions) && self.tenure.is_some() {
            self.check_quiet_leader(now, fabric, sm);
        }
    }

    /// True when this poll has no work: a voter following, not catching up or serving a
    /// transfer, with nothing queued or to publish, nothing new in its log and no completion.
    /// Every step of `work` returns at once on this state, so skipping them changes nothing; the
    /// common idle poll then costs a few loads. The fabric is polled last: a completion it
    /// returns waits in the inbox for `work`'s drain. A leader's poll is quiet as its tenure's
    /// gate says (`tenure::quiet`).
    #[inline(always)]
    fn quiet<F: Fabric>(&mut self, now: u64, fabric: &mut F) -> bool {
        if self.tenure.is_some() {
            // A command waiting: the leader's commit path, which should not pay for a call.
            return self.log.queue.len() == 0 && self.quiet_leader(now, fabric);
        }
        // The log first: a streaming follower keeps a walk, and learns it in one load.
        self.log.quiet(now, fabric)
            && self.transfer.is_none()
            && self.halted.is_none()
            && self.voter
            && self.donor.idle(now)
            && now < self.publish_due
            && self.log.queue.len() == 0
            && self.shared.lead().is_none()
            && self.inbox.empty(fabric)
    }

    /// `quiet` for a leader with nothing queued: nothing to publish or to serve, no completion,
    /// the tenure's gate open. Its check comes last, because a quiet poll notes the time in it.
    /// Out of line: inlined, it cost the follower's quiet check registers.
    #[inline(never)]
    fn quiet_leader<F: Fabric>(&mut self, now: u64, fabric: &mut F) -> bool {
        let read_period = self.log.config.detector.read_period_ticks as u64;
        self.transfer.is_none()
            && self.halted.is_none()
            && self.donor.idle(now)
            && now < self.publish_due
            && self.inbox.empty(fabric)
            && self
                .tenure
                .as_mut()
                .is_some_and(|t| t.quiet_poll(now, self.shared.lead(), read_period))
    }

    /// Debug builds, after a leader's poll that its gate let skip: runs the full poll all the
    /// same, and asserts that it posted nothing and changed nothing that the skip did not. A
    /// runtime's background plane runs on another thread: if it changed the leader's view
    /// meanwhile, the full poll saw another state than the gate did, and nothing is asserted.
    #[inline(never)]
    fn check_quiet_leader<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        fabric: &mut F,
        sm: &mut S,
    ) {
        let view = self.tenure.as_ref().map(Tenure::quiet_view);
        let before = (self.tenure.clone(), self.links.posts(), self.log.applied);
        self.work(now, fabric, sm);
        let after = (self.tenure.clone(), self.links.posts(), self.log.applied);
        if self.shared.lead() == view {
            assert!(
                before == after,
                "a leader's poll skipped as quiet would have done work"
            );
        }
    }

    /// The poll's work, out of line so that a quiet poll saves no registers for it.
    #[inline(never)]
    fn work<F: Fabric, S: StateMachine>(&mut self, now: u64, fabric: &mut F, sm: &mut S) {
        if self.halted.is_some() {
            // Whatever it queued as leader will never be decided through this replica.
            self.log.queue.drain(|ticket| sm.dropped(ticket));
            return;
        }
        self.follow_role(now, fabric, sm);
        if self.tenure.is_some() {
            self.lead(now, fabric, sm);
        } else {
            self.drain_completions(now, fabric, sm);
            if self.transfer.is_some() {
                self.step_transfer(now, fabric, sm);
            } else {
                if let Some(floor) = self.log.replay(now, fabric, sm) {
                    self.start_transfer(now, floor, fabric);
                }
                self.refresh_voter(fabric);
            }
        }
        if self.halted.is_none() {
            self.serve_transfers(now, fabric, sm);
        }
        self.publish_applied(now, fabric);
    }

    /// Queues a command for replication; only the leader accepts commands.
    pub fn submit(&mut self, command: &[u8]) -> Result<Ticket, SubmitError> {
        if self.halted.is_some() {
            return Err(SubmitError::Halted);
        }
        if self.tenure.is_none() {
            return Err(SubmitError::NotLeader {
                leader: self.shared.leader(),
            });
        }
        if command.is_empty() {
            return Err(SubmitError::Empty);
        }
        let max = self.log.config.entry_bytes_max();
        if command.len() as u64 > max as u64 {
            return Err(SubmitError::TooLarge {
                len: command.len().min(u32::MAX as usize) as u32,
                max,
            });
        }
        self.log.queue.push(command).ok_or(SubmitError::Busy)
    }

    /// The tenure this replica leads in, while it does.
    pub fn tenure(&self) -> Option<&Tenure> {
        self.tenure.as_ref()
    }

    /// The leader's view of its tenure, while it leads.
    pub fn leader_status(&self) -> Option<LeaderStatus> {
        let confirmed = self.shared.lead().map_or(0, |l| l.confirmed);
        self.tenure.as_ref().map(|tenure| tenure.status(confirmed))
    }

    /// A snapshot for runtimes and tests.
    pub fn status(&self) -> ReplicationStatus {
        ReplicationStatus {
            applied: self.log.applied,
            applied_chain: self.log.applied_chain,
            leading: self.tenure.as_ref().map(Tenure::number),
            fast_path: self.tenure.as_ref().is_some_and(Tenure::fast_path),
            queued: self.log.queue.len() as u32,
            halted: self.halted,
            voter: self.voter,
            catching_up: self.transfer.is_some(),
            donating_to: self.donor.joiner(),
            deadline_doublings: self.deadline_doublings,
            backlog: self.log.backlog,
            blocked: self.log.blocked,
            refusals: self.log.refusals,
            transfers: self.attempts,
            posted: self.links.posts(),
        }
    }

    /// A snapshot covering every position below `position`, whose chain through `position - 1`
    /// is `chain`, was installed: the log continues from there.
    pub(crate) fn install_position(&mut self, position: u64, chain: u64) {
        assert!(self.tenure.is_none(), "a leader never installs a snapshot");
        self.log.install_position(position, chain);
        self.publish_due = 0;
    }

    /// True when this life of the replica is a voter; reads the standing record until it is.
    fn refresh_voter<F: Fabric>(&mut self, fabric: &mut F) -> bool {
        if !self.voter {
            self.voter = crate::background::own_voter(&self.log.layout, fabric);
        }
        self.voter
    }

    /// Takes up or gives up leadership as the background plane says.
    fn follow_role<F: Fabric, S: StateMachine>(&mut self, now: u64, fabric: &mut F, sm: &mut S) {
        let lead = self.shared.lead();
        if let Some(tenure) = &self.tenure {
            if lead.map(|l| l.tenure) == Some(tenure.number()) {
                return;
            }
            info!("tenure {} over", tenure.number());
            self.stand_down(fabric);
        }
        let Some(lead) = lead else {
            // Not leading any more, whether the tenure just ended or was aborted earlier (the
            // queue outlives an abort, for the next tenure): nothing queued will be proposed here.
            if self.log.queue.len() > 0 {
                self.log.queue.drain(|ticket| sm.dropped(ticket));
            }
            return;
        };
        let transferring = self.transfer.is_some();
        if transferring
            || lead.tenure == self.spent_tenure
            || !self.shared.start_acting(lead.tenure)
        {
            return;
        }
        info!(
            "leading in tenure {} from position {}",
            lead.tenure, self.log.applied
        );
        self.log.queue.restart_proposals();
        self.log.forget_walk();
        let voter = self.refresh_voter(fabric);
        let timeout = self.phase_timeout();
        let from = (self.log.applied, self.log.applied_chain);
        let awaited = self.survey_awaits.take();
        self.tenure = Some(Tenure::new(lead.tenure, now, from, voter, timeout, awaited));
    }

    /// One round of leader work; ends the tenure when it must end.
    fn lead<F: Fabric, S: StateMachine>(&mut self, now: u64, fabric: &mut F, sm: &mut S) {
        let timeout = self.phase_timeout();
        let Some(tenure) = &mut self.tenure else {
            return;
        };
        let ended = tenure
            .leading(
                &mut self.log,
                &mut self.links,
                &mut self.inbox,
                self.shared,
                timeout,
            )
            .poll(now, fabric, sm);
        if tenure.fast_path() {
            self.deadline_doublings = 0;
        }
        // A tenure that prepared with every replica admits itself (rule 4 of "Recovery").
        self.voter |= tenure.voter();
        match ended {
            None => {}
            Some(crate::tenure::End::Doomed) => self.abort(fabric),
            Some(crate::tenure::End::Lapped { floor }) => self.start_transfer(now, floor, fabric),
        }
    }

    /// Ticks a phase of the prepare, or an operation of it, may take: `op_timeout_ticks`,
    /// doubled for every tenure in a row that ended before its fast path. A fabric whose
    /// connections or grants take longer than a deadline to set up (a verbs re-pairing under
    /// load) would otherwise end every tenure in its survey and start the next, which needs the
    /// same set-up again, forever; with the deadline growing, one tenure gets through, and the
    /// next fast path puts it back.
    fn phase_timeout(&self) -> u64 {
        debug_assert!(self.deadline_doublings <= DEADLINE_DOUBLINGS_MAX);
        (self.log.config.op_timeout_ticks as u64) << self.deadline_doublings
    }

    /// Stops acting as leader: nothing the tenure posted lands after this (see `fence_tenure`);
    /// only then may the background plane grant this replica's log to a peer.
    fn stand_down<F: Fabric>(&mut self, fabric: &mut F) -> Option<u32> {
        let tenure = self.tenure.take()?;
        if !tenure.fast_path() {
            self.deadline_doublings = (self.deadline_doublings + 1).min(DEADLINE_DOUBLINGS_MAX);
        }
        self.survey_awaits = tenure.ended_by_member_ahead();
        self.fence_tenure(fabric);
        self.shared.stop_acting();
        Some(tenure.number())
    }

    /// A tenure's operations never outlive it: when this replica stops acting as leader, every
    /// connection with work outstanding is dropped, so that no write of the tenure lands in a
    /// peer's log later (a peer that grants this replica again would let it in), and no read
    /// lands in the own log after the background plane may have granted it to a peer.
    fn fence_tenure<F: Fabric>(&mut self, fabric: &mut F) {
        self.links.forget_done(); // Landed already: nothing to fence.
        for peer in self.log.others() {
            if self.links.front(peer).is_some() {
                self.links.drop(peer, fabric);
            }
        }
    }

    /// Gives up the current tenure: the background plane will ask for permissions again.
    pub(crate) fn abort<F: Fabric>(&mut self, fabric: &mut F) {
        let Some(tenure) = self.stand_down(fabric) else {
            return;
        };
        warn!("tenure {} aborted", tenure);
        self.spent_tenure = tenure;
        self.shared.abort(tenure);
    }

    pub(crate) fn halt<F: Fabric>(&mut self, reason: Halt, fabric: &mut F) {
        warn!("replication halted: {}", reason.code());
        self.abort(fabric);
        self.halted = Some(reason);
        self.shared.halt(reason);
    }

    /// Publishes the applied position when it changes, and every `recycle_period_ticks` anyway
    /// (a damaged record heals).
    ///
    /// A change is published at most every half of the shorter of the detector's read period
    /// and the recycle period, not at every apply, unless it is a quarter lap (`slot_count / 4`
    /// positions) or more. Every reader of the record takes a position that lags as one it read
    /// a little earlier: peers' detectors see it move within each read period (a starved
    /// background thread's leader still shows progress), a later leader surveying a member
    /// resends a few decided positions more, and a leader's recycling only holds back more. That
    /// hold never stalls it: it writes up to a lap past the least applied position it read, and
    /// a published position lags its replica's by less than a quarter lap, so a leader waits on
    /// a follower's record only when that follower is three quarters of a lap behind, and then
    /// gets each quarter lap as soon as the follower applied it.
    ///
    /// The applied position moves only within `work`, which ends here: so `publish_due` tells a
    /// quiet poll, in one comparison, that nothing is to be published.
    #[inline(always)]
    fn publish_applied<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let applied = self.log.applied;
        if applied >= self.publish_stride_at {
            self.publish_due = 0;
        } else if applied != self.published_applied {
            self.publish_due = self.publish_due.min(self.publish_held_until);
        }
        if now < self.publish_due {
            return;
        }
        let offset = self.log.layout.applied();
        fabric.store(offset, &record::encode(offset, applied));
        let config = &self.log.config;
        self.published_applied = applied;
        self.publish_stride_at = applied + (config.slot_count / 4).max(1) as u64;
        self.publish_due = now + config.recycle_period_ticks as u64;
        let hold = config
            .recycle_period_ticks
            .min(config.detector.read_period_ticks)
            / 2;
        self.publish_held_until = now + hold as u64;
    }

    // ---- a follower's connections (state transfer) -------------------------------------------

    /// Takes the completions of a follower's operations: a state transfer's (tenure 0). A
    /// tenure drains its own (`Leading::drain`); what an ended tenure posted is ignored.
    fn drain_completions<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        fabric: &mut F,
        sm: &mut S,
    ) {
        if self.inbox.empty(fabric) {
            return;
        }
        let (replicas, me) = (self.log.config.replica_count, self.log.me);
        while let Some((id, status)) = self.inbox.next(fabric, replicas, me) {
            let Some(pending) = self.links.take(id, status) else {
                continue;
            };
            if pending.tenure == 0 {
                self.complete_transfer(now, id.peer, pending, status, fabric, sm);
            }
        }
    }

    /// Posts an operation of a state transfer; false when it could not be posted now.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn post<F: Fabric>(
        &mut self,
        now: u64,
        fabric: &mut F,
        peer: ReplicaId,
        kind: Kind,
        tag: u32,
        range: (u64, u64),
        local: u32,
        remote: u32,
        len: u32,
    ) -> bool {
        debug_assert!(self.tenure.is_none(), "a tenure posts its own operations");
        match self.links.readiness(peer) {
            Readiness::Draining => return false,
            Readiness::Broken => self.links.drop(peer, fabric),
            Readiness::Open => {}
        }
        let work = Work {
            kind,
            tag,
            range,
            local,
            remote,
            len,
        };
        self.links
            .post(now, fabric, peer, 0, work, Answers::Never)
            .posted()
    }

    /// Drops what a state transfer has outstanding to `peer`: none of it lands any more.
    pub(crate) fn drop_connection<F: Fabric>(&mut self, peer: ReplicaId, fabric: &mut F) {
        self.links.drop(peer, fabric);
    }

    /// An operation past its deadline resets its connection.
    pub(crate) fn expire_operations<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let timeout = self.phase_timeout();
        for peer in self.log.others() {
            if self.links.expired(peer, now, timeout) {
                self.links.drop(peer, fabric);
            }
        }
    }
}
