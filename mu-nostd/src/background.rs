//! The background plane: heartbeat, pull-score failure detection, leader election and permission
//! management. It runs beside the replication plane (its own fabric connections, possibly its
//! own core) and talks to it only through [`Shared`].
//!
//! Failure detection: the pull score (see `detector`) decides when nothing is certain. Each
//! read returns a peer's heartbeat and its applied position together, and either moving counts:
//! a leader that commits is alive even while its background plane waits for a core. A peer
//! whose fabric reports that the life this replica trusts (the incarnation in its region header)
//! ended is failed at once (a notice for an older life is ignored: the peer restarted). A peer
//! declared failed by suspicion that turns out alive within a detection window makes this
//! replica more patient (unchanged reads per point double, up to `PATIENCE_MAX`); patience
//! halves again after `PATIENCE_DECAY_READS` read periods without such a mistake.
//!
//! Fate sharing: a replica whose replication plane has not been polled for `fate_ticks` (times
//! the patience) stops its heartbeat, so that the peers fail it over. It counts itself out of
//! the election only once the stop has lasted as long as the quickest peer needs to declare it
//! failed; a stall that ends sooner makes it more patient (its host is noisy).
//!
//! Refusal: a replica that finds so many peers running another layout or configuration that no
//! quorum can include it says so in its status and never elects anybody; the runtime stops it.
//!
//! Election: the leader is the lowest id among the voters considered alive (this replica counts
//! itself alive while its heartbeat runs). A replica that restarted is recovering, not a voter,
//! until a leader admits it (see `tenure::admission`); its heartbeat says which, so that the
//! others never wait for it to lead; a replica just admitted bids only once every live peer
//! below it has shown its voter flag in a heartbeat read since (reads, not time: a plane that
//! slept through its read timeout would bid against the leader that admitted it). While no
//! replica is a voter (a cluster never formed), the lowest id leads once every replica is
//! alive and a heartbeat of each says so, and its tenure forms the cluster. A replica starts a
//! tenure only while it considers a majority alive, itself included (a tenure under way goes
//! on: its writes tell), and takes its
//! own log back from a holder that may still live (one only suspected, not certainly dead) only
//! once a majority names it leader: every heartbeat carries its replica's leader view (a
//! pre-vote, as in Raft). Safety never depends on the election; permissions and Paxos carry it.
//!
//! Permissions, owner side: a requester writes a new number into its request record in this
//! replica's background area. This replica serves one request at a time, and only from the
//! replica it considers leader (so that two would-be leaders do not steal grants from each other
//! forever). Serving is: stand down its own replication plane if it leads, revoke the current
//! holder, revoke the requester too (fencing any write of its earlier tenures still in flight),
//! grant the requester, write an ack with the request number into the requester's background
//! area.
//!
//! Permissions, requester side: when this replica considers itself leader it starts a tenure:
//! a new request number, written to every peer; it grants itself (revoking the current holder of
//! its own log); it publishes to the replication plane the tenure and the set of peers that
//! acked so far. The replication plane proceeds with a majority and takes late grantors in as
//! they ack. A tenure ends when another replica is considered leader, or when the replication
//! plane aborts it (a write was denied); then a new request number is used.
//!
//! # Invariants
//! - Single writer per log: `grant(j)` is called only after `revoke` of the previous holder (and
//!   after this replica's own replication plane stood down if it held its own log).
//! - Acks are written only for served request numbers; a requester counts an ack only when it
//!   carries its current request number.
//! - Every outstanding operation has a deadline; an operation past it resets the connection.
//! - Scores stay within the detector's clamp; a peer whose region header does not match is never
//!   considered alive and its requests are never served.
//! - A death notice fails a peer only when it names the life read from the peer's header.
//! - A tenure starts only while `alive_mask` holds a quorum, and, when it takes this replica's
//!   log from a holder not known dead, only while a quorum (itself included) of replicas
//!   considered alive name it leader in their last heartbeats.
//! - `1 <= patience <= PATIENCE_MAX`; a refused replica has no leader in view and no tenure.
//! - A peer's flag is `Current` only after a heartbeat read posted since this replica's
//!   admission showed it a voter, or showed its counter move past the first such read's.
//! - The election and the probes run again whenever what they read may have changed: a peer's
//!   state changes only in a completion, a reconnect, a death notice, a pause discounted, the
//!   own admission (each marks both `dirty`) and the probes themselves; what the election reads
//!   of this replica is compared (`Own`); and each keeps the first tick at which one of its
//!   time terms may flip (a peer's liveliness or the warm-up; a read or a timeout due). A poll
//!   that skips them would have elected the same and posted nothing (checked in debug builds).

use crate::config::{Config, REPLICAS_MAX};
use crate::detector::PullScore;
use crate::fabric::{Fabric, Ids, PostError, ReplicaId, Status};
use crate::layout::{HeaderError, Layout, HEADER_BYTES, HEARTBEAT_READ_BYTES, RECORD_BYTES};
use crate::links::Inbox;
use crate::record;
use crate::shared::{Lead, Shared, TENURE_MASK};
use crate::wrid::{Kind, WrId};

/// What this replica knows of a peer's region header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PeerHeader {
    /// Not read yet (or the read did not complete).
    Unknown,
    /// Same layout version and configuration hash.
    Verified,
    /// The peer runs another layout or configuration: it is refused.
    Mismatch(HeaderError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Send {
    Idle,
    Due,
    InFlight { posted_at: u64 },
    Done { at: u64 },
}

/// A record this replica must deliver to a peer (a request or an ack), retried until it lands.
#[derive(Clone, Copy, Debug)]
struct Outgoing {
    value: u64,
    send: Send,
}

impl Outgoing {
    const IDLE: Outgoing = Outgoing {
        value: 0,
        send: Send::Idle,
    };

    /// Due, or in flight (and so maybe due again).
    fn pending(&self) -> bool {
        matches!(self.send, Send::Due | Send::InFlight { .. })
    }
}

/// Whether a peer's voter flag, as last read, is news since this replica was admitted (see
/// `elect`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flag {
    /// Read after the admission: it says what the peer is now.
    Current,
    /// A read posted before the admission is in flight; what it returns is old.
    Stale,
    /// No read posted since the admission has returned.
    Unread,
    /// The first read since the admission showed this heartbeat counter, without the flag; the
    /// peer's next beat says what it is now.
    Counter(u64),
}

