//! The run loop: one loop polls the responder, both planes and the workload, and publishes
//! telemetry. [`Firmware`] is one replica's whole state, stepped by [`run`] on a board or by a
//! test on the host; it hosts any [`Application`], driven by any [`Workload`] (the setpoint
//! table and its sweep on the boards here).
//!
//! # Invariants
//! - Every step is bounded: the responder serves at most a ring's worth per peer and plane, the
//!   workload submits at most `SUBMITS_PER_STEP` commands.
//! - Nothing is allocated; the replica, its buffers and the fabrics live in `Firmware`, which
//!   `run` keeps in the board's static ([`Statics`]) for the life of the board (it is about
//!   40 KiB besides the application, mostly the leader's per-member pending work, sized for the
//!   largest cluster).
//! - `submitted` counts the commands the core took, each once: the workload's
//!   [`Workload::advance`] runs exactly once per command taken.

use mu_nostd::{Config, Halt, Replica, ReplicaError, ReplicaId, Shared, SubmitError};

use crate::app::{Application, Driven, Hosted, Transfers, Workload};
use crate::board::{Board, ExitCode};
use crate::fabric::WindowFabric;
use crate::fail_safe;
use crate::permissions::Permissions;
use crate::responder::Responder;
use crate::telemetry::{self, control, word, Telemetry};
use crate::window::{Plane, WindowError, WindowLayout};
use crate::words::Words;

// The slot and entry buffers' sizes live with the window layout: `board-configs` checks board
// files against them at build time.
pub use window_layout::firmware::{ENTRY_BYTES, SLOT_BYTES};
/// Bytes of commands the leader may hold undecided.
pub const QUEUE_BYTES: usize = 2048;
/// Commands the workload submits per step at most.
const SUBMITS_PER_STEP: u32 = 4;
/// Steps between telemetry updates.
const TELEMETRY_PERIOD_STEPS: u32 = 16;

/// The replica type the firmware runs.
pub type FirmwareReplica<'s> = Replica<'s, SLOT_BYTES, ENTRY_BYTES, QUEUE_BYTES>;

/// Why a replica cannot start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StartError {
    /// The configuration has no window layout.
    Window(WindowError),
    /// The board's window is smaller than the cluster needs.
    WindowTooSmall {
        /// Bytes needed.
        need: u64,
        /// Bytes the board has.
        have: u64,
    },
    /// The core refused the configuration or the id.
    Replica(ReplicaError),
    /// The control block says this life already ended: whoever starts the replica must write
    /// its new life first (`telemetry::control::LIVES`), or its peers would take it for dead.
    LifeEnded {
        /// The life the control block names.
        life: u32,
    },
}

/// What a replica ended with, for its final report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Report {
    /// The replica.
    pub me: ReplicaId,
    /// Positions applied.
    pub applied: u64,
    /// Chain digest of the applied log prefix.
    pub chain: u64,
    /// Digest of the application's state ([`Application::digest`]).
    pub digest: u64,
    /// Commands this replica committed while it led.
    pub committed: u64,
    /// Times the leader it saw changed.
    pub leader_changes: u32,
    /// The leader it sees.
    pub leader: Option<ReplicaId>,
    /// This life of it is a voter (admitted, or formed the cluster).
    pub voter: bool,
    /// Why its replication plane halted, once it did.
    pub halted: Option<Halt>,
    /// What it did in state transfers.
    pub transfers: Transfers,
}

/// What the caller should do after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep stepping.
    Running,
    /// Report and end: the harness asked, or the single-node self-test is done.
    Finish,
}

/// One firmware replica: its planes, fabrics, responder, application `A` and workload `W`.
pub struct Firmware<'w, A, W> {
    me: ReplicaId,
    window: Words<'w>,
    replica: FirmwareReplica<'w>,
    replication: WindowFabric<'w>,
    background: WindowFabric<'w>,
    responder: Responder<'w>,
    app: Hosted<A>,
    workload: W,
    /// Commands the core took from the workload.
    submitted: u64,
    /// Why the core refused the workload's command for good (empty, or longer than an entry),
    /// once it did: this replica submits nothing more.
    refused: Option<SubmitError>,
    telemetry: Telemetry<'w>,
    /// Commands after which a single replica finishes by itself (the self-test); `None` in a
    /// cluster, which the harness finishes.
    commands_max: Option<u64>,
    steps: u32,
    leader: Option<ReplicaId>,
    leader_changes: u32,
    /// The halt reason already reported on the console.
    halt_reported: Option<Halt>,
}

