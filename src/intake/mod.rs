//! The one path to the spool. SMTP sessions and HTTP injection hand over [`Submission`]s and get
//! a queue id or a [`Refusal`] back; they only translate the answer into their protocol.
//!
//! In one place, in this order, for every message whatever way it came:
//! 1. size and hop count (`[limits] max_message_size`, `max_hops`);
//! 2. header clean-up: forged `Authentication-Results` under our name and the tenant headers
//!    (`X-Sluice-Tenant`, `X-Sluice-Campaign`) come out; the latter are honoured first when the
//!    origin may declare a tenant;
//! 3. mail for the bounce domain is consumed, not queued;
//! 4. SPF/DKIM/DMARC verdicts for inbound mail (listeners with verification);
//! 5. suppression per recipient (the tenant's entries and the global ones);
//! 6. the VERP return path (remembered in one transaction for a batch);
//! 7. DKIM signing (trusted origins), then our `Received:` field;
//! 8. the memory-budget charge, held until the commit answers;
//! 9. the durable store (a batch's records share group commits);
//! 10. `sluice_messages_received_total{listener,tenant}` and the reception event.

pub mod budget;
pub mod quota;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use compact_str::CompactString;

use crate::bounce::suppression::SuppressionConfig;
use crate::bounce::suppression::{Suppressions, refusal_text};
use crate::bounce::verp::VerpConfig;
use crate::bounce::verp::{BounceInbox, Sent, Verp};
use crate::delivery_log::{DeliveryLog, LogEntry};
use crate::domain_labels::DomainLabels;
use crate::mailauth::SigningService;
use crate::mailauth::sign::UnalignedFrom;
use crate::mailauth::verify::{Disposition, Envelope as VerifyEnvelope, Scope, Verifier};
use crate::metrics;
use crate::proto::smtp::message::{self, TraceInfo, received_header};
use crate::spool::{self, BodyType, Envelope, NewMessage, QueueId, Recipient, Spool, Tags};
use budget::{Charge, MemoryBudget};

/// The header naming a message's tenant, honoured from origins that may declare one.
pub const TENANT_HEADER: &str = "X-Sluice-Tenant";
/// The header naming a message's campaign, with the same rule.
pub const CAMPAIGN_HEADER: &str = "X-Sluice-Campaign";

/// Where a submission comes from and what its sender is allowed.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The listener's name (`smtp`, `submission`, ...) or `inject`: a metric label.
    pub listener: CompactString,
    pub client_ip: IpAddr,
    /// EHLO name, or `api` for HTTP.
    pub helo: CompactString,
    /// For `Received:` (RFC 3848: ESMTPSA ..., or HTTP).
    pub protocol: &'static str,
    /// The authenticated SMTP user (its quotas count the message).
    pub user: Option<String>,
    /// The addresses and `@domains` the user may send as; empty: any.
    pub senders: Vec<String>,
    /// Authenticated or from a relay network: mail sluice sends on the client's behalf, signed
    /// and checked against the suppression list.
    pub trusted: bool,
    /// Whether inbound verification (SPF/DKIM/DMARC) runs for this listener.
    pub verify: bool,
    /// The tenant the credentials are bound to, or the one an HTTP request named (checked).
    pub tenant: Option<CompactString>,
    pub campaign: Option<CompactString>,
    /// Free-form JSON from an HTTP request (at most 4 KiB).
    pub meta: Option<String>,
    /// The egress pool asked for (HTTP injection's `pool`, checked against `[[pool]]`).
    pub pool: Option<CompactString>,
    /// HTTP injection's `priority`.
    pub priority: Option<crate::spool::Priority>,
    /// `X-Sluice-Tenant`/`X-Sluice-Campaign` are believed (relay networks, admin tokens) when
    /// no tenant is set; otherwise they are only removed.
    pub may_declare_tenant: bool,
    /// The recipients were checked against the suppression list for `tenant` already (at
    /// RCPT, or by the injector before rendering): the intake need not look them up again
    /// unless a header changed the tenant.
    pub screened: bool,
}

