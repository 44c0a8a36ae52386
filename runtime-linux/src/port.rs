//! A replica's client port: a shared-memory file through which a client process submits
//! commands to the replica and hears their outcome, and where the replica publishes its status
//! (role, applied position, state digest, when it took over as leader) and a journal of the
//! command id applied at each position. `mu demo`, the process tests and the fail-over
//! benchmark are clients.
//!
//! Rings are single-producer single-consumer: one client per port. Counters only rise; an
//! entry is written before the counter that publishes it (`Release`/`Acquire`). Each ring has a
//! doorbell: a request rings the replica's, a response the client's, so that either side may
//! rest instead of spinning.
//!
//! # Invariants
//! - `head <= tail <= head + RING` for both rings.
//! - The replica owns the file; it creates a fresh one (renamed into place) at every start, so a
//!   client re-attaches after a restart (the incarnation word tells it).
//! - Status words lie in the first page, below the request ring (checked at compile time).
//! - `TenureNs` and `FastPathNs` are written before the `Leading` and `FastPath` words they date,
//!   so a client that sees the role sees them too. Both `FastPathNs` and `ElectedNs` are written
//!   just after the poll they date, which may already have answered the tenure's first
//!   commands: they can show up a little after those responses.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

use mu_nostd::Blocked;

use crate::bell::Bell;
use crate::mem::{copy_in, copy_out, Mapping};

/// Requests the ring holds.
pub const REQUESTS: u64 = 32;
/// Responses the ring holds.
pub const RESPONSES: u64 = 256;
/// Largest command a client may send through the port.
pub const COMMAND_MAX: usize = 4096 + 64;
/// Bytes of a reply a response carries (a session's status and the store's answer word fit).
pub const REPLY_HEAD: usize = 16;
/// Positions the journal remembers (it wraps).
pub const JOURNAL_POSITIONS: u64 = 1 << 20;

const MAGIC: u64 = u64::from_le_bytes(*b"MUPORT03");
const REQUEST_BYTES: usize = 16 + COMMAND_MAX;
const RESPONSE_BYTES: usize = 64;
/// Words of a response entry: sequence, outcome, position, time, the reply's head and length.
const RESPONSE_WORDS: usize = 4 + REPLY_HEAD / 8 + 1;
const _: () = assert!(RESPONSE_WORDS * 8 <= RESPONSE_BYTES && REPLY_HEAD % 8 == 0);
const REQ_TAIL: usize = 4096;
const REQ_HEAD: usize = 4096 + 64;
const REQ_ENTRIES: usize = 4096 + 128;
const RESP_TAIL: usize = REQ_ENTRIES + REQUESTS as usize * REQUEST_BYTES;
const RESP_HEAD: usize = RESP_TAIL + 64;
const RESP_ENTRIES: usize = RESP_HEAD + 64;
const JOURNAL: usize = (RESP_ENTRIES + RESPONSES as usize * RESPONSE_BYTES).next_multiple_of(4096);
const FILE_BYTES: usize = JOURNAL + JOURNAL_POSITIONS as usize * 8;

