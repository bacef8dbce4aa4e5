#!/usr/bin/env bash
# Enrollments/s with a CA-signed CAPF (root -> intermediate -> CAPF) against
# a self-signed one, same build, same load, alternated so that drift of this
# shared machine hits both alike (issue 9: the ratio must be at least 0.95).
#
#   bench/capf/ca_vs_self.sh [--rounds 5] [--phones 3000] [--concurrency 1000] [--build build]
#
# Each round runs bench/capf/bench_capf.sh --pin once self-signed and once
# CA-signed (the order alternates by round) and prints both rates; the end
# prints the medians and the median of the per-round ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=5 phones=3000 concurrency=1000 build=build
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --phones) phones=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
one() { # [--ca-signed]: prints enrollments/s of one run
  bench/capf/bench_capf.sh --pin --runs 1 --hold 0 --phones "$phones" --concurrency "$concurrency" \
    --build "$build" "$@" | awk -F'enrollments_per_s=' '/ run=1 / {split($2, a, " "); print a[1]}'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
self=() ca=() ratios=()
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) = 1 ]; then s=$(one); c=$(one --ca-signed); else c=$(one --ca-signed); s=$(one); fi
  ratio=$(awk -v c="$c" -v s="$s" 'BEGIN {printf "%.3f", c / s}')
  echo "round=$r self_signed_per_s=$s ca_signed_per_s=$c ratio=$ratio"
  self+=("$s") ca+=("$c") ratios+=("$ratio")
done
echo "median_self_signed_per_s=$(printf '%s\n' "${self[@]}" | median)" \
  "median_ca_signed_per_s=$(printf '%s\n' "${ca[@]}" | median)" \
  "median_ratio=$(printf '%s\n' "${ratios[@]}" | median)"
