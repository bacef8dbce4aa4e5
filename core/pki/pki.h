/* PKI: the CAPF certificate authority and everything capstan does with
 * certificates and keys. BoringSSL only.
 *
 * Conventions for the whole module:
 * - Return 0 on success or a negative code from core/base/error.h:
 *   CAPSTAN_EINVAL (bad argument or malformed input), CAPSTAN_EACCES
 *   (signature or trust refused), CAPSTAN_ECRYPTO (a BoringSSL operation
 *   failed), CAPSTAN_ENOMEM (allocation failed).
 * - Every failure path clears BoringSSL's thread-local error queue, so worker
 *   threads do not accumulate errors.
 * - Byte buffers returned through uint8_t ** / char ** are malloc'd: the caller
 *   frees them with free(). Objects returned as X509 * / EVP_PKEY * are owned
 *   by the caller (X509_free / EVP_PKEY_free).
 * - All functions are safe to call concurrently from several threads on
 *   distinct objects, and with one shared, read-only CAPF identity.
 * - On failure, output pointers are left NULL / zero.
 */
#ifndef CAPSTAN_CORE_PKI_PKI_H
#define CAPSTAN_CORE_PKI_PKI_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h> /* EVP_PKEY, X509, X509_NAME */
#include <openssl/x509.h> /* STACK_OF(X509) */

#include "core/base/phone.h"

/* Key algorithms (capstan_key_alg_t), key sizes (CAPSTAN_KEYS), hash ids
 * (capstan_hash_t) and the device-name limit are core/base/phone.h's. */

/* LSC validity bounds in days (spec R8: 1 to 1825). */
#define CAPSTAN_PKI_LSC_MIN_DAYS 1u
#define CAPSTAN_PKI_LSC_MAX_DAYS 1825u

/* Hard caps on peer-supplied inputs. */
#define CAPSTAN_PKI_MAX_CERT_DER 16384u    /* one certificate */
#define CAPSTAN_PKI_MAX_SPKI_DER 4096u     /* one SubjectPublicKeyInfo */
#define CAPSTAN_PKI_MAX_SIG 1024u          /* one signature (RSA 8192) */
#define CAPSTAN_PKI_MAX_SUBJECT_EXTRA 512u /* the |subject_extra| string */
#define CAPSTAN_PKI_MAX_CHAIN 8u           /* certificates above a CAPF */

/* A certificate with its private key. Start it zeroed ({0}); cleanup is then
 * safe at any point. */
typedef struct capstan_identity {
  X509 *cert;
  EVP_PKEY *key;
  STACK_OF(X509) * chain; /* issuers above cert, may be NULL */
} capstan_identity_t;

/* Frees every member (any may be NULL) and zeroes |id|. NULL is ignored. */
void capstan_identity_cleanup(capstan_identity_t *id);

/* Makes |dst| share |src|'s objects (reference counts taken; BoringSSL objects
 * are immutable once built, so sharing is safe across threads). |dst| must be
 * zeroed or cleaned up; on failure it stays zeroed. */
int capstan_identity_copy(const capstan_identity_t *src, capstan_identity_t *dst);

/* CAPF certificate (spec R11): self-signed, RSA 2048, SHA-256, subject
 * CN "CAPF-" + 8 random lower-case hex digits followed by the optional
 * O/OU/L/ST/C attributes from |subject_extra| in the order given (NULL or ""
 * for none; e.g. "O=Example,C=NZ"; "\," and "\\" escape inside values; C must
 * be 2 characters; other keys, CN included, are refused with CAPSTAN_EINVAL).
 * Random 128-bit positive serial, basicConstraints critical CA:TRUE
 * pathlen:0, keyUsage critical digitalSignature+keyCertSign,
 * subjectKeyIdentifier (SHA-1 of the public key), validity now-1h .. +10
 * years. |out| must be zeroed; it is filled only on success. */
int capstan_pki_create_capf(const char *subject_extra, capstan_identity_t *out);

/* TFTP signing certificate: self-signed, RSA 2048, SHA-256, CN "TFTP-" + 8
 * hex, the same |subject_extra| rules, keyUsage (critical)
 * digitalSignature+keyEncipherment, EKU serverAuth+clientAuth, basic
 * constraints CA:FALSE, subjectKeyIdentifier, validity now-1h .. +10 years.
 * The phone trusts it through the ITL. */
