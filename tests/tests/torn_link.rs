//! A follower trusts a commit point only through headers that link, each by the chain its own
//! words yield: a torn header can pair one writer's `chain_prev` with another's chain, and a
//! scan that linked headers by a stored chain would follow it to a later leader's commit point
//! and apply an undecided value below.
//!
//! Follower 2 is cut off with everything applied up to `a`. Its log is then written by hand:
//! at `a` the value `v1` of a deposed leader; at `a + 1` a header torn between the deposed
//! leader's slot (its `chain_prev`, the chain of `v1`) and a later leader's (its chain and
//! acceptance, for a prefix holding `w` at `a`); at `a + 2` the later leader's slot, whose
//! commit point says `a` and `a + 1` are decided. Position `a` is decided as `w`, not `v1`: the
//! follower must apply nothing. A scan that walked headers by their stored chains (as the core
//! did for one commit, `e20c1f1`) applied `v1`. Since layout 6 no chain is stored: the torn
//! header's words hash to a chain nobody wrote, and the walk stops there.

use mu_nostd::slot::{origin, Acceptance, SlotHeader, SLOT_HEADER_BYTES};
use mu_nostd::Layout;
use mu_tests::trio::Trio;
use mu_tests::world::Faults;

/// Writes the slot of `header` holding `payload`, accepted as `acceptance`, at its position in
/// `region`; returns its chain.
fn write_slot(
    region: &mut [u8],
    layout: &Layout,
    size: usize,
    header: SlotHeader,
    payload: &[u8],
    acceptance: Acceptance,
) -> u64 {
    let at = layout.slot(header.position) as usize;
    let slot = &mut region[at..at + size];
    slot.fill(0);
    let chain = header.seal(payload, acceptance, slot);
    slot[SLOT_HEADER_BYTES as usize..][..payload.len()].copy_from_slice(payload);
    chain
}

fn header(position: u64, chain_prev: u64, proposer: u8, payload: &[u8]) -> SlotHeader {
    SlotHeader {
        position,
        chain_prev,
        origin: origin(proposer, position + 1),
        entry_len: payload.len() as u32,
        frag_index: 0,
        frag_count: 1,
    }
}

/// Cuts follower 2 off from both other replicas and lets it settle: returns its applied
/// position, the chain through it, and how many commands its log applied.
fn cut_off_follower(trio: &mut Trio<'_>) -> (u64, u64, usize) {
    trio.world.set_reachable(0, 2, false);
    trio.world.set_reachable(1, 2, false);
    trio.run(50);
    let status = trio.replica(2).replication.status();
    (
        status.applied,
        status.applied_chain,
        trio.log(2).applied.len(),
    )
}

#[test]
fn a_torn_header_never_links_a_later_commit_point_to_an_undecided_value() {
    let shared = Trio::shared(0);
    let config = Trio::config();
    let layout = Layout::new(&config);
    let size = config.slot_size as usize;
    let mut trio = Trio::new(config, Faults::gentle(), &shared);
    trio.formed();
    for i in 0..3 {
        trio.commit(0, 2, format!("command-{i}").as_bytes());
    }
    let (a, chain_a, applied_before) = cut_off_follower(&mut trio);

    let region = trio.world.region_mut(2);
    let deposed = Acceptance {
        ballot: 5,
        commit: a,
    };
    let later = Acceptance {
        ballot: 9,
        commit: a,
    };
    // The deposed leader's `v1` at `a` and its slot at `a + 1`, both whole.
    let v1 = write_slot(
        region,
        &layout,
        size,
        header(a, chain_a, 1, b"v1"),
        b"v1",
        deposed,
    );
    let deposed_next = header(a + 1, v1, 1, b"x1");
    write_slot(region, &layout, size, deposed_next, b"x1", deposed);
    // The later leader's prefix: `w` at `a` (never written here), `x2` at `a + 1`, `y` at
    // `a + 2`, whose commit point is `a + 2`.
    let w = header(a, chain_a, 0, b"w").chain(b"w");
    let later_next = header(a + 1, w, 0, b"x2");
    let mut torn = [0u8; 512];
    let x2 = later_next.seal(b"x2", later, &mut torn[..size]);
    let commit = Acceptance {
        ballot: 9,
        commit: a + 2,
    };
    write_slot(
        region,
        &layout,
        size,
        header(a + 2, x2, 0, b"y"),
        b"y",
        commit,
    );
    // Slot `a + 1`: the later leader's header and value, but the deposed leader's
    // `chain_prev` word is still there (the word of the later write that did not land yet).
    let at = layout.slot(a + 1) as usize;
    let kept_chain_prev: [u8; 8] = region[at + 16..at + 24].try_into().unwrap();
    region[at..at + SLOT_HEADER_BYTES as usize]
        .copy_from_slice(&torn[..SLOT_HEADER_BYTES as usize]);
    region[at + SLOT_HEADER_BYTES as usize..][..2].copy_from_slice(b"x2");
    region[at + 16..at + 24].copy_from_slice(&kept_chain_prev);
    assert_eq!(u64::from_le_bytes(kept_chain_prev), v1);

    trio.run(200);
    let applied: Vec<_> = trio.log(2).applied[applied_before..].to_vec();
    assert!(
        applied.is_empty(),
        "follower 2 applied {applied:?} below a commit point it reached through a torn header"
    );
    assert_eq!(trio.replica(2).replication.status().applied, a);
}

