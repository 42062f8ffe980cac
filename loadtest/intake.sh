#!/usr/bin/env bash
# Durable intake rate: 10 KB messages at 1, 16 and 64 concurrent sessions, fsync before 250.
# The baseline in the same run is sluice with durability switched off (acknowledge before
# writing), so the ratio shows what fsync-before-250 costs. That switch is a test hook: the binary
# is built with `--features sluice/test-hooks` here (release builds never have it), and the run
# stops if the baseline does not say it is unsafe. Everything stays on 127.0.0.1.
#   usage: bash loadtest/intake.sh [messages_per_session_count_scale]
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
scale="${1:-1}"
cargo build --release --workspace --locked --quiet --ignore-rust-version --features sluice/test-hooks
bin=target/release/sluice
lt=target/release/loadtest
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

run_server() { # $1 = label, $2 = unsafe flag
  rm -rf "$work/data"
  sluice_config "$work/sluice.toml" "$work/data" "" "$(cat <<TOML
[delivery]
enabled = false
TOML
)"
  SLUICE_TEST_UNSAFE_ACK_BEFORE_WRITE="$2" start_sluice "$bin" "$work/sluice.toml" "$work/data" "$work/$1.log"
  pid=$sluice_pid smtp=$sluice_smtp admin=$sluice_admin
  if [ "$2" = 1 ] && ! grep -q UNSAFE "$work/$1.log"; then
    echo "the no-fsync baseline is not running unsafe (built without test-hooks?)" >&2; exit 1
  fi
}

printf '%-10s %8s %12s %10s %10s %12s\n' mode sessions msgs/s p50_ms p99_ms msgs/fsync
for mode in durable no-fsync; do
  flag=0; [ "$mode" = no-fsync ] && flag=1
  run_server "$mode" "$flag"
  for c in 1 16 64; do
    n=$(( (c == 1 ? 3000 : c == 16 ? 40000 : 80000) * scale ))
    out=$("$lt" inject --server "$smtp" --sessions "$c" --messages "$n" --size 10240 --metrics "http://$admin/metrics" --max-seconds 120)
    python3 - "$mode" "$c" <<PY
import json, sys
r = json.loads('''$out''')
print(f"{sys.argv[1]:<10} {sys.argv[2]:>8} {r['messages_per_second']:>12.0f} {r['latency_ms']['p50']:>10.3f} {r['latency_ms']['p99']:>10.3f} {r.get('messages_per_fsync', 0):>12}")
PY
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
