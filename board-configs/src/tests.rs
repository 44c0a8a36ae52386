use crate::*;
use mu_nostd::Config;
use std::fs;
use window_layout::WindowLayout;

/// A valid two-replica Linux deployment; tests replace single lines of it, so its line numbers
/// are the ones the assertions name.
const BASE: &str = r#"[cluster]
name = "t"
replicas = 2
tick_ns = 1000
slot_count = 1024
slot_size = 128
entry_slots_max = 8
pipeline_depth = 8
op_timeout_ticks = 2000
permission_retry_ticks = 1000
recycle_period_ticks = 100
[cluster.detector]
read_period_ticks = 5
[[replica]]
id = 0
[replica.linux]
fabric = "shm"
[[replica]]
id = 1
[replica.linux]
fabric = "shm"
"#;

/// `BASE` with each 1-based line `n` replaced by `text` (which may hold several lines, or none).
fn edits(changes: &[(usize, &str)]) -> String {
    let mut lines: Vec<&str> = BASE.lines().collect();
    for &(n, text) in changes {
        lines[n - 1] = text;
    }
    lines.join("\n") + "\n"
}

fn edit(line: usize, text: &str) -> String {
    edits(&[(line, text)])
}

/// `BASE` with `text` inserted after line `line`.
fn insert(line: usize, text: &str) -> String {
    edit(
        line,
        &format!("{}\n{text}", BASE.lines().nth(line - 1).unwrap()),
    )
}

/// `BASE` whose replicas are firmware boards with `lines` in their sections.
fn firmware(lines: &str) -> String {
    let host = format!("[replica.firmware]\nboard = \"qemu-virt-a53\"\n{lines}");
    BASE.replace("[replica.linux]\nfabric = \"shm\"\n", &format!("{host}\n"))
}

const FIRMWARE_OK: &str =
    "ram_base = 0x40000000\nram_size = 0x08000000\nwindow_base = 0x10000000000\nwindow_size = 0x400000";

fn err(source: &str) -> ConfigFileError {
    match parse(source, "t.toml") {
        Ok(d) => panic!("expected an error, parsed {d:?} from\n{source}"),
        Err(e) => e,
    }
}

/// Asserts the error's field and line, and that its reason contains `reason`.
#[track_caller]
fn expect(source: &str, field: &str, line: usize, reason: &str) {
    let e = err(source);
    assert_eq!(
        (e.field.as_str(), e.line),
        (field, Some(line)),
        "{e}\n{source}"
    );
    assert!(e.column.is_some(), "{e}");
    assert!(e.reason.contains(reason), "{e}");
}

fn examples() -> Vec<(String, String)> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && !p.ends_with("Cargo.toml"))
        .map(|p| (p.display().to_string(), fs::read_to_string(&p).unwrap()))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "the example files are missing");
    files
}

#[test]
fn examples_parse() {
    for (file, _) in examples() {
        let d = load(file.as_ref()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.file, file);
        assert_eq!(
            d.replicas.len(),
            usize::from(d.cluster.config.replica_count)
        );
    }
}

#[test]
fn shm_3_examples_say_what_they_mean() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let plain = load(format!("{dir}/shm-3.toml").as_ref()).unwrap();
    let pinned = load(format!("{dir}/shm-3-pinned.toml").as_ref()).unwrap();
    let mut config = Config::new(3);
    config.slot_count = 65536;
    config.slot_size = 256;
    config.entry_slots_max = 16;
    config.pipeline_depth = 16;
    config.op_timeout_ticks = 20_000;
    config.permission_retry_ticks = 2000;
    config.recycle_period_ticks = 500;
    config.transfer_chunk_bytes = 65536;
    config.transfer_window = 4;
    config.detector = mu_nostd::DetectorConfig::paper(200);
    config.detector.fate_ticks = 20_000;
    let expected = Deployment::shm_linux(
        "shm-3",
        config,
        1000,
        "/dev/shm/mu-shm-3".into(),
        Polling::Shared,
        &[],
    );
    let mut expected = expected;
    for r in &mut expected.replicas {
        let Host::Linux(linux) = &mut r.host else {
            unreachable!()
        };
        linux.serve = Some(([127, 0, 0, 1], 7379 + u16::from(r.id)).into());
    }
    assert_eq!(plain.cluster, expected.cluster);
    assert_eq!(plain.replicas, expected.replicas);
    config.detector = mu_nostd::DetectorConfig::paper(20);
    let cores = [(Some(2), Some(3)), (Some(4), Some(5)), (Some(6), Some(7))];
    let expected = Deployment::shm_linux(
        "shm-3-pinned",
        config,
        1000,
        "/dev/shm/mu-shm-3-pinned".into(),
        Polling::Busy,
        &cores,
    );
    assert_eq!(pinned.cluster, expected.cluster);
    assert_eq!(pinned.replicas, expected.replicas);
}

