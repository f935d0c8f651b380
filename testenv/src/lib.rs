//! How a test skips what this machine cannot run (no root, no `iptables`,
//! no PostgreSQL, a kernel without Landlock, ...), so that a skip never
//! looks like a pass.
//!
//! Every test that depends on something optional asks this crate first:
//!
//! ```text
//! if testenv::require(bunker::faultnet::available()).is_none() {
//!     return;
//! }
//! ```
//!
//! A skip is
//!
//! - printed when the test binary exits, after libtest's own `test result`
//!   line, as a count and one line per skipped test with the reason (libtest
//!   captures what a passing test prints, so a message printed inside the
//!   test would be hidden);
//! - appended, one `SKIPPED: <test>: <why>` line each, to the file named by
//!   [`SKIP_LOG`] when that variable is set, so that a script running many
//!   test binaries (`.ci/run`) can count them all;
//! - a failure instead when [`REQUIRE_ALL`] is set (to anything but `0` or
//!   an empty string): the test panics with the reason, so that a machine
//!   that is meant to run everything (CI) cannot pass by skipping.

use std::fmt::Display;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once};

/// The environment variable that turns every skip into a failure.
pub const REQUIRE_ALL: &str = "BUNKER_REQUIRE_ALL";

/// The environment variable naming a file every skip is appended to.
pub const SKIP_LOG: &str = "BUNKER_SKIP_LOG";

/// The skips of this test binary, printed when it exits.
static SKIPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

/// `Some(value)` when `check` succeeded; otherwise records a skip of the
/// calling test with the error as the reason (or panics under
/// [`REQUIRE_ALL`]) and returns `None`.
pub fn require<T, E: Display>(check: Result<T, E>) -> Option<T> {
    match check {
        Ok(value) => Some(value),
        Err(why) => {
            skip(why);
            None
        }
    }
}

/// Records that the calling test skipped (all or part of) what it tests,
/// because of `why`; panics instead under [`REQUIRE_ALL`].
pub fn skip(why: impl Display) {
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed thread)")
        .to_string();
    if required() {
        panic!("{test} cannot run here and {REQUIRE_ALL} is set: {why}");
    }
    let line = format!("SKIPPED: {test}: {why}");
    // Shown with --nocapture or when the test fails later.
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG).filter(|p| !p.is_empty()) {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = appended {
            eprintln!("{SKIP_LOG}={}: {e}", path.to_string_lossy());
        }
    }
    SKIPPED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(line);
    AT_EXIT.call_once(|| {
        // SAFETY: `atexit` only stores the function pointer; `summary`
        // takes no arguments and does not unwind (see below).
        unsafe {
            libc::atexit(summary);
        }
    });
}

/// Whether [`REQUIRE_ALL`] is set.
pub fn required() -> bool {
    std::env::var(REQUIRE_ALL).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `Ok` when `program arg` runs and exits with status 0 (for example
/// `tool("strace", "-V")`); otherwise why not, naming the package that
/// provides it.
pub fn tool(program: &str, arg: &str, package: &str) -> Result<(), String> {
    match Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!(
            "`{program} {arg}` failed ({status}): is {package} installed?"
        )),
        Err(e) => Err(format!("`{program}` cannot run ({e}): install {package}")),
    }
}

/// Whether this process runs as root.
pub fn root() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err("not root".into())
    }
}

/// Printed at exit: how many tests of this binary skipped, and why. Runs
/// after libtest printed its `test result` line.
extern "C" fn summary() {
    // A panic must not unwind out of an `extern "C"` function.
    let _ = std::panic::catch_unwind(|| {
        let skipped = SKIPPED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if skipped.is_empty() {
            return;
        }
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| target_name(&n.to_string_lossy())))
            .unwrap_or_else(|| "this test binary".into());
        let mut text = format!(
            "\n{binary}: {}, counted as passed above ({REQUIRE_ALL}=1 makes a skip a failure):\n",
            count(skipped.len())
        );
        for line in skipped.iter() {
            text.push_str("  ");
            text.push_str(line);
            text.push('\n');
        }
        let _ = std::io::stderr().write_all(text.as_bytes());
    });
}

/// `faults` for cargo's `faults-0123456789abcdef`.
fn target_name(file: &str) -> String {
    match file.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => file.to_string(),
    }
}

fn count(n: usize) -> String {
    if n == 1 {
        "1 skip".into()
    } else {
        format!("{n} skips")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_passes_values_through() {
        assert_eq!(require::<_, String>(Ok(3)), Some(3));
    }

    #[test]
    fn binaries_are_named_without_cargo_hash() {
        assert_eq!(target_name("faults-0123456789abcdef"), "faults");
        assert_eq!(
            target_name("anchors_smoke-4514a7bc822c3193"),
            "anchors_smoke"
        );
        assert_eq!(target_name("bunker-bench"), "bunker-bench");
    }

    #[test]
    fn a_missing_tool_says_what_to_install() {
        let why =
            tool("/nonexistent/bunker-no-such-tool", "-V", "no-such-package").expect_err("missing");
        assert!(why.contains("install no-such-package"), "{why}");
        assert!(tool("true", "--version", "coreutils").is_ok());
    }
}
