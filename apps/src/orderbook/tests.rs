//! Tests: a reference model built on std collections, driven by the order-flow generator and by
//! a PRNG, compared with the book after every command; directed cases; snapshots; fuzzing.

extern crate std;

use std::boxed::Box;
use std::collections::{BTreeMap, HashMap};
use std::vec::Vec;

use mu_nostd::StateMachine;

use super::orderflow::{Config, Generator, Mix};
use super::*;

// ---- the reference model ------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MOrder {
    id: u64,
    tag: u64,
    qty: u32,
}

/// The book as the module doc specifies it, written the plain way: a sorted map of FIFO queues
/// per side, a stack of free slots. Acceptance is decided by trying the command on a copy.
#[derive(Clone, Debug)]
struct Model {
    orders: usize,
    levels: usize,
    bids: BTreeMap<u32, Vec<MOrder>>,
    asks: BTreeMap<u32, Vec<MOrder>>,
    /// Last is reused first.
    free: Vec<u32>,
    fresh: u32,
    next_seq: u64,
    /// Where each resting id is.
    at: HashMap<u64, (Side, u32)>,
}

impl Model {
    fn new(orders: usize, levels: usize) -> Model {
        Model {
            orders,
            levels,
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            free: Vec::new(),
            fresh: 0,
            next_seq: 1,
            at: HashMap::new(),
        }
    }

    fn side(&mut self, side: Side) -> &mut BTreeMap<u32, Vec<MOrder>> {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }

    fn slot(&self, id: u64) -> u32 {
        (id % self.orders as u64) as u32
    }

    /// The best price on `side`.
    fn best(&mut self, side: Side) -> Option<u32> {
        match side {
            Side::Buy => self.bids.keys().next_back().copied(),
            Side::Sell => self.asks.keys().next().copied(),
        }
    }

    /// Trades an incoming order; returns the lots left.
    fn trade(
        &mut self,
        taker: Side,
        limit: Option<u32>,
        mut qty: u32,
        fills: &mut Vec<Fill>,
    ) -> u32 {
        while qty > 0 {
            let Some(price) = self.best(taker.opposite()) else {
                break;
            };
            let crosses = match (taker, limit) {
                (_, None) => true,
                (Side::Buy, Some(limit)) => price <= limit,
                (Side::Sell, Some(limit)) => price >= limit,
            };
            if !crosses {
                break;
            }
            let queue = self.side(taker.opposite()).get_mut(&price).unwrap();
            let maker = &mut queue[0];
            let traded = qty.min(maker.qty);
            fills.push(Fill {
                maker: maker.id,
                price,
                qty: traded,
            });
            qty -= traded;
            maker.qty -= traded;
            if maker.qty == 0 {
                let id = queue.remove(0).id;
                if queue.is_empty() {
                    self.side(taker.opposite()).remove(&price);
                }
                self.at.remove(&id);
                let slot = self.slot(id);
                self.free.push(slot);
            }
        }
        qty
    }

    fn push(&mut self, side: Side, price: u32, order: MOrder) {
        self.side(side).entry(price).or_default().push(order);
        self.at.insert(order.id, (side, price));
    }

    /// Takes a resting order off its level (its slot stays taken).
    fn unlink(&mut self, id: u64) -> (Side, u32, MOrder) {
        let (side, price) = self.at.remove(&id).unwrap();
        let queue = self.side(side).get_mut(&price).unwrap();
        let index = queue.iter().position(|o| o.id == id).unwrap();
        let order = queue.remove(index);
        if queue.is_empty() {
            self.side(side).remove(&price);
        }
        (side, price, order)
    }

    /// Why the remainder could not rest on `side` at `price`, after the trade.
    fn no_room(&mut self, side: Side, price: u32, needs_slot: bool) -> Option<Reject> {
        let levels = self.levels;
        if needs_slot && self.free.is_empty() && self.fresh as usize == self.orders {
            return Some(Reject::BookFull);
        }
        let own = self.side(side);
        if !own.contains_key(&price) && own.len() == levels {
            return Some(Reject::LevelsFull);
        }
        None
    }

    fn reply(order: u64, fills: &[Fill], cap: usize) -> Reply {
        let mut reply = Reply::accepted(order);
        for &fill in fills {
            reply.record(fill, cap.min(FILLS_MAX));
        }
        reply.filled = fills.iter().map(|f| f.qty).sum();
        reply
    }

    fn execute(&mut self, command: &Command, cap: usize) -> Reply {
        match self.try_execute(command, cap) {
            Ok(reply) => reply,
            Err((reject, order)) => Reply::rejected(reject, order),
        }
    }

