/* The pki family: the server's identities (Identity, under "capf" and
 * "tftp"), the pending CAPF key, the replaced CAPF certificates
 * (PreviousCapf, by SHA-256) and the trust store (TrustCert, by SHA-256). */
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
  if (strcmp(which, CAPSTAN_IDENTITY_CAPF) == 0 || strcmp(which, CAPSTAN_IDENTITY_TFTP) == 0) {
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

#define PENDING_KEY "capf_pending"

int capstan_store_capf_pending_get(capstan_txn_t *txn, Capstan__PendingCapfKey **out) {
  return capstan_store_get(txn, CAPSTAN_DB_PKI, PENDING_KEY, strlen(PENDING_KEY),
                           &capstan__pending_capf_key__descriptor, (ProtobufCMessage **)out);
}

int capstan_store_capf_pending_put(capstan_txn_t *txn, const Capstan__PendingCapfKey *p) {
  if (p == NULL || p->key_der.len == 0) return CAPSTAN_EINVAL;
  return capstan_store_put(txn, CAPSTAN_DB_PKI, PENDING_KEY, strlen(PENDING_KEY), &p->base);
}

int capstan_store_capf_pending_delete(capstan_txn_t *txn) {
  return capstan_store_del(txn, CAPSTAN_DB_PKI, PENDING_KEY, strlen(PENDING_KEY));
}

int capstan_store_capf_previous_get(capstan_txn_t *txn, const uint8_t sha256[32],
                                    Capstan__PreviousCapf **out) {
  return capstan_store_get(txn, CAPSTAN_DB_CAPF_PREVIOUS, sha256, 32,
                           &capstan__previous_capf__descriptor, (ProtobufCMessage **)out);
}

int capstan_store_capf_previous_put(capstan_txn_t *txn, const Capstan__PreviousCapf *p) {
  if (p == NULL || p->cert_der.len == 0) return CAPSTAN_EINVAL;
  uint8_t fp[SHA256_DIGEST_LENGTH];
  SHA256(p->cert_der.data, p->cert_der.len, fp);
  return capstan_store_put(txn, CAPSTAN_DB_CAPF_PREVIOUS, fp, sizeof(fp), &p->base);
}

typedef struct {
  capstan_store_capf_previous_fn fn;
  void *arg;
} previous_iter_t;

static int previous_iter(const void *key, size_t klen, const ProtobufCMessage *msg, void *arg) {
  (void)key;
  previous_iter_t *t = arg;
  if (klen != SHA256_DIGEST_LENGTH) return 0;
  return t->fn((const Capstan__PreviousCapf *)msg, t->arg);
}

int capstan_store_capf_previous_iterate(capstan_txn_t *txn, capstan_store_capf_previous_fn fn,
                                        void *arg) {
  previous_iter_t t = {fn, arg};
  return capstan_store_iterate(txn, CAPSTAN_DB_CAPF_PREVIOUS, &capstan__previous_capf__descriptor,
                               previous_iter, &t);
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

/* ---- Trust-store membership ------------------------------------------- */

#define PURPOSE_DEFAULT "capf-trust"

/* Moves a schema 1 record's single |purpose| into |purposes|. */
static int trust_upgrade(Capstan__TrustCert *t) {
  if (t->n_purposes > 0) return 0;
  const char *only = t->purpose != NULL && t->purpose[0] != '\0' ? t->purpose : PURPOSE_DEFAULT;
  char **list = malloc(sizeof(*list));
  char *copy = strdup(only);
  if (list == NULL || copy == NULL) {
    free(list);
    free(copy);
    return CAPSTAN_ENOMEM;
  }
  list[0] = copy;
  t->purposes = list;
  t->n_purposes = 1;
  free(t->purpose);
  t->purpose = NULL;
  return 0;
}

bool capstan_store_trust_in(const Capstan__TrustCert *t, const char *purpose) {
  if (t == NULL || purpose == NULL) return false;
  if (t->n_purposes == 0) {
    const char *only = t->purpose != NULL && t->purpose[0] != '\0' ? t->purpose : PURPOSE_DEFAULT;
    return strcmp(only, purpose) == 0;
  }
  for (size_t i = 0; i < t->n_purposes; i++) {
    if (t->purposes[i] != NULL && strcmp(t->purposes[i], purpose) == 0) return true;
  }
  return false;
}

int capstan_store_trust_add_purpose(Capstan__TrustCert *t, const char *purpose) {
  if (t == NULL || purpose == NULL) return CAPSTAN_EINVAL;
  bool fresh = t->n_purposes == 0 && (t->purpose == NULL || t->purpose[0] == '\0');
  if (!fresh) {
    if (capstan_store_trust_in(t, purpose)) return 0;
    int rc = trust_upgrade(t);
    if (rc != 0) return rc;
  }
  char **list = realloc(t->purposes, (t->n_purposes + 1) * sizeof(*list));
  if (list == NULL) return CAPSTAN_ENOMEM;
  t->purposes = list;
  char *copy = strdup(purpose);
  if (copy == NULL) return CAPSTAN_ENOMEM;
  list[t->n_purposes++] = copy;
  return 0;
}

int capstan_store_trust_remove_purpose(Capstan__TrustCert *t, const char *purpose, size_t *left) {
  if (t == NULL || purpose == NULL || left == NULL) return CAPSTAN_EINVAL;
  int rc = trust_upgrade(t);
  if (rc != 0) return rc;
  size_t kept = 0;
  for (size_t i = 0; i < t->n_purposes; i++) {
    if (strcmp(t->purposes[i], purpose) == 0) {
      free(t->purposes[i]);
    } else {
      t->purposes[kept++] = t->purposes[i];
    }
  }
  t->n_purposes = kept;
  *left = kept;
  return 0;
}