int capstan_pki_create_tftp(const char *subject_extra, capstan_identity_t *out);

/* Serialise: certificate DER and private key as PKCS#8 DER (the chain is not
 * included; see capstan_identity_chain_to_der). Both outputs malloc'd; free
 * |*key_der| after wiping it (OPENSSL_cleanse). */
int capstan_identity_to_der(const capstan_identity_t *id, uint8_t **cert_der, size_t *cert_len,
                            uint8_t **key_der, size_t *key_len);

/* Parse a certificate (DER, no trailing bytes) and a PKCS#8 private key (DER,
 * no trailing bytes) into |out| (zeroed by the caller), with chain NULL.
 * Refuses with CAPSTAN_EINVAL when the key does not match the certificate. */
int capstan_identity_from_der(const uint8_t *cert_der, size_t cert_len, const uint8_t *key_der,
                              size_t key_len, capstan_identity_t *out);

/* The chain as an array of |*count| DER buffers: |*ders| and each buffer are
 * malloc'd, and |*lens| is a malloc'd array of their lengths. Free with
 * capstan_pki_der_array_free. With no chain, *count = 0 and both arrays NULL. */
int capstan_identity_chain_to_der(const capstan_identity_t *id, uint8_t ***ders, size_t **lens,
                                  size_t *count);
void capstan_pki_der_array_free(uint8_t **ders, size_t *lens, size_t count);

/* Replace |id|'s chain with certificates parsed from |count| DER buffers
 * (issuers above id->cert, nearest first). On failure |id| is unchanged. */
int capstan_identity_set_chain_der(capstan_identity_t *id, const uint8_t *const *ders,
                                   const size_t *lens, size_t count);

/* md5hash: MD5 of |der| as 32 lower-case hex digits plus NUL. Cannot fail. */
void capstan_pki_md5hash(const uint8_t *der, size_t len, char out[33]);

/* Check a phone's public key (DER SubjectPublicKeyInfo, no trailing bytes)
 * against the requested type: (|key_alg|, |key_bits|) must be one of
 * CAPSTAN_KEYS (core/base/phone.h). CAPSTAN_KEY_RSA: the modulus exactly
 * |key_bits|, exponent odd, >= 3 and < 2^33. CAPSTAN_KEY_EC: |key_bits|
 * 256/384/521 meaning P-256/P-384/P-521, point on the curve. Returns 0 and the key in |*out|
 * (caller frees), or CAPSTAN_EINVAL with a static reason in |*why|:
 * "malformed public key", "key type mismatch", "key size mismatch",
 * "curve mismatch", "bad RSA exponent", "unsupported key request"; or
 * CAPSTAN_ENOMEM ("out of memory") when parsing failed for want of memory,
 * not for the key. |why| may be NULL. */
int capstan_pki_check_public_key(const uint8_t *spki, size_t len, int key_alg, unsigned key_bits,
                                 EVP_PKEY **out, const char **why);

/* Issue an LSC (spec R8) signed by |capf| with SHA-256: subject CN =
 * |device_name| (1..CAPSTAN_DEVICE_NAME_MAX bytes of UTF-8) followed by
 * the O/OU/L/ST/C attributes of the CAPF certificate's subject in their order;
 * issuer = the CAPF subject; random positive serial of exactly 16 bytes (top
 * bit clear, first byte non-zero) written to |serial|; validity now-5min ..
 * now + |validity_days| (CAPSTAN_PKI_LSC_MIN_DAYS..MAX_DAYS); basicConstraints
 * CA:FALSE; keyUsage (critical) digitalSignature+keyEncipherment; EKU
 * serverAuth+clientAuth+ipsecEndSystem; authorityKeyIdentifier = the CAPF's
 * SKI (when it has one); subjectKeyIdentifier. |*der| malloc'd, |*not_after|
 * in unix seconds. |capf| is only read: safe on worker threads. */
int capstan_pki_issue_lsc(const capstan_identity_t *capf, const char *device_name,
                          EVP_PKEY *phone_key, unsigned validity_days, uint8_t serial[16],
                          uint8_t **der, size_t *der_len, int64_t *not_after);

