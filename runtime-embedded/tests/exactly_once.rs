//! Exactly-once through a fail-over: three firmware replicas host a tally (increments: applied
//! twice, a command shows) inside `ExactlyOnce`, and one client submits through whichever
//! replica leads, with one session ([`Sessions`]). The leader is killed while requests it took
//! are decided but unanswered; the client moves to the next leader and sends what it has not
//! settled again, with the same envelopes. Every replica must then hold exactly one application
//! of each command the client built; with the retries sent around the session (as plain
//! commands), the same run applies some twice, and the check says so.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::{window_for, Cluster};
use mu_apps::session::{decode, encode_plain, Envelope as Decoded, ExactlyOnce, ReadOnly};
use mu_nostd::hash::Hasher;
use mu_nostd::{Config, Shared, StateMachine, Ticket};
use runtime_embedded::permissions::Permissions;
use runtime_embedded::sessions::{Envelope, SessionCounts, Sessions};
use runtime_embedded::telemetry::{self, control};
use runtime_embedded::words::Words;
use runtime_embedded::{Application, Step, Workload};

const COUNTERS: usize = 4;
const INCREMENT_BYTES: usize = 5;
const WINDOW: usize = 8;

/// Counters that commands add to: `counter u8 | amount u32` (little-endian); the reply is the
/// counter's new value. Anything else changes nothing but is counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Tally {
    counters: [u64; COUNTERS],
    increments: u64,
    ignored: u64,
}

impl StateMachine for Tally {
    fn apply(&mut self, _position: u64, command: &[u8], response: &mut [u8]) -> usize {
        let Ok(command) = <[u8; INCREMENT_BYTES]>::try_from(command) else {
            self.ignored += 1;
            return 0;
        };
        let counter = usize::from(command[0]) % COUNTERS;
        let amount = u32::from_le_bytes([command[1], command[2], command[3], command[4]]);
        self.counters[counter] += u64::from(amount);
        self.increments += 1;
        let answer = self.counters[counter].to_le_bytes();
        let len = answer.len().min(response.len());
        response[..len].copy_from_slice(&answer[..len]);
        len
    }
}

impl ReadOnly for Tally {}

impl Application for Tally {
    fn digest(&self) -> u64 {
        self.counters
            .iter()
            .fold(Hasher::new(0x0054_414C_4C59), |h, &c| h.word(c))
            .word(self.increments)
            .word(self.ignored)
            .finish()
    }
}

type Table = ExactlyOnce<Tally, 8, WINDOW, 8>;

/// The client's commands: increment `n` adds `n + 1` to counter `n % COUNTERS`.
struct Increments {
    next: u64,
}

fn increment(n: u64) -> [u8; INCREMENT_BYTES] {
    let mut command = [0u8; INCREMENT_BYTES];
    command[0] = (n % COUNTERS as u64) as u8;
    command[1..].copy_from_slice(&(n as u32 + 1).to_le_bytes());
    command
}

impl Workload<Tally> for Increments {
    type Command = [u8; INCREMENT_BYTES];

    fn command(&self) -> [u8; INCREMENT_BYTES] {
        increment(self.next)
    }

    fn advance(&mut self, _ticket: Ticket) {
        self.next += 1;
    }

    /// Each of the first `submitted` increments applied once: increments commute, so the
    /// order the retries put them in does not matter.
    fn check(&self, tally: &Tally, submitted: u64) -> bool {
        let mut expected = Tally::default();
        for n in 0..submitted {
            expected.apply(n, &increment(n), &mut []);
        }
        *tally == expected
    }
}

/// One client, outside the replicas: it talks to the replica that leads.
struct Client {
    sessions: Sessions<Increments, WINDOW, INCREMENT_BYTES>,
    /// The replica it talks to.
    at: Option<u8>,
    /// Send every request as a plain command instead (retries bypass the session).
    bypass: bool,
}

/// Replica `id`'s end of the client: only a replica on the fast path asks for commands, so the
/// first one that asks after another took the client over (a fail-over).
struct Handle {
    id: u8,
    client: Rc<RefCell<Client>>,
}

impl Handle {
    fn claim(&self) {
        let mut client = self.client.borrow_mut();
        if client.at != Some(self.id) {
            client.sessions.fail_over();
            client.at = Some(self.id);
        }
    }

    fn mine(&self) -> bool {
        self.client.borrow().at == Some(self.id)
    }
}

impl Workload<Table> for Handle {
    type Command = Envelope;

    fn command(&self) -> Envelope {
        self.claim();
        let client = self.client.borrow();
        let envelope = Workload::<Table>::command(&client.sessions);
        match decode(envelope.as_ref()) {
            Ok(Decoded::Request { payload, .. }) if client.bypass => {
                let mut plain = [0u8; 64];
                let len = encode_plain(&mut plain, payload).unwrap();
                Envelope::from_bytes(&plain[..len]).unwrap()
            }
            _ => envelope,
        }
    }

    fn waiting(&self) -> bool {
        self.claim();
        Workload::<Table>::waiting(&self.client.borrow().sessions)
    }

