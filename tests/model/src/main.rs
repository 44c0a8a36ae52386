//! `mu-model fixed|two-phase|planted|deep|all [--positions N] [--tenures N] [--crashes N]
//! [--restarts N] [--leaders MASK] [--threads N] [--first]`: runs the exhaustive checks of the Mu
//! replication model (see the `mu_model` crate docs for what it covers and abstracts) and
//! prints, per run, the unique states explored, the time taken, each safety property's verdict
//! with its counterexample step by step, and the reachability witnesses found.
//!
//! - `fixed`: the core's design (decided marks, adoption records), whole bounded space, within
//!   [`Bounds::positions`] (2 positions, 3 tenures, no crash), [`Bounds::quick`] (1 position, 3
//!   tenures, 1 crash, 1 restart) and [`Bounds::deep`] (1 position, 4 tenures, leaders `A` and
//!   `B`).
//! - `two-phase`: the rejected design (records A and B, every rewrite two-phase), whole space
//!   within [`Bounds::quick`] (where `recoverable` fails), then within [`Bounds::deep`] stopping
//!   at the first conflicting decision (breadth-first on one thread: a shortest trace).
//! - `planted`: the old one-checksum format within [`Bounds::standard`] (2 positions, 3
//!   tenures, 1 crash, 1 restart), stopping at the first conflicting decision.
//! - `deep`: `fixed` and `two-phase` within [`Bounds::deep`].
//! - `all`: `fixed`, `two-phase`, `planted`.
//!
//! Bound flags apply on top of each run's bounds (runs that end up identical run once).
//! `--leaders` is a bit mask (1 = `A`, 2 = `B`, 4 = `C`). Exhaustive runs use `--threads`
//! threads (default 2); runs that stop at the first conflict use one. `--first` makes the
//! exhaustive runs stop at the first counterexample to any safety property instead (one
//! thread, breadth-first: a shortest one), e.g. to try a variant in larger bounds.
//!
//! Exit status: 0 when every `fixed` run holds every safety property and every run of a
//! rejected design (`two-phase` in `deep` bounds, `planted`) decides two values at a position
//! (the `two-phase` whole-space run is reported, not judged), 1 otherwise, 2 on a usage error.

#![forbid(unsafe_code)]

use mu_model::{check, Bounds, Report, Stop, Variant, SAFETY};
use std::process::ExitCode;
use std::time::Instant;

fn usage() -> ExitCode {
    eprintln!(
        "usage: mu-model fixed|two-phase|planted|deep|all [--positions N] [--tenures N] \
         [--crashes N] [--restarts N] [--leaders MASK] [--threads N] [--first]"
    );
    ExitCode::from(2)
}

fn print(report: &Report) {
    println!("=== {}: {} ===", report.variant.name(), report.bounds);
    println!(
        "unique states explored: {}  (generated {}, max depth {})  time: {:.2?}{}",
        report.unique_states,
        report.total_states,
        report.max_depth,
        report.elapsed,
        if report.stopped_early {
            "  (stopped at the first conflicting decision)"
        } else {
            "  (whole bounded space)"
        }
    );
    for name in SAFETY {
        if !report.violated(name) {
            println!("property `{name}`: holds in every state explored");
        }
    }
    for (name, trace) in &report.violations {
        println!("property `{name}`: VIOLATED. Counterexample:");
        print!("{trace}");
    }
    println!("witnesses reached: {:?}", report.witnesses);
    println!();
}

/// Bound overrides from the command line.
#[derive(Default)]
struct Overrides {
    positions: Option<u8>,
    tenures: Option<u8>,
    crashes: Option<u8>,
    restarts: Option<u8>,
    leaders: Option<u8>,
}

impl Overrides {
    fn apply(&self, mut b: Bounds) -> Bounds {
        b.positions = self.positions.unwrap_or(b.positions);
        b.tenures = self.tenures.unwrap_or(b.tenures);
        b.crashes = self.crashes.unwrap_or(b.crashes);
        b.restarts = self.restarts.unwrap_or(b.restarts);
        b.leaders = self.leaders.unwrap_or(b.leaders);
        b
    }
}

/// What a run must find for the exit status to be 0.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Every safety property holds.
    Holds,
    /// Two values are decided at a position.
    Conflict,
    /// Reported only.
    Report,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(which) = args.first() else {
        return usage();
    };
    let mut o = Overrides::default();
    let mut threads = 2usize;
    let mut rest = args[1..].iter();
    let mut first = false;
    while let Some(flag) = rest.next() {
        if flag == "--first" {
            first = true;
            continue;
        }
        let Some(value) = rest.next().and_then(|v| v.parse::<u8>().ok()) else {
            return usage();
        };
        match flag.as_str() {
            "--positions" if (1..=mu_model::MAX_POSITIONS as u8).contains(&value) => {
                o.positions = Some(value)
            }
            "--tenures" if (1..=mu_model::MAX_TENURES as u8).contains(&value) => {
                o.tenures = Some(value)
            }
            "--crashes" => o.crashes = Some(value),
            "--restarts" => o.restarts = Some(value),
            "--leaders" if (1..8).contains(&value) => o.leaders = Some(value),
            "--threads" => threads = value.max(1) as usize,
            _ => return usage(),
        }
    }
    let fixed = [
        (Variant::Fixed, Bounds::positions(), Expect::Holds),
        (Variant::Fixed, Bounds::quick(), Expect::Holds),
        (Variant::Fixed, Bounds::deep(), Expect::Holds),
    ];
    let two_phase = [
        (Variant::TwoPhase, Bounds::quick(), Expect::Report),
        (Variant::TwoPhase, Bounds::deep(), Expect::Conflict),
    ];
    let planted = [(Variant::Planted, Bounds::standard(), Expect::Conflict)];
    let deep = [
        (Variant::Fixed, Bounds::deep(), Expect::Holds),
        (Variant::TwoPhase, Bounds::deep(), Expect::Conflict),
    ];
    let mut runs = Vec::new();
    match which.as_str() {
        "fixed" => runs.extend(fixed),
        "two-phase" => runs.extend(two_phase),
        "planted" => runs.extend(planted),
        "deep" => runs.extend(deep),
        "all" => {
            runs.extend(fixed);
            runs.extend(two_phase);
            runs.extend(planted);
        }
        _ => return usage(),
    }
    let mut done: Vec<(Variant, Bounds, Expect)> = Vec::new();
    let mut ok = true;
    let started = Instant::now();
    for (variant, bounds, expect) in runs {
        let bounds = o.apply(bounds);
        if done.contains(&(variant, bounds, expect)) {
            continue;
        }
        done.push((variant, bounds, expect));
        let r = match expect {
            Expect::Conflict => check(variant, bounds, Stop::FirstConflict, 1),
            Expect::Holds | Expect::Report if first => {
                check(variant, bounds, Stop::FirstViolation, 1)
            }
            Expect::Holds | Expect::Report => check(variant, bounds, Stop::Exhaust, threads),
        };
        print(&r);
        ok &= match expect {
            Expect::Holds => SAFETY.iter().all(|p| !r.violated(p)),
            Expect::Conflict => r.violated("agreement"),
            Expect::Report => true,
        };
    }
    println!(
        "total time {:.2?}; {}",
        started.elapsed(),
        if ok {
            "every verdict as expected"
        } else {
            "UNEXPECTED VERDICT (see above)"
        }
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
