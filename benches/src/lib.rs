//! # mu-benches: how fast Mu is, measured
//!
//! `scripts/bench` runs the whole suite (`mu-bench suite`) and writes `BENCHMARKS.md` with a
//! latency CDF; `scripts/bench --quick` is the seconds-long run CI keeps alive.
//!
//! | module | what it holds |
//! |---|---|
//! | [`inproc`] | a Mu cluster inside this process over the shared-memory fabric |
//! | [`instructions`] | instruction counts of the hot paths under callgrind; the baseline |
//! | [`latency`] | leader-side latency and throughput on pinned threads |
//! | [`raft_peer`] | the peer: raft-rs 0.7, in-memory, in the same run |
//! | [`plot`] | the latency CDF as SVG |
//! | [`suite`] | the whole run and `BENCHMARKS.md` |

pub mod inproc;
pub mod instructions;
pub mod latency;
pub mod plot;
pub mod raft_peer;
pub mod suite;
