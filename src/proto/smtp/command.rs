//! SMTP command lines -> [`Command`] (RFC 5321 4.1.1 and the extension parameters we advertise).
//!
//! The input is one line without its CRLF. Parsing never panics and never allocates for
//! commands without arguments; addresses are validated by [`super::address`].

use super::address::{self, AddressError, Mailbox};
use super::reply::{RejectReason, Rejection};

/// A parsed command. Verbs are case-insensitive (RFC 5321 2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail(MailFrom),
    Rcpt(RcptTo),
    Data,
    /// BDAT chunk-size [LAST] (RFC 3030 2)
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    /// AUTH mechanism [initial-response] (RFC 4954 4)
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

/// `MAIL FROM:<reverse-path> [params]`
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailFrom {
    /// `None` is the null reverse-path `<>` (bounces).
    pub from: Option<Mailbox>,
    /// SIZE= (RFC 1870)
    pub size: Option<u64>,
    /// BODY= (RFC 6152): 7BIT or 8BITMIME
    pub body: Option<BodyType>,
    /// SMTPUTF8 (RFC 6531 3.4)
    pub smtputf8: bool,
    /// RET= (RFC 3461 4.3)
    pub ret: Option<Ret>,
    /// ENVID= (RFC 3461 4.4), kept as xtext
    pub envid: Option<String>,
}

/// `RCPT TO:<forward-path> [params]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    pub to: Mailbox,
    /// NOTIFY= (RFC 3461 4.1); `None` means the parameter was absent.
    pub notify: Option<Notify>,
    /// ORCPT= (RFC 3461 4.2), as `addr-type;xtext`
    pub orcpt: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

/// NOTIFY=NEVER or a combination of SUCCESS, FAILURE, DELAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    pub fn is_never(&self) -> bool {
        !self.success && !self.failure && !self.delay
    }

    /// The RCPT parameter value (RFC 3461 4.1): NEVER or the list.
    pub fn to_param(&self) -> String {
        if self.is_never() {
            return "NEVER".into();
        }
        let parts = [(self.success, "SUCCESS"), (self.failure, "FAILURE"), (self.delay, "DELAY")];
        parts.iter().filter(|p| p.0).map(|p| p.1).collect::<Vec<_>>().join(",")
    }
}

/// A command that could not be parsed, carrying what its reply needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// 500 5.5.1
    #[error("command unrecognized")]
    Unrecognized,
    /// 501 5.5.2 Syntax error, expected: ...
    #[error("syntax error, expected: {0}")]
    Syntax(&'static str),
    /// 501 5.1.7 / 5.1.3
    #[error("bad address: {0}")]
    Address(&'static str, AddressError),
    /// 555 5.5.4 (RFC 5321 4.1.1.11)
    #[error("parameter not recognized or not implemented: {0}")]
    UnknownParameter(String),
    /// 501 5.5.4
    #[error("bad parameter value: {0}")]
    BadParameter(&'static str),
}

impl CommandError {
    /// The reply, and the reason counted: unknown verbs as not implemented, the rest syntax.
    pub fn rejection(&self) -> Rejection {
        let owned =
            |code, enhanced, text| Rejection::owned(code, enhanced, text, RejectReason::Syntax);
        match self {
            CommandError::Unrecognized => super::reply::UNRECOGNIZED,
            CommandError::Syntax(s) => owned(501, "5.5.2", format!("Syntax error, expected: {s}")),
            CommandError::Address(which, e) => {
                let enhanced = if *which == "sender" { "5.1.7" } else { "5.1.3" };
                owned(501, enhanced, format!("Bad {which} address syntax: {e}"))
            }
            CommandError::UnknownParameter(p) => {
                let text = format!("Parameter not recognized or not implemented: {p}");
                Rejection::owned(555, "5.5.4", text, RejectReason::Syntax)
            }
            CommandError::BadParameter(p) => {
                owned(501, "5.5.4", format!("Bad parameter value: {p}"))
            }
        }
    }
}

/// Parses one command line (without CRLF).
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::Syntax("UTF-8 command line"))?;
    let (verb, arg) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim_end_matches(' ')),
        None => (line, ""),
    };
    let no_arg = |cmd: Command, expected: &'static str| {
        if arg.trim().is_empty() { Ok(cmd) } else { Err(CommandError::Syntax(expected)) }
    };
    match verb.len() {
        4 if verb.eq_ignore_ascii_case("HELO") => Ok(Command::Helo(domain_arg(arg)?)),
        4 if verb.eq_ignore_ascii_case("EHLO") => Ok(Command::Ehlo(domain_arg(arg)?)),
        4 if verb.eq_ignore_ascii_case("MAIL") => parse_mail(arg).map(Command::Mail),
        4 if verb.eq_ignore_ascii_case("RCPT") => parse_rcpt(arg).map(Command::Rcpt),
        4 if verb.eq_ignore_ascii_case("DATA") => no_arg(Command::Data, "DATA"),
        4 if verb.eq_ignore_ascii_case("BDAT") => parse_bdat(arg),
        4 if verb.eq_ignore_ascii_case("RSET") => no_arg(Command::Rset, "RSET"),
        4 if verb.eq_ignore_ascii_case("NOOP") => Ok(Command::Noop),
        4 if verb.eq_ignore_ascii_case("QUIT") => no_arg(Command::Quit, "QUIT"),
        4 if verb.eq_ignore_ascii_case("VRFY") => Ok(Command::Vrfy),
        4 if verb.eq_ignore_ascii_case("EXPN") => Ok(Command::Expn),
        4 if verb.eq_ignore_ascii_case("HELP") => Ok(Command::Help),
        4 if verb.eq_ignore_ascii_case("AUTH") => {
            let mut words = arg.split_ascii_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(m), initial, None) => Ok(Command::Auth {
                    mechanism: m.to_string(),
                    initial: initial.map(str::to_string),
                }),
                _ => Err(CommandError::Syntax("AUTH mechanism [initial-response]")),
            }
        }
        8 if verb.eq_ignore_ascii_case("STARTTLS") => no_arg(Command::StartTls, "STARTTLS"),
        _ => Err(CommandError::Unrecognized),
    }
}

