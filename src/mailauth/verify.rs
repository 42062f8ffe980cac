//! Verification of inbound mail: SPF (RFC 7208, MAIL FROM or the HELO name for the null
//! reverse-path, by [`super::spf`]), every DKIM signature
//! (RFC 6376), the ARC chain (RFC 8617) and DMARC (RFC 7489) alignment and policy, reported in one
//! `Authentication-Results` field (RFC 8601) whose authserv-id is sluice's host name.
//!
//! DNS goes through a hickory resolver on the configured nameservers (its cache honours TTLs);
//! a DNS failure is a `temperror`, which never rejects mail.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator,
    SpfResult,
};
use serde::Deserialize;

use crate::metrics;
use crate::units::duration;

/// Which messages are verified (on `smtp` listeners; submission is authenticated instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Messages with at least one recipient in `[local] domains`.
    Local,
    /// Every message, relayed ones too.
    All,
    Off,
}

/// What a DMARC failure under `p=reject` leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmarcAction {
    /// 550 5.7.1 at the end of DATA.
    Reject,
    /// Accept, marked for the recipient's Junk folder (`X-Sluice-Quarantine: dmarc`).
    Quarantine,
    /// Accept; the result is in Authentication-Results only.
    Tag,
}

/// What an SPF `fail` (`-all`) leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpfAction {
    /// 550 5.7.23 at the end of DATA.
    Reject,
    Tag,
}

/// What to do with a verified message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Accept,
    /// Accept, with the quarantine mark.
    Quarantine,
    /// Refuse: DMARC `p=reject` failed.
    RejectDmarc,
    /// Refuse: SPF failed.
    RejectSpf,
}

/// The outcome of verifying one message.
#[derive(Debug)]
pub struct Verdict {
    /// `Authentication-Results: ...` (and the quarantine mark), each field ending in CRLF.
    pub headers: String,
    pub disposition: Disposition,
    pub spf: &'static str,
    pub dmarc: &'static str,
}

pub struct Verifier {
    auth: MessageAuthenticator,
    hostname: String,
    dmarc_reject: DmarcAction,
    spf_fail: SpfAction,
    /// One deadline for all of a message's lookups (`[verify] timeout`).
    timeout: std::time::Duration,
}

/// What the SMTP transaction tells the verifier.
pub struct Envelope<'a> {
    pub client_ip: IpAddr,
    pub helo: &'a str,
    /// MAIL FROM address, empty for the null reverse-path.
    pub mail_from: &'a str,
}

impl Verifier {
    /// `nameservers` empty = the system resolver configuration.
    pub fn new(
        nameservers: &[SocketAddr],
        hostname: &str,
        dmarc_reject: DmarcAction,
        spf_fail: SpfAction,
        timeout: std::time::Duration,
    ) -> Result<Verifier, String> {
        let auth = if nameservers.is_empty() {
            MessageAuthenticator::new_system_conf()
        } else {
            let config = crate::dns::resolver_config(nameservers);
            MessageAuthenticator::new(config, crate::dns::resolver_options())
        }
        .map_err(|e| format!("DNS resolver for verification: {e}"))?;
        Ok(Verifier { auth, hostname: hostname.to_string(), dmarc_reject, spf_fail, timeout })
    }

    /// The authserv-id of our Authentication-Results fields.
    pub fn authserv_id(&self) -> &str {
        &self.hostname
    }

    /// `check_host` (RFC 7208 4) of the MAIL FROM identity, or of `postmaster@<HELO>` for the null
    /// reverse-path: what RFC 7208's test suite specifies.
    pub async fn spf_mail_from(&self, env: &Envelope<'_>) -> SpfResult {
        let dns = super::spf::HickorySpf(self.auth.resolver());
        super::spf::check_mail_from(&dns, env.client_ip, env.helo, env.mail_from).await
    }

