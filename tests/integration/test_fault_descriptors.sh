#!/usr/bin/env bash
# Out of file descriptors (R26, README "Faults of the machine"): the running
# server's open-files limit is lowered (prlimit) and idle connections to the
# CAPF port use it up. The server stays up and does not spin on its
# listeners (CPU time from /proc/PID/stat), a phone already in its session
# finishes, new phones, HTTP and TFTP downloads are closed or told the
# server is busy, the condition is logged once and shown in /metrics, and
# when the idle connections go the server recovers by itself: phones
# enroll and files download again. Every certificate a phone received is on
# record. Then the limit is lowered below what the server holds (libuv
# then closes new connections on its own): noticed, logged, recovered
# when the limit is raised. One server, never restarted.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" curl jq tftp prlimit openssl "$IT_PYTHON"
it_watchdog 180

FILES="$IT_TMP/files"
mkdir -p "$FILES"
printf 'hello from capstan\n' >"$FILES/hello.txt"
srv_prepare main
# Idle TLS connections stay until the test closes them.
cap main config set handshake-timeout-seconds 300 >/dev/null
srv_start main --files --files-dir "$FILES"
PID=${SRV_PID[main]}
LOG=${SRV_LOG[main]}
for i in 1 2 3; do
  cap main device add "SEP00000000FD0$i" --operation install --auth null --key ec256 >/dev/null
done

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$PID/stat"; }
open_fds() { ls "/proc/$PID/fd" | wc -l; }
log_count() { grep -c -- "$1" "$LOG"; }
metric_is() { [[ "$(metric main "$1")" == "$2" ]]; }

# A phone in its session before the shortage: it finishes during it.
timeout 120 "$PHONE_BIN" --connect "127.0.0.1:${SRV_CAPF[main]}" --name SEP00000000FD01 \
  --auth null --keygen-delay 6 --timeout 60 --key-cache "$IT_KEYS" --json \
  --save-cert "$IT_TMP/fd01.der" >"$IT_TMP/fd01.json" 2>"$IT_TMP/fd01.err" &
EARLY=$!
it_wait_for 30 metric_is capstan_capf_keygen_active 1 || fail "the early phone never reached key generation"

# The limit: what the server holds now and 40 more.
base=$(open_fds)
LIMIT=$((base + 40))
prlimit --pid "$PID" --nofile="$LIMIT": || fail "prlimit --nofile on the server"
it_log "server holds $base descriptors; soft limit now $LIMIT"

# More idle connections than the limit allows, held open by one process.
"$IT_PYTHON" - "${SRV_CAPF[main]}" $((LIMIT + 20)) "$IT_TMP/held.ready" <<'PY' &
import signal, socket, sys
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    held.append(s)
open(ready, "w").write("%d\n" % len(held))
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
signal.pause()
PY
HOLDER=$!
it_wait_for 20 '[[ -s "$IT_TMP/held.ready" ]]' || fail "the idle connections were not all made"
it_wait_for 20 metric_is capstan_descriptors_exhausted 1 || fail "gauge capstan_descriptors_exhausted never 1"
grep -q "event=descriptors_exhausted where=capf .*limit=$LIMIT" "$LOG" ||
  fail "no descriptors_exhausted log line naming the listener and the limit"
# The status page says so too (the admin listener may use the reserve).
[[ $(curl -sf --max-time 10 "http://127.0.0.1:${SRV_ADMIN[main]}/status.json" |
  jq -r .resources.descriptors_exhausted) == true ]] || fail "status.json does not say descriptors are exhausted"

# No spinning: the server's CPU time over 3 s while exhausted.
t0=$(cpu_ticks)
sleep 3
t1=$(cpu_ticks)
CPU=$((t1 - t0))
it_log "CPU while exhausted: $CPU ticks of $(getconf CLK_TCK)/s in 3 s"
((CPU <= 30)) || fail "the server used $CPU ticks in 3 s while out of descriptors (spinning?)"

# New work is refused cleanly, bounded, and the server says nothing more.
phone main --name SEP00000000FD02 --auth null --timeout 10 --save-cert "$IT_TMP/fd02.der"
[[ $PHONE_RC -eq 1 ]] || fail "a new phone while exhausted must fail its session, rc=$PHONE_RC"
[[ ! -e "$IT_TMP/fd02.der" ]] || fail "a phone refused at accept holds a certificate"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 \
  "http://127.0.0.1:${SRV_HTTP[main]}/hello.txt") && [[ $code == 200 ]] &&
  fail "HTTP download succeeded while out of descriptors"
