//! The deterministic simulator of Mu clusters: a seeded, adversarial fabric ([`world`]), a
//! replicated key-value state machine ([`kv`]), client histories and their checks
//! ([`history`]).

pub mod cluster;
pub mod history;
pub mod kv;
pub mod rng;
pub mod world;
