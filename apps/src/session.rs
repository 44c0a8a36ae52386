//! Exactly-once client sessions: a wrapper state machine that answers a retried request with
//! the reply it cached the first time instead of applying it twice.
//!
//! A client whose leader fails over does not know whether its in-flight commands were decided:
//! it must send them again, and a command that had been decided would then be applied twice.
//! [`ExactlyOnce`] wraps any application `A` (itself a [`StateMachine`]) and keeps, inside the
//! replicated state, a fixed table of client sessions with the replies of their recent requests.
//! Every replica holds the same table, so whichever replica leads after a fail-over answers the
//! retry from it.
//!
//! # Envelopes (commands)
//!
//! Every command the wrapper applies is an envelope; little-endian, version [`VERSION`]:
//!
//! | bytes | envelope |
//! |---|---|
//! | `1, 1` | `Register`: opens a session; the client id is the command's log position |
//! | `1, 2, client u64, seq u64, acked u64, payload…` | `Request`: applied at most once |
//! | `1, 3, client u64` | `Unregister`: frees the session's entry |
//! | `1, 4, payload…` | `Plain`: no session, applied every time it is decided |
//!
//! `seq` numbers a client's requests (rising, gaps allowed); `acked` says the client has settled
//! every request below it (it got their replies), so the table may forget them; `acked <= seq`.
//! An envelope that does not decode changes nothing and is answered [`Refusal::Malformed`].
//!
//! # Replies
//!
//! The wrapper's reply is a status byte, then its body ([`decode_reply`], [`Reply`]):
//! `Applied` (1) and `Duplicate` (2) carry the application's reply bytes; `Registered` (3) the
//! client id (`u64`); `Unregistered` (4), `Expired` (5) and `ReplyNotKept` (7) nothing; `Stale`
//! (6) the lowest sequence number the session still remembers (`u64`); `Malformed` (8) one byte,
//! the [`DecodeError`].
//!
//! # A request, step by step
//!
//! 1. A request whose payload the application calls read-only ([`ReadOnly`]) is applied every
//!    time and never cached: a read needs no table space, and running it again is harmless. It
//!    still refreshes a session it names (below), and it is applied even without a session.
//! 2. An unknown client (never registered, unregistered or evicted): `Expired`, nothing applied.
//! 3. The session is refreshed: its last use becomes this position, its floor rises to `acked`
//!    and the cached replies below the floor are forgotten.
//! 4. `seq` below the floor: `Stale`. The table no longer knows whether it was applied, so the
//!    client must treat its outcome as unknown.
//! 5. `seq` in the cache: `Duplicate` with the cached reply, or `ReplyNotKept` when the reply was
//!    too large to keep. The application is not called.
//! 6. Otherwise the application applies it, and its reply is cached: kept when at most `REPLY`
//!    bytes, else as a marker that makes every retry `ReplyNotKept` (never a second
//!    application). A window already holding `WINDOW` replies first forgets its lowest
//!    sequence number (the new one, if lowest) and raises the floor above it.
//!
//! `Plain` envelopes are for commands that need no guarantee (or carry their own); they cost no
//! table space. A `Register` that is retried after a fail-over opens a second session; the first
//! is never used and the table evicts it in time (a client has no identity before registering).
//!
//! # Eviction
//!
//! A `Register` into a full table evicts the session used least recently (the lowest last-use
//! position, ties by the lower client id, which cannot happen between sessions this table
//! created: one position touches one session). The choice depends only on the replicated
//! state, never on where an entry sits in the table, so every replica evicts the same one.
//!
//! # Snapshots
//!
//! The stream is the session table followed by the application's own stream (an application
//! without snapshots makes the wrapper keep none). Little-endian:
//! - header, [`STREAM_HEADER_BYTES`]: version `u8`, 3 zero bytes, `CLIENTS u32`, `WINDOW u32`,
//!   `REPLY u32`, sessions `u32`, 4 zero bytes, table length in bytes `u64` (header included,
//!   so the joiner knows where the application's stream starts);
//! - per session, in rising client id order: client `u64`, last use `u64`, floor `u64`, cached
//!   replies `u32`, 4 zero bytes; then per cached reply, in rising sequence order: seq `u64`,
//!   kept `u8` (1, or 0 for the too-large marker), 3 zero bytes, length `u32`, the bytes.
//!
//! Table indices are not in the stream and the order is canonical, so equal tables give equal
//! streams whatever their layout, and the joiner places sessions wherever it likes. The
//! geometry is in the header and in the digest, and a joiner installs only its own geometry:
//! `CLIENTS`, `WINDOW` and `REPLY` are part of what the replicated state *is* (a table of
//! another size evicts at another time, so it would answer `Expired` where the donor applies).
//! A joiner with a smaller (or larger) table therefore stops decoding at the header, and its
//! install ends with a digest that cannot equal the donor's: the core rejects the transfer. Run
//! every replica of a cluster with the same geometry.
//!
//! The digest is the xor of one hash per session (client, last use, floor) and one per cached
//! reply (client, seq, kept, bytes), kept up to date at every change (each hash is computed once,
//! when its item changes), mixed with the geometry and the application's digest. The donor
//! freezes the table copy-on-write: [`StateMachine::snapshot_begin`] lists the live sessions,
//! and the first change to a listed session while the snapshot is open copies it into a shadow
//! entry of its own (so the shadow doubles the table's memory, and `begin` copies nothing).
//!
//! # Invariants
//! - `ids[i] == entries[i].client` for every index; `FREE` marks a free entry; client ids of
//!   live entries are distinct, and `live` counts them.
//! - In a session, cached sequence numbers are distinct, at most `WINDOW`, and all at or above
//!   the floor; the floor never falls.
//! - Every request of a session at or above its floor that the application applied as a write
//!   is in the cache: forgetting a reply always raises the floor above it. So a request is
//!   applied at most once while its session lives.
//! - `table` equals the xor of the hashes of every live session and every cached reply, at all
//!   times (during an install too).
//! - While a snapshot is open, its stream's bytes never change whatever is applied.
//! - A snapshot and an install never overlap: beginning one ends the other.
//! - Work per command is bounded: `O(CLIENTS + WINDOW)` plus the application's and one copy of
//!   its reply. No input (envelope, stream bytes, offsets) panics.
//! - Determinism assumes every replica hands `apply` a `response` of the same length (the core's
//!   is its `ENTRY`): the application's reply, and so what is cached, may depend on it.

use mu_nostd::hash::Hasher;
use mu_nostd::{Snapshot, StateMachine, Ticket};

/// The envelope format's version (first byte of every envelope).
pub const VERSION: u8 = 1;
const KIND_REGISTER: u8 = 1;
const KIND_REQUEST: u8 = 2;
const KIND_UNREGISTER: u8 = 3;
const KIND_PLAIN: u8 = 4;
/// Length of a `Register` envelope.
pub const REGISTER_BYTES: usize = 2;
/// Bytes before a `Request`'s payload.
pub const REQUEST_HEADER_BYTES: usize = 2 + 3 * 8;
/// Length of an `Unregister` envelope.
pub const UNREGISTER_BYTES: usize = 2 + 8;
/// Bytes before a `Plain` payload.
pub const PLAIN_HEADER_BYTES: usize = 2;
/// Bytes before the application's reply in an `Applied` or `Duplicate` reply.
pub const REPLY_HEADER_BYTES: usize = 1;
/// The longest reply that carries no application bytes (`Registered`, `Stale`).
pub const REPLY_FIXED_MAX: usize = 1 + 8;

const STATUS_APPLIED: u8 = 1;
const STATUS_DUPLICATE: u8 = 2;
const STATUS_REGISTERED: u8 = 3;
const STATUS_UNREGISTERED: u8 = 4;
const STATUS_EXPIRED: u8 = 5;
const STATUS_STALE: u8 = 6;
const STATUS_NOT_KEPT: u8 = 7;
const STATUS_MALFORMED: u8 = 8;

/// Bytes of the snapshot stream's header.
pub const STREAM_HEADER_BYTES: usize = 32;
const SESSION_RECORD_BYTES: usize = 32;
const REPLY_RECORD_BYTES: usize = 16;
const STREAM_VERSION: u8 = 1;

/// Marks a free table entry. No session has this id: a register at this position is refused.
const FREE: u64 = u64::MAX;

const SESSION_DOMAIN: u64 = 0x0053_4553_5349_4F4E;
const REPLY_DOMAIN: u64 = 0x0053_4553_5245_504C;
const DIGEST_DOMAIN: u64 = 0x0053_4553_4449_4745;
const INCOMPLETE_DOMAIN: u64 = 0x0053_4553_494E_434F;

// ---- envelopes -------------------------------------------------------------------------------

/// A decoded command of the wrapper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Envelope<'a> {
    /// Opens a session; its id is the position this command is decided at.
    Register,
    /// A request of a session, applied at most once.
    Request {
        /// The session's id.
        client: u64,
        /// The request's number in its session.
        seq: u64,
        /// The client settled every request below this one (at most `seq`).
        acked: u64,
        /// The application's command.
        payload: &'a [u8],
    },
    /// Closes a session and frees its entry.
    Unregister {
        /// The session's id.
        client: u64,
    },
    /// An application command outside any session: applied every time it is decided.
    Plain {
        /// The application's command.
        payload: &'a [u8],
    },
}

/// Why bytes do not decode as an envelope or a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DecodeError {
    /// No bytes.
    Empty,
    /// An envelope version this code does not know.
    Version,
    /// An envelope kind or reply status this code does not know.
    Kind,
    /// Too short or too long for its kind.
    Length,
    /// A request's `acked` is above its `seq`: a client cannot have settled the request it sends.
    AckedAboveSeq,
}

impl DecodeError {
    const ALL: [DecodeError; 5] = [
        DecodeError::Empty,
        DecodeError::Version,
        DecodeError::Kind,
        DecodeError::Length,
        DecodeError::AckedAboveSeq,
    ];

    fn code(self) -> u8 {
        match self {
            DecodeError::Empty => 1,
            DecodeError::Version => 2,
            DecodeError::Kind => 3,
            DecodeError::Length => 4,
            DecodeError::AckedAboveSeq => 5,
        }
    }

    fn from_code(code: u8) -> Option<DecodeError> {
        DecodeError::ALL.into_iter().find(|e| e.code() == code)
    }
}

fn word(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

fn word32(bytes: &[u8], at: usize) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Decodes an envelope (a command of the wrapper).
pub fn decode(bytes: &[u8]) -> Result<Envelope<'_>, DecodeError> {
    let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != VERSION {
        return Err(DecodeError::Version);
    }
    let (&kind, _) = rest.split_first().ok_or(DecodeError::Length)?;
    let envelope = match kind {
        KIND_REGISTER if bytes.len() == REGISTER_BYTES => Envelope::Register,
        KIND_REQUEST if bytes.len() >= REQUEST_HEADER_BYTES => {
            let (client, seq, acked) = (word(bytes, 2), word(bytes, 10), word(bytes, 18));
            if acked > seq {
                return Err(DecodeError::AckedAboveSeq);
            }
            Envelope::Request {
                client,
                seq,
                acked,
                payload: &bytes[REQUEST_HEADER_BYTES..],
            }
        }
        KIND_UNREGISTER if bytes.len() == UNREGISTER_BYTES => Envelope::Unregister {
            client: word(bytes, 2),
        },
        KIND_PLAIN => Envelope::Plain {
            payload: &bytes[PLAIN_HEADER_BYTES..],
        },
        KIND_REGISTER | KIND_REQUEST | KIND_UNREGISTER => return Err(DecodeError::Length),
        _ => return Err(DecodeError::Kind),
    };
    debug_assert_eq!(envelope.encoded_len(), bytes.len());
    Ok(envelope)
}

