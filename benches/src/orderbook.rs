//! The order book, unreplicated and replicated, in one run: submit to acknowledgement of each
//! order of one seeded flow.
//!
//! Mu's paper replicated the Liquibook order book (4.08 µs per order unreplicated, 5.55 µs
//! replicated). This benchmark does the same with our own engine, [`mu_apps::orderbook`]:
//! [`orderflow::Generator`] draws a realistic flow of limit, market, cancel and replace commands
//! from a seed, learning its resting orders' ids from the book's replies, and the same seed runs
//! twice:
//! 1. **unreplicated**: on the leader's core, each command is encoded and handed to the book's
//!    [`StateMachine::apply`] (decode, match, encode the reply), timed from just before the call
//!    to just after it;
//! 2. **replicated**: a 3-replica in-process Mu cluster over the shared-memory fabric
//!    ([`crate::inproc`], threads placed as in [`crate::latency`]); the leader submits each
//!    command and polls until the `committed` callback hands back the book's reply, timed from
//!    just before the submit to the callback. The followers apply every command to books of
//!    their own.
//!
//! Both time the same application code ([`BookReplica::apply`]), so the difference is what
//! replication adds. One order is in flight at a time (the generator needs each reply to draw
//! the next command); throughput is measured orders over the wall time of the measured loop,
//! the generator's own work included, the same in both modes.
//!
//! # Invariants
//! - The replicated run replays the unreplicated run exactly: the same seed and the same replies
//!   give the same commands. [`verify`] fails the run unless every replica applied exactly the
//!   unreplicated run's commands (count and a digest of every reply) and ended with the same
//!   book ([`mu_apps::orderbook::OrderBook::digest`], invariants checked from scratch), and the
//!   leader heard every order acknowledged exactly once and none dropped.
//! - Books are built on the heap without passing through a default-sized thread stack
//!   ([`new_book`]): `OrderBook<65536, 1024>` is about 5 MB.
//! - Figures are printed and written, never judged.

use std::fmt::Write as _;
use std::time::Instant;

use hdrhistogram::Histogram;
use mu_apps::orderbook::{orderflow, OrderBook, Reply, COMMAND_MAX_BYTES, REPLY_MAX_BYTES};
use mu_nostd::{StateMachine, Ticket};
use runtime_linux::clock::{cycles_end, cycles_start, Ticker};

use crate::inproc::{Params, Replica, ReplicationSide};
use crate::latency::{self, Placement, RunError, POLLS_PER_CLOCK_READ, READ_PERIOD_TICKS};

/// Resting orders a book holds: far more than the flow keeps resting (it cancels most of what
/// it places; the report shows how many rested at the end), so no order is refused for room.
pub const ORDERS: usize = 1 << 16;
/// Price levels per side: the flow's prices stay within about 75 ticks of its starting mid.
pub const LEVELS: usize = 1 << 10;
/// The book every run uses.
pub type Book = OrderBook<ORDERS, LEVELS>;
/// The flow's seed, the same for both modes (and every run, so that runs compare).
pub const SEED: u64 = 0x4D75_4F42_2020_0001;
/// Replicas of the replicated mode.
pub const REPLICAS: u8 = 3;

/// A book on the heap, built on a thread whose stack can hold it: `Box::new(Book::new())`
/// builds the value on the stack before moving it (always in a debug build), and 5 MB is more
/// than a thread's default stack.
pub fn new_book() -> Result<Box<Book>, String> {
    std::thread::Builder::new()
        .name("mu-bench-book".into())
        .stack_size(3 * std::mem::size_of::<Book>() + (1 << 20))
        .spawn(|| Box::new(Book::new()))
        .map_err(|e| format!("cannot start a thread to build a book: {e}"))?
        .join()
        .map_err(|_| "building a book panicked".to_owned())
}

/// A replica's application: the book, a digest of every reply it gave, and on the leader the
/// acknowledgements it heard.
pub struct BookReplica {
    /// The book.
    pub book: Box<Book>,
    /// Commands applied.
    pub applied: u64,
    /// Digest of every reply, in order: equal on replicas that gave the same replies.
    pub replies: u64,
    /// Acknowledgements heard (`committed` calls of the awaited ticket).
    pub acks: u64,
    /// `committed` calls of any other ticket: a second acknowledgement, or one never awaited.
    pub stray_acks: u64,
    /// Commands this replica submitted that were dropped (its tenure ended).
    pub dropped: u64,
    /// The ticket the leader awaits, until its acknowledgement.
    pub awaited: Option<Ticket>,
    /// The TSC at the last acknowledgement (`rdtscp; lfence`).
    pub ack_cycles: u64,
    reply: [u8; REPLY_MAX_BYTES],
    reply_len: usize,
}

