//! The shared-memory fabric: every replica's region is a file in a shared-memory directory that
//! every replica process maps. A "one-sided write" is a copy done by the writer's CPU straight
//! into the peer's mapping; a read is the reverse. Replicas may be processes or threads.
//!
//! Files, per replica `N` of a cluster directory (created `0700`, refused if another user owns
//! it):
//! - `replica-N.lock`: held with `flock` by the one live process of replica `N`; the kernel drops
//!   it when that process dies, which is how a crashed run is told from a running one.
//! - `replica-N.region`: a control page, then the region the core lays out. Created `0600`,
//!   refused if owned by another user or open to others. A new process of replica `N` never
//!   reuses a region file: it retires the old one (fencing its writers, below), then creates a
//!   fresh zeroed file and renames it into place. Peers notice through the old file's
//!   incarnation word and map the new file when they reconnect.
//!
//! A dead owner's memory must not count: an RDMA NIC stops acking writes to a process the moment
//! the kernel tears down its memory registrations, and the core counts a write completion as
//! that replica holding the bytes. The owner's first thread therefore holds a robust,
//! process-shared mutex in the control page; when that thread dies (SIGKILL included) the kernel
//! sets `FUTEX_OWNER_DIED` in the mutex's futex word, and every read or write to that region
//! fails from then on. (The futex word is the first field of glibc's `pthread_mutex_t`, part of
//! glibc's stable ABI; only glibc targets are supported.) The mutex is held by a small thread of
//! its own for the region's lifetime, released when the region is dropped.
//!
//! Each plane's thread also holds a life mutex of its own while it runs ([`OwnRegion::hold_life`])
//! and releases it when it stops. After a SIGKILL the kernel marks a mutex only once its holder
//! thread gets a core to exit on, which takes 0.1 to 0.5 ms on a loaded 2-core host: with three
//! holders the first of them to exit marks the life ended, not the keeper alone in its turn, and
//! the kernel wakes one sleeper per marked mutex, so more of the peers' background planes hear
//! it first hand.
//!
//! Certain death: a peer whose owner mutex is marked owner-died (or released by a clean exit),
//! or one of whose plane life mutexes is marked owner-died, or whose file a successor retired,
//! certainly ended that life, which `ended_life` reports. A resting background plane sleeps on
//! every peer's life mutexes too ([`LifeWatch`]), so that the kernel's marking of one wakes it
//! at once.
//!
//! Doorbells (see [`crate::bell`]): the control page holds the background plane's bell; a
//! background-plane write into a peer's region (a permission request, an ack, a transfer
//! request) rings the peer's. (The replication plane rests on its client port's bell.)
//!
//! The control page holds, besides identity words, one line per writer: the owner's permission
//! for that writer (`gate`), the writer's pid, start time and incarnation, and per plane of the
//! writer an in-flight marker (its incarnation while it copies into the region, 0 otherwise)
//! with the id of the thread copying.
//!
//! Permissions. A writer sets its in-flight marker, checks the gate (for a write that touches
//! the log area) and the region's incarnation, copies, then clears the marker; every marker,
//! gate and incarnation access is `SeqCst` but the clear, which is `Release`. `revoke` closes
//! the gate, then waits until the writer's marker is clear, so once it returns no write of that
//! writer lands in the log area, even one already under way (Dekker: either the writer sees the
//! closed gate, or the owner sees the marker and waits). The clear needs no `SeqCst`: the owner
//! that reads it acquires the copy before it (release-acquire), and a `SeqCst` load that comes
//! after a write's marker store in the single order of `SeqCst` operations cannot read an
//! earlier clear, only that store or this write's own clear. On x86 this spares a locked
//! instruction per write. Where the kernel lets it, the marker's store needs no fence either:
//! the owner advertises in its control page that it issues a barrier (`membarrier(2)`, see
//! `barrier.rs`) between closing a gate and reading markers, and a writer registered for
//! that barrier then sets its marker with a plain store kept in order by the compiler alone.
//! The fence that the barrier stands in for cost each write the wait for its earlier stores,
//! the last write's lines included, which the follower's core was polling. A marker left by a
//! writer that died (or by an earlier incarnation) is
//! cleared, so a killed writer never blocks a revoke. A writer that is *stopped* (SIGSTOP, a
//! debugger) in the middle of a copy would finish that copy whenever it is resumed, possibly long
//! after the revoke; the only way to fence it in shared memory is to kill it, which `revoke`
//! does (and says so on stderr). An RDMA NIC needs no such step: it checks permissions itself.
//!
//! The marker brackets each write, not a batch of writes. `Fabric` posts one operation per call
//! and this fabric executes it within the call, so a batch would exist only if posts waited for
//! `poll`; a write that waited would then have to be refused when its writer's grant was revoked
//! after the post and given again before `poll` (rule 5), which needs a gate that tells one grant
//! from the next. A marker left set from one call to the next instead would hold a revoke until
//! the writer's next poll (for ever, where the thread that revokes is the one that would poll).
//! Neither would save much: the core sends a peer its run of new slots in one write, so a peer
//! seldom gets a second write between two polls (where that run wraps around the end of the
//! log, for one).
//!
//! # Invariants
//! - At most one live process per replica id (the lock file), and it writes only its own
//!   writer line of each peer's control page.
//! - A write that touches a peer's log area copies only while its marker is set and after it saw
//!   the gate open; `revoke` returns only when the marker is clear.
//! - A write sets its marker without a fence only where its process is registered for the
//!   barrier and the owner's control page says the owner issues it; an owner that says so
//!   issues it in every `revoke`, and so does a process retiring that owner's file.
//! - Work is executed when posted: nothing is outstanding after `reconnect`, completions come
//!   back in the order posted, at most `OUTSTANDING_MAX` per peer wait to be polled.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{
    compiler_fence, AtomicU32, AtomicU64,
    Ordering::{Relaxed, Release, SeqCst},
};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mu_nostd::config::REPLICAS_MAX;
use mu_nostd::layout::HEADER_BYTES;
use mu_nostd::{Completion, Config, Fabric, Layout, Op, PostError, ReplicaId, Status};

use crate::barrier;
use crate::bell::{Bell, FutexWaitv};
use crate::mem::{copy, copy_in, copy_out, page_size, Mapping};
use crate::procfs::{self, Liveness};

/// Bytes before the region in a region file.
pub const CONTROL_BYTES: usize = 4096;
/// Completions a plane may leave unpolled per peer before posting fails with `Busy`.
pub const OUTSTANDING_MAX: usize = 128;

const MAGIC: u64 = u64::from_le_bytes(*b"MUSHMCTL");
const VERSION: u64 = 4;
/// The incarnation word of a file whose owner replaced it.
const RETIRED: u64 = u64::MAX;

// Control page words (byte offsets).
const C_MAGIC: usize = 0;
const C_VERSION: usize = 8;
const C_CONFIG_HASH: usize = 16;
const C_REGION_BYTES: usize = 24;
const C_INCARNATION: usize = 32;
const C_OWNER_PID: usize = 40;
const C_OWNER_START: usize = 48;
/// Where a clean exit keeps the incarnation when it retires the file.
const C_LAST_INCARNATION: usize = 56;
/// 1 when the owner fences writers with a barrier before it waits on their markers
/// ([`crate::barrier`]), so that a registered writer may set its marker without a fence; 0 when
/// every writer must fence.
const C_BARRIER: usize = 1024;
const _: () = assert!(64 * (1 + REPLICAS_MAX as usize) <= C_BARRIER && C_BARRIER < C_OWNER_MUTEX);

