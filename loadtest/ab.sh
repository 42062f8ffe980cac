#!/usr/bin/env bash
# Two sluice builds against each other in one run: A (a baseline, e.g. an older commit's release
# binary) and B (this tree's), relaying the same workloads to a loopback sink (`loadtest relay`),
# fsync before 250, alternating A, B, A, B ... so the machine's drift hits both alike. Prints,
# per workload, each round's msg/s and CPU ms/msg and the ratio B/A of the medians.
# Everything listens on 127.0.0.1; each relay is bounded in messages and seconds.
#   usage: bash loadtest/ab.sh A_BIN [B_BIN]   (B default: this tree's release build)
#   AB_ROUNDS=N (default 3), AB_MESSAGES=N (default 4000; 1500 for 100 KB)
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
a_bin=$(realpath "$1")
cargo build --release --workspace --locked --quiet --ignore-rust-version
b_bin=$(realpath "${2:-target/release/sluice}")
lt=$PWD/target/release/loadtest
rounds=${AB_ROUNDS:-3}
work=$(mktemp -d "$PWD/target/ab.XXXXXX") # not /tmp: fsync must reach a real disk
sluice_pid=""
trap '[ -n "$sluice_pid" ] && kill "$sluice_pid" 2>/dev/null; rm -rf "$work"' EXIT
results="$work/results"
mkdir -p "$results"

one() { # $1 label (a|b), $2 bin, $3 sessions, $4 messages, $5 size
  local sink data="$work/data-$1"
  rm -rf "$data"
  sink=$(free_port)
  sluice_config "$work/$1.toml" "$data" "" "$(cat <<TOML
[shaping.default]
connections = 20
messages_per_connection = 1000
[[route]]
domains = ["*"]
smarthost = "127.0.0.1:$sink"
tls = "disabled"
TOML
)"
  start_sluice "$2" "$work/$1.toml" "$data" "$work/$1.log"
  "$lt" relay --label "$1 $5 $3" --server "$sluice_smtp" --mta-pid "$sluice_pid" \
    --sink "127.0.0.1:$sink" --sessions "$3" --messages "$4" --size "$5" --max-seconds 240 > "$results/$(date +%s%N).json"
  kill "$sluice_pid"; wait "$sluice_pid" 2>/dev/null || true
  sluice_pid=""
}

echo "A: $a_bin" >&2
echo "B: $b_bin" >&2
for size in 1024 10240 102400; do
  for sessions in 20 100; do
    n=${AB_MESSAGES:-$(( size == 102400 ? 1500 : 4000 ))}
    for _ in $(seq "$rounds"); do
      one a "$a_bin" "$sessions" "$n" "$size"
      one b "$b_bin" "$sessions" "$n" "$size"
    done
  done
done
python3 - "$results" <<'PY'
import json, os, statistics, sys
runs = {}
for f in sorted(os.listdir(sys.argv[1])):
    r = json.load(open(os.path.join(sys.argv[1], f)))
    who, size, sessions = r["label"].split()
    runs.setdefault((int(size), int(sessions)), {}).setdefault(who, []).append(r)
for (size, sessions), by in sorted(runs.items()):
    med = {w: statistics.median(x["end_to_end_messages_per_second"] for x in rs) for w, rs in by.items()}
    cpu = {w: statistics.median(x["mta_cpu_ms_per_message"] for x in rs) for w, rs in by.items()}
    each = {w: " ".join(f"{x['end_to_end_messages_per_second']:.0f}" for x in rs) for w, rs in by.items()}
    print(f"{size:7d} B {sessions:4d} sessions: A {med['a']:6.0f}/s [{each['a']}] {cpu['a']:.3f} ms CPU/msg; "
          f"B {med['b']:6.0f}/s [{each['b']}] {cpu['b']:.3f} ms CPU/msg; B/A {med['b'] / med['a']:.2f}x msg/s, "
          f"{cpu['b'] / cpu['a']:.2f}x CPU/msg")
PY
