//! The [`Endpoint`]: one replica's device, protection domain, registrations and queue pairs, and
//! the threads that pair queue pairs with peers (see the module doc of [`super`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use mu_nostd::{layout::LAYOUT_VERSION, Config, Layout, ReplicaId};

pub use super::ibv::VerbsError;
use super::ibv::{Access, Cq, DeviceList, Local, Mr, Op, Path, Pd, Qp};
use super::watch::{self, Deaths, Kept};
use super::wire::{
    self, Hello, Identity, Kick, Plane, Refusal, Reply, Watch, Window, MESSAGE_BYTES,
};
use super::DEPTH;
use crate::clock::monotonic_ns;
use crate::node::VerbsSpec;
use crate::shm::OwnRegion;

/// A line of replica `me`'s log, dated in milliseconds of the monotonic clock that the planes'
/// lines use too, so that the logs of all replicas merge into one timeline (a permission switch,
/// a kick and the pairings it causes happen in three processes).
macro_rules! say {
    ($me:expr, $($arg:tt)*) => {
        eprintln!(
            "[{:.3} ms] replica {}: {}",
            monotonic_ns() as f64 / 1e6,
            $me,
            format_args!($($arg)*)
        )
    };
}

/// Bytes of a write sent inline when the device allows it: records and commit records (16 and
/// 32 bytes) go without a DMA read of the source.
const INLINE: u32 = 64;
/// Outstanding RDMA reads per queue pair, at most.
const RD_ATOMIC_MAX: i32 = 16;
/// How long a handshake may take on the wire.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(250);
/// First and longest wait between failed handshakes with one peer.
const BACKOFF_MIN: Duration = Duration::from_millis(2);
const BACKOFF_MAX: Duration = Duration::from_millis(100);

/// One registration of a replica's region: an area and what the device lets be done to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registration {
    /// First region offset.
    pub start: u32,
    /// Region offset past the end.
    pub end: u32,
    /// The rights.
    pub access: Access,
}

/// Registrations of a replica's region.
pub const REGISTRATIONS: usize = 4;
/// Indices into [`registrations`].
const LOCAL: usize = 0;
const BACKGROUND: usize = 1;
const LOG: usize = 2;
const READ: usize = 3;

/// What a replica registers with the device: the whole region for local access (the source of
/// writes, the landing place of reads); the header and background area and the log area,
/// readable and writable by peers (the log only through a granted replication-plane queue
/// pair); and everything peers may read (`0..scratch`: header, background, log and transfer
/// areas) once more, read-only: the key of every peer's reads, and the log key
/// background-plane peers get, so that the device itself keeps their writes out of the log.
/// No key lets a peer write the transfer area (only its owner writes its offers and chunks) or
/// reach the scratch area.
pub fn registrations(layout: &Layout) -> [Registration; REGISTRATIONS] {
    let remote = Access::REMOTE_READ
        .with(Access::REMOTE_WRITE)
        .with(Access::LOCAL_WRITE);
    let area = |start, end, access| Registration { start, end, access };
    let mut all = [area(0, 0, Access::NONE); REGISTRATIONS];
    all[LOCAL] = area(0, layout.region_bytes, Access::LOCAL_WRITE);
    all[BACKGROUND] = area(0, layout.log, remote);
    all[LOG] = area(layout.log, layout.transfer, remote);
    all[READ] = area(0, layout.scratch, Access::REMOTE_READ);
    all
}

/// Queue pairs a replica creates: a requester and a responder per peer and plane.
pub const fn queue_pairs(replicas: u8) -> u32 {
    4 * (replicas as u32).saturating_sub(1)
}

/// Entries of each plane's completion queue: room for every requester's outstanding work
/// twice over (entries of a reset queue pair may still wait in it).
pub const fn completion_entries(replicas: u8) -> u32 {
    2 * replicas as u32 * DEPTH
}

/// Where a requester stands, as its plane sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Connection {
    /// Reset, or being paired: not ready to send.
    Pairing,
    /// Ready, but the peer closed this pairing (see [`Endpoint::grant`]): reconnect.
    Kicked,
    /// Ready to send, in this pairing generation (never 0).
    Ready {
        /// Bumped by every pairing.
        generation: u32,
    },
}

