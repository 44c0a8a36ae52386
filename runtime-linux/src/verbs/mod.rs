//! The verbs fabric: Mu over RDMA (InfiniBand or RoCE) through libibverbs.
//!
//! One [`Endpoint`] per replica process holds the device context, one protection domain, the
//! replica's region registered as four memory regions (the header and background area and the
//! log area, writable by peers; everything below the scratch area, read-only, for peers'
//! reads; and the whole region for local access) and the queue pairs. Each plane's
//! [`VerbsFabric`] posts on its own queue pairs and polls its own completion queue.
//!
//! Queue pairs are directional: for every peer and plane there is a *requester* queue pair (this
//! replica posts reads and writes on it) and a *responder* queue pair (the peer's requester is
//! paired with it; this replica never posts on it). A reconnect therefore resets only the
//! requester's side of one direction and never discards the other direction's work, and the
//! log's grant lives on exactly one queue pair per writer: the replication-plane responder.
//!
//! Connections are set up by a small TCP handshake ([`wire`]): a requester sends its queue pair
//! number, first packet sequence number (PSN), GID and MTU with the layout version and
//! configuration hash; the responder checks them, pairs its responder queue pair and answers with
//! its own and with where its region is. Addressing is by GID, so RoCE and InfiniBand both work.
//! Handshakes run on threads of their own (one acceptor, one initiator per peer), never on a
//! plane's thread: `reconnect` resets the queue pair at once and returns; until the handshake
//! completes, every operation posted to that peer completes `Failed` (so a peer that cannot be
//! reached loses heartbeat points instead of being silently skipped).
//!
//! Permissions (rule 5). The log area is writable by a peer only through the replication-plane
//! responder queue pair paired with that peer, and only while its access flags include
//! `REMOTE_WRITE`; background-plane peers get a read-only key for the log area, so the device
//! itself keeps their queue pairs out of it. A grant belongs to the peer, not to a connection: it
//! lasts until the owner revokes it, and a pairing the peer makes meanwhile opens writable.
//!
//! - `grant` changes the access flags while the queue pair stays ready to send (the fast path).
//!   When the current pairing was revoked before (it is *tainted*: a write the peer posted under
//!   the earlier grant could still be in flight on it) or has failed (a refused write put it in
//!   the error state, and reviving it could execute a retransmission), the grant closes that
//!   pairing instead (error state: nothing on it executes again), tells the peer to pair anew
//!   (a *kick* on its handshake listener, so its next post fails at once instead of when its
//!   transport gives up), and the peer's next pairing opens writable.
//! - `revoke` changes the flags back and then cycles the queue pair through RESET, INIT, RTR and
//!   RTS with the same remote and PSNs: on Soft-RoCE a change of the flags is a plain store, and
//!   a packet that passed the permission check just before is still copied; RESET waits until
//!   the device has finished with it. A revoke that cannot do that moves the queue pair to the
//!   error state, and one that cannot even do that aborts the process: a live replica whose log
//!   a deposed leader can still write is unsafe, a dead one is not. After a revoke the writer's
//!   next write is refused: it completes `Denied` (`IBV_WC_REM_INV_REQ_ERR` on Soft-RoCE,
//!   `IBV_WC_REM_ACCESS_ERR` on hardware) and its queue pair enters the error state.
//!
//! Every write on a pairing is posted after the pairing was made, so a pairing made after a grant
//! carries only writes posted after it; a new pairing starts its PSNs half the sequence space
//! away from the last one, so a packet of an earlier pairing still in flight is never executed
//! on it; and a tainted pairing is never opened again. One case is left: a write the peer posted
//! on a pairing the owner never opened (the peer believed in a grant the owner had already
//! revoked), still on the wire when a later grant opens that pairing with the fast path. Closing
//! it would make every grant cost a new pairing (a TCP round trip and three queue pair changes on
//! each side) on the fail-over path. The core makes it unlikely: such a write is refused when it
//! arrives before the grant, the first refusal stops the writer's queue pair, and the writer
//! resets its connections when its tenure ends, before it asks for the next grant.
//!
//! A dead process's queue pairs and registrations are torn down by the kernel, so operations to
//! it fail (rule 9) once the transport's retries run out, or at once when the handshake to its
//! successor process pairs anew. Its death is also told for certain by the life watch
//! (`verbs/watch.rs`: a TCP connection its kernel closes when the process ends), which
//! `ended_life` reports (rule 12).
//!
//! # Invariants
//! - Only a plane's own thread posts on its requester queue pairs and resets a ready one; only the
//!   initiator thread of a peer pairs that peer's requesters (resetting them first while they
//!   are not ready) and makes them ready. `ready` is the hand-over: false while the queue pair is
//!   reset or being paired, true once it is ready to send.
//! - Every responder queue pair change happens under that responder's lock; a replication-plane
//!   responder is writable only while its peer holds the grant, and never again once tainted.
//! - After `reconnect` returns, no completion of work posted before it is delivered (the
//!   completion queue is drained of that queue pair's entries) and none of it lands (the queue
//!   pair is reset; a new pairing's PSNs exclude stale packets).
//! - Outstanding work per requester never exceeds [`DEPTH`]; buffered completions never exceed
//!   the capacity reserved for them, so nothing allocates after start-up.