/// The HELO/EHLO argument: a domain or address literal (RFC 5321 4.1.1.1). Many real clients
/// send names that are not strictly domains (underscores, bare host names), so only what can
/// never be a name is refused: controls, spaces, non-ASCII, over 255 octets.
fn domain_arg(arg: &str) -> Result<String, CommandError> {
    let arg = arg.trim_matches(' ');
    if arg.is_empty() || arg.contains(' ') {
        return Err(CommandError::Syntax("HELO/EHLO domain"));
    }
    if arg.len() > 255 || !arg.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(CommandError::BadParameter("HELO/EHLO domain"));
    }
    Ok(arg.to_string())
}

/// Strips `prefix` (e.g. "FROM:") case-insensitively; tolerates a space after the colon, which
/// many clients send although RFC 5321 4.1.1.2 has none.
fn strip_keyword<'a>(arg: &'a str, prefix: &str) -> Option<&'a str> {
    let head = arg.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| arg[prefix.len()..].trim_start())
}

fn params(text: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    text.split(' ').filter(|p| !p.is_empty()).map(|p| match p.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (p, None),
    })
}

/// `Mail-parameters` of RFC 5321 4.1.2 with SIZE, BODY, SMTPUTF8, RET, ENVID, AUTH.
fn parse_mail(arg: &str) -> Result<MailFrom, CommandError> {
    let rest = strip_keyword(arg, "FROM:").ok_or(CommandError::Syntax("MAIL FROM:<address>"))?;
    let (inner, ptext) =
        address::split_path(rest).map_err(|e| CommandError::Address("sender", e))?;
    let from = address::parse_path(inner, false).map_err(|e| CommandError::Address("sender", e))?;
    let mut mail = MailFrom { from, ..Default::default() };
    for (key, value) in params(ptext) {
        let upper = key.to_ascii_uppercase();
        match (upper.as_str(), value) {
            ("SIZE", Some(v)) if v.len() <= 20 && v.bytes().all(|c| c.is_ascii_digit()) => {
                mail.size = Some(v.parse().map_err(|_| CommandError::BadParameter("SIZE"))?)
            }
            ("SIZE", _) => return Err(CommandError::BadParameter("SIZE")),
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => {
                mail.body = Some(BodyType::SevenBit)
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                mail.body = Some(BodyType::EightBitMime)
            }
            ("SMTPUTF8", None) => mail.smtputf8 = true,
            ("RET", Some(v)) if v.eq_ignore_ascii_case("FULL") => mail.ret = Some(Ret::Full),
            ("RET", Some(v)) if v.eq_ignore_ascii_case("HDRS") => mail.ret = Some(Ret::Hdrs),
            ("ENVID", Some(v)) if is_xtext(v) && v.len() <= 100 => mail.envid = Some(v.to_string()),
            ("RET", _) | ("ENVID", _) => return Err(CommandError::BadParameter("RET/ENVID")),
            // RFC 4954 5: AUTH=<mailbox> (xtext) is accepted and, without trust, ignored.
            ("AUTH", Some(v)) if is_xtext(v) && v.is_ascii() && v.len() <= 500 => {}
            ("AUTH", _) => return Err(CommandError::BadParameter("AUTH")),
            _ => return Err(CommandError::UnknownParameter(printable(key))),
        }
    }
    // RFC 6533 4: UTF-8 in ENVID only with SMTPUTF8.
    if mail.envid.as_deref().is_some_and(|e| !e.is_ascii()) && !mail.smtputf8 {
        return Err(CommandError::BadParameter("ENVID (UTF-8 needs SMTPUTF8)"));
    }
    Ok(mail)
}

