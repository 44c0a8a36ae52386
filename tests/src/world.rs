//! The simulated cluster memory and fabric: every replica's region, the permission switches,
//! the connections and the operations in flight, all driven by one seeded generator.
//!
//! The fabric is adversarial but stays exactly within the contract of `mu_nostd::fabric`:
//! writes and reads execute in torn pieces at random ticks, taking their source bytes when each
//! piece lands; completions come late, in posted order per connection, and sometimes never;
//! crashed and partitioned peers stall or fail operations; refused writes break connections.
//! When a life of a replica ends (a crash, or a restart of a running one), each other replica's
//! fabric may learn it (`ended_life`) after a random delay, or never; the notice stays after the
//! replica restarts, naming the life that ended, as a kernel's would.
//!
//! # Invariants
//! - Everything is a pure function of the seed and the driver's calls (no clocks, no hashing
//!   with random state, no iteration over unordered containers).
//! - No byte ever lands in or from a crashed region, or across an unreachable pair.
//! - A piece lands in an owner's log area only if the owner's grant mask holds the writer and
//!   the owner has not revoked the writer since the write was posted (`revoke` fences writes
//!   already in flight).
//! - Per connection, completions are delivered in posted order; once an op is settled as
//!   silent, nothing behind it on its connection is delivered until `reconnect`.
//! - After a connection breaks (denied or failed op) or is cut off (lost completion), nothing
//!   more of its outstanding ops lands.
//! - Violations of the single-writer rules are recorded, never panicked on, so the driver can
//!   report them with the seed.
//! - A death notice names only a life that ended: never a running or paused one.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use mu_nostd::fabric::{self, Completion, Fabric, PostError, ReplicaId, Status};
use mu_nostd::layout::Layout;

use crate::rng::Rng;

/// The two planes of a replica (the core's vocabulary); each has its own connections and
/// completion queue.
pub use mu_nostd::fabric::Plane;

/// How hostile the fabric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faults {
    /// Pieces land and completions arrive up to this many ticks late (at least 1).
    pub delay_max: u64,
    /// A write or read executes in `1..=torn_pieces_max` pieces at different ticks (at least 1).
    pub torn_pieces_max: u32,
    /// Chance per thousand that a fully landed op never completes, cutting its connection off.
    pub lost_completion_per_mille: u32,
    /// Most outstanding ops per connection (at least 1).
    pub outstanding_max: u32,
    /// A replica learns that a life of a peer ended up to this many ticks after it did.
    pub notice_delay_max: u64,
    /// Chance per thousand that a replica never learns that a life of a peer ended.
    pub notice_lost_per_mille: u32,
    /// 0: connections are ready at once. Otherwise each new pairing takes this many ticks, as a
    /// verbs handshake does, and the owner models verbs' permissions: a grant to a writer it
    /// revoked while that writer could write closes the writer's pairing, which pairs anew.
    pub pairing_ticks: u64,
    /// Chance per thousand that a write which may be done within its post
    /// (`Fabric::write_done`: nothing of its connection outstanding or waiting to be polled,
    /// no pairing, no cut aimed at it) is, as shared memory does every write.
    pub done_writes_per_mille: u32,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            delay_max: 6,
            torn_pieces_max: 3,
            lost_completion_per_mille: 5,
            outstanding_max: 16,
            notice_delay_max: 400,
            notice_lost_per_mille: 250,
            pairing_ticks: 0,
            done_writes_per_mille: 0,
        }
    }
}

impl Faults {
    /// Prompt, whole and reliable: for tests that want to see the protocol, not the faults.
    pub fn gentle() -> Faults {
        Faults {
            delay_max: 1,
            torn_pieces_max: 1,
            lost_completion_per_mille: 0,
            notice_delay_max: 0,
            notice_lost_per_mille: 0,
            ..Faults::default()
        }
    }
}

/// Counters for a run's summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Ops accepted at post time.
    pub ops_posted: u64,
    /// Posts refused (busy, broken, bad peer or bounds).
    pub posts_refused: u64,
    /// Pieces that landed.
    pub pieces_landed: u64,
    /// Ops that completed `Denied`.
    pub denied: u64,
    /// Ops settled as `Failed`.
    pub failed: u64,
    /// Ops that landed fully but whose completion was lost.
    pub lost_completions: u64,
    /// Completions delivered to a completion queue, or answered by `Fabric::write_done`.
    pub completions: u64,
    /// Writes that `Fabric::write_done` answered (done within their post).
    pub done_writes: u64,
}

/// Identifies an op in the slab; the generation makes ids of freed ops stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct OpId {
    index: u32,
    generation: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Write,
    Read,
}

/// What the poster asked for.
#[derive(Clone, Copy, Debug)]
struct Request {
    kind: Kind,
    peer: u8,
    local: u32,
    remote: u32,
    len: u32,
    wr_id: u64,
}

/// Where an op stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Pieces still to land.
    Running,
    /// Will never complete (lost completion, crashed peer); stays on its connection until
    /// `reconnect`, blocking the completions behind it.
    Silent,
    /// Settled; delivered once it is due and everything before it on its connection went.
    Done(Status),
}

#[derive(Clone, Debug)]
struct Op {
    kind: Kind,
    poster: u8,
    peer: u8,
    conn: usize,
    local: u32,
    remote: u32,
    wr_id: u64,
    pieces_left: u32,
    /// The owner's revoke count for the poster when a write was posted.
    revokes: u64,
    fate: Fate,
    due: u64,
    /// Cut by [`World::cut_next_write`]: once its one piece landed, its writer is cut off.
    cut: bool,
}

/// A write to cut short (see [`World::cut_next_write`]).
#[derive(Clone, Copy, Debug)]
struct Cut {
    poster: u8,
    peer: u8,
    at: u32,
}

/// A slab of ops addressed by generational ids, so that scheduled events of freed ops are
/// recognised as stale instead of touching a reused slot.
#[derive(Default)]
struct Slab {
    entries: Vec<(u32, Option<Op>)>,
    free: Vec<u32>,
}

impl Slab {
    fn insert(&mut self, op: Op) -> OpId {
        if let Some(index) = self.free.pop() {
            let entry = &mut self.entries[index as usize];
            entry.1 = Some(op);
            return OpId {
                index,
                generation: entry.0,
            };
        }
        self.entries.push((0, Some(op)));
        OpId {
            index: self.entries.len() as u32 - 1,
            generation: 0,
        }
    }

    fn get(&self, id: OpId) -> Option<&Op> {
        match self.entries.get(id.index as usize) {
            Some((generation, op)) if *generation == id.generation => op.as_ref(),
            _ => None,
        }
    }

    fn get_mut(&mut self, id: OpId) -> Option<&mut Op> {
        match self.entries.get_mut(id.index as usize) {
            Some((generation, op)) if *generation == id.generation => op.as_mut(),
            _ => None,
        }
    }

    fn remove(&mut self, id: OpId) -> Op {
        let entry = &mut self.entries[id.index as usize];
        assert_eq!(entry.0, id.generation, "stale op id removed");
        let op = entry.1.take().expect("op removed twice");
        entry.0 = entry.0.wrapping_add(1);
        self.free.push(id.index);
        op
    }
}

/// A contiguous part of an op, `[start, start + len)` of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Piece {
    op: OpId,
    start: u32,
    len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A piece is due to land.
    Piece(Piece),
    /// An op on this connection may have become deliverable.
    Deliver(usize),
}

