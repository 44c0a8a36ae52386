//! Process exit through Arm semihosting: QEMU, started with
//! `-semihosting-config enable=on,target=native[,arg=A,arg=B...]`, answers these calls itself.
//!
//! Without a semihosting host (a real board with no debugger attached) the `BKPT 0xAB` that
//! makes the call escalates to a HardFault, so the firmware must not rely on these outside
//! QEMU or a debug probe.

/// Ends the emulation with `code` as QEMU's exit status (the host keeps its low 8 bits).
///
/// Uses SYS_EXIT_EXTENDED, which lets a 32-bit target pass a status; if the host lacks it,
/// the `semihosting` crate falls back to SYS_EXIT, which can only tell 0 from non-zero
/// (QEMU then exits with 0 or 1).
pub fn exit(code: u32) -> ! {
    // The status word travels to the host as is; the sign reinterpretation changes no bits.
    semihosting::process::exit(code as i32)
}
