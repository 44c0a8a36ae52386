//! Process-level fault tests: a real cluster of `mu replica` processes over the shared-memory
//! fabric, driven by a client in this process.
//!
//! - The leader is SIGKILLed again and again (20 rounds; `MU_KILL_ROUNDS` asks for more), each
//!   time restarted; after every round every live replica must hold every command the client
//!   was told is committed, at the position it was told, and all states must be identical.
//! - A leader is SIGSTOPped until a new leader commits, then SIGCONTed: it must not overwrite
//!   anything (same checks), whether it resumes and steps down or the fabric fences it by
//!   killing it in the middle of a copy.
//!
//! - A replica that missed more than a lap rejoins by state transfer and ends with the same state
//!   as the others: a follower and the old leader, each killed while 10 laps are committed and
//!   then restarted with a fresh region, and a follower SIGSTOPped across 3 laps (the same life
//!   goes on, lapped).
//!
//! The tests need the `mu` binary of this workspace (`cargo test --workspace` builds it).
//! `MU_TEST_VERBOSE=1` prints the old leader's log after every stop/continue round.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use board_configs::{Deployment, Polling};
use runtime_linux::cluster::{
    commit_positions, kill_leader, restart_and_rejoin, Client, Cluster, Fault, Rejoin,
};
use runtime_linux::demo::cluster_config;
use runtime_linux::port::Stat;

const SETTLE: Duration = Duration::from_secs(30);

fn mu_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let mu = dir.join("mu");
    assert!(
        mu.exists(),
        "{} is missing: build it with `cargo build -p runtime-linux --bin mu` (same profile)",
        mu.display()
    );
    mu
}

fn start(name: &str) -> Cluster {
    start_with_slots(name, 1 << 16)
}

fn start_with_slots(name: &str, slots: u32) -> Cluster {
    let mut config = cluster_config(3, 64, Polling::Shared, None);
    config.slot_count = slots;
    let dir = PathBuf::from(format!("/dev/shm/mu-test-{name}-{}", std::process::id()));
    let cores = [(None, None); 3];
    let deployment = Deployment::shm_linux(name, config, 1000, dir, Polling::Shared, &cores);
    Cluster::start(&mu_binary(), &deployment).expect("cluster starts")
}

/// Runs the client until `count` more commands are committed.
fn commit(client: &mut Client, cluster: &Cluster, count: u64) {
    let target = client.committed_count() + count;
    let deadline = Instant::now() + SETTLE;
    while client.committed_count() < target {
        client.pump(cluster);
        if Instant::now() > deadline {
            fail(cluster, format!("no progress: {}", cluster.describe()));
        }
    }
}

/// Fails the test with what the replicas logged.
fn fail(cluster: &Cluster, message: String) -> ! {
    for id in 0..cluster.replicas() {
        eprintln!("--- replica {id} ---\n{}", cluster.log_tail(id));
    }
    panic!("{message}");
}

fn verify(cluster: &Cluster, client: &Client, round: u32) {
    if let Err(e) = cluster.verify(&client.committed, SETTLE) {
        fail(cluster, format!("round {round}: {e}"));
    }
}

#[test]
fn leader_killed_again_and_again_loses_nothing() {
    let rounds: u32 = std::env::var("MU_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut cluster = start("kill");
    let mut client = Client::new(7, 64, 256, 4);
    for round in 0..rounds {
        let leader = cluster
            .await_settled(SETTLE)
            .unwrap_or_else(|e| fail(&cluster, e.to_string()));
        commit(&mut client, &cluster, 150);
        let fail_over = kill_leader(&mut cluster, &mut client, leader, Fault::Kill, SETTLE)
            .unwrap_or_else(|e| fail(&cluster, format!("round {round}: {e}")));
        let new_leader = fail_over.new_leader;
        assert_ne!(new_leader, leader);
        commit(&mut client, &cluster, 50);
        client.drain(&cluster, SETTLE);
        verify(&cluster, &client, round);
        cluster.spawn(leader).expect("restarts");
    }
    cluster.await_settled(SETTLE).expect("settles");
    client.drain(&cluster, SETTLE);
    verify(&cluster, &client, rounds);
    eprintln!(
        "{rounds} leader kills: {} commands committed, {} re-sent",
        client.committed_count(),
        client.retries
    );
    cluster.shutdown();
}

#[test]
fn stopped_leader_resumed_after_a_new_leader_overwrites_nothing() {
    let mut cluster = start("stop");
    let mut client = Client::new(8, 64, 256, 4);
    let mut fenced = 0;
    for round in 0..5 {
        let leader = cluster.await_settled(SETTLE).expect("settles");
        commit(&mut client, &cluster, 150);
        cluster.signal(leader, libc::SIGSTOP).expect("leader runs");
        // A new leader takes over and commits while the old one is stopped.
        let stopped_at = runtime_linux::clock::monotonic_ns();
        client.watch_from(stopped_at);
        let deadline = Instant::now() + SETTLE;
        while client.first_commit_after.is_none_or(|(id, _)| id == leader) {
            client.watch_from(stopped_at);
            client.pump(&cluster);
            if client
                .first_commit_after
                .is_some_and(|(id, _)| id != leader)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no new leader: {}",
                cluster.describe()
            );
        }
        commit(&mut client, &cluster, 150);
        cluster.signal(leader, libc::SIGCONT);
        // The old leader wakes up believing it leads; whatever it writes must be refused.
        commit(&mut client, &cluster, 150);
        client.drain(&cluster, SETTLE);
        if std::env::var_os("MU_TEST_VERBOSE").is_some() {
            eprintln!(
                "--- round {round}: old leader {leader} ---\n{}",
                cluster.log_tail(leader)
            );
        }
        if !cluster.running(leader) {
            // Stopped in the middle of a copy into a log it lost: fenced by killing it.
            fenced += 1;
            cluster.spawn(leader).expect("restarts");
        }
        verify(&cluster, &client, round);
    }
    eprintln!(
        "5 stop/continue rounds: {} commands committed, old leader fenced by kill {fenced} times",
        client.committed_count()
    );
    cluster.shutdown();
}

