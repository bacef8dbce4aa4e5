#!/usr/bin/env python3
"""Certificate checks for the integration tests (Debian's python3-cryptography).

Subcommands (each exits 0 when every check holds, 1 with one line per failed
check otherwise):

  md5 FILE
      Prints the MD5 of FILE as 32 lower-case hex digits (a certificate's
      md5hash when FILE is its DER).
  check-lsc --cert LSC.der --capf CAPF.pem --name DEVICE --validity-days N
            --key SPEC [--private-key KEY.der] [--serial HEX]
      The LSC content of product.md R8, and that it is signed by the CAPF
      certificate.
  check-capf --cert CAPF.pem [--served FILE]
      The CAPF certificate content; with --served, the output of
      `openssl s_client -showcerts`, whose first certificate must be it.
  make-ca --out DIR --cn CN
      A test CA (manufacturing CA for MICs): DIR/ca.pem, DIR/ca.der,
      DIR/ca-key.der (PKCS#8).
  issue --ca DIR --cn CN --key SPEC --out-cert F.der --out-key F.der
      A certificate for CN signed by the CA in DIR, with a new key.
"""

import argparse
import datetime
import hashlib
import re
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

IPSEC_END_SYSTEM = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.5")
COPIED_ATTRS = [
    NameOID.ORGANIZATION_NAME,
    NameOID.ORGANIZATIONAL_UNIT_NAME,
    NameOID.LOCALITY_NAME,
    NameOID.STATE_OR_PROVINCE_NAME,
    NameOID.COUNTRY_NAME,
]


class Checks:
    """Collects failed checks so that one run reports all of them."""

    def __init__(self, what):
        self.what = what
        self.failed = []

    def check(self, cond, msg):
        if not cond:
            self.failed.append(msg)
        return cond

    def finish(self):
        for m in self.failed:
            print(f"{self.what}: {m}", file=sys.stderr)
        return 1 if self.failed else 0


def read(path):
    with open(path, "rb") as f:
        return f.read()


def load_cert(path):
    data = read(path)
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def parse_key_spec(spec):
    m = re.fullmatch(r"(rsa|ec)(\d+)", spec)
    if not m:
        raise SystemExit(f"bad key spec {spec}")
    return m.group(1), int(m.group(2))


EC_CURVES = {256: ec.SECP256R1, 384: ec.SECP384R1, 521: ec.SECP521R1}


def key_matches_spec(pub, spec):
    kind, bits = parse_key_spec(spec)
    if kind == "rsa":
        return isinstance(pub, rsa.RSAPublicKey) and pub.key_size == bits
    return isinstance(pub, ec.EllipticCurvePublicKey) and isinstance(pub.curve, EC_CURVES[bits])


def spki(pub):
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def not_before(cert):
    v = getattr(cert, "not_valid_before_utc", None)
    return v if v is not None else cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)


def not_after(cert):
    v = getattr(cert, "not_valid_after_utc", None)
    return v if v is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def verify_signed_by(cert, issuer):
    """Raises unless |issuer|'s key made |cert|'s signature (cryptography 38
    has no verify_directly_issued_by)."""
    pub = issuer.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        pub.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                   cert.signature_hash_algorithm)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    else:
        raise ValueError(f"unsupported issuer key {type(pub)}")


def ext(cert, cls):
    try:
        return cert.extensions.get_extension_for_class(cls)
    except x509.ExtensionNotFound:
        return None


def serial_der_len(cert):
    """Length of the serial's INTEGER content octets in the DER."""
    tbs = cert.tbs_certificate_bytes
    # TBSCertificate ::= SEQUENCE { [0] version, serialNumber INTEGER, ... }
    i = 1
    i += 1 + (tbs[i] & 0x7F if tbs[i] & 0x80 else 0)  # skip SEQUENCE length
    if tbs[i] == 0xA0:  # version
        i += 2 + tbs[i + 1]
    if tbs[i] != 0x02:
        return -1
    return tbs[i + 1]


