//! SPF (RFC 7208) evaluated to the letter: `check_host()` over a small DNS trait, so the
//! lookups share the verification deadline and the RFC's limits (10 DNS-querying terms, 2 void
//! lookups, 10 addresses per MX or PTR) hold. mail-auth keeps DKIM, ARC and DMARC; its SPF
//! evaluator departed from the RFC in 54 of the 203 cases of the RFC 7208 test suite (lax
//! record syntax, invalid names sent to the resolver, IPv4-mapped matching, two records, the
//! void-lookup limit).
//!
//! Not here: the `exp=` explanation text (its syntax is checked; receivers do not show it).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;

pub use mail_auth::SpfResult;

/// Why a lookup gave no records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupError {
    /// NXDOMAIN.
    NoSuchName,
    /// SERVFAIL, a timeout: temperror.
    Temporary,
}

type Lookup<T> = Result<Vec<T>, LookupError>;

/// The lookups SPF makes. An empty answer is `Ok(vec![])`.
pub trait SpfDns: Send + Sync {
    fn txt(&self, name: &str) -> impl Future<Output = Lookup<String>> + Send;
    fn a(&self, name: &str) -> impl Future<Output = Lookup<Ipv4Addr>> + Send;
    fn aaaa(&self, name: &str) -> impl Future<Output = Lookup<Ipv6Addr>> + Send;
    fn mx(&self, name: &str) -> impl Future<Output = Lookup<String>> + Send;
    fn ptr(&self, ip: IpAddr) -> impl Future<Output = Lookup<String>> + Send;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mechanism {
    All,
    Include(String),
    A(Option<String>, u8, u8),
    Mx(Option<String>, u8, u8),
    Ptr(Option<String>),
    Ip4(Ipv4Addr, u8),
    Ip6(Ipv6Addr, u8),
    Exists(String),
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Record {
    directives: Vec<(Qualifier, Mechanism)>,
    redirect: Option<String>,
}

/// RFC 7208 4.6.4.
const MAX_DNS_TERMS: u32 = 10;
const MAX_VOID: u32 = 2;
const MAX_ADDRESS_NAMES: usize = 10;

/// The identity and client one evaluation is about.
pub struct Params<'a> {
    pub ip: IpAddr,
    /// The sender's local part ("postmaster" for HELO checks or an empty one).
    pub local: &'a str,
    /// The sender's domain (the HELO name for HELO checks).
    pub domain: &'a str,
    pub helo: &'a str,
}

/// `check_host()` for the MAIL FROM identity (RFC 7208 2.4), or `postmaster@<helo>` for the
/// null reverse-path.
pub async fn check_mail_from<D: SpfDns>(
    dns: &D,
    ip: IpAddr,
    helo: &str,
    mail_from: &str,
) -> SpfResult {
    let (local, domain) = match mail_from.rsplit_once('@') {
        Some((l, d)) => (if l.is_empty() { "postmaster" } else { l }, d),
        None if mail_from.is_empty() => ("postmaster", helo),
        None => ("postmaster", mail_from),
    };
    let p = Params { ip, local, domain, helo };
    let mut e = Eval { dns, p: &p, ip: canonical_ip(ip), terms: 0, voids: 0 };
    e.check_host(domain.to_string(), 0).await
}

/// An IPv4-mapped IPv6 address is the IPv4 client it stands for (RFC 4291 2.5.5.2).
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

struct Eval<'a, D> {
    dns: &'a D,
    p: &'a Params<'a>,
    ip: IpAddr,
    terms: u32,
    voids: u32,
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An internal outcome: a final result, or a mechanism's match.
enum Step {
    Match(bool),
    Done(SpfResult),
}

impl<'a, D: SpfDns> Eval<'a, D> {
    fn check_host(&mut self, domain: String, depth: u32) -> Boxed<'_, SpfResult> {
        Box::pin(async move {
            let domain = domain.trim_end_matches('.').to_string();
            // RFC 7208 4.3: a malformed domain, or one that is not multi-label, is "none".
            if !valid_name(&domain) || !domain.contains('.') {
                return SpfResult::None;
            }
            let records = match self.dns.txt(&domain).await {
                Ok(r) => r,
                Err(LookupError::NoSuchName) => return SpfResult::None,
                Err(LookupError::Temporary) => return SpfResult::TempError,
            };
            let spf: Vec<&String> = records.iter().filter(|r| is_spf(r)).collect();
            let record = match spf.as_slice() {
                [] => return SpfResult::None,
                [one] => match parse(one) {
                    Ok(r) => r,
                    Err(()) => return SpfResult::PermError,
                },
                _ => return SpfResult::PermError,
            };
            for (q, m) in &record.directives {
                match self.mechanism(m, &domain, depth).await {
                    Step::Done(r) => return r,
                    Step::Match(true) => {
                        return match q {
                            Qualifier::Pass => SpfResult::Pass,
                            Qualifier::Fail => SpfResult::Fail,
                            Qualifier::SoftFail => SpfResult::SoftFail,
                            Qualifier::Neutral => SpfResult::Neutral,
                        };
                    }
                    Step::Match(false) => {}
                }
            }
            if let Some(r) = &record.redirect {
                if let Err(e) = self.count_term() {
                    return e;
                }
                let Some(target) = self.expand_target(r, &domain).await else {
                    return SpfResult::PermError;
                };
                return match self.check_host(target, depth + 1).await {
                    SpfResult::None => SpfResult::PermError,
                    other => other,
                };
            }
            SpfResult::Neutral
        })
    }

