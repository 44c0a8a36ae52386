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
//! The counts go in a committed baseline file; [`compare`] prints the change. They depend on
//! the compiler and on how the core's generic code is inlined into the probe binary, so an edit
//! elsewhere in this crate can move them by a few tenths of a percent.
//!
//! # Invariants
//! - A probe fails (exit 1) rather than count a call that did not do its operation: every
//!   measured leader call commits exactly its one command, every measured follower call applies
//!   exactly one slot, and every background round polls twice at a new read period.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;

use mu_nostd::Shared;

use crate::inproc::{BackgroundSide, Cluster, Params, ReplicationSide};

/// A measured path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// The leader's propose-to-commit fast path: submit one 64-byte command, poll until it is
    /// committed (written to both followers, completions seen, applied, reported).
    LeaderCommit,
    /// A follower's poll that applies one slot (the leader's next write told it the slot is
    /// committed).
    FollowerApply,
    /// One background-plane round at a new read period: the poll that beats and posts the
    /// heartbeat reads, and the poll that takes their completions, scores and elects.
    BackgroundRound,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 3] = [
        Scenario::LeaderCommit,
        Scenario::FollowerApply,
        Scenario::BackgroundRound,
    ];

    /// The name in the baseline file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::LeaderCommit => "leader_commit_64b_3r",
            Scenario::FollowerApply => "follower_apply_64b_3r",
            Scenario::BackgroundRound => "background_round_3r",
        }
    }

    /// What one operation is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Scenario::LeaderCommit => {
                "leader: submit a 64 B command and poll until committed (3 replicas)"
            }
            Scenario::FollowerApply => "follower: one poll that applies one 64 B slot",
            Scenario::BackgroundRound => {
                "background plane: one read period (beat, read 2 heartbeats, score, elect)"
            }
        }
    }

    /// The scenario called `name`.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

const PAYLOAD: usize = 64;
const REPLICAS: u8 = 3;
const WARM_UP: u64 = 256;
const FOLLOWER: usize = 1;
/// Polls one serial command may take on a cluster whose fabric completes work when posted.
const POLLS_PER_COMMIT_MAX: u32 = 64;

/// Runs `scenario` `iterations` times (after a warm-up); the body of `mu-bench probe`.
pub fn probe(scenario: Scenario, iterations: u64) -> Result<(), String> {
    let shared: Vec<Shared> = (0..REPLICAS).map(|_| Shared::new()).collect();
    let params = Params {
        replicas: REPLICAS,
        entry_bytes: PAYLOAD,
        pipeline_depth: 8,
        read_period_ticks: 20,
    };
    let mut cluster = Cluster::new(&params, &shared)?;
    if (WARM_UP + iterations) * 2 >= cluster.config.slot_count as u64 {
        return Err(format!(
            "at most {} iterations: the probe never wraps the log (recycling is not on the \
             measured path)",
            cluster.config.slot_count as u64 / 2 - WARM_UP - 1
        ));
    }
    let mut now = 0;
    let leader = cluster.settle_virtual(&mut now)? as usize;
    if leader == FOLLOWER {
        return Err("replica 1 leads; the probe expects another leader".into());
    }
    let mut command = [0u8; PAYLOAD];
    match scenario {
        Scenario::LeaderCommit => {
            let side = &mut cluster.replication[leader];
            for i in 0..WARM_UP {
                commit_one(side, &mut command, i, now)?;
            }
            for i in WARM_UP..WARM_UP + iterations {
                measured_leader_commit(black_box(side), &mut command, i, now)?;
            }
        }
        Scenario::FollowerApply => {
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
        }
        Scenario::BackgroundRound => {
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
                if i < WARM_UP {
                    background_round(side, now);
                } else {
                    measured_background_round(black_box(side), now);
                }
                let status = side.plane.status();
                if status.leader != Some(leader as u8) || status.alive.count_ones() != 3 {
                    return Err(format!("the view changed at round {i}: {status:?}"));
                }
            }
        }
    }
    Ok(())
}

/// Submits command `i` at the leader and polls until it is committed.
fn commit_one(
    side: &mut ReplicationSide<'_>,
    command: &mut [u8; PAYLOAD],
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

#[inline(never)]
fn measured_leader_commit(
    side: &mut ReplicationSide<'_>,
    command: &mut [u8; PAYLOAD],
    i: u64,
    now: u64,
) -> Result<(), String> {
    commit_one(side, command, i, now)
}

#[inline(never)]
fn measured_follower_apply(side: &mut ReplicationSide<'_>, now: u64) {
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
    if iterations == 0 {
        return Err("at least one measured iteration".into());
    }
    let out = dir.join(format!("callgrind.{}.out", scenario.name()));
    let status = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--toggle-collect=*measured_*",
            "--quiet",
        ])
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
    fn probes_run_outside_callgrind() {
        for scenario in Scenario::ALL {
            probe(scenario, 50).unwrap_or_else(|e| panic!("{}: {e}", scenario.name()));
        }
    }
}
