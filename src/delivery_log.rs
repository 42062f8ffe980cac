//! The delivery log: one JSON object per line for every reception, delivery, deferral, bounce
//! and expiry, written by a background thread to `<data_dir>/log/delivery.jsonl` (rotated by
//! size: `delivery.jsonl.1` is the newest old file) and, if asked, to stdout.
//!
//! Logging never slows or blocks mail: events go through a bounded channel, and when the writer
//! falls behind, events are dropped and counted (`sluice_delivery_log_dropped_total`).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use serde::Serialize;

use crate::metrics;

/// One event of the delivery log (a line of JSON); fields that do not apply are left out.
/// Not to be confused with the SMTP session's `Event`s.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    /// Unix milliseconds.
    pub time: u64,
    /// reception, delivered, deferred, failed, expired, bounce_queued.
    pub event: &'static str,
    /// The queue id (left out of events about no message, such as `shaping_action`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// One recipient (delivery events) ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// ... or all of them (reception).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// The destination: a recipient domain (MX) or a smart host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// The site of an MX destination: a named one (`google`) or its MX host set, joined by `,`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The `[[source]]` an attempt was made from (delivery events with egress pools).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The server that answered (`ip:port`), or the client for a reception.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Time since the message was received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_ms: Option<u64>,
    /// Duration of this attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_ms: Option<u64>,
    /// Unix milliseconds of the next attempt (deferrals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<u64>,
    /// Bounce category of a failure, expiry or deferral (README, "Bounce categories"), or the
    /// reason of a suppression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<&'static str>,
    /// The message's tenant and campaign (bulk sending), when it has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// The listener a message came in on (`inject` for HTTP), in reception events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// `shaping_action` events: the `[[automation]]` rule, its action (suspend, reduce, set,
    /// bounce_tenant, recover, resume), the connection limit as a share of the configured
    /// one, the limits after it, and the end of a suspension or a tenant's bounce.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// `circuit_open` / `circuit_closed`: `tenant` or `campaign`, and why it opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl LogEntry {
    pub fn new(event: &'static str, id: impl ToString) -> Self {
        LogEntry {
            time: crate::spool::unix_millis(),
            event,
            id: id.to_string(),
            sender: None,
            recipient: None,
            recipients: Vec::new(),
            destination: None,
            site: None,
            source: None,
            remote: None,
            reply: None,
            rule: None,
            action: None,
            factor: None,
            connections: None,
            rate: None,
            until: None,
            scope: None,
            reason: None,
            attempt: None,
            size: None,
            queued_ms: None,
            attempt_ms: None,
            next_attempt: None,
            category: None,
            tenant: None,
            campaign: None,
            listener: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogOptions {
    /// None = no file.
    pub file: Option<PathBuf>,
    pub max_size: u64,
    /// Rotated files kept.
    pub keep: usize,
    pub stdout: bool,
}

/// The sending side; cheap to clone. A disabled log drops events at once.
#[derive(Clone)]
pub struct DeliveryLog {
    tx: Option<SyncSender<LogEntry>>,
}

const QUEUE: usize = 65_536;

impl DeliveryLog {
    pub fn disabled() -> Self {
        DeliveryLog { tx: None }
    }

    /// Starts the writer thread. Fails if the log directory cannot be made or the file opened.
    pub fn start(opts: LogOptions) -> std::io::Result<Self> {
        if opts.file.is_none() && !opts.stdout {
            return Ok(Self::disabled());
        }
        let file = match &opts.file {
            Some(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                Some(open(p)?)
            }
            None => None,
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("delivery-log".into())
            .spawn(move || write_loop(rx, file, opts))?;
        Ok(DeliveryLog { tx: Some(tx) })
    }

    /// Whether events are wanted (callers skip building them otherwise).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn log(&self, e: LogEntry) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(e) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                metrics::DELIVERY_LOG_DROPPED.inc();
            }
        }
    }
}

fn open(p: &Path) -> std::io::Result<(BufWriter<File>, u64)> {
    let f = OpenOptions::new().create(true).append(true).open(p)?;
    let len = f.metadata()?.len();
    Ok((BufWriter::with_capacity(64 * 1024, f), len))
}

fn write_loop(rx: Receiver<LogEntry>, mut file: Option<(BufWriter<File>, u64)>, opts: LogOptions) {
    let mut stdout = std::io::stdout();
    let mut line = Vec::with_capacity(512);
    loop {
        // Block for one event, then take whatever else is waiting, then flush once.
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(e) => e,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        for e in std::iter::once(first).chain(rx.try_iter()) {
            line.clear();
            if serde_json::to_writer(&mut line, &e).is_err() {
                continue;
            }
            line.push(b'\n');
            if opts.stdout {
                let _ = stdout.write_all(&line);
            }
            if let Some((w, len)) = &mut file {
                if let Err(err) = w.write_all(&line) {
                    tracing::warn!(error = %err, "delivery log write failed");
                }
                *len += line.len() as u64;
            }
        }
        if let Some((w, len)) = &mut file {
            let _ = w.flush();
            if *len >= opts.max_size
                && let Some(path) = &opts.file
            {
                match rotate(path, opts.keep) {
                    Ok(f) => file = Some(f),
                    Err(err) => tracing::warn!(error = %err, "delivery log rotation failed"),
                }
            }
        }
        if opts.stdout {
            let _ = stdout.flush();
        }
    }
    if let Some((mut w, _)) = file {
        let _ = w.flush();
    }
}

/// `delivery.jsonl` → `.1` → `.2` … up to `keep`; a fresh file is opened.
fn rotate(path: &Path, keep: usize) -> std::io::Result<(BufWriter<File>, u64)> {
    let name = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
    if keep == 0 {
        std::fs::remove_file(path)?;
    } else {
        let _ = std::fs::remove_file(name(keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(name(n), name(n + 1));
        }
        std::fs::rename(path, name(1))?;
    }
    open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_lines_and_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log/delivery.jsonl");
        let log = DeliveryLog::start(LogOptions {
            file: Some(path.clone()),
            max_size: 2_000,
            keep: 2,
            stdout: false,
        })
        .unwrap();
        for i in 0..100 {
            let mut e = LogEntry::new("delivered", format!("{i:016x}"));
            e.recipient = Some("b@example.org".into());
            e.reply = Some("250 2.0.0 ok".into());
            log.log(e);
            if i % 10 == 9 {
                std::thread::sleep(Duration::from_millis(20)); // let the writer see batches
            }
        }
        drop(log);
        std::thread::sleep(Duration::from_millis(200));
        let mut files: Vec<_> = std::fs::read_dir(dir.path().join("log"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files, ["delivery.jsonl", "delivery.jsonl.1", "delivery.jsonl.2"]);
        for f in &files {
            let text = std::fs::read_to_string(dir.path().join("log").join(f)).unwrap();
            assert!(text.len() < 4_000, "{f} rotated near max_size: {}", text.len());
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["event"], "delivered");
                assert!(v.get("sender").is_none(), "absent fields are left out");
            }
        }
    }
}
