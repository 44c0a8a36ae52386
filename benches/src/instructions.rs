//! Instruction counts of the core's hot paths, under callgrind: exactly repeatable, unlike time.
//!
//! `mu-bench probe SCENARIO` builds an in-process cluster over the shared-memory fabric, drives
//! it on a virtual clock to a leader on the fast path, warms up, then calls the scenario's
//! `measured_*` function a number of times. [`count`] runs that probe under
//! `valgrind --tool=callgrind --toggle-collect=*measured_*`, so only instructions executed
//! inside those calls count, and divides by the number of calls. The core and the fabric both
//! run inside them (a shared-memory "one-sided write" is a copy by the leader's CPU); the fabric's
//! share is reported apart: the instructions of its source files, wherever they were inlined.
//!
//! Busy paths are measured at several command sizes, so that the per-byte share (copies,
//! checksums) shows apart from the per-command share; idle polls are measured too, because a
//! plane spends most of its polls finding nothing, and the length of such a poll delays the
//! poll that finds the next command.
//!
//! The counts go in a committed baseline file; [`compare`] prints the change. They depend on
//! the compiler and on how the core's generic code is inlined into the probe binary, so an edit
//! elsewhere in this crate can move them by a few tenths of a percent.
//!
//! # Invariants
//! - A probe fails (exit 1) rather than count a call that did not do its operation: every
//!   measured leader call commits exactly its one command, which fills its slot; every measured
//!   follower call applies exactly one slot; every background round polls twice at a new read
//!   period; and every idle poll finds no completion waiting, leaves none behind, posts
//!   nothing (its plane's count of posts, since a write answered within its post leaves no
//!   completion) and changes nothing its plane's status, its tenure's status or its
//!   application shows.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;

use mu_nostd::{Completion, Fabric, Layout, LeaderStatus, ReplicationStatus, Shared};

use crate::inproc::{BackgroundSide, Cluster, Params, ReplicationSide};

/// A measured path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// The leader's propose-to-commit fast path: submit one 64-byte command, poll until it is
    /// committed (written to both followers, completions seen, applied, reported).
    LeaderCommit,
    /// The same with a 1,024-byte command.
    LeaderCommit1024,
    /// The same with a 4,096-byte command, the largest a benchmark replicates.
    LeaderCommit4096,
    /// A leader's poll with nothing submitted, nothing undecided and nothing in flight (the
    /// commit record of its last decision landed and completed).
    LeaderIdlePoll,
    /// A follower's poll that applies one slot (the leader's next write told it the slot is
    /// committed).
    FollowerApply,
    /// The same with 1,024-byte slots.
    FollowerApply1024,
    /// The same with 4,096-byte slots.
    FollowerApply4096,
    /// A follower's poll when nothing new was written: it applied every position the leader
    /// wrote.
    FollowerIdlePoll,
    /// One background-plane round at a new read period: the poll that beats and posts the
    /// heartbeat reads, and the poll that takes their completions, scores and elects.
    BackgroundRound,
    /// A background poll just after such a round, within the read period: no beat due, no read
    /// due, no completion to take.
    BackgroundIdlePoll,
}

impl Scenario {
    /// Every scenario, in report order: by plane, busy paths (by command size) before idle
    /// polls.
    pub const ALL: [Scenario; 10] = [
        Scenario::LeaderCommit,
        Scenario::LeaderCommit1024,
        Scenario::LeaderCommit4096,
        Scenario::LeaderIdlePoll,
        Scenario::FollowerApply,
        Scenario::FollowerApply1024,
        Scenario::FollowerApply4096,
        Scenario::FollowerIdlePoll,
        Scenario::BackgroundRound,
        Scenario::BackgroundIdlePoll,
    ];

