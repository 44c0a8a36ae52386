//! State transfer: a replica that needs positions no log holds any more (it restarted after the
//! log wrapped, or fell a lap behind) installs a snapshot of another replica's state machine and
//! continues from the log at the snapshot's position.
//!
//! The joiner pulls, with one-sided reads, and the donor only ever stores into its own region:
//! - Joiner: reads every peer's applied position and picks the donor (the most advanced
//!   follower within half a lap of the most advanced peer, else the most advanced peer), writes
//!   a transfer request (its nonce, the next chunk it wants) into the donor's background area
//!   (through its background plane: the joiner holds no grant of the donor's, rule 5 of the
//!   fabric contract), and reads the donor's
//!   offer (position `S`, chain through `S - 1`, length, state digest, owner and nonce) until it
//!   names this request. It then reads the donor's progress record and the chunks produced so
//!   far from the donor's window, checks each, installs them in order into its state machine,
//!   and moves its request on. At the end the state machine's digest must be the offer's; the
//!   replica's applied position becomes `S` and its chain the offer's, and the log continues.
//! - Donor: serves one request at a time, from its replication plane, whatever its role. At a
//!   new request it freezes a snapshot of its state machine at its last command boundary: its
//!   applied position, or the first fragment of a command it has half applied. The application
//!   keeps that copy while it goes on applying. It publishes the offer and fills chunk
//!   `k` into window slot `k mod W` only once the joiner wants chunk `k - W + 1` or later, one
//!   chunk per poll. It drops the snapshot when the joiner took every chunk, asks again under
//!   another nonce, or makes no progress for `PATIENCE_TIMEOUTS` operation timeouts.
//!
//! A joiner is no candidate for leadership while it transfers (`Shared::catching_up`), and the
//! leader treats it as lapped: no log writes, and it never holds recycling back. A transfer
//! outlives a leader change (the leader plays no part), a donor crash (the joiner's deadline
//! passes and it starts over, surveying again) and the joiner's own crash (its new life asks
//! under a new nonce; the donor drops the old snapshot).
//!
//! # Invariants
//! - The joiner installs a chunk only if its checksum binds it to the offer it installs:
//!   position, chain, owner and nonce, index and length. So a chunk of another snapshot (the
//!   donor serving someone else, an earlier snapshot left in a slot) or a torn chunk is never
//!   installed, and what is installed is exactly the donor's state at `S`, which is the decided
//!   prefix `[0, S)` applied: the chain continues from the offer's.
//! - The donor overwrites slot `k mod W` only when the joiner no longer needs chunk `k - W`.
//! - Work per poll is bounded: one chunk produced, `INSTALLS_PER_POLL` chunks installed, one
//!   survey read per peer, and reads of at most `W` chunks outstanding.

use crate::config::REPLICAS_MAX;
use crate::fabric::{Fabric, ReplicaId, Status};
use crate::hash::Hasher;
use crate::layout::{CHUNK_HEADER_BYTES, OFFER_BYTES, RECORD_BYTES};
use crate::links::Pending;
use crate::record;
use crate::replication::{Halt, ReplicationPlane};
use crate::state_machine::StateMachine;
use crate::wrid::Kind;

/// Operation timeouts a donor waits for a joiner to move on before it drops the snapshot, and a
/// joiner waits for the next chunk before it starts over.
const PATIENCE_TIMEOUTS: u64 = 4;
/// Chunks a joiner installs per poll.
const INSTALLS_PER_POLL: u32 = 2;
/// The tag of a survey read of a peer's applied position.
const TAG_TRANSFER: u32 = 3;

const OFFER_DOMAIN: u64 = 0x004F_4646_4552; // "OFFER"
const CHUNK_DOMAIN: u64 = 0x0043_4855_4E4B; // "CHUNK"

/// What a donor offers: a snapshot of its state machine after applying `[0, position)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Offer {
    owner: ReplicaId,
    nonce: u32,
    position: u64,
    chain: u64,
    bytes: u64,
    digest: u64,
}

impl Offer {
    fn owner_word(&self) -> u64 {
        ((self.owner as u64) << 32) | self.nonce as u64
    }

