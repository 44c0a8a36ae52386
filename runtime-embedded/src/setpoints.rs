//! The firmware's default application: a controller's setpoint table (one value per axis), and
//! the workload a leading replica generates for it ([`Sweep`]). It is one [`Application`] of
//! the runtime among any others (see [`crate::app`]).
//!
//! A command sets one axis: `sequence u64 | axis u8 | origin u8 | 2 pad | value i32` (16 bytes,
//! little-endian). The state digest chains every applied command with its position, so two
//! replicas with equal digests applied the same commands at the same positions.
//!
//! The boards run it inside exactly-once sessions ([`SessionSetpoints`], submitted by
//! [`SessionSweep`], see [`crate::sessions`]): a sweep command re-sent after its leader stopped
//! leading is answered from the session table instead of setting its axis again. The table
//! holds [`SESSION_CLIENTS`] sessions of [`SESSION_WINDOW`] replies of [`REPLY_BYTES`] bytes,
//! and doubles for a snapshot's copy-on-write shadow; its stream precedes the table's image in
//! a snapshot.
//!
//! The replicated state (`State`) is the axes, the count of commands applied and that digest
//! (what this replica committed as leader and its record of state transfers are its own, kept
//! by the runtime: [`crate::app::Transfers`]). A snapshot for a state transfer is the state's image, frozen whole at `snapshot_begin` (the
//! donor goes on applying) and staged whole on the joiner until `install_end`:
//!
//! ```text
//! 0 format  8 position  16 applied  24 digest  32 axes (16 x i32)      96 bytes, little-endian
//! ```
//!
//! # Invariants
//! - `apply` is deterministic and total: any bytes, of any length, are a command (a malformed
//!   one changes only the digest), so a replica never fails on what the log holds.
//! - A snapshot's digest is [`image_digest`] of the image of the state it holds: the donor's of
//!   the copy it froze, the joiner's of the state it installed. Equal digests mean equal
//!   replicated state at the same position; neither is ever 0.
//! - The state changes only through `apply`, and through an `install_end` whose image arrived
//!   whole, in order, in this format and for the position announced. Nothing a donor sends can
//!   make the joiner panic; a bad image leaves the state as it was and fails the digest check.

use mu_nostd::hash::Hasher;
use mu_nostd::{ReplicaId, Snapshot, StateMachine, Ticket};

use mu_apps::session::{ExactlyOnce, ReadOnly};

use crate::app::{Application, Workload};
use crate::sessions::Sessions;

/// Axes of the controller.
pub const AXES: usize = 16;
/// Bytes of one command.
pub const COMMAND_BYTES: usize = 16;
/// Bytes of a snapshot (see the module doc).
pub const SNAPSHOT_BYTES: usize = 32 + 4 * AXES;

const DIGEST_DOMAIN: u64 = 0x5345_5450_4F49_4E54; // "SETPOINT"
const SNAPSHOT_DOMAIN: u64 = 0x534E_4150_5348_4F54; // "SNAPSHOT"
/// The first word of an image: another firmware's snapshot is refused, not misread.
const SNAPSHOT_FORMAT: u64 = 0x3130_5450_5345_5053; // "SPSETP01"

/// Sessions the default firmware's table keeps: one per replica life that led, with room for
/// restarts (the least recently used is evicted).
pub const SESSION_CLIENTS: usize = 8;
/// Requests a session keeps unsettled, and replies the table keeps per session.
pub const SESSION_WINDOW: usize = 8;
/// Bytes of a setpoint command's reply (the axis's previous value): the table keeps them whole.
pub const REPLY_BYTES: usize = 4;

/// The setpoint table inside exactly-once sessions: what the boards replicate.
pub type SessionSetpoints = ExactlyOnce<Setpoints, SESSION_CLIENTS, SESSION_WINDOW, REPLY_BYTES>;
/// The sweep, submitted through one session of [`SessionSetpoints`].
pub type SessionSweep = Sessions<Sweep, SESSION_WINDOW, COMMAND_BYTES>;

/// A snapshot's bytes.
type Image = [u8; SNAPSHOT_BYTES];

