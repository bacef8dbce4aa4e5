"""Shared helpers for the hostile-client and durability integration tests.

Python 3 standard library plus python3-cryptography (a Debian package) only.
Everything here talks to the real `capstan serve` on 127.0.0.1, on ports the
kernel picks (port 0; the server logs the ports it bound).

What is here:
  - Server: starts `capstan serve` on a data directory, waits for the ready
    line, knows its ports and pid, reads /metrics and /healthz, stops it
    (SIGTERM, or SIGKILL for crash tests) and keeps its stderr for checks.
  - cli(): runs a `capstan` subcommand and returns its stdout.
  - CAPF wire encoding: msg(), el(), parse_msg(), and a Phone that speaks
    the protocol over a real TLS connection made with Python's ssl module,
    an implementation independent of the server's BoringSSL.
"""

import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import it_common  # noqa: E402
from it_common import (  # noqa: E402,F401
    SANITIZE,
    SLOW,
    TestFailure,
    capstan_bin,
    check,
    log,
    parse_metrics,
    serve_argv,
)

# --- Protocol constants (docs/spec/capf-protocol.md) ----------------------

PROTOCOL_ID = 0x55
HEADER_LEN = 8

AUTH_REQUEST = 1
AUTH_RESPONSE = 2
KEY_GEN_REQUEST = 3
KEY_GEN_RESPONSE = 4
STORE_CERT_REQUEST = 9
STORE_CERT_RESPONSE = 10
FETCH_CERT_REQUEST = 11
FETCH_CERT_RESPONSE = 12
DELETE_CERT_REQUEST = 13
DELETE_CERT_RESPONSE = 14
END_SESSION = 15
RETRY_LATER = 16
REQUEST_IN_PROGRESS = 17

EL_REASON = 1
EL_CERTIFICATE_TYPE = 3
EL_CERTIFICATE = 4
EL_VERSION = 7
EL_AUTH_TYPE = 8
EL_PUBLIC_KEY = 9
EL_KEY_SIZE = 10
EL_AUTH_PASSWORD = 11
EL_DEVICE_NAME = 13
EL_KEY_TYPE = 17
EL_EC_CURVE = 18

REASON_NO_ACTION = 0
REASON_UPDATE = 1
REASON_INVALID = 7
REASON_UNKNOWN_DEVICE = 9

# Server-sent elements (the spec's list); anything else from the server is a bug.
SERVER_SENT_TAGS = {1, 3, 4, 7, 8, 10, 12, 17, 18}

# --- Wire encoding ----------------------------------------------------------


def el(tag, value):
    """One element: tag u8 | length u16 | value."""
    return struct.pack(">BH", tag, len(value)) + value


def msg(command, session_id, elements=b"", length=None, proto=PROTOCOL_ID):
    """One message; |length| overrides the element area length (to lie)."""
    if length is None:
        length = len(elements)
    return struct.pack(">BBIH", proto, command, session_id, length) + elements


def parse_elements(area):
    """Element area -> list of (tag, value). Raises on malformed input."""
    out = []
    off = 0
    while off < len(area):
        check(len(area) - off >= 3, "server sent a truncated element header")
        tag, n = struct.unpack(">BH", area[off : off + 3])
        off += 3
        check(len(area) - off >= n, "server sent an element overrunning the area")
        out.append((tag, area[off : off + n]))
        off += n
    return out


class Message:
    def __init__(self, command, session_id, elements):
        self.command = command
        self.session_id = session_id
        self.elements = elements  # list of (tag, value)

    def get(self, tag):
        for t, v in self.elements:
            if t == tag:
                return v
        return None

    def u8(self, tag):
        v = self.get(tag)
        check(v is not None and len(v) == 1, "element %d missing or not 1 byte" % tag)
        return v[0]

    def __repr__(self):
        return "Message(cmd=%d, session=0x%08x, tags=%s)" % (
            self.command,
            self.session_id,
            [t for t, _ in self.elements],
        )


def cert_element_der(value):
    """CERTIFICATE value: 0x01 | u16 (DER length + 2) | 0x00 | type, DER."""
    check(len(value) > 5, "CERTIFICATE element too short")
    check(value[0] == 0x01 and value[3] == 0x00, "CERTIFICATE prefix malformed")
    (n,) = struct.unpack(">H", value[1:3])
    check(n == len(value) - 5 + 2, "CERTIFICATE prefix length disagrees")
    return value[4], value[5:]


# --- Keys -------------------------------------------------------------------


