//! The replicated key-value store that `mu demo`, the process tests and the benchmarks run: a
//! fixed-capacity table allocated once at start, so applying a command never allocates.
//!
//! Command format (little-endian): tag `u8` (1 = put, 2 = get), key `u64`, command id `u64`
//! (unique per client command: the client's id in the top 16 bits), then for a put the value
//! bytes (any length up to [`VALUE_MAX`]). A put answers the key's new version, a get the
//! version and the value's digest.
//!
//! The state digest is the xor of one hash per stored entry (key, version, value), kept up to
//! date on every put: equal tables give equal digests whatever order they were filled in.
//!
//! # Snapshots (state transfer)
//!
//! Stream format (little-endian): one record per entry occupied when the snapshot began, in table
//! index order, back to back: key `u64`, version `u64`, value length `u32`, then the value bytes
//! (20 + length bytes per record). Its digest is the store's digest when it began. Positions in the
//! table are not part of the stream: the joiner places every key with its own linear probing, so
//! tables of different capacities exchange snapshots as long as the entries fit.
//!
//! The donor freezes the state copy-on-write, so it keeps applying at full speed while the stream
//! is read: [`Kv::snapshot_begin`] only lists the occupied entries and the stream offset of each
//! (O(capacity) bookkeeping, no value is copied), and the first put that overwrites a listed entry
//! while the snapshot is open saves that entry's old header and value into a shadow slot of its own
//! (one copy of at most [`VALUE_MAX`] bytes per entry per snapshot; the shadow has a slot per
//! index, so a save never waits for room, and its pages are touched only by saves). A put to a new
//! key needs no save: it lands in an index that was empty at begin, which the view does not list,
//! and since nothing is ever deleted an entry's index never moves and a probe never stops on a
//! listed entry for another key. [`Kv::snapshot_read`] serves each record from the shadow when
//! saved, else from the live table.
//!
//! The joiner clears the table at [`Kv::install_begin`] and decodes records as the pieces come,
//! carrying a header that spans pieces in a fixed buffer and writing value bytes straight into the
//! slot the key probes to; an entry becomes occupied (and enters the digest) only once its record
//! is complete. A stream that does not decode is installed as far as it does: a record with a value
//! over [`VALUE_MAX`], a piece out of order or past the announced length stops the decoding; a
//! record for a key already installed, or that finds the table full, is skipped. The digest
//! [`Kv::install_end`] returns is always that of what got installed, so it differs from the
//! donor's, which the core checks, unless the installed state is the donor's after all.
//!
//! # Invariants
//! - Capacity never changes after [`Kv::new`]; a put to a new key when the table is full changes
//!   nothing and answers [`FULL`]. Nothing allocates after [`Kv::new`], snapshots included.
//! - A malformed command changes nothing and answers [`MALFORMED`]; correct code never
//!   produces one.
//! - `digest` equals the xor of `entry_hash` over every occupied entry, at all times (during
//!   and after an install too), and `used` counts the occupied entries.
//! - While a snapshot is open, the bytes of its stream never change whatever is applied: an
//!   entry listed in the view is either unchanged since begin or saved in the shadow.
//! - A snapshot and an install never overlap: beginning one ends the other.
//! - No input (commands, stream bytes, offsets) panics.

use mu_apps::session::{self, Envelope, ExactlyOnce, ReadOnly, Reply};
use mu_nostd::hash::Hasher;
use mu_nostd::{Snapshot, StateMachine};

use crate::app::Application;

const TAG_PUT: u8 = 1;
const TAG_GET: u8 = 2;
/// Bytes before a put's value.
pub const HEADER_BYTES: usize = 1 + 8 + 8;
/// Longest value a put may carry.
pub const VALUE_MAX: usize = 4096;
/// Bytes before a value in a snapshot record: key, version, value length.
const RECORD_HEADER_BYTES: usize = 8 + 8 + 4;
/// Answer to a put of a new key into a full table.
pub const FULL: u64 = u64::MAX;
/// Answer to a command that does not decode.
pub const MALFORMED: u64 = u64::MAX - 1;
const ENTRY_DOMAIN: u64 = 0x004B_5645_4E54_5259;

/// Encodes a put of `value` (at most [`VALUE_MAX`] bytes) into `out`; returns the length.
pub fn encode_put(out: &mut [u8], key: u64, id: u64, value: &[u8]) -> usize {
    assert!(value.len() <= VALUE_MAX);
    let len = HEADER_BYTES + value.len();
    out[0] = TAG_PUT;
    out[1..9].copy_from_slice(&key.to_le_bytes());
    out[9..17].copy_from_slice(&id.to_le_bytes());
    out[HEADER_BYTES..len].copy_from_slice(value);
    len
}

/// Encodes a get into `out`; returns the length.
pub fn encode_get(out: &mut [u8], key: u64, id: u64) -> usize {
    out[0] = TAG_GET;
    out[1..9].copy_from_slice(&key.to_le_bytes());
    out[9..17].copy_from_slice(&id.to_le_bytes());
    HEADER_BYTES
}

