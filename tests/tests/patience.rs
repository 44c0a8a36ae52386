//! Regression (issue 14, `mu failover --fault stop`: every round restarts the replica it took
//! out, and the survivors' patience climbed to its maximum within 10 rounds, so that detection
//! took 8 times longer, 20-30 ms instead of 3-4): a restarted life whose heartbeat was slow to
//! start on the loaded host was declared failed, then seen alive, and counted as a false
//! suspicion. Patience answers suspicions that could depose a leader; a recovering replica
//! cannot lead, so suspecting it wrongly no longer makes its peers more patient. A voter
//! suspected wrongly still does.

use mu_tests::trio::Trio;
use mu_tests::world::Faults;

/// Ticks a replica needs to declare a silent peer failed.
fn detection() -> u64 {
    Trio::config().detector.detection_ticks()
}

#[test]
fn a_restarted_replica_slow_to_beat_leaves_patience_alone() {
    let shared = Trio::shared(1);
    let mut trio = Trio::new(Trio::config(), Faults::gentle(), &shared);
    trio.formed();
    trio.crash(2);
    trio.run(5);
    trio.restart(2);
    let seen = trio.run_until(2_000, |t| t.alive_view(0) & 0b100 != 0);
    assert!(seen.is_some(), "the new life is taken for alive");
    assert!(!trio.replica(2).replication.status().voter);
    // Its background plane is starved long enough to be declared failed, then runs again.
    trio.run_starving(detection() * 2, 0b100);
    assert_eq!(trio.alive_view(0) & 0b100, 0, "the new life was suspected");
    let back = trio.run_until(2_000, |t| t.alive_view(0) & 0b100 != 0);
    assert!(back.is_some(), "and seen alive again");
    for id in [0, 1] {
        let status = trio.replica(id).background.status();
        assert_eq!(status.false_suspicions, 0, "replica {id}");
        assert_eq!(status.patience, 1, "replica {id}");
    }
}

#[test]
fn a_voter_suspected_wrongly_still_makes_its_peers_patient() {
    let shared = Trio::shared(0);
    let mut trio = Trio::new(Trio::config(), Faults::gentle(), &shared);
    trio.formed();
    assert!(trio.replica(2).replication.status().voter);
    trio.run_starving(detection() * 2, 0b100);
    assert_eq!(trio.alive_view(0) & 0b100, 0, "the voter was suspected");
    let back = trio.run_until(2_000, |t| t.alive_view(0) & 0b100 != 0);
    assert!(back.is_some(), "and seen alive again");
    let status = trio.replica(0).background.status();
    assert_eq!(status.false_suspicions, 1);
    assert_eq!(status.patience, 2);
}