impl Flag {
    /// After a readable heartbeat: `counter` and `voter` as read.
    fn read(self, counter: u64, voter: bool) -> Flag {
        match self {
            Flag::Stale => Flag::Unread,
            Flag::Unread if !voter => Flag::Counter(counter),
            Flag::Counter(before) if !voter && before == counter => self,
            _ => Flag::Current,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    epoch: u16,
    header: PeerHeader,
    header_read_at: Option<u64>,
    /// Its heartbeat went back or stayed unreadable: the peer restarted, maybe with another
    /// configuration, so its header is read again (a verified peer keeps its score meanwhile).
    recheck: bool,
    score: PullScore,
    /// When a read last showed its heartbeat or applied position moving (or first showed them:
    /// a peer is then alive by its score anyway, and `lively` only adds to `alive`).
    moved_at: Option<u64>,
    /// When a read last returned a readable heartbeat record.
    readable_at: Option<u64>,
    /// Its last heartbeat said its life is a voter.
    voter: bool,
    /// A heartbeat of its current life was read: `voter` and `view` are that life's.
    heard: bool,
    /// The leader its last readable heartbeat named.
    view: Option<ReplicaId>,
    /// Whether `voter` is news since this replica was admitted.
    flag: Flag,
    /// The life its verified header names.
    life: Option<u32>,
    /// When suspicion (not a death notice) last declared this life failed.
    suspected_at: Option<u64>,
    /// The life whose death this replica took (counted once).
    dead_life: Option<u32>,
    heartbeat_read_at: Option<u64>,
    next_read_at: u64,
    /// The request number this replica last served for the peer.
    served: u64,
    /// The last request record value seen from the peer (number and attempt).
    seen: u64,
    ack: Outgoing,
    request: Outgoing,
}

impl Peer {
    /// Alive, as far as this replica's detector tells.
    fn counts_alive(&self) -> bool {
        self.header == PeerHeader::Verified && self.score.alive()
    }

    /// A voter, as its last heartbeat said.
    fn counts_voter(&self) -> bool {
        self.header == PeerHeader::Verified && self.voter
    }

    const NEW: Peer = Peer {
        epoch: 0,
        header: PeerHeader::Unknown,
        header_read_at: None,
        recheck: false,
        score: PullScore::unknown(),
        moved_at: None,
        readable_at: None,
        voter: false,
        heard: false,
        view: None,
        flag: Flag::Current,
        life: None,
        suspected_at: None,
        dead_life: None,
        heartbeat_read_at: None,
        next_read_at: 0,
        served: 0,
        seen: 0,
        ack: Outgoing::IDLE,
        request: Outgoing::IDLE,
    };
}

/// A snapshot of the background plane, for runtimes and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BackgroundStatus {
    /// This replica's heartbeat counter.
    pub heartbeat: u64,
    /// True when fate sharing stopped the heartbeat.
    pub heartbeat_stopped: bool,
    /// Who this replica considers leader.
    pub leader: Option<ReplicaId>,
    /// Who it considers alive (bit per id).
    pub alive: u8,
    /// Who may lead, itself included (bit per id): voters not installing a snapshot.
    pub voters: u8,
    /// Who may write its log (itself while it leads).
    pub holder: Option<ReplicaId>,
    /// Its tenure, while it leads.
    pub tenure: Option<u32>,
    /// Unchanged heartbeat reads that cost a peer one point (1 = the paper's detector).
    pub patience: u8,
    /// Peers failed at once because their fabric reported their life ended.
    pub deaths: u32,
    /// Peers declared failed by suspicion that turned out alive.
    pub false_suspicions: u32,
    /// So many peers run another layout or configuration that no quorum can include this
    /// replica: it takes no part, and should be restarted with the right configuration.
    pub refused: bool,
    /// Peers it refuses (bit per id): they run another layout or configuration.
    pub refused_peers: u8,
    /// Permission switches it made: grants of its log to a new tenure (each one revokes the
    /// previous holder first).
    pub permission_switches: u32,
}

const ZERO_CHUNK_BYTES: usize = 256;
/// Read timeouts a peer's heartbeat may stay unreadable (torn) before reads count as misses.
const UNREADABLE_TIMEOUTS: u64 = 4;
const ZERO_CHUNKS_PER_POLL: u32 = 256;
/// The top bit of a published heartbeat: this life of the replica is a voter and may lead (it
/// is not installing a snapshot).
const HEARTBEAT_VOTER: u64 = 1 << 63;
/// Bits 60-62 of a published heartbeat: the replica's leader view, 0 for none, else the id + 1.
const HEARTBEAT_VIEW_SHIFT: u32 = 60;
/// The counter below the flags.
const HEARTBEAT_COUNTER: u64 = (1 << HEARTBEAT_VIEW_SHIFT) - 1;
// The largest view, the last id + 1, is REPLICAS_MAX.
const _: () = assert!((REPLICAS_MAX as u64) < 1 << 3, "a view fits in 3 bits");
/// Most unchanged reads per point of a peer's score.
pub const PATIENCE_MAX: u8 = 8;
/// Read periods without a false suspicion after which patience halves: 30 s at the busy-polling
/// read period of 20 µs, 25 minutes at the Linux runtime's shared-polling 1 ms. A host that
/// starved a live peer once does it again:
/// decaying within seconds (50,000 reads, 10 s, before) gave a busy neighbour a false suspicion,
/// and at times a new tenure, every 10 s.
const PATIENCE_DECAY_READS: u64 = 1_500_000;

/// The heartbeat bits that carry `view`.
fn encode_view(view: Option<ReplicaId>) -> u64 {
    view.map_or(0, |leader| (leader as u64 + 1) << HEARTBEAT_VIEW_SHIFT)
}

/// The leader view a heartbeat names (`None` for a value no replica id maps to).
fn decode_view(beat: u64) -> Option<ReplicaId> {
    let field = (beat & !HEARTBEAT_VOTER) >> HEARTBEAT_VIEW_SHIFT;
    field.checked_sub(1).map(|id| id as ReplicaId)
}

/// True when this life of the replica is a voter: its standing record (written by the leader
/// that admitted it, or that formed the cluster) holds a ballot.
pub(crate) fn own_voter<F: Fabric>(layout: &Layout, fabric: &F) -> bool {
    let offset = layout.standing();
    let mut bytes = [0u8; RECORD_BYTES as usize];
    fabric.load(offset, &mut bytes);
    let standing = record::decode(offset, &bytes).filter(|&ballot| ballot != 0);
    // Planted defect: a restarted replica votes at once, with its empty log.
    standing.is_some() || cfg!(feature = "bug-restart-votes")
}

/// The background plane of one replica.
pub struct BackgroundPlane<'s> {
    config: Config,
    layout: Layout,
    me: ReplicaId,
    /// Every replica but this one.
    others: Ids,
    shared: &'s Shared,
    inbox: Inbox,
    /// This life's incarnation, published in the region header.
    life: u32,
    started_at: Option<u64>,
    /// Bytes of the log area zeroed so far (see `initialise_log`).
    zeroed: u32,
    heartbeat: u64,
    next_heartbeat_at: u64,
    heartbeat_stopped: bool,
    /// When the heartbeat last stopped.
    heartbeat_stopped_at: u64,
    /// Cached once true: a standing is never withdrawn within a life.
    voter: bool,
    progress_seen: u32,
    progress_seen_at: u64,
    /// When this plane was last polled (see `discount_own_pause`).
    polled_at: u64,
    patience: u8,
    /// When patience last changed.
    patience_at: u64,
    deaths: u32,
    false_suspicions: u32,
    refused: bool,
    /// Grants of the log it made (see `BackgroundStatus::permission_switches`).
    permission_switches: u32,
    peers: [Peer; REPLICAS_MAX as usize],
    leader: Option<ReplicaId>,
    holder: Option<ReplicaId>,
    granting: Option<(ReplicaId, u64)>,
    request_number: u64,
    /// Bumped when a request is posted again, so that the owner notices and acks again.
    request_attempt: u8,
    tenure: Option<u32>,
    acked: u8,
    /// The replication plane's transfer request, as this plane writes it to the donor.
    transfer_request: TransferRequest,
    /// A peer's state changed since the last election, or the last probes (see the
    /// invariants).
    dirty: Dirty,
    /// The last election, and what it read of this replica.
    elected: Elected,
    elected_own: Own,
    /// The first tick at which a probe may be due, as of the last probes.
    probe_at: u64,
}

