//! HTTP injection (`POST /api/inject/v1`): one request, one message per recipient, all of them
//! durable before the answer, through the same spool, DKIM signing and trace header as SMTP.
//!
//! Steps: validate (errors name the field) → compile the templates once → drop invalid and
//! suppressed recipients (reported in `failed_recipients`) → render in windows on the blocking
//! pool (at most one task per core) → sign → store the window's messages together (they share
//! group commits) → answer with every queue id.

pub mod render;
pub mod request;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use compact_str::CompactString;

use crate::bounce::suppression::{Suppressions, refusal_text};
use crate::config::{InjectConfig, SuppressionConfig};
use crate::delivery_log::{DeliveryLog, LogEntry};
use crate::mailauth::SigningService;
use crate::proto::smtp::message::{TraceInfo, received_header};
use crate::spool::{BodyType, Envelope, NewMessage, QueueId, Recipient, Spool, SpoolError, Tags};
use render::{Plan, Target};
use request::{Content, InjectRequest, InjectResponse, RecipientSpec, Stored};

/// Why a request was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// 400: the field and what is wrong with it.
    #[error("{0}")]
    BadRequest(String),
    /// 400: a template that does not compile.
    #[error("template {0}")]
    Template(#[from] render::TemplateError),
    /// 503: nothing could be stored (full disk, shutting down); try again later.
    #[error("{0}")]
    Unavailable(String),
}

pub struct Injector {
    pub spool: Arc<dyn Spool>,
    pub dkim: Arc<SigningService>,
    pub suppressions: Option<Arc<Suppressions>>,
    pub suppression: SuppressionConfig,
    pub config: InjectConfig,
    pub hostname: String,
    pub log: DeliveryLog,
    /// Woken after messages are stored, so delivery starts at once.
    pub stored: Arc<tokio::sync::Notify>,
    /// One-click unsubscribe links (`[unsubscribe] enabled`).
    pub unsubscribe: Option<Arc<crate::bounce::unsubscribe::Links>>,
    /// VERP return paths (`[verp] enabled`, for the tenants it lists).
    pub verp: Option<Arc<crate::bounce::verp::Verp>>,
    pub verp_config: crate::config::VerpConfig,
    /// Render tasks running at once, all requests together (one per core): concurrent
    /// campaigns queue here instead of filling the blocking pool.
    pub render_slots: Arc<tokio::sync::Semaphore>,
    /// `[limits] max_message_size`: a recipient whose rendered message is larger is refused.
    pub max_message_size: usize,
    /// The memory budget SMTP bodies share (`[limits] memory_budget`): rendered messages
    /// waiting to be stored are charged to it as SMTP bodies are.
    pub budget: Arc<crate::smtp::MemoryBudget>,
}

/// Rendered messages held at once by one request before they are stored (a window is cut
/// short when its messages add up to this).
const WINDOW_BYTES: usize = 32 << 20;

/// A recipient that passed the checks, with its message's queue id.
struct Accepted {
    spec: RecipientSpec,
    id: QueueId,
}

