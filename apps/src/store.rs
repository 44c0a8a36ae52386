//! The key-value store that `mu serve` replicates: Redis string commands with expiry, as a
//! [`StateMachine`] in memory the embedder lends once.
//!
//! # Commands
//!
//! A replicated command is a parsed Redis command plus the proposer's clock, in a compact binary
//! form (little-endian): `[time_ms u64][opcode u8][argc u16]` then `argc` times
//! `[len u32][bytes]`, the arguments after the command name ([`encode`], [`encode_resp`],
//! [`decode`]). Options (`EX`, `NX`, ...) stay arguments: the store reads them when it applies,
//! so every replica validates them identically and the proposer needs no Redis knowledge beyond
//! the command's name.
//!
//! Supported ([`Opcode`]): `GET`, `SET` (`NX`, `XX`, `GET`, `EX`, `PX`, `EXAT`, `PXAT`,
//! `KEEPTTL`, with Redis 7's conflicts and checks), `DEL`, `EXISTS`, `INCR`, `INCRBY`, `DECR`,
//! `DECRBY`, `MSET`, `MGET`, `APPEND`, `STRLEN`, `DBSIZE`, `FLUSHALL` (and `FLUSHDB`, the same
//! with one database; `ASYNC`/`SYNC` accepted), `TTL`, `PTTL`. `apply` writes the reply as RESP
//! bytes, as Redis words it (`+OK`, `$-1`, `:1`, `*N`, its error texts), so the server copies it to
//! the socket unchanged. Where the store has limits Redis lacks, the texts are:
//! - no free slot for a key a command would add: Redis's `-OOM command not allowed when used
//!   memory > 'maxmemory'.`, nothing changed (Redis refuses any write once over `maxmemory`; this
//!   store refuses only what would add a key);
//! - a value over [`Config::value_max`] (`SET`, `MSET`, or what `APPEND` would make): Redis's
//!   `-ERR string exceeds maximum allowed size (proto-max-bulk-len)`, nothing changed;
//! - a key over [`Config::key_max`] that a command would store: `-ERR key exceeds maximum
//!   allowed size`, nothing changed (a read of such a key finds nothing, as none can exist);
//! - a reply longer than `apply`'s response buffer (an `MGET` of many long values, a `SET ... GET`
//!   of one): [`REPLY_TOO_LONG`] instead, the command's changes made all the same (the state
//!   cannot depend on a buffer the other replicas do not share); an empty response when even that
//!   does not fit, so give `apply` at least [`RESPONSE_MIN`] bytes;
//! - a command that does not decode: `-ERR malformed replicated command`, nothing changed (the
//!   clock included).
//!
//! # Time and expiry
//!
//! The store keeps a logical clock: each command sets `now = max(now, time_ms)`, so the replicas
//! agree on it and it never goes back. A key with expiry `t` is live while `now <= t` (Redis's
//! `keyIsExpired`), and a `SET` whose expiry would already be reached (`t <= now`, as in Redis's
//! `checkAlreadyExpired`) deletes the key instead.
//!
//! Each command, once it has moved the clock, removes every key the clock expired, earliest first,
//! from a min-heap of the keys with an expiry (O(log keys) per key removed; each key expires once,
//! but one command may remove many, up to every key, when they all expire together). So what is
//! stored is exactly what is live, and everything depends only on the live keys and the clock:
//! replies, `DBSIZE` (O(1)), the OOM decision, snapshots, and [`Store::digest`]. Redis removes
//! expired keys lazily (on access, plus a sampled sweep); its replies are the same, since it also
//! never shows an expired key. Removing them here lazily or by a cursor sweep would make the set of
//! keys still held depend on each replica's memory layout (which slot a key got), which differs
//! after a state transfer, and with it `DBSIZE`, the OOM decision and the digest that the runtime
//! compares across replicas.
//!
//! # Memory
//!
//! [`Store::new`] takes one byte arena of [`Config::arena_bytes`] and the [`Config`]: `keys`
//! slots of `key_max + value_max` bytes each (a key and its value, in place, so `APPEND` and
//! `INCR` never move anything), their metadata, a hash index (open addressing with linear probing,
//! at most half full, backward-shift deletion: no tombstones), a stack of free slots, the expiry
//! heap, and the snapshot's copy-on-write shadow (a second copy of the slots and metadata) and
//! view: about `2 * keys * (key_max + value_max + 24) + 41 * keys` bytes. Nothing allocates after
//! `new`.
//!
//! # Snapshots (state transfer)
//!
//! Stream format (little-endian): `[now u64][records u64]`, then one record per live key when the
//! snapshot began, in slot order: `[key_len u32][value_len u32][expiry u64 (0: none)][key][value]`.
//! The digest is [`Store::digest`]: the xor of one hash per live entry (key, value, expiry), so
//! order and layout do not matter, mixed with a hash of `now`.
//!
//! The donor freezes its state copy-on-write, as `runtime-linux/src/kv.rs` does, rather than
//! copying it whole at begin: the same memory (a shadow as large as the slots) but no pause that
//! grows with the data, and the donor keeps applying at full speed. [`Store::snapshot_begin`]
//! lists the used slots (all live) with each record's stream offset (O(keys), no value copied); the first write to a listed slot while the snapshot is open first
//! saves that slot's metadata, key and value to its own shadow slot. Deleting needs no save: it
//! only unlinks the slot from the index and pushes it on the free stack, and the next write to it,
//! whatever key it then holds, saves it first. [`Store::snapshot_read`] serves a saved slot from
//! the shadow and any other from the live slots.
//!
//! The joiner empties itself at [`Store::install_begin`] and decodes records as the pieces come,
//! writing keys and values straight into free slots; an entry joins the index and the digest only
//! once its record is complete. A stream that does not decode is installed as far as it does
//! (lengths over the joiner's limits, pieces out of order or past the announced length stop it; a
//! repeated key or a record that finds no free slot is skipped), and [`Store::install_end`]
//! answers the digest of what got installed, which then differs from the donor's. Joiners need not
//! have the donor's [`Config`], only room for its entries.
//!
//! # Invariants
//! - `stored` counts the used slots, `volatile` those with an expiry, and `stored + free = keys`;
//!   every used slot is in the index exactly once, under its key, and no two hold one key.
//! - The heap holds exactly the used slots with an expiry, each at the position it records, each
//!   expiring no earlier than its parent.
//! - Once a command has moved the clock, no stored key is expired (`now <= expiry` for all).
//! - The index is at most half full, so every probe ends at an empty bucket.
//! - `entries_digest` is the xor of the stored `hash` of every used slot, and each stored `hash`
//!   is `entry_hash` of the slot's key, value and expiry.
//! - `now` never decreases while commands apply (an install replaces it).
//! - A command that answers an error changes nothing but the clock (and what the clock expired).
//! - Nothing a command observes, nor the digest, depends on the layout: slots, index, heap.
//! - While a snapshot is open, the bytes of its stream never change whatever is applied: a listed
//!   slot is unchanged since begin or saved in the shadow.
//! - A snapshot and an install never overlap: beginning one ends the other.
//! - No input (commands, stream bytes, offsets) panics, and work per command is bounded (see
//!   [`Store::apply`]).

use crate::resp::{self, EncodeError, Writer};
use mu_nostd::hash::Hasher;
use mu_nostd::{Snapshot, StateMachine};

/// Most arguments (after the command name) a replicated command carries.
pub const ARGS_MAX: usize = 128;
/// Bytes before the first argument: time, opcode, argument count.
pub const COMMAND_HEADER_BYTES: usize = 8 + 1 + 2;
/// Bytes before each argument's bytes: its length.
const ARG_HEADER_BYTES: usize = 4;
/// Bytes of a stream's header: `now`, records.
const STREAM_HEADER_BYTES: usize = 16;
/// Bytes before a record's key: key length, value length, expiry.
const RECORD_HEADER_BYTES: usize = 16;
/// Bytes of one slot's metadata: key length, value length, expiry, entry hash.
const META_BYTES: usize = 24;
/// Bytes of one index bucket: slot + 1 (0: empty), key tag.
const BUCKET_BYTES: usize = 8;
/// Most keys a store holds: slot numbers and the index must fit `u32`.
pub const KEYS_MAX: usize = 1 << 30;
/// The reply that replaces one longer than the response buffer.
pub const REPLY_TOO_LONG: &[u8] = b"-ERR reply does not fit the response buffer\r\n";
const ERR_REPLY_TOO_LONG: &[u8] = b"ERR reply does not fit the response buffer";
/// Response bytes `apply` needs for every error reply to fit (the longest is
/// `-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n`, 63 bytes).
pub const RESPONSE_MIN: usize = 64;

const ENTRY_DOMAIN: u64 = 0x5245_5350_454E_5452;
const CLOCK_DOMAIN: u64 = 0x5245_5350_434C_4F43;
const KEY_DOMAIN: u64 = 0x5245_5350_4B45_5953;

const USED: u8 = 1;
/// The slot is in the open snapshot's view.
const LISTED: u8 = 2;
/// The slot's begin-time content is in the shadow.
const SAVED: u8 = 4;

const ERR_SYNTAX: &[u8] = b"ERR syntax error";
const ERR_NOT_INTEGER: &[u8] = b"ERR value is not an integer or out of range";
const ERR_OVERFLOW: &[u8] = b"ERR increment or decrement would overflow";
const ERR_DECREMENT_OVERFLOW: &[u8] = b"ERR decrement would overflow";
const ERR_EXPIRE: &[u8] = b"ERR invalid expire time in 'set' command";
const ERR_OOM: &[u8] = b"OOM command not allowed when used memory > 'maxmemory'.";
const ERR_VALUE_TOO_LONG: &[u8] = b"ERR string exceeds maximum allowed size (proto-max-bulk-len)";
const ERR_KEY_TOO_LONG: &[u8] = b"ERR key exceeds maximum allowed size";
const ERR_MALFORMED: &[u8] = b"ERR malformed replicated command";

// ---- commands ----------------------------------------------------------------------------------

macro_rules! opcodes {
    ($($name:ident = $value:literal, $text:literal, $min:literal, $max:expr, $read:literal;)*) => {
        /// A command the store applies; its byte in the replicated format.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        #[repr(u8)]
        pub enum Opcode {
            $(
                #[doc = concat!("`", $text, "`")]
                $name = $value,
            )*
        }

        impl Opcode {
            /// Every opcode.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name),*];

            /// The opcode of a replicated command's byte.
            pub fn from_u8(byte: u8) -> Option<Opcode> {
                match byte {
                    $($value => Some(Opcode::$name),)*
                    _ => None,
                }
            }

            /// The command's name in lower case, as Redis's error texts quote it.
            pub fn name(self) -> &'static str {
                match self {
                    $(Opcode::$name => $text,)*
                }
            }

            /// Arguments after the name it takes: at least, at most (Redis's arity).
            fn arity(self) -> (usize, usize) {
                match self {
                    $(Opcode::$name => ($min, $max),)*
                }
            }

            /// True for commands that change nothing a later command can observe (but the
            /// clock): a retry may apply them again instead of replaying a cached reply.
            pub fn is_read_only(self) -> bool {
                match self {
                    $(Opcode::$name => $read,)*
                }
            }
        }
    };
}

opcodes! {
    Get = 1, "get", 1, 1, true;
    Set = 2, "set", 2, ARGS_MAX, false;
    Del = 3, "del", 1, ARGS_MAX, false;
    Exists = 4, "exists", 1, ARGS_MAX, true;
    Incr = 5, "incr", 1, 1, false;
    IncrBy = 6, "incrby", 2, 2, false;
    Decr = 7, "decr", 1, 1, false;
    DecrBy = 8, "decrby", 2, 2, false;
    MSet = 9, "mset", 2, ARGS_MAX, false;
    MGet = 10, "mget", 1, ARGS_MAX, true;
    Append = 11, "append", 2, 2, false;
    StrLen = 12, "strlen", 1, 1, true;
    DbSize = 13, "dbsize", 0, 0, true;
    FlushAll = 14, "flushall", 0, ARGS_MAX, false;
    Ttl = 15, "ttl", 1, 1, true;
    PTtl = 16, "pttl", 1, 1, true;
}

impl Opcode {
    /// The opcode of a command name, in any case (`FLUSHDB` is `FLUSHALL`: one database).
    pub fn from_name(name: &[u8]) -> Option<Opcode> {
        if name.eq_ignore_ascii_case(b"flushdb") {
            return Some(Opcode::FlushAll);
        }
        Opcode::ALL
            .iter()
            .copied()
            .find(|op| name.eq_ignore_ascii_case(op.name().as_bytes()))
    }
}

/// Why a command was not encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CommandError {
    /// Not a command this store knows (reply Redis's `unknown command` without proposing it).
    UnknownCommand,
    /// More than [`ARGS_MAX`] arguments after the name.
    TooManyArgs,
    /// An argument longer than `u32::MAX` bytes.
    ArgTooLong,
    /// The output buffer has `room` bytes; the command needs `needed`.
    NoRoom {
        /// Bytes the command needs.
        needed: usize,
        /// Bytes the buffer has.
        room: usize,
    },
    /// The bytes are not a replicated command.
    Malformed {
        /// What was wrong.
        why: &'static str,
    },
}

/// Bytes [`encode`] writes for `args`.
pub fn encoded_len<'x>(args: impl IntoIterator<Item = &'x [u8]>) -> usize {
    args.into_iter().fold(COMMAND_HEADER_BYTES, |sum, arg| {
        sum.saturating_add(ARG_HEADER_BYTES + arg.len())
    })
}

fn encode_iter<'x, I>(
    opcode: Opcode,
    args: I,
    time_ms: u64,
    out: &mut [u8],
) -> Result<usize, CommandError>
where
    I: Iterator<Item = &'x [u8]> + Clone,
{
    let count = args.clone().count();
    if count > ARGS_MAX {
        return Err(CommandError::TooManyArgs);
    }
    if args.clone().any(|arg| u32::try_from(arg.len()).is_err()) {
        return Err(CommandError::ArgTooLong);
    }
    let needed = encoded_len(args.clone());
    if needed > out.len() {
        return Err(CommandError::NoRoom {
            needed,
            room: out.len(),
        });
    }
    out[..8].copy_from_slice(&time_ms.to_le_bytes());
    out[8] = opcode as u8;
    out[9..11].copy_from_slice(&(count as u16).to_le_bytes());
    let mut at = COMMAND_HEADER_BYTES;
    for arg in args.clone() {
        out[at..at + 4].copy_from_slice(&(arg.len() as u32).to_le_bytes());
        out[at + 4..at + 4 + arg.len()].copy_from_slice(arg);
        at += 4 + arg.len();
    }
    assert_eq!(at, needed);
    // The round trip: what was written decodes to what was given.
    debug_assert!(decode(&out[..at]).is_ok_and(|decoded| {
        decoded.time_ms == time_ms
            && decoded.opcode == opcode
            && decoded.len() == count
            && decoded.args().zip(args).all(|(a, b)| a == b)
    }));
    Ok(at)
}

