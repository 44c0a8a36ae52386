use super::*;

/// The constants generated for `qemu-virt-a53-3.toml`, checked in so that this test compiles
/// them: `generated_constants_compile_and_round_trip` keeps them equal to `constants_rs()`.
mod qemu_constants {
    include!("qemu-virt-a53-3.constants.rs");
}

const QEMU: BoardRules = QEMU_VIRT_A53;
const MPS2: BoardRules = MPS2_AN386;

fn path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn qemu_source() -> String {
    std::fs::read_to_string(path("qemu-virt-a53-3.toml")).unwrap()
}

/// The 1-based line of the `nth` (0-based) line of `source` that starts with `start`.
fn line_of(source: &str, start: &str, nth: usize) -> usize {
    let lines = source.lines().enumerate();
    let found = lines.filter(|(_, l)| l.starts_with(start)).nth(nth);
    found
        .unwrap_or_else(|| panic!("no line {nth} starting {start:?}"))
        .0
        + 1
}

/// `source` with the `nth` line starting with `start` replaced by `text`.
fn replace_line(source: &str, start: &str, nth: usize, text: &str) -> String {
    let line = line_of(source, start, nth);
    let mut lines: Vec<&str> = source.lines().collect();
    lines[line - 1] = text;
    lines.join("\n") + "\n"
}

/// Asserts that `source` fails `rules` at `field`, on the line of the `nth` line starting with
/// `start`, for a reason containing `reason`.
#[track_caller]
fn expect(source: &str, rules: &BoardRules, field: &str, at: (&str, usize), reason: &str) {
    let e = match image_from(source, "b.toml", rules) {
        Ok(_) => panic!("expected an error at {field}\n{source}"),
        Err(e) => e,
    };
    let line = line_of(source, at.0, at.1);
    assert_eq!((e.field.as_str(), e.line), (field, Some(line)), "{e}");
    assert!(e.column.is_some() && e.file == "b.toml", "{e}");
    assert!(e.reason.contains(reason), "{e}");
}

#[test]
fn the_board_files_pass_their_boards_rules() {
    let qemu = image(&path("qemu-virt-a53-3.toml"), &QEMU).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(qemu.cluster().name, "qemu-virt-a53-3");
    assert_eq!(qemu.replicas().len(), 3);
    assert_eq!(qemu.window_bytes(), 540_928);
    let host = FirmwareHost {
        board: "qemu-virt-a53".into(),
        ram_base: 0x4000_0000,
        ram_size: 0x0800_0000,
        window_base: 0x1000_0000,
        window_size: 0x10_0000,
    };
    for (i, (id, h)) in qemu.replicas().iter().enumerate() {
        assert_eq!((usize::from(*id), h), (i, &host));
    }
    assert_eq!(qemu.host(), &host);
    let mps2 = image(&path("mps2-an386-1.toml"), &MPS2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mps2.cluster().config.replica_count, 1);
    assert_eq!(mps2.window_bytes(), 22_784);
    assert_eq!(mps2.host().window_base, 0x2030_0000);
    // Each file is for its own board only.
    let e = image(&path("mps2-an386-1.toml"), &QEMU).unwrap_err();
    assert_eq!(e.field, "replica[0].firmware.board", "{e}");
}

#[test]
fn generated_constants_compile_and_round_trip() {
    let image = image(&path("qemu-virt-a53-3.toml"), &QEMU).unwrap();
    let text = image.constants_rs();
    let copy = "src/firmware/qemu-virt-a53-3.constants.rs";
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(path(copy), &text).unwrap();
    }
    assert_eq!(
        text,
        include_str!("qemu-virt-a53-3.constants.rs"),
        "the generator changed: review, then rerun with BLESS=1 to rewrite {copy}"
    );
    // The checked-in copy compiled (above) and holds what the file says.
    use qemu_constants as k;
    assert_eq!(k::CONFIG, image.cluster().config);
    assert_eq!(
        (k::BOARD_FILE, k::CLUSTER_NAME, k::TICK_NS, k::REPLICAS),
        ("qemu-virt-a53-3.toml", "qemu-virt-a53-3", 1000, 3)
    );
    let h = image.host();
    assert_eq!(
        (k::RAM_BASE, k::RAM_SIZE, k::WINDOW_BASE, k::WINDOW_SIZE),
        (h.ram_base, h.ram_size, h.window_base, h.window_size)
    );
}

