//! The dispatcher: leases due messages from the spool, has [`crate::queue::plan`] group each
//! one's due recipients by hop (destination, lane, source), and queues the groups on their
//! destinations' fair ready queues ([`crate::queue::ready`]). Each destination is served by up to
//! `connections` SMTP connections, each carrying up to `messages_per_connection` messages, paced
//! by the destination's rate (GCRA). A destination that cannot be reached is backed off: its
//! queued work is deferred on the retry schedule and no connection is tried for a pause that
//! doubles with each failure (up to 5 minutes).
//!
//! Outcomes are recorded by [`crate::queue::outcome::Recorder`] (bounce first, then states, then removal).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use compact_str::CompactString;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::{Connection, Target, Timeouts};
use super::rollup::{Placement, Placements, Share};
use super::route::Routes;
pub use super::route::Via;
use crate::bounce::{Action, Notice, wants_failure_notice};
use crate::delivery_error::DeliveryError;
use crate::dns::Resolver;
use crate::egress::Egress;
use crate::egress::site::Sites;
use crate::egress::warmup::Warmup;
use crate::metrics;
use crate::proto::smtp::client::{DsnParams, Outbound};
use crate::queue::outcome::{Attempt, Recorder};
use crate::queue::ready::Ready;
use crate::shaping::limits::ShapingConfig;
use crate::shaping::limits::{Backoff, Gcra, Limits};
use crate::spool::{
    BodyType, Priority, QueueId, RecipientState, RecipientUpdate, SpoolError, unix_millis,
};

pub use crate::queue::plan::Hop;
use crate::queue::plan::{Group, Lookups, Planner, site_key};
use crate::shaping::automation::{ActionKind, Automation, Event, Key, Scope};

/// The dispatcher's world as a message's plan sees it, at one instant.
struct Now<'a> {
    d: &'a Dispatcher,
    at: Instant,
    /// The same instant in Unix milliseconds.
    ms: u64,
}

impl<'a> Now<'a> {
    fn new(d: &'a Dispatcher) -> Self {
        Now { d, at: Instant::now(), ms: unix_millis() }
    }

    /// The site a recipient domain's mail is shaped by now (as the plan keys it).
    fn site_of(&self, domain: &str) -> String {
        match self.via(domain) {
            Via::Mx(d) => match self.placement(&d) {
                Some(Placement { key: Some(key), site }) => site.unwrap_or(key),
                _ => d,
            },
            via => site_key(&via, None).to_string(),
        }
    }
}

impl Lookups for Now<'_> {
    fn via(&self, domain: &str) -> Via {
        match &self.d.mailboxes {
            Some(m) if m.is_local_domain(domain) => Via::Local,
            _ => self.d.routes.via(domain),
        }
    }

    fn placement(&self, domain: &str) -> Option<Placement> {
        let placements = self.d.placements.as_ref()?;
        if !self.d.rolls_up(domain) {
            return None;
        }
        placements.get(domain, self.at)
    }

    fn route_pool(&self, domain: &str) -> Option<&str> {
        self.d.routes.pool(domain)
    }

    fn paused(&self, hop: &Hop) -> bool {
        let dests = self.d.destinations.lock().unwrap_or_else(|e| e.into_inner());
        dests
            .get(hop)
            .is_some_and(|d| d.backoff.lock().unwrap_or_else(|e| e.into_inner()).paused(self.at))
    }

    fn suspended(&self, source: Option<&str>, site: &str) -> Option<(u64, String)> {
        let a = self.d.automation();
        if a.quiet() {
            return None;
        }
        let key = Key { source: source.map(Into::into), site: site.to_string() };
        let (until, rule) = a.suspended(&key, self.ms)?;
        Some((until, suspension_reason(rule, &key, until)))
    }

    fn bounced(&self, tenant: &str, site: &str) -> Option<String> {
        let a = self.d.automation();
        if a.quiet() {
            return None;
        }
        a.bounced(tenant, site, self.ms).map(str::to_string)
    }
}

/// The last reply of mail held by a rule's suspension.
fn suspension_reason(rule: &str, key: &Key, until: u64) -> String {
    let from = key.source.as_deref().map(|s| format!(" from source {s}")).unwrap_or_default();
    let left = Duration::from_millis(until.saturating_sub(unix_millis()) / 1000 * 1000);
    format!(
        "4.7.0 automation rule {rule} suspends delivery to {}{from} for {}",
        key.site,
        humantime::format_duration(left)
    )
}

/// The failure a tenant's mail gets when a rule bounces it for a site: permanent (a DSN's
/// status class 5), naming the provider's reply that fired the rule.
fn tenant_bounce(line: &str) -> DeliveryError {
    let enhanced = line
        .split_whitespace()
        .nth(1)
        .filter(|e| e.len() <= 11 && e.split('.').count() == 3)
        .and_then(|e| e.get(1..))
        .map_or_else(|| "5.7.1".to_string(), |rest| format!("5{rest}"));
    let text = format!("bounced by automation (bounce_tenant): the site replied {line}");
    DeliveryError::Unsendable(crate::proto::smtp::Reply {
        code: 550,
        enhanced: Some(enhanced.into()),
        text: text.into(),
    })
}

/// The shaping name of a group: the domain (MX; for a rolled-up destination, the domain whose
/// mail created it), or the smart host's host.
fn shaping_name<'a>(via: &'a Via, domain: &'a str) -> &'a str {
    match via {
        Via::SmartHost(a) => a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h),
        Via::Mx(_) | Via::Rollup(_) => domain,
        Via::Local => "local",
    }
}

/// At most this many addresses are tried to open one connection (RFC 5321 5.1 asks for
/// "several").
const MAX_ADDRESSES_PER_ATTEMPT: usize = 5;
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A destination without work for this long is forgotten.
const IDLE_FORGET: Duration = Duration::from_secs(600);
/// How often mail held by an open circuit breaker is looked at again: a resume makes it due at
/// once, so this only bounds the spool writes of a large held campaign (one per message per
/// hour).
const CIRCUIT_RECHECK: Duration = Duration::from_secs(3600);
/// Messages in flight (leased from the spool, queued or being delivered) at most.
const MAX_IN_FLIGHT: usize = 20_000;

/// Some recipients of one message for one destination.
/// How an attempt was made, for its record.
struct AttemptBy {
    next_hop_dsn: bool,
    /// The server that answered (`ip:port`); empty for local delivery.
    answered_by: String,
}

struct Job {
    id: QueueId,
    rcpts: Vec<u32>,
    /// The message's tenant and campaign (a rule may bounce a tenant's queued mail; a circuit
    /// breaker holds a tenant's or a campaign's).
    tenant: Option<CompactString>,
    campaign: Option<CompactString>,
}

/// One source × site's state, shared by its destinations: connections open, and the pace of
/// the rate an automation rule lowered it to.
#[derive(Default)]
struct Gate {
    open: Mutex<usize>,
    pace: Mutex<Option<Gcra>>,
}

impl Gate {
    /// How long the next message waits for the lowered rate (None: not lowered).
    fn wait(&self, rate: Option<f64>, now: Instant) -> Duration {
        let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
        let Some(rate) = rate else {
            *pace = None;
            return Duration::ZERO;
        };
        if pace.as_ref().is_none_or(|g| (g.rate() - rate).abs() > rate * 1e-6) {
            *pace = Some(Gcra::new(rate));
        }
        pace.as_mut().map_or(Duration::ZERO, |g| g.reserve(now))
    }
}