/// The background plane's doorbell: a ring counter and a sleeper count (32-bit words). (The
/// replication plane's is in the client port, which clients ring.)
const C_BACKGROUND_BELL: usize = 3072;

/// The owner's robust mutex (see the module doc); 64 bytes are reserved for it.
const C_OWNER_MUTEX: usize = 2048;
/// The planes' life mutexes (see the module doc): 64 bytes each, after the owner mutex.
const C_LIFE_MUTEXES: usize = C_OWNER_MUTEX + 64;
const _: () = assert!(C_LIFE_MUTEXES + LANES * 64 <= C_BACKGROUND_BELL);

fn life_mutex(lane: Plane) -> usize {
    C_LIFE_MUTEXES + 64 * lane as usize
}
const FUTEX_OWNER_DIED: u32 = 0x4000_0000;
const FUTEX_TID_MASK: u32 = 0x3FFF_FFFF;

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
compile_error!(
    "the shared-memory fabric reads glibc's robust mutex futex word: Linux with glibc only"
);
const _: () = assert!(std::mem::size_of::<libc::pthread_mutex_t>() <= 64);

// Writer line words (byte offsets inside a line); line `w` starts at `64 * (1 + w)`.
const L_GATE: usize = 0;
const L_PID: usize = 8;
const L_START: usize = 16;
const L_INCARNATION: usize = 24;
/// Per lane (plane) of the writer: its in-flight marker, then the id of the thread copying.
const L_LANES: usize = 32;
const LANE_BYTES: usize = 16;
const LANES: usize = 2;
const _: () = assert!(L_LANES + LANES * LANE_BYTES <= 64);

const GATE_OPEN: u64 = 1;
const GATE_CLOSED: u64 = 0;

fn line(writer: ReplicaId, word: usize) -> usize {
    64 * (1 + writer as usize) + word
}

fn inflight(writer: ReplicaId, lane: Plane) -> usize {
    line(writer, L_LANES + lane as usize * LANE_BYTES)
}

fn copier(writer: ReplicaId, lane: Plane) -> usize {
    inflight(writer, lane) + 8
}

/// Which plane of a replica a fabric serves (the core's vocabulary): each plane's thread has its
/// own in-flight marker in every peer's control page, so that one plane finishing a copy never
/// clears the mark of a copy the other plane has under way.
pub use mu_nostd::Plane;

/// What a region file's control page says about one writer, for diagnostics and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterLine {
    /// Whether the owner's gate is open to it.
    pub granted: bool,
    /// The writer's process id, as it recorded when it connected.
    pub pid: u32,
    /// Per lane: whether a copy is under way.
    pub in_flight: [bool; LANES],
}

/// Reads `writer`'s line in the region file at `path`.
pub fn inspect_writer(path: &Path, writer: ReplicaId) -> io::Result<WriterLine> {
    assert!(writer < REPLICAS_MAX);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let control = Mapping::map(&file, CONTROL_BYTES)?;
    let lane = |lane: Plane| control.word(inflight(writer, lane)).load(SeqCst) != 0;
    Ok(WriterLine {
        granted: control.word(line(writer, L_GATE)).load(SeqCst) == GATE_OPEN,
        pid: control.word(line(writer, L_PID)).load(SeqCst) as u32,
        in_flight: [lane(Plane::Replication), lane(Plane::Background)],
    })
}

/// Why a shared-memory region could not be set up or reached.
#[derive(Debug)]
pub enum ShmError {
    /// A system call on a path failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error.
        error: io::Error,
    },
    /// A file or directory belongs to another user.
    NotOwned {
        /// The path.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// A file or directory is open to other users.
    TooOpen {
        /// The path.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// Another live process is this replica already.
    AlreadyRunning {
        /// The replica id.
        id: ReplicaId,
        /// Its lock file.
        lock: PathBuf,
    },
}

impl std::fmt::Display for ShmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShmError::Io {
                path,
                action,
                error,
            } => write!(f, "{}: cannot {action}: {error}", path.display()),
            ShmError::NotOwned { path, uid } => write!(
                f,
                "{}: owned by uid {uid}, not by this user (uid {}): refusing to use it",
                path.display(),
                current_uid()
            ),
            ShmError::TooOpen { path, mode } => write!(
                f,
                "{}: mode {mode:o} lets other users in; it must be 0600 (files) or 0700 (directory)",
                path.display()
            ),
            ShmError::AlreadyRunning { id, lock } => write!(
                f,
                "replica {id} is already running (another process holds {})",
                lock.display()
            ),
        }
    }
}

impl std::error::Error for ShmError {}

