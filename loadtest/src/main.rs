//! `loadtest`: end-to-end load for sluice or any SMTP server, on loopback.
//!
//! - `inject` sends N messages over C concurrent sessions and reports accepted messages per
//!   second and the latency from the end of DATA to the 250 reply. With `--metrics` it reads
//!   sluice's `/metrics` before and after, and reports fsyncs per message.
//! - `sink` is an SMTP sink that accepts (or fails a share of) what it is sent, and counts.
//! - `relay` starts a sink, injects into an MTA that relays to it, and reports end-to-end
//!   messages per second until the sink has them all, with the MTA's CPU time and memory.
//!
//! Loads are bounded in count (`--messages`) and time (`--max-seconds`).

mod procstat;
mod relay;
mod sink;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(name = "loadtest", about = "SMTP load generator for sluice (loopback only)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Inject messages and report accepted/s and DATA-end -> 250 latency.
    Inject(InjectArgs),
    /// Run an SMTP sink until interrupted.
    Sink(sink::SinkArgs),
    /// Start a sink, inject into an MTA relaying to it, report end-to-end throughput.
    Relay(relay::RelayArgs),
}

#[derive(Parser, Clone, Debug)]
pub struct InjectArgs {
    /// SMTP server to inject into.
    #[arg(long, default_value = "127.0.0.1:2525")]
    server: SocketAddr,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 16)]
    sessions: usize,
    /// Messages in total.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Message size in bytes (headers included).
    #[arg(long, default_value_t = 10_240)]
    size: usize,
    /// Send MAIL, RCPT and DATA in one write (RFC 2920).
    #[arg(long)]
    pipelining: bool,
    /// sluice's metrics URL, for fsyncs per message (e.g. http://127.0.0.1:8025/metrics).
    #[arg(long)]
    metrics: Option<String>,
    /// Stop after this many seconds even if not all messages were sent.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
    /// Recipient domain.
    #[arg(long, default_value = "example.org")]
    rcpt_domain: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Inject(a) => {
            let report = inject(a).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Cmd::Sink(a) => sink::run(a).await,
        Cmd::Relay(a) => relay::run(a).await,
    }
}

fn scrape(url: &str) -> anyhow::Result<(f64, f64)> {
    let text = ureq::get(url).call()?.body_mut().read_to_string()?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
            .unwrap_or(0.0)
    };
    Ok((value("sluice_spool_fsyncs_total "), value("sluice_spool_records_total ")))
}