    /// The name in the baseline file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::LeaderCommit => "leader_commit_64b_3r",
            Scenario::LeaderCommit1024 => "leader_commit_1024b_3r",
            Scenario::LeaderCommit4096 => "leader_commit_4096b_3r",
            Scenario::LeaderIdlePoll => "leader_idle_poll_3r",
            Scenario::FollowerApply => "follower_apply_64b_3r",
            Scenario::FollowerApply1024 => "follower_apply_1024b_3r",
            Scenario::FollowerApply4096 => "follower_apply_4096b_3r",
            Scenario::FollowerIdlePoll => "follower_idle_poll_3r",
            Scenario::BackgroundRound => "background_round_3r",
            Scenario::BackgroundIdlePoll => "background_idle_poll_3r",
        }
    }

    /// What one operation is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Scenario::LeaderCommit => {
                "leader: submit a 64 B command and poll until committed (3 replicas)"
            }
            Scenario::LeaderCommit1024 => {
                "leader: submit a 1,024 B command and poll until committed (3 replicas)"
            }
            Scenario::LeaderCommit4096 => {
                "leader: submit a 4,096 B command and poll until committed (3 replicas)"
            }
            Scenario::LeaderIdlePoll => {
                "leader: one poll with nothing submitted, undecided or in flight"
            }
            Scenario::FollowerApply => "follower: one poll that applies one 64 B slot",
            Scenario::FollowerApply1024 => "follower: one poll that applies one 1,024 B slot",
            Scenario::FollowerApply4096 => "follower: one poll that applies one 4,096 B slot",
            Scenario::FollowerIdlePoll => {
                "follower: one poll with nothing new written (everything written applied)"
            }
            Scenario::BackgroundRound => {
                "background plane: one read period (beat, read 2 heartbeats, score, elect)"
            }
            Scenario::BackgroundIdlePoll => {
                "background plane: one poll within a read period (no beat, read or completion)"
            }
        }
    }

    /// The scenario called `name`.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The cluster it runs on: slots sized to its commands; the idle polls and the background
    /// plane run on the 64 B cluster, so that they compare with the 64 B paths.
    fn params(self) -> Params {
        let entry_bytes = match self {
            Scenario::LeaderCommit1024 | Scenario::FollowerApply1024 => 1024,
            Scenario::LeaderCommit4096 | Scenario::FollowerApply4096 => 4096,
            Scenario::LeaderCommit
            | Scenario::LeaderIdlePoll
            | Scenario::FollowerApply
            | Scenario::FollowerIdlePoll
            | Scenario::BackgroundRound
            | Scenario::BackgroundIdlePoll => 64,
        };
        Params {
            replicas: REPLICAS,
            entry_bytes,
            pipeline_depth: 8,
            read_period_ticks: 20,
        }
    }

    /// The most measured calls its probe takes: warm-up and measured commands stay within half
    /// the log, so that no call meets recycling (which is not on the measured path) and the
    /// followers the busy probes never poll do not hold the leader back.
    pub fn iterations_max(self) -> u64 {
        let slots = self.params().config().slot_count as u64;
        ((slots - 1) / 2).saturating_sub(WARM_UP)
    }
}

const REPLICAS: u8 = 3;
const WARM_UP: u64 = 256;
const FOLLOWER: usize = 1;
/// Polls one serial command may take on a cluster whose fabric completes work when posted.
const POLLS_PER_COMMIT_MAX: u32 = 64;
/// Rounds of replication polls a cluster may take to come to rest after the warm-up commands
/// (the followers, never polled while they were committed, catch up a scan bound per poll).
const QUIESCE_ROUNDS_MAX: u32 = 1000;

