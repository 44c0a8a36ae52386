//! Three firmware replicas over one shared window, stepped in one thread with a shared clock:
//! the whole firmware stack (window fabric, responders, permissions, run loop, the core) on the
//! host. The leader is killed (never stepped again); a new leader must take over and the
//! survivors must agree; a killed replica restarted after the log wrapped rejoins by state
//! transfer, and then all three agree.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use common::{window_for, zero_parts_of, Cluster, ROUNDS_MAX};
use mu_apps::session::STREAM_HEADER_BYTES;
use mu_nostd::{Config, Shared};
use runtime_embedded::permissions::Permissions;
use runtime_embedded::setpoints::{
    SessionSetpoints, SessionSweep, Setpoints, Sweep, AXES, SNAPSHOT_BYTES,
};
use runtime_embedded::telemetry::{self, control};
use runtime_embedded::window::WindowLayout;
use runtime_embedded::words::Words;
use runtime_embedded::{Firmware, Step};

/// The setpoint table and replica `id`'s sweep, through exactly-once sessions: what the boards
/// host, and every replica of these tests.
fn setpoints(id: u8) -> (SessionSetpoints, SessionSweep) {
    (
        SessionSetpoints::new(Setpoints::new()),
        SessionSweep::new(Sweep::new(id)),
    )
}

#[test]
fn a_new_leader_takes_over_and_the_survivors_agree() {
    let config = Config::new(3);
    let backing = window_for(&config);
    let window = Words::new(&backing);
    let shared: Vec<Shared> = (0..3).map(|_| Shared::new()).collect();
    let permissions: Vec<Permissions> = (0..3).map(|_| Permissions::new()).collect();
    let mut cluster = Cluster::start(config, window, &shared, &permissions, setpoints);
    for _ in 0..10_000 {
        cluster.round();
    }
    assert!(
        cluster.replicas.iter().all(|f| f.submitted() == 0),
        "the workload waits for the start word"
    );
    telemetry::set_control_word(window, control::START, 1);

    cluster.until("a leader committing 500 commands", |c| {
        c.leader_committed(500).is_some()
    });
    let old = cluster.leader().unwrap();
    let committed_before: u64 = cluster.reports().iter().map(|r| r.committed).sum();
    cluster.alive[old] = false;

    cluster.until("a new leader committing 300 commands", |c| {
        c.leader_committed(300).is_some_and(|l| l != old)
    });
    let new = cluster.leader().unwrap();
    assert_ne!(new, old);

    telemetry::set_control_word(window, control::STOP, 1);
    cluster.converge("the survivors to converge");
    let reports = cluster.reports();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].digest, reports[1].digest, "{reports:?}");
    let committed_total: u64 = cluster.replicas.iter().map(|f| f.report().committed).sum();
    assert!(committed_total >= committed_before + 300);
    // Every command committed by either leader is applied on both survivors.
    assert!(
        reports[0].applied >= committed_total,
        "{reports:?} {committed_total}"
    );
    assert!(reports.iter().all(|r| r.leader == Some(new as u8)));
    assert!(reports.iter().all(|r| r.leader_changes >= 1), "{reports:?}");

    telemetry::set_control_word(window, control::FINISH, 1);
    assert!(cluster.round().iter().all(|s| *s == Step::Finish));
}

#[test]
fn a_replica_restarted_after_the_log_wrapped_rejoins_by_state_transfer() {
    let mut config = Config::new(3);
    config.slot_count = 64; // Laps come quickly.
    let layout = WindowLayout::new(&config).unwrap();
    let backing = window_for(&config);
    let window = Words::new(&backing);
    // One more life than replicas: the restarted one's.
    let shared: Vec<Shared> = (0..4).map(|_| Shared::new()).collect();
    let permissions: Vec<Permissions> = (0..4).map(|_| Permissions::new()).collect();
    let mut cluster = Cluster::start(config, window, &shared, &permissions, setpoints);
    telemetry::set_control_word(window, control::START, 1);
    cluster.until("a leader committing 100 commands", |c| {
        c.leader_committed(100).is_some()
    });
    let old = cluster.leader().unwrap();
    cluster.alive[old] = false;
    let laps = 3 * u64::from(config.slot_count);
    cluster.until("the survivors wrapping the log three times", |c| {
        c.leader()
            .is_some_and(|l| l != old && c.replicas[l].report().applied >= 100 + laps)
    });

    zero_parts_of(&backing, &layout, old as u8);
    telemetry::set_control_word(window, telemetry::life_word(old as u8), 2);
    let life = (&shared[3], &permissions[3]);
    let (app, sweep) = setpoints(old as u8);
    cluster.replicas[old] =
        Firmware::new(config, old as u8, window, life.0, life.1, app, sweep).unwrap();
    cluster.alive[old] = true;
    assert!(
        !cluster.replicas[old].report().voter,
        "a new life is recovering"
    );
    cluster.until("the restarted replica installing a snapshot", |c| {
        c.replicas[old].report().transfers.installs >= 1
    });
    let transfers = cluster.replicas[old].report().transfers;
    assert!(transfers.installed_position >= 100 + laps, "{transfers:?}");
    // The session table's stream, then the setpoints' image.
    let table = transfers.installed_bytes - SNAPSHOT_BYTES as u64;
    assert!(table > STREAM_HEADER_BYTES as u64, "{transfers:?}");
    let donations: u32 = (0..3)
        .filter(|&i| i != old)
        .map(|i| cluster.replicas[i].report().transfers.donations)
        .sum();
    assert!(donations >= 1);
    cluster.until("the restarted replica admitted as a voter", |c| {
        c.replicas[old].report().voter
    });

    telemetry::set_control_word(window, control::STOP, 1);
    cluster.converge("all three to converge");
    let reports = cluster.reports();
    assert_eq!(reports.len(), 3);
    assert!(
        reports.iter().all(|r| r.digest == reports[0].digest),
        "{reports:?}"
    );
    assert!(
        reports.iter().all(|r| r.halted.is_none() && r.voter),
        "{reports:?}"
    );
    // The state, not only its digest: every axis equal.
    for axis in 0..AXES {
        let value = cluster.replicas[0].app().inner().axis(axis);
        assert!(cluster
            .replicas
            .iter()
            .all(|f| f.app().inner().axis(axis) == value));
    }
}

