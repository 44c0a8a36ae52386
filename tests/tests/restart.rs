//! A replica that restarts has forgotten everything: it must rejoin as a recovering replica, never
//! as a voter that could help overrule what was decided while it was away.

use mu_nostd::{Config, DetectorConfig, Layout, Shared};
use mu_tests::cluster::{self, Event, Scenario, SimReplica};
use mu_tests::world::{Faults, Plane, World};
use mu_tests::Recorder;

/// Three replicas polled by hand over a gentle world, with one spare `Shared` per restart.
struct Trio<'s> {
    config: Config,
    world: World,
    shared: &'s [Shared],
    lives: usize,
    replicas: Vec<SimReplica<'s>>,
    logs: Vec<Recorder>,
}

impl<'s> Trio<'s> {
    fn new(shared: &'s [Shared]) -> Trio<'s> {
        let mut config = Config::new(3);
        config.slot_count = 64;
        config.detector = DetectorConfig::paper(10);
        config.op_timeout_ticks = 120;
        config.permission_retry_ticks = 60;
        let world = World::new(Layout::new(&config), 3, Faults::gentle(), 7);
        let replicas = (0..3)
            .map(|i| SimReplica::new(config, i, &shared[i as usize]).unwrap())
            .collect();
        Trio {
            config,
            world,
            shared,
            lives: 3,
            replicas,
            logs: (0..3).map(|_| Recorder::default()).collect(),
        }
    }

    fn poll(&mut self, tick: u64) {
        self.world.advance(tick);
        for i in 0..3u8 {
            let r = &mut self.replicas[i as usize];
            r.background
                .poll(tick, &mut self.world.fabric(i, Plane::Background));
            r.replication.poll(
                tick,
                &mut self.world.fabric(i, Plane::Replication),
                &mut self.logs[i as usize],
            );
        }
    }

    /// A new life of `r` with a zeroed region; returns what the old life applied.
    fn restart(&mut self, r: u8) -> Recorder {
        self.world.restart(r);
        self.world.region_mut(r).fill(0);
        let mut fresh = SimReplica::new(self.config, r, &self.shared[self.lives]).unwrap();
        self.lives += 1;
        let life = self.world.life(r);
        fresh.replication.begin_incarnation(life);
        fresh.background.begin_incarnation(life);
        self.replicas[r as usize] = fresh;
        std::mem::take(&mut self.logs[r as usize])
    }

    fn cut(&mut self, a: u8, b: u8) {
        self.world.set_reachable(a, b, false);
    }

    fn link(&mut self, a: u8, b: u8) {
        self.world.set_reachable(a, b, true);
    }
}

/// Only replica 0 is faulty: one link cut at a time, one crash-restart. 0 decides `a` at
/// position 0 with 1 while 2 cannot hear it; 0 restarts with an empty region and can then
/// reach only 2. Counted as a voter, the restarted 0 and the lagging 2 would form a quorum that
/// never saw `a` and decide `b` there (the defect this reproduces, `bug-restart-votes`).
#[test]
fn a_restarted_replica_never_overrules_a_decided_value() {
    let shared: Vec<Shared> = (0..4).map(|_| Shared::new()).collect();
    let mut trio = Trio::new(&shared);
    let mut old_life = Recorder::default();
    let mut step = 0;
    let mut restarted_led = false;
    for tick in 0..8000u64 {
        trio.poll(tick);
        if step == 1 && trio.replicas[0].replication.status().applied >= 1 {
            // 0 applied `a` (its client is told "committed"): a new life of 0 starts now.
            old_life = trio.restart(0);
            trio.cut(0, 1);
            trio.link(0, 2);
            step = 2;
        }
        let status = trio.replicas[0].replication.status();
        match step {
            // The cluster formed (every replica a voter), 0 leads: cut 0 off from 2.
            0 if status.fast_path && trio.replicas.iter().all(|r| r.replication.status().voter) => {
                trio.cut(0, 2);
                trio.replicas[0]
                    .replication
                    .submit(b"command-a")
                    .expect("0 leads");
                step = 1;
            }
            2 => {
                restarted_led |= status.leading.is_some() && !status.voter;
                if status.fast_path {
                    let _ = trio.replicas[0].replication.submit(b"command-b");
                }
                if tick == 6000 {
                    trio.link(0, 1); // Heal: 0 can now be admitted and catch up.
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
    for (id, log) in trio.logs.iter().enumerate() {
        if let Some((_, command)) = log.applied.iter().find(|(p, _)| *p == 0) {
            assert_eq!(
                command.as_slice(),
                b"command-a",
                "replica {id} applied {:?} at position 0, where `a` was decided and reported committed",
                String::from_utf8_lossy(command)
            );
        }
    }
    assert!(!restarted_led, "the restarted replica led while recovering");
    let status = trio.replicas[0].replication.status();
    assert!(status.voter, "the restarted replica was never admitted");
    assert_eq!(
        trio.logs[0]
            .applied
            .first()
            .map(|(p, c)| (*p, c.as_slice())),
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
