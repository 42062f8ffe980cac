//! Bounce classification: every failed or deferred delivery gets a [`Category`] that says why,
//! so senders can tell a dead address (suppress it) from a block (fix the reputation) from a
//! full mailbox (try later).
//!
//! Replies are classified by rules: regular expressions on the RFC 3463 enhanced code, the
//! three-digit reply code and the reply text, tried in order, first match wins. The shipped rules
//! (`config/bounce_rules.toml`, compiled in) come after the operator's own (`[bounce] rules`), so
//! an operator extends or overrides them without copying them. Failures that are not replies
//! (DNS, connections, expiry) have a fixed category.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use regex::Regex;
use serde::Deserialize;

use crate::delivery_error::DeliveryError;
use crate::proto::smtp::Reply;

/// Why a delivery failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// The mailbox does not exist (5.1.1).
    InvalidRecipient,
    /// The domain does not exist or accepts no mail (5.1.2, null MX).
    BadDomain,
    /// The mailbox exists but is disabled, suspended or closed (5.2.1).
    InactiveMailbox,
    /// The mailbox is full (4.2.2 / 5.2.2).
    Quota,
    /// The sending IP or domain is blocked (block lists, reputation).
    SpamBlock,
    /// This message looked like spam or carried something dangerous.
    SpamContent,
    /// A local policy refused it (size, content rules, "not allowed").
    Policy,
    /// SPF, DKIM or DMARC failed at the receiver (5.7.23-5.7.30).
    AuthFailure,
    /// The server does not relay for us.
    RelayDenied,
    /// DNS could not answer (SERVFAIL, timeouts).
    DnsFailure,
    /// The connection failed, dropped or timed out, or TLS failed.
    BadConnection,
    /// No route to the destination (loops, smart host credentials, 5.4.x).
    Routing,
    /// The peer and we did not understand each other (5.5.x, non-SMTP answers).
    Protocol,
    /// The message stayed in the queue past its lifetime.
    MessageExpired,
    /// The receiver is limiting our rate.
    Throttled,
    /// Nothing else matched.
    Other,
}

impl Category {
    pub const ALL: [Category; 16] = [
        Category::InvalidRecipient,
        Category::BadDomain,
        Category::InactiveMailbox,
        Category::Quota,
        Category::SpamBlock,
        Category::SpamContent,
        Category::Policy,
        Category::AuthFailure,
        Category::RelayDenied,
        Category::DnsFailure,
        Category::BadConnection,
        Category::Routing,
        Category::Protocol,
        Category::MessageExpired,
        Category::Throttled,
        Category::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::InvalidRecipient => "invalid_recipient",
            Category::BadDomain => "bad_domain",
            Category::InactiveMailbox => "inactive_mailbox",
            Category::Quota => "quota",
            Category::SpamBlock => "spam_block",
            Category::SpamContent => "spam_content",
            Category::Policy => "policy",
            Category::AuthFailure => "auth_failure",
            Category::RelayDenied => "relay_denied",
            Category::DnsFailure => "dns_failure",
            Category::BadConnection => "bad_connection",
            Category::Routing => "routing",
            Category::Protocol => "protocol",
            Category::MessageExpired => "message_expired",
            Category::Throttled => "throttled",
            Category::Other => "other",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Category {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Category::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown bounce category {s:?}"))
    }
}

impl<'de> Deserialize<'de> for Category {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The rules shipped with sluice.
pub const DEFAULT_RULES: &str = include_str!("../../config/bounce_rules.toml");

/// A rules file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{origin}: {error}")]
    Syntax { origin: String, error: String },
    #[error("{origin}: rule {index} ({category}): bad {field} pattern: {error}")]
    Pattern { origin: String, index: usize, category: Category, field: &'static str, error: String },
    #[error("{origin}: rule {index} ({category}) has no code, reply or text pattern")]
    Empty { origin: String, index: usize, category: Category },
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    category: Category,
    /// On the enhanced status code, e.g. `^5\.1\.1$`.
    code: Option<String>,
    /// On the three-digit reply code, e.g. `^55[0-9]$`.
    reply: Option<String>,
    /// On the reply text (without the codes); use `(?i)` for case-insensitive.
    text: Option<String>,
}

/// Patterns on a reply, every one it has must match: on the RFC 3463 enhanced code, the
/// three-digit code and the text (lines joined by spaces). Shared with the automation rules.
#[derive(Debug)]
pub struct ReplyPattern {
    code: Option<Regex>,
    reply: Option<Regex>,
    text: Option<Regex>,
}

/// A pattern that cannot be used: which field, and why.
#[derive(Debug)]
pub struct PatternError {
    pub field: &'static str,
    pub error: String,
}

impl ReplyPattern {
    /// Compiles the patterns given; None when none is.
    pub fn new(
        code: Option<&str>,
        reply: Option<&str>,
        text: Option<&str>,
    ) -> Result<Option<Self>, PatternError> {
        let compile = |field: &'static str, p: Option<&str>| {
            p.map(Regex::new).transpose().map_err(|e| PatternError { field, error: e.to_string() })
        };
        let p = ReplyPattern {
            code: compile("code", code)?,
            reply: compile("reply", reply)?,
            text: compile("text", text)?,
        };
        Ok((p.code.is_some() || p.reply.is_some() || p.text.is_some()).then_some(p))
    }

