//! `loadtest idle`: opens N SMTP connections that read the banner (and optionally say EHLO), then
//! sit idle; reports the MTA's resident memory before and with them open, per connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::procstat;
use crate::report::Progress;

#[derive(Parser, Clone, Debug)]
pub struct IdleArgs {
    /// SMTP server to connect to.
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub server: SocketAddr,
    /// Connections to hold open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Send EHLO on each connection before going idle (else only the banner is read).
    #[arg(long)]
    pub ehlo: bool,
    /// The MTA's main process: its memory is measured.
    #[arg(long)]
    pub mta_pid: u32,
    /// How long to hold them once all are open.
    #[arg(long, default_value_t = 2)]
    pub hold_seconds: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
}

/// One idle connection, kept open by holding its reader.
async fn open(server: SocketAddr, ehlo: bool) -> anyhow::Result<BufReader<TcpStream>> {
    let mut s = BufReader::new(TcpStream::connect(server).await?);
    let mut line = String::new();
    s.read_line(&mut line).await?;
    if !line.starts_with("220") {
        bail!("banner: {}", line.trim_end());
    }
    if ehlo {
        s.get_mut().write_all(b"EHLO idle.loadtest\r\n").await?;
        loop {
            line.clear();
            if s.read_line(&mut line).await? == 0 || !line.starts_with("250") {
                bail!("EHLO: {}", line.trim_end());
            }
            if line.as_bytes().get(3) == Some(&b' ') {
                break;
            }
        }
    }
    Ok(s)
}

pub async fn run(a: IdleArgs) -> anyhow::Result<()> {
    let report = measure(&a).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

pub async fn measure(a: &IdleArgs) -> anyhow::Result<serde_json::Value> {
    if !a.server.ip().is_loopback() {
        bail!("loadtest only targets loopback addresses");
    }
    // One connection first, so the MTA's lazily built per-listener state is in the baseline.
    drop(open(a.server, a.ehlo).await?);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = procstat::tree_rss_kb(a.mta_pid);
    let deadline = Instant::now() + Duration::from_secs(a.max_seconds);
    let progress = Progress::new("connecting", a.connections as u64);
    let done = progress.counter();
    let mut held = Vec::with_capacity(a.connections);
    let mut pending = JoinSet::new();
    let mut failed = 0usize;
    let mut first_error = None;
    let mut started = 0;
    // At most 256 handshakes in flight: the accept queue stays short.
    while held.len() + failed < a.connections && Instant::now() < deadline {
        while started < a.connections && pending.len() < 256 {
            let (server, ehlo) = (a.server, a.ehlo);
            pending.spawn(async move { open(server, ehlo).await });
            started += 1;
        }
        match pending.join_next().await {
            Some(Ok(Ok(c))) => held.push(c),
            Some(Ok(Err(e))) => {
                failed += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
        done.store(held.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
    progress.finish();
    tokio::time::sleep(Duration::from_secs(a.hold_seconds)).await;
    let with = procstat::tree_rss_kb(a.mta_pid);
    let open_now = held.len();
    drop(held);
    let added = with.saturating_sub(before);
    Ok(json!({
        "connections": open_now,
        "failed": failed,
        "first_error": first_error,
        "ehlo": a.ehlo,
        "mta_rss_before_kb": before,
        "mta_rss_with_connections_kb": with,
        "added_rss_kb": added,
        "added_rss_mb": (added as f64 / 1024.0 * 10.0).round() / 10.0,
        "bytes_per_connection": if open_now > 0 { added * 1024 / open_now as u64 } else { 0 },
    }))
}
