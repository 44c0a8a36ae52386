//! The deterministic simulator of Mu clusters: a seeded, adversarial fabric ([`world`]), a
//! replicated key-value state machine ([`kv`]), client histories and their linearizability check
//! ([`history`]), the cluster driver that runs a seed and checks every invariant at every tick
//! ([`cluster`]), the watch on copies of decided values ([`copies`]), and three replicas polled by hand for directed tests ([`trio`]). The `sim`
//! binary runs many seeds or replays one with a trace. [`Recorder`] is the state machine of
//! tests that script a schedule by hand.

pub mod cluster;
pub mod copies;
pub mod history;
pub mod kv;
pub mod rng;
pub mod trio;
pub mod world;

use mu_nostd::StateMachine;

/// A state machine that records every (position, command) it applies, in order.
#[derive(Debug, Default)]
pub struct Recorder {
    /// What was applied.
    pub applied: Vec<(u64, Vec<u8>)>,
}

impl StateMachine for Recorder {
    fn apply(&mut self, position: u64, command: &[u8], _response: &mut [u8]) -> usize {
        self.applied.push((position, command.to_vec()));
        0
    }
}
