//! VERP: a return path per message (`bounces+<id><tag>@<domain>`), so an asynchronous bounce
//! (a DSN that arrives later, from the recipient's system) maps back to the message, its
//! recipient, tenant and campaign; and the processing of such bounces when they arrive.
//!
//! The local part stays short (RFC 5321 4.5.3.1.1: 64 octets): the queue id and a 48-bit HMAC
//! tag, so nobody can attribute bounces to messages we did not send. What the id stands for is
//! kept in the suppression list's file (table `verp`), written with the messages of an injection
//! window in one transaction, and pruned after `[verp] keep`.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::classify::{Category, Classifier};
use super::suppression::{NewEntry, Reason, SuppressionError, Suppressions};
use crate::proto::smtp::Reply;
use crate::spool::QueueId;
use crate::units::duration;

/// queue id -> [`Sent`] (postcard).
const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("verp");
/// Hex digits of the tag (48 bits).
const TAG_HEX: usize = 12;

/// Who a VERP-tagged message was for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub recipient: String,
    pub tenant: Option<String>,
    pub campaign: Option<String>,
    /// Unix seconds.
    pub time: u64,
}

pub struct Verp {
    pub domain: String,
    pub local: String,
    key: hmac::Key,
    list: Arc<Suppressions>,
    keep_secs: u64,
}

impl Verp {
    pub fn new(
        domain: &str,
        local: &str,
        key: &[u8],
        list: Arc<Suppressions>,
        keep: std::time::Duration,
    ) -> Verp {
        Verp {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            local: local.to_string(),
            // A key of its own, derived from the configured secret.
            key: hmac::Key::new(
                hmac::HMAC_SHA256,
                hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), b"sluice verp").as_ref(),
            ),
            list,
            keep_secs: keep.as_secs(),
        }
    }

    fn tag(&self, id: QueueId) -> String {
        let t = hmac::sign(&self.key, &id.0.to_be_bytes());
        t.as_ref()[..TAG_HEX / 2].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The return path for message `id`.
    pub fn address(&self, id: QueueId) -> String {
        format!("{}+{:016x}{}@{}", self.local, id.0, self.tag(id), self.domain)
    }

    /// The message id an address of ours names (tag checked); None for anything else.
    pub fn parse(&self, address: &str) -> Option<QueueId> {
        let (local, domain) = address.rsplit_once('@')?;
        if !domain.trim_end_matches('.').eq_ignore_ascii_case(&self.domain) {
            return None;
        }
        let local = local.to_ascii_lowercase();
        let rest = local.strip_prefix(&self.local.to_ascii_lowercase())?.strip_prefix('+')?;
        // ASCII first: the byte slicing below must fall on character boundaries (SMTPUTF8
        // addresses reach here).
        if rest.len() != 16 + TAG_HEX || !rest.is_ascii() {
            return None;
        }
        let id = QueueId(u64::from_str_radix(&rest[..16], 16).ok()?);
        let want = self.tag(id);
        aws_lc_rs::constant_time::verify_slices_are_equal(want.as_bytes(), &rest.as_bytes()[16..])
            .ok()?;
        Some(id)
    }

    pub fn is_ours(&self, address: &str) -> bool {
        address
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.trim_end_matches('.').eq_ignore_ascii_case(&self.domain))
    }

    /// Remembers who messages were for, in one durable transaction; prunes old entries.
    /// Blocking: call it off the async threads.
    pub fn remember(&self, sent: &[(QueueId, Sent)]) -> Result<(), SuppressionError> {
        let store = |e: &dyn std::fmt::Display| SuppressionError::Store(e.to_string());
        let db = self.list.database();
        let w = db.begin_write().map_err(|e| store(&e))?;
        {
            let mut t = w.open_table(TABLE).map_err(|e| store(&e))?;
            for (id, s) in sent {
                let v = postcard::to_stdvec(s).map_err(|e| store(&e))?;
                t.insert(id.0, v.as_slice()).map_err(|e| store(&e))?;
            }
            // Ids grow with time: the oldest entries come first.
            let cutoff = crate::spool::unix_millis() / 1000 - self.keep_secs.min(u64::MAX / 2);
            let mut old = Vec::new();
            for item in t.iter().map_err(|e| store(&e))?.take(1000) {
                let (k, v) = item.map_err(|e| store(&e))?;
                match postcard::from_bytes::<Sent>(v.value()) {
                    Ok(s) if s.time >= cutoff => break,
                    _ => old.push(k.value()),
                }
            }
            for k in old {
                t.remove(k).map_err(|e| store(&e))?;
            }
        }
        w.commit().map_err(|e| store(&e))
    }

    pub fn recall(&self, id: QueueId) -> Option<Sent> {
        let r = self.list.database().begin_read().ok()?;
        let t = r.open_table(TABLE).ok()?;
        let v = t.get(id.0).ok()??;
        postcard::from_bytes(v.value()).ok()
    }
}