fn io_error<'p>(path: &'p Path, action: &'static str) -> impl FnOnce(io::Error) -> ShmError + 'p {
    move |error| ShmError::Io {
        path: path.to_path_buf(),
        action,
        error,
    }
}

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Refuses a file or directory another user owns or can reach.
fn check_owner(path: &Path, meta: &fs::Metadata, allowed_mode: u32) -> Result<(), ShmError> {
    if meta.uid() != current_uid() {
        return Err(ShmError::NotOwned {
            path: path.to_path_buf(),
            uid: meta.uid(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & !allowed_mode != 0 {
        return Err(ShmError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// The bytes of a region file for `config`: the control page, then the region rounded up to
/// whole pages.
pub fn file_bytes(config: &Config) -> usize {
    let page = page_size().max(CONTROL_BYTES);
    let region = Layout::new(config).region_bytes as usize;
    CONTROL_BYTES + region.div_ceil(page) * page
}

/// A cluster's directory of region files, and this process's mappings of the peers' regions.
#[derive(Clone, Debug)]
pub struct RegionDir {
    path: PathBuf,
    /// Per peer: the incarnation last mapped and its mapping while any fabric holds it. Both
    /// planes use one mapping of a peer's region: half the page tables to build and tear down,
    /// and a replica that takes over finds the mappings its background plane made, instead of
    /// mapping every follower's region then.
    mappings: Arc<Mutex<PeerMappings>>,
}

type PeerMappings = [Option<(u64, Weak<Mapping>)>; REPLICAS_MAX as usize];

impl RegionDir {
    /// Opens the directory, creating it `0700` if needed; refuses one another user owns or can
    /// write.
    pub fn open(path: &Path) -> Result<RegionDir, ShmError> {
        match fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(path, "create the directory")(e)),
        }
        let meta = fs::symlink_metadata(path).map_err(io_error(path, "stat the directory"))?;
        if !meta.is_dir() {
            return Err(ShmError::Io {
                path: path.to_path_buf(),
                action: "use it as the region directory",
                error: io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
            });
        }
        check_owner(path, &meta, 0o700)?;
        Ok(RegionDir {
            path: path.to_path_buf(),
            mappings: Arc::new(Mutex::new(Default::default())),
        })
    }

    /// Offers `mapping`, of incarnation `incarnation` of `peer`'s region, to this process's
    /// other fabrics (see [`RegionDir::held_mapping`]).
    fn share_mapping(&self, peer: ReplicaId, incarnation: u64, mapping: Mapping) -> Arc<Mapping> {
        let mapping = Arc::new(mapping);
        let mut mappings = self.mappings.lock().unwrap_or_else(PoisonError::into_inner);
        mappings[peer as usize] = Some((incarnation, Arc::downgrade(&mapping)));
        mapping
    }

    /// The mapping of incarnation `incarnation` of `peer`'s region that a fabric of this
    /// process holds, if one does.
    fn held_mapping(&self, peer: ReplicaId, incarnation: u64) -> Option<Arc<Mapping>> {
        let mappings = self.mappings.lock().unwrap_or_else(PoisonError::into_inner);
        match &mappings[peer as usize] {
            Some((mapped, held)) if *mapped == incarnation => held.upgrade(),
            _ => None,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The region file of replica `id`.
    pub fn region_path(&self, id: ReplicaId) -> PathBuf {
        self.path.join(format!("replica-{id}.region"))
    }

    fn lock_path(&self, id: ReplicaId) -> PathBuf {
        self.path.join(format!("replica-{id}.lock"))
    }
}

/// What starting a region found on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Previous {
    /// No earlier region file.
    Fresh,
    /// A region file of an earlier process of this replica (crashed or ended), now retired.
    Reclaimed {
        /// The process that owned it.
        pid: u32,
        /// Its incarnation.
        incarnation: u64,
    },
}

/// This replica's own region: the lock that makes this process its one owner, and the mapping.
pub struct OwnRegion {
    id: ReplicaId,
    path: PathBuf,
    mapping: Mapping,
    region_bytes: u32,
    incarnation: u64,
    /// This process takes part in owners' barriers: its writes may set their markers without a
    /// fence where the owner issues one ([`C_BARRIER`]).
    light_markers: bool,
    previous: Previous,
    keeper: Option<OwnerKeeper>,
    _lock: File,
    _file: File,
}

impl OwnRegion {
    /// Becomes replica `id`: takes its lock, retires any region file an earlier process left
    /// (fencing that file's writers), and publishes a fresh zeroed one.
    pub fn create(dir: &RegionDir, id: ReplicaId, config: &Config) -> Result<OwnRegion, ShmError> {
        assert!(config.validate().is_ok() && config.contains(id));
        let lock_path = dir.lock_path(id);
        let lock = open_private(&lock_path, true)?;
        take_lock(&lock, &lock_path, id)?;
        let path = dir.region_path(id);
        let (previous, last_incarnation) = retire(&path, id)?;
        let incarnation = next_incarnation(last_incarnation);
        let bytes = file_bytes(config);
        let staging = dir
            .path
            .join(format!("replica-{id}.region.new-{}", std::process::id()));
        let file = create_staged(&staging, bytes).map_err(io_error(&staging, "create"))?;
        let mapping = Mapping::map(&file, bytes).map_err(io_error(&staging, "map"))?;
        if let Err(e) = mapping.collapse() {
            eprintln!("replica {id}: region in small pages (no huge pages: {e})");
        }
        mapping.word(C_VERSION).store(VERSION, SeqCst);
        mapping.word(C_CONFIG_HASH).store(config.hash(), SeqCst);
        mapping
            .word(C_REGION_BYTES)
            .store(Layout::new(config).region_bytes as u64, SeqCst);
        mapping
            .word(C_OWNER_PID)
            .store(std::process::id() as u64, SeqCst);
        mapping
            .word(C_OWNER_START)
            .store(procfs::own_start_time(), SeqCst);
        mapping.word(C_INCARNATION).store(incarnation, SeqCst);
        mapping
            .word(C_BARRIER)
            .store(barrier::issues() as u64, SeqCst);
        for lane in [Plane::Replication, Plane::Background] {
            init_robust_mutex(&mapping, life_mutex(lane))
                .map_err(io_error(&staging, "initialise a life mutex"))?;
        }
        let keeper =
            OwnerKeeper::start(&mapping).map_err(io_error(&staging, "lock the owner mutex"))?;
        // Peers trust nothing in a file before the magic; it goes last.
        mapping.word(C_MAGIC).store(MAGIC, SeqCst);
        if let Err(error) = fs::rename(&staging, &path) {
            // Before the mapping goes: the keeper unlocks the mutex inside it.
            keeper.release();
            return Err(io_error(&path, "publish (rename)")(error));
        }
        Ok(OwnRegion {
            id,
            path,
            mapping,
            region_bytes: Layout::new(config).region_bytes,
            incarnation,
            light_markers: barrier::registered(),
            previous,
            keeper: Some(keeper),
            _lock: lock,
            _file: file,
        })
    }

    /// This process's incarnation of the replica: it rises with every restart.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// What was found on disk at start.
    pub fn previous(&self) -> Previous {
        self.previous
    }

    /// The region file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn gate(&self, writer: ReplicaId) -> &AtomicU64 {
        self.mapping.word(line(writer, L_GATE))
    }

    /// Locks `lane`'s life mutex in the calling thread (see the module doc) until the hold is
    /// dropped: a plane's thread holds it while it runs, so that the kernel marks this life
    /// ended as soon as that thread dies. Fails when another thread holds it, or when a thread
    /// already died holding it (this life is over: it must not look alive again).
    pub fn hold_life(&self, lane: Plane) -> io::Result<LifeHold<'_>> {
        let offset = life_mutex(lane);
        if self.mapping.word32(offset).load(SeqCst) & FUTEX_OWNER_DIED != 0 {
            return Err(io::Error::from_raw_os_error(libc::EOWNERDEAD));
        }
        let mutex = self.mapping.at(offset).cast::<libc::pthread_mutex_t>();
        // SAFETY: `mutex` is lane's life mutex, which `create` initialised (robust,
        // process-shared, in 64 reserved bytes) in our own mapping; `self.mapping` keeps it
        // mapped, and the hold borrows `self`, so the mapping outlives the hold's unlock.
        check(unsafe { libc::pthread_mutex_trylock(mutex) })?;
        Ok(LifeHold {
            mutex,
            _region: std::marker::PhantomData,
        })
    }

    /// The doorbell the background plane rests on.
    pub fn background_bell(&self) -> Bell<'_> {
        Bell::in_mapping(&self.mapping, C_BACKGROUND_BELL)
    }

    /// Opens the log area to `writer`.
    pub fn grant(&self, writer: ReplicaId) {
        self.gate(writer).store(GATE_OPEN, SeqCst);
    }

    /// Closes the log area to `writer` and waits until no copy of it is under way.
    pub fn revoke(&self, writer: ReplicaId) {
        self.gate(writer).store(GATE_CLOSED, SeqCst);
        let fenced = barrier_if_advertised(&self.mapping);
        assert!(
            fenced,
            "an owner advertises the barrier only where it issues it"
        );
        fence_writer(&self.mapping, writer, self.id, Plane::Replication);
        fence_writer(&self.mapping, writer, self.id, Plane::Background);
    }

    /// Where region offset `offset` is in this process (the region starts page-aligned).
    pub(crate) fn region(&self, offset: u32) -> *mut u8 {
        self.mapping.at(CONTROL_BYTES + offset as usize)
    }

    /// Copies region bytes at `offset` into `buf` (what `Fabric::load` does on every fabric).
    pub fn load(&self, offset: u32, buf: &mut [u8]) {
        assert!(offset as u64 + buf.len() as u64 <= self.region_bytes as u64);
        // SAFETY: in bounds of our own region (checked above), which `self.mapping` maps for as
        // long as `self` lives; peers write it only atomically (`copy`).
        unsafe { copy_out(self.region(offset), buf) };
    }

    /// The region's 8 bytes at `offset` (8-aligned), little-endian, in one relaxed load (what
    /// `Fabric::load_word` does on every fabric).
    #[inline(always)]
    pub fn load_word(&self, offset: u32) -> u64 {
        assert!(offset as u64 + 8 <= self.region_bytes as u64);
        // The region starts page-aligned, so an 8-aligned offset is an aligned word.
        let word = self.mapping.word(CONTROL_BYTES + offset as usize);
        u64::from_le(word.load(Relaxed))
    }

    /// Copies `bytes` into the region at `offset` (what `Fabric::store` does on every fabric).
    pub fn store(&self, offset: u32, bytes: &[u8]) {
        assert!(offset as u64 + bytes.len() as u64 <= self.region_bytes as u64);
        // SAFETY: in bounds of our own region (checked above), which `self.mapping` maps for as
        // long as `self` lives; peers read it only atomically (`copy`).
        unsafe { copy_in(bytes, self.region(offset)) };
    }
}

impl Drop for OwnRegion {
    fn drop(&mut self) {
        // A clean exit retires the file too, so that peers stop writing into it.
        self.mapping
            .word(C_LAST_INCARNATION)
            .store(self.incarnation, SeqCst);
        self.mapping.word(C_INCARNATION).store(RETIRED, SeqCst);
        for writer in 0..REPLICAS_MAX {
            if writer != self.id {
                self.gate(writer).store(GATE_CLOSED, SeqCst);
            }
        }
        // Before the mapping goes: the keeper unlocks the mutex inside it.
        if let Some(keeper) = self.keeper.take() {
            keeper.release();
        }
    }
}

/// A plane thread's hold of its life mutex ([`OwnRegion::hold_life`]); dropping it (on the same
/// thread: it is not `Send`) releases the mutex, as a plane that stops cleanly does.
pub struct LifeHold<'a> {
    mutex: *mut libc::pthread_mutex_t,
    _region: std::marker::PhantomData<&'a OwnRegion>,
}

impl Drop for LifeHold<'_> {
    fn drop(&mut self) {
        // SAFETY: this thread locked the mutex (`hold_life`): a hold is not `Send` (a raw
        // pointer field), so it drops on the thread that locked; the region's mapping lives for
        // `'a`, which the hold cannot outlive.
        unsafe { libc::pthread_mutex_unlock(self.mutex) };
    }
}

/// The thread that holds the owner mutex of a region for as long as the region lives: the
/// kernel marks the mutex when the process dies. A thread of its own, so that no other thread's
/// robust-mutex list ever points into a mapping that is gone.
struct OwnerKeeper {
    release: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl OwnerKeeper {
    /// Initialises the owner mutex of a fresh control page and has a new thread lock it.
    fn start(mapping: &Mapping) -> io::Result<OwnerKeeper> {
        init_robust_mutex(mapping, C_OWNER_MUTEX)?;
        let address = mapping.at(C_OWNER_MUTEX) as usize;
        let (locked_tx, locked_rx) = std::sync::mpsc::sync_channel(1);
        let (release, released) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mu-region-owner".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let mutex = address as *mut libc::pthread_mutex_t;
                // SAFETY: `mutex` is the robust, process-shared mutex `init_robust_mutex` just
                // initialised in the mapping (64 reserved bytes, 64-aligned). The mapping
                // outlives this thread: `start` waits for this lock, and once `start` returned
                // the keeper, whoever drops the mapping (`OwnRegion::drop`, or `create` on an
                // error) first releases the keeper, which joins this thread.
                let code = unsafe { libc::pthread_mutex_lock(mutex) };
                let _ = locked_tx.send(code);
                if code == 0 {
                    // Until the region is dropped.
                    let _ = released.recv();
                    // SAFETY: as for the lock; this thread locked the mutex (`code == 0`), so
                    // it may unlock it, and the mapping stays until `release` has joined us.
                    unsafe { libc::pthread_mutex_unlock(mutex) };
                }
            })?;
        let code = locked_rx.recv().unwrap_or(libc::EOWNERDEAD);
        check(code)?;
        Ok(OwnerKeeper { release, thread })
    }

    /// Unlocks the mutex (peers then see the owner gone) and waits for the thread to end.
    fn release(self) {
        let _ = self.release.send(());
        let _ = self.thread.join();
    }
}

