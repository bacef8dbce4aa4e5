#!/usr/bin/env bash
# Keep-alive on CAPF connections (capf-protocol.md "Keep-alives and
# timeouts"): a phone that sits in key generation keeps a quiet connection;
# the server's side of it carries a TCP keep-alive timer of the configured
# N minutes (default 15), seen with `ss -tnoi`. `capstan keepalive set 5`
# applies to new connections and, live, to the ones already open.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" curl jq ss
it_watchdog 180

srv_start main
PORT=${SRV_CAPF[main]}

# Prints "PEER_PORT SECONDS" for each server-side connection of the CAPF
# listener: SECONDS is what is left of its keep-alive timer, or -1 when the
# socket has another timer or none.
server_sockets() {
  ss -tnoiH state established "( sport = :$PORT )" | awk '
    /^[ \t]/ { next }  # the -i detail lines
    {
      peer = $4; sub(/.*:/, "", peer)
      secs = -1
      if (match($0, /timer:\(keepalive,[^,]*,/)) {
        t = substr($0, RSTART + 17, RLENGTH - 18)
        secs = 0
        if (match(t, /[0-9]+min/)) secs += 60 * substr(t, RSTART, RLENGTH - 3)
        if (match(t, /[0-9.]+sec/)) secs += substr(t, RSTART, RLENGTH - 3)
        if (match(t, /[0-9]+ms/)) secs += substr(t, RSTART, RLENGTH - 2) / 1000
      }
      printf "%s %d\n", peer, secs
    }'
}

# keepalive_of PEER_PORT: seconds left on that connection's keep-alive timer.
keepalive_of() { server_sockets | awk -v p="$1" '$1 == p { print $2 }'; }

# A phone held in key generation (REQUEST_IN_PROGRESS, then quiet), in the
# background; its pid is in HELD_PID.
hold_phone() {
  local dev=$1
  cap main device add "$dev" --operation install --auth null --key ec256 >/dev/null
  timeout 150 "$PHONE_BIN" --connect "127.0.0.1:$PORT" --name "$dev" --auth null \
    --keygen-delay 120 --timeout 150 --key-cache "$IT_KEYS" --json \
    >"$IT_TMP/$dev.json" 2>"$IT_TMP/$dev.err" &
  HELD_PID=$!
}

keygen_active() { [[ "$(metric main capstan_capf_keygen_active)" == "$1" ]]; }

# New peers: server-side connections whose peer port is not in $1.
new_peer() {
  server_sockets | awk -v known=" $1 " 'index(known, " " $1 " ") == 0 { print $1 }' | head -n1
}

# --- Default: 15 minutes ---------------------------------------------------------
hold_phone SEP0000EE000001
P1=$HELD_PID
it_wait_for 60 keygen_active 1 || fail "the first phone never reached key generation"
peer1=$(new_peer "")
[[ -n "$peer1" ]] || fail "no server-side CAPF connection in ss: $(ss -tnoiH state established "( sport = :$PORT )")"
t=$(keepalive_of "$peer1")
it_log "first connection (peer port $peer1): keep-alive timer ${t}s"
# (ss prints whole minutes only above 9 minutes: 14min is 840..899 s.)
((t >= 14 * 60 && t <= 15 * 60)) ||
  fail "server-side keep-alive timer ${t}s, expected about 15 min: $(ss -tnoiH state established "( sport = :$PORT )")"

# --- keepalive set 5: live, and for new connections -------------------------------
cap main keepalive set 5 >/dev/null
# Applied to the open connection once the server picks the setting up.
it_wait_for 15 '(( $(keepalive_of "$peer1") > 0 && $(keepalive_of "$peer1") <= 5 * 60 ))' ||
  fail "the open connection's keep-alive is $(keepalive_of "$peer1")s after 'keepalive set 5'"
grep -q 'event=capf_keepalive_changed minutes=5' "${SRV_LOG[main]}" ||
  fail "no capf_keepalive_changed log line"
t=$(keepalive_of "$peer1")
it_log "first connection after 'keepalive set 5': ${t}s"
((t > 4 * 60)) || fail "keep-alive of the open connection ${t}s, expected about 5 min"

hold_phone SEP0000EE000002
P2=$HELD_PID
it_wait_for 60 keygen_active 2 || fail "the second phone never reached key generation"
peer2=$(new_peer "$peer1")
[[ -n "$peer2" ]] || fail "no second server-side CAPF connection in ss"
t=$(keepalive_of "$peer2")
it_log "new connection (peer port $peer2): keep-alive timer ${t}s"
((t > 4 * 60 && t <= 5 * 60)) || fail "new connection keep-alive ${t}s, expected about 5 min"
assert_eq "$(cap main keepalive show | grep -o '[0-9]\+' | head -n1)" 5 "keepalive show"

# --- The phones leave: the server counts them as disconnected -----------------------
kill -TERM "$P1" "$P2" 2>/dev/null
wait "$P1" "$P2" 2>/dev/null
it_wait_for 15 '[[ "$(metric main capstan_capf_sessions_active)" == 0 ]]' ||
  fail "sessions still active after the phones left"
metric_expect main 'capstan_capf_sessions_total{operation="install",result="disconnected"}' 2
metric_expect main capstan_capf_keygen_active 0
json_expect "$(device_json main SEP0000EE000001)" attempts 1 md5hash null certs_issued 0

srv_stop main
it_pass
