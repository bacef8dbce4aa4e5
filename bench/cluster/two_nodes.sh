#!/usr/bin/env bash
# Two capstan nodes on one PostgreSQL store against one node (issue 12).
#
#   bench/cluster/two_nodes.sh [--own-group] [--runs 3] [--phones 6000] [--concurrency 1000]
#                              [--build build] [--pg-cpu server|sim]
#
# One private PostgreSQL 15 cluster (tests/tools/pg_cluster.sh: loopback,
# TLS, fsync and synchronous_commit on), one database; node A's data
# directory is initialised with `capstan init --store URL`, node B's with
# the same URL (it joins the store). The devices are imported once, through
# A (the store is shared). Both servers run on CPU 0, the simulators on the
# other CPUs, the cluster on CPU 0 too (--pg-cpu server, the default: the
# database's CPU competes with the servers', as it would be charged to the
# server tier) or with the simulators (--pg-cpu sim).
#
# This machine has 2 shared cores: two nodes on the same core are not a
# speed-up. What the comparison measures is the cost of a second node:
# server CPU per enrollment, database CPU per enrollment, and the database's
# commits (the nodes' write transactions are serialised by an advisory lock,
# so two nodes make more, smaller group commits).
#
# Per run, in alternating order: "one" (node A alone serves --phones phones
# at --concurrency; B is stopped) and "two" (A and B both run; two
# simulators, each half the phones at half the concurrency, one per node).
# Every run enrolls fresh devices. Per run it prints:
#   enrollments_per_s    all enrollments / the longest simulator's wall time
#   server_ms_per_enr    CPU (utime + stime, /proc/PID/stat) of every
#                        running server, summed, per enrollment
#   pg_ms_per_enr        CPU of every process of the cluster plus what the
#                        postmaster reaped, per enrollment
#   group_commits        capstan_storage_commits_total, summed over nodes
#                        (write transactions), and per second
#   enr_per_commit       enrollments per group commit
#   xact_commits         pg_stat_database.xact_commit of the store's
#                        database (read 11 s after the work: backends
#                        report when idle), and per second
#   wal_bytes_per_enr    pg_current_wal_lsn() difference per enrollment
# then medians per set-up and the ratios two/one. At the end, the sizes of
# the store's tables (pg_total_relation_size) with their rows, per device
# and per enrollment, for a capacity plan.
set -euo pipefail
if [ "${1:-}" = --own-group ]; then
  shift
  export CAPSTAN_BENCH_OWN_GROUP=1
  exec setsid bash -c 'echo -20 >/proc/self/autogroup && exec nice -n -10 "$0" "$@"' "$0" "$@"
fi
cd "$(dirname "$0")/../.."
runs=3 phones=6000 concurrency=1000 build=build pg_cpu=server
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --phones) phones=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --pg-cpu) pg_cpu=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
case "$pg_cpu" in server | sim) ;; *) echo "--pg-cpu server|sim" >&2; exit 2 ;; esac
cores=$(nproc)
[ "$cores" -ge 2 ] || { echo "needs at least 2 cores" >&2; exit 2; }
capstan=$build/capstan bench=$build/capstan-bench
pg_tool=tests/tools/pg_cluster.sh
pg_bin=${CAPSTAN_PG_BIN:-/usr/lib/postgresql/15/bin}
server_cpu=(taskset -c 0) sim_cpu=(taskset -c "1-$((cores - 1))")
[ "$pg_cpu" = server ] && pg_cpus=("${server_cpu[@]}") || pg_cpus=("${sim_cpu[@]}")
work=$(mktemp -d /tmp/capstan-2n.XXXXXX)
pg_dir=$(mktemp -d /tmp/capstan-pg2.XXXXXX)
declare -A pid=() admin=() port=()
cleanup() {
  local n
  for n in "${!pid[@]}"; do kill "${pid[$n]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$pg_tool" stop "$pg_dir" >/dev/null 2>&1 || true
  rm -rf "$work" "$pg_dir"
}
trap cleanup EXIT

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
hz=$(getconf CLK_TCK)
proc_cpu_s() { awk -v t="$hz" '{printf "%.3f", ($14 + $15) / t}' /proc/"$1"/stat; }
pgdata_real=
pg_cpu_s() {
  local p t=0 s pm
  pm=$(head -1 "$pg_dir/pgdata/postmaster.pid")
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/cwd" 2>/dev/null)" = "$pgdata_real" ] || continue
    s=$(awk '{print $14 + $15}' "$p/stat" 2>/dev/null) || continue
    t=$((t + ${s:-0}))
  done
  s=$(awk '{print $16 + $17}' /proc/"$pm"/stat)
  awk -v a="$t" -v b="$s" -v hz="$hz" 'BEGIN {printf "%.3f", (a + b) / hz}'
}
pg_sql() { PGCONNECT_TIMEOUT=10 timeout 60 "$pg_bin/psql" -X -qAt -F ' ' "$url" -c "$1"; }
metric() { curl -s "http://127.0.0.1:${admin[$1]}/metrics" | awk -v m="$2" '$1 == m {print $2}'; }

