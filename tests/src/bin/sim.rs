//! The simulator's command line.
//!
//! ```text
//! sim --seeds N [--start S]        run seeds S..S+N on every core; exit 1 on a violation
//! sim --seed S [--trace]           run one seed; print its report (and its trace)
//! sim ... --expect-violation       for planted defects: exit 0 only if some seed is caught
//! sim ... --wide-timing            each seed's scenario with its timings drawn wide
//! ```
//!
//! `--wide-timing` (`Scenario::generate_wide`) draws the operation timeout, permission retry
//! and recycle period per seed instead of using the one setting of the default scenarios. It
//! found two liveness defects of timings no default seed has: a permission retry longer than
//! the operation timeout made every tenure end in its survey (now refused by
//! `Config::validate`), and a permission retry of one heartbeat read period made the background
//! plane reconnect permission and transfer-request writes that were merely slow, so that
//! detectors flapped and no tenure lasted (seeds 186, 280, 288, 347, 466 and 15 more of
//! 0..2,000) or a transfer started over and over (seed 15605); now such a write is given up no
//! sooner than two read periods.
//!
//! With `--trace`, the environment variable `MU_SIM_TRACE_EVERY=N` prints each leader's member
//! table every N ticks (default 100).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use mu_tests::cluster::{self, Report};

struct Args {
    seeds: Option<u64>,
    start: u64,
    seed: Option<u64>,
    trace: bool,
    expect_violation: bool,
    wide_timing: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        seeds: None,
        start: 0,
        seed: None,
        trace: false,
        expect_violation: false,
        wide_timing: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            let value = it.next().ok_or(format!("{name} needs a number"))?;
            value
                .parse()
                .map_err(|_| format!("{name}: not a number: {value}"))
        };
        match arg.as_str() {
            "--seeds" => args.seeds = Some(number("--seeds")?),
            "--start" => args.start = number("--start")?,
            "--seed" => args.seed = Some(number("--seed")?),
            "--trace" => args.trace = true,
            "--expect-violation" => args.expect_violation = true,
            "--wide-timing" => args.wide_timing = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    if args.seeds.is_none() == args.seed.is_none() {
        return Err("give exactly one of --seeds N or --seed S".to_string());
    }
    Ok(args)
}

fn describe(report: &Report) -> String {
    format!(
        "seed {}: {} replicas, {} committed, {} decided, {} tenures, {} crashes, {} restarts, {} snapshots installed, {} pauses, {} halts",
        report.seed,
        report.replicas,
        report.committed,
        report.decided,
        report.tenures,
        report.crashes,
        report.restarts,
        report.installs,
        report.pauses,
        report.halts
    )
}

/// The `--features` a replay needs: the planted defect this binary was built with, if any.
fn planted_features() -> &'static str {
    if cfg!(feature = "bug-skip-revoke") {
        " --features bug-skip-revoke"
    } else if cfg!(feature = "bug-skip-prepare") {
        " --features bug-skip-prepare"
    } else if cfg!(feature = "bug-small-quorum") {
        " --features bug-small-quorum"
    } else if cfg!(feature = "bug-no-checksum") {
        " --features bug-no-checksum"
    } else if cfg!(feature = "bug-restart-votes") {
        " --features bug-restart-votes"
    } else if cfg!(feature = "bug-unchecked-snapshot") {
        " --features bug-unchecked-snapshot"
    } else if cfg!(feature = "bug-stale-death") {
        " --features bug-stale-death"
    } else {
        ""
    }
}

fn print_violation(report: &Report, wide: bool) {
    if let Some(v) = &report.violation {
        println!(
            "VIOLATION seed {} at tick {}: {}: {}",
            report.seed, v.tick, v.invariant, v.detail
        );
        println!(
            "replay: cargo run --release -p mu-tests{} --bin sim -- --seed {}{} --trace",
            planted_features(),
            report.seed,
            if wide { " --wide-timing" } else { "" }
        );
    }
}

/// The seed's scenario as generated, or with its timing drawn wide.
fn runner(wide: bool) -> fn(u64, bool) -> (Report, Option<String>) {
    if wide {
        cluster::run_wide
    } else {
        cluster::run
    }
}

fn run_one(seed: u64, trace: bool, expect: bool, wide: bool) -> ExitCode {
    let (report, trace_text) = runner(wide)(seed, trace);
    if let Some(text) = trace_text {
        print!("{text}");
    }
    println!("{}", describe(&report));
    print_violation(&report, wide);
    match (report.violation.is_some(), expect) {
        (false, false) | (true, true) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

fn run_many(start: u64, count: u64, expect: bool, wide: bool) -> ExitCode {
    let run = runner(wide);
    let began = Instant::now();
    let next = AtomicU64::new(start);
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let first: Mutex<Option<Report>> = Mutex::new(None);
    let totals = Mutex::new((0usize, 0u32, 0u32, 0u32, 0u64));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= start + count {
                    return;
                }
                let (report, _) = run(seed, false);
                {
                    let mut t = totals.lock().unwrap();
                    t.0 += report.committed;
                    t.1 += report.tenures;
                    t.2 += report.crashes;
                    t.3 += report.restarts;
                    t.4 += report.done_writes;
                }
                if report.violation.is_some() {
                    let mut f = first.lock().unwrap();
                    if f.as_ref().is_none_or(|r| r.seed > report.seed) {
                        *f = Some(report);
                    }
                    stop.store(true, Ordering::Relaxed);
                }
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if finished % 500 == 0 {
                    let rate = finished as f64 / began.elapsed().as_secs_f64();
                    eprintln!("  {finished}/{count} seeds, {rate:.1} seeds/s");
                }
            });
        }
    });
    let finished = done.load(Ordering::Relaxed);
    let elapsed = began.elapsed().as_secs_f64();
    let (committed, tenures, crashes, restarts, done_writes) = *totals.lock().unwrap();
    println!(
        "{finished} seeds in {elapsed:.1} s ({:.1} seeds/s, {threads} threads): {committed} commands committed, {tenures} tenures, {crashes} crashes, {restarts} restarts, {done_writes} writes done within their post",
        finished as f64 / elapsed
    );
    let first = first.lock().unwrap().take();
    match (&first, expect) {
        (Some(report), true) => {
            println!("caught as expected:");
            print_violation(report, wide);
            ExitCode::SUCCESS
        }
        (Some(report), false) => {
            print_violation(report, wide);
            ExitCode::FAILURE
        }
        (None, true) => {
            println!("NOT CAUGHT: no seed found a violation");
            ExitCode::FAILURE
        }
        (None, false) => {
            println!("all seeds clean");
            ExitCode::SUCCESS
        }
    }
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("sim: {message}");
            }
            eprintln!(
                "usage: sim --seeds N [--start S] [--expect-violation] [--wide-timing] | sim --seed S [--trace] [--wide-timing]"
            );
            return ExitCode::from(2);
        }
    };
    match (args.seed, args.seeds) {
        (Some(seed), _) => run_one(seed, args.trace, args.expect_violation, args.wide_timing),
        (None, Some(count)) => run_many(args.start, count, args.expect_violation, args.wide_timing),
        (None, None) => unreachable!("checked by parse"),
    }
}
