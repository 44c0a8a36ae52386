//! Regression for the cause behind seed 316614: a leader that was not polled for a while took
//! its own pause for its peers' silence, and lapped a correct member.
//!
//! The recycle limit lets the leader write position `p` only once every replica showing a sign
//! of life has applied `p - slot_count`. A replica the failure detector does not rate alive
//! (here: cut off from the leader for a while) still counts if its applied position rose within
//! `op_timeout_ticks`. That was judged by wall-clock recency. A leader back from a pause
//! therefore found such a member silent. It wrote a new position over a slot of its own log that
//! the member still needed. When the member rejoined, `log_holds` and `oldest_held` look only at
//! the leader's own log (the other follower still held the position), so the member was lapped
//! and sent a lap notice. At 4cc8392 the member halted; since 67647f3 it starts a state transfer
//! it never needed. The fix (`discount_own_pause` in `mu-nostd/src/tenure/mod.rs`) moves the recency
//! marks forward by the leader's own gap between polls.
//!
//! Without the fix this test fails: "0 lapped 2". 0 writes position `A + slot_count` in the
//! first poll after its pause, and 2 starts a transfer when it rejoins.
//!
//! The schedule runs by hand over a gentle world. Replica 0 is the faulty one: its link to 2
//! fails, and it is paused. 1 and 2 are correct and are polled at every tick.
//! 1. 0 leads. Every replica applied `A` positions, and 0 has read that 2 did.
//! 2. 0 and 2 cannot reach each other. 0 decides positions `[A, A + slot_count)` with 1, and
//!    its detector rates 2 failed. 2 still holds recycling back (its applied position rose
//!    within `op_timeout_ticks`), so 0 writes nothing more.
//! 3. Shortly before `op_timeout_ticks` have passed since 2's applied position last rose in 0's
//!    view, 0 is not polled (either plane) for `PAUSE_TICKS`. That is shorter than it takes 1 to
//!    suspect 0.
//! 4. 0 resumes with a command queued, and its link to 2 comes back. In 0's awake time, 2 was
//!    silent for less than `op_timeout_ticks`, so 2 must still hold recycling back until it
//!    rejoins and catches up from 0's log.
//!
//! Checked: 0 never marks 2 lapped; 2 never installs a snapshot and never halts; 1 keeps
//! following 0 (the pause caused no fail-over); every replica applies the same commands at the
//! same positions, including the command queued at the resumption.

use mu_nostd::{Config, DetectorConfig, Layout, Shared};
use mu_tests::cluster::SimReplica;
use mu_tests::world::{Faults, Plane, World};
use mu_tests::Recorder;

const LEADER: u8 = 0;
const FOLLOWER: u8 = 1;
/// The correct replica cut off from the leader for a while.
const MEMBER: u8 = 2;
const SLOT_COUNT: u32 = 16;
/// The recycle limit's recency window.
const OP_TIMEOUT_TICKS: u64 = 600;
/// How long 0 is not polled. 1's detector would take about 140 ticks to rate it failed
/// (`DetectorConfig::paper(10)`: 14 misses, one per 10-tick read).
const PAUSE_TICKS: u64 = 100;
/// 0 pauses this long before `OP_TIMEOUT_TICKS` has passed since 2's applied position last rose in
/// 0's view. Awake, 0 would still count 2 for this long, which is time enough for 2 to rejoin
/// (a lost member is surveyed again after `permission_retry_ticks`). With the pause counted,
/// 0 would not count 2 at all: `PAUSE_TICKS` is longer than this margin.
const PAUSE_MARGIN_TICKS: u64 = 60;
const WARM_COMMANDS: u64 = 4;
const TICKS: u64 = 3000;

/// Three replicas polled by hand, replication plane first (a leader back from a pause recycles
/// from the view its detector published before the pause); a paused replica is skipped.
struct Trio<'s> {
    world: World,
    replicas: Vec<SimReplica<'s>>,
    logs: Vec<Recorder>,
    paused_until: u64,
}

