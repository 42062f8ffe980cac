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

/// SMTP connections accepted, by listener.
pub static SMTP_CONNECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_smtp_connections_total",
        "SMTP connections accepted, by listener.",
        &["listener"],
    )
});
/// SMTP connections open now, by listener.
pub static SMTP_CONNECTIONS_ACTIVE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new("sluice_smtp_connections_active", "SMTP connections open now, by listener."),
            &["listener"],
        )
        .expect("valid metric"),
    )
});
/// Connections refused at accept time (421), by reason: max_sessions, max_sessions_per_ip.
pub static SMTP_CONNECTIONS_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_smtp_connections_refused_total",
        "Connections refused with 421 at accept time, by reason.",
        &["reason"],
    )
});
/// Messages accepted (answered 250 after the spool made them durable), by listener.
pub static MESSAGES_RECEIVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_messages_received_total",
        "Messages accepted (250 after they were durable), by listener.",
        &["listener"],
    )
});
/// Commands or messages refused, by reason (syntax, sequence, size, bare_cr_lf, relay_denied, ...).
pub static MESSAGES_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_smtp_rejections_total",
        "SMTP commands or messages refused, by reason.",
        &["reason"],
    )
});
/// Message octets accepted (body as received, without added headers).
pub static BYTES_RECEIVED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("sluice_received_bytes_total", "Message octets accepted, as received.")
});
/// Time from handing a record to the spool until it is durable (group commit wait + write + fsync).
pub static SPOOL_COMMIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "sluice_spool_commit_seconds",
        "Time from handing a record to the spool until it is durable.",
        LATENCY_BUCKETS.to_vec(),
    )
});
/// Duration of one fdatasync of the segment log.
pub static SPOOL_FSYNC_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "sluice_spool_fsync_seconds",
        "Duration of one fdatasync of the segment log.",
        LATENCY_BUCKETS.to_vec(),
    )
});
/// fdatasync calls on the segment log; records_total / fsyncs_total = records per fsync.
pub static SPOOL_FSYNCS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sluice_spool_fsyncs_total",
        "fdatasync calls on the segment log (one per group commit).",
    )
});
/// Records made durable (messages, state changes, removals).
pub static SPOOL_RECORDS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("sluice_spool_records_total", "Records made durable in the segment log.")
});
/// Records per group commit.
pub static SPOOL_BATCH_RECORDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "sluice_spool_batch_records",
        "Records written per group commit (one fsync).",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
    )
});
/// Group commits that failed (write or fsync error); their messages were answered 4xx.
pub static SPOOL_COMMIT_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sluice_spool_commit_errors_total",
        "Group commits that failed; their messages got 4xx.",
    )
});
/// Damaged log records skipped (and copied to spool/quarantine/) by start-up recovery.
pub static SPOOL_DAMAGED_RECORDS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sluice_spool_damaged_records_total",
        "Damaged spool log regions skipped at start-up and copied to spool/quarantine/.",
    )
});
/// Which commit path the spool runs (io_uring or portable): 1 for the one in use.
pub static SPOOL_WRITER: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new("sluice_spool_writer", "The spool's commit path in use (value 1)."),
            &["writer"],
        )
        .expect("valid metric"),
    )
});
pub static SPOOL_MESSAGES: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("sluice_spool_messages", "Messages in the queue now."));
/// Segment files on disk.
pub static SPOOL_SEGMENTS: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("sluice_spool_segments", "Segment log files on disk."));
/// Bytes in segment files on disk.
pub static SPOOL_DISK_BYTES: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("sluice_spool_disk_bytes", "Bytes in segment log files on disk."));
/// Index checkpoints written (redb), and their duration.
pub static SPOOL_CHECKPOINT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "sluice_spool_checkpoint_seconds",
        "Duration of one index checkpoint.",
        LATENCY_BUCKETS.to_vec(),
    )
});

/// Messages refused because the memory budget for bodies in flight was spent.
pub static MEMORY_BUDGET_EXCEEDED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sluice_memory_budget_exceeded_total",
        "Messages refused (452 4.3.1) because the budget for bodies in flight was spent.",
    )
});

