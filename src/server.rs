//! `sluice serve`: opens the spool, binds every listener, runs until shutdown, then drains.
//!
//! Shutdown order (STYLE.md 4): stop accepting; idle sessions get 421 at their next read; a
//! session whose message is being committed gets its 250 (or 4xx) first; wait up to
//! `shutdown_timeout`; then the spool finishes pending commits and writes a final checkpoint.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bounce::suppression::Suppressions;
use crate::config::{Config, ListenerMode};
use crate::delivery::conn::Timeouts;
use crate::delivery::dispatch::{Dispatcher, DispatcherConfig};
use crate::delivery::route::Routes;
use crate::proto::smtp::session::SessionConfig;
use crate::queue::outcome::Recorder;
use crate::queue::schedule::RetrySchedule;
use crate::smtp::{ListenerContext, listener};
use crate::spool::lock::{DataDirLock, LockMode};
use crate::spool::{LogSpool, Spool, SpoolOptions};
use crate::{admin, metrics};

/// Why the server could not start or stop cleanly. Start-up failures are reported, never
/// matched on, so most carry the step that failed and its cause.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another sluice owns the data directory, or its lock file cannot be opened.
    #[error(transparent)]
    Locked(#[from] crate::spool::lock::LockError),
    /// The spool cannot be opened (unreadable, damaged beyond recovery, newer format).
    #[error("opening the spool: {0}")]
    Spool(#[from] crate::spool::SpoolError),
    /// A start-up step failed: `step` says which (with the file or address), `source` why.
    #[error("{step}: {source}")]
    Startup { step: String, source: Box<dyn std::error::Error + Send + Sync> },
}

/// Names the start-up step a failure belongs to (as anyhow's `context`, for [`ServerError`]).
trait Step<T> {
    fn step(self, step: &str) -> Result<T, ServerError>;
    fn step_with(self, step: impl FnOnce() -> String) -> Result<T, ServerError>;
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync>>> Step<T> for Result<T, E> {
    fn step(self, step: &str) -> Result<T, ServerError> {
        self.step_with(|| step.to_string())
    }

    fn step_with(self, step: impl FnOnce() -> String) -> Result<T, ServerError> {
        self.map_err(|e| ServerError::Startup { step: step(), source: e.into() })
    }
}

/// Where the bound addresses are written (useful with port 0, e.g. in tests).
pub fn addresses_file(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("sluice.addresses.json")
}

/// Switches that let tests show a safety check can fail. The binary sets them (from
/// environment variables) only when built with the `test-hooks` cargo feature; the default is
/// the safe production behaviour.
#[derive(Clone, Copy, Debug, Default)]
pub struct TestHooks {
    /// Acknowledge spool batches without fdatasync: every acknowledged message is lost in a
    /// power cut (`SLUICE_TEST_UNSAFE_SKIP_SYNC=1`).
    pub unsafe_skip_sync: bool,
    /// Acknowledge messages before they are written: lost in a kill -9 until the commit thread
    /// writes them (`SLUICE_TEST_UNSAFE_ACK_BEFORE_WRITE=1`).
    pub unsafe_ack_before_write: bool,
    /// A slow disk: the commit thread waits this long before each batch
    /// (`SLUICE_TEST_COMMIT_DELAY_MS`).
    pub commit_delay: std::time::Duration,
}

impl TestHooks {
    /// Reads the hooks from the environment (test builds only).
    #[cfg(feature = "test-hooks")]
    pub fn from_env() -> TestHooks {
        let var = |k: &str| std::env::var(k).ok();
        TestHooks {
            unsafe_skip_sync: var("SLUICE_TEST_UNSAFE_SKIP_SYNC").is_some_and(|v| v == "1"),
            unsafe_ack_before_write: var("SLUICE_TEST_UNSAFE_ACK_BEFORE_WRITE")
                .is_some_and(|v| v == "1"),
            commit_delay: std::time::Duration::from_millis(
                var("SLUICE_TEST_COMMIT_DELAY_MS").and_then(|v| v.parse().ok()).unwrap_or(0),
            ),
        }
    }
}

/// Runs the server until `shutdown` completes: each step below is one phase of its life.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()>,
    hooks: TestHooks,
) -> Result<(), ServerError> {
    metrics::init_labels(
        &cfg.listener.iter().map(|l| (l.name(), l.mode.protocol())).collect::<Vec<_>>(),
    );
    descriptor_headroom(&cfg);
    crate::bounce::init_metric_labels();
    std::fs::create_dir_all(&cfg.data_dir)
        .step_with(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    // One owner per data dir, before anything in it is opened (a second daemon touches nothing).
    let _lock = DataDirLock::acquire(&cfg.data_dir, LockMode::Exclusive)?;
    let spool = open_spool(&cfg, hooks).await?;
    let intake = Front::load(&cfg, spool.clone())?;
    let reload_task = tokio::spawn(reload_on_sighup(
        intake.tls.clone(),
        intake.auth.clone(),
        cfg.users_file(),
        intake.dkim.clone(),
    ));
    let stop = CancellationToken::new();
    let quota_task =
        intake.path.quota.clone().map(|q| {
            tokio::spawn(crate::state_file::keep_saved(q, "quota counters", stop.clone()))
        });
    let sessions = TaskTracker::new();
    let mut bound: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    let mut accept_loops = bind_listeners(&cfg, &intake, &stop, &sessions, &mut bound).await?;
    accept_loops.extend(bind_mailbox_listeners(&cfg, &intake, &stop, &sessions, &mut bound).await?);
    let deliveries = TaskTracker::new();
    let (dispatcher, dispatch_task) = start_delivery(&cfg, &intake, &stop, &deliveries)?;
    let (links, unsubscribe_task) =
        start_unsubscribe(&cfg, &intake, &stop, &sessions, &mut bound).await?;
    let admin_task =
        start_admin(&cfg, &intake, dispatcher, links, &stop, &sessions, &mut bound).await?;
    let addr_file = addresses_file(&cfg);
    let listing = serde_json::to_vec_pretty(&bound).step("listing bound addresses")?;
    std::fs::write(&addr_file, listing).step_with(|| format!("writing {}", addr_file.display()))?;

    shutdown.await;
    tracing::info!("stopping: no new connections; draining sessions");
    stop.cancel();
    for l in accept_loops {
        let _ = l.await;
    }
    let _ = dispatch_task.await;
    drain(&cfg, &sessions, &deliveries).await;
    let _ = admin_task.await;
    if let Some(t) = unsubscribe_task {
        let _ = t.await;
    }
    reload_task.abort();
    if let Some(t) = quota_task {
        let _ = t.await;
    }
    let s = spool.clone();
    tokio::task::spawn_blocking(move || s.close()).await.step("closing the spool")?;
    let _ = std::fs::remove_file(&addr_file);
    tracing::info!("stopped");
    Ok(())
}

/// The one-click unsubscribe endpoint (HTTPS, `[unsubscribe] address`) and the links the
/// injector adds; nothing unless `[unsubscribe] enabled`.
async fn start_unsubscribe(
    cfg: &Config,
    intake: &Front,
    stop: &CancellationToken,
    sessions: &TaskTracker,
    bound: &mut BTreeMap<String, Vec<SocketAddr>>,
) -> Result<
    (Option<Arc<crate::bounce::unsubscribe::Links>>, Option<tokio::task::JoinHandle<()>>),
    ServerError,
> {
    use crate::bounce::unsubscribe::{Links, router};
    let u = &cfg.unsubscribe;
    let (Some(tokens), Some(tls), Some(list)) =
        (&intake.unsubscribe_tokens, &intake.tls, &intake.suppressions)
    else {
        return Ok((None, None));
    };
    let tokens = tokens.clone();
    let links =
        Arc::new(Links { tokens: tokens.clone(), url: u.url.clone(), mailto: u.mailto.clone() });
    let sock = TcpListener::bind(u.address)
        .await
        .step_with(|| format!("binding the unsubscribe endpoint on {}", u.address))?;
    let addr = sock.local_addr().step("unsubscribe endpoint address")?;
    tracing::info!(%addr, url = %u.url, "one-click unsubscribe (HTTPS)");
    bound.insert("unsubscribe".into(), vec![addr]);
    let app = router(tokens, list.clone());
    let task = tokio::spawn(crate::net::http::serve(
        sock,
        u.proxy(),
        Some(tls.clone()),
        app,
        cfg.http.clone(),
        "unsubscribe",
        stop.clone(),
        sessions.clone(),
    ));
    Ok((Some(links), Some(task)))
}

/// Raises the soft limit on open files to the hard one, and warns when the connection caps
/// could use up the descriptors the spool, the index and outbound connections need: every
/// listener's cap is a share of one budget, so one listener cannot starve the others.
fn descriptor_headroom(cfg: &Config) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    let http_listeners = 1 + usize::from(cfg.unsubscribe.enabled);
    let inbound = cfg.limits.max_sessions + http_listeners * cfg.http.max_connections;
    // The spool, its index, logs, and outbound connections at their cap.
    let reserve = 256 + cfg.delivery.concurrency;
    let available = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX);
    tracing::info!(open_files = available, inbound_caps = inbound, "file descriptor budget");
    if inbound + reserve > available {
        tracing::warn!(
            open_files = available,
            inbound_caps = inbound,
            reserve,
            "[limits] max_sessions and [http] max_connections add up to more file descriptors \
             than the process may open (ulimit -n) with room for the spool and deliveries: \
             lower them or raise the limit"
        );
    }
}

