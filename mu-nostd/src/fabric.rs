//! The `Fabric`: one-sided reads and writes to the other replicas' regions, local access to this
//! replica's own region, and the owner's permission switches.
//!
//! # The contract
//!
//! Every fabric (the simulator's world, shared memory, verbs, the firmware's window) honours these
//! rules; `docs/fabric-contract.md` says how each one meets them, and the simulator enforces them
//! adversarially.
//!
//! 1. **One layout.** Each replica owns one region laid out identically everywhere
//!    (`mu-nostd/src/layout.rs`), starting with a header (magic, layout version, replica count,
//!    configuration hash, check). A replica trusts nothing of a peer before that peer's header
//!    matched its own configuration.
//! 2. **Posted, never blocking.** `write` and `read` return at once and complete later through
//!    `poll`, carrying the caller's `wr_id` (or, for a write a fabric did whole within its post,
//!    through the answer of `write_done`, under rule 3). A write takes its bytes from the writer's own region at
//!    `local_offset`, at any moment until it completes (DMA reads late): the core does not change
//!    those bytes meanwhile, and when it does anyway (a new tenure rewrites a slot), checksums reject
//!    the mixture. A read lands in the reader's own region at `local_offset`; its bytes mean
//!    something only after a successful completion. A successful write completion means the bytes
//!    are in the peer's region.
//! 3. **Per-peer completion order.** Operations of one plane to one peer complete in the order
//!    posted. Nothing is ordered across peers or planes. A write that `write_done` answers is
//!    the connection's next completion: a fabric answers so only when it has nothing of that
//!    connection left to report through `poll`. The core does *not* rely on the order in
//!    which the bytes of different writes become visible: the slot chain (below) makes a follower
//!    wait for the slot it needs whatever order they land in.
//! 4. **Torn bytes.** The bytes of one write may land in any order and a read may see a write half
//!    done. Every slot carries a checksum over its header and payload and its position; every record
//!    a check over its value and its own offset; so a torn, half-read, stale or misplaced item is
//!    never taken for a valid one.
//! 5. **One writer per log.** The log area of a region accepts writes only from the peer its owner
//!    granted, and the background area from every peer's background plane. A replication-plane
//!    write to an owner that has not granted the writer may be refused whatever the area (on
//!    verbs the grant is the replication-plane queue pair's write access; the simulator refuses
//!    such writes too), so the core sends what a non-leader writes into a peer's background area
//!    (a state-transfer request) through its background plane. `grant` and `revoke` act on the owner's own
//!    region and are synchronous: once `revoke(p)` returns, no write of `p` posted before it lands in
//!    the log area, *even if `p` is granted again later*. The owner always revokes a requester
//!    before granting it, and a leader that stands down drops its connections (rule 7): together
//!    they fence every write of an earlier tenure, which on real queue pairs is checked against the
//!    access flags when it executes, not when it was posted (the simulator found a stale write that
//!    landed after a re-grant and overwrote a decided slot before these fences existed).
//! 6. **Refusal breaks the connection.** A write refused by permissions completes with `Denied`,
//!    and every later operation on that connection fails until `reconnect` (what RDMA does: remote
//!    access error, queue pair in the error state).
//! 7. **Deadlines are the core's job.** A crashed or cut-off peer may never complete an operation.
//!    `reconnect(peer)` drops whatever is outstanding on that plane's connection to `peer`: those
//!    operations complete with `Failed` or never, and **none of them lands after `reconnect`
//!    returns**. The core ignores completions from before a reconnect (the work-request id carries
//!    a connection epoch) and never waits without a deadline.
//! 8. **Bounded work.** Outstanding work per connection is bounded; posting beyond the bound fails
//!    with `Busy` and never allocates.
//! 9. **Dead means unreachable.** Once a replica's process has died, operations to its region
//!    fail (complete `Failed`): a successful completion always means a *live* replica holds the
//!    bytes. The core counts a write completion as that replica holding the value, and a restarted
//!    replica comes back with an empty log, so counting a dead process's leftover memory could
//!    count a copy that a restart then throws away. (RDMA gives this by itself: the kernel tears
//!    down a dead process's memory registrations and queue pairs.)
//! 10. **A new life starts closed.** A replica that restarts (a new process, a re-launched VM) has
//!     a new region that grants nobody, and no operation posted to or by its earlier life lands in
//!     the new one: those complete `Failed` (or never) and break the connection, so a peer that
//!     talked to the earlier life must `reconnect` and sees only the new one. The core relies on it
//!     for recovery: what a tenure read from a member and its acks belong to one life of it, and a
//!     write that lands in a member's log proves that this life granted the tenure. (The simulator's
//!     restart event does exactly this; shared memory gets it from the fresh region file and the
//!     incarnation word, verbs from the peer's new queue pairs, the firmware window from the
//!     re-initialised part of the window.)
//! 11. **Two planes, two fabric values.** The replication plane and the background plane each get
//!     their own `Fabric` value (own connections, own completion queue) over the same region, so that
//!     each drains only its own completions.
//! 12. **Certain death is reported, never guessed.** `ended_life(peer)` names the latest life
//!     (the incarnation the peer wrote into its region header) that the fabric knows for certain
//!     ended: the kernel said the process died, the board said its link or watchdog went down. A
//!     slow, stopped or cut-off peer is never reported. The notice may come late or never, and after
//!     a restart it still names the old life. The core fails a peer at once only when the notice
//!     names the life whose header it verified, and safety never depends on it (permissions
//!     decide). The simulator delivers notices after a random delay, loses a quarter of them, keeps
//!     them after restarts, and asserts that a notice never names a running life; the planted
//!     defect `bug-stale-death` (take any notice, whatever life it names) keeps a restarted replica
//!     failed forever and is caught.
//! 13. **Post checks, one order.** Every fabric refuses a bad post the same way, with the checks of
//!     [`check_post`] in their order (`NoSuchPeer`, then `OutOfBounds` for the local range, the
//!     remote range and a background-plane write into the log area), then its connection's
//!     (`Broken`, then `Busy`). A `grant` or `revoke` naming no other replica of the cluster does
//!     nothing.

