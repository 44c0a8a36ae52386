//! One replica process: its region, its client port, and the two planes on their own threads,
//! pinned to cores, with memory locked and optional real-time priority.
//!
//! The thread bodies are loops over [`ReplicationLoop::step`] and [`BackgroundLoop::step`]; tests
//! call the same steps directly (the counting-allocator test drives three replicas from one
//! thread that way).
//!
//! Polling modes: `busy` never yields (one isolated core per plane); `shared` yields every
//! [`YIELD_EVERY`] polls, so that more busy threads than cores still all make progress.
//!
//! # Invariants
//! - After start-up, a step allocates nothing on the heap (fixed tables, preallocated
//!   histogram, rings in shared memory); the counting-allocator test checks it.
//! - A ticket stays in the ticket table from `submit` until `committed` or `dropped`; the core
//!   keeps at most `REQUESTS_MAX` of them, so `ticket % REQUESTS_MAX` never collides.
//! - Status words are written only when they change; the take-over timestamps (`ElectedNs`,
//!   `TenureNs`, `FastPathNs`) only on the transitions they date, from the clock reading each
//!   step takes anyway for the plane's ticks.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use board_configs::Polling;
use hdrhistogram::Histogram;
use mu_nostd::{
    planes, BackgroundPlane, Config, Fabric, Halt, ReplicaError, ReplicaId, ReplicationPlane,
    Shared, Snapshot, StateMachine, SubmitError, Ticket, REQUESTS_MAX,
};

use crate::app::Application;
use crate::bell::Bell;
use crate::clock::{cycles_end, cycles_start, monotonic_ns, Ticker};
use crate::intake::Intake;
use crate::kv::Kv;
use crate::port::{Outcome, Port, Response, Stat};
use crate::procfs::IsolatedCores;
use crate::shm::{LifeHold, LifeWatch, OwnRegion, Plane, Previous, RegionDir, ShmError, ShmFabric};
#[cfg(feature = "verbs")]
use crate::verbs::{Endpoint, VerbsError, VerbsFabric};

/// What a verbs deployment says to a build without the verbs fabric.
pub const NO_VERBS: &str = "this mu was built without the verbs fabric: rebuild with \
    `cargo build --release -p runtime-linux --features verbs` (needs pkg-config, libibverbs-dev \
    and libclang-dev)";

/// Largest slot the Linux runtime supports.
pub const SLOT_MAX: usize = 4096;
/// Largest command the Linux runtime supports.
pub const ENTRY_MAX: usize = 64 * 1024;
/// Bytes of commands the leader may hold undecided.
pub const QUEUE_BYTES: usize = 256 * 1024;
/// In `shared` polling mode, a thread yields once every this many polls.
pub const YIELD_EVERY: u32 = 16;
/// Keys the replicated store holds unless `mu replica --kv-keys` says otherwise.
pub const KV_KEYS: usize = 4096;
/// Client commands a replication step takes from the port at most.
const INTAKE_PER_STEP: usize = 8;

/// The replication plane as this runtime builds it.
pub type Replication<'s> = ReplicationPlane<'s, SLOT_MAX, ENTRY_MAX, QUEUE_BYTES>;

/// Where a replica's verbs endpoint runs.
#[derive(Clone, Debug)]
pub struct VerbsSpec {
    /// The RDMA device, e.g. `mlx5_0` or `rxe0`.
    pub device: String,
    /// Its port, from 1.
    pub port: u8,
    /// The GID table index this replica sends from.
    pub gid_index: u8,
    /// Every replica's handshake address, by id.
    pub addresses: Vec<std::net::SocketAddr>,
}

/// Where and how one replica runs.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// The replica id.
    pub id: ReplicaId,
    /// The cluster configuration.
    pub config: Config,
    /// Nanoseconds per core tick.
    pub tick_ns: u64,
    /// The cluster's shared-memory directory: regions (shm), or lock, region and client port
    /// (verbs).
    pub dir: PathBuf,
    /// The RDMA endpoint's settings; `None` for the shared-memory fabric.
    pub verbs: Option<VerbsSpec>,
    /// Polling mode.
    pub polling: Polling,
    /// Core for the replication plane's thread.
    pub replication_core: Option<usize>,
    /// Core for the background plane's thread.
    pub background_core: Option<usize>,
    /// SCHED_FIFO priority for the background plane, and in `busy` polling
    /// for the replication plane too.
    pub realtime_priority: Option<u8>,
    /// Keys the replicated store holds (every replica of a cluster needs the same, or a
    /// snapshot may not fit).
    pub kv_keys: usize,
    /// It serves clients over the network through a front end (`mu serve`); `None`: only
    /// through its shared-memory client port.
    pub serve: Option<ServeSpec>,
}

/// Where a replica's network front end listens, and where every replica's does (a follower
/// forwards its clients' commands to the leader's).
#[derive(Clone, Debug)]
pub struct ServeSpec {
    /// This replica's listening address.
    pub listen: std::net::SocketAddr,
    /// Every replica's listening address, by id.
    pub peers: Vec<std::net::SocketAddr>,
}

impl NodeSpec {
    /// Replica `id` of a cluster of processes on this host, over shared memory in `dir`, with
    /// `shared` polling (no core of its own, no real-time priority) and ticks of 1 µs: what a
    /// test or an example needs, without a deployment file.
    pub fn local(id: ReplicaId, config: Config, dir: PathBuf) -> NodeSpec {
        NodeSpec {
            id,
            config,
            tick_ns: 1000,
            dir,
            verbs: None,
            polling: Polling::Shared,
            replication_core: None,
            background_core: None,
            realtime_priority: None,
            kv_keys: KV_KEYS,
            serve: None,
        }
    }
}

