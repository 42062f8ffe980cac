//! The integration tests, one crate (one link of sluice, one binary): each module was a test
//! crate of its own. They drive a real sluice process (`CARGO_BIN_EXE_sluice`) over real
//! sockets, with the shared harness in [`common`]. Run one module with
//! `cargo test --features test-hooks --test it MODULE::`.

mod common;

mod admin_api;
mod cli;
mod crash;
mod dashboards;
mod delivery;
mod delivery_tls;
mod dkim;
mod egress;
mod hardening;
mod imap;
mod imap_sessions;
mod imap_stress;
mod import_graph;
mod inject;
mod intake;
mod limits;
mod mailbox;
mod power_loss;
mod proxy;
mod relay_policy;
mod shaping;
mod smtp_clients;
mod smuggling;
mod spf_suite;
mod spool_integrity;
mod suppression;
mod tls_auth;
mod verify;