impl BookReplica {
    /// An empty book.
    pub fn new() -> Result<BookReplica, String> {
        Ok(BookReplica {
            book: new_book()?,
            applied: 0,
            replies: 0,
            acks: 0,
            stray_acks: 0,
            dropped: 0,
            awaited: None,
            ack_cycles: 0,
            reply: [0; REPLY_MAX_BYTES],
            reply_len: 0,
        })
    }

    /// The last reply acknowledged (on the leader).
    pub fn reply(&self) -> Result<Reply, String> {
        decode(&self.reply[..self.reply_len])
    }
}

fn decode(reply: &[u8]) -> Result<Reply, String> {
    Reply::decode(reply).map_err(|e| format!("the book's reply does not decode: {e:?}"))
}

impl StateMachine for BookReplica {
    fn apply(&mut self, position: u64, command: &[u8], response: &mut [u8]) -> usize {
        let len = self.book.apply(position, command, response);
        self.replies = crate::digest(self.replies, &response[..len]);
        self.applied += 1;
        len
    }

    fn committed(&mut self, ticket: Ticket, _position: u64, response: &[u8]) {
        self.ack_cycles = cycles_end();
        if self.awaited != Some(ticket) {
            self.stray_acks += 1;
            return;
        }
        self.awaited = None;
        self.acks += 1;
        let kept = response.len().min(REPLY_MAX_BYTES);
        self.reply[..kept].copy_from_slice(&response[..kept]);
        self.reply_len = kept;
    }

    fn dropped(&mut self, _ticket: Ticket) {
        self.dropped += 1;
    }
}

impl Replica for BookReplica {
    fn fingerprint(&self) -> (u64, u64) {
        (self.applied, self.replies)
    }

    fn dropped_count(&self) -> u64 {
        self.dropped
    }
}

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct OrderbookParams {
    /// Unrecorded orders first (they build the book up, the same in both modes).
    pub warm_up: u64,
    /// Recorded orders.
    pub orders: u64,
    /// The flow's seed.
    pub seed: u64,
}

impl OrderbookParams {
    /// Every order the run applies.
    pub fn total(&self) -> u64 {
        self.warm_up + self.orders
    }
}

/// One mode's figures.
pub struct ModeRun {
    /// Submit to acknowledgement of each recorded order, in TSC cycles.
    pub latency: Histogram<u64>,
    /// Wall time of the recorded orders, generator included.
    pub seconds: f64,
}

impl ModeRun {
    /// Orders per second, one in flight.
    pub fn per_second(&self) -> f64 {
        self.latency.len() as f64 / self.seconds.max(1e-9)
    }
}

/// Both modes of one run.
pub struct OrderbookBench {
    /// What ran.
    pub params: OrderbookParams,
    /// The book alone on one core.
    pub unreplicated: ModeRun,
    /// The book replicated by [`REPLICAS`] replicas, measured at the leader.
    pub replicated: ModeRun,
    /// Orders the book rejected, of every order of the run (warm-up included).
    pub rejected: u64,
    /// Fills made, by every order of the run.
    pub fills: u64,
    /// Resting orders at the end.
    pub resting: usize,
    /// The final book's digest, the same on every replica and unreplicated.
    pub digest: u64,
}

/// Runs the unreplicated mode on the leader's core, then the replicated one, and checks them
/// against each other ([`verify`]).
pub fn measure(params: &OrderbookParams, placement: Placement) -> Result<OrderbookBench, RunError> {
    if params.orders == 0 {
        return Err(RunError::Failed("measure at least one order".into()));
    }
    let params = *params;
    let (unreplicated, alone, (rejected, fills)) = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                latency::pin(placement.leader_core)?;
                unreplicated_run(&params)
            })
            .join()
            .unwrap_or_else(|_| Err("the unreplicated run panicked".into()))
    })?;
    let (replicated, replicas) = replicated_run(&params, placement)?;
    verify(&alone, &replicas, params.total())?;
    Ok(OrderbookBench {
        params,
        unreplicated,
        replicated,
        rejected,
        fills,
        resting: alone.book.resting(),
        digest: alone.book.digest(),
    })
}

