#include "core/capf_lifecycle.h"

#include <openssl/bytestring.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/files/sgnhdr.h"
#include "core/identities.h"
#include "core/settings.h"
#include "storage/records.h"

#define SECONDS_PER_DAY 86400
#define EXPIRY_WARN_DAYS 30
/* "old_serial=<40 hex> old_sha256=<64 hex>" and the like, with room. */
#define DESCRIBE_LEN 160
#define SERIAL_MAX 20 /* RFC 5280: at most 20 octets */

/* ---- Small pieces ------------------------------------------------------- */

static void hex(const uint8_t *b, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[b[i] >> 4];
    out[2 * i + 1] = digits[b[i] & 15];
  }
  out[2 * n] = '\0';
}

/* "<prefix>serial=<hex> <prefix>sha256=<hex>" for audit details. */
static void describe(const char *prefix, X509 *cert, char *buf, size_t len) {
  uint8_t serial[SERIAL_MAX], fp[32];
  size_t serial_len = 0;
  char serial_hex[2 * SERIAL_MAX + 1] = "?", fp_hex[65] = "?";
  if (cert != NULL && capstan_pki_serial_bytes(cert, serial, sizeof(serial), &serial_len) == 0) {
    hex(serial, serial_len, serial_hex);
  }
  if (cert != NULL && capstan_pki_cert_sha256(cert, fp) == 0) hex(fp, sizeof(fp), fp_hex);
  snprintf(buf, len, "%sserial=%s %ssha256=%s", prefix, serial_hex, prefix, fp_hex);
}

static bool same_cert(X509 *a, X509 *b) {
  uint8_t fa[32], fb[32];
  return a != NULL && b != NULL && capstan_pki_cert_sha256(a, fa) == 0 &&
         capstan_pki_cert_sha256(b, fb) == 0 && memcmp(fa, fb, sizeof(fa)) == 0;
}

static void key_type_of(const EVP_PKEY *key, int *alg, unsigned *bits) {
  *alg = EVP_PKEY_id(key) == EVP_PKEY_EC ? CAPSTAN_KEY_EC : CAPSTAN_KEY_RSA;
  *bits = (unsigned)EVP_PKEY_bits(key);
}

static int key_to_der(EVP_PKEY *key, uint8_t **der, size_t *len) {
  CBB cbb;
  if (!CBB_init(&cbb, 0) || !EVP_marshal_private_key(&cbb, key) || !CBB_finish(&cbb, der, len)) {
    CBB_cleanup(&cbb);
    return CAPSTAN_ECRYPTO;
  }
  return 0;
}

static int key_from_der(const uint8_t *der, size_t len, EVP_PKEY **out) {
  CBS cbs;
  CBS_init(&cbs, der, len);
  *out = EVP_parse_private_key(&cbs);
  if (*out == NULL || CBS_len(&cbs) != 0) {
    EVP_PKEY_free(*out);
    *out = NULL;
    return CAPSTAN_EINVAL;
  }
  return 0;
}

/* ---- Previous certificates --------------------------------------------- */

typedef struct previous_collect {
  int64_t now;
  int64_t window; /* seconds a replaced certificate stays trusted */
  bool trusted_only;
  capstan_capf_previous_t *list;
  size_t n, cap;
  int rc;
} previous_collect_t;

static int collect_previous(const Capstan__PreviousCapf *p, void *arg) {
  previous_collect_t *c = arg;
  int64_t until = p->replaced_at + c->window;
  if (c->trusted_only && (p->retired_at != 0 || c->now >= until)) return 0;
  X509 *cert = NULL;
  if (capstan_pki_parse_cert(p->cert_der.data, p->cert_der.len, &cert) != 0) {
    LOG_WARN("event=capf_previous_unparsable");
    return 0;
  }
  if (c->n == c->cap) {
    size_t cap = c->cap == 0 ? 4 : c->cap * 2;
    capstan_capf_previous_t *grown = realloc(c->list, cap * sizeof(*grown));
    if (grown == NULL) {
      X509_free(cert);
      c->rc = CAPSTAN_ENOMEM;
      return CAPSTAN_ENOMEM;
    }
    c->list = grown;
    c->cap = cap;
  }
  c->list[c->n++] = (capstan_capf_previous_t){.cert = cert,
                                              .replaced_at = p->replaced_at,
                                              .trusted_until = until,
                                              .retired_at = p->retired_at};
  return 0;
}

static int by_replaced_at(const void *a, const void *b) {
  const capstan_capf_previous_t *x = a, *y = b;
  return (x->replaced_at > y->replaced_at) - (x->replaced_at < y->replaced_at);
}

void capstan_capf_previous_free(capstan_capf_previous_t *p, size_t n) {
  for (size_t i = 0; p != NULL && i < n; i++) X509_free(p[i].cert);
  free(p);
}

