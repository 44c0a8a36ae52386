//! The fabric contract suite (`tests/contract`, crate `fabric-contract`) against the simulator's
//! world: every rule checked by the same code as on shared memory, verbs and the firmware's
//! window. The world runs with its delays, torn pieces and bound, but loses no completion (a
//! lost completion cuts a connection off, which the suite's waits would take for a hang); its
//! own checks must stay silent throughout, but for the grants and revokes of no other replica
//! that one test makes on purpose (the world ignores them, as rule 13 says, and records them,
//! because the core never makes them). `verbs_like` runs the suite again with
//! pairings that take time and grants that close a revoked writer's pairing, as on verbs.

use fabric_contract::{Config, Fabric, Harness, Layout, Plane, ReplicaId, Restart, REPLICAS};
use mu_tests::world::{Faults, World};

/// The world of one test, seeded by the test's index.
pub struct Sim {
    world: World,
    pairing_ticks: u64,
    test: &'static str,
}

/// The test that grants and revokes no other replica on purpose.
const GRANTS_TO_NOBODY: &str = "grant_and_revoke_of_no_other_replica_do_nothing";

impl Sim {
    fn with(test: &'static str, index: u16, config: Config, faults: Faults) -> Sim {
        let faults = Faults {
            lost_completion_per_mille: 0,
            done_writes_per_mille: 500,
            ..faults
        };
        let layout = Layout::new(&config);
        Sim {
            world: World::new(layout, REPLICAS, faults, 0xC0_47AC7 + u64::from(index)),
            pairing_ticks: faults.pairing_ticks,
            test,
        }
    }
}

impl Harness for Sim {
    const NAME: &'static str = "simulator";

    fn new(test: &'static str, index: u16, config: Config) -> Sim {
        Sim::with(test, index, config, Faults::default())
    }

    fn fabric(&mut self, r: ReplicaId, plane: Plane) -> Box<dyn Fabric + '_> {
        Box::new(self.world.fabric(r, plane))
    }

    fn pump(&mut self) {
        let now = self.world.now() + 1;
        self.world.advance(now);
    }

    fn settle(&mut self, _r: ReplicaId, _plane: Plane, _peer: ReplicaId) {
        for _ in 0..=self.pairing_ticks {
            self.pump();
        }
    }
}

impl Restart for Sim {
    fn restart(&mut self, r: ReplicaId) {
        self.world.restart(r);
        self.world.region_mut(r).fill(0);
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let mut violations = self.world.take_violations();
        if self.test == GRANTS_TO_NOBODY {
            violations.retain(|v| !v.ends_with(", no other replica"));
        }
        if !std::thread::panicking() {
            assert!(
                violations.is_empty(),
                "the world's own checks: {violations:?}"
            );
        }
    }
}

fabric_contract::suite!(Sim, restarts);

/// The suite again, with verbs' pairings: a reconnect pairs anew for a while (operations posted
/// meanwhile fail), and a grant to a writer revoked while it could write closes its pairing.
mod verbs_like {
    use super::*;

    pub struct Pairing(Sim);

    impl Harness for Pairing {
        const NAME: &'static str = "simulator, verbs-like pairings";

        fn new(test: &'static str, index: u16, config: Config) -> Pairing {
            let faults = Faults {
                pairing_ticks: 40,
                ..Faults::default()
            };
            Pairing(Sim::with(test, index, config, faults))
        }

        fn fabric(&mut self, r: ReplicaId, plane: Plane) -> Box<dyn Fabric + '_> {
            self.0.fabric(r, plane)
        }

        fn pump(&mut self) {
            self.0.pump();
        }

        fn settle(&mut self, r: ReplicaId, plane: Plane, peer: ReplicaId) {
            self.0.settle(r, plane, peer);
        }
    }

    impl Restart for Pairing {
        fn restart(&mut self, r: ReplicaId) {
            self.0.restart(r);
        }
    }

    fabric_contract::suite!(Pairing, restarts);
}