/// Encodes `opcode` with `args` (after the command name) proposed at `time_ms` into `out`;
/// returns its length.
pub fn encode(
    opcode: Opcode,
    args: &[&[u8]],
    time_ms: u64,
    out: &mut [u8],
) -> Result<usize, CommandError> {
    encode_iter(opcode, args.iter().copied(), time_ms, out)
}

/// Encodes a command as [`resp::parse`] gave it (`args` ranges into `input`, the name first)
/// proposed at `time_ms` into `out`; returns its length.
pub fn encode_resp<const N: usize>(
    input: &[u8],
    args: &resp::Args<N>,
    time_ms: u64,
    out: &mut [u8],
) -> Result<usize, CommandError> {
    let name = args.get(0, input).ok_or(CommandError::UnknownCommand)?;
    let opcode = Opcode::from_name(name).ok_or(CommandError::UnknownCommand)?;
    if args
        .ranges()
        .iter()
        .any(|&(start, len)| start.checked_add(len).is_none_or(|end| end > input.len()))
    {
        return Err(CommandError::Malformed {
            why: "argument ranges outside the input",
        });
    }
    encode_iter(opcode, args.iter(input).skip(1), time_ms, out)
}

/// A decoded replicated command, borrowing the bytes it was decoded from.
#[derive(Clone, Copy, Debug)]
pub struct Decoded<'c> {
    /// The proposer's clock, in milliseconds.
    pub time_ms: u64,
    /// The command.
    pub opcode: Opcode,
    command: &'c [u8],
    /// `(start, len)` of each argument in `command`.
    ranges: [(u32, u32); ARGS_MAX],
    count: usize,
}

impl<'c> Decoded<'c> {
    /// Arguments after the name.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Argument `i` after the name (empty past the last).
    pub fn arg(&self, i: usize) -> &'c [u8] {
        let Some(&(start, len)) = self.ranges[..self.count].get(i) else {
            return &[];
        };
        let command: &'c [u8] = self.command;
        command
            .get(start as usize..start as usize + len as usize)
            .unwrap_or(&[])
    }

    /// The arguments after the name.
    pub fn args(&self) -> impl Iterator<Item = &'c [u8]> + '_ {
        (0..self.count).map(|i| self.arg(i))
    }
}

/// Decodes a replicated command (see the module doc).
pub fn decode(command: &[u8]) -> Result<Decoded<'_>, CommandError> {
    let malformed = |why| CommandError::Malformed { why };
    if command.len() < COMMAND_HEADER_BYTES {
        return Err(malformed("shorter than its header"));
    }
    if u32::try_from(command.len()).is_err() {
        return Err(malformed("longer than 4 GiB"));
    }
    let time_ms = u64::from_le_bytes(command[..8].try_into().unwrap_or([0; 8]));
    let opcode = Opcode::from_u8(command[8]).ok_or(malformed("unknown opcode"))?;
    let count = u16::from_le_bytes([command[9], command[10]]) as usize;
    if count > ARGS_MAX {
        return Err(CommandError::TooManyArgs);
    }
    let mut ranges = [(0u32, 0u32); ARGS_MAX];
    let mut at = COMMAND_HEADER_BYTES;
    for range in ranges.iter_mut().take(count) {
        let Some(header) = command.get(at..at + ARG_HEADER_BYTES) else {
            return Err(malformed("argument header past the end"));
        };
        let len = u32::from_le_bytes(header.try_into().unwrap_or([0; 4])) as usize;
        let start = at + ARG_HEADER_BYTES;
        if len > command.len() - start {
            return Err(malformed("argument past the end"));
        }
        *range = (start as u32, len as u32);
        at = start + len;
    }
    if at != command.len() {
        return Err(malformed("bytes after the last argument"));
    }
    Ok(Decoded {
        time_ms,
        opcode,
        command,
        ranges,
        count,
    })
}

/// True when `command` (a replicated command) is read-only (see [`Opcode::is_read_only`]);
/// false when it does not decode.
pub fn is_read_only(command: &[u8]) -> bool {
    decode(command).is_ok_and(|decoded| decoded.opcode.is_read_only())
}

/// Redis's `string2ll`: an optional `-`, digits without a leading zero, within `i64`.
fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 19 || (digits[0] == b'0' && digits.len() > 1) {
        return None;
    }
    let mut magnitude: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude * 10 + u64::from(digit - b'0');
    }
    if negative {
        if magnitude == 0 || magnitude > i64::MAX as u64 + 1 {
            return None;
        }
        Some(0i64.wrapping_sub_unsigned(magnitude))
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Decimal digits of `value`.
fn format_i64(value: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut magnitude = value.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    if value < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

// ---- the store ---------------------------------------------------------------------------------

/// A store's fixed capacities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config {
    /// Keys it holds (1 to [`KEYS_MAX`]).
    pub keys: usize,
    /// Longest key, in bytes (at least 1).
    pub key_max: usize,
    /// Longest value, in bytes (at least 20, so that every `INCR` result fits).
    pub value_max: usize,
}

/// Why a store was not built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConfigError {
    /// `keys` is 0 or over [`KEYS_MAX`], `key_max` is 0 or `value_max` under 20.
    Invalid,
    /// The arena's size overflows `usize`.
    TooLarge,
    /// The arena has `got` bytes; the configuration needs `needed`.
    ArenaTooSmall {
        /// Bytes the configuration needs.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
}

/// The sizes of the arena's parts, in arena order.
#[derive(Clone, Copy)]
struct Layout {
    stride: usize,
    buckets: usize,
    parts: [usize; 11],
}

impl Config {
    fn layout(&self) -> Result<Layout, ConfigError> {
        if self.keys == 0 || self.keys > KEYS_MAX || self.key_max == 0 || self.value_max < 20 {
            return Err(ConfigError::Invalid);
        }
        let stride = self
            .key_max
            .checked_add(self.value_max)
            .ok_or(ConfigError::TooLarge)?;
        let data = self.keys.checked_mul(stride).ok_or(ConfigError::TooLarge)?;
        let buckets = (2 * self.keys).next_power_of_two();
        let keys = self.keys;
        // meta, data, shadow meta, shadow data, flags, index, free stack, view, offsets, expiry
        // heap, heap positions.
        let parts = [
            keys * META_BYTES,
            data,
            keys * META_BYTES,
            data,
            keys,
            buckets * BUCKET_BYTES,
            keys * 4,
            keys * 4,
            (keys + 1) * 8,
            keys * 4,
            keys * 4,
        ];
        parts
            .iter()
            .try_fold(0usize, |sum, &part| sum.checked_add(part))
            .ok_or(ConfigError::TooLarge)?;
        Ok(Layout {
            stride,
            buckets,
            parts,
        })
    }

    /// Bytes of the arena [`Store::new`] needs.
    pub fn arena_bytes(&self) -> Result<usize, ConfigError> {
        Ok(self.layout()?.parts.iter().sum())
    }
}

/// One slot's metadata.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Meta {
    key_len: u32,
    value_len: u32,
    /// Milliseconds of the store's clock; 0: none.
    expiry: u64,
    /// `entry_hash` of the slot's entry.
    hash: u64,
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]))
}

impl Meta {
    fn read(metas: &[u8], slot: usize) -> Meta {
        let at = slot * META_BYTES;
        Meta {
            key_len: read_u32(metas, at),
            value_len: read_u32(metas, at + 4),
            expiry: read_u64(metas, at + 8),
            hash: read_u64(metas, at + 16),
        }
    }

    fn write(self, metas: &mut [u8], slot: usize) {
        let at = slot * META_BYTES;
        metas[at..at + 4].copy_from_slice(&self.key_len.to_le_bytes());
        metas[at + 4..at + 8].copy_from_slice(&self.value_len.to_le_bytes());
        metas[at + 8..at + 16].copy_from_slice(&self.expiry.to_le_bytes());
        metas[at + 16..at + 24].copy_from_slice(&self.hash.to_le_bytes());
    }

    fn record_header(self) -> [u8; RECORD_HEADER_BYTES] {
        let mut header = [0; RECORD_HEADER_BYTES];
        header[..4].copy_from_slice(&self.key_len.to_le_bytes());
        header[4..8].copy_from_slice(&self.value_len.to_le_bytes());
        header[8..].copy_from_slice(&self.expiry.to_le_bytes());
        header
    }
}

fn entry_hash(key: &[u8], value: &[u8], expiry: u64) -> u64 {
    Hasher::new(ENTRY_DOMAIN)
        .bytes(key)
        .bytes(value)
        .word(expiry)
        .finish()
}

fn key_tag(key: &[u8]) -> u32 {
    (Hasher::new(KEY_DOMAIN).bytes(key).finish() >> 32) as u32
}

/// Where a key is in the index, or where it would go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    Found { bucket: usize, slot: usize },
    Vacant { bucket: usize },
}

/// The donor's open snapshot.
#[derive(Clone, Copy, Debug)]
struct Freeze {
    open: bool,
    /// Records in the view.
    len: usize,
    now: u64,
    bytes: u64,
}

/// What the joiner decodes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    StreamHeader,
    RecordHeader,
    /// A record's key and value bytes into `slot` (`None`: skipped), `filled` so far.
    Body {
        meta: Meta,
        slot: Option<usize>,
        filled: usize,
    },
}

/// The joiner's decoding state between `install_begin` and `install_end`.
#[derive(Clone, Copy, Debug)]
struct Install {
    active: bool,
    stopped: bool,
    total: u64,
    next: u64,
    phase: Phase,
    header: [u8; STREAM_HEADER_BYTES],
    header_fill: usize,
    /// Records the stream header announced, and those decoded so far.
    records: u64,
    decoded: u64,
}

impl Install {
    const IDLE: Install = Install {
        active: false,
        stopped: false,
        total: 0,
        next: 0,
        phase: Phase::StreamHeader,
        header: [0; STREAM_HEADER_BYTES],
        header_fill: 0,
        records: 0,
        decoded: 0,
    };
}

/// SET's options.
#[derive(Clone, Copy, Default)]
struct SetOptions<'c> {
    nx: bool,
    xx: bool,
    get: bool,
    keep_ttl: bool,
    /// The expire argument, in seconds or not, absolute or not.
    expire: Option<(&'c [u8], bool, bool)>,
}

/// The replicated store (see the module doc).
pub struct Store<'a> {
    config: Config,
    stride: usize,
    mask: usize,
    metas: &'a mut [u8],
    data: &'a mut [u8],
    shadow_metas: &'a mut [u8],
    shadow_data: &'a mut [u8],
    flags: &'a mut [u8],
    index: &'a mut [u8],
    free: &'a mut [u8],
    free_len: usize,
    view: &'a mut [u8],
    offsets: &'a mut [u8],
    /// A binary min-heap of the slots with an expiry, by expiry; its first `volatile` count.
    heap: &'a mut [u8],
    /// Each slot's index in the heap plus one (0: not in it).
    positions: &'a mut [u8],
    stored: usize,
    volatile: usize,
    now: u64,
    entries_digest: u64,
    freeze: Freeze,
    install: Install,
}

impl core::fmt::Debug for Store<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Store")
            .field("config", &self.config)
            .field("stored", &self.stored)
            .field("now", &self.now)
            .field("digest", &self.digest())
            .finish()
    }
}