/// Message bytes held in memory by sessions now (reading, or waiting for their commit).
pub static MEMORY_BUDGET_USED: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "sluice_memory_budget_used_bytes",
            "Message bytes sessions hold in memory now: bodies being read or waiting for their commit.",
        )
        .expect("valid metric"),
    )
});

/// Delivery outcomes per recipient: delivered, deferred (temporary failure), failed, expired.
pub static DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_deliveries_total",
        "Delivery outcomes per recipient: delivered, deferred, failed, expired.",
        &["outcome"],
    )
});
/// Duration of one delivery attempt (connect to QUIT).
pub static DELIVERY_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "sluice_delivery_seconds",
        "Duration of one delivery attempt, connect to QUIT.",
        LATENCY_BUCKETS.to_vec(),
    )
});

/// Outbound SMTP connections open now.
pub static DELIVERY_CONNECTIONS: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("sluice_delivery_connections", "Outbound SMTP connections open now."));

/// Inbound TLS handshakes by listener and result (TLSv1_2, TLSv1_3, failed).
pub static SMTP_TLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_smtp_tls_total",
        "Inbound TLS handshakes (STARTTLS or implicit) by listener and result: the protocol version, or failed.",
        &["listener", "result"],
    )
});

/// AUTH attempts by result.
pub static SMTP_AUTH: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_smtp_auth_total",
        "SMTP AUTH attempts by result: ok, invalid (535), locked_out (454).",
        &["result"],
    )
});

/// Password checks run (argon2id): at most `max_failures_per_ip` per IP and window.
pub static AUTH_VERIFICATIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sluice_auth_verifications_total",
        "Password checks (argon2id) run for AUTH; attempts refused by the lockout run none.",
    )
});

/// Outbound sessions by TLS outcome: yes (STARTTLS negotiated), no (plaintext), failed
/// (handshake failed).
pub static DELIVERY_TLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_delivery_tls_total",
        "Outbound SMTP sessions by TLS outcome: yes (negotiated), no (plaintext), failed (handshake).",
        &["tls"],
    )
});

/// Delivery outcomes by recipient domain (busiest domains, the rest as "other").
pub static DOMAIN_DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_domain_deliveries_total",
        "Delivery outcomes per recipient by destination domain: the busiest domains (see [metrics] in README) each get a label, the rest count as \"other\".",
        &["domain", "outcome"],
    )
});

/// Outbound connections open now, by destination (same bounded labels as above).
pub static DESTINATION_CONNECTIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "sluice_destination_connections",
                "Outbound SMTP connections open now, by destination (busiest domains or smart hosts, the rest as \"other\").",
            ),
            &["destination"],
        )
        .expect("valid metric"),
    )
});

/// Recipients in the queue by state, measured when /metrics is read.
pub static QUEUE_RECIPIENTS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "sluice_queue_recipients",
                "Recipients of queued messages by state (queued = waiting for delivery or retry; delivered and failed ones wait for their siblings).",
            ),
            &["state"],
        )
        .expect("valid metric"),
    )
});

/// DNS lookups for delivery by type (mx, address) and result (ok, nxdomain, nodata, error).
pub static DNS_LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_dns_lookups_total",
        "DNS lookups for delivery by type (mx, address) and result (ok, nxdomain, nodata, error).",
        &["type", "result"],
    )
});

/// DNS lookup latency, cache hits included.
pub static DNS_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "sluice_dns_seconds",
        "DNS lookup latency for delivery (cache hits included).",
        LATENCY_BUCKETS.to_vec(),
    )
});

/// Delivery log events dropped because the writer fell behind.
pub static DELIVERY_LOG_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sluice_delivery_log_dropped_total",
        "Delivery log events dropped because the log writer fell behind (mail is unaffected).",
    )
});

/// Bounces (DSNs) queued to senders.
pub static BOUNCES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("sluice_bounces_total", "Delivery status notifications (bounces) queued to senders.")
});

