//! The defmt global logger: frames go out through semihosting's console, timestamped in µs.
//!
//! One core and no interrupts, so a flag is all the locking needed. Bytes are gathered into a
//! small buffer and written per frame, since each semihosting call is a trap into QEMU.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use super::{semihosting, timer};

defmt::timestamp!("{=u64:us}", timer::micros());

#[defmt::global_logger]
struct Logger;

/// Bytes held back before a semihosting write.
const BUFFER_SIZE: usize = 256;

struct Output {
    bytes: [u8; BUFFER_SIZE],
    length: usize,
}

impl Output {
    fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.length == BUFFER_SIZE {
                self.flush();
            }
            let take = data.len().min(BUFFER_SIZE - self.length);
            self.bytes[self.length..self.length + take].copy_from_slice(&data[..take]);
            self.length += take;
            data = &data[take..];
        }
    }

    fn flush(&mut self) {
        semihosting::write(&self.bytes[..self.length]);
        self.length = 0;
    }
}

struct State {
    encoder: defmt::Encoder,
    output: Output,
}

/// Set between `acquire` and `release`.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The logger's state, owned by whoever holds `TAKEN`.
struct Shared(UnsafeCell<State>);

// SAFETY: one core, interrupts never enabled, and `TAKEN` serialises the logger's users.
unsafe impl Sync for Shared {}

static STATE: Shared = Shared(UnsafeCell::new(State {
    encoder: defmt::Encoder::new(),
    output: Output {
        bytes: [0; BUFFER_SIZE],
        length: 0,
    },
}));

/// The logger's state.
///
/// # Safety
/// Only between `acquire` and `release`, which `TAKEN` makes exclusive on this single core.
unsafe fn state() -> &'static mut State {
    // SAFETY: see above.
    unsafe { &mut *STATE.0.get() }
}

// SAFETY: a frame is only written between acquire and release, and one core with interrupts
// masked means no two frames interleave.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        // SAFETY: we hold (or now take over) the logger.
        let State { encoder, output } = unsafe { state() };
        if TAKEN.swap(true, Ordering::Acquire) {
            // Re-entered: a fault or panic while logging. End the broken frame with a 0 byte,
            // rzCOBS's frame delimiter, so the decoder drops it and reads the report after it.
            output.push(&[0]);
            *encoder = defmt::Encoder::new();
        }
        encoder.start_frame(|bytes| output.push(bytes));
    }

    unsafe fn flush() {
        // SAFETY: called between acquire and release.
        unsafe { state() }.output.flush();
    }

    unsafe fn release() {
        // SAFETY: called between acquire and release.
        let State { encoder, output } = unsafe { state() };
        encoder.end_frame(|bytes| output.push(bytes));
        output.flush();
        TAKEN.store(false, Ordering::Release);
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: called between acquire and release.
        let State { encoder, output } = unsafe { state() };
        encoder.write(bytes, |bytes| output.push(bytes));
    }
}