pub mod ibv;
mod session;
mod watch;
pub mod wire;

use std::collections::VecDeque;
use std::sync::Arc;

use mu_nostd::{Completion, Config, Fabric, Layout, PostError, ReplicaId, Status};

pub use crate::node::VerbsSpec;
use ibv::{Cq, Op, Wc};
use session::Connection;
pub use session::{
    completion_entries, queue_pairs, registrations, Endpoint, Registration, VerbsError,
    REGISTRATIONS,
};
use wire::Plane;

/// Work requests a requester queue pair holds at most.
pub const DEPTH: u32 = 64;
/// Completions taken from the completion queue per poll call.
const POLL_BATCH: usize = 32;

/// What a plane remembers about one peer.
struct PeerState {
    /// The requester's pairing generation the cached window belongs to (0, before the first
    /// pairing, is never a ready one).
    generation: u32,
    window: wire::Window,
    /// Posted and not yet completed.
    outstanding: u32,
    /// A completion failed: the queue pair is in the error state until `reconnect`.
    broken: bool,
    /// The pairing generation this plane last posted on: a pairing nothing was posted on needs
    /// no reset when the core reconnects (its failures were made up while it was being paired).
    posted_on: Option<u32>,
}

/// A completion waiting in [`VerbsFabric::pending`]: made up by the fabric, or taken from the
/// completion queue while draining it. It counts in its peer's outstanding work until polled.
#[derive(Clone, Copy)]
struct Pending {
    peer: ReplicaId,
    completion: Completion,
}

/// One plane's view of the verbs fabric.
pub struct VerbsFabric {
    endpoint: Arc<Endpoint>,
    plane: Plane,
    layout: Layout,
    config: Config,
    me: ReplicaId,
    cq: Arc<Cq>,
    peers: Vec<PeerState>,
    /// Requester queue pair numbers, to tell whose completion a work completion is.
    qpns: Vec<(u32, ReplicaId)>,
    /// Completions the fabric made itself (operations to a peer being reconnected) or took from
    /// the completion queue while draining it, waiting to be polled.
    pending: VecDeque<Pending>,
    pending_max: usize,
    wcs: Box<[Wc; POLL_BATCH]>,
    /// The endpoint's kick count when this plane last looked for closed pairings.
    kicks_seen: u32,
}

impl VerbsFabric {
    /// The fabric of `plane` over `endpoint`.
    pub fn new(endpoint: Arc<Endpoint>, plane: Plane) -> VerbsFabric {
        let config = *endpoint.config();
        let me = endpoint.me();
        let peers = (0..config.replica_count)
            .map(|_| PeerState {
                generation: 0,
                window: wire::Window::NONE,
                outstanding: 0,
                broken: false,
                posted_on: None,
            })
            .collect();
        let qpns = endpoint.requester_qpns(plane);
        // Each peer: its made-up completions plus, while draining, its share of the queue.
        let pending_max = config.replica_count as usize * 2 * DEPTH as usize;
        VerbsFabric {
            cq: endpoint.cq(plane),
            layout: Layout::new(&config),
            endpoint,
            plane,
            config,
            me,
            peers,
            qpns,
            pending: VecDeque::with_capacity(pending_max),
            pending_max,
            wcs: Box::new(std::array::from_fn(|_| ibv::empty_wc())),
            kicks_seen: 0,
        }
    }

