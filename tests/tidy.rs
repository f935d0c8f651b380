//! Tidy checks, in the spirit of TigerBeetle's tidy.zig: source rules that
//! a compiler does not enforce.
//!
//! - The consensus core (`src/raft`) and the simulator (`src/sim`) are
//!   deterministic: no clock, thread, socket, file, process, environment or
//!   randomness that was not passed in.
//! - The core does not `unwrap()` (internal invariants use `assert!` or
//!   `expect` with the invariant's name; peer input is validated).
//! - Every module starts with a `//!` comment.
//! - Code, comments and docs stay inside the repository: no pointer to
//!   files a clone does not have, no talk of numbered work items ("issue
//!   7") where the code itself should be described (docs/REQUIREMENTS.md
//!   holds the requirements).

use std::path::{Path, PathBuf};

/// Identifiers that mean I/O, time, threads or ambient randomness.
const FORBIDDEN_IN_DETERMINISTIC_CODE: &[&str] = &[
    "std::time",
    "Instant",
    "SystemTime",
    "std::thread",
    "thread::spawn",
    "std::net",
    "TcpStream",
    "UdpSocket",
    "std::fs",
    "File::",
    "OpenOptions",
    "std::process",
    "std::env",
    "thread_rng",
    "OsRng",
    "rand::random",
    "getrandom",
    "tokio",
    "io_uring",
    "libc::",
];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Whether a file holds only unit tests (`mod tests;` under `#[cfg(test)]`).
fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "tests.rs")
}

/// The part of a source file that is not unit tests.
fn non_test_source(text: &str) -> &str {
    match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => text,
    }
}

/// Lines of `text` (outside comments) that contain a forbidden identifier.
fn violations(text: &str, forbidden: &[&str]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (number, line) in non_test_source(text).lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for word in forbidden {
            if code.contains(word) {
                out.push((number + 1, format!("{word:?} in: {}", line.trim())));
            }
        }
    }
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn tidy_catches_what_it_claims_to() {
    let bad = "use std::time::Instant;\nfn f() { let _ = Instant::now(); }\n";
    assert_eq!(violations(bad, FORBIDDEN_IN_DETERMINISTIC_CODE).len(), 3);
    let commented = "// std::time is mentioned only in a comment\n";
    assert!(violations(commented, FORBIDDEN_IN_DETERMINISTIC_CODE).is_empty());
    let in_tests = "fn f() {}\n#[cfg(test)]\nmod tests { use std::fs; }\n";
    assert!(violations(in_tests, FORBIDDEN_IN_DETERMINISTIC_CODE).is_empty());
}

#[test]
fn consensus_core_and_simulator_are_deterministic() {
    let mut found = Vec::new();
    for dir in ["src/raft", "src/sim"] {
        let files = rust_files(&root().join(dir));
        assert!(!files.is_empty(), "{dir} has no sources");
        for file in files.into_iter().filter(|f| !is_test_file(f)) {
            let text = std::fs::read_to_string(&file).expect("readable source");
            for (line, what) in violations(&text, FORBIDDEN_IN_DETERMINISTIC_CODE) {
                found.push(format!("{}:{line}: {what}", file.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "non-deterministic code in the core or the simulator:\n{}",
        found.join("\n")
    );
}

#[test]
fn consensus_core_does_not_unwrap() {
    let mut found = Vec::new();
    for file in rust_files(&root().join("src/raft"))
        .into_iter()
        .filter(|f| !is_test_file(f))
    {
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (line, what) in violations(&text, &[".unwrap()"]) {
            found.push(format!("{}:{line}: {what}", file.display()));
        }
    }
    assert!(
        found.is_empty(),
        "unwrap in the core:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_module_says_what_it_does() {
    let mut missing = Vec::new();
    for dir in ["src", "ringlog/src", "bench/src"] {
        for file in rust_files(&root().join(dir)) {
            let text = std::fs::read_to_string(&file).expect("readable source");
            if !text.trim_start().starts_with("//!") {
                missing.push(file.display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "modules without a //! doc comment:\n{}",
        missing.join("\n")
    );
}

/// Files whose text is checked for references outside the repository.
fn text_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                if name != "target" && name != ".git" {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| {
                ["rs", "md", "toml", "service", "yml", "sh"].contains(&e.to_str().unwrap_or(""))
            }) || name == "run"
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Lines of `text` that point outside the repository or name a numbered
/// work item instead of describing the code.
fn outside_references(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let lower = line.to_lowercase();
        let pointer = ["../shared", "brief.md", "seed.txt"]
            .iter()
            .any(|p| lower.contains(*p))
            || lower.match_indices("brief ").any(|(at, _)| {
                let rest = &lower[at + "brief ".len()..];
                rest.starts_with('§')
                    || rest
                        .strip_prefix('i')
                        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
            });
        let work_item = lower.match_indices("issue").any(|(at, _)| {
            let rest = lower[at + "issue".len()..].trim_start_matches('s');
            let rest = rest.trim_start_matches([' ', '#']);
            rest.starts_with(|c: char| c.is_ascii_digit())
        });
        if pointer || work_item {
            out.push((number + 1, line.trim().to_string()));
        }
    }
    out
}

#[test]
fn outside_references_are_caught() {
    // Assembled at run time, so that this file names no outside place
    // itself.
    let (shared, item, card) = ("shared", "issue", "BRIEF");
    for bad in [
        format!("see ../{shared}/seed.txt"),
        format!("//! The delta engine ({item} 4): turns"),
        format!("built ({item}s 5 and 7)"),
        format!("({card} I4)"),
        format!("fixes {item} #12"),
    ] {
        assert_eq!(outside_references(&bad).len(), 1, "{bad}");
    }
    for fine in [
        "the I/O thread issues each stage's writes",
        "invariant I4 (docs/REQUIREMENTS.md)",
        "a brief pause",
        "a brief introduction",
    ] {
        assert!(outside_references(fine).is_empty(), "{fine}");
    }
}

#[test]
fn code_and_docs_stay_inside_the_repository() {
    let this_file = root().join("tests/tidy.rs");
    let mut found = Vec::new();
    for file in text_files(&root()) {
        if file == this_file {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for (line, what) in outside_references(&text) {
            found.push(format!("{}:{line}: {what}", file.display()));
        }
    }
    assert!(
        found.is_empty(),
        "references outside the repository or to numbered work items \
         (describe the code; requirements are in docs/REQUIREMENTS.md):\n{}",
        found.join("\n")
    );
}
