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

/* --- Loading the snapshot ------------------------------------------------- */

capstan_identities_t *capstan_identities_ref(capstan_identities_t *ids) {
  if (ids != NULL) atomic_fetch_add(&ids->refs, 1);
  return ids;
}

void capstan_identities_unref(capstan_identities_t *ids) {
  if (ids == NULL || atomic_fetch_sub(&ids->refs, 1) != 1) return;
  capstan_identity_cleanup(&ids->capf);
  capstan_identity_cleanup(&ids->tftp);
  X509_free(ids->capf_prev);
  sk_X509_pop_free(ids->capf_trust, X509_free);
  free(ids);
}

/* Reads |which| into |id| (certificate, key and chain) or, with |id| NULL,
 * only its certificate into |*cert_only|. */
static int load_identity(capstan_store_t *store, const char *which, capstan_identity_t *id,
                         X509 **cert_only) {
  Capstan__Identity *rec = NULL;
  int rc = capstan_store_identity_load(store, which, &rec);
  if (rc < 0) return rc;
  if (id == NULL) {
    rc = capstan_pki_parse_cert(rec->cert_der.data, rec->cert_der.len, cert_only);
    goto out;
  }
  rc = capstan_identity_from_der(rec->cert_der.data, rec->cert_der.len, rec->key_der.data,
                                 rec->key_der.len, id);
  if (rc == 0 && rec->n_chain_der > 0) {
    const uint8_t *ders[16];
    size_t lens[16];
    size_t n = rec->n_chain_der < 16 ? rec->n_chain_der : 16;
    for (size_t i = 0; i < n; i++) {
      ders[i] = rec->chain_der[i].data;
      lens[i] = rec->chain_der[i].len;
    }
    rc = capstan_identity_set_chain_der(id, ders, lens, n);
  }
out:
  capstan__identity__free_unpacked(rec, NULL);
  return rc;
}

typedef struct trust_collect {
  STACK_OF(X509) * trust;
  int rc;
} trust_collect_t;

static int collect_trust(const uint8_t sha256[32], const Capstan__TrustCert *t, void *arg) {
  (void)sha256;
  trust_collect_t *c = arg;
  if (t->purpose != NULL && strcmp(t->purpose, "capf-trust") != 0) return 0;
  X509 *cert = NULL;
  if (capstan_pki_parse_cert(t->der.data, t->der.len, &cert) < 0) {
    /* One bad upload must not keep the server from starting. */
    LOG_WARN("event=capf_trust_entry_unparsable");
    return 0;
  }
  if (!sk_X509_push(c->trust, cert)) {
    X509_free(cert);
    c->rc = CAPSTAN_ENOMEM;
    return CAPSTAN_ENOMEM;
  }
  return 0;
}

static int read_trust(capstan_txn_t *txn, void *arg) {
  return capstan_store_trust_iterate(txn, collect_trust, arg);
}

static int push_cert(STACK_OF(X509) * sk, X509 *cert) {
  if (cert == NULL) return 0;
  if (!sk_X509_push(sk, cert)) return CAPSTAN_ENOMEM;
  X509_up_ref(cert);
  return 0;
}

static int load_capf_trust(capstan_store_t *store, capstan_identities_t *ids) {
  ids->capf_trust = sk_X509_new_null();
  if (ids->capf_trust == NULL) return CAPSTAN_ENOMEM;
  if (push_cert(ids->capf_trust, ids->capf.cert) < 0) return CAPSTAN_ENOMEM;
  for (size_t i = 0; ids->capf.chain && i < sk_X509_num(ids->capf.chain); i++) {
    if (push_cert(ids->capf_trust, sk_X509_value(ids->capf.chain, i)) < 0) return CAPSTAN_ENOMEM;
  }
  if (push_cert(ids->capf_trust, ids->capf_prev) < 0) return CAPSTAN_ENOMEM;
  trust_collect_t collect = {.trust = ids->capf_trust};
  /* A read error leaves the built-in anchors only, as before uploads. */
  capstan_store_read(store, read_trust, &collect);
  return collect.rc;
}

int capstan_identities_load(capstan_store_t *store, unsigned what, capstan_identities_t **out) {
  if (what & CAPSTAN_IDENTITIES_CAPF_TRUST) what |= CAPSTAN_IDENTITIES_CAPF;
  capstan_identities_t *ids = calloc(1, sizeof(*ids));
  if (ids == NULL) return CAPSTAN_ENOMEM;
  atomic_init(&ids->refs, 1);
  int rc = 0;
  if (what & CAPSTAN_IDENTITIES_TFTP) {
    rc = load_identity(store, CAPSTAN_IDENTITY_TFTP, &ids->tftp, NULL);
    if (rc < 0) goto err;
  }
  if (what & CAPSTAN_IDENTITIES_CAPF) {
    rc = load_identity(store, CAPSTAN_IDENTITY_CAPF, &ids->capf, NULL);
    if (rc < 0) goto err;
  }
  /* Optional: there is a previous certificate only after a CAPF change. */
  if (load_identity(store, CAPSTAN_IDENTITY_CAPF_PREV, NULL, &ids->capf_prev) < 0) {
    ids->capf_prev = NULL;
  }
  if (what & CAPSTAN_IDENTITIES_CAPF_TRUST) {
    rc = load_capf_trust(store, ids);
    if (rc < 0) goto err;
  }
  *out = ids;
  return 0;
err:
  capstan_identities_unref(ids);
  return rc;
}
