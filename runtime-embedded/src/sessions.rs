//! Exactly-once commands for a firmware application: the application runs inside
//! [`mu_apps::session::ExactlyOnce`] (the replicated session table, see that module), and its
//! workload submits through [`Sessions`], the client side of one session.
//!
//! [`Sessions`] wraps any [`Workload`] of the application (the payloads) and turns its commands
//! into envelopes: it registers a session first (the id comes back in the `Registered` reply,
//! through [`Workload::committed`]), then sends each payload as a request built by
//! [`Session::request`], keeps it until its reply settles it, and sends a request whose ticket
//! was dropped (this replica stopped leading before it was decided, so it may or may not have
//! been) again with [`Session::retry`]: the same envelope, which the table answers from its
//! cache when the first one was decided. A client that moves to another leader (a harness's
//! client that outlives the replica it talked to) calls [`Sessions::fail_over`] and everything
//! unsettled is sent again the same way.
//!
//! # Where the bookkeeping lives, and why the workload
//!
//! The session is the client's: which payloads are unsettled, and their bytes for a retry, are
//! the workload's knowledge, sized by the workload's own commands (`PAYLOAD`), and must outlive
//! a replica when the client does (the 3-replica test's client continues on the next leader).
//! The runtime's `Hosted` stays a forwarder that counts; all the runtime adds is the route:
//! the ticket of each command taken ([`Workload::advance`]), and the leader's replies and drops
//! ([`Workload::committed`], [`Workload::dropped`]), handed to the workload during the same poll
//! in which the core hands them to the application. An application without sessions pays
//! nothing for it.
//!
//! # Ordering
//!
//! Retries go first, lowest sequence first, then new requests: a retried request can be applied
//! after a later one. Exactly-once is about how many times, not in which order; an application
//! whose commands must apply in the order built keeps the window at 1.
//!
//! # Invariants
//! - Every used flight is a request built and not settled: its `seq` is in the session's
//!   window (`acked <= seq < next`), flights' sequence numbers are distinct, and at most
//!   `WINDOW` are used (the session refuses to build past its window, which is the table's).
//! - A flight holds a ticket only while the core has its envelope: from `advance` to that
//!   ticket's `committed` or `dropped` (or a fail-over). A flight without one is sent again,
//!   always with [`Session::retry`], never as a new request: so a payload is applied at most
//!   once while the session lives.
//! - A Register is in flight (`registering`) only while there is no session.
//! - `command` is a pure function of the state: what `advance` records is what was sent.

use mu_apps::session::{
    decode_reply, encode_register, encode_request, ExactlyOnce, ReadOnly, Refusal, Reply, Session,
    REQUEST_HEADER_BYTES,
};
use mu_nostd::hash::Hasher;
use mu_nostd::Ticket;

use crate::app::{Application, Workload};

/// The longest envelope [`Sessions`] sends (a request's header and its payload).
pub const ENVELOPE_MAX: usize = 256;
/// The longest payload [`Sessions`] holds for a retry: `PAYLOAD` is at most this.
pub const PAYLOAD_MAX: usize = ENVELOPE_MAX - REQUEST_HEADER_BYTES;

const DIGEST_DOMAIN: u64 = 0x4558_4F4E_4345_4657; // "EXONCEFW"

/// The session table is part of the replicated state: its digest joins the application's.
impl<A, const CLIENTS: usize, const WINDOW: usize, const REPLY: usize> Application
    for ExactlyOnce<A, CLIENTS, WINDOW, REPLY>
where
    A: Application + ReadOnly,
{
    fn digest(&self) -> u64 {
        Hasher::new(DIGEST_DOMAIN)
            .word(self.table_digest())
            .word(self.inner().digest())
            .finish()
    }
}

/// An envelope [`Sessions`] hands the runtime. Empty when the wrapped workload's payload cannot
/// be sent (empty, or longer than `PAYLOAD`): the core refuses an empty command for good, so
/// the runtime stops submitting and says so on the console.
#[derive(Clone, Copy)]
pub struct Envelope {
    bytes: [u8; ENVELOPE_MAX],
    len: usize,
}