impl Envelope<'_> {
    /// Its encoded length.
    pub fn encoded_len(&self) -> usize {
        match self {
            Envelope::Register => REGISTER_BYTES,
            Envelope::Request { payload, .. } => REQUEST_HEADER_BYTES + payload.len(),
            Envelope::Unregister { .. } => UNREGISTER_BYTES,
            Envelope::Plain { payload } => PLAIN_HEADER_BYTES + payload.len(),
        }
    }

    /// Encodes it into `out`; returns the length, or `None` when `out` is too short. A request
    /// with `acked > seq` encodes (so that tests can send one) but never decodes.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let len = self.encoded_len();
        let out = out.get_mut(..len)?;
        out[0] = VERSION;
        match *self {
            Envelope::Register => out[1] = KIND_REGISTER,
            Envelope::Request {
                client,
                seq,
                acked,
                payload,
            } => {
                out[1] = KIND_REQUEST;
                out[2..10].copy_from_slice(&client.to_le_bytes());
                out[10..18].copy_from_slice(&seq.to_le_bytes());
                out[18..26].copy_from_slice(&acked.to_le_bytes());
                out[REQUEST_HEADER_BYTES..].copy_from_slice(payload);
            }
            Envelope::Unregister { client } => {
                out[1] = KIND_UNREGISTER;
                out[2..10].copy_from_slice(&client.to_le_bytes());
            }
            Envelope::Plain { payload } => {
                out[1] = KIND_PLAIN;
                out[PLAIN_HEADER_BYTES..].copy_from_slice(payload);
            }
        }
        debug_assert!(match *self {
            Envelope::Request { seq, acked, .. } if acked > seq =>
                decode(out) == Err(DecodeError::AckedAboveSeq),
            _ => decode(out) == Ok(*self),
        });
        Some(len)
    }
}

/// Encodes a `Register` into `out`; returns the length (`None`: `out` too short).
pub fn encode_register(out: &mut [u8]) -> Option<usize> {
    Envelope::Register.encode(out)
}

/// Encodes a `Request` into `out`; returns the length (`None`: `out` too short). Clients
/// normally build requests with a [`Session`].
pub fn encode_request(
    out: &mut [u8],
    client: u64,
    seq: u64,
    acked: u64,
    payload: &[u8],
) -> Option<usize> {
    Envelope::Request {
        client,
        seq,
        acked,
        payload,
    }
    .encode(out)
}

/// Encodes an `Unregister` into `out`; returns the length (`None`: `out` too short).
pub fn encode_unregister(out: &mut [u8], client: u64) -> Option<usize> {
    Envelope::Unregister { client }.encode(out)
}

/// Encodes a `Plain` command into `out`; returns the length (`None`: `out` too short).
pub fn encode_plain(out: &mut [u8], payload: &[u8]) -> Option<usize> {
    Envelope::Plain { payload }.encode(out)
}

// ---- replies ---------------------------------------------------------------------------------

/// Why the wrapper answered without the application's reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Refusal {
    /// The session is unknown: never registered, unregistered, or evicted. Nothing was applied;
    /// the client registers again (the outcome of its earlier requests is unknown).
    Expired,
    /// The request is below what the session remembers: it may or may not have been applied,
    /// and it was not applied now.
    Stale {
        /// The lowest sequence number the session still remembers.
        floor: u64,
    },
    /// The request was applied once already and its reply was too large to keep: it was not
    /// applied again.
    ReplyNotKept,
    /// The envelope does not decode; nothing changed.
    Malformed(DecodeError),
}

/// What the wrapper answered, as a client decodes it ([`decode_reply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Reply<'a> {
    /// Applied now; the application's reply.
    Applied(&'a [u8]),
    /// Applied before; its cached reply, the application was not called.
    Duplicate(&'a [u8]),
    /// A session was opened.
    Registered {
        /// Its id: the position the register was decided at.
        client: u64,
    },
    /// The session was closed.
    Unregistered,
    /// Not applied (see [`Refusal`]).
    Refused(Refusal),
}

impl<'a> Reply<'a> {
    /// The application's reply, whether applied now or answered from the cache.
    pub fn result(self) -> Result<&'a [u8], Refusal> {
        match self {
            Reply::Applied(bytes) | Reply::Duplicate(bytes) => Ok(bytes),
            Reply::Registered { .. } | Reply::Unregistered => Ok(&[]),
            Reply::Refused(refusal) => Err(refusal),
        }
    }

    /// Its encoded length.
    pub fn encoded_len(&self) -> usize {
        match self {
            Reply::Applied(bytes) | Reply::Duplicate(bytes) => REPLY_HEADER_BYTES + bytes.len(),
            Reply::Registered { .. } | Reply::Refused(Refusal::Stale { .. }) => 1 + 8,
            Reply::Refused(Refusal::Malformed(_)) => 2,
            Reply::Unregistered | Reply::Refused(Refusal::Expired | Refusal::ReplyNotKept) => 1,
        }
    }

    /// Encodes it into `out`, as much as fits (a reply is cut, never refused); returns the
    /// length written.
    pub fn encode(&self, out: &mut [u8]) -> usize {
        let mut fixed = [0u8; REPLY_FIXED_MAX];
        let (status, body): (u8, &[u8]) = match *self {
            Reply::Applied(bytes) => (STATUS_APPLIED, bytes),
            Reply::Duplicate(bytes) => (STATUS_DUPLICATE, bytes),
            Reply::Registered { client } => {
                fixed[..8].copy_from_slice(&client.to_le_bytes());
                (STATUS_REGISTERED, &fixed[..8])
            }
            Reply::Unregistered => (STATUS_UNREGISTERED, &[]),
            Reply::Refused(Refusal::Expired) => (STATUS_EXPIRED, &[]),
            Reply::Refused(Refusal::Stale { floor }) => {
                fixed[..8].copy_from_slice(&floor.to_le_bytes());
                (STATUS_STALE, &fixed[..8])
            }
            Reply::Refused(Refusal::ReplyNotKept) => (STATUS_NOT_KEPT, &[]),
            Reply::Refused(Refusal::Malformed(error)) => {
                fixed[0] = error.code();
                (STATUS_MALFORMED, &fixed[..1])
            }
        };
        let Some((head, rest)) = out.split_first_mut() else {
            return 0;
        };
        *head = status;
        let n = body.len().min(rest.len());
        rest[..n].copy_from_slice(&body[..n]);
        let len = 1 + n;
        debug_assert!(len < self.encoded_len() || decode_reply(&out[..len]) == Ok(*self));
        len
    }
}

/// Decodes a reply of the wrapper.
pub fn decode_reply(bytes: &[u8]) -> Result<Reply<'_>, DecodeError> {
    let (&status, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    let fixed = |len: usize| {
        if body.len() == len {
            Ok(())
        } else {
            Err(DecodeError::Length)
        }
    };
    let reply = match status {
        STATUS_APPLIED => Reply::Applied(body),
        STATUS_DUPLICATE => Reply::Duplicate(body),
        STATUS_REGISTERED => {
            fixed(8)?;
            Reply::Registered {
                client: word(body, 0),
            }
        }
        STATUS_UNREGISTERED => {
            fixed(0)?;
            Reply::Unregistered
        }
        STATUS_EXPIRED => {
            fixed(0)?;
            Reply::Refused(Refusal::Expired)
        }
        STATUS_STALE => {
            fixed(8)?;
            Reply::Refused(Refusal::Stale {
                floor: word(body, 0),
            })
        }
        STATUS_NOT_KEPT => {
            fixed(0)?;
            Reply::Refused(Refusal::ReplyNotKept)
        }
        STATUS_MALFORMED => {
            fixed(1)?;
            Reply::Refused(Refusal::Malformed(
                DecodeError::from_code(body[0]).ok_or(DecodeError::Kind)?,
            ))
        }
        _ => return Err(DecodeError::Kind),
    };
    debug_assert_eq!(reply.encoded_len(), bytes.len());
    Ok(reply)
}

// ---- the client side -------------------------------------------------------------------------

/// Why a [`Session`] cannot build a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SessionError {
    /// As many requests are unsettled as the server's window holds: one more could push out a
    /// reply the client still needs. Settle one first.
    WindowFull,
    /// The output buffer is too short for the envelope.
    BufferTooShort,
    /// A retry of a request that was never built, or is settled already.
    NotInFlight,
}

/// The most requests a [`Session`] keeps unsettled (its bookkeeping is one 64-bit mask).
pub const SESSION_IN_FLIGHT_MAX: u64 = 64;

/// A client's side of a session: its id, the next sequence number and what it has settled.
/// Runtimes build envelopes with it rather than re-implement the bookkeeping.
///
/// The client settles a request ([`Session::settle`]) once its fate is final for it: a reply
/// came back (`Applied`, `Duplicate`, or a refusal other than `Expired`). Settled requests
/// below every unsettled one are acknowledged in the next envelope, so the server forgets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    client: u64,
    next: u64,
    acked: u64,
    /// Bit `k`: request `acked + k` is settled (bit 0 is always clear: `acked` would move).
    settled: u64,
    window: u64,
}

impl Session {
    /// The session `client` (from a `Registered` reply), for a server whose window holds
    /// `window` replies (at most [`SESSION_IN_FLIGHT_MAX`] are used).
    pub fn new(client: u64, window: usize) -> Session {
        Session {
            client,
            next: 0,
            acked: 0,
            settled: 0,
            window: (window as u64).clamp(1, SESSION_IN_FLIGHT_MAX),
        }
    }

    /// The session's id.
    pub fn client(&self) -> u64 {
        self.client
    }

    /// The sequence number the next request gets.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Every request below this one is settled.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Requests built and not yet acknowledged (settled ones above an unsettled one count).
    pub fn in_flight(&self) -> u64 {
        self.next - self.acked
    }

    /// Builds the next request for `payload` into `out`; returns its sequence number and the
    /// envelope's length.
    pub fn request(
        &mut self,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<(u64, usize), SessionError> {
        if self.in_flight() >= self.window {
            return Err(SessionError::WindowFull);
        }
        let seq = self.next;
        let len = encode_request(out, self.client, seq, self.acked, payload)
            .ok_or(SessionError::BufferTooShort)?;
        self.next += 1;
        assert!(self.in_flight() <= self.window);
        Ok((seq, len))
    }

    /// Builds a retry of request `seq` (the same payload as before, after a fail-over or a
    /// dropped ticket) into `out`; returns the envelope's length. It carries what is settled
    /// now, which is never above `seq`.
    pub fn retry(&self, seq: u64, payload: &[u8], out: &mut [u8]) -> Result<usize, SessionError> {
        if seq < self.acked || seq >= self.next || self.is_settled(seq) {
            return Err(SessionError::NotInFlight);
        }
        encode_request(out, self.client, seq, self.acked, payload)
            .ok_or(SessionError::BufferTooShort)
    }

    fn is_settled(&self, seq: u64) -> bool {
        seq < self.acked || (seq < self.next && self.settled >> (seq - self.acked) & 1 == 1)
    }

    /// Request `seq` is settled; a number never built, or settled already, changes nothing.
    pub fn settle(&mut self, seq: u64) {
        if seq < self.acked || seq >= self.next {
            return;
        }
        let bit = seq - self.acked;
        assert!(bit < SESSION_IN_FLIGHT_MAX);
        self.settled |= 1 << bit;
        // At most 64 steps: one per settled request.
        while self.settled & 1 == 1 {
            self.settled >>= 1;
            self.acked += 1;
        }
        assert!(self.acked <= self.next);
        let in_flight = self.next - self.acked;
        assert!(in_flight >= SESSION_IN_FLIGHT_MAX || self.settled >> in_flight == 0);
    }
}

// ---- the wrapper -----------------------------------------------------------------------------

/// Which of an application's commands only read: they are applied again on a retry and their
/// replies never cached. Every application wrapped by [`ExactlyOnce`] implements it; the
/// default (`impl ReadOnly for MyApp {}`) declares no command read-only, so every request is
/// cached. It must depend on the command's bytes only (the same answer on every replica), and a
/// command it calls read-only must not change the application's state.
///
/// Read-only is the condition, not idempotence: an idempotent write (`SET k 1`) applied again
/// after another client's write would undo that write.
pub trait ReadOnly {
    /// Whether applying `command` leaves the state as it is.
    fn read_only(&self, command: &[u8]) -> bool {
        let _ = command;
        false
    }
}

#[derive(Clone, Copy)]
struct Cached<const REPLY: usize> {
    used: bool,
    seq: u64,
    /// False: the reply was larger than `REPLY`; a retry is answered `ReplyNotKept`.
    kept: bool,
    len: u32,
    /// Its hash in the table digest, computed when it was cached.
    hash: u64,
    bytes: [u8; REPLY],
}

impl<const REPLY: usize> Cached<REPLY> {
    const EMPTY: Cached<REPLY> = Cached {
        used: false,
        seq: 0,
        kept: false,
        len: 0,
        hash: 0,
        bytes: [0; REPLY],
    };

