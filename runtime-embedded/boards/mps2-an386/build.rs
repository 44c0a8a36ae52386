//! Turns the board file into constants and into the memory map: `MU_BOARD_FILE` (default
//! `board-configs/mps2-an386-1.toml`) is read and checked against what this board offers (a
//! problem fails the build with `FILE:LINE:COLUMN: FIELD: REASON`); `memory.x`, which
//! cortex-m-rt's `link.x` includes, gets RAM and the window from it.

use std::path::PathBuf;

use board_configs::firmware::{image, BoardRules};
use runtime_embedded::run::{ENTRY_BYTES, SLOT_BYTES};

/// What the MPS2 AN386 (as QEMU models it) and this firmware offer.
const RULES: BoardRules = BoardRules {
    board: "mps2-an386",
    // The 4 MiB data SSRAM; RAM and the window are carved out of it.
    ram_base: Some(0x2000_0000),
    ram_size_max: 0x40_0000,
    window_base_range: 0x2000_0000..0x2040_0000,
    window_size_power_of_two: false,
    slot_bytes_max: SLOT_BYTES as u32,
    entry_bytes_max: ENTRY_BYTES as u32,
    // The CMSDK timer runs at the 25 MHz system clock.
    counter_hz: 25_000_000,
    // One board, one replica: a single-node self-test (there is no shared window to others).
    replicas_max: 1,
};

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-env-changed=MU_BOARD_FILE");
    let file = std::env::var_os("MU_BOARD_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("../../../board-configs/mps2-an386-1.toml"));
    println!("cargo:rerun-if-changed={}", file.display());
    let image = match image(&file, &RULES) {
        Ok(image) => image,
        Err(e) => {
            // Cargo shows a build script's stderr when it fails: the error is the first line.
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    std::fs::write(out.join("board.rs"), image.constants_rs()).expect("write board constants");
    let host = &image.replicas()[0].1;
    let memory = format!(
        "/* Written by build.rs from {file}. */\n\
         MEMORY\n{{\n  FLASH  : ORIGIN = 0x00000000, LENGTH = 4M\n  \
         RAM    : ORIGIN = {:#x}, LENGTH = {:#x}\n  WINDOW : ORIGIN = {:#x}, LENGTH = {:#x}\n}}\n\
         /* The shared window (here: this replica's region and rings), apart from .bss. */\n\
         SECTIONS\n{{\n  .window (NOLOAD) : ALIGN(4096)\n  {{\n    KEEP(*(.window .window.*));\n  \
         }} > WINDOW\n}}\nINSERT AFTER .bss;\n",
        host.ram_base,
        host.ram_size,
        host.window_base,
        host.window_size,
        file = file.display()
    );
    std::fs::write(out.join("memory.x"), memory).expect("write memory.x");
    println!("cargo:rustc-link-search={}", out.display());
}
