//! The whole suite in one run: instruction counts, Mu's latency and throughput, raft-rs's in
//! the same process on the same machine (in memory, and over loopback TCP), fail-over,
//! steadiness beside a busy neighbour, the order book unreplicated and replicated; then
//! `BENCHMARKS.md` and the latency CDF.
//!
//! # Invariants
//! - Every figure in the report was measured in this run; a part that could not run says why in
//!   the report instead of leaving a number out silently.
//! - Goals are reported, never asserted: the suite fails only when a measurement itself fails
//!   (a cluster that lost its leader, replicas that disagree, a tool that is missing).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::instructions::{self, Baseline, Count, Scenario};
use crate::latency::{self, LatencyParams, Placement, RunError, ThroughputParams, ThroughputRun};
use crate::orderbook::{self, OrderbookBench, OrderbookParams};
use crate::plot::{self, Series};
use crate::raft_peer;
use crate::raft_tcp;
use crate::rejoin::{self, RejoinBench};
use board_configs::Polling;
use runtime_linux::demo::{steadiness as steadiness_run, Neighbour, Steady};

/// Payloads of the latency runs.
pub const PAYLOADS: [usize; 5] = [8, 64, 256, 1024, 4096];
/// Cluster sizes of the latency runs.
pub const SIZES: [u8; 2] = [3, 5];
/// Payloads of raft-rs over loopback TCP: a sample there costs tens of microseconds, mostly in
/// thread wake-ups that do not depend on the payload, so three sizes spanning the table keep the
/// suite (and CI's quick run) short.
pub const TCP_PAYLOADS: [usize; 3] = [64, 1024, 4096];
/// Attempts per Mu run: a run whose leader was deposed (a starved thread on a shared host) is
/// repeated, and the report says so.
const ATTEMPTS: u32 = 3;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// Seconds instead of minutes: CI's run, which keeps the suite from rotting.
    pub quick: bool,
    /// Where the report goes (`BENCHMARKS.md`).
    pub report: PathBuf,
    /// Where the latency CDF goes (SVG).
    pub plot: PathBuf,
    /// Scratch files (callgrind outputs).
    pub work: PathBuf,
    /// The `mu` binary (replica processes of the fail-over benchmark).
    pub mu_exe: PathBuf,
    /// This binary (run under callgrind for the instruction counts).
    pub self_exe: PathBuf,
    /// Fail-over rounds.
    pub failover_rounds: u32,
}

impl SuiteOptions {
    fn samples(&self) -> u64 {
        if self.quick {
            2_000
        } else {
            100_000
        }
    }

    fn throughput_duration(&self) -> Duration {
        Duration::from_millis(if self.quick { 200 } else { 2_000 })
    }

    fn steady_duration(&self) -> Duration {
        Duration::from_secs(if self.quick { 1 } else { 60 })
    }

    fn orderbook(&self) -> OrderbookParams {
        let orders = if self.quick { 2_000 } else { 100_000 };
        OrderbookParams {
            warm_up: orders / 10,
            orders,
            seed: orderbook::SEED,
        }
    }

    fn instruction_iterations(&self) -> u64 {
        if self.quick {
            200
        } else {
            2_000
        }
    }
}

/// One latency configuration: Mu's and raft-rs's distributions, in TSC cycles.
pub struct LatencyRow {
    /// Replicas (raft-rs nodes).
    pub replicas: u8,
    /// Command bytes.
    pub payload: usize,
    /// Mu, leader-side submit to commit.
    pub mu: Histogram<u64>,
    /// raft-rs in memory, leader-side propose to commit.
    pub raft: Histogram<u64>,
    /// raft-rs with a thread per node over loopback TCP, leader-side propose to commit; only
    /// for [`TCP_PAYLOADS`].
    pub raft_tcp: Option<Histogram<u64>>,
}

/// The system a throughput row measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// Mu on the shared-memory fabric.
    Mu,
    /// raft-rs in memory.
    Raft,
}

/// One throughput configuration, 3 replicas.
pub struct ThroughputRow {
    /// Who ran.
    pub system: System,
    /// Bytes per application command.
    pub payload: usize,
    /// Commands per replicated entry.
    pub batch: usize,
    /// Entries (proposals) outstanding.
    pub window: usize,
    /// Commands per second.
    pub per_second: f64,
    /// What the run did (entries, duration).
    pub detail: String,
}

impl ThroughputRow {
    /// The row's name in the report.
    pub fn label(&self) -> String {
        let system = match self.system {
            System::Mu => "Mu",
            System::Raft => "raft-rs",
        };
        let how = match (self.window, self.batch) {
            (1, _) => "serial (window 1)".to_owned(),
            (window, 1) => format!("pipelined (window {window})"),
            (window, batch) => {
                format!("pipelined (window {window}) and batched ({batch} per entry)")
            }
        };
        format!("{system}, {how}, {} B", self.payload)
    }
}

/// Everything one suite run measured.
pub struct Results {
    /// The machine.
    pub machine: Vec<(String, String)>,
    /// TSC cycles per second.
    pub tsc_hz: f64,
    /// Instruction counts, or why there are none.
    pub instructions: Result<Vec<Count>, String>,
    /// The committed baseline, if readable.
    pub baseline: Result<Baseline, String>,
    /// Latency rows.
    pub latency: Vec<LatencyRow>,
    /// Throughput rows.
    pub throughput: Vec<ThroughputRow>,
    /// Fail-over, or why it did not run.
    pub failover: Result<runtime_linux::demo::FailoverReport, String>,
    /// Steady runs of a process cluster, quiet and beside a busy neighbour, or why not.
    pub steadiness: Result<[Steady; 2], String>,
    /// Rejoin of a follower 10 laps behind by a 64 MiB state transfer, or why it did not run.
    pub rejoin: Result<RejoinBench, String>,
    /// The order book, unreplicated and replicated by 3 replicas.
    pub orderbook: OrderbookBench,
    /// Runs repeated because the leader was deposed.
    pub retries: Vec<String>,
    /// How the threads were placed.
    pub placement: Placement,
    /// The fail-over cluster's polling mode.
    pub polling: Polling,
    /// Whether this was the quick run.
    pub quick: bool,
}

