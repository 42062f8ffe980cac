#!/usr/bin/env bash
# IMAP FETCH throughput, sluice against Debian's Dovecot serving a copy of the same Maildir
# (10,000 messages of 10 KB by default), in one run: FETCH 1:* (UID FLAGS RFC822.SIZE
# INTERNALDATE), FETCH 1:* (FLAGS ENVELOPE) and FETCH 1:* BODY.PEEK[], then part sections of
# a 20 MB message in folder Big (the text part; a range of the attachment), timed with Python's
# imaplib; then the resident
# memory 1,000 IMAP connections in IDLE add to sluice. Everything on 127.0.0.1, bounded in
# messages and connections. Installs dovecot-imapd (its service not started) if missing.
#   usage: bash loadtest/imap.sh [messages] [idle connections]
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
n="${1:-10000}"
idle="${2:-1000}"
ulimit -n $(( idle * 2 + 1000 )) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if ! command -v dovecot >/dev/null || [ ! -x /usr/lib/dovecot/imap ]; then
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd >/dev/null
  if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
cargo build --release --locked --quiet --ignore-rust-version
bin=${SLUICE_BIN:-$PWD/target/release/sluice}
work=$(mktemp -d "$PWD/target/imap.XXXXXX")
chmod 755 "$work"
sluice_pid=""
dovecot_pid=""
cleanup() {
  [ -n "$sluice_pid" ] && kill "$sluice_pid" 2>/dev/null || true
  [ -n "$dovecot_pid" ] && kill "$dovecot_pid" 2>/dev/null || true
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT

# --- the mailbox: n messages written as sluice's delivery agent names them.
md="$work/sluice-mail/example.com/alice/Maildir"
python3 - "$md" "$n" <<'PY'
import os, sys, time
md, n = sys.argv[1], int(sys.argv[2])
for d in ("cur", "new", "tmp"):
    os.makedirs(os.path.join(md, d), exist_ok=True)
line = b"0123456789" * 7 + b"\r\n"
t = int(time.time()) - n
for i in range(n):
    body = (b"Subject: message %d\r\nFrom: Ann Example <a@example.org>\r\n"
            b"To: Alice <alice@example.com>, bob@example.com\r\n"
            b"Date: Tue, 3 Jan 2023 12:00:00 +0000\r\n"
            b"Message-ID: <%d@bench>\r\n\r\n" % (i, i)) + line * 140
    name = "%d.M%dP1Q%d.bench,S=%d" % (t + i, i, i, len(body))
    with open(os.path.join(md, "cur", name + ":2,"), "wb") as f:
        f.write(body)
PY
# A 20 MB message in folder Big: a text part, a 20 MB base64 attachment, an HTML part.
python3 - "$md/.Big" <<'PY'
import base64, os, sys, time
d = sys.argv[1]
for sub in ("cur", "new", "tmp"):
    os.makedirs(os.path.join(d, sub), exist_ok=True)
b64 = base64.encodebytes(os.urandom(15 << 20)).replace(b"\n", b"\r\n")
body = (b"Subject: big\r\nFrom: a@example.org\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=xx\r\n\r\n"
        b"--xx\r\nContent-Type: text/plain\r\n\r\n" + b"See the attachment.\r\n" * 50 +
        b"--xx\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
        b64 + b"--xx\r\nContent-Type: text/html\r\n\r\n<p>end</p>\r\n--xx--\r\n")
name = "%d.Mbig.bench,S=%d" % (int(time.time()) - 10, len(body))
with open(os.path.join(d, "cur", name + ":2,S"), "wb") as f:
    f.write(body)
PY
cp -a "$md" "$work/dovecot-Maildir"
chown -R 65534:65534 "$work/dovecot-Maildir"

# --- sluice, IMAP on loopback without TLS (plaintext on loopback), one user.
printf 'pw\n' | "$bin" user add alice@example.com --config <(printf '[auth]\nusers_file = "%s"\n' "$work/users.toml") >/dev/null
sluice_config "$work/sluice.toml" "$work/sluice-data" "max_sessions = $(( idle + 100 ))
max_sessions_per_ip = $(( idle + 100 ))
max_connection_rate_per_ip = \"100000/m\"" "$(cat <<TOML
[auth]
users_file = "$work/users.toml"
plaintext_on_loopback = true
[local]
domains = ["example.com"]
mailbox_dir = "$work/sluice-mail"
[verify]
scope = "off"
[[listener]]
mode = "imap"
address = "127.0.0.1:0"
TOML
)"
start_sluice "$bin" "$work/sluice.toml" "$work/sluice-data" "$work/sluice.log"
sluice_imap=$(bound_address "$work/sluice-data" imap)

# --- Dovecot on the copy.
dport=$(free_port)
mkdir -p "$work/dovecot"
cat > "$work/dovecot/dovecot.conf" <<CONF
base_dir = $work/dovecot/run
state_dir = $work/dovecot/state
log_path = $work/dovecot/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_login_user = dovenull
default_internal_user = dovecot
passdb {
  driver = static
  args = password=pw
}
userdb {
  driver = static
  args = uid=65534 gid=65534 home=$work/dovecot/home mail=maildir:$work/dovecot-Maildir
}
first_valid_uid = 100
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $dport
  }
  inet_listener imaps {
    port = 0
  }
  chroot =
}
service anvil {
  chroot =
}
CONF
dovecot -F -c "$work/dovecot/dovecot.conf" &
dovecot_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$dport) 2>/dev/null && break; sleep 0.1; done

