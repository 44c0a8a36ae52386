//! Links with `link.x`, and turns the board file into constants: `MU_BOARD_FILE` (default
//! `board-configs/qemu-virt-a53-3.toml`) is read and checked against what this board offers; a
//! problem fails the build with `FILE:LINE:COLUMN: FIELD: REASON`.

use std::path::PathBuf;

use board_configs::firmware::{image, BoardRules};
use runtime_embedded::run::{ENTRY_BYTES, SLOT_BYTES};

/// What the QEMU `virt` machine (with `highmem=off`) and this firmware offer.
const RULES: BoardRules = BoardRules {
    board: "qemu-virt-a53",
    // `-m` sets the size; RAM always starts here and the image is linked at base + 512 KiB.
    ram_base: Some(0x4000_0000),
    ram_size_max: 0x4000_0000,
    // The 32-bit PCIe MMIO window, where the ivshmem BAR is placed.
    window_base_range: 0x1000_0000..0x3eff_0000,
    window_size_power_of_two: true,
    slot_bytes_max: SLOT_BYTES as u32,
    entry_bytes_max: ENTRY_BYTES as u32,
    // The generic timer's frequency under QEMU (CNTFRQ_EL0).
    counter_hz: 62_500_000,
    replicas_max: 7,
};

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    println!("cargo:rustc-link-search={}", dir.display());
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    println!("cargo:rerun-if-changed=link.x");
    println!("cargo:rerun-if-env-changed=MU_BOARD_FILE");
    let file = std::env::var_os("MU_BOARD_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("../../../board-configs/qemu-virt-a53-3.toml"));
    println!("cargo:rerun-if-changed={}", file.display());
    let image = match image(&file, &RULES) {
        Ok(image) => image,
        Err(e) => {
            // Cargo shows a build script's stderr when it fails: the error is the first line.
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("board.rs");
    std::fs::write(&out, image.constants_rs()).expect("write board constants");
}
