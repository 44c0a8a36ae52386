//! `WindowFabric`: the [`Fabric`] of one plane of one replica over the shared window.
//!
//! Posts go into the ring to the peer (see [`crate::ring`]); the peer's responder executes them;
//! `poll` collects the outcomes the responders wrote back. `grant` and `revoke` switch this
//! replica's own [`Permissions`], which its own responder enforces.
//!
//! # Invariants
//! - Per peer: `completed <= posted <= completed + RING_DEPTH` (modulo the 16-bit count), and
//!   `wr_ids[c % RING_DEPTH]` is the id of outstanding request `c`.
//! - A connection that saw `Denied` or `Failed` accepts no post until `reconnect` (rule 6).
//! - Outcomes of an older generation are never reported (rule 7).

use mu_nostd::config::REPLICAS_MAX;
use mu_nostd::{check_post, Completion, Fabric, Op, PostError, ReplicaId, Status};

use crate::permissions::Permissions;
use crate::ring::{self, Count, Kind, Request, Ring, RING_DEPTH};
use crate::telemetry;
use crate::window::{Plane, WindowLayout};
use crate::words::Words;

const PEERS: usize = REPLICAS_MAX as usize;

/// This side of the connection to one peer.
#[derive(Clone, Copy)]
struct Connection {
    generation: u16,
    posted: u16,
    completed: u16,
    broken: bool,
    wr_ids: [u64; RING_DEPTH as usize],
}

impl Connection {
    const NEW: Connection = Connection {
        generation: 0,
        posted: 0,
        completed: 0,
        broken: false,
        wr_ids: [0; RING_DEPTH as usize],
    };

    fn outstanding(&self) -> u32 {
        let outstanding = u32::from(self.posted.wrapping_sub(self.completed));
        assert!(outstanding <= RING_DEPTH);
        outstanding
    }
}

/// One plane's fabric over the shared window.
pub struct WindowFabric<'w> {
    window: Words<'w>,
    layout: WindowLayout,
    me: ReplicaId,
    plane: Plane,
    permissions: &'w Permissions,
    connections: [Connection; PEERS],
    /// The peer `poll` looks at first, rotated so that one busy peer cannot starve the others.
    first: usize,
}

impl<'w> WindowFabric<'w> {
    /// The fabric of replica `me`'s `plane`; `permissions` are `me`'s own. Resets `me`'s side
    /// of every ring of this plane, so it must run before `me` posts anything.
    pub fn new(
        window: Words<'w>,
        layout: WindowLayout,
        me: ReplicaId,
        plane: Plane,
        permissions: &'w Permissions,
    ) -> WindowFabric<'w> {
        assert!(me < layout.replica_count);
        assert!(window.len() as u64 >= layout.bytes);
        let fabric = WindowFabric {
            window,
            layout,
            me,
            plane,
            permissions,
            connections: [Connection::NEW; PEERS],
            first: 0,
        };
        for peer in fabric.peers() {
            fabric.ring(peer).set_posted(Count {
                generation: 0,
                count: 0,
            });
        }
        fabric
    }

    fn peers(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        (0..self.layout.replica_count).filter(move |&p| p != self.me)
    }

    fn ring(&self, peer: ReplicaId) -> Ring<'w> {
        Ring::new(self.window, self.layout.ring(self.me, peer, self.plane))
    }

    fn own_region(&self) -> usize {
        self.layout.region(self.me) as usize
    }

    fn post(&mut self, peer: ReplicaId, request: Request, wr_id: u64) -> Result<(), PostError> {
        // Rule 13. The background plane never writes a log, so only replication rings are
        // fenced at a revoke.
        let op = if request.kind == Kind::Write as u32 {
            Op::Write
        } else {
            Op::Read
        };
        let range = (request.local, request.remote, request.len);
        check_post(&self.layout.region, self.me, self.plane, op, peer, range)?;
        let ring = self.ring(peer);
        let connection = &mut self.connections[peer as usize];
        if connection.broken {
            return Err(PostError::Broken);
        }
        if connection.outstanding() == RING_DEPTH {
            return Err(PostError::Busy);
        }
        let tag = Count {
            generation: connection.generation,
            count: connection.posted,
        };
        connection.wr_ids[(u32::from(tag.count) % RING_DEPTH) as usize] = wr_id;
        connection.posted = connection.posted.wrapping_add(1);
        ring.write_entry(tag, request);
        ring.set_posted(Count {
            generation: connection.generation,
            count: connection.posted,
        });
        Ok(())
    }

    /// Moves the outcomes `peer`'s responder reported into `out`; returns how many.
    fn collect(&mut self, peer: ReplicaId, out: &mut [Completion]) -> usize {
        let ring = self.ring(peer);
        let connection = &mut self.connections[peer as usize];
        if connection.outstanding() == 0 {
            return 0;
        }
        let Some(served) = ring.served() else {
            return 0;
        };
        if served.generation != connection.generation {
            return 0; // Still the previous generation's, or not yet reset.
        }
        let Some(ready) = ring::distance(connection.completed, served.count) else {
            return 0;
        };
        let ready = ready.min(connection.outstanding()) as usize;
        let mut filled = 0;
        while filled < ready.min(out.len()) {
            let count = connection.completed;
            let status = match ring.status(count) {
                ring::STATUS_OK => Status::Ok,
                ring::STATUS_DENIED => Status::Denied,
                _ => Status::Failed,
            };
            if status != Status::Ok {
                connection.broken = true;
            }
            out[filled] = Completion {
                wr_id: connection.wr_ids[(u32::from(count) % RING_DEPTH) as usize],
                status,
            };
            connection.completed = count.wrapping_add(1);
            filled += 1;
        }
        filled
    }
}

