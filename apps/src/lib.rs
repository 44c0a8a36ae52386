#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # mu-apps: applications replicated by Mu, and what they share
//!
//! Each application is a [`mu_nostd::StateMachine`]: deterministic, `no_std`, no heap (fixed
//! capacity chosen by the embedder), bounded work per command, snapshots for state transfer.
//! They run on every runtime: the Linux node, the firmware, the simulator.
//!
//! | module | what it holds |
//! |---|---|
//! | [`session`] | exactly-once client sessions: a fixed table in the replicated state that answers a retried request with its cached reply instead of applying it twice |
//! | [`orderbook`] | a price-time priority matching engine (limit and market orders, cancel, replace) |
//! | [`resp`] | the Redis protocol (RESP2 and inline commands): a bounded parser and encoder |
//! | [`store`] | the key-value store that `mu serve` replicates: Redis string commands with expiry |

pub mod orderbook;
pub mod resp;
pub mod session;
pub mod store;
