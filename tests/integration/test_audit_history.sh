#!/usr/bin/env bash
# "What happened to SEP...?": admin changes and CAPF enrollments of the real
# server, then `capstan device history` and `capstan audit list` (text and
# JSON) show the right events in order, with the user who made each admin
# change; file downloads leave one event per file after a change, not one per
# download; and the server prunes events past audit-retention-days (the log
# starts with events seeded 10 and 3 days in the past).
. "$(dirname "$0")/lib.sh"
it_watchdog 300
it_require jq "$CAPSTAN_BUILD_DIR/capstan-audit-seed"

unset SUDO_USER # the user is the test's own, unless a command says otherwise
ME=$(id -un)
OLD=SEP0000000000AA
A=SEP001122334455 # string auth, encrypted configuration: boots, enrolls, boots again
B=SEP0011223344BB # a wrong string first, then enrolled, then its LSC deleted
C=SEP0011223344CC # imported, then removed

# --- A log that begins in the past: seeded oldest first, then `capstan init`.
mkdir -p "$IT_TMP/srv-main"
DATA="$IT_TMP/srv-main/data"
"$CAPSTAN_BUILD_DIR/capstan-audit-seed" "$DATA" $((10 * 86400)) seeded_old "$OLD" "ten days ago" ||
  fail "seed"
"$CAPSTAN_BUILD_DIR/capstan-audit-seed" "$DATA" $((3 * 86400)) seeded_mid "$OLD" "three days ago" ||
  fail "seed"
srv_prepare main
[[ "${SRV_DATA[main]}" == "$DATA" ]] || fail "srv_prepare used another data directory"

# --- Admin changes, before and while the server runs.
cap main device add "$A" --operation install --auth string --auth-string 123456 \
  --encrypted-config on >/dev/null
SUDO_USER=alice cap main device add "$B" --operation install --auth string \
  --auth-string 654321 >/dev/null
printf 'name,operation,auth_mode,auth_string,key,completes_by\n%s,install,null,,ec256,\n' "$C" \
  >"$IT_TMP/c.csv"
cap main device import "$IT_TMP/c.csv" >/dev/null
cap main config set validity-days 30 >/dev/null
srv_start main --files
FILES="127.0.0.1:${SRV_HTTP[main]}"

# A boots (ITL, configuration), enrolls, boots again and gets its encrypted
# configuration; then boots twice more with its LSC (nothing new to record).
phone main --name "$A" --auth string --auth-string 123456 --boot http --files "$FILES" \
  --reboot --save-cert "$IT_TMP/a.der" --save-key "$IT_TMP/a.key"
last=$(tail -n1 <<<"$PHONE_JSON")
json_expect "$last" result ok decrypted true
# B: a wrong string (failed), the right one (installed), then a delete.
phone main --name "$B" --auth string --auth-string 000000
json_expect "$PHONE_JSON" result end reason 7
phone main --name "$B" --auth string --auth-string 654321
json_expect "$PHONE_JSON" result ok
cap main device set "$B" --operation delete >/dev/null
phone main --name "$B" --auth string --auth-string 654321
json_expect "$PHONE_JSON" result ok
cap main device remove "$C" >/dev/null

# The first downloads reach the log within about a second (one batch).
a_events() { cap main device history "$A" --json | jq -c '[.events[].event]'; }
it_wait_for 10 '[[ $(a_events | jq "map(select(. == \"file_served\")) | length") == 5 ]]' ||
  fail "A's five first downloads are not in its history: $(a_events)"

# --- A's history, JSON: every event in order, the user only on admin changes.
H=$(cap main device history "$A" --json)
assert_eq '["device_added","file_served","file_served","attempt","cert_issued","cert_installed","operation_succeeded","file_served","file_served","file_served"]' \
  "$(jq -c '[.events[].event]' <<<"$H")" "A's history"
json_expect "$H" device "$A" exists true status succeeded operation none
assert_eq "$ME" "$(jq -r '.events[0].user' <<<"$H")" "who added A"
assert_eq '[null]' "$(jq -c '[.events[1:][].user] | unique' <<<"$H")" "the server's events have no user"
jq -e '.events[0].detail | test("operation=install auth=string auth-string=set key=rsa2048 encrypted-config=on status=pending")' \
  <<<"$H" >/dev/null || fail "device_added detail: $(jq -c '.events[0]' <<<"$H")"
