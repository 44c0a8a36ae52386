//! A fabric whose connections take time to pair, as verbs does (a TCP handshake and queue pair
//! changes per pairing), and whose grant to a writer revoked while it could write closes that
//! writer's pairing: every tenure after the first then costs its leader two pairings (its own
//! reconnects when the previous tenure ended, and the one the grant forces). When that takes
//! longer than a phase's deadline, tenures must not end, and start, forever (the verbs guest's
//! livelock: thousands of tenures, each ending in the survey).

use mu_tests::trio::Trio;
use mu_tests::world::Faults;

/// Pairing takes most of an operation timeout: two pairings in a row outlast it.
fn slow_pairing() -> Faults {
    let op_timeout = Trio::config().op_timeout_ticks as u64;
    Faults {
        pairing_ticks: op_timeout * 4 / 5,
        ..Faults::gentle()
    }
}

/// A replica on the fast path that every running replica takes for leader.
fn streaming_leader(trio: &Trio) -> Option<u8> {
    let running: Vec<u8> = (0..3)
        .filter(|&i| trio.replicas[i as usize].is_some())
        .collect();
    running.iter().copied().find(|&id| {
        trio.replica(id).replication.status().fast_path
            && running.iter().all(|&o| trio.leader_view(o) == Some(id))
    })
}

/// The tenure number replica `id` is in, if it leads.
fn tenure(trio: &Trio, id: u8) -> Option<u32> {
    trio.replica(id).replication.status().leading
}

#[test]
fn tenures_settle_when_every_grant_needs_a_new_pairing() {
    let shared = Trio::shared(0);
    let mut trio = Trio::new(Trio::config(), slow_pairing(), &shared);
    trio.formed();
    trio.crash(0);
    let took = trio.run_until(5_000, |t| streaming_leader(t).is_some());
    assert!(took.is_some(), "the survivors fail over");
    // Cut the survivors apart long enough for both tenures to end and each to take its own log
    // back; after that, every grant between them closes the writer's pairing.
    trio.world.set_reachable(1, 2, false);
    trio.run(600);
    trio.world.set_reachable(1, 2, true);
    let settled = trio.run_until(20_000, |t| streaming_leader(t).is_some());
    let leader = streaming_leader(&trio);
    println!(
        "after healing: a streaming leader after {settled:?} ticks ({leader:?}); tenures: \
         replica 1 {:?}, replica 2 {:?}",
        tenure(&trio, 1),
        tenure(&trio, 2),
    );
    // Before the deadlines grew, replica 1 was at tenure 165 after 20,000 ticks, never past its
    // survey.
    assert!(settled.is_some(), "a leader reaches the fast path again");
    let leader = leader.expect("streaming");
    let at = tenure(&trio, leader);
    trio.run(2_000);
    assert_eq!(
        (streaming_leader(&trio), tenure(&trio, leader)),
        (Some(leader), at),
        "the tenure lasts"
    );
}
