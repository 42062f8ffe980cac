//! Ten IMAP sessions on one mailbox doing STORE, COPY, MOVE, EXPUNGE, APPEND and SUBSCRIBE at
//! random (issue #23), then a fresh session checks that every promise a tagged OK made holds:
//! no keyword change lost, no expunged or moved message back, every appended message there,
//! no UID twice. The same load with a kill -9 in the middle loses nothing a tagged OK
//! promised (what was in flight at the kill may have gone either way).
//!
//! Each session owns what lets its promises be checked while the others interfere: keyword
//! `$w<n>` (only session n sets or clears it, on any message), the messages it appended (only
//! it deletes, copies or moves them) and subscriptions `w<n>/s<k>`.

use std::time::{Duration, Instant};

use crate::common::mailboxes::*;
use crate::common::*;

/// argv: host port seconds seed model-path. Runs the load and writes what the tagged answers
/// promised to model-path as JSON; exits early (writing the model) when the server goes away.
const STRESS: &str = r#"
import imaplib, json, random, re, sys, threading, time
host, port, seconds, seed, model_path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
USER, WORKERS = "alice@example.com", 10

def login():
    m = imaplib.IMAP4(host, port)
    m.sock.settimeout(60)
    m.login(USER, "pw")
    return m

setup = login()
for box in ("Copies", "Moved"):
    setup.create(box)
seeded = []
for i in range(30):
    typ, data = setup.append("INBOX", None, None, f"Message-ID: <seed{i}@t>\r\nSubject: seed\r\n\r\nseed {i}\r\n".encode())
    assert typ == "OK", data
    seeded.append(f"seed{i}@t")
setup.logout()

