//! Firmware images: a board crate's build script reads its board file at build time, checks it
//! against what the board and the firmware can do ([`BoardRules`]), and turns it into Rust
//! constants ([`FirmwareImage::constants_rs`]). Any problem fails the build with a
//! [`ConfigFileError`] naming the file, line, column and field.
//!
//! A board file is a deployment file of the usual schema whose replicas are all
//! `[replica.firmware]` on the same board, with the same RAM and the same window: one image
//! serves every replica (each learns its id at run time), and every replica maps the same window.
//!
//! ```no_run
//! // build.rs of a board crate, with board-configs as a build-dependency.
//! use board_configs::firmware::{build_script, QEMU_VIRT_A53};
//!
//! fn main() {
//!     let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
//!     // MU_BOARD_FILE, if set, wins over this default.
//!     build_script(&dir.join("../../../board-configs/qemu-virt-a53-3.toml"), &QEMU_VIRT_A53);
//! }
//! // In the firmware: mod board { include!(concat!(env!("OUT_DIR"), "/board.rs")); }
//! ```

use crate::read::{self, Parsed};
use crate::{Cluster, ConfigFileError, FirmwareHost, Host};
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use window_layout::firmware::{ENTRY_BYTES, SLOT_BYTES};
use window_layout::WindowLayout;

#[cfg(test)]
mod tests;

type Result<T> = std::result::Result<T, ConfigFileError>;

/// What one board and its firmware image can run; a board crate's build script states these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoardRules {
    /// The board's name; every replica's `board` must be this.
    pub board: &'static str,
    /// Where the board's RAM starts, when it is fixed: `ram_base` must then equal it.
    pub ram_base: Option<u64>,
    /// Most bytes of RAM the board has: `ram_size` must not exceed it.
    pub ram_size_max: u64,
    /// Where the board can map the window: all of `window_base..window_base + window_size`
    /// must lie inside.
    pub window_base_range: Range<u64>,
    /// The window is a PCI BAR: its size must be a power of two and its base a multiple of it.
    pub window_size_power_of_two: bool,
    /// Bytes of the firmware's slot buffer (`window_layout::firmware::SLOT_BYTES`): the largest
    /// `cluster.slot_size`.
    pub slot_bytes_max: u32,
    /// Bytes of the firmware's entry buffer (`window_layout::firmware::ENTRY_BYTES`): the largest
    /// command, [`mu_nostd::Config::entry_bytes_max`].
    pub entry_bytes_max: u32,
    /// Frequency of the board's tick counter: a core tick must last at least one of its periods,
    /// or time could not advance tick by tick.
    pub counter_hz: u64,
    /// Most replicas the board runs in one cluster.
    pub replicas_max: u8,
}

/// QEMU `virt` with a Cortex-A53 (`runtime-embedded/boards/qemu-virt-a53`, `-M virt,highmem=off`):
/// RAM at 1 GiB (the image is linked 512 KiB in), the window an ivshmem BAR in the 32-bit PCIe
/// MMIO window, the generic timer at 62.5 MHz.
pub const QEMU_VIRT_A53: BoardRules = BoardRules {
    board: "qemu-virt-a53",
    ram_base: Some(0x4000_0000),
    ram_size_max: 0x4000_0000,
    window_base_range: 0x1000_0000..0x3eff_0000,
    window_size_power_of_two: true,
    slot_bytes_max: SLOT_BYTES as u32,
    entry_bytes_max: ENTRY_BYTES as u32,
    counter_hz: 62_500_000,
    replicas_max: 7,
};

/// The Arm MPS2 AN386, Cortex-M4F (`runtime-embedded/boards/mps2-an386`, QEMU `mps2-an386`):
/// 4 MiB of data SRAM that RAM and the window are carved out of, the CMSDK timer at the 25 MHz
/// system clock, and a single replica (nothing to share a window with).
pub const MPS2_AN386: BoardRules = BoardRules {
    board: "mps2-an386",
    ram_base: Some(0x2000_0000),
    ram_size_max: 0x40_0000,
    window_base_range: 0x2000_0000..0x2040_0000,
    window_size_power_of_two: false,
    slot_bytes_max: SLOT_BYTES as u32,
    entry_bytes_max: ENTRY_BYTES as u32,
    counter_hz: 25_000_000,
    replicas_max: 1,
};