echo "machine: $cores cores, $(awk '/MemTotal/ {print int($2/1024/1024)" GiB"}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%MZ)"
"${pg_cpus[@]}" "$pg_tool" start "$pg_dir" >/dev/null || { echo "the PostgreSQL cluster did not start" >&2; exit 1; }
pgdata_real=$(cd "$pg_dir/pgdata" && pwd -P)
pm=$(head -1 "$pg_dir/pgdata/postmaster.pid")
[ "${CAPSTAN_BENCH_OWN_GROUP:-0}" = 1 ] && { echo -20 >/proc/"$pm"/autogroup || true; }
url=$("$pg_tool" newdb "$pg_dir" twonodes)
db=$(sed 's|.*/\([^/?]*\)?.*|\1|' <<<"$url")
echo "store: $("$pg_bin/postgres" --version), one database on loopback (TLS, fsync on), CPUs $(taskset -pc "$pm" | sed 's/.*: //'); servers on CPU 0, simulators on CPUs 1-$((cores - 1))"

"$capstan" init --data-dir "$work/a" --store "$url" >/dev/null
"$capstan" init --data-dir "$work/b" --store "$url" >/dev/null
total=$((2 * runs * phones))
{ echo "name,operation,auth_mode,auth_string,key,completes_by"
  "$bench" --connect 127.0.0.1:1 --phones "$total" --print-names | sed 's/$/,install,null,,rsa2048,/'; } >"$work/devices.csv"
"$capstan" device import "$work/devices.csv" --data-dir "$work/a" >/dev/null
"$capstan" config set max-connections-per-address 100000 --data-dir "$work/a" >/dev/null
"$bench" --connect 127.0.0.1:1 --phones 1 --key-cache "$work/keys" >/dev/null 2>&1 || true

start_node() { # a|b
  local n=$1 i
  : >"$work/log.$n"
  "${server_cpu[@]}" "$capstan" serve --init --data-dir "$work/$n" --capf-listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --http-listen off --tftp-listen off 2>"$work/log.$n" &
  pid[$n]=$!
  for i in $(seq 1 150); do grep -q 'event=ready' "$work/log.$n" 2>/dev/null && break; sleep 0.1; done
  port[$n]=$(grep -o 'capf_port=[0-9]*' "$work/log.$n" | head -1 | cut -d= -f2)
  admin[$n]=$(grep -o 'admin_port=[0-9]*' "$work/log.$n" | head -1 | cut -d= -f2)
  [ -n "${port[$n]}" ] || { echo "node $n did not start:" >&2; tail "$work/log.$n" >&2; exit 1; }
}
stop_node() { kill "${pid[$1]}" 2>/dev/null || true; wait "${pid[$1]}" 2>/dev/null || true; unset "pid[$1]"; }