#[test]
fn generated_constants_name_every_field_and_only_mu_nostd() {
    let image = image(&path("mps2-an386-1.toml"), &MPS2).unwrap();
    let text = image.constants_rs();
    let c = image.cluster().config;
    let d = c.detector;
    let fields = [
        ("replica_count", u64::from(c.replica_count)),
        ("slot_count", c.slot_count.into()),
        ("slot_size", c.slot_size.into()),
        ("entry_slots_max", c.entry_slots_max.into()),
        ("pipeline_depth", c.pipeline_depth.into()),
        ("op_timeout_ticks", c.op_timeout_ticks.into()),
        ("permission_retry_ticks", c.permission_retry_ticks.into()),
        ("recycle_period_ticks", c.recycle_period_ticks.into()),
        ("heartbeat_period_ticks", d.heartbeat_period_ticks.into()),
        ("read_period_ticks", d.read_period_ticks.into()),
        ("read_timeout_ticks", d.read_timeout_ticks.into()),
        ("score_max", d.score_max.into()),
        ("fail_below", d.fail_below.into()),
        ("recover_above", d.recover_above.into()),
        ("fate_ticks", d.fate_ticks.into()),
    ];
    for (field, value) in fields {
        assert_eq!(text.matches(&format!(" {field}: ")).count(), 1, "{field}");
        assert!(text.contains(&format!(" {field}: {value},\n")), "{field}");
    }
    for line in [
        "pub const BOARD_FILE: &str = \"mps2-an386-1.toml\";",
        "pub const CLUSTER_NAME: &str = \"mps2-an386-1\";",
        "pub const TICK_NS: u64 = 1000;",
        "pub const REPLICAS: u8 = 1;",
        "pub const RAM_BASE: u64 = 0x2000_0000;",
        "pub const RAM_SIZE: u64 = 0x30_0000;",
        "pub const WINDOW_BASE: u64 = 0x2030_0000;",
        "pub const WINDOW_SIZE: u64 = 0x10_0000;",
        "pub const CONFIG: mu_nostd::Config = mu_nostd::Config {",
        "    detector: mu_nostd::DetectorConfig {",
    ] {
        assert!(text.contains(&format!("\n{line}\n")), "{line}\n{text}");
    }
    // Every item is documented; every path is mu_nostd's; nothing is unsafe.
    assert_eq!(
        text.matches("\n/// ").count(),
        text.matches("\npub const ").count()
    );
    assert_eq!(
        text.matches("::").count(),
        text.matches("mu_nostd::").count()
    );
    assert!(!text.contains("unsafe"));
}

#[test]
fn hex_groups_digits_by_four() {
    assert_eq!(hex(0), "0x0");
    assert_eq!(hex(0xfff), "0xfff");
    assert_eq!(hex(0x1_0000), "0x1_0000");
    assert_eq!(hex(0x4000_0000), "0x4000_0000");
    assert_eq!(hex(u64::MAX), "0xffff_ffff_ffff_ffff");
}

