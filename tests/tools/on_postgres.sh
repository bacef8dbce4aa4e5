#!/usr/bin/env bash
# on_postgres.sh CMD ARGS...: runs CMD against a private PostgreSQL cluster
# (tests/tools/pg_cluster.sh) made for it in a temporary directory, then
# stops the cluster and removes the directory. Exits with CMD's status (1
# when the cluster does not start).
#
# CMD sees:
#   CAPSTAN_TEST_PG  the cluster's directory (pg_cluster.sh createdb
#                    "$CAPSTAN_TEST_PG" NAME makes another database; the
#                    integration helpers make one per data directory)
#   CAPSTAN_STORE    the URL of a fresh database "capstan" in it, which
#                    `capstan init` and `serve --init` use without --store
#
# The cluster is stopped whatever way this script ends; if it is killed
# outright (SIGKILL, e.g. a ctest timeout), a detached guard stops the
# cluster and removes the directory once this script's process is gone.
# CAPSTAN_PG_TMPDIR: where the cluster's directory is made (default /tmp).

set -uo pipefail

TOOLS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PGC="$TOOLS/pg_cluster.sh"
[[ $# -ge 1 ]] || {
  echo "usage: $0 CMD [ARGS...]" >&2
  exit 2
}

# Under /tmp, not $TMPDIR: the unix socket's path must stay short (107
# bytes) and, as root, every parent must let the cluster's user through.
PG_DIR=$(mktemp -d "${CAPSTAN_PG_TMPDIR:-/tmp}/capstan-pg.XXXXXX") || exit 1
CHILD=""

# shellcheck disable=SC2317 # called by the traps
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [[ -n "$CHILD" ]] && kill -0 "$CHILD" 2>/dev/null; then
    kill -TERM "$CHILD" 2>/dev/null
    local i
    for ((i = 0; i < 150; i++)); do
      kill -0 "$CHILD" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$CHILD" 2>/dev/null
    wait "$CHILD" 2>/dev/null
  fi
  "$PGC" stop "$PG_DIR" || echo "on_postgres.sh: the cluster in $PG_DIR did not stop cleanly" >&2
  local g
  g=$(cat "$PG_DIR/guard.pid" 2>/dev/null)
  [[ -n "$g" ]] && kill -TERM "$g" 2>/dev/null
  if [[ "${CAPSTAN_IT_KEEP:-0}" == 1 ]]; then
    echo "kept $PG_DIR" >&2
  else
    rm -rf "$PG_DIR"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# The guard: detached (not a child of this script, so a kill of the process
# tree leaves it), it stops the cluster once this script is gone.
(
  # shellcheck disable=SC2016 # expanded by the inner bash
  setsid bash -c '
    echo $$ >"$2/guard.pid"
    trap "exit 0" TERM
    while kill -0 "$1" 2>/dev/null; do sleep 1 & wait $!; done
    [[ -d "$2" ]] || exit 0
    "$3" stop "$2" || "$3" kill "$2"
    rm -rf "$2"' _ "$$" "$PG_DIR" "$PGC" </dev/null >/dev/null 2>&1 &
)

"$PGC" start "$PG_DIR" >/dev/null || exit 1
CAPSTAN_STORE=$("$PGC" createdb "$PG_DIR" capstan) || exit 1
export CAPSTAN_TEST_PG="$PG_DIR" CAPSTAN_STORE
echo "on_postgres.sh: PostgreSQL at $(cat "$PG_DIR/url") ($PG_DIR); CAPSTAN_STORE=$CAPSTAN_STORE" >&2

# In the background (with our stdin) so that a signal to this script is
# handled at once: cleanup passes SIGTERM on and waits.
"$@" <&0 &
CHILD=$!
rc=0
wait "$CHILD" || rc=$?
CHILD=""
exit "$rc"