/// Runs the suite, printing progress; writes the report and the plot.
pub fn run(options: &SuiteOptions) -> Result<Results, String> {
    let placement = Placement::last_two_cores();
    let tsc_hz = runtime_linux::clock::cycles_per_second();
    let machine = machine(tsc_hz);
    for (key, value) in &machine {
        println!("{key}: {value}");
    }
    let work = &options.work;
    std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;

    println!("\n== instruction counts (callgrind)");
    let instructions = Scenario::ALL
        .into_iter()
        .map(|s| {
            let count =
                instructions::count(&options.self_exe, s, options.instruction_iterations(), work)?;
            println!(
                "{:<24} {:>9.1} instructions/op (core {:.1}, fabric {:.1}, benchmark {:.1})",
                s.name(),
                count.per_op,
                core_per_op(&count),
                count.fabric_per_op,
                count.app_per_op
            );
            Ok(count)
        })
        .collect::<Result<Vec<_>, String>>();
    if let Err(e) = &instructions {
        println!("instruction counts unavailable: {e}");
    }
    let baseline = std::fs::read_to_string(instructions::baseline_path())
        .map_err(|e| format!("{}: {e}", instructions::baseline_path().display()))
        .and_then(|text| Baseline::parse(&text, &instructions::baseline_path()));
    if let (Ok(counts), Ok(baseline)) = (&instructions, &baseline) {
        print!("{}", instructions::compare(baseline, counts));
    }

    let mut retries = Vec::new();
    println!(
        "\n== serial latency, Mu and raft-rs in memory ({}); raft-rs over loopback TCP ({})",
        placement.describe(),
        raft_tcp::describe(placement)
    );
    let mut rows = Vec::new();
    for replicas in SIZES {
        for payload in PAYLOADS {
            let params = LatencyParams {
                replicas,
                payload,
                warm_up: options.samples() / 10,
                samples: options.samples(),
            };
            let what = format!("latency, {replicas} replicas, {payload} B");
            let mu = attempt(&what, &mut retries, || {
                latency::serial_latency(&params, placement)
            })?;
            let raft = on_leader_core(placement, || {
                raft_peer::serial_latency(
                    replicas as usize,
                    payload,
                    params.warm_up as usize,
                    params.samples as usize,
                )
            })?;
            let raft_tcp = if TCP_PAYLOADS.contains(&payload) {
                Some(raft_tcp::serial_latency(
                    replicas as usize,
                    payload,
                    params.warm_up as usize,
                    params.samples as usize,
                    placement,
                )?)
            } else {
                None
            };
            let ns = |h: &Histogram<u64>, q| h.value_at_quantile(q) as f64 * 1e9 / tsc_hz;
            let tcp = raft_tcp.as_ref().map_or(String::new(), |t| {
                format!(
                    " | raft-rs TCP p50 {:>8.0} ns p99 {:>8.0} ns | ratio {:.1}",
                    ns(t, 0.5),
                    ns(t, 0.99),
                    ns(t, 0.5) / ns(&mu, 0.5)
                )
            });
            println!(
                "{replicas} replicas {payload:>5} B: Mu p50 {:>8.0} ns p99 {:>8.0} ns | raft-rs \
                 p50 {:>8.0} ns p99 {:>8.0} ns | ratio {:.1}{tcp}",
                ns(&mu, 0.5),
                ns(&mu, 0.99),
                ns(&raft, 0.5),
                ns(&raft, 0.99),
                ns(&raft, 0.5) / ns(&mu, 0.5)
            );
            rows.push(LatencyRow {
                replicas,
                payload,
                mu,
                raft,
                raft_tcp,
            });
        }
    }

    println!("\n== throughput, 3 replicas");
    let throughput = throughputs(options, placement, &mut retries)?;
    for row in &throughput {
        println!(
            "{:<64} {:>12.0} commands/s  ({})",
            row.label(),
            row.per_second,
            row.detail
        );
    }

    let params = options.orderbook();
    println!(
        "\n== order book: {} orders unreplicated, then replicated by {} replicas (same flow)",
        params.orders,
        orderbook::REPLICAS
    );
    let orderbook = attempt("order book", &mut retries, || {
        orderbook::measure(&params, placement)
    })?;
    print!("{}", orderbook.table(tsc_hz));
    println!("{}", orderbook.describe());

    println!(
        "\n== fail-over: {} SIGKILLs of the leader process",
        options.failover_rounds
    );
    let polling = failover_polling();
    let failover = failover(options, polling);
    if let Err(e) = &failover {
        println!("fail-over benchmark failed: {e}");
    }

    println!(
        "\n== steadiness: 3 replica processes, {:.0} s quiet, then {:.0} s beside a busy \
         neighbour",
        options.steady_duration().as_secs_f64(),
        options.steady_duration().as_secs_f64()
    );
    let steadiness = steadiness(options);
    match &steadiness {
        Ok(runs) => {
            for (name, run) in ["quiet", "busy neighbour"].iter().zip(runs) {
                println!(
                    "{name:<16} {:>9.0} commands/s, {} new tenures ({:.1} per minute)",
                    run.throughput(),
                    run.tenures,
                    run.tenures_per_minute()
                );
            }
        }
        Err(e) => println!("steadiness benchmark failed: {e}"),
    }

    println!(
        "\n== rejoin: a follower {} laps behind installs a {} MiB key-value state",
        rejoin::LAPS,
        (rejoin::KEYS * runtime_linux::kv::VALUE_MAX) >> 20
    );
    let rejoin = rejoin::measure(&options.mu_exe);
    if let Err(e) = &rejoin {
        println!("rejoin benchmark failed: {e}");
    }

    let results = Results {
        machine,
        tsc_hz,
        instructions,
        baseline,
        latency: rows,
        throughput,
        failover,
        steadiness,
        rejoin,
        orderbook,
        retries,
        placement,
        polling,
        quick: options.quick,
    };
    write_outputs(&results, &options.report, &options.plot)?;
    Ok(results)
}

/// A steady run quiet, then one beside a busy neighbour (`yes`).
fn steadiness(options: &SuiteOptions) -> Result<[Steady; 2], String> {
    let run = |neighbour| steadiness_run(&options.mu_exe, options.steady_duration(), neighbour);
    Ok([run(Neighbour::Quiet)?, run(Neighbour::Busy)?])
}

