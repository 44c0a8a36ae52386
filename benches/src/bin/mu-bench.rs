//! `mu-bench`: Mu's benchmark suite. `scripts/bench` builds it with the `mu` binary and runs
//! `mu-bench suite`; the other commands run one part.
//!
//! # Invariants
//! - Every failure is a message on stderr and exit status 1; figures are printed, never judged.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mu_benches::instructions::{self, Baseline, Scenario};
use mu_benches::latency::{self, LatencyParams, Placement, ThroughputParams};
use mu_benches::orderbook::{self, OrderbookParams};
use mu_benches::suite::{self, SuiteOptions};
use runtime_linux::clock::cycles_per_second;

#[derive(Parser)]
#[command(
    name = "mu-bench",
    about = "Mu's benchmarks: instruction counts, latency, throughput, fail-over, raft-rs as the peer"
)]
struct Cli {
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Everything, then the report and the latency CDF.
    Suite {
        /// A run of seconds (CI): too short for figures worth quoting.
        #[arg(long)]
        quick: bool,
        /// The report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        report: PathBuf,
        /// The latency CDF (SVG).
        #[arg(long, default_value = "benches/latency-cdf.svg")]
        plot: PathBuf,
        /// Scratch files (callgrind outputs).
        #[arg(long, default_value = "target/bench")]
        work: PathBuf,
        /// The `mu` binary, which runs the fail-over benchmark's replica processes.
        #[arg(long, default_value = "target/release/mu")]
        mu: PathBuf,
        /// Fail-over rounds (default: 50, or 3 with --quick).
        #[arg(long)]
        failover_rounds: Option<u32>,
    },
    /// Instruction counts under callgrind, compared with the committed baseline.
    Instructions {
        /// Measured calls per scenario.
        #[arg(long, default_value_t = 2000)]
        iterations: u64,
        /// Rewrite the baseline with these counts.
        #[arg(long)]
        bless: bool,
        /// Scratch files (callgrind outputs).
        #[arg(long, default_value = "target/bench")]
        work: PathBuf,
    },
    /// Serial leader-side latency of one configuration.
    Latency {
        #[arg(long, default_value_t = 3)]
        replicas: u8,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        #[arg(long, default_value_t = 100_000)]
        samples: u64,
    },
    /// Throughput of one configuration.
    Throughput {
        #[arg(long, default_value_t = 3)]
        replicas: u8,
        /// Bytes per application command.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Commands per replicated entry.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Entries outstanding.
        #[arg(long, default_value_t = 64)]
        window: usize,
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// The order book: submit to acknowledgement unreplicated and replicated by 3 replicas, one
    /// seeded flow, in one run.
    Orderbook {
        /// Recorded orders per mode.
        #[arg(long, default_value_t = 100_000)]
        orders: u64,
        /// Unrecorded orders first (default: a tenth of --orders).
        #[arg(long)]
        warm_up: Option<u64>,
        /// The order flow's seed.
        #[arg(long, default_value_t = mu_benches::orderbook::SEED)]
        seed: u64,
        /// Print the report's section (markdown) too.
        #[arg(long)]
        markdown: bool,
    },
    /// A follower 10 laps behind rejoins a 3-process cluster by a 64 MiB state transfer.
    Rejoin {
        /// The `mu` binary, which runs the replica processes.
        #[arg(long, default_value = "target/release/mu")]
        mu: PathBuf,
    },
    /// One instruction-count scenario (what `instructions` runs under callgrind).
    #[command(hide = true)]
    Probe {
        scenario: String,
        #[arg(long, default_value_t = 1000)]
        iterations: u64,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Action::Suite {
            quick,
            report,
            plot,
            work,
            mu,
            failover_rounds,
        } => std::env::current_exe()
            .map_err(|e| format!("cannot find this binary: {e}"))
            .and_then(|self_exe| {
                let options = SuiteOptions {
                    quick,
                    report,
                    plot,
                    work,
                    mu_exe: mu,
                    self_exe,
                    failover_rounds: failover_rounds.unwrap_or(if quick { 3 } else { 50 }),
                };
                suite::run(&options).map(|_| ())
            }),
        Action::Instructions {
            iterations,
            bless,
            work,
        } => run_instructions(iterations, bless, &work),
        Action::Latency {
            replicas,
            payload,
            samples,
        } => run_latency(replicas, payload, samples),
        Action::Throughput { seconds, .. } if !(0.01..=3600.0).contains(&seconds) => {
            Err(format!("--seconds must be 0.01..=3600, not {seconds}"))
        }
        Action::Throughput {
            replicas,
            payload,
            batch,
            window,
            seconds,
        } => {
            let params = ThroughputParams {
                replicas,
                payload,
                batch,
                window,
                duration: Duration::from_secs_f64(seconds),
            };
            latency::throughput(&params, Placement::last_two_cores())
                .map_err(|e| e.to_string())
                .map(|run| {
                    println!(
                        "{:.0} commands/s ({} entries of {} B in {:.2} s)",
                        run.commands_per_second(),
                        run.entries,
                        payload * batch,
                        run.seconds
                    )
                })
        }
        Action::Orderbook {
            orders,
            warm_up,
            seed,
            markdown,
        } => run_orderbook(orders, warm_up.unwrap_or(orders / 10), seed, markdown),
        Action::Rejoin { mu } => mu_benches::rejoin::measure(&mu).map(|bench| {
            let ratio = bench.throughput_ratio();
            println!(
                "install {:.0} MB/s; leader throughput {:.0} commands/s before, {} during",
                bench.rejoin.install_rate() / 1e6,
                bench.before,
                ratio.map_or("not seen".into(), |q| format!("{:.0}% of that", 100.0 * q))
            )
        }),
        Action::Probe {
            scenario,
            iterations,
        } => match Scenario::parse(&scenario) {
            Some(s) => instructions::probe(s, iterations),
            None => Err(format!(
                "no scenario `{scenario}`; scenarios: {}",
                Scenario::ALL.map(Scenario::name).join(", ")
            )),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mu-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_instructions(iterations: u64, bless: bool, work: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let counts = Scenario::ALL
        .into_iter()
        .map(|s| instructions::count(&exe, s, iterations, work))
        .collect::<Result<Vec<_>, String>>()?;
    let path = instructions::baseline_path();
    let baseline = match std::fs::read_to_string(&path) {
        Ok(text) => Baseline::parse(&text, &path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Baseline::default(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let toolchain = instructions::toolchain();
    println!("now: {toolchain}");
    if !baseline.produced_by.is_empty() {
        println!("baseline: {}", baseline.produced_by);
        if baseline.produced_by != toolchain {
            println!("(another toolchain: part of any change is the compiler's)");
        }
    }
    print!("{}", instructions::compare(&baseline, &counts));
    for count in &counts {
        println!(
            "{}: {:.1} in the shared-memory fabric, {:.1} in the benchmark's driver and state \
             machine, {:.1} in the core",
            count.scenario.name(),
            count.fabric_per_op,
            count.app_per_op,
            count.per_op - count.fabric_per_op - count.app_per_op
        );
    }
    if bless {
        let blessed = Baseline {
            produced_by: toolchain,
            counts: counts
                .iter()
                .map(|c| (c.scenario.name().to_owned(), c.per_op))
                .collect(),
        };
        std::fs::write(&path, blessed.render()).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn run_orderbook(orders: u64, warm_up: u64, seed: u64, markdown: bool) -> Result<(), String> {
    let placement = Placement::last_two_cores();
    let tsc_hz = cycles_per_second();
    let params = OrderbookParams {
        warm_up,
        orders,
        seed,
    };
    let bench = orderbook::measure(&params, placement).map_err(|e| e.to_string())?;
    println!("{}; TSC {:.3} GHz", placement.describe(), tsc_hz / 1e9);
    print!("{}", bench.table(tsc_hz));
    println!("{}", bench.describe());
    if markdown {
        let command =
            format!("mu-bench orderbook --orders {orders} --warm-up {warm_up} --seed {seed}");
        print!("{}", bench.render(tsc_hz, &command));
    }
    Ok(())
}

fn run_latency(replicas: u8, payload: usize, samples: u64) -> Result<(), String> {
    let placement = Placement::last_two_cores();
    let tsc_hz = cycles_per_second();
    let params = LatencyParams {
        replicas,
        payload,
        warm_up: samples / 10,
        samples,
    };
    let histogram = latency::serial_latency(&params, placement).map_err(|e| e.to_string())?;
    println!(
        "{replicas} replicas, {payload} B, {} samples; {}; TSC {:.3} GHz",
        histogram.len(),
        placement.describe(),
        tsc_hz / 1e9
    );
    for (label, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
        let cycles = histogram.value_at_quantile(q);
        println!(
            "  {label:>6} {:>9.0} ns {cycles:>10} cycles",
            cycles as f64 * 1e9 / tsc_hz
        );
    }
    Ok(())
}
