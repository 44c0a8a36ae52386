//! A firmware cluster on the host: replicas over one shared window, stepped in one thread with
//! a shared clock, each a whole `Firmware` (window fabric, responder, permissions, run loop, the
//! core) hosting whatever application the test gives it.

#![allow(dead_code)] // Each test file uses its own part.

use std::sync::atomic::{AtomicU32, Ordering};

use mu_nostd::{Config, Shared};
use runtime_embedded::permissions::Permissions;
use runtime_embedded::telemetry;
use runtime_embedded::window::WindowLayout;
use runtime_embedded::words::Words;
use runtime_embedded::{Application, Firmware, Report, Step, Workload};

/// Rounds any wait may take.
pub const ROUNDS_MAX: u64 = 2_000_000;

/// Replicas `0..replicas.len()`; a dead one is never stepped again.
pub struct Cluster<'w, A, W> {
    pub replicas: Vec<Firmware<'w, A, W>>,
    pub alive: Vec<bool>,
    pub now: u64,
}

impl<'w, A: Application, W: Workload<A>> Cluster<'w, A, W> {
    /// Replicas `0..3` in their first lives (numbered 1 in the control block, as a harness
    /// does), each hosting what `host(id)` gives, run until a leader is on the fast path.
    pub fn start(
        config: Config,
        window: Words<'w>,
        shared: &'w [Shared],
        permissions: &'w [Permissions],
        mut host: impl FnMut(u8) -> (A, W),
    ) -> Cluster<'w, A, W> {
        let replicas = (0..3u8)
            .map(|id| {
                telemetry::set_control_word(window, telemetry::life_word(id), 1);
                let (s, p) = (&shared[id as usize], &permissions[id as usize]);
                let (app, workload) = host(id);
                Firmware::new(config, id, window, s, p, app, workload).unwrap()
            })
            .collect();
        let mut cluster = Cluster {
            replicas,
            alive: vec![true; 3],
            now: 0,
        };
        cluster.until("a leader on the fast path", |c| c.leader().is_some());
        cluster
    }

    /// Steps every live replica once, at the next tick.
    pub fn round(&mut self) -> Vec<Step> {
        self.now += 1;
        let mut steps = Vec::new();
        for (replica, alive) in self.replicas.iter_mut().zip(&self.alive) {
            if *alive {
                steps.push(replica.step(self.now));
            }
        }
        steps
    }

    /// Runs rounds until `done` holds; panics after `ROUNDS_MAX`.
    pub fn until(&mut self, what: &str, mut done: impl FnMut(&Cluster<'w, A, W>) -> bool) {
        let start = self.now;
        while !done(self) {
            assert!(
                self.now - start < ROUNDS_MAX,
                "timed out waiting for {what}"
            );
            self.round();
        }
    }

    /// The one live replica that sees itself as leader, if exactly one does.
    pub fn leader(&self) -> Option<usize> {
        let leading: Vec<usize> = (0..self.replicas.len())
            .filter(|&i| self.alive[i] && self.replicas[i].report().leader == Some(i as u8))
            .collect();
        (leading.len() == 1).then(|| leading[0])
    }

    /// The leader, once it committed at least `commands` commands as leader.
    pub fn leader_committed(&self, commands: u64) -> Option<usize> {
        self.leader()
            .filter(|&l| self.replicas[l].report().committed >= commands)
    }

    /// The live replicas' reports.
    pub fn reports(&self) -> Vec<Report> {
        (0..self.replicas.len())
            .filter(|&i| self.alive[i])
            .map(|i| self.replicas[i].report())
            .collect()
    }

    /// Runs until every live replica applied the same positions with the same chain, and kept
    /// them for 20,000 rounds in a row (the leader must have stopped submitting).
    pub fn converge(&mut self, what: &str) {
        let mut stable = 0;
        self.until(what, |c| {
            let r = c.reports();
            let same = r
                .iter()
                .all(|x| x.applied == r[0].applied && x.chain == r[0].chain);
            stable = if same { stable + 1 } else { 0 };
            stable > 20_000
        });
    }
}

/// A zeroed window for `config`'s cluster.
pub fn window_for(config: &Config) -> Vec<AtomicU32> {
    let layout = WindowLayout::new(config).unwrap();
    (0..layout.bytes / 4).map(|_| AtomicU32::new(0)).collect()
}

/// Zeroes what replica `id`'s life left in the window, as a re-launch with a fresh window part.
pub fn zero_parts_of(backing: &[AtomicU32], layout: &WindowLayout, id: u8) {
    for (at, len) in layout.parts_of(id) {
        for word in &backing[at as usize / 4..(at + len) as usize / 4] {
            word.store(0, Ordering::SeqCst);
        }
    }
}
