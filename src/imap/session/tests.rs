//! The IMAP session without sockets: command bytes in (decoded by imap-codec, as the driver
//! does), response bytes out, on a real Maildir in a temporary directory.

use imap_codec::CommandCodec;
use imap_codec::decode::{CommandDecodeError, Decoder};

use super::*;

const PLAIN: &[u8] =
    b"From: Alice <alice@example.com>\r\nTo: bob@example.com\r\nSubject: hello\r\n\
Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\nHello Bob.\r\n";
const MULTIPART: &[u8] = b"From: carol@example.com\r\nSubject: =?UTF-8?Q?caf=C3=A9?=\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\n\
Content-Type: text/plain\r\n\r\nbody one\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\n\
From: dave@example.com\r\nSubject: inner\r\n\r\ninner body\r\n--b1--\r\n";

/// Hostile MIME: an unterminated quoted parameter and a boundary that never comes.
const BROKEN: &[u8] =
    b"Content-Type: multipart/mixed; boundary=\"zz\r\nSubject: \"open\r\n\r\n--zz\r\n\
Content-Type: text/plain; name=\"x\r\n\r\nbody";

fn cfg(plaintext_ok: bool) -> ImapConfig {
    ImapConfig { hostname: "mx.test".into(), starttls: true, plaintext_ok, max_folders: 50 }
}

/// A user's Maildir with `n` delivered messages (plain, multipart and broken in turn).
fn mailbox(n: usize) -> (tempfile::TempDir, Maildir) {
    let dir = tempfile::tempdir().unwrap();
    let md = Maildir::new(dir.path().join("Maildir"));
    md.create().unwrap();
    for i in 0..n {
        md.deliver(&[[PLAIN, MULTIPART, BROKEN][i % 3]], "mx.test").unwrap();
    }
    (dir, md)
}

/// Does what the driver does after a command: logins succeed with the password "secret",
/// FETCHes run to the end, IDLE ends at once, TLS "starts".
fn follow(s: &mut Session, md: &Maildir, next: Next) {
    match next {
        Next::Login { tag, creds } => {
            let verdict = match creds.password.expose() {
                "secret" => Ok(md.clone()),
                _ => Err("[AUTHENTICATIONFAILED] Invalid credentials"),
            };
            s.login_result(&tag, verdict);
        }
        Next::More => {
            while s.has_more() {
                s.fetch_more();
            }
        }
        Next::Idle { tag } => {
            s.refresh();
            s.idle_done(&tag);
        }
        Next::AuthenticateData { tag } => s.authenticate_failed(&tag),
        Next::StartTls => s.tls_established(),
        Next::Continue | Next::Close => {}
    }
}

/// Feeds complete command lines (with their literals) and returns what the session answered.
fn run(s: &mut Session, md: &Maildir, input: &[u8]) -> String {
    let mut buf = input.to_vec();
    while !buf.is_empty() {
        match CommandCodec::default().decode_static(&buf) {
            Ok((rest, cmd)) => {
                let used = buf.len() - rest.len();
                buf.drain(..used);
                let next = s.execute(cmd);
                follow(s, md, next);
            }
            Err(CommandDecodeError::Failed) => {
                let lf = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len() - 1);
                let line: Vec<u8> = buf.drain(..=lf).collect();
                if !s.raw_command(&line) {
                    let tag = line.split(|&b| b == b' ').next().map(|t| t.to_vec());
                    let tag = tag.and_then(|t| Tag::try_from(t).ok());
                    s.unparsable(tag.as_ref());
                }
            }
            // What the driver would wait for more input on; here, the input is all there is.
            Err(CommandDecodeError::Incomplete | CommandDecodeError::LiteralFound { .. }) => break,
        }
    }
    String::from_utf8_lossy(&s.take_output()).into_owned()
}

fn pick(next: &mut impl FnMut() -> u64, options: &[&'static str]) -> &'static str {
    options[next() as usize % options.len()]
}

fn logged_in(md: &Maildir) -> Session {
    let mut s = Session::new(cfg(true), false);
    let out = run(&mut s, md, b"l LOGIN alice@example.com secret\r\n");
    assert!(out.contains("l OK [CAPABILITY IMAP4rev1"), "{out}");
    s
}

fn selected(md: &Maildir) -> Session {
    let mut s = logged_in(md);
    let out = run(&mut s, md, b"s SELECT INBOX\r\n");
    assert!(out.contains("s OK [READ-WRITE]"), "{out}");
    s
}

/// The last line of `out`, which must be the tagged answer to `tag`.
fn tagged<'a>(out: &'a str, tag: &str) -> &'a str {
    let last = out.trim_end().rsplit("\r\n").next().unwrap_or("");
    assert!(
        ["OK", "NO", "BAD"].iter().any(|s| last.starts_with(&format!("{tag} {s}"))),
        "no tagged answer to {tag}: {out:?}"
    );
    last
}