/// One recipient of a submission.
#[derive(Debug, Clone)]
pub struct Rcpt {
    pub address: String,
    /// RFC 3461 ORCPT, as received.
    pub orcpt: Option<String>,
    pub notify: Option<spool::Notify>,
}

impl Rcpt {
    pub fn new(address: impl Into<String>) -> Rcpt {
        Rcpt { address: address.into(), orcpt: None, notify: None }
    }
}

/// A message to store: who sent it from where, its envelope and content.
#[derive(Debug)]
pub struct Submission {
    pub origin: Arc<Origin>,
    /// The reverse path ("" for the null sender).
    pub sender: CompactString,
    pub recipients: Vec<Rcpt>,
    /// The message as received, without our headers.
    pub content: Bytes,
    pub body_type: Option<BodyType>,
    pub smtputf8: bool,
    pub ret: Option<spool::Ret>,
    pub envid: Option<String>,
    /// A queue id taken before the content was made (HTTP names it in the Message-ID).
    pub id: Option<QueueId>,
}

/// A stored message.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: QueueId,
    /// Recipients dropped because they are suppressed (the rest were stored).
    pub suppressed: Vec<String>,
}

/// Why a message was not stored; each maps to one SMTP reply and one HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("larger than the server's limit ([limits] max_message_size)")]
    TooBig,
    #[error("too many Received: fields (a mail loop)")]
    Loop,
    #[error("the server is short of memory (try again)")]
    OverBudget,
    #[error("{0}")]
    Suppressed(String),
    #[error("DMARC policy reject")]
    DmarcReject,
    #[error("SPF fail")]
    SpfReject,
    #[error("From: domain not among the user's senders")]
    UnalignedFrom,
    #[error("DKIM signing failed (try again)")]
    Signing,
    #[error("out of storage space (try again)")]
    NoSpace,
    #[error("the server is shutting down (try again)")]
    ShuttingDown,
    #[error("storage failed (try again)")]
    Failed,
    /// The tenant's or campaign's circuit breaker is open (the reply text says why).
    #[error("{0}")]
    CircuitOpen(String),
}

impl Refusal {
    /// Our resources or our fault, not the message's: the same message may succeed later.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            Refusal::OverBudget
                | Refusal::Signing
                | Refusal::NoSpace
                | Refusal::ShuttingDown
                | Refusal::Failed
        )
    }
}

/// Everything the path needs, shared by every listener and the injector.
pub struct Intake {
    pub spool: Arc<dyn Spool>,
    /// Our name: `Received:` and the authserv-id of our results.
    pub hostname: String,
    pub max_message_size: usize,
    pub max_hops: usize,
    pub dkim: Arc<SigningService>,
    pub unaligned_from: UnalignedFrom,
    pub verifier: Option<Arc<Verifier>>,
    pub verify_scope: Scope,
    /// Domains we receive for (verification scope `local`).
    pub local_domains: HashSet<String>,
    /// Mail to the bounce domain is processed here, not queued.
    pub bounces: Option<Arc<BounceInbox>>,
    pub suppressions: Option<Arc<Suppressions>>,
    pub suppression: SuppressionConfig,
    pub verp: Option<Arc<Verp>>,
    pub verp_config: VerpConfig,
    pub budget: Arc<MemoryBudget>,
    pub log: DeliveryLog,
    /// Woken after messages are stored, so delivery starts at once.
    pub stored: Arc<tokio::sync::Notify>,
    /// Bounded tenant labels for the intake metrics.
    pub tenant_labels: Arc<DomainLabels>,
    /// Sending quotas of tenants and users (None: none configured).
    pub quota: Option<Arc<quota::QuotaPolicy>>,
    /// Reputation circuit breakers: an open one refuses its tenant's or campaign's mail.
    pub circuits: Option<Arc<crate::shaping::breaker::Circuits>>,
}

