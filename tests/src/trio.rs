//! Three replicas polled by hand, tick by tick, for directed tests: crash and restart them,
//! cut links, and watch each one's view. One spare [`Shared`] per restart.

use mu_nostd::{Config, DetectorConfig, Layout, Shared};

use crate::cluster::SimReplica;
use crate::world::{Faults, Plane, World};
use crate::Recorder;

/// The detector's read period of [`Trio::config`], in ticks.
pub const READ_PERIOD: u32 = 10;

/// Three replicas over one simulated world.
pub struct Trio<'s> {
    /// The world they share.
    pub world: World,
    config: Config,
    shared: &'s [Shared],
    lives: usize,
    /// The running replicas (`None` while crashed).
    pub replicas: Vec<Option<SimReplica<'s>>>,
    logs: Vec<Recorder>,
    /// The last tick polled.
    pub tick: u64,
}

impl<'s> Trio<'s> {
    /// The configuration directed tests use: 64 slots, paper detector reading every
    /// [`READ_PERIOD`] ticks, operations timed out after 120 ticks.
    pub fn config() -> Config {
        let mut config = Config::new(3);
        config.slot_count = 64;
        config.detector = DetectorConfig::paper(READ_PERIOD);
        config.op_timeout_ticks = 120;
        config.permission_retry_ticks = 60;
        config
    }

    /// Spare shared state for three replicas and `restarts` restarts.
    pub fn shared(restarts: usize) -> Vec<Shared> {
        (0..3 + restarts).map(|_| Shared::new()).collect()
    }

    /// Three fresh replicas of `config` over a world with `faults`.
    pub fn new(config: Config, faults: Faults, shared: &'s [Shared]) -> Trio<'s> {
        assert!(shared.len() >= 3);
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

    /// Polls every running replica, background plane first, for `ticks` ticks.
    pub fn run(&mut self, ticks: u64) {
        self.run_starving(ticks, 0);
    }

    /// Like [`Trio::run`], but the background planes of the replicas in `starved` (bit per id)
    /// are not polled, as on a host that keeps their threads from a core.
    pub fn run_starving(&mut self, ticks: u64, starved: u8) {
        self.run_polling(ticks, starved, 0);
    }

    /// Like [`Trio::run`], but the replicas in `paused` (bit per id) are not polled at all, as
    /// for a stopped process: the others still read and write their regions.
    pub fn run_pausing(&mut self, ticks: u64, paused: u8) {
        self.run_polling(ticks, 0, paused);
    }

    /// Like [`Trio::run`], but the replication planes of the replicas in `stopped` (bit per id)
    /// are not polled: they apply nothing and publish no applied position, while their background
    /// planes grant and ack, and the others write and read their regions.
    pub fn run_replication_stopped(&mut self, ticks: u64, stopped: u8) {
        self.run_planes(ticks, 0, 0, stopped);
    }

    fn run_polling(&mut self, ticks: u64, starved: u8, paused: u8) {
        self.run_planes(ticks, starved, paused, 0);
    }

    fn run_planes(&mut self, ticks: u64, starved: u8, paused: u8, stopped: u8) {
        for _ in 0..ticks {
            self.tick += 1;
            self.world.advance(self.tick);
            for i in 0..3u8 {
                let Some(r) = self.replicas[i as usize].as_mut() else {
                    continue;
                };
                if paused & (1 << i) != 0 {
                    continue;
                }
                if starved & (1 << i) == 0 {
                    r.background
                        .poll(self.tick, &mut self.world.fabric(i, Plane::Background));
                }
                if stopped & (1 << i) != 0 {
                    continue;
                }
                r.replication.poll(
                    self.tick,
                    &mut self.world.fabric(i, Plane::Replication),
                    &mut self.logs[i as usize],
                );
            }
        }
    }

    /// Runs until `done` holds, at most `limit` ticks; the ticks it took.
    pub fn run_until(&mut self, limit: u64, done: impl Fn(&Trio) -> bool) -> Option<u64> {
        let start = self.tick;
        while self.tick - start < limit {
            if done(self) {
                return Some(self.tick - start);
            }
            self.run(1);
        }
        None
    }

    /// Replica `id`, which runs.
    pub fn replica(&self, id: u8) -> &SimReplica<'s> {
        self.replicas[id as usize].as_ref().expect("running")
    }

    /// Replica `id`, which runs, to submit commands to.
    pub fn replica_mut(&mut self, id: u8) -> &mut SimReplica<'s> {
        self.replicas[id as usize].as_mut().expect("running")
    }

    /// What the current life of replica `id` applied.
    pub fn log(&self, id: u8) -> &Recorder {
        &self.logs[id as usize]
    }

    /// Whom replica `id` takes for leader.
    pub fn leader_view(&self, id: u8) -> Option<u8> {
        self.replica(id).background.status().leader
    }

    /// Whom replica `id` takes for alive (bit per id).
    pub fn alive_view(&self, id: u8) -> u8 {
        self.replica(id).background.status().alive
    }

    /// Crash-stops `id`.
    pub fn crash(&mut self, id: u8) {
        self.world.crash(id);
        self.replicas[id as usize] = None;
    }

    /// Starts a new life of `id` with a zeroed region; what the old life applied.
    pub fn restart(&mut self, id: u8) -> Recorder {
        self.world.restart(id);
        self.world.region_mut(id).fill(0);
        let mut fresh = SimReplica::new(self.config, id, &self.shared[self.lives]).unwrap();
        self.lives += 1;
        let life = self.world.life(id);
        fresh.replication.begin_incarnation(life);
        fresh.background.begin_incarnation(life);
        self.replicas[id as usize] = Some(fresh);
        std::mem::take(&mut self.logs[id as usize])
    }

    /// Submits `command` at `leader` and runs until replica `watcher` applied one more position.
    pub fn commit(&mut self, leader: u8, watcher: u8, command: &[u8]) {
        let before = self.replica(watcher).replication.status().applied;
        self.replica_mut(leader)
            .replication
            .submit(command)
            .expect("the leader takes the command");
        let applied = self.run_until(2_000, |t| {
            t.replica(watcher).replication.status().applied > before
        });
        assert!(
            applied.is_some(),
            "replica {watcher} applies {:?}",
            String::from_utf8_lossy(command)
        );
    }

    /// Runs until the cluster formed with replica 0 leading, then 100 ticks more.
    pub fn formed(&mut self) {
        let took = self.run_until(2_000, |t| {
            (0..3).all(|i| t.replica(i).replication.status().voter)
                && t.leader_view(1) == Some(0)
                && t.leader_view(2) == Some(0)
        });
        assert!(took.is_some(), "the cluster forms with replica 0 leading");
        self.run(100);
    }
}
