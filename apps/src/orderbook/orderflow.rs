//! A deterministic synthetic order flow for demos, tests and benchmarks.
//!
//! [`Generator`] draws, from a seed, a mix like a liquid instrument's: limit orders near the
//! touch (most at it, fewer deeper, some priced through it), immediate-or-cancel limits, market
//! orders, cancels and replaces of its own resting orders, around a mid price that wanders and
//! is pulled back towards where it started, so the book neither drifts away nor empties.
//!
//! It learns its resting orders' ids from the book's replies: give every command and its reply
//! to [`Generator::observe`] (in any order, or only some of them; missing ones just make some
//! cancels and replaces miss, which real flows do too). Without replies it still produces
//! limits and market orders, drawn in place of the cancels and replaces it cannot target.
//! The same seed and the same replies give the same commands, on every target.

use super::{Command, Reply, Side, TimeInForce};

/// Resting orders the generator keeps track of (the oldest are forgotten when it knows more).
pub const KNOWN_MAX: usize = 1024;

/// Relative weights of the command kinds (any scale; they need not sum to 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Good-till-cancelled limit orders.
    pub limit: u32,
    /// Immediate-or-cancel limit orders.
    pub ioc: u32,
    /// Market orders.
    pub market: u32,
    /// Cancels of a known resting order.
    pub cancel: u32,
    /// Replaces of a known resting order.
    pub replace: u32,
}

/// The generator's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Command kinds.
    pub mix: Mix,
    /// The starting mid price, in ticks; the mid stays within `band` of it.
    pub mid: u32,
    /// How far the mid may wander from its start, in ticks.
    pub band: u32,
    /// Passive limits rest up to this many ticks behind the touch.
    pub depth: u32,
    /// Percent of limit orders priced through the touch (they trade on arrival).
    pub aggressive: u32,
    /// The largest order quantity, in lots.
    pub qty_max: u32,
}

impl Default for Config {
    /// Roughly the mix of a liquid instrument's message flow: mostly new limits and cancels.
    fn default() -> Config {
        Config {
            mix: Mix {
                limit: 50,
                ioc: 5,
                market: 5,
                cancel: 30,
                replace: 10,
            },
            mid: 10_000,
            band: 50,
            depth: 20,
            aggressive: 10,
            qty_max: 100,
        }
    }
}

/// A resting order the generator placed.
#[derive(Clone, Copy, Debug)]
struct Known {
    id: u64,
    side: Side,
    price: u32,
    qty: u32,
}

impl Known {
    const NONE: Known = Known {
        id: 0,
        side: Side::Buy,
        price: 0,
        qty: 0,
    };
}

/// The generator (module doc).
pub struct Generator {
    state: u64,
    config: Config,
    mid: u32,
    known: [Known; KNOWN_MAX],
    known_len: usize,
    next_tag: u64,
}

impl Generator {
    /// A generator with the default [`Config`].
    pub fn new(seed: u64) -> Generator {
        Generator::with_config(seed, Config::default())
    }

    /// A generator of `config`'s shape. Panics on a config that could produce a price of 0 or
    /// beyond `u32::MAX`, or draws nothing.
    pub fn with_config(seed: u64, config: Config) -> Generator {
        let mix = config.mix;
        let reach = config.band as u64 + config.depth as u64 + 4;
        assert!(config.mid as u64 > reach && config.mid as u64 + reach < u32::MAX as u64);
        assert!(config.depth > 0 && config.qty_max > 0 && config.aggressive <= 100);
        assert!(
            mix.limit as u64 + mix.ioc as u64 + mix.market as u64 > 0
                && mix.limit as u64
                    + mix.ioc as u64
                    + mix.market as u64
                    + mix.cancel as u64
                    + mix.replace as u64
                    <= u32::MAX as u64
        );
        Generator {
            state: seed,
            config,
            mid: config.mid,
            known: [Known::NONE; KNOWN_MAX],
            known_len: 0,
            next_tag: 1,
        }
    }

    /// The current mid price.
    pub fn mid(&self) -> u32 {
        self.mid
    }

    /// Resting orders it knows of.
    pub fn known(&self) -> usize {
        self.known_len
    }

    /// splitmix64: one multiply-xorshift step per draw, the same on every target.
    fn draw(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), up to a negligible bias.
    fn below(&mut self, n: u32) -> u32 {
        (((self.draw() >> 32) * n as u64) >> 32) as u32
    }

    /// In `0..n`, small values likelier (the smaller of two uniform draws).
    fn skewed(&mut self, n: u32) -> u32 {
        self.below(n).min(self.below(n))
    }

    fn side(&mut self) -> Side {
        if self.draw() & 1 == 0 {
            Side::Buy
        } else {
            Side::Sell
        }
    }

    fn qty(&mut self) -> u32 {
        1 + self.skewed(self.config.qty_max)
    }

    /// One step of the mid: a move one time in eight, twice as likely back towards the start
    /// as away from it once outside half the band, never outside the band.
    fn wander(&mut self) {
        if self.below(8) != 0 {
            return;
        }
        let (home, band) = (self.config.mid, self.config.band);
        let up = match self.mid.abs_diff(home) * 2 > band {
            true => (self.below(3) == 0) == (self.mid > home),
            false => self.draw() & 1 == 0,
        };
        if up && self.mid < home + band {
            self.mid += 1;
        } else if !up && self.mid > home - band {
            self.mid -= 1;
        }
    }