/// Runs `f` up to [`ATTEMPTS`] times while its leader gets deposed, noting each such attempt;
/// any other failure ends the suite at once.
fn attempt<T>(
    what: &str,
    retries: &mut Vec<String>,
    mut f: impl FnMut() -> Result<T, RunError>,
) -> Result<T, String> {
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        match f() {
            Ok(value) => return Ok(value),
            Err(RunError::Deposed(e)) => {
                println!("{what}: the leader was deposed ({e}); running it again");
                retries.push(format!("{what}: {e}"));
                last = e;
            }
            Err(RunError::Failed(e)) => return Err(format!("{what}: {e}")),
        }
    }
    Err(format!(
        "{what}: deposed in all {ATTEMPTS} attempts; the last: {last}"
    ))
}

/// Runs `f` on a thread pinned where Mu's leader runs, so that the peer gets the same core.
fn on_leader_core<T: Send>(
    placement: Placement,
    f: impl FnOnce() -> Result<T, String> + Send,
) -> Result<T, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                latency::pin(placement.leader_core)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err("the raft-rs thread panicked".into()))
    })
}

/// Mu serial, pipelined, and pipelined with batching; raft-rs pipelined at the same window.
fn throughputs(
    options: &SuiteOptions,
    placement: Placement,
    retries: &mut Vec<String>,
) -> Result<Vec<ThroughputRow>, String> {
    let duration = options.throughput_duration();
    let mut rows = Vec::new();
    for (payload, batch, window) in [
        (64, 1, 1),
        (64, 1, WINDOW),
        (64, 16, WINDOW),
        (8, 64, WINDOW),
    ] {
        let params = ThroughputParams {
            replicas: 3,
            payload,
            batch,
            window,
            duration,
        };
        let mut row = ThroughputRow {
            system: System::Mu,
            payload,
            batch,
            window,
            per_second: 0.0,
            detail: String::new(),
        };
        let run: ThroughputRun = attempt(&row.label(), retries, || {
            latency::throughput(&params, placement)
        })?;
        row.per_second = run.commands_per_second();
        row.detail = format!(
            "{} entries of {} B in {:.2} s",
            run.entries,
            payload * batch,
            run.seconds
        );
        rows.push(row);
    }
    let raft = on_leader_core(placement, || raft_peer::throughput(3, 64, WINDOW, duration))?;
    rows.push(ThroughputRow {
        system: System::Raft,
        payload: 64,
        batch: 1,
        window: WINDOW,
        per_second: raft.per_second(),
        detail: format!("{} commands in {:.2} s", raft.commands, raft.seconds),
    });
    Ok(rows)
}

/// The pipelining window of the throughput runs.
const WINDOW: usize = 64;

impl Results {
    /// Commands per second of `system`, pipelined at [`WINDOW`] without batching, 64 B.
    fn pipelined(&self, system: System) -> f64 {
        self.throughput
            .iter()
            .find(|t| t.system == system && t.window == WINDOW && t.batch == 1)
            .map_or(0.0, |t| t.per_second)
    }

    /// Mu's best pipelined and batched rate.
    fn batched(&self) -> f64 {
        self.throughput
            .iter()
            .filter(|t| t.system == System::Mu && t.window > 1 && t.batch > 1)
            .map(|t| t.per_second)
            .fold(0.0, f64::max)
    }
}

fn polling_name(polling: Polling) -> &'static str {
    match polling {
        Polling::Busy => "busy (every plane spins on a core of its own)",
        Polling::Shared => {
            "shared (fewer cores than spinning threads: follower and background planes sleep \
             between polls)"
        }
    }
}

/// Busy polling needs a core per spinning thread (two per replica, and the client).
fn failover_polling() -> Polling {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= 7 {
        Polling::Busy
    } else {
        Polling::Shared
    }
}

fn failover(
    options: &SuiteOptions,
    polling: Polling,
) -> Result<runtime_linux::demo::FailoverReport, String> {
    let failover = runtime_linux::demo::FailoverOptions {
        rounds: options.failover_rounds,
        replicas: 3,
        polling,
        pin_from: None,
        read_period_us: None,
        fabric: runtime_linux::demo::DemoFabric::Shm,
        slots: 1 << 16,
        wrap_laps: 0,
        fault: runtime_linux::cluster::Fault::Kill,
        realtime_priority: None,
    };
    runtime_linux::demo::failover_report(&failover, &options.mu_exe, true)
}

/// What the report says about the machine.
fn machine(tsc_hz: f64) -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    vec![
        ("CPU".into(), cpu),
        ("cores".into(), cores.to_string()),
        ("kernel".into(), kernel),
        (
            "TSC".into(),
            format!("{:.3} GHz ({})", tsc_hz / 1e9, tsc_kind(&cpuinfo)),
        ),
        (
            "isolation".into(),
            runtime_linux::procfs::IsolatedCores::detect().describe(),
        ),
        ("toolchain".into(), instructions::toolchain()),
    ]
}

/// Whether cycle counts are time: an invariant TSC ticks at one rate in every power state.
fn tsc_kind(cpuinfo: &str) -> &'static str {
    let flags = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .unwrap_or("");
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    if has("constant_tsc") && has("nonstop_tsc") {
        "invariant: constant_tsc, nonstop_tsc"
    } else {
        "not invariant here: cycle figures are only approximate time"
    }
}

fn write_outputs(results: &Results, report: &Path, plot_path: &Path) -> Result<(), String> {
    let series = plot_series(results);
    plot::latency_cdf_svg(
        plot_path,
        "Leader-side commit latency, 3 replicas: Mu (shared memory), raft-rs (in memory, loopback TCP)",
        &series,
    )?;
    // The report links the plot relative to itself, so that both render on a forge.
    let link = report
        .parent()
        .and_then(|dir| plot_path.strip_prefix(dir).ok())
        .unwrap_or(plot_path);
    let mut text = render(results, link);
    // Sections other scripts wrote into the report (`scripts/bench-redis`) stay.
    if let Ok(old) = std::fs::read_to_string(report) {
        text.push_str(&kept_sections(&old));
    }
    std::fs::write(report, text).map_err(|e| format!("{}: {e}", report.display()))?;
    println!("\nwrote {} and {}", report.display(), plot_path.display());
    Ok(())
}

