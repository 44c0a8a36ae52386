//! What a Linux replica hosts: any [`Application`], a deterministic state machine of the core
//! plus the few things the runtime publishes about it. The node answers clients, journals and
//! times commands around it ([`crate::node::Hosted`]), so an application is only its state.
//!
//! The key-value store of `mu demo` ([`crate::kv::Kv`]) is one application; a team that
//! replicates its own engine implements [`Application`] for it and hands it to
//! [`crate::node::run_app`] (see `runtime-linux/examples/ledger.rs`).
//!
//! # Invariants
//! - `apply` is deterministic: every replica that applied the same positions publishes the same
//!   [`Application::digest`].
//! - A reply's first 8 bytes, little-endian, are its answer word
//!   ([`crate::port::Response::answer`]); shorter replies are padded with zeros. The
//!   shared-memory client port carries a reply's first [`crate::port::REPLY_HEAD`] bytes.

use mu_nostd::StateMachine;

/// An application a Linux replica hosts.
pub trait Application: StateMachine + Send {
    /// A digest of the state after the positions applied so far: replicas that applied the same
    /// positions give the same digest (the port publishes it; tests compare replicas by it).
    fn digest(&self) -> u64;

    /// The client's id of `command`, which the port's journal records at the position it was
    /// decided (clients check from it that nothing was lost or applied twice); `None` when the
    /// application does not number its commands, or did not apply this one (`reply` is what
    /// it answered).
    fn journal_id(&self, command: &[u8], reply: &[u8]) -> Option<u64> {
        let _ = (command, reply);
        None
    }
}

/// The answer word the client port carries for a reply: its first 8 bytes, little-endian.
pub fn answer_word(reply: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let n = reply.len().min(8);
    word[..n].copy_from_slice(&reply[..n]);
    u64::from_le_bytes(word)
}
