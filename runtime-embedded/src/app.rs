//! What a firmware replica hosts: any [`Application`] (a deterministic state machine of the
//! core with a digest of its state), driven by a [`Workload`] (the commands the replica submits
//! while it leads, and how the single-node self-test judges what they did).
//!
//! The controller's setpoint table ([`crate::setpoints::Setpoints`], driven by
//! [`crate::setpoints::Sweep`]) is one application; a firmware team that replicates its own
//! controller state implements [`Application`] for it, writes a [`Workload`] (or submits from
//! its own) and hands both to [`crate::run()`] (on a board) or [`crate::Firmware::new`] (on the
//! host). What the telemetry reports besides the digest (commands committed as leader, state
//! transfers) the runtime counts itself, around the application (`Hosted`), so that no
//! application has to and none can report it wrong.
//!
//! # Invariants
//! - `apply` is deterministic: replicas that applied the same positions report the same
//!   [`Application::digest`].
//! - `Hosted` forwards every call of the core to the application unchanged and in order; its
//!   counts are this replica's own, never replicated: `committed` rises by one per ticket the
//!   core hands back as committed, a donation per snapshot the application froze, an install per
//!   `install_end` that returned a digest (nonzero) for an `install_begin` it accepted.

use mu_nostd::{Snapshot, StateMachine, Ticket};

/// An application a firmware replica hosts. Every replica of a cluster hosts the same
/// application, started from the same state.
pub trait Application: StateMachine {
    /// A digest of the state after the positions applied so far: replicas that applied the same
    /// positions give the same digest (the telemetry publishes it; harnesses compare replicas by
    /// it).
    fn digest(&self) -> u64;
}

/// The commands a replica submits while it leads, and the self-test's verdict on them. The
/// runtime asks for [`Workload::command`] until the core takes it, then calls
/// [`Workload::advance`]; it submits at most a few per step, only on the fast path, and in a
/// cluster only while the control block says so.
pub trait Workload<A: Application> {
    /// A command's bytes: at least 1 byte, at most the configuration's largest entry (the core
    /// refuses others, and the runtime then stops submitting and says why on the console).
    type Command: AsRef<[u8]>;

    /// The next command; the same until [`Workload::advance`]. Not asked for while
    /// [`Workload::waiting`].
    fn command(&self) -> Self::Command;

    /// Nothing to submit until a reply arrives (a session's register, a full window): the
    /// runtime asks again next step. By default a workload always has a command.
    fn waiting(&self) -> bool {
        false
    }

    /// The core took the command [`Workload::command`] returned, as `ticket` (handed back to
    /// [`Workload::committed`] or [`Workload::dropped`]): move past it.
    fn advance(&mut self, ticket: Ticket);

    /// The command of `ticket` was decided at `position` and applied on this replica, which
    /// submitted it, with `response` (the application's reply): called once per ticket, after
    /// the application's own `committed`.
    fn committed(&mut self, ticket: Ticket, position: u64, response: &[u8]) {
        let _ = (ticket, position, response);
    }

    /// This replica stopped leading before the command of `ticket` was decided through it: its
    /// outcome is unknown (a later leader may still decide it). Called once per ticket, instead
    /// of [`Workload::committed`].
    fn dropped(&mut self, ticket: Ticket) {
        let _ = ticket;
    }

    /// The single-node self-test's verdict: does `app`, started from its initial state, hold
    /// what this workload's first `submitted` commands make of it when each was applied once, in
    /// the order submitted? (The runtime has checked that all of them were committed.)
    fn check(&self, app: &A, submitted: u64) -> bool;
}

/// What this replica did in state transfers (its own record, not replicated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Transfers {
    /// Snapshots installed.
    pub installs: u32,
    /// The position the last snapshot installed covers (every position below it).
    pub installed_position: u64,
    /// Bytes of every snapshot installed.
    pub installed_bytes: u64,
    /// Snapshots frozen for a joiner.
    pub donations: u32,
}

/// An application as the core sees it inside the firmware: every call forwarded, with this
/// replica's own counts kept around it (see the module's invariants).
pub(crate) struct Hosted<A> {
    app: A,
    committed: u64,
    transfers: Transfers,
    /// The position and length of the snapshot being installed, from an accepted
    /// `install_begin` to its `install_end` or `install_abandon`.
    installing: Option<(u64, u64)>,
}

