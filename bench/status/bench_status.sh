#!/usr/bin/env bash
# The status page with a large store: how fast /status.json (and the page
# and the device API) answer with 40,000 device records.
#
#   bench/status/bench_status.sh [--devices 40000] [--enroll 4000] [--fail 500]
#                                [--requests 200] [--fresh 20] [--build build]
#
# Imports --devices records (`capstan device import` of a CSV: string
# authentication for the last tenth, null for the rest), starts `capstan
# serve` on loopback, enrolls --enroll phones with capstan-bench (they
# succeed, with certificates on record) and sends --fail phones a wrong
# authentication string (they fail with a reason), so that every list of
# the page has content. Then it measures with curl, one request at a time:
#
#   cached   --requests GETs of /status.json on a store that does not change
#            (the census is reused: what a page costs while phones are idle);
#   fresh    --fresh GETs, each after a write to the store and more than a
#            second after the last census, so each one waits for a new scan
#            of every record (the most a request can cost during a window);
#   page     --requests GETs of /status (the HTML with the data inline);
#   api      --requests GETs of /api/devices?status=failed&limit=100 and of
#            one page of 1,000 devices from the middle of the store.
#
# Prints the median, 90th percentile and maximum of curl's time_total for
# each, and the server's own scan time (devices.scan_ms). Numbers, not a
# test: it never fails on a slow result.
set -euo pipefail
cd "$(dirname "$0")/../.."
devices=40000 enroll=4000 fail=500 requests=200 fresh=20 build=build
while [ $# -gt 0 ]; do
  case "$1" in
    --devices) devices=$2; shift 2 ;;
    --enroll) enroll=$2; shift 2 ;;
    --fail) fail=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --fresh) fresh=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
capstan=$build/capstan bench=$build/capstan-bench
[ -x "$capstan" ] && [ -x "$bench" ] || { echo "build first: $capstan, $bench" >&2; exit 2; }
strings=$((devices / 10))
[ "$enroll" -le $((devices - strings)) ] && [ "$fail" -le "$strings" ] ||
  { echo "--enroll must fit the null-auth devices and --fail the string ones" >&2; exit 2; }
work=$(mktemp -d /tmp/capstan-bench-status.XXXXXX)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {print int($2/1024/1024)" GiB"}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%MZ)"
"$capstan" init --data-dir "$work/d" >/dev/null
{
  echo "name,operation,auth_mode,auth_string,key,completes_by"
  "$bench" --connect 127.0.0.1:1 --phones "$devices" --print-names |
    awk -v s="$((devices - strings))" '{ print $0 (NR <= s ? ",install,null,,rsa2048," : ",install,string,123456,rsa2048,") }'
} >"$work/devices.csv"
t0=$(date +%s.%N)
"$capstan" device import "$work/devices.csv" --data-dir "$work/d" >/dev/null
echo "import: $devices devices in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}') s"
"$capstan" config set max-connections-per-address 100000 --data-dir "$work/d" >/dev/null
"$capstan" serve --data-dir "$work/d" --capf-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --http-listen off --tftp-listen off 2>"$work/log" &
server_pid=$!
for _ in $(seq 1 100); do grep -q 'event=ready' "$work/log" 2>/dev/null && break; sleep 0.1; done
port=$(grep -o 'capf_port=[0-9]*' "$work/log" | head -1 | cut -d= -f2)
admin=$(grep -o 'admin_port=[0-9]*' "$work/log" | head -1 | cut -d= -f2)
base="http://127.0.0.1:$admin"

if [ "$enroll" -gt 0 ]; then
  "$bench" --connect "127.0.0.1:$port" --phones "$enroll" --concurrency 200 \
    --key-cache "$work/keys" --json | python3 -c 'import json,sys; d=json.loads(sys.stdin.read().splitlines()[-1]); print("enrolled: %d ok, %d errors, %.0f/s" % (d["enrollments"], d["errors"], d["enrollments_per_s"]))'
fi
if [ "$fail" -gt 0 ]; then
  "$bench" --connect "127.0.0.1:$port" --phones "$fail" --first "$((devices - strings))" --concurrency 100 \
    --auth string --auth-string 999999 --key-cache "$work/keys" --json >/dev/null || true
fi
curl -sf "$base/status.json" >/dev/null # the first census
sleep 1.2
echo "devices by status: $(curl -sf "$base/status.json" | python3 -c 'import json,sys; d=json.load(sys.stdin)["devices"]; print(json.dumps(d["by_status"]), "scan_ms=%s" % d["scan_ms"])')"

# stats NAME < times (seconds): median, p90, max in ms.
stats() {
  sort -n | awk -v name="$1" '{a[NR]=$1} END {
    m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2
    p = a[int(NR * 0.9 + 0.5) < 1 ? 1 : int(NR * 0.9 + 0.5)]
    printf "%-28s n=%d median_ms=%.2f p90_ms=%.2f max_ms=%.2f\n", name, NR, m * 1000, p * 1000, a[NR] * 1000 }'
}
times() { # URL N
  for _ in $(seq 1 "$2"); do curl -s -o /dev/null -w '%{time_total}\n' "$1"; done
}

times "$base/status.json" "$requests" | stats "status.json cached"
for i in $(seq 1 "$fresh"); do
  # A write (the store's transaction id moves) and a census older than 1 s.
  "$capstan" device set "$(sed -n "$((i + 1))p" "$work/devices.csv" | cut -d, -f1)" --operation install \
    --data-dir "$work/d" >/dev/null
  sleep 1.1
  curl -s -o /dev/null -w '%{time_total}\n' "$base/status.json"
done | stats "status.json fresh (rescan)"
times "$base/status" "$requests" | stats "status page"
times "$base/api/devices?status=failed&limit=100" "$requests" | stats "api failed, 100"
mid=$(sed -n "$((devices / 2))p" "$work/devices.csv" | cut -d, -f1)
times "$base/api/devices?limit=1000&after=$mid" "$requests" | stats "api page of 1000"
curl -sf "$base/status.json" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("server scan of %d devices: %s ms" % (d["devices"]["total"], d["devices"]["scan_ms"]))'
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
kill "$server_pid"
wait "$server_pid" 2>/dev/null || true
server_pid=
