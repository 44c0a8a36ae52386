//! Smoke test of the platform layer (the real firmware replaces this file's body).
//!
//! The semihosting command line picks what runs; its first word is the program name:
//! - `mu` (or anything else): report the platform, check atomics on RAM and on the ivshmem
//!   window, time 10 ms, exit 0;
//! - `mu exit N`: exit with status N at once;
//! - `mu count ID`: run with a second VM on the same window; each adds COUNT_PER_VM to a shared
//!   counter, and the one that finishes last checks the total.

#![no_std]
#![no_main]

mod platform;

use core::sync::atomic::{AtomicU32, Ordering};

use platform::{boot, ivshmem, semihosting, timer};

/// Where the ivshmem window is placed (in `virt`'s 32-bit PCIe MMIO window).
const WINDOW_ADDRESS: u64 = 0x1000_0000;
const SMOKE_ADDS: u32 = 100_000;
const COUNT_VMS: u32 = 2;
const COUNT_PER_VM: u32 = 1_000_000;

/// A word of RAM, to check atomics outside the window too.
static RAM_WORD: AtomicU32 = AtomicU32::new(0);

fn main() -> ! {
    let start = timer::micros();
    defmt::info!(
        "CurrentEL {=u8} (entered at EL{=u8})",
        boot::current_el(),
        boot::entry_el()
    );
    defmt::info!("timer: {=u64} Hz", timer::frequency_hz());
    let mut buffer = [0u8; 128];
    let command_line = semihosting::command_line(&mut buffer);
    defmt::info!("command line: {=?}", command_line);
    let mut words = command_line.unwrap_or("").split_whitespace().skip(1);
    let command = words.next();
    let argument = words.next().and_then(|word| word.parse::<u32>().ok());

    if command == Some("exit") {
        semihosting::exit(argument.unwrap_or(0));
    }

    let Some(window) = ivshmem::map(WINDOW_ADDRESS) else {
        defmt::error!("no ivshmem device: run QEMU with -device ivshmem-plain,memdev=...");
        semihosting::exit(2);
    };
    defmt::info!(
        "ivshmem window at {=usize:#x}, {=usize} bytes",
        window.base,
        window.size
    );
    // SAFETY: the window is mapped, Normal memory, 2 MiB aligned and at least 4 KiB long, and is
    // only ever accessed through atomics, here and in the other VMs.
    let shared = unsafe { &*(window.base as *const [AtomicU32; 4]) };

    if command == Some("count") {
        count(shared, argument.unwrap_or(0));
    }

    check_atomics("RAM", &RAM_WORD);
    check_atomics("window word 0", &shared[0]);

    let ticks = timer::frequency_hz() / 100;
    let begin = timer::counter();
    while timer::counter() - begin < ticks {}
    let waited = timer::counter() - begin;
    defmt::info!("waited 10 ms: {=u64} ticks", waited);

    defmt::info!("smoke test passed in {=u64} us", timer::micros() - start);
    semihosting::exit(0)
}

/// SMOKE_ADDS fetch_adds must all land, and a compare_exchange succeed only on the right value.
fn check_atomics(name: &str, word: &AtomicU32) {
    let before = word.load(Ordering::SeqCst);
    for _ in 0..SMOKE_ADDS {
        word.fetch_add(1, Ordering::Relaxed);
    }
    let after = word.load(Ordering::SeqCst);
    let expected = before.wrapping_add(SMOKE_ADDS);
    let stale = word.compare_exchange(before, 0, Ordering::SeqCst, Ordering::SeqCst);
    let swapped = word.compare_exchange(after, 7, Ordering::SeqCst, Ordering::SeqCst);
    let ok = after == expected && stale == Err(after) && swapped == Ok(after);
    defmt::info!(
        "{=str}: {=u32} -> {=u32}, CAS {=bool}",
        name,
        before,
        after,
        ok
    );
    if !ok || word.load(Ordering::SeqCst) != 7 {
        defmt::panic!("atomics on {=str} are broken", name);
    }
}

/// The two-VM check: words are [arrived, counter, finished].
fn count(shared: &[AtomicU32; 4], id: u32) -> ! {
    let [arrived, counter, finished, _] = shared;
    // Start together, so that the adds of the VMs really interleave.
    arrived.fetch_add(1, Ordering::SeqCst);
    while arrived.load(Ordering::SeqCst) < COUNT_VMS {}
    let begin = timer::micros();
    for _ in 0..COUNT_PER_VM {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    let took = timer::micros() - begin;
    let place = finished.fetch_add(1, Ordering::SeqCst) + 1;
    defmt::info!(
        "VM {=u32}: {=u32} adds in {=u64} us, finished {=u32}.",
        id,
        COUNT_PER_VM,
        took,
        place
    );
    if place < COUNT_VMS {
        semihosting::exit(0);
    }
    let total = counter.load(Ordering::SeqCst);
    let expected = COUNT_VMS * COUNT_PER_VM;
    if total != expected {
        defmt::error!(
            "VM {=u32}: shared counter {=u32}, expected {=u32}",
            id,
            total,
            expected
        );
        semihosting::exit(1);
    }
    defmt::info!("VM {=u32}: shared counter {=u32}, as expected", id, total);
    semihosting::exit(0)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(at) => defmt::error!("panic at {=str}:{=u32}", at.file(), at.line()),
        None => defmt::error!("panic"),
    }
    semihosting::exit(101)
}
