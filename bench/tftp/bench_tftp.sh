#!/usr/bin/env bash
# TFTP benchmark: capstan's TFTP server (through bench/tools/capstan-tftpd-harness)
# against tftpd-hpa, both on 127.0.0.1, driven by bench/tools/capstan-tftp-load
# (one libuv loop, N concurrent RFC 1350 downloads, every file checked byte
# for byte).
#
#   bench/tftp/bench_tftp.sh            # full matrix, 3 runs each
#   RUNS=1 CONCURRENCY="100" bench/tftp/bench_tftp.sh   # quick look
#
# Environment: BUILD (build dir, default build-bench, Release, no sanitizers),
# RUNS (3), CONCURRENCY ("100 1000"), BLKSIZE (1468; 0 = no options, 512-byte
# blocks), SERVERS ("capstan tftpd-hpa"), OUT (results dir), NICE (-10: the
# servers and the load generator run at this nice level so that other work
# on a shared machine disturbs the comparison less).
# Besides wall-clock files/s, each run records the server's CPU time (perf
# stat task-clock of the server and every process it forks: tftpd-hpa serves
# each transfer in a child), per transfer attempted; it is steadier than
# wall-clock numbers on a busy machine.
# Prints a Markdown table of medians; raw lines go to $OUT/raw.txt.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
RUNS=${RUNS:-3}
CONCURRENCY=${CONCURRENCY:-"100 1000"}
BLKSIZE=${BLKSIZE:-1468}
SERVERS=${SERVERS:-"capstan tftpd-hpa"}
OUT=${OUT:-$BUILD/tftp-bench}
CPORT=${CPORT:-16970}
HPORT=${HPORT:-16971}
NICE=${NICE:--10}

log() { echo "bench_tftp: $*" >&2; }

# --- build --------------------------------------------------------------------
build_tools() {
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCAPSTAN_SANITIZE=OFF >/dev/null
  make -C "$BUILD" -j2 capstan_core >/dev/null
  local tool
  for tool in capstan-tftpd-harness capstan-tftp-load; do
    # CMake builds bench/tools/*.c only when bench/phone/ exists; otherwise
    # compile the tool here against the same library.
    if ! make -C "$BUILD" -j2 "$tool" >/dev/null 2>&1; then
      cc -O2 -std=gnu11 -Wall -Wextra -Werror -Wno-unused-parameter \
        -I"$ROOT" -I"$BUILD/gen" -I/usr/include/android \
        "$ROOT/bench/tools/$tool.c" "$BUILD/libcapstan_core.a" "$BUILD/libcapstan_proto.a" \
        -L/usr/lib/x86_64-linux-gnu/android -Wl,-rpath,/usr/lib/x86_64-linux-gnu/android \
        -lssl -lcrypto -luv -llmdb -lprotobuf-c -lhttp_parser -lexpat -lpthread -lm \
        -o "$BUILD/$tool"
    fi
  done
}

ensure_tftpd_hpa() {
  if ! command -v in.tftpd >/dev/null 2>&1; then
    log "installing tftpd-hpa"
    apt-get install -y tftpd-hpa >/dev/null 2>&1 ||
      { apt-get update >/dev/null && apt-get install -y tftpd-hpa >/dev/null; }
  fi
  # The package may have started its own daemon on port 69; it does not
  # interfere with ours on $HPORT.
}

# --- servers ------------------------------------------------------------------
PIDS=()
declare -A SERVER_PID
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() { # wait until something answers TFTP on $1
  local i
  for i in $(seq 1 50); do
    if "$BUILD/capstan-tftp-load" --server "127.0.0.1:$1" --file f4k.bin \
      --expect "$DATA/f4k.bin" --concurrency 1 --total 1 --timeout-ms 100 --retries 2 \
      >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  log "server on port $1 did not answer"
  return 1
}

start_capstan() {
  CAPSTAN_LOG_LEVEL=warn nice -n "$NICE" "$BUILD/capstan-tftpd-harness" --listen "127.0.0.1:$CPORT" \
    --dir "$DATA" --max-per-client 100000 >"$OUT/capstan.log" 2>&1 &
  PIDS+=($!)
  SERVER_PID[capstan]=$!
  wait_port "$CPORT"
}

start_tftpd_hpa() {
  # Standalone, in the foreground, chrooted to the data directory; -B lets
  # it accept the same block size as capstan.
  nice -n "$NICE" in.tftpd --foreground --address "127.0.0.1:$HPORT" --secure --user nobody \
    --blocksize 1468 "$DATA" >"$OUT/tftpd-hpa.log" 2>&1 &
  PIDS+=($!)
  SERVER_PID[tftpd-hpa]=$!
  wait_port "$HPORT"
}

# --- runs ---------------------------------------------------------------------
cpu_ticks() { # utime+stime+cutime+cstime of a process, in clock ticks
  awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"
}

