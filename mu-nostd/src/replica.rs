//! Construction of a replica's two planes from a configuration, with typed errors, and a
//! wrapper that polls both from one loop.
//!
//! # Invariants
//! - A plane is only ever built from a configuration that validated and fits the buffers the
//!   caller chose (`SLOT`, `ENTRY`), so the planes' own assertions on sizes cannot fire.

use crate::background::BackgroundPlane;
use crate::config::{Config, ConfigError};
use crate::fabric::{Fabric, ReplicaId};
use crate::replication::ReplicationPlane;
use crate::shared::Shared;
use crate::state_machine::StateMachine;

/// Why a replica cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ReplicaError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// The id is not part of the cluster.
    NoSuchReplica {
        /// The id given.
        id: ReplicaId,
        /// Replicas in the cluster.
        replica_count: u8,
    },
    /// Slots are larger than the slot buffer the replica was built with.
    SlotTooLarge {
        /// Configured slot size.
        slot_size: u32,
        /// The buffer (`SLOT`).
        max: u32,
    },
    /// The largest command does not fit the entry buffer the replica was built with.
    EntryTooLarge {
        /// Configured largest command (`entry_slots_max` times the slot payload).
        entry_bytes: u32,
        /// The buffer (`ENTRY`).
        max: u32,
    },
}

impl From<ConfigError> for ReplicaError {
    fn from(error: ConfigError) -> Self {
        ReplicaError::Config(error)
    }
}

impl core::fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ReplicaError::Config(e) => write!(f, "invalid configuration: {e}"),
            ReplicaError::NoSuchReplica { id, replica_count } => {
                write!(f, "replica id {id} is not in a cluster of {replica_count}")
            }
            ReplicaError::SlotTooLarge { slot_size, max } => {
                write!(
                    f,
                    "slot_size {slot_size} exceeds the slot buffer of {max} bytes"
                )
            }
            ReplicaError::EntryTooLarge { entry_bytes, max } => {
                write!(
                    f,
                    "largest command {entry_bytes} B exceeds the entry buffer of {max} bytes"
                )
            }
        }
    }
}

/// Builds the two planes of replica `me`. Put them on two cores, or use [`Replica`] to poll both
/// from one loop.
#[allow(clippy::type_complexity)]
pub fn planes<'s, const SLOT: usize, const ENTRY: usize, const QUEUE: usize>(
    config: Config,
    me: ReplicaId,
    shared: &'s Shared,
) -> Result<
    (
        ReplicationPlane<'s, SLOT, ENTRY, QUEUE>,
        BackgroundPlane<'s>,
    ),
    ReplicaError,
> {
    config.validate()?;
    if !config.contains(me) {
        return Err(ReplicaError::NoSuchReplica {
            id: me,
            replica_count: config.replica_count,
        });
    }
    if config.slot_size as usize > SLOT {
        return Err(ReplicaError::SlotTooLarge {
            slot_size: config.slot_size,
            max: SLOT as u32,
        });
    }
    if config.entry_bytes_max() as usize > ENTRY {
        return Err(ReplicaError::EntryTooLarge {
            entry_bytes: config.entry_bytes_max(),
            max: ENTRY.min(u32::MAX as usize) as u32,
        });
    }
    Ok((
        ReplicationPlane::new(config, me, shared),
        BackgroundPlane::new(config, me, shared),
    ))
}

/// Both planes of one replica, polled from one loop (firmware, tests, single-core hosts).
pub struct Replica<
    's,
    const SLOT: usize = 256,
    const ENTRY: usize = 2048,
    const QUEUE: usize = 8192,
> {
    /// The replication plane.
    pub replication: ReplicationPlane<'s, SLOT, ENTRY, QUEUE>,
    /// The background plane.
    pub background: BackgroundPlane<'s>,
}

impl<'s, const SLOT: usize, const ENTRY: usize, const QUEUE: usize>
    Replica<'s, SLOT, ENTRY, QUEUE>
{
    /// Builds replica `me` of the cluster `config`.
    pub fn new(config: Config, me: ReplicaId, shared: &'s Shared) -> Result<Self, ReplicaError> {
        let (replication, background) = planes(config, me, shared)?;
        Ok(Replica {
            replication,
            background,
        })
    }

    /// Polls the background plane then the replication plane; each plane has its own fabric
    /// (its own connections and completion queue) over the same region.
    pub fn poll<R: Fabric, B: Fabric, S: StateMachine>(
        &mut self,
        now: u64,
        replication_fabric: &mut R,
        background_fabric: &mut B,
        sm: &mut S,
    ) {
        self.background.poll(now, background_fabric);
        self.replication.poll(now, replication_fabric, sm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construction_errors_are_typed() {
        let shared = Shared::new();
        let config = Config::new(3);
        assert!(Replica::<256, 2048, 1024>::new(config, 2, &shared).is_ok());
        assert_eq!(
            Replica::<256, 2048, 1024>::new(config, 3, &shared).err(),
            Some(ReplicaError::NoSuchReplica {
                id: 3,
                replica_count: 3
            })
        );
        assert!(matches!(
            Replica::<64, 2048, 1024>::new(config, 0, &shared).err(),
            Some(ReplicaError::SlotTooLarge { .. })
        ));
        assert!(matches!(
            Replica::<256, 100, 1024>::new(config, 0, &shared).err(),
            Some(ReplicaError::EntryTooLarge { .. })
        ));
        let mut zero = config;
        zero.replica_count = 0;
        assert!(matches!(
            Replica::<256, 2048, 1024>::new(zero, 0, &shared).err(),
            Some(ReplicaError::Config(ConfigError {
                field: "replica_count",
                ..
            }))
        ));
        let mut eight = config;
        eight.replica_count = 8;
        assert!(Replica::<256, 2048, 1024>::new(eight, 0, &shared).is_err());
        let mut empty = config;
        empty.slot_count = 0;
        assert!(Replica::<256, 2048, 1024>::new(empty, 0, &shared).is_err());
    }
}
