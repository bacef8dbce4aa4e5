"""What the multi-node tests (test_cluster_*.py, issue 12) share: a private
PostgreSQL cluster of the test's own (tests/tools/pg_cluster.sh), several
capstan nodes whose data directories share one database, SQL through psql,
phone threads that fail over from one node to the other and keep every
certificate they receive, and the checks that every such certificate is
recorded once in the certs table and in its device's history.

These tests start their own PostgreSQL whatever the mode they run in (they
are left out of the postgres/ copies in CMakeLists.txt).

Python 3 standard library and python3-cryptography.
"""

import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostile_lib as h  # noqa: E402
from it_common import SLOW, TestFailure, capstan_bin, check, log  # noqa: E402,F401

PG_BIN = os.environ.get("CAPSTAN_PG_BIN", "/usr/lib/postgresql/15/bin")
PG_TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "pg_cluster.sh")
PSQL = os.path.join(PG_BIN, "psql") if os.path.exists(os.path.join(PG_BIN, "psql")) else "psql"

IN_PROGRESS = "OP_STATUS_IN_PROGRESS"


def require_postgres():
    """Exits 1 with a clear message when PostgreSQL 15 is not installed."""
    if not os.access(os.path.join(PG_BIN, "initdb"), os.X_OK):
        log("FAIL: %s/initdb not found (scripts/deps.sh --test installs postgresql-15)" % PG_BIN)
        sys.exit(1)


def watchdog(seconds):
    """The whole test ends within SECONDS: past that, SIGALRM fails it (the
    test's finally blocks stop the nodes and the cluster)."""

    def fire(_sig, _frm):
        raise TestFailure("watchdog: the test did not finish within %d s" % seconds)

    signal.signal(signal.SIGALRM, fire)
    signal.alarm(int(seconds))


# --- PostgreSQL -------------------------------------------------------------