use crate::layout::Layout;

/// A replica's id: its index in the cluster configuration, `0..replica_count`.
pub type ReplicaId = u8;

/// The ids of a set of replicas (bit per id), lowest first: a loop over the peers in a few
/// instructions per peer, which the planes run on every poll.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ids(pub(crate) u8);

impl Ids {
    /// Every replica of a cluster of `count` but `me`.
    #[inline]
    pub(crate) const fn others(count: u8, me: ReplicaId) -> Ids {
        Ids((((1u16 << count) - 1) as u8) & !(1 << me))
    }
}

impl Iterator for Ids {
    type Item = ReplicaId;

    #[inline]
    fn next(&mut self) -> Option<ReplicaId> {
        if self.0 == 0 {
            return None;
        }
        let id = self.0.trailing_zeros() as ReplicaId;
        self.0 &= self.0 - 1;
        Some(id)
    }
}

/// Which of a replica's two planes a `Fabric` value serves (rule 11): each has its own
/// connections and completion queue over the same region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Plane {
    /// The leader's log replication (slots, records, catch-up, state transfer reads).
    Replication = 0,
    /// Heartbeats, failure detection, permission requests and acks, transfer requests.
    Background = 1,
}

impl Plane {
    /// Both planes.
    pub const ALL: [Plane; 2] = [Plane::Replication, Plane::Background];

    /// The plane a byte names (its `repr`), if any.
    pub const fn from_byte(b: u8) -> Option<Plane> {
        match b {
            0 => Some(Plane::Replication),
            1 => Some(Plane::Background),
            _ => None,
        }
    }

    /// Its name in messages.
    pub const fn name(self) -> &'static str {
        match self {
            Plane::Replication => "replication",
            Plane::Background => "background",
        }
    }
}

/// What a posted operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Op {
    /// A one-sided write into the peer's region.
    Write,
    /// A one-sided read of the peer's region.
    Read,
}

