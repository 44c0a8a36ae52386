//! A Mu cluster inside this process, over the shared-memory fabric: each replica's region is a
//! file in a scratch directory under `/dev/shm`, every plane gets its own `ShmFabric` exactly as
//! in a replica process, and the benchmark drives the planes itself: from one thread with a
//! virtual clock (instruction counts under callgrind, where only determinism matters), or from
//! pinned threads with the real clock (latency and throughput).
//!
//! Commands take one slot each (`entry_slots_max = 1`, the slot sized to the payload), which is
//! how Mu is meant to run: one write per follower per command. Batching, where measured, packs
//! several application commands into one entry.
//!
//! # Invariants
//! - A cluster owns its scratch directory and removes it when dropped, after every fabric and
//!   region (fields drop in declaration order).
//! - The state machine of every replica folds every applied entry into a digest, so the work
//!   of applying is done and the replicas' agreement can be checked after a run. The cluster is
//!   generic over that application ([`Replica`]); [`Tally`] is the default, and the order book
//!   benchmark runs `crate::orderbook::BookReplica`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mu_nostd::slot::SLOT_HEADER_BYTES;
use mu_nostd::{
    BackgroundPlane, Config, DetectorConfig, ReplicaId, ReplicationPlane, Shared, StateMachine,
    Ticket,
};
use runtime_linux::clock::cycles_end;
use runtime_linux::shm::{OwnRegion, RegionDir, ShmFabric};

/// The largest payload a benchmark replicates (one slot).
pub const PAYLOAD_MAX: usize = 4096;
/// The slot buffer: a 4096-byte payload plus the slot header, rounded to 64 bytes.
pub const SLOT: usize = (PAYLOAD_MAX + SLOT_HEADER_BYTES as usize).next_multiple_of(64);
/// The largest entry: one slot's payload.
pub const ENTRY: usize = SLOT - SLOT_HEADER_BYTES as usize;
/// The leader's queue: a full pipeline (64) of 1 KiB entries with room to spare; larger
/// entries queue fewer at a time (`submit` says `Busy`). It lives inside the plane, which is
/// built on the caller's stack before it is boxed, so it stays well below a thread's stack.
pub const QUEUE: usize = 1 << 17;

/// The replication plane every benchmark runs.
pub type Plane<'s> = ReplicationPlane<'s, SLOT, ENTRY, QUEUE>;

/// What to build.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Replicas, 1..=7.
    pub replicas: u8,
    /// Bytes per entry (command, or batch of commands).
    pub entry_bytes: usize,
    /// Written-but-undecided slots the leader keeps in flight.
    pub pipeline_depth: u16,
    /// Detector read period in ticks (1 µs with the real clock).
    pub read_period_ticks: u32,
}

impl Params {
    /// The cluster configuration: slots just large enough for one entry, a log of about 32 MiB
    /// per replica (1024 to 65,536 slots). The log is large and the leader reads the followers'
    /// applied positions often, so that recycling (the leader never runs a lap ahead of a live
    /// follower) holds the leader back as little as the followers' shared thread allows.
    pub fn config(&self) -> Config {
        let mut config = Config::new(self.replicas);
        let entry_bytes = self.entry_bytes.min(PAYLOAD_MAX) as u32;
        config.slot_size = (entry_bytes + SLOT_HEADER_BYTES).next_multiple_of(64);
        config.slot_count = ((32 << 20) / config.slot_size).clamp(1024, 65_536);
        config.entry_slots_max = 1;
        config.pipeline_depth = self.pipeline_depth;
        // Generous deadlines (200 ms): a benchmark thread may be preempted now and then on a
        // shared host or a virtual machine whose CPUs are stolen for milliseconds, and an
        // aborted tenure would spoil the run without telling anything about Mu.
        config.op_timeout_ticks = 200_000;
        config.permission_retry_ticks = 2_000;
        config.recycle_period_ticks = 50;
        config.detector = DetectorConfig::paper(self.read_period_ticks);
        config.detector.fate_ticks = 200_000;
        config
    }
}

/// The application every replica runs: it folds each applied entry into a digest; on the
/// leader it notes the TSC when a command of its own is reported committed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// Entries applied.
    pub applied: u64,
    /// Digest of every applied entry, in order.
    pub digest: u64,
    /// Commands of this replica reported committed.
    pub committed: u64,
    /// The ticket most recently reported committed.
    pub last_ticket: Option<Ticket>,
    /// The TSC when it was reported (`rdtscp; lfence`).
    pub last_commit_cycles: u64,
    /// Commands this replica submitted that were dropped (its tenure ended).
    pub dropped: u64,
}

