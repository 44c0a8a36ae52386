//! The replication plane's connections, below both of its roles (the tenure and the state
//! transfer): per peer, a connection epoch and the operations outstanding on it in the order
//! posted; and the completion drain that both planes (replication and background) use.
//!
//! # Invariants
//! - Operations of one connection complete in the order posted (contract rule 3): a completion
//!   of the current epoch always matches the front of its connection's queue, kind included.
//! - A connection's epoch rises at every reconnect; a completion of an older epoch is ignored,
//!   so nothing posted before a reconnect is ever taken for something posted after it.
//! - At most `PENDING_MAX` operations are outstanding per connection; a post beyond that is
//!   refused, never queued.
//! - A broken connection takes no new posts until it is reset (`drop`), which happens only once
//!   what was outstanding on it drained, or when it is dropped on purpose.
//! - A write the fabric did within its post (`Fabric::write_done`) waits in the done list, in
//!   the order posted, until a drain takes it; a broken connection with such a write waiting is
//!   `Draining`, since it may be the `Denied` that ends a tenure. Such a write is posted only on
//!   a connection with nothing pending and outside a drain, and a drain takes the done list (to
//!   empty) before the fabric's completions: a connection's completions are still taken in the
//!   order posted.
//! - A successful write done within its post skips the done list (`Posted::Done`) only when the
//!   caller asked to settle it (`Answers::Settle`) and nothing of its connection waits there:
//!   the caller takes it as completed then, which is still in the order posted.

use crate::config::REPLICAS_MAX;
use crate::fabric::{Completion, Fabric, PostError, ReplicaId, Status};
use crate::wrid::{Kind, WrId};

/// Operations outstanding per connection that the plane keeps track of.
const PENDING_MAX: usize = 96;
/// Completions taken from a fabric in one `poll`.
const COMPLETION_BATCH: usize = 16;
/// Batches one drain takes at most: bounded work per poll.
const COMPLETION_BATCHES_MAX: usize = 8;
/// Writes done within their post that wait for a drain; more are posted as plain writes.
const DONE_MAX: usize = 16;

/// A plane's completion drain (both planes have one): hands out the completions of one
/// bounded drain, polled from the fabric a batch at a time into a buffer kept between drains.
///
/// ```text
/// while let Some((id, status)) = inbox.next(fabric, replicas, me) { ... }
/// ```
///
/// One drain polls at most `COMPLETION_BATCHES_MAX` batches; the `None` that ends it resets the
/// inbox for the next drain. An idle poll asks `empty` first: one poll of the fabric, whose
/// batch, if any, starts the next drain. Only completions whose id decodes and names another
/// replica of the cluster come out (a fabric returning a foreign id is ignored); each plane
/// checks the epoch of its own connections.
pub(crate) struct Inbox {
    completions: [Completion; COMPLETION_BATCH],
    /// Completions in the buffer, and the next one to hand out.
    len: usize,
    next: usize,
    /// Batches polled in this drain; the last one was the drain's last.
    batches: usize,
    last: bool,
}

impl Inbox {
    pub(crate) const NEW: Inbox = Inbox {
        completions: [Completion::EMPTY; COMPLETION_BATCH],
        len: 0,
        next: 0,
        batches: 0,
        last: false,
    };

    /// The next completion of this drain; `None` ends the drain.
    #[inline(always)]
    pub(crate) fn next<F: Fabric>(
        &mut self,
        fabric: &mut F,
        replicas: u8,
        me: ReplicaId,
    ) -> Option<(WrId, Status)> {
        loop {
            debug_assert!(self.next <= self.len && self.len <= COMPLETION_BATCH);
            if self.next < self.len {
                let completion = self.completions[self.next];
                self.next += 1;
                match WrId::decode(completion.wr_id) {
                    Some(id) if id.peer < replicas && id.peer != me => {
                        return Some((id, completion.status))
                    }
                    _ => continue,
                }
            }
            if self.last {
                (self.len, self.next, self.batches, self.last) = (0, 0, 0, false);
                return None;
            }
            let len = fabric.poll(&mut self.completions);
            self.took_batch(len);
        }
    }

