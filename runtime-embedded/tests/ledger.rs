//! A second application through the same firmware: a tiny ledger of a few accounts, hosted by
//! the same `Firmware` over the same window fabric as the setpoint table in `cluster.rs` (three
//! replicas in one process on one shared window), with its own workload and self-test verdict.
//! Nothing in the runtime knows it.
//!
//! A command moves money: `from u8 | to u8 | amount u16` (4 bytes, little-endian). A payment
//! the payer cannot cover, or a malformed command, is refused (and counted): the replicas still
//! agree on it. The money in the ledger never changes.

mod common;

use common::{window_for, Cluster, ROUNDS_MAX};
use mu_nostd::hash::Hasher;
use mu_nostd::{Config, Shared, StateMachine, SubmitError, Ticket};
use runtime_embedded::permissions::Permissions;
use runtime_embedded::telemetry::{self, control};
use runtime_embedded::words::Words;
use runtime_embedded::{Application, Firmware, Step, Workload};

const ACCOUNTS: usize = 4;
const OPENING: u64 = 1_000;
const PAYMENT_BYTES: usize = 4;

/// The replicated ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ledger {
    balances: [u64; ACCOUNTS],
    /// Payments refused: unfunded or malformed.
    refused: u64,
}

impl Ledger {
    fn new(opening: u64) -> Ledger {
        Ledger {
            balances: [opening; ACCOUNTS],
            refused: 0,
        }
    }
}

impl StateMachine for Ledger {
    fn apply(&mut self, _position: u64, command: &[u8], response: &mut [u8]) -> usize {
        let total: u64 = self.balances.iter().sum();
        let payment = <[u8; PAYMENT_BYTES]>::try_from(command).ok();
        let (from, to) = payment.map_or((ACCOUNTS, ACCOUNTS), |p| (p[0].into(), p[1].into()));
        let amount = payment.map_or(0, |p| u64::from(u16::from_le_bytes([p[2], p[3]])));
        let paid = from < ACCOUNTS && to < ACCOUNTS && self.balances[from] >= amount;
        if paid {
            self.balances[from] -= amount;
            self.balances[to] += amount;
        } else {
            self.refused += 1;
        }
        assert_eq!(
            self.balances.iter().sum::<u64>(),
            total,
            "money moved, none made"
        );
        match response.first_mut() {
            Some(answer) => {
                *answer = u8::from(paid);
                1
            }
            None => 0,
        }
    }
}

impl Application for Ledger {
    fn digest(&self) -> u64 {
        self.balances
            .iter()
            .fold(Hasher::new(0x4C45_4447_4552), |h, &b| h.word(b))
            .word(self.refused)
            .finish()
    }
}

/// Replica `origin`'s payments: a fixed pseudo-random walk, some of it unfunded.
struct Payments {
    origin: u8,
    next: u64,
}

impl Payments {
    fn new(origin: u8) -> Payments {
        Payments { origin, next: 0 }
    }

    fn advance(&mut self) {
        self.next += 1;
    }
}

impl Workload<Ledger> for Payments {
    type Command = [u8; PAYMENT_BYTES];

    fn command(&self) -> [u8; PAYMENT_BYTES] {
        let n = self.next.wrapping_add(u64::from(self.origin) << 32);
        let mix = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
        let amount = (mix % 1_500) as u16;
        let [low, high] = amount.to_le_bytes();
        [(mix % 4) as u8, (mix / 4 % 4) as u8, low, high]
    }

    fn advance(&mut self, _ticket: Ticket) {
        Payments::advance(self);
    }

    fn check(&self, ledger: &Ledger, submitted: u64) -> bool {
        let mut replay = Payments::new(self.origin);
        let mut expected = Ledger::new(OPENING);
        for position in 0..submitted {
            expected.apply(position, &replay.command(), &mut []);
            replay.advance();
        }
        *ledger == expected
    }
}

fn ledger(id: u8) -> (Ledger, Payments) {
    (Ledger::new(OPENING), Payments::new(id))
}