    fn count_term(&mut self) -> Result<(), SpfResult> {
        self.terms += 1;
        if self.terms > MAX_DNS_TERMS { Err(SpfResult::PermError) } else { Ok(()) }
    }

    /// A lookup's answer, counting void ones (RFC 7208 4.6.4).
    fn void<T>(&mut self, r: &Lookup<T>) -> Result<(), SpfResult> {
        match r {
            Ok(v) if !v.is_empty() => Ok(()),
            Err(LookupError::Temporary) => Ok(()),
            _ => {
                self.voids += 1;
                if self.voids > MAX_VOID { Err(SpfResult::PermError) } else { Ok(()) }
            }
        }
    }

    /// The target of a domain-spec, expanded; None when expansion fails (a permerror). A name
    /// that is not a valid DNS name after expansion matches nothing.
    async fn expand_target(&mut self, spec: &str, domain: &str) -> Option<String> {
        // %{p}: the validated name (RFC 7208 7.3), looked up only when a spec names it.
        let p = match spec.to_ascii_lowercase().contains("%{p") {
            true => self.p_value(domain).await,
            false => String::new(),
        };
        let expanded = expand(spec, self.p, self.ip, domain, &p).ok()?;
        Some(truncate_name(expanded.trim_end_matches('.')))
    }

