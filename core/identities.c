#include "core/identities.h"

#include <openssl/mem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/capf_lifecycle.h"
#include "core/pki/pki.h"
#include "storage/records.h"

typedef struct put_identity {
  const char *which;
  Capstan__Identity rec;
  char serial[2 * 20 + 1]; /* hex, for the audit event */
  bool stored;             /* put by this call (not found there) */
} put_identity_t;

/* Both identities and one audit event naming what was created. An
 * identity that is in the store by now is kept (another node initialising
 * the same shared store at once stored it first: the store has one CAPF
 * and one TFTP identity, never one per node); |stored| counts ours. */
static int put_identities(capstan_txn_t *txn, void *arg) {
  put_identity_t *ids = arg;
  char detail[160] = "";
  size_t used = 0;
  for (int i = 0; i < 2; i++) {
    ids[i].stored = false;
    if (ids[i].which == NULL) continue;
    Capstan__Identity *there = NULL;
    int rc = capstan_store_identity_get(txn, ids[i].which, &there);
    capstan__identity__free_unpacked(there, NULL);
    if (rc == 0) continue;
    if (rc != CAPSTAN_ENOENT) return rc;
    ids[i].stored = true;
    rc = capstan_store_identity_put(txn, ids[i].which, &ids[i].rec);
    if (rc < 0) return rc;
    int n = snprintf(detail + used, sizeof(detail) - used, "%s%s_serial=%s", used ? " " : "",
                     ids[i].which, ids[i].serial);
    if (n > 0 && (size_t)n < sizeof(detail) - used) used += (size_t)n;
  }
  if (used == 0) return 0;
  return capstan_store_audit_append(txn, 0, NULL, "identities_created", detail);
}

static int make_identity(const char *which, const char *subject_extra, put_identity_t *out) {
  capstan_identity_t id = {0};
  int rc = strcmp(which, CAPSTAN_IDENTITY_CAPF) == 0 ? capstan_pki_create_capf(subject_extra, &id)
                                                     : capstan_pki_create_tftp(subject_extra, &id);
  if (rc < 0) return rc;
  uint8_t serial[20];
  size_t serial_len = 0;
  snprintf(out->serial, sizeof(out->serial), "?");
  if (capstan_pki_serial_bytes(id.cert, serial, sizeof(serial), &serial_len) == 0) {
    for (size_t i = 0; i < serial_len; i++) {
      snprintf(out->serial + 2 * i, sizeof(out->serial) - 2 * i, "%02x", serial[i]);
    }
  }
  rc = capstan_identity_record(&id, (int64_t)time(NULL), &out->rec);
  capstan_identity_cleanup(&id);
  if (rc < 0) return rc;
  out->which = which;
  return 0;
}

int capstan_identity_record(const capstan_identity_t *id, int64_t now, Capstan__Identity *out) {
  capstan__identity__init(out);
  uint8_t *cert = NULL, *key = NULL, **chain = NULL;
  size_t cert_len = 0, key_len = 0, *chain_lens = NULL, n = 0;
  int rc = capstan_identity_to_der(id, &cert, &cert_len, &key, &key_len);
  if (rc == 0) rc = capstan_identity_chain_to_der(id, &chain, &chain_lens, &n);
  if (rc < 0) {
    free(cert);
    if (key != NULL) OPENSSL_cleanse(key, key_len);
    free(key);
    return rc;
  }
  out->cert_der = (ProtobufCBinaryData){cert_len, cert};
  out->key_der = (ProtobufCBinaryData){key_len, key};
  out->has_created_at = 1;
  out->created_at = now;
  if (n > 0) {
    out->chain_der = calloc(n, sizeof(*out->chain_der));
    if (out->chain_der == NULL) {
      capstan_pki_der_array_free(chain, chain_lens, n);
      capstan_identity_record_free(out);
      return CAPSTAN_ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
      out->chain_der[i] = (ProtobufCBinaryData){chain_lens[i], chain[i]};
    out->n_chain_der = n;
    free(chain); /* the buffers now belong to the record */
    free(chain_lens);
  }
  return 0;
}

void capstan_identity_record_free(Capstan__Identity *rec) {
  if (rec == NULL) return;
  free(rec->cert_der.data);
  if (rec->key_der.data != NULL) OPENSSL_cleanse(rec->key_der.data, rec->key_der.len);
  free(rec->key_der.data);
  for (size_t i = 0; i < rec->n_chain_der; i++) free(rec->chain_der[i].data);
  free(rec->chain_der);
  capstan__identity__init(rec);
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
    *created = (int)ids[0].stored + (int)ids[1].stored;
  }
out:
  for (int i = 0; i < 2; i++) capstan_identity_record_free(&ids[i].rec);
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
  sk_X509_pop_free(ids->capf_previous, X509_free);
  sk_X509_pop_free(ids->capf_trust, X509_free);
  sk_X509_pop_free(ids->capf_intermediates, X509_free);
  free(ids);
}