fn plot_series(results: &Results) -> Vec<Series<'_>> {
    let ns_per_cycle = 1e9 / results.tsc_hz;
    let mut series = Vec::new();
    for row in results.latency.iter().filter(|r| r.replicas == 3) {
        series.push(Series {
            label: format!("Mu {} B", row.payload),
            histogram: &row.mu,
            ns_per_unit: ns_per_cycle,
        });
    }
    for row in results
        .latency
        .iter()
        .filter(|r| r.replicas == 3 && (r.payload == 64 || r.payload == 4096))
    {
        series.push(Series {
            label: format!("raft-rs {} B", row.payload),
            histogram: &row.raft,
            ns_per_unit: ns_per_cycle,
        });
        if let Some(tcp) = &row.raft_tcp {
            series.push(Series {
                label: format!("raft-rs TCP {} B", row.payload),
                histogram: tcp,
                ns_per_unit: ns_per_cycle,
            });
        }
    }
    series
}

/// The core's instructions per operation: neither the fabric's nor the benchmark's own.
fn core_per_op(count: &Count) -> f64 {
    count.per_op - count.fabric_per_op - count.app_per_op
}

fn ns(results: &Results, histogram: &Histogram<u64>, q: f64) -> f64 {
    histogram.value_at_quantile(q) as f64 * 1e9 / results.tsc_hz
}

/// What marks a section of `BENCHMARKS.md` that another script wrote: its first paragraph
/// starts with it.
pub const KEPT_MARK: &str = "Not written by `scripts/bench`";

/// The sections of an earlier report that another script wrote (see [`KEPT_MARK`]), each with
/// its `## ` title, in their order: the suite's own sections are written anew.
pub fn kept_sections(report: &str) -> String {
    report
        .split("\n## ")
        .skip(1)
        .filter(|section| {
            let body = section.split_once('\n').map_or("", |(_, body)| body);
            body.trim_start().starts_with(KEPT_MARK)
        })
        .map(|section| format!("\n## {}", section.trim_end_matches('\n')) + "\n")
        .collect()
}

/// `BENCHMARKS.md`.
pub fn render(results: &Results, plot: &Path) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "Written by `scripts/bench`{} (`mu-bench suite`); every figure below was measured in \
         that one run, on this machine. Goals are reported, not asserted.\n",
        if results.quick {
            " --quick: a short run that keeps the suite working, too short for figures to quote"
        } else {
            ""
        }
    );
    let _ = writeln!(w, "## Machine\n");
    let _ = writeln!(w, "| | |\n|---|---|");
    for (key, value) in &results.machine {
        let _ = writeln!(w, "| {key} | {value} |");
    }
    let _ = writeln!(w, "| threads | {} |", results.placement.describe());
    render_goals(w, results);
    render_instructions(w, results);
    render_latency(w, results, plot);
    render_throughput(w, results);
    render_failover(w, results);
    render_steadiness(w, results);
    render_rejoin(w, results);
    w.push_str(&results.orderbook.render(
        results.tsc_hz,
        if results.quick {
            "scripts/bench --quick"
        } else {
            "scripts/bench"
        },
    ));
    render_analysis(w, results);
    if !results.retries.is_empty() {
        let _ = writeln!(w, "\n## Repeated runs\n");
        let _ = writeln!(
            w,
            "Runs whose leader was deposed (a starved polling thread) were run again:\n"
        );
        for retry in &results.retries {
            let _ = writeln!(w, "- {retry}");
        }
    }
    md
}

fn render_goals(w: &mut String, results: &Results) {
    let _ = writeln!(w, "\n## Goals\n");
    let _ = writeln!(w, "| goal | measured | met |\n|---|---|---|");
    let mut row = |goal: &str, measured: String, met: Option<bool>| {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not measured",
        };
        let _ = writeln!(w, "| {goal} | {measured} | {met} |");
    };
    match &results.instructions {
        Ok(counts) => {
            let leader = counts.iter().find(|c| c.scenario == Scenario::LeaderCommit);
            if let Some(c) = leader {
                let core = core_per_op(c);
                row(
                    "leader fast path ≤ 300 core instructions per 64 B replication, 3 replicas",
                    format!(
                        "core {core:.0} (with the shared-memory fabric and the benchmark's \
                         state machine: {:.0})",
                        c.per_op
                    ),
                    Some(core <= 300.0),
                );
            }
        }
        Err(e) => row("leader fast path ≤ 300 instructions", e.clone(), None),
    }
    if let Some(r) = results
        .latency
        .iter()
        .find(|r| r.replicas == 3 && r.payload == 64)
    {
        let (p50, p99) = (ns(results, &r.mu, 0.5), ns(results, &r.mu, 0.99));
        row(
            "p50 ≤ 100 ns, shared memory (3 replicas, 64 B)",
            format!("{p50:.0} ns"),
            Some(p50 <= 100.0),
        );
        row(
            "p99 ≤ 500 ns, shared memory (3 replicas, 64 B)",
            format!("{p99:.0} ns"),
            Some(p99 <= 500.0),
        );
        let ratio = ns(results, &r.raft, 0.5) / p50;
        row(
            "raft-rs commit latency / Mu ≥ 100 (p50, 3 replicas, 64 B)",
            format!("{ratio:.1}"),
            Some(ratio >= 100.0),
        );
        let tcp = r.raft_tcp.as_ref().map(|t| ns(results, t, 0.5) / p50);
        row(
            "raft-rs over loopback TCP / Mu p50 ≥ 100 (3 replicas, 64 B)",
            tcp.map_or("not run at 64 B".into(), |tcp| format!("{tcp:.1}")),
            tcp.map(|tcp| tcp >= 100.0),
        );
    }
    let (unbatched, best) = (results.pipelined(System::Mu), results.batched());
    row(
        "≥ 5 M commands/s pipelined, one leader core",
        format!(
            "{:.2} M/s pipelined; {:.2} M/s pipelined and batched",
            unbatched / 1e6,
            best / 1e6
        ),
        Some(unbatched >= 5e6),
    );
    render_diet_goals(&mut row, results);
    match &results.failover {
        Ok(f) => {
            let (p50, p99) = (
                f.total.value_at_quantile(0.5) as f64 / 1e3,
                f.total.value_at_quantile(0.99) as f64 / 1e3,
            );
            row(
                "fail-over p50 ≤ 100 µs",
                format!("{p50:.1} µs"),
                Some(p50 <= 100.0),
            );
            row(
                "fail-over p99 ≤ 500 µs",
                format!("{p99:.1} µs"),
                Some(p99 <= 500.0),
            );
        }
        Err(e) => row("fail-over p50 ≤ 100 µs, p99 ≤ 500 µs", e.clone(), None),
    }
    match &results.steadiness {
        Ok([quiet, busy]) => {
            row(
                "no new tenure while the leader lives, beside a busy neighbour",
                format!(
                    "{} in {:.0} s ({} in the quiet run)",
                    busy.tenures, busy.seconds, quiet.tenures
                ),
                Some(busy.tenures == 0),
            );
            let ratio = quiet.throughput() / busy.throughput();
            row(
                "throughput beside a busy neighbour within 2x of quiet",
                format!(
                    "{:.0} vs {:.0} commands/s ({ratio:.2}x less)",
                    busy.throughput(),
                    quiet.throughput()
                ),
                Some(ratio <= 2.0),
            );
        }
        Err(e) => row("steady beside a busy neighbour", e.clone(), None),
    }
    match &results.rejoin {
        Ok(r) => {
            let rate = r.rejoin.install_rate();
            row(
                "state transfer ≥ 1 GB/s over shared memory (64 MiB key-value state)",
                format!("{:.0} MB/s", rate / 1e6),
                Some(rate >= 1e9),
            );
            let ratio = r.throughput_ratio();
            row(
                "leader throughput drops ≤ 10% while a transfer runs",
                ratio.map_or("the install ran between two client looks".into(), |q| {
                    format!("{:.0}% of before", 100.0 * q)
                }),
                ratio.map(|q| q >= 0.9),
            );
        }
        Err(e) => row(
            "state transfer ≥ 1 GB/s, throughput drop ≤ 10%",
            e.clone(),
            None,
        ),
    }
}

