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
}
