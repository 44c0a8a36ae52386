//! The leader's queue of submitted commands: each stays here until it is decided (then its
//! ticket is reported committed) or the replica stops leading (then it is reported dropped).
//! Keeping the bytes is what lets the leader "keep going until its own value is decided": a
//! command displaced by an adopted value is simply proposed again.
//!
//! Payload bytes live in a ring of `BYTES`; a payload never wraps (the end of the ring is skipped
//! when it is too short), so it is always one slice.
//!
//! # Invariants
//! - Entries are in submission order; sequences increase by one from `head` to the tail.
//! - Payload allocations follow the same order in the byte ring: the used bytes run from the
//!   head entry's start to the end of the tail entry (with at most one skipped gap at the end).
//! - `count <= REQUESTS_MAX`; `proposed <= count`.

/// Most commands waiting in the queue.
pub const REQUESTS_MAX: usize = 64;

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    sequence: u64,
    start: u32,
    len: u32,
    decided: bool,
}

/// The queue, with payload storage of `BYTES`.
pub(crate) struct RequestQueue<const BYTES: usize> {
    bytes: [u8; BYTES],
    entries: [Entry; REQUESTS_MAX],
    head: usize,
    count: usize,
    /// Entries (from the head) already proposed in the current tenure.
    proposed: usize,
    next_sequence: u64,
}

impl<const BYTES: usize> RequestQueue<BYTES> {
    pub const fn new() -> Self {
        RequestQueue {
            bytes: [0; BYTES],
            entries: [Entry {
                sequence: 0,
                start: 0,
                len: 0,
                decided: false,
            }; REQUESTS_MAX],
            head: 0,
            count: 0,
            proposed: 0,
            next_sequence: 1,
        }
    }