/// One failure a bounce reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    /// `Final-Recipient`, when the report names one.
    pub recipient: Option<String>,
    /// `Action: failed` (or a non-standard bounce, taken as a failure).
    pub failed: bool,
    /// The reply or status line the category comes from.
    pub diagnostic: String,
    pub category: Category,
}

/// Reads a bounce: the per-recipient fields of an RFC 3464 report, or (best effort, for the
/// many systems that send none) the first SMTP reply in its text.
pub fn read_bounce(message: &[u8], classifier: &Classifier) -> Vec<Reported> {
    let Some(msg) = mail_parser::MessageParser::new().parse(message) else { return Vec::new() };
    let report = msg.parts().find(|p| {
        p.is_content_type("message", "delivery-status")
            || p.is_content_type("message", "global-delivery-status")
    });
    if let Some(part) = report {
        let text = String::from_utf8_lossy(&part.decoded()).into_owned();
        return delivery_status(&text, classifier);
    }
    let text: String = msg.root().text_bodies().collect::<Vec<_>>().join("\n");
    match first_reply(&text) {
        Some(reply) => vec![Reported {
            recipient: None,
            failed: reply.code >= 500,
            diagnostic: reply.to_line(),
            category: classifier.classify_reply(&reply),
        }],
        None => Vec::new(),
    }
}