jq -e '[.events[].detail] | map(select(test("123456"))) | length == 0' <<<"$H" >/dev/null ||
  fail "an authentication string in the history"
assert_eq "peer=127.0.0.1 operation=install" "$(jq -r '.events[3].detail' <<<"$H")" "attempt"
serial=$(device_json main "$A" | jq -r '.cert_history[0].serial')
[[ "$serial" =~ ^[0-9a-f]{32}$ ]] || fail "A has no certificate serial: $serial"
jq -e --arg s "serial=$serial " '.events[4].detail | startswith($s)' <<<"$H" >/dev/null ||
  fail "cert_issued does not name $serial: $(jq -c '.events[4]' <<<"$H")"
assert_eq "serial=$serial" "$(jq -r '.events[5].detail' <<<"$H")" "cert_installed"
assert_eq '["file=ITL'"$A"'.tlv","file='"$A"'.cnf.xml.sgn","file=ITL'"$A"'.tlv","file='"$A"'.cnf.xml.sgn","file='"$A"'.cnf.xml.enc.sgn"]' \
  "$(jq -c '[.events[] | select(.event == "file_served") | .detail]' <<<"$H")" "first downloads"
# Times are RFC 3339 UTC with microseconds, in order.
jq -e '[.events[].at] | (. == sort) and all(test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\\.[0-9]{6}Z$"))' \
  <<<"$H" >/dev/null || fail "event times: $(jq -c '[.events[].at]' <<<"$H")"

# More boots with the LSC download the same files again: no new event.
phone main --name "$A" --boot http --files "$FILES" --boot-only --cert "$IT_TMP/a.der" \
  --key "$IT_TMP/a.key"
json_expect "$PHONE_JSON" result ok decrypted true
phone main --name "$A" --boot http --files "$FILES" --boot-only --cert "$IT_TMP/a.der" \
  --key "$IT_TMP/a.key"
sleep 2 # past the batch a second
assert_eq 10 "$(cap main device history "$A" --json | jq '.events | length')" \
  "events of A after two more boots"
served=$(metric main 'capstan_files_first_served_total')
requests=$(curl -sf "http://127.0.0.1:${SRV_ADMIN[main]}/metrics" |
  awk '/^capstan_http_requests_total\{/ { n += $2 } END { print n + 0 }')
it_log "downloads ${requests}, first downloads noted ${served}"
((requests >= 11 && served < requests)) || fail "noted $served of $requests downloads"

# --- A's history, text.
cli_expect "$DATA" 0 device history "$A"
has "$OUT" "$A: operation none, status succeeded"
has "$OUT" "TIME                  EVENT                USER                   DETAIL"
grep -qE "device_added +$ME +operation=install" "$OUT" || fail "device_added line: $(cat "$OUT")"
grep -qE "attempt +\(server\) +peer=127.0.0.1 operation=install" "$OUT" || fail "attempt line"
grep -qE "cert_installed +\(server\) +serial=$serial" "$OUT" || fail "cert_installed line"
has "$OUT" "file=$A.cnf.xml.enc.sgn"
has "$OUT" "10 events"

# --- B: the user under sudo, the failure and its reason, the delete.
H=$(cap main device history "$B" --json)
# (authentication fails before an operation starts: one event, the failure)
assert_eq '["device_added","attempt_failed","attempt","cert_issued","cert_installed","operation_succeeded","device_changed","attempt","cert_deleted","operation_succeeded"]' \
  "$(jq -c '[.events[].event]' <<<"$H")" "B's history"
assert_eq "$ME (sudo by alice)" "$(jq -r '.events[0].user' <<<"$H")" "who added B"
assert_eq 'peer=127.0.0.1 operation=install reason="authentication failed"' \
  "$(jq -r '.events[1].detail' <<<"$H")" "B's failed attempt"
assert_eq "$ME" "$(jq -r '.events[6].user' <<<"$H")" "who scheduled the delete"
assert_eq "operation=delete status=pending" "$(jq -r '.events[6].detail' <<<"$H")" "device_changed"
bserial=$(device_json main "$B" | jq -r '.cert_history[0].serial')
assert_eq "serial=$bserial (deleted by the phone)" "$(jq -r '.events[8].detail' <<<"$H")" \
  "cert_deleted"
assert_eq "peer=127.0.0.1 operation=delete" "$(jq -r '.events[9].detail' <<<"$H")" "delete done"

