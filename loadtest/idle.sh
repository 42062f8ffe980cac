#!/usr/bin/env bash
# Memory of idle inbound connections: holds N connections open to sluice (banner read, then
# idle; a second round says EHLO first) and reports the resident memory they add, in all and
# per connection. Everything on 127.0.0.1; bounded by --connections and --max-seconds.
#   usage: bash loadtest/idle.sh [connections]   (default 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
n="${1:-10000}"
ulimit -n $(( n * 2 + 1000 )) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --workspace --locked --quiet --ignore-rust-version
work=$(mktemp -d)
trap 'kill "$sluice_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
sluice_config "$work/sluice.toml" "$work/data" "max_sessions = $(( n + 100 ))
max_sessions_per_ip = $(( n + 100 ))" "$(cat <<TOML
[delivery]
enabled = false
TOML
)"
# A fresh sluice per round: freed memory stays with the allocator and would hide the second.
for ehlo in "" --ehlo; do
  rm -rf "$work/data"
  start_sluice target/release/sluice "$work/sluice.toml" "$work/data" "$work/sluice.log"
  target/release/loadtest idle --server "$sluice_smtp" --mta-pid "$sluice_pid" --connections "$n" $ehlo
  kill "$sluice_pid"; wait "$sluice_pid" 2>/dev/null || true
done
