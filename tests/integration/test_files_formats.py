#!/usr/bin/env python3
"""Phone files from the real server, checked against the spec
(docs/spec/file-formats.md) with code independent of capstan's parsers:

- ITLFile.tlv, ITLSEP<MAC>.tlv, SEP<MAC>.cnf.xml, SEP<MAC>.cnf.xml.sgn are
  the same bytes over HTTP, TFTP with curl (blksize 1428) and TFTP with a
  plain 512-byte client;
- the signed header equals the spec's encoding byte for byte and its
  signature verifies with `capstan cert export tftp`;
- ITL records: SAST first with the header's serial, TFTP and CAPF roles with
  the exported certificates;
- .cnf.xml: capfAuthMode (2 for null with an install, 0 with operation
  none), capfList with the CAPF port and host (and capf-host live), certHash
  empty, then md5 of the phone's LSC after a capstan-phone install;
- .sgn payload is the .cnf.xml;
- enc-config-digest sha512 switches the header HASH_ALGORITHM to 3 (service.c
  applies it to every signed file, not just .enc.sgn).
"""

import os
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from files_lib import *  # noqa: E402,F403

MAC = "001122334455"
DEV = "SEP" + MAC
IDLE = "SEP00AABBCCDDEE"


def fetch_all(srv, name):
    """The file over HTTP and two TFTP clients; all must be equal."""
    via_http = http_get(srv.http_port, name)
    via_curl = tftp_fetch(srv.tftp_port, name, blksize=1428)
    via_plain, oack = tftp_get(srv.tftp_port, name)
    check(oack == {}, "options acknowledged though none were asked")
    check(via_http == via_curl, "%s: HTTP and curl TFTP bytes differ" % name)
    check(via_http == via_plain, "%s: HTTP and plain TFTP bytes differ" % name)
    check(len(via_http) > 0, "%s is empty" % name)
    return via_http


def check_cnf(xml, auth_mode, host, port, cert_hash):
    root = cnf_fields(xml)
    check(text_of(root, "capfAuthMode") == str(auth_mode),
          "capfAuthMode %r, expected %d" % (text_of(root, "capfAuthMode"), auth_mode))
    check(capf_list(root) == [(host, str(port))],
          "capfList %r, expected %r" % (capf_list(root), [(host, str(port))]))
    check(text_of(root, "certHash") == cert_hash,
          "certHash %r, expected %r" % (text_of(root, "certHash"), cert_hash))
    check(text_of(root, "encrConfig") in (None, "false"), "encrConfig set on a plain device")
    return root


def check_sgn(srv, tftp, name, xml, hash_alg, workdir=None):
    sgn = fetch_all(srv, name + ".sgn")
    h = verify_signed_file(sgn, tftp, name + ".sgn", "1.0")
    if workdir:
        cross_check(workdir, "sgn", sgn, name + ".sgn", tftp)
    check(h["hash_alg"] == hash_alg, "%s.sgn HASH_ALGORITHM %d, expected %d" % (name, h["hash_alg"], hash_alg))
    check(h["payload"] == xml, "%s.sgn payload is not %s" % (name, name))
    return h


