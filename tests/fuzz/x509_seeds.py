# Makes the seeds of fuzz_x509_inputs (seeds/) and the trust anchor and phone key
# they use (fixtures.h -> tests/fuzz/fuzz_x509_fixtures.h), in the current
# directory: python3 tests/fuzz/x509_seeds.py. Keys are fresh each run, so
# regenerate the fixtures and the seeds together.
import datetime, struct, os
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa, ec, padding
now = datetime.datetime(2026, 1, 1)
def name(cn): return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
def key(bits=1024): return rsa.generate_private_key(65537, bits)
ca_key = key(2048)
def cert(subj, issuer, pub, signkey, ca=False, pathlen=None, ku=None, days=3650, start=now):
    b = (x509.CertificateBuilder().subject_name(name(subj)).issuer_name(name(issuer)).public_key(pub)
         .serial_number(x509.random_serial_number()).not_valid_before(start - datetime.timedelta(days=365))
         .not_valid_after(start + datetime.timedelta(days=days)))
    b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=pathlen), critical=True)
    if ku == 'ca':
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
    elif ku == 'leaf':
        b = b.add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
    return b.sign(signkey, hashes.SHA256())
der = lambda c: c.public_bytes(serialization.Encoding.DER)
root = cert("Fuzz Root CA", "Fuzz Root CA", ca_key.public_key(), ca_key, ca=True, pathlen=1, ku='ca')
inter_key = key(2048)
inter = cert("Fuzz Issuing CA", "Fuzz Root CA", inter_key.public_key(), ca_key, ca=True, pathlen=0, ku='ca')
phone_key = key(2048)
leaf = cert("SEP001122334455", "Fuzz Issuing CA", phone_key.public_key(), inter_key, ku='leaf', days=36500)
leaf_root = cert("SEP001122334455", "Fuzz Root CA", phone_key.public_key(), ca_key, ku='leaf', days=36500)
expired = cert("SEP001122334455", "Fuzz Root CA", phone_key.public_key(), ca_key, ku='leaf', days=-300)
eck = ec.generate_private_key(ec.SECP256R1())
ec_leaf = cert("SEP001122334455", "Fuzz Root CA", eck.public_key(), ca_key, ku='leaf', days=36500)
capf = cert("CAPF-1234abcd", "CAPF-1234abcd", ca_key.public_key(), ca_key, ca=True, pathlen=0, ku='ca')
csr = (x509.CertificateSigningRequestBuilder().subject_name(name("SEP001122334455")).sign(phone_key, hashes.SHA256()))
csr_other = (x509.CertificateSigningRequestBuilder().subject_name(name("SEP999999999999")).sign(phone_key, hashes.SHA256()))
spki = phone_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
data = b"SEP001122334455\x00" + der(leaf_root)
sig1 = phone_key.sign(data, padding.PKCS1v15(), hashes.SHA1())
sig2 = phone_key.sign(data, padding.PKCS1v15(), hashes.SHA512())
# SUDI: 0x00|u16|cert|0x01|u16|sha1 sig|0x03|u16|sha512 sig over (session id LE || cert)
sid = struct.pack('<I', 0x11223344)
sudi_cert = der(leaf_root)
s1 = phone_key.sign(sid + sudi_cert, padding.PKCS1v15(), hashes.SHA1())
s2 = phone_key.sign(sid + sudi_cert, padding.PKCS1v15(), hashes.SHA512())
sudi = b'\x00' + struct.pack('>H', len(sudi_cert)) + sudi_cert + b'\x01' + struct.pack('>H', len(s1)) + s1 + b'\x03' + struct.pack('>H', len(s2)) + s2
def two(a, b): return struct.pack('>H', len(a)) + a + b
seeds = {
 'root': b'\x00' + der(root), 'inter': b'\x00' + der(inter), 'leaf': b'\x00' + der(leaf),
 'leaf_root': b'\x00' + der(leaf_root), 'expired': b'\x00' + der(expired), 'ec_leaf': b'\x00' + der(ec_leaf),
 'capf': b'\x00' + der(capf), 'csr': b'\x01' + csr.public_bytes(serialization.Encoding.DER),
 'csr_other': b'\x01' + csr_other.public_bytes(serialization.Encoding.DER),
 'spki': b'\x02' + spki, 'ec_spki': b'\x02' + eck.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
 'chain_leaf_inter': b'\x80' + two(der(leaf), der(inter)),
 'verify_sigs': b'\x93' + two(der(leaf_root), two(sig1, sig2)),
 'verify_sigs_sudi': b'\x97' + two(der(leaf_root), two(sig1, two(sig2, sudi))),
 'sudi': b'\x04' + sudi,
}
os.makedirs('seeds', exist_ok=True)
for k, v in seeds.items(): open('seeds/' + k, 'wb').write(v)
def carr(n, b):
    out = 'static const uint8_t %s[] = {\n' % n
    for i in range(0, len(b), 16):
        out += '    ' + ', '.join('0x%02x' % x for x in b[i:i+16]) + ',\n'
    return out + '};\n'
open('fixtures.h','w').write('/* Generated for fuzz_x509_inputs (Python cryptography, once): the trust\n * anchor its seeds chain to and the phone key they were made with. */\n' + carr('kRootDer', der(root)) + carr('kPhoneSpki', spki))