/// The book alone: encode, apply (timed), decode the reply, tell the generator.
/// Returns the figures, the book, and the orders rejected and fills made.
fn unreplicated_run(
    params: &OrderbookParams,
) -> Result<(ModeRun, BookReplica, (u64, u64)), String> {
    let mut app = BookReplica::new()?;
    let mut flow = orderflow::Generator::new(params.seed);
    let mut latency = histogram();
    let mut command = [0u8; COMMAND_MAX_BYTES];
    let mut response = [0u8; REPLY_MAX_BYTES];
    let (mut rejected, mut fills) = (0, 0);
    let mut started = Instant::now();
    for i in 0..params.total() {
        if i == params.warm_up {
            started = Instant::now();
        }
        let next = flow.next_command();
        let len = next.encode(&mut command);
        let before = cycles_start();
        let replied = app.apply(i, &command[..len], &mut response);
        let after = cycles_end();
        if i >= params.warm_up {
            latency.saturating_record(after.saturating_sub(before).max(1));
        }
        let reply = decode(&response[..replied])?;
        rejected += u64::from(!reply.is_accepted());
        fills += u64::from(reply.fills_total);
        flow.observe(&next, &reply);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((ModeRun { latency, seconds }, app, (rejected, fills)))
}

/// The book replicated: submit (timed) until the leader's `committed` callback hands the reply
/// back, then tell the generator.
fn replicated_run(
    params: &OrderbookParams,
    placement: Placement,
) -> Result<(ModeRun, Vec<BookReplica>), RunError> {
    let cluster = Params {
        replicas: REPLICAS,
        entry_bytes: COMMAND_MAX_BYTES,
        pipeline_depth: 8,
        read_period_ticks: READ_PERIOD_TICKS,
    };
    let mut books = (0..REPLICAS)
        .map(|_| BookReplica::new())
        .collect::<Result<Vec<_>, _>>()?
        .into_iter();
    let params = *params;
    let (run, replicas) = latency::with_apps(
        &cluster,
        placement,
        |_| books.next().expect("one book per replica"),
        move |leader, ticker| leader_loop(&params, leader, ticker),
    )?;
    Ok((run, replicas))
}

fn leader_loop(
    params: &OrderbookParams,
    leader: &mut ReplicationSide<'_, BookReplica>,
    ticker: &Ticker,
) -> Result<ModeRun, RunError> {
    let mut flow = orderflow::Generator::new(params.seed);
    let mut latency = histogram();
    let mut command = [0u8; COMMAND_MAX_BYTES];
    let mut started = Instant::now();
    for i in 0..params.total() {
        if i == params.warm_up {
            started = Instant::now();
        }
        let next = flow.next_command();
        let len = next.encode(&mut command);
        let acks = leader.app.acks;
        let mut now = ticker.now();
        let before = cycles_start();
        let ticket = leader
            .plane
            .submit(&command[..len])
            .map_err(|e| RunError::Failed(format!("submit: {e:?}")))?;
        leader.app.awaited = Some(ticket);
        let mut polls = 0u32;
        while leader.app.acks == acks {
            leader.poll(now);
            polls += 1;
            if polls % POLLS_PER_CLOCK_READ == 0 {
                now = ticker.now();
                latency::still_leading(leader)?;
                if polls % (POLLS_PER_CLOCK_READ * 4096) == 0 {
                    latency::stalled(before)?;
                }
            }
        }
        if i >= params.warm_up {
            let cycles = leader.app.ack_cycles.saturating_sub(before);
            latency.saturating_record(cycles.max(1));
        }
        flow.observe(&next, &leader.app.reply()?);
    }
    let seconds = started.elapsed().as_secs_f64();
    latency::still_leading(leader)?;
    Ok(ModeRun { latency, seconds })
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 1 << 40, 3).expect("static bounds")
}