(cd "$IT_TMP" && timeout 30 tftp -m binary 127.0.0.1 "${SRV_TFTP[main]}" -c get hello.txt busy.txt) \
  >"$IT_TMP/tftp.out" 2>&1
grep -q 'server busy' "$IT_TMP/tftp.out" || fail "TFTP while exhausted: $(cat "$IT_TMP/tftp.out")"
refused=$(metric main capstan_descriptors_refused_total)
((refused >= 3)) || fail "capstan_descriptors_refused_total=$refused, expected at least 3"

# The early phone finished meanwhile, certificate on record.
wait "$EARLY" || fail "the phone in session during the shortage failed: $(cat "$IT_TMP/fd01.json")"
json_expect "$(cat "$IT_TMP/fd01.json")" result ok reason 1
lsc_on_record main SEP00000000FD01 "$IT_TMP/fd01.der"
assert_eq 1 "$(log_count 'event=descriptors_exhausted')" "descriptors_exhausted log lines"

# The idle connections go: the server recovers by itself.
kill -TERM "$HOLDER"
wait "$HOLDER" 2>/dev/null
it_wait_for 10 metric_is capstan_descriptors_exhausted 0 || fail "no recovery after the idle connections closed"
grep -q 'event=descriptors_recovered .*refused=' "$LOG" || fail "no descriptors_recovered log line"
[[ $(curl -sf --max-time 10 "http://127.0.0.1:${SRV_ADMIN[main]}/status.json" |
  jq -c .resources) == '{"descriptors_exhausted":false,"memory_exhausted":false}' ]] ||
  fail "status.json still says a resource is exhausted after the recovery"
phone main --name SEP00000000FD03 --auth null --save-cert "$IT_TMP/fd03.der"
json_expect "$PHONE_JSON" result ok reason 1
lsc_on_record main SEP00000000FD03 "$IT_TMP/fd03.der"
curl -sf --max-time 10 -o "$IT_TMP/got-http.txt" "http://127.0.0.1:${SRV_HTTP[main]}/hello.txt" ||
  fail "HTTP download after recovery"
cmp -s "$IT_TMP/got-http.txt" "$FILES/hello.txt" || fail "HTTP file differs after recovery"
(cd "$IT_TMP" && timeout 30 tftp -m binary 127.0.0.1 "${SRV_TFTP[main]}" -c get hello.txt got.txt) \
  >"$IT_TMP/tftp2.out" 2>&1 || fail "TFTP after recovery: $(cat "$IT_TMP/tftp2.out")"
cmp -s "$IT_TMP/got.txt" "$FILES/hello.txt" || fail "TFTP file differs after recovery"
assert_eq 1 "$(log_count 'event=descriptors_exhausted')" "descriptors_exhausted log lines"
assert_eq 1 "$(log_count 'event=descriptors_recovered')" "descriptors_recovered log lines"

# The limit lowered below what the server holds: libuv's own reserve
# descriptor closes new connections silently, the server still notices.
prlimit --pid "$PID" --nofile=$(($(open_fds) - 4)): || fail "prlimit --nofile below the open count"
# (Not even /metrics can be answered now: the log line says it.)
it_wait_for 10 "grep -q 'event=descriptors_exhausted where=watch error=EMFILE' '$LOG'" ||
  fail "a limit below the open count went unnoticed"
phone main --name SEP00000000FD02 --auth null --timeout 10 --save-cert "$IT_TMP/fd02.der"
[[ $PHONE_RC -eq 1 && ! -e "$IT_TMP/fd02.der" ]] || fail "a phone enrolled with no descriptor left"
prlimit --pid "$PID" --nofile="$LIMIT": || fail "prlimit --nofile back to $LIMIT"
it_wait_for 10 metric_is capstan_descriptors_exhausted 0 || fail "no recovery after the limit was raised"
phone main --name SEP00000000FD02 --auth null --save-cert "$IT_TMP/fd02.der"
json_expect "$PHONE_JSON" result ok reason 1
lsc_on_record main SEP00000000FD02 "$IT_TMP/fd02.der"
assert_eq 2 "$(log_count 'event=descriptors_exhausted')" "descriptors_exhausted log lines (two episodes)"
assert_eq 2 "$(log_count 'event=descriptors_recovered')" "descriptors_recovered log lines (two episodes)"

srv_stop main
it_pass
