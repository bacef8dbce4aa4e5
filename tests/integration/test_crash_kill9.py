#!/usr/bin/env python3
"""Crash consistency under SIGKILL at 100 random moments (R22; issue 13).

One data directory, one long loop. Each round starts the real `capstan
serve` on it and kills it with SIGKILL at a random moment, seeded (the seed
is printed; CAPSTAN_KILL9_SEED replays a run):
  - during startup (before or around the ready line), the load paused;
  - or just after the ready line, or up to LOAD_MAX seconds into a short
    mixed load: Python phones enrolling devices over CAPF/TLS (a phone whose
    session a kill cuts comes back to the next server: a retry), HTTP and
    TFTP downloads of the phone files (the ITL, device configurations), and
    the admin CLI re-arming finished devices (`device import`, so each
    device gets several certificates over the run), changing a setting
    (`config set`) and taking a backup (`capstan backup`, read back, then
    `mdb_stat` of the copy) every few seconds; and capstan-bench enrolling
    a second group of devices (C phones, ec256), each phone's LSC kept in
    --lsc-dir, killed with the server.
The very first round kills the first `serve --init` of the empty data
directory at a random moment of its initialisation.

After every start that reaches the ready line, before the phones resume:
  - the store opened: ready line, /healthz 200;
  - the store reads whole: `mdb_stat` of every database and the free list,
    every record of the devices and certs databases decoded
    (store_dump.py: mdb_dump and a hand-written protobuf reader), and
    `capstan device list --json` parsed, with every device in it;
  - nothing received is missing: every certificate any phone has received
    so far (each Python phone records it the moment STORE_CERT_REQUEST
    arrives, before it answers; capstan-bench's are the LSC files it wrote,
    every version seen) is in its device's certificate history and in the
    certs database under that device with the same DER, compared by serial;
  - no device is in-progress (the start's reconcile ran before the ready
    line; the phones are paused and capstan-bench is stopped, so nothing
    may be in-progress), both in the CLI's list and in the raw records;
  - one HTTP and one TFTP download of the ITL succeed.
At the end the server runs without kills until every phone has finished,
stops with SIGTERM (exit 0, no sanitizer report), and every device is
succeeded with the last certificate its phone got installed (md5hash);
the bench group is re-armed once more so that each bench phone's LSC file
is the certificate installed last.

The summary line gives the numbers: kills by kind, starts checked,
certificate checks, certificates received, sessions retried after a kill,
END_SESSIONs lost, in-progress devices the starts reconciled.

Environment: CAPSTAN_BIN; CAPSTAN_SANITIZE=ON stretches the time bounds
(never the number of kills); CAPSTAN_KILL9_SEED, CAPSTAN_KILL9_KILLS.
"""

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import files_lib as fl  # noqa: E402
import hostile_lib as h  # noqa: E402
import store_dump  # noqa: E402
from hostile_lib import check  # noqa: E402
import crash_lib as cl  # noqa: E402


KILLS = int(os.environ.get("CAPSTAN_KILL9_KILLS", "100"))
DEVICES = 300
PHONES = 10  # concurrent phone threads
KEY_POOL = 4  # rsa1024 keys shared by the phones
MAX_ROUNDS = 1000  # installs per device at most (re-armed while the kills go on)
BENCH_DEVICES = 40  # a second group enrolled by capstan-bench (C phones), ec256
STARTUP_SHARE = 0.2  # rounds killed during startup
JUST_AFTER_SHARE = 0.1  # rounds killed right after the ready line, no load
LOAD_MAX = 1.0  # seconds of load before a kill, at most (not stretched: the kill moment is random anyway)
# Seconds, the whole test (ctest stops it at 600); more kills, more time.
TOTAL_BOUND = (540 if h.SANITIZE else 280) * max(1.0, KILLS / 100)
FILE_CLIENTS = 2  # threads downloading files (HTTP and TFTP alternately)