#[track_caller]
fn round_trip(d: &Deployment) {
    let text = d.to_toml();
    let back = parse(&text, &d.file).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(&back, d, "{text}");
}

#[test]
fn to_toml_round_trips() {
    for (file, source) in examples() {
        round_trip(&parse(&source, &file).unwrap());
    }
    let mut config = Config::new(5);
    config.detector.fate_ticks = 1000;
    config.detector.score_max = 20;
    config.transfer_chunk_bytes = 4096;
    config.transfer_window = 8;
    let mut d = Deployment::shm_linux(
        "demo",
        config,
        250,
        "/tmp/mu \"quoted\" \\ dir\n\u{e9}".into(),
        Polling::Busy,
        &[(Some(0), Some(1)), (None, Some(7)), (Some(3), None)],
    );
    round_trip(&d);
    for r in &mut d.replicas {
        let Host::Linux(linux) = &mut r.host else {
            unreachable!()
        };
        linux.serve = Some(format!("10.1.2.{}:7379", r.id).parse().unwrap());
    }
    round_trip(&d);
    for r in &mut d.replicas {
        let Host::Linux(linux) = &mut r.host else {
            unreachable!()
        };
        linux.realtime_priority = Some(99);
        // IPv6, a link-local one with its interface: the text must carry the scope.
        linux.serve = Some(format!("[fe80::{}%2]:6379", r.id + 1).parse().unwrap());
        linux.fabric = FabricSpec::Verbs {
            dir: "/srv/mu".into(),
            device: "rxe0".into(),
            port: 1,
            gid_index: 3,
            address: format!("[::1]:{}", 7470 + r.id as u16),
        };
    }
    round_trip(&d);
    for r in &mut d.replicas {
        r.host = Host::Firmware(FirmwareHost {
            board: format!("board 'x' #{}", r.id),
            ram_base: 0x4000_0000,
            ram_size: 0x0800_0000,
            window_base: 0x100_0000_0000,
            window_size: 0x40_0000,
        });
    }
    round_trip(&d);
}

#[test]
fn base_and_firmware_base_parse() {
    let d = parse(BASE, "t.toml").unwrap();
    assert_eq!(d.replica(1).map(|r| r.id), Some(1));
    assert!(d.replica(2).is_none());
    let Host::Linux(linux) = &d.replicas[0].host else {
        panic!()
    };
    assert_eq!(
        linux,
        &LinuxHost {
            fabric: FabricSpec::Shm {
                dir: "/dev/shm/mu-t".into()
            },
            replication_core: None,
            background_core: None,
            polling: Polling::Shared,
            realtime_priority: None,
            serve: None,
        }
    );
    let d = parse(&firmware(FIRMWARE_OK), "t.toml").unwrap();
    assert!(matches!(&d.replicas[1].host, Host::Firmware(f) if f.window_size == 0x40_0000));
}

#[test]
fn any_toml_spelling_of_the_schema_is_accepted() {
    // Dotted keys, inline tables, an inline array of replicas and shuffled ids.
    let source = r#"
cluster = { name = "t", replicas = 2, tick_ns = 1000, slot_count = 1024, slot_size = 128, entry_slots_max = 8, pipeline_depth = 8, op_timeout_ticks = 2000, permission_retry_ticks = 1000, recycle_period_ticks = 100, detector.read_period_ticks = 5 }
replica = [
  { id = 1, linux.fabric = "shm", linux.realtime_priority = 0 },
  { id = 0, linux = { fabric = "shm", polling = "busy" } },
]
"#;
    let d = parse(source, "t.toml").unwrap();
    assert_eq!(d.cluster.config.detector.read_period_ticks, 5);
    assert_eq!(d.replicas[0].id, 0);
    assert!(matches!(&d.replicas[0].host, Host::Linux(l) if l.polling == Polling::Busy));
    // Spans inside them still give lines.
    expect(
        &source.replace("polling = \"busy\"", "polling = \"fast\""),
        "replica[1].linux.polling",
        5,
        "\"busy\" or \"shared\"",
    );
    expect(
        &source.replace("linux.fabric = \"shm\"", "linux.fabric = 3"),
        "replica[0].linux.fabric",
        4,
        "must be a string",
    );
}