/// Why a replica could not start.
#[derive(Debug)]
pub enum NodeError {
    /// The region or port files.
    Shm(ShmError),
    /// The RDMA device or the handshake listener.
    #[cfg(feature = "verbs")]
    Verbs(VerbsError),
    /// A verbs deployment, but this build has no verbs fabric.
    NoVerbs,
    /// The core refused the configuration.
    Replica(ReplicaError),
    /// The client port.
    Port(std::io::Error),
    /// The deployment file or the command line.
    Config(String),
    /// The replication plane halted for this reason.
    Halted(Halt),
    /// So many peers run another layout or configuration that no quorum can include this
    /// replica: it stopped, and needs the cluster's configuration to start again.
    Refused,
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Shm(e) => write!(f, "{e}"),
            #[cfg(feature = "verbs")]
            NodeError::Verbs(e) => write!(f, "{e}"),
            NodeError::NoVerbs => write!(f, "{NO_VERBS}"),
            NodeError::Replica(e) => write!(f, "{e}"),
            NodeError::Port(e) => write!(f, "client port: {e}"),
            NodeError::Config(e) => write!(f, "{e}"),
            NodeError::Halted(reason) => write!(
                f,
                "replication halted (reason {}): {}; this replica takes no further part",
                reason.code(),
                reason.describe()
            ),
            NodeError::Refused => write!(
                f,
                "refused: too many peers run another layout or configuration for a quorum to \
                 include this replica (the lines before say which and why); start it with the \
                 cluster's configuration file"
            ),
        }
    }
}

impl std::error::Error for NodeError {}

/// A ticket's client request.
#[derive(Clone, Copy, Default)]
struct Waiting {
    ticket: Ticket,
    /// The client's sequence number (port) or token (intake).
    seq: u64,
    submitted: u64,
    /// It came through the intake, which takes the whole reply, not the port.
    via_intake: bool,
}

/// The application as the replication plane sees it: the hosted application, with the
/// journal, the client responses through the port and the leader's propose-to-commit latency
/// around it.
pub struct Hosted<'p, A: Application> {
    /// Boxed: an application may be large (tables inline), and the loop moves to its thread.
    app: Box<A>,
    port: &'p Port,
    intake: Option<&'p Intake>,
    me: ReplicaId,
    waiting: [Waiting; REQUESTS_MAX],
    latency: Histogram<u64>,
    /// The snapshot being installed: the position it covers and its length.
    installing: Option<(u64, u64)>,
}

impl<'p, A: Application> Hosted<'p, A> {
    /// `app`, answering through `port` (and `intake`, when the replica has one) for replica
    /// `me`.
    pub fn new(app: A, port: &'p Port, intake: Option<&'p Intake>, me: ReplicaId) -> Hosted<'p, A> {
        Hosted {
            app: Box::new(app),
            port,
            intake,
            me,
            waiting: [Waiting::default(); REQUESTS_MAX],
            latency: Histogram::new_with_bounds(1, 1 << 40, 3).expect("static bounds"),
            installing: None,
        }
    }

    /// The hosted application.
    pub fn app(&self) -> &A {
        &self.app
    }

    fn respond(&mut self, ticket: Ticket, outcome: Outcome, position: u64, reply: &[u8]) {
        let waiting = self.waiting[ticket as usize % REQUESTS_MAX];
        assert_eq!(waiting.ticket, ticket, "a ticket stays until answered");
        if outcome == Outcome::Committed {
            let cycles = cycles_end().saturating_sub(waiting.submitted);
            self.latency.saturating_record(cycles.max(1));
            self.port
                .set(Stat::Committed, self.port.get(Stat::Committed) + 1);
        }
        match self.intake {
            Some(intake) if waiting.via_intake => {
                intake.push_reply(waiting.seq, outcome, position, reply);
            }
            _ => {
                self.port.push_response(Response::new(
                    waiting.seq,
                    outcome,
                    position,
                    monotonic_ns(),
                    reply,
                ));
            }
        }
    }
}

impl<A: Application> StateMachine for Hosted<'_, A> {
    fn apply(&mut self, position: u64, command: &[u8], response: &mut [u8]) -> usize {
        let len = self.app.apply(position, command, response);
        let id = self
            .app
            .journal_id(command, &response[..len])
            .unwrap_or(u64::MAX);
        self.port.journal(position, id);
        len
    }

    fn committed(&mut self, ticket: Ticket, position: u64, response: &[u8]) {
        self.respond(ticket, Outcome::Committed, position, response);
    }

    fn dropped(&mut self, ticket: Ticket) {
        self.respond(ticket, Outcome::Dropped, 0, &[]);
    }

    fn snapshot_begin(&mut self, position: u64) -> Option<Snapshot> {
        self.app.snapshot_begin(position)
    }

    fn snapshot_read(&mut self, offset: u64, buf: &mut [u8]) {
        self.app.snapshot_read(offset, buf);
    }

    fn snapshot_end(&mut self) {
        self.app.snapshot_end();
    }

    fn install_begin(&mut self, position: u64, bytes: u64) -> bool {
        if !self.app.install_begin(position, bytes) {
            eprintln!(
                "[{:.3} ms] replica {}: the application cannot install a snapshot of {bytes} \
                 bytes at position {position} (start every replica with the same application \
                 and capacity, e.g. the same --kv-keys)",
                monotonic_ns() as f64 / 1e6,
                self.me,
            );
            return false;
        }
        self.installing = Some((position, bytes));
        self.port.set(Stat::InstallBeganNs, monotonic_ns());
        true
    }

    fn install_write(&mut self, offset: u64, bytes: &[u8]) {
        self.app.install_write(offset, bytes);
    }

    fn install_end(&mut self) -> u64 {
        let digest = self.app.install_end();
        if let Some((position, bytes)) = self.installing.take() {
            let port = self.port;
            port.set(Stat::InstallEndedNs, monotonic_ns());
            port.set(Stat::InstalledAt, position);
            port.set(Stat::InstalledBytes, bytes);
            port.set(Stat::Installs, port.get(Stat::Installs) + 1);
        }
        digest
    }

    fn install_abandon(&mut self) {
        self.app.install_abandon();
        self.installing = None;
    }
}

