//! # runtime-linux: Mu on Linux
//!
//! Hosts the `mu-nostd` core on Linux: the shared-memory fabric ([`shm`]), the planes on pinned
//! busy-polling threads ([`node`]), and the `mu` command.
//!
//! | module | what it holds |
//! |---|---|
//! | [`shm`] | the shared-memory fabric: region files, permissions with fencing, completions |
//! | `verbs` | the RDMA fabric over libibverbs: queue pairs, permission switches, handshakes (feature `verbs`) |
//! | [`mem`] | mapped shared memory and atomic byte copies |
//! | [`status`] | `mu status`: every replica's role, progress and trouble counters, live |
//! | [`serve`] | `mu serve`: the Redis protocol on every replica, through the log, exactly once |
//! | [`procfs`] | process liveness for fencing; isolated cores |
//! | [`node`] | one replica: region, client port, planes on pinned threads, polling modes |
//! | [`intake`] | the in-process way into a replica: whole commands in, whole replies out |
//! | [`port`] | a replica's client port: request and response rings, status, journal |
//! | [`app`] | what a replica hosts: any `Application` (a state machine with a digest) |
//! | [`book`] | the replicated order book: `--app orderbook` and its demo |
//! | [`kv`] | the replicated key-value store of the demo and the tests, one application |
//! | [`cluster`] | replica processes on one host and a client that drives and checks them |
//! | [`demo`] | `mu demo` and `mu failover` |
//! | `doctor` | `mu doctor`: what this host has and lacks for a verbs deployment (feature `verbs`) |
//! | [`teardown`] | a reaper process that unmaps a dead replica's memory at idle priority |
//! | [`clock`] | ticks from `CLOCK_MONOTONIC`; the TSC for latency figures |

// Every `unsafe` block states why it is sound; every `unsafe fn` says what its callers must
// uphold, and its body spells out its own unsafe operations.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod app;
mod barrier;
pub mod bell;
pub mod book;
pub mod clock;
pub mod cluster;
pub mod demo;
#[cfg(feature = "verbs")]
pub mod doctor;
pub mod intake;
pub mod kv;
pub mod mem;
pub mod node;
pub mod port;
pub mod procfs;
pub mod serve;
pub mod shm;
pub mod status;
pub mod teardown;
#[cfg(feature = "verbs")]
pub mod verbs;
