//! The platform layer of the QEMU `virt` board with a Cortex-A53: everything the firmware needs
//! from the machine, and nothing about Mu.

pub mod boot;
pub mod ivshmem;
pub mod logger;
pub mod mmu;
pub mod semihosting;
pub mod timer;