/// The command id of an encoded command, if it decodes.
pub fn command_id(command: &[u8]) -> Option<u64> {
    let id = command.get(9..17)?;
    let valid =
        matches!(command[0], TAG_PUT | TAG_GET) && command.len() <= HEADER_BYTES + VALUE_MAX;
    valid.then(|| u64::from_le_bytes(id.try_into().unwrap_or([0; 8])))
}

#[derive(Clone, Copy, Default)]
struct Entry {
    used: bool,
    key: u64,
    version: u64,
    len: u32,
}

impl Entry {
    fn record_header(&self) -> [u8; RECORD_HEADER_BYTES] {
        let mut header = [0; RECORD_HEADER_BYTES];
        header[..8].copy_from_slice(&self.key.to_le_bytes());
        header[8..16].copy_from_slice(&self.version.to_le_bytes());
        header[16..].copy_from_slice(&self.len.to_le_bytes());
        header
    }

    fn record_bytes(&self) -> u64 {
        (RECORD_HEADER_BYTES + self.len as usize) as u64
    }
}

/// One bit per table index.
struct Bits(Vec<u64>);

impl Bits {
    fn new(bits: usize) -> Bits {
        Bits(vec![0; bits.div_ceil(64)])
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] >> (i % 64) & 1 == 1
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self) {
        self.0.fill(0);
    }
}

/// The donor's copy-on-write view of the state at `snapshot_begin` (see the module doc).
struct Freeze {
    open: bool,
    /// Table indices of the entries occupied at begin, in index order; the first `len` count.
    view: Vec<u32>,
    len: usize,
    /// Where each record of the view starts in the stream; `offsets[len]` is the stream length.
    offsets: Vec<u64>,
    /// The indices the view lists: only these need saving before a put changes them.
    listed: Bits,
    /// Listed indices whose begin-time entry lives in the shadow, so later puts need no save.
    saved: Bits,
    shadow_entries: Vec<Entry>,
    /// One value slot per table index, like `Kv::values`, so a save never has to find room.
    shadow_values: Vec<u8>,
}

/// The joiner's decoding state between `install_begin` and `install_end`.
#[derive(Clone, Copy)]
struct Install {
    active: bool,
    /// The announced stream length.
    total: u64,
    /// Where the next piece must start.
    next: u64,
    /// The stream stopped decoding; the rest of it is ignored.
    stopped: bool,
    /// A record header that spans pieces is gathered here.
    header: [u8; RECORD_HEADER_BYTES],
    header_fill: usize,
    /// The record whose value bytes are coming, once its header is complete.
    record: Option<Record>,
}

impl Install {
    const IDLE: Install = Install {
        active: false,
        total: 0,
        next: 0,
        stopped: false,
        header: [0; RECORD_HEADER_BYTES],
        header_fill: 0,
        record: None,
    };
}

#[derive(Clone, Copy)]
struct Record {
    entry: Entry,
    /// The table index the value goes to; `None` when the record is skipped (a key already
    /// installed, or a full table), whose value bytes are then consumed and dropped.
    slot: Option<usize>,
    filled: usize,
}

/// The store.
pub struct Kv {
    entries: Vec<Entry>,
    values: Vec<u8>,
    digest: u64,
    applied: u64,
    used: usize,
    freeze: Freeze,
    install: Install,
}

impl Kv {
    /// A store of `capacity` keys; everything, the snapshot's shadow copy and bookkeeping
    /// included, is allocated here.
    pub fn new(capacity: usize) -> Kv {
        assert!(capacity > 0 && capacity < u32::MAX as usize);
        let mut kv = Kv {
            entries: vec![Entry::default(); capacity],
            values: vec![0; capacity * VALUE_MAX],
            digest: 0,
            applied: 0,
            used: 0,
            freeze: Freeze {
                open: false,
                view: vec![0; capacity],
                len: 0,
                offsets: vec![0; capacity + 1],
                listed: Bits::new(capacity),
                saved: Bits::new(capacity),
                shadow_entries: vec![Entry::default(); capacity],
                shadow_values: vec![0; capacity * VALUE_MAX],
            },
            install: Install::IDLE,
        };
        // Megabytes that a replica locks: in huge pages its exit unmaps them in a few steps
        // (see `mem::collapse`). Small pages, where the kernel has no huge ones, work the same.
        for values in [&mut kv.values, &mut kv.freeze.shadow_values] {
            let _ = crate::mem::collapse(values.as_mut_ptr(), values.len());
        }
        kv
    }

    /// The state digest (see the module doc).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Commands applied by this replica. A per-replica count, not part of the replicated state:
    /// an install does not change it (nor is it in the snapshot or the digest).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Keys the table can hold.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Keys the table holds.
    pub fn used(&self) -> usize {
        self.used
    }

    fn value(&self, index: usize) -> &[u8] {
        let len = self.entries[index].len as usize;
        &self.values[index * VALUE_MAX..index * VALUE_MAX + len]
    }

    fn entry_hash(&self, index: usize) -> u64 {
        let entry = self.entries[index];
        Hasher::new(ENTRY_DOMAIN)
            .word(entry.key)
            .word(entry.version)
            .bytes(self.value(index))
            .finish()
    }

