//! The IMAP4rev1 session (RFC 3501): commands decoded by imap-codec in, encoded responses out.
//! Protocol state and replies live here; the driver ([`super::run`]) does framing, TLS and
//! password checks. Mailbox data comes from the user's Maildir through
//! [`crate::local::mailstore`] (blocking file I/O: the driver runs [`Session::execute`] on the
//! blocking pool).
//!
//! This first part serves INBOX: CAPABILITY, NOOP, LOGOUT, STARTTLS, LOGIN, AUTHENTICATE PLAIN
//! (with SASL-IR or a continuation), SELECT, EXAMINE, LIST, LSUB, STATUS, CHECK, CLOSE,
//! UNSELECT, EXPUNGE, SEARCH (flag, size, sequence and UID keys), FETCH (FLAGS, UID,
//! INTERNALDATE, RFC822.SIZE, RFC822, RFC822.HEADER, RFC822.TEXT, BODY[]/BODY.PEEK[] with
//! HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT and partial ranges), STORE and the UID
//! forms. Folders, APPEND, COPY, MOVE, ENVELOPE and BODYSTRUCTURE answer NO for now.

use std::borrow::Cow;
use std::num::NonZeroU32;
use std::path::Path;

use base64::Engine;
use imap_codec::ResponseCodec;
use imap_codec::encode::Encoder;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{AString, Literal, NString, NonEmptyVec, Tag};
use imap_codec::imap_types::fetch::{
    MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName, Section,
};
use imap_codec::imap_types::flag::{Flag, FlagFetch, FlagNameAttribute, FlagPerm, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::response::{Code, Data, Response, Status};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_codec::imap_types::status::{StatusDataItem, StatusDataItemName};

use crate::local::Maildir;
use crate::local::mailstore::{self, MessageInfo, Snapshot, flag};
use crate::proto::smtp::client::Credentials;

#[derive(Debug, Clone)]
pub struct ImapConfig {
    pub hostname: String,
    /// STARTTLS is offered (a certificate is set, the session is not TLS yet).
    pub starttls: bool,
    /// LOGIN and AUTHENTICATE without TLS (`[auth] plaintext_on_loopback`, loopback listener).
    pub plaintext_ok: bool,
}

/// What the driver must do after a command.
#[derive(Debug)]
pub enum Next {
    Continue,
    /// Check the password; answer with [`Session::login_result`].
    Login {
        tag: Tag<'static>,
        creds: Credentials,
    },
    /// AUTHENTICATE without an initial response: send `+ `, read one line of base64 and give
    /// it to [`Session::authenticate_data`].
    AuthenticateData {
        tag: Tag<'static>,
    },
    /// Send the output, then start TLS, then [`Session::tls_established`].
    StartTls,
    /// IDLE (RFC 2177): send `+ idling`, report changes with [`Session::refresh`] until the
    /// client's DONE, then [`Session::idle_done`].
    Idle {
        tag: Tag<'static>,
    },
    /// Send the output and close.
    Close,
}

/// The selected mailbox as the client knows it: sequence numbers are positions here.
struct View {
    read_only: bool,
    /// Shared with other sessions until this one changes it (copy on write).
    snapshot: std::sync::Arc<Snapshot>,
}

enum State {
    NotAuthenticated,
    Authenticated,
    Selected(View),
    Logout,
}

pub struct Session {
    cfg: ImapConfig,
    tls: bool,
    state: State,
    maildir: Option<Maildir>,
    out: Vec<u8>,
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("at least 1")
}

/// Whether `n` is in the set, with `*` meaning `largest` (never iterates a range: `1:*` over
/// 4 billion UIDs costs the same as `1:2`).
pub fn contains(set: &SequenceSet, n: u32, largest: u32) -> bool {
    let value = |s: &SeqOrUid| match s {
        SeqOrUid::Value(v) => v.get(),
        SeqOrUid::Asterisk => largest,
    };
    set.0.as_ref().iter().any(|seq| match seq {
        Sequence::Single(s) => value(s) == n,
        Sequence::Range(a, b) => {
            let (lo, hi) = (value(a).min(value(b)), value(a).max(value(b)));
            (lo..=hi).contains(&n)
        }
    })
}

fn flags_of(bits: u8) -> Vec<Flag<'static>> {
    let mut v = Vec::new();
    for (bit, f) in [
        (flag::SEEN, Flag::Seen),
        (flag::ANSWERED, Flag::Answered),
        (flag::FLAGGED, Flag::Flagged),
        (flag::DELETED, Flag::Deleted),
        (flag::DRAFT, Flag::Draft),
    ] {
        if bits & bit != 0 {
            v.push(f);
        }
    }
    v
}

