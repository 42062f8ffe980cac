//! `loadtest inject`: N messages over C concurrent sessions, as fast as possible or paced at a
//! fixed rate. Reports accepted messages per second, latency percentiles from the end of DATA to
//! the 250 reply, and (with `--metrics`) sluice's fsyncs per message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::report::{Progress, Sample, Samples, round3};

#[derive(Parser, Clone, Debug)]
pub struct InjectArgs {
    /// SMTP server to inject into.
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub server: SocketAddr,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 16)]
    pub sessions: usize,
    /// Messages in total.
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    /// Message size in bytes (headers included); the smallest size with `--size-max`.
    #[arg(long, default_value_t = 10_240)]
    pub size: usize,
    /// Largest message size: sizes are then spread log-uniformly over [size, size-max].
    #[arg(long)]
    pub size_max: Option<usize>,
    /// Messages per connection before QUIT and a new connection (0 = all on one).
    #[arg(long, default_value_t = 0)]
    pub per_connection: u64,
    /// Send MAIL, RCPT and DATA in one write (RFC 2920).
    #[arg(long)]
    pub pipelining: bool,
    /// Headers as a bulk sender's signed mail has them (DKIM-Signature, List-Unsubscribe, MIME).
    #[arg(long)]
    pub realistic_headers: bool,
    /// Pace the injection at this many messages per second in total (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// sluice's metrics URL, for fsyncs per message (e.g. http://127.0.0.1:8025/metrics).
    #[arg(long)]
    pub metrics: Option<String>,
    /// Stop after this many seconds even if not all messages were sent.
    #[arg(long, default_value_t = 300)]
    pub max_seconds: u64,
    /// Recipient domain.
    #[arg(long, default_value = "example.org")]
    pub rcpt_domain: String,
    /// Also write the report (with the throughput timeline) to this JSON file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Draw throughput over time and the latency histogram into this PNG file.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

