"""capstan-phone and certificate requests (docs/spec/capf-protocol.md,
"Certificate requests from the phone (extension)"), driven by its command
line against a scripted fake CAPF server written here in Python (ssl +
python3-cryptography): an implementation independent of the phone's. The
real server's external-CA modes are tested elsewhere; this checks that the
simulator's flags do what bench/README.md and --help say:

  1. offline CA, session 1: KEY_GEN, SIGN_CERT_REQUEST, a valid PKCS#10
     request for the key of KEY_GEN_RESPONSE with CN = device, then
     RETRY_LATER; the phone keeps the key in --key-file (0600);
  2. session 2 with --refuse-store: the hand-over (STORE_CERT_REQUEST right
     after AUTH_RESPONSE) is refused with REASON=7, the server starts over
     with KEY_GEN_REQUEST, a new request, RETRY_LATER; the key file now
     holds the new key;
  3. session 3: the hand-over of the certificate for the new request is
     taken (--save-cert / --save-key write it);
  4. --csr-mode wrong-cn / garbage / refuse: what the server receives, and
     END_SESSION 7 is a normal end for the phone;
  5. SIGN_CERT_REQUEST right after authentication is a protocol error.
"""

import datetime
import json
import os
import socket
import ssl
import stat
import struct
import subprocess
import sys
import tempfile
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile_lib import (  # noqa: E402
    AUTH_REQUEST,
    AUTH_RESPONSE,
    EL_AUTH_TYPE,
    EL_CERTIFICATE,
    EL_CERTIFICATE_TYPE,
    EL_KEY_SIZE,
    EL_KEY_TYPE,
    EL_PUBLIC_KEY,
    EL_REASON,
    EL_VERSION,
    END_SESSION,
    HEADER_LEN,
    KEY_GEN_REQUEST,
    KEY_GEN_RESPONSE,
    RETRY_LATER,
    STORE_CERT_REQUEST,
    STORE_CERT_RESPONSE,
    Message,
    TestFailure,
    check,
    el,
    log,
    msg,
    parse_elements,
)

SIGN_CERT_REQUEST = 22
SIGN_CERT_RESPONSE = 23
EL_RETRY_DELAY = 12
EL_CERT_REQUEST = 21
NAME = "SEP0A1B2C3D4E5F"
TIMEOUT = 60

BUILD = os.environ.get("CAPSTAN_BUILD_DIR", "build")
PHONE = os.path.join(BUILD, "capstan-phone")


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def make_ca(tmp):
    """A self-signed EC CA: the fake server's TLS identity and its CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake CAPF")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - datetime.timedelta(hours=1))
        .not_valid_after(now() + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = os.path.join(tmp, "ca.pem")
    key_pem = os.path.join(tmp, "ca.key")
    with open(cert_pem, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_pem, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert, key, cert_pem, key_pem


def issue(ca_cert, ca_key, csr_der):
    """The operator's CA signs the phone's request."""
    csr = x509.load_der_x509_csr(csr_der)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - datetime.timedelta(hours=1))
        .not_valid_after(now() + datetime.timedelta(days=365))
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def spki_of(key):
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class Conn:
    """The server side of one session."""

    def __init__(self, sock, sid):
        self.sock = sock
        self.sid = sid

    def send(self, command, elements=b""):
        self.sock.sendall(msg(command, self.sid, elements))

    def recv(self, want):
        head = self._exact(HEADER_LEN)
        proto, command, sid, n = struct.unpack(">BBIH", head)
        check(proto == 0x55, "phone: protocol id 0x%02x" % proto)
        check(sid == self.sid, "phone: session id 0x%08x" % sid)
        m = Message(command, sid, parse_elements(self._exact(n)))
        check(command == want, "expected command %d from the phone, got %r" % (want, m))
        return m

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise TestFailure("phone closed the connection")
            buf += chunk
        return buf

    def auth(self):
        self.send(AUTH_REQUEST, el(EL_VERSION, b"\x03") + el(EL_AUTH_TYPE, b"\x00"))
        self.recv(AUTH_RESPONSE)

    def keygen(self):
        """KEY_GEN_REQUEST RSA 2048; returns the public key's SPKI DER."""
        self.send(KEY_GEN_REQUEST, el(EL_KEY_TYPE, b"\x00") + el(EL_KEY_SIZE, b"\x08\x00"))
        m = self.recv(KEY_GEN_RESPONSE)
        spki = m.get(EL_PUBLIC_KEY)
        check(spki, "KEY_GEN_RESPONSE without PUBLIC_KEY")
        return spki

    def sign(self):
        """SIGN_CERT_REQUEST (no element): returns (REASON, CERT_REQUEST or None)."""
        self.send(SIGN_CERT_REQUEST)
        m = self.recv(SIGN_CERT_RESPONSE)
        return m.u8(EL_REASON), m.get(EL_CERT_REQUEST)

    def store(self, der):
        value = struct.pack(">BHBB", 1, len(der) + 2, 0, 1) + der
        self.send(STORE_CERT_REQUEST, el(EL_CERTIFICATE_TYPE, b"\x01") + el(EL_CERTIFICATE, value))
        return self.recv(STORE_CERT_RESPONSE).u8(EL_REASON)

    def retry_later(self, delay):
        self.send(RETRY_LATER, el(EL_RETRY_DELAY, struct.pack(">H", delay)))

    def end(self, reason):
        self.send(END_SESSION, el(EL_REASON, bytes([reason])))