impl Injector {
    pub async fn inject(
        &self,
        req: InjectRequest,
        client: IpAddr,
    ) -> Result<InjectResponse, InjectError> {
        let checked = self.check(req)?;
        let mut resp = InjectResponse::default();
        let accepted = self.screen(checked.recipients, checked.tags.tenant.as_deref(), &mut resp);
        let plan = Arc::new(Plan::compile(
            checked.content,
            checked.templated,
            &self.hostname,
            self.max_message_size,
        )?);
        let globals = Arc::new(checked.globals);
        let links = self.unsubscribe.clone().filter(|_| checked.list_unsubscribe);
        let tags = (checked.tags != Tags::default()).then(|| Box::new(checked.tags));
        let mut unavailable = None;
        // Windows are sized by bytes as well as by count: the first is small, the next hold
        // about WINDOW_BYTES of messages like the ones rendered so far (one request's
        // messages share a template), so 1,000 messages with a 1 MiB attachment each are not
        // all in memory at once.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut next = self.config.batch_size.clamp(1, cores * 4);
        let mut start = 0;
        let mut charge = crate::smtp::Charge::new(self.budget.clone());
        while start < accepted.len() {
            let window = &accepted[start..(start + next).min(accepted.len())];
            start += window.len();
            let mut rendered =
                render_window(&plan, &globals, window, &self.hostname, &self.render_slots).await;
            let bytes: usize = rendered.iter().map(|r| r.as_ref().map_or(0, Vec::len)).sum();
            let per_message = (bytes / window.len()).max(1);
            next = (WINDOW_BYTES / per_message).clamp(1, self.config.batch_size.max(1));
            if charge.set(bytes) && bytes > 0 {
                // The server's budget for bodies in flight is spent (by this request or by
                // SMTP sessions): this window is refused, to be sent again later.
                for a in window {
                    resp.errors.push(format!(
                        "{}: not stored: the server is short of memory (try again)",
                        a.spec.email
                    ));
                    resp.failed_recipients.push(a.spec.email.clone());
                }
                unavailable = Some("memory budget spent".to_string());
                charge.set(0);
                continue;
            }
            if let Some(links) = &links {
                let tenant = tags.as_ref().and_then(|t| t.tenant.as_deref());
                for (a, r) in window.iter().zip(rendered.iter_mut()) {
                    if let Ok(msg) = r {
                        add_unsubscribe(msg, links, tenant, &a.spec.email);
                    }
                }
            }
            let verp = self.verp.clone().filter(|_| {
                self.verp_config.applies_to(tags.as_ref().and_then(|t| t.tenant.as_deref()))
            });
            if let Some(v) = &verp
                && let Err(e) = remember(v, window, &tags).await
            {
                // Without the mapping a bounce could not be attributed: refuse, try later.
                unavailable = Some(e.to_string());
                for a in window {
                    resp.errors.push(format!("{}: not stored: {e} (try again)", a.spec.email));
                    resp.failed_recipients.push(a.spec.email.clone());
                }
                continue;
            }
            let outcome = self
                .store_window(
                    window,
                    rendered,
                    ReturnPath { sender: &checked.sender, verp: verp.as_deref() },
                    &tags,
                    client,
                    &mut resp,
                )
                .await;
            if let Err(e) = outcome {
                unavailable = Some(e);
            }
            charge.set(0);
        }
        resp.fail_count = resp.failed_recipients.len();
        resp.success_count = resp.messages.len();
        if resp.success_count > 0 {
            self.stored.notify_one();
        }
        match unavailable {
            Some(e) if resp.success_count == 0 => Err(InjectError::Unavailable(e)),
            _ => Ok(resp),
        }
    }

    /// The request's shape: sender, tags, counts, content. Errors name the field.
    fn check(&self, req: InjectRequest) -> Result<Checked, InjectError> {
        let bad = |m: String| InjectError::BadRequest(m);
        if req.deferred_generation == Some(true) {
            return Err(bad(
                "deferred_generation: not supported (sluice stores before it answers)".into(),
            ));
        }
        let templated = match req.template_dialect.as_deref() {
            None | Some("Jinja") => {
                !req.substitutions.is_empty()
                    || req.recipients.iter().any(|r| !r.substitutions.is_empty())
            }
            Some("Static") => false,
            Some(other) => {
                return Err(bad(format!("template_dialect: {other:?} (Jinja or Static)")));
            }
        };
        let sender =
            match crate::proto::smtp::address::parse_path(req.envelope_sender.trim(), false) {
                Ok(Some(m)) => CompactString::from(m.into_string()),
                Ok(None) => CompactString::default(),
                Err(e) => return Err(bad(format!("envelope_sender: {e}"))),
            };
        if req.recipients.is_empty() {
            return Err(bad("recipients: at least one is needed".into()));
        }
        if req.recipients.len() > self.config.max_recipients {
            return Err(bad(format!(
                "recipients: {} given, at most {} per request ([inject] max_recipients)",
                req.recipients.len(),
                self.config.max_recipients
            )));
        }
        let tenant = req.tenant.map(|t| check_tag("tenant", t)).transpose().map_err(bad)?;
        let campaign = req.campaign.map(|c| check_tag("campaign", c)).transpose().map_err(bad)?;
        let meta = match req.meta {
            None | Some(serde_json::Value::Null) => None,
            Some(m) => {
                let text = m.to_string();
                if text.len() > 4096 {
                    return Err(bad("meta: larger than 4096 bytes as JSON".into()));
                }
                Some(text)
            }
        };
        let content = Content::from_value(req.content).map_err(bad)?;
        if let Content::Builder(b) = &content {
            render::check_builder(b).map_err(bad)?;
        }
        Ok(Checked {
            sender,
            recipients: req.recipients,
            content,
            templated,
            globals: req.substitutions,
            tags: Tags { tenant, campaign, meta },
            list_unsubscribe: req.list_unsubscribe.unwrap_or(true),
        })
    }