/// Where a client command comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The shared-memory client port of another process.
    Port,
    /// The in-process intake (the network front end).
    Intake,
}

/// What a replication plane does, as far as its pace goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It leads: its polls are the commit path. `busy` while commands wait to be taken or
    /// decided, or its prepare moved on in this poll.
    Leading {
        /// There was, or is, work.
        busy: bool,
    },
    /// It installs or donates a snapshot (a state transfer moves one chunk per poll).
    Transferring,
    /// It follows: it applies what the leader wrote into its log.
    Following {
        /// Its poll applied as far as one poll scans: the leader may have written more.
        backlog: bool,
    },
}

/// Status words the replication loop keeps up to date, written only when they change; the
/// values it computes in `publish` come in this order.
const PUBLISHED: [Stat; 16] = [
    Stat::Leading,
    Stat::FastPath,
    Stat::Applied,
    Stat::Halted,
    Stat::LeaderView,
    Stat::Alive,
    Stat::Queued,
    Stat::Voter,
    Stat::CatchingUp,
    Stat::DonatingTo,
    Stat::SlotsTorn,
    Stat::SlotsUnchained,
    Stat::BlockedAt,
    Stat::BlockedWhy,
    Stat::LapNotices,
    Stat::Transfers,
];
const LEADING: usize = 0;
const FAST_PATH: usize = 1;
const HALTED: usize = 3;
const QUEUED: usize = 6;
const VOTER: usize = 7;
const CATCHING_UP: usize = 8;
const DONATING: usize = 9;

/// What the replication thread does, one step at a time.
pub struct ReplicationLoop<'s, 'p, F: Fabric = ShmFabric, A: Application = Kv> {
    plane: Box<Replication<'s>>,
    fabric: F,
    me: ReplicaId,
    replicas: u8,
    /// Where the latency histogram goes when a client asks.
    dir: PathBuf,
    app: Hosted<'p, A>,
    ticker: Ticker,
    shared: &'s Shared,
    /// A client command as taken, from either source.
    command: Box<[u8; ENTRY_MAX]>,
    /// The values of [`PUBLISHED`] last written to the port.
    published: [u64; PUBLISHED.len()],
    digest_applied: u64,
    /// While a tenure prepares: where it is, for the log line if it ends there.
    preparing: Option<mu_nostd::LeaderStatus>,
}

impl<'s, 'p, F: Fabric, A: Application> ReplicationLoop<'s, 'p, F, A> {
    /// The loop over a built plane.
    pub fn new(
        spec: &NodeSpec,
        plane: Box<Replication<'s>>,
        fabric: F,
        app: Hosted<'p, A>,
        shared: &'s Shared,
    ) -> Self {
        ReplicationLoop {
            plane,
            fabric,
            me: spec.id,
            replicas: spec.config.replica_count,
            dir: spec.dir.clone(),
            app,
            ticker: Ticker::new(spec.tick_ns),
            shared,
            command: vec![0; ENTRY_MAX]
                .into_boxed_slice()
                .try_into()
                .expect("ENTRY_MAX bytes"),
            published: [u64::MAX; PUBLISHED.len()],
            digest_applied: u64::MAX,
            preparing: None,
        }
    }

    /// One poll of the plane, then client intake and status. Returns what the plane does.
    pub fn step(&mut self) -> Role {
        let polled_at = monotonic_ns();
        self.plane
            .poll(self.ticker.at(polled_at), &mut self.fabric, &mut self.app);
        let took = self.take_commands();
        let prepare_moved = self.publish(polled_at);
        if self.published[LEADING] != 0 {
            let port = self.app.port;
            let busy = took
                || prepare_moved
                || self.published[QUEUED] != 0
                || port.requests_waiting() != 0;
            Role::Leading { busy }
        } else if self.published[CATCHING_UP] != 0 || self.published[DONATING] != 0 {
            Role::Transferring
        } else {
            Role::Following {
                backlog: self.plane.status().backlog,
            }
        }
    }

    /// Why the replication plane halted, once it did.
    pub fn halted(&self) -> Option<Halt> {
        Halt::from_code(self.published[HALTED] as u32)
    }

    /// Takes client commands from the port and the intake; true when it took any.
    fn take_commands(&mut self) -> bool {
        let from_port = self.take_from(Source::Port);
        let from_intake = self.app.intake.is_some() && self.take_from(Source::Intake);
        from_port || from_intake
    }