class Pg:
    """A private cluster (pg_cluster.sh) in a directory under /tmp (a short
    socket path; as root, every parent must let the cluster's user
    through). A detached guard stops it and removes the directory if this
    process dies without doing so (SIGKILL, a ctest timeout)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="capstan-pgc.", dir=os.environ.get("CAPSTAN_PG_TMPDIR", "/tmp"))
        self.base = None
        self.guard = None

    def _tool(self, *args, timeout=120):
        p = subprocess.run([PG_TOOL, *args], capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise TestFailure("pg_cluster.sh %s failed: %s" % (" ".join(args), p.stderr.strip()[-3000:]))
        return p.stdout.strip()

    def start(self):
        # The guard: its own session, so a kill of our process group leaves it.
        self.guard = subprocess.Popen(
            [
                "bash",
                "-c",
                'trap "exit 0" TERM; while kill -0 "$1" 2>/dev/null; do sleep 1 & wait $!; done; '
                '[[ -d "$2" ]] || exit 0; "$3" stop "$2" || "$3" kill "$2"; rm -rf "$2"',
                "_",
                str(os.getpid()),
                self.dir,
                PG_TOOL,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.base = self._tool("start", self.dir)
        log("PostgreSQL at %s (%s)" % (self.base, self.dir))
        return self

    def createdb(self, name):
        return self._tool("createdb", self.dir, name)

    def kill(self):
        """SIGKILL the postmaster (an outage); its backends are gone after."""
        self._tool("kill", self.dir)

    def restart(self):
        self._tool("restart", self.dir)

    def stop(self):
        """Stops the cluster (if running) and removes its directory."""
        try:
            subprocess.run([PG_TOOL, "stop", self.dir], capture_output=True, timeout=90)
        except subprocess.TimeoutExpired:
            pass
        if self.guard is not None and self.guard.poll() is None:
            self.guard.terminate()
            self.guard.wait(10)
        if os.environ.get("CAPSTAN_IT_KEEP") == "1":
            log("kept %s" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, n=4000):
        try:
            with open(os.path.join(self.dir, "postgres.log"), errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""


def psql(url, sql, timeout=30):
    """Rows of SQL's result, each a list of strings (fields split on \\x1f)."""
    env = dict(os.environ, PGCONNECT_TIMEOUT="10")
    p = subprocess.run(
        [PSQL, "-X", "-q", "-A", "-t", "-F", "\x1f", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
        capture_output=True,
        text=True,
        timeout=timeout * SLOW,
        env=env,
    )
    if p.returncode != 0:
        raise TestFailure("psql %r failed: %s" % (sql, p.stderr.strip()))
    return [line.split("\x1f") for line in p.stdout.splitlines() if line != ""]


def psql_rc(url, sql, timeout=30):
    """(exit status, stderr) of psql with URL running SQL."""
    env = dict(os.environ, PGCONNECT_TIMEOUT="10")
    p = subprocess.run(
        [PSQL, "-X", "-q", "-A", "-t", url, "-c", sql], capture_output=True, text=True, timeout=timeout, env=env
    )
    return p.returncode, p.stderr


# --- Nodes ------------------------------------------------------------------


def init_nodes(pg, dbname, names, base_dir):
    """Data directories NAMES under BASE_DIR sharing the new database
    DBNAME: the first creates the store, the others join it (`capstan init
    --store URL`). Returns (url, {name: data dir})."""
    url = pg.createdb(dbname)
    dirs = {}
    for i, n in enumerate(names):
        d = os.path.join(base_dir, n, "data")
        os.makedirs(os.path.dirname(d), exist_ok=True)
        out = h.cli(d, "init", "--store", url)
        dirs[n] = d
        if i > 0:
            # The second node joins: same identities, never new ones.
            log("node %s: %s" % (n, out.strip() or "initialised"))
    capf = {h.cli(d, "cert", "export", "capf") for d in dirs.values()}
    tftp = {h.cli(d, "cert", "export", "tftp") for d in dirs.values()}
    check(len(capf) == 1 and len(tftp) == 1, "the nodes' data directories have different identities")
    return url, dirs


class Node:
    """`capstan serve` on a data directory that exists (no --init), every
    listener on a kernel-picked loopback port (HTTP and TFTP with
    files=True). Its stderr goes to a list and to BASE/server.log."""

    def __init__(self, name, data_dir, files=False, extra=()):
        self.name = name
        self.data_dir = data_dir
        self.files = files
        self.extra = list(extra)
        self.proc = None
        self.lines = []
        self.lock = threading.Lock()
        self.capf_port = self.admin_port = self.http_port = self.tftp_port = None
        self.logfile = os.path.join(os.path.dirname(data_dir), "server.log")

    def start(self, timeout=60):
        listen = "127.0.0.1:0" if self.files else "off"
        argv = [
            capstan_bin(),
            "serve",
            "--data-dir",
            self.data_dir,
            "--capf-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--http-listen",
            listen,
            "--tftp-listen",
            listen,
            "--drain-seconds",
            "5",
            *self.extra,
        ]
        self.capf_port = self.admin_port = self.http_port = self.tftp_port = None
        ready = threading.Event()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=h._die_with_parent,
        )
        proc = self.proc

        def reader():
            with open(self.logfile, "a") as lf:
                for raw in proc.stderr:
                    line = raw.decode("utf-8", "replace").rstrip("\n")
                    lf.write(line + "\n")
                    lf.flush()
                    with self.lock:
                        self.lines.append(line)
                    m = re.search(r"event=listeners admin_port=(\d+) http_port=(-?\d+) tftp_port=(-?\d+)", line)
                    if m:
                        self.admin_port, self.http_port, self.tftp_port = map(int, m.groups())
                    m = re.search(r"event=http_listening server=admin .*port=(\d+)", line)
                    if m:
                        self.admin_port = int(m.group(1))
                    m = re.search(r"event=ready .*capf_port=(\d+)", line)
                    if m:
                        self.capf_port = int(m.group(1))
                        ready.set()
            ready.set()

        self.thread = threading.Thread(target=reader, daemon=True)
        self.thread.start()
        if not ready.wait(timeout * SLOW) or self.capf_port is None or proc.poll() is not None:
            self.kill()
            raise TestFailure("node %s did not become ready:\n%s" % (self.name, self.log_text()[-4000:]))
        check(self.admin_port, "node %s: admin port not logged" % self.name)
        if self.files:
            check(self.http_port and self.tftp_port, "node %s: file ports not logged" % self.name)
        log("node %s ready: capf=%d admin=%d http=%s tftp=%s pid=%d"
            % (self.name, self.capf_port, self.admin_port, self.http_port, self.tftp_port, proc.pid))
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        with self.lock:
            return "\n".join(self.lines)

    def http_admin(self, path, timeout=10):
        import urllib.request

        url = "http://127.0.0.1:%d%s" % (self.admin_port, path)
        with urllib.request.urlopen(url, timeout=timeout * SLOW) as r:
            return r.status, r.read().decode("utf-8", "replace")

    def kill(self):
        """SIGKILL (a crash), waited for."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if self.proc is not None and getattr(self, "thread", None):
            self.thread.join(10)

    def stop(self):
        """SIGTERM; must exit 0 within the bound with no sanitizer report."""
        check(self.alive(), "node %s died before the end" % self.name)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60 * SLOW)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TestFailure("node %s did not exit within %d s of SIGTERM" % (self.name, 60 * SLOW))
        self.thread.join(10)
        rc = self.proc.returncode
        rep = self.sanitizer_report()
        check(rep is None, "node %s: sanitizer report:\n%s" % (self.name, rep))
        check(rc == 0, "node %s exited %s after SIGTERM" % (self.name, rc))

    def sanitizer_report(self):
        t = self.log_text()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if marker in t:
                i = t.index(marker)
                return t[max(0, i - 200) : i + 3000]
        return None


def stop_all(nodes, pg):
    """Cleanup: kills every node still running, stops the cluster."""
    for n in nodes:
        try:
            n.kill()
        except Exception:  # noqa: BLE001 (cleanup goes on)
            pass
    if pg is not None:
        pg.stop()


def node_answers(node, timeout=3):
    """True when the node's admin listener answers /healthz in time."""
    try:
        node.http_admin("/healthz", timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 (any failure: it does not answer)
        return False


def dump_logs(nodes, pg):
    for n in nodes:
        log("---- node %s log (tail; %s) ----\n%s" % (n.name, n.logfile, n.log_text()[-5000:]))
        # A node alive that no longer answers is hung: its threads' stacks
        # say where (gdb, when installed; bounded).
        if n.alive() and not node_answers(n) and shutil.which("gdb"):
            try:
                p = subprocess.run(["gdb", "-p", str(n.pid), "-batch", "-ex", "thread apply all bt 25"],
                                   capture_output=True, text=True, timeout=60)
                stacks = "\n".join(l for l in p.stdout.splitlines() if l.startswith(("Thread", "#")))
                log("---- node %s does not answer /healthz: its threads ----\n%s" % (n.name, stacks[-12000:]))
            except (OSError, subprocess.TimeoutExpired) as e:
                log("gdb on node %s: %s" % (n.name, e))
    if pg is not None:
        log("---- postgres.log (tail) ----\n" + pg.log_tail())


# --- Devices and phones -----------------------------------------------------


def import_devices(data_dir, names, key="rsa1024"):
    """`device import` of an install with null authentication for NAMES;
    max-connections-per-address raised (every phone is 127.0.0.1)."""
    h.cli(data_dir, "config", "set", "max-connections-per-address", "1000")
    csv = os.path.join(os.path.dirname(data_dir), "devices.csv")
    with open(csv, "w") as f:
        f.write("name,operation,auth_mode,auth_string,key,completes_by\n")
        for n in names:
            f.write("%s,install,null,,%s,\n" % (n, key))
    out = h.cli(data_dir, "device", "import", csv)
    check("%d added" % len(names) in out, "device import said: %r" % out)
    return csv


class RetryLater(Exception):
    def __init__(self, stage):
        super().__init__("RETRY_LATER " + stage)
        self.stage = stage


def enroll(port, name, spki, cert_sink):
    """A well-behaved install, as hostile_lib.enroll, that also takes
    RETRY_LATER at any step (raises RetryLater with the step). Returns the
    LSC DER; CERT_SINK(name, der) is called as soon as it arrives."""
    with h.Phone(port) as p:
        m = p.recv()
        if m.command == h.RETRY_LATER:
            raise RetryLater("instead of AUTH_REQUEST")
        check(m.command == h.AUTH_REQUEST, "%s: expected AUTH_REQUEST, got %r" % (name, m))
        p.send_auth(name)
        m = p.recv()
        if m.command == h.RETRY_LATER:
            raise RetryLater("after AUTH_RESPONSE")
        if m.command == h.END_SESSION:
            raise h.EndSession(name, m.u8(h.EL_REASON))
        check(m.command == h.KEY_GEN_REQUEST, "%s: expected KEY_GEN_REQUEST, got %r" % (name, m))
        p.send(h.msg(h.KEY_GEN_RESPONSE, p.session_id, h.el(h.EL_PUBLIC_KEY, spki)))
        m = p.recv()
        if m.command == h.RETRY_LATER:
            raise RetryLater("after KEY_GEN_RESPONSE")
        check(m.command == h.STORE_CERT_REQUEST, "%s: expected STORE_CERT_REQUEST, got %r" % (name, m))
        ctype, der = h.cert_element_der(m.get(h.EL_CERTIFICATE))
        check(ctype == 1, "%s: CERTIFICATE prefix type is not LSC" % name)
        cert_sink(name, der)
        p.send(h.msg(h.STORE_CERT_RESPONSE, p.session_id, h.el(h.EL_REASON, b"\x01")))
        m = p.recv()
        if m.command == h.RETRY_LATER:
            raise RetryLater("after STORE_CERT_RESPONSE")
        check(m.command == h.END_SESSION, "%s: expected END_SESSION, got %r" % (name, m))
        check(m.u8(h.EL_REASON) == h.REASON_UPDATE, "%s: END_SESSION %d after the store" % (name, m.u8(h.EL_REASON)))
        return der


class Load:
    """Phone threads enrolling the devices of a queue against several
    nodes. Phone i starts on node i % len(nodes); when its node closes or
    refuses the connection it tries the next node (failover). RETRY_LATER:
    it comes back to the same node after a short pause. Every certificate a
    phone receives is kept (sink, and a file in cert_dir) before it
    answers."""

    def __init__(self, names, nodes, keys, cert_dir, seed=0):
        self.todo = queue.Queue()
        for n in names:
            self.todo.put(n)
        self.nodes = nodes
        self.keys = keys
        self.cert_dir = cert_dir
        self.seed = seed
        self.lock = threading.Lock()
        self.received = {}  # name -> [(der, serial)]
        self.round_start = {}
        self.completed = {}  # name -> der
        self.completed_on = {}  # name -> node name
        self.n_received = 0
        self.lost_end = 0
        self.failovers = 0
        self.retry_later = {}  # stage -> count
        self.retry_later_since = None  # (time) set by the test: counts after it
        self.errors = []
        self.outstanding = len(names)
        self.stop = threading.Event()
        self.threads = []
        # Set by a test: a predicate telling whether an unexpected failure
        # may be forgiven (e.g. while the database is down).
        self.excused = lambda: False

    def sink(self, name, der):
        serial = _serial_of(der)
        with self.lock:
            got = self.received.setdefault(name, [])
            got.append((der, serial))
            self.n_received += 1
            k = len(got)
        with open(os.path.join(self.cert_dir, "%s.%d.der" % (name, k)), "wb") as f:
            f.write(der)

    def finish(self, name, der, node, lost_end=False):
        with self.lock:
            self.completed[name] = der
            self.completed_on[name] = node
            if lost_end:
                self.lost_end += 1
            self.outstanding -= 1

    def phone(self, idx):
        rnd = random.Random(self.seed * 1000 + idx)
        cur = idx % len(self.nodes)
        while not self.stop.is_set():
            try:
                name = self.todo.get(timeout=0.2)
            except queue.Empty:
                with self.lock:
                    if self.outstanding == 0:
                        return
                continue
            with self.lock:
                self.round_start[name] = len(self.received.get(name, []))
            while not self.stop.is_set():
                node = self.nodes[cur]
                if not node.alive():
                    cur = (cur + 1) % len(self.nodes)
                    with self.lock:
                        self.failovers += 1
                    time.sleep(0.01)
                    continue
                try:
                    der = enroll(node.capf_port, name, rnd.choice(self.keys), self.sink)
                except RetryLater as e:
                    with self.lock:
                        self.retry_later[e.stage] = self.retry_later.get(e.stage, 0) + 1
                    time.sleep(0.1 + rnd.random() * 0.2)
                    continue
                except h.EndSession as e:
                    with self.lock:
                        got = self.received.get(name, [])[self.round_start[name] :]
                    if e.reason == h.REASON_NO_ACTION and got:
                        # The END_SESSION {1} of a finished session was lost
                        # (a node killed): nothing left to do.
                        self.finish(name, got[-1][0], node.name, lost_end=True)
                        break
                    self.error(node, str(e))
                    time.sleep(0.1)
                    continue
                except (h.Closed, OSError) as e:
                    # The node was killed or cut the session: the next node.
                    if node.alive() and not self.excused():
                        self.error(node, "%s: connection to node %s: %s" % (name, node.name, e or type(e).__name__))
                    cur = (cur + 1) % len(self.nodes)
                    with self.lock:
                        self.failovers += 1
                    time.sleep(0.05)
                    continue
                except TestFailure as e:
                    self.error(node, "%s (node %s): %s" % (name, node.name, e))
                    time.sleep(0.1)
                    continue
                self.finish(name, der, node.name)
                break

    def error(self, node, what):
        # Failures against a node being killed, or while the test excuses
        # them, do not count; anything else does.
        time.sleep(0.3)
        if node.alive() and not self.excused():
            with self.lock:
                self.errors.append(what)

    def start(self, phones):
        for i in range(phones):
            t = threading.Thread(target=self.phone, args=(i,), daemon=True)
            self.threads.append(t)
            t.start()

    def wait_received(self, n, bound):
        deadline = time.monotonic() + bound * SLOW
        while time.monotonic() < deadline:
            with self.lock:
                if self.n_received >= n:
                    return
            time.sleep(0.005)
        raise TestFailure("load stalled: %d certificates of %d wanted" % (self.n_received, n))

    def join(self, bound):
        deadline = time.monotonic() + bound
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def summary(self):
        return (
            "phones received %d certificates for %d devices, %d completed, %d failovers, "
            "%d END_SESSION lost, RETRY_LATER %s"
            % (self.n_received, len(self.received), len(self.completed), self.failovers, self.lost_end, self.retry_later)
        )


def _serial_of(der):
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def serial_hex(serial):
    return "%032x" % serial


# --- Checks -----------------------------------------------------------------


def certs_table(url):
    """{serial hex (32 digits): (der-bearing record bytes, status)} of the
    certs table."""
    rows = psql(url, "SELECT encode(k, 'hex'), encode(v, 'hex'), status FROM certs", timeout=60)
    out = {}
    for k, v, st in rows:
        out[k] = (bytes.fromhex(v), st)
    return out


def duplicate_keys(url):
    return psql(url, "SELECT encode(k, 'hex'), count(*) FROM certs GROUP BY k HAVING count(*) > 1")


def devices_in_progress(url):
    return [r[0] for r in psql(url, "SELECT convert_from(k, 'UTF8') FROM devices WHERE status = '%s'" % IN_PROGRESS)]


def check_received_recorded(url, received, failures):
    """Every certificate in RECEIVED ({name: [(der, serial)]}) is in the
    certs table under its serial, with the same DER, once. Returns the
    table."""
    table = certs_table(url)
    dups = duplicate_keys(url)
    if dups:
        failures.append("certs table: serials recorded more than once: %s" % dups[:5])
    # Each DER is in exactly one row.
    for name, got in received.items():
        for der, serial in got:
            row = table.get(serial_hex(serial))
            if row is None:
                failures.append("%s: certificate %s a phone received is not in the certs table" % (name, serial_hex(serial)))
                continue
            if der not in row[0]:
                failures.append("%s: certs row %s does not hold the DER the phone received" % (name, serial_hex(serial)))
            holders = [k for k, (v, _st) in table.items() if der in v]
            if len(holders) != 1:
                failures.append("%s: the certificate %s is in %d rows of certs" % (name, serial_hex(serial), len(holders)))
    return table


def device_histories(data_dir, names, workers=4):
    """{name: `device show NAME --json`} through DATA_DIR, WORKERS at once."""
    from concurrent.futures import ThreadPoolExecutor

    def show(n):
        return n, json.loads(h.cli(data_dir, "device", "show", n, "--json"))

    with ThreadPoolExecutor(workers) as ex:
        return dict(ex.map(show, names))


def check_histories(data_dir, names, received, completed, failures):
    """Through DATA_DIR: every certificate a phone received is in its
    device's history, and the last one a completed phone holds is
    installed with the device succeeded."""
    shown = device_histories(data_dir, names)
    for name in names:
        d = shown[name]
        hist = {e["serial"]: e["status"] for e in d["cert_history"]}
        for _der, serial in received.get(name, []):
            if serial_hex(serial) not in hist:
                failures.append("%s: certificate %s not in its history (through %s): %s"
                                % (name, serial_hex(serial), data_dir, sorted(hist)))
        der = completed.get(name)
        if der is not None:
            s = serial_hex(_serial_of(der))
            if hist.get(s) != "installed":
                failures.append("%s: its last certificate %s is %r in its history" % (name, s, hist.get(s)))
            if d["status"] != "succeeded":
                failures.append("%s: status %r after the phone completed (%s)" % (name, d["status"], d.get("status_reason")))
    return shown


class Run:
    """One cluster test's life, as a `with` block: its directory, its
    PostgreSQL (run.pg) and nodes (run.nodes) once the body starts them, and
    its failures. A TestFailure (or a bug of the test) raised in the body is
    a failure; on the way out, whatever happened, the watchdog is off, the
    cleanups run, the logs are shown if anything failed, every node and the
    cluster are stopped and the directory removed."""

    def __init__(self, prefix, bound):
        require_postgres()
        watchdog(bound)
        self.base = tempfile.mkdtemp(prefix=prefix)
        self.pg = None
        self.nodes = []
        self.failures = []
        self.cleanups = []

    def __enter__(self):
        return self

    def two_nodes(self, dbname, files=False):
        """Starts the run's PostgreSQL and initialises nodes a and b on one
        store in database |dbname| (not started). Returns (url, dirs, a, b)."""
        self.pg = Pg().start()
        url, dirs = init_nodes(self.pg, dbname, ["a", "b"], self.base)
        a = Node("a", dirs["a"], files=files)
        b = Node("b", dirs["b"], files=files)
        self.nodes = [a, b]
        return url, dirs, a, b

    def __exit__(self, kind, err, tb):
        if kind is not None and issubclass(kind, TestFailure):
            self.failures.append(str(err))
        elif kind is not None:
            import traceback

            self.failures.append("unexpected %s: %s" % (kind.__name__,
                                                        "".join(traceback.format_exception(kind, err, tb))))
        signal.alarm(0)
        for cleanup in self.cleanups:
            cleanup()
        if self.failures:
            dump_logs(self.nodes, self.pg)
        stop_all(self.nodes, self.pg)
        remove_dir(self.base)
        return kind is None or issubclass(kind, Exception)


def kill_process(proc):
    """Kills a helper process the test started, if it still runs."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def report(failures, ok):
    if failures:
        log("\n%d FAILURE(S):" % len(failures))
        for f in failures[:40]:
            log("  - " + f)
        return 1
    log(ok)
    return 0


def remove_dir(d):
    """Removes the test's directory (kept with CAPSTAN_IT_KEEP=1)."""
    if os.environ.get("CAPSTAN_IT_KEEP") == "1":
        log("kept %s" % d)
    else:
        shutil.rmtree(d, ignore_errors=True)
