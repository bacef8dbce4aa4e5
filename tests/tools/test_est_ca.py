#!/usr/bin/env python3
"""A small EST server (RFC 7030) for capstan's tests: a test aid, not a CA.

  GET  /.well-known/est[/LABEL]/cacerts        CA chain, base64 PKCS#7 certs-only
                                               (no authentication, as RFC 7030)
  POST /.well-known/est[/LABEL]/simpleenroll   body: base64 DER PKCS#10 (PEM and
  POST /.well-known/est[/LABEL]/simplereenroll raw DER accepted too),
                                               Content-Type application/pkcs10;
                                               Basic auth; answer: base64 PKCS#7
                                               certs-only with the certificate
  GET|POST /control                            behaviours (see testca_common.py);
                                               JSON; no authentication

--label L restricts the label to L (other labels and no label: 404);
without it any label or none is accepted. HTTPS on 127.0.0.1, its own server
certificate from its CA. Prints {"port": N, "url": ...} on stdout when
ready; stops on SIGTERM.

Pending: the answer is 202 with Retry-After (seconds, or an HTTP date with
retry_after_date); the same CSR (same DER) sent again is answered 202
`pending_polls` times in all, then issued as `after_pending` says.
stall_all: stall (or hang up) cacerts too. chain: the enroll answer holds
the CA chain too (a PKCS#7 SET: no order is promised). cte/wrap: send
Content-Transfer-Encoding: base64 / break base64 into 64-column lines.
"""

import email.utils
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testca_common as tc  # noqa: E402

PREFIX = "/.well-known/est/"
P7_CT = "application/pkcs7-mime; smime-type=certs-only"


class EstHandler(tc.Handler):
    realm = "EST test CA"

    def route(self):
        path = self.path.split("?", 1)[0]
        if not path.startswith(PREFIX):
            return self.send(404, "not found\n")
        parts = path[len(PREFIX) :].split("/")
        if len(parts) == 2:
            label, op = parts
        elif len(parts) == 1:
            label, op = None, parts[0]
        else:
            return self.send(404, "not found\n")
        want = self.server.label
        if want is not None and label != want:
            self.record(result="bad-label", label=label)
            return self.send(404, "unknown EST label %r\n" % label)
        st = self.server.state
        s = st.snapshot()
        if op == "cacerts" and self.command in ("GET", "HEAD"):
            if s["mode"] == "stall" and s["stall_all"]:
                self.stall()
            if s["mode"] == "hangup" and s["stall_all"]:
                return self.hangup()
            self.record(result="cacerts", label=label)
            return self.p7(tc.p7_certs_only(self.server.ca.chain), s)
        if op in ("simpleenroll", "simplereenroll") and self.command == "POST":
            return self.enroll(label, s)
        return self.send(405 if op in ("cacerts", "simpleenroll", "simplereenroll") else 404, "not supported\n")

    def p7(self, der, s):
        hdrs = [("Content-Transfer-Encoding", "base64")] if s["cte"] else []
        self.send(200, tc.b64(der, s["wrap"]), P7_CT, hdrs)

    def enroll(self, label, s):
        body = self.body()
        user = self.user()
        if user is None:
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/pkcs10":
            self.record(result="bad-content-type", label=label)
            return self.send(415, "Content-Type must be application/pkcs10\n")
        try:
            csr = tc.load_csr(body)
        except Exception as e:
            self.record(result="bad-request", label=label, error=str(e))
            return self.send(400, "malformed PKCS#10 request: %s\n" % e)
        mode = s["mode"]
        subject = csr.subject.rfc4514_string()
        if mode == "hangup":
            self.record(result="hangup", label=label, subject=subject)
            return self.hangup()
        if mode == "stall":
            self.record(result="stall", label=label, subject=subject)
            self.stall()
            mode = "issue"
        if mode == "refuse":
            status = s["status"] or 403
            self.record(result="refused", label=label, subject=subject, status=status)
            return self.send(status, s["message"] + "\n")
        if mode == "pending":
            if not self.server.state.pending_step(tc.csr_id(csr), int(s["pending_polls"])):
                ra = str(int(s["retry_after"]))
                if s["retry_after_date"]:
                    ra = email.utils.formatdate(time.time() + int(s["retry_after"]), usegmt=True)
                self.record(result="pending", label=label, subject=subject, csr_id=tc.csr_id(csr))
                return self.send(202, "request pending\n", headers=[("Retry-After", ra)])
            mode = s["after_pending"]
        cert = self.server.ca.issue(csr, mode, int(s["validity_days"]))
        self.record(
            result="issued" if mode == "issue" else "issued-" + mode,
            label=label,
            subject=subject,
            serial="%x" % cert.serial_number,
        )
        certs = [cert] + (list(self.server.ca.chain) if s["chain"] else [])
        self.p7(tc.p7_certs_only(certs), s)


def main():
    ap = tc.common_args("A small EST (RFC 7030) test CA.")
    ap.add_argument("--label", help="accept only this EST label")
    args = ap.parse_args()

    tc.Server.label = args.label
    return tc.serve("EST test CA", EstHandler, args, extra_ready={"est_base": "/.well-known/est/" + (args.label + "/" if args.label else "")})


if __name__ == "__main__":
    sys.exit(main())