    /// Verifies `message` (headers and body as received). SPF, DKIM and ARC are looked up at
    /// once, then DMARC (which needs their results), all within one deadline: a dead resolver
    /// costs `[verify] timeout`, not its timeouts one lookup after another (clients give up
    /// at 30 s and send the message again).
    pub async fn verify(&self, env: &Envelope<'_>, message: &[u8]) -> Verdict {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let params = spf_parameters(env, &self.hostname);
        let parsed = AuthenticatedMessage::parse(message);
        let first = async {
            // SPF by our RFC 7208 evaluator (mail-auth's departs from the RFC test suite),
            // reported through mail-auth's output type for DMARC and Authentication-Results.
            let spf = async {
                let dns = super::spf::HickorySpf(self.auth.resolver());
                let r =
                    super::spf::check_mail_from(&dns, env.client_ip, env.helo, env.mail_from).await;
                let domain = env.mail_from.rsplit_once('@').map_or(env.helo, |(_, d)| d);
                mail_auth::SpfOutput::new(domain.to_ascii_lowercase()).with_result(r)
            };
            let signatures = async {
                match &parsed {
                    Some(msg) => {
                        Some(tokio::join!(self.auth.verify_dkim(msg), self.auth.verify_arc(msg)))
                    }
                    None => None,
                }
            };
            tokio::join!(spf, signatures)
        };
        let Ok((spf, signatures)) = tokio::time::timeout_at(deadline, first).await else {
            return self.timed_out(env);
        };
        let mut results = AuthenticationResults::new(&self.hostname);
        let spf_label = spf_label(spf.result());
        count("spf", spf_label);
        let (Some(msg), Some((dkim, arc))) = (&parsed, signatures) else {
            // Not a parsable message: SPF is all there is to say.
            results.set_spf_result(&spf, &params);
            return self.verdict(results, spf.result(), "none", Policy::None);
        };
        for d in &dkim {
            count("dkim", dkim_label(d.result()));
        }
        if !matches!(arc.result(), DkimResult::None) {
            count("arc", dkim_label(arc.result()));
        }
        let mail_from_domain = match env.mail_from.rsplit_once('@') {
            Some((_, d)) => d,
            None => env.helo,
        };
        let dmarc = tokio::time::timeout_at(
            deadline,
            self.auth.verify_dmarc(DmarcParameters::new(msg, &dkim, mail_from_domain, &spf)),
        )
        .await;
        results.set_dkim_results(&dkim, msg.first_from_address());
        results.set_spf_result(&spf, &params);
        if !matches!(arc.result(), DkimResult::None) {
            results.set_arc_result(&arc, env.client_ip);
        }
        let Ok(dmarc) = dmarc else {
            count("dmarc", "temperror");
            let mut v = self.verdict(results, spf.result(), "temperror", Policy::None);
            // Our own field, so appending its last entry is safe.
            if v.headers.ends_with("\r\n") {
                v.headers.truncate(v.headers.len() - 2);
                v.headers
                    .push_str(";\r\n\tdmarc=temperror (DNS past the verification deadline)\r\n");
            }
            return v;
        };
        let dmarc_label = match dmarc.result() {
            DmarcResult::Pass => "pass",
            DmarcResult::Fail(_) => "fail",
            DmarcResult::TempError(_) => "temperror",
            DmarcResult::PermError(_) => "permerror",
            DmarcResult::None => "none",
        };
        count("dmarc", dmarc_label);
        results.set_dmarc_result(&dmarc);
        let policy = if dmarc_label == "fail" {
            self.sampled(dmarc.domain(), dmarc.policy()).await
        } else {
            Policy::None
        };
        self.verdict(results, spf.result(), dmarc_label, policy)
    }

    /// Nothing came back before the deadline: every result is `temperror`, and the message
    /// is accepted (a temporary DNS failure never refuses mail).
    fn timed_out(&self, env: &Envelope<'_>) -> Verdict {
        for method in ["spf", "dkim", "dmarc"] {
            count(method, "temperror");
        }
        tracing::warn!(ip = %env.client_ip, "verification DNS past [verify] timeout: temperror");
        let from = match env.mail_from {
            "" => format!("smtp.helo={}", env.helo),
            m => format!("smtp.mailfrom={m}"),
        };
        let headers = format!(
            "Authentication-Results: {};\r\n\tspf=temperror (DNS past the verification deadline) {from};\r\n\tdkim=temperror;\r\n\tdmarc=temperror\r\n",
            self.hostname
        );
        Verdict { headers, disposition: Disposition::Accept, spf: "temperror", dmarc: "temperror" }
    }