/// Runs `scenario` `iterations` times (after a warm-up); the body of `mu-bench probe`.
pub fn probe(scenario: Scenario, iterations: u64) -> Result<(), String> {
    let shared: Vec<Shared> = (0..REPLICAS).map(|_| Shared::new()).collect();
    let mut cluster = Cluster::new(&scenario.params(), &shared)?;
    if iterations > scenario.iterations_max() {
        return Err(format!(
            "at most {} iterations of {}: the probe never wraps the log (recycling is not on \
             the measured path)",
            scenario.iterations_max(),
            scenario.name()
        ));
    }
    let mut now = 0;
    let leader = cluster.settle_virtual(&mut now)? as usize;
    if leader == FOLLOWER {
        return Err("replica 1 leads; the probe expects another leader".into());
    }
    let cluster = &mut cluster;
    match scenario {
        Scenario::LeaderCommit => leader_commit::<64>(cluster, leader, now, iterations),
        Scenario::LeaderCommit1024 => leader_commit::<1024>(cluster, leader, now, iterations),
        Scenario::LeaderCommit4096 => leader_commit::<4096>(cluster, leader, now, iterations),
        Scenario::LeaderIdlePoll => {
            quiesce(cluster, leader, now)?;
            let layout = Layout::new(&cluster.config);
            let side = &mut cluster.replication[leader];
            idle_polls(side, &layout, now, iterations, measured_leader_idle_poll)
        }
        Scenario::FollowerApply => follower_apply::<64>(cluster, leader, now, iterations),
        Scenario::FollowerApply1024 => follower_apply::<1024>(cluster, leader, now, iterations),
        Scenario::FollowerApply4096 => follower_apply::<4096>(cluster, leader, now, iterations),
        Scenario::FollowerIdlePoll => {
            quiesce(cluster, leader, now)?;
            let layout = Layout::new(&cluster.config);
            let side = &mut cluster.replication[FOLLOWER];
            idle_polls(side, &layout, now, iterations, measured_follower_idle_poll)
        }
        Scenario::BackgroundRound => background(cluster, leader, now, iterations, false),
        Scenario::BackgroundIdlePoll => background(cluster, leader, now, iterations, true),
    }
}

/// A command of `N` bytes must fill its slot, or a larger command would be measured on a
/// smaller path than it names.
fn fills_slot<const N: usize>(cluster: &Cluster<'_>) -> Result<(), String> {
    let max = cluster.config.entry_bytes_max() as usize;
    if max != N || cluster.config.entry_slots_max != 1 {
        return Err(format!(
            "a {N} B command does not fill one slot (largest entry {max} B, {} slots)",
            cluster.config.entry_slots_max
        ));
    }
    Ok(())
}

fn leader_commit<const N: usize>(
    cluster: &mut Cluster<'_>,
    leader: usize,
    now: u64,
    iterations: u64,
) -> Result<(), String> {
    fills_slot::<N>(cluster)?;
    let mut command = [0u8; N];
    let side = &mut cluster.replication[leader];
    for i in 0..WARM_UP {
        commit_one(side, &mut command, i, now)?;
    }
    for i in WARM_UP..WARM_UP + iterations {
        measured_leader_commit(black_box(side), &mut command, i, now)?;
    }
    Ok(())
}

fn follower_apply<const N: usize>(
    cluster: &mut Cluster<'_>,
    leader: usize,
    now: u64,
    iterations: u64,
) -> Result<(), String> {
    fills_slot::<N>(cluster)?;
    let mut command = [0u8; N];
    for i in 0..WARM_UP + iterations {
        commit_one(&mut cluster.replication[leader], &mut command, i, now)?;
        let follower = &mut cluster.replication[FOLLOWER];
        let before = follower.app.applied;
        if i < WARM_UP {
            follower.poll(now);
        } else {
            measured_follower_apply(black_box(follower), now);
        }
        if i > 0 && follower.app.applied != before + 1 {
            return Err(format!(
                "follower applied {} slots in one poll, not 1",
                follower.app.applied - before
            ));
        }
    }
    Ok(())
}

fn background(
    cluster: &mut Cluster<'_>,
    leader: usize,
    mut now: u64,
    iterations: u64,
    idle: bool,
) -> Result<(), String> {
    let period = cluster.config.detector.read_period_ticks as u64;
    for i in 0..WARM_UP + iterations {
        now += period;
        // Everyone else keeps beating and polling, so that the measured replica's view
        // stays steady: every peer alive, the same leader.
        for (id, side) in cluster.background.iter_mut().enumerate() {
            if id != FOLLOWER {
                side.poll(now);
            }
        }
        for side in &mut cluster.replication {
            side.poll(now);
        }
        let side = &mut cluster.background[FOLLOWER];
        if i < WARM_UP || idle {
            background_round(side, now);
        } else {
            measured_background_round(black_box(side), now);
        }
        if idle {
            // The round beat at `now` and read at `now`: the next beat is half a read period
            // on, the next read a whole one, so a poll one tick later has nothing due.
            background_idle_poll(side, now + 1, i >= WARM_UP)?;
        }
        let status = side.plane.status();
        if status.leader != Some(leader as u8) || status.alive.count_ones() != 3 {
            return Err(format!("the view changed at round {i}: {status:?}"));
        }
    }
    Ok(())
}