/// Status words the replica publishes (byte offsets in the first page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Stat {
    /// The replica process id.
    Pid = 8,
    /// The replica's incarnation (rises at every restart).
    Incarnation = 16,
    /// 1 once the replica serves its port.
    Ready = 24,
    /// The tenure it leads plus one, 0 when it does not lead.
    Leading = 32,
    /// 1 while it leads on the fast path.
    FastPath = 40,
    /// Positions below this are applied.
    Applied = 48,
    /// Commands committed for clients of this port.
    Committed = 56,
    /// Nonzero when the replication plane halted.
    Halted = 64,
    /// Who it considers leader, plus one; 0 when nobody.
    LeaderView = 72,
    /// Tenures it started.
    Tenures = 80,
    /// Set by the client: write the latency histogram to the dump file, then set `Dumped`.
    DumpRequest = 88,
    /// The last dump request served.
    Dumped = 96,
    /// Seqlock for the digest pair below (odd while being written).
    DigestSeq = 104,
    /// The state digest ...
    Digest = 112,
    /// ... at this applied position.
    DigestApplied = 120,
    /// Who it considers alive (bit per id).
    Alive = 128,
    /// Commands waiting in its queue while it leads.
    Queued = 136,
    /// `CLOCK_MONOTONIC` ns at the start of the background poll in which this replica began to
    /// consider itself leader (the election happens inside the poll, and everything it causes
    /// comes later); 0 while it considers another replica, or nobody, leader.
    ElectedNs = 144,
    /// `CLOCK_MONOTONIC` ns when its replication plane began leading the tenure it leads; 0 while
    /// it does not lead.
    TenureNs = 152,
    /// `CLOCK_MONOTONIC` ns at the start of the poll in which that tenure reached the fast path
    /// (permissions from a majority, prepare done; the same poll may already commit); 0 while it
    /// is not on the fast path.
    FastPathNs = 160,
    /// 1 once this life of the replica is a voter; a restarted replica is recovering (0) until
    /// a leader admits it.
    Voter = 168,
    /// 1 while this replica installs a snapshot from another replica (state transfer).
    CatchingUp = 176,
    /// Snapshots this life of the replica installed.
    Installs = 184,
    /// The position the last installed snapshot covers: this life applied (and journaled) only
    /// the positions from there on.
    InstalledAt = 192,
    /// Bytes of the last installed snapshot.
    InstalledBytes = 200,
    /// `CLOCK_MONOTONIC` ns when the last snapshot install began and ended.
    InstallBeganNs = 208,
    /// See `InstallBeganNs`.
    InstallEndedNs = 216,
    /// The replica it serves a snapshot to, plus one; 0 while it donates none.
    DonatingTo = 224,
    /// Peers it failed at once because their fabric reported their life ended.
    Deaths = 232,
    /// Peers it declared failed by suspicion that turned out alive.
    FalseSuspicions = 240,
    /// Unchanged heartbeat reads that cost a peer one point of its score (1: the paper's).
    Patience = 248,
    /// Slots its replays stopped at because their value did not open (torn or damaged),
    /// counted once per slot.
    SlotsTorn = 256,
    /// Slots its replays stopped at because they did not chain to what it applied (an earlier
    /// leader's value awaiting a rewrite), counted once per slot.
    SlotsUnchained = 264,
    /// The position its last replay stopped at a slot it could not take, plus one; 0: none.
    BlockedAt = 272,
    /// Why: `mu_nostd::Blocked::code`.
    BlockedWhy = 280,
    /// Lap notices it took: a leader said it needs positions no log holds.
    LapNotices = 288,
    /// State transfers it started (each attempt).
    Transfers = 296,
    /// Grants of its log to a new tenure it made (permission switches).
    PermissionSwitches = 304,
    /// Peers it refuses (bit per id): they run another layout or configuration.
    RefusedPeers = 312,
}

const _: () = assert!(Stat::RefusedPeers as usize + 8 <= REQ_TAIL);

/// The doorbell the replica's replication plane rests on: a client rings it with every request
/// (and the replica's background plane with every change of tenure), so that a resting leader
/// takes a command within microseconds (see [`crate::bell`]).
const REPLICA_BELL: usize = 1024;
/// The doorbell a client may rest on: the replica rings it with every response.
const CLIENT_BELL: usize = 1088;
const _: () =
    assert!(Stat::RefusedPeers as usize + 8 <= REPLICA_BELL && CLIENT_BELL + 8 <= REQ_TAIL);

/// Outcome of a client command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Decided at `position` and applied; the state machine's reply is in the response.
    Committed,
    /// This replica does not lead; `position` carries who it thinks leads plus one (0: nobody).
    NotLeader,
    /// The replica stopped leading before the command was decided through it: unknown outcome.
    Dropped,
    /// Refused (empty, too large, halted replica).
    Rejected,
}

impl Outcome {
    /// Its number in a ring entry (never 0).
    pub fn code(self) -> u64 {
        self as u64 + 1
    }
    /// The outcome a ring entry's number names.
    pub fn from_code(code: u64) -> Option<Outcome> {
        [
            Outcome::Committed,
            Outcome::NotLeader,
            Outcome::Dropped,
            Outcome::Rejected,
        ]
        .get(code.checked_sub(1)? as usize)
        .copied()
    }
}