impl<A: Application> Hosted<A> {
    pub(crate) fn new(app: A) -> Hosted<A> {
        Hosted {
            app,
            committed: 0,
            transfers: Transfers {
                installs: 0,
                installed_position: 0,
                installed_bytes: 0,
                donations: 0,
            },
            installing: None,
        }
    }

    pub(crate) fn app(&self) -> &A {
        &self.app
    }

    /// Commands this replica submitted as leader and saw committed.
    pub(crate) fn commits(&self) -> u64 {
        self.committed
    }

    pub(crate) fn transfers(&self) -> Transfers {
        self.transfers
    }
}

impl<A: Application> StateMachine for Hosted<A> {
    fn apply(&mut self, position: u64, command: &[u8], response: &mut [u8]) -> usize {
        self.app.apply(position, command, response)
    }

    fn committed(&mut self, ticket: Ticket, position: u64, response: &[u8]) {
        self.committed += 1;
        self.app.committed(ticket, position, response);
    }

    fn dropped(&mut self, ticket: Ticket) {
        self.app.dropped(ticket);
    }

    fn snapshot_begin(&mut self, position: u64) -> Option<Snapshot> {
        let snapshot = self.app.snapshot_begin(position);
        if snapshot.is_some() {
            self.transfers.donations = self.transfers.donations.wrapping_add(1);
        }
        snapshot
    }

    fn snapshot_read(&mut self, offset: u64, buf: &mut [u8]) {
        self.app.snapshot_read(offset, buf);
    }

    fn snapshot_end(&mut self) {
        self.app.snapshot_end();
    }

    fn install_begin(&mut self, position: u64, bytes: u64) -> bool {
        let accepted = self.app.install_begin(position, bytes);
        self.installing = accepted.then_some((position, bytes));
        accepted
    }

    fn install_write(&mut self, offset: u64, bytes: &[u8]) {
        self.app.install_write(offset, bytes);
    }

    fn install_end(&mut self) -> u64 {
        let digest = self.app.install_end();
        // An install_end without an accepted install_begin installed nothing to count, whatever
        // the application returned.
        if let (Some((position, bytes)), true) = (self.installing.take(), digest != 0) {
            let t = &mut self.transfers;
            t.installs = t.installs.wrapping_add(1);
            t.installed_position = position;
            t.installed_bytes = t.installed_bytes.wrapping_add(bytes);
        }
        digest
    }

    fn install_abandon(&mut self) {
        self.installing = None;
        self.app.install_abandon();
    }
}

/// The application and the workload for one poll of the core: every call goes to the
/// application (through [`Hosted`]), and the leader's replies and drops also reach the workload
/// that submitted the commands, so that it can settle them (a session, [`crate::sessions`]).
/// A borrow for one poll, not a home: each half stays where `Firmware` keeps it.
pub(crate) struct Driven<'a, A, W> {
    pub(crate) hosted: &'a mut Hosted<A>,
    pub(crate) workload: &'a mut W,
}

