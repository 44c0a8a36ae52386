//! `mu-model fixed|planted|deep|both|all [--positions N] [--tenures N] [--crashes N]
//! [--restarts N] [--leaders MASK] [--threads N]`: runs the exhaustive checks of the Mu
//! replication model (see the `mu_model` crate docs for what it covers and abstracts) and
//! prints, per run, the unique states explored, the time taken, each safety property's verdict
//! with its counterexample step by step, and the reachability witnesses found.
//!
//! - `fixed`: the two-record, two-phase slot format, whole bounded space, within
//!   [`Bounds::positions`] (2 positions, 3 tenures, no crash) and [`Bounds::quick`] (1 position,
//!   3 tenures, 1 crash, 1 restart).
//! - `planted`: the old one-checksum format within [`Bounds::standard`] (2 positions, 3
//!   tenures, 1 crash, 1 restart), stopping at the first conflicting decision (breadth-first on
//!   one thread: a shortest trace).
//! - `deep`: the fixed format within [`Bounds::deep`] (1 position, 4 tenures, leaders `A` and
//!   `B`), stopping at the first conflicting decision.
//! - `both`: `fixed` then `planted`; `all`: `fixed`, `planted`, `deep`.
//!
//! Bound flags replace the defaults: every run then uses [`Bounds::standard`] (or
//! [`Bounds::deep`] for `deep`) with the flags applied. `--leaders` is a bit mask (1 = `A`,
//! 2 = `B`, 4 = `C`).
//!
//! Exit status: 0 when `fixed` decided no two values at a position and `planted` did (the
//! `recoverable` verdicts and `deep` are reported, not judged), 1 otherwise, 2 on a usage error.

#![forbid(unsafe_code)]

use mu_model::{check, Bounds, Report, Stop, Variant, SAFETY};
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: mu-model fixed|planted|deep|both|all [--positions N] [--tenures N] \
         [--crashes N] [--restarts N] [--leaders MASK] [--threads N]"
    );
    ExitCode::from(2)
}

fn print(report: &Report, label: &str) {
    println!("=== {label}: {} ===", report.bounds);
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
    fn any(&self) -> bool {
        self.positions.is_some()
            || self.tenures.is_some()
            || self.crashes.is_some()
            || self.restarts.is_some()
            || self.leaders.is_some()
    }

    fn apply(&self, mut b: Bounds) -> Bounds {
        b.positions = self.positions.unwrap_or(b.positions);
        b.tenures = self.tenures.unwrap_or(b.tenures);
        b.crashes = self.crashes.unwrap_or(b.crashes);
        b.restarts = self.restarts.unwrap_or(b.restarts);
        b.leaders = self.leaders.unwrap_or(b.leaders);
        b
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(which) = args.first() else {
        return usage();
    };
    let mut o = Overrides::default();
    let mut threads = 2usize;
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
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
    let (fixed, planted, deep) = match which.as_str() {
        "fixed" => (true, false, false),
        "planted" => (false, true, false),
        "deep" => (false, false, true),
        "both" => (true, true, false),
        "all" => (true, true, true),
        _ => return usage(),
    };
    let fixed_bounds = if o.any() {
        vec![o.apply(Bounds::standard())]
    } else {
        vec![Bounds::positions(), Bounds::quick()]
    };
    let mut ok = true;
    if fixed {
        for bounds in fixed_bounds {
            let r = check(Variant::Fixed, bounds, Stop::Exhaust, threads);
            print(&r, "fixed");
            ok &= !r.violated("agreement") && !r.violated("no loss");
        }
    }
    if planted {
        let r = check(
            Variant::Planted,
            o.apply(Bounds::standard()),
            Stop::FirstConflict,
            1,
        );
        print(&r, "planted");
        ok &= r.violated("agreement");
    }
    if deep {
        let r = check(
            Variant::Fixed,
            o.apply(Bounds::deep()),
            Stop::FirstConflict,
            1,
        );
        print(&r, "deep (fixed format, 4 tenures)");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
