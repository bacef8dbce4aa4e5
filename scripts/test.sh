#!/usr/bin/env bash
# Builds capstan and runs every test: the sanitizer build (ASan+UBSan) with
# ctest, a Release compile of every target (-Werror holds in every build
# type), the README's first command on its own (it must not need test
# packages), then the normal build with ctest. Exits non-zero if any fails.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --test || exit 1
jobs=$(nproc)
status=0
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
if [ "${CAPSTAN_SKIP_SANITIZE:-0}" != 1 ]; then
  # The suite's second run on PostgreSQL (postgres/) runs in the normal
  # build only, to keep CI's time; the PostgreSQL tests of their own
  # (test_store_postgres, test_cluster_*) run in both.
  cmake -S . -B build-asan -DCAPSTAN_SANITIZE=ON -DCAPSTAN_TESTS=ON -DCAPSTAN_PG_TESTS=OFF \
    -DCMAKE_BUILD_TYPE=Debug >/dev/null || exit 1
  cmake --build build-asan -j"$jobs" || exit 1
  echo "== sanitizer build (ASan + UBSan) =="
  (cd build-asan && ctest --output-on-failure -j"$jobs" --timeout 900) || status=1
fi
echo "== Release build: every target compiles with -Wall -Wextra -Werror =="
cmake -S . -B build-release -DCAPSTAN_TESTS=ON -DCMAKE_BUILD_TYPE=Release >/dev/null || exit 1
cmake --build build-release -j"$jobs" || status=1
echo "== first command: scripts/run.sh without test packages =="
scripts/check_first_command.sh || status=1
cmake -S . -B build -DCAPSTAN_TESTS=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null || exit 1
cmake --build build -j"$jobs" || exit 1
echo "== normal build =="
(cd build && ctest --output-on-failure -j"$jobs" --timeout 900) || status=1
exit $status
