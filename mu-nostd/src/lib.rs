#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # mu-nostd: the Mu consensus core
//!
//! State machine replication in the style of Mu (OSDI 2020): the leader replicates a command by
//! writing it straight into the followers' logs with one-sided writes; permissions on each log
//! guarantee a single writer; a pull-score failure detector fails over quickly. This crate is
//! the protocol only: `no_std`, no heap, no `unsafe`, no threads, no clock. A runtime gives it a
//! [`fabric::Fabric`] per plane (one-sided reads and writes, local region access, permission
//! switches), the time in ticks, and a [`state_machine::StateMachine`], and polls it.
//!
//! ```text
//!  client -> ReplicationPlane::submit -> queue -> own log slot -> Fabric::write to each member
//!        <- StateMachine::committed  <- apply <- majority of completions (leader included)
//!  follower: ReplicationPlane::poll replays its own log (checksums + chain + commit points)
//!  every replica: BackgroundPlane::poll: heartbeat, pull scores, election, grants
//! ```
//!
//! ## Module map
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | the cluster configuration, its validation (typed, naming the field) and hash |
//! | [`layout`] | the region layout computed from the configuration; the region header check |
//! | [`slot`] | the slot format: the value (chain digest, position, origin, fragments) and its acceptance record (ballot, piggybacked commit); adoption records and decided marks |
//! | [`record`] | checked 16-byte records (heartbeat, applied, requests, acks, min proposals) |
//! | [`hash`] | the 64-bit hash behind checksums and chains |
//! | [`fabric`] | the `Fabric` trait: the contract every fabric honours |
//! | [`state_machine`] | the application trait |
//! | [`replication`] | the replication plane: the follower or the tenure, submit, state transfer |
//! | [`log`] | the own log below both roles: replay, apply, the chain, the queue of submitted commands |
//! | [`links`] | the replication plane's connections, and the completion drain both planes use |
//! | [`transfer`] | state transfer: a replica a lap behind installs another's snapshot |
//! | [`tenure`] | the leader's tenure, a type that exists only while leading: survey and catch-up, prepare and adoption, the fast path, recycling |
//! | [`background`] | heartbeat, failure detection, election, permission requests, grants, acks |
//! | [`detector`] | the pull score with hysteresis |
//! | [`shared`] | the atomics the two planes share, and the step-down handshake |
//! | `queue` | the leader's queue of undecided commands |
//! | `wrid` | work-request id encoding |
//! | [`replica`] | building both planes with typed errors; polling both from one loop |
//!
//! ## Planted defects
//!
//! The `bug-*` features (`bug-skip-revoke`, `bug-skip-prepare`, `bug-small-quorum`,
//! `bug-no-checksum`, `bug-restart-votes`, `bug-unchecked-snapshot`, `bug-stale-death`,
//! `bug-torn-rewrite`) build the core with a known defect, so that the simulator can prove it
//! catches each one. Never enable them elsewhere.

#[macro_use]
mod fmt;

pub mod background;
pub mod config;
pub mod detector;
pub mod fabric;
pub mod hash;
pub mod layout;
pub mod links;
pub mod log;
mod queue;
pub mod record;
pub mod replica;
pub mod replication;
pub mod shared;
pub mod slot;
pub mod state_machine;
pub mod tenure;
pub mod transfer;
mod wrid;

#[cfg(test)]
mod fuzz_tests;

pub use background::{BackgroundPlane, BackgroundStatus, PeerHeader};
pub use config::{Config, ConfigError, DetectorConfig};
pub use fabric::{check_post, Completion, Fabric, Op, Plane, PostError, ReplicaId, Status};
pub use layout::Layout;
pub use log::{Blocked, Refusals};
pub use queue::REQUESTS_MAX;
pub use replica::{planes, Replica, ReplicaError};
pub use replication::{Halt, ReplicationPlane, ReplicationStatus, SubmitError};
pub use shared::Shared;
pub use state_machine::{Snapshot, StateMachine, Ticket};
pub use tenure::{LeaderStatus, MemberPhase, MemberStatus, Tenure, TenurePhase};
pub use transfer::TransferStatus;
