//! One simulated run: a seeded cluster of replicas over the adversarial [`World`], clients with
//! sequential histories, a fault schedule, and the invariants checked at every tick.
//!
//! A run has three phases: faults (crashes, pauses, partitions, on top of the world's constant
//! delays, torn pieces, lost completions), then healing and settling, then a liveness window in
//! which every command must commit within a bound; clients then stop and the replicas must
//! converge.
//!
//! # Invariants checked
//! - agreement: every replica applies exactly the same sequence of (position, command);
//! - validity: only commands a client submitted are applied, and none is malformed;
//! - no loss: a command acknowledged to a client is at its position in that sequence (agreement
//!   then makes every replica that applies the position apply it);
//! - single writer: no log area takes a landed write from a peer its owner did not grant alone
//!   (checked by the world on every landed piece);
//! - no assertion of the core fires (a panic is a violation, with its message);
//! - no replica halts: one that needs positions no log holds installs a snapshot instead;
//! - a restarted replica (a new life, with a zeroed or garbage region: it forgot everything) is
//!   faulty; it is never elected and never counts in a prepare until a leader admitted it;
//! - liveness: after healing, every command commits within a bound, and at the end all running
//!   replicas are voters (a restarted one was admitted), have applied the same prefix and hold
//!   the same state;
//! - linearizability of the client histories against the key-value model.
//!
//! The faulty set has at most `n - majority` replicas: crashes, pauses and partitions only ever
//! touch them, so a majority is always correct and liveness can be demanded.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};

use mu_nostd::layout::RECORD_BYTES;
use mu_nostd::slot;
use mu_nostd::{Config, DetectorConfig, Layout, Replica, Shared, SubmitError};

use crate::copies::Copies;
use crate::history::{self, History};
use crate::kv::{self, Kv, Outcome};
use crate::rng::Rng;
use crate::world::{Faults, Plane, World};

/// The replica type the simulator runs (slots up to 256 B, commands up to 1 KiB).
pub type SimReplica<'s> = Replica<'s, 256, 1024, 8192>;

/// Everything a seed decides before the run starts.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The cluster configuration.
    pub config: Config,
    /// The world's constant adversity.
    pub faults: Faults,
    /// Replicas that may crash, pause or be partitioned.
    pub faulty: Vec<u8>,
    /// Ticks of the fault phase.
    pub fault_ticks: u64,
    /// Ticks allowed for fail-over and catch-up after healing.
    pub settle_ticks: u64,
    /// Ticks of the liveness window.
    pub live_ticks: u64,
    /// Ticks at the end with no new commands, for convergence.
    pub drain_ticks: u64,
    /// Concurrent clients.
    pub clients: u32,
    /// Per mille chance per tick of a crash, pause or partition in the fault phase.
    pub fault_per_mille: u32,
    /// Per mille chance per tick, in the fault phase, of garbage written over soft state: a
    /// record of any replica's background area (heartbeat, applied, requests, acks) or its
    /// commit record. (Garbage over accepted slots or promises would be memory corruption of an
    /// acceptor, outside the crash-fault model; torn slots come from the world itself.)
    pub corrupt_per_mille: u32,
    /// Fill every region with random bytes before the replicas start (no zeroed memory).
    pub garbage_start: bool,
    /// Partitions cut single links (a faulty replica from one other) instead of isolating a
    /// faulty replica. Views then split, and a correct replica may be recycled past (it then
    /// installs a snapshot): such seeds check safety fully, and liveness only while a majority
    /// still runs.
    pub pairwise_cuts: bool,
    /// Faults at fixed ticks, on top of the random ones.
    pub events: Vec<(u64, Event)>,
}

/// A scripted fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Crash-stop a replica.
    Crash(u8),
    /// Start a new life of a replica (crashed or running) with a zeroed region: it forgot
    /// everything.
    Restart(u8),
    /// Stop polling a replica for this many ticks.
    Pause(u8, u64),
    /// Cut a replica off from every other one.
    Isolate(u8),
    /// Reconnect a replica to every other one.
    Reconnect(u8),
}

