//! The markdown table and the JSON of a run.

use super::machine::Machine;
use super::{Failover, Point};
use std::fmt::Write as _;
use std::path::Path;

pub fn write(
    out: &Path,
    command: &str,
    machine: &Machine,
    points: &[Point],
    failovers: &[Failover],
    skipped: &[String],
) -> Result<(), String> {
    let mut s = String::new();
    let _ = writeln!(s, "# bunker-bench anchors\n");
    let _ = writeln!(s, "Command: `{command}`\n");
    let _ = writeln!(s, "{}\n", machine.text());
    let _ = writeln!(
        s,
        "| system | clients | ops/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | ops/s vs postgres | p50 vs postgres |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in points {
        let pg = points
            .iter()
            .find(|q| q.system.starts_with("postgres") && q.clients == p.clients);
        let (tput, p50) = match pg {
            Some(q) => (
                format!("{:.2}x", p.per_second / q.per_second.max(1e-9)),
                format!("{:.2}x", p.p50_us as f64 / q.p50_us.max(1) as f64),
            ),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {tput} | {p50} |",
            p.system,
            p.clients,
            p.per_second,
            p.p50_us as f64 / 1e3,
            p.p99_us as f64 / 1e3,
            p.p999_us as f64 / 1e3,
            p.max_us as f64 / 1e3,
            p.errors
        );
    }
    if !failovers.is_empty() {
        let _ = writeln!(
            s,
            "\nFailover: SIGKILL of the leader, then the time until a write started right after the kill is committed.\n"
        );
        let _ = writeln!(s, "| system | trials | p50 ms | p90 ms | max ms |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for f in failovers {
            let mut t = f.trials_ms.clone();
            t.sort_by(|a, b| a.total_cmp(b));
            let q = |x: f64| {
                t.get(((t.len() as f64 - 1.0) * x).round() as usize)
                    .copied()
                    .unwrap_or(0.0)
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.0} | {:.0} |",
                f.system,
                t.len(),
                q(0.5),
                q(0.9),
                t.last().copied().unwrap_or(0.0)
            );
        }
    }
    for why in skipped {
        let _ = writeln!(s, "\nNot measured: {why}");
    }
    let _ = writeln!(
        s,
        "\nPlots: `latency-p50.svg`, `latency-p99.svg` (latency against throughput, one point per client count)."
    );
    let table = out.join("anchors.md");
    std::fs::write(&table, &s).map_err(|e| format!("{}: {e}", table.display()))?;
    println!("{s}");
    let json = serde_json::json!({
        "command": command,
        "machine": machine,
        "points": points,
        "failovers": failovers,
        "skipped": skipped,
    });
    let path = out.join("anchors.json");
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}
