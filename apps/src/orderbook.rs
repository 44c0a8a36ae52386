//! # The order book: a price-time priority matching engine
//!
//! Mu's paper replicated the Liquibook order book. [`OrderBook`] is our own: limit orders (good
//! till cancelled, or immediate or cancel), market orders, cancels and replaces, matched in
//! price-time priority, in fixed memory chosen by the embedder: `ORDERS` resting orders and
//! `LEVELS` price levels per side, both const generics, so the whole book is one value with no
//! pointers that can sit in a `static`, a `Box` or a firmware's RAM section alike ([`OrderBook::new`]
//! is `const`). Nothing allocates, ever.
//!
//! ## Numbers
//! - Prices are integer ticks in `1..=u32::MAX`; quantities integer lots in `1..=u32::MAX`. Zero is
//!   refused ([`Reject::BadPrice`], [`Reject::BadQuantity`]); every other value is accepted. A
//!   level's total is a `u64`, so no sum of resting lots overflows.
//! - Order ids are assigned by the book: `id = seq * ORDERS + slot`, where `seq` counts the
//!   accepted limit and market orders (from 1, so 0 is never an id) and `slot` is the pool slot the
//!   order rests in (0 for an order that never rests). Ids grow with time, are never reused, and a
//!   cancel or replace finds its order in O(1) without any map: the slot is `id % ORDERS`, and the
//!   slot's id must match. When `seq` would no longer fit (after `u64::MAX / ORDERS` orders) new
//!   orders are refused with [`Reject::IdsExhausted`].
//! - Pool slots come from a free list (last freed, first reused) and then from the never-used
//!   slots in order. Which slot an order gets shows in its id, so the free list's order is part of
//!   the replicated state, in the digest and in the snapshot.
//!
//! ## Matching
//! An incoming order trades with the opposite side's best level first, each level's orders
//! oldest first, at the resting order's price, as long as its limit crosses (a buy's limit at or
//! above the ask, a sell's at or below the bid; a market order has no limit). A good-till-cancelled
//! remainder then rests at the back of its price level; an immediate-or-cancel or market remainder
//! is discarded (reported as `cancelled`). Each fill either empties a resting order or completes the
//! incoming one, so one command makes at most `ORDERS` fills: the work per command is bounded by
//! `ORDERS` fills plus `LEVELS` levels (the capacity check below walks the crossing levels).
//!
//! A command is accepted or rejected as a whole: before changing anything, a good-till-cancelled
//! limit checks that its remainder, if any, would find room (a pool slot, unless matching frees
//! one; a level at its price, or room for a new one), so a rejected command changes nothing.
//!
//! A replace (`order`, `price`, `qty`, where `qty` is the new open quantity) keeps the order's time
//! priority when the price is unchanged and the quantity does not grow; otherwise the order leaves
//! its place and enters again at the back, as a limit order would, keeping its id and slot: a
//! replace to a crossing price trades first. A replace never consumes a `seq`.
//!
//! ## Memory
//! Per pool slot 40 bytes live and 36 for the frozen copy; per level 24 bytes, `LEVELS` per side;
//! a few hundred bytes besides. `OrderBook<65536, 4096>` is about 5.2 MB.
//!
//! ## Reading
//! [`OrderBook::best_bid`], [`OrderBook::best_ask`], [`OrderBook::depth`] (a side's levels,
//! best first), [`OrderBook::queue`] (a level's orders in time priority), [`OrderBook::order`],
//! [`OrderBook::digest`] and [`OrderBook::check`] (every invariant below, from scratch) serve
//! tests and demos; [`orderflow::Generator`] draws a realistic flow for them and for benchmarks.
//!
//! ## Command format (little-endian, exact lengths)
//! | tag | command | bytes after the tag |
//! |---|---|---|
//! | 1 | limit | side `u8` (0 buy, 1 sell), time in force `u8` (0 good till cancelled, 1 immediate or cancel), price `u32`, qty `u32`, client tag `u64` (18) |
//! | 2 | market | side `u8`, qty `u32`, client tag `u64` (13) |
//! | 3 | cancel | order `u64` (8) |
//! | 4 | replace | order `u64`, price `u32`, qty `u32` (16) |
//!
//! ## Reply format (little-endian)
//! Status `u8` (0 accepted, else a [`Reject`] code), order `u64` (the assigned id, or the id a
//! cancel or replace named; 0 for a rejected new order), filled `u32`, resting `u32` (the open
//! quantity left on the book), cancelled `u32` (quantity taken off without trading: a cancel's
//! open quantity, a replace's reduction, a discarded remainder), fills `u32` (how many fills the
//! command made), listed `u8`, then `listed` fills of 16 bytes: counterparty order `u64`, price
//! `u32`, qty `u32`. At most [`FILLS_MAX`] are listed, fewer when the response buffer is shorter;
//! [`Reply::unlisted`] says how many more were made. A response buffer shorter than
//! [`REPLY_HEADER_BYTES`] gets no reply (length 0); the command is applied all the same.
//!
//! ## Snapshots
//! The donor serialises the book into a preallocated frozen copy at `snapshot_begin`
//! (O(slots ever used): resting orders and free slots, not the level tables), so it keeps applying at
//! full speed while the stream is read, and a second snapshot needs no more memory. A full copy
//! rather than copy-on-write because matching touches orders all over the book (every fill
//! changes a resting order, every cancel relinks a level): saving what changes would cost a check
//! on each of those writes, for a transfer that is rare; the copy costs `36 * ORDERS` bytes. The
//! digest is computed at `snapshot_begin` from the live book, and by the joiner from what it
//! installed, with the same walk ([`OrderBook::digest`]), so it covers exactly the stream's
//! content. Stream format (little-endian):
//! - a header of 32 bytes: magic `b"MUOB"`, `ORDERS` `u32`, `LEVELS` `u32`, resting orders
//!   `u32`, free-list slots `u32`, slots ever used `u32`, next `seq` `u64`;
//! - one record of 29 bytes per resting order: id `u64`, client tag `u64`, price `u32`, open qty
//!   `u32`, side `u8`; bids then asks, each side from its deepest level to its best, each level's
//!   orders in time priority (deepest first, so the joiner appends every new level at the best end
//!   of its sorted table without moving any);
//! - the free list's slots, `u32` each, in the order they will be reused.
//!
//! The joiner must have the same `ORDERS` and `LEVELS` (ids carry slots, and capacity decides
//! rejections, so replicas must agree on both). It rebuilds each level by appending its records
//! in stream order, so time priority is the donor's. A stream that does not decode (a bad header,
//! a record that would cross the book, reuse a slot or overflow a level table, a piece out of
//! order or past the announced length) is installed as far as it decoded; slots the stream did not
//! account for go to the free list, so the book stays sound, and its digest, which is always that
//! of the installed book, differs from the donor's, which the core checks.
//!
//! # Invariants
//! - Each side's levels are sorted strictly, best last (bids ascending, asks descending); every
//!   level holds at least one order; a level's `orders` and `qty` equal its list's count and sum.
//! - The book never stays crossed: after every command the best bid is below the best ask.
//! - Every pool slot below `fresh` is either resting (linked in exactly one level of its side, at
//!   its price) or free (on the free list, exactly once); slots from `fresh` up are vacant. The
//!   only exception is inside an install, which settles it before anything else runs.
//! - A resting order's id is `seq * ORDERS + slot` for its own slot, with `1 <= seq < next_seq`,
//!   and its open quantity is at least 1.
//! - A rejected command changes nothing; correct encoders never produce a malformed one.
//! - A command makes at most `ORDERS` fills and walks at most `LEVELS` levels per side.
//! - While a snapshot is open its stream never changes, whatever is applied. A snapshot and an
//!   install never overlap: beginning one ends the other; applying a command ends an install.
//! - No input (commands, replies to decode, stream bytes, offsets) panics.

