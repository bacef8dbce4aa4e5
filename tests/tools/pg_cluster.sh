#!/usr/bin/env bash
# A private PostgreSQL 15 cluster for capstan's tests (issue 12), on loopback
# TCP with TLS only. A test aid: nothing here is meant for production.
#
#   pg_cluster.sh start DIR          initdb DIR/pgdata and start it; prints the
#                                    base URL postgresql://capstan@127.0.0.1:PORT
#                                    (also written to DIR/url)
#   pg_cluster.sh createdb DIR NAME  a new database NAME ([a-z0-9_], <= 63);
#                                    prints its URL .../NAME?sslmode=require
#   pg_cluster.sh newdb DIR [PREFIX] a new database with a name of its own
#                                    (PREFIX_<pid>_<ns>, default prefix d);
#                                    prints its URL as createdb
#   pg_cluster.sh stop DIR           fast shutdown (no-op when not running)
#   pg_cluster.sh kill DIR           SIGKILL the postmaster: an outage (its
#                                    backends then exit; waited for, bounded)
#   pg_cluster.sh restart DIR        start again on the same port after stop/kill
#   pg_cluster.sh url DIR            prints the base URL
#
# The cluster: listen_addresses = 127.0.0.1 only, on a free port; its unix
# socket in DIR/sock; TLS with a self-signed certificate made here
# (DIR/server.crt, CN and subjectAltName 127.0.0.1); pg_hba lets in only
# `hostssl` from 127.0.0.1/32 (trust) and the local socket, and rejects TCP
# without TLS; fsync and synchronous_commit on (durability as in production);
# one role, `capstan`, the bootstrap superuser. The server's log is
# DIR/postgres.log.
#
# Run as root, the cluster runs as an unprivileged user (initdb refuses
# root): CAPSTAN_PG_USER, default nobody; DIR is chowned to it and every
# parent of DIR must let it through (checked). PostgreSQL's binaries:
# CAPSTAN_PG_BIN, default /usr/lib/postgresql/15/bin (Debian's postgresql-15).
# Debian's own cluster (pg_ctlcluster, port 5432) is neither used nor touched.
#
# Every wait is bounded; a failed start leaves nothing running.

set -uo pipefail

PG_BIN="${CAPSTAN_PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_RUN_USER="${CAPSTAN_PG_USER:-nobody}"
PG_ROLE=capstan

die() {
  echo "pg_cluster.sh: $*" >&2
  exit 1
}

usage() {
  sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# as_owner CMD...: runs CMD as the cluster's owner (the unprivileged user when
# we are root), in DIR (a cwd the user may not enter makes initdb complain).
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    (cd "$DIR" && runuser -u "$PG_RUN_USER" -- "$@")
  else
    (cd "$DIR" && "$@")
  fi
}