    /// The validated name for %{p}: the target domain itself if validated, else one of its
    /// subdomains, else any validated name, else "unknown".
    async fn p_value(&mut self, domain: &str) -> String {
        let names = self.validated_names().await;
        let d = domain.to_ascii_lowercase();
        let pick = names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(&d))
            .or_else(|| names.iter().find(|n| n.to_ascii_lowercase().ends_with(&format!(".{d}"))))
            .or_else(|| names.first());
        pick.cloned().unwrap_or_else(|| "unknown".to_string())
    }

    /// A DNS-querying term's target: counted toward the 10-term limit, then `spec` expanded
    /// (the current domain without one); a spec that does not expand is a permerror.
    async fn term_target(&mut self, spec: Option<&str>, domain: &str) -> Result<String, SpfResult> {
        self.count_term()?;
        match spec {
            Some(spec) => self.expand_target(spec, domain).await.ok_or(SpfResult::PermError),
            None => Ok(domain.to_string()),
        }
    }

    async fn mechanism(&mut self, m: &Mechanism, domain: &str, depth: u32) -> Step {
        match m {
            Mechanism::All => Step::Match(true),
            Mechanism::Ip4(net, len) => {
                Step::Match(matches!(self.ip, IpAddr::V4(ip) if in_v4(ip, *net, *len)))
            }
            Mechanism::Ip6(net, len) => {
                Step::Match(matches!(self.ip, IpAddr::V6(ip) if in_v6(ip, *net, *len)))
            }
            Mechanism::Include(spec) => {
                if let Err(e) = self.count_term() {
                    return Step::Done(e);
                }
                let Some(t) = self.expand_target(spec, domain).await else {
                    return Step::Done(SpfResult::PermError);
                };
                if depth > 20 {
                    return Step::Done(SpfResult::PermError);
                }
                match self.check_host(t, depth + 1).await {
                    SpfResult::Pass => Step::Match(true),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => {
                        Step::Match(false)
                    }
                    SpfResult::TempError => Step::Done(SpfResult::TempError),
                    SpfResult::PermError | SpfResult::None => Step::Done(SpfResult::PermError),
                }
            }
            Mechanism::A(spec, c4, c6) => {
                let t = match self.term_target(spec.as_deref(), domain).await {
                    Ok(t) => t,
                    Err(e) => return Step::Done(e),
                };
                if !valid_name(&t) {
                    return Step::Match(false);
                }
                match self.addresses_match(&t, *c4, *c6, true).await {
                    Ok(m) => Step::Match(m),
                    Err(e) => Step::Done(e),
                }
            }
            Mechanism::Mx(spec, c4, c6) => {
                let t = match self.term_target(spec.as_deref(), domain).await {
                    Ok(t) => t,
                    Err(e) => return Step::Done(e),
                };
                if !valid_name(&t) {
                    return Step::Match(false);
                }
                let hosts = self.dns.mx(&t).await;
                if let Err(e) = self.void(&hosts) {
                    return Step::Done(e);
                }
                let hosts = match hosts {
                    Ok(h) => h,
                    Err(LookupError::NoSuchName) => return Step::Match(false),
                    Err(LookupError::Temporary) => return Step::Done(SpfResult::TempError),
                };
                if hosts.len() > MAX_ADDRESS_NAMES {
                    return Step::Done(SpfResult::PermError);
                }
                for h in hosts {
                    let h = h.trim_end_matches('.').to_string();
                    match self.addresses_match(&h, *c4, *c6, false).await {
                        Ok(true) => return Step::Match(true),
                        Ok(false) => {}
                        Err(e) => return Step::Done(e),
                    }
                }
                Step::Match(false)
            }
            Mechanism::Ptr(spec) => {
                let t = match self.term_target(spec.as_deref(), domain).await {
                    Ok(t) => t,
                    Err(e) => return Step::Done(e),
                };
                let t = t.to_ascii_lowercase();
                let validated = self.validated_names().await;
                Step::Match(validated.iter().any(|n| {
                    let n = n.to_ascii_lowercase();
                    n == t || n.ends_with(&format!(".{t}"))
                }))
            }
            Mechanism::Exists(spec) => {
                let t = match self.term_target(Some(spec), domain).await {
                    Ok(t) => t,
                    Err(e) => return Step::Done(e),
                };
                if !valid_name(&t) {
                    return Step::Match(false);
                }
                // RFC 7208 5.7: an A lookup, whatever the client's address family.
                let r = self.dns.a(&t).await;
                if let Err(e) = self.void(&r) {
                    return Step::Done(e);
                }
                match r {
                    Ok(v) => Step::Match(!v.is_empty()),
                    Err(LookupError::NoSuchName) => Step::Match(false),
                    Err(LookupError::Temporary) => Step::Done(SpfResult::TempError),
                }
            }
        }
    }

    /// Whether the client is among `name`'s addresses of its family, within the CIDR.
    /// `counts_void`: the lookup is the mechanism's own (a), not one of an MX's hosts.
    async fn addresses_match(
        &mut self,
        name: &str,
        c4: u8,
        c6: u8,
        counts_void: bool,
    ) -> Result<bool, SpfResult> {
        match self.ip {
            IpAddr::V4(ip) => {
                let r = self.dns.a(name).await;
                if counts_void {
                    self.void(&r)?;
                }
                match r {
                    Ok(v) => Ok(v.iter().any(|a| in_v4(ip, *a, c4))),
                    Err(LookupError::NoSuchName) => Ok(false),
                    Err(LookupError::Temporary) => Err(SpfResult::TempError),
                }
            }
            IpAddr::V6(ip) => {
                let r = self.dns.aaaa(name).await;
                if counts_void {
                    self.void(&r)?;
                }
                match r {
                    Ok(v) => Ok(v.iter().any(|a| in_v6(ip, *a, c6))),
                    Err(LookupError::NoSuchName) => Ok(false),
                    Err(LookupError::Temporary) => Err(SpfResult::TempError),
                }
            }
        }
    }

    /// The client's validated names (RFC 7208 5.5): PTR names (at most 10 looked at) whose
    /// addresses include the client. DNS errors only drop names.
    async fn validated_names(&mut self) -> Vec<String> {
        let Ok(names) = self.dns.ptr(self.ip).await else { return Vec::new() };
        let mut out = Vec::new();
        for n in names.into_iter().take(MAX_ADDRESS_NAMES) {
            let n = n.trim_end_matches('.').to_string();
            let ok = match self.ip {
                IpAddr::V4(ip) => self.dns.a(&n).await.is_ok_and(|v| v.contains(&ip)),
                IpAddr::V6(ip) => self.dns.aaaa(&n).await.is_ok_and(|v| v.contains(&ip)),
            };
            if ok {
                out.push(n);
            }
        }
        out
    }
}