    /// Keeps the recipients with a valid address that are not suppressed; reports the others.
    fn screen(
        &self,
        recipients: Vec<RecipientSpec>,
        tenant: Option<&str>,
        resp: &mut InjectResponse,
    ) -> Vec<Accepted> {
        let check_suppressed = self.suppression.checks(tenant);
        let mut ok = Vec::with_capacity(recipients.len());
        for (i, mut spec) in recipients.into_iter().enumerate() {
            let parsed = crate::proto::smtp::address::parse_path(spec.email.trim(), false);
            let address = match parsed {
                Ok(Some(m)) if !m.domain().is_empty() => m.into_string(),
                Ok(_) => {
                    resp.errors
                        .push(format!("recipients[{i}].email: {:?} has no domain", spec.email));
                    resp.failed_recipients.push(spec.email);
                    continue;
                }
                Err(e) => {
                    resp.errors.push(format!("recipients[{i}].email: {:?}: {e}", spec.email));
                    resp.failed_recipients.push(spec.email);
                    continue;
                }
            };
            if check_suppressed
                && let Some(list) = &self.suppressions
                && let Some(entry) = list.check(tenant, &address)
            {
                crate::metrics::SUPPRESSED.with_label_values(&["inject"]).inc();
                resp.errors.push(refusal_text(&address, &entry));
                resp.failed_recipients.push(spec.email);
                continue;
            }
            spec.email = address;
            ok.push(Accepted { spec, id: self.spool.next_id() });
        }
        ok
    }