IN_PROGRESS = 2  # OpStatus.OP_STATUS_IN_PROGRESS (storage/records.proto)


def device_names():
    return ["SEP0E9%09X" % i for i in range(DEVICES)]


def bench_names():
    return ["SEP0EB%09X" % i for i in range(BENCH_DEVICES)]


def bench_bin():
    b = os.path.join(os.path.dirname(h.capstan_bin()), "capstan-bench")
    check(os.access(b, os.X_OK), "capstan-bench not found beside %s" % h.capstan_bin())
    return b


class Bench:
    """capstan-bench enrolling the bench group during one load; it keeps
    each phone's LSC in --lsc-dir (written after each session, by rename).
    Killed with the server; what it saved is checked after each start."""

    def __init__(self, data_dir):
        self.dir = os.path.join(data_dir, "bench")
        self.lsc_dir = os.path.join(self.dir, "lsc")
        self.key_cache = os.path.join(self.dir, "keys")
        os.makedirs(self.lsc_dir)
        os.makedirs(self.key_cache)
        self.csv = os.path.join(self.dir, "devices.csv")
        with open(self.csv, "w") as f:
            f.write("name,operation,auth_mode,auth_string\n")
            for n in bench_names():
                f.write("%s,install,null,\n" % n)
        self.proc = None
        self.runs = 0
        self.seen = {}  # name -> {serial: der} of every LSC found in lsc_dir

    def start(self, capf_port, timeout=5):
        self.stop()
        self.proc = subprocess.Popen(
            [
                bench_bin(), "--connect", "127.0.0.1:%d" % capf_port, "--devices", self.csv,
                "--lsc-dir", self.lsc_dir, "--key", "ec256", "--key-pool", "2",
                "--key-cache", self.key_cache, "--concurrency", "4", "--max-retries", "3",
                "--backoff-seconds", "0.1", "--retry-cap-seconds", "0.5",
                "--timeout", str(int(timeout * h.SLOW)), "--json",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=h._die_with_parent,
        )
        self.runs += 1

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.communicate(timeout=30)
        self.proc = None

    def wait(self, timeout):
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise h.TestFailure("capstan-bench did not finish in %.0f s" % timeout)
        rc = self.proc.returncode
        self.proc = None
        return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def scan(self):
        """Every LSC now in the directory joins |seen|; returns them all as
        [(name, der, serial)]."""
        for fn in os.listdir(self.lsc_dir):
            if not fn.endswith(".der") or fn.endswith(".key.der") or fn.endswith(".pending.der"):
                continue
            with open(os.path.join(self.lsc_dir, fn), "rb") as f:
                der = f.read()
            serial = cl.serial_of(der)
            # NAME.der, or NAME.SERIAL.der: every certificate it ever stored.
            self.seen.setdefault(fn[: -len(".der")].split(".")[0], {})[serial] = der
        return [(n, der, s) for n, v in self.seen.items() for s, der in v.items()]

    def current(self, name):
        p = os.path.join(self.lsc_dir, name + ".der")
        if not os.path.exists(p):
            return None
        with open(p, "rb") as f:
            return f.read()


# --- The server --------------------------------------------------------------


class Server:
    """`capstan serve` on the data directory, every listener on port 0;
    start() does not wait, so a test can kill it during startup."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.proc = None
        self.lines = []
        self.all_lines = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.capf_port = self.admin_port = self.http_port = self.tftp_port = None
        self.reader = None
        self.started_at = None

    def start(self):
        self.ready.clear()
        self.capf_port = self.admin_port = self.http_port = self.tftp_port = None
        with self.lock:
            self.lines = []
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            h.serve_argv(self.data_dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=h._die_with_parent,
        )
        self.reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self.reader.start()

    def _read(self, proc):
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.lock:
                self.lines.append(line)
                self.all_lines.append(line)
                if len(self.all_lines) > 4000:
                    del self.all_lines[:2000]
            m = re.search(r"event=listeners admin_port=(\d+) http_port=(\d+) tftp_port=(\d+)", line)
            if m:
                self.admin_port, self.http_port, self.tftp_port = map(int, m.groups())
            m = re.search(r"event=ready .*capf_port=(\d+)", line)
            if m:
                self.capf_port = int(m.group(1))
                self.ready.set()
        self.ready.set()  # EOF: wake a waiter (it checks that the process lives)

    def wait_ready(self, timeout):
        if not self.ready.wait(timeout) or self.capf_port is None or self.proc.poll() is not None:
            raise h.TestFailure(
                "the server did not open its store and get ready in %.0f s (exit %s); log:\n%s"
                % (timeout, self.proc.poll(), self.log_text()[-4000:])
            )
        check(self.admin_port and self.http_port and self.tftp_port, "listener ports not logged")
        return time.monotonic() - self.started_at

    def log_text(self, everything=False):
        with self.lock:
            return "\n".join(self.all_lines if everything else self.lines)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(30)
        if self.reader is not None:
            self.reader.join(10)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60 * h.SLOW)
        except subprocess.TimeoutExpired:
            self.kill()
            raise h.TestFailure("the server did not exit after SIGTERM")
        self.reader.join(10)
        return self.proc.returncode

    def sanitizer_report(self):
        t = self.log_text(everything=True)
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if marker in t:
                i = t.index(marker)
                return t[max(0, i - 200) : i + 3000]
        return None


# --- The load ----------------------------------------------------------------


class Load(cl.Phones):
    """The phones (crash_lib.Phones); the admin thread re-arms finished
    devices; file clients download. Everything pauses while |up| is clear
    and follows the server to its new ports."""

    error_grace = 0.3

    def __init__(self, names, keys, seed):
        super().__init__(names, keys, seed)
        self.rounds = {}  # name -> installs completed
        self.to_rearm = []  # names finished, waiting for the admin thread
        self.rearmed = 0
        self.admin_cmds = 0
        self.backups = 0
        self.downloads = {"http": 0, "tftp": 0}
        self.looping = True  # while the kill loop runs, finished devices are re-armed
        self.data_dir = None

    def finish(self, name, der, lost_end=False):
        with self.lock:
            self.completed[name] = der
            self.rounds[name] = self.rounds.get(name, 0) + 1
            if lost_end:
                self.lost_end += 1
            if self.looping and self.rounds[name] < MAX_ROUNDS:
                self.to_rearm.append(name)
            else:
                self.outstanding -= 1

    # The admin: `device import` re-arms finished devices (they get another
    # certificate), now and then a `config set`.
    def admin(self):
        rnd = random.Random(self.seed * 1000 + 999)
        csv = os.path.join(self.data_dir, "rearm.csv")
        next_backup = time.monotonic() + 2
        while not self.stop.is_set():
            time.sleep(0.15)
            if time.monotonic() >= next_backup:
                next_backup = time.monotonic() + 5
                self.backup()
            with self.lock:
                names, self.to_rearm = self.to_rearm, []
            if not names:
                with self.lock:
                    if self.outstanding == 0:
                        return
                continue
            cl.write_install_csv(csv, [(names, "rsa1024")])
            p = h.cli(self.data_dir, "device", "import", csv, "--rearm", check_rc=False)
            if p.returncode != 0:
                with self.lock:
                    self.errors.append("device import (re-arm) failed: %s" % p.stderr.strip())
                    self.outstanding -= len(names)
                continue
            if rnd.random() < 0.2:
                v = str(rnd.choice([500, 1000, 2000]))
                p2 = h.cli(self.data_dir, "config", "set", "max-connections-per-address", v, check_rc=False)
                if p2.returncode != 0:
                    with self.lock:
                        self.errors.append("config set failed: %s" % p2.stderr.strip())
            with self.lock:
                self.admin_cmds += 1
                self.rearmed += len(names)
            for n in names:
                self.todo.put(n)

    def backup(self):
        """`capstan backup` (one read transaction over the whole store, the
        copy read back), whatever the server is doing; the copy must pass
        mdb_stat too."""
        out = os.path.join(self.data_dir, "backup.mdb")
        p = h.cli(self.data_dir, "backup", out, "--force", check_rc=False)
        if p.returncode != 0:
            with self.lock:
                self.errors.append("backup failed: %s" % p.stderr.strip())
            return
        q = subprocess.run(["mdb_stat", "-n", "-a", out], capture_output=True, text=True, timeout=60 * h.SLOW)
        with self.lock:
            self.backups += 1
            if q.returncode != 0:
                self.errors.append("mdb_stat of the backup failed: %s" % q.stderr.strip())

    # Files: the ITL and device configurations, over HTTP and TFTP.
    def files(self, idx):
        rnd = random.Random(self.seed * 1000 + 500 + idx)
        names = device_names()
        while not self.stop.is_set():
            with self.lock:
                if self.outstanding == 0:
                    return
            if not self.up.wait(0.2):
                continue
            ports = self.server
            f = rnd.choice(["ITLFile.tlv", rnd.choice(names) + ".cnf.xml"])
            try:
                if rnd.random() < 0.5:
                    fl.http_get(ports[2], f)
                    kind = "http"
                else:
                    fl.tftp_get(ports[3], f, options={"blksize": 1428}, timeout=2 * h.SLOW)
                    kind = "tftp"
                with self.lock:
                    self.downloads[kind] += 1
                time.sleep(0.01)  # leave the CPU to the phones
            except (OSError, h.TestFailure, fl.TftpError):
                time.sleep(0.05)  # cut by a kill (checked after each start instead)

    def start(self):
        others = [lambda i=i: self.files(i) for i in range(FILE_CLIENTS)] + [self.admin]
        super().start(PHONES, others)


# --- Checks after a start ----------------------------------------------------


def http_ok(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10 * h.SLOW) as r:
        return r.status


def check_store(data_dir, load, expect_devices, bench=None):
    """The checks after every start; returns the number of certificates
    checked. Raises TestFailure."""
    # The store reads whole: LMDB's own walk of every database and the free
    # list, then every device and certificate record decoded by hand.
    p = subprocess.run(["mdb_stat", "-e", "-f", "-a", data_dir], capture_output=True, text=True, timeout=30 * h.SLOW)
    check(p.returncode == 0, "mdb_stat failed (rc=%d): %s" % (p.returncode, p.stderr.strip()))
    devices = {}
    history = {}
    for key, f in store_dump.records(data_dir, "devices"):
        name = f[2][0].decode()
        check(key.decode() == name, "devices record %r holds device %r" % (key, name))
        devices[name] = f
        history[name] = {int.from_bytes(s, "big") for s in f.get(21, [])}
        check(f.get(10, [0])[-1] != IN_PROGRESS, "%s: in-progress in the store after the start" % name)
    certs = {}
    for key, f in store_dump.records(data_dir, "certs"):
        serial = int.from_bytes(f[2][0], "big")
        check(key == f[2][0], "certs record key %s holds serial %s" % (key.hex(), f[2][0].hex()))
        certs[serial] = (f[3][0].decode(), f[4][0])
    # The CLI reads the same store whole.
    listed = json.loads(h.cli(data_dir, "device", "list", "--json"))
    check(isinstance(listed, list), "device list --json is not a list")
    by_name = {d["name"]: d for d in listed}
    if expect_devices:
        missing = (set(device_names()) | set(bench_names())) - set(by_name)
        check(not missing, "devices missing from the list: %s" % sorted(missing)[:5])
    stuck = sorted(n for n, d in by_name.items() if d["status"] == "in-progress")
    check(not stuck, "devices left in-progress after the start: %s" % stuck[:5])
    check(set(by_name) == set(devices), "device list and the raw records disagree")
    # Nothing received is missing.
    with load.lock:
        snapshot = [(n, list(v)) for n, v in load.received.items()]
    if bench is not None:
        for name, der, serial in bench.scan():
            snapshot.append((name, [(der, serial)]))
    n = 0
    for name, got in snapshot:
        cl.check_on_record(name, got, history.get(name, set()))
        for der, serial in got:
            check(serial in certs, "%s: serial %032x not in the certs database" % (name, serial))
            check(certs[serial][0] == name, "%s: serial %032x recorded for %s" % (name, serial, certs[serial][0]))
            check(certs[serial][1] == der, "%s: serial %032x recorded with other DER" % (name, serial))
            n += 1
    return n, by_name


def check_files(srv):
    data = fl.http_get(srv.http_port, "ITLFile.tlv")
    check(len(data) > 0, "empty ITL over HTTP")
    for attempt in range(3):  # UDP: a lost datagram is not a finding
        try:
            data2, _ = fl.tftp_get(srv.tftp_port, "ITLFile.tlv", options={"blksize": 1428}, timeout=3 * h.SLOW)
            break
        except h.TestFailure:
            if attempt == 2:
                raise
    check(data2 == data, "the ITL differs over TFTP and HTTP")


def after_start(srv, data_dir, load, bench, stats, failures, when, rearm=True):
    """Waits for the ready line and runs the checks; then re-arms the bench
    devices that finished (so the next load has work for capstan-bench).
    Returns the start time."""
    startup = srv.wait_ready(60 * h.SLOW)
    stats["ready_max"] = max(stats["ready_max"], startup)
    m = re.search(r"event=reconciled_interrupted devices=(\d+)", srv.log_text())
    if m:
        stats["reconciled"] += int(m.group(1))
        stats["reconciling_starts"] += 1
    try:
        st = http_ok(srv.admin_port, "/healthz")
        check(st == 200, "/healthz answered %d" % st)
        n, by_name = check_store(data_dir, load, True, bench)
        check_files(srv)
        stats["checked"] += n
        stats["checks"] += 1
    except (h.TestFailure, OSError) as e:
        failures.append("%s: %s" % (when, e))
        return startup
    if rearm:
        rearm_bench(data_dir, bench, stats, failures, when, by_name)
    return startup


def rearm_bench(data_dir, bench, stats, failures, when, by_name=None):
    """`device import --rearm` of the bench devices that succeeded."""
    if by_name is None:
        by_name = {d["name"]: d for d in json.loads(h.cli(data_dir, "device", "list", "--json"))}
    done = [n for n in bench_names() if by_name[n]["status"] == "succeeded"]
    if not done:
        return
    csv = os.path.join(bench.dir, "rearm.csv")
    cl.write_install_csv(csv, [(done, "ec256")])
    p = h.cli(data_dir, "device", "import", csv, "--rearm", check_rc=False)
    if p.returncode != 0:
        failures.append("%s: device import (bench re-arm): %s" % (when, p.stderr.strip()))
    stats["bench_rearmed"] += len(done)


def main():
    t0 = time.monotonic()
    seed = int(os.environ.get("CAPSTAN_KILL9_SEED") or (int(time.time() * 1000) % 1000000007))
    h.log("kill9: seed %d (CAPSTAN_KILL9_SEED=%d replays the schedule), %d kills" % (seed, seed, KILLS))
    rnd = random.Random(seed)
    data_dir = h.fresh_data_dir("capstan-kill9-")
    srv = Server(data_dir)
    load = None
    bench = None
    failures = []
    stats = dict.fromkeys(
        ("reconciled", "reconciling_starts", "bench_rearmed", "before_ready", "startup", "just_after",
         "load", "checked", "checks"),
        0,
    )
    stats["ready_max"] = 0.0
    try:
        # How long a first start takes (store creation, identities), on a
        # throwaway directory: the first kill falls somewhere in it.
        probe_dir = h.fresh_data_dir("capstan-kill9-probe-")
        probe = Server(probe_dir)
        probe.start()
        init_time = probe.wait_ready(60 * h.SLOW)
        probe.stop()
        shutil.rmtree(probe_dir, ignore_errors=True)

        srv.start()
        time.sleep(rnd.random() * init_time)
        srv.kill()
        kills = 1
        h.log("kill 1: during the first serve --init (of %.2f s)" % init_time)

        srv.start()
        startup = srv.wait_ready(60 * h.SLOW)
        cl.import_devices(data_dir, [(device_names(), "rsa1024"), (bench_names(), "ec256")])
        bench = Bench(data_dir)

        keys = [h.rsa_spki(1024) for _ in range(KEY_POOL)]
        load = Load(device_names(), keys, seed)
        load.data_dir = data_dir
        # The store the killed first init left, completed by this start.
        st = http_ok(srv.admin_port, "/healthz")
        check(st == 200, "/healthz answered %d" % st)
        check_store(data_dir, load, True, bench)
        check_files(srv)
        stats["checks"] += 1
        load.start()
        load.resume(srv.capf_port, srv.http_port, srv.tftp_port)
        bench.start(srv.capf_port)

        state = "up"  # the server is ready, checked, the load running
        while kills < KILLS:
            check(time.monotonic() - t0 < TOTAL_BOUND, "out of time after %d kills" % kills)
            if state == "starting":
                # Somewhere in the startup (phones paused): opening the
                # store, the reconcile, the listeners, or just after ready.
                mode = "startup"
                time.sleep(rnd.random() * startup)
            elif rnd.random() < JUST_AFTER_SHARE:
                mode = "just_after"
                time.sleep(rnd.random() * 0.02)
            else:
                mode = "load"
                time.sleep(0.01 + rnd.random() * LOAD_MAX)
            if state == "up":
                check(srv.alive(), "the server died on its own:\n" + srv.log_text()[-4000:])
            load.pause()
            before_ready = not srv.ready.is_set()
            srv.kill()
            bench.stop()
            kills += 1
            stats[mode] += 1
            if before_ready:
                stats["before_ready"] += 1
            with load.lock:
                n = load.n_received
            h.log("kill %d: %s, %d certificates handed out so far" % (kills, mode, n))

            srv.start()
            if rnd.random() < STARTUP_SHARE:
                state = "starting"  # the next kill falls in this start
                continue
            state = "up"
            startup = after_start(
                srv, data_dir, load, bench, stats, failures, "after kill %d (%s)" % (kills, mode)
            )
            if failures:
                break
            load.resume(srv.capf_port, srv.http_port, srv.tftp_port)
            bench.start(srv.capf_port)

        # The last start: no more kills; every phone finishes.
        if state != "up" and not failures:
            after_start(srv, data_dir, load, bench, stats, failures, "at the last start", rearm=False)
        with load.lock:
            load.looping = False
            # Devices waiting to be re-armed are done.
            load.outstanding -= len(load.to_rearm)
            load.to_rearm = []
        load.resume(srv.capf_port, srv.http_port, srv.tftp_port)
        if not failures and not load.join(max(10, TOTAL_BOUND - (time.monotonic() - t0))):
            failures.append("the phones did not finish in time (%d devices outstanding)" % load.outstanding)
        # capstan-bench: the run of the last load ends by itself (the server
        # stays up); then every bench device is re-armed once more and
        # bench runs (bounded) until all have succeeded, so each holds the
        # certificate installed last.
        if bench.proc is not None:
            bench.wait(120 * h.SLOW)
        rearm_bench(data_dir, bench, stats, failures, "at the end")
        bench_left = bench_names()
        rc, err = None, ""
        for _ in range(5):
            if failures or not bench_left:
                break
            bench.start(srv.capf_port, timeout=10)
            rc, out, err = bench.wait(120 * h.SLOW)
            listed = json.loads(h.cli(data_dir, "device", "list", "--json"))
            ok = {d["name"] for d in listed if d["status"] == "succeeded"}
            bench_left = [n for n in bench_names() if n not in ok]
        if bench_left and not failures:
            failures.append("capstan-bench's devices did not finish: %s (last run rc=%s: %s)"
                            % (bench_left[:5], rc, err.strip()[-1000:]))
        load.stop.set()
        failures.extend("phone/admin error: " + e for e in load.errors[:10])

        cl.stop_checked(srv)

        # Final state, every device.
        n, by_name = check_store(data_dir, load, True, bench)
        stats["checked"] += n
        if not failures:
            for name in bench_names():
                cur = bench.current(name)
                if by_name[name]["status"] != "succeeded" or cur is None:
                    failures.append("%s (bench): status %r, LSC file %s" % (name, by_name[name]["status"], cur is not None))
                elif by_name[name]["md5hash"] != hashlib.md5(cur).hexdigest():
                    failures.append("%s (bench): md5hash %r is not the LSC the phone holds" % (name, by_name[name]["md5hash"]))
            for name in device_names():
                d = by_name[name]
                done = load.completed.get(name)
                if done is None:
                    failures.append("%s: the phone never finished" % name)
                    continue
                if d["status"] != "succeeded":
                    failures.append("%s: status %r at the end" % (name, d["status"]))
                if d["md5hash"] != hashlib.md5(done).hexdigest():
                    failures.append("%s: md5hash %r is not the phone's last certificate" % (name, d["md5hash"]))
            # A sample through `device show`: the installed certificate's status.
            for name in rnd.sample(device_names(), 10):
                try:
                    cl.check_installed(h.device_json(data_dir, name), name, load.completed[name])
                except h.TestFailure as e:
                    failures.append(str(e))
        elapsed = time.monotonic() - t0
        h.log(
            "kill9: %d kills (%d in the first init, %d during startup (%d of them before the ready line), "
            "%d just after ready, %d under load) "
            "in %.0f s; %d starts checked, %d certificate checks, %d certificates received by %d devices "
            "(%d installs, %d re-armed by %d admin commands, %d sessions retried after a kill, "
            "%d END_SESSION lost, %d backups); capstan-bench: %d runs, %d LSCs seen, %d re-armed; "
            "downloads: %d HTTP, %d TFTP; slowest start %.2f s; %d in-progress devices reconciled by %d starts"
            % (
                kills,
                1,
                stats["startup"],
                stats["before_ready"],
                stats["just_after"],
                stats["load"],
                elapsed,
                stats["checks"],
                stats["checked"],
                load.n_received,
                len(load.received),
                sum(load.rounds.values()),
                load.rearmed,
                load.admin_cmds,
                load.retries,
                load.lost_end,
                load.backups,
                bench.runs,
                sum(len(v) for v in bench.seen.values()),
                stats["bench_rearmed"],
                load.downloads["http"],
                load.downloads["tftp"],
                stats["ready_max"],
                stats["reconciled"],
                stats["reconciling_starts"],
            )
        )
        check(kills == KILLS, "%d kills, expected %d" % (kills, KILLS))
    except h.TestFailure as e:
        failures.append(str(e))
    finally:
        if bench is not None:
            bench.stop()
        cl.wind_up(load, srv, failures, lambda: srv.log_text(everything=True))
        if not failures or not os.environ.get("CAPSTAN_KILL9_KEEP"):
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            h.log("data directory kept: %s" % data_dir)

    return cl.report(
        failures,
        "kill9 seed %d: " % seed,
        "kill9: seed %d: every certificate handed out is on record across %d kills" % (seed, KILLS),
    )


if __name__ == "__main__":
    sys.exit(main())
