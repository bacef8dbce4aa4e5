#!/usr/bin/env python3
"""The database goes away under load and comes back; two nodes ride it out
without a restart (issue 12).

Two nodes (HTTP and TFTP on) share one PostgreSQL database (a private
cluster of the test's own). Before the load, phone files are fetched from
both nodes (ITLFile.tlv and a few devices' signed configurations, over HTTP
and TFTP), so each node has served them. Python phones (cluster_lib.Load)
enroll 300 devices, half starting on each node. Mid-load the database is
killed (pg_cluster.sh kill: SIGKILL of the postmaster) and, after a few
seconds of outage, started again (restart, same port). Checked:

- during the outage no phone receives a certificate (each would be one
  without a record): phones hear RETRY_LATER; the files already served are
  still served by both nodes, byte for byte, over HTTP and TFTP;
- after the restart both nodes recover by themselves: the load finishes;
- every certificate any phone received is in the certs table (same DER,
  once) and in its device's history; each phone's last certificate is
  installed; no device stays in progress (allowed 40 s for the repair);
- both nodes stop cleanly.

Environment: CAPSTAN_BIN, CAPSTAN_BUILD_DIR; CAPSTAN_SANITIZE=ON stretches
the bounds. Needs postgresql-15 (it starts its own cluster).
"""

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_lib as c  # noqa: E402
import files_lib as fl  # noqa: E402
from cluster_lib import SLOW, TestFailure, check, log  # noqa: E402

DEVICES = 300
PHONES = 12
KEY_POOL = 6
OUTAGE = 5.0  # seconds the database stays down
BOUND = 300 * SLOW
REPAIR_BOUND = 40


def names():
    return ["SEP0C4%09X" % i for i in range(DEVICES)]


def fetch_files(node, files):
    """{file: bytes} over HTTP; each must be the same over TFTP. Each
    download is bounded (5 s): a node that does not answer fails the test."""
    out = {}
    for f in files:
        try:
            st, _hdr, body = fl.http_request(node.http_port, "GET", "/" + f, timeout=5 * SLOW)
        except OSError as e:
            raise TestFailure("node %s: HTTP GET %s: %s" % (node.name, f, e or type(e).__name__))
        check(st == 200, "node %s: HTTP GET %s: status %d (%r)" % (node.name, f, st, body[:200]))
        try:
            via_tftp, _ = fl.tftp_get(node.tftp_port, f, options={"blksize": 1428})
        except fl.TftpError as e:
            raise TestFailure("node %s: TFTP %s: %s" % (node.name, f, e))
        check(via_tftp == body, "node %s: %s differs between HTTP and TFTP" % (node.name, f))
        out[f] = body
    return out


def main():
    load = None
    with c.Run("capstan-cluster-dbrestart-", BOUND) as run:
        base, failures = run.base, run.failures
        cert_dir = os.path.join(base, "received")
        os.mkdir(cert_dir)
        run.cleanups.append(lambda: load is not None and load.stop.set())
        url, dirs, a, b = run.two_nodes("db_restart", files=True)
        pg, nodes = run.pg, run.nodes
        all_names = names()
        c.import_devices(dirs["a"], all_names)
        a.start()
        b.start()

        # Files each node has served before the outage. (The devices' files
        # change as they enroll: those of the last devices, which the load
        # reaches last, and the ITL, which does not change.)
        served_names = ["ITLFile.tlv"] + ["%s.cnf.xml.sgn" % n for n in all_names[-3:]]
        served = {n.name: fetch_files(n, served_names) for n in nodes}

        keys = [c.h.rsa_spki(1024) for _ in range(KEY_POOL)]
        load = c.Load(all_names, nodes, keys, cert_dir, seed=os.getpid())
        outage = {"on": False}
        # Sessions the outage cuts may fail in any way; a phone's failure
        # while the database is down (or just back) is not a node's fault.
        load.excused = lambda: outage["on"]
        load.start(PHONES)
        rnd = random.Random(os.getpid())
        load.wait_received(DEVICES // 4 + rnd.randint(-20, 20), 120)

        outage["on"] = True
        pg.kill()
        down_at = time.monotonic()
        with load.lock:
            at_kill = load.n_received
            rl_before = sum(load.retry_later.values())
        log("database killed after %d certificates handed out" % at_kill)

        # A certificate committed just before the kill may still reach its
        # phone right after it; none may come later while the database is down.
        time.sleep(1.0 * SLOW)
        with load.lock:
            settled = load.n_received
        checks = 0
        while time.monotonic() - down_at < OUTAGE * SLOW:
            for n in nodes:
                t0 = time.monotonic()
                try:
                    got = fetch_files(n, served_names)
                except TestFailure as e:
                    raise TestFailure("%.1f s into the outage, after %.1f s: %s"
                                      % (time.monotonic() - down_at, time.monotonic() - t0, e))
                for f in served_names:
                    if got[f] != served[n.name][f]:
                        failures.append("node %s served a different %s during the outage" % (n.name, f))
            checks += 1
            time.sleep(0.2)
        with load.lock:
            during = load.n_received - settled
            rl_during = sum(load.retry_later.values()) - rl_before
            received_during = load.n_received
        log("outage %.1f s: %d file checks on both nodes, %d RETRY_LATER, %d certificates handed out"
            % (time.monotonic() - down_at, checks, rl_during, during))
        if during:
            failures.append("%d certificates handed out while the database was down" % during)
        if rl_during == 0:
            failures.append("no phone heard RETRY_LATER during the outage")
        for n in nodes:
            check(n.alive(), "node %s died during the outage" % n.name)

        pg.restart()
        up_at = time.monotonic()
        log("database restarted after %.1f s" % (up_at - down_at))
        # Recovery: certificates flow again, without a restart of either node.
        load.wait_received(received_during + 1, 60)
        log("first certificate %.1f s after the restart" % (time.monotonic() - up_at))
        outage["on"] = False

        if not load.join(max(10, BOUND - 90)):
            load.stop.set()
            failures.append("the phones did not finish in time (%d devices left)" % load.outstanding)
        load.stop.set()
        log(load.summary() + "; finished %.1f s after the restart" % (time.monotonic() - up_at))
        failures.extend("phone error: " + e for e in load.errors[:10])
        for n in nodes:
            check(n.alive(), "node %s died" % n.name)
            st, body = n.http_admin("/healthz")
            check(st == 200, "node %s /healthz %d after the restart: %s" % (n.name, st, body))
            after = fetch_files(n, ["ITLFile.tlv"])
            check(after["ITLFile.tlv"] == served[n.name]["ITLFile.tlv"], "node %s: ITLFile.tlv changed" % n.name)

        deadline = time.monotonic() + REPAIR_BOUND * SLOW
        stuck = c.devices_in_progress(url)
        while stuck and time.monotonic() < deadline:
            time.sleep(0.5)
            stuck = c.devices_in_progress(url)
        if stuck:
            failures.append("devices still in progress %.0f s after the restart: %s"
                            % (time.monotonic() - up_at, stuck[:10]))

        check(len(load.completed) == DEVICES, "%d of %d devices completed" % (len(load.completed), DEVICES))
        table = c.check_received_recorded(url, load.received, failures)
        log("certs table: %d rows; phones received %d certificates" % (len(table), load.n_received))
        c.check_histories(dirs["b"], all_names, load.received, load.completed, failures)
        for n in nodes:
            n.stop()
    return c.report(run.failures, "cluster db restart: both nodes rode out the outage, every certificate on record")


if __name__ == "__main__":
    sys.exit(main())
