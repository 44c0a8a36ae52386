//! Matching, the pool and the level tables, and the read API.

use super::{
    Command, Fill, Ladder, Level, Order, OrderBook, Reject, Reply, Side, SlotState, TimeInForce,
    FILLS_MAX, NIL,
};

/// Whether an incoming order on `taker`'s side with limit `limit` trades with a resting order
/// at `resting`.
const fn crosses(taker: Side, limit: u32, resting: u32) -> bool {
    match taker {
        Side::Buy => resting <= limit,
        Side::Sell => resting >= limit,
    }
}

impl<const LEVELS: usize> Ladder<LEVELS> {
    pub(super) const fn new(side: Side) -> Ladder<LEVELS> {
        Ladder {
            side,
            len: 0,
            levels: [Level::EMPTY; LEVELS],
        }
    }

    /// Whether `a` is a worse price than `b` on this side.
    fn worse(&self, a: u32, b: u32) -> bool {
        match self.side {
            Side::Buy => a < b,
            Side::Sell => a > b,
        }
    }

    /// The index of the level at `price`, or where it would be inserted.
    pub(super) fn find(&self, price: u32) -> Result<usize, usize> {
        let levels = &self.levels[..self.len];
        let at = levels.partition_point(|level| self.worse(level.price, price));
        match levels.get(at) {
            Some(level) if level.price == price => Ok(at),
            _ => Err(at),
        }
    }

    pub(super) fn best(&self) -> Option<&Level> {
        self.levels[..self.len].last()
    }

    pub(super) fn is_full(&self) -> bool {
        self.len == LEVELS
    }

    /// Inserts an empty level at `price` at `at`, which `find` returned.
    fn insert(&mut self, at: usize, price: u32) {
        assert!(self.len < LEVELS && at <= self.len);
        debug_assert!(at == 0 || self.worse(self.levels[at - 1].price, price));
        debug_assert!(at == self.len || self.worse(price, self.levels[at].price));
        self.levels.copy_within(at..self.len, at + 1);
        self.levels[at] = Level {
            price,
            ..Level::EMPTY
        };
        self.len += 1;
    }

    /// Removes the empty level at `at`.
    fn remove(&mut self, at: usize) {
        assert!(at < self.len);
        assert!(self.levels[at].orders == 0 && self.levels[at].qty == 0);
        self.levels.copy_within(at + 1..self.len, at);
        self.len -= 1;
    }

    pub(super) fn levels(&self) -> &[Level] {
        &self.levels[..self.len]
    }
}

impl<const ORDERS: usize, const LEVELS: usize> Default for OrderBook<ORDERS, LEVELS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const ORDERS: usize, const LEVELS: usize> OrderBook<ORDERS, LEVELS> {
    /// Slot indices and counts are `u32`, NIL included.
    const CAPACITY_OK: () = assert!(
        ORDERS > 0 && ORDERS < u32::MAX as usize && LEVELS > 0 && LEVELS < u32::MAX as usize
    );
    /// `seq` stays below this, so `seq * ORDERS + slot` fits in a `u64`.
    pub(super) const SEQ_END: u64 = u64::MAX / ORDERS as u64;