def rsa_spki(bits=1024):
    if bits < 1024 or bits > 4096:
        # cryptography refuses to generate small keys, and big ones take
        # minutes; a public key needs only a modulus of the right size (odd,
        # top bit set).
        n = int.from_bytes(os.urandom(bits // 8), "big") | (1 << (bits - 1)) | 1
        pub = rsa.RSAPublicNumbers(65537, n).public_key()
    else:
        pub = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    return pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def ec_spki():
    key = ec.generate_private_key(ec.SECP256R1())
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- The CLI and the server -------------------------------------------------


def cli(data_dir, *args, check_rc=True, stdin=None, timeout=120):
    return it_common.cli(data_dir, *args, check_rc=check_rc, stdin=stdin, timeout=timeout)


def device_json(data_dir, name):
    return json.loads(cli(data_dir, "device", "show", name, "--json"))


def _die_with_parent():
    """In the child: SIGKILL when the test process dies (a ctest timeout
    must not leave a server behind)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Server:
    """`capstan serve` on 127.0.0.1 with kernel-picked ports."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.proc = None
        self.capf_port = None
        self.admin_port = None
        self.lines = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._reader = None

    def start(self, timeout=60):
        self.lines = []
        self._ready.clear()
        self.capf_port = self.admin_port = None
        self.proc = subprocess.Popen(
            serve_argv(self.data_dir, http="off", tftp="off"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout * SLOW):
            self.kill()
            raise TestFailure("server not ready in time; log:\n" + self.log_text()[-4000:])
        check(self.capf_port and self.admin_port, "ports not found in the server log")
        return self

    def _read(self, proc):
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.lines.append(line)
            m = re.search(r"event=http_listening server=admin .*port=(\d+)", line)
            if m:
                self.admin_port = int(m.group(1))
            m = re.search(r"event=ready .*capf_port=(\d+)", line)
            if m:
                self.capf_port = int(m.group(1))
                self._ready.set()

    def log_text(self):
        with self._lock:
            return "\n".join(self.lines)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def http_get(self, path, timeout=10):
        url = "http://127.0.0.1:%d%s" % (self.admin_port, path)
        with urllib.request.urlopen(url, timeout=timeout * SLOW) as r:
            return r.status, r.read().decode("utf-8", "replace")

    def metrics(self):
        """/metrics as {'name{labels}': float}."""
        _, body = self.http_get("/metrics")
        return parse_metrics(body)

    def metric(self, key):
        return self.metrics().get(key, 0.0)

    def stop(self, timeout=30):
        """SIGTERM, wait; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise TestFailure("server did not exit after SIGTERM")
        if self._reader:
            self._reader.join(10)
        return self.proc.returncode

    def kill(self):
        """SIGKILL (a crash), wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._reader:
            self._reader.join(10)

    def sanitizer_report(self):
        t = self.log_text()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if marker in t:
                i = t.index(marker)
                return t[max(0, i - 200) : i + 3000]
        return None

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise TestFailure("no VmRSS for the server")

    def fd_count(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))


def fresh_data_dir(prefix):
    d = tempfile.mkdtemp(prefix=prefix)
    return d


# --- TLS and the phone ------------------------------------------------------


def client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The phone authenticates inside the protocol; it checks nothing about the
    # server certificate here (the tests check the CAPF chain elsewhere).
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


_CTX = None


def ctx():
    global _CTX
    if _CTX is None:
        _CTX = client_context()
    return _CTX


class EndSession(TestFailure):
    """enroll(): the server ended the session right after AUTH_RESPONSE."""

    def __init__(self, name, reason):
        super().__init__("%s: END_SESSION %d instead of KEY_GEN_REQUEST" % (name, reason))
        self.reason = reason


class Closed(Exception):
    """The server closed the connection (EOF, reset or TLS close)."""


class Phone:
    """One CAPF connection from the phone side over TLS."""

    def __init__(self, port, timeout=20):
        self.timeout = timeout * SLOW
        raw = socket.create_connection(("127.0.0.1", port), timeout=self.timeout)
        try:
            self.sock = ctx().wrap_socket(raw, server_hostname=None)
        except Exception:
            raw.close()
            raise
        self.buf = b""
        self.session_id = None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("no message from the server in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError):
            raise Closed()
        except ssl.SSLError as e:
            raise Closed(str(e))
        if not chunk:
            raise Closed()
        self.buf += chunk

    def recv(self, timeout=None):
        """Next message from the server; raises Closed or socket.timeout."""
        deadline = time.monotonic() + (timeout * SLOW if timeout else self.timeout)
        while len(self.buf) < HEADER_LEN:
            self._fill(deadline)
        proto, cmd, sid, n = struct.unpack(">BBIH", self.buf[:HEADER_LEN])
        check(proto == PROTOCOL_ID, "server sent protocol id %d" % proto)
        while len(self.buf) < HEADER_LEN + n:
            self._fill(deadline)
        area = self.buf[HEADER_LEN : HEADER_LEN + n]
        self.buf = self.buf[HEADER_LEN + n :]
        m = Message(cmd, sid, parse_elements(area))
        for t, _ in m.elements:
            check(t in SERVER_SENT_TAGS, "server sent element tag %d in %r" % (t, m))
        if self.session_id is None:
            check(sid != 0, "server picked session id 0")
            self.session_id = sid
        else:
            check(sid == self.session_id, "server changed session id in %r" % m)
        return m

    def expect_closed(self, timeout=15):
        """Waits for EOF; any message before it is returned in a list."""
        got = []
        deadline = time.monotonic() + timeout * SLOW
        while True:
            try:
                got.append(self.recv(timeout=max(0.01, (deadline - time.monotonic()) / SLOW)))
            except Closed:
                return got
            except socket.timeout:
                raise TestFailure("server did not close the connection; got %r" % got)

    def auth_request(self):
        m = self.recv()
        check(m.command == AUTH_REQUEST, "expected AUTH_REQUEST, got %r" % m)
        check(m.u8(EL_VERSION) == 3, "AUTH_REQUEST version is not 3")
        return m

    def send_auth(self, name, password=b"", version=3):
        if isinstance(name, str):
            name = name.encode()
        self.send(
            msg(
                AUTH_RESPONSE,
                self.session_id,
                el(EL_REASON, b"\x01")
                + el(EL_VERSION, bytes([version]))
                + el(EL_DEVICE_NAME, name + b"\0")
                + el(EL_AUTH_PASSWORD, password + b"\0"),
            )
        )

    def expect_end(self, reason, timeout=None):
        """Next message is END_SESSION {reason}, then the connection closes."""
        m = self.recv(timeout=timeout)
        check(m.command == END_SESSION, "expected END_SESSION %d, got %r" % (reason, m))
        got = m.u8(EL_REASON)
        check(got == reason, "expected END_SESSION reason %d, got %d" % (reason, got))
        rest = self.expect_closed()
        check(not rest, "messages after END_SESSION: %r" % rest)


class RecordPhone:
    """A phone over a memory-BIO TLS client that sees the raw TLS records.

    recv() returns (Message, number of TLS records that carried its bytes),
    so a test can check the spec's "one message, one write" rule: each
    server message must arrive in a single TLS record."""

    def __init__(self, port, max_version=None, timeout=20):
        self.timeout = timeout * SLOW
        c = client_context()
        if max_version is not None:
            c.maximum_version = max_version
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=self.timeout)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = c.wrap_bio(self.inc, self.out, server_side=False)
        self.raw = b""
        self.plain = b""
        self.owners = []  # record number of each byte in self.plain
        self.nrec = 0
        self.session_id = None
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._feed_record()
        self._flush()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _flush(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def _feed_record(self):
        """Moves exactly one TLS record from the socket into the TLS object."""
        while True:
            if len(self.raw) >= 5:
                (n,) = struct.unpack(">H", self.raw[3:5])
                if len(self.raw) >= 5 + n:
                    break
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Closed()
            self.raw += chunk
        rec, self.raw = self.raw[: 5 + n], self.raw[5 + n :]
        self.nrec += 1
        self.inc.write(rec)

    def send(self, data):
        self.obj.write(data)
        self._flush()

    def recv(self):
        while True:
            if len(self.plain) >= HEADER_LEN:
                (n,) = struct.unpack(">H", self.plain[6:8])
                if len(self.plain) >= HEADER_LEN + n:
                    break
            self._feed_record()
            while True:
                try:
                    data = self.obj.read(65536)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    raise Closed()
                if not data:
                    break
                self.plain += data
                self.owners += [self.nrec] * len(data)
            self._flush()
        end = HEADER_LEN + n
        _, cmd, sid, _ = struct.unpack(">BBIH", self.plain[:HEADER_LEN])
        m = Message(cmd, sid, parse_elements(self.plain[HEADER_LEN:end]))
        records = len(set(self.owners[:end]))
        self.plain, self.owners = self.plain[end:], self.owners[end:]
        if self.session_id is None:
            self.session_id = sid
        return m, records


def enroll(port, name, spki=None, cert_sink=None, password=b""):
    """A well-behaved install: returns the LSC DER the server handed out.

    |cert_sink|, when given, is called with the DER as soon as it arrives
    (before STORE_CERT_RESPONSE), so a crash test knows every certificate a
    phone ever received."""
    if spki is None:
        spki = rsa_spki(1024)
    with Phone(port) as p:
        p.auth_request()
        p.send_auth(name, password)
        m = p.recv()
        if m.command == END_SESSION:
            raise EndSession(name, m.u8(EL_REASON))
        check(m.command == KEY_GEN_REQUEST, "%s: expected KEY_GEN_REQUEST, got %r" % (name, m))
        check(m.u8(EL_KEY_TYPE) == 0, "%s: expected an RSA key request" % name)
        p.send(msg(KEY_GEN_RESPONSE, p.session_id, el(EL_PUBLIC_KEY, spki)))
        m = p.recv()
        check(m.command == STORE_CERT_REQUEST, "%s: expected STORE_CERT_REQUEST, got %r" % (name, m))
        check(m.u8(EL_CERTIFICATE_TYPE) == 1, "%s: certificate type is not LSC" % name)
        ctype, der = cert_element_der(m.get(EL_CERTIFICATE))
        check(ctype == 1, "%s: CERTIFICATE prefix type is not LSC" % name)
        if cert_sink is not None:
            cert_sink(name, der)
        p.send(msg(STORE_CERT_RESPONSE, p.session_id, el(EL_REASON, b"\x01")))
        p.expect_end(REASON_UPDATE)
        return der
