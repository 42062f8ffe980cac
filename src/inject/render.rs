//! Turning one injection request into one message per recipient, without I/O: templates
//! (minijinja, compiled once per request) and MIME (mail-builder).

use std::sync::Arc;

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::text::Text;
use minijinja::{AutoEscape, Environment};
use serde_json::{Map, Value};

use super::request::{Builder, Content, RecipientSpec};

/// Work one render may do (minijinja "fuel"): a loop that never ends fails instead of holding
/// a thread. A 20 KB template over a few hundred variables uses a small fraction of it.
const FUEL: u64 = 5_000_000;

/// The longest line RFC 5322 2.1.1 allows, without CRLF.
const MAX_LINE: usize = 998;

/// A template that does not compile or render: the part and line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{part}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct TemplateError {
    /// `content`, `content.subject`, `content.headers.X-Foo`, ...
    pub part: String,
    pub line: Option<usize>,
    pub message: String,
}

impl TemplateError {
    fn new(part: &str, e: &minijinja::Error) -> Self {
        let message = match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        };
        TemplateError { part: part.to_string(), line: e.line(), message }
    }
}

/// The parts of the content, as template names (the `.html` one is HTML-escaped).
const RAW: &str = "content";
const SUBJECT: &str = "content.subject";
const TEXT: &str = "content.text_body";
const HTML: &str = "content.html_body.html";

/// A request's content, compiled.
pub struct Plan {
    content: Content,
    /// None: no substitutions anywhere, so the content is used as given.
    env: Option<Environment<'static>>,
    hostname: String,
    /// The largest message one recipient's rendering may make (`[limits] max_message_size`):
    /// template output is cut off there, and a larger built message is refused.
    max_size: usize,
}

/// An output that refuses to grow past its limit: template output is written here, so what
/// a template writes cannot make a message larger than the limit.
struct Bounded {
    out: Vec<u8>,
    limit: usize,
    /// Set when a write was refused.
    full: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + b.len() > self.limit {
            self.full = true;
            return Err(std::io::ErrorKind::FileTooLarge.into());
        }
        self.out.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Per message: who it is for and its ids.
pub struct Target<'a> {
    pub recipient: &'a RecipientSpec,
    /// The variables: the request's, then the recipient's over them.
    pub globals: &'a Map<String, Value>,
    /// `<local@hostname>` without the brackets.
    pub message_id: String,
    pub unix_time: u64,
}

impl Plan {
    /// Compiles every templated part once. `templated = false` (no substitutions, or the
    /// Static dialect) takes the content literally.
    pub fn compile(
        content: Content,
        templated: bool,
        hostname: &str,
        max_size: usize,
    ) -> Result<Plan, TemplateError> {
        let env = templated.then(|| build_env(&content)).transpose()?;
        if let Content::Raw(raw) = &content
            && env.is_none()
        {
            check_lines(raw.as_bytes(), RAW)?;
        }
        Ok(Plan { content, env, hostname: hostname.to_string(), max_size })
    }

    /// The message for one recipient (headers and body, CRLF line ends).
    pub fn render(&self, t: &Target<'_>) -> Result<Vec<u8>, TemplateError> {
        let ctx = self.env.as_ref().map(|_| context(t));
        let render = |name: &str, literal: &str| -> Result<String, TemplateError> {
            match (&self.env, &ctx) {
                (Some(env), Some(ctx)) => {
                    let tmpl =
                        env.get_template(name).map_err(|e| TemplateError::new(part(name), &e))?;
                    let mut out = Bounded { out: Vec::new(), limit: self.max_size, full: false };
                    match tmpl.render_captured_to(ctx, &mut out) {
                        // Templates are UTF-8 and write whole values: the output is too.
                        Ok(_) => Ok(String::from_utf8_lossy(&out.out).into_owned()),
                        Err(_) if out.full => Err(self.too_large(part(name))),
                        Err(e) => Err(TemplateError::new(part(name), &e)),
                    }
                }
                _ => Ok(literal.to_string()),
            }
        };
        let msg = match &self.content {
            Content::Raw(raw) => {
                let text = render(RAW, raw)?;
                let msg = complete_raw(&text, t, &self.hostname);
                check_lines(&msg, RAW)?;
                msg
            }
            Content::Builder(b) => self.build(b, t, &render)?,
        };
        if msg.len() > self.max_size {
            return Err(self.too_large("content"));
        }
        Ok(msg)
    }