#[test]
fn no_login_without_tls_unless_allowed() {
    let (_dir, md) = mailbox(0);
    let mut s = Session::new(cfg(false), false);
    let greeting = run(&mut s, &md, b"");
    assert!(greeting.contains("STARTTLS") && greeting.contains("LOGINDISABLED"), "{greeting}");
    let out = run(&mut s, &md, b"a LOGIN alice@example.com secret\r\nb SELECT INBOX\r\n");
    assert!(out.contains("a NO [PRIVACYREQUIRED]"), "{out}");
    assert!(out.contains("b BAD Log in first"), "{out}");
    let out = run(&mut s, &md, b"c AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldA==\r\n");
    assert!(out.contains("c NO [PRIVACYREQUIRED]"), "{out}");
    let out = run(&mut s, &md, b"d STARTTLS\r\ne CAPABILITY\r\n");
    assert!(out.contains("d OK"), "{out}");
    assert!(out.contains("AUTH=PLAIN") && !out.contains("LOGINDISABLED"), "{out}");
    let caps = out.lines().find(|l| l.starts_with("* CAPABILITY")).unwrap();
    assert!(!caps.contains("STARTTLS"), "not offered again once in TLS: {caps}");
    let out = run(&mut s, &md, b"d2 STARTTLS\r\n");
    assert!(out.contains("d2 BAD TLS is already active"), "{out}");
    let out = run(&mut s, &md, b"f LOGIN alice@example.com wrong\r\n");
    assert!(out.contains("f NO [AUTHENTICATIONFAILED]"), "{out}");
    let out = run(&mut s, &md, b"g AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldA==\r\n");
    assert!(out.contains("g OK [CAPABILITY"), "{out}");
    let out = run(&mut s, &md, b"h LOGIN alice@example.com secret\r\ni STARTTLS\r\n");
    assert!(out.contains("h BAD Already authenticated"), "{out}");
    assert!(out.contains("i BAD Already authenticated"), "{out}");
}

#[test]
fn select_reports_counts_uids_and_recent_once() {
    let (_dir, md) = mailbox(3);
    let mut a = logged_in(&md);
    let out = run(&mut a, &md, b"s SELECT INBOX\r\n");
    for want in ["* 3 EXISTS", "* 3 RECENT", "[UNSEEN 1]", "[UIDNEXT 4]", "s OK [READ-WRITE]"] {
        assert!(out.contains(want), "{want}: {out}");
    }
    // The first session took \Recent; EXAMINE elsewhere sees the messages, not as recent.
    let mut b = logged_in(&md);
    let out = run(&mut b, &md, b"e EXAMINE INBOX\r\nf STORE 1 +FLAGS (\\Seen)\r\n");
    assert!(out.contains("* 3 EXISTS") && out.contains("* 0 RECENT"), "{out}");
    assert!(out.contains("e OK [READ-ONLY]") && out.contains("f NO"), "{out}");
}

#[test]
fn sessions_hear_each_others_flags_and_expunges_with_the_right_numbers() {
    let (_dir, md) = mailbox(5);
    let mut a = selected(&md);
    let mut b = selected(&md);
    let out =
        run(&mut a, &md, b"1 STORE 1 +FLAGS (\\Seen)\r\n2 STORE 2,4 +FLAGS.SILENT (\\Deleted)\r\n");
    // \Recent is this session's: it selected first.
    assert!(out.contains("* 1 FETCH (FLAGS (\\Seen \\Recent))"), "{out}");
    assert!(!out.contains("* 2 FETCH"), "silent: {out}");
    let out = run(&mut a, &md, b"3 EXPUNGE\r\n");
    // 2 goes, and then what was 4 is 3.
    assert!(out.starts_with("* 2 EXPUNGE\r\n* 3 EXPUNGE\r\n3 OK"), "{out}");
    let out = run(&mut b, &md, b"n NOOP\r\n");
    assert!(out.starts_with("* 2 EXPUNGE\r\n* 3 EXPUNGE\r\n"), "{out}");
    assert!(out.contains("* 1 FETCH (FLAGS (\\Seen))") && out.contains("* 3 EXISTS"), "{out}");
    let out = run(&mut b, &md, b"f UID FETCH 1:* (UID FLAGS)\r\n");
    assert!(out.contains("* 1 FETCH (UID 1 FLAGS (\\Seen))"), "{out}");
    assert!(out.contains("* 2 FETCH (UID 3 FLAGS ())"), "{out}");
    assert!(out.contains("* 3 FETCH (UID 5 FLAGS ())"), "{out}");
}

