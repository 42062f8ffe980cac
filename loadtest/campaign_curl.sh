#!/usr/bin/env bash
# HTTP injection driven by curl (a client nobody here wrote): a release sluice relaying to the
# loadtest sink on loopback, N sequential requests of 1,000 recipients each with the 20 KB HTML
# template of loadtest/campaign.sh. Prints recipients accepted per second (durable before each
# answer). Bounded: N requests, each with a 120 s timeout.
#   usage: bash loadtest/campaign_curl.sh [requests]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/lib.sh
requests="${1:-5}"
cargo build --release --workspace --locked --quiet --ignore-rust-version
bin=$PWD/target/release/sluice
lt=$PWD/target/release/loadtest
work=$(mktemp -d "$PWD/target/campaign-curl.XXXXXX")
sink_pid=""
sluice_pid=""
trap '[ -n "$sluice_pid" ] && kill "$sluice_pid" 2>/dev/null; [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null; rm -rf "$work"' EXIT
sink=$(free_port)
"$lt" sink --listen "127.0.0.1:$sink" > "$work/sink.log" 2>&1 &
sink_pid=$!
relay_config "$work/s.toml" "$work/data" "$sink"
start_sluice "$bin" "$work/s.toml" "$work/data" "$work/sluice.log"
token=$("$bin" token add curl --scope inject --config "$work/s.toml" | awk '{print $NF}')
python3 - "$work" "$requests" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
t = "<html><body><h1>Hello {{ name }}</h1>\n"
i = 0
while len(t) < 20480:
    i += 1
    t += f"<p>Paragraph {i} for {{{{ name }}}}: our spring offers, code <b>{{{{ code }}}}</b>, are waiting. Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p>\n"
for r in range(n):
    req = {"envelope_sender": "bounces@sender.example",
           "content": {"from": {"email": "news@sender.example"}, "subject": "Offers for {{ name }}", "html_body": t},
           "recipients": [{"email": f"c{r}-{k}@example.org", "substitutions": {"name": f"R{k}", "code": f"C{k}"}} for k in range(1000)]}
    open(f"{work}/req{r}.json", "w").write(json.dumps(req))
PY
start=$(date +%s.%N)
for r in $(seq 0 $((requests - 1))); do
  curl -s --max-time 120 -o "$work/resp$r.json" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' --data-binary "@$work/req$r.json" "http://$sluice_admin/api/inject/v1"
done
end=$(date +%s.%N)
python3 - "$work" "$requests" "$start" "$end" <<'PY'
import json, sys
work, n, start, end = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
ok = sum(json.load(open(f"{work}/resp{r}.json"))["success_count"] for r in range(n))
print(f"curl: {n} sequential requests x 1000 recipients, 20 KB template: {ok} accepted in {end - start:.2f} s = {ok / (end - start):.0f} recipients/s")
PY
