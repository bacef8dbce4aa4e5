/* The external CA's records: phones' certificate requests (CertRequest, in
 * the csr database, keyed by the SHA-256 of the request's public key), and
 * the CA's configuration and health (CaConfig "ca" and CaHealth "ca_health"
 * in the pki database). */
#include <string.h>

#include "core/base/error.h"
#include "storage/internal.h"
#include "storage/records.h"

#define CSR_KEY_LEN 32

int capstan_store_csr_get(capstan_txn_t *txn, const uint8_t key[32], Capstan__CertRequest **out) {
  *out = NULL;
  if (key == NULL) return CAPSTAN_EINVAL;
  return capstan_store_get(txn, CAPSTAN_DB_CSR, key, CSR_KEY_LEN,
                           &capstan__cert_request__descriptor, (ProtobufCMessage **)out);
}

int capstan_store_csr_put(capstan_txn_t *txn, const uint8_t key[32],
                          const Capstan__CertRequest *r) {
  if (key == NULL || r == NULL || r->device == NULL || r->public_key.len == 0 ||
      r->csr_der.len == 0) {
    return CAPSTAN_EINVAL;
  }
  return capstan_store_put(txn, CAPSTAN_DB_CSR, key, CSR_KEY_LEN, &r->base);
}

int capstan_store_csr_delete(capstan_txn_t *txn, const uint8_t key[32]) {
  if (key == NULL) return CAPSTAN_EINVAL;
  return capstan_store_del(txn, CAPSTAN_DB_CSR, key, CSR_KEY_LEN);
}

typedef struct {
  capstan_store_csr_fn fn;
  void *arg;
} csr_iter_t;

static int csr_iter(const void *key, size_t klen, const ProtobufCMessage *msg, void *arg) {
  csr_iter_t *t = arg;
  if (klen != CSR_KEY_LEN) return 0; /* not a request key: not ours */
  return t->fn(key, (const Capstan__CertRequest *)msg, t->arg);
}

int capstan_store_csr_iterate(capstan_txn_t *txn, capstan_store_csr_fn fn, void *arg) {
  csr_iter_t t = {fn, arg};
  return capstan_store_iterate(txn, CAPSTAN_DB_CSR, &capstan__cert_request__descriptor, csr_iter,
                               &t);
}

int capstan_store_ca_config_get(capstan_txn_t *txn, Capstan__CaConfig **out) {
  *out = NULL;
  return capstan_store_get(txn, CAPSTAN_DB_PKI, CAPSTAN_PKI_CA_CONFIG,
                           strlen(CAPSTAN_PKI_CA_CONFIG), &capstan__ca_config__descriptor,
                           (ProtobufCMessage **)out);
}

int capstan_store_ca_config_put(capstan_txn_t *txn, const Capstan__CaConfig *c) {
  if (c == NULL) return CAPSTAN_EINVAL;
  return capstan_store_put(txn, CAPSTAN_DB_PKI, CAPSTAN_PKI_CA_CONFIG,
                           strlen(CAPSTAN_PKI_CA_CONFIG), &c->base);
}

int capstan_store_ca_health_get(capstan_txn_t *txn, Capstan__CaHealth **out) {
  *out = NULL;
  return capstan_store_get(txn, CAPSTAN_DB_PKI, CAPSTAN_PKI_CA_HEALTH,
                           strlen(CAPSTAN_PKI_CA_HEALTH), &capstan__ca_health__descriptor,
                           (ProtobufCMessage **)out);
}

int capstan_store_ca_health_put(capstan_txn_t *txn, const Capstan__CaHealth *h) {
  if (h == NULL) return CAPSTAN_EINVAL;
  return capstan_store_put(txn, CAPSTAN_DB_PKI, CAPSTAN_PKI_CA_HEALTH,
                           strlen(CAPSTAN_PKI_CA_HEALTH), &h->base);
}