    fn try_execute(&mut self, command: &Command, cap: usize) -> Result<Reply, (Reject, u64)> {
        let seq_end = u64::MAX / self.orders as u64;
        match *command {
            Command::Limit { price: 0, .. } => Err((Reject::BadPrice, 0)),
            Command::Limit { qty: 0, .. } | Command::Market { qty: 0, .. } => {
                Err((Reject::BadQuantity, 0))
            }
            Command::Limit { .. } | Command::Market { .. } if self.next_seq >= seq_end => {
                Err((Reject::IdsExhausted, 0))
            }
            Command::Limit {
                side,
                price,
                qty,
                tif,
                client_tag,
            } => {
                let mut trial = self.clone();
                let seq = trial.next_seq;
                trial.next_seq += 1;
                let mut fills = Vec::new();
                let left = trial.trade(side, Some(price), qty, &mut fills);
                let mut reply = Model::reply(seq * self.orders as u64, &fills, cap);
                if left > 0 && tif == TimeInForce::Gtc {
                    if let Some(reject) = trial.no_room(side, price, true) {
                        return Err((reject, 0));
                    }
                    let slot = trial.free.pop().unwrap_or_else(|| {
                        trial.fresh += 1;
                        trial.fresh - 1
                    });
                    reply.order = seq * self.orders as u64 + slot as u64;
                    reply.resting = left;
                    let order = MOrder {
                        id: reply.order,
                        tag: client_tag,
                        qty: left,
                    };
                    trial.push(side, price, order);
                } else {
                    reply.cancelled = left;
                }
                *self = trial;
                Ok(reply)
            }
            Command::Market { side, qty, .. } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let mut fills = Vec::new();
                let left = self.trade(side, None, qty, &mut fills);
                let mut reply = Model::reply(seq * self.orders as u64, &fills, cap);
                reply.cancelled = left;
                Ok(reply)
            }
            Command::Cancel { order } => {
                if !self.at.contains_key(&order) {
                    return Err((Reject::NoSuchOrder, order));
                }
                let (_, _, removed) = self.unlink(order);
                let slot = self.slot(order);
                self.free.push(slot);
                let mut reply = Reply::accepted(order);
                reply.cancelled = removed.qty;
                Ok(reply)
            }
            Command::Replace { order, price, qty } => {
                let Some(&(side, old_price)) = self.at.get(&order) else {
                    return Err((Reject::NoSuchOrder, order));
                };
                if price == 0 {
                    return Err((Reject::BadPrice, order));
                }
                if qty == 0 {
                    return Err((Reject::BadQuantity, order));
                }
                let queue = self.side(side).get_mut(&old_price).unwrap();
                let current = queue.iter_mut().find(|o| o.id == order).unwrap();
                let old_qty = current.qty;
                if price == old_price && qty <= old_qty {
                    current.qty = qty;
                    let mut reply = Reply::accepted(order);
                    reply.resting = qty;
                    reply.cancelled = old_qty - qty;
                    return Ok(reply);
                }
                let mut trial = self.clone();
                let (_, _, moved) = trial.unlink(order);
                let mut fills = Vec::new();
                let left = trial.trade(side, Some(price), qty, &mut fills);
                let mut reply = Model::reply(order, &fills, cap);
                reply.cancelled = old_qty.saturating_sub(qty);
                if left > 0 {
                    if let Some(reject) = trial.no_room(side, price, false) {
                        return Err((reject, order));
                    }
                    trial.push(side, price, MOrder { qty: left, ..moved });
                    reply.resting = left;
                } else {
                    let slot = trial.slot(order);
                    trial.free.push(slot);
                }
                *self = trial;
                Ok(reply)
            }
        }
    }

    fn ids(&self) -> Vec<u64> {
        self.at.keys().copied().collect()
    }
}

// ---- comparing -------------------------------------------------------------------------------

/// The book's free list, top first.
fn free_list<const O: usize, const L: usize>(book: &OrderBook<O, L>) -> Vec<u32> {
    let mut list = Vec::new();
    let mut at = book.free_head;
    for _ in 0..book.free_len {
        list.push(at);
        at = book.pool[at as usize].next;
    }
    list
}

/// The book, level by level, best first: (price, [(id, tag, qty)]).
type Levels = Vec<(u32, Vec<(u64, u64, u32)>)>;

fn levels_of<const O: usize, const L: usize>(book: &OrderBook<O, L>, side: Side) -> Levels {
    book.depth(side)
        .map(|level| {
            let queue: Vec<_> = book
                .queue(side, level.price)
                .map(|o| {
                    assert_eq!((o.side, o.price), (side, level.price));
                    assert_eq!(book.order(o.id), Some(o));
                    (o.id, o.client_tag, o.qty)
                })
                .collect();
            assert_eq!(queue.len(), level.orders as usize);
            assert_eq!(queue.iter().map(|o| o.2 as u64).sum::<u64>(), level.qty);
            (level.price, queue)
        })
        .collect()
}

fn model_levels(model: &Model, side: Side) -> Levels {
    let map = match side {
        Side::Buy => &model.bids,
        Side::Sell => &model.asks,
    };
    let mut levels: Levels = map
        .iter()
        .map(|(&price, queue)| (price, queue.iter().map(|o| (o.id, o.tag, o.qty)).collect()))
        .collect();
    if side == Side::Buy {
        levels.reverse();
    }
    levels
}

fn assert_matches<const O: usize, const L: usize>(book: &OrderBook<O, L>, model: &Model) {
    assert_eq!(book.check(), Ok(()));
    for side in [Side::Buy, Side::Sell] {
        assert_eq!(levels_of(book, side), model_levels(model, side), "{side:?}");
    }
    let mut free = model.free.clone();
    free.reverse();
    assert_eq!(free_list(book), free);
    assert_eq!((book.fresh, book.next_seq), (model.fresh, model.next_seq));
    assert_eq!(book.resting(), model.at.len());
    assert_eq!(
        book.best_bid().map(|l| l.price),
        model.bids.keys().next_back().copied()
    );
    assert_eq!(
        book.best_ask().map(|l| l.price),
        model.asks.keys().next().copied()
    );
}

/// Two books hold the same state, the digest included.
fn assert_same<const O: usize, const L: usize>(a: &OrderBook<O, L>, b: &OrderBook<O, L>) {
    assert_eq!(a.check(), Ok(()));
    assert_eq!(b.check(), Ok(()));
    for side in [Side::Buy, Side::Sell] {
        assert_eq!(levels_of(a, side), levels_of(b, side));
    }
    assert_eq!(free_list(a), free_list(b));
    assert_eq!((a.fresh, a.next_seq), (b.fresh, b.next_seq));
    assert_eq!(a.digest(), b.digest());
}

/// Applies `command` through the byte interface with a response buffer of `room` bytes.
fn apply<const O: usize, const L: usize>(
    book: &mut OrderBook<O, L>,
    command: &Command,
    room: usize,
) -> Reply {
    let mut bytes = [0u8; COMMAND_MAX_BYTES];
    let len = command.encode(&mut bytes);
    assert_eq!(Command::decode(&bytes[..len]), Ok(*command));
    let mut response = [0u8; REPLY_MAX_BYTES + 8];
    let written = book.apply(0, &bytes[..len], &mut response[..room]);
    Reply::decode(&response[..written]).unwrap()
}

fn cap_of(room: usize) -> usize {
    (room.saturating_sub(REPLY_HEADER_BYTES) / FILL_BYTES).min(FILLS_MAX)
}