    /// Polls the first batch of the next drain ahead of it: true when the fabric had nothing,
    /// so that drain would end at once. What it polled otherwise waits in the inbox for that
    /// drain, which starts with it; asked again before that drain, it answers false without
    /// polling (a second batch would overwrite the first).
    #[inline(always)]
    pub(crate) fn empty<F: Fabric>(&mut self, fabric: &mut F) -> bool {
        if self.batches > 0 {
            return false;
        }
        debug_assert!(self.len == 0 && self.next == 0 && !self.last);
        let len = fabric.poll(&mut self.completions);
        if len == 0 {
            return true; // Nothing taken: the inbox stays ready for the next drain.
        }
        self.took_batch(len);
        false
    }

    /// True when no drain is under way and nothing was polled ahead of one: a write done
    /// within its post now cannot overtake a completion of its connection that waits here.
    #[inline(always)]
    pub(crate) fn idle(&self) -> bool {
        self.batches == 0
    }

    /// The fabric just polled `len` completions into the buffer: the drain's next batch.
    #[inline(always)]
    fn took_batch(&mut self, len: usize) {
        self.len = len.min(COMPLETION_BATCH);
        self.next = 0;
        self.batches += 1;
        self.last = self.len < COMPLETION_BATCH || self.batches == COMPLETION_BATCHES_MAX;
    }
}

/// An operation posted on the replication plane, waiting for its completion.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    pub(crate) kind: Kind,
    /// The tenure that posted it; 0 for a state transfer's operations.
    pub(crate) tenure: u32,
    pub(crate) tag: u32,
    /// The log positions it carries (or reads), if any.
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) posted_at: u64,
}

impl Pending {
    const NONE: Pending = Pending {
        kind: Kind::WriteLog,
        tenure: 0,
        tag: 0,
        start: 0,
        end: 0,
        posted_at: 0,
    };
}

/// A write the fabric did within its post, waiting for a drain to take its completion.
#[derive(Clone, Copy, Debug)]
struct Done {
    peer: ReplicaId,
    /// The connection's epoch when it was posted: a reset since drops it.
    epoch: u16,
    pending: Pending,
    status: Status,
}

impl Done {
    const NONE: Done = Done {
        peer: 0,
        epoch: 0,
        pending: Pending::NONE,
        status: Status::Failed,
    };
}

/// One operation to post: what it is for and the bytes it moves.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Work {
    pub(crate) kind: Kind,
    pub(crate) tag: u32,
    /// The log positions it carries; `(0, 0)` for anything else.
    pub(crate) range: (u64, u64),
    /// The offset in this replica's region (the source of a write, the target of a read).
    pub(crate) local: u32,
    /// The offset in the peer's region.
    pub(crate) remote: u32,
    pub(crate) len: u32,
}

/// This plane's connection to one peer: its epoch and the operations outstanding on it, in the
/// order posted (which is the order they complete in).
#[derive(Clone, Copy, Debug)]
struct Connection {
    epoch: u16,
    broken: bool,
    pending: [Pending; PENDING_MAX],
    head: usize,
    len: usize,
    /// Its writes in the done list.
    done: u8,
}

impl Connection {
    const NEW: Connection = Connection {
        epoch: 0,
        broken: false,
        pending: [Pending::NONE; PENDING_MAX],
        head: 0,
        len: 0,
        done: 0,
    };

    // Inlined on the commit path (callgrind counted the call: `mu-bench instructions`).
    #[inline]
    fn push(&mut self, pending: Pending) {
        assert!(self.len < PENDING_MAX);
        self.pending[(self.head + self.len) % PENDING_MAX] = pending;
        self.len += 1;
    }

    fn pop(&mut self) -> Option<Pending> {
        if self.len == 0 {
            return None;
        }
        let front = self.pending[self.head];
        self.head = (self.head + 1) % PENDING_MAX;
        self.len -= 1;
        Some(front)
    }