fn is_spf(txt: &str) -> bool {
    let b = txt.as_bytes();
    b.len() >= 6 && b[..6].eq_ignore_ascii_case(b"v=spf1") && (b.len() == 6 || b[6] == b' ')
}

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
    u128::from(ip) & mask == u128::from(net) & mask
}

/// A name DNS can carry: labels of 1 to 63 octets, 253 in all.
fn valid_name(name: &str) -> bool {
    let n = name.trim_end_matches('.');
    !n.is_empty() && n.len() <= 253 && n.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

/// RFC 7208 7.3: a name over 253 octets loses labels from the left until it fits.
fn truncate_name(name: &str) -> String {
    let mut n = name;
    while n.len() > 253 {
        match n.split_once('.') {
            Some((_, rest)) => n = rest,
            None => break,
        }
    }
    n.to_string()
}

// ---- record syntax (RFC 7208 12) -----------------------------------------------------------

fn parse(text: &str) -> Result<Record, ()> {
    let rest = &text[6..];
    let mut rec = Record::default();
    let mut exp_seen = false;
    for term in rest.split(' ').filter(|t| !t.is_empty()) {
        if !term.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(());
        }
        if let Some((name, value)) = modifier(term) {
            match name.to_ascii_lowercase().as_str() {
                "redirect" => {
                    if rec.redirect.is_some() {
                        return Err(());
                    }
                    domain_spec(value)?;
                    rec.redirect = Some(value.to_string());
                }
                "exp" => {
                    if exp_seen {
                        return Err(());
                    }
                    exp_seen = true;
                    domain_spec(value)?;
                }
                _ => macro_string(value, false)?,
            }
            continue;
        }
        rec.directives.push(directive(term)?);
    }
    Ok(rec)
}

/// `name "=" macro-string` with `name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )`.
fn modifier(term: &str) -> Option<(&str, &str)> {
    let (name, value) = term.split_once('=')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    .then_some((name, value))
}

