//! The window fabric against the Fabric contract (`docs/fabric-contract.md`): ordering,
//! completions, permissions (including a revoke racing writes in flight on another thread),
//! reconnects, bounds, and peers that write garbage into the rings.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};

use mu_nostd::layout::Layout;
use mu_nostd::{Completion, Config, Fabric, PostError, Status};
use runtime_embedded::fabric::WindowFabric;
use runtime_embedded::permissions::Permissions;
use runtime_embedded::responder::Responder;
use runtime_embedded::ring::{Count, Request, Ring, RING_DEPTH};
use runtime_embedded::window::{Plane, WindowLayout};
use runtime_embedded::words::Words;

fn config() -> Config {
    Config::new(3)
}

fn layout() -> WindowLayout {
    WindowLayout::new(&config()).unwrap()
}

fn backing() -> Vec<AtomicU32> {
    (0..layout().bytes / 4).map(|_| AtomicU32::new(0)).collect()
}

fn region() -> Layout {
    layout().region
}

/// Polls until `n` completions arrived, serving `responder` in between.
fn complete(fabric: &mut WindowFabric, responder: &mut Responder, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    let mut buf = [Completion::EMPTY; 8];
    for _ in 0..10_000 {
        responder.serve();
        let got = fabric.poll(&mut buf);
        out.extend_from_slice(&buf[..got]);
        if out.len() >= n {
            return out;
        }
    }
    panic!("only {} of {n} completions", out.len());
}

fn remote_bytes(window: Words, id: u8, offset: u32, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    window.load(layout().region(id) as usize + offset as usize, &mut bytes);
    bytes
}

#[test]
fn operations_to_one_peer_complete_in_order_and_take_effect() {
    let memory = backing();
    let window = Words::new(&memory);
    let (p0, p1) = (Permissions::new(), Permissions::new());
    let mut fabric = WindowFabric::new(window, layout(), 0, Plane::Background, &p0);
    let mut responder1 = Responder::new(window, layout(), 1, &p1);
    let heartbeat = region().heartbeat();
    fabric.store(heartbeat, b"0123456789abcdef");
    fabric.write(1, heartbeat, heartbeat, 16, 7).unwrap();
    // Read it back into our landing area: ordered after the write.
    let landing = region().landing_heartbeat(1);
    fabric.read(1, heartbeat, landing, 16, 8).unwrap();
    fabric.write(1, heartbeat, heartbeat + 3, 5, 9).unwrap();
    let done = complete(&mut fabric, &mut responder1, 3);
    let ids: Vec<u64> = done.iter().map(|c| c.wr_id).collect();
    assert_eq!(ids, [7, 8, 9]);
    assert!(done.iter().all(|c| c.status == Status::Ok));
    let mut landed = [0u8; 16];
    fabric.load(landing, &mut landed);
    assert_eq!(&landed, b"0123456789abcdef");
    assert_eq!(
        remote_bytes(window, 1, heartbeat, 16),
        b"0120123489abcdef".to_vec()
    );
}

#[test]
fn a_write_to_the_log_without_a_grant_is_denied_and_breaks_the_connection() {
    let memory = backing();
    let window = Words::new(&memory);
    let (p0, p1) = (Permissions::new(), Permissions::new());
    let mut fabric = WindowFabric::new(window, layout(), 0, Plane::Replication, &p0);
    let mut responder1 = Responder::new(window, layout(), 1, &p1);
    let slot = region().slot(0);
    fabric.store(slot, &[0xAB; 64]);
    fabric.write(1, slot, slot, 64, 1).unwrap();
    fabric.write(1, slot, slot + 64, 64, 2).unwrap();
    let done = complete(&mut fabric, &mut responder1, 2);
    assert_eq!(
        done[0],
        Completion {
            wr_id: 1,
            status: Status::Denied
        }
    );
    // What was posted behind the refused write is flushed, not executed.
    assert_eq!(
        done[1],
        Completion {
            wr_id: 2,
            status: Status::Failed
        }
    );
    assert_eq!(remote_bytes(window, 1, slot, 128), vec![0; 128]);
    assert_eq!(fabric.write(1, slot, slot, 64, 3), Err(PostError::Broken));
    // The background area stays writable by all, after a reconnect.
    fabric.reconnect(1).unwrap();
    let heartbeat = region().heartbeat();
    fabric.write(1, slot, heartbeat, 16, 4).unwrap();
    assert_eq!(
        complete(&mut fabric, &mut responder1, 1)[0].status,
        Status::Ok
    );
}