/* Auth by existing certificate (capf-protocol.md): verify |sig| over
 * hash(|data|) with the public |key|. |hash_id| a capstan_hash_t.
 * RSA: raw public operation, PKCS#1 v1.5 type-1 padding (00 01 FF{8,} 00),
 * then either the bare digest or a DigestInfo wrapping it; a signature
 * shorter than the modulus is taken as the same integer. EC: DER ECDSA.
 * Returns 0, or CAPSTAN_EACCES for anything else (including an unknown hash
 * id or key type, since those come from the peer). */
int capstan_pki_verify_signed_data(EVP_PKEY *key, int hash_id, const uint8_t *data, size_t data_len,
                                   const uint8_t *sig, size_t sig_len);

/* |cert| must chain to one of |trusted| (any of them is an anchor, so an
 * intermediate in the list suffices), through |untrusted_intermediates| (may
 * be NULL). Validity times are checked; purpose is not. Returns 0 or
 * CAPSTAN_EACCES (CAPSTAN_EINVAL for NULL cert/trusted, CAPSTAN_ENOMEM). */
int capstan_pki_verify_chain(X509 *cert, STACK_OF(X509) * untrusted_intermediates,
                             STACK_OF(X509) * trusted);

/* Parse SUDI_DATA: 0x00|u16 len|SUDI cert DER|0x01|u16 len|SHA-1 sig|
 * 0x03|u16 len|SHA-512 sig (0x02, SHA-256, is also accepted for the third
 * element), nothing after. Verifies both signatures over (|session_id| as a
 * little-endian uint32 || SUDI cert DER) with the SUDI certificate's key.
 * Returns 0 with |*sudi_cert| (caller frees) so the caller can chain-check
 * it; CAPSTAN_EINVAL when malformed; CAPSTAN_EACCES on a bad signature. */
int capstan_pki_verify_sudi(const uint8_t *sudi_data, size_t len, uint32_t session_id,
                            X509 **sudi_cert);

/* RFC 4514 DN string in CERTIFICATE order (not reversed), e.g.
 * "CN=CAPF-1a2b3c4d,O=Example,C=NZ": comma-separated, '+' inside a
 * multi-valued RDN, short names (CN, O, OU, L, ST, C, ...) or the dotted OID
 * with a #hex value for unknown types, RFC 4514 escaping. |*out| malloc'd and
 * NUL-terminated. */
int capstan_pki_dn_string(const X509_NAME *name, char **out);

/* Serial number magnitude, big-endian, no leading zero byte (a zero serial
 * gives one 0x00 byte). CAPSTAN_EINVAL for a negative serial, CAPSTAN_ERANGE
 * when it does not fit |cap|. */
int capstan_pki_serial_bytes(const X509 *cert, uint8_t *out, size_t cap, size_t *len);

/* Parse a DER certificate fully (no trailing bytes; at most
 * CAPSTAN_PKI_MAX_CERT_DER). CAPSTAN_EINVAL when malformed. */
int capstan_pki_parse_cert(const uint8_t *der, size_t len, X509 **out);

/* Encode |cert| as DER; |*der| malloc'd. */
int capstan_pki_cert_to_der(const X509 *cert, uint8_t **der, size_t *len);

/* Encode |req| (PKCS#10) as DER; |*der| malloc'd. */
int capstan_pki_req_to_der(const X509_REQ *req, uint8_t **der, size_t *len);

/* Encode the public half of |key| as a DER SubjectPublicKeyInfo; malloc'd. */
int capstan_pki_public_key_to_der(const EVP_PKEY *key, uint8_t **der, size_t *len);

/* Validity of |cert| in unix seconds (either output may be NULL).
 * CAPSTAN_EINVAL when a time cannot be read. */
int capstan_pki_cert_validity(const X509 *cert, int64_t *not_before, int64_t *not_after);

/* ---- The CAPF certificate's life (capf-lifecycle.md, R11-R12) ----------- */

