//! One test suite for the `Fabric` contract (the numbered rules of `mu_nostd::fabric`), run by
//! the same code against every fabric: the simulator's world (`tests/tests/contract.rs`), shared
//! memory (`runtime-linux/tests/shm_contract.rs`), verbs on Soft-RoCE
//! (`runtime-linux/tests/verbs_contract.rs`, in the guest of `scripts/verbs-guest`) and the
//! firmware's window (`runtime-embedded/tests/window_contract.rs`).
//!
//! A fabric's test file implements [`Harness`] (a cluster of three replicas, each with one
//! `Fabric` per plane, and whatever drives the fabric) and invokes [`suite!`], which expands to
//! one `#[test]` per rule below, with the same names for every fabric:
//!
//! | test | rules |
//! |---|---|
//! | [`rules::load_and_store_reach_the_own_region_from_both_planes`] | 2, 11 |
//! | [`rules::writes_and_reads_round_trip`] | 2 |
//! | [`rules::completions_come_in_posting_order_per_peer_and_plane`] | 3 |
//! | [`rules::a_log_write_without_a_grant_is_denied_and_breaks_the_connection`] | 5, 6 |
//! | [`rules::a_grant_lets_the_peer_write_the_log_and_a_revoke_stops_it`] | 5 |
//! | [`rules::a_write_posted_before_a_revoke_never_lands_even_after_a_new_grant`] | 5 |
//! | [`rules::the_background_plane_never_writes_a_log`] | 5, 13 |
//! | [`rules::reconnect_drops_outstanding_work`] | 7 |
//! | [`rules::outstanding_work_is_bounded`] | 8 |
//! | [`rules::bad_posts_fail_with_the_checks_in_one_order`] | 13 |
//! | [`rules::grant_and_revoke_of_no_other_replica_do_nothing`] | 13 |
//! | [`rules::each_plane_polls_only_its_own_completions`] | 11 |
//! | [`rules::a_live_peer_has_no_ended_life`] | 12 |
//! | [`rules::a_restarted_replica_starts_closed`] (harnesses that implement [`Restart`]) | 10 |
//!
//! What the suite does not check, and where it is checked: torn bytes (rule 4: the simulator's
//! seeds and the core's checksums), a dead replica's region (rule 9: the process tests of each
//! runtime), certain death reported (rule 12's positive half: the fabrics' own tests and the
//! fail-over runs), the layout (rule 1: the core), and writes racing a revoke on another core
//! (the fabrics' own tests).
//!
//! Nothing here passes or fails on timing: a wait has a generous deadline ([`DEADLINE`]) that
//! only turns a hang into a failure, and [`Harness::quiesce`] only gives an operation that must
//! not land any more every chance to show itself.

use std::fmt::Debug;
use std::time::{Duration, Instant};

pub use mu_nostd::{Completion, Config, Fabric, Layout, Plane, PostError, ReplicaId, Status};

/// How long a wait for completions may take before the test fails as hung.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Replicas in every cluster of the suite.
pub const REPLICAS: u8 = 3;

/// The configuration every test runs: three replicas, a small log.
pub fn config() -> Config {
    let config = Config {
        slot_count: 64,
        slot_size: 256,
        // A scratch area of more than 4 KiB, where the tests stage and land their bytes.
        transfer_chunk_bytes: 2048,
        transfer_window: 2,
        ..Config::new(REPLICAS)
    };
    config
        .validate()
        .expect("the suite's configuration is valid");
    config
}

/// A fabric's side of the suite: a cluster of [`REPLICAS`] replicas of [`config`], each with one
/// fabric per plane over its region, all fresh (zeroed regions, nobody granted, connections
/// unused).
pub trait Harness: Sized {
    /// The fabric's name, for messages.
    const NAME: &'static str;

    /// A fresh cluster for test `test`; `index` (distinct per test of the suite, below 32) lets
    /// a harness keep the resources of tests that run at the same time apart (directories,
    /// ports).
    fn new(test: &'static str, index: u16, config: Config) -> Self;

    /// Replica `r`'s fabric of `plane`.
    fn fabric(&mut self, r: ReplicaId, plane: Plane) -> Box<dyn Fabric + '_>;

    /// One step of whatever drives the fabric besides its own calls (the simulator's clock, the
    /// window's responders); nothing for fabrics that run by themselves.
    fn pump(&mut self) {}

    /// Returns once `r`'s connection of `plane` to `peer` carries operations (verbs: once its
    /// pairing is made), after the cluster started or after a `reconnect`. Called only while
    /// that plane of `r` has nothing outstanding. Nothing to do for most fabrics.
    fn settle(&mut self, r: ReplicaId, plane: Plane, peer: ReplicaId) {
        let _ = (r, plane, peer);
    }

    /// Gives operations that must not land any more (dropped by a reconnect, fenced by a
    /// revoke) every chance to land anyway, so that a check after it would see them: pumps
    /// well past the fabric's longest delay by default.
    fn quiesce(&mut self) {
        for _ in 0..256 {
            self.pump();
        }
    }
}

/// A harness that can restart a replica: a new life with a fresh zeroed region, as a process
/// or a VM that starts again.
pub trait Restart: Harness {
    /// Ends replica `r`'s life and starts the next one; `fabric(r, ..)` is then the new life's.
    fn restart(&mut self, r: ReplicaId);
}

/// A `Fabric` lent by mutable reference, for harnesses that own their fabrics:
/// `Box::new(Lend(&mut self.fabrics[r]))`.
pub struct Lend<'a, F: Fabric + ?Sized>(pub &'a mut F);

