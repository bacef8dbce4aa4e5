#!/usr/bin/env python3
"""Independent verifier for the files capstan writes for phones.

Written from docs/spec/file-formats.md only: it shares no code with
capstan's C readers (core/files/). Python 3 standard library plus
python3-cryptography.

    verify_files.py sgn FILE --signer-cert CERT [--name NAME] [--content ORIG]
    verify_files.py itl FILE --signer-cert CERT [--name NAME]
                             [--expect ROLE:CERT ...] [--signer-version 1.0|1.1]
    verify_files.py enc FILE --signer-cert CERT --phone-key KEY [--name NAME]
                             [--plaintext ORIG] [--enc-hash sha1|sha512]

CERT and KEY may be PEM or DER. Exit status 0 when every check passes, 1
with "FAIL: reason" on stderr otherwise, 2 for bad usage.
"""

import argparse
import hashlib
import struct
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


# ---- certificates and keys ------------------------------------------------

def load_cert(path):
    data = open(path, "rb").read()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def load_key(path):
    data = open(path, "rb").read()
    if b"-----BEGIN" in data:
        return serialization.load_pem_private_key(data, password=None)
    return serialization.load_der_private_key(data, password=None)


def dn_string(name):
    """RFC 4514 attributes, comma-separated, in certificate order (the first
    RDN of the DER first), as the spec requires; not RFC 4514's reversed
    order."""
    return ",".join(rdn.rfc4514_string() for rdn in name.rdns)


def serial_bytes(cert):
    n = cert.serial_number
    check(n >= 0, "negative serial")
    if n == 0:
        return b"\x00"
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def public_key_field(cert):
    pk = cert.public_key()
    if isinstance(pk, rsa.RSAPublicKey):
        return pk.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    if isinstance(pk, ec.EllipticCurvePublicKey):
        return pk.public_bytes(serialization.Encoding.X962,
                               serialization.PublicFormat.UncompressedPoint)
    raise Fail("certificate key neither RSA nor EC")


# ---- TLV reading -----------------------------------------------------------

