//! Several IMAP clients on one mailbox (issue #23), with Python's imaplib: each scenario is
//! one script that asserts what RFC 3501 (and RFC 2180, 4315, 6851) says a session must see,
//! run against sluice and against Dovecot's imapd on a copy of the same Maildir, so the
//! script itself is checked against a server known to pass.

use std::process::Command;

use crate::common::mailboxes::*;
use crate::common::*;

/// The scenarios, each in its own folder (made by the script) so they do not see each other.
/// argv: host port user.
const SCENARIOS: &str = r#"
import imaplib, re, sys, threading
host, port, user = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def login():
    m = imaplib.IMAP4(host, port)
    typ, _ = m.login(user, "pw"); assert typ == "OK"
    return m

def untagged(m, name):
    return m.untagged_responses.pop(name, [])

def cmd(m, line):
    """Sends a raw command; returns (tagged status line, untagged lines)."""
    tag = m._new_tag()
    m.send(tag + b" " + line.encode() + b"\r\n")
    lines = []
    while True:
        l = m._get_line()
        if l.startswith(tag + b" "):
            return l, lines
        lines.append(l)
        # A literal: imaplib keeps it as the next read.
        mo = re.search(rb"\{(\d+)\}$", l)
        if mo:
            lines.append(m.read(int(mo.group(1))))

boot = login()
delim = re.search(rb'\(.*\) "(.)" ', boot.list('""', '""')[1][0]).group(1).decode()

def folder(name):
    typ, data = boot.create(name); assert typ == "OK", data
    return name

def append(box, text, flags=None):
    typ, data = boot.append(box, flags, None, text.encode())
    assert typ == "OK", data

# 1. A flag change by one session renames the file; another session's STORE and EXPUNGE
#    (RFC 3501 7.4.1, RFC 2180 4) must still act on the message, and a FETCH still read it.
box = folder("stale")
append(box, "Subject: one\r\n\r\nfirst\r\n")
append(box, "Subject: two\r\n\r\nsecond\r\n")
s1, s2 = login(), login()
s1.select(box); s2.select(box)
uid1 = int(re.search(rb"UID (\d+)", s1.fetch("1", "(UID)")[1][0]).group(1))
typ, data = s2.uid("store", str(uid1), "FLAGS", r"(\Seen \Answered)"); assert typ == "OK", data
typ, data = s2.store("2", "+FLAGS", r"(\Flagged)"); assert typ == "OK", data
# A body read of message 2 from s1, whose file s2 renamed.
status, lines = cmd(s1, "FETCH 2 (BODY.PEEK[TEXT])")
assert status.split()[1] == b"OK" and b"second\r\n" in lines, (status, lines)
status, lines = cmd(s1, r"STORE 1 +FLAGS (\Deleted)")
assert status.split()[1] == b"OK", status
fetched = [l for l in lines if re.match(rb"\* 1 FETCH", l)]
assert fetched, ("STORE answered without FETCH", lines)
flags = re.search(rb"FLAGS \(([^)]*)\)", fetched[-1]).group(1).split()
assert b"\\Deleted" in flags and b"\\Seen" in flags and b"\\Answered" in flags, fetched
status, lines = cmd(s1, "EXPUNGE")
assert status.split()[1] == b"OK" and b"* 1 EXPUNGE" in lines, (status, lines)
s3 = login()
typ, data = s3.select(box); assert data == [b"1"], data
typ, data = s3.fetch("1", "(FLAGS BODY.PEEK[TEXT])")
assert b"second" in data[0][1] and b"\\Flagged" in data[0][0], data
# A message undeleted by another session before EXPUNGE stays (only \Deleted ones go).
typ, data = s3.store("1", "+FLAGS", r"(\Deleted)"); assert typ == "OK"
s1.noop(); s2.noop()
typ, data = s2.store("1", "-FLAGS", r"(\Deleted)"); assert typ == "OK"
status, lines = cmd(s1, "EXPUNGE")
assert status.split()[1] == b"OK" and not any(l.endswith(b" EXPUNGE") for l in lines), lines
typ, data = s3.select(box); assert data == [b"1"], data
for m in (s1, s2, s3):
    m.logout()

