#!/usr/bin/env bash
# CAPF over IPv6: a phone enrolls over [::1]; with enable-ipv6 off the server
# refuses IPv6 peers (counted by reason) while IPv4 still works.
. "$(dirname "$0")/lib.sh"
it_watchdog 180

if ! python3 -c 'import socket; s=socket.socket(socket.AF_INET6); s.bind(("::1", 0))' 2>/dev/null; then
  it_log "no IPv6 loopback on this machine: nothing to test"
  it_pass
fi

dir="$IT_TMP/v6"
mkdir -p "$dir"
log="$dir/server.log"
"$CAPSTAN_BIN" serve --init --data-dir "$dir/data" --capf-listen "[::]:0" --admin-listen 127.0.0.1:0 \
  --http-listen off --tftp-listen off --drain-seconds 5 </dev/null >"$log" 2>&1 &
pid=$!
ready() { grep -q 'event=ready' "$log"; }
it_wait_for 60 ready || fail "server not ready"
capf=$(grep -o 'capf_port=[0-9]*' "$log" | head -1 | cut -d= -f2)
admin=$(grep -o 'admin_port=[0-9]*' "$log" | head -1 | cut -d= -f2)

capv6() { timeout 30 "$CAPSTAN_BIN" "$@" --data-dir "$dir/data"; }
capv6 device add SEP0000000A0001 --operation install --auth null --key ec256 >/dev/null
capv6 device add SEP0000000A0002 --operation install --auth null --key ec256 >/dev/null
capv6 device add SEP0000000A0003 --operation install --auth null --key ec256 >/dev/null

run_phone() { # ADDR NAME
  timeout 120 "$PHONE_BIN" --connect "$1" --name "$2" --auth null --key-cache "$IT_KEYS" --json \
    2>>"$IT_TMP/phones.log" || true
}
scrape() { curl -sf --max-time 10 "http://127.0.0.1:$admin/metrics" | awk -v s="$1" '$1 == s {print $2}'; }

out=$(run_phone "[::1]:$capf" SEP0000000A0001)
json_expect "$out" result ok reason 1

capv6 config set enable-ipv6 off >/dev/null
# Settings reach the server within about a second.
v6_refused() {
  local o
  o=$(run_phone "[::1]:$capf" SEP0000000A0002)
  [[ "$o" == *'"result":"error"'* ]]
}
it_wait_for 10 v6_refused || fail "IPv6 phone still served after enable-ipv6 off"
[[ "$(scrape 'capstan_capf_connections_rejected_total{reason="ipv6_disabled"}')" -ge 1 ]] ||
  fail "ipv6_disabled rejection not counted"
grep -q 'reason="ipv6 disabled' "$log" || fail "no log line for the IPv6 refusal"

# IPv4 (also when it arrives on the dual-stack socket as ::ffff:127.0.0.1) still works.
out=$(run_phone "127.0.0.1:$capf" SEP0000000A0003)
json_expect "$out" result ok reason 1

kill -TERM "$pid"
stopped() { ! kill -0 "$pid" 2>/dev/null; }
it_wait_for 30 stopped || fail "server did not stop"
wait "$pid"
rc=$?
[[ $rc -eq 0 ]] || fail "server exited with $rc"
it_pass
