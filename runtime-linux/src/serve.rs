//! `mu serve`: every replica speaks the Redis protocol (RESP2 and inline commands) over TCP,
//! and every command that reads or writes the store goes through the replicated log, so reads
//! and writes are linearizable on whichever replica a client is connected to.
//!
//! One thread per replica (a [`FrontEnd`]) runs a non-blocking event loop over its listening
//! socket and its connections:
//! - A command the store knows ([`mu_apps::store`]) is stamped with this host's clock, wrapped
//!   in the connection's exactly-once session ([`mu_apps::session`]) and proposed: into this
//!   replica's intake when it leads, else forwarded to the leader's front end (`MU.FORWARD`).
//!   A command whose tenure ended before it was decided (dropped, or not the leader any more)
//!   is proposed again, the same envelope to the next leader: the session answers a retry of
//!   a request that was applied from its cache, so nothing is applied twice. A client connected
//!   to a surviving replica keeps working across a fail-over without reconnecting.
//! - The front end answers PING, ECHO, QUIT, INFO, SELECT 0, CONFIG GET and COMMAND itself
//!   (what `redis-cli` and `redis-benchmark` send on their own), and anything else with
//!   Redis's `-ERR unknown command`, keeping the connection.
//! - Each connection registers a session through the log before its first command; replies go
//!   back in the order the commands came (pipelining), whatever order they were decided in.
//!
//! Bounded: a connection's unparsed input, its queued commands and its unsent output have
//! limits; a client that does not read its replies stops being read, and one whose input
//! breaks the protocol is answered Redis's protocol error and closed. None of it holds the
//! replication plane back: the intake takes commands only while their replies fit.
//!
//! # Invariants
//! - A token names one proposal (a session register or request, or a forwarded envelope) from
//!   its submission to its final answer; a proposal is answered to its connection exactly once,
//!   in the connection's command order.
//! - A request's envelope is kept, unchanged, until its session settles it: every retry is the
//!   same bytes.
//! - Only a leader's intake takes proposals; a follower holds none of its own in the intake.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mu_apps::resp::{self, Limits, Parsed, Writer};
use mu_apps::session::{self, Refusal, Reply as SessionReply, Session};
use mu_apps::store::{self, CommandError, Opcode};
use mu_nostd::ReplicaId;

use crate::intake::{Intake, Reply};
use crate::node::{FrontEnd, ServeSpec, ENTRY_MAX};
use crate::port::{Outcome, Port, Stat};

/// Arguments a command may have (Redis allows more; a store command takes at most
/// [`store::ARGS_MAX`] after its name).
const ARGS: usize = store::ARGS_MAX + 1;
/// Bytes of a connection's input kept unparsed at most: one command of the largest entry.
const INPUT_MAX: usize = ENTRY_MAX + 4096;
/// Bytes of unsent replies past which a connection is not read any more until it reads.
const OUTPUT_HIGH: usize = 1 << 20;
/// Commands of one connection parsed and not yet answered, at most (pipelining depth).
const PIPELINE_MAX: usize = 256;
/// Connections served at most; more are accepted and closed at once.
const CONNECTIONS_MAX: usize = 1024;
/// Replies a session keeps per client (the wrapper's `WINDOW`).
pub const WINDOW: usize = 32;
/// How long a proposal whose tenure ended waits before it is proposed again: about an
/// election.
const RETRY_PAUSE: Duration = Duration::from_millis(2);
/// How long the loop sleeps in `poll` when nothing is in flight.
const IDLE_POLL_MS: i32 = 10;
/// The command a follower's front end forwards an envelope with.
const FORWARD: &[u8] = b"MU.FORWARD";

/// The RESP front end of one replica.
pub struct RespFrontEnd {
    spec: ServeSpec,
    me: ReplicaId,
}

impl RespFrontEnd {
    /// The front end of replica `me`, listening where `spec` says.
    pub fn new(spec: ServeSpec, me: ReplicaId) -> RespFrontEnd {
        RespFrontEnd { spec, me }
    }
}