    /// Takes up to [`INTAKE_PER_STEP`] commands from `source`; true when it took any.
    fn take_from(&mut self, source: Source) -> bool {
        let (port, intake) = (self.app.port, self.app.intake);
        for taken in 0..INTAKE_PER_STEP {
            let peeked = match (source, intake) {
                (Source::Port, _) if !port.can_respond() => None,
                (Source::Port, _) => port.peek_request(&mut self.command[..]),
                (Source::Intake, Some(intake)) => intake.peek_request(&mut self.command[..]),
                (Source::Intake, None) => None,
            };
            let Some((seq, len)) = peeked else {
                return taken > 0;
            };
            let submitted = cycles_start();
            let refusal = match self.plane.submit(&self.command[..len]) {
                Ok(ticket) => {
                    let slot = &mut self.app.waiting[ticket as usize % REQUESTS_MAX];
                    *slot = Waiting {
                        ticket,
                        seq,
                        submitted,
                        via_intake: source == Source::Intake,
                    };
                    None
                }
                // Left in the ring for the next step.
                Err(SubmitError::Busy) => return true,
                // Elected, its tenure not yet on the fast path: kept for it, so that a client
                // probing for the new leader is answered by the tenure's first commits.
                Err(SubmitError::NotLeader { leader }) if leader == Some(self.me) => {
                    return taken > 0
                }
                Err(SubmitError::NotLeader { leader }) => {
                    Some((Outcome::NotLeader, leader.map_or(0, |l| l as u64 + 1)))
                }
                Err(_) => Some((Outcome::Rejected, 0)),
            };
            match (source, intake) {
                (Source::Intake, Some(intake)) => {
                    intake.pop_request();
                    if let Some((outcome, position)) = refusal {
                        intake.push_reply(seq, outcome, position, &[]);
                    }
                }
                _ => {
                    port.pop_request();
                    if let Some((outcome, position)) = refusal {
                        port.push_response(Response::new(
                            seq,
                            outcome,
                            position,
                            monotonic_ns(),
                            &[],
                        ));
                    }
                }
            }
        }
        true
    }

    /// Publishes what changed in the poll that started at `polled_at` (ns).
    /// True when a tenure's prepare moved on in that poll.
    fn publish(&mut self, polled_at: u64) -> bool {
        let status = self.plane.status();
        let port = self.app.port;
        let mut prepare_moved = false;
        if status.leading.is_some() && !status.fast_path {
            let preparing = self.plane.leader_status();
            prepare_moved = preparing != self.preparing;
            self.preparing = preparing;
        }
        let leading = status.leading.map_or(0, |t| t as u64 + 1);
        if leading != self.published[LEADING] {
            // A tenure can follow another within one poll: every change starts a new one.
            port.set(
                Stat::TenureNs,
                if leading != 0 { monotonic_ns() } else { 0 },
            );
            self.log_role(status.leading, status.applied);
            if leading != 0 {
                port.set(Stat::Tenures, port.get(Stat::Tenures) + 1);
            }
        }
        let values: [u64; PUBLISHED.len()] = [
            leading,
            status.fast_path as u64,
            status.applied,
            status.halted.map_or(0, |reason| reason.code() as u64),
            self.shared.leader().map_or(0, |l| l as u64 + 1),
            self.shared.alive() as u64,
            status.queued as u64,
            status.voter as u64,
            status.catching_up as u64,
            status.donating_to.map_or(0, |j| j as u64 + 1),
            status.refusals.torn as u64,
            status.refusals.unchained as u64,
            status.blocked.map_or(0, |(at, _)| at + 1),
            status.blocked.map_or(0, |(_, why)| why.code() as u64),
            status.refusals.lap_notices as u64,
            status.transfers as u64,
        ];
        if values[FAST_PATH] != self.published[FAST_PATH] {
            // The poll that reached the fast path may already have committed (and answered a
            // client): date it by the poll's start, never after the tenure's own date.
            let at = (values[FAST_PATH] == 1).then(|| polled_at.max(port.get(Stat::TenureNs)));
            port.set(Stat::FastPathNs, at.unwrap_or(0));
            if let Some(at) = at {
                eprintln!(
                    "[{:.3} ms] replica {}: on the fast path in tenure {} at position {}",
                    at as f64 / 1e6,
                    self.me,
                    leading - 1,
                    status.applied
                );
            }
        }
        self.log_transfer(&values, polled_at);
        if values[VOTER] == 1 && self.published[VOTER] == 0 {
            eprintln!(
                "[{:.3} ms] replica {}: a voter, at position {}",
                polled_at as f64 / 1e6,
                self.me,
                status.applied
            );
        }
        for (i, stat) in PUBLISHED.into_iter().enumerate() {
            if values[i] != self.published[i] {
                port.set(stat, values[i]);
                self.published[i] = values[i];
            }
        }
        if status.applied != self.digest_applied {
            port.publish_digest(self.app.app.digest(), status.applied);
            self.digest_applied = status.applied;
        }
        let dump = port.get(Stat::DumpRequest);
        if dump != port.get(Stat::Dumped) {
            self.dump_latency(dump);
        }
        prepare_moved
    }

    /// State transfers, both ends, and a halt are rare and worth a line in the replica's log.
    fn log_transfer(&self, values: &[u64; PUBLISHED.len()], polled_at: u64) {
        let (me, at) = (self.me, polled_at as f64 / 1e6);
        if self.published[CATCHING_UP] == u64::MAX {
            return; // The first publish: nothing changed yet.
        }
        if values[CATCHING_UP] != self.published[CATCHING_UP] {
            if values[CATCHING_UP] == 1 {
                eprintln!(
                    "[{at:.3} ms] replica {me}: needs positions no log holds any more: \
                     installing a snapshot from another replica"
                );
            } else if values[HALTED] == 0 {
                // (A transfer that ends in a halt says so below.)
                let port = self.app.port;
                eprintln!(
                    "[{at:.3} ms] replica {me}: installed a snapshot of {} bytes at position {} in \
                     {:.3} ms; continues from the log",
                    port.get(Stat::InstalledBytes),
                    port.get(Stat::InstalledAt),
                    port.get(Stat::InstallEndedNs)
                        .saturating_sub(port.get(Stat::InstallBeganNs)) as f64
                        / 1e6
                );
            }
        }
        if values[DONATING] != self.published[DONATING] {
            match values[DONATING] {
                0 => eprintln!("[{at:.3} ms] replica {me}: no longer donates a snapshot"),
                to => eprintln!(
                    "[{at:.3} ms] replica {me}: donates a snapshot to replica {}",
                    to - 1
                ),
            }
        }
        if let (Some(reason), 0) = (
            Halt::from_code(values[HALTED] as u32),
            self.published[HALTED],
        ) {
            eprintln!(
                "[{at:.3} ms] replica {me}: HALTED (reason {}): {}",
                reason.code(),
                reason.describe()
            );
        }
    }