/// A submission past the policy steps, waiting to be signed and stored.
struct Prepared {
    id: QueueId,
    origin: Arc<Origin>,
    sender: CompactString,
    recipients: Vec<Rcpt>,
    suppressed: Vec<String>,
    content: Bytes,
    /// Our verification results (inbound mail), already formatted.
    results: String,
    tenant: Option<CompactString>,
    campaign: Option<CompactString>,
    verp: bool,
    sign: bool,
    sub: Params,
}

/// The envelope parameters carried through unchanged.
struct Params {
    body_type: Option<BodyType>,
    smtputf8: bool,
    ret: Option<spool::Ret>,
    envid: Option<String>,
}

impl Intake {
    /// Stores one message: `Ok` once it is durable.
    pub async fn submit(&self, sub: Submission) -> Result<Accepted, Refusal> {
        self.submit_all(vec![sub]).await.pop().unwrap_or(Err(Refusal::Failed))
    }

    /// Stores several messages together (their VERP mappings in one transaction, their records
    /// in shared group commits); one answer per submission, in order.
    pub async fn submit_all(&self, subs: Vec<Submission>) -> Vec<Result<Accepted, Refusal>> {
        let mut answers: Vec<Option<Result<Accepted, Refusal>>> = Vec::with_capacity(subs.len());
        let mut ready = Vec::with_capacity(subs.len());
        for (i, sub) in subs.into_iter().enumerate() {
            match self.prepare(sub).await {
                Ok(Some(p)) => {
                    answers.push(None);
                    ready.push((i, p));
                }
                Ok(None) => answers.push(Some(Ok(Accepted { id: QueueId(0), suppressed: vec![] }))),
                Err(r) => answers.push(Some(Err(r))),
            }
        }
        if let Err(r) = self.remember_verp(&ready).await {
            for (i, _) in ready.drain(..) {
                answers[i] = Some(Err(r.clone()));
            }
        }
        // Charged from here until the commits answer; the bodies are in memory all along.
        let bytes = ready.iter().map(|(_, p)| p.content.len()).sum();
        let mut charge = Charge::new(self.budget.clone());
        if charge.set(bytes) && !ready.is_empty() {
            metrics::MEMORY_BUDGET_EXCEEDED.inc();
            for (i, p) in ready.drain(..) {
                tracing::info!(ip = %p.origin.client_ip, "message refused: memory budget spent");
                answers[i] = Some(Err(Refusal::OverBudget));
            }
        }
        let signatures = self.sign_all(&ready).await;
        let now = spool::unix_millis();
        let mut tickets = Vec::with_capacity(ready.len());
        for ((i, p), signed) in ready.into_iter().zip(signatures) {
            match signed {
                Ok(signatures) => {
                    let (msg, event) = self.record(p, signatures, now);
                    let size = msg.body.len() as u64;
                    let (id, ip) = (msg.envelope.id, msg.envelope.client_ip);
                    tickets.push((i, id, ip, size, event, self.spool.store(msg)));
                }
                Err(r) => answers[i] = Some(Err(r)),
            }
        }
        let mut any = false;
        for (i, id, ip, size, after, ticket) in tickets {
            let AfterStore { event, labels, suppressed, .. } = &after;
            answers[i] = Some(match ticket.await {
                Ok(()) => {
                    any = true;
                    if let Some(q) = &self.quota {
                        q.record(after.user.as_deref(), after.tenant.as_deref(), after.recipients);
                    }
                    metrics::MESSAGES_RECEIVED.with_label_values(&[&labels.0, &labels.1]).inc();
                    metrics::BYTES_RECEIVED.inc_by(size);
                    if let Some(e) = event {
                        self.log.log(e.clone());
                    }
                    Ok(Accepted { id, suppressed: suppressed.clone() })
                }
                Err(e) => {
                    tracing::warn!(%ip, error = %e, "message refused: spool did not store it");
                    Err(spool_refusal(&e))
                }
            });
        }
        drop(charge);
        if any {
            self.stored.notify_one();
        }
        answers.into_iter().map(|a| a.unwrap_or(Err(Refusal::Failed))).collect()
    }

