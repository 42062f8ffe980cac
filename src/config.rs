//! Configuration: one TOML file (see `config/sluice.toml`), embedded defaults when there is none.
//!
//! Parsing reports file, line and key (toml's spans); [`Config::validate`] then checks what types
//! cannot. Keys not known here are errors, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

pub use crate::bounce::suppression::{SuppressionConfig, SuppressionScope, TenantSuppression};
pub use crate::bounce::verp::VerpConfig;
pub use crate::delivery::route::{RouteAuth, RouteConfig};
pub use crate::inject::InjectConfig;
pub use crate::mailauth::sign::{DkimConfig, SigningConfig, UnalignedFrom};
pub use crate::mailauth::verify::VerifyConfig;
pub use crate::net::http::HttpConfig;
use crate::net::proxy::ProxyPolicy;
pub use crate::shaping::limits::{ShapingConfig, ShapingParams, ShapingRule};
pub use crate::units::parse_size;
use crate::units::{default_from_serde, default_true, duration, durations, opt_duration, size};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {err}")]
    Read { file: String, err: std::io::Error },
    #[error("{file}: {msg}")]
    Parse { file: String, msg: String },
    #[error("{file}: {key}: {msg}")]
    Invalid { file: String, key: String, msg: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name in the banner, EHLO and Received headers.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Spool and other state.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_listeners")]
    pub listener: Vec<Listener>,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub relay: Relay,
    /// Certificate and key for STARTTLS and implicit TLS listeners.
    pub tls: Option<TlsFiles>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub queue: Queue,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub local: Local,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub delivery_log: DeliveryLogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub shaping: ShapingConfig,
    /// Routes, first match wins; no matching route = MX delivery.
    #[serde(default)]
    pub route: Vec<RouteConfig>,
    /// DKIM signing keys (RFC 6376, RFC 8463); several per domain = several signatures.
    #[serde(default)]
    pub dkim: Vec<DkimConfig>,
    /// SPF/DKIM/DMARC/ARC verification of inbound mail.
    #[serde(default)]
    pub verify: VerifyConfig,
    /// Bounce classification.
    #[serde(default)]
    pub bounce: BounceConfig,
    /// The suppression list.
    #[serde(default)]
    pub suppression: SuppressionConfig,
    /// HTTP injection (`POST /api/inject/v1` on the admin listener).
    #[serde(default)]
    pub inject: InjectConfig,
    /// One-click unsubscribe (RFC 8058).
    #[serde(default)]
    pub unsubscribe: UnsubscribeConfig,
    /// Per-message return paths and asynchronous bounce processing.
    #[serde(default)]
    pub verp: VerpConfig,
    /// Timeouts and connection caps of every HTTP listener (admin, unsubscribe).
    #[serde(default)]
    pub http: HttpConfig,
    /// DKIM signing policy (the keys are `[[dkim]]`).
    #[serde(default)]
    pub signing: SigningConfig,
    /// How long a graceful stop waits for sessions and commits before exiting anyway.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// `[tenant.NAME]`: tenants' sending limits.
    #[serde(default)]
    pub tenant: std::collections::BTreeMap<String, crate::tenant::quota::TenantConfig>,
    /// `[[source]]`: local addresses to send from.
    #[serde(default)]
    pub source: Vec<crate::egress::SourceConfig>,
    /// `[[pool]]`: weighted sets of sources.
    #[serde(default)]
    pub pool: Vec<crate::egress::PoolConfig>,
    /// The pool of mail that gets none from its injection, tenant or route; absent: the
    /// system's default address.
    pub default_pool: Option<String>,
    /// `[warmup.NAME]`: warm-up schedules of new sources.
    #[serde(default)]
    pub warmup: std::collections::BTreeMap<String, crate::egress::warmup::WarmupConfig>,
    /// `[[site]]`: providers (MX host patterns) and their limits.
    #[serde(default)]
    pub site: Vec<crate::egress::site::SiteConfig>,
    /// `[[automation]]`: reply rules that lower a source × site's limits (over the shipped
    /// rules, unless `[delivery] builtin_automation = false`).
    #[serde(default)]
    pub automation: Vec<crate::shaping::automation::AutomationConfig>,
    /// `[circuit_breaker]`: reputation breakers per tenant and campaign.
    #[serde(default)]
    pub circuit_breaker: crate::shaping::breaker::BreakerConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// MX and relay (port 25).
    Smtp,
    /// Message submission (port 587, RFC 6409): STARTTLS, then AUTH, before MAIL.
    Submission,
    /// Implicit TLS submission (port 465, RFC 8314): TLS from the first byte, AUTH before MAIL.
    Submissions,
    /// POP3 (port 110, RFC 1939) with STLS (RFC 2595), for the local mailboxes.
    Pop3,
    /// POP3 over implicit TLS (port 995, RFC 8314).
    Pop3s,
    /// IMAP4rev1 (port 143, RFC 3501) with STARTTLS, for the local mailboxes.
    Imap,
    /// IMAP over implicit TLS (port 993, RFC 8314).
    Imaps,
}

impl ListenerMode {
    /// Whether the listener speaks SMTP (the others serve mailboxes).
    pub fn is_smtp(self) -> bool {
        matches!(self, ListenerMode::Smtp | ListenerMode::Submission | ListenerMode::Submissions)
    }