    pub fn matches(&self, reply: &Reply) -> bool {
        let enhanced = reply.enhanced.as_deref().unwrap_or("");
        self.matches_parts(reply.code, enhanced, &reply.text.replace('\n', " "))
    }

    /// As [`Self::matches`], on a reply's parts (the text with its lines joined by spaces), so
    /// that many patterns can be tried on one reply without joining its lines for each.
    pub fn matches_parts(&self, code: u16, enhanced: &str, text: &str) -> bool {
        // A pattern on the enhanced code never matches a reply without one.
        self.code.as_ref().is_none_or(|r| !enhanced.is_empty() && r.is_match(enhanced))
            && self.reply.as_ref().is_none_or(|r| r.is_match(&code.to_string()))
            && self.text.as_ref().is_none_or(|r| r.is_match(text))
    }
}

/// One rule: every pattern it has must match.
#[derive(Debug)]
struct Rule {
    category: Category,
    pattern: ReplyPattern,
}

/// The ordered rules.
#[derive(Debug)]
pub struct Classifier {
    rules: Vec<Rule>,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::load(None).expect("the shipped bounce rules are valid (tested)")
    }
}

impl Classifier {
    /// The operator's rules from `user` (if any), then the shipped ones.
    pub fn load(user: Option<&Path>) -> Result<Self, RulesError> {
        let mut rules = Vec::new();
        if let Some(path) = user {
            let text = std::fs::read_to_string(path)
                .map_err(|error| RulesError::Read { path: path.display().to_string(), error })?;
            rules.extend(parse_rules(&text, &path.display().to_string())?);
        }
        rules.extend(parse_rules(DEFAULT_RULES, "shipped bounce rules")?);
        Ok(Classifier { rules })
    }

    /// The category of a reply (first matching rule; `other` if none does).
    pub fn classify_reply(&self, reply: &Reply) -> Category {
        let enhanced = reply.enhanced.as_deref().unwrap_or("");
        let text = reply.text.replace('\n', " ");
        self.rules
            .iter()
            .find(|r| r.pattern.matches_parts(reply.code, enhanced, &text))
            .map_or(Category::Other, |r| r.category)
    }

    /// The category of a failed attempt.
    pub fn classify(&self, e: &DeliveryError) -> Category {
        match e {
            DeliveryError::Reply(r) | DeliveryError::Unsendable(r) => self.classify_reply(r),
            DeliveryError::Connect { .. }
            | DeliveryError::Timeout(_)
            | DeliveryError::ConnectionLost(_)
            | DeliveryError::Tls(_) => Category::BadConnection,
            DeliveryError::Protocol(_) => Category::Protocol,
            DeliveryError::NoSuchDomain(_) | DeliveryError::NullMx(_) => Category::BadDomain,
            DeliveryError::DnsTemporary(_) => Category::DnsFailure,
            // Our credentials for the smart host: the route is broken, not the recipient.
            DeliveryError::Auth(_) => Category::Routing,
            DeliveryError::Spool(_) | DeliveryError::Damaged(_) => Category::Other,
        }
    }
}