    fn outstanding(&self) -> impl Iterator<Item = Pending> + '_ {
        (0..self.len).map(|i| self.pending[(self.head + i) % PENDING_MAX])
    }
}

/// The state of a connection, for a caller about to post on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// It takes posts.
    Open,
    /// It broke, and what was outstanding on it still completes (failed): that comes first,
    /// because one of those completions may be the `Denied` that must end a tenure.
    Draining,
    /// It broke and nothing is outstanding: reset it (`drop`) before posting.
    Broken,
}

/// What a caller of `Links::post` lets the fabric answer within the post.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answers {
    /// Nothing: a drain is under way, or the caller takes every completion from a drain.
    Never,
    /// A write done within its post waits in the done list for the next drain.
    List,
    /// As `List`, but a successful one with nothing of its connection waiting is the
    /// caller's to settle at once (`Posted::Done`).
    Settle,
}

/// How `Links::post` went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub(crate) enum Posted {
    /// Not posted now: the connection is full, the fabric busy, or the connection broke (see
    /// `readiness`).
    Refused,
    /// Posted: a drain takes its completion.
    Pending,
    /// Done within its post, successfully, with nothing of its connection before it: no
    /// completion follows, and the caller takes it as completed now.
    Done,
}

impl Posted {
    /// True unless it was refused.
    pub(crate) fn posted(self) -> bool {
        self != Posted::Refused
    }
}

/// The replication plane's connections, one per peer.
pub(crate) struct Links {
    connections: [Connection; REPLICAS_MAX as usize],
    /// Operations posted so far (wrapping): a poll that posted nothing has nothing to drain.
    posts: u32,
    /// Writes done within their post, oldest first from `done_head`.
    done: [Done; DONE_MAX],
    done_head: usize,
    done_len: usize,
}

impl Links {
    pub(crate) const NEW: Links = Links {
        connections: [Connection::NEW; REPLICAS_MAX as usize],
        posts: 0,
        done: [Done::NONE; DONE_MAX],
        done_head: 0,
        done_len: 0,
    };

    /// Operations posted so far, wrapping: compare two readings to tell whether any was.
    pub(crate) fn posts(&self) -> u32 {
        self.posts
    }

    pub(crate) fn readiness(&self, peer: ReplicaId) -> Readiness {
        let connection = &self.connections[peer as usize];
        if !connection.broken {
            return Readiness::Open; // Every post asks: one load for the common answer.
        }
        match connection.len + connection.done as usize {
            0 => Readiness::Broken,
            _ => Readiness::Draining,
        }
    }

    /// Posts `work` to `peer` for `tenure` (0: a state transfer) on an open connection. Unless
    /// `answers` is `Never`, a write may be done within its post (see the module's invariants);
    /// the caller allows that only outside a drain (`Inbox::idle`).
    // Inlined on the commit path (callgrind counted the call: `mu-bench instructions`).
    #[inline(always)]
    pub(crate) fn post<F: Fabric>(
        &mut self,
        now: u64,
        fabric: &mut F,
        peer: ReplicaId,
        tenure: u32,
        work: Work,
        answers: Answers,
    ) -> Posted {
        let connection = &mut self.connections[peer as usize];
        if connection.broken || connection.len == PENDING_MAX {
            return Posted::Refused;
        }
        let id = WrId {
            kind: work.kind,
            peer,
            epoch: connection.epoch,
            tag: work.tag,
        }
        .encode();
        let (start, end) = work.range;
        let pending = Pending {
            kind: work.kind,
            tenure,
            tag: work.tag,
            start,
            end,
            posted_at: now,
        };
        let posted = if !work.kind.is_write() {
            fabric.read(peer, work.remote, work.local, work.len, id)
        } else if answers != Answers::Never && connection.len == 0 && self.done_len < DONE_MAX {
            match fabric.write_done(peer, work.local, work.remote, work.len, id) {
                Ok(Some(status)) => {
                    self.posts = self.posts.wrapping_add(1);
                    let settle = answers == Answers::Settle && connection.done == 0;
                    if settle && status == Status::Ok {
                        return Posted::Done;
                    }
                    connection.done += 1;
                    let epoch = connection.epoch;
                    self.done[(self.done_head + self.done_len) % DONE_MAX] = Done {
                        peer,
                        epoch,
                        pending,
                        status,
                    };
                    self.done_len += 1;
                    return Posted::Pending;
                }
                Ok(None) => Ok(()),
                Err(error) => Err(error),
            }
        } else {
            fabric.write(peer, work.local, work.remote, work.len, id)
        };
        match posted {
            Ok(()) => {
                self.posts = self.posts.wrapping_add(1);
                connection.push(pending);
                Posted::Pending
            }
            Err(PostError::Broken) => {
                connection.broken = true;
                Posted::Refused
            }
            Err(_) => Posted::Refused,
        }
    }