/// Opens (and recovers) the spool on a blocking thread.
async fn open_spool(cfg: &Config, hooks: TestHooks) -> Result<Arc<dyn Spool>, ServerError> {
    let opts = SpoolOptions {
        segment_size: cfg.spool.segment_size,
        checkpoint_interval: cfg.spool.checkpoint_interval,
        min_free_space: cfg.spool.min_free_space,
        writer: cfg.spool.writer,
        unsafe_skip_sync: hooks.unsafe_skip_sync,
        unsafe_ack_before_write: hooks.unsafe_ack_before_write,
        commit_delay: hooks.commit_delay,
        ..SpoolOptions::new(cfg.data_dir.join("spool"))
    };
    if hooks.unsafe_skip_sync || hooks.unsafe_ack_before_write {
        tracing::error!(
            "UNSAFE: the spool acknowledges messages before they are durable (test hook); mail WILL be lost"
        );
    }
    Ok(Arc::new(
        tokio::task::spawn_blocking(move || LogSpool::open(opts))
            .await
            .step("opening the spool")??,
    ))
}

/// What every listener shares: the spool, the session policy, certificates, users, keys, the
/// verifier, connection limits, the memory budget and the delivery log.
struct Front {
    spool: Arc<dyn Spool>,
    session: Arc<SessionConfig>,
    tls: Option<Arc<crate::tls::ReloadableServer>>,
    auth: Arc<crate::smtp::AuthContext>,
    dkim: Arc<crate::mailauth::SigningService>,
    limits: Arc<crate::smtp::admission::ConnectionLimits>,
    budget: Arc<crate::intake::budget::MemoryBudget>,
    /// Woken after each stored message, so delivery starts at once.
    stored: Arc<tokio::sync::Notify>,
    log: crate::delivery_log::DeliveryLog,
    /// The suppression list (`[suppression] enabled`).
    suppressions: Option<Arc<Suppressions>>,
    /// Bounce categories, for delivery outcomes and received bounces.
    classifier: Arc<crate::bounce::Classifier>,
    /// VERP return paths (`[verp] enabled`) and where their bounces go.
    verp: Option<Arc<crate::bounce::verp::Verp>>,
    /// Unsubscribe tokens (`[unsubscribe] enabled`): the links, the endpoint and the inbox.
    unsubscribe_tokens: Option<Arc<crate::bounce::unsubscribe::Tokens>>,
    /// Local mailboxes (`[local] domains` with `mailboxes = true`).
    mailboxes: Option<Arc<crate::local::Mailboxes>>,
    /// The one path to the spool, shared by the SMTP listeners and HTTP injection.
    path: Arc<crate::intake::Intake>,
    /// Bounded tenant labels, shared by the intake and delivery metrics.
    tenant_labels: Arc<crate::domain_labels::DomainLabels>,
    /// Reputation circuit breakers per tenant and campaign.
    circuits: Arc<crate::shaping::breaker::Circuits>,
}

