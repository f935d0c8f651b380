//! `bunker sandbox-exec`: confines a program's writes to its working
//! directory with Landlock, then executes it.
//!
//! What it does: restricts the current process (read and execute anywhere;
//! write, create and remove only beneath the given directory and in
//! `/dev/null`), then replaces itself with the program (`exec`), which
//! inherits the restriction, as do its children. The adapters run the
//! application through it when `app.sandbox = true`. A program that writes
//! outside its directory gets `EACCES` (its outcome is then whatever it does
//! with that error: usually an error answer or a failure).
//!
//! What it does not do: confine reads, the network or other system calls.
//! Without Landlock in the kernel (before Linux 5.13, or disabled), the
//! program runs unconfined and a warning says so on stderr: writes outside
//! the directory then happen on the leader only and are never replicated.
//!
//! Why a separate exec step rather than `pre_exec`: building a ruleset
//! allocates, which is not safe between fork and exec in a threaded server.

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::ExitCode;

/// The hidden subcommand the adapters use.
pub const SUBCOMMAND: &str = "sandbox-exec";

/// Restricts this process to writing beneath `dir`; `Ok(false)` when the
/// kernel cannot enforce it.
pub fn confine(dir: &Path) -> Result<bool, String> {
    let abi = ABI::V2;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi))))
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                [dir, Path::new("/dev/null")],
                AccessFs::from_all(abi),
            ))
        })
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("Landlock: {e}"))?;
    Ok(!matches!(status.ruleset, RulesetStatus::NotEnforced))
}

/// Whether this kernel enforces Landlock (x86_64 and aarch64 share the
/// system call number 444).
pub fn supported() -> bool {
    // landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    // returns the ABI version, or fails without Landlock; it restricts
    // nothing.
    const SYS_LANDLOCK_CREATE_RULESET: libc::c_long = 444;
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: a null attribute pointer with size 0 is the documented way
    // to ask for the ABI version; no memory is read or written.
    let abi = unsafe {
        libc::syscall(
            SYS_LANDLOCK_CREATE_RULESET,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    abi >= 1
}

/// `bunker sandbox-exec DIR PROGRAM [ARGS...]`.
pub fn main(args: Vec<String>) -> ExitCode {
    let [dir, program, rest @ ..] = args.as_slice() else {
        eprintln!("usage: bunker {SUBCOMMAND} DIR PROGRAM [ARGS...]");
        return ExitCode::from(126);
    };
    match confine(Path::new(dir)) {
        Ok(true) => {}
        Ok(false) => eprintln!(
            "bunker {SUBCOMMAND}: this kernel does not enforce Landlock; running unconfined \
(writes outside {dir} would not be replicated)"
        ),
        Err(e) => {
            eprintln!("bunker {SUBCOMMAND}: cannot confine the application: {e}");
            return ExitCode::from(126);
        }
    }
    let error = std::process::Command::new(program).args(rest).exec();
    eprintln!("bunker {SUBCOMMAND}: cannot run {program}: {error}");
    ExitCode::from(127)
}