    /// Role changes are rare and worth a line in the replica's log.
    fn log_role(&mut self, tenure: Option<u32>, applied: u64) {
        let me = self.me;
        let at = monotonic_ns() as f64 / 1e6;
        let view = self.shared.leader();
        if let Some(last) = self.preparing.take() {
            if tenure.is_none_or(|t| t != last.tenure) && self.published[FAST_PATH] == 0 {
                let members: Vec<String> = (0..self.replicas)
                    .filter(|&p| p != me)
                    .map(|p| {
                        let m = last.members[p as usize];
                        format!("{p}: {} sent {} applied {}", m.state, m.sent, m.applied)
                    })
                    .collect();
                eprintln!(
                    "[{at:.3} ms] replica {me}: tenure {} ended while preparing, in phase {} \
                     (granted by {:#b}, next {}; {})",
                    last.tenure,
                    last.phase,
                    last.confirmed,
                    last.next,
                    members.join(", ")
                );
            }
        }
        match tenure {
            Some(t) => eprintln!("[{at:.3} ms] replica {me}: leading in tenure {t} from position {applied}"),
            None => eprintln!(
                "[{at:.3} ms] replica {me}: not leading (applied {applied}, considers {view:?} leader)"
            ),
        }
    }

    /// Writes the latency histogram for a client that asked (not on the hot path).
    fn dump_latency(&mut self, request: u64) {
        let path = latency_path(&self.dir, self.me);
        let mut bytes = Vec::new();
        use hdrhistogram::serialization::Serializer;
        let serialized = hdrhistogram::serialization::V2Serializer::new()
            .serialize(&self.app.latency, &mut bytes)
            .is_ok();
        if serialized && std::fs::write(&path, &bytes).is_ok() {
            self.app.port.set(Stat::Dumped, request);
        }
    }
}

/// Where replica `id` writes its latency histogram when asked.
pub fn latency_path(dir: &Path, id: ReplicaId) -> PathBuf {
    dir.join(format!("latency-{id}.hist"))
}

/// What the background thread does, one step at a time.
pub struct BackgroundLoop<'s, 'p, F: Fabric = ShmFabric> {
    plane: BackgroundPlane<'s>,
    fabric: F,
    me: ReplicaId,
    ticker: Ticker,
    /// Where it publishes when it elected itself.
    port: &'p Port,
    seen: (Option<ReplicaId>, u8, Option<ReplicaId>),
    /// Deaths taken, false suspicions and patience, as last published.
    judged: (u32, u32, u8),
    /// Permission switches and refused peers, as last published.
    permissions: (u32, u8),
}

impl<'s, 'p, F: Fabric> BackgroundLoop<'s, 'p, F> {
    /// The loop over a built plane, publishing through `port`.
    pub fn new(
        plane: BackgroundPlane<'s>,
        fabric: F,
        me: ReplicaId,
        ticker: Ticker,
        port: &'p Port,
    ) -> Self {
        BackgroundLoop {
            plane,
            fabric,
            me,
            ticker,
            port,
            seen: (None, 0, None),
            judged: (0, 0, 0),
            permissions: (0, 0),
        }
    }

    /// True once the cluster refused this replica's configuration (see `BackgroundStatus`).
    pub fn refused(&self) -> bool {
        self.plane.status().refused
    }

    /// One poll of the plane.
    pub fn step(&mut self) {
        // The poll that elects this replica also hands the tenure to the replication thread,
        // which may start on it before the poll returns: the poll's start precedes both.
        let started_ns = monotonic_ns();
        self.plane
            .poll(self.ticker.at(started_ns), &mut self.fabric);
        let status = self.plane.status();
        let permissions = (status.permission_switches, status.refused_peers);
        if permissions != self.permissions {
            self.permissions = permissions;
            let (switches, refused) = permissions;
            self.port.set(Stat::PermissionSwitches, switches as u64);
            self.port.set(Stat::RefusedPeers, refused as u64);
        }
        let judged = (status.deaths, status.false_suspicions, status.patience);
        if judged != self.judged {
            self.judged = judged;
            self.port.set(Stat::Deaths, status.deaths as u64);
            self.port
                .set(Stat::FalseSuspicions, status.false_suspicions as u64);
            self.port.set(Stat::Patience, status.patience as u64);
            eprintln!(
                "[{:.3} ms] replica {}: peers failed on a death notice {}, declared failed but \
                 alive {}, patience {} (unchanged reads per point)",
                monotonic_ns() as f64 / 1e6,
                self.me,
                status.deaths,
                status.false_suspicions,
                status.patience
            );
        }
        let seen = (status.leader, status.alive, status.holder);
        if seen != self.seen {
            let elected = status.leader == Some(self.me);
            if elected != (self.seen.0 == Some(self.me)) {
                self.port
                    .set(Stat::ElectedNs, if elected { started_ns } else { 0 });
            }
            self.seen = seen;
            eprintln!(
                "[{:.3} ms] replica {}: considers {:?} leader, alive {:#09b}, log writable by {:?}",
                monotonic_ns() as f64 / 1e6,
                self.me,
                status.leader,
                status.alive,
                status.holder
            );
        }
    }
}

/// A replica's files and planes, built but not yet running.
pub struct Parts {
    /// The region (shared by both planes' fabrics).
    pub own: Arc<OwnRegion>,
    /// The region directory.
    pub dir: RegionDir,
    /// The client port.
    pub port: Port,
    /// The in-process intake of a replica that serves clients over the network.
    pub intake: Option<Intake>,
    /// The RDMA endpoint, with the verbs fabric.
    #[cfg(feature = "verbs")]
    pub endpoint: Option<Arc<Endpoint>>,
}