/// A requester queue pair and its pairing.
struct Requester {
    qp: Qp,
    /// False while reset or being paired; true once ready to send (see the invariants).
    ready: AtomicBool,
    /// Bumped by every pairing, so that the plane refreshes the peer's window.
    generation: AtomicU32,
    /// The peer closed this pairing (see [`Endpoint::grant`]): the plane reconnects.
    kicked: AtomicBool,
    link: Mutex<Link>,
}

struct Link {
    window: Window,
    /// Where the next pairing's PSNs start from: the next PSN the queue pair would have sent
    /// when it was last reset.
    last_psn: u32,
    /// The first PSN of the current pairing, which names it in a kick.
    paired_psn: u32,
}

/// A responder's [`Responder::kick`] word: this bit, and the first PSN of the pairing closed.
const KICK_WANTED: u32 = 1 << 31;

/// A responder queue pair and what the owner allows on it.
struct Responder {
    qp: Qp,
    pairing: Mutex<Pairing>,
    /// A kick for the peer is due: its pairing with this responder was closed.
    kick: AtomicU32,
}

#[derive(Clone, Copy)]
struct Pairing {
    /// The peer's requester, once paired.
    remote: Option<Path>,
    /// The owner granted the log to this peer and has not revoked it since (replication plane
    /// only). It outlives pairings: a peer that reconnects keeps its grant, as the contract's
    /// permission is per peer.
    granted: bool,
    /// The access flags include `REMOTE_WRITE` now.
    writable: bool,
    /// This pairing was writable when the owner revoked it: a write of the peer's earlier
    /// tenure may still be in flight on it, so it is never opened again.
    tainted: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks aborts the replica anyway (planes don't unwind).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn setup_error(what: String, why: String) -> VerbsError {
    VerbsError {
        what,
        error: io::Error::other(why),
    }
}

/// One replica's RDMA endpoint. Fields drop in order: queue pairs, then queues and
/// registrations, and the region's memory last.
pub struct Endpoint {
    requesters: [Vec<Option<Requester>>; 2],
    responders: [Vec<Option<Responder>>; 2],
    initiators: Vec<OnceLock<Thread>>,
    cqs: [Arc<Cq>; 2],
    /// The region's registrations, as [`registrations`] lists them.
    registered: Vec<Mr>,
    me: ReplicaId,
    config: Config,
    identity: Identity,
    local: Local,
    gid: [u8; 16],
    lid: u16,
    mtu: u32,
    window: Window,
    addresses: Vec<SocketAddr>,
    device: String,
    /// The watch connections peers opened to this process (see `verbs/watch.rs`).
    kept: Kept,
    /// Kicks taken so far (see [`Endpoint::kicks`]).
    kicks: AtomicU32,
    /// The peers' lives this replica's watchers saw end.
    deaths: Deaths,
    own: Arc<OwnRegion>,
}

impl Endpoint {
    /// Opens the device, registers `own`'s region and creates every queue pair; then starts
    /// listening on this replica's address and pairing with every peer.
    pub fn open(
        me: ReplicaId,
        config: Config,
        spec: &VerbsSpec,
        own: Arc<OwnRegion>,
    ) -> Result<Arc<Endpoint>, VerbsError> {
        assert!(config.validate().is_ok() && config.contains(me));
        assert_eq!(spec.addresses.len(), config.replica_count as usize);
        let list = DeviceList::get()?;
        if list.names().is_empty() {
            return Err(setup_error(
                format!("open RDMA device {}", spec.device),
                "this host has no RDMA device (no NIC, and no Soft-RoCE link: `rdma link add \
                 rxe0 type rxe netdev IFACE`); `mu doctor` lists what is there"
                    .into(),
            ));
        }
        let context = list.open(&spec.device)?;
        let port = context.port_attr(spec.port)?;
        if !port.active() {
            return Err(setup_error(
                format!("use port {} of {}", spec.port, spec.device),
                format!("the port is not active (state {})", port.state),
            ));
        }
        let gid = context.gid(spec.port, spec.gid_index)?;
        if gid == [0; 16] {
            return Err(setup_error(
                format!(
                    "use GID {} of {} port {}",
                    spec.gid_index, spec.device, spec.port
                ),
                "that GID table entry is empty (`mu doctor` lists the table)".into(),
            ));
        }
        let device = context.device_attr()?;
        let local = Local {
            port: spec.port,
            gid_index: spec.gid_index,
            rd_initiator: device.max_qp_init_rd_atom.clamp(1, RD_ATOMIC_MAX) as u8,
            rd_target: device.max_qp_rd_atom.clamp(1, RD_ATOMIC_MAX) as u8,
        };
        let pd = Pd::new(&context)?;
        let layout = Layout::new(&config);
        let mut registered = Vec::with_capacity(REGISTRATIONS);
        for area in registrations(&layout) {
            let len = (area.end - area.start) as usize;
            // SAFETY: the area lies inside the region (see `registrations`), whose memory is
            // `own`'s mapping; the endpoint holds `own` and drops it after the registrations
            // (field order), so the memory stays mapped for as long as the registration lives.
            // The device may write it at any time (remote writes, reads landing), which is
            // fine: the region is accessed only atomically (`mem`), never through references
            // to plain bytes.
            registered
                .push(unsafe { Mr::register(&pd, own.region(area.start), len, area.access)? });
        }
        let n = config.replica_count as usize;
        let entries = completion_entries(config.replica_count) as i32;
        let cqs = [Cq::new(&context, entries)?, Cq::new(&context, entries)?];
        // Responders never post, so their queue sees no completions.
        let quiet = Cq::new(&context, 4)?;
        let mut requesters: [Vec<Option<Requester>>; 2] = [Vec::new(), Vec::new()];
        let mut responders: [Vec<Option<Responder>>; 2] = [Vec::new(), Vec::new()];
        for plane in Plane::ALL {
            for peer in 0..config.replica_count {
                if peer == me {
                    requesters[plane as usize].push(None);
                    responders[plane as usize].push(None);
                    continue;
                }
                let cq = &cqs[plane as usize];
                requesters[plane as usize].push(Some(Requester {
                    qp: Qp::new(&pd, cq, cq, DEPTH, INLINE)?,
                    ready: AtomicBool::new(false),
                    generation: AtomicU32::new(0),
                    kicked: AtomicBool::new(false),
                    link: Mutex::new(Link {
                        window: Window::NONE,
                        last_psn: initial_psn(me, peer, plane),
                        paired_psn: 0,
                    }),
                }));
                responders[plane as usize].push(Some(Responder {
                    qp: Qp::new(&pd, &quiet, &quiet, 1, 0)?,
                    pairing: Mutex::new(Pairing {
                        remote: None,
                        granted: false,
                        writable: false,
                        tainted: false,
                    }),
                    kick: AtomicU32::new(0),
                }));
            }
        }
        let address = spec.addresses[me as usize];
        let listener = TcpListener::bind(address).map_err(|error| VerbsError {
            what: format!("listen for peers on {address}"),
            error,
        })?;
        let endpoint = Arc::new(Endpoint {
            requesters,
            responders,
            initiators: (0..n).map(|_| OnceLock::new()).collect(),
            cqs,
            window: Window {
                base: own.region(0) as u64,
                background_rkey: registered[BACKGROUND].rkey(),
                log_rkey: registered[LOG].rkey(),
                read_rkey: registered[READ].rkey(),
            },
            registered,
            me,
            config,
            identity: Identity {
                layout_version: LAYOUT_VERSION,
                config_hash: config.hash(),
            },
            local,
            gid,
            lid: port.lid,
            mtu: port.active_mtu,
            addresses: spec.addresses.clone(),
            device: spec.device.clone(),
            kept: Kept::new(config.replica_count),
            kicks: AtomicU32::new(0),
            deaths: Deaths::new(config.replica_count),
            own,
        });
        endpoint.start(listener).map_err(|error| VerbsError {
            what: "start the handshake threads".into(),
            error,
        })?;
        Ok(endpoint)
    }