/// One destination's ready queue and shaping state.
struct Destination {
    hop: Hop,
    limits: Limits,
    ready: Mutex<Ready<Job>>,
    /// When work was last queued here (an idle destination is forgotten after a while).
    used: Mutex<Instant>,
    /// Connections open (or opening) now.
    connections: Mutex<usize>,
    gcra: Option<Mutex<Gcra>>,
    /// Pause and reduced connection limit after failures.
    backoff: Mutex<Backoff>,
    /// Woken when work is queued, for idle connections.
    work: Notify,
    /// What put the destination into its back-off pause (the reason given to work deferred
    /// during the pause).
    last_error: Mutex<Option<DeliveryError>>,
    /// The domain whose MX hosts a rolled-up destination connects to (any of its domains would
    /// do: they share the MX host set), and its named site.
    domain: String,
    site: Option<String>,
    /// The limits its named site shares with the site's other destinations (per source, and
    /// across sources); empty without a named site.
    shares: Vec<Arc<Share>>,
    /// The source × site automation rules act on, and its shared state.
    key: Key,
    gate: Arc<Gate>,
}

impl Destination {
    /// The record of an attempt made to this destination.
    fn attempt<'a>(
        &'a self,
        next_hop_dsn: bool,
        answered_by: &'a str,
        elapsed: Duration,
    ) -> Attempt<'a> {
        Attempt {
            next_hop_dsn,
            local: self.hop.via == Via::Local,
            answered_by,
            destination: self.hop.logged_name(),
            source: self.hop.source.as_deref(),
            site: self.site.as_deref().or(match &self.hop.via {
                Via::Rollup(key) => Some(key.as_str()),
                _ => None,
            }),
            named_site: self.site.as_deref(),
            elapsed,
        }
    }
}

/// One destination as `sluice queue destinations` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DestinationState {
    /// The domain, the MX host set (joined by `,`), the smart host, or `local`.
    pub destination: String,
    /// `mx` (one domain), `mx_set` (domains rolled up by MX host set), `smarthost`, `local`.
    pub kind: &'static str,
    /// The named site, if any.
    pub site: Option<String>,
    pub source: Option<String>,
    /// The tenant lane (`[[shaping.rule]] tenants`), if any.
    pub lane: Option<String>,
    /// Jobs (a message's recipients for this destination) waiting for a connection.
    pub ready: usize,
    /// Connections open now, and the limit now (lower while backed off).
    pub connections: usize,
    pub connection_limit: usize,
    /// Messages per second at most, from the destination's limits or its site's.
    pub rate: Option<f64>,
    /// `ok`, `backed_off` (after failures: fewer connections) or `paused` (no connection now).
    pub state: &'static str,
    /// Milliseconds left of the back-off pause.
    pub paused_ms: Option<u64>,
    /// The error that last backed it off.
    pub last_error: Option<String>,
    /// The source's warm-up day and today's cap per site, while it is warming.
    pub warmup_day: Option<u64>,
    pub warmup_cap: Option<u64>,
    /// The automation rule whose action holds the source × site now, the connection limit it
    /// left as a share of the configured one, and what is left of its suspension.
    pub shaping_rule: Option<String>,
    pub shaping_factor: Option<f64>,
    pub suspended_ms: Option<u64>,
}

/// A named site's share per source and lane: (site, source, lane).
type ShareKey = (String, Option<CompactString>, Option<CompactString>);

pub struct Dispatcher {
    pub recorder: Recorder,
    routes: Routes,
    /// Local mailboxes: recipients in their domains are delivered here, not over SMTP.
    mailboxes: Option<Arc<crate::local::Mailboxes>>,
    dns: Arc<dyn Resolver>,
    mx_port: u16,
    timeouts: Timeouts,
    scan_interval: Duration,
    shaping: ShapingConfig,
    /// Sources and pools (`[[source]]`, `[[pool]]`).
    pub egress: Arc<Egress>,
    /// All delivery connections together (`[delivery] concurrency`).
    concurrency: Arc<Semaphore>,
    destinations: Mutex<HashMap<Hop, Arc<Destination>>>,
    /// MX rollup: where each domain's mail is queued (`None`: per domain, `[delivery]
    /// mx_rollup = false`), and the named sites.
    placements: Option<Arc<Placements>>,
    sites: Arc<Sites>,
    /// Where each message's due recipients go (pools, sources, warm-up, lanes).
    planner: Planner,
    /// Tenants' fair-share weights and priorities, and bulk's least share of the turns.
    tenants: HashMap<String, TenantClass>,
    bulk_share: f64,
    /// When idle destinations were last looked for.
    swept: Mutex<Instant>,
    /// Named sites' shared limits: by (site, source, lane), and by site for `total`.
    shares: Mutex<HashMap<ShareKey, Arc<Share>>>,
    totals: Mutex<HashMap<String, Arc<Share>>>,
    /// What is being delivered, and what an operator holds back.
    in_flight: Mutex<InFlight>,
    /// Woken whenever a job is released (operator actions wait for in-flight attempts).
    released: Notify,
    /// Automation rules and what they hold (per source × site), and each key's shared state.
    automation: Mutex<Automation>,
    gates: Mutex<HashMap<Key, Arc<Gate>>>,
}

#[derive(Default)]
struct InFlight {
    /// (message, destination) groups queued or being delivered: never dispatched twice.
    jobs: HashSet<(QueueId, Hop)>,
    /// Jobs per message; the message's spool lease ends with its last job.
    per_message: HashMap<QueueId, usize>,
    /// Messages an operator action is changing: not dispatched until it is done.
    held: HashSet<QueueId>,
    /// Leased messages with other work under way: a site lookup before they are placed, or a
    /// warm-up postponement being recorded. Operator actions wait for it as for jobs.
    side: HashSet<QueueId>,
}

impl InFlight {
    fn busy(&self, id: QueueId) -> bool {
        self.held.contains(&id) || self.per_message.contains_key(&id) || self.side.contains(&id)
    }

    /// Ends a job; true when the lease should end (its message's last job, no side work left).
    fn end(&mut self, id: QueueId, hop: &Hop) -> bool {
        if !self.jobs.remove(&(id, hop.clone())) {
            return false;
        }
        match self.per_message.get_mut(&id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.per_message.remove(&id);
                !self.side.contains(&id)
            }
        }
    }
}

/// An operator's hold on one message (see [`Dispatcher::hold`]).
struct Hold<'a> {
    flight: &'a Mutex<InFlight>,
    id: QueueId,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.flight.lock().unwrap_or_else(|e| e.into_inner()).held.remove(&self.id);
    }
}

/// Everything the dispatcher needs, from the configuration.
pub struct DispatcherConfig {
    pub routes: Routes,
    pub mailboxes: Option<Arc<crate::local::Mailboxes>>,
    pub dns: Arc<dyn Resolver>,
    pub mx_port: u16,
    pub timeouts: Timeouts,
    pub scan_interval: Duration,
    pub shaping: ShapingConfig,
    pub concurrency: usize,
    pub egress: Arc<Egress>,
    /// Named sites (`[[site]]` over the provider table).
    pub sites: Sites,
    /// Roll MX domains up by their MX host set (`[delivery] mx_rollup`).
    pub mx_rollup: bool,
    pub warmup: Option<Arc<Warmup>>,
    /// `[tenant.NAME] weight, priority`.
    pub tenants: HashMap<String, TenantClass>,
    /// `[delivery] bulk_share`.
    pub bulk_share: f64,
    /// `[[automation]]` over the shipped rules.
    pub automation: crate::shaping::automation::Rules,
}

/// A tenant's share of a destination's turns and its default priority.
#[derive(Debug, Clone, Copy)]
pub struct TenantClass {
    pub weight: u32,
    pub priority: Option<Priority>,
}

