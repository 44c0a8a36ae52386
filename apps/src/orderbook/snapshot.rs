//! Snapshots (the stream format is in the module doc), the digest, and the `StateMachine`
//! implementation.

use mu_nostd::hash::Hasher;
use mu_nostd::{Snapshot, StateMachine};

use super::{
    u32_at, u64_at, Command, OrderBook, Reject, Reply, Side, SlotState, FILL_BYTES, NIL,
    REPLY_HEADER_BYTES,
};

/// Bytes of the stream's header.
pub const SNAPSHOT_HEADER_BYTES: usize = 32;
/// Bytes of one resting order's record.
pub const RECORD_BYTES: usize = 8 + 8 + 4 + 4 + 1;
/// Bytes of one free-list entry.
pub const FREE_BYTES: usize = 4;
const MAGIC: u32 = u32::from_le_bytes(*b"MUOB");
const DIGEST_DOMAIN: u64 = 0x4F52_4445_5242_4F4F;

/// The stream's header (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    orders: u32,
    levels: u32,
    resting: u32,
    free: u32,
    fresh: u32,
    next_seq: u64,
}

impl Header {
    const ZERO: Header = Header {
        orders: 0,
        levels: 0,
        resting: 0,
        free: 0,
        fresh: 0,
        next_seq: 0,
    };

    fn stream_bytes(&self) -> u64 {
        SNAPSHOT_HEADER_BYTES as u64
            + self.resting as u64 * RECORD_BYTES as u64
            + self.free as u64 * FREE_BYTES as u64
    }

    fn encode(&self) -> [u8; SNAPSHOT_HEADER_BYTES] {
        let mut out = [0; SNAPSHOT_HEADER_BYTES];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&self.orders.to_le_bytes());
        out[8..12].copy_from_slice(&self.levels.to_le_bytes());
        out[12..16].copy_from_slice(&self.resting.to_le_bytes());
        out[16..20].copy_from_slice(&self.free.to_le_bytes());
        out[20..24].copy_from_slice(&self.fresh.to_le_bytes());
        out[24..32].copy_from_slice(&self.next_seq.to_le_bytes());
        debug_assert_eq!(Header::decode(&out), Some(*self));
        out
    }

    fn decode(bytes: &[u8]) -> Option<Header> {
        if bytes.len() != SNAPSHOT_HEADER_BYTES || u32_at(bytes, 0) != MAGIC {
            return None;
        }
        Some(Header {
            orders: u32_at(bytes, 4),
            levels: u32_at(bytes, 8),
            resting: u32_at(bytes, 12),
            free: u32_at(bytes, 16),
            fresh: u32_at(bytes, 20),
            next_seq: u64_at(bytes, 24),
        })
    }
}

/// One resting order in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    id: u64,
    tag: u64,
    price: u32,
    qty: u32,
    side: Side,
}

impl Record {
    const ZERO: Record = Record {
        id: 0,
        tag: 0,
        price: 0,
        qty: 0,
        side: Side::Buy,
    };

    fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut out = [0; RECORD_BYTES];
        out[0..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..16].copy_from_slice(&self.tag.to_le_bytes());
        out[16..20].copy_from_slice(&self.price.to_le_bytes());
        out[20..24].copy_from_slice(&self.qty.to_le_bytes());
        out[24] = self.side as u8;
        debug_assert_eq!(Record::decode(&out), Some(*self));
        out
    }

    fn decode(bytes: &[u8]) -> Option<Record> {
        if bytes.len() != RECORD_BYTES {
            return None;
        }
        Some(Record {
            id: u64_at(bytes, 0),
            tag: u64_at(bytes, 8),
            price: u32_at(bytes, 16),
            qty: u32_at(bytes, 20),
            side: Side::from_byte(bytes[24])?,
        })
    }
}

/// One piece of the stream, as the walk over the book yields it.
#[derive(Clone, Copy)]
enum Item {
    Header(Header),
    Record(Record),
    Free(u32),
}

impl Item {
    fn hash(&self, hasher: Hasher) -> Hasher {
        match *self {
            Item::Header(h) => hasher
                .word(h.orders as u64 | (h.levels as u64) << 32)
                .word(h.resting as u64 | (h.free as u64) << 32)
                .word(h.fresh as u64)
                .word(h.next_seq),
            Item::Record(r) => hasher
                .word(r.id)
                .word(r.tag)
                .word(r.price as u64 | (r.qty as u64) << 32)
                .word(r.side as u64),
            Item::Free(slot) => hasher.word(slot as u64),
        }
    }
}

