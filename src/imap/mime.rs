//! ENVELOPE, BODYSTRUCTURE and MIME part sections (RFC 3501 7.4.2, 6.4.5) from the MIME tree
//! mail-parser finds. ENVELOPE fields are the raw header values (encoded words kept, folding
//! removed), as RFC 3501 asks and as Dovecot answers.

use std::ops::Range;

use imap_codec::imap_types::body::MultiPartExtensionData;
use imap_codec::imap_types::body::{
    BasicFields, Body, BodyStructure, Disposition, Language, Location, SinglePartExtensionData,
    SpecificFields,
};
use imap_codec::imap_types::core::{IString, NString, NonEmptyVec};
use imap_codec::imap_types::envelope::{Address, Envelope};
use mail_parser::{Headers, MessagePart, MessageRef};

/// A header field's value as written: unfolded, surrounding blanks trimmed.
fn raw_field(headers: &Headers<'_>, name: &str) -> Option<Vec<u8>> {
    let h = headers.iter().find(|h| h.raw_name().eq_ignore_ascii_case(name))?;
    let v: Vec<u8> = h.raw_value().iter().copied().filter(|&b| b != b'\r' && b != b'\n').collect();
    Some(v.trim_ascii().to_vec())
}

/// A MIME field of a part. Without a Content-Type, Dovecot reports the defaults whatever other
/// Content-* fields say, and so does this.
fn mime_field(part: &MessagePart<'_>, name: &str) -> Option<Vec<u8>> {
    let headers = part.headers();
    raw_field(&headers, "Content-Type")?;
    raw_field(&headers, name)
}

/// A field for ENVELOPE: unfolded, and sent as a literal when it was folded, as Dovecot does.
fn envelope_field(headers: &Headers<'_>, name: &str) -> NString<'static> {
    let Some(h) = headers.iter().find(|h| h.raw_name().eq_ignore_ascii_case(name)) else {
        return NString(None);
    };
    let raw = h.raw_value().trim_ascii();
    let v: Vec<u8> = raw.iter().copied().filter(|&b| b != b'\r' && b != b'\n').collect();
    if v.len() == raw.len() {
        nstring(Some(v))
    } else {
        NString(Some(IString::Literal(imap_codec::imap_types::core::Literal::unvalidated(v))))
    }
}

fn istring(bytes: impl Into<Vec<u8>>) -> IString<'static> {
    let bytes = bytes.into();
    match IString::try_from(bytes.clone()) {
        Ok(s) => s,
        // NUL or similar: a literal still carries it.
        Err(_) => IString::Literal(imap_codec::imap_types::core::Literal::unvalidated(bytes)),
    }
}

fn nstring(bytes: Option<Vec<u8>>) -> NString<'static> {
    NString(bytes.map(istring))
}

pub fn envelope(msg: &MessageRef<'_>) -> Envelope<'static> {
    let h = msg.headers();
    let addresses = |name: &str| raw_field(&h, name).map(|v| parse_addresses(&v));
    let from = addresses("From").unwrap_or_default();
    let sender = addresses("Sender").filter(|a| !a.is_empty()).unwrap_or_else(|| from.clone());
    let reply_to = addresses("Reply-To").filter(|a| !a.is_empty()).unwrap_or_else(|| from.clone());
    Envelope {
        date: envelope_field(&h, "Date"),
        subject: envelope_field(&h, "Subject"),
        from,
        sender,
        reply_to,
        to: addresses("To").unwrap_or_default(),
        cc: addresses("Cc").unwrap_or_default(),
        bcc: addresses("Bcc").unwrap_or_default(),
        in_reply_to: envelope_field(&h, "In-Reply-To"),
        message_id: envelope_field(&h, "Message-ID"),
    }
}

/// RFC 5322 tokens of an address header, comments kept apart (a comment after a bare
/// address is its display name, as in `ann@example.com (Ann)`).
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(Vec<u8>),
    Quoted(Vec<u8>),
    Comment(Vec<u8>),
    Special(u8),
}

