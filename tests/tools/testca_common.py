"""What the two test CAs (test_est_ca.py, test_certsrv_ca.py) share: the CA
keys and certificates, issuing (rightly or wrongly on purpose), the TLS HTTP
server with Basic authentication, the control endpoint and the
startup/stop protocol.

Independent of capstan: Python 3 stdlib + python3-cryptography (Debian 12's
38.x is enough). Test aid only; never use it as a real CA.

Behaviours ("mode"), set with --mode or POST /control {"mode": ...}:
  issue          issue a correct certificate
  pending        answer pending (EST 202 + Retry-After, certsrv "Certificate
                 Pending"); the same request asked again is pending
                 `pending_polls` times in all, then issued (pending_polls < 0:
                 only when approved: POST /control {"approve": "all"}); it
                 is issued as `after_pending` says (issue or a wrong-* mode)
  refuse         EST: `status` (default 403) with `message`; certsrv: the
                 "denied" disposition page with `message` (or a plain HTTP
                 `status` error if status is set to something other than 200)
  stall          sleep `stall_seconds` (default 60) before answering (then
                 answer as "issue")
  hangup         close the connection without an answer
  wrong-key      a certificate for another key (same subject)
  wrong-subject  a certificate whose subject is CN=not-the-requested-device
  no-keyusage    a certificate without the keyUsage extension
  sign-only      keyUsage digitalSignature only (no keyEncipherment)
  wrong-ca       signed by another CA (not the written root)
  expired        validity entirely in the past
"""

import argparse
import base64
import datetime
import hashlib
import http.server
import json
import os
import signal
import socket
import ssl
import sys
import tempfile
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MODES = (
    "issue",
    "pending",
    "refuse",
    "stall",
    "hangup",
    "wrong-key",
    "wrong-subject",
    "no-keyusage",
    "sign-only",
    "wrong-ca",
    "expired",
)

# The modes that answer with a certificate.
ISSUING_MODES = ("issue", "wrong-key", "wrong-subject", "no-keyusage", "sign-only", "wrong-ca", "expired")

DEFAULT_SETTINGS = {
    "mode": "issue",
    "retry_after": 1,  # EST 202 Retry-After, seconds
    "retry_after_date": False,  # send Retry-After as an HTTP date instead
    "pending_polls": 1,  # pending answers before issuing (<0: until approved)
    "status": None,  # refuse: HTTP status (EST default 403)
    "message": "refused by the test CA",
    "stall_seconds": 60,
    "stall_all": False,  # stall/hangup also the CA-chain and certsrv retrieval requests
    "after_pending": "issue",  # how a pending request is issued in the end (issue or a wrong-* mode)
    "chain": False,  # EST: put the CA chain in the enroll answer too
    "cte": True,  # EST: send Content-Transfer-Encoding: base64
    "wrap": True,  # base64 bodies in 64-column lines
    "issued_link": "both",  # certsrv issued page: "both", "amp", "plain"
    "validity_days": 365,
}

_now = lambda: datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _name(cn, org="capstan test CA"):
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _ca_cert(subject, key, issuer_name, issuer_key, pathlen):
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
    )
    if issuer_key is not key:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    return b.sign(issuer_key, hashes.SHA256())


def _ku(digital_signature, key_encipherment):
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


