//! Every Prometheus metric sluice exports, declared in one place; the help text is the doc.
//!
//! Label sets are bounded: listener names come from config, reasons from fixed enums.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
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
        }
    };
}

metrics! {
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
        "Connections refused with 421 at accept time, by reason.",
        &["reason"],
    );
    /// Messages accepted (answered 250 after the spool made them durable), by listener.
    MESSAGES_RECEIVED: IntCounterVec = counter_vec(
        "sluice_messages_received_total",
        "Messages accepted (250 after they were durable), by listener and tenant; HTTP injection as listener \"inject\"; untagged mail has tenant \"\".",
        &["listener", "tenant"],
    );
    /// Commands or messages refused, by reason (syntax, sequence, size, bare_cr_lf, relay_denied, ...).
    MESSAGES_REJECTED: IntCounterVec = counter_vec(
        "sluice_smtp_rejections_total",
        "SMTP commands or messages refused, by reason.",
        &["reason"],
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
        "Damaged spool log regions skipped at start-up and copied to spool/quarantine/.",
    );
    /// Which commit path the spool runs (io_uring or portable): 1 for the one in use.
    SPOOL_WRITER: IntGaugeVec = register(
        IntGaugeVec::new(
            Opts::new("sluice_spool_writer", "The spool's commit path in use (value 1)."),
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
            "Message bytes sessions hold in memory now: bodies being read or waiting for their commit.",
        )
        .expect("valid metric"),
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
        "Local mailbox deliveries per recipient: stored, over_quota, no_such_user, loop, error.",
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
        "POP3 logins by result: ok, invalid, locked_out, busy.",
        &["result"],
    );
    /// Messages POP3 clients retrieved and deleted.
    POP3_MESSAGES: IntCounterVec = counter_vec(
        "sluice_pop3_messages_total",
        "Messages retrieved (RETR) and deleted (at QUIT) over POP3.",
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
        "Octets in the local mailboxes (INBOX and folders of every user), counted every minute.",
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
        "Local deliveries found already in the mailbox and not written again: a crash between the mailbox write and the spool's record of it, or an alias delivered to some of its users before a failure.",
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
        "Inbound TLS handshakes (STARTTLS or implicit) by listener and result: the protocol version, or failed.",
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
        "Outbound SMTP sessions by TLS outcome: yes (negotiated), no (plaintext), failed (handshake).",
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
        "Delivery outcomes per recipient by the [[source]] the attempt was made from (mail sent from a pool).",
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
    /// Outbound connections open now, by destination (same bounded labels as above).
    DESTINATION_CONNECTIONS: IntGaugeVec = register(
        IntGaugeVec::new(
            Opts::new(
                "sluice_destination_connections",
                "Outbound SMTP connections open now, by destination (busiest domains or smart hosts, the rest as \"other\").",
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
        "Delivery status notifications queued to senders, by action: failed (bounce), delayed, relayed.",
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
        "Verification results of inbound mail, by method (spf, dkim, arc, dmarc) and result.",
        &["method", "result"],
    );
    /// Messages in the queue now.
    SPOOL_MESSAGES: IntGauge = gauge("sluice_spool_messages", "Messages in the queue now.");
    /// Segment files on disk.
    SPOOL_SEGMENTS: IntGauge = gauge("sluice_spool_segments", "Segment log files on disk.");
    /// Bytes in segment files on disk.
    SPOOL_DISK_BYTES: IntGauge =
        gauge("sluice_spool_disk_bytes", "Bytes in segment log files on disk.");
    /// Outbound SMTP connections open now.
    DELIVERY_CONNECTIONS: IntGauge =
        gauge("sluice_delivery_connections", "Outbound SMTP connections open now.");
}
/// Creates every labelled series with its bounded label values, so dashboards show zeros rather
/// than nothing before the first event.
pub fn init_labels(listeners: &[String]) {
    init();
    for l in listeners {
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
    }
}