/// Starts a section of the report titled `title`: what it reports, or `None` after saying why
/// it was not measured.
/// An instruction goal: its words, the probe, the most allowed, and what of the count it takes.
type InstructionGoal = (&'static str, Scenario, f64, fn(&Count) -> f64);

/// The fast path diet's goals: instructions of the hot paths and of idle polls, latency at
/// 64 B and 4 KiB against both raft-rs peers, pipelined throughput.
fn render_diet_goals(row: &mut impl FnMut(&str, String, Option<bool>), results: &Results) {
    let count = |scenario| {
        results
            .instructions
            .as_ref()
            .ok()
            .and_then(|counts| counts.iter().find(|c: &&Count| c.scenario == scenario))
    };
    let per_op = |c: &Count| c.per_op;
    let limits: [InstructionGoal; 5] = [
        (
            "leader 64 B commit ≤ 1,200 instructions, 3 replicas (core and fabric)",
            Scenario::LeaderCommit,
            1200.0,
            per_op,
        ),
        (
            "of which the core's ≤ 600",
            Scenario::LeaderCommit,
            600.0,
            core_per_op,
        ),
        (
            "follower apply of one 64 B slot ≤ 800 instructions",
            Scenario::FollowerApply,
            800.0,
            per_op,
        ),
        (
            "idle follower poll ≤ 100 instructions",
            Scenario::FollowerIdlePoll,
            100.0,
            per_op,
        ),
        (
            "idle background poll ≤ 400 instructions",
            Scenario::BackgroundIdlePoll,
            400.0,
            per_op,
        ),
    ];
    for (goal, scenario, limit, measure) in limits {
        match count(scenario) {
            Some(c) => {
                let n = measure(c);
                row(goal, format!("{n:.0}"), Some(n <= limit));
            }
            None => row(goal, "not counted".into(), None),
        }
    }
    let cell = |replicas: u8, payload: usize| {
        results
            .latency
            .iter()
            .find(|r| r.replicas == replicas && r.payload == payload)
    };
    if let Some(r) = cell(3, 64) {
        let p50 = ns(results, &r.mu, 0.5);
        row(
            "p50 ≤ 250 ns (3 replicas, 64 B)",
            format!("{p50:.0} ns"),
            Some(p50 <= 250.0),
        );
        let ratio = ns(results, &r.raft, 0.5) / p50;
        row(
            "in-memory raft-rs / Mu p50 ≥ 10 (3 replicas, 64 B)",
            format!("{ratio:.1}"),
            Some(ratio >= 10.0),
        );
    }
    if let Some(r) = cell(3, 4096) {
        let ratio = ns(results, &r.raft, 0.5) / ns(results, &r.mu, 0.5);
        row(
            "in-memory raft-rs / Mu p50 ≥ 2 (3 replicas, 4,096 B)",
            format!("{ratio:.1}"),
            Some(ratio >= 2.0),
        );
        let p99 = ns(results, &r.mu, 0.99) / 1e3;
        row(
            "p99 ≤ 10 µs (3 replicas, 4,096 B)",
            format!("{p99:.1} µs"),
            Some(p99 <= 10.0),
        );
    }
    let unbatched = results.pipelined(System::Mu);
    row(
        "≥ 6 M commands/s pipelined without batching (64 B)",
        format!("{:.2} M/s", unbatched / 1e6),
        Some(unbatched >= 6e6),
    );
}

fn section<'r, T>(w: &mut String, title: &str, measured: &'r Result<T, String>) -> Option<&'r T> {
    let _ = writeln!(w, "\n## {title}\n");
    match measured {
        Ok(measured) => Some(measured),
        Err(e) => {
            let _ = writeln!(w, "Not measured: {e}");
            None
        }
    }
}

