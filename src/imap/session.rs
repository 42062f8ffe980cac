//! The IMAP4rev1 session (RFC 3501): commands decoded by imap-codec in, encoded responses out.
//! Protocol state and replies live here; the driver ([`super::run`]) does framing, TLS and
//! password checks. Mailbox data comes from the user's Maildir through
//! [`crate::local::mailstore`] (blocking file I/O: the driver runs [`Session::execute`] on the
//! blocking pool).
//!
//! Here: state, login, SELECT/EXAMINE, STORE, EXPUNGE (and UID EXPUNGE), change reports for
//! NOOP/IDLE, and the extensions imap-codec 1.0 cannot parse (NAMESPACE, ID). Mailbox
//! commands are in [`super::mailboxes`], FETCH in [`super::fetch`], SEARCH in
//! [`super::search`].

use base64::Engine;
use imap_codec::ResponseCodec;
use imap_codec::encode::Encoder;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{NonEmptyVec, Tag};
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::flag::{Flag, FlagPerm, StoreType};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{Code, Data, Response, Status};
use imap_codec::imap_types::sequence::SequenceSet;

use super::mailboxes::{Manage, mailbox_name};
use super::state::State;
pub use super::state::{ImapConfig, Next, Session};
use super::state::{View, bits_of, contains, fetch_flags, flag_list, keyword_names, nz};
use crate::local::Maildir;
use crate::local::keywords::{KeywordError, Keywords};
use crate::local::mailstore::{Appended, MessageInfo, Snapshot, StoreError, Transfer, flag};
use crate::proto::smtp::client::Credentials;

/// How an EXPUNGE ended.
enum Expunged {
    Done,
    ReadOnly,
    /// The Maildir refused (an I/O error); some messages may be gone.
    Failed(String),
}

impl Session {
    pub fn new(cfg: ImapConfig, tls: bool) -> Session {
        let mut s = Session {
            cfg,
            tls,
            state: State::NotAuthenticated,
            maildir: None,
            out: Vec::new(),
            size_changed: false,
            quota: 0,
            pending: None,
        };
        let caps = s.capabilities();
        let greeting = format!("* OK [CAPABILITY {caps}] {} IMAP4rev1 ready\r\n", s.cfg.hostname);
        s.out.extend_from_slice(greeting.as_bytes());
        s
    }

    /// Encoded responses to send (drained).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Whether the last command added or removed messages (reset by reading it).
    pub fn take_size_changed(&mut self) -> bool {
        std::mem::take(&mut self.size_changed)
    }

    /// The logged-in user's mailbox quota (APPEND refuses to go over it).
    pub fn set_quota(&mut self, quota: u64) {
        self.quota = quota;
    }

    pub(super) fn output_len(&self) -> usize {
        self.out.len()
    }

    /// A new file in the user's `tmp/` for a streamed APPEND (same file system as every
    /// folder, so storing it is a rename).
    pub fn append_file_path(&self) -> Option<std::path::PathBuf> {
        let root = self.maildir.as_ref()?.root();
        let name = format!("append.{}", crate::local::maildir::unique_token());
        Some(root.join("tmp").join(name))
    }

    /// A streamed APPEND whose file could not be written.
    pub fn append_failed(&mut self, tag: &Tag<'_>) {
        self.no(tag, "[SERVERBUG] The message could not be written; try again");
    }

    /// Whether a FETCH still has parts to answer.
    pub fn has_more(&self) -> bool {
        self.pending.is_some()
    }

    pub(super) fn out_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn login_allowed(&self) -> bool {
        self.tls || self.cfg.plaintext_ok
    }