impl Scenario {
    /// The scenario of `seed`.
    pub fn generate(seed: u64) -> Scenario {
        let mut rng = Rng::new(seed ^ 0x5CE4_A410);
        let counts = [1u8, 2, 3, 3, 3, 3, 4, 5, 5, 6, 7];
        let n = counts[rng.below(counts.len() as u64) as usize];
        let mut config = Config::new(n);
        config.slot_size = [128, 128, 128, 192][rng.below(4) as usize];
        let payload = config.slot_payload_bytes() as usize;
        // Commands of up to ~96 bytes; enough fragments for the largest.
        let frags_needed = 96usize.div_ceil(payload) as u16;
        config.entry_slots_max = frags_needed + rng.below(2) as u16;
        config.pipeline_depth = 1 + rng.below(4) as u16;
        let slot_min = (4 * config.entry_slots_max.max(config.pipeline_depth) as u32).max(16);
        config.slot_count = [slot_min, slot_min * 2, 64.max(slot_min), 256][rng.below(4) as usize];
        config.detector = DetectorConfig::paper(10);
        config.op_timeout_ticks = 120;
        config.permission_retry_ticks = 60;
        config.recycle_period_ticks = 10;
        // Small chunks, so that a snapshot of the key-value store spans several.
        config.transfer_chunk_bytes = 64;
        config.transfer_window = 1 + rng.below(3) as u8;
        assert!(config.validate().is_ok(), "{config:?}");
        let quorum = config.quorum();
        let budget = n - quorum;
        let mut faulty = Vec::new();
        if budget > 0 {
            let size = 1 + rng.below(budget as u64) as u8;
            // Often the initial leader, so that fail-over is exercised.
            if rng.chance(2, 3) {
                faulty.push(0);
            }
            while (faulty.len() as u8) < size {
                let r = rng.below(n as u64) as u8;
                if !faulty.contains(&r) {
                    faulty.push(r);
                }
            }
        }
        let faults = if rng.chance(1, 5) {
            Faults::gentle()
        } else {
            Faults::default()
        };
        let mut scenario = Scenario {
            config,
            faults,
            faulty,
            fault_ticks: 1500 + rng.below(1500),
            settle_ticks: 1500,
            live_ticks: 1200,
            drain_ticks: 600,
            clients: 1 + rng.below(4) as u32,
            fault_per_mille: 2 + rng.below(6) as u32,
            corrupt_per_mille: if rng.chance(1, 4) {
                1 + rng.below(5) as u32
            } else {
                0
            },
            garbage_start: rng.chance(1, 4),
            pairwise_cuts: rng.chance(1, 4),
            events: Vec::new(),
        };
        // Drawn last, so that the rest of every seed's scenario stays as it was: a quarter of
        // the seeds run over connections that take up to an operation timeout to pair, with
        // verbs' grants (a re-grant closes the writer's pairing).
        if rng.chance(1, 4) {
            scenario.faults.pairing_ticks = rng.range(1, config.op_timeout_ticks as u64);
        }
        // Drawn after that, for the same reason: half the seeds have writes done within their
        // post (`Fabric::write_done`), as on shared memory, at random among those that may be.
        if rng.chance(1, 2) {
            scenario.faults.done_writes_per_mille = [250, 500, 1000][rng.below(3) as usize];
        }
        scenario
    }

    /// The scenario of `seed` with its timing drawn from wider ranges than `generate`'s one
    /// setting (operation timeout 120 ticks, permission retry 60, recycle period 10; the
    /// detector reads every 10): operation timeout 40 to 400 ticks, permission retry 10 to 300,
    /// recycle period 1 to 100. The rest of the scenario is `generate(seed)`'s (`sim
    /// --wide-timing`; the CI runs as many seeds of it as of `generate`).
    pub fn generate_wide(seed: u64) -> Scenario {
        let mut scenario = Scenario::generate(seed);
        let mut rng = Rng::new(seed ^ 0x7131_4E60);
        let mut pick = |choices: &[u32]| choices[rng.below(choices.len() as u64) as usize];
        let config = &mut scenario.config;
        config.op_timeout_ticks = pick(&[40, 60, 120, 240, 400]);
        // At most the operation timeout: `Config::validate` refuses more.
        config.permission_retry_ticks = pick(&[10, 30, 60, 150, 300]).min(config.op_timeout_ticks);
        config.recycle_period_ticks = pick(&[1, 3, 10, 30, 100]);
        assert!(config.validate().is_ok(), "{config:?}");
        // The simulated fabric pairs within an operation timeout (as the fabric contract
        // describes verbs): a pairing drawn for the default timeout may be too long now.
        let timeout = config.op_timeout_ticks as u64;
        if scenario.faults.pairing_ticks >= timeout {
            scenario.faults.pairing_ticks = rng.range(1, timeout);
        }
        // Deadlines and periods up to four times longer than the default ones need longer
        // phases to heal and settle in (a replica that catches up by snapshots waits for the
        // leader's periodic reads of its progress).
        let longest = timeout
            .max(2 * config.permission_retry_ticks as u64)
            .max(2 * config.recycle_period_ticks as u64);
        let stretch = longest.div_ceil(120).max(1);
        scenario.settle_ticks *= stretch;
        scenario.live_ticks *= stretch;
        scenario.drain_ticks *= stretch;
        scenario
    }

    /// A quiet scenario: `n` replicas, no random faults, gentle world; tests add what they need.
    pub fn quiet(n: u8, slot_count: u32) -> Scenario {
        let mut config = Config::new(n);
        config.slot_count = slot_count;
        config.slot_size = 128;
        config.entry_slots_max = 2;
        config.pipeline_depth = 2;
        config.detector = DetectorConfig::paper(10);
        config.op_timeout_ticks = 120;
        config.permission_retry_ticks = 60;
        config.recycle_period_ticks = 10;
        config.transfer_chunk_bytes = 64;
        config.transfer_window = 2;
        assert!(config.validate().is_ok());
        Scenario {
            config,
            faults: Faults::gentle(),
            faulty: Vec::new(),
            fault_ticks: 2000,
            settle_ticks: 1500,
            live_ticks: 1200,
            drain_ticks: 600,
            clients: 2,
            fault_per_mille: 0,
            corrupt_per_mille: 0,
            garbage_start: false,
            pairwise_cuts: false,
            events: Vec::new(),
        }
    }

    fn total_ticks(&self) -> u64 {
        self.fault_ticks + self.settle_ticks + self.live_ticks + self.drain_ticks
    }
}

