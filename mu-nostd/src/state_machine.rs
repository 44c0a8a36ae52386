//! The application interface: a deterministic state machine that applies decided commands.

/// Identifies a command submitted to this replica while it led; handed back on commit or drop.
pub type Ticket = u64;

/// A deterministic application replicated by Mu. Every replica applies the same commands in the
/// same order; responses matter only on the replica that submitted the command.
pub trait StateMachine {
    /// Applies the command decided at `position`, writes the response into `response` and
    /// returns its length (at most `response.len()`).
    fn apply(&mut self, position: u64, command: &[u8], response: &mut [u8]) -> usize;

    /// On the leader that submitted it: the command of `ticket` is decided at `position` and has
    /// just been applied with this `response`. Called once per ticket, after `apply`.
    fn committed(&mut self, ticket: Ticket, position: u64, response: &[u8]) {
        let _ = (ticket, position, response);
    }

    /// The replica stopped leading before the command of `ticket` was decided through it. Its
    /// outcome is unknown here: a later leader may still decide it (clients retry idempotently).
    fn dropped(&mut self, ticket: Ticket) {
        let _ = ticket;
    }

    // ---- snapshots (state transfer) ------------------------------------------------------------
    //
    // A replica that needs positions no log holds any more installs a snapshot of another
    // replica's state. The core moves the bytes in fixed-size chunks through buffers it owns,
    // binds them to the position and log chain they cover, and checks the digest. An application
    // that keeps the defaults never donates, and a replica of it that falls a lap behind halts.

    /// Donor: freezes a copy of the state as it is now, after applying every position below
    /// `position`, and returns its length and digest. The copy must stay as it is while
    /// `apply` goes on, until `snapshot_end`. `None`: this application keeps no snapshots.
    fn snapshot_begin(&mut self, position: u64) -> Option<Snapshot> {
        let _ = position;
        None
    }

    /// Donor: copies bytes `[offset, offset + buf.len())` of the frozen copy into `buf` (always
    /// within its length).
    fn snapshot_read(&mut self, offset: u64, buf: &mut [u8]) {
        let _ = (offset, buf);
    }

    /// Donor: the frozen copy is no longer needed.
    fn snapshot_end(&mut self) {}

    /// Joiner: a snapshot of `bytes` bytes covering every position below `position` follows;
    /// the current state is to be replaced. False when this application cannot install one.
    fn install_begin(&mut self, position: u64, bytes: u64) -> bool {
        let _ = (position, bytes);
        false
    }

    /// Joiner: the snapshot's bytes at `offset`, in order and without gaps.
    fn install_write(&mut self, offset: u64, bytes: &[u8]) {
        let _ = (offset, bytes);
    }

    /// Joiner: every byte was written; the installed state is now the state. Returns its
    /// digest, computed as `Snapshot::digest` was (0 when the application has none).
    fn install_end(&mut self) -> u64 {
        0
    }

    /// Joiner: the transfer was given up before `install_end` (a donor crashed, a chunk did not
    /// check); a new `install_begin` follows. The state may be anything until then.
    fn install_abandon(&mut self) {}
}

/// A frozen copy of a state machine's state, for a state transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Snapshot {
    /// Its length in bytes.
    pub bytes: u64,
    /// A digest of the state it holds (0 when the application has none): the joiner's
    /// installed state must have the same.
    pub digest: u64,
}