/// Whether the replicated run replayed the unreplicated one (`alone`): every replica applied
/// `total` commands with the same replies and ended with the same book, sound; the leader
/// (replica 0) heard each order acknowledged exactly once and dropped none.
pub fn verify(alone: &BookReplica, replicas: &[BookReplica], total: u64) -> Result<(), String> {
    if alone.applied != total {
        return Err(format!(
            "the unreplicated book applied {} orders, not {total}",
            alone.applied
        ));
    }
    let leader = replicas.first().ok_or("no replicas")?;
    if (leader.acks, leader.stray_acks, leader.dropped) != (total, 0, 0) {
        return Err(format!(
            "the leader heard {} of {total} orders acknowledged, {} acknowledgements of other \
             tickets (a second one, or one never awaited), {} dropped",
            leader.acks, leader.stray_acks, leader.dropped
        ));
    }
    alone
        .book
        .check()
        .map_err(|e| format!("the unreplicated book: {e}"))?;
    let digest = alone.book.digest();
    for (id, replica) in replicas.iter().enumerate() {
        if replica.fingerprint() != alone.fingerprint() {
            return Err(format!(
                "replica {id} applied {} orders (reply digest {:016x}); unreplicated, {} \
                 ({:016x})",
                replica.applied, replica.replies, alone.applied, alone.replies
            ));
        }
        replica
            .book
            .check()
            .map_err(|e| format!("replica {id}'s book: {e}"))?;
        let other = replica.book.digest();
        if other != digest {
            return Err(format!(
                "replica {id}'s book has digest {other:016x}, the unreplicated book {digest:016x}"
            ));
        }
    }
    Ok(())
}

/// The quantiles the report shows.
pub const QUANTILES: [(&str, f64); 4] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];

impl OrderbookBench {
    /// Nanoseconds at quantile `q` of `run`.
    fn ns(run: &ModeRun, q: f64, tsc_hz: f64) -> f64 {
        run.latency.value_at_quantile(q) as f64 * 1e9 / tsc_hz
    }

    /// The rows, as printed and as the report's table (markdown).
    pub fn table(&self, tsc_hz: f64) -> String {
        let mut w = String::new();
        let _ = writeln!(
            w,
            "| order submit to acknowledgement | p50 | p90 | p99 | p99.9 | orders/s (one in flight) |\n\
             |---|---:|---:|---:|---:|---:|"
        );
        let rows = [
            ("unreplicated (the book alone)", &self.unreplicated),
            ("replicated, 3 replicas (Mu)", &self.replicated),
        ];
        for (name, run) in rows {
            let _ = write!(w, "| {name} |");
            for (_, q) in QUANTILES {
                let _ = write!(w, " {:.0} ns |", Self::ns(run, q, tsc_hz));
            }
            let _ = writeln!(w, " {:.0} |", run.per_second());
        }
        let _ = write!(w, "| what replication adds |");
        for (_, q) in QUANTILES {
            let added =
                Self::ns(&self.replicated, q, tsc_hz) - Self::ns(&self.unreplicated, q, tsc_hz);
            let _ = write!(w, " {added:+.0} ns |");
        }
        let _ = writeln!(
            w,
            " {:.2}x the time per order |",
            self.unreplicated.per_second() / self.replicated.per_second().max(1e-9)
        );
        w
    }

    /// What the run did, in one sentence.
    pub fn describe(&self) -> String {
        format!(
            "{} orders measured per mode after a warm-up of {}, seed {}; {} rejected by the \
             book, {} fills, {} orders resting at the end; every replica's book and replies equal \
             the unreplicated run's (book digest {:016x})",
            self.params.orders,
            self.params.warm_up,
            self.params.seed,
            self.rejected,
            self.fills,
            self.resting,
            self.digest
        )
    }

