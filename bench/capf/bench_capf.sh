#!/usr/bin/env bash
# CAPF enrollment benchmark: enrollments/s at several concurrencies, where the
# CPU goes, memory per idle session, and the crypto bound of this machine.
#
#   bench/capf/bench_capf.sh [--own-group] [--runs 3] [--phones 3000] [--concurrency "100 1000 10000"]
#                            [--hold 10000] [--build build] [--pin] [--ca-signed]
#                            [--store lmdb|postgresql|both] [--pg-cpu server|sim] [--pg-dir DIR]
#
# Starts `capstan serve` on loopback (port 0) with a fresh data directory,
# imports the devices, runs capstan-bench against it and prints one line per
# run plus medians. Needs a built tree (scripts/run.sh or cmake --build).
#
# The crypto bound: one RSA-2048 private operation for the CAPF key in the
# TLS handshake and one for the LSC signature per enrollment, at the rate
# `bssl-tool speed` measures on one core, times the cores the server has.
# This machine is shared and its speed drifts, so the bound is measured right
# before and right after every run, and each run is compared with the higher
# of the two.
#
# Two set-ups:
#   default  server and phone simulator share all cores; the bound counts
#            all cores, so the simulator's own CPU counts against the server.
#   --pin    the server runs on CPU 0 alone and the simulator on the others
#            (taskset), as with phones on the network; the bound counts one
#            core. This measures the server, not the server plus its load.
# Either way each run also reports the CPU per enrollment of the server and
# of the simulator (/proc/PID/stat and getrusage), and the share of the
# server's CPU that is the two RSA operations.
#
# --ca-signed: the CAPF is signed by an enterprise CA two levels up (openssl
# makes a root and an intermediate; `capstan cert capf csr --new-key` and
# `import --trust-root`), so the handshake sends the CAPF and the
# intermediate and LSCs chain to the root (capf-lifecycle.md). Compare with
# a self-signed run: bench/capf/ca_vs_self.sh alternates the two.
#
# --store (issue 12): lmdb (default) or postgresql: the data directory's
# store in PostgreSQL (`capstan init --store URL`), a fresh database per
# server start in a private cluster (tests/tools/pg_cluster.sh: PostgreSQL
# 15 on loopback, TLS, fsync and synchronous_commit on) that the script
# starts and stops, or the running one in --pg-dir DIR. Each run then also
# prints the database's CPU per enrollment (utime + stime of every process
# of the cluster, plus what the postmaster reaped from children that
# exited), the database's commits (pg_stat_database.xact_commit of the
# store's database: read and write transactions), the server's group
# commits (capstan_storage_commits_total: write transactions) and
# enrollments per group commit. --pg-cpu: with --pin, where the cluster
# runs: on the simulators' CPU (sim, the default: the server's core is the
# server's alone, as a deployment's database is on a host of its own; the
# simulators use well under half of that CPU, so the phones are not slowed)
# or on the server's CPU (server: the database's CPU is charged to the
# server's one core, which no deployment does; the ratio then measures the
# database's CPU per enrollment as much as the node's rate). --store
# both: --runs rounds per concurrency, each an LMDB run and a PostgreSQL run (one each, the order alternating by round,
# one cluster for all), then the medians and the ratio PostgreSQL / LMDB
# per round and the median of the ratios.
#
# --own-group (first argument; root): the script runs in a session of its
# own whose scheduling group has nice -20, as bench/ca/est_rate.sh does
# (the kernel shares CPU between sessions first); the PostgreSQL cluster
# (pg_ctl starts it in a session of its own) gets its group set to -20 too.
set -euo pipefail
if [ "${1:-}" = --own-group ]; then
  shift
  export CAPSTAN_BENCH_OWN_GROUP=1
  exec setsid bash -c 'echo -20 >/proc/self/autogroup && exec nice -n -10 "$0" "$@"' "$0" "$@"
fi
self=$(readlink -f "$0")
cd "$(dirname "$0")/../.."
runs=3 phones=3000 concurrencies="100 1000 10000" hold=10000 build=build pin=0 ca_signed=0
store=lmdb pg_cpu=sim pg_dir=
all_args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --phones) phones=$2; shift 2 ;;
    --concurrency) concurrencies=$2; shift 2 ;;
    --hold) hold=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --pin) pin=1; shift ;;
    --ca-signed) ca_signed=1; shift ;;
    --store) store=$2; shift 2 ;;
    --pg-cpu) pg_cpu=$2; shift 2 ;;
    --pg-dir) pg_dir=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
