#include "core/files/sgn.h"

#include <stdio.h>
#include <string.h>

#include "core/base/error.h"

/* Fills |p| for `<name>.sgn`; |filename| is the caller's buffer that |p|
 * points into. */
static int sgnfile_params(const char *name, const uint8_t *content, size_t len, X509 *signer_cert,
                          int hash_alg, uint32_t timestamp, char filename[CAPSTAN_SGN_MAX_NAME],
                          capstan_sgn_params_t *p, const char **why) {
  if (name == NULL || name[0] == '\0' ||
      (size_t)snprintf(filename, CAPSTAN_SGN_MAX_NAME, "%s.sgn", name) >= CAPSTAN_SGN_MAX_NAME) {
    if (why != NULL) *why = "bad file name";
    return CAPSTAN_EINVAL;
  }
  memset(p, 0, sizeof(*p));
  p->version_major = 1;
  p->version_minor = 0;
  p->signer_cert = signer_cert;
  p->hash_alg = hash_alg;
  p->filename = filename;
  p->timestamp = timestamp;
  p->payload = content;
  p->payload_len = len;
  return 0;
}

int capstan_sgnfile_prepare(const char *name, const uint8_t *content, size_t len, X509 *signer_cert,
                            int hash_alg, uint32_t timestamp, capstan_sgn_prepared_t *out,
                            const char **why) {
  char filename[CAPSTAN_SGN_MAX_NAME];
  capstan_sgn_params_t p;
  int rc = sgnfile_params(name, content, len, signer_cert, hash_alg, timestamp, filename, &p, why);
  return rc != 0 ? rc : capstan_sgn_prepare(&p, out, why);
}

int capstan_sgnfile_build(const char *name, const uint8_t *content, size_t len, X509 *signer_cert,
                          EVP_PKEY *signer_key, int hash_alg, uint32_t timestamp, uint8_t **out,
                          size_t *out_len, const char **why) {
  char filename[CAPSTAN_SGN_MAX_NAME];
  capstan_sgn_params_t p;
  *out = NULL;
  *out_len = 0;
  int rc = sgnfile_params(name, content, len, signer_cert, hash_alg, timestamp, filename, &p, why);
  return rc != 0 ? rc : capstan_sgn_sign(&p, signer_key, out, out_len, why);
}

int capstan_sgnfile_parse(const uint8_t *file, size_t len, capstan_sgn_info_t *info,
                          const char **why) {
  int rc = capstan_sgn_parse(file, len, info, why);
  if (rc != 0) return rc;
  if (info->version_major != 1 || info->version_minor != 0) {
    if (why != NULL) *why = "not a VERSION 1.0 signed file";
    return CAPSTAN_EINVAL;
  }
  return 0;
}