/// The donor's frozen copy of the stream, preallocated (module doc).
pub(super) struct Frozen<const ORDERS: usize> {
    open: bool,
    header: Header,
    records: [Record; ORDERS],
    free: [u32; ORDERS],
}

impl<const ORDERS: usize> Frozen<ORDERS> {
    pub(super) const fn new() -> Frozen<ORDERS> {
        Frozen {
            open: false,
            header: Header::ZERO,
            records: [Record::ZERO; ORDERS],
            free: [0; ORDERS],
        }
    }

    fn stream_bytes(&self) -> u64 {
        if self.open {
            self.header.stream_bytes()
        } else {
            0
        }
    }

    /// The item holding stream byte `at` (below `stream_bytes`): its bytes, where it starts and
    /// its length.
    fn item_at(&self, at: u64) -> ([u8; SNAPSHOT_HEADER_BYTES], u64, usize) {
        let mut bytes = [0; SNAPSHOT_HEADER_BYTES];
        let records_at = SNAPSHOT_HEADER_BYTES as u64;
        let free_at = records_at + self.header.resting as u64 * RECORD_BYTES as u64;
        if at < records_at {
            bytes.copy_from_slice(&self.header.encode());
            (bytes, 0, SNAPSHOT_HEADER_BYTES)
        } else if at < free_at {
            let index = (at - records_at) / RECORD_BYTES as u64;
            bytes[..RECORD_BYTES].copy_from_slice(&self.records[index as usize].encode());
            (
                bytes,
                records_at + index * RECORD_BYTES as u64,
                RECORD_BYTES,
            )
        } else {
            let index = (at - free_at) / FREE_BYTES as u64;
            bytes[..FREE_BYTES].copy_from_slice(&self.free[index as usize].to_le_bytes());
            (bytes, free_at + index * FREE_BYTES as u64, FREE_BYTES)
        }
    }
}

/// The joiner's decoding state between `install_begin` and its end.
#[derive(Clone, Copy)]
pub(super) struct Install {
    active: bool,
    /// The announced stream length.
    total: u64,
    /// Where the next piece must start.
    next: u64,
    /// The stream stopped decoding; the rest of it is ignored.
    stopped: bool,
    /// An item that spans pieces is gathered here.
    buf: [u8; SNAPSHOT_HEADER_BYTES],
    fill: usize,
    header: Option<Header>,
    records: u32,
    free: u32,
    /// The free list's last slot, where the stream's next free entry is appended.
    free_tail: u32,
}

impl Install {
    pub(super) const IDLE: Install = Install {
        active: false,
        total: 0,
        next: 0,
        stopped: false,
        buf: [0; SNAPSHOT_HEADER_BYTES],
        fill: 0,
        header: None,
        records: 0,
        free: 0,
        free_tail: NIL,
    };

    pub(super) fn active(&self) -> bool {
        self.active
    }

    /// The length of the item that comes next, 0 when the stream should be over.
    fn need(&self) -> usize {
        match self.header {
            None => SNAPSHOT_HEADER_BYTES,
            Some(h) if self.records < h.resting => RECORD_BYTES,
            Some(h) if self.free < h.free => FREE_BYTES,
            Some(_) => 0,
        }
    }
}

impl<const ORDERS: usize, const LEVELS: usize> OrderBook<ORDERS, LEVELS> {
    /// The longest stream a book of this capacity can have: every slot resting.
    pub(super) const STREAM_MAX: u64 =
        SNAPSHOT_HEADER_BYTES as u64 + ORDERS as u64 * RECORD_BYTES as u64;

    fn header(&self) -> Header {
        Header {
            orders: ORDERS as u32,
            levels: LEVELS as u32,
            resting: self.resting,
            free: self.free_len,
            fresh: self.fresh,
            next_seq: self.next_seq,
        }
    }

    /// Calls `each` with the stream's items in stream order (O(`fresh`)).
    fn walk(&self, each: impl FnMut(Item)) {
        walk(
            self.header(),
            &self.pool,
            [&self.bids, &self.asks],
            self.free_head,
            each,
        );
    }