    fn verdict(
        &self,
        results: AuthenticationResults<'_>,
        spf: SpfResult,
        dmarc: &'static str,
        policy: Policy,
    ) -> Verdict {
        use mail_auth::headers::HeaderWriter;
        let mut headers = results.to_header();
        let disposition = match (policy, self.dmarc_reject) {
            (Policy::Reject, DmarcAction::Reject) => Disposition::RejectDmarc,
            (Policy::Reject, DmarcAction::Quarantine) | (Policy::Quarantine, _)
                if self.dmarc_reject != DmarcAction::Tag =>
            {
                Disposition::Quarantine
            }
            _ if spf == SpfResult::Fail && self.spf_fail == SpfAction::Reject => {
                Disposition::RejectSpf
            }
            _ => Disposition::Accept,
        };
        if disposition == Disposition::Quarantine {
            headers.push_str("X-Sluice-Quarantine: dmarc\r\n");
        }
        Verdict { headers, disposition, spf: spf_label(spf), dmarc }
    }

    /// RFC 7489 6.6.4: with `pct` below 100, the policy applies to that share of failing
    /// messages and the next weaker one to the rest. (mail-auth follows DMARCbis, which dropped
    /// `pct`, so the tag is read here; the record is in the resolver's cache already.)
    async fn sampled(&self, from_domain: &str, policy: Policy) -> Policy {
        if !matches!(policy, Policy::Reject | Policy::Quarantine) {
            return policy;
        }
        let Some(pct) = self.dmarc_pct(from_domain).await else { return policy };
        if pct >= 100 || (pct > 0 && random_percent() < pct) {
            return policy;
        }
        match policy {
            Policy::Reject => Policy::Quarantine,
            _ => Policy::None,
        }
    }

    /// The `pct=` of the DMARC record that applies to `domain` (its own, or the nearest parent's).
    async fn dmarc_pct(&self, domain: &str) -> Option<u32> {
        let mut d = domain.trim_end_matches('.');
        for _ in 0..8 {
            let name = format!("_dmarc.{d}.");
            if let Ok(lookup) = self.auth.resolver().txt_lookup(name.as_str()).await {
                for r in lookup.answers() {
                    let mail_auth::hickory_resolver::proto::rr::RData::TXT(t) = &r.data else {
                        continue;
                    };
                    let text: String =
                        t.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect();
                    if text.trim_start().starts_with("v=DMARC1") {
                        return super::key::parse_tags(&text)
                            .into_iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case("pct"))
                            .and_then(|(_, v)| v.parse().ok());
                    }
                }
            }
            d = d.split_once('.')?.1;
        }
        None
    }
}

/// What Authentication-Results reports SPF for: the MAIL FROM identity (`postmaster@<HELO>`
/// for the null reverse-path), as [`super::spf::check_mail_from`] evaluates it.
fn spf_parameters<'a>(env: &Envelope<'a>, host: &'a str) -> SpfParameters<'a> {
    SpfParameters::mail_from(env.client_ip, env.helo, host, env.mail_from)
}

fn spf_label(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_label(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Fail(_) => "fail",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::TempError(_) => "temperror",
        DkimResult::PermError(_) => "permerror",
        DkimResult::None => "none",
    }
}

fn count(method: &str, result: &str) {
    metrics::AUTH_RESULTS.with_label_values(&[method, result]).inc();
}

/// 0..100, for pct sampling (no cryptographic quality needed).
fn random_percent() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() % 100) as u32
}

/// Verification of mail received on `smtp` listeners (submission is authenticated instead).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// "local" (mail with a recipient in `[local] domains`), "all", or "off".
    #[serde(default = "default_verify_scope")]
    pub scope: crate::mailauth::verify::Scope,
    /// DMARC failure under `p=reject`: "reject" (550 5.7.1), "quarantine" or "tag".
    #[serde(default = "default_dmarc_reject")]
    pub dmarc_reject: crate::mailauth::verify::DmarcAction,
    /// SPF `fail`: "tag" (Authentication-Results only) or "reject" (550 5.7.23).
    #[serde(default = "default_spf_fail")]
    pub spf_fail: crate::mailauth::verify::SpfAction,
    /// All DNS lookups of one message's verification end within this; past it the results
    /// not in yet are `temperror` (which never refuses mail).
    #[serde(default = "default_verify_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

fn default_verify_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_verify_scope() -> crate::mailauth::verify::Scope {
    crate::mailauth::verify::Scope::Local
}

fn default_dmarc_reject() -> crate::mailauth::verify::DmarcAction {
    crate::mailauth::verify::DmarcAction::Reject
}

fn default_spf_fail() -> crate::mailauth::verify::SpfAction {
    crate::mailauth::verify::SpfAction::Tag
}

crate::units::default_from_serde!(VerifyConfig);
