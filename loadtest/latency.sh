#!/usr/bin/env bash
# Latency at half of peak: relays 10 KB messages over 100 sessions through sluice to a loopback
# sink as fast as it goes (the peak, end to end), then again paced at half that rate, and
# reports DATA-end -> 250 percentiles of both. Keeps each run's JSON and PNG plot (throughput
# over time, latency histogram) in target/latency/. Everything on 127.0.0.1, bounded in count.
#   usage: bash loadtest/latency.sh [messages]   (default 8000)
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
n="${1:-8000}"
cargo build --release --workspace --locked --quiet --ignore-rust-version
bin=$PWD/target/release/sluice
lt=$PWD/target/release/loadtest
out=$PWD/target/latency
mkdir -p "$out"
work=$(mktemp -d "$PWD/target/latency.XXXXXX")
sluice_pid=""
trap 'kill "$sluice_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
sink_port=$(free_port)
sluice_config "$work/sluice.toml" "$work/data" "" "$(cat <<TOML
[shaping.default]
connections = 20
messages_per_connection = 1000
[[route]]
domains = ["*"]
smarthost = "127.0.0.1:$sink_port"
tls = "disabled"
TOML
)"
start_sluice "$bin" "$work/sluice.toml" "$work/data" "$work/sluice.log"
relay() { # $1 name, then extra options
  local name=$1; shift
  "$lt" relay --label "sluice-$name" --server "$sluice_smtp" --mta-pid "$sluice_pid" \
    --sink "127.0.0.1:$sink_port" --sessions 100 --size 10240 --max-seconds 120 \
    --metrics "http://$sluice_admin/metrics" --json "$out/$name.json" --plot "$out/$name.png" "$@"
}
peak=$(relay peak --messages "$n" | python3 -c 'import json,sys; print(json.load(sys.stdin)["end_to_end_messages_per_second"])')
half=$(python3 -c "print(round($peak / 2))")
relay half --messages "$(( half * 10 ))" --rate "$half" > /dev/null
python3 - "$out" <<'PY'
import json, sys
for name in ("peak", "half"):
    r = json.load(open(f"{sys.argv[1]}/{name}.json"))
    l = r["latency_ms"]
    print(f"{name:>5}: {r['end_to_end_messages_per_second']:>6.0f} msg/s end to end, "
          f"DATA-end->250 p50 {l['p50']:.2f} ms, p99 {l['p99']:.2f} ms, p99.9 {l['p999']:.2f} ms, "
          f"{r.get('messages_per_fsync', 0)} msgs/fsync, CPU {r['mta_cpu_ms_per_message']:.3f} ms/msg")
print(f"JSON and PNG plots in {sys.argv[1]}/")
PY