    /// Where `key` is or would go (linear probing); `None` when absent and the table is full.
    fn find(&self, key: u64) -> Option<usize> {
        let capacity = self.entries.len();
        let home = (Hasher::new(0).word(key).finish() % capacity as u64) as usize;
        (0..capacity)
            .map(|i| (home + i) % capacity)
            .find(|&i| !self.entries[i].used || self.entries[i].key == key)
    }

    /// Applies one command; returns the answer word and, for a get, the value digest.
    pub fn apply(&mut self, command: &[u8]) -> (u64, u64) {
        self.applied += 1;
        if command_id(command).is_none() {
            return (MALFORMED, 0);
        }
        let key = u64::from_le_bytes(command[1..9].try_into().unwrap_or([0; 8]));
        let Some(index) = self.find(key) else {
            return (FULL, 0);
        };
        if command[0] == TAG_GET {
            let version = self.entries[index].version;
            let digest = Hasher::new(ENTRY_DOMAIN).bytes(self.value(index)).finish();
            return (version, digest);
        }
        self.preserve(index);
        if self.entries[index].used {
            self.digest ^= self.entry_hash(index);
        } else {
            self.used += 1;
        }
        let value = &command[HEADER_BYTES..];
        let entry = &mut self.entries[index];
        *entry = Entry {
            used: true,
            key,
            version: entry.version + 1,
            len: value.len() as u32,
        };
        self.values[index * VALUE_MAX..index * VALUE_MAX + value.len()].copy_from_slice(value);
        self.digest ^= self.entry_hash(index);
        (self.entries[index].version, 0)
    }

    /// Called before `index` changes: keeps the open snapshot's view of it intact.
    fn preserve(&mut self, index: usize) {
        let freeze = &mut self.freeze;
        if !freeze.open || !freeze.listed.get(index) || freeze.saved.get(index) {
            return;
        }
        let entry = self.entries[index];
        let slot = index * VALUE_MAX..index * VALUE_MAX + entry.len as usize;
        freeze.shadow_values[slot.clone()].copy_from_slice(&self.values[slot]);
        freeze.shadow_entries[index] = entry;
        freeze.saved.set(index);
    }

    // ---- donor ---------------------------------------------------------------------------------

    /// Freezes the state as it is now (copy-on-write, see the module doc; an open snapshot is
    /// replaced, an install in progress abandoned); returns the stream length and its digest.
    pub fn snapshot_begin(&mut self) -> (u64, u64) {
        self.install_abandon();
        let freeze = &mut self.freeze;
        freeze.listed.clear();
        freeze.saved.clear();
        let mut len = 0;
        let mut offset = 0;
        for (index, entry) in self.entries.iter().enumerate() {
            if entry.used {
                freeze.view[len] = index as u32;
                freeze.offsets[len] = offset;
                freeze.listed.set(index);
                offset += entry.record_bytes();
                len += 1;
            }
        }
        freeze.offsets[len] = offset;
        freeze.len = len;
        freeze.open = true;
        (offset, self.digest)
    }

    /// The entry at `index` and its value as they were at `snapshot_begin`.
    fn frozen(&self, index: usize) -> (Entry, &[u8]) {
        let freeze = &self.freeze;
        let (entries, values) = if freeze.saved.get(index) {
            (&freeze.shadow_entries, &freeze.shadow_values)
        } else {
            (&self.entries, &self.values)
        };
        let entry = entries[index];
        (
            entry,
            &values[index * VALUE_MAX..index * VALUE_MAX + entry.len as usize],
        )
    }

    /// Copies bytes `[offset, offset + buf.len())` of the frozen stream into `buf`; bytes past
    /// its end (or any, with no snapshot open) read as zeros rather than panic.
    pub fn snapshot_read(&self, offset: u64, buf: &mut [u8]) {
        let freeze = &self.freeze;
        let total = freeze.offsets[freeze.len];
        let mut at = offset;
        let mut done = 0;
        // The record holding `offset`: the last one starting at or before it.
        let mut record = freeze.offsets[..freeze.len]
            .partition_point(|&start| start <= offset)
            .saturating_sub(1);
        while done < buf.len() && at < total {
            let (entry, value) = self.frozen(freeze.view[record] as usize);
            let header = entry.record_header();
            let within = (at - freeze.offsets[record]) as usize;
            let end = (RECORD_HEADER_BYTES + value.len()).min(within + buf.len() - done);
            for (piece, start) in [(&header[..], 0), (value, RECORD_HEADER_BYTES)] {
                let lo = within.max(start);
                let hi = end.min(start + piece.len());
                if lo < hi {
                    buf[done + lo - within..done + hi - within]
                        .copy_from_slice(&piece[lo - start..hi - start]);
                }
            }
            done += end - within;
            at += (end - within) as u64;
            record += 1;
        }
        buf[done..].fill(0);
    }

    /// The frozen copy is no longer needed: puts stop saving.
    pub fn snapshot_end(&mut self) {
        self.freeze.open = false;
        self.freeze.len = 0;
        self.freeze.offsets[0] = 0;
    }

