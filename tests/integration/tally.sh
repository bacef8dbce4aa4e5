# Pass/fail tally for the integration scripts that run every check and report
# them all at the end (test_cli.sh, test_cli_server.sh): source it, call
# `pass` or `fail MESSAGE` once per check, and end the script with
# `tally_exit` (its status is the script's: 0 only when nothing failed).
# The check helpers below keep their files in $WORK, which the script sets.
failures=0
passes=0

fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}
pass() { passes=$((passes + 1)); }

tally_exit() {
  echo "$passes passed, $failures failed"
  [ "$failures" -eq 0 ]
}

# new_store: in PostgreSQL mode (CAPSTAN_TEST_PG, tests/tools/on_postgres.sh),
# points CAPSTAN_STORE at a new database, for the next data directory the
# script creates (the first one may use the database on_postgres.sh made);
# nothing otherwise.
new_store() {
  [ -n "${CAPSTAN_TEST_PG:-}" ] || return 0
  CAPSTAN_STORE=$("$(dirname "${BASH_SOURCE[0]}")/../tools/pg_cluster.sh" newdb "$CAPSTAN_TEST_PG" \
    "$(basename "$0" .sh)") || {
    echo "FAIL: PostgreSQL mode: no new database in $CAPSTAN_TEST_PG" >&2
    exit 1
  }
  export CAPSTAN_STORE
}

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
