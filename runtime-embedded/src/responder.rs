//! The responder: the part of a replica that plays its RDMA NIC. It executes the work requests
//! peers posted to this replica, in order per ring, and reports each outcome in the ring.
//!
//! A write copies bytes from the sender's region into this replica's region; one that touches
//! the log area runs only under [`Permissions::checked_write`]. A refused one completes `Denied`,
//! one posted before a revoke completes `Failed`, and either flushes the rest of its generation
//! `Failed`, as a queue pair in the error state does. A read copies this replica's bytes into the sender's region. The board runs the
//! responder from the run loop (one core) or on a core of its own; no step waits for a peer.
//!
//! # Invariants
//! - Per ring, requests of one generation are executed in order and at most once.
//! - A request is validated (kind, offsets, length) before anything is copied; nothing a peer
//!   wrote can make the responder panic or touch memory outside the two regions.
//! - At most `RING_DEPTH` requests per ring per `serve`: a step is bounded.

use mu_nostd::config::REPLICAS_MAX;
use mu_nostd::ReplicaId;

use crate::permissions::{Checked, Permissions};
use crate::ring::{self, Count, Kind, Request, Ring, RING_DEPTH};
use crate::window::{Plane, WindowLayout};
use crate::words::Words;

const PEERS: usize = REPLICAS_MAX as usize;
const PLANES: [Plane; 2] = [Plane::Replication, Plane::Background];

/// This side of one incoming ring.
#[derive(Clone, Copy)]
struct Incoming {
    served: Count,
    /// A refused write ended this generation: the rest is flushed.
    flushing: bool,
}

/// Executes the requests peers post to one replica.
pub struct Responder<'w> {
    window: Words<'w>,
    layout: WindowLayout,
    me: ReplicaId,
    permissions: &'w Permissions,
    incoming: [[Incoming; 2]; PEERS],
}

impl<'w> Responder<'w> {
    /// The responder of replica `me`, enforcing `permissions`. Resets `me`'s side of every ring
    /// that comes in.
    pub fn new(
        window: Words<'w>,
        layout: WindowLayout,
        me: ReplicaId,
        permissions: &'w Permissions,
    ) -> Responder<'w> {
        assert!(me < layout.replica_count);
        assert!(window.len() as u64 >= layout.bytes);
        let start = Incoming {
            served: Count {
                generation: 0,
                count: 0,
            },
            flushing: false,
        };
        let responder = Responder {
            window,
            layout,
            me,
            permissions,
            incoming: [[start; 2]; PEERS],
        };
        for sender in (0..layout.replica_count).filter(|&s| s != me) {
            for plane in PLANES {
                responder.ring(sender, plane).set_served(start.served);
            }
        }
        responder
    }

    fn ring(&self, sender: ReplicaId, plane: Plane) -> Ring<'w> {
        Ring::new(self.window, self.layout.ring(sender, self.me, plane))
    }

    /// Serves every incoming ring once; returns how many requests it executed.
    pub fn serve(&mut self) -> u32 {
        let mut executed = 0;
        for sender in 0..self.layout.replica_count {
            if sender == self.me {
                continue;
            }
            for plane in PLANES {
                executed += self.serve_ring(sender, plane);
            }
        }
        executed
    }

    fn serve_ring(&mut self, sender: ReplicaId, plane: Plane) -> u32 {
        let ring = self.ring(sender, plane);
        let Some(posted) = ring.posted() else {
            return 0; // Not a word a sender writes: ignore it until it is.
        };
        let mut state = self.incoming[sender as usize][plane as usize];
        if posted.generation != state.served.generation {
            // The sender reconnected: whatever is left of the old generation is dropped.
            state = Incoming {
                served: Count {
                    generation: posted.generation,
                    count: 0,
                },
                flushing: false,
            };
            ring.set_served(state.served);
        }
        // More than a ring's worth pending: a confused sender; nothing runs until it reconnects.
        let pending = ring::distance(state.served.count, posted.count).unwrap_or(0);
        let mut executed = 0;
        for _ in 0..pending {
            let Some(request) = ring.read_entry(state.served) else {
                break; // Published count, entry not visible yet: next time.
            };
            let status = if state.flushing {
                ring::STATUS_FAILED
            } else {
                self.execute(sender, state.served, request)
            };
            state.flushing |= status != ring::STATUS_OK;
            ring.set_status(state.served.count, status);
            state.served.count = state.served.count.wrapping_add(1);
            ring.set_served(state.served);
            executed += 1;
        }
        assert!(executed <= RING_DEPTH);
        self.incoming[sender as usize][plane as usize] = state;
        executed
    }

    fn execute(&self, sender: ReplicaId, tag: Count, request: Request) -> u32 {
        let region = u64::from(self.layout.region.region_bytes);
        let fits = |offset: u32| u64::from(offset) + u64::from(request.len) <= region;
        if !fits(request.local) || !fits(request.remote) {
            return ring::STATUS_FAILED;
        }
        let theirs = self.layout.region(sender) as usize + request.local as usize;
        let mine = self.layout.region(self.me) as usize + request.remote as usize;
        let len = request.len as usize;
        if request.kind == Kind::Read as u32 {
            Words::copy(self.window, mine, self.window, theirs, len);
            return ring::STATUS_OK;
        }
        if request.kind != Kind::Write as u32 {
            return ring::STATUS_FAILED;
        }
        let copy = || Words::copy(self.window, theirs, self.window, mine, len);
        if !self
            .layout
            .region
            .touches_log_area(request.remote, request.len)
        {
            copy();
            return ring::STATUS_OK;
        }
        match self.permissions.checked_write(sender, tag, copy) {
            Checked::Copied => ring::STATUS_OK,
            Checked::Denied => ring::STATUS_DENIED,
            Checked::Fenced => ring::STATUS_FAILED,
        }
    }
}
