#!/usr/bin/env bash
# Listener limits changed live (README "Limits"): each limit of each listener
# is lowered with `capstan config set` while the server runs; a client beyond
# it is told to come back (CAPF RETRY_LATER {RETRY_DELAY}, HTTP 503 with
# Retry-After, TFTP an ERROR that says the server is busy), the refusal is
# counted by reason in /metrics and logged (one line per reason per few
# seconds); what was already open is not cut; and the limit raised again
# lets the same client through; max-handshakes raised starts the phone left
# waiting for a handshake slot. One server for the whole test: never
# restarted.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" curl jq tftp "$IT_PYTHON"
it_watchdog 240

FILES="$IT_TMP/files"
mkdir -p "$FILES"
printf 'hello from capstan\n' >"$FILES/hello.txt"
srv_start main --files --files-dir "$FILES"
LOG=${SRV_LOG[main]}
PID=${SRV_PID[main]}
HTTP=${SRV_HTTP[main]}
TFTP=${SRV_TFTP[main]}
ADMIN=${SRV_ADMIN[main]}

# set_live KEY VALUE: `capstan config set`, then waits until the server's
# settings_applied line carries the value (the rows apply it in the same
# loop turn, before any new connection is looked at).
set_live() {
  local before
  before=$(grep -c 'event=settings_applied' "$LOG")
  cap main config set "$1" "$2" >/dev/null
  applied() {
    [[ $(grep -c 'event=settings_applied' "$LOG") -gt $before ]] &&
      grep 'event=settings_applied' "$LOG" | tail -n1 | grep -qE " $1=$2( |\$)"
  }
  it_wait_for 20 applied "$1" "$2" || fail "setting $1=$2 not applied by the server"
}
metric_is() { [[ "$(metric main "$1")" == "$2" ]]; }
log_count() { grep -c -- "$1" "$LOG"; }

# --- CAPF: RETRY_LATER beyond max-connections-per-address and max-connections ---
for i in 1 2 3; do
  cap main device add "SEP00000000AA0$i" --operation install --auth null --key ec256 >/dev/null
done
set_live max-connections-per-address 1
set_live retry-delay-seconds 33
# Phone 1 holds its connection in key generation.
timeout 150 "$PHONE_BIN" --connect "127.0.0.1:${SRV_CAPF[main]}" --name SEP00000000AA01 \
  --auth null --keygen-delay 90 --timeout 120 --key-cache "$IT_KEYS" --json \
  >"$IT_TMP/holder.json" 2>"$IT_TMP/holder.err" &
HOLDER=$!
it_wait_for 60 metric_is capstan_capf_keygen_active 1 || fail "phone 1 never reached key generation"
phone main --name SEP00000000AA02 --auth null
[[ $PHONE_RC -eq 1 ]] || fail "a phone over the per-address limit must exit 1, got $PHONE_RC"
json_expect "$PHONE_JSON" result error error retry_later retry_delay 33
metric_expect main 'capstan_capf_connections_rejected_total{reason="limit_per_address"}' 1
metric_expect main 'capstan_capf_connections_dropped_total{reason="limit_per_address"}' 0
metric_expect main capstan_capf_sessions_active 1
grep -q 'event=capf_connection_rejected .*reason="per-address connection limit reached (max-connections-per-address)" limit=1 answer=retry_later retry_delay=33' "$LOG" ||
  fail "no log line for the per-address refusal"
json_expect "$(device_json main SEP00000000AA02)" status pending attempts 0

# The total: one open connection, max-connections 1.
set_live max-connections-per-address 2000
set_live max-connections 1
phone main --name SEP00000000AA02 --auth null
json_expect "$PHONE_JSON" result error error retry_later retry_delay 33
metric_expect main 'capstan_capf_connections_rejected_total{reason="limit_total"}' 1
grep -q 'event=capf_connection_rejected .*reason="connection limit reached (max-connections)" limit=1 answer=retry_later' "$LOG" ||
  fail "no log line for the total refusal"

# Raised again: the same phone enrolls; the one holding was never cut.
set_live max-connections 20000
phone main --name SEP00000000AA02 --auth null
json_expect "$PHONE_JSON" result ok reason 1 operation install
kill -0 "$HOLDER" 2>/dev/null || fail "the phone holding a connection was cut: $(cat "$IT_TMP/holder.json")"
metric_expect main capstan_capf_keygen_active 1
kill -TERM "$HOLDER"
wait "$HOLDER" 2>/dev/null
it_wait_for 10 metric_is capstan_capf_sessions_active 0 || fail "holder's session not closed"