async fn inject(a: InjectArgs) -> anyhow::Result<serde_json::Value> {
    if !a.server.ip().is_loopback() {
        bail!("loadtest only targets loopback addresses");
    }
    let before = match &a.metrics {
        Some(u) => Some(scrape(u).context("reading metrics")?),
        None => None,
    };
    let body = Arc::new(make_body(a.size));
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.max_seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..a.sessions {
        let (a, body, next) = (a.clone(), body.clone(), next.clone());
        tasks.push(tokio::spawn(async move { session(s, &a, &body, &next, deadline).await }));
    }
    let mut latencies: Vec<u32> = Vec::new();
    let mut errors = 0u64;
    for t in tasks {
        match t.await? {
            Ok(l) => latencies.extend(l),
            Err(e) => {
                errors += 1;
                eprintln!("session error: {e:#}");
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i] as f64 / 1000.0
    };
    let accepted = latencies.len() as u64;
    let mut report = json!({
        "server": a.server.to_string(),
        "sessions": a.sessions,
        "message_size": a.size,
        "pipelining": a.pipelining,
        "accepted": accepted,
        "session_errors": errors,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "messages_per_second": (accepted as f64 / secs).round(),
        "latency_ms": { "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0) },
    });
    if let (Some(u), Some((f0, r0))) = (&a.metrics, before) {
        let (f1, r1) = scrape(u)?;
        let fsyncs = f1 - f0;
        report["fsyncs"] = json!(fsyncs);
        report["records"] = json!(r1 - r0);
        report["fsyncs_per_message"] = json!(if accepted > 0 {
            (fsyncs / accepted as f64 * 1000.0).round() / 1000.0
        } else {
            0.0
        });
        report["messages_per_fsync"] =
            json!(if fsyncs > 0.0 { ((r1 - r0) / fsyncs * 10.0).round() / 10.0 } else { 0.0 });
    }
    Ok(report)
}

fn make_body(size: usize) -> Vec<u8> {
    let mut b = b"From: loadtest <load@example.com>\r\nTo: sink@example.org\r\nSubject: load test\r\nMessage-ID: <load@loadtest>\r\n\r\n".to_vec();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n";
    while b.len() + line.len() <= size {
        b.extend_from_slice(line);
    }
    b
}

async fn session(
    id: usize,
    a: &InjectArgs,
    body: &[u8],
    next: &AtomicU64,
    deadline: Instant,
) -> anyhow::Result<Vec<u32>> {
    let stream = TcpStream::connect(a.server).await?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    expect(&mut r, &mut line, 220).await?;
    w.write_all(format!("EHLO load{id}\r\n").as_bytes()).await?;
    expect(&mut r, &mut line, 250).await?;
    let mut latencies = Vec::new();
    let envelope =
        format!("MAIL FROM:<load@example.com>\r\nRCPT TO:<sink{id}@{}>\r\nDATA\r\n", a.rcpt_domain);
    while next.fetch_add(1, Ordering::Relaxed) < a.messages && Instant::now() < deadline {
        if a.pipelining {
            w.write_all(envelope.as_bytes()).await?;
            expect(&mut r, &mut line, 250).await?;
            expect(&mut r, &mut line, 250).await?;
            expect(&mut r, &mut line, 354).await?;
        } else {
            for (cmd, code) in envelope.split_inclusive("\r\n").zip([250, 250, 354]) {
                w.write_all(cmd.as_bytes()).await?;
                expect(&mut r, &mut line, code).await?;
            }
        }
        w.write_all(body).await?;
        w.write_all(b".\r\n").await?;
        let t = Instant::now();
        expect(&mut r, &mut line, 250).await?;
        latencies.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    w.write_all(b"QUIT\r\n").await?;
    Ok(latencies)
}

async fn expect(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    line: &mut String,
    code: u16,
) -> anyhow::Result<()> {
    loop {
        line.clear();
        if r.read_line(line).await? == 0 {
            bail!("connection closed");
        }
        if line.len() < 4 || line.as_bytes()[3] == b' ' {
            break;
        }
    }
    let got: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
    if got != code {
        bail!("expected {code}, got {}", line.trim_end());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink_args() -> sink::SinkArgs {
        sink::SinkArgs::accept_all("127.0.0.1:0".parse().unwrap())
    }

    fn inject_args(server: SocketAddr, messages: u64, pipelining: bool) -> InjectArgs {
        InjectArgs {
            server,
            sessions: 4,
            messages,
            size: 2048,
            pipelining,
            metrics: None,
            max_seconds: 30,
            rcpt_domain: "example.org".into(),
        }
    }

    #[tokio::test]
    async fn inject_into_the_sink_counts_every_message() {
        let sink = sink::Sink::start(sink_args()).await.unwrap();
        for pipelining in [false, true] {
            let before = sink.messages();
            let r = inject(inject_args(sink.addr, 200, pipelining)).await.unwrap();
            assert_eq!(r["accepted"], 200, "{r}");
            assert_eq!(r["session_errors"], 0);
            assert_eq!(sink.messages() - before, 200);
        }
        let bytes = sink.counters.bytes.load(Ordering::Relaxed);
        assert!(bytes >= 400 * 2000, "{bytes}");
    }

    #[tokio::test]
    async fn sink_failures_show_as_session_errors() {
        let sink =
            sink::Sink::start(sink::SinkArgs { reject_percent: 50, ..sink_args() }).await.unwrap();
        let r = inject(inject_args(sink.addr, 100, true)).await.unwrap();
        assert!(r["session_errors"].as_u64().unwrap() > 0, "{r}");
        assert!(r["accepted"].as_u64().unwrap() < 100);
    }
}