fn bits_of(flags: &[Flag<'_>]) -> u8 {
    flags.iter().fold(0, |acc, f| {
        acc | match f {
            Flag::Seen => flag::SEEN,
            Flag::Answered => flag::ANSWERED,
            Flag::Flagged => flag::FLAGGED,
            Flag::Deleted => flag::DELETED,
            Flag::Draft => flag::DRAFT,
            // Keywords are not kept (PERMANENTFLAGS lists the system flags only).
            _ => 0,
        }
    })
}

fn is_inbox(m: &Mailbox<'_>) -> bool {
    match m {
        Mailbox::Inbox => true,
        Mailbox::Other(o) => o.as_ref().eq_ignore_ascii_case(b"INBOX"),
    }
}

impl Session {
    pub fn new(cfg: ImapConfig, tls: bool) -> Session {
        let mut s =
            Session { cfg, tls, state: State::NotAuthenticated, maildir: None, out: Vec::new() };
        let caps = s.capabilities();
        let greeting = format!("* OK [CAPABILITY {caps}] {} IMAP4rev1 ready\r\n", s.cfg.hostname);
        s.out.extend_from_slice(greeting.as_bytes());
        s
    }

    /// Encoded responses to send (drained).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    fn login_allowed(&self) -> bool {
        self.tls || self.cfg.plaintext_ok
    }

    fn capabilities(&self) -> String {
        let mut caps = vec!["IMAP4rev1", "LITERAL+", "SASL-IR", "IDLE"];
        if matches!(self.state, State::NotAuthenticated) {
            if self.cfg.starttls && !self.tls {
                caps.push("STARTTLS");
            }
            if self.login_allowed() {
                caps.push("AUTH=PLAIN");
            } else {
                caps.push("LOGINDISABLED");
            }
        }
        caps.join(" ")
    }

    fn send(&mut self, r: Response<'_>) {
        self.out.extend(ResponseCodec::default().encode(&r).dump());
    }

    fn data(&mut self, d: Data<'_>) {
        self.send(Response::Data(d));
    }

    fn ok(&mut self, tag: &Tag<'_>, code: Option<Code<'_>>, text: &str) {
        let s = Status::ok(Some(tag.clone()), code, text).expect("valid text");
        self.send(Response::Status(s));
    }

    fn no(&mut self, tag: &Tag<'_>, text: &str) {
        let s = Status::no(Some(tag.clone()), None, text).expect("valid text");
        self.send(Response::Status(s));
    }

    fn bad(&mut self, tag: &Tag<'_>, text: &str) {
        let s = Status::bad(Some(tag.clone()), None, text).expect("valid text");
        self.send(Response::Status(s));
    }

    /// A line the codec could not parse (`tag` when one was readable).
    pub fn unparsable(&mut self, tag: Option<&Tag<'_>>) {
        match tag {
            Some(t) => self.bad(t, "Syntax error"),
            None => self.out.extend_from_slice(b"* BAD Syntax error\r\n"),
        }
    }

    /// An untagged BYE (timeout, shutdown); the driver closes after sending it.
    pub fn bye(&mut self, text: &str) {
        self.out.extend_from_slice(format!("* BYE {text}\r\n").as_bytes());
        self.state = State::Logout;
    }

    pub fn is_logged_out(&self) -> bool {
        matches!(self.state, State::Logout)
    }

    pub fn is_authenticated(&self) -> bool {
        !matches!(self.state, State::NotAuthenticated)
    }

    pub fn execute(&mut self, cmd: Command<'static>) -> Next {
        let tag = cmd.tag.clone();
        match cmd.body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                self.out.extend_from_slice(format!("* CAPABILITY {caps}\r\n").as_bytes());
                self.ok(&tag, None, "CAPABILITY completed");
            }
            CommandBody::Noop | CommandBody::Check => {
                self.refresh();
                self.ok(&tag, None, "completed");
            }
            CommandBody::Logout => {
                self.out.extend_from_slice(b"* BYE Logging out\r\n");
                self.ok(&tag, None, "LOGOUT completed");
                self.state = State::Logout;
                return Next::Close;
            }
            body => return self.by_state(tag, body),
        }
        Next::Continue
    }

    fn by_state(&mut self, tag: Tag<'static>, body: CommandBody<'static>) -> Next {
        match (&self.state, body) {
            (State::NotAuthenticated, CommandBody::StartTLS) if self.cfg.starttls && !self.tls => {
                self.ok(&tag, None, "Begin TLS negotiation now");
                return Next::StartTls;
            }
            (State::NotAuthenticated, CommandBody::Login { username, password }) => {
                if !self.login_allowed() {
                    self.no(&tag, "[PRIVACYREQUIRED] LOGIN needs TLS; use STARTTLS");
                    return Next::Continue;
                }
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                let pass = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                return Next::Login {
                    tag,
                    creds: Credentials { username: user, password: pass.into() },
                };
            }
            (
                State::NotAuthenticated,
                CommandBody::Authenticate { mechanism, initial_response },
            ) => {
                if !self.login_allowed() {
                    self.no(&tag, "[PRIVACYREQUIRED] AUTHENTICATE needs TLS; use STARTTLS");
                } else if mechanism != imap_codec::imap_types::auth::AuthMechanism::Plain {
                    self.no(&tag, "Unsupported mechanism");
                } else {
                    return match initial_response {
                        Some(r) => self.authenticate_data(tag, r.declassify().as_ref()),
                        None => Next::AuthenticateData { tag },
                    };
                }
            }
            (State::NotAuthenticated, _) => self.bad(&tag, "Log in first"),
            (_, CommandBody::Login { .. } | CommandBody::Authenticate { .. }) => {
                self.bad(&tag, "Already authenticated")
            }
            (_, CommandBody::Select { mailbox }) => self.select(&tag, &mailbox, false),
            (_, CommandBody::Examine { mailbox }) => self.select(&tag, &mailbox, true),
            (_, CommandBody::List { reference, mailbox_wildcard }) => {
                self.list(&tag, &reference, &mailbox_wildcard, false)
            }
            (_, CommandBody::Lsub { reference, mailbox_wildcard }) => {
                self.list(&tag, &reference, &mailbox_wildcard, true)
            }
            (_, CommandBody::Status { mailbox, item_names }) => {
                self.status(&tag, &mailbox, &item_names)
            }
            (_, CommandBody::Idle) => return Next::Idle { tag },
            (State::Selected(_), body) => self.selected(&tag, body),
            (_, CommandBody::Close | CommandBody::Unselect | CommandBody::Expunge) => {
                self.bad(&tag, "No mailbox selected")
            }
            (
                _,
                CommandBody::Fetch { .. } | CommandBody::Store { .. } | CommandBody::Search { .. },
            ) => self.bad(&tag, "No mailbox selected"),
            _ => self.no(&tag, "[CANNOT] Not supported by this server yet"),
        }
        Next::Continue
    }

    /// The client's base64 line for AUTHENTICATE PLAIN (RFC 4616), already decoded.
    pub fn authenticate_data(&mut self, tag: Tag<'static>, data: &[u8]) -> Next {
        let b64 = base64::engine::general_purpose::STANDARD.encode(data);
        match crate::proto::smtp::sasl::start("PLAIN", Some(&b64)) {
            Ok(crate::proto::smtp::sasl::Progress::Done(creds)) => Next::Login { tag, creds },
            _ => {
                self.bad(&tag, "Malformed PLAIN response");
                Next::Continue
            }
        }
    }

    /// A cancelled or unreadable AUTHENTICATE continuation.
    pub fn authenticate_failed(&mut self, tag: &Tag<'_>) {
        self.bad(tag, "AUTHENTICATE cancelled");
    }

    /// The driver's verdict: the user's Maildir, or the text of a NO.
    pub fn login_result(&mut self, tag: &Tag<'_>, result: Result<Maildir, &str>) {
        match result {
            Ok(md) => {
                self.maildir = Some(md);
                self.state = State::Authenticated;
                let caps = self.capabilities();
                self.out.extend_from_slice(
                    format!("{} OK [CAPABILITY {caps}] Logged in\r\n", tag.as_ref()).as_bytes(),
                );
            }
            Err(text) => self.no(tag, text),
        }
    }

    pub fn tls_established(&mut self) {
        self.tls = true;
    }

    fn snapshot(&self) -> Result<std::sync::Arc<Snapshot>, String> {
        let md = self.maildir.as_ref().ok_or("no mailbox")?;
        md.snapshot().map_err(|e| e.to_string())
    }

    fn select(&mut self, tag: &Tag<'_>, mailbox: &Mailbox<'_>, read_only: bool) {
        self.state = State::Authenticated;
        if !is_inbox(mailbox) {
            return self.no(tag, "[NONEXISTENT] No such mailbox");
        }
        let mut snapshot = match self.snapshot() {
            Ok(s) => s,
            Err(e) => return self.no(tag, &format!("[SERVERBUG] {e}")),
        };
        let recent = snapshot.messages.iter().filter(|m| m.recent).count() as u32;
        if !read_only && recent > 0 {
            // This session has reported them as \Recent: they move to cur/ (Maildir "seen by a
            // client"), so no other session reports them again.
            if let Some(md) = self.maildir.clone() {
                let messages = &mut std::sync::Arc::make_mut(&mut snapshot).messages;
                for m in messages.iter_mut().filter(|m| m.recent) {
                    if let Ok(p) = md.set_flags(m, m.flags) {
                        m.path = p;
                    }
                }
            }
        }
        let flags = flags_of(0x1f);
        self.data(Data::Flags(flags.clone()));
        self.data(Data::Exists(snapshot.messages.len() as u32));
        self.data(Data::Recent(recent));
        if let Some(i) = snapshot.messages.iter().position(|m| m.flags & flag::SEEN == 0) {
            let s = Status::ok(None, Some(Code::Unseen(nz(i as u32 + 1))), "First unseen").unwrap();
            self.send(Response::Status(s));
        }
        for code in
            [Code::UidValidity(nz(snapshot.uidvalidity)), Code::UidNext(nz(snapshot.uidnext))]
        {
            self.send(Response::Status(Status::ok(None, Some(code), "ok").unwrap()));
        }
        let perm =
            if read_only { Vec::new() } else { flags.into_iter().map(FlagPerm::Flag).collect() };
        let s = Status::ok(None, Some(Code::PermanentFlags(perm)), "Limited").unwrap();
        self.send(Response::Status(s));
        let code = if read_only { Code::ReadOnly } else { Code::ReadWrite };
        self.ok(tag, Some(code), if read_only { "EXAMINE completed" } else { "SELECT completed" });
        self.state = State::Selected(View { read_only, snapshot });
    }

    fn list(
        &mut self,
        tag: &Tag<'_>,
        reference: &Mailbox<'_>,
        pattern: &ListMailbox<'_>,
        lsub: bool,
    ) {
        let reference: &[u8] = match reference {
            Mailbox::Inbox => b"INBOX",
            Mailbox::Other(o) => o.as_ref(),
        };
        let pattern: &[u8] = match pattern {
            ListMailbox::Token(t) => t.as_ref(),
            ListMailbox::String(s) => s.as_ref(),
        };
        let delimiter = Some('/'.try_into().expect("valid"));
        if pattern.is_empty() && !lsub {
            // RFC 3501 6.3.8: the hierarchy delimiter and root.
            self.out.extend_from_slice(b"* LIST (\\Noselect) \"/\" \"\"\r\n");
        } else if reference.is_empty() && inbox_matches(pattern) {
            let items: Vec<FlagNameAttribute<'_>> = Vec::new();
            let d = if lsub {
                Data::Lsub { items, delimiter, mailbox: Mailbox::Inbox }
            } else {
                Data::List { items, delimiter, mailbox: Mailbox::Inbox }
            };
            self.data(d);
        }
        self.ok(tag, None, if lsub { "LSUB completed" } else { "LIST completed" });
    }

    fn status(&mut self, tag: &Tag<'_>, mailbox: &Mailbox<'_>, names: &[StatusDataItemName]) {
        if !is_inbox(mailbox) {
            return self.no(tag, "[NONEXISTENT] No such mailbox");
        }
        let s = match self.snapshot() {
            Ok(s) => s,
            Err(e) => return self.no(tag, &format!("[SERVERBUG] {e}")),
        };
        let count =
            |f: &dyn Fn(&MessageInfo) -> bool| s.messages.iter().filter(|m| f(m)).count() as u32;
        let items: Vec<StatusDataItem> = names
            .iter()
            .filter_map(|n| match n {
                StatusDataItemName::Messages => {
                    Some(StatusDataItem::Messages(s.messages.len() as u32))
                }
                StatusDataItemName::Recent => Some(StatusDataItem::Recent(count(&|m| m.recent))),
                StatusDataItemName::UidNext => Some(StatusDataItem::UidNext(nz(s.uidnext))),
                StatusDataItemName::UidValidity => {
                    Some(StatusDataItem::UidValidity(nz(s.uidvalidity)))
                }
                StatusDataItemName::Unseen => {
                    Some(StatusDataItem::Unseen(count(&|m| m.flags & flag::SEEN == 0)))
                }
                _ => None,
            })
            .collect();
        self.data(Data::Status { mailbox: Mailbox::Inbox, items: Cow::Owned(items) });
        self.ok(tag, None, "STATUS completed");
    }

    fn selected(&mut self, tag: &Tag<'_>, body: CommandBody<'static>) {
        match body {
            CommandBody::Fetch { sequence_set, macro_or_item_names, uid } => {
                self.fetch(tag, &sequence_set, macro_or_item_names, uid)
            }
            CommandBody::Store { sequence_set, kind, response, flags, uid } => {
                let silent =
                    matches!(response, imap_codec::imap_types::flag::StoreResponse::Silent);
                self.store(tag, &sequence_set, kind, silent, bits_of(&flags), uid)
            }
            CommandBody::Search { criteria, uid, .. } => self.search(tag, &criteria, uid),
            CommandBody::Expunge => {
                if self.expunge(true) {
                    self.ok(tag, None, "EXPUNGE completed");
                } else {
                    self.no(tag, "Mailbox is read-only");
                }
            }
            CommandBody::Close => {
                self.expunge(false);
                self.state = State::Authenticated;
                self.ok(tag, None, "CLOSE completed");
            }
            CommandBody::Unselect => {
                self.state = State::Authenticated;
                self.ok(tag, None, "UNSELECT completed");
            }
            _ => self.no(tag, "[CANNOT] Not supported by this server yet"),
        }
    }

    fn view(&mut self) -> Option<&mut View> {
        match &mut self.state {
            State::Selected(v) => Some(v),
            _ => None,
        }
    }

    /// Indexes of the messages a sequence or UID set names.
    fn matching(&mut self, set: &SequenceSet, uid: bool) -> Vec<usize> {
        let Some(v) = self.view() else { return Vec::new() };
        let msgs = &v.snapshot.messages;
        let largest_uid = msgs.last().map_or(0, |m| m.uid);
        (0..msgs.len())
            .filter(|&i| match uid {
                true => contains(set, msgs[i].uid, largest_uid),
                false => contains(set, i as u32 + 1, msgs.len() as u32),
            })
            .collect()
    }

    fn fetch(
        &mut self,
        tag: &Tag<'_>,
        set: &SequenceSet,
        names: MacroOrMessageDataItemNames<'_>,
        uid: bool,
    ) {
        use imap_codec::imap_types::fetch::Macro;
        let mut names = match names {
            MacroOrMessageDataItemNames::Macro(m) => {
                let mut v = vec![
                    MessageDataItemName::Flags,
                    MessageDataItemName::InternalDate,
                    MessageDataItemName::Rfc822Size,
                ];
                if matches!(m, Macro::All | Macro::Full) {
                    v.push(MessageDataItemName::Envelope);
                }
                if matches!(m, Macro::Full) {
                    v.push(MessageDataItemName::Body);
                }
                v
            }
            MacroOrMessageDataItemNames::MessageDataItemNames(n) => n,
        };
        if names.iter().any(|n| {
            matches!(
                n,
                MessageDataItemName::Envelope
                    | MessageDataItemName::BodyStructure
                    | MessageDataItemName::Body
            )
        }) {
            return self.no(tag, "[CANNOT] ENVELOPE and BODYSTRUCTURE are not supported yet");
        }
        if uid && !names.contains(&MessageDataItemName::Uid) {
            names.insert(0, MessageDataItemName::Uid);
        }
        for i in self.matching(set, uid) {
            match self.fetch_one(i, &names) {
                Ok(items) => {
                    if let Ok(items) = NonEmptyVec::try_from(items) {
                        self.data(Data::Fetch { seq: nz(i as u32 + 1), items });
                    }
                }
                // Gone since the snapshot (expunged by another session): skip it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return self.no(tag, &format!("[SERVERBUG] {e}")),
            }
        }
        self.ok(tag, None, "FETCH completed");
    }

    fn fetch_one(
        &mut self,
        i: usize,
        names: &[MessageDataItemName<'_>],
    ) -> std::io::Result<Vec<MessageDataItem<'static>>> {
        let (msg, read_only) = match self.view() {
            Some(v) => (v.snapshot.messages[i].clone(), v.read_only),
            None => return Ok(Vec::new()),
        };
        let mut items = Vec::new();
        let mut seen = false;
        for n in names {
            let item = match n {
                MessageDataItemName::Uid => MessageDataItem::Uid(nz(msg.uid)),
                MessageDataItemName::Flags => continue,
                MessageDataItemName::Rfc822Size => MessageDataItem::Rfc822Size(msg.size as u32),
                MessageDataItemName::InternalDate => {
                    MessageDataItem::InternalDate(internal_date(msg.internal_date))
                }
                MessageDataItemName::Rfc822 => {
                    seen = true;
                    MessageDataItem::Rfc822(nstring(mailstore::read_range(&msg.path, 0, u64::MAX)?))
                }
                MessageDataItemName::Rfc822Header => {
                    let h = mailstore::header_len(&msg.path)?;
                    MessageDataItem::Rfc822Header(nstring(mailstore::read_range(&msg.path, 0, h)?))
                }
                MessageDataItemName::Rfc822Text => {
                    seen = true;
                    let h = mailstore::header_len(&msg.path)?;
                    MessageDataItem::Rfc822Text(nstring(mailstore::read_range(
                        &msg.path,
                        h,
                        u64::MAX,
                    )?))
                }
                MessageDataItemName::BodyExt { section, partial, peek } => {
                    seen |= !peek;
                    let bytes = section_bytes(&msg.path, section.as_ref(), *partial)?;
                    MessageDataItem::BodyExt {
                        section: section.clone().map(to_static_section),
                        origin: partial.map(|(o, _)| o),
                        data: nstring(bytes),
                    }
                }
                _ => continue,
            };
            items.push(item);
        }
        let mut flags = msg.flags;
        if seen && !read_only && flags & flag::SEEN == 0 {
            flags |= flag::SEEN;
            self.set_flags(i, flags);
        }
        if names.contains(&MessageDataItemName::Flags) || flags != msg.flags {
            items.push(MessageDataItem::Flags(fetch_flags(flags, msg.recent)));
        }
        Ok(items)
    }

    fn set_flags(&mut self, i: usize, flags: u8) -> bool {
        let Some(md) = self.maildir.clone() else { return false };
        let Some(v) = self.view() else { return false };
        let m = &mut std::sync::Arc::make_mut(&mut v.snapshot).messages[i];
        match md.set_flags(m, flags) {
            Ok(p) => {
                m.path = p;
                m.flags = flags;
                true
            }
            Err(_) => false,
        }
    }

    fn store(
        &mut self,
        tag: &Tag<'_>,
        set: &SequenceSet,
        kind: StoreType,
        silent: bool,
        bits: u8,
        uid: bool,
    ) {
        if self.view().is_some_and(|v| v.read_only) {
            return self.no(tag, "Mailbox is read-only");
        }
        for i in self.matching(set, uid) {
            let Some(v) = self.view() else { break };
            let m = &v.snapshot.messages[i];
            let (old, recent, message_uid) = (m.flags, m.recent, m.uid);
            let new = match kind {
                StoreType::Replace => bits,
                StoreType::Add => old | bits,
                StoreType::Remove => old & !bits,
            };
            if new != old && !self.set_flags(i, new) {
                continue; // gone meanwhile
            }
            if !silent {
                let mut items = vec![MessageDataItem::Flags(fetch_flags(new, recent))];
                if uid {
                    items.insert(0, MessageDataItem::Uid(nz(message_uid)));
                }
                let items = NonEmptyVec::try_from(items).expect("not empty");
                self.data(Data::Fetch { seq: nz(i as u32 + 1), items });
            }
        }
        self.ok(tag, None, "STORE completed");
    }

    fn search(&mut self, tag: &Tag<'_>, key: &SearchKey<'_>, uid: bool) {
        let Some(v) = self.view() else { return };
        let msgs = &v.snapshot.messages;
        let (n, largest_uid) = (msgs.len() as u32, msgs.last().map_or(0, |m| m.uid));
        let mut hits = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            match matches_key(key, m, i as u32 + 1, n, largest_uid) {
                Some(true) => hits.push(nz(if uid { m.uid } else { i as u32 + 1 })),
                Some(false) => {}
                None => return self.no(tag, "[CANNOT] Search key not supported yet"),
            }
        }
        self.data(Data::Search(hits));
        self.ok(tag, None, "SEARCH completed");
    }

    /// Removes \Deleted messages; `report`: send EXPUNGE responses. False if read-only.
    fn expunge(&mut self, report: bool) -> bool {
        let Some(md) = self.maildir.clone() else { return false };
        let Some(v) = self.view() else { return false };
        if v.read_only {
            return false;
        }
        let gone: Vec<usize> = (0..v.snapshot.messages.len())
            .filter(|&i| v.snapshot.messages[i].flags & flag::DELETED != 0)
            .collect();
        let paths: Vec<_> = gone.iter().map(|&i| v.snapshot.messages[i].path.clone()).collect();
        if md.expunge(&paths).is_err() {
            return true;
        }
        // Highest first, so each number is right when the client applies it.
        let messages = &mut std::sync::Arc::make_mut(&mut v.snapshot).messages;
        for &i in gone.iter().rev() {
            messages.remove(i);
        }
        if report {
            // RFC 3501 7.4.1: each EXPUNGE renumbers the rest; in ascending order, a removed
            // message's number drops by the removals before it.
            let numbers: Vec<u32> =
                gone.iter().enumerate().map(|(k, &i)| i as u32 + 1 - k as u32).collect();
            for n in numbers {
                self.data(Data::Expunge(nz(n)));
            }
        }
        true
    }

    /// Reports what changed in the selected mailbox since the client last heard: expunges,
    /// new messages and flag changes made by others (NOOP, CHECK, IDLE).
    pub fn refresh(&mut self) {
        let Ok(fresh) = self.snapshot() else { return };
        let Some(v) = self.view() else { return };
        let old = std::mem::replace(&mut v.snapshot, fresh.clone());
        let mut responses = Vec::new();
        let mut kept = Vec::new();
        let mut removed = 0u32;
        let by_uid: std::collections::HashMap<u32, &MessageInfo> =
            fresh.messages.iter().map(|f| (f.uid, f)).collect();
        for (i, m) in old.messages.iter().enumerate() {
            match by_uid.get(&m.uid).copied() {
                Some(f) => kept.push((i as u32 + 1 - removed, m.flags, f)),
                None => {
                    responses.push(Data::Expunge(nz(i as u32 + 1 - removed)));
                    removed += 1;
                }
            }
        }
        for (seq, old_flags, f) in &kept {
            if *old_flags != f.flags {
                let items =
                    NonEmptyVec::from(MessageDataItem::Flags(fetch_flags(f.flags, f.recent)));
                responses.push(Data::Fetch { seq: nz(*seq), items });
            }
        }
        let last_old_uid = old.messages.last().map_or(0, |m| m.uid);
        let new = fresh.messages.iter().filter(|m| m.uid > last_old_uid).count();
        if new > 0 || removed > 0 {
            responses.push(Data::Exists(fresh.messages.len() as u32));
            let recent = fresh.messages.iter().filter(|m| m.recent).count() as u32;
            responses.push(Data::Recent(recent));
        }
        for d in responses {
            self.data(d);
        }
    }

    /// After IDLE's DONE.
    pub fn idle_done(&mut self, tag: &Tag<'_>) {
        self.ok(tag, None, "IDLE terminated");
    }
}