fn directive(term: &str) -> Result<(Qualifier, Mechanism), ()> {
    let (q, rest) = match term.as_bytes()[0] {
        b'+' => (Qualifier::Pass, &term[1..]),
        b'-' => (Qualifier::Fail, &term[1..]),
        b'~' => (Qualifier::SoftFail, &term[1..]),
        b'?' => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let end = rest.find([':', '/']).unwrap_or(rest.len());
    let (name, args) = rest.split_at(end);
    let m = match name.to_ascii_lowercase().as_str() {
        "all" if args.is_empty() => Mechanism::All,
        "include" => Mechanism::Include(required_spec(args)?),
        "exists" => Mechanism::Exists(required_spec(args)?),
        "a" | "mx" => {
            let (spec, c4, c6) = dual_cidr(args)?;
            let spec = match spec.strip_prefix(':') {
                Some(s) => {
                    domain_spec(s)?;
                    Some(s.to_string())
                }
                None if spec.is_empty() => None,
                None => return Err(()),
            };
            if name.eq_ignore_ascii_case("a") {
                Mechanism::A(spec, c4, c6)
            } else {
                Mechanism::Mx(spec, c4, c6)
            }
        }
        "ptr" => match args.strip_prefix(':') {
            Some(s) => {
                domain_spec(s)?;
                Mechanism::Ptr(Some(s.to_string()))
            }
            None if args.is_empty() => Mechanism::Ptr(None),
            None => return Err(()),
        },
        "ip4" => {
            let a = args.strip_prefix(':').ok_or(())?;
            let (net, len) = match a.split_once('/') {
                Some((n, l)) => (n, cidr(l, 32)?),
                None => (a, 32),
            };
            Mechanism::Ip4(ipv4(net)?, len)
        }
        "ip6" => {
            let a = args.strip_prefix(':').ok_or(())?;
            let (net, len) = match a.split_once('/') {
                Some((n, l)) => (n, cidr(l, 128)?),
                None => (a, 128),
            };
            Mechanism::Ip6(net.parse().map_err(|_| ())?, len)
        }
        _ => return Err(()),
    };
    Ok((q, m))
}

fn required_spec(args: &str) -> Result<String, ()> {
    let s = args.strip_prefix(':').ok_or(())?;
    domain_spec(s)?;
    Ok(s.to_string())
}

/// `[ ":" domain-spec ] [ dual-cidr-length ]` split from the end: `/24`, `//64`, `/24//64`.
fn dual_cidr(args: &str) -> Result<(&str, u8, u8), ()> {
    let (mut rest, mut c4, mut c6) = (args, 32, 128);
    if let Some(at) = rest.rfind("//") {
        let digits = &rest[at + 2..];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            c6 = cidr(digits, 128)?;
            rest = &rest[..at];
        }
    }
    if let Some(at) = rest.rfind('/') {
        let digits = &rest[at + 1..];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            c4 = cidr(digits, 32)?;
            rest = &rest[..at];
        }
    }
    Ok((rest, c4, c6))
}

/// A CIDR length without leading zeros, at most `max`.
fn cidr(digits: &str, max: u8) -> Result<u8, ()> {
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return Err(());
    }
    let n: u8 = digits.parse().map_err(|_| ())?;
    if n > max { Err(()) } else { Ok(n) }
}

/// A dotted quad without leading zeros (RFC 7208 `qnum`).
fn ipv4(s: &str) -> Result<Ipv4Addr, ()> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return Err(());
    }
    let mut o = [0u8; 4];
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || (p.len() > 1 && p.starts_with('0')) {
            return Err(());
        }
        o[i] = p.parse().map_err(|_| ())?;
    }
    Ok(Ipv4Addr::from(o))
}

/// `domain-spec = macro-string domain-end`, `domain-end = ( "." toplabel [ "." ] ) /
/// macro-expand`.
fn domain_spec(s: &str) -> Result<(), ()> {
    if s.is_empty() {
        return Err(());
    }
    macro_string(s, false)?;
    if s.ends_with('}') || s.ends_with("%%") || s.ends_with("%_") || s.ends_with("%-") {
        // Ends in a macro-expand (checked by macro_string).
        if s.ends_with('}') && s.rfind("%{").is_some() {
            return Ok(());
        }
    }
    let body = s.strip_suffix('.').unwrap_or(s);
    let (head, top) = body.rsplit_once('.').ok_or(())?;
    if head.is_empty() && !s.starts_with('.') {
        return Err(());
    }
    if toplabel(top) { Ok(()) } else { Err(()) }
}

