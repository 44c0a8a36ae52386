//! The verbs fabric against a real verbs stack. The tests marked `#[ignore]` need an RDMA device;
//! `scripts/verbs-guest` runs them inside a QEMU guest with Soft-RoCE (`rdma_rxe`), where
//! `MU_VERBS_DEVICE`, `MU_VERBS_GID` and `MU_VERBS_IP` name the device, the GID index and the
//! address of its interface. The first test runs everywhere: a host without the device gets a
//! clear error, never a panic.
//!
//! Three endpoints live in this one process, each with its own region and handshake port, and
//! talk through the device exactly as three processes would.
#![cfg(feature = "verbs")]
// Every `unsafe` block states why it is sound; every `unsafe fn` says what its callers must
// uphold, and its body spells out its own unsafe operations.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mu_nostd::{Completion, Config, Fabric, Layout, PostError, Status};
use runtime_linux::shm::{OwnRegion, RegionDir};
use runtime_linux::verbs::ibv::DeviceList;
use runtime_linux::verbs::wire::Plane;
use runtime_linux::verbs::{Endpoint, VerbsFabric, VerbsSpec};

fn device() -> String {
    std::env::var("MU_VERBS_DEVICE").unwrap_or_else(|_| "rxe0".into())
}

fn gid_index() -> u8 {
    std::env::var("MU_VERBS_GID")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(1)
}

