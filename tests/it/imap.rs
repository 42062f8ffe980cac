//! IMAP (issue #13) against the clients people use: Python's imaplib for every command,
//! curl's imap://, mbsync syncing both ways, raw sessions for concurrency and IDLE, Dovecot's
//! imapd as the reference for ENVELOPE and BODYSTRUCTURE, and kill -9 during EXPUNGE.

use std::io::{BufRead, Write};
use std::process::Command;
use std::time::Duration;

use crate::common::mailboxes::*;
use crate::common::*;

const IMAPLIB: &str = r#"
import imaplib, re, ssl, sys
host, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
m = imaplib.IMAP4(host, port)
assert "STARTTLS" in m.capabilities and "IDLE" in m.capabilities, m.capabilities
m.starttls(ssl_context=ctx)
assert "STARTTLS" not in m.capabilities
typ, _ = m.login("alice@example.com", "pw"); assert typ == "OK"
typ, boxes = m.list(); assert typ == "OK" and any(b'INBOX' in b for b in boxes), boxes
typ, data = m.select("INBOX"); assert typ == "OK" and data == [b"3"], data
uidvalidity = int(m.untagged_responses["UIDVALIDITY"][0])
typ, data = m.fetch("1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE)")
assert typ == "OK" and len(data) == 3, data
assert all(b"\\Recent" in d for d in data), data
sizes = [int(re.search(rb"RFC822.SIZE (\d+)", d).group(1)) for d in data]
uids = [int(re.search(rb"UID (\d+)", d).group(1)) for d in data]
assert uids == sorted(uids) and len(set(uids)) == 3, uids
# Headers by field, without setting \Seen.
typ, data = m.uid("fetch", f"{uids[0]}:{uids[2]}", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
subjects = [d[1] for d in data if isinstance(d, tuple)]
assert subjects == [b"Subject: big\r\n\r\n", b"Subject: two\r\n\r\n", b"Subject: three\r\n\r\n"], subjects
# A partial fetch of the 20 MB message: 100 octets from offset 1,000,000 of its text.
typ, data = m.fetch("1", "(BODY.PEEK[TEXT]<1000000.100>)")
assert data[0][0].endswith(b"BODY[TEXT]<1000000> {100}"), data[0][0]
text = (b"0123456789" * 7 + b"\r\n") * 280000
assert data[0][1] == text[1000000:1000100], data
assert sizes[0] > 20_000_000, sizes
# The whole mailbox in one FETCH: answered in parts, every body whole and in order.
typ, data = m.fetch("1:*", "(BODY.PEEK[])")
bodies = [d[1] for d in data if isinstance(d, tuple)]
assert [len(b) for b in bodies] == sizes, ([len(b) for b in bodies], sizes)
assert bodies[0].endswith(text) and bodies[1].endswith(b"\r\n\r\nsecond\r\n"), bodies[1]
assert bodies[2].endswith(b"\r\n\r\nthird\r\n"), bodies[2]
typ, data = m.search(None, "UNSEEN"); assert data == [b"1 2 3"], data
typ, data = m.fetch("2", "(BODY[TEXT])")
assert data[0][1] == b"second\r\n", data
assert b"\\Seen" in data[1] if len(data) > 1 and isinstance(data[1], bytes) else b"\\Seen" in data[0][0], data
typ, data = m.search(None, "SEEN"); assert data == [b"2"], data
typ, data = m.store("3", "+FLAGS", "(\\Flagged \\Deleted)")
assert b"\\Flagged" in data[0] and b"\\Deleted" in data[0], data
typ, data = m.expunge(); assert data == [b"3"], data
typ, data = m.search(None, "ALL"); assert data == [b"1 2"], data
typ, data = m.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)")
assert data == [f"INBOX (MESSAGES 2 UIDNEXT {uids[2] + 1} UIDVALIDITY {uidvalidity} UNSEEN 1)".encode()], data
typ, data = m.select("Archive"); assert typ == "NO", data
m.logout()
print(uidvalidity, uids[2])
"#;

