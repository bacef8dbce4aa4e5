#!/usr/bin/env python3
"""A change made through one node reaches the other node's phone files
without a restart (issue 12).

Two nodes (HTTP and TFTP on) share one PostgreSQL database (a private
cluster of the test's own); each node caches the files it signs. Checked on
node B, within a bounded poll (a few seconds: B hears A's commits through
NOTIFY):

- a device enrolled on node A (capstan-phone): B's next SEP<MAC>.cnf.xml
  and .cnf.xml.sgn carry the new certHash (md5 of the phone's LSC), the
  .sgn's payload is the .cnf.xml and its signature verifies with the TFTP
  certificate; HTTP and TFTP agree;
- `capstan config set capf-host` through A's data directory: B's
  configuration names the new host;
- `capstan cert capf regenerate` through A's data directory: B's
  ITLFile.tlv lists the new CAPF certificate (and the previous one), and
  B's CAPF listener presents the new certificate;
- `capstan trust add` through A's data directory: B's `trust list` has it
  and B's CAPF listener trusts it (a phone authenticating with an LSC
  issued by that CA's key is accepted on B).

Environment: CAPSTAN_BIN, CAPSTAN_BUILD_DIR; CAPSTAN_SANITIZE=ON stretches
the bounds. Needs postgresql-15 (it starts its own cluster).
"""

import os
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_lib as c  # noqa: E402
import files_lib as fl  # noqa: E402
from cluster_lib import SLOW, TestFailure, check, log  # noqa: E402

MAC = "00AA11BB22CC"
DEV = "SEP" + MAC
BOUND = 180 * SLOW
POLL = 5  # seconds (x SLOW) for a change to reach the other node


def fetch(node, name):
    """The file over HTTP; TFTP must serve the same bytes."""
    body = fl.http_get(node.http_port, name)
    via_tftp, _ = fl.tftp_get(node.tftp_port, name, options={"blksize": 1428})
    check(via_tftp == body, "node %s: %s differs between HTTP and TFTP" % (node.name, name))
    return body


def poll(what, fn, bound=POLL):
    """Polls FN (returns a true value when done) every 0.1 s for at most
    BOUND s; returns its value and the time it took."""
    t0 = time.monotonic()
    deadline = t0 + bound * SLOW
    while True:
        v = fn()
        if v:
            return v, time.monotonic() - t0
        if time.monotonic() > deadline:
            raise TestFailure("%s: not seen within %.0f s" % (what, bound * SLOW))
        time.sleep(0.1)


def cert_hash(xml):
    return fl.text_of(fl.cnf_fields(xml), "certHash")


def capf_presented(port):
    """DER of the certificate B's CAPF listener presents."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW) as raw:
        with ctx.wrap_socket(raw) as s:
            return s.getpeercert(binary_form=True)


def itl_certs(data, tftp, capf_any):
    """DERs of the ITL's CAPF records (signature checked)."""
    h = fl.verify_signed_file(data, tftp, "ITLFile.tlv", "1.2")
    recs = fl.parse_itl_records(h["payload"])
    import struct

    return [f[9] for f in recs if struct.unpack(">H", f[4])[0] == fl.ROLE_CAPF]