    /// The policy steps up to signing. `Ok(None)`: nothing left to store (all of it went to
    /// the bounce inbox).
    async fn prepare(&self, sub: Submission) -> Result<Option<Prepared>, Refusal> {
        let Submission { origin, sender, mut recipients, mut content, .. } = sub;
        let params = Params {
            body_type: sub.body_type,
            smtputf8: sub.smtputf8,
            ret: sub.ret,
            envid: sub.envid,
        };
        if content.len() > self.max_message_size {
            tracing::info!(ip = %origin.client_ip, size = content.len(), "message refused: too large");
            return Err(Refusal::TooBig);
        }
        if message::hop_count(&content) > self.max_hops {
            tracing::info!(ip = %origin.client_ip, "message refused: too many hops");
            return Err(Refusal::Loop);
        }
        let (tenant, campaign) = self.clean_headers(&origin, &mut content);
        if let Some(why) =
            self.circuits.as_ref().and_then(|c| c.holding(tenant.as_deref(), campaign.as_deref()))
        {
            tracing::info!(ip = %origin.client_ip, "message refused: {why}");
            return Err(Refusal::CircuitOpen(why));
        }
        if let Some(done) = self.take_bounces(&mut recipients, &content).await {
            return done.map(|()| None);
        }
        let results = self.verify_inbound(&origin, &sender, &recipients, &content).await?;
        let mut suppressed = Vec::new();
        let screened = origin.screened && tenant == origin.tenant;
        if !screened && self.checks_suppression(&origin, tenant.as_deref()) {
            recipients.retain(|r| match self.suppressed(tenant.as_deref(), &r.address) {
                Some(why) => {
                    metrics::SUPPRESSED.with_label_values(&[suppressed_where(&origin)]).inc();
                    suppressed.push(why);
                    false
                }
                None => true,
            });
            if recipients.is_empty() {
                return Err(Refusal::Suppressed(suppressed.join("; ")));
            }
        }
        let sign = self.may_sign(&origin, &content)?;
        // A VERP return path names one message for one recipient (bounces are attributed to it).
        let verp = self.verp.is_some()
            && recipients.len() == 1
            && !sender.is_empty()
            && origin.trusted
            && self.verp_config.applies_to(tenant.as_deref());
        let id = sub.id.unwrap_or_else(|| self.spool.next_id());
        Ok(Some(Prepared {
            id,
            origin,
            sender,
            recipients,
            suppressed,
            content,
            results,
            tenant,
            campaign,
            verp,
            sign,
            sub: params,
        }))
    }

    /// Why `address` must not be sent to for `tenant` (its entries and the global ones).
    pub fn suppressed(&self, tenant: Option<&str>, address: &str) -> Option<String> {
        let entry = self.suppressions.as_ref()?.check(tenant, address)?;
        Some(refusal_text(address, &entry))
    }

    /// Whether mail from `origin` for `tenant` is checked against the suppression list: mail
    /// we send on a client's behalf, unless the tenant or (for SMTP) `check_rcpt` turns it off.
    pub fn checks_suppression(&self, origin: &Origin, tenant: Option<&str>) -> bool {
        let smtp_allows = origin.protocol == "HTTP" || self.suppression.check_rcpt;
        origin.trusted && smtp_allows && self.suppression.checks(tenant)
    }