fn render_instructions(w: &mut String, results: &Results) {
    let Some(counts) = section(
        w,
        "Instructions per operation (callgrind)",
        &results.instructions,
    ) else {
        return;
    };
    let _ = writeln!(
        w,
        "Exact counts: the core and the shared-memory fabric, driven from one thread on a \
         virtual clock, under `valgrind --tool=callgrind --toggle-collect=*measured_*`. \
         \"Fabric\" counts the shared-memory fabric's own code (its source files, also where \
         inlined into the core); on RDMA most of that work is the NIC's, apart from posting and \
         polling. \"Benchmark\" is the probe's own driver and its state machine (a digest of \
         each applied entry). `mu-bench instructions` compares the totals with \
         `benches/instructions.baseline`.\n"
    );
    let _ = writeln!(
        w,
        "| operation | instructions | core | fabric | benchmark | baseline | change |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for c in counts {
        let (base, change) = match results
            .baseline
            .as_ref()
            .ok()
            .and_then(|b| b.get(c.scenario.name()))
        {
            Some(b) => (
                format!("{b:.0}"),
                format!("{:+.2}%", (c.per_op - b) * 100.0 / b.max(1.0)),
            ),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            w,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {base} | {change} |",
            c.scenario.describe(),
            c.per_op,
            core_per_op(c),
            c.fabric_per_op,
            c.app_per_op
        );
    }
    if let Some(c) = counts.iter().find(|c| c.scenario == Scenario::LeaderCommit) {
        let _ = writeln!(
            w,
            "\nWhere the leader's instructions go (self cost per operation, with the code \
             inlined into each function, top functions):\n"
        );
        let _ = writeln!(w, "| function | instructions |\n|---|---:|");
        for (function, ir) in &c.top {
            let _ = writeln!(w, "| `{}` | {ir:.0} |", function.replace('|', "\\|"));
        }
    }
}

