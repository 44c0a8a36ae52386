//! Arm semihosting (AArch64 `hlt #0xf000`): QEMU's console, the command line, and the exit code.
//! Needs QEMU's `-semihosting-config enable=on,target=native`.

use core::arch::asm;
use core::sync::atomic::{AtomicIsize, Ordering};

const SYS_OPEN: u32 = 0x01;
const SYS_WRITE: u32 = 0x05;
const SYS_GET_CMDLINE: u32 = 0x15;
const SYS_EXIT: u32 = 0x18;
/// SYS_EXIT reason whose subcode QEMU makes its own exit status.
const ADP_STOPPED_APPLICATION_EXIT: usize = 0x20026;
/// SYS_OPEN mode 4 is "w": for ":tt", the console output.
const MODE_WRITE: usize = 4;

/// Makes semihosting call `op` with the parameter block at `block`; returns what QEMU put in x0.
///
/// # Safety
/// `block` must point to the parameter block that `op` expects, with every pointer in it valid.
unsafe fn call(op: u32, block: *mut usize) -> isize {
    let result: isize;
    // SAFETY: the caller guarantees the block; QEMU reads and writes only what it describes.
    unsafe {
        asm!("hlt #0xf000", inout("x0") op as usize => result, in("x1") block, options(nostack))
    };
    result
}

/// Ends QEMU with process exit status `code` (0 means success; the host keeps only the low 8
/// bits, so 256 reads as 0).
pub fn exit(code: u32) -> ! {
    let mut block = [ADP_STOPPED_APPLICATION_EXIT, code as usize];
    // SAFETY: SYS_EXIT takes the two-word block [reason, subcode].
    unsafe { call(SYS_EXIT, block.as_mut_ptr()) };
    // Only reached without semihosting, where `hlt` would have trapped instead.
    loop {
        core::hint::spin_loop();
    }
}

/// The console handle from SYS_OPEN, or -1 until it is open.
static CONSOLE: AtomicIsize = AtomicIsize::new(-1);

fn console() -> isize {
    let handle = CONSOLE.load(Ordering::Relaxed);
    if handle >= 0 {
        return handle;
    }
    let name = b":tt\0";
    let mut block = [name.as_ptr() as usize, MODE_WRITE, name.len() - 1];
    // SAFETY: SYS_OPEN takes [name (NUL-terminated), mode, name length without the NUL].
    let handle = unsafe { call(SYS_OPEN, block.as_mut_ptr()) };
    CONSOLE.store(handle, Ordering::Relaxed);
    handle
}

/// Writes `bytes` to QEMU's semihosting console (its stdout, or the chardev it was given).
pub fn write(mut bytes: &[u8]) {
    let handle = console();
    while handle >= 0 && !bytes.is_empty() {
        let mut block = [handle as usize, bytes.as_ptr() as usize, bytes.len()];
        // SAFETY: SYS_WRITE takes [handle, buffer, length]; it returns how many bytes it did
        // not write.
        let left = unsafe { call(SYS_WRITE, block.as_mut_ptr()) } as usize;
        if left == 0 || left >= bytes.len() {
            return; // all written, or no progress (an error): give up rather than spin
        }
        bytes = &bytes[bytes.len() - left..];
    }
}

/// The command line QEMU was given (`-semihosting-config ...,arg=mu,arg=1` gives `"mu 1"`;
/// without `arg=`, QEMU passes the `-kernel` path). None if it does not fit in `buffer` (with its
/// NUL) or is not UTF-8.
pub fn command_line(buffer: &mut [u8]) -> Option<&str> {
    let mut block = [buffer.as_mut_ptr() as usize, buffer.len()];
    // SAFETY: SYS_GET_CMDLINE takes [buffer, size]; QEMU writes at most `size` bytes and puts the
    // string's length (without its NUL) in the second word.
    let result = unsafe { call(SYS_GET_CMDLINE, block.as_mut_ptr()) };
    let length = block[1];
    if result != 0 || length > buffer.len() {
        return None;
    }
    core::str::from_utf8(&buffer[..length]).ok()
}