def cmd_md5(args):
    print(hashlib.md5(read(args.file)).hexdigest())
    return 0


def cmd_check_lsc(args):
    c = Checks(f"LSC {args.cert}")
    der = read(args.cert)
    cert = x509.load_der_x509_certificate(der)
    capf = load_cert(args.capf)
    now = datetime.datetime.now(datetime.timezone.utc)

    # Subject: CN = device name, plus O/OU/L/ST/C of the CAPF certificate.
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    c.check([a.value for a in cns] == [args.name], f"subject CN {[a.value for a in cns]} != {args.name}")
    for oid in COPIED_ATTRS:
        want = [a.value for a in capf.subject.get_attributes_for_oid(oid)]
        got = [a.value for a in cert.subject.get_attributes_for_oid(oid)]
        c.check(want == got, f"subject {oid._name}: {got}, CAPF has {want}")
    c.check(cert.issuer == capf.subject, f"issuer {cert.issuer.rfc4514_string()} != CAPF subject")

    # Signed by the CAPF key, with SHA-256.
    try:
        verify_signed_by(cert, capf)
    except Exception as e:  # noqa: BLE001 - any failure is a failed check
        c.check(False, f"not signed by the CAPF certificate: {e}")
    c.check(isinstance(cert.signature_hash_algorithm, hashes.SHA256),
            f"signature hash {cert.signature_hash_algorithm and cert.signature_hash_algorithm.name}")

    # Serial: 128 random bits, positive.
    c.check(cert.serial_number > 0, "serial not positive")
    # 16 bytes: random, top bit cleared (positive), first byte non-zero.
    bits = cert.serial_number.bit_length()
    c.check(121 <= bits <= 127, f"serial has {bits} bits: expected 16 bytes, first byte 0x01..0x7f")
    n = serial_der_len(cert)
    c.check(n == 16, f"serial DER length {n}, expected 16 bytes")
    if args.serial:
        c.check(f"{cert.serial_number:032x}" == args.serial.lower(),
                f"serial {cert.serial_number:032x} != recorded {args.serial}")

    # Validity: the setting, counted from issuance (now, give or take the run).
    nb, na = not_before(cert), not_after(cert)
    c.check(nb <= now + datetime.timedelta(seconds=60), f"notBefore {nb} is in the future")
    # From the recorded issuance time when given (to the second), else from
    # now (within the length of a test run).
    if args.issued_at:
        issued = datetime.datetime.strptime(args.issued_at, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc)
        slack = 5
    else:
        issued, slack = now, 900
    want_na = issued + datetime.timedelta(days=args.validity_days)
    c.check(abs((na - want_na).total_seconds()) <= slack,
            f"notAfter {na}, expected about {want_na} (validity {args.validity_days} days)")
    c.check(na - nb <= datetime.timedelta(days=args.validity_days, hours=2),
            f"validity {na - nb} longer than {args.validity_days} days")

    bc = ext(cert, x509.BasicConstraints)
    c.check(bc is not None and bc.value.ca is False, f"basicConstraints {bc and bc.value}: expected CA:FALSE")
    ku = ext(cert, x509.KeyUsage)
    if c.check(ku is not None, "no keyUsage"):
        v = ku.value
        c.check(v.digital_signature and v.key_encipherment,
                f"keyUsage {v}: expected digitalSignature + keyEncipherment")
        c.check(not v.key_cert_sign and not v.crl_sign, f"keyUsage {v}: an LSC must not sign certificates")
    eku = ext(cert, x509.ExtendedKeyUsage)
    if c.check(eku is not None, "no extendedKeyUsage"):
        usages = set(eku.value)
        for u in (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, IPSEC_END_SYSTEM):
            c.check(u in usages, f"extendedKeyUsage lacks {u.dotted_string}")

    pub = cert.public_key()
    c.check(key_matches_spec(pub, args.key), f"public key is not {args.key}")
    if args.private_key:
        priv = serialization.load_der_private_key(read(args.private_key), password=None)
        c.check(spki(priv.public_key()) == spki(pub), "certificate key is not the phone's key")
    return c.finish()