/// Initialises a robust, process-shared mutex in the 64 reserved bytes at `offset` of a fresh
/// control page.
fn init_robust_mutex(mapping: &Mapping, offset: usize) -> io::Result<()> {
    let mutex = mapping.at(offset).cast::<libc::pthread_mutex_t>();
    // SAFETY: `attr` is initialised before use and destroyed after; `mutex` points at 64
    // reserved, aligned, zeroed bytes of a fresh mapping that nobody else uses yet.
    unsafe {
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        check(libc::pthread_mutexattr_init(&mut attr))?;
        check(libc::pthread_mutexattr_setpshared(
            &mut attr,
            libc::PTHREAD_PROCESS_SHARED,
        ))?;
        check(libc::pthread_mutexattr_setrobust(
            &mut attr,
            libc::PTHREAD_MUTEX_ROBUST,
        ))?;
        let initialised = check(libc::pthread_mutex_init(mutex, &attr));
        libc::pthread_mutexattr_destroy(&mut attr);
        initialised
    }
}

fn check(code: libc::c_int) -> io::Result<()> {
    match code {
        0 => Ok(()),
        code => Err(io::Error::from_raw_os_error(code)),
    }
}

/// Whether the owner of the region mapped by `mapping` is alive: its owner mutex held, and
/// none of its life mutexes marked by the kernel as left by a dead thread.
#[inline]
fn owner_alive(mapping: &Mapping) -> bool {
    life_words(mapping)
        .iter()
        .all(|&(word, required)| live_word(word.load(SeqCst), required))
}

/// The owner mutex's word, which a live owner must hold, then the planes' life mutexes' words,
/// which it holds only while those planes run.
#[inline]
fn life_words(mapping: &Mapping) -> [(&AtomicU32, bool); 1 + LANES] {
    [
        (mapping.word32(C_OWNER_MUTEX), true),
        (mapping.word32(life_mutex(Plane::Replication)), false),
        (mapping.word32(life_mutex(Plane::Background)), false),
    ]
}

/// True unless a life word's value says its life ended: marked owner-died by the kernel, or, for
/// a `required` word, not held.
#[inline]
fn live_word(value: u32, required: bool) -> bool {
    value & FUTEX_OWNER_DIED == 0 && (!required || value & FUTEX_TID_MASK != 0)
}