    /// Numbers the next command `first`; only before anything was queued.
    pub fn start_sequences_at(&mut self, first: u64) {
        assert!(
            self.count == 0 && self.next_sequence == 1,
            "sequences already in use"
        );
        assert!((1..crate::slot::SEQUENCE_LIMIT).contains(&first));
        self.next_sequence = first;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    fn index(&self, offset: usize) -> usize {
        (self.head + offset) % REQUESTS_MAX
    }

    /// Where a payload of `len` bytes (at least 1) can go, if anywhere.
    fn allocate(&self, len: usize) -> Option<usize> {
        assert!(len >= 1);
        if self.count == 0 {
            return (len <= BYTES).then_some(0);
        }
        let first = self.entries[self.head].start as usize;
        let tail = self.entries[self.index(self.count - 1)];
        let end = (tail.start + tail.len) as usize;
        let wrapped = (tail.start as usize) < first;
        if wrapped {
            // Used: [first, BYTES) and [0, end). Free: [end, first).
            return (end + len <= first).then_some(end);
        }
        // Used: [first, end). Free: [end, BYTES), then [0, first).
        if end + len <= BYTES {
            Some(end)
        } else {
            (len <= first).then_some(0)
        }
    }

    /// Queues a non-empty command; returns its sequence (the ticket), or `None` when full.
    pub fn push(&mut self, payload: &[u8]) -> Option<u64> {
        if self.count == REQUESTS_MAX || payload.is_empty() {
            return None;
        }
        let start = self.allocate(payload.len())?;
        self.bytes[start..start + payload.len()].copy_from_slice(payload);
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let index = self.index(self.count);
        self.entries[index] = Entry {
            sequence,
            start: start as u32,
            len: payload.len() as u32,
            decided: false,
        };
        self.count += 1;
        assert!(self.count <= REQUESTS_MAX);
        Some(sequence)
    }

    /// The next command to propose in this tenure, with its sequence.
    pub fn next_to_propose(&self) -> Option<(u64, &[u8])> {
        let mut offset = self.proposed;
        while offset < self.count {
            let entry = self.entries[self.index(offset)];
            if !entry.decided {
                let payload = &self.bytes[entry.start as usize..][..entry.len as usize];
                return Some((entry.sequence, payload));
            }
            offset += 1;
        }
        None
    }

    /// The command returned by `next_to_propose` was written to the log.
    pub fn mark_proposed(&mut self, sequence: u64) {
        while self.proposed < self.count {
            let entry = self.entries[self.index(self.proposed)];
            self.proposed += 1;
            if entry.sequence == sequence {
                return;
            }
            assert!(entry.decided, "proposals follow queue order");
        }
        panic!("proposed a command that is not queued");
    }

    /// A new tenure proposes everything still undecided again.
    pub fn restart_proposals(&mut self) {
        self.proposed = 0;
    }

    /// Where the command `sequence` is queued, decided or not.
    #[inline]
    fn find(&self, sequence: u64) -> Option<usize> {
        // The head's sequence numbers the rest: no search.
        let offset = sequence.checked_sub(self.entries[self.head].sequence)?;
        if offset >= self.count as u64 {
            return None;
        }
        let index = self.index(offset as usize);
        assert_eq!(self.entries[index].sequence, sequence);
        Some(index)
    }

    /// Where the undecided command `sequence` waits (an index for `payload_at` and
    /// `decide_at`); `None` when it is not queued (any more) or was decided.
    #[inline]
    pub fn undecided(&self, sequence: u64) -> Option<usize> {
        self.find(sequence)
            .filter(|&index| !self.entries[index].decided)
    }

    /// The payload of the entry at `index` (from `undecided`).
    #[inline]
    pub fn payload_at(&self, index: usize) -> &[u8] {
        let entry = self.entries[index];
        &self.bytes[entry.start as usize..][..entry.len as usize]
    }

    /// Decides the entry at `index` (from `undecided`) and removes decided ones from the head.
    #[inline]
    pub fn decide_at(&mut self, index: usize) {
        self.set_decided(index);
        self.pop_decided();
    }

    #[inline]
    fn set_decided(&mut self, index: usize) {
        assert!(!self.entries[index].decided, "a command is decided once");
        self.entries[index].decided = true;
    }

    /// The command `sequence` was decided; returns false when it is not queued (anymore).
    pub fn mark_decided(&mut self, sequence: u64) -> bool {
        let Some(index) = self.find(sequence) else {
            return false;
        };
        self.set_decided(index);
        true
    }

    /// Removes decided commands from the head.
    pub fn pop_decided(&mut self) {
        while self.count > 0 && self.entries[self.head].decided {
            self.head = (self.head + 1) % REQUESTS_MAX;
            self.count -= 1;
            self.proposed = self.proposed.saturating_sub(1);
        }
        if self.count == 0 {
            self.head = 0;
            self.proposed = 0;
        }
        assert!(self.proposed <= self.count);
    }

    /// Empties the queue, handing every undecided ticket to `dropped`.
    pub fn drain(&mut self, mut dropped: impl FnMut(u64)) {
        for offset in 0..self.count {
            let entry = self.entries[self.index(offset)];
            if !entry.decided {
                dropped(entry.sequence);
            }
        }
        self.head = 0;
        self.count = 0;
        self.proposed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_with_out_of_order_decisions() {
        let mut q = RequestQueue::<64>::new();
        let a = q.push(&[1; 20]).unwrap();
        let b = q.push(&[2; 20]).unwrap();
        let c = q.push(&[3; 20]).unwrap();
        assert!(
            q.push(&[4; 20]).is_none(),
            "64 bytes hold three 20-byte payloads"
        );
        assert_eq!(q.next_to_propose().unwrap().0, a);
        q.mark_proposed(a);
        q.mark_proposed(b);
        assert!(q.mark_decided(b));
        q.pop_decided();
        assert_eq!(q.len(), 3, "b waits behind a");
        q.restart_proposals();
        assert_eq!(q.next_to_propose().unwrap().0, a);
        assert!(q.mark_decided(a));
        q.pop_decided();
        assert_eq!(q.len(), 1);
        assert_eq!(q.next_to_propose(), Some((c, &[3u8; 20][..])));
        // Space freed at the front is reused after the tail wraps.
        let d = q.push(&[5; 30]).unwrap();
        assert_eq!(d, c + 1);
        let mut dropped = [0u64; 4];
        let mut n = 0;
        q.drain(|t| {
            dropped[n] = t;
            n += 1;
        });
        assert_eq!(&dropped[..n], &[c, d]);
        assert!(!q.mark_decided(c));
    }

    #[test]
    fn an_undecided_command_is_found_by_its_sequence_and_decided_in_place() {
        let mut q = RequestQueue::<64>::new();
        q.start_sequences_at(10);
        let a = q.push(&[1; 8]).unwrap();
        let b = q.push(&[2; 8]).unwrap();
        assert_eq!((a, b), (10, 11));
        assert_eq!(q.undecided(9), None, "before the head");
        assert_eq!(q.undecided(12), None, "past the tail");
        let at_b = q.undecided(b).unwrap();
        assert_eq!(q.payload_at(at_b), &[2; 8]);
        q.decide_at(at_b);
        assert_eq!(q.undecided(b), None, "decided");
        assert_eq!(q.len(), 2, "b waits behind a");
        let at_a = q.undecided(a).unwrap();
        assert_eq!(q.payload_at(at_a), &[1; 8]);
        q.decide_at(at_a);
        assert_eq!(q.len(), 0, "both left from the head");
        assert_eq!(q.undecided(a), None);
        assert!(!q.mark_decided(b), "no longer queued");
    }

    #[test]
    fn random_fill_and_free_keeps_payloads_intact() {
        let mut q = RequestQueue::<200>::new();
        let mut seed = 7u64;
        let mut live: [(u64, u8, usize); REQUESTS_MAX] = [(0, 0, 0); REQUESTS_MAX];
        let mut n = 0;
        for round in 0..2000u32 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = 1 + (seed >> 40) as usize % 50;
            let fill = round as u8;
            if let Some(seq) = q.push(&[fill; 64][..len]) {
                live[n] = (seq, fill, len);
                n += 1;
            }
            if seed & 3 == 0 && n > 0 {
                // Decide the oldest; check every remaining payload.
                assert!(q.mark_decided(live[0].0));
                q.pop_decided();
                live.copy_within(1..n, 0);
                n -= 1;
            }
            q.restart_proposals();
            if let Some((seq, payload)) = q.next_to_propose() {
                assert_eq!(seq, live[0].0);
                assert_eq!(payload.len(), live[0].2);
                assert!(payload.iter().all(|&b| b == live[0].1));
            }
        }
    }
}