impl<'w, A: Application, W: Workload<A>> Firmware<'w, A, W> {
    /// Replica `me` of the cluster `config` over `window`, hosting `app` (every replica of the
    /// cluster starts from the same state) and submitting `workload` while it leads and the
    /// control block lets it; `shared` and `permissions` are this replica's own (statics on a
    /// board).
    pub fn new(
        config: Config,
        me: ReplicaId,
        window: Words<'w>,
        shared: &'w Shared,
        permissions: &'w Permissions,
        app: A,
        workload: W,
    ) -> Result<Firmware<'w, A, W>, StartError> {
        let layout = WindowLayout::new(&config).map_err(StartError::Window)?;
        if (window.len() as u64) < layout.bytes {
            return Err(StartError::WindowTooSmall {
                need: layout.bytes,
                have: window.len() as u64,
            });
        }
        let mut replica = FirmwareReplica::new(config, me, shared).map_err(StartError::Replica)?;
        let (life, ended) = telemetry::life(window, me);
        if ended {
            return Err(StartError::LifeEnded { life });
        }
        // Numbered lives keep a restarted replica's permission requests and command sequences
        // apart from its earlier life's, and let the peers take a notice of its end.
        replica.replication.begin_incarnation(life);
        replica.background.begin_incarnation(life);
        let telemetry = Telemetry::new(window, &layout, me);
        telemetry.set(word::PHASE, telemetry::PHASE_BOOTING);
        telemetry.set(word::MAGIC, telemetry::MAGIC);
        Ok(Firmware {
            me,
            window,
            replica,
            replication: WindowFabric::new(window, layout, me, Plane::Replication, permissions),
            background: WindowFabric::new(window, layout, me, Plane::Background, permissions),
            responder: Responder::new(window, layout, me, permissions),
            app: Hosted::new(app),
            workload,
            submitted: 0,
            refused: None,
            telemetry,
            commands_max: None,
            steps: 0,
            leader: None,
            leader_changes: 0,
            halt_reported: None,
        })
    }

    /// The single-node self-test: this replica submits `commands` commands regardless of the
    /// control block, then finishes by itself once all were committed (or once the core refused
    /// one for good); [`Firmware::self_check`] gives the verdict.
    pub fn self_test(mut self, commands: u64) -> Firmware<'w, A, W> {
        self.commands_max = Some(commands);
        self
    }

    /// One pass of the loop at time `now` (core ticks).
    pub fn step(&mut self, now: u64) -> Step {
        let panic_word = telemetry::control_word(self.window, control::PANIC);
        if panic_word == u32::from(self.me) + 1 {
            panic!("fault injection: asked to panic through the control block");
        }
        self.responder.serve();
        self.replica.poll(
            now,
            &mut self.replication,
            &mut self.background,
            &mut Driven {
                hosted: &mut self.app,
                workload: &mut self.workload,
            },
        );
        self.follow_leader();
        let halted = self.report_halt();
        self.submit();
        self.steps = self.steps.wrapping_add(1);
        if halted || self.steps % TELEMETRY_PERIOD_STEPS == 0 {
            self.publish(telemetry::PHASE_RUNNING);
        }
        if self.finished() {
            Step::Finish
        } else {
            Step::Running
        }
    }

    fn follow_leader(&mut self) {
        let leader = self.replica.background.status().leader;
        if leader.is_some() && leader != self.leader {
            if self.leader.is_some() {
                self.leader_changes += 1;
            }
            info!(
                "replica {=u8}: leader is now replica {=u8}",
                self.me,
                leader.unwrap_or(0)
            );
            self.leader = leader;
        }
    }

    /// A halted replication plane never applies again: says why on the console (once) and
    /// returns true the step it happens, so that the telemetry shows it at once.
    fn report_halt(&mut self) -> bool {
        let status = self.replica.replication.status();
        if status.halted == self.halt_reported {
            return false;
        }
        error!(
            "replica {=u8}: replication halted, reason {=u32} (applied {=u64})",
            self.me,
            status.halted.map_or(0, Halt::code),
            status.applied
        );
        self.halt_reported = status.halted;
        true
    }

    fn submit(&mut self) {
        let status = self.replica.replication.status();
        if !status.fast_path || self.stopping() || self.refused.is_some() {
            return;
        }
        for _ in 0..SUBMITS_PER_STEP {
            if self.workload.waiting() {
                return; // For a reply: the next step asks again.
            }
            let ticket = match self
                .replica
                .replication
                .submit(self.workload.command().as_ref())
            {
                Ok(ticket) => ticket,
                Err(e @ (SubmitError::Empty | SubmitError::TooLarge { .. })) => {
                    // The same command comes back every step: it never will be taken.
                    error!(
                        "replica {=u8}: the workload's command {=u64} cannot be submitted ({}); \
                         submitting no more",
                        self.me, self.submitted, e
                    );
                    self.refused = Some(e);
                    return;
                }
                Err(_) => return, // Queue full, or no longer leading: try again next step.
            };
            self.workload.advance(ticket);
            self.submitted += 1;
            if self.stopping() {
                return;
            }
        }
    }

    fn stopping(&self) -> bool {
        let word = |index| telemetry::control_word(self.window, index);
        match self.commands_max {
            Some(max) => self.submitted >= max,
            None => word(control::START) == 0 || word(control::STOP) != 0,
        }
    }

    fn finished(&self) -> bool {
        if telemetry::control_word(self.window, control::FINISH) != 0 {
            return true;
        }
        let Some(max) = self.commands_max else {
            return false;
        };
        // A refused workload would never get there: the self-test ends, and fails.
        self.refused.is_some()
            || self.app.commits() >= max && self.replica.replication.status().queued == 0
    }

    /// Writes the telemetry block with `phase`.
    pub fn publish(&self, phase: u32) {
        let report = self.report();
        let t = &self.telemetry;
        t.set(word::LOOPS, self.steps);
        t.set(word::LEADER, report.leader.map_or(0, |l| u32::from(l) + 1));
        let status = self.replica.replication.status();
        let flags = [
            (status.fast_path, telemetry::FLAG_LEADING),
            (status.halted.is_some(), telemetry::FLAG_HALTED),
            (status.voter, telemetry::FLAG_VOTER),
            (status.catching_up, telemetry::FLAG_CATCHING_UP),
        ];
        t.set(
            word::FLAGS,
            flags
                .iter()
                .filter(|(on, _)| *on)
                .fold(0, |all, (_, flag)| all | flag),
        );
        t.set_u64(word::APPLIED, report.applied);
        t.set_u64(word::CHAIN, report.chain);
        t.set_u64(word::DIGEST, report.digest);
        t.set_u64(word::COMMITTED, report.committed);
        t.set(word::LEADER_CHANGES, report.leader_changes);
        t.set(word::HALT, report.halted.map_or(0, Halt::code));
        t.set(word::INSTALLS, report.transfers.installs);
        t.set_u64(
            word::INSTALLED_POSITION,
            report.transfers.installed_position,
        );
        t.set_u64(word::INSTALLED_BYTES, report.transfers.installed_bytes);
        t.set(word::DONATIONS, report.transfers.donations);
        let judged = self.replica.background.status();
        t.set(word::DEATHS, judged.deaths);
        t.set(word::FALSE_SUSPICIONS, judged.false_suspicions);
        t.set(word::SLOTS_TORN, status.refusals.torn);
        t.set(word::SLOTS_UNCHAINED, status.refusals.unchained);
        t.set_u64(word::BLOCKED_AT, status.blocked.map_or(0, |(at, _)| at + 1));
        let why = status.blocked.map_or(0, |(_, why)| why.code());
        t.set(
            word::BLOCKED_WHY_REFUSED,
            why | u32::from(judged.refused_peers) << 8,
        );
        t.set(word::LAP_NOTICES, status.refusals.lap_notices);
        t.set(word::TRANSFERS, status.transfers);
        t.set(word::PERMISSION_SWITCHES, judged.permission_switches);
        t.set(word::PHASE, phase);
    }

    /// What this replica holds now.
    pub fn report(&self) -> Report {
        let status = self.replica.replication.status();
        Report {
            me: self.me,
            applied: status.applied,
            chain: status.applied_chain,
            digest: self.app.app().digest(),
            committed: self.app.commits(),
            leader_changes: self.leader_changes,
            leader: self.leader,
            voter: status.voter,
            halted: status.halted,
            transfers: self.app.transfers(),
        }
    }

    /// The single-node self-test's verdict: the core took every command of the workload, every
    /// one submitted was committed, and the workload finds in the application what those
    /// commands make of it ([`Workload::check`]).
    pub fn self_check(&self) -> bool {
        self.refused.is_none()
            && self.app.commits() == self.submitted
            && self.workload.check(self.app.app(), self.submitted)
    }

    /// The application.
    pub fn app(&self) -> &A {
        self.app.app()
    }

    /// Commands the core took from the workload.
    pub fn submitted(&self) -> u64 {
        self.submitted
    }

    /// Why the core refused the workload's command for good, if it did (this replica then
    /// submits nothing more).
    pub fn refused(&self) -> Option<SubmitError> {
        self.refused
    }

    /// This replica's telemetry block.
    pub fn telemetry(&self) -> Telemetry<'w> {
        self.telemetry
    }
}