/// A broken invariant.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Which invariant.
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
    /// When.
    pub tick: u64,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Replicas.
    pub replicas: u8,
    /// Commands acknowledged to clients.
    pub committed: usize,
    /// Commands in the agreed log.
    pub decided: usize,
    /// Leader tenures started.
    pub tenures: u32,
    /// Replicas crashed.
    pub crashes: u32,
    /// Replicas restarted (a new life with a fresh or garbage region).
    pub restarts: u32,
    /// Snapshots installed by replicas that needed positions no log held any more.
    pub installs: u32,
    /// Pauses.
    pub pauses: u32,
    /// Replicas that halted (lapped).
    pub halts: u32,
    /// The highest applied position of any replica at the end (how far the log went).
    pub max_applied: u64,
    /// Writes the fabric did within their post (`Fabric::write_done`).
    pub done_writes: u64,
    /// The first broken invariant, if any.
    pub violation: Option<Violation>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Running,
    Paused { until: u64 },
    Crashed,
}

struct Node<'s> {
    replica: SimReplica<'s>,
    /// Lives started so far (the first is 0).
    incarnation: u32,
    kv: Kv,
    life: Life,
    checked: usize,
    last_status: Option<StatusKey>,
}

/// What the trace reports when it changes: roles, views, grants (not positions).
type StatusKey = (
    Option<u8>,
    u8,
    u8,
    Option<u8>,
    Option<u32>,
    Option<u32>,
    bool,
    bool,
    Option<mu_nostd::Halt>,
    bool,
    bool,
    Option<(u64, mu_nostd::Blocked)>,
);

#[derive(Clone, Copy, Debug)]
struct Wait {
    replica: u8,
    ticket: u64,
    op: usize,
    since: u64,
}

#[derive(Clone, Copy, Debug)]
struct Client {
    id: u32,
    seq: u32,
    target: u8,
    waiting: Option<Wait>,
    next_at: u64,
}

/// Ticks a client waits for an answer before it gives the command up as unknown.
const CLIENT_TIMEOUT_TICKS: u64 = 800;
/// Ticks within which a command submitted in the liveness window must commit.
const LIVENESS_BOUND_TICKS: u64 = 1000;
/// Restarts one run may do (each new life needs its own `Shared`).
const RESTARTS_MAX: usize = 32;

struct Sim<'s> {
    scenario: Scenario,
    world: World,
    nodes: Vec<Node<'s>>,
    clients: Vec<Client>,
    history: History,
    submitted: HashSet<Vec<u8>>,
    /// The command applied at each position, as the first replica to apply it did (a replica
    /// that installed a snapshot applies no position below it).
    agreed: std::collections::BTreeMap<u64, Vec<u8>>,
    /// Chain digest of the applied prefix, by applied position: slot-level agreement (a
    /// fragment of a command that never completes is applied too, but is no command).
    chains: std::collections::HashMap<u64, u64>,
    rng: Rng,
    tick: u64,
    trace: Option<String>,
    report: Report,
    /// The `Shared` of each life: one per replica, then one per restart.
    shared: &'s [Shared],
    /// Every replica was admitted as a voter once (the cluster formed).
    formed: bool,
    /// The copies of decided values in the logs (see `copies`).
    copies: Copies,
    /// Per replica: up to where its applied positions were taken as decided for `copies`.
    watched: Vec<u64>,
    /// The chain through each decided position that `copies` learned.
    decided_chains: std::collections::HashMap<u64, u64>,
}

/// Runs seed `seed`; with `trace`, returns the readable trace too.
pub fn run(seed: u64, trace: bool) -> (Report, Option<String>) {
    run_scenario(seed, Scenario::generate(seed), trace)
}

/// Runs seed `seed` with its timing drawn wide (`Scenario::generate_wide`).
pub fn run_wide(seed: u64, trace: bool) -> (Report, Option<String>) {
    run_scenario(seed, Scenario::generate_wide(seed), trace)
}

/// Runs `scenario` with the randomness of `seed`.
pub fn run_scenario(seed: u64, scenario: Scenario, trace: bool) -> (Report, Option<String>) {
    let n = scenario.config.replica_count;
    let shared: Vec<Shared> = (0..n as usize + RESTARTS_MAX)
        .map(|_| Shared::new())
        .collect();
    let mut trace_out = None;
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut sim = Sim::new(seed, scenario, &shared, trace);
        sim.run_all();
        (sim.report, sim.trace)
    }));
    match outcome {
        Ok((report, trace)) => {
            trace_out = trace;
            (report, trace_out)
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".to_string());
            let report = Report {
                seed,
                replicas: n,
                violation: Some(Violation {
                    invariant: "core assertion",
                    detail: message,
                    tick: 0,
                }),
                ..Report::default()
            };
            (report, trace_out)
        }
    }
}

