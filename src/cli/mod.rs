//! `sluice queue ...`: asks the running daemon over its admin API; when no daemon answers, reads
//! the spool directly (read-only, rebuilt from the log, nothing modified).

pub mod suppression;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

use sluice::admin::message_json;
use sluice::config::Config;
use sluice::spool::lock::{DataDirLock, LockMode};
use sluice::spool::{LogSpool, Spool, SpoolOptions};

pub enum Source {
    /// The daemon's admin API: base URL and the admin token (from its token file).
    Daemon(String, Option<String>),
    /// The spool read directly, under a shared lock on the data dir (so never beside a daemon;
    /// held until dropped).
    Offline { spool: LogSpool, _lock: DataDirLock },
}

impl Source {
    /// The daemon at `admin` if it answers, else the spool under the config's data dir.
    pub fn connect(cfg: &Config, admin: Option<&str>) -> anyhow::Result<Source> {
        let base = format!(
            "http://{}",
            admin.map_or_else(|| cfg.admin.address.to_string(), str::to_string)
        );
        match http_bytes("GET", &format!("{base}/health"), None) {
            Ok(_) => {
                let token = sluice::admin::auth::read_admin_token(&cfg.admin_token_file());
                Ok(Source::Daemon(base, token))
            }
            Err(_) if admin.is_some() => bail!("no sluice admin API answers at {base}"),
            Err(_) => {
                let dir = cfg.data_dir.join("spool");
                if !dir.exists() {
                    bail!("no daemon answers at {base} and there is no spool at {}", dir.display());
                }
                let lock = DataDirLock::acquire(&cfg.data_dir, LockMode::Shared).with_context(|| {
                    format!("no daemon answers at {base}, and the spool cannot be read beside the one that runs")
                })?;
                eprintln!(
                    "note: no daemon answers at {base}; reading the spool at {} directly",
                    dir.display()
                );
                let spool =
                    LogSpool::open(SpoolOptions { read_only: true, ..SpoolOptions::new(dir) })?;
                Ok(Source::Offline { spool, _lock: lock })
            }
        }
    }

    pub fn list(&self) -> anyhow::Result<Vec<Value>> {
        match self {
            Source::Daemon(base, token) => {
                Ok(serde_json::from_str(&http_get(&format!("{base}/api/queue"), token)?)?)
            }
            Source::Offline { spool: s, .. } => Ok(s.list().iter().map(message_json).collect()),
        }
    }

    pub fn show(&self, id: &str) -> anyhow::Result<Value> {
        match self {
            Source::Daemon(base, token) => {
                Ok(serde_json::from_str(&http_get(&format!("{base}/api/queue/{id}"), token)?)?)
            }
            Source::Offline { spool: s, .. } => {
                let id = id.parse().context("bad queue id")?;
                s.get(id).map(|e| message_json(&e)).context("no such message")
            }
        }
    }

    /// The stored message (trace header and body), as it will be sent.
    pub fn message(&self, id: &str) -> anyhow::Result<Vec<u8>> {
        match self {
            Source::Daemon(base, token) => {
                http_bytes("GET", &format!("{base}/api/queue/{id}/message"), token.as_deref())
            }
            Source::Offline { spool: s, .. } => {
                let id = id.parse().context("bad queue id")?;
                Ok(s.read_message(id)?.to_vec())
            }
        }
    }

    /// A GET of the daemon's API (only the running daemon answers it).
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let Source::Daemon(base, token) = self else {
            bail!("this command needs the running daemon (its admin API did not answer)");
        };
        Ok(serde_json::from_str(&http_get(&format!("{base}{path}"), token)?)?)
    }

    /// A change (flush, delete, bounce): only the running daemon may change its queue.
    pub fn change(&self, method: &str, path: &str) -> anyhow::Result<Value> {
        let Source::Daemon(base, token) = self else {
            bail!("this command needs the running daemon (its admin API did not answer)");
        };
        Ok(serde_json::from_str(&http_send(method, &format!("{base}{path}"), token)?)?)
    }

    /// The dispatcher's destinations (only the running daemon has them), busiest first.
    pub fn destinations(&self, limit: usize) -> anyhow::Result<Vec<Value>> {
        let Source::Daemon(base, token) = self else {
            bail!("this command needs the running daemon (its admin API did not answer)");
        };
        let url = format!("{base}/api/queue/destinations?limit={limit}");
        Ok(serde_json::from_str(&http_get(&url, token)?)?)
    }

    pub fn stats(&self) -> anyhow::Result<Value> {
        match self {
            Source::Daemon(base, token) => {
                Ok(serde_json::from_str(&http_get(&format!("{base}/api/queue/stats"), token)?)?)
            }
            Source::Offline { spool: s, .. } => Ok(serde_json::to_value(s.stats())?),
        }
    }
}