int capstan_capf_previous_trusted(capstan_txn_t *txn, int64_t now, capstan_capf_previous_t **out,
                                  size_t *n, int64_t *until) {
  *out = NULL;
  *n = 0;
  if (until != NULL) *until = 0;
  capstan_settings_t s;
  int rc = capstan_settings_read(txn, &s);
  if (rc < 0) return rc;
  previous_collect_t c = {.now = now,
                          .window = (int64_t)s.capf_previous_trust_days * SECONDS_PER_DAY,
                          .trusted_only = true};
  rc = capstan_store_capf_previous_iterate(txn, collect_previous, &c);
  if (rc == 0) rc = c.rc;
  if (rc < 0) {
    capstan_capf_previous_free(c.list, c.n);
    return rc;
  }
  if (c.n > 1) qsort(c.list, c.n, sizeof(*c.list), by_replaced_at);
  for (size_t i = 0; until != NULL && i < c.n; i++) {
    if (*until == 0 || c.list[i].trusted_until < *until) *until = c.list[i].trusted_until;
  }
  *out = c.list;
  *n = c.n;
  return 0;
}

typedef struct trust_ends {
  int64_t now, until;
} trust_ends_t;

static int read_trust_ends(capstan_txn_t *txn, void *arg) {
  trust_ends_t *t = arg;
  capstan_capf_previous_t *list = NULL;
  size_t n = 0;
  int rc = capstan_capf_previous_trusted(txn, t->now, &list, &n, &t->until);
  capstan_capf_previous_free(list, n);
  return rc;
}

int64_t capstan_capf_previous_trust_ends(capstan_store_t *store, int64_t now) {
  trust_ends_t t = {now, 0};
  return capstan_store_read(store, read_trust_ends, &t) == 0 ? t.until : 0;
}

/* ---- Status -------------------------------------------------------------- */

typedef struct status_read {
  int64_t now;
  capstan_capf_status_t *st;
} status_read_t;

static bool trust_holds(capstan_txn_t *txn, X509 *cert, const char *purpose);

static int read_status(capstan_txn_t *txn, void *arg) {
  status_read_t *r = arg;
  capstan_capf_status_t *st = r->st;
  int rc = capstan_identity_get(txn, CAPSTAN_IDENTITY_CAPF, &st->capf);
  if (rc < 0) return rc;
  capstan_settings_t s;
  if ((rc = capstan_settings_read(txn, &s)) < 0) return rc;
  st->previous_trust_days = s.capf_previous_trust_days;
  rc = capstan_capf_previous_trusted(txn, r->now, &st->previous, &st->nprevious, NULL);
  if (rc < 0) return rc;
  size_t depth = st->capf.chain != NULL ? sk_X509_num(st->capf.chain) : 0;
  X509 *root = depth > 0 ? sk_X509_value(st->capf.chain, depth - 1) : NULL;
  st->root_in_capf_trust = root == NULL || trust_holds(txn, root, CAPSTAN_TRUST_PURPOSE_CAPF);
  st->root_in_cm_trust = root == NULL || trust_holds(txn, root, CAPSTAN_TRUST_PURPOSE_CM);
  Capstan__PendingCapfKey *p = NULL;
  rc = capstan_store_capf_pending_get(txn, &p);
  if (rc == CAPSTAN_ENOENT) return 0;
  if (rc < 0) return rc;
  EVP_PKEY *key = NULL;
  const uint8_t *sp = p->subject_der.data;
  X509_NAME *subject = d2i_X509_NAME(NULL, &sp, (long)p->subject_der.len);
  if (key_from_der(p->key_der.data, p->key_der.len, &key) == 0 && subject != NULL) {
    st->has_pending = true;
    capstan_pki_key_name(key, st->pending_key, sizeof(st->pending_key));
    capstan_pki_dn_string(subject, &st->pending_subject);
    st->pending_created_at = p->created_at;
  } else {
    LOG_WARN("event=capf_pending_unparsable");
  }
  EVP_PKEY_free(key);
  X509_NAME_free(subject);
  capstan__pending_capf_key__free_unpacked(p, NULL);
  return 0;
}

int capstan_capf_status_load(capstan_store_t *store, int64_t now, capstan_capf_status_t *out) {
  memset(out, 0, sizeof(*out));
  status_read_t r = {now, out};
  int rc = capstan_store_read(store, read_status, &r);
  if (rc < 0) capstan_capf_status_cleanup(out);
  return rc;
}

void capstan_capf_status_cleanup(capstan_capf_status_t *st) {
  if (st == NULL) return;
  capstan_identity_cleanup(&st->capf);
  free(st->pending_subject);
  capstan_capf_previous_free(st->previous, st->nprevious);
  memset(st, 0, sizeof(*st));
}

void capstan_capf_change_cleanup(capstan_capf_change_t *ch) {
  if (ch == NULL) return;
  X509_free(ch->new_cert);
  X509_free(ch->old_cert);
  capstan_capf_import_cleanup(&ch->import);
  memset(ch, 0, sizeof(*ch));
}

/* ---- Replacing the live identity ----------------------------------------- */

static int read_capf(capstan_store_t *store, capstan_identity_t *out) {
  capstan_txn_t txn;
  int rc = capstan_store_begin(store, false, &txn);
  if (rc < 0) return rc;
  rc = capstan_identity_get(&txn, CAPSTAN_IDENTITY_CAPF, out);
  capstan_store_abort(&txn);
  return rc;
}