/// The local mailboxes, when there are mailbox domains.
fn mailboxes(
    cfg: &Config,
    auth: &crate::auth::AuthContext,
) -> Option<Arc<crate::local::Mailboxes>> {
    let l = &cfg.local;
    if !l.mailboxes || l.domains.is_empty() {
        return None;
    }
    let m = crate::local::Mailboxes::new(
        crate::local::MailboxesConfig {
            domains: l.domains.clone(),
            aliases: l.aliases.iter().map(|(k, v)| (k.clone(), v.to_vec())).collect(),
            catch_all: l.catch_all.clone(),
            postmaster: l.postmaster.clone(),
            root: cfg.mailbox_dir(),
            quota: l.quota,
            hostname: cfg.hostname.clone(),
        },
        auth.users.clone(),
    );
    tracing::info!(domains = ?l.domains, dir = %cfg.mailbox_dir().display(), "local mailboxes");
    Some(Arc::new(m))
}

impl Front {
    fn load(cfg: &Config, spool: Arc<dyn Spool>) -> Result<Front, ServerError> {
        let tls = match &cfg.tls {
            Some(t) => Some(Arc::new(
                crate::tls::ReloadableServer::load(&t.cert, &t.key).step("loading [tls]")?,
            )),
            None => None,
        };
        let (dkim, verifier) = load_mailauth(cfg)?;
        let rate = crate::rate::parse_rate(&cfg.limits.max_connection_rate_per_ip)
            .step("[limits] max_connection_rate_per_ip")?;
        let exempt =
            if cfg.limits.exempt_relay_networks { cfg.relay.networks.clone() } else { Vec::new() };
        let log = crate::delivery_log::DeliveryLog::start(crate::delivery_log::LogOptions {
            file: cfg.delivery_log.file.then(|| cfg.data_dir.join("log").join("delivery.jsonl")),
            max_size: cfg.delivery_log.max_size,
            keep: cfg.delivery_log.keep,
            stdout: cfg.delivery_log.stdout,
        })
        .step("starting the delivery log")?;
        let circuits = Arc::new(crate::shaping::breaker::Circuits::new(
            crate::shaping::breaker::Breakers::open(
                cfg.circuit_breaker.clone(),
                cfg.tenant_breakers(),
                Some(cfg.data_dir.join("circuits.json")),
            ),
            log.clone(),
        ));
        let Bulk { suppressions, classifier, verp, bounces, unsubscribe_tokens } =
            Bulk::load(cfg, &log, &circuits)?;
        let mut session = session_config(cfg);
        if cfg.suppression.check_rcpt
            && let Some(s) = &suppressions
        {
            session.recipient_policy = Some(s.clone());
        }
        if let Some(v) = &verp {
            // Bounces come from anyone: the bounce domain is one of ours.
            session.local_domains.insert(v.domain.clone());
        }
        let auth = load_auth(cfg)?;
        let tenant_labels = Arc::new(crate::domain_labels::DomainLabels::new(
            &cfg.metrics.tenants,
            cfg.metrics.tenant_labels,
            cfg.metrics.promote_after,
        ));
        let quota = Arc::new(crate::intake::quota::QuotaPolicy {
            quotas: crate::tenant::quota::Quotas::open(&cfg.quota_file()),
            tenants: cfg
                .tenant
                .iter()
                .filter_map(|(name, t)| Some((name.clone(), t.limits().ok()?)))
                .collect(),
            users: auth.users.clone(),
            max_sessions: cfg
                .tenant
                .iter()
                .filter_map(|(name, t)| Some((name.clone(), t.max_sessions?)))
                .collect(),
            sessions: Default::default(),
            labels: tenant_labels.clone(),
        });
        session.quota = Some(quota.clone());
        let mailboxes = mailboxes(cfg, &auth);
        if let Some(m) = &mailboxes {
            session.local_recipients = Some(m.clone());
        }
        let budget = crate::intake::budget::MemoryBudget::new(cfg.limits.memory_budget as usize);
        let stored = Arc::new(tokio::sync::Notify::new());
        let path = Arc::new(crate::intake::Intake {
            spool: spool.clone(),
            hostname: cfg.hostname.clone(),
            max_message_size: cfg.limits.max_message_size as usize,
            max_hops: session.max_hops,
            dkim: dkim.clone(),
            unaligned_from: cfg.signing.unaligned_from,
            verifier: verifier.clone(),
            verify_scope: cfg.verify.scope,
            local_domains: session.local_domains.clone(),
            bounces: bounces.clone(),
            suppressions: suppressions.clone(),
            suppression: cfg.suppression.clone(),
            verp: verp.clone(),
            verp_config: cfg.verp.clone(),
            budget: budget.clone(),
            log: log.clone(),
            stored: stored.clone(),
            tenant_labels: tenant_labels.clone(),
            quota: Some(quota),
            circuits: Some(circuits.clone()),
        });
        Ok(Front {
            circuits,
            path,
            tenant_labels,
            spool,
            session: Arc::new(session),
            tls,
            auth,
            mailboxes,
            dkim,
            limits: crate::smtp::admission::ConnectionLimits::new(
                cfg.limits.max_sessions,
                cfg.limits.max_sessions_per_ip,
                rate,
                exempt,
            ),
            budget,
            stored,
            log,
            suppressions,
            classifier,
            verp,
            unsubscribe_tokens,
        })
    }
}

