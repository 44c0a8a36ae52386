//! Watches the copies of decided values in the simulated logs, write by write: no write may
//! lower the ballot a copy of a decided value reports (see `mu_nostd::slot`, "torn rewrites").
//!
//! A prepare counts a copy with no intact ballot as "nothing accepted", so a rewrite that tears
//! the only record of a copy's ballot can lose a decided value; the loss itself needs a long
//! schedule afterwards (the copy's holder must later lead with replicas that missed the value),
//! which random seeds seldom play out. This watch catches the tear itself.
//!
//! A copy is watched from the moment its position is known decided (some replica applied it)
//! on a replica that has not applied that position yet: once it has, a leader may recycle the
//! slot for a later lap, and a torn write of another position there is no loss.
//!
//! # Invariants
//! - A watched copy holds its position's decided value (same chain) when it is first seen.
//! - Only pieces that landed in a log area, and new decisions, change what is watched.

use std::collections::HashMap;

use mu_nostd::layout::{Layout, RECORD_BYTES};
use mu_nostd::slot;

/// What the last look at a watched copy saw.
#[derive(Clone, Copy, Debug)]
struct Seen {
    position: u64,
    chain: u64,
    ballot: Option<u64>,
}

/// Every watched copy, by replica and slot index.
pub struct Copies {
    layout: Layout,
    seen: Vec<HashMap<u32, Seen>>,
}

impl Copies {
    /// Nothing watched yet, for `replicas` replicas laid out as `layout`.
    pub fn new(layout: Layout, replicas: u8) -> Copies {
        Copies {
            layout,
            seen: (0..replicas).map(|_| HashMap::new()).collect(),
        }
    }

    /// A new life of `replica` (a fresh region): nothing of the old one is watched.
    pub fn forget(&mut self, replica: u8) {
        self.seen[replica as usize].clear();
    }

    /// `replica` applied everything below `applied`: those copies are no longer watched.
    pub fn applied(&mut self, replica: u8, applied: u64) {
        self.seen[replica as usize].retain(|_, seen| seen.position >= applied);
    }

    /// `position` is decided with chain `chain`: starts watching `replica`'s copy of it, if it
    /// holds that value.
    pub fn decided(&mut self, replica: u8, region: &[u8], position: u64, chain: u64) {
        let index = (position % self.layout.slot_count as u64) as u32;
        if let Some((found, ballot)) = self.look(region, index, position) {
            if found == chain {
                let seen = Seen {
                    position,
                    chain,
                    ballot,
                };
                self.seen[replica as usize].insert(index, seen);
            }
        }
    }

    /// A piece landed in `replica`'s log area at `[offset, offset + len)`: looks again at every
    /// watched copy it touched. Returns what went wrong, if anything.
    pub fn landed(&mut self, replica: u8, region: &[u8], offset: u32, len: u32) -> Vec<String> {
        let mut problems = Vec::new();
        for index in self.touched(offset, len) {
            let Some(before) = self.seen[replica as usize].get(&index).copied() else {
                continue;
            };
            match self.look(region, index, before.position) {
                Some((chain, ballot)) if chain == before.chain => {
                    if ballot < before.ballot {
                        problems.push(format!(
                            "replica {replica}: a write lowered the ballot of its copy of the \
                             decided position {} from {:?} to {ballot:?} (unreadable: None)",
                            before.position, before.ballot
                        ));
                    }
                    self.seen[replica as usize].insert(index, Seen { ballot, ..before });
                }
                // Torn, or another value: a write of a later lap may be landing (a copy that
                // can be recycled is no longer watched, but the position word tells nothing
                // until the write is whole), or, in a defective core, the value was destroyed:
                // that shows as a lost decided value to the simulator's agreement checks.
                _ => {}
            }
        }
        problems
    }

    /// The chain and accepted ballot of the copy of `position` at slot `index`, if it opens.
    fn look(&self, region: &[u8], index: u32, position: u64) -> Option<(u64, Option<u64>)> {
        let l = &self.layout;
        let slot_at = (l.slots + index * l.slot_size) as usize;
        let bytes = &region[slot_at..slot_at + l.slot_size as usize];
        let opened = slot::open(bytes, position).ok()?;
        let record = |at: u32| &region[at as usize..(at + RECORD_BYTES) as usize];
        let adoption = record(l.adoption_record(position));
        let decided = record(l.decided_mark(position));
        Some((
            opened.chain,
            slot::accepted_ballot(&opened, adoption, decided),
        ))
    }

    /// The slot indices whose slot, adoption record or decided mark overlaps the range.
    fn touched(&self, offset: u32, len: u32) -> Vec<u32> {
        let l = &self.layout;
        let end = offset as u64 + len as u64;
        let mut indices = Vec::new();
        let areas = [
            (l.slots, l.slot_size),
            (l.rewrites, RECORD_BYTES),
            (l.rewrites + l.slot_count * RECORD_BYTES, RECORD_BYTES),
        ];
        for (start, stride) in areas {
            let area_end = start as u64 + l.slot_count as u64 * stride as u64;
            let (from, to) = ((offset as u64).max(start as u64), end.min(area_end));
            if from >= to {
                continue;
            }
            let first = ((from - start as u64) / stride as u64) as u32;
            let last = ((to - 1 - start as u64) / stride as u64) as u32;
            indices.extend(first..=last);
        }
        indices
    }
}
