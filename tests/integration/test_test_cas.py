#!/usr/bin/env python3
"""The test CAs (tests/tools/test_est_ca.py, tests/tools/test_certsrv_ca.py)
do what they claim, checked with independent clients only: curl and the
openssl CLI (no capstan code). Loopback only; every request has a timeout;
the CAs are stopped with SIGTERM and the scratch directory removed.

Python 3 standard library only (the CAs themselves need python3-cryptography).
"""

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(os.path.dirname(HERE), "tools")
T = 10  # seconds: the longest any single request may take


class TestFailure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise TestFailure(what)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(argv, check_rc=True, **kw):
    p = subprocess.run(argv, capture_output=True, timeout=T + 20, **kw)
    if check_rc and p.returncode != 0:
        raise TestFailure("%s failed (rc=%d): %s" % (" ".join(argv), p.returncode, p.stderr.decode(errors="replace")))
    return p


class CA:
    """A test CA process: started, waited for, stopped with SIGTERM."""

    def __init__(self, tool, d, *extra):
        self.d = d
        os.makedirs(d)
        self.root = os.path.join(d, "root.pem")
        self.tls = os.path.join(d, "tls.pem")
        self.chain_file = os.path.join(d, "chain-out.pem")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(TOOLS, tool), "--root-out", self.root, "--tls-cert-out", self.tls,
             "--chain-out", self.chain_file, *extra],
            stdout=subprocess.PIPE,
            stderr=open(os.path.join(d, "stderr.log"), "wb"),
        )
        r, _, _ = select.select([self.proc.stdout], [], [], 30)
        check(r, "%s did not print its ready line within 30 s" % tool)
        line = self.proc.stdout.readline()
        self.ready = json.loads(line)
        self.url = self.ready["url"]
        check(self.url.startswith("https://127.0.0.1:"), "not on loopback: %s" % self.url)
        check(os.path.exists(self.root) and os.path.exists(self.tls), "root/TLS PEM files not written")
        self.n = 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise TestFailure("the CA did not stop within 10 s of SIGTERM")
        return self.proc.returncode

    def path(self, name):
        self.n += 1
        return os.path.join(self.d, "%03d-%s" % (self.n, name))

    def curl(self, path, *args, auth=True, max_time=T, user="capf:secret", cacert=None):
        """(curl exit code, HTTP status, headers text, body bytes, elapsed)."""
        out, hdr = self.path("body"), self.path("headers")
        argv = ["curl", "-sS", "--max-time", str(max_time), "--cacert", cacert or self.root,
                "-o", out, "-D", hdr, "-w", "%{http_code}", "-A", "Mozilla/5.0 (capstan test)"]
        if auth:
            argv += ["-u", user]
        t0 = time.monotonic()
        p = subprocess.run(argv + list(args) + [self.url + path], capture_output=True, timeout=max_time + 10)
        el = time.monotonic() - t0
        body = open(out, "rb").read() if os.path.exists(out) else b""
        headers = open(hdr, encoding="latin-1").read() if os.path.exists(hdr) else ""
        code = int(p.stdout or b"0") if p.stdout.strip().isdigit() else 0
        return p.returncode, code, headers, body, el

    def control(self, **kw):
        rc, code, _, body, _ = self.curl("/control", "-X", "POST", "-H", "Content-Type: application/json",
                                         "--data-binary", json.dumps(kw), auth=False)
        check(rc == 0 and code == 200, "POST /control %r: rc=%d HTTP %d %r" % (kw, rc, code, body))
        return json.loads(body)