/// The recipient groups of a `message/delivery-status` body (RFC 3464 2.1: a per-message group,
/// then one per recipient, separated by blank lines; fields may be folded).
fn delivery_status(text: &str, classifier: &Classifier) -> Vec<Reported> {
    let unfolded = text.replace("\r\n", "\n").replace("\n ", " ").replace("\n\t", " ");
    let mut out = Vec::new();
    for group in unfolded.split("\n\n").skip(1) {
        let field = |name: &str| {
            group.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let Some(action) = field("Action") else { continue };
        let status = field("Status").unwrap_or_default();
        let diagnostic = field("Diagnostic-Code")
            .map(|d| d.split_once(';').map_or(d.clone(), |(_, v)| v.trim().to_string()));
        let reply = diagnostic.as_deref().and_then(first_reply).unwrap_or_else(|| {
            // No SMTP reply: the status code alone, in a reply of its class.
            let code = if status.starts_with('5') { 550 } else { 450 };
            let mut r = Reply::plain(code, diagnostic.clone().unwrap_or_default());
            if status.split('.').count() == 3 {
                r.enhanced = Some(status.clone().into());
            }
            r
        });
        out.push(Reported {
            recipient: field("Final-Recipient")
                .map(|r| r.split_once(';').map_or(r.clone(), |(_, a)| a.trim().to_string())),
            failed: action.eq_ignore_ascii_case("failed"),
            diagnostic: reply.to_line(),
            category: classifier.classify_reply(&reply),
        });
    }
    out
}

/// The first SMTP failure reply (`550 5.1.1 ...`, `550-...`) anywhere in `text`'s lines: a
/// 4xx/5xx code standing alone, followed by a space or a dash.
fn first_reply(text: &str) -> Option<Reply> {
    for line in text.lines() {
        let b = line.as_bytes();
        for i in 0..b.len().saturating_sub(2) {
            let alone = i == 0 || !b[i - 1].is_ascii_alphanumeric();
            let code = &b[i..i + 3];
            let after = b.get(i + 3).copied();
            if alone
                && matches!(code[0], b'4' | b'5')
                && code[1..].iter().all(u8::is_ascii_digit)
                && matches!(after, Some(b' ' | b'-') | None)
            {
                let rest = line.get(i + 4..).unwrap_or("");
                let code = &line[i..i + 3];
                let mut wire = bytes::BytesMut::from(format!("{code} {rest}\r\n").as_str());
                if let Ok(Some(r)) = crate::proto::smtp::client::parse_reply(&mut wire) {
                    return Some(r);
                }
            }
        }
    }
    None
}

/// The suppression entry a bounce calls for, if its category suppresses.
pub fn suppression_for(
    sent: &Sent,
    r: &Reported,
    config: &crate::bounce::suppression::SuppressionConfig,
) -> Option<NewEntry> {
    (r.failed && config.suppresses(sent.tenant.as_deref(), r.category)).then(|| NewEntry {
        address: sent.recipient.clone(),
        tenant: match config.scope {
            crate::bounce::suppression::SuppressionScope::Tenant => sent.tenant.clone(),
            crate::bounce::suppression::SuppressionScope::Global => None,
        },
        reason: Reason::Bounce(r.category),
        detail: Some(r.diagnostic.chars().take(300).collect()),
    })
}

/// Where mail to the bounce domain goes when it arrives over SMTP: bounces (read, classified,
/// logged, suppressing), complaints (ARF, RFC 5965) and mailto unsubscribes. It is not queued.
pub struct BounceInbox {
    pub verp: Arc<Verp>,
    pub classifier: Arc<Classifier>,
    pub suppression: crate::bounce::suppression::SuppressionConfig,
    pub log: crate::delivery_log::DeliveryLog,
    /// Checks the tokens of mailto unsubscribes (`[unsubscribe] enabled`).
    pub unsubscribe: Option<Arc<super::unsubscribe::Tokens>>,
    /// Told of each attributed complaint (tenant, campaign): the circuit breakers count them.
    pub on_complaint: Option<ComplaintHook>,
}

/// What a complaint is reported to: its message's tenant and campaign.
pub type ComplaintHook = Arc<dyn Fn(Option<&str>, Option<&str>) + Send + Sync>;

impl std::fmt::Debug for BounceInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BounceInbox")
            .field("suppression", &self.suppression)
            .finish_non_exhaustive()
    }
}

impl BounceInbox {
    /// Processes `message` for the bounce-domain recipients `rcpts`; suppression entries are
    /// durable when this returns Ok. Mail we cannot attribute is logged and dropped.
    pub async fn consume(
        self: &Arc<Self>,
        rcpts: &[String],
        message: bytes::Bytes,
    ) -> Result<(), SuppressionError> {
        let (this, rcpts) = (self.clone(), rcpts.to_vec());
        tokio::task::spawn_blocking(move || this.process(&rcpts, &message))
            .await
            .map_err(|e| SuppressionError::Store(e.to_string()))?
    }

    fn process(&self, rcpts: &[String], message: &[u8]) -> Result<(), SuppressionError> {
        let entries = match Kind::of(message) {
            Kind::Complaint(original) => self.complaint(&original),
            Kind::Unsubscribe(token) => self.unsubscribe(&token),
            Kind::Other => self.bounces(rcpts, message),
        };
        if entries.is_empty() {
            return Ok(());
        }
        self.verp.list.add(&entries)?;
        for n in &entries {
            let mut e = crate::delivery_log::LogEntry::new("suppressed", "-");
            e.recipient = Some(n.address.clone());
            e.category = Some(n.reason.as_str());
            e.tenant = n.tenant.clone();
            self.log.log(e);
        }
        Ok(())
    }

    fn unmatched(&self, what: &str) {
        crate::metrics::ASYNC_BOUNCES.with_label_values(&["unmatched"]).inc();
        let mut e = crate::delivery_log::LogEntry::new("bounce_unmatched", "-");
        e.recipient = Some(what.to_string());
        self.log.log(e);
    }

