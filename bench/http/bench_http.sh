#!/usr/bin/env bash
# HTTP phone file server benchmark: wrk against capstan-httpd-harness (the
# real server and file route, in-memory files). Prints wrk's rates and
# latency percentiles and the server's own counters. Never fails a run for
# performance reasons.
#
#   bench/http/bench_http.sh            # DURATION=10s CONNS=100 THREADS=1
#   DURATION=30s CONNS=1000 bench/http/bench_http.sh
#
# Needs wrk (Debian: apt-get install wrk).
set -euo pipefail
SRC="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD="${BUILD_DIR:-$SRC/build-bench}"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-100}"
THREADS="${THREADS:-1}"

if ! command -v wrk >/dev/null; then
  echo "bench_http: wrk not found (apt-get install wrk); skipping" >&2
  exit 0
fi

# Build a release harness. It is a CMake target when bench/phone exists;
# otherwise link it here against the core library.
cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
if make -C "$BUILD" -j2 help | grep -q capstan-httpd-harness; then
  make -C "$BUILD" -j2 capstan-httpd-harness >/dev/null
  HARNESS="$BUILD/capstan-httpd-harness"
else
  make -C "$BUILD" -j2 capstan_core >/dev/null
  HARNESS="$BUILD/capstan-httpd-harness"
  arch="$(gcc -dumpmachine)"
  gcc -std=gnu11 -O2 -I"$SRC" -I/usr/include/android -I"$BUILD/gen" \
    -DCAPSTAN_VERSION="\"bench\"" "$SRC/bench/tools/capstan-httpd-harness.c" -o "$HARNESS" \
    "$BUILD/libcapstan_core.a" "$BUILD/libcapstan_proto.a" \
    -L"/usr/lib/$arch/android" -Wl,-rpath,"/usr/lib/$arch/android" \
    -lssl -lcrypto -luv -llmdb -lprotobuf-c -lhttp_parser -lexpat -lpthread -lm
fi

OUT="$(mktemp -d)"
trap 'kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$OUT"' EXIT
CAPSTAN_LOG_LEVEL=warn "$HARNESS" >"$OUT/ready" 2>"$OUT/log" &
PID=$!
for _ in $(seq 100); do
  grep -q '^ready' "$OUT/ready" 2>/dev/null && break
  sleep 0.05
done
read -r _ phone admin <"$OUT/ready"
PORT="${phone#phone_port=}"
ADMIN="${admin#admin_port=}"
URL="http://127.0.0.1:$PORT"

echo "# capstan HTTP bench: $(date -u +%FT%TZ) $(nproc) cpus, wrk -t$THREADS -c$CONNS -d$DURATION"
run() {
  local title="$1"; shift
  echo
  echo "## $title"
  wrk --latency -t"$THREADS" "$@" | sed -n '/Latency Distribution/,/Transfer\/sec/p'
}
run "keep-alive, 4 KiB SEP.cnf.xml" -c"$CONNS" -d"$DURATION" "$URL/SEP001122334455.cnf.xml"
run "keep-alive, 5 KiB ITL" -c"$CONNS" -d"$DURATION" "$URL/ITLSEP001122334455.tlv"
run "Connection: close, 4 KiB SEP.cnf.xml" -c"$CONNS" -d"$DURATION" -H "Connection: close" \
  "$URL/SEP001122334455.cnf.xml"
run "keep-alive, 1 MiB firmware, 20 conns" -c20 -d"$DURATION" "$URL/firmware.loads"
run "keep-alive, 404" -c"$CONNS" -d"$DURATION" "$URL/SEPFFFFFFFFFFFF.cnf.xml"

echo
echo "## server counters"
curl -s "http://127.0.0.1:$ADMIN/metrics" |
  grep -E '^capstan_http_(requests_total\{server="phone"|connections_rejected|files_requests_total)' |
  grep -v ' 0$' || true
