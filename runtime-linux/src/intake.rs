//! The in-process way into a replica: threads of the replica's own process (the `mu serve`
//! network front end) hand commands to the replication thread and take back the whole reply,
//! where the shared-memory client port ([`crate::port`]) carries a client process's commands
//! and only an answer word.
//!
//! Two byte rings of length-prefixed frames, each behind a mutex that only a frame copy holds:
//! requests (token, command) from the front end, replies (token, outcome, position, reply
//! bytes) back. The replication thread looks at a ring only when its counter says a frame
//! waits, so an idle intake costs a leader's poll one atomic load. Nothing allocates after
//! [`Intake::new`].
//!
//! # Invariants
//! - Every request taken (`pop_request`) is answered exactly once (committed, dropped, or refused at once), in
//!   a reply frame with the request's token.
//! - The replication thread takes a request only while fewer than [`REPLIES`] replies are owed
//!   or waiting to be read, and the reply ring holds [`REPLIES`] frames of the largest reply:
//!   pushing a reply never fails, so a slow front end can delay new requests but never the
//!   replication plane.
//! - `waiting` counts the frames in a ring; a frame is whole before it is counted.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;

use crate::bell::Bell;
use crate::node::ENTRY_MAX;
use crate::port::Outcome;

/// Replies owed or unread at most: requests beyond wait in the request ring.
pub const REPLIES: usize = 64;
/// Requests the request ring holds at most (each up to [`ENTRY_MAX`] bytes).
pub const REQUESTS: usize = 64;
const REQUEST_HEADER: usize = 8;
const REPLY_HEADER: usize = 8 + 1 + 8;
const LEN: usize = 4;

/// A reply, as the front end takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The request's token.
    pub token: u64,
    /// What happened.
    pub outcome: Outcome,
    /// The position it was decided at, or for `NotLeader` who this replica thinks leads plus
    /// one (0: nobody).
    pub position: u64,
    /// Bytes of the application's reply (in the buffer given to [`Intake::take_reply`]).
    pub len: usize,
}

/// A byte ring of frames `[len u32][bytes]`.
struct Frames {
    buf: Box<[u8]>,
    head: usize,
    used: usize,
}

impl Frames {
    fn new(bytes: usize) -> Frames {
        Frames {
            buf: vec![0; bytes].into_boxed_slice(),
            head: 0,
            used: 0,
        }
    }

    fn room(&self) -> usize {
        self.buf.len() - self.used
    }

    fn write_at(&mut self, at: usize, bytes: &[u8]) {
        let cap = self.buf.len();
        let start = at % cap;
        let first = bytes.len().min(cap - start);
        self.buf[start..start + first].copy_from_slice(&bytes[..first]);
        self.buf[..bytes.len() - first].copy_from_slice(&bytes[first..]);
    }

    fn read_at(&self, at: usize, out: &mut [u8]) {
        let cap = self.buf.len();
        let start = at % cap;
        let first = out.len().min(cap - start);
        out[..first].copy_from_slice(&self.buf[start..start + first]);
        let rest = out.len() - first;
        out[first..].copy_from_slice(&self.buf[..rest]);
    }

    /// Appends one frame made of `parts`; false when it does not fit.
    fn push(&mut self, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if LEN + len > self.room() {
            return false;
        }
        let mut at = self.head + self.used;
        self.write_at(at, &(len as u32).to_le_bytes());
        at += LEN;
        for part in parts {
            self.write_at(at, part);
            at += part.len();
        }
        self.used += LEN + len;
        true
    }

    /// The length of the oldest frame.
    fn front_len(&self) -> Option<usize> {
        if self.used == 0 {
            return None;
        }
        let mut len = [0u8; LEN];
        self.read_at(self.head, &mut len);
        let len = u32::from_le_bytes(len) as usize;
        assert!(LEN + len <= self.used, "frames are whole");
        Some(len)
    }

    /// Copies the oldest frame's bytes `[skip, skip + out.len())` into `out`.
    fn peek(&self, skip: usize, out: &mut [u8]) {
        self.read_at(self.head + LEN + skip, out);
    }