    fn capabilities(&self) -> String {
        let mut caps = vec![
            "IMAP4rev1",
            "LITERAL+",
            "SASL-IR",
            "IDLE",
            "NAMESPACE",
            "ID",
            "ENABLE",
            "UIDPLUS",
            "MOVE",
            "UNSELECT",
            "CHILDREN",
            "SPECIAL-USE",
        ];
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

    pub(super) fn send(&mut self, r: Response<'_>) {
        self.out.extend(ResponseCodec::default().encode(&r).dump());
    }

    pub(super) fn data(&mut self, d: Data<'_>) {
        self.send(Response::Data(d));
    }

    pub(super) fn ok(&mut self, tag: &Tag<'_>, code: Option<Code<'_>>, text: &str) {
        let s = Status::ok(Some(tag.clone()), code, text).expect("valid text");
        self.send(Response::Status(s));
    }

    pub(super) fn no(&mut self, tag: &Tag<'_>, text: &str) {
        let s = Status::no(Some(tag.clone()), None, text).expect("valid text");
        self.send(Response::Status(s));
    }

    pub(super) fn bad(&mut self, tag: &Tag<'_>, text: &str) {
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
            body => {
                let next = self.by_state(tag, body);
                if self.pending.is_some() {
                    return Next::More;
                }
                return next;
            }
        }
        Next::Continue
    }