    /// An empty book. `const`, so that a large one can be a `static` rather than cross the
    /// stack.
    pub const fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::CAPACITY_OK;
        OrderBook {
            pool: [Order::VACANT; ORDERS],
            free_head: NIL,
            free_len: 0,
            fresh: 0,
            next_seq: 1,
            resting: 0,
            bids: Ladder::new(Side::Buy),
            asks: Ladder::new(Side::Sell),
            frozen: super::snapshot::Frozen::new(),
            install: super::snapshot::Install::IDLE,
        }
    }

    /// Empties the book in place (O(`ORDERS`)).
    pub(super) fn clear(&mut self) {
        self.pool.fill(Order::VACANT);
        self.free_head = NIL;
        self.free_len = 0;
        self.fresh = 0;
        self.next_seq = 1;
        self.resting = 0;
        self.bids.len = 0;
        self.asks.len = 0;
    }

    pub(super) fn ladder(&self, side: Side) -> &Ladder<LEVELS> {
        match side {
            Side::Buy => &self.bids,
            Side::Sell => &self.asks,
        }
    }

    fn ladder_mut(&mut self, side: Side) -> &mut Ladder<LEVELS> {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }

    fn pool_full(&self) -> bool {
        self.free_head == NIL && self.fresh as usize == ORDERS
    }

    /// The slot of the resting order `id`, if there is one.
    fn lookup(&self, id: u64) -> Option<usize> {
        let slot = (id % ORDERS as u64) as usize;
        let order = &self.pool[slot];
        (slot < self.fresh as usize && order.state == SlotState::Resting && order.id == id)
            .then_some(slot)
    }

    /// A slot for a resting order: the free list's top, else the next never-used slot.
    fn allocate(&mut self) -> Option<usize> {
        if self.free_head != NIL {
            let slot = self.free_head as usize;
            assert_eq!(self.pool[slot].state, SlotState::Free);
            self.free_head = self.pool[slot].next;
            self.free_len -= 1;
            self.pool[slot].state = SlotState::Vacant;
            Some(slot)
        } else if (self.fresh as usize) < ORDERS {
            self.fresh += 1;
            Some(self.fresh as usize - 1)
        } else {
            None
        }
    }

    /// Puts an unlinked slot on top of the free list.
    pub(super) fn release(&mut self, slot: usize) {
        assert!(slot < self.fresh as usize);
        assert_ne!(self.pool[slot].state, SlotState::Free);
        self.pool[slot] = Order {
            next: self.free_head,
            state: SlotState::Free,
            ..Order::VACANT
        };
        self.free_head = slot as u32;
        self.free_len += 1;
    }

    /// Links the order in `slot` at the back of its level at `price`, creating the level if
    /// needed (the caller made sure there is room).
    pub(super) fn rest(
        &mut self,
        slot: usize,
        id: u64,
        tag: u64,
        side: Side,
        price: u32,
        qty: u32,
    ) {
        assert!(qty > 0 && price > 0);
        assert_eq!(id % ORDERS as u64, slot as u64);
        let at = match self.ladder(side).find(price) {
            Ok(at) => at,
            Err(at) => {
                self.ladder_mut(side).insert(at, price);
                at
            }
        };
        let level = self.ladder(side).levels[at];
        self.pool[slot] = Order {
            id,
            tag,
            price,
            qty,
            prev: level.tail,
            next: NIL,
            side,
            state: SlotState::Resting,
        };
        if level.tail == NIL {
            debug_assert_eq!(level.orders, 0);
        } else {
            self.pool[level.tail as usize].next = slot as u32;
        }
        let level = &mut self.ladder_mut(side).levels[at];
        if level.head == NIL {
            level.head = slot as u32;
        }
        level.tail = slot as u32;
        level.orders += 1;
        level.qty += qty as u64;
        self.resting += 1;
    }

    /// Unlinks the resting order in `slot` from its level, at index `at` of its side, removing
    /// the level if it empties. The slot keeps its contents; the caller releases or relinks it.
    fn unlink(&mut self, slot: usize, at: usize) {
        let order = self.pool[slot];
        assert_eq!(order.state, SlotState::Resting);
        let ladder = self.ladder_mut(order.side);
        let level = &mut ladder.levels[at];
        assert_eq!(level.price, order.price);
        if order.prev == NIL {
            level.head = order.next;
        }
        if order.next == NIL {
            level.tail = order.prev;
        }
        level.orders -= 1;
        level.qty -= order.qty as u64;
        if level.orders == 0 {
            ladder.remove(at);
        }
        if order.prev != NIL {
            self.pool[order.prev as usize].next = order.next;
        }
        if order.next != NIL {
            self.pool[order.next as usize].prev = order.prev;
        }
        self.pool[slot].state = SlotState::Vacant;
        self.resting -= 1;
    }

    /// The level index of the resting order in `slot`.
    fn level_of(&self, slot: usize) -> usize {
        let order = &self.pool[slot];
        let found = self.ladder(order.side).find(order.price);
        assert!(found.is_ok(), "a resting order's level exists");
        found.unwrap_or(0)
    }

    /// Lots resting on the opposite side that an order on `taker`'s side at `limit` would
    /// reach, counted level by level until they cover `qty`.
    fn crossable(&self, taker: Side, limit: u32, qty: u32) -> u64 {
        let mut sum = 0u64;
        for level in self.ladder(taker.opposite()).levels().iter().rev() {
            if sum >= qty as u64 || !crosses(taker, limit, level.price) {
                break;
            }
            sum += level.qty;
        }
        sum
    }

    /// Whether a good-till-cancelled order on `side` at `price` for `qty` lots would find room
    /// for its remainder; `own` is a resting order of the same side that leaves first (a
    /// replace), whose level and slot then free.
    fn room(&self, side: Side, price: u32, qty: u32, own: Option<usize>) -> Result<(), Reject> {
        let crossable = self.crossable(side, price, qty);
        if crossable >= qty as u64 {
            return Ok(());
        }
        // A remainder rests. Matching empties every crossable order, freeing a slot if there
        // is one; a replaced order keeps its own slot.
        if own.is_none() && crossable == 0 && self.pool_full() {
            return Err(Reject::BookFull);
        }
        let ladder = self.ladder(side);
        let level_frees = own.is_some_and(|slot| {
            let order = &self.pool[slot];
            order.price != price && ladder.levels[self.level_of(slot)].orders == 1
        });
        if ladder.find(price).is_err() && ladder.is_full() && !level_frees {
            return Err(Reject::LevelsFull);
        }
        Ok(())
    }

    /// Trades an incoming order on `taker`'s side (limit `limit`, none for a market order) with
    /// the opposite side; returns the lots filled.
    fn take(
        &mut self,
        taker: Side,
        limit: Option<u32>,
        qty: u32,
        reply: &mut Reply,
        cap: usize,
    ) -> u32 {
        let mut left = qty;
        let mut stopped = false;
        // Every fill but the last empties a resting order, so ORDERS + 1 rounds always reach
        // a stop.
        for _ in 0..=ORDERS {
            let ladder = self.ladder(taker.opposite());
            let best = match ladder.best() {
                Some(best) if left > 0 => *best,
                _ => {
                    stopped = true;
                    break;
                }
            };
            if limit.is_some_and(|limit| !crosses(taker, limit, best.price)) {
                stopped = true;
                break;
            }
            let at = ladder.len - 1;
            let slot = best.head as usize;
            let maker = self.pool[slot];
            debug_assert!(maker.state == SlotState::Resting && maker.price == best.price);
            let traded = left.min(maker.qty);
            reply.record(
                Fill {
                    maker: maker.id,
                    price: maker.price,
                    qty: traded,
                },
                cap,
            );
            left -= traded;
            if traded == maker.qty {
                self.unlink(slot, at);
                self.release(slot);
            } else {
                self.pool[slot].qty -= traded;
                self.ladder_mut(taker.opposite()).levels[at].qty -= traded as u64;
            }
        }
        assert!(stopped, "matching ends within ORDERS fills");
        qty - left
    }

    /// Applies one command; lists at most `cap` fills (and at most [`FILLS_MAX`]) in the reply.
    /// What [`mu_nostd::StateMachine::apply`] does after decoding, for a caller that holds
    /// commands decoded (an unreplicated benchmark).
    pub fn execute(&mut self, command: &Command, cap: usize) -> Reply {
        let cap = cap.min(FILLS_MAX);
        let reply = match *command {
            Command::Limit {
                side,
                price,
                qty,
                tif,
                client_tag,
            } => self.limit(side, Some(price), qty, tif, client_tag, cap),
            Command::Market {
                side,
                qty,
                client_tag,
            } => self.limit(side, None, qty, TimeInForce::Ioc, client_tag, cap),
            Command::Cancel { order } => self.cancel(order),
            Command::Replace { order, price, qty } => self.replace(order, price, qty, cap),
        };
        let reply = reply.unwrap_or_else(|(reject, order)| Reply::rejected(reject, order));
        debug_assert!(reply.fills_total <= ORDERS as u32 && reply.listed as usize <= cap);
        debug_assert!(self.uncrossed());
        reply
    }

    fn uncrossed(&self) -> bool {
        match (self.bids.best(), self.asks.best()) {
            (Some(bid), Some(ask)) => bid.price < ask.price,
            _ => true,
        }
    }

    /// A limit order (`limit` some) or a market order (`limit` none, `tif` Ioc).
    fn limit(
        &mut self,
        side: Side,
        limit: Option<u32>,
        qty: u32,
        tif: TimeInForce,
        tag: u64,
        cap: usize,
    ) -> Result<Reply, (Reject, u64)> {
        if limit == Some(0) {
            return Err((Reject::BadPrice, 0));
        }
        if qty == 0 {
            return Err((Reject::BadQuantity, 0));
        }
        if self.next_seq >= Self::SEQ_END {
            return Err((Reject::IdsExhausted, 0));
        }
        if let (Some(price), TimeInForce::Gtc) = (limit, tif) {
            self.room(side, price, qty, None)
                .map_err(|reject| (reject, 0))?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut reply = Reply::accepted(seq * ORDERS as u64);
        reply.filled = self.take(side, limit, qty, &mut reply, cap);
        let left = qty - reply.filled;
        match (left, limit, tif) {
            (0, _, _) => {}
            (_, Some(price), TimeInForce::Gtc) => {
                let slot = self.allocate();
                assert!(slot.is_some(), "room was checked");
                let slot = slot.unwrap_or(0);
                reply.order = seq * ORDERS as u64 + slot as u64;
                self.rest(slot, reply.order, tag, side, price, left);
                reply.resting = left;
            }
            _ => reply.cancelled = left,
        }
        Ok(reply)
    }

    fn cancel(&mut self, id: u64) -> Result<Reply, (Reject, u64)> {
        let slot = self.lookup(id).ok_or((Reject::NoSuchOrder, id))?;
        let mut reply = Reply::accepted(id);
        reply.cancelled = self.pool[slot].qty;
        self.unlink(slot, self.level_of(slot));
        self.release(slot);
        Ok(reply)
    }

    fn replace(
        &mut self,
        id: u64,
        price: u32,
        qty: u32,
        cap: usize,
    ) -> Result<Reply, (Reject, u64)> {
        let slot = self.lookup(id).ok_or((Reject::NoSuchOrder, id))?;
        if price == 0 {
            return Err((Reject::BadPrice, id));
        }
        if qty == 0 {
            return Err((Reject::BadQuantity, id));
        }
        let order = self.pool[slot];
        let at = self.level_of(slot);
        let mut reply = Reply::accepted(id);
        reply.cancelled = order.qty.saturating_sub(qty);
        if price == order.price && qty <= order.qty {
            // In place: time priority kept.
            self.pool[slot].qty = qty;
            self.ladder_mut(order.side).levels[at].qty -= (order.qty - qty) as u64;
            reply.resting = qty;
            return Ok(reply);
        }
        self.room(order.side, price, qty, Some(slot))
            .map_err(|reject| (reject, id))?;
        self.unlink(slot, at);
        reply.filled = self.take(order.side, Some(price), qty, &mut reply, cap);
        let left = qty - reply.filled;
        if left == 0 {
            self.release(slot);
        } else {
            self.rest(slot, id, order.tag, order.side, price, left);
            reply.resting = left;
        }
        Ok(reply)
    }

    // ---- reading ---------------------------------------------------------------------------

    /// The best bid: the highest price anyone buys at.
    pub fn best_bid(&self) -> Option<LevelView> {
        self.bids.best().map(LevelView::of)
    }

    /// The best ask: the lowest price anyone sells at.
    pub fn best_ask(&self) -> Option<LevelView> {
        self.asks.best().map(LevelView::of)
    }

    /// `side`'s levels, best first.
    pub fn depth(&self, side: Side) -> Depth<'_> {
        Depth {
            levels: self.ladder(side).levels().iter().rev(),
        }
    }

    /// Price levels on `side`.
    pub fn levels(&self, side: Side) -> usize {
        self.ladder(side).len
    }

    /// Resting orders, both sides.
    pub fn resting(&self) -> usize {
        self.resting as usize
    }

    /// The resting order `id`, if there is one.
    pub fn order(&self, id: u64) -> Option<OrderView> {
        self.lookup(id).map(|slot| OrderView::of(&self.pool[slot]))
    }

    /// The orders resting on `side` at `price`, in time priority (empty if no level is there).
    pub fn queue(&self, side: Side, price: u32) -> Queue<'_, ORDERS> {
        let ladder = self.ladder(side);
        let (at, left) = match ladder.find(price) {
            Ok(at) => (ladder.levels[at].head, ladder.levels[at].orders),
            Err(_) => (NIL, 0),
        };
        Queue {
            pool: &self.pool,
            at,
            left,
        }
    }

    /// Checks every invariant of the module doc from scratch (O(`ORDERS` + `LEVELS`)), for tests
    /// and demos; `Err` names the first one broken.
    pub fn check(&self) -> Result<(), &'static str> {
        let fresh = self.fresh as usize;
        if fresh > ORDERS || self.next_seq == 0 || self.next_seq > Self::SEQ_END {
            return Err("fresh or next_seq out of range");
        }
        if self.install.active() {
            return Err("an install is in progress");
        }
        let mut resting = 0u32;
        for side in [Side::Buy, Side::Sell] {
            let ladder = self.ladder(side);
            if ladder.side != side || ladder.len > LEVELS {
                return Err("ladder side or length");
            }
            let levels = ladder.levels();
            if levels
                .windows(2)
                .any(|w| !ladder.worse(w[0].price, w[1].price))
            {
                return Err("levels not sorted strictly, best last");
            }
            for level in levels {
                if level.orders == 0 || level.price == 0 {
                    return Err("empty level");
                }
                let (mut at, mut prev, mut qty) = (level.head, NIL, 0u64);
                for _ in 0..level.orders {
                    let Some(order) = self.pool.get(at as usize).filter(|_| at < self.fresh) else {
                        return Err("level list leaves the used slots");
                    };
                    if order.state != SlotState::Resting
                        || order.side != side
                        || order.price != level.price
                        || order.prev != prev
                        || order.qty == 0
                    {
                        return Err("order in a level list does not belong there");
                    }
                    let seq = order.id / ORDERS as u64;
                    if order.id % ORDERS as u64 != at as u64 || seq == 0 || seq >= self.next_seq {
                        return Err("order id does not carry its slot and a past seq");
                    }
                    qty += order.qty as u64;
                    prev = at;
                    at = order.next;
                }
                if at != NIL || prev != level.tail || qty != level.qty {
                    return Err("level tail, count or quantity");
                }
                resting += level.orders;
            }
        }
        if let (Some(bid), Some(ask)) = (self.bids.best(), self.asks.best()) {
            if bid.price >= ask.price {
                return Err("book crossed");
            }
        }
        let mut at = self.free_head;
        for _ in 0..self.free_len {
            match self.pool.get(at as usize) {
                Some(order) if at < self.fresh && order.state == SlotState::Free => at = order.next,
                _ => return Err("free list"),
            }
        }
        if at != NIL {
            return Err("free list longer than its count");
        }
        let count = |state| {
            self.pool[..fresh]
                .iter()
                .filter(|o| o.state == state)
                .count()
        };
        if count(SlotState::Resting) != resting as usize
            || resting != self.resting
            || count(SlotState::Free) != self.free_len as usize
            || count(SlotState::Vacant) != 0
            || self.pool[fresh..]
                .iter()
                .any(|o| o.state != SlotState::Vacant)
        {
            return Err("slot states do not match the lists");
        }
        Ok(())
    }
}

