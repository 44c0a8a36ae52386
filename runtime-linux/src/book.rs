//! The replicated order book (`mu replica --app orderbook`, `mu demo --app orderbook`): the
//! price-time matching engine of [`mu_apps::orderbook`] as an [`Application`], and a demo that
//! sends a seeded order flow to a 3-process cluster, kills its leader halfway, and checks that
//! every replica's book ends identical to an unreplicated copy the client kept.
//!
//! The client sends one order at a time through the leader's client port and applies each
//! acknowledged order to its own copy, whose replies feed the flow generator. An order whose
//! leader died before answering is settled without applying it twice: once a new leader is on
//! the fast path, its applied position says whether the order was decided (one position per
//! order), and only an order that was not is sent again.
//!
//! # Invariants
//! - The client's copy applied exactly the orders the cluster decided, in the same order: at
//!   the end every replica's digest equals the copy's.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mu_apps::orderbook::{orderflow::Generator, OrderBook, Reply};
use mu_nostd::StateMachine;

use crate::app::{answer_word, Application};
use crate::cluster::{Cluster, Fault};
use crate::demo::{cluster_config, deployment_for, DemoOptions};
use crate::port::{Outcome, Stat};

/// Resting orders a replica's book holds.
pub const ORDERS: usize = 16384;
/// Price levels per side.
pub const LEVELS: usize = 1024;

/// The book every replica of `--app orderbook` hosts.
pub type Book = OrderBook<ORDERS, LEVELS>;

impl Application for Book {
    fn digest(&self) -> u64 {
        OrderBook::digest(self)
    }
}

/// An empty book on the heap, built on a thread with room for it on its stack (a book of this
/// size would overflow a default thread's stack on its way to the heap in a debug build).
pub fn new_book() -> Box<Book> {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(|| Box::new(Book::new()))
        .expect("a thread to build the book")
        .join()
        .expect("the book builds")
}

/// The seed of the demo's order flow.
const SEED: u64 = 0x4D55_424F_4F4B;

/// `mu demo --app orderbook`.
pub fn demo(options: &DemoOptions) -> Result<(), String> {
    let config = cluster_config(
        options.replicas,
        32,
        options.polling,
        options.read_period_us,
    );
    let name = format!("book-{}", std::process::id());
    let deployment = deployment_for(&name, config, options);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let args = ["--app".to_string(), "orderbook".to_string()];
    let mut cluster =
        Cluster::start_with_args(&exe, &deployment, &args).map_err(|e| e.to_string())?;
    println!(
        "mu demo --app orderbook: {} replicas as processes over shared memory, a seeded order \
         flow (limit, IOC, market, cancel, replace), one order at a time; the client keeps an \
         unreplicated copy of the book; cluster directory {}",
        options.replicas,
        cluster.dir().display()
    );
    // The client's loop keeps a book of its own: on a thread with room for it.
    let duration = Duration::from_secs_f64(options.duration_s);
    let outcome = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn_scoped(scope, || drive(&mut cluster, duration))
            .expect("the client's thread")
            .join()
            .unwrap_or_else(|_| Err("the client panicked".into()))
    });
    let result = outcome.and_then(|run| run.conclude(&cluster));
    if result.is_err() {
        for id in 0..cluster.replicas() {
            eprintln!("--- replica {id}:\n{}", cluster.log_tail(id));
        }
    }
    cluster.shutdown();
    result
}

/// What the client saw.
struct Run {
    book: Box<Book>,
    orders: u64,
    fills: u64,
    latency: Histogram<u64>,
    killed: Option<u8>,
    fail_over: Option<Duration>,
    resent: u64,
    settled_by_position: u64,
}

