#include "core/identities.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/pki/pki.h"
#include "storage/records.h"

typedef struct put_identity {
  const char *which;
  Capstan__Identity rec;
} put_identity_t;

static int put_identities(capstan_txn_t *txn, void *arg) {
  put_identity_t *ids = arg;
  for (int i = 0; i < 2; i++) {
    if (ids[i].which == NULL) continue;
    int rc = capstan_store_identity_put(txn, ids[i].which, &ids[i].rec);
    if (rc < 0) return rc;
  }
  return 0;
}

static int make_identity(const char *which, const char *subject_extra, put_identity_t *out) {
  capstan_identity_t id = {0};
  int rc = strcmp(which, CAPSTAN_IDENTITY_CAPF) == 0 ? capstan_pki_create_capf(subject_extra, &id)
                                                     : capstan_pki_create_tftp(subject_extra, &id);
  if (rc < 0) return rc;
  uint8_t *cert = NULL, *key = NULL;
  size_t cert_len = 0, key_len = 0;
  rc = capstan_identity_to_der(&id, &cert, &cert_len, &key, &key_len);
  capstan_identity_cleanup(&id);
  if (rc < 0) return rc;
  capstan__identity__init(&out->rec);
  out->which = which;
  out->rec.cert_der.data = cert;
  out->rec.cert_der.len = cert_len;
  out->rec.key_der.data = key;
  out->rec.key_der.len = key_len;
  out->rec.has_created_at = 1;
  out->rec.created_at = (int64_t)time(NULL);
  return 0;
}

static int has_identity(capstan_store_t *store, const char *which) {
  Capstan__Identity *rec = NULL;
  if (capstan_store_identity_load(store, which, &rec) < 0) return 0;
  capstan__identity__free_unpacked(rec, NULL);
  return 1;
}

int capstan_init_identities(capstan_store_t *store, const char *subject_extra, int *created) {
  static const char *const kWhich[2] = {CAPSTAN_IDENTITY_CAPF, CAPSTAN_IDENTITY_TFTP};
  put_identity_t ids[2] = {{0}};
  int rc = 0;
  *created = 0;
  for (int i = 0; i < 2; i++) {
    if (has_identity(store, kWhich[i])) continue;
    rc = make_identity(kWhich[i], subject_extra, &ids[i]);
    if (rc < 0) {
      LOG_ERROR("event=init_identity_failed which=%s error=%s", kWhich[i], capstan_strerror(rc));
      goto out;
    }
    (*created)++;
  }
  if (*created > 0) {
    rc = capstan_store_write(store, put_identities, ids);
    if (rc < 0) LOG_ERROR("event=init_store_failed error=%s", capstan_strerror(rc));
  }
out:
  for (int i = 0; i < 2; i++) {
    free(ids[i].rec.cert_der.data);
    free(ids[i].rec.key_der.data);
  }
  if (rc < 0) *created = 0;
  return rc;
}