# The postmaster's pid from postmaster.pid, when that process is alive.
postmaster_pid() {
  local pid
  [[ -f "$DIR/pgdata/postmaster.pid" ]] || return 1
  pid=$(head -n1 "$DIR/pgdata/postmaster.pid" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # A recycled pid is not ours: the process must run in our data directory.
  [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$DIR/pgdata" ]] || return 1
  echo "$pid"
}

free_port() {
  local py=python3
  [[ -x /usr/bin/python3 ]] && py=/usr/bin/python3
  "$py" -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# psql_tls DB ARGS...: psql over TLS to the cluster, bounded.
psql_tls() {
  local db=$1
  shift
  PGCONNECT_TIMEOUT=10 timeout 30 "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
    "postgresql://$PG_ROLE@127.0.0.1:$(cat "$DIR/port")/$db?sslmode=require" "$@"
}

# Waits (at most |secs| s) until no process in |pids| is alive.
wait_gone() {
  local secs=$1 i p alive
  shift
  for ((i = 0; i < secs * 10; i++)); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && return 0
    sleep 0.1
  done
  return 1
}

# Kills the postmaster (SIGKILL) and then whatever of its children is left
# after a bound: used by `kill` and when a start or stop fails.
hard_kill() {
  local pid kids
  pid=$(postmaster_pid) || return 0
  kids=$(ps -o pid= --ppid "$pid" 2>/dev/null | tr -d ' ')
  kill -KILL "$pid" 2>/dev/null
  # shellcheck disable=SC2086
  if ! wait_gone 15 "$pid" $kids; then
    # Backends leave on their own when they see the postmaster gone; ones
    # that did not within the bound are ended (they are this cluster's).
    # shellcheck disable=SC2086
    kill -KILL $kids 2>/dev/null
    # shellcheck disable=SC2086
    wait_gone 5 "$pid" $kids || echo "pg_cluster.sh: processes of $DIR still alive" >&2
  fi
  return 0
}

# The cluster's processes (postmaster and children) still running, if any.
leftovers() {
  local p
  for p in /proc/[0-9]*; do
    [[ "$(readlink "$p/cwd" 2>/dev/null)" == "$DIR/pgdata" ]] && echo "${p#/proc/}"
  done
}

# pg_ctl start on the configured port; on failure, nothing stays running.
do_start() {
  local rc=0
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 90 bash -c '
    if [[ $(id -u) -eq 0 ]]; then
      cd "$1" && exec runuser -u "$2" -- "$3/pg_ctl" -D "$1/pgdata" -l "$1/postgres.log" -w -t 60 start
    else
      cd "$1" && exec "$3/pg_ctl" -D "$1/pgdata" -l "$1/postgres.log" -w -t 60 start
    fi' _ "$DIR" "$PG_RUN_USER" "$PG_BIN" >>"$DIR/pg_ctl.log" 2>&1 || rc=$?
  if [[ $rc -ne 0 ]]; then
    hard_kill
    return 1
  fi
  postmaster_pid >/dev/null || return 1
  # Ready for TLS clients as the tests will connect.
  psql_tls postgres -Atc 'select 1' >/dev/null 2>>"$DIR/pg_ctl.log" || {
    hard_kill
    return 1
  }
  return 0
}

cmd_start() {
  [[ -x "$PG_BIN/initdb" ]] || die "$PG_BIN/initdb not found (apt-get install postgresql-15)"
  command -v openssl >/dev/null || die "openssl not found"
  [[ ! -e "$DIR/pgdata" ]] || die "$DIR/pgdata exists: start makes a fresh cluster (restart starts an existing one)"
  mkdir -p "$DIR/sock" || die "cannot make $DIR"
  # A unix socket path is at most 107 bytes.
  ((${#DIR} + 20 < 107)) || die "$DIR is too long for a unix socket path"
  if [[ $(id -u) -eq 0 ]]; then
    id -u "$PG_RUN_USER" >/dev/null 2>&1 || die "user $PG_RUN_USER does not exist (CAPSTAN_PG_USER)"
    chown -R "$PG_RUN_USER:" "$DIR" || die "chown $DIR"
    local d=$DIR
    while [[ "$d" != / ]]; do
      d=$(dirname "$d")
      runuser -u "$PG_RUN_USER" -- test -x "$d" ||
        die "$PG_RUN_USER cannot traverse $d (the cluster runs as $PG_RUN_USER): use a DIR under /tmp or chmod o+x $d"
    done
  fi
  chmod 0700 "$DIR"

  # The server's certificate: self-signed, for 127.0.0.1.
  as_owner openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$DIR/server.key" -out "$DIR/server.crt" >"$DIR/openssl.log" 2>&1 ||
    die "openssl req failed: $(cat "$DIR/openssl.log")"
  chmod 0600 "$DIR/server.key"

  # --no-sync: only initdb's own files are not flushed; the server runs
  # with fsync on.
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 120 bash -c '
    if [[ $(id -u) -eq 0 ]]; then
      cd "$1" && exec runuser -u "$2" -- "$3/initdb" -D "$1/pgdata" -U "$4" -A reject -E UTF8 --locale=C --no-sync --no-instructions
    else
      cd "$1" && exec "$3/initdb" -D "$1/pgdata" -U "$4" -A reject -E UTF8 --locale=C --no-sync --no-instructions
    fi' _ "$DIR" "$PG_RUN_USER" "$PG_BIN" "$PG_ROLE" >"$DIR/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -n 20 "$DIR/initdb.log")"

  cat >"$DIR/pgdata/pg_hba.conf" <<EOF
# capstan tests (tests/tools/pg_cluster.sh): TLS from 127.0.0.1, or the
# local socket in $DIR/sock; TCP without TLS is refused.
local     all all                trust
hostssl   all all 127.0.0.1/32   trust
hostnossl all all 0.0.0.0/0      reject
hostnossl all all ::/0           reject
host      all all 0.0.0.0/0      reject
host      all all ::/0           reject
EOF

  echo "include 'capstan_test.conf'" >>"$DIR/pgdata/postgresql.conf"

  local attempt port
  for attempt in 1 2 3; do
    port=$(free_port) || die "no free port"
    echo "$port" >"$DIR/port"
    cat >"$DIR/pgdata/capstan_test.conf" <<EOF
# capstan tests (tests/tools/pg_cluster.sh)
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$DIR/sock'
ssl = on
ssl_cert_file = '$DIR/server.crt'
ssl_key_file = '$DIR/server.key'
ssl_min_protocol_version = 'TLSv1.2'
fsync = on
synchronous_commit = on
full_page_writes = on
max_connections = 200
shared_buffers = 32MB
log_line_prefix = '%m [%p] %q%u@%d '
log_connections = off
EOF
    if [[ $(id -u) -eq 0 ]]; then
      chown "$PG_RUN_USER:" "$DIR/pgdata/pg_hba.conf" "$DIR/pgdata/capstan_test.conf" "$DIR/port"
    fi
    if do_start; then
      echo "postgresql://$PG_ROLE@127.0.0.1:$port" >"$DIR/url"
      cat "$DIR/url"
      return 0
    fi
    # A port taken between the pick and the bind: try another one.
    grep -qE 'could not bind|Address already in use' "$DIR/postgres.log" 2>/dev/null || break
    echo "pg_cluster.sh: port $port taken (attempt $attempt); another one" >&2
  done
  echo "----- $DIR/pg_ctl.log -----" >&2
  tail -n 20 "$DIR/pg_ctl.log" >&2
  echo "----- $DIR/postgres.log -----" >&2
  tail -n 40 "$DIR/postgres.log" >&2 2>/dev/null
  die "the cluster in $DIR did not start"
}

cmd_restart() {
  [[ -f "$DIR/pgdata/PG_VERSION" && -f "$DIR/port" ]] || die "no cluster in $DIR (start makes one)"
  if postmaster_pid >/dev/null; then
    die "the cluster in $DIR is running (pid $(postmaster_pid)): stop or kill it first"
  fi
  [[ -z "$(leftovers)" ]] || die "processes of $DIR still alive: $(leftovers | tr '\n' ' ')"
  # After a kill: the lock files name a dead postmaster, whose pid another
  # process of the same user might have taken since; nothing of ours runs.
  rm -f "$DIR/pgdata/postmaster.pid" "$DIR"/sock/.s.PGSQL.*.lock
  do_start || {
    tail -n 40 "$DIR/postgres.log" >&2 2>/dev/null
    die "the cluster in $DIR did not restart on port $(cat "$DIR/port")"
  }
  cat "$DIR/url"
}

cmd_stop() {
  [[ -d "$DIR/pgdata" ]] || return 0
  local pid
  pid=$(postmaster_pid) || return 0
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 70 bash -c '
    if [[ $(id -u) -eq 0 ]]; then
      cd "$1" && exec runuser -u "$2" -- "$3/pg_ctl" -D "$1/pgdata" -m fast -w -t 60 stop
    else
      cd "$1" && exec "$3/pg_ctl" -D "$1/pgdata" -m fast -w -t 60 stop
    fi' _ "$DIR" "$PG_RUN_USER" "$PG_BIN" >>"$DIR/pg_ctl.log" 2>&1 || {
    echo "pg_cluster.sh: fast shutdown of $DIR failed; SIGKILL" >&2
    hard_kill
    return 1
  }
  wait_gone 10 "$pid" || {
    hard_kill
    return 1
  }
  return 0
}

cmd_kill() {
  postmaster_pid >/dev/null || die "the cluster in $DIR is not running"
  hard_kill
  [[ -z "$(leftovers)" ]] || die "processes of $DIR still alive: $(leftovers | tr '\n' ' ')"
}

cmd_createdb() {
  local name=$1
  [[ "$name" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "bad database name '$name' ([a-z_][a-z0-9_]*, at most 63)"
  [[ -f "$DIR/url" ]] || die "no cluster in $DIR"
  psql_tls postgres -c "CREATE DATABASE \"$name\" OWNER $PG_ROLE" >/dev/null ||
    die "CREATE DATABASE $name failed"
  echo "$(cat "$DIR/url")/$name?sslmode=require"
}

cmd_newdb() {
  local prefix="${1:-d}"
  prefix="${prefix,,}"
  prefix="${prefix//[^a-z0-9_]/_}"
  cmd_createdb "$(printf '%s_%d_%s' "${prefix:0:30}" "$$" "$(date +%s%N)")"
}

[[ $# -ge 2 ]] || usage
cmd=$1
DIR=$2
[[ -n "$DIR" ]] || usage
[[ "$cmd" == start ]] && mkdir -p "$DIR" 2>/dev/null
DIR=$(cd "$DIR" 2>/dev/null && pwd -P) || die "no directory $2"
case "$cmd" in
  start) cmd_start ;;
  createdb)
    [[ $# -eq 3 ]] || usage
    cmd_createdb "$3"
    ;;
  newdb)
    [[ $# -le 3 ]] || usage
    cmd_newdb "${3:-}"
    ;;
  stop) cmd_stop ;;
  kill) cmd_kill ;;
  restart) cmd_restart ;;
  url)
    [[ -f "$DIR/url" ]] || die "no cluster in $DIR"
    cat "$DIR/url"
    ;;
  *) usage ;;
esac