def main():
    with c.Run("capstan-cluster-files-", BOUND) as run:
        base, failures = run.base, run.failures
        url, dirs, a, b = run.two_nodes("files", files=True)
        c.h.cli(dirs["a"], "device", "add", DEV, "--operation", "install", "--auth", "null", "--key", "rsa1024")
        nodes = run.nodes
        a.start()
        b.start()
        tftp, capf = fl.export_certs(dirs["b"])

        # Before: B serves the configuration without a certificate hash.
        xml = fetch(b, DEV + ".cnf.xml")
        check(cert_hash(xml) == "", "certHash %r before enrollment" % cert_hash(xml))
        sgn = fetch(b, DEV + ".cnf.xml.sgn")
        h = fl.verify_signed_file(sgn, tftp, DEV + ".cnf.xml.sgn", "1.0")
        check(h["payload"] == xml, "B's .sgn payload is not its .cnf.xml")
        itl_before = fetch(b, "ITLFile.tlv")
        log("node b serves %s without certHash" % DEV)

        # Enroll on A.
        res, cert_path, _key = fl.run_phone(a.capf_port, DEV, base, extra=["--key-cache", os.path.join(base, "keys")])
        check(res["rc"] == 0 and res.get("result") == "ok", "capstan-phone on node a: %r" % res)
        want = fl.md5_hex(open(cert_path, "rb").read())

        def new_sgn():
            d = fetch(b, DEV + ".cnf.xml.sgn")
            hh = fl.verify_signed_file(d, tftp, DEV + ".cnf.xml.sgn", "1.0")
            return hh if cert_hash(hh["payload"]) == want else None

        h, took = poll("node b's %s.cnf.xml.sgn with certHash %s" % (DEV, want), new_sgn)
        xml = fetch(b, DEV + ".cnf.xml")
        check(cert_hash(xml) == want, "B's .cnf.xml certHash %r, its .sgn has %s" % (cert_hash(xml), want))
        check(h["payload"] == xml, "B's .sgn payload is not its .cnf.xml after the enrollment")
        log("node b serves certHash %s %.2f s after the enrollment on node a" % (want, took))

        # A setting through A's data directory.
        c.h.cli(dirs["a"], "config", "set", "capf-host", "capf-cluster.example.net")
        _, took = poll("capf-host on node b",
                       lambda: fl.capf_list(fl.cnf_fields(fetch(b, DEV + ".cnf.xml")))
                       == [("capf-cluster.example.net", str(b.capf_port))])
        sgn = fetch(b, DEV + ".cnf.xml.sgn")
        check(b"capf-cluster.example.net" in sgn, "B's .sgn does not name the new capf-host")
        log("node b names capf-host %.2f s after config set through a" % took)

        # A new CAPF certificate through A's data directory.
        c.h.cli(dirs["a"], "cert", "capf", "regenerate", "--key", "ec256", timeout=120)
        new_capf = fl.der_of(fl.load_pem_cert(c.h.cli(dirs["a"], "cert", "export", "capf")))
        check(new_capf != fl.der_of(capf), "regenerate kept the CAPF certificate")
        roles, took = poll("the new CAPF certificate in node b's ITLFile.tlv",
                           lambda: (lambda l: l if new_capf in l else None)(itl_certs(fetch(b, "ITLFile.tlv"), tftp, None)))
        check(fl.der_of(capf) in roles, "B's ITL dropped the previous CAPF certificate")
        check(fetch(b, "ITLFile.tlv") != itl_before, "B's ITL unchanged")
        log("node b's ITL lists the new CAPF %.2f s after regenerate through a" % took)
        _, took = poll("node b's CAPF listener presenting the new certificate",
                       lambda: capf_presented(b.capf_port) == new_capf)
        log("node b's CAPF listener presents the new certificate after %.2f s" % took)

        # Trust through A's data directory reaches B.
        ca = os.path.join(base, "extra-ca.pem")
        import subprocess

        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "30", "-subj", "/CN=cluster-test-ca",
                        "-addext", "basicConstraints=critical,CA:TRUE",
                        "-addext", "keyUsage=critical,digitalSignature,keyCertSign", "-keyout", ca + ".key",
                        "-out", ca], check=True, capture_output=True, timeout=60)
        def anchors():
            """trust_anchors of B's last CAPF identity load, and how many loads."""
            loads = [l for l in b.log_text().splitlines() if "event=capf_identity_loaded" in l]
            import re

            m = re.search(r"trust_anchors=(\d+)", loads[-1]) if loads else None
            return (int(m.group(1)) if m else -1), len(loads)

        before, nloads = anchors()
        c.h.cli(dirs["a"], "trust", "add", ca, "--purpose", "capf-trust")
        listed = c.h.cli(dirs["b"], "trust", "list")
        check("cluster-test-ca" in listed, "B's trust list lacks the CA added through A: %s" % listed)
        _, took = poll("node b's CAPF listener trusting %d anchors (was %d)" % (before + 1, before),
                       lambda: anchors()[1] > nloads and anchors()[0] == before + 1)
        log("node b reloaded its CAPF trust %.2f s after trust add through a" % took)

        for n in nodes:
            n.stop()
    return c.report(run.failures, "cluster files: node a's changes reach node b's files without a restart")


if __name__ == "__main__":
    sys.exit(main())