/// One background poll at `at` that must be idle: no completion to take, no beat (the
/// heartbeat counter is in the status), nothing posted (it would wait on the fabric), no change
/// to the view.
fn background_idle_poll(
    side: &mut BackgroundSide<'_>,
    at: u64,
    measure: bool,
) -> Result<(), String> {
    let before = side.plane.status();
    if completion_waiting(&mut side.fabric) {
        return Err(format!("a completion waited before the idle poll at {at}"));
    }
    if measure {
        measured_background_idle_poll(black_box(side), at);
    } else {
        side.poll(at);
    }
    let after = side.plane.status();
    if after != before || completion_waiting(&mut side.fabric) {
        return Err(format!(
            "the background poll at {at} was not idle: {before:?} became {after:?}, or it \
             posted work"
        ));
    }
    Ok(())
}

/// Submits command `i` at the leader and polls until it is committed.
fn commit_one<const N: usize>(
    side: &mut ReplicationSide<'_>,
    command: &mut [u8; N],
    i: u64,
    now: u64,
) -> Result<(), String> {
    command[..8].copy_from_slice(&i.to_le_bytes());
    let ticket = side
        .plane
        .submit(command)
        .map_err(|e| format!("submit: {e:?}"))?;
    for _ in 0..POLLS_PER_COMMIT_MAX {
        side.poll(now);
        if side.app.last_ticket == Some(ticket) {
            return Ok(());
        }
    }
    Err(format!(
        "command {i} not committed after {POLLS_PER_COMMIT_MAX} polls"
    ))
}

/// What an idle replication poll leaves as it found: everything its plane's status and its
/// tenure's status show (applied position, queue, blocked slot, operations posted, members'
/// positions, next position), and what its application applied and heard committed.
#[derive(Debug, PartialEq)]
struct Seen {
    status: ReplicationStatus,
    tenure: Option<LeaderStatus>,
    applied: u64,
    committed: u64,
}

impl Seen {
    fn of(side: &ReplicationSide<'_>) -> Seen {
        Seen {
            status: side.plane.status(),
            tenure: side.plane.leader_status(),
            applied: side.app.applied,
            committed: side.app.committed,
        }
    }
}

/// True when an operation's completion waits on `fabric`, which then loses it: call it only
/// where that ends the probe. The shared-memory fabric completes an operation when it is
/// posted, so an empty queue after a poll means the poll left nothing in flight (not that it
/// posted nothing: a write answered within its post leaves no completion, which the plane's
/// count of posts tells), and an empty queue before it means the poll had no completion to
/// take.
fn completion_waiting<F: Fabric>(fabric: &mut F) -> bool {
    fabric.poll(&mut [Completion::EMPTY]) > 0
}

/// Brings the replication planes to rest at `now`, as a cluster whose clients stopped: commands
/// committed serially, then every replication plane polled until a round changes nothing and
/// every follower applied what the leader wrote (the leader's commit record, written in the
/// poll after its last decision, tells them that the last position is decided).
fn quiesce(cluster: &mut Cluster<'_>, leader: usize, now: u64) -> Result<(), String> {
    let mut command = [0u8; 64];
    for i in 0..WARM_UP {
        commit_one(&mut cluster.replication[leader], &mut command, i, now)?;
    }
    for _ in 0..QUIESCE_ROUNDS_MAX {
        let before: Vec<Seen> = cluster.replication.iter().map(Seen::of).collect();
        for side in &mut cluster.replication {
            side.poll(now);
        }
        let after: Vec<Seen> = cluster.replication.iter().map(Seen::of).collect();
        let lead = &after[leader];
        let written = lead.tenure.as_ref().map(|t| t.next);
        let at_rest = lead.status.queued == 0
            && written == Some(lead.status.applied)
            && after
                .iter()
                .all(|s| s.status.applied == lead.status.applied);
        if at_rest && after == before {
            return Ok(());
        }
    }
    Err(format!(
        "the replication planes did not come to rest in {QUIESCE_ROUNDS_MAX} rounds"
    ))
}