/// The replicated part of the setpoint table: what a snapshot carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    axes: [i32; AXES],
    applied: u64,
    digest: u64,
}

impl State {
    const ZERO: State = State {
        axes: [0; AXES],
        applied: 0,
        digest: 0,
    };

    /// The image of this state as the state after applying every position below `position`.
    fn image(&self, position: u64) -> Image {
        let mut image = [0u8; SNAPSHOT_BYTES];
        let words = [SNAPSHOT_FORMAT, position, self.applied, self.digest];
        for (at, word) in words.iter().enumerate() {
            image[at * 8..at * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
        for (axis, value) in self.axes.iter().enumerate() {
            image[32 + 4 * axis..36 + 4 * axis].copy_from_slice(&value.to_le_bytes());
        }
        debug_assert_eq!(State::from_image(&image), Some((position, *self)));
        image
    }

    /// The position and state an image holds; `None` for another format.
    fn from_image(image: &Image) -> Option<(u64, State)> {
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&image[at * 8..at * 8 + 8]);
            u64::from_le_bytes(bytes)
        };
        if word(0) != SNAPSHOT_FORMAT {
            return None;
        }
        let axes = core::array::from_fn(|axis| {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(&image[32 + 4 * axis..36 + 4 * axis]);
            i32::from_le_bytes(bytes)
        });
        let state = State {
            axes,
            applied: word(2),
            digest: word(3),
        };
        Some((word(1), state))
    }
}

/// The digest of a snapshot image; never 0 (0 is what [`StateMachine::install_end`] returns
/// for an image it could not install, so it never matches a donor's).
pub fn image_digest(image: &[u8; SNAPSHOT_BYTES]) -> u64 {
    Hasher::new(SNAPSHOT_DOMAIN).bytes(image).finish().max(1)
}

/// A snapshot being installed.
#[derive(Clone, Copy)]
struct Install {
    position: u64,
    image: Image,
    /// Bytes written so far, in order; `None` once a write broke the order or overran.
    written: Option<usize>,
}

/// The setpoint table.
pub struct Setpoints {
    state: State,
    /// The donor's frozen copy, from `snapshot_begin` to `snapshot_end`.
    frozen: Option<Image>,
    /// The joiner's staged copy, from `install_begin` to `install_end` or `install_abandon`.
    install: Option<Install>,
}

impl Default for Setpoints {
    fn default() -> Self {
        Self::new()
    }
}

impl Setpoints {
    /// All axes at zero.
    pub const fn new() -> Setpoints {
        Setpoints {
            state: State::ZERO,
            frozen: None,
            install: None,
        }
    }

    /// Commands applied.
    pub fn applied(&self) -> u64 {
        self.state.applied
    }

    /// The setpoint of `axis`.
    pub fn axis(&self, axis: usize) -> i32 {
        self.state.axes[axis % AXES]
    }
}

impl Application for Setpoints {
    /// Digest of everything applied (see the module doc).
    fn digest(&self) -> u64 {
        self.state.digest
    }
}

/// Every command sets an axis: none is read-only, so every reply is cached.
impl ReadOnly for Setpoints {}

impl StateMachine for Setpoints {
    fn apply(&mut self, position: u64, command: &[u8], response: &mut [u8]) -> usize {
        let state = &mut self.state;
        state.digest = Hasher::new(DIGEST_DOMAIN)
            .word(state.digest)
            .word(position)
            .bytes(command)
            .finish();
        state.applied += 1;
        let Ok(command) = <[u8; COMMAND_BYTES]>::try_from(command) else {
            return 0;
        };
        let axis = command[8] as usize % AXES;
        let value = i32::from_le_bytes([command[12], command[13], command[14], command[15]]);
        let previous = core::mem::replace(&mut state.axes[axis], value);
        let answer = previous.to_le_bytes();
        let len = answer.len().min(response.len());
        response[..len].copy_from_slice(&answer[..len]);
        len
    }

    fn snapshot_begin(&mut self, position: u64) -> Option<Snapshot> {
        let image = self.state.image(position);
        self.frozen = Some(image);
        Some(Snapshot {
            bytes: SNAPSHOT_BYTES as u64,
            digest: image_digest(&image),
        })
    }

