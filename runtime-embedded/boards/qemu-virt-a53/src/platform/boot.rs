//! Reset entry: `_start` brings core 0 from reset to `crate::main`.
//!
//! Order: park every core but 0; leave EL2 for EL1 if QEMU started us at EL2 (`-M
//! virt,virtualization=on`; plain `-M virt` starts at EL1, EL3 needs `secure=on` and is refused);
//! enable FP/SIMD (Rust uses the NEON registers for ordinary code); set the stack; zero .bss;
//! then, in Rust, install the exception vectors and turn on the MMU and caches (without them
//! every data access is Device-nGnRnE, where exclusives, and so `core::sync::atomic`, are not
//! guaranteed to work); then `crate::main`.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU8, Ordering};

/// QEMU's process exit status when `_start` is entered at an exception level it cannot use (EL3).
pub const UNSUPPORTED_EL_EXIT: u32 = 120;

global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    // Only core 0 (affinity 0.0.0) runs the firmware; the others sleep for good.
    mrs     x0, mpidr_el1
    and     x0, x0, #0xffffff
    cbnz    x0, 9f

    mrs     x19, CurrentEL
    lsr     x19, x19, #2            // x19 = entry EL, handed to Rust below
    cmp     x19, #1
    b.eq    3f
    cmp     x19, #2
    b.eq    2f
    // EL3: semihosting SYS_EXIT(ADP_Stopped_ApplicationExit, UNSUPPORTED_EL_EXIT).
    adr     x1, 8f
    mov     w0, #0x18
    hlt     #0xf000
    b       9f

2:  // EL2: run EL1 in AArch64 with the physical counter, FP/SIMD untrapped, MMU off.
    mov     x0, #(1 << 31)          // HCR_EL2.RW
    msr     hcr_el2, x0
    mov     x0, #3                  // CNTHCTL_EL2.EL1PCTEN | EL1PCEN
    msr     cnthctl_el2, x0
    msr     cntvoff_el2, xzr
    mov     x0, #0x33ff             // CPTR_EL2: RES1 bits only, TFP clear
    msr     cptr_el2, x0
    ldr     x0, =0x30d00800         // SCTLR_EL1: RES1 bits only (MMU, caches off)
    msr     sctlr_el1, x0
    mov     x0, #0x3c5              // SPSR_EL2: EL1h, DAIF masked
    msr     spsr_el2, x0
    adr     x0, 3f
    msr     elr_el2, x0
    eret

3:  // EL1.
    mov     x0, #(3 << 20)          // CPACR_EL1.FPEN: FP/SIMD does not trap
    msr     cpacr_el1, x0
    isb
    ldr     x0, =__stack_top
    mov     sp, x0
    ldr     x0, =__bss_start        // both ends 16-byte aligned (link.x)
    ldr     x1, =__bss_end
4:  cmp     x0, x1
    b.hs    5f
    stp     xzr, xzr, [x0], #16
    b       4b
5:  mov     x0, x19
    bl      {rust_entry}
9:  wfe
    b       9b

    .balign 8
8:  .quad   0x20026, {unsupported_el_exit}
    .ltorg
"#,
    rust_entry = sym rust_entry,
    unsupported_el_exit = const UNSUPPORTED_EL_EXIT,
);

// The EL1 vector table: 16 entries of 128 bytes, 2 KiB aligned. Interrupts are never enabled, so
// every entry is a fault; each passes its index (which kind, taken from where) to Rust.
global_asm!(
    r#"
    .section .text.vectors, "ax"
    .balign 2048
    .global __exception_vectors     // global: rust_entry may be in another object file
__exception_vectors:
    .irp index, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    .balign 128
    mov     x0, #\index
    b       {exception}
    .endr
"#,
    exception = sym exception,
);

/// Reports a CPU exception, then hands over to the panic handler.
extern "C" fn exception(index: u64) -> ! {
    let (esr, elr, far): (u64, u64, u64);
    // SAFETY: reading the syndrome, return-address and fault-address registers has no side effects.
    unsafe {
        asm!(
            "mrs {}, esr_el1", "mrs {}, elr_el1", "mrs {}, far_el1",
            out(reg) esr, out(reg) elr, out(reg) far,
            options(nomem, nostack, preserves_flags),
        )
    };
    defmt::error!(
        "CPU exception: vector {=u64}, ESR_EL1 {=u64:#x}, ELR_EL1 {=u64:#x}, FAR_EL1 {=u64:#x}",
        index,
        esr,
        elr,
        far
    );
    panic!("CPU exception")
}

/// The exception level `_start` was entered at (1 or 2); 0 before boot finished.
static ENTRY_EL: AtomicU8 = AtomicU8::new(0);

/// Called once by `_start` on core 0 at EL1, with a stack and a zeroed .bss, MMU off.
extern "C" fn rust_entry(entry_el: u64) -> ! {
    // SAFETY: the table is 2 KiB aligned and its entries never return; no exception is pending.
    unsafe {
        asm!(
            "adrp {0}, __exception_vectors",
            "add {0}, {0}, :lo12:__exception_vectors",
            "msr vbar_el1, {0}",
            "isb",
            out(reg) _,
            options(nomem, nostack, preserves_flags),
        )
    };
    // SAFETY: runs once, on the only running core, before anything relies on memory attributes.
    unsafe { super::mmu::enable() };
    ENTRY_EL.store(entry_el as u8, Ordering::Relaxed);
    crate::main()
}

/// The exception level the firmware runs at now (always 1 after boot).
pub fn current_el() -> u8 {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) el, options(nomem, nostack, preserves_flags)) };
    ((el >> 2) & 3) as u8
}

/// The exception level QEMU started the core at: 1 for `-M virt`, 2 with `virtualization=on`.
pub fn entry_el() -> u8 {
    ENTRY_EL.load(Ordering::Relaxed)
}
