//! Turns the board file (`MU_BOARD_FILE`, default `board-configs/mps2-an386-1.toml`) into
//! constants, checked against what this board offers (`board_configs::firmware::MPS2_AN386`; a
//! problem fails the build with `FILE:LINE:COLUMN: FIELD: REASON`), and into the memory map:
//! `memory.x`, which cortex-m-rt's `link.x` includes, gets RAM and the window from it.

use std::path::PathBuf;

use board_configs::firmware::{build_script, MPS2_AN386};

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let image = build_script(
        &dir.join("../../../board-configs/mps2-an386-1.toml"),
        &MPS2_AN386,
    );
    let host = image.host();
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
        file = image.file()
    );
    std::fs::write(out.join("memory.x"), memory).expect("write memory.x");
    println!("cargo:rustc-link-search={}", out.display());
}