    fn snapshot_read(&mut self, offset: u64, buf: &mut [u8]) {
        // Bytes outside the frozen copy (never asked for) read as zeros.
        buf.fill(0);
        let Some(image) = &self.frozen else { return };
        let start = usize::try_from(offset).map_or(SNAPSHOT_BYTES, |o| o.min(SNAPSHOT_BYTES));
        let end = start.saturating_add(buf.len()).min(SNAPSHOT_BYTES);
        buf[..end - start].copy_from_slice(&image[start..end]);
    }

    fn snapshot_end(&mut self) {
        self.frozen = None;
    }

    fn install_begin(&mut self, position: u64, bytes: u64) -> bool {
        // Another length is another firmware's state: this one cannot hold it.
        let fits = bytes == SNAPSHOT_BYTES as u64;
        self.install = fits.then_some(Install {
            position,
            image: [0; SNAPSHOT_BYTES],
            written: Some(0),
        });
        fits
    }

    fn install_write(&mut self, offset: u64, bytes: &[u8]) {
        let Some(install) = &mut self.install else {
            return;
        };
        let start = install.written.filter(|&w| offset == w as u64);
        let end = start.and_then(|s| s.checked_add(bytes.len()));
        install.written = match (start, end) {
            (Some(start), Some(end)) if end <= SNAPSHOT_BYTES => {
                install.image[start..end].copy_from_slice(bytes);
                Some(end)
            }
            _ => None,
        };
    }

    fn install_end(&mut self) -> u64 {
        let Some(install) = self.install.take() else {
            return 0;
        };
        let whole = install.written == Some(SNAPSHOT_BYTES);
        let decoded = State::from_image(&install.image).filter(|_| whole);
        let Some((_, state)) = decoded.filter(|&(p, _)| p == install.position) else {
            warn!(
                "snapshot at position {=u64}: not a whole image of this format",
                install.position
            );
            return 0;
        };
        self.state = state;
        image_digest(&self.state.image(install.position))
    }

    fn install_abandon(&mut self) {
        self.install = None;
    }
}

/// The setpoint table's workload: a sweep over every axis, one command per axis in turn, each
/// numbered and signed with the replica that submitted it.
#[derive(Clone, Copy, Debug)]
pub struct Sweep {
    origin: ReplicaId,
    next: u64,
}

impl Sweep {
    /// The sweep replica `origin` submits, from its first command.
    pub const fn new(origin: ReplicaId) -> Sweep {
        Sweep { origin, next: 0 }
    }

    /// Commands moved past so far.
    pub fn submitted(&self) -> u64 {
        self.next
    }

    /// Moves past the current command (what [`Workload::advance`] does, without a ticket).
    pub fn advance(&mut self) {
        self.next += 1;
    }
}

impl Workload<Setpoints> for Sweep {
    type Command = [u8; COMMAND_BYTES];

    fn command(&self) -> [u8; COMMAND_BYTES] {
        let mut command = [0u8; COMMAND_BYTES];
        command[..8].copy_from_slice(&self.next.to_le_bytes());
        command[8] = (self.next % AXES as u64) as u8;
        command[9] = self.origin;
        let value = (self.next as i64 * 37 % 20_001 - 10_000) as i32;
        command[12..].copy_from_slice(&value.to_le_bytes());
        command
    }

    fn advance(&mut self, _ticket: Ticket) {
        Sweep::advance(self);
    }

