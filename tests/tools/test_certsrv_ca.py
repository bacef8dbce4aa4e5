#!/usr/bin/env python3
"""A small imitation of Microsoft AD CS Web Enrollment ("certsrv") for
capstan's tests: a test aid, not a CA. Pages follow docs/spec/external-ca.md.

  POST /certsrv/certfnsh.asp   form: Mode=newreq, CertRequest=<PEM or base64
                               request>, CertAttrib=CertificateTemplate:<name>
                               (other fields accepted and ignored); answer: an
                               HTML disposition page:
                                 issued   links certnew.cer?ReqID=<n>& (as
                                          "&amp;Enc=b64" in an href and/or
                                          "&"+ in a script: issued_link)
                                 pending  "Certificate Pending" ...
                                          "Your Request Id is <n>."
                                 denied   The disposition message is "<text>"
  GET  /certsrv/certnew.cer?ReqID=<n>&Enc=b64   the certificate, PEM,
                               application/pkix-cert (Enc=bin: DER); for a
                               pending, denied or unknown request an HTML error
                               page (200, as IIS does); ReqID=CACert: the CA
  GET  /certsrv/certnew.p7b?ReqID=<n>|CACert&Enc=b64   chain, base64 PKCS#7
  GET  /certsrv/ , /certsrv/default.asp        a welcome page
  GET|POST /control            behaviours (testca_common.py); no authentication

Every /certsrv/ path needs Basic authentication (401 otherwise; --offer-ntlm
also offers Negotiate and NTLM). --template NAME: only that template is
accepted (others are denied with CERTSRV_E_UNSUPPORTED_CERT_TYPE); a request
without CertAttrib CertificateTemplate is denied as a real enterprise CA
does. Pending: the submission is pending; GET certnew.cer for its ReqID
answers the error page `pending_polls` times in all, then the certificate
(pending_polls < 0: only after POST /control {"approve": "all" | ReqID}),
issued as `after_pending` says, or as the current mode if it issues.
stall_all: stall (or hangup) certnew.cer and certnew.p7b too.

HTTPS on 127.0.0.1; prints {"port": N, ...} when ready; stops on SIGTERM.
"""

import html
import os
import sys
import threading
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testca_common as tc  # noqa: E402

from cryptography.hazmat.primitives import serialization  # noqa: E402

PAGE = """<HTML><Head>
<Meta HTTP-Equiv="Content-Type" Content="text/html; charset=UTF-8">
<Title>Microsoft Active Directory Certificate Services</Title>
</Head><Body BgColor=#FFFFFF>
<Font ID=locPageFont Face="Arial">
<Table Border=0 CellSpacing=0 CellPadding=4 Width=100%% BgColor=#008080>
<TR><TD><Font Color=#FFFFFF><LocID ID=locMSCertSrv><Font Face="Arial" Size=-1><B><I>Microsoft</I></B> Active Directory Certificate Services</Font></LocID> &nbsp;--&nbsp; test CA</Font></TD></TR>
</Table>
%s
</Font></Body></HTML>
"""

ISSUED = """<P ID=locPageTitle> <B> Certificate Issued </B>
<P ID=locInfo>The certificate you requested was issued to you.
%s
<Script Language="JavaScript">
    var sPKCS7 = "certnew.p7b?ReqID=%d&";
    function handleGetCert() {
        location = "certnew.cer?ReqID=%d&"+getEncoding();
    }
</Script>
"""

PENDING = """<P ID=locPageTitle> <B> Certificate Pending </B>
<P ID=locInfo>Your certificate request has been received. However, you must wait for an administrator to issue the certificate you requested.
<P ID=locReqID>Your Request Id is %d.
<P ID=locReturn>Please return to this web site in a day or two to retrieve your certificate.
"""

DENIED = """<P ID=locPageTitle> <B> Certificate Request Denied </B>
<P ID=locDenied>Your certificate request was denied.
<P ID=locInfo>Contact your administrator for further information.
<P>The disposition message is "%s".
"""

ERROR = """<P ID=locPageTitle> <B> Error </B>
<P ID=locInfo>An unexpected error has occurred: %s
<P>The disposition message is "%s".
"""