impl<F: Fabric + ?Sized> Fabric for Lend<'_, F> {
    fn write(
        &mut self,
        peer: ReplicaId,
        local_offset: u32,
        remote_offset: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<(), PostError> {
        self.0.write(peer, local_offset, remote_offset, len, wr_id)
    }

    fn write_done(
        &mut self,
        peer: ReplicaId,
        local_offset: u32,
        remote_offset: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<Option<Status>, PostError> {
        self.0
            .write_done(peer, local_offset, remote_offset, len, wr_id)
    }

    fn read(
        &mut self,
        peer: ReplicaId,
        remote_offset: u32,
        local_offset: u32,
        len: u32,
        wr_id: u64,
    ) -> Result<(), PostError> {
        self.0.read(peer, remote_offset, local_offset, len, wr_id)
    }

    fn poll(&mut self, completions: &mut [Completion]) -> usize {
        self.0.poll(completions)
    }

    fn grant(&mut self, peer: ReplicaId) {
        self.0.grant(peer);
    }

    fn revoke(&mut self, peer: ReplicaId) {
        self.0.revoke(peer);
    }

    fn reconnect(&mut self, peer: ReplicaId) -> Result<(), PostError> {
        self.0.reconnect(peer)
    }

    fn ended_life(&self, peer: ReplicaId) -> Option<u32> {
        self.0.ended_life(peer)
    }

    fn load(&self, offset: u32, buf: &mut [u8]) {
        self.0.load(offset, buf);
    }

    fn load_word(&self, offset: u32) -> u64 {
        self.0.load_word(offset)
    }

    fn store(&mut self, offset: u32, bytes: &[u8]) {
        self.0.store(offset, bytes);
    }
}

/// Expands to one `#[test]` per rule of the suite for harness `$harness`, each carrying the
/// attributes given after it (e.g. `#[ignore = "needs an RDMA device"]`). With `restarts`, the
/// harness implements [`Restart`] and the restart test is included.
///
/// ```ignore
/// fabric_contract::suite!(ShmHarness, restarts);
/// fabric_contract::suite!(VerbsHarness, #[ignore = "needs an RDMA device"]);
/// ```
#[macro_export]
macro_rules! suite {
    ($harness:ty, restarts $(, #[$attr:meta])* $(,)?) => {
        $crate::suite!($harness $(, #[$attr])*);
        $crate::suite!(@each $harness, [$(#[$attr])*], a_restarted_replica_starts_closed);
    };
    ($harness:ty $(, #[$attr:meta])* $(,)?) => {
        $crate::suite!(
            @each $harness, [$(#[$attr])*],
            load_and_store_reach_the_own_region_from_both_planes
            writes_and_reads_round_trip
            completions_come_in_posting_order_per_peer_and_plane
            a_log_write_without_a_grant_is_denied_and_breaks_the_connection
            a_grant_lets_the_peer_write_the_log_and_a_revoke_stops_it
            a_write_posted_before_a_revoke_never_lands_even_after_a_new_grant
            the_background_plane_never_writes_a_log
            reconnect_drops_outstanding_work
            outstanding_work_is_bounded
            bad_posts_fail_with_the_checks_in_one_order
            grant_and_revoke_of_no_other_replica_do_nothing
            each_plane_polls_only_its_own_completions
            a_live_peer_has_no_ended_life
            writes_done_within_their_post_keep_the_order
        );
    };
    (@each $harness:ty, $attrs:tt, ) => {};
    (@each $harness:ty, $attrs:tt, $name:ident $($rest:ident)*) => {
        $crate::suite!(@one $harness, $attrs, $name);
        $crate::suite!(@each $harness, $attrs, $($rest)*);
    };
    (@one $harness:ty, [$(#[$attr:meta])*], $name:ident) => {
        #[test]
        $(#[$attr])*
        fn $name() {
            $crate::rules::$name::<$harness>();
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers of the rules
// ---------------------------------------------------------------------------------------------

const REP: Plane = Plane::Replication;
const BG: Plane = Plane::Background;

/// A cluster under test: the harness, its layout, and the test's name for messages.
struct Cluster<H: Harness> {
    h: H,
    l: Layout,
    test: &'static str,
}

impl<H: Harness> Cluster<H> {
    /// A fresh cluster whose every connection carries operations.
    fn start(test: &'static str, index: u16) -> Cluster<H> {
        let config = config();
        let mut h = H::new(test, index, config);
        for r in 0..REPLICAS {
            for plane in Plane::ALL {
                for peer in others(r) {
                    h.settle(r, plane, peer);
                }
            }
        }
        let l = Layout::new(&config);
        assert!(
            l.region_bytes - l.scratch >= 4096,
            "the suite stages its bytes in the first 4 KiB of the scratch area"
        );
        Cluster { h, l, test }
    }

    fn at(&self) -> String {
        format!("{} ({})", self.test, H::NAME)
    }

    fn write(
        &mut self,
        r: ReplicaId,
        plane: Plane,
        peer: ReplicaId,
        (local, remote, len): (u32, u32, u32),
        wr_id: u64,
    ) -> Result<(), PostError> {
        self.h
            .fabric(r, plane)
            .write(peer, local, remote, len, wr_id)
    }

    fn write_done(
        &mut self,
        r: ReplicaId,
        plane: Plane,
        peer: ReplicaId,
        (local, remote, len): (u32, u32, u32),
        wr_id: u64,
    ) -> Result<Option<Status>, PostError> {
        self.h
            .fabric(r, plane)
            .write_done(peer, local, remote, len, wr_id)
    }

    fn read(
        &mut self,
        r: ReplicaId,
        plane: Plane,
        peer: ReplicaId,
        (local, remote, len): (u32, u32, u32),
        wr_id: u64,
    ) -> Result<(), PostError> {
        self.h
            .fabric(r, plane)
            .read(peer, remote, local, len, wr_id)
    }

    /// Posts a write that the rules say must be accepted.
    fn post_write(
        &mut self,
        r: ReplicaId,
        plane: Plane,
        peer: ReplicaId,
        range: (u32, u32, u32),
        wr_id: u64,
    ) {
        let posted = self.write(r, plane, peer, range, wr_id);
        assert_eq!(
            posted,
            Ok(()),
            "{}: replica {r}'s {} plane posting write {wr_id} (local, remote, len {range:?}) \
             to {peer}",
            self.at(),
            plane.name()
        );
    }

    /// Posts a read that the rules say must be accepted.
    fn post_read(
        &mut self,
        r: ReplicaId,
        plane: Plane,
        peer: ReplicaId,
        range: (u32, u32, u32),
        wr_id: u64,
    ) {
        let posted = self.read(r, plane, peer, range, wr_id);
        assert_eq!(
            posted,
            Ok(()),
            "{}: replica {r}'s {} plane posting read {wr_id} (local, remote, len {range:?}) \
             from {peer}",
            self.at(),
            plane.name()
        );
    }

    fn load(&mut self, r: ReplicaId, offset: u32, len: u32) -> Vec<u8> {
        let mut bytes = vec![0; len as usize];
        self.h.fabric(r, BG).load(offset, &mut bytes);
        bytes
    }

    fn store(&mut self, r: ReplicaId, offset: u32, bytes: &[u8]) {
        self.h.fabric(r, BG).store(offset, bytes);
    }

    /// The owner's grant, through its background plane (as the core does).
    fn grant(&mut self, owner: ReplicaId, peer: ReplicaId) {
        self.h.fabric(owner, BG).grant(peer);
    }

    fn revoke(&mut self, owner: ReplicaId, peer: ReplicaId) {
        self.h.fabric(owner, BG).revoke(peer);
    }

    /// Reconnects and waits until the connection carries operations again.
    fn reconnect(&mut self, r: ReplicaId, plane: Plane, peer: ReplicaId) {
        let done = self.h.fabric(r, plane).reconnect(peer);
        assert_eq!(
            done,
            Ok(()),
            "{}: reconnect of {r}'s {} plane to {peer}",
            self.at(),
            plane.name()
        );
        self.h.settle(r, plane, peer);
    }

    /// The next `n` completions of `r`'s `plane`, polled a few at a time (partial polls), never
    /// more than `n`; fails if they do not come within [`DEADLINE`].
    fn complete(&mut self, r: ReplicaId, plane: Plane, n: usize) -> Vec<Completion> {
        let start = Instant::now();
        let mut got = Vec::with_capacity(n);
        let mut buf = [Completion::EMPTY; 3];
        let mut turn = 0;
        while got.len() < n {
            assert!(
                start.elapsed() < DEADLINE,
                "{}: {n} completions expected on replica {r}'s {} plane, {} came within \
                 {DEADLINE:?}: {got:?}",
                self.at(),
                plane.name(),
                got.len()
            );
            self.h.pump();
            turn += 1;
            let want = (n - got.len()).min(1 + turn % 3);
            let k = self.h.fabric(r, plane).poll(&mut buf[..want]);
            assert!(k <= want, "poll filled more than the buffer");
            if k == 0 {
                std::thread::yield_now();
            }
            got.extend_from_slice(&buf[..k]);
        }
        got
    }

    /// The one completion a single post produced.
    fn one(&mut self, r: ReplicaId, plane: Plane) -> Completion {
        self.complete(r, plane, 1)[0]
    }

    /// Whatever completions come once the fabric is quiet.
    fn leftovers(&mut self, r: ReplicaId, plane: Plane) -> Vec<Completion> {
        self.h.quiesce();
        let mut got = Vec::new();
        let mut buf = [Completion::EMPTY; 8];
        loop {
            let k = self.h.fabric(r, plane).poll(&mut buf);
            if k == 0 {
                return got;
            }
            got.extend_from_slice(&buf[..k]);
        }
    }

    /// Asserts that no completion is waiting on any plane of any replica.
    fn assert_quiet(&mut self, what: &str) {
        for r in 0..REPLICAS {
            for plane in Plane::ALL {
                let left = self.leftovers(r, plane);
                assert!(
                    left.is_empty(),
                    "{}: {what}: replica {r}'s {} plane has unexpected completions {left:?}",
                    self.at(),
                    plane.name()
                );
            }
        }
    }

    /// Asserts that `r`'s bytes at `offset` are `expected`.
    fn assert_bytes(&mut self, r: ReplicaId, offset: u32, expected: &[u8], what: &str) {
        let actual = self.load(r, offset, expected.len() as u32);
        assert_same(&actual, expected, &format!("{}: {what}", self.at()));
    }

    /// Posts background-plane writes from `r` to `peer`'s heartbeat record without polling
    /// until the fabric says `Busy`; returns how many it accepted.
    fn fill(&mut self, r: ReplicaId, peer: ReplicaId, first_id: u64) -> u64 {
        const CAP: u64 = 1 << 16;
        let range = (self.l.scratch, self.l.heartbeat(), 16);
        for i in 0..CAP {
            match self.write(r, BG, peer, range, first_id + i) {
                Ok(()) => {}
                Err(PostError::Busy) => {
                    assert!(i > 0, "{}: Busy with nothing outstanding", self.at());
                    return i;
                }
                Err(other) => panic!("{}: post {i} of a fill: {other:?}", self.at()),
            }
        }
        panic!(
            "{}: {CAP} posts to one peer without polling, never Busy (rule 8)",
            self.at()
        );
    }
}

fn others(r: ReplicaId) -> impl Iterator<Item = ReplicaId> {
    (0..REPLICAS).filter(move |&p| p != r)
}

/// Position-dependent bytes, never zero, different for each seed.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(131) ^ (i >> 7) ^ (seed as usize * 37)) as u8 | 1)
        .collect()
}

/// Compares byte strings, naming the first difference instead of dumping them.
pub fn assert_same(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    if let Some(first) = actual.iter().zip(expected).position(|(a, e)| a != e) {
        let count = actual.iter().zip(expected).filter(|(a, e)| a != e).count();
        panic!(
            "{what}: {count} of {} bytes differ, the first at byte {first} (found {:#04x}, \
             expected {:#04x})",
            actual.len(),
            actual[first],
            expected[first]
        );
    }
}

fn ids(completions: &[Completion]) -> Vec<u64> {
    completions.iter().map(|c| c.wr_id).collect()
}

fn all_ok(completions: &[Completion]) -> bool {
    completions.iter().all(|c| c.status == Status::Ok)
}

fn sorted<T: Ord + Clone + Debug>(items: &[T]) -> Vec<T> {
    let mut items = items.to_vec();
    items.sort();
    items
}

/// The generic tests, one per rule; [`suite!`] calls them.
pub mod rules {
    use super::*;

    /// Rules 2 and 11: `store` and `load` reach the replica's own region, whole and exact, at
    /// odd offsets and lengths, up to the region's last byte; both planes' fabrics of a replica
    /// address the same region; no replica's store reaches another's region; `load_word` reads
    /// the bytes `load` reads.
    pub fn load_and_store_reach_the_own_region_from_both_planes<H: Harness>() {
        let mut c = Cluster::<H>::start("load_and_store_reach_the_own_region_from_both_planes", 0);
        let l = c.l;
        let spots = [
            (l.background + 5, 77),
            (l.slot(3) + 1, l.slot_size + 3),
            (l.transfer + 3, 61),
            (l.scratch + 9, 200),
            (l.region_bytes - 7, 7),
        ];
        for r in 0..REPLICAS {
            for (i, &(offset, len)) in spots.iter().enumerate() {
                let bytes = pattern(len as usize, r * 16 + i as u8);
                let (by, from) = if i % 2 == 0 { (REP, BG) } else { (BG, REP) };
                c.h.fabric(r, by).store(offset, &bytes);
                let mut back = vec![0; len as usize];
                c.h.fabric(r, from).load(offset, &mut back);
                let what = format!("{}: replica {r}, {len} bytes at {offset}", c.at());
                assert_same(&back, &bytes, &what);
                // A word load reads the same bytes as `load`, from either plane.
                let word = (offset + 7) & !7;
                if word + 8 <= offset + len {
                    let at = (word - offset) as usize;
                    let expected = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
                    for plane in [REP, BG] {
                        let got = c.h.fabric(r, plane).load_word(word);
                        assert_eq!(got, expected, "{what}: the word at {word}");
                    }
                }
            }
        }
        // Each replica holds its own bytes: the stores of the others went elsewhere.
        for r in 0..REPLICAS {
            for (i, &(offset, len)) in spots.iter().enumerate() {
                let what = format!("replica {r}'s own bytes at {offset}");
                c.assert_bytes(r, offset, &pattern(len as usize, r * 16 + i as u8), &what);
            }
        }
        c.assert_quiet("after loads and stores");
    }

    /// Rule 2: a successful write completion means exactly the written bytes are in the peer's
    /// region (odd offsets and lengths, neighbours untouched); a read lands the peer's bytes in
    /// the reader's own region; completions carry the caller's work-request ids. Reads need no
    /// grant, also of the log area and of either plane.
    pub fn writes_and_reads_round_trip<H: Harness>() {
        let mut c = Cluster::<H>::start("writes_and_reads_round_trip", 1);
        let l = c.l;
        let area = l.log - l.background;
        for r in [1, 2] {
            c.store(r, l.background, &vec![0xEE; area as usize]);
        }
        let bytes = pattern(101, 3);
        let src = l.scratch + 3;
        let dst = l.background + 17;
        c.store(0, src, &bytes);
        c.post_write(0, BG, 1, (src, dst, 101), 11);
        c.post_write(0, BG, 2, (src, dst, 101), 21);
        c.post_write(0, BG, 1, (src, dst + 101, 1), 12);
        c.post_write(0, BG, 2, (src + 100, l.background, 1), 22);
        let done = c.complete(0, BG, 4);
        assert_eq!(sorted(&ids(&done)), [11, 12, 21, 22], "{}", c.at());
        assert!(all_ok(&done), "{}: {done:?}", c.at());
        let mut expected1 = vec![0xEE; area as usize];
        let at = (dst - l.background) as usize;
        expected1[at..at + 101].copy_from_slice(&bytes);
        expected1[at + 101] = bytes[0];
        c.assert_bytes(1, l.background, &expected1, "replica 1's background area");
        let mut expected2 = vec![0xEE; area as usize];
        expected2[at..at + 101].copy_from_slice(&bytes);
        expected2[0] = bytes[100];
        c.assert_bytes(2, l.background, &expected2, "replica 2's background area");

        // Reads: of a peer's header and background area, and of its log area (no grant).
        let header = pattern(64, 4);
        c.store(1, 0, &header);
        let log2 = pattern(l.slot_size as usize, 9);
        c.store(2, l.slot(5), &log2);
        let (landing1, landing2, landing3) = (l.scratch + 300, l.scratch + 501, l.scratch + 1024);
        c.post_read(0, BG, 1, (landing1, dst, 101), 31);
        c.post_read(0, REP, 2, (landing2, l.slot(5), l.slot_size), 41);
        c.post_read(0, REP, 1, (landing3, 0, 64), 32);
        let bg = c.one(0, BG);
        assert_eq!(
            bg,
            Completion {
                wr_id: 31,
                status: Status::Ok
            },
            "{}",
            c.at()
        );
        let rep = c.complete(0, REP, 2);
        assert_eq!(sorted(&ids(&rep)), [32, 41], "{}", c.at());
        assert!(all_ok(&rep), "{}: {rep:?}", c.at());
        c.assert_bytes(0, landing1, &bytes, "read of replica 1's background area");
        c.assert_bytes(0, landing2, &log2, "read of replica 2's log area");
        c.assert_bytes(0, landing3, &header, "read of replica 1's header");

        // And the other way round: replica 2 writes into replica 0 and reads it back.
        let back = pattern(40, 5);
        c.store(2, l.scratch + 64, &back);
        c.post_write(2, BG, 0, (l.scratch + 64, l.background + 8, 40), 77);
        assert_eq!(
            c.one(2, BG),
            Completion {
                wr_id: 77,
                status: Status::Ok
            }
        );
        c.assert_bytes(0, l.background + 8, &back, "replica 0's background area");
        c.post_read(2, REP, 0, (l.scratch + 2048, l.background + 8, 40), 78);
        assert_eq!(
            c.one(2, REP),
            Completion {
                wr_id: 78,
                status: Status::Ok
            }
        );
        c.assert_bytes(2, l.scratch + 2048, &back, "read back from replica 0");
        c.assert_quiet("after the round trips");
    }

    /// Rule 3: operations of one plane to one peer complete in the order posted, writes and
    /// reads mixed, through polls of one to three completions at a time; every operation
    /// completes exactly once, with its own id.
    pub fn completions_come_in_posting_order_per_peer_and_plane<H: Harness>() {
        let mut c = Cluster::<H>::start("completions_come_in_posting_order_per_peer_and_plane", 2);
        let l = c.l;
        for r in 0..REPLICAS {
            c.store(r, l.scratch, &pattern(512, r));
        }
        let mut posted: Vec<(Plane, ReplicaId, u64)> = Vec::new();
        for i in 0..12u32 {
            let peer = 1 + (i % 2) as u8;
            let wr_id = u64::from(peer) * 1000 + u64::from(i);
            let remote = l.background + 16 * (i % 8);
            if i % 3 == 0 {
                c.post_read(0, BG, peer, (l.scratch + 1024 + 16 * i, remote, 16), wr_id);
            } else {
                c.post_write(0, BG, peer, (l.scratch + 16 * i, remote, 16), wr_id);
            }
            posted.push((BG, peer, wr_id));
            // Replication-plane reads in between (its writes would need a grant).
            let wr_id = 100_000 + wr_id;
            c.post_read(
                0,
                REP,
                peer,
                (l.scratch + 2048 + 16 * i, l.slot(i.into()), 16),
                wr_id,
            );
            posted.push((REP, peer, wr_id));
        }
        for plane in Plane::ALL {
            let done = c.complete(0, plane, 12);
            assert!(all_ok(&done), "{}: {done:?}", c.at());
            for peer in [1, 2] {
                let expected: Vec<u64> = posted
                    .iter()
                    .filter(|&&(p, q, _)| p == plane && q == peer)
                    .map(|&(_, _, id)| id)
                    .collect();
                let got: Vec<u64> = ids(&done)
                    .into_iter()
                    .filter(|id| expected.contains(id))
                    .collect();
                assert_eq!(
                    got,
                    expected,
                    "{}: the {} plane's completions to {peer} in posting order",
                    c.at(),
                    plane.name()
                );
            }
        }
        c.assert_quiet("after every completion");
    }

    /// Rules 5 and 6: a replication-plane write into a log area whose owner granted nobody (or
    /// another peer) completes `Denied`, lands nothing, and breaks that connection: every
    /// later post on it fails `Broken` until `reconnect`; the same plane's connection to
    /// another peer and the other plane's to the same peer keep working; a reconnect grants
    /// nothing.
    pub fn a_log_write_without_a_grant_is_denied_and_breaks_the_connection<H: Harness>() {
        let mut c = Cluster::<H>::start(
            "a_log_write_without_a_grant_is_denied_and_breaks_the_connection",
            3,
        );
        let l = c.l;
        let log_end = l.log + l.log_bytes();
        let held = pattern(l.slot_size as usize, 50);
        c.store(1, l.slot(0), &held);
        let tail = pattern(16, 51);
        c.store(1, log_end - 16, &tail);
        c.store(0, l.scratch, &pattern(l.slot_size as usize, 52));
        let denied = |c: &mut Cluster<H>, remote: u32, len: u32, wr_id: u64, what: &str| {
            c.post_write(0, REP, 1, (l.scratch, remote, len), wr_id);
            let done = c.one(0, REP);
            assert_eq!(
                done,
                Completion {
                    wr_id,
                    status: Status::Denied
                },
                "{}: {what}",
                c.at()
            );
            let broken = Err(PostError::Broken);
            let write = c.write(0, REP, 1, (l.scratch, l.slot(1), 64), wr_id + 1);
            assert_eq!(write, broken, "{}: {what}: a write after Denied", c.at());
            let read = c.read(0, REP, 1, (l.scratch + 512, l.heartbeat(), 16), wr_id + 2);
            assert_eq!(read, broken, "{}: {what}: a read after Denied", c.at());
            // The plane's connection to another peer, and the other plane's, still work.
            c.post_read(0, REP, 2, (l.scratch + 1024, l.heartbeat(), 16), wr_id + 3);
            assert_eq!(c.one(0, REP).status, Status::Ok, "{}: {what}: to 2", c.at());
            c.post_read(0, BG, 1, (l.scratch + 1024, l.heartbeat(), 16), wr_id + 4);
            assert_eq!(
                c.one(0, BG).status,
                Status::Ok,
                "{}: {what}: bg plane",
                c.at()
            );
            // Still broken until the reconnect; then it carries reads again.
            let read = c.read(0, REP, 1, (l.scratch + 512, l.heartbeat(), 16), wr_id + 5);
            assert_eq!(read, broken, "{}: {what}: still broken", c.at());
            c.reconnect(0, REP, 1);
            c.post_read(0, REP, 1, (l.scratch + 512, l.slot(0), 64), wr_id + 6);
            assert_eq!(
                c.one(0, REP),
                Completion {
                    wr_id: wr_id + 6,
                    status: Status::Ok
                },
                "{}: {what}: a read after the reconnect",
                c.at()
            );
        };
        denied(
            &mut c,
            l.slot(0),
            l.slot_size,
            10,
            "a log write, nobody granted",
        );
        c.assert_bytes(1, l.slot(0), &held, "the log after a denied write");
        denied(&mut c, log_end - 16, 16, 20, "a write at the log's end");
        c.assert_bytes(1, log_end - 16, &tail, "the log's end after a denied write");
        denied(
            &mut c,
            l.log,
            64,
            30,
            "a write at the log's start, again (a reconnect grants nothing)",
        );
        // A grant to another peer opens nothing to this one.
        c.grant(1, 2);
        denied(
            &mut c,
            l.slot(0),
            l.slot_size,
            40,
            "a log write while only 2 is granted",
        );
        c.assert_bytes(1, l.slot(0), &held, "the log with 2 granted");
        c.revoke(1, 2);
        c.assert_quiet("after the refusals");
    }

    /// Rule 5: a grant lets the peer write the owner's log area (up to its last byte); after a
    /// revoke its writes are refused and land nothing; granted again, after a reconnect, its
    /// writes land again.
    pub fn a_grant_lets_the_peer_write_the_log_and_a_revoke_stops_it<H: Harness>() {
        let mut c = Cluster::<H>::start(
            "a_grant_lets_the_peer_write_the_log_and_a_revoke_stops_it",
            4,
        );
        let l = c.l;
        let log_end = l.log + l.log_bytes();
        let len = l.slot_size;
        let first = pattern(len as usize, 60);
        c.store(0, l.scratch, &first);
        c.grant(1, 0);
        c.post_write(0, REP, 1, (l.scratch, l.slot(1), len), 1);
        c.post_write(0, REP, 1, (l.scratch + 7, log_end - 16, 16), 2);
        let done = c.complete(0, REP, 2);
        assert_eq!(ids(&done), [1, 2], "{}", c.at());
        assert!(all_ok(&done), "{}: granted: {done:?}", c.at());
        c.assert_bytes(1, l.slot(1), &first, "the log after a granted write");
        c.assert_bytes(
            1,
            log_end - 16,
            &first[7..23],
            "the log's end after a granted write",
        );

        c.revoke(1, 0);
        let second = pattern(len as usize, 61);
        c.store(0, l.scratch, &second);
        c.post_write(0, REP, 1, (l.scratch, l.slot(1), len), 3);
        assert_eq!(
            c.one(0, REP),
            Completion {
                wr_id: 3,
                status: Status::Denied
            },
            "{}: a write after the revoke",
            c.at()
        );
        c.assert_bytes(1, l.slot(1), &first, "the log after a revoked write");
        c.reconnect(0, REP, 1);
        c.post_write(0, REP, 1, (l.scratch, l.slot(2), len), 4);
        assert_eq!(
            c.one(0, REP).status,
            Status::Denied,
            "{}: still revoked after a reconnect",
            c.at()
        );
        c.assert_bytes(1, l.slot(2), &vec![0; len as usize], "the log after that");

        c.reconnect(0, REP, 1);
        c.grant(1, 0);
        c.reconnect(0, REP, 1);
        let third = pattern(len as usize, 62);
        c.store(0, l.scratch, &third);
        c.post_write(0, REP, 1, (l.scratch, l.slot(1), len), 5);
        assert_eq!(
            c.one(0, REP),
            Completion {
                wr_id: 5,
                status: Status::Ok
            },
            "{}: granted again",
            c.at()
        );
        c.assert_bytes(1, l.slot(1), &third, "the log after the new grant");
        c.revoke(1, 0);
        c.assert_quiet("after the grants");
    }

    /// Rule 5, the stronger half: once `revoke` returns, no write the peer posted before it
    /// lands in the log area, even after the peer is granted again; those writes complete (with
    /// any status: one the fabric executed before the revoke may say `Ok`), and after a
    /// reconnect the peer's new writes land under the new grant.
    pub fn a_write_posted_before_a_revoke_never_lands_even_after_a_new_grant<H: Harness>() {
        let mut c = Cluster::<H>::start(
            "a_write_posted_before_a_revoke_never_lands_even_after_a_new_grant",
            5,
        );
        let l = c.l;
        let len = l.slot_size;
        let stale = pattern(len as usize, 70);
        c.store(0, l.scratch, &stale);
        c.grant(1, 0);
        for i in 0..3u64 {
            c.post_write(0, REP, 1, (l.scratch, l.slot(2 + i), len), 1 + i);
        }
        c.revoke(1, 0);
        // From here on nothing of those writes may land: mark the slots.
        let mark = pattern(3 * len as usize, 71);
        c.store(1, l.slot(2), &mark);
        c.grant(1, 0);
        let done = c.complete(0, REP, 3);
        assert_eq!(ids(&done), [1, 2, 3], "{}: {done:?}", c.at());
        c.h.quiesce();
        c.assert_bytes(
            1,
            l.slot(2),
            &mark,
            "the log after stale writes met a new grant",
        );
        // The writer reconnects (as a new tenure does); its new writes land.
        c.reconnect(0, REP, 1);
        let fresh = pattern(len as usize, 72);
        c.store(0, l.scratch, &fresh);
        c.post_write(0, REP, 1, (l.scratch, l.slot(3), len), 4);
        assert_eq!(
            c.one(0, REP),
            Completion {
                wr_id: 4,
                status: Status::Ok
            },
            "{}: a write posted after the new grant",
            c.at()
        );
        let mut expected = mark.clone();
        expected[len as usize..2 * len as usize].copy_from_slice(&fresh);
        c.assert_bytes(1, l.slot(2), &expected, "the log after the fresh write");
        c.revoke(1, 0);
        c.assert_quiet("after the fence");
    }

    /// Rules 5 and 13: a background-plane write into a log area is refused at post with
    /// `OutOfBounds`, granted or not, and lands nothing; the background plane may read a log.
    pub fn the_background_plane_never_writes_a_log<H: Harness>() {
        let mut c = Cluster::<H>::start("the_background_plane_never_writes_a_log", 6);
        let l = c.l;
        let held = pattern(l.slot_size as usize, 80);
        c.store(1, l.slot(0), &held);
        c.store(0, l.scratch, &pattern(l.slot_size as usize, 81));
        let oob = Err(PostError::OutOfBounds);
        for granted in [false, true] {
            if granted {
                c.grant(1, 0);
            }
            let into = [
                (l.slot(0), 64),
                (l.log, 16),
                (l.log + l.log_bytes() - 16, 16),
                (l.slot(1) - 3, 9),
            ];
            for (i, (remote, len)) in into.into_iter().enumerate() {
                let posted = c.write(0, BG, 1, (l.scratch, remote, len), i as u64);
                assert_eq!(
                    posted,
                    oob,
                    "{}: a background-plane write of {len} bytes at {remote} (granted: \
                     {granted})",
                    c.at()
                );
            }
            // The connection is not broken by a refused post: it carries on.
            c.post_read(0, BG, 1, (l.scratch + 1024, l.slot(0), l.slot_size), 9);
            assert_eq!(
                c.one(0, BG),
                Completion {
                    wr_id: 9,
                    status: Status::Ok
                }
            );
            c.assert_bytes(
                0,
                l.scratch + 1024,
                &held,
                "a background-plane read of the log",
            );
            c.assert_bytes(1, l.slot(0), &held, "the log");
        }
        c.revoke(1, 0);
        c.assert_quiet("after the refused posts");
    }

    /// Rule 7: `reconnect` drops what is outstanding on the connection: those operations
    /// complete `Failed` or never, none of them lands after `reconnect` returns (writes into
    /// the peer's log, reads into the own region), other peers' work is untouched, and the
    /// connection carries new work (under the standing grant) afterwards.
    pub fn reconnect_drops_outstanding_work<H: Harness>() {
        let mut c = Cluster::<H>::start("reconnect_drops_outstanding_work", 7);
        let l = c.l;
        let len = l.slot_size;
        c.store(0, l.scratch, &pattern(4 * len as usize, 90));
        c.store(1, l.background, &pattern(256, 91));
        c.grant(2, 0);
        for i in 0..4u64 {
            c.post_write(
                0,
                REP,
                2,
                (l.scratch + i as u32 * len, l.slot(8 + i), len),
                10 + i,
            );
        }
        for i in 0..4u32 {
            c.post_read(
                0,
                BG,
                1,
                (l.scratch + 2048 + 64 * i, l.background + 64 * i, 64),
                20 + u64::from(i),
            );
        }
        // Replica 2's background plane has work of its own to 1, which stays.
        c.store(2, l.scratch, &pattern(16, 92));
        c.post_write(2, BG, 1, (l.scratch, l.heartbeat(), 16), 30);
        c.h.fabric(0, REP).reconnect(2).unwrap();
        c.h.fabric(0, BG).reconnect(1).unwrap();
        let log_now = c.load(2, l.slot(8), 4 * len);
        let landing_now = c.load(0, l.scratch + 2048, 256);
        for plane in Plane::ALL {
            let left = c.leftovers(0, plane);
            assert!(
                left.iter().all(|done| done.status == Status::Failed),
                "{}: completions of dropped work on the {} plane: {left:?}",
                c.at(),
                plane.name()
            );
        }
        c.assert_bytes(
            2,
            l.slot(8),
            &log_now,
            "replica 2's log after the reconnect",
        );
        c.assert_bytes(
            0,
            l.scratch + 2048,
            &landing_now,
            "replica 0's landing area",
        );
        assert_eq!(
            c.one(2, BG),
            Completion {
                wr_id: 30,
                status: Status::Ok
            }
        );
        // The connections carry new work, under the grant that stands.
        c.h.settle(0, REP, 2);
        c.h.settle(0, BG, 1);
        c.store(0, l.scratch, &pattern(len as usize, 93));
        c.post_write(0, REP, 2, (l.scratch, l.slot(9), len), 40);
        assert_eq!(
            c.one(0, REP),
            Completion {
                wr_id: 40,
                status: Status::Ok
            }
        );
        c.assert_bytes(
            2,
            l.slot(9),
            &pattern(len as usize, 93),
            "a write after the reconnect",
        );
        let theirs = c.load(1, l.background + 64, 64);
        c.post_read(0, BG, 1, (l.scratch + 2048, l.background + 64, 64), 41);
        assert_eq!(
            c.one(0, BG),
            Completion {
                wr_id: 41,
                status: Status::Ok
            }
        );
        c.assert_bytes(0, l.scratch + 2048, &theirs, "a read after it");
        c.revoke(2, 0);
        c.assert_quiet("after the reconnects");
    }

    /// Rule 8: posting to one peer without polling fails `Busy` once the fabric's bound is
    /// reached, for writes and reads alike; the bound is per connection (another peer, the
    /// other plane still take work); every accepted post completes, in order; polling makes
    /// room again.
    pub fn outstanding_work_is_bounded<H: Harness>() {
        let mut c = Cluster::<H>::start("outstanding_work_is_bounded", 8);
        let l = c.l;
        c.store(0, l.scratch, &pattern(16, 100));
        let n = c.fill(0, 1, 1000);
        eprintln!("{}: Busy after {n} outstanding operations", c.at());
        let busy = Err(PostError::Busy);
        let write = c.write(0, BG, 1, (l.scratch, l.heartbeat(), 16), 1);
        assert_eq!(write, busy, "{}: a write past the bound", c.at());
        let read = c.read(0, BG, 1, (l.scratch + 64, l.heartbeat(), 16), 2);
        assert_eq!(read, busy, "{}: a read past the bound", c.at());
        c.post_write(0, BG, 2, (l.scratch, l.heartbeat(), 16), 3);
        c.post_read(0, REP, 1, (l.scratch + 64, l.heartbeat(), 16), 4);
        let done = c.complete(0, BG, n as usize + 1);
        assert!(all_ok(&done), "{}: {done:?}", c.at());
        let to1: Vec<u64> = ids(&done).into_iter().filter(|&id| id != 3).collect();
        let expected: Vec<u64> = (1000..1000 + n).collect();
        assert_eq!(to1, expected, "{}: every post to 1, in order", c.at());
        assert_eq!(
            c.one(0, REP),
            Completion {
                wr_id: 4,
                status: Status::Ok
            }
        );
        c.post_write(0, BG, 1, (l.scratch, l.heartbeat(), 16), 5);
        assert_eq!(
            c.one(0, BG),
            Completion {
                wr_id: 5,
                status: Status::Ok
            }
        );
        c.assert_bytes(
            1,
            l.heartbeat(),
            &pattern(16, 100),
            "replica 1's heartbeat record",
        );
        c.assert_quiet("after the bound");
    }

    /// Rule 13: every fabric refuses a bad post the same way, with `check_post`'s checks in
    /// their order (`NoSuchPeer`; `OutOfBounds` for the local range, the remote range, a
    /// background-plane write into a log), then the connection's (`Broken`, then `Busy`);
    /// refused posts complete nothing, and what `check_post` allows (reads anywhere below the
    /// scratch area, writes up to an area's last byte) is carried.
    pub fn bad_posts_fail_with_the_checks_in_one_order<H: Harness>() {
        let mut c = Cluster::<H>::start("bad_posts_fail_with_the_checks_in_one_order", 9);
        let l = c.l;
        let end = l.region_bytes;
        let none = Err(PostError::NoSuchPeer);
        let oob = Err(PostError::OutOfBounds);
        // 1. The peer first, whatever else is wrong.
        for peer in [0, REPLICAS, 7, 200, 255] {
            for plane in Plane::ALL {
                let at = format!("{}: peer {peer}, {} plane", c.at(), plane.name());
                assert_eq!(
                    c.write(0, plane, peer, (end - 4, l.transfer, 8), 1),
                    none,
                    "{at}"
                );
                assert_eq!(
                    c.write(0, plane, peer, (l.scratch, l.slot(0), 8), 1),
                    none,
                    "{at}"
                );
                assert_eq!(
                    c.read(0, plane, peer, (u32::MAX, u32::MAX, 2), 1),
                    none,
                    "{at}"
                );
                assert_eq!(c.read(0, plane, peer, (l.scratch, 0, 8), 1), none, "{at}");
                assert_eq!(
                    c.h.fabric(0, plane).reconnect(peer),
                    none,
                    "{at}: reconnect"
                );
            }
        }
        // 2. The local range, 3. the remote range, 4. a background-plane write into a log.
        let bad: [(Plane, bool, (u32, u32, u32)); 19] = [
            (REP, true, (end - 4, l.heartbeat(), 8)),
            (BG, true, (end, l.heartbeat(), 1)),
            (BG, false, (u32::MAX, l.heartbeat(), 2)),
            (REP, false, (end - 7, 0, 8)),
            (BG, true, (0, 0, u32::MAX)),
            (BG, true, (l.scratch, 0, 16)), // the region header
            (BG, true, (l.scratch, l.log - 8, 16)), // across the log's start
            (REP, true, (l.scratch, l.log - 8, 16)),
            (REP, true, (l.scratch, l.transfer - 8, 16)), // across the log's end
            (REP, true, (l.scratch, l.transfer, 16)),     // the transfer area
            (BG, true, (l.scratch, l.scratch + 64, 16)),  // the scratch area
            (REP, true, (l.scratch, end - 8, 16)),
            (REP, true, (l.scratch, u32::MAX - 4, 8)),
            (BG, false, (l.scratch, l.scratch, 16)), // a read of the scratch area
            (REP, false, (l.scratch, l.scratch - 8, 16)),
            (REP, false, (l.scratch, end, 1)),
            (BG, false, (l.scratch, 8, u32::MAX)),
            (BG, true, (l.scratch, l.slot(0), 16)), // the background plane into a log
            (BG, true, (end + 64, l.slot(0), 16)),  // ... with a bad local range
        ];
        let post_bad = |c: &mut Cluster<H>, peer: ReplicaId, what: &str| {
            for (i, &(plane, write, range)) in bad.iter().enumerate() {
                let posted = if write {
                    c.write(0, plane, peer, range, 500 + i as u64)
                } else {
                    c.read(0, plane, peer, range, 500 + i as u64)
                };
                assert_eq!(
                    posted,
                    oob,
                    "{}: {what}: bad post {i} ({} plane, {}, local/remote/len {range:?})",
                    c.at(),
                    plane.name(),
                    if write { "write" } else { "read" }
                );
            }
        };
        post_bad(&mut c, 1, "a healthy connection");
        c.assert_quiet("refused posts complete nothing");
        // What check_post allows is carried: a read across the background and log areas and
        // one across the log and transfer areas, up to the scratch area's start; a write up to
        // the background area's last byte.
        let below_scratch = l.scratch;
        let theirs = pattern(below_scratch as usize, 110);
        c.store(2, 0, &theirs);
        let spans = [
            (l.log - 32, 64),
            (l.transfer - 32, 64),
            (l.scratch - 16, 16),
            (l.background - 8, 8 + 64),
        ];
        for (i, &(remote, len)) in spans.iter().enumerate() {
            let landing = l.scratch + 512 * i as u32;
            c.post_read(0, REP, 2, (landing, remote, len), 600 + i as u64);
            assert_eq!(
                c.one(0, REP),
                Completion {
                    wr_id: 600 + i as u64,
                    status: Status::Ok
                },
                "{}: a read of {len} bytes at {remote}",
                c.at()
            );
            let what = format!("a read of {len} bytes at {remote}");
            c.assert_bytes(
                0,
                landing,
                &theirs[remote as usize..(remote + len) as usize],
                &what,
            );
        }
        c.store(0, l.scratch, &pattern(64, 111));
        c.post_write(0, BG, 2, (l.scratch, l.log - 64, 64), 610);
        assert_eq!(
            c.one(0, BG),
            Completion {
                wr_id: 610,
                status: Status::Ok
            }
        );
        c.assert_bytes(
            2,
            l.log - 64,
            &pattern(64, 111),
            "a write up to the log's start",
        );

        // On a broken connection: the post checks come first, then Broken, never Busy.
        c.post_write(0, REP, 1, (l.scratch, l.slot(0), 64), 700);
        assert_eq!(c.one(0, REP).status, Status::Denied, "{}", c.at());
        post_bad(&mut c, 1, "a broken connection");
        assert_eq!(
            c.write(0, REP, 7, (l.scratch, l.slot(0), 8), 1),
            none,
            "{}",
            c.at()
        );
        for i in 0..300 {
            let read = c.read(0, REP, 1, (l.scratch, l.heartbeat(), 16), 800 + i);
            assert_eq!(
                read,
                Err(PostError::Broken),
                "{}: post {i} on a broken connection",
                c.at()
            );
        }
        c.assert_quiet("posts refused on a broken connection complete nothing");
        c.reconnect(0, REP, 1);

        // On a full connection: the post checks come first, then Busy.
        c.store(0, l.scratch, &pattern(16, 112));
        let n = c.fill(0, 1, 1000);
        post_bad(&mut c, 1, "a full connection");
        assert_eq!(
            c.write(0, BG, 9, (l.scratch, l.heartbeat(), 16), 1),
            none,
            "{}",
            c.at()
        );
        let busy = c.write(0, BG, 1, (l.scratch, l.heartbeat(), 16), 1);
        assert_eq!(busy, Err(PostError::Busy), "{}", c.at());
        let done = c.complete(0, BG, n as usize);
        assert_eq!(
            ids(&done),
            (1000..1000 + n).collect::<Vec<_>>(),
            "{}",
            c.at()
        );
        assert!(all_ok(&done), "{}: {done:?}", c.at());
        c.assert_quiet("after the bad posts");
    }

    /// Rule 13: a `grant` or `revoke` naming no other replica of the cluster (the owner itself,
    /// an id past the cluster) does nothing: no peer gains the log, none loses it.
    pub fn grant_and_revoke_of_no_other_replica_do_nothing<H: Harness>() {
        let mut c = Cluster::<H>::start("grant_and_revoke_of_no_other_replica_do_nothing", 10);
        let l = c.l;
        let held = pattern(64, 120);
        c.store(1, l.slot(0), &held);
        c.store(0, l.scratch, &pattern(64, 121));
        c.store(2, l.scratch, &pattern(64, 122));
        for plane in Plane::ALL {
            for peer in [1, REPLICAS, 7, 8, 200, 255] {
                c.h.fabric(1, plane).grant(peer);
            }
        }
        for writer in [0, 2] {
            c.post_write(writer, REP, 1, (l.scratch, l.slot(0), 64), 1);
            let done = c.one(writer, REP);
            assert_eq!(done.status, Status::Denied, "{}: writer {writer}", c.at());
            c.assert_bytes(1, l.slot(0), &held, "the log after grants to nobody");
            c.reconnect(writer, REP, 1);
        }
        c.grant(1, 0);
        for plane in Plane::ALL {
            for peer in [1, REPLICAS, 7, 8, 200, 255] {
                c.h.fabric(1, plane).revoke(peer);
            }
        }
        c.post_write(0, REP, 1, (l.scratch, l.slot(0), 64), 2);
        assert_eq!(
            c.one(0, REP),
            Completion {
                wr_id: 2,
                status: Status::Ok
            },
            "{}: revokes of nobody took the grant",
            c.at()
        );
        c.assert_bytes(
            1,
            l.slot(0),
            &pattern(64, 121),
            "the log after revokes of nobody",
        );
        c.revoke(1, 0);
        c.assert_quiet("after grants and revokes of nobody");
    }

    /// Rule 11: each plane's fabric has its own completion queue: it polls only the work
    /// posted on it, whatever the other plane of the same replica posted to the same peers.
    pub fn each_plane_polls_only_its_own_completions<H: Harness>() {
        let mut c = Cluster::<H>::start("each_plane_polls_only_its_own_completions", 11);
        let l = c.l;
        for i in 0..4u32 {
            for peer in [1, 2] {
                let id = u64::from(peer) * 10 + u64::from(i);
                let landing = l.scratch + 64 * (i + 4 * u32::from(peer));
                c.post_read(0, REP, peer, (landing, l.heartbeat(), 16), 100 + id);
                c.post_read(0, BG, peer, (landing + 1024, l.heartbeat(), 16), 200 + id);
            }
        }
        let bg = c.complete(0, BG, 8);
        let rep = c.complete(0, REP, 8);
        assert!(all_ok(&bg) && all_ok(&rep), "{}: {bg:?} {rep:?}", c.at());
        let expected = |base: u64| sorted(&[10, 11, 12, 13, 20, 21, 22, 23].map(|id| base + id));
        assert_eq!(
            sorted(&ids(&bg)),
            expected(200),
            "{}: background plane",
            c.at()
        );
        assert_eq!(
            sorted(&ids(&rep)),
            expected(100),
            "{}: replication plane",
            c.at()
        );
        // The other replicas' planes saw none of it.
        for r in [1, 2] {
            for plane in Plane::ALL {
                let left = c.leftovers(r, plane);
                assert!(left.is_empty(), "{}: replica {r}: {left:?}", c.at());
            }
        }
        c.assert_quiet("after both planes' work");
    }

    /// Rules 2, 3 and 6 for `write_done`: a write it answers landed whole by the answer and is
    /// never reported by `poll`; a write posted behind one not yet reported is not answered,
    /// and comes through `poll` after it; a refused write is `Denied` either way and breaks
    /// the connection.
    pub fn writes_done_within_their_post_keep_the_order<H: Harness>() {
        let mut c = Cluster::<H>::start("writes_done_within_their_post_keep_the_order", 14);
        let l = c.l;
        let bytes = pattern(512, 7);
        c.store(0, l.scratch, &bytes);
        c.post_write(0, BG, 1, (l.scratch, l.background, 16), 1);
        let behind = c.write_done(0, BG, 1, (l.scratch + 16, l.background + 16, 16), 2);
        assert_eq!(
            behind,
            Ok(None),
            "{}: answered behind a write not polled",
            c.at()
        );
        let done = c.complete(0, BG, 2);
        assert_eq!(ids(&done), [1, 2], "{}: in posting order", c.at());
        assert!(all_ok(&done), "{}: {done:?}", c.at());
        c.assert_bytes(1, l.background, &bytes[..32], "both landed");
        for i in 2..10u32 {
            let at = 16 * i;
            let range = (l.scratch + at, l.background + at, 16);
            let wr_id = u64::from(i) + 1;
            match c.write_done(0, BG, 1, range, wr_id) {
                Ok(Some(status)) => assert_eq!(status, Status::Ok, "{}", c.at()),
                Ok(None) => {
                    let done = c.one(0, BG);
                    assert_eq!((done.wr_id, done.status), (wr_id, Status::Ok), "{}", c.at());
                }
                Err(error) => panic!("{}: write {wr_id} refused: {error:?}", c.at()),
            }
            let what = format!("write {wr_id} landed by its completion");
            c.assert_bytes(1, l.background + at, &bytes[at as usize..][..16], &what);
        }
        c.assert_quiet("after writes answered or polled once each");
        let slot = c.load(1, l.slot(0), 64);
        let refused = (l.scratch, l.slot(0), 64);
        let status = match c.write_done(0, REP, 1, refused, 20) {
            Ok(Some(status)) => status,
            Ok(None) => c.one(0, REP).status,
            Err(error) => panic!("{}: the log write refused at post: {error:?}", c.at()),
        };
        assert_eq!(
            status,
            Status::Denied,
            "{}: a log write nobody granted",
            c.at()
        );
        c.assert_bytes(1, l.slot(0), &slot, "the refused write landed nothing");
        let after = c.write(0, REP, 1, (l.scratch, l.heartbeat(), 16), 21);
        assert_eq!(after, Err(PostError::Broken), "{}: after Denied", c.at());
        c.reconnect(0, REP, 1);
        c.assert_quiet("after the refused write");
    }

    /// Rule 12: a live peer is never reported ended, by either plane of any replica, before
    /// or after traffic with it.
    pub fn a_live_peer_has_no_ended_life<H: Harness>() {
        let mut c = Cluster::<H>::start("a_live_peer_has_no_ended_life", 12);
        let l = c.l;
        let check = |c: &mut Cluster<H>, when: &str| {
            c.h.quiesce();
            for r in 0..REPLICAS {
                for plane in Plane::ALL {
                    for peer in others(r) {
                        let ended = c.h.fabric(r, plane).ended_life(peer);
                        assert_eq!(
                            ended,
                            None,
                            "{}: {when}: replica {r}'s {} plane on live peer {peer}",
                            c.at(),
                            plane.name()
                        );
                    }
                }
            }
        };
        check(&mut c, "at the start");
        for r in 0..REPLICAS {
            for plane in Plane::ALL {
                for peer in others(r) {
                    c.post_read(r, plane, peer, (l.scratch, l.heartbeat(), 16), 1);
                    assert_eq!(c.one(r, plane).status, Status::Ok, "{}", c.at());
                }
            }
        }
        check(&mut c, "after reads");
    }

    /// Rule 10: a restarted replica's new life starts closed: its region is fresh and grants
    /// nobody (the writer it granted in its earlier life is refused); nothing posted to its
    /// earlier life lands in the new one, nor does anything posted on a connection that
    /// talked to the earlier life without a reconnect; nothing its earlier life posted lands
    /// after the restart; after a reconnect, peers reach the new life.
    pub fn a_restarted_replica_starts_closed<H: Restart>() {
        let mut c = Cluster::<H>::start("a_restarted_replica_starts_closed", 13);
        let l = c.l;
        let len = l.slot_size;
        let old = pattern(len as usize, 130);
        c.store(0, l.scratch, &old);
        c.grant(1, 0);
        // The earlier life takes writes on both planes.
        c.post_write(0, REP, 1, (l.scratch, l.slot(0), len), 1);
        c.post_write(0, BG, 1, (l.scratch, l.heartbeat(), 16), 2);
        assert_eq!(
            c.one(0, REP),
            Completion {
                wr_id: 1,
                status: Status::Ok
            }
        );
        assert_eq!(
            c.one(0, BG),
            Completion {
                wr_id: 2,
                status: Status::Ok
            }
        );
        c.assert_bytes(1, l.slot(0), &old, "the earlier life's log");
        // Posted to the earlier life, not yet polled (nor, where a driver runs the fabric,
        // executed): a log write and a background write.
        c.post_write(0, REP, 1, (l.scratch, l.slot(1), len), 3);
        c.post_write(0, BG, 1, (l.scratch, l.heartbeat() + 16, 16), 4);
        // And the earlier life posts to replica 2.
        c.store(1, l.scratch, &pattern(64, 131));
        c.post_write(1, BG, 2, (l.scratch, l.heartbeat(), 16), 5);
        c.h.restart(1);
        let two = c.load(2, l.heartbeat(), 16);
        let zeros = vec![0u8; len as usize];
        c.h.quiesce();
        c.assert_bytes(1, l.slot(0), &zeros, "the new life's log");
        c.assert_bytes(
            1,
            l.slot(1),
            &zeros,
            "the new life's log (a write to the earlier life)",
        );
        c.assert_bytes(1, l.heartbeat(), &[0; 32], "the new life's background area");
        c.assert_bytes(
            2,
            l.heartbeat(),
            &two,
            "replica 2 (a write of the earlier life)",
        );
        // Whatever completed of what went to the earlier life, on both planes: write 3 and 4.
        for plane in Plane::ALL {
            let left = c.leftovers(0, plane);
            let id = if plane == REP { 3 } else { 4 };
            assert!(
                left.iter().all(|done| done.wr_id == id),
                "{}: {left:?}",
                c.at()
            );
        }
        // A connection that talked to the earlier life does not carry work into the new one.
        for plane in Plane::ALL {
            let remote = if plane == REP {
                l.slot(2)
            } else {
                l.heartbeat()
            };
            if c.write(0, plane, 1, (l.scratch, remote, 16), 6).is_ok() {
                let left = c.leftovers(0, plane);
                assert!(
                    left.iter()
                        .all(|done| done.wr_id == 6 && done.status != Status::Ok),
                    "{}: a post on the {} plane's old connection: {left:?}",
                    c.at(),
                    plane.name()
                );
            }
            c.assert_bytes(
                1,
                remote,
                &[0; 16],
                "the new life, after a post on an old connection",
            );
        }
        // After a reconnect, peers reach the new life; it granted nobody.
        c.reconnect(0, REP, 1);
        c.reconnect(0, BG, 1);
        let fresh = pattern(64, 132);
        c.store(0, l.scratch, &fresh);
        c.post_write(0, BG, 1, (l.scratch, l.heartbeat(), 16), 7);
        assert_eq!(
            c.one(0, BG),
            Completion {
                wr_id: 7,
                status: Status::Ok
            }
        );
        c.assert_bytes(
            1,
            l.heartbeat(),
            &fresh[..16],
            "the new life's background area",
        );
        c.post_write(0, REP, 1, (l.scratch, l.slot(0), 64), 8);
        assert_eq!(
            c.one(0, REP),
            Completion {
                wr_id: 8,
                status: Status::Denied
            },
            "{}: a log write to the new life, granted only by the earlier one",
            c.at()
        );
        c.assert_bytes(1, l.slot(0), &[0; 64], "the new life's log");
        c.reconnect(0, REP, 1);
        // The new life's own grant opens its log.
        c.grant(1, 0);
        c.post_write(0, REP, 1, (l.scratch, l.slot(0), 64), 9);
        assert_eq!(
            c.one(0, REP),
            Completion {
                wr_id: 9,
                status: Status::Ok
            }
        );
        c.assert_bytes(1, l.slot(0), &fresh, "the new life's log, granted by it");
        c.revoke(1, 0);
        // The new life reaches its peers too.
        c.reconnect(1, BG, 2);
        c.post_read(1, BG, 2, (l.scratch, l.heartbeat(), 16), 10);
        assert_eq!(
            c.one(1, BG),
            Completion {
                wr_id: 10,
                status: Status::Ok
            }
        );
        c.assert_bytes(1, l.scratch, &two, "the new life's read of replica 2");
    }
}