fn parse_rules(text: &str, origin: &str) -> Result<Vec<Rule>, RulesError> {
    let file: RulesFile = toml::from_str(text)
        .map_err(|e| RulesError::Syntax { origin: origin.into(), error: e.to_string() })?;
    let mut rules = Vec::with_capacity(file.rule.len());
    for (i, spec) in file.rule.into_iter().enumerate() {
        let index = i + 1;
        let category = spec.category;
        let pattern =
            ReplyPattern::new(spec.code.as_deref(), spec.reply.as_deref(), spec.text.as_deref())
                .map_err(|e| RulesError::Pattern {
                    origin: origin.into(),
                    index,
                    category,
                    field: e.field,
                    error: e.error,
                })?
                .ok_or_else(|| RulesError::Empty { origin: origin.into(), index, category })?;
        let rule = Rule { category, pattern };
        rules.push(rule);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, enhanced: Option<&'static str>, text: &str) -> Reply {
        let mut r = Reply::plain(code, text.into());
        r.enhanced = enhanced.map(Into::into);
        r
    }

    #[test]
    fn rfc3463_codes_without_telling_text() {
        let c = Classifier::default();
        for (code, enhanced, want) in [
            (550, "5.1.1", Category::InvalidRecipient),
            (550, "5.1.2", Category::BadDomain),
            (550, "5.2.1", Category::InactiveMailbox),
            (552, "5.2.2", Category::Quota),
            (452, "4.2.2", Category::Quota),
            (550, "5.7.26", Category::AuthFailure),
            (550, "5.7.23", Category::AuthFailure),
            (554, "5.5.1", Category::Protocol),
            (554, "5.4.6", Category::Routing),
            (450, "4.4.7", Category::MessageExpired),
            (450, "4.2.1", Category::Throttled),
            (552, "5.3.4", Category::Policy),
            (550, "5.7.1", Category::Policy),
        ] {
            assert_eq!(c.classify_reply(&reply(code, Some(enhanced), "x")), want, "{enhanced}");
        }
    }

    /// Real replies of the large providers (tests/fixtures/bounce_corpus.toml, each with its
    /// source) parse from the wire and classify as expected.
    #[test]
    fn provider_corpus_is_classified() {
        #[derive(Deserialize)]
        struct Case {
            provider: String,
            reply: String,
            category: Category,
        }
        #[derive(Deserialize)]
        struct Corpus {
            case: Vec<Case>,
        }
        let corpus: Corpus =
            toml::from_str(include_str!("../../tests/fixtures/bounce_corpus.toml")).unwrap();
        assert!(corpus.case.len() >= 60, "the issue asks for at least 60 real replies");
        let c = Classifier::default();
        let mut wrong = Vec::new();
        for case in &corpus.case {
            let mut wire = bytes::BytesMut::from(case.reply.replace('\n', "\r\n").as_str());
            wire.extend_from_slice(b"\r\n");
            let reply =
                crate::proto::smtp::client::parse_reply(&mut wire).ok().flatten().unwrap_or_else(
                    || panic!("{}: {:?} is not one whole reply", case.provider, case.reply),
                );
            let got = c.classify_reply(&reply);
            if got != case.category {
                wrong.push(format!(
                    "{}: {:?} -> {got}, want {}",
                    case.provider, case.reply, case.category
                ));
            }
        }
        assert!(wrong.is_empty(), "{} misclassified:\n{}", wrong.len(), wrong.join("\n"));
    }

    #[test]
    fn unknown_text_is_other() {
        let c = Classifier::default();
        assert_eq!(c.classify_reply(&reply(550, None, "computer says no")), Category::Other);
        assert_eq!(c.classify_reply(&reply(451, Some("4.3.0"), "hmm")), Category::Other);
    }

    #[test]
    fn failures_that_are_not_replies_have_fixed_categories() {
        let c = Classifier::default();
        assert_eq!(c.classify(&DeliveryError::NullMx("x".into())), Category::BadDomain);
        assert_eq!(c.classify(&DeliveryError::DnsTemporary("x".into())), Category::DnsFailure);
        assert_eq!(c.classify(&DeliveryError::Timeout("DATA")), Category::BadConnection);
        assert_eq!(c.classify(&DeliveryError::Protocol("x".into())), Category::Protocol);
    }

    #[test]
    fn operator_rules_come_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(
            &path,
            "[[rule]]\ncategory = \"throttled\"\ntext = \"(?i)slow down\"\n\
             [[rule]]\ncategory = \"spam_block\"\ncode = '^5\\.1\\.1$'\nreply = '^554$'\n",
        )
        .unwrap();
        let c = Classifier::load(Some(&path)).unwrap();
        assert_eq!(c.classify_reply(&reply(550, None, "Slow down")), Category::Throttled);
        assert_eq!(c.classify_reply(&reply(554, Some("5.1.1"), "x")), Category::SpamBlock);
        // Both patterns must match: a 550 5.1.1 still falls through to the shipped rules.
        assert_eq!(c.classify_reply(&reply(550, Some("5.1.1"), "x")), Category::InvalidRecipient);
    }

    #[test]
    fn bad_rules_name_the_rule_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        for (text, want) in [
            ("[[rule]]\ncategory = \"quota\"\ntext = \"(\"\n", "rule 1 (quota): bad text pattern"),
            ("[[rule]]\ncategory = \"quota\"\n", "rule 1 (quota) has no code"),
            ("[[rule]]\ncategory = \"full\"\ntext = \"x\"\n", "unknown bounce category \"full\""),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = Classifier::load(Some(&path)).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
