//! The prepare (phases 4 and 5): promises, then the slot reads and the adoption.
//!
//! The leader reads both min-proposal records (and the standing) of its members, picks a
//! ballot above every promise it saw (unique: `round * 8 + id`), and writes it over each
//! member's older record. Then, position by position from its first undecided one, it reads the
//! slot, its adoption record and its decided mark from every prepared member; if any copy holds
//! a value, it adopts the one with the highest ballot and waits until it is decided.
//!
//! # Invariants
//! - A ballot is written to members only after a quorum of voters (this replica among them)
//!   answered the promise read, or every replica did (a `full` prepare).
//! - The adopted value reaches a member whose copy the prepare read by the write that leaves
//!   the record holding that copy's highest ballot alone (`Adoption`); a member not read gets
//!   it only once it is decided.
//! - A copy that a later lap overwrote (`Ahead`) dooms the tenure: a member recycled past a
//!   position this replica has not applied.

use super::{Leading, MemberState, Phase, ACK_WINDOW, MARKED_REWRITES, SLOT_READS};
use crate::config::REPLICAS_MAX;
use crate::fabric::{Fabric, ReplicaId};
use crate::layout::{Layout, PROMISE_BYTES, RECORD_BYTES};
use crate::record;
use crate::slot::{self, Acceptance, Opened, SlotError, SlotHeader, SLOT_HEADER_BYTES};
use crate::wrid::Kind;

/// How the adopted value goes to a member whose copy of its position the prepare read (this
/// tenure is its only writer since, so the copy is still as read). Whatever it writes, the
/// record that holds the copy's highest ballot is not the one overwritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Adoption {
    /// Its copy of the value is marked decided: nothing to write, its vote counts.
    Held,
    /// Its copy of the value has its highest ballot in the slot's acceptance record: only the
    /// adoption record is written.
    Record,
    /// Anything else (another value, a torn one, or a copy whose adoption record holds its
    /// highest ballot): the slot is written.
    Slot,
}

/// An acceptor's promises: its two min-proposal records and its standing record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Promises {
    /// The highest ballot promised, standing included.
    pub(crate) highest: u64,
    /// Which min-proposal record to overwrite (the invalid or lower one).
    pub(crate) older: u32,
    /// Its min-proposal records hold a promise (a prepare reached it in this life).
    pub(crate) pledged: bool,
    /// Its standing is nonzero: this life is a voter.
    pub(crate) voter: bool,
}

impl Promises {
    pub(super) const NONE: Promises = Promises {
        highest: 0,
        older: 0,
        pledged: false,
        voter: false,
    };

    /// Decodes the promise bytes (`PROMISE_BYTES`, read from `layout.min_proposal()`).
    pub(super) fn decode(layout: &Layout, bytes: &[u8]) -> Promises {
        assert_eq!(bytes.len(), PROMISE_BYTES as usize);
        let r = RECORD_BYTES as usize;
        let first = record::decode(layout.min_proposal_record(0), &bytes[..r]);
        let second = record::decode(layout.min_proposal_record(1), &bytes[r..2 * r]);
        let standing = record::decode(layout.standing(), &bytes[2 * r..]).filter(|&b| b != 0);
        let (recorded, older) = match (first, second) {
            (Some(a), Some(b)) => (a.max(b), if a <= b { 0 } else { 1 }),
            (Some(a), None) => (a, 1),
            (None, Some(b)) => (b, 0),
            (None, None) => (0, 0),
        };
        // Planted defect: a restarted replica votes at once, with its empty log.
        let voter = standing.is_some() || cfg!(feature = "bug-restart-votes");
        let promises = Promises {
            highest: recorded.max(standing.unwrap_or(0)),
            older,
            pledged: recorded != 0,
            voter,
        };
        assert!(promises.older < 2);
        assert!(promises.highest >= recorded);
        promises
    }
}

/// What one replica's copy of the slot at the prepare position says.
enum SlotAnswer {
    /// A value accepted under `ballot`, whose chain is `chain`.
    Value {
        /// The ballot.
        ballot: u64,
        /// Its chain (a record verified against it).
        chain: u64,
    },
    /// Nothing was accepted there (never written, or an older lap).
    Nothing,
    /// A torn or malformed value, or a value with none of its three records intact: taken as
    /// nothing accepted (see `choose_value`).
    Unknown,
    /// A later lap: that replica recycled past this position.
    Ahead,
}