int capstan_identity_get(capstan_txn_t *txn, const char *which, capstan_identity_t *id) {
  Capstan__Identity *rec = NULL;
  int rc = capstan_store_identity_get(txn, which, &rec);
  if (rc < 0) return rc;
  rc = capstan_identity_from_der(rec->cert_der.data, rec->cert_der.len, rec->key_der.data,
                                 rec->key_der.len, id);
  if (rc == 0 && rec->n_chain_der > 0) {
    const uint8_t *ders[CAPSTAN_PKI_MAX_CHAIN];
    size_t lens[CAPSTAN_PKI_MAX_CHAIN];
    size_t n = rec->n_chain_der < CAPSTAN_PKI_MAX_CHAIN ? rec->n_chain_der : CAPSTAN_PKI_MAX_CHAIN;
    for (size_t i = 0; i < n; i++) {
      ders[i] = rec->chain_der[i].data;
      lens[i] = rec->chain_der[i].len;
    }
    rc = capstan_identity_set_chain_der(id, ders, lens, n);
    if (rc < 0) capstan_identity_cleanup(id);
  }
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
  if (!capstan_store_trust_in(t, CAPSTAN_TRUST_PURPOSE_CAPF)) return 0;
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

static int push_cert(STACK_OF(X509) * sk, X509 *cert) {
  if (cert == NULL) return 0;
  if (!sk_X509_push(sk, cert)) return CAPSTAN_ENOMEM;
  X509_up_ref(cert);
  return 0;
}

static int push_all(STACK_OF(X509) * dst, STACK_OF(X509) * src) {
  for (size_t i = 0; src != NULL && i < sk_X509_num(src); i++) {
    if (push_cert(dst, sk_X509_value(src, i)) < 0) return CAPSTAN_ENOMEM;
  }
  return 0;
}

typedef struct load_ctx {
  unsigned what;
  capstan_identities_t *ids;
} load_ctx_t;

static int load_previous(capstan_txn_t *txn, capstan_identities_t *ids) {
  capstan_capf_previous_t *prev = NULL;
  size_t n = 0;
  int rc =
      capstan_capf_previous_trusted(txn, (int64_t)time(NULL), &prev, &n, &ids->capf_previous_until);
  for (size_t i = 0; rc == 0 && i < n; i++) rc = push_cert(ids->capf_previous, prev[i].cert);
  capstan_capf_previous_free(prev, n);
  return rc;
}

/* The online CA's chain (the issuing CAs under a root in CAPF-trust):
 * untrusted intermediates for "by existing certificate". */
static int load_ca_chain(capstan_txn_t *txn, capstan_identities_t *ids) {
  ids->capf_intermediates = sk_X509_new_null();
  if (ids->capf_intermediates == NULL) return CAPSTAN_ENOMEM;
  Capstan__CaConfig *cfg = NULL;
  int rc = capstan_store_ca_config_get(txn, &cfg);
  if (rc == CAPSTAN_ENOENT) return 0;
  if (rc < 0) {
    LOG_WARN("event=ca_config_unreadable error=%s", capstan_strerror(rc));
    return 0;
  }
  for (size_t i = 0; i < cfg->n_chain_der; i++) {
    X509 *cert = NULL;
    if (capstan_pki_parse_cert(cfg->chain_der[i].data, cfg->chain_der[i].len, &cert) < 0) continue;
    if (!sk_X509_push(ids->capf_intermediates, cert)) {
      X509_free(cert);
      rc = CAPSTAN_ENOMEM;
      break;
    }
  }
  capstan__ca_config__free_unpacked(cfg, NULL);
  return rc < 0 ? rc : 0;
}

/* Anchors for "by existing certificate": the live CAPF and its issuers,
 * the trusted previous CAPFs and the CAPF-trust store. */
static int load_capf_trust(capstan_txn_t *txn, capstan_identities_t *ids) {
  ids->capf_trust = sk_X509_new_null();
  if (ids->capf_trust == NULL) return CAPSTAN_ENOMEM;
  if (push_cert(ids->capf_trust, ids->capf.cert) < 0 ||
      push_all(ids->capf_trust, ids->capf.chain) < 0 ||
      push_all(ids->capf_trust, ids->capf_previous) < 0) {
    return CAPSTAN_ENOMEM;
  }
  trust_collect_t collect = {.trust = ids->capf_trust};
  int rc = capstan_store_trust_iterate(txn, collect_trust, &collect);
  if (collect.rc < 0) return collect.rc;
  /* A read error leaves the built-in anchors only, as before uploads. */
  if (rc < 0) LOG_WARN("event=capf_trust_unreadable error=%s", capstan_strerror(rc));
  return load_ca_chain(txn, ids);
}

static int load_all(capstan_txn_t *txn, void *arg) {
  load_ctx_t *l = arg;
  capstan_identities_t *ids = l->ids;
  int rc = 0;
  if (l->what & CAPSTAN_IDENTITIES_TFTP) {
    rc = capstan_identity_get(txn, CAPSTAN_IDENTITY_TFTP, &ids->tftp);
    if (rc < 0) return rc;
  }
  if (l->what & CAPSTAN_IDENTITIES_CAPF) {
    rc = capstan_identity_get(txn, CAPSTAN_IDENTITY_CAPF, &ids->capf);
    if (rc < 0) return rc;
  }
  rc = load_previous(txn, ids);
  if (rc < 0) return rc;
  if (l->what & CAPSTAN_IDENTITIES_CAPF_TRUST) rc = load_capf_trust(txn, ids);
  return rc;
}

int capstan_identities_load(capstan_store_t *store, unsigned what, capstan_identities_t **out) {
  if (what & CAPSTAN_IDENTITIES_CAPF_TRUST) what |= CAPSTAN_IDENTITIES_CAPF;
  capstan_identities_t *ids = calloc(1, sizeof(*ids));
  if (ids == NULL) return CAPSTAN_ENOMEM;
  atomic_init(&ids->refs, 1);
  ids->capf_previous = sk_X509_new_null();
  if (ids->capf_previous == NULL) {
    capstan_identities_unref(ids);
    return CAPSTAN_ENOMEM;
  }
  /* One read transaction: the identities, the previous certificates and the
   * trust store belong to the same moment. */
  load_ctx_t l = {what, ids};
  int rc = capstan_store_read(store, load_all, &l);
  if (rc < 0) {
    capstan_identities_unref(ids);
    return rc;
  }
  *out = ids;
  return 0;
}