NO_TEMPLATE = (
    "Denied by Policy Module  0x80094801, The request does not contain a certificate template "
    "extension or the CertificateTemplate request attribute."
)
BAD_TEMPLATE = (
    "Denied by Policy Module  0x80094800, The requested certificate template is not supported "
    "by this CA."
)


class CertsrvHandler(tc.Handler):
    realm = "certsrv test CA"

    def page(self, inner, status=200):
        self.send(status, PAGE % inner, "text/html; charset=UTF-8")

    def route(self):
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        if not path.lower().startswith("/certsrv"):
            return self.send(404, "not found\n")
        body = self.body() if self.command == "POST" else b""
        if self.user() is None:
            return
        q = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        p = path.lower()
        if p in ("/certsrv", "/certsrv/", "/certsrv/default.asp"):
            self.record(result="welcome")
            return self.page("<P ID=locPageTitle> <B> Welcome </B>\n")
        if p == "/certsrv/certfnsh.asp" and self.command == "POST":
            return self.submit(body)
        if p in ("/certsrv/certnew.cer", "/certsrv/certnew.p7b"):
            s = self.server.state.snapshot()
            if s["mode"] == "stall" and s["stall_all"]:
                self.record(result="stall")
                self.stall()
            if s["mode"] == "hangup" and s["stall_all"]:
                self.record(result="hangup")
                return self.hangup()
        if p == "/certsrv/certnew.cer" and self.command in ("GET", "HEAD"):
            return self.retrieve(q)
        if p == "/certsrv/certnew.p7b" and self.command in ("GET", "HEAD"):
            return self.chain(q)
        return self.send(404, "not found\n")

    # -- submission ------------------------------------------------------
    def submit(self, body):
        s = self.server.state.snapshot()
        form = dict(urllib.parse.parse_qsl(body.decode("latin-1"), keep_blank_values=True))
        attrib = form.get("CertAttrib", "")
        template = None
        for line in attrib.replace("\r", "\n").split("\n"):
            k, _, v = line.partition(":")
            if k.strip().lower() == "certificatetemplate":
                template = v.strip()
        try:
            if form.get("Mode", "newreq") != "newreq":
                raise ValueError("unsupported Mode %r" % form.get("Mode"))
            csr = tc.load_csr(form.get("CertRequest", "").encode())
        except Exception as e:
            self.record(result="bad-request", error=str(e))
            return self.page(
                ERROR % (html.escape(str(e)), "Error Parsing Request  The request is invalid. 0x80092002")
            )
        subject = csr.subject.rfc4514_string()
        srv = self.server
        with srv.reqid_lock:
            srv.next_reqid += 1
            reqid = srv.next_reqid
        entry = {"reqid": reqid, "subject": subject, "template": template}
        if template is None or (srv.template is not None and template != srv.template):
            msg = NO_TEMPLATE if template is None else BAD_TEMPLATE
            srv.requests[reqid] = {"state": "denied", "message": msg}
            self.record(result="denied-template", **entry)
            return self.page(DENIED % html.escape(msg, quote=False))
        mode = s["mode"]
        if mode == "hangup":
            self.record(result="hangup", **entry)
            return self.hangup()
        if mode == "stall":
            self.record(result="stall", **entry)
            self.stall()
            mode = "issue"
        if mode == "refuse":
            if s["status"] not in (None, 200):
                self.record(result="refused", status=s["status"], **entry)
                return self.send(int(s["status"]), s["message"] + "\n")
            srv.requests[reqid] = {"state": "denied", "message": s["message"]}
            self.record(result="denied", **entry)
            return self.page(DENIED % html.escape(s["message"], quote=False))
        if mode == "pending":
            srv.requests[reqid] = {"state": "pending", "csr": csr}
            with srv.state.lock:  # polls are counted on retrieval
                srv.state.pending[reqid] = {"polls": 0, "approved": False}
            self.record(result="pending", **entry)
            return self.page(PENDING % reqid)
        self.issue_now(reqid, csr, mode, s)
        self.record(result="issued" if mode == "issue" else "issued-" + mode, serial=srv.requests[reqid]["serial"], **entry)
        link = s["issued_link"]
        parts = []
        if link in ("both", "amp"):
            parts.append(
                '<P><LocID ID=locDownloadCert3><A Href="certnew.cer?ReqID=%d&amp;Enc=b64">Download certificate</A></LocID>' % reqid
            )
            parts.append(
                '<P><LocID ID=locDownloadCertChain3><A Href="certnew.p7b?ReqID=%d&amp;Enc=b64">Download certificate chain</A></LocID>' % reqid
            )
        if link in ("both", "plain"):
            return self.page(ISSUED % ("\n".join(parts), reqid, reqid))
        return self.page(ISSUED.split("<Script")[0] % "\n".join(parts))

    def issue_now(self, reqid, csr, mode, s):
        cert = self.server.ca.issue(csr, mode, int(s["validity_days"]))
        self.server.requests[reqid] = {"state": "issued", "cert": cert, "serial": "%x" % cert.serial_number}

    # -- retrieval -------------------------------------------------------
    def error_page(self, what, disposition):
        self.page(ERROR % (html.escape(what), html.escape(disposition, quote=False)))

    def retrieve(self, q):
        srv = self.server
        s = srv.state.snapshot()
        rid = q.get("ReqID", "")
        enc = q.get("Enc", "bin").lower()
        if rid.lower() == "cacert":
            self.record(result="cacert")
            return self.cert_out(srv.ca.cert, enc)
        try:
            reqid = int(rid)
        except ValueError:
            self.record(result="bad-reqid")
            return self.error_page("bad ReqID %r" % rid, "The parameter is incorrect. 0x80070057")
        r = srv.requests.get(reqid)
        if r is None:
            self.record(result="unknown-reqid", reqid=reqid)
            return self.error_page(
                "request %d not found" % reqid, "Cannot find object or property. 0x80092004 (-2146885628 CRYPT_E_NOT_FOUND)"
            )
        if r["state"] == "pending":
            if srv.state.pending_step(reqid, int(s["pending_polls"])):
                # Issued as after_pending says, or as the mode set meanwhile if
                # it is one that issues (issue or wrong-*).
                mode = s["mode"] if s["mode"] in tc.ISSUING_MODES else s["after_pending"]
                self.issue_now(reqid, r["csr"], mode, s)
                r = srv.requests[reqid]
            else:
                self.record(result="still-pending", reqid=reqid)
                return self.error_page(
                    "request %d is pending" % reqid, "Taken Under Submission 0x80094003 (CERTSRV_E_REQUEST_PENDING)"
                )
        if r["state"] == "denied":
            self.record(result="denied", reqid=reqid)
            return self.error_page("request %d was denied" % reqid, r["message"])
        self.record(result="certificate", reqid=reqid, serial=r["serial"])
        return self.cert_out(r["cert"], enc)

    def cert_out(self, cert, enc):
        if enc == "b64":
            return self.send(200, tc.pem(cert), "application/pkix-cert")
        return self.send(200, cert.public_bytes(serialization.Encoding.DER), "application/pkix-cert")

    def chain(self, q):
        srv = self.server
        s = srv.state.snapshot()
        rid = q.get("ReqID", "")
        certs = list(srv.ca.chain)
        if rid.lower() != "cacert":
            try:
                r = srv.requests.get(int(rid))
            except ValueError:
                r = None
            if r is None or r["state"] != "issued":
                self.record(result="chain-not-issued")
                return self.error_page("request %s has no certificate" % rid, "Cannot find object or property. 0x80092004")
            certs = [r["cert"]] + certs
        self.record(result="chain", reqid=rid)
        der = tc.p7_certs_only(certs)
        if q.get("Enc", "bin").lower() == "b64":
            body = b"-----BEGIN PKCS7-----\n" + tc.b64(der, True) + b"-----END PKCS7-----\n"
            return self.send(200, body, "application/x-pkcs7-certificates")
        return self.send(200, der, "application/x-pkcs7-certificates")


def main():
    ap = tc.common_args("A small Microsoft AD CS Web Enrollment (certsrv) test CA.")
    ap.add_argument("--template", help="accept only this certificate template")
    args = ap.parse_args()
    tc.Server.template = args.template
    tc.Server.next_reqid = 0
    tc.Server.requests = {}
    tc.Server.reqid_lock = threading.Lock()
    return tc.serve("certsrv test CA", CertsrvHandler, args, extra_ready={"certsrv_base": "/certsrv/"})


if __name__ == "__main__":
    sys.exit(main())