fn inbox_matches(pattern: &[u8]) -> bool {
    let p = String::from_utf8_lossy(pattern).to_ascii_uppercase();
    // '*' and '%' match any run of characters; INBOX has no hierarchy below it here.
    let re = format!("^{}$", regex::escape(&p).replace("\\*", ".*").replace('%', "[^/]*"));
    regex::Regex::new(&re).is_ok_and(|r| r.is_match("INBOX"))
}

fn fetch_flags(bits: u8, recent: bool) -> Vec<FlagFetch<'static>> {
    let mut v: Vec<FlagFetch<'static>> = flags_of(bits).into_iter().map(FlagFetch::Flag).collect();
    if recent {
        v.push(FlagFetch::Recent);
    }
    v
}

fn internal_date(secs: i64) -> imap_codec::imap_types::datetime::DateTime {
    let utc = chrono::FixedOffset::east_opt(0).expect("zero offset");
    let t = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default().with_timezone(&utc);
    imap_codec::imap_types::datetime::DateTime::try_from(t).expect("a valid date")
}

/// A message's bytes as a literal (NUL never occurs: sluice refuses NUL at intake).
fn nstring(bytes: Vec<u8>) -> NString<'static> {
    NString::from(Literal::unvalidated(bytes))
}

fn to_static_section(s: Section<'_>) -> Section<'static> {
    use bounded_static::IntoBoundedStatic;
    s.into_static()
}

/// BODY[section]<partial>: the whole message, its header, selected header fields or its text.
/// Partial ranges read only their octets from the file.
fn section_bytes(
    path: &Path,
    section: Option<&Section<'_>>,
    partial: Option<(u32, NonZeroU32)>,
) -> std::io::Result<Vec<u8>> {
    let (start, len) = match partial {
        Some((o, n)) => (o as u64, n.get() as u64),
        None => (0, u64::MAX),
    };
    let slice = |v: Vec<u8>| -> Vec<u8> {
        let s = (start as usize).min(v.len());
        let e = s.saturating_add(len.min(usize::MAX as u64) as usize).min(v.len());
        v[s..e].to_vec()
    };
    match section {
        None => mailstore::read_range(path, start, len),
        Some(Section::Header(None)) => {
            let h = mailstore::header_len(path)?;
            Ok(slice(mailstore::read_range(path, 0, h)?))
        }
        Some(Section::Text(None)) => {
            let h = mailstore::header_len(path)?;
            mailstore::read_range(path, h.saturating_add(start), len)
        }
        // A message that is not multipart has one part: its text (RFC 3501 6.4.5).
        Some(Section::Part(p)) if p.0.as_ref() == [nz(1)] => {
            let h = mailstore::header_len(path)?;
            mailstore::read_range(path, h.saturating_add(start), len)
        }
        Some(Section::HeaderFields(None, names)) => {
            let h = mailstore::header_len(path)?;
            Ok(slice(header_fields(&mailstore::read_range(path, 0, h)?, names.as_ref(), true)))
        }
        Some(Section::HeaderFieldsNot(None, names)) => {
            let h = mailstore::header_len(path)?;
            Ok(slice(header_fields(&mailstore::read_range(path, 0, h)?, names.as_ref(), false)))
        }
        Some(_) => Err(std::io::Error::other("MIME part sections are not supported yet")),
    }
}

/// The header fields (with their continuation lines) whose names are (`keep`) or are not in
/// `names`, then the blank line.
fn header_fields(header: &[u8], names: &[AString<'_>], keep: bool) -> Vec<u8> {
    let wanted: Vec<String> =
        names.iter().map(|n| String::from_utf8_lossy(n.as_ref()).to_ascii_lowercase()).collect();
    let mut out = Vec::new();
    let mut include = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !matches!(line.first(), Some(b' ' | b'\t')) {
            let name = line.split(|&b| b == b':').next().unwrap_or(b"");
            let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
            include = wanted.contains(&name) == keep;
        }
        if include {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Whether a message matches a search key; None for keys this server does not evaluate yet
/// (text and date searches).
fn matches_key(
    key: &SearchKey<'_>,
    m: &MessageInfo,
    seq: u32,
    n: u32,
    largest_uid: u32,
) -> Option<bool> {
    let has = |bit: u8| m.flags & bit != 0;
    Some(match key {
        SearchKey::All => true,
        SearchKey::And(keys) => {
            let mut all = true;
            for k in keys.as_ref() {
                all &= matches_key(k, m, seq, n, largest_uid)?;
            }
            all
        }
        SearchKey::Or(a, b) => {
            matches_key(a, m, seq, n, largest_uid)? | matches_key(b, m, seq, n, largest_uid)?
        }
        SearchKey::Not(k) => !matches_key(k, m, seq, n, largest_uid)?,
        SearchKey::SequenceSet(s) => contains(s, seq, n),
        SearchKey::Uid(s) => contains(s, m.uid, largest_uid),
        SearchKey::Seen => has(flag::SEEN),
        SearchKey::Unseen => !has(flag::SEEN),
        SearchKey::Answered => has(flag::ANSWERED),
        SearchKey::Unanswered => !has(flag::ANSWERED),
        SearchKey::Flagged => has(flag::FLAGGED),
        SearchKey::Unflagged => !has(flag::FLAGGED),
        SearchKey::Deleted => has(flag::DELETED),
        SearchKey::Undeleted => !has(flag::DELETED),
        SearchKey::Draft => has(flag::DRAFT),
        SearchKey::Undraft => !has(flag::DRAFT),
        SearchKey::Recent => m.recent,
        SearchKey::Old => !m.recent,
        SearchKey::New => m.recent && !has(flag::SEEN),
        SearchKey::Larger(x) => m.size > *x as u64,
        SearchKey::Smaller(x) => m.size < *x as u64,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> SequenceSet {
        SequenceSet::try_from(text).unwrap()
    }

    #[test]
    fn sequence_sets_are_checked_without_walking_ranges() {
        let s = set("2,4:6,9:*");
        let hits: Vec<u32> = (1..=12).filter(|&n| contains(&s, n, 10)).collect();
        assert_eq!(hits, [2, 4, 5, 6, 9, 10]);
        // Reversed ranges count (RFC 3501 9: "4:2" is "2:4"), and 1:4294967295 is one test.
        assert!(contains(&set("6:4"), 5, 10));
        assert!(contains(&set("1:4294967295"), 4_000_000_000, 10));
        assert!(!contains(&set("*"), 9, 10));
    }

    #[test]
    fn header_fields_keep_continuations_and_the_blank_line() {
        let h = b"Subject: one\r\n two\r\nFrom: a@b\r\nX-Long: x\r\n\ty\r\n\r\n";
        let names = [AString::try_from("subject").unwrap(), AString::try_from("X-LONG").unwrap()];
        assert_eq!(
            header_fields(h, &names, true),
            b"Subject: one\r\n two\r\nX-Long: x\r\n\ty\r\n\r\n".to_vec()
        );
        assert_eq!(header_fields(h, &names, false), b"From: a@b\r\n\r\n".to_vec());
    }

    #[test]
    fn list_patterns_find_inbox() {
        for p in ["*", "%", "INBOX", "inbox", "IN*", "%BOX"] {
            assert!(inbox_matches(p.as_bytes()), "{p}");
        }
        for p in ["Sent", "INBOX/*", "x%"] {
            assert!(!inbox_matches(p.as_bytes()), "{p}");
        }
    }

    #[test]
    fn search_keys_combine() {
        let m = |flags, recent, size| MessageInfo {
            uid: 7,
            unique: "u".into(),
            path: "/x".into(),
            size,
            flags,
            internal_date: 0,
            recent,
        };
        let seen_big = m(flag::SEEN, false, 5000);
        let new_small = m(0, true, 10);
        let key = |k: SearchKey<'static>| move |msg: &MessageInfo| matches_key(&k, msg, 1, 1, 7);
        assert_eq!(key(SearchKey::New)(&new_small), Some(true));
        assert_eq!(key(SearchKey::New)(&seen_big), Some(false));
        let or = SearchKey::Or(Box::new(SearchKey::Larger(1000)), Box::new(SearchKey::Recent));
        assert_eq!(key(or.clone())(&seen_big), Some(true));
        assert_eq!(key(SearchKey::Not(Box::new(or)))(&new_small), Some(false));
        assert_eq!(key(SearchKey::Uid(set("5:7")))(&seen_big), Some(true));
        assert_eq!(key(SearchKey::Body(AString::try_from("x").unwrap()))(&seen_big), None);
    }
}