    fn start(self: &Arc<Self>, listener: TcpListener) -> io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("mu-verbs-accept".into())
            .spawn(move || me.accept(listener))?;
        for peer in 0..self.config.replica_count {
            if peer == self.me {
                continue;
            }
            let me = self.clone();
            let handle = std::thread::Builder::new()
                .name(format!("mu-verbs-pair-{peer}"))
                .spawn(move || me.initiate(peer))?;
            let _ = self.initiators[peer as usize].set(handle.thread().clone());
            let me = self.clone();
            let watch = Watch {
                identity: self.identity,
                from: self.me,
                to: peer,
            };
            let address = self.addresses[peer as usize];
            std::thread::Builder::new()
                .name(format!("mu-verbs-watch-{peer}"))
                .spawn(move || watch::watch_forever(address, watch, &me.deaths))?;
        }
        Ok(())
    }

    /// The latest life of `peer` this replica saw end (see `verbs/watch.rs`).
    pub(super) fn ended_life(&self, peer: ReplicaId) -> Option<u32> {
        self.deaths.ended(peer)
    }

    /// This replica's id.
    pub fn me(&self) -> ReplicaId {
        self.me
    }

    /// The cluster configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The device name.
    pub fn device(&self) -> &str {
        &self.device
    }

    pub(super) fn cq(&self, plane: Plane) -> Arc<Cq> {
        self.cqs[plane as usize].clone()
    }