mod engine;
pub mod orderflow;
mod snapshot;
#[cfg(test)]
mod tests;

pub use engine::{Depth, LevelView, OrderView, Queue};
pub use snapshot::{FREE_BYTES, RECORD_BYTES, SNAPSHOT_HEADER_BYTES};

/// No slot: the end of an intrusive list.
const NIL: u32 = u32::MAX;

/// Most fills one reply lists.
pub const FILLS_MAX: usize = 16;
/// Bytes of a reply before its fills.
pub const REPLY_HEADER_BYTES: usize = 1 + 8 + 4 + 4 + 4 + 4 + 1;
/// Bytes of one listed fill.
pub const FILL_BYTES: usize = 8 + 4 + 4;
/// The longest reply: the header and [`FILLS_MAX`] fills.
pub const REPLY_MAX_BYTES: usize = REPLY_HEADER_BYTES + FILLS_MAX * FILL_BYTES;
/// Bytes of an encoded limit order.
pub const LIMIT_BYTES: usize = 1 + 1 + 1 + 4 + 4 + 8;
/// Bytes of an encoded market order.
pub const MARKET_BYTES: usize = 1 + 1 + 4 + 8;
/// Bytes of an encoded cancel.
pub const CANCEL_BYTES: usize = 1 + 8;
/// Bytes of an encoded replace.
pub const REPLACE_BYTES: usize = 1 + 8 + 4 + 4;
/// The longest command.
pub const COMMAND_MAX_BYTES: usize = LIMIT_BYTES;