    fn advance(&mut self, ticket: Ticket) {
        assert!(
            self.mine(),
            "the replica that took the command asked for it"
        );
        Workload::<Table>::advance(&mut self.client.borrow_mut().sessions, ticket);
    }

    fn committed(&mut self, ticket: Ticket, position: u64, response: &[u8]) {
        if self.mine() {
            let sessions = &mut self.client.borrow_mut().sessions;
            Workload::<Table>::committed(sessions, ticket, position, response);
        }
    }

    fn dropped(&mut self, ticket: Ticket) {
        if self.mine() {
            Workload::<Table>::dropped(&mut self.client.borrow_mut().sessions, ticket);
        }
    }

    fn check(&self, table: &Table, submitted: u64) -> bool {
        Workload::<Table>::check(&self.client.borrow().sessions, table, submitted)
    }
}

/// What a run ended with: the client's counts, and whether every survivor holds one
/// application of each increment the client built.
struct Outcome {
    counts: SessionCounts,
    unsettled: usize,
    exactly_once: bool,
    twice: bool,
}

/// Three replicas, one client (its requests bypassing the session when `bypass`); the leader
/// is killed once it committed 200 commands, while the client has half a window unanswered; the
/// next leader goes on for 200 more.
fn run(bypass: bool) -> Outcome {
    let config = Config::new(3);
    let backing = window_for(&config);
    let window = Words::new(&backing);
    let shared: Vec<Shared> = (0..3).map(|_| Shared::new()).collect();
    let permissions: Vec<Permissions> = (0..3).map(|_| Permissions::new()).collect();
    let client = Rc::new(RefCell::new(Client {
        sessions: Sessions::new(Increments { next: 0 }),
        at: None,
        bypass,
    }));
    let host = |id: u8| {
        let handle = Handle {
            id,
            client: client.clone(),
        };
        (Table::new(Tally::default()), handle)
    };
    let mut cluster = Cluster::start(config, window, &shared, &permissions, host);
    telemetry::set_control_word(window, control::START, 1);
    // Admitted, the survivors may elect one of them.
    cluster.until(
        "a leader committing 200 commands, every replica a voter",
        |c| c.reports().iter().all(|r| r.voter) && c.leader_committed(200).is_some(),
    );
    // Kill it while requests it took are unanswered: the window fabric writes a slot into the
    // followers' logs in the step that takes the command, and the leader hears the completions
    // only in a later one, so some of them are decided (the next leader recovers them) and the
    // client cannot know which. (The followers apply only after the leader committed, so their
    // state cannot show it before the kill; the duplicates after it do.)
    cluster.until("requests the leader has not answered", |_| {
        client.borrow().sessions.unsettled() >= WINDOW / 2
    });
    let old = cluster.leader().unwrap();
    cluster.alive[old] = false;
    cluster.until("a new leader committing 200 commands", |c| {
        c.leader_committed(200).is_some_and(|l| l != old)
    });
    telemetry::set_control_word(window, control::STOP, 1);
    cluster.converge("the survivors to converge");
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let client = client.borrow();
    let built = client.sessions.counts().requests;
    let holds = |n: u64| {
        survivors.iter().all(|&i| {
            let tally = cluster.replicas[i].app().inner();
            let mut expected = Tally::default();
            (0..n).for_each(|k| {
                expected.apply(k, &increment(k), &mut []);
            });
            tally.counters == expected.counters
        })
    };
    let digests: Vec<u64> = cluster.reports().iter().map(|r| r.digest).collect();
    assert!(digests.iter().all(|&d| d == digests[0]), "{digests:x?}");
    let twice = survivors
        .iter()
        .any(|&i| cluster.replicas[i].app().inner().increments > built);
    let outcome = Outcome {
        counts: client.sessions.counts(),
        unsettled: client.sessions.unsettled(),
        exactly_once: holds(built)
            && survivors
                .iter()
                .all(|&i| cluster.replicas[i].app().inner().increments == built),
        twice,
    };
    drop(client);
    telemetry::set_control_word(window, control::FINISH, 1);
    assert!(cluster.round().iter().all(|s| *s == Step::Finish));
    outcome
}

#[test]
fn a_leader_killed_with_requests_in_flight_applies_each_once() {
    let outcome = run(false);
    let counts = outcome.counts;
    assert_eq!(outcome.unsettled, 0, "{counts:?}");
    assert!(outcome.exactly_once, "{counts:?}");
    // The retries met requests the old leader had decided: the case that needs the session.
    assert!(counts.retries > 0 && counts.duplicates > 0, "{counts:?}");
    assert_eq!(counts.registered, 1, "one session, carried over");
    assert_eq!((counts.unknown, counts.unexpected), (0, 0), "{counts:?}");
}

#[test]
fn retries_around_the_session_apply_some_commands_twice() {
    let outcome = run(true);
    assert!(outcome.counts.retries > 0, "{:?}", outcome.counts);
    assert!(outcome.twice, "{:?}", outcome.counts);
    assert!(!outcome.exactly_once);
}