#[test]
fn uids_are_not_reused_when_the_last_message_is_expunged() {
    let (_dir, md) = mailbox(2);
    let mut s = selected(&md);
    let out = run(&mut s, &md, b"1 UID STORE 2 +FLAGS (\\Deleted)\r\n2 UID EXPUNGE 2\r\n");
    assert!(out.contains("* 2 EXPUNGE") && out.contains("2 OK UID EXPUNGE"), "{out}");
    md.deliver(&[PLAIN], "mx.test").unwrap();
    let out = run(&mut s, &md, b"3 NOOP\r\n4 UID FETCH 1:* (UID)\r\n");
    assert!(out.contains("* 2 EXISTS"), "{out}");
    assert!(out.contains("* 2 FETCH (UID 3)") && !out.contains("UID 2)"), "{out}");
}

/// An EXPUNGE the Maildir refuses is a NO, not an OK for messages still there.
#[test]
fn a_failed_expunge_is_a_no() {
    let (_dir, md) = mailbox(2);
    let mut s = selected(&md);
    let out = run(&mut s, &md, b"1 STORE 1:2 +FLAGS (\\Deleted)\r\n");
    assert!(out.contains("1 OK"), "{out}");
    // Message 1's file becomes a directory: removing it fails (not "not found").
    let path = s.view().unwrap().snapshot.messages[0].path.clone();
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let out = run(&mut s, &md, b"2 EXPUNGE\r\n");
    assert!(tagged(&out, "2").starts_with("2 NO [SERVERBUG]"), "{out}");
}

/// A mailbox name never reaches outside the user's Maildir.
#[test]
fn mailbox_names_stay_inside_the_maildir() {
    let (dir, md) = mailbox(1);
    let mut s = logged_in(&md);
    for name in ["../escape", "a/../../escape", "/abs", "..", "~root", "a//b", "\"\""] {
        let out = run(&mut s, &md, format!("c CREATE {name}\r\n").as_bytes());
        tagged(&out, "c");
    }
    let outside: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(outside, ["Maildir"], "only the Maildir in its parent");
    let out = run(&mut s, &md, b"l LIST \"\" *\r\n");
    assert!(tagged(&out, "l").starts_with("l OK"), "{out}");
}

