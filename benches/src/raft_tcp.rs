//! The peer as a user would deploy it: raft-rs nodes on threads of their own, talking over
//! loopback TCP.
//!
//! The nodes are [`crate::raft_peer`]'s (same configuration, `MemStorage`, state machine and
//! `Ready` handling), but each runs its own loop on its own thread and sends its messages to the
//! others over TCP: one loopback connection per pair of nodes, `TCP_NODELAY`, each message framed
//! as its length (4 bytes, little endian) followed by raft's own protobuf encoding; the messages
//! a `Ready` releases together go to each peer in one `write`. Against the in-memory peer this
//! adds what a deployment on one host pays: encoding and decoding, system calls, the kernel's
//! loopback path, and waking the thread a message is for.
//!
//! Node threads block in `poll(2)` until a connection is readable rather than spin: a run has
//! more node threads (3 or 5) than the two cores it pins them to, and a spinning node would hold
//! a core the node a message is for needs; blocking is also how a deployed transport waits. Node
//! 1 runs where Mu's leader runs ([`Placement::leader_core`]), the others share
//! [`Placement::others_core`], where Mu's followers run.
//!
//! [`serial_latency`]: node 1 campaigns (nothing ticks, so no election disturbs a run), then
//! proposes one command, handles its connections until it applies that command from its
//! committed entries, records the TSC cycles in between, waits (untimed) until every node has
//! applied it, and repeats.
//!
//! # Invariants
//!
//! Checked and reported as errors rather than panics:
//! - every node applies commands exactly in proposal order ([`crate::raft_peer`]'s check);
//! - a run ends with every node having applied every proposal, with the same count and digest;
//! - a connection that closes, fails, or carries a malformed frame before the leader has
//!   declared the run over fails the run; every thread is joined and its connections closed
//!   whatever happened (a node that fails or panics closes its connections, which ends the
//!   others);
//! - no snapshot is ever needed: each node compacts its storage only below what it applied, and
//!   the leader only below what it knows every node holds.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Instant;

use hdrhistogram::Histogram;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use protobuf::Message as _;
use raft::eraftpb::Message;
use runtime_linux::clock::cycles_start;

use crate::latency::{pin, Placement, STALL_LIMIT};
use crate::raft_peer::{check_shape, Node, COMPACT_EVERY, LEADER};

/// Bytes of a frame's length prefix.
const LEN_BYTES: usize = 4;
/// The longest frame accepted: raft's messages stay near `max_size_per_msg` (1 MiB); anything
/// far beyond it is a corrupt stream, not a message.
const MAX_FRAME: usize = 64 << 20;
/// Initial size of each connection's receive buffer; it grows to the largest frame seen.
const READ_BUFFER: usize = 64 << 10;
/// Milliseconds node 1 sleeps in `poll` before it looks at its deadline again.
const WAIT_MS: u8 = 100;

/// Where the node threads ran, for the report.
pub fn describe(placement: Placement) -> String {
    match (placement.leader_core, placement.others_core) {
        (Some(l), Some(o)) => {
            format!("node 1's thread pinned to core {l}, the other nodes' threads sharing core {o}")
        }
        _ => "node threads not pinned (fewer than two cores)".into(),
    }
}

/// Serial propose-to-apply latency at node 1 of a raft-rs cluster of `nodes` threads over
/// loopback TCP, in TSC cycles: `warmup` unrecorded commands, then `samples` recorded ones, each
/// `payload` bytes.
pub fn serial_latency(
    nodes: usize,
    payload: usize,
    warmup: usize,
    samples: usize,
    placement: Placement,
) -> Result<Histogram<u64>, String> {
    check_shape(nodes, payload)?;
    let mut histogram =
        Histogram::new_with_bounds(1, 1 << 40, 3).map_err(|e| format!("latency histogram: {e}"))?;
    let endpoints = connect(nodes)?;
    let shared = Shared {
        applied: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
        over: AtomicBool::new(false),
    };
    let shared = &shared;
    // Each thread owns its node's connections, so whichever way a thread ends, its sockets are
    // closed when it does; the scope joins every thread before this function looks at results.
    let outcomes: Vec<Result<Tally, String>> = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(nodes);
        let mut endpoints = endpoints.into_iter();
        let histogram = &mut histogram;
        if let Some(endpoint) = endpoints.next() {
            handles.push(spawn(scope, 1, placement.leader_core, move || {
                lead(endpoint, shared, payload, warmup, samples, histogram)
            }));
        }
        for (id, endpoint) in (2..).zip(endpoints) {
            handles.push(spawn(scope, id, placement.others_core, move || {
                follow(endpoint, shared)
            }));
        }
        (1..)
            .zip(handles)
            .map(|(id, spawned)| {
                spawned?
                    .join()
                    .unwrap_or_else(|_| Err(format!("raft-tcp: node {id} panicked")))
            })
            .collect()
    });
    let errors: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().err().map(String::as_str))
        .collect();
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    let tallies: Vec<Tally> = outcomes.into_iter().flatten().collect();
    let proposed = (warmup + samples) as u64;
    for (id, tally) in (1..).zip(&tallies) {
        if tally.last_seq != proposed || *tally != tallies[LEADER] {
            return Err(format!(
                "raft-tcp: {proposed} commands proposed; node {id} applied {} (last {}, digest \
                 {:#x}), node 1 {} (digest {:#x})",
                tally.commands,
                tally.last_seq,
                tally.digest,
                tallies[LEADER].commands,
                tallies[LEADER].digest
            ));
        }
    }
    Ok(histogram)
}

