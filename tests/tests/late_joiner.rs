//! Regression (found in review): a replica that grants an already streaming leader late must not
//! let that leader decide under its old ballot where a newer leader prepared in between.
//!
//! Once the cluster formed, 0 and 2 cannot reach each other; 0 leads with 1. Then 0 is cut from 1
//! as well: 1 leads with 2,
//! prepares a higher ballot, decides `c` at position 0, and crashes before 2 learns the commit
//! point. 0 (idle, never denied, still in its old tenure) reconnects to 2, which now grants it.
//! Without the late-joiner check, 0 would decide `d` at position 0 with {0, 2}.

use mu_nostd::{Config, DetectorConfig, Layout, Shared};
use mu_tests::cluster::SimReplica;
use mu_tests::world::{Faults, Plane, World};
use mu_tests::Recorder;

#[test]
fn a_late_grantor_cannot_revive_an_old_ballot() {
    let mut config = Config::new(3);
    config.slot_count = 64;
    config.detector = DetectorConfig::paper(10);
    config.op_timeout_ticks = 120;
    config.permission_retry_ticks = 60;
    let mut world = World::new(Layout::new(&config), 3, Faults::gentle(), 7);
    let shared: Vec<Shared> = (0..3).map(|_| Shared::new()).collect();
    let mut replicas: Vec<SimReplica> = (0..3)
        .map(|i| SimReplica::new(config, i, &shared[i as usize]).unwrap())
        .collect();
    let mut logs: Vec<Recorder> = (0..3).map(|_| Recorder::default()).collect();
    let mut crashed = [false; 3];
    let mut step = 0;
    let mut cut_at = 0;
    for tick in 0..6000u64 {
        world.advance(tick);
        for i in 0..3u8 {
            if crashed[i as usize] {
                continue;
            }
            let r = &mut replicas[i as usize];
            r.background
                .poll(tick, &mut world.fabric(i, Plane::Background));
            r.replication.poll(
                tick,
                &mut world.fabric(i, Plane::Replication),
                &mut logs[i as usize],
            );
            if i == 1 && step == 2 && r.replication.status().applied >= 1 {
                world.crash(1);
                crashed[1] = true;
                step = 3;
            }
        }
        let fast = |r: &SimReplica| r.replication.status().fast_path;
        let formed = replicas.iter().all(|r| r.replication.status().voter);
        match step {
            0 if formed && fast(&replicas[0]) => {
                world.set_reachable(0, 2, false);
                cut_at = tick;
                step = 10;
            }
            10 if tick > cut_at + 400 && fast(&replicas[0]) => {
                world.set_reachable(0, 1, false);
                step = 1;
            }
            1 if fast(&replicas[1]) => {
                replicas[1]
                    .replication
                    .submit(b"command-c")
                    .expect("1 leads");
                step = 2;
            }
            3 => {
                world.set_reachable(0, 2, true);
                step = 4;
            }
            4 if replicas[2].background.status().holder == Some(0) => {
                // 2 granted 0; whatever 0 decides from now on must agree with `c`.
                let _ = replicas[0].replication.submit(b"command-d");
                step = 5;
            }
            _ => {}
        }
    }
    assert_eq!(step, 5, "the schedule did not play out");
    let mut at_zero: Vec<(usize, Vec<u8>)> = Vec::new();
    for (id, log) in logs.iter().enumerate() {
        if let Some((_, command)) = log.applied.iter().find(|(p, _)| *p == 0) {
            at_zero.push((id, command.clone()));
        }
    }
    assert!(at_zero.iter().any(|(id, _)| *id == 1), "1 applied c");
    for (id, command) in &at_zero {
        assert_eq!(
            command, b"command-c",
            "replica {id} applied another command at position 0"
        );
    }
}