// ---- a PRNG and random commands --------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A command drawn to hit edges: prices in a narrow band (crossing, full level tables), small
/// quantities (partial fills), ids that rest, rested once, or never did, zeros.
fn random_command(rng: &mut Rng, model: &Model, gone: &[u64]) -> Command {
    let ids = {
        let mut ids = model.ids();
        ids.sort_unstable();
        ids
    };
    let pick_id = |rng: &mut Rng| match rng.below(10) {
        0..=6 if !ids.is_empty() => ids[rng.below(ids.len() as u64) as usize],
        0..=7 if !gone.is_empty() => gone[rng.below(gone.len() as u64) as usize],
        _ => rng.next() % 5000,
    };
    let price = |rng: &mut Rng| match rng.below(50) {
        0 => 0,
        1 => u32::MAX,
        _ => 100 + rng.below(16) as u32,
    };
    let qty = |rng: &mut Rng| match rng.below(40) {
        0 => 0,
        1 => u32::MAX,
        _ => 1 + rng.below(12) as u32,
    };
    let side = |rng: &mut Rng| {
        if rng.below(2) == 0 {
            Side::Buy
        } else {
            Side::Sell
        }
    };
    match rng.below(10) {
        0..=4 => Command::Limit {
            side: side(rng),
            price: price(rng),
            qty: qty(rng),
            tif: if rng.below(6) == 0 {
                TimeInForce::Ioc
            } else {
                TimeInForce::Gtc
            },
            client_tag: rng.next(),
        },
        5 => Command::Market {
            side: side(rng),
            qty: qty(rng),
            client_tag: rng.next(),
        },
        6 | 7 => Command::Cancel {
            order: pick_id(rng),
        },
        _ => Command::Replace {
            order: pick_id(rng),
            price: price(rng),
            qty: qty(rng),
        },
    }
}

/// Runs `steps` commands (random, or from the generator) through book and model, comparing
/// replies and books after each; returns how often each reject code came back.
fn drive<const O: usize, const L: usize>(seed: u64, steps: usize, generated: bool) -> [u32; 8] {
    let mut book = Box::new(OrderBook::<O, L>::new());
    let mut model = Model::new(O, L);
    let mut rng = Rng(seed | 1);
    let mut generator = Generator::with_config(
        seed,
        Config {
            mid: 1000,
            band: 10,
            depth: 8,
            ..Config::default()
        },
    );
    let mut gone = Vec::new();
    let mut rejects = [0u32; 8];
    for step in 0..steps {
        let command = if generated {
            generator.next_command()
        } else {
            random_command(&mut rng, &model, &gone)
        };
        let room = [REPLY_MAX_BYTES, REPLY_HEADER_BYTES + 2 * FILL_BYTES + 5][step % 2];
        let before = book.digest();
        let expected = model.execute(&command, cap_of(room));
        let reply = apply(&mut book, &command, room);
        assert_eq!(reply, expected, "step {step}: {command:?}");
        generator.observe(&command, &reply);
        match reply.status {
            Status::Rejected(reject) => {
                rejects[reject as usize] += 1;
                assert_eq!(book.digest(), before, "a rejection changed the book");
            }
            Status::Accepted => rejects[0] += 1,
        }
        if let Command::Cancel { order } = command {
            gone.push(order);
        }
        gone.extend(reply.fills().iter().map(|f| f.maker));
        assert_matches(&book, &model);
    }
    rejects
}

// ---- model-driven properties -----------------------------------------------------------------

#[test]
fn matches_the_model_on_random_commands() {
    // Small tables: full pools and full level tables come up all the time.
    let mut seen = [0u32; 8];
    for seed in 1..=6 {
        let rejects = if seed % 2 == 0 {
            drive::<24, 5>(seed, 3000, false)
        } else {
            drive::<10, 6>(seed, 3000, false)
        };
        seen.iter_mut().zip(rejects).for_each(|(s, r)| *s += r);
    }
    {
        let rejects = seen;
        for code in [
            0,
            Reject::BookFull as usize,
            Reject::LevelsFull as usize,
            Reject::NoSuchOrder as usize,
            Reject::BadPrice as usize,
            Reject::BadQuantity as usize,
        ] {
            assert!(rejects[code] > 0, "code {code} never seen: {rejects:?}");
        }
    }
    drive::<200, 40>(7, 5000, false);
}

#[test]
fn matches_the_model_on_generated_flow() {
    for seed in 1..=3 {
        let rejects = drive::<256, 32>(seed, 6000, true);
        assert!(rejects[0] > 5000, "{rejects:?}");
    }
    // A pool the flow overflows.
    let rejects = drive::<16, 4>(9, 3000, true);
    assert!(rejects[Reject::BookFull as usize] + rejects[Reject::LevelsFull as usize] > 0);
}

// ---- directed cases ----------------------------------------------------------------------------

type Small = OrderBook<16, 4>;

fn gtc(side: Side, price: u32, qty: u32) -> Command {
    Command::Limit {
        side,
        price,
        qty,
        tif: TimeInForce::Gtc,
        client_tag: price as u64 * 1000 + qty as u64,
    }
}

fn run(book: &mut Small, command: Command) -> Reply {
    apply(book, &command, REPLY_MAX_BYTES)
}

#[test]
fn crossing_partial_fills_and_sweeps() {
    let mut book = Small::new();
    let a = run(&mut book, gtc(Side::Sell, 101, 5)).order;
    let b = run(&mut book, gtc(Side::Sell, 101, 5)).order;
    let c = run(&mut book, gtc(Side::Sell, 103, 7)).order;
    assert!(a < b && b < c, "ids grow with time");
    assert_eq!(book.best_ask().unwrap().qty, 10);
    // A buy below the ask rests; one at the ask takes the oldest first.
    let bid = run(&mut book, gtc(Side::Buy, 100, 4));
    assert_eq!((bid.filled, bid.resting), (0, 4));
    let r = run(&mut book, gtc(Side::Buy, 101, 3));
    assert_eq!((r.filled, r.resting, r.fills_total), (3, 0, 1));
    assert_eq!(
        r.fills(),
        &[Fill {
            maker: a,
            price: 101,
            qty: 3
        }]
    );
    assert_eq!(book.order(a).unwrap().qty, 2);
    // A sweep through two levels at the makers' prices, the rest resting at its limit.
    let r = run(&mut book, gtc(Side::Buy, 103, 20));
    let fills = [
        Fill {
            maker: a,
            price: 101,
            qty: 2,
        },
        Fill {
            maker: b,
            price: 101,
            qty: 5,
        },
        Fill {
            maker: c,
            price: 103,
            qty: 7,
        },
    ];
    assert_eq!(r.fills(), &fills);
    assert_eq!((r.filled, r.resting, r.cancelled), (14, 6, 0));
    assert_eq!(
        book.best_bid().unwrap(),
        LevelView {
            price: 103,
            qty: 6,
            orders: 1
        }
    );
    assert_eq!(book.best_ask(), None);
    assert_eq!(book.levels(Side::Buy), 2);
    assert!(book.order(a).is_none() && book.order(c).is_none());
    assert_eq!(book.check(), Ok(()));
}