/// The bulk-sending state: suppression list, bounce rules, VERP and its inbox, unsubscribe
/// tokens.
struct Bulk {
    suppressions: Option<Arc<Suppressions>>,
    classifier: Arc<crate::bounce::Classifier>,
    verp: Option<Arc<crate::bounce::verp::Verp>>,
    bounces: Option<Arc<crate::bounce::verp::BounceInbox>>,
    unsubscribe_tokens: Option<Arc<crate::bounce::unsubscribe::Tokens>>,
}

impl Bulk {
    fn load(
        cfg: &Config,
        log: &crate::delivery_log::DeliveryLog,
        circuits: &Arc<crate::shaping::breaker::Circuits>,
    ) -> Result<Bulk, ServerError> {
        use crate::bounce::unsubscribe::{Tokens, load_or_create_key};
        use crate::bounce::verp::{BounceInbox, Verp};
        let suppressions = match cfg.suppression.enabled {
            true => Some(Arc::new(
                Suppressions::open(&cfg.suppression_file()).step("opening the suppression list")?,
            )),
            false => None,
        };
        let classifier = Arc::new(
            crate::bounce::Classifier::load(cfg.bounce.rules.as_deref())
                .step("loading [bounce] rules")?,
        );
        let verp = match (&suppressions, cfg.verp.enabled) {
            (Some(list), true) => {
                let key = load_or_create_key(&cfg.unsubscribe_key_file()).step("VERP key")?;
                let v = &cfg.verp;
                Some(Arc::new(Verp::new(&v.domain, &v.local, &key, list.clone(), v.keep)))
            }
            _ => None,
        };
        let unsubscribe_tokens = match (cfg.unsubscribe.enabled, &suppressions) {
            (true, Some(_)) => Some(Arc::new(
                Tokens::load_or_create(&cfg.unsubscribe_key_file()).step("unsubscribe key")?,
            )),
            _ => None,
        };
        let bounces = verp.as_ref().map(|v| {
            Arc::new(BounceInbox {
                verp: v.clone(),
                classifier: classifier.clone(),
                suppression: cfg.suppression.clone(),
                log: log.clone(),
                unsubscribe: unsubscribe_tokens.clone(),
                on_complaint: Some({
                    let c = circuits.clone();
                    Arc::new(move |tenant: Option<&str>, campaign: Option<&str>| {
                        c.record(tenant, campaign, crate::shaping::breaker::Outcome::Complaint);
                    })
                }),
            })
        });
        Ok(Bulk { suppressions, classifier, verp, bounces, unsubscribe_tokens })
    }
}