impl Envelope {
    const EMPTY: Envelope = Envelope {
        bytes: [0; ENVELOPE_MAX],
        len: 0,
    };
}

impl Envelope {
    /// An envelope of these bytes (a harness's own command); `None` when longer than
    /// [`ENVELOPE_MAX`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Envelope> {
        let mut envelope = Envelope::EMPTY;
        envelope
            .bytes
            .get_mut(..bytes.len())?
            .copy_from_slice(bytes);
        envelope.len = bytes.len();
        Some(envelope)
    }
}

impl AsRef<[u8]> for Envelope {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// What a session client saw (its own record, not replicated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SessionCounts {
    /// Sessions registered (one, unless the table expired one).
    pub registered: u64,
    /// Payloads of the wrapped workload sent as new requests.
    pub requests: u64,
    /// Requests settled by an `Applied` reply.
    pub applied: u64,
    /// Requests settled by a `Duplicate` reply: a retry of one decided before.
    pub duplicates: u64,
    /// Retries sent ([`Session::retry`]).
    pub retries: u64,
    /// Tickets the core dropped (each sent again).
    pub dropped: u64,
    /// Requests settled without knowing whether they were applied (`Stale`), or whose session
    /// expired while they were unsettled: neither happens while the table keeps the window.
    pub unknown: u64,
    /// Replies that were not a session's (a bug, or another wrapper): the request is settled.
    pub unexpected: u64,
}

/// What the client sends next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Register,
    /// The flight at this index, again.
    Retry(usize),
    /// The wrapped workload's next payload, as a new request.
    Request,
    /// Nothing until a reply.
    Wait,
}

/// A request built and not settled.
#[derive(Clone, Copy)]
struct Flight<const PAYLOAD: usize> {
    used: bool,
    seq: u64,
    /// The core has its envelope under this ticket; `None`: to be sent again.
    ticket: Option<Ticket>,
    len: usize,
    payload: [u8; PAYLOAD],
}

impl<const PAYLOAD: usize> Flight<PAYLOAD> {
    const FREE: Flight<PAYLOAD> = Flight {
        used: false,
        seq: 0,
        ticket: None,
        len: 0,
        payload: [0; PAYLOAD],
    };

    fn payload(&self) -> &[u8] {
        &self.payload[..self.len]
    }
}

/// A workload `W` of an application, submitted through one exactly-once session of the table
/// `ExactlyOnce<A, CLIENTS, WINDOW, REPLY>` (see the module doc): at most `WINDOW` requests
/// unsettled (the table's window, so no reply the client still needs is pushed out), each
/// payload at most `PAYLOAD` bytes (kept for a retry).
pub struct Sessions<W, const WINDOW: usize, const PAYLOAD: usize> {
    inner: W,
    session: Option<Session>,
    /// The ticket of the Register in flight.
    registering: Option<Ticket>,
    flights: [Flight<PAYLOAD>; WINDOW],
    counts: SessionCounts,
}

impl<W, const WINDOW: usize, const PAYLOAD: usize> Sessions<W, WINDOW, PAYLOAD> {
    const GEOMETRY: () = {
        assert!(WINDOW > 0 && WINDOW as u64 <= mu_apps::session::SESSION_IN_FLIGHT_MAX);
        assert!(PAYLOAD > 0 && PAYLOAD <= PAYLOAD_MAX);
    };

