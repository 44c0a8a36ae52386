//! Replicates your own state machine across 3 processes: a ledger of account balances, hosted
//! by the Linux runtime over shared memory. `cargo run --release -p runtime-linux --example
//! ledger` starts 3 replica processes (this program, re-run with `replica ID DIR`), sends 1000
//! transfers to the leader, and checks that every replica ends in the same state.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use mu_nostd::{hash::Hasher, StateMachine};
use runtime_linux::app::Application;
use runtime_linux::demo::cluster_config;
use runtime_linux::node::{run_app, NodeSpec};
use runtime_linux::port::{Outcome, Port, Stat};

/// The application: 16 accounts; a command `[from, to, amount u32 le]` moves `amount` when
/// `from` holds it; the reply is `from`'s balance afterwards.
struct Ledger([u64; 16]);

impl StateMachine for Ledger {
    fn apply(&mut self, _position: u64, command: &[u8], response: &mut [u8]) -> usize {
        if let [from @ 0..16, to @ 0..16, a, b, c, d] = *command {
            let amount = u32::from_le_bytes([a, b, c, d]) as u64;
            if self.0[from as usize] >= amount {
                self.0[from as usize] -= amount;
                self.0[to as usize] += amount;
            }
            response[..8].copy_from_slice(&self.0[from as usize].to_le_bytes());
        }
        8
    }
}

impl Application for Ledger {
    fn digest(&self) -> u64 {
        self.0
            .iter()
            .fold(Hasher::new(1), |h, b| h.word(*b))
            .finish()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let config = cluster_config(3, 8, board_configs::Polling::Shared, None);
    if let [_, role, id, dir] = &args[..] {
        assert_eq!(role, "replica");
        let spec = NodeSpec::local(id.parse().unwrap(), config, PathBuf::from(dir));
        let result = run_app(&spec, Ledger([1000; 16]), &AtomicBool::new(false));
        panic!("replica {id} stopped: {result:?}");
    }
    let dir = std::env::temp_dir().join(format!("mu-ledger-{}", std::process::id()));
    // Only this user may reach the replicas' memory.
    std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut replicas: Vec<Child> = (0..3)
        .map(|id| {
            // Each replica's log goes beside its memory (the directory stays if a check fails).
            let log = std::fs::File::create(dir.join(format!("replica-{id}.log"))).unwrap();
            let mut replica = Command::new(&exe);
            replica.args(["replica", &id.to_string()]).arg(&dir);
            replica.stderr(log).spawn().unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ports: Vec<Port> = (0..3)
        .map(|id| loop {
            match Port::attach(&dir, id) {
                Ok(port) if port.get(Stat::Ready) == 1 => break port,
                _ if Instant::now() > deadline => panic!("replica {id} did not start"),
                _ if replicas[id as usize].try_wait().unwrap().is_some() => {
                    panic!("replica {id} exited")
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        })
        .collect();
    let mut seq = 0;
    while seq < 1000 {
        assert!(Instant::now() < deadline, "no leader took the transfers");
        let Some(leader) = ports.iter().find(|p| p.get(Stat::FastPath) == 1) else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let command = [(seq % 16) as u8, ((seq * 7 + 3) % 16) as u8, 10, 0, 0, 0];
        if !leader.push_request(seq, &command) {
            continue;
        }
        let response = loop {
            if let Some(response) = leader.take_response() {
                break response;
            }
        };
        if response.outcome == Outcome::Committed {
            seq += 1;
        }
    }
    let target = ports.iter().map(|p| p.get(Stat::Applied)).max().unwrap();
    while ports.iter().any(|p| p.digest().1 < target) {
        assert!(
            Instant::now() < deadline,
            "a replica did not apply everything"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let digests: Vec<u64> = ports.iter().map(|p| p.digest().0).collect();
    for replica in &mut replicas {
        replica.kill().unwrap();
        replica.wait().unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        digests.iter().all(|&d| d == digests[0]),
        "replicas differ: {digests:x?}"
    );
    println!(
        "1000 transfers replicated on 3 processes; every replica's ledger digest is {:#x}",
        digests[0]
    );
}
