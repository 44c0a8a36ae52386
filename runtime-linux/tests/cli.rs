//! The `mu` command as a user meets it: config errors name the file, the line and the field;
//! replicas started with different cluster configurations refuse each other with a clear
//! message; a replica whose configuration a quorum refuses exits with status 4 without ever
//! leading; a second process for the same replica is refused; a replica started from the
//! example file of `board-configs/` runs; a killed replica leaves its memory to its idle reaper.

// Every `unsafe` block states why it is sound; every `unsafe fn` says what its callers must
// uphold, and its body spells out its own unsafe operations.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn mu() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mu"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/dev/shm/mu-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The example cluster file with its shared-memory directory moved to `dir`.
fn example_in(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../board-configs/shm-3.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let text = text.replace(
        "fabric = \"shm\"",
        &format!(
            "fabric = \"shm\"\nshm_dir = \"{}\"",
            dir.join("regions").display()
        ),
    );
    let path = dir.join(format!("cluster-{}.toml", std::process::id()));
    std::fs::write(&path, edit(text)).unwrap();
    path
}

fn replica(config: &Path, id: u8) -> Command {
    let mut command = mu();
    command
        .args(["replica", "--config"])
        .arg(config)
        .args(["--id", &id.to_string()]);
    command
}

fn run(mut command: Command) -> Output {
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Waits until the child's stderr contains `needle`, then kills it; returns what it wrote.
fn wait_for(mut child: Child, needle: &str) -> String {
    let mut pipe = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    while !seen.contains(needle) && Instant::now() < deadline {
        if let Ok(bytes) = rx.recv_timeout(Duration::from_millis(50)) {
            seen.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    seen
}

#[test]
fn config_errors_name_file_line_and_field() {
    let dir = scratch("errors");
    let config = example_in(&dir, |t| t.replace("slot_size = 256", "slot_size = 100"));
    let line = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("slot_size"))
        .unwrap()
        + 1;
    let output = run(replica(&config, 0));
    assert!(!output.status.success());
    let message = stderr(&output);
    let expected = format!("{}:{line}:", config.display());
    assert!(message.contains(&expected), "{message}");
    assert!(message.contains("cluster.slot_size"), "{message}");
    assert!(message.contains("multiple of 64"), "{message}");

    let config = example_in(&dir, |t| {
        t.replace("polling = \"shared\"", "polling = \"fast\"")
    });
    let message = stderr(&run(replica(&config, 1)));
    assert!(message.contains("replica[0].linux.polling"), "{message}");

    let config = example_in(&dir, |t| t);
    let message = stderr(&run(replica(&config, 5)));
    assert!(
        message.contains("replica 5 is not in this cluster"),
        "{message}"
    );
    let message = stderr(&run(replica(Path::new("/nonexistent/cluster.toml"), 0)));
    assert!(message.contains("/nonexistent/cluster.toml"), "{message}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn replicas_with_different_configurations_refuse_each_other() {
    let dir = scratch("mismatch");
    let a = example_in(&dir, |t| t);
    let b = dir.join("other.toml");
    std::fs::write(
        &b,
        std::fs::read_to_string(&a)
            .unwrap()
            .replace("slot_count = 65536", "slot_count = 32768"),
    )
    .unwrap();
    let first = replica(&a, 0).stderr(Stdio::piped()).spawn().unwrap();
    let second = replica(&b, 1).stderr(Stdio::piped()).spawn().unwrap();
    let needle = "runs another cluster configuration";
    let seen_by_second = wait_for(second, needle);
    let seen_by_first = wait_for(first, needle);
    assert!(seen_by_second.contains(needle), "{seen_by_second}");
    assert!(seen_by_first.contains(needle), "{seen_by_first}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Refusal is final: the odd one out says why and exits with its own status, and never bids for
/// leadership; the two that agree keep running.
#[test]
fn a_replica_the_cluster_refuses_exits_with_status_4() {
    let dir = scratch("refused");
    let a = example_in(&dir, |t| t);
    let b = dir.join("odd.toml");
    std::fs::write(
        &b,
        std::fs::read_to_string(&a)
            .unwrap()
            .replace("slot_count = 65536", "slot_count = 32768"),
    )
    .unwrap();
    let mut agreeing: Vec<Child> = (0..2)
        .map(|id| replica(&a, id).stderr(Stdio::null()).spawn().unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let odd = run(replica(&b, 2));
    let took = started.elapsed();
    let said = stderr(&odd);
    let still_running = agreeing
        .iter_mut()
        .all(|child| child.try_wait().unwrap().is_none());
    for child in &mut agreeing {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(odd.status.code(), Some(4), "{said}");
    assert!(said.contains("refused"), "{said}");
    assert!(
        said.contains("runs another cluster configuration"),
        "{said}"
    );
    assert!(!said.contains("leading in tenure"), "{said}");
    assert!(still_running, "the agreeing replicas stopped");
    println!("refused after {took:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_replica_runs_once_and_reclaims_what_a_killed_one_left() {
    let dir = scratch("once");
    let config = example_in(&dir, |t| t);
    let mut first = replica(&config, 2).stderr(Stdio::null()).spawn().unwrap();
    let port = dir.join("regions").join("client-2.port");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !port.exists() {
        assert!(Instant::now() < deadline, "replica 2 did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let message = stderr(&run(replica(&config, 2)));
    assert!(
        message.contains("replica 2 is already running"),
        "{message}"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    let again = replica(&config, 2).stderr(Stdio::piped()).spawn().unwrap();
    let seen = wait_for(again, "left by pid");
    assert!(
        seen.contains("reclaimed") && seen.contains("left by pid"),
        "{seen}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_verbs_replica_says_what_is_missing() {
    let dir = scratch("verbs");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../board-configs/verbs-3.toml");
    let text = std::fs::read_to_string(example).unwrap().replace(
        "shm_dir = \"/dev/shm/mu-verbs-3\"",
        &format!("shm_dir = \"{}\"", dir.join("files").display()),
    );
    let config = dir.join("verbs-3.toml");
    std::fs::write(&config, text).unwrap();
    let output = run(replica(&config, 0));
    assert!(!output.status.success());
    let err = stderr(&output);
    if cfg!(feature = "verbs") {
        // This example names mlx5_0: a host without it (any host of CI) is told so, plainly.
        assert!(err.contains("open RDMA device mlx5_0"), "{err}");
        assert!(
            err.contains("no RDMA device") || err.contains("no such device"),
            "{err}"
        );
    } else {
        assert!(err.contains("built without the verbs fabric"), "{err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Pids whose parent is `parent`, from `/proc`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).is_some_and(|f| f[1] == parent.to_string()))
        .collect()
}

/// The fields of `/proc/PID/stat` after the command name: state first (field 3 of proc(5)).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    Some(after_name.split(' ').map(str::to_owned).collect())
}

#[test]
fn a_killed_replicas_memory_is_unmapped_by_an_idle_reaper_that_holds_nothing_else() {
    let dir = scratch("reaper");
    let config = example_in(&dir, |t| t);
    let mut replica_2 = replica(&config, 2).stderr(Stdio::piped()).spawn().unwrap();
    let pid = replica_2.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    let reaper = loop {
        if let [reaper] = children_of(pid)[..] {
            break reaper;
        }
        assert!(Instant::now() < deadline, "replica 2 started no reaper");
        std::thread::sleep(Duration::from_millis(10));
    };
    // proc(5): field 41, the policy; SCHED_IDLE is 5. The reaper sheds its descriptors, then
    // takes that policy, as soon as it runs: found at once, it may not have run yet.
    let idle = |pid| stat_fields(pid).is_some_and(|f| f[41 - 3] == "5");
    while !idle(reaper) {
        if Instant::now() > deadline {
            let _ = replica_2.kill();
            panic!(
                "the reaper never took SCHED_IDLE: {:?}",
                stat_fields(reaper)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let descriptors: Vec<String> = std::fs::read_dir(format!("/proc/{reaper}/fd"))
        .unwrap()
        .map(|e| {
            std::fs::read_link(e.unwrap().path())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        descriptors,
        ["anon_inode:[pidfd]"],
        "the reaper holds only the replica's pidfd"
    );
    // The reaper starts before the replica opens any file; the port comes after its region.
    let port = dir.join("regions").join("client-2.port");
    while !port.exists() {
        assert!(Instant::now() < deadline, "replica 2 made no port");
        std::thread::sleep(Duration::from_millis(10));
    }
    let maps = std::fs::read_to_string(format!("/proc/{reaper}/maps")).unwrap();
    assert!(
        maps.contains("replica-2.region"),
        "the reaper shares the replica's memory"
    );
    // Either the kernel holds the region in huge pages, or the replica said why not.
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let region = &smaps[smaps.find("replica-2.region").unwrap()..];
    let pmd_mapped_kb: u64 = region
        .lines()
        .find_map(|l| l.strip_prefix("ShmemPmdMapped:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    replica_2.kill().unwrap();
    let said = {
        let mut text = String::new();
        replica_2
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    };
    replica_2.wait().unwrap();
    assert!(
        pmd_mapped_kb > 0 || said.contains("region in small pages"),
        "{said}"
    );
    // Reparented once the replica died; gone (or a zombie, where nobody reaps) once it has
    // unmapped the memory.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stat_fields(reaper).is_some_and(|f| f[0] != "Z") {
        assert!(Instant::now() < deadline, "the reaper outlived the replica");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