/// A parameter name as it may be echoed in a reply: printable ASCII only, at most 64 octets.
fn printable(key: &str) -> String {
    key.chars().filter(|c| c.is_ascii_graphic()).take(64).collect()
}

/// atom = 1*atext (RFC 5322 3.2.3), the ORCPT addr-type (RFC 3461 4.2).
fn is_atom(v: &str) -> bool {
    !v.is_empty()
        && v.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c))
}

/// `Rcpt-parameters` with NOTIFY and ORCPT (RFC 3461 4.1, 4.2).
fn parse_rcpt(arg: &str) -> Result<RcptTo, CommandError> {
    let rest = strip_keyword(arg, "TO:").ok_or(CommandError::Syntax("RCPT TO:<address>"))?;
    let (inner, ptext) =
        address::split_path(rest).map_err(|e| CommandError::Address("recipient", e))?;
    let to = address::parse_path(inner, true)
        .map_err(|e| CommandError::Address("recipient", e))?
        .ok_or(CommandError::Address("recipient", AddressError::LocalPart))?;
    let mut rcpt = RcptTo { to, notify: None, orcpt: None };
    for (key, value) in params(ptext) {
        let upper = key.to_ascii_uppercase();
        match (upper.as_str(), value) {
            ("NOTIFY", Some(v)) => rcpt.notify = Some(parse_notify(v)?),
            ("ORCPT", Some(v)) => match v.split_once(';') {
                Some((kind, addr)) if is_atom(kind) && is_xtext(addr) && v.len() <= 500 => {
                    rcpt.orcpt = Some(v.to_string())
                }
                _ => return Err(CommandError::BadParameter("ORCPT")),
            },
            _ => return Err(CommandError::UnknownParameter(printable(key))),
        }
    }
    Ok(rcpt)
}

/// NOTIFY="NEVER" / 1#( "SUCCESS" / "FAILURE" / "DELAY" )
fn parse_notify(v: &str) -> Result<Notify, CommandError> {
    if v.eq_ignore_ascii_case("NEVER") {
        return Ok(Notify::default());
    }
    let mut n = Notify::default();
    for item in v.split(',') {
        match item.to_ascii_uppercase().as_str() {
            "SUCCESS" => n.success = true,
            "FAILURE" => n.failure = true,
            "DELAY" => n.delay = true,
            _ => return Err(CommandError::BadParameter("NOTIFY")),
        }
    }
    Ok(n)
}

/// xtext = *( xchar / hexchar ) (RFC 3461 4): printable ASCII except "+" and "=", or "+XX".
/// With SMTPUTF8 (RFC 6533) UTF-8 is also allowed.
fn is_xtext(v: &str) -> bool {
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                if i + 2 >= b.len() || !hex(b[i + 1]) || !hex(b[i + 2]) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            c if (b'!'..=b'~').contains(&c) || c >= 0x80 => i += 1,
            _ => return false,
        }
    }
    true
}

/// bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ] (RFC 3030 2)
fn parse_bdat(arg: &str) -> Result<Command, CommandError> {
    let mut parts = arg.split(' ').filter(|s| !s.is_empty());
    let size = parts
        .next()
        .filter(|s| s.bytes().all(|c| c.is_ascii_digit()) && s.len() <= 19)
        .and_then(|s| s.parse().ok())
        .ok_or(CommandError::Syntax("BDAT chunk-size [LAST]"))?;
    let last = match parts.next() {
        None => false,
        Some(m) if m.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax("BDAT chunk-size [LAST]")),
    };
    if parts.next().is_some() {
        return Err(CommandError::Syntax("BDAT chunk-size [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbox(s: &str) -> Mailbox {
        address::parse_path(s, true).unwrap().unwrap()
    }

    /// RFC 5321 4.1.1 commands, case-insensitive verbs (2.4).
    #[test]
    fn rfc5321_4_1_1_commands() {
        let cases: Vec<(&str, Command)> = vec![
            ("HELO client.example", Command::Helo("client.example".into())),
            ("ehlo [192.0.2.1]", Command::Ehlo("[192.0.2.1]".into())),
            ("DATA", Command::Data),
            ("rset", Command::Rset),
            ("NOOP anything", Command::Noop),
            ("QUIT", Command::Quit),
            ("VRFY user", Command::Vrfy),
            ("EXPN list", Command::Expn),
            ("HELP", Command::Help),
            ("BDAT 100", Command::Bdat { size: 100, last: false }),
            ("BDAT 0 LAST", Command::Bdat { size: 0, last: true }),
            ("bdat 7 last", Command::Bdat { size: 7, last: true }),
            (
                "MAIL FROM:<a@example.com>",
                Command::Mail(MailFrom { from: Some(mbox("a@example.com")), ..Default::default() }),
            ),
            ("MAIL FROM:<>", Command::Mail(MailFrom::default())),
            (
                "mail from: <a@example.com> SIZE=1000 BODY=8BITMIME",
                Command::Mail(MailFrom {
                    from: Some(mbox("a@example.com")),
                    size: Some(1000),
                    body: Some(BodyType::EightBitMime),
                    ..Default::default()
                }),
            ),
            (
                "MAIL FROM:<a@example.com> RET=HDRS ENVID=QQ314159 SMTPUTF8 AUTH=<>",
                Command::Mail(MailFrom {
                    from: Some(mbox("a@example.com")),
                    ret: Some(Ret::Hdrs),
                    envid: Some("QQ314159".into()),
                    smtputf8: true,
                    ..Default::default()
                }),
            ),
            (
                "RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40example.org",
                Command::Rcpt(RcptTo {
                    to: mbox("b@example.org"),
                    notify: Some(Notify { success: true, failure: true, delay: false }),
                    orcpt: Some("rfc822;b+40example.org".into()),
                }),
            ),
            (
                "RCPT TO:<b@example.org> NOTIFY=NEVER",
                Command::Rcpt(RcptTo {
                    to: mbox("b@example.org"),
                    notify: Some(Notify::default()),
                    orcpt: None,
                }),
            ),
            (
                "RCPT TO:<postmaster>",
                Command::Rcpt(RcptTo { to: mbox("postmaster"), notify: None, orcpt: None }),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line.as_bytes()), Ok(want), "{line}");
        }
    }

    #[test]
    fn errors_map_to_rfc_replies() {
        let cases: &[(&str, u16, &str)] = &[
            ("FOO", 500, "5.5.1"),
            ("", 500, "5.5.1"),
            ("HELO", 501, "5.5.2"),
            ("MAIL TO:<a@b.c>", 501, "5.5.2"),
            ("MAIL FROM:a@b.c", 501, "5.1.7"),
            ("RCPT TO:<>", 501, "5.1.3"),
            ("RCPT TO:<a@@b>", 501, "5.1.3"),
            ("MAIL FROM:<a@b.c> FOO=1", 555, "5.5.4"),
            ("MAIL FROM:<a@b.c> BODY=BINARYMIME", 555, "5.5.4"),
            ("MAIL FROM:<a@b.c> SIZE=abc", 501, "5.5.4"),
            ("RCPT TO:<a@b.c> NOTIFY=SOMETIMES", 501, "5.5.4"),
            ("RCPT TO:<a@b.c> ORCPT=nosemicolon", 501, "5.5.4"),
            ("MAIL FROM:<a@b.c> ENVID=a=b", 501, "5.5.4"),
            ("BDAT", 501, "5.5.2"),
            ("BDAT -1", 501, "5.5.2"),
            ("BDAT 10 FIRST", 501, "5.5.2"),
            ("BDAT 99999999999999999999999", 501, "5.5.2"),
            ("DATA now", 501, "5.5.2"),
        ];
        for (line, code, enhanced) in cases {
            let err = parse(line.as_bytes()).unwrap_err();
            let reply = err.rejection().reply;
            assert_eq!(
                (reply.code, reply.enhanced.as_deref()),
                (*code, Some(*enhanced)),
                "{line}: {err}"
            );
        }
        assert!(parse(b"\xff\xfe").is_err());
    }

    #[test]
    fn xtext_rfc3461_4() {
        assert!(is_xtext("abc+2Bdef"));
        assert!(!is_xtext("abc+2"));
        assert!(!is_xtext("abc+zz"));
        assert!(!is_xtext("a b"));
        assert!(!is_xtext("a=b"));
    }

    /// Every ESMTP parameter against its grammar (RFC 3461 4, RFC 1870, RFC 6152, RFC 4954 5,
    /// RFC 6531): control characters, non-ASCII where UTF-8 is not allowed, and overlong values
    /// are 501 5.5.4, never stored or sent on. The EHLO argument likewise.
    #[test]
    fn esmtp_parameter_grammar() {
        let long = "x".repeat(600);
        let bad: Vec<String> = vec![
            "MAIL FROM:<a@b.c> SIZE=12\r3".into(),
            "MAIL FROM:<a@b.c> SIZE=+12".into(),
            "MAIL FROM:<a@b.c> SIZE=99999999999999999999999".into(),
            "MAIL FROM:<a@b.c> ENVID=ab\0c".into(),
            "MAIL FROM:<a@b.c> ENVID=a\x1bb".into(),
            "MAIL FROM:<a@b.c> ENVID=caf\u{e9}".into(),
            format!("MAIL FROM:<a@b.c> ENVID={long}"),
            "MAIL FROM:<a@b.c> ENVID=a=b".into(),
            "MAIL FROM:<a@b.c> RET=NONE".into(),
            "MAIL FROM:<a@b.c> AUTH=a\rb".into(),
            format!("MAIL FROM:<a@b.c> AUTH={long}"),
            "RCPT TO:<d@e.f> ORCPT=rfc822\r;d@e.f".into(),
            "RCPT TO:<d@e.f> ORCPT=rfc\0822;d@e.f".into(),
            "RCPT TO:<d@e.f> ORCPT=rfc822\t;d@e.f".into(),
            "RCPT TO:<d@e.f> ORCPT=;d@e.f".into(),
            "RCPT TO:<d@e.f> ORCPT=rfc822;d@e\x1b.f".into(),
            "RCPT TO:<d@e.f> ORCPT=rfc822;d\te.f".into(),
            format!("RCPT TO:<d@e.f> ORCPT=rfc822;{long}"),
            "RCPT TO:<d@e.f> NOTIFY=SUCCESS,NEVER".into(),
            "RCPT TO:<d@e.f> NOTIFY=SUCC\0ESS".into(),
            "EHLO foo\0bar".into(),
            "EHLO foo\x1bbar".into(),
            "HELO caf\u{e9}.example".into(),
            format!("EHLO {}", "a".repeat(256)),
        ];
        for line in &bad {
            let r = parse(line.as_bytes()).map(|_| ()).unwrap_err().rejection().reply;
            assert_eq!((r.code, r.enhanced.as_deref()), (501, Some("5.5.4")), "{line:?}");
        }
        // UTF-8 ENVID with SMTPUTF8 (RFC 6533), and well-formed values, are accepted.
        for line in [
            "MAIL FROM:<a@b.c> SMTPUTF8 ENVID=caf\u{e9}",
            "MAIL FROM:<a@b.c> ENVID=QQ+2B1 RET=HDRS SIZE=100 AUTH=<>",
            "RCPT TO:<d@e.f> ORCPT=rfc822;d+40e.f NOTIFY=SUCCESS,DELAY",
            "EHLO mail_relay-01.example",
        ] {
            assert!(parse(line.as_bytes()).is_ok(), "{line}");
        }
        // An unknown parameter's name is echoed printable only.
        let r = parse(b"MAIL FROM:<a@b.c> X\x1bY=1").unwrap_err().rejection().reply;
        assert_eq!(r.code, 555);
        assert!(r.to_line().bytes().all(|c| c >= 0x20), "{:?}", r.to_line());
    }
}
