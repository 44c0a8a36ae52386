//! Monotonic time from TIMER0, the first CMSDK APB timer of the MPS2 (at 0x4000_0000 in the
//! AN385/AN386 memory map; QEMU `hw/arm/mps2.c` clocks it from the 25 MHz SYSCLK).
//!
//! Why not the core's own counters: QEMU does not model the DWT, so CYCCNT never advances, and
//! SysTick is only 24 bits wide (0.67 s at 25 MHz). TIMER0 is a 32-bit down-counter; run
//! free from a reload of `u32::MAX` it wraps every 2^32 ticks, about 171.8 s. [`counter`]
//! extends it to 64 bits in software by counting wraps it sees, so **callers must read the
//! counter at least once every [`WRAP_SECONDS`]** or a whole period goes unnoticed.

use core::cell::Cell;
use core::ptr::{read_volatile, write_volatile};

use cortex_m::interrupt::{self, Mutex};

/// TIMER0's register block (CMSDK APB timer, Arm DDI 0479C).
const TIMER0: usize = 0x4000_0000;
const CTRL: *mut u32 = TIMER0 as *mut u32;
const VALUE: *mut u32 = (TIMER0 + 0x4) as *mut u32;
const RELOAD: *mut u32 = (TIMER0 + 0x8) as *mut u32;
/// CTRL.EN: count on every PCLK edge (external input and interrupt stay off).
const CTRL_ENABLE: u32 = 1;

/// The timer's input clock, SYSCLK.
const FREQUENCY_HZ: u64 = 25_000_000;

/// How long the 32-bit hardware counter takes to wrap: the longest allowed gap between reads.
pub const WRAP_SECONDS: u64 = (1 << 32) / FREQUENCY_HZ;

/// The wraps seen so far (high word) and the last hardware reading (low word). Behind a
/// critical section so that a reader in an interrupt handler cannot lose a wrap.
static EXTENDED: Mutex<Cell<(u32, u32)>> = Mutex::new(Cell::new((0, 0)));

/// Starts TIMER0 counting down from `u32::MAX`, reloading `u32::MAX` on reaching 0.
pub(super) fn init() {
    // SAFETY: TIMER0's registers are valid, aligned MMIO words on this board, and nothing else
    // in the firmware drives TIMER0. Stopping it first makes the VALUE write take effect
    // before counting resumes.
    unsafe {
        write_volatile(CTRL, 0);
        write_volatile(RELOAD, u32::MAX);
        write_volatile(VALUE, u32::MAX);
        write_volatile(CTRL, CTRL_ENABLE);
    }
    interrupt::free(|cs| EXTENDED.borrow(cs).set((0, 0)));
}

/// Ticks since [`init`], counting up, modulo 2^32.
fn hardware_ticks() -> u32 {
    // SAFETY: VALUE is a valid, aligned MMIO word; reading it has no side effects.
    let value = unsafe { read_volatile(VALUE) };
    // VALUE runs u32::MAX, ..., 1, 0, u32::MAX, ...: its complement counts up without a gap.
    !value
}

/// Timer ticks since [`init`], monotonic, at [`frequency_hz`]. Must be called at least once
/// every [`WRAP_SECONDS`] (see the module notes).
pub fn counter() -> u64 {
    interrupt::free(|cs| {
        let state = EXTENDED.borrow(cs);
        let (mut wraps, last) = state.get();
        let now = hardware_ticks();
        if now < last {
            wraps = wraps.wrapping_add(1);
        }
        state.set((wraps, now));
        (u64::from(wraps) << 32) | u64::from(now)
    })
}

/// The rate [`counter`] advances at, in ticks per second.
pub fn frequency_hz() -> u64 {
    FREQUENCY_HZ
}

/// Microseconds since [`init`] (for log timestamps).
pub fn micros() -> u64 {
    counter() / (FREQUENCY_HZ / 1_000_000)
}