impl FrontEnd for RespFrontEnd {
    fn serve(&mut self, intake: &Intake, port: &Port, over: &AtomicBool) {
        let listener = match TcpListener::bind(self.spec.listen) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!(
                    "replica {}: cannot serve clients on {}: {e}",
                    self.me, self.spec.listen
                );
                return;
            }
        };
        listener
            .set_nonblocking(true)
            .expect("a listening socket goes non-blocking");
        eprintln!(
            "replica {}: serving the Redis protocol on {}",
            self.me, self.spec.listen
        );
        let mut server = Server::new(listener, self.spec.peers.clone(), self.me, intake, port);
        while !over.load(Ordering::Relaxed) {
            server.turn();
        }
    }
}

/// Who waits for a proposal's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// A connection's session register.
    Register,
    /// A request of the connection's session, answered in slot `slot`.
    Request { seq: u64, slot: u64 },
    /// An envelope a follower forwarded, answered in slot `slot` of its connection.
    Forwarded { slot: u64 },
}

/// A proposal from submission to final answer.
struct Proposal {
    /// When the command was parsed: its latency counts from here to its answer.
    since: Instant,
    conn: usize,
    /// The connection's generation (a slot reused by a new connection has another).
    generation: u64,
    purpose: Purpose,
    envelope: Vec<u8>,
}

/// A reply in a connection's order: ready, or waiting for its proposal.
enum Answer {
    Ready(Vec<u8>),
    Waiting,
}

/// A command parsed but not proposed yet (its session is not registered, or its window full).
struct Queued {
    slot: u64,
    payload: Vec<u8>,
}

enum SessionState {
    Registering,
    Ready(Session),
}

struct Conn {
    stream: TcpStream,
    generation: u64,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Answers in command order; the front one is `first_slot`.
    answers: VecDeque<Answer>,
    first_slot: u64,
    queued: VecDeque<Queued>,
    session: Option<SessionState>,
    /// Close once the output is sent (QUIT, a protocol error).
    closing: bool,
}

impl Conn {
    fn new(stream: TcpStream, generation: u64) -> Conn {
        Conn {
            stream,
            generation,
            input: Vec::with_capacity(4096),
            output: Vec::with_capacity(4096),
            answers: VecDeque::new(),
            first_slot: 0,
            queued: VecDeque::new(),
            session: None,
            closing: false,
        }
    }

    /// A new slot in command order.
    fn slot(&mut self, answer: Answer) -> u64 {
        self.answers.push_back(answer);
        self.first_slot + self.answers.len() as u64 - 1
    }

    fn answer(&mut self, slot: u64, bytes: Vec<u8>) {
        if let Some(at) = slot.checked_sub(self.first_slot) {
            if let Some(answer) = self.answers.get_mut(at as usize) {
                *answer = Answer::Ready(bytes);
            }
        }
    }

    /// Moves ready answers, in order, to the output.
    fn collect(&mut self) {
        while let Some(Answer::Ready(_)) = self.answers.front() {
            if let Some(Answer::Ready(bytes)) = self.answers.pop_front() {
                self.output.extend_from_slice(&bytes);
                self.first_slot += 1;
            }
        }
    }

    fn wants_input(&self) -> bool {
        !self.closing && self.output.len() < OUTPUT_HIGH && self.answers.len() < PIPELINE_MAX
    }
}

/// What one `poll` found readable.
struct Readable {
    listener: bool,
    conns: Vec<usize>,
    upstream: bool,
}

/// The forwarding connection of a follower to the leader's front end.
struct Upstream {
    leader: ReplicaId,
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Tokens forwarded, in order: the leader answers in this order.
    tokens: VecDeque<u64>,
}

struct Server<'a> {
    listener: TcpListener,
    peers: Vec<SocketAddr>,
    me: ReplicaId,
    intake: &'a Intake,
    port: &'a Port,
    conns: Vec<Option<Conn>>,
    generations: u64,
    proposals: HashMap<u64, Proposal>,
    next_token: u64,
    /// Proposals to (re)submit, not before their time.
    pending: VecDeque<(Instant, u64)>,
    upstream: Option<Upstream>,
    reply: Vec<u8>,
    scratch: Vec<u8>,
    started: Instant,
    commands: u64,
    /// Proposals proposed again after their tenure ended (or the forwarding connection broke).
    retried: u64,
    /// Microseconds from a command's proposal to its answer, for INFO.
    latency: hdrhistogram::Histogram<u64>,
}

