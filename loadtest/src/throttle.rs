//! `loadtest throttle`: how an MTA meets a provider that throttles. The sink accepts
//! `--per-minute` recipients per minute from each client address and answers the rest with a
//! throttling reply (Gmail's 4.7.28 by default) until `--lift-after` seconds, then accepts all.
//! This injects `--messages` into an MTA relaying to the sink and reports, from the sink's
//! side: the rate accepted while throttled against the allowance, how far the MTA pushed past it
//! (refused recipients per accepted one), and how long after the lift its rate took to reach 90 %
//! of `--target-rate` (the MTA's own configured rate), with a PNG timeline.

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

use crate::InjectArgs;
use crate::report::{self, Series};
use crate::sink::{Sink, SinkArgs};

#[derive(Parser, Clone, Debug)]
pub struct ThrottleArgs {
    #[command(flatten)]
    pub inject: InjectArgs,
    /// Where the sink listens (the MTA relays there).
    #[arg(long, default_value = "127.0.0.1:2526")]
    pub sink: std::net::SocketAddr,
    /// Recipients accepted per minute per client address while throttling.
    #[arg(long, default_value_t = 600)]
    pub per_minute: u64,
    /// Seconds after the start when the throttle lifts.
    #[arg(long, default_value_t = 300)]
    pub lift_after: u64,
    /// Seconds the whole run lasts at most (from the start).
    #[arg(long, default_value_t = 600)]
    pub duration: u64,
    /// The MTA's configured rate to the sink (messages per second), for the recovery time.
    #[arg(long)]
    pub target_rate: f64,
    /// The throttling reply.
    #[arg(
        long,
        default_value = "450 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address."
    )]
    pub reply: String,
    /// A name for the report.
    #[arg(long, default_value = "mta")]
    pub label: String,
}

pub async fn run(a: ThrottleArgs) -> anyhow::Result<()> {
    let mut sink_args = SinkArgs::accept_all(a.sink);
    sink_args.throttle_per_window = Some(a.per_minute);
    sink_args.throttle_window_s = 60;
    sink_args.throttle_lift_s = Some(a.lift_after);
    sink_args.throttle_reply = a.reply.clone();
    let sink = Sink::start(sink_args).await?;
    let injected = crate::inject(a.inject.clone()).await?;
    let accepted = injected.report["accepted"].as_u64().unwrap_or(0);
    let end = sink.epoch + Duration::from_secs(a.duration);
    while Instant::now() < end && sink.messages() < accepted {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lock = |m: &std::sync::Mutex<Vec<u32>>| m.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let arrivals = lock(&sink.counters.arrivals_ms);
    let refused = lock(&sink.counters.refused_ms);
    let lift_ms = (a.lift_after * 1000) as u32;
    let bucket = 10_000;
    let got = report::timeline(arrivals.iter().copied(), bucket);
    let said_no = report::timeline(refused.iter().copied(), bucket);
    // While throttled: whole minutes only (the allowance is per minute).
    let minutes = (a.lift_after / 60) as u32;
    let in_throttle = |t: &&u32| **t < minutes * 60_000;
    let accepted_throttled = arrivals.iter().filter(in_throttle).count() as f64;
    let refused_throttled = refused.iter().filter(in_throttle).count() as f64;
    let allowance = (a.per_minute * minutes as u64) as f64;
    // After the lift: the first 10 s bucket at 90 % of the target rate.
    let first_after = (lift_ms / bucket) as usize;
    let recovered_s = got
        .iter()
        .enumerate()
        .skip(first_after + 1)
        .find(|(_, r)| **r >= 0.9 * a.target_rate)
        .map(|(i, _)| ((i as u32 * bucket).saturating_sub(lift_ms) as f64 / 1000.0).round());
    let report = json!({
        "label": a.label,
        "allowance_per_minute": a.per_minute,
        "throttled_minutes": minutes,
        "accepted_while_throttled_per_minute": (accepted_throttled / minutes.max(1) as f64).round(),
        "accepted_share_of_allowance": report::round3(accepted_throttled / allowance.max(1.0)),
        "refused_per_accepted_while_throttled": report::round3(refused_throttled / accepted_throttled.max(1.0)),
        "refused_while_throttled": refused_throttled,
        "target_rate": a.target_rate,
        "seconds_to_90_percent_of_target_after_lift": recovered_s,
        "received": sink.messages(),
        "injected": accepted,
        "timeline": { "bucket_ms": bucket, "accepted_per_second": got, "refused_per_second": said_no },
    });
    if let Some(path) = &a.inject.json {
        report::write_json(path, &report)?;
    }
    if let Some(path) = &a.inject.plot {
        let series = [
            Series { name: "accepted by the provider", per_second: got },
            Series { name: "refused (4.7.28)", per_second: said_no },
        ];
        let title = format!(
            "{}: provider allows {}/min per IP until {} s, then all",
            a.label, a.per_minute, a.lift_after
        );
        report::plot_timeline(path, &title, bucket, &series)?;
    }
    let mut brief = report.clone();
    brief.as_object_mut().map(|o| o.remove("timeline"));
    println!("{}", serde_json::to_string_pretty(&brief)?);
    Ok(())
}
