#!/usr/bin/env bash
# Relay throughput, sluice against Debian's Postfix, on this machine, in one run, to the same
# loopback sink (`loadtest relay`). Both fsync before answering 250. For each workload (message
# size x injecting sessions) it prints end-to-end msg/s, the MTA's CPU ms per message, its memory,
# and the ratio sluice / Postfix. Everything listens on 127.0.0.1; every run is bounded in
# messages and seconds. Installs postfix (no system configuration) if it is missing.
#   usage: bash loadtest/compare.sh [scale]   (an integer multiplying the message counts; default 1;
#          COMPARE_MESSAGES=N sets every workload's count, for a quick try)
#   SLUICE_BIN=PATH: run that sluice binary instead of this tree's release build.
#   COMPARE_INJECTOR=smtp-source: drive both MTAs with Postfix's own smtp-source (one connection
#          per message, no pipelining, 100 sessions, 10 KB) into Postfix's smtp-sink instead, with
#          sluice allowed 100 connections to the sink and then with its default 10
#          (loadtest/smtp_source.py does one run).
#   COMPARE_DKIM=1: sluice alone, 10 KB messages from 100 sessions, relayed with DKIM signing off,
#          with one Ed25519 signature and with dual (Ed25519 + RSA-2048) signatures, back to back;
#          prints msg/s and the ratio to unsigned for each.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
scale="${1:-1}"

if ! command -v postfix >/dev/null; then
  echo "installing postfix (no system configuration; it is only run from this script)" >&2
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
cargo build --release --workspace --locked --quiet --ignore-rust-version
# SLUICE_BIN=PATH compares another build (an older commit, say) in the same harness.
bin=${SLUICE_BIN:-$PWD/target/release/sluice}
lt=$PWD/target/release/loadtest
# Not /tmp: both MTAs must fsync to the same real disk.
work=$(mktemp -d "$PWD/target/compare.XXXXXX")
chmod 755 "$work" # Postfix daemons (user postfix) enter their queue below it
pfx_pid=""
sluice_pid=""
cleanup() {
  [ -n "$sluice_pid" ] && kill "$sluice_pid" 2>/dev/null || true
  [ -n "$pfx_pid" ] && postfix -c "$work/postfix" stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# One sink port per MTA, so a straggler from one can never be counted for the other.
pfx_sink=$(free_port)
sluice_sink=$(free_port)
pfx_port=$(free_port)

# --- Postfix: a private instance relaying everything to the sink.
start_postfix "$work" "$pfx_port" "relayhost = [127.0.0.1]:$pfx_sink"

# --- sluice: durable (fsync before 250), relaying everything to the same sink, with the same
# connection limit as Postfix's default_destination_concurrency_limit (20).
sluice_config "$work/sluice.toml" "$work/sluice-data" "" "$(cat <<TOML
[shaping.default]
connections = 20
messages_per_connection = 1000
[[route]]
domains = ["*"]
smarthost = "127.0.0.1:$sluice_sink"
tls = "disabled"
TOML
)"
start_sluice "$bin" "$work/sluice.toml" "$work/sluice-data" "$work/sluice.log"

if [ "${COMPARE_INJECTOR:-loadtest}" = smtp-source ]; then
  n=${COMPARE_MESSAGES:-$(( 4000 * scale ))}
  echo "workload: smtp-source -s 100 -l 10240 -m $n into each MTA, relayed to smtp-sink; both fsync before 250" >&2
  src() { python3 loadtest/smtp_source.py "$@" 100 10240; }
  p=$(src postfix "127.0.0.1:$pfx_port" "$pfx_pid" "$pfx_sink" "$n")
  echo "$p"
  for conns in 100 default; do
    kill "$sluice_pid"; wait "$sluice_pid" 2>/dev/null || true
    rm -rf "$work/sluice-data"
    shaping=""
    [ "$conns" = 100 ] && shaping=$'[shaping.default]\nconnections = 100\nmessages_per_connection = 1000'
    sluice_config "$work/sluice.toml" "$work/sluice-data" "" "$(printf '%s\n[[route]]\ndomains = ["*"]\nsmarthost = "127.0.0.1:%s"\ntls = "disabled"\n' "$shaping" "$sluice_sink")"
    start_sluice "$bin" "$work/sluice.toml" "$work/sluice-data" "$work/sluice.log"
    s=$(src "sluice-connections-$conns" "$sluice_smtp" "$sluice_pid" "$sluice_sink" "$n")
    echo "$s"
    python3 - "$p" "$s" <<'PY' >&2
import json, sys
p, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
pr, sr = p["end_to_end_messages_per_second"], s["end_to_end_messages_per_second"]
print(f"{s['label']}: injected {s['injected_per_second']:.0f}/s, delivered {sr:.0f}/s end to end, "
      f"{s['mta_cpu_ms_per_message']:.2f} ms CPU/msg; postfix: injected {p['injected_per_second']:.0f}/s, "
      f"delivered {pr:.0f}/s, {p['mta_cpu_ms_per_message']:.2f} ms CPU/msg; ratio {sr / pr:.2f}x", flush=True)
