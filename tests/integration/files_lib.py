"""Helpers for the phone-file integration tests (test_files_*).

Python 3 standard library plus python3-cryptography only. Everything talks
to the real `capstan serve` on 127.0.0.1, on ports the kernel picks (port 0;
the server logs the ports it bound).

The file readers here are written from docs/spec/file-formats.md
alone and share no code with capstan's C parsers (core/files/): the signed
header is re-encoded from the spec and compared byte for byte, signatures
are checked with python3-cryptography against the certificate exported by
`capstan cert export tftp`, and encrypted configurations are decrypted with
the phone's own private key.
"""

import hashlib
import http.client
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from it_common import (  # noqa: E402,F401
    SANITIZE,
    SLOW,
    TestFailure,
    capstan_bin,
    check,
    cli,
    log,
    parse_metrics,
    serve_argv,
)

# --- Binaries and the CLI ---------------------------------------------------


def phone_bin():
    build = os.environ.get("CAPSTAN_BUILD_DIR") or os.path.dirname(capstan_bin())
    b = os.path.join(build, "capstan-phone")
    check(os.access(b, os.X_OK), "capstan-phone not found in %s" % build)
    return b


def load_pem_cert(pem):
    return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)


def der_of(cert):
    return cert.public_bytes(serialization.Encoding.DER)


def export_certs(data_dir):
    """(tftp cert, capf cert) as exported by the CLI."""
    return (
        load_pem_cert(cli(data_dir, "cert", "export", "tftp")),
        load_pem_cert(cli(data_dir, "cert", "export", "capf")),
    )


def run_phone(capf_port, name, workdir, auth="null", extra=(), timeout=60):
    """One capstan-phone session; returns (json dict, cert path, key path)."""
    import json

    cert = os.path.join(workdir, name + ".lsc.der")
    key = os.path.join(workdir, name + ".key.der")
    cmd = [
        phone_bin(),
        "--connect",
        "127.0.0.1:%d" % capf_port,
        "--name",
        name,
        "--auth",
        auth,
        "--json",
        "--timeout",
        str(int(30 * SLOW)),
        "--save-cert",
        cert,
        "--save-key",
        key,
        *extra,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * SLOW)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    check(lines, "capstan-phone printed no JSON (rc=%d): %s" % (p.returncode, p.stderr[-2000:]))
    out = json.loads(lines[-1])
    out["rc"] = p.returncode
    return out, cert, key


# --- The server -------------------------------------------------------------


class Server:
    """`capstan serve` on 127.0.0.1 with every listener on port 0."""

    def __init__(self, data_dir, files_dir=None, extra=()):
        self.data_dir = data_dir
        self.files_dir = files_dir
        self.extra = list(extra)
        self.proc = None
        self.lines = []
        self.lock = threading.Lock()
        self.admin_port = self.http_port = self.tftp_port = self.capf_port = None
        self.capf_host = None

    def start(self):
        cmd = serve_argv(self.data_dir)
        if self.files_dir:
            cmd += ["--files-dir", self.files_dir]
        cmd += self.extra
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        ready = threading.Event()

        def reader():
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self.lock:
                    self.lines.append(line)
                m = re.search(r"event=listeners admin_port=(\d+) http_port=(\d+) tftp_port=(\d+)", line)
                if m:
                    self.admin_port, self.http_port, self.tftp_port = map(int, m.groups())
                    h = re.search(r"capf_host=(\S+)", line)
                    self.capf_host = h.group(1) if h else None
                m = re.search(r"event=ready .*capf_port=(\d+)", line)
                if m:
                    self.capf_port = int(m.group(1))
                    ready.set()
            ready.set()

        self.thread = threading.Thread(target=reader, daemon=True)
        self.thread.start()
        if not ready.wait(60 * SLOW) or self.capf_port is None or self.proc.poll() is not None:
            self.kill()
            raise TestFailure("server did not become ready:\n" + self.log_text()[-4000:])
        check(self.http_port and self.tftp_port and self.admin_port, "ports not logged")
        return self

    def log_text(self):
        with self.lock:
            return "\n".join(self.lines)

    def alive(self):
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            st, _, body = http_request(self.admin_port, "GET", "/healthz", timeout=10 * SLOW)
        except OSError:
            return False
        return st == 200

    def metrics_text(self):
        st, _, body = http_request(self.admin_port, "GET", "/metrics", timeout=10 * SLOW)
        check(st == 200, "/metrics answered %d" % st)
        return body.decode()

    def metrics(self):
        return parse_metrics(self.metrics_text())

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        """SIGTERM; the server must exit 0 (ASan/LSan make it non-zero)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60 * SLOW)
            except subprocess.TimeoutExpired:
                self.kill()
                raise TestFailure("server did not stop on SIGTERM")
        self.thread.join(10)
        rc = self.proc.returncode
        self.proc = None
        if rc != 0:
            raise TestFailure("server exited %d:\n%s" % (rc, self.log_text()[-6000:]))
        return rc

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            log("--- server log (tail) ---\n" + self.log_text()[-6000:])
            self.kill()
            self.proc = None
            return False
        self.stop()
        return False


def metric(m, name, **labels):
    """Sum of the series |name| whose labels include |labels|."""
    total = 0.0
    for key, v in m.items():
        n, _, rest = key.partition("{")
        if n != name:
            continue
        if all(('%s="%s"' % (k, val)) in rest for k, val in labels.items()):
            total += v
    return total


def wait_for(pred, what, timeout=10):
    end = time.time() + timeout * SLOW
    while time.time() < end:
        if pred():
            return
        time.sleep(0.1)
    raise TestFailure("timed out waiting for " + what)


# --- HTTP -------------------------------------------------------------------


def http_request(port, method, path, timeout=None, conn=None):
    """One request; returns (status, {lower-case header: value}, body)."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout or 20 * SLOW)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        if own:
            conn.close()