/// What a board crate's `build.rs` does with its board file: reads `MU_BOARD_FILE` (or
/// `default_file`), checks it against `rules`, writes the constants to `$OUT_DIR/board.rs` and
/// tells cargo when to run again. A problem ends the build script with
/// `error: FILE:LINE:COLUMN: FIELD: REASON` (cargo shows it) and exit code 1.
pub fn build_script(default_file: &Path, rules: &BoardRules) -> FirmwareImage {
    println!("cargo:rerun-if-env-changed=MU_BOARD_FILE");
    let file =
        std::env::var_os("MU_BOARD_FILE").map_or_else(|| default_file.to_owned(), PathBuf::from);
    println!("cargo:rerun-if-changed={}", file.display());
    let image = image(&file, rules).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    });
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    if let Err(e) = std::fs::write(out.join("board.rs"), image.constants_rs()) {
        eprintln!(
            "error: cannot write {}: {e}",
            out.join("board.rs").display()
        );
        std::process::exit(1);
    }
    image
}

/// A board file that passed its board's rules: what one firmware image is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareImage {
    /// The path as given to [`image`], for errors and cargo.
    file: String,
    cluster: Cluster,
    replicas: Vec<(u8, FirmwareHost)>,
    window_bytes: u64,
}

/// Reads the board file at `path` and checks it against `rules`; errors name the file, line,
/// column and field.
pub fn image(path: &Path, rules: &BoardRules) -> Result<FirmwareImage> {
    let (file, source) = crate::read_file(path)?;
    image_from(&source, &file, rules)
}

/// [`image`] of a board file already read; `file` names it.
fn image_from(source: &str, file: &str, rules: &BoardRules) -> Result<FirmwareImage> {
    let parsed = read::parsed(source, file)?;
    check_cluster(&parsed, rules)?;
    let replicas = firmware_replicas(&parsed, rules)?;
    let cluster = parsed.deployment.cluster.clone();
    // The parser checked every window against this layout, so it exists.
    let window_bytes = WindowLayout::new(&cluster.config).map_or(0, |w| w.bytes);
    Ok(FirmwareImage {
        file: file.to_owned(),
        cluster,
        replicas,
        window_bytes,
    })
}

/// The cluster values the firmware's buffers and the board's counter limit.
fn check_cluster(p: &Parsed<'_>, rules: &BoardRules) -> Result<()> {
    let (cluster, board) = (&p.deployment.cluster, rules.board);
    let c = &cluster.config;
    if c.replica_count > rules.replicas_max {
        return Err(p.error(
            "cluster.replicas",
            &format!(
                "board \"{board}\" runs at most {} replicas (found {})",
                rules.replicas_max, c.replica_count
            ),
        ));
    }
    if c.slot_size > rules.slot_bytes_max {
        return Err(p.error(
            "cluster.slot_size",
            &format!(
                "the firmware's slot buffer holds {} bytes (found {})",
                rules.slot_bytes_max, c.slot_size
            ),
        ));
    }
    if c.entry_bytes_max() > rules.entry_bytes_max {
        return Err(p.error(
            "cluster.entry_slots_max",
            &format!(
                "the largest command, {} slots of {} payload bytes = {} bytes, exceeds the \
                 firmware's {}-byte entry buffer",
                c.entry_slots_max,
                c.slot_payload_bytes(),
                c.entry_bytes_max(),
                rules.entry_bytes_max
            ),
        ));
    }
    // tick_ns * counter_hz >= 1e9, in integers.
    let tick_ns_min = 1_000_000_000u64.div_ceil(rules.counter_hz.max(1));
    if cluster.tick_ns < tick_ns_min {
        return Err(p.error(
            "cluster.tick_ns",
            &format!(
                "must be at least {tick_ns_min}, one period of board \"{board}\"'s {} Hz \
                 counter (found {})",
                rules.counter_hz, cluster.tick_ns
            ),
        ));
    }
    Ok(())
}

/// Every replica's board, in id order, checked in file order so that the first error is the
/// first in the file.
fn firmware_replicas(p: &Parsed<'_>, rules: &BoardRules) -> Result<Vec<(u8, FirmwareHost)>> {
    let mut in_file: Vec<(usize, u8, &Host)> = p
        .deployment
        .replicas
        .iter()
        .map(|r| (p.replica_index(r.id), r.id, &r.host))
        .collect();
    in_file.sort_by_key(|&(index, ..)| index);
    let mut first: Option<(usize, &FirmwareHost)> = None;
    let mut replicas: Vec<(u8, FirmwareHost)> = Vec::new();
    for (index, id, host) in in_file {
        let Host::Firmware(f) = host else {
            return Err(p.error(
                &format!("replica[{index}].linux"),
                "a board file describes firmware replicas only: use [replica.firmware]",
            ));
        };
        let field = |key: &str| format!("replica[{index}].firmware.{key}");
        check_board(p, rules, &field, f)?;
        match first {
            None => first = Some((index, f)),
            Some((first_index, first_host)) => {
                same_memory(p, &field, f, first_index, first_host)?;
            }
        }
        replicas.push((id, f.clone()));
    }
    replicas.sort_by_key(|&(id, _)| id);
    Ok(replicas)
}