#[test]
fn grant_lets_a_peer_write_the_log_and_revoke_stops_it() {
    let memory = backing();
    let window = Words::new(&memory);
    let (p0, p1) = (Permissions::new(), Permissions::new());
    let mut fabric = WindowFabric::new(window, layout(), 0, Plane::Replication, &p0);
    let mut owner = WindowFabric::new(window, layout(), 1, Plane::Background, &p1);
    let mut responder1 = Responder::new(window, layout(), 1, &p1);
    let slot = region().slot(3);
    fabric.store(slot, &[0x11; 64]);
    owner.grant(0);
    fabric.write(1, slot, slot, 64, 1).unwrap();
    assert_eq!(
        complete(&mut fabric, &mut responder1, 1)[0].status,
        Status::Ok
    );
    assert_eq!(remote_bytes(window, 1, slot, 64), vec![0x11; 64]);
    owner.revoke(0);
    fabric.store(slot, &[0x22; 64]);
    fabric.write(1, slot, slot, 64, 2).unwrap();
    assert_eq!(
        complete(&mut fabric, &mut responder1, 1)[0].status,
        Status::Denied
    );
    assert_eq!(remote_bytes(window, 1, slot, 64), vec![0x11; 64]);
}

/// Rule 5 under a real race: a writer thread keeps the ring full of log writes while the
/// responder runs on its own thread (a responder core); the owner revokes at an arbitrary
/// moment. After `revoke` returns, the log must never change again.
#[test]
fn revoke_holds_against_writes_in_flight_on_another_core() {
    for round in 0..100u32 {
        let memory = backing();
        let window = Words::new(&memory);
        let (p0, p1) = (Permissions::new(), Permissions::new());
        let slot = region().slot(0);
        // Long copies (64 KiB) keep the responder inside one almost all the time, so the revoke
        // nearly always meets a copy in flight.
        let len = 64 * 1024u32;
        p1.grant(0);
        let stop = AtomicBool::new(false);
        let revoked = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut responder = Responder::new(window, layout(), 1, &p1);
                while !stop.load(SeqCst) {
                    responder.serve();
                }
            });
            s.spawn(|| {
                let mut writer = WindowFabric::new(window, layout(), 0, Plane::Replication, &p0);
                let mut buf = [Completion::EMPTY; 32];
                let mut pattern = 0u8;
                while !stop.load(SeqCst) {
                    pattern = pattern.wrapping_add(1);
                    writer.store(slot, &vec![pattern; len as usize]);
                    let posted = writer.write(1, slot, slot, len, u64::from(pattern));
                    if posted == Err(PostError::Broken) {
                        writer.reconnect(1).unwrap();
                    }
                    writer.poll(&mut buf);
                }
            });
            let mut owner = WindowFabric::new(window, layout(), 1, Plane::Background, &p1);
            std::thread::sleep(std::time::Duration::from_micros(
                500 + u64::from(round) * 50,
            ));
            owner.revoke(0);
            revoked.store(true, SeqCst);
            let after = remote_bytes(window, 1, slot, len as usize);
            std::thread::sleep(std::time::Duration::from_millis(5));
            let later = remote_bytes(window, 1, slot, len as usize);
            stop.store(true, SeqCst);
            assert_eq!(
                after, later,
                "round {round}: a write landed after revoke returned"
            );
        });
        assert!(revoked.load(SeqCst));
    }
}

/// The contract's stronger rule 5: a write posted before a revoke never lands, even when the
/// peer is granted again before the responder gets to it (a NIC resets the queue pair).
#[test]
fn a_write_posted_before_a_revoke_never_lands_even_after_a_new_grant() {
    let memory = backing();
    let window = Words::new(&memory);
    let (p0, p1) = (Permissions::new(), Permissions::new());
    let mut writer = WindowFabric::new(window, layout(), 0, Plane::Replication, &p0);
    let mut owner = WindowFabric::new(window, layout(), 1, Plane::Background, &p1);
    let mut responder1 = Responder::new(window, layout(), 1, &p1);
    let slot = region().slot(5);
    writer.store(slot, &[0x44; 64]);
    owner.grant(0);
    writer.write(1, slot, slot, 64, 1).unwrap();
    writer.write(1, slot, slot + 64, 64, 2).unwrap();
    owner.revoke(0);
    owner.grant(0);
    let done = complete(&mut writer, &mut responder1, 2);
    assert!(done.iter().all(|c| c.status == Status::Failed), "{done:?}");
    assert_eq!(remote_bytes(window, 1, slot, 128), vec![0; 128]);
    // After a reconnect (what the core does on a failure), new writes land under the grant.
    writer.reconnect(1).unwrap();
    writer.write(1, slot, slot, 64, 3).unwrap();
    assert_eq!(
        complete(&mut writer, &mut responder1, 1)[0].status,
        Status::Ok
    );
    assert_eq!(remote_bytes(window, 1, slot, 64), vec![0x44; 64]);
}