    /// `inner`'s commands through a session, none registered yet.
    pub const fn new(inner: W) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::GEOMETRY;
        Sessions {
            inner,
            session: None,
            registering: None,
            flights: [Flight::FREE; WINDOW],
            counts: SessionCounts {
                registered: 0,
                requests: 0,
                applied: 0,
                duplicates: 0,
                retries: 0,
                dropped: 0,
                unknown: 0,
                unexpected: 0,
            },
        }
    }

    /// The wrapped workload.
    pub fn inner(&self) -> &W {
        &self.inner
    }

    /// The session, once registered.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// What this client saw.
    pub fn counts(&self) -> SessionCounts {
        self.counts
    }

    /// Requests built and not settled.
    pub fn unsettled(&self) -> usize {
        self.flights.iter().filter(|f| f.used).count()
    }

    /// The client now talks to another leader: every unsettled request is sent again (with
    /// [`Session::retry`]) and a Register in flight is forgotten (a retried Register opens a
    /// second session, which the table evicts in time). Replies to the tickets of the leader
    /// left behind must not be handed in afterwards: its tickets mean nothing here any more.
    pub fn fail_over(&mut self) {
        self.registering = None;
        for flight in self.flights.iter_mut().filter(|f| f.used) {
            flight.ticket = None;
        }
    }

    fn flight_of(&self, ticket: Ticket) -> Option<usize> {
        let found = self
            .flights
            .iter()
            .position(|f| f.used && f.ticket == Some(ticket));
        debug_assert!(found.is_none_or(|i| self.flights[i + 1..]
            .iter()
            .all(|f| !f.used || f.ticket != Some(ticket))));
        found
    }

    fn next(&self) -> Next {
        let Some(session) = &self.session else {
            debug_assert!(self.flights.iter().all(|f| !f.used));
            return match self.registering {
                None => Next::Register,
                Some(_) => Next::Wait,
            };
        };
        debug_assert!(self.registering.is_none());
        let retry = (0..WINDOW)
            .filter(|&i| self.flights[i].used && self.flights[i].ticket.is_none())
            .min_by_key(|&i| self.flights[i].seq);
        match retry {
            Some(i) => Next::Retry(i),
            None if session.in_flight() < WINDOW as u64 => Next::Request,
            None => Next::Wait,
        }
    }

    /// Settles the flight at `index`.
    fn settle(&mut self, index: usize) {
        let flight = &mut self.flights[index];
        debug_assert!(flight.used);
        let seq = flight.seq;
        *flight = Flight::FREE;
        if let Some(session) = &mut self.session {
            session.settle(seq);
        }
        self.check();
    }

    /// The table forgot the session: whatever was unsettled may or may not have been applied,
    /// and a new session cannot tell (its sequence numbers start again), so it is written off.
    fn expire(&mut self) {
        let lost = self.unsettled() as u64;
        self.counts.unknown += lost;
        self.flights = [Flight::FREE; WINDOW];
        self.session = None;
        self.registering = None;
    }

    fn check(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let used = self.flights.iter().filter(|f| f.used);
        match &self.session {
            None => debug_assert_eq!(used.count(), 0),
            Some(session) => {
                for (i, flight) in self.flights.iter().enumerate().filter(|(_, f)| f.used) {
                    debug_assert!(session.acked() <= flight.seq && flight.seq < session.next_seq());
                    debug_assert!(flight.len <= PAYLOAD);
                    debug_assert!(self.flights[i + 1..]
                        .iter()
                        .all(|f| !f.used || f.seq != flight.seq));
                }
                debug_assert!(self.unsettled() as u64 <= session.in_flight());
                debug_assert!(session.in_flight() <= WINDOW as u64);
            }
        }
    }
}

impl<A, W, const CLIENTS: usize, const WINDOW: usize, const REPLY: usize, const PAYLOAD: usize>
    Workload<ExactlyOnce<A, CLIENTS, WINDOW, REPLY>> for Sessions<W, WINDOW, PAYLOAD>
