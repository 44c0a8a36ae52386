#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # runtime-embedded: Mu in firmware
//!
//! A `no_std`, allocation-free host for the Mu core on bare-metal boards:
//!
//! - [`board::Board`]: what a board provides (tick counter, shared window, identity, halt);
//! - [`app::Application`] and [`app::Workload`]: what a replica hosts (any deterministic state
//!   machine with a digest of its state) and what it submits while it leads;
//! - [`run::run`]: one loop that polls the responder, both planes and the workload;
//! - [`fabric::WindowFabric`] and [`responder::Responder`]: the Fabric contract over a shared
//!   memory window (an ivshmem BAR under QEMU): per-peer ordering, completions, and permissions
//!   whose revoke holds even against a write in flight ([`permissions`]);
//! - [`fail_safe`]: fate sharing from the panic handler;
//! - [`telemetry`]: what each replica reports in the window;
//! - [`sessions`]: exactly-once commands: an application inside
//!   [`mu_apps::session::ExactlyOnce`], its workload submitting through [`sessions::Sessions`];
//! - [`setpoints`]: the default application, a controller's setpoint table, with the snapshots
//!   a restarted or lapped replica installs (state transfer), and its workload, a sweep over the
//!   axes.
//!
//! Logging goes through `defmt` (feature `defmt`); the board binary installs the global logger.
//! Board binaries live in `runtime-embedded/boards/`, one crate per board, each with a build
//! script that turns its board file (`board-configs/`) into constants.

#[macro_use]
mod fmt;

pub mod app;
pub mod board;
pub mod fabric;
pub mod fail_safe;
pub mod permissions;
pub mod responder;
pub mod ring;
pub mod run;
pub mod sessions;
pub mod setpoints;
pub mod telemetry;
pub mod window;
pub mod words;

pub use app::{Application, Transfers, Workload};
pub use board::{Board, ExitCode};
pub use run::{run, Firmware, Report, StartError, Statics, Step, Ticker};
