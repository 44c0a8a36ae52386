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
/// order-sensitive digest, so that applying stays cheap next to replication and costs Mu and
/// raft-rs the same.
///
/// A command of [`LANES_FROM`] bytes or more goes through four independent lanes, a 32-byte
/// block at a time (word `i` of a block to lane `i`), which are then folded into the digest in
/// order. One serial chain (a multiply and a rotate per word) took about 600 ns for a 4 KiB
/// command here, most of a 4 KiB commit for both systems; four chains overlap, about 160 ns.
/// Shorter commands take the serial chain, which costs fewer instructions for a few words.
pub fn digest(hash: u64, data: &[u8]) -> u64 {
    let mut hash = mix(hash, data.len() as u64);
    let mut rest = data;
    if data.len() >= LANES_FROM {
        let mut lanes = [hash, hash ^ 1, hash ^ 2, hash ^ 3];
        let mut blocks = data.chunks_exact(32);
        for block in &mut blocks {
            for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
                *lane = mix(*lane, word_at(word));
            }
        }
        hash = lanes.into_iter().fold(hash, mix);
        rest = blocks.remainder();
    }
    let mut words = rest.chunks_exact(8);
    hash = (&mut words).map(word_at).fold(hash, mix);
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    mix(hash, u64::from_le_bytes(tail))
}

/// The command length from which [`digest`] uses lanes.
pub const LANES_FROM: usize = 256;

fn mix(hash: u64, word: u64) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    (hash ^ word).wrapping_mul(K).rotate_left(29)
}

fn word_at(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("chunks_exact yields 8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::{digest, LANES_FROM};

    #[test]
    fn the_digest_sees_every_byte_in_its_place() {
        for len in [100, LANES_FROM + 44] {
            sees_every_byte(len);
        }
        assert_ne!(digest(digest(7, b"a"), b"b"), digest(digest(7, b"b"), b"a"));
    }

    fn sees_every_byte(len: usize) {
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let whole = digest(7, &data);
        for at in [0, 8, 31, 32, 63, 64, 95, len - 1] {
            let mut changed = data.clone();
            changed[at] ^= 1;
            assert_ne!(digest(7, &changed), whole, "byte {at}");
        }
        let mut swapped = data.clone();
        swapped.swap(0, 8); // Words 0 and 1 of a block: different lanes.
        assert_ne!(digest(7, &swapped), whole);
        swapped = data.clone();
        swapped[..8].copy_from_slice(&data[32..40]);
        swapped[32..40].copy_from_slice(&data[..8]); // Two blocks' words of one lane.
        assert_ne!(digest(7, &swapped), whole);
        assert_ne!(digest(7, &data[..len - 1]), whole, "the length counts");
        assert_ne!(digest(8, &data), whole, "the digest before counts");
    }
}
