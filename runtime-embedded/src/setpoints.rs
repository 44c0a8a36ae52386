//! The replicated application of the firmware demo: a controller's setpoint table (one value per
//! axis), and the workload a leading replica generates for it.
//!
//! A command sets one axis: `sequence u64 | axis u8 | origin u8 | 2 pad | value i32` (16 bytes,
//! little-endian). The state digest chains every applied command with its position, so two
//! replicas with equal digests applied the same commands at the same positions.
//!
//! # Invariants
//! - `apply` is deterministic and total: any bytes, of any length, are a command (a malformed
//!   one changes only the digest), so a replica never fails on what the log holds.

use mu_nostd::hash::Hasher;
use mu_nostd::{ReplicaId, StateMachine, Ticket};

/// Axes of the controller.
pub const AXES: usize = 16;
/// Bytes of one command.
pub const COMMAND_BYTES: usize = 16;

const DIGEST_DOMAIN: u64 = 0x5345_5450_4F49_4E54; // "SETPOINT"

/// The setpoint table.
pub struct Setpoints {
    axes: [i32; AXES],
    applied: u64,
    digest: u64,
    committed: u64,
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
            axes: [0; AXES],
            applied: 0,
            digest: 0,
            committed: 0,
        }
    }

    /// Commands applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Digest of everything applied (see the module doc).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Commands this replica submitted as leader and saw committed.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// The setpoint of `axis`.
    pub fn axis(&self, axis: usize) -> i32 {
        self.axes[axis % AXES]
    }
}

impl StateMachine for Setpoints {
    fn apply(&mut self, position: u64, command: &[u8], response: &mut [u8]) -> usize {
        self.digest = Hasher::new(DIGEST_DOMAIN)
            .word(self.digest)
            .word(position)
            .bytes(command)
            .finish();
        self.applied += 1;
        let Ok(command) = <[u8; COMMAND_BYTES]>::try_from(command) else {
            return 0;
        };
        let axis = command[8] as usize % AXES;
        let value = i32::from_le_bytes([command[12], command[13], command[14], command[15]]);
        let previous = core::mem::replace(&mut self.axes[axis], value);
        let answer = previous.to_le_bytes();
        let len = answer.len().min(response.len());
        response[..len].copy_from_slice(&answer[..len]);
        len
    }

    fn committed(&mut self, _ticket: Ticket, _position: u64, _response: &[u8]) {
        self.committed += 1;
    }
}

/// The commands a leading replica submits: a sweep over every axis.
pub struct Workload {
    origin: ReplicaId,
    next: u64,
}

impl Workload {
    /// The workload of replica `origin`.
    pub const fn new(origin: ReplicaId) -> Workload {
        Workload { origin, next: 0 }
    }

    /// The next command (not consumed until [`Workload::advance`]).
    pub fn command(&self) -> [u8; COMMAND_BYTES] {
        let mut command = [0u8; COMMAND_BYTES];
        command[..8].copy_from_slice(&self.next.to_le_bytes());
        command[8] = (self.next % AXES as u64) as u8;
        command[9] = self.origin;
        let value = (self.next as i64 * 37 % 20_001 - 10_000) as i32;
        command[12..].copy_from_slice(&value.to_le_bytes());
        command
    }

    /// Moves past the command just submitted.
    pub fn advance(&mut self) {
        self.next += 1;
    }

    /// Commands submitted so far.
    pub fn submitted(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_set_axes_and_the_digest_depends_on_position_and_content() {
        let (mut a, mut b) = (Setpoints::new(), Setpoints::new());
        let mut workload = Workload::new(1);
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
}