impl SlotAnswer {
    /// The answer of a copy of the slot at `position`, with the bytes of its adoption record
    /// and decided mark.
    fn of(
        opened: Result<Opened, SlotError>,
        (adoption, decided): (&[u8], &[u8]),
        position: u64,
    ) -> SlotAnswer {
        match opened {
            Ok(opened) => match slot::accepted_ballot(&opened, adoption, decided) {
                Some(ballot) => SlotAnswer::Value {
                    ballot,
                    chain: opened.chain,
                },
                None => SlotAnswer::Unknown,
            },
            Err(SlotError::Empty) => SlotAnswer::Nothing,
            Err(SlotError::Stale { found }) if found < position => SlotAnswer::Nothing,
            Err(SlotError::Stale { .. }) => SlotAnswer::Ahead,
            Err(SlotError::Torn | SlotError::Malformed | SlotError::Unvouched) => {
                SlotAnswer::Unknown
            }
        }
    }
}

impl<const SLOT: usize, const ENTRY: usize, const QUEUE: usize>
    Leading<'_, '_, SLOT, ENTRY, QUEUE>
{
    pub(super) fn complete_min_proposal_read<F: Fabric>(
        &mut self,
        peer: ReplicaId,
        fabric: &mut F,
    ) {
        let mut bytes = [0u8; PROMISE_BYTES as usize];
        fabric.load(self.log.layout.landing_promises(peer), &mut bytes);
        let promises = Promises::decode(&self.log.layout, &bytes);
        let value = promises.highest;
        let leader = &mut *self.t;
        leader.ballot_floor = leader.ballot_floor.max(value);
        leader.members[peer as usize].min_record = promises.older;
        leader.members[peer as usize].promises = promises;
        let member = &mut leader.members[peer as usize];
        let checking = member.state == MemberState::Checking;
        if checking {
            member.state = MemberState::Active;
        }
        if leader.phase == Phase::ReadMinProposal {
            leader.replies |= 1 << peer;
            return;
        }
        // An answer after the prepare moved on (a late joiner, or a slow reply).
        if value > leader.ballot {
            // A newer leader prepared on this member's log after this tenure's prepare.
            self.doom();
            return;
        }
        if promises.voter {
            leader.counted |= 1 << peer;
        }
    }

    /// This replica's own promises.
    fn own_promises<F: Fabric>(&self, fabric: &mut F) -> Promises {
        let mut bytes = [0u8; PROMISE_BYTES as usize];
        fabric.load(self.log.layout.min_proposal(), &mut bytes);
        Promises::decode(&self.log.layout, &bytes)
    }

    /// The voters among the members that answered the promise read.
    fn voter_replies(&self) -> u8 {
        let leader = &*self.t;
        let mut voters = 0;
        for peer in self.log.others() {
            if leader.replies & (1 << peer) != 0 && leader.members[peer as usize].promises.voter {
                voters |= 1 << peer;
            }
        }
        voters
    }

    /// The members of `members` that can take this tenure's writes. A lapped member gets none
    /// (lap notices only) until it installed a snapshot, and then not what the prepare planned
    /// for it (`resend_from`): a prepare that counted it towards its quorum could adopt a value
    /// that no quorum can then take, and wait out its deadline (simulator seed 13397: the
    /// ballot went to one member and two lapped ones while two others joined, unplanned).
    fn writable(&self, members: u8) -> u8 {
        let leader = &*self.t;
        let mut lapped = 0u8;
        for peer in self.log.others() {
            if leader.members[peer as usize].lapped {
                lapped |= 1 << peer;
            }
        }
        members & !lapped
    }

    /// Waits for a quorum of voters (this replica among them) that can take its writes to
    /// answer the promise read; with too few voters, for every replica (rule 4 of "Recovery").
    /// A quorum of voters that only lapped ones complete waits until they installed a snapshot
    /// (or more voters answer); it never turns into a prepare with every replica, which is for
    /// too few voters.
    pub(super) fn step_promises<F: Fabric>(&mut self, now: u64, late: bool, fabric: &mut F) {
        let voters = self.voter_replies();
        let everyone = self.everyone_else();
        let leader = &*self.t;
        if leader.voter && self.quorum_with(voters) {
            if self.quorum_with(self.writable(voters)) {
                self.write_min_proposal(now, voters, fabric);
            } else if late {
                self.doom();
            }
        } else if leader.replies == everyone {
            info!(
                "tenure {}: too few voters, preparing with every replica",
                leader.tenure
            );
            self.t.full = true;
            self.write_min_proposal(now, everyone, fabric);
        } else if late {
            self.doom();
        }
    }

    /// True when the answers of `members` (plus this replica) suffice for a prepare step: a
    /// quorum of members that can take this tenure's writes (`writable`), or every replica in
    /// a `full` prepare.
    pub(super) fn promised(&self, members: u8) -> bool {
        if self.t.full {
            return members == self.everyone_else();
        }
        self.quorum_with(self.writable(members))
    }

    /// A ballot above `floor`, above every ballot this replica promised, unique to this replica.
    /// `None` only if a peer published a promise at the very top of the ballot space, which
    /// no correct replica does; the tenure then ends instead of panicking.
    pub(super) fn next_ballot<F: Fabric>(&self, floor: u64, fabric: &mut F) -> Option<u64> {
        let own = self.own_promises(fabric).highest;
        let highest = floor.max(own).max(self.t.ballot);
        let ballot = (highest / 8 + 1)
            .checked_mul(8)?
            .checked_add(self.log.me as u64)?;
        assert!(ballot > highest && ballot % 8 == self.log.me as u64);
        Some(ballot)
    }

    /// Promises the new ballot locally and to every member that answered the read.
    /// Members of `to` are counted from now on (rule 2 of "Recovery").
    fn write_min_proposal<F: Fabric>(&mut self, now: u64, to: u8, fabric: &mut F) {
        let floor = self.t.ballot_floor;
        let Some(ballot) = self.next_ballot(floor, fabric) else {
            self.doom();
            return;
        };
        let own_offset = self
            .log
            .layout
            .min_proposal_record(self.own_promises(fabric).older);
        fabric.store(own_offset, &record::encode(own_offset, ballot));
        for which in 0..2 {
            let remote = self.log.layout.min_proposal_record(which);
            fabric.store(
                self.log.layout.outbox_min_proposal(which),
                &record::encode(remote, ballot),
            );
        }
        let deadline = now + self.timeout;
        let leader = &mut *self.t;
        leader.ballot = ballot;
        leader.counted = leader.replies;
        leader.phase = Phase::WriteMinProposal;
        leader.deadline = deadline;
        leader.prepared = 0;
        info!("tenure {} ballot {}", leader.tenure, ballot);
        for peer in self.log.others() {
            if to & (1 << peer) == 0 {
                continue;
            }
            let which = self.t.members[peer as usize].min_record;
            let local = self.log.layout.outbox_min_proposal(which);
            let remote = self.log.layout.min_proposal_record(which);
            if !self.post(
                now,
                fabric,
                peer,
                Kind::WriteMinProposal,
                0,
                (0, 0),
                local,
                remote,
                RECORD_BYTES,
            ) {
                self.reset_connection(now, peer, fabric);
            }
        }
    }

    /// Reads the slot at `position`, its adoption record and its decided mark from every
    /// prepared member.
    pub(super) fn read_slot<F: Fabric>(&mut self, now: u64, position: u64, fabric: &mut F) {
        let deadline = now + self.timeout;
        let leader = &mut *self.t;
        assert_eq!(
            position, leader.next,
            "the prepare reads where the leader writes next"
        );

        leader.phase = Phase::ReadSlot { position };
        leader.deadline = deadline;
        leader.replies = 0;
        leader.reads_done = [0; REPLICAS_MAX as usize];
        let prepared = leader.prepared;
        for peer in self.log.others() {
            if prepared & (1 << peer) == 0 || !self.is_active(peer) {
                continue;
            }
            let reads = [
                (
                    Kind::ReadSlot,
                    self.log.layout.landing_slot(peer),
                    self.log.layout.slot(position),
                    self.log.config.slot_size,
                ),
                (
                    Kind::ReadAdoption,
                    self.log.layout.landing_adoption(peer),
                    self.log.layout.adoption_record(position),
                    RECORD_BYTES,
                ),
                (
                    Kind::ReadDecided,
                    self.log.layout.landing_decided(peer),
                    self.log.layout.decided_mark(position),
                    RECORD_BYTES,
                ),
            ];
            const _: () = assert!(SLOT_READS == 3);
            for (kind, local, remote, len) in reads {
                let range = (position, position + 1);
                if !self.post(now, fabric, peer, kind, 0, range, local, remote, len) {
                    self.reset_connection(now, peer, fabric);
                    break;
                }
            }
        }
    }

    /// Picks the value with the highest accepted ballot among the slots read (this replica's
    /// own included) and adopts it; with none, the tenure moves to the fast path.
    ///
    /// A torn copy, or a copy with none of its three records intact, counts as "nothing
    /// accepted". That is safe because no write tears a copy of a decided value: every later
    /// write of its position carries the same value bytes (see `slot`), and no write overwrites
    /// the record holding a copy's highest ballot while it is the only one (`post_log_writes`,
    /// `adopt`), so a copy's reported ballot never goes down. A torn value is therefore one that
    /// was not decided, which a leader that crashed in the middle of a write leaves behind, and
    /// waiting for such copies to heal would stall the simplest fail-over forever.
    pub(super) fn choose_value<F: Fabric>(
        &mut self,
        now: u64,
        position: u64,
        late: bool,
        fabric: &mut F,
    ) {
        let size = self.log.config.slot_size as usize;
        // The highest ballot, its copy and that copy's chain.
        let mut best: Option<(u64, Option<ReplicaId>, u64)> = None;
        let (adoption, decided) = self.log.own_records(fabric, position);
        let own = self.log.open_local(fabric, position);
        let own_known = match SlotAnswer::of(own, (&adoption, &decided), position) {
            SlotAnswer::Value { ballot, chain } => {
                best = Some((ballot, None, chain));
                true
            }
            SlotAnswer::Nothing | SlotAnswer::Unknown => true,
            SlotAnswer::Ahead => false,
        };
        let replies = self.t.replies;
        for peer in self.log.others() {
            if replies & (1 << peer) == 0 {
                continue;
            }
            let (adoption, decided) = self.read_copy(peer, fabric);
            let opened = slot::open(&self.log.slot[..size], position);
            match SlotAnswer::of(opened, (&adoption, &decided), position) {
                SlotAnswer::Value { ballot, chain } => {
                    if best.is_none_or(|(b, _, _)| ballot > b) {
                        best = Some((ballot, Some(peer), chain));
                    }
                }
                SlotAnswer::Nothing | SlotAnswer::Unknown => {}
                SlotAnswer::Ahead => {
                    // A member recycled a position this leader has not applied: start over.
                    self.doom();
                    return;
                }
            }
        }
        if !own_known || !self.promised(replies) {
            if late {
                self.doom();
            }
            return;
        }
        match best {
            None => self.start_streaming(now, position, fabric),
            Some((_, source, chain)) => self.adopt(now, position, source, chain, fabric),
        }
    }

    /// The prepare found nothing accepted at `position`: the fast path starts there. A leader
    /// that prepared with every replica (rule 4 of "Recovery") applied everything below it and
    /// admits itself.
    fn start_streaming<F: Fabric>(&mut self, now: u64, position: u64, fabric: &mut F) {
        assert_eq!(
            position, self.log.applied,
            "the prepare applied what it adopted"
        );
        let leader = &mut *self.t;
        info!("tenure {} on the fast path at {}", leader.tenure, position);
        leader.phase = Phase::Streaming;
        leader.streaming_from = Some(position);
        // The stall deadline counts from here: a prepare that took longer than
        // `op_timeout_ticks` (its deadlines doubled) must not call the fast path stalled at
        // its first poll, which ended such tenures forever (simulator seed 2969).
        leader.progress_at = now;
        if !leader.voter {
            let offset = self.log.layout.standing();
            fabric.store(offset, &record::encode(offset, leader.ballot));
            leader.voter = true;
            info!("tenure {}: admitted itself", leader.tenure);
        }
    }

    /// Rewrites the chosen value (the copy at `source` whose records vouched for `chosen`) under
    /// this tenure's ballot into the own log, its adoption record included, and plans how each
    /// member whose copy the prepare read gets it (see `Adoption`); the others get it once it is
    /// decided, as a decided rewrite.
    fn adopt<F: Fabric>(
        &mut self,
        now: u64,
        position: u64,
        source: Option<ReplicaId>,
        chosen: u64,
        fabric: &mut F,
    ) {
        let size = self.log.config.slot_size as usize;
        let from = match source {
            Some(peer) => self.log.layout.landing_slot(peer),
            None => self.log.layout.slot(position),
        };
        fabric.load(from, &mut self.log.slot[..size]);
        let opened = match slot::open(&self.log.slot[..size], position) {
            Ok(opened) if opened.chain == chosen => opened,
            // Changed under us; cannot happen while this replica holds the grants.
            _ => {
                self.doom();
                return;
            }
        };
        let applied = self.log.applied;
        let deadline = now + self.timeout;
        let leader = &mut *self.t;
        // A decided value keeps its value bytes: its chain_prev is the decided prefix's chain,
        // which this leader applied. Only an undecided value may change (and tear) here.
        let adopted = SlotHeader {
            chain_prev: leader.next_chain,
            ..opened.header
        };
        let acceptance = Acceptance {
            ballot: leader.ballot,
            commit: applied,
        };
        let mut sealed = [0u8; SLOT_HEADER_BYTES as usize];
        let chain = adopted.seal_body(opened.body, acceptance, &mut sealed);
        debug_assert!(adopted.chain_prev != opened.header.chain_prev || chain == opened.chain);
        self.log.slot[..SLOT_HEADER_BYTES as usize].copy_from_slice(&sealed);
        fabric.store(self.log.layout.slot(position), &self.log.slot[..size]);
        if MARKED_REWRITES {
            let record = self.log.layout.adoption_record(position);
            fabric.store(record, &slot::encode_adoption(chain, acceptance.ballot));
        }
        leader.next = position + 1;
        leader.next_chain = chain;
        leader.acks[(position % ACK_WINDOW as u64) as usize] = 1 << self.log.me;
        leader.phase = Phase::Adopting { position };
        leader.deadline = deadline;
        debug!("adopted position {}", position);
        self.plan_adoption(position, chain, fabric);
    }

    /// Loads what the prepare read of `peer`'s copy of the slot it reads: the slot into the
    /// scratch slot; returns its adoption record and decided mark.
    fn read_copy<F: Fabric>(
        &mut self,
        peer: ReplicaId,
        fabric: &mut F,
    ) -> ([u8; RECORD_BYTES as usize], [u8; RECORD_BYTES as usize]) {
        let size = self.log.config.slot_size as usize;
        let layout = &self.log.layout;
        let mut adoption = [0u8; RECORD_BYTES as usize];
        let mut decided = [0u8; RECORD_BYTES as usize];
        fabric.load(layout.landing_slot(peer), &mut self.log.slot[..size]);
        fabric.load(layout.landing_adoption(peer), &mut adoption);
        fabric.load(layout.landing_decided(peer), &mut decided);
        (adoption, decided)
    }

    /// Plans, for every member whose copy of `position` the prepare read, how the value adopted
    /// there (whose chain is `chain`) goes to it: the write that leaves the record holding the
    /// copy's highest ballot alone (see `Adoption`).
    fn plan_adoption<F: Fabric>(&mut self, position: u64, chain: u64, fabric: &mut F) {
        let size = self.log.config.slot_size as usize;
        let replies = self.t.replies;
        for peer in self.log.others() {
            if replies & (1 << peer) == 0 {
                continue;
            }
            let (adoption, decided) = self.read_copy(peer, fabric);
            let plan = match slot::open(&self.log.slot[..size], position) {
                _ if !MARKED_REWRITES => Adoption::Slot,
                Ok(copy) if copy.chain == chain && slot::is_decided(chain, &decided) => {
                    Adoption::Held
                }
                Ok(copy) if copy.chain == chain => {
                    let in_slot = copy.accepted.map(|a| a.ballot);
                    match (in_slot, slot::decode_adoption(chain, &adoption)) {
                        (Some(a), b) if b.is_none_or(|b| a >= b) => Adoption::Record,
                        _ => Adoption::Slot,
                    }
                }
                _ => Adoption::Slot,
            };
            self.t.members[peer as usize].adoption = Some((position, plan));
        }
    }

    /// Sends `peer` the value adopted at the position it is due next, as planned; a member
    /// without a plan for it gets it once it is decided.
    pub(super) fn post_adoption<F: Fabric>(&mut self, now: u64, peer: ReplicaId, fabric: &mut F) {
        let member = self.t.members[peer as usize];
        let Some((position, plan)) = member.adoption else {
            return;
        };
        if position != member.sent {
            return;
        }
        assert!(
            position >= self.log.applied,
            "an adoption under way is undecided"
        );
        let range = (position, position + 1);
        let posted = match plan {
            Adoption::Held => {
                self.ack_range(peer, position, position + 1);
                true
            }
            Adoption::Record => {
                let offset = self.log.layout.adoption_record(position);
                let (kind, tag) = (Kind::WriteAdoption, position as u32);
                self.post(
                    now,
                    fabric,
                    peer,
                    kind,
                    tag,
                    range,
                    offset,
                    offset,
                    RECORD_BYTES,
                )
            }
            Adoption::Slot => {
                let (offset, len) = (self.log.layout.slot(position), self.log.config.slot_size);
                let (kind, tag) = (Kind::WriteLog, position as u32);
                self.post(now, fabric, peer, kind, tag, range, offset, offset, len)
            }
        };
        if posted {
            let member = &mut self.t.members[peer as usize];
            member.sent = position + 1;
            member.fence_from(position + 1);
            member.adoption = None;
        }
    }
}
