//! The Arm generic timer's physical counter: monotonic, shared by all cores, 62.5 MHz in QEMU.

use core::arch::asm;

/// The physical counter, in ticks of [`frequency_hz`].
pub fn counter() -> u64 {
    let ticks: u64;
    // SAFETY: reading CNTPCT_EL0 has no side effects (EL1 may, see boot). The `isb` keeps the
    // read from being done early, out of program order.
    unsafe { asm!("isb", "mrs {}, cntpct_el0", out(reg) ticks, options(nostack, preserves_flags)) };
    ticks
}

/// The counter's frequency, as firmware (here QEMU) set it in CNTFRQ_EL0.
pub fn frequency_hz() -> u64 {
    let hz: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) hz, options(nomem, nostack, preserves_flags)) };
    hz
}

/// Microseconds since reset; exact, and without overflow for any counter value.
pub fn micros() -> u64 {
    let (ticks, hz) = (counter(), frequency_hz());
    ticks / hz * 1_000_000 + ticks % hz * 1_000_000 / hz
}
