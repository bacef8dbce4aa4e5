#!/usr/bin/env python3
"""Two capstan nodes on one PostgreSQL database enroll phones at once
(issue 12).

A private PostgreSQL cluster (tests/tools/pg_cluster.sh) holds one database;
data directory A creates the store and B joins it (`capstan init --store
URL`: same CAPF and TFTP identities). 200 devices are imported through A;
two capstan-bench runs enroll half the phones against A's CAPF port and half
against B's at the same time. Then:

- every phone got a certificate (bench outcomes, and one LSC file each);
- the certs table holds exactly one row per enrollment (count = 200, no
  serial twice) and each phone's certificate, same DER, is in it;
- each device's history, read through the OTHER node's data directory
  (`capstan device show --json`), has that one certificate, installed, and
  the device succeeded; no device is left in progress;
- both nodes stop cleanly (exit 0, no sanitizer report).

Environment: CAPSTAN_BIN, CAPSTAN_BUILD_DIR; CAPSTAN_SANITIZE=ON stretches
the bounds. Needs postgresql-15 (it starts its own cluster).
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_lib as c  # noqa: E402
from cluster_lib import SLOW, TestFailure, check, log  # noqa: E402

DEVICES = 200
CONCURRENCY = 16  # per bench (per node)
BOUND = 240 * SLOW


def names():
    return ["SEP0C1%09X" % i for i in range(DEVICES)]


def bench(node, csv, lsc_dir, out_path):
    build = os.environ.get("CAPSTAN_BUILD_DIR") or os.path.dirname(c.capstan_bin())
    keys = os.path.join(build, "integration-keys")
    os.makedirs(keys, exist_ok=True)
    argv = [
        os.path.join(build, "capstan-bench"),
        "--connect",
        "127.0.0.1:%d" % node.capf_port,
        "--devices",
        csv,
        "--concurrency",
        str(CONCURRENCY),
        "--key",
        "rsa1024",
        "--key-pool",
        "4",
        "--key-cache",
        keys,
        "--lsc-dir",
        lsc_dir,
        "--timeout",
        str(int(60 * SLOW)),
        "--json",
    ]
    return subprocess.Popen(argv, stdout=open(out_path, "w"), stderr=open(out_path + ".err", "w"))


def main():
    with c.Run("capstan-cluster-two-", BOUND) as run:
        base, failures = run.base, run.failures
        url, dirs, a, b = run.two_nodes("two_nodes")
        nodes = run.nodes
        a.start()
        b.start()

        all_names = names()
        csv = c.import_devices(dirs["a"], all_names)
        with open(csv) as f:
            header, *rows = f.read().splitlines()
        halves = {"a": rows[0::2], "b": rows[1::2]}
        procs = {}
        for n, node in (("a", a), ("b", b)):
            p = os.path.join(base, "phones-%s.csv" % n)
            with open(p, "w") as f:
                f.write("\n".join([header] + halves[n]) + "\n")
            os.makedirs(os.path.join(base, "lsc-" + n))
            procs[n] = bench(node, p, os.path.join(base, "lsc-" + n), os.path.join(base, "bench-%s.json" % n))
        started = time.monotonic()
        for n, p in procs.items():
            try:
                rc = p.wait(max(1, BOUND - 30 - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise TestFailure("capstan-bench against node %s did not finish in time" % n)
            out = open(os.path.join(base, "bench-%s.json" % n)).read()
            err = open(os.path.join(base, "bench-%s.json.err" % n)).read()
            check(rc == 0, "capstan-bench against node %s exited %d: %s %s" % (n, rc, out[-2000:], err[-2000:]))
            log("bench node %s (%.1f s): %s" % (n, time.monotonic() - started, out.strip()[:600]))
        log("both benches done in %.1f s" % (time.monotonic() - started))

        # One certificate per phone, saved by the bench as NAME.SERIAL.der.
        received = {}
        by_node = {}
        for n in ("a", "b"):
            d = os.path.join(base, "lsc-" + n)
            for f in os.listdir(d):
                parts = f.split(".")
                if len(parts) == 3 and parts[2] == "der" and parts[1] not in ("key", "pending"):
                    der = open(os.path.join(d, f), "rb").read()
                    received.setdefault(parts[0], []).append((der, c._serial_of(der)))
                    by_node[parts[0]] = n
        missing = [x for x in all_names if x not in received]
        check(not missing, "%d phones got no certificate, e.g. %s" % (len(missing), missing[:5]))
        more = {k: len(v) for k, v in received.items() if len(v) != 1}
        check(not more, "phones with more than one certificate: %s" % list(more.items())[:5])

        # The certs table: one row per enrollment, each DER once.
        count = int(c.psql(url, "SELECT count(*) FROM certs")[0][0])
        if count != DEVICES:
            failures.append("certs table has %d rows after %d enrollments" % (count, DEVICES))
        c.check_received_recorded(url, received, failures)
        statuses = dict((r[0], int(r[1])) for r in c.psql(url, "SELECT status, count(*) FROM certs GROUP BY 1"))
        log("certs by status: %s" % statuses)
        if statuses != {"CERT_STATUS_INSTALLED": DEVICES}:
            failures.append("certs by status %s, expected all %d installed" % (statuses, DEVICES))

        # Each device's history through the other node's data directory.
        completed = {k: v[-1][0] for k, v in received.items()}
        for n, other in (("a", "b"), ("b", "a")):
            mine = [x for x in all_names if by_node.get(x) == n]
            shown = c.check_histories(dirs[other], mine, received, completed, failures)
            for x in mine:
                if len(shown[x]["cert_history"]) != 1 or shown[x]["certs_issued"] != 1:
                    failures.append("%s: history through node %s has %d entries, certs_issued %s"
                                    % (x, other, len(shown[x]["cert_history"]), shown[x]["certs_issued"]))
        stuck = c.devices_in_progress(url)
        if stuck:
            failures.append("devices left in progress: %s" % stuck[:10])
        dev_status = dict((r[0], int(r[1])) for r in c.psql(url, "SELECT status, count(*) FROM devices GROUP BY 1"))
        log("devices by status: %s" % dev_status)
        if dev_status != {"OP_STATUS_SUCCEEDED": DEVICES}:
            failures.append("devices by status %s" % dev_status)

        # Each node counted its own sessions, together all of them.
        ok = 0
        for node in nodes:
            m = c.h.parse_metrics(node.http_admin("/metrics")[1])
            got = sum(v for k, v in m.items()
                      if k.startswith("capstan_capf_sessions_total{") and 'result="ok"' in k)
            log("node %s: %d sessions ok" % (node.name, got))
            ok += got
        if ok != DEVICES:
            failures.append("the nodes counted %d successful sessions, expected %d" % (ok, DEVICES))

        for node in nodes:
            node.stop()
    return c.report(run.failures, "cluster two nodes: %d phones on two nodes, each certificate recorded once" % DEVICES)


if __name__ == "__main__":
    sys.exit(main())