#[test]
fn the_background_plane_cannot_write_a_log() {
    let memory = backing();
    let window = Words::new(&memory);
    let p0 = Permissions::new();
    let mut fabric = WindowFabric::new(window, layout(), 0, Plane::Background, &p0);
    let slot = region().slot(0);
    assert_eq!(
        fabric.write(1, slot, slot, 64, 1),
        Err(PostError::OutOfBounds)
    );
    // Reading a log is fine (catch-up reads go through the replication plane, but nothing in
    // the contract forbids it).
    assert_eq!(
        fabric.read(1, slot, region().landing_slot(1), 64, 2),
        Ok(())
    );
}

#[test]
fn reconnect_drops_what_is_outstanding() {
    let memory = backing();
    let window = Words::new(&memory);
    let (p0, p1) = (Permissions::new(), Permissions::new());
    let mut fabric = WindowFabric::new(window, layout(), 0, Plane::Background, &p0);
    let heartbeat = region().heartbeat();
    fabric.store(heartbeat, &[0x33; 16]);
    for id in 0..RING_DEPTH {
        fabric
            .write(1, heartbeat, heartbeat, 16, u64::from(id))
            .unwrap();
    }
    assert_eq!(
        fabric.write(1, heartbeat, heartbeat, 16, 99),
        Err(PostError::Busy)
    );
    // The peer never served them (it was down); the plane gives up and reconnects.
    fabric.reconnect(1).unwrap();
    let mut responder1 = Responder::new(window, layout(), 1, &p1);
    responder1.serve();
    assert_eq!(remote_bytes(window, 1, heartbeat, 16), vec![0; 16]);
    let mut buf = [Completion::EMPTY; 8];
    assert_eq!(
        fabric.poll(&mut buf),
        0,
        "completions of a dropped generation"
    );
    fabric.write(1, heartbeat, heartbeat, 16, 100).unwrap();
    assert_eq!(complete(&mut fabric, &mut responder1, 1)[0].wr_id, 100);
    assert_eq!(remote_bytes(window, 1, heartbeat, 16), vec![0x33; 16]);
}

#[test]
fn bad_posts_are_typed_errors() {
    let memory = backing();
    let window = Words::new(&memory);
    let p0 = Permissions::new();
    let mut fabric = WindowFabric::new(window, layout(), 0, Plane::Background, &p0);
    let end = region().region_bytes;
    assert_eq!(fabric.write(0, 0, 0, 8, 1), Err(PostError::NoSuchPeer));
    assert_eq!(fabric.write(3, 0, 0, 8, 1), Err(PostError::NoSuchPeer));
    assert_eq!(
        fabric.write(1, end - 4, 0, 8, 1),
        Err(PostError::OutOfBounds)
    );
    assert_eq!(fabric.read(2, end, 0, 1, 1), Err(PostError::OutOfBounds));
    assert_eq!(
        fabric.read(2, u32::MAX, 0, 2, 1),
        Err(PostError::OutOfBounds)
    );
    assert_eq!(fabric.reconnect(7), Err(PostError::NoSuchPeer));
}

/// A peer that writes garbage into its ring to us: the responder completes what it can as
/// `Failed`, never panics, and never touches memory outside the two regions.
#[test]
fn garbage_in_a_ring_fails_requests_without_harm() {
    let memory = backing();
    let window = Words::new(&memory);
    let p1 = Permissions::new();
    let mut responder1 = Responder::new(window, layout(), 1, &p1);
    let ring = Ring::new(window, layout().ring(0, 1, Plane::Background));
    let bad = [
        Request {
            kind: 9,
            local: 0,
            remote: 0,
            len: 8,
        },
        Request {
            kind: 1,
            local: u32::MAX,
            remote: 0,
            len: 8,
        },
        Request {
            kind: 2,
            local: 0,
            remote: u32::MAX - 2,
            len: 8,
        },
        Request {
            kind: 1,
            local: 0,
            remote: 0,
            len: u32::MAX,
        },
    ];
    for (i, request) in bad.iter().enumerate() {
        let tag = Count {
            generation: 0,
            count: i as u16,
        };
        ring.write_entry(tag, *request);
    }
    ring.set_posted(Count {
        generation: 0,
        count: bad.len() as u16,
    });
    assert_eq!(responder1.serve(), bad.len() as u32);
    assert_eq!(ring.status(0), runtime_embedded::ring::STATUS_FAILED);
    // A count far ahead of what was served is ignored, not trusted.
    ring.set_posted(Count {
        generation: 0,
        count: 40_000,
    });
    assert_eq!(responder1.serve(), 0);
    // A word no sender writes is ignored too.
    window
        .word(layout().ring(0, 1, Plane::Background) as usize)
        .store(u32::MAX, SeqCst);
    assert_eq!(responder1.serve(), 0);
}
