//! Regression (the verbs guest's livelock, issue 14): a leader whose replication plane stalls
//! long enough to stop its heartbeat (fate sharing), but not long enough for any peer to notice,
//! used to count itself out of the election at once: it ended its own tenure and, a moment later,
//! started the next one. On verbs every new tenure costs a permission switch and new pairings,
//! which stalled the planes again in the Soft-RoCE guest: tenure after tenure, for minutes.
//!
//! A leader now counts itself out only once its heartbeat has been stopped as long as the
//! quickest peer needs to declare it failed; a shorter stall makes it more patient. A stall
//! longer than that still hands the leadership over (fate sharing deposes a stuck leader).
//!
//! The schedule: three replicas form with replica 0 leading; then replica 0's replication plane
//! is not polled for `ticks` (its background plane runs on).

use mu_nostd::{Layout, Shared};
use mu_tests::cluster::SimReplica;
use mu_tests::trio::Trio;
use mu_tests::world::{Faults, Plane, World};
use mu_tests::Recorder;

const LEADER: u8 = 0;

struct Run {
    /// Every replica's leader view, per tick after the stall began.
    views: Vec<[Option<u8>; 3]>,
    /// Replica 0's tenure when the stall began, and at the end.
    tenure_before: Option<u32>,
    tenure_after: Option<u32>,
    /// The leader's patience at the end.
    patience: u8,
    /// A replica other than 0 reached the fast path during the stall.
    successor: Option<u8>,
}

/// Forms the cluster, stalls the leader's replication plane for `stall` ticks, then runs on for
/// `after` ticks.
fn stall_leader(stall: u64, after: u64) -> Run {
    let config = Trio::config();
    let mut world = World::new(Layout::new(&config), 3, Faults::gentle(), 11);
    let shared: Vec<Shared> = (0..3).map(|_| Shared::new()).collect();
    let mut replicas: Vec<SimReplica> = (0..3)
        .map(|i| SimReplica::new(config, i, &shared[i as usize]).unwrap())
        .collect();
    let mut logs: Vec<Recorder> = (0..3).map(|_| Recorder::default()).collect();
    let mut stall_from = None;
    let mut run = Run {
        views: Vec::new(),
        tenure_before: None,
        tenure_after: None,
        patience: 0,
        successor: None,
    };
    for tick in 0..20_000u64 {
        world.advance(tick);
        let stalled = stall_from.is_some_and(|from| tick < from + stall);
        for i in 0..3u8 {
            let r = &mut replicas[i as usize];
            r.background
                .poll(tick, &mut world.fabric(i, Plane::Background));
            if !(i == LEADER && stalled) {
                r.replication.poll(
                    tick,
                    &mut world.fabric(i, Plane::Replication),
                    &mut logs[i as usize],
                );
            }
        }
        let leader = replicas[LEADER as usize].replication.status();
        let formed = leader.fast_path
            && replicas
                .iter()
                .all(|r| r.background.status().voters == 0b111);
        if stall_from.is_none() {
            if formed {
                stall_from = Some(tick + 1);
                run.tenure_before = leader.leading;
            }
            continue;
        }
        run.views
            .push([0, 1, 2].map(|i: usize| replicas[i].background.status().leader));
        for i in 1..3u8 {
            if stalled && replicas[i as usize].replication.status().fast_path {
                run.successor.get_or_insert(i);
            }
        }
        if tick >= stall_from.unwrap() + stall + after {
            run.tenure_after = leader.leading;
            run.patience = replicas[LEADER as usize].background.status().patience;
            return run;
        }
    }
    panic!("the cluster formed");
}

#[test]
fn a_stall_no_peer_noticed_leaves_the_leader_its_tenure() {
    let config = Trio::config();
    let fate = config.detector.fate_ticks as u64;
    // The heartbeat stops, but for only half the time a peer needs to notice.
    let run = stall_leader(fate + config.detector.detection_ticks() / 2, 1_000);
    assert!(run.tenure_before.is_some());
    for (t, views) in run.views.iter().enumerate() {
        assert_eq!(
            *views,
            [Some(LEADER); 3],
            "{t} ticks after the stall began: the leader views"
        );
    }
    assert_eq!(
        run.tenure_after, run.tenure_before,
        "the leader keeps its tenure"
    );
    assert_eq!(run.successor, None);
    assert_eq!(run.patience, 2, "the stall made the leader more patient");
}

#[test]
fn a_long_stall_still_hands_the_leadership_over() {
    let config = Trio::config();
    let fate = config.detector.fate_ticks as u64;
    let run = stall_leader(fate + config.detector.detection_ticks() * 6, 1_000);
    assert!(
        run.successor.is_some(),
        "another replica leads while the leader's replication plane is stuck"
    );
    assert_ne!(run.tenure_after, run.tenure_before);
}