#[test]
fn three_replicas_of_a_ledger_agree_before_and_after_a_fail_over() {
    let config = Config::new(3);
    let backing = window_for(&config);
    let window = Words::new(&backing);
    let shared: Vec<Shared> = (0..3).map(|_| Shared::new()).collect();
    let permissions: Vec<Permissions> = (0..3).map(|_| Permissions::new()).collect();
    let mut cluster = Cluster::start(config, window, &shared, &permissions, ledger);
    telemetry::set_control_word(window, control::START, 1);

    // All three, through the first leader.
    cluster.until("a leader committing 400 payments", |c| {
        c.leader_committed(400).is_some()
    });
    let old = cluster.leader().unwrap();
    telemetry::set_control_word(window, control::STOP, 1);
    cluster.converge("all three to converge");
    let first = cluster.replicas[0].app().clone();
    assert!(cluster.replicas.iter().all(|f| *f.app() == first));
    let reports = cluster.reports();
    assert!(reports.iter().all(|r| r.digest == first.digest()));
    assert_eq!(
        first.balances.iter().sum::<u64>(),
        ACCOUNTS as u64 * OPENING
    );
    let committed = reports[old].committed;
    assert!(reports[old].applied >= committed && committed >= 400);
    // The walk must have both paid and refused, or agreement on either would go untested.
    assert!(first.refused > 0 && first.refused < committed, "{first:?}");
    assert_ne!(first, Ledger::new(OPENING));

    // The leader dies; a new one continues; the survivors agree.
    cluster.alive[old] = false;
    telemetry::set_control_word(window, control::STOP, 0);
    cluster.until("a new leader committing 300 payments", |c| {
        c.leader_committed(300).is_some_and(|l| l != old)
    });
    telemetry::set_control_word(window, control::STOP, 1);
    cluster.converge("the survivors to converge");
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let last = cluster.replicas[survivors[0]].app().clone();
    assert_eq!(*cluster.replicas[survivors[1]].app(), last);
    assert_ne!(last, first, "the new leader's payments were applied");
    let reports = cluster.reports();
    assert!(reports.iter().all(|r| r.digest == last.digest()));
    assert_eq!(last.balances.iter().sum::<u64>(), ACCOUNTS as u64 * OPENING);

    telemetry::set_control_word(window, control::FINISH, 1);
    assert!(cluster.round().iter().all(|s| *s == Step::Finish));
}

/// A single replica hosting a ledger opened with `opening`, self-testing 300
/// payments; returns it finished.
fn self_test<'w>(
    window: Words<'w>,
    shared: &'w Shared,
    permissions: &'w Permissions,
    opening: u64,
) -> Firmware<'w, Ledger, Payments> {
    let config = Config::new(1);
    let (app, payments) = (Ledger::new(opening), Payments::new(0));
    let mut firmware = Firmware::new(config, 0, window, shared, permissions, app, payments)
        .unwrap()
        .self_test(300);
    let mut now = 0;
    while firmware.step(now) == Step::Running {
        now += 1;
        assert!(now < ROUNDS_MAX, "the self-test did not finish");
    }
    firmware
}

#[test]
fn the_ledgers_self_test_passes_and_can_fail() {
    let backing = window_for(&Config::new(1));
    let (shared, permissions) = (Shared::new(), Permissions::new());
    let firmware = self_test(Words::new(&backing), &shared, &permissions, OPENING);
    assert_eq!(firmware.submitted(), 300);
    assert_eq!(firmware.report().committed, 300);
    assert!(firmware.self_check());

    // Opened with other balances than the workload's replay: the same payments end elsewhere.
    let backing = window_for(&Config::new(1));
    let (shared, permissions) = (Shared::new(), Permissions::new());
    let firmware = self_test(Words::new(&backing), &shared, &permissions, OPENING + 1);
    assert_eq!(firmware.report().committed, 300);
    assert!(!firmware.self_check());
}

/// A workload whose every command is empty: the core never takes it.
struct Empty;

impl Workload<Ledger> for Empty {
    type Command = [u8; 0];

    fn command(&self) -> [u8; 0] {
        []
    }

    fn advance(&mut self, _ticket: Ticket) {
        unreachable!("the core took an empty command");
    }

    fn check(&self, _ledger: &Ledger, _submitted: u64) -> bool {
        true
    }
}

#[test]
fn a_command_the_core_refuses_for_good_stops_the_workload_not_the_replica() {
    let config = Config::new(1);
    let backing = window_for(&config);
    let (shared, permissions) = (Shared::new(), Permissions::new());
    let app = Ledger::new(OPENING);
    let window = Words::new(&backing);
    let mut firmware = Firmware::new(config, 0, window, &shared, &permissions, app, Empty)
        .unwrap()
        .self_test(10);
    let mut now = 0;
    while firmware.step(now) == Step::Running {
        now += 1;
        assert!(now < ROUNDS_MAX, "the self-test did not end");
    }
    assert_eq!(firmware.refused(), Some(SubmitError::Empty));
    assert_eq!(firmware.submitted(), 0);
    assert!(
        !firmware.self_check(),
        "a refused workload fails the self-test"
    );
    assert_eq!(*firmware.app(), Ledger::new(OPENING));
}