impl<'a> Store<'a> {
    /// A store of `config`'s capacities in `arena` (at least [`Config::arena_bytes`] bytes; the
    /// rest is left alone). Initialising it costs O(keys); nothing allocates later.
    pub fn new(arena: &'a mut [u8], config: Config) -> Result<Store<'a>, ConfigError> {
        let layout = config.layout()?;
        let needed: usize = layout.parts.iter().sum();
        if arena.len() < needed {
            return Err(ConfigError::ArenaTooSmall {
                needed,
                got: arena.len(),
            });
        }
        let [metas, data, shadow_metas, shadow_data, flags, index, free, view, offsets, heap, positions] =
            layout.parts;
        let (metas, rest) = arena.split_at_mut(metas);
        let (data, rest) = rest.split_at_mut(data);
        let (shadow_metas, rest) = rest.split_at_mut(shadow_metas);
        let (shadow_data, rest) = rest.split_at_mut(shadow_data);
        let (flags, rest) = rest.split_at_mut(flags);
        let (index, rest) = rest.split_at_mut(index);
        let (free, rest) = rest.split_at_mut(free);
        let (view, rest) = rest.split_at_mut(view);
        let (offsets, rest) = rest.split_at_mut(offsets);
        let (heap, rest) = rest.split_at_mut(heap);
        let (positions, _) = rest.split_at_mut(positions);
        let mut store = Store {
            config,
            stride: layout.stride,
            mask: layout.buckets - 1,
            metas,
            data,
            shadow_metas,
            shadow_data,
            flags,
            index,
            free,
            free_len: 0,
            view,
            offsets,
            heap,
            positions,
            stored: 0,
            volatile: 0,
            now: 0,
            entries_digest: 0,
            freeze: Freeze {
                open: false,
                len: 0,
                now: 0,
                bytes: 0,
            },
            install: Install::IDLE,
        };
        store.flags.fill(0);
        store.clear();
        Ok(store)
    }

    /// Its capacities.
    pub fn config(&self) -> Config {
        self.config
    }

    /// The logical clock, in milliseconds.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Keys held (what `DBSIZE` answers): all live, as each command first removes the expired.
    pub fn stored(&self) -> usize {
        self.stored
    }

    /// The digest of the replicated state: its entries and the clock, whatever their layout, so
    /// replicas that applied the same positions have the same digest even when one of them
    /// installed a snapshot (or has another capacity).
    pub fn digest(&self) -> u64 {
        self.entries_digest ^ Hasher::new(CLOCK_DOMAIN).word(self.now).finish()
    }

    /// Empties the store: no key, every slot free (slot 0 on top), the index clear. O(keys).
    /// The open snapshot's marks stay: a slot's old content is still there until written.
    fn clear(&mut self) {
        for flags in self.flags.iter_mut() {
            *flags &= !USED;
        }
        self.index.fill(0);
        let keys = self.config.keys;
        for (i, slot) in (0..keys).rev().enumerate() {
            self.free[i * 4..i * 4 + 4].copy_from_slice(&(slot as u32).to_le_bytes());
        }
        self.free_len = keys;
        self.stored = 0;
        self.volatile = 0;
        self.entries_digest = 0;
        self.positions.fill(0);
    }

    // ---- slots ---------------------------------------------------------------------------------

    fn used(&self, slot: usize) -> bool {
        self.flags[slot] & USED != 0
    }

    fn meta(&self, slot: usize) -> Meta {
        Meta::read(self.metas, slot)
    }

    fn key(&self, slot: usize) -> &[u8] {
        let start = slot * self.stride;
        &self.data[start..start + self.meta(slot).key_len as usize]
    }

    fn value(&self, slot: usize) -> &[u8] {
        let start = slot * self.stride + self.config.key_max;
        &self.data[start..start + self.meta(slot).value_len as usize]
    }

    fn expired(&self, slot: usize) -> bool {
        let expiry = self.meta(slot).expiry;
        expiry != 0 && self.now > expiry
    }

    /// Called before a slot's metadata or bytes change: keeps the open snapshot's view intact.
    fn preserve(&mut self, slot: usize) {
        if !self.freeze.open || self.flags[slot] & (LISTED | SAVED) != LISTED {
            return;
        }
        let meta = self.meta(slot);
        meta.write(self.shadow_metas, slot);
        let key = slot * self.stride..slot * self.stride + meta.key_len as usize;
        self.shadow_data[key.clone()].copy_from_slice(&self.data[key]);
        let start = slot * self.stride + self.config.key_max;
        let value = start..start + meta.value_len as usize;
        self.shadow_data[value.clone()].copy_from_slice(&self.data[value]);
        self.flags[slot] |= SAVED;
    }

    fn pop_free(&mut self) -> Option<usize> {
        self.free_len = self.free_len.checked_sub(1)?;
        let slot = read_u32(self.free, self.free_len * 4) as usize;
        assert!(slot < self.config.keys && !self.used(slot));
        Some(slot)
    }

    fn push_free(&mut self, slot: usize) {
        assert!(self.free_len < self.config.keys && !self.used(slot));
        let at = self.free_len * 4;
        self.free[at..at + 4].copy_from_slice(&(slot as u32).to_le_bytes());
        self.free_len += 1;
    }

    // ---- index ---------------------------------------------------------------------------------

    fn bucket(&self, bucket: usize) -> (u32, u32) {
        let at = bucket * BUCKET_BYTES;
        (read_u32(self.index, at), read_u32(self.index, at + 4))
    }

    fn set_bucket(&mut self, bucket: usize, slot_plus_one: u32, tag: u32) {
        let at = bucket * BUCKET_BYTES;
        self.index[at..at + 4].copy_from_slice(&slot_plus_one.to_le_bytes());
        self.index[at + 4..at + 8].copy_from_slice(&tag.to_le_bytes());
    }

    fn find(&self, key: &[u8]) -> Probe {
        let tag = key_tag(key);
        let mut bucket = tag as usize & self.mask;
        // At most half the buckets are used: an empty one ends every probe.
        for _ in 0..=self.mask {
            let (slot_plus_one, found_tag) = self.bucket(bucket);
            if slot_plus_one == 0 {
                return Probe::Vacant { bucket };
            }
            let slot = slot_plus_one as usize - 1;
            if found_tag == tag && self.key(slot) == key {
                return Probe::Found { bucket, slot };
            }
            bucket = (bucket + 1) & self.mask;
        }
        unreachable!("an index at most half full has an empty bucket")
    }

    /// Unlinks `bucket`, shifting later entries of its run back so no probe stops early.
    fn unlink(&mut self, mut hole: usize) {
        self.set_bucket(hole, 0, 0);
        let mut at = hole;
        for _ in 0..self.mask {
            at = (at + 1) & self.mask;
            let (slot_plus_one, tag) = self.bucket(at);
            if slot_plus_one == 0 {
                return;
            }
            let home = tag as usize & self.mask;
            // The entry may move back to the hole when the hole lies between its home and it.
            if at.wrapping_sub(home) & self.mask >= at.wrapping_sub(hole) & self.mask {
                self.set_bucket(hole, slot_plus_one, tag);
                self.set_bucket(at, 0, 0);
                hole = at;
            }
        }
    }

    // ---- entries -------------------------------------------------------------------------------

    /// The live entry of `key`: an expired one is removed and reads as absent.
    fn lookup(&mut self, key: &[u8]) -> Option<(usize, usize)> {
        if key.len() > self.config.key_max {
            return None;
        }
        let Probe::Found { bucket, slot } = self.find(key) else {
            return None;
        };
        if self.expired(slot) {
            self.remove(bucket, slot);
            return None;
        }
        Some((bucket, slot))
    }

    /// Removes the entry in `slot` (indexed at `bucket`). Its bytes and metadata stay as they
    /// are (the open snapshot may still read them) until the slot is written again.
    fn remove(&mut self, bucket: usize, slot: usize) {
        assert!(self.used(slot));
        assert_eq!(self.bucket(bucket).0 as usize, slot + 1);
        let meta = self.meta(slot);
        self.entries_digest ^= meta.hash;
        self.stored -= 1;
        if meta.expiry != 0 {
            self.heap_remove(slot);
        }
        self.flags[slot] &= !USED;
        self.unlink(bucket);
        self.push_free(slot);
    }

    // ---- the expiry heap ------------------------------------------------------------------------

    fn heap_slot(&self, at: usize) -> usize {
        read_u32(self.heap, at * 4) as usize
    }

    fn heap_expiry(&self, at: usize) -> u64 {
        self.meta(self.heap_slot(at)).expiry
    }

    fn position(&self, slot: usize) -> Option<usize> {
        (read_u32(self.positions, slot * 4) as usize).checked_sub(1)
    }

    fn heap_place(&mut self, at: usize, slot: usize) {
        self.heap[at * 4..at * 4 + 4].copy_from_slice(&(slot as u32).to_le_bytes());
        self.positions[slot * 4..slot * 4 + 4].copy_from_slice(&(at as u32 + 1).to_le_bytes());
    }

    fn heap_swap(&mut self, a: usize, b: usize) {
        let (slot_a, slot_b) = (self.heap_slot(a), self.heap_slot(b));
        self.heap_place(a, slot_b);
        self.heap_place(b, slot_a);
    }

    /// Restores the heap order around `at`, whose expiry changed or which was just placed.
    fn heap_fix(&mut self, mut at: usize) {
        while at > 0 && self.heap_expiry(at) < self.heap_expiry((at - 1) / 2) {
            self.heap_swap(at, (at - 1) / 2);
            at = (at - 1) / 2;
        }
        loop {
            let mut least = at;
            for child in [2 * at + 1, 2 * at + 2] {
                if child < self.volatile && self.heap_expiry(child) < self.heap_expiry(least) {
                    least = child;
                }
            }
            if least == at {
                return;
            }
            self.heap_swap(at, least);
            at = least;
        }
    }

    /// Enters `slot`, whose metadata holds its expiry, into the heap.
    fn heap_push(&mut self, slot: usize) {
        assert!(self.position(slot).is_none() && self.meta(slot).expiry != 0);
        assert!(self.volatile < self.config.keys);
        self.volatile += 1;
        self.heap_place(self.volatile - 1, slot);
        self.heap_fix(self.volatile - 1);
    }

    /// Takes `slot` out of the heap.
    fn heap_remove(&mut self, slot: usize) {
        let Some(at) = self.position(slot) else {
            unreachable!("a slot with an expiry is in the heap");
        };
        let last = self.volatile - 1;
        self.heap_swap(at, last);
        self.positions[slot * 4..slot * 4 + 4].fill(0);
        self.volatile = last;
        if at < last {
            self.heap_fix(at);
        }
    }

    /// Removes every expired entry, earliest expiry first, so that what is stored is what is
    /// live. O(log keys) per entry removed: each entry expires at most once.
    fn expire(&mut self) {
        while self.volatile > 0 && self.now > self.heap_expiry(0) {
            let slot = self.heap_slot(0);
            let Probe::Found {
                bucket,
                slot: found,
            } = self.find(self.key(slot))
            else {
                unreachable!("an entry in the heap is in the index");
            };
            assert_eq!(found, slot);
            self.remove(bucket, slot);
        }
    }

    /// True when `new` keys can be added.
    fn room_for(&self, new: usize) -> bool {
        self.free_len >= new
    }

    /// Rewrites the entry in `slot` (metadata and key stay unless given), keeping the digest and
    /// counts. `value` is `(offset, bytes)`: bytes written at `offset` of the value, its new
    /// length `offset + bytes.len()`.
    fn rewrite(&mut self, slot: usize, value: (usize, &[u8]), expiry: u64) {
        assert!(self.used(slot));
        let (offset, bytes) = value;
        let len = offset + bytes.len();
        assert!(offset <= self.meta(slot).value_len as usize && len <= self.config.value_max);
        self.preserve(slot);
        let mut meta = self.meta(slot);
        self.entries_digest ^= meta.hash;
        let old_expiry = meta.expiry;
        let start = slot * self.stride + self.config.key_max + offset;
        self.data[start..start + bytes.len()].copy_from_slice(bytes);
        meta.value_len = len as u32;
        meta.expiry = expiry;
        meta.hash = entry_hash(self.key(slot), self.value_with(slot, len), expiry);
        meta.write(self.metas, slot);
        self.entries_digest ^= meta.hash;
        match (old_expiry, expiry) {
            (0, 0) => {}
            (0, _) => self.heap_push(slot),
            (_, 0) => self.heap_remove(slot),
            (old, new) if old != new => {
                let Some(at) = self.position(slot) else {
                    unreachable!("a slot with an expiry is in the heap");
                };
                self.heap_fix(at);
            }
            _ => {}
        }
    }

    /// The first `len` bytes of `slot`'s value region.
    fn value_with(&self, slot: usize, len: usize) -> &[u8] {
        let start = slot * self.stride + self.config.key_max;
        &self.data[start..start + len]
    }

    /// Adds `key` (absent, checked by the caller, as is the room for it).
    fn insert(&mut self, key: &[u8], value: &[u8], expiry: u64) -> usize {
        assert!(key.len() <= self.config.key_max && value.len() <= self.config.value_max);
        let Probe::Vacant { bucket } = self.find(key) else {
            unreachable!("insert of a present key");
        };
        let Some(slot) = self.pop_free() else {
            unreachable!("insert without room");
        };
        self.preserve(slot);
        let start = slot * self.stride;
        self.data[start..start + key.len()].copy_from_slice(key);
        let vstart = start + self.config.key_max;
        self.data[vstart..vstart + value.len()].copy_from_slice(value);
        let meta = Meta {
            key_len: key.len() as u32,
            value_len: value.len() as u32,
            expiry,
            hash: entry_hash(key, value, expiry),
        };
        meta.write(self.metas, slot);
        self.set_bucket(bucket, slot as u32 + 1, key_tag(key));
        self.flags[slot] |= USED;
        self.stored += 1;
        if expiry != 0 {
            self.heap_push(slot);
        }
        self.entries_digest ^= meta.hash;
        debug_assert_eq!(self.find(key), Probe::Found { bucket, slot });
        slot
    }

    /// Sets `key` to `value` with `expiry`, present at `at` or absent (room checked).
    fn put(&mut self, key: &[u8], at: Option<(usize, usize)>, value: &[u8], expiry: u64) {
        match at {
            Some((_, slot)) => self.rewrite(slot, (0, value), expiry),
            None => {
                self.insert(key, value, expiry);
            }
        }
    }

    // ---- applying ------------------------------------------------------------------------------

    /// Applies one replicated command and writes its RESP reply into `response` (see the module
    /// doc); returns the reply's length.
    ///
    /// Work is bounded: O(arguments) lookups and heap updates (an `MSET` also O(arguments²) key
    /// comparisons to count distinct new keys); O(keys) for `FLUSHALL`; plus O(log keys) for each
    /// key the clock expired (see the module doc: amortised over the keys' lives, at most every
    /// key in one command).
    pub fn apply(&mut self, command: &[u8], response: &mut [u8]) -> usize {
        let mut out = Writer::new(response);
        let written = match decode(command) {
            Ok(decoded) => {
                self.now = self.now.max(decoded.time_ms);
                self.expire();
                self.execute(&decoded, &mut out)
            }
            Err(_) => out.error(ERR_MALFORMED).map(|_| ()),
        };
        if written.is_err() {
            out.truncate(0);
            // Nothing at all when even this does not fit (see RESPONSE_MIN).
            let _ = out.error(ERR_REPLY_TOO_LONG);
        }
        out.len()
    }

    fn execute(&mut self, command: &Decoded<'_>, out: &mut Writer<'_>) -> Result<(), EncodeError> {
        let opcode = command.opcode;
        let (min, max) = opcode.arity();
        let count = command.len();
        if count < min || count > max || (opcode == Opcode::MSet && count % 2 != 0) {
            out.error_parts(&[
                b"ERR wrong number of arguments for '",
                opcode.name().as_bytes(),
                b"' command",
            ])?;
            return Ok(());
        }
        let key = command.arg(0);
        match opcode {
            Opcode::Get => match self.lookup(key) {
                Some((_, slot)) => out.bulk(self.value(slot))?,
                None => out.null_bulk()?,
            },
            Opcode::Set => return self.set(command, out),
            Opcode::Del => {
                let mut removed = 0;
                for key in command.args() {
                    if let Some((bucket, slot)) = self.lookup(key) {
                        self.remove(bucket, slot);
                        removed += 1;
                    }
                }
                out.integer(removed)?
            }
            Opcode::Exists => {
                let found = command
                    .args()
                    .filter(|key| self.lookup(key).is_some())
                    .count();
                out.integer(found as i64)?
            }
            Opcode::Incr | Opcode::Decr | Opcode::IncrBy | Opcode::DecrBy => {
                let by = match opcode {
                    Opcode::Incr => 1,
                    Opcode::Decr => -1,
                    _ => match parse_i64(command.arg(1)) {
                        None => return out.error(ERR_NOT_INTEGER).map(|_| ()),
                        Some(i64::MIN) if opcode == Opcode::DecrBy => {
                            return out.error(ERR_DECREMENT_OVERFLOW).map(|_| ())
                        }
                        Some(by) if opcode == Opcode::DecrBy => -by,
                        Some(by) => by,
                    },
                };
                return self.increment(key, by, out);
            }
            Opcode::MSet => return self.mset(command, out),
            Opcode::MGet => {
                out.array_header(count)?;
                for key in command.args() {
                    match self.lookup(key) {
                        Some((_, slot)) => out.bulk(self.value(slot))?,
                        None => out.null_bulk()?,
                    };
                }
                out
            }
            Opcode::Append => return self.append(key, command.arg(1), out),
            Opcode::StrLen => {
                let len = self
                    .lookup(key)
                    .map_or(0, |(_, slot)| self.meta(slot).value_len);
                out.integer(i64::from(len))?
            }
            Opcode::DbSize => out.integer(self.stored as i64)?,
            Opcode::FlushAll => {
                let mode = command.arg(0);
                if count > 1
                    || (count == 1
                        && !mode.eq_ignore_ascii_case(b"async")
                        && !mode.eq_ignore_ascii_case(b"sync"))
                {
                    return out.error(ERR_SYNTAX).map(|_| ());
                }
                self.clear();
                out.simple(b"OK")?
            }
            Opcode::Ttl | Opcode::PTtl => {
                let ttl = match self.lookup(key) {
                    None => -2,
                    Some((_, slot)) => match self.meta(slot).expiry {
                        0 => -1,
                        expiry => {
                            // Live: now <= expiry.
                            let ms = (expiry - self.now).min(i64::MAX as u64) as i64;
                            if opcode == Opcode::Ttl {
                                (ms + 500) / 1000
                            } else {
                                ms
                            }
                        }
                    },
                };
                out.integer(ttl)?
            }
        };
        Ok(())
    }

    /// The expiry an `EX`/`PX`/`EXAT`/`PXAT` argument asks for, as Redis's
    /// `getExpireMillisecondsOrReply` checks it.
    fn expiry(&self, value: &[u8], seconds: bool, absolute: bool) -> Result<u64, &'static [u8]> {
        let number = parse_i64(value).ok_or(ERR_NOT_INTEGER)?;
        if number <= 0 || (seconds && number > i64::MAX / 1000) {
            return Err(ERR_EXPIRE);
        }
        let ms = if seconds { number * 1000 } else { number };
        let when = if absolute {
            Some(ms)
        } else {
            i64::try_from(self.now)
                .ok()
                .and_then(|now| ms.checked_add(now))
        };
        match when {
            Some(when) if when > 0 => Ok(when as u64),
            _ => Err(ERR_EXPIRE),
        }
    }

