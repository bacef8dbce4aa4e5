#!/usr/bin/env bash
# `capstan device` as an operator runs it on a few thousand phones: the
# device-name rule, CSV re-import safety (--dry-run, --rearm,
# --replace-auth-strings), deadlines, list filters and certificate export.
# The real `capstan` binary on a temporary data directory.
set -uo pipefail

BIN="${CAPSTAN_BIN:?set CAPSTAN_BIN to the capstan binary}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/capstan-dev-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export CAPSTAN_DATA_DIR="$WORK/data"
. "$(dirname "$0")/tally.sh"

HDR="name,operation,auth_mode,auth_string,key,completes_by"

# --- device names -------------------------------------------------------------
expect 0 "add MAC name" -- "$BIN" device add SEP58971ECC97C1 --operation install --auth null
expect 0 "add lower-case MAC name" -- "$BIN" device add sep58971ecc97c2 --operation install --auth null
contains "$WORK/err" "upper-cased to 'SEP58971ECC97C2'" "lower-case name: notice on stderr"
contains "$WORK/out" "added SEP58971ECC97C2" "lower-case name stored upper-cased"
expect 1 "the upper-cased name is one device" -- "$BIN" device add SEP58971ECC97C2 --operation install --auth null
expect 0 "set by lower-case name" -- "$BIN" device set SEP58971ecc97c2 --key ec256
contains "$WORK/out" "updated SEP58971ECC97C2" "set reaches the upper-cased device"
expect 2 "short SEP name" -- "$BIN" device add SEP1234 --operation install --auth null
contains "$WORK/err" "SEP + 12 hex digits" "short SEP name: the rule is named"
expect 2 "non-hex SEP name" -- "$BIN" device add SEP58971ECC97CX --operation install --auth null
contains "$WORK/err" "starts with SEP but is not a phone's name" "non-hex SEP name refused"
expect 2 "non-hex SEP name, even with --any-name" -- "$BIN" device add SEP58971ECC97CX --any-name --operation install --auth null
expect 2 "other form without --any-name" -- "$BIN" device add CSFjdoe --operation install --auth null
contains "$WORK/err" "--any-name" "other form: the flag is named"
expect 0 "other form with --any-name" -- "$BIN" device add CSFjdoe --any-name --operation install --auth null
expect 0 "set an existing other-form device" -- "$BIN" device set CSFjdoe --key ec384
expect 2 "set a missing other-form device" -- "$BIN" device set CSFnobody --key ec384
expect 2 "not a name at all" -- "$BIN" device add "1 phone" --any-name --operation install --auth null
expect 0 "add --help names the rule" -- "$BIN" device add --help
contains "$WORK/out" "--any-name" "add --help: --any-name"
contains "$WORK/out" "SEP + 12 hex digits" "add --help: the rule"

printf '%s\nSEP0000000000A1,install,null,,,\nsep0000000000a2,install,null,,,\nBOTjdoe,install,null,,,\n' "$HDR" >"$WORK/names.csv"
expect 2 "import other form without --any-name" -- "$BIN" device import "$WORK/names.csv"
contains "$WORK/err" "names.csv:4: 'BOTjdoe'" "import: the other-form row named"
contains "$WORK/err" "nothing was imported" "import: nothing imported"
expect 1 "nothing imported" -- "$BIN" device show SEP0000000000A1
expect 0 "import with --any-name" -- "$BIN" device import "$WORK/names.csv" --any-name
contains "$WORK/err" "names.csv:3: device name upper-cased to 'SEP0000000000A2'" "import: upper-case notice"
expect 0 "upper-cased row stored" -- "$BIN" device show SEP0000000000A2
printf '%s\nSEP0000000000A,install,null,,,\n' "$HDR" >"$WORK/short.csv"
expect 1 "import short SEP name" -- "$BIN" device import "$WORK/short.csv" --any-name
contains "$WORK/err" "short.csv:2: column 'name': 'SEP0000000000A' starts with SEP" "import: short SEP name refused"

# --- a dry run creates nothing, not even the store ---------------------------
expect 0 "dry run before any store" -- "$BIN" device import "$WORK/names.csv" --any-name --dry-run --data-dir "$WORK/none"
contains "$WORK/out" "all 3 rows would be added" "dry run without a store: every row added"
contains "$WORK/out" "dry run: nothing was changed" "dry run without a store: nothing changed"
[ ! -e "$WORK/none" ] && pass || fail "dry run created the data directory"
printf '%s\nSEP0000000000A1,install,string,,,\n' "$HDR" >"$WORK/nostring.csv"
expect 1 "dry run without a store: a string row without a string" -- "$BIN" device import "$WORK/nostring.csv" --dry-run --data-dir "$WORK/none"
contains "$WORK/err" "nostring.csv:2: column 'auth_string': required" "dry run without a store: the missing string named"
[ ! -e "$WORK/none" ] && pass || fail "dry run created the data directory"