class Worker:
    def __init__(self, n):
        self.n, self.rng = n, random.Random(seed * 100 + n)
        self.keyword = f"$w{n}"
        self.kw = {}            # message-id -> True/False: last OK'd keyword state
        self.kw_pending = set()   # message-ids whose keyword change was in flight at the end
        self.appended = {}      # message-id -> uid, for messages still expected in INBOX
        self.appended_pending = []  # APPENDs in flight at the end
        self.deleted = set()    # marked \Deleted (may go at any EXPUNGE)
        self.expunged = set()   # gone for sure (UID EXPUNGE OK'd)
        self.moved = set()      # moved to Moved (OK)
        self.copied = []        # copied to Copies (OK)
        self.pending = None     # (op, message-id) in flight when the server went away
        self.subs = {}          # name -> True/False
        self.ops = 0
        self.error = None

    def uid_map(self, m):
        typ, data = m.uid("fetch", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        out = {}
        for d in data:
            if isinstance(d, tuple):
                uid = int(re.search(rb"UID (\d+)", d[0]).group(1))
                mid = re.search(rb"<([^>]+)>", d[1])
                if mid:
                    out[mid.group(1).decode()] = uid
        return out

    def run(self, deadline):
        try:
            m = login()
            m.select("INBOX")
            seq = 0
            while time.time() < deadline:
                self.ops += 1
                ids = self.uid_map(m)
                op = self.rng.choice(["kw", "kw", "kw", "append", "append", "append", "delete", "copy", "move", "sub", "noop"])
                if op == "kw" and ids:
                    mid = self.rng.choice(sorted(ids))
                    on = self.rng.random() < 0.5
                    self.pending = ("kw", mid, on)
                    typ, _ = m.uid("store", str(ids[mid]), "+FLAGS" if on else "-FLAGS", f"({self.keyword})")
                    assert typ == "OK", (op, typ)
                    self.kw[mid] = on
                elif op == "append":
                    seq += 1
                    mid = f"w{self.n}-{seq}@t"
                    self.pending = ("append", mid)
                    typ, data = m.append("INBOX", None, None, f"Message-ID: <{mid}>\r\nSubject: w\r\n\r\nbody\r\n".encode())
                    assert typ == "OK", data
                    self.appended[mid] = True
                elif op in ("delete", "copy", "move"):
                    mine = [mid for mid in self.appended if mid in ids and mid not in self.deleted]
                    if not mine:
                        continue
                    mid = self.rng.choice(sorted(mine))
                    uid = str(ids[mid])
                    self.pending = (op, mid)
                    if op == "delete":
                        typ, _ = m.uid("store", uid, "+FLAGS.SILENT", r"(\Deleted)")
                        assert typ == "OK"
                        self.deleted.add(mid)
                        typ, data = m.uid("expunge", uid)
                        assert typ == "OK", data
                        self.expunged.add(mid)
                        del self.appended[mid]
                    elif op == "copy":
                        typ, data = m.uid("copy", uid, "Copies")
                        assert typ == "OK", data
                        self.copied.append(mid)
                    else:
                        typ, data = m.uid("move", uid, "Moved")
                        assert typ == "OK", data
                        self.moved.add(mid)
                        del self.appended[mid]
                elif op == "sub":
                    name = f"w{self.n}/s{self.rng.randrange(5)}"
                    on = self.rng.random() < 0.6
                    self.pending = ("sub", name, on)
                    typ, data = (m.subscribe if on else m.unsubscribe)(name)
                    assert typ == "OK", data
                    self.subs[name] = on
                else:
                    self.pending = None
                    assert m.noop()[0] == "OK"
                self.pending = None
            m.logout()
        except (OSError, imaplib.IMAP4.abort, imaplib.IMAP4.error, EOFError) as e:
            # The server went away (the kill -9 run): what was in flight may have happened.
            self.error = repr(e)

workers = [Worker(n) for n in range(WORKERS)]
deadline = time.time() + seconds
threads = [threading.Thread(target=w.run, args=(deadline,)) for w in workers]
for t in threads: t.start()
for t in threads: t.join()
model = {"seeded": seeded, "workers": [
    {"n": w.n, "keyword": w.keyword, "kw": w.kw, "pending": w.pending, "appended": sorted(w.appended),
     "deleted": sorted(w.deleted), "expunged": sorted(w.expunged), "moved": sorted(w.moved),
     "copied": w.copied, "subs": w.subs, "ops": w.ops, "error": w.error} for w in workers]}
json.dump(model, open(model_path, "w"))
print(sum(w.ops for w in workers), sum(1 for w in workers if w.error))
"#;

/// argv: host port model-path. Checks the mailbox against the model; prints "ok" and counts.
const CHECK: &str = r#"
import imaplib, json, re, sys
host, port, model = sys.argv[1], int(sys.argv[2]), json.load(open(sys.argv[3]))
m = imaplib.IMAP4(host, port)
m.login("alice@example.com", "pw")

def contents(box, once=True):
    typ, data = m.select(box, readonly=True)
    assert typ == "OK", (box, data)
    typ, data = m.uid("fetch", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    out, uids, counts = {}, [], {}
    for d in data:
        if isinstance(d, tuple):
            uid = int(re.search(rb"UID (\d+)", d[0]).group(1))
            flags = set(re.search(rb"FLAGS \(([^)]*)\)", d[0]).group(1).decode().split())
            mid = re.search(rb"<([^>]+)>", d[1]).group(1).decode()
            assert not (once and mid in out), ("twice in " + box, mid)
            out[mid] = flags
            counts[mid] = counts.get(mid, 0) + 1
            uids.append(uid)
    assert len(uids) == len(set(uids)), ("a UID twice in " + box, uids)
    return out if once else counts

# A message copied twice is there twice; in INBOX and Moved each one is there once.
inbox, copies, moved = contents("INBOX"), contents("Copies", once=False), contents("Moved")
problems = []
def pending(w, op, mid):
    p = w["pending"]
    return p is not None and p[0] == op and p[1] == mid
def pending_on(w, mid):
    p = w["pending"]
    return p is not None and p[1] == mid

for mid in model["seeded"]:
    if mid not in inbox:
        problems.append(f"seeded {mid} lost")
for w in model["workers"]:
    for mid in w["appended"]:
        # Appended and neither moved nor expunged by a tagged OK: still in INBOX, unless it
        # was marked \Deleted (another session's EXPUNGE may take it) or an operation on it
        # was in flight at a kill.
        if mid not in inbox and mid not in w["deleted"] and not pending_on(w, mid):
            problems.append(f"{mid} appended (OK) and gone")
    for mid in w["expunged"] + w["moved"]:
        if mid in inbox:
            problems.append(f"{mid} expunged or moved (OK) and back in INBOX")
    for mid in w["moved"]:
        if mid not in moved:
            problems.append(f"{mid} moved (OK) and not in Moved")
    for mid in set(w["copied"]):
        if copies.get(mid, 0) < w["copied"].count(mid):
            problems.append(f"{mid} copied {w['copied'].count(mid)} times (OK), {copies.get(mid, 0)} in Copies")
    for mid, on in w["kw"].items():
        if mid in inbox and not pending(w, "kw", mid):
            has = any(f.lower() == w["keyword"].lower() for f in inbox[mid])
            if has != on:
                problems.append(f"{mid}: {w['keyword']} should be {'set' if on else 'clear'}")
    typ, data = m.lsub('""', f"w{w['n']}/*")
    subscribed = {d.decode().rsplit(" ", 1)[1].strip('"') for d in data if d}
    for name, on in w["subs"].items():
        p = w["pending"]
        if p and p[0] == "sub" and p[1] == name:
            continue
        if (name in subscribed) != on:
            problems.append(f"subscription {name} should be {'on' if on else 'off'}")
assert not problems, problems[:20]
print("ok", len(inbox), len(copies), len(moved))
"#;

fn stress_seconds() -> f64 {
    std::env::var("SLUICE_IMAP_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20.0)
}

/// Ten sessions at random for a while (20 s; `SLUICE_IMAP_STRESS_SECS` for longer runs), then
/// every promise checked by a fresh session.
#[test]
fn ten_sessions_at_random_keep_every_promise() {
    let t = start("[limits]\nmax_sessions_per_ip = 50\n");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.json");
    let port = t.imap.port().to_string();
    let secs = stress_seconds().to_string();
    let out = python(STRESS, &["127.0.0.1", &port, &secs, "1", model.to_str().unwrap()]);
    let (ops, errors) = out.trim().split_once(' ').unwrap();
    assert_eq!(errors, "0", "no session failed");
    assert!(ops.parse::<u32>().unwrap() > 100, "{ops} operations");
    let checked = python(CHECK, &["127.0.0.1", &port, model.to_str().unwrap()]);
    assert!(checked.starts_with("ok "), "{checked}");
    eprintln!("{ops} operations; INBOX, Copies, Moved: {checked}");
}

/// The same load, killed with -9 once the sessions have appended 150 messages: after the
/// restart every promise made before the kill holds.
#[test]
fn kill9_during_ten_sessions_breaks_no_promise() {
    let mut t = start("[limits]\nmax_sessions_per_ip = 50\n");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.json");
    let port = t.imap.port().to_string();
    let script = dir.path().join("stress.py");
    std::fs::write(&script, STRESS).unwrap();
    let mut load = std::process::Command::new("python3")
        .arg(&script)
        .args(["127.0.0.1", &port, "300", "2", model.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Synchronised on the mailbox itself: 150 messages beyond the 30 seeded.
    let inbox = t.maildir("alice");
    let count = || -> usize {
        ["new", "cur"]
            .iter()
            .filter_map(|s| std::fs::read_dir(inbox.join(s)).ok())
            .map(|d| d.count())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while count() < 180 {
        assert!(Instant::now() < deadline, "the load never got going ({} messages)", count());
        assert!(load.try_wait().unwrap().is_none(), "the load ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.s.kill9();
    let status = load.wait().unwrap();
    assert!(status.success(), "the load script failed");
    t.s.spawn();
    let imap = t.s.listener("imap");
    let checked = python(CHECK, &["127.0.0.1", &imap.port().to_string(), model.to_str().unwrap()]);
    assert!(checked.starts_with("ok "), "{checked}");
    eprintln!("after kill -9: INBOX, Copies, Moved: {checked}");
}
