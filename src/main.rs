//! The `sluice` command line.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cli::Source;
use sluice::config::Config;

/// mimalloc rather than glibc's malloc: a million queued envelopes are small long-lived
/// allocations made on several threads, where glibc's per-thread arenas fragment (measured with
/// loadtest/queue.sh; README, "Performance").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A high-throughput mail transfer agent that never loses acknowledged mail"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded defaults without --config: SMTP on 127.0.0.1:2525, admin HTTP on
    /// 127.0.0.1:8025, spool under ./data, relaying only from loopback).
    Serve {
        /// Configuration file (TOML); see config/sluice.toml for every key.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides `data_dir` from the configuration.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Check a configuration file and exit: errors name the file, line and key.
    CheckConfig {
        /// The file to check (default: the embedded defaults).
        file: Option<PathBuf>,
    },
    /// Print the metrics catalogue: every metric with its type, labels and help (markdown; README's
    /// table is this).
    Metrics {
        /// One JSON object per metric and line: name, type, labels, help.
        #[arg(long)]
        json: bool,
    },
    /// Inspect the queue (asks the running daemon; reads the spool directly if none runs).
    Queue {
        /// Configuration file, for the admin address and data_dir.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Overrides `data_dir` from the configuration (for reading the spool offline).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        /// Admin API address of the daemon (default: from the configuration).
        #[arg(long, global = true)]
        admin: Option<String>,
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Manage AUTH users (the users file; a running daemon picks changes up on SIGHUP).
    /// Passwords are read from standard input (one line), never from the command line.
    User {
        /// Configuration file, for the users file location.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Overrides `data_dir` from the configuration (where the users file is by default).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// API tokens for the admin listener (the admin token itself is made on first start in
    /// `<data_dir>/admin.token`).
    Token {
        /// Configuration file, for the data dir.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Overrides `data_dir` from the configuration.
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The suppression list: addresses never mailed again (asks the running daemon; uses the
    /// list file directly if none runs).
    Suppression {
        /// Configuration file, for the admin address and data_dir.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Overrides `data_dir` from the configuration.
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        /// Admin API address of the daemon (default: from the configuration).
        #[arg(long, global = true)]
        admin: Option<String>,
        /// The tenant whose list to use (default: the global list; for `list` and `export`:
        /// every entry).
        #[arg(long, global = true)]
        tenant: Option<String>,
        #[command(subcommand)]
        command: SuppressionCommand,
    },
    /// A tenant's reputation circuit breaker (asks the running daemon).
    Tenant {
        /// Configuration file, for the admin address.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Admin API address of the daemon (default: from the configuration).
        #[arg(long, global = true)]
        admin: Option<String>,
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// A campaign's reputation circuit breaker (asks the running daemon).
    Campaign {
        /// Configuration file, for the admin address.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Admin API address of the daemon (default: from the configuration).
        #[arg(long, global = true)]
        admin: Option<String>,
        #[command(subcommand)]
        command: CampaignCommand,
    },
    /// DKIM keys: make one and print its DNS record, or check the published record.
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// TLS helpers.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Close the tenant's open circuit breaker: its held mail is sent, new mail accepted.
    Resume { name: String },
    /// The open circuit breakers (tenants and campaigns), one JSON object per line.
    Circuits,
}

#[derive(Subcommand)]
enum CampaignCommand {
    /// Close the campaign's open circuit breaker (of every tenant, unless --tenant).
    Resume {
        name: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password comes from stdin.
    Add {
        name: String,
        /// A MAIL FROM address (`user@domain`) or domain (`@domain`) the user may use; repeat
        /// for several. None: any sender.
        #[arg(long = "sender")]
        senders: Vec<String>,
        /// The mailbox quota of this user (`2GiB`, `500MB`; `0`: none), over `[local] quota`.
        #[arg(long)]
        quota: Option<String>,
        /// The tenant this user's mail is sent for (suppression, VERP, metrics, quotas).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Set a user's sending limits (`0` removes one); over them MAIL and RCPT get 452 4.7.1.
    Limit {
        name: String,
        #[arg(long)]
        max_messages_per_hour: Option<u64>,
        #[arg(long)]
        max_recipients_per_day: Option<u64>,
        /// Messages per interval, as `[shaping]` (`100/1m`).
        #[arg(long)]
        rate: Option<String>,
    },
    /// Bind a user to a tenant (`-` for none).
    Tenant { name: String, tenant: String },
    /// Set a user's mailbox quota (`2GiB`; `0`: none; `default`: back to `[local] quota`).
    Quota { name: String, quota: String },
    /// Change a user's password (from stdin).
    Passwd { name: String },
    /// Remove a user.
    Del { name: String },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a named token; it is printed once, as the last word of the output, and only its
    /// SHA-256 is stored (`<data_dir>/tokens.toml`). A running daemon accepts it at once.
    Add {
        name: String,
        #[arg(long, value_enum)]
        scope: sluice::admin::auth::Scope,
        /// A tenant this `inject` token may send for; repeat for several. None: any tenant.
        #[arg(long = "tenant")]
        tenants: Vec<String>,
    },
    /// The named tokens: name, scope, creation time and tenants (never the tokens or hashes).
    List,
    /// Remove a named token; a running daemon refuses it from its next request on.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum SuppressionCommand {
    /// List entries (address, tenant, reason, time).
    List,
    /// Add an address.
    Add {
        address: String,
        /// A bounce category, complaint, unsubscribe or manual.
        #[arg(long, default_value = "manual")]
        reason: String,
    },
    /// Remove an address.
    Remove { address: String },
    /// Add every address of FILE (CSV as `export` writes it, or one address per line; `-`:
    /// stdin) in one transaction.
    Import { file: PathBuf },
    /// Print every entry as CSV (address,tenant,reason,time).
    Export,
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Write a new private key to FILE (mode 0600; an existing file is never overwritten) and
    /// print the TXT record to publish and the [[dkim]] entry to add.
    Keygen {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        #[arg(long, value_enum)]
        algorithm: KeyAlgorithm,
        /// RSA key size: 2048, 3072 or 4096.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Look up `<selector>._domainkey.<domain>` through the configured resolver and say whether
    /// it publishes the key of the matching [[dkim]] entry (exit 1 if not).
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KeyAlgorithm {
    Ed25519,
    Rsa,
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Write a self-signed certificate and key for development (cert.pem, key.pem, key 0600).
    SelfSigned {
        /// Host names (and IP addresses) the certificate is for.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Days of validity from now (it starts an hour ago, for clock skew).
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// List queued messages.
    List {
        /// One JSON object per message and line: id, message_id, sender, recipients (address,
        /// state, attempts, next_attempt, last_reply), size, received_at.
        #[arg(long)]
        json: bool,
    },
    /// Show one message's envelope and recipient states as JSON.
    Show { id: String },
    /// Print the stored message (trace header and body) as it will be sent.
    Cat { id: String },
    /// Queue counters as JSON.
    Stats,
    /// Where mail is going: each destination (site, source) with its ready work, connections,
    /// rate, back-off state and warm-up day, busiest first. Needs the running daemon.
    Destinations {
        /// One JSON object per destination and line.
        #[arg(long)]
        json: bool,
        /// At most this many destinations.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Retry queued recipients now (all, or one recipient domain). Needs the running daemon.
    Flush {
        #[arg(long)]
        domain: Option<String>,
    },
    /// Delete a message without bouncing it. Needs the running daemon.
    Delete { id: String },
    /// Bounce a message's queued recipients to its sender (DSN), then delete it. Needs the
    /// running daemon.
    Bounce { id: String },
}

fn dkim(command: DkimCommand) -> anyhow::Result<ExitCode> {
    use sluice::mailauth::{DkimAlgorithm, DkimKey, key};
    match command {
        DkimCommand::Keygen { domain, selector, algorithm, bits, out } => {
            let algorithm = match algorithm {
                KeyAlgorithm::Ed25519 => DkimAlgorithm::Ed25519Sha256,
                KeyAlgorithm::Rsa => DkimAlgorithm::RsaSha256,
            };
            let pem = key::generate(algorithm, bits)?;
            let record = DkimKey::from_pem(pem.as_bytes(), algorithm)?.dns_record();
            cli::write_private(&out, pem.as_bytes(), false)?;
            let domain = domain.trim_end_matches('.');
            println!("wrote {} ({}, mode 0600)", out.display(), algorithm.as_str());
            println!("publish this TXT record:");
            println!("{selector}._domainkey.{domain}. IN TXT {}", key::zone_strings(&record));
            println!("and add to the configuration:");
            println!(
                "[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nalgorithm = \"{}\"\nkey = \"{}\"",
                algorithm.as_str(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        DkimCommand::Check { config, domain, selector } => {
            let cfg = cli::load_config_with(config.as_deref(), None)?;
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            let entry = cfg
                .dkim
                .iter()
                .find(|d| d.domain.eq_ignore_ascii_case(&domain) && d.selector == selector)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "no [[dkim]] entry for {selector}._domainkey.{domain} in the configuration"
                    )
                })?;
            let key = DkimKey::load(&entry.key, entry.algorithm)?;
            let name = format!("{selector}._domainkey.{domain}");
            let dns = sluice::dns::HickoryResolver::new(&cfg.dns.nameservers)
                .map_err(anyhow::Error::msg)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let records = match rt.block_on(sluice::dns::Resolver::txt(&dns, &name)) {
                Ok(r) => r,
                Err(sluice::dns::DnsError::NoSuchDomain(_)) => Vec::new(),
                Err(e) => {
                    println!("{name}: lookup failed: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let keys: Vec<&String> = records.iter().filter(|r| r.contains("p=")).collect();
            let verdict = match keys.as_slice() {
                [] => Err("no DKIM key record published".to_string()),
                [one] => key.check_record(one),
                _ => Err(format!(
                    "{} key records published; verifiers fail with several",
                    keys.len()
                )),
            };
            match verdict {
                Ok(()) => {
                    println!("{name}: ok, publishes the key of {}", entry.key.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(why) => {
                    println!("{name}: MISMATCH: {why}");
                    println!("publish: {name}. IN TXT {}", key::zone_strings(&key.dns_record()));
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, data_dir } => serve(config, data_dir),
        Command::CheckConfig { file } => check_config(file),
        Command::Metrics { json } => {
            if json {
                for m in sluice::metrics::catalogue() {
                    println!("{}", serde_json::to_string(&m)?);
                }
            } else {
                print!("{}", sluice::metrics::catalogue_markdown());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::User { config, data_dir, command } => user(config, data_dir, command),
        Command::Token { config, data_dir, command } => {
            let cfg = cli::load_config_with(config.as_deref(), data_dir)?;
            let file = cfg.tokens_file();
            use sluice::admin::auth;
            match command {
                TokenCommand::Add { name, scope, tenants } => {
                    let token = auth::add_token(&file, &name, scope, &tenants)?;
                    let scope = scope.as_str();
                    println!("added token {name:?} (scope {scope}) to {}: {token}", file.display());
                }
                TokenCommand::List => {
                    println!("{:<24} {:<8} {:<20} tenants", "name", "scope", "created");
                    for t in auth::list_tokens(&file)? {
                        let created = humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.created),
                        );
                        let tenants =
                            if t.tenants.is_empty() { "-".into() } else { t.tenants.join(",") };
                        println!("{:<24} {:<8} {created:<20} {tenants}", t.name, t.scope.as_str());
                    }
                }
                TokenCommand::Revoke { name } => {
                    auth::revoke_token(&file, &name)?;
                    println!("revoked token {name:?} in {}", file.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dkim { command } => dkim(command),
        Command::Suppression { config, data_dir, admin, tenant, command } => {
            use cli::suppression::Action;
            let action = match command {
                SuppressionCommand::List => Action::List,
                SuppressionCommand::Add { address, reason } => Action::Add { address, reason },
                SuppressionCommand::Remove { address } => Action::Remove { address },
                SuppressionCommand::Import { file } => Action::Import {
                    csv: if file.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin())?
                    } else {
                        std::fs::read_to_string(&file)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
                    },
                },
                SuppressionCommand::Export => Action::Export,
            };
            let out = cli::suppression::command(
                config.as_deref(),
                data_dir,
                admin.as_deref(),
                tenant.as_deref(),
                action,
            )?;
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Tls { command: TlsCommand::SelfSigned { hosts, dir, days } } => {
            let (cert, key) = sluice::tls::self_signed(&hosts, days)?;
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("cert.pem"), cert)?;
            cli::write_private(&dir.join("key.pem"), key.as_bytes(), true)?;
            println!(
                "wrote {0}/cert.pem and {0}/key.pem (self-signed for {1}); use them as\n[tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"",
                dir.display(),
                hosts.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue { config, data_dir, admin, command } => {
            queue(config, data_dir, admin, command)
        }
        Command::Tenant { config, admin, command } => {
            let path = match command {
                TenantCommand::Resume { name } => {
                    format!("/api/tenant/{}/resume", cli::suppression::urlencode(&name))
                }
                TenantCommand::Circuits => "/api/circuits".into(),
            };
            circuit(config, admin, &path)
        }
        Command::Campaign { config, admin, command: CampaignCommand::Resume { name, tenant } } => {
            let mut path = format!("/api/campaign/{}/resume", cli::suppression::urlencode(&name));
            if let Some(t) = tenant {
                path.push_str(&format!("?tenant={}", cli::suppression::urlencode(&t)));
            }
            circuit(config, admin, &path)
        }
    }
}

/// `sluice tenant ...` / `sluice campaign ...`: one call to the daemon's circuit API.
fn circuit(config: Option<PathBuf>, admin: Option<String>, path: &str) -> anyhow::Result<ExitCode> {
    let cfg = cli::load_config_with(config.as_deref(), None)?;
    let source = Source::connect(&cfg, admin.as_deref())?;
    let answer = match path {
        "/api/circuits" => source.get(path)?,
        _ => source.change("POST", path)?,
    };
    match answer {
        serde_json::Value::Array(open) => open.iter().for_each(|t| println!("{t}")),
        other => println!("{other}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    init_logging();
    let cfg = cli::load_config_with(config.as_deref(), data_dir)?;
    // Test-only switches exist only in binaries built with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    let hooks = sluice::server::TestHooks::from_env();
    #[cfg(not(feature = "test-hooks"))]
    let hooks = sluice::server::TestHooks::default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(sluice::server::run(cfg, shutdown_signal(), hooks))?;
    Ok(ExitCode::SUCCESS)
}

fn check_config(file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let cfg = match &file {
        Some(f) => Config::load(f)?,
        None => Config::default(),
    };
    for w in cfg.warnings() {
        eprintln!("warning: {w}");
    }
    let keys = sluice::mailauth::DkimSigner::load(&cfg.dkim)?;
    if !keys.is_empty() {
        println!("{} DKIM key(s) loaded", keys.len());
    }
    println!("{}: ok", file.map_or("embedded defaults".into(), |f| f.display().to_string()));
    Ok(ExitCode::SUCCESS)
}

fn user(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    command: UserCommand,
) -> anyhow::Result<ExitCode> {
    let cfg = cli::load_config_with(config.as_deref(), data_dir)?;
    let path = cfg.users_file();
    let mut ed = sluice::auth::users::UsersFileEditor::open(&path)?;
    let what = match command {
        UserCommand::Add { name, senders, quota, tenant } => {
            ed.add(&name, &read_password()?, senders, quota)?;
            ed.set_tenant(&name, tenant)?;
            format!("added user {name:?}")
        }
        UserCommand::Tenant { name, tenant } => {
            ed.set_tenant(&name, (tenant != "-").then(|| tenant.clone()))?;
            format!("bound {name:?} to tenant {tenant:?}")
        }
        UserCommand::Limit { name, max_messages_per_hour, max_recipients_per_day, rate } => {
            ed.set_limits(&name, max_messages_per_hour, max_recipients_per_day, rate)?;
            format!("set the sending limits of {name:?}")
        }
        UserCommand::Quota { name, quota } => {
            let q = (quota != "default").then_some(quota);
            let text =
                format!("set the quota of {name:?} to {}", q.as_deref().unwrap_or("default"));
            ed.set_quota(&name, q)?;
            text
        }
        UserCommand::Passwd { name } => {
            ed.passwd(&name, &read_password()?)?;
            format!("changed the password of {name:?}")
        }
        UserCommand::Del { name } => {
            ed.del(&name)?;
            format!("removed user {name:?}")
        }
    };
    ed.save()?;
    println!("{what} in {} (send SIGHUP to a running sluice)", path.display());
    Ok(ExitCode::SUCCESS)
}

fn queue(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    admin: Option<String>,
    command: QueueCommand,
) -> anyhow::Result<ExitCode> {
    let cfg = cli::load_config_with(config.as_deref(), data_dir)?;
    let source = Source::connect(&cfg, admin.as_deref())?;
    match command {
        QueueCommand::List { json } => cli::print_list(&source.list()?, json),
        QueueCommand::Show { id } => {
            println!("{}", serde_json::to_string_pretty(&source.show(&id)?)?)
        }
        QueueCommand::Cat { id } => {
            use std::io::Write;
            std::io::stdout().write_all(&source.message(&id)?)?;
        }
        QueueCommand::Flush { domain } => {
            let path = match domain {
                Some(d) => format!("/api/queue/flush?domain={d}"),
                None => "/api/queue/flush".into(),
            };
            println!("{}", source.change("POST", &path)?);
        }
        QueueCommand::Delete { id } => {
            println!("{}", source.change("DELETE", &format!("/api/queue/{id}"))?)
        }
        QueueCommand::Bounce { id } => {
            println!("{}", source.change("POST", &format!("/api/queue/{id}/bounce"))?)
        }
        QueueCommand::Stats => println!("{}", serde_json::to_string_pretty(&source.stats()?)?),
        QueueCommand::Destinations { json, limit } => {
            cli::print_destinations(&source.destinations(limit)?, json)
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line from stdin (a terminal echoes it; pipe it in scripts: `printf '%s\n' "$PW" | ...`).
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        anyhow::bail!("empty password (it is read from standard input)");
    }
    Ok(pw)
}

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

/// SIGTERM or SIGINT: drain and stop.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers the process still stops on the default disposition.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