#[test]
fn spans_are_found() {
    // Guards the spans `tree` copies from toml_edit: without them every error falls back to the
    // start of a table and this line would be 12.
    expect(
        &edit(13, "read_period_ticks = \"5\""),
        "cluster.detector.read_period_ticks",
        13,
        "integer",
    );
    let e = err(&edit(13, "read_period_ticks =    -4"));
    assert_eq!((e.line, e.column), (Some(13), Some(24)));
}

#[test]
fn syntax_errors_have_line_and_column() {
    let e = err(&edit(6, "slot_size = = 128"));
    assert_eq!(
        (e.line, e.column, e.field.as_str()),
        (Some(6), Some(13), "")
    );
    assert!(!e.reason.contains('\n'), "{e}");
    let e = err(&edit(3, "replicas = 2\nreplicas = 3"));
    assert_eq!(e.line, Some(4), "{e}");
    let e = err("[cluster]\nname = \"unterminated\n");
    assert_eq!(e.line, Some(2), "{e}");
    // toml's multi-line messages are joined; its empty ones are replaced.
    let e = err(&edit(15, "id = 0\n[cluster]"));
    assert_eq!(e.line, Some(16), "{e}");
    assert!(e.reason.contains("header: duplicate key `cluster`"), "{e}");
    let e = err("[cluster]\nname =");
    assert_eq!((e.line, e.column), (Some(2), Some(7)), "{e}");
    assert_eq!(e.reason, "unexpected end of file");
    let e = err("# a\u{1}b\n");
    assert_eq!((e.line, e.column), (Some(1), Some(4)), "{e}");
    assert_eq!(e.reason, "unexpected character '\\u{1}'");
}

#[test]
fn display_is_file_line_column_field_reason() {
    let e = err(&edit(3, "replicas = 300"));
    assert_eq!(
        e.to_string(),
        "t.toml:3:12: cluster.replicas: must be an integer in 1..=7 (found 300)"
    );
    let e = ConfigFileError {
        file: "x.toml".into(),
        line: None,
        column: None,
        field: String::new(),
        reason: "cannot read".into(),
    };
    assert_eq!(e.to_string(), "x.toml: cannot read");
}

#[test]
fn types_and_ranges() {
    expect(&edit(3, "replicas = 300"), "cluster.replicas", 3, "1..=7");
    expect(&edit(3, "replicas = -1"), "cluster.replicas", 3, "1..=7");
    expect(&edit(3, "replicas = 0"), "cluster.replicas", 3, "1..=7");
    expect(
        &edit(3, "replicas = \"3\""),
        "cluster.replicas",
        3,
        "found a string",
    );
    expect(
        &edit(3, "replicas = 2.0"),
        "cluster.replicas",
        3,
        "found a float",
    );
    expect(
        &edit(3, "replicas = 1979-05-27"),
        "cluster.replicas",
        3,
        "found a datetime",
    );
    expect(
        &edit(4, "tick_ns = 0"),
        "cluster.tick_ns",
        4,
        "1..=1000000000",
    );
    expect(
        &edit(5, "slot_count = 5000000000"),
        "cluster.slot_count",
        5,
        "0..=4294967295",
    );
    expect(
        &edit(7, "entry_slots_max = 70000"),
        "cluster.entry_slots_max",
        7,
        "0..=65535",
    );
    expect(
        &edit(13, "read_period_ticks = true"),
        "cluster.detector.read_period_ticks",
        13,
        "boolean",
    );
    expect(
        &insert(13, "score_max = 256"),
        "cluster.detector.score_max",
        14,
        "0..=255",
    );
    expect(&edit(2, "name = \"a b\""), "cluster.name", 2, "A-Z");
    expect(
        &edit(2, &format!("name = \"{}\"", "x".repeat(33))),
        "cluster.name",
        2,
        "32",
    );
    expect(&edit(2, "name = \"\""), "cluster.name", 2, "empty");
    expect(
        &edits(&[(12, "detector = 5"), (13, "")]),
        "cluster.detector",
        12,
        "must be a table",
    );
    expect(&edit(15, "id = 2"), "replica[0].id", 15, "0..=1");
    expect(&edit(15, "id = \"0\""), "replica[0].id", 15, "integer");
}