/// Python's imaplib over STARTTLS on mail delivered through the SMTP listener: LIST, SELECT,
/// FETCH (flags, sizes, dates, header fields, a partial range of a 20 MB message, the text),
/// \Seen set by BODY[] and not by BODY.PEEK, SEARCH, STORE, EXPUNGE and STATUS. After a restart
/// the UIDVALIDITY is the same and a new message gets a UID above every earlier one.
#[test]
fn imaplib_reads_flags_and_expunges_mail_delivered_over_smtp() {
    let mut t = start("");
    let line = "0123456789".repeat(7);
    let big: String = (0..280_000).map(|_| format!("{line}\r\n")).collect();
    // One at a time, so the Maildir (and UID) order is the sending order.
    for (id, body) in [("big", big.as_str()), ("two", "second\r\n"), ("three", "third\r\n")] {
        t.send("alice@example.com", id, body);
        t.s.wait_queue(60, |q| q.is_empty());
    }
    let out = python(IMAPLIB, &["127.0.0.1", &t.imap.port().to_string()]);
    let (validity, last_uid) = out.trim().split_once(' ').unwrap();
    let last_uid: u32 = last_uid.parse().unwrap();
    t.s.terminate();
    t.s.spawn();
    let imap = t.s.listener("imap");
    // The mailboxes are counted at start: the gauge is the octets of alice's messages.
    let on_disk: u64 = ["new", "cur"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(t.maildir("alice").join(sub)).unwrap())
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = t.s.http_get("/metrics");
        let text = String::from_utf8(body).unwrap();
        let gauge = text.lines().find_map(|l| l.strip_prefix("sluice_mailbox_bytes "));
        if gauge == Some(on_disk.to_string().as_str()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sluice_mailbox_bytes {gauge:?}, {on_disk} on disk"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t.send("alice@example.com", "four", "fourth\r\n");
    t.s.wait_queue(20, |q| q.is_empty());
    let check = format!(
        "import imaplib, sys\nm = imaplib.IMAP4('127.0.0.1', {})\nm.login('alice@example.com', 'pw')\n\
         m.select('INBOX')\nprint(m.untagged_responses['UIDVALIDITY'][0].decode(), \
         m.uid('search', None, 'ALL')[1][0].decode())",
        imap.port()
    );
    let after = python(&check, &[]);
    let (v2, uids) = after.trim().split_once(' ').unwrap();
    assert_eq!(v2, validity, "UIDVALIDITY kept across a restart");
    let uids: Vec<u32> = uids.split(' ').map(|u| u.parse().unwrap()).collect();
    assert_eq!(uids.len(), 3);
    assert!(*uids.last().unwrap() > last_uid, "{uids:?} after {last_uid}: a UID was reused");
}

/// Two sessions on one mailbox see each other's flag changes and expunges (at NOOP), and an
/// IDLE session hears of a delivery made over SMTP.
#[test]
fn sessions_see_each_others_changes_and_idle_sees_new_mail() {
    let t = start("");
    t.send("bob@example.com", "s1", "one\r\n");
    t.send("bob@example.com", "s2", "two\r\n");
    t.s.wait_queue(20, |q| q.is_empty());
    let open = || {
        let (mut r, mut w) = imap_connect(t.imap);
        w.write_all(b"l LOGIN bob@example.com pw\r\ns SELECT INBOX\r\n").unwrap();
        imap_until(&mut r, "l OK");
        let sel = imap_until(&mut r, "s OK");
        assert!(sel.contains("* 2 EXISTS"), "{sel}");
        (r, w)
    };
    let (mut ra, mut wa) = open();
    let (mut rb, mut wb) = open();
    wb.write_all(
        b"b1 STORE 1 +FLAGS (\\Flagged)\r\nb2 STORE 2 +FLAGS (\\Deleted)\r\nb3 EXPUNGE\r\n",
    )
    .unwrap();
    let b = imap_until(&mut rb, "b3 OK");
    assert!(b.contains("* 2 EXPUNGE"), "{b}");
    wa.write_all(b"a1 NOOP\r\n").unwrap();
    let a = imap_until(&mut ra, "a1 OK");
    assert!(a.contains("* 2 EXPUNGE"), "A sees B's expunge: {a}");
    // A selected first: the messages are \Recent to A alone (RFC 3501 2.3.2).
    assert!(a.contains("* 1 FETCH (FLAGS (\\Flagged \\Recent))"), "A sees B's flag: {a}");
    // IDLE, then a delivery over SMTP.
    wa.write_all(b"a2 IDLE\r\n").unwrap();
    imap_until(&mut ra, "+ ");
    t.send("bob@example.com", "s3", "three\r\n");
    let news = imap_until(&mut ra, "* 2 EXISTS");
    assert!(news.contains("* 2 EXISTS"), "{news}");
    wa.write_all(b"DONE\r\n").unwrap();
    imap_until(&mut ra, "a2 OK");
    wa.write_all(b"a3 LOGOUT\r\n").unwrap();
    let bye = imap_until(&mut ra, "a3 OK");
    assert!(bye.contains("* BYE"), "{bye}");
}

/// curl lists the mailboxes and fetches a message by UID over imap:// (STARTTLS required).
#[test]
fn curl_lists_and_fetches_over_imap() {
    if !require_tool("curl", "apt-get install curl") {
        return;
    }
    let t = start("");
    t.send("bob@example.com", "ci1", "curl body\r\n");
    t.s.wait_queue(20, |q| q.is_empty());
    let base = format!("imap://127.0.0.1:{}/", t.imap.port());
    let curl = |url: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--ssl-reqd", "-k", "-u", "bob@example.com:pw"])
            .arg(url)
            .output()
            .unwrap();
        assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let list = curl(&base);
    assert!(list.contains("INBOX"), "{list}");
    let msg = curl(&format!("{base}INBOX;UID=1"));
    assert!(msg.contains("Message-ID: <ci1>") && msg.contains("curl body"), "{msg}");
}

/// Hostile input on the IMAP port: random lines, literals and binary never stop the server;
/// every line gets an answer and the session still works afterwards.
#[test]
fn random_input_to_imap_gets_answers_and_never_kills_the_server() {
    let t = start("");
    let mut next = {
        let mut x: u64 = 0x1DEA_5EED;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    };
    let words = [
        "a",
        "LOGIN",
        "SELECT",
        "FETCH",
        "1:*",
        "(BODY[]",
        "UID",
        "{5}",
        "{3+}",
        "\"x",
        ")",
        "*",
        "STORE",
        "+FLAGS",
        "\\Seen",
        "SEARCH",
        "OR",
        "NOT",
        "IDLE",
        "AUTHENTICATE",
        "PLAIN",
        "LIST",
        "\"\"",
        "%",
        "APPEND",
        "INBOX",
        "\"31-Dec-9999 23:59:59 -1200\"",
        "\"01-Jan-1900 00:00:00 +1400\"",
        "{1+}\r\nx",
        "INTERNALDATE",
    ];
    for round in 0..20 {
        let (mut r, mut w) = imap_connect(t.imap);
        w.write_all(b"l LOGIN alice@example.com pw\r\n").unwrap();
        imap_until(&mut r, "l OK");
        for _ in 0..30 {
            let mut line = Vec::new();
            for _ in 0..(next() % 6) {
                if next() % 7 == 0 {
                    line.extend(
                        (0..next() % 5)
                            .map(|_| (next() % 256) as u8)
                            .filter(|b| *b != b'\n' && *b != b'\r'),
                    );
                } else {
                    line.extend_from_slice(
                        words[(next() % words.len() as u64) as usize].as_bytes(),
                    );
                }
                line.push(b' ');
            }
            line.extend_from_slice(b"\r\n");
            if w.write_all(&line).is_err() {
                break;
            }
        }
        // Whatever state that left (a literal half sent, IDLE), the server answers a NOOP or
        // closes the connection cleanly; it never hangs or dies.
        let _ = w.write_all(b"\r\n\r\nDONE\r\nz NOOP\r\n");
        let mut all = String::new();
        let mut line = String::new();
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            all.push_str(&line);
            if line.starts_with("z OK") || line.starts_with("* BYE") {
                break;
            }
            line.clear();
        }
        assert!(
            all.contains("z OK") || all.contains("* BYE") || all.contains("BAD"),
            "round {round}: {all}"
        );
    }
    // The server is alive and serves a fresh session.
    let out = python(
        &format!(
            "import imaplib\nm = imaplib.IMAP4('127.0.0.1', {})\nm.login('alice@example.com', 'pw')\nprint(m.select('INBOX')[0])",
            t.imap.port()
        ),
        &[],
    );
    assert_eq!(out.trim(), "OK");
    t.s.assert_no_panic();
}