    fn reply(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

#[derive(Clone, Copy)]
struct Entry<const WINDOW: usize, const REPLY: usize> {
    client: u64,
    last_used: u64,
    floor: u64,
    replies: [Cached<REPLY>; WINDOW],
}

impl<const WINDOW: usize, const REPLY: usize> Entry<WINDOW, REPLY> {
    const EMPTY: Entry<WINDOW, REPLY> = Entry {
        client: FREE,
        last_used: 0,
        floor: 0,
        replies: [Cached::EMPTY; WINDOW],
    };

    fn hash(&self) -> u64 {
        session_hash(self.client, self.last_used, self.floor)
    }

    fn cached(&self) -> usize {
        self.replies.iter().filter(|r| r.used).count()
    }

    fn find(&self, seq: u64) -> Option<usize> {
        self.replies.iter().position(|r| r.used && r.seq == seq)
    }

    fn record_bytes(&self) -> u64 {
        let replies: usize = self
            .replies
            .iter()
            .filter(|r| r.used)
            .map(|r| REPLY_RECORD_BYTES + r.len as usize)
            .sum();
        (SESSION_RECORD_BYTES + replies) as u64
    }

    /// Its cache indices in rising sequence order; returns how many are used.
    fn order(&self) -> ([usize; WINDOW], usize) {
        let mut order = [0; WINDOW];
        let mut n = 0;
        for (j, reply) in self.replies.iter().enumerate() {
            if reply.used {
                order[n] = j;
                n += 1;
            }
        }
        order[..n].sort_unstable_by_key(|&j| self.replies[j].seq);
        (order, n)
    }

    fn check(&self) {
        if !cfg!(debug_assertions) || self.client == FREE {
            return;
        }
        for (j, reply) in self.replies.iter().enumerate().filter(|(_, r)| r.used) {
            debug_assert!(reply.seq >= self.floor);
            debug_assert!(reply.kept || reply.len == 0);
            debug_assert!(reply.len as usize <= REPLY);
            debug_assert!(self.replies[j + 1..]
                .iter()
                .all(|other| !other.used || other.seq != reply.seq));
        }
    }
}

fn session_hash(client: u64, last_used: u64, floor: u64) -> u64 {
    Hasher::new(SESSION_DOMAIN)
        .word(client)
        .word(last_used)
        .word(floor)
        .finish()
}

fn reply_hash(client: u64, seq: u64, kept: bool, bytes: &[u8]) -> u64 {
    Hasher::new(REPLY_DOMAIN)
        .word(client)
        .word(seq)
        .word(kept as u64)
        .bytes(bytes)
        .finish()
}

/// The donor's copy-on-write view of the table at `snapshot_begin`.
struct Freeze<const CLIENTS: usize, const WINDOW: usize, const REPLY: usize> {
    open: bool,
    /// Table indices of the sessions live at begin, in rising client id order.
    view: [u32; CLIENTS],
    sessions: usize,
    /// Where each record of the view starts in the stream.
    offsets: [u64; CLIENTS],
    /// Where the table part ends and the application's stream begins.
    table_bytes: u64,
    inner_bytes: u64,
    /// Indices the view lists: only these need saving before they change.
    listed: [bool; CLIENTS],
    /// Listed indices whose begin-time entry lives in `shadow`.
    saved: [bool; CLIENTS],
    shadow: [Entry<WINDOW, REPLY>; CLIENTS],
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Header,
    Session,
    ReplyHead,
    ReplyBytes,
    Inner,
}

impl Phase {
    fn header_bytes(self) -> usize {
        match self {
            Phase::Header => STREAM_HEADER_BYTES,
            Phase::Session => SESSION_RECORD_BYTES,
            Phase::ReplyHead => REPLY_RECORD_BYTES,
            Phase::ReplyBytes | Phase::Inner => 0,
        }
    }
}

/// The joiner's decoding state between `install_begin` and `install_end`.
#[derive(Clone, Copy)]
struct Install {
    active: bool,
    /// The stream stopped decoding; the rest is ignored and the install cannot check.
    stopped: bool,
    /// The application's install began (when the header said where its stream starts).
    inner_begun: bool,
    position: u64,
    total: u64,
    /// Where the next piece must start.
    next: u64,
    table_bytes: u64,
    phase: Phase,
    /// A fixed-size record that spans pieces is gathered here.
    gather: [u8; STREAM_HEADER_BYTES],
    fill: usize,
    sessions_left: u32,
    replies_left: u32,
    /// The entry being filled, and its reply.
    slot: usize,
    reply: usize,
    last_client: Option<u64>,
    last_seq: Option<u64>,
}

impl Install {
    const IDLE: Install = Install {
        active: false,
        stopped: false,
        inner_begun: false,
        position: 0,
        total: 0,
        next: 0,
        table_bytes: 0,
        phase: Phase::Header,
        gather: [0; STREAM_HEADER_BYTES],
        fill: 0,
        sessions_left: 0,
        replies_left: 0,
        slot: 0,
        reply: 0,
        last_client: None,
        last_seq: None,
    };
}

/// Exactly-once sessions around the application `A` (see the module doc): a table of `CLIENTS`
/// sessions, each remembering up to `WINDOW` replies of up to `REPLY` bytes. It is itself a
/// [`StateMachine`]; give it to the core in place of `A`.
///
/// It is large (twice the table, for the snapshot's shadow), so [`ExactlyOnce::new`] is a
/// `const fn`: firmware can place it in a `static`.
pub struct ExactlyOnce<A, const CLIENTS: usize, const WINDOW: usize, const REPLY: usize> {
    inner: A,
    /// The client id of each entry (`FREE` when free): a dense copy that lookups scan.
    ids: [u64; CLIENTS],
    entries: [Entry<WINDOW, REPLY>; CLIENTS],
    live: usize,
    /// The xor of every live session's and every cached reply's hash.
    table: u64,
    freeze: Freeze<CLIENTS, WINDOW, REPLY>,
    install: Install,
}

impl<A, const CLIENTS: usize, const WINDOW: usize, const REPLY: usize>
    ExactlyOnce<A, CLIENTS, WINDOW, REPLY>
{
    const GEOMETRY: () = {
        assert!(CLIENTS > 0 && CLIENTS < u32::MAX as usize);
        assert!(WINDOW > 0 && WINDOW < u32::MAX as usize);
        assert!(REPLY < u32::MAX as usize);
    };

    /// Wraps `inner` with an empty table.
    pub const fn new(inner: A) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::GEOMETRY;
        ExactlyOnce {
            inner,
            ids: [FREE; CLIENTS],
            entries: [Entry::EMPTY; CLIENTS],
            live: 0,
            table: 0,
            freeze: Freeze {
                open: false,
                view: [0; CLIENTS],
                sessions: 0,
                offsets: [0; CLIENTS],
                table_bytes: 0,
                inner_bytes: 0,
                listed: [false; CLIENTS],
                saved: [false; CLIENTS],
                shadow: [Entry::EMPTY; CLIENTS],
            },
            install: Install::IDLE,
        }
    }

    /// The wrapped application.
    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// The wrapped application, to change what is not replicated (counters, tickets). Its
    /// replicated state must change only through `apply`.
    pub fn inner_mut(&mut self) -> &mut A {
        &mut self.inner
    }

    /// Live sessions.
    pub fn sessions(&self) -> usize {
        self.live
    }

    /// Whether session `client` is live.
    pub fn is_live(&self, client: u64) -> bool {
        self.find(client).is_some()
    }

    /// The digest of the session table (the snapshot's digest mixes it with the application's).
    pub fn table_digest(&self) -> u64 {
        self.table
    }

    fn digest(table: u64, inner: u64) -> u64 {
        Hasher::new(DIGEST_DOMAIN)
            .word(CLIENTS as u64)
            .word(WINDOW as u64)
            .word(REPLY as u64)
            .word(table)
            .word(inner)
            .finish()
    }

    fn find(&self, client: u64) -> Option<usize> {
        if client == FREE {
            return None;
        }
        let found = self.ids.iter().position(|&id| id == client);
        debug_assert!(found.is_none_or(|i| self.entries[i].client == client));
        found
    }

    /// Keeps the open snapshot's view of entry `index` before it changes.
    fn preserve(&mut self, index: usize) {
        let freeze = &mut self.freeze;
        if freeze.open && freeze.listed[index] && !freeze.saved[index] {
            freeze.shadow[index] = self.entries[index];
            freeze.saved[index] = true;
        }
    }

    /// The session's last use becomes `position`, its floor rises to `acked` and the replies
    /// below the floor are forgotten.
    fn touch(&mut self, index: usize, position: u64, acked: u64) {
        self.preserve(index);
        let entry = &mut self.entries[index];
        self.table ^= entry.hash();
        entry.last_used = position;
        if acked > entry.floor {
            entry.floor = acked;
            for reply in entry.replies.iter_mut().filter(|r| r.used && r.seq < acked) {
                self.table ^= reply.hash;
                *reply = Cached::EMPTY;
            }
        }
        self.table ^= entry.hash();
        entry.check();
    }

    /// Caches the reply of a request applied now.
    fn cache(&mut self, index: usize, seq: u64, reply: &[u8]) {
        self.preserve(index);
        let entry = &mut self.entries[index];
        debug_assert!(seq >= entry.floor && entry.find(seq).is_none());
        let slot = match entry.replies.iter().position(|r| !r.used) {
            Some(slot) => slot,
            None => {
                let lowest = (0..WINDOW)
                    .min_by_key(|&j| entry.replies[j].seq)
                    .unwrap_or(0);
                self.table ^= entry.hash();
                let forgotten = entry.replies[lowest].seq.min(seq);
                // Forgetting a reply raises the floor above it, so its retry is Stale rather
                // than applied again.
                entry.floor = forgotten + 1;
                self.table ^= entry.hash();
                if forgotten == seq {
                    entry.check();
                    return;
                }
                self.table ^= entry.replies[lowest].hash;
                entry.replies[lowest] = Cached::EMPTY;
                lowest
            }
        };
        let kept = reply.len() <= REPLY;
        let len = if kept { reply.len() } else { 0 };
        let cached = &mut entry.replies[slot];
        cached.used = true;
        cached.seq = seq;
        cached.kept = kept;
        cached.len = len as u32;
        cached.bytes[..len].copy_from_slice(&reply[..len]);
        cached.hash = reply_hash(entry.client, seq, kept, &reply[..len]);
        self.table ^= cached.hash;
        entry.check();
    }

    /// Frees entry `index`, forgetting its session.
    fn remove(&mut self, index: usize) {
        self.preserve(index);
        let entry = &mut self.entries[index];
        debug_assert_ne!(entry.client, FREE);
        self.table ^= entry.hash();
        for reply in entry.replies.iter().filter(|r| r.used) {
            self.table ^= reply.hash;
        }
        *entry = Entry::EMPTY;
        self.ids[index] = FREE;
        self.live -= 1;
    }

    fn register(&mut self, position: u64) -> Reply<'static> {
        if position == FREE {
            return Reply::Refused(Refusal::Expired);
        }
        debug_assert!(self.find(position).is_none(), "positions are unique");
        let index = match self.ids.iter().position(|&id| id == FREE) {
            Some(index) => index,
            None => {
                let lru = (0..CLIENTS)
                    .min_by_key(|&i| (self.entries[i].last_used, self.entries[i].client))
                    .unwrap_or(0);
                self.remove(lru);
                lru
            }
        };
        self.preserve(index);
        let entry = &mut self.entries[index];
        entry.client = position;
        entry.last_used = position;
        entry.floor = 0;
        debug_assert!(entry.replies.iter().all(|r| !r.used));
        self.table ^= entry.hash();
        self.ids[index] = position;
        self.live += 1;
        assert!(self.live <= CLIENTS);
        Reply::Registered { client: position }
    }
}

impl<A: StateMachine + ReadOnly, const CLIENTS: usize, const WINDOW: usize, const REPLY: usize>
    ExactlyOnce<A, CLIENTS, WINDOW, REPLY>
{
    /// Applies the application's command with its reply after an `Applied` status; returns the
    /// application's reply length and the whole reply's.
    fn apply_inner(
        &mut self,
        position: u64,
        payload: &[u8],
        response: &mut [u8],
    ) -> (usize, usize) {
        let Some((head, body)) = response.split_first_mut() else {
            let _ = self.inner.apply(position, payload, &mut []);
            return (0, 0);
        };
        *head = STATUS_APPLIED;
        let n = self.inner.apply(position, payload, body).min(body.len());
        (n, REPLY_HEADER_BYTES + n)
    }

    fn request(
        &mut self,
        position: u64,
        client: u64,
        seq: u64,
        acked: u64,
        payload: &[u8],
        response: &mut [u8],
    ) -> usize {
        debug_assert!(acked <= seq);
        let found = self.find(client);
        if self.inner.read_only(payload) {
            if let Some(index) = found {
                self.touch(index, position, acked);
            }
            return self.apply_inner(position, payload, response).1;
        }
        let Some(index) = found else {
            return Reply::Refused(Refusal::Expired).encode(response);
        };
        self.touch(index, position, acked);
        let entry = &self.entries[index];
        if seq < entry.floor {
            let floor = entry.floor;
            return Reply::Refused(Refusal::Stale { floor }).encode(response);
        }
        if let Some(slot) = entry.find(seq) {
            let cached = &entry.replies[slot];
            let reply = if cached.kept {
                Reply::Duplicate(cached.reply())
            } else {
                Reply::Refused(Refusal::ReplyNotKept)
            };
            return reply.encode(response);
        }
        let (n, len) = self.apply_inner(position, payload, response);
        let reply = response
            .get(REPLY_HEADER_BYTES..REPLY_HEADER_BYTES + n)
            .unwrap_or(&[]);
        self.cache(index, seq, reply);
        debug_assert!(self.entries[index].find(seq).is_some() || self.entries[index].floor > seq);
        len
    }

    fn stop_install(&mut self) {
        self.install.stopped = true;
    }

    /// A fixed-size record of the table ended at stream offset `end`: decode it.
    fn decoded_record(&mut self, end: u64) {
        let install = self.install;
        let g = &install.gather;
        if install.phase != Phase::Header && end > install.table_bytes {
            return self.stop_install();
        }
        match install.phase {
            Phase::Header => {
                let geometry = g[0] == STREAM_VERSION
                    && g[1..4] == [0; 3]
                    && word32(g, 4) as usize == CLIENTS
                    && word32(g, 8) as usize == WINDOW
                    && word32(g, 12) as usize == REPLY
                    && word32(g, 20) == 0;
                let sessions = word32(g, 16);
                let table_bytes = word(g, 24);
                let least = (STREAM_HEADER_BYTES + sessions as usize * SESSION_RECORD_BYTES) as u64;
                if !geometry
                    || sessions as usize > CLIENTS
                    || table_bytes < least
                    || table_bytes > install.total
                {
                    return self.stop_install();
                }
                let inner_bytes = install.total - table_bytes;
                if !self.inner.install_begin(install.position, inner_bytes) {
                    return self.stop_install();
                }
                self.install.inner_begun = true;
                self.install.table_bytes = table_bytes;
                self.install.sessions_left = sessions;
                self.install.replies_left = 0;
            }
            Phase::Session => {
                let (client, last_used, floor) = (word(g, 0), word(g, 8), word(g, 16));
                let replies = word32(g, 24);
                let rising = install.last_client.is_none_or(|last| client > last);
                // The snapshot covers the positions below its own: every session was opened
                // and last used there, and opened no later than it was last used.
                let placed = client <= last_used && last_used < install.position;
                if !placed || !rising || replies as usize > WINDOW || word32(g, 28) != 0 {
                    return self.stop_install();
                }
                let slot = self.live;
                assert!(slot < CLIENTS, "the header bounds the sessions");
                let entry = &mut self.entries[slot];
                *entry = Entry::EMPTY;
                entry.client = client;
                entry.last_used = last_used;
                entry.floor = floor;
                self.table ^= entry.hash();
                self.ids[slot] = client;
                self.live += 1;
                self.install.sessions_left -= 1;
                self.install.replies_left = replies;
                self.install.slot = slot;
                self.install.reply = 0;
                self.install.last_client = Some(client);
                self.install.last_seq = None;
            }
            Phase::ReplyHead => {
                let (seq, kept, len) = (word(g, 0), g[8], word32(g, 12));
                let entry = &mut self.entries[install.slot];
                let rising = install.last_seq.is_none_or(|last| seq > last);
                let valid = seq >= entry.floor
                    && rising
                    && g[9..12] == [0; 3]
                    && (kept == 1 && len as usize <= REPLY || kept == 0 && len == 0);
                if !valid {
                    return self.stop_install();
                }
                let cached = &mut entry.replies[install.reply];
                *cached = Cached::EMPTY;
                cached.seq = seq;
                cached.kept = kept == 1;
                cached.len = len;
                self.install.last_seq = Some(seq);
                if len > 0 {
                    self.install.phase = Phase::ReplyBytes;
                    self.install.fill = 0;
                    return;
                }
                return self.finish_reply(end);
            }
            Phase::ReplyBytes | Phase::Inner => unreachable!("not a fixed-size record"),
        }
        self.advance(end);
    }

    /// A cached reply is complete (its bytes ended at stream offset `end`): it enters the table.
    fn finish_reply(&mut self, end: u64) {
        let install = self.install;
        let entry = &mut self.entries[install.slot];
        let cached = &mut entry.replies[install.reply];
        cached.used = true;
        cached.hash = reply_hash(entry.client, cached.seq, cached.kept, cached.reply());
        self.table ^= cached.hash;
        entry.check();
        self.install.reply += 1;
        self.install.replies_left -= 1;
        self.advance(end);
    }

    /// What follows a piece of the table that ended at stream offset `end`.
    fn advance(&mut self, end: u64) {
        let install = &mut self.install;
        install.fill = 0;
        install.phase = if install.replies_left > 0 {
            Phase::ReplyHead
        } else if install.sessions_left > 0 {
            Phase::Session
        } else if end == install.table_bytes {
            Phase::Inner
        } else {
            install.stopped = true;
            Phase::Inner
        };
    }
}

/// Copies a window of a stream assembled from pieces into `out`.
struct Cursor<'a> {
    /// Bytes still to skip before the window starts.
    skip: u64,
    out: &'a mut [u8],
    done: usize,
}