/// A price level as the read API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelView {
    /// Its price, in ticks.
    pub price: u32,
    /// Lots resting there.
    pub qty: u64,
    /// Orders resting there.
    pub orders: u32,
}

impl LevelView {
    fn of(level: &Level) -> LevelView {
        LevelView {
            price: level.price,
            qty: level.qty,
            orders: level.orders,
        }
    }
}

/// A resting order as the read API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderView {
    /// Its id.
    pub id: u64,
    /// The client tag it was placed with.
    pub client_tag: u64,
    /// Its side.
    pub side: Side,
    /// Its price, in ticks.
    pub price: u32,
    /// Its open quantity, in lots.
    pub qty: u32,
}

impl OrderView {
    fn of(order: &Order) -> OrderView {
        OrderView {
            id: order.id,
            client_tag: order.tag,
            side: order.side,
            price: order.price,
            qty: order.qty,
        }
    }
}

/// One side's levels, best first ([`OrderBook::depth`]).
pub struct Depth<'a> {
    levels: core::iter::Rev<core::slice::Iter<'a, Level>>,
}

impl Iterator for Depth<'_> {
    type Item = LevelView;

    fn next(&mut self) -> Option<LevelView> {
        self.levels.next().map(LevelView::of)
    }
}

/// One level's orders in time priority ([`OrderBook::queue`]).
pub struct Queue<'a, const ORDERS: usize> {
    pool: &'a [Order; ORDERS],
    at: u32,
    left: u32,
}

impl<const ORDERS: usize> Iterator for Queue<'_, ORDERS> {
    type Item = OrderView;

    fn next(&mut self) -> Option<OrderView> {
        if self.left == 0 {
            return None;
        }
        let order = self.pool.get(self.at as usize)?;
        self.left -= 1;
        self.at = order.next;
        Some(OrderView::of(order))
    }
}