    fn set(&mut self, command: &Decoded<'_>, out: &mut Writer<'_>) -> Result<(), EncodeError> {
        let (key, value) = (command.arg(0), command.arg(1));
        let mut options = SetOptions::default();
        let mut j = 2;
        while j < command.len() {
            let option = command.arg(j);
            let next = (j + 1 < command.len()).then(|| command.arg(j + 1));
            let is = |name: &[u8]| option.eq_ignore_ascii_case(name);
            let expiring = options.keep_ttl || options.expire.is_some();
            let same_unit = |seconds: bool, absolute: bool| {
                options
                    .expire
                    .is_none_or(|(_, s, a)| s == seconds && a == absolute)
            };
            if is(b"nx") && !options.xx {
                options.nx = true;
            } else if is(b"xx") && !options.nx {
                options.xx = true;
            } else if is(b"get") {
                options.get = true;
            } else if is(b"keepttl") && options.expire.is_none() {
                options.keep_ttl = true;
            } else if let (Some(next), Some((seconds, absolute))) = (
                next,
                [
                    (&b"ex"[..], (true, false)),
                    (b"px", (false, false)),
                    (b"exat", (true, true)),
                    (b"pxat", (false, true)),
                ]
                .iter()
                .find(|(name, _)| is(name))
                .map(|&(_, unit)| unit),
            ) {
                // One of EX, PX, EXAT, PXAT, repeatable, exclusive with the others and KEEPTTL.
                if !options.keep_ttl && (!expiring || same_unit(seconds, absolute)) {
                    options.expire = Some((next, seconds, absolute));
                    j += 1;
                } else {
                    return out.error(ERR_SYNTAX).map(|_| ());
                }
            } else {
                return out.error(ERR_SYNTAX).map(|_| ());
            }
            j += 1;
        }
        let expiry = match options.expire {
            Some((argument, seconds, absolute)) => match self.expiry(argument, seconds, absolute) {
                Ok(expiry) => Some(expiry),
                Err(text) => return out.error(text).map(|_| ()),
            },
            None => None,
        };
        if key.len() > self.config.key_max {
            return out.error(ERR_KEY_TOO_LONG).map(|_| ());
        }
        if value.len() > self.config.value_max {
            return out.error(ERR_VALUE_TOO_LONG).map(|_| ());
        }
        let at = self.lookup(key);
        let goes_ahead = !(options.nx && at.is_some() || options.xx && at.is_none());
        // An expiry already reached deletes the key (Redis's checkAlreadyExpired).
        let deletes = expiry.is_some_and(|expiry| expiry <= self.now);
        if goes_ahead && !deletes && at.is_none() && !self.room_for(1) {
            return out.error(ERR_OOM).map(|_| ());
        }
        // The reply is written before the change (it may quote the old value) but the change
        // happens whether or not it fits.
        let reply = if options.get {
            match at {
                Some((_, slot)) => out.bulk(self.value(slot)).map(|_| ()),
                None => out.null_bulk().map(|_| ()),
            }
        } else if goes_ahead {
            out.simple(b"OK").map(|_| ())
        } else {
            out.null_bulk().map(|_| ())
        };
        if goes_ahead {
            if deletes {
                if let Some((bucket, slot)) = at {
                    self.remove(bucket, slot);
                }
            } else {
                let expiry = match (expiry, options.keep_ttl, at) {
                    (Some(expiry), _, _) => expiry,
                    (None, true, Some((_, slot))) => self.meta(slot).expiry,
                    _ => 0,
                };
                self.put(key, at, value, expiry);
            }
        }
        reply
    }

    fn increment(&mut self, key: &[u8], by: i64, out: &mut Writer<'_>) -> Result<(), EncodeError> {
        let at = self.lookup(key);
        let old = match at {
            Some((_, slot)) => match parse_i64(self.value(slot)) {
                Some(old) => old,
                None => return out.error(ERR_NOT_INTEGER).map(|_| ()),
            },
            None => 0,
        };
        let Some(new) = old.checked_add(by) else {
            return out.error(ERR_OVERFLOW).map(|_| ());
        };
        if key.len() > self.config.key_max {
            return out.error(ERR_KEY_TOO_LONG).map(|_| ());
        }
        if at.is_none() && !self.room_for(1) {
            return out.error(ERR_OOM).map(|_| ());
        }
        let mut buf = [0; 20];
        let digits = format_i64(new, &mut buf);
        let expiry = at.map_or(0, |(_, slot)| self.meta(slot).expiry);
        self.put(key, at, digits, expiry);
        out.integer(new).map(|_| ())
    }

    fn mset(&mut self, command: &Decoded<'_>, out: &mut Writer<'_>) -> Result<(), EncodeError> {
        let pairs = command.len() / 2;
        for pair in 0..pairs {
            if command.arg(2 * pair).len() > self.config.key_max {
                return out.error(ERR_KEY_TOO_LONG).map(|_| ());
            }
            if command.arg(2 * pair + 1).len() > self.config.value_max {
                return out.error(ERR_VALUE_TOO_LONG).map(|_| ());
            }
        }
        let mut new = 0;
        for pair in 0..pairs {
            let key = command.arg(2 * pair);
            let repeated = (0..pair).any(|earlier| command.arg(2 * earlier) == key);
            if !repeated && self.lookup(key).is_none() {
                new += 1;
            }
        }
        if !self.room_for(new) {
            return out.error(ERR_OOM).map(|_| ());
        }
        for pair in 0..pairs {
            let key = command.arg(2 * pair);
            let at = self.lookup(key);
            self.put(key, at, command.arg(2 * pair + 1), 0);
        }
        out.simple(b"OK").map(|_| ())
    }

    fn append(&mut self, key: &[u8], tail: &[u8], out: &mut Writer<'_>) -> Result<(), EncodeError> {
        let at = self.lookup(key);
        let old = at.map_or(0, |(_, slot)| self.meta(slot).value_len as usize);
        if tail.len() > self.config.value_max - old {
            return out.error(ERR_VALUE_TOO_LONG).map(|_| ());
        }
        match at {
            Some((_, slot)) => {
                let expiry = self.meta(slot).expiry;
                self.rewrite(slot, (old, tail), expiry);
            }
            None => {
                if key.len() > self.config.key_max {
                    return out.error(ERR_KEY_TOO_LONG).map(|_| ());
                }
                if !self.room_for(1) {
                    return out.error(ERR_OOM).map(|_| ());
                }
                self.insert(key, tail, 0);
            }
        }
        out.integer((old + tail.len()) as i64).map(|_| ())
    }

    // ---- donor ---------------------------------------------------------------------------------

    fn offset(&self, record: usize) -> u64 {
        read_u64(self.offsets, record * 8)
    }

    fn view_slot(&self, record: usize) -> usize {
        read_u32(self.view, record * 4) as usize
    }

    /// Freezes the live state (copy-on-write, see the module doc; an open snapshot is replaced,
    /// an install in progress abandoned); returns the stream's length and the digest. O(keys).
    pub fn snapshot_begin(&mut self) -> Snapshot {
        self.install_abandon();
        self.freeze.open = false;
        // Nothing expired is stored: every command removed what its clock expired.
        debug_assert!(self.volatile == 0 || self.now <= self.heap_expiry(0));
        let mut len = 0;
        let mut offset = STREAM_HEADER_BYTES as u64;
        for slot in 0..self.config.keys {
            self.flags[slot] &= USED;
            if self.used(slot) {
                self.view[len * 4..len * 4 + 4].copy_from_slice(&(slot as u32).to_le_bytes());
                self.offsets[len * 8..len * 8 + 8].copy_from_slice(&offset.to_le_bytes());
                self.flags[slot] |= LISTED;
                let meta = self.meta(slot);
                offset +=
                    (RECORD_HEADER_BYTES + meta.key_len as usize + meta.value_len as usize) as u64;
                len += 1;
            }
        }
        assert_eq!(len, self.stored);
        self.offsets[len * 8..len * 8 + 8].copy_from_slice(&offset.to_le_bytes());
        self.freeze = Freeze {
            open: true,
            len,
            now: self.now,
            bytes: offset,
        };
        Snapshot {
            bytes: offset,
            digest: self.digest(),
        }
    }

    /// A listed slot's metadata, key and value as they were at `snapshot_begin`.
    fn frozen(&self, slot: usize) -> (Meta, &[u8], &[u8]) {
        let (metas, data) = if self.flags[slot] & SAVED != 0 {
            (&*self.shadow_metas, &*self.shadow_data)
        } else {
            (&*self.metas, &*self.data)
        };
        let meta = Meta::read(metas, slot);
        let start = slot * self.stride;
        let vstart = start + self.config.key_max;
        (
            meta,
            &data[start..start + meta.key_len as usize],
            &data[vstart..vstart + meta.value_len as usize],
        )
    }