/// One direction of one plane between two replicas.
#[derive(Default)]
struct Conn {
    /// Posts fail with `Broken` until `reconnect`.
    broken: bool,
    /// A completion was lost: nothing outstanding lands or completes until `reconnect`.
    cut_off: bool,
    /// Outstanding ops in posted order: accepted and not yet delivered or dropped.
    queue: VecDeque<OpId>,
    /// With `pairing_ticks`: the tick the current pairing is ready; until then every op posted
    /// fails at once (a verbs requester being paired).
    ready_at: u64,
    /// With `pairing_ticks`: an op was accepted on the current pairing since it became ready (a
    /// reconnect of a pairing nothing went out on keeps it).
    used: bool,
    /// With `pairing_ticks`: the owner closed this pairing at a grant; ops fail at once until
    /// the next pairing.
    closed: bool,
}

/// The simulated regions and fabric of a cluster.
pub struct World {
    layout: Layout,
    n: u8,
    faults: Faults,
    rng: Rng,
    now: u64,
    regions: Vec<Vec<u8>>,
    /// Per owner: bit `p` set when peer `p` may write the owner's log area.
    granted: Vec<u8>,
    /// Per (owner, writer): how many times the owner revoked the writer.
    revokes: Vec<u64>,
    /// Per (owner, writer), with `pairing_ticks`: the owner revoked the writer while it could
    /// write, and the writer has not paired anew since (verbs' tainted pairing).
    tainted: Vec<bool>,
    conns: Vec<Conn>,
    ops: Slab,
    /// Scheduled events by (tick, sequence number): the sequence keeps same-tick order stable.
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    sequence: u64,
    /// Pieces due while their pair was unreachable, waiting for the pair to heal.
    stuck: Vec<Piece>,
    /// Per (replica, plane): completions ready to be polled.
    ready: Vec<VecDeque<Completion>>,
    /// Per (a, b): whether a and b can reach each other (kept symmetric).
    reachable: Vec<bool>,
    crashed: Vec<bool>,
    /// The current life of each replica (0 at the start, one more at every restart).
    lives: Vec<u32>,
    /// Death notices: (observer, peer, life that ended, tick from which the observer knows).
    notices: Vec<(u8, u8, u32, u64)>,
    violations: Vec<String>,
    stats: Stats,
    cut: Option<Cut>,
    /// With [`World::watch_log_landings`]: (replica, offset, len) of every piece that landed in
    /// a replica's log area since the last [`World::take_log_landings`].
    log_landings: Option<Vec<(u8, u32, u32)>>,
}

fn plane_index(plane: Plane) -> usize {
    match plane {
        Plane::Replication => 0,
        Plane::Background => 1,
    }
}

/// Splits `0..len` into `1..=pieces_max` contiguous non-empty ranges (fewer when cut points
/// coincide), as `(start, len)`; an empty op is one empty piece.
fn split(rng: &mut Rng, len: u32, pieces_max: u32) -> Vec<(u32, u32)> {
    let pieces = rng.range(1, pieces_max as u64) as u32;
    if pieces == 1 || len < 2 {
        return vec![(0, len)];
    }
    let mut cuts: Vec<u32> = (1..pieces)
        .map(|_| rng.range(1, len as u64 - 1) as u32)
        .collect();
    cuts.extend([0, len]);
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
}

/// Copies `len` bytes between two different regions.
fn copy_between(regions: &mut [Vec<u8>], from: (u8, u32), to: (u8, u32), len: u32) {
    let (src, dst) = (from.0 as usize, to.0 as usize);
    assert_ne!(src, dst, "an op never targets its own poster");
    let (from_at, to_at, len) = (from.1 as usize, to.1 as usize, len as usize);
    let (source, target) = if src < dst {
        let (low, high) = regions.split_at_mut(dst);
        (&low[src], &mut high[0])
    } else {
        let (low, high) = regions.split_at_mut(src);
        (&high[0], &mut low[dst])
    };
    target[to_at..to_at + len].copy_from_slice(&source[from_at..from_at + len]);
}

impl World {
    /// A cluster of `replica_count` zeroed regions, all reachable, none crashed, at tick 0.
    pub fn new(layout: Layout, replica_count: u8, faults: Faults, seed: u64) -> World {
        assert!((1..=8).contains(&replica_count), "grant masks are u8");
        assert_eq!(
            layout.replica_count, replica_count,
            "layout of another cluster size"
        );
        assert!(
            faults.delay_max >= 1 && faults.torn_pieces_max >= 1 && faults.outstanding_max >= 1
        );
        assert!(faults.lost_completion_per_mille <= 1000);
        let n = replica_count as usize;
        World {
            layout,
            n: replica_count,
            faults,
            rng: Rng::new(seed),
            now: 0,
            regions: vec![vec![0; layout.region_bytes as usize]; n],
            granted: vec![0; n],
            revokes: vec![0; n * n],
            tainted: vec![false; n * n],
            conns: (0..n * n * 2).map(|_| Conn::default()).collect(),
            ops: Slab::default(),
            events: BinaryHeap::new(),
            sequence: 0,
            stuck: Vec::new(),
            ready: vec![VecDeque::new(); n * 2],
            reachable: vec![true; n * n],
            crashed: vec![false; n],
            lives: vec![0; n],
            notices: Vec::new(),
            violations: Vec::new(),
            stats: Stats::default(),
            cut: None,
            log_landings: None,
        }
    }