/// `toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )`.
fn toplabel(l: &str) -> bool {
    let b = l.as_bytes();
    if b.is_empty() || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return false;
    }
    if b.contains(&b'-') {
        b[0].is_ascii_alphanumeric() && b[b.len() - 1].is_ascii_alphanumeric()
    } else {
        b.iter().any(u8::is_ascii_alphabetic)
    }
}

/// Checks `macro-string` syntax; `exp` allows the c, r and t letters.
fn macro_string(s: &str, exp: bool) -> Result<(), ()> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            if !(0x21..=0x7e).contains(&b[i]) {
                return Err(());
            }
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'%' | b'_' | b'-') => i += 2,
            Some(b'{') => {
                let close = s[i..].find('}').ok_or(())? + i;
                macro_body(&s[i + 2..close], exp)?;
                i = close + 1;
            }
            _ => return Err(()),
        }
    }
    Ok(())
}

/// `macro-letter transformers *delimiter`: (letter, digits, reverse, delimiters).
fn macro_body(body: &str, exp: bool) -> Result<(char, Option<usize>, bool, &str), ()> {
    let mut chars = body.char_indices();
    let (_, letter) = chars.next().ok_or(())?;
    let lower = letter.to_ascii_lowercase();
    let allowed = "slodiphv";
    if !(allowed.contains(lower) || (exp && "crt".contains(lower))) {
        return Err(());
    }
    let rest = &body[letter.len_utf8()..];
    let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let digits = match &rest[..digits_end] {
        "" => None,
        d => {
            let n: usize = d.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            Some(n)
        }
    };
    let mut rest = &rest[digits_end..];
    let reverse = match rest.strip_prefix(['r', 'R']) {
        Some(r) => {
            rest = r;
            true
        }
        None => false,
    };
    if !rest.chars().all(|c| ".-+,/_=".contains(c)) {
        return Err(());
    }
    Ok((letter, digits, reverse, rest))
}

/// Expands a macro-string (RFC 7208 7) for a target name; `p_name` is %{p}'s value.
fn expand(s: &str, p: &Params<'_>, ip: IpAddr, domain: &str, p_name: &str) -> Result<String, ()> {
    let exp = false;
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            let next = s[i..].find('%').map_or(s.len(), |n| i + n);
            out.push_str(&s[i..next]);
            i = next;
            continue;
        }
        match b.get(i + 1) {
            Some(b'%') => out.push('%'),
            Some(b'_') => out.push(' '),
            Some(b'-') => out.push_str("%20"),
            Some(b'{') => {
                let close = s[i..].find('}').ok_or(())? + i;
                let (letter, digits, reverse, delims) = macro_body(&s[i + 2..close], exp)?;
                let value = match letter.to_ascii_lowercase() {
                    'p' => p_name.to_string(),
                    l => macro_value(l, p, ip, domain),
                };
                let delims = if delims.is_empty() { "." } else { delims };
                let mut parts: Vec<&str> = value.split(|c| delims.contains(c)).collect();
                if reverse {
                    parts.reverse();
                }
                if let Some(n) = digits
                    && parts.len() > n
                {
                    parts.drain(..parts.len() - n);
                }
                let joined = parts.join(".");
                if letter.is_ascii_uppercase() {
                    out.push_str(&url_escape(&joined));
                } else {
                    out.push_str(&joined);
                }
                i = close + 1;
                continue;
            }
            _ => return Err(()),
        }
        i += 2;
    }
    Ok(out)
}

fn macro_value(letter: char, p: &Params<'_>, ip: IpAddr, domain: &str) -> String {
    match letter {
        's' => format!("{}@{}", p.local, p.domain),
        'l' => p.local.to_string(),
        'o' => p.domain.to_string(),
        'd' => domain.to_string(),
        'i' => match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => v6
                .octets()
                .iter()
                .flat_map(|o| [o >> 4, o & 0xf])
                .map(|n| format!("{n:x}"))
                .collect::<Vec<_>>()
                .join("."),
        },
        'v' => if ip.is_ipv4() { "in-addr" } else { "ip6" }.to_string(),
        'h' => p.helo.to_string(),
        _ => String::new(),
    }
}