/* Inside |txn|: |expected| must still be the live certificate (another
 * command may have changed it since we read it, outside the transaction,
 * while a key was generated). It becomes a previous certificate; |next|
 * becomes the live identity. */
static int replace_capf(capstan_txn_t *txn, X509 *expected, const capstan_identity_t *next,
                        int64_t now) {
  capstan_identity_t live = {0};
  int rc = capstan_identity_get(txn, CAPSTAN_IDENTITY_CAPF, &live);
  if (rc < 0) return rc;
  if (!same_cert(live.cert, expected)) {
    capstan_identity_cleanup(&live);
    return CAPSTAN_EEXIST;
  }
  /* One more previous certificate must still fit every ITL. */
  capstan_capf_previous_t *trusted = NULL;
  size_t ntrusted = 0;
  int64_t until = 0;
  rc = capstan_capf_previous_trusted(txn, now, &trusted, &ntrusted, &until);
  capstan_capf_previous_free(trusted, ntrusted);
  if (rc == 0 && ntrusted >= CAPSTAN_CAPF_MAX_PREVIOUS) rc = CAPSTAN_ERANGE;
  if (rc < 0) {
    capstan_identity_cleanup(&live);
    return rc;
  }
  Capstan__PreviousCapf prev = CAPSTAN__PREVIOUS_CAPF__INIT;
  Capstan__Identity old_rec, new_rec;
  uint8_t next_fp[32];
  rc = capstan_identity_record(&live, now, &old_rec);
  if (rc == 0) rc = capstan_identity_record(next, now, &new_rec);
  if (rc == 0) rc = capstan_pki_cert_sha256(next->cert, next_fp);
  if (rc == 0) {
    prev.cert_der = old_rec.cert_der;
    prev.n_chain_der = old_rec.n_chain_der;
    prev.chain_der = old_rec.chain_der;
    prev.has_replaced_at = 1;
    prev.replaced_at = now;
    prev.has_replaced_by_sha256 = 1;
    prev.replaced_by_sha256 = (ProtobufCBinaryData){sizeof(next_fp), next_fp};
    rc = capstan_store_capf_previous_put(txn, &prev);
    if (rc == 0) rc = capstan_store_identity_put(txn, CAPSTAN_IDENTITY_CAPF, &new_rec);
    capstan_identity_record_free(&new_rec);
  }
  capstan_identity_record_free(&old_rec);
  capstan_identity_cleanup(&live);
  return rc;
}

static int64_t trusted_until_from(capstan_txn_t *txn, int64_t now) {
  capstan_settings_t s;
  if (capstan_settings_read(txn, &s) < 0) return now;
  return now + (int64_t)s.capf_previous_trust_days * SECONDS_PER_DAY;
}

/* Audit event |event| with "old_... new_... |extra|", trust generation
 * bumped, commit. */
static int finish_change(capstan_txn_t *txn, const char *event, X509 *old_cert, X509 *new_cert,
                         const char *extra) {
  char old_d[DESCRIBE_LEN], new_d[DESCRIBE_LEN], detail[3 * DESCRIBE_LEN + 512];
  describe("old_", old_cert, old_d, sizeof(old_d));
  describe("new_", new_cert, new_d, sizeof(new_d));
  snprintf(detail, sizeof(detail), "%s %s%s%s", old_d, new_d, extra ? " " : "", extra ? extra : "");
  int rc = capstan_store_audit_append(txn, 0, NULL, event, detail);
  if (rc == 0) rc = capstan_settings_bump_trust_generation(txn);
  if (rc == 0) rc = capstan_store_commit(txn);
  if (rc == 0) LOG_INFO("event=%s %s", event, detail);
  return rc;
}

/* ---- Regenerate ----------------------------------------------------------- */

int capstan_capf_regenerate(capstan_store_t *store, const capstan_capf_spec_t *spec,
                            capstan_capf_change_t *out) {
  memset(out, 0, sizeof(*out));
  capstan_identity_t live = {0}, next = {0};
  int rc = read_capf(store, &live);
  if (rc < 0) return rc;
  capstan_capf_spec_t want = *spec;
  if (want.key_bits == 0) key_type_of(live.key, &want.key_alg, &want.key_bits);
  if (want.subject_extra == NULL) want.subject_like = X509_get_subject_name(live.cert);
  rc = capstan_pki_create_capf_spec(&want, &next);
  if (rc < 0) goto out;
  capstan_txn_t txn;
  int64_t now = (int64_t)time(NULL);
  if ((rc = capstan_store_begin(store, true, &txn)) < 0) goto out;
  char key[16], extra_detail[64];
  capstan_pki_key_name(next.key, key, sizeof(key));
  snprintf(extra_detail, sizeof(extra_detail), "key=%s", key);
  rc = replace_capf(&txn, live.cert, &next, now);
  if (rc == 0) {
    out->old_trusted_until = trusted_until_from(&txn, now);
    rc = finish_change(&txn, "capf_regenerated", live.cert, next.cert, extra_detail);
  }
  capstan_store_abort(&txn);
  if (rc == 0) {
    out->new_cert = X509_up_ref(next.cert) ? next.cert : NULL;
    out->old_cert = X509_up_ref(live.cert) ? live.cert : NULL;
  }
out:
  capstan_identity_cleanup(&live);
  capstan_identity_cleanup(&next);
  return rc;
}

