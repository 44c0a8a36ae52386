//! The platform layer of the MPS2 AN386 (Cortex-M4F) as QEMU's `mps2-an386` models it:
//! monotonic time, the defmt logger and its timestamp, and the process exit through Arm
//! semihosting (QEMU `-semihosting-config enable=on,target=native`).
//!
//! Call [`init`] once, first thing in `main`; everything else here may be called afterwards.

pub mod semihosting;
pub mod timer;

mod log;

pub use semihosting::exit;

/// Brings up what the other modules need: starts the free-running timer.
pub fn init() {
    timer::init();
}