    /// Removes forged results and the tenant headers (one pass over the header, one copy of
    /// the message when there is something to remove); the tenant and campaign the message
    /// goes under.
    fn clean_headers(
        &self,
        origin: &Origin,
        content: &mut Bytes,
    ) -> (Option<CompactString>, Option<CompactString>) {
        let ours = self.hostname.trim_end_matches('.');
        let is_ours = |value: &[u8]| {
            crate::mailauth::headers::authserv_id_of(value)
                .is_some_and(|id| id.eq_ignore_ascii_case(ours))
        };
        let (mut declared_tenant, mut declared_campaign, mut remove) = (None, None, false);
        for (name, value) in crate::mailauth::headers::fields(content) {
            let slot = if name.eq_ignore_ascii_case(TENANT_HEADER) {
                &mut declared_tenant
            } else if name.eq_ignore_ascii_case(CAMPAIGN_HEADER) {
                &mut declared_campaign
            } else {
                remove |= name.eq_ignore_ascii_case("Authentication-Results") && is_ours(value);
                continue;
            };
            remove = true;
            if slot.is_none() {
                // A folded or non-UTF-8 value is not a name: check_name refuses it.
                let v = String::from_utf8_lossy(value).trim().to_string();
                *slot = Some(crate::tenant::check_name(name, v).ok());
            }
        }
        let believed = origin.may_declare_tenant && origin.tenant.is_none();
        let tenant =
            origin.tenant.clone().or_else(|| believed.then(|| declared_tenant.flatten()).flatten());
        let campaign = origin
            .campaign
            .clone()
            .or_else(|| origin.may_declare_tenant.then(|| declared_campaign.flatten()).flatten());
        if remove {
            let drop = |name: &str, value: &[u8]| {
                name.eq_ignore_ascii_case(TENANT_HEADER)
                    || name.eq_ignore_ascii_case(CAMPAIGN_HEADER)
                    || (name.eq_ignore_ascii_case("Authentication-Results") && is_ours(value))
            };
            if let Some(cleaned) = crate::mailauth::headers::remove_fields(content, drop) {
                tracing::debug!(ip = %origin.client_ip, "removed our own header fields from a submission");
                *content = Bytes::from(cleaned);
            }
        }
        (tenant, campaign)
    }

    /// Mail to the bounce domain (VERP bounces, complaints, mailto unsubscribes) is processed,
    /// not queued: its recipients leave the submission. `Some` when nothing is left to store.
    async fn take_bounces(
        &self,
        rcpts: &mut Vec<Rcpt>,
        content: &Bytes,
    ) -> Option<Result<(), Refusal>> {
        let inbox = self.bounces.as_ref()?;
        let (bounces, rest): (Vec<_>, Vec<_>) =
            std::mem::take(rcpts).into_iter().partition(|r| inbox.verp.is_ours(&r.address));
        *rcpts = rest;
        if bounces.is_empty() {
            return None;
        }
        let to: Vec<String> = bounces.into_iter().map(|r| r.address).collect();
        if let Err(e) = inbox.consume(&to, content.clone()).await {
            tracing::error!(error = %e, "a bounce could not be recorded; asking the sender to retry");
            return Some(Err(Refusal::Failed));
        }
        rcpts.is_empty().then_some(Ok(()))
    }

    /// SPF/DKIM/ARC/DMARC of mail in the verification scope: the Authentication-Results field
    /// to add, or the refusal the policy asks for.
    async fn verify_inbound(
        &self,
        origin: &Origin,
        sender: &str,
        rcpts: &[Rcpt],
        content: &Bytes,
    ) -> Result<String, Refusal> {
        let Some(verifier) = self.verifier.as_ref().filter(|_| origin.verify) else {
            return Ok(String::new());
        };
        let in_scope = match self.verify_scope {
            Scope::All => true,
            Scope::Local => rcpts.iter().any(|r| {
                let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
                self.local_domains.contains(&crate::domain::normalize(domain))
            }),
            Scope::Off => false,
        };
        if !in_scope {
            return Ok(String::new());
        }
        let env =
            VerifyEnvelope { client_ip: origin.client_ip, helo: &origin.helo, mail_from: sender };
        let verdict = verifier.verify(&env, content).await;
        let refused = match verdict.disposition {
            Disposition::RejectDmarc => Some(Refusal::DmarcReject),
            Disposition::RejectSpf => Some(Refusal::SpfReject),
            Disposition::Accept | Disposition::Quarantine => None,
        };
        if let Some(r) = refused {
            tracing::info!(ip = %origin.client_ip, spf = verdict.spf, dmarc = verdict.dmarc, "message refused by policy: {r:?}");
            return Err(r);
        }
        Ok(verdict.headers)
    }