    /// Copies bytes `[offset, offset + buf.len())` of the frozen stream into `buf`; bytes past its
    /// end (or all, with no snapshot open) read as zeros.
    pub fn snapshot_read(&self, offset: u64, buf: &mut [u8]) {
        buf.fill(0);
        if !self.freeze.open {
            return;
        }
        let end = offset.saturating_add(buf.len() as u64);
        let mut copy = |start: u64, piece: &[u8]| {
            let lo = start.max(offset);
            let hi = (start + piece.len() as u64).min(end);
            if lo < hi {
                buf[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&piece[(lo - start) as usize..(hi - start) as usize]);
            }
        };
        let mut header = [0u8; STREAM_HEADER_BYTES];
        header[..8].copy_from_slice(&self.freeze.now.to_le_bytes());
        header[8..].copy_from_slice(&(self.freeze.len as u64).to_le_bytes());
        copy(0, &header);
        // The first record that ends after `offset`: binary search over the offsets.
        let (mut lo, mut hi) = (0, self.freeze.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.offset(mid + 1) <= offset {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        debug_assert_eq!(self.offset(self.freeze.len), self.freeze.bytes);
        let mut record = lo;
        while record < self.freeze.len && self.offset(record) < end {
            let start = self.offset(record);
            let (meta, key, value) = self.frozen(self.view_slot(record));
            debug_assert_eq!(
                start + (RECORD_HEADER_BYTES + key.len() + value.len()) as u64,
                self.offset(record + 1)
            );
            copy(start, &meta.record_header());
            copy(start + RECORD_HEADER_BYTES as u64, key);
            copy(start + (RECORD_HEADER_BYTES + key.len()) as u64, value);
            record += 1;
        }
    }

    /// The frozen copy is no longer needed: writes stop saving.
    pub fn snapshot_end(&mut self) {
        self.freeze.open = false;
        self.freeze.len = 0;
    }

    // ---- joiner --------------------------------------------------------------------------------

    /// Empties the store for the stream of `bytes` bytes that follows (an open snapshot is
    /// ended); false, changing nothing, when no stream of that length could fit.
    pub fn install_begin(&mut self, bytes: u64) -> bool {
        self.install_abandon();
        let record_most = (RECORD_HEADER_BYTES + self.stride) as u64;
        let most = (self.config.keys as u64)
            .saturating_mul(record_most)
            .saturating_add(STREAM_HEADER_BYTES as u64);
        if bytes > most || bytes < STREAM_HEADER_BYTES as u64 {
            return false;
        }
        self.snapshot_end();
        self.clear();
        self.now = 0;
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
        if !self.install.active || self.install.stopped {
            return;
        }
        if offset != self.install.next {
            self.install.stopped = true;
            return;
        }
        let room = self.install.total - self.install.next;
        let take = (bytes.len() as u64).min(room) as usize;
        self.install.next += take as u64;
        let mut rest = &bytes[..take];
        while !rest.is_empty() && !self.install.stopped {
            let used = self.decode_stream(rest);
            assert!(used > 0 && used <= rest.len());
            rest = &rest[used..];
        }
        if take < bytes.len() {
            self.install.stopped = true;
        }
    }

    /// Gathers up to `want` header bytes; true once they are all there.
    fn gather(&mut self, rest: &[u8], want: usize) -> (usize, bool) {
        let install = &mut self.install;
        let n = (want - install.header_fill).min(rest.len());
        install.header[install.header_fill..install.header_fill + n].copy_from_slice(&rest[..n]);
        install.header_fill += n;
        let complete = install.header_fill == want;
        if complete {
            install.header_fill = 0;
        }
        (n, complete)
    }

    /// Decodes from the start of `rest`; returns how many bytes it took (at least one).
    fn decode_stream(&mut self, rest: &[u8]) -> usize {
        match self.install.phase {
            Phase::StreamHeader => {
                let (n, complete) = self.gather(rest, STREAM_HEADER_BYTES);
                if complete {
                    let header = self.install.header;
                    self.now = read_u64(&header, 0);
                    self.install.records = read_u64(&header, 8);
                    self.install.phase = Phase::RecordHeader;
                }
                n
            }
            Phase::RecordHeader => {
                if self.install.decoded == self.install.records {
                    // Bytes after the announced records.
                    self.install.stopped = true;
                    return rest.len();
                }
                let (n, complete) = self.gather(rest, RECORD_HEADER_BYTES);
                if complete {
                    self.start_record();
                }
                n
            }
            Phase::Body { meta, slot, filled } => {
                let total = meta.key_len as usize + meta.value_len as usize;
                let n = (total - filled).min(rest.len());
                if let Some(slot) = slot {
                    // Key bytes, then value bytes at the value region.
                    for (i, &byte) in rest[..n].iter().enumerate() {
                        let at = filled + i;
                        let dst = if at < meta.key_len as usize {
                            slot * self.stride + at
                        } else {
                            slot * self.stride + self.config.key_max + at - meta.key_len as usize
                        };
                        self.data[dst] = byte;
                    }
                }
                self.install.phase = Phase::Body {
                    meta,
                    slot,
                    filled: filled + n,
                };
                if filled + n == total {
                    self.finish_record();
                }
                n
            }
        }
    }

    fn start_record(&mut self) {
        let header = self.install.header;
        let meta = Meta {
            key_len: read_u32(&header, 0),
            value_len: read_u32(&header, 4),
            expiry: read_u64(&header, 8),
            hash: 0,
        };
        if meta.key_len as usize > self.config.key_max
            || meta.value_len as usize > self.config.value_max
        {
            // Nothing after it can be trusted to be a record boundary.
            self.install.stopped = true;
            return;
        }
        // A slot is taken now and given back if the record is skipped.
        let slot = self.pop_free();
        self.install.phase = Phase::Body {
            meta,
            slot,
            filled: 0,
        };
        if meta.key_len == 0 && meta.value_len == 0 {
            self.finish_record();
        }
    }

    /// The current record is complete: it enters the index and the digest, unless its key is
    /// already installed.
    fn finish_record(&mut self) {
        let Phase::Body { mut meta, slot, .. } = self.install.phase else {
            return;
        };
        self.install.phase = Phase::RecordHeader;
        self.install.decoded += 1;
        let Some(slot) = slot else {
            return;
        };
        let start = slot * self.stride;
        let key = &self.data[start..start + meta.key_len as usize];
        let Probe::Vacant { bucket } = self.find(key) else {
            self.push_free(slot);
            return;
        };
        let tag = key_tag(key);
        meta.hash = entry_hash(
            key,
            self.value_with(slot, meta.value_len as usize),
            meta.expiry,
        );
        meta.write(self.metas, slot);
        self.set_bucket(bucket, slot as u32 + 1, tag);
        self.flags[slot] = USED;
        self.stored += 1;
        if meta.expiry != 0 {
            self.heap_push(slot);
        }
        self.entries_digest ^= meta.hash;
    }

    /// Every byte was written; returns the digest of what got installed (see the module doc).
    pub fn install_end(&mut self) -> u64 {
        self.install_abandon();
        self.digest()
    }

    /// The install was given up: the store keeps the records completed so far, consistently.
    pub fn install_abandon(&mut self) {
        if let Phase::Body {
            slot: Some(slot), ..
        } = self.install.phase
        {
            if self.install.active {
                self.push_free(slot);
            }
        }
        self.install = Install::IDLE;
    }
}

/// For the exactly-once sessions ([`crate::session::ExactlyOnce`]): the read-only commands are
/// those of [`is_read_only`], applied again on a retry rather than cached. Applying one still
/// moves the clock to its time and may remove expired keys, like any command, but applying it
/// again changes nothing a command can observe: the clock only moves forward (and is already
/// past the retry's time if it carries the same bytes), and expired keys read as absent whether
/// removed or not.
impl crate::session::ReadOnly for Store<'_> {
    fn read_only(&self, command: &[u8]) -> bool {
        is_read_only(command)
    }
}

impl StateMachine for Store<'_> {
    fn apply(&mut self, _position: u64, command: &[u8], response: &mut [u8]) -> usize {
        Store::apply(self, command, response)
    }

    fn snapshot_begin(&mut self, _position: u64) -> Option<Snapshot> {
        Some(Store::snapshot_begin(self))
    }

    fn snapshot_read(&mut self, offset: u64, buf: &mut [u8]) {
        Store::snapshot_read(self, offset, buf)
    }

    fn snapshot_end(&mut self) {
        Store::snapshot_end(self)
    }

    fn install_begin(&mut self, _position: u64, bytes: u64) -> bool {
        Store::install_begin(self, bytes)
    }

    fn install_write(&mut self, offset: u64, bytes: &[u8]) {
        Store::install_write(self, offset, bytes)
    }

    fn install_end(&mut self) -> u64 {
        Store::install_end(self)
    }

    fn install_abandon(&mut self) {
        Store::install_abandon(self)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::collections::HashMap;
    use std::format;
    use std::string::String;
    use std::vec;
    use std::vec::Vec;

    const SMALL: Config = Config {
        keys: 8,
        key_max: 8,
        value_max: 24,
    };

    /// A deterministic xorshift generator.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn new_store(config: Config) -> Store<'static> {
        let arena = vec![0xA5u8; config.arena_bytes().unwrap()].leak();
        Store::new(arena, config).unwrap()
    }

    fn command(time: u64, name: &str, args: &[&[u8]]) -> Vec<u8> {
        let opcode = Opcode::from_name(name.as_bytes()).unwrap();
        let mut out = vec![0; encoded_len(args.iter().copied())];
        assert_eq!(encode(opcode, args, time, &mut out), Ok(out.len()));
        out
    }

    fn run(store: &mut Store<'_>, time: u64, name: &str, args: &[&[u8]]) -> Vec<u8> {
        let mut response = vec![0; 4096];
        let len = store.apply(&command(time, name, args), &mut response);
        response.truncate(len);
        check_consistent(store);
        assert!((0..store.config.keys).all(|slot| !store.used(slot) || !store.expired(slot)));
        response
    }

    /// Checks the module's invariants from scratch.
    fn check_consistent(store: &Store<'_>) {
        let keys = store.config.keys;
        let used: Vec<usize> = (0..keys).filter(|&s| store.used(s)).collect();
        assert_eq!(store.stored, used.len());
        assert_eq!(store.stored + store.free_len, keys);
        let volatile = used.iter().filter(|&&s| store.meta(s).expiry != 0).count();
        assert_eq!(store.volatile, volatile);
        for slot in 0..keys {
            let expiring = store.used(slot) && store.meta(slot).expiry != 0;
            assert_eq!(store.position(slot).is_some(), expiring);
            if let Some(at) = store.position(slot) {
                assert_eq!(store.heap_slot(at), slot);
                if at > 0 {
                    assert!(store.heap_expiry((at - 1) / 2) <= store.heap_expiry(at));
                }
            }
        }
        let mut digest = 0;
        for &slot in &used {
            let meta = store.meta(slot);
            let hash = entry_hash(store.key(slot), store.value(slot), meta.expiry);
            assert_eq!(meta.hash, hash);
            digest ^= hash;
            assert!(
                matches!(store.find(store.key(slot)), Probe::Found { slot: s, .. } if s == slot)
            );
        }
        assert_eq!(store.entries_digest, digest);
        let indexed = (0..=store.mask).filter(|&b| store.bucket(b).0 != 0).count();
        assert_eq!(indexed, used.len());
        let mut free: Vec<u32> = (0..store.free_len)
            .map(|i| read_u32(store.free, i * 4))
            .collect();
        assert!(free.iter().all(|&s| !store.used(s as usize)));
        free.sort();
        free.dedup();
        assert_eq!(free.len(), store.free_len);
    }

    fn bulk(value: &[u8]) -> Vec<u8> {
        let mut out = format!("${}\r\n", value.len()).into_bytes();
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
        out
    }

    fn int(value: i64) -> Vec<u8> {
        format!(":{value}\r\n").into_bytes()
    }

    fn err(text: &str) -> Vec<u8> {
        format!("-{text}\r\n").into_bytes()
    }

    const NULL: &[u8] = b"$-1\r\n";
    const OK: &[u8] = b"+OK\r\n";

    // ---- the replicated format --------------------------------------------------------------

    #[test]
    fn commands_round_trip_and_malformed_ones_are_refused() {
        let args: [&[u8]; 3] = [b"k", b"", &[0xFF; 300]];
        let bytes = command(77, "set", &args);
        let decoded = decode(&bytes).unwrap();
        assert_eq!(
            (decoded.time_ms, decoded.opcode, decoded.len()),
            (77, Opcode::Set, 3)
        );
        assert!(decoded.args().eq(args.iter().copied()));
        assert_eq!(decoded.arg(3), b"");
        for op in Opcode::ALL {
            assert_eq!(Opcode::from_u8(*op as u8), Some(*op));
            assert_eq!(
                Opcode::from_name(op.name().to_uppercase().as_bytes()),
                Some(*op)
            );
        }
        assert_eq!(Opcode::from_name(b"FlushDB"), Some(Opcode::FlushAll));
        assert_eq!(Opcode::from_name(b"lpush"), None);
        // Every truncation, and a byte too many, is refused.
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "{cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        let mut unknown = bytes.clone();
        unknown[8] = 0;
        assert!(decode(&unknown).is_err());
        let many = vec![&b"k"[..]; ARGS_MAX + 1];
        let mut out = vec![0; 4096];
        assert_eq!(
            encode(Opcode::Del, &many, 0, &mut out),
            Err(CommandError::TooManyArgs)
        );
        assert_eq!(
            encode(Opcode::Get, &[b"k"], 0, &mut out[..15]),
            Err(CommandError::NoRoom {
                needed: 16,
                room: 15
            })
        );
        // From the parser's ranges.
        let input = b"*3\r\n$3\r\nset\r\n$1\r\nk\r\n$2\r\nvv\r\n";
        let Ok(resp::Parsed::Command { args, .. }) = resp::parse::<4>(input, &resp::Limits::REDIS)
        else {
            panic!()
        };
        let len = encode_resp(input, &args, 5, &mut out).unwrap();
        assert_eq!(&out[..len], command(5, "SET", &[b"k", b"vv"]));
        let Ok(resp::Parsed::Command { args, .. }) =
            resp::parse::<4>(b"lpush a b\r\n", &resp::Limits::REDIS)
        else {
            panic!()
        };
        assert_eq!(
            encode_resp(b"lpush a b\r\n", &args, 5, &mut out),
            Err(CommandError::UnknownCommand)
        );
        // Read-only commands.
        assert!(is_read_only(&command(1, "get", &[b"k"])));
        assert!(is_read_only(&command(1, "mget", &[b"k", b"j"])));
        assert!(!is_read_only(&command(1, "set", &[b"k", b"v"])));
        assert!(!is_read_only(&command(1, "incr", &[b"k"])));
        assert!(!is_read_only(b"garbage"));
        let s = new_store(SMALL);
        let session_view: &dyn crate::session::ReadOnly = &s;
        assert!(session_view.read_only(&command(1, "ttl", &[b"k"])));
        assert!(!session_view.read_only(&command(1, "append", &[b"k", b"v"])));
        let read_only: Vec<&str> = Opcode::ALL
            .iter()
            .filter(|op| op.is_read_only())
            .map(|op| op.name())
            .collect();
        assert_eq!(
            read_only,
            ["get", "exists", "mget", "strlen", "dbsize", "ttl", "pttl"]
        );
    }

    // ---- replies as Redis documents them --------------------------------------------------------