    /// Before login: STARTTLS, LOGIN and AUTHENTICATE.
    fn not_authenticated(&mut self, tag: Tag<'static>, body: CommandBody<'static>) -> Next {
        match body {
            CommandBody::StartTLS if self.cfg.starttls && !self.tls => {
                self.ok(&tag, None, "Begin TLS negotiation now");
                return Next::StartTls;
            }
            CommandBody::Login { username, password } => {
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
            CommandBody::Authenticate { mechanism, initial_response } => {
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
            CommandBody::StartTLS if self.tls => self.bad(&tag, "TLS is already active"),
            CommandBody::StartTLS => self.bad(&tag, "STARTTLS is not offered here"),
            _ => self.bad(&tag, "Log in first"),
        }
        Next::Continue
    }

    fn by_state(&mut self, tag: Tag<'static>, body: CommandBody<'static>) -> Next {
        match (&self.state, body) {
            (State::NotAuthenticated, body) => return self.not_authenticated(tag, body),
            (
                _,
                CommandBody::Login { .. }
                | CommandBody::Authenticate { .. }
                | CommandBody::StartTLS,
            ) => self.bad(&tag, "Already authenticated"),
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
            (_, CommandBody::Create { mailbox }) => self.manage(&tag, Manage::Create, &mailbox),
            (_, CommandBody::Delete { mailbox }) => self.manage(&tag, Manage::Delete, &mailbox),
            (_, CommandBody::Rename { from, to }) => self.manage(&tag, Manage::Rename(to), &from),
            (_, CommandBody::Subscribe { mailbox }) => {
                self.manage(&tag, Manage::Subscribe(true), &mailbox)
            }
            (_, CommandBody::Unsubscribe { mailbox }) => {
                self.manage(&tag, Manage::Subscribe(false), &mailbox)
            }
            (_, CommandBody::Append { mailbox, flags, date, message }) => {
                self.append(&tag, &mailbox, &flags, date.as_ref(), Appended::Bytes(message.data()))
            }
            (_, CommandBody::Enable { .. }) => {
                // Nothing here changes behaviour when enabled (no CONDSTORE, no UTF8=ACCEPT).
                self.out_raw(b"* ENABLED\r\n");
                self.ok(&tag, None, "ENABLE completed");
            }
            (_, CommandBody::Idle) => return Next::Idle { tag },
            (State::Selected(_), body) => self.selected(&tag, body),
            (_, CommandBody::Close | CommandBody::Unselect | CommandBody::Expunge) => {
                self.bad(&tag, "No mailbox selected")
            }
            (
                _,
                CommandBody::Fetch { .. }
                | CommandBody::Store { .. }
                | CommandBody::Search { .. }
                | CommandBody::Copy { .. }
                | CommandBody::Move { .. },
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

    fn select(&mut self, tag: &Tag<'_>, mailbox: &Mailbox<'_>, read_only: bool) {
        self.state = State::Authenticated;
        let name = mailbox_name(mailbox);
        let folder = match self.open(&name) {
            Ok(f) => f,
            Err(_) => return self.no(tag, "[NONEXISTENT] No such mailbox"),
        };
        let mut snapshot = match folder.snapshot() {
            Ok(s) => s,
            Err(e) => return self.no(tag, &format!("[SERVERBUG] {e}")),
        };
        let in_new = |m: &MessageInfo| m.path.parent().is_some_and(|p| p.ends_with("new"));
        if !read_only && snapshot.messages.iter().any(in_new) {
            // Seen by a client now: they move to cur/ (the Maildir convention for other
            // Maildir readers; \Recent itself is the claim below).
            let messages = &mut std::sync::Arc::make_mut(&mut snapshot).messages;
            for m in messages.iter_mut().filter(|m| in_new(m)) {
                if let Ok(Some((p, flags, kw))) = folder.update_flags(m, |f, k| (f, k)) {
                    (m.path, m.flags, m.keywords) = (p, flags, kw);
                }
            }
        }
        let keywords = Keywords::load(folder.root());
        let mut view = View { folder, read_only, keywords, recent: Vec::new(), snapshot };
        match read_only {
            // Sees what no session was told of yet, and claims none of it.
            true => view.recent.push(view.snapshot.recent_from..u32::MAX),
            false => view.claim_recent(),
        }
        let recent = view.recent_count();
        let snapshot = view.snapshot.clone();
        self.state = State::Selected(view);
        self.flags_list();
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
        self.permanent_flags();
        let code = if read_only { Code::ReadOnly } else { Code::ReadWrite };
        self.ok(tag, Some(code), if read_only { "EXAMINE completed" } else { "SELECT completed" });
    }

    /// `* FLAGS`: the system flags and the selected folder's keywords.
    fn flags_list(&mut self) {
        let Some(v) = self.view() else { return };
        let flags = flag_list(0x1f, u32::MAX, &v.keywords);
        self.data(Data::Flags(flags));
    }

    /// `* OK [PERMANENTFLAGS ...]`: what a STORE keeps, with `\*` while the folder has room
    /// for new keywords; nothing in a read-only view.
    fn permanent_flags(&mut self) {
        let Some(v) = self.view() else { return };
        let perm = match v.read_only {
            true => Vec::new(),
            false => {
                let mut p: Vec<FlagPerm<'static>> = flag_list(0x1f, u32::MAX, &v.keywords)
                    .into_iter()
                    .map(FlagPerm::Flag)
                    .collect();
                if v.keywords.has_room() {
                    p.push(FlagPerm::Asterisk);
                }
                p
            }
        };
        let s = Status::ok(None, Some(Code::PermanentFlags(perm)), "Flags permitted").unwrap();
        self.send(Response::Status(s));
    }

    /// The folder's keywords grew (this session or another added one): the client hears the
    /// new FLAGS and PERMANENTFLAGS (RFC 3501 7.2.6).
    pub(super) fn keywords_changed(&mut self, keywords: Keywords) {
        let Some(v) = self.view() else { return };
        if v.keywords == keywords {
            return;
        }
        v.keywords = keywords;
        self.flags_list();
        self.permanent_flags();
    }

    fn selected(&mut self, tag: &Tag<'static>, body: CommandBody<'static>) {
        // What other sessions changed, before acting on it: a FETCH shows the flags the
        // message has now, a STORE starts from them, a SEARCH searches them.
        if matches!(
            body,
            CommandBody::Fetch { .. }
                | CommandBody::Store { .. }
                | CommandBody::Search { .. }
                | CommandBody::Copy { .. }
                | CommandBody::Move { .. }
        ) {
            self.sync(false);
        }
        match body {
            CommandBody::Fetch { sequence_set, macro_or_item_names, uid } => {
                self.fetch(tag, &sequence_set, macro_or_item_names, uid)
            }
            CommandBody::Store { sequence_set, kind, response, flags, uid } => {
                let silent =
                    matches!(response, imap_codec::imap_types::flag::StoreResponse::Silent);
                self.store(tag, &sequence_set, kind, silent, &flags, uid)
            }
            CommandBody::Search { criteria, uid, charset } => {
                let charset = charset.map(|c| c.as_ref().to_string());
                self.search(tag, charset.as_deref(), &criteria, uid)
            }
            CommandBody::Copy { sequence_set, mailbox, uid } => {
                self.transfer(tag, &sequence_set, &mailbox, uid, Transfer::Copy)
            }
            CommandBody::Move { sequence_set, mailbox, uid } => {
                self.transfer(tag, &sequence_set, &mailbox, uid, Transfer::Move)
            }
            CommandBody::Expunge => self.expunge_reply(tag, None, "EXPUNGE completed"),
            CommandBody::Close => {
                // RFC 3501 6.4.2: CLOSE expunges silently, and a failure does not keep the
                // mailbox selected.
                let _ = self.expunge(false, None);
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

    pub(super) fn view(&mut self) -> Option<&mut View> {
        match &mut self.state {
            State::Selected(v) => Some(v),
            _ => None,
        }
    }

    /// Indexes of the messages a sequence or UID set names.
    pub(super) fn matching(&mut self, set: &SequenceSet, uid: bool) -> Vec<usize> {
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

    /// Changes message `i`'s flags from what they are on disk now (`change` gets them); the
    /// view keeps the file's new path and flags. Ok(None): the message is gone.
    pub(super) fn update_flags(
        &mut self,
        i: usize,
        change: impl Fn(u8, u32) -> (u8, u32),
    ) -> Result<Option<(u8, u32)>, StoreError> {
        let Some(v) = self.view() else { return Ok(None) };
        let m = &mut std::sync::Arc::make_mut(&mut v.snapshot).messages[i];
        Ok(v.folder.update_flags(m, change)?.map(|(p, flags, kw)| {
            (m.path, m.flags, m.keywords) = (p, flags, kw);
            (flags, kw)
        }))
    }

    /// Message `i`'s file was not found where the view had it: finds it by its unique name
    /// (renamed by another session) and keeps the new path. False: it is gone.
    pub(super) fn relocate(&mut self, i: usize) -> bool {
        let Some(v) = self.view() else { return false };
        let m = &v.snapshot.messages[i];
        match v.folder.locate(&m.unique, &m.path) {
            Ok(Some(p)) if p != m.path => {
                std::sync::Arc::make_mut(&mut v.snapshot).messages[i].path = p;
                true
            }
            _ => false,
        }
    }

    fn store(
        &mut self,
        tag: &Tag<'_>,
        set: &SequenceSet,
        kind: StoreType,
        silent: bool,
        flags: &[Flag<'_>],
        uid: bool,
    ) {
        let Some(v) = self.view() else { return };
        if v.read_only {
            return self.no(tag, "Mailbox is read-only");
        }
        let bits = bits_of(flags);
        // Keywords by name; new ones get a letter of this folder (unless they are removed).
        let names = keyword_names(flags);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let keywords = match (refs.is_empty(), kind) {
            (true, _) | (false, StoreType::Remove) => Ok(Keywords::load(v.folder.root())),
            (false, _) => v.folder.ensure_keywords(&refs),
        };
        let keywords = match keywords {
            Ok(k) => k,
            Err(KeywordError::Full) => {
                return self.no(tag, "[LIMIT] This mailbox cannot hold more keywords");
            }
            Err(KeywordError::Invalid) => return self.bad(tag, "Invalid keyword"),
            Err(e) => return self.no(tag, &format!("[SERVERBUG] {e}")),
        };
        let kw = keywords.bits_of(refs.iter().copied());
        self.keywords_changed(keywords);
        let mut failed = None;
        for i in self.matching(set, uid) {
            let Some(v) = self.view() else { break };
            let m = &v.snapshot.messages[i];
            let (old, old_kw, recent, message_uid) =
                (m.flags, m.keywords, v.is_recent(m.uid), m.uid);
            // From the flags on disk now: another session may have changed them since this
            // one last looked (RFC 3501 6.4.6: +FLAGS adds to the message's flags).
            let change = |current: u8, current_kw: u32| match kind {
                StoreType::Replace => (bits, kw),
                StoreType::Add => (current | bits, current_kw | kw),
                StoreType::Remove => (current & !bits, current_kw & !kw),
            };
            let new = match self.update_flags(i, change) {
                Ok(Some(new)) => new,
                // Expunged by another session: nothing to change (RFC 2180 4.2.1).
                Ok(None) => continue,
                Err(e) => {
                    failed = Some(e);
                    continue;
                }
            };
            // .SILENT still reports flags that differ from what the client asked for (set by
            // another session meanwhile), as RFC 3501 6.4.6 allows and clients need.
            if !silent || new != change(old, old_kw) {
                let Some(v) = self.view() else { break };
                let flags = fetch_flags(new.0, new.1, &v.keywords, recent);
                let mut items = vec![MessageDataItem::Flags(flags)];
                if uid {
                    items.insert(0, MessageDataItem::Uid(nz(message_uid)));
                }
                let items = NonEmptyVec::try_from(items).expect("not empty");
                self.data(Data::Fetch { seq: nz(i as u32 + 1), items });
            }
        }
        match failed {
            None => self.ok(tag, None, "STORE completed"),
            Some(e) => self.no(tag, &format!("[SERVERBUG] Some flags could not be changed: {e}")),
        }
    }

    /// EXPUNGE or UID EXPUNGE, answered.
    fn expunge_reply(&mut self, tag: &Tag<'_>, uids: Option<&SequenceSet>, done: &str) {
        match self.expunge(true, uids) {
            Expunged::Done => self.ok(tag, None, done),
            Expunged::ReadOnly => self.no(tag, "Mailbox is read-only"),
            Expunged::Failed(e) => {
                // Some files may be gone: the client hears which before the NO.
                self.refresh();
                self.no(tag, &format!("[SERVERBUG] Expunge failed: {e}"));
            }
        }
    }

    /// Removes \Deleted messages (only those with a UID in `uids`, for UID EXPUNGE);
    /// `report`: send EXPUNGE responses.
    fn expunge(&mut self, report: bool, uids: Option<&SequenceSet>) -> Expunged {
        if self.view().is_none_or(|v| v.read_only) {
            return Expunged::ReadOnly;
        }
        // What other sessions changed first (flags set or cleared, messages gone), so the
        // view's flags and paths are the files' own and the numbers below are the client's.
        if report {
            self.refresh();
        } else if let Some(v) = self.view()
            && let Ok(fresh) = v.folder.snapshot()
        {
            // CLOSE: the client hears nothing more of this mailbox.
            v.snapshot = fresh;
        }
        let Some(v) = self.view() else { return Expunged::ReadOnly };
        let largest = v.snapshot.messages.last().map_or(0, |m| m.uid);
        let candidates: Vec<usize> = (0..v.snapshot.messages.len())
            .filter(|&i| {
                let m = &v.snapshot.messages[i];
                m.flags & flag::DELETED != 0 && uids.is_none_or(|s| contains(s, m.uid, largest))
            })
            .collect();
        let msgs: Vec<&MessageInfo> = candidates.iter().map(|&i| &v.snapshot.messages[i]).collect();
        let removed = match v.folder.expunge(&msgs) {
            Ok(r) => r,
            Err(e) => return Expunged::Failed(e.to_string()),
        };
        // Only what is gone is reported: a message undeleted meanwhile stays.
        let gone: Vec<usize> =
            candidates.iter().zip(&removed).filter(|(_, r)| **r).map(|(i, _)| *i).collect();
        self.size_changed |= !gone.is_empty();
        if report {
            self.forget_messages(&gone);
        } else if let Some(v) = self.view() {
            let messages = &mut std::sync::Arc::make_mut(&mut v.snapshot).messages;
            for &i in gone.iter().rev() {
                messages.remove(i);
            }
        }
        Expunged::Done
    }

    /// Drops messages (by index, ascending) from the view and tells the client (EXPUNGE).
    pub(super) fn forget_messages(&mut self, gone: &[usize]) {
        let Some(v) = self.view() else { return };
        // Highest first, so each index is right when it is removed.
        let messages = &mut std::sync::Arc::make_mut(&mut v.snapshot).messages;
        for &i in gone.iter().rev() {
            messages.remove(i);
        }
        // RFC 3501 7.4.1: each EXPUNGE renumbers the rest; in ascending order, a removed
        // message's number drops by the removals before it.
        for (k, &i) in gone.iter().enumerate() {
            self.data(Data::Expunge(nz(i as u32 + 1 - k as u32)));
        }
    }

    /// Extensions imap-codec 1.0 does not parse: NAMESPACE (RFC 2342), ID (RFC 2971) and
    /// UID EXPUNGE (RFC 4315). True if `line` was one of them and has been answered.
    pub fn raw_command(&mut self, line: &[u8]) -> bool {
        let text = String::from_utf8_lossy(line);
        let mut words = text.trim_end().splitn(3, ' ');
        let (Some(tag), Some(verb)) = (words.next(), words.next()) else { return false };
        let Ok(tag) = Tag::try_from(tag.to_string()) else { return false };
        let rest = words.next().unwrap_or("");
        let authenticated = !matches!(self.state, State::NotAuthenticated);
        match verb.to_ascii_uppercase().as_str() {
            "ID" => {
                let v = env!("CARGO_PKG_VERSION");
                self.out_raw(
                    format!("* ID (\"name\" \"sluice\" \"version\" \"{v}\")\r\n").as_bytes(),
                );
                self.ok(&tag, None, "ID completed");
            }
            "NAMESPACE" if authenticated => {
                self.out_raw(b"* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
                self.ok(&tag, None, "NAMESPACE completed");
            }
            "UID" if rest.to_ascii_uppercase().starts_with("EXPUNGE ") => {
                let set = SequenceSet::try_from(rest[8..].trim());
                match (set, matches!(self.state, State::Selected(_))) {
                    (Err(_), _) => self.bad(&tag, "Bad UID set"),
                    (Ok(_), false) => self.bad(&tag, "No mailbox selected"),
                    (Ok(set), true) => {
                        self.expunge_reply(&tag, Some(&set), "UID EXPUNGE completed")
                    }
                }
            }
            _ => return false,
        }
        true
    }

    /// Reports what changed in the selected mailbox since the client last heard: expunges,
    /// new messages and flag changes made by others (NOOP, CHECK, IDLE).
    pub fn refresh(&mut self) {
        self.sync(true);
    }

    /// Brings the view in line with the Maildir and tells the client: flag changes and new
    /// messages always; expunges only when `expunges` (RFC 3501 7.4.1: not during FETCH,
    /// STORE or SEARCH, whose sequence numbers must stay put), else the expunged messages
    /// stay in the view until a command that may report them.
    pub(super) fn sync(&mut self, expunges: bool) {
        let Some(v) = self.view() else { return };
        let Ok(fresh) = v.folder.snapshot() else { return };
        if std::sync::Arc::ptr_eq(&fresh, &v.snapshot) {
            return;
        }
        let old = std::mem::replace(&mut v.snapshot, fresh.clone());
        let mut responses = Vec::new();
        let mut kept = Vec::new();
        let mut merged = Vec::with_capacity(fresh.messages.len());
        let mut removed = 0u32;
        let by_uid: std::collections::HashMap<u32, &MessageInfo> =
            fresh.messages.iter().map(|f| (f.uid, f)).collect();
        for (i, m) in old.messages.iter().enumerate() {
            match by_uid.get(&m.uid).copied() {
                Some(f) => {
                    kept.push((i as u32 + 1 - removed, (m.flags, m.keywords), f));
                    merged.push(f.clone());
                }
                None if expunges => {
                    responses.push(Data::Expunge(nz(i as u32 + 1 - removed)));
                    removed += 1;
                }
                None => merged.push(m.clone()),
            }
        }
        let last_old_uid = old.messages.last().map_or(0, |m| m.uid);
        let new: Vec<&MessageInfo> =
            fresh.messages.iter().filter(|m| m.uid > last_old_uid).collect();
        if merged.len() + new.len() != fresh.messages.len() {
            // Expunged messages kept for now: the view is this session's own.
            merged.extend(new.iter().map(|m| (*m).clone()));
            let mut own = Snapshot::clone(&fresh);
            own.messages = merged;
            v.snapshot = std::sync::Arc::new(own);
        }
        v.claim_recent();
        // A keyword another session added: the client hears the new FLAGS first.
        let unknown = fresh.messages.iter().any(|m| !v.keywords.knows(m.keywords));
        if unknown {
            let keywords = Keywords::load(v.folder.root());
            self.keywords_changed(keywords);
        }
        let Some(v) = self.view() else { return };
        let v: &View = v;
        for (seq, old, f) in &kept {
            if *old != (f.flags, f.keywords) {
                let flags = fetch_flags(f.flags, f.keywords, &v.keywords, v.is_recent(f.uid));
                let items = NonEmptyVec::from(MessageDataItem::Flags(flags));
                responses.push(Data::Fetch { seq: nz(*seq), items });
            }
        }
        if !new.is_empty() || removed > 0 {
            responses.push(Data::Exists(v.snapshot.messages.len() as u32));
            responses.push(Data::Recent(v.recent_count()));
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

#[cfg(test)]
mod tests;
