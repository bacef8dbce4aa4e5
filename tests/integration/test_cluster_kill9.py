#!/usr/bin/env python3
"""A node killed with SIGKILL under load; its phones finish on the other
node (issue 12).

Two nodes share one PostgreSQL database (a private cluster of the test's
own). Python phones (cluster_lib.Load: each saves every certificate the
moment STORE_CERT_REQUEST brings it, before it answers) enroll 300 devices,
half starting on each node. Once about a third of the certificates are out,
node A is killed with SIGKILL; the phones whose sessions it cut, and those
that were to use it, go to node B and finish there. Then:

- every phone completed, each with its last certificate installed;
- every certificate any phone received is in the certs table (same DER,
  once) and in its device's history (`device show --json` through B);
- no device stays in progress: the sessions A was running when it died are
  repaired (by the phones coming back, or by B's leader once A's heartbeat
  is older than the dead threshold, 10 s): allowed 40 s;
- B never fails a phone, and stops cleanly.

Environment: CAPSTAN_BIN, CAPSTAN_BUILD_DIR; CAPSTAN_SANITIZE=ON stretches
the bounds. Needs postgresql-15 (it starts its own cluster).
"""

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_lib as c  # noqa: E402
from cluster_lib import SLOW, TestFailure, check, log  # noqa: E402

DEVICES = 300
ABANDONED = 3  # sessions held on A in key generation when it dies; their phones never come back
PHONES = 12
KEY_POOL = 6
BOUND = 300 * SLOW
REPAIR_BOUND = 40  # s: the dead threshold (10 s) and the leader's repair


def names():
    return ["SEP0C3%09X" % i for i in range(DEVICES)]


def abandoned_names():
    return ["SEP0C4F%08X" % i for i in range(ABANDONED)]


def hold_in_keygen(node, name):
    """A phone that authenticates on NODE and then says nothing: its
    session waits in key generation, the device in progress."""
    p = c.h.Phone(node.capf_port, timeout=60)
    p.auth_request()
    p.send_auth(name)
    m = p.recv()
    check(m.command == c.h.KEY_GEN_REQUEST, "%s: expected KEY_GEN_REQUEST, got %r" % (name, m))
    return p


def nodes_view(node):
    """B's /status.json nodes: {name: entry}."""
    import json

    _, body = node.http_admin("/status.json")
    return {n["name"]: n for n in json.loads(body).get("nodes", [])}


def main():
    load = None
    with c.Run("capstan-cluster-kill9-", BOUND) as run:
        base, failures = run.base, run.failures
        cert_dir = os.path.join(base, "received")
        os.mkdir(cert_dir)
        run.cleanups.append(lambda: load is not None and load.stop.set())
        url, dirs, a, b = run.two_nodes("kill9")
        nodes = run.nodes
        all_names = names()
        c.import_devices(dirs["a"], all_names + abandoned_names())
        a.start()
        b.start()
        view = nodes_view(b)
        check(len(view) == 2 and all(n["alive"] for n in view.values()),
              "node b's /status.json nodes before the kill: %s" % view)
        a_node = [k for k, v in view.items() if not v["self"]][0]
        log("nodes: %s" % {k: (v["alive"], v["leader"]) for k, v in view.items()})

        # Sessions A holds when it dies, whose phones never come back: only
        # the leader's repair of a dead node's devices ends them.
        held = [hold_in_keygen(a, n) for n in abandoned_names()]
        deadline = time.monotonic() + 10 * SLOW
        while set(abandoned_names()) - set(c.devices_in_progress(url)):
            check(time.monotonic() < deadline, "the held devices are not in progress")
            time.sleep(0.1)

        keys = [c.h.rsa_spki(1024) for _ in range(KEY_POOL)]
        load = c.Load(all_names, nodes, keys, cert_dir, seed=os.getpid())
        load.start(PHONES)
        rnd = random.Random(os.getpid())
        target = DEVICES // 3 + rnd.randint(-20, 20)
        load.wait_received(target, 120)
        time.sleep(rnd.random() * 0.05)
        a.kill()
        killed_at = time.monotonic()
        with load.lock:
            at_kill = load.n_received
        log("node a killed (SIGKILL) after %d certificates handed out" % at_kill)

        for p in held:
            p.close()

        if not load.join(max(10, BOUND - 60)):
            load.stop.set()
            failures.append("the phones did not finish in time (%d devices left)" % load.outstanding)
        load.stop.set()
        log(load.summary() + "; finished %.1f s after the kill" % (time.monotonic() - killed_at))
        failures.extend("phone error: " + e for e in load.errors[:10])
        check(b.alive(), "node b died")
        with load.lock:
            on_b = sum(1 for n in load.completed_on.values() if n == "b")
            after_kill = load.n_received - at_kill
        check(after_kill > 0, "no certificate handed out after the kill")
        log("%d phones completed on node b; %d certificates handed out after the kill" % (on_b, after_kill))

        # B sees A dead once its heartbeat is 10 s old.
        deadline = time.monotonic() + REPAIR_BOUND * SLOW
        while True:
            view = nodes_view(b)
            if a_node in view and not view[a_node]["alive"]:
                break
            check(time.monotonic() < deadline, "node b's /status.json never shows node a dead: %s" % view)
            time.sleep(0.5)
        check(view[[k for k, v in view.items() if v["self"]][0]]["leader"], "node b is not the leader: %s" % view)
        log("node b sees node a dead %.1f s after the kill (heartbeat %.1f s old)"
            % (time.monotonic() - killed_at, view[a_node]["heartbeat_age_seconds"]))

        # No device stays in progress (the phones that come back end their
        # devices' attempts; B's leader repairs what a dead node left: the
        # held devices).
        stuck = c.devices_in_progress(url)
        while stuck and time.monotonic() < deadline:
            time.sleep(0.5)
            stuck = c.devices_in_progress(url)
        if stuck:
            failures.append("devices still in progress %.0f s after the kill: %s"
                            % (time.monotonic() - killed_at, stuck[:10]))
        else:
            log("no device in progress %.1f s after the kill" % (time.monotonic() - killed_at))
        for n in abandoned_names():
            d = c.h.device_json(dirs["b"], n)
            if d["status"] != "failed" or d["operation"] != "install":
                failures.append("%s (held on a when it died): status %r operation %r reason %r"
                                % (n, d["status"], d["operation"], d.get("status_reason")))
            else:
                log("%s: failed, %r, its install still scheduled" % (n, d.get("status_reason")))
        # And they enroll on B now.
        for n in abandoned_names():
            der = c.enroll(b.capf_port, n, keys[0], lambda _n, _d: None)
            check(der, "%s: no certificate on node b" % n)

        check(len(load.completed) == DEVICES, "%d of %d devices completed" % (len(load.completed), DEVICES))
        table = c.check_received_recorded(url, load.received, failures)
        log("certs table: %d rows; phones received %d certificates" % (len(table), load.n_received))
        c.check_histories(dirs["b"], all_names, load.received, load.completed, failures)
        b.stop()
    return c.report(run.failures, "cluster kill9: node a killed mid-load, its phones finished on b, every certificate on record")


if __name__ == "__main__":
    sys.exit(main())