/// The checks every fabric makes, in this order, when `me`'s `plane` posts `op` of `len` bytes
/// between its own `local` offset and `peer`'s `remote` offset (rule 13); each fabric then
/// checks its connection (`Broken`, then `Busy`).
///
/// 1. `NoSuchPeer` unless `peer` is another replica of the cluster.
/// 2. `OutOfBounds` unless `[local, local + len)` lies in the region.
/// 3. `OutOfBounds` unless `[remote, remote + len)` lies where peers may reach: a write inside
///    the background area or inside the log area, a read anywhere below the scratch area.
/// 4. `OutOfBounds` for a background-plane write into the log area: only the replication plane
///    carries the grant (rule 5).
#[inline]
pub fn check_post(
    layout: &Layout,
    me: ReplicaId,
    plane: Plane,
    op: Op,
    peer: ReplicaId,
    (local, remote, len): (u32, u32, u32),
) -> Result<(), PostError> {
    if peer >= layout.replica_count || peer == me {
        return Err(PostError::NoSuchPeer);
    }
    let within = |offset: u32, start: u32, end: u32| {
        offset >= start && (offset as u64 + len as u64) <= end as u64
    };
    if !within(local, 0, layout.region_bytes) {
        return Err(PostError::OutOfBounds);
    }
    let in_log = within(remote, layout.log, layout.transfer);
    let reachable = match op {
        Op::Write => within(remote, layout.background, layout.log) || in_log,
        Op::Read => within(remote, 0, layout.scratch),
    };
    if !reachable || (op == Op::Write && plane == Plane::Background && in_log) {
        return Err(PostError::OutOfBounds);
    }
    Ok(())
}

/// How a posted operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Status {
    /// The operation took effect: a write's bytes are in the peer's region, a read's bytes are in
    /// this replica's region.
    Ok,
    /// The peer's permissions refused the write; the connection is now broken.
    Denied,
    /// The connection failed (peer crashed, link lost, connection reset); nothing is known about
    /// whether a write landed.
    Failed,
}

/// A completed work request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Completion {
    /// The id the core passed when it posted the operation.
    pub wr_id: u64,
    /// How it ended.
    pub status: Status,
}

impl Completion {
    /// A placeholder for completion buffers.
    pub const EMPTY: Completion = Completion {
        wr_id: 0,
        status: Status::Failed,
    };
}

/// Why an operation could not be posted. Posting never blocks and never allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PostError {
    /// Too much outstanding work to this peer; retry after polling completions.
    Busy,
    /// The connection to this peer is broken (after `Denied` or `Failed`); call `reconnect`.
    Broken,
    /// The peer id is not part of the cluster, or is this replica itself.
    NoSuchPeer,
    /// The offsets or length fall outside the region.
    OutOfBounds,
}