/// What the election reads of this replica itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Own {
    alive_bit: u8,
    voter_bit: u8,
    voter: bool,
    leading: bool,
    refused: bool,
}

/// Whose inputs changed since they last ran: the election's and the probes'.
#[derive(Clone, Copy, Debug)]
struct Dirty {
    elect: bool,
    probe: bool,
}

impl Dirty {
    const ALL: Dirty = Dirty {
        elect: true,
        probe: true,
    };
}

/// What an election decided, and until when nothing of its time terms changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Elected {
    alive: u8,
    lively: u8,
    leader: Option<ReplicaId>,
    /// The first tick at which a time term of this election may flip.
    until: u64,
}

/// What the election reads of the peers (see `census`).
struct Census {
    alive: u8,
    /// Replicas that may lead, as far as this replica knows (itself included): voters whose
    /// heartbeat does not say they are recovering or installing a snapshot.
    voters: u8,
    /// Whose heartbeat or applied position moved within a read timeout (see
    /// [`crate::Shared::lively`]).
    lively: u8,
    /// The first tick at which a peer counted lively stops being so.
    lively_until: u64,
    /// A heartbeat of every peer's current life was read.
    everyone_heard: bool,
    /// Some peer's header was never read.
    header_unknown: bool,
    /// Every live peer below this replica showed its voter flag since the admission.
    settled: bool,
}

/// Where the write of the replication plane's latest transfer request stands.
#[derive(Clone, Copy, Debug, Default)]
struct TransferRequest {
    /// The sequence (see `Shared::publish_transfer_request`) of the request that landed last.
    landed: u32,
    /// The write outstanding: its sequence, its donor and when it was posted.
    in_flight: Option<(u32, ReplicaId, u64)>,
}

impl<'s> BackgroundPlane<'s> {
    /// The background plane of replica `me`; `config` must be valid (see [`crate::Replica`]).
    pub(crate) fn new(config: Config, me: ReplicaId, shared: &'s Shared) -> BackgroundPlane<'s> {
        assert!(config.validate().is_ok());
        assert!(config.contains(me));
        BackgroundPlane {
            config,
            layout: Layout::new(&config),
            me,
            others: Ids::others(config.replica_count, me),
            shared,
            inbox: Inbox::NEW,
            life: 0,
            started_at: None,
            zeroed: 0,
            heartbeat: 0,
            next_heartbeat_at: 0,
            heartbeat_stopped: false,
            heartbeat_stopped_at: 0,
            voter: false,
            progress_seen: 0,
            progress_seen_at: 0,
            polled_at: 0,
            patience: 1,
            patience_at: 0,
            deaths: 0,
            false_suspicions: 0,
            permission_switches: 0,
            refused: false,
            peers: [Peer::NEW; REPLICAS_MAX as usize],
            leader: None,
            holder: None,
            granting: None,
            request_number: 0,
            request_attempt: 0,
            tenure: None,
            acked: 0,
            transfer_request: TransferRequest::default(),
            dirty: Dirty::ALL,
            probe_at: 0,
            elected: Elected {
                alive: 0,
                lively: 0,
                leader: None,
                until: 0,
            },
            elected_own: Own {
                alive_bit: 0,
                voter_bit: 0,
                voter: false,
                leading: false,
                refused: false,
            },
        }
    }

    /// Numbers this plane's permission requests from `incarnation`'s own range, so that owners
    /// never take a restarted replica's new request for one its earlier life made. Call it once,
    /// before the first `poll`.
    pub fn begin_incarnation(&mut self, incarnation: u32) {
        assert!(self.started_at.is_none() && self.request_number == 0);
        // Request numbers are 56 bits (the record keeps a byte for the attempt); tenures are the
        // low 24 bits, so each incarnation starts a fresh block of 2^24 tenures.
        self.request_number = (incarnation as u64) << 24;
        self.life = incarnation;
    }

    /// Does one bounded round of background work at time `now`.
    pub fn poll<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        if self.started_at.is_none() {
            if !self.initialise_log(fabric) {
                return;
            }
            // Peers check this header before they trust anything in the region.
            fabric.store(0, &Layout::header(&self.config, self.life));
            self.started_at = Some(now);
            self.progress_seen_at = now;
        }
        if !self.voter && own_voter(&self.layout, fabric) {
            self.voter = true;
            self.dirty = Dirty::ALL;
            for peer in self.peers.iter_mut() {
                peer.flag = match peer.heartbeat_read_at {
                    Some(_) => Flag::Stale,
                    None => Flag::Unread,
                };
            }
        }
        self.discount_own_pause(now);
        self.drain_completions(now, fabric);
        self.take_death_notices(fabric);
        self.decay_patience(now);
        self.beat(now, fabric);
        self.probe_peers(now, fabric);
        self.elect(now);
        self.lead_or_follow(now, fabric);
        self.serve_requests(fabric);
        self.send_outgoing(now, fabric);
        self.send_transfer_request(now, fabric);
    }

    /// Peers' heartbeats could not be seen moving while this plane was not polled: a pause of
    /// its own (descheduled, stopped) must not make them look silent, or a leader back from one
    /// recycles past members that still need its log (seed 316614). Their marks move on by the
    /// gap.
    #[inline]
    fn discount_own_pause(&mut self, now: u64) {
        let gap = now.saturating_sub(self.polled_at);
        self.polled_at = now;
        if gap <= self.config.detector.read_period_ticks as u64 {
            return;
        }
        // Reads and records posted before the pause were answered meanwhile or not: their
        // deadlines move on too, or a late completion would count as the peer's miss.
        self.dirty = Dirty::ALL;
        let shift = |at: &mut Option<u64>| {
            if let Some(at) = at.as_mut() {
                *at = (*at + gap).min(now);
            }
        };
        for peer in self.peers.iter_mut() {
            shift(&mut peer.moved_at);
            shift(&mut peer.heartbeat_read_at);
            shift(&mut peer.header_read_at);
            for outgoing in [&mut peer.request, &mut peer.ack] {
                if let Send::InFlight { posted_at } = &mut outgoing.send {
                    *posted_at = (*posted_at + gap).min(now);
                }
            }
        }
    }

    /// Fails at once every peer whose trusted life the fabric reports ended.
    fn take_death_notices<F: Fabric>(&mut self, fabric: &F) {
        for peer in self.others() {
            let Some(ended) = fabric.ended_life(peer) else {
                continue;
            };
            let state = &mut self.peers[peer as usize];
            // Planted defect: a notice is taken for whatever life the peer runs now.
            let trusted = cfg!(feature = "bug-stale-death") || state.life == Some(ended);
            if !trusted || state.header != PeerHeader::Verified {
                continue;
            }
            if state.dead_life != Some(ended) {
                warn!("peer {} died (life {}): failed at once", peer, ended);
                state.dead_life = Some(ended);
                self.deaths = self.deaths.wrapping_add(1);
            }
            // Until its successor's header is read, whatever answers is taken for the dead life.
            // It shows no sign of life either: a new leader that counted a dead peer's last
            // moves as one waited out the read timeout on its recycling (a 3 ms first commit).
            self.dirty = Dirty::ALL;
            state.score.fail();
            state.moved_at = None;
            state.suspected_at = None;
            state.voter = false;
            // Its successor's header names a new life; read it as soon as it is there.
            state.recheck = true;
        }
    }