    fn pop(&mut self) {
        let len = self.front_len().expect("a frame to pop");
        self.head = (self.head + LEN + len) % self.buf.len();
        self.used -= LEN + len;
    }
}

/// Both rings, shared by the front end and the replication thread of one replica.
pub struct Intake {
    requests: Mutex<Frames>,
    replies: Mutex<Frames>,
    requests_waiting: AtomicU64,
    replies_waiting: AtomicU64,
    /// Requests taken whose reply has not been read yet.
    owed: AtomicU64,
}

impl Intake {
    /// Empty rings, allocated once here.
    pub fn new() -> Intake {
        Intake {
            requests: Mutex::new(Frames::new(REQUESTS * (LEN + REQUEST_HEADER + ENTRY_MAX))),
            replies: Mutex::new(Frames::new(REPLIES * (LEN + REPLY_HEADER + ENTRY_MAX))),
            requests_waiting: AtomicU64::new(0),
            replies_waiting: AtomicU64::new(0),
            owed: AtomicU64::new(0),
        }
    }

    // ---- front end ---------------------------------------------------------------------------

    /// Queues `command` under `token` and rings `bell` (the replication thread's); false when
    /// the ring is full or the command longer than [`ENTRY_MAX`].
    pub fn push_request(&self, token: u64, command: &[u8], bell: Bell<'_>) -> bool {
        if command.len() > ENTRY_MAX {
            return false;
        }
        let pushed = lock(&self.requests).push(&[&token.to_le_bytes(), command]);
        if pushed {
            self.requests_waiting.fetch_add(1, SeqCst);
            bell.ring();
        }
        pushed
    }

    /// The oldest reply, its bytes copied into `buf` (which holds [`ENTRY_MAX`] bytes).
    pub fn take_reply(&self, buf: &mut [u8]) -> Option<Reply> {
        if self.replies_waiting.load(SeqCst) == 0 {
            return None;
        }
        let mut ring = lock(&self.replies);
        let len = ring.front_len()?;
        let mut header = [0u8; REPLY_HEADER];
        ring.peek(0, &mut header);
        let bytes = len - REPLY_HEADER;
        assert!(bytes <= buf.len(), "a reply fits ENTRY_MAX bytes");
        ring.peek(REPLY_HEADER, &mut buf[..bytes]);
        ring.pop();
        drop(ring);
        self.replies_waiting.fetch_sub(1, SeqCst);
        self.owed.fetch_sub(1, SeqCst);
        let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
        Some(Reply {
            token: word(0),
            outcome: Outcome::from_code(header[8] as u64).unwrap_or(Outcome::Rejected),
            position: word(9),
            len: bytes,
        })
    }

    // ---- replication thread ------------------------------------------------------------------

    /// Copies the oldest request into `buf`, without taking it, if a reply to it can be owed;
    /// returns its token and length. [`Intake::pop_request`] takes it; the caller then answers
    /// it exactly once with [`Intake::push_reply`].
    pub fn peek_request(&self, buf: &mut [u8]) -> Option<(u64, usize)> {
        if self.requests_waiting.load(SeqCst) == 0 || self.owed.load(SeqCst) >= REPLIES as u64 {
            return None;
        }
        let ring = lock(&self.requests);
        let len = ring.front_len()?;
        let mut token = [0u8; REQUEST_HEADER];
        ring.peek(0, &mut token);
        let bytes = len - REQUEST_HEADER;
        assert!(bytes <= buf.len(), "a request fits ENTRY_MAX bytes");
        ring.peek(REQUEST_HEADER, &mut buf[..bytes]);
        Some((u64::from_le_bytes(token), bytes))
    }

    /// Takes the request [`Intake::peek_request`] returned: a reply to it is owed from now on.
    pub fn pop_request(&self) {
        lock(&self.requests).pop();
        self.requests_waiting.fetch_sub(1, SeqCst);
        self.owed.fetch_add(1, SeqCst);
    }

