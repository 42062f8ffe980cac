//! Every Prometheus metric sluice exports, declared in one place; the help text is the doc.
//!
//! Label sets are bounded: listener names come from config, reasons from fixed enums.

use std::sync::LazyLock;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<T: prometheus::core::Collector + Clone + 'static>(m: T) -> T {
    // Names are unique constants in this file; a clash is a programming error caught by tests.
    REGISTRY.register(Box::new(m.clone())).expect("metric registered twice");
    m
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).expect("valid metric"))
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::new(name, help).expect("valid metric"))
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("valid metric"),
    )
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    register(
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("valid metric"),
    )
}

const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Declares each metric once: its static, and its place in [`init`], which registers every one
/// (a metric cannot be declared and then forgotten at start-up).
macro_rules! metrics {
    ($( $(#[$doc:meta])* $name:ident: $ty:ty = $init:expr; )*) => {
        $(
            $(#[$doc])*
            pub static $name: LazyLock<$ty> = LazyLock::new(|| $init);
        )*

        /// Registers every metric, so `/metrics` lists them before their first event.
        pub fn init() {
            $( LazyLock::force(&$name); )*
            BUILD_INFO.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("SLUICE_GIT")]).set(1);
            register_process_collector();
        }

        /// Every metric: name, type, labels and help, in declaration order.
        pub fn catalogue() -> Vec<MetricInfo> {
            vec![$( MetricInfo::of(&*$name, stringify!($ty)), )*]
        }
    };
}

/// The standard `process_*` metrics (CPU seconds, resident memory, open file descriptors, start
/// time), once.
fn register_process_collector() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        let _ = REGISTRY.register(Box::new(pc));
    });
}

/// One metric of the catalogue (`sluice metrics`, README's table).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MetricInfo {
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub labels: Vec<String>,
    pub help: String,
}

impl MetricInfo {
    fn of(metric: &dyn prometheus::core::Collector, ty: &str) -> MetricInfo {
        let desc = metric.desc()[0];
        let kind = if ty.contains("Counter") {
            "counter"
        } else if ty.contains("Gauge") {
            "gauge"
        } else {
            "histogram"
        };
        MetricInfo {
            name: desc.fq_name.clone(),
            kind,
            labels: desc.variable_labels.clone(),
            help: desc.help.clone(),
        }
    }
}

/// The catalogue as a markdown table (README's "Metrics" section is this, verbatim).
pub fn catalogue_markdown() -> String {
    let mut out = String::from("| metric | type | meaning |\n|---|---|---|\n");
    for m in catalogue() {
        let labels =
            if m.labels.is_empty() { String::new() } else { format!("{{{}}}", m.labels.join(",")) };
        out.push_str(&format!("| `{}{labels}` | {} | {} |\n", m.name, m.kind, m.help));
    }
    out
}

