//! What one delivery attempt's outcome does to the queue, recorded durably and in this order:
//! 1. decide each recipient's fate (delivered, deferred on the retry schedule, failed, expired);
//! 2. queue the bounce (RFC 3464) for the failed ones, durably;
//! 3. record every recipient's new state;
//! 4. remove the message once no recipient is queued.
//!
//! DESIGN.md invariant 2: an acknowledged recipient leaves the spool only after a 2xx or a
//! durably queued bounce.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Notify;

use super::schedule::RetrySchedule;
use crate::bounce::suppression::{NewEntry, Reason, Suppressions};
use crate::bounce::suppression::{SuppressionConfig, SuppressionScope};
use crate::bounce::{
    Action, Category, Classifier, Notice, build_dsn, wants_delay_notice, wants_failure_notice,
    wants_success_notice,
};
use crate::delivery_error::{DeliveryError, Disposition, classify_reply, reply_status};
use crate::delivery_log::{DeliveryLog, LogEntry};
use crate::domain_labels::DomainLabels;
use crate::metrics;
use crate::proto::smtp::Reply;
use crate::spool::{
    BodyType, Envelope, NewMessage, Recipient, RecipientState, RecipientUpdate, Spool, SpoolError,
    unix_millis,
};

pub struct Recorder {
    pub spool: Arc<dyn Spool>,
    pub schedule: RetrySchedule,
    /// Our name, for bounces.
    pub helo: String,
    /// Woken when a bounce is queued.
    pub wake: Arc<Notify>,
    pub log: DeliveryLog,
    /// Send a delay notice after this long in the queue (None: never).
    pub delay_notice: Option<std::time::Duration>,
    /// Bounce categories for failures and deferrals.
    pub classifier: Arc<Classifier>,
    /// Hard bounces feed the suppression list.
    pub suppress: Option<SuppressFeed>,
    /// Mail sent with VERP return paths gets no DSN: its failures are recorded here (log,
    /// suppression), and a DSN would only come back to us.
    pub verp: Option<Arc<crate::bounce::verp::Verp>>,
    /// Bounded per-domain metric labels.
    pub labels: Arc<DomainLabels>,
    /// Bounded per-tenant metric labels.
    pub tenant_labels: Arc<DomainLabels>,
    /// Final outcomes feed the reputation circuit breakers.
    pub circuits: Option<Arc<crate::shaping::breaker::Circuits>>,
}

/// Where and how an attempt went, for the delivery log.
pub struct Attempt<'a> {
    /// The next hop advertised DSN, so NOTIFY went on with the message and success reports are
    /// its job.
    pub next_hop_dsn: bool,
    /// Delivered into local mailboxes: success reports say `delivered`, not `relayed`.
    pub local: bool,
    /// The server that answered (`ip:port`), empty if none did.
    pub answered_by: &'a str,
    /// The smart host, or `local`; None for MX delivery (the delivery log names each
    /// recipient's domain).
    pub destination: Option<&'a str>,
    /// The site of an MX destination: a named one (`google`) or its MX host set.
    pub site: Option<&'a str>,
    /// The named site (`[[site]]` or the provider table), for metrics.
    pub named_site: Option<&'a str>,
    /// The `[[source]]` the attempt was made from, if any.
    pub source: Option<&'a str>,
    pub elapsed: std::time::Duration,
}

impl Recorder {
    /// Holds recipients of `env` until `until` (Unix ms) without counting an attempt (a warming
    /// source's day is full): each stays queued with `reason` as its last reply, and a
    /// `deferred` event says why. Conditional on the attempts seen, like every change made
    /// outside an attempt.
    pub async fn postpone(&self, env: &Envelope, rcpts: &[u32], until: u64, reason: &str) {
        for &i in rcpts {
            let r = &env.recipients[i as usize];
            let update = RecipientUpdate {
                id: env.id,
                index: i,
                state: RecipientState::Queued,
                attempts: r.attempts,
                next_attempt: until,
                last_reply: Some(reason.to_string()),
                delay_notified: r.delay_notified,
                expect_attempts: Some(r.attempts),
            };
            match self.spool.update(update).await {
                Ok(()) | Err(crate::spool::SpoolError::Conflict) => {}
                Err(e) => {
                    tracing::warn!(id = %env.id, error = %e, "could not postpone a recipient");
                    continue;
                }
            }
            if self.log.enabled() {
                let mut e = LogEntry::new("deferred", env.id);
                e.recipient = Some(r.address.to_string());
                e.reply = Some(reason.to_string());
                e.next_attempt = Some(until);
                e.tenant = env.tenant().map(str::to_string);
                e.campaign = env.campaign().map(str::to_string);
                self.log.log(e);
            }
        }
    }