    /// The fabric replica `me` uses on `plane`.
    pub fn fabric(&mut self, me: u8, plane: Plane) -> SimFabric<'_> {
        assert!(me < self.n, "no replica {me}");
        SimFabric {
            world: self,
            me,
            plane,
        }
    }

    /// The layout every region follows.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Replicas in the cluster.
    pub fn replica_count(&self) -> u8 {
        self.n
    }

    /// The current tick.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Processes everything scheduled up to and including tick `now`.
    pub fn advance(&mut self, now: u64) {
        assert!(now >= self.now, "time runs forward");
        self.now = now;
        while let Some(&Reverse((tick, _, event))) = self.events.peek() {
            if tick > now {
                break;
            }
            self.events.pop();
            match event {
                Event::Piece(piece) => self.piece_due(piece),
                Event::Deliver(conn) => self.drain(conn),
            }
        }
    }

    /// Crash-stops `r`: its region freezes, its ops stop, ops to it never land.
    pub fn crash(&mut self, r: u8) {
        if !self.crashed[r as usize] {
            self.end_life(r);
        }
        self.crashed[r as usize] = true;
        for plane in 0..2 {
            self.ready[r as usize * 2 + plane].clear();
        }
    }

    /// Starts a new life of `r` (after a crash, or killing the current one), as a process that
    /// restarts does: what its earlier life posted never lands or completes; what others had in
    /// flight to it fails and breaks their connections to it (its queue pairs are gone); its
    /// new region grants nobody, and fences every write posted before. The driver fills the
    /// region (zeros or garbage) and builds the new replica.
    pub fn restart(&mut self, r: u8) {
        let n = self.n;
        if !self.crashed[r as usize] {
            self.end_life(r);
        }
        self.lives[r as usize] += 1;
        self.crashed[r as usize] = false;
        for plane in [Plane::Replication, Plane::Background] {
            for peer in (0..n).filter(|&p| p != r) {
                let own = self.conn_index(r, peer, plane);
                for id in std::mem::take(&mut self.conns[own].queue) {
                    self.ops.remove(id);
                }
                self.conns[own].broken = false;
                self.conns[own].cut_off = false;
                let theirs = self.conn_index(peer, r, plane);
                self.fail_queue(theirs);
                self.conns[theirs].broken = true;
            }
        }
        self.granted[r as usize] = 0;
        for other in 0..n as usize {
            self.revokes[r as usize * n as usize + other] += 1;
            // Its pairings, and the others' with it, are all new.
            self.tainted[r as usize * n as usize + other] = false;
            self.tainted[other * n as usize + r as usize] = false;
        }
        for plane in 0..2 {
            self.ready[r as usize * 2 + plane].clear();
        }
    }

    /// The incarnation of `r`'s current life: the driver passes it to the replica, which
    /// publishes it in its region header.
    pub fn life(&self, r: u8) -> u32 {
        self.lives[r as usize]
    }

    /// Life `lives[r]` of `r` ended: every other replica learns it after a random delay, or
    /// never.
    fn end_life(&mut self, r: u8) {
        let life = self.lives[r as usize];
        for observer in (0..self.n).filter(|&o| o != r) {
            if self.rng.chance(self.faults.notice_lost_per_mille, 1000) {
                continue;
            }
            let delay = self.rng.range(0, self.faults.notice_delay_max);
            self.notices.push((observer, r, life, self.now + delay));
        }
    }

    /// The latest life of `peer` that `observer` knows ended.
    fn ended_life(&self, observer: u8, peer: u8) -> Option<u32> {
        let ended = self
            .notices
            .iter()
            .filter(|&&(o, p, _, at)| o == observer && p == peer && at <= self.now)
            .map(|&(_, _, life, _)| life)
            .max();
        assert!(
            ended
                .is_none_or(|life| life < self.lives[peer as usize] || self.crashed[peer as usize]),
            "a death notice names a life that runs"
        );
        ended
    }

    /// True when `r` crashed.
    pub fn is_crashed(&self, r: u8) -> bool {
        self.crashed[r as usize]
    }

    /// Cuts or restores the link between `a` and `b` (both directions).
    pub fn set_reachable(&mut self, a: u8, b: u8, reachable: bool) {
        let n = self.n as usize;
        let (a, b) = (a as usize, b as usize);
        self.reachable[a * n + b] = reachable;
        self.reachable[b * n + a] = reachable;
        if reachable {
            self.release_stuck();
        }
    }

    /// Stops losing completions from now on (faults stop; delays and torn pieces go on, they are
    /// how the fabric behaves, not faults).
    pub fn stop_losing_completions(&mut self) {
        self.faults.lost_completion_per_mille = 0;
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.reachable.iter_mut().for_each(|r| *r = true);
        self.release_stuck();
    }

    /// True when `a` and `b` can reach each other.
    pub fn is_reachable(&self, a: u8, b: u8) -> bool {
        self.reachable[a as usize * self.n as usize + b as usize]
    }

    /// Replica `r`'s region.
    pub fn region(&self, r: u8) -> &[u8] {
        &self.regions[r as usize]
    }

    /// Replica `r`'s region, for the driver's own setup; no checks.
    pub fn region_mut(&mut self, r: u8) -> &mut [u8] {
        &mut self.regions[r as usize]
    }

    /// The peers currently granted on `owner`'s log area, one bit each.
    pub fn granted(&self, owner: u8) -> u8 {
        self.granted[owner as usize]
    }

    /// The next write `poster` posts to `peer` whose remote range covers offset `at` lands only
    /// its bytes below `at` (in one piece); then the writer is cut off, as by a revoke or a
    /// crash right there: nothing more it posted on that connection lands or completes.
    pub fn cut_next_write(&mut self, poster: u8, peer: u8, at: u32) {
        self.cut = Some(Cut { poster, peer, at });
    }

    /// True while a write armed by [`World::cut_next_write`] was not posted yet.
    pub fn cut_pending(&self) -> bool {
        self.cut.is_some()
    }

    /// From now on, records where pieces land in log areas (see [`World::take_log_landings`]).
    pub fn watch_log_landings(&mut self) {
        self.log_landings.get_or_insert_with(Vec::new);
    }

    /// (replica, offset, len) of the pieces that landed in log areas since the last call.
    pub fn take_log_landings(&mut self) -> Vec<(u8, u32, u32)> {
        self.log_landings
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The invariant violations recorded since the last call.
    pub fn take_violations(&mut self) -> Vec<String> {
        std::mem::take(&mut self.violations)
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    // ---- posting -----------------------------------------------------------------------------

    fn conn_index(&self, me: u8, peer: u8, plane: Plane) -> usize {
        (me as usize * self.n as usize + peer as usize) * 2 + plane_index(plane)
    }

    fn schedule(&mut self, tick: u64, event: Event) {
        self.sequence += 1;
        self.events.push(Reverse((tick, self.sequence, event)));
    }

    fn in_region(&self, offset: u32, len: u32) -> bool {
        offset as u64 + len as u64 <= self.layout.region_bytes as u64
    }

    fn check_post(&self, me: u8, plane: Plane, request: &Request) -> Result<usize, PostError> {
        let Request {
            kind,
            peer,
            local,
            remote,
            len,
            ..
        } = *request;
        let op = match kind {
            Kind::Write => fabric::Op::Write,
            Kind::Read => fabric::Op::Read,
        };
        fabric::check_post(&self.layout, me, plane, op, peer, (local, remote, len))?;
        let conn = self.conn_index(me, peer, plane);
        if self.conns[conn].broken {
            return Err(PostError::Broken);
        }
        if self.conns[conn].queue.len() >= self.faults.outstanding_max as usize {
            return Err(PostError::Busy);
        }
        Ok(conn)
    }

    /// A write that `Fabric::write_done` may answer at once, if the draw says so: when nothing of
    /// its connection is outstanding or waits to be polled (nothing of its plane, to keep it
    /// simple), the connection is not being paired and no cut is aimed at it, the write comes
    /// due whole at once, with every check of a piece that comes due. If it completes then, the
    /// completion is the answer; if not (it went silent, is stuck behind a partition, or lost
    /// its completion), it stays posted, as any other write.
    fn post_done(
        &mut self,
        me: u8,
        plane: Plane,
        request: Request,
    ) -> Result<Option<Status>, PostError> {
        let per_mille = self.faults.done_writes_per_mille;
        let conn = self.conn_index(me, request.peer, plane);
        let quiet = per_mille > 0
            && self.conns[conn].queue.is_empty()
            && self.ready[me as usize * 2 + plane_index(plane)].is_empty()
            && !self.pairing(conn)
            && self
                .cut
                .is_none_or(|c| (c.poster, c.peer) != (me, request.peer))
            && self.check_post(me, plane, &request).is_ok();
        if !quiet || !self.rng.chance(per_mille, 1000) {
            return self.post(me, plane, request).map(|()| None);
        }
        let len = request.len;
        let id = self.accept(me, plane, conn, request);
        if self.faults.pairing_ticks > 0 {
            self.conns[conn].used = true;
        }
        self.ops.get_mut(id).expect("just accepted").pieces_left = 1;
        self.piece_due(Piece {
            op: id,
            start: 0,
            len,
        });
        let Some(Fate::Done(status)) = self.ops.get(id).map(|op| op.fate) else {
            return Ok(None);
        };
        assert_eq!(self.conns[conn].queue.pop_front(), Some(id), "the only op");
        self.ops.remove(id);
        self.stats.completions += 1;
        self.stats.done_writes += 1;
        Ok(Some(status))
    }

    /// Accepts an op and schedules its pieces, or refuses it at post time.
    fn post(&mut self, me: u8, plane: Plane, request: Request) -> Result<(), PostError> {
        let conn = match self.check_post(me, plane, &request) {
            Ok(conn) => conn,
            Err(error) => {
                self.stats.posts_refused += 1;
                return Err(error);
            }
        };
        let (kind, peer, remote, len) = (request.kind, request.peer, request.remote, request.len);
        let cut = self.cut.filter(|c| {
            kind == Kind::Write
                && (c.poster, c.peer) == (me, peer)
                && (remote..remote.saturating_add(len)).contains(&c.at)
        });
        let id = self.accept(me, plane, conn, request);
        if self.pairing(conn) {
            // Accepted and failed at once, as the verbs fabric does for a requester being
            // paired (the connection does not break).
            self.settle(id, Status::Failed);
            self.count(Status::Failed);
            return Ok(());
        }
        if self.faults.pairing_ticks > 0 {
            self.conns[conn].used = true;
        }
        let pieces = match cut {
            Some(cut) => {
                self.cut = None;
                self.ops.get_mut(id).expect("just inserted").cut = true;
                vec![(0, cut.at - remote)]
            }
            None => split(&mut self.rng, len, self.faults.torn_pieces_max),
        };
        self.ops.get_mut(id).expect("just inserted").pieces_left = pieces.len() as u32;
        for (start, len) in pieces {
            let tick = self.now + self.rng.range(1, self.faults.delay_max * 2);
            self.schedule(tick, Event::Piece(Piece { op: id, start, len }));
        }
        Ok(())
    }

    /// Queues an op that passed the post checks on its connection, with no piece yet.
    fn accept(&mut self, me: u8, plane: Plane, conn: usize, request: Request) -> OpId {
        debug_assert_eq!(conn, self.conn_index(me, request.peer, plane));
        let Request {
            kind,
            peer,
            local,
            remote,
            wr_id,
            ..
        } = request;
        let op = Op {
            kind,
            poster: me,
            peer,
            conn,
            local,
            remote,
            wr_id,
            pieces_left: 0,
            // Remembered so that a revoke after this post fences the op even if a grant follows.
            revokes: self.revokes[peer as usize * self.n as usize + me as usize],
            fate: Fate::Running,
            due: 0,
            cut: false,
        };
        let id = self.ops.insert(op);
        self.conns[conn].queue.push_back(id);
        self.stats.ops_posted += 1;
        id
    }

    /// True while `conn` is being paired or was closed by its owner (only with `pairing_ticks`).
    fn pairing(&self, conn: usize) -> bool {
        let c = &self.conns[conn];
        self.faults.pairing_ticks > 0 && (c.closed || self.now < c.ready_at)
    }

    // ---- executing pieces --------------------------------------------------------------------

    /// A piece's tick came: it lands, or its op goes silent, fails, is denied, or waits for
    /// its pair to heal. Checks run in this order so that nothing lands in or from a dead
    /// region, across a partition, or past the owner's permissions.
    fn piece_due(&mut self, piece: Piece) {
        let Some(op) = self.ops.get(piece.op) else {
            return;
        };
        if op.fate != Fate::Running {
            return;
        }
        let (poster, peer, conn) = (op.poster, op.peer, op.conn);
        if self.crashed[poster as usize] || self.conns[conn].cut_off {
            self.set_fate(piece.op, Fate::Silent);
        } else if self.crashed[peer as usize] {
            // A dead peer either never answers or the connection times out.
            if self.rng.chance(1, 2) {
                self.set_fate(piece.op, Fate::Silent);
            } else {
                self.fail(piece.op, Status::Failed);
            }
        } else if !self.is_reachable(poster, peer) {
            if self.rng.chance(1, 2) {
                self.stuck.push(piece);
            } else {
                self.fail(piece.op, Status::Failed);
            }
        } else if self.refused(piece) {
            self.fail(piece.op, Status::Denied);
        } else {
            self.land(piece);
        }
    }

    /// True when the owner's permissions refuse a write piece: one into its log area, or any
    /// write of the replication plane (on verbs the grant is the replication-plane queue
    /// pair's write access, whatever the area; the contract's rule 5).
    fn refused(&self, piece: Piece) -> bool {
        let op = self.ops.get(piece.op).expect("running op");
        let replication = op.conn % 2 == plane_index(Plane::Replication);
        let log = self
            .layout
            .touches_log_area(op.remote + piece.start, piece.len);
        if op.kind != Kind::Write || !(log || replication) {
            return false;
        }
        let (owner, writer) = (op.peer as usize, op.poster as usize);
        let revoked_since = self.revokes[owner * self.n as usize + writer] != op.revokes;
        self.granted[owner] & (1 << writer) == 0 || revoked_since
    }

    fn land(&mut self, piece: Piece) {
        let op = self.ops.get(piece.op).expect("running op").clone();
        let (local, remote) = (op.local + piece.start, op.remote + piece.start);
        if let Some(landings) = &mut self.log_landings {
            let (owner, at) = match op.kind {
                Kind::Write => (op.peer, remote),
                Kind::Read => (op.poster, local),
            };
            if self.layout.touches_log_area(at, piece.len) {
                landings.push((owner, at, piece.len));
            }
        }
        match op.kind {
            Kind::Write => {
                self.check_remote_write(op.poster, op.peer, remote, piece.len);
                copy_between(
                    &mut self.regions,
                    (op.poster, local),
                    (op.peer, remote),
                    piece.len,
                );
            }
            Kind::Read => {
                self.check_own_write(op.poster, local, piece.len, "a read landed");
                copy_between(
                    &mut self.regions,
                    (op.peer, remote),
                    (op.poster, local),
                    piece.len,
                );
            }
        }
        self.stats.pieces_landed += 1;
        let op = self.ops.get_mut(piece.op).expect("running op");
        op.pieces_left -= 1;
        if op.pieces_left == 0 && op.cut {
            // The writer is cut off right after the bytes that landed: nothing more of it
            // lands or completes on this connection.
            let conn = op.conn;
            self.conns[conn].cut_off = true;
            self.set_fate(piece.op, Fate::Silent);
        } else if op.pieces_left == 0 {
            self.finished(piece.op);
        }
    }

    /// All pieces landed: the completion is due later, or lost.
    fn finished(&mut self, id: OpId) {
        if self.rng.chance(self.faults.lost_completion_per_mille, 1000) {
            self.stats.lost_completions += 1;
            let conn = self.ops.get(id).expect("op").conn;
            self.conns[conn].cut_off = true;
            self.set_fate(id, Fate::Silent);
        } else {
            self.settle(id, Status::Ok);
        }
    }

    fn set_fate(&mut self, id: OpId, fate: Fate) {
        self.ops.get_mut(id).expect("live op").fate = fate;
    }

    /// Settles an op with `status`, deliverable after a random delay.
    fn settle(&mut self, id: OpId, status: Status) {
        let due = self.now + self.rng.range(1, self.faults.delay_max);
        let op = self.ops.get_mut(id).expect("live op");
        op.fate = Fate::Done(status);
        op.due = due;
        let conn = op.conn;
        self.schedule(due, Event::Deliver(conn));
    }

    /// Ends `id` with `status` and breaks its connection: every other outstanding op on it
    /// fails too and lands nothing more.
    fn fail(&mut self, id: OpId, status: Status) {
        let conn = self.ops.get(id).expect("live op").conn;
        self.conns[conn].broken = true;
        self.settle(id, status);
        self.count(status);
        self.fail_queue(conn);
    }

    /// Fails every op outstanding on `conn` that has not failed yet.
    fn fail_queue(&mut self, conn: usize) {
        let others: Vec<OpId> = self.conns[conn].queue.iter().copied().collect();
        // `Failed` says nothing about landing, so ops that landed fully, and silent ones, may
        // report it too, as a real queue pair flushed in error does.
        for other in others {
            if !matches!(
                self.ops.get(other).expect("queued op").fate,
                Fate::Done(Status::Failed | Status::Denied)
            ) {
                self.settle(other, Status::Failed);
                self.count(Status::Failed);
            }
        }
    }

    fn count(&mut self, status: Status) {
        match status {
            Status::Denied => self.stats.denied += 1,
            Status::Failed => self.stats.failed += 1,
            Status::Ok => {}
        }
    }

    /// Delivers the settled, due ops at the head of a connection, in posted order.
    fn drain(&mut self, conn: usize) {
        while let Some(&id) = self.conns[conn].queue.front() {
            let op = self.ops.get(id).expect("queued op");
            let Fate::Done(status) = op.fate else { return };
            if op.due > self.now {
                return;
            }
            self.conns[conn].queue.pop_front();
            let op = self.ops.remove(id);
            if !self.crashed[op.poster as usize] {
                // Connection indexes end in the plane index, as ready queue indexes do.
                let queue = op.poster as usize * 2 + conn % 2;
                self.ready[queue].push_back(Completion {
                    wr_id: op.wr_id,
                    status,
                });
                self.stats.completions += 1;
            }
        }
    }

    /// Reschedules stuck pieces whose pair can reach each other again.
    fn release_stuck(&mut self) {
        let stuck = std::mem::take(&mut self.stuck);
        for piece in stuck {
            let pair = self.ops.get(piece.op).map(|op| (op.poster, op.peer));
            match pair {
                None => {} // Dropped by a reconnect meanwhile.
                Some((a, b)) if !self.is_reachable(a, b) => self.stuck.push(piece),
                Some(_) => {
                    let tick = self.now + self.rng.range(1, self.faults.delay_max);
                    self.schedule(tick, Event::Piece(piece));
                }
            }
        }
    }

    // ---- invariants --------------------------------------------------------------------------

    fn violation(&mut self, what: String) {
        self.violations.push(format!("tick {}: {what}", self.now));
    }

    /// Single writer: a piece lands in an owner's log only from the one granted peer.
    fn check_remote_write(&mut self, writer: u8, owner: u8, offset: u32, len: u32) {
        if !self.layout.touches_log_area(offset, len) {
            return;
        }
        let mask = self.granted[owner as usize];
        if mask.count_ones() > 1 || mask & (1 << writer) == 0 {
            self.violation(format!(
                "replica {writer} wrote the log of {owner} at offset {offset} while the grant mask was {mask:#010b}"
            ));
        }
    }

    /// The owner writes its own log only while no peer holds the grant.
    fn check_own_write(&mut self, owner: u8, offset: u32, len: u32, how: &str) {
        let mask = self.granted[owner as usize];
        if mask != 0 && self.layout.touches_log_area(offset, len) {
            self.violation(format!(
                "owner {owner} writes its own log ({how} at offset {offset}) while a peer holds the grant (mask {mask:#010b})"
            ));
        }
    }

    // ---- fabric calls ------------------------------------------------------------------------

    fn grant(&mut self, owner: u8, peer: u8) {
        if peer >= self.n || peer == owner {
            // Rule 13: nothing happens. The core never names no one, so it is recorded.
            self.violation(format!("replica {owner} granted {peer}, no other replica"));
            return;
        }
        self.granted[owner as usize] |= 1 << peer;
        let pair = owner as usize * self.n as usize + peer as usize;
        if std::mem::take(&mut self.tainted[pair]) {
            // The writer's pairing is closed: what it has outstanding fails, and it pairs anew.
            let conn = self.conn_index(peer, owner, Plane::Replication);
            self.fail_queue(conn);
            self.conns[conn].closed = true;
        }
    }

    fn revoke(&mut self, owner: u8, peer: u8) {
        if peer >= self.n || peer == owner {
            // Rule 13: nothing happens. The core never names no one, so it is recorded.
            self.violation(format!("replica {owner} revoked {peer}, no other replica"));
            return;
        }
        let pair = owner as usize * self.n as usize + peer as usize;
        if self.faults.pairing_ticks > 0 && self.granted[owner as usize] & (1 << peer) != 0 {
            self.tainted[pair] = true;
        }
        self.granted[owner as usize] &= !(1 << peer);
        self.revokes[pair] += 1;
    }

    fn reconnect(&mut self, me: u8, peer: u8, plane: Plane) -> Result<(), PostError> {
        if peer == me || peer >= self.n {
            return Err(PostError::NoSuchPeer);
        }
        let conn = self.conn_index(me, peer, plane);
        let queue = std::mem::take(&mut self.conns[conn].queue);
        for id in queue {
            if self.rng.chance(1, 2) {
                self.ops.remove(id);
            } else {
                let op = self.ops.get_mut(id).expect("queued op");
                op.fate = Fate::Done(Status::Failed);
                op.due = self.now;
                self.stats.failed += 1;
                self.conns[conn].queue.push_back(id);
            }
        }
        self.conns[conn].broken = false;
        self.conns[conn].cut_off = false;
        self.pair_anew(me, peer, plane, conn);
        self.drain(conn);
        Ok(())
    }

    /// With `pairing_ticks`: a reconnect of a pairing that was used or closed starts a new one,
    /// ready `pairing_ticks` later; one being paired, or never used, stays as it is.
    fn pair_anew(&mut self, me: u8, peer: u8, plane: Plane, conn: usize) {
        let c = &mut self.conns[conn];
        let busy = self.now < c.ready_at;
        if self.faults.pairing_ticks == 0 || busy || !(c.used || c.closed) {
            return;
        }
        c.ready_at = self.now + self.faults.pairing_ticks;
        c.used = false;
        c.closed = false;
        if plane == Plane::Replication {
            // A new pairing carries only what is posted after it.
            self.tainted[peer as usize * self.n as usize + me as usize] = false;
        }
    }

    fn poll(&mut self, me: u8, plane: Plane, completions: &mut [Completion]) -> usize {
        let ready = &mut self.ready[me as usize * 2 + plane_index(plane)];
        let count = completions.len().min(ready.len());
        for (slot, completion) in completions.iter_mut().zip(ready.drain(..count)) {
            *slot = completion;
        }
        count
    }

    fn load(&self, me: u8, offset: u32, buf: &mut [u8]) {
        assert!(
            self.in_region(offset, buf.len() as u32),
            "load out of the region at {offset}"
        );
        let at = offset as usize;
        buf.copy_from_slice(&self.regions[me as usize][at..at + buf.len()]);
    }

    fn store(&mut self, me: u8, offset: u32, bytes: &[u8]) {
        assert!(
            self.in_region(offset, bytes.len() as u32),
            "store out of the region at {offset}"
        );
        self.check_own_write(me, offset, bytes.len() as u32, "a store");
        let at = offset as usize;
        self.regions[me as usize][at..at + bytes.len()].copy_from_slice(bytes);
    }
}

/// One replica's view of the fabric on one plane.
pub struct SimFabric<'a> {
    world: &'a mut World,
    me: u8,
    plane: Plane,
}