    // ---- joiner --------------------------------------------------------------------------------

    /// Replaces the state by the stream of `bytes` bytes that follows (an open snapshot is
    /// ended); false, changing nothing, when even records of the longest values would not fit.
    pub fn install_begin(&mut self, bytes: u64) -> bool {
        self.install_abandon();
        let most = self.capacity() as u64 * (RECORD_HEADER_BYTES + VALUE_MAX) as u64;
        if bytes > most {
            return false;
        }
        self.snapshot_end();
        self.entries.fill(Entry::default());
        self.digest = 0;
        self.used = 0;
        self.install = Install {
            active: true,
            total: bytes,
            ..Install::IDLE
        };
        true
    }

    /// The stream's bytes at `offset`: pieces must come in order without gaps and within the
    /// announced length, else decoding stops there.
    pub fn install_write(&mut self, offset: u64, bytes: &[u8]) {
        let install = &mut self.install;
        if !install.active || install.stopped {
            return;
        }
        if offset != install.next {
            install.stopped = true;
            return;
        }
        let room = install.total - install.next;
        let take = (bytes.len() as u64).min(room) as usize;
        install.next += take as u64;
        let mut rest = &bytes[..take];
        while !rest.is_empty() && !self.install.stopped {
            rest = self.decode(rest);
        }
        if take < bytes.len() {
            self.install.stopped = true;
        }
    }

    /// Decodes from the start of `rest` up to the end of the current header or value; returns
    /// what is left.
    fn decode<'a>(&mut self, rest: &'a [u8]) -> &'a [u8] {
        let install = &mut self.install;
        let Some(mut record) = install.record else {
            let fill = install.header_fill;
            let n = (RECORD_HEADER_BYTES - fill).min(rest.len());
            install.header[fill..fill + n].copy_from_slice(&rest[..n]);
            install.header_fill += n;
            if install.header_fill == RECORD_HEADER_BYTES {
                self.start_record();
            }
            return &rest[n..];
        };
        let n = (record.entry.len as usize - record.filled).min(rest.len());
        if let Some(index) = record.slot {
            let start = index * VALUE_MAX + record.filled;
            self.values[start..start + n].copy_from_slice(&rest[..n]);
        }
        record.filled += n;
        install.record = Some(record);
        if record.filled == record.entry.len as usize {
            self.finish_record();
        }
        &rest[n..]
    }

    fn start_record(&mut self) {
        let header = self.install.header;
        self.install.header_fill = 0;
        let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
        let len = u32::from_le_bytes(header[16..20].try_into().unwrap_or([0; 4]));
        if len as usize > VALUE_MAX {
            // Nothing after it can be trusted to be a record boundary.
            self.install.stopped = true;
            return;
        }
        let entry = Entry {
            used: true,
            key: word(0),
            version: word(8),
            len,
        };
        // Only a free index takes the record: a repeated key must not overwrite an installed
        // entry's value under its counted hash.
        let slot = self.find(entry.key).filter(|&i| !self.entries[i].used);
        self.install.record = Some(Record {
            entry,
            slot,
            filled: 0,
        });
        if len == 0 {
            self.finish_record();
        }
    }

    /// The current record's value is complete: it enters the table and the digest.
    fn finish_record(&mut self) {
        let Some(record) = self.install.record.take() else {
            return;
        };
        if let Some(index) = record.slot {
            self.entries[index] = record.entry;
            self.digest ^= self.entry_hash(index);
            self.used += 1;
        }
    }

    /// Every byte was written; returns the digest of the installed state (what decoded, see the
    /// module doc), which is [`Kv::digest`] from now on.
    pub fn install_end(&mut self) -> u64 {
        self.install = Install::IDLE;
        self.digest
    }

    /// The install was given up: the table keeps the records completed so far, consistently.
    pub fn install_abandon(&mut self) {
        self.install = Install::IDLE;
    }
}

/// The store as the node hosts it: every reply is the answer word (8 bytes). The trait's
/// methods call the store's own by their full path, since they share names.
impl StateMachine for Kv {
    fn apply(&mut self, _position: u64, command: &[u8], response: &mut [u8]) -> usize {
        let (answer, _) = Kv::apply(self, command);
        response[..8].copy_from_slice(&answer.to_le_bytes());
        8
    }

    fn snapshot_begin(&mut self, _position: u64) -> Option<Snapshot> {
        let (bytes, digest) = Kv::snapshot_begin(self);
        Some(Snapshot { bytes, digest })
    }

    fn snapshot_read(&mut self, offset: u64, buf: &mut [u8]) {
        Kv::snapshot_read(self, offset, buf);
    }

    fn snapshot_end(&mut self) {
        Kv::snapshot_end(self);
    }

    fn install_begin(&mut self, _position: u64, bytes: u64) -> bool {
        Kv::install_begin(self, bytes)
    }

    fn install_write(&mut self, offset: u64, bytes: &[u8]) {
        Kv::install_write(self, offset, bytes);
    }

