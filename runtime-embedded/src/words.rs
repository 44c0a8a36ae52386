//! Byte access to memory that other CPUs (and other machines) touch at the same time: a slice of
//! `AtomicU32` words, read and written as little-endian bytes.
//!
//! A shared window is written by several VMs at once, so plain `&mut [u8]` access would be a data
//! race. Every access here is an atomic word access; a store that covers only part of a word
//! merges its bytes with a compare-and-swap, so it never clobbers the neighbouring bytes another
//! writer owns. Bytes of one copy may become visible in any order (the Fabric contract, rule 4,
//! allows it; slots and records carry checksums).
//!
//! # Invariants
//! - Byte `i` of the memory is byte `i % 4` of word `i / 4` in little-endian order, so the bytes
//!   read the same as a plain byte array on the (little-endian) targets, and from the host.
//! - Every access is bounds-checked by the caller ([`Words::fits`]); an access out of bounds is a
//!   bug and panics.

use core::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// Bytes moved per step of [`Words::copy`]: a stack buffer, so a copy never allocates.
const COPY_CHUNK_BYTES: usize = 64;

/// Memory shared with other CPUs, addressed in bytes.
#[derive(Clone, Copy)]
pub struct Words<'m> {
    words: &'m [AtomicU32],
}

impl<'m> Words<'m> {
    /// Wraps `words`.
    pub const fn new(words: &'m [AtomicU32]) -> Words<'m> {
        Words { words }
    }

    /// Size in bytes.
    pub const fn len(&self) -> usize {
        self.words.len() * 4
    }

    /// True when the memory has no bytes.
    pub const fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// True when `offset..offset + len` lies inside the memory.
    pub fn fits(&self, offset: usize, len: usize) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.len())
    }

    /// The word at byte `offset`, which must be 4-byte aligned.
    pub fn word(&self, offset: usize) -> &'m AtomicU32 {
        assert!(offset % 4 == 0, "unaligned word offset {offset}");
        &self.words[offset / 4]
    }

    /// Copies bytes at `offset` into `buf`.
    pub fn load(&self, offset: usize, buf: &mut [u8]) {
        assert!(self.fits(offset, buf.len()));
        let mut at = offset;
        let mut done = 0;
        while done < buf.len() {
            let word = self.words[at / 4].load(Relaxed).to_le_bytes();
            let first = at % 4;
            let take = (4 - first).min(buf.len() - done);
            buf[done..done + take].copy_from_slice(&word[first..first + take]);
            done += take;
            at += take;
        }
        assert!(done == buf.len());
    }

    /// Writes `bytes` at `offset`.
    pub fn store(&self, offset: usize, bytes: &[u8]) {
        assert!(self.fits(offset, bytes.len()));
        let mut at = offset;
        let mut done = 0;
        while done < bytes.len() {
            let first = at % 4;
            let take = (4 - first).min(bytes.len() - done);
            let word = &self.words[at / 4];
            if take == 4 {
                let mut whole = [0u8; 4];
                whole.copy_from_slice(&bytes[done..done + 4]);
                word.store(u32::from_le_bytes(whole), Relaxed);
            } else {
                merge(word, first, &bytes[done..done + take]);
            }
            done += take;
            at += take;
        }
        assert!(done == bytes.len());
    }

    /// Copies `len` bytes from `from` at `from_offset` to `to` at `to_offset`.
    pub fn copy(from: Words<'_>, from_offset: usize, to: Words<'_>, to_offset: usize, len: usize) {
        assert!(from.fits(from_offset, len));
        assert!(to.fits(to_offset, len));
        let mut chunk = [0u8; COPY_CHUNK_BYTES];
        let mut done = 0;
        while done < len {
            let take = COPY_CHUNK_BYTES.min(len - done);
            from.load(from_offset + done, &mut chunk[..take]);
            to.store(to_offset + done, &chunk[..take]);
            done += take;
        }
    }
}

/// Replaces bytes `first..first + part.len()` of `word`, keeping the others as they are now.
fn merge(word: &AtomicU32, first: usize, part: &[u8]) {
    assert!(first + part.len() <= 4);
    assert!(!part.is_empty());
    // The closure always returns Some, so fetch_update cannot fail.
    let _ = word.fetch_update(Relaxed, Relaxed, |old| {
        let mut bytes = old.to_le_bytes();
        bytes[first..first + part.len()].copy_from_slice(part);
        Some(u32::from_le_bytes(bytes))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory<const N: usize>() -> [AtomicU32; N] {
        core::array::from_fn(|_| AtomicU32::new(0))
    }

    #[test]
    fn bytes_round_trip_at_every_alignment() {
        let backing = memory::<16>();
        let words = Words::new(&backing);
        for offset in 0..8 {
            for len in 0..20 {
                let bytes: [u8; 20] = core::array::from_fn(|i| (offset * 31 + len * 7 + i) as u8);
                words.store(offset, &bytes[..len]);
                let mut back = [0u8; 20];
                words.load(offset, &mut back[..len]);
                assert_eq!(back[..len], bytes[..len], "offset {offset} len {len}");
            }
        }
    }

    #[test]
    fn a_partial_store_keeps_the_neighbouring_bytes() {
        let backing = memory::<2>();
        let words = Words::new(&backing);
        words.store(0, &[1, 2, 3, 4, 5, 6, 7, 8]);
        words.store(3, &[0xAA, 0xBB]);
        let mut back = [0u8; 8];
        words.load(0, &mut back);
        assert_eq!(back, [1, 2, 3, 0xAA, 0xBB, 6, 7, 8]);
        assert_eq!(
            backing[0].load(Relaxed),
            u32::from_le_bytes([1, 2, 3, 0xAA])
        );
    }

    #[test]
    fn copies_between_memories_at_odd_offsets() {
        let (a, b) = (memory::<64>(), memory::<64>());
        let (from, to) = (Words::new(&a), Words::new(&b));
        let bytes: [u8; 200] = core::array::from_fn(|i| i as u8 ^ 0x5A);
        from.store(3, &bytes);
        Words::copy(from, 3, to, 17, 200);
        let mut back = [0u8; 200];
        to.load(17, &mut back);
        assert_eq!(back, bytes);
        assert!(!to.fits(17, 240));
        assert!(to.fits(0, 256));
        assert!(!to.fits(usize::MAX, 2));
    }
}