impl<'a> Server<'a> {
    fn new(
        listener: TcpListener,
        peers: Vec<SocketAddr>,
        me: ReplicaId,
        intake: &'a Intake,
        port: &'a Port,
    ) -> Server<'a> {
        Server {
            listener,
            peers,
            me,
            intake,
            port,
            conns: Vec::new(),
            generations: 0,
            proposals: HashMap::new(),
            next_token: 1,
            pending: VecDeque::new(),
            upstream: None,
            reply: vec![0; ENTRY_MAX],
            scratch: vec![0; ENTRY_MAX],
            started: Instant::now(),
            commands: 0,
            retried: 0,
            latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("static bounds"),
        }
    }

    /// One turn of the loop: wait for sockets (briefly while proposals are in flight), then
    /// accept, read, propose, take replies, write.
    fn turn(&mut self) {
        let busy = !self.proposals.is_empty();
        let readable = self.wait(if busy { 0 } else { IDLE_POLL_MS });
        if readable.listener {
            self.accept();
        }
        // Only connections `poll` found readable are read: a read of every connection at
        // every turn (most answering EAGAIN) held a pipelining benchmark to a tenth of
        // redis-server's rate, PING included.
        for &index in &readable.conns {
            self.read(index);
        }
        if readable.upstream {
            self.read_upstream();
        }
        self.resubmit();
        self.take_replies();
        for index in 0..self.conns.len() {
            self.write(index);
        }
        self.write_upstream();
        if busy && readable.conns.is_empty() {
            std::thread::yield_now();
        }
    }

    /// Sleeps until a socket is readable or `timeout_ms` passes; says which are.
    fn wait(&self, timeout_ms: i32) -> Readable {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = vec![PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        let mut owners = Vec::new();
        for (index, conn) in self.conns.iter().enumerate() {
            if let Some(conn) = conn.as_ref().filter(|c| c.wants_input()) {
                fds.push(PollFd::new(conn.stream.as_fd(), PollFlags::POLLIN));
                owners.push(index);
            }
        }
        if let Some(upstream) = &self.upstream {
            fds.push(PollFd::new(upstream.stream.as_fd(), PollFlags::POLLIN));
        }
        let timeout = PollTimeout::try_from(timeout_ms).unwrap_or(PollTimeout::ZERO);
        if nix::poll::poll(&mut fds, timeout).is_err() {
            // Interrupted (or out of memory): look at everything, as if all were readable.
            return Readable {
                listener: true,
                conns: owners,
                upstream: self.upstream.is_some(),
            };
        }
        // Readable, or closed or failed (a read then says which).
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        Readable {
            listener: ready(&fds[0]),
            conns: owners
                .iter()
                .zip(&fds[1..])
                .filter(|(_, fd)| ready(fd))
                .map(|(&index, _)| index)
                .collect(),
            upstream: self.upstream.is_some() && fds.last().is_some_and(ready),
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            let live = self.conns.iter().filter(|c| c.is_some()).count();
            if live >= CONNECTIONS_MAX || stream.set_nonblocking(true).is_err() {
                let _ = (&stream).write_all(b"-ERR max number of clients reached\r\n");
                continue;
            }
            let _ = stream.set_nodelay(true);
            self.generations += 1;
            let conn = Conn::new(stream, self.generations);
            match self.conns.iter().position(Option::is_none) {
                Some(free) => self.conns[free] = Some(conn),
                None => self.conns.push(Some(conn)),
            }
        }
    }

    /// Reads what `index` sent and handles every whole command in it.
    fn read(&mut self, index: usize) {
        let Some(conn) = self.conns[index].as_mut() else {
            return;
        };
        let mut closed = false;
        while conn.wants_input() && conn.input.len() < INPUT_MAX {
            let start = conn.input.len();
            let room = (INPUT_MAX - start).min(64 * 1024);
            conn.input.resize(start + room, 0);
            match conn.stream.read(&mut conn.input[start..]) {
                Ok(0) => {
                    conn.input.truncate(start);
                    closed = true;
                    break;
                }
                Ok(n) => conn.input.truncate(start + n),
                Err(e) => {
                    conn.input.truncate(start);
                    if e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::Interrupted {
                        closed = true;
                    }
                    break;
                }
            }
        }
        self.handle_input(index);
        if closed {
            self.close(index);
        }
    }

    /// Executes every whole command in connection `index`'s input, as far as it takes more.
    fn handle_input(&mut self, index: usize) {
        let limits = Limits {
            bulk_max: ENTRY_MAX,
            inline_max: resp::REDIS_INLINE_MAX,
        };
        loop {
            let Some(conn) = self.conns[index].as_mut() else {
                return;
            };
            if !conn.wants_input() {
                return;
            }
            match resp::parse::<ARGS>(&conn.input, &limits) {
                Ok(Parsed::Incomplete) => return,
                Ok(Parsed::Empty { consumed }) => {
                    conn.input.drain(..consumed);
                }
                Ok(Parsed::Command { args, consumed }) => {
                    let args: Vec<Vec<u8>> = args.iter(&conn.input).map(<[u8]>::to_vec).collect();
                    conn.input.drain(..consumed);
                    self.command(index, &args);
                }
                Err(error) => {
                    // Nothing after a protocol error can be trusted: answer it, then close.
                    let mut bytes = vec![0; 256];
                    let len = error.write_reply(&mut bytes).unwrap_or(0);
                    bytes.truncate(len);
                    conn.slot(Answer::Ready(bytes));
                    conn.closing = true;
                    conn.input.clear();
                    return;
                }
            }
        }
    }

    /// Handles one command of connection `index`.
    fn command(&mut self, index: usize, args: &[Vec<u8>]) {
        self.commands += 1;
        let name = args[0].to_ascii_uppercase();
        if let Some(reply) = self.local(&name, args) {
            let conn = self.conns[index].as_mut().expect("connection");
            conn.slot(Answer::Ready(reply));
            if name == b"QUIT" {
                conn.closing = true;
            }
            return;
        }
        if name == FORWARD {
            self.forwarded(index, args);
            return;
        }
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let refs: Vec<&[u8]> = args[1..].iter().map(Vec::as_slice).collect();
        let opcode = Opcode::from_name(&args[0]);
        let encoded = match opcode {
            Some(opcode) => store::encode(opcode, &refs, time_ms, &mut self.scratch),
            None => Err(CommandError::UnknownCommand),
        };
        let conn = self.conns[index].as_mut().expect("connection");
        match encoded {
            Ok(len) => {
                let payload = self.scratch[..len].to_vec();
                let slot = conn.slot(Answer::Waiting);
                conn.queued.push_back(Queued { slot, payload });
                self.propose_queued(index);
            }
            Err(CommandError::UnknownCommand) => {
                conn.slot(Answer::Ready(unknown_command(args)));
            }
            Err(error) => {
                let text = format!("-ERR {error:?}\r\n");
                conn.slot(Answer::Ready(text.into_bytes()));
            }
        }
    }

    /// Commands the front end answers itself; `None` for the others.
    fn local(&self, name: &[u8], args: &[Vec<u8>]) -> Option<Vec<u8>> {
        // Room for the longest local reply: an echo of the arguments, or INFO.
        let room = 4096 + args.iter().map(Vec::len).sum::<usize>();
        let mut out = vec![0u8; room];
        let mut w = Writer::new(&mut out);
        let arity = |n: usize| args.len() == n;
        let written = match name {
            b"PING" if arity(1) => w.simple(b"PONG").map(|_| ()),
            b"PING" if arity(2) => w.bulk(&args[1]).map(|_| ()),
            b"ECHO" if arity(2) => w.bulk(&args[1]).map(|_| ()),
            b"QUIT" => w.simple(b"OK").map(|_| ()),
            b"SELECT" if arity(2) && args[1] == b"0" => w.simple(b"OK").map(|_| ()),
            b"SELECT" => w.error(b"ERR DB index is out of range").map(|_| ()),
            // What redis-benchmark asks before it starts (`save`, `appendonly`): the values that
            // say how this store behaves; any other parameter, as Redis answers an unknown one.
            b"CONFIG" if args.len() == 3 && args[1].eq_ignore_ascii_case(b"GET") => {
                match config_value(&args[2]) {
                    Some(value) => w
                        .array_header(2)
                        .and_then(|w| w.bulk(&args[2]))
                        .and_then(|w| w.bulk(value))
                        .map(|_| ()),
                    None => w.array_header(0).map(|_| ()),
                }
            }
            // What redis-cli asks at start (`COMMAND DOCS`): no documentation to give.
            b"COMMAND" => w.array_header(0).map(|_| ()),
            b"CLIENT" => w.simple(b"OK").map(|_| ()),
            b"INFO" => {
                let info = self.info();
                w.bulk(info.as_bytes()).map(|_| ())
            }
            b"PING" | b"ECHO" => {
                let lower = String::from_utf8_lossy(name).to_lowercase();
                let text = format!("ERR wrong number of arguments for '{lower}' command");
                w.error(text.as_bytes()).map(|_| ())
            }
            _ => return None,
        };
        let len = if written.is_ok() { w.len() } else { 0 };
        out.truncate(len);
        Some(out)
    }

    /// `INFO`: the replica's role, the leader, where it is, its clients' latency, and the
    /// counters that explain trouble.
    fn info(&self) -> String {
        let p = self.port;
        let role = if p.get(Stat::FastPath) == 1 {
            "leader"
        } else if p.get(Stat::Leading) != 0 {
            "leader (preparing)"
        } else {
            "follower"
        };
        let leader = p
            .leader_view()
            .map_or("none".to_string(), |id| id.to_string());
        let blocked = p.blocked().map_or("none".to_string(), |(at, why)| {
            format!("{at} ({})", why.name())
        });
        let micros = |q: f64| self.latency.value_at_quantile(q);
        let lines = [
            "# Replication".to_string(),
            format!("role:{role}"),
            format!("replica:{}", self.me),
            format!("leader:{leader}"),
            format!("applied:{}", p.get(Stat::Applied)),
            format!("voter:{}", p.get(Stat::Voter)),
            format!("tenures_started:{}", p.get(Stat::Tenures)),
            format!("permission_switches:{}", p.get(Stat::PermissionSwitches)),
            format!("slots_refused_torn:{}", p.get(Stat::SlotsTorn)),
            format!("slots_refused_unchained:{}", p.get(Stat::SlotsUnchained)),
            format!("replay_blocked_at:{blocked}"),
            format!("lap_notices:{}", p.get(Stat::LapNotices)),
            format!("state_transfers_started:{}", p.get(Stat::Transfers)),
            format!("state_transfers_installed:{}", p.get(Stat::Installs)),
            format!("peers_refused:{:#b}", p.get(Stat::RefusedPeers)),
            format!("peers_failed_on_death_notice:{}", p.get(Stat::Deaths)),
            format!(
                "peers_declared_failed_but_alive:{}",
                p.get(Stat::FalseSuspicions)
            ),
            "# Clients".to_string(),
            format!("connected_clients:{}", self.conns.iter().flatten().count()),
            format!("commands_processed:{}", self.commands),
            format!("proposals_in_flight:{}", self.proposals.len()),
            format!("proposals_retried:{}", self.retried),
            format!("proposals_answered:{}", self.latency.len()),
            format!(
                "proposal_latency_us:p50={},p90={},p99={},max={}",
                micros(0.5),
                micros(0.9),
                micros(0.99),
                self.latency.max()
            ),
            format!("uptime_in_seconds:{}", self.started.elapsed().as_secs()),
        ];
        let mut text = lines.join("\r\n");
        text.push_str("\r\n");
        text
    }

    /// Proposes connection `index`'s queued commands as far as its session allows; registers
    /// the session first.
    fn propose_queued(&mut self, index: usize) {
        let conn = self.conns[index].as_mut().expect("connection");
        match &mut conn.session {
            None => {
                conn.session = Some(SessionState::Registering);
                let mut envelope = vec![0; session::REGISTER_BYTES];
                session::encode_register(&mut envelope).expect("room for a register");
                let generation = conn.generation;
                self.submit(index, generation, Purpose::Register, envelope);
            }
            Some(SessionState::Registering) => {}
            Some(SessionState::Ready(session)) => {
                let mut proposals = Vec::new();
                while let Some(queued) = conn.queued.front() {
                    let mut envelope =
                        vec![0; session::REQUEST_HEADER_BYTES + queued.payload.len()];
                    let Ok((seq, len)) = session.request(&queued.payload, &mut envelope) else {
                        break; // The window is full: wait for a settled request.
                    };
                    envelope.truncate(len);
                    let slot = queued.slot;
                    conn.queued.pop_front();
                    proposals.push((Purpose::Request { seq, slot }, envelope));
                }
                let generation = conn.generation;
                for (purpose, envelope) in proposals {
                    self.submit(index, generation, purpose, envelope);
                }
            }
        }
    }

    /// A follower forwarded an envelope: propose it here (a leader), answer in order.
    fn forwarded(&mut self, index: usize, args: &[Vec<u8>]) {
        let conn = self.conns[index].as_mut().expect("connection");
        if args.len() != 2 {
            conn.slot(Answer::Ready(
                b"-ERR wrong number of arguments for 'mu.forward'\r\n".to_vec(),
            ));
            return;
        }
        let slot = conn.slot(Answer::Waiting);
        let generation = conn.generation;
        self.submit(
            index,
            generation,
            Purpose::Forwarded { slot },
            args[1].clone(),
        );
    }

    fn submit(&mut self, conn: usize, generation: u64, purpose: Purpose, envelope: Vec<u8>) {
        let token = self.next_token;
        self.next_token += 1;
        self.proposals.insert(
            token,
            Proposal {
                since: Instant::now(),
                conn,
                generation,
                purpose,
                envelope,
            },
        );
        self.pending.push_back((Instant::now(), token));
        self.resubmit();
    }

    /// Who leads, as this replica sees it: itself only on the fast path or preparing.
    fn leader(&self) -> Option<ReplicaId> {
        if self.port.get(Stat::Leading) != 0 {
            return Some(self.me);
        }
        self.port.leader_view()
    }

    /// Submits every pending proposal that is due: into the intake when this replica leads,
    /// else to the leader's front end.
    fn resubmit(&mut self) {
        let now = Instant::now();
        let mut later = VecDeque::new();
        while let Some((due, token)) = self.pending.pop_front() {
            if due > now {
                later.push_back((due, token));
                continue;
            }
            let Some(proposal) = self.proposals.get(&token) else {
                continue;
            };
            let routed = match self.leader() {
                Some(leader) if leader == self.me => {
                    self.intake
                        .push_request(token, &proposal.envelope, self.port.replica_bell())
                }
                Some(leader) => self.forward(leader, token),
                None => false,
            };
            if !routed {
                later.push_back((now + RETRY_PAUSE, token));
            }
        }
        self.pending = later;
    }

    /// Sends proposal `token` to `leader`'s front end; false when it cannot now.
    fn forward(&mut self, leader: ReplicaId, token: u64) -> bool {
        if self.upstream.as_ref().is_some_and(|u| u.leader != leader) {
            self.drop_upstream();
        }
        if self.upstream.is_none() {
            let Some(address) = self.peers.get(leader as usize) else {
                return false;
            };
            let Ok(stream) = TcpStream::connect_timeout(address, Duration::from_millis(100)) else {
                return false;
            };
            let _ = stream.set_nodelay(true);
            if stream.set_nonblocking(true).is_err() {
                return false;
            }
            self.upstream = Some(Upstream {
                leader,
                stream,
                input: Vec::new(),
                output: Vec::new(),
                tokens: VecDeque::new(),
            });
        }
        let envelope = &self.proposals[&token].envelope;
        let upstream = self.upstream.as_mut().expect("an upstream");
        let args: [&[u8]; 2] = [FORWARD, envelope];
        let mut frame = vec![0; resp::command_len(&args)];
        let len = resp::command(&mut frame, &args).unwrap_or(0);
        upstream.output.extend_from_slice(&frame[..len]);
        upstream.tokens.push_back(token);
        true
    }

    /// The upstream broke or the leader changed: everything forwarded is proposed again.
    fn drop_upstream(&mut self) {
        if let Some(upstream) = self.upstream.take() {
            let now = Instant::now();
            for token in upstream.tokens {
                self.retried += 1;
                self.pending.push_back((now + RETRY_PAUSE, token));
            }
        }
    }

    fn read_upstream(&mut self) {
        let Some(upstream) = self.upstream.as_mut() else {
            return;
        };
        let mut buf = [0u8; 64 * 1024];
        let mut broken = false;
        loop {
            match upstream.stream.read(&mut buf) {
                Ok(0) => {
                    broken = true;
                    break;
                }
                Ok(n) => upstream.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        // The leader answers a forward as an array of bulk strings: outcome, position, reply.
        let limits = Limits {
            bulk_max: ENTRY_MAX,
            inline_max: resp::REDIS_INLINE_MAX,
        };
        let mut answers = Vec::new();
        let mut consumed = 0;
        loop {
            let input = &upstream.input[consumed..];
            match resp::parse::<3>(input, &limits) {
                Ok(Parsed::Command { args, consumed: n }) if args.len() == 3 => {
                    let number = |i: usize| {
                        std::str::from_utf8(args.get(i, input).unwrap_or(b""))
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok())
                    };
                    let outcome = number(0).and_then(Outcome::from_code);
                    let position = number(1).unwrap_or(0);
                    let reply = args.get(2, input).unwrap_or(b"").to_vec();
                    let Some(token) = upstream.tokens.pop_front() else {
                        broken = true;
                        break;
                    };
                    answers.push((token, outcome.unwrap_or(Outcome::Rejected), position, reply));
                    consumed += n;
                }
                Ok(Parsed::Incomplete) => break,
                _ => {
                    broken = true;
                    break;
                }
            }
        }
        upstream.input.drain(..consumed);
        for (token, outcome, position, reply) in answers {
            self.deliver(token, outcome, position, &reply);
        }
        if broken {
            self.drop_upstream();
        }
    }

    fn write_upstream(&mut self) {
        let Some(upstream) = self.upstream.as_mut() else {
            return;
        };
        let broken = flush(&mut upstream.stream, &mut upstream.output);
        if broken {
            self.drop_upstream();
        }
    }

    /// Takes the intake's replies to this replica's proposals.
    fn take_replies(&mut self) {
        while self.intake.replies_waiting() {
            let mut buf = std::mem::take(&mut self.reply);
            let Some(Reply {
                token,
                outcome,
                position,
                len,
            }) = self.intake.take_reply(&mut buf)
            else {
                self.reply = buf;
                break;
            };
            self.deliver(token, outcome, position, &buf[..len]);
            self.reply = buf;
        }
    }

    /// The final or passing answer to proposal `token`.
    fn deliver(&mut self, token: u64, outcome: Outcome, position: u64, reply: &[u8]) {
        let Some(proposal) = self.proposals.get(&token) else {
            return;
        };
        let retry = matches!(outcome, Outcome::NotLeader | Outcome::Dropped);
        if let Purpose::Forwarded { slot } = proposal.purpose {
            // The follower decides about retries: it gets every outcome as it is.
            let (conn, generation) = (proposal.conn, proposal.generation);
            self.proposals.remove(&token);
            let code = outcome.code().to_string();
            let at = position.to_string();
            let args: [&[u8]; 3] = [code.as_bytes(), at.as_bytes(), reply];
            let mut frame = vec![0; resp::command_len(&args)];
            let len = resp::command(&mut frame, &args).unwrap_or(0);
            frame.truncate(len);
            if let Some(c) = self.live_conn(conn, generation) {
                c.answer(slot, frame);
            }
            return;
        }
        if retry {
            self.retried += 1;
            self.pending
                .push_back((Instant::now() + RETRY_PAUSE, token));
            return;
        }
        let proposal = self.proposals.remove(&token).expect("a proposal");
        let (conn, generation) = (proposal.conn, proposal.generation);
        if matches!(proposal.purpose, Purpose::Request { .. }) {
            let micros = proposal.since.elapsed().as_micros() as u64;
            self.latency.saturating_record(micros.max(1));
        }
        let answer = match outcome {
            Outcome::Committed => session::decode_reply(reply).ok(),
            _ => None,
        };
        match (proposal.purpose, answer) {
            (Purpose::Register, Some(SessionReply::Registered { client })) => {
                if let Some(c) = self.live_conn(conn, generation) {
                    c.session = Some(SessionState::Ready(Session::new(client, WINDOW)));
                }
                self.propose_queued(conn);
            }
            (Purpose::Register, _) => {
                // Refused (too large, halted): the connection cannot be served.
                if let Some(c) = self.live_conn(conn, generation) {
                    c.session = None;
                    while let Some(queued) = c.queued.pop_front() {
                        c.answer(queued.slot, b"-ERR cannot open a session\r\n".to_vec());
                    }
                }
            }
            (Purpose::Request { seq, slot }, answer) => {
                let bytes = match answer.map(SessionReply::result) {
                    Some(Ok(bytes)) => bytes.to_vec(),
                    Some(Err(Refusal::Expired)) => {
                        b"-ERR session expired: the outcome of this command is unknown\r\n".to_vec()
                    }
                    Some(Err(_)) => {
                        b"-ERR the outcome of this command is unknown (retried too late)\r\n"
                            .to_vec()
                    }
                    None => b"-ERR rejected by the replica\r\n".to_vec(),
                };
                if let Some(c) = self.live_conn(conn, generation) {
                    if let Some(SessionState::Ready(session)) = &mut c.session {
                        session.settle(seq);
                    }
                    c.answer(slot, bytes);
                }
                if self.live_conn(conn, generation).is_some() {
                    self.propose_queued(conn);
                }
            }
            (Purpose::Forwarded { .. }, _) => unreachable!("handled above"),
        }
    }

    fn live_conn(&mut self, index: usize, generation: u64) -> Option<&mut Conn> {
        self.conns
            .get_mut(index)?
            .as_mut()
            .filter(|c| c.generation == generation)
    }

    fn write(&mut self, index: usize) {
        let Some(conn) = self.conns[index].as_mut() else {
            return;
        };
        conn.collect();
        let broken = flush(&mut conn.stream, &mut conn.output);
        let done = conn.closing && conn.output.is_empty() && conn.answers.is_empty();
        if broken || done {
            self.close(index);
        } else if !conn.input.is_empty() && conn.wants_input() {
            // Commands held back while the output was full.
            self.handle_input(index);
        }
    }

    /// Closes connection `index`; its proposals still in flight complete into nothing.
    fn close(&mut self, index: usize) {
        self.conns[index] = None;
    }
}

/// Writes as much of `output` as the socket takes now, dropping what it took; true when the
/// connection broke.
fn flush(stream: &mut TcpStream, output: &mut Vec<u8>) -> bool {
    while !output.is_empty() {
        match stream.write(output) {
            Ok(0) => return true,
            Ok(n) => {
                output.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    false
}

/// The configuration parameters `CONFIG GET` answers: the store keeps no files, and has one
/// database.
fn config_value(name: &[u8]) -> Option<&'static [u8]> {
    let name = name.to_ascii_lowercase();
    match name.as_slice() {
        b"save" => Some(b""),
        b"appendonly" => Some(b"no"),
        b"databases" => Some(b"1"),
        _ => None,
    }
}

/// Redis's answer to a command it does not know.
fn unknown_command(args: &[Vec<u8>]) -> Vec<u8> {
    let name = String::from_utf8_lossy(&args[0]);
    let rest: Vec<String> = args[1..]
        .iter()
        .map(|a| format!("'{}' ", String::from_utf8_lossy(a)))
        .collect();
    format!(
        "-ERR unknown command '{name}', with args beginning with: {}\r\n",
        rest.concat()
    )
    .into_bytes()
}

// ---- the application ---------------------------------------------------------------------------

/// Sessions a `mu serve` replica keeps (connections that send commands, cluster-wide); the
/// least recently used is evicted beyond.
pub const SESSIONS: usize = 256;
/// Bytes of a reply a session keeps for a retry; longer replies (read-only commands aside) are
/// answered `-ERR ... outcome is unknown` on a retry.
pub const REPLY_KEPT: usize = 64;

/// What a `mu serve` replica replicates: the store, inside exactly-once sessions.
pub type RespApp = session::ExactlyOnce<store::Store<'static>, SESSIONS, WINDOW, REPLY_KEPT>;

impl crate::app::Application for RespApp {
    fn digest(&self) -> u64 {
        mu_nostd::hash::Hasher::new(0x5345_5256_4500)
            .word(self.table_digest())
            .word(self.inner().digest())
            .finish()
    }
}

/// The store's capacities for `keys` keys: keys up to 64 bytes, values up to 512 (what
/// `redis-benchmark` sends by default fits many times).
pub fn store_config(keys: usize) -> store::Config {
    store::Config {
        keys,
        key_max: 64,
        value_max: 512,
    }
}

/// A `mu serve` replica's application, its memory allocated once for the process's life.
pub fn resp_app(keys: usize) -> Result<RespApp, String> {
    let config = store_config(keys);
    let bytes = config
        .arena_bytes()
        .map_err(|e| format!("a store of {keys} keys: {e:?}"))?;
    let arena: &'static mut [u8] = Box::leak(vec![0u8; bytes].into_boxed_slice());
    let store = store::Store::new(arena, config).map_err(|e| format!("store: {e:?}"))?;
    Ok(session::ExactlyOnce::new(store))
}
