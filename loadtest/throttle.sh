#!/usr/bin/env bash
# Adaptive shaping against a provider that throttles (issue #26). A loopback sink accepts
# PER_MINUTE recipients per minute from each client address and answers the rest
# "450 4.7.28 ... unusual rate" until LIFT seconds, then accepts everything; sluice relays to it
# at a configured 30/s over 4 connections, once with an [[automation]] rule (reduce 0.5 after
# 3 matches in a minute, +10 % every 30 s without one) and once without (fixed limits, the
# retry schedule only). Reports, from the sink's side, the rate accepted while throttled, the
# refused recipients per accepted one (how hard sluice pushed past the limit), and the seconds
# from the lift to 90 % of 30/s; PNG timelines in target/throttle-*.png.
#   usage: bash loadtest/throttle.sh [per_minute] [lift_s] [duration_s]   (default 600 300 600)
#   THROTTLE_VARIANTS="automation" runs one of the two.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
per_minute="${1:-600}" lift="${2:-300}" duration="${3:-600}"
cargo build --release --workspace --locked --quiet --ignore-rust-version
bin=$PWD/target/release/sluice
lt=$PWD/target/release/loadtest
sluice_pid=""
trap 'kill "$sluice_pid" 2>/dev/null || true' EXIT

run() { # $1 label, $2 extra configuration
  local work sink_port
  work=$(mktemp -d "$PWD/target/throttle.XXXXXX")
  sink_port=$(free_port)
  relay_config "$work/sluice.toml" "$work/data" "$sink_port" 4 "$(cat <<TOML
rate = "30/s"
[queue]
retry = ["30s"]
[delivery]
builtin_automation = false
$2
TOML
)"
  start_sluice "$bin" "$work/sluice.toml" "$work/data" "$work/sluice.log"
  "$lt" throttle --server "$sluice_smtp" --sessions 8 --messages 15000 --size 2048 --pipelining \
    --per-connection 1000 --max-seconds 120 --sink "127.0.0.1:$sink_port" \
    --per-minute "$per_minute" --lift-after "$lift" --duration "$duration" --target-rate 30 \
    --label "$1" --plot "target/throttle-$1.png" --json "target/throttle-$1.json"
  kill "$sluice_pid"; wait "$sluice_pid" 2>/dev/null || true; sluice_pid=""
  rm -rf "$work"
}

automation=$(cat <<'TOML'
[[automation]]
name = "rate"
match = { code = '^4\.7\.28$' }
threshold = "3/1m"
reduce = 0.5
recover_every = "30s"
recover_step = 0.1
TOML
)
for v in ${THROTTLE_VARIANTS:-automation fixed}; do
  case $v in
    automation) run automation "$automation" ;;
    fixed) run fixed "" ;;
  esac
done