    fn requester(&self, plane: Plane, peer: ReplicaId) -> &Requester {
        match self.requesters[plane as usize].get(peer as usize) {
            Some(Some(r)) => r,
            _ => unreachable!("peer {peer} checked by the fabric"),
        }
    }

    fn responder(&self, plane: Plane, peer: ReplicaId) -> &Responder {
        match self.responders[plane as usize].get(peer as usize) {
            Some(Some(r)) => r,
            _ => unreachable!("peer {peer} checked by the caller"),
        }
    }

    pub(super) fn requester_qpns(&self, plane: Plane) -> Vec<(u32, ReplicaId)> {
        self.requesters[plane as usize]
            .iter()
            .enumerate()
            .filter_map(|(peer, r)| r.as_ref().map(|r| (r.qp.qpn(), peer as ReplicaId)))
            .collect()
    }

    /// Where `peer`'s requester of `plane` stands.
    pub(super) fn connection(&self, plane: Plane, peer: ReplicaId) -> Connection {
        let r = self.requester(plane, peer);
        if !r.ready.load(Ordering::Acquire) {
            Connection::Pairing
        } else if r.kicked.load(Ordering::Acquire) {
            Connection::Kicked
        } else {
            Connection::Ready {
                generation: r.generation.load(Ordering::Acquire),
            }
        }
    }

    pub(super) fn window_of(&self, plane: Plane, peer: ReplicaId) -> Window {
        lock(&self.requester(plane, peer).link).window
    }

    /// This replica's region.
    pub(super) fn own(&self) -> &OwnRegion {
        &self.own
    }