/// Issue #22: APPEND with the latest date IMAP can write in a zone west of UTC (year 10000 in
/// UTC) and one before 1970: stored, and FETCH INTERNALDATE answers (it panicked, and the
/// folder could not be synced again).
#[test]
fn append_with_extreme_dates_is_clamped_and_fetchable() {
    let t = start("");
    let (mut r, mut w) = imap_connect(t.imap);
    w.write_all(b"l LOGIN alice@example.com pw\r\n").unwrap();
    imap_until(&mut r, "l OK");
    for (tag, date) in [("a1", "31-Dec-9999 23:59:59 -1200"), ("a2", "01-Jan-1900 00:00:00 +1400")]
    {
        w.write_all(format!("{tag} APPEND INBOX \"{date}\" {{1+}}\r\nx\r\n").as_bytes()).unwrap();
        let answer = imap_until(&mut r, tag);
        assert!(answer.contains(&format!("{tag} OK [APPENDUID")), "{answer}");
    }
    w.write_all(b"s SELECT INBOX\r\nf FETCH 1:* (INTERNALDATE BODY.PEEK[])\r\n").unwrap();
    imap_until(&mut r, "s OK");
    let fetched = imap_until(&mut r, "f ");
    assert!(fetched.contains("INTERNALDATE \"31-Dec-9999 23:59:59 +0000\""), "{fetched}");
    assert!(fetched.contains("INTERNALDATE \"01-Jan-1970 00:00:00 +0000\""), "{fetched}");
    assert!(fetched.contains("f OK"), "{fetched}");
    t.s.assert_no_panic();
}

const IMAPLIB_FOLDERS: &str = r#"
import imaplib, re, sys
host, port = sys.argv[1], int(sys.argv[2])
m = imaplib.IMAP4(host, port)
# AUTHENTICATE PLAIN with a continuation (imaplib sends no initial response).
typ, data = m.authenticate("PLAIN", lambda _: b"\0bob@example.com\0pw")
assert typ == "OK", data
for cap in ["UIDPLUS", "MOVE", "NAMESPACE", "SPECIAL-USE", "ID", "ENABLE", "CHILDREN"]:
    assert cap in m.capabilities, (cap, m.capabilities)
typ, data = m.namespace(); assert data == [b'(("" "/")) NIL NIL'], data
typ, data = m.xatom("ID", "NIL"); assert typ == "OK", data
assert b"sluice" in m.untagged_responses.pop("ID")[0]
typ, data = m.enable("CONDSTORE"); assert typ == "OK", data

def names(pattern="*", lsub=False):
    typ, data = (m.lsub if lsub else m.list)('""', pattern)
    assert typ == "OK", data
    return [d.decode() for d in data if d]

# The default folders with their roles (RFC 6154), created and subscribed at the first login.
listed = names()
for line in ['(\\HasNoChildren) "/" INBOX', '(\\HasNoChildren \\Sent) "/" Sent',
             '(\\HasNoChildren \\Trash) "/" Trash', '(\\HasNoChildren \\Drafts) "/" Drafts',
             '(\\HasNoChildren \\Junk) "/" Junk']:
    assert line in listed, (line, listed)
assert len(listed) == 5, listed

# CREATE makes the parents too; LIST shows the hierarchy; % stops at the delimiter.
assert m.create("Lists/rust")[0] == "OK"
assert m.create("Lists/rust")[0] == "NO"
assert '(\\HasChildren) "/" Lists' in names("Lists*"), names("Lists*")
assert names("Lists/%") == ['(\\HasNoChildren) "/" Lists/rust'], names("Lists/%")
assert m.subscribe("Lists/rust")[0] == "OK"
assert '() "/" Lists/rust' in names(lsub=True) or any("Lists/rust" in n for n in names(lsub=True))

