//! Regressions (issue 14: a quiet 3-process cluster on a 2-core host started 2 to 10 new tenures
//! in 15 s, each one a bid that took a replica's own log back from the live leader, whose next
//! write there was denied and ended its tenure; the bid itself could never succeed).
//!
//! Two rules, each with a schedule that breaks without it (three replicas form with replica 0
//! leading, then):
//! - A replica takes its own log from a holder that may be alive only once a majority names it
//!   leader in their heartbeats (a pre-vote). When the other two background planes were starved
//!   together, the third declared both peers failed and bid alone (first test: the background
//!   planes of replicas 0 and 1 go unpolled, their replication planes run on, idle: a leader
//!   that commits is seen alive by its applied position); when one follower lost sight of the
//!   leader, it bid while the other still followed the leader (second test: the link between
//!   replicas 0 and 1 is cut).
//! - A replica starts a tenure only while it considers a majority alive, itself included, even
//!   against a holder that certainly died, which needs no pre-vote (third test: the leader dies
//!   while replica 1's background plane is starved).

use mu_tests::trio::Trio;
use mu_tests::world::Faults;

const LEADER: u8 = 0;

/// Ticks a replica needs to declare a silent peer failed.
fn detection() -> u64 {
    Trio::config().detector.detection_ticks()
}

/// What a schedule saw after the cluster formed.
#[derive(Default)]
struct Seen {
    /// Tenures replica `bidder` started.
    bids: u32,
    /// Ticks on which replica 2 took itself for the only replica alive.
    alone: u64,
    /// Positions the leader applied.
    applied: u64,
}

/// Runs `ticks` ticks with the background planes in `starved` unpolled, keeping replica 0 busy
/// while it runs if `busy` (a denied write shows at once), and counts what `bidder` did.
fn run(trio: &mut Trio, ticks: u64, starved: u8, busy: bool, bidder: u8, seen: &mut Seen) {
    let leads = |trio: &Trio| trio.replicas[LEADER as usize].is_some();
    let applied = |trio: &Trio| match leads(trio) {
        true => trio.replica(LEADER).replication.status().applied,
        false => 0,
    };
    let from = applied(trio);
    for _ in 0..ticks {
        let command = trio.tick.to_le_bytes();
        if busy && leads(trio) {
            let leader = &mut trio.replica_mut(LEADER).replication;
            if leader.status().fast_path && leader.status().queued == 0 {
                let _ = leader.submit(&command);
            }
        }
        let bidding = trio.replica(bidder).background.status().tenure.is_some();
        trio.run_starving(1, starved);
        if !bidding && trio.replica(bidder).background.status().tenure.is_some() {
            seen.bids += 1;
        }
        if trio.alive_view(2) == 0b100 {
            seen.alone += 1;
        }
    }
    seen.applied = applied(trio) - from;
}

#[test]
fn a_replica_that_sees_no_majority_alive_does_not_bid() {
    let shared = Trio::shared(0);
    let mut trio = Trio::new(Trio::config(), Faults::gentle(), &shared);
    trio.formed();
    let tenure = trio.replica(LEADER).replication.status().leading;
    let mut starved = Seen::default();
    run(&mut trio, detection() * 3, 0b011, false, 2, &mut starved);
    assert!(
        starved.alone > 0,
        "replica 2 declared both peers failed (the schedule tests what it means to)"
    );
    let mut after = Seen::default();
    run(&mut trio, 2_000, 0, true, 2, &mut after);
    assert_eq!(starved.bids + after.bids, 0, "replica 2 started no tenure");
    assert_eq!(
        trio.replica(LEADER).replication.status().leading,
        tenure,
        "the leader keeps its tenure"
    );
    assert!(after.applied > 0, "the leader replicates");
}

#[test]
fn a_replica_cut_off_from_a_leader_the_others_follow_does_not_bid() {
    let shared = Trio::shared(0);
    let mut trio = Trio::new(Trio::config(), Faults::gentle(), &shared);
    trio.formed();
    trio.world.set_reachable(LEADER, 1, false);
    let mut cut = Seen::default();
    run(&mut trio, detection() * 6, 0, true, 1, &mut cut);
    assert_ne!(
        trio.alive_view(1) & 1,
        1,
        "replica 1 lost sight of the leader (the schedule tests what it means to)"
    );
    trio.world.set_reachable(LEADER, 1, true);
    let mut healed = Seen::default();
    run(&mut trio, 2_000, 0, true, 1, &mut healed);
    assert_eq!(cut.bids + healed.bids, 0, "replica 1 started no tenure");
    assert_eq!(
        [0, 1, 2].map(|id| trio.leader_view(id)),
        [Some(LEADER); 3],
        "the leader still leads"
    );
    assert!(
        cut.applied > 0,
        "the leader replicated with replica 2 meanwhile"
    );
}

#[test]
fn a_replica_alone_does_not_bid_even_against_a_dead_holder() {
    let shared = Trio::shared(0);
    let mut trio = Trio::new(Trio::config(), Faults::gentle(), &shared);
    trio.formed();
    // The leader dies (a death notice: no pre-vote needed against it) while replica 1's
    // background plane is starved: replica 2 is alone, and a bid of its own could gather nothing.
    trio.crash(LEADER);
    let mut starved = Seen::default();
    run(&mut trio, detection() * 3, 0b010, true, 2, &mut starved);
    assert!(
        starved.alone > 0,
        "replica 2 took itself for the only replica alive"
    );
    assert_eq!(starved.bids, 0, "replica 2 did not bid alone");
    let took = trio.run_until(2_000, |t| {
        t.replica(1).replication.status().fast_path && t.leader_view(2) == Some(1)
    });
    assert!(took.is_some(), "replica 1 takes over once it runs again");
}