    /// Records the outcome of one attempt for recipients `rcpts` of `env`; `content` is the
    /// stored message (for bounces).
    pub async fn record(
        &self,
        env: &Envelope,
        rcpts: &[u32],
        outcome: &Result<Vec<Reply>, DeliveryError>,
        attempt: &Attempt<'_>,
        content: Option<&Bytes>,
    ) {
        let now = unix_millis();
        let mut fates = self.decide(env, rcpts, outcome, now);
        // Bounce: the DSN is durable before any recipient is recorded as failed (DESIGN.md 2).
        let notified = self.notify(env, &mut fates, outcome, attempt, content, now).await;
        for f in &fates {
            self.report(env, f, attempt, now);
        }
        if !self.store(env, &fates, &notified).await {
            return;
        }
        self.count_final(env, &fates);
        self.suppress(env, &fates).await;
        // The message leaves the spool once every recipient is delivered or bounced.
        if let Some(current) = self.spool.get(env.id)
            && current.recipients.iter().all(|r| r.state != RecipientState::Queued)
            && let Err(e) = self.spool.remove(env.id).await
        {
            tracing::error!(id = %env.id, error = %e, "could not remove a finished message");
        }
    }

    /// Every recipient's fate: delivered, failed, expired, or deferred until when.
    fn decide(
        &self,
        env: &Envelope,
        rcpts: &[u32],
        outcome: &Result<Vec<Reply>, DeliveryError>,
        now: u64,
    ) -> Vec<Fate> {
        let mut fates: Vec<Fate> = Vec::with_capacity(rcpts.len());
        for (k, &i) in rcpts.iter().enumerate() {
            let rcpt = &env.recipients[i as usize];
            let (disposition, reply, status, category) = match &outcome {
                Ok(replies) => {
                    let r = replies
                        .get(k)
                        .cloned()
                        .unwrap_or_else(|| Reply::new(451, "4.3.0", "no reply"));
                    let d = classify_reply(&r);
                    let status = reply_status(&r);
                    (d, r.to_line(), status, self.classifier.classify_reply(&r))
                }
                Err(e) => (e.classify(), e.to_string(), e.status(), self.classifier.classify(e)),
            };
            let attempts = rcpt.attempts + 1;
            let fate = match disposition {
                Disposition::Delivered => Fate::delivered(i, attempts, reply),
                Disposition::Permanent => {
                    Fate::failed(i, attempts, reply, status, "failed", category)
                }
                Disposition::Temporary if self.schedule.is_expired(env.received_at, now) => {
                    let diag = format!("delivery time expired; last error: {reply}");
                    Fate::failed(
                        i,
                        attempts,
                        diag,
                        "4.4.7".into(),
                        "expired",
                        Category::MessageExpired,
                    )
                }
                Disposition::Temporary => {
                    let at = self.schedule.next_attempt(attempts, env.id.0 ^ u64::from(i), now);
                    Fate::deferred(i, attempts, reply, status, at, category)
                }
            };
            fates.push(fate);
        }
        fates
    }