/* ---- CSR ------------------------------------------------------------------ */

int capstan_capf_csr(capstan_store_t *store, bool new_key, bool replace_pending, int key_alg,
                     unsigned key_bits, const char *subject_extra, uint8_t **der, size_t *der_len) {
  *der = NULL;
  *der_len = 0;
  capstan_identity_t live = {0};
  EVP_PKEY *key = NULL;
  X509_NAME *subject = NULL;
  uint8_t *key_der = NULL, *subject_der = NULL;
  size_t key_len = 0;
  int rc = read_capf(store, &live);
  if (rc < 0) return rc;
  if (subject_extra != NULL) {
    rc = capstan_pki_capf_subject(subject_extra, &subject);
  } else if (new_key) {
    /* A new key gets a new CN and keeps the live naming as it is. */
    rc = capstan_pki_capf_subject_like(X509_get_subject_name(live.cert), &subject);
  } else {
    subject = X509_NAME_dup(X509_get_subject_name(live.cert));
    rc = subject != NULL ? 0 : CAPSTAN_ENOMEM;
  }
  if (rc < 0) goto out;
  if (new_key) {
    if (key_bits == 0) key_type_of(live.key, &key_alg, &key_bits);
    rc = capstan_pki_generate_key(key_alg, key_bits, &key);
  } else {
    key = live.key;
    EVP_PKEY_up_ref(key);
  }
  if (rc < 0) goto out;
  if ((rc = capstan_pki_make_capf_csr(key, subject, der, der_len)) < 0) goto out;

  capstan_txn_t txn;
  if ((rc = capstan_store_begin(store, true, &txn)) < 0) goto out;
  char name[16], detail[CAPSTAN_PKI_MAX_SUBJECT_EXTRA + 128], *dn = NULL;
  capstan_pki_key_name(key, name, sizeof(name));
  capstan_pki_dn_string(subject, &dn);
  snprintf(detail, sizeof(detail), "new_key=%s key=%s subject=\"%s\"", new_key ? "yes" : "no", name,
           dn != NULL ? dn : "?");
  free(dn);
  if (new_key && !replace_pending) {
    /* Checked in the write transaction: two CSRs at once cannot both win. */
    Capstan__PendingCapfKey *earlier = NULL;
    rc = capstan_store_capf_pending_get(&txn, &earlier);
    if (rc == 0) {
      capstan__pending_capf_key__free_unpacked(earlier, NULL);
      rc = CAPSTAN_EBUSY;
    } else if (rc == CAPSTAN_ENOENT) {
      rc = 0;
    }
  }
  if (rc == 0 && new_key) {
    int n = i2d_X509_NAME(subject, &subject_der);
    rc = n > 0 ? key_to_der(key, &key_der, &key_len) : CAPSTAN_ENOMEM;
    if (rc == 0) {
      Capstan__PendingCapfKey p = CAPSTAN__PENDING_CAPF_KEY__INIT;
      p.key_der = (ProtobufCBinaryData){key_len, key_der};
      p.subject_der = (ProtobufCBinaryData){(size_t)n, subject_der};
      p.has_created_at = 1;
      p.created_at = (int64_t)time(NULL);
      rc = capstan_store_capf_pending_put(&txn, &p);
    }
  }
  if (rc == 0) rc = capstan_store_audit_append(&txn, 0, NULL, "capf_csr_created", detail);
  if (rc == 0) rc = capstan_store_commit(&txn);
  capstan_store_abort(&txn);
  if (rc == 0) LOG_INFO("event=capf_csr_created %s", detail);
out:
  if (rc < 0) {
    free(*der);
    *der = NULL;
    *der_len = 0;
  }
  if (key_der != NULL) OPENSSL_cleanse(key_der, key_len);
  OPENSSL_free(key_der);
  OPENSSL_free(subject_der);
  X509_NAME_free(subject);
  EVP_PKEY_free(key);
  capstan_identity_cleanup(&live);
  return rc;
}

/* ---- Trust stores -------------------------------------------------------- */