metrics! {
    /// Always 1; its labels say which build runs.
    BUILD_INFO: IntGaugeVec = register(
        IntGaugeVec::new(
            Opts::new(
                "sluice_build_info",
                "Always 1: the version and git commit of the running build (`unknown` outside a git checkout).",
            ),
            &["version", "git"],
        )
        .expect("valid metric"),
    );
    /// SMTP connections accepted, by listener.
    SMTP_CONNECTIONS: IntCounterVec = counter_vec(
        "sluice_smtp_connections_total",
        "SMTP connections accepted, by listener.",
        &["listener"],
    );
    /// SMTP connections open now, by listener.
    SMTP_CONNECTIONS_ACTIVE: IntGaugeVec = register(
        IntGaugeVec::new(
            Opts::new("sluice_smtp_connections_active", "SMTP connections open now, by listener."),
            &["listener"],
        )
        .expect("valid metric"),
    );
    /// Connections refused at accept time (421), by reason: max_sessions, max_sessions_per_ip.
    SMTP_CONNECTIONS_REFUSED: IntCounterVec = counter_vec(
        "sluice_smtp_connections_refused_total",
        "421 at connect: `max_sessions`, `max_sessions_per_ip`, `connection_rate`",
        &["reason"],
    );
    /// Messages accepted (answered 250 after the spool made them durable), by listener.
    MESSAGES_RECEIVED: IntCounterVec = counter_vec(
        "sluice_messages_received_total",
        "messages stored (answered 250 after they were durable, or listed in an injection's answer), by listener (`inject` for HTTP) and tenant (bounded labels as `[metrics] tenants`; `\"\"` untagged)",
        &["listener", "tenant"],
    );
    /// Commands or messages refused, by reason (syntax, sequence, size, bare_cr_lf, relay_denied, ...).
    MESSAGES_REJECTED: IntCounterVec = counter_vec(
        "sluice_smtp_rejections_total",
        "refusals: `syntax`, `sequence`, `size`, `line_too_long`, `bare_cr_lf`, `relay_denied`, `too_many_recipients`, `too_many_errors`, `timeout`, `storage`, `not_implemented`, `auth_required`, `auth_failed`, `auth_locked_out`, `tls_required`, `sender_not_owned`, `pregreet`, `too_slow`, `no_mailbox`, `nul`, `mail_loop`, `improper_pipelining`, `dmarc`, `spf`, `suppressed`, `mailbox_full`, `quota`, `circuit_open`",
        &["reason"],
    );
    /// Sessions of every protocol, by listener.
    SESSIONS: IntCounterVec = counter_vec(
        "sluice_sessions_total",
        "Connections accepted, by protocol (smtp, imap, pop3) and listener.",
        &["protocol", "listener"],
    );
    /// Inbound TLS handshakes of every protocol.
    TLS_HANDSHAKES: IntCounterVec = counter_vec(
        "sluice_tls_handshakes_total",
        "Inbound TLS handshakes (STARTTLS, STLS or implicit) by protocol, listener and result: the protocol version, or failed.",
        &["protocol", "listener", "result"],
    );
    /// HTTP injection requests by how they were answered.
    INJECT_REQUESTS: IntCounterVec = counter_vec(
        "sluice_inject_requests_total",
        "HTTP injection requests by result: ok (200, some recipients may have failed), bad_request, template (400), forbidden (403), quota, circuit_open (429), unavailable (503).",
        &["result"],
    );
    /// HTTP injection recipients by fate.
    INJECT_RECIPIENTS: IntCounterVec = counter_vec(
        "sluice_inject_recipients_total",
        "Recipients of HTTP injection requests by result: stored, invalid (bad address), suppressed, render_error (its template failed), refused (the intake refused its message).",
        &["result"],
    );
    /// Message octets accepted (body as received, without added headers).
    BYTES_RECEIVED: IntCounter = counter("sluice_received_bytes_total", "Message octets accepted, as received.");
    /// Time from handing a record to the spool until it is durable (group commit wait + write + fsync).
    SPOOL_COMMIT_SECONDS: Histogram = histogram(
        "sluice_spool_commit_seconds",
        "Time from handing a record to the spool until it is durable.",
        LATENCY_BUCKETS.to_vec(),
    );
    /// Duration of one fdatasync of the segment log.
    SPOOL_FSYNC_SECONDS: Histogram = histogram(
        "sluice_spool_fsync_seconds",
        "Duration of one fdatasync of the segment log.",
        LATENCY_BUCKETS.to_vec(),
    );
    /// fdatasync calls on the segment log; records_total / fsyncs_total = records per fsync.
    SPOOL_FSYNCS: IntCounter = counter(
        "sluice_spool_fsyncs_total",
        "fdatasync calls on the segment log (one per group commit).",
    );
    /// Records made durable (messages, state changes, removals).
    SPOOL_RECORDS: IntCounter = counter("sluice_spool_records_total", "Records made durable in the segment log.");
    /// Records per group commit.
    SPOOL_BATCH_RECORDS: Histogram = histogram(
        "sluice_spool_batch_records",
        "Records written per group commit (one fsync).",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
    );
    /// Group commits that failed (write or fsync error); their messages were answered 4xx.
    SPOOL_COMMIT_ERRORS: IntCounter = counter(
        "sluice_spool_commit_errors_total",
        "Group commits that failed; their messages got 4xx.",
    );
    /// Damaged log records skipped (and copied to spool/quarantine/) by start-up recovery.
    SPOOL_DAMAGED_RECORDS: IntCounter = counter(
        "sluice_spool_damaged_records_total",
        "damaged log regions skipped at start-up, records found damaged on read, and records missing from a segment cut short (copied to `spool/quarantine/` where there are bytes to copy)",
    );
    /// Which commit path the spool runs (io_uring or portable): 1 for the one in use.
    SPOOL_WRITER: IntGaugeVec = register(
        IntGaugeVec::new(
            Opts::new("sluice_spool_writer", "1 for the commit path in use: `portable` or `io_uring`"),
            &["writer"],
        )
        .expect("valid metric"),
    );
    /// Index checkpoints written (redb), and their duration.
    SPOOL_CHECKPOINT_SECONDS: Histogram = histogram(
        "sluice_spool_checkpoint_seconds",
        "Duration of one index checkpoint.",
        LATENCY_BUCKETS.to_vec(),
    );
    /// Messages refused because the memory budget for bodies in flight was spent.
    MEMORY_BUDGET_EXCEEDED: IntCounter = counter(
        "sluice_memory_budget_exceeded_total",
        "Messages refused (452 4.3.1) because the budget for bodies in flight was spent.",
    );
    /// Message bytes held in memory by sessions now (reading, or waiting for their commit).
    MEMORY_BUDGET_USED: IntGauge = register(
        IntGauge::new(
            "sluice_memory_budget_used_bytes",
            "message bytes sessions hold now (bodies being read, or waiting for their commit) against `[limits] memory_budget`",
        )
        .expect("valid metric"),
    );
    /// The budget itself.
    MEMORY_BUDGET: IntGauge = gauge(
        "sluice_memory_budget_bytes",
        "[limits] memory_budget: message bytes sessions may hold at once (the limit of sluice_memory_budget_used_bytes)."
    );
    /// Delivery outcomes per recipient: delivered, deferred (temporary failure), failed, expired.
    DELIVERIES: IntCounterVec = counter_vec(
        "sluice_deliveries_total",
        "Delivery outcomes per recipient: delivered, deferred, failed, expired.",
        &["outcome"],
    );
    /// Local mailbox deliveries per recipient: stored, over_quota, no_such_user, loop, error.
    LOCAL_DELIVERIES: IntCounterVec = counter_vec(
        "sluice_local_deliveries_total",
        "local mailbox deliveries per recipient: `stored`, `over_quota`, `no_such_user`, `loop`, `error`",
        &["outcome"],
    );
    /// POP3 sessions by listener.
    POP3_SESSIONS: IntCounterVec = counter_vec(
        "sluice_pop3_sessions_total",
        "POP3 connections accepted, by listener.",
        &["listener"],
    );
    /// POP3 logins: ok, invalid, locked_out (brute-force lockout), busy (maildrop in use).
    POP3_LOGINS: IntCounterVec = counter_vec(
        "sluice_pop3_logins_total",
        "POP3 logins: `ok`, `invalid`, `locked_out`, `busy` (maildrop held by another session)",
        &["result"],
    );
    /// Messages POP3 clients retrieved and deleted.
    POP3_MESSAGES: IntCounterVec = counter_vec(
        "sluice_pop3_messages_total",
        "messages `retrieved` (RETR) and `deleted` (at QUIT) over POP3",
        &["action"],
    );
    /// IMAP sessions by listener.
    IMAP_SESSIONS: IntCounterVec = counter_vec(
        "sluice_imap_sessions_total",
        "IMAP connections accepted, by listener.",
        &["listener"],
    );
    /// Octets in the local mailboxes (INBOX and folders of every user).
    MAILBOX_BYTES: IntGauge = gauge(
        "sluice_mailbox_bytes",
        "octets in the local mailboxes (INBOX and folders of every user), counted at start and every minute",
    );
    /// IMAP logins: ok, invalid, locked_out.
    IMAP_LOGINS: IntCounterVec = counter_vec(
        "sluice_imap_logins_total",
        "IMAP logins by result: ok, invalid, locked_out.",
        &["result"],
    );
    /// Local deliveries not written because the mailbox already had them.
    LOCAL_DUPLICATES: IntCounter = counter(
        "sluice_local_duplicates_total",
        "local deliveries found already in the mailbox (by their `,X=` key) and not written again: a crash between the mailbox write and the spool's record, or an alias retried after some of its users got the message",
    );
    /// HTTP connections closed at accept: the listener or the client was at its cap.
    QUOTA_REFUSED: IntCounterVec = counter_vec(
        "sluice_quota_refused_total",
        "Submissions refused by a quota ([tenant.NAME] or sluice user limit): limit is max_messages_per_hour, max_recipients_per_day, rate or max_sessions; tenant is the bounded tenant label (\"\" for users without one).",
        &["tenant", "limit"],
    );
    PROXY_REFUSED: IntCounterVec = counter_vec(
        "sluice_proxy_refused_total",
        "Connections to a proxy_protocol listener closed before their session: the peer is not in proxy_networks (not_a_proxy), its PROXY header is malformed or missing (malformed), late (timeout) or cut off (io).",
        &["listener", "reason"],
    );
    HTTP_REFUSED: IntCounterVec = counter_vec(
        "sluice_http_refused_total",
        "HTTP connections closed at accept because the listener (admin, unsubscribe) or the client address was at its connection cap ([http] max_connections, max_connections_per_ip).",
        &["listener"],
    );
    /// Duration of one delivery attempt (connect to QUIT).
    DELIVERY_SECONDS: Histogram = histogram(
        "sluice_delivery_seconds",
        "Duration of one delivery attempt, connect to QUIT.",
        LATENCY_BUCKETS.to_vec(),
    );
    /// Inbound TLS handshakes by listener and result (TLSv1_2, TLSv1_3, failed).
    SMTP_TLS: IntCounterVec = counter_vec(
        "sluice_smtp_tls_total",
        "Inbound TLS handshakes (STARTTLS or implicit) of SMTP listeners by listener and result: the protocol version, or failed (all protocols: sluice_tls_handshakes_total).",
        &["listener", "result"],
    );
    /// AUTH attempts by result.
    SMTP_AUTH: IntCounterVec = counter_vec(
        "sluice_smtp_auth_total",
        "SMTP AUTH attempts by result: ok, invalid (535), locked_out (454).",
        &["result"],
    );
    /// Password checks run (argon2id): at most `max_failures_per_ip` per IP and window.
    AUTH_VERIFICATIONS: IntCounter = counter(
        "sluice_auth_verifications_total",
        "Password checks (argon2id) run for AUTH; attempts refused by the lockout run none.",
    );
    /// Outbound sessions by TLS outcome: yes (STARTTLS negotiated), no (plaintext), failed
    /// (handshake failed).
    DELIVERY_TLS: IntCounterVec = counter_vec(
        "sluice_delivery_tls_total",
        "outbound sessions: `yes` (STARTTLS negotiated), `no` (plaintext), `failed` (handshake failed)",
        &["tls"],
    );
    /// Delivery outcomes by recipient domain (busiest domains, the rest as "other").
    DOMAIN_DELIVERIES: IntCounterVec = counter_vec(
        "sluice_domain_deliveries_total",
        "Delivery outcomes per recipient by destination domain: the busiest domains (see [metrics] in README) each get a label, the rest count as \"other\".",
        &["domain", "outcome"],
    );
    /// Delivery outcomes of tagged mail by tenant (bounded labels, like domains).
    TENANT_DELIVERIES: IntCounterVec = counter_vec(
        "sluice_tenant_deliveries_total",
        "Delivery outcomes per recipient of mail injected with a tenant: the busiest tenants (see [metrics] in README) each get a label, the rest count as \"other\".",
        &["tenant", "outcome"],
    );
    /// Delivery outcomes by egress source (labels bounded by the configured `[[source]]`s).
    SOURCE_DELIVERIES: IntCounterVec = counter_vec(
        "sluice_source_deliveries_total",
        "outcomes per recipient of mail sent from a pool, by `[[source]]` name (labels bounded by the configuration)",
        &["source", "outcome"],
    );
    /// MX delivery outcomes by named site (labels bounded by the provider table and `[[site]]`).
    SITE_DELIVERIES: IntCounterVec = counter_vec(
        "sluice_site_deliveries_total",
        "MX delivery outcomes per recipient by named site (the provider table and [[site]]); other MX destinations count as \"other\".",
        &["site", "outcome"],
    );
    /// Mail of a warming source held to the next day (labels bounded by `[[source]]`).
    WARMUP_POSTPONED: IntCounterVec = counter_vec(
        "sluice_warmup_postponed_total",
        "Messages for a site held to the next day because their warming [[source]] had sent its day's cap there (overflow = \"wait\", or no source of the pool had room).",
        &["source"],
    );
    /// Automation rule actions and recovery steps (labels bounded by the rules).
    SHAPING_ACTIONS: IntCounterVec = counter_vec(
        "sluice_shaping_actions_total",
        "Actions of [[automation]] rules (suspend, reduce, set, bounce_tenant) and their recovery steps (recover, resume), by rule.",
        &["rule", "action"],
    );
    /// The connection limit a rule left a source × site, as a share of the configured one.
    SHAPING_FACTOR: GaugeVec = register(
        GaugeVec::new(
            Opts::new(
                "sluice_shaping_factor",
                "The connection limit of a source × site an [[automation]] rule lowered, as a share of the configured one (1 while only suspended); present only while a rule holds it.",
            ),
            &["source", "site"],
        )
        .expect("valid metric"),
    );
    /// The rate a rule left a source × site.
    SHAPING_RATE: GaugeVec = register(
        GaugeVec::new(
            Opts::new(
                "sluice_shaping_rate",
                "Messages per second a source × site may send while an [[automation]] rule has lowered its rate; present only then.",
            ),
            &["source", "site"],
        )
        .expect("valid metric"),
    );
    /// Open reputation circuit breakers.
    CIRCUIT_OPEN: IntGaugeVec = register(
        IntGaugeVec::new(
            Opts::new(
                "sluice_circuit_open",
                "Open reputation circuit breakers by scope (tenant, campaign): their mail is held and new mail refused until an operator resumes them.",
            ),
            &["scope"],
        )
        .expect("valid metric"),
    );
    /// Outbound connections open now, by destination (same bounded labels as above).
    DESTINATION_CONNECTIONS: IntGaugeVec = register(
        IntGaugeVec::new(
            Opts::new(
                "sluice_destination_connections",
                "outbound connections open now per destination (labelled domains, named sites and smart hosts, else `other`)",
            ),
            &["destination"],
        )
        .expect("valid metric"),
    );
    /// Recipients in the queue by state, measured when /metrics is read.
    QUEUE_RECIPIENTS: IntGaugeVec = register(
        IntGaugeVec::new(
            Opts::new(
                "sluice_queue_recipients",
                "Recipients of queued messages by state (queued = waiting for delivery or retry; delivered and failed ones wait for their siblings).",
            ),
            &["state"],
        )
        .expect("valid metric"),
    );
    /// DNS lookups for delivery by type (mx, address) and result (ok, nxdomain, nodata, error).
    DNS_LOOKUPS: IntCounterVec = counter_vec(
        "sluice_dns_lookups_total",
        "DNS lookups by type (mx and address for delivery, spf for SPF evaluation) and result (ok, nxdomain, nodata, error).",
        &["type", "result"],
    );
    /// DNS lookup latency, cache hits included.
    DNS_SECONDS: Histogram = histogram(
        "sluice_dns_seconds",
        "DNS lookup latency for delivery (cache hits included).",
        LATENCY_BUCKETS.to_vec(),
    );
    /// Delivery log events dropped because the writer fell behind.
    DELIVERY_LOG_DROPPED: IntCounter = counter(
        "sluice_delivery_log_dropped_total",
        "Delivery log events dropped because the log writer fell behind (mail is unaffected).",
    );
    /// Recipients that failed for good (hard bounces and expiries), by bounce category.
    BOUNCES: IntCounterVec = counter_vec(
        "sluice_bounces_total",
        "Recipients that failed for good (permanent failures and expiries), by bounce category (README, \"Bounce categories\").",
        &["category"],
    );
    /// Deferred attempts by bounce category (why the receiver said "later").
    DEFERRALS: IntCounterVec = counter_vec(
        "sluice_deferrals_total",
        "Recipients deferred for a later attempt, by bounce category.",
        &["category"],
    );
    /// Addresses added to the suppression list, by reason.
    SUPPRESSIONS_ADDED: IntCounterVec = counter_vec(
        "sluice_suppressions_added_total",
        "Addresses added to the suppression list, by reason (a bounce category, complaint, unsubscribe, manual).",
        &["reason"],
    );
    /// Recipients refused because they are suppressed, by where (rcpt, inject).
    SUPPRESSED: IntCounterVec = counter_vec(
        "sluice_suppressed_total",
        "Recipients refused because they are on the suppression list, by where: rcpt (SMTP) or inject (HTTP).",
        &["where"],
    );
    /// Asynchronous bounces received at VERP addresses, by category ("unmatched": not ours).
    ASYNC_BOUNCES: IntCounterVec = counter_vec(
        "sluice_async_bounces_total",
        "Bounces received at VERP addresses, by bounce category; \"unmatched\" when the address is not one of ours or too old.",
        &["category"],
    );
    /// Abuse reports (ARF) attributed to a message we sent.
    COMPLAINTS: IntCounter = counter(
        "sluice_complaints_total",
        "Abuse reports (ARF, RFC 5965) received at the bounce domain and attributed to a message sluice sent.",
    );
    /// Entries in the suppression list.
    SUPPRESSION_ENTRIES: IntGauge = gauge("sluice_suppression_entries", "Entries in the suppression list.");
    /// Delivery status notifications queued to senders, by action (failed, delayed, relayed).
    DSNS: IntCounterVec = counter_vec(
        "sluice_dsns_total",
        "DSNs queued to senders: `failed` (bounces), `delayed`, `relayed`, `delivered` (success of a local delivery)",
        &["action"],
    );
    /// Forces registration of every metric, so `/metrics` lists them all from the start.
    /// DKIM signatures made at intake, by signing domain (from config: bounded) and algorithm.
    DKIM_SIGNATURES: IntCounterVec = counter_vec(
        "sluice_dkim_signatures_total",
        "DKIM signatures made at intake, by signing domain and algorithm.",
        &["domain", "algorithm"],
    );
    /// Time to make one DKIM signature (body hash and the private-key operation).
    DKIM_SIGN_SECONDS: HistogramVec = histogram_vec(
        "sluice_dkim_sign_seconds",
        "Time to make one DKIM signature (body hash and key operation), by algorithm.",
        &["algorithm"],
        vec![0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25],
    );
    /// Messages refused (451) because signing failed.
    DKIM_SIGN_FAILURES: IntCounter = counter(
        "sluice_dkim_sign_failures_total",
        "Messages refused with 451 because DKIM signing failed.",
    );
    /// Verification results of inbound mail, by method (spf, dkim, arc, dmarc) and result.
    AUTH_RESULTS: IntCounterVec = counter_vec(
        "sluice_auth_results_total",
        "verification of inbound mail: `spf`, `dkim`, `arc`, `dmarc` × `pass`, `fail`, `softfail`, `neutral`, `none`, `temperror`, `permerror`",
        &["method", "result"],
    );
    /// Messages in the queue now.
    SPOOL_MESSAGES: IntGauge = gauge("sluice_spool_messages", "Messages in the queue now.");
    /// Segment files on disk.
    SPOOL_SEGMENTS: IntGauge = gauge("sluice_spool_segments", "Segment log files on disk.");
    /// Bytes in segment files on disk.
    SPOOL_DISK_BYTES: IntGauge =
        gauge("sluice_spool_disk_bytes", "Bytes in segment log files on disk.");
    /// Free space where the spool is, and the floor below which new mail is refused.
    SPOOL_FREE_BYTES: IntGauge = gauge(
        "sluice_spool_free_bytes",
        "Free bytes on the spool's filesystem (measured after each group commit, and each second while below the floor)."
    );
    SPOOL_MIN_FREE_BYTES: IntGauge = gauge(
        "sluice_spool_min_free_bytes",
        "[spool] min_free_space: below it new mail gets 452 4.3.1."
    );
    /// Time in the queue of each recipient that reached a final outcome.
    TIME_TO_OUTCOME: HistogramVec = histogram_vec(
        "sluice_time_to_outcome_seconds",
        "Time from reception to a recipient's final outcome: delivered, failed, expired.",
        &["outcome"],
        vec![1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0, 43200.0, 86400.0, 259200.0, 432000.0],
    );
    /// Outbound SMTP connections open now.
    DELIVERY_CONNECTIONS: IntGauge =
        gauge("sluice_delivery_connections", "Outbound SMTP connections open now.");
}
/// Creates every labelled series with its bounded label values, so dashboards show zeros rather
/// than nothing before the first event.
/// `listeners`: each listener's name and protocol (`smtp`, `imap`, `pop3`); the `sluice_smtp_*`
/// series exist for SMTP listeners only.
pub fn init_labels(listeners: &[(String, &'static str)]) {
    init();
    for (l, protocol) in listeners {
        SESSIONS.with_label_values(&[*protocol, l.as_str()]);
        for r in ["TLSv1_2", "TLSv1_3", "failed"] {
            TLS_HANDSHAKES.with_label_values(&[*protocol, l.as_str(), r]);
        }
        if *protocol != "smtp" {
            continue;
        }
        SMTP_CONNECTIONS.with_label_values(&[l]);
        SMTP_CONNECTIONS_ACTIVE.with_label_values(&[l]);
        MESSAGES_RECEIVED.with_label_values(&[l, ""]);
        for r in ["TLSv1_2", "TLSv1_3", "failed"] {
            SMTP_TLS.with_label_values(&[l, r]);
        }
    }
    // HTTP injection counts its stored messages under its own listener name.
    MESSAGES_RECEIVED.with_label_values(&["inject", ""]);
    for r in crate::proto::smtp::session::RejectReason::ALL {
        MESSAGES_REJECTED.with_label_values(&[r.label()]);
    }
    for o in ["delivered", "deferred", "failed", "expired"] {
        DELIVERIES.with_label_values(&[o]);
    }
    for o in ["delivered", "failed", "expired"] {
        TIME_TO_OUTCOME.with_label_values(&[o]);
    }
    let requests =
        ["ok", "bad_request", "template", "forbidden", "quota", "circuit_open", "unavailable"];
    for r in requests {
        INJECT_REQUESTS.with_label_values(&[r]);
    }
    for r in ["stored", "invalid", "suppressed", "render_error", "refused"] {
        INJECT_RECIPIENTS.with_label_values(&[r]);
    }
    // Named sites appear as they are used; `other` (the rest) exists from the start.
    for o in ["delivered", "deferred", "failed", "expired"] {
        SITE_DELIVERIES.with_label_values(&[crate::domain_labels::OTHER, o]);
    }
    for o in ["stored", "over_quota", "no_such_user", "loop", "error"] {
        LOCAL_DELIVERIES.with_label_values(&[o]);
    }
    for r in ["ok", "invalid", "locked_out", "busy"] {
        POP3_LOGINS.with_label_values(&[r]);
    }
    for a in ["retrieved", "deleted"] {
        POP3_MESSAGES.with_label_values(&[a]);
    }
    for r in ["ok", "invalid", "locked_out"] {
        IMAP_LOGINS.with_label_values(&[r]);
    }
    for l in ["admin", "unsubscribe"] {
        HTTP_REFUSED.with_label_values(&[l]);
    }
    for s in ["queued", "delivered", "failed"] {
        QUEUE_RECIPIENTS.with_label_values(&[s]);
    }
    for t in ["mx", "address", "spf"] {
        for r in ["ok", "nxdomain", "nodata", "error"] {
            DNS_LOOKUPS.with_label_values(&[t, r]);
        }
    }
    DESTINATION_CONNECTIONS.with_label_values(&[crate::domain_labels::OTHER]);
    for o in ["delivered", "deferred", "failed", "expired"] {
        DOMAIN_DELIVERIES.with_label_values(&[crate::domain_labels::OTHER, o]);
    }
    for r in ["ok", "invalid", "locked_out"] {
        SMTP_AUTH.with_label_values(&[r]);
    }
    for t in ["yes", "no", "failed"] {
        DELIVERY_TLS.with_label_values(&[t]);
    }
    for r in ["max_sessions", "max_sessions_per_ip", "connection_rate"] {
        SMTP_CONNECTIONS_REFUSED.with_label_values(&[r]);
    }
    for a in ["failed", "delayed", "relayed", "delivered"] {
        DSNS.with_label_values(&[a]);
    }
    for w in ["rcpt", "inject"] {
        SUPPRESSED.with_label_values(&[w]);
    }
    for a in ["ed25519-sha256", "rsa-sha256"] {
        DKIM_SIGN_SECONDS.with_label_values(&[a]);
    }
    for m in ["spf", "dkim", "arc", "dmarc"] {
        for r in ["pass", "fail", "none", "temperror", "permerror"] {
            AUTH_RESULTS.with_label_values(&[m, r]);
        }
    }
}

/// The text exposition format for `/metrics`.
pub fn render() -> String {
    let mut out = Vec::with_capacity(8192);
    // Encoding into a Vec cannot fail for well-formed metrics.
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn all_metrics_register_and_render() {
        super::init();
        let text = super::render();
        assert!(text.contains("# HELP sluice_spool_fsyncs_total"));
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!(
                "sluice_build_info{{git=\"{}\",version=\"{version}\"}} 1",
                env!("SLUICE_GIT")
            )),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }

    /// The rejection counter's help names every reason it is counted under.
    #[test]
    fn rejection_help_lists_every_reason() {
        let help = super::catalogue()
            .into_iter()
            .find(|m| m.name == "sluice_smtp_rejections_total")
            .expect("declared")
            .help;
        for r in crate::proto::smtp::session::RejectReason::ALL {
            assert!(
                help.contains(&format!("`{}`", r.label())),
                "{} missing from {help}",
                r.label()
            );
        }
    }

    /// README's metrics table is the catalogue, verbatim: a metric added, renamed or re-helped
    /// without regenerating it (`sluice metrics`) fails here.
    #[test]
    fn readme_lists_the_catalogue() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let begin = "<!-- generated by `sluice metrics`; a test fails when they differ -->\n";
        let start =
            readme.find(begin).expect("README has the generated metrics table") + begin.len();
        let end = start + readme[start..].find("<!-- end of generated metrics -->").unwrap();
        let want = super::catalogue_markdown();
        assert!(
            readme[start..end] == want,
            "README's metrics table differs from the catalogue; replace it with `sluice metrics`:\n{want}"
        );
        let names: std::collections::HashSet<_> =
            super::catalogue().into_iter().map(|m| m.name).collect();
        assert_eq!(names.len(), super::catalogue().len(), "a metric name twice");
        assert!(super::catalogue().iter().all(|m| !m.help.is_empty() && !m.help.contains('|')));
    }
}