    fn check(&self, offset: u32) -> u64 {
        Hasher::new(OFFER_DOMAIN)
            .word(offset as u64)
            .word(self.owner_word())
            .word(self.position)
            .word(self.chain)
            .word(self.bytes)
            .word(self.digest)
            .finish()
    }

    fn encode(&self, offset: u32) -> [u8; OFFER_BYTES as usize] {
        let mut out = [0u8; OFFER_BYTES as usize];
        let words = [
            self.owner_word(),
            self.position,
            self.chain,
            self.bytes,
            self.digest,
            self.check(offset),
        ];
        for (at, word) in words.iter().enumerate() {
            out[at * 8..at * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
        debug_assert_eq!(Offer::decode(offset, &out), Some(*self));
        out
    }

    fn decode(offset: u32, bytes: &[u8]) -> Option<Offer> {
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(bytes.get(at * 8..at * 8 + 8)?);
            Some(u64::from_le_bytes(w))
        };
        let owner_word = word(0)?;
        let offer = Offer {
            owner: (owner_word >> 32) as u8,
            nonce: owner_word as u32,
            position: word(1)?,
            chain: word(2)?,
            bytes: word(3)?,
            digest: word(4)?,
        };
        (offer.nonce != 0 && word(5)? == offer.check(offset)).then_some(offer)
    }

    /// Chunks of `chunk_bytes` the snapshot takes (at least one, so that an empty state
    /// still transfers its position).
    fn chunks(&self, chunk_bytes: u32) -> u64 {
        self.bytes.div_ceil(chunk_bytes as u64).max(1)
    }

    /// Bytes of chunk `index`.
    fn chunk_len(&self, index: u64, chunk_bytes: u32) -> u32 {
        let start = index * chunk_bytes as u64;
        self.bytes.saturating_sub(start).min(chunk_bytes as u64) as u32
    }

    /// The checksum of chunk `index` starts here; the data follows in whole words.
    fn chunk_sum(&self, index: u64, len: u32) -> Hasher {
        Hasher::new(CHUNK_DOMAIN)
            .word(self.position)
            .word(self.chain)
            .word(self.owner_word())
            .word(index)
            .word(len as u64)
    }
}

/// Mixes `bytes` into a chunk checksum as little-endian words; only the last piece of a chunk
/// may end in a partial word (zero-padded), so any split into pieces hashes the same.
fn mix(mut hasher: Hasher, bytes: &[u8]) -> Hasher {
    let mut words = bytes.chunks(8);
    for chunk in &mut words {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hasher = hasher.word(u64::from_le_bytes(word));
    }
    hasher
}

/// A chunk of `len` bytes as pieces of at most `piece` bytes: (offset in the chunk, length).
fn pieces(len: u32, piece: u32) -> impl Iterator<Item = (u32, u32)> {
    assert!(piece > 0);
    (0..len.div_ceil(piece)).map(move |k| (k * piece, piece.min(len - k * piece)))
}

/// The transfer request record: the joiner's nonce and the next chunk it wants.
fn request_value(nonce: u32, wanted: u64) -> u64 {
    let value = ((nonce as u64) << 32) | wanted.min(u32::MAX as u64);
    debug_assert_eq!(request_parts(value), (nonce, wanted.min(u32::MAX as u64)));
    value
}

fn request_parts(value: u64) -> (u32, u64) {
    ((value >> 32) as u32, value & u32::MAX as u64)
}

/// Where a replica's state transfer stands, for runtimes and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TransferStatus {
    /// The attempt's nonce (a new one at every start over).
    pub nonce: u32,
    /// Attempts started by this life of the replica.
    pub attempts: u32,
    /// The donor asked, once chosen.
    pub donor: Option<ReplicaId>,
    /// The position the snapshot covers, once offered.
    pub position: u64,
    /// Its length in bytes, once offered.
    pub bytes: u64,
    /// Bytes installed so far.
    pub installed: u64,
    /// Chunks the donor said it produced, and chunks checked and waiting to be installed.
    pub produced: u64,
}

