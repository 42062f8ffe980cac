# Shared by the loadtest scripts (source it): start sluice on loopback port 0 and learn its
# addresses from <data_dir>/sluice.addresses.json.

# bound_address DATA_DIR NAME: the first address the named listener (smtp, admin, ...) bound.
bound_address() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]][0])' \
    "$1/sluice.addresses.json" "$2"
}

# start_sluice BIN CONFIG DATA_DIR LOG: runs sluice in the background and waits until it listens.
# Sets sluice_pid, sluice_smtp and sluice_admin. Extra environment comes from the caller.
start_sluice() {
  "$1" serve --config "$2" 2>"$4" &
  sluice_pid=$!
  for _ in $(seq 2400); do [ -f "$3/sluice.addresses.json" ] && break; sleep 0.05; done
  [ -f "$3/sluice.addresses.json" ] || { echo "sluice did not start:" >&2; cat "$4" >&2; exit 1; }
  sluice_smtp=$(bound_address "$3" smtp)
  sluice_admin=$(bound_address "$3" admin)
}

# free_port: a TCP port free on 127.0.0.1 now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# sluice_config FILE DATA_DIR [LIMITS] [REST]: sluice on loopback port 0 (SMTP and admin), with
# LIMITS as the [limits] table (default: 1000 sessions per IP, for load) and REST appended.
sluice_config() {
  cat > "$1" <<TOML
data_dir = "$2"
[[listener]]
mode = "smtp"
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[limits]
${3:-max_sessions_per_ip = 1000}
${4:-}
TOML
}

# relay_config FILE DATA_DIR SINK_PORT: sluice_config relaying everything to 127.0.0.1:SINK_PORT
# over plain SMTP with 20 connections (the campaign benchmarks).
relay_config() {
  sluice_config "$1" "$2" "max_sessions_per_ip = 1000" "$(cat <<TOML
[[route]]
domains = ["*"]
smarthost = "127.0.0.1:$3"
tls = "disabled"
[shaping.default]
connections = 20
TOML
)"
}