class FakeServer:
    def __init__(self, cert_pem, key_pem):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert_pem, key_pem)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.sid = 0x7E570000

    def session(self, script, phone_args):
        """Runs capstan-phone with |phone_args| against one session played
        by |script|(Conn); returns (exit code, JSON result, script's value)."""
        self.sid += 1
        out = {}

        def serve():
            try:
                self.listener.settimeout(TIMEOUT)
                raw, _ = self.listener.accept()
                raw.settimeout(TIMEOUT)
                with self.ctx.wrap_socket(raw, server_side=True) as s:
                    out["value"] = script(Conn(s, self.sid))
                    # Wait for the phone to close.
                    try:
                        s.recv(1)
                    except (OSError, ssl.SSLError):
                        pass
            except Exception as e:  # reported by the main thread
                out["error"] = e

        t = threading.Thread(target=serve)
        t.start()
        p = subprocess.run(
            [PHONE, "--connect", "127.0.0.1:%d" % self.port, "--name", NAME, "--json"]
            + phone_args,
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 2,
        )
        t.join(TIMEOUT * 2)
        log(
            "capstan-phone %s -> rc=%d %s %s"
            % (" ".join(phone_args), p.returncode, p.stdout.strip(), p.stderr.strip())
        )
        if "error" in out:
            raise out["error"]
        lines = p.stdout.strip().splitlines()
        check(lines and lines[-1].startswith("{"), "capstan-phone printed no JSON")
        return p.returncode, json.loads(lines[-1]), out.get("value")


def check_request(req_der, spki, cn=NAME):
    csr = x509.load_der_x509_csr(req_der)
    check(csr.is_signature_valid, "the request's signature does not verify")
    check(spki_of(csr.public_key()) == spki, "the request is not for the key of KEY_GEN_RESPONSE")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    check(len(cns) == 1 and cns[0].value == cn, "request CN %r" % cns)
    check(isinstance(csr.signature_hash_algorithm, hashes.SHA256), "request not SHA-256")
    return csr


def key_spki(path):
    with open(path, "rb") as f:
        key = serialization.load_der_private_key(f.read(), None)
    return spki_of(key.public_key())


