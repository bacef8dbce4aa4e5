#!/usr/bin/env python3
"""An encrypted-configuration device whose phone has an EC key can never get
its .enc.sgn; file-formats.md: "the server must say so clearly (log, status,
metrics) instead of serving a file the phone cannot read". Log and metrics
are covered by test_files_encrypted.py; this test asks the operator's view:
`capstan device show` (text and --json) must say why, beyond repeating the
key type and the encrypted-config flag.
"""

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from files_lib import *  # noqa: E402,F403

EC = "SEP00112233EC02"
WORDS = ("rsa", "encrypt")


def strings(obj, skip=("name", "key")):
    """Every string value in a JSON document, with its key."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in skip:
                continue
            if isinstance(v, str):
                yield k, v
            else:
                yield from strings(v, skip)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v, skip)


def main():
    base, data = new_data_dir("capstan-files-encst-")
    try:
        cli(data, "device", "add", EC, "--operation", "install", "--auth", "null", "--key", "ec256",
            "--encrypted-config", "on")
        with Server(data) as srv:
            res, _, _ = run_phone(srv.capf_port, EC, base)
            check(res["rc"] == 0 and res["result"] == "ok", "capstan-phone EC install failed: %r" % res)
            check(http_status(srv.http_port, EC + ".cnf.xml.enc.sgn") == 404, ".enc.sgn served to an EC phone")
            doc = json.loads(cli(data, "device", "show", EC, "--json"))
            said = [(k, v) for k, v in strings(doc) if any(w in v.lower() for w in WORDS)]
            text = cli(data, "device", "show", EC)
            lines = [l for l in text.splitlines()
                     if any(w in l.lower() for w in WORDS)
                     and not l.startswith(("key:", "encrypted config:"))]
            log("device show --json: %s" % json.dumps(doc))
            check(said, "`device show --json` does not say why %s gets no encrypted configuration "
                        "(EC key); expected a string mentioning RSA/encryption, e.g. the server's "
                        "reason \"phone key is EC: encrypted configuration needs an RSA key\"" % EC)
            check(lines, "`device show` (text) does not say why %s gets no encrypted configuration" % EC)
            log("ok device show says: %s" % said)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
