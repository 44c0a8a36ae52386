//! A replica that restarts has forgotten everything: it must rejoin as a recovering replica, never
//! as a voter that could help overrule what was decided while it was away.

use mu_tests::cluster::{self, Event, Scenario};
use mu_tests::trio::Trio;
use mu_tests::world::Faults;
use mu_tests::Recorder;

/// 0 decides `a` at position 0 with 1 while 2 cannot hear it; 0 restarts with an empty region,
/// and 1, the only other replica that holds `a`, is cut off from both (until tick 6000).
/// Counted as a voter, the restarted 0 and the lagging 2 would form a quorum that never saw `a`
/// and decide `b` there (the defect this reproduces, `bug-restart-votes`: with it, this test
/// fails). While 1 could still reach 2, it handed `a` on to 2 before the restarted 0 led, and
/// the test passed with the defect too.
#[test]
fn a_restarted_replica_never_overrules_a_decided_value() {
    let shared = Trio::shared(1);
    let mut trio = Trio::new(Trio::config(), Faults::gentle(), &shared);
    let mut old_life = Recorder::default();
    let mut step = 0;
    let mut restarted_led = false;
    for _ in 0..8000 {
        trio.run(1);
        if step == 1 && trio.replica(0).replication.status().applied >= 1 {
            // 0 applied `a` (its client is told "committed"): a new life of 0 starts now.
            old_life = trio.restart(0);
            trio.world.set_reachable(0, 1, false);
            trio.world.set_reachable(1, 2, false);
            trio.world.set_reachable(0, 2, true);
            step = 2;
        }
        let status = trio.replica(0).replication.status();
        let formed = (0..3).all(|i| trio.replica(i).replication.status().voter);
        match step {
            // The cluster formed (every replica a voter), 0 leads: cut 0 off from 2.
            0 if status.fast_path && formed => {
                trio.world.set_reachable(0, 2, false);
                trio.replica_mut(0)
                    .replication
                    .submit(b"command-a")
                    .expect("0 leads");
                step = 1;
            }
            2 => {
                restarted_led |= status.leading.is_some() && !status.voter;
                if status.fast_path {
                    let _ = trio.replica_mut(0).replication.submit(b"command-b");
                }
                if trio.tick == 6000 {
                    // Heal: 0 can now be admitted and catch up.
                    trio.world.set_reachable(0, 1, true);
                    trio.world.set_reachable(1, 2, true);
                }
            }
            _ => {}
        }
    }
    assert!(step >= 2, "the schedule did not play out (step {step})");
    assert_eq!(
        old_life.applied.first().map(|(p, c)| (*p, c.as_slice())),
        Some((0, &b"command-a"[..]))
    );
    for id in 0..3 {
        if let Some((_, command)) = trio.log(id).applied.iter().find(|(p, _)| *p == 0) {
            assert_eq!(
                command.as_slice(),
                b"command-a",
                "replica {id} applied {:?} at position 0, where `a` was decided and reported committed",
                String::from_utf8_lossy(command)
            );
        }
    }
    assert!(!restarted_led, "the restarted replica led while recovering");
    let status = trio.replica(0).replication.status();
    assert!(status.voter, "the restarted replica was never admitted");
    assert_eq!(
        trio.log(0).applied.first().map(|(p, c)| (*p, c.as_slice())),
        Some((0, &b"command-a"[..])),
        "the new life caught up from position 0"
    );
}

/// A follower, then the leader, restarted with a zeroed region while the log still holds every
/// position: each rejoins as a recovering replica, is admitted, and ends a voter with the same
/// applied position and state as the others (the simulator's convergence check).
#[test]
fn a_restarted_replica_rejoins_within_the_log() {
    for (seed, victim) in [(21, 2u8), (22, 0)] {
        let mut scenario = Scenario::quiet(3, 4096);
        scenario.faults = Faults::default();
        scenario.faulty = vec![victim];
        scenario.events = vec![(500, Event::Restart(victim))];
        let (report, trace) = cluster::run_scenario(seed, scenario, true);
        if let Some(v) = &report.violation {
            panic!(
                "replica {victim}: tick {}: {}: {}\n{}",
                v.tick,
                v.invariant,
                v.detail,
                trace.unwrap_or_default()
            );
        }
        assert_eq!(report.restarts, 1);
        assert_eq!(report.halts, 0, "replica {victim} halted");
        assert!(
            report.max_applied > 200,
            "replica {victim}: the cluster went only {} positions",
            report.max_applied
        );
    }
}