#[test]
fn ioc_and_market_never_rest() {
    let mut book = Small::new();
    run(&mut book, gtc(Side::Buy, 50, 3));
    let ioc = Command::Limit {
        side: Side::Sell,
        price: 49,
        qty: 5,
        tif: TimeInForce::Ioc,
        client_tag: 1,
    };
    let r = run(&mut book, ioc);
    assert_eq!((r.filled, r.resting, r.cancelled), (3, 0, 2));
    assert_eq!(book.resting(), 0);
    assert_eq!(book.order(r.order), None);
    // A market order into an empty side is accepted and trades nothing.
    let market = Command::Market {
        side: Side::Buy,
        qty: 9,
        client_tag: 2,
    };
    let r = run(&mut book, market);
    assert_eq!((r.status, r.filled, r.cancelled), (Status::Accepted, 0, 9));
    run(&mut book, gtc(Side::Sell, 70, 2));
    run(&mut book, gtc(Side::Sell, 90, 2));
    let r = run(&mut book, market);
    assert_eq!((r.filled, r.cancelled, r.fills_total), (4, 5, 2));
    assert_eq!(book.resting(), 0);
}

#[test]
fn cancel_of_a_partially_filled_order() {
    let mut book = Small::new();
    let id = run(&mut book, gtc(Side::Buy, 10, 10)).order;
    run(&mut book, gtc(Side::Sell, 10, 4));
    assert_eq!(book.order(id).unwrap().qty, 6);
    let r = run(&mut book, Command::Cancel { order: id });
    assert_eq!(
        (r.status, r.order, r.cancelled, r.resting),
        (Status::Accepted, id, 6, 0)
    );
    assert_eq!(book.best_bid(), None);
    let again = run(&mut book, Command::Cancel { order: id });
    assert_eq!(again.status, Status::Rejected(Reject::NoSuchOrder));
    assert_eq!(again.order, id);
    // The freed slot is reused, under a new id.
    let next = run(&mut book, gtc(Side::Buy, 10, 1)).order;
    assert_eq!(next % 16, id % 16);
    assert_ne!(next, id);
    assert_eq!(
        run(&mut book, Command::Cancel { order: id }).status,
        Status::Rejected(Reject::NoSuchOrder)
    );
}

fn queue_ids(book: &Small, side: Side, price: u32) -> Vec<u64> {
    book.queue(side, price).map(|o| o.id).collect()
}

#[test]
fn replace_keeps_or_loses_priority() {
    let mut book = Small::new();
    let a = run(&mut book, gtc(Side::Sell, 20, 5)).order;
    let b = run(&mut book, gtc(Side::Sell, 20, 5)).order;
    let c = run(&mut book, gtc(Side::Sell, 20, 5)).order;
    // Smaller at the same price: in place.
    let r = run(
        &mut book,
        Command::Replace {
            order: a,
            price: 20,
            qty: 3,
        },
    );
    assert_eq!((r.resting, r.cancelled, r.filled), (3, 2, 0));
    assert_eq!(queue_ids(&book, Side::Sell, 20), [a, b, c]);
    // Same size, same price: in place too.
    run(
        &mut book,
        Command::Replace {
            order: a,
            price: 20,
            qty: 3,
        },
    );
    assert_eq!(queue_ids(&book, Side::Sell, 20), [a, b, c]);
    // Bigger: to the back.
    let r = run(
        &mut book,
        Command::Replace {
            order: a,
            price: 20,
            qty: 4,
        },
    );
    assert_eq!((r.resting, r.cancelled), (4, 0));
    assert_eq!(queue_ids(&book, Side::Sell, 20), [b, c, a]);
    // Away and back: the back again, with its id.
    run(
        &mut book,
        Command::Replace {
            order: b,
            price: 21,
            qty: 5,
        },
    );
    assert_eq!(queue_ids(&book, Side::Sell, 21), [b]);
    run(
        &mut book,
        Command::Replace {
            order: b,
            price: 20,
            qty: 1,
        },
    );
    assert_eq!(queue_ids(&book, Side::Sell, 20), [c, a, b]);
    assert_eq!(book.levels(Side::Sell), 1);
    // A replace through the touch trades first, then rests what is left.
    let bid = run(&mut book, gtc(Side::Buy, 18, 2)).order;
    let r = run(
        &mut book,
        Command::Replace {
            order: c,
            price: 17,
            qty: 6,
        },
    );
    assert_eq!(
        r.fills(),
        &[Fill {
            maker: bid,
            price: 18,
            qty: 2
        }]
    );
    assert_eq!((r.filled, r.resting), (2, 4));
    assert_eq!(book.best_ask().unwrap().price, 17);
    assert_eq!(book.order(c).unwrap().qty, 4);
    // Fully filled by its replace: gone.
    let bid = run(&mut book, gtc(Side::Buy, 16, 9)).order;
    let r = run(
        &mut book,
        Command::Replace {
            order: c,
            price: 16,
            qty: 4,
        },
    );
    assert_eq!((r.filled, r.resting), (4, 0));
    assert!(book.order(c).is_none());
    assert_eq!(book.order(bid).unwrap().qty, 5);
    let r = run(
        &mut book,
        Command::Replace {
            order: a,
            price: 0,
            qty: 1,
        },
    );
    assert_eq!((r.status, r.order), (Status::Rejected(Reject::BadPrice), a));
    let r = run(
        &mut book,
        Command::Replace {
            order: a,
            price: 20,
            qty: 0,
        },
    );
    assert_eq!(r.status, Status::Rejected(Reject::BadQuantity));
    assert_eq!(book.check(), Ok(()));
}

