//! The work-request ring: how one replica's plane posts one-sided writes and reads to one peer
//! through the shared window, and how it learns that they completed.
//!
//! The window is plain shared memory: nothing in it orders, completes or refuses anything. A ring
//! per (sender, receiver, plane) carries work requests to the receiver's [`crate::responder`],
//! which plays the part of the receiver's RDMA NIC: it executes the requests in order, checks the
//! log-area permission under the receiver's [`crate::permissions::Permissions`], and reports each
//! outcome back in the ring.
//!
//! ```text
//! ring header (128 B)   word at 0:  posted = (generation, count)   written by the sender only
//!                       word at 64: served = (generation, count)   written by the receiver only
//! entries[RING_DEPTH]   32 B each:  tag, kind, local offset, remote offset, length (sender)
//!                                   status                                        (receiver)
//! ```
//!
//! A count word packs a 15-bit generation and a 16-bit count of requests. Request `c` of a
//! generation lives in entry `c % RING_DEPTH` and is tagged with its own count word, written last
//! (and made invalid first when the sender reuses an entry), so a receiver that reads an entry
//! while the sender rewrites it sees the tag change and leaves it for later (a seqlock).
//! `reconnect` starts a new generation: the receiver drops what is left of the old one.
//!
//! # Invariants
//! - The sender never has more than `RING_DEPTH` requests of its generation outstanding, so it
//!   overwrites an entry only after the receiver served it, or in a new generation.
//! - The receiver serves requests of one generation in order, each once; it writes an entry's
//!   status before it advances `served` past it.
//! - Everything a peer wrote is validated before use: a malformed entry completes `Failed`, a
//!   count word out of range is ignored, and nothing in a ring can make a replica panic.

use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::words::Words;

// The ring's geometry lives with the window layout, which places the rings.
pub use window_layout::ring::{ENTRY_BYTES, HEADER_BYTES, RING_BYTES, RING_DEPTH};

const POSTED_AT: usize = 0;
const SERVED_AT: usize = 64;
const TAG_AT: usize = 0;
const KIND_AT: usize = 4;
const LOCAL_AT: usize = 8;
const REMOTE_AT: usize = 12;
const LEN_AT: usize = 16;
const STATUS_AT: usize = 20;

/// Generations wrap at this bound, so no count word ever equals [`TAG_INVALID`].
const GENERATIONS: u32 = 1 << 15;
/// The tag of an entry being rewritten.
const TAG_INVALID: u32 = u32::MAX;

const _: () = assert!(RING_DEPTH.is_power_of_two() && (1 << 16) % RING_DEPTH == 0);
const _: () = assert!(RING_BYTES % 64 == 0);
// The fields fit the geometry the window layout reserves.
const _: () = assert!(STATUS_AT + 4 <= ENTRY_BYTES as usize);
const _: () = assert!(SERVED_AT + 8 <= HEADER_BYTES as usize);

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Copy the sender's bytes into the receiver's region.
    Write = 1,
    /// Copy the receiver's bytes into the sender's region.
    Read = 2,
}

/// How a request ended, as the receiver reports it.
pub const STATUS_OK: u32 = 1;
/// Refused by the receiver's log permission.
pub const STATUS_DENIED: u32 = 2;
/// Malformed, or flushed after a refusal.
pub const STATUS_FAILED: u32 = 3;

/// A generation and a request count, packed into one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count {
    /// The connection's generation, `0..1 << 15`.
    pub generation: u16,
    /// Requests of this generation, modulo `1 << 16`.
    pub count: u16,
}

impl Count {
    /// Packs the word.
    pub fn word(self) -> u32 {
        assert!(u32::from(self.generation) < GENERATIONS);
        (u32::from(self.generation) << 16) | u32::from(self.count)
    }

    /// Unpacks a word; `None` for a value no sender writes.
    pub fn from_word(word: u32) -> Option<Count> {
        ((word >> 16) < GENERATIONS).then_some(Count {
            generation: (word >> 16) as u16,
            count: word as u16,
        })
    }

    /// The generation after `generation`.
    pub fn next_generation(generation: u16) -> u16 {
        ((u32::from(generation) + 1) % GENERATIONS) as u16
    }
}

/// Requests between `from` and `to` (a count that went ahead of another), if plausible.
pub fn distance(from: u16, to: u16) -> Option<u32> {
    let d = u32::from(to.wrapping_sub(from));
    (d <= RING_DEPTH).then_some(d)
}

/// A request as the sender wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Kind code as written ([`Kind`] as `u32`, unchecked).
    pub kind: u32,
    /// Offset in the sender's region.
    pub local: u32,
    /// Offset in the receiver's region.
    pub remote: u32,
    /// Bytes.
    pub len: u32,
}