# max-handshakes: its one slot held by a silent connection, a phone waits
# (accepted, not refused, no handshake timer); raised, it is started at once.
set_live max-handshakes 1
exec 5<>"/dev/tcp/127.0.0.1/${SRV_CAPF[main]}"
it_wait_for 10 metric_is capstan_capf_sessions_active 1 || fail "silent connection not admitted"
timeout 90 "$PHONE_BIN" --connect "127.0.0.1:${SRV_CAPF[main]}" --name SEP00000000AA03 \
  --auth null --timeout 60 --key-cache "$IT_KEYS" --json >"$IT_TMP/waiter.json" 2>&1 &
WAITER=$!
sleep 1.5
kill -0 "$WAITER" 2>/dev/null || fail "a phone past max-handshakes was not left waiting: $(cat "$IT_TMP/waiter.json")"
metric_expect main capstan_capf_connections_waiting 1
metric_expect main capstan_capf_sessions_active 2
set_live max-handshakes 256
rc=0
wait "$WAITER" || rc=$?
[[ $rc -eq 0 ]] || fail "waiting phone exited $rc: $(cat "$IT_TMP/waiter.json")"
json_expect "$(head -n1 "$IT_TMP/waiter.json")" result ok reason 1 operation install
metric_expect main capstan_capf_connections_waiting 0
exec 5<&-

# --- HTTP: 503 with Retry-After beyond http-max-connections-per-address ------
set_live files-retry-after-seconds 7
set_live http-max-connections-per-address 1
# One connection held open mid-request (the header timer gives it 10 s).
exec 3<>"/dev/tcp/127.0.0.1/$HTTP"
printf 'GET /hello.txt HTTP/1.1\r\nHost: capstan\r\n' >&3
it_wait_for 10 "metric_is 'capstan_http_connections_active{server=\"phone\"}' 1" ||
  fail "held HTTP connection not counted"
lines=$(log_count 'event=http_connection_refused server=phone')
for i in 1 2; do
  code=$(curl -s --max-time 10 -D "$IT_TMP/h$i" -o "$IT_TMP/b$i" -w '%{http_code}' \
    "http://127.0.0.1:$HTTP/hello.txt")
  assert_eq 503 "$code" "HTTP status over the per-address limit"
  grep -qi '^Retry-After: 7' "$IT_TMP/h$i" || fail "no 'Retry-After: 7' in $(cat "$IT_TMP/h$i")"
  grep -qi '^Connection: close' "$IT_TMP/h$i" || fail "503 does not close the connection"
  grep -q 'retry in 7 s' "$IT_TMP/b$i" || fail "503 body: $(cat "$IT_TMP/b$i")"
done
metric_expect main 'capstan_http_connections_rejected_total{server="phone",reason="limit_per_address"}' 2
metric_expect main 'capstan_http_requests_total{server="phone",method="GET",code="503"}' 2
# Two refusals, one log line (rate-limited per reason).
assert_eq $((lines + 1)) "$(log_count 'event=http_connection_refused server=phone')" "refusal log lines"
grep -q 'event=http_connection_refused server=phone .*reason=limit_per_address limit=1 answer=503 retry_after=7 .*hint="a higher limit: capstan config set http-max-connections-per-address N"' "$LOG" ||
  fail "HTTP refusal log line lacks its fields"
set_live http-max-connections-per-address 2000
code=$(curl -s --max-time 10 -o "$IT_TMP/b3" -w '%{http_code}' "http://127.0.0.1:$HTTP/hello.txt")
assert_eq 200 "$code" "HTTP status once the limit is raised"
cmp -s "$IT_TMP/b3" "$FILES/hello.txt" || fail "wrong body after the limit was raised"
# The held connection was open all along: it finishes its request now.
printf 'Connection: close\r\n\r\n' >&3
timeout 10 cat <&3 >"$IT_TMP/held.http" || true
exec 3<&-
head -n1 "$IT_TMP/held.http" | grep -q '^HTTP/1.1 200' || fail "held connection: $(head -n1 "$IT_TMP/held.http")"

# --- TFTP: a busy ERROR beyond tftp-max-transfers-per-address ----------------
head -c 200000 /dev/urandom >"$FILES/big.bin"
set_live tftp-max-transfers-per-address 1
# One transfer held: its OACK (timeout 255 s) is never acknowledged; on
# SIGTERM the holder aborts it with an ERROR to the transfer port.
"$IT_PYTHON" - "$TFTP" "$IT_TMP/held.ready" <<'PY' &
import signal, socket, sys
port, ready = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(b"\0\x01big.bin\0octet\0timeout\0" + b"255\0", ("127.0.0.1", port))
pkt, peer = s.recvfrom(2000)
assert pkt[:2] == b"\0\x06", pkt
open(ready, "w").write("%d\n" % peer[1])
def stop(*_):
    s.sendto(b"\0\x05\0\0bye\0", peer)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
