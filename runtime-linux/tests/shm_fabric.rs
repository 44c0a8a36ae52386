//! Adversarial tests of the shared-memory fabric (`runtime_linux::shm`) against the `Fabric`
//! contract (`mu-nostd/src/fabric.rs`, `docs/fabric-contract.md`) and the module's own promises:
//! round trips and completion order, bounds and peer ids, the outstanding-work bound, log-area
//! permissions, fencing by `revoke` of writers killed or stopped in the middle of a copy,
//! restarts, dead owners, file permissions, and configuration mismatches.
//!
//! Multi-process tests re-run this test binary as a child process: the child "test"
//! `child_process` is ignored in normal runs and does nothing unless `MU_SHMTEST_CHILD` names a
//! role. Nothing here passes or fails on timing: deadlines (many seconds) only turn a hang into a
//! failure, and sleeps only give a misbehaving writer the chance to show itself.
//!
//! Randomised tests print their seed; set `MU_SHMTEST_SEED` to replay one.

// Every `unsafe` block states why it is sound; every `unsafe fn` says what its callers must
// uphold, and its body spells out its own unsafe operations.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mu_nostd::{Completion, Config, Fabric, Layout, PostError, ReplicaId, Status};
use runtime_linux::shm::{
    inspect_writer, LifeWatch, OwnRegion, Plane, Previous, RegionDir, ShmError, ShmFabric,
    CONTROL_BYTES, OUTSTANDING_MAX,
};

/// Generous limit for anything that could hang (a revoke, reaping a child, a child's start).
const DEADLINE: Duration = Duration::from_secs(60);

const CHILD_TEST: &str = "child_process";
const CHILD_ENV: &str = "MU_SHMTEST_CHILD";
const DIR_ENV: &str = "MU_SHMTEST_DIR";
const ID_ENV: &str = "MU_SHMTEST_ID";
const READY: &str = "MU-SHMTEST-READY";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A fresh cluster directory under `/dev/shm`, removed on drop.
struct TestDir {
    path: PathBuf,
}

impl TestDir {
    fn new(name: &str) -> TestDir {
        let path = PathBuf::from(format!("/dev/shm/mu-shmtest-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        TestDir { path }
    }

    fn open(&self) -> RegionDir {
        RegionDir::open(&self.path).expect("open the region directory")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A configuration whose log area is 8 MiB, so that one copy into it takes a while.
fn big_config() -> Config {
    let config = Config {
        slot_count: 8192,
        slot_size: 1024,
        ..Config::new(3)
    };
    config.validate().expect("big config is valid");
    config
}

/// A replication-plane fabric (the plane that writes logs).
/// The regions of replicas 0, 1 and 2.
fn three_regions(dir: &RegionDir, config: &Config) -> [Arc<OwnRegion>; 3] {
    [0, 1, 2].map(|id| Arc::new(OwnRegion::create(dir, id, config).unwrap()))
}

fn fabric(dir: &RegionDir, config: Config, own: &Arc<OwnRegion>) -> ShmFabric {
    ShmFabric::new(dir.clone(), config, own.clone(), Plane::Replication)
}

/// What every fencing test starts from: replica 1's region (the big log) in a fresh directory, its
/// replication-plane fabric, a seeded RNG and the pattern a writer copies into the log.
struct Fixture {
    tmp: TestDir,
    dir: RegionDir,
    config: Config,
    layout: Layout,
    r1: Arc<OwnRegion>,
    f1: ShmFabric,
    rng: Rng,
    written: Vec<u8>,
}

fn fencing_fixture(dir_name: &str, test: &str) -> Fixture {
    let tmp = TestDir::new(dir_name);
    let dir = tmp.open();
    let config = big_config();
    let layout = Layout::new(&config);
    let r1 = Arc::new(OwnRegion::create(&dir, 1, &config).unwrap());
    let f1 = fabric(&dir, config, &r1);
    Fixture {
        tmp,
        dir,
        config,
        layout,
        r1,
        f1,
        rng: Rng::new(test),
        written: pattern(layout.log_bytes() as usize, 7),
    }
}

/// Every completion now waiting, polled a few at a time (to exercise partial polls).
fn drain(fabric: &mut ShmFabric) -> Vec<Completion> {
    let mut all = Vec::new();
    let mut buf = [Completion::EMPTY; 3];
    loop {
        let n = fabric.poll(&mut buf);
        if n == 0 {
            return all;
        }
        all.extend_from_slice(&buf[..n]);
    }
}

/// The one completion a single post produced.
fn one(fabric: &mut ShmFabric) -> Completion {
    let got = drain(fabric);
    assert_eq!(got.len(), 1, "expected exactly one completion, got {got:?}");
    got[0]
}

fn load(fabric: &ShmFabric, offset: u32, len: u32) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    fabric.load(offset, &mut buf);
    buf
}

/// Deterministic, position-dependent bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(131) ^ (i >> 9) ^ (seed as usize * 37)) as u8 | 1)
        .collect()
}

/// Bytes that differ from `pattern(len, seed)` at every position.
fn sentinel(len: usize, seed: u8, round: u8) -> Vec<u8> {
    pattern(len, seed)
        .into_iter()
        .map(|b| b ^ (0x80 | (round & 0x7f)))
        .collect()
}

/// Compares large buffers without dumping them.
fn assert_same(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    if actual != expected {
        let first = actual
            .iter()
            .zip(expected)
            .position(|(a, e)| a != e)
            .unwrap();
        let count = actual.iter().zip(expected).filter(|(a, e)| a != e).count();
        panic!(
            "{what}: {count} of {} bytes differ, first at byte {first} (found {:#04x}, expected \
             {:#04x})",
            actual.len(),
            actual[first],
            expected[first]
        );
    }
}

/// Runs `f` on its own thread and fails the test if it does not return within [`DEADLINE`]
/// (the thread is then left behind: a hang must not hang the test run).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => panic!("{what} did not return within {DEADLINE:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// `Fabric::revoke` under the watchdog; the fabric comes back.
fn revoke_within(mut fabric: ShmFabric, peer: ReplicaId) -> ShmFabric {
    within("revoke", move || {
        fabric.revoke(peer);
        fabric
    })
}

/// A small xorshift generator; the seed is printed so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("MU_SHMTEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64;
                nanos ^ ((std::process::id() as u64) << 32)
            });
        eprintln!("{test}: seed {seed} (set MU_SHMTEST_SEED={seed} to replay)");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Whether `writer` has a copy under way into the region file at `path`, on any plane.
fn copying(path: &Path, writer: ReplicaId) -> bool {
    let line = inspect_writer(path, writer).expect("read the writer line");
    line.in_flight.iter().any(|&f| f)
}

fn waitpid(pid: i32, flags: i32) -> Option<i32> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes one `int` through the pointer, which points at `status`, a
        // live local; `pid` is our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == pid {
            return Some(status);
        }
        if r == 0 {
            return None;
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINTR) {
            panic!("waitpid({pid}): {error}");
        }
    }
}

fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else if libc::WIFSTOPPED(status) {
        format!("stopped by signal {}", libc::WSTOPSIG(status))
    } else {
        format!("status {status:#x}")
    }
}

/// This test binary re-run as a child process in a role; killed and reaped on drop.
struct ChildProc {
    pid: i32,
    reaped: bool,
    lines: mpsc::Receiver<String>,
    _child: std::process::Child,
}

impl ChildProc {
    fn spawn(role: &str, dir: &Path, id: ReplicaId) -> ChildProc {
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .args(["--exact", CHILD_TEST, "--nocapture", "--ignored"])
            .env(CHILD_ENV, role)
            .env(DIR_ENV, dir)
            .env(ID_ENV, id.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child process");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildProc {
            pid: child.id() as i32,
            reaped: false,
            lines,
            _child: child,
        }
    }

    /// Waits for the child's line starting with `prefix`; returns it.
    fn expect_line(&self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(DEADLINE) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(e) => panic!(
                    "child {} never printed {prefix:?} ({e:?}); see its stderr above",
                    self.pid
                ),
            }
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child, which is not reaped yet (its pid cannot be reused).
        let r = unsafe { libc::kill(self.pid, signal) };
        assert_eq!(r, 0, "kill({}, {signal})", self.pid);
    }

    /// Blocks (under the watchdog) until the child changes state as `flags` asks.
    fn wait(&mut self, flags: i32) -> i32 {
        let pid = self.pid;
        let status = within("waitpid", move || waitpid(pid, flags)).expect("waitpid");
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            self.reaped = true;
        }
        status
    }

    /// The child's exit status if it has ended, without blocking.
    fn try_wait(&mut self) -> Option<i32> {
        let status = waitpid(self.pid, libc::WNOHANG)?;
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            self.reaped = true;
        }
        Some(status)
    }

    fn kill_and_reap(&mut self) -> i32 {
        self.signal(libc::SIGKILL);
        let status = self.wait(0);
        assert!(self.reaped, "child not reaped: {}", describe_status(status));
        status
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: kill(2) takes integers only; `self.pid` is our own child, not yet reaped
            // (so its pid is not reused); waitpid writes one `int` into `status`, a live local.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(self.pid, &mut status, 0);
            }
        }
    }
}

