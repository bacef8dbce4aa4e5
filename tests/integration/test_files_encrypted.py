#!/usr/bin/env python3
"""Encrypted configuration end to end (spec: file-formats.md, R15):

1. A device with --encrypted-config on and no certificate gets the partial
   configuration as .cnf.xml.sgn (fullConfig false, certHash empty,
   encrConfig true, capfList present, nothing else of the full file); the
   .enc.sgn is not found and the plain .cnf.xml is refused, on HTTP and TFTP.
2. capstan-phone installs an LSC (key and certificate saved). Then the
   .sgn carries certHash = md5(LSC DER), the .enc.sgn downloads, its header
   is the spec's byte for byte, its signature verifies with the TFTP
   certificate, and it decrypts with the phone's private key (PKCS#1 v1.5
   unwrap, AES-128-CBC, 0x0D padding as ENCRYPTION_PADDING says,
   ENCRYPTION_HASH SHA-1) to exactly the full configuration: the plain
   .cnf.xml the same device gets once encryption is switched off, with
   encrConfig true.
3. enc-config-digest sha512: ENCRYPTION_HASH_ALGORITHM 3 and a SHA-512 hash.
4. An EC device (ec256) after its install gets no .enc.sgn; the server says
   why in its log and metrics.
5. capstan_files_*, capstan_tftp_* and capstan_http_files_* metrics count
   the requests made.
"""

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from files_lib import *  # noqa: E402,F403

ENC = "SEP0011223344EE"
EC = "SEP00112233EC01"
PARTIAL_ALLOWED = {"fullConfig", "ipAddressMode", "loadInformation", "capfAuthMode", "capfList",
                   "certHash", "encrConfig"}


def both(srv, name):
    """Bytes over HTTP and TFTP (curl, blksize 1428); must be equal."""
    a = http_get(srv.http_port, name)
    b = tftp_fetch(srv.tftp_port, name)
    check(a == b, "%s differs between HTTP and TFTP" % name)
    return a


def not_served(srv, name, tftp_codes):
    """HTTP 404 and a TFTP error with one of |tftp_codes|; never the file."""
    st, _, body = http_request(srv.http_port, "GET", "/" + name)
    check(st == 404, "%s: HTTP %d, expected 404" % (name, st))
    check(b"<device" not in body, "%s: HTTP body carries a configuration" % name)
    try:
        data, _ = tftp_get(srv.tftp_port, name)
    except TftpError as e:
        check(e.code in tftp_codes, "%s: TFTP error %d, expected %s" % (name, e.code, tftp_codes))
        return e.code
    raise TestFailure("%s served over TFTP (%d bytes)" % (name, len(data)))


def check_partial(xml, auth_mode, host, port, cert_hash):
    root = cnf_fields(xml)
    names = [c.tag for c in root]
    check(set(names) <= PARTIAL_ALLOWED, "partial configuration has %s" % (set(names) - PARTIAL_ALLOWED))
    check(len(names) == len(set(names)), "partial configuration repeats an element: %s" % names)
    check(text_of(root, "fullConfig") == "false", "fullConfig is %r" % text_of(root, "fullConfig"))
    check(text_of(root, "encrConfig") == "true", "encrConfig is %r" % text_of(root, "encrConfig"))
    check(text_of(root, "certHash") == cert_hash, "certHash %r, expected %r" % (text_of(root, "certHash"), cert_hash))
    check(text_of(root, "capfAuthMode") == str(auth_mode), "capfAuthMode %r" % text_of(root, "capfAuthMode"))
    check(capf_list(root) == [(host, str(port))], "capfList %r" % capf_list(root))
    return root


def show(data, name):
    return json.loads(cli(data, "device", "show", name, "--json"))