/// Starts node `id`'s thread, pinned to `core`.
fn spawn<'scope>(
    scope: &'scope Scope<'scope, '_>,
    id: u64,
    core: Option<usize>,
    run: impl FnOnce() -> Result<Tally, String> + Send + 'scope,
) -> Result<ScopedJoinHandle<'scope, Result<Tally, String>>, String> {
    std::thread::Builder::new()
        .name(format!("raft-tcp-{id}"))
        .spawn_scoped(scope, move || {
            pin(core)?;
            run()
        })
        .map_err(|e| format!("raft-tcp: node {id} thread: {e}"))
}

/// What one node applied, compared across nodes after the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tally {
    commands: u64,
    last_seq: u64,
    digest: u64,
}

/// What the threads share besides their connections; only node 1's waits between samples and
/// the end of the run read it, never the measured path.
struct Shared {
    /// `applied[i]`: the last raft index node id `i + 1` applied, published after the messages
    /// that applying followed were written.
    applied: Vec<AtomicU64>,
    /// Set by node 1 once every node applied every command: from then on a closed connection
    /// is the end of the run, not a failure.
    over: AtomicBool,
}

/// A connection to one other node.
struct Link {
    /// The node at the other end.
    peer: u64,
    stream: TcpStream,
    /// Received bytes: `input[start..end]` is not yet decoded.
    input: Vec<u8>,
    start: usize,
    end: usize,
    /// Frames encoded for the peer and not yet written.
    output: Vec<u8>,
}

impl Link {
    fn new(peer: u64, stream: TcpStream) -> Result<Self, String> {
        stream
            .set_nodelay(true)
            .map_err(|e| format!("raft-tcp: TCP_NODELAY towards node {peer}: {e}"))?;
        Ok(Link {
            peer,
            stream,
            input: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
            output: Vec::new(),
        })
    }

