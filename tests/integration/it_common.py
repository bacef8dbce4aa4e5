"""What files_lib.py and hostile_lib.py (the Python integration tests) share:
the sanitizer slow-down factor, failures, and running the `capstan` CLI.

Python 3 standard library only.
"""

import os
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


def cli(data_dir, *args, check_rc=True, stdin=None, timeout=60):
    """`capstan ARGS --data-dir DATA_DIR`: its stdout; a non-zero exit fails
    the test. With check_rc=False, the CompletedProcess whatever the exit."""
    p = subprocess.run(
        [capstan_bin(), *args, "--data-dir", data_dir],
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
    kernel-picked loopback ports; HTTP and TFTP as given ("off" for none)."""
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