# APPEND with flags, a date and a literal: APPENDUID names the new message.
msg = b"From: Carol <bob@example.com>\r\nSubject: draft one\r\n\r\nHello\r\n"
date = '"17-May-2023 10:00:00 +0000"'
typ, data = m.append("Sent", "(\\Seen)", date, msg)
assert typ == "OK", data
validity, uid = map(int, re.search(rb"\[APPENDUID (\d+) (\d+)\]", data[0]).groups())
# A 3 MB message goes to a file as it arrives (synchronizing literal) and comes back whole.
big = b"Subject: big append\r\n\r\n" + (b"y" * 998 + b"\r\n") * 3000
typ, data = m.append("Drafts", None, None, big)
assert typ == "OK", data
big_uid = re.search(rb"\[APPENDUID \d+ (\d+)\]", data[0]).group(1)
m.select("Drafts")
typ, data = m.uid("fetch", big_uid, "(RFC822.SIZE BODY.PEEK[])")
assert data[0][1] == big, (len(data[0][1]), len(big))
m.close()
typ, data = m.append("Nowhere", None, None, msg)
assert typ == "NO" and b"TRYCREATE" in data[0], data
typ, data = m.select("Sent")
assert typ == "OK" and data == [b"1"], data
assert int(m.untagged_responses["UIDVALIDITY"][0]) == validity
typ, data = m.uid("fetch", str(uid), "(FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
assert b"\\Seen" in data[0][0] and b'"17-May-2023' in data[0][0], data
assert data[0][1] == msg, data
assert m.check()[0] == "OK"
assert m.close()[0] == "OK"

# Three messages over SMTP; COPY two, MOVE one (COPYUID, EXPUNGE), UID EXPUNGE one.
typ, data = m.select("INBOX"); assert data == [b"3"], data
typ, data = m.uid("search", None, "ALL"); uids = data[0].split()
# (imaplib's uid() drops the tagged text, where COPYUID is: the command directly.)
typ, data = m._simple_command("UID", "COPY", b"%s:%s" % (uids[0], uids[1]), "Lists/rust")
assert typ == "OK" and re.search(rb"\[COPYUID \d+ \d+:\d+ 1:2\]", data[0]), data
typ, data = m._simple_command("UID", "MOVE", uids[2], "Trash")
assert typ == "OK", data
moved = m.untagged_responses.get("OK", [])
assert any(b"COPYUID" in x for x in moved), moved
assert m.untagged_responses.pop("EXPUNGE") == [b"3"], m.untagged_responses
typ, data = m.status("Trash", "(MESSAGES)"); assert data == [b"Trash (MESSAGES 1)"], data
typ, data = m.status("Lists/rust", "(MESSAGES UIDNEXT)"); assert data == [b'Lists/rust (MESSAGES 2 UIDNEXT 3)'], data
m.uid("store", b"%s:%s" % (uids[0], uids[1]), "+FLAGS.SILENT", "(\\Deleted)")
typ, data = m._simple_command("UID", "EXPUNGE", uids[1])
assert typ == "OK" and m.untagged_responses.pop("EXPUNGE") == [b"2"], (data, m.untagged_responses)
typ, data = m.uid("search", None, "ALL"); assert data[0].split() == [uids[0]], data

# ENVELOPE and BODYSTRUCTURE of a multipart message; part sections; SEARCH by content.
typ, data = m.select("Lists/rust")
typ, data = m.fetch("1", "(ENVELOPE BODYSTRUCTURE)")
head = data[0]
assert b'"Dinner plans"' in head and b'(("Ann Example" NIL "ann" "example.org"))' in head, head
assert re.search(rb'\("text" "plain" \("charset" "utf-8"\) NIL NIL "7bit" \d+ \d+', head), head
assert b'"alternative" ("boundary" "b1")' in head, head
typ, data = m.fetch("1", "(BODY.PEEK[2] BODY.PEEK[1.MIME])")
assert data[0][1] == b"<p>Soup</p>", data
assert data[1][1] == b"Content-Type: text/plain; charset=utf-8\r\n\r\n", data
for crit, want in [('SUBJECT "dinner"', b"1"), ('FROM "ann@"', b"1 2"), ('BODY "soup"', b"1"),
                   ('TEXT "plans"', b"1"), ('HEADER Message-ID "m2"', b"2"),
                   ('SENTSINCE 1-Jan-2023 SENTBEFORE 1-Jan-2024', b"1"), ('NOT BODY "soup"', b"2"),
                   ('OR SUBJECT "nothing" LARGER 1000000', b"")]:
    typ, data = m.search("UTF-8", crit)
    assert typ == "OK" and data == [want], (crit, data)
typ, data = m.search("KOI8-R", "ALL"); assert typ == "NO" and b"BADCHARSET" in data[0], data

# RENAME moves a folder with its children and messages; DELETE refuses a parent.
m.close()
assert m.rename("Lists", "Archive/Lists")[0] == "OK"
listed = names("Archive*")
assert '(\\HasChildren \\Archive) "/" Archive' in listed or any(l.endswith(" Archive") for l in listed), listed
assert any(l.endswith("Archive/Lists/rust") for l in listed), listed
typ, data = m.status("Archive/Lists/rust", "(MESSAGES)"); assert data == [b'Archive/Lists/rust (MESSAGES 2)'], data
typ, data = m.delete("Archive/Lists"); assert typ == "NO", data
assert m.delete("Archive/Lists/rust")[0] == "OK"
assert m.delete("INBOX")[0] == "NO"
assert not any("rust" in l for l in names()), names()
assert m.unsubscribe("Lists/rust")[0] == "OK"
assert not any("rust" in l for l in names(lsub=True)), names(lsub=True)
# A folder deleted under another session's feet stays deleted.
m2 = imaplib.IMAP4(host, port)
m2.login("bob@example.com", "pw")
assert m2.select("Junk")[0] == "OK"
assert m.delete("Junk")[0] == "OK"
m2.noop(); m2.fetch("1:*", "(FLAGS)")
assert not any(l.endswith(" Junk") for l in names()), names()
m2.logout()
m.logout()
print("ok")
"#;

/// Folders and the message-moving commands through imaplib (logged in with AUTHENTICATE
/// PLAIN): LIST with SPECIAL-USE and CHILDREN attributes, NAMESPACE, ID, ENABLE, CHECK,
/// CREATE (with parents), SUBSCRIBE/UNSUBSCRIBE/LSUB, APPEND
/// with flags, date and APPENDUID, COPY/MOVE with COPYUID, UID EXPUNGE, ENVELOPE and
/// BODYSTRUCTURE of a multipart message, part sections, SEARCH by header, body and sent date,
/// RENAME of a folder with children, DELETE.
#[test]
fn imaplib_manages_folders_appends_copies_and_moves() {
    let t = start("");
    let alt = "From: Ann Example <ann@example.org>\r\nTo: bob@example.com\r\n\
               Date: Tue, 3 Jan 2023 12:00:00 +0000\r\nSubject: Dinner plans\r\n\
               MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b1\r\n\r\n\
               --b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSoup.\r\n\
               --b1\r\nContent-Type: text/html\r\n\r\n<p>Soup</p>\r\n--b1--\r\n";
    // One at a time: the queue delivers in parallel, and the script relies on this order.
    t.send_raw("bob@example.com", "ann@example.org", alt);
    t.s.wait_queue(20, |q| q.is_empty());
    t.send_raw(
        "bob@example.com",
        "ann@example.org",
        "Message-ID: <m2>\r\nFrom: ann@example.org\r\nSubject: second\r\n\r\nbread\r\n",
    );
    t.s.wait_queue(20, |q| q.is_empty());
    t.send("bob@example.com", "m3", "third\r\n");
    t.s.wait_queue(20, |q| q.is_empty());
    let out = python(IMAPLIB_FOLDERS, &["127.0.0.1", &t.imap.port().to_string()]);
    assert_eq!(out.trim(), "ok");
    // The folders are Maildir++ directories any Maildir reader finds.
    let md = t.maildir("bob");
    for dir in [".Sent", ".Trash", ".Archive", ".Archive.Lists"] {
        assert!(md.join(dir).join("cur").is_dir(), "{dir}");
    }
}

/// Raw FETCH answers, one command per message and item, as JSON {"seq item": base64 line}.
const RAW_FETCH: &str = r#"
import base64, json, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
f = s.makefile("rb")
def response(tag):
    out = b""
    while True:
        line = f.readline()
        assert line, out
        # A literal: its octets follow the line, then the line goes on.
        while line.endswith(b"}\r\n"):
            n = int(line[line.rindex(b"{") + 1:-3])
            line += f.read(n) + f.readline()
        if line.startswith(tag + b" "):
            assert line.startswith(tag + b" OK"), line
            return out
        out += line
f.readline()
s.sendall(b"l LOGIN alice@example.com pw\r\n"); response(b"l")
s.sendall(b"s EXAMINE INBOX\r\n"); response(b"s")
answers = {}
# Part sections: parts, their MIME headers, nested messages' header and text, ranges.
PARTS = ["BODY.PEEK[1]", "BODY.PEEK[1.MIME]", "BODY.PEEK[2]", "BODY.PEEK[2.MIME]",
         "BODY.PEEK[1.1]", "BODY.PEEK[1.2]", "BODY.PEEK[2.1]", "BODY.PEEK[2.2]", "BODY.PEEK[3]",
         "BODY.PEEK[2.HEADER]", "BODY.PEEK[2.TEXT]", "BODY.PEEK[3.HEADER]", "BODY.PEEK[2.1.1]",
         "BODY.PEEK[2.HEADER.FIELDS (SUBJECT FROM)]", "BODY.PEEK[1]<3.20>", "BODY.PEEK[2]<0.7>",
         "BODY.PEEK[2.1.MIME]", "BODY.PEEK[1.TEXT]", "BODY.PEEK[2.1.2]", "BODY.PEEK[1.1.1]",
         "BODY.PEEK[2.2.1]", "BODY.PEEK[2.HEADER.FIELDS.NOT (SUBJECT)]", "BODY.PEEK[1.HEADER]",
         "BODY.PEEK[1.1.MIME]", "BODY.PEEK[1.2.TEXT]"]
for seq in range(1, int(sys.argv[3]) + 1):
    for item in ["ENVELOPE", "BODYSTRUCTURE", "BODY"] + PARTS:
        s.sendall(b"f FETCH %d (%s)\r\n" % (seq, item.encode()))
        answers[f"{seq} {item}"] = base64.b64encode(response(b"f")).decode()
print(json.dumps(answers))
"#;

/// MIME messages whose structure clients read with ENVELOPE and BODYSTRUCTURE.
const MIME_CORPUS: [&str; 13] = [
    // multipart/alternative
    "From: Ann Example <ann@example.org>\r\nTo: bob@example.com, \"Doe, J.\" <j@d.example>\r\nCc: undisclosed-recipients:;\r\nDate: Tue, 3 Jan 2023 12:00:00 +0000\r\nSubject: Dinner plans\r\nMessage-ID: <alt@x>\r\nIn-Reply-To: <prev@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nSoup =E2=98=83\r\nand bread.\r\n--b1\r\nContent-Type: text/html; charset=\"us-ascii\"\r\n\r\n<p>Soup</p>\r\n--b1--\r\nepilogue\r\n",
    // an attachment with a disposition, a language and an ID
    "From: ann@example.org (Ann)\r\nSubject: report\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=mix\r\n\r\n--mix\r\nContent-Type: text/plain\r\nContent-Language: en, fr\r\n\r\nSee attached.\r\n\r\n--mix\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\nContent-Transfer-Encoding: base64\r\nContent-ID: <pdf@x>\r\nContent-Description: The report\r\nContent-Location: http://example.org/r.pdf\r\n\r\nJVBERi0xLjQK\r\nJVBERi0xLjQK\r\n--mix--\r\n",
    // encoded words in the subject and the names
    "From: =?utf-8?q?Jos=C3=A9?= <jose@example.org>\r\nTo: =?iso-8859-1?b?SvxyZ2Vu?= <j@example.org>\r\nSubject: =?utf-8?B?w6l0w6k=?= and\r\n =?utf-8?q?more?=\r\nReply-To: list@example.org\r\n\r\nbody\r\n",
    // a message/rfc822 part
    "From: fwd@example.org\r\nSubject: Fwd: hello\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n--outer\r\nContent-Type: text/plain\r\n\r\nForwarded:\r\n--outer\r\nContent-Type: message/rfc822\r\n\r\nFrom: orig@example.net\r\nTo: fwd@example.org\r\nSubject: hello\r\nDate: Mon, 2 Jan 2023 08:00:00 -0500\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n--inner\r\nContent-Type: text/plain\r\n\r\nhi\r\n--inner\r\nContent-Type: text/html\r\n\r\n<b>hi</b>\r\n--inner--\r\n\r\n--outer--\r\n",
    // no MIME at all
    "Subject: plain\r\nContent-Transfer-Encoding: QUOTED-Printable\r\nContent-ID: <c@x>\r\nContent-Disposition: inline\r\nContent-Type: text/plain; format=flowed\r\n\r\nline one\r\nline two\r\n",
    // malformed: the closing boundary never comes, a part without header
    "From: broken@example.org\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n\r\nno header here\r\n--zz\r\nContent-Type: text/plain; charset=us-ascii; format=flowed\r\n\r\ncut short\r\n",
    // malformed: a multipart without a boundary parameter, odd encodings
    "From: <odd@example.org>\r\nContent-Type: multipart/mixed\r\nContent-Transfer-Encoding: 8BIT\r\n\r\njust text\r\n",
    // groups, routes, a missing domain, quoted and escaped names
    "From: \"A \\\"quoted\\\" name\" <a@example.org>\r\nTo: team: x@example.org, y@example.org;, solo\r\nCc: <@route.example:z@example.org>, <>, Nobody <@>\r\nBcc: Some Body <sb@example.org> (comment)\r\nSubject: addresses\r\n\r\nx\r\n",
    // an empty body and a header with no value
    "Subject:\r\nX-Empty:\r\n\r\n",
    // a transfer encoding without a content type
    "Subject: cte only\r\nContent-Transfer-Encoding: base64\r\nContent-Description: what\r\n\r\naGk=\r\n",
    // RFC 2231 parameters and a non-text single part
    "From: p@example.org\r\nMIME-Version: 1.0\r\nContent-Type: image/png; name*=utf-8''caf%C3%A9.png\r\nContent-Disposition: inline; filename*0=\"long\"; filename*1=\"name.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n",
    // a whole message as the body (issue #23: BODY[1] is the encapsulated message)
    "From: fwd@example.org\r\nSubject: whole\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\nFrom: orig@example.net\r\nSubject: inner\r\n\r\ninner text\r\n",
    // the same, with a multipart inside
    "From: fwd@example.org\r\nSubject: whole multipart\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\nFrom: orig@example.net\r\nSubject: inner\r\nContent-Type: multipart/mixed; boundary=in\r\n\r\n--in\r\nContent-Type: text/plain\r\n\r\none\r\n--in\r\nContent-Type: text/html\r\n\r\n<i>two</i>\r\n--in--\r\n",
];

/// Dovecot's imapd as the reference for ENVELOPE, BODYSTRUCTURE, BODY and 25 part sections
/// (parts, .MIME, .HEADER, .TEXT, HEADER.FIELDS of nested messages, ranges, part numbers
/// that do not exist): serving a copy of the Maildir sluice wrote (multipart/alternative,
/// attachments, encoded words, message/rfc822 parts, malformed MIME, address groups), each
/// answer must be the same octets.
#[test]
fn fetch_answers_match_dovecot_byte_for_byte() {
    if !require_tool("dovecot", "apt-get install dovecot-imapd") {
        return;
    }
    let t = start("");
    for (i, message) in MIME_CORPUS.iter().enumerate() {
        t.send_raw("alice@example.com", "sender@example.org", message);
        // One at a time: the Maildir order is the corpus order.
        t.s.wait_queue(20, |q| q.is_empty());
        assert_eq!(t.mailbox("alice").len(), i + 1);
    }
    let n = MIME_CORPUS.len().to_string();
    let fetch = |port: u16| -> serde_json::Value {
        let out = python(RAW_FETCH, &["127.0.0.1", &port.to_string(), &n]);
        serde_json::from_str(&out).unwrap()
    };
    let ours = fetch(t.imap.port());
    let copy = tempfile::tempdir().unwrap();
    let dv_maildir = copy.path().join("Maildir");
    copy_tree(&t.maildir("alice"), &dv_maildir);
    let ok = Command::new("chown").args(["-R", "65534:65534"]).arg(copy.path()).status().unwrap();
    assert!(ok.success());
    let theirs = {
        let dovecot = Dovecot::start(&dv_maildir, "imap");
        fetch(dovecot.port)
    };
    let text = |v: &serde_json::Value| {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
        String::from_utf8_lossy(&b).into_owned()
    };
    let mut differences = Vec::new();
    for (key, theirs) in theirs.as_object().unwrap() {
        let (a, b) = (text(&ours[key]), text(theirs));
        if a != b {
            differences.push(format!("{key}\n  sluice:  {a}  dovecot: {b}"));
        }
    }
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

/// Every folder on the server with its messages: `{folder: [[message-id or subject, flags]]}`.
const SERVER_STATE: &str = r#"
import imaplib, json, re, sys
m = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]))
m.login("bob@example.com", "pw")
state = {}
for line in m.list('""', "*")[1]:
    name = line.decode().rsplit(' "/" ', 1)[1].strip('"')
    m.select(name, readonly=True)
    typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID SUBJECT)])")
    msgs = []
    for d in data:
        if isinstance(d, tuple):
            flags = sorted(re.search(rb"FLAGS \(([^)]*)\)", d[0]).group(1).decode().split())
            fields = d[1].decode()
            key = re.search(r"Message-ID: <([^>]+)>", fields) or re.search(r"Subject: (.+)\r", fields)
            msgs.append([key.group(1), [f for f in flags if f != "\\Recent"]])
    state[name] = sorted(msgs)
