#!/usr/bin/env bash
# TFTP benchmark: capstan's TFTP server (through bench/tools/capstan-tftpd-harness)
# against tftpd-hpa, both on 127.0.0.1, driven by bench/tools/capstan-tftp-load
# (N concurrent RFC 1350 downloads, every file checked byte for byte; see the
# tool's header for the client modes).
#
#   bench/tftp/bench_tftp.sh            # full matrix, 3 runs each
#   RUNS=1 CONCURRENCY="100" bench/tftp/bench_tftp.sh   # quick look
#
# Environment: BUILD (build dir, default build-bench, Release, no sanitizers),
# RUNS (3), CONCURRENCY ("100 1000"), BLKSIZE (1468; 0 = no options, 512-byte
# blocks), WINDOWS ("0 16": windowsize asked by the client for the 1 MiB
# file, 0 = option not sent; the 4 KiB file always runs without it), PROCS
# (2: load generator processes), MODE (addr: one source address per transfer;
# port: one socket per transfer on 127.0.0.1), SERVERS ("capstan tftpd-hpa"),
# OUT (results dir), NICE (-10: the servers and the load generator run at
# this nice level; with sched_autogroup (Linux default) nice only ranks
# processes of one session, so the benchmark also runs in its own session
# whose autogroup gets the same nice: other work on a shared machine then
# disturbs the comparison less).
# Runs alternate which server goes first; before each run the previous
# server's leftover work must be gone (tftpd-hpa children of failed
# transfers keep retransmitting for a while), and the 1-minute load average
# is recorded before and after each run.
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
WINDOWS=${WINDOWS:-"0 16"}
PROCS=${PROCS:-2}
MODE=${MODE:-addr}
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
      --expect "$DATA/f4k.bin" --concurrency 1 --total 1 --timeout-ms 100 --retries 2 --mode port \
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

# Waits (at most 60 s) until tftpd-hpa has no transfer child left: children
# of failed transfers keep retransmitting and would load the next run.
settle() {
  local pid=${SERVER_PID[tftpd-hpa]:-} i
  [ -n "$pid" ] || return 0
  for i in $(seq 1 600); do
    if [ -z "$(pgrep -P "$pid" 2>/dev/null)" ]; then return 0; fi
    sleep 0.1
  done
  log "tftpd-hpa still has children after 60 s"
}

