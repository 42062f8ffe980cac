//! `loadtest sink`: a fast SMTP sink on loopback. It accepts everything, or answers a configured
//! share of recipients with 4xx/5xx, delays the end-of-data reply, or drops connections in the
//! middle of DATA; it can hide PIPELINING and offer CHUNKING. It counts what it received.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Clone, Debug)]
pub struct SinkArgs {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:2526")]
    pub listen: SocketAddr,
    /// Percent of recipients answered 451.
    #[arg(long, default_value_t = 0)]
    pub tempfail_percent: u64,
    /// Percent of recipients answered 550.
    #[arg(long, default_value_t = 0)]
    pub reject_percent: u64,
    /// Percent of DATA transfers cut by closing the connection.
    #[arg(long, default_value_t = 0)]
    pub drop_percent: u64,
    /// Delay before the reply to the end of data.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Do not advertise PIPELINING.
    #[arg(long)]
    pub no_pipelining: bool,
    /// Advertise CHUNKING (BDAT).
    #[arg(long)]
    pub chunking: bool,
    /// Exit once this many messages arrived, printing when the first and the last came.
    #[arg(long)]
    pub exit_after: Option<u64>,
    /// A throttling provider: accept at most this many recipients per window per client
    /// address, and answer the rest with `--throttle-reply`.
    #[arg(long)]
    pub throttle_per_window: Option<u64>,
    #[arg(long, default_value_t = 60)]
    pub throttle_window_s: u64,
    /// Stop throttling this many seconds after the sink started.
    #[arg(long)]
    pub throttle_lift_s: Option<u64>,
    #[arg(
        long,
        default_value = "450 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address."
    )]
    pub throttle_reply: String,
}

impl SinkArgs {
    /// A sink on `listen` that accepts everything, as fast as it can.
    pub fn accept_all(listen: SocketAddr) -> Self {
        SinkArgs {
            listen,
            tempfail_percent: 0,
            reject_percent: 0,
            drop_percent: 0,
            latency_ms: 0,
            no_pipelining: false,
            chunking: false,
            exit_after: None,
            throttle_per_window: None,
            throttle_window_s: 60,
            throttle_lift_s: None,
            throttle_reply: String::new(),
        }
    }
}

/// Counters shared with `relay`.
#[derive(Default)]
pub struct Counters {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub recipients: AtomicU64,
    /// Microseconds since `epoch` of the last message received.
    pub last_us: AtomicU64,
    pub connections: AtomicU64,
    pub rcpt_seq: AtomicU64,
    pub data_seq: AtomicU64,
    /// When each message arrived, in ms since `epoch` (for the throughput timeline).
    pub arrivals_ms: std::sync::Mutex<Vec<u32>>,
    /// Throttling: recipients accepted per client address in the current window, and when each
    /// recipient was refused (ms since `epoch`).
    pub window: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u64, u64)>>,
    pub refused_ms: std::sync::Mutex<Vec<u32>>,
}

pub struct Sink {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    pub epoch: Instant,
}

impl Sink {
    pub async fn start(a: SinkArgs) -> anyhow::Result<Sink> {
        if !a.listen.ip().is_loopback() {
            bail!("the sink listens on loopback addresses only");
        }
        let listener = TcpListener::bind(a.listen).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let epoch = Instant::now();
        let (c, args) = (counters.clone(), Arc::new(a));
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                c.connections.fetch_add(1, Ordering::Relaxed);
                let (c, args) = (c.clone(), args.clone());
                tokio::spawn(async move {
                    let _ = serve(s, &args, &c, epoch).await;
                });
            }
        });
        Ok(Sink { addr, counters, epoch })
    }

    /// Unix time in ms of a moment given in ms since `epoch`.
    pub fn unix_ms(&self, since_epoch_ms: u32) -> u64 {
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        now_unix - self.epoch.elapsed().as_millis() as u64 + since_epoch_ms as u64
    }

    pub fn messages(&self) -> u64 {
        self.counters.messages.load(Ordering::Relaxed)
    }
}

/// Runs the sink until interrupted (or `--exit-after` messages), printing counts every 5 s.
pub async fn run(a: SinkArgs) -> anyhow::Result<()> {
    let exit_after = a.exit_after;
    let sink = Sink::start(a).await?;
    eprintln!("sink listening on {}", sink.addr);
    let (mut last, mut last_print) = (0, Instant::now());
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_millis(5)) => {
                let n = sink.messages();
                if exit_after.is_some_and(|x| n >= x) {
                    break;
                }
                if last_print.elapsed() >= Duration::from_secs(5) {
                    eprintln!("{} messages ({:.0}/s)", n, (n - last) as f64 / 5.0);
                    (last, last_print) = (n, Instant::now());
                }
            }
        }
    }
    let arrivals = sink.counters.arrivals_ms.lock().unwrap_or_else(|e| e.into_inner()).clone();
    println!(
        "{}",
        serde_json::json!({
            "messages": sink.messages(),
            "bytes": sink.counters.bytes.load(Ordering::Relaxed),
            "connections": sink.counters.connections.load(Ordering::Relaxed),
            "first_message_unix_ms": arrivals.iter().min().map(|&t| sink.unix_ms(t)),
            "last_message_unix_ms": arrivals.iter().max().map(|&t| sink.unix_ms(t)),
        })
    );
    Ok(())
}