def main():
    check(os.access(PHONE, os.X_OK), "capstan-phone not found in %s" % BUILD)
    tmp = tempfile.mkdtemp(prefix="capstan-phone-csr-")
    ca_cert, ca_key, ca_pem, ca_key_pem = make_ca(tmp)
    server = FakeServer(ca_pem, ca_key_pem)
    key_file = os.path.join(tmp, "pending.der")
    base = ["--ca-pem", ca_pem, "--key-file", key_file, "--timeout", "30", "--ca-wait", "60"]

    # 1. Offline CA, first session: the request, then RETRY_LATER.
    def offline(c):
        c.auth()
        spki = c.keygen()
        reason, req = c.sign()
        check(reason == 1 and req, "SIGN_CERT_RESPONSE: reason %d, request %r" % (reason, req))
        check_request(req, spki)
        c.retry_later(600)
        return req

    rc, res, req1 = server.session(offline, base)
    check(rc == 1, "a RETRY_LATER session exits 1 (rc=%d)" % rc)
    check(res["error"] == "retry_later" and res["retry_delay"] == 600, "result %r" % res)
    check(res["csr_sent"] and res["key_file_written"] and res["pending_key"], "result %r" % res)
    check(not res["lsc_stored"], "result %r" % res)
    st = os.stat(key_file)
    check(stat.S_IMODE(st.st_mode) == 0o600, "key file mode %o" % stat.S_IMODE(st.st_mode))
    key1 = key_spki(key_file)
    check(spki_of(x509.load_der_x509_csr(req1).public_key()) == key1, "key file != request key")
    log("ok: offline session 1 (request sent, key kept)")

    # 2. The operator's certificate, refused once: the server starts over.
    cert1 = issue(ca_cert, ca_key, req1)

    def refused(c):
        c.auth()
        reason = c.store(cert1)
        check(reason == 7, "--refuse-store answered %d" % reason)
        spki = c.keygen()
        r, req = c.sign()
        check(r == 1 and req, "second request missing")
        check_request(req, spki)
        c.retry_later(60)
        return req

    rc, res, req2 = server.session(refused, base + ["--refuse-store"])
    check(rc == 1 and res["error"] == "retry_later", "result %r" % res)
    check(res["handover"] and res["store_refused"] == 1 and res["csr_sent"], "result %r" % res)
    key2 = key_spki(key_file)
    check(key2 != key1, "the key file still holds the old key")
    check(spki_of(x509.load_der_x509_csr(req2).public_key()) == key2, "key file != request 2")
    log("ok: refused hand-over, new request in the same session")

    # 3. The hand-over of the certificate for the new request.
    cert2 = issue(ca_cert, ca_key, req2)
    save_cert = os.path.join(tmp, "lsc.der")
    save_key = os.path.join(tmp, "lsc.key.der")

    def handover(c):
        c.auth()
        reason = c.store(cert2)
        check(reason == 1, "hand-over answered %d" % reason)
        c.end(1)

    rc, res, _ = server.session(
        handover, base + ["--save-cert", save_cert, "--save-key", save_key]
    )
    check(rc == 0 and res["result"] == "ok" and res["reason"] == 1, "result %r" % res)
    check(res["handover"] and res["lsc_stored"] and not res["pending_key"], "result %r" % res)
    with open(save_cert, "rb") as f:
        check(f.read() == cert2, "--save-cert does not hold the certificate handed over")
    check(key_spki(save_key) == key2, "--save-key does not hold the request's key")
    log("ok: hand-over taken")

    # 3b. A certificate for another key is refused (not the phone's).
    def wrong_handover(c):
        c.auth()
        check(c.store(cert1) == 7, "a certificate for the old key was taken")
        c.end(7)

    rc, res, _ = server.session(wrong_handover, base)
    check(rc == 1 and res["error"] == "bad_certificate", "result %r" % res)
    log("ok: hand-over of a certificate for another key refused")

    # 4. Misbehaviour modes.
    def bad(mode):
        def script(c):
            c.auth()
            spki = c.keygen()
            reason, req = c.sign()
            c.end(7)
            return spki, reason, req

        rc, res, (spki, reason, req) = server.session(script, base + ["--csr-mode", mode])
        check(rc == 0 and res["reason"] == 7 and res["csr_requested"], "%s: %r" % (mode, res))
        return spki, reason, req

    spki, reason, req = bad("wrong-cn")
    check(reason == 1, "wrong-cn reason")
    check_request(req, spki, cn="SEP000000000000")
    spki, reason, req = bad("garbage")
    try:
        x509.load_der_x509_csr(req)
        raise TestFailure("garbage parsed as a request")
    except ValueError:
        pass
    spki, reason, req = bad("refuse")
    check(reason == 7 and req is None, "refuse: reason %d" % reason)
    log("ok: --csr-mode wrong-cn, garbage, refuse")

    # 5. SIGN_CERT_REQUEST where it does not belong.
    def early(c):
        c.auth()
        c.send(SIGN_CERT_REQUEST)

    rc, res, _ = server.session(early, base)
    check(rc == 1 and res["error"] == "protocol_error", "result %r" % res)
    check("SIGN_CERT_REQUEST" in res["detail"], "detail %r" % res["detail"])
    log("ok: SIGN_CERT_REQUEST after authentication is a protocol error")
    subprocess.run(["rm", "-rf", tmp], check=False)


if __name__ == "__main__":
    try:
        main()
    except TestFailure as e:
        log("FAIL:", e)
        sys.exit(1)
    log("PASS")
