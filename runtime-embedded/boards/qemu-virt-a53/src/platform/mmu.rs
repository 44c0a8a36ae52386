//! An identity map with the MMU and caches on.
//!
//! With the MMU off every data access is Device-nGnRnE: exclusive loads and stores (the
//! LDXR/STXR loops that `core::sync::atomic` compiles to, as aarch64-unknown-none has no LSE)
//! are not guaranteed to work there, and neither are unaligned accesses. So RAM is mapped as
//! Normal write-back cacheable inner-shareable memory, the devices as Device-nGnRnE.
//!
//! 4 KiB granule, 32-bit addresses (T0SZ = 32), so the walk starts at level 1 with 1 GiB entries:
//! - 0x0000_0000..0x4000_0000 (flash, GIC, UART, PCIe MMIO window, ECAM): a level-2 table of
//!   2 MiB blocks, all Device, non-executable; [`map_normal`] turns blocks of the PCIe MMIO window
//!   into Normal memory once a BAR that holds memory (the ivshmem window) is placed there;
//! - 0x4000_0000..0x8000_0000 (RAM, 128 MiB used): one Normal block, executable;
//! - above: unmapped (needs `-M virt,highmem=off`, which keeps ECAM and PCIe below 1 GiB).

use core::arch::asm;

const ENTRIES: usize = 512;
const GIB: usize = 1 << 30;
const BLOCK_2M: usize = 2 << 20;

#[repr(C, align(4096))]
struct Table([u64; ENTRIES]);

static mut LEVEL1: Table = Table([0; ENTRIES]);
/// The first GiB, in 2 MiB blocks.
static mut LEVEL2_LOW: Table = Table([0; ENTRIES]);

// Descriptor bits (Arm ARM D8.3).
const BLOCK: u64 = 0b01;
const TABLE: u64 = 0b11;
const ATTR_DEVICE: u64 = 0 << 2; // MAIR_EL1 attribute 0
const ATTR_NORMAL: u64 = 1 << 2; // MAIR_EL1 attribute 1
const INNER_SHAREABLE: u64 = 0b11 << 8;
const ACCESS_FLAG: u64 = 1 << 10;
const NO_EXECUTE: u64 = (1 << 53) | (1 << 54); // PXN | UXN

const DEVICE_BLOCK: u64 = BLOCK | ATTR_DEVICE | ACCESS_FLAG | NO_EXECUTE;
const RAM_BLOCK: u64 = BLOCK | ATTR_NORMAL | INNER_SHAREABLE | ACCESS_FLAG;
const SHARED_BLOCK: u64 = RAM_BLOCK | NO_EXECUTE;

/// Attribute 0: Device-nGnRnE; attribute 1: Normal, inner and outer write-back read/write-allocate.
const MAIR: u64 = 0xff << 8;
/// T0SZ = 32, walks inner/outer write-back cacheable and inner shareable, 4 KiB granule, TTBR1
/// walks disabled (EPD1), 32-bit physical addresses (IPS = 0).
const TCR: u64 = 32 | (0b01 << 8) | (0b01 << 10) | (0b11 << 12) | (1 << 23);
/// SCTLR_EL1: M (MMU), C (data cache), I (instruction cache).
const SCTLR_ENABLE: u64 = (1 << 0) | (1 << 2) | (1 << 12);
/// SCTLR_EL1: A (alignment check) and WXN (writable means never executable), both kept off.
const SCTLR_DISABLE: u64 = (1 << 1) | (1 << 19);

/// Builds the identity map and turns on the MMU and both caches.
///
/// # Safety
/// Call once, on core 0, with the MMU off, before anything else touches the page tables.
pub unsafe fn enable() {
    // SAFETY: the caller guarantees that nothing else uses the tables; raw pointers, as
    // references to a `static mut` are not allowed.
    let level1 = unsafe {
        let (level1, level2) = (&raw mut LEVEL1.0, &raw mut LEVEL2_LOW.0);
        for (index, entry) in (*level2).iter_mut().enumerate() {
            *entry = (index * BLOCK_2M) as u64 | DEVICE_BLOCK;
        }
        (*level1)[0] = level2 as u64 | TABLE;
        (*level1)[1] = GIB as u64 | RAM_BLOCK;
        level1
    };
    // QEMU models no caches. Real silicon would first need the data cache invalidated by
    // set/way here, since the tables were written with the MMU (and so the cache) off.
    // SAFETY: the tables map the running code, its stack and data at their own addresses, so
    // execution goes on unchanged when the MMU comes on.
    unsafe {
        asm!(
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {ttbr0}",
            "dsb ish",
            "tlbi vmalle1",
            "ic iallu",
            "dsb ish",
            "isb",
            "mrs {sctlr}, sctlr_el1",
            "orr {sctlr}, {sctlr}, {enable}",
            "bic {sctlr}, {sctlr}, {disable}",
            "msr sctlr_el1, {sctlr}",
            "isb",
            mair = in(reg) MAIR,
            tcr = in(reg) TCR,
            ttbr0 = in(reg) level1 as u64,
            enable = in(reg) SCTLR_ENABLE,
            disable = in(reg) SCTLR_DISABLE,
            sctlr = out(reg) _,
            options(nostack, preserves_flags),
        )
    };
}

/// Maps `base..base + size` (rounded out to 2 MiB blocks) as Normal cacheable, non-executable
/// memory, for RAM that sits behind a PCIe BAR. It must lie in the first GiB.
pub fn map_normal(base: usize, size: usize) {
    let first = base / BLOCK_2M;
    let end = (base + size).div_ceil(BLOCK_2M);
    assert!(
        size > 0 && end <= ENTRIES,
        "map_normal: outside the first GiB"
    );
    // SAFETY: single core; the blocks change from Device to Normal with break-before-make
    // (invalid, TLB flush, new entry), as the architecture requires for a change of memory type.
    unsafe {
        let level2 = &raw mut LEVEL2_LOW.0;
        for index in first..end {
            core::ptr::write_volatile(&raw mut (*level2)[index], 0);
        }
        asm!(
            "dsb ishst",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        );
        for index in first..end {
            let block = (index * BLOCK_2M) as u64 | SHARED_BLOCK;
            core::ptr::write_volatile(&raw mut (*level2)[index], block);
        }
        asm!("dsb ishst", "isb", options(nostack, preserves_flags));
    }
}