    /// A peer just went from `was_alive` to its score's view: suspicion of a voter that turns
    /// out wrong within a detection window makes this replica more patient.
    fn judge_suspicion(&mut self, peer: ReplicaId, was_alive: bool) {
        let now = self.polled_at;
        let detector = self.config.detector;
        let window = detector.score_max as u64
            * detector.read_period_ticks as u64
            * self.patience as u64
            * 2;
        let state = &mut self.peers[peer as usize];
        let alive = state.score.alive();
        if was_alive && !alive {
            // Patience answers suspicions that can depose a leader: only a voter may lead. A
            // recovering life slow to start beating (a restart on a loaded host) would otherwise
            // double it at every restart, and slow the detection of every later failure.
            state.suspected_at = state.voter.then_some(now);
            return;
        }
        if was_alive || !alive {
            return;
        }
        let premature = state
            .suspected_at
            .take()
            .is_some_and(|at| now.saturating_sub(at) <= window);
        if premature {
            self.false_suspicions = self.false_suspicions.wrapping_add(1);
            self.patience = self.patience.saturating_mul(2).min(PATIENCE_MAX);
            self.patience_at = now;
            warn!(
                "peer {} was declared failed but is alive: patience {}",
                peer, self.patience
            );
        }
        assert!((1..=PATIENCE_MAX).contains(&self.patience));
    }

    #[inline]
    fn decay_patience(&mut self, now: u64) {
        let period = PATIENCE_DECAY_READS * self.config.detector.read_period_ticks as u64;
        if self.patience > 1 && now.saturating_sub(self.patience_at) > period {
            self.patience /= 2;
            self.patience_at = now;
            info!("patience {}", self.patience);
        }
        assert!((1..=PATIENCE_MAX).contains(&self.patience));
    }

    /// Zeroes the log area, a bounded chunk per poll, before the region header is published:
    /// a prepare must tell "nothing was written here" (zeros) from "a write was torn here"
    /// (garbage), and memory handed over by a runtime may hold anything. True when done.
    fn initialise_log<F: Fabric>(&mut self, fabric: &mut F) -> bool {
        let end = self.layout.log + self.layout.log_bytes();
        let zeros = [0u8; ZERO_CHUNK_BYTES];
        let mut offset = self.layout.log + self.zeroed;
        for _ in 0..ZERO_CHUNKS_PER_POLL {
            if offset >= end {
                return true;
            }
            let len = (end - offset).min(ZERO_CHUNK_BYTES as u32);
            fabric.store(offset, &zeros[..len as usize]);
            offset += len;
            self.zeroed += len;
        }
        offset >= end
    }

    /// A snapshot for runtimes and tests.
    pub fn status(&self) -> BackgroundStatus {
        let census = self.census(self.polled_at, self.own());
        BackgroundStatus {
            heartbeat: self.heartbeat,
            heartbeat_stopped: self.heartbeat_stopped,
            leader: self.leader,
            alive: census.alive,
            voters: census.voters,
            holder: self.holder,
            tenure: self.tenure,
            patience: self.patience,
            deaths: self.deaths,
            false_suspicions: self.false_suspicions,
            refused: self.refused,
            refused_peers: self
                .others()
                .filter(|&p| matches!(self.peers[p as usize].header, PeerHeader::Mismatch(_)))
                .fold(0, |mask, p| mask | 1 << p),
            permission_switches: self.permission_switches,
        }
    }

    /// What this replica knows of `peer`'s region header.
    pub fn peer_header(&self, peer: ReplicaId) -> PeerHeader {
        assert!(self.config.contains(peer));
        if peer == self.me {
            return PeerHeader::Verified;
        }
        self.peers[peer as usize].header
    }

    /// `peer`'s pull score.
    pub fn peer_score(&self, peer: ReplicaId) -> PullScore {
        assert!(self.config.contains(peer) && peer != self.me);
        self.peers[peer as usize].score
    }

    #[inline]
    fn others(&self) -> Ids {
        self.others
    }

    // ---- completions -------------------------------------------------------------------------