    /// The digest of the book: of its stream, whose every byte it covers. O(`fresh`): computed
    /// when a snapshot begins or an install ends, not kept up to date.
    pub fn digest(&self) -> u64 {
        let mut hasher = Hasher::new(DIGEST_DOMAIN);
        self.walk(|item| hasher = item.hash(hasher));
        hasher.finish()
    }

    /// Serialises the book into the frozen copy and opens it.
    fn freeze(&mut self) -> Snapshot {
        let header = self.header();
        let mut hasher = Hasher::new(DIGEST_DOMAIN);
        let (mut records, mut free) = (0usize, 0usize);
        let frozen = &mut self.frozen;
        walk(
            header,
            &self.pool,
            [&self.bids, &self.asks],
            self.free_head,
            |item| {
                hasher = item.hash(hasher);
                match item {
                    Item::Header(_) => {}
                    Item::Record(record) => {
                        frozen.records[records] = record;
                        records += 1;
                    }
                    Item::Free(slot) => {
                        frozen.free[free] = slot;
                        free += 1;
                    }
                }
            },
        );
        assert_eq!(
            (records, free),
            (header.resting as usize, header.free as usize)
        );
        frozen.header = header;
        frozen.open = true;
        Snapshot {
            bytes: header.stream_bytes(),
            digest: hasher.finish(),
        }
    }
}

/// The walk over a book's parts (so that the frozen copy, not among them, can be written while
/// it runs): the header, both sides' records from the deepest level to the best, the free list.
fn walk<const LEVELS: usize>(
    header: Header,
    pool: &[super::Order],
    ladders: [&super::Ladder<LEVELS>; 2],
    free_head: u32,
    mut each: impl FnMut(Item),
) {
    each(Item::Header(header));
    let mut records = 0;
    for ladder in ladders {
        for level in ladder.levels() {
            let mut at = level.head;
            for _ in 0..level.orders {
                let order = &pool[at as usize];
                debug_assert!(order.state == SlotState::Resting && order.price == level.price);
                each(Item::Record(Record {
                    id: order.id,
                    tag: order.tag,
                    price: order.price,
                    qty: order.qty,
                    side: ladder.side,
                }));
                records += 1;
                at = order.next;
            }
            debug_assert_eq!(at, NIL);
        }
    }
    assert_eq!(records, header.resting);
    let mut at = free_head;
    for _ in 0..header.free {
        each(Item::Free(at));
        at = pool[at as usize].next;
    }
    debug_assert_eq!(at, NIL);
}

impl<const ORDERS: usize, const LEVELS: usize> StateMachine for OrderBook<ORDERS, LEVELS> {
    fn apply(&mut self, _position: u64, command: &[u8], response: &mut [u8]) -> usize {
        if self.install.active {
            self.settle_install();
        }
        let cap = response.len().saturating_sub(REPLY_HEADER_BYTES) / FILL_BYTES;
        let reply = match Command::decode(command) {
            Ok(command) => self.execute(&command, cap),
            Err(_) => Reply::rejected(Reject::Malformed, 0),
        };
        if response.len() < REPLY_HEADER_BYTES {
            return 0;
        }
        reply.encode(response)
    }

    fn snapshot_begin(&mut self, _position: u64) -> Option<Snapshot> {
        if self.install.active {
            self.settle_install();
        }
        Some(self.freeze())
    }

    fn snapshot_read(&mut self, offset: u64, buf: &mut [u8]) {
        let total = self.frozen.stream_bytes();
        let mut done = 0;
        while done < buf.len() {
            let at = offset.saturating_add(done as u64);
            if at >= total {
                buf[done..].fill(0);
                break;
            }
            let (item, start, len) = self.frozen.item_at(at);
            let within = (at - start) as usize;
            let n = (len - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&item[within..within + n]);
            done += n;
        }
    }

    fn snapshot_end(&mut self) {
        self.frozen.open = false;
    }

    fn install_begin(&mut self, _position: u64, bytes: u64) -> bool {
        if bytes < SNAPSHOT_HEADER_BYTES as u64 || bytes > Self::STREAM_MAX {
            return false;
        }
        self.frozen.open = false;
        self.clear();
        self.install = Install {
            active: true,
            total: bytes,
            ..Install::IDLE
        };
        true
    }