/* A CAPF key and self-signed certificate as the operator asks for them. */
typedef struct capstan_capf_spec {
  int key_alg;               /* CAPSTAN_KEY_RSA (2048, 3072, 4096) or CAPSTAN_KEY_EC (256, 384) */
  unsigned key_bits;         /* 0: RSA 2048 */
  unsigned days;             /* validity 1..CAPSTAN_PKI_CAPF_MAX_DAYS; 0: ten years */
  const char *subject_extra; /* O/OU/L/ST/C as capstan_pki_create_capf; NULL for none */
  /* With no |subject_extra|: the O/OU/L/ST/C attributes of this name, copied
   * as they are (a renewal keeps what an enterprise CA wrote); may be NULL. */
  const X509_NAME *subject_like;
} capstan_capf_spec_t;
#define CAPSTAN_PKI_CAPF_MAX_DAYS 7300u

/* A new self-signed CAPF identity per |spec| with the R11 profile of
 * capstan_pki_create_capf (which is this with RSA 2048 and ten years).
 * CAPSTAN_EINVAL for a key the CAPF may not have (RSA other than
 * 2048/3072/4096, EC other than 256/384) or a bad subject. */
int capstan_pki_create_capf_spec(const capstan_capf_spec_t *spec, capstan_identity_t *out);

/* The subject of a new CAPF: CN "CAPF-" + 8 random lower-case hex digits,
 * then |subject_extra| (rules of capstan_pki_create_capf). |*out| owned by
 * the caller (X509_NAME_free). */
int capstan_pki_capf_subject(const char *subject_extra, X509_NAME **out);

/* The same with the O/OU/L/ST/C attributes of |like| copied as they are. */
int capstan_pki_capf_subject_like(const X509_NAME *like, X509_NAME **out);

/* A PKCS#10 CSR (DER, malloc'd) for |key| with |subject|, SHA-256 (ECDSA
 * with SHA-256 for an EC key), whose extensionRequest holds exactly the
 * three extensions of capf-lifecycle.md "The CAPF CSR": keyUsage
 * (critical) digitalSignature+keyCertSign, extendedKeyUsage serverAuth +
 * ipsecEndSystem, basicConstraints (critical) CA:TRUE pathlen 0. */
int capstan_pki_make_capf_csr(EVP_PKEY *key, const X509_NAME *subject, uint8_t **der,
                              size_t *der_len);

/* Import of a CA-signed CAPF certificate: the checks of capf-lifecycle.md
 * "Importing the signed certificate", in the order of its list. */
#define CAPSTAN_PKI_IMPORT_STRICT 1u /* rule 4: refuse (not warn) under 30 days left */
#define CAPSTAN_PKI_IMPORT_WARN_DAYS 30

typedef struct capstan_capf_import {
  /* Accepted: the certificate, the matching key (a reference taken) and the
   * path above it, nearest issuer first, ending with the self-signed root. */
  capstan_identity_t id;
  size_t key_index; /* which of |keys| matched */
  /* Refused: the rule number of the list (1..6; 7 for "a CAPF- CN in a CA
   * position", which the list does not number) and a static text naming
   * it, e.g. "basicConstraints pathlen must be 0". */
  int rule;
  const char *why;
  /* Accepted but worth saying (static text, or NULL), e.g. "the
   * certificate expires in fewer than 30 days". */
  const char *warning;
} capstan_capf_import_t;

/* Checks |cert_der| (one DER certificate) as the CAPF certificate for one
 * of |keys| (|nkeys| of them: the pending key, then the current one; NULL
 * entries are skipped) and builds its path through |candidates| (the
 * --chain certificates and the trust stores; may be NULL) up to a
 * self-signed root:
 *   1 its public key is one of |keys|;
 *   2 basicConstraints present, CA:TRUE, pathlen present and 0; CN starts
 *     with "CAPF-";
 *   3 keyUsage has keyCertSign and digitalSignature;
 *   4 valid at |now|; under CAPSTAN_PKI_IMPORT_WARN_DAYS left: warning,
 *     or refused with CAPSTAN_PKI_IMPORT_STRICT;
 *   5 the path builds (names and signatures) to a self-signed root within
 *     8 certificates; every certificate above is a CA (CA:TRUE and
 *     keyCertSign), valid at |now|, and its pathlen (when present) allows
 *     the CAs below it, the CAPF included (RFC 5280 6.1.4);
 *   6 every signature on the path (the root's own included) uses SHA-256
 *     or stronger;
 *   7 no certificate above the CAPF has a CN containing "CAPF-".
 * Returns 0 with |out| filled (release with capstan_capf_import_cleanup),
 * CAPSTAN_EINVAL with out->rule and out->why when a rule fails, or
 * CAPSTAN_ENOMEM. |out| is always safe to clean up. */
