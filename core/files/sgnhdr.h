/* The signed header shared by every file the phones download (.sgn,
 * .enc.sgn, ITL): writer and reader. Layout: docs/spec/file-formats.md,
 * "The signed header".
 *
 * Every field is `tag (u8) | length (u16, big-endian) | value`, except
 * PADDING, the single byte 13 with no length. Written field order:
 *
 *   VERSION(1) HEADER_LENGTH(2) [SIGNER_VERSION(28)]
 *   SIGNER_INFO(3){ SIGNER_NAME(4) ISSUER_NAME(6) SERIAL_NUMBER(5) }
 *   SIGNATURE_INFO(7){ HASH_ALGORITHM(8)
 *                      SIGNATURE_ALGORITHM_INFO(9){ SIGNATURE_ALGORITHM(10)
 *                                                   SIGNATURE_MODULUS(11) } }
 *   SIGNATURE(12) FILENAME(14) TIMESTAMP(15) [encryption fields 16..27]
 *   PADDING(13)*
 *
 * Reading of the container lengths (the spec's table and prose, checked
 * against what this module writes):
 *  - A container's length is the number of bytes of the TLV fields it holds,
 *    each counted whole (tag + length + value), nested containers included.
 *  - SIGNATURE_ALGORITHM_INFO(9) holds 10 and 11: (3+1) + (3+1) = 8, the
 *    spec's "length 8".
 *  - SIGNATURE_INFO(7) holds 8, 9 and (through 9) 10 and 11:
 *    (3+1) + 3 + 8 = 15, the spec's "length 15". SIGNATURE(12) follows the
 *    container and is NOT inside it.
 *  - SIGNER_INFO(3) holds 4, 6, 5: (3+|subject|+1) + (3+|issuer|+1) +
 *    (3+|serial|).
 *  - Readers step INTO 3, 7 and 9: the fields they hold are read in the same
 *    sequence as the rest of the header, and the reader checks that they end
 *    exactly where the container's length says. The encryption containers
 *    16, 17, 21 ("the full length of what they hold") are read as a nested
 *    sequence bounded by their length. Both encode to the same bytes.
 *
 * HEADER_LENGTH counts from the first byte of the file to the end of the
 * header, SIGNATURE field and PADDING included; PADDING bytes (0 to 3) make
 * it a multiple of 4.
 *
 * Signing is split so that the RSA operation can run on a worker thread:
 *   capstan_sgn_prepare    (loop thread; builds the to-be-signed bytes)
 *   capstan_sgn_compute    (any thread; RSA PKCS#1 v1.5 with the header hash)
 *   capstan_sgn_finish     (inserts the SIGNATURE field; returns the file)
 * capstan_sgn_sign does all three.
 *
 * Errors: 0 or a negative CAPSTAN_E* code (core/base/error.h). Functions that take
 * |why| set it, on failure, to a static string naming the reason (may be
 * NULL when the caller does not want it). */
#ifndef CAPSTAN_CORE_FILES_SGNHDR_H
#define CAPSTAN_CORE_FILES_SGNHDR_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>

/* Tags of the header fields. */
enum {
  CAPSTAN_SGN_TAG_VERSION = 1,
  CAPSTAN_SGN_TAG_HEADER_LENGTH = 2,
  CAPSTAN_SGN_TAG_SIGNER_INFO = 3,
  CAPSTAN_SGN_TAG_SIGNER_NAME = 4,
  CAPSTAN_SGN_TAG_SERIAL_NUMBER = 5,
  CAPSTAN_SGN_TAG_ISSUER_NAME = 6,
  CAPSTAN_SGN_TAG_SIGNATURE_INFO = 7,
  CAPSTAN_SGN_TAG_HASH_ALGORITHM = 8,
  CAPSTAN_SGN_TAG_SIGNATURE_ALGORITHM_INFO = 9,
  CAPSTAN_SGN_TAG_SIGNATURE_ALGORITHM = 10,
  CAPSTAN_SGN_TAG_SIGNATURE_MODULUS = 11,
  CAPSTAN_SGN_TAG_SIGNATURE = 12,
  CAPSTAN_SGN_TAG_PADDING = 13,
  CAPSTAN_SGN_TAG_FILENAME = 14,
  CAPSTAN_SGN_TAG_TIMESTAMP = 15,
  CAPSTAN_SGN_TAG_ENCRYPTION_INFO = 16,
  CAPSTAN_SGN_TAG_ENCRYPTION_IV_INFO = 17,
  CAPSTAN_SGN_TAG_ENCRYPTION_IV_ZERO = 18,
  CAPSTAN_SGN_TAG_ENCRYPTION_IV = 19,
  CAPSTAN_SGN_TAG_ENCRYPTION_PADDING = 20,
  CAPSTAN_SGN_TAG_ENCRYPTION_KEY_INFO = 21,
  CAPSTAN_SGN_TAG_ENCRYPTION_KEY_ZERO = 22,
  CAPSTAN_SGN_TAG_ENCRYPTION_KEY_SIZE = 23,
  CAPSTAN_SGN_TAG_ENCRYPTION_KEY_ALGORITHM = 24,
  CAPSTAN_SGN_TAG_ENCRYPTION_KEY = 25,
  CAPSTAN_SGN_TAG_ENCRYPTION_HASH_ALGORITHM = 26,
  CAPSTAN_SGN_TAG_ENCRYPTION_HASH = 27,
  CAPSTAN_SGN_TAG_SIGNER_VERSION = 28,
};