impl<'s> Sim<'s> {
    fn new(seed: u64, scenario: Scenario, shared: &'s [Shared], trace: bool) -> Sim<'s> {
        let config = scenario.config;
        let layout = Layout::new(&config);
        let world = World::new(layout, config.replica_count, scenario.faults, seed);
        let nodes = (0..config.replica_count)
            .map(|id| Node {
                replica: SimReplica::new(config, id, &shared[id as usize]).expect("valid scenario"),
                incarnation: 0,
                kv: Kv::new(),
                life: Life::Running,
                checked: 0,
                last_status: None,
            })
            .collect();
        let clients = (0..scenario.clients)
            .map(|id| Client {
                id,
                seq: 0,
                target: 0,
                waiting: None,
                next_at: 0,
            })
            .collect();
        let mut sim = Sim {
            report: Report {
                seed,
                replicas: config.replica_count,
                ..Report::default()
            },
            scenario,
            world,
            nodes,
            clients,
            history: History::new(),
            submitted: HashSet::new(),
            agreed: std::collections::BTreeMap::new(),
            chains: std::collections::HashMap::new(),
            rng: Rng::new(seed),
            tick: 0,
            trace: trace.then(String::new),
            shared,
            formed: false,
            copies: Copies::new(layout, config.replica_count),
            watched: vec![0; config.replica_count as usize],
            decided_chains: std::collections::HashMap::new(),
        };
        sim.world.watch_log_landings();
        if sim.scenario.garbage_start {
            for id in 0..config.replica_count {
                let mut bytes = vec![0u8; layout.region_bytes as usize];
                for b in &mut bytes {
                    *b = sim.rng.next_u64() as u8;
                }
                sim.world.region_mut(id).copy_from_slice(&bytes);
            }
        }
        let s = sim.scenario.clone();
        sim.note(format_args!(
            "seed {seed}: {} replicas, slots {} x {} B, entry <= {} slots, pipeline {}, faulty {:?}, {} clients, fault phase {} ticks, corruption {}/1000, garbage start {}, {:?}, op timeout {} ticks, permission retry {} ticks, recycle period {} ticks",
            config.replica_count,
            config.slot_count,
            config.slot_size,
            config.entry_slots_max,
            config.pipeline_depth,
            s.faulty,
            s.clients,
            s.fault_ticks,
            s.corrupt_per_mille,
            s.garbage_start,
            s.faults,
            config.op_timeout_ticks,
            config.permission_retry_ticks,
            config.recycle_period_ticks,
        ));
        sim
    }

    fn note(&mut self, line: std::fmt::Arguments<'_>) {
        if let Some(trace) = &mut self.trace {
            let _ = writeln!(trace, "[{:>6}] {}", self.tick, line);
        }
    }

    fn fail(&mut self, invariant: &'static str, detail: String) {
        if self.report.violation.is_none() {
            self.note(format_args!("VIOLATION {invariant}: {detail}"));
            self.report.violation = Some(Violation {
                invariant,
                detail,
                tick: self.tick,
            });
        }
    }

    fn run_all(&mut self) {
        let total = self.scenario.total_ticks();
        let heal_at = self.scenario.fault_ticks;
        while self.tick < total && self.report.violation.is_none() {
            self.world.advance(self.tick);
            self.play_events();
            if self.tick < heal_at {
                self.inject_faults();
                self.inject_corruption();
            } else if self.tick == heal_at {
                self.heal();
            }
            self.resume_paused();
            if self.tick < total - self.scenario.drain_ticks {
                self.submit_commands();
            }
            self.poll_replicas();
            self.formed = self.formed || self.formed_now();
            self.check_tick();
            self.tick += 1;
        }
        if self.report.violation.is_none() {
            self.check_end();
        }
        self.report.decided = self.agreed.len();
    }

    // ---- faults ------------------------------------------------------------------------------

    fn inject_faults(&mut self) {
        if self.scenario.faulty.is_empty() || !self.rng.chance(self.scenario.fault_per_mille, 1000)
        {
            return;
        }
        let victim =
            self.scenario.faulty[self.rng.below(self.scenario.faulty.len() as u64) as usize];
        if self.nodes[victim as usize].life == Life::Crashed {
            if self.rng.chance(1, 4) {
                self.restart(victim);
            }
            return;
        }
        match self.rng.below(10) {
            // A crash before the cluster formed would keep it from ever forming (formation
            // needs every replica): the process restarts instead.
            0 if self.formed && self.rng.chance(1, 2) => {
                self.nodes[victim as usize].life = Life::Crashed;
                self.world.crash(victim);
                self.report.crashes += 1;
                self.note(format_args!("fault: crash replica {victim}"));
            }
            0 | 1 => self.restart(victim),
            2..=5 => {
                let until = self.tick + 20 + self.rng.below(600);
                if self.nodes[victim as usize].life == Life::Running {
                    self.nodes[victim as usize].life = Life::Paused { until };
                    self.report.pauses += 1;
                    self.note(format_args!("fault: pause replica {victim} until {until}"));
                }
            }
            _ if self.scenario.pairwise_cuts => {
                let n = self.scenario.config.replica_count;
                let other = self.rng.below(n as u64) as u8;
                if other != victim {
                    let reachable = self.rng.chance(1, 3);
                    self.world.set_reachable(victim, other, reachable);
                    let what = if reachable { "link" } else { "cut" };
                    self.note(format_args!("fault: {what} {victim} <-> {other}"));
                }
            }
            _ => {
                // Cut the victim off from everyone (or reconnect it); a partition never separates
                // two correct replicas, so the correct majority stays connected.
                let reachable = self.rng.chance(1, 3);
                let n = self.scenario.config.replica_count;
                for other in (0..n).filter(|&o| o != victim) {
                    self.world.set_reachable(victim, other, reachable);
                }
                let what = if reachable { "reconnect" } else { "isolate" };
                self.note(format_args!("fault: {what} replica {victim}"));
            }
        }
    }

    fn play_events(&mut self) {
        let due: Vec<Event> = self
            .scenario
            .events
            .iter()
            .filter(|(tick, _)| *tick == self.tick)
            .map(|&(_, e)| e)
            .collect();
        for event in due {
            self.note(format_args!("scripted: {event:?}"));
            let n = self.scenario.config.replica_count;
            match event {
                Event::Crash(r) => {
                    self.nodes[r as usize].life = Life::Crashed;
                    self.world.crash(r);
                    self.report.crashes += 1;
                }
                Event::Restart(r) => self.restart(r),
                Event::Pause(r, ticks) => {
                    self.nodes[r as usize].life = Life::Paused {
                        until: self.tick + ticks,
                    };
                    self.report.pauses += 1;
                }
                Event::Isolate(r) | Event::Reconnect(r) => {
                    let reachable = matches!(event, Event::Reconnect(_));
                    for other in (0..n).filter(|&o| o != r) {
                        self.world.set_reachable(r, other, reachable);
                    }
                }
            }
        }
    }

    fn inject_corruption(&mut self) {
        if !self.rng.chance(self.scenario.corrupt_per_mille, 1000) {
            return;
        }
        let layout = Layout::new(&self.scenario.config);
        let n = self.scenario.config.replica_count;
        let victim = self.rng.below(n as u64) as u8;
        let (start, len) = if self.rng.chance(3, 4) {
            (layout.background, layout.log - layout.background)
        } else {
            (
                layout.commit_record(),
                mu_nostd::layout::COMMIT_RECORD_BYTES,
            )
        };
        let at = start as u64 + self.rng.below(len as u64);
        let bytes = 1 + self.rng.below(24) as usize;
        let end = (at as usize + bytes).min((start + len) as usize);
        let mut garbage = vec![0u8; end - at as usize];
        for b in &mut garbage {
            *b = self.rng.next_u64() as u8;
        }
        self.world.region_mut(victim)[at as usize..end].copy_from_slice(&garbage);
        self.note(format_args!("corrupt: replica {victim} bytes {at}..{end}"));
    }

    /// Starts a new life of `r`: a zeroed or garbage region, a fresh replica and state machine.
    /// It joins as a recovering replica.
    fn restart(&mut self, r: u8) {
        let lives = self.nodes.len() + self.report.restarts as usize;
        if lives >= self.shared.len() {
            return; // The run's budget of lives is spent.
        }
        self.world.restart(r);
        let garbage = self.rng.chance(1, 2);
        let region = self.world.region_mut(r);
        if garbage {
            for byte in region.iter_mut() {
                *byte = self.rng.next_u64() as u8;
            }
        } else {
            region.fill(0);
        }
        let config = self.scenario.config;
        let node = &mut self.nodes[r as usize];
        self.report.installs += node.kv.installed().len() as u32;
        node.incarnation = self.world.life(r);
        let mut replica = SimReplica::new(config, r, &self.shared[lives]).expect("valid scenario");
        replica.replication.begin_incarnation(node.incarnation);
        replica.background.begin_incarnation(node.incarnation);
        node.replica = replica;
        node.kv = Kv::new();
        node.checked = 0;
        self.copies.forget(r);
        self.watched[r as usize] = 0;
        node.life = Life::Running;
        node.last_status = None;
        self.report.restarts += 1;
        let how = if garbage { "garbage" } else { "zeroed" };
        let life = self.nodes[r as usize].incarnation;
        self.note(format_args!(
            "fault: restart replica {r} (life {life}, {how} region)"
        ));
    }

    /// True once every replica's standing record says it is a voter (read from the regions).
    fn formed_now(&self) -> bool {
        let layout = Layout::new(&self.scenario.config);
        let at = layout.standing() as usize;
        (0..self.nodes.len() as u8).all(|r| {
            let bytes = &self.world.region(r)[at..at + 16];
            mu_nostd::record::decode(at as u32, bytes).is_some_and(|ballot| ballot != 0)
        })
    }

    fn heal(&mut self) {
        self.world.heal();
        self.world.stop_losing_completions();
        for node in &mut self.nodes {
            if let Life::Paused { .. } = node.life {
                node.life = Life::Paused { until: self.tick };
            }
        }
        self.note(format_args!(
            "heal: partitions repaired, paused replicas resume"
        ));
    }

    fn resume_paused(&mut self) {
        for id in 0..self.nodes.len() {
            if let Life::Paused { until } = self.nodes[id].life {
                if until <= self.tick {
                    self.nodes[id].life = Life::Running;
                    self.note(format_args!("replica {id} resumes"));
                }
            }
        }
    }

    // ---- clients -----------------------------------------------------------------------------

    fn submit_commands(&mut self) {
        for index in 0..self.clients.len() {
            let client = self.clients[index];
            if let Some(wait) = client.waiting {
                if self.tick - wait.since > CLIENT_TIMEOUT_TICKS {
                    self.history.complete_unknown(wait.op);
                    self.clients[index].waiting = None;
                }
                continue;
            }
            if self.tick >= client.next_at {
                self.submit_one(index);
            }
        }
    }

    fn next_command(&mut self, client: Client) -> Vec<u8> {
        let max = self.scenario.config.entry_bytes_max() as usize;
        let key = self.rng.below(4) as u8;
        let pad = if self.rng.chance(1, 3) {
            self.rng.range(0, 96.min(max) as u64) as usize
        } else {
            0
        };
        if self.rng.chance(2, 3) {
            let value = ((client.id as u64) << 32) | client.seq as u64;
            kv::encode_put(client.id, client.seq, key, value, pad)
        } else {
            kv::encode_get(client.id, client.seq, key, pad)
        }
    }

    fn submit_one(&mut self, index: usize) {
        let client = self.clients[index];
        let n = self.scenario.config.replica_count;
        let target = client.target;
        if self.nodes[target as usize].life != Life::Running {
            self.clients[index].target = self.rng.below(n as u64) as u8;
            self.clients[index].next_at = self.tick + 5;
            return;
        }
        let command = self.next_command(client);
        match self.nodes[target as usize]
            .replica
            .replication
            .submit(&command)
        {
            Ok(ticket) => {
                let op = self
                    .history
                    .invoke(client.id, client.seq, command.clone(), self.tick);
                self.submitted.insert(command);
                let wait = Wait {
                    replica: target,
                    ticket,
                    op,
                    since: self.tick,
                };
                let c = &mut self.clients[index];
                c.waiting = Some(wait);
                c.seq += 1;
            }
            Err(SubmitError::NotLeader {
                leader: Some(leader),
            }) if leader != target => {
                self.clients[index].target = leader;
                self.clients[index].next_at = self.tick + 1;
            }
            Err(SubmitError::NotLeader { .. })
            | Err(SubmitError::Busy)
            | Err(SubmitError::Halted) => {
                self.clients[index].target = self.rng.below(n as u64) as u8;
                self.clients[index].next_at = self.tick + 10;
            }
            Err(error) => self.fail("client", format!("valid command refused: {error:?}")),
        }
    }

    fn deliver_outcomes(&mut self, replica: u8) {
        let outcomes = self.nodes[replica as usize].kv.take_outcomes();
        for outcome in outcomes {
            let ticket = match outcome {
                Outcome::Committed { ticket, .. } | Outcome::Dropped { ticket } => ticket,
            };
            let Some(index) = self.clients.iter().position(|c| {
                c.waiting
                    .is_some_and(|w| w.replica == replica && w.ticket == ticket)
            }) else {
                continue; // The client gave up on it already.
            };
            let wait = self.clients[index].waiting.take().expect("waiting");
            match outcome {
                Outcome::Committed {
                    position, response, ..
                } => {
                    self.check_no_loss(wait.op, position);
                    self.history
                        .complete_ok(wait.op, position, response, self.tick);
                    self.report.committed += 1;
                    if self.tick >= self.liveness_from()
                        && self.tick - wait.since > LIVENESS_BOUND_TICKS
                    {
                        let waited = self.tick - wait.since;
                        self.fail(
                            "liveness",
                            format!("a command took {waited} ticks to commit"),
                        );
                    }
                }
                Outcome::Dropped { .. } => self.history.complete_unknown(wait.op),
            }
        }
    }

    /// No loss, at the moment a client hears "committed": the agreed log (what every replica
    /// applies, checked by `check_applies`) holds exactly that command at that position.
    fn check_no_loss(&mut self, op: usize, position: u64) {
        let command = &self.history.ops()[op].command;
        let found = self.agreed.get(&position);
        if found != Some(command) {
            let client = self.history.ops()[op].client;
            self.fail(
                "no loss",
                format!("client {client} was told position {position}, which the agreed log does not hold with its command"),
            );
        }
    }

    fn liveness_from(&self) -> u64 {
        self.scenario.fault_ticks + self.scenario.settle_ticks
    }

    // ---- replicas ----------------------------------------------------------------------------

    fn poll_replicas(&mut self) {
        let n = self.nodes.len();
        let start = self.rng.below(n as u64) as usize;
        for k in 0..n {
            let id = (start + k) % n;
            if self.nodes[id].life != Life::Running {
                continue;
            }
            let background_first = self.rng.chance(1, 2);
            let (tick, me) = (self.tick, id as u8);
            let node = &mut self.nodes[id];
            if background_first {
                node.replica
                    .background
                    .poll(tick, &mut self.world.fabric(me, Plane::Background));
            }
            node.replica.replication.poll(
                tick,
                &mut self.world.fabric(me, Plane::Replication),
                &mut node.kv,
            );
            if !background_first {
                node.replica
                    .background
                    .poll(tick, &mut self.world.fabric(me, Plane::Background));
            }
            self.check_applies(id);
            self.deliver_outcomes(me);
        }
    }

    fn check_tick(&mut self) {
        let every = std::env::var("MU_SIM_TRACE_EVERY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        if self.trace.is_some() && self.tick % every == 0 {
            for id in 0..self.nodes.len() {
                if let Some(t) = self.nodes[id].replica.replication.transfer_status() {
                    self.note(format_args!("replica {id} transfer: {t:?}"));
                }
                if let Some(status) = self.nodes[id].replica.replication.leader_status() {
                    let members: Vec<String> = (0..self.nodes.len())
                        .filter(|&m| m != id)
                        .map(|m| {
                            let s = status.members[m];
                            // Where it stands when not active: lost, being surveyed...
                            let state = match (s.lapped, s.active) {
                                (true, true) => "lapped".to_string(),
                                (true, false) => format!("lapped {:?}", s.state),
                                (false, true) => "active".to_string(),
                                (false, false) => format!("{:?}", s.state),
                            };
                            let role = if s.voter { "voter" } else { "recovering" };
                            format!("{m}:{state} {role} sent {} applied {}", s.sent, s.applied)
                        })
                        .collect();
                    let line = format!(
                        "leader {id} tenure {} ballot {} next {} {}: {}",
                        status.tenure,
                        status.ballot,
                        status.next,
                        status.phase,
                        members.join(", ")
                    );
                    self.note(format_args!("{line}"));
                }
            }
        }
        for violation in self.world.take_violations() {
            self.fail("single writer", violation);
        }
        self.watch_copies();
        for id in 0..self.nodes.len() {
            self.check_applies(id);
            self.check_chain(id);
            self.trace_status(id);
        }
    }

    /// No write lowers the ballot of a copy of a decided value (see `copies`): the landings of
    /// this tick are checked against what was seen, then new decisions are watched.
    fn watch_copies(&mut self) {
        for (replica, offset, len) in self.world.take_log_landings() {
            let region = self.world.region(replica);
            for problem in self.copies.landed(replica, region, offset, len) {
                self.fail("decided copy kept", problem);
            }
        }
        let layout = Layout::new(&self.scenario.config);
        for id in 0..self.nodes.len() as u8 {
            if self.nodes[id as usize].life == Life::Crashed {
                continue;
            }
            let applied = self.nodes[id as usize].replica.replication.status().applied;
            let from =
                self.watched[id as usize].max(applied.saturating_sub(layout.slot_count as u64));
            for position in from..applied {
                let at = layout.slot(position) as usize;
                let region = self.world.region(id);
                let Ok(opened) = slot::open(&region[at..at + layout.slot_size as usize], position)
                else {
                    continue; // Installed from a snapshot, or recycled since.
                };
                // Only a header a record vouches for names the decided value's chain: a header
                // torn between two writers opens with a chain nobody wrote.
                let record = |at: u32| &region[at as usize..(at + RECORD_BYTES) as usize];
                let vouched = slot::accepted_ballot(
                    &opened,
                    record(layout.adoption_record(position)),
                    record(layout.decided_mark(position)),
                );
                if vouched.is_none() {
                    continue;
                }
                if self.decided_chains.insert(position, opened.chain).is_some() {
                    continue;
                }
                for r in 0..self.nodes.len() as u8 {
                    let node = &self.nodes[r as usize];
                    let behind = node.replica.replication.status().applied <= position;
                    if node.life != Life::Crashed && behind {
                        self.copies
                            .decided(r, self.world.region(r), position, opened.chain);
                    }
                }
            }
            self.watched[id as usize] = self.watched[id as usize].max(applied);
            self.copies.applied(id, applied);
        }
    }

    /// Slot-level agreement: every replica that applied up to a position holds the same chain.
    fn check_chain(&mut self, id: usize) {
        let status = self.nodes[id].replica.replication.status();
        let chain = *self
            .chains
            .entry(status.applied)
            .or_insert(status.applied_chain);
        if chain != status.applied_chain {
            let applied = status.applied;
            self.fail(
                "agreement",
                format!("replica {id} applied a different log prefix through position {applied} (chain digests differ)"),
            );
        }
    }

    /// Agreement and validity for what replica `id` applied since the last check.
    fn check_applies(&mut self, id: usize) {
        let node = &self.nodes[id];
        let applied = node.kv.applied();
        let mut problems = Vec::new();
        for (position, command) in applied.iter().skip(node.checked) {
            match self.agreed.get(position) {
                Some(c) if c == command => {}
                Some(agreed) => {
                    let layout = Layout::new(&self.scenario.config);
                    let mut slots = String::new();
                    for r in 0..self.nodes.len() {
                        let region = self.world.region(r as u8);
                        let at = layout.slot(*position) as usize;
                        let w = |k: usize| {
                            u64::from_le_bytes(
                                region[at + 8 * k..at + 8 * k + 8].try_into().unwrap(),
                            )
                        };
                        slots.push_str(&format!(
                            " [replica {r}: position {} ballot {} commit {} origin {:x}]",
                            w(1),
                            w(5),
                            w(6),
                            w(3)
                        ));
                    }
                    let describe = |c: &[u8]| match kv::decode(c) {
                        Some(cmd) => format!("client {} seq {}", cmd.client(), cmd.seq()),
                        None => "malformed".to_string(),
                    };
                    let mine = describe(command);
                    let agreed = describe(agreed);
                    problems.push((
                        "agreement",
                        format!("replica {id} applied {mine} at position {position}, where {agreed} was applied;{slots}"),
                    ))
                }
                None => {
                    if !self.submitted.contains(command) || kv::decode(command).is_none() {
                        problems.push((
                            "validity",
                            format!("replica {id} applied a command no client submitted at position {position}"),
                        ));
                    }
                    self.agreed.insert(*position, command.clone());
                }
            }
        }
        self.nodes[id].checked = applied.len();
        if self.nodes[id].kv.malformed() > 0 {
            problems.push((
                "validity",
                format!("replica {id} applied a malformed command"),
            ));
        }
        for (invariant, detail) in problems {
            self.fail(invariant, detail);
        }
    }

    fn trace_status(&mut self, id: usize) {
        let bg = self.nodes[id].replica.background.status();
        let rp = self.nodes[id].replica.replication.status();
        if rp.halted.is_some() {
            let leaders: Vec<_> = self
                .nodes
                .iter()
                .filter_map(|n| n.replica.replication.leader_status())
                .collect();
            let layout = Layout::new(&self.scenario.config);
            let at = layout.slot(rp.applied) as usize;
            let region = self.world.region(id as u8);
            let word = |k: usize| {
                u64::from_le_bytes(region[at + 8 * k..at + 8 * k + 8].try_into().unwrap())
            };
            let slot = format!(
                "slot at {}: position {} ballot {} commit {}",
                rp.applied,
                word(1),
                word(2),
                word(3)
            );
            self.fail(
                "halt",
                format!("replica {id} halted (lapped, and its state machine installs snapshots); {slot}; leaders: {leaders:?}"),
            );
        }
        let key: StatusKey = (
            bg.leader,
            bg.alive,
            bg.voters,
            bg.holder,
            bg.tenure,
            rp.leading,
            rp.fast_path,
            bg.heartbeat_stopped,
            rp.halted,
            rp.voter,
            rp.catching_up,
            rp.blocked,
        );
        let last = self.nodes[id].last_status;
        if last == Some(key) {
            return;
        }
        if rp.leading.is_some() && last.is_none_or(|k| k.5 != rp.leading) {
            self.report.tenures += 1;
        }
        self.nodes[id].last_status = Some(key);
        self.note(format_args!(
            "replica {id}: view leader {:?} alive {:07b} voters {:07b} holder {:?} tenure {:?} | {} leading {:?} fast path {} applied {} queued {} doublings {}{}{}{}{}",
            bg.leader,
            bg.alive,
            bg.voters,
            bg.holder,
            bg.tenure,
            if rp.voter { "voter" } else { "recovering" },
            rp.leading,
            rp.fast_path,
            rp.applied,
            rp.queued,
            rp.deadline_doublings,
            if bg.heartbeat_stopped { " HEARTBEAT STOPPED" } else { "" },
            if rp.halted.is_some() { " HALTED (lapped)" } else { "" },
            if rp.catching_up { " INSTALLING A SNAPSHOT" } else { "" },
            rp.blocked.map_or(String::new(), |(at, why)| format!(" blocked at {at} ({})", why.name())),
        ));
    }

    // ---- the end -----------------------------------------------------------------------------

    fn check_end(&mut self) {
        self.report.installs += self
            .nodes
            .iter()
            .map(|n| n.kv.installed().len() as u32)
            .sum::<u32>();
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&id| {
                self.nodes[id].life == Life::Running
                    && self.nodes[id].replica.replication.status().halted.is_none()
            })
            .collect();
        self.report.halts = self
            .nodes
            .iter()
            .filter(|n| n.replica.replication.status().halted.is_some())
            .count() as u32;
        self.report.max_applied = self
            .nodes
            .iter()
            .map(|n| n.replica.replication.status().applied)
            .max()
            .unwrap_or(0);
        self.report.done_writes = self.world.stats().done_writes;
        let majority_runs = running.len() as u8 >= self.scenario.config.quorum();
        if majority_runs || !self.scenario.pairwise_cuts {
            self.check_liveness_and_convergence(&running);
        }
        let agreed: Vec<(u64, Vec<u8>)> = self.agreed.clone().into_iter().collect();
        if let Err(problem) = history::check(&self.history, &agreed) {
            self.fail("linearizability", problem);
        }
    }