/// The SMTP session policy from `[limits]`, `[relay]` and `[local]`.
fn session_config(cfg: &Config) -> SessionConfig {
    SessionConfig {
        hostname: cfg.hostname.clone(),
        max_message_size: cfg.limits.max_message_size as usize,
        max_recipients: cfg.limits.max_recipients,
        max_command_line: cfg.limits.max_command_line,
        max_text_line: cfg.limits.max_line_length,
        max_errors: cfg.limits.max_errors,
        max_recipients_per_session: cfg.limits.max_recipients_per_session,
        max_hops: cfg.limits.max_hops,
        recipient_overshoot_limit: cfg.limits.recipient_overshoot_limit,
        forbid_unauth_pipelining: cfg.limits.forbid_unauth_pipelining,
        relay_networks: cfg.relay.networks.clone(),
        local_domains: cfg
            .local
            .domains
            .iter()
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
            .collect::<HashSet<_>>(),
        postmaster: cfg
            .local
            .postmaster
            .as_deref()
            .and_then(|p| crate::proto::smtp::address::parse_path(p, false).ok().flatten()),
        ..SessionConfig::default()
    }
}

/// AUTH users and the brute-force lockout.
fn load_auth(cfg: &Config) -> Result<Arc<crate::auth::AuthContext>, ServerError> {
    let users = crate::auth::users::Users::load(&cfg.users_file()).step("loading users")?;
    tracing::info!(users = users.len(), file = %cfg.users_file().display(), "AUTH users loaded");
    Ok(Arc::new(crate::smtp::AuthContext {
        verifications: tokio::sync::Semaphore::new(cfg.auth.max_concurrent_verifications.max(1)),
        users: Arc::new(std::sync::RwLock::new(Arc::new(users))),
        lockout: crate::auth::lockout::Lockout::new(crate::auth::lockout::LockoutPolicy {
            max_failures_per_ip: cfg.auth.max_failures_per_ip,
            max_failures_per_user: cfg.auth.max_failures_per_user,
            window: cfg.auth.lockout,
            lock_users: cfg.auth.lock_users,
            failure_delay: cfg.auth.failure_delay,
        }),
    }))
}

type MailAuth =
    (Arc<crate::mailauth::SigningService>, Option<Arc<crate::mailauth::verify::Verifier>>);

/// DKIM keys (`[[dkim]]`) and the verifier of inbound mail (`[verify]`).
fn load_mailauth(cfg: &Config) -> Result<MailAuth, ServerError> {
    let dkim = Arc::new(
        crate::mailauth::SigningService::new(cfg.dkim.clone()).step("loading [[dkim]] keys")?,
    );
    for d in &cfg.dkim {
        metrics::DKIM_SIGNATURES.with_label_values(&[&d.domain, d.algorithm.as_str()]);
        tracing::info!(domain = %d.domain, selector = %d.selector, algorithm = d.algorithm.as_str(), default = d.default, "DKIM key loaded");
    }
    let verifier = match cfg.verify.scope {
        crate::mailauth::verify::Scope::Off => None,
        _ => Some(Arc::new(
            crate::mailauth::verify::Verifier::new(
                &cfg.dns.nameservers,
                &cfg.hostname,
                cfg.verify.dmarc_reject,
                cfg.verify.spf_fail,
                cfg.verify.timeout,
            )
            .step("starting the SPF/DMARC verifier")?,
        )),
    };
    Ok((dkim, verifier))
}

