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

# relay_config FILE DATA_DIR SINK_PORT [CONNECTIONS] [MORE]: sluice_config relaying everything
# to 127.0.0.1:SINK_PORT over plain SMTP with CONNECTIONS (default 20, the campaign benchmarks);
# MORE goes on inside [shaping.default] (more of its keys, then other tables).
relay_config() {
  sluice_config "$1" "$2" "max_sessions_per_ip = 1000" "$(cat <<TOML
[[route]]
domains = ["*"]
smarthost = "127.0.0.1:$3"
tls = "disabled"
[shaping.default]
connections = ${4:-20}
${5:-}
TOML
)"
}

# start_postfix WORK PORT EXTRA: a private Postfix instance (own config, queue and log under
# WORK/postfix, WORK/pfx-*) with its SMTP listener on 127.0.0.1:PORT, chroot off, and EXTRA
# appended to main.cf (where the mail goes). Sets pfx_pid; stop it with
# `postfix -c WORK/postfix stop`.
start_postfix() {
  local work=$1 port=$2
  mkdir -p "$work/postfix" "$work/pfx-queue" "$work/pfx-data"
  chown postfix "$work/pfx-data"
  cat > "$work/postfix/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $work/pfx-queue
data_directory = $work/pfx-data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.loadtest
mydomain = loadtest
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = 200
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file = $work/pfx-maillog
maillog_file_prefixes = $work
$3
CF
  # Debian's master.cf with the SMTP listener moved to our port and chroot off (private queue).
  awk -v port="$port" '
    /^smtp +inet/ { print "127.0.0.1:" port " inet n - n - - smtpd"; next }
    /^[a-z]/ && NF >= 8 && $5 == "y" { $5 = "n" }
    { print }' /etc/postfix/master.cf > "$work/postfix/master.cf"
  # Postfix reports configuration errors to syslog only; `script` gives it a terminal to print on.
  if ! script -qec "postfix -c $work/postfix start" /dev/null >"$work/pfx-start.log" 2>&1; then
    echo "postfix did not start:" >&2; cat "$work/pfx-start.log" >&2; exit 1
  fi
  for _ in $(seq 100); do [ -s "$work/pfx-queue/pid/master.pid" ] && break; sleep 0.1; done
  pfx_pid=$(tr -d ' ' < "$work/pfx-queue/pid/master.pid")
}