def http_get(port, name):
    st, hdr, body = http_request(port, "GET", "/" + name)
    check(st == 200, "HTTP GET %s: status %d (%r)" % (name, st, body[:200]))
    check(hdr.get("content-length") == str(len(body)), "HTTP %s: Content-Length" % name)
    return body


def http_status(port, name):
    return http_request(port, "GET", "/" + name)[0]


# --- TFTP -------------------------------------------------------------------

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6


class TftpError(Exception):
    def __init__(self, code, msg):
        super().__init__("TFTP error %d: %s" % (code, msg))
        self.code = code
        self.msg = msg


def rrq(name, mode="octet", options=None):
    b = struct.pack(">H", RRQ) + name.encode() + b"\0" + mode.encode() + b"\0"
    for k, v in (options or {}).items():
        b += k.encode() + b"\0" + str(v).encode() + b"\0"
    return b


def parse_oack(pkt):
    parts = pkt[2:].split(b"\0")
    check(parts[-1] == b"", "OACK not NUL-terminated")
    parts = parts[:-1]
    check(len(parts) % 2 == 0, "OACK with an option without value")
    return {parts[i].decode().lower(): parts[i + 1].decode() for i in range(0, len(parts), 2)}


def tftp_get(port, name, options=None, mode="octet", timeout=None, sock=None):
    """A plain RFC 1350/2347/2348/7440 client; returns (data, oack dict).
    Raises TftpError on an ERROR packet, TestFailure on a timeout."""
    timeout = timeout or 5 * SLOW
    own = sock is None
    if own:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        sock.sendto(rrq(name, mode, options), ("127.0.0.1", port))
        blksize, window = 512, 1
        data = bytearray()
        expect = 1
        peer = None
        oack = {}
        while True:
            try:
                pkt, addr = sock.recvfrom(70000)
            except socket.timeout:
                raise TestFailure("TFTP %s: timed out at block %d" % (name, expect))
            if peer is None:
                peer = addr
            elif addr != peer:
                continue
            check(len(pkt) >= 4, "TFTP: short packet from the server")
            op = struct.unpack(">H", pkt[:2])[0]
            if op == ERROR:
                code = struct.unpack(">H", pkt[2:4])[0]
                raise TftpError(code, pkt[4:].rstrip(b"\0").decode("utf-8", "replace"))
            if op == OACK:
                check(expect == 1 and not oack, "TFTP: OACK out of place")
                oack = parse_oack(pkt)
                blksize = int(oack.get("blksize", 512))
                window = int(oack.get("windowsize", 1))
                sock.sendto(struct.pack(">HH", ACK, 0), peer)
                continue
            check(op == DATA, "TFTP: opcode %d from the server" % op)
            block = struct.unpack(">H", pkt[2:4])[0]
            payload = pkt[4:]
            if block != (expect & 0xFFFF):
                # Out of order (lost packet or a resend): ask again from here.
                sock.sendto(struct.pack(">HH", ACK, (expect - 1) & 0xFFFF), peer)
                continue
            check(len(payload) <= blksize, "TFTP: DATA larger than blksize")
            data += payload
            last = len(payload) < blksize
            if last or expect % window == 0:
                sock.sendto(struct.pack(">HH", ACK, block), peer)
            expect += 1
            if last:
                return bytes(data), oack
    finally:
        if own:
            sock.close()


