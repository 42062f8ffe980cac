#!/usr/bin/env bash
# One bulk campaign into sluice two ways, in one run, to the same kind of loopback sink:
# HTTP injection (POST /api/inject/v1, 1,000 recipients per request, a 20 KB HTML template that
# sluice renders per recipient) and SMTP (one message per recipient, rendered by the client,
# lockstep MAIL/RCPT/DATA). Each on a fresh data dir; both fsync before they answer. Prints
# recipients accepted per second (durable), end to end (until the sink has them all), and the
# ratio HTTP / SMTP. Everything listens on 127.0.0.1; runs are bounded in count and seconds.
#   usage: bash loadtest/campaign.sh [recipients]   (default 20000)
#   CAMPAIGN_CONCURRENCY=N (default 4): concurrent HTTP requests.
#   CAMPAIGN_SMTP_SESSIONS=N (default 100): concurrent SMTP sessions (a campaign tool's usual
#   connection pool; with few lockstep sessions SMTP waits for one fsync per message each).
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
recipients="${1:-20000}"
concurrency="${CAMPAIGN_CONCURRENCY:-4}"
smtp_sessions="${CAMPAIGN_SMTP_SESSIONS:-100}"
cargo build --release --workspace --locked --quiet --ignore-rust-version
# SLUICE_BIN=PATH runs another build (an older commit, say) in the same harness.
bin=${SLUICE_BIN:-$PWD/target/release/sluice}
lt=$PWD/target/release/loadtest
work=$(mktemp -d "$PWD/target/campaign.XXXXXX") # not /tmp: fsync must reach a real disk
sluice_pid=""
trap '[ -n "$sluice_pid" ] && kill "$sluice_pid" 2>/dev/null; rm -rf "$work"' EXIT

run() { # $1 = http | smtp
  local data="$work/$1" sink
  sink=$(free_port)
  relay_config "$work/$1.toml" "$data" "$sink"
  start_sluice "$bin" "$work/$1.toml" "$data" "$work/$1.log"
  local token n="$concurrency"
  [ "$1" = smtp ] && n="$smtp_sessions"
  token=$("$bin" token add loadtest --scope inject --config "$work/$1.toml" | awk '{print $NF}')
  "$lt" campaign --mode "$1" --server "$sluice_smtp" --admin "$sluice_admin" --token "$token" \
    --sink "127.0.0.1:$sink" --recipients "$recipients" --concurrency "$n" --max-seconds 600 \
    > "$work/$1.json"
  kill "$sluice_pid"; wait "$sluice_pid" 2>/dev/null || true; sluice_pid=""
  cat "$work/$1.json" >&2
}

run http
run smtp
python3 - "$work/http.json" "$work/smtp.json" <<'PY'
import json, sys
h, s = (json.load(open(p)) for p in sys.argv[1:])
print(f"{'path':<6} {'recipients':>10} {'accepted/s':>11} {'end-to-end/s':>13}")
for r in (h, s):
    print(f"{r['mode']:<6} {r['accepted']:>10} {r['accepted_per_second']:>11.0f} {r['end_to_end_per_second']:>13.0f}")
print(f"ratio http/smtp: accepted {h['accepted_per_second'] / s['accepted_per_second']:.2f}x, "
      f"end to end {h['end_to_end_per_second'] / s['end_to_end_per_second']:.2f}x")
PY
