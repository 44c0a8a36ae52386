//! The simulator must catch each defect planted in the core (see the `bug-*` features of
//! `mu-nostd`) within a bounded number of seeds. Each variant is built into its own target
//! directory, so a defective `sim` binary never replaces the real one.

use std::path::Path;
use std::process::Command;

/// Each defect and the seeds the simulator may take to catch it. A restarted replica that votes
/// at once loses a decided value only when it restarts right after a decision that the replica
/// it then forms a quorum with missed, which random seeds reach less often (seed 30 today);
/// `tests/restart.rs` reproduces it directly. A joiner that installs chunks without checking
/// them shows only when it reads a chunk slot its donor refilled (seed 45 today: the cluster
/// never commits again). A replica that takes a death notice of a peer's earlier life for its
/// current one keeps the restarted peer failed forever, and the cluster never catches it up
/// (seed 2 today). A rewrite that tears the only ballot of a decided value's copy is caught by the
/// watch on decided copies (`copies`) the moment it lands (seed 18 today); the loss it leads to
/// needs a longer schedule, which `tests/torn_rewrite.rs` plays directly.
const DEFECTS: [(&str, u32); 8] = [
    ("bug-skip-revoke", 300),
    ("bug-skip-prepare", 300),
    ("bug-small-quorum", 300),
    ("bug-no-checksum", 300),
    ("bug-restart-votes", 3000),
    ("bug-unchecked-snapshot", 1000),
    ("bug-stale-death", 300),
    ("bug-torn-rewrite", 300),
];

/// The workspace root and the target directory the defects are built in.
fn workspace_and_target() -> (&'static Path, std::path::PathBuf) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    (workspace, workspace.join("target").join("planted-bugs"))
}

#[test]
fn the_simulator_catches_every_planted_defect() {
    let (workspace, target) = workspace_and_target();
    for (defect, seeds) in DEFECTS {
        let output = Command::new(env!("CARGO"))
            .current_dir(workspace)
            .args([
                "run",
                "--release",
                "-q",
                "-p",
                "mu-tests",
                "--features",
                defect,
            ])
            .args([
                "--bin",
                "sim",
                "--",
                "--seeds",
                &seeds.to_string(),
                "--expect-violation",
            ])
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("cargo runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        println!("{defect}:\n{stdout}");
        assert!(
            output.status.success(),
            "{defect} was not caught within {seeds} seeds:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("VIOLATION"),
            "{defect}: no violation reported"
        );
    }
}

/// The directed schedule of `tests/restart.rs` loses a decided value with the defect it is
/// about, not only by chance of a seed.
#[test]
fn the_directed_restart_schedule_catches_a_restarted_voter() {
    let (workspace, target) = workspace_and_target();
    let output = Command::new(env!("CARGO"))
        .current_dir(workspace)
        .args(["test", "--release", "-q", "-p", "mu-tests"])
        .args(["--features", "bug-restart-votes", "--test", "restart"])
        .arg("a_restarted_replica_never_overrules_a_decided_value")
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success() && stdout.contains("applied \"command-b\" at position 0"),
        "the restart schedule passed with bug-restart-votes:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The directed schedule of `tests/torn_rewrite.rs` loses a decided value with the defect it is
/// about: the replica whose only copy was torn decides its own command over it.
#[test]
fn the_directed_torn_rewrite_schedule_catches_a_lost_ballot() {
    let (workspace, target) = workspace_and_target();
    let output = Command::new(env!("CARGO"))
        .current_dir(workspace)
        .args(["test", "--release", "-q", "-p", "mu-tests"])
        .args(["--features", "bug-torn-rewrite", "--test", "torn_rewrite"])
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stdout.contains("applied \"command-w\" at position"),
        "the torn-rewrite schedule passed with bug-torn-rewrite:\n{stdout}\n{stderr}"
    );
}