    /// The protocol it speaks, as metrics label it: `smtp`, `imap` or `pop3`.
    pub fn protocol(self) -> &'static str {
        match self {
            ListenerMode::Smtp | ListenerMode::Submission | ListenerMode::Submissions => "smtp",
            ListenerMode::Pop3 | ListenerMode::Pop3s => "pop3",
            ListenerMode::Imap | ListenerMode::Imaps => "imap",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub mode: ListenerMode,
    pub address: SocketAddr,
    /// Name used in metrics; defaults to the mode.
    pub name: Option<String>,
    /// Each connection starts with a PROXY protocol header (v1 or v2) naming the client.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The load balancers allowed to send it; connections from anywhere else are closed.
    #[serde(default)]
    pub proxy_networks: Vec<IpNet>,
}

impl Listener {
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("{:?}", self.mode).to_lowercase())
    }

    pub fn proxy(&self) -> Option<Arc<ProxyPolicy>> {
        proxy_policy(self.proxy_protocol, &self.proxy_networks)
    }
}

/// The PROXY settings of a listener, if it takes the header.
fn proxy_policy(on: bool, networks: &[IpNet]) -> Option<Arc<ProxyPolicy>> {
    on.then(|| Arc::new(ProxyPolicy::new(networks.to_vec())))
}

/// `proxy_protocol = true` needs the balancers' networks: without them nobody could connect.
fn check_proxy(key: &str, on: bool, networks: &[IpNet]) -> Check {
    if on && networks.is_empty() {
        return invalid_key(
            &format!("{key}.proxy_networks"),
            "proxy_protocol = true needs the load balancers' networks".into(),
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// HTTP: /metrics, /health and the queue API. Keep it on loopback or a management network.
    #[serde(default = "default_admin_address")]
    pub address: SocketAddr,
    /// The admin token (made on first start, mode 0600). Default: `<data_dir>/admin.token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Host names (besides IP literals and `localhost`) clients may use in `Host`.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Whether `GET /metrics` needs a token too (default: open, for Prometheus on a
    /// management network).
    #[serde(default)]
    pub metrics_need_token: bool,
    /// PROXY protocol, as on `[[listener]]`.
    #[serde(default)]
    pub proxy_protocol: bool,
    #[serde(default)]
    pub proxy_networks: Vec<IpNet>,
}

impl Admin {
    pub fn proxy(&self) -> Option<Arc<ProxyPolicy>> {
        proxy_policy(self.proxy_protocol, &self.proxy_networks)
    }
}

fn default_max_folders() -> usize {
    1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); should be mode 0600.
    pub key: PathBuf,
}

/// SMTP AUTH (RFC 4954) for submission and relaying clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Users with argon2id hashes (`sluice user add`); default `<data_dir>/users.toml`.
    pub users_file: Option<PathBuf>,
    /// Offer AUTH without TLS to clients on loopback (tests and local tools only).
    #[serde(default)]
    pub plaintext_on_loopback: bool,
    /// The n-th failed AUTH from one IP waits n × this before 535 (at most 10 s).
    #[serde(default = "default_failure_delay", deserialize_with = "duration")]
    pub failure_delay: Duration,
    /// Failures from one IP within `lockout` before it is locked out (454 4.7.0).
    #[serde(default = "default_max_failures_per_ip")]
    pub max_failures_per_ip: u32,
    /// Failures for one user name (from anywhere) within `lockout` before it is locked out,
    /// with `lock_users`; without it they only slow that user's logins down.
    #[serde(default = "default_max_failures_per_user")]
    pub max_failures_per_user: u32,
    /// Lock a user name out after `max_failures_per_user` failures. Off by default: anyone could
    /// then lock any named user out from many IPs; failures slow the user down instead.
    #[serde(default)]
    pub lock_users: bool,
    /// Password checks (argon2id, about 19 MiB each) that may run at once.
    #[serde(default = "default_max_concurrent_verifications")]
    pub max_concurrent_verifications: usize,
    /// How long failures are remembered and lockouts last.
    #[serde(default = "default_lockout", deserialize_with = "duration")]
    pub lockout: Duration,
}

fn default_max_concurrent_verifications() -> usize {
    4
}

fn default_failure_delay() -> Duration {
    Duration::from_millis(500)
}
fn default_max_failures_per_ip() -> u32 {
    10
}
fn default_max_failures_per_user() -> u32 {
    50
}
fn default_lockout() -> Duration {
    Duration::from_secs(15 * 60)
}

impl Config {
    /// The users file in use.
    /// The admin API token file.
    pub fn admin_token_file(&self) -> PathBuf {
        self.admin.token_file.clone().unwrap_or_else(|| self.data_dir.join("admin.token"))
    }

    /// Named API tokens (`sluice token add`), stored as hashes.
    pub fn tokens_file(&self) -> PathBuf {
        self.data_dir.join("tokens.toml")
    }