    /// Queues the DSNs these fates call for (failure, delay, relayed) before any fate is
    /// recorded. A failure notice that cannot be queued turns its recipients back into
    /// deferrals. Returns the recipients whose delay notice went out.
    async fn notify(
        &self,
        env: &Envelope,
        fates: &mut [Fate],
        outcome: &Result<Vec<Reply>, DeliveryError>,
        attempt: &Attempt<'_>,
        content: Option<&Bytes>,
        now: u64,
    ) -> Vec<u32> {
        if self.verp.as_ref().is_some_and(|v| v.is_ours(&env.sender)) {
            return Vec::new();
        }
        let answered_by = attempt.answered_by;
        let remote = (!answered_by.is_empty() && outcome.is_ok()).then(|| answered_by.to_string());
        let notice = |f: &Fate, action: Action| Notice {
            recipient: &env.recipients[f.index as usize],
            action,
            status: f.status.clone(),
            diagnostic: f.reply.clone(),
            remote_mta: remote.clone(),
            will_retry_until: None,
            category: f.category,
        };
        let notices: Vec<Notice<'_>> = fates
            .iter()
            .filter(|f| f.state == RecipientState::Failed)
            .filter(|f| wants_failure_notice(env, &env.recipients[f.index as usize]))
            .map(|f| notice(f, Action::Failed))
            .collect();
        let delayed = self.due_delay_notices(env, fates, now);
        let until = (env.received_at + self.schedule.max_age().as_millis() as u64) / 1000;
        let delays: Vec<Notice<'_>> = delayed
            .iter()
            .map(|f| Notice {
                will_retry_until: Some(until),
                status: f.status.clone(),
                ..notice(f, Action::Delayed)
            })
            .collect();
        let delayed: Vec<u32> = delayed.iter().map(|f| f.index).collect();
        // Success notice: only when the next hop cannot carry NOTIFY=SUCCESS on (RFC 3461 4.1).
        let relayed: Vec<Notice<'_>> = fates
            .iter()
            .filter(|f| f.state == RecipientState::Delivered && !attempt.next_hop_dsn)
            .filter(|f| wants_success_notice(env, &env.recipients[f.index as usize]))
            .map(|f| notice(f, if attempt.local { Action::Delivered } else { Action::Relayed }))
            .collect();
        // A DSN returns the original (its headers, or all of it for RET=FULL, RFC 3461 4.3): an
        // attempt that failed before the content was read (DNS, connect) reads it now.
        let loaded;
        let content = match content {
            Some(c) => Some(c),
            None if !(notices.is_empty() && delays.is_empty() && relayed.is_empty()) => {
                loaded = self.read_original(env.id).await;
                loaded.as_ref()
            }
            None => None,
        };
        let original = content.map(|b| b.as_ref()).unwrap_or(b"");
        let mut delay_sent = false;
        for (report, what) in [(&delays, "delay"), (&relayed, "success")] {
            if !report.is_empty() {
                match self.queue_bounce(env, report, original, now).await {
                    Ok(()) => delay_sent |= what == "delay",
                    Err(e) => {
                        tracing::warn!(id = %env.id, error = %e, "could not queue a {what} notice")
                    }
                }
            }
        }
        if !notices.is_empty()
            && let Err(e) = self.queue_bounce(env, &notices, original, now).await
        {
            tracing::error!(id = %env.id, error = %e, "could not queue a bounce; failed recipients stay queued");
            self.keep_failed_queued(env, fates, now);
        }
        if delay_sent { delayed } else { Vec::new() }
    }

    /// Failed recipients whose bounce could not be queued stay in the queue, as deferrals:
    /// a failure nobody hears about would be silent loss.
    fn keep_failed_queued(&self, env: &Envelope, fates: &mut [Fate], now: u64) {
        for f in fates.iter_mut().filter(|f| f.state == RecipientState::Failed) {
            f.state = RecipientState::Queued;
            f.label = "deferred";
            f.next_attempt = self.schedule.next_attempt(f.attempts, env.id.0, now);
        }
    }

