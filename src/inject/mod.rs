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

use crate::intake::{Intake, Origin, Rcpt, Refusal, Submission};
use crate::spool::{BodyType, QueueId, Tags};
use crate::units::{default_true, size};
use render::{Plan, Target};
use request::{Content, InjectRequest, InjectResponse, RecipientSpec, Stored};
use serde::Deserialize;

/// Why a request was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// 400: the field and what is wrong with it.
    #[error("{0}")]
    BadRequest(String),
    /// 400: a template that does not compile.
    #[error("template {0}")]
    Template(#[from] render::TemplateError),
    /// 403: the token may not send for the tenant the request names.
    #[error("{0}")]
    Forbidden(String),
    /// 429: the tenant's sending quota is spent; `Retry-After` says when there is room.
    #[error("{0}")]
    Quota(#[from] crate::tenant::quota::Exceeded),
    /// 429: the tenant's or campaign's circuit breaker is open until an operator resumes it.
    #[error("{0}")]
    CircuitOpen(String),
    /// 503: nothing could be stored (full disk, shutting down); try again later.
    #[error("{0}")]
    Unavailable(String),
}

/// Who sends a request: the token's name, whether it is an admin token, and the tenants it is
/// bound to (empty: any).
#[derive(Debug, Clone, Default)]
pub struct Sender {
    pub name: String,
    pub admin: bool,
    pub tenants: Vec<String>,
}

impl Sender {
    /// The tenant a request goes under: the one it names, if the token may send for it; a
    /// token bound to one tenant sends for it by default.
    fn tenant(&self, named: Option<CompactString>) -> Result<Option<CompactString>, InjectError> {
        match (named, self.tenants.as_slice()) {
            (named, []) => Ok(named),
            (None, [only]) => Ok(Some(only.as_str().into())),
            (None, many) => Err(InjectError::BadRequest(format!(
                "tenant: required (token {:?} sends for {})",
                self.name,
                many.join(", ")
            ))),
            (Some(t), bound) if bound.iter().any(|b| *b == t) => Ok(Some(t)),
            (Some(t), bound) => Err(InjectError::Forbidden(format!(
                "tenant: token {:?} may not send for {t:?} (only {})",
                self.name,
                bound.join(", ")
            ))),
        }
    }
}

pub struct Injector {
    /// The one path to the spool (policy, suppression, VERP, signing, store, metrics).
    pub intake: Arc<Intake>,
    pub config: InjectConfig,
    pub hostname: String,
    /// One-click unsubscribe links (`[unsubscribe] enabled`).
    pub unsubscribe: Option<Arc<crate::bounce::unsubscribe::Links>>,
    /// Render tasks running at once, all requests together (one per core): concurrent
    /// campaigns queue here instead of filling the blocking pool.
    pub render_slots: Arc<tokio::sync::Semaphore>,
    /// `[limits] max_message_size`: rendering stops past it (the intake refuses the message).
    pub max_message_size: usize,
    /// Sources and pools: the request's `pool` must name one.
    pub egress: Arc<crate::egress::Egress>,
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
        who: &Sender,
    ) -> Result<InjectResponse, InjectError> {
        let mut checked = self.check(req)?;
        checked.tags.tenant = who.tenant(checked.tags.tenant.take())?;
        let mut resp = InjectResponse::default();
        let origin = Arc::new(Origin {
            listener: "inject".into(),
            client_ip: client,
            helo: "api".into(),
            protocol: "HTTP",
            // Users are SMTP accounts (their limits are in the users file); a token is not one.
            user: None,
            senders: Vec::new(),
            trusted: true,
            verify: false,
            tenant: checked.tags.tenant.clone(),
            campaign: checked.tags.campaign.clone(),
            meta: checked.tags.meta.clone(),
            pool: checked.tags.pool.clone(),
            priority: checked.tags.priority,
            // Raw content may name its tenant in X-Sluice-Tenant only for an admin token.
            may_declare_tenant: who.admin,
            // `screen` below checks every recipient, as the intake would.
            screened: true,
        });
        if let Some(why) = self
            .intake
            .circuits
            .as_ref()
            .and_then(|c| c.holding(origin.tenant.as_deref(), checked.tags.campaign.as_deref()))
        {
            return Err(InjectError::CircuitOpen(why));
        }
        let accepted = self.screen(checked.recipients, &origin, &mut resp);
        // A request is one batch of messages: it fits the tenant's quota as a whole or waits.
        if let Some(q) = &self.intake.quota {
            let n = accepted.len() as u64;
            q.check(None, origin.tenant.as_deref(), n, n)?;
        }
        let plan = Arc::new(Plan::compile(
            checked.content,
            checked.templated,
            &self.hostname,
            self.max_message_size,
        )?);
        let globals = Arc::new(checked.globals);
        let links = self.unsubscribe.clone().filter(|_| checked.list_unsubscribe);
        let mut unavailable = None;
        // Windows are sized by bytes as well as by count: the first is small, the next hold
        // about WINDOW_BYTES of messages like the ones rendered so far (one request's
        // messages share a template), so 1,000 messages with a 1 MiB attachment each are not
        // all in memory at once.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut next = self.config.batch_size.clamp(1, cores * 4);
        let mut start = 0;
        while start < accepted.len() {
            let window = &accepted[start..(start + next).min(accepted.len())];
            start += window.len();
            let mut rendered =
                render_window(&plan, &globals, window, &self.hostname, &self.render_slots).await;
            let bytes: usize = rendered.iter().map(|r| r.as_ref().map_or(0, Vec::len)).sum();
            let per_message = (bytes / window.len()).max(1);
            next = (WINDOW_BYTES / per_message).clamp(1, self.config.batch_size.max(1));
            if let Some(links) = &links {
                let tenant = origin.tenant.as_deref();
                for (a, r) in window.iter().zip(rendered.iter_mut()) {
                    if let Ok(msg) = r {
                        add_unsubscribe(msg, links, tenant, &a.spec.email);
                    }
                }
            }
            let mut subs = Vec::with_capacity(window.len());
            let mut for_whom = Vec::with_capacity(window.len());
            for (a, body) in window.iter().zip(rendered) {
                match body {
                    Ok(b) => {
                        subs.push(submission(&origin, &checked.sender, a, Bytes::from(b)));
                        for_whom.push(a);
                    }
                    Err(e) => {
                        resp.errors.push(format!("{}: template {e}", a.spec.email));
                        resp.failed_recipients.push(a.spec.email.clone());
                        recipients_counted("render_error");
                    }
                }
            }
            for (a, answer) in for_whom.into_iter().zip(self.intake.submit_all(subs).await) {
                match answer {
                    Ok(_) => {
                        recipients_counted("stored");
                        resp.messages
                            .push(Stored { recipient: a.spec.email.clone(), id: a.id.to_string() })
                    }
                    Err(r) => {
                        recipients_counted(match &r {
                            Refusal::Suppressed(_) => "suppressed",
                            _ => "refused",
                        });
                        resp.errors.push(match &r {
                            Refusal::Suppressed(why) => why.clone(),
                            other => format!("{}: not stored: {other}", a.spec.email),
                        });
                        resp.failed_recipients.push(a.spec.email.clone());
                        if r.is_temporary() {
                            unavailable = Some(r.to_string());
                        }
                    }
                }
            }
        }
        resp.fail_count = resp.failed_recipients.len();
        resp.success_count = resp.messages.len();
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
        let tenant =
            req.tenant.map(|t| crate::tenant::check_name("tenant", t)).transpose().map_err(bad)?;
        let campaign = req
            .campaign
            .map(|c| crate::tenant::check_name("campaign", c))
            .transpose()
            .map_err(bad)?;
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
        let pool =
            req.pool.map(|p| crate::tenant::check_name("pool", p)).transpose().map_err(bad)?;
        if let Some(p) = &pool
            && !self.egress.has_pool(p)
        {
            return Err(bad(format!("pool: no [[pool]] is named {p:?}")));
        }
        let priority = match req.priority.as_deref() {
            None => None,
            Some(p) => Some(crate::spool::Priority::parse(p).ok_or_else(|| {
                let shown: String = p.chars().take(32).collect();
                bad(format!("priority: {shown:?} (bulk or transactional)"))
            })?),
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
            tags: Tags { tenant, campaign, meta, pool, priority },
            list_unsubscribe: req.list_unsubscribe.unwrap_or(true),
        })
    }

    /// Keeps the recipients with a valid address that are not suppressed; reports the others.
    fn screen(
        &self,
        recipients: Vec<RecipientSpec>,
        origin: &Origin,
        resp: &mut InjectResponse,
    ) -> Vec<Accepted> {
        // Checked here as well as in the intake, so suppressed recipients are never rendered.
        let tenant = origin.tenant.as_deref();
        let check_suppressed = self.intake.checks_suppression(origin, tenant);
        let mut ok = Vec::with_capacity(recipients.len());
        for (i, mut spec) in recipients.into_iter().enumerate() {
            let parsed = crate::proto::smtp::address::parse_path(spec.email.trim(), false);
            let address = match parsed {
                Ok(Some(m)) if !m.domain().is_empty() => m.into_string(),
                Ok(_) => {
                    resp.errors
                        .push(format!("recipients[{i}].email: {:?} has no domain", spec.email));
                    resp.failed_recipients.push(spec.email);
                    recipients_counted("invalid");
                    continue;
                }
                Err(e) => {
                    resp.errors.push(format!("recipients[{i}].email: {:?}: {e}", spec.email));
                    resp.failed_recipients.push(spec.email);
                    recipients_counted("invalid");
                    continue;
                }
            };
            if check_suppressed && let Some(why) = self.intake.suppressed(tenant, &address) {
                crate::metrics::SUPPRESSED.with_label_values(&["inject"]).inc();
                resp.errors.push(why);
                resp.failed_recipients.push(spec.email);
                recipients_counted("suppressed");
                continue;
            }
            spec.email = address;
            ok.push(Accepted { spec, id: self.intake.spool.next_id() });
        }
        ok
    }
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