busy_ticks() { # CPU ticks of the whole machine, all cores, not idle
  awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

rcvbuf_errors() { # UDP datagrams dropped for a full socket buffer, machine-wide
  awk '/^Udp:/ {n++; if (n == 2) print $6}' /proc/net/snmp
}

run_load() { # server port file concurrency total windowsize
  local server=$1 port=$2 file=$3 conc=$4 total=$5 ws=$6 cpu load0 busy0 t0 drops0 client others
  local opts=(--procs "$PROCS" --mode "$MODE")
  if [ "$BLKSIZE" != 0 ]; then opts+=(--blksize "$BLKSIZE"); fi
  if [ "$ws" != 0 ]; then opts+=(--windowsize "$ws"); fi
  settle
  load0=$(cut -d' ' -f1 /proc/loadavg)
  busy0=$(busy_ticks)
  t0=$(date +%s.%N)
  drops0=$(rcvbuf_errors)
  cpu=$(server_cpu_during "${SERVER_PID[$server]}" \
    nice -n "$NICE" perf stat -x, -e task-clock -o "$OUT/client.tmp" \
    "$BUILD/capstan-tftp-load" --server "127.0.0.1:$port" --file "$file" \
    --expect "$DATA/$file" --concurrency "$conc" --total "$total" "${opts[@]}" \
    --timeout-ms 1000 --retries 5)
  client=$(awk -F, '/task-clock/ {printf "%.3f", $1 / 1000}' "$OUT/client.tmp")
  # CPU the rest of the machine used during the measurement (other
  # engineers' work, and perf), in cores: all busy time minus the server's
  # and the client's, over the wall time. Coarse for runs under a second.
  others=$(awk -v b0="$busy0" -v b1="$(busy_ticks)" -v t="$(getconf CLK_TCK)" -v s="$cpu" \
    -v c="$client" -v w0="$t0" -v w1="$(date +%s.%N)" \
    'BEGIN { o = (b1 - b0) / t - s - c; if (o < 0) o = 0; printf "%.2f", (w1 > w0 ? o / (w1 - w0) : 0) }')
  echo "server=$server file=$file concurrency=$conc total=$total window_asked=$ws" \
    "server_cpu_s=$cpu client_cpu_s=$client $(cat "$OUT/load.tmp") load_before=$load0" \
    "load_after=$(cut -d' ' -f1 /proc/loadavg) others_cores=$others" \
    "udp_rcvbuf_drops=$(($(rcvbuf_errors) - drops0))" | tee -a "$OUT/raw.txt" >&2
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
  local run file conc total port ws order wss
  for run in $(seq 1 "$RUNS"); do
    # Odd runs in the given order, even runs reversed.
    order=$SERVERS
    if [ $((run % 2)) = 0 ]; then order=$(echo "$SERVERS" | tr ' ' '\n' | tac | tr '\n' ' '); fi
    for file in f4k.bin f1m.bin; do
      wss=0
      if [ "$file" = f1m.bin ]; then wss=$WINDOWS; fi
      for ws in $wss; do
        for conc in $CONCURRENCY; do
          if [ "$file" = f4k.bin ]; then total=$((conc * 2)); else total=$conc; fi
          for s in $order; do
            if [ "$s" = capstan ]; then port=$CPORT; else port=$HPORT; fi
            run_load "$s" "$port" "$file" "$conc" "$total" "$ws"
          done
        done
      done
    done
  done
  summarize
  rm -rf "$DATA"
}

summarize() {
  python3 - "$OUT/raw.txt" <<'PYEOF'
import statistics, sys
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    kv = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
    if "files_per_sec" not in kv:
        kv.update(files_per_sec="0", p99_ms="0", failures="all", files="0", oack="?")
    rows[(kv["file"], int(kv.get("window_asked", "0")), int(kv["concurrency"]), kv["server"])].append(kv)
def med(xs):
    return statistics.median(xs) if xs else float("nan")
print("| file | windowsize asked | concurrent | server | granted (OACK) | files/s (median) | p99 ms (median) | server CPU ms/file (median) | client CPU ms/file (median) | failures (all runs; no reply at all) | UDP rcvbuf drops (all runs) | load avg before/after (median) | other work, cores (median) | runs |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
keys = sorted({(f, w, c) for (f, w, c, _) in rows}, key=lambda k: (k[0] != "f4k.bin", k[1], k[2]))
for f, w, c in keys:
    fps, cpus = {}, {}
    for s in ("capstan", "tftpd-hpa"):
        r = rows.get((f, w, c, s))
        if not r:
            continue
        fps[s] = med([float(x["files_per_sec"]) for x in r])
        fails = sum(int(x["failures"]) if x["failures"].isdigit() else 10**9 for x in r)
        attempted = sum(int(x["total"]) for x in r)
        p99 = med([float(x["p99_ms"]) for x in r])
        cpu = med([1000 * float(x["server_cpu_s"]) / max(1, int(x["files"]) + int(x["failures"])) for x in r])
        cpus[s] = cpu
        grants = sorted({x.get("oack", "?") for x in r})
        lb = med([float(x.get("load_before", "nan")) for x in r])
        la = med([float(x.get("load_after", "nan")) for x in r])
        ccpu = med([1000 * float(x.get("client_cpu_s", "nan")) / max(1, int(x["files"]) + int(x["failures"])) for x in r])
        noreply = sum(int(x.get("failures_no_reply", "0")) for x in r)
        drops = sum(int(x.get("udp_rcvbuf_drops", "0")) for x in r)
        oth = med([float(x.get("others_cores", "nan")) for x in r])
        print(f"| {f} | {w or '-'} | {c} | {s} | {' / '.join(grants)} | {fps[s]:.1f} | {p99:.0f} | {cpu:.2f} | {ccpu:.2f} | {fails} / {attempted}; {noreply} | {drops} | {lb:.1f} / {la:.1f} | {oth:.2f} | {len(r)} |")
    if "capstan" in fps and fps.get("tftpd-hpa"):
        cr = cpus["tftpd-hpa"] / cpus["capstan"] if cpus.get("capstan") else float("nan")
        print(f"| {f} | {w or '-'} | {c} | **ratio capstan/tftpd-hpa** | | **{fps['capstan'] / fps['tftpd-hpa']:.2f}x** | "
              f"| tftpd-hpa {cr:.1f}x the CPU | | | | | | | |")
PYEOF
}

# Own session, hence own autogroup, at the benchmark's nice level (see top).
if [ -z "${BENCH_TFTP_SESSION:-}" ] && command -v setsid >/dev/null 2>&1; then
  export BENCH_TFTP_SESSION=1
  exec setsid -w "$0" "$@"
fi
if [ -w /proc/$$/autogroup ]; then
  echo "$NICE" >/proc/$$/autogroup 2>/dev/null || log "cannot set the autogroup nice level"
fi
main "$@"