#[test]
fn full_pool_and_full_level_table() {
    let mut book = Small::new();
    // Four levels per side: a fifth price is refused, an existing one is fine.
    for price in 1..=4 {
        run(&mut book, gtc(Side::Buy, price, 1));
    }
    let digest = book.digest();
    let r = run(&mut book, gtc(Side::Buy, 5, 1));
    assert_eq!(
        (r.status, r.order),
        (Status::Rejected(Reject::LevelsFull), 0)
    );
    assert_eq!(book.digest(), digest);
    // ... unless it does not rest.
    let ioc = Command::Limit {
        side: Side::Buy,
        price: 5,
        qty: 1,
        tif: TimeInForce::Ioc,
        client_tag: 0,
    };
    assert!(run(&mut book, ioc).is_accepted());
    // Fill the pool at existing levels.
    for i in 0..12 {
        assert!(run(&mut book, gtc(Side::Buy, 1 + i % 4, 1)).is_accepted());
    }
    assert_eq!(book.resting(), 16);
    let digest = book.digest();
    let r = run(&mut book, gtc(Side::Buy, 2, 1));
    assert_eq!(r.status, Status::Rejected(Reject::BookFull));
    let r = run(&mut book, gtc(Side::Sell, 9, 1));
    assert_eq!(r.status, Status::Rejected(Reject::BookFull));
    assert_eq!(book.digest(), digest);
    // A sell that empties one bid frees the slot its remainder takes.
    let r = run(&mut book, gtc(Side::Sell, 4, 5));
    assert_eq!((r.filled, r.resting, r.fills_total), (4, 1, 4));
    // A replace keeps its own slot whatever the pool, and may take a level its move frees.
    let sells: Vec<_> = book.queue(Side::Sell, 4).map(|o| o.id).collect();
    let r = run(
        &mut book,
        Command::Replace {
            order: sells[0],
            price: 8,
            qty: 3,
        },
    );
    assert!(r.is_accepted());
    assert_eq!(book.best_ask().unwrap().price, 8);
    assert_eq!(book.check(), Ok(()));
    // A replace into a fifth bid level is refused, and changes nothing.
    assert!(run(&mut book, gtc(Side::Buy, 4, 1)).is_accepted());
    assert_eq!(book.levels(Side::Buy), 4);
    let bid = book.queue(Side::Buy, 1).next().unwrap().id;
    let digest = book.digest();
    let r = run(
        &mut book,
        Command::Replace {
            order: bid,
            price: 6,
            qty: 1,
        },
    );
    assert_eq!(
        (r.status, r.order),
        (Status::Rejected(Reject::LevelsFull), bid)
    );
    assert_eq!(book.digest(), digest);
}

#[test]
fn ids_run_out_cleanly() {
    let mut book = Small::new();
    book.next_seq = Small::SEQ_END - 1;
    let last = run(&mut book, gtc(Side::Buy, 5, 1));
    assert!(last.is_accepted());
    assert!(last.order > u64::MAX - 2 * 16);
    let r = run(&mut book, gtc(Side::Buy, 5, 1));
    assert_eq!(r.status, Status::Rejected(Reject::IdsExhausted));
    let r = run(
        &mut book,
        Command::Market {
            side: Side::Sell,
            qty: 1,
            client_tag: 0,
        },
    );
    assert_eq!(r.status, Status::Rejected(Reject::IdsExhausted));
    // Existing orders still cancel.
    assert!(run(&mut book, Command::Cancel { order: last.order }).is_accepted());
    assert_eq!(book.check(), Ok(()));
}

#[test]
fn short_response_buffers_list_fewer_fills() {
    let mut book = Small::new();
    for _ in 0..5 {
        run(&mut book, gtc(Side::Sell, 7, 1));
    }
    let market = Command::Market {
        side: Side::Buy,
        qty: 5,
        client_tag: 0,
    };
    let r = apply(&mut book, &market, REPLY_HEADER_BYTES + 2 * FILL_BYTES + 15);
    assert_eq!(
        (r.fills_total, r.listed, r.unlisted(), r.filled),
        (5, 2, 3, 5)
    );
    // Shorter than a header: applied, no reply.
    run(&mut book, gtc(Side::Sell, 7, 1));
    let mut bytes = [0u8; COMMAND_MAX_BYTES];
    let len = market.encode(&mut bytes);
    let mut response = [0u8; REPLY_HEADER_BYTES - 1];
    assert_eq!(book.apply(0, &bytes[..len], &mut response), 0);
    assert_eq!(book.resting(), 0);
}

// ---- codecs and fuzzing ------------------------------------------------------------------------

#[test]
fn codecs_round_trip_and_refuse_malformed() {
    let mut out = [0u8; COMMAND_MAX_BYTES];
    let cases = [
        (
            encode_limit(&mut out, Side::Sell, 7, 9, TimeInForce::Ioc, 5),
            LIMIT_BYTES,
        ),
        (
            encode_market(&mut [0; 20], Side::Buy, 1, u64::MAX),
            MARKET_BYTES,
        ),
        (encode_cancel(&mut [0; 20], 77), CANCEL_BYTES),
        (encode_replace(&mut [0; 20], 1, 2, 3), REPLACE_BYTES),
    ];
    for (len, expected) in cases {
        assert_eq!(len, expected);
    }
    assert_eq!(
        Command::decode(&out[..LIMIT_BYTES]),
        Ok(Command::Limit {
            side: Side::Sell,
            price: 7,
            qty: 9,
            tif: TimeInForce::Ioc,
            client_tag: 5
        })
    );
    assert_eq!(Command::decode(&[]), Err(DecodeError::Empty));
    assert_eq!(Command::decode(&[9]), Err(DecodeError::Tag));
    assert_eq!(
        Command::decode(&out[..LIMIT_BYTES - 1]),
        Err(DecodeError::Length)
    );
    let mut bad = out;
    bad[1] = 2;
    assert_eq!(Command::decode(&bad), Err(DecodeError::Side));
    bad[1] = 1;
    bad[2] = 2;
    assert_eq!(Command::decode(&bad), Err(DecodeError::TimeInForce));
    // Replies: every field survives; contradictions are refused.
    let mut reply = Reply::accepted(42);
    reply.filled = 9;
    reply.resting = 1;
    reply.record(
        Fill {
            maker: 3,
            price: 4,
            qty: 5,
        },
        FILLS_MAX,
    );
    reply.record(
        Fill {
            maker: 6,
            price: 4,
            qty: 4,
        },
        1,
    );
    let mut bytes = [0u8; REPLY_MAX_BYTES];
    let len = reply.encode(&mut bytes);
    assert_eq!(len, REPLY_HEADER_BYTES + FILL_BYTES);
    assert_eq!(Reply::decode(&bytes[..len]), Ok(reply));
    assert_eq!(reply.unlisted(), 1);
    assert_eq!(Reply::decode(&bytes[..len - 1]), Err(DecodeError::Length));
    let mut lying = bytes;
    lying[9] = 4; // filled 4: two fills fit, the listed one's 5 lots do not
    assert_eq!(Reply::decode(&lying[..len]), Err(DecodeError::Inconsistent));
    let mut rejected = [0u8; REPLY_HEADER_BYTES];
    Reply::rejected(Reject::LevelsFull, 0).encode(&mut rejected);
    rejected[0] = 99;
    assert_eq!(Reply::decode(&rejected), Err(DecodeError::Tag));
}