#[test]
fn missing_and_unknown_keys() {
    expect(&edit(6, ""), "cluster.slot_size", 1, "missing");
    expect(
        &edit(13, ""),
        "cluster.detector.read_period_ticks",
        12,
        "missing",
    );
    expect(
        &edit(12, "").replace("read_period_ticks = 5\n", ""),
        "cluster.detector",
        1,
        "missing",
    );
    expect(
        &BASE.replace("[cluster]", "[clusters]"),
        "clusters",
        1,
        "unknown key",
    );
    expect(&insert(11, "slots = 3"), "cluster.slots", 12, "unknown key");
    expect(
        &insert(13, "fate = 3"),
        "cluster.detector.fate",
        14,
        "unknown key",
    );
    expect(
        &insert(19, "name = \"x\""),
        "replica[1].name",
        20,
        "unknown key",
    );
    expect(
        &insert(21, "polling_mode = \"busy\""),
        "replica[1].linux.polling_mode",
        22,
        "unknown key",
    );
    expect(
        &format!("{BASE}extra = 1\n"),
        "replica[1].linux.extra",
        22,
        "unknown key",
    );
    expect(&edit(15, ""), "replica[0].id", 14, "missing");
    expect(&edit(17, ""), "replica[0].linux.fabric", 16, "missing");
    expect(&edit(2, "name = \"t\"\n[other]"), "other", 3, "unknown key");
    let e = err("");
    assert_eq!((e.field.as_str(), e.line), ("cluster", Some(1)));
}

#[test]
fn core_validation_points_at_the_key() {
    expect(
        &edit(6, "slot_size = 100"),
        "cluster.slot_size",
        6,
        "multiple of 64",
    );
    expect(
        &edit(5, "slot_count = 4"),
        "cluster.slot_count",
        5,
        "at least 8",
    );
    expect(
        &edit(8, "pipeline_depth = 0"),
        "cluster.pipeline_depth",
        8,
        "at least 1",
    );
    expect(
        &insert(13, "fate_ticks = 1"),
        "cluster.detector.fate_ticks",
        14,
        "heartbeat",
    );
    expect(
        &insert(13, "score_max = 10\nfail_below = 9\nrecover_above = 8"),
        "cluster.detector.fail_below",
        15,
        "recover_above",
    );
    // An absent key's default is at fault: point at what it was derived from.
    expect(
        &insert(13, "heartbeat_period_ticks = 1000"),
        "cluster.detector.fate_ticks",
        13,
        "heartbeat",
    );
}

#[test]
fn replica_ids_are_each_once() {
    expect(
        &edit(19, "id = 0"),
        "replica[1].id",
        19,
        "duplicate replica id 0 (also replica[0])",
    );
    expect(&edit(3, "replicas = 3"), "replica", 3, "id 2");
    // Deleting replica 0 entirely.
    let source = edit(14, "").replace("id = 0\n[replica.linux]\nfabric = \"shm\"\n", "");
    expect(&source, "replica", 3, "id 0");
    let head: String = BASE.lines().take(13).map(|l| format!("{l}\n")).collect();
    expect(
        &format!("replica = 3\n{head}"),
        "replica",
        1,
        "array of tables",
    );
    expect(
        &format!("{BASE}[[replica]]\nid = 2\n"),
        "replica[2].id",
        23,
        "0..=1",
    );
    expect(
        &format!("{BASE}[[replica]]\nid = 1\n"),
        "replica[2].id",
        23,
        "also replica[1]",
    );
}

#[test]
fn one_host_per_replica() {
    expect(
        &insert(
            21,
            &format!("[replica.firmware]\nboard = \"b\"\n{FIRMWARE_OK}"),
        ),
        "replica[1].firmware",
        22,
        "not both",
    );
    expect(
        &edit(20, "").replace("id = 1\n\nfabric = \"shm\"\n", "id = 1\n"),
        "replica[1]",
        18,
        "needs",
    );
    expect(
        &edits(&[(20, "linux = 1"), (21, "")]),
        "replica[1].linux",
        20,
        "must be a table",
    );
}

#[test]
fn linux_host_checks() {
    expect(
        &edit(21, "fabric = \"tcp\""),
        "replica[1].linux.fabric",
        21,
        "\"shm\" or \"verbs\"",
    );
    expect(
        &insert(21, "polling = \"spin\""),
        "replica[1].linux.polling",
        22,
        "\"busy\" or \"shared\"",
    );
    expect(
        &insert(
            21,
            "polling = \"busy\"\nreplication_core = 3\nbackground_core = 3",
        ),
        "replica[1].linux.background_core",
        24,
        "busy polling needs two distinct cores: the two planes never yield",
    );
    // Shared polling may share a core, busy polling may leave one plane unpinned.
    parse(
        &insert(21, "replication_core = 3\nbackground_core = 3"),
        "t.toml",
    )
    .unwrap();
    parse(
        &insert(21, "polling = \"busy\"\nbackground_core = 3"),
        "t.toml",
    )
    .unwrap();
    expect(
        &insert(21, "replication_core = 1024"),
        "replica[1].linux.replication_core",
        22,
        "0..=1023",
    );
    expect(
        &insert(21, "realtime_priority = 100"),
        "replica[1].linux.realtime_priority",
        22,
        "0..=99",
    );
    let d = parse(&insert(21, "realtime_priority = 50"), "t.toml").unwrap();
    assert!(matches!(&d.replicas[1].host, Host::Linux(l) if l.realtime_priority == Some(50)));
    expect(
        &insert(21, "shm_dir = \"mu\""),
        "replica[1].linux.shm_dir",
        22,
        "absolute",
    );
    let d = parse(&insert(21, "shm_dir = \"/run/mu\""), "t.toml").unwrap();
    assert!(matches!(&d.replicas[1].host,
        Host::Linux(LinuxHost { fabric: FabricSpec::Shm { dir }, .. }) if dir.as_os_str() == "/run/mu"));
}