    fn too_large(&self, part: &str) -> TemplateError {
        TemplateError {
            part: part.to_string(),
            line: None,
            message: format!(
                "the rendered message is larger than {} octets ([limits] max_message_size)",
                self.max_size
            ),
        }
    }

    fn build(
        &self,
        b: &Builder,
        t: &Target<'_>,
        render: &dyn Fn(&str, &str) -> Result<String, TemplateError>,
    ) -> Result<Vec<u8>, TemplateError> {
        let has = |name: &str| b.headers.keys().any(|k| k.eq_ignore_ascii_case(name));
        let mut m = MessageBuilder::new().message_id(t.message_id.clone()).date(t.unix_time as i64);
        if let Some(from) = &b.from {
            m = m.from(Address::new_address(from.name.clone(), from.email.clone()));
        }
        if !has("To") {
            m = m.to(Address::new_address(t.recipient.name.clone(), t.recipient.email.clone()));
        }
        if let Some(r) = &b.reply_to {
            m = m.reply_to(Address::new_address(r.name.clone(), r.email.clone()));
        }
        if let Some(s) = &b.subject {
            m = m.subject(render(SUBJECT, s)?);
        }
        for (name, value) in &b.headers {
            let value = render(&header_template(name), value)?;
            m = m.header(canonical_header(name), Text::new(value));
        }
        if let Some(text) = &b.text_body {
            m = m.text_body(render(TEXT, text)?);
        }
        if let Some(html) = &b.html_body {
            m = m.html_body(render(HTML, html)?);
        }
        for (i, a) in b.attachments.iter().enumerate() {
            let data = attachment_bytes(a).map_err(|message| TemplateError {
                part: format!("content.attachments[{i}].data"),
                line: None,
                message,
            })?;
            m = match &a.content_id {
                Some(cid) => m.inline(content_type(a), cid.clone(), data),
                None => m.attachment(
                    content_type(a),
                    a.file_name.clone().unwrap_or_else(|| "attachment".into()),
                    data,
                ),
            };
        }
        let out = m.write_to_vec().map_err(|e| TemplateError {
            part: "content".into(),
            line: None,
            message: e.to_string(),
        })?;
        Ok(out)
    }
}

/// Checks what a builder request asks for before any message is made. Errors name the field.
pub fn check_builder(b: &Builder) -> Result<(), String> {
    for (field, set, header) in [
        ("from", b.from.is_some(), "From"),
        ("subject", b.subject.is_some(), "Subject"),
        ("reply_to", b.reply_to.is_some(), "Reply-To"),
    ] {
        if set && b.headers.keys().any(|k| k.eq_ignore_ascii_case(header)) {
            return Err(format!("content.headers.{header}: conflicts with content.{field}"));
        }
    }
    for name in b.headers.keys() {
        // RFC 5322 2.2: printable ASCII except the colon.
        if name.is_empty() || !name.bytes().all(|c| (33..=126).contains(&c) && c != b':') {
            return Err(format!("content.headers: {name:?} is not a header field name"));
        }
        if ["MIME-Version", "Content-Type", "Content-Transfer-Encoding"]
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
        {
            return Err(format!("content.headers.{name}: set by the builder"));
        }
    }
    if b.text_body.is_none() && b.html_body.is_none() && b.attachments.is_empty() {
        return Err("content: a built message needs text_body, html_body or attachments".into());
    }
    for (i, a) in b.attachments.iter().enumerate() {
        attachment_bytes(a).map_err(|e| format!("content.attachments[{i}].data: {e}"))?;
        if !a.content_type.contains('/') {
            return Err(format!("content.attachments[{i}].content_type: not a MIME type"));
        }
    }
    Ok(())
}

fn attachment_bytes(a: &super::request::Attachment) -> Result<Vec<u8>, String> {
    if a.base64 {
        use base64::Engine;
        let clean: String = a.data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(clean)
            .map_err(|e| format!("bad base64: {e}"))
    } else {
        Ok(a.data.clone().into_bytes())
    }
}