# --- deadlines ("completes by") -------------------------------------------------
export TZ=XST-5 # UTC+5, named XST: a POSIX TZ string needs no zone database
D=SEP0000000000D1
expect 0 "deadline in local time" -- "$BIN" device add $D --operation install --auth null --completes-by 2030-06-01T09:00
lacks "$WORK/err" "warning" "future deadline: no warning"
expect 0 "show --json" -- "$BIN" device show $D --json
json_ok "$WORK/out" "d['completes_by']=='2030-06-01T04:00:00Z'" "local time stored as UTC (TZ respected)"
expect 0 "show" -- "$BIN" device show $D
contains "$WORK/out" "2030-06-01 09:00:00 XST (2030-06-01T04:00:00Z)" "show: local time with the zone"
expect 0 "deadline with an offset" -- "$BIN" device set $D --completes-by 2030-06-01T09:00+02:00
expect 0 "show --json" -- "$BIN" device show $D --json
json_ok "$WORK/out" "d['completes_by']=='2030-06-01T07:00:00Z'" "offset applied"
expect 0 "date alone" -- "$BIN" device set $D --completes-by 2030-06-01
expect 0 "show --json" -- "$BIN" device show $D --json
json_ok "$WORK/out" "d['completes_by']=='2030-06-01T00:00:00Z'" "a date alone is 00:00 UTC"
expect 0 "deadline in the past" -- "$BIN" device set $D --completes-by 2020-01-01T00:00Z
contains "$WORK/err" "warning: --completes-by 2020-01-01 05:00:00 XST (2020-01-01T00:00:00Z) is in the past" "past deadline: warning"
expect 0 "show" -- "$BIN" device show $D
contains "$WORK/out" "(past)" "show marks a past deadline"
expect 2 "not a deadline" -- "$BIN" device set $D --completes-by 2030-06-01T9:00
contains "$WORK/err" "00:00 UTC that day" "bad deadline: the forms are named"
expect 0 "add --help documents deadlines" -- "$BIN" device add --help
contains "$WORK/out" "local time (the TZ environment variable)" "help: local time"
contains "$WORK/out" "+HH:MM or -HH:MM" "help: offsets"
printf '%s\nSEP0000000000D2,install,null,,,2020-01-01\nSEP0000000000D3,install,null,,,2019-01-01\nSEP0000000000D4,install,null,,,2030-01-01T08:00\n' "$HDR" >"$WORK/dl.csv"
expect 0 "import with past deadlines" -- "$BIN" device import "$WORK/dl.csv"
contains "$WORK/err" "dl.csv:2: completes_by 2020-01-01 05:00:00 XST (2020-01-01T00:00:00Z) is in the past (2 rows with a past deadline)" "import: past deadlines warned"
expect 0 "show --json" -- "$BIN" device show SEP0000000000D4 --json
json_ok "$WORK/out" "d['completes_by']=='2030-01-01T03:00:00Z'" "import: local time"
unset TZ

# --- device list: filters and the deadline column -----------------------------
export CAPSTAN_DATA_DIR="$WORK/list"
new_store
export TZ=XST-5
"$BIN" device add SEP0000AA000001 --operation install --auth null --completes-by 2030-06-01T09:00 >/dev/null 2>&1
"$BIN" device add SEP0000AA000002 --operation delete --auth lsc >/dev/null 2>&1
"$BIN" device add SEP0000BB000003 --operation install --auth string --auth-string 1234 >/dev/null 2>&1
"$BIN" device add SEP0000BB000004 --operation none --auth mic >/dev/null 2>&1
list_names() { # ARGS...: the names `device list --json ARGS` prints, sorted, comma-separated
  "$BIN" device list --json "$@" 2>"$WORK/err" | python3 -c 'import json,sys; print(",".join(sorted(x["name"] for x in json.load(sys.stdin))))'
}
same() { [ "$1" = "$2" ] && pass || fail "$3: got '$1', want '$2'"; }
same "$(list_names --prefix SEP0000AA)" "SEP0000AA000001,SEP0000AA000002" "list --prefix"
same "$(list_names --name-prefix SEP0000BB)" "SEP0000BB000003,SEP0000BB000004" "list --name-prefix"
same "$(list_names --operation install)" "SEP0000AA000001,SEP0000BB000003" "list --operation"
same "$(list_names --auth lsc)" "SEP0000AA000002" "list --auth"
same "$(list_names --status none)" "SEP0000BB000004" "list --status none"
same "$(list_names --status pending --operation install --prefix SEP0000BB)" "SEP0000BB000003" "filters combine"
same "$(list_names --status in-progress)" "" "list --status in-progress"
same "$(list_names --status in_progress)" "" "the metric spelling is taken"
expect 2 "list --status bad" -- "$BIN" device list --status running
head -1 "$WORK/err" >"$WORK/err1"
contains "$WORK/err1" "pending,in-progress,succeeded" "status choices use the CLI spelling"
lacks "$WORK/err1" "in_progress" "status choices: one spelling"
expect 0 "list text" -- "$BIN" device list
contains "$WORK/out" "DEADLINE" "list: deadline column"
contains "$WORK/out" "2030-06-01 09:00 XST" "list: deadline in local time with the zone"
expect 0 "list --help" -- "$BIN" device list --help
contains "$WORK/out" "metric label" "list --help: the metric label spelling"
unset TZ

tally_exit
