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
  for _ in $(seq 200); do [ -f "$3/sluice.addresses.json" ] && break; sleep 0.05; done
  [ -f "$3/sluice.addresses.json" ] || { echo "sluice did not start:" >&2; cat "$4" >&2; exit 1; }
  sluice_smtp=$(bound_address "$3" smtp)
  sluice_admin=$(bound_address "$3" admin)
}