fn render_latency(w: &mut String, results: &Results, plot: &Path) {
    let _ = writeln!(w, "\n## Serial commit latency at the leader\n");
    let _ = writeln!(
        w,
        "Mu: replica 0's replication plane on one pinned thread submits a command and polls \
         until its state machine hears it committed (written to a majority, applied); the other \
         planes (the followers' replication planes and every background plane) share a second \
         pinned thread. raft-rs 0.7: three (five) `RawNode`s driven from one thread pinned to \
         the same core as Mu's leader, in-memory messages and `MemStorage`; the leader takes a \
         turn after each follower, so a command commits once a quorum of followers stepped, as \
         if followers ran in parallel; propose at the leader until it applies the entry. So Mu \
         uses two cores and raft-rs one, but neither puts more than a quorum's follower work \
         on the measured path (Mu's followers do none). `lfence; rdtsc` before, `rdtscp; \
         lfence` after; hdrhistogram; one run per cell, so neighbouring cells differ by this \
         host's noise too. Cycles at {:.3} GHz.\n",
        results.tsc_hz / 1e9
    );
    let _ = writeln!(
        w,
        "![latency CDF]({})\n\n| replicas | payload | Mu p50 | Mu p99 | Mu p99.9 | raft-rs p50 | raft-rs p99 | raft-rs p99.9 | p50 ratio |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        plot.display()
    );
    for r in &results.latency {
        let cell = |h: &Histogram<u64>, q| {
            format!(
                "{:.0} ns ({} cyc)",
                ns(results, h, q),
                h.value_at_quantile(q)
            )
        };
        let _ = writeln!(
            w,
            "| {} | {} B | {} | {} | {} | {} | {} | {} | {:.1} |",
            r.replicas,
            r.payload,
            cell(&r.mu, 0.5),
            cell(&r.mu, 0.99),
            cell(&r.mu, 0.999),
            cell(&r.raft, 0.5),
            cell(&r.raft, 0.99),
            cell(&r.raft, 0.999),
            ns(results, &r.raft, 0.5) / ns(results, &r.mu, 0.5)
        );
    }
    let samples = results.latency.first().map_or(0, |r| r.mu.len());
    let _ = writeln!(
        w,
        "\n{samples} samples per cell after a warm-up of a tenth as many."
    );
    let cores = results
        .machine
        .iter()
        .find(|(key, _)| key == "cores")
        .map_or("?", |(_, value)| value.as_str());
    let _ = writeln!(
        w,
        "\nraft-rs over loopback TCP, the peer a user would deploy: the same nodes, \
         configuration and state machine, but each node on a thread of its own ({} of this \
         host's {cores} cores), sending its messages in raft's protobuf encoding, length-framed, \
         over one loopback TCP connection per pair of nodes (`TCP_NODELAY`; the messages one \
         `Ready` releases go to each node in one `write`). Each thread blocks in `poll(2)` until \
         a connection is readable: there are more node threads than cores, and a spinning node \
         would take the core from the node a message is for. Timed as above at node 1: propose \
         until it applies the entry; between samples (untimed) until every node applied it. \
         Same samples per cell, at {} B.\n",
        raft_tcp::describe(results.placement),
        TCP_PAYLOADS.map(|p| p.to_string()).join(", ")
    );
    let _ = writeln!(
        w,
        "| replicas | payload | raft-rs TCP p50 | raft-rs TCP p99 | raft-rs TCP p99.9 | p50 ratio to Mu | p50 ratio to raft-rs in memory |\n|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (r, tcp) in results
        .latency
        .iter()
        .filter_map(|r| Some((r, r.raft_tcp.as_ref()?)))
    {
        let cell = |q| {
            format!(
                "{:.0} ns ({} cyc)",
                ns(results, tcp, q),
                tcp.value_at_quantile(q)
            )
        };
        let p50 = ns(results, tcp, 0.5);
        let _ = writeln!(
            w,
            "| {} | {} B | {} | {} | {} | {:.1} | {:.1} |",
            r.replicas,
            r.payload,
            cell(0.5),
            cell(0.99),
            cell(0.999),
            p50 / ns(results, &r.mu, 0.5),
            p50 / ns(results, &r.raft, 0.5)
        );
    }
}

fn render_throughput(w: &mut String, results: &Results) {
    let _ = writeln!(w, "\n## Throughput, 3 replicas\n");
    let _ = writeln!(
        w,
        "Mu keeps a window of entries submitted (the leader has up to 64 slots in flight and \
         writes each follower everything unsent in one write); batching packs application \
         commands into one entry. The followers' planes share one thread, and the leader never \
         runs a log's lap ahead of a live follower, so a slow follower thread can hold the \
         leader back. Rates are means over the run (the latency table shows medians). raft-rs \
         runs its three nodes on one thread.\n"
    );
    let _ = writeln!(w, "| run | commands/s | detail |\n|---|---:|---|");
    for t in &results.throughput {
        let _ = writeln!(w, "| {} | {:.0} | {} |", t.label(), t.per_second, t.detail);
    }
    let (mu, raft) = (
        results.pipelined(System::Mu),
        results.pipelined(System::Raft),
    );
    let _ = writeln!(
        w,
        "\nPipelined, same window and payload: Mu / raft-rs = {:.1}.",
        mu / raft.max(1.0)
    );
}

fn render_failover(w: &mut String, results: &Results) {
    let Some(f) = section(w, "Fail-over", &results.failover) else {
        return;
    };
    let _ = writeln!(
        w,
        "{} Polling: {}.{}\n",
        f.describe(),
        polling_name(results.polling),
        if f.total.len() < 100 {
            " With fewer than 100 rounds, p99 is the slowest round."
        } else {
            ""
        }
    );
    let _ = writeln!(w, "| segment | p50 | p99 | max |\n|---|---:|---:|---:|");
    for (name, h) in f.segments() {
        let _ = writeln!(
            w,
            "| {name} | {:.1} µs | {:.1} µs | {:.1} µs |",
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.max() as f64 / 1e3
        );
    }
}

fn render_steadiness(w: &mut String, results: &Results) {
    let Some(runs) = section(w, "Steadiness", &results.steadiness) else {
        return;
    };
    let _ = writeln!(
        w,
        "3 replica processes over shared memory, shared polling, 64-byte commands, one client \
         with one command in flight; the same steady run quiet, then beside a busy neighbour \
         (`yes > /dev/null`, one more spinning process). A new tenure is counted whether or not \
         the leader changed.\n"
    );
    let _ = writeln!(
        w,
        "| host | commands/s | new tenures | per minute |\n|---|---:|---:|---:|"
    );
    for (name, run) in ["quiet", "busy neighbour"].iter().zip(runs) {
        let _ = writeln!(
            w,
            "| {name} | {:.0} | {} | {:.1} |",
            run.throughput(),
            run.tenures,
            run.tenures_per_minute()
        );
    }
    let _ = writeln!(
        w,
        "\nWith the neighbour: {:.2}x the quiet throughput.",
        runs[1].throughput() / runs[0].throughput()
    );
}

fn render_rejoin(w: &mut String, results: &Results) {
    let Some(r) = section(w, "Rejoin by state transfer", &results.rejoin) else {
        return;
    };
    let j = &r.rejoin;
    let ms = |ns: u64| ns as f64 / 1e6;
    let _ = writeln!(
        w,
        "3 replica processes over shared memory, a store filled with {} keys of {} B values, a \
         log of {} slots. A follower was SIGKILLed while the others committed {} laps (64 B puts \
         to one key, one slot each, so the state stays that size), then restarted with a fresh \
         region; it installed a snapshot from another replica and continued from the log. All \
         three then held the same state.\n",
        r.keys, r.value_bytes, r.slots, r.laps
    );
    let _ = writeln!(w, "| | |\n|---|---:|");
    let _ = writeln!(
        w,
        "| snapshot | {} bytes, positions below {} |",
        j.bytes, j.installed_at
    );
    let _ = writeln!(
        w,
        "| install (first chunk to last, joiner's clock) | {:.1} ms, {:.0} MB/s |",
        ms(j.install_ended.saturating_sub(j.install_began)),
        j.install_rate() / 1e6
    );
    let _ = writeln!(
        w,
        "| restart -> install began | {:.1} ms |",
        ms(j.install_began)
    );
    let _ = writeln!(
        w,
        "| restart -> caught up with the leader's position at the restart | {:.1} ms |",
        ms(j.caught_up)
    );
    let _ = writeln!(w, "| restart -> voter | {:.1} ms |", ms(j.voter));
    let _ = writeln!(
        w,
        "| leader throughput, the second before the restart | {:.0} commands/s |",
        r.before
    );
    match j.throughput_during_install() {
        Some(during) => {
            let _ = writeln!(
                w,
                "| leader throughput while the client saw the install run | {during:.0} commands/s ({:.0}% of before) |",
                100.0 * during / r.before.max(1.0)
            );
        }
        None => {
            let _ = writeln!(
                w,
                "| leader throughput during the install | the client never saw it run |"
            );
        }
    }
}

/// Where the time goes, from this run's own figures: the instruction profile against the
/// cycles the same path took, and the fail-over split against the detector's configuration.
/// Inferences are labelled as such; only the figures are measured.
fn render_analysis(w: &mut String, results: &Results) {
    let _ = writeln!(w, "\n## Where the time goes\n");
    let leader = results
        .instructions
        .as_ref()
        .ok()
        .and_then(|counts| counts.iter().find(|c| c.scenario == Scenario::LeaderCommit));
    let row = results
        .latency
        .iter()
        .find(|r| r.replicas == 3 && r.payload == 64);
    if let (Some(c), Some(r)) = (leader, row) {
        let cycles = r.mu.value_at_quantile(0.5) as f64;
        let rate = c.per_op / cycles.max(1.0);
        let budget = 100e-9 * results.tsc_hz;
        let within = budget * rate;
        let fit = if cycles > budget {
            format!("the path would have to shrink to about {within:.0} instructions")
        } else {
            format!("the path fits 100 ns with up to about {within:.0} instructions")
        };
        let _ = writeln!(
            w,
            "- **The leader's path, instruction by instruction.** A 64 B commit with 3 replicas \
             executes {:.0} instructions under callgrind ({:.0} the core's, {:.0} the \
             shared-memory fabric's, {:.0} the benchmark's) and took {cycles:.0} TSC cycles at \
             p50 in the latency run: {rate:.1} instructions per TSC cycle (TSC cycles, not core \
             cycles; callgrind ran the same path on a virtual clock). The count includes the \
             write to the follower beyond the majority, which the leader makes after the \
             commit callback that ends a latency sample, so the rate overstates what the \
             timed part ran at. 100 ns is {budget:.0} TSC \
             cycles here, so at this rate (an inference, not a measurement) {fit}. The \
             fabric's share is, per write, an in-flight marker set (a relaxed store where the \
             owner fences writers with `membarrier(2)`, a `SeqCst` one elsewhere) and cleared \
             with a release store, the permission gate and the region incarnation checked, and \
             the bytes copied with relaxed atomics; its completion is the post's answer \
             (`Fabric::write_done`), not queued and polled back. The function table above \
             shows the core's share: sealing \
             (hashing) each slot once, posting one log write per follower and taking its \
             answer, applying the command from the queue it was proposed from, walking the \
             members in each poll.",
            c.per_op,
            core_per_op(c),
            c.fabric_per_op,
            c.app_per_op,
        );
    }
    if let Some(r) = row {
        let _ = writeln!(
            w,
            "- **The peer has no network and no disk.** raft-rs steps in-memory messages \
             between `RawNode`s, about {:.1} µs per commit at p50: what separates it from Mu \
             here is the follower work one-sided writes avoid (a message to build, step, \
             persist and answer) and raft-rs's own bookkeeping, not a network stack. A ratio of \
             100 would need a peer that pays for a network round trip.",
            ns(results, &r.raft, 0.5) / 1e3
        );
    }
    if let Some((r, tcp)) = row.and_then(|r| Some((r, r.raft_tcp.as_ref()?))) {
        let _ = writeln!(
            w,
            "- **What loopback TCP adds.** The same raft-rs on a thread per node over loopback \
             TCP took {:.1} µs at p50 ({:.1}x in memory, {:.0}x Mu): the extra {:.1} µs are, \
             by the code path rather than a profile, the kernel's loopback TCP under a `write` \
             of the append to each follower, a follower woken from `poll` to `read` it and \
             `write` its acknowledgement, the leader woken from `poll` to `read` that, and a \
             `write` of the new commit index to each follower before the leader applies, plus \
             protobuf encoding and decoding.",
            ns(results, tcp, 0.5) / 1e3,
            ns(results, tcp, 0.5) / ns(results, &r.raft, 0.5),
            ns(results, tcp, 0.5) / ns(results, &r.mu, 0.5),
            (ns(results, tcp, 0.5) - ns(results, &r.raft, 0.5)) / 1e3
        );
    }
    let pipelined = results.pipelined(System::Mu);
    if pipelined > 0.0 {
        let _ = writeln!(
            w,
            "- **Throughput.** Pipelined without batching the leader committed a command every \
             {:.0} ns on average: polls and completions are shared by up to 64 slots in flight \
             and one write per follower carries every unsent slot, but each command still costs \
             a slot (sealed, copied, checksummed when applied). Batching packs many commands \
             into one slot. The followers' shared thread may also hold the leader back (see \
             above); this run does not separate the two.",
            1e9 / pipelined
        );
    }
    if let Some(r) = results
        .latency
        .iter()
        .find(|r| r.replicas == 3 && r.payload == 4096)
    {
        let _ = writeln!(
            w,
            "- **Large commands.** At 4096 B every replica hashes a slot's bytes once, with \
             XXH3 (SSE2 lanes on this host): the leader when it seals it, a follower when it \
             applies it (its scan links headers only, each header's words hashing to the \
             chain). The shared-memory fabric moves the bytes in atomic accesses (the rule for \
             memory other processes write): 16-byte moves where the CPU makes them atomic \
             (Intel and AMD with AVX), 64-bit atomics elsewhere and for copies under 256 B, \
             and it warms the log's next slot for writing; raft-rs moves its bytes with plain \
             copies. The benchmark's state machine folds every word \
             of a command into its digest, in four independent lanes, on both sides (one serial \
             chain took about 600 ns a command here, most of both systems' 4 KiB commit). The \
             hash, those copies and that fold are where a 4 KiB commit's median goes (the \
             4,096 B probes above count them); the leader decides and applies once a majority \
             holds the slot (its own copy and one follower's, of three), and makes the other \
             follower's copy after that, in the same poll. The p99 \
             is {:.1} µs against a p50 of {:.1} µs. The followers share one thread here, and \
             two follower applies of a 4,096 B slot cost more than one leader commit (the \
             probes above): the followers fall behind, and the leader, which never runs a lap \
             of the log ahead of a live follower, now and then waits for them. It then reads \
             their applied positions at every poll instead of every recycle period, so such a \
             wait lasts until they applied more, not until the next periodic read. A core per \
             follower was not measured here.",
            ns(results, &r.mu, 0.99) / 1e3,
            ns(results, &r.mu, 0.5) / 1e3
        );
    }
    if let Ok(f) = &results.failover {
        let detector = f.config.detector;
        let reads = (detector.score_max - detector.fail_below + 1) as u64;
        let period_us = detector.read_period_ticks as u64 * f.tick_ns / 1000;
        let why = match results.polling {
            Polling::Shared => {
                "the period `shared` polling uses: with the kernel reporting deaths it only has \
                 to catch a hung process, so it is sized to the scheduling delays of a host with \
                 fewer cores than spinning threads"
            }
            Polling::Busy => "the period `busy` polling uses on cores of their own",
        };
        let _ = writeln!(
            w,
            "- **A killed leader is reported by the kernel, not found by the pull score.** The \
             survivors' resting background planes wake when the dead process's robust mutexes \
             are marked owner-died and fail it at once: detection p50 {:.0} µs. The pull score, which only \
             a hung leader (`mu failover --fault stop`) has to drain, needs {reads} unchanged \
             reads from a full score: {} µs at a {period_us} µs read period ({why}). After \
             detection, switch and prepare took p50 {:.0} µs, of which permissions and prepare \
             {:.0} µs: the survivors' planes being woken, getting a core and exchanging \
             permission requests, revokes, grants and acks.",
            f.detection.value_at_quantile(0.5) as f64 / 1e3,
            reads * period_us,
            f.switch_and_prepare.value_at_quantile(0.5) as f64 / 1e3,
            f.prepare.value_at_quantile(0.5) as f64 / 1e3,
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sections_of_other_scripts_are_kept_and_the_suites_are_not() {
        let report = "# Benchmarks\n\n## Machine\n\nold figures\n\n## Redis protocol\n\nNot written by `scripts/bench`: x\n\n| a |\n\n## Fail-over\n\nold\n";
        let kept = super::kept_sections(report);
        assert_eq!(
            kept,
            "\n## Redis protocol\n\nNot written by `scripts/bench`: x\n\n| a |\n"
        );
    }
}
