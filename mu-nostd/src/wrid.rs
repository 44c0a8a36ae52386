//! Work-request ids: what a completion belongs to.
//!
//! ```text
//! bits 56..64 kind | 48..56 peer | 32..48 connection epoch | 0..32 tag
//! ```
//! The epoch is the plane's reconnect count for that peer: a completion from before the last
//! reconnect carries an older epoch and is ignored.
//!
//! # Invariants
//! - `decode(encode(x)) == x` for every kind, peer < 8, epoch and tag.
//! - Unknown kinds decode to `None` (a fabric returning a foreign id is ignored, not trusted).

use crate::fabric::ReplicaId;

/// What an operation was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    ReadHeader = 1,
    ReadHeartbeat,
    WriteRequest,
    WriteAck,
    ReadApplied,
    ReadLog,
    WriteLog,
    ReadMinProposal,
    WriteMinProposal,
    ReadSlot,
    WriteCommit,
    WriteLapNotice,
    WriteStanding,
    WriteTransferRequest,
    ReadOffer,
    ReadProgress,
    ReadChunk,
    /// Decided marks of positions about to be rewritten (before their slots).
    WriteDecided,
    /// An adoption record: the adopted value, raised to the tenure's ballot on a member that
    /// holds it.
    WriteAdoption,
    /// The adoption record of the slot the prepare reads.
    ReadAdoption,
    /// The decided mark of the slot the prepare reads.
    ReadDecided,
}

impl Kind {
    /// True for writes (exhaustive on purpose: a new kind must say what it is).
    pub fn is_write(self) -> bool {
        match self {
            Kind::WriteRequest
            | Kind::WriteAck
            | Kind::WriteLog
            | Kind::WriteMinProposal
            | Kind::WriteCommit
            | Kind::WriteLapNotice
            | Kind::WriteStanding
            | Kind::WriteTransferRequest
            | Kind::WriteDecided
            | Kind::WriteAdoption => true,
            Kind::ReadHeader
            | Kind::ReadHeartbeat
            | Kind::ReadApplied
            | Kind::ReadLog
            | Kind::ReadMinProposal
            | Kind::ReadSlot
            | Kind::ReadOffer
            | Kind::ReadProgress
            | Kind::ReadChunk
            | Kind::ReadAdoption
            | Kind::ReadDecided => false,
        }
    }
}

const KINDS: [Kind; 21] = [
    Kind::ReadHeader,
    Kind::ReadHeartbeat,
    Kind::WriteRequest,
    Kind::WriteAck,
    Kind::ReadApplied,
    Kind::ReadLog,
    Kind::WriteLog,
    Kind::ReadMinProposal,
    Kind::WriteMinProposal,
    Kind::ReadSlot,
    Kind::WriteCommit,
    Kind::WriteLapNotice,
    Kind::WriteStanding,
    Kind::WriteTransferRequest,
    Kind::ReadOffer,
    Kind::ReadProgress,
    Kind::ReadChunk,
    Kind::WriteDecided,
    Kind::WriteAdoption,
    Kind::ReadAdoption,
    Kind::ReadDecided,
];

/// A decoded work-request id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WrId {
    pub kind: Kind,
    pub peer: ReplicaId,
    pub epoch: u16,
    pub tag: u32,
}

impl WrId {
    pub fn encode(self) -> u64 {
        let id = ((self.kind as u64) << 56)
            | ((self.peer as u64) << 48)
            | ((self.epoch as u64) << 32)
            | self.tag as u64;
        debug_assert_eq!(WrId::decode(id), Some(self));
        id
    }

    pub fn decode(id: u64) -> Option<WrId> {
        let kind_byte = (id >> 56) as u8;
        let kind = *KINDS.iter().find(|k| **k as u8 == kind_byte)?;
        Some(WrId {
            kind,
            peer: (id >> 48) as u8,
            epoch: (id >> 32) as u16,
            tag: id as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_foreign_ids() {
        for kind in KINDS {
            let id = WrId {
                kind,
                peer: 6,
                epoch: 0xBEEF,
                tag: 0xDEAD_BEEF,
            };
            assert_eq!(WrId::decode(id.encode()), Some(id));
        }
        assert_eq!(WrId::decode(0), None);
        assert_eq!(WrId::decode(u64::MAX), None);
    }
}
