//! The replicated key-value store the simulator runs on every replica, and the pure model the
//! history checker replays.
//!
//! Command format (little-endian): tag (1 = put, 2 = get), client `u32`, seq `u32`, key `u8`,
//! for a put the value `u64`, then padding up to the requested size. Padding bytes are derived
//! from (client, seq, index), so a command torn or mixed with another's bytes usually fails to
//! decode.
//!
//! # Invariants
//! - [`Kv::apply`] and the checker both go through [`model_apply`], so they cannot disagree on
//!   what a command does.
//! - A malformed command changes nothing, answers empty, and is counted ([`Kv::malformed`]):
//!   correct code never produces one, so a non-zero count means corrupted bytes were applied.
//! - Every apply is recorded in [`Kv::applied`] in apply order; leader-side outcomes are
//!   recorded in call order until taken.
//! - A snapshot is the map as 64-byte entries (key, value, then padding derived from both), in
//!   key order, so that even this small map spans several of the simulator's chunks: frozen at
//!   `snapshot_begin`, so that applies after it do not change it; an installed snapshot replaces
//!   the map and is recorded in [`Kv::installed`]. Entries that do not parse are skipped (the
//!   digest then differs from the offer's).

use std::collections::BTreeMap;

use mu_nostd::hash::Hasher;
use mu_nostd::state_machine::{Snapshot, StateMachine, Ticket};

const TAG_PUT: u8 = 1;
const TAG_GET: u8 = 2;
/// Bytes of a put without padding: tag, client, seq, key, value.
pub const PUT_BYTES_MIN: usize = 1 + 4 + 4 + 1 + 8;
/// Bytes of a get without padding: tag, client, seq, key.
pub const GET_BYTES_MIN: usize = 1 + 4 + 4 + 1;

/// A decoded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Sets `key` to `value`; answers the previous value.
    Put {
        /// The issuing client.
        client: u32,
        /// The client's sequence number.
        seq: u32,
        /// The key.
        key: u8,
        /// The new value.
        value: u64,
    },
    /// Answers the current value of `key`.
    Get {
        /// The issuing client.
        client: u32,
        /// The client's sequence number.
        seq: u32,
        /// The key.
        key: u8,
    },
}

impl Command {
    /// The issuing client.
    pub fn client(&self) -> u32 {
        match *self {
            Command::Put { client, .. } | Command::Get { client, .. } => client,
        }
    }

    /// The client's sequence number.
    pub fn seq(&self) -> u32 {
        match *self {
            Command::Put { seq, .. } | Command::Get { seq, .. } => seq,
        }
    }
}

/// The padding byte at `index` of a command from (client, seq): deterministic, and different
/// between commands so that bytes of two commands mixed together are noticed.
fn pad_byte(client: u32, seq: u32, index: usize) -> u8 {
    let h = Hasher::new(0x9AD0)
        .word(((client as u64) << 32) | seq as u64)
        .word(index as u64 / 8)
        .finish();
    (h >> ((index % 8) * 8)) as u8
}

fn header(tag: u8, client: u32, seq: u32, key: u8) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(PUT_BYTES_MIN);
    bytes.push(tag);
    bytes.extend_from_slice(&client.to_le_bytes());
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.push(key);
    bytes
}

fn pad(mut bytes: Vec<u8>, client: u32, seq: u32, pad_to: usize) -> Vec<u8> {
    for index in bytes.len()..pad_to {
        bytes.push(pad_byte(client, seq, index));
    }
    bytes
}

/// A put of `value` at `key`, at least `pad_to` bytes long.
pub fn encode_put(client: u32, seq: u32, key: u8, value: u64, pad_to: usize) -> Vec<u8> {
    let mut bytes = header(TAG_PUT, client, seq, key);
    bytes.extend_from_slice(&value.to_le_bytes());
    pad(bytes, client, seq, pad_to)
}