# 2. SUBSCRIBE from several sessions at once: every subscription answered OK is kept.
errors = []
for k in range(8):
    for i in range(10):
        folder(f"sub{k}{delim}n{i}")
def subscriber(k):
    try:
        m = login()
        for i in range(10):
            typ, data = m.subscribe(f"sub{k}{delim}n{i}")
            if typ != "OK":
                errors.append(data)
        m.logout()
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=subscriber, args=(k,)) for k in range(8)]
for t in threads: t.start()
for t in threads: t.join()
assert not errors, errors
typ, data = boot.lsub('""', "sub*")
names = {d.rsplit(b' ', 1)[1].strip(b'"').decode() for d in data if d}
want = {f"sub{k}{delim}n{i}" for k in range(8) for i in range(10)}
assert want <= names, sorted(want - names)

# 3. LSUB: an unsubscribed parent of a subscribed child, reached by %, is \Noselect
#    (RFC 3501 6.3.9); * lists the child alone.
folder(f"lp{delim}child")
typ, _ = boot.subscribe(f"lp{delim}child"); assert typ == "OK"
typ, data = boot.lsub('""', "l%")
assert len(data) == 1 and data[0] and b"\\Noselect" in data[0], data
assert data[0].rsplit(b" ", 1)[1].strip(b'"') == b"lp", data
typ, data = boot.lsub('""', "lp*")
assert [d.rsplit(b" ", 1)[1].strip(b'"') for d in data] == [f"lp{delim}child".encode()], data

# 4. MOVE into the selected mailbox: EXPUNGE, then EXISTS within the command (RFC 6851 3.3).
box = folder("moveself")
append(box, "Subject: m\r\n\r\nmoved\r\n")
s1 = login(); s1.select(box)
status, lines = cmd(s1, f"MOVE 1 {box}")
assert status.split()[1] == b"OK", status
# The client's count after what it heard, in any order the server chose: one message.
count, exists = 1, False
for l in lines:
    mo = re.match(rb"\* (\d+) (EXISTS|EXPUNGE)$", l)
    if mo and mo.group(2) == b"EXISTS":
        count, exists = int(mo.group(1)), True
    elif mo:
        count -= 1
assert exists and count == 1, lines
s1.logout()

# 5. SEARCH FROM/TO finds an address written with comments and spaces, as ENVELOPE reads it.
box = folder("addr")
append(box, "From: <user (comment)@ (comment) domain.org>\r\nTo: Ann (x) <ann @ example.net>\r\nSubject: s\r\n\r\nx\r\n")
append(box, "From: other@example.org\r\nSubject: t\r\n\r\ny\r\n")
s1 = login(); s1.select(box)
typ, data = s1.search(None, "FROM", "user@domain.org"); assert data == [b"1"], data
typ, data = s1.search(None, "TO", "ann@example.net"); assert data == [b"1"], data
typ, data = s1.search(None, "FROM", "example.org"); assert data == [b"2"], data
s1.logout()

# 6. \Recent belongs to the first session told of a message (RFC 3501 2.3.2): APPEND and
#    COPY into a mailbox another session has selected give it \Recent, and a third session
#    touching the message does not take it away.
box = folder("recent")
s1, s2 = login(), login()
s1.select(box)
append(box, "Subject: r1\r\n\r\nx\r\n")
append(box, "Subject: r2\r\n\r\ny\r\n", r"(\Seen)")
s1.noop()
assert untagged(s1, "RECENT")[-1:] == [b"2"], s1.untagged_responses
typ, data = s1.fetch("1:2", "(FLAGS)")
assert all(b"\\Recent" in d for d in data), data
s2.select(box)
assert untagged(s2, "RECENT")[-1:] == [b"0"], s2.untagged_responses
typ, data = s2.store("1", "+FLAGS", r"(\Flagged)"); assert b"\\Recent" not in data[0], data
typ, data = s1.fetch("1", "(FLAGS)")
assert b"\\Recent" in data[0] and b"\\Flagged" in data[0], data
s2.select("stale")
typ, data = s2.copy("1", box); assert typ == "OK", data
s1.noop()
typ, data = s1.fetch("3", "(FLAGS)"); assert b"\\Recent" in data[0], data
for m in (s1, s2):
    m.logout()

