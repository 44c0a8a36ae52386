//! No heap allocation on the hot path: three replicas over the shared-memory fabric, driven from
//! this thread through the same loop steps the runtime's threads run, replicate 10,000 commands
//! submitted through the leader's client port while a counting global allocator watches. Every
//! step of every plane of every replica counts, not just the leader's propose-to-commit path.

// Every `unsafe` block states why it is sound; every `unsafe fn` says what its callers must
// uphold, and its body spells out its own unsafe operations.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use board_configs::Polling;
use mu_nostd::{Config, Shared};
use runtime_linux::kv;
use runtime_linux::node::{NodeSpec, Parts};
use runtime_linux::port::{Outcome, Port, Stat};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every method forwards its arguments unchanged to the system allocator, whose
// results meet `GlobalAlloc`'s contract; the counting beside it neither allocates (a
// thread-local `Cell` of a const initialiser and an atomic) nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: our caller meets `GlobalAlloc::alloc`'s contract (`layout` of non-zero
        // size), which is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated with `layout` by this allocator, that is by `System`
        // (our caller's promise, and every allocation here forwards to it).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `ptr` was allocated with `layout` by `System` (as in `dealloc`) and
        // `new_size` meets `realloc`'s contract (our caller's promise).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn leader_propose_to_commit_allocates_nothing() {
    // A debug build keeps the replicas' loops by value in several frames on their way into the
    // vector, more than a test thread's 2 MiB.
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(propose_to_commit)
        .expect("a thread for the test")
        .join()
        .expect("no allocation on the hot path");
}

fn propose_to_commit() {
    let dir = std::path::PathBuf::from(format!("/dev/shm/mu-test-no-alloc-{}", std::process::id()));
    let mut config = Config::new(3);
    config.slot_count = 4096;
    config.slot_size = 256;
    let specs: Vec<NodeSpec> = (0..3)
        .map(|id| NodeSpec {
            id,
            config,
            tick_ns: 10_000, // Slow ticks: one thread drives all six planes.
            dir: dir.clone(),
            verbs: None,
            polling: Polling::Shared,
            replication_core: None,
            background_core: None,
            realtime_priority: None,
            kv_keys: runtime_linux::node::KV_KEYS,
            serve: None,
        })
        .collect();
    let parts: Vec<Parts> = specs.iter().map(|s| Parts::create(s).unwrap()).collect();
    let shared = [Shared::new(), Shared::new(), Shared::new()];
    let mut loops: Vec<_> = (0..3)
        .map(|i| {
            let kv = runtime_linux::kv::Kv::new(specs[i].kv_keys);
            parts[i].loops(&specs[i], &shared[i], kv).unwrap()
        })
        .collect();
    let clients: Vec<Port> = (0..3).map(|id| Port::attach(&dir, id).unwrap()).collect();
    let mut step_all = || {
        for (replication, background) in loops.iter_mut() {
            background.step();
            replication.step();
        }
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = |step_all: &mut dyn FnMut()| loop {
        step_all();
        if let Some(l) = (0..3).find(|&i| clients[i].get(Stat::FastPath) == 1) {
            return l;
        }
        assert!(Instant::now() < deadline, "no leader on the fast path");
    };
    let mut command = [0u8; 128];
    // Keeps 8 commands in flight at the leader; one that comes back uncommitted (the leader
    // changed) is sent again to the new one. Returns the commands that needed a retry.
    let mut run = |count: u64, first: u64, step_all: &mut dyn FnMut()| {
        let (mut sent, mut done, mut retries) = (0, 0, 0);
        let mut port = &clients[leader(step_all)];
        let mut in_flight = 0;
        while done < count {
            while sent < count && in_flight < 8 {
                let seq = first + sent;
                let len = kv::encode_put(&mut command, seq % 100, seq, &[seq as u8; 64]);
                assert!(port.push_request(seq, &command[..len]));
                sent += 1;
                in_flight += 1;
            }
            step_all();
            while let Some(response) = port.take_response() {
                in_flight -= 1;
                if response.outcome == Outcome::Committed {
                    done += 1;
                } else {
                    retries += 1;
                    sent -= 1; // Resent (with a new sequence number) below.
                }
            }
            if port.get(Stat::FastPath) == 0 && in_flight == 0 {
                port = &clients[leader(step_all)];
            }
            assert!(Instant::now() < deadline, "stalled");
        }
        retries
    };
    run(1000, 0, &mut step_all); // Warm-up: first-time paths may allocate.
    COUNTING.with(|c| c.set(true));
    let retries = run(10_000, 1_000_000, &mut step_all);
    COUNTING.with(|c| c.set(false));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(retries, 0, "the leader changed while counting");
    assert_eq!(allocations, 0, "allocations on the hot path");
    for _ in 0..2000 {
        step_all();
    }
    let digests: Vec<_> = clients.iter().map(|c| c.digest()).collect();
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    let committed: u64 = clients.iter().map(|c| c.get(Stat::Committed)).sum();
    assert!(committed >= 11_000);
    drop(loops);
    drop(parts);
    std::fs::remove_dir_all(&dir).unwrap();
}