impl Dispatcher {
    pub fn new(recorder: Recorder, cfg: DispatcherConfig) -> Arc<Self> {
        process_started_ms();
        // A `*` route sends every domain by route: nothing to roll up (and no lookups).
        let rollup = cfg.mx_rollup && !cfg.routes.catches_all();
        let planner = Planner {
            egress: cfg.egress.clone(),
            warmup: cfg.warmup.clone(),
            lanes: cfg.shaping.rule.iter().flat_map(|r| r.tenants.iter().cloned()).collect(),
        };
        // Every rule's actions are series from the start (at zero), for rate() and dashboards.
        for (rule, kinds) in cfg.automation.actions() {
            for k in kinds {
                metrics::SHAPING_ACTIONS.with_label_values(&[rule, k.as_str()]);
            }
        }
        Arc::new(Dispatcher {
            recorder,
            routes: cfg.routes,
            mailboxes: cfg.mailboxes,
            dns: cfg.dns,
            mx_port: cfg.mx_port,
            timeouts: cfg.timeouts,
            scan_interval: cfg.scan_interval,
            shaping: cfg.shaping,
            egress: cfg.egress,
            concurrency: Arc::new(Semaphore::new(cfg.concurrency)),
            destinations: Mutex::new(HashMap::new()),
            placements: rollup.then(Default::default),
            sites: Arc::new(cfg.sites),
            planner,
            tenants: cfg.tenants,
            bulk_share: cfg.bulk_share,
            swept: Mutex::new(Instant::now()),
            shares: Mutex::new(HashMap::new()),
            totals: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(InFlight::default()),
            released: Notify::new(),
            automation: Mutex::new(Automation::new(cfg.automation)),
            gates: Mutex::new(HashMap::new()),
        })
    }