int capstan_trust_store_add(capstan_txn_t *txn, X509 *cert, const char *purpose, int64_t now,
                            bool *added) {
  *added = false;
  uint8_t fp[32], *der = NULL;
  size_t len = 0;
  int rc = capstan_pki_cert_sha256(cert, fp);
  if (rc < 0) return rc;
  Capstan__TrustCert *t = NULL;
  rc = capstan_store_trust_get(txn, fp, &t);
  if (rc == CAPSTAN_ENOENT) {
    if ((rc = capstan_pki_cert_to_der(cert, &der, &len)) < 0) return rc;
    Capstan__TrustCert fresh = CAPSTAN__TRUST_CERT__INIT;
    fresh.der = (ProtobufCBinaryData){len, der};
    fresh.has_added_at = 1;
    fresh.added_at = now;
    rc = capstan_store_trust_add_purpose(&fresh, purpose);
    if (rc == 0) rc = capstan_store_trust_put(txn, &fresh);
    for (size_t i = 0; i < fresh.n_purposes; i++) free(fresh.purposes[i]);
    free(fresh.purposes);
    free(der);
    *added = rc == 0;
  } else if (rc == 0) {
    if (!capstan_store_trust_in(t, purpose)) {
      rc = capstan_store_trust_add_purpose(t, purpose);
      if (rc == 0) rc = capstan_store_trust_put(txn, t);
      *added = rc == 0;
    }
    capstan__trust_cert__free_unpacked(t, NULL);
  }
  if (rc == 0 && *added) {
    char fp_hex[65], detail[128];
    hex(fp, sizeof(fp), fp_hex);
    snprintf(detail, sizeof(detail), "sha256=%s purpose=%s", fp_hex, purpose);
    rc = capstan_store_audit_append(txn, 0, NULL, "trust_added", detail);
  }
  return rc;
}

/* ---- Import ----------------------------------------------------------------- */

typedef struct import_read {
  capstan_identity_t live;
  EVP_PKEY *pending;
  STACK_OF(X509) * candidates;
} import_read_t;

static int collect_candidate(const uint8_t sha256[32], const Capstan__TrustCert *t, void *arg) {
  (void)sha256;
  import_read_t *r = arg;
  X509 *cert = NULL;
  if (capstan_pki_parse_cert(t->der.data, t->der.len, &cert) != 0) return 0;
  if (!sk_X509_push(r->candidates, cert)) {
    X509_free(cert);
    return CAPSTAN_ENOMEM;
  }
  return 0;
}

static int read_import(capstan_txn_t *txn, void *arg) {
  import_read_t *r = arg;
  int rc = capstan_identity_get(txn, CAPSTAN_IDENTITY_CAPF, &r->live);
  if (rc < 0) return rc;
  Capstan__PendingCapfKey *p = NULL;
  rc = capstan_store_capf_pending_get(txn, &p);
  if (rc == 0) {
    if (key_from_der(p->key_der.data, p->key_der.len, &r->pending) != 0) {
      LOG_WARN("event=capf_pending_unparsable");
    }
    capstan__pending_capf_key__free_unpacked(p, NULL);
  } else if (rc != CAPSTAN_ENOENT) {
    return rc;
  }
  return capstan_store_trust_iterate(txn, collect_candidate, r);
}

/* Whether |cert| fits an ITL record (core/files/itl.c): phones get the live
 * CAPF from every ITL, so one that does not fit would break them all. */
static bool itl_listable(X509 *cert) {
  uint8_t serial[CAPSTAN_SGN_MAX_SERIAL];
  size_t len = 0;
  char *subject = NULL, *issuer = NULL;
  bool ok = capstan_pki_serial_bytes(cert, serial, sizeof(serial), &len) == 0 &&
            capstan_pki_dn_string(X509_get_subject_name(cert), &subject) == 0 &&
            capstan_pki_dn_string(X509_get_issuer_name(cert), &issuer) == 0 &&
            strlen(subject) < CAPSTAN_SGN_MAX_NAME && strlen(issuer) < CAPSTAN_SGN_MAX_NAME;
  free(subject);
  free(issuer);
  return ok;
}

/* 0 when the stored pending key is |key|, CAPSTAN_EEXIST otherwise. */
static int pending_still(capstan_txn_t *txn, EVP_PKEY *key) {
  Capstan__PendingCapfKey *p = NULL;
  int rc = capstan_store_capf_pending_get(txn, &p);
  if (rc == CAPSTAN_ENOENT) return CAPSTAN_EEXIST;
  if (rc < 0) return rc;
  EVP_PKEY *stored = NULL;
  bool same =
      key_from_der(p->key_der.data, p->key_der.len, &stored) == 0 && EVP_PKEY_cmp(stored, key) == 1;
  EVP_PKEY_free(stored);
  capstan__pending_capf_key__free_unpacked(p, NULL);
  return same ? 0 : CAPSTAN_EEXIST;
}

/* Whether the trust store |purpose| holds |cert|, inside |txn|. */
static bool trust_holds(capstan_txn_t *txn, X509 *cert, const char *purpose) {
  uint8_t fp[32];
  Capstan__TrustCert *t = NULL;
  if (capstan_pki_cert_sha256(cert, fp) != 0 || capstan_store_trust_get(txn, fp, &t) != 0) {
    return false;
  }
  bool in = capstan_store_trust_in(t, purpose);
  capstan__trust_cert__free_unpacked(t, NULL);
  return in;
}