    /// A limit price on `side`: behind the touch, or through it for an aggressive order.
    fn price(&mut self, side: Side, aggressive: bool) -> u32 {
        // Bids rest at mid - 1 and below, asks at mid + 1 and above.
        let offset = if aggressive {
            self.below(3)
        } else {
            self.skewed(self.config.depth)
        };
        match (side, aggressive) {
            (Side::Buy, false) | (Side::Sell, true) => self.mid - 1 - offset,
            (Side::Buy, true) | (Side::Sell, false) => self.mid + 1 + offset,
        }
    }

    /// The next command.
    pub fn next_command(&mut self) -> Command {
        self.wander();
        let mix = self.config.mix;
        let total = mix.limit + mix.ioc + mix.market + mix.cancel + mix.replace;
        let mut pick = self.below(total);
        let client_tag = self.next_tag;
        self.next_tag += 1;
        let mut kind = 0;
        for weight in [mix.limit, mix.ioc, mix.market, mix.cancel, mix.replace] {
            if pick < weight {
                break;
            }
            pick -= weight;
            kind += 1;
        }
        if kind >= 3 && self.known_len == 0 {
            // Nothing to cancel or replace: a new order instead.
            kind = 0;
        }
        match kind {
            0 | 1 => {
                let side = self.side();
                let aggressive = kind == 1 || self.below(100) < self.config.aggressive;
                Command::Limit {
                    side,
                    price: self.price(side, aggressive),
                    qty: self.qty(),
                    tif: if kind == 1 {
                        TimeInForce::Ioc
                    } else {
                        TimeInForce::Gtc
                    },
                    client_tag,
                }
            }
            2 => Command::Market {
                side: self.side(),
                qty: self.qty(),
                client_tag,
            },
            3 => {
                let at = self.below(self.known_len as u32) as usize;
                let order = self.forget(at);
                Command::Cancel { order: order.id }
            }
            _ => {
                let at = self.below(self.known_len as u32) as usize;
                let order = self.known[at];
                // Half keep their place (a smaller quantity), half move a tick or two back
                // from the touch or towards it, which costs their place.
                if self.draw() & 1 == 0 || order.qty == 1 && order.price <= 2 {
                    Command::Replace {
                        order: order.id,
                        price: order.price,
                        qty: (order.qty / 2).max(1),
                    }
                } else {
                    let step = 1 + self.below(2);
                    let towards = self.draw() & 1 == 0;
                    let price = match (order.side, towards) {
                        (Side::Buy, true) | (Side::Sell, false) => order.price.saturating_add(step),
                        (Side::Buy, false) | (Side::Sell, true) => order.price.saturating_sub(step),
                    };
                    Command::Replace {
                        order: order.id,
                        price: price.max(1),
                        qty: self.qty(),
                    }
                }
            }
        }
    }

    /// Encodes the next command into `out` (at least [`super::COMMAND_MAX_BYTES`] bytes);
    /// returns its length.
    pub fn encode_next(&mut self, out: &mut [u8]) -> usize {
        self.next_command().encode(out)
    }

    fn forget(&mut self, at: usize) -> Known {
        assert!(at < self.known_len);
        let order = self.known[at];
        self.known_len -= 1;
        self.known[at] = self.known[self.known_len];
        order
    }

    /// Learns from the book's `reply` to `command`: which of its orders rest, and where.
    pub fn observe(&mut self, command: &Command, reply: &Reply) {
        // Listed fills tell what traded of the known orders: an emptied one is forgotten.
        for fill in reply.fills() {
            if let Some(at) = self.find(fill.maker) {
                let known = &mut self.known[at];
                known.qty = known.qty.saturating_sub(fill.qty);
                if known.qty == 0 {
                    self.forget(at);
                }
            }
        }
        if !reply.is_accepted() {
            if let Command::Replace { order, .. } = *command {
                // Most likely filled or cancelled meanwhile.
                self.drop_id(order);
            }
            return;
        }
        let (side, price) = match *command {
            Command::Limit { side, price, .. } => (side, price),
            Command::Replace { order, price, .. } => {
                let Some(at) = self.find(order) else {
                    return;
                };
                (self.known[at].side, price)
            }
            Command::Market { .. } | Command::Cancel { .. } => return,
        };
        let known = Known {
            id: reply.order,
            side,
            price,
            qty: reply.resting,
        };
        match (self.find(reply.order), reply.resting) {
            (Some(at), 0) => {
                self.forget(at);
            }
            (Some(at), _) => self.known[at] = known,
            (None, 0) => {}
            (None, _) if self.known_len < KNOWN_MAX => {
                self.known[self.known_len] = known;
                self.known_len += 1;
            }
            (None, _) => {
                let at = self.below(KNOWN_MAX as u32) as usize;
                self.known[at] = known;
            }
        }
    }

    fn find(&self, id: u64) -> Option<usize> {
        self.known[..self.known_len].iter().position(|k| k.id == id)
    }

    fn drop_id(&mut self, id: u64) {
        if let Some(at) = self.find(id) {
            self.forget(at);
        }
    }
}