/// Random command sequences from two sessions on one mailbox, with deliveries between them:
/// every command gets its tagged answer, junk gets a BAD, nothing panics, and UIDs only grow.
#[test]
fn random_commands_always_get_a_tagged_answer() {
    let (_dir, md) = mailbox(4);
    let mut sessions = [logged_in(&md), logged_in(&md)];
    let mut next = crate::test_rng::xorshift(0x1a9_5eed);
    let mut inbox: Option<(u32, u32)> = None;
    for n in 0..3000 {
        let tag = format!("t{n}");
        let mb =
            pick(&mut next, &["INBOX", "a", "a/b", "Trash", "\"sp ace\"", "nope", "\"\"", "../x"]);
        let set =
            pick(&mut next, &["1", "1:*", "*", "2:4", "5,1", "4294967295", "1:4294967295", "0"]);
        let items = pick(
            &mut next,
            &[
                "(FLAGS)",
                "(UID RFC822.SIZE INTERNALDATE)",
                "ENVELOPE",
                "BODYSTRUCTURE",
                "BODY.PEEK[]<0.10>",
                "(BODY[1] BODY[HEADER.FIELDS (SUBJECT)])",
                "RFC822.HEADER",
                "BODY[2.1.MIME]",
                "BODY[3.TEXT]<5.7>",
                "FULL",
            ],
        );
        let search = pick(
            &mut next,
            &[
                "ALL",
                "UNSEEN",
                "SUBJECT hello",
                "OR SEEN DELETED",
                "BODY inner",
                "LARGER 10",
                "UID 1:3",
                "NOT 2",
                "SINCE 1-Jan-2020",
                "HEADER From alice",
                "CHARSET UTF-8 TEXT caf\u{e9}",
            ],
        );
        let flags = pick(
            &mut next,
            &["(\\Seen)", "(\\Deleted)", "(\\Flagged \\Draft)", "()", "(\\Answered $Junk)"],
        );
        let op = pick(&mut next, &["+FLAGS", "-FLAGS", "FLAGS", "+FLAGS.SILENT"]);
        let uid = pick(&mut next, &["", "UID "]);
        let command = match next() % 26 {
            0 => format!("{tag} NOOP"),
            1 => format!("{tag} SELECT {mb}"),
            2 => format!("{tag} EXAMINE {mb}"),
            3 => format!("{tag} CREATE {mb}"),
            4 => format!("{tag} DELETE {mb}"),
            5 => format!("{tag} RENAME {mb} {}", pick(&mut next, &["b", "a/c", "INBOX", "Trash"])),
            6 => format!("{tag} SUBSCRIBE {mb}"),
            7 => format!("{tag} LIST \"\" {}", pick(&mut next, &["*", "%", "a/%", "\"\""])),
            8 => format!("{tag} STATUS {mb} (MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT)"),
            9 => {
                let body = if next().is_multiple_of(2) { PLAIN } else { MULTIPART };
                let head = format!("{tag} APPEND {mb} {flags} {{{}+}}\r\n", body.len());
                format!("{head}{}", String::from_utf8_lossy(body))
            }
            10 | 11 => format!("{tag} {uid}FETCH {set} {items}"),
            12 => format!("{tag} {uid}STORE {set} {op} {flags}"),
            13 => format!("{tag} {uid}SEARCH {search}"),
            14 => format!("{tag} {uid}COPY {set} {mb}"),
            15 => format!("{tag} {uid}MOVE {set} {mb}"),
            16 => format!("{tag} EXPUNGE"),
            17 => format!("{tag} UID EXPUNGE {set}"),
            18 => format!("{tag} {}", pick(&mut next, &["CLOSE", "UNSELECT", "CHECK", "IDLE"])),
            19 => {
                format!("{tag} {}", pick(&mut next, &["NAMESPACE", "ID NIL", "ENABLE CONDSTORE"]))
            }
            20 => format!(
                "{tag} {}",
                pick(&mut next, &["LSUB \"\" *", "UNSUBSCRIBE a", "CAPABILITY"])
            ),
            21 => format!(
                "{tag} {}",
                pick(&mut next, &["LOGIN a b", "AUTHENTICATE PLAIN", "STARTTLS"])
            ),
            22 => {
                md.deliver(&[PLAIN], "mx.test").unwrap();
                format!("{tag} NOOP")
            }
            23 => format!("{tag} SELECT INBOX"),
            // Junk: random printable octets (no literal announcement, no line end).
            _ => {
                let junk: String = (0..next() % 40)
                    .map(|_| char::from(b' ' + (next() % 94) as u8))
                    .filter(|&c| c != '{')
                    .collect();
                format!("{tag} {junk}")
            }
        };
        let s = &mut sessions[n % 2];
        let out = run(s, &md, format!("{command}\r\n").as_bytes());
        tagged(&out, &tag);
        if let Some(v) = s.view() {
            let uids: Vec<u32> = v.snapshot.messages.iter().map(|m| m.uid).collect();
            assert!(uids.windows(2).all(|w| w[0] < w[1]), "UIDs in order: {uids:?}");
            assert!(uids.last().is_none_or(|&u| u < v.snapshot.uidnext), "{uids:?}");
        }
        // INBOX on disk: one UIDVALIDITY for good, and UIDNEXT never goes back.
        let now = md.snapshot().unwrap();
        let (validity, uidnext) = *inbox.get_or_insert((now.uidvalidity, now.uidnext));
        assert_eq!(now.uidvalidity, validity, "after {command:?}");
        assert!(now.uidnext >= uidnext, "UIDNEXT went back after {command:?}");
        inbox = Some((validity, now.uidnext));
    }
}

/// Structure items and part sections of hostile MIME are answered, not a panic.
#[test]
fn broken_mime_gets_answers() {
    let (_dir, md) = mailbox(3);
    let mut s = selected(&md);
    let out = run(&mut s, &md, b"f FETCH 3 (BODYSTRUCTURE ENVELOPE BODY[1] BODY[1.MIME])\r\n");
    assert!(out.contains(r#"BODYSTRUCTURE (("text" "plain" ("name" "x" "#), "{out}");
    assert!(
        out.contains(r#""mixed" ("boundary" "zz")"#) && out.ends_with("f OK FETCH completed\r\n")
    );
}