/// Creates a fresh, zeroed `0600` file of `len` bytes at `staging` (replacing a leftover one of
/// this process), to be renamed into place once initialised: readers never see it half made.
pub fn create_staged(staging: &Path, len: usize) -> io::Result<File> {
    let _ = fs::remove_file(staging);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(staging)?;
    file.set_len(len as u64)?;
    Ok(file)
}

fn open_private(path: &Path, create: bool) -> Result<File, ShmError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_error(path, "open"))?;
    let meta = file.metadata().map_err(io_error(path, "stat"))?;
    check_owner(path, &meta, 0o600)?;
    Ok(file)
}

/// Between closing gates in `mapping` and reading its writers' markers: issues the barrier where
/// the file's owner advertised it ([`C_BARRIER`]), so that a writer that set its marker without a
/// fence either saw a gate closed or has its marker visible now. False, having issued nothing,
/// when the file asks for the barrier and this process cannot issue it.
fn barrier_if_advertised(mapping: &Mapping) -> bool {
    if mapping.word(C_BARRIER).load(SeqCst) != 1 {
        return true;
    }
    if !barrier::issues() {
        return false;
    }
    barrier::fence_everyone();
    true
}

/// How long [`OwnRegion::create`] waits for the lock of a replica that seems to run before it
/// says so. A lock can outlive the region that took it for an instant: a child that any thread of
/// the holder's process forked meanwhile holds a copy of the lock's descriptor until it execs
/// (close-on-exec closes it then), and the lock belongs to the open file that copy shares
/// (`restart_waits_out_a_child_being_spawned` reproduces it: without the wait, an in-process
/// restart is refused while another thread spawns a child, as a test was in CI). A second process
/// of a running replica is refused this much later.
const LOCK_PATIENCE: Duration = Duration::from_millis(200);