/// Forces registration of every metric, so `/metrics` lists them all from the start.
/// DKIM signatures made at intake, by signing domain (from config: bounded) and algorithm.
pub static DKIM_SIGNATURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_dkim_signatures_total",
        "DKIM signatures made at intake, by signing domain and algorithm.",
        &["domain", "algorithm"],
    )
});
/// Time to make one DKIM signature (body hash and the private-key operation).
pub static DKIM_SIGN_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "sluice_dkim_sign_seconds",
        "Time to make one DKIM signature (body hash and key operation), by algorithm.",
        &["algorithm"],
        vec![0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25],
    )
});
/// Messages refused (451) because signing failed.
pub static DKIM_SIGN_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "sluice_dkim_sign_failures_total",
        "Messages refused with 451 because DKIM signing failed.",
    )
});

/// Verification results of inbound mail, by method (spf, dkim, arc, dmarc) and result.
pub static AUTH_RESULTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "sluice_auth_results_total",
        "Verification results of inbound mail, by method (spf, dkim, arc, dmarc) and result.",
        &["method", "result"],
    )
});

pub fn init() {
    LazyLock::force(&SMTP_CONNECTIONS);
    LazyLock::force(&SMTP_CONNECTIONS_ACTIVE);
    LazyLock::force(&SMTP_CONNECTIONS_REFUSED);
    LazyLock::force(&MESSAGES_RECEIVED);
    LazyLock::force(&MESSAGES_REJECTED);
    LazyLock::force(&BYTES_RECEIVED);
    LazyLock::force(&SPOOL_COMMIT_SECONDS);
    LazyLock::force(&SPOOL_FSYNC_SECONDS);
    LazyLock::force(&SPOOL_FSYNCS);
    LazyLock::force(&SPOOL_RECORDS);
    LazyLock::force(&SPOOL_BATCH_RECORDS);
    LazyLock::force(&SPOOL_COMMIT_ERRORS);
    LazyLock::force(&SPOOL_DAMAGED_RECORDS);
    LazyLock::force(&AUTH_VERIFICATIONS);
    LazyLock::force(&SPOOL_MESSAGES);
    LazyLock::force(&SPOOL_SEGMENTS);
    LazyLock::force(&SPOOL_DISK_BYTES);
    LazyLock::force(&SPOOL_CHECKPOINT_SECONDS);
    LazyLock::force(&MEMORY_BUDGET_USED);
    LazyLock::force(&MEMORY_BUDGET_EXCEEDED);
    LazyLock::force(&DELIVERIES);
    LazyLock::force(&DELIVERY_SECONDS);
    LazyLock::force(&BOUNCES);
    LazyLock::force(&DELIVERY_CONNECTIONS);
    LazyLock::force(&DELIVERY_LOG_DROPPED);
    LazyLock::force(&DNS_SECONDS);
    LazyLock::force(&DKIM_SIGNATURES);
    LazyLock::force(&DKIM_SIGN_SECONDS);
    LazyLock::force(&DKIM_SIGN_FAILURES);
    LazyLock::force(&AUTH_RESULTS);
}

/// Creates every labelled series with its bounded label values, so dashboards show zeros rather
/// than nothing before the first event.
pub fn init_labels(listeners: &[String]) {
    init();
    for l in listeners {
        SMTP_CONNECTIONS.with_label_values(&[l]);
        SMTP_CONNECTIONS_ACTIVE.with_label_values(&[l]);
        MESSAGES_RECEIVED.with_label_values(&[l]);
        for r in ["TLSv1_2", "TLSv1_3", "failed"] {
            SMTP_TLS.with_label_values(&[l, r]);
        }
    }
    for r in crate::proto::smtp::session::RejectReason::ALL {
        MESSAGES_REJECTED.with_label_values(&[r.label()]);
    }
    for o in ["delivered", "deferred", "failed", "expired"] {
        DELIVERIES.with_label_values(&[o]);
    }
    for s in ["queued", "delivered", "failed"] {
        QUEUE_RECIPIENTS.with_label_values(&[s]);
    }
    for t in ["mx", "address"] {
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
