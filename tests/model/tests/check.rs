//! Exhaustive checks of the Mu replication model.
//!
//! Release builds only (`cargo test --release -p mu-model`, about a minute on two cores): in a
//! debug build the same searches take many times longer, so there every test is ignored.
//!
//! - `fixed` within [`Bounds::quick`] (3 replicas, 1 position, 3 tenures, 1 crash, 1 restart),
//!   whole space: no two decisions differ, more than [`MIN_FIXED_STATES`] unique states, every
//!   reachability witness reached; but `recoverable` is violated: two successive cut rewrites
//!   of one member's copy (phase 2 tears record A, then phase 1 of the next rewrite tears record
//!   B) leave a decided value with no valid record, so one more tenure can decide over it.
//! - `fixed` within [`Bounds::deep`] (1 position, 4 tenures, no crash, leaders `A` and `B`):
//!   that fourth tenure does decide a different value (agreement violated).
//! - `planted` within [`Bounds::quick`]: a decided value is lost and another decided.

use mu_model::{check, Bounds, Report, Stop, Variant, WITNESSES};
use std::sync::OnceLock;

/// `fixed` within [`Bounds::quick`] explores about 6.8 million unique states.
const MIN_FIXED_STATES: usize = 5_000_000;

fn summary(label: &str, r: &Report) {
    println!(
        "{label}: {}: {} unique states in {:.2?}; violated: {:?}; witnesses: {:?}",
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

/// One exhaustive run of `fixed` shared by the tests that judge it.
fn fixed_quick() -> &'static Report {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT.get_or_init(|| {
        let r = check(Variant::Fixed, Bounds::quick(), Stop::Exhaust, 2);
        summary("fixed", &r);
        r
    })
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "release only: cargo test --release -p mu-model"
)]
fn fixed_never_decides_two_values_within_three_tenures() {
    let r = fixed_quick();
    assert!(!r.stopped_early);
    assert!(!r.violated("agreement"), "fixed: agreement violated");
    assert!(!r.violated("no loss"), "fixed: no loss violated");
    assert!(
        r.unique_states > MIN_FIXED_STATES,
        "fixed explored only {} states",
        r.unique_states
    );
    for w in WITNESSES {
        assert!(r.witnesses.contains(&w), "fixed never reached `{w}`");
    }
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "release only: cargo test --release -p mu-model"
)]
fn fixed_leaves_a_decided_value_unrecoverable_within_three_tenures() {
    let r = fixed_quick();
    assert!(
        r.violated("recoverable"),
        "fixed: expected the two-cut-rewrites state where no quorum holds a decided value"
    );
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "release only: cargo test --release -p mu-model"
)]
fn fixed_decides_over_a_decided_value_with_four_tenures() {
    let r = check(Variant::Fixed, Bounds::deep(), Stop::FirstConflict, 1);
    summary("fixed, deep", &r);
    assert!(
        r.violated("agreement"),
        "fixed (deep): no conflicting decision"
    );
    assert!(r.violated("no loss"), "fixed (deep): no lost decision");
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "release only: cargo test --release -p mu-model"
)]
fn planted_decides_over_a_decided_value() {
    let r = check(Variant::Planted, Bounds::quick(), Stop::FirstConflict, 1);
    summary("planted", &r);
    assert!(r.violated("agreement"), "planted: no conflicting decision");
    assert!(r.violated("no loss"), "planted: no lost decision");
    assert!(r.stopped_early);
}