def curl_tftp(port, name, blksize=None, timeout=30):
    cmd = ["curl", "-sS", "--max-time", str(int(timeout * SLOW)), "-o", "-"]
    if blksize:
        cmd += ["--tftp-blksize", str(blksize)]
    cmd.append("tftp://127.0.0.1:%d/%s" % (port, name))
    p = subprocess.run(cmd, capture_output=True, timeout=timeout * SLOW + 10)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def tftp_fetch(port, name, blksize=1428):
    rc, out, err = curl_tftp(port, name, blksize)
    check(rc == 0, "curl tftp %s failed rc=%d: %s" % (name, rc, err))
    return out


# --- Distinguished names, serials, keys (spec: file-formats.md) -------------


def dn_string(name):
    """Comma-separated RFC 4514 attributes in certificate order."""
    return ",".join(rdn.rfc4514_string() for rdn in name.rdns)


def serial_bytes(cert):
    n = cert.serial_number
    check(n > 0, "certificate serial not positive")
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def public_key_field(cert):
    pk = cert.public_key()
    if isinstance(pk, rsa.RSAPublicKey):
        return pk.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    if isinstance(pk, ec.EllipticCurvePublicKey):
        return pk.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    raise TestFailure("certificate key neither RSA nor EC")


# --- The signed header ------------------------------------------------------

HASH_SHA1, HASH_SHA512 = 1, 3
SIG_HASHES = {HASH_SHA1: hashes.SHA1, HASH_SHA512: hashes.SHA512}
DIGESTS = {HASH_SHA1: hashlib.sha1, HASH_SHA512: hashlib.sha512}
MODULUS_CODE = {512: 0, 1024: 1, 2048: 2, 4096: 3}


def tlv(tag, value):
    return struct.pack(">BH", tag, len(value)) + value


def cstr(s):
    return s.encode("utf-8") + b"\0"


class Cursor:
    """Reads the fixed field sequence of a header; every read names the tag
    it expects, so any deviation from the spec's order fails."""

    def __init__(self, data, end):
        self.data, self.pos, self.end = data, 0, end

    def head(self, tag):
        check(self.end - self.pos >= 3, "header truncated before tag %d" % tag)
        t, n = struct.unpack(">BH", self.data[self.pos : self.pos + 3])
        check(t == tag, "expected tag %d at offset %d, found %d" % (tag, self.pos, t))
        check(self.pos + 3 + n <= self.end, "tag %d overruns the header" % tag)
        self.pos += 3
        return n

    def field(self, tag, size=None):
        n = self.head(tag)
        if size is not None:
            check(n == size, "tag %d length %d, expected %d" % (tag, n, size))
        v = self.data[self.pos : self.pos + n]
        self.pos += n
        return v