/// RFC 3986 escaping of everything but the unreserved characters.
fn url_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// [`SpfDns`] over hickory's resolver (the verifier's, with its cache). Names are sent as they
/// are (RFC 7208 allows any octets in a label: `foo:bar/baz.example.com`, `a b.example.com`).
pub struct HickorySpf<'a>(pub &'a hickory_resolver::TokioResolver);

impl HickorySpf<'_> {
    async fn lookup(
        &self,
        name: &str,
        t: hickory_resolver::proto::rr::RecordType,
    ) -> Result<Vec<hickory_resolver::proto::rr::RData>, LookupError> {
        use hickory_resolver::proto::rr::Name;
        // Labels as raw octets: `Name::from_ascii` refuses ':', '/' and spaces, which RFC 7208
        // targets may hold (and DNS carries).
        let labels = name.trim_end_matches('.').split('.').map(str::as_bytes);
        let Ok(name) = Name::from_labels(labels) else { return Ok(Vec::new()) };
        let started = std::time::Instant::now();
        let r = match self.0.lookup(name, t).await {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter(|r| r.record_type() == t)
                .map(|r| r.data.clone())
                .collect::<Vec<_>>()),
            Err(e) if e.is_nx_domain() => Err(LookupError::NoSuchName),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(_) => Err(LookupError::Temporary),
        };
        crate::metrics::DNS_SECONDS.observe(started.elapsed().as_secs_f64());
        let result = match &r {
            Ok(v) if v.is_empty() => "nodata",
            Ok(_) => "ok",
            Err(LookupError::NoSuchName) => "nxdomain",
            Err(LookupError::Temporary) => "error",
        };
        crate::metrics::DNS_LOOKUPS.with_label_values(&["spf", result]).inc();
        r
    }
}

impl HickorySpf<'_> {
    /// The records of type `t` at `name`, each turned into what SPF needs by `pick`.
    async fn records<T>(
        &self,
        name: &str,
        t: hickory_resolver::proto::rr::RecordType,
        pick: impl Fn(hickory_resolver::proto::rr::RData) -> Option<T>,
    ) -> Lookup<T> {
        Ok(self.lookup(name, t).await?.into_iter().filter_map(pick).collect())
    }
}