/// A snapshot being served.
#[derive(Clone, Copy, Debug)]
struct Serving {
    offer: Offer,
    produced: u64,
    wanted: u64,
    moved_at: u64,
}

/// The donor side of this replica.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Donor {
    serving: Option<Serving>,
    /// Per joiner, the last nonce served, refused or dropped: never served again.
    done: [u32; REPLICAS_MAX as usize],
    scan_at: u64,
}

impl Donor {
    pub(crate) const NEW: Donor = Donor {
        serving: None,
        done: [0; REPLICAS_MAX as usize],
        scan_at: 0,
    };

    /// The joiner being served, if any.
    pub(crate) fn joiner(&self) -> Option<ReplicaId> {
        self.serving.map(|s| s.offer.owner)
    }

    /// True when there is nothing to serve at `now`: nobody is being served, and the next look
    /// for new requests is not due.
    #[inline(always)]
    pub(crate) fn idle(&self, now: u64) -> bool {
        self.serving.is_none() && now < self.scan_at
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Reading every peer's applied position (since `since`).
    Survey { answered: u8, since: u64 },
    /// Asked `donor`; reading its offer until it names this request.
    Ask { donor: ReplicaId, reading: bool },
    /// Installing `offer` from `donor`: chunks below `next` are installed.
    Fetch {
        donor: ReplicaId,
        offer: Offer,
        next: u64,
        /// Chunks the donor said it produced.
        produced: u64,
        reading_progress: bool,
        /// Window slots with a read outstanding, and slots holding a checked chunk.
        inflight: u32,
        ready: u32,
    },
}

/// The joiner side of this replica, while it transfers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Join {
    step: Step,
    /// The lowest position the log still holds, as far as known: the snapshot must reach it.
    floor: u64,
    nonce: u32,
    /// Starts over when nothing moved by then.
    deadline: u64,
    /// The request value for the donor, and the last one handed to the background plane.
    request: u64,
    published: u64,
}