    /// Answers a request taken earlier. Never fails (see the invariants).
    pub fn push_reply(&self, token: u64, outcome: Outcome, position: u64, reply: &[u8]) {
        assert!(reply.len() <= ENTRY_MAX);
        let mut header = [0u8; REPLY_HEADER];
        header[..8].copy_from_slice(&token.to_le_bytes());
        header[8] = outcome.code() as u8;
        header[9..].copy_from_slice(&position.to_le_bytes());
        let pushed = lock(&self.replies).push(&[&header, reply]);
        assert!(pushed, "the reply ring holds every reply owed");
        self.replies_waiting.fetch_add(1, SeqCst);
    }

    /// True when a reply waits to be taken (the front end's cheap check).
    pub fn replies_waiting(&self) -> bool {
        self.replies_waiting.load(SeqCst) != 0
    }
}

impl Default for Intake {
    fn default() -> Intake {
        Intake::new()
    }
}

/// A ring's lock; a thread that panicked while holding it left it whole (every frame operation
/// completes before the lock is released), so its poison is ignored.
fn lock(ring: &Mutex<Frames>) -> std::sync::MutexGuard<'_, Frames> {
    ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn bell_words() -> (AtomicU32, AtomicU32) {
        (AtomicU32::new(0), AtomicU32::new(0))
    }

    #[test]
    fn frames_wrap_around_the_ring_whole() {
        let mut frames = Frames::new(37);
        let mut out = [0u8; 32];
        for round in 0..200u32 {
            let bytes: Vec<u8> = (0..(round % 20) as u8).map(|b| b ^ round as u8).collect();
            assert!(frames.push(&[&bytes[..bytes.len() / 2], &bytes[bytes.len() / 2..]]));
            let len = frames.front_len().unwrap();
            assert_eq!(len, bytes.len());
            frames.peek(0, &mut out[..len]);
            assert_eq!(&out[..len], &bytes[..], "round {round}");
            frames.pop();
            assert_eq!(frames.used, 0);
        }
        assert!(!frames.push(&[&[0u8; 34]]), "a frame larger than the room");
    }

    #[test]
    fn requests_and_replies_keep_their_tokens_and_bytes() {
        let intake = Intake::new();
        let (count, sleepers) = bell_words();
        let bell = Bell::new(&count, &sleepers);
        for token in 0..10u64 {
            assert!(intake.push_request(token, &[token as u8; 100], bell));
        }
        assert_eq!(count.load(SeqCst), 10, "every request rings");
        let mut buf = vec![0u8; ENTRY_MAX];
        for token in 0..10u64 {
            assert_eq!(intake.peek_request(&mut buf), Some((token, 100)));
            assert_eq!(buf[99], token as u8);
            intake.pop_request();
            intake.push_reply(token, Outcome::Committed, token * 3, &[7; 5]);
        }
        assert_eq!(intake.peek_request(&mut buf), None);
        for token in 0..10u64 {
            let reply = intake.take_reply(&mut buf).unwrap();
            assert_eq!(reply.token, token);
            assert_eq!(reply.outcome, Outcome::Committed);
            assert_eq!(reply.position, token * 3);
            assert_eq!(&buf[..reply.len], &[7; 5]);
        }
        assert_eq!(intake.take_reply(&mut buf), None);
    }

    #[test]
    fn an_unread_reply_ring_holds_requests_back_not_replies() {
        let intake = Intake::new();
        let (count, sleepers) = bell_words();
        let bell = Bell::new(&count, &sleepers);
        let mut buf = vec![0u8; ENTRY_MAX];
        let big = vec![1u8; ENTRY_MAX];
        for token in 0..REPLIES as u64 + 1 {
            assert!(intake.push_request(token, b"x", bell));
        }
        for token in 0..REPLIES as u64 {
            assert_eq!(intake.peek_request(&mut buf), Some((token, 1)));
            intake.pop_request();
            intake.push_reply(token, Outcome::Committed, 0, &big);
        }
        assert_eq!(
            intake.peek_request(&mut buf),
            None,
            "no request is taken while its reply might not fit"
        );
        assert_eq!(intake.take_reply(&mut buf).unwrap().len, ENTRY_MAX);
        assert_eq!(intake.peek_request(&mut buf), Some((REPLIES as u64, 1)));
    }
}
