//! Checked records: the 16-byte words of the background area and the log header (heartbeat,
//! applied position, permission requests and acks, min proposals).
//!
//! # Invariants
//! - A record is `value: u64, check: u64` (little-endian); the check covers the value and the
//!   record's destination offset, so a torn, half-read, unwritten or misplaced record never
//!   decodes.
//! - All-zero memory never decodes as a record.

use crate::hash::Hasher;
use crate::layout::RECORD_BYTES;

const RECORD_DOMAIN: u64 = 0x5245_434F_5244; // "RECORD"

fn check(offset: u32, value: u64) -> u64 {
    Hasher::new(RECORD_DOMAIN)
        .word(offset as u64)
        .word(value)
        .finish()
}

/// Encodes `value` as the record that lives at `offset`.
pub fn encode(offset: u32, value: u64) -> [u8; RECORD_BYTES as usize] {
    let mut bytes = [0u8; RECORD_BYTES as usize];
    bytes[0..8].copy_from_slice(&value.to_le_bytes());
    bytes[8..16].copy_from_slice(&check(offset, value).to_le_bytes());
    debug_assert_eq!(decode(offset, &bytes), Some(value));
    bytes
}

/// Decodes the record that lives at `offset`; `None` when it is torn, unwritten or misplaced.
pub fn decode(offset: u32, bytes: &[u8]) -> Option<u64> {
    if bytes.len() < RECORD_BYTES as usize {
        return None;
    }
    let value = u64::from_le_bytes(bytes[0..8].try_into().ok()?);
    let stored = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    verify(offset, value, stored)
}

/// Decodes the record at `offset` from its two words, `value` and `stored` check, as `decode`.
pub fn verify(offset: u32, value: u64, stored: u64) -> Option<u64> {
    (stored == check(offset, value)).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let bytes = encode(128, 42);
        assert_eq!(decode(128, &bytes), Some(42));
        assert_eq!(decode(144, &bytes), None, "misplaced");
        assert_eq!(decode(128, &[0u8; 16]), None, "unwritten");
        let mut torn = bytes;
        torn[2] ^= 0x10;
        assert_eq!(decode(128, &torn), None, "torn");
        let newer = encode(128, 43);
        let mut mixed = bytes;
        mixed[8..].copy_from_slice(&newer[8..]);
        assert_eq!(decode(128, &mixed), None, "half old, half new");
    }
}