impl SimFabric<'_> {
    /// The replica this fabric belongs to.
    pub fn me(&self) -> u8 {
        self.me
    }

    /// The plane this fabric belongs to.
    pub fn plane(&self) -> Plane {
        self.plane
    }
}

impl SimFabric<'_> {
    fn post(
        &mut self,
        kind: Kind,
        peer: ReplicaId,
        local: u32,
        remote: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<(), PostError> {
        let request = Request {
            kind,
            peer,
            local,
            remote,
            len,
            wr_id,
        };
        self.world.post(self.me, self.plane, request)
    }
}

impl Fabric for SimFabric<'_> {
    fn write_done(
        &mut self,
        peer: ReplicaId,
        local_offset: u32,
        remote_offset: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<Option<Status>, PostError> {
        let request = Request {
            kind: Kind::Write,
            peer,
            local: local_offset,
            remote: remote_offset,
            len,
            wr_id,
        };
        self.world.post_done(self.me, self.plane, request)
    }

    fn write(
        &mut self,
        peer: ReplicaId,
        local_offset: u32,
        remote_offset: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<(), PostError> {
        self.post(Kind::Write, peer, local_offset, remote_offset, len, wr_id)
    }

    fn read(
        &mut self,
        peer: ReplicaId,
        remote_offset: u32,
        local_offset: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<(), PostError> {
        self.post(Kind::Read, peer, local_offset, remote_offset, len, wr_id)
    }

    fn poll(&mut self, completions: &mut [Completion]) -> usize {
        self.world.poll(self.me, self.plane, completions)
    }

    fn grant(&mut self, peer: ReplicaId) {
        self.world.grant(self.me, peer);
    }

    fn revoke(&mut self, peer: ReplicaId) {
        self.world.revoke(self.me, peer);
    }

    fn reconnect(&mut self, peer: ReplicaId) -> Result<(), PostError> {
        self.world.reconnect(self.me, peer, self.plane)
    }

    fn load(&self, offset: u32, buf: &mut [u8]) {
        self.world.load(self.me, offset, buf);
    }

    fn store(&mut self, offset: u32, bytes: &[u8]) {
        self.world.store(self.me, offset, bytes);
    }

    fn ended_life(&self, peer: ReplicaId) -> Option<u32> {
        self.world.ended_life(self.me, peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mu_nostd::config::Config;

    const N: u8 = 3;

    fn layout() -> Layout {
        let mut config = Config::new(N);
        config.slot_count = 16;
        Layout::new(&config)
    }

    fn world(faults: Faults, seed: u64) -> World {
        World::new(layout(), N, faults, seed)
    }

    /// Advances tick by tick up to `ticks` more, collecting `me`'s completions on `plane`.
    fn run(world: &mut World, me: u8, plane: Plane, ticks: u64) -> Vec<Completion> {
        let mut seen = Vec::new();
        let mut buf = [Completion::EMPTY; 4];
        for _ in 0..ticks {
            let now = world.now() + 1;
            world.advance(now);
            let count = world.fabric(me, plane).poll(&mut buf);
            seen.extend_from_slice(&buf[..count]);
        }
        seen
    }

    fn ok(wr_id: u64) -> Completion {
        Completion {
            wr_id,
            status: Status::Ok,
        }
    }

    /// Stages `len` bytes of `value` in `me`'s scratch area and returns its offset.
    fn stage(world: &mut World, me: u8, value: u8, len: usize) -> u32 {
        let at = layout().scratch;
        world
            .fabric(me, Plane::Replication)
            .store(at, &vec![value; len]);
        at
    }

    fn bytes(world: &World, r: u8, offset: u32, len: u32) -> &[u8] {
        &world.region(r)[offset as usize..(offset + len) as usize]
    }

    #[test]
    fn write_lands_and_completes_ok() {
        let mut w = world(Faults::default(), 1);
        let src = stage(&mut w, 0, 0xAB, 16);
        let dst = layout().heartbeat();
        w.fabric(0, Plane::Background)
            .write(1, src, dst, 16, 7)
            .unwrap();
        assert_eq!(run(&mut w, 0, Plane::Background, 30), [ok(7)]);
        assert_eq!(bytes(&w, 1, dst, 16), [0xAB; 16]);
        assert!(
            run(&mut w, 0, Plane::Replication, 5).is_empty(),
            "planes have their own queues"
        );
        assert_eq!(w.stats().ops_posted, 1);
        assert!(w.take_violations().is_empty());
    }

    #[test]
    fn writes_take_their_bytes_when_they_land() {
        let mut w = world(Faults::gentle(), 2);
        let src = stage(&mut w, 0, 1, 16);
        w.fabric(0, Plane::Background)
            .write(1, src, layout().heartbeat(), 16, 1)
            .unwrap();
        stage(&mut w, 0, 2, 16); // Changed after posting, before landing.
        assert_eq!(run(&mut w, 0, Plane::Background, 5), [ok(1)]);
        assert_eq!(bytes(&w, 1, layout().heartbeat(), 16), [2; 16]);
    }

    #[test]
    fn post_errors() {
        let mut w = world(Faults::default(), 3);
        let end = layout().region_bytes;
        let mut f = w.fabric(0, Plane::Replication);
        assert_eq!(f.write(0, 0, 0, 8, 1), Err(PostError::NoSuchPeer));
        assert_eq!(f.read(N, 0, 0, 8, 1), Err(PostError::NoSuchPeer));
        assert_eq!(f.write(1, end - 4, 0, 8, 1), Err(PostError::OutOfBounds));
        assert_eq!(f.read(1, end - 4, 0, 8, 1), Err(PostError::OutOfBounds));
        assert_eq!(f.write(1, 0, u32::MAX, 8, 1), Err(PostError::OutOfBounds));
        assert_eq!(f.reconnect(0), Err(PostError::NoSuchPeer));
        assert_eq!(w.stats().posts_refused, 5);
    }

    #[test]
    fn unpermitted_log_write_is_denied_and_breaks_the_connection() {
        let mut w = world(Faults::default(), 4);
        let src = stage(&mut w, 0, 0xCD, 64);
        let slot = layout().slot(0);
        let mut f = w.fabric(0, Plane::Replication);
        f.write(1, src, slot, 64, 1).unwrap();
        let done = run(&mut w, 0, Plane::Replication, 30);
        assert_eq!(
            done,
            [Completion {
                wr_id: 1,
                status: Status::Denied
            }]
        );
        assert_eq!(bytes(&w, 1, slot, 64), [0; 64]);
        let mut f = w.fabric(0, Plane::Replication);
        assert_eq!(f.write(1, src, slot, 64, 2), Err(PostError::Broken));
        // The other plane's connection and other peers are unaffected.
        w.fabric(0, Plane::Background)
            .write(1, src, layout().heartbeat(), 16, 3)
            .unwrap();
        w.fabric(2, Plane::Replication).grant(0);
        w.fabric(0, Plane::Replication)
            .write(2, src, layout().heartbeat(), 16, 4)
            .unwrap();
        w.fabric(1, Plane::Replication).grant(0);
        let mut f = w.fabric(0, Plane::Replication);
        assert_eq!(f.reconnect(1), Ok(()));
        f.write(1, src, slot, 64, 5).unwrap();
        let mut done = run(&mut w, 0, Plane::Replication, 30);
        done.sort_by_key(|c| c.wr_id);
        assert_eq!(done, [ok(4), ok(5)]);
        assert_eq!(bytes(&w, 1, slot, 64), [0xCD; 64]);
        assert_eq!(w.stats().denied, 1);
        assert!(w.take_violations().is_empty());
    }

    /// Contract rule 5: a replication-plane write needs the owner's grant whatever the area
    /// (verbs gates the whole queue pair); the background plane writes the background area
    /// without one.
    #[test]
    fn replication_plane_writes_need_the_grant_everywhere() {
        let mut w = world(Faults::gentle(), 3);
        let src = stage(&mut w, 0, 0x5A, 16);
        let request = layout().transfer_request(0);
        w.fabric(0, Plane::Replication)
            .write(1, src, request, 16, 1)
            .unwrap();
        assert_eq!(
            run(&mut w, 0, Plane::Replication, 30),
            [Completion {
                wr_id: 1,
                status: Status::Denied
            }]
        );
        assert_eq!(bytes(&w, 1, request, 16), [0; 16]);
        w.fabric(0, Plane::Background)
            .write(1, src, request, 16, 2)
            .unwrap();
        assert_eq!(run(&mut w, 0, Plane::Background, 30), [ok(2)]);
        assert_eq!(bytes(&w, 1, request, 16), [0x5A; 16]);
        w.fabric(1, Plane::Replication).grant(0);
        let mut f = w.fabric(0, Plane::Replication);
        f.reconnect(1).unwrap();
        f.write(1, src, request, 16, 3).unwrap();
        assert_eq!(run(&mut w, 0, Plane::Replication, 30), [ok(3)]);
        assert!(w.take_violations().is_empty());
    }

    #[test]
    fn revoke_fences_pieces_in_flight() {
        let faults = Faults {
            torn_pieces_max: 8,
            delay_max: 10,
            ..Faults::gentle()
        };
        let mut partial = 0;
        for seed in 0..40 {
            let mut w = world(faults, seed);
            let src = stage(&mut w, 0, 0xEE, 128);
            let slot = layout().slot(1);
            w.fabric(1, Plane::Background).grant(0);
            w.fabric(0, Plane::Replication)
                .write(1, src, slot, 128, 9)
                .unwrap();
            let landed = |w: &World| {
                bytes(w, 1, slot, 128)
                    .iter()
                    .filter(|&&b| b == 0xEE)
                    .count()
            };
            let mut done = Vec::new();
            while landed(&w) == 0 {
                done.extend(run(&mut w, 0, Plane::Replication, 1));
            }
            let before = landed(&w);
            if before == 128 {
                continue;
            }
            partial += 1;
            w.fabric(1, Plane::Background).revoke(0);
            done.extend(run(&mut w, 0, Plane::Replication, 40));
            assert_eq!(
                landed(&w),
                before,
                "seed {seed}: a piece landed after the revoke"
            );
            assert_eq!(
                done,
                [Completion {
                    wr_id: 9,
                    status: Status::Denied
                }]
            );
        }
        assert!(partial > 5, "too few writes caught half landed: {partial}");
    }

    #[test]
    fn revoke_then_grant_still_fences_earlier_posts() {
        let mut w = world(Faults::default(), 5);
        let src = stage(&mut w, 0, 0x11, 64);
        let slot = layout().slot(2);
        w.fabric(1, Plane::Background).grant(0);
        w.fabric(0, Plane::Replication)
            .write(1, src, slot, 64, 1)
            .unwrap();
        w.fabric(1, Plane::Background).revoke(0);
        w.fabric(1, Plane::Background).grant(0);
        let done = run(&mut w, 0, Plane::Replication, 30);
        assert_eq!(
            done,
            [Completion {
                wr_id: 1,
                status: Status::Denied
            }]
        );
        assert_eq!(bytes(&w, 1, slot, 64), [0; 64]);
        assert_eq!(w.granted(1), 0b001);
    }

    #[test]
    fn completions_come_in_posted_order_per_connection() {
        let faults = Faults {
            lost_completion_per_mille: 0,
            ..Faults::default()
        };
        for seed in 0..20 {
            let mut w = world(faults, seed);
            let src = stage(&mut w, 0, 3, 16);
            for id in 0..16 {
                w.fabric(0, Plane::Background)
                    .write(1, src, layout().heartbeat(), 16, id)
                    .unwrap();
            }
            let done = run(&mut w, 0, Plane::Background, 60);
            assert_eq!(done, (0..16).map(ok).collect::<Vec<_>>(), "seed {seed}");
        }
    }

    #[test]
    fn posting_beyond_the_bound_is_busy() {
        let faults = Faults {
            outstanding_max: 4,
            ..Faults::gentle()
        };
        let mut w = world(faults, 6);
        let mut f = w.fabric(0, Plane::Background);
        for id in 0..4 {
            f.read(1, layout().heartbeat(), layout().scratch, 16, id)
                .unwrap();
        }
        assert_eq!(
            f.read(1, layout().heartbeat(), layout().scratch, 16, 4),
            Err(PostError::Busy)
        );
        // Another peer has its own bound.
        f.read(2, layout().heartbeat(), layout().scratch, 16, 5)
            .unwrap();
        assert_eq!(run(&mut w, 0, Plane::Background, 5).len(), 5);
        w.fabric(0, Plane::Background)
            .read(1, 0, layout().scratch, 16, 6)
            .unwrap();
    }

    #[test]
    fn reads_copy_the_peer_bytes() {
        let mut w = world(Faults::default(), 7);
        let at = layout().heartbeat();
        w.region_mut(2)[at as usize..at as usize + 16].copy_from_slice(&[0x42; 16]);
        let landing = layout().landing_heartbeat(2);
        w.fabric(0, Plane::Background)
            .read(2, at, landing, 16, 11)
            .unwrap();
        assert_eq!(run(&mut w, 0, Plane::Background, 30), [ok(11)]);
        assert_eq!(bytes(&w, 0, landing, 16), [0x42; 16]);
    }

    #[test]
    fn crashed_replicas_freeze() {
        let mut outcomes = (0, 0);
        for seed in 0..20 {
            let mut w = world(Faults::default(), seed);
            let src = stage(&mut w, 0, 0x77, 16);
            let src1 = stage(&mut w, 1, 0x66, 16);
            let hb = layout().heartbeat();
            w.fabric(1, Plane::Background)
                .write(0, src1, hb, 16, 1)
                .unwrap();
            w.fabric(0, Plane::Background)
                .write(1, src, hb, 16, 2)
                .unwrap();
            w.crash(1);
            assert!(w.is_crashed(1));
            let done = run(&mut w, 0, Plane::Background, 40);
            assert_eq!(
                bytes(&w, 0, hb, 16),
                [0; 16],
                "an op of the crashed replica landed"
            );
            assert_eq!(
                bytes(&w, 1, hb, 16),
                [0; 16],
                "an op landed on the crashed replica"
            );
            match done.as_slice() {
                [] => outcomes.0 += 1,
                [Completion {
                    wr_id: 2,
                    status: Status::Failed,
                }] => outcomes.1 += 1,
                other => panic!("seed {seed}: {other:?}"),
            }
            assert!(run(&mut w, 1, Plane::Background, 1).is_empty());
        }
        assert!(outcomes.0 > 0 && outcomes.1 > 0, "{outcomes:?}");
    }

    #[test]
    fn partitions_stall_or_fail_and_heal() {
        let mut outcomes = (0, 0);
        for seed in 0..20 {
            let mut w = world(Faults::gentle(), seed);
            let src = stage(&mut w, 0, 0x55, 16);
            let hb = layout().heartbeat();
            w.set_reachable(1, 0, false);
            assert!(!w.is_reachable(0, 1));
            w.fabric(0, Plane::Background)
                .write(1, src, hb, 16, 3)
                .unwrap();
            let done = run(&mut w, 0, Plane::Background, 20);
            assert_eq!(
                bytes(&w, 1, hb, 16),
                [0; 16],
                "seed {seed}: landed across a partition"
            );
            w.heal();
            let after = run(&mut w, 0, Plane::Background, 20);
            match (done.as_slice(), after.as_slice()) {
                ([], [c]) if *c == ok(3) => {
                    outcomes.0 += 1;
                    assert_eq!(bytes(&w, 1, hb, 16), [0x55; 16]);
                }
                (
                    [Completion {
                        wr_id: 3,
                        status: Status::Failed,
                    }],
                    [],
                ) => {
                    outcomes.1 += 1;
                    let mut f = w.fabric(0, Plane::Background);
                    assert_eq!(f.write(1, src, hb, 16, 4), Err(PostError::Broken));
                }
                other => panic!("seed {seed}: {other:?}"),
            }
        }
        assert!(outcomes.0 > 0 && outcomes.1 > 0, "{outcomes:?}");
    }

    #[test]
    fn lost_completion_cuts_the_connection_off_until_reconnect() {
        let faults = Faults {
            lost_completion_per_mille: 1000,
            ..Faults::gentle()
        };
        let mut w = world(faults, 8);
        let hb = layout().heartbeat();
        let src = stage(&mut w, 0, 0x99, 16);
        w.fabric(0, Plane::Background)
            .write(1, src, hb, 16, 1)
            .unwrap();
        assert!(run(&mut w, 0, Plane::Background, 10).is_empty());
        assert_eq!(bytes(&w, 1, hb, 16), [0x99; 16]);
        stage(&mut w, 0, 0x98, 16);
        w.fabric(0, Plane::Background)
            .write(1, src, hb, 16, 2)
            .unwrap();
        assert!(run(&mut w, 0, Plane::Background, 10).is_empty());
        assert_eq!(
            bytes(&w, 1, hb, 16),
            [0x99; 16],
            "landed on a cut-off connection"
        );
        let mut f = w.fabric(0, Plane::Background);
        f.reconnect(1).unwrap();
        f.write(1, src, hb, 16, 3).unwrap();
        let done = run(&mut w, 0, Plane::Background, 10);
        assert!(
            done.iter()
                .all(|c| c.status == Status::Failed && c.wr_id < 3),
            "{done:?}"
        );
        assert_eq!(bytes(&w, 1, hb, 16), [0x98; 16]);
        assert_eq!(w.stats().lost_completions, 2);
    }

    #[test]
    fn reconnect_drops_what_is_outstanding() {
        for seed in 0..10 {
            let mut w = world(Faults::default(), seed);
            let hb = layout().heartbeat();
            let src = stage(&mut w, 0, 0x31, 16);
            for owner in [1, 2] {
                w.fabric(owner, Plane::Replication).grant(0);
            }
            for id in 0..5 {
                w.fabric(0, Plane::Replication)
                    .write(1, src, hb, 16, id)
                    .unwrap();
            }
            w.fabric(0, Plane::Replication).reconnect(1).unwrap();
            w.fabric(0, Plane::Replication)
                .write(2, src, hb, 16, 9)
                .unwrap();
            let done = run(&mut w, 0, Plane::Replication, 40);
            assert_eq!(bytes(&w, 1, hb, 16), [0; 16]);
            let failed: Vec<u64> = done
                .iter()
                .filter(|c| c.wr_id < 5)
                .map(|c| c.wr_id)
                .collect();
            assert!(done
                .iter()
                .all(|c| c.wr_id == 9 || c.status == Status::Failed));
            assert!(
                failed.windows(2).all(|w| w[0] < w[1]),
                "out of order: {failed:?}"
            );
            assert!(done.contains(&ok(9)));
        }
    }

    #[test]
    fn double_grant_and_owner_log_writes_are_violations() {
        let mut w = world(Faults::gentle(), 9);
        let src = stage(&mut w, 1, 0x21, 16);
        let slot = layout().slot(3);
        w.fabric(0, Plane::Background).grant(1);
        w.fabric(0, Plane::Background).grant(2);
        assert_eq!(w.granted(0), 0b110);
        w.fabric(1, Plane::Replication)
            .write(0, src, slot, 16, 1)
            .unwrap();
        assert_eq!(run(&mut w, 1, Plane::Replication, 5), [ok(1)]);
        let violations = w.take_violations();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].contains("replica 1 wrote the log of 0"),
            "{violations:?}"
        );
        w.fabric(0, Plane::Background).revoke(2);
        w.fabric(0, Plane::Replication).store(slot, &[1; 8]);
        w.fabric(0, Plane::Replication)
            .read(1, 0, slot, 8, 2)
            .unwrap();
        run(&mut w, 0, Plane::Replication, 5);
        let violations = w.take_violations();
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(
            violations[0].contains("owner 0 writes its own log (a store"),
            "{violations:?}"
        );
        assert!(violations[1].contains("(a read landed"), "{violations:?}");
        w.fabric(0, Plane::Background).revoke(1);
        w.fabric(0, Plane::Replication).store(slot, &[1; 8]);
        assert!(w.take_violations().is_empty());
    }

    /// A random workload over every fault; returns everything observable.
    fn chaos(seed: u64) -> (Vec<Completion>, Stats, Vec<Vec<u8>>) {
        let mut w = world(Faults::default(), seed);
        let mut rng = Rng::new(seed ^ 1);
        let mut seen = Vec::new();
        let mut buf = [Completion::EMPTY; 8];
        for tick in 1..2_000u64 {
            w.advance(tick);
            let me = rng.below(N as u64) as u8;
            let peer = rng.below(N as u64) as u8;
            let plane = if rng.chance(1, 2) {
                Plane::Replication
            } else {
                Plane::Background
            };
            let offset = rng.below(layout().scratch as u64 - 64) as u32;
            let mut f = w.fabric(me, plane);
            f.store(layout().scratch, &tick.to_le_bytes());
            let _ = match rng.below(8) {
                0 => f.read(peer, offset, layout().scratch + 64, 64, tick),
                1 => f.reconnect(peer),
                2 if peer != me => {
                    f.grant(peer);
                    Ok(())
                }
                3 if peer != me => {
                    f.revoke(peer);
                    Ok(())
                }
                _ => f.write(peer, layout().scratch, offset, 64, tick),
            };
            let count = f.poll(&mut buf);
            seen.extend_from_slice(&buf[..count]);
            match rng.below(200) {
                0 => w.set_reachable(me, peer, false),
                1 => w.heal(),
                _ => {}
            }
        }
        w.take_violations();
        (seen, w.stats(), w.regions.clone())
    }

    #[test]
    fn runs_are_deterministic() {
        let a = chaos(10);
        assert_eq!(a, chaos(10));
        assert_ne!(a.2, chaos(11).2);
        assert!(
            a.1.pieces_landed > 0 && a.1.denied > 0 && a.1.failed > 0,
            "{:?}",
            a.1
        );
    }
}