/// A get of `key`, at least `pad_to` bytes long.
pub fn encode_get(client: u32, seq: u32, key: u8, pad_to: usize) -> Vec<u8> {
    pad(header(TAG_GET, client, seq, key), client, seq, pad_to)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Decodes a command; `None` for anything [`encode_put`] or [`encode_get`] cannot produce.
pub fn decode(bytes: &[u8]) -> Option<Command> {
    let min = match *bytes.first()? {
        TAG_PUT => PUT_BYTES_MIN,
        TAG_GET => GET_BYTES_MIN,
        _ => return None,
    };
    if bytes.len() < min {
        return None;
    }
    let (client, seq, key) = (u32_at(bytes, 1), u32_at(bytes, 5), bytes[9]);
    let padding_ok = (min..bytes.len()).all(|i| bytes[i] == pad_byte(client, seq, i));
    if !padding_ok {
        return None;
    }
    Some(if bytes[0] == TAG_PUT {
        Command::Put {
            client,
            seq,
            key,
            value: u64_at(bytes, 10),
        }
    } else {
        Command::Get { client, seq, key }
    })
}

fn value_bytes(value: Option<u64>) -> Vec<u8> {
    value.map(|v| v.to_le_bytes().to_vec()).unwrap_or_default()
}

/// What `command` does to `map`, and its response: a put answers the previous value, a get the
/// current one (8 bytes little-endian, or empty when absent); a malformed command does nothing
/// and answers empty.
pub fn model_apply(map: &mut BTreeMap<u8, u64>, command: &[u8]) -> Vec<u8> {
    match decode(command) {
        Some(Command::Put { key, value, .. }) => value_bytes(map.insert(key, value)),
        Some(Command::Get { key, .. }) => value_bytes(map.get(&key).copied()),
        None => Vec::new(),
    }
}

/// Bytes of one entry of a snapshot.
const SNAPSHOT_ENTRY: usize = 64;

/// One entry of a snapshot: key, value, then padding derived from both.
fn snapshot_entry(key: u8, value: u64) -> [u8; SNAPSHOT_ENTRY] {
    let mut entry = [0u8; SNAPSHOT_ENTRY];
    entry[0] = key;
    entry[1..9].copy_from_slice(&value.to_le_bytes());
    for (index, byte) in entry.iter_mut().enumerate().skip(9) {
        *byte = pad_byte(key as u32, value as u32, index);
    }
    entry
}

/// A leader-side outcome reported by the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command of `ticket` was decided at `position` and answered `response`.
    Committed {
        /// The ticket the driver got when submitting.
        ticket: u64,
        /// Where it was decided.
        position: u64,
        /// Its response.
        response: Vec<u8>,
    },
    /// The leader stopped leading before deciding it; it may or may not be decided later.
    Dropped {
        /// The ticket the driver got when submitting.
        ticket: u64,
    },
}

/// The replicated key-value state machine of one replica.
#[derive(Clone, Debug, Default)]
pub struct Kv {
    map: BTreeMap<u8, u64>,
    applied: Vec<(u64, Vec<u8>)>,
    outcomes: Vec<Outcome>,
    malformed: u64,
    frozen: Option<Vec<u8>>,
    incoming: Vec<u8>,
    installed: Vec<u64>,
}

impl Kv {
    /// An empty store.
    pub fn new() -> Kv {
        Kv::default()
    }

    /// The current contents.
    pub fn map(&self) -> &BTreeMap<u8, u64> {
        &self.map
    }

    /// Every applied command with its position, in apply order.
    pub fn applied(&self) -> &[(u64, Vec<u8>)] {
        &self.applied
    }

    /// The positions of the snapshots installed, in order.
    pub fn installed(&self) -> &[u64] {
        &self.installed
    }

    /// How many malformed commands were applied.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// A digest of the contents; equal maps give equal digests on every replica.
    pub fn digest(&self) -> u64 {
        // BTreeMap iterates in key order, so the digest does not depend on insertion order.
        let hasher = Hasher::new(0x4B56).word(self.map.len() as u64);
        self.map
            .iter()
            .fold(hasher, |h, (&key, &value)| h.word(key as u64).word(value))
            .finish()
    }

    /// The leader-side outcomes recorded since the last call.
    pub fn take_outcomes(&mut self) -> Vec<Outcome> {
        std::mem::take(&mut self.outcomes)
    }
}

impl StateMachine for Kv {
    fn apply(&mut self, position: u64, command: &[u8], response: &mut [u8]) -> usize {
        if decode(command).is_none() {
            self.malformed += 1;
        }
        self.applied.push((position, command.to_vec()));
        let answer = model_apply(&mut self.map, command);
        let len = answer.len().min(response.len());
        response[..len].copy_from_slice(&answer[..len]);
        len
    }

    fn committed(&mut self, ticket: Ticket, position: u64, response: &[u8]) {
        self.outcomes.push(Outcome::Committed {
            ticket,
            position,
            response: response.to_vec(),
        });
    }

    fn dropped(&mut self, ticket: Ticket) {
        self.outcomes.push(Outcome::Dropped { ticket });
    }

    fn snapshot_begin(&mut self, _position: u64) -> Option<Snapshot> {
        let mut bytes = Vec::with_capacity(self.map.len() * SNAPSHOT_ENTRY);
        for (&key, &value) in &self.map {
            bytes.extend_from_slice(&snapshot_entry(key, value));
        }
        let snapshot = Snapshot {
            bytes: bytes.len() as u64,
            digest: self.digest(),
        };
        self.frozen = Some(bytes);
        Some(snapshot)
    }

    fn snapshot_read(&mut self, offset: u64, buf: &mut [u8]) {
        let frozen = self.frozen.as_ref().expect("a snapshot is frozen");
        let at = offset as usize;
        buf.copy_from_slice(&frozen[at..at + buf.len()]);
    }

    fn snapshot_end(&mut self) {
        self.frozen = None;
    }

