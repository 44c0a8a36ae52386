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
//! # Invariants
//! - Capacity never changes after [`Kv::new`]; a put to a new key when the table is full changes
//!   nothing and answers [`FULL`].
//! - A malformed command changes nothing and answers [`MALFORMED`]; correct code never
//!   produces one.
//! - `digest` equals the xor of `entry_hash` over every occupied entry.

use mu_nostd::hash::Hasher;

const TAG_PUT: u8 = 1;
const TAG_GET: u8 = 2;
/// Bytes before a put's value.
pub const HEADER_BYTES: usize = 1 + 8 + 8;
/// Longest value a put may carry.
pub const VALUE_MAX: usize = 4096;
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

/// The store.
pub struct Kv {
    entries: Vec<Entry>,
    values: Vec<u8>,
    digest: u64,
    applied: u64,
}

impl Kv {
    /// A store of `capacity` keys; everything is allocated here.
    pub fn new(capacity: usize) -> Kv {
        assert!(capacity > 0);
        Kv {
            entries: vec![Entry::default(); capacity],
            values: vec![0; capacity * VALUE_MAX],
            digest: 0,
            applied: 0,
        }
    }

    /// The state digest (see the module doc).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Commands applied.
    pub fn applied(&self) -> u64 {
        self.applied
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
        if self.entries[index].used {
            self.digest ^= self.entry_hash(index);
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
}
