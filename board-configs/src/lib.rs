//! Mu deployment descriptions: one TOML file describes a cluster (the part every replica shares)
//! and, for each replica, the host it runs on: a Linux process or a firmware board.
//!
//! The Linux runtime reads the file at start time (`mu replica --config FILE --id N`); a firmware
//! board crate's build script reads its *board file* (a file of the same schema whose replicas
//! are all `[replica.firmware]`, e.g. `qemu-virt-a53-3.toml`) at build time through
//! [`firmware::image`], which checks it against the board's [`firmware::BoardRules`] and turns
//! it into Rust constants. So this is a plain `std` library; besides `toml_edit` it depends only
//! on `mu-nostd` (the configuration) and `window-layout` (the firmware window's layout and the
//! firmware's buffer sizes, in a small `no_std` crate below both this one and
//! `runtime-embedded`), not on the firmware runtime itself.
//!
//! # Schema
//!
//! ```toml
//! [cluster]
//! name = "shm-3"             # [A-Za-z0-9_-], 1 to 32 characters
//! replicas = 3               # 1..=7; the replica ids are 0..replicas
//! tick_ns = 1000             # length of one core tick in ns, 1..=1_000_000_000
//! slot_count = 65536         # slots in the circular log
//! slot_size = 256            # bytes per slot, header included; a multiple of 64
//! entry_slots_max = 8        # most slots one command may span
//! pipeline_depth = 16        # most written-but-undecided slots in flight
//! op_timeout_ticks = 2000    # a replication operation outstanding this long aborts
//! permission_retry_ticks = 1000  # a permission request or ack unanswered this long is resent (at most op_timeout_ticks)
//! recycle_period_ticks = 100 # how often the leader reads applied positions to recycle the log
//! transfer_chunk_bytes = 65536 # optional (default 1024): bytes of a state-transfer chunk
//! transfer_window = 8        # optional (default 2): chunks a donor keeps ready ahead
//!
//! [cluster.detector]
//! read_period_ticks = 5      # how often each peer's heartbeat is read
//! # Optional; each defaults to the value of mu_nostd::DetectorConfig::paper(read_period_ticks):
//! # heartbeat_period_ticks, read_timeout_ticks, score_max, fail_below, recover_above, fate_ticks
//!
//! [[replica]]                # one per replica, each id of 0..replicas exactly once
//! id = 0
//! [replica.linux]            # a Linux process ...
//! fabric = "shm"             # "shm" (one host) or "verbs" (RDMA)
//! shm_dir = "/dev/shm/mu-shm-3"  # absolute; default "/dev/shm/mu-<cluster.name>": the regions
//!                            # (shm), or the lock, registered region and client port (verbs)
//! replication_core = 0       # optional CPU (0..=1023) for the replication plane; absent = unpinned
//! background_core = 1        # optional CPU for the background plane
//! polling = "shared"         # "busy" (spin, needs two distinct cores) or "shared" (default)
//! realtime_priority = 0      # optional; 0 = normal scheduling, 1..=99 = SCHED_FIFO priority
//!                            # (background plane; with "busy", both planes)
//! serve = "10.0.0.1:7379"    # optional IP:port of its Redis-protocol front end (`--app resp`);
//!                            # every Linux replica has one or none does, see below
//! # verbs only, and then all required:
//! # device = "rxe0", port = 1 (1..=255), gid_index = 1 (0..=255), address = "10.0.2.15:7470"
//!
//! [[replica]]
//! id = 1
//! [replica.firmware]         # ... or a firmware board (exactly one of the two)
//! board = "qemu-virt-a53"    # free text, not empty
//! ram_base = 0x40000000
//! ram_size = 0x08000000      # RAM and window must not overlap
//! window_base = 0x10000000000  # the shared window (ivshmem BAR) the fabric lives in
//! window_size = 0x400000     # must hold the whole window layout, see below
//! ```
//!
//! Every `cluster` key is required except the transfer settings and the detector overrides; unknown keys are errors. The
//! cluster values must also pass [`mu_nostd::Config::validate`].
//!
//! # Serve addresses
//!
//! `serve` is where a Linux replica's Redis-protocol front end (`mu replica --app resp`)
//! listens, and where the other replicas' front ends reach it: a follower forwards its clients'
//! commands to the leader's `serve` address. So it is one address with two uses, and the file
//! refuses what would break either: anything but `IP:port` (no host names, as for the verbs
//! `address`: every replica reads the same addresses, with no resolver in between), port 0 (the
//! kernel would pick a port the peers cannot know), an unspecified IP such as `0.0.0.0` (one
//! can listen on it but not forward to it), and an address another replica's `serve` or any
//! replica's verbs `address` already uses (one TCP listener each). `serve` is all or nothing
//! across the Linux replicas: a follower with no leader's address to forward to would serve
//! nothing. Without `serve`, `mu replica --app resp --serve-port P` serves on
//! `127.0.0.1:P+id`, and that flag wins over the file when both are given.
//!
//! # Firmware replicas
//!
//! Every firmware replica of a cluster maps one shared window, laid out by
//! `window_layout::WindowLayout` from the cluster values alone: a 4 KiB header (the
//! control block and 8 telemetry blocks), then every replica's region (its log and
//! headers, `mu_nostd::Layout`), each rounded up to 4 KiB, then one work-request ring per ordered
//! pair of replicas (itself included) and plane, `2 * replicas^2` rings. `window_size` must be at
//! least `WindowLayout::new(&config).bytes`; the error says what the window holds and needs.
//!
//! A *board file* is the deployment a firmware image is built from: every replica is
//! `[replica.firmware]` with the same `board`, RAM and window (one image serves every replica,
//! which learns its id at run time, and they all map the same window). [`firmware::image`]
//! reads it at build time and also checks it against what the board and the firmware can do
//! ([`firmware::BoardRules`]: RAM base and size, where the window may lie and whether it is a
//! PCI BAR, the firmware's slot and entry buffers, the tick counter, the replica count);
//! [`firmware::FirmwareImage::constants_rs`] then gives the Rust constants the firmware
//! `include!`s. The board files here are `qemu-virt-a53-3.toml` and `mps2-an386-1.toml`.
//!
//! # Errors
//!
//! A [`ConfigFileError`] names the file, the 1-based line and column, and the field as a dotted
//! path written the way the file spells it: `cluster.slot_size`, `cluster.detector.fate_ticks`,
//! `replica[1].linux.polling` (the index is the position in the file), `replica[0].id`. It
//! displays as `FILE:LINE:COLUMN: FIELD: REASON`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod firmware;
mod read;
mod tree;
mod write;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