def parse_header(data):
    """Parses the signed header strictly in the spec's field order. Returns a
    dict (version, header_length, signer_version, signer/issuer names,
    serial, hash_alg, modulus, signature, sig_offset, filename, timestamp,
    encryption fields, padding, payload)."""
    check(len(data) >= 8, "file too short for a header")
    h = {}
    c = Cursor(data, len(data))
    v = c.field(1, 2)
    h["version"] = "%d.%d" % (v[0], v[1])
    hl = struct.unpack(">H", c.field(2, 2))[0]
    check(hl <= len(data), "HEADER_LENGTH %d past the end of a %d-byte file" % (hl, len(data)))
    h["header_length"] = hl
    c.end = hl
    if h["version"] == "1.2":
        sv = c.field(28, 2)
        h["signer_version"] = "%d.%d" % (sv[0], sv[1])
    n = c.head(3)
    start = c.pos
    h["signer_name"] = c.field(4)
    h["issuer_name"] = c.field(6)
    h["serial"] = c.field(5)
    check(c.pos - start == n, "SIGNER_INFO length %d, its fields take %d" % (n, c.pos - start))
    h["signer_info_len"] = n
    check(c.head(7) == 15, "SIGNATURE_INFO length is not 15")
    h["hash_alg"] = c.field(8, 1)[0]
    check(c.head(9) == 8, "SIGNATURE_ALGORITHM_INFO length is not 8")
    h["sig_alg"] = c.field(10, 1)[0]
    h["modulus"] = c.field(11, 1)[0]
    h["sig_offset"] = c.pos
    h["signature"] = c.field(12)
    h["filename_raw"] = c.field(14)
    fn = h["filename_raw"]
    check(len(fn) >= 2 and fn[-1] == 0 and 0 not in fn[:-1], "FILENAME not NUL-terminated")
    h["filename"] = fn[:-1].decode()
    h["timestamp"] = struct.unpack(">I", c.field(15, 4))[0]
    if h["version"] == "2.0":
        n16 = c.head(16)
        s16 = c.pos
        n17 = c.head(17)
        s17 = c.pos
        check(c.field(18, 1) == b"\0", "field 18 is not 0")
        h["iv"] = c.field(19, 16)
        h["enc_padding"] = struct.unpack(">H", c.field(20, 2))[0]
        check(c.pos - s17 == n17, "ENCRYPTION_IV_INFO length %d != %d" % (n17, c.pos - s17))
        n21 = c.head(21)
        s21 = c.pos
        check(c.field(22, 1) == b"\0", "field 22 is not 0")
        h["key_size"] = struct.unpack(">H", c.field(23, 2))[0]
        check(c.field(24, 1) == b"\x01", "ENCRYPTION_KEY_ALGORITHM is not 1")
        h["wrapped_key"] = c.field(25)
        check(c.pos - s21 == n21, "ENCRYPTION_KEY_INFO length %d != %d" % (n21, c.pos - s21))
        check(c.pos - s16 == n16, "ENCRYPTION_INFO length %d != %d" % (n16, c.pos - s16))
        h["enc_hash_alg"] = c.field(26, 1)[0]
        h["enc_hash"] = c.field(27)
    pad = data[c.pos : hl]
    check(pad == b"\x0d" * len(pad), "header ends with bytes other than PADDING")
    check(len(pad) <= 3, "%d PADDING bytes" % len(pad))
    h["padding"] = len(pad)
    h["payload"] = data[hl:]
    return h


def expected_header(h, signer):
    """Re-encodes the header from the spec, taking from the file only what
    cannot be predicted (signature, timestamp, IV, wrapped key, hashes) and
    the rest from the signer certificate; the result must equal the file's
    header byte for byte."""
    major, minor = (int(x) for x in h["version"].split("."))
    body = tlv(1, bytes([major, minor]))
    sv = b""
    if "signer_version" in h:
        a, b = (int(x) for x in h["signer_version"].split("."))
        sv = tlv(28, bytes([a, b]))
    si = tlv(4, cstr(dn_string(signer.subject))) + tlv(6, cstr(dn_string(signer.issuer)))
    si += tlv(5, serial_bytes(signer))
    alg = tlv(10, b"\0") + tlv(11, bytes([MODULUS_CODE[signer.public_key().key_size]]))
    sinfo = tlv(8, bytes([h["hash_alg"]])) + struct.pack(">BH", 9, len(alg)) + alg
    rest = struct.pack(">BH", 3, len(si)) + si + struct.pack(">BH", 7, len(sinfo)) + sinfo
    rest += tlv(12, h["signature"]) + tlv(14, cstr(h["filename"]))
    rest += tlv(15, struct.pack(">I", h["timestamp"]))
    if h["version"] == "2.0":
        ivinfo = tlv(17, tlv(18, b"\0") + tlv(19, h["iv"]) + tlv(20, struct.pack(">H", h["enc_padding"])))
        keyinfo = tlv(
            21,
            tlv(22, b"\0")
            + tlv(23, struct.pack(">H", 8 * len(h["wrapped_key"])))
            + tlv(24, b"\x01")
            + tlv(25, h["wrapped_key"]),
        )
        rest += tlv(16, ivinfo + keyinfo)
        rest += tlv(26, bytes([h["enc_hash_alg"]])) + tlv(27, h["enc_hash"])
    size = len(body) + 5 + len(sv) + len(rest)  # 5: the HEADER_LENGTH field
    pad = (-size) % 4
    size += pad
    return body + tlv(2, struct.pack(">H", size)) + sv + rest + b"\x0d" * pad