    fn install_end(&mut self) -> u64 {
        Kv::install_end(self)
    }

    fn install_abandon(&mut self) {
        Kv::install_abandon(self);
    }
}

impl Application for Kv {
    fn digest(&self) -> u64 {
        Kv::digest(self)
    }

    fn journal_id(&self, command: &[u8], _reply: &[u8]) -> Option<u64> {
        command_id(command)
    }
}

/// A get changes nothing: a retried get is applied again, never cached.
impl ReadOnly for Kv {
    fn read_only(&self, command: &[u8]) -> bool {
        command.first() == Some(&TAG_GET)
    }
}

/// Client sessions a `mu replica --app kv` keeps (port clients, cluster-wide); the least
/// recently used is evicted beyond.
pub const SESSIONS: usize = 32;
/// Replies a session keeps, so requests a client may have in flight.
pub const SESSION_WINDOW: usize = 64;
/// Bytes of a reply a session keeps: the store's answer word.
pub const REPLY_KEPT: usize = 8;
/// Bytes before the value in the put a port client sends: the session envelope's header, then
/// the store's.
pub const CLIENT_HEADER_BYTES: usize = session::REQUEST_HEADER_BYTES + HEADER_BYTES;
const _: () = assert!(CLIENT_HEADER_BYTES == 43, "`mu demo --help` says 43");

/// What `mu replica --app kv` replicates: the store inside exactly-once client sessions, so a
/// put sent again after a fail-over is applied once (`mu_apps::session`).
pub type KvApp = ExactlyOnce<Kv, SESSIONS, SESSION_WINDOW, REPLY_KEPT>;

/// The store of `capacity` keys, inside client sessions.
pub fn kv_app(capacity: usize) -> KvApp {
    ExactlyOnce::new(Kv::new(capacity))
}

impl Application for KvApp {
    fn digest(&self) -> u64 {
        Hasher::new(0x004B_5653_4553_5300)
            .word(self.table_digest())
            .word(self.inner().digest())
            .finish()
    }

    /// The put's id, at the position where the store applied it: a request answered from the
    /// session's cache (a duplicate) or refused leaves no id, so a command id twice in the
    /// journal is a command applied twice.
    fn journal_id(&self, command: &[u8], reply: &[u8]) -> Option<u64> {
        let Ok(Envelope::Request { payload, .. } | Envelope::Plain { payload }) =
            session::decode(command)
        else {
            return None;
        };
        matches!(session::decode_reply(reply), Ok(Reply::Applied(_)))
            .then(|| command_id(payload))
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(kv: &mut Kv, key: u64, id: u64, value: &[u8]) -> u64 {
        let mut buf = [0u8; HEADER_BYTES + VALUE_MAX];
        let len = encode_put(&mut buf, key, id, value);
        assert_eq!(command_id(&buf[..len]), Some(id));
        kv.apply(&buf[..len]).0
    }

    fn get(kv: &mut Kv, key: u64) -> (u64, u64) {
        let mut buf = [0u8; HEADER_BYTES];
        encode_get(&mut buf, key, 0);
        kv.apply(&buf)
    }

    /// A value of `len` bytes that differs per key and per version.
    fn value(key: u64, round: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (key.wrapping_mul(31) ^ round.wrapping_mul(7) ^ i as u64) as u8)
            .collect()
    }

    /// Checks the module invariants from scratch.
    fn check_consistent(kv: &Kv) {
        let used: Vec<usize> = (0..kv.capacity()).filter(|&i| kv.entries[i].used).collect();
        let digest = used.iter().fold(0, |d, &i| d ^ kv.entry_hash(i));
        assert_eq!(kv.digest(), digest);
        assert_eq!(kv.used(), used.len());
        for &i in &used {
            assert_eq!(kv.find(kv.entries[i].key), Some(i));
        }
    }

    fn saved_entries(kv: &Kv) -> u32 {
        kv.freeze.saved.0.iter().map(|w| w.count_ones()).sum()
    }

    /// The whole frozen stream, read in pieces of `piece` bytes.
    fn read_stream(kv: &Kv, bytes: u64, piece: usize) -> Vec<u8> {
        let mut stream = vec![0xAA; bytes as usize];
        for (i, chunk) in stream.chunks_mut(piece).enumerate() {
            kv.snapshot_read((i * piece) as u64, chunk);
        }
        stream
    }

    /// Installs `stream` (announced as `announced` bytes) in pieces of `piece` bytes.
    fn install(kv: &mut Kv, announced: u64, stream: &[u8], piece: usize) -> u64 {
        assert!(kv.install_begin(announced));
        for (i, chunk) in stream.chunks(piece).enumerate() {
            kv.install_write((i * piece) as u64, chunk);
        }
        let digest = kv.install_end();
        assert_eq!(digest, kv.digest());
        check_consistent(kv);
        digest
    }