/// The core's clock from a board counter: ticks of `tick_ns` nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Ticker {
    counter_hz: u64,
    tick_ns: u64,
}

impl Ticker {
    /// A ticker for a counter at `counter_hz`.
    pub fn new(counter_hz: u64, tick_ns: u64) -> Ticker {
        assert!(counter_hz > 0);
        assert!(tick_ns > 0);
        Ticker {
            counter_hz,
            tick_ns,
        }
    }

    /// Ticks at counter value `counter`.
    pub fn ticks(&self, counter: u64) -> u64 {
        let seconds = counter / self.counter_hz;
        let rest_ns = counter % self.counter_hz * 1_000_000_000 / self.counter_hz;
        (seconds * 1_000_000_000 + rest_ns) / self.tick_ns
    }
}

/// What [`run`] keeps for the life of the board, in one static the board declares (a generic
/// function cannot declare a static of its type parameters): the state the two planes share,
/// the log permissions the responder enforces, and the replica itself, empty until `run` starts
/// it. Its memory shows in the image's footprint, mostly as .bss (an empty `Once` is all zeros).
pub struct Statics<A, W> {
    /// What the two planes share.
    pub shared: Shared,
    /// The log permissions the responder enforces.
    pub permissions: Permissions,
    firmware: spin::Once<spin::Mutex<Firmware<'static, A, W>>>,
}