impl Parts {
    /// Creates the region and the port of `spec`'s replica.
    pub fn create(spec: &NodeSpec) -> Result<Parts, NodeError> {
        let dir = RegionDir::open(&spec.dir).map_err(NodeError::Shm)?;
        let own = OwnRegion::create(&dir, spec.id, &spec.config).map_err(NodeError::Shm)?;
        if let Previous::Reclaimed { pid, incarnation } = own.previous() {
            eprintln!(
                "replica {}: reclaimed {} left by pid {pid} (incarnation {incarnation}, no longer \
                 running); starting incarnation {}",
                spec.id,
                own.path().display(),
                own.incarnation()
            );
        }
        let port = Port::create(dir.path(), spec.id, own.incarnation()).map_err(NodeError::Port)?;
        let own = Arc::new(own);
        #[cfg(feature = "verbs")]
        let endpoint = match &spec.verbs {
            Some(verbs) => Some(
                Endpoint::open(spec.id, spec.config, verbs, own.clone())
                    .map_err(NodeError::Verbs)?,
            ),
            None => None,
        };
        #[cfg(not(feature = "verbs"))]
        if spec.verbs.is_some() {
            return Err(NodeError::NoVerbs);
        }
        Ok(Parts {
            own,
            dir,
            port,
            intake: spec.serve.as_ref().map(|_| Intake::new()),
            #[cfg(feature = "verbs")]
            endpoint,
        })
    }

    /// Builds both loops over `shared`, on the shared-memory fabric, hosting `app`.
    #[allow(clippy::type_complexity)]
    pub fn loops<'s, 'p, A: Application>(
        &'p self,
        spec: &NodeSpec,
        shared: &'s Shared,
        app: A,
    ) -> Result<
        (
            ReplicationLoop<'s, 'p, ShmFabric, A>,
            BackgroundLoop<'s, 'p>,
        ),
        NodeError,
    > {
        let fabric = |lane| ShmFabric::new(self.dir.clone(), spec.config, self.own.clone(), lane);
        self.loops_over(
            spec,
            shared,
            fabric(Plane::Replication),
            fabric(Plane::Background),
            app,
        )
    }

    /// Builds both loops over `shared`, each plane on its own fabric value, hosting `app`.
    #[allow(clippy::type_complexity)]
    pub fn loops_over<'s, 'p, F: Fabric, A: Application>(
        &'p self,
        spec: &NodeSpec,
        shared: &'s Shared,
        replication_fabric: F,
        background_fabric: F,
        app: A,
    ) -> Result<(ReplicationLoop<'s, 'p, F, A>, BackgroundLoop<'s, 'p, F>), NodeError> {
        let (replication, mut background) =
            planes::<SLOT_MAX, ENTRY_MAX, QUEUE_BYTES>(spec.config, spec.id, shared)
                .map_err(NodeError::Replica)?;
        let mut replication = Box::new(replication);
        let incarnation = self.own.incarnation() as u32;
        replication.begin_incarnation(incarnation);
        background.begin_incarnation(incarnation);
        let ticker = Ticker::new(spec.tick_ns);
        Ok((
            ReplicationLoop::new(
                spec,
                replication,
                replication_fabric,
                Hosted::new(app, &self.port, self.intake.as_ref(), spec.id),
                shared,
            ),
            BackgroundLoop::new(background, background_fabric, spec.id, ticker, &self.port),
        ))
    }
}

/// Runs replica `spec` of the key-value store, inside client sessions, until `stop` is set
/// (see [`run_app`]).
pub fn run(spec: &NodeSpec, stop: &AtomicBool) -> Result<(), NodeError> {
    run_app(spec, crate::kv::kv_app(spec.kv_keys), stop)
}

/// Runs replica `spec` hosting `app` until `stop` is set: both planes on their own threads.
/// Every replica of a cluster must host the same application, started from the same state.
pub fn run_app<A: Application>(
    spec: &NodeSpec,
    app: A,
    stop: &AtomicBool,
) -> Result<(), NodeError> {
    run_serving(spec, app, None::<NoFrontEnd>, stop)
}

/// A network front end: it runs on a thread of its own beside the planes of a replica whose
/// spec says it serves (`NodeSpec::serve`), takes its clients' commands to the replication
/// plane through the intake, and reads the replica's status from its port.
pub trait FrontEnd: Send {
    /// Serves until `over` is set (the replica stops, halts or is refused).
    fn serve(&mut self, intake: &Intake, port: &Port, over: &AtomicBool);
}

/// The front end of a replica that serves no network clients.
pub enum NoFrontEnd {}

impl FrontEnd for NoFrontEnd {
    fn serve(&mut self, _: &Intake, _: &Port, _: &AtomicBool) {
        match *self {}
    }
}