    fn automation(&self) -> std::sync::MutexGuard<'_, Automation> {
        self.automation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs until `stop`; connections run on `tracker` so shutdown can wait for them.
    pub async fn run(self: Arc<Self>, stop: CancellationToken, tracker: TaskTracker) {
        self.remove_finished().await;
        loop {
            self.scan(&tracker);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.recorder.wake.notified() => {}
                _ = tokio::time::sleep(self.scan_interval) => {}
            }
        }
    }

    /// The destinations in use, busiest (most ready work) first, at most `limit`.
    pub fn destinations(&self, limit: usize) -> Vec<DestinationState> {
        let now = Instant::now();
        let now_ms = unix_millis();
        let dests: Vec<Arc<Destination>> =
            self.destinations.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let mut out: Vec<DestinationState> = dests
            .iter()
            .map(|d| {
                let b = d.backoff.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let paused = b.pause_left(now);
                let shaping = self.automation().view(&d.key);
                let suspended_ms = shaping
                    .as_ref()
                    .and_then(|v| v.suspended_until)
                    .map(|u| u.saturating_sub(now_ms))
                    .filter(|&ms| ms > 0);
                let rate = d.limits.rate.or_else(|| d.shares.first().and_then(|s| s.rate()));
                let lowered_rate = shaping.as_ref().and_then(|v| v.rate);
                let source = d.hop.source.as_deref();
                let warm = |f: &dyn Fn(&Warmup, &str) -> Option<u64>| {
                    source.and_then(|s| self.planner.warmup.as_deref().and_then(|w| f(w, s)))
                };
                DestinationState {
                    destination: d.hop.name().to_string(),
                    kind: match &d.hop.via {
                        Via::Mx(_) => "mx",
                        Via::Rollup(_) => "mx_set",
                        Via::SmartHost(_) => "smarthost",
                        Via::Local => "local",
                    },
                    site: d.site.clone(),
                    source: source.map(str::to_string),
                    lane: d.hop.lane.as_deref().map(str::to_string),
                    ready: d.ready.lock().unwrap_or_else(|e| e.into_inner()).len(),
                    connections: *d.connections.lock().unwrap_or_else(|e| e.into_inner()),
                    connection_limit: b
                        .connection_limit(d.limits.connections)
                        .min(shaping.as_ref().and_then(|v| v.connections).unwrap_or(usize::MAX)),
                    rate: match (rate, lowered_rate) {
                        (Some(r), Some(l)) => Some(r.min(l)),
                        (r, l) => r.or(l),
                    },
                    state: match (suspended_ms.is_some(), paused.is_some(), b.level() > 0) {
                        (true, _, _) => "suspended",
                        (false, true, _) => "paused",
                        (false, false, true) => "backed_off",
                        _ if shaping.is_some() => "throttled",
                        _ => "ok",
                    },
                    paused_ms: paused.map(|p| p.as_millis() as u64),
                    last_error: (b.level() > 0)
                        .then(|| d.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone())
                        .flatten()
                        .map(|e| e.to_string()),
                    warmup_day: warm(&|w, s| w.day(s, now_ms)),
                    warmup_cap: warm(&|w, s| w.cap(s, now_ms)),
                    shaping_factor: shaping.as_ref().map(|v| v.factor),
                    shaping_rule: shaping.map(|v| v.rule),
                    suspended_ms,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (b.ready + b.connections, &a.destination)
                .cmp(&(a.ready + a.connections, &b.destination))
        });
        out.truncate(limit);
        out
    }

    /// Makes queued recipients due now (all, or those of one domain); returns how many.
    /// Messages with an attempt in flight are left alone (their outcome sets the next attempt),
    /// and every change is conditional on the snapshot it was made from, so a recipient
    /// delivered meanwhile is never queued again.
    pub async fn flush(&self, domain: Option<&str>) -> Result<usize, SpoolError> {
        let domain = domain.map(|d| d.trim_end_matches('.').to_ascii_lowercase());
        self.flush_where(|_, rd| domain.as_ref().is_none_or(|d| *d == rd)).await
    }

    /// Makes the queued recipients due now for which `pick(message, recipient domain)` holds
    /// (as [`Self::flush`]).
    async fn flush_where(
        &self,
        pick: impl Fn(&crate::spool::Envelope, &str) -> bool,
    ) -> Result<usize, SpoolError> {
        let mut tickets = Vec::new();
        for env in self.recorder.spool.list() {
            if self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).busy(env.id) {
                continue;
            }
            for (i, r) in env.recipients.iter().enumerate() {
                let rd = r.address.rsplit_once('@').map_or("", |(_, d)| d).to_ascii_lowercase();
                if r.state != RecipientState::Queued || !pick(&env, &rd) {
                    continue;
                }
                tickets.push(self.recorder.spool.update(RecipientUpdate {
                    id: env.id,
                    index: i as u32,
                    state: RecipientState::Queued,
                    attempts: r.attempts,
                    next_attempt: 0,
                    last_reply: r.last_reply.clone(),
                    delay_notified: r.delay_notified,
                    expect_attempts: Some(r.attempts),
                }));
            }
        }
        let mut n = 0;
        for t in tickets {
            match t.await {
                Ok(()) => n += 1,
                Err(SpoolError::Conflict) => {}
                Err(e) => return Err(e),
            }
        }
        self.recorder.wake.notify_one();
        Ok(n)
    }

    /// Operator bounce: every queued recipient fails with a DSN (queued first), then the message
    /// is removed. Attempts in flight finish first, so a recipient delivered meanwhile is not
    /// bounced too. Returns the number of recipients bounced, or None if there is no such message.
    pub async fn bounce(&self, id: QueueId) -> Result<Option<usize>, SpoolError> {
        let _hold = self.hold(id).await;
        let Some(env) = self.recorder.spool.get(id) else { return Ok(None) };
        let reason = "message bounced by the postmaster (sluice queue bounce)".to_string();
        let queued: Vec<u32> = env
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.state == RecipientState::Queued)
            .map(|(i, _)| i as u32)
            .collect();
        let notices: Vec<Notice<'_>> = queued
            .iter()
            .map(|&i| &env.recipients[i as usize])
            .filter(|r| wants_failure_notice(&env, r))
            .map(|r| Notice {
                recipient: r,
                action: Action::Failed,
                status: "5.0.0".into(),
                diagnostic: reason.clone(),
                remote_mta: None,
                will_retry_until: None,
                // An operator's decision, not the recipient's fault.
                category: Some(crate::bounce::Category::Policy),
            })
            .collect();
        if !notices.is_empty() {
            let original = self.read_content(id).await.unwrap_or_default();
            self.recorder.queue_bounce(&env, &notices, &original, unix_millis()).await?;
        }
        let tickets: Vec<_> = queued
            .iter()
            .map(|&i| {
                let r = &env.recipients[i as usize];
                self.recorder.spool.update(RecipientUpdate {
                    id,
                    index: i,
                    state: RecipientState::Failed,
                    attempts: r.attempts,
                    next_attempt: 0,
                    last_reply: Some(reason.clone()),
                    delay_notified: r.delay_notified,
                    expect_attempts: Some(r.attempts),
                })
            })
            .collect();
        for t in tickets {
            t.await?;
        }
        self.recorder.spool.remove(id).await?;
        Ok(Some(queued.len()))
    }

    /// Operator delete (no bounce), after any attempt in flight has finished. False if there is
    /// no such message.
    pub async fn delete(&self, id: QueueId) -> Result<bool, SpoolError> {
        let _hold = self.hold(id).await;
        if self.recorder.spool.get(id).is_none() {
            return Ok(false);
        }
        self.recorder.spool.remove(id).await?;
        Ok(true)
    }

    /// Keeps a message away from delivery while an operator changes it: jobs queued but not
    /// started are withdrawn, and attempts already started finish (and record their outcome)
    /// before this returns. The hold ends when the guard drops.
    async fn hold(&self, id: QueueId) -> Hold<'_> {
        let withdrawn: Vec<Hop> = {
            let dests = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
            dests
                .values()
                .filter(|d| {
                    let mut ready = d.ready.lock().unwrap_or_else(|e| e.into_inner());
                    ready.retain(|j| j.id != id) > 0
                })
                .map(|d| d.hop.clone())
                .collect()
        };
        let guard = Hold { flight: &self.in_flight, id };
        loop {
            let released = self.released.notified();
            {
                let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                let mut last = false;
                for hop in &withdrawn {
                    last |= f.end(id, hop);
                }
                f.held.insert(id);
                let done = !f.per_message.contains_key(&id) && !f.side.contains(&id);
                drop(f);
                if last {
                    self.recorder.spool.release(id);
                }
                if done {
                    return guard;
                }
            }
            released.await;
        }
    }

    /// A crash between recording the last outcome and removing the message leaves a message with
    /// no queued recipient; nothing else would ever remove it.
    /// Ids only (`Spool::finished`): copying every envelope here was the memory peak of a
    /// restart with a million queued messages.
    async fn remove_finished(&self) {
        for id in self.recorder.spool.finished() {
            tracing::info!(%id, "removing a message finished before the last stop");
            if let Err(e) = self.recorder.spool.remove(id).await {
                tracing::error!(%id, error = %e, "could not remove a finished message");
            }
        }
    }

    /// One pass: queue every due (message, destination) group, then open connections where a
    /// destination has work, room under its limits and no back-off. Messages with an MX domain
    /// whose site is not known yet wait (leased) for its MX lookup, on a task of their own.
    fn scan(self: &Arc<Self>, tracker: &TaskTracker) {
        self.forget_idle(Instant::now());
        let now = unix_millis();
        let events = self.automation().tick(now);
        self.act(events, tracker);
        // Leased: a message handed out here is not found again until its last job ends, so a
        // scan costs what is due now, never what is already in flight (or deferred).
        let mut deferrals = Vec::new();
        // Bounded twice: per scan, and in all (leased messages wait in ready queues or in
        // deferral tasks, so a million due messages after a restart never sit in memory at once).
        let in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).per_message.len();
        let room = MAX_IN_FLIGHT.saturating_sub(in_flight).min(10_000);
        let (mut unplaced, mut lookups) = (Vec::new(), HashSet::new());
        for env in self.recorder.spool.lease_due(now, room) {
            if self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).held.contains(&env.id) {
                self.recorder.spool.release(env.id); // an operator is changing it
                continue;
            }
            if self.unplaced_domains(&env, now, &mut lookups) {
                self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).side.insert(env.id);
                unplaced.push(env);
                continue;
            }
            self.place(env, now, &mut deferrals, tracker);
        }
        self.defer(deferrals, tracker);
        if let (false, Some(placements)) = (unplaced.is_empty(), self.placements.clone()) {
            let (me, t) = (self.clone(), tracker.clone());
            tracker.spawn(async move {
                placements.resolve(&me.dns, &me.sites, lookups.into_iter().collect()).await;
                let mut deferrals = Vec::new();
                for env in unplaced {
                    me.place(env, now, &mut deferrals, &t);
                }
                me.defer(deferrals, &t);
                me.open_all(&t);
            });
        }
        self.open_all(tracker);
    }

    /// Drops destinations with nothing queued, no connection and no back-off that have had no
    /// work for [`IDLE_FORGET`], at most once a minute: the map holds the destinations in use,
    /// not every domain ever mailed. (Their rate state has recovered by then.)
    fn forget_idle(&self, now: Instant) {
        {
            let mut last = self.swept.lock().unwrap_or_else(|e| e.into_inner());
            if now.duration_since(*last) < Duration::from_secs(60) {
                return;
            }
            *last = now;
        }
        let mut map = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, d| {
            let idle = now.duration_since(*d.used.lock().unwrap_or_else(|e| e.into_inner()))
                >= IDLE_FORGET;
            !(idle
                && d.ready.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
                && *d.connections.lock().unwrap_or_else(|e| e.into_inner()) == 0
                && !d.backoff.lock().unwrap_or_else(|e| e.into_inner()).paused(now))
        });
        drop(map);
        // A key's gate lives as long as one of its destinations.
        self.gates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, g| Arc::strong_count(g) > 1);
    }

    fn open_all(self: &Arc<Self>, tracker: &TaskTracker) {
        let dests: Vec<Arc<Destination>> =
            self.destinations.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for dest in dests {
            self.open_connections(&dest, tracker);
        }
    }

    /// Adds to `out` the rolled-up MX domains of the message's due recipients whose site is
    /// not known (or no longer fresh); true if it has any.
    fn unplaced_domains(
        &self,
        env: &crate::spool::Envelope,
        now: u64,
        out: &mut HashSet<String>,
    ) -> bool {
        let Some(placements) = &self.placements else { return false };
        let instant = Instant::now();
        let mut any = false;
        for r in env.recipients.iter() {
            if r.state != RecipientState::Queued || r.next_attempt > now {
                continue;
            }
            let domain =
                crate::domain::normalize(r.address.rsplit_once('@').map_or("", |(_, d)| d));
            if placements.get(&domain, instant).is_none() && self.rolls_up(&domain) {
                out.insert(domain);
                any = true;
            }
        }
        any
    }

    /// Whether mail for `domain` is queued by its MX host set (MX delivery without a route of
    /// its own, not a local domain).
    fn rolls_up(&self, domain: &str) -> bool {
        self.placements.is_some()
            && !self.mailboxes.as_ref().is_some_and(|m| m.is_local_domain(domain))
            && !self.routes.is_routed(domain)
    }

    /// Queues a leased message's due groups on their destinations (or defers them when the
    /// destination is paused).
    fn place(
        self: &Arc<Self>,
        env: crate::spool::Envelope,
        now: u64,
        deferrals: &mut Vec<(Arc<Destination>, Job)>,
        tracker: &TaskTracker,
    ) {
        if self.held_by_circuit(&env, now, tracker) {
            return;
        }
        let plan = self.planner.plan(&env, now, &Now::new(self));
        let (groups, postponed, bounced) = (plan.groups, plan.postponed, plan.bounced);
        let side_work = !postponed.is_empty() || !bounced.is_empty();
        {
            // Registered under one lock with the check for an operator's hold, so a hold either
            // sees this work (and waits for it) or this sees the hold (and backs off).
            let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            f.side.remove(&env.id); // its site lookup, if it had one, is over
            if f.held.contains(&env.id) || (groups.is_empty() && !side_work) {
                drop(f);
                self.recorder.spool.release(env.id);
                self.released.notify_waiters();
                return;
            }
            if side_work {
                f.side.insert(env.id);
            }
            if !groups.is_empty() {
                f.per_message.insert(env.id, groups.len());
                f.jobs.extend(groups.keys().map(|h| (env.id, h.clone())));
            }
        }
        if side_work {
            // Rescheduled without an attempt, or bounced by a rule; the lease ends when that is
            // recorded and the message's jobs, if any, are done.
            let (me, env) = (self.clone(), env.clone());
            tracker.spawn(async move {
                for p in postponed {
                    me.recorder.postpone(&env, &p.rcpts, p.until, &p.reason).await;
                }
                if !bounced.is_empty() {
                    let content = me.read_content(env.id).await.ok();
                    for b in bounced {
                        let attempt = Attempt {
                            next_hop_dsn: false,
                            local: false,
                            answered_by: "",
                            destination: None,
                            site: None,
                            named_site: None,
                            source: None,
                            elapsed: Duration::ZERO,
                        };
                        let outcome = Err(tenant_bounce(&b.reply));
                        me.recorder
                            .record(&env, &b.rcpts, &outcome, &attempt, content.as_ref())
                            .await;
                    }
                }
                me.side_done(env.id);
            });
        }
        for (hop, group) in groups {
            let dest = self.destination(&hop, &group);
            let job = Job {
                id: env.id,
                rcpts: group.rcpts,
                tenant: env.tenant().map(Into::into),
                campaign: env.campaign().map(Into::into),
            };
            // A destination in its back-off pause gets no connection now: its work is
            // deferred at once on the retry schedule, with the error that paused it (as
            // Postfix defers mail for a dead destination), rather than held in memory.
            let paused =
                dest.backoff.lock().unwrap_or_else(|e| e.into_inner()).paused(Instant::now());
            if paused {
                deferrals.push((dest, job));
            } else {
                *dest.used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                let (weight, transactional) = self.class_of(&env);
                let mut ready = dest.ready.lock().unwrap_or_else(|e| e.into_inner());
                ready.push(job, env.tenant(), weight, transactional);
                drop(ready);
                dest.work.notify_one();
            }
        }
    }

    /// A leased message of a tenant or campaign whose circuit breaker is open: its due
    /// recipients wait, unattempted, and are looked at again every [`CIRCUIT_RECHECK`] (a resume
    /// makes them due at once). True when it was held.
    fn held_by_circuit(
        self: &Arc<Self>,
        env: &crate::spool::Envelope,
        now: u64,
        tracker: &TaskTracker,
    ) -> bool {
        let Some(circuits) = &self.recorder.circuits else { return false };
        if env.tenant().is_none() && env.campaign().is_none() {
            return false;
        }
        let Some(why) = circuits.holding(env.tenant(), env.campaign()) else { return false };
        let due: Vec<u32> = env
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.state == RecipientState::Queued && r.next_attempt <= now)
            .map(|(i, _)| i as u32)
            .collect();
        {
            let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            f.side.remove(&env.id);
            if f.held.contains(&env.id) || due.is_empty() {
                drop(f);
                self.recorder.spool.release(env.id);
                self.released.notify_waiters();
                return true;
            }
            f.side.insert(env.id);
        }
        let (me, env, circuits) = (self.clone(), env.clone(), circuits.clone());
        let until = now + CIRCUIT_RECHECK.as_millis() as u64;
        tracker.spawn(async move {
            me.recorder.postpone(&env, &due, until, &format!("4.7.1 {why}")).await;
            // Resumed while this was being written: the resume's flush skipped this message
            // (it was busy), so it is made due here.
            if circuits.holding(env.tenant(), env.campaign()).is_none() {
                let why = "4.7.1 its circuit breaker was resumed";
                me.recorder.postpone(&env, &due, crate::spool::unix_millis(), why).await;
            }
            me.side_done(env.id);
        });
        true
    }

    /// Whether an open circuit breaker holds the job's tenant or campaign.
    fn held(&self, job: &Job) -> bool {
        (job.tenant.is_some() || job.campaign.is_some())
            && self.recorder.circuits.as_ref().is_some_and(|c| {
                c.holding(job.tenant.as_deref(), job.campaign.as_deref()).is_some()
            })
    }

    /// Closes open circuit breakers (`sluice tenant resume`, `sluice campaign resume`) and makes
    /// the mail they held due now. Returns the breakers closed.
    pub async fn resume_circuit(
        &self,
        kind: &str,
        name: &str,
        tenant: Option<&str>,
    ) -> Result<Vec<crate::shaping::breaker::Trip>, SpoolError> {
        use crate::shaping::breaker::Scope;
        let Some(circuits) = &self.recorder.circuits else { return Ok(Vec::new()) };
        let closed = circuits.resume(kind, name, tenant);
        if !closed.is_empty() {
            self.flush_where(|env, _| {
                closed.iter().any(|t| match &t.scope {
                    Scope::Tenant { tenant } => env.tenant() == Some(tenant.as_str()),
                    Scope::Campaign { tenant, campaign } => {
                        env.campaign() == Some(campaign.as_str())
                            && env.tenant().unwrap_or("") == tenant
                    }
                })
            })
            .await?;
        }
        Ok(closed)
    }

    /// A message's weight among its destination's tenants, and whether it goes ahead of bulk:
    /// its own priority (injection), else its tenant's.
    fn class_of(&self, env: &crate::spool::Envelope) -> (u32, bool) {
        let tenant = env.tenant().and_then(|t| self.tenants.get(t));
        let priority = env.priority().or(tenant.and_then(|t| t.priority));
        (tenant.map_or(1, |t| t.weight), priority == Some(Priority::Transactional))
    }

    /// Records the jobs of paused destinations as deferred, with the error that paused them.
    fn defer(self: &Arc<Self>, deferrals: Vec<(Arc<Destination>, Job)>, tracker: &TaskTracker) {
        for (dest, job) in deferrals {
            let me = self.clone();
            tracker.spawn(async move {
                let error = dest
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_else(|| {
                        DeliveryError::ConnectionLost("destination backed off".into())
                    });
                let attempt = dest.attempt(false, "", Duration::ZERO);
                me.finish_job(&dest, job, Err(error), &attempt, None).await;
            });
        }
    }

    fn destination(&self, hop: &Hop, group: &Group) -> Arc<Destination> {
        let mut map = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(hop.clone())
            .or_insert_with(|| {
                let name = shaping_name(&hop.via, &group.domain);
                let mut limits = Limits::for_destination(&self.shaping, name, hop.lane.as_deref());
                let site = group.site.as_deref().and_then(|s| self.sites.get(s));
                let shares =
                    site.map_or_else(Vec::new, |site| self.site_shares(site, hop, &mut limits));
                let key = Key {
                    source: hop.source.clone(),
                    site: site_key(&hop.via, group.site.as_deref()).to_string(),
                };
                let gate = self
                    .gates
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(key.clone())
                    .or_default()
                    .clone();
                Arc::new(Destination {
                    hop: hop.clone(),
                    gcra: limits.rate.map(|r| Mutex::new(Gcra::new(r))),
                    limits,
                    ready: Mutex::new(Ready::new(self.bulk_share)),
                    used: Mutex::new(Instant::now()),
                    connections: Mutex::new(0),
                    backoff: Mutex::new(Backoff::default()),
                    work: Notify::new(),
                    last_error: Mutex::new(None),
                    domain: group.domain.clone(),
                    site: group.site.clone(),
                    shares,
                    key,
                    gate,
                })
            })
            .clone()
    }

    /// The limits a destination of a named site shares with the site's others: connections and
    /// rate per source (the site's, else the shaping limits of the destination), and `total`
    /// across sources. The destination's own rate is left to the share.
    fn site_shares(
        &self,
        site: &crate::egress::site::Site,
        hop: &Hop,
        limits: &mut Limits,
    ) -> Vec<Arc<Share>> {
        limits.connections = site.connections.unwrap_or(limits.connections);
        limits.messages_per_connection =
            site.messages_per_connection.unwrap_or(limits.messages_per_connection);
        let rate = site.rate.or(limits.rate.take());
        let key = (site.name.clone(), hop.source.clone(), hop.lane.clone());
        let mut shares = vec![
            self.shares
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(Share::new(Some(limits.connections), rate, site.connect_rate))
                })
                .clone(),
        ];
        if site.total_connections.is_some() || site.total_rate.is_some() {
            let total = self
                .totals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(site.name.clone())
                .or_insert_with(|| {
                    Arc::new(Share::new(site.total_connections, site.total_rate, None))
                })
                .clone();
            shares.push(total);
        }
        shares
    }

    fn open_connections(self: &Arc<Self>, dest: &Arc<Destination>, tracker: &TaskTracker) {
        let limit = {
            let b = dest.backoff.lock().unwrap_or_else(|e| e.into_inner());
            if b.paused(Instant::now()) {
                return;
            }
            b.connection_limit(dest.limits.connections)
        };
        // A rule's suspension or lowered connection limit of the source × site.
        let lowered = {
            let a = self.automation();
            if a.suspended(&dest.key, unix_millis()).is_some() {
                return;
            }
            a.connections(&dest.key)
        };
        loop {
            let queued = dest.ready.lock().unwrap_or_else(|e| e.into_inner()).len();
            let mut open = dest.connections.lock().unwrap_or_else(|e| e.into_inner());
            // One connection per queued job at most, within the destination's (backed-off) limit.
            if queued == 0 || *open >= limit || *open >= queued {
                return;
            }
            let mut key_open = dest.gate.open.lock().unwrap_or_else(|e| e.into_inner());
            if lowered.is_some_and(|l| *key_open >= l) {
                return;
            }
            let Ok(permit) = self.concurrency.clone().try_acquire_owned() else { return };
            // A named site's slots are shared with its other destinations.
            if !Share::take_all(&dest.shares) {
                return;
            }
            *open += 1;
            *key_open += 1;
            drop((open, key_open));
            metrics::DELIVERY_CONNECTIONS.inc();
            let label = match &dest.hop.via {
                Via::SmartHost(a) => a.clone(),
                Via::Mx(d) => self.recorder.labels.peek(d),
                Via::Rollup(_) => {
                    dest.site.clone().unwrap_or_else(|| self.recorder.labels.peek(&dest.domain))
                }
                Via::Local => "local".to_string(),
            };
            let gauge = metrics::DESTINATION_CONNECTIONS.with_label_values(&[&label]);
            gauge.inc();
            let (me, d, t) = (self.clone(), dest.clone(), tracker.clone());
            tracker.spawn(async move {
                tokio::time::sleep(Share::connect_wait(&d.shares, Instant::now())).await;
                me.serve_destination(&d, permit, &t).await;
                Share::put_all(&d.shares);
                *d.gate.open.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                *d.connections.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                metrics::DELIVERY_CONNECTIONS.dec();
                gauge.dec();
                me.recorder.wake.notify_one();
            });
        }
    }

    /// One connection's life: connect, take jobs from the destination until
    /// `messages_per_connection` or idle, QUIT.
    async fn serve_destination(
        self: &Arc<Self>,
        dest: &Arc<Destination>,
        _permit: OwnedSemaphorePermit,
        tracker: &TaskTracker,
    ) {
        if let (Via::Local, Some(m)) = (&dest.hop.via, &self.mailboxes) {
            return self.serve_mailboxes(dest, m, tracker).await;
        }
        if self.suspended(dest) {
            return;
        }
        let source = dest.hop.source.as_deref().and_then(|s| self.egress.source(s));
        let connecting = unix_millis();
        let mut conn = match self.connect(dest, source).await {
            Ok(c) => {
                dest.backoff.lock().unwrap_or_else(|e| e.into_inner()).succeeded();
                c
            }
            Err(e) => {
                self.observe(dest, &Err(e.clone()), None, None, connecting, tracker);
                return self.unreachable(dest, e).await;
            }
        };
        while conn.sent < dest.limits.messages_per_connection && conn.is_usable() {
            let Some(job) = self.next_job(dest, &mut conn).await else { break };
            // A rule's suspension ends the connection before its next message, which goes back
            // to be planned again; else the rate a rule lowered (one look at the rules).
            let Some(lowered) = self.pace(dest) else {
                self.release(&job, &dest.hop);
                self.recorder.wake.notify_one();
                break;
            };
            let now = Instant::now();
            let own = dest
                .gcra
                .as_ref()
                .map(|g| g.lock().unwrap_or_else(|e| e.into_inner()).reserve(now));
            let wait = own
                .unwrap_or_default()
                .max(Share::message_wait(&dest.shares, now))
                .max(dest.gate.wait(lowered, now));
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let Some((env, content)) = self.load_job(dest, &job).await else { continue };
            let started = Instant::now();
            let started_ms = unix_millis();
            let outcome = match &content {
                Ok(content) => conn.send(outbound(&env, &job, content.clone())).await,
                Err(e) => Err(e.clone()),
            };
            if let Err(e) = &outcome
                && e.is_session_trouble()
            {
                self.back_off(dest, e);
            }
            self.observe(dest, &outcome, Some(conn.host()), env.tenant(), started_ms, tracker);
            let by =
                AttemptBy { next_hop_dsn: conn.capabilities().dsn, answered_by: conn.peer.clone() };
            self.finish_later(tracker, dest, job, (outcome, content), started, by);
        }
        conn.quit().await;
    }

    /// Local delivery: the destination's jobs, one Maildir write per recipient on the
    /// blocking pool, each recorded like a server's replies (a 4xx is retried, a 5xx bounces).
    async fn serve_mailboxes(
        self: &Arc<Self>,
        dest: &Arc<Destination>,
        mailboxes: &Arc<crate::local::Mailboxes>,
        tracker: &TaskTracker,
    ) {
        loop {
            let job = dest.ready.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(job) = job else { return };
            let Some((env, content)) = self.load_job(dest, &job).await else { continue };
            let started = Instant::now();
            let outcome = match &content {
                Ok(content) => {
                    let (m, c) = (mailboxes.clone(), content.clone());
                    // Each recipient's files carry `<queue id>-<index>`; a delivery that may
                    // have been made already (retried, or queued before this process started,
                    // so a crash may have come between the mailbox write and its record) is
                    // looked for first.
                    let queued_before_start = env.received_at < process_started_ms();
                    let rcpts: Vec<(String, String, bool)> = job
                        .rcpts
                        .iter()
                        .map(|&i| {
                            let r = &env.recipients[i as usize];
                            let key = format!("{}-{i}", env.id);
                            (r.address.to_string(), key, queued_before_start || r.attempts > 0)
                        })
                        .collect();
                    let sender = env.sender.to_string();
                    tokio::task::spawn_blocking(move || {
                        rcpts
                            .iter()
                            .map(|(r, key, maybe)| {
                                m.deliver_once(r, &sender, &c, Some((key.as_str(), *maybe)))
                            })
                            .collect::<Vec<_>>()
                    })
                    .await
                    .map_err(|e| DeliveryError::Spool(e.to_string()))
                    .map(|results| {
                        results
                            .iter()
                            .map(|d| {
                                metrics::LOCAL_DELIVERIES.with_label_values(&[d.label()]).inc();
                                d.reply()
                            })
                            .collect()
                    })
                }
                Err(e) => Err(e.clone()),
            };
            let by = AttemptBy { next_hop_dsn: false, answered_by: String::new() };
            self.finish_later(tracker, dest, job, (outcome, content), started, by);
        }
    }

    /// A job's envelope and content; None, with the job released, when the message is gone.
    async fn load_job(
        &self,
        dest: &Destination,
        job: &Job,
    ) -> Option<(crate::spool::Envelope, Result<Bytes, DeliveryError>)> {
        let Some(env) = self.recorder.spool.get(job.id) else {
            self.release(job, &dest.hop);
            return None;
        };
        Some((env, self.read_content(job.id).await))
    }

    /// Records an attempt's outcome beside the sender, which goes on to its next job at once
    /// instead of idling through the group commit.
    fn finish_later(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        dest: &Arc<Destination>,
        job: Job,
        (outcome, content): (
            Result<Vec<crate::proto::smtp::Reply>, DeliveryError>,
            Result<Bytes, DeliveryError>,
        ),
        started: Instant,
        by: AttemptBy,
    ) {
        let elapsed = started.elapsed();
        metrics::DELIVERY_SECONDS.observe(elapsed.as_secs_f64());
        let (me, d) = (self.clone(), dest.clone());
        tracker.spawn(async move {
            let attempt = d.attempt(by.next_hop_dsn, &by.answered_by, elapsed);
            me.finish_job(&d, job, outcome, &attempt, content.ok()).await;
        });
    }

    /// Whether a rule suspends the destination's source × site now.
    fn suspended(&self, dest: &Destination) -> bool {
        self.pace(dest).is_none()
    }

    /// None when a rule suspends the destination's source × site now, else the rate a rule
    /// lowered it to, if any.
    fn pace(&self, dest: &Destination) -> Option<Option<f64>> {
        let a = self.automation();
        if a.quiet() {
            return Some(None);
        }
        match a.suspended(&dest.key, unix_millis()) {
            Some(_) => None,
            None => Some(a.rate(&dest.key)),
        }
    }

    /// Shows an attempt's replies to the automation rules and carries out what they decide.
    fn observe(
        self: &Arc<Self>,
        dest: &Destination,
        outcome: &Result<Vec<crate::proto::smtp::Reply>, DeliveryError>,
        mx_host: Option<&str>,
        tenant: Option<&str>,
        started: u64,
        tracker: &TaskTracker,
    ) {
        let replies: Vec<&crate::proto::smtp::Reply> = match outcome {
            Ok(replies) => replies.iter().filter(|r| !r.is_positive()).collect(),
            Err(DeliveryError::Reply(r) | DeliveryError::Unsendable(r)) => vec![r],
            Err(_) => Vec::new(),
        };
        let now = unix_millis();
        let events = {
            let mut a = self.automation();
            if a.is_empty() {
                return;
            }
            if mx_host.is_some() {
                a.sent(&dest.key, now);
            }
            if replies.is_empty() {
                return;
            }
            let scope = Scope {
                key: &dest.key,
                named_site: dest.site.as_deref(),
                mx_host: mx_host.filter(|_| !matches!(dest.hop.via, Via::SmartHost(_))),
                tenant,
                connections: dest.limits.connections,
                rate: dest.limits.rate.or_else(|| dest.shares.first().and_then(|s| s.rate())),
                started,
            };
            a.observe(&scope, &replies, now)
        };
        self.act(events, tracker);
    }

    /// Logs, counts and carries out rule actions and recovery steps: a suspension sends the
    /// key's queued work back to the queue until it ends, a tenant's bounce fails its mail
    /// queued for the site.
    fn act(self: &Arc<Self>, events: Vec<Event>, tracker: &TaskTracker) {
        for e in events {
            let action = e.action.as_str();
            let source = e.key.source.as_deref().unwrap_or("");
            metrics::SHAPING_ACTIONS.with_label_values(&[&e.rule, action]).inc();
            let labels = [source, e.key.site.as_str()];
            if e.recovered {
                let _ = metrics::SHAPING_FACTOR.remove_label_values(&labels);
                let _ = metrics::SHAPING_RATE.remove_label_values(&labels);
            } else if e.action != ActionKind::BounceTenant {
                metrics::SHAPING_FACTOR.with_label_values(&labels).set(e.factor);
                match e.rate {
                    Some(r) => metrics::SHAPING_RATE.with_label_values(&labels).set(r),
                    None => {
                        let _ = metrics::SHAPING_RATE.remove_label_values(&labels);
                    }
                }
            }
            tracing::warn!(
                rule = %e.rule,
                action,
                source,
                site = %e.key.site,
                factor = e.factor,
                connections = e.connections.unwrap_or(0),
                rate = e.rate.unwrap_or(0.0),
                "automation"
            );
            if self.recorder.log.enabled() {
                let mut entry = crate::delivery_log::LogEntry::new("shaping_action", "");
                entry.rule = Some(e.rule.clone());
                entry.action = Some(action);
                entry.source = e.key.source.as_deref().map(str::to_string);
                entry.site = Some(e.key.site.clone());
                entry.factor = Some(e.factor);
                entry.connections = e.connections;
                entry.rate = e.rate;
                entry.until = e.until;
                entry.tenant = e.tenant.clone();
                entry.reply = e.reply.clone();
                self.recorder.log.log(entry);
            }
            match (e.action, e.until, &e.tenant, &e.reply) {
                (ActionKind::Suspend, _, _, _) => self.withdraw(&e.key),
                (ActionKind::BounceTenant, _, Some(tenant), Some(reply)) => {
                    self.bounce_tenant(tenant, &e.key.site, reply, tracker)
                }
                _ => {}
            }
        }
    }

    /// A suspended key's queued jobs go back to the queue unattempted: planned again, they go
    /// from another source of their pool, or wait for the suspension's end.
    fn withdraw(&self, key: &Key) {
        for (dest, jobs) in self.drain(|d| d.key == *key, |_| true) {
            for job in jobs {
                self.release(&job, &dest.hop);
            }
        }
        self.recorder.wake.notify_one();
    }

    /// `bounce_tenant`: the tenant's jobs queued for the site fail with the reply now; its
    /// mail for the site waiting for a later retry is made due, and the plan bounces it.
    fn bounce_tenant(
        self: &Arc<Self>,
        tenant: &str,
        site: &str,
        reply: &str,
        tracker: &TaskTracker,
    ) {
        let error = tenant_bounce(reply);
        let mine = |j: &Job| j.tenant.as_deref() == Some(tenant);
        for (dest, jobs) in self.drain(|d| d.key.site == site, mine) {
            let (me, error) = (self.clone(), error.clone());
            tracker.spawn(async move {
                let attempt = dest.attempt(false, "", Duration::ZERO);
                for job in jobs {
                    me.finish_job(&dest, job, Err(error.clone()), &attempt, None).await;
                }
            });
        }
        let (me, tenant, site) = (self.clone(), tenant.to_string(), site.to_string());
        tracker.spawn(async move {
            let picked = me
                .flush_where(|env, domain| {
                    env.tenant() == Some(tenant.as_str()) && Now::new(&me).site_of(domain) == site
                })
                .await;
            if let Err(e) = picked {
                tracing::warn!(error = %e, %tenant, %site, "could not queue a tenant's bounce");
            }
        });
    }

    /// Takes the jobs `job` picks from the ready queues of the destinations `dest` picks.
    fn drain(
        &self,
        dest: impl Fn(&Destination) -> bool,
        job: impl Fn(&Job) -> bool,
    ) -> Vec<(Arc<Destination>, Vec<Job>)> {
        let dests: Vec<Arc<Destination>> = self
            .destinations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|d| dest(d))
            .cloned()
            .collect();
        dests
            .into_iter()
            .filter_map(|d| {
                let jobs = d.ready.lock().unwrap_or_else(|e| e.into_inner()).take(&job);
                (!jobs.is_empty()).then_some((d, jobs))
            })
            .collect()
    }

    /// The next hop cannot be reached: defer everything queued for it, and pause before
    /// trying again.
    async fn unreachable(&self, dest: &Destination, e: DeliveryError) {
        if e.classify() == crate::delivery_error::Disposition::Temporary {
            self.back_off(dest, &e);
        }
        let jobs: Vec<Job> = dest.ready.lock().unwrap_or_else(|e| e.into_inner()).drain();
        let attempt = dest.attempt(false, "", Duration::ZERO);
        for job in jobs {
            self.finish_job(dest, job, Err(e.clone()), &attempt, None).await;
        }
    }

    fn back_off(&self, dest: &Destination, e: &DeliveryError) {
        *dest.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
        let mut b = dest.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let pause = b.failed(Instant::now(), MAX_BACKOFF);
        let connections = b.connection_limit(dest.limits.connections);
        tracing::warn!(destination = ?dest.hop, error = %e, ?pause, connections, "destination backed off");
    }

    /// Records a job's outcome and releases it.
    async fn finish_job(
        &self,
        dest: &Destination,
        job: Job,
        outcome: Result<Vec<crate::proto::smtp::Reply>, DeliveryError>,
        attempt: &Attempt<'_>,
        content: Option<Bytes>,
    ) {
        if let Some(env) = self.recorder.spool.get(job.id) {
            self.recorder.record(&env, &job.rcpts, &outcome, attempt, content.as_ref()).await;
        }
        self.release(&job, &dest.hop);
    }

    /// Ends a message's side work (a site lookup or a postponement); its spool lease ends
    /// here unless jobs of it are still under way.
    fn side_done(&self, id: QueueId) {
        let release = {
            let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            f.side.remove(&id) && !f.per_message.contains_key(&id)
        };
        if release {
            self.recorder.spool.release(id);
        }
        self.released.notify_waiters();
    }

    /// Ends a job; the message's spool lease ends with its last job.
    fn release(&self, job: &Job, hop: &Hop) {
        let (last, left) = {
            let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            (f.end(job.id, hop), f.per_message.len())
        };
        if last {
            self.recorder.spool.release(job.id);
            // Half the cap is free again: refill now rather than at the next scan interval.
            if left == MAX_IN_FLIGHT / 2 {
                self.recorder.wake.notify_one();
            }
        }
        self.released.notify_waiters();
    }

    /// The next job, waiting up to the idle timeout for one to be queued. A connection the server
    /// closes while idle (its own timeout, a restart) ends here, before a message is risked on it.
    async fn next_job(&self, dest: &Destination, conn: &mut Connection) -> Option<Job> {
        let deadline = Instant::now() + dest.limits.idle_timeout;
        loop {
            let job = dest.ready.lock().unwrap_or_else(|e| e.into_inner()).pop();
            if let Some(j) = job {
                // Queued before its circuit breaker opened: planned again, it is held there.
                if self.held(&j) {
                    self.release(&j, &dest.hop);
                    self.recorder.wake.notify_one();
                    continue;
                }
                return Some(j);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            tokio::select! {
                _ = tokio::time::timeout(left, dest.work.notified()) => {}
                _ = conn.closed_while_idle() => return None,
            }
        }
    }

    /// Opens a connection to the destination from `source` (its address and EHLO name), trying
    /// the destination's addresses in order (RFC 5321 5.1).
    async fn connect(
        &self,
        dest: &Destination,
        source: Option<&Arc<crate::egress::Source>>,
    ) -> Result<Connection, DeliveryError> {
        let (candidates, policy) = match &dest.hop.via {
            Via::SmartHost(a) => {
                let name = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
                let name = name.trim_start_matches('[').trim_end_matches(']');
                let t = Target { address: a.clone(), name: name.to_string() };
                (vec![t], self.routes.smarthost_policy(a))
            }
            Via::Mx(domain) => (self.mx_addresses(domain).await?, self.routes.mx_policy(domain)),
            // Every domain of a rolled-up destination has the same MX hosts.
            Via::Rollup(_) => {
                let d = &dest.domain;
                (self.mx_addresses(d).await?, self.routes.mx_policy(d))
            }
            Via::Local => {
                return Err(DeliveryError::Protocol("local delivery opens no connection".into()));
            }
        };
        let helo = source.and_then(|s| s.ehlo.as_deref()).unwrap_or(&self.recorder.helo);
        let bind = source.and_then(|s| s.address);
        let mut last = DeliveryError::DnsTemporary("no address to try".into());
        // A source reaches only addresses of its own family.
        let reachable = |t: &Target| {
            let peer = t.address.parse::<std::net::SocketAddr>();
            bind.is_none_or(|b| peer.is_err() || peer.is_ok_and(|p| p.is_ipv4() == b.is_ipv4()))
        };
        let candidates = candidates.into_iter().filter(reachable);
        for target in candidates.take(MAX_ADDRESSES_PER_ATTEMPT) {
            match Connection::open(&target, bind, helo, &self.timeouts, &policy).await {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `ip:port` candidates for MX delivery to `domain` ([`super::mx::targets`]).
    async fn mx_addresses(&self, domain: &str) -> Result<Vec<Target>, DeliveryError> {
        super::mx::targets(self.dns.as_ref(), domain, self.mx_port).await
    }

    async fn read_content(&self, id: QueueId) -> Result<Bytes, DeliveryError> {
        let spool = self.recorder.spool.clone();
        tokio::task::spawn_blocking(move || spool.read_message(id))
            .await
            .map_err(|e| DeliveryError::Spool(e.to_string()))?
            .map_err(|e| match e {
                crate::spool::SpoolError::Corrupt(why) => DeliveryError::Damaged(why),
                e => DeliveryError::Spool(e.to_string()),
            })
    }
}

/// When this process started (Unix milliseconds), first asked at the dispatcher's start.
fn process_started_ms() -> u64 {
    static STARTED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *STARTED.get_or_init(crate::spool::unix_millis)
}

/// The SMTP transaction for one job: its recipients of the message, with their DSN requests.
fn outbound(env: &crate::spool::Envelope, job: &Job, content: Bytes) -> Outbound {
    let rcpts = || job.rcpts.iter().map(|&i| &env.recipients[i as usize]);
    Outbound {
        sender: env.sender.to_string(),
        recipients: rcpts().map(|r| r.address.to_string()).collect(),
        content: vec![content],
        eightbit: env.body_type == Some(BodyType::EightBitMime),
        smtputf8: env.smtputf8,
        dsn: DsnParams {
            ret: env.ret.map(Into::into),
            envid: env.envid.clone(),
            recipients: rcpts().map(|r| (r.notify.map(Into::into), r.orcpt.clone())).collect(),
        },
    }
}