/// Binds one listener's socket and records its address (for `sluice.addresses.json`).
async fn bind(
    l: &crate::config::Listener,
    bound: &mut BTreeMap<String, Vec<SocketAddr>>,
) -> Result<TcpListener, ServerError> {
    let sock = TcpListener::bind(l.address)
        .await
        .step_with(|| format!("binding {} listener on {}", l.name(), l.address))?;
    let addr = sock.local_addr().step("listener address")?;
    tracing::info!(listener = %l.name(), %addr, mode = ?l.mode, "listening");
    bound.entry(l.name()).or_default().push(addr);
    Ok(sock)
}

/// Binds every `[[listener]]` and starts its accept loop.
async fn bind_listeners(
    cfg: &Config,
    intake: &Front,
    stop: &CancellationToken,
    sessions: &TaskTracker,
    bound: &mut BTreeMap<String, Vec<SocketAddr>>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ServerError> {
    let mut accept_loops = Vec::new();
    for l in cfg.listener.iter().filter(|l| l.mode.is_smtp()) {
        let sock = bind(l, bound).await?;
        let ctx = listener_context(cfg, intake, l);
        accept_loops.push(tokio::spawn(listener::serve(sock, ctx, stop.clone(), sessions.clone())));
    }
    Ok(accept_loops)
}

/// The POP3 and IMAP listeners (`mode = "pop3" | "pop3s" | "imap" | "imaps"`), serving the
/// local mailboxes.
async fn bind_mailbox_listeners(
    cfg: &Config,
    intake: &Front,
    stop: &CancellationToken,
    sessions: &TaskTracker,
    bound: &mut BTreeMap<String, Vec<SocketAddr>>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ServerError> {
    let mut accept_loops = Vec::new();
    for l in cfg.listener.iter().filter(|l| !l.mode.is_smtp()) {
        let what = || format!("{} listener on {}", l.name(), l.address);
        let mailboxes = intake
            .mailboxes
            .clone()
            .ok_or("[local] domains with mailboxes = true")
            .step_with(|| format!("{} needs mailboxes", what()))?;
        let implicit_tls = matches!(l.mode, ListenerMode::Pop3s | ListenerMode::Imaps);
        if implicit_tls && intake.tls.is_none() {
            return Err("no [tls] certificate").step_with(what);
        }
        let sock = bind(l, bound).await?;
        let ctx = mailbox_listener_context(cfg, intake, l, mailboxes);
        let (stop, sessions) = (stop.clone(), sessions.clone());
        accept_loops.push(if matches!(l.mode, ListenerMode::Pop3 | ListenerMode::Pop3s) {
            metrics::POP3_SESSIONS.with_label_values(&[&l.name()]);
            tokio::spawn(crate::pop3::serve(sock, ctx, stop, sessions))
        } else {
            metrics::IMAP_SESSIONS.with_label_values(&[&l.name()]);
            tokio::spawn(crate::imap::serve(sock, ctx, stop, sessions))
        });
    }
    Ok(accept_loops)
}

/// What one POP3 or IMAP listener's sessions share.
fn mailbox_listener_context(
    cfg: &Config,
    intake: &Front,
    l: &crate::config::Listener,
    mailboxes: Arc<crate::local::Mailboxes>,
) -> Arc<crate::mailbox_listener::MailboxListener> {
    Arc::new(crate::mailbox_listener::MailboxListener {
        name: l.name(),
        hostname: cfg.hostname.clone(),
        tls: intake.tls.clone(),
        implicit_tls: matches!(l.mode, ListenerMode::Pop3s | ListenerMode::Imaps),
        plaintext_ok: cfg.auth.plaintext_on_loopback && l.address.ip().is_loopback(),
        auth: intake.auth.clone(),
        mailboxes,
        limits: intake.limits.clone(),
        max_append: cfg.limits.max_message_size as usize,
        max_folders: cfg.local.max_folders,
        proxy: l.proxy(),
    })
}

/// A POP3 or IMAP listener's context (the first mailbox listener of `cfg`), for tests that
/// drive sessions in-process.
#[cfg(test)]
pub(crate) async fn test_mailbox_listener(
    cfg: &Config,
) -> Arc<crate::mailbox_listener::MailboxListener> {
    let spool = open_spool(cfg, TestHooks::default()).await.expect("spool");
    let intake = Front::load(cfg, spool).expect("intake");
    let l = cfg.listener.iter().find(|l| !l.mode.is_smtp()).expect("a mailbox listener");
    let mailboxes = intake.mailboxes.clone().expect("mailbox domains");
    mailbox_listener_context(cfg, &intake, l, mailboxes)
}

/// What one listener's sessions share: the intake plus the listener's mode and limits.
fn listener_context(
    cfg: &Config,
    intake: &Front,
    l: &crate::config::Listener,
) -> Arc<ListenerContext> {
    let has_users = !intake.auth.users.read().unwrap_or_else(|e| e.into_inner()).is_empty();
    let submission = l.mode != ListenerMode::Smtp;
    let listener_session = Arc::new(SessionConfig {
        starttls: intake.tls.is_some() && l.mode != ListenerMode::Submissions,
        // AUTH is offered wherever users exist (on `smtp` too, for relaying clients), and
        // submission demands it even before any user exists.
        auth: has_users || submission,
        auth_required: submission,
        auth_needs_tls: !(cfg.auth.plaintext_on_loopback && l.address.ip().is_loopback()),
        ..(*intake.session).clone()
    });
    Arc::new(ListenerContext {
        name: l.name(),
        session: listener_session,
        intake: intake.path.clone(),
        command_timeout: cfg.limits.command_timeout,
        data_timeout: cfg.limits.data_timeout,
        limits: intake.limits.clone(),
        budget: intake.budget.clone(),
        tls: intake.tls.clone(),
        implicit_tls: l.mode == ListenerMode::Submissions,
        greet_pause: cfg.limits.greet_pause,
        min_data_rate: cfg.limits.min_data_rate,
        auth: intake.auth.clone(),
        verify: l.mode == ListenerMode::Smtp,
        proxy: l.proxy(),
    })
}

/// An SMTP listener's context on a spool in `cfg.data_dir`, for tests that drive sessions
/// in-process (over an in-memory pipe, on tokio's paused clock).
#[cfg(test)]
pub(crate) async fn test_listener(cfg: &Config) -> Arc<ListenerContext> {
    let spool = open_spool(cfg, TestHooks::default()).await.expect("spool");
    let intake = Front::load(cfg, spool).expect("intake");
    listener_context(cfg, &intake, &cfg.listener[0])
}

/// The dispatcher that hands due recipients to their next hop (idle with `[delivery] enabled =
/// false`).
fn start_delivery(
    cfg: &Config,
    intake: &Front,
    stop: &CancellationToken,
    deliveries: &TaskTracker,
) -> Result<(Arc<Dispatcher>, tokio::task::JoinHandle<()>), ServerError> {
    let routes = Routes::new(cfg.route.clone(), cfg.delivery.tls).step("loading [[route]]")?;
    let egress = cfg.egress().map_err(|(key, msg)| format!("{key}: {msg}")).step("[[source]]")?;
    for s in egress.sources() {
        if let Some(a) = s.address {
            let socket = if a.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
            socket.and_then(|sock| sock.bind(SocketAddr::new(a, 0))).step_with(|| {
                format!("binding source {:?} to {a} (not an address of this host?)", s.name)
            })?;
        }
    }
    // Warming sources' day counters, saved every second while they change and at shutdown.
    let warmup = (!egress.warmups().is_empty()).then(|| {
        let plans = egress.warmups().clone();
        let w = Arc::new(crate::egress::warmup::Warmup::open(
            &cfg.data_dir.join("warmup.json"),
            plans,
            crate::spool::unix_millis(),
        ));
        deliveries.spawn(crate::state_file::keep_saved(
            w.clone(),
            "warm-up counters",
            stop.clone(),
        ));
        w
    });
    let dns =
        crate::dns::HickoryResolver::new(&cfg.dns.nameservers).step("starting the DNS resolver")?;
    let dns: Arc<dyn crate::dns::Resolver> = Arc::new(dns);
    let recorder = Recorder {
        spool: intake.spool.clone(),
        schedule: RetrySchedule::new(cfg.queue.retry.clone(), cfg.queue.max_age),
        helo: cfg.hostname.clone(),
        wake: intake.stored.clone(),
        log: intake.log.clone(),
        delay_notice: cfg.queue.delay_notice,
        classifier: intake.classifier.clone(),
        circuits: Some(intake.circuits.clone()),
        verp: intake.verp.clone(),
        suppress: intake.suppressions.clone().map(|list| crate::queue::outcome::SuppressFeed {
            list,
            config: cfg.suppression.clone(),
        }),
        labels: Arc::new(crate::domain_labels::DomainLabels::new(
            &cfg.metrics.domains,
            cfg.metrics.domain_labels,
            cfg.metrics.promote_after,
        )),
        tenant_labels: intake.tenant_labels.clone(),
    };
    let dispatcher = Dispatcher::new(
        recorder,
        DispatcherConfig {
            mailboxes: intake.mailboxes.clone(),
            routes,
            dns,
            mx_port: cfg.delivery.mx_port,
            timeouts: Timeouts {
                connect: cfg.delivery.connect_timeout,
                command: cfg.delivery.command_timeout,
                data_end: cfg.delivery.data_timeout,
            },
            scan_interval: cfg.delivery.scan_interval,
            shaping: cfg.shaping.clone(),
            concurrency: cfg.delivery.concurrency,
            egress: Arc::new(egress),
            sites: cfg.sites().map_err(|(key, msg)| format!("{key}: {msg}")).step("[[site]]")?,
            mx_rollup: cfg.delivery.mx_rollup,
            warmup,
            tenants: cfg.tenant_classes(),
            bulk_share: cfg.delivery.bulk_share,
            automation: cfg
                .automation_rules()
                .map_err(|(key, msg)| format!("{key}: {msg}"))
                .step("[[automation]]")?,
        },
    );
    if let Some(m) = intake.mailboxes.clone() {
        tokio::spawn(count_mailboxes(m, stop.clone()));
    }
    let task = if cfg.delivery.enabled {
        tokio::spawn(dispatcher.clone().run(stop.clone(), deliveries.clone()))
    } else {
        tracing::warn!("[delivery] enabled = false: mail is accepted and kept, not delivered");
        tokio::spawn(async {})
    };
    Ok((dispatcher, task))
}

/// Counts the mailboxes at start and every minute (`sluice_mailbox_bytes`, and quota usage
/// for RCPT), until shutdown.
async fn count_mailboxes(m: Arc<crate::local::Mailboxes>, stop: CancellationToken) {
    loop {
        let counted = m.clone();
        let _ = tokio::task::spawn_blocking(move || counted.count_all()).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
        }
    }
}

/// The admin HTTP listener (metrics, health, queue API), behind its token guard.
async fn start_admin(
    cfg: &Config,
    intake: &Front,
    dispatcher: Arc<Dispatcher>,
    unsubscribe: Option<Arc<crate::bounce::unsubscribe::Links>>,
    stop: &CancellationToken,
    sessions: &TaskTracker,
    bound: &mut BTreeMap<String, Vec<SocketAddr>>,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let admin_sock = TcpListener::bind(cfg.admin.address)
        .await
        .step_with(|| format!("binding admin on {}", cfg.admin.address))?;
    let admin_addr = admin_sock.local_addr().step("admin address")?;
    tracing::info!(addr = %admin_addr, "admin HTTP (metrics, health, queue API)");
    bound.insert("admin".into(), vec![admin_addr]);
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    let (spool, suppressions) = (intake.spool.clone(), intake.suppressions.clone());
    let injector = cfg.inject.enabled.then(|| {
        Arc::new(crate::inject::Injector {
            intake: intake.path.clone(),
            config: cfg.inject.clone(),
            hostname: cfg.hostname.clone(),
            unsubscribe,
            render_slots: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            max_message_size: cfg.limits.max_message_size as usize,
            egress: dispatcher.egress.clone(),
        })
    });
    let token = admin::auth::ensure_admin_token(&cfg.admin_token_file()).step("admin token")?;
    let guard = Arc::new(
        admin::auth::Guard::new(
            &token,
            cfg.tokens_file(),
            admin_addr.port(),
            &cfg.admin.hostnames,
            cfg.admin.metrics_need_token,
        )
        .step("loading API tokens")?,
    );
    let app = admin::router(admin::AdminContext {
        spool,
        dispatcher,
        stopping: stop.clone(),
        guard,
        suppressions,
        injector,
    });
    Ok(tokio::spawn(crate::net::http::serve(
        admin_sock,
        cfg.admin.proxy(),
        None,
        app,
        cfg.http.clone(),
        "admin",
        stop.clone(),
        sessions.clone(),
    )))
}

/// Waits for sessions and deliveries to finish, at most `shutdown_timeout`.
async fn drain(cfg: &Config, sessions: &TaskTracker, deliveries: &TaskTracker) {
    sessions.close();
    deliveries.close();
    let drained = async {
        sessions.wait().await;
        deliveries.wait().await;
    };
    if tokio::time::timeout(cfg.shutdown_timeout, drained).await.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            deliveries = deliveries.len(),
            "shutdown timeout: stopping with work in flight (it stays queued)"
        );
    }
}

/// SIGHUP: re-read the TLS certificate, the users file and the DKIM keys. Open sessions keep
/// what they have; a file that fails to load leaves the old one in place.
async fn reload_on_sighup(
    tls: Option<Arc<crate::tls::ReloadableServer>>,
    auth: Arc<crate::smtp::AuthContext>,
    users_file: PathBuf,
    dkim: Arc<crate::mailauth::SigningService>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        if let Some(t) = &tls {
            match t.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the old certificate")
                }
            }
        }
        match crate::auth::users::Users::load(&users_file) {
            Ok(u) => {
                tracing::info!(users = u.len(), "SIGHUP: users reloaded");
                *auth.users.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(u);
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: users reload failed; keeping the old list")
            }
        }
        match dkim.reload() {
            Ok(keys) => tracing::info!(keys, "SIGHUP: DKIM keys reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: DKIM key reload failed; keeping the old keys")
            }
        }
    }
}