    #[test]
    fn table_of_replies() {
        let mut s = new_store(Config {
            keys: 16,
            key_max: 16,
            value_max: 64,
        });
        let t = 1_000_000;
        type Case<'c> = (u64, &'c str, &'c [&'c [u8]], Vec<u8>);
        let cases: &[Case] = &[
            (t, "GET", &[b"k"], NULL.to_vec()),
            (t, "SET", &[b"k", b"v"], OK.to_vec()),
            (t, "GET", &[b"k"], bulk(b"v")),
            (t, "SET", &[b"k", b"w", b"NX"], NULL.to_vec()),
            (t, "SET", &[b"j", b"w", b"XX"], NULL.to_vec()),
            (t, "EXISTS", &[b"j"], int(0)),
            (t, "SET", &[b"k", b"w", b"GET"], bulk(b"v")),
            (t, "SET", &[b"k", b"x", b"nx", b"get"], bulk(b"w")),
            (t, "GET", &[b"k"], bulk(b"w")),
            (t, "SET", &[b"n", b"1", b"get"], NULL.to_vec()),
            (
                t,
                "SET",
                &[b"k", b"v", b"EX", b"0"],
                err("ERR invalid expire time in 'set' command"),
            ),
            (
                t,
                "SET",
                &[b"k", b"v", b"PX", b"-5"],
                err("ERR invalid expire time in 'set' command"),
            ),
            (
                t,
                "SET",
                &[b"k", b"v", b"EX", b"9223372036854776"],
                err("ERR invalid expire time in 'set' command"),
            ),
            (
                t,
                "SET",
                &[b"k", b"v", b"PX", b"9223372036854775807"],
                err("ERR invalid expire time in 'set' command"),
            ),
            (
                t,
                "SET",
                &[b"k", b"v", b"EX", b"1x"],
                err("ERR value is not an integer or out of range"),
            ),
            (
                t,
                "SET",
                &[b"k", b"v", b"EX", b"01"],
                err("ERR value is not an integer or out of range"),
            ),
            (
                t,
                "SET",
                &[b"k", b"v", b"NX", b"XX"],
                err("ERR syntax error"),
            ),
            (
                t,
                "SET",
                &[b"k", b"v", b"EX", b"10", b"PX", b"100"],
                err("ERR syntax error"),
            ),
            (
                t,
                "SET",
                &[b"k", b"v", b"KEEPTTL", b"EX", b"1"],
                err("ERR syntax error"),
            ),
            (
                t,
                "SET",
                &[b"k", b"v", b"PX", b"1", b"KEEPTTL"],
                err("ERR syntax error"),
            ),
            (t, "SET", &[b"k", b"v", b"EX"], err("ERR syntax error")),
            (t, "SET", &[b"k", b"v", b"FOO"], err("ERR syntax error")),
            (t, "GET", &[b"k"], bulk(b"w")),
            (
                t,
                "SET",
                &[b"k", b"v", b"EX", b"1", b"EX", b"10"],
                OK.to_vec(),
            ),
            (t, "TTL", &[b"k"], int(10)),
            (t, "PTTL", &[b"k"], int(10_000)),
            (t + 1500, "TTL", &[b"k"], int(9)),
            (t + 1500, "PTTL", &[b"k"], int(8500)),
            (t, "PTTL", &[b"k"], int(8500)),
            (t, "SET", &[b"k", b"v2", b"KEEPTTL"], OK.to_vec()),
            (t, "PTTL", &[b"k"], int(8500)),
            (t, "SET", &[b"k", b"v3"], OK.to_vec()),
            (t, "TTL", &[b"k"], int(-1)),
            (t, "TTL", &[b"nothing"], int(-2)),
            (t, "PTTL", &[b"nothing"], int(-2)),
            (t, "SET", &[b"p", b"v", b"PX", b"100"], OK.to_vec()),
            (t + 1600, "GET", &[b"p"], bulk(b"v")),
            (t + 1600, "PTTL", &[b"p"], int(0)),
            (t + 1601, "GET", &[b"p"], NULL.to_vec()),
            (
                t + 1601,
                "SET",
                &[b"a", b"v", b"PXAT", b"1001601"],
                OK.to_vec(),
            ),
            (t + 1601, "EXISTS", &[b"a"], int(0)),
            (
                t + 1601,
                "SET",
                &[b"a", b"v", b"EXAT", b"1002"],
                OK.to_vec(),
            ),
            (t + 1601, "PTTL", &[b"a"], int(399)),
            (t + 1601, "SET", &[b"a", b"v", b"EXAT", b"1"], OK.to_vec()),
            (t + 1601, "GET", &[b"a"], NULL.to_vec()),
            (t, "INCR", &[b"c"], int(1)),
            (t, "INCRBY", &[b"c", b"10"], int(11)),
            (t, "DECR", &[b"c"], int(10)),
            (t, "DECRBY", &[b"c", b"13"], int(-3)),
            (t, "GET", &[b"c"], bulk(b"-3")),
            (
                t,
                "INCRBY",
                &[b"c", b"x"],
                err("ERR value is not an integer or out of range"),
            ),
            (
                t,
                "INCRBY",
                &[b"c", b"+1"],
                err("ERR value is not an integer or out of range"),
            ),
            (
                t,
                "INCR",
                &[b"k"],
                err("ERR value is not an integer or out of range"),
            ),
            (t, "SET", &[b"z", b"007"], OK.to_vec()),
            (
                t,
                "INCR",
                &[b"z"],
                err("ERR value is not an integer or out of range"),
            ),
            (t, "SET", &[b"z", b""], OK.to_vec()),
            (
                t,
                "INCR",
                &[b"z"],
                err("ERR value is not an integer or out of range"),
            ),
            (t, "SET", &[b"m", b"9223372036854775807"], OK.to_vec()),
            (
                t,
                "INCR",
                &[b"m"],
                err("ERR increment or decrement would overflow"),
            ),
            (
                t,
                "DECRBY",
                &[b"m", b"-1"],
                err("ERR increment or decrement would overflow"),
            ),
            (
                t,
                "DECRBY",
                &[b"m", b"-9223372036854775808"],
                err("ERR decrement would overflow"),
            ),
            (t, "INCRBY", &[b"m", b"-9223372036854775808"], int(-1)),
            (t, "SET", &[b"e", b"5", b"EX", b"100"], OK.to_vec()),
            (t, "INCR", &[b"e"], int(6)),
            (t, "TTL", &[b"e"], int(100)),
            (t, "DEL", &[b"e", b"e", b"nothing", b"m"], int(2)),
            (t, "EXISTS", &[b"k", b"k", b"e", b"c"], int(3)),
            (
                t,
                "MSET",
                &[b"a", b"1", b"b", b"2", b"a", b"3"],
                OK.to_vec(),
            ),
            (
                t,
                "MGET",
                &[b"a", b"b", b"nothing"],
                b"*3\r\n$1\r\n3\r\n$1\r\n2\r\n$-1\r\n".to_vec(),
            ),
            (
                t,
                "MSET",
                &[b"a"],
                err("ERR wrong number of arguments for 'mset' command"),
            ),
            (
                t,
                "MSET",
                &[b"a", b"1", b"b"],
                err("ERR wrong number of arguments for 'mset' command"),
            ),
            (
                t,
                "GET",
                &[],
                err("ERR wrong number of arguments for 'get' command"),
            ),
            (
                t,
                "GET",
                &[b"a", b"b"],
                err("ERR wrong number of arguments for 'get' command"),
            ),
            (
                t,
                "DBSIZE",
                &[b"x"],
                err("ERR wrong number of arguments for 'dbsize' command"),
            ),
            (t, "APPEND", &[b"s", b"ab"], int(2)),
            (t, "APPEND", &[b"s", b"cde"], int(5)),
            (t, "GET", &[b"s"], bulk(b"abcde")),
            (t, "STRLEN", &[b"s"], int(5)),
            (t, "STRLEN", &[b"nothing"], int(0)),
            (
                t,
                "APPEND",
                &[b"s", &[b'x'; 60]],
                err("ERR string exceeds maximum allowed size (proto-max-bulk-len)"),
            ),
            (
                t,
                "SET",
                &[b"s", &[b'x'; 65]],
                err("ERR string exceeds maximum allowed size (proto-max-bulk-len)"),
            ),
            (
                t,
                "SET",
                &[&[b'k'; 17], b"v"],
                err("ERR key exceeds maximum allowed size"),
            ),
            (t, "GET", &[&[b'k'; 17]], NULL.to_vec()),
            (t, "SET", &[b"s", &[b'x'; 64]], OK.to_vec()),
            (t, "GET", &[b"s"], bulk(&[b'x'; 64])),
            (t, "DBSIZE", &[], int(7)),
            (t, "FLUSHALL", &[b"now"], err("ERR syntax error")),
            (t, "FLUSHALL", &[b"async"], OK.to_vec()),
            (t, "DBSIZE", &[], int(0)),
            (t, "FLUSHDB", &[b"SYNC"], OK.to_vec()),
            (t, "FLUSHALL", &[], OK.to_vec()),
            (t, "GET", &[b"s"], NULL.to_vec()),
        ];
        for (i, (time, name, args, expected)) in cases.iter().enumerate() {
            let got = run(&mut s, *time, name, args);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(expected),
                "case {i}: {name} {:?}",
                args.iter()
                    .map(|a| String::from_utf8_lossy(a))
                    .collect::<Vec<_>>()
            );
        }
        // The clock never went back, whatever the times.
        assert_eq!(s.now(), t + 1601);
        // Every error text fits RESPONSE_MIN.
        for text in [
            ERR_SYNTAX,
            ERR_NOT_INTEGER,
            ERR_OVERFLOW,
            ERR_DECREMENT_OVERFLOW,
            ERR_EXPIRE,
            ERR_OOM,
            ERR_VALUE_TOO_LONG,
            ERR_KEY_TOO_LONG,
            ERR_MALFORMED,
            ERR_REPLY_TOO_LONG,
        ] {
            assert!(text.len() + 3 <= RESPONSE_MIN);
        }
        assert_eq!(ERR_VALUE_TOO_LONG.len() + 3, 63);
        for op in Opcode::ALL {
            let (min, max) = op.arity();
            let count = if min > 0 { 0 } else { max + 1 };
            if count > ARGS_MAX {
                continue;
            }
            let args = vec![&b"k"[..]; count];
            let mut response = [0u8; RESPONSE_MIN];
            let len = s.apply(&command(t, op.name(), &args), &mut response);
            assert!(
                response[..len].starts_with(b"-ERR wrong number"),
                "{}",
                op.name()
            );
        }
    }

    /// A read-only command applied twice (a session's retry) leaves the state as the first left
    /// it, whatever came between.
    #[test]
    fn read_only_commands_applied_again_change_nothing() {
        let mut s = new_store(SMALL);
        run(&mut s, 10, "SET", &[b"k", b"v", b"PX", b"5"]);
        run(&mut s, 10, "SET", &[b"j", b"w"]);
        let reads = [
            command(12, "GET", &[b"k"]),
            command(13, "MGET", &[b"k", b"j", b"x"]),
            command(14, "EXISTS", &[b"k"]),
            command(15, "STRLEN", &[b"j"]),
            command(16, "DBSIZE", &[]),
            command(17, "TTL", &[b"k"]),
            command(30, "PTTL", &[b"j"]),
        ];
        let mut response = [0u8; 256];
        for read in &reads {
            assert!(is_read_only(read));
            s.apply(read, &mut response);
            let (digest, live) = (s.digest(), s.stored());
            let first = response;
            run(&mut s, 20, "INCR", &[b"n"]);
            let (digest_between, live_between) = (s.digest(), s.stored());
            s.apply(read, &mut response);
            assert_eq!((s.digest(), s.stored()), (digest_between, live_between));
            assert_ne!(digest, digest_between);
            assert!(live <= live_between);
            let _ = first;
        }
    }

    #[test]
    fn capacity_and_oversize_change_nothing() {
        let mut s = new_store(SMALL);
        for i in 0..8u8 {
            assert_eq!(run(&mut s, 10, "SET", &[&[b'k', i], b"v"]), OK);
        }
        let oom = err("OOM command not allowed when used memory > 'maxmemory'.");
        let digest = s.digest();
        assert_eq!(run(&mut s, 10, "SET", &[b"new", b"v"]), oom);
        assert_eq!(run(&mut s, 10, "INCR", &[b"new"]), oom);
        assert_eq!(run(&mut s, 10, "APPEND", &[b"new", b"v"]), oom);
        assert_eq!(
            run(&mut s, 10, "MSET", &[b"k\x00", b"w", b"new", b"v"]),
            oom
        );
        assert_eq!(run(&mut s, 10, "SET", &[b"new", b"v", b"GET"]), oom);
        assert_eq!(s.digest(), digest);
        // What adds no key still works: overwrites, NX on a present key, XX on an absent one.
        assert_eq!(run(&mut s, 10, "SET", &[b"k\x00", b"w"]), OK);
        assert_eq!(run(&mut s, 10, "SET", &[b"k\x01", b"w", b"NX"]), NULL);
        assert_eq!(run(&mut s, 10, "SET", &[b"new", b"w", b"XX"]), NULL);
        assert_eq!(
            run(&mut s, 10, "MSET", &[b"k\x02", b"1", b"k\x02", b"2"]),
            OK
        );
        // Oversize changes nothing either, even in an MSET whose other pairs are fine.
        let digest = s.digest();
        assert_eq!(
            run(&mut s, 10, "MSET", &[b"k\x00", b"a", b"k\x01", &[b'x'; 25]]),
            err("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
        );
        assert_eq!(
            run(&mut s, 10, "MSET", &[b"k\x00", b"a", &[b'k'; 9], b"b"]),
            err("ERR key exceeds maximum allowed size")
        );
        assert_eq!(s.digest(), digest);
        // An expired key's slot is reclaimed when a new key needs it, whatever the sweep did.
        assert_eq!(run(&mut s, 10, "SET", &[b"k\x03", b"v", b"PX", b"5"]), OK);
        assert_eq!(run(&mut s, 20, "DBSIZE", &[]), int(7));
        assert_eq!(run(&mut s, 20, "SET", &[b"new", b"v"]), OK);
        assert_eq!(run(&mut s, 20, "DBSIZE", &[]), int(8));
        assert_eq!(run(&mut s, 20, "DEL", &[b"new"]), int(1));
        assert_eq!(run(&mut s, 20, "SET", &[b"new", b"v"]), OK);
        assert_eq!(run(&mut s, 20, "SET", &[b"new2", b"v"]), oom);
    }

    #[test]
    fn replies_longer_than_the_buffer_change_state_all_the_same() {
        let mut s = new_store(SMALL);
        let big = [b'b'; 24];
        run(&mut s, 1, "MSET", &[b"a", &big, b"b", &big, b"c", &big]);
        let mut response = [0u8; RESPONSE_MIN];
        let get = command(2, "MGET", &[b"a", b"b", b"c"]);
        let len = s.apply(&get, &mut response);
        assert_eq!(&response[..len], REPLY_TOO_LONG);
        assert_eq!(
            ERR_REPLY_TOO_LONG,
            &REPLY_TOO_LONG[1..REPLY_TOO_LONG.len() - 2]
        );
        // SET ... GET quotes the old value, which does not fit; the set happens.
        let set = command(3, "SET", &[b"a", b"new", b"GET"]);
        let len = s.apply(&set, &mut response[..20]);
        assert_eq!(len, 0, "not even the error fits 20 bytes");
        assert_eq!(run(&mut s, 4, "GET", &[b"a"]), bulk(b"new"));
        // Malformed commands change nothing, the clock included.
        let digest = s.digest();
        let len = s.apply(b"\xff\xff\xff\xff\xff\xff\xff\xff\x01\x00", &mut response);
        assert_eq!(&response[..len], b"-ERR malformed replicated command\r\n");
        assert_eq!((s.digest(), s.now()), (digest, 4));
    }

    // ---- the reference model --------------------------------------------------------------------

    /// Redis's string commands over a HashMap, written from the documentation.
    struct Model {
        config: Config,
        map: HashMap<Vec<u8>, (Vec<u8>, u64)>,
        now: u64,
    }

    fn model_int(bytes: &[u8]) -> Option<i64> {
        let text = core::str::from_utf8(bytes).ok()?;
        let digits = text.strip_prefix('-').unwrap_or(text);
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'))
            && text != "-0";
        canonical.then(|| text.parse().ok()).flatten()
    }

    impl Model {
        fn live(&self, key: &[u8]) -> Option<&(Vec<u8>, u64)> {
            self.map.get(key)
        }

        fn room(&self, new: usize) -> bool {
            self.map.len() + new <= self.config.keys
        }

        fn apply(&mut self, time: u64, name: &str, args: &[Vec<u8>]) -> Vec<u8> {
            const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";
            const BIG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";
            const LONG_KEY: &str = "ERR key exceeds maximum allowed size";
            const NOT_INT: &str = "ERR value is not an integer or out of range";
            self.now = self.now.max(time);
            let now = self.now;
            self.map
                .retain(|_, (_, expiry)| *expiry == 0 || now <= *expiry);
            let (key_max, value_max) = (self.config.key_max, self.config.value_max);
            let arity = |ok: bool| {
                (!ok).then(|| {
                    err(&format!(
                        "ERR wrong number of arguments for '{}' command",
                        name.to_lowercase()
                    ))
                })
            };
            match name {
                "GET" | "STRLEN" | "TTL" | "PTTL" | "INCR" | "DECR" => {
                    if let Some(e) = arity(args.len() == 1) {
                        return e;
                    }
                }
                "INCRBY" | "DECRBY" | "APPEND" => {
                    if let Some(e) = arity(args.len() == 2) {
                        return e;
                    }
                }
                "MSET" => {
                    if let Some(e) = arity(!args.is_empty() && args.len() % 2 == 0) {
                        return e;
                    }
                }
                "SET" => {
                    if let Some(e) = arity(args.len() >= 2) {
                        return e;
                    }
                }
                "DEL" | "EXISTS" | "MGET" => {
                    if let Some(e) = arity(!args.is_empty()) {
                        return e;
                    }
                }
                "DBSIZE" => {
                    if let Some(e) = arity(args.is_empty()) {
                        return e;
                    }
                }
                _ => {}
            }
            match name {
                "GET" => self.live(&args[0]).map_or(NULL.to_vec(), |(v, _)| bulk(v)),
                "STRLEN" => int(self.live(&args[0]).map_or(0, |(v, _)| v.len() as i64)),
                "TTL" | "PTTL" => int(match self.live(&args[0]) {
                    None => -2,
                    Some((_, 0)) => -1,
                    Some((_, e)) if name == "PTTL" => (e - now) as i64,
                    Some((_, e)) => ((e - now) as i64 + 500) / 1000,
                }),
                "EXISTS" => int(args.iter().filter(|k| self.map.contains_key(*k)).count() as i64),
                "DEL" => {
                    let mut n = 0;
                    for k in args {
                        n += self.map.remove(k).is_some() as i64;
                    }
                    int(n)
                }
                "MGET" => {
                    let mut out = format!("*{}\r\n", args.len()).into_bytes();
                    for k in args {
                        out.extend(self.live(k).map_or(NULL.to_vec(), |(v, _)| bulk(v)));
                    }
                    out
                }
                "DBSIZE" => int(self.map.len() as i64),
                "FLUSHALL" => {
                    let ok = args.is_empty()
                        || (args.len() == 1
                            && ["ASYNC", "SYNC"]
                                .iter()
                                .any(|m| args[0].eq_ignore_ascii_case(m.as_bytes())));
                    if !ok {
                        return err("ERR syntax error");
                    }
                    self.map.clear();
                    OK.to_vec()
                }
                "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
                    let by: i128 = match name {
                        "INCR" => 1,
                        "DECR" => -1,
                        _ => match model_int(&args[1]) {
                            None => return err(NOT_INT),
                            Some(i64::MIN) if name == "DECRBY" => {
                                return err("ERR decrement would overflow")
                            }
                            Some(by) if name == "DECRBY" => -(by as i128),
                            Some(by) => by as i128,
                        },
                    };
                    let (old, expiry) = match self.live(&args[0]) {
                        Some((v, e)) => match model_int(v) {
                            Some(old) => (old, *e),
                            None => return err(NOT_INT),
                        },
                        None => (0, 0),
                    };
                    let new = old as i128 + by;
                    if new < i64::MIN as i128 || new > i64::MAX as i128 {
                        return err("ERR increment or decrement would overflow");
                    }
                    if args[0].len() > key_max {
                        return err(LONG_KEY);
                    }
                    if !self.map.contains_key(&args[0]) && !self.room(1) {
                        return err(OOM);
                    }
                    self.map
                        .insert(args[0].clone(), (format!("{new}").into_bytes(), expiry));
                    int(new as i64)
                }
                "APPEND" => {
                    let old = self.live(&args[0]).cloned();
                    let (mut value, expiry) = old.clone().unwrap_or_default();
                    value.extend_from_slice(&args[1]);
                    if value.len() > value_max {
                        return err(BIG);
                    }
                    if old.is_none() {
                        if args[0].len() > key_max {
                            return err(LONG_KEY);
                        }
                        if !self.room(1) {
                            return err(OOM);
                        }
                    }
                    let len = value.len();
                    self.map.insert(args[0].clone(), (value, expiry));
                    int(len as i64)
                }
                "MSET" => {
                    // Pair by pair, the key before its value.
                    for p in args.chunks(2) {
                        if p[0].len() > key_max {
                            return err(LONG_KEY);
                        }
                        if p[1].len() > value_max {
                            return err(BIG);
                        }
                    }
                    let mut new: Vec<&Vec<u8>> = args
                        .chunks(2)
                        .map(|p| &p[0])
                        .filter(|k| !self.map.contains_key(*k))
                        .collect();
                    new.sort();
                    new.dedup();
                    if !self.room(new.len()) {
                        return err(OOM);
                    }
                    for p in args.chunks(2) {
                        self.map.insert(p[0].clone(), (p[1].clone(), 0));
                    }
                    OK.to_vec()
                }
                "SET" => self.set(args),
                _ => unreachable!("{name}"),
            }
        }

        fn set(&mut self, args: &[Vec<u8>]) -> Vec<u8> {
            let (key, value) = (&args[0], &args[1]);
            let (mut nx, mut xx, mut get, mut keep) = (false, false, false, false);
            let mut expire: Option<(String, &Vec<u8>)> = None;
            let mut i = 2;
            while i < args.len() {
                let option = String::from_utf8_lossy(&args[i]).to_uppercase();
                match option.as_str() {
                    "NX" if !xx => nx = true,
                    "XX" if !nx => xx = true,
                    "GET" => get = true,
                    "KEEPTTL" if expire.is_none() => keep = true,
                    "EX" | "PX" | "EXAT" | "PXAT"
                        if i + 1 < args.len()
                            && !keep
                            && expire.as_ref().is_none_or(|(unit, _)| *unit == option) =>
                    {
                        expire = Some((option.clone(), &args[i + 1]));
                        i += 1;
                    }
                    _ => return err("ERR syntax error"),
                }
                i += 1;
            }
            let now = self.now as i128;
            let mut expiry = None;
            if let Some((unit, number)) = expire {
                let Some(n) = model_int(number) else {
                    return err("ERR value is not an integer or out of range");
                };
                let seconds = unit.starts_with('E');
                let invalid = err("ERR invalid expire time in 'set' command");
                if n <= 0 || (seconds && n > i64::MAX / 1000) {
                    return invalid;
                }
                let ms = n as i128 * if seconds { 1000 } else { 1 };
                let when = if unit.ends_with("AT") { ms } else { ms + now };
                if when > i64::MAX as i128 {
                    return invalid;
                }
                expiry = Some(when);
            }
            if key.len() > self.config.key_max {
                return err("ERR key exceeds maximum allowed size");
            }
            if value.len() > self.config.value_max {
                return err("ERR string exceeds maximum allowed size (proto-max-bulk-len)");
            }
            let old = self.map.get(key).cloned();
            let goes = !(nx && old.is_some() || xx && old.is_none());
            let deletes = expiry.is_some_and(|e| e <= now);
            if goes && !deletes && old.is_none() && !self.room(1) {
                return err("OOM command not allowed when used memory > 'maxmemory'.");
            }
            let reply = match (get, &old, goes) {
                (true, Some((v, _)), _) => bulk(v),
                (true, None, _) | (false, _, false) => NULL.to_vec(),
                (false, _, true) => OK.to_vec(),
            };
            if goes {
                if deletes {
                    self.map.remove(key);
                } else {
                    let expiry = match (expiry, keep, &old) {
                        (Some(e), _, _) => e as u64,
                        (None, true, Some((_, e))) => *e,
                        _ => 0,
                    };
                    self.map.insert(key.clone(), (value.clone(), expiry));
                }
            }
            reply
        }
    }

    /// A random command over few keys (some too long), values of every kind (numbers, text
    /// over the limit), SET options valid and not.
    fn random_command(rng: &mut Rng, now: u64) -> (&'static str, Vec<Vec<u8>>) {
        let keys: [&[u8]; 12] = [
            b"a",
            b"b",
            b"c",
            b"d",
            b"e",
            b"f",
            b"g",
            b"h",
            b"i",
            b"",
            b"key\r\n",
            b"toolongkey",
        ];
        let mut key = || keys[rng.below(keys.len())].to_vec();
        let key1 = key();
        let key2 = key();
        let key3 = key();
        let value = |rng: &mut Rng| -> Vec<u8> {
            match rng.below(8) {
                0 => b"0".to_vec(),
                1 => format!("{}", rng.next() as i64 % 1000).into_bytes(),
                2 => b"9223372036854775806".to_vec(),
                3 => b"-9223372036854775807".to_vec(),
                4 => b"01".to_vec(),
                _ => (0..rng.below(27))
                    .map(|_| b"xy\r\n0"[rng.below(5)])
                    .collect(),
            }
        };
        let v1 = value(rng);
        let v2 = value(rng);
        let number = |rng: &mut Rng| -> Vec<u8> {
            let n: i64 = match rng.below(9) {
                0 => 0,
                1 => -1,
                2 => (now / 1000) as i64 + rng.below(3) as i64,
                3 => now as i64 + rng.below(2000) as i64,
                4 => 1 + rng.below(3) as i64,
                5 => i64::MAX,
                6 => i64::MIN,
                _ => 1 + rng.below(2000) as i64,
            };
            format!("{n}").into_bytes()
        };
        let name = [
            "GET", "SET", "SET", "SET", "DEL", "EXISTS", "INCR", "INCRBY", "DECR", "DECRBY",
            "MSET", "MGET", "APPEND", "STRLEN", "DBSIZE", "FLUSHALL", "TTL", "PTTL",
        ][rng.below(18)];
        let mut args = match name {
            "SET" => {
                let mut args = vec![key1, v1];
                if rng.below(2) == 0 {
                    // One valid-looking expiry, maybe with a condition.
                    let units: [&[u8]; 5] = [b"EX", b"PX", b"EXAT", b"PXAT", b"px"];
                    args.push(units[rng.below(units.len())].to_vec());
                    args.push(number(rng));
                    let extras: [&[u8]; 5] = [b"NX", b"XX", b"GET", b"get", b"xx"];
                    if rng.below(2) == 0 {
                        args.push(extras[rng.below(extras.len())].to_vec());
                    }
                    return (name, args);
                }
                for _ in 0..rng.below(4) {
                    let options: [&[u8]; 10] = [
                        b"NX", b"xx", b"GET", b"KEEPTTL", b"EX", b"px", b"EXAT", b"PXAT", b"ex",
                        b"bad",
                    ];
                    let option = options[rng.below(options.len())];
                    args.push(option.to_vec());
                    let takes_number =
                        [&b"EX"[..], b"px", b"EXAT", b"PXAT", b"ex"].contains(&option);
                    // Sometimes the number is missing.
                    if takes_number && rng.below(10) > 0 {
                        args.push(number(rng));
                    }
                }
                args
            }
            "INCRBY" | "DECRBY" => vec![
                key1,
                if rng.below(4) == 0 {
                    value(rng)
                } else {
                    number(rng)
                },
            ],
            "APPEND" => vec![key1, v1],
            "DEL" | "EXISTS" | "MGET" => vec![key1, key2, key3],
            "MSET" => vec![key1, v1, key2, v2],
            "DBSIZE" => vec![],
            "FLUSHALL" => {
                if rng.below(8) != 0 {
                    // Rare: it empties everything.
                    return ("DBSIZE", vec![]);
                }
                vec![]
            }
            _ => vec![key1],
        };
        // Sometimes a wrong argument count.
        if rng.below(40) == 0 {
            if rng.below(2) == 0 {
                args.pop();
            } else {
                args.push(b"extra".to_vec());
            }
        }
        (name, args)
    }

    fn apply_both(s: &mut Store<'_>, model: &mut Model, time: u64, name: &str, args: &[Vec<u8>]) {
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        let got = run(s, time, name, &refs);
        let expected = model.apply(time, name, args);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected),
            "{name} {:?} at {time}",
            args.iter()
                .map(|a| String::from_utf8_lossy(a))
                .collect::<Vec<_>>()
        );
    }

    /// Every key of the model reads back alike (value and TTL), and the live count matches.
    fn same_contents(s: &mut Store<'_>, model: &mut Model) {
        let time = model.now;
        let keys: Vec<Vec<u8>> = model.map.keys().cloned().collect();
        for key in keys {
            apply_both(s, model, time, "GET", core::slice::from_ref(&key));
            apply_both(s, model, time, "PTTL", &[key]);
        }
        apply_both(s, model, time, "DBSIZE", &[]);
    }

    fn clock_step(rng: &mut Rng, now: u64) -> u64 {
        match rng.below(10) {
            0 => now.saturating_sub(rng.below(500) as u64),
            1 => now + rng.below(3000) as u64,
            _ => now + rng.below(40) as u64,
        }
    }

    #[test]
    fn random_commands_match_the_model() {
        for seed in 1..=6u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut s = new_store(SMALL);
            let mut model = Model {
                config: SMALL,
                map: HashMap::new(),
                now: 0,
            };
            let mut time = 1_000_000;
            for step in 0..6000 {
                time = clock_step(&mut rng, time);
                let (name, args) = random_command(&mut rng, model.now.max(time));
                apply_both(&mut s, &mut model, time, name, &args);
                if step % 500 == 0 {
                    same_contents(&mut s, &mut model);
                }
            }
            same_contents(&mut s, &mut model);
        }
    }

    // ---- snapshots ----------------------------------------------------------------------------

    fn read_stream(s: &mut Store<'_>, bytes: u64, piece: usize) -> Vec<u8> {
        let mut stream = vec![0xAA; bytes as usize];
        for (i, chunk) in stream.chunks_mut(piece).enumerate() {
            s.snapshot_read((i * piece) as u64, chunk);
        }
        stream
    }

    fn install(s: &mut Store<'_>, announced: u64, stream: &[u8], piece: usize) -> u64 {
        assert!(s.install_begin(announced));
        for (i, chunk) in stream.chunks(piece).enumerate() {
            s.install_write((i * piece) as u64, chunk);
        }
        let digest = s.install_end();
        assert_eq!(digest, s.digest());
        check_consistent(s);
        digest
    }

    /// Donor and joiner follow the model through random commands: the joiner installs the
    /// donor's snapshot, taken while the donor kept applying, and both then answer alike.
    #[test]
    fn snapshots_round_trip_while_the_donor_applies() {
        for seed in 1..=8u64 {
            let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
            let mut donor = new_store(SMALL);
            let mut model = Model {
                config: SMALL,
                map: HashMap::new(),
                now: 0,
            };
            let mut time = 5_000;
            for _ in 0..rng.below(400) {
                time = clock_step(&mut rng, time);
                let (name, args) = random_command(&mut rng, model.now.max(time));
                apply_both(&mut donor, &mut model, time, name, &args);
            }
            let snapshot = donor.snapshot_begin();
            assert_eq!(snapshot.digest, donor.digest());
            check_consistent(&donor);
            let at_begin = Model {
                config: SMALL,
                map: model.map.clone(),
                now: model.now,
            };
            let before = read_stream(&mut donor, snapshot.bytes, 7);
            // The donor goes on (FLUSHALL included) while the stream is read in pieces.
            let mut interleaved = vec![0; snapshot.bytes as usize];
            let mut read = 0;
            let mut later = Vec::new();
            while read < interleaved.len() {
                let n = (1 + rng.below(40)).min(interleaved.len() - read);
                donor.snapshot_read(read as u64, &mut interleaved[read..read + n]);
                read += n;
                time = clock_step(&mut rng, time);
                let (name, args) = if rng.below(30) == 0 {
                    ("FLUSHALL", vec![])
                } else {
                    random_command(&mut rng, model.now.max(time))
                };
                apply_both(&mut donor, &mut model, time, name, &args);
                later.push((time, name, args));
            }
            assert_eq!(interleaved, before);
            assert_eq!(read_stream(&mut donor, snapshot.bytes, 1000), before);
            donor.snapshot_end();
            // Joiners of other capacities install it, whatever the piece size.
            for (config, piece) in [
                (SMALL, 1),
                (Config { keys: 33, ..SMALL }, 13),
                (
                    Config {
                        keys: 8,
                        key_max: 30,
                        value_max: 100,
                    },
                    4096,
                ),
            ] {
                let mut joiner = new_store(config);
                run(&mut joiner, 1, "SET", &[b"stale", b"replaced"]);
                assert_eq!(
                    install(&mut joiner, snapshot.bytes, &before, piece),
                    snapshot.digest
                );
                assert_eq!(joiner.now(), at_begin.now);
                let mut replay = Model {
                    config: SMALL,
                    map: at_begin.map.clone(),
                    now: at_begin.now,
                };
                same_contents(&mut joiner, &mut replay);
                if config == SMALL {
                    for (time, name, args) in &later {
                        apply_both(&mut joiner, &mut replay, *time, name, args);
                    }
                    same_contents(&mut joiner, &mut replay);
                    same_contents(&mut donor, &mut model);
                    // Another layout, another history: the same digest.
                    assert_eq!(joiner.stored(), donor.stored());
                    assert_eq!(joiner.digest(), donor.digest());
                }
            }
        }
    }

    #[test]
    fn stream_format_is_as_documented() {
        let mut s = new_store(SMALL);
        run(&mut s, 100, "SET", &[b"k", b"vv", b"PX", b"50"]);
        run(&mut s, 100, "SET", &[b"gone", b"x", b"PX", b"1"]);
        run(&mut s, 102, "SET", &[b"j", b""]);
        let snapshot = s.snapshot_begin();
        // The expired key is removed first: not in the stream, nor in the digest.
        assert_eq!(s.stored(), 2);
        let stream = read_stream(&mut s, snapshot.bytes, 5);
        let mut expected = Vec::new();
        expected.extend_from_slice(&102u64.to_le_bytes());
        expected.extend_from_slice(&2u64.to_le_bytes());
        for (key, value, expiry) in [(&b"k"[..], &b"vv"[..], 150u64), (b"j", b"", 0)] {
            expected.extend_from_slice(&(key.len() as u32).to_le_bytes());
            expected.extend_from_slice(&(value.len() as u32).to_le_bytes());
            expected.extend_from_slice(&expiry.to_le_bytes());
            expected.extend_from_slice(key);
            expected.extend_from_slice(value);
        }
        assert_eq!(stream, expected);
        let entries = entry_hash(b"k", b"vv", 150) ^ entry_hash(b"j", b"", 0);
        assert_eq!(
            snapshot.digest,
            entries ^ Hasher::new(CLOCK_DOMAIN).word(102).finish()
        );
        // Reads past the end, and with no snapshot open, are zeros.
        let mut buf = [1u8; 8];
        s.snapshot_read(snapshot.bytes - 2, &mut buf);
        assert_eq!(buf, [0, b'j', 0, 0, 0, 0, 0, 0]);
        s.snapshot_end();
        let mut buf = [1u8; 8];
        s.snapshot_read(0, &mut buf);
        assert_eq!(buf, [0; 8]);
    }

    #[test]
    fn frozen_view_survives_flushall_and_slot_reuse() {
        let mut s = new_store(SMALL);
        for i in 0..6u8 {
            run(&mut s, 1, "SET", &[&[b'k', i], &[i; 10]]);
        }
        let snapshot = s.snapshot_begin();
        let before = read_stream(&mut s, snapshot.bytes, 1000);
        run(&mut s, 2, "APPEND", &[b"k\x01", b"more"]);
        run(&mut s, 2, "FLUSHALL", &[]);
        for i in 0..8u8 {
            run(&mut s, 3, "SET", &[&[b'n', i], &[0xEE; 24], b"PX", b"5"]);
        }
        run(&mut s, 9, "DBSIZE", &[]);
        run(&mut s, 9, "MSET", &[b"a", b"1", b"b", b"2"]);
        run(&mut s, 9, "INCR", &[b"a"]);
        assert_eq!(read_stream(&mut s, snapshot.bytes, 7), before);
        s.snapshot_end();
        let mut joiner = new_store(SMALL);
        assert_eq!(
            install(&mut joiner, snapshot.bytes, &before, 100),
            snapshot.digest
        );
        assert_eq!(run(&mut joiner, 1, "GET", &[b"k\x01"]), bulk(&[1; 10]));
    }

    #[test]
    fn bad_streams_install_consistently_without_panic() {
        let mut donor = new_store(SMALL);
        for i in 0..8u8 {
            run(&mut donor, 1, "SET", &[&[b'k', i], &[i; 20], b"EX", b"100"]);
        }
        let snapshot = donor.snapshot_begin();
        let stream = read_stream(&mut donor, snapshot.bytes, 64);
        donor.snapshot_end();
        let mut to = new_store(SMALL);
        assert_eq!(
            install(&mut to, snapshot.bytes, &stream, 3),
            snapshot.digest
        );
        // Cut short, announced short, past the announced length.
        for cut in [0, 5, 16, 17, 40, stream.len() - 1] {
            assert_ne!(
                install(&mut to, snapshot.bytes, &stream[..cut], 7),
                snapshot.digest
            );
            if cut >= 16 {
                assert_ne!(
                    install(&mut to, cut as u64, &stream[..cut], 7),
                    snapshot.digest
                );
            }
        }
        assert!(!to.install_begin(3));
        // Out of order, repeated pieces.
        assert!(to.install_begin(snapshot.bytes));
        to.install_write(0, &stream[..50]);
        to.install_write(60, &stream[60..]);
        assert_ne!(to.install_end(), snapshot.digest);
        check_consistent(&to);
        // A key twice: the repeat is skipped and the digest still matches the donor's.
        let first = 16 + 16 + 2 + 20;
        let mut twice = stream[..first].to_vec();
        twice.extend_from_slice(&stream[16..]);
        twice[8..16].copy_from_slice(&9u64.to_le_bytes());
        assert_eq!(
            install(&mut to, twice.len() as u64, &twice, 5),
            snapshot.digest
        );
        // A joiner too small skips what does not fit; lengths over its limits stop it.
        let mut small = new_store(Config { keys: 7, ..SMALL });
        assert_ne!(
            install(&mut small, snapshot.bytes, &stream, 11),
            snapshot.digest
        );
        assert_eq!(small.stored(), 7);
        let mut narrow = new_store(Config {
            value_max: 20,
            ..SMALL
        });
        assert_eq!(
            install(&mut narrow, snapshot.bytes, &stream, 11),
            snapshot.digest
        );
        let mut narrower = new_store(Config {
            key_max: 1,
            ..SMALL
        });
        assert_ne!(
            install(&mut narrower, snapshot.bytes, &stream, 11),
            snapshot.digest
        );
        assert_eq!(narrower.stored(), 0);
        // Abandoned midway, then a whole install.
        assert!(to.install_begin(snapshot.bytes));
        to.install_write(0, &stream[..70]);
        to.install_abandon();
        check_consistent(&to);
        run(&mut to, 1, "SET", &[b"x", b"y"]);
        assert_eq!(
            install(&mut to, snapshot.bytes, &stream, 9),
            snapshot.digest
        );
        // Garbage of many lengths.
        let mut rng = Rng(99);
        // Longer than any stream of this store's capacity: refused, nothing changed.
        let digest = to.digest();
        assert!(!to.install_begin(8 * (16 + 8 + 24) + 16 + 1));
        assert_eq!(to.digest(), digest);
        for len in [16, 17, 31, 32, 33, 100, 400] {
            let garbage: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = install(&mut to, len as u64, &garbage, 1 + rng.below(20));
            let small_lengths: Vec<u8> = (0..len).map(|i| (i % 3) as u8).collect();
            let _ = install(&mut to, len as u64, &small_lengths, 1 + rng.below(20));
        }
        // Writes with no install open are ignored; the store still works.
        to.install_write(0, &stream);
        check_consistent(&to);
        assert_eq!(run(&mut to, 1, "SET", &[b"x", b"y"]), OK);
    }

    // ---- fuzzing ----------------------------------------------------------------------------

    #[test]
    fn fuzzed_commands_never_panic() {
        let mut rng = Rng(0x0123_4567_89AB_CDEF);
        let mut s = new_store(SMALL);
        let mut response = [0u8; 256];
        for round in 0..20_000 {
            let command: Vec<u8> = match round % 3 {
                // Random bytes.
                0 => (0..rng.below(40)).map(|_| rng.next() as u8).collect(),
                // Any opcode, random arguments.
                1 => {
                    let opcode = Opcode::ALL[rng.below(Opcode::ALL.len())];
                    let args: Vec<Vec<u8>> = (0..rng.below(8))
                        .map(|_| {
                            let words: [&[u8]; 12] = [
                                b"a",
                                b"1",
                                b"-1",
                                b"EX",
                                b"PX",
                                b"NX",
                                b"GET",
                                b"KEEPTTL",
                                b"9223372036854775807",
                                b"ASYNC",
                                b"",
                                b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                            ];
                            words[rng.below(words.len())].to_vec()
                        })
                        .collect();
                    let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
                    let mut out = vec![0; encoded_len(refs.iter().copied())];
                    encode(opcode, &refs, rng.next() % 100_000, &mut out).unwrap();
                    out
                }
                // A valid command with bytes flipped.
                _ => {
                    let mut bytes = command(rng.next() % 1000, "SET", &[b"k", b"v", b"PX", b"10"]);
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.next() as u8;
                    bytes
                }
            };
            let size = rng.below(response.len() + 1);
            let len = s.apply(&command, &mut response[..size]);
            assert!(len <= size);
            if round % 97 == 0 {
                check_consistent(&s);
            }
        }
        check_consistent(&s);
    }

    #[test]
    fn config_and_arena_checks() {
        assert_eq!(
            Config { keys: 0, ..SMALL }.arena_bytes(),
            Err(ConfigError::Invalid)
        );
        assert_eq!(
            Config {
                value_max: 19,
                ..SMALL
            }
            .arena_bytes(),
            Err(ConfigError::Invalid)
        );
        assert_eq!(
            Config {
                key_max: 0,
                ..SMALL
            }
            .arena_bytes(),
            Err(ConfigError::Invalid)
        );
        assert_eq!(
            Config {
                keys: KEYS_MAX,
                key_max: usize::MAX / 2,
                value_max: 20
            }
            .arena_bytes(),
            Err(ConfigError::TooLarge)
        );
        let needed = SMALL.arena_bytes().unwrap();
        let mut arena = vec![0u8; needed - 1];
        assert_eq!(
            Store::new(&mut arena, SMALL).err(),
            Some(ConfigError::ArenaTooSmall {
                needed,
                got: needed - 1
            })
        );
        // A larger arena is fine; its contents do not matter.
        let mut arena = vec![0xFFu8; needed + 100];
        let mut s = Store::new(&mut arena, SMALL).unwrap();
        check_consistent(&s);
        assert_eq!(run(&mut s, 1, "DBSIZE", &[]), int(0));
    }
}