#[test]
fn cluster_values_must_fit_the_firmware_and_the_board() {
    let source = qemu_source();
    let at = |key: &'static str| (key, 0);
    let with = |key: &str, text: &str| replace_line(&source, key, 0, text);
    let rules = BoardRules {
        replicas_max: 2,
        ..QEMU
    };
    let replicas = at("replicas =");
    expect(
        &source,
        &rules,
        "cluster.replicas",
        replicas,
        "at most 2 replicas (found 3)",
    );
    expect(
        // Half the slots, so that the larger slots still fit the window.
        &replace_line(
            &with("slot_count", "slot_count = 512"),
            "slot_size",
            0,
            "slot_size = 320",
        ),
        &QEMU,
        "cluster.slot_size",
        at("slot_size"),
        "the firmware's slot buffer holds 256 bytes (found 320)",
    );
    expect(
        &with("entry_slots_max", "entry_slots_max = 17"),
        &QEMU,
        "cluster.entry_slots_max",
        at("entry_slots_max"),
        "17 slots of 64 payload bytes = 1088 bytes, exceeds the firmware's 1024-byte entry",
    );
    // 62.5 MHz: a period is 16 ns.
    expect(
        &with("tick_ns", "tick_ns = 15"),
        &QEMU,
        "cluster.tick_ns",
        at("tick_ns"),
        "must be at least 16, one period of board \"qemu-virt-a53\"'s 62500000 Hz counter",
    );
    image_from(&with("tick_ns", "tick_ns = 16"), "b.toml", &QEMU).unwrap();
    image_from(
        &with("entry_slots_max", "entry_slots_max = 14"),
        "b.toml",
        &QEMU,
    )
    .unwrap();
}

#[test]
fn every_replica_is_firmware_on_this_board() {
    let source = qemu_source();
    // Replica 1 becomes a Linux process: the error is at its section's header.
    let firmware = "id = 1\n[replica.firmware]\nboard = \"qemu-virt-a53\"\nram_base = 0x40000000\n\
                    ram_size = 0x08000000\nwindow_base = 0x10000000\nwindow_size = 0x100000\n";
    assert!(source.contains(firmware));
    let linux = source.replace(firmware, "id = 1\n[replica.linux]\nfabric = \"shm\"\n");
    let header = ("[replica.linux]", 0);
    let reason = "a board file describes firmware replicas only";
    expect(&linux, &QEMU, "replica[1].linux", header, reason);
    let other = replace_line(&source, "board", 2, "board = \"qemu-virt-a57\"");
    expect(
        &other,
        &QEMU,
        "replica[2].firmware.board",
        ("board", 2),
        "this image is for board \"qemu-virt-a53\" (found \"qemu-virt-a57\")",
    );
    // Errors name a replica by its place in the file, not its id.
    let shuffled = replace_line(
        &replace_line(&other, "id = ", 0, "id = 2"),
        "id = ",
        2,
        "id = 0",
    );
    expect(
        &shuffled,
        &QEMU,
        "replica[2].firmware.board",
        ("board", 2),
        "qemu-virt-a57",
    );
}

#[test]
fn ram_and_window_follow_the_board() {
    let source = qemu_source();
    let with = |key: &str, text: &str| replace_line(&source, key, 0, text);
    let at = |key: &'static str| (key, 0);
    expect(
        &with("ram_base", "ram_base = 0x48000000"),
        &QEMU,
        "replica[0].firmware.ram_base",
        at("ram_base"),
        "board \"qemu-virt-a53\"'s RAM starts at 0x4000_0000 (found 0x4800_0000)",
    );
    expect(
        &with("ram_size", "ram_size = 0x40001000"),
        &QEMU,
        "replica[0].firmware.ram_size",
        at("ram_size"),
        "at most 0x4000_0000 bytes of RAM (found 0x4000_1000)",
    );
    let outside = "maps its window inside 0x1000_0000..0x3eff_0000";
    let low = with("window_base", "window_base = 0x0ff00000");
    let base = "replica[0].firmware.window_base";
    expect(&low, &QEMU, base, at("window_base"), outside);
    let high = with("window_base", "window_base = 0x3ef00000");
    let size = "replica[0].firmware.window_size";
    expect(&high, &QEMU, size, at("window_size"), "ends at 0x3f00_0000");
    let odd = with("window_size", "window_size = 0x180000");
    expect(
        &odd,
        &QEMU,
        size,
        at("window_size"),
        "power of two (found 0x18_0000)",
    );
    let unaligned = with("window_base", "window_base = 0x10080000");
    expect(
        &unaligned,
        &QEMU,
        base,
        at("window_base"),
        "multiple of its size 0x10_0000",
    );
    // A board whose window is plain RAM takes any size anywhere in its range (every replica
    // changed alike).
    let rules = BoardRules {
        window_size_power_of_two: false,
        ..QEMU
    };
    let odd = source.replace("window_size = 0x100000", "window_size = 0x180000");
    image_from(&odd, "b.toml", &rules).unwrap();
    let unaligned = source.replace("window_base = 0x10000000", "window_base = 0x10080000");
    image_from(&unaligned, "b.toml", &rules).unwrap();
    // Any RAM base, when the board has none fixed.
    let moved = source.replace("ram_base = 0x40000000", "ram_base = 0x48000000");
    let rules = BoardRules {
        ram_base: None,
        ..QEMU
    };
    image_from(&moved, "b.toml", &rules).unwrap();
}