/// The quoted string that starts at `v[*i]` (a `"`), unescaped; `*i` ends past its closing
/// quote (or at the end of an unterminated one).
fn quoted(v: &[u8], i: &mut usize) -> Vec<u8> {
    let mut s = Vec::new();
    *i += 1;
    while *i < v.len() && v[*i] != b'"' {
        if v[*i] == b'\\' && *i + 1 < v.len() {
            *i += 1;
        }
        s.push(v[*i]);
        *i += 1;
    }
    // Past the closing quote; an unterminated string ends at the end (never beyond it).
    *i = (*i + 1).min(v.len());
    s
}

fn tokenize(v: &[u8]) -> Vec<Token> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let c = v[i];
        match c {
            b' ' | b'\t' => i += 1,
            b'"' => out.push(Token::Quoted(quoted(v, &mut i))),
            b'(' => {
                let (mut depth, mut s) = (0, Vec::new());
                while i < v.len() {
                    match v[i] {
                        b'(' => depth += 1,
                        b')' => depth -= 1,
                        b'\\' if i + 1 < v.len() => i += 1,
                        _ => {}
                    }
                    if depth == 0 {
                        break;
                    }
                    if !(depth == 1 && v[i] == b'(') {
                        s.push(v[i]);
                    }
                    i += 1;
                }
                i += 1;
                out.push(Token::Comment(s));
            }
            b'<' | b'>' | b'@' | b',' | b';' | b':' => {
                out.push(Token::Special(c));
                i += 1;
            }
            _ => {
                let start = i;
                while i < v.len() && !b" \t\"(<>@,;:".contains(&v[i]) {
                    i += 1;
                }
                out.push(Token::Word(v[start..i].to_vec()));
            }
        }
    }
    out
}