    /// A bounce for each VERP recipient: its line of the report, else the report's only one.
    fn bounces(&self, rcpts: &[String], message: &[u8]) -> Vec<NewEntry> {
        let reports = read_bounce(message, &self.classifier);
        let mut entries = Vec::new();
        for rcpt in rcpts {
            let sent = self.verp.parse(rcpt).and_then(|id| Some((id, self.verp.recall(id)?)));
            let Some((id, sent)) = sent else {
                self.unmatched(rcpt);
                continue;
            };
            // The report's line for this recipient; a report without a Final-Recipient (the
            // one line of a non-standard bounce) is taken as this recipient's, but one naming
            // someone else is not (a forged DSN must not suppress our recipient).
            let ours = crate::domain::canonical_address(&sent.recipient);
            let names = |r: &Reported| {
                r.recipient.as_deref().is_some_and(|a| crate::domain::canonical_address(a) == ours)
            };
            let mine = reports.iter().find(|r| names(r)).or(match reports.as_slice() {
                [only] if only.recipient.is_none() => Some(only),
                _ => None,
            });
            let Some(r) = mine else {
                if !reports.is_empty() {
                    self.unmatched(rcpt);
                }
                continue;
            };
            crate::metrics::ASYNC_BOUNCES.with_label_values(&[r.category.as_str()]).inc();
            let mut e = crate::delivery_log::LogEntry::new("bounce_received", id);
            e.recipient = Some(sent.recipient.clone());
            e.reply = Some(r.diagnostic.clone());
            e.category = Some(r.category.as_str());
            e.tenant = sent.tenant.clone();
            e.campaign = sent.campaign.clone();
            self.log.log(e);
            entries.extend(suppression_for(&sent, r, &self.suppression));
        }
        entries
    }

    /// An abuse report: the original's VERP return path names the message, hence the
    /// recipient who complained.
    fn complaint(&self, original: &str) -> Vec<NewEntry> {
        let found = original
            .split(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | ';' | ','))
            .find_map(|w| self.verp.parse(w).and_then(|id| Some((id, self.verp.recall(id)?))));
        let Some((id, sent)) = found else {
            self.unmatched("complaint");
            return Vec::new();
        };
        crate::metrics::COMPLAINTS.inc();
        let mut e = crate::delivery_log::LogEntry::new("complaint", id);
        e.recipient = Some(sent.recipient.clone());
        e.tenant = sent.tenant.clone();
        e.campaign = sent.campaign.clone();
        self.log.log(e);
        if let Some(hook) = &self.on_complaint {
            hook(sent.tenant.as_deref(), sent.campaign.as_deref());
        }
        vec![NewEntry {
            address: sent.recipient,
            tenant: match self.suppression.scope {
                crate::bounce::suppression::SuppressionScope::Tenant => sent.tenant,
                crate::bounce::suppression::SuppressionScope::Global => None,
            },
            reason: Reason::Complaint,
            detail: Some("abuse report (ARF)".into()),
        }]
    }

    /// `Subject: unsubscribe TOKEN` to the mailto address of `List-Unsubscribe`.
    fn unsubscribe(&self, token: &str) -> Vec<NewEntry> {
        match self.unsubscribe.as_ref().and_then(|t| t.verify(token)) {
            Some((tenant, address)) => vec![NewEntry {
                address,
                tenant,
                reason: Reason::Unsubscribe,
                detail: Some("mailto".into()),
            }],
            None => {
                self.unmatched("unsubscribe");
                Vec::new()
            }
        }
    }
}

/// What a message to the bounce domain is.
enum Kind {
    /// An ARF report (RFC 5965): the original message or its header, as text.
    Complaint(String),
    /// A mailto unsubscribe: the token from the Subject.
    Unsubscribe(String),
    /// A bounce (or something we will try to read as one).
    Other,
}

