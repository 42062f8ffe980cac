#!/usr/bin/env bash
# Intake with a large deferred queue (bulk senders live with them: providers throttle).
# Delivery points at a host that answers 421 to every connection, so everything accepted stays
# queued and deferred. Measures durable intake (64 pipelining sessions, 2 KB) with an empty queue,
# then fills the queue with N deferred messages, waits until sluice is idle, reports its idle CPU,
# and measures the same intake again. The goal (DESIGN.md): within 1.5x of the empty queue (msg/s
# and p99) and idle CPU < 5 %. Everything on 127.0.0.1; the spool lives under target/.
#   usage: bash loadtest/deferred.sh [queued]   (default 1000000; needs ~3 GB of disk)
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
n="${1:-1000000}"
probe="${PROBE_MESSAGES:-60000}"
cargo build --release --workspace --locked --quiet --ignore-rust-version
bin=$PWD/target/release/sluice
lt=$PWD/target/release/loadtest
work=$(mktemp -d "$PWD/target/deferred.XXXXXX")
sluice_pid="" busy_pid=""
trap 'kill "$sluice_pid" "$busy_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
busy_port=$(free_port)

# A next hop that answers every connection with 421 (bounded: it lives as long as this script).
python3 - "$busy_port" <<'PY' &
import asyncio, sys
async def busy(reader, writer):
    writer.write(b"421 4.3.2 busy, try later\r\n")
    await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(busy, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
PY
busy_pid=$!

sluice_config "$work/sluice.toml" "$work/data" "" "$(cat <<TOML
[queue]
retry = ["1h"]
[[route]]
domains = ["*"]
smarthost = "127.0.0.1:$busy_port"
tls = "disabled"
TOML
)"
start_sluice "$bin" "$work/sluice.toml" "$work/data" "$work/sluice.log"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$sluice_pid/stat"; }
hz=$(getconf CLK_TCK)
# Waits until sluice used under 5 % of a core over 2 s (at most 15 minutes); prints that share.
wait_idle() {
  local deadline=$(( $(date +%s) + 900 )) a b pct
  while :; do
    a=$(cpu_ticks); sleep 2; b=$(cpu_ticks)
    pct=$(( (b - a) * 100 / (2 * hz) ))
    [ "$pct" -lt 5 ] && break
    [ "$(date +%s)" -ge "$deadline" ] && { echo "not idle after 15 minutes ($pct %)" >&2; break; }
  done
}
probe_intake() { # $1 label
  "$lt" inject --server "$sluice_smtp" --sessions 64 --messages "$probe" --size 2048 --pipelining \
    --per-connection 1000 --max-seconds 300 --json "$work/$1.json" > /dev/null
  python3 - "$work/$1.json" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<28} {r['messages_per_second']:>8.0f} msg/s  p50 {r['latency_ms']['p50']:.2f} ms  p99 {r['latency_ms']['p99']:.2f} ms")
PY
}

echo "intake: 64 pipelining sessions x $probe messages of 2 KB, fsync before 250; next hop answers 421"
probe_intake "empty queue"
wait_idle
echo "filling: $n messages, all deferred"
"$lt" inject --server "$sluice_smtp" --sessions 64 --messages "$n" --size 2048 --pipelining \
  --per-connection 1000 --max-seconds 1200 > /dev/null
wait_idle
a=$(cpu_ticks); sleep 10; b=$(cpu_ticks)
queued=$(curl -s "http://$sluice_admin/metrics" | awk '/^sluice_spool_messages / {print $2}')
echo "idle with $queued queued: $(( (b - a) * 1000 / (10 * hz) )) per mille of a core over 10 s; RSS $(( $(awk '/^VmRSS/ {print $2}' /proc/$sluice_pid/status) / 1024 )) MiB"
probe_intake "with $queued deferred"
python3 - "$work" <<'PY'
import json, sys, glob
runs = sorted(glob.glob(sys.argv[1] + "/*.json"), key=lambda p: "empty" not in p)
a, b = (json.load(open(p)) for p in runs)
print(f"ratio deferred/empty: msg/s {b['messages_per_second'] / a['messages_per_second']:.2f}x, "
      f"p99 {b['latency_ms']['p99'] / a['latency_ms']['p99']:.2f}x")
PY
