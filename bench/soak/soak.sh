#!/usr/bin/env bash
# The soak (issue 13): a day of a large cluster's traffic compressed into a
# few hours against one `capstan serve` on loopback: enrollments and
# renewals, ITL/configuration downloads over HTTP and TFTP, hostile clients,
# admin changes and reloads, all at once; the server's RSS, descriptors and
# store size sampled every minute; at the end the slope of each (per hour,
# after a warm-up) and whether any request failed that should have
# succeeded. See bench/soak/README.md for the model of the day.
#
#   bench/soak/soak.sh [--hours 2] [--scale 12] [--phones 40000] [--build build-rel]
#                      [--out /work/soak-run] [other options of soak.py: --help]
#
# --scale (or --compress) is how many times faster than the day the traffic
# runs: 12 with --hours 2 is one day. Everything goes to --out: samples.csv
# (one row a minute), events.log, batches.jsonl (every capstan-bench batch's
# JSON), server.log, metrics_start.txt / metrics_end.txt, summary.txt and
# summary.json (written by the driver itself when the run ends, also on
# SIGTERM). The data directory is --out/data (removed at the next run).
#
# To run it detached (it outlives the shell):
#   setsid nohup bench/soak/soak.sh --build /tmp/b --out /work/soak-run \
#     > /work/soak-run/soak.log 2>&1 < /dev/null &
#
# Exit status: 0 PASS, 1 FAIL (see summary.txt), 2 usage or set-up failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=$(command -v /usr/bin/python3 || command -v python3)
ulimit -n "$(ulimit -Hn)"
set +e
"$py" "$here/soak.py" "$@"
rc=$?
set -e
[ $rc -eq 0 ] || exit 2
out=/work/soak-run
prev=
for a in "$@"; do [ "$prev" = --out ] && out=$a; prev=$a; done
grep -q '^VERDICT: PASS' "$out/summary.txt" && exit 0 || exit 1