fn drive(cluster: &mut Cluster, duration: Duration) -> Result<Run, String> {
    let mut run = Run {
        book: new_book(),
        orders: 0,
        fills: 0,
        latency: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static bounds"),
        killed: None,
        fail_over: None,
        resent: 0,
        settled_by_position: 0,
    };
    let mut generator = Generator::new(SEED);
    let mut leader = cluster
        .await_settled(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut killed_at = None;
    let mut bytes = [0u8; 64];
    let mut reply = vec![0u8; 4096];
    let mut seq = 0u64;
    while started.elapsed() < duration {
        // Halfway, the leader is killed with this order in flight.
        let kill = killed_at.is_none() && started.elapsed() >= duration / 2;
        let command = generator.next_command();
        let len = command.encode(&mut bytes);
        let mut sent = Instant::now();
        let answer = loop {
            seq += 1;
            let pushed = cluster
                .port(leader)
                .is_some_and(|port| port.push_request(seq, &bytes[..len]));
            if pushed && kill && killed_at.is_none() {
                run.killed = Some(leader);
                killed_at = Some(Instant::now());
                cluster.kill(leader);
            }
            match pushed
                .then(|| await_response(cluster, leader, seq))
                .flatten()
            {
                Some((Outcome::Committed, answer)) => break answer,
                _ => {
                    // The leader died or stepped down: was the order decided?
                    leader = cluster
                        .await_settled(Duration::from_secs(30))
                        .map_err(|e| e.to_string())?;
                    let applied = cluster.port(leader).map_or(0, |p| p.get(Stat::Applied));
                    if applied > run.orders {
                        run.settled_by_position += 1;
                        break None;
                    }
                    run.resent += 1;
                    sent = Instant::now();
                }
            }
        };
        let n = run.book.apply(run.orders, &bytes[..len], &mut reply);
        if let Some(answer) = answer {
            if answer != answer_word(&reply[..n]) {
                return Err(format!(
                    "order {}: the leader answered otherwise than the copy",
                    run.orders
                ));
            }
        }
        run.latency
            .saturating_record(sent.elapsed().as_nanos().max(1) as u64);
        if let (Some(at), None) = (killed_at, run.fail_over) {
            run.fail_over = Some(at.elapsed());
        }
        let decoded = Reply::decode(&reply[..n]).map_err(|e| format!("a reply: {e:?}"))?;
        run.fills += decoded.fills().len() as u64 + u64::from(decoded.unlisted());
        generator.observe(&command, &decoded);
        run.orders += 1;
    }
    Ok(run)
}

/// The response to request `seq` from `leader`'s port, or `None` when the leader died or a
/// response does not come within a second.
fn await_response(cluster: &Cluster, leader: u8, seq: u64) -> Option<(Outcome, Option<u64>)> {
    let deadline = Instant::now() + Duration::from_secs(1);
    let port = cluster.port(leader)?;
    while Instant::now() < deadline {
        match port.take_response() {
            Some(response) if response.seq == seq => {
                return Some((response.outcome, Some(response.answer())))
            }
            Some(_) => {}
            None if cluster.pid(leader).is_none() => return None,
            None => std::hint::spin_loop(),
        }
    }
    None
}

impl Run {
    /// Waits for every live replica to apply every order, compares their books with the copy,
    /// and prints the run.
    fn conclude(self, cluster: &Cluster) -> Result<(), String> {
        let digest = self.book.digest();
        let deadline = Instant::now() + Duration::from_secs(30);
        for id in cluster.live() {
            let port = cluster.port(id).ok_or("a live replica has a port")?;
            while port.digest().1 < self.orders {
                if Instant::now() > deadline {
                    return Err(format!("replica {id} did not apply {} orders", self.orders));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let (theirs, at) = port.digest();
            if at == self.orders && theirs != digest {
                return Err(format!(
                    "replica {id}'s book differs from the client's copy"
                ));
            }
        }
        let micros = |q: f64| self.latency.value_at_quantile(q) as f64 / 1e3;
        println!(
            "orders {}, fills {}, resting at the end {}; submit to acknowledgement p50 {:.1} µs, \
             p99 {:.1} µs, p99.9 {:.1} µs",
            self.orders,
            self.fills,
            self.book.resting(),
            micros(0.5),
            micros(0.99),
            micros(0.999)
        );
        if let (Some(killed), Some(fail_over)) = (self.killed, self.fail_over) {
            println!(
                "leader {killed} killed ({}) halfway: the next order was acknowledged {:.1} ms \
                 after the kill; orders of unknown outcome settled by the new leader's position \
                 {}, sent again {}",
                Fault::Kill.signal_name(),
                fail_over.as_secs_f64() * 1e3,
                self.settled_by_position,
                self.resent
            );
        }
        println!(
            "every live replica's book equals the client's unreplicated copy (digest {digest:#x})"
        );
        Ok(())
    }
}