/// The attachment's type with its parameters; text given as a JSON string is UTF-8, and says
/// so when the type names no charset.
fn content_type(a: &super::request::Attachment) -> ContentType<'static> {
    let mut parts = a.content_type.split(';');
    let main = parts.next().unwrap_or("application/octet-stream").trim().to_ascii_lowercase();
    let mut ct = ContentType::new(main.clone());
    let mut has_charset = false;
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            let k = k.trim().to_ascii_lowercase();
            has_charset |= k == "charset";
            ct = ct.attribute(k, v.trim().trim_matches('"').to_string());
        }
    }
    if main.starts_with("text/") && !a.base64 && !has_charset {
        ct = ct.attribute("charset", "utf-8");
    }
    ct
}

fn header_template(name: &str) -> String {
    format!("content.headers.{name}")
}

/// mail-builder recognises `Message-ID` and `Date` by exact name.
fn canonical_header(name: &str) -> String {
    for known in ["Message-ID", "Date"] {
        if name.eq_ignore_ascii_case(known) {
            return known.to_string();
        }
    }
    name.to_string()
}

fn part(name: &str) -> &str {
    name.strip_suffix(".html").unwrap_or(name)
}

fn build_env(content: &Content) -> Result<Environment<'static>, TemplateError> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") { AutoEscape::Html } else { AutoEscape::None }
    });
    let mut add = |name: String, source: &str| {
        env.add_template_owned(name.clone(), source.to_string())
            .map_err(|e| TemplateError::new(part(&name), &e))
    };
    match content {
        Content::Raw(raw) => add(RAW.into(), raw)?,
        Content::Builder(b) => {
            if let Some(s) = &b.subject {
                add(SUBJECT.into(), s)?;
            }
            if let Some(s) = &b.text_body {
                add(TEXT.into(), s)?;
            }
            if let Some(s) = &b.html_body {
                add(HTML.into(), s)?;
            }
            for (name, value) in &b.headers {
                add(header_template(name), value)?;
            }
        }
    }
    Ok(env)
}

/// The request's variables with the recipient's over them.
fn context(t: &Target<'_>) -> Value {
    let mut vars = t.globals.clone();
    for (k, v) in &t.recipient.substitutions {
        vars.insert(k.clone(), v.clone());
    }
    Value::Object(vars)
}

/// A raw message with CRLF line ends, and the `Date` and `Message-ID` fields RFC 5322 3.6
/// asks for when the injector left them out.
fn complete_raw(text: &str, t: &Target<'_>, _hostname: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(text.len() + 128);
    let mut prev = 0u8;
    for &b in text.as_bytes() {
        if b == b'\n' && prev != b'\r' {
            body.push(b'\r');
        }
        body.push(b);
        prev = b;
    }
    if !body.ends_with(b"\r\n") {
        body.extend_from_slice(b"\r\n");
    }
    let header_end = memchr::memmem::find(&body, b"\r\n\r\n").map_or(body.len(), |i| i + 2);
    let mut extra = String::new();
    if crate::proto::smtp::message::header_value(&body[..header_end], "Date").is_none() {
        extra.push_str(&format!(
            "Date: {}\r\n",
            crate::proto::smtp::message::rfc5322_date(t.unix_time)
        ));
    }
    if crate::proto::smtp::message::message_id(&body[..header_end]).is_none() {
        extra.push_str(&format!("Message-ID: <{}>\r\n", t.message_id));
    }
    if extra.is_empty() {
        return body;
    }
    let mut out = Vec::with_capacity(body.len() + extra.len());
    out.extend_from_slice(extra.as_bytes());
    out.extend_from_slice(&body);
    out
}

fn check_lines(msg: &[u8], part: &str) -> Result<(), TemplateError> {
    for (n, line) in msg.split(|&b| b == b'\n').enumerate() {
        let len = line.strip_suffix(b"\r").unwrap_or(line).len();
        if len > MAX_LINE {
            return Err(TemplateError {
                part: part.into(),
                line: Some(n + 1),
                message: format!("line of {len} octets (RFC 5322 2.1.1 allows {MAX_LINE})"),
            });
        }
    }
    Ok(())
}

/// Shared by the render tasks of one request.
pub type SharedPlan = Arc<Plan>;