impl<A: Application, W: Workload<A>> StateMachine for Driven<'_, A, W> {
    fn apply(&mut self, position: u64, command: &[u8], response: &mut [u8]) -> usize {
        self.hosted.apply(position, command, response)
    }

    fn committed(&mut self, ticket: Ticket, position: u64, response: &[u8]) {
        self.hosted.committed(ticket, position, response);
        self.workload.committed(ticket, position, response);
    }

    fn dropped(&mut self, ticket: Ticket) {
        self.hosted.dropped(ticket);
        self.workload.dropped(ticket);
    }

    fn snapshot_begin(&mut self, position: u64) -> Option<Snapshot> {
        self.hosted.snapshot_begin(position)
    }

    fn snapshot_read(&mut self, offset: u64, buf: &mut [u8]) {
        self.hosted.snapshot_read(offset, buf);
    }

    fn snapshot_end(&mut self) {
        self.hosted.snapshot_end();
    }

    fn install_begin(&mut self, position: u64, bytes: u64) -> bool {
        self.hosted.install_begin(position, bytes)
    }

    fn install_write(&mut self, offset: u64, bytes: &[u8]) {
        self.hosted.install_write(offset, bytes);
    }

    fn install_end(&mut self) -> u64 {
        self.hosted.install_end()
    }

    fn install_abandon(&mut self) {
        self.hosted.install_abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setpoints::{Setpoints, Sweep, SNAPSHOT_BYTES};

    /// Setpoints after the sweep of replica 1 applied at positions `0..count`.
    fn after(count: u64) -> Hosted<Setpoints> {
        let mut hosted = Hosted::new(Setpoints::new());
        let mut sweep = Sweep::new(1);
        for position in 0..count {
            hosted.apply(position, &Workload::<Setpoints>::command(&sweep), &mut []);
            Workload::<Setpoints>::advance(&mut sweep, position);
        }
        hosted
    }

    /// Moves `donor`'s frozen snapshot of `position` into `joiner`; returns `install_end`'s
    /// digest.
    fn transfer(
        donor: &mut Hosted<Setpoints>,
        joiner: &mut Hosted<Setpoints>,
        position: u64,
    ) -> u64 {
        let snapshot = donor.snapshot_begin(position).unwrap();
        assert!(joiner.install_begin(position, snapshot.bytes));
        let mut image = [0u8; SNAPSHOT_BYTES];
        donor.snapshot_read(0, &mut image);
        donor.snapshot_end();
        joiner.install_write(0, &image);
        joiner.install_end()
    }

    #[test]
    fn commits_and_transfers_are_counted_around_the_application() {
        let mut donor = after(7);
        let mut joiner = after(2);
        for ticket in 0..5 {
            donor.committed(ticket, ticket, &[]);
        }
        donor.dropped(5);
        assert_eq!(donor.commits(), 5);
        assert_eq!(joiner.commits(), 0);

        assert_ne!(transfer(&mut donor, &mut joiner, 7), 0);
        assert_eq!(joiner.app().digest(), donor.app().digest());
        let expected = Transfers {
            installs: 1,
            installed_position: 7,
            installed_bytes: SNAPSHOT_BYTES as u64,
            donations: 0,
        };
        assert_eq!(joiner.transfers(), expected);
        assert_eq!(donor.transfers().donations, 1);
        assert_eq!(donor.transfers().installs, 0);
        assert_eq!(joiner.commits(), 0, "commits are this replica's own");

        assert_ne!(transfer(&mut donor, &mut joiner, 9), 0);
        assert_eq!(joiner.transfers().installs, 2);
        assert_eq!(joiner.transfers().installed_position, 9);
        assert_eq!(
            joiner.transfers().installed_bytes,
            2 * SNAPSHOT_BYTES as u64
        );
    }

    #[test]
    fn a_refused_abandoned_or_failed_install_is_not_counted() {
        let mut donor = after(7);
        let mut joiner = after(2);
        // Refused: another length.
        assert!(!joiner.install_begin(7, SNAPSHOT_BYTES as u64 + 1));
        assert_eq!(joiner.install_end(), 0);
        // Abandoned halfway.
        assert!(joiner.install_begin(7, SNAPSHOT_BYTES as u64));
        joiner.install_abandon();
        assert_eq!(joiner.install_end(), 0);
        // Failed: a short image.
        donor.snapshot_begin(7).unwrap();
        let mut image = [0u8; SNAPSHOT_BYTES];
        donor.snapshot_read(0, &mut image);
        assert!(joiner.install_begin(7, SNAPSHOT_BYTES as u64));
        joiner.install_write(0, &image[..SNAPSHOT_BYTES - 1]);
        assert_eq!(joiner.install_end(), 0);
        assert_eq!(joiner.transfers(), Transfers::default());
        assert_eq!(donor.transfers().donations, 1);
    }

    /// An application that keeps no snapshots: no donation is counted for a refusal.
    struct Nothing;

    impl StateMachine for Nothing {
        fn apply(&mut self, _position: u64, _command: &[u8], _response: &mut [u8]) -> usize {
            0
        }
    }

    impl Application for Nothing {
        fn digest(&self) -> u64 {
            0
        }
    }

    #[test]
    fn an_application_without_snapshots_donates_nothing() {
        let mut hosted = Hosted::new(Nothing);
        assert_eq!(hosted.snapshot_begin(3), None);
        assert!(!hosted.install_begin(3, 10));
        assert_eq!(hosted.transfers(), Transfers::default());
    }
}