impl InjectArgs {
    /// Defaults for `server`, as the command line has them.
    pub fn to(server: SocketAddr) -> Self {
        let mut a = InjectArgs::parse_from(["inject"]);
        a.server = server;
        a
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

/// What `inject` measured: the JSON report and every accepted message's timing.
pub struct Injected {
    pub report: serde_json::Value,
    pub samples: Samples,
}

pub async fn inject(a: InjectArgs) -> anyhow::Result<Injected> {
    if !a.server.ip().is_loopback() {
        bail!("loadtest only targets loopback addresses");
    }
    if a.rate < 0.0 || !a.rate.is_finite() {
        bail!("--rate must be a positive number of messages per second");
    }
    let before = match &a.metrics {
        Some(u) => Some(scrape(u).context("reading metrics")?),
        None => None,
    };
    let bodies = Arc::new(Bodies::new(&a));
    let next = Arc::new(AtomicU64::new(0));
    let progress = Progress::new("injecting", a.messages);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(a.max_seconds);
    let mut tasks = Vec::new();
    for s in 0..a.sessions {
        let (a, bodies, next, done) = (a.clone(), bodies.clone(), next.clone(), progress.counter());
        let run = Run { args: a, bodies, next, done, start, deadline };
        tasks.push(tokio::spawn(async move { run.session(s).await }));
    }
    let mut samples = Vec::new();
    let mut errors = 0u64;
    for t in tasks {
        let (got, err) = t.await?;
        samples.extend(got);
        if let Some(e) = err {
            errors += 1;
            progress.println(format!("session error: {e:#}"));
        }
    }
    progress.finish();
    let secs = start.elapsed().as_secs_f64();
    let samples = Samples::new(samples);
    let accepted = samples.len() as u64;
    let mut report = json!({
        "server": a.server.to_string(),
        "sessions": a.sessions,
        "message_size": a.size,
        "message_size_max": a.size_max.unwrap_or(a.size),
        "per_connection": a.per_connection,
        "pipelining": a.pipelining,
        "realistic_headers": a.realistic_headers,
        "rate_limit": a.rate,
        "accepted": accepted,
        "session_errors": errors,
        "seconds": round3(secs),
        "messages_per_second": (accepted as f64 / secs).round(),
        "latency_ms": samples.latency_percentiles_ms(),
    });
    if let (Some(u), Some((f0, r0))) = (&a.metrics, before) {
        let (f1, r1) = scrape(u)?;
        let fsyncs = f1 - f0;
        report["fsyncs"] = json!(fsyncs);
        report["records"] = json!(r1 - r0);
        report["fsyncs_per_message"] =
            json!(if accepted > 0 { round3(fsyncs / accepted as f64) } else { 0.0 });
        report["messages_per_fsync"] =
            json!(if fsyncs > 0.0 { ((r1 - r0) / fsyncs * 10.0).round() / 10.0 } else { 0.0 });
    }
    Ok(Injected { report, samples })
}

/// Message texts: one buffer of the largest size, cut at line ends for smaller sizes.
struct Bodies {
    text: Vec<u8>,
    header_len: usize,
    line_len: usize,
    min: usize,
    max: usize,
}

const LINE: &[u8] =
    b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n";

impl Bodies {
    fn new(a: &InjectArgs) -> Bodies {
        let max = a.size_max.unwrap_or(a.size).max(a.size);
        let mut text = headers(a.realistic_headers);
        let header_len = text.len();
        while text.len() + LINE.len() <= max {
            text.extend_from_slice(LINE);
        }
        Bodies { text, header_len, line_len: LINE.len(), min: a.size, max }
    }

    /// The text of message number `n`: its size is fixed by `n`, so runs are repeatable.
    fn get(&self, n: u64) -> &[u8] {
        let size = if self.max > self.min {
            // Log-uniform: as many 1-2 KB messages as 50-100 KB ones, like real bulk mail.
            let u = (splitmix(n) >> 11) as f64 / (1u64 << 53) as f64;
            ((self.min as f64).ln() + u * ((self.max as f64).ln() - (self.min as f64).ln())).exp()
                as usize
        } else {
            self.min
        };
        let lines = size.saturating_sub(self.header_len) / self.line_len;
        &self.text[..(self.header_len + lines * self.line_len).min(self.text.len())]
    }
}

fn splitmix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn headers(realistic: bool) -> Vec<u8> {
    let mut h = Vec::new();
    if realistic {
        // What a DKIM-signing bulk sender's message carries: the signature alone is ~600 bytes.
        h.extend_from_slice(
            b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=s2026;\r\n\
              \tt=1795000000; h=from:to:subject:date:message-id:mime-version:content-type:\r\n\
              \tlist-unsubscribe:list-unsubscribe-post:feedback-id;\r\n\
              \tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n\
              \tb=",
        );
        for i in 0..5 {
            h.extend_from_slice(&[b'A' + i as u8; 68]);
            h.extend_from_slice(b"\r\n\t  ");
        }
        h.extend_from_slice(b"QUJDRA==\r\n");
        h.extend_from_slice(
            b"Date: Sun, 22 Nov 2026 06:00:00 +0000\r\n\
              MIME-Version: 1.0\r\n\
              Content-Type: text/plain; charset=utf-8\r\n\
              Content-Transfer-Encoding: 8bit\r\n\
              List-Unsubscribe: <mailto:unsub@example.com?subject=u>, <https://example.com/u/abc>\r\n\
              List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\
              Feedback-ID: campaign42:list7:loadtest:example.com\r\n",
        );
    }
    h.extend_from_slice(
        b"From: loadtest <load@example.com>\r\nTo: sink@example.org\r\nSubject: load test\r\nMessage-ID: <load@loadtest>\r\n\r\n",
    );
    h
}

/// One injecting session's share of the run.
struct Run {
    args: InjectArgs,
    bodies: Arc<Bodies>,
    /// The next message number to send (shared by all sessions).
    next: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    start: Instant,
    deadline: Instant,
}

impl Run {
    /// Sends messages until all are taken; returns the samples and the error that ended it.
    async fn session(&self, id: usize) -> (Vec<Sample>, Option<anyhow::Error>) {
        let mut samples = Vec::new();
        loop {
            match self.connection(id, &mut samples).await {
                Ok(true) => continue,
                Ok(false) => return (samples, None),
                Err(e) => return (samples, Some(e)),
            }
        }
    }

    /// One connection; Ok(true) when it ended because of `--per-connection`.
    async fn connection(&self, id: usize, samples: &mut Vec<Sample>) -> anyhow::Result<bool> {
        let a = &self.args;
        let stream = TcpStream::connect(a.server).await?;
        stream.set_nodelay(true)?;
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let mut line = String::new();
        expect(&mut r, &mut line, 220).await?;
        w.write_all(format!("EHLO load{id}\r\n").as_bytes()).await?;
        expect(&mut r, &mut line, 250).await?;
        let envelope = format!(
            "MAIL FROM:<load@example.com>\r\nRCPT TO:<sink{id}@{}>\r\nDATA\r\n",
            a.rcpt_domain
        );
        let mut sent = 0u64;
        let more = loop {
            if a.per_connection > 0 && sent == a.per_connection {
                break self.next.load(Ordering::Relaxed) < a.messages;
            }
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            if n >= a.messages || Instant::now() >= self.deadline {
                break false;
            }
            if a.rate > 0.0 {
                let due = self.start + Duration::from_secs_f64(n as f64 / a.rate);
                tokio::time::sleep_until(due.into()).await;
            }
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
            w.write_all(self.bodies.get(n)).await?;
            w.write_all(b".\r\n").await?;
            let t = Instant::now();
            expect(&mut r, &mut line, 250).await?;
            samples.push(Sample::new(self.start, t));
            self.done.fetch_add(1, Ordering::Relaxed);
            sent += 1;
        };
        w.write_all(b"QUIT\r\n").await?;
        Ok(more)
    }
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
    use crate::sink;

    fn sink_args() -> sink::SinkArgs {
        sink::SinkArgs::accept_all("127.0.0.1:0".parse().unwrap())
    }

    fn inject_args(server: SocketAddr, messages: u64, pipelining: bool) -> InjectArgs {
        InjectArgs { sessions: 4, messages, size: 2048, pipelining, ..InjectArgs::to(server) }
    }

    #[tokio::test]
    async fn inject_into_the_sink_counts_every_message() {
        let sink = sink::Sink::start(sink_args()).await.unwrap();
        for pipelining in [false, true] {
            let before = sink.messages();
            let r = inject(inject_args(sink.addr, 200, pipelining)).await.unwrap().report;
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
        let r = inject(inject_args(sink.addr, 100, true)).await.unwrap().report;
        assert!(r["session_errors"].as_u64().unwrap() > 0, "{r}");
        assert!(r["accepted"].as_u64().unwrap() < 100);
    }

    #[tokio::test]
    async fn per_connection_reconnects_and_rate_paces() {
        let sink = sink::Sink::start(sink_args()).await.unwrap();
        let a = InjectArgs { per_connection: 5, rate: 100.0, ..inject_args(sink.addr, 40, true) };
        let r = inject(a).await.unwrap().report;
        assert_eq!(r["accepted"], 40, "{r}");
        // 40 messages, at most 5 per connection: at least 8 connections (4 without the limit).
        let conns = sink.counters.connections.load(Ordering::Relaxed);
        assert!((8..=12).contains(&conns), "{conns}");
        // Paced at 100/s, message 39 may not start before 0.39 s.
        assert!(r["seconds"].as_f64().unwrap() >= 0.39, "{r}");
    }

    #[test]
    fn sizes_spread_between_the_bounds_and_headers_come_first() {
        let a = InjectArgs {
            size: 1000,
            size_max: Some(100_000),
            realistic_headers: true,
            ..InjectArgs::to("127.0.0.1:25".parse().unwrap())
        };
        let b = Bodies::new(&a);
        let sizes: Vec<usize> = (0..1000).map(|n| b.get(n).len()).collect();
        assert!(sizes.iter().all(|s| (900..=100_000).contains(s)), "{sizes:?}");
        let small = sizes.iter().filter(|&&s| s < 10_000).count();
        // Log-uniform: about half below the geometric mean (10 KB).
        assert!((400..600).contains(&small), "{small}");
        let text = b.get(7);
        assert!(text.starts_with(b"DKIM-Signature: v=1;"));
        assert!(text.ends_with(b"\r\n"));
        assert!(!text.windows(5).any(|w| w == b"\r\n.\r\n"));
    }
}