print(json.dumps(state, sort_keys=True))
"#;

/// mbsync (isync) keeps a local Maildir and the server in step both ways over STARTTLS:
/// messages, flags, expunges, a message appended locally to Sent and a folder created
/// locally reach the server; a flag set and a message delivered on the server reach the
/// local side.
#[test]
fn mbsync_syncs_a_mailbox_both_ways() {
    if !require_tool("mbsync", "apt-get install isync") {
        return;
    }
    let t = start("");
    for id in ["m1", "m2", "m3"] {
        t.send("bob@example.com", id, &format!("body of {id}\r\n"));
    }
    t.s.wait_queue(20, |q| q.is_empty());
    let local = tempfile::tempdir().unwrap();
    let mail = local.path().join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    let rc = local.path().join("mbsyncrc");
    std::fs::write(
        &rc,
        format!(
            "IMAPAccount sluice\nHost 127.0.0.1\nPort {port}\nUser bob@example.com\nPass pw\n\
             SSLType STARTTLS\nCertificateFile {cert}\nAuthMechs PLAIN\n\n\
             IMAPStore remote\nAccount sluice\n\n\
             MaildirStore local\nPath {mail}/\nInbox {mail}/INBOX\nSubFolders Verbatim\n\n\
             Channel sync\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\nExpunge Both\n\
             SyncState *\n",
            port = t.imap.port(),
            cert = t.cert().display(),
            mail = mail.display(),
        ),
    )
    .unwrap();
    let mbsync = || {
        let out = Command::new("mbsync")
            .arg("-c")
            .arg(&rc)
            .arg("-a")
            .env("HOME", local.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "mbsync failed:\n{text}");
    };
    mbsync();
    // Local files by Message-ID (or subject), with their paths.
    let local_messages = |folder: &str| -> Vec<(String, std::path::PathBuf)> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(dir) = std::fs::read_dir(mail.join(folder).join(sub)) else { continue };
            for e in dir {
                let p = e.unwrap().path();
                let text = std::fs::read_to_string(&p).unwrap();
                let id = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Message-ID: <").map(|r| r.trim_end_matches('>')))
                    .unwrap_or("?")
                    .to_string();
                out.push((id, p));
            }
        }
        out.sort();
        out
    };
    let inbox = local_messages("INBOX");
    assert_eq!(inbox.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["m1", "m2", "m3"]);
    for folder in ["Sent", "Trash", "Drafts", "Junk"] {
        assert!(mail.join(folder).join("cur").is_dir(), "{folder} was synced");
    }

    // Local changes: m1 read, m2 deleted, a sent message, a new folder with a message.
    let with_flags = |p: &std::path::Path, flags: &str| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let base = name.split(":2,").next().unwrap().to_string();
        let to =
            p.parent().unwrap().parent().unwrap().join("cur").join(format!("{base}:2,{flags}"));
        std::fs::rename(p, to).unwrap();
    };
    with_flags(&inbox[0].1, "S");
    with_flags(&inbox[1].1, "T");
    let drop_in = |folder: &str, name: &str, text: &str| {
        let dir = mail.join(folder);
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("new").join(name), text).unwrap();
    };
    drop_in("Sent", "1700000000.local1.host", "Message-ID: <sent1>\r\nSubject: sent\r\n\r\nhi\r\n");
    drop_in("Projects", "1700000000.local2.host", "Message-ID: <p1>\r\nSubject: plan\r\n\r\nx\r\n");
    // Server changes: m3 flagged (another client), m4 delivered. (Found by Message-ID: the
    // queue delivers in parallel, so the Maildir order need not be the sending order.)
    let flag = format!(
        "import imaplib\nm = imaplib.IMAP4('127.0.0.1', {})\nm.login('bob@example.com', 'pw')\n\
         m.select('INBOX')\nn = m.search(None, 'HEADER', 'Message-ID', 'm3')[1][0]\n\
         assert n, 'm3 not found'\nm.store(n, '+FLAGS', '(\\\\Flagged)')\nm.logout()",
        t.imap.port()
    );
    python(&flag, &[]);
    t.send("bob@example.com", "m4", "body of m4\r\n");
    t.s.wait_queue(20, |q| q.is_empty());
    mbsync();

    let state = python(SERVER_STATE, &["127.0.0.1", &t.imap.port().to_string()]);
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(
        state["INBOX"],
        serde_json::json!([["m1", ["\\Seen"]], ["m3", ["\\Flagged"]], ["m4", []]]),
        "{state}"
    );
    assert_eq!(state["Sent"], serde_json::json!([["sent1", []]]), "{state}");
    assert_eq!(state["Projects"], serde_json::json!([["p1", []]]), "{state}");
    let inbox = local_messages("INBOX");
    assert_eq!(inbox.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["m1", "m3", "m4"]);
    let m3 = inbox[1].1.file_name().unwrap().to_string_lossy().into_owned();
    assert!(m3.ends_with(":2,F"), "the server's flag reached the local copy: {m3}");
}

