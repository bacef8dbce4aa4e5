#!/usr/bin/env bash
# Builds capstan twice (sanitizer build with ASan+UBSan, then the normal
# build) and runs every test with ctest in each. Exits non-zero if any fails.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --test || exit 1
jobs=$(nproc)
status=0
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
if [ "${CAPSTAN_SKIP_SANITIZE:-0}" != 1 ]; then
  cmake -S . -B build-asan -DCAPSTAN_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null || exit 1
  cmake --build build-asan -j"$jobs" || exit 1
  echo "== sanitizer build (ASan + UBSan) =="
  (cd build-asan && ctest --output-on-failure -j"$jobs" --timeout 900) || status=1
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null || exit 1
cmake --build build -j"$jobs" || exit 1
echo "== normal build =="
(cd build && ctest --output-on-failure -j"$jobs" --timeout 900) || status=1
exit $status
