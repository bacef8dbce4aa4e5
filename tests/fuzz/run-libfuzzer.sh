#!/usr/bin/env bash
# Coverage-guided fuzzing of every tests/fuzz target with clang's libFuzzer,
# AddressSanitizer and UndefinedBehaviorSanitizer (issue 13).
#
#   tests/fuzz/run-libfuzzer.sh --minutes N [options] [TARGET[:MINUTES]...]
#
# For each target (default: every tests/fuzz/fuzz_*.c): runs it for N
# minutes (or --runs R executions, whichever ends first) from the committed
# corpus (tests/fuzz/corpus/<target>/) plus what earlier runs grew (kept in
# the build directory), merges what it found into the committed corpus with
# -merge=1 (only inputs that add coverage are added; the seeds stay), and
# prints each target's executions (TARGET:MINUTES gives that target its
# own time), time and findings, then line coverage of
# the files it aims at (a separate clang source-based coverage build, run
# over the merged corpus: llvm-profdata + llvm-cov report).
#
# Options:
#   --minutes N     fuzzing time per target (default 1)
#   --runs R        stop a target after R executions (default: no limit)
#   --build DIR     build directory (default /tmp/capstan-libfuzzer);
#                   DIR/asan (fuzzers), DIR/cov (coverage), DIR/work/<t>
#                   (grown corpus), DIR/artifacts/<t> (crashes), DIR/logs
#   --parallel P    targets fuzzed at the same time (default 2)
#   --nice N        niceness of the fuzzers (default 10)
#   --no-merge      leave tests/fuzz/corpus alone
#   --no-coverage   skip the coverage build and report
#   --coverage-only only build and report coverage of the committed corpus
#   --max-add K     add at most K new files per target to the committed
#                   corpus (default 150; the smallest are kept)
#
# A crash, leak, timeout or sanitizer report stops that target; its input is
# in DIR/artifacts/<target>/ and the exit status is 1. Reproduce with
#   DIR/asan/<target> DIR/artifacts/<target>/crash-...
# CI replays the committed corpus through tests/fuzz/driver.c (ctest -R fuzz/).
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MINUTES=1
RUNS=""
BUILD=/tmp/capstan-libfuzzer
PARALLEL=2
NICE=10
MERGE=1
COVERAGE=1
FUZZ=1
MAX_ADD=150
TARGETS=()