case "$store" in lmdb | postgresql | both) ;; *) echo "--store lmdb|postgresql|both" >&2; exit 2 ;; esac
case "$pg_cpu" in server | sim) ;; *) echo "--pg-cpu server|sim" >&2; exit 2 ;; esac
capstan=$build/capstan bench=$build/capstan-bench
cores=$(nproc)
server_cpu=() sim_cpu=() server_cores=$cores
if [ "$pin" = 1 ]; then
  [ "$cores" -ge 2 ] || { echo "--pin needs at least 2 cores" >&2; exit 2; }
  server_cpu=(taskset -c 0) sim_cpu=(taskset -c "1-$((cores - 1))") server_cores=1
fi
pg_tool=tests/tools/pg_cluster.sh
pg_bin=${CAPSTAN_PG_BIN:-/usr/lib/postgresql/15/bin}
pg_own=0 # this script started the cluster (and stops it)
# Starts the private cluster in $pg_dir on the CPUs of --pg-cpu.
pg_start() {
  local cpu=()
  [ "$pg_cpu" = server ] && cpu=("${server_cpu[@]}") || cpu=("${sim_cpu[@]}")
  pg_dir=$(mktemp -d /tmp/capstan-pgb.XXXXXX)
  pg_own=1
  "${cpu[@]}" "$pg_tool" start "$pg_dir" >/dev/null || { echo "the PostgreSQL cluster did not start" >&2; exit 1; }
  if [ "${CAPSTAN_BENCH_OWN_GROUP:-0}" = 1 ]; then
    echo -20 >/proc/"$(head -1 "$pg_dir/pgdata/postmaster.pid")"/autogroup || true
  fi
}
pg_stop() { [ "$pg_own" = 1 ] && [ -n "$pg_dir" ] && { "$pg_tool" stop "$pg_dir" >/dev/null 2>&1 || true; rm -rf "$pg_dir"; }; pg_own=0; }

if [ "$store" = both ]; then
  [ -n "$pg_dir" ] || pg_start
  trap pg_stop EXIT
  median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
  # The other options as given, less --store/--runs/--hold/--pg-dir.
  pass=() i=0
  while [ $i -lt ${#all_args[@]} ]; do
    case "${all_args[$i]}" in
      --store | --runs | --hold | --pg-dir | --concurrency) i=$((i + 2)) ;;
      *) pass+=("${all_args[$i]}"); i=$((i + 1)) ;;
    esac
  done
  one() { # STORE C: one run's line for STORE at concurrency C (stdout of the run kept in $work_both)
    "$self" "${pass[@]}" --store "$1" --runs 1 --hold 0 --concurrency "$2" --pg-dir "$pg_dir" | tee -a "$log_both" |
      grep "^concurrency=$2 run=1 "
  }
  log_both=$(mktemp /tmp/capstan-bench-both.XXXXXX)
  echo "store=both: every run's output in $log_both"
  for c in $concurrencies; do
    l_rates=() p_rates=() ratios=()
    for r in $(seq 1 "$runs"); do
      if [ $((r % 2)) = 1 ]; then l=$(one lmdb "$c"); p=$(one postgresql "$c"); else p=$(one postgresql "$c"); l=$(one lmdb "$c"); fi
      echo "lmdb       round=$r ${l#concurrency=$c run=1 }"
      echo "postgresql round=$r ${p#concurrency=$c run=1 }"
      lr=$(sed 's/.*enrollments_per_s=\([0-9.]*\).*/\1/' <<<"$l") pr=$(sed 's/.*enrollments_per_s=\([0-9.]*\).*/\1/' <<<"$p")
      ratio=$(awk -v a="$pr" -v b="$lr" 'BEGIN {printf "%.3f", a / b}')
      echo "concurrency=$c round=$r lmdb_per_s=$lr postgresql_per_s=$pr ratio=$ratio load=$(cut -d' ' -f1-3 /proc/loadavg)"
      l_rates+=("$lr") p_rates+=("$pr") ratios+=("$ratio")
    done
    echo "concurrency=$c median_lmdb_per_s=$(printf '%s\n' "${l_rates[@]}" | median)" \
      "median_postgresql_per_s=$(printf '%s\n' "${p_rates[@]}" | median)" \
      "median_ratio=$(printf '%s\n' "${ratios[@]}" | median)"
  done
  exit 0