# -- openssl helpers ------------------------------------------------------------
def new_csr(d, name, cn):
    key, csr = os.path.join(d, name + ".key"), os.path.join(d, name + ".csr.pem")
    run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-subj", "/CN=" + cn,
         "-out", csr])
    der = run(["openssl", "req", "-in", csr, "-outform", "DER"]).stdout
    b64 = os.path.join(d, name + ".csr.b64")
    run(["openssl", "base64", "-out", b64], input=der)
    return key, csr, b64


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def p7_b64_to_pem(ca, body):
    """base64 PKCS#7 certs-only (EST) -> PEM certificates, via openssl."""
    der = run(["openssl", "base64", "-d"], input=body).stdout
    check(der, "the body is not base64")
    pem = run(["openssl", "pkcs7", "-inform", "DER", "-print_certs"], input=der).stdout
    certs = re.findall(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n", pem, re.S)
    check(certs, "no certificate in the PKCS#7")
    return [write(ca.path("cert.pem"), c) for c in certs]


def leaf(certs):
    """The end-entity certificate among CERTS (a PKCS#7 SET has no order:
    newer python3-cryptography sorts it)."""
    ee = [c for c in certs if "CA:TRUE" not in x509(c, "-ext", "basicConstraints")]
    check(len(ee) == 1, "%d end-entity certificates in the answer, want 1" % len(ee))
    return ee[0]


def x509(cert, *opts):
    return run(["openssl", "x509", "-in", cert, "-noout", *opts]).stdout.decode()


def verify(ca, cert, untrusted=None):
    argv = ["openssl", "verify", "-CAfile", ca.root]
    if untrusted:
        argv += ["-untrusted", untrusted]
    p = run(argv + [cert], check_rc=False)
    return p.returncode == 0, (p.stdout + p.stderr).decode()


def pubkey_of_cert(cert):
    return run(["openssl", "x509", "-in", cert, "-noout", "-pubkey"]).stdout


def pubkey_of_key(key):
    return run(["openssl", "pkey", "-in", key, "-pubout"]).stdout


def key_usage(cert):
    p = run(["openssl", "x509", "-in", cert, "-noout", "-ext", "keyUsage"], check_rc=False)
    return (p.stdout + p.stderr).decode()


def check_good(ca, cert, key, cn, untrusted=None):
    ok, out = verify(ca, cert, untrusted or ca.chain_file)
    check(ok, "issued certificate does not verify against the root: " + out)
    check(pubkey_of_cert(cert) == pubkey_of_key(key), "issued certificate is not for the request's key")
    check(re.search(r"CN\s*=\s*%s\b" % cn, x509(cert, "-subject")), "subject is not CN=%s" % cn)
    ku = key_usage(cert)
    check("Digital Signature" in ku and "Key Encipherment" in ku, "keyUsage lacks a bit: " + ku)


def check_wrong(ca, mode, cert, key, cn):
    """The certificate is wrong exactly as MODE claims (and otherwise right)."""
    ok, out = verify(ca, cert, ca.chain_file)
    same_key = pubkey_of_cert(cert) == pubkey_of_key(key)
    subj = x509(cert, "-subject")
    ku = key_usage(cert)
    right_cn = bool(re.search(r"CN\s*=\s*%s\b" % cn, subj))
    if mode == "wrong-key":
        check(ok and right_cn and not same_key, "wrong-key: ok=%s cn=%s same_key=%s" % (ok, right_cn, same_key))
    elif mode == "wrong-subject":
        check(ok and same_key and not right_cn and "not-the-requested-device" in subj, "wrong-subject: " + subj)
    elif mode == "no-keyusage":
        check(ok and same_key and right_cn and "Digital Signature" not in ku, "no-keyusage: " + ku)
    elif mode == "sign-only":
        check(ok and same_key and "Digital Signature" in ku and "Key Encipherment" not in ku, "sign-only: " + ku)
    elif mode == "wrong-ca":
        check(not ok and same_key and right_cn, "wrong-ca verified against the root: " + out)
        check("other root" in x509(cert, "-issuer"), "wrong-ca: issuer is not the other CA")
    elif mode == "expired":
        check(not ok and "expired" in out, "expired: " + out)
        p = run(["openssl", "x509", "-in", cert, "-noout", "-checkend", "0"], check_rc=False)
        check(p.returncode != 0, "expired: -checkend 0 says valid")
    else:
        raise TestFailure("no check for " + mode)


WRONG = ("wrong-key", "wrong-subject", "no-keyusage", "sign-only", "wrong-ca", "expired")


# -- EST ------------------------------------------------------------------------
def test_est(work):
    ca = CA("test_est_ca.py", os.path.join(work, "est"), "--intermediate")
    try:
        d = ca.d
        key, _, b64 = new_csr(d, "dev1", "SEP001122334455")
        enroll = "/.well-known/est/simpleenroll"
        post = ("-H", "Content-Type: application/pkcs10", "--data-binary", "@" + b64)

        # The TLS server certificate chains to the written root; host names hold.
        ok, out = verify(ca, ca.tls, ca.chain_file)
        check(ok, "TLS server certificate: " + out)
        for host in ("127.0.0.1", "localhost"):
            p = run(["curl", "-sS", "--max-time", str(T), "--cacert", ca.root, "-o", "/dev/null",
                     ca.url.replace("127.0.0.1", host) + "/.well-known/est/cacerts"], check_rc=False)
            check(p.returncode == 0, "TLS to %s: %s" % (host, p.stderr))
        rc, *_ = ca.curl("/.well-known/est/cacerts", cacert="/etc/ssl/certs/ca-certificates.crt")
        check(rc != 0, "TLS accepted without the test root")

        # cacerts: no authentication, base64 PKCS#7 with the chain up to the root.
        rc, code, hdr, body, _ = ca.curl("/.well-known/est/cacerts", auth=False)
        check(rc == 0 and code == 200, "cacerts: rc=%d HTTP %d" % (rc, code))
        check("application/pkcs7-mime" in hdr, "cacerts content type: " + hdr)
        chain = p7_b64_to_pem(ca, body)
        check(len(chain) == 2, "cacerts: %d certificates, want issuing + root" % len(chain))
        fps = [x509(c, "-fingerprint", "-sha256") for c in chain]
        check(x509(ca.root, "-fingerprint", "-sha256") in fps, "the written root is not in cacerts")
        log("est: cacerts and TLS ok")

        # Basic authentication is enforced.
        rc, code, hdr, _, _ = ca.curl(enroll, *post, auth=False)
        check(code == 401 and re.search(r"(?i)www-authenticate:\s*basic", hdr), "no auth: HTTP %d %s" % (code, hdr))
        rc, code, *_ = ca.curl(enroll, *post, user="capf:wrong")
        check(code == 401, "wrong password: HTTP %d" % code)
        rc, code, *_ = ca.curl(enroll, "-H", "Content-Type: text/plain", "--data-binary", "@" + b64)
        check(code == 415, "wrong content type: HTTP %d" % code)
        rc, code, *_ = ca.curl(enroll, "-H", "Content-Type: application/pkcs10", "--data-binary", "garbage")
        check(code == 400, "garbage request: HTTP %d" % code)
        log("est: authentication and request checks ok")

        # Issue (plain, with a label, with the chain in the answer).
        for path, extra in ((enroll, {}), ("/.well-known/est/lsc/simpleenroll", {}), (enroll, {"chain": True})):
            ca.control(mode="issue", **({"chain": False} | extra))
            rc, code, hdr, body, _ = ca.curl(path, *post)
            check(code == 200 and "application/pkcs7-mime" in hdr, "%s: HTTP %d %s" % (path, code, hdr))
            certs = p7_b64_to_pem(ca, body)
            check(len(certs) == (3 if extra else 1), "%s: %d certificates" % (path, len(certs)))
            check_good(ca, leaf(certs), key, "SEP001122334455")
        log("est: issue ok")

        # Pending: 202 with Retry-After twice, then the same request is issued.
        ca.control(mode="pending", pending_polls=2, retry_after=3)
        key2, _, b64_2 = new_csr(d, "dev2", "SEP00AABBCCDDEE")
        post2 = ("-H", "Content-Type: application/pkcs10", "--data-binary", "@" + b64_2)
        for i in range(2):
            rc, code, hdr, *_ = ca.curl(enroll, *post2)
            check(code == 202 and re.search(r"(?i)retry-after:\s*3\b", hdr), "pending #%d: HTTP %d %s" % (i, code, hdr))
        rc, code, _, body, _ = ca.curl(enroll, *post)  # another request: its own count
        check(code == 202, "another request while pending: HTTP %d" % code)
        rc, code, _, body, _ = ca.curl(enroll, *post2)
        check(code == 200, "after the polls: HTTP %d" % code)
        check_good(ca, leaf(p7_b64_to_pem(ca, body)), key2, "SEP00AABBCCDDEE")
        ca.control(reset_pending=True, retry_after_date=True, pending_polls=-1)
        rc, code, hdr, *_ = ca.curl(enroll, *post2)
        check(code == 202 and re.search(r"(?i)retry-after:.*GMT", hdr), "Retry-After as a date: " + hdr)
        rc, code, *_ = ca.curl(enroll, *post2)
        check(code == 202, "pending_polls -1 issued without approval")
        ca.control(approve="all")
        rc, code, _, body, _ = ca.curl(enroll, *post2)
        check(code == 200, "approved: HTTP %d" % code)
        ca.control(reset_pending=True, retry_after_date=False, pending_polls=1, after_pending="wrong-key")
        rc, code, *_ = ca.curl(enroll, *post2)
        check(code == 202, "pending then wrong-key: first HTTP %d" % code)
        rc, code, _, body, _ = ca.curl(enroll, *post2)
        check(code == 200, "pending then wrong-key: HTTP %d" % code)
        check_wrong(ca, "wrong-key", leaf(p7_b64_to_pem(ca, body)), key2, "SEP00AABBCCDDEE")
        ca.control(after_pending="issue", reset_pending=True)
        log("est: pending ok")

        # Refuse: status and message.
        ca.control(mode="refuse", status=403, message="device SEP001122334455 is not allowed")
        rc, code, _, body, _ = ca.curl(enroll, *post)
        check(code == 403 and body.startswith(b"device SEP001122334455 is not allowed"), "refuse: %d %r" % (code, body))
        ca.control(status=500, message="CA database offline")
        rc, code, _, body, _ = ca.curl(enroll, *post)
        check(code == 500 and b"CA database offline" in body, "refuse 500: %d %r" % (code, body))
        log("est: refuse ok")

        # Stall: the client's timeout fires; stall_all stalls cacerts too. Hangup.
        ca.control(mode="stall", stall_seconds=30)
        rc, code, _, _, el = ca.curl(enroll, *post, max_time=2)
        check(rc == 28 and el < 6, "stall: curl rc=%d after %.1fs" % (rc, el))
        rc, code, *_ = ca.curl("/.well-known/est/cacerts", max_time=2)
        check(rc == 0 and code == 200, "cacerts stalled without stall_all")
        ca.control(stall_all=True)
        rc, *_ = ca.curl("/.well-known/est/cacerts", max_time=2)
        check(rc == 28, "cacerts with stall_all: curl rc=%d" % rc)
        ca.control(mode="hangup", stall_all=False)
        rc, code, *_ = ca.curl(enroll, *post)
        check(rc != 0 and code == 0, "hangup: rc=%d HTTP %d" % (rc, code))
        log("est: stall and hangup ok")

        # Wrong certificates.
        for mode in WRONG:
            ca.control(mode=mode)
            rc, code, _, body, _ = ca.curl(enroll, *post)
            check(code == 200, "%s: HTTP %d" % (mode, code))
            check_wrong(ca, mode, leaf(p7_b64_to_pem(ca, body)), key, "SEP001122334455")
        log("est: wrong certificates ok")

        # The control log records what happened.
        st = ca.control()
        results = [e.get("result") for e in st["log"]]
        for r in ("cacerts", "unauthorized", "issued", "pending", "refused", "stall", "hangup", "issued-wrong-ca"):
            check(r in results, "control log lacks %s" % r)

        # SIGTERM stops it promptly even with a stalled request in progress.
        ca.control(mode="stall", stall_seconds=60)
        p = subprocess.Popen(["curl", "-sS", "--max-time", "30", "--cacert", ca.root, "-u", "capf:secret", *post,
                              "-o", "/dev/null", ca.url + enroll], stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        t0 = time.monotonic()
        rc = ca.stop()
        check(rc == 0 and time.monotonic() - t0 < 5, "SIGTERM: rc=%s after %.1fs" % (rc, time.monotonic() - t0))
        p.wait(timeout=35)
        log("est: control log and SIGTERM ok")
    finally:
        ca.stop()

    # --label restricts the label.
    ca = CA("test_est_ca.py", os.path.join(work, "est-label"), "--label", "lsc", "--mode", "issue")
    try:
        check(ca.ready.get("est_base") == "/.well-known/est/lsc/", "ready line: %r" % ca.ready)
        rc, code, *_ = ca.curl("/.well-known/est/lsc/cacerts")
        check(code == 200, "label cacerts: HTTP %d" % code)
        for p in ("/.well-known/est/other/cacerts", "/.well-known/est/cacerts"):
            rc, code, *_ = ca.curl(p)
            check(code == 404, "%s with --label lsc: HTTP %d" % (p, code))
        log("est: --label ok")
    finally:
        ca.stop()


# -- certsrv -----------------------------------------------------------------------
ISSUED_RE = re.compile(r"certnew\.cer\?ReqID=(\d+)&(amp;)?")
PENDING_RE = re.compile(r"Your Request Id is (\d+)\.")
DENIED_RE = re.compile(r'The disposition message is "([^"]*)"')


def test_certsrv(work):
    d = os.path.join(work, "certsrv")
    pwfile = os.path.join(work, "certsrv-password")
    write(pwfile, b"s3cret pass\n")
    ca = CA("test_certsrv_ca.py", d, "--template", "CiscoLSC", "--username", "CORP\\capf",
            "--password-file", pwfile)
    user = "CORP\\capf:s3cret pass"
    try:
        key, csr, _ = new_csr(d, "dev1", "SEP001122334455")

        def submit(template="CiscoLSC", **kw):
            args = ["--data-urlencode", "Mode=newreq", "--data-urlencode", "CertRequest@" + csr,
                    "--data-urlencode", "TargetStoreFlags=0", "--data-urlencode", "SaveCert=yes",
                    "--data-urlencode", "FriendlyType=Saved-Request Certificate"]
            if template is not None:
                args += ["--data-urlencode", "CertAttrib=CertificateTemplate:" + template]
            rc, code, hdr, body, el = ca.curl("/certsrv/certfnsh.asp", *args, user=user, **kw)
            return rc, code, body.decode(errors="replace")

        def get(reqid, enc="b64"):
            rc, code, hdr, body, _ = ca.curl("/certsrv/certnew.cer?ReqID=%s&Enc=%s" % (reqid, enc), user=user)
            check(rc == 0 and code == 200, "certnew.cer %s: rc=%d HTTP %d" % (reqid, rc, code))
            return hdr, body

        def cert_of(reqid):
            hdr, body = get(reqid)
            check("application/pkix-cert" in hdr and body.startswith(b"-----BEGIN CERTIFICATE-----"),
                  "certnew.cer %s: not a certificate: %r" % (reqid, body[:200]))
            return write(ca.path("cert.pem"), body)

        ok, out = verify(ca, ca.tls)
        check(ok, "TLS server certificate: " + out)

        # Basic authentication on every certsrv path.
        for path in ("/certsrv/", "/certsrv/certfnsh.asp", "/certsrv/certnew.cer?ReqID=1&Enc=b64"):
            rc, code, hdr, *_ = ca.curl(path, auth=False)
            check(code == 401 and re.search(r"(?i)www-authenticate:\s*basic", hdr), "%s without auth: %d" % (path, code))
        rc, code, *_ = ca.curl("/certsrv/", user="CORP\\capf:wrong")
        check(code == 401, "wrong password: HTTP %d" % code)
        log("certsrv: authentication ok")

        # Issued: the page links certnew.cer?ReqID=n&; the download verifies.
        rc, code, page = submit()
        m = ISSUED_RE.search(page)
        check(code == 200 and m, "issued page: HTTP %d %s" % (code, page))
        check("certnew.cer?ReqID=%s&amp;Enc=b64" % m.group(1) in page, "no &amp; form in the page")
        check('certnew.cer?ReqID=%s&"' % m.group(1) in page, "no plain & form in the page")
        check_good(ca, cert_of(m.group(1)), key, "SEP001122334455")
        hdr, der = get(m.group(1), "bin")
        run(["openssl", "x509", "-inform", "DER", "-noout"], input=der)
        for style, want in (("amp", "&amp;"), ("plain", '&"')):
            ca.control(issued_link=style)
            rc, code, page = submit()
            m2 = ISSUED_RE.search(page)
            check(m2 and ("certnew.cer?ReqID=%s%s" % (m2.group(1), want)) in page, "issued_link %s: %s" % (style, page))
            check(style != "amp" or "&\"" not in page, "issued_link amp has a plain link")
        ca.control(issued_link="both")
        rc, code, hdr, body, _ = ca.curl("/certsrv/certnew.p7b?ReqID=CACert&Renewal=0&Enc=b64", user=user)
        pem = run(["openssl", "pkcs7", "-print_certs"], input=body).stdout
        chain = write(ca.path("chain.pem"), pem)
        check(x509(ca.root, "-fingerprint") == x509(chain, "-fingerprint"), "certnew.p7b CACert is not the root")
        rc, code, hdr, body, _ = ca.curl("/certsrv/certnew.p7b?ReqID=%s&Enc=b64" % m.group(1), user=user)
        pem = run(["openssl", "pkcs7", "-print_certs"], input=body).stdout
        check(pem.count(b"BEGIN CERTIFICATE") == 2, "certnew.p7b for the request: not cert + root")
        log("certsrv: issue ok")

        # Templates: a missing or other template is denied.
        rc, code, page = submit(template="WebServer")
        m = DENIED_RE.search(page)
        check(m and "0x80094800" in m.group(1), "other template: " + page)
        rc, code, page = submit(template=None)
        m = DENIED_RE.search(page)
        check(m and "0x80094801" in m.group(1), "no template: " + page)
        log("certsrv: templates ok")

        # Pending: Certificate Pending with a ReqID; polls give an error page, then the certificate.
        ca.control(mode="pending", pending_polls=2)
        rc, code, page = submit()
        m = PENDING_RE.search(page)
        check("Certificate Pending" in page and m and not ISSUED_RE.search(page), "pending page: " + page)
        rid = m.group(1)
        for i in range(2):
            hdr, body = get(rid)
            check(b"BEGIN CERTIFICATE" not in body and "text/html" in hdr, "pending poll %d gave a certificate" % i)
            check(DENIED_RE.search(body.decode()), "pending poll: no disposition: %r" % body)
        check_good(ca, cert_of(rid), key, "SEP001122334455")
        check_good(ca, cert_of(rid), key, "SEP001122334455")  # and again
        ca.control(pending_polls=-1)
        rc, code, page = submit()
        rid = PENDING_RE.search(page).group(1)
        for i in range(3):
            hdr, body = get(rid)
            check(b"BEGIN CERTIFICATE" not in body, "pending_polls -1 issued without approval")
        ca.control(approve=int(rid))
        check_good(ca, cert_of(rid), key, "SEP001122334455")
        hdr, body = get("99999")
        check(b"BEGIN CERTIFICATE" not in body and b"0x80092004" in body, "unknown ReqID: %r" % body)
        ca.control(pending_polls=1)
        log("certsrv: pending ok")

        # Denied: the disposition message; its ReqID gives no certificate.
        ca.control(mode="refuse", status=None, message="Denied by Policy Module: not an allowed phone")
        rc, code, page = submit()
        m = DENIED_RE.search(page)
        check(code == 200 and "Certificate Request Denied" in page and m, "denied page: " + page)
        check(m.group(1) == "Denied by Policy Module: not an allowed phone", "disposition: " + m.group(1))
        check(not ISSUED_RE.search(page) and not PENDING_RE.search(page), "denied page looks issued/pending")
        ca.control(status=503, message="Service Unavailable")
        rc, code, page = submit()
        check(code == 503, "refuse with status: HTTP %d" % code)
        log("certsrv: denied ok")

        # Stall and hangup.
        ca.control(mode="stall", stall_seconds=30)
        t0 = time.monotonic()
        rc, code, page = submit(max_time=2)
        el = time.monotonic() - t0
        check(rc == 28 and el < 6, "stall: curl rc=%d after %.1fs" % (rc, el))
        rc, code, *_ = ca.curl("/certsrv/certnew.p7b?ReqID=CACert&Enc=b64", user=user, max_time=2)
        check(rc == 0 and code == 200, "certnew.p7b stalled without stall_all")
        ca.control(stall_all=True)
        rc, *_ = ca.curl("/certsrv/certnew.p7b?ReqID=CACert&Enc=b64", user=user, max_time=2)
        check(rc == 28, "certnew.p7b with stall_all: curl rc=%d" % rc)
        ca.control(mode="hangup", stall_all=False)
        rc, code, page = submit()
        check(rc != 0 and code == 0, "hangup: rc=%d HTTP %d" % (rc, code))
        log("certsrv: stall and hangup ok")

        # Wrong certificates, issued at once and issued after pending.
        for mode in WRONG:
            ca.control(mode=mode)
            rc, code, page = submit()
            m = ISSUED_RE.search(page)
            check(m, "%s: no issued link: %s" % (mode, page))
            check_wrong(ca, mode, cert_of(m.group(1)), key, "SEP001122334455")
        ca.control(mode="pending", pending_polls=0)
        rc, code, page = submit()
        rid = PENDING_RE.search(page).group(1)
        ca.control(mode="wrong-ca")
        check_wrong(ca, "wrong-ca", cert_of(rid), key, "SEP001122334455")
        ca.control(mode="pending", pending_polls=1, after_pending="no-keyusage")
        rc, code, page = submit()
        rid = PENDING_RE.search(page).group(1)
        hdr, body = get(rid)
        check(b"BEGIN CERTIFICATE" not in body, "after_pending: first poll gave a certificate")
        check_wrong(ca, "no-keyusage", cert_of(rid), key, "SEP001122334455")
        ca.control(after_pending="issue")
        log("certsrv: wrong certificates ok")

        st = ca.control()
        results = [e.get("result") for e in st["log"]]
        for r in ("unauthorized", "issued", "pending", "still-pending", "denied", "denied-template", "stall",
                  "issued-expired", "certificate"):
            check(r in results, "control log lacks %s" % r)
        check(all("Mozilla" in e["user_agent"] for e in st["log"]), "user agent not logged")
        rc, code, _, body, _ = ca.curl("/control", "-X", "POST", "--data-binary", '{"mode": "nonsense"}', auth=False)
        check(code == 400, "bad control: HTTP %d" % code)
        rc, code, *_ = ca.curl("/control", "-X", "POST", "--data-binary", '{"after_pending": "refuse"}', auth=False)
        check(code == 400, "after_pending refuse accepted: HTTP %d" % code)
        t0 = time.monotonic()
        rc = ca.stop()
        check(rc == 0 and time.monotonic() - t0 < 5, "SIGTERM: rc=%s" % rc)
        log("certsrv: control and SIGTERM ok")
    finally:
        ca.stop()


def main():
    for tool in ("curl", "openssl"):
        if not shutil.which(tool):
            log("SKIP: %s not installed" % tool)
            return 77
    work = tempfile.mkdtemp(prefix="capstan-testca-")
    t0 = time.monotonic()
    try:
        test_est(work)
        test_certsrv(work)
    except TestFailure as e:
        log("FAIL: %s (scratch kept in %s)" % (e, work))
        return 1
    shutil.rmtree(work, ignore_errors=True)
    log("PASS test_test_cas (%.1fs)" % (time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