class Reader:
    def __init__(self, data, pos=0, end=None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def left(self):
        return self.end - self.pos

    def u8(self):
        check(self.left() >= 1, "truncated")
        v = self.data[self.pos]
        self.pos += 1
        return v

    def tlv_head(self, want):
        """Reads tag and u16 length; the tag must be |want|."""
        start = self.pos
        tag = self.u8()
        check(tag == want, "expected tag %d at offset %d, found %d" % (want, start, tag))
        check(self.left() >= 2, "truncated length of tag %d" % want)
        (n,) = struct.unpack(">H", self.data[self.pos:self.pos + 2])
        self.pos += 2
        check(self.left() >= n, "tag %d length %d runs past its end" % (want, n))
        return start, n

    def tlv(self, want, size=None):
        start, n = self.tlv_head(want)
        if size is not None:
            check(n == size, "tag %d has length %d, expected %d" % (want, n, size))
        v = self.data[self.pos:self.pos + n]
        self.pos += n
        return start, v

    def value(self, want, size=None):
        return self.tlv(want, size)[1]

    def string(self, want):
        v = self.value(want)
        check(len(v) >= 2 and v[-1] == 0 and 0 not in v[:-1],
              "tag %d is not a NUL-terminated string" % want)
        return v[:-1].decode("utf-8")


HASHES = {1: hashes.SHA1, 3: hashes.SHA512}
HASHLIB = {1: hashlib.sha1, 3: hashlib.sha512}


def parse_header(data):
    """Parses the signed header; returns a dict. Checks HEADER_LENGTH,
    containers and padding as the spec defines them."""
    h = {}
    r = Reader(data)
    ver = r.value(1, 2)
    h["version"] = (ver[0], ver[1])
    check(h["version"] in ((1, 0), (1, 2), (2, 0)), "unknown VERSION %r" % (h["version"],))
    (hl,) = struct.unpack(">H", r.value(2, 2))
    h["header_length"] = hl
    check(hl <= len(data), "HEADER_LENGTH past the end of the file")
    check(hl % 4 == 0, "HEADER_LENGTH %d is not a multiple of 4" % hl)
    r.end = hl
    if h["version"] == (1, 2):
        sv = r.value(28, 2)
        h["signer_version"] = (sv[0], sv[1])

    # Containers 3, 7, 9: the length covers the fields they hold, which
    # follow immediately.
    _, clen = r.tlv_head(3)
    c_end = r.pos + clen
    h["signer_name"] = r.string(4)
    h["issuer_name"] = r.string(6)
    h["serial"] = r.value(5)
    check(r.pos == c_end, "SIGNER_INFO length %d does not cover its fields" % clen)
    check(len(h["serial"]) >= 1 and (len(h["serial"]) == 1 or h["serial"][0] != 0),
          "SERIAL_NUMBER with a leading zero byte")

    _, clen = r.tlv_head(7)
    check(clen == 15, "SIGNATURE_INFO length %d, spec says 15" % clen)
    c_end = r.pos + clen
    h["hash_alg"] = r.value(8, 1)[0]
    _, alen = r.tlv_head(9)
    check(alen == 8, "SIGNATURE_ALGORITHM_INFO length %d, spec says 8" % alen)
    a_end = r.pos + alen
    check(r.value(10, 1)[0] == 0, "SIGNATURE_ALGORITHM not RSA")
    h["modulus"] = r.value(11, 1)[0]
    check(r.pos == a_end == c_end, "SIGNATURE_INFO containers do not end together")

    sig_off, sig = r.tlv(12)
    h["sig_offset"] = sig_off
    h["signature"] = sig
    h["filename"] = r.string(14)
    (h["timestamp"],) = struct.unpack(">I", r.value(15, 4))

    if h["version"] == (2, 0):
        # 16, 17, 21 carry the full length of what they hold.
        _, v16 = r.tlv(16)
        r16 = Reader(v16)
        _, v17 = r16.tlv(17)
        _, v21 = r16.tlv(21)
        check(r16.left() == 0, "ENCRYPTION_INFO holds more than 17 and 21")
        r17 = Reader(v17)
        check(r17.value(18, 1) == b"\x00", "field 18 is not 0")
        h["iv"] = r17.value(19, 16)
        (h["enc_padding"],) = struct.unpack(">H", r17.value(20, 2))
        check(r17.left() == 0, "ENCRYPTION_IV_INFO holds more than 18, 19, 20")
        r21 = Reader(v21)
        check(r21.value(22, 1) == b"\x00", "field 22 is not 0")
        (h["key_size"],) = struct.unpack(">H", r21.value(23, 2))
        check(r21.value(24, 1) == b"\x01", "ENCRYPTION_KEY_ALGORITHM is not 1")
        h["wrapped_key"] = r21.value(25)
        check(r21.left() == 0, "ENCRYPTION_KEY_INFO holds more than 22..25")
        check(h["key_size"] == 8 * len(h["wrapped_key"]),
              "ENCRYPTION_KEY_SIZE %d is not the wrapped key's %d bits"
              % (h["key_size"], 8 * len(h["wrapped_key"])))
        h["enc_hash_alg"] = r.value(26, 1)[0]
        h["enc_hash"] = r.value(27)

    pad = 0
    while r.left() > 0:
        check(r.u8() == 13, "non-PADDING byte at the end of the header")
        pad += 1
    check(pad <= 3, "%d PADDING bytes (at most 3 reach a multiple of 4)" % pad)
    h["padding"] = pad
    h["payload"] = data[hl:]
    return h


def verify_signed(data, h, signer, name):
    check(h["hash_alg"] in HASHES, "HASH_ALGORITHM %d not accepted" % h["hash_alg"])
    pk = signer.public_key()
    check(isinstance(pk, rsa.RSAPublicKey), "signer key is not RSA")
    codes = {512: 0, 1024: 1, 2048: 2, 4096: 3}
    check(codes.get(pk.key_size) == h["modulus"],
          "SIGNATURE_MODULUS %d for a %d-bit signer" % (h["modulus"], pk.key_size))
    check(len(h["signature"]) == pk.key_size // 8, "SIGNATURE is not modulus-sized")
    check(h["signer_name"] == dn_string(signer.subject),
          "SIGNER_NAME %r != %r" % (h["signer_name"], dn_string(signer.subject)))
    check(h["issuer_name"] == dn_string(signer.issuer),
          "ISSUER_NAME %r != %r" % (h["issuer_name"], dn_string(signer.issuer)))
    check(h["serial"] == serial_bytes(signer), "SERIAL_NUMBER is not the signer's")
    if name is not None:
        check(h["filename"] == name, "FILENAME %r, expected %r" % (h["filename"], name))
    off = h["sig_offset"]
    tbs = data[:off] + data[off + 3 + len(h["signature"]):]
    try:
        pk.verify(h["signature"], tbs, padding.PKCS1v15(), HASHES[h["hash_alg"]]())
    except Exception:
        raise Fail("signature does not verify")


# ---- commands --------------------------------------------------------------

def cmd_sgn(args, data):
    h = parse_header(data)
    check(h["version"] == (1, 0), "VERSION %r, .sgn files are 1.0" % (h["version"],))
    verify_signed(data, h, load_cert(args.signer_cert), args.name)
    check(h["filename"].endswith(".sgn"), "FILENAME does not end in .sgn")
    if args.content:
        check(h["payload"] == open(args.content, "rb").read(), "payload differs from the file")
    return "sgn %s: %d-byte header, %d-byte payload" % (h["filename"], h["header_length"],
                                                        len(h["payload"]))


ROLES = {"SAST": 0, "CCM": 1, "CCM+TFTP": 2, "TFTP": 3, "CAPF": 4, "APP": 7, "TVS": 21}


def parse_records(payload):
    recs = []
    r = Reader(payload)
    while r.left() > 0:
        start = r.pos
        (rl,) = struct.unpack(">H", r.value(1, 2))
        check(rl >= 5 and start + rl <= len(payload), "bad RECORD_LENGTH %d" % rl)
        rr = Reader(payload, r.pos, start + rl)
        fields = {}
        while rr.left() > 0:
            tag = rr.data[rr.pos]
            check(tag not in fields, "record field %d twice" % tag)
            check(2 <= tag <= 12, "unknown record field %d" % tag)
            fields[tag] = rr.value(tag)
        for t in (3, 4, 5, 6, 7, 8, 9):
            check(t in fields, "record misses field %d" % t)
        check(len(fields[4]) == 2, "ROLE is not a uint16")
        for t in (2, 3, 5):
            if t in fields:
                v = fields[t]
                check(len(v) >= 2 and v[-1] == 0 and 0 not in v[:-1],
                      "record field %d not NUL-terminated" % t)
        recs.append(fields)
        r.pos = start + rl
    return recs


def check_record(fields):
    cert = x509.load_der_x509_certificate(fields[9])
    check(fields[3][:-1].decode() == dn_string(cert.subject), "SUBJECT_NAME differs")
    check(fields[5][:-1].decode() == dn_string(cert.issuer), "ISSUER_NAME differs")
    check(fields[6] == serial_bytes(cert), "record SERIAL_NUMBER differs")
    check(fields[7] == public_key_field(cert), "PUBLIC_KEY differs")
    check(fields[8] == cert.signature, "record SIGNATURE differs")
    return cert


def cmd_itl(args, data):
    h = parse_header(data)
    check(h["version"] == (1, 2), "VERSION %r, ITL files are 1.2" % (h["version"],))
    check(h["signer_version"] in ((1, 0), (1, 1)), "SIGNER_VERSION %r" % (h["signer_version"],))
    if args.signer_version:
        want = tuple(int(x) for x in args.signer_version.split("."))
        check(h["signer_version"] == want, "SIGNER_VERSION %r" % (h["signer_version"],))
    signer = load_cert(args.signer_cert)
    verify_signed(data, h, signer, args.name)
    recs = parse_records(h["payload"])
    check(len(recs) >= 1, "no records")
    check(struct.unpack(">H", recs[0][4])[0] == 0, "first record is not SAST")
    check(recs[0][6] == h["serial"], "SAST serial differs from the header's")
    listed = []
    for f in recs:
        cert = check_record(f)
        listed.append((struct.unpack(">H", f[4])[0], cert.public_bytes(serialization.Encoding.DER)))
    check(listed[0][1] == signer.public_bytes(serialization.Encoding.DER),
          "SAST record is not the signer certificate")
    for exp in args.expect or []:
        role, path = exp.split(":", 1)
        want = (ROLES[role] if role in ROLES else int(role),
                load_cert(path).public_bytes(serialization.Encoding.DER))
        check(want in listed, "no record with role %s for %s" % (role, path))
    return "itl %s: %d records" % (h["filename"], len(recs))


def cmd_enc(args, data):
    h = parse_header(data)
    check(h["version"] == (2, 0), "VERSION %r, .enc.sgn files are 2.0" % (h["version"],))
    verify_signed(data, h, load_cert(args.signer_cert), args.name)
    check(h["filename"].endswith(".enc.sgn"), "FILENAME does not end in .enc.sgn")
    key = load_key(args.phone_key)
    check(isinstance(key, rsa.RSAPrivateKey), "phone key is not RSA")
    check(len(h["wrapped_key"]) == key.key_size // 8, "wrapped key not modulus-sized")
    try:
        aes = key.decrypt(h["wrapped_key"], padding.PKCS1v15())
    except Exception:
        raise Fail("cannot unwrap the AES key")
    check(len(aes) == 16, "unwrapped key is %d bytes, AES-128 needs 16" % len(aes))
    ct = h["payload"]
    check(len(ct) > 0 and len(ct) % 16 == 0, "payload is not whole AES blocks")
    d = Cipher(algorithms.AES(aes), modes.CBC(h["iv"])).decryptor()
    pt = d.update(ct) + d.finalize()
    n = h["enc_padding"]
    check(1 <= n <= 16, "ENCRYPTION_PADDING %d outside 1..16" % n)
    check(pt[-n:] == b"\r" * n, "padding is not %d carriage returns" % n)
    conf = pt[:-n]
    check(n == 16 - len(conf) % 16,
          "%d bytes of padding for %d bytes (a whole block when aligned)" % (n, len(conf)))
    check(h["enc_hash_alg"] in HASHLIB, "ENCRYPTION_HASH_ALGORITHM %d" % h["enc_hash_alg"])
    if args.enc_hash:
        check(h["enc_hash_alg"] == {"sha1": 1, "sha512": 3}[args.enc_hash],
              "ENCRYPTION_HASH_ALGORITHM %d" % h["enc_hash_alg"])
    check(HASHLIB[h["enc_hash_alg"]](conf).digest() == h["enc_hash"],
          "ENCRYPTION_HASH does not match the plaintext")
    if args.plaintext:
        check(conf == open(args.plaintext, "rb").read(), "plaintext differs from the original")
    return "enc %s: %d bytes of configuration, %d of padding" % (h["filename"], len(conf), n)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for c in ("sgn", "itl", "enc"):
        p = sub.add_parser(c)
        p.add_argument("file")
        p.add_argument("--signer-cert", required=True)
        p.add_argument("--name")
        if c == "sgn":
            p.add_argument("--content")
        if c == "itl":
            p.add_argument("--expect", action="append")
            p.add_argument("--signer-version")
        if c == "enc":
            p.add_argument("--phone-key", required=True)
            p.add_argument("--plaintext")
            p.add_argument("--enc-hash", choices=("sha1", "sha512"))
    args = ap.parse_args()
    data = open(args.file, "rb").read()
    try:
        msg = {"sgn": cmd_sgn, "itl": cmd_itl, "enc": cmd_enc}[args.cmd](args, data)
    except Fail as e:
        print("FAIL: %s: %s" % (args.file, e), file=sys.stderr)
        return 1
    except Exception as e:  # a malformed file may trip the libraries too
        print("FAIL: %s: %s: %s" % (args.file, type(e).__name__, e), file=sys.stderr)
        return 1
    print("OK: " + msg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