fi

work=$(mktemp -d /tmp/capstan-bench.XXXXXX)
server_pid=
if [ "$store" = postgresql ] && [ -z "$pg_dir" ]; then pg_start; fi
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; pg_stop; }
trap cleanup EXIT

# An enterprise root and intermediate (openssl) sign the CAPF's CSR with a
# subordinate-CA profile; the chain and root go in with the import.
make_ca_signed_capf() {
  local ca=$work/ca
  rm -rf "$ca"; mkdir -p "$ca"
  printf '%s\n' '[root]' 'basicConstraints=critical,CA:TRUE' 'keyUsage=critical,keyCertSign,cRLSign,digitalSignature' \
    'subjectKeyIdentifier=hash' '[inter]' 'basicConstraints=critical,CA:TRUE,pathlen:1' \
    'keyUsage=critical,keyCertSign,cRLSign,digitalSignature' 'subjectKeyIdentifier=hash' \
    'authorityKeyIdentifier=keyid' '[capf]' 'basicConstraints=critical,CA:TRUE,pathlen:0' \
    'keyUsage=critical,keyCertSign,digitalSignature' 'extendedKeyUsage=serverAuth,1.3.6.1.5.5.7.3.5' \
    'subjectKeyIdentifier=hash' 'authorityKeyIdentifier=keyid' >"$ca/ext.cnf"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$ca/root.key" -out "$ca/root.csr" \
    -subj "/O=Bench/CN=Bench Root CA" 2>/dev/null
  openssl x509 -req -in "$ca/root.csr" -signkey "$ca/root.key" -days 30 -sha256 \
    -extfile "$ca/ext.cnf" -extensions root -out "$ca/root.pem" 2>/dev/null
  openssl req -new -newkey rsa:2048 -nodes -keyout "$ca/inter.key" -out "$ca/inter.csr" \
    -subj "/O=Bench/CN=Bench Issuing CA" 2>/dev/null
  openssl x509 -req -in "$ca/inter.csr" -CA "$ca/root.pem" -CAkey "$ca/root.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$ca/ext.cnf" -extensions inter -out "$ca/inter.pem" 2>/dev/null
  "$capstan" cert capf csr --new-key --key rsa2048 --out "$ca/capf.csr" --data-dir "$work/d" 2>/dev/null
  openssl x509 -req -in "$ca/capf.csr" -CA "$ca/inter.pem" -CAkey "$ca/inter.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$ca/ext.cnf" -extensions capf -out "$ca/capf.pem" 2>/dev/null
  cat "$ca/inter.pem" "$ca/root.pem" >"$ca/chain.pem"
  "$capstan" cert capf import "$ca/capf.pem" --chain "$ca/chain.pem" --trust-root --data-dir "$work/d" >/dev/null
}

