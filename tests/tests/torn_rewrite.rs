//! A rewrite cut short must never cost a decided value its only intact copy (issue: "close the
//! torn-rewrite gap"). Layout 4 kept the ballot inside the slot's checksum: a cut rewrite of the
//! same value under another ballot left the slot torn, and a prepare counted it as nothing
//! accepted.

use mu_nostd::slot::SLOT_HEADER_BYTES;
use mu_nostd::Layout;
use mu_tests::trio::Trio;
use mu_tests::world::Faults;

/// With 0, 1, 2 as A, B, C: A decides `v` at `p` with B while C is cut off, and is isolated
/// before B learns the decision; B leads, adopts `v` under its ballot, and its write of `v` to
/// C is cut (nothing lands), so its tenure ends with C lacking `v`; A returns and leads with B,
/// and its catch-up write of `p` to B is cut in the middle of the slot's acceptance record; A is
/// isolated again, and B leads with C. B's copy is then the only copy of `v` in the quorum: it
/// must still count as accepted, so B adopts `v` again rather than deciding its own `w` at `p`.
/// With the planted defect `bug-torn-rewrite` (rewrites in one write, no decided marks or
/// adoption records, as in layout 4) B counts it as nothing and decides `w`: this test fails.
#[test]
fn a_cut_rewrite_never_loses_the_only_copy_of_a_decided_value() {
    let shared = Trio::shared(0);
    let config = Trio::config();
    let layout = Layout::new(&config);
    let mut trio = Trio::new(config, Faults::gentle(), &shared);
    trio.formed();

    // A decides `v` with B; C is cut off, and A's commit record to B never lands.
    trio.world.set_reachable(0, 2, false);
    trio.world.cut_next_write(0, 1, layout.commit_record());
    let before = trio.replica(0).replication.status().applied;
    trio.replica_mut(0)
        .replication
        .submit(b"command-v")
        .expect("0 leads");
    let decided = trio.run_until(2_000, |t| {
        t.replica(0).replication.status().applied > before && !t.world.cut_pending()
    });
    assert!(decided.is_some(), "A decides v with B");
    let p = position_of(&trio, 0, b"command-v").expect("A applied v");
    trio.world.set_reachable(0, 1, false);
    assert!(
        trio.replica(1).replication.status().applied <= p,
        "B must not know v is decided"
    );

    // B leads with C and adopts `v`; its write of `v` to C is cut before anything lands.
    trio.world.cut_next_write(1, 2, layout.slot(p));
    let cut = trio.run_until(4_000, |t| !t.world.cut_pending());
    assert!(cut.is_some(), "B adopts v and writes it to C");
    trio.world.set_reachable(1, 2, false);
    trio.run(200);

    // A leads with B again; its catch-up write of `p` to B is cut inside the acceptance record.
    let ballot_word = layout.slot(p) + SLOT_HEADER_BYTES - 16;
    trio.world.cut_next_write(0, 1, ballot_word);
    trio.world.set_reachable(0, 1, true);
    let cut = trio.run_until(6_000, |t| !t.world.cut_pending());
    assert!(cut.is_some(), "A rewrites p to B");
    trio.run(5);
    trio.world.set_reachable(0, 1, false);

    // B leads with C; whatever it proposes must not take `p`.
    trio.world.set_reachable(1, 2, true);
    let led = trio.run_until(6_000, |t| t.replica(1).replication.status().fast_path);
    assert!(led.is_some(), "B leads with C");
    let _ = trio.replica_mut(1).replication.submit(b"command-w");
    trio.run(1_000);
    trio.world.heal();
    trio.run(2_000);

    for id in 0..3 {
        if let Some(command) = trio
            .log(id)
            .applied
            .iter()
            .find(|(position, _)| *position == p)
            .map(|(_, command)| command.clone())
        {
            assert_eq!(
                command.as_slice(),
                b"command-v",
                "replica {id} applied {:?} at position {p}, where v was decided",
                String::from_utf8_lossy(&command)
            );
        }
    }
    assert_eq!(position_of(&trio, 1, b"command-v"), Some(p), "B applied v");
}

fn position_of(trio: &Trio, id: u8, command: &[u8]) -> Option<u64> {
    trio.log(id)
        .applied
        .iter()
        .find(|(_, c)| c.as_slice() == command)
        .map(|(position, _)| *position)
}