def verify_signed_file(data, signer, name, version):
    """Everything common to the signed files: layout byte for byte, VERSION,
    FILENAME, and the signature (SIGNATURE cut out) with |signer|."""
    h = parse_header(data)
    check(h["version"] == version, "%s: VERSION %s, expected %s" % (name, h["version"], version))
    check(h["filename"] == name, "FILENAME %r, expected %r" % (h["filename"], name))
    check(h["header_length"] % 4 == 0, "HEADER_LENGTH not a multiple of 4")
    check(h["sig_alg"] == 0, "SIGNATURE_ALGORITHM not RSA")
    check(h["hash_alg"] in SIG_HASHES, "HASH_ALGORITHM %d" % h["hash_alg"])
    pk = signer.public_key()
    check(len(h["signature"]) == pk.key_size // 8, "SIGNATURE is not modulus-sized")
    want = expected_header(h, signer)
    got = data[: h["header_length"]]
    if want != got:
        at = next((i for i in range(min(len(want), len(got))) if want[i] != got[i]), None)
        raise TestFailure(
            "%s: header differs from the spec encoding at byte %s (lengths %d/%d)"
            % (name, at, len(got), len(want))
        )
    off = h["sig_offset"]
    tbs = data[:off] + data[off + 3 + len(h["signature"]) :]
    try:
        pk.verify(h["signature"], tbs, padding.PKCS1v15(), SIG_HASHES[h["hash_alg"]]())
    except Exception as e:
        raise TestFailure("%s: signature does not verify with the TFTP certificate (%s)" % (name, e))
    return h


# --- ITL records ------------------------------------------------------------

ROLE_SAST, ROLE_TFTP, ROLE_CAPF = 0, 3, 4


def parse_itl_records(payload):
    """List of {tag: value} per record; RECORD_LENGTH must cover it exactly."""
    recs = []
    pos = 0
    while pos < len(payload):
        check(len(payload) - pos >= 5, "truncated ITL record")
        tag, n = struct.unpack(">BH", payload[pos : pos + 3])
        check(tag == 1 and n == 2, "record does not start with RECORD_LENGTH")
        rl = struct.unpack(">H", payload[pos + 3 : pos + 5])[0]
        check(rl >= 5 and pos + rl <= len(payload), "RECORD_LENGTH %d out of range" % rl)
        fields = {}
        p = pos + 5
        while p < pos + rl:
            check(pos + rl - p >= 3, "record field header truncated")
            t, n = struct.unpack(">BH", payload[p : p + 3])
            check(p + 3 + n <= pos + rl, "record field %d overruns its record" % t)
            check(2 <= t <= 12 and t not in fields, "record field %d unknown or repeated" % t)
            fields[t] = payload[p + 3 : p + 3 + n]
            p += 3 + n
        recs.append(fields)
        pos += rl
    return recs


def verify_itl(data, tftp, capf, name):
    h = verify_signed_file(data, tftp, name, "1.2")
    check(h["signer_version"] in ("1.0", "1.1"), "SIGNER_VERSION %s" % h["signer_version"])
    recs = parse_itl_records(h["payload"])
    check(recs, "ITL without records")
    roles = []
    for f in recs:
        for t in (3, 4, 5, 6, 7, 8, 9):
            check(t in f, "ITL record without field %d" % t)
        cert = x509.load_der_x509_certificate(f[9])
        check(f[3] == cstr(dn_string(cert.subject)), "record SUBJECT_NAME differs")
        check(f[5] == cstr(dn_string(cert.issuer)), "record ISSUER_NAME differs")
        check(f[6] == serial_bytes(cert), "record SERIAL_NUMBER differs")
        check(f[7] == public_key_field(cert), "record PUBLIC_KEY differs")
        check(f[8] == cert.signature, "record SIGNATURE differs")
        check(len(f[4]) == 2, "ROLE not a uint16")
        roles.append((struct.unpack(">H", f[4])[0], f[9]))
    check(roles[0][0] == ROLE_SAST, "first ITL record is role %d, not SAST" % roles[0][0])
    check(recs[0][6] == h["serial"], "SAST serial differs from the header SERIAL_NUMBER")
    check(roles[0][1] == der_of(tftp), "SAST record is not the TFTP (signer) certificate")
    check((ROLE_TFTP, der_of(tftp)) in roles, "no TFTP record with the exported TFTP cert")
    check((ROLE_CAPF, der_of(capf)) in roles, "no CAPF record with the exported CAPF cert")
    return h, roles


# --- Configuration files ----------------------------------------------------


def cnf_fields(xml_bytes):
    """Parses a <device> configuration; returns the root element."""
    root = ET.fromstring(xml_bytes)
    check(root.tag == "device", "configuration root is <%s>" % root.tag)
    return root


def text_of(root, path):
    el = root.find(path)
    return None if el is None else (el.text or "")


def capf_list(root):
    out = []
    for c in root.findall("capfList/capf"):
        out.append((text_of(c, "processNodeName"), text_of(c, "phonePort")))
    return out


def md5_hex(data):
    return hashlib.md5(data).hexdigest()


# --- Encrypted configuration ------------------------------------------------


def load_der_key(path):
    return serialization.load_der_private_key(open(path, "rb").read(), password=None)


def decrypt_enc(h, key):
    """Unwraps the AES key, decrypts and unpads; returns (config, n_padding).
    Checks every spec rule on the way."""
    check(isinstance(key, rsa.RSAPrivateKey), "phone key is not RSA")
    check(h["key_size"] == 8 * len(h["wrapped_key"]), "ENCRYPTION_KEY_SIZE is not the wrapped key's bits")
    check(len(h["wrapped_key"]) == key.key_size // 8, "wrapped key is not modulus-sized")
    try:
        aes = key.decrypt(h["wrapped_key"], padding.PKCS1v15())
    except Exception as e:
        raise TestFailure("cannot unwrap the AES key with the phone's key: %s" % e)
    check(len(aes) == 16, "unwrapped key is %d bytes, not AES-128" % len(aes))
    ct = h["payload"]
    check(ct and len(ct) % 16 == 0, "payload is not whole AES blocks")
    d = Cipher(algorithms.AES(aes), modes.CBC(h["iv"])).decryptor()
    pt = d.update(ct) + d.finalize()
    n = h["enc_padding"]
    check(1 <= n <= 16, "ENCRYPTION_PADDING %d" % n)
    check(pt[-n:] == b"\x0d" * n, "the last %d bytes are not carriage returns" % n)
    conf = pt[:-n]
    check(n == 16 - len(conf) % 16, "padding %d for %d bytes of configuration" % (n, len(conf)))
    check(h["enc_hash_alg"] in DIGESTS, "ENCRYPTION_HASH_ALGORITHM %d" % h["enc_hash_alg"])
    check(
        DIGESTS[h["enc_hash_alg"]](conf).digest() == h["enc_hash"],
        "ENCRYPTION_HASH does not match the decrypted configuration",
    )
    return conf, n


# --- Cross-check with tests/tools/verify_files.py ---------------------------


def verify_files_tool():
    src = os.environ.get("CAPSTAN_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..", "..")
    path = os.path.join(src, "tests", "tools", "verify_files.py")
    return path if os.path.exists(path) else None


def cross_check(workdir, kind, data, name, signer, extra=()):
    """Runs the files engineer's verifier (another reading of the spec) on
    |data|; both readers must accept the file. Skipped when the tool is not
    in the tree."""
    tool = verify_files_tool()
    if tool is None:
        log("verify_files.py not in the tree: cross-check skipped")
        return
    f = os.path.join(workdir, "xcheck-" + name)
    with open(f, "wb") as fh:
        fh.write(data)
    cert = os.path.join(workdir, "xcheck-signer.pem")
    with open(cert, "wb") as fh:
        fh.write(signer.public_bytes(serialization.Encoding.PEM))
    p = subprocess.run(
        [sys.executable, tool, kind, f, "--signer-cert", cert, "--name", name, *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    check(p.returncode == 0, "verify_files.py %s %s: %s" % (kind, name, (p.stderr or p.stdout).strip()))


# --- Misc -------------------------------------------------------------------


def new_data_dir(prefix):
    d = tempfile.mkdtemp(prefix=prefix)
    data = os.path.join(d, "data")
    cli(data, "init")
    return d, data


def run_main(main):
    """Runs main() with a readable failure and exit status for ctest."""
    try:
        main()
    except TestFailure as e:
        log("FAIL: %s" % e)
        sys.exit(1)
    log("PASS")
    sys.exit(0)