#[test]
fn verbs_fields_go_with_verbs() {
    let verbs = "fabric = \"verbs\"\ndevice = \"rxe0\"\nport = 1\ngid_index = 1\naddress = \"10.0.2.15:7470\"";
    let both = |one: &str| edits(&[(17, &one.replace("15:7470", "15:7471")), (21, one)]);
    let d = parse(&both(verbs), "t.toml").unwrap();
    assert_eq!(
        d.replicas[1].host,
        Host::Linux(LinuxHost {
            fabric: FabricSpec::Verbs {
                dir: "/dev/shm/mu-t".into(),
                device: "rxe0".into(),
                port: 1,
                gid_index: 1,
                address: "10.0.2.15:7470".into()
            },
            replication_core: None,
            background_core: None,
            polling: Polling::Shared,
            realtime_priority: None,
            serve: None,
        })
    );
    expect(
        &insert(21, "port = 1"),
        "replica[1].linux.port",
        22,
        "only for fabric = \"verbs\"",
    );
    expect(
        &edit(21, &verbs.replace("port = 1\n", "")),
        "replica[1].linux.port",
        20,
        "required with fabric = \"verbs\"",
    );
    expect(
        &edit(21, &verbs.replace("port = 1", "port = 0")),
        "replica[1].linux.port",
        23,
        "1..=255",
    );
    expect(
        &edit(21, &verbs.replace("gid_index = 1", "gid_index = 256")),
        "replica[1].linux.gid_index",
        24,
        "0..=255",
    );
    expect(
        &edit(21, &verbs.replace("15:7470", "15")),
        "replica[1].linux.address",
        25,
        "IP:port",
    );
    expect(
        &edit(21, &verbs.replace("\"rxe0\"", "\"\"")),
        "replica[1].linux.device",
        22,
        "empty",
    );
    let d = parse(&both(&format!("{verbs}\nshm_dir = \"/run/mu\"")), "t.toml").unwrap();
    assert!(matches!(&d.replicas[1].host,
        Host::Linux(LinuxHost { fabric: FabricSpec::Verbs { dir, .. }, .. })
            if dir.as_os_str() == "/run/mu"));
}

#[test]
fn a_cluster_has_one_fabric_and_distinct_addresses() {
    let verbs = "fabric = \"verbs\"\ndevice = \"rxe0\"\nport = 1\ngid_index = 1\naddress = \"10.0.2.15:7470\"";
    expect(
        &edit(21, verbs),
        "replica[1].linux.fabric",
        21,
        "replica[0] uses the other fabric",
    );
    expect(
        &edits(&[(17, verbs), (21, &verbs.replace("10.0.2.15", "10.0.2.015"))]),
        "replica[1].linux.address",
        29,
        "IP:port",
    );
    expect(
        &edits(&[(17, verbs), (21, verbs)]),
        "replica[1].linux.address",
        29,
        "the same address as replica[0].linux.address",
    );
}

/// `serve = "ADDRESS"` under `fabric = "shm"` (a replica's lines 17 and 21 of `BASE`).
fn serving(address: &str) -> String {
    format!("fabric = \"shm\"\nserve = \"{address}\"")
}

