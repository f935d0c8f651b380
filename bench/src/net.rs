//! `bunker-bench net`: tokio (epoll) against tokio-uring (io_uring) for the
//! transport's pattern, on loopback, without TLS.
//!
//! Two measurements, each run for both stacks alternately (`--rounds`
//! times) so that machine noise hits both alike:
//! - ping-pong: one connection, a 256-byte message and its echo, one at a
//!   time (the commit path's round trip): round-trip percentiles;
//! - stream: one connection, 256-byte messages written back to back in
//!   batches of 64 and read by the other side (replication traffic):
//!   messages per second.
//!
//! The design card asks for io_uring networking unless a measurement shows
//! it worse; this is that measurement (docs/PROTOCOL.md records the result).

use clap::Args;
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct NetArgs {
    /// Round trips per ping-pong run.
    #[arg(long, default_value_t = 20_000)]
    pings: u64,
    /// Messages per stream run.
    #[arg(long, default_value_t = 400_000)]
    messages: u64,
    /// Alternating rounds per stack.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const MESSAGE: usize = 256;
const BATCH: usize = 64;

fn free_addr() -> Result<SocketAddr, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map_err(|e| e.to_string())
}

// ------------------------------------------------------------------ tokio

fn tokio_run(pings: u64, messages: u64) -> Result<(Histogram<u64>, f64), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let addr = free_addr()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| e.to_string())?;
        // The server runs on its own thread with its own runtime, like a peer.
        let server = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(
                    listener.into_std().map_err(|e| e.to_string())?,
                )
                .map_err(|e| e.to_string())?;
                // Connection 1: echo. Connection 2: sink.
                let (mut s, _) = listener.accept().await.map_err(|e| e.to_string())?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; MESSAGE];
                while s.read_exact(&mut buf).await.is_ok() {
                    s.write_all(&buf).await.map_err(|e| e.to_string())?;
                }
                let (mut s, _) = listener.accept().await.map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; 64 * 1024];
                while s.read(&mut buf).await.map_err(|e| e.to_string())? > 0 {}
                Ok(())
            })
        });
        let mut h = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
        {
            let mut c = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            c.set_nodelay(true).map_err(|e| e.to_string())?;
            let mut buf = vec![7u8; MESSAGE];
            for _ in 0..pings {
                let t = Instant::now();
                c.write_all(&buf).await.map_err(|e| e.to_string())?;
                c.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
                let _ = h.record(t.elapsed().as_nanos() as u64);
            }
        }
        let t = Instant::now();
        {
            let mut c = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let batch = vec![9u8; MESSAGE * BATCH];
            for _ in 0..messages / BATCH as u64 {
                c.write_all(&batch).await.map_err(|e| e.to_string())?;
            }
            c.shutdown().await.map_err(|e| e.to_string())?;
        }
        server.join().map_err(|_| "server panicked".to_string())??;
        Ok((h, messages as f64 / t.elapsed().as_secs_f64()))
    })
}

// ------------------------------------------------------------ tokio-uring

fn uring_run(pings: u64, messages: u64) -> Result<(Histogram<u64>, f64), String> {
    let addr = free_addr()?;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| e.to_string())?;
    let server = std::thread::spawn(move || -> Result<(), String> {
        tokio_uring::start(async move {
            let listener = tokio_uring::net::TcpListener::from_std(listener);
            let (s, _) = listener.accept().await.map_err(|e| e.to_string())?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; MESSAGE];
            loop {
                let (res, b) = read_exact_uring(&s, buf).await;
                buf = b;
                if res.is_err() {
                    break;
                }
                let (res, b) = s.write_all(buf).await;
                buf = b;
                res.map_err(|e| e.to_string())?;
            }
            let (s, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let (res, b) = s.read(buf).await;
                buf = b;
                if res.map_err(|e| e.to_string())? == 0 {
                    break;
                }
            }
            Ok(())
        })
    });
    let result = tokio_uring::start(async move {
        let mut h = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
        {
            let c = tokio_uring::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            c.set_nodelay(true).map_err(|e| e.to_string())?;
            let mut buf = vec![7u8; MESSAGE];
            for _ in 0..pings {
                let t = Instant::now();
                let (res, b) = c.write_all(buf).await;
                res.map_err(|e| e.to_string())?;
                let (res, b) = read_exact_uring(&c, b).await;
                res.map_err(|e| e.to_string())?;
                buf = b;
                let _ = h.record(t.elapsed().as_nanos() as u64);
            }
        }
        let t = Instant::now();
        {
            let c = tokio_uring::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let mut batch = vec![9u8; MESSAGE * BATCH];
            for _ in 0..messages / BATCH as u64 {
                let (res, b) = c.write_all(batch).await;
                res.map_err(|e| e.to_string())?;
                batch = b;
            }
            c.shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>((h, messages as f64 / t.elapsed().as_secs_f64()))
    })?;
    server.join().map_err(|_| "server panicked".to_string())??;
    Ok(result)
}

async fn read_exact_uring(
    s: &tokio_uring::net::TcpStream,
    mut buf: Vec<u8>,
) -> (Result<(), String>, Vec<u8>) {
    let want = buf.len();
    let mut got = 0;
    while got < want {
        let (res, b) = s
            .read(tokio_uring::buf::BoundedBuf::slice(buf, got..))
            .await;
        buf = b.into_inner();
        match res {
            Ok(0) => return (Err("closed".into()), buf),
            Ok(n) => got += n,
            Err(e) => return (Err(e.to_string()), buf),
        }
    }
    (Ok(()), buf)
}

// ---------------------------------------------------------------- driver

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(args: NetArgs) -> Result<(), String> {
    let mut p50 = [Vec::new(), Vec::new()];
    let mut p99 = [Vec::new(), Vec::new()];
    let mut rate = [Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        for (i, name) in ["tokio", "tokio-uring"].iter().enumerate() {
            let (h, r) = if i == 0 {
                tokio_run(args.pings, args.messages)?
            } else {
                uring_run(args.pings, args.messages)?
            };
            let (a, b) = (
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3,
            );
            println!(
                "round {round} {name:<12} ping-pong p50 {a:7.1} us  p99 {b:7.1} us   stream {:>10.0} msg/s",
                r
            );
            p50[i].push(a);
            p99[i].push(b);
            rate[i].push(r);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (t50, u50) = (median(&mut p50[0]), median(&mut p50[1]));
    let (t99, u99) = (median(&mut p99[0]), median(&mut p99[1]));
    let (tr, ur) = (median(&mut rate[0]), median(&mut rate[1]));
    println!(
        "median of {} rounds: ping-pong p50 tokio {t50:.1} us, tokio-uring {u50:.1} us (uring/tokio {:.2}x); \
p99 {t99:.1} vs {u99:.1} us ({:.2}x); stream tokio {tr:.0} msg/s, tokio-uring {ur:.0} msg/s ({:.2}x)",
        args.rounds,
        u50 / t50,
        u99 / t99,
        ur / tr
    );
    Ok(())
}