/// One replica's board against the rules: its name, its RAM and where its window is.
fn check_board(
    p: &Parsed<'_>,
    rules: &BoardRules,
    field: &dyn Fn(&str) -> String,
    f: &FirmwareHost,
) -> Result<()> {
    let board = rules.board;
    let fail = |key: &str, reason: String| Err(p.error(&field(key), &reason));
    if f.board != board {
        return fail(
            "board",
            format!(
                "this image is for board \"{board}\" (found \"{}\")",
                f.board
            ),
        );
    }
    match rules.ram_base {
        Some(base) if f.ram_base != base => {
            return fail(
                "ram_base",
                format!(
                    "board \"{board}\"'s RAM starts at {} (found {})",
                    hex(base),
                    hex(f.ram_base)
                ),
            )
        }
        _ => {}
    }
    if f.ram_size > rules.ram_size_max {
        return fail(
            "ram_size",
            format!(
                "board \"{board}\" has at most {} bytes of RAM (found {})",
                hex(rules.ram_size_max),
                hex(f.ram_size)
            ),
        );
    }
    check_window(p, rules, field, f)
}

/// The window lies where the board can map it, and is a valid PCI BAR where it must be one.
fn check_window(
    p: &Parsed<'_>,
    rules: &BoardRules,
    field: &dyn Fn(&str) -> String,
    f: &FirmwareHost,
) -> Result<()> {
    let fail = |key: &str, reason: String| Err(p.error(&field(key), &reason));
    let range = &rules.window_base_range;
    let mappable = format!(
        "board \"{}\" maps its window inside {}..{}",
        rules.board,
        hex(range.start),
        hex(range.end)
    );
    if !range.contains(&f.window_base) {
        return fail(
            "window_base",
            format!("{mappable} (found {})", hex(f.window_base)),
        );
    }
    // The parser checked that the end does not overflow.
    let end = f.window_base + f.window_size;
    if end > range.end {
        return fail(
            "window_size",
            format!("{mappable}; this window ends at {}", hex(end)),
        );
    }
    if rules.window_size_power_of_two && !f.window_size.is_power_of_two() {
        return fail(
            "window_size",
            format!(
                "the window is a PCI BAR, so its size must be a power of two (found {})",
                hex(f.window_size)
            ),
        );
    }
    if rules.window_size_power_of_two && f.window_base % f.window_size != 0 {
        return fail(
            "window_base",
            format!(
                "the window is a PCI BAR, so it starts at a multiple of its size {} (found {})",
                hex(f.window_size),
                hex(f.window_base)
            ),
        );
    }
    Ok(())
}

/// One image serves every replica, and every replica maps the same window: the memory map must
/// be the first replica's.
fn same_memory(
    p: &Parsed<'_>,
    field: &dyn Fn(&str) -> String,
    f: &FirmwareHost,
    first_index: usize,
    first: &FirmwareHost,
) -> Result<()> {
    let keys = [
        ("ram_base", f.ram_base, first.ram_base, "one image serves"),
        ("ram_size", f.ram_size, first.ram_size, "one image serves"),
        (
            "window_base",
            f.window_base,
            first.window_base,
            "the window is shared by",
        ),
        (
            "window_size",
            f.window_size,
            first.window_size,
            "the window is shared by",
        ),
    ];
    match keys
        .iter()
        .find(|(_, value, expected, _)| value != expected)
    {
        None => Ok(()),
        Some(&(key, value, expected, why)) => Err(p.error(
            &field(key),
            &format!(
                "must equal replica[{first_index}]'s {} (found {}): {why} every replica",
                hex(expected),
                hex(value)
            ),
        )),
    }
}

/// `0x` and hex digits in groups of four, as rustfmt and clippy like long literals.
fn hex(value: u64) -> String {
    let digits = format!("{value:x}");
    let mut out = String::from("0x");
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 4 == 0 {
            out.push('_');
        }
        out.push(digit);
    }
    out
}

impl FirmwareImage {
    /// The board file, as its path was given to [`image`].
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The board file's name alone: what the image records, so that it does not depend on
    /// where it was built.
    pub fn file_name(&self) -> String {
        Path::new(&self.file)
            .file_name()
            .map_or_else(|| self.file.clone(), |n| n.to_string_lossy().into_owned())
    }

    /// The cluster every replica of the image runs.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Every replica's id and board, sorted by id.
    pub fn replicas(&self) -> &[(u8, FirmwareHost)] {
        &self.replicas
    }

    /// The board every replica runs on, with the RAM and window they all share.
    pub fn host(&self) -> &FirmwareHost {
        // A cluster has at least one replica, and `image` made them all firmware replicas.
        &self.replicas[0].1
    }