# --- C: imported, then removed; its history outlives it.
cli_expect "$DATA" 0 device history "$C"
has "$OUT" "$C: no such device now (removed); its history:"
has "$OUT" "import=$IT_TMP/c.csv:2 operation=install auth=null key=ec256"
has "$OUT" "device_removed"
H=$(cap main device history "$C" --json)
json_expect "$H" exists false status null
cli_expect "$DATA" 1 device history SEP00112233DDDD
has "$ERR" "no device 'SEP00112233DDDD' and no history of one"

# --- audit list: everything, in order, with the admin changes' users.
L=$(cap main audit list --json)
jq -e '[.[].at] == ([.[].at] | sort)' <<<"$L" >/dev/null || fail "audit list is not in order"
assert_eq '["seeded_old","seeded_mid","identities_created"]' "$(jq -c '[.[0:3][].event]' <<<"$L")" \
  "the log's first events"
jq -e --arg me "$ME" 'map(select(.event == "setting_changed" and .detail == "validity-days=30" and .user == $me)) | length == 1' \
  <<<"$L" >/dev/null || fail "setting_changed with its user: $(jq -c 'map(select(.event == "setting_changed"))' <<<"$L")"
jq -e 'map(select(.event == "device_import" and .detail == "created=1 updated=0 unchanged=0 rearmed=0 auth-strings-replaced=0")) | length == 1' \
  <<<"$L" >/dev/null || fail "device_import"
# --device is the device's history.
assert_eq "$(cap main device history "$B" --json | jq -c '.events')" \
  "$(cap main audit list --device "$B" --json | jq -c 'map(del(.device))')" "audit list --device"
# --since: an age and an RFC 3339 time.
assert_eq 0 "$(cap main audit list --since 1h --json | jq 'map(select(.event | startswith("seeded"))) | length')" \
  "--since 1h"
assert_eq 1 "$(cap main audit list --since 4d --json | jq 'map(select(.event | startswith("seeded"))) | length')" \
  "--since 4d"
at=$(cap main device history "$A" --json | jq -r '.events[5].at')
assert_eq "cert_installed" "$(cap main audit list --since "$at" --device "$A" --json | jq -r '.[0].event')" \
  "--since $at"
cli_expect "$DATA" 0 audit list
head -n1 "$OUT" | grep -qE '^TIME +DEVICE +EVENT +USER +DETAIL$' || fail "audit list header: $(head -n1 "$OUT")"
grep -qE "seeded_old +capstan-audit-seed +ten days ago" "$OUT" || fail "seeded event line"
grep -qE "setting_changed +$ME +validity-days=30" "$OUT" || fail "setting_changed line"
cli_expect "$DATA" 2 audit list --since yesterday
has "$ERR" "--since must be"

# --- Retention: the server prunes at once when the setting changes.
count() { cap main audit list --json | jq --arg e "$1" 'map(select(.event == $e)) | length'; }
assert_eq 1 "$(count seeded_old)" "the 10-day-old event under the default 365 days"
today=$(cap main audit list --since 1d --json | jq length)
cap main config set audit-retention-days 5 >/dev/null
it_wait_for 10 '[[ $(count seeded_old) == 0 ]]' || fail "the 10-day-old event was not pruned"
assert_eq 1 "$(count seeded_mid)" "the 3-day-old event under 5 days"
P=$(cap main audit list --json | jq -c 'map(select(.event == "audit_pruned")) | .[0]')
json_expect "$P" user null device null
jq -e '.detail | test("^removed=1 older_than=[0-9T:-]+Z retention_days=5$")' <<<"$P" >/dev/null ||
  fail "audit_pruned: $P"
grep -q 'event=audit_pruned removed=1 retention_days=5' "${SRV_LOG[main]}" || fail "no audit_pruned log line"
cap main config set audit-retention-days 1 >/dev/null
it_wait_for 10 '[[ $(count seeded_mid) == 0 ]]' || fail "the 3-day-old event was not pruned"
# Today's events all stay (two settings and two audit_pruned more).
assert_eq $((today + 4)) "$(cap main audit list --json | jq length)" "events kept"
cli_expect "$DATA" 1 device history "$OLD"
cli_expect "$DATA" 2 config set audit-retention-days 0
has "$ERR" "audit-retention-days must be from 1 to 3650"

srv_stop main
it_pass
