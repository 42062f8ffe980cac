//! `sluice suppression ...`: through the running daemon's admin API, or on the list file
//! directly when no daemon answers (under a shared lock on the data dir, so never beside one).

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{http_request, load_config_with};
use sluice::bounce::suppression::{self, NewEntry, Suppressions};
use sluice::config::Config;
use sluice::spool::lock::{DataDirLock, LockMode};

pub enum ListSource {
    Daemon(String, Option<String>),
    Offline { list: Suppressions, _lock: DataDirLock },
}

/// What to do.
pub enum Action {
    List,
    Add { address: String, reason: String },
    Remove { address: String },
    Import { csv: String },
    Export,
}

impl ListSource {
    pub fn connect(cfg: &Config, admin: Option<&str>) -> anyhow::Result<ListSource> {
        let base = format!(
            "http://{}",
            admin.map_or_else(|| cfg.admin.address.to_string(), str::to_string)
        );
        if http_request("GET", &format!("{base}/health"), None, None).is_ok() {
            let token = sluice::admin::auth::read_admin_token(&cfg.admin_token_file());
            return Ok(ListSource::Daemon(base, token));
        }
        if admin.is_some() {
            bail!("no sluice admin API answers at {base}");
        }
        std::fs::create_dir_all(&cfg.data_dir)?;
        let lock = DataDirLock::acquire(&cfg.data_dir, LockMode::Shared).with_context(|| {
            format!("no daemon answers at {base}, and the list cannot be opened beside the one that runs")
        })?;
        let path = cfg.suppression_file();
        eprintln!("note: no daemon answers at {base}; using {} directly", path.display());
        Ok(ListSource::Offline { list: Suppressions::open(&path)?, _lock: lock })
    }

    /// Runs `action` for `tenant`; returns what to print.
    pub fn run(&self, action: Action, tenant: Option<&str>) -> anyhow::Result<String> {
        match self {
            ListSource::Daemon(base, token) => daemon(base, token.as_deref(), action, tenant),
            ListSource::Offline { list, .. } => offline(list, action, tenant),
        }
    }
}

fn query(tenant: Option<&str>) -> String {
    tenant.map_or_else(String::new, |t| format!("?tenant={}", urlencode(t)))
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn daemon(
    base: &str,
    token: Option<&str>,
    action: Action,
    tenant: Option<&str>,
) -> anyhow::Result<String> {
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let url = |path: &str| format!("{base}/api/suppression{path}");
    Ok(match action {
        Action::List => {
            let list: Vec<Value> =
                serde_json::from_slice(&http_request("GET", &url(&query(tenant)), token, None)?)?;
            render_list(&list)
        }
        Action::Add { address, reason } => {
            let body = json!({ "address": address, "tenant": tenant, "reason": reason });
            let b = serde_json::to_vec(&body)?;
            text(http_request("POST", &url(""), token, Some(("application/json", &b)))?)
        }
        Action::Remove { address } => text(http_request(
            "DELETE",
            &url(&format!("/{}{}", urlencode(&address), query(tenant))),
            token,
            None,
        )?),
        Action::Import { csv } => text(http_request(
            "POST",
            &url(&format!("/import{}", query(tenant))),
            token,
            Some(("text/csv", csv.as_bytes())),
        )?),
        Action::Export => {
            text(http_request("GET", &url(&format!("/export{}", query(tenant))), token, None)?)
        }
    })
}

fn offline(list: &Suppressions, action: Action, tenant: Option<&str>) -> anyhow::Result<String> {
    Ok(match action {
        Action::List => {
            let entries = serde_json::to_value(list.list(tenant)?)?;
            render_list(entries.as_array().map(Vec::as_slice).unwrap_or(&[]))
        }
        Action::Add { address, reason } => {
            let reason = reason.parse().map_err(anyhow::Error::msg)?;
            let e = NewEntry { address, tenant: tenant.map(str::to_string), reason, detail: None };
            format!("{}\n", json!({ "added": list.add(&[e])? }))
        }
        Action::Remove { address } => {
            if !list.remove(tenant, &address)? {
                bail!("{address} is not on the list");
            }
            format!("{}\n", json!({ "removed": address }))
        }
        Action::Import { csv } => {
            let entries = suppression::from_csv(&csv, tenant).map_err(anyhow::Error::msg)?;
            let n = entries.len();
            format!("{}\n", json!({ "imported": n, "new": list.add(&entries)? }))
        }
        Action::Export => suppression::to_csv(&list.list(tenant)?),
    })
}

fn render_list(list: &[Value]) -> String {
    let mut out = String::new();
    for e in list {
        out.push_str(&format!(
            "{:<40}  {:<12}  {:<18}  {}\n",
            e["address"].as_str().unwrap_or(""),
            e["tenant"].as_str().unwrap_or("(global)"),
            e["reason"].as_str().unwrap_or(""),
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(e["time"].as_u64().unwrap_or(0))
            )
        ));
    }
    out.push_str(&format!("{} address(es)\n", list.len()));
    out
}

/// `sluice suppression` from the command line's pieces.
pub fn command(
    config: Option<&std::path::Path>,
    data_dir: Option<std::path::PathBuf>,
    admin: Option<&str>,
    tenant: Option<&str>,
    action: Action,
) -> anyhow::Result<String> {
    let cfg = load_config_with(config, data_dir)?;
    ListSource::connect(&cfg, admin)?.run(action, tenant)
}