#[test]
fn a_single_node_finishes_its_self_test_by_itself() {
    let config = Config::new(1);
    let backing = window_for(&config);
    let window = Words::new(&backing);
    let (shared, permissions) = (Shared::new(), Permissions::new());
    let (app, sweep) = setpoints(0);
    let mut firmware = Firmware::new(config, 0, window, &shared, &permissions, app, sweep)
        .unwrap()
        .self_test(500);
    let mut now = 0;
    while firmware.step(now) == Step::Running {
        now += 1;
        assert!(now < ROUNDS_MAX, "the self-test did not finish");
    }
    assert!(firmware.self_check());
    assert_eq!(firmware.submitted(), 500);
    assert_eq!(firmware.report().committed, 500);
    // A register, then 499 of the sweep's commands, each applied once.
    assert_eq!(firmware.app().inner().applied(), 499);
    assert_eq!(firmware.app().sessions(), 1);
}

#[test]
#[should_panic(expected = "fault injection")]
fn the_control_block_can_make_one_replica_panic() {
    let config = Config::new(3);
    let backing = window_for(&config);
    let window = Words::new(&backing);
    let (shared, permissions) = (Shared::new(), Permissions::new());
    let (app, sweep) = setpoints(2);
    let mut firmware = Firmware::new(config, 2, window, &shared, &permissions, app, sweep).unwrap();
    telemetry::set_control_word(window, control::PANIC, 1);
    assert_eq!(
        firmware.step(1),
        Step::Running,
        "replica 0 is asked, not replica 2"
    );
    telemetry::set_control_word(window, control::PANIC, 3);
    firmware.step(2);
}

/// The deaths replica `id` took, as its telemetry says.
fn deaths(backing: &[AtomicU32], layout: &WindowLayout, id: u8) -> u32 {
    let at = layout.telemetry(id) as usize / 4 + telemetry::word::DEATHS;
    backing[at].load(Ordering::SeqCst)
}

#[test]
fn a_life_marked_ended_is_failed_at_once_and_its_successor_is_not() {
    let config = Config::new(3);
    let layout = WindowLayout::new(&config).unwrap();
    let backing = window_for(&config);
    let window = Words::new(&backing);
    let shared: Vec<Shared> = (0..4).map(|_| Shared::new()).collect();
    let permissions: Vec<Permissions> = (0..4).map(|_| Permissions::new()).collect();
    let mut cluster = Cluster::start(config, window, &shared, &permissions, setpoints);
    telemetry::set_control_word(window, control::START, 1);
    // Admitted, the survivors may elect one of them (a cluster whose first leader dies before it
    // admitted anyone cannot: it never formed).
    cluster.until(
        "a leader committing 100 commands, every replica a voter",
        |c| c.reports().iter().all(|r| r.voter) && c.leader_committed(100).is_some(),
    );
    let old = cluster.leader().unwrap();
    cluster.alive[old] = false;
    let ended = 1 | telemetry::LIFE_ENDED;
    telemetry::set_control_word(window, telemetry::life_word(old as u8), ended);
    let marked_at = cluster.now;
    cluster.until("every survivor to stop following the old leader", |c| {
        c.reports().iter().all(|r| r.leader != Some(old as u8))
    });
    // The pull score would need about 14 unchanged reads, one per read period.
    let took = cluster.now - marked_at;
    assert!(
        took < u64::from(config.detector.read_period_ticks),
        "{took} ticks"
    );
    cluster.until("a new leader committing", |c| {
        c.leader_committed(1).is_some_and(|l| l != old)
    });
    let survivors: Vec<u8> = (0..3u8).filter(|&id| id != old as u8).collect();
    assert!(survivors
        .iter()
        .all(|&id| deaths(&backing, &layout, id) == 1));

    // A replica never boots into a life marked ended: its peers would take it for dead.
    let (s, p) = (&shared[3], &permissions[3]);
    let (app, sweep) = setpoints(old as u8);
    let refused = Firmware::new(config, old as u8, window, s, p, app, sweep);
    assert!(matches!(
        refused.err(),
        Some(runtime_embedded::StartError::LifeEnded { life: 1 })
    ));
    // Its successor, numbered 2, is not failed by the notice about life 1.
    zero_parts_of(&backing, &layout, old as u8);
    telemetry::set_control_word(window, telemetry::life_word(old as u8), 2);
    let (app, sweep) = setpoints(old as u8);
    cluster.replicas[old] = Firmware::new(config, old as u8, window, s, p, app, sweep).unwrap();
    cluster.alive[old] = true;
    cluster.until("the restarted replica admitted as a voter", |c| {
        c.replicas[old].report().voter
    });
    for _ in 0..10 * u64::from(config.detector.read_period_ticks) {
        cluster.round();
    }
    assert!(survivors
        .iter()
        .all(|&id| deaths(&backing, &layout, id) == 1));
    assert!(cluster
        .reports()
        .iter()
        .all(|r| r.leader.is_some() && r.halted.is_none()));
}