/* HASH_ALGORITHM values. SHA-256 is defined by the format but verifiers
 * reject it, so the writer refuses it. */
enum {
  CAPSTAN_SGN_HASH_SHA1 = 1,
  CAPSTAN_SGN_HASH_SHA256 = 2,
  CAPSTAN_SGN_HASH_SHA512 = 3,
};

/* Hard caps. The header length is a uint16 by format. */
#define CAPSTAN_SGN_MAX_HEADER 65535u
#define CAPSTAN_SGN_MAX_NAME 1024u     /* DN strings and FILENAME, NUL included */
#define CAPSTAN_SGN_MAX_SERIAL 20u     /* RFC 5280: at most 20 octets */
#define CAPSTAN_SGN_MAX_SIGNATURE 512u /* 4096-bit RSA */
#define CAPSTAN_SGN_MAX_FILE (16u * 1024u * 1024u)

/* A byte range inside a buffer the caller owns. */
typedef struct {
  const uint8_t *data;
  size_t len;
} capstan_sgn_bytes_t;

/* What goes into a header. Nothing here is retained after
 * capstan_sgn_prepare returns: it copies what it needs. */
typedef struct {
  uint8_t version_major, version_minor; /* 1.0 .sgn, 2.0 .enc.sgn, 1.2 ITL */
  int has_signer_version;               /* ITL/CTL only */
  uint8_t signer_version_major, signer_version_minor;
  /* The signing certificate (TFTP, RSA): SIGNER_NAME, ISSUER_NAME,
   * SERIAL_NUMBER and SIGNATURE_MODULUS come from it. */
  X509 *signer_cert;    /* not modified; non-const for X509_get_pubkey */
  int hash_alg;         /* CAPSTAN_SGN_HASH_SHA1 or CAPSTAN_SGN_HASH_SHA512 */
  const char *filename; /* the file's own name, written NUL-terminated */
  uint32_t timestamp;   /* seconds since 1970 */
  /* Already-encoded fields written after TIMESTAMP (the encryption fields of
   * an .enc.sgn), or NULL/0. */
  const uint8_t *extra_fields;
  size_t extra_len;
  const uint8_t *payload; /* the bytes after the header */
  size_t payload_len;
} capstan_sgn_params_t;

/* A file waiting for its signature. Zero-initialise, fill with
 * capstan_sgn_prepare, release with capstan_sgn_prepared_cleanup. Read-only
 * between prepare and finish, so capstan_sgn_compute may run on another
 * thread meanwhile. */
typedef struct {
  uint8_t *tbs; /* the file without the SIGNATURE field (owned) */
  size_t tbs_len;
  size_t sig_offset; /* where the SIGNATURE field is inserted */
  size_t sig_len;    /* signature size: the signer's modulus in bytes */
  int hash_alg;
} capstan_sgn_prepared_t;

/* capstan_sgn_prepare builds the to-be-signed bytes for |params| into |out|
 * (which must be zeroed or cleaned up). Fails with CAPSTAN_EINVAL when the
 * signer key is not RSA or not 512/1024/2048/4096 bits, the hash is not
 * SHA-1/SHA-512 (SHA-256 refused), a name is too long or the header would
 * exceed 65535 bytes; CAPSTAN_ENOMEM on allocation failure. */
int capstan_sgn_prepare(const capstan_sgn_params_t *params, capstan_sgn_prepared_t *out,
                        const char **why);

/* capstan_sgn_compute signs |prep->tbs| with |key| (RSA PKCS#1 v1.5 with the
 * header's hash). |sig| must hold |prep->sig_len| bytes. Thread-safe: reads
 * |prep| and |key| only. Fails with CAPSTAN_EINVAL if |key| is not RSA or its
 * size does not match the header's SIGNATURE_MODULUS, CAPSTAN_ECRYPTO if
 * signing fails. */
int capstan_sgn_compute(const capstan_sgn_prepared_t *prep, EVP_PKEY *key, uint8_t *sig,
                        size_t sig_cap);