def cmd_check_capf(args):
    c = Checks(f"CAPF {args.cert}")
    cert = load_cert(args.cert)
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    c.check(len(cns) == 1 and cns[0].startswith("CAPF-"), f"subject CN {cns}: expected CAPF-...")
    bc = ext(cert, x509.BasicConstraints)
    c.check(bc is not None and bc.value.ca is True and bc.value.path_length == 0,
            f"basicConstraints {bc and bc.value}: expected CA:TRUE, pathlen:0")
    ku = ext(cert, x509.KeyUsage)
    if c.check(ku is not None, "no keyUsage"):
        c.check(ku.value.digital_signature and ku.value.key_cert_sign,
                f"keyUsage {ku.value}: expected digitalSignature + keyCertSign")
    pub = cert.public_key()
    c.check(isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 2048, "key is not RSA 2048")
    c.check(cert.signature_algorithm_oid.dotted_string == "1.2.840.113549.1.1.11",
            f"signature algorithm {cert.signature_algorithm_oid._name}: expected sha256WithRSAEncryption")
    if cert.issuer == cert.subject:
        try:
            verify_signed_by(cert, cert)
        except Exception as e:  # noqa: BLE001
            c.check(False, f"self-signed but the signature does not verify: {e}")
    if args.served:
        text = read(args.served).decode("latin-1")
        pems = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
        if c.check(pems, "s_client showed no certificate"):
            served = x509.load_pem_x509_certificate(pems[0].encode())
            c.check(served == cert, "the certificate the server presents is not `cert export capf`")
    return c.finish()


def new_key(spec):
    kind, bits = parse_key_spec(spec)
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return ec.generate_private_key(EC_CURVES[bits]())


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def pkcs8(key):
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cmd_make_ca(args):
    key = new_key("ec256")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, args.cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "capstan tests")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    write(f"{args.out}/ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    write(f"{args.out}/ca.der", cert.public_bytes(serialization.Encoding.DER))
    write(f"{args.out}/ca-key.der", pkcs8(key))
    return 0


def cmd_issue(args):
    ca = x509.load_der_x509_certificate(read(f"{args.ca}/ca.der"))
    ca_key = serialization.load_der_private_key(read(f"{args.ca}/ca-key.der"), password=None)
    key = new_key(args.key)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, args.cn)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    write(args.out_cert, cert.public_bytes(serialization.Encoding.DER))
    write(args.out_key, pkcs8(key))
    return 0


def cmd_batch(args):
    """Runs one subcommand per line of a file (shell words), so that many
    checks cost one interpreter start."""
    import shlex
    rc = 0
    with open(args.file) as f:
        for line in f:
            if line.strip():
                rc |= main(shlex.split(line))
    return rc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("md5")
    s.add_argument("file")
    s.set_defaults(fn=cmd_md5)
    s = sub.add_parser("check-lsc")
    s.add_argument("--cert", required=True)
    s.add_argument("--capf", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--validity-days", type=int, required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--private-key")
    s.add_argument("--serial")
    s.add_argument("--issued-at", help="YYYY-MM-DDTHH:MM:SSZ, as device show prints it")
    s.set_defaults(fn=cmd_check_lsc)
    s = sub.add_parser("check-capf")
    s.add_argument("--cert", required=True)
    s.add_argument("--served")
    s.set_defaults(fn=cmd_check_capf)
    s = sub.add_parser("make-ca")
    s.add_argument("--out", required=True)
    s.add_argument("--cn", required=True)
    s.set_defaults(fn=cmd_make_ca)
    s = sub.add_parser("issue")
    s.add_argument("--ca", required=True)
    s.add_argument("--cn", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--out-cert", required=True)
    s.add_argument("--out-key", required=True)
    s.set_defaults(fn=cmd_issue)
    s = sub.add_parser("batch")
    s.add_argument("file")
    s.set_defaults(fn=cmd_batch)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