    /// A donor with keys of every value length class, some overwritten.
    fn donor(capacity: usize, keys: u64) -> Kv {
        let mut kv = Kv::new(capacity);
        for key in 0..keys {
            let len = [0, 1, 7, 8, 100, VALUE_MAX - 1, VALUE_MAX][key as usize % 7];
            put(&mut kv, key * 1_000_003 + 5, key, &value(key, 0, len));
            if key % 3 == 0 {
                put(&mut kv, key * 1_000_003 + 5, key, &value(key, 1, len / 2));
            }
        }
        kv
    }

    fn same_answers(a: &mut Kv, b: &mut Kv, keys: u64) {
        for key in 0..keys + 3 {
            let key = key * 1_000_003 + 5;
            assert_eq!(get(a, key), get(b, key));
        }
    }

    #[test]
    fn digests_depend_on_content_not_order() {
        let (mut a, mut b) = (Kv::new(8), Kv::new(8));
        assert_eq!(put(&mut a, 1, 10, b"x"), 1);
        assert_eq!(put(&mut a, 2, 11, b"y"), 1);
        put(&mut b, 2, 11, b"y");
        put(&mut b, 1, 10, b"x");
        assert_eq!(a.digest(), b.digest());
        assert_eq!(put(&mut a, 1, 12, b"z"), 2);
        assert_ne!(a.digest(), b.digest());
        let mut get = [0u8; HEADER_BYTES];
        encode_get(&mut get, 1, 13);
        assert_eq!(a.apply(&get).0, 2);
    }

    #[test]
    fn full_and_malformed_change_nothing() {
        let mut kv = Kv::new(2);
        put(&mut kv, 1, 1, b"a");
        put(&mut kv, 2, 2, b"b");
        let digest = kv.digest();
        assert_eq!(put(&mut kv, 3, 3, b"c"), FULL);
        assert_eq!(kv.apply(&[9, 1, 2]).0, MALFORMED);
        assert_eq!(kv.apply(&[]).0, MALFORMED);
        assert_eq!(kv.digest(), digest);
        assert_eq!(put(&mut kv, 2, 4, b"bb"), 2);
    }

    #[test]
    fn stream_is_records_in_index_order() {
        let mut kv = donor(16, 9);
        let (bytes, digest) = kv.snapshot_begin();
        assert_eq!(digest, kv.digest());
        let stream = read_stream(&kv, bytes, 64);
        let mut at = 0;
        let mut last_index = None;
        while at < stream.len() {
            let key = u64::from_le_bytes(stream[at..at + 8].try_into().unwrap());
            let version = u64::from_le_bytes(stream[at + 8..at + 16].try_into().unwrap());
            let len = u32::from_le_bytes(stream[at + 16..at + 20].try_into().unwrap()) as usize;
            let value = &stream[at + 20..at + 20 + len];
            let index = kv.find(key).unwrap();
            assert!(last_index < Some(index));
            last_index = Some(index);
            assert_eq!(kv.entries[index].version, version);
            assert_eq!(kv.value(index), value);
            at += 20 + len;
        }
        assert_eq!(at, stream.len());
        assert_eq!(kv.used(), 9);
        kv.snapshot_end();
    }

    #[test]
    fn round_trip_through_odd_piece_sizes() {
        let keys = 40;
        let mut from = donor(64, keys);
        for piece in [1, 7, 4096 + 13] {
            let (bytes, digest) = from.snapshot_begin();
            let stream = read_stream(&from, bytes, piece);
            from.snapshot_end();
            // The joiner's capacity need not match: keys are placed by its own probing.
            for capacity in [64, 41, 200] {
                let mut to = Kv::new(capacity);
                put(&mut to, 999, 1, b"replaced by the install");
                assert_eq!(install(&mut to, bytes, &stream, piece), digest);
                assert_eq!(to.used(), from.used());
                assert_eq!(to.applied(), 1);
                same_answers(&mut from, &mut to, keys);
                assert_eq!(get(&mut to, 999).0, 0);
            }
        }
    }

    #[test]
    fn frozen_view_stays_identical_while_puts_go_on() {
        let keys = 30;
        let mut kv = donor(64, keys);
        let (bytes, digest) = kv.snapshot_begin();
        let before = read_stream(&kv, bytes, 4096 + 13);
        // A third of the stream is read after each of the first three rounds of puts.
        let mut interleaved = vec![0; bytes as usize];
        let thirds = [0, bytes / 3, 2 * bytes / 3, bytes];
        for round in 0..4u64 {
            for key in 0..keys + 10 {
                // Old keys (several times each) and new ones, with lengths that change.
                let len = ((key * 977 + round * 131) % VALUE_MAX as u64) as usize;
                put(
                    &mut kv,
                    key * 1_000_003 + 5,
                    round,
                    &value(key, round + 2, len),
                );
            }
            if let [at, end] = thirds[round as usize..].get(..2).unwrap_or(&[]) {
                kv.snapshot_read(*at, &mut interleaved[*at as usize..*end as usize]);
            }
        }
        assert_eq!(read_stream(&kv, bytes, 7), before);
        assert_eq!(interleaved, before);
        assert_ne!(kv.digest(), digest);
        check_consistent(&kv);
        // Each old key was saved once, whatever number of puts followed.
        assert_eq!(saved_entries(&kv), keys as u32);
        let mut to = Kv::new(64);
        assert_eq!(install(&mut to, bytes, &before, 1000), digest);
        kv.snapshot_end();
    }