/// Writes `value` at `a` into follower 2's log (its payload still landing: "vaLUE" where
/// "value" belongs) and at `a + 1` a slot whose commit point says `a` is decided, then runs:
/// follower 2 must be blocked at `a` (torn). Returns where `a`'s payload is in the region.
fn decided_with_its_payload_landing(
    trio: &mut Trio<'_>,
    layout: &Layout,
    a: u64,
    chain_a: u64,
) -> usize {
    let size = layout.slot_size as usize;
    let region = trio.world.region_mut(2);
    let accepted = Acceptance {
        ballot: 9,
        commit: a,
    };
    let v = write_slot(
        region,
        layout,
        size,
        header(a, chain_a, 0, b"value"),
        b"value",
        accepted,
    );
    let commit = Acceptance {
        ballot: 9,
        commit: a + 1,
    };
    write_slot(
        region,
        layout,
        size,
        header(a + 1, v, 0, b"next"),
        b"next",
        commit,
    );
    let payload_at = layout.slot(a) as usize + SLOT_HEADER_BYTES as usize;
    region[payload_at..payload_at + 5].copy_from_slice(b"vaLUE");
    trio.run(200);
    assert_eq!(
        trio.replica(2)
            .replication
            .status()
            .blocked
            .map(|(_, why)| why),
        Some(mu_nostd::Blocked::Torn),
        "follower 2 waits at {a} for the payload, below the commit point {}",
        a + 1
    );
    payload_at
}

/// The scan links headers without reading payloads, so a decided position may be reached while
/// its payload is still landing: the apply checks the payload against the header's body digest
/// and waits for the bytes, then applies the value.
#[test]
fn a_torn_payload_under_a_linked_header_waits_for_its_bytes() {
    let shared = Trio::shared(0);
    let config = Trio::config();
    let layout = Layout::new(&config);
    let mut trio = Trio::new(config, Faults::gentle(), &shared);
    trio.formed();
    let (a, chain_a, applied_before) = cut_off_follower(&mut trio);

    let payload_at = decided_with_its_payload_landing(&mut trio, &layout, a, chain_a);
    assert_eq!(
        trio.log(2).applied.len(),
        applied_before,
        "follower 2 applied a payload its header's digest does not match"
    );

    let region = trio.world.region_mut(2);
    region[payload_at..payload_at + 5].copy_from_slice(b"value");
    let landed = trio.run_until(2_000, |t| t.replica(2).replication.status().applied > a);
    assert!(
        landed.is_some(),
        "follower 2 applies the value once its bytes landed"
    );
    assert_eq!(trio.log(2).applied[applied_before].1, b"value".to_vec());
}

/// A commit point is only as good as the walk that linked it: when the walk restarts (here, the
/// apply met a payload still landing), the position it covered may hold another header by the
/// next walk. Slot `a` then gets a later writer's body digest, origin and payload with the old
/// position and `chain_prev` words: the walk links that header (its `chain_prev` is the applied
/// chain) and records the chain its words yield, which nothing vouches for; it must not be
/// applied below the commit point learned through the earlier header. (Found by review: the
/// core kept `commit_known` across walks.)
#[test]
fn a_commit_point_learned_by_an_earlier_walk_never_covers_another_header() {
    let shared = Trio::shared(0);
    let config = Trio::config();
    let layout = Layout::new(&config);
    let size = config.slot_size as usize;
    let mut trio = Trio::new(config, Faults::gentle(), &shared);
    trio.formed();
    let (a, chain_a, applied_before) = cut_off_follower(&mut trio);

    decided_with_its_payload_landing(&mut trio, &layout, a, chain_a);
    assert_eq!(
        trio.log(2).applied.len(),
        applied_before,
        "nothing applied yet"
    );
    let slot_at = layout.slot(a) as usize;

    let slot_count = config.slot_count as u64;
    let later = SlotHeader {
        origin: origin(1, 77),
        ..header(a + slot_count, 0x1234_5678, 1, b"LATER")
    };
    let mut bytes = vec![0u8; size];
    let lap = Acceptance {
        ballot: 17,
        commit: a + slot_count,
    };
    later.seal(b"LATER", lap, &mut bytes);
    bytes[SLOT_HEADER_BYTES as usize..][..5].copy_from_slice(b"LATER");
    let region = trio.world.region_mut(2);
    let old: Vec<u8> = region[slot_at..slot_at + size].to_vec();
    region[slot_at..slot_at + size].copy_from_slice(&bytes);
    region[slot_at + 8..slot_at + 24].copy_from_slice(&old[8..24]);

    trio.run(200);
    let applied: Vec<_> = trio.log(2).applied[applied_before..].to_vec();
    assert!(
        applied.is_empty(),
        "follower 2 applied {applied:?} at {a} under a header torn between two writers"
    );
}