    /// Warnings that do not stop start-up (also printed by `check-config`).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if !self.admin.address.ip().is_loopback() {
            w.push(format!(
                "[admin] address {} is not loopback: the admin API (tokens, queue, message \
                 content) travels without TLS; keep it on a management network",
                self.admin.address
            ));
        }
        w
    }

    /// `<data_dir>/suppression.redb`.
    pub fn suppression_file(&self) -> PathBuf {
        self.data_dir.join("suppression.redb")
    }

    /// The sending-quota counters (`[tenant.NAME]`, `sluice user limit`).
    pub fn quota_file(&self) -> PathBuf {
        self.data_dir.join("quotas.json")
    }

    pub fn mailbox_dir(&self) -> PathBuf {
        self.local.mailbox_dir.clone().unwrap_or_else(|| self.data_dir.join("mailboxes"))
    }

    pub fn users_file(&self) -> PathBuf {
        self.auth.users_file.clone().unwrap_or_else(|| self.data_dir.join("users.toml"))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    /// Clients in these networks may relay to any domain (CIDR, IPv4 and IPv6).
    #[serde(default = "default_relay_networks")]
    pub networks: Vec<IpNet>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_max_message_size", deserialize_with = "size")]
    pub max_message_size: u64,
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    #[serde(default = "default_max_sessions_per_ip")]
    pub max_sessions_per_ip: usize,
    /// `[relay] networks` are exempt from `max_sessions_per_ip` and the connection rate limit
    /// (trusted injectors reconnect fast; Postfix exempts `$mynetworks` the same way).
    #[serde(default = "default_true")]
    pub exempt_relay_networks: bool,
    /// Trace headers (`Received:`, `Delivered-To:`) a message may carry before it is refused as
    /// a loop (554 5.4.6), as Postfix's `hopcount_limit`.
    #[serde(default = "default_max_hops")]
    pub max_hops: usize,
    /// RCPTs beyond `max_recipients` answered 452 without counting as client errors (pipelining
    /// clients overshoot by design), as Postfix's `smtpd_recipient_overshoot_limit`.
    #[serde(default = "default_recipient_overshoot_limit")]
    pub recipient_overshoot_limit: usize,
    /// Refuse (554 5.5.0, close) clients that are neither authenticated nor in `[relay]
    /// networks` and send before the reply to EHLO/HELO/DATA (RFC 2920 3.1), as Postfix 3.9's
    /// `smtpd_forbid_unauth_pipelining`.
    #[serde(default = "default_true")]
    pub forbid_unauth_pipelining: bool,
    /// Command line limit including CRLF (RFC 5321 4.5.3.1.4 minimum: 512).
    #[serde(default = "default_max_command_line")]
    pub max_command_line: usize,
    /// Text line limit in DATA including CRLF (RFC 5321 4.5.3.1.6: 1000).
    #[serde(default = "default_max_line_length")]
    pub max_line_length: usize,
    /// Message bytes all sessions together may buffer; past it messages get 452 4.3.1.
    #[serde(default = "default_memory_budget", deserialize_with = "size")]
    pub memory_budget: u64,
    /// Refused commands per session before 421 and close.
    #[serde(default = "default_max_errors")]
    pub max_errors: u32,
    /// Waiting for a command (RFC 5321 4.5.3.2.7: at least 5 minutes).
    #[serde(default = "default_command_timeout", deserialize_with = "duration")]
    pub command_timeout: Duration,
    /// Waiting for the next block of message data (RFC 5321 4.5.3.2.5: 3 minutes).
    #[serde(default = "default_data_timeout", deserialize_with = "duration")]
    pub data_timeout: Duration,
    /// New connections per client IP (token bucket, burst = one minute's worth), e.g. "600/m";
    /// over it: 421 4.7.0 at accept.
    #[serde(default = "default_connection_rate")]
    pub max_connection_rate_per_ip: String,
    /// Recipients accepted per session, over all its transactions (452 4.5.3 beyond).
    #[serde(default = "default_max_recipients_per_session")]
    pub max_recipients_per_session: usize,
    /// Slow senders: a message whose data arrives slower than this (bytes/s, averaged after the
    /// first 10 s) is cut with 421 4.4.2; "0" turns it off.
    #[serde(default = "default_min_data_rate", deserialize_with = "size")]
    pub min_data_rate: u64,
    /// Wait this long before the greeting; a client that talks first is refused (554 5.5.1).
    /// "0s" (default) sends the greeting at once.
    #[serde(default, deserialize_with = "duration")]
    pub greet_pause: Duration,
}

fn default_connection_rate() -> String {
    "600/m".into()
}
fn default_max_recipients_per_session() -> usize {
    10_000
}
fn default_min_data_rate() -> u64 {
    500 // bytes/s, as Postfix's smtpd_min_data_rate
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    /// Retry intervals; the last one repeats.
    #[serde(default = "default_retry", deserialize_with = "durations")]
    pub retry: Vec<Duration>,
    /// After this long a message is bounced as expired.
    #[serde(default = "default_max_age", deserialize_with = "duration")]
    pub max_age: Duration,
    /// Warn the sender (a delay DSN, RFC 3461 NOTIFY=DELAY) once a recipient has waited this
    /// long; absent = never.
    #[serde(default, deserialize_with = "opt_duration")]
    pub delay_notice: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Size at which a new log segment is started (8–32 MiB is the measured sweet spot).
    #[serde(default = "default_segment_size", deserialize_with = "size")]
    pub segment_size: u64,
    /// How often the index is checkpointed to redb.
    #[serde(default = "default_checkpoint_interval", deserialize_with = "duration")]
    pub checkpoint_interval: Duration,
    /// Below this much free disk space new mail gets 452 4.3.1.
    #[serde(default = "default_min_free_space", deserialize_with = "size")]
    pub min_free_space: u64,
    /// The commit path: "portable" (writev + fdatasync) or "io_uring" (two batches in flight;
    /// falls back to portable where io_uring is unavailable).
    #[serde(default = "default_spool_writer")]
    pub writer: crate::spool::WriterKind,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// false = accept and keep mail without delivering it (a hold; for maintenance and intake
    /// benchmarks).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Delivery attempts in flight at once, over all destinations.
    #[serde(default = "default_delivery_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Waiting for the greeting and for replies to MAIL, RCPT and DATA (RFC 5321 4.5.3.2: 5m).
    #[serde(default = "default_command_timeout", deserialize_with = "duration")]
    pub command_timeout: Duration,
    /// Waiting for the reply after the end of data (RFC 5321 4.5.3.2.6: 10m).
    #[serde(default = "default_data_end_timeout", deserialize_with = "duration")]
    pub data_timeout: Duration,
    /// Port of MX hosts (25; other values are for tests and lab setups).
    #[serde(default = "default_mx_port")]
    pub mx_port: u16,
    /// How often the queue is scanned for due recipients (new mail is dispatched at once).
    #[serde(default = "default_scan_interval", deserialize_with = "duration")]
    pub scan_interval: Duration,
    /// STARTTLS for MX delivery without a matching route.
    #[serde(default = "crate::delivery::route::default_tls_mode")]
    pub tls: TlsPolicy,
    /// Queue MX domains by their MX host set (domains on the same exchangers share one
    /// destination) instead of one destination per domain.
    #[serde(default = "default_true")]
    pub mx_rollup: bool,
    /// Use the shipped provider table (`crate::egress::site::PROVIDERS`) as named sites.
    #[serde(default = "default_true")]
    pub builtin_sites: bool,
    /// Use the shipped automation rules (`config/automation_rules.toml`).
    #[serde(default = "default_true")]
    pub builtin_automation: bool,
    /// The least share of a destination's turns bulk mail gets while transactional mail waits.
    #[serde(default = "default_bulk_share")]
    pub bulk_share: f64,
}