/// kill -9 while EXPUNGE runs: after the restart no message is lost (every one not marked
/// \Deleted is there), none the client was told is expunged is listed, the UIDVALIDITY is the
/// same, the UIDs are the ones from before, and a new message gets a greater UID.
#[test]
fn kill9_during_expunge_loses_nothing_and_reuses_no_uid() {
    use std::io::Read;
    let mut t = start("");
    let inbox = t.maildir("alice");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(inbox.join(sub)).unwrap();
    }
    let n = 2000;
    for i in 0..n {
        let text = format!("Message-ID: <x{i}>\r\n\r\nbody {i}\r\n");
        let name = format!("1700000000.M{i}P1Q{i}.test,S={}", text.len());
        std::fs::write(inbox.join("new").join(name), text).unwrap();
    }
    // A session's view: UIDs by sequence number, and UID -> Message-ID.
    let select = |imap: std::net::SocketAddr| {
        let (mut r, mut w) = imap_connect(imap);
        w.write_all(b"l LOGIN alice@example.com pw\r\ns SELECT INBOX\r\n").unwrap();
        imap_until(&mut r, "l OK");
        let sel = imap_until(&mut r, "s OK");
        let validity: u32 =
            sel.split("[UIDVALIDITY ").nth(1).unwrap().split(']').next().unwrap().parse().unwrap();
        w.write_all(b"f FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])\r\n").unwrap();
        let fetched = imap_until(&mut r, "f OK");
        let mut uids = Vec::new();
        let mut ids = std::collections::HashMap::new();
        let mut last_uid = 0;
        for line in fetched.lines() {
            if let Some(u) = line.split("(UID ").nth(1) {
                last_uid = u.split(' ').next().unwrap().parse::<u32>().unwrap();
                uids.push(last_uid);
            }
            if let Some(id) = line.strip_prefix("Message-ID: <") {
                ids.insert(last_uid, id.trim_end_matches('>').to_string());
            }
        }
        (r, w, validity, uids, ids)
    };
    let (mut r, mut w, validity, uids, ids) = select(t.imap);
    assert_eq!(uids.len(), n);
    // Every other message \Deleted; EXPUNGE, and the kill without waiting for the answer.
    w.write_all(b"d STORE 1:* +FLAGS.SILENT (\\Deleted)\r\n").unwrap();
    imap_until(&mut r, "d OK");
    let keep: Vec<u32> = uids.iter().copied().step_by(2).collect();
    let set: Vec<String> = keep.iter().map(|u| u.to_string()).collect();
    w.write_all(format!("k UID STORE {} -FLAGS.SILENT (\\Deleted)\r\n", set.join(",")).as_bytes())
        .unwrap();
    imap_until(&mut r, "k OK");
    w.write_all(b"e EXPUNGE\r\n").unwrap();
    // Kill as soon as the first file is gone: mid-way through the unlinks, or just after.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(inbox.join("cur")).unwrap().count() == n {
        assert!(std::time::Instant::now() < deadline, "EXPUNGE never started");
    }
    t.s.kill9();
    // What the client heard before the kill: those messages are gone for good.
    let mut heard = String::new();
    let _ = r.read_to_string(&mut heard);
    let mut view = uids.clone();
    let mut told_gone = Vec::new();
    for line in heard.lines() {
        if let Some(seq) = line.strip_prefix("* ").and_then(|l| l.strip_suffix(" EXPUNGE")) {
            told_gone.push(view.remove(seq.parse::<usize>().unwrap() - 1));
        }
    }
    t.s.spawn();
    let imap = t.s.listener("imap");
    let (_r2, _w2, validity2, uids2, ids2) = select(imap);
    assert_eq!(validity2, validity, "UIDVALIDITY kept");
    for u in &keep {
        assert_eq!(ids2.get(u), ids.get(u), "UID {u} lost or changed");
    }
    for u in &uids2 {
        assert!(uids.contains(u), "UID {u} is new after the restart");
        assert!(!told_gone.contains(u), "UID {u} was reported expunged and is listed");
    }
    eprintln!(
        "{} expunges heard before the kill; {} of {} messages listed after it",
        told_gone.len(),
        uids2.len(),
        n
    );
    t.send("alice@example.com", "after", "x\r\n");
    t.s.wait_queue(20, |q| q.is_empty());
    let (_r3, _w3, _, uids3, _) = select(imap);
    let max_before = *uids.iter().max().unwrap();
    assert!(*uids3.last().unwrap() > max_before, "a UID was reused: {uids3:?}");
}

