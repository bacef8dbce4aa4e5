/* The online CA's configuration as stored (pki "ca" -> CaConfig): the
 * mapping between the record and capstan_ca_config_t. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/ca/ca.h"
#include "storage/records.h"

/* Copies a stored string into a fixed field; a record holding more than
 * the field takes is refused rather than cut (a cut URL or password would
 * silently talk to something else). */
static int take_string(char *dst, size_t cap, const char *src) {
  if (src == NULL) {
    dst[0] = '\0';
    return 0;
  }
  size_t n = strlen(src);
  if (n >= cap) return CAPSTAN_EINVAL;
  memcpy(dst, src, n + 1);
  return 0;
}

static int take_bytes(uint8_t **dst, size_t *dlen, const ProtobufCBinaryData *src) {
  *dst = NULL;
  *dlen = 0;
  if (src->len == 0) return 0;
  *dst = malloc(src->len);
  if (*dst == NULL) return CAPSTAN_ENOMEM;
  memcpy(*dst, src->data, src->len);
  *dlen = src->len;
  return 0;
}

int capstan_ca_config_read(capstan_txn_t *txn, capstan_ca_config_t *out) {
  capstan_ca_config_init(out);
  Capstan__CaConfig *rec;
  int err = capstan_store_ca_config_get(txn, &rec);
  if (err == CAPSTAN_ENOENT) return 0;
  if (err != 0) return err;
  if ((err = take_string(out->url, sizeof(out->url), rec->url)) != 0 ||
      (err = take_string(out->label, sizeof(out->label), rec->label)) != 0 ||
      (err = take_string(out->template_name, sizeof(out->template_name), rec->template_name)) !=
          0 ||
      (err = take_string(out->username, sizeof(out->username), rec->username)) != 0 ||
      (err = take_string(out->password, sizeof(out->password), rec->password)) != 0 ||
      (err = take_bytes(&out->ca_bundle_pem, &out->ca_bundle_len, &rec->ca_bundle_pem)) != 0) {
    goto done;
  }
  if (rec->has_timeout_seconds) out->timeout_seconds = rec->timeout_seconds;
  if (rec->has_phone_wait_seconds) out->phone_wait_seconds = rec->phone_wait_seconds;
  if (rec->has_max_requests && rec->max_requests > 0) out->max_requests = rec->max_requests;
  if (rec->n_chain_der > 0) {
    out->chain_der = calloc(rec->n_chain_der, sizeof(*out->chain_der));
    out->chain_lens = calloc(rec->n_chain_der, sizeof(*out->chain_lens));
    if (out->chain_der == NULL || out->chain_lens == NULL) {
      err = CAPSTAN_ENOMEM;
      goto done;
    }
    for (size_t i = 0; i < rec->n_chain_der; i++) {
      err = take_bytes(&out->chain_der[i], &out->chain_lens[i], &rec->chain_der[i]);
      if (err != 0) goto done;
      out->chain_count++;
    }
  }
  out->chain_fetched_at = rec->chain_fetched_at;
done:
  capstan__ca_config__free_unpacked(rec, NULL);
  if (err != 0) {
    capstan_ca_config_cleanup(out);
    capstan_ca_config_init(out);
  }
  return err;
}

int capstan_ca_config_write(capstan_txn_t *txn, const capstan_ca_config_t *c) {
  if (c == NULL || c->chain_count > 64) return CAPSTAN_EINVAL;
  Capstan__CaConfig rec = CAPSTAN__CA_CONFIG__INIT;
  rec.has_schema_version = 1;
  rec.schema_version = 1;
  rec.url = (char *)c->url;
  rec.label = c->label[0] ? (char *)c->label : NULL;
  rec.template_name = c->template_name[0] ? (char *)c->template_name : NULL;
  rec.username = c->username[0] ? (char *)c->username : NULL;
  rec.password = c->password[0] ? (char *)c->password : NULL;
  if (c->ca_bundle_pem != NULL && c->ca_bundle_len > 0) {
    rec.has_ca_bundle_pem = 1;
    rec.ca_bundle_pem.data = c->ca_bundle_pem;
    rec.ca_bundle_pem.len = c->ca_bundle_len;
  }
  rec.has_timeout_seconds = 1;
  rec.timeout_seconds = c->timeout_seconds;
  rec.has_phone_wait_seconds = 1;
  rec.phone_wait_seconds = c->phone_wait_seconds;
  rec.has_max_requests = 1;
  rec.max_requests = c->max_requests;
  ProtobufCBinaryData chain[64];
  for (size_t i = 0; i < c->chain_count; i++) {
    chain[i].data = c->chain_der[i];
    chain[i].len = c->chain_lens[i];
  }
  rec.n_chain_der = c->chain_count;
  rec.chain_der = c->chain_count > 0 ? chain : NULL;
  if (c->chain_fetched_at != 0) {
    rec.has_chain_fetched_at = 1;
    rec.chain_fetched_at = c->chain_fetched_at;
  }
  rec.has_updated_at = 1;
  rec.updated_at = (int64_t)time(NULL);
  return capstan_store_ca_config_put(txn, &rec);
}

int capstan_ca_health_write(capstan_txn_t *txn, const capstan_ca_health_t *h) {
  Capstan__CaHealth rec = CAPSTAN__CA_HEALTH__INIT;
  rec.has_last_success_at = h->last_success_at != 0;
  rec.last_success_at = h->last_success_at;
  rec.has_last_error_at = h->last_error_at != 0;
  rec.last_error_at = h->last_error_at;
  rec.last_error = h->last_error[0] != '\0' ? (char *)h->last_error : NULL;
  double ms = h->last_latency_seconds * 1000.0;
  rec.has_last_latency_ms = 1;
  rec.last_latency_ms = ms <= 0 ? 0 : ms >= 4e9 ? UINT32_MAX : (uint32_t)ms;
  rec.has_requests = 1;
  rec.requests = h->requests;
  rec.has_failures = 1;
  rec.failures = h->failures;
  return capstan_store_ca_health_put(txn, &rec);
}