while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    --parallel) PARALLEL=$2; shift 2 ;;
    --nice) NICE=$2; shift 2 ;;
    --no-merge) MERGE=0; shift ;;
    --no-coverage) COVERAGE=0; shift ;;
    --coverage-only) FUZZ=0; MERGE=0; shift ;;
    --max-add) MAX_ADD=$2; shift 2 ;;
    -h|--help) sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run-libfuzzer.sh: unknown option $1" >&2; exit 2 ;;
    *:*) [[ ${1##*:} =~ ^[0-9]+$ ]] || { echo "run-libfuzzer.sh: bad minutes in $1" >&2; exit 2; }
      TARGETS+=("${1%%:*}"); printf -v "MIN_${1%%:*}" %s "${1##*:}"; shift ;;
    *) TARGETS+=("${1%.c}"); shift ;;
  esac
done

# clang-14 (Debian) or whatever clang is on PATH, and its LLVM tools.
CC=${CC:-}
if [ -z "$CC" ]; then
  for c in clang-14 clang; do
    if command -v "$c" >/dev/null; then CC=$c; break; fi
  done
fi
[ -n "$CC" ] || { echo "run-libfuzzer.sh: clang not found (apt-get install clang-14)" >&2; exit 2; }
ver=$("$CC" --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -1)
PROFDATA=$(command -v "llvm-profdata-$ver" || command -v llvm-profdata || true)
LLVMCOV=$(command -v "llvm-cov-$ver" || command -v llvm-cov || true)

if [ ${#TARGETS[@]} -eq 0 ]; then
  for f in "$SRC"/tests/fuzz/fuzz_*.c; do TARGETS+=("$(basename "${f%.c}")"); done
fi
for t in "${TARGETS[@]}"; do
  [ -f "$SRC/tests/fuzz/$t.c" ] || { echo "run-libfuzzer.sh: no target $t" >&2; exit 2; }
done

# Per target: the longest input worth trying, and the files it aims at
# (the coverage report lists these).
max_len() {
  case "$1" in
    fuzz_tftp_request|fuzz_files_service) echo 1024 ;;
    fuzz_capf_session|fuzz_tftp_session|fuzz_config_file|fuzz_device_csv) echo 4096 ;;
    fuzz_http|fuzz_pki_sudi|fuzz_files_cnfxml) echo 8192 ;;
    fuzz_capf_wire|fuzz_x509_inputs|fuzz_files_sgn|fuzz_files_itl|fuzz_ca_answers) echo 16384 ;;
    *) echo 4096 ;;
  esac
}
target_files() {
  case "$1" in
    fuzz_capf_session) echo handlers/capf/session.c handlers/capf/wire.c handlers/capf/jobs.c ;;
    fuzz_capf_wire) echo handlers/capf/wire.c ;;
    fuzz_tftp_request) echo handlers/tftp/tftp_packet.c ;;
    fuzz_tftp_session) echo handlers/tftp/tftp.c handlers/tftp/tftp_packet.c ;;
    fuzz_http) echo handlers/http/server.c handlers/http/files.c ;;
    fuzz_x509_inputs) echo core/pki/pki.c core/pki/ca.c core/pki/verify.c core/ca/check.c handlers/capf/jobs.c ;;
    fuzz_files_service) echo core/files/service.c core/files/itl.c core/files/sgn.c core/files/cnfxml.c ;;
    fuzz_files_sgn) echo core/files/sgnhdr.c core/files/sgn.c core/files/itl.c core/files/encconf.c ;;
    fuzz_files_itl) echo core/files/itl.c core/files/sgnhdr.c core/files/sgn.c ;;
    fuzz_files_cnfxml) echo core/files/cnfxml.c ;;
    fuzz_ca_answers) echo core/ca/est.c core/ca/mscs.c core/ca/util.c core/ca/http.c ;;
    fuzz_pki_sudi) echo core/pki/verify.c core/pki/pki.c ;;
    fuzz_device_csv) echo handlers/cli/csv.c ;;
    fuzz_config_file) echo handlers/cli/serve.c core/settings.c handlers/cli/options.c handlers/cli/cli.c ;;
    *) echo "" ;;
  esac
}

mkdir -p "$BUILD/logs"
configure_and_build() { # dir, extra cmake args...
  local dir=$1; shift
  if [ ! -f "$dir/CMakeCache.txt" ]; then
    CC=$CC cmake -S "$SRC" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCAPSTAN_TESTS=ON \
      -DCAPSTAN_LIBFUZZER=ON "$@" >"$BUILD/logs/configure-$(basename "$dir").log"
  else
    cmake "$dir" >/dev/null # new targets (the glob)
  fi
  cmake --build "$dir" -j"$PARALLEL" --target "${TARGETS[@]}" >"$BUILD/logs/build-$(basename "$dir").log" 2>&1 ||
    { tail -30 "$BUILD/logs/build-$(basename "$dir").log" >&2; echo "run-libfuzzer.sh: build failed" >&2; exit 1; }
}

status=0
if [ $FUZZ -eq 1 ]; then
  echo "== building fuzzers (clang $ver, libFuzzer + ASan + UBSan) in $BUILD/asan"
  configure_and_build "$BUILD/asan" -DCAPSTAN_SANITIZE=ON
fi

fuzz_one() { # target
  local t=$1 work=$BUILD/work/$1 art=$BUILD/artifacts/$1 log=$BUILD/logs/$1.log
  mkdir -p "$work" "$art"
  local var=MIN_$t
  local minutes=${!var:-$MINUTES}
  local args=(-max_len="$(max_len "$t")" -max_total_time=$((minutes * 60)) -artifact_prefix="$art/"
    -print_final_stats=1 -timeout=25 -rss_limit_mb=2048)
  [ -n "$RUNS" ] && args+=(-runs="$RUNS")
  local start=$SECONDS rc=0
  # Loopback sockets (fuzz_http) and the session's own logs are quiet at
  # error level; the fuzzer's own lines start with '#' or 'INFO'.
  CAPSTAN_LOG_LEVEL=error nice -n "$NICE" "$BUILD/asan/$t" "${args[@]}" "$work" "$SRC/tests/fuzz/corpus/$t" \
    >"$log" 2>&1 || rc=$?
  local secs=$((SECONDS - start))
  local runs
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [ -n "$runs" ] || runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  local found=none
  if [ $rc -ne 0 ]; then
    found="FAILED (exit $rc): $(grep -m1 -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|check failed|ALARM' "$log" || echo see "$log")"
  fi
  printf '%s\texecs=%s\tseconds=%s\tfindings=%s\n' "$t" "${runs:-?}" "$secs" "$found" >"$BUILD/logs/$t.summary"
  cat "$BUILD/logs/$t.summary"
  return $rc
}