int capstan_capf_import(capstan_store_t *store, const uint8_t *cert_der, size_t cert_len,
                        STACK_OF(X509) * chain, unsigned flags, capstan_capf_change_t *out) {
  memset(out, 0, sizeof(*out));
  import_read_t r = {.candidates = sk_X509_new_null()};
  if (r.candidates == NULL) return CAPSTAN_ENOMEM;
  int rc = 0;
  for (size_t i = 0; chain != NULL && i < sk_X509_num(chain); i++) {
    X509 *c = sk_X509_value(chain, i);
    if (!sk_X509_push(r.candidates, c)) {
      rc = CAPSTAN_ENOMEM;
      goto out;
    }
    X509_up_ref(c);
  }
  if ((rc = capstan_store_read(store, read_import, &r)) < 0) goto out;

  X509 *offered = NULL;
  if (capstan_pki_parse_cert(cert_der, cert_len, &offered) == 0) {
    bool again = same_cert(offered, r.live.cert);
    X509_free(offered);
    if (again) {
      out->import.why = "already the CAPF certificate";
      rc = CAPSTAN_EINVAL;
      goto out;
    }
  }
  EVP_PKEY *keys[2] = {r.pending, r.live.key};
  int64_t now = (int64_t)time(NULL);
  rc = capstan_pki_check_capf_import(keys, 2, cert_der, cert_len, r.candidates, now,
                                     flags & CAPSTAN_PKI_IMPORT_STRICT, &out->import);
  if (rc < 0) goto out;
  capstan_identity_t *next = &out->import.id;
  if (!itl_listable(next->cert)) {
    capstan_identity_cleanup(next);
    out->import.rule = 0;
    out->import.why =
        "the certificate cannot be listed in ITL files (a serial over 20 octets, "
        "or a subject or issuer name over 1023 characters)";
    rc = CAPSTAN_EINVAL;
    goto out;
  }
  size_t depth = next->chain != NULL ? sk_X509_num(next->chain) : 0;
  X509 *root = depth > 0 ? sk_X509_value(next->chain, depth - 1) : NULL;
  /* --trust-root puts the root where an upload would: the same rules. */
  if (root != NULL && (flags & CAPSTAN_CAPF_IMPORT_TRUST_ROOT) &&
      capstan_pki_check_trust_upload(root, CAPSTAN_PKI_UPLOAD_CA, NULL) != 0) {
    capstan_identity_cleanup(next);
    out->import.rule = 0;
    out->import.why =
        "--trust-root: the chain's root does not meet the trust-store rules "
        "(CA:TRUE, keyUsage digitalSignature and keyCertSign, no CAPF- in its CN); "
        "add a root that does, or import without --trust-root";
    rc = CAPSTAN_EINVAL;
    goto out;
  }

  capstan_txn_t txn;
  if ((rc = capstan_store_begin(store, true, &txn)) < 0) goto out;
  rc = replace_capf(&txn, r.live.cert, next, now);
  /* The pending key is live now; an import for the current key leaves a
   * pending key alone (its certificate may still be on its way). The key
   * checked must still be the pending one (a csr --new-key --force may
   * have replaced it since). */
  if (rc == 0 && out->import.key_index == 0) rc = pending_still(&txn, r.pending);
  if (rc == 0 && out->import.key_index == 0) rc = capstan_store_capf_pending_delete(&txn);
  if (rc == 0 && root != NULL && (flags & CAPSTAN_CAPF_IMPORT_TRUST_ROOT)) {
    bool a = false, b = false;
    rc = capstan_trust_store_add(&txn, root, CAPSTAN_TRUST_PURPOSE_CAPF, now, &a);
    if (rc == 0) rc = capstan_trust_store_add(&txn, root, CAPSTAN_TRUST_PURPOSE_CM, now, &b);
    out->root_added = a || b;
  }
  if (rc == 0 && root != NULL) {
    out->root_missing_capf_trust = !trust_holds(&txn, root, CAPSTAN_TRUST_PURPOSE_CAPF);
    out->root_missing_cm_trust = !trust_holds(&txn, root, CAPSTAN_TRUST_PURPOSE_CM);
  }
  if (rc == 0) {
    char extra[96];
    snprintf(extra, sizeof(extra), "key=%s chain=%zu root_added=%s",
             out->import.key_index == 0 ? "pending" : "current", depth,
             out->root_added ? "yes" : "no");
    out->old_trusted_until = trusted_until_from(&txn, now);
    rc = finish_change(&txn, "capf_imported", r.live.cert, next->cert, extra);
  }
  capstan_store_abort(&txn);
  if (rc == CAPSTAN_EEXIST) {
    out->import.why = "the CAPF changed during the import; run the import again";
    rc = CAPSTAN_EINVAL;
  }
  if (rc == 0) {
    out->new_cert = X509_up_ref(next->cert) ? next->cert : NULL;
    out->old_cert = X509_up_ref(r.live.cert) ? r.live.cert : NULL;
  }
out:
  capstan_identity_cleanup(&r.live);
  EVP_PKEY_free(r.pending);
  sk_X509_pop_free(r.candidates, X509_free);
  return rc;
}

/* ---- Retire ------------------------------------------------------------------ */

/* A copy of |p| that outlives the iteration (NULL: out of memory). */
static Capstan__PreviousCapf *previous_copy(const Capstan__PreviousCapf *p) {
  size_t size = protobuf_c_message_get_packed_size(&p->base);
  uint8_t *buf = malloc(size ? size : 1);
  if (buf == NULL) return NULL;
  protobuf_c_message_pack(&p->base, buf);
  Capstan__PreviousCapf *copy = capstan__previous_capf__unpack(NULL, size, buf);
  free(buf);
  return copy;
}

