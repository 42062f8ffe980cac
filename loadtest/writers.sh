#!/usr/bin/env bash
# The spool's two commit paths side by side: durable intake of 10 KB messages (fsync before
# 250) through the portable writer (writev + fdatasync, one batch at a time) and the io_uring
# writer (linked write + fdatasync, two batches in flight), at 1, 16, 64 and 100 sessions. The
# two alternate, twice, so drift on this noisy machine hits both. Everything on 127.0.0.1; the
# spool lives under target/ (a real disk).
#   usage: bash loadtest/writers.sh [scale]
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
scale="${1:-1}"
cargo build --release --workspace --locked --quiet --ignore-rust-version
bin=target/release/sluice
lt=target/release/loadtest
work=$(mktemp -d "$PWD/target/writers.XXXXXX")
sluice_pid=""
trap 'kill "$sluice_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

run_server() { # $1 = writer
  rm -rf "$work/data"
  sluice_config "$work/sluice.toml" "$work/data" "" "$(cat <<TOML
[delivery]
enabled = false
[spool]
writer = "$1"
TOML
)"
  start_sluice "$bin" "$work/sluice.toml" "$work/data" "$work/$1.log"
  grep -q "writer=\"$1\"\|writer=$1" "$work/$1.log" || { echo "sluice did not run the $1 writer:" >&2; cat "$work/$1.log" >&2; exit 1; }
}

printf '%-9s %5s %8s %10s %8s %8s %11s\n' writer round sessions msgs/s p50_ms p99_ms msgs/fsync
for c in 1 16 64 100; do
  n=$(( (c == 1 ? 2000 : 20000) * scale ))
  for round in 1 2; do
    for writer in portable io_uring; do
      run_server "$writer"
      out=$("$lt" inject --server "$sluice_smtp" --sessions "$c" --messages "$n" --size 10240 \
        --pipelining --per-connection 5000 --metrics "http://$sluice_admin/metrics" --max-seconds 120)
      python3 - "$writer" "$round" "$c" "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[4])
print(f"{sys.argv[1]:<9} {sys.argv[2]:>5} {sys.argv[3]:>8} {r['messages_per_second']:>10.0f} {r['latency_ms']['p50']:>8.2f} {r['latency_ms']['p99']:>8.2f} {r.get('messages_per_fsync', 0):>11}", flush=True)
PY
      kill "$sluice_pid"; wait "$sluice_pid" 2>/dev/null || true
    done
  done
done
