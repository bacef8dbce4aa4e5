# Pass/fail tally for the integration scripts that run every check and report
# them all at the end (test_cli.sh, test_cli_server.sh): source it, call
# `pass` or `fail MESSAGE` once per check, and end the script with
# `tally_exit` (its status is the script's: 0 only when nothing failed).
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
