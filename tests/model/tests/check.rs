//! Exhaustive checks of the Mu replication model.
//!
//! Release builds only (`cargo test --release -p mu-model`, about a minute and a half on two
//! cores, under 2 GiB): in a debug build the same searches take many times longer, so there
//! every test is ignored. The searches run one at a time (they share [`ONE_AT_A_TIME`]), so the
//! peak memory is that of the largest one, not their sum.
//!
//! - `fixed` (the core's design) within [`Bounds::quick`] (1 position, 3 tenures, 1 crash, 1
//!   restart) and [`Bounds::deep`] (1 position, 4 tenures, no crash, leaders `A` and `B`), whole
//!   space: agreement, no loss and recoverable hold in every state, more than a minimum of
//!   unique states, every reachability witness of `fixed` reached.
//! - `two-phase` (the rejected design) within [`Bounds::quick`]: a decided value is left with
//!   no valid record on the only copies a quorum has (`recoverable` fails); within
//!   [`Bounds::deep`]: a fourth tenure decides another value over it (agreement fails).
//! - `planted` within [`Bounds::quick`]: a decided value is lost and another decided.

use mu_model::{check, Bounds, Report, Stop, Variant, SAFETY};
use std::sync::{Mutex, MutexGuard};

/// `fixed` within [`Bounds::quick`] explores 5,020,119 unique states.
const MIN_FIXED_QUICK_STATES: usize = 4_500_000;
/// `fixed` within [`Bounds::deep`] explores 6,407,579 unique states.
const MIN_FIXED_DEEP_STATES: usize = 6_000_000;

/// Held by every search: they run one after another.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one may still run.
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn summary(r: &Report) {
    println!(
        "{}: {}: {} unique states in {:.2?}; violated: {:?}; witnesses: {:?}",
        r.variant.name(),
        r.bounds,
        r.unique_states,
        r.elapsed,
        r.violations.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        r.witnesses
    );
    for (property, trace) in &r.violations {
        println!("counterexample to `{property}`:\n{trace}");
    }
}

fn fixed_holds(bounds: Bounds, min_states: usize, witnesses: &[&str]) {
    let r = {
        let _one = exclusive();
        check(Variant::Fixed, bounds, Stop::Exhaust, 2)
    };
    summary(&r);
    assert!(!r.stopped_early);
    for p in SAFETY {
        assert!(!r.violated(p), "fixed: `{p}` violated within {bounds}");
    }
    assert!(
        r.unique_states > min_states,
        "fixed explored only {} states within {bounds}",
        r.unique_states
    );
    for w in witnesses {
        assert!(r.witnesses.contains(w), "fixed never reached `{w}`");
    }
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "release only: cargo test --release -p mu-model"
)]
fn fixed_holds_with_a_crash_and_a_restart() {
    fixed_holds(
        Bounds::quick(),
        MIN_FIXED_QUICK_STATES,
        Variant::Fixed.witnesses(),
    );
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "release only: cargo test --release -p mu-model"
)]
fn fixed_holds_with_four_tenures() {
    let restart = "restarted replica admitted";
    let witnesses: Vec<&str> = Variant::Fixed
        .witnesses()
        .iter()
        .copied()
        .filter(|w| *w != restart)
        .collect();
    fixed_holds(Bounds::deep(), MIN_FIXED_DEEP_STATES, &witnesses);
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "release only: cargo test --release -p mu-model"
)]
fn two_phase_leaves_a_decided_value_unrecoverable_within_three_tenures() {
    let r = {
        let _one = exclusive();
        check(Variant::TwoPhase, Bounds::quick(), Stop::FirstViolation, 1)
    };
    summary(&r);
    assert!(
        r.violated("recoverable"),
        "two-phase: expected the two-cut-rewrites state where no quorum holds a decided value"
    );
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "release only: cargo test --release -p mu-model"
)]
fn two_phase_decides_over_a_decided_value_with_four_tenures() {
    let r = {
        let _one = exclusive();
        check(Variant::TwoPhase, Bounds::deep(), Stop::FirstConflict, 1)
    };
    summary(&r);
    assert!(r.stopped_early);
    assert!(
        r.violated("agreement"),
        "two-phase (deep): no conflicting decision"
    );
    assert!(r.violated("no loss"), "two-phase (deep): no lost decision");
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "release only: cargo test --release -p mu-model"
)]
fn planted_decides_over_a_decided_value() {
    let r = {
        let _one = exclusive();
        check(Variant::Planted, Bounds::quick(), Stop::FirstConflict, 1)
    };
    summary(&r);
    assert!(r.violated("agreement"), "planted: no conflicting decision");
    assert!(r.violated("no loss"), "planted: no lost decision");
    assert!(r.stopped_early);
}