#[test]
fn random_bytes_never_panic() {
    let mut book = Box::new(OrderBook::<32, 6>::new());
    let mut model = Model::new(32, 6);
    let mut rng = Rng(0xF022);
    let (mut malformed, mut decoded) = (0, 0);
    for _ in 0..20_000 {
        // Half of them with a tag and its length, so the fuzz gets past the first checks.
        let kind = rng.below(4) as usize;
        let len = match rng.below(2) {
            0 => rng.below(COMMAND_MAX_BYTES as u64 + 4) as usize,
            _ => [LIMIT_BYTES, MARKET_BYTES, CANCEL_BYTES, REPLACE_BYTES][kind],
        };
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if let Some(first) = bytes.first_mut() {
            if rng.below(8) != 0 {
                *first = 1 + kind as u8;
            }
        }
        if len > 2 && rng.below(2) == 0 {
            bytes[1] &= 1;
            bytes[2] &= 1;
        }
        let mut response = [0u8; REPLY_MAX_BYTES];
        let before = book.digest();
        let written = book.apply(0, &bytes, &mut response);
        let reply = Reply::decode(&response[..written]).unwrap();
        match Command::decode(&bytes) {
            Err(_) => {
                malformed += 1;
                assert_eq!(reply, Reply::rejected(Reject::Malformed, 0));
                assert_eq!(book.digest(), before);
            }
            Ok(command) => {
                decoded += 1;
                assert_eq!(reply, model.execute(&command, FILLS_MAX));
            }
        }
        assert_matches(&book, &model);
        // Replies from nowhere decode or not, never panic.
        let _ = Reply::decode(&bytes);
        let mut noise = [0u8; REPLY_MAX_BYTES];
        noise[..written].copy_from_slice(&response[..written]);
        let at = rng.below(written as u64) as usize;
        noise[at] ^= 1 << rng.below(8);
        let _ = Reply::decode(&noise[..written]);
    }
    assert!(malformed > 5000 && decoded > 5000, "{malformed} {decoded}");
}

// ---- snapshots -------------------------------------------------------------------------------

type Mid = OrderBook<512, 64>;

/// Applies `n` generated commands to every book given, checking they answer alike.
fn feed(generator: &mut Generator, books: &mut [&mut Mid], n: usize) {
    for _ in 0..n {
        let command = generator.next_command();
        let replies: Vec<Reply> = books
            .iter_mut()
            .map(|book| apply(book, &command, REPLY_MAX_BYTES))
            .collect();
        assert!(replies.windows(2).all(|w| w[0] == w[1]), "{command:?}");
        generator.observe(&command, &replies[0]);
    }
}

fn read_stream(book: &mut Mid, bytes: u64, piece: usize) -> Vec<u8> {
    let mut stream = std::vec![0xAA; bytes as usize];
    for (i, chunk) in stream.chunks_mut(piece).enumerate() {
        book.snapshot_read((i * piece) as u64, chunk);
    }
    stream
}

fn install(book: &mut Mid, announced: u64, stream: &[u8], piece: usize) -> u64 {
    assert!(book.install_begin(0, announced));
    for (i, chunk) in stream.chunks(piece).enumerate() {
        book.install_write((i * piece) as u64, chunk);
    }
    let digest = book.install_end();
    assert_eq!(digest, book.digest());
    assert_eq!(book.check(), Ok(()));
    digest
}

#[test]
fn snapshot_round_trip_while_the_donor_applies() {
    let mut generator = Generator::new(11);
    let mut donor = Box::new(Mid::new());
    let mut control = Box::new(Mid::new());
    feed(&mut generator, &mut [&mut donor, &mut control], 4000);
    assert!(
        donor.resting() > 50 && donor.free_len > 0,
        "{}",
        donor.resting()
    );
    let snapshot = donor.snapshot_begin(0).unwrap();
    assert_eq!(snapshot.digest, control.digest());
    let header = SNAPSHOT_HEADER_BYTES as u64;
    assert_eq!(
        snapshot.bytes,
        header + donor.resting() as u64 * RECORD_BYTES as u64 + donor.free_len as u64 * 4
    );
    // The donor keeps applying between the pieces; the control stays at the snapshot.
    let mut stream = std::vec![0u8; snapshot.bytes as usize];
    let piece = 333;
    let mut donor_generator = Generator::new(12);
    for (i, chunk) in stream.chunks_mut(piece).enumerate() {
        feed(&mut donor_generator, &mut [&mut donor], 50);
        donor.snapshot_read((i * piece) as u64, chunk);
    }
    assert_ne!(donor.digest(), snapshot.digest);
    for piece in [1, 29, 4096] {
        assert_eq!(read_stream(&mut donor, snapshot.bytes, piece), stream);
    }
    // Reads past the end are zeros.
    let mut tail = [1u8; 8];
    donor.snapshot_read(snapshot.bytes - 3, &mut tail);
    assert_eq!(tail[3..], [0; 5]);
    donor.snapshot_end();
    for piece in [1, 7, 1000, stream.len()] {
        let mut joiner = Box::new(Mid::new());
        feed(&mut Generator::new(99), &mut [&mut joiner], 300);
        assert_eq!(
            install(&mut joiner, snapshot.bytes, &stream, piece),
            snapshot.digest
        );
        assert_same(&joiner, &control);
        // From here on the joiner answers as the control does: the same ids, the same fills.
        let mut next = Generator::new(13);
        feed(&mut next, &mut [&mut joiner, &mut control], 500);
        assert_same(&joiner, &control);
        // Bring the control back to the snapshot for the next piece size.
        assert_eq!(
            install(&mut control, snapshot.bytes, &stream, 4096),
            snapshot.digest
        );
    }
}