/// Slots of the log in the rejoin tests: small, so that laps take little time.
const REJOIN_SLOTS: u32 = 1024;

/// A cluster with a small log, settled, and a client that committed 300 commands through
/// `leader`.
fn rejoin_cluster(name: &str, client_id: u16) -> (Cluster, Client, u8) {
    let cluster = start_with_slots(name, REJOIN_SLOTS);
    let mut client = Client::new(client_id, 64, 256, 4);
    let leader = cluster
        .await_settled(SETTLE)
        .unwrap_or_else(|e| fail(&cluster, e.to_string()));
    commit(&mut client, &cluster, 300);
    (cluster, client, leader)
}

/// Kills `victim`, commits `laps` laps of the log without it, restarts it and checks that it
/// rejoined by a state transfer and that all three replicas agree.
fn rejoin_after_laps(cluster: &mut Cluster, client: &mut Client, victim: u8, laps: u64) -> Rejoin {
    commit_positions(cluster, client, laps * REJOIN_SLOTS as u64, SETTLE)
        .unwrap_or_else(|e| fail(cluster, e.to_string()));
    let rejoin = restart_and_rejoin(cluster, client, victim, SETTLE)
        .unwrap_or_else(|e| fail(cluster, e.to_string()));
    eprintln!("{}", rejoin.describe());
    assert!(
        rejoin.installs >= 1,
        "rejoined without a snapshot: {rejoin:?}"
    );
    client.drain(cluster, SETTLE);
    assert_eq!(cluster.live().len(), 3, "{}", cluster.describe());
    verify(cluster, client, 0);
    rejoin
}

#[test]
fn follower_killed_for_ten_laps_rejoins_with_the_same_state() {
    let (mut cluster, mut client, leader) = rejoin_cluster("rejoin-follower", 9);
    let follower = (leader + 1) % 3;
    cluster.kill(follower).expect("the follower runs");
    rejoin_after_laps(&mut cluster, &mut client, follower, 10);
    // The rejoined follower keeps up from the log afterwards, and votes.
    commit(&mut client, &cluster, 300);
    client.drain(&cluster, SETTLE);
    verify(&cluster, &client, 1);
    cluster
        .await_settled(SETTLE)
        .expect("settles with the rejoined follower");
    cluster.shutdown();
}

#[test]
fn old_leader_killed_for_ten_laps_rejoins_with_the_same_state() {
    let (mut cluster, mut client, leader) = rejoin_cluster("rejoin-leader", 10);
    kill_leader(&mut cluster, &mut client, leader, Fault::Kill, SETTLE)
        .unwrap_or_else(|e| fail(&cluster, e.to_string()));
    rejoin_after_laps(&mut cluster, &mut client, leader, 10);
    cluster.shutdown();
}

#[test]
fn follower_stopped_across_three_laps_rejoins_with_the_same_state() {
    let (mut cluster, mut client, leader) = rejoin_cluster("rejoin-stopped", 11);
    let follower = (leader + 1) % 3;
    cluster
        .signal(follower, libc::SIGSTOP)
        .expect("the follower runs");
    commit_positions(&cluster, &mut client, 3 * REJOIN_SLOTS as u64, SETTLE)
        .unwrap_or_else(|e| fail(&cluster, e.to_string()));
    cluster.signal(follower, libc::SIGCONT);
    // The same life resumes, more than a lap behind: it must install a snapshot.
    let port = cluster.port(follower).expect("the follower runs");
    let deadline = Instant::now() + SETTLE;
    while port.get(Stat::Installs) == 0 {
        client.pump(&cluster);
        if Instant::now() > deadline {
            fail(
                &cluster,
                format!("no snapshot installed: {}", cluster.describe()),
            );
        }
    }
    eprintln!(
        "the stopped follower installed {} bytes at position {}",
        port.get(Stat::InstalledBytes),
        port.get(Stat::InstalledAt)
    );
    commit(&mut client, &cluster, 300);
    client.drain(&cluster, SETTLE);
    assert!(cluster.running(follower), "{}", cluster.log_tail(follower));
    verify(&cluster, &client, 0);
    cluster
        .await_settled(SETTLE)
        .expect("settles with the resumed follower");
    cluster.shutdown();
}
