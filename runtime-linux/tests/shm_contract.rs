//! The fabric contract suite (`tests/contract`, crate `fabric-contract`) against the
//! shared-memory fabric: every rule checked by the same code as on the simulator, verbs and the
//! firmware's window. Three replicas live in this process, each region owned by a thread of its
//! own (as `shm.rs` wants of a region's creator); a restart drops the replica's region (a clean
//! exit retires its file) and creates the next life's, as a restarted process does.

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::thread;

use fabric_contract::{Config, Fabric, Harness, Lend, Plane, ReplicaId, Restart, REPLICAS};
use runtime_linux::shm::{OwnRegion, RegionDir, ShmFabric};

/// A region created by a thread that stays parked until the region is given up.
struct Owned {
    region: Arc<OwnRegion>,
    release: mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl Owned {
    fn create(dir: &RegionDir, id: ReplicaId, config: Config) -> Owned {
        let (release, released) = mpsc::channel::<()>();
        let (tx, rx) = mpsc::channel();
        let dir = dir.clone();
        let thread = thread::spawn(move || {
            let _ = tx.send(OwnRegion::create(&dir, id, &config));
            let _ = released.recv();
        });
        let region = rx
            .recv()
            .expect("the owner thread")
            .expect("create a region");
        Owned {
            region: Arc::new(region),
            release,
            thread,
        }
    }

    /// Drops the region (its file is retired), then ends its thread.
    fn end(self) {
        let Owned {
            region,
            release,
            thread,
        } = self;
        assert_eq!(
            Arc::strong_count(&region),
            1,
            "a fabric still holds the region"
        );
        drop(region);
        drop(release);
        thread.join().expect("the owner thread");
    }
}

struct Replica {
    /// Replication, background: `Plane` order.
    fabrics: [ShmFabric; 2],
    owned: Owned,
}

pub struct Shm {
    path: PathBuf,
    dir: RegionDir,
    config: Config,
    replicas: Vec<Option<Replica>>,
}

impl Shm {
    fn start(&self, id: ReplicaId) -> Replica {
        let owned = Owned::create(&self.dir, id, self.config);
        let fabrics = Plane::ALL.map(|plane| {
            ShmFabric::new(self.dir.clone(), self.config, owned.region.clone(), plane)
        });
        Replica { fabrics, owned }
    }

    fn stop(&mut self, id: ReplicaId) {
        let Replica { fabrics, owned } = self.replicas[id as usize].take().expect("running");
        drop(fabrics);
        owned.end();
    }
}

impl Harness for Shm {
    const NAME: &'static str = "shared memory";

    fn new(test: &'static str, index: u16, config: Config) -> Shm {
        let path = PathBuf::from(format!(
            "/dev/shm/mu-contract-{index}-{test}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        let dir = RegionDir::open(&path).expect("open the region directory");
        let mut shm = Shm {
            path,
            dir,
            config,
            replicas: Vec::new(),
        };
        shm.replicas = (0..REPLICAS).map(|id| Some(shm.start(id))).collect();
        shm
    }

    fn fabric(&mut self, r: ReplicaId, plane: Plane) -> Box<dyn Fabric + '_> {
        let replica = self.replicas[r as usize].as_mut().expect("running");
        Box::new(Lend(&mut replica.fabrics[plane as usize]))
    }
}

impl Restart for Shm {
    fn restart(&mut self, r: ReplicaId) {
        self.stop(r);
        self.replicas[r as usize] = Some(self.start(r));
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        for id in 0..REPLICAS {
            if self.replicas[id as usize].is_some() {
                self.stop(id);
            }
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fabric_contract::suite!(Shm, restarts);