    /// Whether to sign: mail from trusted origins, except a user limited to some senders whose
    /// From: domain is not among them (a signature follows the From domain, so anything else
    /// would be a DMARC-aligned forgery of another customer's domain): refused or unsigned.
    fn may_sign(&self, origin: &Origin, content: &[u8]) -> Result<bool, Refusal> {
        if !origin.trusted {
            return Ok(false);
        }
        if origin.senders.is_empty() {
            return Ok(true);
        }
        let from = crate::mailauth::headers::from_domain(content);
        if from.as_deref().is_some_and(|d| sender_domain_allowed(&origin.senders, d)) {
            return Ok(true);
        }
        let (ip, user) = (origin.client_ip, origin.user.as_deref().unwrap_or(""));
        match self.unaligned_from {
            UnalignedFrom::Refuse => {
                tracing::info!(%ip, user, from = ?from, "message refused: From: domain not among the user's senders");
                Err(Refusal::UnalignedFrom)
            }
            UnalignedFrom::Unsigned => {
                tracing::info!(%ip, user, from = ?from, "not signed: From: domain not among the user's senders");
                Ok(false)
            }
        }
    }

    /// Remembers who the VERP-tagged messages are for, in one durable transaction.
    async fn remember_verp(&self, ready: &[(usize, Prepared)]) -> Result<(), Refusal> {
        let Some(verp) = &self.verp else { return Ok(()) };
        let time = spool::unix_millis() / 1000;
        let sent: Vec<(QueueId, Sent)> = ready
            .iter()
            .filter(|(_, p)| p.verp)
            .map(|(_, p)| {
                let s = Sent {
                    recipient: p.recipients[0].address.clone(),
                    tenant: p.tenant.as_ref().map(|t| t.to_string()),
                    campaign: p.campaign.as_ref().map(|c| c.to_string()),
                    time,
                };
                (p.id, s)
            })
            .collect();
        if sent.is_empty() {
            return Ok(());
        }
        let verp = verp.clone();
        let done = tokio::task::spawn_blocking(move || verp.remember(&sent)).await;
        match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                // Without the mapping a bounce could not be attributed: refused, try later.
                tracing::error!(error = %e, "VERP mapping not stored; messages refused");
                Err(Refusal::Failed)
            }
            Err(e) => {
                tracing::error!(error = %e, "VERP mapping task failed; messages refused");
                Err(Refusal::Failed)
            }
        }
    }

    /// DKIM signatures for every message that is signed, concurrently (the signing service
    /// bounds the pool work).
    async fn sign_all(&self, ready: &[(usize, Prepared)]) -> Vec<Result<String, Refusal>> {
        let mut set = tokio::task::JoinSet::new();
        for (n, (_, p)) in ready.iter().enumerate().filter(|(_, (_, p))| p.sign) {
            let (dkim, body) = (self.dkim.clone(), p.content.clone());
            set.spawn(async move { (n, dkim.sign(body).await) });
        }
        let mut out: Vec<Result<String, Refusal>> = ready
            .iter()
            .map(|(_, p)| if p.sign { Err(Refusal::Signing) } else { Ok(String::new()) })
            .collect();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((n, Ok(signed))) => out[n] = Ok(signed.headers),
                Ok((n, Err(e))) => {
                    tracing::error!(ip = %ready[n].1.origin.client_ip, error = %e, "message refused: DKIM signing failed");
                }
                Err(e) => tracing::error!(error = %e, "a DKIM signing task failed"),
            }
        }
        out
    }

    /// The spool record of a prepared message (our fields in front of the content, as one
    /// buffer: retries never sign or verify again), its reception event, metric labels and
    /// suppressed recipients.
    fn record(&self, p: Prepared, signatures: String, now: u64) -> (NewMessage, AfterStore) {
        let Prepared {
            id,
            origin,
            sender,
            recipients,
            suppressed,
            content,
            results,
            tenant,
            campaign,
            verp,
            sub,
            ..
        } = p;
        let queue_id = id.to_string();
        let single = match recipients.as_slice() {
            [one] => Some(one.address.as_str()),
            _ => None,
        };
        let mut trace = signatures;
        trace.push_str(&results);
        trace.push_str(&received_header(&TraceInfo {
            helo: &origin.helo,
            client_ip: origin.client_ip,
            hostname: &self.hostname,
            protocol: origin.protocol,
            queue_id: &queue_id,
            single_recipient: single,
            unix_time: now / 1000,
        }));
        let return_path = match (&self.verp, verp) {
            (Some(v), true) => CompactString::from(v.address(id)),
            _ => sender.clone(),
        };
        let tags = Tags {
            tenant: tenant.clone(),
            campaign: campaign.clone(),
            meta: origin.meta.clone(),
            pool: origin.pool.clone(),
            priority: origin.priority,
        };
        let event = self.log.enabled().then(|| {
            let mut e = LogEntry::new("reception", id);
            e.sender = Some(sender.to_string());
            e.recipients = recipients.iter().map(|r| r.address.clone()).collect();
            e.remote = Some(origin.client_ip.to_string());
            e.size = Some((trace.len() + content.len()) as u64);
            e.tenant = tenant.as_ref().map(|t| t.to_string());
            e.campaign = campaign.as_ref().map(|c| c.to_string());
            e.listener = Some(origin.listener.to_string());
            e
        });
        let recipient_count = recipients.len();
        let quota_tenant = tenant.clone();
        let labels = (
            origin.listener.to_string(),
            tenant.as_deref().map_or_else(String::new, |t| self.tenant_labels.label(t)),
        );
        let envelope = Envelope {
            id,
            received_at: now,
            sender: return_path,
            recipients: recipients
                .into_iter()
                .map(|r| Recipient::queued(r.address, r.orcpt, r.notify))
                .collect(),
            message_id: message::message_id(&content).map(Into::into),
            size: (trace.len() + content.len()) as u64,
            helo: origin.helo.clone(),
            client_ip: origin.client_ip,
            body_type: sub.body_type,
            smtputf8: sub.smtputf8,
            ret: sub.ret,
            envid: sub.envid,
            tags: (tags != Tags::default()).then(|| Box::new(tags)),
        };
        (
            NewMessage { envelope, trace: Bytes::from(trace), body: content },
            AfterStore {
                event,
                labels,
                suppressed,
                user: origin.user.clone(),
                tenant: quota_tenant,
                recipients: recipient_count,
            },
        )
    }
}

