//! `bunker status`: the cluster at a glance, read from every server's
//! `/status` endpoint.
//!
//! What it does: a bounded HTTP GET (plain TCP, timeouts on connect, read
//! and write, a size cap) to each server's metrics address, then one line
//! per server. What it does not do: change anything.

use crate::server::metrics::Status;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const STATUS_BYTES_MAX: u64 = 1 << 20;

/// Fetches one server's status document.
pub fn fetch_status(addr: SocketAddr, timeout: Duration) -> Result<Status, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("unreachable: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let request = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot ask: {e}"))?;
    let mut body = Vec::new();
    stream
        .take(STATUS_BYTES_MAX)
        .read_to_end(&mut body)
        .map_err(|e| format!("no answer: {e}"))?;
    let text = String::from_utf8_lossy(&body);
    let json = text.split("\r\n\r\n").nth(1).ok_or("not an HTTP answer")?;
    serde_json::from_str(json).map_err(|e| format!("bad status document: {e}"))
}

/// One line per server: the table `bunker status` prints.
pub fn render(rows: &[(u64, Result<Status, String>)]) -> String {
    let mut out = format!(
        "{:>4}  {:<12} {:>6} {:>6} {:>10} {:>10} {:>10} {:>8}  {:<16} {}\n",
        "id",
        "role",
        "term",
        "leader",
        "commit",
        "applied",
        "last",
        "max lag",
        "state hash",
        "health"
    );
    for (id, row) in rows {
        match row {
            Ok(s) => {
                let lag = s
                    .peers
                    .iter()
                    .map(|p| p.lag)
                    .max()
                    .map_or("-".into(), |l| l.to_string());
                let health = match s.diverged {
                    Some(at) => format!("DIVERGED at {at}, awaiting a snapshot"),
                    None => "ok".to_string(),
                };
                out.push_str(&format!(
                    "{:>4}  {:<12} {:>6} {:>6} {:>10} {:>10} {:>10} {:>8}  {:<16} {}\n",
                    id,
                    s.role,
                    s.term,
                    s.leader.map_or("-".into(), |l| l.to_string()),
                    s.commit_index,
                    s.applied_index,
                    s.last_log_index,
                    lag,
                    &s.state_hash[..16.min(s.state_hash.len())],
                    health
                ));
            }
            Err(e) => out.push_str(&format!("{id:>4}  DOWN ({e})\n")),
        }
    }
    out
}
