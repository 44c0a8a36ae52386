//! The fail-over benchmark as a library: a short `failover_report` over real `mu replica`
//! processes must split every fail-over into segments that follow each other and add up to the
//! total. A replica that published no take-over timestamps, stale ones of an earlier tenure, or
//! ones out of order leaves a round without a split, and the test fails. Each killed leader
//! restarts after the survivors wrapped the log twice, so it must rejoin by state transfer.
//! The client's requests in flight at each kill are sent again in its session: none may be
//! applied twice (every round's verify reads the journals) or be left of unknown outcome.
//! No timing is asserted.

// Every `unsafe` block states why it is sound; every `unsafe fn` says what its callers must
// uphold, and its body spells out its own unsafe operations.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use std::path::Path;

use board_configs::Polling;
use runtime_linux::cluster::Fault;
use runtime_linux::demo::{failover_report, DemoFabric, FailoverOptions};

#[test]
fn every_fail_over_splits_into_segments_that_add_up() {
    let options = FailoverOptions {
        rounds: 2,
        replicas: 3,
        polling: Polling::Shared,
        pin_from: None,
        read_period_us: None,
        fabric: DemoFabric::Shm,
        slots: 1024,
        wrap_laps: 2,
        fault: Fault::Kill,
        realtime_priority: None,
    };
    let report = failover_report(&options, Path::new(env!("CARGO_BIN_EXE_mu")), false)
        .expect("the fail-over rounds run");
    assert_eq!(report.fail_overs.len(), 2);
    // Every round's verify found no command applied twice; every request sent again was
    // settled (applied, or answered from the session's cache).
    assert_eq!(report.sessions.unknown, 0, "{:?}", report.sessions);
    assert_eq!(report.rejoins.len(), 2);
    for rejoin in &report.rejoins {
        // Two laps behind, no log holds what the restarted replica lacks.
        assert!(
            rejoin.installs >= 1,
            "rejoined without a snapshot: {rejoin:?}"
        );
    }
    for (round, fail_over) in report.fail_overs.iter().enumerate() {
        let marks = fail_over
            .marks
            .unwrap_or_else(|| panic!("round {round} has no split: {fail_over:?}"));
        assert_ne!(fail_over.new_leader, fail_over.killed);
        assert!(
            fail_over.killed_at <= marks.elected_at
                && marks.elected_at <= marks.tenure_at
                && marks.tenure_at <= marks.fast_path_at
                && marks.fast_path_at <= fail_over.committed_at,
            "round {round}: {fail_over:?}"
        );
        let split = [
            fail_over.detection(),
            fail_over.switch_and_prepare(),
            fail_over.first_commit(),
        ];
        let sum: u64 = split.iter().map(|s| s.expect("split")).sum();
        assert_eq!(sum, fail_over.nanos(), "round {round}: {fail_over:?}");
        assert_eq!(
            fail_over
                .handoff()
                .zip(fail_over.prepare())
                .map(|(h, p)| h + p),
            fail_over.switch_and_prepare(),
            "round {round}"
        );
    }
    for segment in [
        &report.detection,
        &report.switch_and_prepare,
        &report.handoff,
        &report.prepare,
        &report.first_commit,
    ] {
        assert_eq!(segment.len(), 2);
    }
    assert_eq!(report.total.len(), 2);
}