impl Kind {
    fn of(message: &[u8]) -> Kind {
        let Some(msg) = mail_parser::MessageParser::new().parse(message) else {
            return Kind::Other;
        };
        if msg.parts().any(|p| p.is_content_type("message", "feedback-report")) {
            let original = msg
                .parts()
                .find(|p| {
                    p.is_content_type("message", "rfc822")
                        || p.is_content_type("text", "rfc822-headers")
                })
                .map(|p| String::from_utf8_lossy(&p.decoded()).into_owned())
                .unwrap_or_default();
            return Kind::Complaint(original);
        }
        let subject = msg.root().subject().unwrap_or("").trim();
        match subject.split_once(char::is_whitespace) {
            Some((word, token)) if word.eq_ignore_ascii_case("unsubscribe") => {
                Kind::Unsubscribe(token.trim().to_string())
            }
            _ => Kind::Other,
        }
    }
}

/// VERP (README, "VERP and asynchronous bounces").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerpConfig {
    #[serde(default)]
    pub enabled: bool,
    /// The bounce domain: sluice accepts mail for it (point its MX here).
    #[serde(default)]
    pub domain: String,
    /// The local part before `+`.
    #[serde(default = "default_verp_local")]
    pub local: String,
    /// Tenants whose injected mail gets VERP return paths (empty: all injected mail).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// How long a message's VERP address is remembered.
    #[serde(default = "default_verp_keep", deserialize_with = "duration")]
    pub keep: Duration,
}

fn default_verp_local() -> String {
    "bounces".into()
}

fn default_verp_keep() -> Duration {
    Duration::from_secs(30 * 86_400)
}

impl VerpConfig {
    pub fn applies_to(&self, tenant: Option<&str>) -> bool {
        self.enabled
            && (self.tenants.is_empty()
                || tenant.is_some_and(|t| self.tenants.iter().any(|x| x == t)))
    }
}

crate::units::default_from_serde!(VerpConfig);

#[cfg(test)]
mod tests {
    use super::*;

    fn verp() -> (tempfile::TempDir, Verp) {
        let dir = tempfile::tempdir().unwrap();
        let list = Arc::new(Suppressions::open(&dir.path().join("s.redb")).unwrap());
        let v = Verp::new(
            "Bounces.Example.com.",
            "bounces",
            &[3u8; 32],
            list,
            std::time::Duration::from_secs(86400),
        );
        (dir, v)
    }

    #[test]
    fn addresses_round_trip_and_reject_forgeries() {
        let (_d, v) = verp();
        let a = v.address(QueueId(0x0006_6199_0000_0001));
        assert!(a.starts_with("bounces+00066199000000"), "{a}");
        assert!(a.split('@').next().unwrap().len() <= 64, "RFC 5321 local part limit");
        assert_eq!(v.parse(&a), Some(QueueId(0x0006_6199_0000_0001)));
        assert_eq!(v.parse(&a.to_uppercase()), Some(QueueId(0x0006_6199_0000_0001)));
        let other = a.replace("0001", "0002");
        assert_eq!(v.parse(&other), None, "another id with this tag");
        assert_eq!(v.parse("bounces@bounces.example.com"), None);
        // 28 bytes but not 28 ASCII characters: refused, never a panic.
        let cut = format!("bounces+{}é{}@bounces.example.com", "0".repeat(15), "0".repeat(11));
        assert_eq!(v.parse(&cut), None);
        assert_eq!(v.parse(&a.replace("bounces.example.com", "example.org")), None);
    }

    #[test]
    fn remembered_messages_are_recalled() {
        let (_d, v) = verp();
        let sent = Sent {
            recipient: "ann@example.org".into(),
            tenant: Some("acme".into()),
            campaign: Some("c1".into()),
            time: crate::spool::unix_millis() / 1000,
        };
        v.remember(&[(QueueId(7), sent.clone())]).unwrap();
        assert_eq!(v.recall(QueueId(7)), Some(sent));
        assert_eq!(v.recall(QueueId(8)), None);
    }

    fn dsn(final_recipient: &str) -> String {
        format!(
            "From: MAILER-DAEMON@mx.example.org\r\nSubject: failure\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b\r\n\
             Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n\
             Final-Recipient: rfc822; {final_recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n--b--\r\n"
        )
    }