impl<'s> Trio<'s> {
    fn new(shared: &'s [Shared]) -> Trio<'s> {
        let mut config = Config::new(3);
        config.slot_count = SLOT_COUNT;
        config.entry_slots_max = 2;
        config.pipeline_depth = 2;
        config.detector = DetectorConfig::paper(10);
        config.op_timeout_ticks = OP_TIMEOUT_TICKS as u32;
        // A lost member is surveyed again this soon: 2 rejoins well within the margin.
        config.permission_retry_ticks = 20;
        config.recycle_period_ticks = 10;
        assert!(config.validate().is_ok());
        let world = World::new(Layout::new(&config), 3, Faults::gentle(), 7);
        let replicas = (0..3)
            .map(|i| SimReplica::new(config, i, &shared[i as usize]).unwrap())
            .collect();
        Trio {
            world,
            replicas,
            logs: (0..3).map(|_| Recorder::default()).collect(),
            paused_until: 0,
        }
    }

    fn poll(&mut self, tick: u64) {
        self.world.advance(tick);
        for i in 0..3u8 {
            if i == LEADER && tick < self.paused_until {
                continue;
            }
            let r = &mut self.replicas[i as usize];
            r.replication.poll(
                tick,
                &mut self.world.fabric(i, Plane::Replication),
                &mut self.logs[i as usize],
            );
            r.background
                .poll(tick, &mut self.world.fabric(i, Plane::Background));
        }
    }

    fn submit(&mut self, command: &[u8]) {
        self.replicas[LEADER as usize]
            .replication
            .submit(command)
            .expect("0 leads and its queue has room");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The cluster forms; 0 decides the first commands everywhere.
    Warm,
    /// 0 and 2 cannot reach each other.
    Cut,
    /// 0 is not polled.
    Paused,
    /// 0 resumed; its link to 2 is back.
    Resumed,
}

/// What the run saw, by tick.
#[derive(Debug, Default)]
struct Seen {
    /// 2's applied position in 0's view, and when it last rose there.
    member_applied: u64,
    member_applied_at: u64,
    cut_at: u64,
    /// When 2's applied position last rose in 0's view before the pause.
    silent_since: u64,
    /// When 0's detector stopped rating 2 alive.
    failed_at: Option<u64>,
    paused_at: u64,
    resumed_at: u64,
    /// The first time 0 marked 2 lapped, 2 started a transfer, 2 halted, 1 left 0.
    lapped_at: Option<u64>,
    transfer_at: Option<u64>,
    halted_at: Option<u64>,
    fail_over_at: Option<u64>,
    /// When 0 sent 2 log writes again after the pause.
    rejoined_at: Option<u64>,
}

impl Seen {
    fn observe(&mut self, trio: &Trio, tick: u64, step: Step) {
        if let Some(view) = trio.replicas[LEADER as usize].replication.leader_status() {
            let member = view.members[MEMBER as usize];
            if member.applied != self.member_applied {
                (self.member_applied, self.member_applied_at) = (member.applied, tick);
            }
            if member.lapped {
                self.lapped_at.get_or_insert(tick);
            }
            if step == Step::Resumed && member.active && !member.lapped {
                self.rejoined_at.get_or_insert(tick);
            }
        }
        let member = trio.replicas[MEMBER as usize].replication.status();
        if member.catching_up {
            self.transfer_at.get_or_insert(tick);
        }
        if member.halted.is_some() {
            self.halted_at.get_or_insert(tick);
        }
        let view = trio.replicas[FOLLOWER as usize].background.status().leader;
        if step != Step::Warm && view != Some(LEADER) {
            self.fail_over_at.get_or_insert(tick);
        }
        let alive = trio.replicas[LEADER as usize].background.status().alive;
        if step == Step::Cut && alive & (1 << MEMBER) == 0 {
            self.failed_at.get_or_insert(tick);
        }
    }
}

/// Plays one step of the schedule after the polls of `tick`; returns the next step.
fn play(trio: &mut Trio, seen: &mut Seen, tick: u64, step: Step) -> Step {
    let leader = trio.replicas[LEADER as usize].replication.status();
    match step {
        Step::Warm => {
            let voters = trio.replicas.iter().all(|r| r.replication.status().voter);
            if voters && leader.fast_path && leader.applied == 0 && leader.queued == 0 {
                for k in 0..WARM_COMMANDS {
                    trio.submit(format!("warm {k}").as_bytes());
                }
            }
            let everywhere = trio
                .replicas
                .iter()
                .all(|r| r.replication.status().applied == WARM_COMMANDS);
            if !everywhere || seen.member_applied != WARM_COMMANDS {
                return Step::Warm;
            }
            // 0 may write up to the recycle limit, one lap past 2's applied position.
            trio.world.set_reachable(LEADER, MEMBER, false);
            for position in WARM_COMMANDS..WARM_COMMANDS + SLOT_COUNT as u64 {
                trio.submit(format!("cut {position}").as_bytes());
            }
            seen.cut_at = tick;
            Step::Cut
        }
        Step::Cut => {
            let pause_at = seen.member_applied_at + OP_TIMEOUT_TICKS - PAUSE_MARGIN_TICKS;
            if tick + 1 < pause_at {
                return Step::Cut;
            }
            let limit = seen.member_applied + SLOT_COUNT as u64;
            assert_eq!(
                (leader.applied, leader.queued),
                (limit, 0),
                "0 decided every position up to the recycle limit before its pause"
            );
            trio.paused_until = tick + 1 + PAUSE_TICKS;
            seen.silent_since = seen.member_applied_at;
            seen.paused_at = tick + 1;
            Step::Paused
        }
        Step::Paused => {
            if tick + 1 < trio.paused_until {
                return Step::Paused;
            }
            // Before 0's first poll after the pause: a command waits, the link is back.
            trio.world.set_reachable(LEADER, MEMBER, true);
            trio.submit(b"queued during the pause");
            seen.resumed_at = tick + 1;
            Step::Resumed
        }
        Step::Resumed => Step::Resumed,
    }
}

#[test]
fn a_leader_back_from_a_pause_does_not_lap_a_correct_member() {
    let shared: Vec<Shared> = (0..3).map(|_| Shared::new()).collect();
    let mut trio = Trio::new(&shared);
    let mut seen = Seen::default();
    let mut step = Step::Warm;
    for tick in 0..TICKS {
        trio.poll(tick);
        seen.observe(&trio, tick, step);
        step = play(&mut trio, &mut seen, tick, step);
    }
    let applied: Vec<u64> = trio
        .replicas
        .iter()
        .map(|r| r.replication.status().applied)
        .collect();
    let figures = format!(
        "2 cut off from 0 at tick {} with {WARM_COMMANDS} applied (its applied position last \
         rose in 0's view at tick {}); 0's detector failed 2 at {:?}; 0 paused at {}, resumed \
         at {}; 2 rejoined at {:?}, lapped at {:?}, transfer at {:?}, halted at {:?}; 1 left 0 \
         at {:?}; applied at the end {applied:?}",
        seen.cut_at,
        seen.silent_since,
        seen.failed_at,
        seen.paused_at,
        seen.resumed_at,
        seen.rejoined_at,
        seen.lapped_at,
        seen.transfer_at,
        seen.halted_at,
        seen.fail_over_at,
    );
    println!("{figures}");
    assert_eq!(
        step,
        Step::Resumed,
        "the schedule did not play out: {figures}"
    );
    assert!(
        seen.failed_at.is_some(),
        "0's detector still rated 2 alive at the pause, so the schedule tests nothing: {figures}"
    );
    assert!(
        seen.resumed_at - seen.silent_since > OP_TIMEOUT_TICKS,
        "counting its pause, 0 would still count 2, so the schedule tests nothing: {figures}"
    );
    assert_eq!(seen.fail_over_at, None, "1 stopped following 0: {figures}");
    assert_eq!(
        seen.lapped_at, None,
        "0 lapped 2: its own pause made 2 look silent, and it recycled past 2: {figures}"
    );
    assert_eq!(
        seen.transfer_at, None,
        "2 started a state transfer: {figures}"
    );
    assert_eq!(seen.halted_at, None, "2 halted: {figures}");
    let end = WARM_COMMANDS + SLOT_COUNT as u64 + 1;
    assert_eq!(
        applied,
        vec![end; 3],
        "not every replica applied everything: {figures}"
    );
    for (id, log) in trio.logs.iter().enumerate() {
        assert_eq!(
            log.applied, trio.logs[LEADER as usize].applied,
            "replica {id} applied another sequence than 0"
        );
    }
    assert_eq!(
        trio.logs[MEMBER as usize].applied.last(),
        Some(&(end - 1, b"queued during the pause".to_vec())),
        "the command queued at the resumption is applied last"
    );
}