/// Takes replica `id`'s lock on `lock` (the file at `path`), waiting up to [`LOCK_PATIENCE`]
/// while another open of the file holds it.
fn take_lock(lock: &File, path: &Path, id: ReplicaId) -> Result<(), ShmError> {
    let deadline = Instant::now() + LOCK_PATIENCE;
    loop {
        // SAFETY: flock takes a descriptor and flags, no memory; `lock` is a file we hold open
        // across the call.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_error(path, "lock")(error));
        }
        if Instant::now() >= deadline {
            return Err(ShmError::AlreadyRunning {
                id,
                lock: path.to_path_buf(),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Retires the region file an earlier process of this replica left, if any: marks it retired,
/// closes every gate and waits out (or fences) the writers still copying into it. Returns what
/// was found and its incarnation.
fn retire(path: &Path, id: ReplicaId) -> Result<(Previous, u64), ShmError> {
    let file = match open_private(path, false) {
        Ok(file) => file,
        Err(ShmError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
            return Ok((Previous::Fresh, 0));
        }
        Err(e) => return Err(e),
    };
    let len = file.metadata().map_err(io_error(path, "stat"))?.len() as usize;
    if len < CONTROL_BYTES || len % page_size() != 0 {
        // Not one of ours in a usable state: nobody can be writing through it meaningfully.
        return Ok((
            Previous::Reclaimed {
                pid: 0,
                incarnation: 0,
            },
            0,
        ));
    }
    let old = Mapping::map(&file, len).map_err(io_error(path, "map"))?;
    if old.word(C_MAGIC).load(SeqCst) != MAGIC {
        return Ok((
            Previous::Reclaimed {
                pid: 0,
                incarnation: 0,
            },
            0,
        ));
    }
    let incarnation = old.word(C_INCARNATION).swap(RETIRED, SeqCst);
    let incarnation = if incarnation == RETIRED {
        old.word(C_LAST_INCARNATION).load(SeqCst) // Retired by a clean exit.
    } else {
        incarnation
    };
    for writer in 0..REPLICAS_MAX {
        old.word(line(writer, L_GATE)).store(GATE_CLOSED, SeqCst);
    }
    if !barrier_if_advertised(&old) {
        return Err(ShmError::Io {
            path: path.to_path_buf(),
            action: "fence the writers of the earlier process's file (its writers set \
                     their markers without a fence; membarrier is refused here)",
            error: io::Error::from(io::ErrorKind::Unsupported),
        });
    }
    for writer in (0..REPLICAS_MAX).filter(|&writer| writer != id) {
        fence_writer(&old, writer, id, Plane::Replication);
        fence_writer(&old, writer, id, Plane::Background);
    }
    let pid = old.word(C_OWNER_PID).load(SeqCst) as u32;
    Ok((Previous::Reclaimed { pid, incarnation }, incarnation))
}

/// Incarnations rise across restarts even when a file was deleted in between: never below the
/// clock's seconds.
fn next_incarnation(last: u64) -> u64 {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (last + 1).max(seconds).min(u32::MAX as u64)
}

/// Waits until `writer`'s `lane` has no copy under way into the region of `mapping` (whose
/// owner is `owner`). A marker of a dead writer or of an earlier incarnation is cleared; a
/// writer whose copying thread is stopped in the middle of a copy is killed, the only way to
/// fence it.
fn fence_writer(mapping: &Mapping, writer: ReplicaId, owner: ReplicaId, lane: Plane) {
    let marker_word = mapping.word(inflight(writer, lane));
    let mut spins = 0u32;
    loop {
        let marker = marker_word.load(SeqCst);
        if marker == 0 {
            return;
        }
        spins += 1;
        if spins < 1000 {
            std::hint::spin_loop();
            continue;
        }
        let current = mapping.word(line(writer, L_INCARNATION)).load(SeqCst);
        let pid = mapping.word(line(writer, L_PID)).load(SeqCst) as u32;
        let start = mapping.word(line(writer, L_START)).load(SeqCst);
        let tid = mapping.word(copier(writer, lane)).load(SeqCst) as u32;
        if marker != current {
            // Left by an earlier process of that replica, which is gone (one live process per
            // id): nothing more of it will land.
            let _ = marker_word.compare_exchange(marker, 0, SeqCst, SeqCst);
            continue;
        }
        if pid == std::process::id() {
            std::thread::yield_now(); // A thread of ours: it finishes its copy.
            continue;
        }
        match procfs::thread_liveness(pid, start, tid) {
            Liveness::Running => std::thread::yield_now(),
            Liveness::Dead => {
                let _ = marker_word.compare_exchange(marker, 0, SeqCst, SeqCst);
            }
            Liveness::Stopped => {
                eprintln!(
                    "replica {owner}: replica {writer} (pid {pid}) is stopped in the middle of a \
                     write into this log after losing its permission; killing it to fence the \
                     write (shared memory cannot refuse a resumed copy)"
                );
                // SAFETY: kill(2) takes two integers and touches no memory of ours. Which
                // process it hits is a matter of correctness, not of soundness: the pid's start
                // time, just checked, makes it the stopped writer (a pid is reused only after
                // its process was reaped).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                std::thread::yield_now();
            }
        }
    }
}

/// The calling thread's kernel id, cached per thread.
fn current_tid() -> u64 {
    thread_local! {
        static TID: u64 = {
            // SAFETY: gettid has no preconditions.
            unsafe { libc::gettid() as u64 }
        };
    }
    TID.with(|tid| *tid)
}

/// A peer's region as one plane of this replica sees it.
struct Peer {
    mapping: Option<Arc<Mapping>>,
    incarnation: u64,
    /// The peer runs another cluster configuration: only its region header may be read, so
    /// that the core sees the mismatch and judges it (a refusal can be final).
    header_only: bool,
    /// The connection reached the mapped life: a later life of the peer (a restart, a new
    /// file) is reached only after a `reconnect`, and a post meanwhile fails and breaks the
    /// connection (contract rule 10).
    bound: bool,
    /// Writes set their marker without a fence: this process is registered for the owner's
    /// barrier, and the owner issues it ([`C_BARRIER`]).
    light_markers: bool,
    broken: bool,
    waiting: usize,
    refusal: Option<String>,
}

impl Peer {
    const fn new() -> Peer {
        Peer {
            mapping: None,
            incarnation: 0,
            header_only: false,
            bound: false,
            light_markers: false,
            broken: false,
            waiting: 0,
            refusal: None,
        }
    }
}

/// One plane's fabric over shared memory. Each plane gets its own (own connections, own
/// completion queue); both share the replica's [`OwnRegion`].
pub struct ShmFabric {
    me: ReplicaId,
    lane: Plane,
    config: Config,
    layout: Layout,
    dir: RegionDir,
    own: Arc<OwnRegion>,
    peers: [Peer; REPLICAS_MAX as usize],
    completions: VecDeque<(ReplicaId, Completion)>,
}

impl ShmFabric {
    /// The fabric of one plane (`lane`) of replica `own`'s process.
    pub fn new(dir: RegionDir, config: Config, own: Arc<OwnRegion>, lane: Plane) -> ShmFabric {
        ShmFabric {
            me: own.id,
            lane,
            config,
            layout: Layout::new(&config),
            dir,
            own,
            peers: [const { Peer::new() }; REPLICAS_MAX as usize],
            completions: VecDeque::with_capacity(OUTSTANDING_MAX * REPLICAS_MAX as usize),
        }
    }

    /// Why `peer` was last refused (another configuration, a file of another user), if it was.
    pub fn refusal(&self, peer: ReplicaId) -> Option<&str> {
        self.peers.get(peer as usize)?.refusal.as_deref()
    }

    /// Rule 13: the core's checks, then the connection's.
    fn check_post(&self, op: Op, peer: ReplicaId, range: (u32, u32, u32)) -> Result<(), PostError> {
        mu_nostd::check_post(&self.layout, self.me, self.lane, op, peer, range)?;
        let state = &self.peers[peer as usize];
        if state.broken {
            return Err(PostError::Broken);
        }
        if state.waiting >= OUTSTANDING_MAX {
            return Err(PostError::Busy);
        }
        Ok(())
    }

    /// Maps `peer`'s current region file, checking that it is a region of this cluster whose
    /// owner runs. The control page is checked first, so that probing a dead peer (every read
    /// period, by the failure detector) never maps and populates its whole region.
    fn connect(&mut self, peer: ReplicaId) -> Result<(), String> {
        let path = self.dir.region_path(peer);
        let file = open_private(&path, false).map_err(|e| e.to_string())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len() as usize;
        if len < CONTROL_BYTES || len % page_size() != 0 {
            return Err(format!("{}: not a region file", path.display()));
        }
        let control = Mapping::map(&file, CONTROL_BYTES).map_err(|e| e.to_string())?;
        if control.word(C_MAGIC).load(SeqCst) != MAGIC
            || control.word(C_VERSION).load(SeqCst) != VERSION
        {
            return Err(format!(
                "{}: not a region file of this version",
                path.display()
            ));
        }
        let incarnation = control.word(C_INCARNATION).load(SeqCst);
        // The other plane's mapping of this life serves even once its owner died, as a mapping
        // of one's own made before would: every post then finds the owner dead in a load, where
        // a connect would open and map the file again (a replica that took over from a leader
        // it never wrote to tried that on every post of its prepare).
        let held = self.dir.held_mapping(peer, incarnation);
        let map_whole = |held: Option<Arc<Mapping>>| match held {
            Some(mapping) => Ok(mapping),
            None => Mapping::map(&file, len)
                .map(|mapping| self.dir.share_mapping(peer, incarnation, mapping))
                .map_err(|e| e.to_string()),
        };
        let (theirs, ours) = (control.word(C_CONFIG_HASH).load(SeqCst), self.config.hash());
        let region = control.word(C_REGION_BYTES).load(SeqCst) as usize;
        if theirs != ours {
            let reason = format!(
                "replica {peer} runs another cluster configuration (config hash {theirs:016x}, \
                 ours {ours:016x}): check that every replica uses the same [cluster] section"
            );
            eprintln!("replica {}: {reason}", self.me);
            if len < CONTROL_BYTES + HEADER_BYTES as usize {
                return Err(format!("{}: not a region file", path.display()));
            }
            if held.is_none() && (incarnation == RETIRED || !owner_alive(&control)) {
                return Err(format!("replica {peer} is not running"));
            }
            drop(control);
            let mapping = map_whole(held)?;
            let state = &mut self.peers[peer as usize];
            state.mapping = Some(mapping);
            state.incarnation = incarnation;
            state.header_only = true;
            state.refusal = Some(reason);
            return Ok(());
        }
        if region != self.layout.region_bytes as usize || CONTROL_BYTES + region > len {
            return Err(format!("{}: region size does not match", path.display()));
        }
        if held.is_none() && (incarnation == RETIRED || !owner_alive(&control)) {
            return Err(format!("replica {peer} is not running"));
        }
        let light_markers = self.own.light_markers && control.word(C_BARRIER).load(SeqCst) == 1;
        drop(control);
        let mapping = map_whole(held)?;
        // Tell the owner who writes through this line, for its fencing.
        let me = self.me;
        mapping
            .word(line(me, L_PID))
            .store(std::process::id() as u64, SeqCst);
        mapping
            .word(line(me, L_START))
            .store(procfs::own_start_time(), SeqCst);
        mapping
            .word(line(me, L_INCARNATION))
            .store(self.own.incarnation, SeqCst);
        let state = &mut self.peers[peer as usize];
        state.mapping = Some(mapping);
        state.incarnation = incarnation;
        state.header_only = false;
        state.light_markers = light_markers;
        Ok(())
    }

    /// The peer's mapping and its connection (the incarnation, whether only its header may be
    /// read, how writes mark themselves), if its owner runs the incarnation this connection was
    /// made to; a peer that restarted (a new
    /// file) is mapped anew once the connection was reconnected (rule 10: nothing posted on a
    /// connection to an earlier life lands in the new one).
    // Inlined with the check of a mapping still current, the common case on every post; the
    // rest is out of line (see `mu-bench instructions`).
    #[inline(always)]
    fn live_mapping(&mut self, peer: ReplicaId) -> Option<(&Mapping, &Peer)> {
        let state = &self.peers[peer as usize];
        let replaced = state
            .mapping
            .as_ref()
            .is_none_or(|m| m.word(C_INCARNATION).load(SeqCst) != state.incarnation);
        if replaced {
            self.remap(peer)?;
        }
        let state = &self.peers[peer as usize];
        let mapping = state.mapping.as_deref()?;
        owner_alive(mapping).then_some((mapping, state))
    }

    /// `live_mapping` for a peer whose mapping is gone or of another life: maps its current
    /// life unless the connection is bound to the earlier one. `None` when it cannot be reached.
    #[inline(never)]
    fn remap(&mut self, peer: ReplicaId) -> Option<()> {
        if self.peers[peer as usize].bound {
            return None;
        }
        let outcome = self.connect(peer);
        let state = &mut self.peers[peer as usize];
        state.bound = outcome.is_ok();
        match outcome {
            Ok(()) if state.header_only => {}
            Ok(()) => state.refusal = None,
            Err(reason) => {
                if state.refusal.as_deref() != Some(&reason) && !reason.contains("No such file") {
                    eprintln!("replica {}: cannot reach replica {peer}: {reason}", self.me);
                }
                state.refusal = Some(reason);
                return None;
            }
        }
        Some(())
    }

    // Inlined into every post (see `mu-bench instructions`).
    #[inline]
    fn complete(&mut self, peer: ReplicaId, wr_id: u64, status: Status) {
        let state = &mut self.peers[peer as usize];
        if status != Status::Ok {
            state.broken = true;
        }
        state.waiting += 1;
        assert!(state.waiting <= OUTSTANDING_MAX);
        assert!(self.completions.len() < self.completions.capacity());
        self.completions
            .push_back((peer, Completion { wr_id, status }));
    }

    /// Copies into `peer`'s region under the in-flight marker; the gate is checked for writes
    /// that touch the log area.
    fn copy_to_peer(&mut self, peer: ReplicaId, local: u32, remote: u32, len: u32) -> Status {
        let gated = self.layout.touches_log_area(remote, len);
        let (me, incarnation, lane) = (self.me, self.own.incarnation, self.lane);
        let src = self.own.region(local);
        // The connection as `live_mapping` left it: a remap there may reach another life.
        let Some((mapping, state)) = self.live_mapping(peer) else {
            return Status::Failed;
        };
        if state.header_only {
            return Status::Failed; // Another cluster's region: never written.
        }
        let (expected, light) = (state.incarnation, state.light_markers);
        let copier = mapping.word(copier(me, lane));
        let tid = current_tid();
        if copier.load(Relaxed) != tid {
            copier.store(tid, SeqCst);
        }
        let inflight = mapping.word(inflight(me, lane));
        if light {
            // The owner's barrier orders this store before the loads below (`barrier`); the
            // compiler must keep them in that order too.
            inflight.store(incarnation, Relaxed);
            compiler_fence(SeqCst);
        } else {
            inflight.store(incarnation, SeqCst);
        }
        let status = if mapping.word(C_INCARNATION).load(SeqCst) != expected {
            Status::Failed // Retired while we looked: the peer restarted.
        } else if gated && mapping.word(line(me, L_GATE)).load(SeqCst) != GATE_OPEN {
            Status::Denied
        } else {
            let dst = mapping.at(CONTROL_BYTES + remote as usize);
            // SAFETY: `write` checked `local..local + len` and `remote..remote + len` against
            // the region size; our own mapping holds the whole region, and `connect` mapped the
            // peer's whole file only after checking that it holds `CONTROL_BYTES` plus a region
            // of that size (a header-only mapping returned above). Both mappings live across
            // the call (`self.own`, and the peer's `Arc` borrowed from `self`), are readable and
            // writable, and every process accesses them only atomically (`mem`).
            unsafe { copy(src, dst, len as usize) };
            Status::Ok
        };
        inflight.store(0, Release);
        if lane == Plane::Background && status == Status::Ok {
            Bell::in_mapping(mapping, C_BACKGROUND_BELL).ring();
        }
        status
    }

    /// Moves waiting completions into `completions` (`Fabric::poll` when some wait).
    fn take_completions(&mut self, completions: &mut [Completion]) -> usize {
        let mut n = 0;
        while n < completions.len() {
            let Some((peer, completion)) = self.completions.pop_front() else {
                break;
            };
            self.peers[peer as usize].waiting -= 1;
            completions[n] = completion;
            n += 1;
        }
        n
    }
}

impl Fabric for ShmFabric {
    fn write(
        &mut self,
        peer: ReplicaId,
        local_offset: u32,
        remote_offset: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<(), PostError> {
        // The copy is done either way: what `write_done` would answer is queued for `poll`.
        if let Some(status) = self.write_done(peer, local_offset, remote_offset, len, wr_id)? {
            self.complete(peer, wr_id, status);
        }
        Ok(())
    }

    /// The copy is done within every post; its completion is answered at once unless one
    /// of an earlier post to `peer` waits to be polled (the order of rule 3).
    fn write_done(
        &mut self,
        peer: ReplicaId,
        local_offset: u32,
        remote_offset: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<Option<Status>, PostError> {
        self.check_post(Op::Write, peer, (local_offset, remote_offset, len))?;
        let status = self.copy_to_peer(peer, local_offset, remote_offset, len);
        let state = &mut self.peers[peer as usize];
        if state.waiting > 0 {
            self.complete(peer, wr_id, status);
            return Ok(None);
        }
        if status != Status::Ok {
            state.broken = true;
        }
        Ok(Some(status))
    }

    fn read(
        &mut self,
        peer: ReplicaId,
        remote_offset: u32,
        local_offset: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<(), PostError> {
        self.check_post(Op::Read, peer, (local_offset, remote_offset, len))?;
        let dst = self.own.region(local_offset);
        let status = match self.live_mapping(peer) {
            Some((_, state))
                if state.header_only && remote_offset as u64 + len as u64 > HEADER_BYTES as u64 =>
            {
                Status::Failed
            }
            Some((mapping, _)) => {
                let src = mapping.at(CONTROL_BYTES + remote_offset as usize);
                // SAFETY: `local_offset..+len` and `remote_offset..+len` were checked against
                // the region size above; a full mapping of the peer holds a whole region
                // (checked in `connect`), and a header-only one is only read below
                // `HEADER_BYTES` (the arm above); both mappings live across the call, are
                // readable and writable, and are accessed only atomically (`mem`).
                unsafe { copy(src, dst, len as usize) };
                Status::Ok
            }
            None => Status::Failed,
        };
        self.complete(peer, wr_id, status);
        Ok(())
    }

    #[inline]
    fn poll(&mut self, completions: &mut [Completion]) -> usize {
        if self.completions.is_empty() {
            return 0; // An idle poll's answer, inlined into it.
        }
        self.take_completions(completions)
    }

    fn grant(&mut self, peer: ReplicaId) {
        if self.config.contains(peer) && peer != self.me {
            self.own.grant(peer);
        }
    }

    fn revoke(&mut self, peer: ReplicaId) {
        if self.config.contains(peer) && peer != self.me {
            self.own.revoke(peer);
        }
    }

    fn reconnect(&mut self, peer: ReplicaId) -> Result<(), PostError> {
        if !self.config.contains(peer) || peer == self.me {
            return Err(PostError::NoSuchPeer);
        }
        self.completions.retain(|&(p, _)| p != peer);
        let state = &mut self.peers[peer as usize];
        state.waiting = 0;
        state.broken = false;
        state.bound = false;
        // The mapping stays: the next post remaps only if the peer restarted with a new file.
        Ok(())
    }

    fn load(&self, offset: u32, buf: &mut [u8]) {
        self.own.load(offset, buf);
    }

    #[inline(always)]
    fn load_word(&self, offset: u32) -> u64 {
        self.own.load_word(offset)
    }

    fn store(&mut self, offset: u32, bytes: &[u8]) {
        self.own.store(offset, bytes);
    }

    /// The kernel's word: the owner mutex of the mapped life is marked owner-died (or was
    /// released by a clean exit), or the file was retired by a successor.
    #[inline]
    fn ended_life(&self, peer: ReplicaId) -> Option<u32> {
        let state = self.peers.get(peer as usize)?;
        let mapping = state.mapping.as_deref()?;
        let retired = mapping.word(C_INCARNATION).load(SeqCst) != state.incarnation;
        (retired || !owner_alive(mapping)).then_some(state.incarnation as u32)
    }
}

/// How often the life watch looks for peers that (re)started, and drops the mappings of ended
/// lives.
const WATCH_RESCAN: Duration = Duration::from_millis(10);

/// What the background plane rests on, besides its doorbell: every peer's life mutexes, as a
/// waiter of them would. When a peer's thread dies holding one, the kernel marks it owner-died
/// and wakes a waiter as it processes the dead thread's robust list, early in the exit, before
/// the process's memory is torn down (a pidfd becomes readable only after that). So a resting
/// background plane is woken by the death itself, with no thread in between, and takes it
/// (`ended_life`) in the poll that follows. The kernel wakes one sleeper per mutex: the plane it
/// woke wakes the others (the other replicas' background planes).
///
/// # Invariants
/// - A life is reported (its rest returns at once) at most once: `reported` holds the last life
///   reported ended per peer, and an ended life is not armed again.
/// - Files are (re)opened, and the mappings of ended lives dropped, only at a rescan: opening
///   and mapping a file, or unmapping one (a TLB shootdown across the cores), costs tens of µs
///   on the core of a plane that has a death to act on.
pub struct LifeWatch {
    dir: RegionDir,
    me: ReplicaId,
    watched: Vec<Option<Watched>>,
    reported: Vec<Option<u64>>,
    rescan_at: Instant,
    /// The words of the next sleep, kept between rests so that a rest allocates nothing.
    waits: Vec<FutexWaitv>,
}

/// The most words one `futex_waitv` takes.
const FUTEX_WAITV_MAX: usize = 128;
/// The most words a rest sleeps on: every peer's life words, and the doorbell.
const REST_WORDS_MAX: usize = (REPLICAS_MAX as usize - 1) * (1 + LANES) + 1;
const _: () = assert!(REST_WORDS_MAX <= FUTEX_WAITV_MAX);

impl LifeWatch {
    /// Watches the peers of replica `me` among `replicas` in `dir`.
    pub fn new(dir: RegionDir, replicas: u8, me: ReplicaId) -> LifeWatch {
        assert!(me < replicas && replicas <= REPLICAS_MAX);
        LifeWatch {
            dir,
            me,
            watched: (0..replicas).map(|_| None).collect(),
            reported: vec![None; replicas as usize],
            rescan_at: Instant::now(),
            waits: Vec::with_capacity(REST_WORDS_MAX),
        }
    }

    /// Sleeps until `bell` rings after `seen`, a watched peer's life ends, or `timeout` passes.
    /// Returns at once, true, when it finds a life ended that it had not reported.
    pub fn rest(&mut self, bell: Bell<'_>, seen: u32, timeout: Duration) -> bool {
        let now = Instant::now();
        let rescan = now >= self.rescan_at;
        if rescan {
            self.rescan_at = now + WATCH_RESCAN;
        }
        let waits = &mut self.waits;
        waits.clear();
        let mut ended_now = false;
        for peer in (0..self.watched.len() as ReplicaId).filter(|&p| p != self.me) {
            let last_reported = self.reported[peer as usize];
            let slot = &mut self.watched[peer as usize];
            let ended = |w: &Watched| last_reported == Some(w.incarnation);
            if rescan && slot.as_ref().is_none_or(ended) {
                *slot = open_owner(&self.dir, peer, last_reported);
            }
            let Some(w) = slot.as_ref().filter(|w| !ended(w)) else {
                continue;
            };
            let peer_waits = waits.len();
            for (word, required) in life_words(&w.control) {
                match arm(word, required) {
                    Arm::Sleep(value) => waits.push(FutexWaitv::new(word, value)),
                    Arm::Skip => {}
                    Arm::Ended => {
                        waits.truncate(peer_waits);
                        self.reported[peer as usize] = Some(w.incarnation);
                        // The kernel woke one sleeper of this word; this one may not be it.
                        wake_all(word);
                        ended_now = true;
                        break;
                    }
                }
            }
        }
        if !ended_now {
            bell.sleep_or(seen, waits, timeout);
        }
        ended_now
    }
}

/// A peer's life under watch: its incarnation and its control page (the owner mutex).
struct Watched {
    incarnation: u64,
    control: Mapping,
}

/// The futex word's bit that tells the owner's exit (or unlock) to wake a sleeper.
const FUTEX_WAITERS: u32 = 0x8000_0000;

/// What the watch does with one life word.
enum Arm {
    /// Sleep while it holds this value.
    Sleep(u32),
    /// Nothing to wait for: a plane's mutex that nobody holds.
    Skip,
    /// The life ended.
    Ended,
}

/// Marks `word` (a held life mutex, see [`life_words`]) as having a sleeper, so that its
/// holder's death wakes one.
fn arm(word: &AtomicU32, required: bool) -> Arm {
    loop {
        let value = word.load(SeqCst);
        if !live_word(value, required) {
            return Arm::Ended;
        }
        if value & FUTEX_TID_MASK == 0 {
            return Arm::Skip;
        }
        let armed = value | FUTEX_WAITERS;
        if value == armed || word.compare_exchange(value, armed, SeqCst, SeqCst).is_ok() {
            return Arm::Sleep(armed);
        }
    }
}

/// Wakes every sleeper of `word`.
fn wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a live, aligned 32-bit word; it only wakes sleepers.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// `peer`'s current control page, unless its file is missing, retired, of another version, or
/// of the life already reported ended.
fn open_owner(dir: &RegionDir, peer: ReplicaId, reported: Option<u64>) -> Option<Watched> {
    let file = open_private(&dir.region_path(peer), false).ok()?;
    let control = Mapping::map(&file, CONTROL_BYTES).ok()?;
    if control.word(C_MAGIC).load(SeqCst) != MAGIC
        || control.word(C_VERSION).load(SeqCst) != VERSION
    {
        return None;
    }
    let incarnation = control.word(C_INCARNATION).load(SeqCst);
    if incarnation == RETIRED || reported == Some(incarnation) {
        return None;
    }
    Some(Watched {
        incarnation,
        control,
    })
}
