#!/usr/bin/env python3
"""libpq's TLS inside the server process, beside the server's own TLS
(issue 12).

The server links BoringSSL for CAPF's TLS and loads libpq (with its own
OpenSSL, dlmopen'ed into a namespace of its own) for PostgreSQL. On a
private cluster whose pg_hba admits TCP only over TLS (pg_cluster.sh):

- a phone enrolls over CAPF TLS (capstan-phone, with a key generation
  delay so that the session is in flight) while pg_stat_ssl joined with
  pg_stat_activity shows the server's own backends (matched by the
  server process's sockets to the cluster's port) with ssl = t and a TLS
  version, every socket of the server to the cluster being one of them;
- the phone gets its certificate and it is recorded (certs table);
- TCP without TLS is refused: psql with sslmode=disable, and `capstan init
  --store` with a URL saying sslmode=disable, both fail with pg_hba's
  "no encryption"; so the server could only have connected over TLS.

Environment: CAPSTAN_BIN, CAPSTAN_BUILD_DIR; CAPSTAN_SANITIZE=ON stretches
the bounds. Needs postgresql-15 (it starts its own cluster).
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_lib as c  # noqa: E402
import files_lib as fl  # noqa: E402
from cluster_lib import SLOW, TestFailure, check, log  # noqa: E402

DEVS = ["SEP00DD11EE22F%d" % i for i in range(3)]
BOUND = 180 * SLOW


def tcp_ports_to(pid, port):
    """Local ports of PID's TCP sockets connected to 127.0.0.1:PORT."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            t = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
    ports = set()
    with open("/proc/%d/net/tcp" % pid) as f:
        next(f)
        for line in f:
            p = line.split()
            local, remote, state, inode = p[1], p[2], p[3], p[9]
            if inode in inodes and state == "01" and int(remote.split(":")[1], 16) == port:
                ports.add(int(local.split(":")[1], 16))
    return ports


def main():
    phone = None
    with c.Run("capstan-cluster-pgtls-", BOUND) as run:
        base, failures = run.base, run.failures
        run.cleanups.append(lambda: c.kill_process(phone))
        pg = run.pg = c.Pg().start()
        pg_port = int(pg.base.rsplit(":", 1)[1])
        url, dirs = c.init_nodes(pg, "pg_tls", ["a"], base)
        check("sslmode=require" in url, "the store URL %s does not ask for TLS" % url)
        for dev in DEVS:
            c.h.cli(dirs["a"], "device", "add", dev, "--operation", "install", "--auth", "null", "--key", "rsa1024")
        a = c.Node("a", dirs["a"])
        nodes = run.nodes = [a]
        a.start()

        # A phone in flight over CAPF TLS (it holds its key generation 6 s)
        # while the server's backends are looked at. A check that does not
        # fall inside the session (the host stalled the test) is tried again
        # with another device, at most 3 times.
        build = os.environ.get("CAPSTAN_BUILD_DIR") or os.path.dirname(c.capstan_bin())
        keys = os.path.join(build, "integration-keys")
        os.makedirs(keys, exist_ok=True)
        in_flight = False
        for attempt in range(3):
            dev = DEVS[attempt]
            cert = os.path.join(base, dev + ".der")
            phone = subprocess.Popen(
                [fl.phone_bin(), "--connect", "127.0.0.1:%d" % a.capf_port, "--name", dev, "--auth", "null",
                 "--keygen-delay", "6", "--key-cache", keys, "--save-cert", cert,
                 "--timeout", str(int(30 * SLOW)), "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            t0 = time.monotonic()
            st = None
            while phone.poll() is None and time.monotonic() - t0 < 20 * SLOW:
                st = c.psql(url, "SELECT status FROM devices WHERE k = convert_to('%s', 'UTF8')" % dev)[0][0]
                if st == c.IN_PROGRESS:
                    break
                time.sleep(0.1)
            if st == c.IN_PROGRESS:
                # Every backend of the cluster (no filter: one still starting
                # has no application_name yet), with its TLS state.
                rows = c.psql(
                    url,
                    "SELECT a.client_port, s.ssl, coalesce(s.version, ''), coalesce(s.cipher, ''), "
                    "coalesce(a.application_name, '') "
                    "FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid WHERE a.client_port IS NOT NULL")
                mine = tcp_ports_to(a.pid, pg_port)
                log("server pid %d: sockets to PostgreSQL from ports %s" % (a.pid, sorted(mine)))
                server_rows = [r for r in rows if r[0].isdigit() and int(r[0]) in mine]
                log("the server's backends: %s" % server_rows)
                check(server_rows, "no backend of the server among %s" % rows)
                check(any(r[4] == "capstan" for r in server_rows),
                      "no backend of the server says application_name capstan: %s" % server_rows)
                for port, ssl_on, version, _cipher, _app in server_rows:
                    check(ssl_on == "t", "backend of client port %s has ssl=%s" % (port, ssl_on))
                    check(version.startswith("TLSv1."), "backend of client port %s: TLS version %r" % (port, version))
                in_flight = phone.poll() is None
                log("%d backends of the server, all TLS (%s)%s"
                    % (len(server_rows), sorted({(r[2], r[3]) for r in server_rows}),
                       ", while a phone enrolls over CAPF TLS" if in_flight else ""))
            out, err = phone.communicate(timeout=60 * SLOW)
            check(phone.returncode == 0 and '"result":"ok"' in out.replace(" ", ""), "phone: rc %d %s %s"
                  % (phone.returncode, out, err[-2000:]))
            der = open(cert, "rb").read()
            table = c.certs_table(url)
            check(any(der in v for v, _st in table.values()), "%s: the phone's certificate is not in the certs table" % dev)
            log("%s: enrolled over CAPF TLS, its certificate recorded" % dev)
            if in_flight:
                break
            log("attempt %d: the check did not fall inside the session (device status %s); again" % (attempt + 1, st))
        check(in_flight, "no check of the server's backends fell inside a CAPF session in 3 attempts")

        # Without TLS, nothing gets in.
        plain = url.replace("sslmode=require", "sslmode=disable")
        rc, err = c.psql_rc(plain, "SELECT 1")
        check(rc != 0 and "no encryption" in err, "psql without TLS: rc %d, %s" % (rc, err.strip()))
        os.makedirs(os.path.join(base, "plain"))
        p = subprocess.run([c.capstan_bin(), "init", "--data-dir", os.path.join(base, "plain", "data"),
                            "--store", plain], capture_output=True, text=True, timeout=60 * SLOW)
        check(p.returncode != 0, "capstan init over TCP without TLS succeeded")
        check("no encryption" in p.stderr, "capstan init without TLS failed, but not for pg_hba: %s" % p.stderr)
        log("without TLS: refused (psql and capstan init: %s)" % p.stderr.strip().splitlines()[-1][:160])

        a.stop()
    return c.report(run.failures, "cluster pg tls: the server's PostgreSQL connections are TLS beside its CAPF TLS")


if __name__ == "__main__":
    sys.exit(main())