    /// Bytes of the window the cluster uses (`window_layout::WindowLayout::bytes`);
    /// at most `host().window_size`.
    pub fn window_bytes(&self) -> u64 {
        self.window_bytes
    }
}

/// The generated source, in `include!` form: items only, outer doc comments, `mu_nostd` paths.
impl FirmwareImage {
    /// Rust source for the firmware to `include!`: `BOARD_FILE`, `CLUSTER_NAME`, `TICK_NS`,
    /// `REPLICAS`, `RAM_BASE`, `RAM_SIZE`, `WINDOW_BASE`, `WINDOW_SIZE` and `CONFIG` (a
    /// `mu_nostd::Config` literal with every field). Items only, each with a doc comment and
    /// `#[allow(dead_code)]` (a board need not use them all), no `unsafe`; it names no crate but
    /// `mu_nostd`.
    pub fn constants_rs(&self) -> String {
        let (c, host) = (&self.cluster, self.host());
        let mut out = String::new();
        let mut item = |doc: &str, decl: &str, value: String| {
            // `write!` into a String cannot fail.
            // A board that has no use for a constant must not get a warning for it.
            let _ = write!(
                out,
                "\n/// {doc}\n#[allow(dead_code)]\npub const {decl} = {value};\n"
            );
        };
        item(
            "The board file these constants were generated from.",
            "BOARD_FILE: &str",
            format!("{:?}", self.file_name()),
        );
        item(
            "The cluster's name (`cluster.name`).",
            "CLUSTER_NAME: &str",
            format!("{:?}", c.name),
        );
        item(
            "Nanoseconds per core tick (`cluster.tick_ns`); every `*_ticks` value is in ticks.",
            "TICK_NS: u64",
            c.tick_ns.to_string(),
        );
        item(
            "Replicas in the cluster (`cluster.replicas`); their ids are `0..REPLICAS`.",
            "REPLICAS: u8",
            c.config.replica_count.to_string(),
        );
        item(
            "Start of the board's RAM (`ram_base`).",
            "RAM_BASE: u64",
            hex(host.ram_base),
        );
        item(
            "Bytes of the board's RAM (`ram_size`).",
            "RAM_SIZE: u64",
            hex(host.ram_size),
        );
        item(
            "Start of the shared window every replica maps (`window_base`).",
            "WINDOW_BASE: u64",
            hex(host.window_base),
        );
        let size_doc = format!(
            "Bytes of the shared window (`window_size`); the cluster uses the first {} ({}).",
            self.window_bytes,
            hex(self.window_bytes)
        );
        item(&size_doc, "WINDOW_SIZE: u64", hex(host.window_size));
        item(
            "The cluster configuration (`[cluster]`), validated when the board file was read.",
            "CONFIG: mu_nostd::Config",
            config_literal(&c.config),
        );
        format!(
            "// Generated by board-configs from {} for board \"{}\".\n\
             // Edit the board file, not this.\n{out}",
            self.file_name(),
            host.board
        )
    }
}

/// A `mu_nostd::Config` literal. The patterns list every field without `..`, so a field added to
/// either struct fails this build instead of being left out of the firmware.
fn config_literal(config: &mu_nostd::Config) -> String {
    let mu_nostd::Config {
        replica_count,
        slot_count,
        slot_size,
        entry_slots_max,
        pipeline_depth,
        op_timeout_ticks,
        permission_retry_ticks,
        recycle_period_ticks,
        transfer_chunk_bytes,
        transfer_window,
        detector,
    } = *config;
    let mu_nostd::DetectorConfig {
        heartbeat_period_ticks,
        read_period_ticks,
        read_timeout_ticks,
        score_max,
        fail_below,
        recover_above,
        fate_ticks,
    } = detector;
    format!(
        "mu_nostd::Config {{
    replica_count: {replica_count},
    slot_count: {slot_count},
    slot_size: {slot_size},
    entry_slots_max: {entry_slots_max},
    pipeline_depth: {pipeline_depth},
    op_timeout_ticks: {op_timeout_ticks},
    permission_retry_ticks: {permission_retry_ticks},
    recycle_period_ticks: {recycle_period_ticks},
    transfer_chunk_bytes: {transfer_chunk_bytes},
    transfer_window: {transfer_window},
    detector: mu_nostd::DetectorConfig {{
        heartbeat_period_ticks: {heartbeat_period_ticks},
        read_period_ticks: {read_period_ticks},
        read_timeout_ticks: {read_timeout_ticks},
        score_max: {score_max},
        fail_below: {fail_below},
        recover_above: {recover_above},
        fate_ticks: {fate_ticks},
    }},
}}"
    )
}