where
    A: Application + ReadOnly,
    W: Workload<A>,
{
    type Command = Envelope;

    fn command(&self) -> Envelope {
        let mut envelope = Envelope::EMPTY;
        let out = &mut envelope.bytes;
        let len = match (self.next(), &self.session) {
            (Next::Register, _) => encode_register(out),
            (Next::Retry(i), Some(session)) => {
                let flight = &self.flights[i];
                session.retry(flight.seq, flight.payload(), out).ok()
            }
            (Next::Request, Some(session)) => {
                let payload = self.inner.command();
                let payload = payload.as_ref();
                (!payload.is_empty() && payload.len() <= PAYLOAD)
                    .then(|| {
                        let (client, seq) = (session.client(), session.next_seq());
                        encode_request(out, client, seq, session.acked(), payload)
                    })
                    .flatten()
            }
            (Next::Wait, _) | (_, None) => {
                debug_assert!(false, "the runtime asked for a command while waiting");
                None
            }
        };
        envelope.len = len.unwrap_or(0);
        envelope
    }

    fn waiting(&self) -> bool {
        match self.next() {
            Next::Wait => true,
            Next::Request => self.inner.waiting(),
            Next::Register | Next::Retry(_) => false,
        }
    }

    fn advance(&mut self, ticket: Ticket) {
        debug_assert!(self.flight_of(ticket).is_none() && self.registering != Some(ticket));
        match self.next() {
            Next::Register => self.registering = Some(ticket),
            Next::Retry(i) => {
                self.flights[i].ticket = Some(ticket);
                self.counts.retries += 1;
            }
            Next::Request => {
                let sent = Workload::<ExactlyOnce<A, CLIENTS, WINDOW, REPLY>>::command(self);
                let payload = self.inner.command();
                let payload = payload.as_ref();
                let (Some(session), Some(slot)) =
                    (&mut self.session, self.flights.iter().position(|f| !f.used))
                else {
                    unreachable!("a request is sent only with a session and room in its window");
                };
                let mut built = [0u8; ENVELOPE_MAX];
                // The core took `sent`, so the payload fits (an empty envelope is never taken).
                let Ok((seq, len)) = session.request(payload, &mut built) else {
                    unreachable!("the window had room and the envelope fit");
                };
                debug_assert_eq!(&built[..len], sent.as_ref(), "sent what was recorded");
                let flight = &mut self.flights[slot];
                flight.used = true;
                flight.seq = seq;
                flight.ticket = Some(ticket);
                flight.len = payload.len();
                flight.payload[..payload.len()].copy_from_slice(payload);
                self.counts.requests += 1;
                self.inner.advance(ticket);
            }
            Next::Wait => debug_assert!(false, "the core took a command while waiting"),
        }
        self.check();
    }

    fn committed(&mut self, ticket: Ticket, _position: u64, response: &[u8]) {
        if self.registering == Some(ticket) {
            self.registering = None;
            match decode_reply(response) {
                Ok(Reply::Registered { client }) => {
                    debug_assert!(self.session.is_none());
                    self.session = Some(Session::new(client, WINDOW));
                    self.counts.registered += 1;
                }
                // Registered again next time.
                _ => self.counts.unexpected += 1,
            }
            return;
        }
        let Some(index) = self.flight_of(ticket) else {
            return; // Not this client's (a ticket from before a fail-over).
        };
        match decode_reply(response) {
            Ok(Reply::Applied(_)) => self.counts.applied += 1,
            Ok(Reply::Duplicate(_)) => self.counts.duplicates += 1,
            // Applied once before, its reply too large to keep: settled all the same.
            Ok(Reply::Refused(Refusal::ReplyNotKept)) => self.counts.duplicates += 1,
            Ok(Reply::Refused(Refusal::Stale { .. })) => self.counts.unknown += 1,
            Ok(Reply::Refused(Refusal::Expired)) => return self.expire(),
            Ok(Reply::Registered { .. } | Reply::Unregistered)
            | Ok(Reply::Refused(Refusal::Malformed(_)))
            | Err(_) => self.counts.unexpected += 1,
        }
        self.settle(index);
    }

    fn dropped(&mut self, ticket: Ticket) {
        if self.registering == Some(ticket) {
            self.registering = None;
        } else if let Some(index) = self.flight_of(ticket) {
            self.flights[index].ticket = None;
            self.counts.dropped += 1;
        }
        self.check();
    }

    /// The wrapped workload's verdict on the application inside the table, for the payloads
    /// sent as new requests, with every request settled as applied once (no loss, no write-off).
    fn check(&self, app: &ExactlyOnce<A, CLIENTS, WINDOW, REPLY>, _submitted: u64) -> bool {
        self.unsettled() == 0
            && self.counts.unknown == 0
            && self.counts.unexpected == 0
            && self.inner.check(app.inner(), self.counts.requests)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::setpoints::{
        SessionSetpoints, SessionSweep, Setpoints, Sweep, AXES, SESSION_WINDOW,
    };
    use mu_apps::session::{decode, Envelope as Decoded};
    use mu_nostd::StateMachine;

    type Client = SessionSweep;

    /// The core, reduced to what a client sees: takes a command under the next ticket, decides
    /// it at the next position (applied by the table), or drops it.
    struct Core {
        table: SessionSetpoints,
        position: u64,
        ticket: Ticket,
    }

    impl Core {
        fn new() -> Core {
            Core {
                table: SessionSetpoints::new(Setpoints::new()),
                position: 0,
                ticket: 100,
            }
        }

        /// The client's next command, taken: returns its ticket and bytes.
        fn take(&mut self, client: &mut Client) -> (Ticket, Vec<u8>) {
            assert!(!Workload::<SessionSetpoints>::waiting(client));
            let command = Workload::<SessionSetpoints>::command(client);
            assert!(!command.as_ref().is_empty());
            self.ticket += 1;
            Workload::<SessionSetpoints>::advance(client, self.ticket);
            (self.ticket, command.as_ref().to_vec())
        }

        /// Decides `command`; the client hears the reply of `ticket` unless it is `None`.
        fn decide(&mut self, client: &mut Client, ticket: Option<Ticket>, command: &[u8]) {
            let mut response = [0u8; 64];
            let len = self.table.apply(self.position, command, &mut response);
            if let Some(ticket) = ticket {
                let reply = &response[..len];
                Workload::<SessionSetpoints>::committed(client, ticket, self.position, reply);
            }
            self.position += 1;
        }
    }

    fn registered(core: &mut Core) -> Client {
        let mut client = Client::new(Sweep::new(1));
        let (ticket, register) = core.take(&mut client);
        assert_eq!(decode(&register), Ok(Decoded::Register));
        assert!(
            Workload::<SessionSetpoints>::waiting(&client),
            "until registered"
        );
        core.decide(&mut client, Some(ticket), &register);
        assert_eq!(client.session().map(Session::client), Some(0));
        client
    }

    #[test]
    fn a_dropped_request_is_retried_as_the_same_envelope_and_applied_once() {
        let mut core = Core::new();
        let mut client = registered(&mut core);
        let taken: Vec<_> = (0..3).map(|_| core.take(&mut client)).collect();
        // The first is decided but its leader stops leading before it hears: dropped.
        core.decide(&mut client, None, &taken[0].1);
        Workload::<SessionSetpoints>::dropped(&mut client, taken[0].0);
        // The second is lost for good: dropped, never decided.
        Workload::<SessionSetpoints>::dropped(&mut client, taken[1].0);
        core.decide(&mut client, Some(taken[2].0), &taken[2].1);
        assert_eq!(client.unsettled(), 2);
        // Both retried, lowest first, byte for byte (the acked field may only rise).
        let first = core.take(&mut client);
        let second = core.take(&mut client);
        let request = |bytes: &[u8]| match decode(bytes) {
            Ok(Decoded::Request { seq, payload, .. }) => (seq, payload.to_vec()),
            other => panic!("{other:?}"),
        };
        assert_eq!(request(&first.1), request(&taken[0].1));
        assert_eq!(request(&second.1), request(&taken[1].1));
        core.decide(&mut client, Some(first.0), &first.1);
        core.decide(&mut client, Some(second.0), &second.1);
        let counts = client.counts();
        assert_eq!(
            (counts.duplicates, counts.applied, counts.retries),
            (1, 2, 2)
        );
        assert_eq!(client.unsettled(), 0);
        // Each of the three sweep commands applied once.
        assert_eq!(core.table.inner().applied(), 3);
        assert!(Workload::<SessionSetpoints>::check(&client, &core.table, 0));
    }

    #[test]
    fn the_window_bounds_what_is_unsettled_and_a_fail_over_resends_all_of_it() {
        let mut core = Core::new();
        let mut client = registered(&mut core);
        let taken: Vec<_> = (0..SESSION_WINDOW)
            .map(|_| core.take(&mut client))
            .collect();
        assert!(
            Workload::<SessionSetpoints>::waiting(&client),
            "window full"
        );
        for (_, command) in &taken[..SESSION_WINDOW / 2] {
            core.decide(&mut client, None, command);
        }
        client.fail_over();
        // A reply to a ticket of the leader left behind is not this client's any more.
        core.decide(&mut client, Some(taken[0].0), &taken[0].1);
        assert_eq!(client.unsettled(), SESSION_WINDOW);
        for _ in 0..SESSION_WINDOW {
            let (ticket, command) = core.take(&mut client);
            core.decide(&mut client, Some(ticket), &command);
        }
        let counts = client.counts();
        assert_eq!(counts.duplicates as usize, SESSION_WINDOW / 2);
        assert_eq!(counts.applied as usize, SESSION_WINDOW / 2);
        assert_eq!(core.table.inner().applied() as usize, SESSION_WINDOW);
        assert!(Workload::<SessionSetpoints>::check(&client, &core.table, 0));
        // And it goes on with new requests.
        let (ticket, command) = core.take(&mut client);
        core.decide(&mut client, Some(ticket), &command);
        assert_eq!(client.counts().requests as usize, SESSION_WINDOW + 1);
        assert_eq!(core.table.inner().axis(SESSION_WINDOW % AXES), {
            let mut sweep = Sweep::new(1);
            (0..SESSION_WINDOW).for_each(|_| sweep.advance());
            i32::from_le_bytes(
                Workload::<Setpoints>::command(&sweep)[12..]
                    .try_into()
                    .unwrap(),
            )
        });
    }

    #[test]
    fn an_expired_session_writes_off_what_was_unsettled_and_registers_again() {
        let mut core = Core::new();
        let mut client = registered(&mut core);
        let (ticket, command) = core.take(&mut client);
        // Other clients register until this session is evicted.
        let mut register = [0u8; 2];
        encode_register(&mut register);
        let mut others = Client::new(Sweep::new(2));
        for _ in 0..crate::setpoints::SESSION_CLIENTS {
            core.decide(&mut others, None, &register);
        }
        core.decide(&mut client, Some(ticket), &command);
        assert_eq!(client.session(), None);
        assert_eq!(client.counts().unknown, 1);
        assert!(!Workload::<SessionSetpoints>::check(
            &client,
            &core.table,
            0
        ));
        let (ticket, register) = core.take(&mut client);
        assert_eq!(decode(&register), Ok(Decoded::Register));
        core.decide(&mut client, Some(ticket), &register);
        assert_eq!(client.counts().registered, 2);
    }

    /// A payload the table cannot keep for a retry is never sent: the envelope is empty, which
    /// the core refuses for good.
    struct Long;

    impl Workload<Setpoints> for Long {
        type Command = [u8; 17];
        fn command(&self) -> [u8; 17] {
            [1; 17]
        }
        fn advance(&mut self, _ticket: Ticket) {}
        fn check(&self, _app: &Setpoints, _submitted: u64) -> bool {
            true
        }
    }

    #[test]
    fn a_payload_longer_than_the_client_keeps_is_never_sent() {
        let mut core = Core::new();
        let mut client = Sessions::<Long, SESSION_WINDOW, 16>::new(Long);
        let register = Workload::<SessionSetpoints>::command(&client);
        Workload::<SessionSetpoints>::advance(&mut client, 1);
        let mut response = [0u8; 16];
        let len = core.table.apply(0, register.as_ref(), &mut response);
        Workload::<SessionSetpoints>::committed(&mut client, 1, 0, &response[..len]);
        assert!(client.session().is_some());
        assert!(Workload::<SessionSetpoints>::command(&client)
            .as_ref()
            .is_empty());
    }

    #[test]
    fn the_tables_digest_covers_the_sessions_and_the_application() {
        let (mut a, mut b) = (Core::new(), Core::new());
        let empty = a.table.digest();
        let _ = (registered(&mut a), registered(&mut b));
        assert_ne!(a.table.digest(), empty, "a session");
        assert_eq!(a.table.digest(), b.table.digest());
        // A plain command changes the setpoints and not the table: the digest still moves.
        let mut plain = [0u8; 32];
        let len = mu_apps::session::encode_plain(&mut plain, &[9; 16]).unwrap();
        let mut client = Client::new(Sweep::new(3));
        b.decide(&mut client, None, &plain[..len]);
        assert_eq!(a.table.table_digest(), b.table.table_digest());
        assert_ne!(a.table.digest(), b.table.digest());
    }
}