PY
  done
  exit 0
fi

relay() { # $1 label, $2 server, $3 pid, $4 sink port, $5 sessions, $6 messages, $7 size, [$8 metrics url]
  local extra=()
  [ -n "${8:-}" ] && extra=(--metrics "$8")
  "$lt" relay --label "$1" --server "$2" --mta-pid "$3" --sink "127.0.0.1:$4" \
    --sessions "$5" --messages "$6" --size "$7" --max-seconds 240 "${extra[@]}"
}

if [ "${COMPARE_DKIM:-}" = 1 ]; then
  n=${COMPARE_MESSAGES:-$(( 6000 * scale ))}
  mkdir -p "$work/keys"
  "$bin" dkim keygen --domain example.com --selector ed --algorithm ed25519 --out "$work/keys/ed.pem" >/dev/null
  "$bin" dkim keygen --domain example.com --selector rsa --algorithm rsa --out "$work/keys/rsa.pem" >/dev/null
  ed=$'[[dkim]]\ndomain = "example.com"\nselector = "ed"\nalgorithm = "ed25519-sha256"\nkey = "'"$work/keys/ed.pem"$'"'
  rsa=$'[[dkim]]\ndomain = "example.com"\nselector = "rsa"\nalgorithm = "rsa-sha256"\nkey = "'"$work/keys/rsa.pem"$'"'
  echo "workload: sluice relays $n x 10 KB from 100 sessions to a loopback sink, fsync before 250; signing off / ed25519 / dual" >&2
  base=""
  for mode in off ed25519 dual; do
    kill "$sluice_pid"; wait "$sluice_pid" 2>/dev/null || true
    rm -rf "$work/sluice-data"
    keys=""
    [ "$mode" = ed25519 ] && keys="$ed"
    [ "$mode" = dual ] && keys="$ed"$'\n'"$rsa"
    sluice_config "$work/sluice.toml" "$work/sluice-data" "" "$(printf '%s\n[shaping.default]\nconnections = 20\nmessages_per_connection = 1000\n[[route]]\ndomains = ["*"]\nsmarthost = "127.0.0.1:%s"\ntls = "disabled"\n' "$keys" "$sluice_sink")"
    start_sluice "$bin" "$work/sluice.toml" "$work/sluice-data" "$work/sluice.log"
    s=$(relay "sluice-dkim-$mode" "$sluice_smtp" "$sluice_pid" "$sluice_sink" 100 "$n" 10240 "http://$sluice_admin/metrics")
    echo "$s"
    signed=$(curl -s "http://$sluice_admin/metrics" | awk '/^sluice_dkim_signatures_total/ { n += $2 } END { print n + 0 }')
    [ -z "$base" ] && base="$s"
    python3 - "$base" "$s" "$mode" "$signed" <<'PY' >&2
import json, sys
b, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
br, sr = b["end_to_end_messages_per_second"], s["end_to_end_messages_per_second"]
print(f"dkim {sys.argv[3]:>8}: {sr:6.0f} msg/s end to end, {s['mta_cpu_ms_per_message']:.3f} ms CPU/msg, "
      f"p99 DATA-end->250 {s['latency_ms']['p99']:.1f} ms, {sys.argv[4]} signatures; {sr / br:.2f}x of unsigned", flush=True)
PY
  done
  exit 0
fi

results="$work/results.jsonl"
echo "workload: relay to a loopback sink; both MTAs fsync before 250; 2-core machine, one run" >&2
for size in 1024 10240 102400; do
  for sessions in 20 100; do
    n=${COMPARE_MESSAGES:-$(( (size == 102400 ? 1500 : 4000) * scale ))}
    p=$(relay postfix "127.0.0.1:$pfx_port" "$pfx_pid" "$pfx_sink" "$sessions" "$n" "$size")
    s=$(relay sluice "$sluice_smtp" "$sluice_pid" "$sluice_sink" "$sessions" "$n" "$size" "http://$sluice_admin/metrics")
    python3 - "$p" "$s" "$results" <<'PY' >&2
import json, sys
p, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
with open(sys.argv[3], "a") as f:
    f.write(json.dumps({"postfix": p, "sluice": s}) + "\n")
pr, sr = p["end_to_end_messages_per_second"], s["end_to_end_messages_per_second"]
print(f"{s['message_size']:>7} B {s['sessions']:>4} sessions: "
      f"postfix {pr:>6.0f}/s ({p['mta_cpu_ms_per_message']:.2f} ms CPU/msg)  "
      f"sluice {sr:>6.0f}/s ({s['mta_cpu_ms_per_message']:.2f} ms CPU/msg, "
      f"{s.get('messages_per_fsync', 0)} msgs/fsync, p99 DATA-end->250 {s['latency_ms']['p99']:.1f} ms)  "
      f"ratio {sr / pr:.2f}x", flush=True)
PY
  done
done
echo "peak RSS: sluice $(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readlines()[-1])["sluice"]["mta_peak_rss_kb"])' "$results") KiB" >&2
echo "full results (JSON lines):" >&2
cat "$results"