impl<const SLOT: usize, const ENTRY: usize, const QUEUE: usize>
    ReplicationPlane<'_, SLOT, ENTRY, QUEUE>
{
    /// Where this replica's state transfer stands, while it installs a snapshot.
    pub fn transfer_status(&self) -> Option<TransferStatus> {
        let join = self.transfer?;
        let chunk_bytes = self.log.config.transfer_chunk_bytes as u64;
        let mut status = TransferStatus {
            nonce: join.nonce,
            attempts: self.attempts,
            donor: None,
            position: 0,
            bytes: 0,
            installed: 0,
            produced: 0,
        };
        match join.step {
            Step::Survey { .. } => {}
            Step::Ask { donor, .. } => status.donor = Some(donor),
            Step::Fetch {
                donor,
                offer,
                next,
                produced,
                ..
            } => {
                status.donor = Some(donor);
                status.position = offer.position;
                status.bytes = offer.bytes;
                status.installed = (next * chunk_bytes).min(offer.bytes);
                status.produced = produced;
            }
        }
        Some(status)
    }

    fn patience(&self) -> u64 {
        PATIENCE_TIMEOUTS * self.log.config.op_timeout_ticks as u64
    }

    fn window(&self) -> u64 {
        self.log.config.transfer_window as u64
    }

    /// Chunks move through the slot buffer in pieces of whole 64-byte blocks (so that every
    /// piece but a chunk's last holds whole words for the checksum).
    fn piece_bytes(&self) -> u32 {
        let piece = self.log.slot.len() as u32 & !63;
        assert!(
            piece >= 64,
            "the slot buffer holds at least one slot of 64 bytes"
        );
        piece
    }

    // ---- joiner ------------------------------------------------------------------------------

    /// This replica needs positions from `floor` on that no log may hold: it transfers a
    /// snapshot instead (a leader first gives up its tenure).
    pub(crate) fn start_transfer<F: Fabric>(&mut self, now: u64, floor: u64, fabric: &mut F) {
        if self.transfer.is_some() {
            return;
        }
        if self.tenure().is_some() {
            self.abort(fabric);
        }
        self.attempts = self.attempts.wrapping_add(1);
        // Unique per life and attempt, never 0 (0 is "no request").
        let nonce = (self.incarnation << 16) ^ (self.attempts & 0xFFFF) | 1 << 31;
        info!(
            "transfer {}: position {} is needed, applied {}",
            nonce, floor, self.log.applied
        );
        self.shared.set_catching_up(true);
        self.transfer = Some(Join {
            step: Step::Survey {
                answered: 0,
                since: now,
            },
            floor: floor.max(self.log.applied + 1),
            nonce,
            deadline: now + self.patience(),
            request: 0,
            published: 0,
        });
        self.survey_donors(now, fabric);
    }

    fn survey_donors<F: Fabric>(&mut self, now: u64, fabric: &mut F) {
        for peer in self.log.others() {
            let (local, remote) = (
                self.log.layout.landing_applied(peer),
                self.log.layout.applied(),
            );
            self.post(
                now,
                fabric,
                peer,
                Kind::ReadApplied,
                TAG_TRANSFER,
                (0, 0),
                local,
                remote,
                RECORD_BYTES,
            );
        }
    }

    /// Gives up this attempt: a new one starts with another nonce (and perhaps another donor).
    fn restart_transfer<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        fabric: &mut F,
        sm: &mut S,
    ) {
        let Some(join) = self.transfer.take() else {
            return;
        };
        warn!("transfer {} starts over", join.nonce);
        if let Step::Ask { donor, .. } | Step::Fetch { donor, .. } = join.step {
            self.drop_connection(donor, fabric); // Nothing of this attempt lands later.
        }
        sm.install_abandon();
        self.start_transfer(now, join.floor, fabric);
    }

    /// One bounded step of the joiner's work.
    pub(crate) fn step_transfer<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        fabric: &mut F,
        sm: &mut S,
    ) {
        let Some(join) = self.transfer else { return };
        if now > join.deadline {
            self.restart_transfer(now, fabric, sm);
            return;
        }
        // An operation that never completes (a peer that died) would hold its connection.
        self.expire_operations(now, fabric);
        match join.step {
            Step::Survey { answered, since } => self.choose_donor(now, answered, since, fabric),
            Step::Ask { donor, reading } if !reading => self.read_offer(now, donor, fabric),
            Step::Ask { .. } => {}
            Step::Fetch { .. } => self.fetch(now, fabric, sm),
        }
        self.send_request();
    }

    /// Once every live peer answered the survey (or a read timeout passed), asks a peer that
    /// holds at least the floor: the most advanced follower within half a lap of the most
    /// advanced peer, else the most advanced peer.
    fn choose_donor<F: Fabric>(&mut self, now: u64, answered: u8, since: u64, fabric: &mut F) {
        let join = self.transfer.expect("transferring");
        let alive = self.shared.alive() & !(1 << self.log.me);
        let waited = now.saturating_sub(since) > self.log.config.op_timeout_ticks as u64;
        if answered & alive != alive && !waited {
            return;
        }
        let leader = self.shared.leader();
        let holds = |peer: ReplicaId| {
            answered & (1 << peer) != 0 && self.survey_applied[peer as usize] >= join.floor
        };
        let ahead = self
            .log
            .others()
            .filter(|&p| holds(p))
            .map(|p| self.survey_applied[p as usize])
            .max()
            .unwrap_or(0);
        // A follower at most half a lap behind the most advanced peer serves as well (the logs
        // still hold half a lap after its snapshot) and keeps the donor's work off the leader,
        // whose polls are the commit path.
        let near = |peer: ReplicaId| {
            self.survey_applied[peer as usize] + self.log.config.slot_count as u64 / 2 >= ahead
        };
        let donor = self.log.others().filter(|&p| holds(p)).max_by_key(|&p| {
            let follower = leader != Some(p) && near(p);
            (follower, self.survey_applied[p as usize])
        });
        let Some(donor) = donor else {
            if waited {
                // Nobody holds what this replica needs yet: survey again (the attempt's
                // deadline stands).
                let join = self.transfer.as_mut().expect("transferring");
                join.step = Step::Survey {
                    answered: 0,
                    since: now,
                };
                self.survey_donors(now, fabric);
            }
            return;
        };
        info!("transfer {}: asking replica {}", join.nonce, donor);
        let join = self.transfer.as_mut().expect("transferring");
        join.step = Step::Ask {
            donor,
            reading: false,
        };
        join.request = request_value(join.nonce, 0);
    }

    fn read_offer<F: Fabric>(&mut self, now: u64, donor: ReplicaId, fabric: &mut F) {
        let (local, remote) = (self.log.layout.landing_offer(), self.log.layout.offer());
        if self.post(
            now,
            fabric,
            donor,
            Kind::ReadOffer,
            0,
            (0, 0),
            local,
            remote,
            OFFER_BYTES,
        ) {
            if let Some(Join {
                step: Step::Ask { reading, .. },
                ..
            }) = &mut self.transfer
            {
                *reading = true;
            }
        }
    }

    /// Hands the request to the background plane when its value changed (it writes the latest
    /// one into the donor's background area, again until it lands).
    fn send_request(&mut self) {
        let Some(join) = self.transfer.as_mut() else {
            return;
        };
        let donor = match join.step {
            Step::Ask { donor, .. } | Step::Fetch { donor, .. } => donor,
            Step::Survey { .. } => return,
        };
        if join.request != join.published {
            self.shared.publish_transfer_request(donor, join.request);
            join.published = join.request;
        }
    }

    /// Reads progress and chunks, and installs the chunks that are in, in order.
    fn fetch<F: Fabric, S: StateMachine>(&mut self, now: u64, fabric: &mut F, sm: &mut S) {
        for _ in 0..INSTALLS_PER_POLL {
            if !self.install_next(now, fabric, sm) {
                break;
            }
        }
        let Some(Join {
            step:
                Step::Fetch {
                    donor,
                    next,
                    produced,
                    reading_progress,
                    inflight,
                    ready,
                    ..
                },
            ..
        }) = self.transfer
        else {
            return;
        };
        let window = self.window();
        let mut requested = 0u32;
        for index in next..produced.min(next + window) {
            let slot = (index % window) as u32;
            if (inflight | ready) & (1 << slot) != 0 {
                continue;
            }
            let (local, remote) = (
                self.log.layout.landing_chunk(slot),
                self.log.layout.chunk(slot),
            );
            let len = CHUNK_HEADER_BYTES + self.log.config.transfer_chunk_bytes;
            if !self.post(
                now,
                fabric,
                donor,
                Kind::ReadChunk,
                index as u32,
                (index, 0),
                local,
                remote,
                len,
            ) {
                break;
            }
            requested |= 1 << slot;
        }
        let wants_progress = produced < (next + window) && !reading_progress;
        let mut progress_posted = false;
        if wants_progress {
            let (local, remote) = (
                self.log.layout.landing_progress(),
                self.log.layout.progress(),
            );
            progress_posted = self.post(
                now,
                fabric,
                donor,
                Kind::ReadProgress,
                0,
                (0, 0),
                local,
                remote,
                RECORD_BYTES,
            );
        }
        if let Some(Join {
            step:
                Step::Fetch {
                    inflight,
                    reading_progress,
                    ..
                },
            ..
        }) = &mut self.transfer
        {
            *inflight |= requested;
            *reading_progress |= progress_posted;
        }
    }

    /// Installs chunk `next` if it is in; true when it did.
    fn install_next<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        fabric: &mut F,
        sm: &mut S,
    ) -> bool {
        let Some(Join {
            step: Step::Fetch {
                offer, next, ready, ..
            },
            ..
        }) = self.transfer
        else {
            return false;
        };
        let chunk_bytes = self.log.config.transfer_chunk_bytes;
        let total = offer.chunks(chunk_bytes);
        if next == total {
            self.finish_transfer(now, offer, fabric, sm);
            return false;
        }
        let slot = (next % self.window()) as u32;
        if ready & (1 << slot) == 0 {
            return false;
        }
        let data = self.log.layout.landing_chunk(slot) + CHUNK_HEADER_BYTES;
        let len = offer.chunk_len(next, chunk_bytes);
        for (done, take) in pieces(len, self.piece_bytes()) {
            let buf = &mut self.log.slot[..take as usize];
            fabric.load(data + done, buf);
            sm.install_write(next * chunk_bytes as u64 + done as u64, buf);
        }
        let patience = self.patience();
        let join = self.transfer.as_mut().expect("transferring");
        if let Step::Fetch { next, ready, .. } = &mut join.step {
            *ready &= !(1 << slot);
            *next += 1;
            join.request = request_value(join.nonce, *next);
        }
        join.deadline = now + patience;
        true
    }

    fn finish_transfer<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        offer: Offer,
        fabric: &mut F,
        sm: &mut S,
    ) {
        let digest = sm.install_end();
        let checked = !cfg!(feature = "bug-unchecked-snapshot");
        if checked && offer.digest != 0 && digest != offer.digest {
            warn!(
                "transfer {}: the installed state's digest differs",
                offer.nonce
            );
            self.restart_transfer(now, fabric, sm);
            return;
        }
        info!(
            "transfer {}: installed position {}",
            offer.nonce, offer.position
        );
        self.install_position(offer.position, offer.chain);
        // Commands this replica queued while it led may be among the positions the snapshot
        // covers, which it never applies: their outcome is unknown here (and proposing them
        // again could decide them twice).
        self.log.queue.drain(|ticket| sm.dropped(ticket));
        // Tell the donor it is done (best effort: it drops the snapshot after its patience
        // anyway), so that it serves the next joiner at once.
        let join = self.transfer.as_mut().expect("transferring");
        join.request = request_value(
            join.nonce,
            offer.chunks(self.log.config.transfer_chunk_bytes),
        );
        self.send_request();
        self.transfer = None;
        self.shared.set_catching_up(false);
    }

    /// A checked chunk, a progress record or an offer arrived (or failed).
    pub(crate) fn complete_transfer<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        peer: ReplicaId,
        pending: Pending,
        status: Status,
        fabric: &mut F,
        sm: &mut S,
    ) {
        let Some(join) = self.transfer else { return };
        if status != Status::Ok {
            if matches!(join.step, Step::Survey { .. }) {
                return; // A dead peer does not answer the survey; the others may.
            }
            self.restart_transfer(now, fabric, sm);
            return;
        }
        match (pending.kind, join.step) {
            (Kind::ReadApplied, Step::Survey { answered, since }) => {
                let mut bytes = [0u8; RECORD_BYTES as usize];
                fabric.load(self.log.layout.landing_applied(peer), &mut bytes);
                if let Some(applied) = record::decode(self.log.layout.applied(), &bytes) {
                    self.survey_applied[peer as usize] = applied;
                    let join = self.transfer.as_mut().expect("transferring");
                    join.step = Step::Survey {
                        answered: answered | 1 << peer,
                        since,
                    };
                }
            }
            (Kind::ReadOffer, Step::Ask { donor, .. }) if donor == peer => {
                self.take_offer(now, donor, fabric, sm)
            }
            (Kind::ReadProgress, Step::Fetch { donor, offer, .. }) if donor == peer => {
                let mut bytes = [0u8; RECORD_BYTES as usize];
                fabric.load(self.log.layout.landing_progress(), &mut bytes);
                let value = record::decode(self.log.layout.progress(), &bytes);
                if let Some(Join {
                    step:
                        Step::Fetch {
                            produced,
                            reading_progress,
                            ..
                        },
                    ..
                }) = &mut self.transfer
                {
                    *reading_progress = false;
                    if let Some((nonce, count)) = value.map(request_parts) {
                        if nonce == offer.nonce || cfg!(feature = "bug-unchecked-snapshot") {
                            *produced = (*produced).max(count);
                        }
                    }
                }
            }
            (
                Kind::ReadChunk,
                Step::Fetch {
                    donor, offer, next, ..
                },
            ) if donor == peer => {
                let index = pending.start;
                let slot = (index % self.window()) as u32;
                let ok = index >= next && self.chunk_checks(offer, index, slot, fabric);
                if let Some(Join {
                    step:
                        Step::Fetch {
                            inflight,
                            ready,
                            produced,
                            ..
                        },
                    ..
                }) = &mut self.transfer
                {
                    *inflight &= !(1 << slot);
                    if ok {
                        *ready |= 1 << slot;
                    } else {
                        // Not produced yet after all (or torn): read the progress again first.
                        *produced = (*produced).min(index);
                    }
                }
            }
            _ => {}
        }
    }

    /// The offer names this request: install from it.
    fn take_offer<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        donor: ReplicaId,
        fabric: &mut F,
        sm: &mut S,
    ) {
        let mut bytes = [0u8; OFFER_BYTES as usize];
        fabric.load(self.log.layout.landing_offer(), &mut bytes);
        let join = self.transfer.expect("transferring");
        let offer = Offer::decode(self.log.layout.offer(), &bytes);
        // Planted defect: take whatever the donor offers, to whomever.
        let mine = |o: &Offer| {
            (o.owner == self.log.me && o.nonce == join.nonce)
                || cfg!(feature = "bug-unchecked-snapshot")
        };
        let Some(offer) = offer.filter(mine) else {
            if let Some(Join {
                step: Step::Ask { reading, .. },
                ..
            }) = &mut self.transfer
            {
                *reading = false; // Not served yet: read again.
            }
            return;
        };
        if offer.position < join.floor {
            self.restart_transfer(now, fabric, sm);
            return;
        }
        if !sm.install_begin(offer.position, offer.bytes) {
            warn!("the application cannot install a snapshot");
            self.transfer = None;
            self.shared.set_catching_up(false);
            self.halt(Halt::Lapped, fabric);
            return;
        }
        info!(
            "transfer {}: {} bytes at position {} from replica {}",
            join.nonce, offer.bytes, offer.position, donor
        );
        let patience = self.patience();
        let join = self.transfer.as_mut().expect("transferring");
        join.step = Step::Fetch {
            donor,
            offer,
            next: 0,
            produced: 0,
            reading_progress: false,
            inflight: 0,
            ready: 0,
        };
        join.deadline = now + patience;
    }

    /// True when the chunk in landing slot `slot` is chunk `index` of `offer`, whole.
    fn chunk_checks<F: Fabric>(
        &mut self,
        offer: Offer,
        index: u64,
        slot: u32,
        fabric: &mut F,
    ) -> bool {
        let at = self.log.layout.landing_chunk(slot);
        let mut header = [0u8; 24];
        fabric.load(at, &mut header);
        let word =
            |k: usize| u64::from_le_bytes(header[k * 8..k * 8 + 8].try_into().unwrap_or([0; 8]));
        let len = offer.chunk_len(index, self.log.config.transfer_chunk_bytes);
        // Planted defect: take a chunk without checking that it belongs to the offer.
        if cfg!(feature = "bug-unchecked-snapshot") {
            return true;
        }
        if word(0) != index || word(1) != len as u64 {
            return false;
        }
        let mut sum = offer.chunk_sum(index, len);
        for (done, take) in pieces(len, self.piece_bytes()) {
            let buf = &mut self.log.slot[..take as usize];
            fabric.load(at + CHUNK_HEADER_BYTES + done, buf);
            sum = mix(sum, buf);
        }
        word(2) == sum.finish()
    }

    // ---- donor -------------------------------------------------------------------------------

    /// Serves transfer requests: at most one chunk per poll; looks for new requests every
    /// `recycle_period_ticks` while idle.
    pub(crate) fn serve_transfers<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        fabric: &mut F,
        sm: &mut S,
    ) {
        if self.donor.idle(now) {
            return;
        }
        self.donor.scan_at = now + self.log.config.recycle_period_ticks as u64;
        if let Some(serving) = self.donor.serving {
            // A request being rewritten reads torn: the last one read stands meanwhile.
            let (nonce, wanted) = self
                .request_of(serving.offer.owner, fabric)
                .unwrap_or((serving.offer.nonce, serving.wanted));
            let chunks = serving.offer.chunks(self.log.config.transfer_chunk_bytes);
            let stale = now.saturating_sub(serving.moved_at) > self.patience();
            if nonce != serving.offer.nonce || wanted >= chunks || stale {
                self.stop_serving(sm);
            } else {
                self.produce(now, wanted, fabric, sm);
                return;
            }
        }
        if self.transfer.is_some() {
            return; // A replica that needs a snapshot has none to give.
        }
        for joiner in self.log.others() {
            let (nonce, _) = self.request_of(joiner, fabric).unwrap_or((0, 0));
            if nonce != 0 && nonce != self.donor.done[joiner as usize] {
                self.begin_serving(now, joiner, nonce, fabric, sm);
                return;
            }
        }
    }

    /// `joiner`'s request (nonce, next chunk wanted); `None` while it reads torn.
    fn request_of<F: Fabric>(&self, joiner: ReplicaId, fabric: &mut F) -> Option<(u32, u64)> {
        let offset = self.log.layout.transfer_request(joiner);
        let mut bytes = [0u8; RECORD_BYTES as usize];
        fabric.load(offset, &mut bytes);
        record::decode(offset, &bytes).map(request_parts)
    }

    fn begin_serving<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        joiner: ReplicaId,
        nonce: u32,
        fabric: &mut F,
        sm: &mut S,
    ) {
        self.donor.done[joiner as usize] = nonce;
        let (position, chain) = self.log.boundary();
        let Some(snapshot) = sm.snapshot_begin(position) else {
            return; // This application keeps no snapshots: the joiner asks someone else.
        };
        let offer = Offer {
            owner: joiner,
            nonce,
            position,
            chain,
            bytes: snapshot.bytes,
            digest: snapshot.digest,
        };
        info!(
            "serving replica {}: {} bytes at position {}",
            joiner, offer.bytes, offer.position
        );
        let offset = self.log.layout.offer();
        fabric.store(offset, &offer.encode(offset));
        self.store_progress(nonce, 0, fabric);
        self.donor.serving = Some(Serving {
            offer,
            produced: 0,
            wanted: 0,
            moved_at: now,
        });
    }

    fn stop_serving<S: StateMachine>(&mut self, sm: &mut S) {
        if self.donor.serving.take().is_some() {
            sm.snapshot_end();
        }
    }

    fn store_progress<F: Fabric>(&mut self, nonce: u32, produced: u64, fabric: &mut F) {
        let offset = self.log.layout.progress();
        fabric.store(
            offset,
            &record::encode(offset, request_value(nonce, produced)),
        );
    }

    /// Fills the next chunk into the window if the joiner is done with the chunk it replaces.
    fn produce<F: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        wanted: u64,
        fabric: &mut F,
        sm: &mut S,
    ) {
        let Some(mut serving) = self.donor.serving else {
            return;
        };
        if wanted > serving.wanted {
            serving.wanted = wanted;
            serving.moved_at = now;
        }
        let chunk_bytes = self.log.config.transfer_chunk_bytes;
        let index = serving.produced;
        if index < serving.offer.chunks(chunk_bytes) && index < serving.wanted + self.window() {
            // The chunk this slot held is one the joiner no longer needs.
            assert!(index < self.window() || index - self.window() < serving.wanted);
            let slot = (index % self.window()) as u32;
            let at = self.log.layout.chunk(slot);
            let len = serving.offer.chunk_len(index, chunk_bytes);
            let mut sum = serving.offer.chunk_sum(index, len);
            for (done, take) in pieces(len, self.piece_bytes()) {
                let buf = &mut self.log.slot[..take as usize];
                sm.snapshot_read(index * chunk_bytes as u64 + done as u64, buf);
                fabric.store(at + CHUNK_HEADER_BYTES + done, buf);
                sum = mix(sum, buf);
            }
            let mut header = [0u8; 24];
            header[0..8].copy_from_slice(&index.to_le_bytes());
            header[8..16].copy_from_slice(&(len as u64).to_le_bytes());
            header[16..24].copy_from_slice(&sum.finish().to_le_bytes());
            fabric.store(at, &header);
            serving.produced += 1;
            self.store_progress(serving.offer.nonce, serving.produced, fabric);
        }
        self.donor.serving = Some(serving);
    }
}