/// Fails unless `side` has nothing to replicate: no command queued, and its own log holds
/// nothing at the position it applies next (no proposal undecided at a leader, nothing new from
/// the leader at a follower). The status alone would not tell: a follower that finds a new slot
/// it may not apply yet changes nothing it shows. The probes never wrap the log, so that slot
/// is still all zeros unless it was written in this run.
fn nothing_new(
    side: &mut ReplicationSide<'_>,
    layout: &Layout,
    slot: &mut [u8],
) -> Result<(), String> {
    let status = side.plane.status();
    if status.queued != 0 {
        return Err(format!(
            "replica {} has {} commands queued",
            side.id, status.queued
        ));
    }
    let position = status.applied;
    side.fabric.load(layout.slot(position), slot);
    if slot.iter().all(|&b| b == 0) {
        Ok(())
    } else {
        Err(format!(
            "replica {} holds a slot at position {position}, which it did not apply",
            side.id
        ))
    }
}

/// Polls `side` at `now` (warm-up, then `iterations` measured calls) with nothing else polled
/// in between, failing at the first poll that was not idle.
fn idle_polls(
    side: &mut ReplicationSide<'_>,
    layout: &Layout,
    now: u64,
    iterations: u64,
    measured: fn(&mut ReplicationSide<'_>, u64),
) -> Result<(), String> {
    let mut slot = vec![0u8; layout.slot_size as usize];
    for i in 0..WARM_UP + iterations {
        nothing_new(side, layout, &mut slot)?;
        let before = Seen::of(side);
        if completion_waiting(&mut side.fabric) {
            return Err(format!("a completion waited before idle poll {i}"));
        }
        if i < WARM_UP {
            side.poll(now);
        } else {
            measured(black_box(side), now);
        }
        let after = Seen::of(side);
        if after != before || completion_waiting(&mut side.fabric) {
            return Err(format!(
                "replica {} poll {i} was not idle: {before:?} became {after:?}, or it posted \
                 work",
                side.id
            ));
        }
    }
    Ok(())
}

#[inline(never)]
fn measured_leader_commit<const N: usize>(
    side: &mut ReplicationSide<'_>,
    command: &mut [u8; N],
    i: u64,
    now: u64,
) -> Result<(), String> {
    commit_one(side, command, i, now)
}

#[inline(never)]
fn measured_leader_idle_poll(side: &mut ReplicationSide<'_>, now: u64) {
    side.poll(now);
}

#[inline(never)]
fn measured_follower_apply(side: &mut ReplicationSide<'_>, now: u64) {
    side.poll(now);
}

#[inline(never)]
fn measured_follower_idle_poll(side: &mut ReplicationSide<'_>, now: u64) {
    side.poll(now);
}

fn background_round(side: &mut BackgroundSide<'_>, now: u64) {
    side.poll(now);
    side.poll(now);
}

#[inline(never)]
fn measured_background_round(side: &mut BackgroundSide<'_>, now: u64) {
    background_round(side, now);
}

#[inline(never)]
fn measured_background_idle_poll(side: &mut BackgroundSide<'_>, now: u64) {
    side.poll(now);
}

/// One scenario's count.
#[derive(Clone, Debug)]
pub struct Count {
    /// The scenario.
    pub scenario: Scenario,
    /// Instructions per operation (core and fabric).
    pub per_op: f64,
    /// Of which the shared-memory fabric's.
    pub fabric_per_op: f64,
    /// Of which the benchmark's state machine's (folding each applied entry into a digest).
    pub app_per_op: f64,
    /// The functions with the most instructions of their own, per operation.
    pub top: Vec<(String, f64)>,
}

/// Runs `scenario` under callgrind with `iterations` measured calls; the output goes to `dir`.
pub fn count(
    probe_exe: &Path,
    scenario: Scenario,
    iterations: u64,
    dir: &Path,
) -> Result<Count, String> {
    let out = dir.join(format!("callgrind.{}.out", scenario.name()));
    callgrind(probe_exe, scenario, iterations, &out, &[])?;
    let total = totals(&out)?;
    let per = |ir: u64| ir as f64 / iterations as f64;
    let entries = self_costs(&out)?;
    let share = |part: Part| -> u64 {
        entries
            .iter()
            .filter(|e| e.part() == part)
            .map(|e| e.ir)
            .sum()
    };
    let (fabric, app) = (share(Part::Fabric), share(Part::App));
    // Code inlined from another file is listed again under that file: sum per function.
    let mut functions: Vec<(String, u64)> = Vec::new();
    for entry in entries {
        match functions
            .iter_mut()
            .find(|(name, _)| *name == entry.function)
        {
            Some((_, ir)) => *ir += entry.ir,
            None => functions.push((entry.function, entry.ir)),
        }
    }
    functions.sort_by_key(|&(_, ir)| std::cmp::Reverse(ir));
    Ok(Count {
        scenario,
        per_op: per(total),
        fabric_per_op: per(fabric),
        app_per_op: per(app),
        top: functions
            .into_iter()
            .take(12)
            .map(|(name, ir)| (name, per(ir)))
            .collect(),
    })
}

/// The `summary:` (or `totals:`) line of a callgrind output file: instructions collected.
fn totals(out: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    text.lines()
        .rev()
        .find_map(|line| {
            let rest = line
                .strip_prefix("summary:")
                .or_else(|| line.strip_prefix("totals:"))?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .ok_or_else(|| format!("{}: no totals line", out.display()))
}

/// Instructions executed in one function, from one source file (code inlined from another
/// file is listed apart).
#[derive(Clone, Debug, PartialEq, Eq)]
struct SelfCost {
    file: String,
    function: String,
    ir: u64,
}

/// Whose instructions they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// The core, and library code it calls.
    Core,
    /// The shared-memory fabric: its source files (also where inlined into the core), and
    /// library code inlined into its functions.
    Fabric,
    /// The benchmark itself: its state machine and driver.
    App,
}

impl SelfCost {
    /// The project's source file says whose code it is, wherever it was inlined; library
    /// code belongs to the function it runs in. Generic core functions name their fabric type
    /// parameter inside (`…<…ShmFabric>`), so a function's owner is the path it starts with.
    fn part(&self) -> Part {
        const FILES: [(&str, Part); 3] = [
            ("runtime-linux/src/", Part::Fabric),
            ("mu-nostd/src/", Part::Core),
            ("benches/src/", Part::App),
        ];
        if let Some(&(_, part)) = FILES.iter().find(|(dir, _)| self.file.contains(dir)) {
            return part;
        }
        let owner = self.function.trim_start_matches('<');
        if owner.starts_with("runtime_linux::") {
            Part::Fabric
        } else if owner.starts_with("mu_benches::") {
            Part::App
        } else {
            Part::Core
        }
    }
}

/// Runs `scenario`'s probe (`probe_exe probe`, this crate's `mu-bench`) under callgrind,
/// counting only inside its `iterations` measured calls, with callgrind's `extra` options; the
/// output goes to `out`.
pub fn callgrind(
    probe_exe: &Path,
    scenario: Scenario,
    iterations: u64,
    out: &Path,
    extra: &[&str],
) -> Result<(), String> {
    if iterations == 0 {
        return Err("at least one measured iteration".into());
    }
    let status = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--toggle-collect=*measured_*",
            "--quiet",
        ])
        .args(extra)
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(probe_exe)
        .args(["probe", scenario.name(), "--iterations"])
        .arg(iterations.to_string())
        .status()
        .map_err(|e| format!("cannot run valgrind ({e}); install it (apt-get install valgrind)"))?;
    if !status.success() {
        return Err(format!(
            "the {} probe under callgrind failed ({status})",
            scenario.name()
        ));
    }
    Ok(())
}

