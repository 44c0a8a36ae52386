//! The simulator must catch each defect planted in the core (see the `bug-*` features of
//! `mu-nostd`) within a bounded number of seeds. Each variant is built into its own target
//! directory, so a defective `sim` binary never replaces the real one.

use std::path::Path;
use std::process::Command;

const DEFECTS: [&str; 4] = [
    "bug-skip-revoke",
    "bug-skip-prepare",
    "bug-small-quorum",
    "bug-no-checksum",
];
const SEEDS_MAX: &str = "300";

#[test]
fn the_simulator_catches_every_planted_defect() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let target = workspace.join("target").join("planted-bugs");
    for defect in DEFECTS {
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
                SEEDS_MAX,
                "--expect-violation",
            ])
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("cargo runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        println!("{defect}:\n{stdout}");
        assert!(
            output.status.success(),
            "{defect} was not caught within {SEEDS_MAX} seeds:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("VIOLATION"),
            "{defect}: no violation reported"
        );
    }
}