/// APPEND with a LITERAL+ message of 300 KB streams it to the mailbox, and the command sent
/// right behind it in the same write is still answered; before login, a large APPEND literal
/// is refused without being read.
#[test]
fn large_append_literals_stream_and_need_a_login() {
    let t = start("");
    let (mut r, mut w) = imap_connect(t.imap);
    w.write_all(b"x APPEND INBOX {5000000}\r\n").unwrap();
    let refused = imap_until(&mut r, "x ");
    assert!(refused.starts_with("x NO [TOOBIG]"), "{refused}");
    w.write_all(b"l LOGIN alice@example.com pw\r\n").unwrap();
    imap_until(&mut r, "l OK");
    let body: String = (0..3000).map(|i| format!("{i:0>98}\r\n")).collect();
    let message = format!("Subject: streamed\r\n\r\n{body}");
    let mut cmd = format!("a APPEND INBOX (\\Flagged) {{{}+}}\r\n", message.len()).into_bytes();
    cmd.extend_from_slice(message.as_bytes());
    cmd.extend_from_slice(b"\r\nn NOOP\r\n");
    w.write_all(&cmd).unwrap();
    let appended = imap_until(&mut r, "a ");
    assert!(appended.starts_with("a OK [APPENDUID "), "{appended}");
    imap_until(&mut r, "n OK");
    let stored = t.mailbox("alice");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0], message, "stored octet for octet");
    let tmp = std::fs::read_dir(t.maildir("alice").join("tmp")).unwrap().count();
    assert_eq!(tmp, 0, "nothing left in tmp/");
}