/// A whole deployment: the cluster and every replica's host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// The file it was read from, as given to [`parse`] or [`load`]; empty when built in code.
    pub file: String,
    /// What every replica shares.
    pub cluster: Cluster,
    /// One per replica, sorted by id, so that `replicas[i].id == i`.
    pub replicas: Vec<ReplicaSpec>,
}

/// The part of a deployment every replica shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// The cluster's name, `[A-Za-z0-9_-]{1,32}`.
    pub name: String,
    /// Length of one core tick in nanoseconds; every `*_ticks` value is in these.
    pub tick_ns: u64,
    /// The core configuration, validated.
    pub config: mu_nostd::Config,
}

/// One replica: its id and the host it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSpec {
    /// The replica id, `0..replicas`.
    pub id: u8,
    /// Where and how it runs.
    pub host: Host,
}

/// The host a replica runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A process of the Linux runtime (`[replica.linux]`).
    Linux(LinuxHost),
    /// A firmware image on a board (`[replica.firmware]`).
    Firmware(FirmwareHost),
}

/// How a Linux replica runs (`[replica.linux]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxHost {
    /// The fabric its regions live on.
    pub fabric: FabricSpec,
    /// The CPU the replication plane is pinned to; `None` = not pinned.
    pub replication_core: Option<usize>,
    /// The CPU the background plane is pinned to; `None` = not pinned.
    pub background_core: Option<usize>,
    /// How the planes wait for work.
    pub polling: Polling,
    /// `SCHED_FIFO` priority `1..=99`; `None` for normal scheduling (0 or absent in the file).
    /// It applies to the background plane, which sleeps between polls, and
    /// with busy polling to the replication plane too: with shared polling, a leader's spinning
    /// replication plane in a real-time class would keep every other thread off its core.
    pub realtime_priority: Option<u8>,
    /// Where its Redis-protocol front end listens and its peers forward to (`serve`); `None`
    /// when the file gives none. Never port 0, never an unspecified IP, and distinct from
    /// every other replica's `serve` and every verbs handshake `address` of the deployment.
    pub serve: Option<std::net::SocketAddr>,
}

/// The fabric of a Linux replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FabricSpec {
    /// Shared memory on one host: every region is a file in `dir`.
    Shm {
        /// An absolute directory, usually under `/dev/shm`.
        dir: PathBuf,
    },
    /// RDMA verbs.
    Verbs {
        /// An absolute directory for the replica's local files (lock, region, client port).
        dir: PathBuf,
        /// The RDMA device, e.g. `rxe0`.
        device: String,
        /// The device port, `1..=255`.
        port: u8,
        /// The GID table index.
        gid_index: u8,
        /// The `IP:port` this replica listens on to exchange connection details.
        address: String,
    },
}