    /// One `read`; returns false at the end of the stream.
    fn fill(&mut self) -> std::io::Result<bool> {
        loop {
            match self.stream.read(&mut self.input[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next whole message received, if there is one; makes room for the rest of a partial
    /// frame.
    fn next_message(&mut self) -> Result<Option<Message>, String> {
        let buffered = &self.input[self.start..self.end];
        let need = match buffered.get(..LEN_BYTES) {
            Some(prefix) => {
                let len = u32::from_le_bytes(prefix.try_into().expect("LEN_BYTES is 4")) as usize;
                if len > MAX_FRAME {
                    return Err(format!(
                        "raft-tcp: a {len}-byte frame from node {}; the limit is {MAX_FRAME}",
                        self.peer
                    ));
                }
                if let Some(frame) = buffered.get(LEN_BYTES..LEN_BYTES + len) {
                    let message = Message::parse_from_bytes(frame).map_err(|e| {
                        format!("raft-tcp: a malformed message from node {}: {e}", self.peer)
                    })?;
                    self.start += LEN_BYTES + len;
                    if self.start == self.end {
                        (self.start, self.end) = (0, 0);
                    }
                    return Ok(Some(message));
                }
                LEN_BYTES + len
            }
            None => LEN_BYTES,
        };
        if self.start + need > self.input.len() {
            self.input.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if need > self.input.len() {
                self.input.resize(need, 0);
            }
        }
        Ok(None)
    }

    /// Appends `message`'s frame to what goes out next.
    fn encode(&mut self, message: &Message) -> Result<(), String> {
        let at = self.output.len();
        self.output.extend_from_slice(&[0; LEN_BYTES]);
        message
            .write_to_vec(&mut self.output)
            .map_err(|e| format!("raft-tcp: encoding a message to node {}: {e}", self.peer))?;
        let len = self.output.len() - at - LEN_BYTES;
        if len > MAX_FRAME {
            return Err(format!(
                "raft-tcp: a {len}-byte message to node {}; the limit is {MAX_FRAME}",
                self.peer
            ));
        }
        self.output[at..at + LEN_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.output.is_empty() {
            return Ok(());
        }
        self.stream
            .write_all(&self.output)
            .map_err(|e| format!("raft-tcp: sending to node {}: {e}", self.peer))?;
        self.output.clear();
        Ok(())
    }
}

/// One node and its connections, run by one thread.
struct Endpoint {
    node: Node,
    links: Vec<Link>,
    /// Applied index at this node's last compaction.
    compacted_at: u64,
}

/// Builds node `i + 1` with its end of a connection to every other node.
fn connect(nodes: usize) -> Result<Vec<Endpoint>, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("raft-tcp: listening on loopback: {e}"))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("raft-tcp: listener address: {e}"))?;
    let mut links: Vec<Vec<Link>> = (0..nodes).map(|_| Vec::new()).collect();
    for a in 0..nodes {
        for b in a + 1..nodes {
            let pair = |e: std::io::Error| {
                format!(
                    "raft-tcp: connecting node {} and node {}: {e}",
                    a + 1,
                    b + 1
                )
            };
            let outgoing = TcpStream::connect(address).map_err(pair)?;
            let (incoming, from) = listener.accept().map_err(pair)?;
            // The port is open to the whole host: make sure this is the connection just made.
            if from != outgoing.local_addr().map_err(pair)? {
                return Err(format!(
                    "raft-tcp: {from} connected to the cluster's listener"
                ));
            }
            links[a].push(Link::new(b as u64 + 1, outgoing)?);
            links[b].push(Link::new(a as u64 + 1, incoming)?);
        }
    }
    (1..)
        .zip(links)
        .map(|(id, links)| {
            Ok(Endpoint {
                node: Node::new(id, nodes)?,
                links,
                compacted_at: 0,
            })
        })
        .collect()
}

impl Endpoint {
    fn id(&self) -> u64 {
        self.node.id()
    }

    fn tally(&self) -> Tally {
        Tally {
            commands: self.node.commands,
            last_seq: self.node.last_seq,
            digest: self.node.digest,
        }
    }

    /// Waits at most `timeout` for connections to become readable (or closed); their indices.
    fn wait(&self, timeout: PollTimeout) -> Result<Vec<usize>, String> {
        let mut fds: Vec<PollFd> = self
            .links
            .iter()
            .map(|l| PollFd::new(l.stream.as_fd(), PollFlags::POLLIN))
            .collect();
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) => {}
            // A signal: nothing is known to be readable, so the caller simply waits again.
            Err(nix::errno::Errno::EINTR) => return Ok(Vec::new()),
            Err(e) => return Err(format!("raft-tcp: node {} poll: {e}", self.id())),
        }
        Ok(fds
            .iter()
            .enumerate()
            .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(index, _)| index)
            .collect())
    }

    /// Reads connection `index` once and steps every whole message received; returns false at
    /// the end of its stream.
    fn receive(&mut self, index: usize) -> Result<bool, String> {
        let id = self.id();
        let link = &mut self.links[index];
        let open = link
            .fill()
            .map_err(|e| format!("raft-tcp: node {id} reading from node {}: {e}", link.peer))?;
        while let Some(message) = link.next_message()? {
            self.node
                .raw
                .step(message)
                .map_err(|e| format!("raft-tcp: node {id} step: {e}"))?;
        }
        Ok(open)
    }

    /// Reads every connection `wait` reported and handles the `Ready` that follows; an error
    /// when a connection ended before the run was over.
    fn take(&mut self, readable: &[usize], shared: &Shared) -> Result<bool, String> {
        let mut open = true;
        for &index in readable {
            if !self.receive(index)? {
                if !shared.over.load(Ordering::Acquire) {
                    return Err(format!(
                        "raft-tcp: node {} closed its connection to node {} before the run \
                         was over",
                        self.links[index].peer,
                        self.id()
                    ));
                }
                open = false;
            }
        }
        self.handle_ready(shared)?;
        Ok(open)
    }

    /// Handles a `Ready` if there is one, writing each batch of messages as soon as raft
    /// releases it, then publishes how far this node applied.
    fn handle_ready(&mut self, shared: &Shared) -> Result<(), String> {
        if !self.node.raw.has_ready() {
            return Ok(());
        }
        let links = &mut self.links;
        self.node
            .handle_ready(&mut |messages| send(messages, links))?;
        shared.applied[self.id() as usize - 1].store(self.node.applied_index, Ordering::Release);
        Ok(())
    }

    /// Handles connections until `done`, failing after [`STALL_LIMIT`].
    fn drive_until(
        &mut self,
        shared: &Shared,
        what: &str,
        done: impl Fn(&Node) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + STALL_LIMIT;
        loop {
            self.handle_ready(shared)?;
            if done(&self.node) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("raft-tcp {what}: not done after {:?}", STALL_LIMIT));
            }
            let readable = self.wait(PollTimeout::from(WAIT_MS))?;
            self.take(&readable, shared)?;
        }
    }

    /// Node 1, between samples: waits until every node applied all node 1 has, then takes
    /// what they sent before they said so (acknowledgements of the commit), so that none of it
    /// is stepped inside the next sample.
    fn settle(&mut self, shared: &Shared) -> Result<(), String> {
        let deadline = Instant::now() + STALL_LIMIT;
        loop {
            let applied = self.node.applied_index;
            let everywhere = shared
                .applied
                .iter()
                .all(|a| a.load(Ordering::Acquire) >= applied);
            let readable = self.wait(PollTimeout::ZERO)?;
            if everywhere
                && readable.is_empty()
                && !self.node.raw.has_ready()
                && self.node.raw.raft.raft_log.last_index() == applied
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "raft-tcp: nodes still behind node 1's applied index {applied} after {:?}",
                    STALL_LIMIT
                ));
            }
            if readable.is_empty() {
                // The followers are applying on their own core(s); this core has nothing to do.
                std::thread::yield_now();
            }
            self.take(&readable, shared)?;
        }
    }

    /// Node 1: compacts below what it applied and knows every node holds, once it applied
    /// another [`COMPACT_EVERY`] entries.
    fn compact_as_leader(&mut self) -> Result<(), String> {
        if self.node.applied_index < self.compacted_at + COMPACT_EVERY {
            return Ok(());
        }
        let matched = self.node.raw.raft.prs().iter().map(|(_, p)| p.matched);
        let floor = matched.fold(self.node.applied_index, u64::min);
        self.node.compact(floor)?;
        self.compacted_at = self.node.applied_index;
        Ok(())
    }

    /// Another node: compacts below what it applied, which it never reads again (the leader's
    /// appends below its commit index are answered without looking at the log).
    fn compact_as_follower(&mut self) -> Result<(), String> {
        if self.node.applied_index < self.compacted_at + COMPACT_EVERY {
            return Ok(());
        }
        self.node.compact(self.node.applied_index)?;
        self.compacted_at = self.node.applied_index;
        Ok(())
    }

    /// Node 1, after the run: closes its sending side of every connection and reads each to its
    /// end, which comes once that node has seen the run over and closed its own.
    fn close(&mut self) -> Result<(), String> {
        let id = self.id();
        for link in &self.links {
            link.stream.shutdown(Shutdown::Write).map_err(|e| {
                format!(
                    "raft-tcp: node {id} closing towards node {}: {e}",
                    link.peer
                )
            })?;
        }
        for link in &mut self.links {
            link.stream
                .set_read_timeout(Some(STALL_LIMIT))
                .map_err(|e| format!("raft-tcp: node {id} read timeout: {e}"))?;
            // What still arrives answers the last commit, which every node has applied.
            while link.fill().map_err(|e| {
                format!(
                    "raft-tcp: node {id} waiting for node {} to close: {e}",
                    link.peer
                )
            })? {
                while link.next_message()?.is_some() {}
            }
            if link.start != link.end {
                return Err(format!(
                    "raft-tcp: node {} closed in the middle of a frame",
                    link.peer
                ));
            }
        }
        Ok(())
    }
}

