//! The dispatcher: finds due recipients in the spool, groups them per message and next hop,
//! runs one delivery per group, and records every outcome in the spool before anything else.
//! DESIGN.md invariant 2: an acknowledged recipient leaves the spool only after a 2xx or a
//! durably queued bounce.
//!
//! Now: smart-host routes and MX delivery (by preference; the next MX when a host cannot be
//! reached or refuses the session; A/AAAA fallback; null MX), retries on the schedule, expiry,
//! and RFC 3464 bounces. One connection per delivery, a global concurrency limit; connection
//! reuse and per-destination shaping are not built yet.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::schedule::RetrySchedule;
use crate::bounce::{Failure, build_dsn, status_of, wants_failure_notice};
use crate::delivery::conn::{self, Timeouts};
use crate::delivery::error::{DeliveryError, Disposition, classify_reply};
use crate::delivery::route::{NextHop, Routes};
use crate::dns::{Dns, DnsError, MxAnswer};
use crate::metrics;
use crate::proto::smtp::Reply;
use crate::proto::smtp::client::Outbound;
use crate::proto::smtp::command::BodyType;
use crate::spool::{
    Envelope, NewMessage, QueueId, Recipient, RecipientState, RecipientUpdate, Spool, SpoolError,
    unix_millis,
};

/// Where a group of recipients goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Hop {
    SmartHost(String),
    /// MX delivery for this recipient domain.
    Mx(String),
}

/// At most this many addresses are tried in one attempt (RFC 5321 5.1 asks for "several").
const MAX_ADDRESSES_PER_ATTEMPT: usize = 5;