    /// Posts one RDMA write or read between region bytes `local..local + len` and `remote`
    /// (covered by `rkey`) on the requester of `plane` and `peer`.
    ///
    /// # Safety
    /// `local..local + len` must lie inside the region: the device reads or writes those bytes
    /// through the local registration, which covers the region and nothing else.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn post(
        &self,
        plane: Plane,
        peer: ReplicaId,
        op: Op,
        wr_id: u64,
        local: u32,
        len: u32,
        remote: u64,
        rkey: u32,
    ) -> Result<(), i32> {
        let r = self.requester(plane, peer);
        let address = self.own.region(local) as u64;
        // SAFETY: `local..local + len` lies inside the region (this function's contract), so
        // `address..address + len` lies inside `own`'s mapping, which the `LOCAL` registration
        // (`lkey`) covers. The endpoint keeps that mapping (`own`) until after the
        // registrations and queue pairs are gone (field order), so it stays mapped until the
        // work request completes or its queue pair is reset or destroyed; the device's writes
        // into it (reads landing) are fine, the region being accessed only atomically (`mem`).
        unsafe {
            r.qp.post(
                op,
                wr_id,
                address,
                len,
                self.registered[LOCAL].lkey(),
                remote,
                rkey,
            )
        }
    }

    /// Kicks taken so far: a plane looks for closed pairings only when this moved, so that its
    /// polls (the leader's hot path) pay one load, not one per peer.
    pub(super) fn kicks(&self) -> u32 {
        self.kicks.load(Ordering::Acquire)
    }

    /// Moves the requester of a pairing `peer` closed (a kick) to the error state, so that the
    /// work outstanding on it completes failed (flushed) now instead of when the transport gives
    /// up. Only the plane's own thread calls it, while the requester is ready.
    pub(super) fn flush_kicked(&self, plane: Plane, peer: ReplicaId) {
        let r = self.requester(plane, peer);
        if !(r.ready.load(Ordering::Acquire) && r.kicked.load(Ordering::Acquire)) {
            return;
        }
        if let Err(e) = r.qp.fail() {
            // Its work then fails when the transport gives up.
            say!(self.me, "{e}");
        }
    }

    /// Resets `peer`'s requester of `plane` (nothing more of what was posted is sent; packets
    /// already sent are fenced by the next pairing's PSNs) and asks for a new pairing.
    pub(super) fn reset_requester(&self, plane: Plane, peer: ReplicaId) {
        let r = self.requester(plane, peer);
        if r.ready.load(Ordering::Acquire) {
            let mut link = lock(&r.link);
            r.ready.store(false, Ordering::Release);
            r.kicked.store(false, Ordering::Release);
            // Read before the reset: what a queue pair reports in RESET is undefined.
            if let Ok((sq, _)) = r.qp.psns() {
                link.last_psn = sq;
            }
            if let Err(e) = r.qp.reset() {
                // Pairing resets it again before use; until then nothing is posted on it.
                say!(self.me, "{e}");
            }
        }
        self.wake_initiator(peer);
    }

    // ---- permissions -------------------------------------------------------------------------

    /// Opens the log to `peer`: on its current pairing by changing the access flags while the
    /// queue pair stays ready to send, or, when that pairing was revoked before (tainted) or the
    /// flags cannot change (the queue pair failed), on its next pairing: the current one is
    /// closed and the peer told to pair anew.
    pub fn grant(&self, peer: ReplicaId) {
        if peer == self.me || !self.config.contains(peer) {
            return;
        }
        let responder = self.responder(Plane::Replication, peer);
        let mut p = lock(&responder.pairing);
        if p.granted {
            return;
        }
        p.granted = true;
        let Some(remote) = p.remote else {
            say!(
                self.me,
                "log granted to replica {peer}, for its first connection"
            );
            return;
        };
        let started = Instant::now();
        let access = Access::REMOTE_READ.with(Access::REMOTE_WRITE);
        let how = if p.tainted {
            "closing its connection revoked before (its next one opens writable)"
        } else if responder.qp.set_access(access).is_ok() {
            p.writable = true;
            "access flags"
        } else {
            // Failed (a refused write put it in the error state): never revive it, a write of
            // the peer's could be retried on it.
            "closing its failed connection (its next one opens writable)"
        };
        if !p.writable {
            if let Err(e) = responder.qp.fail() {
                say!(self.me, "{e}");
            }
            // The peer's writes on the closed pairing vanish; told, it pairs anew at once
            // instead of when its transport gives up.
            responder
                .kick
                .store(remote.psn | KICK_WANTED, Ordering::Release);
            self.wake_initiator(peer);
        }
        say!(
            self.me,
            "log granted to replica {peer} by {how} in {:.1} µs",
            started.elapsed().as_secs_f64() * 1e6
        );
    }

    /// Closes the log to `peer`; once this returns, no write of `peer` lands in it, even one
    /// already under way (the queue pair is cycled through RESET, which waits for the device to
    /// finish the packet it is executing: on Soft-RoCE a change of the access flags alone does
    /// not). The pairing stays tainted: it is never opened again.
    pub fn revoke(&self, peer: ReplicaId) {
        if peer == self.me || !self.config.contains(peer) {
            return;
        }
        let responder = self.responder(Plane::Replication, peer);
        let mut p = lock(&responder.pairing);
        p.granted = false;
        if !p.writable {
            return;
        }
        let Some(remote) = p.remote else {
            unreachable!("a writable responder is paired");
        };
        let started = Instant::now();
        let fenced = responder
            .qp
            .set_access(Access::REMOTE_READ)
            .and_then(|()| self.cycle(&responder.qp, &remote, Access::REMOTE_READ));
        let how = match fenced {
            Ok(()) => "access flags and a queue pair cycle",
            Err(e) => match responder.qp.fail() {
                Ok(()) => {
                    say!(self.me, "revoke fell back to the error state: {e}");
                    "moving the queue pair to the error state"
                }
                Err(stuck) => {
                    // Going on would let a deposed leader write this log; a dead replica is
                    // safe (its registrations die with it).
                    say!(
                        self.me,
                        "cannot revoke replica {peer}'s write access ({e}; {stuck}); \
                         stopping"
                    );
                    std::process::abort();
                }
            },
        };
        p.writable = false;
        p.tainted = true;
        say!(
            self.me,
            "log revoked from replica {peer} by {how} in {:.1} µs",
            started.elapsed().as_secs_f64() * 1e6
        );
    }

    /// Takes `qp` (paired with `remote`) through RESET back to RTS with `access`, resuming the
    /// same sequence numbers, so that its peer's next packet is judged by `access`.
    fn cycle(&self, qp: &Qp, remote: &Path, access: Access) -> Result<(), VerbsError> {
        let (sq, rq) = qp.psns()?;
        qp.reset()?;
        let resumed = Path { psn: rq, ..*remote };
        qp.ready(&self.local, &resumed, sq, access)
    }

    fn wake_initiator(&self, peer: ReplicaId) {
        if let Some(thread) = self.initiators[peer as usize].get() {
            thread.unpark();
        }
    }

    // ---- handshakes --------------------------------------------------------------------------

    fn accept(&self, listener: TcpListener) {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    if let Err(e) = self.answer(stream) {
                        say!(self.me, "a handshake failed: {e}");
                    }
                }
                Err(e) => {
                    say!(self.me, "accepting a handshake failed: {e}");
                    std::thread::sleep(BACKOFF_MAX);
                }
            }
        }
    }

    fn answer(&self, mut stream: TcpStream) -> io::Result<()> {
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut buf = [0; MESSAGE_BYTES];
        stream.read_exact(&mut buf)?;
        if let Ok(kick) = Kick::decode(&buf) {
            self.kicked_by(&kick);
            return Ok(());
        }
        if let Ok(watch) = Watch::decode(&buf) {
            let life = self.own.incarnation() as u32;
            return self
                .kept
                .answer(stream, &watch, self.identity, self.me, life);
        }
        let reply = match Hello::decode(&buf) {
            Err(Some(_)) => Reply::Refuse(Refusal::Protocol {
                ours: wire::PROTOCOL_VERSION,
            }),
            Err(None) => Reply::Refuse(Refusal::BadRequest),
            Ok(hello) => {
                match wire::screen(&hello, self.identity, self.me, self.config.replica_count) {
                    Ok(()) => self.pair_responder(&hello).unwrap_or_else(|e| {
                        say!(self.me, "{e}");
                        Reply::Refuse(Refusal::Internal)
                    }),
                    Err(refusal) => {
                        say!(
                            self.me,
                            "refused a {} connection from replica {} ({}): {}",
                            hello.plane.name(),
                            hello.from,
                            stream
                                .peer_addr()
                                .map_or_else(|_| "?".into(), |a| a.to_string()),
                            match refusal {
                                Refusal::Identity { .. } => format!(
                                    "it runs another cluster configuration (layout version {}, \
                                     config hash {:016x}; ours {}, {:016x})",
                                    hello.identity.layout_version,
                                    hello.identity.config_hash,
                                    self.identity.layout_version,
                                    self.identity.config_hash
                                ),
                                other => other.to_string(),
                            }
                        );
                        Reply::Refuse(refusal)
                    }
                }
            }
        };
        stream.write_all(&reply.encode())
    }

    /// A peer closed our pairing with it: the plane's next post to it fails, so that the core
    /// reconnects now.
    fn kicked_by(&self, kick: &Kick) {
        if kick.identity != self.identity
            || kick.to != self.me
            || kick.from == self.me
            || !self.config.contains(kick.from)
        {
            return;
        }
        let r = self.requester(kick.plane, kick.from);
        let link = lock(&r.link);
        if r.ready.load(Ordering::Acquire) && link.paired_psn == kick.psn {
            r.kicked.store(true, Ordering::Release);
            self.kicks.fetch_add(1, Ordering::AcqRel);
            say!(
                self.me,
                "replica {} closed our {} pairing {}: pairing anew",
                kick.from,
                kick.plane.name(),
                kick.psn
            );
        } else {
            say!(
                self.me,
                "replica {} closed our {} pairing {}, already replaced",
                kick.from,
                kick.plane.name(),
                kick.psn
            );
        }
    }

    /// Tells `peer` that its `plane` pairing starting at `psn` was closed (best effort: without
    /// it, the peer finds out when its transport gives up).
    fn kick(&self, plane: Plane, peer: ReplicaId, psn: u32) -> io::Result<()> {
        let kick = Kick {
            identity: self.identity,
            from: self.me,
            to: peer,
            plane,
            psn,
        };
        let address = self.addresses[peer as usize];
        let mut stream = TcpStream::connect_timeout(&address, HANDSHAKE_TIMEOUT)?;
        stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        stream.write_all(&kick.encode())
    }

    /// Pairs this replica's responder for `hello`'s requester: writable if the log is granted
    /// to it (every write on a pairing is posted after the pairing was made, so after the grant).
    fn pair_responder(&self, hello: &Hello) -> Result<Reply, VerbsError> {
        let responder = self.responder(hello.plane, hello.from);
        let mut p = lock(&responder.pairing);
        let last = responder.qp.psns().map_or(0, |(sq, _)| sq);
        let psn = wire::next_psn(last);
        responder.qp.reset()?;
        let mtu = self.mtu.min(hello.path.mtu);
        let remote = Path { mtu, ..hello.path };
        let writable = hello.plane == Plane::Background || p.granted;
        let access = if writable {
            Access::REMOTE_READ.with(Access::REMOTE_WRITE)
        } else {
            Access::REMOTE_READ
        };
        responder.qp.ready(&self.local, &remote, psn, access)?;
        if hello.plane == Plane::Replication {
            say!(
                self.me,
                "replica {}'s replication connection paired ({}), {}",
                hello.from,
                hello.path.psn,
                if writable { "writable" } else { "read-only" }
            );
        }
        *p = Pairing {
            remote: Some(remote),
            granted: p.granted,
            writable: writable && hello.plane == Plane::Replication,
            tainted: false,
        };
        Ok(Reply::Accept {
            identity: self.identity,
            path: Path {
                qpn: responder.qp.qpn(),
                psn,
                gid: self.gid,
                lid: self.lid,
                mtu,
            },
            window: match hello.plane {
                Plane::Replication => self.window,
                // Read-only: the device refuses a background-plane write into the log.
                Plane::Background => Window {
                    log_rkey: self.window.read_rkey,
                    ..self.window
                },
            },
        })
    }

    /// The initiator thread of `peer`: pairs both planes' requesters whenever they are not
    /// ready, with a growing pause between failed attempts.
    fn initiate(&self, peer: ReplicaId) {
        let mut backoff = [BACKOFF_MIN; 2];
        let mut next_try = [Instant::now(); 2];
        let mut said: [Option<String>; 2] = [None, None];
        loop {
            let mut rest = BACKOFF_MAX;
            for plane in Plane::ALL {
                let i = plane as usize;
                let kick = self.responder(plane, peer).kick.swap(0, Ordering::AcqRel);
                if kick & KICK_WANTED != 0 {
                    let psn = kick & !KICK_WANTED;
                    match self.kick(plane, peer, psn) {
                        Ok(()) => say!(
                            self.me,
                            "told replica {peer} that its {} pairing {psn} is closed",
                            plane.name()
                        ),
                        Err(e) => say!(self.me, "telling replica {peer} to reconnect failed: {e}"),
                    }
                }
                if self.requester(plane, peer).ready.load(Ordering::Acquire) {
                    continue;
                }
                let now = Instant::now();
                if now < next_try[i] {
                    rest = rest.min(next_try[i] - now);
                    continue;
                }
                match self.pair_requester(plane, peer) {
                    Ok(()) => {
                        backoff[i] = BACKOFF_MIN;
                        said[i] = None;
                    }
                    Err(why) => {
                        if said[i].as_deref() != Some(&why) {
                            say!(self.me, "{why}; retrying");
                            said[i] = Some(why);
                        }
                        next_try[i] = now + backoff[i];
                        rest = rest.min(backoff[i]);
                        backoff[i] = (backoff[i] * 2).min(BACKOFF_MAX);
                    }
                }
            }
            std::thread::park_timeout(rest);
        }
    }

    fn pair_requester(&self, plane: Plane, peer: ReplicaId) -> Result<(), String> {
        let r = self.requester(plane, peer);
        let address = self.addresses[peer as usize];
        let what = |why: &dyn std::fmt::Display| {
            format!(
                "{} connection to replica {peer} at {address}: {why}",
                plane.name()
            )
        };
        let psn = wire::next_psn(lock(&r.link).last_psn);
        r.qp.reset().map_err(|e| what(&e))?;
        let hello = Hello {
            identity: self.identity,
            from: self.me,
            to: peer,
            plane,
            path: Path {
                qpn: r.qp.qpn(),
                psn,
                gid: self.gid,
                lid: self.lid,
                mtu: self.mtu,
            },
        };
        let reply = exchange(address, &hello).map_err(|e| what(&e))?;
        match reply {
            Reply::Accept {
                identity,
                path,
                window,
            } if identity == self.identity => {
                let mut link = lock(&r.link);
                r.qp.ready(&self.local, &path, psn, Access::NONE)
                    .map_err(|e| what(&e))?;
                link.window = window;
                link.last_psn = psn;
                link.paired_psn = psn;
                r.generation.fetch_add(1, Ordering::AcqRel);
                r.ready.store(true, Ordering::Release);
                say!(
                    self.me,
                    "{} connection to replica {peer} paired ({psn})",
                    plane.name()
                );
                Ok(())
            }
            Reply::Accept { identity, .. } => Err(what(&format!(
                "refused: it runs another cluster configuration (layout version {}, config \
                 hash {:016x}; ours {}, {:016x})",
                identity.layout_version,
                identity.config_hash,
                self.identity.layout_version,
                self.identity.config_hash
            ))),
            Reply::Refuse(refusal) => Err(what(&format!("refused: {refusal}"))),
        }
    }
}

/// Sends `hello` to `address` and reads the reply.
fn exchange(address: SocketAddr, hello: &Hello) -> io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&address, HANDSHAKE_TIMEOUT)?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    stream.write_all(&hello.encode())?;
    let mut buf = [0; MESSAGE_BYTES];
    stream.read_exact(&mut buf)?;
    Reply::decode(&buf)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not a Mu handshake reply"))
}

/// A first PSN that differs between processes, so that a restarted replica's first pairing does
/// not reuse its predecessor's sequence.
fn initial_psn(me: ReplicaId, peer: ReplicaId, plane: Plane) -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mix = now ^ std::process::id().rotate_left(7) ^ ((me as u32) << 16) ^ ((peer as u32) << 8);
    (mix ^ plane as u32) & 0x00FF_FFFF
}