    fn install_begin(&mut self, position: u64, bytes: u64) -> bool {
        self.incoming = Vec::with_capacity(bytes as usize);
        self.installed.push(position);
        true
    }

    fn install_write(&mut self, offset: u64, bytes: &[u8]) {
        assert_eq!(
            offset as usize,
            self.incoming.len(),
            "in order, without gaps"
        );
        self.incoming.extend_from_slice(bytes);
    }

    fn install_end(&mut self) -> u64 {
        let incoming = std::mem::take(&mut self.incoming);
        self.map.clear();
        for entry in incoming.chunks(SNAPSHOT_ENTRY) {
            let key = entry[0];
            let value = u64::from_le_bytes(entry[1..9].try_into().expect("9 bytes"));
            if entry == snapshot_entry(key, value).as_slice() {
                self.map.insert(key, value);
            }
        }
        self.digest()
    }

    fn install_abandon(&mut self) {
        self.incoming.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_at_any_size() {
        for pad_to in [0, PUT_BYTES_MIN, 100, 1000] {
            let put = encode_put(3, 9, 7, 0xDEAD_BEEF, pad_to);
            assert_eq!(put.len(), pad_to.max(PUT_BYTES_MIN));
            assert_eq!(
                decode(&put),
                Some(Command::Put {
                    client: 3,
                    seq: 9,
                    key: 7,
                    value: 0xDEAD_BEEF
                })
            );
            let get = encode_get(4, 1, 2, pad_to);
            assert_eq!(get.len(), pad_to.max(GET_BYTES_MIN));
            assert_eq!(
                decode(&get),
                Some(Command::Get {
                    client: 4,
                    seq: 1,
                    key: 2
                })
            );
        }
    }

    #[test]
    fn corrupted_commands_do_not_decode() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[9; 20]), None);
        let put = encode_put(1, 2, 3, 4, 64);
        assert_eq!(decode(&put[..PUT_BYTES_MIN - 1]), None);
        let mut torn = put.clone();
        torn[40] ^= 0x10;
        assert_eq!(decode(&torn), None);
        // Padding of another command does not fit this one's header.
        let mut mixed = encode_put(1, 3, 3, 4, 64);
        mixed[..PUT_BYTES_MIN].copy_from_slice(&put[..PUT_BYTES_MIN]);
        assert_ne!(mixed, put);
        assert_eq!(decode(&mixed), None);
    }

    #[test]
    fn model_answers_previous_and_current_values() {
        let mut map = BTreeMap::new();
        assert_eq!(
            model_apply(&mut map, &encode_get(1, 1, 5, 0)),
            Vec::<u8>::new()
        );
        assert_eq!(
            model_apply(&mut map, &encode_put(1, 2, 5, 10, 0)),
            Vec::<u8>::new()
        );
        assert_eq!(
            model_apply(&mut map, &encode_put(1, 3, 5, 11, 0)),
            10u64.to_le_bytes()
        );
        assert_eq!(
            model_apply(&mut map, &encode_get(2, 1, 5, 40)),
            11u64.to_le_bytes()
        );
        assert_eq!(model_apply(&mut map, b"junk"), Vec::<u8>::new());
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn kv_records_applies_outcomes_and_malformed_commands() {
        let mut kv = Kv::new();
        let mut response = [0u8; 16];
        assert_eq!(kv.apply(0, &encode_put(1, 1, 1, 5, 0), &mut response), 0);
        assert_eq!(kv.apply(3, &encode_put(1, 2, 1, 6, 200), &mut response), 8);
        assert_eq!(response[..8], 5u64.to_le_bytes());
        assert_eq!(kv.apply(4, b"garbage", &mut response), 0);
        assert_eq!(kv.malformed(), 1);
        assert_eq!(kv.applied().len(), 3);
        assert_eq!(kv.applied()[1].0, 3);
        kv.committed(7, 3, &response[..8]);
        kv.dropped(8);
        let outcomes = kv.take_outcomes();
        assert_eq!(
            outcomes,
            vec![
                Outcome::Committed {
                    ticket: 7,
                    position: 3,
                    response: 5u64.to_le_bytes().to_vec()
                },
                Outcome::Dropped { ticket: 8 },
            ]
        );
        assert!(kv.take_outcomes().is_empty());
    }

    #[test]
    fn digest_depends_on_contents_only() {
        let mut a = Kv::new();
        let mut b = Kv::new();
        let mut r = [0u8; 8];
        a.apply(0, &encode_put(1, 1, 1, 10, 0), &mut r);
        a.apply(1, &encode_put(1, 2, 2, 20, 0), &mut r);
        b.apply(0, &encode_put(2, 1, 2, 20, 0), &mut r);
        b.apply(1, &encode_put(2, 2, 1, 10, 0), &mut r);
        assert_eq!(a.digest(), b.digest());
        b.apply(2, &encode_put(2, 3, 1, 11, 0), &mut r);
        assert_ne!(a.digest(), b.digest());
        assert_ne!(Kv::new().digest(), a.digest());
    }
}