/// Per-domain metric labels (bounded: the rest is "other").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Domains that always get their own label.
    #[serde(default)]
    pub domains: Vec<String>,
    /// At most this many domains get a label (listed ones included).
    #[serde(default = "default_domain_labels")]
    pub domain_labels: usize,
    /// A domain earns a label after this many delivery events.
    #[serde(default = "default_promote_after")]
    pub promote_after: u64,
    /// Tenants that always get their own label in `sluice_tenant_deliveries_total`.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// At most this many tenants get a label (the rest count as "other").
    #[serde(default = "default_domain_labels")]
    pub tenant_labels: usize,
}

fn default_domain_labels() -> usize {
    20
}
fn default_promote_after() -> u64 {
    100
}

/// The JSON-lines delivery log (`<data_dir>/log/delivery.jsonl`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryLogConfig {
    /// Write the log file.
    #[serde(default = "default_true")]
    pub file: bool,
    /// Rotate when the file reaches this size.
    #[serde(default = "default_log_max_size", deserialize_with = "size")]
    pub max_size: u64,
    /// Rotated files kept (`delivery.jsonl.1` … `.N`).
    #[serde(default = "default_log_keep")]
    pub keep: usize,
    /// Also write every event to stdout.
    #[serde(default)]
    pub stdout: bool,
}

fn default_log_max_size() -> u64 {
    100 << 20
}
fn default_log_keep() -> usize {
    5
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Resolvers as `ip:port`; empty = the system configuration (/etc/resolv.conf).
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
}

pub use crate::proto::smtp::client::TlsPolicy;

/// Bounce classification (README, "Bounce categories").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BounceConfig {
    /// The operator's rules file, tried before the shipped rules.
    pub rules: Option<PathBuf>,
}

/// One-click unsubscribe (README, "One-click unsubscribe").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeConfig {
    /// Add `List-Unsubscribe` to injected mail and serve the HTTPS endpoint.
    #[serde(default)]
    pub enabled: bool,
    /// Where the HTTPS endpoint listens (TLS from `[tls]`).
    #[serde(default = "default_unsubscribe_address")]
    pub address: SocketAddr,
    /// The base URL recipients see, e.g. `https://unsub.example.com/unsubscribe`; the token is
    /// appended as a path segment. It must reach `address` (directly or through a proxy).
    #[serde(default)]
    pub url: String,
    /// An address for the mailto form of `List-Unsubscribe`.
    pub mailto: Option<String>,
    /// The HMAC key (default `<data_dir>/unsubscribe.key`, made on first start).
    pub key_file: Option<PathBuf>,
    /// PROXY protocol, as on `[[listener]]`.
    #[serde(default)]
    pub proxy_protocol: bool,
    #[serde(default)]
    pub proxy_networks: Vec<IpNet>,
}

impl UnsubscribeConfig {
    pub fn proxy(&self) -> Option<Arc<ProxyPolicy>> {
        proxy_policy(self.proxy_protocol, &self.proxy_networks)
    }
}

fn default_unsubscribe_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Local {
    /// Domains accepted from anyone.
    #[serde(default)]
    pub domains: Vec<String>,
    /// The address mail to `<postmaster>` (RCPT with no domain, RFC 5321 4.5.1) is delivered
    /// to. Unset: such recipients are refused with 550 5.1.1, since they could not be delivered.
    /// With mailboxes, `postmaster@` and `abuse@` every local domain go there too (RFC 2142).
    #[serde(default)]
    pub postmaster: Option<String>,
    /// Deliver mail for `domains` into local mailboxes (users of the users file and aliases;
    /// others get 550 5.1.1 at RCPT). false: the domains are only accepted from anyone and go
    /// on by `[[route]]` (an inbound gateway).
    #[serde(default = "default_true")]
    pub mailboxes: bool,
    /// `"alias@domain"` or a bare `"local-part"` (every local domain) to one user or a list.
    #[serde(default)]
    pub aliases: std::collections::HashMap<String, OneOrMany>,
    /// The user that gets mail for unknown local parts (off by default: it invites spam).
    #[serde(default)]
    pub catch_all: Option<String>,
    /// Where the Maildirs are: `<mailbox_dir>/<domain>/<user>/Maildir`. Default
    /// `<data_dir>/mailboxes`.
    #[serde(default)]
    pub mailbox_dir: Option<PathBuf>,
    /// Octets per mailbox (0: no limit); over it RCPT gets 452 4.2.2 and delivery is retried.
    #[serde(default = "default_quota", deserialize_with = "size")]
    pub quota: u64,
    /// Folders per user (IMAP CREATE past it: `NO [LIMIT]`).
    #[serde(default = "default_max_folders")]
    pub max_folders: usize,
}