fn ip() -> IpAddr {
    std::env::var("MU_VERBS_IP")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

fn config() -> Config {
    let mut config = Config::new(3);
    config.slot_count = 64;
    config.slot_size = 256;
    config
}

/// A fresh directory for one test's regions.
fn test_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(format!(
        "/dev/shm/mu-test-verbs-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

struct Replica {
    replication: VerbsFabric,
    background: VerbsFabric,
}

/// Three endpoints with handshake ports `base..base+3`, each running `configs[i]`.
fn cluster(name: &str, base: u16, configs: [Config; 3]) -> Vec<Replica> {
    let dir = test_dir(name);
    let addresses: Vec<SocketAddr> = (0..3).map(|i| SocketAddr::new(ip(), base + i)).collect();
    (0..3u8)
        .map(|id| {
            let config = configs[id as usize];
            let sub = dir.join(format!("r{id}"));
            std::fs::create_dir_all(&dir).unwrap();
            let regions = RegionDir::open(&sub).unwrap();
            let own = Arc::new(OwnRegion::create(&regions, id, &config).unwrap());
            let spec = VerbsSpec {
                device: device(),
                port: 1,
                gid_index: gid_index(),
                addresses: addresses.clone(),
            };
            let endpoint = Endpoint::open(id, config, &spec, own).unwrap();
            Replica {
                replication: VerbsFabric::new(endpoint.clone(), Plane::Replication),
                background: VerbsFabric::new(endpoint, Plane::Background),
            }
        })
        .collect()
}

const WAIT: Duration = Duration::from_secs(20);

/// Polls `fabric` until a completion arrives; panics after [`WAIT`].
fn next_completion(fabric: &mut VerbsFabric) -> Completion {
    let deadline = Instant::now() + WAIT;
    let mut out = [Completion::EMPTY; 1];
    loop {
        if fabric.poll(&mut out) == 1 {
            return out[0];
        }
        assert!(Instant::now() < deadline, "no completion within {WAIT:?}");
        std::thread::yield_now();
    }
}

/// Reads `peer`'s header until a read succeeds: the connection is paired.
fn await_connected(fabric: &mut VerbsFabric, layout: &Layout, peer: u8) {
    let deadline = Instant::now() + WAIT;
    loop {
        fabric
            .read(peer, 0, layout.landing_header(peer), 64, 1)
            .unwrap();
        if next_completion(fabric).status == Status::Ok {
            return;
        }
        assert!(Instant::now() < deadline, "never connected to {peer}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reconnects `replica`'s replication plane to `peer` and waits until the new pairing works.
fn reconnect(replica: &mut Replica, layout: &Layout, peer: u8) {
    replica.replication.reconnect(peer).unwrap();
    await_connected(&mut replica.replication, layout, peer);
}

/// Writes `value` (64 bytes of it) from `from`'s outbox into `to`'s slot 0 and returns how the
/// write completed.
fn write_slot(from: &mut Replica, layout: &Layout, to: u8, value: u8) -> Result<Status, PostError> {
    let staging = layout.scratch;
    from.replication.store(staging, &[value; 64]);
    from.replication
        .write(to, staging, layout.slot(0), 64, value as u64)?;
    let completion = next_completion(&mut from.replication);
    assert_eq!(completion.wr_id, value as u64);
    Ok(completion.status)
}

fn slot0(replica: &Replica, layout: &Layout) -> [u8; 64] {
    let mut bytes = [0u8; 64];
    replica.replication.load(layout.slot(0), &mut bytes);
    bytes
}

/// Ports per test and process, below verbs_contract.rs's and below Linux's ephemeral range
/// (32768 up), where outgoing connections take their local ports.
fn base_port(test: u16) -> u16 {
    20_000 + (std::process::id() % 350) as u16 * 16 + test * 3
}

#[test]
fn a_missing_device_is_a_clear_error() {
    let dir = test_dir("missing");
    let regions = RegionDir::open(&dir).unwrap();
    let config = config();
    let own = Arc::new(OwnRegion::create(&regions, 0, &config).unwrap());
    let has_devices = !DeviceList::get().unwrap().names().is_empty();
    let spec = VerbsSpec {
        device: "mu-no-such-device".into(),
        port: 1,
        gid_index: 0,
        addresses: (0..3)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], base_port(0) + i)))
            .collect(),
    };
    let Err(error) = Endpoint::open(0, config, &spec, own) else {
        panic!("opened a device that does not exist");
    };
    let message = error.to_string();
    let expected = if has_devices {
        "no such device"
    } else {
        "no RDMA device"
    };
    assert!(message.contains(expected), "{message}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[ignore = "needs an RDMA device: scripts/verbs-guest runs it under Soft-RoCE"]
fn writes_and_reads_complete_in_order() {
    let config = config();
    let layout = Layout::new(&config);
    let mut r = cluster("order", base_port(1), [config; 3]);
    await_connected(&mut r[0].background, &layout, 1);
    // Sixteen writes of growing records into replica 1's heartbeat record: their completions
    // come back in posting order, and the last one's bytes are what replica 1 holds.
    for i in 0..16u64 {
        r[0].background
            .store(layout.scratch + 8 * i as u32, &i.to_le_bytes());
    }
    for i in 0..16u64 {
        r[0].background
            .write(
                1,
                layout.scratch + 8 * i as u32,
                layout.heartbeat(),
                8,
                100 + i,
            )
            .unwrap();
    }
    for i in 0..16u64 {
        let c = next_completion(&mut r[0].background);
        assert_eq!((c.wr_id, c.status), (100 + i, Status::Ok));
    }
    let mut landed = [0u8; 8];
    r[1].background.load(layout.heartbeat(), &mut landed);
    assert_eq!(u64::from_le_bytes(landed), 15);
    // And a read brings replica 1's bytes back into replica 2's landing area.
    await_connected(&mut r[2].background, &layout, 1);
    let landing = layout.landing_heartbeat(1);
    r[2].background
        .read(1, layout.heartbeat(), landing, 8, 7)
        .unwrap();
    assert_eq!(
        next_completion(&mut r[2].background),
        Completion {
            wr_id: 7,
            status: Status::Ok
        }
    );
    let mut read = [0u8; 8];
    r[2].background.load(landing, &mut read);
    assert_eq!(read, landed);
    // The background plane never writes a log area; the scratch area is never remote.
    assert_eq!(
        r[0].background
            .write(1, layout.scratch, layout.slot(0), 8, 1),
        Err(PostError::OutOfBounds)
    );
    assert_eq!(
        r[0].replication
            .read(1, layout.scratch, layout.scratch, 8, 1),
        Err(PostError::OutOfBounds)
    );
    assert_eq!(
        r[0].replication
            .write(0, layout.scratch, layout.slot(0), 8, 1),
        Err(PostError::NoSuchPeer)
    );
}

#[test]
#[ignore = "needs an RDMA device: scripts/verbs-guest runs it under Soft-RoCE"]
fn a_revoked_writer_is_refused_and_the_log_is_untouched() {
    let config = config();
    let layout = Layout::new(&config);
    let mut r = cluster("revoke", base_port(2), [config; 3]);
    await_connected(&mut r[0].replication, &layout, 1);
    // Not granted: refused, nothing lands, and the connection is broken until reconnect.
    assert_eq!(write_slot(&mut r[0], &layout, 1, 0x11), Ok(Status::Denied));
    assert_eq!(slot0(&r[1], &layout), [0; 64]);
    assert_eq!(
        r[0].replication
            .write(1, layout.scratch, layout.slot(0), 8, 1),
        Err(PostError::Broken)
    );
    reconnect(&mut r[0], &layout, 1);

    r[1].background.grant(0);
    assert_eq!(write_slot(&mut r[0], &layout, 1, 0x22), Ok(Status::Ok));
    assert_eq!(slot0(&r[1], &layout), [0x22; 64]);

    // Revoked: the next write is refused, the log keeps what it had, the connection breaks.
    r[1].background.revoke(0);
    assert_eq!(write_slot(&mut r[0], &layout, 1, 0x33), Ok(Status::Denied));
    assert_eq!(slot0(&r[1], &layout), [0x22; 64], "a refused write landed");
    assert_eq!(
        r[0].replication
            .write(1, layout.scratch, layout.slot(0), 8, 1),
        Err(PostError::Broken)
    );
    // Reconnected and granted again: writes land.
    reconnect(&mut r[0], &layout, 1);
    r[1].background.revoke(0);
    r[1].background.grant(0);
    assert_eq!(write_slot(&mut r[0], &layout, 1, 0x44), Ok(Status::Ok));
    assert_eq!(slot0(&r[1], &layout), [0x44; 64]);
    // Revoked and granted again without the writer reconnecting: a write of the earlier grant
    // could still be in flight on this pairing, so it is closed for good: the next write fails
    // (or the writer, told by the owner, finds its connection broken) and lands nowhere ...
    r[1].background.revoke(0);
    r[1].background.grant(0);
    let outcome = write_slot(&mut r[0], &layout, 1, 0x55);
    assert!(
        matches!(outcome, Ok(Status::Failed) | Err(PostError::Broken)),
        "{outcome:?}"
    );
    assert_eq!(slot0(&r[1], &layout), [0x44; 64]);
    // ... and the writer's next pairing opens with the grant.
    reconnect(&mut r[0], &layout, 1);
    assert_eq!(write_slot(&mut r[0], &layout, 1, 0x66), Ok(Status::Ok));
    assert_eq!(slot0(&r[1], &layout), [0x66; 64]);
    // A grant is the peer's, not the connection's: it survives reconnects until revoked.
    reconnect(&mut r[0], &layout, 1);
    assert_eq!(write_slot(&mut r[0], &layout, 1, 0x77), Ok(Status::Ok));
    assert_eq!(slot0(&r[1], &layout), [0x77; 64]);

    // Replica 2 was never granted anything on replica 1.
    await_connected(&mut r[2].replication, &layout, 1);
    assert_eq!(write_slot(&mut r[2], &layout, 1, 0x88), Ok(Status::Denied));
    assert_eq!(slot0(&r[1], &layout), [0x77; 64]);
}

#[test]
#[ignore = "needs an RDMA device: scripts/verbs-guest runs it under Soft-RoCE"]
fn reconnect_drops_outstanding_work() {
    let config = config();
    let layout = Layout::new(&config);
    let mut r = cluster("reconnect", base_port(3), [config; 3]);
    await_connected(&mut r[0].replication, &layout, 2);
    r[2].background.grant(0);
    r[0].replication.store(layout.scratch, &[0xAB; 256]);
    let mut posted = 0;
    for i in 0..32u64 {
        match r[0].replication.write(
            2,
            layout.scratch,
            layout.slot(i),
            layout.slot_size,
            1000 + i,
        ) {
            Ok(()) => posted += 1,
            Err(PostError::Busy) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(posted > 0);
    r[0].replication.reconnect(2).unwrap();
    // Nothing posted before the reconnect is delivered after it, and nothing more lands.
    let snapshot = |r: &Replica| {
        let mut log = vec![0u8; (32 * layout.slot_size) as usize];
        r.replication.load(layout.slot(0), &mut log);
        log
    };
    let landed = snapshot(&r[2]);
    let quiet = Instant::now() + Duration::from_millis(300);
    let mut out = [Completion::EMPTY; 8];
    while Instant::now() < quiet {
        let n = r[0].replication.poll(&mut out);
        assert_eq!(
            n,
            0,
            "completions from before the reconnect: {:?}",
            &out[..n]
        );
    }
    assert!(
        snapshot(&r[2]) == landed,
        "a write landed after the reconnect"
    );
    // The connection works again, and the standing grant applies to the fresh pairing.
    await_connected(&mut r[0].replication, &layout, 2);
    assert_eq!(write_slot(&mut r[0], &layout, 2, 0x77), Ok(Status::Ok));
    assert_eq!(slot0(&r[2], &layout), [0x77; 64]);
}

#[test]
#[ignore = "needs an RDMA device: scripts/verbs-guest runs it under Soft-RoCE"]
fn a_peer_with_another_configuration_is_refused() {
    let config = config();
    let layout = Layout::new(&config);
    let mut other = config;
    other.op_timeout_ticks += 1;
    assert_ne!(other.hash(), config.hash());
    let mut r = cluster("mismatch", base_port(4), [config, config, other]);
    // Replicas 0 and 1 pair; replica 2 refuses them and they refuse it: every operation
    // between them fails.
    await_connected(&mut r[0].background, &layout, 1);
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        for (from, to) in [(0, 2), (2, 0)] {
            let fabric = &mut r[from].background;
            fabric
                .read(to, 0, layout.landing_header(to), 64, 5)
                .unwrap();
            assert_eq!(next_completion(fabric).status, Status::Failed);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