# Server CPU seconds spent during "$@": perf stat on the server process,
# children included (tftpd-hpa serves each transfer in a forked process
# whose time is not reaped into the daemon's cutime). Without perf: the
# /proc counters of the server process (exact for capstan only).
server_cpu_during() { # pid cmd...
  local pid=$1 before after perf_pid
  shift
  if command -v perf >/dev/null 2>&1; then
    perf stat -x, -e task-clock -p "$pid" -o "$OUT/perf.tmp" 2>/dev/null &
    perf_pid=$!
    sleep 0.2
    "$@" >"$OUT/load.tmp" || true
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    awk -F, '/task-clock/ {printf "%.3f", $1 / 1000; found=1} END {if (!found) printf "nan"}' \
      "$OUT/perf.tmp"
  else
    before=$(cpu_ticks "$pid")
    "$@" >"$OUT/load.tmp" || true
    after=$(cpu_ticks "$pid")
    awk -v a="$after" -v b="$before" -v t="$(getconf CLK_TCK)" 'BEGIN{printf "%.3f", (a-b)/t}'
  fi
}

run_load() { # server port file concurrency total
  local server=$1 port=$2 file=$3 conc=$4 total=$5 cpu
  local bs=()
  if [ "$BLKSIZE" != 0 ]; then bs=(--blksize "$BLKSIZE"); fi
  cpu=$(server_cpu_during "${SERVER_PID[$server]}" \
    nice -n "$NICE" "$BUILD/capstan-tftp-load" --server "127.0.0.1:$port" --file "$file" \
    --expect "$DATA/$file" --concurrency "$conc" --total "$total" "${bs[@]}" \
    --timeout-ms 1000 --retries 5)
  echo "server=$server file=$file concurrency=$conc total=$total server_cpu_s=$cpu" \
    "$(cat "$OUT/load.tmp") load=$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$OUT/raw.txt" >&2
}

main() {
  mkdir -p "$OUT"
  : >"$OUT/raw.txt"
  build_tools
  ensure_tftpd_hpa
  DATA=$(mktemp -d /tmp/capstan-tftp-bench.XXXXXX)
  chmod 755 "$DATA"
  head -c 4096 /dev/urandom >"$DATA/f4k.bin"
  head -c 1048576 /dev/urandom >"$DATA/f1m.bin"
  chmod 644 "$DATA"/*.bin
  local s
  for s in $SERVERS; do
    case $s in
      capstan) start_capstan ;;
      tftpd-hpa) start_tftpd_hpa ;;
    esac
  done
  local run file conc total port
  for run in $(seq 1 "$RUNS"); do
    for file in f4k.bin f1m.bin; do
      for conc in $CONCURRENCY; do
        if [ "$file" = f4k.bin ]; then total=$((conc * 2)); else total=$conc; fi
        for s in $SERVERS; do
          if [ "$s" = capstan ]; then port=$CPORT; else port=$HPORT; fi
          run_load "$s" "$port" "$file" "$conc" "$total"
        done
      done
    done
  done
  summarize
  rm -rf "$DATA"
}

summarize() {
  python3 - "$OUT/raw.txt" <<'EOF'
import statistics, sys
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    kv = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
    if "files_per_sec" not in kv:
        kv.update(files_per_sec="0", p99_ms="0", failures="all", files="0")
    rows[(kv["file"], int(kv["concurrency"]), kv["server"])].append(kv)
def med(xs):
    return statistics.median(xs) if xs else float("nan")
print("| file | concurrent | server | files/s (median) | p99 ms (median) | server CPU ms/file (median) | failures (all runs) | runs |")
print("|---|---|---|---|---|---|---|---|")
keys = sorted({(f, c) for (f, c, _) in rows})
for f, c in keys:
    fps, cpus = {}, {}
    for s in ("capstan", "tftpd-hpa"):
        r = rows.get((f, c, s))
        if not r:
            continue
        fps[s] = med([float(x["files_per_sec"]) for x in r])
        fails = sum(int(x["failures"]) if x["failures"].isdigit() else 10**9 for x in r)
        p99 = med([float(x["p99_ms"]) for x in r])
        cpu = med([1000 * float(x["server_cpu_s"]) / max(1, int(x["files"]) + int(x["failures"])) for x in r])
        cpus[s] = cpu
        print(f"| {f} | {c} | {s} | {fps[s]:.1f} | {p99:.1f} | {cpu:.2f} | {fails} | {len(r)} |")
    if "capstan" in fps and fps.get("tftpd-hpa"):
        cr = cpus["tftpd-hpa"] / cpus["capstan"] if cpus.get("capstan") else float("nan")
        print(f"| {f} | {c} | **ratio capstan/tftpd-hpa** | **{fps['capstan'] / fps['tftpd-hpa']:.2f}x** | "
              f"| tftpd-hpa uses {cr:.1f}x the CPU | | |")
EOF
}

main "$@"