/// [`run_app`], with `front_end` serving network clients when `spec.serve` says so.
pub fn run_serving<A: Application, E: FrontEnd>(
    spec: &NodeSpec,
    app: A,
    front_end: Option<E>,
    stop: &AtomicBool,
) -> Result<(), NodeError> {
    // Before any file is open: the reaper starts with a copy of the descriptor table, and a
    // copy of the lock file's descriptor would hold the lock until the reaper sheds it, so that
    // a replica killed in between could not be restarted at once ("already running").
    if let Err(e) = crate::teardown::start_idle_reaper() {
        eprintln!(
            "replica {}: cannot start the reaper of its memory ({e}); when it dies, its last \
             thread unmaps that memory at normal priority",
            spec.id
        );
    }
    let parts = Parts::create(spec)?;
    eprintln!(
        "replica {}: pid {}, incarnation {}, {} polling; {}",
        spec.id,
        std::process::id(),
        parts.own.incarnation(),
        match spec.polling {
            Polling::Busy => "busy",
            Polling::Shared => "shared",
        },
        IsolatedCores::detect().describe()
    );
    lock_memory(spec.id);
    let shared = Shared::new();
    #[cfg(feature = "verbs")]
    if let Some(endpoint) = &parts.endpoint {
        eprintln!(
            "replica {}: verbs fabric on {} port {}",
            spec.id,
            endpoint.device(),
            spec.verbs.as_ref().map_or(0, |v| v.port)
        );
        let (replication, background) = parts.loops_over(
            spec,
            &shared,
            VerbsFabric::new(endpoint.clone(), Plane::Replication),
            VerbsFabric::new(endpoint.clone(), Plane::Background),
            app,
        )?;
        let loops = (replication, background, None);
        return run_loops(spec, stop, &parts, &shared, loops, front_end);
    }
    // Only the shared-memory fabric has the peers' owners on this host to watch.
    let watch = LifeWatch::new(parts.dir.clone(), spec.config.replica_count, spec.id);
    let (replication, background) = parts.loops(spec, &shared, app)?;
    let loops = (replication, background, Some(watch));
    run_loops(spec, stop, &parts, &shared, loops, front_end)
}

/// Both loops, and the peers' lives to rest on (the shared-memory fabric only).
type Loops<'s, 'p, F, A> = (
    ReplicationLoop<'s, 'p, F, A>,
    BackgroundLoop<'s, 'p, F>,
    Option<LifeWatch>,
);

/// Runs both loops on their own threads until `stop`.
///
/// In `shared` polling each plane rests on its own doorbell, and each rings the other when the
/// words it hands over change: the background plane's grant of a tenure (or its withdrawal) to
/// the replication plane, the replication plane's stepping down (or up) to the background plane.
/// With a `watch` (the shared-memory fabric), the background plane also rests on the peers'
/// lives, so that a peer's death wakes it. A `front_end` serves on a third thread, until the
/// replication thread ends.
fn run_loops<F: Fabric + Send, A: Application, E: FrontEnd>(
    spec: &NodeSpec,
    stop: &AtomicBool,
    parts: &Parts,
    shared: &Shared,
    (mut replication, mut background, mut watch): Loops<'_, '_, F, A>,
    front_end: Option<E>,
) -> Result<(), NodeError> {
    parts.port.set(Stat::Ready, 1);
    // A halted replica stops both planes and exits: left running, it would keep answering
    // permission requests and reads for a log it no longer applies.
    let halted = AtomicU32::new(0);
    let halted = &halted;
    let refused = AtomicBool::new(false);
    let refused = &refused;
    let replication_bell = parts.port.replica_bell();
    let background_bell = parts.own.background_bell();
    let own = &*parts.own;
    let over = AtomicBool::new(false);
    let over = &over;
    std::thread::scope(|scope| {
        let polling = spec.polling;
        // In `shared` polling a busy leader's replication plane spins: in a real-time class it
        // would keep every normal thread off its core. Background planes only sleep and poll.
        let (replication_priority, background_priority) = match polling {
            Polling::Busy => (spec.realtime_priority, spec.realtime_priority),
            Polling::Shared => (None, spec.realtime_priority),
        };
        let id = spec.id;
        let (rc, bc) = (spec.replication_core, spec.background_core);
        let read_period_ns = spec.config.detector.read_period_ticks as u64 * spec.tick_ns;
        let background_rest = Duration::from_nanos((read_period_ns / 4).clamp(10_000, 250_000));
        // Named, so that `top -H` and scheduler traces tell the planes of each replica apart.
        let named = |plane: &str| std::thread::Builder::new().name(format!("mu-{id}-{plane}"));
        named("repl")
            .spawn_scoped(scope, move || {
                place_thread(id, "replication", rc, replication_priority);
                let _life = hold_life(own, id, Plane::Replication);
                let mut acting = shared.acting();
                let mut idle_since = None;
                let rest = |bell: Bell<'_>, seen, pause| bell.sleep(seen, pause);
                spin(stop, polling, replication_bell, rest, || {
                    if refused.load(Ordering::Relaxed) {
                        return Pace::Stop;
                    }
                    let role = replication.step();
                    if let Some(reason) = replication.halted() {
                        halted.store(reason.code(), Ordering::Relaxed);
                        background_bell.ring();
                        return Pace::Stop;
                    }
                    if shared.acting() != acting {
                        acting = shared.acting();
                        background_bell.ring();
                    }
                    if role != (Role::Leading { busy: false }) {
                        idle_since = None;
                    }
                    match role {
                        Role::Leading { busy: true } => Pace::Spin,
                        Role::Leading { busy: false } => {
                            let since = *idle_since.get_or_insert_with(monotonic_ns);
                            if monotonic_ns() - since < LEADER_SPIN_GRACE_NS {
                                Pace::Spin
                            } else {
                                Pace::Rest(LEADER_REST)
                            }
                        }
                        Role::Transferring => Pace::Rest(TRANSFER_REST),
                        Role::Following { backlog: true } => Pace::Spin,
                        Role::Following { backlog: false } => Pace::Rest(FOLLOWER_REST),
                    }
                });
                over.store(true, Ordering::Relaxed);
            })
            .expect("spawn the replication plane's thread");
        if let (Some(mut front_end), Some(intake)) = (front_end, parts.intake.as_ref()) {
            let port = &parts.port;
            named("serve")
                .spawn_scoped(scope, move || front_end.serve(intake, port, over))
                .expect("spawn the front end's thread");
        }
        named("bg")
            .spawn_scoped(scope, move || {
                place_thread(id, "background", bc, background_priority);
                let _life = hold_life(own, id, Plane::Background);
                let mut lead = shared.lead();
                let rest = |bell: Bell<'_>, seen, pause| match watch.as_mut() {
                    Some(watch) => {
                        watch.rest(bell, seen, pause);
                    }
                    None => bell.sleep(seen, pause),
                };
                spin(stop, polling, background_bell, rest, || {
                    if halted.load(Ordering::Relaxed) != 0 {
                        return Pace::Stop;
                    }
                    background.step();
                    if shared.lead() != lead {
                        lead = shared.lead();
                        replication_bell.ring();
                    }
                    if background.refused() {
                        refused.store(true, Ordering::Relaxed);
                        replication_bell.ring();
                        return Pace::Stop;
                    }
                    Pace::Rest(background_rest)
                });
            })
            .expect("spawn the background plane's thread");
    });
    if refused.load(Ordering::Relaxed) {
        return Err(NodeError::Refused);
    }
    match Halt::from_code(halted.load(Ordering::Relaxed)) {
        None => Ok(()),
        Some(reason) => Err(NodeError::Halted(reason)),
    }
}

