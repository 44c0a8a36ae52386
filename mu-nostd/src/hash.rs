//! The 64-bit hash behind log chains, record checks and the configuration hash: short inputs of
//! a few words. Payloads are hashed with XXH3 (`slot::body_digest`).
//!
//! Not cryptographic: it detects torn writes, half-read slots and stale data, where any mix of
//! old and new words must change the result. Every word goes through a multiply and a
//! xor-shift, so one differing bit anywhere changes the whole digest (the finaliser is
//! MurmurHash3's `fmix64`).
//!
//! # Invariants
//! - Deterministic and identical on every target (little-endian words, explicit widths).
//! - Streaming a byte string in pieces gives the same digest as hashing it whole only when the
//!   pieces are 8-byte aligned; callers feed whole words and one final tail.

const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// A running hash over 64-bit words.
#[derive(Clone, Copy, Debug)]
pub struct Hasher {
    state: u64,
}

impl Hasher {
    /// Starts a hash in a domain, so that equal bytes in different roles hash differently.
    pub const fn new(domain: u64) -> Hasher {
        Hasher {
            state: domain ^ 0x6A09_E667_F3BC_C908,
        }
    }

    /// Mixes in one word.
    #[inline]
    pub const fn word(mut self, word: u64) -> Hasher {
        self.state = (self.state ^ word).wrapping_mul(MULTIPLIER);
        self.state ^= self.state >> 29;
        self
    }

    /// Mixes in bytes: whole little-endian words, then the tail padded with zeros and its length.
    pub fn bytes(mut self, bytes: &[u8]) -> Hasher {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self = self.word(u64::from_le_bytes(word));
        }
        let tail = chunks.remainder();
        let mut word = [0u8; 8];
        word[..tail.len()].copy_from_slice(tail);
        self.word(u64::from_le_bytes(word)).word(bytes.len() as u64)
    }

    /// The digest.
    pub const fn finish(self) -> u64 {
        let mut h = self.state;
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^= h >> 33;
        h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        h ^= h >> 33;
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bit_matters() {
        let base = [7u8; 40];
        let digest = Hasher::new(1).bytes(&base).finish();
        for byte in 0..base.len() {
            for bit in 0..8 {
                let mut flipped = base;
                flipped[byte] ^= 1 << bit;
                assert_ne!(Hasher::new(1).bytes(&flipped).finish(), digest);
            }
        }
    }

    #[test]
    fn domain_and_length_matter() {
        assert_ne!(
            Hasher::new(1).bytes(b"ab").finish(),
            Hasher::new(2).bytes(b"ab").finish()
        );
        assert_ne!(
            Hasher::new(1).bytes(b"ab").finish(),
            Hasher::new(1).bytes(b"ab\0").finish()
        );
    }
}
