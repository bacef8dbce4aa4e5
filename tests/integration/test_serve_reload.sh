#!/usr/bin/env bash
# `capstan reload`: SIGHUP reaches the server of the data directory named,
# found through the directory's lock, and no other capstan on the machine
# (two servers run here); without a server on the directory, or with only a
# stale serve.pid, it says so and exits 1.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" curl
it_watchdog 180

srv_start a
srv_start b

reloads() { grep -c 'event=reload signal=SIGHUP' "${SRV_LOG[$1]}"; }

cli_expect "${SRV_DATA[a]}" 0 reload
has "$OUT" "pid ${SRV_PID[a]}"
it_wait_for 20 '[[ $(reloads a) == 1 ]]' || fail "server a did not reload"
cli_expect "${SRV_DATA[b]}" 0 reload
it_wait_for 20 '[[ $(reloads b) == 1 ]]' || fail "server b did not reload"
cli_expect "${SRV_DATA[a]}" 0 reload
it_wait_for 20 '[[ $(reloads a) == 2 ]]' || fail "server a did not reload a second time"
# Each signal reached its own server only.
sleep 1
assert_eq 2 "$(reloads a)" "reloads of server a"
assert_eq 1 "$(reloads b)" "reloads of server b"
srv_alive a && srv_alive b || fail "a server stopped"

# No server on a store: exit 1, and nobody is signalled.
srv_prepare idle
cli_expect "${SRV_DATA[idle]}" 1 reload
has "$ERR" "no capstan serve is running on '${SRV_DATA[idle]}'"
cli_expect "$IT_TMP/nowhere" 1 reload
has "$ERR" "no capstan serve is running"

# A server that was killed leaves serve.pid: reload names the stale pid and
# signals nothing.
OLD=${SRV_PID[b]}
kill -KILL "$OLD"
wait "$OLD" 2>/dev/null
SRV_PID[b]=""
cli_expect "${SRV_DATA[b]}" 1 reload
has "$ERR" "names pid $OLD, which holds no lock"
assert_eq 2 "$(reloads a)" "reloads of server a after the stale reload"

srv_stop a
it_pass