typedef struct retire_find {
  const uint8_t *serial;
  size_t serial_len;
  int64_t now, window;
  Capstan__PreviousCapf *found; /* a copy */
  int rc;
} retire_find_t;

static int find_previous(const Capstan__PreviousCapf *p, void *arg) {
  retire_find_t *f = arg;
  if (p->retired_at != 0 || f->now >= p->replaced_at + f->window) return 0;
  X509 *cert = NULL;
  uint8_t serial[SERIAL_MAX];
  size_t len = 0;
  if (capstan_pki_parse_cert(p->cert_der.data, p->cert_der.len, &cert) != 0) return 0;
  bool match = capstan_pki_serial_bytes(cert, serial, sizeof(serial), &len) == 0 &&
               len == f->serial_len && memcmp(serial, f->serial, len) == 0;
  X509_free(cert);
  if (!match) return 0;
  /* Keep a copy: |p| is freed when this call returns. */
  f->found = previous_copy(p);
  if (f->found == NULL) {
    f->rc = CAPSTAN_ENOMEM;
    return CAPSTAN_ENOMEM;
  }
  return 1;
}

typedef struct holding_count {
  X509 *retiring, *live;
  size_t n;
} holding_count_t;

/* A device depends on the retiring certificate when its current LSC names
 * it as issuer (name and key identifier) and the live CAPF cannot stand in
 * (a renewal that kept the name and key issues LSCs both verify). */
static int count_holding(const Capstan__Device *d, void *arg) {
  holding_count_t *h = arg;
  if (d->cert_type != CAPSTAN__CERT_TYPE__CERT_TYPE_LSC || !d->has_cert_der) return 0;
  X509 *lsc = NULL;
  if (capstan_pki_parse_cert(d->cert_der.data, d->cert_der.len, &lsc) != 0) return 0;
  if (X509_check_issued(h->retiring, lsc) == X509_V_OK &&
      (h->live == NULL || X509_check_issued(h->live, lsc) != X509_V_OK)) {
    h->n++;
  }
  X509_free(lsc);
  return 0;
}

int capstan_trust_removal_impact(capstan_txn_t *txn, X509 *cert, size_t *holding,
                                 bool *in_live_chain) {
  *holding = 0;
  *in_live_chain = false;
  capstan_identity_t live = {0};
  int rc = capstan_identity_get(txn, CAPSTAN_IDENTITY_CAPF, &live);
  if (rc < 0) return rc;
  for (size_t i = 0; live.chain != NULL && i < sk_X509_num(live.chain); i++) {
    if (X509_cmp(sk_X509_value(live.chain, i), cert) == 0) *in_live_chain = true;
  }
  holding_count_t h = {.retiring = cert, .live = live.cert};
  rc = capstan_store_device_iterate(txn, count_holding, &h);
  *holding = h.n;
  capstan_identity_cleanup(&live);
  return rc;
}

/* The previous certificate with |serial| still trusted at |now|, into
 * f->found (a copy), inside |txn|. */
static int find_retiring(capstan_txn_t *txn, const uint8_t *serial, size_t serial_len, int64_t now,
                         retire_find_t *f) {
  *f = (retire_find_t){.serial = serial, .serial_len = serial_len, .now = now};
  capstan_settings_t s;
  int rc = capstan_settings_read(txn, &s);
  if (rc < 0) return rc;
  f->window = (int64_t)s.capf_previous_trust_days * SECONDS_PER_DAY;
  rc = capstan_store_capf_previous_iterate(txn, find_previous, f);
  if (rc == 0) rc = f->rc;
  if (rc == 0 && f->found == NULL) rc = CAPSTAN_ENOENT;
  return rc;
}