impl SpfDns for HickorySpf<'_> {
    async fn txt(&self, name: &str) -> Lookup<String> {
        use hickory_resolver::proto::rr::{RData, RecordType};
        self.records(name, RecordType::TXT, |d| match d {
            RData::TXT(t) => Some(t.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect()),
            _ => None,
        })
        .await
    }

    async fn a(&self, name: &str) -> Lookup<Ipv4Addr> {
        use hickory_resolver::proto::rr::{RData, RecordType};
        self.records(name, RecordType::A, |d| match d {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .await
    }

    async fn aaaa(&self, name: &str) -> Lookup<Ipv6Addr> {
        use hickory_resolver::proto::rr::{RData, RecordType};
        self.records(name, RecordType::AAAA, |d| match d {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .await
    }

    async fn mx(&self, name: &str) -> Lookup<String> {
        use hickory_resolver::proto::rr::{RData, RecordType};
        self.records(name, RecordType::MX, |d| match d {
            RData::MX(m) => Some(labels(&m.exchange)),
            _ => None,
        })
        .await
    }

    async fn ptr(&self, ip: IpAddr) -> Lookup<String> {
        use hickory_resolver::proto::rr::{RData, RecordType};
        let name = match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
            }
            IpAddr::V6(v6) => {
                let mut n: Vec<String> = v6
                    .octets()
                    .iter()
                    .flat_map(|o| [o >> 4, o & 0xf])
                    .map(|x| format!("{x:x}"))
                    .collect();
                n.reverse();
                format!("{}.ip6.arpa", n.join("."))
            }
        };
        self.records(&name, RecordType::PTR, |d| match d {
            RData::PTR(p) => Some(labels(&p.0)),
            _ => None,
        })
        .await
    }
}

/// A name as its labels, joined with dots (not `to_ascii`, which escapes ':' and '/').
fn labels(name: &hickory_resolver::proto::rr::Name) -> String {
    let v: Vec<String> = name.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
    v.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7208 12 (the ABNF): what parses, and what is a permerror.
    #[test]
    fn record_syntax() {
        for ok in [
            "v=spf1",
            "v=spf1 -all",
            "v=spf1 a/24//64 mx:%{d}.example.com ip4:192.0.2.0/24 ip6:2001:db8::/32 ~all",
            "v=spf1 a:foo:bar/baz.example.com include:_spf.example.com. exists:%{i}.x.example.com",
            "v=spf1 moo.cow-far_out=man:dog/cat redirect=_spf.example.com",
            "v=spf1 ptr ptr:example.com ?all",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "v=spf1 a/33",
            "v=spf1 a//129",
            "v=spf1 a/24/64",
            "v=spf1 ip4:1.2.3.04",
            "v=spf1 ip4:1.2.3.4/032",
            "v=spf1 a:abc.123",
            "v=spf1 a:museum",
            "v=spf1 a:example.com:8080",
            "v=spf1 a:",
            "v=spf1 ptr/0",
            "v=spf1 =foo",
            "v=spf1 redirect=a.example.com redirect=b.example.com",
            "v=spf1 exists:%(ir).example.com",
            "v=spf1 exists:%{0}.example.com",
            "v=spf1 foo:bar",
            "v=spf1 a:\u{e9}.example.com",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(is_spf("V=SPF1 -all") && is_spf("v=spf1") && !is_spf("v=spf10 -all"));
    }

    /// RFC 7208 7.4's examples.
    #[test]
    fn macro_expansion() {
        let p = Params {
            ip: "192.0.2.3".parse().unwrap(),
            local: "strong-bad",
            domain: "email.example.com",
            helo: "mx.example.org",
        };
        let ip = p.ip;
        let x = |s: &str| expand(s, &p, ip, "email.example.com", "unknown").unwrap();
        assert_eq!(x("%{s}"), "strong-bad@email.example.com");
        assert_eq!(x("%{d4}"), "email.example.com");
        assert_eq!(x("%{d2}"), "example.com");
        assert_eq!(x("%{d1}"), "com");
        assert_eq!(x("%{dr}"), "com.example.email");
        assert_eq!(x("%{d2r}"), "example.email");
        assert_eq!(x("%{l-}"), "strong.bad");
        assert_eq!(x("%{lr-}"), "bad.strong");
        assert_eq!(x("%{l1r-}"), "strong");
        assert_eq!(x("%{ir}.%{v}._spf.%{d2}"), "3.2.0.192.in-addr._spf.example.com");
        assert_eq!(x("%{S}"), "strong-bad%40email.example.com");
        assert_eq!(x("a%%b%_c%-d"), "a%b c%20d");
        let v6 = IpAddr::V6("2001:db8::cb01".parse().unwrap());
        let e = expand("%{ir}.%{v}._spf.%{d2}", &p, v6, "email.example.com", "").unwrap();
        assert_eq!(
            e,
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
        );
    }

    #[test]
    fn networks_and_names() {
        let ip: Ipv4Addr = "192.0.2.77".parse().unwrap();
        assert!(in_v4(ip, "192.0.2.0".parse().unwrap(), 24));
        assert!(!in_v4(ip, "192.0.3.0".parse().unwrap(), 24));
        assert!(in_v4(ip, "10.0.0.0".parse().unwrap(), 0));
        let mapped: IpAddr = "::ffff:192.0.2.77".parse().unwrap();
        assert_eq!(canonical_ip(mapped), IpAddr::V4(ip));
        assert!(valid_name("a.example.com") && !valid_name("a..example.com"));
        assert!(!valid_name(&format!("{}.com", "x".repeat(64))));
        let long = format!("{}example.com", "abcdefghi.".repeat(30));
        assert!(truncate_name(&long).len() <= 253 && truncate_name(&long).ends_with("example.com"));
    }
}
