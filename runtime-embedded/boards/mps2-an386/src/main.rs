//! Smoke test of the MPS2 AN386 platform layer under QEMU `mps2-an386`: the timer, the defmt
//! logger, the semihosting command line and exit, atomics, and a 64 KiB region in .bss.
//!
//! Command-line words (`-semihosting-config enable=on,target=native,arg=WORD,...`):
//! `wait=MS` busy-waits MS milliseconds instead of 10 (to check the timer against wall time),
//! `dwt` reports whether the DWT cycle counter advances, `fail` exits with status 1, `panic`
//! panics (status 101).

#![no_std]
#![no_main]

mod platform;

use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m_rt::{entry, exception, ExceptionFrame};
use platform::timer;

/// The size of the stand-in for the replica's region: 64 KiB of words, zeroed, so in .bss.
const REGION_WORDS: usize = 64 * 1024 / 4;
static REGION: [AtomicU32; REGION_WORDS] = [const { AtomicU32::new(0) }; REGION_WORDS];

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[entry]
fn main() -> ! {
    platform::init();
    defmt::info!(
        "timer: {=u64} Hz, read at least every {=u64} s",
        timer::frequency_hz(),
        timer::WRAP_SECONDS
    );

    let mut buf = [MaybeUninit::uninit(); 256];
    let line = platform::command_line(&mut buf);
    defmt::info!("command line: {:?}", line);
    let words = || line.unwrap_or("").split(' ');
    let wait_ms = words()
        .find_map(|w| w.strip_prefix("wait="))
        .and_then(|ms| ms.parse::<u64>().ok())
        .unwrap_or(10);

    busy_wait(wait_ms);
    if words().any(|w| w == "dwt") {
        check_dwt();
    }
    check_atomics();
    check_region();

    if words().any(|w| w == "panic") {
        panic!("panic requested on the command line");
    }
    if words().any(|w| w == "fail") {
        defmt::error!("failure requested on the command line");
        platform::exit(1);
    }
    defmt::info!("smoke test passed");
    platform::exit(0)
}

/// Spins until the timer has advanced `ms` milliseconds, counting the polls on the way.
fn busy_wait(ms: u64) {
    let ticks = timer::frequency_hz() * ms / 1000;
    let start = timer::counter();
    let mut polls: u32 = 0;
    let end = loop {
        polls += 1;
        let now = timer::counter();
        if now - start >= ticks {
            break now;
        }
    };
    defmt::info!(
        "waited {=u64} ms: {=u64} ticks, {=u32} polls",
        ms,
        end - start,
        polls
    );
}

/// Reports whether the DWT cycle counter counts (QEMU does not model the DWT).
fn check_dwt() {
    let mut core = cortex_m::Peripherals::take().expect("taken once");
    core.DCB.enable_trace();
    core.DWT.enable_cycle_counter();
    let before = cortex_m::peripheral::DWT::cycle_count();
    busy_wait(1);
    let after = cortex_m::peripheral::DWT::cycle_count();
    defmt::info!(
        "DWT: has cycle counter {=bool}, CYCCNT {=u32} -> {=u32}",
        cortex_m::peripheral::DWT::has_cycle_counter(),
        before,
        after
    );
}

/// The atomic operations the consensus core uses, on a static (LDREX/STREX on this core).
fn check_atomics() {
    COUNTER.store(5, Ordering::SeqCst);
    defmt::assert_eq!(COUNTER.fetch_add(3, Ordering::SeqCst), 5);
    defmt::assert_eq!(
        COUNTER.compare_exchange(8, 13, Ordering::SeqCst, Ordering::SeqCst),
        Ok(8)
    );
    defmt::assert_eq!(
        COUNTER.compare_exchange(8, 21, Ordering::SeqCst, Ordering::SeqCst),
        Err(13)
    );
    defmt::assert_eq!(COUNTER.load(Ordering::SeqCst), 13);
    defmt::info!("atomics: store, fetch_add, compare_exchange, load ok");
}

/// Writes every word of the region and reads it back.
fn check_region() {
    for (i, word) in REGION.iter().enumerate() {
        word.store(i as u32 ^ 0xA5A5_A5A5, Ordering::Relaxed);
    }
    let bad = REGION
        .iter()
        .enumerate()
        .filter(|(i, word)| word.load(Ordering::Relaxed) != *i as u32 ^ 0xA5A5_A5A5)
        .count();
    defmt::assert_eq!(bad, 0);
    defmt::info!(
        "region: {=usize} bytes at {=usize:#x} written and read back",
        core::mem::size_of_val(&REGION),
        REGION.as_ptr() as usize
    );
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("{}", defmt::Display2Format(info));
    platform::exit(101)
}

/// A fault ends the run with status 102 instead of cortex-m-rt's default endless loop, which
/// would leave QEMU running. No logging: the fault may have hit inside the logger.
#[exception]
unsafe fn HardFault(_frame: &ExceptionFrame) -> ! {
    platform::exit(102)
}