/// `callgrind_annotate`'s self costs, which are disjoint and add up to the total.
fn self_costs(out: &Path) -> Result<Vec<SelfCost>, String> {
    let output = Command::new("callgrind_annotate")
        .args(["--inclusive=no", "--threshold=100", "--auto=no"])
        .arg(out)
        .output()
        .map_err(|e| format!("cannot run callgrind_annotate: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "callgrind_annotate {} failed: {}",
            out.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(parse_annotate_line)
        .collect())
}

/// `  1,234 (12.34%)  file:function [object]`; the object is left out when the code was
/// inlined from `file`.
fn parse_annotate_line(line: &str) -> Option<SelfCost> {
    let line = line.trim_start();
    let (number, rest) = line.split_once(' ')?;
    let ir: u64 = number.replace(',', "").parse().ok()?;
    let rest = rest.trim_start();
    let rest = match rest.strip_prefix('(') {
        Some(after) => after.split_once(')')?.1.trim_start(),
        None => rest,
    };
    if rest.starts_with("PROGRAM TOTALS") || rest.is_empty() {
        return None;
    }
    let (file, function) = rest.split_once(':').unwrap_or(("???", rest));
    // The object file, when listed, closes the line: ` [/path/to/binary]`.
    let function = match function.rsplit_once(" [") {
        Some((name, object)) if object.ends_with(']') && object.starts_with('/') => name,
        _ => function,
    }
    .trim();
    Some(SelfCost {
        file: file.to_owned(),
        function: function.to_owned(),
        ir,
    })
}

/// The committed baseline: per scenario, instructions per operation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Baseline {
    /// What produced it (rustc and valgrind versions).
    pub produced_by: String,
    /// (scenario name, instructions per operation).
    pub counts: Vec<(String, f64)>,
}

