#!/usr/bin/env bash
# Before/after: the CAPF enrollment benchmark (server pinned to its own
# core, 1,000 phones at once) and the reset storm, for two builds,
# alternated round by round so both see the same machine.
#
#   bench/ab.sh --a BUILD_DIR --b BUILD_DIR [--rounds 5] [--storm-rounds 2]
#
# Each build dir needs capstan and capstan-bench (Release or RelWithDebInfo).
# Per round and build: bench/capf/bench_capf.sh --runs 1 --phones 3000
# --concurrency 1000 --hold 0 --pin, then (for the first --storm-rounds
# rounds) bench/storm/bench_storm.sh --runs 1 --http-phones 10000
# --tftp-phones 1000. Prints every run's line, then per build the medians
# and the ratio b/a. Exit status 0 unless a benchmark could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
a= b= rounds=5 storm_rounds=2
while [ $# -gt 0 ]; do
  case "$1" in
    --a) a=$2; shift 2 ;;
    --b) b=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --storm-rounds) storm_rounds=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$a" ] && [ -n "$b" ] || { echo "usage: bench/ab.sh --a BUILD --b BUILD [--rounds N]" >&2; exit 2; }
out=$(mktemp /tmp/capstan-ab.XXXXXX)
trap 'rm -f "$out"' EXIT
echo "machine: $(nproc) cores (shared), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%MZ)"
for r in $(seq 1 "$rounds"); do
  for side in a b; do
    build=${!side}
    line=$(bench/capf/bench_capf.sh --runs 1 --phones 3000 --concurrency 1000 --hold 0 --pin \
      --build "$build" | grep '^concurrency=1000 run=1 ')
    echo "capf $side round=$r $line" | tee -a "$out"
    if [ "$r" -le "$storm_rounds" ]; then
      bench/storm/bench_storm.sh --runs 1 --http-phones 10000 --tftp-phones 1000 --build "$build" |
        grep -E '^(http|tftp) run=1 cold ' | sed "s/^/storm $side round=$r /" | tee -a "$out"
    fi
  done
done
python3 - "$out" <<'PY'
import json, re, statistics, sys
rows = open(sys.argv[1]).read().splitlines()
def med(v): return statistics.median(v) if v else float("nan")
res = {}
for side in "ab":
    capf = [l for l in rows if l.startswith(f"capf {side} ")]
    rate = [float(re.search(r"enrollments_per_s=([\d.]+)", l).group(1)) for l in capf]
    frac = [float(re.search(r"fraction_of_bound=([\d.]+)", l).group(1)) for l in capf]
    cpu = [float(re.search(r"server_ms_per_enrollment=([\d.]+)", l).group(1)) for l in capf]
    storm = {}
    for t in ("http", "tftp"):
        js = [json.loads(l.split(" cold ", 1)[1]) for l in rows
              if l.startswith(f"storm {side} ") and f" {t} run=1 cold " in l]
        storm[t] = ([j["wall_s"] for j in js], sum(j["errors"] for j in js))
    res[side] = (med(rate), med(frac), med(cpu), {t: (med(w), e) for t, (w, e) in storm.items()})
    print(f"{side}: capf enrollments/s median {med(rate):.0f} of {rate}; fraction of 1-core bound "
          f"{med(frac):.2f}; server ms/enrollment {med(cpu):.3f}; storm cold wall_s http "
          f"{storm['http'][0]} tftp {storm['tftp'][0]}; storm failures "
          f"{storm['http'][1] + storm['tftp'][1]}")
(ra, fa, ca, sa), (rb, fb, cb, sb) = res["a"], res["b"]
print(f"b/a: enrollments/s {rb / ra:.3f}, fraction of bound {fb / fa:.3f}, server CPU per "
      f"enrollment {cb / ca:.3f}, storm cold http {sb['http'][0] / sa['http'][0]:.3f}, "
      f"tftp {sb['tftp'][0] / sa['tftp'][0]:.3f}")
PY
