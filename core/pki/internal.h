/* Private sharing between the files of core/pki. Not for other modules. */
#ifndef CAPSTAN_CORE_PKI_INTERNAL_H
#define CAPSTAN_CORE_PKI_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/bytestring.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "core/base/error.h"

/* Every failure leaves BoringSSL's thread-local error queue empty, so that a
 * worker thread never accumulates stale errors from earlier requests. */
static inline int pki_fail(int err) {
  ERR_clear_error();
  return err;
}

/* Finishes |cbb| into a malloc'd buffer (callers free with free(), not
 * OPENSSL_free). Cleans |cbb| up in every case. */
int pki_cbb_finish_malloc(CBB *cbb, uint8_t **out, size_t *out_len);

/* The digest for a capstan_hash_t (core/base/phone.h), or NULL. */

#endif
