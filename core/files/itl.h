/* Identity Trust List: `ITLSEP<MAC>.tlv` and `ITLFile.tlv` (same content,
 * different FILENAME). Format: docs/spec/file-formats.md, "ITL".
 *
 * The file is a signed header (sgnhdr.h) with VERSION 1.2 and
 * SIGNER_VERSION after HEADER_LENGTH, followed by records. A record is a
 * sequence of `tag u8 | len u16 | value` fields starting with RECORD_LENGTH
 * (value: u16 length of the whole record, this 5-byte field included).
 * Written order: RECORD_LENGTH, [DNS_NAME], SUBJECT_NAME, ROLE, ISSUER_NAME,
 * SERIAL_NUMBER, PUBLIC_KEY, SIGNATURE, CERTIFICATE.
 *
 * The first record is always the signer in role SAST, with the header's
 * serial; the writer adds it from the signer certificate, then one record
 * per entry the caller gives (TFTP, CAPF, previous CAPF while rolling over,
 * ...), in the caller's order. */
#ifndef CAPSTAN_CORE_FILES_ITL_H
#define CAPSTAN_CORE_FILES_ITL_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>

#include "core/files/sgnhdr.h"

/* Roles (ROLE field). */
enum {
  CAPSTAN_ITL_ROLE_SAST = 0,
  CAPSTAN_ITL_ROLE_CCM = 1,
  CAPSTAN_ITL_ROLE_CCM_TFTP = 2,
  CAPSTAN_ITL_ROLE_TFTP = 3,
  CAPSTAN_ITL_ROLE_CAPF = 4,
  CAPSTAN_ITL_ROLE_APP_SERVER = 7,
  CAPSTAN_ITL_ROLE_TVS = 21,
};

/* Record field tags. */
enum {
  CAPSTAN_ITL_TAG_RECORD_LENGTH = 1,
  CAPSTAN_ITL_TAG_DNS_NAME = 2,
  CAPSTAN_ITL_TAG_SUBJECT_NAME = 3,
  CAPSTAN_ITL_TAG_ROLE = 4,
  CAPSTAN_ITL_TAG_ISSUER_NAME = 5,
  CAPSTAN_ITL_TAG_SERIAL_NUMBER = 6,
  CAPSTAN_ITL_TAG_PUBLIC_KEY = 7,
  CAPSTAN_ITL_TAG_SIGNATURE = 8,
  CAPSTAN_ITL_TAG_CERTIFICATE = 9,
  CAPSTAN_ITL_TAG_IP_ADDRESS = 10,
  CAPSTAN_ITL_TAG_CERTIFICATE_HASH = 11,
  CAPSTAN_ITL_TAG_HASH_ALGORITHM = 12,
};

#define CAPSTAN_ITL_MAX_RECORDS 64u

/* One certificate to list. |cert| is borrowed. |dns_name| may be NULL. */
typedef struct {
  X509 *cert;
  uint16_t role;
  const char *dns_name;
} capstan_itl_entry_t;

typedef struct {
  X509 *signer_cert; /* TFTP certificate: header signer and SAST record */
  const capstan_itl_entry_t *entries;
  size_t n_entries;             /* at most CAPSTAN_ITL_MAX_RECORDS - 1 */
  const char *filename;         /* "ITLSEP<MAC>.tlv" or "ITLFile.tlv" */
  int hash_alg;                 /* CAPSTAN_SGN_HASH_SHA1 or _SHA512 */
  uint8_t signer_version_minor; /* SIGNER_VERSION 1.0 or 1.1 */
  uint32_t timestamp;
} capstan_itl_params_t;

/* capstan_itl_device_filename writes "ITLSEP<MAC>.tlv" into |out| for a
 * MAC of 12 upper-case hex digits. CAPSTAN_EINVAL for another MAC,
 * CAPSTAN_ERANGE if |cap| < 20. */
int capstan_itl_device_filename(const char *mac, char *out, size_t cap);

/* capstan_itl_prepare builds the ITL for signing (see sgnhdr.h for the
 * compute/finish steps). CAPSTAN_EINVAL (|why| says) for a certificate
 * whose key is neither RSA nor EC, a signer version other than 1.0/1.1,
 * too many entries, a record over 65535 bytes, or any header error. */
int capstan_itl_prepare(const capstan_itl_params_t *params, capstan_sgn_prepared_t *out,
                        const char **why);

/* capstan_itl_build = prepare + sign with |signer_key| + finish. |*out| is
 * malloc'd; caller frees with free(). */
int capstan_itl_build(const capstan_itl_params_t *params, EVP_PKEY *signer_key, uint8_t **out,
                      size_t *out_len, const char **why);

/* A parsed record; byte ranges point into the parsed file. Optional fields
 * absent have data == NULL. Names exclude their NUL. */
typedef struct {
  uint16_t record_length;
  capstan_sgn_bytes_t dns_name;
  capstan_sgn_bytes_t subject_name;
  uint16_t role;
  capstan_sgn_bytes_t issuer_name;
  capstan_sgn_bytes_t serial;
  capstan_sgn_bytes_t public_key;
  capstan_sgn_bytes_t signature;
  capstan_sgn_bytes_t certificate;
  capstan_sgn_bytes_t ip_address;
  capstan_sgn_bytes_t certificate_hash;
  int has_hash_algorithm;
  uint8_t hash_algorithm;
} capstan_itl_record_t;

typedef struct {
  capstan_sgn_info_t header;
  size_t n_records;
  capstan_itl_record_t records[CAPSTAN_ITL_MAX_RECORDS];
} capstan_itl_info_t;

/* capstan_itl_parse reads an ITL: header (VERSION 1.2 with SIGNER_VERSION)
 * and records, and checks the rules: at least one record, the first in role
 * SAST with the header's serial. Mandatory record fields: SUBJECT_NAME,
 * ROLE, ISSUER_NAME, SERIAL_NUMBER, PUBLIC_KEY, SIGNATURE, CERTIFICATE; no
 * field twice, no unknown tag, nothing left over. Does not verify the
 * signature (capstan_sgn_verify) nor the certificates
 * (capstan_itl_check_record). CAPSTAN_EINVAL on any violation. */
int capstan_itl_parse(const uint8_t *file, size_t len, capstan_itl_info_t *out, const char **why);

/* capstan_itl_check_record decodes the record's CERTIFICATE and checks that
 * SUBJECT_NAME, ISSUER_NAME, SERIAL_NUMBER, PUBLIC_KEY and SIGNATURE are the
 * certificate's. 0 if they match, CAPSTAN_EINVAL (|why| says which) if not,
 * CAPSTAN_ENOMEM. */
int capstan_itl_check_record(const capstan_itl_record_t *rec, const char **why);

#endif