/// One recipient's rendered message as a submission (its queue id is in its Message-ID).
fn submission(
    origin: &Arc<Origin>,
    sender: &CompactString,
    a: &Accepted,
    body: Bytes,
) -> Submission {
    Submission {
        origin: origin.clone(),
        sender: sender.clone(),
        recipients: vec![Rcpt::new(a.spec.email.as_str())],
        body_type: body.iter().any(|b| *b >= 0x80).then_some(BodyType::EightBitMime),
        smtputf8: !sender.is_ascii() || !a.spec.email.is_ascii(),
        content: body,
        ret: None,
        envid: None,
        id: Some(a.id),
    }
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

/// HTTP injection (README, "HTTP injection").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Largest request body, after gzip decompression.
    #[serde(default = "default_inject_size", deserialize_with = "size")]
    pub max_request_size: u64,
    /// Recipients per request.
    #[serde(default = "default_inject_recipients")]
    pub max_recipients: usize,
    /// Messages rendered, signed and committed together (bounds the memory of one request).
    #[serde(default = "default_inject_batch")]
    pub batch_size: usize,
}

fn default_inject_size() -> u64 {
    64 << 20
}

fn default_inject_recipients() -> usize {
    100_000
}

fn default_inject_batch() -> usize {
    1000
}

crate::units::default_from_serde!(InjectConfig);

/// Counts one injected recipient in `sluice_inject_recipients_total` under `result`.
fn recipients_counted(result: &str) {
    crate::metrics::INJECT_RECIPIENTS.with_label_values(&[result]).inc();
}
