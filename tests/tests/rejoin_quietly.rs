//! Regression (issue 14: `mu demo` logs showed a replica restarted after a kill start a tenure
//! within 30 ms, while still recovering).
//!
//! Three replicas form with replica 0 leading; 0 crashes and 1 takes over; 0 restarts with an
//! empty region. The restarted replica never starts a tenure while it is recovering. It took
//! its peers, whose headers it had verified but whose heartbeats it had not read yet, for
//! replicas that are not voters either, concluded that the cluster had never formed, and bid
//! as the lowest id (the rule that forms a new cluster).

use mu_tests::trio::Trio;
use mu_tests::world::Faults;

/// Ticks a replica needs to declare a silent peer failed.
fn detection() -> u64 {
    Trio::config().detector.detection_ticks()
}

/// Forms the trio, crashes 0 and waits for 1 to lead on the fast path, restarts 0.
fn restarted_under_new_leader(trio: &mut Trio) {
    trio.formed();
    trio.crash(0);
    let took = trio.run_until(20 * detection(), |t| {
        t.replica(1).replication.status().fast_path
    });
    assert!(took.is_some(), "replica 1 takes over");
    trio.run(100);
    trio.restart(0);
}

#[test]
fn a_recovering_replica_never_bids() {
    let shared = Trio::shared(1);
    let mut trio = Trio::new(Trio::config(), Faults::gentle(), &shared);
    restarted_under_new_leader(&mut trio);
    let mut bid_while_recovering = 0;
    for _ in 0..20 * detection() {
        trio.run(1);
        let status = trio.replica(0).replication.status();
        if status.leading.is_some() && !status.voter {
            bid_while_recovering += 1;
        }
        let _ = trio.replica_mut(1).replication.submit(b"command");
    }
    assert!(
        trio.replica(0).replication.status().voter,
        "the restarted replica is admitted"
    );
    assert_eq!(
        bid_while_recovering, 0,
        "ticks on which the recovering replica led a tenure"
    );
}