#[test]
fn serve_addresses_parse() {
    let d = parse(
        &edits(&[
            (17, &serving("10.0.0.1:7379")),
            (21, &serving("[::1]:7379")),
        ]),
        "t.toml",
    )
    .unwrap();
    let serve = |id: u8| match &d.replica(id).unwrap().host {
        Host::Linux(linux) => linux.serve,
        Host::Firmware(_) => unreachable!(),
    };
    assert_eq!(serve(0), Some(([10, 0, 0, 1], 7379).into()));
    assert_eq!(serve(1), Some((std::net::Ipv6Addr::LOCALHOST, 7379).into()));
    // Absent everywhere is the default: no address.
    let d = parse(BASE, "t.toml").unwrap();
    assert!(d
        .replicas
        .iter()
        .all(|r| matches!(&r.host, Host::Linux(l) if l.serve.is_none())));
    // The same port on two IPs of one host is two listeners.
    parse(
        &edits(&[
            (17, &serving("127.0.0.1:7379")),
            (21, &serving("127.0.0.2:7379")),
        ]),
        "t.toml",
    )
    .unwrap();
    // All or none counts the Linux replicas only: a firmware board serves nothing.
    let mixed = edits(&[
        (17, &serving("127.0.0.1:7379")),
        (
            20,
            &format!("[replica.firmware]\nboard = \"qemu-virt-a53\"\n{FIRMWARE_OK}"),
        ),
        (21, ""),
    ]);
    let d = parse(&mixed, "t.toml").unwrap_or_else(|e| panic!("{e}\n{mixed}"));
    assert!(matches!(&d.replicas[1].host, Host::Firmware(_)));
}

#[test]
fn serve_addresses_are_checked() {
    // The address itself, on the line of its value (replica[1]'s serve is line 23).
    let partner = |address: &str| edits(&[(17, &serving("10.9.9.9:1")), (21, &serving(address))]);
    for bad in [
        "10.0.0.5",
        "localhost:7379",
        "10.0.0.5:65536",
        " 10.0.0.5:7379",
        "",
        "::1:7379",
    ] {
        expect(
            &partner(bad),
            "replica[1].linux.serve",
            23,
            "must be IP:port",
        );
    }
    expect(
        &partner("10.0.0.5:0"),
        "replica[1].linux.serve",
        23,
        "port 0",
    );
    expect(
        &partner("0.0.0.0:7379"),
        "replica[1].linux.serve",
        23,
        "unspecified IP",
    );
    expect(
        &partner("[::]:7379"),
        "replica[1].linux.serve",
        23,
        "unspecified IP",
    );
    expect(
        &edits(&[
            (17, &serving("10.9.9.9:1")),
            (21, "fabric = \"shm\"\nserve = 7379"),
        ]),
        "replica[1].linux.serve",
        23,
        "must be a string (found an integer)",
    );
    // Two replicas, one address.
    expect(
        &partner("10.9.9.9:1"),
        "replica[1].linux.serve",
        23,
        "the same address as replica[0].linux.serve",
    );
    // Some Linux replicas with an address and some without: the second one found is named.
    expect(
        &edit(17, &serving("10.0.0.1:7379")),
        "replica[1].linux.serve",
        21,
        "required: replica[0] has a serve address",
    );
    expect(
        &edit(21, &serving("10.0.0.1:7379")),
        "replica[1].linux.serve",
        22,
        "replica[0] has no serve address",
    );
    // A serve address is a TCP listener like a verbs handshake address: none may share one.
    let verbs = |address: &str, serve: &str| {
        format!(
            "fabric = \"verbs\"\ndevice = \"rxe0\"\nport = 1\ngid_index = 1\n\
             address = \"{address}\"\nserve = \"{serve}\""
        )
    };
    // replica[1]'s address is line 30 and its serve line 31.
    parse(
        &edits(&[
            (17, &verbs("10.0.0.1:7470", "10.0.0.1:7379")),
            (21, &verbs("10.0.0.2:7470", "10.0.0.2:7379")),
        ]),
        "t.toml",
    )
    .unwrap();
    expect(
        &edits(&[
            (17, &verbs("10.0.0.1:7470", "10.0.0.1:7379")),
            (21, &verbs("10.0.0.2:7470", "10.0.0.1:7470")),
        ]),
        "replica[1].linux.serve",
        31,
        "the same address as replica[0].linux.address",
    );
    expect(
        &edits(&[
            (17, &verbs("10.0.0.1:7470", "10.0.0.1:7379")),
            (21, &verbs("10.0.0.1:7379", "10.0.0.2:7379")),
        ]),
        "replica[1].linux.address",
        30,
        "the same address as replica[0].linux.serve",
    );
    expect(
        &edits(&[
            (17, &verbs("10.0.0.1:7470", "10.0.0.1:7379")),
            (21, &verbs("10.0.0.2:7470", "10.0.0.2:7470")),
        ]),
        "replica[1].linux.serve",
        31,
        "the same address as this replica's address",
    );
}

