//! The fabric contract suite (`tests/contract`, crate `fabric-contract`) against the verbs
//! fabric on a real verbs stack: every rule checked by the same code as on the simulator, shared
//! memory and the firmware's window. The tests need an RDMA device and are ignored elsewhere;
//! `scripts/verbs-guest` runs them inside a QEMU guest with Soft-RoCE (`rdma_rxe`), where
//! `MU_VERBS_DEVICE`, `MU_VERBS_GID` and `MU_VERBS_IP` name the device, the GID index and the
//! address of its interface.
//!
//! Three endpoints live in this one process, each with its own region and handshake port, and
//! talk through the device exactly as three processes would (as in `verbs_fabric.rs`). An
//! endpoint lives as long as the process (its handshake threads hold it), so this harness cannot
//! restart a replica: rule 10 on verbs is exercised by `mu failover` in the same guest, whose
//! killed leaders restart as new processes.
#![cfg(feature = "verbs")]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabric_contract::{
    Completion, Config, Fabric, Harness, Layout, Lend, Plane, PostError, ReplicaId, Status,
    REPLICAS,
};
use runtime_linux::shm::{OwnRegion, RegionDir};
use runtime_linux::verbs::{wire, Endpoint, VerbsFabric, VerbsSpec};

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

/// How long a pairing may take before `settle` fails the test as hung.
const PAIRING: Duration = Duration::from_secs(60);

pub struct Verbs {
    dir: PathBuf,
    layout: Layout,
    /// Per replica: replication, background (`Plane` order).
    fabrics: Vec<[VerbsFabric; 2]>,
}

impl Harness for Verbs {
    const NAME: &'static str = "verbs";

    fn new(test: &'static str, index: u16, config: Config) -> Verbs {
        let dir = PathBuf::from(format!(
            "/dev/shm/mu-contract-verbs-{test}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test's directory");
        // Ports per test (tests of one binary may run at the same time outside the guest's
        // `--test-threads 1`), apart from verbs_fabric.rs's, and below Linux's ephemeral range
        // (32768 up): an earlier test's outgoing handshake connection takes its local port
        // from that range, and a listener bound there failed with AddrInUse in CI.
        let base = 26_000 + (std::process::id() % 128) as u16 * 48 + index * 3;
        let addresses: Vec<SocketAddr> = (0..u16::from(REPLICAS))
            .map(|i| SocketAddr::new(ip(), base + i))
            .collect();
        let fabrics = (0..REPLICAS)
            .map(|id| {
                let regions = RegionDir::open(&dir.join(format!("r{id}"))).unwrap();
                let own = Arc::new(OwnRegion::create(&regions, id, &config).unwrap());
                let spec = VerbsSpec {
                    device: device(),
                    port: 1,
                    gid_index: gid_index(),
                    addresses: addresses.clone(),
                };
                let endpoint = Endpoint::open(id, config, &spec, own).unwrap();
                [wire::Plane::Replication, wire::Plane::Background]
                    .map(|plane| VerbsFabric::new(endpoint.clone(), plane))
            })
            .collect();
        Verbs {
            dir,
            layout: Layout::new(&config),
            fabrics,
        }
    }

    fn fabric(&mut self, r: ReplicaId, plane: Plane) -> Box<dyn Fabric + '_> {
        Box::new(Lend(&mut self.fabrics[r as usize][plane as usize]))
    }

    /// Reads the peer's header until a read succeeds: the pairing is made. The bytes land in
    /// the last 64 of the region, which the suite does not use after the start.
    fn settle(&mut self, r: ReplicaId, plane: Plane, peer: ReplicaId) {
        let landing = self.layout.region_bytes - 64;
        let fabric = &mut self.fabrics[r as usize][plane as usize];
        let start = Instant::now();
        let mut out = [Completion::EMPTY; 1];
        loop {
            assert!(
                start.elapsed() < PAIRING,
                "replica {r}'s {} plane never paired with {peer}",
                plane.name()
            );
            match fabric.read(peer, 0, landing, 64, u64::MAX) {
                Ok(()) => {}
                // The peer closed the pairing (a grant after a revoke): pair anew.
                Err(PostError::Broken) => {
                    fabric.reconnect(peer).unwrap();
                    continue;
                }
                Err(other) => panic!("a settling read: {other:?}"),
            }
            while fabric.poll(&mut out) == 0 {
                assert!(start.elapsed() < PAIRING, "a settling read never completed");
                std::thread::yield_now();
            }
            assert_eq!(
                out[0].wr_id,
                u64::MAX,
                "a completion of other work while settling"
            );
            if out[0].status == Status::Ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The device runs by itself: a write the fabric should have dropped or fenced is given
    /// time to arrive (packets still on the wire, retransmissions).
    fn quiesce(&mut self) {
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Drop for Verbs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fabric_contract::suite!(
    Verbs,
    #[ignore = "needs an RDMA device: scripts/verbs-guest runs it under Soft-RoCE"]
);
