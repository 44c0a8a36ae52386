//! The `Fabric`: one-sided reads and writes to the other replicas' regions, local access to this
//! replica's own region, and the owner's permission switches. The contract every implementation
//! honours (simulator, shared memory, verbs, firmware) is in `architecture.md`; in short:
//!
//! 1. Every replica's region has the same layout ([`crate::layout`]).
//! 2. `write` and `read` are posted, never block, and complete later through `poll`, carrying the
//!    work-request id the core chose. A successful write completion means the bytes are in the
//!    peer's region. A write takes its bytes from this replica's own region at `local_offset`, at
//!    any time until it completes; a read lands in this replica's own region at `local_offset`
//!    and its bytes are meaningful only once it has completed successfully.
//! 3. Operations to one peer complete in the order posted. Nothing is ordered across peers.
//! 4. The bytes of one write may become visible in any order and a read may observe a write half
//!    done. The core never relies on landing order: slots and records carry checksums.
//! 5. The log area accepts writes from at most the peer its owner granted; `revoke` is
//!    synchronous: once it returns, no write of that peer lands in the log area again, even one
//!    already posted. The background area is writable by all.
//! 6. A refused write completes with [`Status::Denied`] and breaks the writer's connection to that
//!    peer: every later post fails with [`PostError::Broken`] until `reconnect`.
//! 7. A crashed or cut-off peer may never complete an operation. `reconnect` drops whatever is
//!    outstanding on the connection (it completes with `Failed` or never); the core ignores
//!    completions that predate a reconnect and never waits without a deadline.
//! 8. Outstanding work per peer is bounded; posting beyond the bound fails with
//!    [`PostError::Busy`] and never allocates.
//! 9. A fabric that learns for certain that a life of a peer ended (the kernel says its process
//!    died, the board says its link or watchdog went down) reports it through `ended_life`,
//!    naming the life. It may learn late or never, and a restarted peer's old life stays ended:
//!    the core acts only on a notice for the life it currently trusts.

/// A replica's id: its index in the cluster configuration, `0..replica_count`.
pub type ReplicaId = u8;

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

    /// Writes bytes into this replica's own region.
    fn store(&mut self, offset: u32, bytes: &[u8]);
}
