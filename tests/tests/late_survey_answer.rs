//! A new leader's survey goes on once a majority answered. A member whose answer comes later and
//! who applied more than the leader ends the tenure (its prepare must not rewrite what a member
//! applied), and the next tenure catches up from it; but the next tenure's survey could go on
//! before that member answered again, and end the same way, tenure after tenure (simulator seed
//! 10388: a replica that took the leadership back from the one that led meanwhile surveyed it
//! last every time). Now the next tenure's survey waits for that member, until its deadline.
//!
//! The schedule: replica 0 leads; it is cut off, replica 1 takes over, and commits while
//! replica 2's replication plane is stopped (2 holds the last commands, unapplied), so that 1
//! has applied more than 2, and 2 more than 0. Replica 0 comes back and, the lowest id, leads
//! again; in each of its tenures its link to replica 1 stays cut until replica 2 was surveyed
//! or `CUT` ticks passed, so that 1 answers after 2.

use mu_nostd::MemberPhase;
use mu_tests::trio::Trio;
use mu_tests::world::Faults;

/// Ticks a tenure of replica 0 is cut off from replica 1 at most.
const CUT: u64 = 40;
/// Commands replica 1 commits while replica 2 does not apply.
const UNAPPLIED_BY_2: u64 = 6;

/// Replica `id` leads on its fast path.
fn streaming(trio: &Trio, id: u8) -> bool {
    let status = trio.replica(id).replication.status();
    status.leading.is_some() && status.fast_path
}

#[test]
fn a_member_ahead_that_answers_the_survey_late_ends_one_tenure_not_every_one() {
    let shared = Trio::shared(0);
    let mut trio = Trio::new(Trio::config(), Faults::gentle(), &shared);
    trio.formed();
    let first = trio.replica(0).replication.status().leading;
    trio.world.set_reachable(0, 1, false);
    trio.world.set_reachable(0, 2, false);
    let took = trio.run_until(3_000, |t| streaming(t, 1) && t.leader_view(2) == Some(1));
    assert!(
        took.is_some(),
        "replica 1 takes over from the cut-off replica 0"
    );
    trio.commit(1, 2, b"applied by 1 and 2");
    for k in 0..UNAPPLIED_BY_2 {
        let before = trio.replica(1).replication.status().applied;
        trio.replica_mut(1)
            .replication
            .submit(format!("not applied by 2: {k}").as_bytes())
            .expect("1 leads");
        let mut ticks = 0;
        while trio.replica(1).replication.status().applied == before {
            assert!(ticks < 2_000, "1 commits command {k} with 2's log");
            trio.run_replication_stopped(1, 1 << 2);
            ticks += 1;
        }
    }
    let ahead = trio.replica(1).replication.status().applied;
    assert!(trio.replica(2).replication.status().applied + UNAPPLIED_BY_2 <= ahead);

    trio.world.set_reachable(0, 2, true);
    trio.world.set_reachable(0, 1, true);
    let (mut tenures, mut cut_from) = (Vec::new(), 0);
    let mut ticks = 0;
    let leads_again =
        |t: &Trio| streaming(t, 0) && t.replica(0).replication.status().leading != first;
    while ticks < 20_000 && !leads_again(&trio) {
        if let Some(status) = trio.replica(0).replication.leader_status() {
            if tenures.last() != Some(&status.tenure) {
                tenures.push(status.tenure);
                cut_from = trio.tick;
            }
            let two_surveyed = !matches!(
                status.members[2].state,
                MemberPhase::Absent
                    | MemberPhase::Joining
                    | MemberPhase::Surveying
                    | MemberPhase::Lost
            );
            let cut = trio.tick < cut_from + CUT && !two_surveyed;
            trio.world.set_reachable(0, 1, !cut);
        } else {
            trio.world.set_reachable(0, 1, true);
        }
        trio.run_replication_stopped(1, 1 << 2);
        ticks += 1;
    }
    println!(
        "replica 0 began {} tenures (the first {:?}) in {ticks} ticks",
        tenures.len(),
        tenures.first()
    );
    assert!(
        leads_again(&trio),
        "replica 0 reaches the fast path of a new tenure ({} tenures in {ticks} ticks)",
        tenures.len()
    );
    // Without the wait: 1,699 tenures in 20,000 ticks, none past its prepare.
    assert!(tenures.len() <= 4, "{} tenures", tenures.len());
    assert!(
        trio.replica(0).replication.status().applied >= ahead,
        "replica 0 holds what replica 1 applied"
    );
}