#[test]
fn snapshot_of_empty_and_full_books() {
    let mut empty = Box::new(Mid::new());
    let snapshot = empty.snapshot_begin(0).unwrap();
    assert_eq!(snapshot.bytes, SNAPSHOT_HEADER_BYTES as u64);
    let stream = read_stream(&mut empty, snapshot.bytes, 5);
    let mut joiner = Box::new(Mid::new());
    feed(&mut Generator::new(5), &mut [&mut joiner], 100);
    assert_eq!(
        install(&mut joiner, snapshot.bytes, &stream, 3),
        snapshot.digest
    );
    assert_same(&joiner, &empty);
    // Every slot resting: the longest stream there is.
    let mut full = Box::new(Mid::new());
    for i in 0..512u32 {
        assert!(apply(&mut full, &gtc(Side::Buy, 1 + i % 64, 1), REPLY_MAX_BYTES).is_accepted());
    }
    let snapshot = full.snapshot_begin(0).unwrap();
    assert_eq!(snapshot.bytes, Mid::STREAM_MAX);
    let stream = read_stream(&mut full, snapshot.bytes, 4096);
    assert_eq!(
        install(&mut joiner, snapshot.bytes, &stream, 4096),
        snapshot.digest
    );
    assert_same(&joiner, &full);
    assert!(!joiner.install_begin(0, Mid::STREAM_MAX + 1));
    assert!(!joiner.install_begin(0, SNAPSHOT_HEADER_BYTES as u64 - 1));
    assert_same(&joiner, &full);
}

/// Whether an install's `digest` differs from the donor's; when it does not, the joiner holds
/// the donor's state exactly.
fn honest(joiner: &Mid, donor: &Mid, digest: u64, donor_digest: u64) -> bool {
    if digest == donor_digest {
        assert_same(joiner, donor);
        false
    } else {
        true
    }
}

#[test]
fn bad_streams_install_soundly_and_say_so() {
    let mut generator = Generator::new(21);
    let mut donor = Box::new(Mid::new());
    feed(&mut generator, &mut [&mut donor], 3000);
    let snapshot = donor.snapshot_begin(0).unwrap();
    let stream = read_stream(&mut donor, snapshot.bytes, 512);
    donor.snapshot_end();
    let bytes = snapshot.bytes;
    let mut joiner = Box::new(Mid::new());
    // Cut short (announced whole or not), cut inside the header, a record, the free list.
    for cut in [10, 32, 40, 61, bytes as usize / 2] {
        assert_ne!(
            install(&mut joiner, bytes, &stream[..cut], 7),
            snapshot.digest
        );
        if cut >= SNAPSHOT_HEADER_BYTES {
            assert_ne!(
                install(&mut joiner, cut as u64, &stream[..cut], 7),
                snapshot.digest
            );
        } else {
            assert!(!joiner.install_begin(0, cut as u64));
        }
    }

    // Out of order, repeated, past the announced length.
    assert!(joiner.install_begin(0, bytes));
    joiner.install_write(0, &stream[..100]);
    joiner.install_write(200, &stream[200..]);
    assert_ne!(joiner.install_end(), snapshot.digest);
    assert_eq!(joiner.check(), Ok(()));
    // The right bytes at the wrong offset stop the decoding too.
    let records = SNAPSHOT_HEADER_BYTES + 2 * RECORD_BYTES;
    assert!(joiner.install_begin(0, bytes));
    joiner.install_write(0, &stream[..records]);
    joiner.install_write(records as u64 + 1, &stream[records..bytes as usize - 1]);
    assert_ne!(joiner.install_end(), snapshot.digest);
    assert_eq!(joiner.resting(), 2);
    assert!(joiner.install_begin(0, bytes));
    joiner.install_write(0, &stream[..100]);
    joiner.install_write(0, &stream);
    assert_ne!(joiner.install_end(), snapshot.digest);
    assert_ne!(
        install(&mut joiner, bytes - 4, &stream, 64),
        snapshot.digest
    );
    // Cut in the free list: what is missing is rebuilt in slot order, which may happen to be
    // the donor's; the digest says which.
    let mut noticed = 0;
    for cut in bytes as usize - 3 * FREE_BYTES..bytes as usize {
        let digest = install(&mut joiner, bytes, &stream[..cut], 7);
        noticed += honest(&joiner, &donor, digest, snapshot.digest) as u32;
    }
    assert!(noticed > 0);
    // Every single-bit flip in the header and the first records is noticed; in the free list
    // the digest is again that of what got installed.
    for at in 0..200 {
        let mut flipped = stream.clone();
        flipped[at] ^= 1 << (at % 8);
        let digest = install(&mut joiner, bytes, &flipped, 97);
        assert_ne!(digest, snapshot.digest, "byte {at}");
    }
    for at in bytes as usize - 40..bytes as usize {
        let mut flipped = stream.clone();
        flipped[at] ^= 1 << (at % 8);
        let digest = install(&mut joiner, bytes, &flipped, 97);
        honest(&joiner, &donor, digest, snapshot.digest);
    }

    // Records swapped within a level: a different priority, a different digest.
    let mut swapped = stream.clone();
    let first = SNAPSHOT_HEADER_BYTES;
    let (a, b) = swapped[first..first + 2 * RECORD_BYTES].split_at_mut(RECORD_BYTES);
    a.swap_with_slice(b);
    assert_ne!(install(&mut joiner, bytes, &swapped, 13), snapshot.digest);
    // A book of another size refuses the header: it stays empty.
    let mut other = Box::new(OrderBook::<512, 32>::new());
    assert!(other.install_begin(0, bytes));
    other.install_write(0, &stream);
    assert_ne!(other.install_end(), snapshot.digest);
    assert_eq!(other.resting(), 0);
    assert_eq!(other.check(), Ok(()));
    // Garbage of many lengths; an abandoned install; then the real stream works.
    let mut rng = Rng(77);
    for len in [32u64, 33, 61, 500, 5000, bytes] {
        let garbage: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        assert_ne!(install(&mut joiner, len, &garbage, 11), snapshot.digest);
    }
    assert!(joiner.install_begin(0, bytes));
    joiner.install_write(0, &stream[..bytes as usize / 2]);
    joiner.install_abandon();
    assert_eq!(joiner.check(), Ok(()));
    feed(&mut Generator::new(3), &mut [&mut joiner], 200);
    // A command in the middle of an install ends it, soundly.
    assert!(joiner.install_begin(0, bytes));
    joiner.install_write(0, &stream[..bytes as usize / 3]);
    feed(&mut Generator::new(4), &mut [&mut joiner], 10);
    assert_eq!(joiner.check(), Ok(()));
    joiner.install_write(bytes / 3, &stream[bytes as usize / 3..]);
    assert_eq!(joiner.check(), Ok(()));
    assert_eq!(install(&mut joiner, bytes, &stream, 4096), snapshot.digest);
    assert_same(&joiner, &donor);
}