fn address(name: Option<Vec<u8>>, adl: Option<Vec<u8>>, spec: &[Token]) -> Address<'static> {
    // addr-spec: local-part words up to '@', then the domain.
    let at = spec.iter().position(|t| *t == Token::Special(b'@'));
    let text = |ts: &[Token]| -> Vec<u8> {
        ts.iter()
            .filter_map(|t| match t {
                Token::Word(w) | Token::Quoted(w) => Some(w.clone()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .concat()
    };
    let (local, host) = match at {
        Some(a) => (text(&spec[..a]), Some(text(&spec[a + 1..]))),
        None => (text(spec), None),
    };
    // Dovecot fills what is missing with these markers.
    let host = host.filter(|h| !h.is_empty()).unwrap_or_else(|| b"MISSING_DOMAIN".to_vec());
    let local = if local.is_empty() { b"MISSING_MAILBOX".to_vec() } else { local };
    Address {
        name: nstring(name.filter(|n| !n.is_empty())),
        adl: nstring(adl),
        mailbox: nstring(Some(local)),
        host: nstring(Some(host)),
    }
}

fn phrase(ts: &[Token]) -> Option<Vec<u8>> {
    let words: Vec<&[u8]> = ts
        .iter()
        .filter_map(|t| match t {
            Token::Word(w) | Token::Quoted(w) => Some(w.as_slice()),
            Token::Special(b'.') => Some(b"."),
            _ => None,
        })
        .collect();
    (!words.is_empty()).then(|| words.join(&b' '))
}

fn comment(ts: &[Token]) -> Option<Vec<u8>> {
    ts.iter().rev().find_map(|t| match t {
        Token::Comment(c) => Some(c.clone()),
        _ => None,
    })
}

/// One mailbox: `phrase <[route:]addr-spec>` or a bare `addr-spec (comment)`.
fn mailbox(ts: &[Token]) -> Option<Address<'static>> {
    if ts.iter().all(|t| matches!(t, Token::Comment(_))) {
        return None;
    }
    if let Some(lt) = ts.iter().position(|t| *t == Token::Special(b'<')) {
        let gt = ts.iter().position(|t| *t == Token::Special(b'>')).unwrap_or(ts.len());
        let inner = &ts[lt + 1..gt.max(lt + 1)];
        let (adl, spec) = match inner.iter().position(|t| *t == Token::Special(b':')) {
            Some(c) => {
                let route: Vec<u8> = inner[..c]
                    .iter()
                    .map(|t| match t {
                        Token::Word(w) => w.clone(),
                        Token::Special(s) => vec![*s],
                        _ => Vec::new(),
                    })
                    .collect::<Vec<_>>()
                    .concat();
                (Some(route), &inner[c + 1..])
            }
            // `<@>`: a route that never ends.
            None if inner.first() == Some(&Token::Special(b'@')) => {
                (Some(b"INVALID_ROUTE".to_vec()), &inner[..0])
            }
            None => (None, inner),
        };
        return Some(address(phrase(&ts[..lt]), adl, spec));
    }
    let spec: Vec<Token> = ts.iter().filter(|t| !matches!(t, Token::Comment(_))).cloned().collect();
    Some(address(comment(ts), None, &spec))
}

pub fn parse_addresses(v: &[u8]) -> Vec<Address<'static>> {
    let tokens = tokenize(v);
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut group = false;
    while i <= tokens.len() {
        let t = tokens.get(i);
        match t {
            Some(Token::Special(b':')) if !group && !in_angle(&tokens[start..i]) => {
                // A group: (NIL NIL name NIL), its members, then (NIL NIL NIL NIL).
                out.push(Address {
                    name: NString(None),
                    adl: NString(None),
                    mailbox: nstring(phrase(&tokens[start..i])),
                    host: NString(None),
                });
                group = true;
                start = i + 1;
            }
            Some(Token::Special(b',')) | Some(Token::Special(b';')) | None
                if !in_angle(&tokens[start..i]) =>
            {
                if let Some(a) = mailbox(&tokens[start..i]) {
                    out.push(a);
                }
                if matches!(t, Some(Token::Special(b';'))) && group {
                    group = false;
                    out.push(Address {
                        name: NString(None),
                        adl: NString(None),
                        mailbox: NString(None),
                        host: NString(None),
                    });
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn in_angle(ts: &[Token]) -> bool {
    let open = ts.iter().filter(|t| **t == Token::Special(b'<')).count();
    let close = ts.iter().filter(|t| **t == Token::Special(b'>')).count();
    open > close
}

type Params = Vec<(IString<'static>, IString<'static>)>;

/// `value; key=value; key="quoted value"` as written (Content-Type, Content-Disposition):
/// the value in lower case and the parameters with lower-case names. RFC 2231 continuations
/// (`name*0`, `name*1`) are joined; a charset-encoded value (`name*`) is kept encoded, as
/// Dovecot keeps it.
fn structured_field(raw: &[u8]) -> (String, Vec<(String, Vec<u8>)>) {
    let mut i = 0;
    let until = |i: &mut usize, stop: &[u8]| {
        let start = *i;
        while *i < raw.len() && !stop.contains(&raw[*i]) {
            *i += 1;
        }
        raw[start..*i].trim_ascii().to_vec()
    };
    let value = String::from_utf8_lossy(&until(&mut i, b";")).to_ascii_lowercase();
    let mut params: Vec<(String, Vec<u8>)> = Vec::new();
    while i < raw.len() {
        i += 1; // ';'
        let key = String::from_utf8_lossy(&until(&mut i, b"=;")).to_ascii_lowercase();
        if i >= raw.len() || raw[i] != b'=' {
            continue;
        }
        i += 1;
        while i < raw.len() && raw[i].is_ascii_whitespace() {
            i += 1;
        }
        let v = if raw.get(i) == Some(&b'"') {
            let v = quoted(raw, &mut i);
            until(&mut i, b";");
            v
        } else {
            until(&mut i, b";")
        };
        if key.is_empty() {
            continue;
        }
        // name*0, name*1* ...: continuations of `name` (or `name*` when encoded).
        match key.split_once('*').filter(|(_, n)| n.trim_end_matches('*').parse::<u32>().is_ok()) {
            Some((base, n)) => {
                let name = if n.ends_with('*') { format!("{base}*") } else { base.to_string() };
                match params.iter_mut().find(|(k, _)| *k == name) {
                    Some((_, existing)) => existing.extend_from_slice(&v),
                    None => params.push((name, v)),
                }
            }
            None => params.push((key, v)),
        }
    }
    (value, params)
}

fn params(list: &[(String, Vec<u8>)]) -> Params {
    list.iter().map(|(k, v)| (istring(k.as_bytes()), istring(v.clone()))).collect()
}

fn lines(body: &[u8]) -> u32 {
    body.iter().filter(|&&b| b == b'\n').count() as u32
}

/// BODYSTRUCTURE (`extended`) or BODY of one part.
pub fn body_structure(part: &MessagePart<'_>, extended: bool) -> BodyStructure<'static> {
    let content_type = raw_field(&part.headers(), "Content-Type");
    let (value, mut ct_params) = match content_type {
        Some(raw) => structured_field(&raw),
        None => ("text/plain".into(), Vec::new()),
    };
    let (ctype, subtype) = match value.split_once('/') {
        Some((t, s)) => (t.trim().to_string(), s.trim().to_string()),
        None => ("text".into(), "plain".into()),
    };
    if ctype == "multipart" {
        let mut children: Vec<BodyStructure<'static>> =
            part.children().map(|c| body_structure(&c, extended)).collect();
        if children.is_empty() {
            // No boundary (or no parts): Dovecot shows one empty text part.
            children.push(empty_text(extended));
        }
        let bodies = NonEmptyVec::try_from(children).expect("at least one");
        let extension_data = extended.then(|| MultiPartExtensionData {
            parameter_list: params(&ct_params),
            tail: Some(disposition(part)),
        });
        return BodyStructure::Multi { bodies, subtype: istring(subtype), extension_data };
    }
    if ctype == "text" && !ct_params.iter().any(|(k, _)| k == "charset") {
        // RFC 2045 5.2: the default.
        ct_params.push(("charset".into(), b"us-ascii".to_vec()));
    }
    let parameter_list = params(&ct_params);
    let body = part.raw_body();
    let basic = BasicFields {
        parameter_list,
        id: nstring(mime_field(part, "Content-ID")),
        description: nstring(mime_field(part, "Content-Description")),
        content_transfer_encoding: istring(
            mime_field(part, "Content-Transfer-Encoding").unwrap_or_else(|| b"7bit".to_vec()),
        ),
        size: body.len() as u32,
    };
    let specific = match (ctype.as_str(), part.nested()) {
        ("message", Some(nested)) if subtype == "rfc822" || subtype == "global" => {
            SpecificFields::Message {
                envelope: Box::new(envelope(&nested)),
                body_structure: Box::new(body_structure(&nested.root_part(), extended)),
                number_of_lines: lines(body),
            }
        }
        ("text", _) => {
            SpecificFields::Text { subtype: istring(subtype), number_of_lines: lines(body) }
        }
        _ => SpecificFields::Basic { r#type: istring(ctype), subtype: istring(subtype) },
    };
    let extension_data = extended.then(|| SinglePartExtensionData {
        md5: nstring(mime_field(part, "Content-MD5")),
        tail: Some(disposition(part)),
    });
    BodyStructure::Single { body: Body { basic, specific }, extension_data }
}

fn empty_text(extended: bool) -> BodyStructure<'static> {
    BodyStructure::Single {
        body: Body {
            basic: BasicFields {
                parameter_list: vec![(istring(&b"charset"[..]), istring(&b"us-ascii"[..]))],
                id: NString(None),
                description: NString(None),
                content_transfer_encoding: istring(&b"7bit"[..]),
                size: 0,
            },
            specific: SpecificFields::Text { subtype: istring(&b"plain"[..]), number_of_lines: 0 },
        },
        extension_data: extended.then(|| SinglePartExtensionData {
            md5: NString(None),
            tail: Some(Disposition {
                disposition: None,
                tail: Some(Language {
                    language: Vec::new(),
                    tail: Some(Location { location: NString(None), extensions: Vec::new() }),
                }),
            }),
        }),
    }
}

fn disposition(part: &MessagePart<'_>) -> Disposition<'static> {
    let d = mime_field(part, "Content-Disposition").map(|raw| {
        let (value, p) = structured_field(&raw);
        (istring(value), params(&p))
    });
    let language: Vec<IString<'static>> = mime_field(part, "Content-Language")
        .map(|v| v.split(|&b| b == b',').map(|l| istring(l.trim_ascii().to_vec())).collect())
        .unwrap_or_default();
    Disposition {
        disposition: d,
        tail: Some(Language {
            language,
            tail: Some(Location {
                location: nstring(mime_field(part, "Content-Location")),
                extensions: Vec::new(),
            }),
        }),
    }
}

/// The wire form of ENVELOPE and BODY/BODYSTRUCTURE, written here rather than by imap-codec so
/// that it matches what Dovecot sends octet for octet (lower-case `"text"`, quoted strings
/// unless 8-bit or line breaks need a literal).
pub mod wire {
    use imap_codec::imap_types::body::{BodyExtension, BodyStructure, Disposition, SpecificFields};
    use imap_codec::imap_types::core::{IString, NString};
    use imap_codec::imap_types::envelope::{Address, Envelope};

    /// Quoted, unless it holds 8-bit octets, line breaks, quotes or backslashes: then a
    /// literal (Dovecot never escapes inside quotes).
    fn string(out: &mut Vec<u8>, bytes: &[u8]) {
        if bytes.iter().any(|&b| b >= 0x80 || b"\r\n\0\"\\".contains(&b)) {
            return literal(out, bytes);
        }
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    }

    fn istring(out: &mut Vec<u8>, s: &IString<'_>) {
        match s {
            IString::Literal(l) => literal(out, l.as_ref()),
            IString::Quoted(_) => string(out, s.as_ref()),
        }
    }

    fn literal(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(format!("{{{}}}\r\n", bytes.len()).as_bytes());
        out.extend_from_slice(bytes);
    }

    fn nstring(out: &mut Vec<u8>, s: &NString<'_>) {
        match &s.0 {
            Some(v) => istring(out, v),
            None => out.extend_from_slice(b"NIL"),
        }
    }

    fn addresses(out: &mut Vec<u8>, list: &[Address<'_>]) {
        if list.is_empty() {
            return out.extend_from_slice(b"NIL");
        }
        out.push(b'(');
        for a in list {
            out.push(b'(');
            for (i, f) in [&a.name, &a.adl, &a.mailbox, &a.host].into_iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                nstring(out, f);
            }
            out.push(b')');
        }
        out.push(b')');
    }

    pub fn envelope(out: &mut Vec<u8>, e: &Envelope<'_>) {
        out.push(b'(');
        nstring(out, &e.date);
        out.push(b' ');
        nstring(out, &e.subject);
        for list in [&e.from, &e.sender, &e.reply_to, &e.to, &e.cc, &e.bcc] {
            out.push(b' ');
            addresses(out, list);
        }
        out.push(b' ');
        nstring(out, &e.in_reply_to);
        out.push(b' ');
        nstring(out, &e.message_id);
        out.push(b')');
    }

    fn params(out: &mut Vec<u8>, list: &[(IString<'_>, IString<'_>)]) {
        if list.is_empty() {
            return out.extend_from_slice(b"NIL");
        }
        out.push(b'(');
        for (i, (k, v)) in list.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            istring(out, k);
            out.push(b' ');
            istring(out, v);
        }
        out.push(b')');
    }

    fn disposition(out: &mut Vec<u8>, d: &Disposition<'_>) {
        match &d.disposition {
            Some((kind, p)) => {
                out.push(b'(');
                istring(out, kind);
                out.push(b' ');
                params(out, p);
                out.push(b')');
            }
            None => out.extend_from_slice(b"NIL"),
        }
        let Some(lang) = &d.tail else { return };
        out.push(b' ');
        match lang.language.as_slice() {
            [] => out.extend_from_slice(b"NIL"),
            [one] => istring(out, one),
            many => {
                out.push(b'(');
                for (i, l) in many.iter().enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    istring(out, l);
                }
                out.push(b')');
            }
        }
        let Some(loc) = &lang.tail else { return };
        out.push(b' ');
        nstring(out, &loc.location);
        for x in &loc.extensions {
            out.push(b' ');
            extension(out, x);
        }
    }

    fn extension(out: &mut Vec<u8>, x: &BodyExtension<'_>) {
        match x {
            BodyExtension::NString(s) => nstring(out, s),
            BodyExtension::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
            BodyExtension::List(l) => {
                out.push(b'(');
                for (i, x) in l.as_ref().iter().enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    extension(out, x);
                }
                out.push(b')');
            }
        }
    }

    /// BODYSTRUCTURE when the structure carries extension data, BODY when it does not.
    pub fn body(out: &mut Vec<u8>, b: &BodyStructure<'_>) {
        out.push(b'(');
        match b {
            BodyStructure::Multi { bodies, subtype, extension_data } => {
                for child in bodies.as_ref() {
                    body(out, child);
                }
                out.push(b' ');
                istring(out, subtype);
                if let Some(x) = extension_data {
                    out.push(b' ');
                    params(out, &x.parameter_list);
                    if let Some(d) = &x.tail {
                        out.push(b' ');
                        disposition(out, d);
                    }
                }
            }
            BodyStructure::Single { body: part, extension_data } => {
                match &part.specific {
                    SpecificFields::Basic { r#type, subtype } => {
                        istring(out, r#type);
                        out.push(b' ');
                        istring(out, subtype);
                    }
                    SpecificFields::Message { .. } => {
                        out.extend_from_slice(b"\"message\" \"rfc822\"")
                    }
                    SpecificFields::Text { subtype, .. } => {
                        out.extend_from_slice(b"\"text\" ");
                        istring(out, subtype);
                    }
                }
                let f = &part.basic;
                out.push(b' ');
                params(out, &f.parameter_list);
                out.push(b' ');
                nstring(out, &f.id);
                out.push(b' ');
                nstring(out, &f.description);
                out.push(b' ');
                istring(out, &f.content_transfer_encoding);
                out.extend_from_slice(format!(" {}", f.size).as_bytes());
                match &part.specific {
                    SpecificFields::Message { envelope: e, body_structure, number_of_lines } => {
                        out.push(b' ');
                        envelope(out, e);
                        out.push(b' ');
                        body(out, body_structure);
                        out.extend_from_slice(format!(" {number_of_lines}").as_bytes());
                    }
                    SpecificFields::Text { number_of_lines, .. } => {
                        out.extend_from_slice(format!(" {number_of_lines}").as_bytes());
                    }
                    SpecificFields::Basic { .. } => {}
                }
                if let Some(x) = extension_data {
                    out.push(b' ');
                    nstring(out, &x.md5);
                    if let Some(d) = &x.tail {
                        out.push(b' ');
                        disposition(out, d);
                    }
                }
            }
        }
        out.push(b')');
    }
}

/// Where a MIME part (`1.2` in `BODY[1.2]`) is inside the message, as byte ranges.
#[derive(Debug, Clone)]
pub struct PartRange {
    /// The part's MIME header (`BODY[1.2.MIME]`).
    pub mime: Range<usize>,
    /// Its body (`BODY[1.2]`).
    pub body: Range<usize>,
    /// For a message/rfc822 part: the nested message's header and text
    /// (`BODY[1.2.HEADER]`, `BODY[1.2.TEXT]`).
    pub nested: Option<(Range<usize>, Range<usize>)>,
    /// A part of a multipart that is neither multipart nor message/rfc822: as the last
    /// number of a section, its part 1 is itself (`BODY[2.1]` of a text/html part 2 is its
    /// body, as Dovecot answers).
    pub leaf: bool,
}

/// Parses a message for `f` (an empty or unparsable file still has an empty header and body).
pub fn parse<T>(raw: &[u8], f: impl FnOnce(&mail_parser::Message<'_>) -> T) -> std::io::Result<T> {
    let message = mail_parser::MessageParser::new()
        .parse(raw)
        .or_else(|| mail_parser::MessageParser::new().parse(b"\r\n"))
        .ok_or_else(|| std::io::Error::other("unparsable message"))?;
    Ok(f(&message))
}

/// Every part with its part number (`[1, 2]` for `BODY[1.2]`), in depth-first order, with its
/// octets' ranges in `raw` (the message as stored). Parts inside a transfer-encoded nested
/// message have no place in `raw` and are left out (a section of one is empty).
pub fn part_ranges(msg: &MessageRef<'_>, raw: &[u8]) -> Vec<(Vec<u32>, PartRange)> {
    let mut out = Vec::new();
    walk(msg.root_part(), true, raw, &mut Vec::new(), &mut out);
    out
}

/// RFC 3501 6.4.5 numbering: a multipart's parts are 1..n; a message/rfc822 part's are its
/// nested message's (its body is part 1 when not multipart); a message that is not
/// multipart has one part, its body. Those last two are the part itself under another
/// number, not parts of their own (`real` false), so they have no part 1 of their own.
fn walk(
    current: MessagePart<'_>,
    top: bool,
    raw: &[u8],
    path: &mut Vec<u32>,
    out: &mut Vec<(Vec<u32>, PartRange)>,
) {
    let kids: Vec<(MessagePart<'_>, bool)> = if multipart(&current) {
        current.children().map(|c| (c, true)).collect()
    } else if top {
        // Part 1 of a single-part message is its body, also when that body is a whole
        // message (Content-Type: message/rfc822): then 1.HEADER, 1.TEXT and 1.1 are the
        // encapsulated message's, as for such a part inside a multipart.
        vec![(current, false)]
    } else if let Some(nested) = current.nested() {
        let root = nested.root_part();
        match multipart(&root) {
            true => root.children().map(|c| (c, true)).collect(),
            false => vec![(root, false)],
        }
    } else {
        Vec::new()
    };
    for (n, (kid, real)) in kids.into_iter().enumerate() {
        path.push(n as u32 + 1);
        if let Some(mut r) = part_range(&kid, raw) {
            r.leaf &= real;
            out.push((path.clone(), r));
            walk(kid, false, raw, path, out);
        }
        path.pop();
    }
}

/// A multipart by its header, even one mail-parser read as text (no boundary): it has no
/// parts, as Dovecot and BODYSTRUCTURE see it.
fn multipart(part: &MessagePart<'_>) -> bool {
    part.is_multipart()
        || raw_field(&part.headers(), "Content-Type").is_some_and(|raw| {
            structured_field(&raw).0.trim().to_ascii_lowercase().starts_with("multipart/")
        })
}

fn part_range(part: &MessagePart<'_>, raw: &[u8]) -> Option<PartRange> {
    let base = raw.as_ptr() as usize;
    let range = |s: &[u8]| -> Option<Range<usize>> {
        let start = (s.as_ptr() as usize).checked_sub(base)?;
        (start + s.len() <= raw.len()).then_some(start..start + s.len())
    };
    let nested = match part.nested() {
        Some(m) => {
            let r = m.root_part();
            Some((range(r.raw_headers())?, range(r.raw_body())?))
        }
        None => None,
    };
    let leaf = nested.is_none() && !multipart(part);
    Some(PartRange {
        mime: range(part.raw_headers())?,
        body: range(part.raw_body())?,
        nested,
        leaf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(v: &str) -> String {
        let a = parse_addresses(v.as_bytes());
        let env = Envelope {
            date: NString(None),
            subject: NString(None),
            from: a,
            sender: vec![],
            reply_to: vec![],
            to: vec![],
            cc: vec![],
            bcc: vec![],
            in_reply_to: NString(None),
            message_id: NString(None),
        };
        let mut out = Vec::new();
        wire::envelope(&mut out, &env);
        let text = String::from_utf8(out).unwrap();
        text.strip_prefix("(NIL NIL ").unwrap().to_string()
    }

    /// An unterminated quoted parameter (hostile or cut-off header) ends at the end of the
    /// field; it used to slice past it and panic.
    #[test]
    fn an_unterminated_quoted_parameter_is_read_to_the_end() {
        let (value, params) = structured_field(b"text/plain; name=\"abc");
        assert_eq!(value, "text/plain");
        assert_eq!(params, [("name".to_string(), b"abc".to_vec())]);
        let (_, params) = structured_field(b"text/plain; a=\"x\\");
        assert_eq!(params, [("a".to_string(), b"x\\".to_vec())]);
        assert!(!addresses("\"Ann <a@b>").is_empty());
    }

    #[test]
    fn addresses_parse_like_rfc_3501_envelopes() {
        assert!(
            addresses("Ann Example <ann@example.com>")
                .starts_with(r#"(("Ann Example" NIL "ann" "example.com"))"#)
        );
        assert!(
            addresses("\"Doe, J.\" <j@d.org>, b@c.net (Bee)")
                .starts_with(r#"(("Doe, J." NIL "j" "d.org")("Bee" NIL "b" "c.net"))"#)
        );
        assert!(
            addresses("undisclosed-recipients:;")
                .starts_with(r#"((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))"#)
        );
        assert!(addresses("<@r1,@r2:x@y>").starts_with(r#"((NIL "@r1,@r2" "x" "y"))"#));
    }
}