const TAG_LIMIT: u8 = 1;
const TAG_MARKET: u8 = 2;
const TAG_CANCEL: u8 = 3;
const TAG_REPLACE: u8 = 4;

/// A side of the book.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Side {
    /// Bids: buy orders, best is highest.
    Buy = 0,
    /// Asks: sell orders, best is lowest.
    Sell = 1,
}

impl Side {
    /// The other side.
    pub const fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }

    fn from_byte(byte: u8) -> Option<Side> {
        match byte {
            0 => Some(Side::Buy),
            1 => Some(Side::Sell),
            _ => None,
        }
    }
}

/// What happens to the part of a limit order that does not trade at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TimeInForce {
    /// Good till cancelled: it rests on the book.
    Gtc = 0,
    /// Immediate or cancel: it is discarded.
    Ioc = 1,
}

impl TimeInForce {
    fn from_byte(byte: u8) -> Option<TimeInForce> {
        match byte {
            0 => Some(TimeInForce::Gtc),
            1 => Some(TimeInForce::Ioc),
            _ => None,
        }
    }
}

/// A command to the book (see the module doc for its encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Command {
    /// Buy or sell up to `qty` at `price` or better.
    Limit {
        /// The side the order is on.
        side: Side,
        /// Its limit, in ticks.
        price: u32,
        /// Its quantity, in lots.
        qty: u32,
        /// Whether the remainder rests.
        tif: TimeInForce,
        /// The client's own reference, kept with the resting order.
        client_tag: u64,
    },
    /// Buy or sell up to `qty` at any price; never rests.
    Market {
        /// The side the order is on.
        side: Side,
        /// Its quantity, in lots.
        qty: u32,
        /// The client's own reference (not kept: the order never rests).
        client_tag: u64,
    },
    /// Take a resting order off the book.
    Cancel {
        /// Its id.
        order: u64,
    },
    /// Change a resting order's price and open quantity.
    Replace {
        /// Its id.
        order: u64,
        /// The new price, in ticks.
        price: u32,
        /// The new open quantity, in lots.
        qty: u32,
    },
}

/// Why bytes do not decode as a command or a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DecodeError {
    /// No bytes.
    Empty,
    /// An unknown command tag or reply status.
    Tag,
    /// The length does not fit the tag (or the reply's fill count).
    Length,
    /// A side byte other than 0 or 1.
    Side,
    /// A time-in-force byte other than 0 or 1.
    TimeInForce,
    /// A reply whose fields contradict each other.
    Inconsistent,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

impl Command {
    /// Its encoded length.
    pub const fn encoded_len(&self) -> usize {
        match self {
            Command::Limit { .. } => LIMIT_BYTES,
            Command::Market { .. } => MARKET_BYTES,
            Command::Cancel { .. } => CANCEL_BYTES,
            Command::Replace { .. } => REPLACE_BYTES,
        }
    }

    /// Encodes it into `out` (at least [`Command::encoded_len`] bytes); returns the length.
    pub fn encode(&self, out: &mut [u8]) -> usize {
        let len = self.encode_raw(out);
        debug_assert_eq!(Command::decode_raw(&out[..len]), Ok(*self));
        len
    }