signal.pause()
PY
TFTP_HOLDER=$!
it_wait_for 10 '[[ -s "$IT_TMP/held.ready" ]]' || fail "TFTP holder got no OACK"
metric_expect main capstan_tftp_active_transfers 1
# tftp-hpa from the same address: the server says it is busy.
(cd "$IT_TMP" && timeout 30 tftp -m binary 127.0.0.1 "$TFTP" -c get hello.txt busy.txt) \
  >"$IT_TMP/tftp.out" 2>&1 || true
grep -q 'server busy (too many transfers from this address), retry in 7 s' "$IT_TMP/tftp.out" ||
  fail "tftp-hpa did not get the busy error: $(cat "$IT_TMP/tftp.out")"
metric_expect main 'capstan_tftp_rejections_total{reason="limit_per_address"}' 1
grep -q 'event=tftp_request_refused .*reason=limit_per_address limit=1 answer=busy retry_after=7' "$LOG" ||
  fail "no log line for the TFTP refusal"
set_live tftp-max-transfers-per-address 2000
(cd "$IT_TMP" && timeout 30 tftp -m binary 127.0.0.1 "$TFTP" -c get hello.txt got.txt) \
  >"$IT_TMP/tftp2.out" 2>&1 || fail "tftp-hpa after the limit was raised: $(cat "$IT_TMP/tftp2.out")"
cmp -s "$IT_TMP/got.txt" "$FILES/hello.txt" || fail "TFTP file differs after the limit was raised"
metric_expect main capstan_tftp_active_transfers 1 # the held one goes on
kill -TERM "$TFTP_HOLDER"
wait "$TFTP_HOLDER" 2>/dev/null
it_wait_for 10 metric_is capstan_tftp_active_transfers 0 || fail "held TFTP transfer not released"

# --- Admin: 503 beyond admin-max-connections-per-address --------------------
set_live admin-max-connections-per-address 1
exec 4<>"/dev/tcp/127.0.0.1/$ADMIN"
printf 'GET /healthz HTTP/1.1\r\nHost: capstan\r\n' >&4
sleep 0.3 # the admin listener's own gauge cannot be read through it now
code=$(curl -s --max-time 10 -D "$IT_TMP/ha" -o /dev/null -w '%{http_code}' \
  "http://127.0.0.1:$ADMIN/healthz")
assert_eq 503 "$code" "admin status over its per-address limit"
grep -qi '^Retry-After: 1' "$IT_TMP/ha" || fail "no 'Retry-After: 1' from the admin listener"
printf 'Connection: close\r\n\r\n' >&4
timeout 10 cat <&4 >"$IT_TMP/held-admin.http" || true
exec 4<&-
head -n1 "$IT_TMP/held-admin.http" | grep -q '^HTTP/1.1 200' || fail "held admin connection was cut"
metric_expect main 'capstan_http_connections_rejected_total{server="admin",reason="limit_per_address"}' 1
set_live admin-max-connections-per-address 64

# Every limit is listed with its range; the same server ran throughout.
list=$(cap main config list)
for k in max-connections max-connections-per-address max-handshakes http-max-connections \
  http-max-connections-per-address tftp-max-transfers tftp-max-transfers-per-address \
  admin-max-connections admin-max-connections-per-address files-retry-after-seconds; do
  grep -qE "^$k +[0-9]+ +[0-9]+\.\.[0-9]+ " <<<"$list" || fail "config list lacks $k with a range"
done
assert_eq "$PID" "${SRV_PID[main]}" "server pid"
assert_eq 1 "$(grep -c 'event=ready' "$LOG")" "server starts"

# Drain with a phone waiting for a handshake slot: it is closed, and the
# server still exits cleanly within its drain time.
set_live max-handshakes 1
exec 6<>"/dev/tcp/127.0.0.1/${SRV_CAPF[main]}"
it_wait_for 10 metric_is capstan_capf_sessions_active 1 || fail "silent connection not admitted"
timeout 90 "$PHONE_BIN" --connect "127.0.0.1:${SRV_CAPF[main]}" --name SEP00000000AA01 \
  --auth null --timeout 60 --key-cache "$IT_KEYS" --json >"$IT_TMP/drained.json" 2>&1 &
DRAINED=$!
it_wait_for 10 metric_is capstan_capf_connections_waiting 1 || fail "phone not waiting"
srv_stop main
rc=0
wait "$DRAINED" || rc=$?
[[ $rc -eq 1 ]] || fail "the waiting phone should end in an error when the server stops, got $rc"
exec 6<&-
it_pass