class CA:
    """A root, optionally an issuing intermediate, and an unrelated "other"
    root used by the wrong-ca mode."""

    def __init__(self, name, intermediate=False):
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _ca_cert(_name(name + " root"), self.root_key, _name(name + " root"), self.root_key, None)
        if intermediate:
            self.key = ec.generate_private_key(ec.SECP256R1())
            self.cert = _ca_cert(_name(name + " issuing"), self.key, self.root.subject, self.root_key, 0)
            self.chain = [self.cert, self.root]
        else:
            self.key, self.cert, self.chain = self.root_key, self.root, [self.root]
        self.other_key = ec.generate_private_key(ec.SECP256R1())
        self.other = _ca_cert(_name(name + " other root"), self.other_key, _name(name + " other root"), self.other_key, None)
        self.lock = threading.Lock()

    def server_cert(self):
        """(cert, key) for the TLS listener: localhost and 127.0.0.1."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("localhost"))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_ku(True, True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert, key

    def issue(self, csr, mode, validity_days=365):
        """A certificate for CSR, right or wrong as MODE says."""
        pub = csr.public_key()
        subject = csr.subject
        signer_key, issuer = self.key, self.cert
        now = _now()
        nb, na = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=validity_days)
        ku = _ku(True, True)
        if mode == "wrong-key":
            pub = rsa.generate_private_key(65537, 2048).public_key()
        elif mode == "wrong-subject":
            subject = _name("not-the-requested-device", "capstan test device")
        elif mode == "no-keyusage":
            ku = None
        elif mode == "sign-only":
            ku = _ku(True, False)
        elif mode == "wrong-ca":
            signer_key, issuer = self.other_key, self.other
        elif mode == "expired":
            nb, na = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(nb)
            .not_valid_after(na)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False
            )
        )
        if ku is not None:
            b = b.add_extension(ku, critical=True)
        with self.lock:
            return b.sign(signer_key, hashes.SHA256())


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def b64(data, wrap=True):
    s = base64.b64encode(data).decode()
    if wrap:
        s = "\n".join(s[i : i + 64] for i in range(0, len(s), 64))
    return (s + "\n").encode()


def p7_certs_only(certs):
    return pkcs7.serialize_certificates(list(certs), serialization.Encoding.DER)


def b64decode_lenient(data):
    s = b"".join(data.split())
    s += b"=" * (-len(s) % 4)
    return base64.b64decode(s, validate=False)


def load_csr(data):
    """A CSR from PEM, base64 DER or DER; ValueError when it is none or its
    signature does not verify."""
    data = data.strip()
    if data.startswith(b"-----BEGIN"):
        csr = x509.load_pem_x509_csr(data)
    else:
        try:
            csr = x509.load_der_x509_csr(data)
        except Exception:
            csr = x509.load_der_x509_csr(b64decode_lenient(data))
    if not csr.is_signature_valid:
        raise ValueError("CSR signature does not verify")
    return csr


def csr_id(csr):
    return hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).hexdigest()


class State:
    """Settings (changed by /control), the request log and pending requests."""

    def __init__(self, settings):
        self.lock = threading.Lock()
        self.settings = dict(DEFAULT_SETTINGS)
        self.settings.update(settings)
        self.log = []
        self.pending = {}  # key -> {"polls": n, "approved": bool}
        self.stop = threading.Event()

    def get(self, k):
        with self.lock:
            return self.settings[k]

    def snapshot(self):
        with self.lock:
            return dict(self.settings)

    def record(self, entry):
        with self.lock:
            self.log.append(entry)

    def pending_step(self, key, pending_polls):
        """For a pending request KEY: True when it is now to be issued."""
        with self.lock:
            p = self.pending.setdefault(key, {"polls": 0, "approved": False})
            if p["approved"] or (pending_polls >= 0 and p["polls"] >= pending_polls):
                return True
            p["polls"] += 1
            return False

    def control(self, body):
        """Apply a /control JSON object; the state as JSON-able dict."""
        with self.lock:
            for k, v in body.items():
                if k == "approve":
                    for key, p in self.pending.items():
                        if v == "all" or str(v) == str(key):
                            p["approved"] = True
                elif k == "reset_log":
                    self.log = []
                elif k == "reset_pending":
                    self.pending = {}
                elif k in DEFAULT_SETTINGS:
                    if k == "mode" and v not in MODES:
                        raise ValueError("unknown mode %r (one of %s)" % (v, ", ".join(MODES)))
                    if k == "after_pending" and v not in ISSUING_MODES:
                        raise ValueError("after_pending must be one of %s" % ", ".join(ISSUING_MODES))
                    self.settings[k] = v
                else:
                    raise ValueError("unknown control key %r" % k)
            return {
                "settings": dict(self.settings),
                "log": list(self.log),
                "pending": {str(k): dict(v) for k, v in self.pending.items()},
            }


class Handler(http.server.BaseHTTPRequestHandler):
    """Base request handler: Basic auth, control endpoint, helpers. The
    subclass implements route(method) -> None."""

    protocol_version = "HTTP/1.1"
    server_version = "capstan-test-ca/1"
    realm = "test CA"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("%s %s\n" % (self.server.name, fmt % args))

    # -- helpers --------------------------------------------------------
    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def send(self, status, body=b"", ctype="text/plain", headers=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def user(self):
        """The authenticated user name, or None after answering 401."""
        h = self.headers.get("Authorization", "")
        if h.lower().startswith("basic "):
            try:
                u, _, p = base64.b64decode(h[6:].strip()).decode().partition(":")
            except Exception:
                u, p = None, None
            if u == self.server.username and p == self.server.password:
                return u
        hdrs = []
        if self.server.offer_ntlm:
            hdrs += [("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "NTLM")]
        hdrs.append(("WWW-Authenticate", 'Basic realm="%s"' % self.realm))
        self.record(result="unauthorized")
        self.send(401, "401 Unauthorized: authentication required\n", headers=hdrs)
        return None

    def record(self, **kw):
        e = {"method": self.command, "path": self.path, "user_agent": self.headers.get("User-Agent", "")}
        e.update(kw)
        self.server.state.record(e)

    def stall(self):
        """Sleep stall_seconds (or until the server stops)."""
        self.server.state.stop.wait(float(self.server.state.get("stall_seconds")))

    def hangup(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- dispatch -------------------------------------------------------
    def _dispatch(self):
        try:
            path = self.path.split("?", 1)[0]
            if path == "/control":
                return self._control()
            self.route()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True

    def _control(self):
        try:
            body = json.loads(self.body() or b"{}") if self.command == "POST" else {}
            if not isinstance(body, dict):
                raise ValueError("a JSON object is expected")
            out = self.server.state.control(body)
        except ValueError as e:
            return self.send(400, json.dumps({"error": str(e)}) + "\n", "application/json")
        self.send(200, json.dumps(out) + "\n", "application/json")

    do_GET = do_POST = do_HEAD = _dispatch


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    label = None

    def handle_error(self, request, client_address):
        # A client that hangs up or fails the TLS handshake is not news.
        if getattr(self, "verbose", False):
            super().handle_error(request, client_address)


def common_args(description):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--root-out", required=True, help="write the root CA certificate (PEM) here")
    ap.add_argument("--tls-cert-out", required=True, help="write the TLS server certificate (PEM) here")
    ap.add_argument("--chain-out", help="write the CA chain (issuing CA first, PEM) here")
    ap.add_argument("--intermediate", action="store_true", help="issue from an intermediate under the root")
    ap.add_argument("--username", default="capf")
    ap.add_argument("--password", default="secret")
    ap.add_argument("--password-file", help="read the password from this file (first line)")
    ap.add_argument("--offer-ntlm", action="store_true", help="401 also offers Negotiate and NTLM")
    ap.add_argument("--mode", default="issue", choices=MODES)
    ap.add_argument("--retry-after", type=int, default=1)
    ap.add_argument("--pending-polls", type=int, default=1)
    ap.add_argument("--stall-seconds", type=float, default=60)
    ap.add_argument("--message", default=DEFAULT_SETTINGS["message"])
    ap.add_argument("--status", type=int)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--verbose", action="store_true")
    return ap


def _write(path, data):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def serve(name, handler_cls, args, extra_settings=None, extra_ready=None):
    """Build the CA, write the files, listen on 127.0.0.1, print the ready
    JSON line, serve until SIGTERM/SIGINT."""
    ca = CA(name, intermediate=args.intermediate)
    tls_cert, tls_key = ca.server_cert()
    _write(args.root_out, pem(ca.root))
    _write(args.tls_cert_out, pem(tls_cert))
    if args.chain_out:
        _write(args.chain_out, b"".join(pem(c) for c in ca.chain))

    settings = {
        "mode": args.mode,
        "retry_after": args.retry_after,
        "pending_polls": args.pending_polls,
        "stall_seconds": args.stall_seconds,
        "message": args.message,
        "status": args.status,
    }
    settings.update(extra_settings or {})
    password = args.password
    if args.password_file:
        with open(args.password_file) as f:
            password = f.readline().rstrip("\r\n")

    srv = Server(("127.0.0.1", args.port), handler_cls)
    srv.name, srv.ca, srv.state = name, ca, State(settings)
    srv.username, srv.password, srv.offer_ntlm, srv.verbose = args.username, password, args.offer_ntlm, args.verbose

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as td:
        cf, kf = os.path.join(td, "c.pem"), os.path.join(td, "k.pem")
        _write(cf, pem(tls_cert) + b"".join(pem(c) for c in ca.chain if c is not ca.root))
        _write(
            kf,
            tls_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        ctx.load_cert_chain(cf, kf)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    # The handshake happens in the handler's thread (do_handshake_on_connect
    # is off and the first read performs it), so a silent client never
    # blocks the accept loop.

    def stop(signum, frame):
        srv.state.stop.set()
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    port = srv.server_address[1]
    ready = {"name": name, "port": port, "url": "https://127.0.0.1:%d" % port, "pid": os.getpid()}
    ready.update(extra_ready or {})
    print(json.dumps(ready), flush=True)
    srv.serve_forever(poll_interval=0.2)
    srv.server_close()
    return 0