first=0
# One simulator: NODE PHONES CONCURRENCY -> JSON line in $work/out.NODE
sim() {
  "${sim_cpu[@]}" "$bench" --connect 127.0.0.1:"${port[$1]}" --phones "$2" --first "$3" \
    --concurrency "$4" --key-cache "$work/keys" --json 2>/dev/null | tail -1 >"$work/out.$1"
}
measure() { # one|two
  local mode=$1 nodes n s0=() s1=() p0 p1 x0 x1 l0 l1 w0=0 w1=0 v ok=0 wall=0 fails=0 p99=
  if [ "$mode" = one ]; then nodes=(a); else nodes=(a b); fi
  for n in "${nodes[@]}"; do start_node "$n"; done
  sleep 11 # backends report xact_commit when idle (PG 15: within 10 s)
  x0=$(pg_sql "SELECT xact_commit FROM pg_stat_database WHERE datname = '$db'")
  l0=$(pg_sql "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
  p0=$(pg_cpu_s)
  for n in "${nodes[@]}"; do s0+=("$(proc_cpu_s "${pid[$n]}")"); v=$(metric "$n" capstan_storage_commits_total); w0=$((w0 + ${v:-0})); done
  if [ "$mode" = one ]; then
    sim a "$phones" "$first" "$concurrency"
  else
    local sa sb
    sim a $((phones / 2)) "$first" $((concurrency / 2)) &
    sa=$!
    sim b $((phones / 2)) $((first + phones / 2)) $((concurrency / 2)) &
    sb=$!
    wait "$sa" "$sb" || true
  fi
  p1=$(pg_cpu_s)
  for n in "${nodes[@]}"; do s1+=("$(proc_cpu_s "${pid[$n]}")"); v=$(metric "$n" capstan_storage_commits_total); w1=$((w1 + ${v:-0})); done
  l1=$(pg_sql "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
  sleep 11
  x1=$(pg_sql "SELECT xact_commit FROM pg_stat_database WHERE datname = '$db'")
  for n in "${nodes[@]}"; do
    [ -n "${TWO_NODES_DEBUG:-}" ] && cat "$work/out.$n" >&2
    read -r o w f q < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["enrollments"], d["wall_s"], d["errors"], d["latency_ms"]["p99"])' "$work/out.$n")
    ok=$((ok + o)) fails=$((fails + f))
    wall=$(awk -v a="$wall" -v b="$w" 'BEGIN {print (b > a) ? b : a}')
    p99="$p99${p99:+/}$q"
  done
  local srv=0 i
  for i in "${!nodes[@]}"; do srv=$(awk -v a="$srv" -v b="${s0[$i]}" -v c="${s1[$i]}" 'BEGIN {print a + c - b}'); done
  for n in "${nodes[@]}"; do stop_node "$n"; done
  awk -v mode="$mode" -v ok="$ok" -v wall="$wall" -v srv="$srv" -v p0="$p0" -v p1="$p1" -v w="$((w1 - w0))" \
    -v x="$((x1 - x0))" -v l="$((l1 - l0))" -v fails="$fails" -v p99="$p99" -v load="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
      printf "nodes=%s enrollments=%d enrollments_per_s=%.1f server_ms_per_enr=%.3f pg_ms_per_enr=%.3f group_commits=%d group_commits_per_s=%.1f enr_per_commit=%.2f xact_commits=%d xact_commits_per_s=%.1f wal_bytes_per_enr=%.0f p99_ms=%s failures=%d load=%s\n",
        mode, ok, ok / wall, srv * 1000 / ok, (p1 - p0) * 1000 / ok, w, w / wall, (w > 0) ? ok / w : 0, x, x / wall, l / ok, p99, fails, load }'
}
field() { sed "s/.* $1=\([0-9.]*\).*/\1/"; }
declare -A col=([one.x]= [two.x]=)
keys="enrollments_per_s server_ms_per_enr pg_ms_per_enr group_commits_per_s enr_per_commit xact_commits_per_s wal_bytes_per_enr"
for r in $(seq 1 "$runs"); do
  if [ $((r % 2)) = 1 ]; then order="${TWO_NODES_ORDER:-one two}"; else order="two one"; fi
  for m in $order; do
    line=$(measure "$m") # a subshell: $first moves on here
    first=$((first + phones))
    echo "run=$r $line"
    for k in $keys; do col[$m.$k]=${col[$m.$k]:-}"$(field "$k" <<<"$line") "; done
  done
done
for m in one two; do
  out="median nodes=$m"
  for k in $keys; do out+=" $k=$(tr ' ' '\n' <<<"${col[$m.$k]:-}" | grep . | median)"; done
  echo "$out"
done
for k in $keys; do
  a=$(tr ' ' '\n' <<<"${col[one.$k]:-}" | grep . | median) b=$(tr ' ' '\n' <<<"${col[two.$k]:-}" | grep . | median)
  printf 'ratio_two_over_one %s=%s\n' "$k" "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", (a > 0) ? b / a : 0}')"
done

echo "== sizes after $first enrollments of $total devices ($(date -u +%H:%MZ)) =="
pg_sql "SELECT relname, pg_total_relation_size(relid), n_live_tup, n_dead_tup FROM pg_stat_user_tables ORDER BY 2 DESC" |
  while read -r t size live dead; do
    payload=$(pg_sql "SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM \"$t\" t")
    rows=$(pg_sql "SELECT count(*) FROM \"$t\"")
    echo "table=$t total_bytes=$size rows=$rows dead_rows_est=$dead row_bytes_sum=$payload bytes_per_device=$(awk -v s="$size" -v n="$total" 'BEGIN {printf "%.0f", s / n}') bytes_per_enrollment=$(awk -v s="$size" -v n="$first" 'BEGIN {printf "%.0f", s / n}')"
  done
echo "database_bytes=$(pg_sql "SELECT pg_database_size('$db')") (pg_database_size; an empty database is about 7.5 MB of catalogs)"
pg_sql "VACUUM" >/dev/null 2>&1 || true
echo "after VACUUM: $(pg_sql "SELECT string_agg(relname || '=' || pg_total_relation_size(relid), ' ' ORDER BY relname) FROM pg_stat_user_tables")"