/// One response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// The client's sequence number of the request.
    pub seq: u64,
    /// What happened.
    pub outcome: Outcome,
    /// The position it was decided at (or the leader hint).
    pub position: u64,
    /// `CLOCK_MONOTONIC` nanoseconds when the leader applied it.
    pub commit_ns: u64,
    /// The state machine's reply, its first [`REPLY_HEAD`] bytes (zeros beyond `reply_len`).
    pub reply_head: [u8; REPLY_HEAD],
    /// The length of the whole reply, which may be longer than its head.
    pub reply_len: u64,
}

impl Response {
    /// A response carrying `reply`'s head.
    pub fn new(seq: u64, outcome: Outcome, position: u64, commit_ns: u64, reply: &[u8]) -> Self {
        let mut reply_head = [0; REPLY_HEAD];
        let n = reply.len().min(REPLY_HEAD);
        reply_head[..n].copy_from_slice(&reply[..n]);
        Response {
            seq,
            outcome,
            position,
            commit_ns,
            reply_head,
            reply_len: reply.len() as u64,
        }
    }

    /// The reply as far as the port carries it.
    pub fn reply(&self) -> &[u8] {
        &self.reply_head[..(self.reply_len as usize).min(REPLY_HEAD)]
    }

    /// The reply's answer word: its first 8 bytes, little-endian, padded with zeros.
    pub fn answer(&self) -> u64 {
        crate::app::answer_word(self.reply())
    }
}

/// The port file, from either side.
pub struct Port {
    mapping: Mapping,
    path: PathBuf,
}

impl Port {
    /// The port file of replica `id` in `dir`.
    pub fn path(dir: &Path, id: u8) -> PathBuf {
        dir.join(format!("client-{id}.port"))
    }

    /// Replica side: a fresh port, renamed into place.
    pub fn create(dir: &Path, id: u8, incarnation: u64) -> io::Result<Port> {
        let path = Port::path(dir, id);
        let staging = dir.join(format!("client-{id}.port.new-{}", std::process::id()));
        let file = crate::shm::create_staged(&staging, FILE_BYTES)?;
        let mapping = Mapping::map(&file, FILE_BYTES)?;
        if let Err(e) = mapping.collapse() {
            eprintln!("replica {id}: client port in small pages (no huge pages: {e})");
        }
        let port = Port { mapping, path };
        port.set(Stat::Pid, std::process::id() as u64);
        port.set(Stat::Incarnation, incarnation);
        port.mapping.word(0).store(MAGIC, SeqCst);
        fs::rename(&staging, &port.path)?;
        Ok(port)
    }

