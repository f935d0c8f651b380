//! `bunker-bench anchors --smoke` end to end: every system starts, serves
//! its clients, fails over where it has a leader, and the table, JSON and
//! plots are written. The test installs nothing (`--no-install`): without
//! PostgreSQL 15 or etcd (Debian's `postgresql-15`, `etcd-server`) the
//! harness says why it did not measure them, and the test records a skip
//! for each (`testenv`; CI installs both and sets BUNKER_REQUIRE_ALL, so
//! that nothing skips there). No figures are asserted (the machines are
//! shared).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn anchors_smoke_run_writes_the_table_and_the_plots() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_bunker-bench"));
    let bunker = exe.with_file_name("bunker");
    if !bunker.exists() {
        testenv::skip(format!(
            "{} is not built (cargo test --workspace builds it)",
            bunker.display()
        ));
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let run = Command::new(&exe)
        .args(["anchors", "--smoke", "--no-install", "--out"])
        .arg(out.path())
        .output()
        .expect("run bunker-bench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{text}");
    assert!(
        run.status.success(),
        "bunker-bench anchors --smoke failed:\n{text}"
    );
    let table = std::fs::read_to_string(out.path().join("anchors.md")).expect("the table");
    for system in ["bunker-blob-5", "bunker-accounts-5", "bunker-blob-1"] {
        assert!(
            table.contains(&format!("| {system} |")),
            "{system} missing:\n{table}"
        );
    }
    // PostgreSQL and etcd are measured unless they are not installed.
    for (system, row) in [
        ("postgres", "| postgres-sync-any2 |"),
        ("etcd", "| etcd-5 |"),
    ] {
        let why = format!("Not measured: {system}:");
        if let Some(line) = table.lines().find(|l| l.starts_with(&why)) {
            let reason = line.trim_start_matches("Not measured: ");
            testenv::skip(format!("anchors did not measure {reason}"));
        } else {
            assert!(
                table.contains(row),
                "{system} neither measured nor explained:\n{table}"
            );
        }
    }
    assert!(table.contains("Failover"), "{table}");
    for plot in ["latency-p50.svg", "latency-p99.svg"] {
        let svg = std::fs::read_to_string(out.path().join(plot)).expect("a plot");
        assert!(svg.contains("<svg"), "{plot} is not an SVG");
    }
}
