"""What files_lib.py and hostile_lib.py (the Python integration tests) share:
the sanitizer slow-down factor, failures, and running the `capstan` CLI.

Python 3 standard library only.
"""

import os
import re
import subprocess
import sys

SANITIZE = os.environ.get("CAPSTAN_SANITIZE", "").upper() in ("ON", "1", "TRUE", "YES")
# Generous multiplier for every wait: the ASan build is several times slower.
SLOW = 4.0 if SANITIZE else 1.0


class TestFailure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise TestFailure(what)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def capstan_bin():
    b = os.environ.get("CAPSTAN_BIN")
    if not b:
        b = os.path.join(os.environ.get("CAPSTAN_BUILD_DIR", "build"), "capstan")
    check(os.access(b, os.X_OK), "capstan binary not found: set CAPSTAN_BIN (tried %s)" % b)
    return b


# PostgreSQL mode (tests/tools/on_postgres.sh): the directory of a private
# cluster (tests/tools/pg_cluster.sh). Every data directory the helpers
# create (`init` through cli(), `serve --init` through serve_argv()) gets a
# fresh database of its own there; one a test creates by other means falls
# back to CAPSTAN_STORE (one database for the whole test).
PG_DIR = os.environ.get("CAPSTAN_TEST_PG") or None
PG_TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "pg_cluster.sh")
_pg_seq = 0


def pg_mode():
    return PG_DIR is not None


def store_args(data_dir):
    """The options that choose the store of DATA_DIR when a command is about
    to create it: in PostgreSQL mode, when DATA_DIR is missing or empty,
    ["--store", URL] of a database made for it now (two data directories
    never share a store); [] otherwise (LMDB, or an existing directory, which
    remembers its store)."""
    global _pg_seq
    if not PG_DIR:
        return []
    if os.path.isdir(data_dir) and os.listdir(data_dir):
        return []
    _pg_seq += 1
    test = re.sub(r"[^a-z0-9_]", "_", os.path.splitext(os.path.basename(sys.argv[0]))[0].lower())
    db = "c_%s_%d_%d" % (test[:40], os.getpid(), _pg_seq)
    p = subprocess.run([PG_TOOL, "createdb", PG_DIR, db], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise TestFailure("PostgreSQL mode: createdb %s failed: %s" % (db, p.stderr.strip()))
    url = p.stdout.strip()
    log("data directory %s: store %s" % (data_dir, url))
    return ["--store", url]


def _creates(args):
    """True for the commands that create a data directory."""
    return args[:1] == ("init",) or (args[:1] == ("serve",) and "--init" in args)


def cli(data_dir, *args, check_rc=True, stdin=None, timeout=60):
    """`capstan ARGS --data-dir DATA_DIR`: its stdout; a non-zero exit fails
    the test. With check_rc=False, the CompletedProcess whatever the exit.
    In PostgreSQL mode, `init` of a new data directory gets a database of
    its own (store_args)."""
    extra = store_args(data_dir) if _creates(args) else []
    p = subprocess.run(
        [capstan_bin(), *args, "--data-dir", data_dir, *extra],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout * SLOW,
    )
    if check_rc and p.returncode != 0:
        raise TestFailure(
            "capstan %s failed (rc=%d): %s" % (" ".join(args), p.returncode, p.stderr.strip())
        )
    return p.stdout if check_rc else p


def serve_argv(data_dir, http="127.0.0.1:0", tftp="127.0.0.1:0"):
    """`capstan serve` on DATA_DIR with the CAPF and admin listeners on
    kernel-picked loopback ports; HTTP and TFTP as given ("off" for none).
    In PostgreSQL mode, a new DATA_DIR gets a database of its own
    (store_args): call it just before the server starts."""
    return [
        capstan_bin(),
        "serve",
        "--init",
        "--data-dir",
        data_dir,
        "--capf-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--http-listen",
        http,
        "--tftp-listen",
        tftp,
        "--drain-seconds",
        "5",
        *store_args(data_dir),
    ]


def parse_metrics(text):
    """Prometheus text -> {'name{labels}': value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, val = line.rpartition(" ")
        try:
            out[key] = float(val)
        except ValueError:
            pass
    return out