/// Issue #22: a LITERAL+ APPEND of 3 MB whose data comes in the same write as its `{n+}`
/// streams like any other (it got `* BYE [TOOBIG]`); over the quota, a synchronizing APPEND is
/// refused before the `+`, so the message is never sent.
#[test]
fn literal_plus_append_in_one_write_streams_and_quota_refuses_before_the_literal() {
    let t = start("quota = \"4MiB\"\n");
    let (mut r, mut w) = imap_connect(t.imap);
    w.write_all(b"l LOGIN alice@example.com pw\r\n").unwrap();
    imap_until(&mut r, "l OK");
    let body: String = (0..30_000).map(|i| format!("{i:0>98}\r\n")).collect();
    let message = format!("Subject: big\r\n\r\n{body}");
    assert!(message.len() > 3_000_000);
    let mut cmd = format!("a APPEND INBOX {{{}+}}\r\n", message.len()).into_bytes();
    cmd.extend_from_slice(message.as_bytes());
    cmd.extend_from_slice(b"\r\n");
    w.write_all(&cmd).unwrap();
    let appended = imap_until(&mut r, "a ");
    assert!(appended.starts_with("a OK [APPENDUID "), "{appended}");
    assert_eq!(t.mailbox("alice"), std::slice::from_ref(&message), "stored octet for octet");
    // 3 MB of the 4 MiB quota used: another 3 MB is refused before its data is sent.
    w.write_all(format!("q APPEND INBOX {{{}}}\r\n", message.len()).as_bytes()).unwrap();
    let refused = imap_until(&mut r, "q ");
    assert!(refused.starts_with("q NO [OVERQUOTA]"), "{refused}");
    w.write_all(b"n NOOP\r\n").unwrap();
    imap_until(&mut r, "n OK");
}

/// Issue #22: while idling only DONE is expected; a client that streams a line without end
/// is logged out at 1 KiB instead of growing a buffer searched again at every read.
#[test]
fn idle_input_is_bounded() {
    let t = start("");
    let (mut r, mut w) = imap_connect(t.imap);
    w.write_all(b"l LOGIN alice@example.com pw\r\ns SELECT INBOX\r\ni IDLE\r\n").unwrap();
    imap_until(&mut r, "+ ");
    let junk = vec![b'x'; 64 << 10];
    let _ = w.write_all(&junk);
    let bye = imap_until(&mut r, "* BYE");
    assert!(bye.contains("* BYE [TOOBIG]"), "{bye}");
    let mut rest = String::new();
    use std::io::Read;
    let _ = r.read_to_string(&mut rest);
    assert!(!rest.contains("OK"), "closed after the BYE: {rest}");
}

/// Issue #22: before login a command may be 64 KiB (it was 1 MiB), so 300 connections that
/// never log in hold at most about 20 MiB of input, not 300.
#[test]
fn commands_before_login_are_bounded_at_64_kib() {
    let t = start("");
    let (mut r, mut w) = imap_connect(t.imap);
    // An unterminated quoted string, the worst case for a decoder that starts over.
    let mut cmd = b"a LOGIN \"".to_vec();
    cmd.extend(std::iter::repeat_n(b'u', 70 << 10));
    let _ = w.write_all(&cmd);
    let bye = imap_until(&mut r, "* BYE");
    assert!(bye.contains("[TOOBIG]"), "{bye}");
    // After login the limit is the old one: a 200 KiB quoted string is still a command.
    let (mut r, mut w) = imap_connect(t.imap);
    w.write_all(b"l LOGIN alice@example.com pw\r\n").unwrap();
    imap_until(&mut r, "l OK");
    let name = "n".repeat(200 << 10);
    w.write_all(format!("c SELECT \"{name}\"\r\n").as_bytes()).unwrap();
    let answer = imap_until(&mut r, "c ");
    assert!(answer.starts_with("c NO"), "{answer}");
}