int capstan_pki_check_capf_import(EVP_PKEY *const *keys, size_t nkeys, const uint8_t *cert_der,
                                  size_t cert_len, STACK_OF(X509) * candidates, int64_t now,
                                  unsigned flags, capstan_capf_import_t *out);
void capstan_capf_import_cleanup(capstan_capf_import_t *imp);

/* The key of |key| as the CLI names it ("rsa2048", "ec256", ...) into
 * |buf| (at least 16 bytes); "unknown" for anything else. */
void capstan_pki_key_name(const EVP_PKEY *key, char *buf, size_t len);

/* SHA-256 of |cert|'s DER. */
int capstan_pki_cert_sha256(const X509 *cert, uint8_t out[32]);

/* Whether |cert| is self-signed: issuer == subject and its signature
 * verifies with its own key. */
int capstan_pki_is_self_signed(X509 *cert);

/* R13 upload rules, as capf-lifecycle.md "Trust stores" refines them.
 * CAPSTAN_PKI_UPLOAD_CA (a root or intermediate CA for a trust store):
 * CA:TRUE, keyUsage digitalSignature and keyCertSign, CN must not contain
 * "CAPF-"; pathlen may be absent or any value (a root above a CA-signed
 * CAPF needs at least 1; the import checks the path).
 * CAPSTAN_PKI_UPLOAD_ISSUING_CA (a CA that signs phone LSCs directly, the
 * external-CA modes): the same and pathlen present and 0, as CUCM requires.
 * CAPSTAN_PKI_UPLOAD_IPSEC: an IPsec certificate signed by a CA (issuer !=
 * subject) must not carry CA:TRUE.
 * Returns 0, or CAPSTAN_EINVAL with a static reason naming the rule in
 * |*why| (may be NULL). */
#define CAPSTAN_PKI_UPLOAD_CA 0
#define CAPSTAN_PKI_UPLOAD_IPSEC 1
#define CAPSTAN_PKI_UPLOAD_ISSUING_CA 2
int capstan_pki_check_trust_upload(const X509 *cert, int kind, const char **why);

/* PEM encoding of |len| bytes of DER under |label| ("CERTIFICATE",
 * "CERTIFICATE REQUEST", ...): 64-column base64, "\n" line ends,
 * NUL-terminated, |*pem| malloc'd. */
int capstan_pki_pem_encode(const char *label, const uint8_t *der, size_t len, char **pem);

/* Every PEM block labelled |label| in |text| (other blocks and text around
 * them are skipped), decoded to DER: |*ders| and each element malloc'd,
 * |*lens| malloc'd; free with capstan_pki_der_array_free. At most
 * CAPSTAN_PKI_MAX_PEM_BLOCKS blocks and CAPSTAN_PKI_MAX_PEM_TEXT bytes of
 * input. CAPSTAN_EINVAL when there is no such block or one is malformed. */
#define CAPSTAN_PKI_MAX_PEM_BLOCKS 32u
#define CAPSTAN_PKI_MAX_PEM_TEXT (1024u * 1024u)
int capstan_pki_pem_decode(const uint8_t *text, size_t len, const char *label, uint8_t ***ders,
                           size_t **lens, size_t *count);

/* Generate a key: CAPSTAN_KEY_RSA with |key_bits| 512..8192 (e = 65537),
 * or CAPSTAN_KEY_EC with 256/384/521. |*out| owned by the caller. RSA
 * generation is slow: keep it off the loop thread. */
int capstan_pki_generate_key(int key_alg, unsigned key_bits, EVP_PKEY **out);

/* The digest of a CAPF hash id (CAPSTAN_HASH_SHA1, _SHA256, _SHA512 of
 * core/base/phone.h), or NULL for any other value. */
const EVP_MD *capstan_pki_hash_md(int hash_id);

#endif