/// Node 1's thread: elects itself, runs the samples, checks and ends the run.
fn lead(
    mut endpoint: Endpoint,
    shared: &Shared,
    payload: usize,
    warmup: usize,
    samples: usize,
    histogram: &mut Histogram<u64>,
) -> Result<Tally, String> {
    endpoint
        .node
        .raw
        .campaign()
        .map_err(|e| format!("raft-tcp campaign: {e}"))?;
    endpoint.drive_until(shared, "election", Node::leads)?;
    // Let the leader's no-op entry reach every node so that measurements start from rest.
    endpoint.settle(shared)?;
    let mut command = vec![0; payload];
    for seq in 1..=(warmup + samples) as u64 {
        let start = cycles_start();
        endpoint.node.propose(&mut command, seq)?;
        endpoint.drive_until(shared, "serial command", |n| n.last_seq >= seq)?;
        if seq > warmup as u64 {
            histogram.saturating_record(endpoint.node.applied_at.saturating_sub(start).max(1));
        }
        endpoint.settle(shared)?;
        endpoint.compact_as_leader()?;
    }
    shared.over.store(true, Ordering::Release);
    endpoint.close()?;
    Ok(endpoint.tally())
}

/// Another node's thread: handles its connections until the run is over and a connection
/// closes.
fn follow(mut endpoint: Endpoint, shared: &Shared) -> Result<Tally, String> {
    loop {
        let readable = endpoint.wait(PollTimeout::NONE)?;
        if !endpoint.take(&readable, shared)? {
            return Ok(endpoint.tally());
        }
        endpoint.compact_as_follower()?;
    }
}

