"""What the crash tests (test_durability.py, test_crash_kill9.py) share:
the device import, phone threads that save every certificate they receive
and survive server kills, the check that a received certificate is on
record by serial, the checked stop of the server and the failure report.

Python 3 standard library and python3-cryptography.
"""

import os
import queue
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostile_lib as h  # noqa: E402
from hostile_lib import check  # noqa: E402

from cryptography import x509  # noqa: E402

CSV_HEADER = "name,operation,auth_mode,auth_string,key,completes_by\n"


def serial_of(der):
    return x509.load_der_x509_certificate(der).serial_number


def write_install_csv(path, groups):
    """A `device import` CSV: an install with null authentication for every
    device of GROUPS, [(names, key spec), ...]."""
    with open(path, "w") as f:
        f.write(CSV_HEADER)
        for names, key in groups:
            for n in names:
                f.write("%s,install,null,,%s,\n" % (n, key))


def import_devices(data_dir, groups):
    """Raises max-connections-per-address (every phone comes from
    127.0.0.1), then `device import` of GROUPS (as write_install_csv);
    returns the CLI's output."""
    h.cli(data_dir, "config", "set", "max-connections-per-address", "1000")
    csv = os.path.join(data_dir, "devices.csv")
    write_install_csv(csv, groups)
    return h.cli(data_dir, "device", "import", csv)


class Phones:
    """Phone threads enrolling the devices of a queue against a server that
    is killed now and then. Each phone records every certificate it
    receives (sink: when STORE_CERT_REQUEST arrives, before it answers); a
    session a kill cuts is tried again against the next server. The phones
    wait while |up| is clear and follow the server to its new ports
    (resume)."""

    # Seconds an unexpected failure waits before it counts: it counts only
    # if the server it met is still the live one then.
    error_grace = 0.0

    def __init__(self, names, keys, seed=0):
        self.todo = queue.Queue()
        for n in names:
            self.todo.put(n)
        self.keys = keys
        self.seed = seed
        self.lock = threading.Lock()
        self.received = {}  # name -> [(der, serial int), ...] in order received
        self.round_start = {}  # name -> index into received where this enrollment began
        self.completed = {}  # name -> der of the last completed enrollment
        self.n_received = 0
        self.lost_end = 0  # completions seen only as END_SESSION {0} on retry
        self.retries = 0  # sessions a kill cut, tried again
        self.server = None  # (generation, capf port, ...) of the live server
        self.generation = 0
        self.up = threading.Event()
        self.stop = threading.Event()
        self.errors = []  # unexpected failures against the live server
        self.outstanding = len(names)  # devices queued or in a phone's hands
        self.threads = []

    def sink(self, name, der):
        """Records a certificate the phone for NAME received; returns how
        many it has received."""
        serial = serial_of(der)
        with self.lock:
            got = self.received.setdefault(name, [])
            got.append((der, serial))
            self.n_received += 1
            return len(got)

    def finish(self, name, der, lost_end=False):
        """The phone for NAME completed its enrollment holding DER."""
        with self.lock:
            self.completed[name] = der
            if lost_end:
                self.lost_end += 1
            self.outstanding -= 1

    def phone(self, idx):
        rnd = random.Random(self.seed * 1000 + idx)
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
            tries = 0
            while not self.stop.is_set():
                if not self.up.wait(0.2):
                    continue
                ports = self.server
                tries += 1
                if tries > 1:
                    with self.lock:
                        self.retries += 1
                try:
                    der = h.enroll(ports[1], name, spki=rnd.choice(self.keys), cert_sink=self.sink)
                except h.EndSession as e:
                    # A kill lost the END_SESSION {1} of a session the server
                    # had finished: on retry it has nothing to do. The phone
                    # holds the last certificate it got in this enrollment.
                    with self.lock:
                        got = self.received.get(name, [])[self.round_start[name] :]
                    if e.reason == h.REASON_NO_ACTION and got:
                        self.finish(name, got[-1][0], lost_end=True)
                        break
                    self.error_if_up(ports, str(e))
                    time.sleep(0.05)
                    continue
                except (h.Closed, OSError):
                    time.sleep(0.02)  # the server is being killed; retry
                    continue
                except h.TestFailure as e:
                    self.error_if_up(ports, "%s: %s" % (name, e))
                    time.sleep(0.05)
                    continue
                self.finish(name, der)
                break

    def error_if_up(self, ports, what):
        # Only a failure against a server that is still the live one counts:
        # anything may happen to a session a kill cuts.
        if self.error_grace:
            time.sleep(self.error_grace)
        with self.lock:
            if self.up.is_set() and self.server == ports:
                self.errors.append(what)

    def start(self, phones, others=()):
        """PHONES phone threads, and one thread for each of the callables
        OTHERS."""
        for i in range(phones):
            self.threads.append(threading.Thread(target=self.phone, args=(i,), daemon=True))
        for target in others:
            self.threads.append(threading.Thread(target=target, daemon=True))
        for t in self.threads:
            t.start()

    def resume(self, capf_port, *other_ports):
        """The server now listens on CAPF_PORT (and OTHER_PORTS, for the
        test's other threads): the phones go on."""
        with self.lock:
            self.generation += 1
            self.server = (self.generation, capf_port) + other_ports
        self.up.set()

    def pause(self):
        with self.lock:
            self.up.clear()

    def join(self, bound):
        deadline = time.monotonic() + bound
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)


def check_on_record(name, got, on_record):
    """Every certificate the phone for NAME received, GOT [(der, serial
    int), ...], has its serial in ON_RECORD (ints: the device's certificate
    history)."""
    for _der, serial in got:
        check(
            serial in on_record,
            "%s: certificate serial %032x was handed to the phone but is not on record "
            "(on record: %s)" % (name, serial, sorted("%032x" % s for s in on_record)),
        )


def check_installed(device, name, der):
    """DEVICE (`device show --json`) has the certificate DER installed."""
    sh = "%032x" % serial_of(der)
    st = {e["serial"]: e["status"] for e in device["cert_history"]}
    check(st.get(sh) == "installed", "%s: last certificate %s has status %r" % (name, sh, st.get(sh)))


def wind_up(load, server, failures, log_text=None):
    """Pass or fail: the phones of LOAD (if any) stop and SERVER is killed;
    with FAILURES, the tail of the server's log (LOG_TEXT(), by default
    server.log_text()) is logged."""
    if load is not None:
        load.stop.set()
    server.kill()
    if failures:
        text = log_text() if log_text is not None else server.log_text()
        h.log("---- server log (tail) ----\n" + text[-5000:])


def stop_checked(server):
    """SIGTERM to SERVER, which must have been alive, exit 0 and have left
    no sanitizer report."""
    alive = server.alive()
    rc = server.stop()
    check(alive, "the server died during the final round")
    check(rc == 0, "server exit code %s after SIGTERM" % rc)
    report = server.sanitizer_report()
    check(report is None, "sanitizer report:\n%s" % report)


def report(failures, prefix, success):
    """Logs FAILURES (the first 30) after PREFIX, or SUCCESS when there are
    none; the test's exit code."""
    if failures:
        h.log("\n%s%d FAILURE(S):" % (prefix, len(failures)))
        for f in failures[:30]:
            h.log("  - " + f)
        return 1
    h.log(success)
    return 0
