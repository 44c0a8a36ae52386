//! Certain death, detected at once: a peer whose fabric reports that the life the core trusts
//! ended is failed without waiting for its pull score to drain; a notice about an earlier life of
//! a restarted peer changes nothing; with no notice at all, the pull score still decides.

use mu_nostd::{Config, DetectorConfig, Layout, Shared};
use mu_tests::cluster::SimReplica;
use mu_tests::world::{Faults, Plane, World};
use mu_tests::Recorder;

const READ_PERIOD: u32 = 10;

/// Three replicas polled by hand, with one spare `Shared` per restart.
struct Trio<'s> {
    world: World,
    config: Config,
    shared: &'s [Shared],
    lives: usize,
    replicas: Vec<Option<SimReplica<'s>>>,
    logs: Vec<Recorder>,
    tick: u64,
}

impl<'s> Trio<'s> {
    fn new(faults: Faults, shared: &'s [Shared]) -> Trio<'s> {
        let mut config = Config::new(3);
        config.slot_count = 64;
        config.detector = DetectorConfig::paper(READ_PERIOD);
        config.op_timeout_ticks = 120;
        config.permission_retry_ticks = 60;
        let world = World::new(Layout::new(&config), 3, faults, 11);
        let replicas = (0..3)
            .map(|i| Some(SimReplica::new(config, i, &shared[i as usize]).unwrap()))
            .collect();
        Trio {
            world,
            config,
            shared,
            lives: 3,
            replicas,
            logs: (0..3).map(|_| Recorder::default()).collect(),
            tick: 0,
        }
    }

    fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.tick += 1;
            self.world.advance(self.tick);
            for i in 0..3u8 {
                let Some(r) = self.replicas[i as usize].as_mut() else {
                    continue;
                };
                r.background
                    .poll(self.tick, &mut self.world.fabric(i, Plane::Background));
                r.replication.poll(
                    self.tick,
                    &mut self.world.fabric(i, Plane::Replication),
                    &mut self.logs[i as usize],
                );
            }
        }
    }

    /// Runs until `done` holds, at most `limit` ticks; the ticks it took.
    fn run_until(&mut self, limit: u64, done: impl Fn(&Trio) -> bool) -> Option<u64> {
        let start = self.tick;
        while self.tick - start < limit {
            if done(self) {
                return Some(self.tick - start);
            }
            self.run(1);
        }
        None
    }

    fn leader_view(&self, id: u8) -> Option<u8> {
        let r = self.replicas[id as usize].as_ref().expect("running");
        r.background.status().leader
    }

    fn alive_view(&self, id: u8) -> u8 {
        let r = self.replicas[id as usize].as_ref().expect("running");
        r.background.status().alive
    }

    fn crash(&mut self, id: u8) {
        self.world.crash(id);
        self.replicas[id as usize] = None;
    }

    fn restart(&mut self, id: u8) {
        self.world.restart(id);
        self.world.region_mut(id).fill(0);
        let mut fresh = SimReplica::new(self.config, id, &self.shared[self.lives]).unwrap();
        self.lives += 1;
        let life = self.world.life(id);
        fresh.replication.begin_incarnation(life);
        fresh.background.begin_incarnation(life);
        self.replicas[id as usize] = Some(fresh);
        self.logs[id as usize] = Recorder::default();
    }

    fn formed(&mut self) {
        let took = self.run_until(2_000, |t| {
            (0..3).all(|i| t.replicas[i].as_ref().unwrap().replication.status().voter)
                && t.leader_view(1) == Some(0)
                && t.leader_view(2) == Some(0)
        });
        assert!(took.is_some(), "the cluster forms with replica 0 leading");
        self.run(100);
    }
}

fn shared() -> Vec<Shared> {
    (0..6).map(|_| Shared::new()).collect()
}

/// Ticks until both survivors take replica 1 for leader after replica 0 crashed.
fn fail_over_ticks(faults: Faults) -> u64 {
    let shared = shared();
    let mut trio = Trio::new(faults, &shared);
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
    let shared = shared();
    let mut trio = Trio::new(Faults::gentle(), &shared);
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
    let admitted = trio.run_until(5_000, |t| {
        t.replicas[2].as_ref().unwrap().replication.status().voter
    });
    assert!(admitted.is_some(), "the new life is admitted");
    for id in [0, 1] {
        let r = trio.replicas[id].as_ref().unwrap();
        assert_eq!(
            r.background.status().deaths,
            1,
            "replica {id} took one death"
        );
    }
}
