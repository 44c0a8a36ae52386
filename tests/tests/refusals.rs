//! Bad input gets a typed error and loses nothing: mismatched replicas are refused, oversized or
//! empty commands are rejected, a follower redirects to the leader, a full queue says so.

use mu_nostd::background::PeerHeader;
use mu_nostd::hash::Hasher;
use mu_nostd::layout::{HeaderError, Layout, LAYOUT_VERSION, REGION_MAGIC};
use mu_nostd::{Config, DetectorConfig, Shared, SubmitError, REQUESTS_MAX};
use mu_tests::cluster::SimReplica;
use mu_tests::kv::{self, Kv, Outcome};
use mu_tests::world::{Faults, Plane, World};

fn config(n: u8) -> Config {
    let mut config = Config::new(n);
    config.slot_count = 64;
    config.detector = DetectorConfig::paper(10);
    config
}

struct Cluster<'s> {
    world: World,
    replicas: Vec<Option<SimReplica<'s>>>,
    kvs: Vec<Kv>,
    tick: u64,
}

impl<'s> Cluster<'s> {
    /// Replica `i` runs `configs[i]`, or is not started when `None`.
    fn new(configs: &[Option<Config>], shared: &'s [Shared]) -> Cluster<'s> {
        let first = configs.iter().flatten().next().expect("one replica runs");
        let world = World::new(Layout::new(first), configs.len() as u8, Faults::gentle(), 3);
        let replicas = configs
            .iter()
            .enumerate()
            .map(|(id, c)| c.map(|c| SimReplica::new(c, id as u8, &shared[id]).expect("valid")))
            .collect();
        Cluster {
            world,
            replicas,
            kvs: vec![Kv::new(); configs.len()],
            tick: 0,
        }
    }

    fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.world.advance(self.tick);
            for (id, replica) in self.replicas.iter_mut().enumerate() {
                let Some(replica) = replica else { continue };
                let me = id as u8;
                replica
                    .background
                    .poll(self.tick, &mut self.world.fabric(me, Plane::Background));
                let fabric = &mut self.world.fabric(me, Plane::Replication);
                replica
                    .replication
                    .poll(self.tick, fabric, &mut self.kvs[id]);
            }
            self.tick += 1;
        }
    }

    /// A new life of replica `id` (zeroed region) with `config`, or no replica at all.
    fn replace(&mut self, id: usize, config: Option<Config>, shared: &'s Shared) {
        self.world.restart(id as u8);
        self.world.region_mut(id as u8).fill(0);
        let life = self.world.life(id as u8);
        self.replicas[id] = config.map(|c| {
            let mut replica = SimReplica::new(c, id as u8, shared).expect("valid");
            replica.replication.begin_incarnation(life);
            replica.background.begin_incarnation(life);
            replica
        });
        self.kvs[id] = Kv::new();
    }

    fn replica(&mut self, id: usize) -> &mut SimReplica<'s> {
        self.replicas[id].as_mut().expect("running")
    }

    fn commit(&mut self, leader: usize, command: &[u8]) -> u64 {
        let ticket = self
            .replica(leader)
            .replication
            .submit(command)
            .expect("leader accepts");
        for _ in 0..500 {
            self.run(1);
            for outcome in self.kvs[leader].take_outcomes() {
                if let Outcome::Committed {
                    ticket: t,
                    position,
                    ..
                } = outcome
                {
                    if t == ticket {
                        return position;
                    }
                }
            }
        }
        panic!("command not committed in 500 ticks");
    }
}

/// A cluster forms only once every replica runs the same configuration (formation needs all of
/// them; see `tenure::admission`): a third replica misconfigured from the start keeps the two
/// others from ever counting as voters.
#[test]
fn a_cluster_forms_only_when_every_replica_agrees() {
    let shared: Vec<Shared> = (0..3).map(|_| Shared::new()).collect();
    let mut other = config(3);
    other.detector.read_period_ticks += 1;
    let mut cluster = Cluster::new(&[Some(config(3)), Some(config(3)), Some(other)], &shared);
    cluster.run(600);
    for id in 0..3 {
        let status = cluster.replica(id).replication.status();
        assert!(
            !status.voter && !status.fast_path,
            "replica {id}: {status:?}"
        );
    }
}