#[test]
fn a_snapshot_begun_during_an_install_ends_it() {
    let mut donor = Box::new(Mid::new());
    feed(&mut Generator::new(31), &mut [&mut donor], 1000);
    let snapshot = donor.snapshot_begin(0).unwrap();
    let stream = read_stream(&mut donor, snapshot.bytes, 100);
    let mut joiner = Box::new(Mid::new());
    assert!(joiner.install_begin(0, snapshot.bytes));
    joiner.install_write(0, &stream[..stream.len() / 2]);
    let partial = joiner.snapshot_begin(0).unwrap();
    assert_eq!(joiner.check(), Ok(()));
    assert_eq!(partial.digest, joiner.digest());
    assert_ne!(partial.digest, snapshot.digest);
    // A stream of the half-installed book installs as that book.
    let half = read_stream(&mut joiner, partial.bytes, 64);
    let mut third = Box::new(Mid::new());
    assert_eq!(
        install(&mut third, partial.bytes, &half, 50),
        partial.digest
    );
    assert_same(&third, &joiner);
}

#[test]
fn memory_is_as_documented() {
    use core::mem::size_of;
    assert_eq!(size_of::<Order>(), 40);
    assert_eq!(size_of::<Level>(), 24);
    let (orders, levels) = (65536, 4096);
    let size = size_of::<OrderBook<65536, 4096>>();
    assert!(size >= orders * 76 + 2 * levels * 24 && size < orders * 76 + 2 * levels * 24 + 512);
    assert!(size > 5_100_000 && size < 5_200_000, "{size}");
}

// ---- the generator ---------------------------------------------------------------------------

#[test]
fn generator_is_deterministic_and_mixes_as_configured() {
    let commands = |seed| {
        let mut generator = Generator::new(seed);
        (0..2000)
            .map(|_| generator.next_command())
            .collect::<Vec<_>>()
    };
    assert_eq!(commands(5), commands(5));
    assert_ne!(commands(5), commands(6));
    // Through a book, feeding replies back: every kind in about its share.
    let mut book = Box::new(OrderBook::<4096, 256>::new());
    let mut generator = Generator::new(8);
    let mut kinds = [0u32; 5];
    let mut rejects = [0u32; 8];
    let (mut fills, mut moved) = (0u64, 0u32);
    let steps = 100_000;
    for _ in 0..steps {
        let command = generator.next_command();
        let reply = apply(&mut book, &command, REPLY_MAX_BYTES);
        generator.observe(&command, &reply);
        fills += reply.fills_total as u64;
        kinds[match command {
            Command::Limit {
                tif: TimeInForce::Gtc,
                ..
            } => 0,
            Command::Limit { .. } => 1,
            Command::Market { .. } => 2,
            Command::Cancel { .. } => 3,
            Command::Replace { .. } => 4,
        }] += 1;
        if let Status::Rejected(reject) = reply.status {
            rejects[reject as usize] += 1;
        }
        moved += (generator.mid() != Config::default().mid) as u32;
    }
    let mix = Config::default().mix;
    for (kind, share) in [mix.limit, mix.ioc, mix.market, mix.cancel, mix.replace]
        .iter()
        .enumerate()
    {
        let expected = steps as f64 * *share as f64 / 100.0;
        assert!(
            (kinds[kind] as f64 - expected).abs() < expected * 0.1 + 200.0,
            "{kinds:?}"
        );
    }
    assert_eq!(
        rejects[Reject::BookFull as usize] + rejects[Reject::LevelsFull as usize],
        0
    );
    assert_eq!(
        rejects[Reject::Malformed as usize] + rejects[Reject::BadPrice as usize],
        0
    );
    // Some cancels miss (their order traded), not most.
    assert!(
        rejects[Reject::NoSuchOrder as usize] < steps / 10,
        "{rejects:?}"
    );
    assert!(fills > steps as u64 / 10 && moved > steps / 2);
    assert!(
        book.resting() > 100 && book.resting() < 2000,
        "{}",
        book.resting()
    );
    assert!(book.best_bid().unwrap().price < book.best_ask().unwrap().price);
    assert_eq!(book.check(), Ok(()));
    // Without replies it still flows, as new orders only.
    let mut blind = Generator::new(9);
    assert!((0..1000).all(|_| matches!(
        blind.next_command(),
        Command::Limit { .. } | Command::Market { .. }
    )));
    // Mixes of one kind work.
    let only = Mix {
        limit: 0,
        ioc: 0,
        market: 1,
        cancel: 0,
        replace: 0,
    };
    let mut markets = Generator::with_config(
        1,
        Config {
            mix: only,
            ..Config::default()
        },
    );
    assert!(matches!(markets.next_command(), Command::Market { .. }));
}