impl Fabric for WindowFabric<'_> {
    fn write(
        &mut self,
        peer: ReplicaId,
        local_offset: u32,
        remote_offset: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<(), PostError> {
        let request = Request {
            kind: Kind::Write as u32,
            local: local_offset,
            remote: remote_offset,
            len,
        };
        self.post(peer, request, wr_id)
    }

    fn read(
        &mut self,
        peer: ReplicaId,
        remote_offset: u32,
        local_offset: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<(), PostError> {
        let request = Request {
            kind: Kind::Read as u32,
            local: local_offset,
            remote: remote_offset,
            len,
        };
        self.post(peer, request, wr_id)
    }

    fn poll(&mut self, completions: &mut [Completion]) -> usize {
        let n = self.layout.replica_count as usize;
        let mut filled = 0;
        for step in 0..n {
            let peer = ((self.first + step) % n) as ReplicaId;
            if peer != self.me {
                filled += self.collect(peer, &mut completions[filled..]);
            }
        }
        self.first = (self.first + 1) % n;
        assert!(filled <= completions.len());
        filled
    }

    fn grant(&mut self, peer: ReplicaId) {
        if peer >= self.layout.replica_count || peer == self.me {
            return; // Rule 13: no other replica of the cluster, nothing to grant.
        }
        self.permissions.grant(peer);
    }

    fn revoke(&mut self, peer: ReplicaId) {
        if peer >= self.layout.replica_count || peer == self.me {
            return; // Nobody else can hold a grant under that id.
        }
        // Only the replication plane carries log writes (see `post`): fence its ring.
        let ring = Ring::new(
            self.window,
            self.layout.ring(peer, self.me, Plane::Replication),
        );
        let posted = ring.posted().unwrap_or(Count {
            generation: 0,
            count: 0,
        });
        self.permissions.revoke(peer, posted);
    }

    fn reconnect(&mut self, peer: ReplicaId) -> Result<(), PostError> {
        if peer >= self.layout.replica_count || peer == self.me {
            return Err(PostError::NoSuchPeer);
        }
        let ring = self.ring(peer);
        let connection = &mut self.connections[peer as usize];
        *connection = Connection {
            generation: Count::next_generation(connection.generation),
            ..Connection::NEW
        };
        ring.set_posted(Count {
            generation: connection.generation,
            count: 0,
        });
        Ok(())
    }

    fn load(&self, offset: u32, buf: &mut [u8]) {
        assert!(offset as usize + buf.len() <= self.layout.region.region_bytes as usize);
        self.window.load(self.own_region() + offset as usize, buf);
    }

    fn store(&mut self, offset: u32, bytes: &[u8]) {
        assert!(offset as usize + bytes.len() <= self.layout.region.region_bytes as usize);
        self.window
            .store(self.own_region() + offset as usize, bytes);
    }

    /// The supervisor's word (see [`crate::telemetry::control::LIVES`]): it marks a life
    /// ended once the peer's VM or board certainly stopped; a stopped or slow peer is never
    /// marked.
    fn ended_life(&self, peer: ReplicaId) -> Option<u32> {
        if peer >= self.layout.replica_count {
            return None;
        }
        let (life, ended) = telemetry::life(self.window, peer);
        ended.then_some(life)
    }
}