if [ $FUZZ -eq 1 ]; then
  echo "== fuzzing ${#TARGETS[@]} target(s), $MINUTES min each${RUNS:+ or $RUNS runs}, $PARALLEL at a time"
  pids=()
  for t in "${TARGETS[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n || status=1; done
    fuzz_one "$t" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || status=1; done
fi

if [ $MERGE -eq 1 ]; then
  echo "== merging the grown corpus into tests/fuzz/corpus (only inputs that add coverage)"
  for t in "${TARGETS[@]}"; do
    dest=$SRC/tests/fuzz/corpus/$t
    mkdir -p "$dest"
    tmp=$(mktemp -d)
    cp -a "$dest"/. "$tmp"/ 2>/dev/null || true
    before=$(ls "$tmp" | wc -l)
    # -merge=1 adds to the first directory what the others bring that it
    # lacks, smallest inputs first.
    CAPSTAN_LOG_LEVEL=error nice -n "$NICE" "$BUILD/asan/$t" -merge=1 -max_len="$(max_len "$t")" \
      -timeout=25 "$tmp" "$BUILD/work/$t" >"$BUILD/logs/$t.merge.log" 2>&1 ||
      { echo "$t: merge failed (see $BUILD/logs/$t.merge.log)"; rm -rf "$tmp"; status=1; continue; }
    added=0
    # New files only, smallest first, at most MAX_ADD.
    while read -r f; do
      [ -e "$dest/$f" ] && continue
      [ $added -ge "$MAX_ADD" ] && break
      cp "$tmp/$f" "$dest/$f"
      added=$((added + 1))
    done < <(cd "$tmp" && ls -S -r)
    echo "$t: corpus $before -> $((before + added)) files (+$added)"
    rm -rf "$tmp"
  done
fi

if [ $COVERAGE -eq 1 ]; then
  if [ -z "$PROFDATA" ] || [ -z "$LLVMCOV" ]; then
    echo "run-libfuzzer.sh: llvm-profdata/llvm-cov not found: no coverage report" >&2
  else
    echo "== coverage build (clang source-based coverage) in $BUILD/cov"
    configure_and_build "$BUILD/cov" -DCAPSTAN_COVERAGE=ON
    prof=$BUILD/cov/prof
    rm -rf "$prof"
    mkdir -p "$prof"
    for t in "${TARGETS[@]}"; do
      # -runs=0: each corpus input once, nothing mutated.
      LLVM_PROFILE_FILE="$prof/$t.%p.profraw" CAPSTAN_LOG_LEVEL=error \
        "$BUILD/cov/$t" -runs=0 -max_len="$(max_len "$t")" "$SRC/tests/fuzz/corpus/$t" \
        >"$BUILD/logs/$t.cov.log" 2>&1 || echo "$t: coverage run failed (see $BUILD/logs/$t.cov.log)"
      "$PROFDATA" merge -sparse "$prof/$t".*.profraw -o "$prof/$t.profdata" 2>/dev/null || continue
      files=()
      for f in $(target_files "$t"); do files+=("$SRC/$f"); done
      echo "-- $t: line coverage over tests/fuzz/corpus/$t ($(ls "$SRC/tests/fuzz/corpus/$t" | wc -l) inputs)"
      for f in "${files[@]}"; do
        # One file per report, so that llvm-cov prints its whole path.
        "$LLVMCOV" report "$BUILD/cov/$t" -instr-profile="$prof/$t.profdata" "$f" |
          awk -v name="${f#"$SRC"/}" 'substr($1, length($1) - length(name) + 1) == name {
            found = 1; printf "   %-34s lines %6s of %5s covered  (%s)\n", name, $8-$9, $8, $10}
            END {if (!found) printf "   %-34s not linked into this target\n", name}'
      done
    done
  fi
fi

if [ $FUZZ -eq 1 ]; then
  echo "== summary"
  cat "$BUILD"/logs/*.summary 2>/dev/null | while read -r line; do
    for t in "${TARGETS[@]}"; do case "$line" in "$t"$'\t'*) echo "$line" ;; esac; done
  done
fi
exit $status