/// One address or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(a) => vec![a.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

fn default_quota() -> u64 {
    1 << 30
}

fn default_hostname() -> String {
    system_hostname().unwrap_or_else(|| "localhost".into())
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_listeners() -> Vec<Listener> {
    vec![Listener {
        mode: ListenerMode::Smtp,
        address: ([127, 0, 0, 1], 2525).into(),
        name: None,
        proxy_protocol: false,
        proxy_networks: Vec::new(),
    }]
}
fn default_admin_address() -> SocketAddr {
    ([127, 0, 0, 1], 8025).into()
}
fn default_relay_networks() -> Vec<IpNet> {
    vec!["127.0.0.0/8".parse().expect("literal"), "::1/128".parse().expect("literal")]
}
fn default_max_message_size() -> u64 {
    50 << 20
}
fn default_max_recipients() -> usize {
    1000
}
fn default_max_sessions() -> usize {
    10_000
}
fn default_recipient_overshoot_limit() -> usize {
    10_000
}

fn default_max_hops() -> usize {
    50
}

fn default_max_sessions_per_ip() -> usize {
    100
}
fn default_max_command_line() -> usize {
    512
}
fn default_max_line_length() -> usize {
    1000
}
fn default_memory_budget() -> u64 {
    1 << 30
}
fn default_max_errors() -> u32 {
    20
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_data_timeout() -> Duration {
    Duration::from_secs(180)
}
fn default_retry() -> Vec<Duration> {
    [5, 10, 20, 40, 60, 120, 240].iter().map(|m| Duration::from_secs(m * 60)).collect()
}
fn default_max_age() -> Duration {
    Duration::from_secs(5 * 86_400)
}
fn default_spool_writer() -> crate::spool::WriterKind {
    crate::spool::WriterKind::Portable
}
fn default_segment_size() -> u64 {
    16 << 20
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_min_free_space() -> u64 {
    256 << 20
}
fn default_delivery_concurrency() -> usize {
    100
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_data_end_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_mx_port() -> u16 {
    25
}
fn default_bulk_share() -> f64 {
    0.2
}

fn default_scan_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

default_from_serde!(
    Admin,
    Local,
    Relay,
    AuthConfig,
    MetricsConfig,
    DeliveryLogConfig,
    UnsubscribeConfig,
    Limits,
    Queue,
    SpoolConfig,
    DeliveryConfig,
    Config
);

fn system_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|err| ConfigError::Read { file: file.clone(), err })?;
        Self::parse(&text, &file)
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.into(),
            msg: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        self.check_listeners()
            .and_then(|()| self.check_limits())
            .and_then(|()| self.check_delivery())
            .and_then(|()| self.check_local())
            .and_then(|()| self.check_dkim())
            .and_then(|()| self.check_bounce())
            .and_then(|()| self.check_unsubscribe())
            .and_then(|()| self.check_verp())
            .and_then(|()| self.check_tenants())
            .and_then(|()| self.egress().map(drop))
            .and_then(|()| self.sites().map(drop))
            .and_then(|()| self.automation_rules().map(drop))
            .and_then(|()| self.check_breakers())
            .map_err(|(key, msg)| ConfigError::Invalid { file: file.into(), key, msg })
    }

    /// `[[listener]]`: TLS where the mode needs it, no address twice.
    fn check_listeners(&self) -> Check {
        if self.listener.is_empty() {
            return invalid_key("listener", "at least one [[listener]] is needed".into());
        }
        check_proxy("admin", self.admin.proxy_protocol, &self.admin.proxy_networks)?;
        check_proxy(
            "unsubscribe",
            self.unsubscribe.proxy_protocol,
            &self.unsubscribe.proxy_networks,
        )?;
        for (i, l) in self.listener.iter().enumerate() {
            check_proxy(&format!("listener[{i}]"), l.proxy_protocol, &l.proxy_networks)?;
            let plaintext_ok = matches!(
                l.mode,
                ListenerMode::Submission | ListenerMode::Pop3 | ListenerMode::Imap
            ) && self.auth.plaintext_on_loopback
                && l.address.ip().is_loopback();
            let mailboxes = self.local.mailboxes && !self.local.domains.is_empty();
            if !l.mode.is_smtp() && !mailboxes {
                return invalid_key(
                    &format!("listener[{i}].mode"),
                    "POP3 and IMAP serve the local mailboxes: set [local] domains (with mailboxes = true)"
                        .into(),
                );
            }
            if l.mode != ListenerMode::Smtp && self.tls.is_none() && !plaintext_ok {
                return invalid_key(
                    &format!("listener[{i}].mode"),
                    format!(
                        "mode {:?} needs TLS: set [tls] cert and key (`sluice tls self-signed` makes a test pair)",
                        l.mode
                    )
                    .to_lowercase()
                    .replace("tls:", "TLS:"),
                );
            }
            // Port 0 (any free port) may repeat: each bind gets its own.
            if self.listener[..i].iter().any(|o| o.address == l.address && l.address.port() != 0)
                || l.address == self.admin.address && l.address.port() != 0
            {
                return invalid_key(
                    &format!("listener[{i}].address"),
                    format!("{} is used twice", l.address),
                );
            }
        }
        Ok(())
    }

    /// `[limits]`, `[queue]` and `[spool]`: sizes within RFC minimums and sane bounds.
    fn check_limits(&self) -> Check {
        let lim = &self.limits;
        if lim.max_message_size == 0 || lim.max_message_size > 1 << 30 {
            return invalid_key(
                "limits.max_message_size",
                "must be between 1 byte and 1GiB".into(),
            );
        }
        if lim.max_command_line < 512 {
            return invalid_key(
                "limits.max_command_line",
                "RFC 5321 4.5.3.1.4 requires at least 512".into(),
            );
        }
        if lim.max_line_length < 1000 {
            return invalid_key(
                "limits.max_line_length",
                "RFC 5321 4.5.3.1.6 requires at least 1000".into(),
            );
        }
        for (key, v) in [
            ("limits.max_recipients", lim.max_recipients),
            ("limits.max_sessions", lim.max_sessions),
            ("limits.max_sessions_per_ip", lim.max_sessions_per_ip),
        ] {
            if v == 0 {
                return invalid_key(key, "must be at least 1".into());
            }
        }
        if lim.max_errors == 0 {
            return invalid_key("limits.max_errors", "must be at least 1".into());
        }
        if self.queue.retry.is_empty() || self.queue.retry.iter().any(|d| d.is_zero()) {
            return invalid_key("queue.retry", "needs at least one non-zero interval".into());
        }
        if !(1 << 20..=1 << 30).contains(&self.spool.segment_size) {
            return invalid_key("spool.segment_size", "must be between 1MiB and 1GiB".into());
        }
        Ok(())
    }

    /// `[shaping]`, `[delivery]` and `[[route]]`.
    fn check_delivery(&self) -> Check {
        if !(0.0..=1.0).contains(&self.delivery.bulk_share) {
            return invalid_key("delivery.bulk_share", "a share from 0 to 1 (e.g. 0.2)".into());
        }
        let d = &self.shaping.default;
        if d.connections == 0 || d.messages_per_connection == 0 {
            return invalid_key(
                "shaping.default",
                "connections and messages_per_connection must be at least 1".into(),
            );
        }
        for (i, r) in self.shaping.rule.iter().enumerate() {
            if r.connections == Some(0) || r.messages_per_connection == Some(0) {
                return invalid_key(
                    &format!("shaping.rule[{i}]"),
                    "connections and messages_per_connection must be at least 1".into(),
                );
            }
        }
        if let Err(e) = crate::rate::parse_rate(&self.limits.max_connection_rate_per_ip) {
            return invalid_key("limits.max_connection_rate_per_ip", e);
        }
        if self.delivery.concurrency == 0 {
            return invalid_key("delivery.concurrency", "must be at least 1".into());
        }
        for (i, r) in self.route.iter().enumerate() {
            if r.domains.is_empty() {
                return invalid_key(
                    &format!("route[{i}].domains"),
                    "needs at least one pattern".into(),
                );
            }
            if r.auth.is_some() && r.tls == TlsPolicy::Disabled {
                return invalid_key(
                    &format!("route[{i}].auth"),
                    "credentials are sent over TLS only; tls = \"disabled\" would never use them"
                        .into(),
                );
            }
            if r.auth.is_some() && r.smarthost.is_none() {
                return invalid_key(&format!("route[{i}].auth"), "needs a smarthost".into());
            }
            if let Some(h) = &r.smarthost
                && h.rsplit_once(':')
                    .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
            {
                return invalid_key(
                    &format!("route[{i}].smarthost"),
                    format!("{h:?} is not host:port"),
                );
            }
        }
        Ok(())
    }

    /// `[local]`: domains and the postmaster address.
    fn check_local(&self) -> Check {
        for (i, d) in self.local.domains.iter().enumerate() {
            if d.is_empty() || d.contains('@') || d.contains(' ') {
                return invalid_key(
                    &format!("local.domains[{i}]"),
                    format!("{d:?} is not a domain"),
                );
            }
        }
        let is_address =
            |a: &str| matches!(crate::proto::smtp::address::parse_path(a, false), Ok(Some(_)));
        if let Some(p) = &self.local.postmaster
            && !is_address(p)
        {
            return invalid_key(
                "local.postmaster",
                format!("{p:?} is not an address (user@domain)"),
            );
        }
        if let Some(c) = &self.local.catch_all
            && !is_address(c)
        {
            return invalid_key("local.catch_all", format!("{c:?} is not an address"));
        }
        for (alias, targets) in &self.local.aliases {
            for t in targets.to_vec() {
                if !is_address(&t) {
                    let key = format!("local.aliases.{alias}");
                    return invalid_key(&key, format!("{t:?} is not an address (user@domain)"));
                }
            }
        }
        Ok(())
    }

    /// `[[dkim]]`: domains, selectors, no key configured twice.
    fn check_dkim(&self) -> Check {
        for (i, d) in self.dkim.iter().enumerate() {
            if d.domain.is_empty() || d.domain.contains(['@', ' ', '*']) {
                return invalid_key(
                    &format!("dkim[{i}].domain"),
                    format!("{:?} is not a domain", d.domain),
                );
            }
            if d.selector.is_empty() || !d.selector.split('.').all(crate::domain::is_dns_label) {
                return invalid_key(
                    &format!("dkim[{i}].selector"),
                    format!("{:?} is not a DNS label", d.selector),
                );
            }
            let same = |o: &DkimConfig| {
                o.domain.eq_ignore_ascii_case(&d.domain) && o.selector == d.selector
            };
            if self.dkim[..i].iter().any(same) {
                return invalid_key(
                    &format!("dkim[{i}].selector"),
                    format!("{}._domainkey.{} is configured twice", d.selector, d.domain),
                );
            }
        }
        Ok(())
    }
}

impl Config {
    /// `[unsubscribe]`: an HTTPS URL, TLS to serve it, and the suppression list to record into.
    fn check_unsubscribe(&self) -> Check {
        let u = &self.unsubscribe;
        if !u.enabled {
            return Ok(());
        }
        if !u.url.starts_with("https://") {
            return invalid_key(
                "unsubscribe.url",
                format!("{:?} is not an https:// URL (RFC 8058 3.1)", u.url),
            );
        }
        if self.tls.is_none() {
            return invalid_key(
                "unsubscribe.enabled",
                "the HTTPS endpoint needs [tls] cert and key".into(),
            );
        }
        if !self.suppression.enabled {
            return invalid_key(
                "unsubscribe.enabled",
                "needs [suppression] enabled = true (unsubscribes are recorded there)".into(),
            );
        }
        Ok(())
    }

    /// `[[source]]`, `[[pool]]`, `default_pool` and the pools tenants and routes name.
    pub fn egress(&self) -> Result<crate::egress::Egress, (String, String)> {
        crate::egress::Egress::new(
            &self.source,
            &self.pool,
            &self.warmup,
            self.default_pool.as_deref(),
            self.tenant.iter().filter_map(|(t, c)| Some((t.as_str(), c.pool.as_deref()?))),
            self.route.iter().enumerate().filter_map(|(i, r)| Some((i, r.pool.as_deref()?))),
        )
    }

    /// Each tenant's weight and priority at the destinations' ready queues.
    pub fn tenant_classes(
        &self,
    ) -> std::collections::HashMap<String, crate::delivery::dispatch::TenantClass> {
        self.tenant
            .iter()
            .map(|(name, t)| {
                let class = crate::delivery::dispatch::TenantClass {
                    weight: t.weight.unwrap_or(1),
                    priority: t.priority.as_deref().and_then(crate::spool::Priority::parse),
                };
                (name.clone(), class)
            })
            .collect()
    }

    /// `[[site]]` over the shipped provider table (unless `[delivery] builtin_sites = false`).
    pub fn sites(&self) -> Result<crate::egress::site::Sites, (String, String)> {
        crate::egress::site::Sites::new(&self.site, self.delivery.builtin_sites)
    }

    /// `[circuit_breaker]` and each `[tenant.NAME.circuit_breaker]`.
    fn check_breakers(&self) -> Check {
        self.circuit_breaker.check("circuit_breaker")?;
        for (name, t) in &self.tenant {
            if let Some(b) = &t.circuit_breaker {
                b.check(&format!("tenant.{name}.circuit_breaker"))?;
            }
        }
        Ok(())
    }

    /// The tenants' own breaker settings.
    pub fn tenant_breakers(
        &self,
    ) -> std::collections::BTreeMap<String, crate::shaping::breaker::BreakerConfig> {
        self.tenant
            .iter()
            .filter_map(|(n, t)| t.circuit_breaker.clone().map(|b| (n.clone(), b)))
            .collect()
    }

    /// `[[automation]]` over the shipped rules, checked against the sites.
    pub fn automation_rules(&self) -> Result<crate::shaping::automation::Rules, (String, String)> {
        let sites = self.sites()?;
        crate::shaping::automation::Rules::new(
            &self.automation,
            self.delivery.builtin_automation,
            &|s| sites.get(s).is_some(),
        )
        .map_err(|e| ("automation".to_string(), e.to_string()))
    }

    /// `[tenant.NAME]`: names usable as labels and scopes, rates that parse.
    fn check_tenants(&self) -> Check {
        for (name, t) in &self.tenant {
            let key = format!("tenant.{name}");
            crate::tenant::check_name("name", name.clone()).map_err(|e| (key.clone(), e))?;
            t.limits().map_err(|e| (format!("{key}.rate"), e))?;
            if t.weight.is_some_and(|w| !(1..=1000).contains(&w)) {
                return invalid_key(&format!("{key}.weight"), "must be 1 to 1000".into());
            }
            if let Some(p) = &t.priority
                && crate::spool::Priority::parse(p).is_none()
            {
                return invalid_key(
                    &format!("{key}.priority"),
                    format!("{p:?} (bulk or transactional)"),
                );
            }
        }
        Ok(())
    }

    /// `[verp]`: a domain (a DNS name, not one of the local domains) and the list to feed.
    fn check_verp(&self) -> Check {
        let v = &self.verp;
        if !v.enabled {
            return Ok(());
        }
        if v.domain.is_empty() || v.domain.contains(['@', ' ', '*']) {
            return invalid_key("verp.domain", format!("{:?} is not a domain", v.domain));
        }
        if v.local.is_empty()
            || !v.local.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid_key(
                "verp.local",
                format!("{:?}: use letters, digits, - and _", v.local),
            );
        }
        if !self.suppression.enabled {
            return invalid_key(
                "verp.enabled",
                "needs [suppression] enabled = true (bounces are recorded there)".into(),
            );
        }
        Ok(())
    }

    /// `<data_dir>/unsubscribe.key` unless `[unsubscribe] key_file` says otherwise.
    pub fn unsubscribe_key_file(&self) -> PathBuf {
        self.unsubscribe.key_file.clone().unwrap_or_else(|| self.data_dir.join("unsubscribe.key"))
    }

    /// `[bounce] rules`: the file reads and every pattern compiles.
    fn check_bounce(&self) -> Check {
        match crate::bounce::classify::Classifier::load(self.bounce.rules.as_deref()) {
            Ok(_) => Ok(()),
            Err(e) => invalid_key("bounce.rules", e.to_string()),
        }
    }
}