int capstan_capf_retire(capstan_store_t *store, const uint8_t *serial, size_t serial_len,
                        bool force, size_t *holding, X509 **retired) {
  *holding = 0;
  if (retired != NULL) *retired = NULL;
  capstan_txn_t txn;
  capstan_identity_t live = {0};
  X509 *cert = NULL;
  int64_t now = (int64_t)time(NULL);
  retire_find_t f = {0};
  /* Count the holders in a read transaction: parsing every device's LSC
   * must not hold the single writer (enrollments commit meanwhile). The
   * count cannot grow before the write: a previous CAPF issues nothing. */
  int rc = capstan_store_begin(store, false, &txn);
  if (rc < 0) return rc;
  rc = find_retiring(&txn, serial, serial_len, now, &f);
  if (rc == 0) rc = capstan_pki_parse_cert(f.found->cert_der.data, f.found->cert_der.len, &cert);
  if (rc == 0) rc = capstan_identity_get(&txn, CAPSTAN_IDENTITY_CAPF, &live);
  holding_count_t h = {.retiring = cert, .live = live.cert};
  if (rc == 0) rc = capstan_store_device_iterate(&txn, count_holding, &h);
  capstan_store_abort(&txn);
  if (f.found != NULL) capstan__previous_capf__free_unpacked(f.found, NULL);
  f.found = NULL;
  if (rc < 0) goto done;
  *holding = h.n;
  if (h.n > 0 && !force) {
    rc = CAPSTAN_EBUSY;
    goto done;
  }
  if ((rc = capstan_store_begin(store, true, &txn)) < 0) goto done;
  /* Found again in the write transaction: still trusted, not retired. */
  rc = find_retiring(&txn, serial, serial_len, now, &f);
  if (rc == 0) {
    f.found->has_retired_at = 1;
    f.found->retired_at = now;
    rc = capstan_store_capf_previous_put(&txn, f.found);
  }
  char what[DESCRIBE_LEN], detail[DESCRIBE_LEN + 64];
  describe("", cert, what, sizeof(what));
  snprintf(detail, sizeof(detail), "%s devices_holding=%zu forced=%s", what, h.n,
           force && h.n > 0 ? "yes" : "no");
  if (rc == 0) rc = capstan_store_audit_append(&txn, 0, NULL, "capf_retired", detail);
  if (rc == 0) rc = capstan_settings_bump_trust_generation(&txn);
  if (rc == 0) rc = capstan_store_commit(&txn);
  capstan_store_abort(&txn);
  if (rc == 0) {
    LOG_INFO("event=capf_retired %s", detail);
    if (retired != NULL) {
      *retired = cert;
      cert = NULL;
    }
  }
done:
  if (f.found != NULL) capstan__previous_capf__free_unpacked(f.found, NULL);
  capstan_identity_cleanup(&live);
  X509_free(cert);
  return rc;
}

/* ---- A window that ended stays ended --------------------------------------- */

typedef struct elapsed {
  int64_t now, window;
  Capstan__PreviousCapf **list;
  size_t n, cap;
} elapsed_t;

static int collect_elapsed(const Capstan__PreviousCapf *p, void *arg) {
  elapsed_t *e = arg;
  if (p->retired_at != 0 || e->now < p->replaced_at + e->window) return 0;
  if (e->n == e->cap) {
    size_t cap = e->cap == 0 ? 4 : e->cap * 2;
    Capstan__PreviousCapf **list = realloc(e->list, cap * sizeof(*list));
    if (list == NULL) return CAPSTAN_ENOMEM;
    e->list = list;
    e->cap = cap;
  }
  e->list[e->n] = previous_copy(p);
  if (e->list[e->n] == NULL) return CAPSTAN_ENOMEM;
  e->n++;
  return 0;
}

int capstan_capf_previous_end_elapsed(capstan_txn_t *txn, int64_t now, unsigned days,
                                      size_t *ended) {
  *ended = 0;
  elapsed_t e = {.now = now, .window = (int64_t)days * SECONDS_PER_DAY};
  int rc = capstan_store_capf_previous_iterate(txn, collect_elapsed, &e);
  for (size_t i = 0; rc == 0 && i < e.n; i++) {
    Capstan__PreviousCapf *p = e.list[i];
    p->has_retired_at = 1;
    p->retired_at = now;
    rc = capstan_store_capf_previous_put(txn, p);
    X509 *cert = NULL;
    if (rc == 0 && capstan_pki_parse_cert(p->cert_der.data, p->cert_der.len, &cert) == 0) {
      char what[DESCRIBE_LEN], detail[DESCRIBE_LEN + 64];
      describe("", cert, what, sizeof(what));
      snprintf(detail, sizeof(detail), "%s reason=trust_window_ended", what);
      rc = capstan_store_audit_append(txn, 0, NULL, "capf_previous_trust_ended", detail);
      if (rc == 0) LOG_INFO("event=capf_previous_trust_ended %s", detail);
    }
    X509_free(cert);
    if (rc == 0) (*ended)++;
  }
  for (size_t i = 0; i < e.n; i++) capstan__previous_capf__free_unpacked(e.list[i], NULL);
  free(e.list);
  return rc;
}

/* ---- Expiry ---------------------------------------------------------------- */

int64_t capstan_capf_check_expiry(capstan_store_t *store, int64_t now) {
  capstan_identity_t live = {0};
  int64_t not_after = 0;
  if (read_capf(store, &live) < 0 || capstan_pki_cert_validity(live.cert, NULL, &not_after) < 0) {
    capstan_identity_cleanup(&live);
    return 0;
  }
  int64_t left = not_after - now;
  if (left < (int64_t)EXPIRY_WARN_DAYS * SECONDS_PER_DAY) {
    char *dn = NULL;
    capstan_pki_dn_string(X509_get_subject_name(live.cert), &dn);
    LOG_WARN(
        "event=capf_certificate_expiring subject=\"%s\" days_left=%lld not_after=%lld "
        "hint=\"capstan cert capf regenerate, or cert capf csr --new-key and import the signed "
        "certificate\"",
        dn != NULL ? dn : "?", (long long)(left > 0 ? left / SECONDS_PER_DAY : 0),
        (long long)not_after);
    free(dn);
  }
  capstan_identity_cleanup(&live);
  return not_after;
}