    /// The report's section (markdown), `command` being what produced it.
    pub fn render(&self, tsc_hz: f64, command: &str) -> String {
        let mut w = String::new();
        let _ = writeln!(w, "\n## Order book\n");
        let _ = writeln!(
            w,
            "Our price-time matching engine (`mu_apps::orderbook`, `OrderBook<{ORDERS}, \
             {LEVELS}>`) fed one seeded flow from `orderflow::Generator` (limit, immediate or \
             cancel, market, cancel and replace commands, replies observed), twice in one run \
             with the same seed: unreplicated, the book's `apply` (decode, match, encode the \
             reply) timed with the TSC on the leader's core; replicated by 3 replicas over the \
             shared-memory fabric, submit at the leader to the `committed` callback that hands \
             back the book's reply, the followers applying every order to books of their own. \
             One order in flight, so throughput is 1 / the mean time per order, the generator's \
             own work included. Produced by `{command}`; cycles at {:.3} GHz.\n",
            tsc_hz / 1e9
        );
        w.push_str(&self.table(tsc_hz));
        let _ = writeln!(w, "\n{}.", self.describe());
        let _ = writeln!(
            w,
            "\nFor reference only, not a comparison: Mu's paper reports the Liquibook order book \
             at 4.08 µs per order unreplicated and 5.55 µs replicated (1.47 µs added), on its \
             RDMA testbed. The engines differ (Liquibook is another matching engine, in C++; \
             this is `mu_apps::orderbook`), and so do the setups: here the replicas are threads \
             of one process on shared memory, the followers' planes sharing one core. On a host \
             with few cores shared with other work (the machine table above) the tails \
             especially carry the host's noise."
        );
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mu_apps::orderbook::{Command, Side, TimeInForce};

    const PARAMS: OrderbookParams = OrderbookParams {
        warm_up: 50,
        orders: 300,
        seed: SEED,
    };

    #[test]
    fn both_modes_acknowledge_every_order_once_and_the_replicas_agree() {
        let bench = measure(&PARAMS, Placement::last_two_cores()).unwrap();
        assert_eq!(bench.unreplicated.latency.len(), PARAMS.orders);
        assert_eq!(bench.replicated.latency.len(), PARAMS.orders);
        assert!(bench.unreplicated.latency.min() > 0 && bench.replicated.latency.min() > 0);
        // The flow traded and rested orders: the run measured a book at work, not rejections.
        assert!(bench.fills > 0 && bench.resting > 0);
        assert!(bench.rejected < PARAMS.total() / 10);
        let zero = OrderbookParams {
            orders: 0,
            ..PARAMS
        };
        assert!(matches!(
            measure(&zero, Placement::last_two_cores()),
            Err(RunError::Failed(_))
        ));
    }

    /// Applies `commands` to a fresh replica, acknowledging each as a leader would.
    fn replica_of(commands: &[Command]) -> BookReplica {
        let mut app = BookReplica::new().unwrap();
        let mut response = [0u8; REPLY_MAX_BYTES];
        for (i, command) in commands.iter().enumerate() {
            let mut bytes = [0u8; COMMAND_MAX_BYTES];
            let len = command.encode(&mut bytes);
            app.awaited = Some(i as Ticket);
            let n = app.apply(i as u64, &bytes[..len], &mut response);
            app.committed(i as Ticket, i as u64, &response[..n]);
        }
        app
    }

    fn flow(n: usize) -> Vec<Command> {
        let mut generator = orderflow::Generator::new(SEED);
        let mut book = new_book().unwrap();
        (0..n)
            .map(|_| {
                let command = generator.next_command();
                let reply = book.execute(&command, mu_apps::orderbook::FILLS_MAX);
                generator.observe(&command, &reply);
                command
            })
            .collect()
    }

    #[test]
    fn verify_refuses_replicas_that_differ_and_acknowledgements_that_do_not_add_up() {
        let commands = flow(200);
        let total = commands.len() as u64;
        let alone = replica_of(&commands);
        let same = || replica_of(&commands);
        verify(&alone, &[same(), same(), same()], total).unwrap();

        // A follower that applied one more order.
        let mut more = commands.clone();
        more.push(Command::Limit {
            side: Side::Buy,
            price: 1,
            qty: 1,
            tif: TimeInForce::Gtc,
            client_tag: 0,
        });
        let err = verify(&alone, &[same(), replica_of(&more), same()], total).unwrap_err();
        assert!(err.contains("replica 1"), "{err}");

        // A follower whose book differs although its replies agree: the same count and reply
        // digest, forged, over a book with one more order resting.
        let mut forged = replica_of(&more);
        (forged.applied, forged.replies) = (alone.applied, alone.replies);
        let err = verify(&alone, &[same(), same(), forged], total).unwrap_err();
        assert!(err.contains("digest"), "{err}");

        // An acknowledgement heard twice, one missing, one dropped.
        let mut twice = same();
        twice.committed(0, 0, &[]);
        assert!(verify(&alone, &[twice, same(), same()], total).is_err());
        let mut missing = same();
        missing.acks -= 1;
        assert!(verify(&alone, &[missing, same(), same()], total).is_err());
        let mut dropped = same();
        dropped.dropped(7);
        assert!(verify(&alone, &[dropped, same(), same()], total).is_err());
        assert!(verify(&alone, &[same()], total + 1).is_err());
    }
}
