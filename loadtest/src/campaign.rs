//! `loadtest campaign`: one bulk campaign (N recipients, a 20 KB HTML template with
//! per-recipient variables) into sluice, either through `POST /api/inject/v1` (requests of
//! `--per-request` recipients, templated by sluice) or over SMTP (one message per recipient,
//! rendered here, lockstep MAIL/RCPT/DATA like a typical campaign tool). Starts a sink the MTA
//! relays to and reports recipients accepted per second (durably: sluice answers after fsync)
//! and end to end (until the sink has them all).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::sink::{Sink, SinkArgs};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    Http,
    Smtp,
}

#[derive(Parser, Clone, Debug)]
pub struct CampaignArgs {
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// sluice's SMTP listener (smtp mode).
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub server: SocketAddr,
    /// sluice's admin listener (http mode).
    #[arg(long, default_value = "127.0.0.1:8025")]
    pub admin: SocketAddr,
    /// A token of scope inject (http mode).
    #[arg(long, default_value = "")]
    pub token: String,
    /// Where the sink listens (sluice relays there).
    #[arg(long, default_value = "127.0.0.1:2526")]
    pub sink: SocketAddr,
    #[arg(long, default_value_t = 20_000)]
    pub recipients: u64,
    /// Recipients per HTTP request.
    #[arg(long, default_value_t = 1000)]
    pub per_request: u64,
    /// Concurrent HTTP requests or SMTP sessions.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Size of the HTML template in bytes.
    #[arg(long, default_value_t = 20_480)]
    pub template_size: usize,
    #[arg(long, default_value_t = 600)]
    pub max_seconds: u64,
}

/// A 20 KB newsletter: paragraphs with the recipient's name and code in them.
fn template(size: usize) -> String {
    let mut t = String::from("<html><body><h1>Hello {{ name }}</h1>\n");
    let mut i = 0;
    while t.len() < size {
        i += 1;
        t.push_str(&format!(
            "<p>Paragraph {i} for {{{{ name }}}}: our spring offers, code <b>{{{{ code }}}}</b>, \
             are waiting. Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p>\n"
        ));
    }
    t.push_str("</body></html>\n");
    t
}

fn name(i: u64) -> String {
    format!("Reader {i}")
}

fn code(i: u64) -> String {
    format!("C{i:08}")
}

fn rcpt(i: u64) -> String {
    format!("reader{i}@example.org")
}

pub async fn run(a: CampaignArgs) -> anyhow::Result<()> {
    for addr in [a.server, a.admin, a.sink] {
        if !addr.ip().is_loopback() {
            bail!("loadtest only targets loopback addresses");
        }
    }
    let sink = Sink::start(SinkArgs::accept_all(a.sink)).await?;
    let tmpl = Arc::new(template(a.template_size));
    let deadline = Instant::now() + Duration::from_secs(a.max_seconds);
    let started_us = sink.epoch.elapsed().as_micros() as u64;
    let start = Instant::now();
    let accepted = match a.mode {
        Mode::Http => http(&a, tmpl, deadline).await?,
        Mode::Smtp => smtp(&a, tmpl, deadline).await?,
    };
    let accept_secs = start.elapsed().as_secs_f64();
    while sink.messages() < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = sink.messages();
    let last_us = sink.counters.last_us.load(Ordering::Relaxed);
    let e2e = (last_us.saturating_sub(started_us)) as f64 / 1e6;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "mode": format!("{:?}", a.mode).to_lowercase(),
            "recipients": a.recipients,
            "template_bytes": a.template_size,
            "concurrency": a.concurrency,
            "per_request": a.per_request,
            "accepted": accepted,
            "accept_seconds": (accept_secs * 1000.0).round() / 1000.0,
            "accepted_per_second": (accepted as f64 / accept_secs).round(),
            "received": received,
            "end_to_end_seconds": (e2e * 1000.0).round() / 1000.0,
            "end_to_end_per_second": (received as f64 / e2e).round(),
        }))?
    );
    Ok(())
}