#[test]
fn firmware_checks() {
    // replica[0]'s section is lines 16..=21, replica[1]'s starts at line 24.
    let source = firmware(FIRMWARE_OK);
    assert_eq!(source.lines().nth(15), Some("[replica.firmware]"));
    assert_eq!(source.lines().nth(23), Some("[replica.firmware]"));
    let overlap = FIRMWARE_OK.replace("window_base = 0x10000000000", "window_base = 0x47ff0000");
    expect(
        &firmware(&overlap),
        "replica[0].firmware.window_base",
        20,
        "overlaps RAM",
    );
    let adjacent = FIRMWARE_OK.replace("window_base = 0x10000000000", "window_base = 0x48000000");
    parse(&firmware(&adjacent), "t.toml").unwrap();
    let zero = FIRMWARE_OK.replace("ram_size = 0x08000000", "ram_size = 0");
    expect(&firmware(&zero), "replica[0].firmware.ram_size", 19, ">= 1");
    let huge = FIRMWARE_OK.replace("0x10000000000", "0xffffffffffffffff");
    let e = err(&firmware(&huge));
    assert_eq!(
        (e.field.as_str(), e.line),
        ("", Some(20)),
        "toml itself rejects it: {e}"
    );
    expect(
        &firmware(&FIRMWARE_OK.replace("ram_size = 0x08000000\n", "")),
        "replica[0].firmware.ram_size",
        16,
        "missing",
    );
    expect(
        &firmware(&format!("{FIRMWARE_OK}\nfabric = \"shm\"")),
        "replica[0].firmware.fabric",
        22,
        "unknown key",
    );
    expect(
        &firmware(FIRMWARE_OK).replace("\"qemu-virt-a53\"", "3"),
        "replica[0].firmware.board",
        17,
        "string",
    );
}

#[test]
fn a_cluster_too_large_for_a_window_is_refused() {
    // Three regions of about 2 GB: the window would need offsets beyond u32.
    let mut config = Config::new(3);
    config.slot_count = 13_000_000;
    let mut d = Deployment::shm_linux("big", config, 1000, "/x".into(), Polling::Shared, &[]);
    for r in &mut d.replicas {
        r.host = Host::Firmware(FirmwareHost {
            board: "b".into(),
            ram_base: 0,
            ram_size: 0x1000,
            window_base: 0x1_0000_0000,
            window_size: 0x1_0000_0000,
        });
    }
    let source = d.to_toml();
    let line = 1 + source
        .lines()
        .position(|l| l.starts_with("window_size"))
        .unwrap();
    expect(
        &source,
        "replica[0].firmware.window_size",
        line,
        "cannot be laid out in a firmware window",
    );
    // The same cluster on Linux hosts has no window to fit.
    d.replicas =
        Deployment::shm_linux("big", config, 1000, "/x".into(), Polling::Shared, &[]).replicas;
    parse(&d.to_toml(), "t.toml").unwrap();
}

#[test]
fn a_firmware_window_holds_header_regions_and_rings() {
    let mut config = Config::new(2);
    config.detector = mu_nostd::DetectorConfig::paper(5);
    let layout = WindowLayout::new(&config).unwrap();
    let bytes = layout.bytes;
    let small = format!("window_size = {:#x}", bytes - 1);
    let e = err(&firmware(
        &FIRMWARE_OK.replace("window_size = 0x400000", &small),
    ));
    assert_eq!(
        (e.field.as_str(), e.line),
        ("replica[0].firmware.window_size", Some(21))
    );
    // What the window holds, as `window_layout` lays it out: the header, 2 regions
    // and a ring per ordered pair of replicas (self included) and plane.
    let stride = layout.region_stride;
    assert_eq!(bytes, 4096 + 2 * u64::from(stride) + 8 * 1152);
    assert_eq!(
        e.reason,
        format!(
            "too small: 2 regions of {stride} bytes (each rounded up to 4 KiB), 8 rings of 1152 \
             bytes and the 4 KiB header need {bytes} ({bytes:#x}) bytes (found {:#x})",
            bytes - 1
        )
    );
    let exact = format!("window_size = {bytes:#x}");
    parse(
        &firmware(&FIRMWARE_OK.replace("window_size = 0x400000", &exact)),
        "t.toml",
    )
    .unwrap();
}

#[test]
fn load_reports_read_errors_without_a_line() {
    let e = load("/nonexistent/board-configs/x.toml".as_ref()).unwrap_err();
    assert_eq!((e.line, e.column, e.field.as_str()), (None, None, ""));
    assert!(e.reason.contains("cannot read"), "{e}");
    let path = std::env::temp_dir().join(format!("board-configs-{}.toml", std::process::id()));
    let mut bytes = BASE.as_bytes().to_vec();
    bytes[BASE.find("\"t\"").unwrap() + 1] = 0xff;
    fs::write(&path, bytes).unwrap();
    let e = load(&path).unwrap_err();
    fs::remove_file(&path).unwrap();
    assert_eq!((e.line, e.column), (Some(2), Some(9)), "{e}");
}