impl Baseline {
    /// Parses the baseline file format (`# by: …` then `name count` lines; `#` comments).
    pub fn parse(text: &str, path: &Path) -> Result<Baseline, String> {
        let mut baseline = Baseline::default();
        for (number, line) in text.lines().enumerate() {
            if let Some(by) = line.strip_prefix("# by: ") {
                baseline.produced_by = by.trim().to_owned();
                continue;
            }
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(name), Some(count), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!(
                    "{}:{}: expected `scenario instructions`, found `{line}`",
                    path.display(),
                    number + 1
                ));
            };
            let count: f64 = count.parse().map_err(|_| {
                format!(
                    "{}:{}: `{count}` is not a number of instructions",
                    path.display(),
                    number + 1
                )
            })?;
            baseline.counts.push((name.to_owned(), count));
        }
        Ok(baseline)
    }

    /// The file text.
    pub fn render(&self) -> String {
        let mut text = String::from(
            "# Instructions per operation of the core's hot paths under callgrind (core and the\n\
             # shared-memory fabric). Written by `mu-bench instructions --bless`; compared by\n\
             # `mu-bench instructions`.\n",
        );
        let _ = writeln!(text, "# by: {}", self.produced_by);
        for (name, count) in &self.counts {
            let _ = writeln!(text, "{name} {count:.1}");
        }
        text
    }

    /// The count of `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.counts.iter().find(|(n, _)| n == name).map(|&(_, c)| c)
    }
}

/// rustc's and valgrind's versions, which the counts depend on.
pub fn toolchain() -> String {
    let version = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| format!("{program} (unknown)"))
    };
    format!("{}, {}", version("rustc"), version("valgrind"))
}

/// One line per scenario: baseline, now, change.
pub fn compare(baseline: &Baseline, counts: &[Count]) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<24} {:>12} {:>12} {:>9}",
        "scenario", "baseline", "now", "change"
    );
    for count in counts {
        let name = count.scenario.name();
        match baseline.get(name) {
            Some(before) => {
                let _ = writeln!(
                    text,
                    "{name:<24} {before:>12.1} {:>12.1} {:>+8.2}%",
                    count.per_op,
                    (count.per_op - before) * 100.0 / before.max(1.0)
                );
            }
            None => {
                let _ = writeln!(
                    text,
                    "{name:<24} {:>12} {:>12.1} {:>9}",
                    "-", count.per_op, "new"
                );
            }
        }
    }
    text
}