/// Encodes each message for its node, then writes each node's frames in one `write`.
fn send(messages: Vec<Message>, links: &mut [Link]) -> Result<(), String> {
    for message in &messages {
        let link = links
            .iter_mut()
            .find(|l| l.peer == message.to)
            .ok_or_else(|| format!("raft-tcp: message to unknown node {}", message.to))?;
        link.encode(message)?;
    }
    links.iter_mut().try_for_each(Link::flush)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNPINNED: Placement = Placement {
        leader_core: None,
        others_core: None,
    };

    #[test]
    fn three_nodes_agree_over_tcp() {
        let histogram = serial_latency(3, 64, 20, 300, UNPINNED).expect("3-node TCP run");
        assert_eq!(histogram.len(), 300);
        assert!(histogram.min() > 0);
    }

    #[test]
    fn five_nodes_and_large_commands_work() {
        let histogram = serial_latency(5, 4096, 10, 100, UNPINNED).expect("5-node TCP run");
        assert_eq!(histogram.len(), 100);
    }

    #[test]
    fn long_runs_compact_and_stay_consistent() {
        let commands = 2 * COMPACT_EVERY as usize + 100;
        let histogram = serial_latency(3, 8, 0, commands, UNPINNED).expect("long TCP run");
        assert_eq!(histogram.len(), commands as u64);
    }

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
        let mut writer =
            TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (reader, _) = listener.accept().expect("accept");
        let mut sender = Link::new(2, writer.try_clone().expect("clone")).expect("link");
        let mut receiver = Link::new(1, reader).expect("link");
        let mut message = Message {
            to: 2,
            commit: 7,
            ..Default::default()
        };
        message.mut_entries().push(raft::eraftpb::Entry {
            data: vec![5; 3 * READ_BUFFER].into(),
            ..Default::default()
        });
        sender.encode(&message).expect("encode");
        for chunk in sender.output.chunks(1000) {
            writer.write_all(chunk).expect("write");
        }
        drop((sender, writer));
        let mut received = Vec::new();
        while receiver.fill().expect("read") {
            while let Some(m) = receiver.next_message().expect("decode") {
                received.push(m);
            }
        }
        assert_eq!(received, vec![message]);
    }

    #[test]
    fn an_oversized_or_malformed_frame_is_an_error() {
        for frame in [
            (MAX_FRAME as u32 + 1).to_le_bytes().to_vec(),
            [&4u32.to_le_bytes()[..], &[0xff; 4]].concat(),
        ] {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
            let mut writer =
                TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
            let mut link = Link::new(2, listener.accept().expect("accept").0).expect("link");
            writer.write_all(&frame).expect("write");
            drop(writer);
            let mut decoded = Ok(None);
            while decoded.is_ok() && link.fill().expect("read") {
                decoded = link.next_message();
            }
            assert!(decoded.is_err(), "{frame:?} decoded as {decoded:?}");
        }
    }

    #[test]
    fn a_connection_closed_before_the_run_is_over_is_an_error() {
        let shared = Shared {
            applied: (0..2).map(|_| AtomicU64::new(0)).collect(),
            over: AtomicBool::new(false),
        };
        let mut endpoints = connect(2).expect("connect");
        drop(endpoints.pop());
        let mut first = endpoints.pop().expect("node 1");
        let readable = first.wait(PollTimeout::from(WAIT_MS)).expect("poll");
        assert_eq!(readable, vec![0]);
        let closed = first.take(&readable, &shared);
        assert!(closed.is_err(), "{closed:?}");
        shared.over.store(true, Ordering::Release);
        assert_eq!(first.take(&readable, &shared), Ok(false));
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(serial_latency(3, 7, 0, 1, UNPINNED).is_err());
        assert!(serial_latency(0, 64, 0, 1, UNPINNED).is_err());
    }
}