impl Cursor<'_> {
    fn full(&self) -> bool {
        self.done == self.out.len()
    }

    fn put(&mut self, piece: &[u8]) {
        if self.full() {
            return;
        }
        if self.skip >= piece.len() as u64 {
            self.skip -= piece.len() as u64;
            return;
        }
        let from = self.skip as usize;
        self.skip = 0;
        let n = (piece.len() - from).min(self.out.len() - self.done);
        self.out[self.done..self.done + n].copy_from_slice(&piece[from..from + n]);
        self.done += n;
    }
}

fn session_record<const WINDOW: usize, const REPLY: usize>(
    entry: &Entry<WINDOW, REPLY>,
) -> [u8; SESSION_RECORD_BYTES] {
    let mut record = [0; SESSION_RECORD_BYTES];
    record[..8].copy_from_slice(&entry.client.to_le_bytes());
    record[8..16].copy_from_slice(&entry.last_used.to_le_bytes());
    record[16..24].copy_from_slice(&entry.floor.to_le_bytes());
    record[24..28].copy_from_slice(&(entry.cached() as u32).to_le_bytes());
    record
}

fn reply_record<const REPLY: usize>(cached: &Cached<REPLY>) -> [u8; REPLY_RECORD_BYTES] {
    let mut record = [0; REPLY_RECORD_BYTES];
    record[..8].copy_from_slice(&cached.seq.to_le_bytes());
    record[8] = cached.kept as u8;
    record[12..16].copy_from_slice(&cached.len.to_le_bytes());
    record
}