/// An application an in-process cluster can run: a state machine whose replicas' agreement can
/// be read after a run, and whose leader counts the commands it lost.
pub trait Replica: StateMachine + Send {
    /// What must be equal on every replica once all applied the same entries: the entries
    /// applied and a digest of them. Cheap: checked in a loop while the followers catch up.
    fn fingerprint(&self) -> (u64, u64);

    /// Commands this replica submitted that were dropped (its tenure ended).
    fn dropped_count(&self) -> u64;
}

impl Replica for Tally {
    fn fingerprint(&self) -> (u64, u64) {
        (self.applied, self.digest)
    }

    fn dropped_count(&self) -> u64 {
        self.dropped
    }
}

impl StateMachine for Tally {
    fn apply(&mut self, position: u64, command: &[u8], _response: &mut [u8]) -> usize {
        self.digest = crate::digest(self.digest ^ position, command);
        self.applied += 1;
        0
    }

    fn committed(&mut self, ticket: Ticket, _position: u64, _response: &[u8]) {
        self.last_commit_cycles = cycles_end();
        self.last_ticket = Some(ticket);
        self.committed += 1;
    }

    fn dropped(&mut self, _ticket: Ticket) {
        self.dropped += 1;
    }
}

/// One replica's replication plane with its fabric and application.
pub struct ReplicationSide<'s, A = Tally> {
    /// The replica.
    pub id: ReplicaId,
    /// The plane (boxed: its queue and buffers are large).
    pub plane: Box<Plane<'s>>,
    /// Its fabric.
    pub fabric: ShmFabric,
    /// Its application.
    pub app: A,
}

impl<A: StateMachine> ReplicationSide<'_, A> {
    /// One poll at `now`.
    #[inline]
    pub fn poll(&mut self, now: u64) {
        self.plane.poll(now, &mut self.fabric, &mut self.app);
    }
}

/// One replica's background plane with its fabric.
pub struct BackgroundSide<'s> {
    /// The plane.
    pub plane: BackgroundPlane<'s>,
    /// Its fabric.
    pub fabric: ShmFabric,
}

impl BackgroundSide<'_> {
    /// One poll at `now`.
    #[inline]
    pub fn poll(&mut self, now: u64) {
        self.plane.poll(now, &mut self.fabric);
    }
}

/// Every plane but the leader's replication plane.
pub struct Others<'a, 's, A = Tally> {
    /// The other replication sides.
    pub followers: Vec<&'a mut ReplicationSide<'s, A>>,
    /// Every background side, the leader's included.
    pub background: &'a mut [BackgroundSide<'s>],
}

impl<A: StateMachine> Others<'_, '_, A> {
    /// Polls every follower's replication plane once, and every background plane before each
    /// of them. Background planes run on cores of their own in a deployment; here they share a
    /// thread with the followers, whose polls grow long when they apply large slots, and a
    /// background plane polled too rarely would see its heartbeat reads time out and depose a
    /// healthy leader.
    pub fn poll(&mut self, ticker: &runtime_linux::clock::Ticker) {
        for index in 0..self.followers.len().max(1) {
            let now = ticker.now();
            for side in self.background.iter_mut() {
                side.poll(now);
            }
            if let Some(side) = self.followers.get_mut(index) {
                side.poll(now);
            }
        }
    }
}

/// Scratch directories are `/dev/shm/mu-bench-PID-N`.
const SCRATCH_PREFIX: &str = "/dev/shm/mu-bench-";

/// Removes the scratch directories of benchmark processes that no longer run (an interrupted
/// run leaves tens of MiB of shared memory behind otherwise).
fn sweep_stale_scratch() {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    let prefix = SCRATCH_PREFIX.trim_start_matches("/dev/shm/");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !runtime_linux::procfs::is_running(pid)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A scratch region directory under `/dev/shm`, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every plane of an in-process cluster.
pub struct Cluster<'s, A = Tally> {
    /// Replication planes, by id.
    pub replication: Vec<ReplicationSide<'s, A>>,
    /// Background planes, by id.
    pub background: Vec<BackgroundSide<'s>>,
    /// The configuration.
    pub config: Config,
    _scratch: Scratch,
}