fn assert_killed_by_sigkill(status: i32, what: &str) {
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "{what}: expected the child killed by SIGKILL, it {}",
        describe_status(status)
    );
}

/// A thread that creates a region and stays alive (parked) until dropped, so that the region's
/// owner thread outlives it as `shm.rs` requires, without creating two regions on one thread.
struct OwnerThread {
    release: Option<mpsc::Sender<()>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl OwnerThread {
    fn create(
        dir: &RegionDir,
        id: ReplicaId,
        config: Config,
    ) -> (OwnerThread, Result<OwnRegion, ShmError>) {
        let (release, released) = mpsc::channel::<()>();
        let (tx, rx) = mpsc::channel();
        let dir = dir.clone();
        let handle = thread::spawn(move || {
            let _ = tx.send(OwnRegion::create(&dir, id, &config));
            let _ = released.recv();
        });
        let region = rx.recv().expect("owner thread");
        (
            OwnerThread {
                release: Some(release),
                handle: Some(handle),
            },
            region,
        )
    }
}

impl Drop for OwnerThread {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The child process
// ---------------------------------------------------------------------------------------------

/// Not a test: the body of the child processes of the multi-process tests. Does nothing unless
/// `MU_SHMTEST_CHILD` is set.
#[test]
#[ignore = "helper process for the multi-process tests; does nothing unless MU_SHMTEST_CHILD is set"]
fn child_process() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir_path = PathBuf::from(std::env::var(DIR_ENV).expect("MU_SHMTEST_DIR"));
    let id: ReplicaId = std::env::var(ID_ENV)
        .expect("MU_SHMTEST_ID")
        .parse()
        .unwrap();
    let dir = RegionDir::open(&dir_path).expect("child: open the directory");
    // SAFETY: getppid takes no argument, touches no memory and cannot fail.
    let parent = unsafe { libc::getppid() };
    // SAFETY: getppid takes no argument, touches no memory and cannot fail.
    let orphaned = || unsafe { libc::getppid() } != parent;
    match role.as_str() {
        // Replica `id` writing its whole log area into replica 1's log area, forever.
        "writer" => {
            let config = big_config();
            let layout = Layout::new(&config);
            let own = Arc::new(OwnRegion::create(&dir, id, &config).expect("child: region"));
            let mut f = fabric(&dir, config, &own);
            let len = layout.log_bytes();
            f.store(layout.log, &pattern(len as usize, 7));
            let mut announced = false;
            let mut wr_id = 0u64;
            loop {
                wr_id += 1;
                match f.write(1, layout.log, layout.log, len, wr_id) {
                    Ok(()) => {
                        let c = one(&mut f);
                        if c.status == Status::Ok && !announced {
                            announced = true;
                            // SAFETY: gettid has no preconditions.
                            let tid = unsafe { libc::gettid() };
                            println!("{READY} {tid}");
                        }
                        if c.status != Status::Ok {
                            let _ = f.reconnect(1);
                        }
                    }
                    Err(_) => {
                        let _ = f.reconnect(1);
                    }
                }
                // A pause between copies, so that a stop or a kill finds the writer out of a
                // copy about as often as in one.
                thread::sleep(Duration::from_micros(500));
                if wr_id % 64 == 0 && orphaned() {
                    std::process::exit(3);
                }
            }
        }
        // Replica `id`'s owner: creates the region, then sleeps until killed.
        "owner" => {
            let config = Config::new(3);
            let _own = OwnRegion::create(&dir, id, &config).expect("child: region");
            println!("{READY}");
            loop {
                thread::sleep(Duration::from_millis(50));
                if orphaned() {
                    std::process::exit(3);
                }
            }
        }
        // One thread creates replicas 0 and 1, drops 1, creates 1 again, then ends; the regions
        // live on in this thread. Reports what a peer's writes to 0 and 1 complete with.
        "recreate" => {
            let config = Config::new(3);
            let d = dir.clone();
            let (r0, r1) = thread::spawn(move || {
                let r0 = OwnRegion::create(&d, 0, &config).expect("child: region 0");
                let r1 = OwnRegion::create(&d, 1, &config).expect("child: region 1");
                drop(r1);
                let r1 = OwnRegion::create(&d, 1, &config).expect("child: region 1 again");
                (r0, r1)
            })
            .join()
            .expect("child: creating thread");
            println!("{READY}");
            loop {
                thread::sleep(Duration::from_secs(1));
                let _ = (&r0, &r1);
            }
        }
        other => panic!("unknown child role {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Round trip
// ---------------------------------------------------------------------------------------------

/// Contract rules 2 and 3: a successful write completion means the bytes are in the peer's
/// region (exactly those bytes: neighbours untouched, odd offsets and lengths included), a read
/// lands in the reader's own region, and completions carry the caller's work-request ids in
/// posting order per peer, through partial polls.
#[test]
fn write_and_read_round_trip_in_posting_order() {
    let tmp = TestDir::new("roundtrip");
    let dir = tmp.open();
    let config = Config::new(3);
    let layout = Layout::new(&config);
    let [r0, r1, r2] = three_regions(&dir, &config);
    let mut f0 = fabric(&dir, config, &r0);
    let mut f1 = fabric(&dir, config, &r1);
    let mut f2 = fabric(&dir, config, &r2);

    let bg_len = layout.log - layout.background;
    f1.store(layout.background, &vec![0xEE; bg_len as usize]);
    f2.store(layout.background, &vec![0xEE; bg_len as usize]);
    // Something recognisable in replica 2's log, to read back without any grant.
    let log2 = pattern(64, 9);
    f2.store(layout.log, &log2);

    let bytes = pattern(101, 3);
    let src = layout.scratch + 3; // unaligned source, odd length
    let dst = layout.background + 17; // unaligned destination
    let landing = layout.scratch + 300;
    let landing2 = layout.scratch + 500;
    f0.store(src, &bytes);
    let mut empty: [Completion; 0] = [];
    assert_eq!(f0.poll(&mut empty), 0);

    f0.write(1, src, dst, 101, 1001).unwrap();
    f0.write(2, src, dst, 101, 2001).unwrap();
    f0.read(1, dst, landing, 101, 1002).unwrap();
    f0.read(2, layout.log, landing2, 64, 2002).unwrap();
    f0.write(1, src, dst + 101, 1, 1003).unwrap();
    f0.write(2, src + 100, layout.background, 1, 2003).unwrap();
    assert_eq!(f0.poll(&mut empty), 0, "an empty buffer takes nothing");

    let got = drain(&mut f0);
    assert_eq!(got.len(), 6, "one completion per post: {got:?}");
    assert!(got.iter().all(|c| c.status == Status::Ok), "{got:?}");
    let of_peer = |base: u64| -> Vec<u64> {
        got.iter()
            .map(|c| c.wr_id)
            .filter(|id| id / 1000 == base)
            .collect()
    };
    assert_eq!(of_peer(1), [1001, 1002, 1003], "peer 1 in posting order");
    assert_eq!(of_peer(2), [2001, 2002, 2003], "peer 2 in posting order");

    // Replica 1 sees exactly the written bytes, its neighbours untouched.
    let mut expected = vec![0xEE; bg_len as usize];
    let at = (dst - layout.background) as usize;
    expected[at..at + 101].copy_from_slice(&bytes);
    expected[at + 101] = bytes[0];
    assert_same(
        &load(&f1, layout.background, bg_len),
        &expected,
        "replica 1's background area",
    );
    // The read from 1 landed in 0's scratch area.
    assert_same(&load(&f0, landing, 101), &bytes, "read back from replica 1");
    // The read of 2's log area needed no grant.
    assert_same(&load(&f0, landing2, 64), &log2, "read of replica 2's log");
    let mut expected2 = vec![0xEE; bg_len as usize];
    expected2[0] = bytes[100];
    expected2[at..at + 101].copy_from_slice(&bytes);
    assert_same(
        &load(&f2, layout.background, bg_len),
        &expected2,
        "replica 2's background area",
    );

    // And the other way round: replica 1 writes into replica 0.
    let back = pattern(40, 5);
    f1.store(layout.scratch, &back);
    f1.write(0, layout.scratch, layout.background + 8, 40, 77)
        .unwrap();
    assert_eq!(
        one(&mut f1),
        Completion {
            wr_id: 77,
            status: Status::Ok
        }
    );
    assert_same(
        &load(&f0, layout.background + 8, 40),
        &back,
        "replica 0's background area",
    );
    drop((f0, f1, f2));
    drop((r0, r1, r2));
}

// ---------------------------------------------------------------------------------------------
// 2. Bounds, ids, Busy
// ---------------------------------------------------------------------------------------------

/// Contract rules 2, 7 and 8 and `PostError`: posts outside the region fail `OutOfBounds` (no
/// overflow on huge offsets or lengths, exact end included), a post to oneself or to a replica
/// outside the configuration fails `NoSuchPeer`, refused posts produce no completion, at most
/// `OUTSTANDING_MAX` completions per peer wait unpolled before posting fails `Busy` (other peers
/// unaffected), polling frees room, and `reconnect` drops what is outstanding.
#[test]
fn bounds_peer_ids_and_busy() {
    let tmp = TestDir::new("bounds");
    let dir = tmp.open();
    let config = Config::new(3);
    let layout = Layout::new(&config);
    let [r0, r1, r2] = three_regions(&dir, &config);
    let mut f0 = fabric(&dir, config, &r0);
    let f1 = fabric(&dir, config, &r1);
    let rb = layout.region_bytes;
    let bg = layout.background;
    let oob = Err(PostError::OutOfBounds);

    // Out of bounds, both directions, both sides of the copy.
    assert_eq!(f0.write(1, rb, bg, 1, 1), oob);
    assert_eq!(f0.write(1, layout.scratch, rb, 1, 2), oob);
    assert_eq!(f0.write(1, 0, rb - 3, 4, 3), oob);
    assert_eq!(f0.write(1, rb - 3, 0, 4, 4), oob);
    assert_eq!(f0.write(1, 0, 0, rb + 1, 5), oob);
    assert_eq!(f0.write(1, 0, 0, u32::MAX, 6), oob);
    assert_eq!(f0.write(1, u32::MAX, 0, 1, 7), oob);
    assert_eq!(f0.write(1, 0, u32::MAX, u32::MAX, 8), oob);
    assert_eq!(f0.read(1, rb, bg, 1, 9), oob);
    assert_eq!(f0.read(1, bg, rb, 1, 10), oob);
    assert_eq!(f0.read(1, rb - 7, 0, 8, 11), oob);
    assert_eq!(f0.read(1, u32::MAX, u32::MAX, 2, 12), oob);
    assert_eq!(f0.read(1, 0, 0, u32::MAX, 13), oob);

    // No such peer: self, just past the cluster, far past it.
    for peer in [0u8, 3, 6, 7, 200, 255] {
        let none = Err(PostError::NoSuchPeer);
        assert_eq!(f0.write(peer, 0, bg, 8, 20), none, "write to {peer}");
        assert_eq!(f0.read(peer, bg, 0, 8, 21), none, "read from {peer}");
        assert_eq!(f0.reconnect(peer), none, "reconnect to {peer}");
        f0.grant(peer); // Ignored, must not panic.
        f0.revoke(peer);
    }
    assert!(drain(&mut f0).is_empty(), "refused posts complete nothing");

    // Peers write below the transfer area and read below the scratch area (contract: only the
    // owner writes its transfer area; the scratch area is never remote).
    let (transfer, scratch) = (layout.transfer, layout.scratch);
    assert_eq!(f0.write(1, 0, transfer - 8, 16, 14), oob);
    assert_eq!(f0.write(1, 0, transfer, 8, 15), oob);
    assert_eq!(f0.read(1, scratch - 8, 0, 16, 16), oob);
    assert_eq!(f0.read(1, scratch, 0, 8, 17), oob);

    // The exact ends of those areas are in bounds (locally: the region's; remotely the end of
    // the background area, which needs no grant), a zero-length post at the end too.
    f0.write(1, rb - 8, layout.log - 8, 8, 30).unwrap();
    f0.read(1, scratch - 8, rb - 8, 8, 31).unwrap();
    f0.write(1, rb, transfer, 0, 32).unwrap();
    f0.read(1, scratch, rb, 0, 33).unwrap();
    let got = drain(&mut f0);
    let ids: Vec<u64> = got.iter().map(|c| c.wr_id).collect();
    assert_eq!(ids, [30, 31, 32, 33]);
    assert!(got.iter().all(|c| c.status == Status::Ok), "{got:?}");

    // Busy after OUTSTANDING_MAX unpolled completions to one peer.
    let n = OUTSTANDING_MAX as u64;
    for i in 0..n {
        f0.write(1, layout.scratch, bg, 16, 100 + i).unwrap();
    }
    assert_eq!(
        f0.write(1, layout.scratch, bg, 16, 999),
        Err(PostError::Busy)
    );
    assert_eq!(
        f0.read(1, bg, layout.scratch, 16, 999),
        Err(PostError::Busy)
    );
    // Another peer has its own bound.
    f0.write(2, layout.scratch, bg, 16, 5000).unwrap();
    // Polling one completion makes room for exactly one more post.
    let mut first = [Completion::EMPTY; 1];
    assert_eq!(f0.poll(&mut first), 1);
    assert_eq!(first[0].wr_id, 100);
    f0.write(1, layout.scratch, bg, 16, 1000).unwrap();
    assert_eq!(
        f0.write(1, layout.scratch, bg, 16, 999),
        Err(PostError::Busy)
    );
    let got = drain(&mut f0);
    let to1: Vec<u64> = got
        .iter()
        .map(|c| c.wr_id)
        .filter(|&id| id != 5000)
        .collect();
    let expected: Vec<u64> = (101..100 + n).chain([1000]).collect();
    assert_eq!(
        to1, expected,
        "every completion to peer 1, in posting order"
    );
    assert_eq!(got.len() as u64, n + 1);
    assert!(got.iter().all(|c| c.status == Status::Ok), "{got:?}");

    // Fill up again; reconnect drops what is outstanding and frees the bound.
    for i in 0..n {
        f0.read(1, bg, layout.scratch, 16, 200 + i).unwrap();
    }
    f0.write(2, layout.scratch, bg, 16, 6000).unwrap();
    assert_eq!(f0.read(1, bg, layout.scratch, 16, 9), Err(PostError::Busy));
    f0.reconnect(1).unwrap();
    let got = drain(&mut f0);
    assert_eq!(
        got,
        [Completion {
            wr_id: 6000,
            status: Status::Ok
        }],
        "reconnect dropped peer 1's completions, not peer 2's"
    );
    f0.write(1, layout.scratch, bg, 16, 7000).unwrap();
    assert_eq!(one(&mut f0).wr_id, 7000);
    drop((f0, f1));
    drop((r0, r1, r2));
}

// ---------------------------------------------------------------------------------------------
// 3. Permissions
// ---------------------------------------------------------------------------------------------

/// Contract rules 5 and 6: the log area accepts writes only from the granted peer (a grant to
/// another peer does not count), a write merely overlapping the log area is gated as a whole, a
/// refused write completes `Denied`, lands no byte at all and breaks the connection (every post
/// to that peer fails `Broken`, other peers unaffected) until `reconnect`; after `revoke` the
/// next log write is refused again; reads and background writes need no grant.
#[test]
fn log_area_permissions() {
    let tmp = TestDir::new("perms");
    let dir = tmp.open();
    let config = Config::new(3);
    let layout = Layout::new(&config);
    let [r0, r1, r2] = three_regions(&dir, &config);
    let mut f0 = fabric(&dir, config, &r0);
    let mut f1 = fabric(&dir, config, &r1);

    let log_end = layout.log + layout.log_bytes();
    // Replica 1's bytes from the start of the background area to just past the log area.
    let span = layout.scratch + 64 - layout.background;
    let initial = vec![0x33u8; span as usize];
    f1.store(layout.background, &initial);
    let snapshot = |f1: &ShmFabric| load(f1, layout.background, span);
    let payload = pattern(256, 1);
    f0.store(layout.scratch, &payload);

    let denied = |f0: &mut ShmFabric, remote: u32, len: u32, wr_id: u64, what: &str| {
        // From replica 0's untouched (zero) bytes: any byte that lands shows.
        f0.write(1, 0, remote, len, wr_id).unwrap();
        assert_eq!(
            one(f0),
            Completion {
                wr_id,
                status: Status::Denied
            },
            "{what}"
        );
        assert_eq!(
            f0.write(1, layout.scratch, layout.background, 8, wr_id + 1),
            Err(PostError::Broken),
            "{what}: a write after Denied"
        );
        assert_eq!(
            f0.read(1, layout.background, layout.scratch, 8, wr_id + 2),
            Err(PostError::Broken),
            "{what}: a read after Denied"
        );
        f0.reconnect(1).unwrap();
    };

    // No grant: refused, nothing lands.
    denied(&mut f0, layout.log, 256, 10, "log write without grant");
    assert_same(&snapshot(&f1), &initial, "after a denied log write");
    denied(&mut f0, log_end - 16, 16, 30, "write at the log end");
    // A write lies in one area (rule 13): one across the start of the log area is refused at
    // post, as is one beyond it, into the transfer area, which only its owner writes.
    let oob = Err(PostError::OutOfBounds);
    assert_eq!(
        f0.write(1, 0, layout.log - 8, 16, 20),
        oob,
        "write across the log start"
    );
    assert_eq!(
        f0.write(1, 0, layout.background, log_end - layout.background, 40),
        oob,
        "write over the whole log"
    );
    assert_eq!(
        f0.write(1, 0, log_end - 8, 16, 41),
        oob,
        "write across the log end"
    );
    assert_eq!(
        f0.write(1, 0, layout.background, span, 42),
        oob,
        "write over both"
    );
    assert_same(&snapshot(&f1), &initial, "after denied straddling writes");

    // A broken connection to 1 leaves the one to 2 alone.
    f0.write(1, layout.scratch, layout.log, 8, 50).unwrap();
    assert_eq!(one(&mut f0).status, Status::Denied);
    f0.write(2, layout.scratch, layout.background, 8, 51)
        .unwrap();
    assert_eq!(one(&mut f0).status, Status::Ok);
    f0.reconnect(1).unwrap();

    // The background area and reads need no grant.
    f0.write(1, layout.scratch, layout.background + 8, 64, 60)
        .unwrap();
    assert_eq!(one(&mut f0).status, Status::Ok);
    f0.read(1, layout.log, layout.scratch + 512, 64, 61)
        .unwrap();
    assert_eq!(one(&mut f0).status, Status::Ok);
    assert_same(
        &load(&f0, layout.scratch + 512, 64),
        &initial[..64],
        "read of the log area without grant",
    );
    let mut expected = initial.clone();
    expected[8..72].copy_from_slice(&payload[..64]);
    assert_same(&snapshot(&f1), &expected, "after a background write");

    // A grant to replica 2 does not open the log to replica 0.
    f1.grant(2);
    denied(
        &mut f0,
        layout.log,
        64,
        70,
        "log write while only 2 is granted",
    );
    assert_same(&snapshot(&f1), &expected, "after writing with 2 granted");

    // Granted: the writes land.
    f1.grant(0);
    f0.write(1, layout.scratch, layout.log, 256, 80).unwrap();
    assert_eq!(one(&mut f0).status, Status::Ok);
    f0.write(1, layout.scratch, log_end - 16, 16, 81).unwrap();
    assert_eq!(one(&mut f0).status, Status::Ok);
    let at = (layout.log - layout.background) as usize;
    expected[at..at + 256].copy_from_slice(&payload);
    let end = (log_end - layout.background) as usize;
    expected[end - 16..end].copy_from_slice(&payload[..16]);
    assert_same(&snapshot(&f1), &expected, "after granted log writes");

    // Revoked: refused again, nothing lands.
    f1.revoke(0);
    f0.store(layout.scratch, &sentinel(256, 1, 1));
    denied(&mut f0, layout.log, 256, 90, "log write after revoke");
    denied(
        &mut f0,
        log_end - 16,
        16,
        100,
        "write at the log end after revoke",
    );
    assert_same(&snapshot(&f1), &expected, "after a revoked log write");

    // Granted again: lands again.
    f1.grant(0);
    f0.write(1, layout.scratch, layout.log, 256, 110).unwrap();
    assert_eq!(one(&mut f0).status, Status::Ok);
    assert_same(
        &load(&f1, layout.log, 256),
        &sentinel(256, 1, 1),
        "after the re-grant",
    );
    // The background plane never writes a log, granted or not (rule 13): refused at post.
    let mut b0 = ShmFabric::new(dir.clone(), config, r0.clone(), Plane::Background);
    assert_eq!(
        b0.write(1, layout.scratch, layout.log, 64, 120),
        Err(PostError::OutOfBounds),
        "a background-plane write into a granted log"
    );
    drop((f0, f1, b0));
    drop((r0, r1, r2));
}

// ---------------------------------------------------------------------------------------------
// 4. and 5. Fencing writers killed or stopped mid-copy
// ---------------------------------------------------------------------------------------------

/// Grants replica 0, starts a writer child as replica 0 and waits until its first 8 MiB write
/// into replica 1's log area completed; checks the bytes landed.
fn start_writer(
    tmp: &TestDir,
    f1: &mut ShmFabric,
    layout: &Layout,
    expected_log: &[u8],
) -> ChildProc {
    f1.grant(0);
    let child = ChildProc::spawn("writer", &tmp.path, 0);
    child.expect_line(READY);
    // A completed write means the bytes are there; every later write carries the same bytes.
    assert_same(
        &load(f1, layout.log, layout.log_bytes()),
        expected_log,
        "replica 1's log after the writer's first completed write",
    );
    child
}

/// After a revoke: overwrite the whole log area with `round`'s sentinel, give any writer that
/// survived the revoke time to land something, and check nothing did.
fn check_fenced(f1: &mut ShmFabric, layout: &Layout, round: u8, settle: Duration) {
    let len = layout.log_bytes();
    let mark = sentinel(len as usize, 7, round);
    f1.store(layout.log, &mark);
    thread::sleep(settle);
    assert_same(
        &load(f1, layout.log, len),
        &mark,
        &format!("round {round}: replica 1's log after revoke"),
    );
}

/// Contract rule 5 with a writer process SIGKILLed at a random moment, usually in the middle of
/// an 8 MiB copy into the log area: `revoke` must return (a dead writer's in-flight marker must
/// not block it, whether or not the dead child was reaped yet), the marker is clear afterwards,
/// and from then on the log area does not change.
#[test]
fn revoke_fences_a_writer_killed_mid_copy() {
    let Fixture {
        tmp,
        layout,
        r1,
        mut f1,
        mut rng,
        written,
        ..
    } = fencing_fixture("kill", "revoke_fences_a_writer_killed_mid_copy");
    let mut in_flight = 0;
    const ROUNDS: u8 = 8;
    for round in 0..ROUNDS {
        let mut child = start_writer(&tmp, &mut f1, &layout, &written);
        thread::sleep(Duration::from_micros(rng.below(20_000)));
        child.signal(libc::SIGKILL);
        let reap_first = rng.below(2) == 0;
        if reap_first {
            assert_killed_by_sigkill(child.wait(0), "writer");
        }
        in_flight += copying(r1.path(), 0) as u32;
        f1 = revoke_within(f1, 0);
        assert!(
            !copying(r1.path(), 0),
            "round {round}: in-flight marker of the dead writer after revoke"
        );
        if !reap_first {
            assert_killed_by_sigkill(child.wait(0), "writer");
        }
        check_fenced(&mut f1, &layout, round, Duration::from_millis(100));
    }
    eprintln!(
        "revoke_fences_a_writer_killed_mid_copy: {in_flight} of {ROUNDS} writers died in flight"
    );
    drop(f1);
    drop(r1);
}

/// Contract rule 5 with a writer process SIGSTOPped at random moments, usually in the middle of
/// an 8 MiB copy into the log area (the module doc: a stopped writer would finish its copy when
/// resumed, so `revoke` must kill it): `revoke` returns; the writer is killed exactly when it
/// was stopped in flight, and otherwise left stopped with no copy in flight; after SIGCONT the
/// log area does not change any more.
#[test]
fn revoke_fences_a_stopped_writer() {
    let Fixture {
        tmp,
        layout,
        r1,
        mut f1,
        mut rng,
        written,
        ..
    } = fencing_fixture("stop", "revoke_fences_a_stopped_writer");
    let (mut killed, mut spared) = (0u32, 0u32);
    const ROUNDS: u8 = 10;
    let mut round = 0u8;
    // Until both cases were seen (within reason), and at least ROUNDS rounds.
    while round < ROUNDS || (killed == 0 || spared == 0) && round < 4 * ROUNDS {
        let mut child = start_writer(&tmp, &mut f1, &layout, &written);
        let delay = rng.below(20_000);
        thread::sleep(Duration::from_micros(delay));
        child.signal(libc::SIGSTOP);
        let status = child.wait(libc::WUNTRACED);
        assert!(
            libc::WIFSTOPPED(status),
            "round {round}: writer {}",
            describe_status(status)
        );
        let was_in_flight = copying(r1.path(), 0);
        f1 = revoke_within(f1, 0);
        if was_in_flight {
            killed += 1;
            // Fencing a stopped writer in flight means killing it.
            assert_killed_by_sigkill(child.wait(0), "writer stopped in flight");
            check_fenced(&mut f1, &layout, round, Duration::from_millis(100));
        } else {
            spared += 1;
            assert_eq!(
                child.try_wait(),
                None,
                "round {round}: writer stopped between copies must be left alone"
            );
            assert!(!copying(r1.path(), 0));
            // Mark the log, let the writer go on (all its writes are now refused), check.
            let len = layout.log_bytes();
            let mark = sentinel(len as usize, 7, round);
            f1.store(layout.log, &mark);
            child.signal(libc::SIGCONT);
            thread::sleep(Duration::from_millis(200));
            assert_eq!(
                child.try_wait(),
                None,
                "round {round}: resumed writer should still run"
            );
            assert_same(
                &load(&f1, layout.log, len),
                &mark,
                &format!("round {round}: log after revoke and SIGCONT"),
            );
            assert_killed_by_sigkill(child.kill_and_reap(), "writer");
        }
        round += 1;
    }
    eprintln!(
        "revoke_fences_a_stopped_writer: {killed} stopped in flight (killed), {spared} stopped \
         between copies (spared), in {round} rounds"
    );
    drop(f1);
    drop(r1);
}

/// Waits until replica 1's whole log area reads `expected` (the writer's next write after a
/// grant landed), under the deadline.
fn wait_for_log(f1: &ShmFabric, layout: &Layout, expected: &[u8], what: &str) {
    let start = std::time::Instant::now();
    while load(f1, layout.log, layout.log_bytes()) != expected {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: the writer's bytes never landed after the grant"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Contract rule 5, the plain case: `revoke` while a live writer process keeps copying 8 MiB
/// into the log area (nothing stopped, nothing killed) returns, and no byte of that writer lands
/// afterwards, although it keeps posting; a re-grant lets it in again.
#[test]
fn revoke_fences_a_running_writer_process() {
    let Fixture {
        tmp,
        layout,
        r1,
        mut f1,
        mut rng,
        written,
        ..
    } = fencing_fixture("running", "revoke_fences_a_running_writer_process");
    let mut child = start_writer(&tmp, &mut f1, &layout, &written);
    const ROUNDS: u8 = 8;
    for round in 0..ROUNDS {
        if round > 0 {
            f1.grant(0);
            wait_for_log(&f1, &layout, &written, &format!("round {round}"));
        }
        thread::sleep(Duration::from_micros(rng.below(20_000)));
        f1 = revoke_within(f1, 0);
        check_fenced(&mut f1, &layout, round, Duration::from_millis(100));
        assert_eq!(child.try_wait(), None, "round {round}: the writer runs on");
    }
    assert_killed_by_sigkill(child.kill_and_reap(), "writer");
    drop(f1);
    drop(r1);
}

/// Contract rule 5 for a writer that is a thread of the owner's own process (replicas as
/// threads): `revoke` waits for its copy in flight and returns, and nothing lands afterwards.
#[test]
fn revoke_fences_a_writer_thread_of_this_process() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    let Fixture {
        tmp: _tmp,
        dir,
        config,
        layout,
        r1,
        mut f1,
        mut rng,
        written,
    } = fencing_fixture("thread", "revoke_fences_a_writer_thread_of_this_process");
    let stop = Arc::new(AtomicBool::new(false));
    let landed = Arc::new(AtomicU64::new(0));
    f1.grant(0);
    let writer = {
        let (dir, stop, landed, written) =
            (dir.clone(), stop.clone(), landed.clone(), written.clone());
        // The writer thread owns replica 0's region and outlives it.
        thread::spawn(move || {
            let own = Arc::new(OwnRegion::create(&dir, 0, &config).unwrap());
            let mut f = fabric(&dir, config, &own);
            f.store(layout.log, &written);
            let mut wr_id = 0;
            while !stop.load(SeqCst) {
                wr_id += 1;
                if f.write(1, layout.log, layout.log, layout.log_bytes(), wr_id)
                    .is_ok()
                {
                    if one(&mut f).status == Status::Ok {
                        landed.fetch_add(1, SeqCst);
                    } else {
                        f.reconnect(1).unwrap();
                    }
                }
                thread::sleep(Duration::from_micros(300));
            }
            drop(f);
            drop(own);
        })
    };
    const ROUNDS: u8 = 8;
    for round in 0..ROUNDS {
        if round > 0 {
            f1.grant(0);
        }
        // At least one whole write after the grant.
        let before = landed.load(SeqCst);
        let start = std::time::Instant::now();
        while landed.load(SeqCst) < before + 2 {
            assert!(start.elapsed() < DEADLINE, "round {round}: no write landed");
            thread::sleep(Duration::from_millis(1));
        }
        assert_same(
            &load(&f1, layout.log, layout.log_bytes()),
            &written,
            &format!("round {round}: the writer thread's bytes"),
        );
        thread::sleep(Duration::from_micros(rng.below(10_000)));
        f1 = revoke_within(f1, 0);
        check_fenced(&mut f1, &layout, round, Duration::from_millis(50));
    }
    stop.store(true, SeqCst);
    within("join the writer thread", move || writer.join().unwrap());
    drop(f1);
    drop(r1);
}

/// `ptrace` on one thread of a child process, without pointer arguments.
fn ptrace(request: libc::c_uint, tid: i32, data: usize) -> Result<(), std::io::Error> {
    // SAFETY: the requests used here (seize, interrupt, cont, detach) take `addr` 0 and an
    // integer `data`, so the kernel reads or writes no memory of ours; they act on a thread of
    // our own child, not on this process.
    let r = unsafe { libc::ptrace(request, tid, 0usize, data) };
    if r == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A thread of a child process under ptrace. While attached, dropping it kills the child and
/// reaps the traced thread, without which the child's leader could never be reaped.
struct Traced {
    pid: i32,
    tid: i32,
    attached: bool,
}

impl Traced {
    /// Lets the thread go; a thread that died meanwhile (the fabric killed its process) is a
    /// zombie only its tracer can reap, so it is reaped here.
    fn detach(&mut self) {
        if self.attached {
            if ptrace(libc::PTRACE_DETACH, self.tid, 0).is_err() {
                // SAFETY: waitpid writes one `int` through the pointer, which points at
                // `status`, a live local; `self.tid` is a thread we trace.
                unsafe {
                    let mut status = 0;
                    libc::waitpid(self.tid, &mut status, libc::__WALL);
                }
            }
            self.attached = false;
        }
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if self.attached {
            // SAFETY: kill(2) takes integers only, on our own child (not reaped while a thread
            // of it is traced); waitpid writes one `int` into `status`, a live local.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(self.tid, &mut status, libc::__WALL);
            }
        }
    }
}

/// Waits (polling, under the deadline) until the traced thread `tid` reports a stop.
fn wait_traced_stop(tid: i32) -> i32 {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = waitpid(tid, libc::WNOHANG | libc::__WALL) {
            return status;
        }
        assert!(start.elapsed() < DEADLINE, "thread {tid} never stopped");
        thread::sleep(Duration::from_micros(100));
    }
}

/// The module doc: "a writer that is stopped (SIGSTOP, a debugger) in the middle of a copy" is
/// fenced by killing it, so `revoke` returns. Here a debugger (ptrace) stops only the writing
/// thread of the writer process, in the middle of a copy, as gdb's non-stop mode does.
#[test]
fn revoke_fences_a_writer_thread_stopped_by_a_debugger() {
    let Fixture {
        tmp,
        layout,
        r1,
        mut f1,
        mut rng,
        ..
    } = fencing_fixture(
        "ptrace",
        "revoke_fences_a_writer_thread_stopped_by_a_debugger",
    );
    f1.grant(0);
    let mut child = ChildProc::spawn("writer", &tmp.path, 0);
    let line = child.expect_line(READY);
    let tid: i32 = line[READY.len()..].trim().parse().expect("writer tid");
    assert_ne!(
        tid, child.pid,
        "the writer copies on a thread other than the leader"
    );
    let mut traced = Traced {
        pid: child.pid,
        tid,
        attached: false,
    };
    if let Err(e) = ptrace(libc::PTRACE_SEIZE, tid, 0) {
        eprintln!(
            "revoke_fences_a_writer_thread_stopped_by_a_debugger: no ptrace here ({e}); skipped"
        );
        return;
    }
    traced.attached = true;
    // Stop the writing thread until it is caught in the middle of a copy.
    let mut caught = false;
    for _ in 0..1000 {
        thread::sleep(Duration::from_micros(rng.below(3_000)));
        ptrace(libc::PTRACE_INTERRUPT, tid, 0).unwrap();
        let status = wait_traced_stop(tid);
        assert!(
            libc::WIFSTOPPED(status),
            "writer thread {}",
            describe_status(status)
        );
        if copying(r1.path(), 0) {
            caught = true;
            break;
        }
        ptrace(libc::PTRACE_CONT, tid, 0).unwrap();
    }
    assert!(caught, "never caught the writer thread in flight");
    let (f1_back, hung) = {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            f1.revoke(0);
            let _ = tx.send(f1);
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(f1) => (Some(f1), false),
            Err(_) => (None, true),
        }
    };
    // Whatever happened, let the thread go (it then finishes its copy) and see what lands.
    let mark = sentinel(layout.log_bytes() as usize, 7, 1);
    traced.detach();
    if let Some(mut f1) = f1_back {
        f1.store(layout.log, &mark);
        thread::sleep(Duration::from_millis(200));
        let after = load(&f1, layout.log, layout.log_bytes());
        child.signal(libc::SIGKILL);
        let _ = child.wait(0);
        assert_same(
            &after,
            &mark,
            "replica 1's log after revoke and the thread's release",
        );
    } else {
        child.signal(libc::SIGKILL);
        let _ = child.wait(0);
    }
    assert!(
        !hung,
        "revoke did not return within 20 s while the writing thread was stopped in flight"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Restart and reclaim
// ---------------------------------------------------------------------------------------------

/// Module doc ("a new process never reuses a region file") and contract rule 7: a replica that
/// ends cleanly retires its file, so a peer's next post completes `Failed` and breaks the
/// connection; a new incarnation reclaims the file (`Previous::Reclaimed`, higher incarnation,
/// zeroed region), and after `reconnect` the peer's posts land in the new file. A second live
/// owner of one replica is refused with `AlreadyRunning`, without disturbing the first.
#[test]
fn restart_reclaims_and_peers_reconnect() {
    let tmp = TestDir::new("restart");
    let dir = tmp.open();
    let config = Config::new(3);
    let layout = Layout::new(&config);
    let r0 = Arc::new(OwnRegion::create(&dir, 0, &config).unwrap());
    let mut f0 = fabric(&dir, config, &r0);
    let bg = layout.background;
    let first = pattern(32, 11);
    f0.store(layout.scratch, &first);

    let (owner1, r1) = OwnerThread::create(&dir, 1, config);
    let r1 = Arc::new(r1.unwrap());
    assert_eq!(r1.previous(), Previous::Fresh);
    let incarnation1 = r1.incarnation();
    let f1 = fabric(&dir, config, &r1);
    f0.write(1, layout.scratch, bg, 32, 1).unwrap();
    assert_eq!(one(&mut f0).status, Status::Ok);
    assert_same(&load(&f1, bg, 32), &first, "write to the first incarnation");

    // A second owner of replica 1 is refused and disturbs nothing.
    match OwnRegion::create(&dir, 1, &config) {
        Err(ShmError::AlreadyRunning { id, .. }) => assert_eq!(id, 1),
        Err(other) => panic!("expected AlreadyRunning, got {other}"),
        Ok(_) => panic!("a second OwnRegion for a live replica was created"),
    }
    f0.write(1, layout.scratch, bg + 32, 32, 2).unwrap();
    assert_eq!(
        one(&mut f0).status,
        Status::Ok,
        "the live owner is undisturbed"
    );

    // Clean exit.
    drop(f1);
    drop(r1);
    f0.write(1, layout.scratch, bg, 32, 3).unwrap();
    assert_eq!(
        one(&mut f0),
        Completion {
            wr_id: 3,
            status: Status::Failed
        },
        "a write to an ended replica"
    );
    assert_eq!(f0.read(1, bg, layout.scratch, 8, 4), Err(PostError::Broken));
    f0.reconnect(1).unwrap();
    f0.read(1, bg, layout.scratch + 64, 8, 5).unwrap();
    assert_eq!(one(&mut f0).status, Status::Failed, "a read, still gone");
    f0.reconnect(1).unwrap();

    // The restart.
    let (owner2, r1) = OwnerThread::create(&dir, 1, config);
    let r1 = Arc::new(r1.unwrap());
    match r1.previous() {
        Previous::Reclaimed { pid, incarnation } => {
            assert_eq!(pid, std::process::id());
            assert_eq!(incarnation, incarnation1);
        }
        Previous::Fresh => panic!("the old file was not reclaimed"),
    }
    assert!(
        r1.incarnation() > incarnation1,
        "incarnation {} after {incarnation1}",
        r1.incarnation()
    );
    let f1 = fabric(&dir, config, &r1);
    assert_same(
        &load(&f1, bg, 64),
        &[0u8; 64],
        "the new region starts zeroed",
    );
    let second = pattern(32, 12);
    f0.store(layout.scratch, &second);
    f0.write(1, layout.scratch, bg, 32, 6).unwrap();
    f0.read(1, bg, layout.scratch + 128, 32, 7).unwrap();
    let got = drain(&mut f0);
    assert_eq!(
        got,
        [
            Completion {
                wr_id: 6,
                status: Status::Ok
            },
            Completion {
                wr_id: 7,
                status: Status::Ok
            }
        ]
    );
    assert_same(&load(&f1, bg, 32), &second, "write to the new incarnation");
    assert_same(&load(&f0, layout.scratch + 128, 32), &second, "read back");
    // In the new file on disk, too.
    let on_disk = fs::read(r1.path()).unwrap();
    let at = CONTROL_BYTES + bg as usize;
    assert_same(&on_disk[at..at + 32], &second, "the region file on disk");
    drop((f0, f1));
    drop((r0, r1));
    drop((owner1, owner2));
}

/// A restart in a process that forks meanwhile: a child that another thread forked while the
/// earlier region was alive holds a copy of its lock's descriptor until it execs (here 100 ms
/// after the fork), which keeps the lock taken after the region was dropped. The new region waits
/// for it instead of taking the replica for running (`AlreadyRunning`), as another test's thread
/// spawning a child could make `restart_under_a_granted_writer_starts_closed` do in CI.
#[test]
fn restart_waits_out_a_child_being_spawned() {
    use std::os::unix::process::CommandExt;
    let tmp = TestDir::new("spawnlock");
    let dir = tmp.open();
    let config = Config::new(3);
    let (owner1, r1) = OwnerThread::create(&dir, 1, config);
    let r1 = r1.unwrap();
    // `spawn` returns once the child has exec'd: the fork happens on another thread.
    let spawner = thread::spawn(|| {
        let mut command = Command::new("true");
        // SAFETY: the closure runs in the forked child before exec and only sleeps (`usleep` is
        // async-signal-safe); it touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::usleep(100_000);
                Ok(())
            });
        }
        command
            .spawn()
            .expect("spawn a child")
            .wait()
            .expect("reap the child")
    });
    thread::sleep(Duration::from_millis(20));
    drop(r1);
    drop(owner1);
    let started = Instant::now();
    let (owner2, r1) = within("restart", move || {
        let (owner, r1) = OwnerThread::create(&dir, 1, config);
        (owner, r1)
    });
    match r1 {
        Ok(region) => drop(region),
        Err(e) => panic!("the restart was refused after {:?}: {e}", started.elapsed()),
    }
    assert!(spawner.join().expect("the spawning thread").success());
    drop(owner2);
}

/// Module doc ("a new process never reuses a region file ... fencing its writers") and contract
/// rule 5: replica 1 restarts while a granted writer process keeps copying 8 MiB into its log.
/// The writer follows to the new file, whose log area is closed until the new incarnation
/// grants: it stays all zeros; after a grant the writer's bytes land there.
#[test]
fn restart_under_a_granted_writer_starts_closed() {
    let tmp = TestDir::new("restartwriter");
    let dir = tmp.open();
    let config = big_config();
    let layout = Layout::new(&config);
    let written = pattern(layout.log_bytes() as usize, 7);
    let (owner1, r1) = OwnerThread::create(&dir, 1, config);
    let r1 = Arc::new(r1.unwrap());
    let mut f1 = fabric(&dir, config, &r1);
    let mut child = start_writer(&tmp, &mut f1, &layout, &written);
    // Clean exit in the middle of the writer's copies, then a new incarnation.
    drop(f1);
    drop(r1);
    let (owner2, r1) = within("restart", move || {
        let (owner, r1) = OwnerThread::create(&dir, 1, config);
        (owner, r1.unwrap())
    });
    let r1 = Arc::new(r1);
    let dir = tmp.open();
    let mut f1 = fabric(&dir, config, &r1);
    // Wait until the writer connected to the new file.
    let start = std::time::Instant::now();
    loop {
        if inspect_writer(r1.path(), 0).unwrap().pid as i32 == child.pid {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the writer never connected to the new file"
        );
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(100));
    assert_same(
        &load(&f1, layout.log, layout.log_bytes()),
        &vec![0u8; layout.log_bytes() as usize],
        "the new incarnation's log before any grant",
    );
    f1.grant(0);
    wait_for_log(&f1, &layout, &written, "after the new incarnation's grant");
    f1 = revoke_within(f1, 0);
    check_fenced(&mut f1, &layout, 1, Duration::from_millis(100));
    assert_killed_by_sigkill(child.kill_and_reap(), "writer");
    drop(f1);
    drop(r1);
    drop((owner1, owner2));
}

// ---------------------------------------------------------------------------------------------
// 7. Dead owners
// ---------------------------------------------------------------------------------------------

/// Module doc (a dead owner's memory must not count) and contract rule 2: once the process that
/// owns replica 1 was SIGKILLed, writes and reads to it complete `Failed` (the kernel marked its
/// robust mutex), even though its region file is still there; a new process of replica 1
/// reclaims the file from the dead pid.
#[test]
fn dead_owner_fails_posts() {
    let tmp = TestDir::new("deadowner");
    let dir = tmp.open();
    let config = Config::new(3);
    let layout = Layout::new(&config);
    let bg = layout.background;
    let r0 = Arc::new(OwnRegion::create(&dir, 0, &config).unwrap());
    let mut f0 = fabric(&dir, config, &r0);
    f0.store(layout.scratch, &pattern(64, 2));

    let mut child = ChildProc::spawn("owner", &tmp.path, 1);
    child.expect_line(READY);
    f0.write(1, layout.scratch, bg, 64, 1).unwrap();
    f0.read(1, bg, layout.scratch + 64, 64, 2).unwrap();
    let got = drain(&mut f0);
    assert!(
        got.iter().all(|c| c.status == Status::Ok) && got.len() == 2,
        "to a live owner: {got:?}"
    );
    assert_same(
        &load(&f0, layout.scratch + 64, 64),
        &pattern(64, 2),
        "read back from the live owner",
    );

    let child_pid = child.pid as u32;
    assert_killed_by_sigkill(child.kill_and_reap(), "owner");
    f0.write(1, layout.scratch, bg, 64, 3).unwrap();
    assert_eq!(
        one(&mut f0),
        Completion {
            wr_id: 3,
            status: Status::Failed
        },
        "a write to a dead owner"
    );
    f0.reconnect(1).unwrap();
    f0.read(1, bg, layout.scratch + 64, 64, 4).unwrap();
    assert_eq!(
        one(&mut f0),
        Completion {
            wr_id: 4,
            status: Status::Failed
        },
        "a read from a dead owner"
    );
    f0.reconnect(1).unwrap();
    f0.write(1, layout.scratch, bg, 64, 5).unwrap();
    assert_eq!(one(&mut f0).status, Status::Failed, "still dead");

    // A new process of replica 1 reclaims the file from the dead pid.
    let (owner, r1) = OwnerThread::create(&dir, 1, config);
    let r1 = Arc::new(r1.unwrap());
    match r1.previous() {
        Previous::Reclaimed { pid, .. } => assert_eq!(pid, child_pid),
        Previous::Fresh => panic!("the dead owner's file was not reclaimed"),
    }
    f0.reconnect(1).unwrap();
    f0.write(1, layout.scratch, bg, 64, 6).unwrap();
    assert_eq!(one(&mut f0).status, Status::Ok, "to the new owner");
    drop(f0);
    drop((r0, r1));
    drop(owner);
}

/// The module doc: the owner mutex is held by a thread of the region's own for its lifetime.
/// Regions created by a thread that then ends stay reachable; dropping one makes it unreachable
/// (contract rule 9) and leaves the other alone.
#[test]
fn regions_outlive_their_creating_thread_and_end_when_dropped() {
    let tmp = TestDir::new("ownerthread");
    let dir = tmp.open();
    let config = Config::new(3);
    let layout = Layout::new(&config);
    let r0 = Arc::new(OwnRegion::create(&dir, 0, &config).unwrap());
    let mut f0 = fabric(&dir, config, &r0);
    let d = dir.clone();
    let (r1, r2) = thread::spawn(move || {
        let r1 = OwnRegion::create(&d, 1, &config).unwrap();
        let r2 = OwnRegion::create(&d, 2, &config).unwrap();
        (r1, r2)
    })
    .join()
    .unwrap();
    for peer in [1, 2] {
        f0.write(peer, layout.scratch, layout.background, 8, peer as u64)
            .unwrap();
        assert_eq!(one(&mut f0).status, Status::Ok, "replica {peer}");
    }
    drop(r1);
    f0.write(1, layout.scratch, layout.background, 8, 3)
        .unwrap();
    assert_eq!(one(&mut f0).status, Status::Failed, "replica 1, dropped");
    f0.write(2, layout.scratch, layout.background, 8, 4)
        .unwrap();
    assert_eq!(one(&mut f0).status, Status::Ok, "replica 2, still there");
    drop(f0);
    drop((r0, r2));
}

/// Contract rule 9 and memory safety: a child process creates replicas 0 and 1 on one thread,
/// drops 1 (a clean exit), creates 1 again, and lets that thread end. Both regions are reachable
/// while the child lives; once it is SIGKILLed, posts to either complete `Failed` (the kernel
/// marked both owner mutexes). Runs in a child process because the failure mode of a broken
/// robust-mutex list is a crash.
#[test]
fn recreating_a_region_on_one_thread_keeps_owner_death_visible() {
    let tmp = TestDir::new("recreate");
    let dir = tmp.open();
    let config = Config::new(3);
    let layout = Layout::new(&config);
    let mut child = ChildProc::spawn("recreate", &tmp.path, 0);
    child.expect_line(READY);
    let r2 = Arc::new(OwnRegion::create(&dir, 2, &config).unwrap());
    let mut f2 = fabric(&dir, config, &r2);
    let statuses = |f2: &mut ShmFabric| {
        [0, 1].map(|peer| {
            f2.write(peer, layout.scratch, layout.background, 16, peer as u64)
                .unwrap();
            let status = one(f2).status;
            if status != Status::Ok {
                f2.reconnect(peer).unwrap();
            }
            status
        })
    };
    assert_eq!(statuses(&mut f2), [Status::Ok, Status::Ok], "child alive");
    // SAFETY: kill(2) takes integers only; `child` is our own child, not yet reaped.
    unsafe { libc::kill(child.pid, libc::SIGKILL) };
    let status = child.wait(0);
    assert!(
        libc::WIFSIGNALED(status),
        "child {}",
        describe_status(status)
    );
    assert_eq!(
        statuses(&mut f2),
        [Status::Failed, Status::Failed],
        "child killed"
    );
}

/// Certain death from a plane's thread: a thread that holds its plane's life mutex and ends
/// without releasing it (as every thread of a killed process does) ends the region's life at
/// once, while the owner mutex's keeper still runs: peers' `ended_life` names that life, posts to
/// it fail, and the mutex cannot be taken again to make the life look alive. A plane that
/// releases its hold (a clean stop) ends nothing.
#[test]
fn a_plane_thread_that_dies_holding_its_life_ends_the_life() {
    let tmp = TestDir::new("life");
    let dir = tmp.open();
    let config = Config::new(3);
    let layout = Layout::new(&config);
    let r0 = OwnRegion::create(&dir, 0, &config).unwrap();
    let r1 = Arc::new(OwnRegion::create(&dir, 1, &config).unwrap());
    let mut f1 = fabric(&dir, config, &r1);
    let post = |f1: &mut ShmFabric| {
        f1.write(0, layout.scratch, layout.background, 8, 1)
            .unwrap();
        one(f1).status
    };
    assert_eq!(post(&mut f1), Status::Ok);
    // Joined by handle: that waits for the kernel's end of the thread, robust list included.
    thread::scope(|scope| {
        let plane = scope.spawn(|| drop(r0.hold_life(Plane::Background).unwrap()));
        plane.join().unwrap();
    });
    assert_eq!(f1.ended_life(0), None, "a released hold ends nothing");
    assert_eq!(post(&mut f1), Status::Ok);
    thread::scope(|scope| {
        let plane = scope.spawn(|| std::mem::forget(r0.hold_life(Plane::Replication).unwrap()));
        plane.join().unwrap();
    });
    assert_eq!(f1.ended_life(0), Some(r0.incarnation() as u32));
    assert_eq!(post(&mut f1), Status::Failed);
    assert!(
        r0.hold_life(Plane::Replication).is_err(),
        "an ended life stays ended"
    );
}

/// A rest on the life watch ends when a peer process is killed (long before its timeout), and
/// so does a rest when that peer, started anew, is killed once more: a restarted peer is
/// watched too. Each death is reported once.
#[test]
fn a_rest_on_the_life_watch_ends_at_every_death_of_a_peer() {
    let tmp = TestDir::new("watch");
    let dir = tmp.open();
    let r0 = OwnRegion::create(&dir, 0, &Config::new(3)).unwrap();
    let bell = r0.background_bell();
    let mut watch = LifeWatch::new(dir.clone(), 3, 0);
    for life in 0..2 {
        let mut child = ChildProc::spawn("owner", &tmp.path, 1);
        child.expect_line(READY);
        // Past a rescan, so that the rest below watches the new life.
        thread::sleep(Duration::from_millis(20));
        let started = Instant::now();
        let reported = thread::scope(|scope| {
            // A rest that the death catches before it sleeps ends without reporting it; the
            // next one reports it at once.
            let resting = scope.spawn(|| {
                while started.elapsed() < DEADLINE {
                    if watch.rest(bell, bell.seen(), DEADLINE) {
                        return true;
                    }
                }
                false
            });
            while !bell.has_sleepers() {
                assert!(
                    !resting.is_finished(),
                    "life {life}: the rest ended before the death"
                );
                thread::sleep(Duration::from_millis(1));
            }
            assert_killed_by_sigkill(child.kill_and_reap(), "owner");
            resting.join().unwrap()
        });
        assert!(
            reported,
            "life {life}: the rest ended without reporting the death"
        );
        assert!(
            started.elapsed() < DEADLINE / 2,
            "life {life}: the rest ran to its timeout"
        );
        assert!(
            !watch.rest(bell, bell.seen(), Duration::from_millis(1)),
            "life {life}: reported twice"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Files and permissions
// ---------------------------------------------------------------------------------------------

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

/// The module doc's file rules: the directory is created `0700` and the region file `0600`; a
/// directory open to others (`0777`, `0750`) is refused with `TooOpen`, so is a region file open
/// to others, a symlinked directory or region file is not followed, and (as root) a file or
/// directory of another user is refused with `NotOwned`, by the owner and by a connecting peer.
#[test]
fn files_and_permissions() {
    let tmp = TestDir::new("files");
    let config = Config::new(3);
    let layout = Layout::new(&config);
    let dir = tmp.open();
    assert_eq!(mode(&tmp.path), 0o700, "the directory");
    let r0 = Arc::new(OwnRegion::create(&dir, 0, &config).unwrap());
    assert_eq!(mode(r0.path()), 0o600, "the region file");
    assert_eq!(
        r0.path(),
        dir.region_path(0),
        "the region lives where peers look"
    );
    let lock = tmp.path.join("replica-0.lock");
    assert_eq!(mode(&lock) & 0o077, 0, "the lock file is private");
    let mut f0 = fabric(&dir, config, &r0);

    // Directories open to others.
    for open_mode in [0o777, 0o750, 0o701] {
        let path = tmp.path.join(format!("open-{open_mode:o}"));
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(open_mode)).unwrap();
        match RegionDir::open(&path) {
            Err(ShmError::TooOpen { mode, .. }) => assert_eq!(mode, open_mode),
            Err(other) => panic!("{open_mode:o}: expected TooOpen, got {other}"),
            Ok(_) => panic!("a directory with mode {open_mode:o} was accepted"),
        }
    }
    // A symlink to a good directory is not a directory.
    let real = tmp.path.join("real");
    fs::create_dir(&real).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
    let link = tmp.path.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert!(
        matches!(RegionDir::open(&link), Err(ShmError::Io { .. })),
        "a symlinked directory was accepted"
    );

    // A region file open to others is refused; the file is left alone.
    let region1 = dir.region_path(1);
    fs::write(&region1, b"not a region").unwrap();
    fs::set_permissions(&region1, fs::Permissions::from_mode(0o644)).unwrap();
    match OwnRegion::create(&dir, 1, &config) {
        Err(ShmError::TooOpen { mode, .. }) => assert_eq!(mode, 0o644),
        Err(other) => panic!("expected TooOpen, got {other}"),
        Ok(_) => panic!("a region file with mode 0644 was accepted"),
    }
    assert_eq!(fs::read(&region1).unwrap(), b"not a region");
    // A peer does not use it either.
    f0.write(1, layout.scratch, layout.background, 8, 1)
        .unwrap();
    assert_eq!(one(&mut f0).status, Status::Failed);
    f0.reconnect(1).unwrap();
    fs::remove_file(&region1).unwrap();

    // A symlinked region file is not followed.
    let target = tmp.path.join("target");
    fs::write(&target, b"precious").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
    let region2 = dir.region_path(2);
    std::os::unix::fs::symlink(&target, &region2).unwrap();
    assert!(
        matches!(
            OwnRegion::create(&dir, 2, &config),
            Err(ShmError::Io { .. })
        ),
        "a symlinked region file was followed"
    );
    assert_eq!(fs::read(&target).unwrap(), b"precious");
    f0.write(2, layout.scratch, layout.background, 8, 2)
        .unwrap();
    assert_eq!(one(&mut f0).status, Status::Failed);
    f0.reconnect(2).unwrap();
    fs::remove_file(&region2).unwrap();

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("files_and_permissions: not root, skipping the NotOwned checks (chown)");
    } else {
        let stranger = 12345;
        // A region file of another user, refused by the owner...
        fs::write(&region1, b"someone else's").unwrap();
        fs::set_permissions(&region1, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&region1, Some(stranger), None).unwrap();
        match OwnRegion::create(&dir, 1, &config) {
            Err(ShmError::NotOwned { uid, .. }) => assert_eq!(uid, stranger),
            Err(other) => panic!("expected NotOwned, got {other}"),
            Ok(_) => panic!("a region file of uid {stranger} was accepted"),
        }
        assert_eq!(fs::read(&region1).unwrap(), b"someone else's");
        // ...and by a peer, which says why.
        f0.write(1, layout.scratch, layout.background, 8, 3)
            .unwrap();
        assert_eq!(one(&mut f0).status, Status::Failed);
        let refusal = f0.refusal(1).unwrap_or_default().to_string();
        assert!(
            refusal.contains("owned by uid 12345"),
            "refusal: {refusal:?}"
        );
        f0.reconnect(1).unwrap();
        // A directory of another user.
        let theirs = tmp.path.join("theirs");
        fs::create_dir(&theirs).unwrap();
        fs::set_permissions(&theirs, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(stranger), None).unwrap();
        match RegionDir::open(&theirs) {
            Err(ShmError::NotOwned { uid, .. }) => assert_eq!(uid, stranger),
            Err(other) => panic!("expected NotOwned, got {other}"),
            Ok(_) => panic!("a directory of uid {stranger} was accepted"),
        }
    }
    drop(f0);
    drop(r0);
}

// ---------------------------------------------------------------------------------------------
// 9. Configuration mismatch
// ---------------------------------------------------------------------------------------------

/// Contract rule 1 (a replica trusts nothing of a peer whose configuration differs): posts to a
/// replica running another configuration complete `Failed`, land nothing, and `refusal` says
/// "another cluster configuration", also when the region sizes happen to agree.
#[test]
fn config_mismatch_is_refused() {
    let config = Config::new(3);
    let layout = Layout::new(&config);
    let other_size = Config {
        slot_count: 2048,
        ..config
    };
    let same_size = Config {
        op_timeout_ticks: config.op_timeout_ticks + 1,
        ..config
    };
    assert_eq!(
        Layout::new(&same_size).region_bytes,
        layout.region_bytes,
        "same layout, other configuration"
    );
    for (name, theirs) in [("size", other_size), ("hash", same_size)] {
        let tmp = TestDir::new(&format!("config-{name}"));
        let dir = tmp.open();
        // Owner threads: one thread must not create a region after dropping one.
        let (owner0, r0) = OwnerThread::create(&dir, 0, config);
        let (owner1, r1) = OwnerThread::create(&dir, 1, theirs);
        let (r0, r1) = (Arc::new(r0.unwrap()), Arc::new(r1.unwrap()));
        let mut f0 = fabric(&dir, config, &r0);
        let f1 = fabric(&dir, theirs, &r1);
        f0.store(layout.scratch, &pattern(64, 4));
        f0.write(1, layout.scratch, layout.background, 64, 1)
            .unwrap();
        assert_eq!(
            one(&mut f0),
            Completion {
                wr_id: 1,
                status: Status::Failed
            },
            "{name}: a write"
        );
        let refusal = f0.refusal(1).unwrap_or_default().to_string();
        assert!(
            refusal.contains("another cluster configuration"),
            "{name}: refusal {refusal:?}"
        );
        f0.reconnect(1).unwrap();
        f0.read(1, layout.background, layout.scratch + 64, 64, 2)
            .unwrap();
        assert_eq!(one(&mut f0).status, Status::Failed, "{name}: a read");
        assert_same(
            &load(&f1, layout.background, 64),
            &[0u8; 64],
            &format!("{name}: nothing landed"),
        );
        drop((f0, f1));
        drop((r0, r1));
        drop((owner0, owner1));
    }
}
