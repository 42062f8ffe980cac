#!/usr/bin/env bash
# Local delivery throughput, sluice against Debian's Postfix (its virtual(8) agent writing
# Maildir), in one run on this machine: Postfix's smtp-source injects N messages of 10 KB from
# 100 sessions into each MTA for one local user; the clock stops when N files are in that user's
# Maildir/new. Prints msg/s end to end, the MTA's CPU ms per message, and the ratio.
# Both fsync before 250, and both write Maildir files with fsync. Everything listens on
# 127.0.0.1; runs are bounded in messages and seconds. Installs postfix if it is missing.
#   usage: bash loadtest/mailbox.sh [messages]   (default 4000)
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
n="${1:-4000}"

if ! command -v postfix >/dev/null; then
  echo "installing postfix (no system configuration; it is only run from this script)" >&2
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
cargo build --release --locked --quiet --ignore-rust-version
bin=${SLUICE_BIN:-$PWD/target/release/sluice}
work=$(mktemp -d "$PWD/target/mailbox.XXXXXX")  # not /tmp: a real disk for both
chmod 755 "$work"
pfx_pid=""
sluice_pid=""
cleanup() {
  [ -n "$sluice_pid" ] && kill "$sluice_pid" 2>/dev/null || true
  [ -n "$pfx_pid" ] && postfix -c "$work/postfix" stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
pfx_port=$(free_port)

# --- Postfix: a private instance delivering example.com to Maildirs under $work/pfx-mail.
mkdir -p "$work/pfx-mail"
chown nobody "$work/pfx-mail"
start_postfix "$work" "$pfx_port" "$(cat <<CF
virtual_mailbox_domains = example.com
virtual_mailbox_base = $work/pfx-mail
virtual_mailbox_maps = static:example.com/alice/Maildir/
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_minimum_uid = 100
CF
)"

# --- sluice: example.com in local mailboxes, one user.
printf 'pw\n' | "$bin" user add alice@example.com --config <(printf '[auth]\nusers_file = "%s"\n' "$work/users.toml") >/dev/null
sluice_config "$work/sluice.toml" "$work/sluice-data" "" "$(cat <<TOML
[auth]
users_file = "$work/users.toml"
[local]
domains = ["example.com"]
mailbox_dir = "$work/sluice-mail"
quota = 0
# Postfix checks no SPF/DMARC here, and a benchmark makes no DNS queries.
[verify]
scope = "off"
TOML
)"
start_sluice "$bin" "$work/sluice.toml" "$work/sluice-data" "$work/sluice.log"

measure() { # $1 label, $2 address, $3 pid, $4 Maildir/new
  python3 - "$@" "$n" <<'PY'
import json, os, subprocess, sys, time
label, addr, pid, new, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
sys.path.insert(0, "loadtest")
from smtp_source import cpu_seconds
count = lambda: len(os.listdir(new)) if os.path.isdir(new) else 0
cpu0, t0 = cpu_seconds(pid), time.monotonic()
src = subprocess.run(["smtp-source", "-s", "100", "-m", str(n), "-l", "10240",
                      "-f", "loadtest@example.org", "-t", "alice@example.com", addr],
                     capture_output=True, text=True, timeout=300)
injected = time.monotonic() - t0
while count() < n and time.monotonic() - t0 < 300:
    time.sleep(0.02)
total, got = time.monotonic() - t0, count()
print(json.dumps({"label": label, "messages": n, "in_maildir": got,
    "smtp_source_exit": src.returncode, "injected_per_second": round(n / injected, 1),
    "end_to_end_messages_per_second": round(got / total, 1),
    "mta_cpu_ms_per_message": round((cpu_seconds(pid) - cpu0) * 1000 / n, 3)}))
PY
}

echo "workload: smtp-source -s 100 -l 10240 -m $n into each MTA for one local Maildir user" >&2
p=$(measure postfix "127.0.0.1:$pfx_port" "$pfx_pid" "$work/pfx-mail/example.com/alice/Maildir/new")
echo "$p"
s=$(measure sluice "$sluice_smtp" "$sluice_pid" "$work/sluice-mail/example.com/alice/Maildir/new")
echo "$s"
python3 - "$p" "$s" <<'PY' >&2
import json, sys
p, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
pr, sr = p["end_to_end_messages_per_second"], s["end_to_end_messages_per_second"]
print(f"local delivery, 10 KB: sluice {sr:.0f} msg/s ({s['mta_cpu_ms_per_message']:.2f} ms CPU/msg), "
      f"postfix {pr:.0f} msg/s ({p['mta_cpu_ms_per_message']:.2f} ms CPU/msg); ratio {sr / pr:.2f}x")
PY
