//! Certain death, detected at once: a peer whose fabric reports that the life the core trusts
//! ended is failed without waiting for its pull score to drain; a notice about an earlier life of
//! a restarted peer changes nothing; with no notice at all, the pull score still decides.

use mu_tests::trio::{Trio, READ_PERIOD};
use mu_tests::world::Faults;

/// Ticks until both survivors take replica 1 for leader after replica 0 crashed.
fn fail_over_ticks(faults: Faults) -> u64 {
    let shared = Trio::shared(3);
    let mut trio = Trio::new(Trio::config(), faults, &shared);
    trio.formed();
    trio.crash(0);
    trio.run_until(5_000, |t| {
        t.leader_view(1) == Some(1) && t.leader_view(2) == Some(1)
    })
    .expect("the survivors elect replica 1")
}

#[test]
fn a_certain_death_fails_the_peer_at_once() {
    let told = fail_over_ticks(Faults::gentle());
    let untold = fail_over_ticks(Faults {
        notice_lost_per_mille: 1000,
        ..Faults::gentle()
    });
    println!(
        "new leader elected {told} ticks after the crash with a death notice, {untold} without"
    );
    // A notice is taken within a poll; without one, the pull score drains over 14 read periods.
    assert!(told <= 2, "{told} ticks with a prompt notice");
    assert!(
        untold >= 10 * READ_PERIOD as u64,
        "{untold} ticks without a notice"
    );
}

#[test]
fn a_notice_about_an_earlier_life_changes_nothing() {
    let shared = Trio::shared(3);
    let mut trio = Trio::new(Trio::config(), Faults::gentle(), &shared);
    trio.formed();
    // Replica 2 dies (both others hear of it at once) and comes back as a new life, while the
    // notice about its first life stays.
    trio.crash(2);
    trio.run(5);
    assert_eq!(trio.alive_view(0) & 0b100, 0, "its death was taken");
    trio.restart(2);
    let took = trio.run_until(2_000, |t| {
        t.alive_view(0) & 0b100 != 0 && t.alive_view(1) & 0b100 != 0
    });
    assert!(
        took.is_some(),
        "the new life is taken for alive despite the old life's notice"
    );
    // And it rejoins: admitted as a voter by the leader.
    let admitted = trio.run_until(5_000, |t| t.replica(2).replication.status().voter);
    assert!(admitted.is_some(), "the new life is admitted");
    for id in [0, 1] {
        let r = trio.replica(id);
        assert_eq!(
            r.background.status().deaths,
            1,
            "replica {id} took one death"
        );
    }
}

#[test]
fn a_dead_peer_shows_no_sign_of_life() {
    let shared = Trio::shared(0);
    let mut trio = Trio::new(Trio::config(), Faults::gentle(), &shared);
    trio.formed();
    // The leader commits, so that its heartbeat and applied position are seen moving.
    for tick in 0..200u64 {
        let leader = &mut trio.replica_mut(0).replication;
        if leader.status().fast_path && leader.status().queued == 0 {
            leader.submit(&tick.to_le_bytes()).unwrap();
        }
        trio.run(1);
    }
    assert!(shared[1].lively() & 1 != 0, "the leader was seen moving");
    trio.crash(0);
    trio.run(2);
    // The new leader's recycling waits for every replica showing a sign of life: a dead one
    // must not count until the read timeout passes.
    for id in [1, 2] {
        assert_eq!(shared[id].alive() & 1, 0, "replica {id} took the death");
        assert_eq!(
            shared[id].lively() & 1,
            0,
            "replica {id} sees no sign of life"
        );
    }
}