    /// Per axis, the value of the last command submitted for it: so each was applied, once, in
    /// order (the axes, not the digest: the digest also chains the positions, which the core chose).
    fn check(&self, setpoints: &Setpoints, submitted: u64) -> bool {
        // The runtime counts what it submitted; this sweep what it moved past: the same.
        assert_eq!(submitted, self.next, "the sweep and the runtime disagree");
        let mut replay = Sweep::new(self.origin);
        let mut expected = Setpoints::new();
        for position in 0..submitted {
            expected.apply(position, &replay.command(), &mut []);
            replay.advance();
        }
        debug_assert_eq!(expected.applied(), submitted);
        setpoints.applied() >= submitted
            && (0..AXES).all(|axis| setpoints.axis(axis) == expected.axis(axis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_set_axes_and_the_digest_depends_on_position_and_content() {
        let (mut a, mut b) = (Setpoints::new(), Setpoints::new());
        let mut workload = Sweep::new(1);
        let mut response = [0u8; 8];
        for position in 0..40 {
            let command = workload.command();
            assert_eq!(a.apply(position, &command, &mut response), 4);
            b.apply(position, &command, &mut response);
            workload.advance();
        }
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.applied(), 40);
        assert_eq!(a.axis(39 % AXES), 39 * 37 - 10_000);
        // A malformed command still applies (deterministically) and moves the digest.
        let before = a.digest();
        assert_eq!(a.apply(40, &[1, 2, 3], &mut response), 0);
        assert_ne!(a.digest(), before);
        b.apply(41, &[1, 2, 3], &mut response);
        assert_ne!(a.digest(), b.digest(), "same command, other position");
    }

    #[test]
    fn the_sweep_checks_every_command_applied_once_in_order() {
        const SUBMITTED: usize = 2 * AXES + 3;
        let submitted = SUBMITTED as u64;
        let mut sweep = Sweep::new(1);
        let commands: [[u8; COMMAND_BYTES]; SUBMITTED] = core::array::from_fn(|_| {
            let command = sweep.command();
            sweep.advance();
            command
        });
        let table = |order: &[[u8; COMMAND_BYTES]]| {
            let mut table = Setpoints::new();
            for (position, command) in order.iter().enumerate() {
                table.apply(position as u64 + 100, command, &mut []);
            }
            table
        };
        assert!(sweep.check(&table(&commands), submitted), "other positions");
        // The last two commands for axis 1.
        let mut swapped = commands;
        swapped.swap(1 + AXES, 1 + 2 * AXES);
        assert!(!sweep.check(&table(&swapped), submitted), "out of order");
        let last = SUBMITTED - 1;
        let lost = &commands[..last];
        assert!(!sweep.check(&table(lost), submitted), "one lost");
        let mut twice = [commands[0]; SUBMITTED + 1];
        twice[..SUBMITTED].copy_from_slice(&commands);
        twice[SUBMITTED] = commands[last - AXES];
        assert!(!sweep.check(&table(&twice), submitted), "an old one again");
        assert!(!sweep.check(&Setpoints::new(), submitted));
    }

    /// A table after the workload of replica 1 applied at positions `0..count`.
    fn after(count: u64) -> Setpoints {
        let mut table = Setpoints::new();
        let mut workload = Sweep::new(1);
        for position in 0..count {
            table.apply(position, &workload.command(), &mut []);
            workload.advance();
        }
        table
    }

    /// Moves `donor`'s frozen snapshot into `joiner` in pieces of `piece` bytes; returns the
    /// digest `install_end` computed.
    fn transfer(
        donor: &mut Setpoints,
        joiner: &mut Setpoints,
        snapshot: Snapshot,
        piece: usize,
    ) -> u64 {
        assert!(joiner.install_begin(7, snapshot.bytes));
        let mut offset = 0;
        while offset < snapshot.bytes {
            let len = (piece as u64).min(snapshot.bytes - offset) as usize;
            let mut buf = [0u8; SNAPSHOT_BYTES];
            donor.snapshot_read(offset, &mut buf[..len]);
            joiner.install_write(offset, &buf[..len]);
            offset += len as u64;
        }
        joiner.install_end()
    }

    #[test]
    fn a_snapshot_round_trips_in_any_piece_size() {
        for piece in [1, 3, 7, 13, 64, 95, SNAPSHOT_BYTES] {
            let mut donor = after(7);
            let snapshot = donor.snapshot_begin(7).unwrap();
            assert_eq!(snapshot.bytes, SNAPSHOT_BYTES as u64);
            assert_ne!(snapshot.digest, 0);
            let mut joiner = after(3);
            let digest = transfer(&mut donor, &mut joiner, snapshot, piece);
            donor.snapshot_end();
            assert_eq!(digest, snapshot.digest, "piece {piece}");
            assert_eq!(joiner.digest(), donor.digest());
            assert_eq!(joiner.applied(), 7);
            assert!((0..AXES).all(|axis| joiner.axis(axis) == donor.axis(axis)));
        }
    }

    #[test]
    fn the_frozen_copy_does_not_move_while_the_donor_applies() {
        let mut donor = after(7);
        let frozen = after(7);
        let snapshot = donor.snapshot_begin(7).unwrap();
        let mut response = [0u8; 4];
        for position in 7..40 {
            donor.apply(position, &[position as u8; COMMAND_BYTES], &mut response);
        }
        assert_ne!(donor.digest(), frozen.digest());
        let mut joiner = Setpoints::new();
        assert_eq!(
            transfer(&mut donor, &mut joiner, snapshot, 10),
            snapshot.digest
        );
        assert_eq!(joiner.digest(), frozen.digest());
        assert_eq!(joiner.applied(), 7);
        // The joiner continues from the position where the donor froze it, in step with it.
        let mut workload = Sweep::new(1);
        for _ in 0..7 {
            workload.advance();
        }
        let mut frozen = frozen;
        for position in 7..20 {
            joiner.apply(position, &workload.command(), &mut response);
            frozen.apply(position, &workload.command(), &mut response);
            workload.advance();
        }
        assert_eq!(joiner.digest(), frozen.digest());
    }

    #[test]
    fn an_abandoned_install_starts_again_cleanly() {
        let mut donor = after(7);
        let snapshot = donor.snapshot_begin(7).unwrap();
        let mut joiner = after(2);
        let before = joiner.digest();
        assert!(joiner.install_begin(7, snapshot.bytes));
        let mut half = [0u8; SNAPSHOT_BYTES / 2];
        donor.snapshot_read(0, &mut half);
        joiner.install_write(0, &half);
        joiner.install_abandon();
        assert_eq!(
            joiner.digest(),
            before,
            "an abandoned install changes nothing"
        );
        assert_eq!(joiner.install_end(), 0, "nothing is being installed");
        assert_eq!(
            transfer(&mut donor, &mut joiner, snapshot, 17),
            snapshot.digest
        );
        assert_eq!(joiner.digest(), donor.digest());
    }

    #[test]
    fn a_bad_image_is_never_installed_and_never_panics() {
        let mut donor = after(7);
        let snapshot = donor.snapshot_begin(7).unwrap();
        let mut image = [0u8; SNAPSHOT_BYTES];
        donor.snapshot_read(0, &mut image);
        let mut joiner = after(3);
        let before = joiner.digest();
        // Another length: not this firmware's state.
        assert!(!joiner.install_begin(7, snapshot.bytes + 1));
        // Out of order, past the end, short, for another position, another format.
        let cases: [&dyn Fn(&mut Setpoints); 5] = [
            &|j| j.install_write(8, &image[8..]),
            &|j| {
                j.install_write(0, &image);
                j.install_write(SNAPSHOT_BYTES as u64, &[1]);
            },
            &|j| j.install_write(0, &image[..SNAPSHOT_BYTES - 1]),
            &|j| {
                let mut other = image;
                other[8] ^= 1;
                j.install_write(0, &other);
            },
            &|j| {
                let mut other = image;
                other[0] ^= 1;
                j.install_write(0, &other);
            },
        ];
        for case in cases {
            assert!(joiner.install_begin(7, snapshot.bytes));
            case(&mut joiner);
            assert_eq!(joiner.install_end(), 0);
            assert_eq!(joiner.digest(), before);
        }
        // Reads past the frozen copy, or with none, are zeros.
        let mut buf = [7u8; 8];
        donor.snapshot_read(u64::MAX, &mut buf);
        assert_eq!(buf, [0; 8]);
        donor.snapshot_read(SNAPSHOT_BYTES as u64 - 2, &mut buf);
        assert_eq!(buf[2..], [0; 6]);
        donor.snapshot_end();
        donor.snapshot_read(0, &mut buf);
        assert_eq!(buf, [0; 8]);
        joiner.install_write(u64::MAX, &image);
    }
}