#[test]
fn every_replica_has_the_same_memory_map() {
    let source = qemu_source();
    let rules = BoardRules {
        ram_base: None,
        ..QEMU
    };
    for (key, text, why) in [
        (
            "ram_base",
            "ram_base = 0x48000000",
            "one image serves every replica",
        ),
        (
            "ram_size",
            "ram_size = 0x04000000",
            "one image serves every replica",
        ),
        (
            "window_base",
            "window_base = 0x10100000",
            "the window is shared",
        ),
        (
            "window_size",
            "window_size = 0x200000",
            "the window is shared",
        ),
    ] {
        let changed = replace_line(&source, key, 2, text);
        let field = format!("replica[2].firmware.{key}");
        expect(
            &changed,
            &rules,
            &field,
            (key, 2),
            "must equal replica[0]'s",
        );
        expect(&changed, &rules, &field, (key, 2), why);
    }
}

#[test]
fn file_and_parse_errors_come_through() {
    let e = image(Path::new("/nonexistent/b.toml"), &QEMU).unwrap_err();
    assert_eq!((e.line, e.field.as_str()), (None, ""), "{e}");
    // The parser's own window check.
    let small = replace_line(&qemu_source(), "window_size", 0, "window_size = 0x20000");
    let reason = "need 540928 (0x84100) bytes";
    expect(
        &small,
        &QEMU,
        "replica[0].firmware.window_size",
        ("window_size", 0),
        reason,
    );
}

#[test]
fn fields_are_found_in_any_spelling() {
    // Inline tables and dotted keys: the errors still point at the value.
    let source = r#"cluster = { name = "t", replicas = 1, tick_ns = 10, slot_count = 64, slot_size = 128, entry_slots_max = 4, pipeline_depth = 8, op_timeout_ticks = 100, permission_retry_ticks = 100, recycle_period_ticks = 10, detector.read_period_ticks = 5 }
replica = [{ id = 0, firmware = { board = "x", ram_base = 0x40000000, ram_size = 0x1000, window_base = 0x10000000, window_size = 0x100000 } }]
"#;
    let at = |e: &ConfigFileError| (e.field.clone(), e.line, e.column);
    let e = image_from(source, "b.toml", &QEMU).unwrap_err();
    let column = source.find("10, slot_count").unwrap() + 1;
    assert_eq!(
        at(&e),
        ("cluster.tick_ns".into(), Some(1), Some(column)),
        "{e}"
    );
    let source = source.replace("tick_ns = 10,", "tick_ns = 1000,");
    let e = image_from(&source, "b.toml", &QEMU).unwrap_err();
    let column = source.lines().nth(1).unwrap().find("\"x\"").unwrap() + 1;
    let field = "replica[0].firmware.board";
    assert_eq!(at(&e), (field.into(), Some(2), Some(column)), "{e}");
}
