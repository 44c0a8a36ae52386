//! Regression (issue 14, `mu demo` beside a busy neighbour: one or two stalls a minute of the
//! leader's background plane, runnable but kept from a core for 4 ms by the neighbour's time
//! slice while its replication plane committed on the other core; both followers declared the
//! leader failed, one led for a moment, and the old leader took its place back: 2 new tenures
//! for a leader that never stopped committing).
//!
//! A heartbeat read returns the peer's applied record too, and a position that moved counts as
//! a sign of life. The schedule: three replicas form with replica 0 leading; then replica 0's
//! background plane goes unpolled for three detection windows, its replication plane running
//! on. Committing, the leader keeps its tenure and nobody suspects it; idle, it has no sign of
//! life left and is failed over as before (so the first test is not passing by luck of timing).

use mu_tests::trio::Trio;
use mu_tests::world::Faults;

const LEADER: u8 = 0;

/// What the followers saw while the leader's background plane was starved.
struct Seen {
    /// Ticks on which some follower took the leader for failed.
    suspected: u64,
    /// Tenures the followers started.
    bids: u32,
    /// Positions the leader applied.
    applied: u64,
}

/// Starves the leader's background plane for three detection windows, submitting a command
/// whenever the leader has none queued if `busy`.
fn starve_leader(busy: bool) -> Seen {
    let shared = Trio::shared(0);
    let mut trio = Trio::new(Trio::config(), Faults::gentle(), &shared);
    trio.formed();
    let ticks = Trio::config().detector.detection_ticks() * 3;
    let from = trio.replica(LEADER).replication.status().applied;
    let mut seen = Seen {
        suspected: 0,
        bids: 0,
        applied: 0,
    };
    for _ in 0..ticks {
        let command = trio.tick.to_le_bytes();
        let leader = &mut trio.replica_mut(LEADER).replication;
        if busy && leader.status().fast_path && leader.status().queued == 0 {
            leader.submit(&command).unwrap();
        }
        let bidding = [1, 2].map(|id| trio.replica(id).background.status().tenure.is_some());
        trio.run_starving(1, 1 << LEADER);
        for (follower, was) in [1, 2].into_iter().zip(bidding) {
            if !was && trio.replica(follower).background.status().tenure.is_some() {
                seen.bids += 1;
            }
            if trio.alive_view(follower) & (1 << LEADER) == 0 {
                seen.suspected += 1;
            }
        }
    }
    seen.applied = trio.replica(LEADER).replication.status().applied - from;
    seen
}

#[test]
fn a_leader_that_commits_is_alive_while_its_background_plane_waits() {
    let seen = starve_leader(true);
    assert!(seen.applied > 100, "the leader committed: {}", seen.applied);
    assert_eq!(seen.suspected, 0, "no follower suspected the leader");
    assert_eq!(seen.bids, 0, "no follower started a tenure");
}

#[test]
fn an_idle_leader_whose_background_plane_stopped_is_still_failed_over() {
    let seen = starve_leader(false);
    assert_eq!(seen.applied, 0);
    assert!(seen.suspected > 0, "the followers suspected the leader");
    assert!(seen.bids > 0, "and one of them bid");
}