# 7. Keywords: kept across sessions, listed in FLAGS and PERMANENTFLAGS, searchable.
box = folder("kw")
append(box, "Subject: k\r\n\r\nx\r\n")
s1 = login(); s1.select(box)
perm = s1.untagged_responses.get("OK", [])
assert any(b"PERMANENTFLAGS" in p and b"\\*" in p for p in perm), perm
typ, data = s1.store("1", "+FLAGS", "($Junk $Forwarded)"); assert typ == "OK", data
assert b"$Junk" in data[0] and b"$Forwarded" in data[0], data
s2 = login(); s2.select(box)
assert any(b"$Junk" in f for f in untagged(s2, "FLAGS")), "FLAGS lists the keyword"
typ, data = s2.fetch("1", "(FLAGS)"); assert b"$Junk" in data[0] and b"$Forwarded" in data[0], data
typ, data = s2.search(None, "KEYWORD", "$Junk"); assert data == [b"1"], data
typ, data = s2.search(None, "UNKEYWORD", "$NotJunk"); assert data == [b"1"], data
typ, data = s2.store("1", "-FLAGS", "($Junk)"); assert typ == "OK"
s1.noop()
typ, data = s1.fetch("1", "(FLAGS)"); assert b"$Junk" not in data[0] and b"$Forwarded" in data[0], data
for m in (s1, s2, boot):
    m.logout()
print("ok")
"#;

fn run_scenarios(port: u16, user: &str) -> String {
    python(SCENARIOS, &["127.0.0.1", &port.to_string(), user])
}

/// Every scenario against sluice, then against Dovecot on a copy of the same (empty) Maildir.
#[test]
fn several_sessions_on_one_mailbox_see_what_rfc_3501_says() {
    let t = start("");
    assert_eq!(run_scenarios(t.imap.port(), "alice@example.com").trim(), "ok");
    if !require_tool("dovecot", "apt-get install dovecot-imapd") {
        return;
    }
    let copy = tempfile::tempdir().unwrap();
    let maildir = copy.path().join("Maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let ok = Command::new("chown").args(["-R", "65534:65534"]).arg(copy.path()).status().unwrap();
    assert!(ok.success());
    let dovecot = Dovecot::start(&maildir, "imap");
    assert_eq!(run_scenarios(dovecot.port, "anyone").trim(), "ok");
}

/// Ten first logins of a user at once each get in, and the default folders exist once.
#[test]
fn simultaneous_first_logins_all_succeed() {
    let t = start("");
    let script = r#"
import imaplib, sys, threading
port = int(sys.argv[1])
results = []
def first():
    try:
        m = imaplib.IMAP4("127.0.0.1", port)
        results.append(m.login("bob@example.com", "pw")[0])
        typ, data = m.select("INBOX"); results.append(typ)
        m.logout()
    except Exception as e:
        results.append(repr(e))
threads = [threading.Thread(target=first) for _ in range(10)]
for t in threads: t.start()
for t in threads: t.join()
assert results == ["OK"] * 20, results
m = imaplib.IMAP4("127.0.0.1", port); m.login("bob@example.com", "pw")
names = sorted(l.decode().rsplit(' "/" ', 1)[1] for l in m.list()[1])
assert names == ["Drafts", "INBOX", "Junk", "Sent", "Trash"], names
names = sorted(l.decode().rsplit(' "/" ', 1)[1] for l in m.lsub()[1])
assert names == ["Drafts", "Junk", "Sent", "Trash"], names
print("ok")
"#;
    assert!(!t.maildir("bob").exists(), "bob has not logged in before");
    assert_eq!(python(script, &[&t.imap.port().to_string()]).trim(), "ok");
}
