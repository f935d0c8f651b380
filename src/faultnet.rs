//! Network faults for real processes: a private network namespace and
//! iptables rules inside it (the fault-injection suite, `tests/faults.rs`,
//! and the nemesis).
//!
//! What it does: creates a network namespace of its own (`ip netns add`),
//! brings its loopback up, lets a thread enter it (`setns`) so that the
//! servers that thread starts, and the clients it runs, all live on that
//! namespace's loopback; then adds and removes `iptables` rules in the
//! namespace's OUTPUT chain between servers, told apart by their loopback
//! addresses (`demo::cluster::server_ip`): a one-way cut, a two-way cut, a
//! partition into groups, random loss with a probability.
//!
//! What it does not do: touch the host's network: every rule is inside the
//! namespace, which is deleted on drop (with its rules). It needs root, `ip`
//! and `iptables`; `available()` says why not when they are missing.

use std::net::Ipv4Addr;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },
    #[error("cannot enter network namespace {name}: {source}")]
    Enter {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why network faults cannot be injected here, if they cannot.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (network namespaces and iptables need root)".into());
    }
    for (tool, flag) in [("ip", "-V"), ("iptables", "--version")] {
        let found = Command::new(tool)
            .arg(flag)
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!(
                "`{tool}` is not installed (apt-get install iproute2 iptables)"
            ));
        }
    }
    Ok(())
}

/// Runs a tool; on failure, the command line and what went wrong (its
/// stderr, or why it could not start). Shared with `faultdisk`.
pub(crate) fn run_tool(args: &[&str]) -> Result<(), (String, String)> {
    let command = args.join(" ");
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| (command.clone(), e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err((
            command,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

fn run(args: &[&str]) -> Result<(), NetError> {
    run_tool(args).map_err(|(command, output)| NetError::Command { command, output })
}

/// A network namespace of our own, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns, NetError> {
        let _ = run(&["ip", "netns", "del", name]); // a leftover of a killed run
        run(&["ip", "netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn exec(&self, args: &[&str]) -> Result<(), NetError> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Moves the calling thread into the namespace: sockets it opens and
    /// processes it starts from now on live there.
    pub fn enter_this_thread(&self) -> Result<(), NetError> {
        let path = format!("/var/run/netns/{}", self.name);
        let enter_err = |source| NetError::Enter {
            name: self.name.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(enter_err)?;
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace descriptor affects only the
        // calling thread's namespaces.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(enter_err(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Drops packets from `from` to `to` (with `probability` < 1.0, that
    /// fraction of them at random).
    pub fn drop_link(
        &self,
        from: Ipv4Addr,
        to: Ipv4Addr,
        probability: f64,
    ) -> Result<(), NetError> {
        let (from, to) = (from.to_string(), to.to_string());
        let p = format!("{:.4}", probability.clamp(0.0, 1.0));
        let mut rule = vec!["iptables", "-A", "OUTPUT", "-s", &from, "-d", &to];
        if probability < 1.0 {
            rule.extend_from_slice(&["-m", "statistic", "--mode", "random", "--probability", &p]);
        }
        rule.extend_from_slice(&["-j", "DROP"]);
        self.exec(&rule)
    }

    /// Cuts both directions between every server of `a` and every server of `b`.
    pub fn partition(&self, a: &[Ipv4Addr], b: &[Ipv4Addr]) -> Result<(), NetError> {
        for &x in a {
            for &y in b {
                self.drop_link(x, y, 1.0)?;
                self.drop_link(y, x, 1.0)?;
            }
        }
        Ok(())
    }

    /// Removes every rule: the network is whole again.
    pub fn heal(&self) -> Result<(), NetError> {
        self.exec(&["iptables", "-F", "OUTPUT"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}