/// Requests of `per_request` recipients from `concurrency` threads; returns recipients accepted.
async fn http(a: &CampaignArgs, tmpl: Arc<String>, deadline: Instant) -> anyhow::Result<u64> {
    let requests = a.recipients.div_ceil(a.per_request);
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..a.concurrency {
        let (a, tmpl, next, accepted) = (a.clone(), tmpl.clone(), next.clone(), accepted.clone());
        threads.push(tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(a.max_seconds)))
                .http_status_as_error(false)
                .build()
                .into();
            loop {
                let r = next.fetch_add(1, Ordering::Relaxed);
                if r >= requests || Instant::now() > deadline {
                    return Ok(());
                }
                let first = r * a.per_request;
                let last = (first + a.per_request).min(a.recipients);
                let recipients: Vec<_> = (first..last)
                    .map(|i| json!({"email": rcpt(i), "substitutions": {"name": name(i), "code": code(i)}}))
                    .collect();
                let body = json!({
                    "envelope_sender": "bounces@sender.example",
                    "campaign": "loadtest",
                    "content": {
                        "from": {"email": "news@sender.example", "name": "Sender News"},
                        "subject": "Spring offers for {{ name }}",
                        "html_body": tmpl.as_str(),
                    },
                    "recipients": recipients,
                });
                let mut resp = agent
                    .post(&format!("http://{}/api/inject/v1", a.admin))
                    .header("Authorization", &format!("Bearer {}", a.token))
                    .header("Content-Type", "application/json")
                    .send(body.to_string().as_bytes())
                    .context("POST /api/inject/v1")?;
                let status = resp.status();
                let text = resp.body_mut().read_to_string()?;
                if !status.is_success() {
                    bail!("inject: {status}: {text}");
                }
                let v: serde_json::Value = serde_json::from_str(&text)?;
                accepted.fetch_add(v["success_count"].as_u64().unwrap_or(0), Ordering::Relaxed);
            }
        }));
    }
    for t in threads {
        t.await??;
    }
    Ok(accepted.load(Ordering::Relaxed))
}

/// One message per recipient over `concurrency` sessions, lockstep; returns messages accepted.
async fn smtp(a: &CampaignArgs, tmpl: Arc<String>, deadline: Instant) -> anyhow::Result<u64> {
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency {
        let (a, tmpl, next, accepted) = (a.clone(), tmpl.clone(), next.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(a.server).await?;
            // Without it, the small write of each command waits for the ACK of the previous
            // one (Nagle against delayed ACK: 40 ms per message).
            stream.set_nodelay(true)?;
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            let mut line = String::new();
            let reply = async |r: &mut BufReader<_>, line: &mut String| -> anyhow::Result<u16> {
                loop {
                    line.clear();
                    if r.read_line(line).await? == 0 {
                        bail!("connection closed");
                    }
                    if line.as_bytes().get(3) != Some(&b'-') {
                        return Ok(line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0));
                    }
                }
            };
            reply(&mut r, &mut line).await?;
            w.write_all(b"EHLO campaign.loadtest\r\n").await?;
            reply(&mut r, &mut line).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= a.recipients || Instant::now() > deadline {
                    break;
                }
                let html = tmpl.replace("{{ name }}", &name(i)).replace("{{ code }}", &code(i));
                let msg = format!(
                    "From: Sender News <news@sender.example>\r\nTo: <{}>\r\nSubject: Spring offers for {}\r\n\
                     Message-ID: <{i}.campaign@sender.example>\r\nMIME-Version: 1.0\r\n\
                     Content-Type: text/html; charset=utf-8\r\n\r\n{}",
                    rcpt(i),
                    name(i),
                    html.replace('\n', "\r\n")
                );
                w.write_all(b"MAIL FROM:<bounces@sender.example>\r\n").await?;
                if reply(&mut r, &mut line).await? != 250 {
                    bail!("MAIL: {line}");
                }
                w.write_all(format!("RCPT TO:<{}>\r\n", rcpt(i)).as_bytes()).await?;
                if reply(&mut r, &mut line).await? != 250 {
                    bail!("RCPT: {line}");
                }
                w.write_all(b"DATA\r\n").await?;
                if reply(&mut r, &mut line).await? != 354 {
                    bail!("DATA: {line}");
                }
                w.write_all(format!("{msg}.\r\n").as_bytes()).await?;
                if reply(&mut r, &mut line).await? == 250 {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
            w.write_all(b"QUIT\r\n").await?;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(accepted.load(Ordering::Relaxed))
}
