#!/usr/bin/env bash
# Reset storm benchmark: N phones boot at once and fetch their ITL and
# signed configuration (ITLSEP<MAC>.tlv, SEP<MAC>.cnf.xml.sgn), verifying
# both, over HTTP and then over TFTP.
#
#   bench/storm/bench_storm.sh [--runs 3] [--http-phones 10000] [--tftp-phones 1000]
#                              [--concurrency 1000] [--rate R] [--operation none|install]
#                              [--addresses 250] [--limit-s 60] [--keep-alive]
#                              [--timeout SEC] [--build build-rel]
#
# For each run: starts `capstan serve` on loopback port 0 over the same data
# directory (so its file cache is cold and every file is signed during the
# storm), runs `capstan-bench --storm` (cold), then the same storm again
# against the same server (warm: files already signed), and stops the
# server. Prints one JSON line per storm, then medians, and checks that each
# cold storm finished within --limit-s seconds without a failure.
#
# --operation install schedules an LSC install for every device: phones then
# see an empty certHash, enroll over CAPF and boot again (the warm storm
# after it finds them enrolled). The default, none, measures the files only.
#
# --timeout SEC is the simulated phone's patience for each step (the bench's
# default: 30 s from connect to the server's first CAPF message, for each
# download, ...): a storm larger than the server can take within it times
# phones out even though none is refused.
#
# --addresses N spreads the phones over N loopback source addresses from
# 127.1.0.1 on (phone i uses address i mod N): 1 puts every phone behind one
# address, as a branch behind NAT or a load balancer in front of capstan
# does; as many addresses as phones gives each its own (127.0.0.0/8 is all
# loopback). --bind-count is the old name. The server runs with its default
# settings: no limit is raised for the benchmark. After each storm the
# script prints the refusals the server's limits made (capstan_*_rejected /
# dropped counters, total/per-address; 0 when no limit bit).
#
# Exit status: 0 if every cold storm met the limit without failure, 1 if not,
# 2 on bad usage or a setup failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=3 http_phones=10000 tftp_phones=1000 concurrency=1000 rate= operation=none keep_alive=
addresses=250 limit_s=60 build=build-rel timeout_s=
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --http-phones) http_phones=$2; shift 2 ;;
    --tftp-phones) tftp_phones=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --operation) operation=$2; shift 2 ;;
    --addresses|--bind-count) addresses=$2; shift 2 ;;
    --limit-s) limit_s=$2; shift 2 ;;
    --keep-alive) keep_alive=1; shift ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
case "$operation" in none|install) ;; *) echo "--operation none|install" >&2; exit 2 ;; esac
capstan=$build/capstan bench=$build/capstan-bench
py=$(command -v /usr/bin/python3 || command -v python3)
[ -x "$capstan" ] && [ -x "$bench" ] || { echo "build $build first (capstan, capstan-bench)" >&2; exit 2; }

# One socket per phone in flight, on both sides.
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d /tmp/capstan-storm.XXXXXX)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

max_phones=$(( http_phones > tftp_phones ? http_phones : tftp_phones ))
"$capstan" init --data-dir "$work/d" >/dev/null
{ echo "name,operation,auth_mode,auth_string,key,completes_by"
  "$bench" --phones "$max_phones" --name-prefix SEP0000 --print-names | sed "s/\$/,$operation,null,,rsa2048,/"; } > "$work/devices.csv"

import_devices() { "$capstan" device import "$work/devices.csv" --rearm --data-dir "$work/d" >/dev/null; }

start_server() {
  rm -f "$work/log"
  "$capstan" serve --init --data-dir "$work/d" --capf-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --http-listen 127.0.0.1:0 --tftp-listen 127.0.0.1:0 2>"$work/log" &
  server_pid=$!
  for _ in $(seq 1 300); do grep -q 'event=ready' "$work/log" 2>/dev/null && break; sleep 0.1; done
  grep -q 'event=ready' "$work/log" || { echo "server did not start:"; cat "$work/log"; exit 2; } >&2
  http_port=$(grep -o 'http_port=[0-9]*' "$work/log" | head -1 | cut -d= -f2)
  tftp_port=$(grep -o 'tftp_port=[0-9]*' "$work/log" | head -1 | cut -d= -f2)
  capf_port=$(grep -o 'capf_port=[0-9]*' "$work/log" | head -1 | cut -d= -f2)
  admin_port=$(grep -o 'admin_port=[0-9]*' "$work/log" | head -1 | cut -d= -f2)
}