    fn check_liveness_and_convergence(&mut self, running: &[usize]) {
        let live_from = self.liveness_from();
        for client in self.clients.clone() {
            if let Some(wait) = client.waiting {
                if wait.since >= live_from && self.tick - wait.since > LIVENESS_BOUND_TICKS {
                    let waited = self.tick - wait.since;
                    self.fail(
                        "liveness",
                        format!(
                            "client {} waited {waited} ticks without an answer",
                            client.id
                        ),
                    );
                }
            }
        }
        let committed_late = self.history.ops().iter().any(|op| {
            op.invoked_at >= live_from && matches!(op.outcome, history::OpOutcome::Ok { .. })
        });
        if !committed_late {
            let leaders: Vec<_> = self
                .nodes
                .iter()
                .filter_map(|n| n.replica.replication.leader_status())
                .collect();
            self.fail(
                "liveness",
                format!("nothing committed after the cluster healed; leaders: {leaders:?}"),
            );
        }
        let positions: Vec<(usize, u64, u64)> = running
            .iter()
            .map(|&id| {
                (
                    id,
                    self.nodes[id].replica.replication.status().applied,
                    self.nodes[id].kv.digest(),
                )
            })
            .collect();
        if let Some(&id) = running
            .iter()
            .find(|&&id| !self.nodes[id].replica.replication.status().voter)
        {
            self.fail(
                "convergence",
                format!("replica {id} runs but was never admitted as a voter"),
            );
        }
        if let Some(&(_, applied, digest)) = positions.first() {
            if positions
                .iter()
                .any(|&(_, a, d)| a != applied || d != digest)
            {
                let leaders: Vec<_> = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.replica.replication.leader_status())
                    .collect();
                self.fail(
                    "convergence",
                    format!("running replicas differ at the end (id, applied, digest): {positions:?}; leaders: {leaders:?}"),
                );
            }
        }
    }
}