    /// Issue #22: a DSN sent to one recipient's VERP address but naming another address is
    /// not applied to that recipient, and no report downgrades an unsubscribe to a bounce.
    #[test]
    fn a_report_naming_someone_else_is_not_applied() {
        let (_d, v) = verp();
        let v = Arc::new(v);
        let inbox = BounceInbox {
            verp: v.clone(),
            classifier: Arc::new(Classifier::default()),
            suppression: crate::bounce::suppression::SuppressionConfig {
                enabled: true,
                categories: Category::ALL.to_vec(),
                scope: crate::bounce::suppression::SuppressionScope::Global,
                check_rcpt: true,
                tenant: Default::default(),
            },
            log: crate::delivery_log::DeliveryLog::disabled(),
            unsubscribe: None,
            on_complaint: None,
        };
        let now = crate::spool::unix_millis() / 1000;
        let sent = |r: &str| Sent { recipient: r.into(), tenant: None, campaign: None, time: now };
        v.remember(&[
            (QueueId(1), sent("ann@example.org")),
            (QueueId(2), sent("bob@example.org")),
            (QueueId(3), sent("carl@example.org")),
        ])
        .unwrap();
        // A report naming someone else, to carl's VERP address: carl is not suppressed.
        inbox.process(&[v.address(QueueId(3))], dsn("boss@example.org").as_bytes()).unwrap();
        assert!(v.list.check(None, "carl@example.org").is_none(), "applied to carl");
        v.list
            .add(&[NewEntry {
                address: "ann@example.org".into(),
                tenant: None,
                reason: Reason::Unsubscribe,
                detail: None,
            }])
            .unwrap();
        let to_ann = v.address(QueueId(1));
        inbox.process(std::slice::from_ref(&to_ann), dsn("boss@example.org").as_bytes()).unwrap();
        assert_eq!(v.list.check(None, "ann@example.org").unwrap().reason, Reason::Unsubscribe);
        assert!(v.list.check(None, "boss@example.org").is_none());
        inbox.process(&[to_ann], dsn("Ann@Example.org").as_bytes()).unwrap();
        assert_eq!(
            v.list.check(None, "ann@example.org").unwrap().reason,
            Reason::Unsubscribe,
            "an unsubscribe is never downgraded to a bounce"
        );
        // Bob's own report (his address quoted, as some MTAs write it) suppresses him.
        inbox.process(&[v.address(QueueId(2))], dsn("\"bob\"@example.org").as_bytes()).unwrap();
        let bob = v.list.check(None, "bob@example.org").expect("bob suppressed");
        assert!(matches!(bob.reason, Reason::Bounce(_)), "{:?}", bob.reason);
    }

    #[test]
    fn rfc3464_reports_and_plain_bounces_are_read() {
        let c = Classifier::default();
        let dsn = "From: MAILER-DAEMON@mx.example.org\r\nTo: x\r\nSubject: failure\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n\
            --B\r\nContent-Type: text/plain\r\n\r\nIt failed.\r\n\
            --B\r\nContent-Type: message/delivery-status\r\n\r\n\
            Reporting-MTA: dns; mx.example.org\r\n\r\n\
            Final-Recipient: rfc822; ann@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\
            Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does\r\n not exist.\r\n\r\n\
            Final-Recipient: rfc822; bob@example.org\r\nAction: delayed\r\nStatus: 4.2.2\r\n\
            --B--\r\n";
        let got = read_bounce(dsn.as_bytes(), &c);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].recipient.as_deref(), Some("ann@example.org"));
        assert!(got[0].failed);
        assert_eq!(got[0].category, Category::InvalidRecipient, "{got:?}");
        assert!(!got[1].failed);
        assert_eq!(got[1].category, Category::Quota);

        let plain = "From: postmaster@old.example\r\nSubject: Undeliverable\r\n\r\n\
            Sorry, we could not deliver your message.\r\n\r\n  <full@example.org>: host said: 552 5.2.2 Mailbox full\r\n";
        let got = read_bounce(plain.as_bytes(), &c);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].failed, got[0].category), (true, Category::Quota), "{got:?}");
        assert!(read_bounce(b"Subject: hi\r\n\r\nnothing here\r\n", &c).is_empty());
    }
}