    /// Signs and stores one window's rendered messages; every store is submitted before any
    /// is awaited, so they share group commits. `Err` if the spool refused them.
    async fn store_window(
        &self,
        window: &[Accepted],
        rendered: Vec<Result<Vec<u8>, render::TemplateError>>,
        from: ReturnPath<'_>,
        tags: &Option<Box<Tags>>,
        client: IpAddr,
        resp: &mut InjectResponse,
    ) -> Result<(), String> {
        let now = crate::spool::unix_millis();
        let origin = Origin { from, tags, client, now };
        let mut pending = Vec::with_capacity(window.len());
        for (a, body) in window.iter().zip(rendered) {
            let body = match body {
                // RFC 8601 5: no results under our name but ours, whatever the template says.
                Ok(b) => match crate::mailauth::headers::strip_forged_results(&b, &self.hostname) {
                    Some(stripped) => Bytes::from(stripped),
                    None => Bytes::from(b),
                },
                Err(e) => {
                    resp.errors.push(format!("{}: template {e}", a.spec.email));
                    resp.failed_recipients.push(a.spec.email.clone());
                    continue;
                }
            };
            pending.push((a, body));
        }
        let signatures = self.sign_all(&pending).await;
        let mut tickets = Vec::with_capacity(pending.len());
        for ((a, body), signed) in pending.into_iter().zip(signatures) {
            let signed = match signed {
                Some(Ok(s)) => s.headers,
                failed => {
                    let e = failed.map_or_else(
                        || "task failed".to_string(),
                        |r| r.err().map(|e| e.to_string()).unwrap_or_default(),
                    );
                    tracing::error!(error = %e, "injected message refused: DKIM signing failed");
                    resp.errors.push(format!("{}: DKIM signing failed (try again)", a.spec.email));
                    resp.failed_recipients.push(a.spec.email.clone());
                    continue;
                }
            };
            let msg = self.new_message(a, signed, body, &origin);
            let size = msg.envelope.size;
            let ticket = self.spool.store(msg);
            tickets.push((a, ticket, size));
        }
        let mut refused = None;
        for (a, ticket, size) in tickets {
            match ticket.await {
                Ok(()) => {
                    // Counted as SMTP counts what it answers 250 (listener "inject").
                    crate::metrics::MESSAGES_RECEIVED.with_label_values(&["inject"]).inc();
                    crate::metrics::BYTES_RECEIVED.inc_by(size);
                    self.log_reception(a, from.sender, tags, client);
                    resp.messages
                        .push(Stored { recipient: a.spec.email.clone(), id: a.id.to_string() });
                }
                Err(e) => {
                    resp.errors.push(format!("{}: not stored: {e} (try again)", a.spec.email));
                    resp.failed_recipients.push(a.spec.email.clone());
                    if matches!(e, SpoolError::NoSpace | SpoolError::Closed) || refused.is_none() {
                        refused = Some(e.to_string());
                    }
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// The spool record of one message: the signatures and our Received field in front of the
    /// rendered message, and its envelope.
    fn new_message(
        &self,
        a: &Accepted,
        signatures: String,
        body: Bytes,
        o: &Origin<'_>,
    ) -> NewMessage {
        let (from, tags, client, now) = (o.from, o.tags, o.client, o.now);
        let mut trace = signatures;
        trace.push_str(&received_header(&TraceInfo {
            helo: "api",
            client_ip: client,
            hostname: &self.hostname,
            protocol: "HTTP",
            queue_id: &a.id.to_string(),
            single_recipient: Some(&a.spec.email),
            unix_time: now / 1000,
        }));
        let envelope = Envelope {
            id: a.id,
            received_at: now,
            sender: from.verp.map_or_else(|| from.sender.clone(), |v| v.address(a.id).into()),
            recipients: vec![Recipient::queued(a.spec.email.as_str(), None, None)],
            message_id: crate::proto::smtp::message::message_id(&body).map(Into::into),
            size: (trace.len() + body.len()) as u64,
            helo: "api".into(),
            client_ip: client,
            body_type: body.iter().any(|b| *b >= 0x80).then_some(BodyType::EightBitMime),
            smtputf8: !from.sender.is_ascii() || !a.spec.email.is_ascii(),
            ret: None,
            envid: None,
            tags: tags.clone(),
        };
        NewMessage { envelope, trace: Bytes::from(trace), body }
    }

    /// DKIM signatures for every message, signed concurrently (the signing service bounds the
    /// pool work); None where a task failed.
    async fn sign_all(
        &self,
        pending: &[(&Accepted, Bytes)],
    ) -> Vec<Option<Result<crate::mailauth::sign::Signed, crate::mailauth::sign::SignError>>> {
        let mut set = tokio::task::JoinSet::new();
        for (i, (_, body)) in pending.iter().enumerate() {
            let (dkim, body) = (self.dkim.clone(), body.clone());
            set.spawn(async move { (i, dkim.sign(body).await) });
        }
        let mut out: Vec<Option<_>> = (0..pending.len()).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            if let Ok((i, signed)) = joined {
                out[i] = Some(signed);
            }
        }
        out
    }

    fn log_reception(&self, a: &Accepted, sender: &str, tags: &Option<Box<Tags>>, client: IpAddr) {
        if !self.log.enabled() {
            return;
        }
        let mut e = LogEntry::new("reception", a.id);
        e.sender = Some(sender.to_string());
        e.recipients = vec![a.spec.email.clone()];
        e.remote = Some(client.to_string());
        e.tenant = tags.as_ref().and_then(|t| t.tenant.as_deref().map(str::to_string));
        e.campaign = tags.as_ref().and_then(|t| t.campaign.as_deref().map(str::to_string));
        self.log.log(e);
    }
}

/// Where a window's messages come from and when.
struct Origin<'a> {
    from: ReturnPath<'a>,
    tags: &'a Option<Box<Tags>>,
    client: IpAddr,
    now: u64,
}

/// The request's envelope sender, or a VERP return path per message.
#[derive(Clone, Copy)]
struct ReturnPath<'a> {
    sender: &'a CompactString,
    verp: Option<&'a crate::bounce::verp::Verp>,
}

struct Checked {
    sender: CompactString,
    recipients: Vec<RecipientSpec>,
    content: Content,
    templated: bool,
    globals: serde_json::Map<String, serde_json::Value>,
    tags: Tags,
    list_unsubscribe: bool,
}

/// Records who each message of `window` is for, so its bounces can be attributed (one
/// durable transaction, before the messages exist).
async fn remember(
    verp: &Arc<crate::bounce::verp::Verp>,
    window: &[Accepted],
    tags: &Option<Box<Tags>>,
) -> Result<(), crate::bounce::suppression::SuppressionError> {
    let time = crate::spool::unix_millis() / 1000;
    let tag = |f: fn(&Tags) -> &Option<CompactString>| {
        tags.as_ref().and_then(|t| f(t).as_ref().map(|s| s.to_string()))
    };
    let sent: Vec<(QueueId, crate::bounce::verp::Sent)> = window
        .iter()
        .map(|a| {
            let s = crate::bounce::verp::Sent {
                recipient: a.spec.email.clone(),
                tenant: tag(|t| &t.tenant),
                campaign: tag(|t| &t.campaign),
                time,
            };
            (a.id, s)
        })
        .collect();
    let verp = verp.clone();
    tokio::task::spawn_blocking(move || verp.remember(&sent))
        .await
        .map_err(|e| crate::bounce::suppression::SuppressionError::Store(e.to_string()))?
}

/// Puts the one-click `List-Unsubscribe` fields in front of `msg` (before it is signed, so the
/// signature covers them), unless the injector wrote its own.
fn add_unsubscribe(
    msg: &mut Vec<u8>,
    links: &crate::bounce::unsubscribe::Links,
    tenant: Option<&str>,
    address: &str,
) {
    let header_end = memchr::memmem::find(msg, b"\r\n\r\n").map_or(msg.len(), |i| i + 2);
    if crate::proto::smtp::message::header_value(&msg[..header_end], "List-Unsubscribe").is_some() {
        return;
    }
    let fields = links.header_fields(tenant, address);
    msg.splice(0..0, fields.into_bytes());
}

/// Tenant and campaign names: 1-64 of `A-Z a-z 0-9 . _ -` (they become metric labels and
/// suppression scopes).
fn check_tag(field: &str, v: String) -> Result<CompactString, String> {
    let ok = (1..=64).contains(&v.len())
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(v.into()) } else { Err(format!("{field}: {v:?} (1-64 of A-Z a-z 0-9 . _ -)")) }
}