    /// Delay notice: once per recipient (recorded durably with its state), on the first
    /// deferral at or after `delay_notice`.
    fn due_delay_notices<'f>(&self, env: &Envelope, fates: &'f [Fate], now: u64) -> Vec<&'f Fate> {
        let Some(after) = self.delay_notice else { return Vec::new() };
        let threshold = env.received_at + after.as_millis() as u64;
        fates
            .iter()
            .filter(|f| f.state == RecipientState::Queued && now >= threshold)
            .filter(|f| !env.recipients[f.index as usize].delay_notified)
            .filter(|f| wants_delay_notice(env, &env.recipients[f.index as usize]))
            .collect()
    }

    /// Metrics, the delivery log and the log line for one fate.
    /// Final outcomes (delivered, failed, expired) count towards the message's tenant's and
    /// campaign's circuit breakers.
    fn count_final(&self, env: &Envelope, fates: &[Fate]) {
        let Some(c) = &self.circuits else { return };
        if env.tenant().is_none() && env.campaign().is_none() {
            return;
        }
        for f in fates {
            use crate::shaping::breaker::Outcome;
            let outcome = match (f.state, f.category) {
                (RecipientState::Delivered, _) => Outcome::Delivered,
                (RecipientState::Failed, Some(c)) => Outcome::of_failure(c),
                (RecipientState::Failed, None) => Outcome::OtherFailure,
                _ => continue,
            };
            c.record(env.tenant(), env.campaign(), outcome);
        }
    }

    fn report(&self, env: &Envelope, f: &Fate, attempt: &Attempt<'_>, now: u64) {
        let answered_by = attempt.answered_by;
        metrics::DELIVERIES.with_label_values(&[f.label]).inc();
        match (f.state, f.category) {
            (RecipientState::Failed, Some(c)) => {
                metrics::BOUNCES.with_label_values(&[c.as_str()]).inc()
            }
            (RecipientState::Queued, Some(c)) => {
                metrics::DEFERRALS.with_label_values(&[c.as_str()]).inc()
            }
            _ => {}
        }
        if f.state != RecipientState::Queued {
            let queued = now.saturating_sub(env.received_at) as f64 / 1000.0;
            metrics::TIME_TO_OUTCOME.with_label_values(&[f.label]).observe(queued);
        }
        let rcpt_domain = env.recipients[f.index as usize].address.rsplit_once('@');
        let domain = self.labels.label(rcpt_domain.map_or("", |(_, d)| d));
        metrics::DOMAIN_DELIVERIES.with_label_values(&[&domain, f.label]).inc();
        if let Some(s) = attempt.source {
            metrics::SOURCE_DELIVERIES.with_label_values(&[s, f.label]).inc();
        }
        if attempt.destination.is_none() {
            let site = attempt.named_site.unwrap_or(crate::domain_labels::OTHER);
            metrics::SITE_DELIVERIES.with_label_values(&[site, f.label]).inc();
        }
        if let Some(t) = env.tenant() {
            let tenant = self.tenant_labels.label(t);
            metrics::TENANT_DELIVERIES.with_label_values(&[&tenant, f.label]).inc();
        }
        if self.log.enabled() {
            let mut e = LogEntry::new(f.label, env.id);
            e.recipient = Some(env.recipients[f.index as usize].address.to_string());
            e.destination = Some(attempt.destination.map_or_else(
                || crate::domain::normalize(rcpt_domain.map_or("", |(_, d)| d)),
                str::to_string,
            ));
            e.site = attempt.site.map(str::to_string);
            e.source = attempt.source.map(str::to_string);
            e.remote = (!answered_by.is_empty()).then(|| answered_by.to_string());
            e.reply = Some(f.reply.clone());
            e.attempt = Some(f.attempts);
            e.size = Some(env.size);
            e.queued_ms = Some(now.saturating_sub(env.received_at));
            e.attempt_ms = Some(attempt.elapsed.as_millis() as u64);
            e.next_attempt = (f.state == RecipientState::Queued).then_some(f.next_attempt);
            e.category = f.category.map(Category::as_str);
            e.tenant = env.tenant().map(str::to_string);
            e.campaign = env.campaign().map(str::to_string);
            self.log.log(e);
        }
        tracing::info!(
            id = %env.id, rcpt = %env.recipients[f.index as usize].address, next_hop = answered_by,
            attempt = f.attempts, outcome = f.label, reply = %f.reply, "delivery"
        );
    }

    /// Adds the recipients of hard bounces in the configured categories to the suppression
    /// list (one durable transaction for the attempt). A failure is logged: the bounce itself is
    /// already recorded.
    async fn suppress(&self, env: &Envelope, fates: &[Fate]) {
        let Some(feed) = &self.suppress else { return };
        let tenant = env.tenant();
        let entries: Vec<NewEntry> = fates
            .iter()
            .filter(|f| f.label == "failed")
            .filter_map(|f| Some((f, f.category?)))
            .filter(|(_, c)| feed.config.suppresses(tenant, *c))
            .map(|(f, c)| NewEntry {
                address: env.recipients[f.index as usize].address.to_string(),
                tenant: match feed.config.scope {
                    SuppressionScope::Tenant => tenant.map(str::to_string),
                    SuppressionScope::Global => None,
                },
                reason: Reason::Bounce(c),
                detail: Some(f.reply.chars().take(300).collect()),
            })
            .collect();
        if entries.is_empty() {
            return;
        }
        let list = feed.list.clone();
        let added = entries.clone();
        match tokio::task::spawn_blocking(move || list.add(&added)).await {
            Ok(Ok(_)) => {
                for e in &entries {
                    let mut ev = LogEntry::new("suppressed", env.id);
                    ev.recipient = Some(e.address.clone());
                    ev.category = Some(e.reason.as_str());
                    ev.tenant = e.tenant.clone();
                    self.log.log(ev);
                }
            }
            Ok(Err(e)) => {
                tracing::error!(id = %env.id, error = %e, "could not add hard bounces to the suppression list")
            }
            Err(e) => tracing::error!(id = %env.id, error = %e, "suppression task failed"),
        }
    }

    /// Records every fate. All updates are submitted before any is awaited, so they share one
    /// group commit (one fsync for a 100-recipient message, not 100 round trips). False if any
    /// could not be recorded (that recipient will be tried again: a duplicate at worst).
    async fn store(&self, env: &Envelope, fates: &[Fate], notified: &[u32]) -> bool {
        let mut tickets = Vec::with_capacity(fates.len());
        for f in fates {
            let update = RecipientUpdate {
                id: env.id,
                index: f.index,
                state: f.state,
                attempts: f.attempts,
                next_attempt: f.next_attempt,
                last_reply: Some(f.reply.chars().take(512).collect()),
                delay_notified: env.recipients[f.index as usize].delay_notified
                    || notified.contains(&f.index),
                // Only over the state this attempt started from (an operator may have acted).
                expect_attempts: Some(env.recipients[f.index as usize].attempts),
            };
            tickets.push(self.spool.update(update));
        }
        let mut recorded = true;
        for t in tickets {
            match t.await {
                Ok(()) => {}
                Err(SpoolError::Conflict) => {
                    tracing::info!(id = %env.id, "delivery outcome superseded by an operator action")
                }
                Err(e) => {
                    tracing::error!(id = %env.id, error = %e, "could not record a delivery outcome");
                    recorded = false;
                }
            }
        }
        recorded
    }

    /// The stored message, for a DSN (None, logged, if it cannot be read).
    async fn read_original(&self, id: crate::spool::QueueId) -> Option<Bytes> {
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || spool.read_message(id)).await {
            Ok(Ok(b)) => Some(b),
            Ok(Err(e)) => {
                tracing::warn!(%id, error = %e, "the original could not be read for its DSN");
                None
            }
            Err(_) => None,
        }
    }

    /// Queues one DSN from `<>` to the sender, durably.
    pub async fn queue_bounce(
        &self,
        env: &Envelope,
        notices: &[Notice<'_>],
        original: &[u8],
        now_ms: u64,
    ) -> Result<(), SpoolError> {
        let body = build_dsn(&self.helo, env, notices, original, now_ms / 1000);
        let action = notices.first().map_or(Action::Failed, |n| n.action);
        let id = self.spool.next_id();
        let envelope = Envelope {
            id,
            received_at: now_ms,
            sender: Default::default(),
            recipients: vec![Recipient::queued(env.sender.clone(), None, None)],
            message_id: Some(format!("<{}.dsn@{}>", env.id, self.helo).into()),
            size: body.len() as u64,
            helo: self.helo.as_str().into(),
            client_ip: IpAddr::from([127, 0, 0, 1]),
            body_type: Some(BodyType::EightBitMime),
            smtputf8: env.smtputf8,
            ret: None,
            envid: None,
            tags: None,
        };
        self.spool
            .store(NewMessage { envelope, trace: Bytes::new(), body: Bytes::from(body) })
            .await?;
        let event = match action {
            Action::Failed => "bounce_queued",
            Action::Delayed => "delay_notice_queued",
            Action::Relayed | Action::Delivered => "success_notice_queued",
        };
        metrics::DSNS.with_label_values(&[action.as_str()]).inc();
        let mut e = LogEntry::new(event, env.id);
        e.recipient = Some(env.sender.to_string());
        e.reply = Some(format!("DSN {id} for {} recipient(s)", notices.len()));
        self.log.log(e);
        tracing::info!(id = %env.id, dsn = %id, to = %env.sender, recipients = notices.len(), event, "DSN queued");
        self.wake.notify_one();
        Ok(())
    }
}

