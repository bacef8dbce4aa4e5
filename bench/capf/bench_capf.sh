#!/usr/bin/env bash
# CAPF enrollment benchmark: enrollments/s at several concurrencies, memory
# per idle session, and the crypto bound of this machine.
#
#   bench/capf/bench_capf.sh [--runs 3] [--phones 3000] [--concurrency "100 1000 10000"]
#                            [--hold 10000] [--build build]
#
# Starts `capstan serve` on loopback (port 0) with a fresh data directory,
# imports the devices, runs capstan-bench against it and prints one line per
# run plus medians. Needs a built tree (scripts/run.sh or cmake --build).
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=3 phones=3000 concurrencies="100 1000 10000" hold=10000 build=build
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --phones) phones=$2; shift 2 ;;
    --concurrency) concurrencies=$2; shift 2 ;;
    --hold) hold=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
capstan=$build/capstan bench=$build/capstan-bench
work=$(mktemp -d /tmp/capstan-bench.XXXXXX)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start_server() {
  rm -rf "$work/d" "$work/log"
  "$capstan" init --data-dir "$work/d" >/dev/null
  # Every run enrolls fresh devices: runs x max(phones, concurrency) per
  # concurrency, plus the parked ones.
  local total=$hold c
  for c in $concurrencies; do total=$(( total + runs * (phones > c ? phones : c) )); done
  { echo "name,operation,auth_mode,auth_string,key,completes_by"
    "$bench" --connect 127.0.0.1:1 --phones "$total" --print-names | sed 's/$/,install,null,,rsa2048,/'; } > "$work/devices.csv"
  "$capstan" device import "$work/devices.csv" --data-dir "$work/d" >/dev/null
  # One source address stands for thousands of phones here.
  "$capstan" config set max-connections-per-address 100000 --data-dir "$work/d" >/dev/null
  "$capstan" serve --data-dir "$work/d" --capf-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --http-listen off --tftp-listen off 2>"$work/log" &
  server_pid=$!
  for _ in $(seq 1 100); do grep -q 'event=ready' "$work/log" 2>/dev/null && break; sleep 0.1; done
  port=$(grep -o 'capf_port=[0-9]*' "$work/log" | head -1 | cut -d= -f2)
  admin=$(grep -o 'admin_port=[0-9]*' "$work/log" | head -1 | cut -d= -f2)
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {print int($2/1024/1024)" GiB"}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "== crypto bound: bssl-tool speed (one core) =="
sign=$(bssl-tool speed -filter 'RSA 2048' -timeout 2 2>/dev/null | awk '/RSA 2048 signing/ {gsub(/\(/,"",$(NF-1)); print $(NF-1)}')
cores=$(nproc)
bound=$(awk -v s="$sign" -v c="$cores" 'BEGIN {printf "%.0f", s * c / 2}')
echo "rsa2048_sign_per_s_one_core=$sign cores=$cores bound_enrollments_per_s=$bound (2 RSA-2048 private operations per enrollment: handshake + LSC)"

start_server
first=0
for c in $concurrencies; do
  rates=()
  for r in $(seq 1 "$runs"); do
    n=$phones; [ "$n" -lt "$c" ] && n=$c
    out=$("$bench" --connect 127.0.0.1:"$port" --phones "$n" --first "$first" --concurrency "$c" \
      --key-cache "$work/keys" --json 2>/dev/null | tail -1)
    first=$((first + n))
    rate=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["enrollments_per_s"])' "$out")
    fails=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["errors"])' "$out")
    p99=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["latency_ms"]["p99"])' "$out")
    echo "concurrency=$c run=$r phones=$n enrollments_per_s=$rate p99_ms=$p99 failures=$fails"
    rates+=("$rate")
  done
  med=$(printf '%s\n' "${rates[@]}" | median)
  echo "concurrency=$c median_enrollments_per_s=$med fraction_of_bound=$(awk -v m="$med" -v b="$bound" 'BEGIN {printf "%.2f", m / b}')"
done

echo "== idle sessions: $hold phones parked in key generation =="
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
start_server
rss0=$(awk '/VmRSS/ {print $2}' /proc/"$server_pid"/status)
"$bench" --connect 127.0.0.1:"$port" --phones "$hold" --concurrency "$hold" --first 0 --hold \
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