/// The baseline file in the repository.
pub fn baseline_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("instructions.baseline")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotate_lines_parse() {
        let core = parse_annotate_line(
            "  1,234 (12.34%)  mu-nostd/src/hash.rs:mu_nostd::hash::Hasher::bytes [/x/mu-bench]",
        )
        .unwrap();
        assert_eq!(core.function, "mu_nostd::hash::Hasher::bytes");
        assert_eq!((core.ir, core.part()), (1234, Part::Core));
        let inlined = parse_annotate_line(
            "  80,000 ( 1.29%)  /w/runtime-linux/src/mem.rs:mu_nostd::leader::propose",
        )
        .unwrap();
        assert_eq!((inlined.ir, inlined.part()), (80_000, Part::Fabric));
        let library = parse_annotate_line(
            "42 (0.1%)  /rustc/x/atomic.rs:<runtime_linux::shm::ShmFabric as F>::store",
        )
        .unwrap();
        assert_eq!(library.part(), Part::Fabric);
        let generic = parse_annotate_line(
            "9 (0.1%)  mu-nostd/src/tenure/mod.rs:mu_nostd::tenure::Leading::lead<runtime_linux::shm::ShmFabric> [/b]",
        )
        .unwrap();
        assert_eq!(generic.part(), Part::Core);
        let slice = parse_annotate_line("5 (0.1%)  ???:f(&mut [u8]) [/b]").unwrap();
        assert_eq!(slice.function, "f(&mut [u8])");
        let app = parse_annotate_line(
            "7 (0.1%)  benches/src/inproc.rs:<mu_benches::inproc::Tally as S>::apply [/b]",
        )
        .unwrap();
        assert_eq!(app.part(), Part::App);
        assert_eq!(parse_annotate_line("5,000 (100.0%)  PROGRAM TOTALS"), None);
        assert_eq!(parse_annotate_line("Ir  file:function"), None);
    }

    #[test]
    fn baseline_round_trips_and_names_bad_lines() {
        let path = Path::new("b");
        let baseline = Baseline {
            produced_by: "rustc 1, valgrind 3".into(),
            counts: vec![("leader_commit_64b_3r".into(), 1234.5)],
        };
        assert_eq!(Baseline::parse(&baseline.render(), path).unwrap(), baseline);
        let error = Baseline::parse("# c\nleader 12 extra\n", path).unwrap_err();
        assert!(error.starts_with("b:2:"), "{error}");
        assert!(Baseline::parse("leader many\n", path).is_err());
    }

    #[test]
    fn scenarios_have_distinct_names_and_hold_the_default_iterations() {
        for scenario in Scenario::ALL {
            assert_eq!(Scenario::parse(scenario.name()), Some(scenario));
            // 2,000: what `mu-bench instructions` and the suite measure by default.
            assert!(
                scenario.iterations_max() >= 2_000,
                "{}: {}",
                scenario.name(),
                scenario.iterations_max()
            );
        }
    }

    #[test]
    fn idle_probes_refuse_a_plane_with_work() {
        let shared: Vec<Shared> = (0..REPLICAS).map(|_| Shared::new()).collect();
        let mut cluster = Cluster::new(&Scenario::LeaderIdlePoll.params(), &shared).unwrap();
        let mut now = 0;
        let leader = cluster.settle_virtual(&mut now).unwrap() as usize;
        let follower = (leader + 1) % REPLICAS as usize;
        let period = cluster.config.detector.read_period_ticks as u64;
        let error = background_idle_poll(&mut cluster.background[follower], now + period, false)
            .unwrap_err();
        assert!(error.contains("not idle"), "{error}");

        quiesce(&mut cluster, leader, now).unwrap();
        let layout = Layout::new(&cluster.config);
        let poll = measured_leader_idle_poll;
        for id in [leader, follower] {
            idle_polls(&mut cluster.replication[id], &layout, now, 1, poll).unwrap();
        }
        let side = &mut cluster.replication[leader];
        side.plane.submit(&[1; 64]).unwrap();
        let error = idle_polls(side, &layout, now, 1, poll).unwrap_err();
        assert!(error.contains("queued"), "{error}");
        // Proposed, written to the followers and decided: the leader's next poll writes the
        // commit record, and the followers hold a slot they did not apply.
        side.poll(now);
        let error = idle_polls(side, &layout, now, 1, poll).unwrap_err();
        assert!(error.contains("not idle"), "{error}");
        let side = &mut cluster.replication[follower];
        let error = idle_polls(side, &layout, now, 1, poll).unwrap_err();
        assert!(error.contains("did not apply"), "{error}");
    }

    #[test]
    fn probes_run_outside_callgrind() {
        for scenario in Scenario::ALL {
            probe(scenario, 50).unwrap_or_else(|e| panic!("{}: {e}", scenario.name()));
        }
    }
}
