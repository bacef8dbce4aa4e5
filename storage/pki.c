/* The pki family: the server's identities (Identity, under "capf",
 * "capf_prev", "tftp") and the trust store (TrustCert, by SHA-256). */
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/phone.h"
#include "storage/internal.h"
#include "storage/records.h"

static int identity_key(const char *which) {
  if (which == NULL) return CAPSTAN_EINVAL;
  if (strcmp(which, CAPSTAN_IDENTITY_CAPF) == 0 || strcmp(which, CAPSTAN_IDENTITY_CAPF_PREV) == 0 ||
      strcmp(which, CAPSTAN_IDENTITY_TFTP) == 0) {
    return 0;
  }
  return CAPSTAN_EINVAL;
}

int capstan_store_identity_get(capstan_txn_t *txn, const char *which, Capstan__Identity **out) {
  *out = NULL;
  int err = identity_key(which);
  if (err != 0) return err;
  return capstan_store_get(txn, CAPSTAN_DB_PKI, which, strlen(which),
                           &capstan__identity__descriptor, (ProtobufCMessage **)out);
}

int capstan_store_identity_put(capstan_txn_t *txn, const char *which, const Capstan__Identity *id) {
  int err = identity_key(which);
  if (err != 0 || id == NULL) return CAPSTAN_EINVAL;
  return capstan_store_put(txn, CAPSTAN_DB_PKI, which, strlen(which), &id->base);
}

int capstan_store_identity_delete(capstan_txn_t *txn, const char *which) {
  int err = identity_key(which);
  if (err != 0) return err;
  return capstan_store_del(txn, CAPSTAN_DB_PKI, which, strlen(which));
}

typedef struct {
  const char *which;
  Capstan__Identity **out;
} identity_load_t;

static int identity_load_fn(capstan_txn_t *txn, void *arg) {
  identity_load_t *l = arg;
  return capstan_store_identity_get(txn, l->which, l->out);
}

int capstan_store_identity_load(capstan_store_t *store, const char *which,
                                Capstan__Identity **out) {
  identity_load_t l = {which, out};
  *out = NULL;
  return capstan_store_read(store, identity_load_fn, &l);
}

int capstan_store_trust_get(capstan_txn_t *txn, const uint8_t sha256[32],
                            Capstan__TrustCert **out) {
  return capstan_store_get(txn, CAPSTAN_DB_TRUST, sha256, 32, &capstan__trust_cert__descriptor,
                           (ProtobufCMessage **)out);
}

int capstan_store_trust_put(capstan_txn_t *txn, const Capstan__TrustCert *t) {
  if (t == NULL || t->der.len == 0) return CAPSTAN_EINVAL;
  uint8_t fp[SHA256_DIGEST_LENGTH];
  SHA256(t->der.data, t->der.len, fp);
  return capstan_store_put(txn, CAPSTAN_DB_TRUST, fp, sizeof(fp), &t->base);
}

int capstan_store_trust_delete(capstan_txn_t *txn, const uint8_t sha256[32]) {
  return capstan_store_del(txn, CAPSTAN_DB_TRUST, sha256, 32);
}

typedef struct {
  capstan_store_trust_fn fn;
  void *arg;
} trust_iter_t;

static int trust_iter(const void *key, size_t klen, const ProtobufCMessage *msg, void *arg) {
  trust_iter_t *t = arg;
  if (klen != 32) return 0; /* not a fingerprint key: not ours */
  return t->fn(key, (const Capstan__TrustCert *)msg, t->arg);
}

int capstan_store_trust_iterate(capstan_txn_t *txn, capstan_store_trust_fn fn, void *arg) {
  trust_iter_t t = {fn, arg};
  return capstan_store_iterate(txn, CAPSTAN_DB_TRUST, &capstan__trust_cert__descriptor, trust_iter,
                               &t);
}