/// Calls `step` until `stop` or until it says [`Pace::Stop`], idling as the polling mode says.
///
/// In `busy` mode every thread spins. In `shared` mode only the leader's replication plane
/// spins (yielding now and then), and only while it has work or had some within
/// [`LEADER_SPIN_GRACE_NS`]: it is the only one on the commit path, since followers are
/// written to without their CPU; an idle leader rests on its port's doorbell, which every
/// client request rings. Follower replication planes, the two ends of a state transfer
/// and background planes rest on their doorbell between polls, which leaves the cores to the
/// threads that need them; without that, on a host with fewer cores than threads, a
/// background plane starved for a few scheduler slices misses heartbeats and deposes a healthy
/// leader. A ring ends the rest at once.
fn spin(
    stop: &AtomicBool,
    polling: Polling,
    bell: Bell<'_>,
    mut rest: impl FnMut(Bell<'_>, u32, Duration),
    mut step: impl FnMut() -> Pace,
) {
    if polling == Polling::Shared {
        // Sleeps end when asked, not up to 50 µs later.
        // SAFETY: PR_SET_TIMERSLACK takes one integer (the slack in ns, passed as an unsigned
        // long as the call expects) and sets the calling thread's timer slack; no pointer.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    }
    let mut polls = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let seen = bell.seen();
        let pace = step();
        polls = polls.wrapping_add(1);
        match (polling, pace) {
            (_, Pace::Stop) => return,
            (Polling::Busy, _) => std::hint::spin_loop(),
            (Polling::Shared, Pace::Rest(pause)) => rest(bell, seen, pause),
            (Polling::Shared, Pace::Spin) if polls % YIELD_EVERY == 0 => std::thread::yield_now(),
            (Polling::Shared, Pace::Spin) => std::hint::spin_loop(),
        }
    }
}

/// What a thread does between polls in `shared` mode.
#[derive(Clone, Copy)]
enum Pace {
    Spin,
    Rest(Duration),
    Stop,
}

/// How long a follower's replication plane sleeps between polls in `shared` mode: it only
/// applies what the leader already wrote into its log, so this delays its applied position,
/// never a commit. A follower with a backlog (a poll applies a bounded number of slots) polls
/// on without resting: resting, it would fall behind a leader of large commands by up to a lap,
/// and the leader would wait on its recycling.
const FOLLOWER_REST: Duration = Duration::from_micros(50);

/// How long a leader with nothing to take or decide keeps spinning in `shared` mode before it
/// rests: a client that sends its next command as soon as it hears the last one finds it still
/// spinning, while an idle leader leaves the core to others (a busy neighbour, the client, the
/// planes of a take-over).
const LEADER_SPIN_GRACE_NS: u64 = 200_000;

/// How long an idle leader sleeps between polls in `shared` mode: a client's request rings it
/// awake, so this only paces its recycling reads and the detection of a write a follower refused.
const LEADER_REST: Duration = Duration::from_micros(100);

/// How long a replication plane that installs or donates a snapshot sleeps between polls in
/// `shared` mode. Each such poll moves a chunk (tens of µs of copying and checksumming): resting
/// longer than a follower keeps a transfer from taking the cores from the leader's polls.
const TRANSFER_REST: Duration = Duration::from_micros(200);

/// Locks current and future memory so that the hot path takes no page faults.
fn lock_memory(id: ReplicaId) {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    if let Err(e) = mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
        eprintln!(
            "replica {id}: mlockall failed ({e}); running unlocked (raise `ulimit -l` or grant \
             CAP_IPC_LOCK)"
        );
    }
}

/// Has the calling thread hold `lane`'s life mutex, saying so when it cannot (peers then learn
/// of this replica's death from its owner mutex alone, a little later).
fn hold_life(own: &OwnRegion, id: ReplicaId, lane: Plane) -> Option<LifeHold<'_>> {
    own.hold_life(lane)
        .map_err(|e| eprintln!("replica {id}: cannot hold the {lane:?} plane's life mutex: {e}"))
        .ok()
}

/// Pins the calling thread and sets its scheduling class, saying what did not work.
fn place_thread(id: ReplicaId, plane: &str, core: Option<usize>, priority: Option<u8>) {
    if let Some(core) = core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            eprintln!("replica {id}: cannot pin the {plane} plane to core {core}");
        }
    }
    if let Some(priority) = priority {
        let param = libc::sched_param {
            sched_priority: priority as i32,
        };
        // SAFETY: pid 0 is the calling thread; the kernel reads one sched_param through the
        // pointer, which points at `param`, a live local.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
            eprintln!(
                "replica {id}: SCHED_FIFO {priority} for the {plane} plane failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