/// The suppression list and what feeds it.
pub struct SuppressFeed {
    pub list: Arc<Suppressions>,
    pub config: SuppressionConfig,
}

/// What happens to one recipient after an attempt.
struct Fate {
    index: u32,
    state: RecipientState,
    attempts: u32,
    next_attempt: u64,
    reply: String,
    /// RFC 3463 status for a bounce.
    status: String,
    label: &'static str,
    /// Why it failed or was deferred (None when delivered).
    category: Option<Category>,
}

impl Fate {
    fn delivered(index: u32, attempts: u32, reply: String) -> Self {
        let status = "2.0.0".into();
        Fate {
            index,
            state: RecipientState::Delivered,
            attempts,
            next_attempt: 0,
            reply,
            status,
            label: "delivered",
            category: None,
        }
    }

    fn failed(
        index: u32,
        attempts: u32,
        reply: String,
        status: String,
        label: &'static str,
        category: Category,
    ) -> Self {
        Fate {
            index,
            state: RecipientState::Failed,
            attempts,
            next_attempt: 0,
            reply,
            status,
            label,
            category: Some(category),
        }
    }

    fn deferred(
        index: u32,
        attempts: u32,
        reply: String,
        status: String,
        next_attempt: u64,
        category: Category,
    ) -> Self {
        Fate {
            index,
            state: RecipientState::Queued,
            attempts,
            next_attempt,
            reply,
            status,
            label: "deferred",
            category: Some(category),
        }
    }
}
