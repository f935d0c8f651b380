//! End to end: `bunker demo` starts five real `bunker serve` processes
//! (TLS, io_uring log, real accounts application), runs concurrent clients
//! through a SIGKILL-and-restart and the destruction of two servers at the
//! same instant, then checks every acknowledged transfer exactly once,
//! money conserved and the survivors byte-identical. The demo's exit status
//! carries its verdict.

use std::process::Command;

fn demo(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bunker"))
        .arg("demo")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run bunker demo");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn demo_survives_a_crash_and_two_destroyed_servers_with_nothing_lost() {
    let (ok, text) = demo(&["--seconds", "15", "--clients", "4", "--accounts", "10"]);
    println!("{text}");
    assert!(ok, "bunker demo failed:\n{text}");
    assert!(text.contains("PASS"), "{text}");
    assert!(
        text.contains("nuclear strike"),
        "the destruction did not happen:\n{text}"
    );
}

#[test]
fn demo_with_the_exec_adapter_passes_calm() {
    let (ok, text) = demo(&[
        "--seconds",
        "5",
        "--clients",
        "2",
        "--accounts",
        "4",
        "--exec-mode",
        "--calm",
    ]);
    println!("{text}");
    assert!(ok, "bunker demo --exec-mode failed:\n{text}");
}