    /// Client side: attaches to replica `id`'s current port.
    pub fn attach(dir: &Path, id: u8) -> io::Result<Port> {
        let path = Port::path(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        if file.metadata()?.len() != FILE_BYTES as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a port file",
            ));
        }
        let mapping = Mapping::map(&file, FILE_BYTES)?;
        if mapping.word(0).load(SeqCst) != MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "port not ready"));
        }
        Ok(Port { mapping, path })
    }

    /// Reads a status word.
    pub fn get(&self, stat: Stat) -> u64 {
        self.mapping.word(stat as usize).load(Acquire)
    }

    /// Who the replica considers leader (`Stat::LeaderView`).
    pub fn leader_view(&self) -> Option<u8> {
        self.get(Stat::LeaderView).checked_sub(1).map(|id| id as u8)
    }

    /// Where its replay is blocked and why (`Stat::BlockedAt`, `Stat::BlockedWhy`).
    pub fn blocked(&self) -> Option<(u64, Blocked)> {
        let at = self.get(Stat::BlockedAt).checked_sub(1)?;
        Some((at, Blocked::from_code(self.get(Stat::BlockedWhy) as u32)?))
    }

    /// Writes a status word.
    pub fn set(&self, stat: Stat, value: u64) {
        self.mapping.word(stat as usize).store(value, Release);
    }

    /// Publishes the state digest at an applied position (replica side).
    pub fn publish_digest(&self, digest: u64, applied: u64) {
        let seq = self.mapping.word(Stat::DigestSeq as usize);
        let s = seq.load(Relaxed);
        seq.store(s + 1, SeqCst);
        self.set(Stat::Digest, digest);
        self.set(Stat::DigestApplied, applied);
        seq.store(s + 2, SeqCst);
    }

    /// The last published (digest, applied position) pair, read consistently (client side).
    pub fn digest(&self) -> (u64, u64) {
        let seq = self.mapping.word(Stat::DigestSeq as usize);
        loop {
            let before = seq.load(SeqCst);
            let pair = (self.get(Stat::Digest), self.get(Stat::DigestApplied));
            if before % 2 == 0 && seq.load(SeqCst) == before {
                return pair;
            }
            std::hint::spin_loop();
        }
    }

    /// Records the id of the command applied at `position` (replica side).
    pub fn journal(&self, position: u64, id: u64) {
        let at = JOURNAL + (position % JOURNAL_POSITIONS) as usize * 8;
        self.mapping.word(at).store(id, Relaxed);
    }

    /// The id of the command applied at `position`, if the journal still holds that position.
    pub fn journal_at(&self, position: u64) -> u64 {
        let at = JOURNAL + (position % JOURNAL_POSITIONS) as usize * 8;
        self.mapping.word(at).load(Relaxed)
    }

    /// Client side: queues a command; false when the ring is full or the command too long.
    pub fn push_request(&self, seq: u64, command: &[u8]) -> bool {
        let (tail, head) = (self.mapping.word(REQ_TAIL), self.mapping.word(REQ_HEAD));
        let t = tail.load(Relaxed);
        if command.len() > COMMAND_MAX || t - head.load(Acquire) >= REQUESTS {
            return false;
        }
        let entry = REQ_ENTRIES + (t % REQUESTS) as usize * REQUEST_BYTES;
        self.mapping.word(entry).store(seq, Relaxed);
        self.mapping
            .word(entry + 8)
            .store(command.len() as u64, Relaxed);
        // SAFETY: `command.len() <= COMMAND_MAX` (checked above), the bytes an entry holds after
        // its 16-byte header (`REQUEST_BYTES`); entry `t % REQUESTS` lies inside the request
        // ring, which `FILE_BYTES`, the mapping's length, holds; the mapping lives while `self`
        // does, and the replica reads these bytes only atomically.
        unsafe { copy_in(command, self.mapping.at(entry + 16)) };
        tail.store(t + 1, Release);
        self.replica_bell().ring();
        true
    }

    /// The doorbell the replica's replication plane rests on (rung by every request).
    pub fn replica_bell(&self) -> Bell<'_> {
        Bell::in_mapping(&self.mapping, REPLICA_BELL)
    }

    /// The doorbell a client rests on (rung by every response).
    pub fn client_bell(&self) -> Bell<'_> {
        Bell::in_mapping(&self.mapping, CLIENT_BELL)
    }

    /// Replica side: the oldest queued command, copied into `buf`, without taking it.
    pub fn peek_request(&self, buf: &mut [u8]) -> Option<(u64, usize)> {
        assert!(buf.len() >= COMMAND_MAX);
        let (tail, head) = (self.mapping.word(REQ_TAIL), self.mapping.word(REQ_HEAD));
        let h = head.load(Relaxed);
        if tail.load(Acquire) == h {
            return None;
        }
        let entry = REQ_ENTRIES + (h % REQUESTS) as usize * REQUEST_BYTES;
        let seq = self.mapping.word(entry).load(Relaxed);
        let len = (self.mapping.word(entry + 8).load(Relaxed) as usize).min(COMMAND_MAX);
        // SAFETY: `len <= COMMAND_MAX` (clamped above), so the bytes lie inside entry
        // `h % REQUESTS` of the request ring, inside the mapping, which lives while `self` does
        // and which the client writes only atomically.
        unsafe { copy_out(self.mapping.at(entry + 16), &mut buf[..len]) };
        Some((seq, len))
    }

    /// Replica side: takes the command `peek_request` returned.
    pub fn pop_request(&self) {
        let head = self.mapping.word(REQ_HEAD);
        head.store(head.load(Relaxed) + 1, Release);
    }

    /// Replica side: room for a response?
    pub fn can_respond(&self) -> bool {
        let (tail, head) = (self.mapping.word(RESP_TAIL), self.mapping.word(RESP_HEAD));
        tail.load(Relaxed) - head.load(Acquire) < RESPONSES
    }

    /// Replica side: publishes a response; false when the ring is full (the client stopped
    /// reading), and then the response is lost.
    pub fn push_response(&self, response: Response) -> bool {
        if !self.can_respond() {
            return false;
        }
        let tail = self.mapping.word(RESP_TAIL);
        let t = tail.load(Relaxed);
        let entry = RESP_ENTRIES + (t % RESPONSES) as usize * RESPONSE_BYTES;
        let head = |i: usize| {
            u64::from_le_bytes(response.reply_head[i * 8..i * 8 + 8].try_into().expect("8"))
        };
        let words: [u64; RESPONSE_WORDS] = [
            response.seq,
            response.outcome.code(),
            response.position,
            response.commit_ns,
            head(0),
            head(1),
            response.reply_len,
        ];
        for (i, word) in words.into_iter().enumerate() {
            self.mapping.word(entry + 8 * i).store(word, Relaxed);
        }
        tail.store(t + 1, Release);
        self.client_bell().ring();
        true
    }

    /// Client side: the next response, if any.
    pub fn take_response(&self) -> Option<Response> {
        let (tail, head) = (self.mapping.word(RESP_TAIL), self.mapping.word(RESP_HEAD));
        let h = head.load(Relaxed);
        if tail.load(Acquire) == h {
            return None;
        }
        let entry = RESP_ENTRIES + (h % RESPONSES) as usize * RESPONSE_BYTES;
        let word = |i: usize| self.mapping.word(entry + 8 * i).load(Relaxed);
        let mut reply_head = [0; REPLY_HEAD];
        reply_head[..8].copy_from_slice(&word(4).to_le_bytes());
        reply_head[8..].copy_from_slice(&word(5).to_le_bytes());
        let response = Response {
            seq: word(0),
            outcome: Outcome::from_code(word(1)).unwrap_or(Outcome::Rejected),
            position: word(2),
            commit_ns: word(3),
            reply_head,
            reply_len: word(6),
        };
        head.store(h + 1, Release);
        Some(response)
    }

    /// Client side: requests queued but not yet taken by the replica.
    pub fn requests_waiting(&self) -> u64 {
        self.mapping.word(REQ_TAIL).load(Relaxed) - self.mapping.word(REQ_HEAD).load(Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_carry_requests_and_responses_in_order() {
        let dir = std::env::temp_dir().join(format!("mu-port-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let server = Port::create(&dir, 0, 7).unwrap();
        let client = Port::attach(&dir, 0).unwrap();
        assert_eq!(client.get(Stat::Incarnation), 7);
        for seq in 0..REQUESTS {
            assert!(client.push_request(seq, &[seq as u8; 100]));
        }
        assert!(!client.push_request(99, b"x"), "ring full");
        let mut buf = [0u8; COMMAND_MAX];
        for seq in 0..REQUESTS {
            assert_eq!(server.peek_request(&mut buf), Some((seq, 100)));
            assert_eq!(buf[99], seq as u8);
            server.pop_request();
            let reply: Vec<u8> = (0..seq as u8 % 24).collect();
            let response = Response::new(seq, Outcome::Committed, seq * 2, 5, &reply);
            assert!(server.push_response(response));
            let taken = client.take_response().unwrap();
            assert_eq!(taken, response);
            assert_eq!(taken.reply(), &reply[..reply.len().min(REPLY_HEAD)]);
            assert_eq!(taken.reply_len, reply.len() as u64);
        }
        assert_eq!(server.peek_request(&mut buf), None);
        server.publish_digest(0xABCD, 42);
        assert_eq!(client.digest(), (0xABCD, 42));
        server.journal(JOURNAL_POSITIONS + 3, 77);
        assert_eq!(client.journal_at(3), 77);
        fs::remove_dir_all(&dir).unwrap();
    }
}