/// What is done once a message is stored: its reception event, metric labels (listener,
/// tenant), the recipients dropped as suppressed, and what its quotas count.
struct AfterStore {
    event: Option<LogEntry>,
    labels: (String, String),
    suppressed: Vec<String>,
    user: Option<String>,
    tenant: Option<CompactString>,
    recipients: usize,
}

/// The `where` label of `sluice_suppressed_total`.
fn suppressed_where(origin: &Origin) -> &'static str {
    if origin.protocol == "HTTP" { "inject" } else { "rcpt" }
}

/// Whether `domain` (the From: domain, lower case) is the domain of one of `senders`
/// (`user@domain` or `@domain`).
fn sender_domain_allowed(senders: &[String], domain: &str) -> bool {
    senders.iter().any(|s| {
        let d = s.rsplit_once('@').map_or(s.as_str(), |(_, d)| d);
        crate::domain::normalize(d) == domain
    })
}

fn spool_refusal(e: &spool::SpoolError) -> Refusal {
    use spool::SpoolError::*;
    match e {
        NoSpace => Refusal::NoSpace,
        Closed => Refusal::ShuttingDown,
        Io(_) | TooLarge | Disabled | Index(_) | Corrupt(_) | NotFound | Conflict => {
            Refusal::Failed
        }
    }
}