/* capstan_sgn_finish inserts |sig| (|sig_len| must equal prep->sig_len) and
 * returns the whole file in |*out| (malloc'd; caller frees with free()). */
int capstan_sgn_finish(const capstan_sgn_prepared_t *prep, const uint8_t *sig, size_t sig_len,
                       uint8_t **out, size_t *out_len);

/* Releases |prep->tbs| and zeroes |prep|. Accepts a zeroed struct. */
void capstan_sgn_prepared_cleanup(capstan_sgn_prepared_t *prep);

/* capstan_sgn_sign_prepared = compute + finish + cleanup of |prep| (cleaned
 * up in every case). |*out| is malloc'd. */
int capstan_sgn_sign_prepared(capstan_sgn_prepared_t *prep, EVP_PKEY *key, uint8_t **out,
                              size_t *out_len, const char **why);

/* The digest for a header hash id (SHA-1 or SHA-512), or NULL. */
const EVP_MD *capstan_sgn_hash_md(int alg);

/* capstan_sgn_sign = prepare + compute + finish. |*out| is malloc'd. */
int capstan_sgn_sign(const capstan_sgn_params_t *params, EVP_PKEY *key, uint8_t **out,
                     size_t *out_len, const char **why);

/* The encryption fields of a VERSION 2.0 header. */
typedef struct {
  capstan_sgn_bytes_t iv;          /* ENCRYPTION_IV, 16 bytes */
  uint16_t padding;                /* ENCRYPTION_PADDING */
  uint16_t key_size_bits;          /* ENCRYPTION_KEY_SIZE */
  uint8_t key_algorithm;           /* ENCRYPTION_KEY_ALGORITHM (1) */
  capstan_sgn_bytes_t wrapped_key; /* ENCRYPTION_KEY */
  uint8_t hash_alg;                /* ENCRYPTION_HASH_ALGORITHM (1 or 3) */
  capstan_sgn_bytes_t hash;        /* ENCRYPTION_HASH */
} capstan_sgn_enc_info_t;

/* A parsed header. Byte ranges point into the parsed buffer; strings
 * (names, filename) exclude their NUL terminator and contain no NUL. */
typedef struct {
  uint8_t version_major, version_minor;
  uint16_t header_length;
  int has_signer_version;
  uint8_t signer_version_major, signer_version_minor;
  capstan_sgn_bytes_t signer_name;
  capstan_sgn_bytes_t issuer_name;
  capstan_sgn_bytes_t serial;
  uint8_t hash_alg;            /* 1, 2 or 3 as read */
  uint8_t signature_algorithm; /* 0 */
  uint8_t signature_modulus;   /* 0..3 */
  capstan_sgn_bytes_t signature;
  size_t sig_field_offset; /* offset of the SIGNATURE tag byte in the file */
  size_t sig_field_len;    /* 3 + signature.len */
  capstan_sgn_bytes_t filename;
  uint32_t timestamp;
  int has_encryption; /* VERSION 2.0 */
  capstan_sgn_enc_info_t enc;
  unsigned padding_count;
  capstan_sgn_bytes_t payload;
} capstan_sgn_info_t;

/* capstan_sgn_parse reads the header of |file| (|len| bytes) into |out|.
 * Strict: fields in the written order, containers consistent, version 2.0
 * iff the encryption fields are present, SIGNER_VERSION only with version
 * 1.2, HEADER_LENGTH a multiple of 4 and matching the fields plus 0..3
 * PADDING bytes, signature length matching SIGNATURE_MODULUS. Fails with
 * CAPSTAN_EINVAL (|why| says what) on anything else. Never reads outside
 * |file|. */
int capstan_sgn_parse(const uint8_t *file, size_t len, capstan_sgn_info_t *out, const char **why);

/* capstan_sgn_verify parses |file|, cuts the SIGNATURE field out and checks
 * the signature with |signer_pub| (RSA). SHA-256 headers are rejected.
 * Returns 0 if valid, CAPSTAN_EINVAL if malformed or the key does not match
 * SIGNATURE_MODULUS, CAPSTAN_EACCES if the signature does not verify. */
int capstan_sgn_verify(const uint8_t *file, size_t len, EVP_PKEY *signer_pub, const char **why);

/* capstan_sgn_verify_cert is capstan_sgn_verify with the signer's
 * certificate, also checking that SIGNER_NAME, ISSUER_NAME and
 * SERIAL_NUMBER are the certificate's (CAPSTAN_EACCES if not). */
int capstan_sgn_verify_cert(const uint8_t *file, size_t len, X509 *signer_cert, const char **why);

/* capstan_sgn_modulus_code maps an RSA key size in bits to
 * SIGNATURE_MODULUS (512->0, 1024->1, 2048->2, 4096->3); -1 otherwise. */
int capstan_sgn_modulus_code(unsigned bits);

#endif