#[test]
fn a_replica_with_another_configuration_is_refused() {
    let shared: Vec<Shared> = (0..4).map(|_| Shared::new()).collect();
    let mut other = config(3);
    other.detector.read_period_ticks += 1; // Same layout, another cluster description.
    let mut cluster = Cluster::new(&[Some(config(3)); 3], &shared);
    cluster.run(300);
    assert!(cluster.replica(2).replication.status().voter, "formed");
    // Replica 2 comes back with another configuration.
    cluster.replace(2, Some(other), &shared[3]);
    cluster.run(200);
    for (id, peer) in [(0, 2), (1, 2), (2, 0), (2, 1)] {
        let header = cluster.replica(id).background.peer_header(peer);
        assert!(
            matches!(header, PeerHeader::Mismatch(HeaderError::ConfigHash { .. })),
            "replica {id} sees replica {peer} as {header:?}"
        );
    }
    // The two that agree still form a majority of three and replicate.
    assert_eq!(cluster.replica(0).background.status().leader, Some(0));
    cluster.commit(0, &kv::encode_put(1, 0, 7, 42, 0));
    assert_eq!(
        cluster.replica(2).background.status().alive & 0b011,
        0,
        "2 trusts nobody"
    );
    assert_eq!(
        cluster.replica(2).replication.status().applied,
        0,
        "2 applies nothing"
    );
    // Refusal is final for the odd one out: it elects nobody and says so; the others do not.
    let odd = cluster.replica(2).background.status();
    assert!(
        odd.refused && odd.leader.is_none() && odd.tenure.is_none(),
        "{odd:?}"
    );
    assert!(!cluster.replica(0).background.status().refused);
    assert!(!cluster.replica(1).background.status().refused);
}

#[test]
fn a_region_of_another_layout_version_is_refused() {
    let shared: Vec<Shared> = (0..3).map(|_| Shared::new()).collect();
    let mut cluster = Cluster::new(&[Some(config(3)); 3], &shared);
    cluster.run(300);
    assert!(cluster.replica(2).replication.status().voter, "formed");
    cluster.replace(2, None, &shared[2]);
    let mut header = Layout::header(&config(3), 0);
    header[8..12].copy_from_slice(&(LAYOUT_VERSION + 1).to_le_bytes());
    let check = Hasher::new(REGION_MAGIC).bytes(&header[0..32]).finish();
    header[32..40].copy_from_slice(&check.to_le_bytes());
    cluster.world.region_mut(2)[..64].copy_from_slice(&header);
    cluster.run(200);
    let found = LAYOUT_VERSION + 1;
    assert_eq!(
        cluster.replica(0).background.peer_header(2),
        PeerHeader::Mismatch(HeaderError::LayoutVersion { found })
    );
    cluster.commit(0, &kv::encode_get(1, 0, 7, 0));
}

#[test]
fn submit_errors_are_typed_and_lose_nothing() {
    let shared: Vec<Shared> = (0..3).map(|_| Shared::new()).collect();
    let c = config(3);
    let mut cluster = Cluster::new(&[Some(c), Some(c), Some(c)], &shared);
    cluster.run(200);
    let leader = cluster.replica(0);
    assert_eq!(leader.replication.submit(&[]), Err(SubmitError::Empty));
    let max = c.entry_bytes_max();
    let huge = vec![1u8; max as usize + 1];
    assert_eq!(
        leader.replication.submit(&huge),
        Err(SubmitError::TooLarge { len: max + 1, max })
    );
    assert_eq!(
        cluster.replica(1).replication.submit(b"x"),
        Err(SubmitError::NotLeader { leader: Some(0) })
    );
    // Fill the queue without polling: the first REQUESTS_MAX are taken, then Busy.
    let mut tickets = Vec::new();
    for seq in 0..REQUESTS_MAX as u32 {
        let command = kv::encode_put(9, seq, 1, seq as u64, 0);
        tickets.push(
            cluster
                .replica(0)
                .replication
                .submit(&command)
                .expect("room"),
        );
    }
    let overflow = kv::encode_put(9, 999, 1, 0, 0);
    assert_eq!(
        cluster.replica(0).replication.submit(&overflow),
        Err(SubmitError::Busy)
    );
    // Nothing accepted is lost: every ticket commits, in order.
    let mut committed = Vec::new();
    for _ in 0..2000 {
        cluster.run(1);
        for outcome in cluster.kvs[0].take_outcomes() {
            if let Outcome::Committed { ticket, .. } = outcome {
                committed.push(ticket);
            }
        }
        if committed.len() == tickets.len() {
            break;
        }
    }
    assert_eq!(committed, tickets);
}