impl<A, W> Statics<A, W> {
    /// Nothing started yet.
    pub const fn new() -> Statics<A, W> {
        Statics {
            shared: Shared::new(),
            permissions: Permissions::new(),
            firmware: spin::Once::new(),
        }
    }
}

impl<A, W> Default for Statics<A, W> {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs replica `board.replica_id()` of `config` on `board`, hosting `app` and submitting
/// `workload` while it leads, until it finishes; never returns. `statics` is the board's (see
/// [`Statics`]); `commands_max` makes the run a single-node self-test of that many commands
/// ([`Firmware::self_test`]), whose verdict is the exit code.
pub fn run<B: Board, A: Application, W: Workload<A>>(
    board: &mut B,
    config: Config,
    tick_ns: u64,
    statics: &'static Statics<A, W>,
    app: A,
    workload: W,
    commands_max: Option<u64>,
) -> ! {
    let me = board.replica_id();
    let window = board.window();
    let (shared, permissions) = (&statics.shared, &statics.permissions);
    let started =
        Firmware::new(config, me, window, shared, permissions, app, workload).map(|firmware| {
            match commands_max {
                Some(commands) => firmware.self_test(commands),
                None => firmware,
            }
        });
    let mut firmware = match started {
        Ok(firmware) => {
            // `run` never returns, so it never starts a second replica in these statics.
            assert!(!statics.firmware.is_completed(), "run started twice");
            statics
                .firmware
                .call_once(|| spin::Mutex::new(firmware))
                .lock()
        }
        Err(e) => {
            error!("replica {=u8} cannot start: {}", me, e);
            board.halt(ExitCode::Start)
        }
    };
    fail_safe::arm(firmware.telemetry());
    let ticker = Ticker::new(board.counter_hz(), tick_ns);
    info!(
        "replica {=u8} of {=u8}: window {=usize} bytes, {=u64} ns per tick",
        me,
        config.replica_count,
        window.len(),
        tick_ns
    );
    firmware.publish(telemetry::PHASE_RUNNING);
    while !fail_safe::failed() {
        if firmware.step(ticker.ticks(board.counter())) == Step::Finish {
            firmware.publish(telemetry::PHASE_FINISHED);
            let r = firmware.report();
            info!(
                "report: replica {=u8} applied {=u64} chain {=u64:x} digest {=u64:x} \
                 committed-as-leader {=u64} leader-changes {=u32} halted {=u32} \
                 snapshots-installed {=u32} snapshots-donated {=u32}",
                r.me,
                r.applied,
                r.chain,
                r.digest,
                r.committed,
                r.leader_changes,
                r.halted.map_or(0, Halt::code),
                r.transfers.installs,
                r.transfers.donations
            );
            if commands_max.is_some() && !firmware.self_check() {
                error!("self-test: the application's state does not match the commands submitted");
                board.halt(ExitCode::SelfTest);
            }
            board.halt(ExitCode::Finished);
        }
    }
    board.halt(ExitCode::Panic)
}
