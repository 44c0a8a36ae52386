//! The ivshmem window: memory that several QEMU VMs share, through an `ivshmem-plain` PCIe
//! device whose BAR2 is that memory. No firmware assigns BARs on `virt`, so this does.
//!
//! Needs `-M virt,highmem=off` (the ECAM is then at 0x3f00_0000, bus 0 is the root bus QEMU puts
//! `-device ivshmem-plain` on) and the window placed in the 32-bit PCIe MMIO window.

use core::ops::Range;
use core::ptr;

use super::mmu;

/// PCIe configuration space (ECAM) of `virt` with `highmem=off`.
const ECAM_BASE: usize = 0x3f00_0000;
/// `virt`'s 32-bit PCIe MMIO window.
const MMIO_WINDOW: Range<u64> = 0x1000_0000..0x3eff_0000;
/// Red Hat's vendor id and the ivshmem device id.
const IVSHMEM_ID: u32 = (0x1110 << 16) | 0x1af4;

const COMMAND: usize = 0x04;
const COMMAND_MEMORY_ENABLE: u16 = 1 << 1;
/// BAR2, the shared memory: 64 bits wide, so its high half is BAR3.
const BAR2_LOW: usize = 0x18;
const BAR2_HIGH: usize = 0x1c;
/// A memory BAR's type field, bits 2:1: 0b10 is "64-bit".
const BAR_TYPE_MASK: u32 = 0b110;
const BAR_TYPE_64: u32 = 0b100;

/// The shared memory, identity-mapped as Normal cacheable memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub struct Window {
    pub base: usize,
    pub size: usize,
}

/// Function 0 of `device` on bus 0: the address of its config-space register at `offset`.
fn config(device: usize, offset: usize) -> usize {
    ECAM_BASE | (device << 15) | offset
}

fn read32(device: usize, offset: usize) -> u32 {
    // SAFETY: the ECAM is mapped as Device memory; config reads have no side effects.
    unsafe { ptr::read_volatile(config(device, offset) as *const u32) }
}

fn write32(device: usize, offset: usize, value: u32) {
    // SAFETY: the ECAM is mapped as Device memory; callers write only the ivshmem device's BAR.
    unsafe { ptr::write_volatile(config(device, offset) as *mut u32, value) }
}

fn read16(device: usize, offset: usize) -> u16 {
    // SAFETY: as in `read32`.
    unsafe { ptr::read_volatile(config(device, offset) as *const u16) }
}

fn write16(device: usize, offset: usize, value: u16) {
    // SAFETY: as in `write32`; a 16-bit write of COMMAND leaves STATUS (write-1-to-clear) alone.
    unsafe { ptr::write_volatile(config(device, offset) as *mut u16, value) }
}

/// Finds the ivshmem device, places its BAR2 at `bar_address` and maps the window there.
/// None if the machine has no ivshmem device.
///
/// `bar_address` must be aligned to the window's size and to 2 MiB (the mapping's block size),
/// and the window must fit in the PCIe MMIO window (0x1000_0000..0x3eff_0000): these are
/// constants of the firmware, so a wrong one panics.
pub fn map(bar_address: u64) -> Option<Window> {
    let device = (0..32).find(|&device| read32(device, 0) == IVSHMEM_ID)?;

    // Stop decoding while the BAR is sized and moved.
    let command = read16(device, COMMAND);
    write16(device, COMMAND, command & !COMMAND_MEMORY_ENABLE);

    // Sizing: write all ones, read back; the address bits that stay zero give the size.
    write32(device, BAR2_LOW, u32::MAX);
    write32(device, BAR2_HIGH, u32::MAX);
    let low = read32(device, BAR2_LOW);
    let high = read32(device, BAR2_HIGH);
    assert_eq!(
        low & BAR_TYPE_MASK,
        BAR_TYPE_64,
        "ivshmem BAR2 is not 64-bit"
    );
    let mask = (u64::from(high) << 32) | u64::from(low & !0xf);
    let size = (!mask).wrapping_add(1);

    assert!(
        bar_address % size == 0 && bar_address % (2 << 20) == 0,
        "ivshmem: misaligned bar_address"
    );
    assert!(
        MMIO_WINDOW.start <= bar_address && bar_address + size <= MMIO_WINDOW.end,
        "ivshmem: window outside the PCIe MMIO window"
    );
    write32(device, BAR2_LOW, bar_address as u32);
    write32(device, BAR2_HIGH, (bar_address >> 32) as u32);
    write16(device, COMMAND, command | COMMAND_MEMORY_ENABLE);

    let window = Window {
        base: bar_address as usize,
        size: size as usize,
    };
    mmu::map_normal(window.base, window.size);
    Some(window)
}