/// A check's refusal: the key it is about, and why.
type Check = Result<(), (String, String)>;

fn invalid_key(key: &str, msg: String) -> Check {
    Err((key.to_string(), msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_dev_set() {
        let c = Config::default();
        assert_eq!(c.listener[0].address.to_string(), "127.0.0.1:2525");
        assert_eq!(c.admin.address.to_string(), "127.0.0.1:8025");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.limits.max_message_size, 50 << 20);
        assert_eq!(c.limits.command_timeout, Duration::from_secs(300));
        assert!(
            c.relay
                .networks
                .iter()
                .any(|n| n.contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()))
        );
        c.validate("defaults").unwrap();
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sluice.toml");
        let c = Config::load(&path).unwrap();
        assert!(!c.listener.is_empty());
    }

    #[test]
    fn dkim_entries_are_checked() {
        let entry = |domain: &str, selector: &str, alg: &str| {
            format!(
                "[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nalgorithm = \"{alg}\"\nkey = \"k.pem\"\n"
            )
        };
        let check = |text: &str| -> Result<Config, String> {
            let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
            c.validate("t").map_err(|e| e.to_string())?;
            Ok(c)
        };
        let ok = check(
            &(entry("example.com", "a", "ed25519") + &entry("example.com", "b", "rsa-sha256")),
        )
        .unwrap();
        assert_eq!(ok.dkim[0].algorithm, crate::mailauth::key::DkimAlgorithm::Ed25519Sha256);
        assert_eq!(ok.dkim[1].algorithm, crate::mailauth::key::DkimAlgorithm::RsaSha256);
        let twice =
            check(&(entry("example.com", "a", "ed25519") + &entry("EXAMPLE.com", "a", "rsa")));
        assert!(twice.unwrap_err().contains("configured twice"));
        assert!(
            check(&entry("example.com", "a b", "rsa")).unwrap_err().contains("dkim[0].selector")
        );
        assert!(check(&entry("*.example.com", "a", "rsa")).unwrap_err().contains("dkim[0].domain"));
        assert!(check(&entry("example.com", "a", "rsa-sha1")).unwrap_err().contains("rsa-sha1"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("50MiB"), Ok(50 << 20));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("5XB").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases: &[(&str, &[&str])] = &[
            (
                "hostname = \"x\"\n[limits]\nmax_mesage_size = \"1MiB\"\n",
                &["f.toml", "line 3", "max_mesage_size"],
            ),
            ("[limits]\nmax_message_size = \"5XB\"\n", &["f.toml", "line 2", "5XB"]),
            ("[limits]\ncommand_timeout = \"soon\"\n", &["line 2", "invalid duration"]),
            ("[[listener]]\nmode = \"smtp\"\naddress = \"nowhere\"\n", &["line 3"]),
            (
                "[[listener]]\nmode = \"submission\"\naddress = \"127.0.0.1:2587\"\n",
                &["listener[0].mode", "TLS"],
            ),
            ("[limits]\nmax_command_line = 100\n", &["limits.max_command_line", "512"]),
            ("[relay]\nnetworks = [\"10.0.0.0/33\"]\n", &["line 2"]),
            ("[[route]]\ndomains = [\"*\"]\nsmarthost = \"nohost\"\n", &["route[0].smarthost"]),
            ("[[route]]\ndomains = [\"*\"]\ntls = \"sometimes\"\n", &["line 3"]),
            (
                "[auth]\nplaintext_on_loopback = true\n[[listener]]\nmode = \"pop3\"\naddress = \"127.0.0.1:2110\"\n",
                &["listener[0].mode", "[local] domains"],
            ),
            (
                "[local]\ndomains = [\"example.com\"]\n[[listener]]\nmode = \"pop3s\"\naddress = \"127.0.0.1:2995\"\n",
                &["listener[0].mode", "TLS"],
            ),
            (
                "[local]\ndomains = [\"x.org\"]\naliases = { \"info\" = \"nobody\" }\n",
                &["local.aliases.info", "not an address"],
            ),
            (
                "[[source]]\nname = \"ip1\"\naddress = \"127.0.0.2\"\n[[pool]]\nname = \"bulk\"\nsources = [{ name = \"ip2\" }]\n",
                &["pool[0].sources[0].name", "no [[source]] is named \"ip2\""],
            ),
            (
                "[tenant.acme]\npool = \"bulk\"\n",
                &["tenant.acme.pool", "no [[pool]] is named \"bulk\""],
            ),
            ("[[route]]\ndomains = [\"*\"]\npool = \"tx\"\n", &["route[0].pool", "no [[pool]]"]),
            ("default_pool = \"tx\"\n", &["default_pool", "no [[pool]]"]),
        ];
        for (text, needles) in cases {
            let err = Config::parse(text, "f.toml").unwrap_err().to_string();
            for n in *needles {
                assert!(err.contains(n), "{err:?} should mention {n:?}");
            }
        }
    }
}
