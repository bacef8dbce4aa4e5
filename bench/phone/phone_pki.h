/* The phone side of the PKI, for the simulated phone (bench/phone), the
 * benchmark tools and the tests: signing as a phone signs, building
 * SUDI_DATA, and a small CA that issues MIC-like certificates. The server
 * never does any of this, so none of it is in core/pki (the server binary
 * does not contain it).
 *
 * Conventions as in core/pki/pki.h: 0 or a negative CAPSTAN_E* code
 * (CAPSTAN_EINVAL bad argument, CAPSTAN_ECRYPTO a BoringSSL operation
 * failed, CAPSTAN_ENOMEM); every failure clears BoringSSL's error queue;
 * byte buffers returned through uint8_t ** are malloc'd (free()); output
 * pointers are NULL / zero on failure. Thread-safe on distinct objects. */
#ifndef CAPSTAN_BENCH_PHONE_PKI_H
#define CAPSTAN_BENCH_PHONE_PKI_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>

#include "core/base/phone.h"
#include "core/pki/pki.h"

/* SIGNED_DATA as a phone makes it, over hash(|data|) with |hash_id| (a
 * capstan_hash_t). RSA: raw private operation on 00 01 FF..FF 00 || bare
 * digest; EC: DER ECDSA. |*sig| malloc'd. CAPSTAN_EINVAL for an unknown
 * hash id or key type; CAPSTAN_ECRYPTO if the digest does not fit the key
 * (512-bit RSA with SHA-512). capstan_pki_verify_signed_data accepts it. */
int capstan_phone_sign(EVP_PKEY *key, int hash_id, const uint8_t *data, size_t data_len,
                       uint8_t **sig, size_t *sig_len);

/* SUDI_DATA as a phone builds it: 0x00 | u16 len | |cert_der| | 0x01 |
 * u16 len | SHA-1 signature | 0x03 | u16 len | SHA-512 signature, both
 * signatures by |key| (capstan_phone_sign) over (|session_id| as a
 * little-endian uint32 || |cert_der|). |cert_der| at most
 * CAPSTAN_PKI_MAX_CERT_DER bytes. capstan_pki_verify_sudi accepts it. */
int capstan_phone_make_sudi(EVP_PKEY *key, const uint8_t *cert_der, size_t cert_len,
                            uint32_t session_id, uint8_t **out, size_t *out_len);

/* A test / simulator CA ("manufacturing CA" for MICs): self-signed, EC
 * P-256 (fast to make), ECDSA-SHA256, subject CN=|cn| (1..64 bytes, must not
 * contain "CAPF-"), basicConstraints critical CA:TRUE pathlen:0, keyUsage
 * critical digitalSignature+keyCertSign, subjectKeyIdentifier, validity
 * now-1h .. +10 years: acceptable as a CAPF-trust upload
 * (capstan_pki_check_trust_upload). |out| is zeroed first and filled only on
 * success; the caller cleans it up (capstan_identity_cleanup). */
int capstan_phone_create_test_ca(const char *cn, capstan_identity_t *out);

/* A MIC-like leaf under |ca| for the public half of |key|: subject CN=|cn|
 * (1..64 bytes), random positive 16-byte serial, basicConstraints CA:FALSE,
 * keyUsage (critical) digitalSignature+keyEncipherment, EKU
 * serverAuth+clientAuth, subject and authority key identifiers, validity
 * now-1h .. +10 years, signed with SHA-256. |*der| malloc'd. */
int capstan_phone_issue_test_leaf(const capstan_identity_t *ca, const char *cn, EVP_PKEY *key,
                                  uint8_t **der, size_t *der_len);

#endif
