//! The deterministic simulator of Mu clusters: a seeded, adversarial fabric ([`world`]), a
//! replicated key-value state machine ([`kv`]), client histories and their linearizability check
//! ([`history`]), and the cluster driver that runs a seed and checks every invariant at every
//! tick ([`cluster`]). The `sim` binary runs many seeds or replays one with a trace.

pub mod cluster;
pub mod history;
pub mod kv;
pub mod rng;
pub mod world;