/// A tiny deterministic RNG (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random mutation of `source`.
fn mutate(rng: &mut Rng, source: &str) -> String {
    const BYTES: &[u8] = b"[]{}=\"'#.,\n -_0123456789xaz\\\t\xff";
    let mut bytes = source.as_bytes().to_vec();
    let mut lines: Vec<&str> = source.lines().collect();
    match rng.below(6) {
        0 => {
            for _ in 0..=rng.below(3) {
                let at = rng.below(bytes.len());
                bytes[at] = BYTES[rng.below(BYTES.len())];
            }
        }
        1 => {
            let at = rng.below(bytes.len());
            bytes[at] ^= 1 << rng.below(8);
        }
        2 => bytes.truncate(rng.below(bytes.len())),
        3 => {
            lines.remove(rng.below(lines.len()));
            return lines.join("\n");
        }
        4 => {
            let at = rng.below(lines.len());
            lines.insert(rng.below(lines.len()), lines[at]);
            return lines.join("\n");
        }
        _ => {
            let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
            lines.swap(a, b);
            return lines.join("\n");
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn fuzzed_files_never_panic_and_errors_have_lines() {
    let mut sources: Vec<String> = examples().into_iter().map(|(_, s)| s).collect();
    sources.push(firmware(FIRMWARE_OK));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut ok, mut failed) = (0, 0);
    for case in 0..4000 {
        let mut source = sources[case % sources.len()].clone();
        // Sometimes stack a few mutations.
        for _ in 0..=rng.below(3) / 2 {
            source = mutate(&mut rng, &source);
        }
        match parse(&source, "fuzz.toml") {
            Ok(d) => {
                ok += 1;
                round_trip(&d);
            }
            Err(e) => {
                failed += 1;
                let lines = source.lines().count().max(1);
                let line = e.line.unwrap_or_else(|| panic!("no line: {e}\n{source}"));
                assert!(line <= lines + 1, "line {line} of {lines}: {e}");
                assert!(e.column.is_some() && !e.reason.is_empty(), "{e}");
            }
        }
    }
    // Both outcomes must be common, or the mutations test nothing.
    assert!(ok > 200 && failed > 1000, "ok {ok}, failed {failed}");
}

#[test]
fn dotted_keys_and_inline_tables_point_at_line_and_column() {
    let source = r#"cluster = { name = "t", replicas = 2, tick_ns = 1000, slot_count = 1024, slot_size = 128, entry_slots_max = 8, pipeline_depth = 8, op_timeout_ticks = 2000, permission_retry_ticks = 1000, recycle_period_ticks = 100, detector.read_period_ticks = 5 }
[[replica]]
id = 0
linux.fabric = "shm"
[[replica]]
id = 1
linux = { fabric = "shm", polling = "shared" }
"#;
    parse(source, "t.toml").unwrap();
    let at = |e: &ConfigFileError| (e.field.clone(), e.line, e.column);
    // A value under a dotted key.
    let e = err(&source.replace("linux.fabric = \"shm\"", "linux.fabric = 3"));
    assert_eq!(
        at(&e),
        ("replica[0].linux.fabric".into(), Some(4), Some(16)),
        "{e}"
    );
    // An unknown dotted key: the error is at its last part.
    let e = err(&source.replace("linux.fabric", "linux.fabric = \"shm\"\nlinux.fab"));
    assert_eq!(
        at(&e),
        ("replica[0].linux.fab".into(), Some(5), Some(7)),
        "{e}"
    );
    // A value and an unknown key inside an inline table.
    let e = err(&source.replace("\"shared\"", "\"spin\""));
    assert_eq!(
        at(&e),
        ("replica[1].linux.polling".into(), Some(7), Some(37)),
        "{e}"
    );
    let e = err(&source.replace("polling", "poll"));
    assert_eq!(
        at(&e),
        ("replica[1].linux.poll".into(), Some(7), Some(27)),
        "{e}"
    );
    // A dotted key inside an inline table, far along its line.
    let e = err(&source.replace("read_period_ticks = 5", "read_period_ticks = -5"));
    let column = source.find("= 5 }").unwrap() + 3;
    assert_eq!(
        at(&e),
        (
            "cluster.detector.read_period_ticks".into(),
            Some(1),
            Some(column)
        ),
        "{e}"
    );
    // An inline table that is not a table.
    let e = err(&source.replace("linux = {", "linux = 4 #{"));
    assert_eq!(at(&e), ("replica[1].linux".into(), Some(7), Some(9)), "{e}");
}