    fn check_peer(&self, peer: ReplicaId) -> Result<(), PostError> {
        if peer == self.me || !self.config.contains(peer) {
            return Err(PostError::NoSuchPeer);
        }
        Ok(())
    }

    fn post(
        &mut self,
        op: Op,
        peer: ReplicaId,
        local: u32,
        remote: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<(), PostError> {
        // Rule 13: the core's checks first, then the connection's.
        mu_nostd::check_post(
            &self.layout,
            self.me,
            self.plane,
            op,
            peer,
            (local, remote, len),
        )?;
        let state = &mut self.peers[peer as usize];
        if state.broken {
            return Err(PostError::Broken);
        }
        let connection = self.endpoint.connection(self.plane, peer);
        if connection == Connection::Kicked {
            state.broken = true;
            return Err(PostError::Broken);
        }
        if state.outstanding >= DEPTH {
            return Err(PostError::Busy);
        }
        let Connection::Ready { generation } = connection else {
            // Being (re)paired: the operation fails like one to an unreachable peer.
            state.outstanding += 1;
            self.pending.push_back(Pending {
                peer,
                completion: Completion {
                    wr_id,
                    status: Status::Failed,
                },
            });
            return Ok(());
        };
        if state.generation != generation {
            state.window = self.endpoint.window_of(self.plane, peer);
            state.generation = generation;
        }
        // `check_post` above kept the range where peers may reach: no check to repeat here.
        let (address, rkey) = wire::target(&self.layout, &state.window, op == Op::Write, remote);
        // SAFETY: `in_region(local, len)` held above: `local..local + len` lies inside the
        // region, as `Endpoint::post` requires.
        let posted = unsafe {
            self.endpoint
                .post(self.plane, peer, op, wr_id, local, len, address, rkey)
        };
        match posted {
            Ok(()) => {
                state.outstanding += 1;
                state.posted_on = Some(generation);
                Ok(())
            }
            Err(libc::ENOMEM) => Err(PostError::Busy),
            Err(_) => {
                // The provider refuses the queue pair itself (error state).
                state.broken = true;
                Err(PostError::Broken)
            }
        }
    }

    /// Work outstanding on a pairing its peer closed (a grant after a revoke closes it and
    /// kicks this replica) is never answered: the peer's side is in the error state. Left
    /// alone it failed only when the transport gave up or the core's deadline passed: a new
    /// tenure's survey read, posted on the pairing the tenure's own grant then closed, waited
    /// out the survey's deadline (in a traced Soft-RoCE run, 43 ms, 28 ms after the kick had
    /// arrived) and the tenure ended. Flushing it once the kick arrived fails it at once, as
    /// the simulator's fabric does at the close (`tests/src/world.rs`, `grant`).
    fn flush_kicked(&mut self) {
        let kicks = self.endpoint.kicks();
        if kicks == self.kicks_seen {
            return;
        }
        self.kicks_seen = kicks;
        for peer in 0..self.config.replica_count {
            let state = &mut self.peers[peer as usize];
            if peer == self.me || state.broken || state.outstanding == 0 {
                continue;
            }
            if self.endpoint.connection(self.plane, peer) == Connection::Kicked {
                self.endpoint.flush_kicked(self.plane, peer);
                state.broken = true;
            }
        }
    }

    /// The peer and completion of work completion `i` of the last poll of the queue; a failed
    /// one breaks that peer's connection.
    fn completion_of(&mut self, i: usize) -> Option<(ReplicaId, Completion)> {
        let wc = &self.wcs[i];
        let peer = self
            .qpns
            .iter()
            .find(|(q, _)| *q == wc.qp_num)
            .map(|&(_, p)| p)?;
        let completion = Completion {
            wr_id: wc.wr_id,
            status: wire::status(wc.status),
        };
        if completion.status != Status::Ok {
            self.peers[peer as usize].broken = true;
        }
        Some((peer, completion))
    }

    /// Takes every completion now in the queue into `pending`, dropping those of `dropped`'s
    /// queue pair (work from before its reconnect).
    fn drain(&mut self, dropped: ReplicaId) {
        loop {
            let n = self.cq.poll(&mut self.wcs[..]).unwrap_or(0);
            for i in 0..n {
                let Some((peer, completion)) = self.completion_of(i) else {
                    continue;
                };
                if peer == dropped {
                    continue;
                }
                // Bounded: at most DEPTH outstanding per peer, made up or posted.
                debug_assert!(self.pending.len() < self.pending_max);
                self.pending.push_back(Pending { peer, completion });
            }
            if n < POLL_BATCH {
                return;
            }
        }
    }
}

impl Fabric for VerbsFabric {
    fn write(
        &mut self,
        peer: ReplicaId,
        local_offset: u32,
        remote_offset: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<(), PostError> {
        self.post(Op::Write, peer, local_offset, remote_offset, len, wr_id)
    }

    fn read(
        &mut self,
        peer: ReplicaId,
        remote_offset: u32,
        local_offset: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<(), PostError> {
        self.post(Op::Read, peer, local_offset, remote_offset, len, wr_id)
    }

    fn poll(&mut self, completions: &mut [Completion]) -> usize {
        self.flush_kicked();
        let mut n = 0;
        while n < completions.len() {
            let Some(pending) = self.pending.pop_front() else {
                break;
            };
            let state = &mut self.peers[pending.peer as usize];
            state.outstanding = state.outstanding.saturating_sub(1);
            completions[n] = pending.completion;
            n += 1;
        }
        if n == completions.len() {
            return n;
        }
        let want = (completions.len() - n).min(POLL_BATCH);
        let got = match self.cq.poll(&mut self.wcs[..want]) {
            Ok(got) => got,
            Err(rc) => {
                eprintln!(
                    "replica {}: polling the {} completion queue failed ({rc})",
                    self.me,
                    self.plane.name()
                );
                0
            }
        };
        for i in 0..got {
            let Some((peer, completion)) = self.completion_of(i) else {
                continue;
            };
            let state = &mut self.peers[peer as usize];
            state.outstanding = state.outstanding.saturating_sub(1);
            completions[n] = completion;
            n += 1;
        }
        n
    }

    fn grant(&mut self, peer: ReplicaId) {
        if self.check_peer(peer).is_ok() {
            self.endpoint.grant(peer);
        }
    }

    fn revoke(&mut self, peer: ReplicaId) {
        if self.check_peer(peer).is_ok() {
            self.endpoint.revoke(peer);
        }
    }

    fn reconnect(&mut self, peer: ReplicaId) -> Result<(), PostError> {
        self.check_peer(peer)?;
        let state = &self.peers[peer as usize];
        let untouched = !state.broken
            && matches!(
                self.endpoint.connection(self.plane, peer),
                Connection::Ready { generation } if state.posted_on != Some(generation)
            );
        if !untouched {
            self.endpoint.reset_requester(self.plane, peer);
            self.drain(peer);
        }
        self.pending.retain(|p| p.peer != peer);
        let state = &mut self.peers[peer as usize];
        state.outstanding = 0;
        state.broken = false;
        Ok(())
    }

    fn load(&self, offset: u32, buf: &mut [u8]) {
        self.endpoint.own().load(offset, buf);
    }

    fn load_word(&self, offset: u32) -> u64 {
        self.endpoint.own().load_word(offset)
    }

    fn store(&mut self, offset: u32, bytes: &[u8]) {
        self.endpoint.own().store(offset, bytes);
    }

    /// What the life watch saw (see `verbs/watch.rs`): a peer whose process ended, by its
    /// kernel's word and its address's refusal; never a slow, stopped or cut-off one.
    fn ended_life(&self, peer: ReplicaId) -> Option<u32> {
        self.endpoint.ended_life(peer)
    }
}