/// One ring in the window.
#[derive(Clone, Copy)]
pub struct Ring<'w> {
    window: Words<'w>,
    base: usize,
}

impl<'w> Ring<'w> {
    /// The ring at byte `base` of `window`.
    pub fn new(window: Words<'w>, base: u32) -> Ring<'w> {
        let base = base as usize;
        assert!(base % 64 == 0);
        assert!(window.fits(base, RING_BYTES as usize));
        Ring { window, base }
    }

    fn entry(&self, count: u16, field: usize) -> usize {
        self.base + HEADER_BYTES as usize + (u32::from(count) % RING_DEPTH) as usize * 32 + field
    }

    /// The sender's count word.
    pub fn posted(&self) -> Option<Count> {
        Count::from_word(self.window.word(self.base + POSTED_AT).load(Acquire))
    }

    /// The receiver's count word.
    pub fn served(&self) -> Option<Count> {
        Count::from_word(self.window.word(self.base + SERVED_AT).load(Acquire))
    }

    /// Sender: publishes `posted` (after the entries it covers are written).
    pub fn set_posted(&self, posted: Count) {
        self.window
            .word(self.base + POSTED_AT)
            .store(posted.word(), Release);
    }

    /// Receiver: publishes `served` (after the statuses it covers are written).
    pub fn set_served(&self, served: Count) {
        self.window
            .word(self.base + SERVED_AT)
            .store(served.word(), Release);
    }

    /// Sender: writes the request tagged `tag` into its entry.
    pub fn write_entry(&self, tag: Count, request: Request) {
        let word = |field| self.window.word(self.entry(tag.count, field));
        word(TAG_AT).store(TAG_INVALID, Relaxed);
        core::sync::atomic::fence(Release);
        word(KIND_AT).store(request.kind, Relaxed);
        word(LOCAL_AT).store(request.local, Relaxed);
        word(REMOTE_AT).store(request.remote, Relaxed);
        word(LEN_AT).store(request.len, Relaxed);
        word(TAG_AT).store(tag.word(), Release);
    }

    /// Receiver: the request tagged `tag`, or `None` while its entry holds something else (not
    /// written yet, or being rewritten).
    pub fn read_entry(&self, tag: Count) -> Option<Request> {
        let word = |field| self.window.word(self.entry(tag.count, field));
        if word(TAG_AT).load(Acquire) != tag.word() {
            return None;
        }
        let request = Request {
            kind: word(KIND_AT).load(Relaxed),
            local: word(LOCAL_AT).load(Relaxed),
            remote: word(REMOTE_AT).load(Relaxed),
            len: word(LEN_AT).load(Relaxed),
        };
        core::sync::atomic::fence(Acquire);
        (word(TAG_AT).load(Relaxed) == tag.word()).then_some(request)
    }

    /// Receiver: the outcome of request `count`.
    pub fn set_status(&self, count: u16, status: u32) {
        self.window
            .word(self.entry(count, STATUS_AT))
            .store(status, Relaxed);
    }

    /// Sender: the outcome of request `count` (valid once `served` is past it).
    pub fn status(&self, count: u16) -> u32 {
        self.window.word(self.entry(count, STATUS_AT)).load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicU32;

    #[test]
    fn count_words_round_trip_and_never_look_invalid() {
        for generation in [0u16, 1, 0x7FFF] {
            for count in [0u16, 1, 0xFFFF] {
                let c = Count { generation, count };
                assert_ne!(c.word(), TAG_INVALID);
                assert_eq!(Count::from_word(c.word()), Some(c));
            }
        }
        assert_eq!(Count::from_word(TAG_INVALID), None);
        assert_eq!(Count::next_generation(0x7FFF), 0);
        assert_eq!(distance(0xFFF0, 0x0004), Some(20));
        assert_eq!(distance(5, 4), None);
        assert_eq!(distance(0, RING_DEPTH as u16), Some(RING_DEPTH));
    }

    #[test]
    fn an_entry_reads_back_only_under_its_own_tag() {
        let backing: [AtomicU32; RING_BYTES as usize / 4] =
            core::array::from_fn(|_| AtomicU32::new(0));
        let ring = Ring::new(Words::new(&backing), 0);
        let tag = Count {
            generation: 3,
            count: 33,
        };
        let request = Request {
            kind: 1,
            local: 64,
            remote: 128,
            len: 40,
        };
        assert_eq!(ring.read_entry(tag), None);
        ring.write_entry(tag, request);
        assert_eq!(ring.read_entry(tag), Some(request));
        // Same entry (33 % 32 == 1), other generation: not this request.
        assert_eq!(
            ring.read_entry(Count {
                generation: 4,
                count: 33
            }),
            None
        );
        assert_eq!(
            ring.read_entry(Count {
                generation: 3,
                count: 1
            }),
            None
        );
    }
}
