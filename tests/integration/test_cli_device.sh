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

# expect CODE DESCRIPTION -- command...: runs it, keeps stdout/stderr in
# $WORK/out and $WORK/err, checks the exit code.
expect() {
  local want="$1" what="$2"
  shift 3
  "$@" >"$WORK/out" 2>"$WORK/err"
  local got=$?
  if [ "$got" -ne "$want" ]; then
    fail "$what: exit $got, want $want: $*"
    sed 's/^/  stderr: /' "$WORK/err" >&2
  else
    pass
  fi
}
contains() { # FILE TEXT DESCRIPTION
  if grep -qF -- "$2" "$1"; then pass; else
    fail "$3: '$2' not in $(basename "$1"):"
    sed 's/^/  /' "$1" >&2
  fi
}
lacks() {
  if grep -qF -- "$2" "$1"; then
    fail "$3: '$2' unexpectedly in $(basename "$1")"
  else pass; fi
}
json_ok() { # FILE PYTHON-EXPR-ON-d DESCRIPTION
  if python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert ($2), d" "$1" 2>"$WORK/pyerr"; then
    pass
  else
    fail "$3"
    sed 's/^/  /' "$WORK/pyerr" "$1" >&2
  fi
}
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

tally_exit
