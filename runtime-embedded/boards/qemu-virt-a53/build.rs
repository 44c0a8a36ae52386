//! Links with `link.x`, and turns the board file (`MU_BOARD_FILE`, default
//! `board-configs/qemu-virt-a53-3.toml`) into constants, checked against what this board offers
//! (`board_configs::firmware::QEMU_VIRT_A53`); a problem fails the build with
//! `FILE:LINE:COLUMN: FIELD: REASON`.

use std::path::PathBuf;

use board_configs::firmware::{build_script, QEMU_VIRT_A53};

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    println!("cargo:rustc-link-search={}", dir.display());
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    println!("cargo:rerun-if-changed=link.x");
    build_script(
        &dir.join("../../../board-configs/qemu-virt-a53-3.toml"),
        &QEMU_VIRT_A53,
    );
}