    fn encode_raw(&self, out: &mut [u8]) -> usize {
        let len = self.encoded_len();
        assert!(out.len() >= len, "command buffer too short");
        match *self {
            Command::Limit {
                side,
                price,
                qty,
                tif,
                client_tag,
            } => {
                out[0] = TAG_LIMIT;
                out[1] = side as u8;
                out[2] = tif as u8;
                out[3..7].copy_from_slice(&price.to_le_bytes());
                out[7..11].copy_from_slice(&qty.to_le_bytes());
                out[11..19].copy_from_slice(&client_tag.to_le_bytes());
            }
            Command::Market {
                side,
                qty,
                client_tag,
            } => {
                out[0] = TAG_MARKET;
                out[1] = side as u8;
                out[2..6].copy_from_slice(&qty.to_le_bytes());
                out[6..14].copy_from_slice(&client_tag.to_le_bytes());
            }
            Command::Cancel { order } => {
                out[0] = TAG_CANCEL;
                out[1..9].copy_from_slice(&order.to_le_bytes());
            }
            Command::Replace { order, price, qty } => {
                out[0] = TAG_REPLACE;
                out[1..9].copy_from_slice(&order.to_le_bytes());
                out[9..13].copy_from_slice(&price.to_le_bytes());
                out[13..17].copy_from_slice(&qty.to_le_bytes());
            }
        }
        len
    }

    /// Decodes a command. Structure only: a zero price or quantity decodes, and the book rejects
    /// it with its own code.
    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        let command = Command::decode_raw(bytes)?;
        debug_assert!({
            let mut again = [0u8; COMMAND_MAX_BYTES];
            let len = command.encode_raw(&mut again);
            again[..len] == *bytes
        });
        Ok(command)
    }

    fn decode_raw(bytes: &[u8]) -> Result<Command, DecodeError> {
        let (&tag, _) = bytes.split_first().ok_or(DecodeError::Empty)?;
        let expected = match tag {
            TAG_LIMIT => LIMIT_BYTES,
            TAG_MARKET => MARKET_BYTES,
            TAG_CANCEL => CANCEL_BYTES,
            TAG_REPLACE => REPLACE_BYTES,
            _ => return Err(DecodeError::Tag),
        };
        if bytes.len() != expected {
            return Err(DecodeError::Length);
        }
        let side = || Side::from_byte(bytes[1]).ok_or(DecodeError::Side);
        Ok(match tag {
            TAG_LIMIT => Command::Limit {
                side: side()?,
                tif: TimeInForce::from_byte(bytes[2]).ok_or(DecodeError::TimeInForce)?,
                price: u32_at(bytes, 3),
                qty: u32_at(bytes, 7),
                client_tag: u64_at(bytes, 11),
            },
            TAG_MARKET => Command::Market {
                side: side()?,
                qty: u32_at(bytes, 2),
                client_tag: u64_at(bytes, 6),
            },
            TAG_CANCEL => Command::Cancel {
                order: u64_at(bytes, 1),
            },
            _ => Command::Replace {
                order: u64_at(bytes, 1),
                price: u32_at(bytes, 9),
                qty: u32_at(bytes, 13),
            },
        })
    }
}

/// Encodes a limit order into `out`; returns the length ([`LIMIT_BYTES`]).
pub fn encode_limit(
    out: &mut [u8],
    side: Side,
    price: u32,
    qty: u32,
    tif: TimeInForce,
    client_tag: u64,
) -> usize {
    Command::Limit {
        side,
        price,
        qty,
        tif,
        client_tag,
    }
    .encode(out)
}

/// Encodes a market order into `out`; returns the length ([`MARKET_BYTES`]).
pub fn encode_market(out: &mut [u8], side: Side, qty: u32, client_tag: u64) -> usize {
    Command::Market {
        side,
        qty,
        client_tag,
    }
    .encode(out)
}

/// Encodes a cancel into `out`; returns the length ([`CANCEL_BYTES`]).
pub fn encode_cancel(out: &mut [u8], order: u64) -> usize {
    Command::Cancel { order }.encode(out)
}

/// Encodes a replace into `out`; returns the length ([`REPLACE_BYTES`]).
pub fn encode_replace(out: &mut [u8], order: u64, price: u32, qty: u32) -> usize {
    Command::Replace { order, price, qty }.encode(out)
}

/// Why the book refused a command; it changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Reject {
    /// The command did not decode.
    Malformed = 1,
    /// The remainder would rest, and every pool slot holds a resting order.
    BookFull = 2,
    /// The remainder would need a new price level, and its side's level table is full.
    LevelsFull = 3,
    /// No resting order has this id (never assigned, filled, cancelled, or never rested).
    NoSuchOrder = 4,
    /// A price of 0.
    BadPrice = 5,
    /// A quantity of 0.
    BadQuantity = 6,
    /// Every order id was assigned (after `u64::MAX / ORDERS` orders).
    IdsExhausted = 7,
}

