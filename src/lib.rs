//! sluice: a high-throughput outbound mail transfer agent that never loses acknowledged mail.
//!
//! # Layout
//! - [`config`]: the TOML file composed of the sections each module owns (`ShapingConfig` in
//!   `shaping::limits`, `HttpConfig` in `net::http`, ...), embedded defaults, validation
//!   (`sluice check-config`). Only `server` and the binary import it (tests/it/import_graph.rs).
//! - [`units`]: sizes, durations and rates as the configuration spells them.
//! - [`proto`]: sans-IO protocol cores (SMTP commands, DATA/BDAT receivers, replies, session).
//! - [`intake`]: the one path to the spool for SMTP and HTTP (policy, signing, store).
//! - [`tenant`]: tenants bound to credentials, their quotas.
//! - [`smtp`]: the SMTP server: listeners, connection limits, the per-connection driver.
//! - [`spool`]: the durable queue (segment log + group commit + redb index checkpoint).
//! - [`queue`]: retry schedule and the dispatcher of due recipients.
//! - [`egress`]: the local addresses mail leaves from (sources) and weighted pools of them.
//! - [`delivery`]: routes, the outbound SMTP driver.
//! - [`delivery_error`]: how a delivery attempt ended and what that means for the recipient.
//! - [`dns`]: the `Resolver` trait for MX, address and TXT lookups; hickory-resolver in the
//!   server, an in-memory table in unit tests.
//! - [`bounce`]: delivery status notifications (RFC 3464).
//! - [`admin`]: HTTP `/metrics`, `/health` and the queue API.
//! - [`metrics`]: every Prometheus metric, declared once.
//! - [`net`]: the one accept loop of every listener, the PROXY protocol, HTTP serving with
//!   timeouts and connection caps.
//! - [`server`]: `sluice serve`: start-up, graceful shutdown.
//! - [`cli`]: `sluice queue ...`.

pub mod admin;
pub mod auth;
pub mod bounce;
pub mod config;
pub mod delivery;
pub mod delivery_error;
pub mod delivery_log;
pub mod dns;
pub mod domain;
pub mod domain_labels;
pub mod egress;
pub mod imap;
pub mod inject;
pub mod intake;
pub mod local;
pub mod mailauth;
pub mod mailbox_listener;
pub mod metrics;
pub mod net;
pub mod pop3;
pub mod proto;
pub mod queue;
pub mod rate;
pub mod secret_file;
pub mod server;
pub mod shaping;
pub mod smtp;
pub mod spool;
pub mod state_file;
pub mod stream;
pub mod tenant;
pub mod tls;
pub mod units;

#[cfg(test)]
mod test_rng;