impl<'s> Cluster<'s> {
    /// Builds replicas `0..params.replicas` running a [`Tally`] each, one `Shared` each from
    /// `shared`.
    pub fn new(params: &Params, shared: &'s [Shared]) -> Result<Cluster<'s>, String> {
        Cluster::with_apps(params, shared, |_| Tally::default())
    }
}

impl<'s, A: Replica> Cluster<'s, A> {
    /// Builds replicas `0..params.replicas`, one `Shared` each from `shared`, replica `id`
    /// running `app(id)`.
    pub fn with_apps(
        params: &Params,
        shared: &'s [Shared],
        mut app: impl FnMut(ReplicaId) -> A,
    ) -> Result<Cluster<'s, A>, String> {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        if !(1..=PAYLOAD_MAX).contains(&params.entry_bytes) {
            return Err(format!(
                "entries must be 1..={PAYLOAD_MAX} bytes, not {}",
                params.entry_bytes
            ));
        }
        let config = params.config();
        config.validate().map_err(|e| e.to_string())?;
        if shared.len() < params.replicas as usize {
            return Err(format!(
                "{} replicas need as many Shared blocks",
                params.replicas
            ));
        }
        sweep_stale_scratch();
        let path = PathBuf::from(format!(
            "{SCRATCH_PREFIX}{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        let scratch = Scratch(path);
        let dir = RegionDir::open(&scratch.0).map_err(|e| e.to_string())?;
        let mut replication = Vec::new();
        let mut background = Vec::new();
        for id in 0..params.replicas {
            let own = Arc::new(OwnRegion::create(&dir, id, &config).map_err(|e| e.to_string())?);
            let fabric = |lane| ShmFabric::new(dir.clone(), config, own.clone(), lane);
            let (plane, mut bg) =
                mu_nostd::planes::<SLOT, ENTRY, QUEUE>(config, id, &shared[id as usize])
                    .map_err(|e| e.to_string())?;
            let mut plane = Box::new(plane);
            let incarnation = own.incarnation() as u32;
            plane.begin_incarnation(incarnation);
            bg.begin_incarnation(incarnation);
            replication.push(ReplicationSide {
                id,
                plane,
                fabric: fabric(mu_nostd::fabric::Plane::Replication),
                app: app(id),
            });
            background.push(BackgroundSide {
                plane: bg,
                fabric: fabric(mu_nostd::fabric::Plane::Background),
            });
        }
        Ok(Cluster {
            replication,
            background,
            config,
            _scratch: scratch,
        })
    }

    /// Polls every plane once at `now`, background planes first.
    pub fn poll_all(&mut self, now: u64) {
        for side in &mut self.background {
            side.poll(now);
        }
        for side in &mut self.replication {
            side.poll(now);
        }
    }

    /// Drives every plane on a virtual clock (one tick per round, from `*now`) until a leader
    /// is on the fast path and every replica is a voter (the steady state: a replica not yet
    /// admitted reads its standing record on every poll); returns the leader.
    pub fn settle_virtual(&mut self, now: &mut u64) -> Result<ReplicaId, String> {
        const ROUNDS_MAX: u32 = 1_000_000;
        for _ in 0..ROUNDS_MAX {
            self.poll_all(*now);
            *now += 1;
            let leader = self.replication.iter().find(|s| s.plane.status().fast_path);
            let voters = self.replication.iter().all(|s| s.plane.status().voter);
            if let Some(side) = leader.filter(|_| voters) {
                return Ok(side.id);
            }
        }
        Err(format!(
            "no leader on the fast path with every replica a voter after {ROUNDS_MAX} rounds"
        ))
    }

    /// Replica `leader`'s replication side, apart from everything else (the other replication
    /// sides and every background side), so that they can run on different threads.
    pub fn split(
        &mut self,
        leader: ReplicaId,
    ) -> Option<(&mut ReplicationSide<'s, A>, Others<'_, 's, A>)> {
        let mut leader_side = None;
        let mut followers = Vec::new();
        for side in &mut self.replication {
            if side.id == leader {
                leader_side = Some(side);
            } else {
                followers.push(side);
            }
        }
        Some((
            leader_side?,
            Others {
                followers,
                background: &mut self.background,
            },
        ))
    }

    /// Whether every replica applied the same entries (same count, same digest).
    pub fn agreement(&self) -> Result<(u64, u64), String> {
        let (applied, digest) = self.replication[0].app.fingerprint();
        for side in &self.replication[1..] {
            let (side_applied, side_digest) = side.app.fingerprint();
            if (side_applied, side_digest) != (applied, digest) {
                return Err(format!(
                    "replica {} applied {side_applied} entries (digest {side_digest:016x}), \
                     replica 0 applied {applied} (digest {digest:016x})",
                    side.id
                ));
            }
        }
        Ok((applied, digest))
    }

    /// The replicas' applications, by id (the cluster's planes and regions go).
    pub fn into_apps(self) -> Vec<A> {
        self.replication.into_iter().map(|side| side.app).collect()
    }
}
