//! `loadtest relay`: end-to-end relay throughput of an MTA that forwards to our sink.
//!
//! Start the MTA first, configured to relay everything to `--sink`; this starts the sink there,
//! injects `--messages` into `--server`, and waits until the sink has received every accepted
//! message. End-to-end rate = messages received / (last receipt - first injection). With
//! `--mta-pid` it reports the CPU seconds the MTA's process tree used during the run and its
//! memory; with `--metrics` (sluice) the fsyncs per message.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use serde_json::json;

use crate::report::{self, Series};
use crate::sink::{Sink, SinkArgs};
use crate::{InjectArgs, procstat};

#[derive(Parser, Clone, Debug)]
pub struct RelayArgs {
    #[command(flatten)]
    pub inject: InjectArgs,
    /// Where the sink listens (the MTA relays there).
    #[arg(long, default_value = "127.0.0.1:2526")]
    pub sink: std::net::SocketAddr,
    /// The MTA's main process: CPU and memory of its process tree are reported.
    #[arg(long)]
    pub mta_pid: Option<u32>,
    /// A name for the report.
    #[arg(long, default_value = "mta")]
    pub label: String,
}

pub async fn run(a: RelayArgs) -> anyhow::Result<()> {
    let sink = Sink::start(SinkArgs::accept_all(a.sink)).await?;
    let cpu0 = a.mta_pid.map(procstat::cpu_seconds);
    let started_us = sink.epoch.elapsed().as_micros() as u64;
    let injected = crate::inject(a.inject.clone()).await?;
    let inject_secs = injected.report["seconds"].as_f64().unwrap_or(0.0);
    let accepted = injected.report["accepted"].as_u64().unwrap_or(0);
    // Wait for the MTA to deliver everything it accepted (bounded by --max-seconds again).
    let deadline = Instant::now() + Duration::from_secs(a.inject.max_seconds);
    let mut last_seen = (sink.messages(), Instant::now());
    while sink.messages() < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n = sink.messages();
        if n != last_seen.0 {
            last_seen = (n, Instant::now());
        } else if last_seen.1.elapsed() > Duration::from_secs(60) {
            break; // nothing arrived for a minute: report what we have
        }
    }
    let received = sink.messages();
    if received == 0 {
        bail!("{}: the sink received nothing: is the MTA relaying to {}?", a.label, sink.addr);
    }
    let last_us = sink.counters.last_us.load(Ordering::Relaxed);
    let e2e_secs = (last_us.saturating_sub(started_us)) as f64 / 1e6;
    let mut report = json!({
        "label": a.label,
        "sessions": a.inject.sessions,
        "message_size": a.inject.size,
        "accepted": accepted,
        "received": received,
        "inject_seconds": inject_secs,
        "inject_messages_per_second": injected.report["messages_per_second"],
        "end_to_end_seconds": report::round3(e2e_secs),
        "end_to_end_messages_per_second": (received as f64 / e2e_secs).round(),
        "latency_ms": injected.report["latency_ms"],
        "sink_connections": sink.counters.connections.load(Ordering::Relaxed),
    });
    if let (Some(pid), Some(c0)) = (a.mta_pid, cpu0) {
        let cpu = procstat::cpu_seconds(pid) - c0;
        report["mta_cpu_seconds"] = json!((cpu * 100.0).round() / 100.0);
        report["mta_cpu_ms_per_message"] = json!(report::round3(cpu * 1e3 / received as f64));
        report["mta_peak_rss_kb"] = json!(procstat::peak_rss_kb(pid));
        report["mta_tree_rss_kb"] = json!(procstat::tree_rss_kb(pid));
    }
    for k in ["fsyncs", "fsyncs_per_message", "messages_per_fsync"] {
        if let Some(v) = injected.report.get(k) {
            report[k] = v.clone();
        }
    }
    // Both timelines from the moment injection started.
    let start_ms = (started_us / 1000) as u32;
    let arrivals: Vec<u32> = sink
        .counters
        .arrivals_ms
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|t| t.saturating_sub(start_ms))
        .collect();
    let bucket = report::bucket_for(arrivals.iter().copied().max().unwrap_or(0));
    let series = [
        Series {
            name: "accepted by the MTA",
            per_second: report::timeline(injected.samples.times_ms(), bucket),
        },
        Series {
            name: "received by the sink",
            per_second: report::timeline(arrivals.iter().copied(), bucket),
        },
    ];
    if let Some(path) = &a.inject.json {
        let mut full = report.clone();
        full["timeline"] = json!({
            "bucket_ms": bucket,
            "accepted_per_second": series[0].per_second,
            "received_per_second": series[1].per_second,
        });
        report::write_json(path, &full)?;
    }
    if let Some(path) = &a.inject.plot {
        let title = format!(
            "{}: relay {} B x {} sessions, {} msg/s end to end",
            a.label, a.inject.size, a.inject.sessions, report["end_to_end_messages_per_second"]
        );
        report::plot(path, &title, bucket, &series, &injected.samples)?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