impl Reject {
    fn from_byte(byte: u8) -> Option<Reject> {
        Some(match byte {
            1 => Reject::Malformed,
            2 => Reject::BookFull,
            3 => Reject::LevelsFull,
            4 => Reject::NoSuchOrder,
            5 => Reject::BadPrice,
            6 => Reject::BadQuantity,
            7 => Reject::IdsExhausted,
            _ => return None,
        })
    }
}

/// The outcome of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Status {
    /// Applied.
    Accepted,
    /// Refused; nothing changed.
    Rejected(Reject),
}

/// One trade with a resting order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Fill {
    /// The resting order's id.
    pub maker: u64,
    /// The resting order's price: the trade's.
    pub price: u32,
    /// Lots traded.
    pub qty: u32,
}

/// The book's answer to one command (see the module doc for its encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Accepted or why not.
    pub status: Status,
    /// The order's id: assigned to a new order, named by a cancel or replace; 0 for a rejected
    /// new order.
    pub order: u64,
    /// Lots this command traded.
    pub filled: u32,
    /// The order's open quantity left on the book.
    pub resting: u32,
    /// Lots taken off without trading: a cancel's open quantity, a replace's reduction, an
    /// immediate-or-cancel or market remainder.
    pub cancelled: u32,
    /// Fills this command made, listed or not.
    pub fills_total: u32,
    /// Fills listed in `fills`.
    pub listed: u8,
    /// The first `listed` fills, in the order they happened; the rest are zero.
    pub fills: [Fill; FILLS_MAX],
}

impl Reply {
    /// An accepted reply for `order`, with nothing traded yet.
    const fn accepted(order: u64) -> Reply {
        Reply {
            status: Status::Accepted,
            order,
            filled: 0,
            resting: 0,
            cancelled: 0,
            fills_total: 0,
            listed: 0,
            fills: [Fill {
                maker: 0,
                price: 0,
                qty: 0,
            }; FILLS_MAX],
        }
    }

    /// A rejection naming `order` (0 for a new order).
    const fn rejected(reject: Reject, order: u64) -> Reply {
        let mut reply = Reply::accepted(order);
        reply.status = Status::Rejected(reject);
        reply
    }

    /// Counts a fill and lists it while fewer than `cap` are.
    fn record(&mut self, fill: Fill, cap: usize) {
        debug_assert!(cap <= FILLS_MAX && fill.qty > 0);
        self.fills_total += 1;
        if (self.listed as usize) < cap {
            self.fills[self.listed as usize] = fill;
            self.listed += 1;
        }
    }

    /// The listed fills.
    pub fn fills(&self) -> &[Fill] {
        &self.fills[..(self.listed as usize).min(FILLS_MAX)]
    }

    /// Fills made but not listed (the reply's room ran out).
    pub fn unlisted(&self) -> u32 {
        self.fills_total.saturating_sub(self.listed as u32)
    }

    /// Whether the command was applied.
    pub fn is_accepted(&self) -> bool {
        self.status == Status::Accepted
    }

    /// Its encoded length.
    pub fn encoded_len(&self) -> usize {
        REPLY_HEADER_BYTES + self.fills().len() * FILL_BYTES
    }

    /// Encodes it into `out` (at least [`Reply::encoded_len`] bytes); returns the length.
    pub fn encode(&self, out: &mut [u8]) -> usize {
        let len = self.encoded_len();
        assert!(out.len() >= len, "reply buffer too short");
        out[0] = match self.status {
            Status::Accepted => 0,
            Status::Rejected(reject) => reject as u8,
        };
        out[1..9].copy_from_slice(&self.order.to_le_bytes());
        out[9..13].copy_from_slice(&self.filled.to_le_bytes());
        out[13..17].copy_from_slice(&self.resting.to_le_bytes());
        out[17..21].copy_from_slice(&self.cancelled.to_le_bytes());
        out[21..25].copy_from_slice(&self.fills_total.to_le_bytes());
        out[25] = self.listed;
        for (i, fill) in self.fills().iter().enumerate() {
            let at = REPLY_HEADER_BYTES + i * FILL_BYTES;
            out[at..at + 8].copy_from_slice(&fill.maker.to_le_bytes());
            out[at + 8..at + 12].copy_from_slice(&fill.price.to_le_bytes());
            out[at + 12..at + 16].copy_from_slice(&fill.qty.to_le_bytes());
        }
        debug_assert_eq!(Reply::decode(&out[..len]), Ok(*self));
        len
    }

