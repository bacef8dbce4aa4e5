/* capstan_ca_config_t's life: defaults, a deep copy, and a cleanup that
 * wipes the password. (Reading and writing it in the store is
 * config_store.c's job.) */
#include <openssl/mem.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/ca/ca.h"
#include "core/ca/internal.h"

void capstan_ca_config_init(capstan_ca_config_t *c) {
  memset(c, 0, sizeof *c);
  c->timeout_seconds = CAPSTAN_CA_DEFAULT_TIMEOUT_SECONDS;
  c->phone_wait_seconds = CAPSTAN_CA_DEFAULT_PHONE_WAIT_SECONDS;
  c->max_requests = CAPSTAN_CA_DEFAULT_MAX_REQUESTS;
}

void capstan_ca_config_cleanup(capstan_ca_config_t *c) {
  if (!c) return;
  free(c->ca_bundle_pem);
  ca_der_list_free(c->chain_der, c->chain_lens, c->chain_count);
  OPENSSL_cleanse(c->password, sizeof c->password);
  capstan_ca_config_init(c);
}

int capstan_ca_config_copy(const capstan_ca_config_t *src, capstan_ca_config_t *dst) {
  capstan_ca_config_init(dst);
  memcpy(dst->url, src->url, sizeof dst->url);
  memcpy(dst->label, src->label, sizeof dst->label);
  memcpy(dst->template_name, src->template_name, sizeof dst->template_name);
  memcpy(dst->username, src->username, sizeof dst->username);
  memcpy(dst->password, src->password, sizeof dst->password);
  dst->timeout_seconds = src->timeout_seconds;
  dst->phone_wait_seconds = src->phone_wait_seconds;
  dst->max_requests = src->max_requests;
  dst->chain_fetched_at = src->chain_fetched_at;
  if (src->ca_bundle_pem && src->ca_bundle_len) {
    dst->ca_bundle_pem = malloc(src->ca_bundle_len);
    if (!dst->ca_bundle_pem) goto nomem;
    memcpy(dst->ca_bundle_pem, src->ca_bundle_pem, src->ca_bundle_len);
    dst->ca_bundle_len = src->ca_bundle_len;
  }
  for (size_t i = 0; i < src->chain_count; i++) {
    if (ca_der_list_append(&dst->chain_der, &dst->chain_lens, &dst->chain_count, src->chain_der[i],
                           src->chain_lens[i]) != 0) {
      goto nomem;
    }
  }
  return 0;
nomem:
  capstan_ca_config_cleanup(dst);
  return CAPSTAN_ENOMEM;
}

const char *capstan_ca_outcome_name(capstan_ca_outcome_t o) {
  switch (o) {
    case CAPSTAN_CA_ISSUED:
      return "issued";
    case CAPSTAN_CA_PENDING:
      return "pending";
    case CAPSTAN_CA_REFUSED:
      return "refused";
    case CAPSTAN_CA_UNAVAILABLE:
      return "unavailable";
    case CAPSTAN_CA_TIMED_OUT:
      return "timeout";
    case CAPSTAN_CA_BAD_CERT:
      return "bad_cert";
  }
  return "unknown";
}

void capstan_ca_result_cleanup(capstan_ca_result_t *r) {
  if (!r) return;
  free(r->cert_der);
  ca_der_list_free(r->chain_der, r->chain_lens, r->chain_count);
  memset(r, 0, sizeof *r);
}