/// Renders one window on the blocking pool: one task per core, each a slice of the window.
async fn render_window(
    plan: &Arc<Plan>,
    globals: &Arc<serde_json::Map<String, serde_json::Value>>,
    window: &[Accepted],
    hostname: &str,
    slots: &Arc<tokio::sync::Semaphore>,
) -> Vec<Result<Vec<u8>, render::TemplateError>> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per_task = window.len().div_ceil(cores).max(1);
    let unix_time = crate::spool::unix_millis() / 1000;
    let mut tasks = Vec::new();
    for slice in window.chunks(per_task) {
        let plan = plan.clone();
        let globals = globals.clone();
        let jobs: Vec<(RecipientSpec, String)> = slice
            .iter()
            .map(|a| (a.spec.clone(), format!("{}.{}@{hostname}", a.id, random_suffix())))
            .collect();
        // Held by the task until it is done; the semaphore is never closed.
        let slot = slots.clone().acquire_owned().await.ok();
        tasks.push(tokio::task::spawn_blocking(move || {
            let _slot = slot;
            jobs.iter()
                .map(|(spec, message_id)| {
                    plan.render(&Target {
                        recipient: spec,
                        globals: &globals,
                        message_id: message_id.clone(),
                        unix_time,
                    })
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut out = Vec::with_capacity(window.len());
    for t in tasks {
        match t.await {
            Ok(v) => out.extend(v),
            Err(e) => {
                // A panic in a render task: its recipients fail, the request goes on.
                let n = out.len();
                let failed = render::TemplateError {
                    part: "content".into(),
                    line: None,
                    message: format!("render task failed: {e}"),
                };
                out.extend(std::iter::repeat_n(Err(failed), per_task.min(window.len() - n)));
            }
        }
    }
    out
}

/// 32 random bits for Message-IDs (the queue id already makes them unique on this host).
fn random_suffix() -> String {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    format!("{:08x}", u32::from_le_bytes(b))
}
