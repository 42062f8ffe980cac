//! `loadtest`: end-to-end load for sluice or any SMTP server, on loopback.
//!
//! - `inject` sends N messages over C concurrent sessions (as fast as possible or paced) and
//!   reports accepted messages per second and the latency from the end of DATA to the 250 reply.
//!   With `--metrics` it reads sluice's `/metrics` before and after, and reports fsyncs per
//!   message.
//! - `sink` is an SMTP sink that accepts (or fails a share of) what it is sent, and counts.
//! - `relay` starts a sink, injects into an MTA that relays to it, and reports end-to-end
//!   messages per second until the sink has them all, with the MTA's CPU time and memory.
//! - `idle` holds N idle connections open and reports the MTA's memory per connection.
//! - `campaign` sends one templated campaign through sluice's HTTP injection API or over SMTP
//!   and reports recipients accepted per second and end to end.
//!
//! Loads are bounded in count (`--messages`) and time (`--max-seconds`). Long runs show a
//! progress bar on a terminal; `--json` and `--plot` keep the results.

mod campaign;
mod idle;
mod inject;
mod procstat;
mod relay;
mod report;
mod sink;
mod throttle;

use clap::{Parser, Subcommand};

pub use inject::{InjectArgs, inject};

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
    /// Hold idle connections open and report the MTA's memory per connection.
    Idle(idle::IdleArgs),
    /// One campaign through HTTP injection or SMTP, to a sink; recipients per second.
    Campaign(campaign::CampaignArgs),
    /// A sink that throttles like a provider; how the MTA's rate follows it and recovers.
    Throttle(throttle::ThrottleArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Inject(a) => {
            let (json, plot) = (a.json.clone(), a.plot.clone());
            let run = inject(a).await?;
            if let Some(path) = json {
                let mut full = run.report.clone();
                let bucket = report::bucket_for(run.samples.times_ms().max().unwrap_or(0));
                full["timeline"] = serde_json::json!({
                    "bucket_ms": bucket,
                    "accepted_per_second": report::timeline(run.samples.times_ms(), bucket),
                });
                report::write_json(&path, &full)?;
            }
            if let Some(path) = plot {
                let bucket = report::bucket_for(run.samples.times_ms().max().unwrap_or(0));
                let series = [report::Series {
                    name: "accepted",
                    per_second: report::timeline(run.samples.times_ms(), bucket),
                }];
                let title = format!(
                    "inject {} B x {} sessions into {}",
                    run.report["message_size"], run.report["sessions"], run.report["server"]
                );
                report::plot(&path, &title, bucket, &series, &run.samples)?;
            }
            println!("{}", serde_json::to_string_pretty(&run.report)?);
            Ok(())
        }
        Cmd::Sink(a) => sink::run(a).await,
        Cmd::Relay(a) => relay::run(a).await,
        Cmd::Idle(a) => idle::run(a).await,
        Cmd::Campaign(a) => campaign::run(a).await,
        Cmd::Throttle(a) => throttle::run(a).await,
    }
}
