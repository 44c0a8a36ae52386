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
//! | [`orderbook`] | the order book, unreplicated and replicated by 3 replicas, in one run |
//! | [`raft_peer`] | the peer: raft-rs 0.7, in-memory, in the same run |
//! | [`raft_tcp`] | the peer as deployed: raft-rs 0.7 nodes on their own threads over loopback TCP |
//! | [`rejoin`] | a follower 10 laps behind rejoins by a 64 MiB state transfer |
//! | [`plot`] | the latency CDF as SVG |
//! | [`suite`] | the whole run and `BENCHMARKS.md` |
//!
//! # Invariants
//! - Figures are printed and written, never asserted: tests check that each measurement runs
//!   and that its own checks (agreement, commits, sequence order) can fail.
//! - Mu and raft-rs are measured in the same process, on the same core, with the same payloads.

pub mod inproc;
pub mod instructions;
pub mod latency;
pub mod orderbook;
pub mod plot;
pub mod raft_peer;
pub mod raft_tcp;
pub mod rejoin;
pub mod suite;

/// The application both systems replicate: every replica folds each applied command into an
/// order-sensitive digest, a word at a time, so that applying stays cheap next to replication
/// and costs Mu and raft-rs the same.
pub fn digest(mut hash: u64, data: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut mix = |word: u64| hash = (hash ^ word).wrapping_mul(K).rotate_left(29);
    mix(data.len() as u64);
    let mut words = data.chunks_exact(8);
    for word in &mut words {
        mix(u64::from_le_bytes(
            word.try_into().expect("chunks_exact yields 8 bytes"),
        ));
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    mix(u64::from_le_bytes(tail));
    hash
}