    /// Takes this plane's completions, through the drain both planes share.
    fn drain_completions<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        if self.inbox.empty(fabric) {
            return;
        }
        let (replicas, me) = (self.config.replica_count, self.me);
        while let Some((id, status)) = self.inbox.next(fabric, replicas, me) {
            self.dirty = Dirty::ALL;
            self.complete(now, id, status, fabric);
        }
    }

    fn complete<F: Fabric>(&mut self, now: u64, id: WrId, status: Status, fabric: &mut F) {
        let patience = self.patience;
        let peer = &mut self.peers[id.peer as usize];
        if id.epoch != peer.epoch {
            return; // From before a reconnect.
        }
        let was_alive = peer.score.alive();
        let ok = status == Status::Ok;
        match id.kind {
            Kind::ReadHeader => {
                peer.header_read_at = None;
                if ok {
                    let mut header = [0u8; HEADER_BYTES as usize];
                    fabric.load(self.layout.landing_header(id.peer), &mut header);
                    self.verify_header(id.peer, &header);
                }
            }
            Kind::ReadHeartbeat => {
                peer.heartbeat_read_at = None;
                if ok {
                    let mut bytes = [0u8; HEARTBEAT_READ_BYTES as usize];
                    fabric.load(self.layout.landing_heartbeat(id.peer), &mut bytes);
                    let (heartbeat, applied) = bytes.split_at(RECORD_BYTES as usize);
                    let applied = record::decode(self.layout.applied(), applied);
                    match record::decode(self.layout.heartbeat(), heartbeat) {
                        Some(beat) => {
                            peer.readable_at = Some(now);
                            peer.voter = beat & HEARTBEAT_VOTER != 0;
                            peer.view = decode_view(beat);
                            peer.heard = true;
                            let counter = |b: u64| b & HEARTBEAT_COUNTER;
                            peer.flag = peer.flag.read(counter(beat), peer.voter);
                            let before = peer.score.last_heartbeat();
                            peer.recheck |= before.is_some_and(|b| counter(beat) < counter(b));
                            let detector = &self.config.detector;
                            if peer.score.observe(detector, beat, applied, patience) {
                                peer.moved_at = Some(now);
                            }
                        }
                        // A read torn by a live peer's store says nothing; but a heartbeat that
                        // stays unreadable for several read timeouts (a dead peer's damaged
                        // record) counts as unchanged, or it would keep that peer alive forever.
                        None => {
                            let grace = UNREADABLE_TIMEOUTS
                                * self.config.detector.read_timeout_ticks as u64;
                            let since = now.saturating_sub(peer.readable_at.unwrap_or(0));
                            if since > grace {
                                peer.score.miss(&self.config.detector, patience);
                                peer.recheck = true; // A new region, maybe of another layout.
                            }
                        }
                    }
                } else {
                    peer.score.miss(&self.config.detector, patience);
                }
                self.judge_suspicion(id.peer, was_alive);
            }
            Kind::WriteRequest => Self::finish_send(&mut peer.request, id.tag, ok, now),
            Kind::WriteAck => Self::finish_send(&mut peer.ack, id.tag, ok, now),
            Kind::WriteTransferRequest => {
                let request = &mut self.transfer_request;
                if request.in_flight.is_some_and(|(seq, _, _)| seq == id.tag) {
                    request.in_flight = None;
                    if ok {
                        request.landed = id.tag;
                    }
                }
            }
            _ => {} // Not a background-plane id.
        }
        if !ok {
            self.reconnect(id.peer, fabric);
        }
    }

    fn finish_send(outgoing: &mut Outgoing, tag: u32, ok: bool, now: u64) {
        if !matches!(outgoing.send, Send::InFlight { .. }) || outgoing.value as u32 != tag {
            return; // A superseded value.
        }
        outgoing.send = if ok {
            Send::Done { at: now }
        } else {
            Send::Due
        };
    }

    fn verify_header(&mut self, peer: ReplicaId, header: &[u8]) {
        let state = &mut self.peers[peer as usize];
        match Layout::check_header(&self.config, header) {
            Ok(life) => {
                state.recheck = false;
                if state.header != PeerHeader::Verified {
                    state.header = PeerHeader::Verified;
                    state.score = PullScore::verified(&self.config.detector);
                    info!("peer {} verified (life {})", peer, life);
                }
                if state.life != Some(life) {
                    // A new life is recovering: only its own heartbeat says it votes (the last
                    // one read may be its old life's), and nothing suspected of the old one
                    // carries over.
                    state.life = Some(life);
                    state.voter = false;
                    state.heard = false;
                    state.view = None;
                    state.flag = Flag::Current;
                    state.suspected_at = None;
                }
            }
            Err(error) => {
                warn!("peer {} refused: {}", peer, error);
                state.header = PeerHeader::Mismatch(error);
                state.voter = false;
                state.heard = false;
                state.life = None;
                self.judge_refusal();
            }
        }
    }

    /// Refusal is final once the peers that run another layout or configuration leave fewer
    /// replicas than a quorum: this replica could never take part (unwritten or torn headers
    /// say nothing: the peer may not have started yet).
    fn judge_refusal(&mut self) {
        let refusing = self
            .others()
            .filter(|&p| {
                matches!(
                    self.peers[p as usize].header,
                    PeerHeader::Mismatch(
                        HeaderError::LayoutVersion { .. } | HeaderError::ConfigHash { .. }
                    )
                )
            })
            .count() as u8;
        if !self.refused && self.config.replica_count - refusing < self.config.quorum() {
            warn!(
                "refused: {} of {} peers run another layout or configuration; no quorum can \
                 include this replica",
                refusing,
                self.config.replica_count - 1
            );
            self.refused = true;
        }
    }

    /// Resets this plane's connection to `peer`; whatever was outstanding on it is forgotten.
    fn reconnect<F: Fabric>(&mut self, peer: ReplicaId, fabric: &mut F) {
        self.dirty = Dirty::ALL;
        let state = &mut self.peers[peer as usize];
        state.epoch = state.epoch.wrapping_add(1);
        state.header_read_at = None;
        // A heartbeat read the reset drops never completes: it counts as unchanged. Otherwise a
        // dead peer whose connection some other operation (a retried ack) resets in every poll
        // would never lose a point, and would lead forever in this replica's view.
        let was_alive = state.score.alive();
        if state.heartbeat_read_at.take().is_some() {
            state.score.miss(&self.config.detector, self.patience);
            if state.flag == Flag::Stale {
                state.flag = Flag::Unread;
            }
        }
        for outgoing in [&mut state.request, &mut state.ack] {
            if matches!(outgoing.send, Send::InFlight { .. }) {
                outgoing.send = Send::Due;
            }
        }
        // Its completion is dropped with the epoch: without this the request would wait
        // `permission_retry_ticks` and then reset a pairing that may be fresh by then, which
        // on a fabric that pairs slowly never let a request land (simulator seed 17772).
        let request = &mut self.transfer_request;
        if request.in_flight.is_some_and(|(_, to, _)| to == peer) {
            request.in_flight = None;
        }
        self.judge_suspicion(peer, was_alive);
        // Only fails for a peer outside the cluster, which `peer` is not.
        let reconnected = fabric.reconnect(peer);
        debug_assert!(reconnected.is_ok());
    }

    fn post_read<F: Fabric>(
        &mut self,
        fabric: &mut F,
        peer: ReplicaId,
        kind: Kind,
        remote: u32,
        local: u32,
        len: u32,
    ) -> bool {
        let epoch = self.peers[peer as usize].epoch;
        let id = WrId {
            kind,
            peer,
            epoch,
            tag: 0,
        }
        .encode();
        match fabric.read(peer, remote, local, len, id) {
            Ok(()) => true,
            Err(PostError::Broken) => {
                self.reconnect(peer, fabric);
                false
            }
            Err(_) => false,
        }
    }

    // ---- heartbeat and fate sharing ----------------------------------------------------------

    fn beat<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let progress = self.shared.progress();
        if progress != self.progress_seen {
            self.progress_seen = progress;
            self.progress_seen_at = now;
        }
        let fate = self.config.detector.fate_ticks as u64 * self.patience as u64;
        let stalled = now.saturating_sub(self.progress_seen_at) > fate;
        let stopped = stalled || self.shared.halted().is_some();
        if stopped != self.heartbeat_stopped {
            warn!(
                "heartbeat {}",
                if stopped {
                    "stopped (fate sharing)"
                } else {
                    "resumed"
                }
            );
            if stopped {
                self.heartbeat_stopped_at = now;
            } else if !self.stop_outlived_detection(now) {
                // The replication plane was only slow: a noisy host, whose stalls must not
                // stop the heartbeat (and make the peers suspect this replica) again and again.
                self.patience = self.patience.saturating_mul(2).min(PATIENCE_MAX);
                self.patience_at = now;
                warn!("a stall stopped the heartbeat: patience {}", self.patience);
            }
            self.heartbeat_stopped = stopped;
        }
        if !stopped && now >= self.next_heartbeat_at {
            self.heartbeat += 1;
            assert!(self.heartbeat <= HEARTBEAT_COUNTER);
            let offset = self.layout.heartbeat();
            let flag = if self.candidate() { HEARTBEAT_VOTER } else { 0 };
            let beat = self.heartbeat | flag | encode_view(self.leader);
            assert_eq!(decode_view(beat), self.leader);
            fabric.store(offset, &record::encode(offset, beat));
            self.next_heartbeat_at = now + self.config.detector.heartbeat_period_ticks as u64;
        }
    }

    // ---- failure detection -------------------------------------------------------------------

    /// Posts the reads that are due and resets connections whose reads are late, when anything
    /// may be (see the invariants): an idle poll compares a flag and a tick.
    #[inline(always)]
    fn probe_peers<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        if !self.dirty.probe && now < self.probe_at {
            debug_assert!(now < self.probe_due(), "a probe skipped was due");
            return;
        }
        self.dirty.probe = false;
        self.probe_now(now, fabric);
        self.probe_at = self.probe_due();
    }

    /// The first tick at which a probe may post a read or find one late, by the peers' state.
    fn probe_due(&self) -> u64 {
        let late = self.config.detector.read_timeout_ticks as u64 + 1;
        let due = |read_at: Option<u64>, next_read_at: u64| match read_at {
            Some(posted_at) => posted_at.saturating_add(late),
            None => next_read_at,
        };
        let mut at = u64::MAX;
        for peer in self.others() {
            let state = &self.peers[peer as usize];
            let verified = state.header == PeerHeader::Verified;
            if !verified || state.recheck {
                at = at.min(due(state.header_read_at, state.next_read_at));
            }
            if verified {
                at = at.min(due(state.heartbeat_read_at, state.next_read_at));
            }
        }
        at
    }

    /// The probes themselves: per peer, its header read while unverified or rechecked, its
    /// heartbeat read every read period, and a read past its timeout counted as a miss.
    #[inline(never)]
    fn probe_now<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let timeout = self.config.detector.read_timeout_ticks as u64;
        let period = self.config.detector.read_period_ticks as u64;
        for peer in self.others() {
            let state = &self.peers[peer as usize];
            let (header, recheck) = (state.header, state.recheck);
            let (read_at, next_read_at) = (state.heartbeat_read_at, state.next_read_at);
            if header != PeerHeader::Verified {
                self.probe_header(now, fabric, peer);
                continue;
            }
            if recheck {
                self.probe_header(now, fabric, peer);
            }
            if let Some(posted_at) = read_at {
                if now.saturating_sub(posted_at) > timeout {
                    self.reconnect(peer, fabric); // Counts the read as a miss.
                }
                continue;
            }
            if now >= next_read_at {
                let remote = self.layout.heartbeat();
                let local = self.layout.landing_heartbeat(peer);
                if self.post_read(
                    fabric,
                    peer,
                    Kind::ReadHeartbeat,
                    remote,
                    local,
                    HEARTBEAT_READ_BYTES,
                ) {
                    let state = &mut self.peers[peer as usize];
                    state.heartbeat_read_at = Some(now);
                    state.next_read_at = now + period;
                }
            }
        }
    }

    fn probe_header<F: Fabric>(&mut self, now: u64, fabric: &mut F, peer: ReplicaId) {
        let timeout = self.config.detector.read_timeout_ticks as u64;
        let state = self.peers[peer as usize];
        if let Some(posted_at) = state.header_read_at {
            if now.saturating_sub(posted_at) > timeout {
                self.reconnect(peer, fabric);
            }
            return;
        }
        if now < state.next_read_at {
            return;
        }
        let local = self.layout.landing_header(peer);
        if self.post_read(fabric, peer, Kind::ReadHeader, 0, local, HEADER_BYTES) {
            let state = &mut self.peers[peer as usize];
            state.header_read_at = Some(now);
            // A refused peer is asked again only now and then: it may restart with the right
            // configuration.
            let wait = match state.header {
                PeerHeader::Mismatch(_) => timeout,
                _ => self.config.detector.read_period_ticks as u64,
            };
            state.next_read_at = now + wait;
        }
    }

    // ---- election ----------------------------------------------------------------------------

    /// The heartbeat has been stopped for as long as the quickest peer needs to declare this
    /// replica failed (every unchanged read costing a point, from a full score).
    fn stop_outlived_detection(&self, now: u64) -> bool {
        now.saturating_sub(self.heartbeat_stopped_at) > self.config.detector.detection_ticks()
    }

    /// Replicas considered alive. This replica counts itself out once halted, or once a stall
    /// of its replication plane has stopped its heartbeat (fate sharing) for long enough that
    /// the peers may have failed it: a leader that counted itself out at the first missed beat
    /// ended its tenure over a stall no peer noticed, and started the next one (a permission
    /// switch, on verbs new pairings) a moment later; in the Soft-RoCE guest, where those
    /// switches stall the planes in turn, tenure after tenure.
    fn alive_mask(&self) -> u8 {
        self.census(self.polled_at, self.own()).alive
    }

    /// This replica's bit in `alive_mask` (the census's `alive`).
    fn own_alive_bit(&self) -> u8 {
        let counted_out = self.heartbeat_stopped
            && (self.shared.halted().is_some() || self.stop_outlived_detection(self.polled_at));
        if counted_out {
            0
        } else {
            1 << self.me
        }
    }

    /// A majority of the replicas, this one included, is considered alive. A tenure needs grants
    /// from a majority, so without one a bid cannot succeed: it would only take this replica's
    /// own log back from the leader that the others still follow, and end that leader's tenure.
    /// Every peer failing at once is what a replica sees when the peers' planes are starved
    /// together (beside a busy neighbour, on a host with fewer cores than threads), far more
    /// often than a majority dying.
    fn majority_alive(&self) -> bool {
        self.alive_mask().count_ones() >= self.config.quorum() as u32
    }

    /// A bid takes this replica's own log back from its holder, which ends the holder's tenure.
    /// Against a holder that may be alive (only suspected) it bids only once a majority, itself
    /// included, names it leader in their heartbeats: the grants it needs come from replicas
    /// that consider it leader, so before that the bid cannot succeed and would only depose a
    /// leader the others still follow (a pre-vote). A holder that certainly died has nothing to
    /// lose: the bid goes ahead at once.
    fn may_take_own_log(&self) -> bool {
        let Some(holder) = self.holder.filter(|&h| h != self.me) else {
            return true;
        };
        let state = &self.peers[holder as usize];
        if state.dead_life.is_some() && state.dead_life == state.life {
            return true;
        }
        let alive = self.alive_mask();
        let backers = self
            .others()
            .filter(|&p| alive & (1 << p) != 0 && self.peers[p as usize].view == Some(self.me))
            .count();
        backers + 1 >= self.config.quorum() as usize
    }

    /// This replica may lead: a voter that is not installing a snapshot.
    fn candidate(&self) -> bool {
        self.voter && !self.shared.catching_up()
    }

    /// This replica's bit in the census's `voters`.
    fn own_voter_bit(&self) -> u8 {
        if self.candidate() {
            1 << self.me
        } else {
            0
        }
    }

    /// What the election reads of the peers, gathered in one pass, with this replica's `own`
    /// bits.
    fn census(&self, now: u64, own: Own) -> Census {
        let recent = self.config.detector.read_timeout_ticks as u64;
        let mut census = Census {
            alive: own.alive_bit,
            voters: own.voter_bit,
            lively: own.alive_bit,
            lively_until: u64::MAX,
            everyone_heard: true,
            header_unknown: false,
            settled: true,
        };
        for peer in self.others() {
            let state = &self.peers[peer as usize];
            let bit = 1 << peer;
            if state.counts_alive() {
                census.alive |= bit;
                if peer < self.me {
                    census.settled &= state.flag == Flag::Current;
                }
            }
            if state.counts_voter() {
                census.voters |= bit;
            }
            census.everyone_heard &= state.heard;
            census.header_unknown |= state.header == PeerHeader::Unknown;
            if let Some(at) = state.moved_at {
                if now.saturating_sub(at) <= recent {
                    census.lively |= bit;
                    census.lively_until = census.lively_until.min(at.saturating_add(recent + 1));
                }
            }
        }
        census
    }

    /// What this replica itself contributes to the election now.
    #[inline(always)]
    fn own(&self) -> Own {
        Own {
            alive_bit: self.own_alive_bit(),
            voter_bit: self.own_voter_bit(),
            voter: self.voter,
            leading: self.tenure.is_some(),
            refused: self.refused,
        }
    }

    /// Elects again when what the election reads may have changed since it last ran (see the
    /// invariants): an idle poll reads only this replica's own terms.
    #[inline(always)]
    fn elect(&mut self, now: u64) {
        let own = self.own();
        if !self.dirty.elect && own == self.elected_own && now < self.elected.until {
            debug_assert_eq!(
                self.decide(now, own),
                self.elected,
                "an election skipped as unchanged would have decided otherwise"
            );
            return;
        }
        self.elect_now(now, own);
    }

    /// Elects, and publishes the view.
    #[inline(never)]
    fn elect_now(&mut self, now: u64, own: Own) {
        let elected = self.decide(now, own);
        if elected.leader != self.leader {
            info!("leader view: {}", elected.leader);
            self.leader = elected.leader;
        }
        self.shared
            .set_view(elected.alive, elected.lively, elected.leader);
        (self.elected, self.elected_own, self.dirty.elect) = (elected, own, false);
    }

    /// The election: who is alive, lively and leader as this replica sees it at `now`, from the
    /// peers' state and what it reads of this replica (`own`, nothing else of it).
    fn decide(&self, now: u64, own: Own) -> Elected {
        let census = self.census(now, own);
        let alive = census.alive;
        let started_at = self.started_at.unwrap_or(now);
        let warm_until = started_at + self.config.detector.read_timeout_ticks as u64;
        let warming_up = census.header_unknown && now < warm_until;
        let everyone = ((1u16 << self.config.replica_count) - 1) as u8;
        // Only a heartbeat says a peer's life is no voter: a peer whose header was verified but
        // whose heartbeat was not read yet may well be one (a restarted replica took the
        // leader and its follower for non-voters and formed a cluster of its own, as the
        // lowest id).
        let mut candidates = if census.voters == 0 && alive == everyone && census.everyone_heard {
            alive // Nobody is a voter: the cluster forms once everyone is up.
        } else {
            alive & census.voters
        };
        // A replica just admitted may not have read yet that the leader which admitted it is a
        // voter too; it would take itself for the only one and bid. It stands for election only
        // once every live peer below it has shown its flag since the admission (a leader that
        // admitted itself keeps its tenure). Counted in reads, not time: a plane descheduled
        // for milliseconds by a busy neighbour woke up past a read timeout with the flags of
        // before its admission, bid, and revoked the leader that had just admitted it.
        if own.voter && !census.settled && !own.leading {
            candidates &= !(1 << self.me);
        }
        let leader = if warming_up || candidates == 0 || own.refused {
            None
        } else {
            Some(candidates.trailing_zeros() as u8)
        };
        let until = if warming_up {
            census.lively_until.min(warm_until)
        } else {
            census.lively_until
        };
        Elected {
            alive,
            lively: census.lively,
            leader,
            until,
        }
    }

    // ---- requester side ----------------------------------------------------------------------

    fn lead_or_follow<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let want_lead = self.leader == Some(self.me) && self.shared.halted().is_none();
        if let Some(tenure) = self.tenure {
            if !want_lead || self.shared.aborted() == tenure {
                self.end_tenure();
            }
        }
        if want_lead
            && self.tenure.is_none()
            && self.granting.is_none()
            && self.majority_alive()
            && self.may_take_own_log()
        {
            self.start_tenure(fabric);
        }
        if let Some(tenure) = self.tenure {
            self.collect_acks(tenure, fabric);
            self.ask_again(now, fabric);
        }
    }

    fn start_tenure<F: Fabric>(&mut self, fabric: &mut F) {
        assert!(self.majority_alive(), "a bid without a majority in view");
        assert!(
            self.may_take_own_log(),
            "a bid against a leader that may live"
        );
        self.request_number += 1;
        if self.request_number as u32 & TENURE_MASK == 0 {
            self.request_number += 1;
        }
        let tenure = self.request_number as u32 & TENURE_MASK;
        if let Some(holder) = self.holder {
            if holder != self.me {
                fabric.revoke(holder);
            }
        }
        self.holder = Some(self.me);
        self.request_attempt = 0;
        self.stage_request(fabric);
        for peer in self.others() {
            self.peers[peer as usize].request = Outgoing {
                value: self.request_value(),
                send: Send::Due,
            };
        }
        self.acked = 1 << self.me;
        self.tenure = Some(tenure);
        self.shared.set_lead(Some(Lead {
            tenure,
            confirmed: self.acked,
        }));
        info!("tenure {} started", tenure);
    }

    /// The request record: the request number and the attempt.
    fn request_value(&self) -> u64 {
        (self.request_number << 8) | self.request_attempt as u64
    }

    fn stage_request<F: Fabric>(&self, fabric: &mut F) {
        let offset = self.layout.request(self.me);
        fabric.store(
            self.layout.outbox_request(),
            &record::encode(offset, self.request_value()),
        );
    }

    /// A peer that took the request but did not ack within `permission_retry_ticks` (its ack
    /// was lost or damaged, or it serves someone else for now) is asked again, with a new
    /// attempt number so that it acks again if it already served this request.
    fn ask_again<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let retry = self.config.permission_retry_ticks as u64;
        let stale = |p: &Peer| matches!(p.request.send, Send::Done { at } if now.saturating_sub(at) > retry);
        let waiting = self
            .others()
            .filter(|&p| self.acked & (1 << p) == 0 && stale(&self.peers[p as usize]));
        let mut waiting_mask = 0u8;
        for peer in waiting {
            waiting_mask |= 1 << peer;
        }
        if waiting_mask == 0 {
            return;
        }
        self.request_attempt = self.request_attempt.wrapping_add(1);
        self.stage_request(fabric);
        let value = self.request_value();
        for peer in self.others() {
            let request = &mut self.peers[peer as usize].request;
            if waiting_mask & (1 << peer) != 0 {
                *request = Outgoing {
                    value,
                    send: Send::Due,
                };
            } else if request.send == Send::Due {
                request.value = value;
            }
        }
    }

    fn end_tenure(&mut self) {
        info!("tenure {} ended", self.tenure);
        self.tenure = None;
        self.acked = 0;
        for peer in self.others() {
            self.peers[peer as usize].request = Outgoing::IDLE;
        }
        self.shared.set_lead(None);
    }

    fn collect_acks<F: Fabric>(&mut self, tenure: u32, fabric: &mut F) {
        let before = self.acked;
        for peer in self.others() {
            let offset = self.layout.ack(peer);
            let mut bytes = [0u8; RECORD_BYTES as usize];
            fabric.load(offset, &mut bytes);
            if record::decode(offset, &bytes) == Some(self.request_number) {
                self.acked |= 1 << peer;
            }
        }
        assert!(
            self.acked & before == before,
            "acks are never withdrawn within a tenure"
        );
        if self.acked != before {
            self.shared.set_lead(Some(Lead {
                tenure,
                confirmed: self.acked,
            }));
        }
    }

    // ---- owner side --------------------------------------------------------------------------

    fn serve_requests<F: Fabric>(&mut self, fabric: &mut F) {
        if self.shared.halted().is_some() {
            // A halted replica takes no further part: its heartbeat reads go on, and a view of
            // who leads that wanders must not move write access to its log around.
            return;
        }
        if let Some((requester, number)) = self.granting {
            if self.shared.stood_down() {
                self.granting = None;
                self.grant(requester, number, fabric);
            }
            return;
        }
        let Some(leader) = self.leader else { return };
        if leader == self.me || self.peers[leader as usize].header != PeerHeader::Verified {
            return;
        }
        let offset = self.layout.request(leader);
        let peer = &mut self.peers[leader as usize];
        // The idle poll's answer, without the check: the record's value is the one last taken
        // (a torn record that reads the same value would be ignored all the same).
        let value = fabric.load_word(offset);
        if value == peer.seen {
            return;
        }
        let Some(value) = record::verify(offset, value, fabric.load_word(offset + 8)) else {
            return;
        };
        peer.seen = value;
        let number = value >> 8;
        if number == peer.served && self.holder == Some(leader) {
            // Asked again for what it holds: its ack went missing. Ack again.
            peer.ack.send = Send::Due;
            return;
        }
        assert!(
            self.tenure.is_none(),
            "a replica that leads does not serve others"
        );
        self.shared.set_lead(None);
        if self.shared.stood_down() {
            self.grant(leader, number, fabric);
        } else {
            self.granting = Some((leader, number));
        }
    }

    /// Revoke-then-grant, then ack. The caller made sure this replica's own replication plane
    /// no longer writes its log.
    fn grant<F: Fabric>(&mut self, requester: ReplicaId, number: u64, fabric: &mut F) {
        assert!(requester != self.me);
        assert!(self.shared.stood_down());
        if let Some(holder) = self.holder {
            // Planted defect: leave the previous leader's write access in place.
            let skip = cfg!(feature = "bug-skip-revoke") && holder != requester;
            if holder != self.me && holder != requester && !skip {
                fabric.revoke(holder);
            }
        }
        // Revoking the requester itself first fences any write it posted before this grant (a
        // write of an earlier tenure still in flight would otherwise land once granted).
        fabric.revoke(requester);
        fabric.grant(requester);
        self.holder = Some(requester);
        self.permission_switches = self.permission_switches.wrapping_add(1);
        let peer = &mut self.peers[requester as usize];
        peer.served = number;
        peer.ack = Outgoing {
            value: number,
            send: Send::Due,
        };
        let staged = record::encode(self.layout.ack(self.me), number);
        fabric.store(self.layout.outbox_ack(requester), &staged);
        info!("granted log to {} (request {})", requester, number);
    }

    // ---- delivery of requests and acks -------------------------------------------------------

    fn send_outgoing<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        for peer in self.others() {
            let state = &self.peers[peer as usize];
            if !state.request.pending() && !state.ack.pending() {
                continue; // The common poll: nothing to deliver.
            }
            for kind in [Kind::WriteRequest, Kind::WriteAck] {
                let outgoing = match kind {
                    Kind::WriteRequest => self.peers[peer as usize].request,
                    _ => self.peers[peer as usize].ack,
                };
                let due = match outgoing.send {
                    Send::Due => true,
                    Send::InFlight { posted_at }
                        if now.saturating_sub(posted_at) > self.write_patience() =>
                    {
                        self.reconnect(peer, fabric);
                        true
                    }
                    _ => false,
                };
                if due {
                    self.post_outgoing(now, fabric, peer, kind, outgoing.value);
                }
            }
        }
    }

    /// How long a permission request, ack or transfer request write may stay in flight before
    /// it is given up, with its connection: `permission_retry_ticks`, but no less than two
    /// heartbeat read periods. A retry of one read period reconnected writes that were merely
    /// slow; each reconnect counted the peer's heartbeat read as a miss and paired anew (reads
    /// failing meanwhile), detectors flapped until no tenure lasted (`sim --wide-timing`, seeds
    /// 186, 280 and 18 more of 2,000, retry 10 ticks), and a transfer started over and over
    /// (seed 15605). A floor of a heartbeat read's timeout (four periods) also fixed those,
    /// but it would have changed `mu demo`'s and `mu failover`'s timing (2 ms retries, reads
    /// every 1 ms), and the verbs guest's only run with it took 13.3 ms at p50 to switch
    /// permissions, against 4.2 and 6.3 ms in the two runs before (3 fail-overs each).
    fn write_patience(&self) -> u64 {
        (self.config.permission_retry_ticks as u64)
            .max(2 * self.config.detector.read_period_ticks as u64)
    }

    /// Writes the replication plane's latest transfer request into its donor's background area,
    /// one write at a time, again after a failure or `write_patience` without an answer.
    fn send_transfer_request<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        let landed = self.transfer_request.landed;
        let Some((seq, donor, value)) = self.shared.transfer_request(landed) else {
            return;
        };
        if !self.config.contains(donor) || donor == self.me {
            return;
        }
        if let Some((_, posted_to, posted_at)) = self.transfer_request.in_flight {
            let late = now.saturating_sub(posted_at) > self.write_patience();
            if !late && posted_to == donor {
                return; // The newer value follows once this one is answered.
            }
            if late {
                self.reconnect(posted_to, fabric);
            }
            self.transfer_request.in_flight = None;
        }
        let (local, remote) = (
            self.layout.outbox_transfer_request(),
            self.layout.transfer_request(self.me),
        );
        fabric.store(local, &record::encode(remote, value));
        if self.post_record(
            fabric,
            donor,
            Kind::WriteTransferRequest,
            seq,
            local,
            remote,
        ) {
            self.transfer_request.in_flight = Some((seq, donor, now));
        }
    }

    fn post_outgoing<F: Fabric>(
        &mut self,
        now: u64,
        fabric: &mut F,
        peer: ReplicaId,
        kind: Kind,
        value: u64,
    ) {
        let (local, remote) = match kind {
            Kind::WriteRequest => (self.layout.outbox_request(), self.layout.request(self.me)),
            _ => (self.layout.outbox_ack(peer), self.layout.ack(self.me)),
        };
        if self.post_record(fabric, peer, kind, value as u32, local, remote) {
            let state = &mut self.peers[peer as usize];
            let outgoing = if kind == Kind::WriteRequest {
                &mut state.request
            } else {
                &mut state.ack
            };
            outgoing.send = Send::InFlight { posted_at: now };
        }
    }

    /// Writes the record staged at `local` to `remote` in `peer`'s region; true when posted (a
    /// broken connection is reset, a busy one tried again next poll).
    fn post_record<F: Fabric>(
        &mut self,
        fabric: &mut F,
        peer: ReplicaId,
        kind: Kind,
        tag: u32,
        local: u32,
        remote: u32,
    ) -> bool {
        let epoch = self.peers[peer as usize].epoch;
        let id = WrId {
            kind,
            peer,
            epoch,
            tag,
        }
        .encode();
        match fabric.write(peer, local, remote, RECORD_BYTES, id) {
            Ok(()) => true,
            Err(PostError::Broken) => {
                self.reconnect(peer, fabric);
                false
            }
            Err(_) => false,
        }
    }
}