# The refusals the server's limits made so far (counters since its start),
# by listener and limit: one line, "refusals capf=TOTAL/PER_ADDRESS
# http=TOTAL/PER_ADDRESS tftp=TOTAL/PER_ADDRESS dropped=N".
refusals() {
  curl -s --max-time 10 "http://127.0.0.1:$admin_port/metrics" | awk '
    /^capstan_capf_connections_rejected_total\{reason="limit_total"/ { ct += $2 }
    /^capstan_capf_connections_rejected_total\{reason="limit_per_address"/ { ca += $2 }
    /^capstan_http_connections_rejected_total\{server="phone",reason="limit_total"/ { ht += $2 }
    /^capstan_http_connections_rejected_total\{server="phone",reason="limit_per_address"/ { ha += $2 }
    /^capstan_tftp_rejections_total\{reason="limit_total"/ { tt += $2 }
    /^capstan_tftp_rejections_total\{reason="limit_per_address"/ { ta += $2 }
    /^capstan_(capf|http)_connections_dropped_total/ { dropped += $2 }
    END { printf "refusals capf=%d/%d http=%d/%d tftp=%d/%d dropped=%d\n", ct, ca, ht, ha, tt, ta, dropped }'
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

# storm TRANSPORT PHONES -> one JSON line on stdout
storm() {
  local transport=$1 phones=$2 port
  [ "$transport" = http ] && port=$http_port || port=$tftp_port
  local args=(--storm --boot "$transport" --phones "$phones" --name-prefix SEP0000
    --files "127.0.0.1:$port" --connect "127.0.0.1:$capf_port"
    --bind-base 127.1.0.1 --bind-count "$addresses" --key-cache "$work/keys" --json)
  if [ -n "$rate" ]; then args+=(--rate "$rate"); else args+=(--concurrency "$concurrency"); fi
  [ "$operation" = none ] && args+=(--boot-only)
  [ -n "$timeout_s" ] && args+=(--timeout "$timeout_s")
  [ -n "$keep_alive" ] && [ "$transport" = http ] && args+=(--keep-alive)
  echo "+ capstan-bench ${args[*]}" >&2
  "$bench" "${args[@]}" 2>>"$work/bench.err" || true
}

# summary FILE KIND TRANSPORT PHONES: medians of the JSON lines in FILE;
# with --check, exit 1 if a storm failed or took longer than the limit.
summary() {
  "$py" - "$@" "$runs" "$limit_s" <<'PY'
import json, statistics, sys
path, kind, transport, phones, runs, limit = sys.argv[1:7]
check = kind == "cold"
rows = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
def get(d, k):
    for p in k.split("."):
        d = d[p]
    return d
keys = ["wall_s", "files_per_s", "itl_ms.p50", "itl_ms.p90", "itl_ms.p99", "itl_ms.max",
        "cnf_ms.p50", "cnf_ms.p90", "cnf_ms.p99", "cnf_ms.max", "ok", "enrollments",
        "capf_ms.p50", "capf_ms.p99", "errors", "retransmits"]
out = [f"{transport} {kind} phones={phones} medians of {len(rows)}/{runs}:"]
for k in keys:
    v = [get(r, k) for r in rows]
    out.append(f"{k}={statistics.median(v):g}" if v else f"{k}=-")
print(" ".join(out))
bad = len(rows) < int(runs) or any(r["errors"] or r["wall_s"] > float(limit) for r in rows)
if check:
    print(f"{transport} check: {'FAIL' if bad else 'ok'} (every cold storm within {limit} s, "
          f"no failure; wall_s {[r['wall_s'] for r in rows]})")
sys.exit(1 if (check and bad) else 0)
PY
}

echo "machine: $(nproc) cores (shared), $(awk '/MemTotal/ {print int($2/1024/1024)" GiB"}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg), nofile $(ulimit -n), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "operation=$operation keep_alive=${keep_alive:-0} runs=$runs concurrency=${rate:+all, rate $rate/s}${rate:-$concurrency} addresses=$addresses limit_s=$limit_s"
status=0
for spec in "http $http_phones" "tftp $tftp_phones"; do
  set -- $spec
  transport=$1 phones=$2
  [ "$phones" -gt 0 ] || continue
  : > "$work/cold" ; : > "$work/warm"
  for r in $(seq 1 "$runs"); do
    import_devices # again: re-arms the install operation
    start_server
    cold=$(storm "$transport" "$phones")
    cold_refusals=$(refusals)
    warm=$(storm "$transport" "$phones")
    warm_refusals=$(refusals)
    stop_server
    echo "$transport run=$r cold $cold"
    echo "$transport run=$r cold $cold_refusals"
    echo "$transport run=$r warm $warm"
    echo "$transport run=$r warm (cumulative) $warm_refusals"
    echo "$cold" >> "$work/cold"
    echo "$warm" >> "$work/warm"
  done
  summary "$work/cold" cold "$transport" "$phones" || status=1
  summary "$work/warm" warm "$transport" "$phones" || true
done
if [ -s "$work/bench.err" ]; then echo "bench stderr (first lines):"; head -5 "$work/bench.err"; fi
exit $status