fetch() { # $1 label, $2 host:port
  python3 - "$1" "$2" "$n" <<'PY'
import imaplib, json, sys, time
label, addr, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
host, port = addr.rsplit(":", 1)
m = imaplib.IMAP4(host, int(port))
m.login("alice@example.com", "pw")
typ, data = m.select("INBOX", readonly=True)
assert int(data[0]) == n, data
# One untimed pass, so both start with the index or UID list built, Dovecot's cache holding
# the envelopes, and the files in the page cache.
m.fetch("1:*", "(UID FLAGS ENVELOPE)")
out = {"label": label, "messages": n}
for name, items in (("flags", "(UID FLAGS RFC822.SIZE INTERNALDATE)"), ("envelope", "(FLAGS ENVELOPE)"),
                    ("bodies", "(BODY.PEEK[])")):
    best = None
    for _ in range(3):
        t0 = time.monotonic()
        typ, data = m.fetch("1:*", items)
        dt = time.monotonic() - t0
        assert typ == "OK"
        best = dt if best is None else min(best, dt)
    out[name + "_per_second"] = round(n / best)
# Part sections of the 20 MB message, as a client reads them after BODYSTRUCTURE: the text
# part, and 1,000 octets from the middle of the attachment: one untimed fetch, then the best
# of 3 rounds of 200.
m.select("Big", readonly=True)
m.fetch("1", "(BODYSTRUCTURE)")
for name, items in (("text_part", "(BODY.PEEK[1])"), ("attachment_range", "(BODY.PEEK[2]<10000000.1000>)")):
    typ, data = m.fetch("1", items)
    assert typ == "OK" and len(data[0][1]) > 100, data[0][0]
    best = None
    for _ in range(3):
        t0 = time.monotonic()
        for _ in range(200):
            m.fetch("1", items)
        dt = time.monotonic() - t0
        best = dt if best is None else min(best, dt)
    out[name + "_per_second"] = round(200 / best)
m.logout()
print(json.dumps(out))
PY
}

echo "workload: a $n-message Maildir of 10 KB messages; imaplib FETCH 1:*, best of 3" >&2
d=$(fetch dovecot "127.0.0.1:$dport")
echo "$d"
s=$(fetch sluice "$sluice_imap")
echo "$s"
python3 - "$d" "$s" <<'PY' >&2
import json, sys
d, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for k, what, unit in (("flags_per_second", "FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)", "msg/s"),
                      ("envelope_per_second", "FETCH 1:* (FLAGS ENVELOPE)", "msg/s"),
                      ("bodies_per_second", "FETCH 1:* BODY.PEEK[]", "msg/s"),
                      ("text_part_per_second", "FETCH 1 BODY.PEEK[1] of a 20 MB message", "fetches/s"),
                      ("attachment_range_per_second", "FETCH 1 BODY.PEEK[2]<10000000.1000> of it", "fetches/s")):
    print(f"{what}: sluice {s[k]} {unit}, dovecot {d[k]} {unit}; ratio {s[k] / d[k]:.2f}x")
PY

# --- memory: $idle connections logged in, INBOX selected, in IDLE, on a fresh sluice (memory
# the FETCH runs freed stays with the allocator and would hide what the connections add).
kill "$sluice_pid"; wait "$sluice_pid" 2>/dev/null || true
rm -f "$work/sluice-data/sluice.addresses.json"
start_sluice "$bin" "$work/sluice.toml" "$work/sluice-data" "$work/sluice.log"
sluice_imap=$(bound_address "$work/sluice-data" imap)
python3 - "$sluice_imap" "$sluice_pid" "$idle" <<'PY' >&2
import socket, sys, time
addr, pid, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
host, port = addr.rsplit(":", 1)
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def expect(f, prefix):
    while True:
        line = f.readline()
        if not line:
            raise SystemExit("connection closed")
        if line.startswith(prefix):
            return
before = rss()
# The first logins leave the password hash's working memory (argon2, 19 MiB a verification)
# with the allocator of each blocking thread: RSS after them is the base for the rest.
warm = max(1, n // 10)
warmed = None
conns = []
t0 = time.monotonic()
for i in range(n):
    if i == warm:
        time.sleep(1)
        warmed = rss()
    s = socket.create_connection((host, int(port)))
    f = s.makefile("rb")
    expect(f, b"* OK")
    s.sendall(b"a LOGIN alice@example.com pw\r\nb SELECT INBOX\r\nc IDLE\r\n")
    expect(f, b"+ ")
    conns.append((s, f))
    if time.monotonic() - t0 > 600:
        raise SystemExit("too slow")
time.sleep(2)
after = rss()
print(f"{n} IMAP connections in IDLE: sluice RSS {before} KiB -> {after} KiB, "
      f"{(after - before) / n:.1f} KiB per connection with the logins' allocator growth; "
      f"{(after - warmed) / (n - warm):.1f} KiB per connection after the first {warm} "
      f"({warmed} KiB -> {after} KiB)")
for s, f in conns:
    s.close()
PY