pub struct Dispatcher {
    pub spool: Arc<dyn Spool>,
    pub routes: Routes,
    pub dns: Arc<Dns>,
    pub mx_port: u16,
    pub schedule: RetrySchedule,
    pub timeouts: Timeouts,
    pub helo: String,
    pub scan_interval: std::time::Duration,
    /// Woken when new mail is stored, so it is dispatched at once.
    pub wake: Arc<Notify>,
    pub concurrency: Arc<Semaphore>,
    /// (message, next hop) groups being delivered now: never dispatched twice.
    in_flight: Mutex<HashSet<(QueueId, Hop)>>,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spool: Arc<dyn Spool>,
        routes: Routes,
        dns: Arc<Dns>,
        mx_port: u16,
        schedule: RetrySchedule,
        timeouts: Timeouts,
        helo: String,
        scan_interval: std::time::Duration,
        wake: Arc<Notify>,
        concurrency: usize,
    ) -> Arc<Self> {
        Arc::new(Dispatcher {
            spool,
            routes,
            dns,
            mx_port,
            schedule,
            timeouts,
            helo,
            scan_interval,
            wake,
            concurrency: Arc::new(Semaphore::new(concurrency)),
            in_flight: Mutex::new(HashSet::new()),
        })
    }

    /// Runs until `stop`; deliveries run on `tracker` so shutdown can wait for them.
    pub async fn run(self: Arc<Self>, stop: CancellationToken, tracker: TaskTracker) {
        self.remove_finished().await;
        loop {
            self.scan(&tracker);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.scan_interval) => {}
            }
        }
    }

    /// Makes queued recipients due now (all, or those of one domain); returns how many.
    pub async fn flush(&self, domain: Option<&str>) -> Result<usize, SpoolError> {
        let domain = domain.map(|d| d.trim_end_matches('.').to_ascii_lowercase());
        let mut n = 0;
        for env in self.spool.list() {
            for (i, r) in env.recipients.iter().enumerate() {
                let rd = r.address.rsplit_once('@').map_or("", |(_, d)| d).to_ascii_lowercase();
                if r.state != RecipientState::Queued || domain.as_ref().is_some_and(|d| *d != rd) {
                    continue;
                }
                self.spool
                    .update(RecipientUpdate {
                        id: env.id,
                        index: i as u32,
                        state: RecipientState::Queued,
                        attempts: r.attempts,
                        next_attempt: 0,
                        last_reply: r.last_reply.clone(),
                    })
                    .await?;
                n += 1;
            }
        }
        self.wake.notify_one();
        Ok(n)
    }

    /// Operator bounce: every queued recipient fails with a DSN (queued first), then the message
    /// is removed. Returns the number of recipients bounced, or None if there is no such message.
    pub async fn bounce(&self, id: QueueId) -> Result<Option<usize>, SpoolError> {
        let Some(env) = self.spool.get(id) else { return Ok(None) };
        let reason = "message bounced by the postmaster (sluice queue bounce)".to_string();
        let queued: Vec<u32> = env
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.state == RecipientState::Queued)
            .map(|(i, _)| i as u32)
            .collect();
        let notices: Vec<Failure<'_>> = queued
            .iter()
            .map(|&i| &env.recipients[i as usize])
            .filter(|r| wants_failure_notice(&env, r))
            .map(|r| Failure {
                recipient: r,
                status: "5.0.0".into(),
                diagnostic: reason.clone(),
                remote_mta: None,
            })
            .collect();
        if !notices.is_empty() {
            let original = self.read_content(id).await.unwrap_or_default();
            self.queue_bounce(&env, &notices, &original, unix_millis()).await?;
        }
        for &i in &queued {
            let r = &env.recipients[i as usize];
            self.spool
                .update(RecipientUpdate {
                    id,
                    index: i,
                    state: RecipientState::Failed,
                    attempts: r.attempts,
                    next_attempt: 0,
                    last_reply: Some(reason.clone()),
                })
                .await?;
        }
        self.spool.remove(id).await?;
        Ok(Some(queued.len()))
    }

    /// A crash between recording the last outcome and removing the message leaves a message with
    /// no queued recipient; nothing else would ever remove it.
    async fn remove_finished(&self) {
        for env in self.spool.list() {
            if env.recipients.iter().all(|r| r.state != RecipientState::Queued) {
                tracing::info!(id = %env.id, "removing a message finished before the last stop");
                if let Err(e) = self.spool.remove(env.id).await {
                    tracing::error!(id = %env.id, error = %e, "could not remove a finished message");
                }
            }
        }
    }

    /// One pass over the queue: dispatch every due group that has a free slot.
    fn scan(self: &Arc<Self>, tracker: &TaskTracker) {
        let now = unix_millis();
        let free = self.concurrency.available_permits();
        if free == 0 {
            return;
        }
        let busy: HashSet<QueueId> =
            self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|k| k.0).collect();
        for env in self.spool.due(now, free, &busy) {
            let mut groups: BTreeMap<Hop, Vec<u32>> = BTreeMap::new();
            for (i, r) in env.recipients.iter().enumerate() {
                if r.state != RecipientState::Queued || r.next_attempt > now {
                    continue;
                }
                let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
                let hop = match self.routes.next_hop(domain) {
                    NextHop::SmartHost { address, .. } => Hop::SmartHost(address),
                    NextHop::Mx => Hop::Mx(domain.trim_end_matches('.').to_ascii_lowercase()),
                };
                groups.entry(hop).or_default().push(i as u32);
            }
            for (hop, rcpts) in groups {
                let key = (env.id, hop.clone());
                if !self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone()) {
                    continue;
                }
                let Ok(permit) = self.concurrency.clone().try_acquire_owned() else {
                    self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                    return; // every slot busy: the next scan continues
                };
                let (me, env) = (self.clone(), env.clone());
                tracker.spawn(async move {
                    me.deliver_group(&env, &hop, &rcpts).await;
                    me.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                    drop(permit);
                    me.wake.notify_one();
                });
            }
        }
    }

    async fn deliver_group(&self, env: &Envelope, hop: &Hop, rcpts: &[u32]) {
        let started = std::time::Instant::now();
        let content = self.read_content(env.id).await;
        let (outcome, answered_by) = match &content {
            Ok(content) => {
                let msg = Outbound {
                    sender: env.sender.clone(),
                    recipients: rcpts
                        .iter()
                        .map(|&i| env.recipients[i as usize].address.clone())
                        .collect(),
                    content: vec![content.clone()],
                    eightbit: env.body_type == Some(BodyType::EightBitMime),
                    smtputf8: env.smtputf8,
                };
                self.deliver_to_hop(hop, msg).await
            }
            Err(e) => (Err(e.clone()), String::new()),
        };
        metrics::DELIVERY_SECONDS.observe(started.elapsed().as_secs_f64());
        let now = unix_millis();

        // Decide every recipient's fate first.
        let mut fates: Vec<Fate> = Vec::with_capacity(rcpts.len());
        for (k, &i) in rcpts.iter().enumerate() {
            let rcpt = &env.recipients[i as usize];
            let (disposition, reply, status) = match &outcome {
                Ok(replies) => {
                    let r = replies
                        .get(k)
                        .cloned()
                        .unwrap_or_else(|| Reply::new(451, "4.3.0", "no reply"));
                    let d = classify_reply(&r);
                    (d, r.to_line(), status_of(&r.to_line(), d == Disposition::Permanent))
                }
                Err(e) => (e.classify(), e.to_string(), error_status(e)),
            };
            let attempts = rcpt.attempts + 1;
            let fate = match disposition {
                Disposition::Delivered => Fate::delivered(i, attempts, reply),
                Disposition::Permanent => Fate::failed(i, attempts, reply, status, "failed"),
                Disposition::Temporary if self.schedule.is_expired(env.received_at, now) => {
                    let diag = format!("delivery time expired; last error: {reply}");
                    Fate::failed(i, attempts, diag, "4.4.7".into(), "expired")
                }
                Disposition::Temporary => {
                    let at = self.schedule.next_attempt(attempts, env.id.0 ^ u64::from(i), now);
                    Fate::deferred(i, attempts, reply, at)
                }
            };
            fates.push(fate);
        }

        // Bounce: the DSN is durable before any recipient is recorded as failed (DESIGN.md 2).
        let remote = (!answered_by.is_empty() && outcome.is_ok()).then_some(answered_by.clone());
        let notices: Vec<Failure<'_>> = fates
            .iter()
            .filter(|f| f.state == RecipientState::Failed)
            .map(|f| (f, &env.recipients[f.index as usize]))
            .filter(|(_, r)| wants_failure_notice(env, r))
            .map(|(f, r)| Failure {
                recipient: r,
                status: f.status.clone(),
                diagnostic: f.reply.clone(),
                remote_mta: remote.clone(),
            })
            .collect();
        if !notices.is_empty() {
            let original = content.as_ref().map(|b| b.as_ref()).unwrap_or(b"");
            if let Err(e) = self.queue_bounce(env, &notices, original, now).await {
                tracing::error!(id = %env.id, error = %e, "could not queue a bounce; failed recipients stay queued");
                for f in fates.iter_mut().filter(|f| f.state == RecipientState::Failed) {
                    f.state = RecipientState::Queued;
                    f.label = "deferred";
                    f.next_attempt = self.schedule.next_attempt(f.attempts, env.id.0, now);
                }
            }
        }

        // Record every outcome.
        for f in &fates {
            metrics::DELIVERIES.with_label_values(&[f.label]).inc();
            tracing::info!(
                id = %env.id, rcpt = %env.recipients[f.index as usize].address, next_hop = %answered_by,
                attempt = f.attempts, outcome = f.label, reply = %f.reply, "delivery"
            );
            let update = RecipientUpdate {
                id: env.id,
                index: f.index,
                state: f.state,
                attempts: f.attempts,
                next_attempt: f.next_attempt,
                last_reply: Some(f.reply.chars().take(512).collect()),
            };
            if let Err(e) = self.spool.update(update).await {
                // The recipient stays as it was in the spool: it will be tried again (a duplicate
                // at worst, never a loss).
                tracing::error!(id = %env.id, error = %e, "could not record a delivery outcome");
                return;
            }
        }
        // The message leaves the spool once every recipient is delivered or bounced.
        if let Some(current) = self.spool.get(env.id)
            && current.recipients.iter().all(|r| r.state != RecipientState::Queued)
            && let Err(e) = self.spool.remove(env.id).await
        {
            tracing::error!(id = %env.id, error = %e, "could not remove a finished message");
        }
    }

    /// Queues one DSN from `<>` to the sender, durably.
    async fn queue_bounce(
        &self,
        env: &Envelope,
        failures: &[Failure<'_>],
        original: &[u8],
        now_ms: u64,
    ) -> Result<(), SpoolError> {
        let body = build_dsn(&self.helo, env, failures, original, now_ms / 1000);
        let id = self.spool.next_id();
        let envelope = Envelope {
            id,
            received_at: now_ms,
            sender: String::new(),
            recipients: vec![Recipient {
                address: env.sender.clone(),
                orcpt: None,
                notify: None,
                state: RecipientState::Queued,
                attempts: 0,
                next_attempt: 0,
                last_reply: None,
            }],
            message_id: Some(format!("<{}.dsn@{}>", env.id, self.helo)),
            size: body.len() as u64,
            helo: self.helo.clone(),
            client_ip: IpAddr::from([127, 0, 0, 1]),
            body_type: Some(BodyType::EightBitMime),
            smtputf8: env.smtputf8,
            ret: None,
            envid: None,
        };
        self.spool
            .store(NewMessage { envelope, trace: Bytes::new(), body: Bytes::from(body) })
            .await?;
        metrics::BOUNCES.inc();
        tracing::info!(id = %env.id, dsn = %id, to = %env.sender, recipients = failures.len(), "bounce queued");
        self.wake.notify_one();
        Ok(())
    }

    /// Tries the hop's addresses in order until one session gives per-recipient answers.
    /// Returns the outcome and the address that produced it.
    async fn deliver_to_hop(
        &self,
        hop: &Hop,
        msg: Outbound,
    ) -> (Result<Vec<Reply>, DeliveryError>, String) {
        let candidates = match hop {
            Hop::SmartHost(a) => vec![a.clone()],
            Hop::Mx(domain) => match self.mx_addresses(domain).await {
                Ok(c) => c,
                Err(e) => return (Err(e), format!("mx:{domain}")),
            },
        };
        let mut last =
            (Err(DeliveryError::DnsTemporary("no address to try".into())), String::new());
        for address in candidates.into_iter().take(MAX_ADDRESSES_PER_ATTEMPT) {
            let outcome = conn::deliver(&address, &self.helo, msg.clone(), &self.timeouts).await;
            // Per-recipient answers are final for this attempt; a host that cannot be reached or
            // refuses the session sends us to the next one (RFC 5321 5.1).
            let next = matches!(
                &outcome,
                Err(DeliveryError::Connect { .. }
                    | DeliveryError::Timeout(_)
                    | DeliveryError::ConnectionLost(_)
                    | DeliveryError::Protocol(_)
                    | DeliveryError::Reply(_))
            );
            last = (outcome, address);
            if !next {
                break;
            }
        }
        last
    }

    /// `ip:port` candidates for MX delivery to `domain`, most preferred first.
    async fn mx_addresses(&self, domain: &str) -> Result<Vec<String>, DeliveryError> {
        let port = self.mx_port;
        let sock = |ip: IpAddr| SocketAddr::new(ip, port).to_string();
        // Address literals ([192.0.2.1], [IPv6:2001:db8::1]) need no DNS.
        if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip: IpAddr = lit.strip_prefix("ipv6:").unwrap_or(lit).parse().map_err(|_| {
                DeliveryError::NoSuchDomain(format!("bad address literal {domain}"))
            })?;
            return Ok(vec![sock(ip)]);
        }
        let dns_err = |e: DnsError| match e {
            DnsError::NoSuchDomain(_) => DeliveryError::NoSuchDomain(e.to_string()),
            DnsError::NoAddress(_) => DeliveryError::NoSuchDomain(e.to_string()),
            DnsError::Temporary(..) => DeliveryError::DnsTemporary(e.to_string()),
        };
        let hosts = match self.dns.mx(domain).await.map_err(dns_err)? {
            MxAnswer::NullMx => return Err(DeliveryError::NullMx(domain.to_string())),
            MxAnswer::Implicit => vec![domain.to_string()],
            MxAnswer::Hosts(h) => h,
        };
        let mut out = Vec::new();
        let mut first_err = None;
        for host in &hosts {
            match self.dns.addresses(host).await {
                Ok(ips) => out.extend(ips.into_iter().map(sock)),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match (out.is_empty(), first_err) {
            (true, Some(e)) => Err(dns_err(e)),
            (true, None) => {
                Err(DeliveryError::NoSuchDomain(format!("{domain}: no mail exchanger")))
            }
            (false, _) => Ok(out),
        }
    }

    async fn read_content(&self, id: QueueId) -> Result<Bytes, DeliveryError> {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || spool.read_message(id))
            .await
            .map_err(|e| DeliveryError::Spool(e.to_string()))?
            .map_err(|e| DeliveryError::Spool(e.to_string()))
    }
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
        }
    }

    fn failed(
        index: u32,
        attempts: u32,
        reply: String,
        status: String,
        label: &'static str,
    ) -> Self {
        Fate {
            index,
            state: RecipientState::Failed,
            attempts,
            next_attempt: 0,
            reply,
            status,
            label,
        }
    }

    fn deferred(index: u32, attempts: u32, reply: String, next_attempt: u64) -> Self {
        let status = "4.0.0".into();
        Fate {
            index,
            state: RecipientState::Queued,
            attempts,
            next_attempt,
            reply,
            status,
            label: "deferred",
        }
    }
}

/// RFC 3463 status for a failure that has no reply of its own.
fn error_status(e: &DeliveryError) -> String {
    match e {
        DeliveryError::NullMx(_) => "5.1.10".into(),
        DeliveryError::NoSuchDomain(_) => "5.1.2".into(),
        DeliveryError::Reply(r) | DeliveryError::Unsendable(r) => {
            status_of(&r.to_line(), classify_reply(r) == Disposition::Permanent)
        }
        DeliveryError::Connect { .. }
        | DeliveryError::Timeout(_)
        | DeliveryError::ConnectionLost(_)
        | DeliveryError::Protocol(_) => "4.4.1".into(),
        DeliveryError::DnsTemporary(_) => "4.4.3".into(),
        DeliveryError::Spool(_) => "4.3.0".into(),
    }
}