    /// The oldest write done within its post that a drain has not taken, with its peer and
    /// how it ended, as `take` would hand out its completion; writes of a connection reset
    /// since are skipped.
    #[inline(always)]
    pub(crate) fn take_done(&mut self) -> Option<(ReplicaId, Pending, Status)> {
        while self.done_len > 0 {
            let done = self.done[self.done_head];
            self.done_head = (self.done_head + 1) % DONE_MAX;
            self.done_len -= 1;
            let connection = &mut self.connections[done.peer as usize];
            if done.epoch != connection.epoch {
                continue; // Its connection was reset, which dropped it.
            }
            assert!(connection.done > 0);
            connection.done -= 1;
            if done.status != Status::Ok {
                connection.broken = true;
            }
            return Some((done.peer, done.pending, done.status));
        }
        None
    }

    /// True when writes done within their post wait for a drain.
    pub(crate) fn any_done(&self) -> bool {
        self.done_len > 0
    }

    /// Forgets the writes done within their post (their tenure ended): a failed one still
    /// breaks its connection, as its completion would have.
    pub(crate) fn forget_done(&mut self) {
        while self.take_done().is_some() {}
    }

    /// What a completion of `id` finished: the front of its connection, unless it comes from
    /// before a reconnect. A failed one breaks the connection.
    #[inline(always)]
    pub(crate) fn take(&mut self, id: WrId, status: Status) -> Option<Pending> {
        let connection = &mut self.connections[id.peer as usize];
        if id.epoch != connection.epoch {
            return None; // From before a reconnect.
        }
        let pending = connection.pop()?;
        assert_eq!(
            pending.kind, id.kind,
            "completions arrive in the order posted"
        );
        if status != Status::Ok {
            connection.broken = true;
        }
        Some(pending)
    }

    /// The operations outstanding to `peer`, oldest first.
    pub(crate) fn outstanding(&self, peer: ReplicaId) -> impl Iterator<Item = Pending> + '_ {
        self.connections[peer as usize].outstanding()
    }

    /// The oldest operation outstanding to `peer`.
    pub(crate) fn front(&self, peer: ReplicaId) -> Option<Pending> {
        self.outstanding(peer).next()
    }

    /// True when the oldest operation outstanding to `peer` was posted more than `timeout`
    /// ticks before `now`: a peer that may never complete it holds the connection.
    // Inlined: every leader poll checks every peer (see `mu-bench instructions`).
    #[inline]
    pub(crate) fn expired(&self, peer: ReplicaId, now: u64, timeout: u64) -> bool {
        self.front(peer)
            .is_some_and(|front| now.saturating_sub(front.posted_at) > timeout)
    }

    /// Drops whatever is outstanding to `peer` and reconnects: after `Fabric::reconnect` none
    /// of it lands any more, and its completions (of the old epoch) are ignored.
    pub(crate) fn drop<F: Fabric>(&mut self, peer: ReplicaId, fabric: &mut F) {
        let connection = &mut self.connections[peer as usize];
        connection.epoch = connection.epoch.wrapping_add(1);
        connection.head = 0;
        connection.len = 0;
        connection.done = 0;
        connection.broken = false;
        // Only fails for a peer outside the cluster, which no caller names.
        let reconnected = fabric.reconnect(peer);
        debug_assert!(reconnected.is_ok());
    }
}