impl<A: StateMachine + ReadOnly, const CLIENTS: usize, const WINDOW: usize, const REPLY: usize>
    StateMachine for ExactlyOnce<A, CLIENTS, WINDOW, REPLY>
{
    fn apply(&mut self, position: u64, command: &[u8], response: &mut [u8]) -> usize {
        let digest = self.table;
        let len = match decode(command) {
            Err(error) => Reply::Refused(Refusal::Malformed(error)).encode(response),
            Ok(Envelope::Register) => self.register(position).encode(response),
            Ok(Envelope::Request {
                client,
                seq,
                acked,
                payload,
            }) => self.request(position, client, seq, acked, payload, response),
            Ok(Envelope::Unregister { client }) => match self.find(client) {
                Some(index) => {
                    self.remove(index);
                    Reply::Unregistered.encode(response)
                }
                None => Reply::Refused(Refusal::Expired).encode(response),
            },
            Ok(Envelope::Plain { payload }) => self.apply_inner(position, payload, response).1,
        };
        debug_assert!(len <= response.len());
        debug_assert!(
            !matches!(
                decode_reply(&response[..len]),
                Ok(Reply::Refused(Refusal::Malformed(_)))
            ) || self.table == digest,
            "a malformed envelope changes nothing"
        );
        debug_assert_eq!(self.live, self.ids.iter().filter(|&&id| id != FREE).count());
        len
    }

    /// Passes through: the response is the wrapper's reply (decode it with [`decode_reply`]).
    fn committed(&mut self, ticket: Ticket, position: u64, response: &[u8]) {
        self.inner.committed(ticket, position, response);
    }

    fn dropped(&mut self, ticket: Ticket) {
        self.inner.dropped(ticket);
    }

    fn snapshot_begin(&mut self, position: u64) -> Option<Snapshot> {
        self.install_abandon();
        self.freeze.open = false;
        let inner = self.inner.snapshot_begin(position)?;
        let freeze = &mut self.freeze;
        let mut sessions = 0;
        for (index, &id) in self.ids.iter().enumerate() {
            freeze.listed[index] = id != FREE;
            freeze.saved[index] = false;
            if id != FREE {
                freeze.view[sessions] = index as u32;
                sessions += 1;
            }
        }
        assert_eq!(sessions, self.live);
        let ids = &self.ids;
        freeze.view[..sessions].sort_unstable_by_key(|&index| ids[index as usize]);
        let mut offset = STREAM_HEADER_BYTES as u64;
        for k in 0..sessions {
            freeze.offsets[k] = offset;
            offset += self.entries[freeze.view[k] as usize].record_bytes();
        }
        let Some(bytes) = offset.checked_add(inner.bytes) else {
            self.inner.snapshot_end();
            return None;
        };
        freeze.sessions = sessions;
        freeze.table_bytes = offset;
        freeze.inner_bytes = inner.bytes;
        freeze.open = true;
        Some(Snapshot {
            bytes,
            digest: Self::digest(self.table, inner.digest),
        })
    }

    fn snapshot_read(&mut self, offset: u64, buf: &mut [u8]) {
        let freeze = &self.freeze;
        if !freeze.open {
            buf.fill(0);
            return;
        }
        let table_bytes = freeze.table_bytes;
        let total = table_bytes + freeze.inner_bytes;
        let in_table = table_bytes.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (table_part, rest) = buf.split_at_mut(in_table);
        if !table_part.is_empty() {
            let mut cursor = Cursor {
                skip: 0,
                out: table_part,
                done: 0,
            };
            let mut record = 0;
            if offset < STREAM_HEADER_BYTES as u64 {
                let mut header = [0; STREAM_HEADER_BYTES];
                header[0] = STREAM_VERSION;
                header[4..8].copy_from_slice(&(CLIENTS as u32).to_le_bytes());
                header[8..12].copy_from_slice(&(WINDOW as u32).to_le_bytes());
                header[12..16].copy_from_slice(&(REPLY as u32).to_le_bytes());
                header[16..20].copy_from_slice(&(freeze.sessions as u32).to_le_bytes());
                header[24..32].copy_from_slice(&table_bytes.to_le_bytes());
                cursor.skip = offset;
                cursor.put(&header);
            } else {
                record = freeze.offsets[..freeze.sessions]
                    .partition_point(|&start| start <= offset)
                    .saturating_sub(1);
                cursor.skip = offset - freeze.offsets[record];
            }
            while !cursor.full() && record < freeze.sessions {
                let index = freeze.view[record] as usize;
                let entry = if freeze.saved[index] {
                    &freeze.shadow[index]
                } else {
                    &self.entries[index]
                };
                cursor.put(&session_record(entry));
                let (order, n) = entry.order();
                for &j in &order[..n] {
                    cursor.put(&reply_record(&entry.replies[j]));
                    cursor.put(entry.replies[j].reply());
                }
                record += 1;
            }
            assert!(cursor.full(), "the offsets cover the table part");
        }
        let start = offset.max(table_bytes);
        let in_inner = total.saturating_sub(start).min(rest.len() as u64) as usize;
        let (inner_part, past) = rest.split_at_mut(in_inner);
        if !inner_part.is_empty() {
            self.inner.snapshot_read(start - table_bytes, inner_part);
        }
        past.fill(0);
    }

    fn snapshot_end(&mut self) {
        if self.freeze.open {
            self.freeze.open = false;
            self.inner.snapshot_end();
        }
    }

    fn install_begin(&mut self, position: u64, bytes: u64) -> bool {
        if bytes < STREAM_HEADER_BYTES as u64 {
            return false;
        }
        self.snapshot_end();
        self.install_abandon();
        self.ids = [FREE; CLIENTS];
        for entry in self.entries.iter_mut() {
            *entry = Entry::EMPTY;
        }
        self.live = 0;
        self.table = 0;
        self.install = Install {
            active: true,
            position,
            total: bytes,
            ..Install::IDLE
        };
        true
    }

    fn install_write(&mut self, offset: u64, bytes: &[u8]) {
        let install = &self.install;
        if !install.active || install.stopped {
            return;
        }
        if offset != install.next || bytes.len() as u64 > install.total - install.next {
            return self.stop_install();
        }
        self.install.next += bytes.len() as u64;
        let mut rest = bytes;
        // Each turn consumes at least one byte, or finishes a record and moves to the next.
        while !rest.is_empty() && !self.install.stopped {
            let at = offset + (bytes.len() - rest.len()) as u64;
            let install = &mut self.install;
            match install.phase {
                Phase::Inner => {
                    self.inner.install_write(at - install.table_bytes, rest);
                    rest = &[];
                }
                Phase::ReplyBytes => {
                    let cached = &mut self.entries[install.slot].replies[install.reply];
                    let take = (cached.len as usize - install.fill).min(rest.len());
                    cached.bytes[install.fill..install.fill + take].copy_from_slice(&rest[..take]);
                    install.fill += take;
                    rest = &rest[take..];
                    if install.fill == cached.len as usize {
                        self.finish_reply(at + take as u64);
                    }
                }
                phase => {
                    let need = phase.header_bytes();
                    let take = (need - install.fill).min(rest.len());
                    install.gather[install.fill..install.fill + take]
                        .copy_from_slice(&rest[..take]);
                    install.fill += take;
                    rest = &rest[take..];
                    if install.fill == need {
                        install.fill = 0;
                        self.decoded_record(at + take as u64);
                    }
                }
            }
        }
    }

    fn install_end(&mut self) -> u64 {
        let install = self.install;
        self.install = Install::IDLE;
        let inner = if install.inner_begun {
            self.inner.install_end()
        } else {
            0
        };
        let complete = install.active
            && !install.stopped
            && install.phase == Phase::Inner
            && install.next == install.total;
        if complete {
            Self::digest(self.table, inner)
        } else {
            // Not the donor's state, whatever the bytes said: a digest no donor offers.
            Hasher::new(INCOMPLETE_DOMAIN)
                .word(Self::digest(self.table, inner))
                .finish()
        }
    }

    fn install_abandon(&mut self) {
        if self.install.inner_begun {
            self.inner.install_abandon();
        }
        self.install = Install::IDLE;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::boxed::Box;
    use std::collections::BTreeMap;
    use std::vec;
    use std::vec::Vec;

    /// splitmix64: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    const OP_ADD: u8 = 0;
    const OP_READ: u8 = 1;
    const OP_BIG: u8 = 2;
    const OP_SILENT: u8 = 3;
    const BIG_REPLY: usize = 24;

    /// Four counters. `ADD k n` adds and answers the value, `READ k` (read-only) answers it,
    /// `BIG k` adds one and answers 24 bytes, `SILENT k` flips a bit and answers nothing;
    /// anything else changes nothing. `applied` counts every call of `apply`.
    struct Counters {
        values: [u64; 4],
        applied: u64,
        snapshots: bool,
        frozen: [u64; 4],
        install: Vec<u8>,
        committed: Vec<(Ticket, u64, Vec<u8>)>,
        dropped: Vec<Ticket>,
    }

    impl Counters {
        fn new(snapshots: bool) -> Counters {
            Counters {
                values: [0; 4],
                applied: 0,
                snapshots,
                frozen: [0; 4],
                install: Vec::new(),
                committed: Vec::new(),
                dropped: Vec::new(),
            }
        }

        fn digest(values: &[u64; 4]) -> u64 {
            values
                .iter()
                .fold(Hasher::new(7), |h, &v| h.word(v))
                .finish()
        }
    }

    /// The counters' semantics, shared by the application and the model: applies `command`
    /// to `values` and returns the reply.
    fn counters_apply(values: &mut [u64; 4], command: &[u8]) -> Vec<u8> {
        let (Some(&op), Some(&key)) = (command.first(), command.get(1)) else {
            return Vec::new();
        };
        let k = key as usize % 4;
        let amount = command.get(2).copied().unwrap_or(1) as u64;
        match op {
            OP_ADD => {
                values[k] = values[k].wrapping_add(amount);
                values[k].to_le_bytes().to_vec()
            }
            OP_READ => values[k].to_le_bytes().to_vec(),
            OP_BIG => {
                values[k] = values[k].wrapping_add(1);
                values[k].to_le_bytes().repeat(BIG_REPLY / 8)
            }
            OP_SILENT => {
                values[k] ^= 1 << 40;
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn counters_read_only(command: &[u8]) -> bool {
        command.first() == Some(&OP_READ)
    }

    impl ReadOnly for Counters {
        fn read_only(&self, command: &[u8]) -> bool {
            counters_read_only(command)
        }
    }

    impl StateMachine for Counters {
        fn apply(&mut self, _position: u64, command: &[u8], response: &mut [u8]) -> usize {
            self.applied += 1;
            let reply = counters_apply(&mut self.values, command);
            let n = reply.len().min(response.len());
            response[..n].copy_from_slice(&reply[..n]);
            reply.len()
        }

        fn committed(&mut self, ticket: Ticket, position: u64, response: &[u8]) {
            self.committed.push((ticket, position, response.to_vec()));
        }

        fn dropped(&mut self, ticket: Ticket) {
            self.dropped.push(ticket);
        }

        fn snapshot_begin(&mut self, _position: u64) -> Option<Snapshot> {
            if !self.snapshots {
                return None;
            }
            self.frozen = self.values;
            Some(Snapshot {
                bytes: 32,
                digest: Counters::digest(&self.values),
            })
        }

        fn snapshot_read(&mut self, offset: u64, buf: &mut [u8]) {
            let bytes: Vec<u8> = self.frozen.iter().flat_map(|v| v.to_le_bytes()).collect();
            for (i, b) in buf.iter_mut().enumerate() {
                *b = bytes.get(offset as usize + i).copied().unwrap_or(0);
            }
        }

        fn install_begin(&mut self, _position: u64, bytes: u64) -> bool {
            self.install.clear();
            self.snapshots && bytes == 32
        }

        fn install_write(&mut self, offset: u64, bytes: &[u8]) {
            assert_eq!(
                offset as usize,
                self.install.len(),
                "in order, without gaps"
            );
            self.install.extend_from_slice(bytes);
        }

        fn install_end(&mut self) -> u64 {
            if self.install.len() == 32 {
                for (k, v) in self.values.iter_mut().enumerate() {
                    *v = word(&self.install, k * 8);
                }
            }
            Counters::digest(&self.values)
        }
    }

    const C: usize = 4;
    const W: usize = 4;
    const R: usize = 16;
    type Wrapped = ExactlyOnce<Counters, C, W, R>;
    const RESPONSE: usize = 64;

    fn wrapped(snapshots: bool) -> Box<Wrapped> {
        Box::new(Wrapped::new(Counters::new(snapshots)))
    }

    fn apply(sm: &mut impl StateMachine, position: u64, command: &[u8]) -> Vec<u8> {
        let mut response = [0u8; RESPONSE];
        let len = sm.apply(position, command, &mut response);
        response[..len].to_vec()
    }

    fn register(sm: &mut impl StateMachine, position: u64) -> u64 {
        let mut out = [0; REGISTER_BYTES];
        let len = encode_register(&mut out).unwrap();
        match decode_reply(&apply(sm, position, &out[..len])) {
            Ok(Reply::Registered { client }) => client,
            other => panic!("register answered {other:?}"),
        }
    }

    fn request(client: u64, seq: u64, acked: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0; REQUEST_HEADER_BYTES + payload.len()];
        let len = encode_request(&mut out, client, seq, acked, payload).unwrap();
        assert_eq!(len, out.len());
        out
    }

    // ---- formats ---------------------------------------------------------------------------

    #[test]
    fn envelopes_round_trip() {
        let payload = [9u8, 8, 7];
        let envelopes = [
            Envelope::Register,
            Envelope::Request {
                client: 77,
                seq: 5,
                acked: 5,
                payload: &payload,
            },
            Envelope::Request {
                client: u64::MAX - 1,
                seq: u64::MAX,
                acked: 0,
                payload: &[],
            },
            Envelope::Unregister { client: 3 },
            Envelope::Plain { payload: &payload },
            Envelope::Plain { payload: &[] },
        ];
        for envelope in envelopes {
            let mut out = [0u8; 64];
            let len = envelope.encode(&mut out).unwrap();
            assert_eq!(len, envelope.encoded_len());
            assert_eq!(decode(&out[..len]), Ok(envelope));
            assert_eq!(
                envelope.encode(&mut out[..len - 1]),
                None,
                "too short refused"
            );
            let fixed = matches!(envelope, Envelope::Register | Envelope::Unregister { .. });
            if fixed || envelope.encoded_len() == REQUEST_HEADER_BYTES {
                assert!(decode(&out[..len - 1]).is_err());
            }
        }
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(decode(&[2, 1]), Err(DecodeError::Version));
        assert_eq!(decode(&[VERSION]), Err(DecodeError::Length));
        assert_eq!(decode(&[VERSION, 9]), Err(DecodeError::Kind));
        assert_eq!(
            decode(&[VERSION, KIND_REGISTER, 0]),
            Err(DecodeError::Length)
        );
        assert_eq!(
            decode(&[VERSION, KIND_UNREGISTER, 0]),
            Err(DecodeError::Length)
        );
        assert_eq!(
            decode(&request(1, 4, 5, &[])),
            Err(DecodeError::AckedAboveSeq)
        );
    }

    #[test]
    fn replies_round_trip() {
        let bytes = [1u8, 2, 3];
        let mut replies = vec![
            Reply::Applied(&bytes),
            Reply::Applied(&[]),
            Reply::Duplicate(&bytes),
            Reply::Registered { client: 42 },
            Reply::Unregistered,
            Reply::Refused(Refusal::Expired),
            Reply::Refused(Refusal::Stale { floor: 9 }),
            Reply::Refused(Refusal::ReplyNotKept),
        ];
        for error in DecodeError::ALL {
            replies.push(Reply::Refused(Refusal::Malformed(error)));
        }
        for reply in replies {
            let mut out = [0u8; 16];
            let len = reply.encode(&mut out);
            assert_eq!(len, reply.encoded_len());
            assert_eq!(decode_reply(&out[..len]), Ok(reply));
            // A reply cut short still encodes what fits, never panics.
            assert_eq!(reply.encode(&mut out[..1]), 1);
            assert_eq!(reply.encode(&mut []), 0);
        }
        assert_eq!(decode_reply(&[]), Err(DecodeError::Empty));
        assert_eq!(decode_reply(&[99]), Err(DecodeError::Kind));
        assert_eq!(
            decode_reply(&[STATUS_REGISTERED, 1]),
            Err(DecodeError::Length)
        );
        assert_eq!(
            decode_reply(&[STATUS_MALFORMED, 77]),
            Err(DecodeError::Kind)
        );
        assert_eq!(Reply::Duplicate(&bytes).result(), Ok(&bytes[..]));
        assert_eq!(
            Reply::Refused(Refusal::Expired).result(),
            Err(Refusal::Expired)
        );
    }

    // ---- the direct cases ------------------------------------------------------------------

    #[test]
    fn a_retry_after_a_fail_over_gets_the_cached_reply_and_is_not_applied_twice() {
        let mut sm = wrapped(false);
        let client = register(&mut *sm, 10);
        assert_eq!(client, 10);
        let mut session = Session::new(client, W);
        let payload = [OP_ADD, 2, 5];
        let mut out = [0u8; 64];
        let (seq, len) = session.request(&payload, &mut out).unwrap();
        let command = out[..len].to_vec();
        // Decided at 11 through the old leader; its reply never reached the client.
        let first = apply(&mut *sm, 11, &command);
        assert_eq!(
            decode_reply(&first),
            Ok(Reply::Applied(&5u64.to_le_bytes()))
        );
        // The new leader decides the client's retry at 12.
        let len = session.retry(seq, &payload, &mut out).unwrap();
        assert_eq!(&out[..len], &command[..]);
        let retried = apply(&mut *sm, 12, &out[..len]);
        assert_eq!(
            decode_reply(&retried),
            Ok(Reply::Duplicate(&5u64.to_le_bytes()))
        );
        assert_eq!(sm.inner().applied, 1, "the application ran once");
        assert_eq!(sm.inner().values[2], 5);
        session.settle(seq);
        assert_eq!(session.acked(), 1);
        // The next request acknowledges it: a later retry of it is stale, not applied.
        let (_, len) = session.request(&[OP_ADD, 2, 1], &mut out).unwrap();
        assert_eq!(
            decode_reply(&apply(&mut *sm, 13, &out[..len])),
            Ok(Reply::Applied(&6u64.to_le_bytes()))
        );
        assert_eq!(
            decode_reply(&apply(&mut *sm, 14, &command)),
            Ok(Reply::Refused(Refusal::Stale { floor: 1 }))
        );
        assert_eq!(sm.inner().applied, 2);
        assert_eq!(sm.inner().values[2], 6);
    }

    #[test]
    fn large_replies_read_only_plain_and_unregister() {
        let mut sm = wrapped(false);
        let client = register(&mut *sm, 1);
        // A write whose reply is too large: answered once, then ReplyNotKept, applied once.
        let big = request(client, 0, 0, &[OP_BIG, 1]);
        let reply = apply(&mut *sm, 2, &big);
        assert_eq!(reply.len(), 1 + BIG_REPLY);
        assert!(matches!(decode_reply(&reply), Ok(Reply::Applied(b)) if b.len() == BIG_REPLY));
        assert_eq!(
            decode_reply(&apply(&mut *sm, 3, &big)),
            Ok(Reply::Refused(Refusal::ReplyNotKept))
        );
        assert_eq!(sm.inner().values[1], 1);
        // A read is applied every time and takes no table space.
        let read = request(client, 1, 0, &[OP_READ, 1]);
        let before = sm.table_digest();
        for position in 4..10 {
            assert_eq!(
                decode_reply(&apply(&mut *sm, position, &read)),
                Ok(Reply::Applied(&1u64.to_le_bytes()))
            );
        }
        assert_eq!(sm.inner().applied, 7);
        assert_eq!(sm.entries[0].cached(), 1, "only the big write's marker");
        assert_ne!(sm.table_digest(), before, "its last use moved");
        // ...even without a session.
        assert!(matches!(
            decode_reply(&apply(&mut *sm, 10, &request(999, 0, 0, &[OP_READ, 1]))),
            Ok(Reply::Applied(_))
        ));
        // A write without one is refused.
        assert_eq!(
            decode_reply(&apply(&mut *sm, 11, &request(999, 0, 0, &[OP_ADD, 1]))),
            Ok(Reply::Refused(Refusal::Expired))
        );
        // Plain commands are applied every time.
        let mut out = [0u8; 16];
        let len = encode_plain(&mut out, &[OP_ADD, 3, 2]).unwrap();
        for (position, value) in [(12u64, 2u64), (13, 4)] {
            assert_eq!(
                decode_reply(&apply(&mut *sm, position, &out[..len])),
                Ok(Reply::Applied(&value.to_le_bytes()))
            );
        }
        let len = encode_unregister(&mut out, client).unwrap();
        assert_eq!(
            decode_reply(&apply(&mut *sm, 14, &out[..len])),
            Ok(Reply::Unregistered)
        );
        assert_eq!(
            decode_reply(&apply(&mut *sm, 15, &out[..len])),
            Ok(Reply::Refused(Refusal::Expired))
        );
        assert_eq!(sm.sessions(), 0);
        assert_eq!(sm.table_digest(), 0, "an empty table's digest");
        assert_eq!(
            decode_reply(&apply(&mut *sm, 16, &big)),
            Ok(Reply::Refused(Refusal::Expired))
        );
    }

    #[test]
    fn the_window_forgets_its_lowest_and_raises_the_floor() {
        let mut sm = wrapped(false);
        let client = register(&mut *sm, 1);
        let mut position = 2;
        // Seqs 1..=W+1 fill and overflow the window; 0 arrives last (reordered), lowest of all.
        for seq in 1..=W as u64 + 1 {
            let reply = apply(&mut *sm, position, &request(client, seq, 0, &[OP_ADD, 0]));
            assert!(matches!(decode_reply(&reply), Ok(Reply::Applied(_))));
            position += 1;
        }
        assert_eq!(
            decode_reply(&apply(
                &mut *sm,
                position,
                &request(client, 1, 0, &[OP_ADD, 0])
            )),
            Ok(Reply::Refused(Refusal::Stale { floor: 2 })),
            "seq 1 was pushed out"
        );
        position += 1;
        assert_eq!(
            decode_reply(&apply(
                &mut *sm,
                position,
                &request(client, 0, 0, &[OP_ADD, 0])
            )),
            Ok(Reply::Refused(Refusal::Stale { floor: 2 })),
            "below the floor: unknown, so not applied"
        );
        assert_eq!(sm.inner().values[0], W as u64 + 1);
        // Seq 10, 12, 11 (reordered) after the window holds 2..=5: 2, 3, 4 pushed out in turn.
        for seq in [10u64, 12, 11] {
            position += 1;
            apply(&mut *sm, position, &request(client, seq, 0, &[OP_ADD, 0]));
        }
        assert_eq!(sm.entries[0].floor, 5);
        position += 1;
        assert!(matches!(
            decode_reply(&apply(
                &mut *sm,
                position,
                &request(client, 5, 0, &[OP_ADD, 0])
            )),
            Ok(Reply::Duplicate(_))
        ));
        // Acknowledging up to 6 forgets 5; the window holds 10..=13.
        position += 1;
        apply(&mut *sm, position, &request(client, 13, 6, &[OP_ADD, 0]));
        assert_eq!(sm.entries[0].floor, 6);
        // A full window and a new seq below all of it: applied, not kept, the floor above it.
        position += 1;
        let low = request(client, 7, 0, &[OP_ADD, 0]);
        assert!(matches!(
            decode_reply(&apply(&mut *sm, position, &low)),
            Ok(Reply::Applied(_))
        ));
        assert_eq!(sm.entries[0].floor, 8);
        assert_eq!(sm.entries[0].cached(), W);
        position += 1;
        assert_eq!(
            decode_reply(&apply(&mut *sm, position, &low)),
            Ok(Reply::Refused(Refusal::Stale { floor: 8 }))
        );
        assert_eq!(sm.inner().values[0], W as u64 + 6);
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_used() {
        let mut sm = wrapped(false);
        let clients: Vec<u64> = (0..C as u64).map(|p| register(&mut *sm, p)).collect();
        // Use every client but the second one after registering them all.
        let mut position = 100;
        for &client in clients.iter().rev().filter(|&&c| c != clients[1]) {
            apply(&mut *sm, position, &request(client, 0, 0, &[OP_ADD, 0]));
            position += 1;
        }
        let newcomer = register(&mut *sm, position);
        assert!(!sm.is_live(clients[1]), "the least recently used went");
        assert!(sm.is_live(newcomer));
        assert_eq!(sm.sessions(), C);
        assert_eq!(
            decode_reply(&apply(
                &mut *sm,
                position + 1,
                &request(clients[1], 0, 0, &[OP_ADD])
            )),
            Ok(Reply::Refused(Refusal::Expired))
        );
        // Next to go: the first one used in the loop above (the last in `clients`).
        register(&mut *sm, position + 2);
        assert!(!sm.is_live(clients[C - 1]));
    }

    /// `new` is a `const fn`: firmware places the wrapper in a `static`.
    static _IN_A_STATIC: ExactlyOnce<(), 2, 2, 2> = ExactlyOnce::new(());

    #[test]
    fn a_snapshot_with_sessions_from_its_future_does_not_install() {
        let mut rng = Rng(6);
        let (mut donor, position) = populated();
        let offer = donor.snapshot_begin(position).unwrap();
        let stream = read_stream(&mut *donor, offer.bytes, &mut rng);
        let mut joiner = wrapped(true);
        // Its sessions were opened and used below `position`: not below `position - 2`.
        assert_ne!(
            install(&mut *joiner, position - 2, &stream, &mut rng),
            offer.digest
        );
        assert_eq!(
            install(&mut *joiner, position, &stream, &mut rng),
            offer.digest
        );
    }

    #[test]
    fn committed_and_dropped_pass_through() {
        let mut sm = wrapped(false);
        sm.committed(7, 3, &[STATUS_EXPIRED]);
        sm.dropped(8);
        assert_eq!(sm.inner().committed, vec![(7, 3, vec![STATUS_EXPIRED])]);
        assert_eq!(sm.inner().dropped, vec![8]);
    }

    #[test]
    fn a_response_too_short_changes_no_outcome() {
        // The state changes the same whatever the response buffer (when the reply is within
        // it): a write is cached, the retry is a duplicate.
        let mut a = wrapped(false);
        let mut b = wrapped(false);
        let client = register(&mut *a, 1);
        register(&mut *b, 1);
        let command = request(client, 0, 0, &[OP_SILENT, 0]);
        assert_eq!(a.apply(2, &command, &mut []), 0);
        apply(&mut *b, 2, &command);
        assert_eq!(a.table_digest(), b.table_digest());
        assert_eq!(a.apply(3, &command, &mut [0u8; 1]), 1);
        assert_eq!(a.inner().applied, 1);
    }

    #[test]
    fn the_session_helper_keeps_its_window_and_acks_in_order() {
        let mut session = Session::new(5, 3);
        let mut out = [0u8; 64];
        let seqs: Vec<u64> = (0..3)
            .map(|_| session.request(&[1], &mut out).unwrap().0)
            .collect();
        assert_eq!(seqs, [0, 1, 2]);
        assert_eq!(
            session.request(&[1], &mut out),
            Err(SessionError::WindowFull)
        );
        assert_eq!(
            session.request(&[1], &mut out[..4]),
            Err(SessionError::WindowFull)
        );
        session.settle(1);
        assert_eq!(session.acked(), 0, "0 is not settled");
        assert_eq!(
            session.retry(1, &[1], &mut out),
            Err(SessionError::NotInFlight)
        );
        session.settle(0);
        assert_eq!(session.acked(), 2);
        assert_eq!(session.in_flight(), 1);
        let (seq, len) = session.request(&[4, 4], &mut out).unwrap();
        assert_eq!(
            decode(&out[..len]),
            Ok(Envelope::Request {
                client: 5,
                seq: 3,
                acked: 2,
                payload: &[4, 4]
            })
        );
        assert_eq!(
            session.retry(seq, &[4, 4], &mut out[..5]),
            Err(SessionError::BufferTooShort)
        );
        assert_eq!(
            session.retry(9, &[4, 4], &mut out),
            Err(SessionError::NotInFlight)
        );
        session.settle(2);
        session.settle(3);
        session.settle(3);
        session.settle(77);
        assert_eq!(
            (session.acked(), session.next_seq(), session.in_flight()),
            (4, 4, 0)
        );
        // The widest window the mask holds.
        let mut wide = Session::new(1, 1000);
        for _ in 0..SESSION_IN_FLIGHT_MAX {
            wide.request(&[], &mut out).unwrap();
        }
        assert_eq!(wide.request(&[], &mut out), Err(SessionError::WindowFull));
        for seq in (0..SESSION_IN_FLIGHT_MAX).rev() {
            wide.settle(seq);
        }
        assert_eq!(wide.acked(), SESSION_IN_FLIGHT_MAX);
    }

    // ---- snapshots -------------------------------------------------------------------------

    /// Reads the whole frozen stream in chunks of random sizes.
    fn read_stream(sm: &mut impl StateMachine, bytes: u64, rng: &mut Rng) -> Vec<u8> {
        let mut stream = vec![0u8; bytes as usize];
        let mut at = 0;
        while at < stream.len() {
            let n = (1 + rng.below(40) as usize).min(stream.len() - at);
            sm.snapshot_read(at as u64, &mut stream[at..at + n]);
            at += n;
        }
        stream
    }

    /// Installs `stream` in chunks of random sizes; returns the digest.
    fn install(sm: &mut impl StateMachine, position: u64, stream: &[u8], rng: &mut Rng) -> u64 {
        assert!(sm.install_begin(position, stream.len() as u64));
        let mut at = 0;
        while at < stream.len() {
            let n = (1 + rng.below(40) as usize).min(stream.len() - at);
            sm.install_write(at as u64, &stream[at..at + n]);
            at += n;
        }
        sm.install_end()
    }

    /// A wrapper with sessions, cached replies of several lengths, a not-kept marker.
    fn populated() -> (Box<Wrapped>, u64) {
        let mut sm = wrapped(true);
        let mut position = 1;
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(register(&mut *sm, position));
            position += 1;
        }
        for (i, &client) in clients.iter().enumerate() {
            for seq in 0..=i as u64 {
                let op = [OP_ADD, OP_BIG, OP_SILENT][(seq as usize + i) % 3];
                apply(
                    &mut *sm,
                    position,
                    &request(client, seq * 2, 0, &[op, i as u8, 3]),
                );
                position += 1;
            }
        }
        (sm, position)
    }

    #[test]
    fn a_snapshot_installs_into_another_replica_and_both_go_on_alike() {
        let mut rng = Rng(1);
        let (mut donor, position) = populated();
        let offer = donor.snapshot_begin(position).unwrap();
        let stream = read_stream(&mut *donor, offer.bytes, &mut rng);
        // Random access reads the same bytes.
        for _ in 0..50 {
            let at = rng.below(offer.bytes) as usize;
            let n = rng.below(30) as usize;
            let mut buf = vec![0xAA; n];
            donor.snapshot_read(at as u64, &mut buf);
            let end = (at + n).min(stream.len());
            assert_eq!(&buf[..end - at], &stream[at..end]);
            assert!(
                buf[end - at..].iter().all(|&b| b == 0),
                "past the end reads zeros"
            );
        }
        donor.snapshot_end();
        let mut joiner = wrapped(true);
        register(&mut *joiner, 0);
        assert_eq!(
            install(&mut *joiner, position, &stream, &mut rng),
            offer.digest
        );
        assert_eq!(joiner.table_digest(), donor.table_digest());
        assert_eq!(joiner.inner().values, donor.inner().values);
        // The joiner's stream is the donor's, byte for byte (the format is canonical).
        let again = joiner.snapshot_begin(position).unwrap();
        assert_eq!(again, offer);
        assert_eq!(read_stream(&mut *joiner, again.bytes, &mut rng), stream);
        joiner.snapshot_end();
        // Both answer everything alike from now on.
        for step in 0..300 {
            let command = match rng.below(4) {
                0 => request(
                    1 + rng.below(4),
                    rng.below(8),
                    rng.below(3),
                    &[rng.below(3) as u8, 1],
                ),
                1 => encode_to_vec(Envelope::Register),
                2 => encode_to_vec(Envelope::Unregister {
                    client: rng.below(5),
                }),
                _ => {
                    let len = rng.below(30) as usize;
                    rng.bytes(len)
                }
            };
            let p = position + step;
            assert_eq!(
                apply(&mut *donor, p, &command),
                apply(&mut *joiner, p, &command)
            );
            assert_eq!(donor.table_digest(), joiner.table_digest());
        }
    }

    fn encode_to_vec(envelope: Envelope) -> Vec<u8> {
        let mut out = vec![0; envelope.encoded_len()];
        envelope.encode(&mut out).unwrap();
        out
    }

    #[test]
    fn the_frozen_stream_stays_as_it_was_while_apply_goes_on() {
        let mut rng = Rng(2);
        let (mut donor, mut position) = populated();
        let at_begin = position;
        let offer = donor.snapshot_begin(position).unwrap();
        let mut fresh = wrapped(true);
        let (mut twin, _) = populated();
        let expected = {
            let o = twin.snapshot_begin(position).unwrap();
            assert_eq!(o, offer);
            read_stream(&mut *twin, o.bytes, &mut rng)
        };
        // Every kind of change to the listed sessions while the stream is read.
        let mut stream = vec![0u8; offer.bytes as usize];
        let mut at = 0;
        while at < stream.len() {
            let command = match rng.below(5) {
                0 => encode_to_vec(Envelope::Register),
                1 => encode_to_vec(Envelope::Unregister {
                    client: 1 + rng.below(3),
                }),
                _ => request(1 + rng.below(3), rng.below(12), rng.below(4), &[OP_ADD, 0]),
            };
            apply(&mut *donor, position, &command);
            position += 1;
            let n = (1 + rng.below(16) as usize).min(stream.len() - at);
            donor.snapshot_read(at as u64, &mut stream[at..at + n]);
            at += n;
        }
        assert_eq!(stream, expected);
        assert_ne!(
            donor.table_digest(),
            twin.table_digest(),
            "the donor moved on"
        );
        assert_eq!(
            install(&mut *fresh, at_begin, &stream, &mut rng),
            offer.digest
        );
        assert_eq!(fresh.table_digest(), twin.table_digest());
    }

    #[test]
    fn an_application_without_snapshots_makes_the_wrapper_keep_none() {
        let (mut sm, position) = populated();
        sm.inner_mut().snapshots = false;
        assert_eq!(sm.snapshot_begin(position), None);
        let mut buf = [7u8; 8];
        sm.snapshot_read(0, &mut buf);
        assert_eq!(buf, [0; 8]);
    }

    #[test]
    fn a_joiner_of_another_geometry_does_not_install() {
        let mut rng = Rng(3);
        let (mut donor, position) = populated();
        let offer = donor.snapshot_begin(position).unwrap();
        let stream = read_stream(&mut *donor, offer.bytes, &mut rng);
        let mut smaller: Box<ExactlyOnce<Counters, 3, W, R>> =
            Box::new(ExactlyOnce::new(Counters::new(true)));
        assert_ne!(
            install(&mut *smaller, position, &stream, &mut rng),
            offer.digest
        );
        let mut larger: Box<ExactlyOnce<Counters, 8, W, R>> =
            Box::new(ExactlyOnce::new(Counters::new(true)));
        assert_ne!(
            install(&mut *larger, position, &stream, &mut rng),
            offer.digest
        );
        let mut other_reply: Box<ExactlyOnce<Counters, C, W, 32>> =
            Box::new(ExactlyOnce::new(Counters::new(true)));
        assert_ne!(
            install(&mut *other_reply, position, &stream, &mut rng),
            offer.digest
        );
        // A stream too short for a header is refused up front.
        assert!(!donor.install_begin(position, 4));
    }

    #[test]
    fn every_changed_byte_of_a_stream_fails_its_install_and_nothing_panics() {
        let mut rng = Rng(4);
        let (mut donor, position) = populated();
        let offer = donor.snapshot_begin(position).unwrap();
        let stream = read_stream(&mut *donor, offer.bytes, &mut rng);
        donor.snapshot_end();
        let mut joiner = wrapped(true);
        for at in 0..stream.len() {
            let mut bad = stream.clone();
            bad[at] ^= 1 << rng.below(8);
            assert_ne!(
                install(&mut *joiner, position, &bad, &mut rng),
                offer.digest,
                "{at}"
            );
            // Still sound: it takes commands and installs a good stream afterwards.
            apply(&mut *joiner, position, &encode_to_vec(Envelope::Register));
        }
        assert_eq!(
            install(&mut *joiner, position, &stream, &mut rng),
            offer.digest
        );
        // Truncated, out of order, past the end, random: never a panic nor the digest.
        for _ in 0..3000 {
            let len = match rng.below(3) {
                0 => rng.below(stream.len() as u64) as usize,
                1 => stream.len(),
                _ => rng.below(200) as usize,
            };
            let mut bytes = if rng.chance(50) {
                stream[..len].to_vec()
            } else {
                rng.bytes(len)
            };
            if rng.chance(50) && !bytes.is_empty() {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] = rng.next() as u8;
            }
            let announced = if rng.chance(80) {
                bytes.len() as u64
            } else {
                rng.below(300)
            };
            if !joiner.install_begin(position, announced) {
                continue;
            }
            let mut at = 0u64;
            while (at as usize) < bytes.len() {
                let n = (1 + rng.below(50) as usize).min(bytes.len() - at as usize);
                let offset = if rng.chance(3) { rng.below(400) } else { at };
                joiner.install_write(offset, &bytes[at as usize..at as usize + n]);
                at += n as u64;
            }
            if rng.chance(10) {
                joiner.install_abandon();
                continue;
            }
            let digest = joiner.install_end();
            assert!(digest != offer.digest || bytes == stream);
            for p in 0..3 {
                let command = request(rng.below(4), rng.below(6), 0, &[OP_ADD, 0]);
                apply(&mut *joiner, position + p, &command);
            }
        }
    }

    #[test]
    fn malformed_envelopes_change_nothing_and_never_panic() {
        let mut rng = Rng(5);
        let (mut sm, position) = populated();
        let values = sm.inner().values;
        let applied = sm.inner().applied;
        for i in 0..5000 {
            let len = rng.below(40) as usize;
            let mut bytes = rng.bytes(len);
            // Bias towards the envelope's first bytes, so that every branch is reached.
            if rng.chance(70) && len > 0 {
                bytes[0] = VERSION;
            }
            if rng.chance(70) && len > 1 {
                bytes[1] = 1 + rng.below(5) as u8;
            }
            let digest = sm.table_digest();
            let reply = apply(&mut *sm, position + i, &bytes);
            match decode(&bytes) {
                Err(error) => {
                    assert_eq!(
                        decode_reply(&reply),
                        Ok(Reply::Refused(Refusal::Malformed(error)))
                    );
                    assert_eq!(sm.table_digest(), digest);
                }
                Ok(_) => assert!(decode_reply(&reply).is_ok()),
            }
            assert!(decode_reply(&bytes).is_ok() || decode_reply(&bytes).is_err());
        }
        // Only decodable envelopes reached the application.
        let _ = (values, applied);
    }

    // ---- the reference model ---------------------------------------------------------------

    struct ModelSession {
        last_used: u64,
        floor: u64,
        /// `None`: the too-large marker.
        cache: BTreeMap<u64, Option<Vec<u8>>>,
    }

    /// The specification, restated with maps and no fixed sizes.
    #[derive(Default)]
    struct Model {
        sessions: BTreeMap<u64, ModelSession>,
        values: [u64; 4],
        applied: u64,
    }

    fn with_status(status: u8, body: &[u8]) -> Vec<u8> {
        let mut reply = vec![status];
        reply.extend_from_slice(body);
        reply
    }

    impl Model {
        fn inner(&mut self, payload: &[u8]) -> Vec<u8> {
            self.applied += 1;
            with_status(STATUS_APPLIED, &counters_apply(&mut self.values, payload))
        }

        fn apply(&mut self, position: u64, command: &[u8]) -> Vec<u8> {
            let malformed = |code: u8| vec![STATUS_MALFORMED, code];
            if command.is_empty() {
                return malformed(1);
            }
            if command[0] != 1 {
                return malformed(2);
            }
            if command.len() < 2 {
                return malformed(4);
            }
            let u = |at: usize| u64::from_le_bytes(command[at..at + 8].try_into().unwrap());
            match command[1] {
                1 if command.len() == 2 => {
                    if self.sessions.len() == C {
                        let lru = *self
                            .sessions
                            .iter()
                            .min_by_key(|(&id, s)| (s.last_used, id))
                            .unwrap()
                            .0;
                        self.sessions.remove(&lru);
                    }
                    let session = ModelSession {
                        last_used: position,
                        floor: 0,
                        cache: BTreeMap::new(),
                    };
                    self.sessions.insert(position, session);
                    with_status(STATUS_REGISTERED, &position.to_le_bytes())
                }
                2 if command.len() >= 26 => {
                    let (client, seq, acked) = (u(2), u(10), u(18));
                    if acked > seq {
                        return malformed(5);
                    }
                    let payload = &command[26..];
                    let touch = |s: &mut ModelSession| {
                        s.last_used = position;
                        s.floor = s.floor.max(acked);
                        let floor = s.floor;
                        s.cache.retain(|&seq, _| seq >= floor);
                    };
                    if counters_read_only(payload) {
                        if let Some(s) = self.sessions.get_mut(&client) {
                            touch(s);
                        }
                        return self.inner(payload);
                    }
                    let Some(s) = self.sessions.get_mut(&client) else {
                        return vec![STATUS_EXPIRED];
                    };
                    touch(s);
                    if seq < s.floor {
                        return with_status(STATUS_STALE, &s.floor.to_le_bytes());
                    }
                    match s.cache.get(&seq) {
                        Some(Some(bytes)) => return with_status(STATUS_DUPLICATE, bytes),
                        Some(None) => return vec![STATUS_NOT_KEPT],
                        None => {}
                    }
                    let reply = self.inner(payload);
                    let s = self.sessions.get_mut(&client).unwrap();
                    let kept = (reply.len() - 1 <= R).then(|| reply[1..].to_vec());
                    s.cache.insert(seq, kept);
                    if s.cache.len() > W {
                        let (lowest, _) = s.cache.pop_first().unwrap();
                        s.floor = lowest + 1;
                    }
                    reply
                }
                3 if command.len() == 10 => match self.sessions.remove(&u(2)) {
                    Some(_) => vec![STATUS_UNREGISTERED],
                    None => vec![STATUS_EXPIRED],
                },
                4 => self.inner(&command[2..]),
                1..=3 => malformed(4),
                _ => malformed(3),
            }
        }
    }

    struct Client {
        session: Session,
        /// Built, not yet sent: sent in random order (reordering within the window).
        unsent: Vec<(u64, Vec<u8>)>,
        /// Sent at least once, not settled: retried after a "fail-over".
        sent: Vec<(u64, Vec<u8>)>,
    }

    #[derive(Default, Debug)]
    struct Seen {
        applied: u64,
        duplicate: u64,
        registered: u64,
        expired: u64,
        stale: u64,
        not_kept: u64,
        malformed: u64,
        evicted: u64,
        installs: u64,
    }

    /// Replicas, a model, clients: every command goes to every replica
    /// (except a joiner catching up) and must answer exactly what the model answers.
    struct World {
        replicas: Vec<Wrapped>,
        model: Model,
        clients: Vec<Client>,
        position: u64,
        history: Vec<Vec<u8>>,
        seen: Seen,
        rng: Rng,
        /// A transfer is under way: no other starts.
        transferring: bool,
    }

    impl World {
        fn submit(&mut self, command: &[u8]) -> Vec<u8> {
            let position = self.position;
            self.position += 1;
            self.history.push(command.to_vec());
            let live = self.model.sessions.len();
            let expected = self.model.apply(position, command);
            if command.len() == 2 && command[..2] == [1, 1] && live == C {
                self.seen.evicted += 1;
            }
            for replica in self.replicas.iter_mut() {
                assert_eq!(apply(replica, position, command), expected, "at {position}");
                assert_eq!(replica.inner().values, self.model.values);
                assert_eq!(replica.sessions(), self.model.sessions.len());
            }
            assert_eq!(self.replicas[0].inner().applied, self.model.applied);
            match expected[0] {
                STATUS_APPLIED => self.seen.applied += 1,
                STATUS_DUPLICATE => self.seen.duplicate += 1,
                STATUS_REGISTERED => self.seen.registered += 1,
                STATUS_EXPIRED => self.seen.expired += 1,
                STATUS_STALE => self.seen.stale += 1,
                STATUS_NOT_KEPT => self.seen.not_kept += 1,
                STATUS_MALFORMED => self.seen.malformed += 1,
                _ => {}
            }
            expected
        }

        /// The client hears `reply` to request `seq` (or, when `lost`, nothing).
        fn hear(&mut self, c: usize, seq: u64, reply: &[u8], lost: bool) {
            if lost {
                return;
            }
            match decode_reply(reply).unwrap() {
                Reply::Refused(Refusal::Expired) => {
                    self.clients.swap_remove(c);
                }
                Reply::Refused(Refusal::Malformed(_)) => panic!("the helper built it"),
                _ => {
                    let client = &mut self.clients[c];
                    client.session.settle(seq);
                    client.sent.retain(|(s, _)| *s != seq);
                }
            }
        }

        fn step(&mut self) {
            let rng = &mut self.rng;
            let roll = rng.below(100);
            let pick = |rng: &mut Rng, n: usize| rng.below(n as u64) as usize;
            if roll < 6 && (self.clients.len() < C || roll < 1) || self.clients.is_empty() {
                let reply = self.submit(&encode_to_vec(Envelope::Register));
                if let Ok(Reply::Registered { client }) = decode_reply(&reply) {
                    // Some clients pipeline past the server's window, to push replies out.
                    let window = if self.rng.chance(30) { W + 3 } else { W };
                    self.clients.push(Client {
                        session: Session::new(client, window),
                        unsent: Vec::new(),
                        sent: Vec::new(),
                    });
                }
            } else if roll < 40 {
                let c = pick(rng, self.clients.len());
                let op = [OP_ADD, OP_ADD, OP_READ, OP_BIG, OP_SILENT][pick(rng, 5)];
                let payload = vec![op, rng.below(4) as u8, rng.below(9) as u8];
                let mut out = [0u8; 64];
                if let Ok((seq, _)) = self.clients[c].session.request(&payload, &mut out) {
                    self.clients[c].unsent.push((seq, payload));
                }
            } else if roll < 70 {
                let c = pick(rng, self.clients.len());
                let client = &mut self.clients[c];
                if client.unsent.is_empty() {
                    return;
                }
                let (seq, payload) = client.unsent.swap_remove(pick(rng, client.unsent.len()));
                let command = request(
                    client.session.client(),
                    seq,
                    client.session.acked(),
                    &payload,
                );
                client.sent.push((seq, payload));
                let lost = rng.chance(35);
                let reply = self.submit(&command);
                self.hear(c, seq, &reply, lost);
            } else if roll < 85 {
                // A fail-over: the client resubmits a request it heard nothing of.
                let c = pick(rng, self.clients.len());
                let client = &self.clients[c];
                if client.sent.is_empty() {
                    return;
                }
                let (seq, payload) = client.sent[pick(rng, client.sent.len())].clone();
                let mut out = [0u8; 64];
                let len = client.session.retry(seq, &payload, &mut out).unwrap();
                let lost = rng.chance(20);
                let reply = self.submit(&out[..len]);
                self.hear(c, seq, &reply, lost);
            } else if roll < 89 {
                // A duplicate decided again verbatim (old acked and all), heard by nobody.
                let recent = self.history.len().saturating_sub(60);
                let command = self.history[recent + pick(rng, self.history.len() - recent)].clone();
                self.submit(&command);
            } else if roll < 91 {
                let c = pick(rng, self.clients.len());
                let client = self.clients.swap_remove(c).session.client();
                self.submit(&encode_to_vec(Envelope::Unregister { client }));
            } else if roll < 94 {
                let payload = [pick(rng, 5) as u8, pick(rng, 4) as u8];
                self.submit(&encode_to_vec(Envelope::Plain { payload: &payload }));
            } else if roll < 97 {
                let len = pick(rng, 30);
                let mut junk = rng.bytes(len);
                if len > 1 && rng.chance(60) {
                    junk[0] = VERSION;
                    junk[1] = rng.below(6) as u8;
                }
                self.submit(&junk);
            } else if !self.transferring {
                self.transfer();
            }
        }

        /// A joiner (never replica 0, whose applied count the model checks) installs a
        /// snapshot of a donor taken now, while the others go on applying; then it replays
        /// what it missed, and everyone goes on alike.
        fn transfer(&mut self) {
            let n = self.replicas.len();
            let joiner = 1 + self.rng.below(n as u64 - 1) as usize;
            let donor = (joiner + 1 + self.rng.below(n as u64 - 1) as usize) % n;
            assert_ne!(donor, joiner);
            let mut joining = self.replicas.remove(joiner);
            self.transferring = true;
            let donor = if donor > joiner { donor - 1 } else { donor };
            let at = self.position;
            let offer = self.replicas[donor].snapshot_begin(at).unwrap();
            let missed_from = self.history.len();
            let mut stream = vec![0u8; offer.bytes as usize];
            let mut read = 0;
            while read < stream.len() {
                if self.rng.chance(30) {
                    self.step();
                }
                let take = (1 + self.rng.below(24) as usize).min(stream.len() - read);
                self.replicas[donor].snapshot_read(read as u64, &mut stream[read..read + take]);
                read += take;
            }
            self.replicas[donor].snapshot_end();
            let rng = &mut self.rng;
            assert_eq!(install(&mut joining, at, &stream, rng), offer.digest);
            for (i, command) in self.history[missed_from..].iter().enumerate() {
                apply(&mut joining, at + i as u64, command);
            }
            assert_eq!(joining.table_digest(), self.replicas[0].table_digest());
            assert_eq!(joining.inner().values, self.model.values);
            self.replicas.insert(joiner, joining);
            self.transferring = false;
            self.seen.installs += 1;
        }
    }

    #[test]
    fn the_wrapper_answers_as_the_reference_model_does() {
        for seed in 0..8 {
            let mut world = World {
                replicas: (0..3).map(|_| *wrapped(true)).collect(),
                model: Model::default(),
                clients: Vec::new(),
                position: 1,
                history: Vec::new(),
                seen: Seen::default(),
                rng: Rng(seed),
                transferring: false,
            };
            for _ in 0..4000 {
                world.step();
            }
            let seen = &world.seen;
            // Every case was exercised, so that the comparison above means something.
            assert!(seen.applied > 500 && seen.duplicate > 50, "{seen:?}");
            assert!(
                seen.registered > 50 && seen.evicted > 10 && seen.expired > 10,
                "{seen:?}"
            );
            assert!(
                seen.stale > 20 && seen.not_kept > 20 && seen.malformed > 10,
                "{seen:?}"
            );
            assert!(seen.installs > 10, "{seen:?}");
        }
    }
}