/// One-sided access to the cluster's regions, as seen from one replica and one plane.
///
/// A runtime gives each plane its own `Fabric` value (its own connections and completion queue),
/// both addressing the same local region.
pub trait Fabric {
    /// Posts a write of `len` bytes taken from this replica's region at `local_offset` into
    /// `peer`'s region at `remote_offset`.
    fn write(
        &mut self,
        peer: ReplicaId,
        local_offset: u32,
        remote_offset: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<(), PostError>;

    /// Posts a write as [`Fabric::write`] does; a fabric that did the whole write within the
    /// post may answer how it ended, `Ok(Some(status))`, instead of reporting it through `poll`
    /// (which then never reports it; a `Denied` or `Failed` broke the connection, rule 6). It
    /// answers so only when it has nothing of the same connection left to report through
    /// `poll`, so that the answer is the connection's next completion (rule 3). Provided: a
    /// `write`, whose completion comes through `poll` (`Ok(None)`).
    ///
    /// Why: on shared memory a write is the writer's own copy, done before `write` returns;
    /// queuing its completion and polling it back cost more than copying a small command.
    fn write_done(
        &mut self,
        peer: ReplicaId,
        local_offset: u32,
        remote_offset: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<Option<Status>, PostError> {
        self.write(peer, local_offset, remote_offset, len, wr_id)
            .map(|()| None)
    }

    /// Posts a read of `len` bytes of `peer`'s region at `remote_offset` into this replica's
    /// region at `local_offset`.
    fn read(
        &mut self,
        peer: ReplicaId,
        remote_offset: u32,
        local_offset: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<(), PostError>;

    /// Moves finished operations into `completions` without blocking; returns how many.
    fn poll(&mut self, completions: &mut [Completion]) -> usize;

    /// Lets `peer` write this replica's log area.
    fn grant(&mut self, peer: ReplicaId);

    /// Stops `peer` writing this replica's log area. Synchronous: once it returns, no write of
    /// `peer` lands in the log area again, even one already posted.
    fn revoke(&mut self, peer: ReplicaId);

    /// Re-establishes this plane's connection to `peer`, dropping what is outstanding on it.
    fn reconnect(&mut self, peer: ReplicaId) -> Result<(), PostError>;

    /// The latest life of `peer` this fabric knows for certain has ended, as the incarnation that
    /// life wrote into its region header; `None` while nothing is certain. Never a guess: a
    /// peer that is merely slow, stopped or cut off is not reported.
    fn ended_life(&self, peer: ReplicaId) -> Option<u32>;

    /// Copies bytes of this replica's own region into `buf`.
    fn load(&self, offset: u32, buf: &mut [u8]);

    /// The 8 bytes of this replica's own region at `offset` (8-aligned), little-endian: what
    /// `load` would copy, with no more atomicity than it gives (a word a peer is writing may read
    /// torn). A fabric whose region is word-addressable reads it in one load; the idle polls
    /// check one word of the log this way.
    fn load_word(&self, offset: u32) -> u64 {
        debug_assert!(offset % 8 == 0);
        let mut word = [0u8; 8];
        self.load(offset, &mut word);
        u64::from_le_bytes(word)
    }

    /// Writes bytes into this replica's own region.
    fn store(&mut self, offset: u32, bytes: &[u8]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn post_checks_come_in_one_order() {
        let layout = Layout::new(&Config::new(3));
        let check = |plane, op, peer, local, remote, len| {
            check_post(&layout, 1, plane, op, peer, (local, remote, len))
        };
        let (r, b) = (Plane::Replication, Plane::Background);
        let (slot, scratch) = (layout.slot(0), layout.scratch);
        assert_eq!(check(r, Op::Write, 0, scratch, slot, 64), Ok(()));
        assert_eq!(check(r, Op::Read, 2, scratch, layout.offer(), 64), Ok(()));
        assert_eq!(
            check(b, Op::Write, 0, scratch, layout.heartbeat(), 16),
            Ok(())
        );
        // 1. The peer first, whatever else is wrong.
        assert_eq!(
            check(b, Op::Write, 1, u32::MAX, slot, 64),
            Err(PostError::NoSuchPeer)
        );
        assert_eq!(
            check(r, Op::Read, 3, scratch, slot, 64),
            Err(PostError::NoSuchPeer)
        );
        let oob = Err(PostError::OutOfBounds);
        // 2. The local range.
        assert_eq!(
            check(r, Op::Write, 0, layout.region_bytes - 8, slot, 64),
            oob
        );
        assert_eq!(check(r, Op::Write, 0, u32::MAX, slot, 2), oob);
        // 3. The remote range: a write within one area, a read below the scratch area.
        assert_eq!(check(r, Op::Write, 0, scratch, layout.log - 8, 16), oob);
        assert_eq!(check(r, Op::Write, 0, scratch, layout.offer(), 16), oob);
        assert_eq!(
            check(r, Op::Write, 0, scratch, 0, 16),
            oob,
            "the region header"
        );
        assert_eq!(check(r, Op::Read, 0, scratch, scratch, 16), oob);
        // 4. A background-plane write into the log area, granted or not.
        assert_eq!(check(b, Op::Write, 0, scratch, slot, 64), oob);
        assert_eq!(check(b, Op::Read, 0, scratch, slot, 64), Ok(()));
    }

    #[test]
    fn planes_round_trip_their_byte() {
        for plane in Plane::ALL {
            assert_eq!(Plane::from_byte(plane as u8), Some(plane));
        }
        assert_eq!(Plane::from_byte(2), None);
    }
}