impl FabricSpec {
    /// The directory of the replica's local shared-memory files.
    pub fn dir(&self) -> &std::path::Path {
        match self {
            FabricSpec::Shm { dir } | FabricSpec::Verbs { dir, .. } => dir,
        }
    }
}

/// How a Linux replica's planes wait for work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polling {
    /// Spin without yielding: lowest latency, one whole core per plane.
    Busy,
    /// Yield between empty polls, so the planes can share cores with other work.
    Shared,
}

/// A firmware replica's board (`[replica.firmware]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareHost {
    /// The board's name, free text.
    pub board: String,
    /// Start of the board's RAM.
    pub ram_base: u64,
    /// Bytes of RAM.
    pub ram_size: u64,
    /// Start of the shared window (e.g. an ivshmem BAR) the fabric lives in.
    pub window_base: u64,
    /// Bytes of the shared window; at least what `window_layout::WindowLayout` needs
    /// for the cluster (header, every replica's region, the rings).
    pub window_size: u64,
}

/// A deployment file that cannot be used: where, which field, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFileError {
    /// The file, as given to [`parse`] or [`load`].
    pub file: String,
    /// 1-based line of the problem; `None` only when the file could not be read.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the problem; `None` exactly when `line` is.
    pub column: Option<usize>,
    /// The dotted field, e.g. `replica[1].linux.polling`; empty for TOML syntax and read errors.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigFileError {
    /// `FILE:LINE:COLUMN: FIELD: REASON`, leaving out the parts that are unknown or empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigFileError {}

/// Reads and parses a deployment file.
///
/// A file that cannot be read gives an error without a line and with an empty field; a file that
/// is not UTF-8 gives the line of the first bad byte.
pub fn load(path: &Path) -> Result<Deployment, ConfigFileError> {
    let (file, source) = read_file(path)?;
    parse(&source, &file)
}

/// The path as errors name it, and the file's text.
fn read_file(path: &Path) -> Result<(String, String), ConfigFileError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| ConfigFileError {
        file: file.clone(),
        line: None,
        column: None,
        field: String::new(),
        reason: format!("cannot read: {e}"),
    })?;
    match String::from_utf8(bytes) {
        Ok(source) => Ok((file, source)),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let good = String::from_utf8_lossy(&e.as_bytes()[..at]);
            Err(read::Reader::new(&good, &file).error(at, "", "not valid UTF-8"))
        }
    }
}

/// Parses a deployment from `source`; `file` names it in errors.
pub fn parse(source: &str, file: &str) -> Result<Deployment, ConfigFileError> {
    read::deployment(source, file)
}

impl Deployment {
    /// The replica with this id.
    pub fn replica(&self, id: u8) -> Option<&ReplicaSpec> {
        self.replicas.iter().find(|r| r.id == id)
    }

    /// The deployment as a file of the schema above; [`parse`] gives back an equal deployment
    /// (a non-UTF-8 shm directory excepted: it is written lossily; and an IPv6 `serve` address
    /// built in code with a flow label, which the `IP:port` text cannot carry).
    pub fn to_toml(&self) -> String {
        write::deployment(self)
    }

    /// A Linux deployment whose replicas share memory on this host, all with `dir` and
    /// `polling`; `cores[i]` is `(replication_core, background_core)` of replica `i`, and
    /// replicas past the end of `cores` are not pinned. Nothing is validated here: write it out
    /// with [`Deployment::to_toml`] and [`parse`] it to check it.
    pub fn shm_linux(
        name: &str,
        config: mu_nostd::Config,
        tick_ns: u64,
        dir: PathBuf,
        polling: Polling,
        cores: &[(Option<usize>, Option<usize>)],
    ) -> Deployment {
        let replicas = (0..config.replica_count)
            .map(|id| {
                let (replication_core, background_core) =
                    cores.get(id as usize).copied().unwrap_or((None, None));
                ReplicaSpec {
                    id,
                    host: Host::Linux(LinuxHost {
                        fabric: FabricSpec::Shm { dir: dir.clone() },
                        replication_core,
                        background_core,
                        polling,
                        realtime_priority: None,
                        serve: None,
                    }),
                }
            })
            .collect();
        Deployment {
            file: String::new(),
            cluster: Cluster {
                name: name.to_owned(),
                tick_ns,
                config,
            },
            replicas,
        }
    }
}