fn http_get(url: &str, token: &Option<String>) -> anyhow::Result<String> {
    http_send("GET", url, token)
}

fn http_send(method: &str, url: &str, token: &Option<String>) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&http_bytes(method, url, token.as_deref())?).into_owned())
}

fn http_bytes(method: &str, url: &str, token: Option<&str>) -> anyhow::Result<Vec<u8>> {
    http_request(method, url, token, None)
}

/// One request to the admin API, with the admin token when there is one and a body (content
/// type, bytes) for POST.
fn http_request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> anyhow::Result<Vec<u8>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(300)))
        .http_status_as_error(false)
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {t}"));
    let auth = auth.as_deref().unwrap_or("");
    let sent = match (method, body) {
        ("POST", Some((ct, b))) => {
            agent.post(url).header("Authorization", auth).header("Content-Type", ct).send(b)
        }
        ("POST", None) => agent.post(url).header("Authorization", auth).send_empty(),
        ("DELETE", _) => agent.delete(url).header("Authorization", auth).call(),
        _ => agent.get(url).header("Authorization", auth).call(),
    };
    let mut resp = sent.with_context(|| format!("{method} {url}"))?;
    let status = resp.status();
    let body = resp.body_mut().with_config().limit(1 << 30).read_to_vec()?;
    if !status.is_success() {
        bail!("{url}: {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(body)
}

pub fn print_list(list: &[Value], json: bool) {
    if json {
        for m in list {
            println!("{m}");
        }
        return;
    }
    println!("{:<16}  {:>9}  {:<24}  {:<30}  recipients", "id", "size", "received", "sender");
    for m in list {
        let rcpts = m["recipients"].as_array().map(|r| {
            r.iter()
                .map(|r| {
                    format!(
                        "{} ({})",
                        r["address"].as_str().unwrap_or(""),
                        r["state"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        });
        let sender = m["sender"].as_str().unwrap_or("");
        println!(
            "{:<16}  {:>9}  {:<24}  {:<30}  {}",
            m["id"].as_str().unwrap_or(""),
            m["size"],
            m["received_at"].as_str().unwrap_or(""),
            if sender.is_empty() { "<>" } else { sender },
            rcpts.unwrap_or_default()
        );
    }
    println!("{} message(s)", list.len());
}

pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

/// The configuration with `--data-dir` applied, as every subcommand that reads the data dir
/// takes it.
pub fn load_config_with(path: Option<&Path>, data_dir: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut cfg = load_config(path)?;
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    Ok(cfg)
}

/// Writes a secret (a private key) readable by its owner only. `replace = false` refuses to
/// overwrite an existing file (a DKIM key in use must not vanish by mistake).
pub fn write_private(path: &Path, bytes: &[u8], replace: bool) -> anyhow::Result<()> {
    let written = match replace {
        true => sluice::secret_file::replace(path, bytes),
        false => sluice::secret_file::create_new(path, bytes),
    };
    written.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// `sluice queue destinations`: one line per destination (or JSON lines).
pub fn print_destinations(rows: &[Value], json: bool) {
    if json {
        for r in rows {
            println!("{r}");
        }
        return;
    }
    println!(
        "{:<40} {:<10} {:<8} {:>7} {:>9} {:>8}  {:<14} {:<24} warm-up",
        "destination", "site", "source", "ready", "conns", "rate/s", "state", "shaping"
    );
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    for r in rows {
        let mut dest = text(&r["destination"]);
        if dest.len() > 40 {
            let mut cut = 37;
            while !dest.is_char_boundary(cut) {
                cut -= 1;
            }
            dest = format!("{}...", &dest[..cut]);
        }
        let rate = r["rate"].as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
        let conns = format!("{}/{}", r["connections"], r["connection_limit"]);
        let mut state = text(&r["state"]);
        if let Some(ms) = r["paused_ms"].as_u64().or(r["suspended_ms"].as_u64()) {
            state = format!("{state} {}s", ms.div_ceil(1000));
        }
        // The rule holding the source × site, and its connection limit's share.
        let shaping = match (r["shaping_rule"].as_str(), r["shaping_factor"].as_f64()) {
            (Some(rule), Some(f)) => format!("{rule} x{f:.2}"),
            _ => "-".into(),
        };
        let warm = match (r["warmup_day"].as_u64(), r["warmup_cap"].as_u64()) {
            (Some(d), Some(c)) => format!("day {d} ({c}/site)"),
            _ => "-".into(),
        };
        println!(
            "{dest:<40} {:<10} {:<8} {:>7} {conns:>9} {rate:>8}  {state:<14} {shaping:<24} {warm}",
            text(&r["site"]),
            text(&r["source"]),
            r["ready"],
        );
        if let Some(e) = r["last_error"].as_str() {
            println!("{:<40} last error: {e}", "");
        }
    }
}