/// Whether the n-th event falls in the first `percent` of each hundred.
fn hit(seq: &AtomicU64, percent: u64) -> bool {
    percent > 0 && seq.fetch_add(1, Ordering::Relaxed) % 100 < percent
}

async fn serve(s: TcpStream, a: &SinkArgs, c: &Counters, epoch: Instant) -> anyhow::Result<()> {
    s.set_nodelay(true)?;
    let peer = s.peer_addr()?.ip();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let mut out: Vec<u8> = b"220 sink.loadtest ESMTP\r\n".to_vec();
    let mut line = Vec::with_capacity(1024);
    let mut rcpts = 0u64;
    let mut chunk = Vec::new();
    loop {
        // Replies to pipelined commands go out together, when the client waits.
        if !out.is_empty() && r.buffer().is_empty() {
            w.write_all(&out).await?;
            out.clear();
        }
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with(b"EHLO") {
            out.extend_from_slice(b"250-sink.loadtest\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n");
            if !a.no_pipelining {
                out.extend_from_slice(b"250-PIPELINING\r\n");
            }
            if a.chunking {
                out.extend_from_slice(b"250-CHUNKING\r\n");
            }
            out.extend_from_slice(b"250 SIZE 200000000\r\n");
        } else if upper.starts_with(b"MAIL") {
            rcpts = 0;
            out.extend_from_slice(b"250 2.1.0 ok\r\n");
        } else if upper.starts_with(b"RCPT") {
            if throttled(a, c, epoch, peer) {
                out.extend_from_slice(a.throttle_reply.as_bytes());
                out.extend_from_slice(b"\r\n");
            } else if hit(&c.rcpt_seq, a.tempfail_percent) {
                out.extend_from_slice(b"451 4.3.0 sink says later\r\n");
            } else if hit(&c.rcpt_seq, a.reject_percent) {
                out.extend_from_slice(b"550 5.1.1 sink says no\r\n");
            } else {
                rcpts += 1;
                out.extend_from_slice(b"250 2.1.5 ok\r\n");
            }
        } else if upper.starts_with(b"DATA") {
            if rcpts == 0 {
                out.extend_from_slice(b"554 5.5.1 no valid recipients\r\n");
                continue;
            }
            out.extend_from_slice(b"354 go\r\n");
            w.write_all(&out).await?;
            out.clear();
            let drop = hit(&c.data_seq, a.drop_percent);
            let mut size = 0u64;
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line).await? == 0 {
                    return Ok(());
                }
                if line == b".\r\n" {
                    break;
                }
                size += line.len() as u64;
                if drop && size > 512 {
                    return Ok(());
                }
            }
            end_of_data(a, c, epoch, size, rcpts, &mut out).await;
        } else if upper.starts_with(b"BDAT") {
            let text = String::from_utf8_lossy(&line).to_string();
            let mut words = text.split_ascii_whitespace().skip(1);
            let n: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
            chunk.resize(n, 0);
            r.read_exact(&mut chunk).await?;
            if rcpts == 0 {
                out.extend_from_slice(b"554 5.5.1 no valid recipients\r\n");
            } else if last {
                end_of_data(a, c, epoch, n as u64, rcpts, &mut out).await;
            } else {
                out.extend_from_slice(b"250 2.0.0 chunk\r\n");
            }
        } else if upper.starts_with(b"RSET") || upper.starts_with(b"NOOP") {
            rcpts = 0;
            out.extend_from_slice(b"250 ok\r\n");
        } else if upper.starts_with(b"QUIT") {
            out.extend_from_slice(b"221 bye\r\n");
            w.write_all(&out).await?;
            return Ok(());
        } else {
            out.extend_from_slice(b"500 5.5.2 unknown command\r\n");
        }
    }
}

/// Whether this recipient from `peer` is past the throttle's allowance for the window.
fn throttled(a: &SinkArgs, c: &Counters, epoch: Instant, peer: std::net::IpAddr) -> bool {
    let Some(limit) = a.throttle_per_window else { return false };
    let elapsed = epoch.elapsed();
    if a.throttle_lift_s.is_some_and(|l| elapsed.as_secs() >= l) {
        return false;
    }
    let window = elapsed.as_secs() / a.throttle_window_s.max(1);
    let mut w = c.window.lock().unwrap_or_else(|e| e.into_inner());
    let (at, n) = w.entry(peer).or_insert((window, 0));
    if *at != window {
        (*at, *n) = (window, 0);
    }
    if *n < limit {
        *n += 1;
        return false;
    }
    drop(w);
    let ms = elapsed.as_millis() as u32;
    c.refused_ms.lock().unwrap_or_else(|e| e.into_inner()).push(ms);
    true
}

async fn end_of_data(
    a: &SinkArgs,
    c: &Counters,
    epoch: Instant,
    size: u64,
    rcpts: u64,
    out: &mut Vec<u8>,
) {
    if a.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(a.latency_ms)).await;
    }
    c.bytes.fetch_add(size, Ordering::Relaxed);
    c.recipients.fetch_add(rcpts, Ordering::Relaxed);
    let now_us = epoch.elapsed().as_micros() as u64;
    c.last_us.fetch_max(now_us, Ordering::Relaxed);
    c.arrivals_ms.lock().unwrap_or_else(|e| e.into_inner()).push((now_us / 1000) as u32);
    c.messages.fetch_add(1, Ordering::Relaxed);
    out.extend_from_slice(b"250 2.0.0 queued\r\n");
}