def main():
    base, data = new_data_dir("capstan-files-formats-")
    try:
        cli(data, "device", "add", DEV, "--operation", "install", "--auth", "null", "--key", "rsa2048")
        cli(data, "device", "add", IDLE, "--operation", "none", "--auth", "null")
        tftp, capf = export_certs(data)
        with Server(data) as srv:
            host = "127.0.0.1"  # the CAPF listener address (no capf-host set)

            # ITLs
            for name in ("ITLFile.tlv", "ITL%s.tlv" % DEV):
                itl = fetch_all(srv, name)
                h, roles = verify_itl(itl, tftp, capf, name)
                cross_check(base, "itl", itl, name, tftp)
                check(h["hash_alg"] == HASH_SHA1, "%s HASH_ALGORITHM %d by default" % (name, h["hash_alg"]))
                log("ok %s: %d bytes, roles %s" % (name, len(itl), [r for r, _ in roles]))

            # Configuration before enrollment
            xml = fetch_all(srv, DEV + ".cnf.xml")
            check_cnf(xml, 2, host, srv.capf_port, "")
            check_sgn(srv, tftp, DEV + ".cnf.xml", xml, HASH_SHA1, base)
            idle = fetch_all(srv, IDLE + ".cnf.xml")
            check_cnf(idle, 0, host, srv.capf_port, "")
            check_sgn(srv, tftp, IDLE + ".cnf.xml", idle, HASH_SHA1)
            log("ok configuration before enrollment")

            # The verifier has teeth: one flipped bit anywhere is caught.
            sgn = http_get(srv.http_port, DEV + ".cnf.xml.sgn")
            hl = parse_header(sgn)["header_length"]
            for at in (1, hl - 1 if sgn[hl - 1] == 0x0D else hl - 2, hl + 5, len(sgn) - 1):
                bad = bytearray(sgn)
                bad[at] ^= 0x01
                try:
                    verify_signed_file(bytes(bad), tftp, DEV + ".cnf.xml.sgn", "1.0")
                except (TestFailure, ValueError, IndexError, struct.error):
                    continue
                raise TestFailure("a flipped bit at %d went unnoticed" % at)

            # Unknown devices are not found on either transport.
            check(http_status(srv.http_port, "SEPFFFFFFFFFFFF.cnf.xml") == 404, "unknown device: not 404")
            try:
                tftp_get(srv.tftp_port, "SEPFFFFFFFFFFFF.cnf.xml.sgn")
                raise TestFailure("unknown device's .sgn served over TFTP")
            except TftpError as e:
                check(e.code == 1, "unknown device: TFTP error %d, expected 1" % e.code)

            # capf-host is live: the next download names it.
            cli(data, "config", "set", "capf-host", "capf.example.net")
            # Asking for the .sgn right away, before the server applies the
            # setting (within a second), must not pin the old file.
            wait_for(lambda: all([b"capf.example.net" in http_get(srv.http_port, DEV + n)
                                  for n in (".cnf.xml.sgn", ".cnf.xml")]),
                     "capf-host in the configuration and its .sgn", timeout=20)
            xml = fetch_all(srv, DEV + ".cnf.xml")
            check_cnf(xml, 2, "capf.example.net", srv.capf_port, "")
            check_sgn(srv, tftp, DEV + ".cnf.xml", xml, HASH_SHA1)
            log("ok capf-host capf.example.net")

            # Enrollment with the phone simulator.
            res, cert_path, key_path = run_phone(srv.capf_port, DEV, base)
            check(res["rc"] == 0 and res["result"] == "ok", "capstan-phone install failed: %r" % res)
            der = open(cert_path, "rb").read()
            want_hash = md5_hex(der)
            check(res.get("cert_md5") in (None, want_hash), "phone's cert_md5 differs from its file")
            shown = json_device(data, DEV)
            check(shown["md5hash"] == want_hash, "device show md5hash %r, expected %r" % (shown["md5hash"], want_hash))
            xml = fetch_all(srv, DEV + ".cnf.xml")
            # The install is done: operation none, so capfAuthMode 0.
            check(shown["operation"] == "none", "operation after install: %r" % shown["operation"])
            check_cnf(xml, 0, "capf.example.net", srv.capf_port, want_hash)
            check_sgn(srv, tftp, DEV + ".cnf.xml", xml, HASH_SHA1)
            log("ok certHash %s after install" % want_hash)

            # A new operation scheduled is visible on the next download.
            cli(data, "device", "set", DEV, "--operation", "install", "--auth", "lsc")
            xml = http_get(srv.http_port, DEV + ".cnf.xml")
            check_cnf(xml, 3, "capf.example.net", srv.capf_port, want_hash)
            log("ok capfAuthMode 3 for an install by LSC")

            # SHA-512 headers.
            cli(data, "config", "set", "enc-config-digest", "sha512")

            def sgn_is_sha512():
                d = http_get(srv.http_port, DEV + ".cnf.xml.sgn")
                return parse_header(d)["hash_alg"] == HASH_SHA512

            wait_for(sgn_is_sha512, "HASH_ALGORITHM 3 after enc-config-digest sha512", timeout=20)
            xml = fetch_all(srv, DEV + ".cnf.xml")
            check_sgn(srv, tftp, DEV + ".cnf.xml", xml, HASH_SHA512, base)
            for name in ("ITLFile.tlv", "ITL%s.tlv" % DEV):
                h, _ = verify_itl(fetch_all(srv, name), tftp, capf, name)
                check(h["hash_alg"] == HASH_SHA512, "%s HASH_ALGORITHM %d under sha512" % (name, h["hash_alg"]))
            log("ok SHA-512 signed headers")

            check(srv.alive(), "server not healthy at the end")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def json_device(data, name):
    import json

    return json.loads(cli(data, "device", "show", name, "--json"))


if __name__ == "__main__":
    run_main(main)
