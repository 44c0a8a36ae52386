//! A new leader that catches up by reading decided slots from the most advanced replica takes a
//! slot only when a record vouches for its header. A slot's chain is a hash of its header words
//! (layout 6), so a read that raced a write can land one writer's payload and payload digest
//! under another's header and still open: its chain is nobody's, and applying it would apply a
//! value nobody proposed.
//!
//! Replica 1 is cut off while 0 and 2 decide commands. Replica 2's copy of a position 1 lacks
//! then gets another payload with its own digest under the same header words. Replica 0 crashes,
//! 1 leads and catches up from 2: it must never apply that payload, and asks for a snapshot of 2
//! instead. Without the vouching (as at `3189c26`), it applied it.

use mu_nostd::slot::{self, body_digest, ACCEPTANCE_AT, SLOT_HEADER_BYTES};
use mu_nostd::Layout;
use mu_tests::trio::Trio;
use mu_tests::world::Faults;

/// Forms the cluster, cuts replica 1 off, and has 0 and 2 decide four commands 1 lacks; returns
/// the position replica 1 applies next.
fn leave_replica_1_behind(trio: &mut Trio<'_>) -> u64 {
    trio.formed();
    trio.world.set_reachable(0, 1, false);
    trio.world.set_reachable(2, 1, false);
    trio.run(50);
    let behind = trio.replica(1).replication.status().applied;
    for i in 0..4 {
        trio.commit(0, 2, format!("command-{i}").as_bytes());
    }
    assert!(trio.replica(2).replication.status().applied >= behind + 3);
    behind
}

#[test]
fn a_catch_up_never_applies_a_slot_no_record_vouches_for() {
    let shared = Trio::shared(0);
    let config = Trio::config();
    let layout = Layout::new(&config);
    let mut trio = Trio::new(config, Faults::gentle(), &shared);
    let behind = leave_replica_1_behind(&mut trio);

    // Another payload, whole with its own digest, under the header of position `behind + 1`.
    let torn = behind + 1;
    let original = trio
        .log(2)
        .applied
        .iter()
        .find(|(position, _)| *position == torn)
        .expect("replica 2 applied the position")
        .1
        .clone();
    let forged: Vec<u8> = original.iter().map(|b| b.to_ascii_uppercase()).collect();
    assert_ne!(forged, original);
    let at = layout.slot(torn) as usize;
    let region = trio.world.region_mut(2);
    region[at..at + 8].copy_from_slice(&body_digest(&forged).to_le_bytes());
    let payload = at + SLOT_HEADER_BYTES as usize;
    region[payload..payload + forged.len()].copy_from_slice(&forged);

    trio.crash(0);
    trio.world.set_reachable(2, 1, true);
    let asked = trio.run_until(20_000, |t| t.replica(1).replication.status().transfers > 0);
    trio.run(1_000);
    assert!(
        trio.log(1)
            .applied
            .iter()
            .all(|(_, bytes)| *bytes != forged),
        "replica 1 applied a payload under a header no record vouches for: {:?}",
        trio.log(1).applied
    );
    // It asks for a snapshot instead (the recorder has no state to transfer, so here it
    // stays there; an application's replica would install replica 2's).
    let status = trio.replica(1).replication.status();
    assert!(asked.is_some(), "replica 1 asks for a snapshot: {status:?}");
    assert!(
        status.applied <= torn,
        "replica 1 passed the position: {status:?}"
    );
}

/// A source's copy of a decided position whose acceptance record was torn (a decided rewrite
/// cut short after its decided mark landed) is still one writer's value: the next slot names its
/// chain. The catch-up takes it, with no snapshot. (Found by review: the first version of the
/// vouching asked for one.)
#[test]
fn a_catch_up_takes_a_slot_the_next_one_links_to() {
    let shared = Trio::shared(0);
    let config = Trio::config();
    let layout = Layout::new(&config);
    let size = config.slot_size as usize;
    let mut trio = Trio::new(config, Faults::gentle(), &shared);
    let behind = leave_replica_1_behind(&mut trio);
    let torn = behind + 1;
    let at = layout.slot(torn) as usize;
    let region = trio.world.region_mut(2);
    let opened = slot::open(&region[at..at + size], torn).expect("whole");
    let mark = layout.decided_mark(torn) as usize;
    let bytes = slot::encode_decided(opened.chain);
    region[mark..mark + bytes.len()].copy_from_slice(&bytes);
    region[at + ACCEPTANCE_AT as usize + 3] ^= 0x5A;

    trio.crash(0);
    trio.world.set_reachable(2, 1, true);
    let settled = trio.run_until(20_000, |t| {
        let status = t.replica(1).replication.status();
        status.applied > torn || status.transfers > 0
    });
    let status = trio.replica(1).replication.status();
    assert!(settled.is_some(), "replica 1 catches up: {status:?}");
    assert_eq!(
        status.transfers, 0,
        "replica 1 asked for a snapshot: {status:?}"
    );
}