    #[test]
    fn second_snapshot_after_end() {
        let keys = 20;
        let mut kv = donor(32, keys);
        let (first, _) = kv.snapshot_begin();
        put(&mut kv, 5, 1, b"changed during the first");
        kv.snapshot_end();
        for key in 0..keys {
            put(&mut kv, key * 1_000_003 + 5, 2, &value(key, 9, 33));
        }
        let (bytes, digest) = kv.snapshot_begin();
        assert_eq!(digest, kv.digest());
        assert_ne!(bytes, first);
        assert_eq!(saved_entries(&kv), 0);
        let stream = read_stream(&kv, bytes, 100);
        put(&mut kv, 5, 3, b"changed during the second");
        put(&mut kv, 5 + 1_000_003, 3, b"and this one");
        assert_eq!(saved_entries(&kv), 2);
        assert_eq!(read_stream(&kv, bytes, 33), stream);
        let mut to = Kv::new(32);
        assert_eq!(install(&mut to, bytes, &stream, 17), digest);
        kv.snapshot_end();
        // Reads without an open snapshot are zeros, not a panic.
        let mut buf = [1u8; 10];
        kv.snapshot_read(3, &mut buf);
        assert_eq!(buf, [0; 10]);
    }

    #[test]
    fn truncated_or_garbage_stream_installs_without_panic() {
        let keys = 25;
        let mut from = donor(32, keys);
        let (bytes, digest) = from.snapshot_begin();
        let stream = read_stream(&from, bytes, 512);
        from.snapshot_end();
        let mut to = Kv::new(32);
        // Announced whole, cut short; announced short; cut inside a header and a value.
        for cut in [bytes - 5, bytes - 1, 10, 25, bytes / 2] {
            let cut = cut as usize;
            assert_ne!(install(&mut to, bytes, &stream[..cut], 7), digest);
            assert_ne!(install(&mut to, cut as u64, &stream[..cut], 7), digest);
        }
        // Pieces past the announced length, out of order, repeated.
        assert_ne!(install(&mut to, bytes - 30, &stream, 64), digest);
        assert!(to.install_begin(bytes));
        to.install_write(0, &stream[..100]);
        to.install_write(200, &stream[200..]);
        assert_ne!(to.install_end(), digest);
        check_consistent(&to);
        assert!(to.install_begin(bytes));
        to.install_write(0, &stream[..100]);
        to.install_write(0, &stream);
        assert_ne!(to.install_end(), digest);
        check_consistent(&to);
        // A value length over VALUE_MAX, and one key twice.
        let mut bad = stream.clone();
        bad[16..20].copy_from_slice(&(VALUE_MAX as u32 + 1).to_le_bytes());
        assert_ne!(install(&mut to, bytes, &bad, 13), digest);
        let first = 20 + u32::from_le_bytes(stream[16..20].try_into().unwrap()) as usize;
        let mut twice = stream.clone();
        twice.extend_from_slice(&stream[..first]);
        // The repeat is skipped, so what got installed is the donor's state, and says so.
        assert_eq!(install(&mut to, twice.len() as u64, &twice, 5), digest);
        assert_eq!(to.used(), keys as usize);
        let mut renamed = stream.clone();
        renamed[..8].copy_from_slice(&stream[first..first + 8]);
        assert_ne!(install(&mut to, bytes, &renamed, 5), digest);
        assert_eq!(to.used(), keys as usize - 1);
        // Garbage of many lengths.
        let mut state = 0x1234_5678_9ABC_DEF1u64;
        for len in [1, 19, 20, 21, 64, 4117, 50_000] {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 56) as u8
                })
                .collect();
            assert_ne!(install(&mut to, len, &garbage, 11), digest);
        }
        // Garbage whose lengths decode: small length fields everywhere.
        let small: Vec<u8> = (0..5000u32).map(|i| (i % 3) as u8).collect();
        assert_ne!(install(&mut to, small.len() as u64, &small, 9), digest);
        // Writes with no install open are ignored; the table still works.
        to.install_write(0, &stream);
        check_consistent(&to);
        assert_eq!(put(&mut to, 77, 1, b"after"), get(&mut to, 77).0);
        check_consistent(&to);
        assert_eq!(install(&mut to, bytes, &stream, 4096 + 13), digest);
        same_answers(&mut from, &mut to, keys);
    }

    #[test]
    fn install_abandon_then_new_install_works() {
        let keys = 25;
        let mut from = donor(32, keys);
        let (bytes, digest) = from.snapshot_begin();
        let stream = read_stream(&from, bytes, 300);
        from.snapshot_end();
        let mut to = Kv::new(32);
        assert!(to.install_begin(bytes));
        to.install_write(0, &stream[..bytes as usize / 2 + 3]);
        to.install_abandon();
        check_consistent(&to);
        put(&mut to, 1, 1, b"between installs");
        check_consistent(&to);
        assert_eq!(install(&mut to, bytes, &stream, 7), digest);
        same_answers(&mut from, &mut to, keys);
    }

    #[test]
    fn full_table_round_trip() {
        let capacity = 48;
        let mut from = donor(capacity, capacity as u64);
        assert_eq!(from.used(), capacity);
        assert_eq!(put(&mut from, 1, 1, b"no room"), FULL);
        let (bytes, digest) = from.snapshot_begin();
        let stream = read_stream(&from, bytes, 4096 + 13);
        from.snapshot_end();
        let mut to = Kv::new(capacity);
        assert_eq!(install(&mut to, bytes, &stream, 1), digest);
        assert_eq!(to.used(), capacity);
        same_answers(&mut from, &mut to, capacity as u64);
        // One key short of room: the last record is skipped, and the digest tells.
        let mut small = Kv::new(capacity - 1);
        assert_ne!(install(&mut small, bytes, &stream, 7), digest);
        assert_eq!(small.used(), capacity - 1);
        // A stream that cannot fit whatever it holds is refused, changing nothing.
        let mut tiny = Kv::new(1);
        put(&mut tiny, 3, 1, b"kept");
        let kept = tiny.digest();
        assert!(!tiny.install_begin((RECORD_HEADER_BYTES + VALUE_MAX) as u64 + 1));
        assert_eq!(tiny.digest(), kept);
        check_consistent(&tiny);
    }

    #[test]
    fn large_snapshot_begin_copies_no_value() {
        let keys = 16_384u64;
        let mut kv = Kv::new(keys as usize);
        let mut value = [0u8; VALUE_MAX];
        for key in 0..keys {
            value[..8].copy_from_slice(&key.to_le_bytes());
            put(&mut kv, key, key, &value);
        }
        let (bytes, digest) = kv.snapshot_begin();
        assert_eq!(bytes, keys * (RECORD_HEADER_BYTES + VALUE_MAX) as u64);
        assert_eq!(digest, kv.digest());
        assert_eq!(saved_entries(&kv), 0);
        assert!(kv.freeze.shadow_values.iter().all(|&b| b == 0));
        let index = kv.find(7).unwrap();
        let record = kv.freeze.view[..kv.freeze.len]
            .iter()
            .position(|&i| i as usize == index)
            .unwrap();
        let at = kv.freeze.offsets[record];
        let mut old = vec![0; RECORD_HEADER_BYTES + VALUE_MAX];
        kv.snapshot_read(at, &mut old);
        put(&mut kv, 7, 1, b"new");
        put(&mut kv, 7, 2, b"newer");
        assert_eq!(saved_entries(&kv), 1);
        let mut now = vec![0; RECORD_HEADER_BYTES + VALUE_MAX];
        kv.snapshot_read(at, &mut now);
        assert_eq!(now, old);
        assert_eq!(&now[20..28], &7u64.to_le_bytes());
        kv.snapshot_end();
    }

    /// The store in its sessions as the node hosts it: a retried put is answered from the
    /// cache and journalled nowhere, a get is applied every time.
    #[test]
    fn a_retried_put_is_applied_once_and_journalled_once() {
        let mut app = kv_app(16);
        let mut reply = [0u8; 64];
        let mut envelope = [0u8; CLIENT_HEADER_BYTES + 8];
        let len = session::encode_register(&mut envelope).unwrap();
        let n = StateMachine::apply(&mut app, 5, &envelope[..len], &mut reply);
        assert_eq!(
            session::decode_reply(&reply[..n]),
            Ok(Reply::Registered { client: 5 })
        );
        let mut session = session::Session::new(5, SESSION_WINDOW);
        let mut put = [0u8; HEADER_BYTES + 8];
        let put_len = encode_put(&mut put, 3, 0x2_0001, &[7; 8]);
        let (seq, len) = session.request(&put[..put_len], &mut envelope).unwrap();
        assert_eq!(len, CLIENT_HEADER_BYTES + 8);
        let n = StateMachine::apply(&mut app, 6, &envelope[..len], &mut reply);
        assert_eq!(
            session::decode_reply(&reply[..n]),
            Ok(Reply::Applied(&1u64.to_le_bytes()[..]))
        );
        assert_eq!(
            app.journal_id(&envelope[..len], &reply[..n]),
            Some(0x2_0001)
        );
        let digest = Application::digest(&app);

        let len = session.retry(seq, &put[..put_len], &mut envelope).unwrap();
        let n = StateMachine::apply(&mut app, 7, &envelope[..len], &mut reply);
        assert_eq!(
            session::decode_reply(&reply[..n]),
            Ok(Reply::Duplicate(&1u64.to_le_bytes()[..]))
        );
        assert_eq!(app.journal_id(&envelope[..len], &reply[..n]), None);
        assert_eq!(app.inner().applied(), 1, "the store applied the put once");
        assert_ne!(
            Application::digest(&app),
            digest,
            "the session's last use moved"
        );

        assert!(!app.inner().read_only(&put[..put_len]));
        let get_len = encode_get(&mut put, 3, 0x2_0002);
        assert!(app.inner().read_only(&put[..get_len]));
    }
}
