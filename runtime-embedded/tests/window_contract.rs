//! The fabric contract suite (`tests/contract`, crate `fabric-contract`) against the firmware's
//! window fabric: every rule checked by the same code as on the simulator, shared memory and
//! verbs. Three replicas share one window in this process; pumping serves every replica's
//! responder once (a firmware's run loop does the same between polls). A restart does what the
//! QEMU harness does for a re-launched VM: it zeroes the parts of the window the replica's
//! earlier life used (its region, telemetry and rings), numbers the new life in the control
//! block, and starts the replica's fabrics and responder anew with fresh permissions.
//!
//! The window, and the permissions the fabrics borrow, are leaked: the fabrics borrow them for
//! the whole test (a firmware keeps them in statics), and a few hundred KiB per test is nothing.

use std::sync::atomic::{AtomicU32, Ordering};

use fabric_contract::{Config, Fabric, Harness, Lend, Plane, ReplicaId, Restart, REPLICAS};
use runtime_embedded::fabric::WindowFabric;
use runtime_embedded::permissions::Permissions;
use runtime_embedded::responder::Responder;
use runtime_embedded::telemetry;
use runtime_embedded::window::{self, WindowLayout};
use runtime_embedded::words::Words;

struct Replica {
    /// Replication, background: `Plane` order.
    fabrics: [WindowFabric<'static>; 2],
    responder: Responder<'static>,
    life: u32,
}

pub struct Window {
    backing: &'static [AtomicU32],
    window: Words<'static>,
    layout: WindowLayout,
    replicas: Vec<Replica>,
}

fn plane(plane: Plane) -> window::Plane {
    match plane {
        Plane::Replication => window::Plane::Replication,
        Plane::Background => window::Plane::Background,
    }
}

impl Window {
    fn start(&self, id: ReplicaId, life: u32) -> Replica {
        telemetry::set_control_word(self.window, telemetry::life_word(id), life);
        let permissions: &'static Permissions = Box::leak(Box::new(Permissions::new()));
        let fabrics = Plane::ALL
            .map(|p| WindowFabric::new(self.window, self.layout, id, plane(p), permissions));
        let responder = Responder::new(self.window, self.layout, id, permissions);
        Replica {
            fabrics,
            responder,
            life,
        }
    }
}

impl Harness for Window {
    const NAME: &'static str = "firmware window";

    fn new(_test: &'static str, _index: u16, config: Config) -> Window {
        let layout = WindowLayout::new(&config).expect("a window layout");
        let backing: Vec<AtomicU32> = (0..layout.bytes / 4).map(|_| AtomicU32::new(0)).collect();
        let backing: &'static [AtomicU32] = Box::leak(backing.into_boxed_slice());
        let mut window = Window {
            backing,
            window: Words::new(backing),
            layout,
            replicas: Vec::new(),
        };
        window.replicas = (0..REPLICAS).map(|id| window.start(id, 1)).collect();
        window
    }

    fn fabric(&mut self, r: ReplicaId, plane: Plane) -> Box<dyn Fabric + '_> {
        Box::new(Lend(&mut self.replicas[r as usize].fabrics[plane as usize]))
    }

    fn pump(&mut self) {
        for replica in &mut self.replicas {
            replica.responder.serve();
        }
    }
}

impl Restart for Window {
    fn restart(&mut self, r: ReplicaId) {
        for (at, len) in self.layout.parts_of(r) {
            for word in &self.backing[at as usize / 4..(at + len) as usize / 4] {
                word.store(0, Ordering::SeqCst);
            }
        }
        let life = self.replicas[r as usize].life + 1;
        self.replicas[r as usize] = self.start(r, life);
    }
}

fabric_contract::suite!(Window, restarts);