start_server() {
  rm -rf "$work/d" "$work/log"
  if [ "$store" = postgresql ]; then
    pg_url=$("$pg_tool" newdb "$pg_dir" bench)
    pg_db=$(sed 's|.*/\([^/?]*\)?.*|\1|' <<<"$pg_url")
    "$capstan" init --data-dir "$work/d" --store "$pg_url" >/dev/null
  else
    "$capstan" init --data-dir "$work/d" >/dev/null
  fi
  [ "$ca_signed" = 1 ] && make_ca_signed_capf
  # Every run enrolls fresh devices: runs x max(phones, concurrency) per
  # concurrency, plus the parked ones.
  local total=$hold c
  for c in $concurrencies; do total=$(( total + runs * (phones > c ? phones : c) )); done
  { echo "name,operation,auth_mode,auth_string,key,completes_by"
    "$bench" --connect 127.0.0.1:1 --phones "$total" --print-names | sed 's/$/,install,null,,rsa2048,/'; } > "$work/devices.csv"
  "$capstan" device import "$work/devices.csv" --data-dir "$work/d" >/dev/null
  # One source address stands for thousands of phones here.
  "$capstan" config set max-connections-per-address 100000 --data-dir "$work/d" >/dev/null
  "${server_cpu[@]}" "$capstan" serve --init --data-dir "$work/d" --capf-listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --http-listen off --tftp-listen off 2>"$work/log" &
  server_pid=$!
  for _ in $(seq 1 100); do grep -q 'event=ready' "$work/log" 2>/dev/null && break; sleep 0.1; done
  port=$(grep -o 'capf_port=[0-9]*' "$work/log" | head -1 | cut -d= -f2)
  admin=$(grep -o 'admin_port=[0-9]*' "$work/log" | head -1 | cut -d= -f2)
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# RSA-2048 signatures per second on one core, now (on the server's core).
sign_rate() {
  "${server_cpu[@]}" bssl-tool speed -filter 'RSA 2048' -timeout 1 2>/dev/null |
    awk '/RSA 2048 signing/ {gsub(/\(/,"",$(NF-1)); print $(NF-1)}'
}
# Server CPU seconds so far (user + system, all threads).
server_cpu_s() { awk -v t="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / t}' /proc/"$server_pid"/stat; }
# The cluster's CPU seconds so far: every process running in its data
# directory (utime + stime), plus the postmaster's reaped children.
pg_cpu_s() {
  local p pm t=0 s
  pm=$(head -1 "$pg_dir/pgdata/postmaster.pid")
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/cwd" 2>/dev/null)" = "$(cd "$pg_dir" && pwd -P)/pgdata" ] || continue
    s=$(awk '{print $14 + $15}' "$p/stat" 2>/dev/null) || continue
    t=$((t + ${s:-0}))
  done
  s=$(awk '{print $16 + $17}' /proc/"$pm"/stat)
  awk -v a="$t" -v b="$s" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.3f", (a + b) / hz}'
}
pg_sql() { PGCONNECT_TIMEOUT=10 timeout 30 "$pg_bin/psql" -X -qAt "$pg_url" -c "$1"; }
pg_commits() { pg_sql "SELECT xact_commit FROM pg_stat_database WHERE datname = '$pg_db'"; }
metric() { curl -s "http://127.0.0.1:$admin/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

echo "machine: $cores cores, $(awk '/MemTotal/ {print int($2/1024/1024)" GiB"}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%MZ)"
if [ "$pin" = 1 ]; then
  echo "set-up: server pinned to CPU 0, simulator on CPUs 1-$((cores - 1)); bound = 1 core"
else
  echo "set-up: server and simulator share all $cores cores; bound = $cores cores"
fi
[ "$ca_signed" = 1 ] && echo "CAPF: CA-signed (root -> intermediate -> CAPF)" || echo "CAPF: self-signed"
if [ "$store" = postgresql ]; then
  echo "store: postgresql ($("$pg_bin/postgres" --version), cluster in $pg_dir on loopback, TLS, fsync on; CPUs $(taskset -pc "$(head -1 "$pg_dir/pgdata/postmaster.pid")" | sed 's/.*: //'))"
else
  echo "store: lmdb"
fi
echo "bound per run = rsa2048_signs_per_s_one_core x $server_cores / 2 (2 RSA-2048 private operations per enrollment: handshake + LSC)"

# The simulator's key pool is generated once, before anything is measured.
"$bench" --connect 127.0.0.1:1 --phones 1 --key-cache "$work/keys" >/dev/null 2>&1 || true
start_server
first=0
for c in $concurrencies; do
  rates=() fractions=() shares=()
  for r in $(seq 1 "$runs"); do
    n=$phones; [ "$n" -lt "$c" ] && n=$c
    sign_before=$(sign_rate)
    cpu0=$(server_cpu_s)
    # The backends report their counts when idle (within 10 s, PG 15's
    # PGSTAT_IDLE_INTERVAL): xact_commit is read 11 s after the last work.
    if [ "$store" = postgresql ]; then sleep 11; pg0=$(pg_cpu_s) x0=$(pg_commits) w0=$(metric capstan_storage_commits_total); fi
    # The simulator's CPU is its rusage; the JSON line gains "sim_cpu_s".
    out=$("${sim_cpu[@]}" python3 -c '
import json, resource, subprocess, sys
p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
d = json.loads(p.stdout.strip().splitlines()[-1])
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
d["sim_cpu_s"] = ru.ru_utime + ru.ru_stime
print(json.dumps(d))' "$bench" --connect 127.0.0.1:"$port" --phones "$n" --first "$first" \
      --concurrency "$c" --key-cache "$work/keys" --json)
    cpu1=$(server_cpu_s)
    if [ "$store" = postgresql ]; then pg1=$(pg_cpu_s) w1=$(metric capstan_storage_commits_total); sleep 11; x1=$(pg_commits); fi
    # The higher of the two readings: a burst of other work during one of
    # them must not lower the bound (and flatter the fraction).
    sign=$(sign_rate)
    sign=$(awk -v a="$sign_before" -v b="$sign" 'BEGIN {print (a > b) ? a : b}')
    bound=$(awk -v s="$sign" -v c="$server_cores" 'BEGIN {printf "%.0f", s * c / 2}')
    first=$((first + n))
    read -r rate fails p99 ok sim_s < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["enrollments_per_s"], d["errors"], d["latency_ms"]["p99"], d["enrollments"], d["sim_cpu_s"])' "$out")
    line=$(awk -v rate="$rate" -v bound="$bound" -v sign="$sign" -v s0="$cpu0" -v s1="$cpu1" \
      -v ok="$ok" -v sim="$sim_s" 'BEGIN {
        srv = (s1 - s0) * 1000 / ok; rsa = 2 * 1000 / sign
        printf "fraction_of_bound=%.2f server_ms_per_enrollment=%.3f sim_ms_per_enrollment=%.3f rsa_share_of_server_cpu=%.2f",
          rate / bound, srv, sim * 1000 / ok, rsa / srv }')
    pgline=
    if [ "$store" = postgresql ]; then
      pgline=$(awk -v a="$pg0" -v b="$pg1" -v x0="$x0" -v x1="$x1" -v w0="${w0:-0}" -v w1="${w1:-0}" -v ok="$ok" -v rate="$rate" 'BEGIN {
        secs = ok / rate
        printf " pg_ms_per_enrollment=%.3f db_xact_commits=%d db_commits_per_s=%.0f group_commits=%d group_commits_per_s=%.0f enrollments_per_group_commit=%.2f",
          (b - a) * 1000 / ok, x1 - x0, (x1 - x0) / secs, w1 - w0, (w1 - w0) / secs, (w1 > w0) ? ok / (w1 - w0) : 0 }')
    fi
    echo "concurrency=$c run=$r phones=$n enrollments_per_s=$rate bound=$bound $line p99_ms=$p99 failures=$fails$pgline"
    rates+=("$rate")
    fractions+=("$(sed 's/.*fraction_of_bound=\([0-9.]*\).*/\1/' <<<"$line")")
    shares+=("$(sed 's/.*rsa_share_of_server_cpu=\([0-9.]*\).*/\1/' <<<"$line")")
  done
  echo "concurrency=$c median_enrollments_per_s=$(printf '%s\n' "${rates[@]}" | median)" \
    "median_fraction_of_bound=$(printf '%s\n' "${fractions[@]}" | median)" \
    "median_rsa_share_of_server_cpu=$(printf '%s\n' "${shares[@]}" | median)"
done

[ "$hold" -gt 0 ] || exit 0
echo "== idle sessions: $hold phones parked in key generation =="
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
start_server
rss0=$(awk '/VmRSS/ {print $2}' /proc/"$server_pid"/status)
"${sim_cpu[@]}" "$bench" --connect 127.0.0.1:"$port" --phones "$hold" --concurrency "$hold" --first 0 --hold \
  --hold-seconds 60 --keygen-delay 60 --key-cache "$work/keys" >"$work/hold.log" 2>&1 &
bench_pid=$!
for _ in $(seq 1 600); do
  held=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^capstan_capf_keygen_active / {print $2}')
  [ "${held:-0}" -ge "$hold" ] && break
  sleep 0.5
done
rss1=$(awk '/VmRSS/ {print $2}' /proc/"$server_pid"/status)
echo "held_sessions=$held rss_before_kib=$rss0 rss_held_kib=$rss1 kib_per_session=$(awk -v a="$rss0" -v b="$rss1" -v n="$held" 'BEGIN {printf "%.2f", (b - a) / n}')"
kill "$bench_pid" 2>/dev/null || true
wait "$bench_pid" 2>/dev/null || true