    /// Decodes a reply, checking that its fields agree with each other.
    pub fn decode(bytes: &[u8]) -> Result<Reply, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        if bytes.len() < REPLY_HEADER_BYTES {
            return Err(DecodeError::Length);
        }
        let status = match bytes[0] {
            0 => Status::Accepted,
            code => Status::Rejected(Reject::from_byte(code).ok_or(DecodeError::Tag)?),
        };
        let listed = bytes[25];
        if listed as usize > FILLS_MAX
            || bytes.len() != REPLY_HEADER_BYTES + listed as usize * FILL_BYTES
        {
            return Err(DecodeError::Length);
        }
        let mut reply = Reply::accepted(u64_at(bytes, 1));
        reply.status = status;
        reply.filled = u32_at(bytes, 9);
        reply.resting = u32_at(bytes, 13);
        reply.cancelled = u32_at(bytes, 17);
        reply.fills_total = u32_at(bytes, 21);
        reply.listed = listed;
        let mut listed_qty = 0u64;
        for i in 0..listed as usize {
            let at = REPLY_HEADER_BYTES + i * FILL_BYTES;
            let fill = Fill {
                maker: u64_at(bytes, at),
                price: u32_at(bytes, at + 8),
                qty: u32_at(bytes, at + 12),
            };
            if fill.maker == 0 || fill.price == 0 || fill.qty == 0 {
                return Err(DecodeError::Inconsistent);
            }
            listed_qty += fill.qty as u64;
            reply.fills[i] = fill;
        }
        let rejected_but_did = matches!(status, Status::Rejected(_))
            && (reply.filled | reply.resting | reply.cancelled | reply.fills_total) != 0;
        // Each fill trades at least one lot, so the lots bound the fill count.
        if rejected_but_did
            || (listed as u32) > reply.fills_total
            || listed_qty > reply.filled as u64
            || reply.fills_total > reply.filled
            || (reply.fills_total == 0) != (reply.filled == 0)
        {
            return Err(DecodeError::Inconsistent);
        }
        Ok(reply)
    }
}

/// The state of a pool slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Never used (from `fresh` up), or not yet accounted for by an install in progress.
    Vacant,
    /// On the free list.
    Free,
    /// Holds a resting order.
    Resting,
}

/// A pool slot: a resting order, linked to its level's neighbours by slot index (or, when free,
/// to the next free slot through `next`).
#[derive(Clone, Copy, Debug)]
struct Order {
    id: u64,
    tag: u64,
    price: u32,
    /// Open quantity.
    qty: u32,
    /// The older order at the same level (towards the head), or NIL.
    prev: u32,
    /// The newer order at the same level, or the next free slot, or NIL.
    next: u32,
    side: Side,
    state: SlotState,
}

impl Order {
    const VACANT: Order = Order {
        id: 0,
        tag: 0,
        price: 0,
        qty: 0,
        prev: NIL,
        next: NIL,
        side: Side::Buy,
        state: SlotState::Vacant,
    };
}

/// One price level: a FIFO of orders, oldest at `head`.
#[derive(Clone, Copy, Debug)]
struct Level {
    price: u32,
    head: u32,
    tail: u32,
    orders: u32,
    /// The sum of its orders' open quantities.
    qty: u64,
}

impl Level {
    const EMPTY: Level = Level {
        price: 0,
        head: NIL,
        tail: NIL,
        orders: 0,
        qty: 0,
    };
}

/// One side's price levels, sorted strictly from the worst price to the best, so the best is
/// last: matching pops it without moving the others, and orders near the touch, the usual case,
/// insert near the end.
struct Ladder<const LEVELS: usize> {
    side: Side,
    len: usize,
    levels: [Level; LEVELS],
}

/// The order book: `ORDERS` resting orders, `LEVELS` price levels per side (see the module doc).
pub struct OrderBook<const ORDERS: usize, const LEVELS: usize> {
    pool: [Order; ORDERS],
    /// The free list's top (reused first), or NIL.
    free_head: u32,
    free_len: u32,
    /// Slots from here up were never used.
    fresh: u32,
    /// The next order's `seq`.
    next_seq: u64,
    resting: u32,
    bids: Ladder<LEVELS>,
    asks: Ladder<LEVELS>,
    frozen: snapshot::Frozen<ORDERS>,
    install: snapshot::Install,
}