def main():
    base, data = new_data_dir("capstan-files-enc-")
    try:
        cli(data, "device", "add", ENC, "--operation", "install", "--auth", "null", "--key", "rsa2048",
            "--encrypted-config", "on")
        cli(data, "device", "add", EC, "--operation", "install", "--auth", "null", "--key", "ec256",
            "--encrypted-config", "on")
        tftp, _ = export_certs(data)
        with Server(data) as srv:
            host, port = "127.0.0.1", srv.capf_port
            m0 = srv.metrics()

            # 1. Before enrollment.
            sgn = both(srv, ENC + ".cnf.xml.sgn")
            h = verify_signed_file(sgn, tftp, ENC + ".cnf.xml.sgn", "1.0")
            check_partial(h["payload"], 2, host, port, "")
            not_served(srv, ENC + ".cnf.xml.enc.sgn", (1,))
            denied_code = not_served(srv, ENC + ".cnf.xml", (1, 2))
            log("ok before enrollment: partial .sgn, no .enc.sgn, plain refused (TFTP error %d)" % denied_code)
            m1 = srv.metrics()
            d = metric(m1, "capstan_files_enc_config_unavailable_total", reason="no_certificate") - \
                metric(m0, "capstan_files_enc_config_unavailable_total", reason="no_certificate")
            check(d == 2, "enc_config_unavailable{no_certificate} grew by %g, expected 2" % d)
            check("event=enc_config_unavailable device=%s" % ENC in srv.log_text(), "no log line for the missing .enc.sgn")

            # 2. Enrollment, then the encrypted configuration.
            res, cert_path, key_path = run_phone(srv.capf_port, ENC, base)
            check(res["rc"] == 0 and res["result"] == "ok", "capstan-phone install failed: %r" % res)
            lsc = open(cert_path, "rb").read()
            want_hash = md5_hex(lsc)
            check(show(data, ENC)["md5hash"] == want_hash, "device show md5hash is not the LSC's")
            sgn = both(srv, ENC + ".cnf.xml.sgn")
            h = verify_signed_file(sgn, tftp, ENC + ".cnf.xml.sgn", "1.0")
            partial = check_partial(h["payload"], 0, host, port, want_hash)
            not_served(srv, ENC + ".cnf.xml", (1, 2))

            enc = both(srv, ENC + ".cnf.xml.enc.sgn")
            h = verify_signed_file(enc, tftp, ENC + ".cnf.xml.enc.sgn", "2.0")
            check(h["hash_alg"] == HASH_SHA1, "header HASH_ALGORITHM %d by default" % h["hash_alg"])
            check(h["enc_hash_alg"] == HASH_SHA1, "ENCRYPTION_HASH_ALGORITHM %d by default" % h["enc_hash_alg"])
            key = load_der_key(key_path)
            conf, npad = decrypt_enc(h, key)
            cross_check(base, "enc", enc, ENC + ".cnf.xml.enc.sgn", tftp, ("--phone-key", key_path, "--enc-hash", "sha1"))
            full = cnf_fields(conf)
            check(text_of(full, "encrConfig") == "true", "full configuration: encrConfig %r" % text_of(full, "encrConfig"))
            check(text_of(full, "fullConfig") in (None, "true"), "full configuration says fullConfig false")
            check(text_of(full, "certHash") == want_hash, "full configuration certHash differs")
            for tag in ("capfAuthMode", "ipAddressMode", "loadInformation"):
                check(text_of(full, tag) == text_of(partial, tag), "%s differs between partial and full" % tag)
            check(capf_list(full) == capf_list(partial), "capfList differs between partial and full")
            log("ok .enc.sgn: %d-byte configuration, %d bytes of padding" % (len(conf), npad))

            # The same device unencrypted: its plain file is the same document.
            cli(data, "device", "set", ENC, "--encrypted-config", "off")
            plain = http_get(srv.http_port, ENC + ".cnf.xml")
            check(plain.count(b"<encrConfig>false</encrConfig>") == 1, "plain file has no encrConfig false")
            check(plain.replace(b"<encrConfig>false</encrConfig>", b"<encrConfig>true</encrConfig>") == conf,
                  "the decrypted configuration is not the device's full configuration")
            not_served(srv, ENC + ".cnf.xml.enc.sgn", (1,))
            cli(data, "device", "set", ENC, "--encrypted-config", "on")
            not_served(srv, ENC + ".cnf.xml", (1, 2))
            log("ok decrypted configuration equals the full configuration")

            # 3. SHA-512.
            cli(data, "config", "set", "enc-config-digest", "sha512")

            def enc512():
                return parse_header(http_get(srv.http_port, ENC + ".cnf.xml.enc.sgn"))["enc_hash_alg"] == HASH_SHA512

            wait_for(enc512, "ENCRYPTION_HASH_ALGORITHM 3", timeout=20)
            enc = both(srv, ENC + ".cnf.xml.enc.sgn")
            h = verify_signed_file(enc, tftp, ENC + ".cnf.xml.enc.sgn", "2.0")
            check(h["hash_alg"] == HASH_SHA512, "header HASH_ALGORITHM %d under sha512" % h["hash_alg"])
            check(len(h["enc_hash"]) == 64, "SHA-512 ENCRYPTION_HASH is %d bytes" % len(h["enc_hash"]))
            conf512, _ = decrypt_enc(h, key)
            cross_check(base, "enc", enc, ENC + ".cnf.xml.enc.sgn", tftp, ("--phone-key", key_path, "--enc-hash", "sha512"))
            check(conf512 == conf, "SHA-512 file decrypts to a different configuration")
            log("ok SHA-512 encrypted configuration")

            # A new LSC (new key) is visible in the next download: the file is
            # wrapped for the new key only and the hash follows.
            cli(data, "device", "set", ENC, "--operation", "install", "--auth", "null")
            again = os.path.join(base, "again")
            os.makedirs(again)
            res, cert2, key2_path = run_phone(srv.capf_port, ENC, again)
            check(res["rc"] == 0 and res["result"] == "ok", "second install failed: %r" % res)
            hash2 = md5_hex(open(cert2, "rb").read())
            check(hash2 != want_hash, "the second install returned the same certificate")
            h = verify_signed_file(both(srv, ENC + ".cnf.xml.sgn"), tftp, ENC + ".cnf.xml.sgn", "1.0")
            check_partial(h["payload"], 0, host, port, hash2)
            h = verify_signed_file(both(srv, ENC + ".cnf.xml.enc.sgn"), tftp, ENC + ".cnf.xml.enc.sgn", "2.0")
            conf2, _ = decrypt_enc(h, load_der_key(key2_path))
            check(text_of(cnf_fields(conf2), "certHash") == hash2, "new .enc.sgn carries the old certHash")
            try:
                decrypt_enc(h, key)
                stale = True
            except TestFailure:
                stale = False
            check(not stale, "the new .enc.sgn still decrypts with the old phone key")
            log("ok new LSC: .sgn and .enc.sgn follow it")

            # 4. EC device.
            res, ec_cert, _ = run_phone(srv.capf_port, EC, base)
            check(res["rc"] == 0 and res["result"] == "ok", "capstan-phone EC install failed: %r" % res)
            ec_hash = md5_hex(open(ec_cert, "rb").read())
            m2 = srv.metrics()
            not_served(srv, EC + ".cnf.xml.enc.sgn", (1,))
            m3 = srv.metrics()
            d = metric(m3, "capstan_files_enc_config_unavailable_total", reason="key_not_rsa") - \
                metric(m2, "capstan_files_enc_config_unavailable_total", reason="key_not_rsa")
            check(d == 2, "enc_config_unavailable{key_not_rsa} grew by %g, expected 2" % d)
            check(re.search(r"event=enc_config_unavailable device=%s reason=\"[^\"]+\"" % EC, srv.log_text()),
                  "no log line saying why the EC device gets no .enc.sgn")
            sgn = both(srv, EC + ".cnf.xml.sgn")
            h = verify_signed_file(sgn, tftp, EC + ".cnf.xml.sgn", "1.0")
            # The issue: a device whose certificate is EC (or unknown) gets the
            # partial file with an EMPTY certHash, so it does not look ready.
            check_partial(h["payload"], 0, host, port, "")
            check(ec_hash != "", "EC phone saved no certificate")
            not_served(srv, EC + ".cnf.xml", (1, 2))
            log("ok EC device: no .enc.sgn, log and metrics say why")

            # 5. Metrics reflect what was asked.
            m4 = srv.metrics()

            def grew(name, **labels):
                return metric(m4, name, **labels) - metric(m0, name, **labels)

            check(grew("capstan_files_builds_total", kind="cnf_enc_sgn") >= 2, "no cnf_enc_sgn builds counted")
            check(grew("capstan_files_builds_total", kind="cnf_sgn") >= 2, "no cnf_sgn builds counted")
            check(grew("capstan_files_cache_hits_total", kind="cnf_enc_sgn") >= 1, "no cnf_enc_sgn cache hits")
            check(grew("capstan_http_files_requests_total", kind="cnf_enc_sgn", result="ok") >= 3,
                  "HTTP cnf_enc_sgn ok requests not counted")
            check(grew("capstan_http_files_requests_total", kind="cnf_enc_sgn", result="not_found") >= 3,
                  "HTTP cnf_enc_sgn not_found not counted")
            check(grew("capstan_http_files_requests_total", kind="cnf", result="denied") >= 3,
                  "HTTP plain cnf refusals not counted as denied")
            check(grew("capstan_tftp_requests_total", kind="cnf_enc_sgn") >= 5, "TFTP cnf_enc_sgn requests not counted")
            wait_for(lambda: metric(srv.metrics(), "capstan_tftp_transfers_total", kind="cnf_enc_sgn", result="ok")
                     - metric(m0, "capstan_tftp_transfers_total", kind="cnf_enc_sgn", result="ok") >= 2,
                     "TFTP cnf_enc_sgn transfers counted ok")
            check(grew("capstan_tftp_transfers_total", kind="cnf_enc_sgn", result="not_found") >= 3,
                  "TFTP cnf_enc_sgn not_found not counted")
            check(grew("capstan_tftp_bytes_sent_total", kind="cnf_enc_sgn") >= 2 * len(enc) - 4096,
                  "TFTP bytes for cnf_enc_sgn not counted")
            log("ok metrics")
            check(srv.alive(), "server not healthy at the end")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