    fn install_write(&mut self, offset: u64, bytes: &[u8]) {
        let install = &mut self.install;
        if !install.active || install.stopped {
            return;
        }
        let end = offset.checked_add(bytes.len() as u64);
        if offset != install.next || end.is_none_or(|end| end > install.total) {
            install.stopped = true;
            return;
        }
        install.next += bytes.len() as u64;
        let mut rest = bytes;
        while !rest.is_empty() {
            let need = self.install.need();
            if need == 0 {
                self.install.stopped = true;
                return;
            }
            let install = &mut self.install;
            let n = (need - install.fill).min(rest.len());
            install.buf[install.fill..install.fill + n].copy_from_slice(&rest[..n]);
            install.fill += n;
            rest = &rest[n..];
            if install.fill == need {
                install.fill = 0;
                let item = install.buf;
                if !self.install_item(&item[..need]) {
                    self.install.stopped = true;
                    return;
                }
            }
        }
    }

    fn install_end(&mut self) -> u64 {
        self.settle_install();
        self.digest()
    }

    fn install_abandon(&mut self) {
        self.settle_install();
    }
}

impl<const ORDERS: usize, const LEVELS: usize> OrderBook<ORDERS, LEVELS> {
    /// Installs one complete item; false when it does not decode or does not fit the book.
    fn install_item(&mut self, bytes: &[u8]) -> bool {
        let Some(header) = self.install.header else {
            let Some(h) = Header::decode(bytes) else {
                return false;
            };
            let valid = h.orders as usize == ORDERS
                && h.levels as usize == LEVELS
                && h.fresh as usize <= ORDERS
                && h.resting as u64 + h.free as u64 == h.fresh as u64
                && h.stream_bytes() == self.install.total
                && h.next_seq >= 1
                && h.next_seq <= Self::SEQ_END;
            if valid {
                self.fresh = h.fresh;
                self.next_seq = h.next_seq;
                self.install.header = Some(h);
            }
            return valid;
        };
        if self.install.records < header.resting {
            let Some(r) = Record::decode(bytes) else {
                return false;
            };
            let slot = (r.id % ORDERS as u64) as usize;
            let seq = r.id / ORDERS as u64;
            let opposite = self
                .ladder(r.side.opposite())
                .best()
                .map(|level| level.price);
            let crosses = opposite.is_some_and(|price| match r.side {
                Side::Buy => r.price >= price,
                Side::Sell => r.price <= price,
            });
            let ladder = self.ladder(r.side);
            if slot >= self.fresh as usize
                || self.pool[slot].state != SlotState::Vacant
                || seq == 0
                || seq >= self.next_seq
                || r.price == 0
                || r.qty == 0
                || crosses
                || (ladder.find(r.price).is_err() && ladder.is_full())
            {
                return false;
            }
            self.rest(slot, r.id, r.tag, r.side, r.price, r.qty);
            self.install.records += 1;
            return true;
        }
        let slot = u32_at(bytes, 0);
        if slot >= self.fresh || self.pool[slot as usize].state != SlotState::Vacant {
            return false;
        }
        self.append_free(slot);
        self.install.free += 1;
        true
    }

    /// Appends the vacant `slot` at the bottom of the free list (reused last); only while
    /// installing, when the list is built from the stream and its tail is known.
    fn append_free(&mut self, slot: u32) {
        assert!(slot < self.fresh && self.pool[slot as usize].state == SlotState::Vacant);
        self.pool[slot as usize] = super::Order {
            next: NIL,
            state: SlotState::Free,
            ..super::Order::VACANT
        };
        let tail = self.install.free_tail;
        if tail == NIL {
            debug_assert_eq!(self.free_head, NIL);
            self.free_head = slot;
        } else {
            self.pool[tail as usize].next = slot;
        }
        self.install.free_tail = slot;
        self.free_len += 1;
    }

    /// Ends an install, complete or not: slots below `fresh` that the stream did not account for
    /// go to the bottom of the free list, in slot order, so the book is sound whatever arrived.
    fn settle_install(&mut self) {
        if !self.install.active {
            return;
        }
        for slot in 0..self.fresh {
            if self.pool[slot as usize].state == SlotState::Vacant {
                self.append_free(slot);
            }
        }
        self.install = Install::IDLE;
        debug_assert_eq!(self.check(), Ok(()));
    }
}
