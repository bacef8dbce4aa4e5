/* Phones' certificate requests (core/ca/requests.h): the CertRequest
 * records and every change to them, each with its audit event inside the
 * caller's write transaction, and the device's status that tells the
 * operator what the phone waits for. */
#include "core/ca/requests.h"

#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/pki/pki.h"
#include "core/settings.h"
#include "storage/devices.h"
#include "storage/records.h"

#define SET(msg, field, v)  \
  do {                      \
    (msg)->has_##field = 1; \
    (msg)->field = (v);     \
  } while (0)

#define SAME(proto, ours) _Static_assert((int)(proto) == (int)(ours), #ours " differs")
SAME(CAPSTAN__CSR_STATUS__CSR_STATUS_PENDING, CAPSTAN_CSR_PENDING);
SAME(CAPSTAN__CSR_STATUS__CSR_STATUS_ISSUED, CAPSTAN_CSR_ISSUED);
SAME(CAPSTAN__CSR_STATUS__CSR_STATUS_STALE, CAPSTAN_CSR_STALE);
SAME(CAPSTAN__CSR_STATUS__CSR_STATUS_INSTALLED, CAPSTAN_CSR_INSTALLED);
SAME(CAPSTAN__CSR_STATUS__CSR_STATUS_FAILED, CAPSTAN_CSR_FAILED);
#undef SAME

static const char *const status_names[] = {"pending", "issued", "stale", "installed", "failed"};
#define N_STATUS (sizeof(status_names) / sizeof(status_names[0]))

const char *capstan_csr_status_name(capstan_csr_status_t st) {
  return (unsigned)st < N_STATUS ? status_names[st] : "?";
}

int capstan_csr_status_parse(const char *name, capstan_csr_status_t *out) {
  if (name == NULL) return CAPSTAN_EINVAL;
  for (size_t i = 0; i < N_STATUS; i++) {
    if (strcmp(name, status_names[i]) == 0) {
      *out = (capstan_csr_status_t)i;
      return 0;
    }
  }
  return CAPSTAN_EINVAL;
}

void capstan_cert_request_cleanup(capstan_cert_request_t *r) {
  if (r == NULL) return;
  free(r->csr_der);
  free(r->spki);
  memset(r, 0, sizeof(*r));
}

void capstan_csr_key(const uint8_t *spki, size_t spki_len, uint8_t out[32]) {
  SHA256(spki, spki_len, out);
}

void capstan_csr_cert_key(const uint8_t *cert_der, size_t cert_len,
                          uint8_t out[CAPSTAN_SERIAL_LEN]) {
  X509 *cert = NULL;
  if (capstan_pki_parse_cert(cert_der, cert_len, &cert) == 0) {
    const ASN1_INTEGER *serial = X509_get0_serialNumber(cert);
    if (serial != NULL && serial->length == CAPSTAN_SERIAL_LEN) {
      memcpy(out, serial->data, CAPSTAN_SERIAL_LEN);
      X509_free(cert);
      return;
    }
    X509_free(cert);
  }
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(cert_der, cert_len, digest);
  memcpy(out, digest, CAPSTAN_SERIAL_LEN);
}

/* ---- Record <-> struct ------------------------------------------------ */

static void copy_string(char *dst, size_t cap, const char *src) {
  snprintf(dst, cap, "%s", src != NULL ? src : "");
}

static int from_record(const uint8_t key[32], const Capstan__CertRequest *rec,
                       capstan_cert_request_t *out) {
  memset(out, 0, sizeof(*out));
  memcpy(out->key, key, 32);
  copy_string(out->device, sizeof(out->device), rec->device);
  out->csr_der = malloc(rec->csr_der.len ? rec->csr_der.len : 1);
  out->spki = malloc(rec->public_key.len ? rec->public_key.len : 1);
  if (out->csr_der == NULL || out->spki == NULL) {
    capstan_cert_request_cleanup(out);
    return CAPSTAN_ENOMEM;
  }
  if (rec->csr_der.len) memcpy(out->csr_der, rec->csr_der.data, rec->csr_der.len);
  out->csr_len = rec->csr_der.len;
  if (rec->public_key.len) memcpy(out->spki, rec->public_key.data, rec->public_key.len);
  out->spki_len = rec->public_key.len;
  out->created_at = rec->created_at;
  out->status_changed_at = rec->status_changed_at;
  out->status =
      (unsigned)rec->status < N_STATUS ? (capstan_csr_status_t)rec->status : CAPSTAN_CSR_FAILED;
  out->issuer = rec->issuer;
  copy_string(out->ca_request_id, sizeof(out->ca_request_id), rec->ca_request_id);
  out->next_poll_at = rec->next_poll_at;
  out->polls = rec->polls;
  copy_string(out->reason, sizeof(out->reason), rec->reason);
  if (rec->has_cert_key && rec->cert_key.len == CAPSTAN_SERIAL_LEN) {
    out->has_cert = 1;
    memcpy(out->cert_key, rec->cert_key.data, CAPSTAN_SERIAL_LEN);
  }
  return 0;
}

static void key_hex(const uint8_t key[32], char out[65]) {
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < 32; i++) {
    out[2 * i] = hex[key[i] >> 4];
    out[2 * i + 1] = hex[key[i] & 15];
  }
  out[64] = '\0';
}

static void serial_hex(const uint8_t s[CAPSTAN_SERIAL_LEN], char out[2 * CAPSTAN_SERIAL_LEN + 1]) {
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < CAPSTAN_SERIAL_LEN; i++) {
    out[2 * i] = hex[s[i] >> 4];
    out[2 * i + 1] = hex[s[i] & 15];
  }
  out[2 * CAPSTAN_SERIAL_LEN] = '\0';
}

/* The reason of a request, limited to what the struct can carry. */
static int set_reason(Capstan__CertRequest *rec, const char *reason) {
  char buf[256];
  copy_string(buf, sizeof(buf), reason);
  return capstan_record_set_string(&rec->reason, reason != NULL ? buf : NULL);
}

/* A certificate of the certs database becomes STALE (with its audit
 * event), unless it already left ISSUED/INSTALLED. */
static int cert_make_stale(capstan_txn_t *txn, const uint8_t serial[CAPSTAN_SERIAL_LEN],
                           int64_t now, const char *why) {
  Capstan__IssuedCert *c;
  int err = capstan_store_cert_get(txn, serial, &c);
  if (err == CAPSTAN_ENOENT) return 0; /* the operator may have deleted it */
  if (err != 0) return err;
  if (c->status == CAPSTAN__CERT_STATUS__CERT_STATUS_ISSUED ||
      c->status == CAPSTAN__CERT_STATUS__CERT_STATUS_INSTALLED) {
    SET(c, status, CAPSTAN__CERT_STATUS__CERT_STATUS_STALE);
    SET(c, status_changed_at, now);
    err = capstan_store_cert_put(txn, c);
    if (err == 0) {
      char hex[2 * CAPSTAN_SERIAL_LEN + 1];
      serial_hex(serial, hex);
      err = capstan_audit_appendf(txn, c->device, "cert_stale", "serial=%s %s", hex, why);
    }
  }
  capstan__issued_cert__free_unpacked(c, NULL);
  return err;
}

/* Moves |rec| (stored under |key|) to |st| with |reason| and the audit
 * event "csr_<status>". */
static int set_status(capstan_txn_t *txn, const uint8_t key[32], Capstan__CertRequest *rec,
                      capstan_csr_status_t st, const char *reason, int64_t now) {
  SET(rec, status, (Capstan__CsrStatus)st);
  SET(rec, status_changed_at, now);
  int err = reason != NULL ? set_reason(rec, reason) : 0;
  if (err == 0) err = capstan_store_csr_put(txn, key, rec);
  if (err != 0) return err;
  char hex[65], event[32];
  key_hex(key, hex);
  snprintf(event, sizeof(event), "csr_%s", capstan_csr_status_name(st));
  if (reason != NULL) {
    return capstan_audit_appendf(txn, rec->device, event, "key=%.16s reason=\"%s\"", hex, reason);
  }
  return capstan_audit_appendf(txn, rec->device, event, "key=%.16s", hex);
}

/* |device|'s latest request key (Device.cert_request). ENOENT: none. */
static int device_request_key(capstan_txn_t *txn, const char *device, uint8_t key[32]) {
  Capstan__Device *d;
  int err = capstan_store_device_get(txn, device, &d);
  if (err != 0) return err;
  if (!d->has_cert_request || d->cert_request.len != 32) {
    err = CAPSTAN_ENOENT;
  } else {
    memcpy(key, d->cert_request.data, 32);
  }
  capstan__device__free_unpacked(d, NULL);
  return err;
}

/* ---- Changes ---------------------------------------------------------- */

#define SUPERSEDED "superseded by a newer request"

int capstan_csr_record_pending(capstan_txn_t *txn, const char *device, const uint8_t *csr_der,
                               size_t csr_len, const uint8_t *spki, size_t spki_len,
                               unsigned issuer, const char *ca_request_id, int64_t next_poll_at,
                               const char *reason, int64_t now) {
  if (device == NULL || csr_der == NULL || csr_len == 0 || spki == NULL || spki_len == 0) {
    return CAPSTAN_EINVAL;
  }
  uint8_t key[32];
  capstan_csr_key(spki, spki_len, key);
  Capstan__Device *d;
  int err = capstan_store_device_get(txn, device, &d);
  if (err != 0) return err;

  /* The older request of the device, unless it is this very key. */
  if (d->has_cert_request && d->cert_request.len == 32 && memcmp(d->cert_request.data, key, 32)) {
    Capstan__CertRequest *old;
    err = capstan_store_csr_get(txn, d->cert_request.data, &old);
    if (err == 0) {
      if (old->status == CAPSTAN__CSR_STATUS__CSR_STATUS_PENDING ||
          old->status == CAPSTAN__CSR_STATUS__CSR_STATUS_ISSUED) {
        if (old->status == CAPSTAN__CSR_STATUS__CSR_STATUS_ISSUED && old->has_cert_key &&
            old->cert_key.len == CAPSTAN_SERIAL_LEN) {
          err = cert_make_stale(txn, old->cert_key.data, now, "(" SUPERSEDED ")");
        }
        if (err == 0) {
          err = set_status(txn, d->cert_request.data, old, CAPSTAN_CSR_STALE, SUPERSEDED, now);
        }
      }
      capstan__cert_request__free_unpacked(old, NULL);
    } else if (err == CAPSTAN_ENOENT) {
      err = 0; /* deleted by the operator */
    }
    if (err != 0) goto done;
  }

  /* The same request again (a phone that retries): it keeps its age. */
  int64_t created = now;
  Capstan__CertRequest *same;
  err = capstan_store_csr_get(txn, key, &same);
  if (err == 0) {
    int live = same->status == CAPSTAN__CSR_STATUS__CSR_STATUS_PENDING ||
               same->status == CAPSTAN__CSR_STATUS__CSR_STATUS_ISSUED;
    int mine = same->device != NULL && strcmp(same->device, d->name) == 0;
    if (live && mine && same->has_created_at) created = same->created_at;
    capstan__cert_request__free_unpacked(same, NULL);
    /* Requests are matched to certificates by key: another device's live
     * request for this key stays theirs (a phone cannot take another's
     * request by presenting its public key). */
    if (live && !mine) {
      err = CAPSTAN_EEXIST;
      goto done;
    }
  } else if (err != CAPSTAN_ENOENT) {
    goto done;
  }

  Capstan__CertRequest rec = CAPSTAN__CERT_REQUEST__INIT;
  SET(&rec, schema_version, 1);
  rec.device = d->name;
  rec.csr_der.data = (uint8_t *)csr_der;
  rec.csr_der.len = csr_len;
  rec.public_key.data = (uint8_t *)spki;
  rec.public_key.len = spki_len;
  SET(&rec, created_at, created);
  SET(&rec, status, CAPSTAN__CSR_STATUS__CSR_STATUS_PENDING);
  SET(&rec, status_changed_at, now);
  SET(&rec, issuer, issuer);
  char id[64], why[256];
  copy_string(id, sizeof(id), ca_request_id);
  rec.ca_request_id = id[0] != '\0' ? id : NULL;
  if (next_poll_at != 0) SET(&rec, next_poll_at, next_poll_at);
  copy_string(why, sizeof(why), reason);
  rec.reason = why[0] != '\0' ? why : NULL;
  err = capstan_store_csr_put(txn, key, &rec);
  if (err != 0) goto done;

  char hex[65];
  key_hex(key, hex);
  err = capstan_audit_appendf(txn, d->name, "csr_pending", "key=%.16s issuer=%s%s%s", hex,
                              capstan_issuer_name(issuer), id[0] ? " ca_id=" : "", id);
  if (err != 0) goto done;

  err = capstan_record_set_bytes(&d->cert_request, &d->has_cert_request, key, sizeof(key));
  if (err != 0) goto done;
  SET(d, updated_at, now);
  err = capstan_store_device_put(txn, d);
  if (err != 0) goto done;

  /* What the operator reads in `device show` while the phone waits. */
  char status[320];
  if (issuer == CAPSTAN_ISSUER_OFFLINE) {
    snprintf(status, sizeof(status), "waiting for the offline CA: capstan csr export");
  } else if (id[0] != '\0') {
    snprintf(status, sizeof(status), "waiting for the CA to approve request %s", id);
  } else {
    snprintf(status, sizeof(status), "waiting for the CA%s%s", why[0] ? ": " : "", why);
  }
  err = capstan_devices_set_status(txn, d->name, CAPSTAN__OP_STATUS__OP_STATUS_PENDING, status, now,
                                   false);
done:
  capstan__device__free_unpacked(d, NULL);
  return err;
}

static int set_chain(Capstan__CertRequest *rec, const uint8_t *const *chain_der,
                     const size_t *chain_lens, size_t chain_count) {
  for (size_t i = 0; i < rec->n_chain_der; i++) free(rec->chain_der[i].data);
  free(rec->chain_der);
  rec->chain_der = NULL;
  rec->n_chain_der = 0;
  if (chain_count == 0) return 0;
  rec->chain_der = calloc(chain_count, sizeof(*rec->chain_der));
  if (rec->chain_der == NULL) return CAPSTAN_ENOMEM;
  for (size_t i = 0; i < chain_count; i++) {
    uint8_t *copy = malloc(chain_lens[i] ? chain_lens[i] : 1);
    if (copy == NULL) return CAPSTAN_ENOMEM;
    memcpy(copy, chain_der[i], chain_lens[i]);
    rec->chain_der[i].data = copy;
    rec->chain_der[i].len = chain_lens[i];
    rec->n_chain_der++;
  }
  return 0;
}

int capstan_csr_record_issued(capstan_txn_t *txn, const uint8_t key[32], const uint8_t *cert_der,
                              size_t cert_len, const uint8_t *const *chain_der,
                              const size_t *chain_lens, size_t chain_count, int64_t now) {
  if (key == NULL || cert_der == NULL || cert_len == 0 || (chain_count > 0 && chain_der == NULL)) {
    return CAPSTAN_EINVAL;
  }
  X509 *cert = NULL;
  int err = capstan_pki_parse_cert(cert_der, cert_len, &cert);
  if (err != 0) return CAPSTAN_EINVAL;
  int64_t not_before = 0, not_after = 0;
  err = capstan_pki_cert_validity(cert, &not_before, &not_after);
  /* The request's key is the certificate's (|key| is the SHA-256 of its
   * SPKI): a certificate never lands on another phone's request, whatever
   * the caller checked. */
  uint8_t *spki = NULL, cert_key_id[32];
  size_t spki_len = 0;
  EVP_PKEY *pub = err == 0 ? X509_get_pubkey(cert) : NULL;
  if (pub == NULL || capstan_pki_public_key_to_der(pub, &spki, &spki_len) != 0) {
    err = CAPSTAN_EINVAL;
  } else {
    capstan_csr_key(spki, spki_len, cert_key_id);
    if (memcmp(cert_key_id, key, 32) != 0) err = CAPSTAN_EINVAL;
  }
  free(spki);
  EVP_PKEY_free(pub);
  X509_free(cert);
  if (err != 0) return CAPSTAN_EINVAL;

  Capstan__CertRequest *rec;
  err = capstan_store_csr_get(txn, key, &rec);
  if (err != 0) return err;
  if (rec->status != CAPSTAN__CSR_STATUS__CSR_STATUS_PENDING) {
    err = CAPSTAN_EEXIST;
    goto done;
  }
  uint8_t serial[CAPSTAN_SERIAL_LEN];
  capstan_csr_cert_key(cert_der, cert_len, serial);
  char md5[33];
  capstan_pki_md5hash(cert_der, cert_len, md5);
  /* Like a self-signed LSC: certs database, device history, cert_issued. */
  err = capstan_devices_record_issued(txn, rec->device, serial, cert_der, cert_len, not_after, md5,
                                      now);
  if (err != 0) goto done;
  if ((err = capstan_record_set_bytes(&rec->cert_key, &rec->has_cert_key, serial,
                                      sizeof(serial))) != 0 ||
      (err = set_chain(rec, chain_der, chain_lens, chain_count)) != 0) {
    goto done;
  }
  rec->has_next_poll_at = 0;
  rec->next_poll_at = 0;
  err = set_status(txn, key, rec, CAPSTAN_CSR_ISSUED,
                   "issued: the phone gets it in its next session", now);
  if (err != 0) goto done;

  /* The device's latest request is this one: it waits for the phone. */
  uint8_t latest[32];
  if (device_request_key(txn, rec->device, latest) == 0 && memcmp(latest, key, 32) == 0) {
    err = capstan_devices_set_status(txn, rec->device, CAPSTAN__OP_STATUS__OP_STATUS_PENDING,
                                     "certificate issued: the phone gets it in its next session",
                                     now, false);
  }
done:
  capstan__cert_request__free_unpacked(rec, NULL);
  return err;
}

int capstan_csr_record_failed(capstan_txn_t *txn, const uint8_t key[32], const char *reason,
                              int64_t now) {
  if (key == NULL || reason == NULL) return CAPSTAN_EINVAL;
  Capstan__CertRequest *rec;
  int err = capstan_store_csr_get(txn, key, &rec);
  if (err != 0) return err;
  rec->has_next_poll_at = 0;
  rec->next_poll_at = 0;
  err = set_status(txn, key, rec, CAPSTAN_CSR_FAILED, reason, now);
  if (err == 0) {
    err = capstan_devices_set_status(txn, rec->device, CAPSTAN__OP_STATUS__OP_STATUS_FAILED, reason,
                                     now, false);
    if (err == CAPSTAN_ENOENT) err = 0; /* the device went away meanwhile */
  }
  capstan__cert_request__free_unpacked(rec, NULL);
  return err;
}

int capstan_csr_record_polled(capstan_txn_t *txn, const uint8_t key[32], int64_t next_poll_at,
                              const char *ca_request_id, const char *reason, int64_t now) {
  if (key == NULL) return CAPSTAN_EINVAL;
  Capstan__CertRequest *rec;
  int err = capstan_store_csr_get(txn, key, &rec);
  if (err != 0) return err;
  if (rec->status != CAPSTAN__CSR_STATUS__CSR_STATUS_PENDING) {
    err = CAPSTAN_EEXIST;
    goto done;
  }
  SET(rec, next_poll_at, next_poll_at);
  SET(rec, polls, rec->polls + 1);
  /* The CA's id for it, once the CA gave one (a submit answered "pending"
   * after the phone's wait): polls ask about that request from now on
   * instead of submitting it again. */
  if (ca_request_id != NULL && ca_request_id[0] != '\0' &&
      (err = capstan_record_set_string(&rec->ca_request_id, ca_request_id)) != 0) {
    goto done;
  }
  if ((err = set_reason(rec, reason)) != 0) goto done;
  err = capstan_store_csr_put(txn, key, rec);
  if (err != 0) goto done;
  char hex[65];
  key_hex(key, hex);
  err = capstan_audit_appendf(txn, rec->device, "csr_polled", "key=%.16s polls=%u reason=\"%s\"",
                              hex, rec->polls, reason != NULL ? reason : "");
done:
  capstan__cert_request__free_unpacked(rec, NULL);
  return err;
}

/* |device|'s latest request, if it is in |want|. */
static int latest_in(capstan_txn_t *txn, const char *device, Capstan__CsrStatus want,
                     uint8_t key[32], Capstan__CertRequest **rec) {
  *rec = NULL;
  int err = device_request_key(txn, device, key);
  if (err != 0) return err;
  err = capstan_store_csr_get(txn, key, rec);
  if (err != 0) return err;
  if ((*rec)->status != want) {
    capstan__cert_request__free_unpacked(*rec, NULL);
    *rec = NULL;
    return CAPSTAN_ENOENT;
  }
  return 0;
}

#define PHONE_REFUSED "the phone refused the certificate"

int capstan_csr_record_refused_by_phone(capstan_txn_t *txn, const char *device, int64_t now) {
  uint8_t key[32];
  Capstan__CertRequest *rec;
  int err = latest_in(txn, device, CAPSTAN__CSR_STATUS__CSR_STATUS_ISSUED, key, &rec);
  if (err != 0) return err;
  if (rec->has_cert_key && rec->cert_key.len == CAPSTAN_SERIAL_LEN) {
    err = cert_make_stale(txn, rec->cert_key.data, now, "(" PHONE_REFUSED ")");
  }
  if (err == 0) err = set_status(txn, key, rec, CAPSTAN_CSR_STALE, PHONE_REFUSED, now);
  capstan__cert_request__free_unpacked(rec, NULL);
  return err;
}

int capstan_csr_record_installed(capstan_txn_t *txn, const char *device, int64_t now) {
  uint8_t key[32];
  Capstan__CertRequest *rec;
  int err = latest_in(txn, device, CAPSTAN__CSR_STATUS__CSR_STATUS_ISSUED, key, &rec);
  if (err != 0) return err;
  err = set_status(txn, key, rec, CAPSTAN_CSR_INSTALLED, "the phone stored the certificate", now);
  capstan__cert_request__free_unpacked(rec, NULL);
  return err;
}

/* ---- Reading ---------------------------------------------------------- */

int capstan_csr_get(capstan_txn_t *txn, const uint8_t key[32], capstan_cert_request_t *out) {
  memset(out, 0, sizeof(*out));
  Capstan__CertRequest *rec;
  int err = capstan_store_csr_get(txn, key, &rec);
  if (err != 0) return err;
  err = from_record(key, rec, out);
  capstan__cert_request__free_unpacked(rec, NULL);
  return err;
}

int capstan_csr_get_for_device(capstan_txn_t *txn, const char *device,
                               capstan_cert_request_t *out) {
  memset(out, 0, sizeof(*out));
  uint8_t key[32];
  int err = device_request_key(txn, device, key);
  if (err != 0) return err;
  return capstan_csr_get(txn, key, out);
}

typedef struct {
  capstan_csr_visit_fn fn;
  void *arg;
  int err;
} each_t;

static int each_fn(const uint8_t key[32], const Capstan__CertRequest *rec, void *arg) {
  each_t *e = arg;
  capstan_cert_request_t r;
  int err = from_record(key, rec, &r);
  if (err != 0) {
    e->err = err;
    return err;
  }
  err = e->fn(&r, e->arg);
  capstan_cert_request_cleanup(&r);
  if (err != 0) {
    e->err = err;
    return 1; /* stop; the visitor's value is returned below */
  }
  return 0;
}

int capstan_csr_each(capstan_txn_t *txn, capstan_csr_visit_fn fn, void *arg) {
  each_t e = {fn, arg, 0};
  int err = capstan_store_csr_iterate(txn, each_fn, &e);
  return e.err != 0 ? e.err : err;
}

typedef struct {
  uint64_t count;
  int64_t oldest;
} pending_count_t;

static int count_fn(const uint8_t key[32], const Capstan__CertRequest *rec, void *arg) {
  (void)key;
  pending_count_t *c = arg;
  if (rec->status != CAPSTAN__CSR_STATUS__CSR_STATUS_PENDING) return 0;
  c->count++;
  if (c->oldest == 0 || rec->created_at < c->oldest) c->oldest = rec->created_at;
  return 0;
}

int capstan_csr_count_pending(capstan_txn_t *txn, uint64_t *count, int64_t *oldest) {
  pending_count_t c = {0, 0};
  int err = capstan_store_csr_iterate(txn, count_fn, &c);
  if (err != 0) return err;
  *count = c.count;
  *oldest = c.oldest;
  return 0;
}

int capstan_csr_delete(capstan_txn_t *txn, const uint8_t key[32], int64_t now) {
  (void)now;
  Capstan__CertRequest *rec;
  int err = capstan_store_csr_get(txn, key, &rec);
  if (err != 0) return err;
  err = capstan_store_csr_delete(txn, key);
  if (err != 0) goto done;
  char hex[65];
  key_hex(key, hex);
  err = capstan_audit_appendf(txn, rec->device, "csr_deleted", "key=%.16s status=%s", hex,
                              capstan_csr_status_name((capstan_csr_status_t)rec->status));
  if (err != 0) goto done;
  Capstan__Device *d;
  int derr = capstan_store_device_get(txn, rec->device, &d);
  if (derr == CAPSTAN_ENOENT) goto done;
  if (derr != 0) {
    err = derr;
    goto done;
  }
  if (d->has_cert_request && d->cert_request.len == 32 &&
      memcmp(d->cert_request.data, key, 32) == 0) {
    err = capstan_record_set_bytes(&d->cert_request, &d->has_cert_request, NULL, 0);
    if (err == 0) err = capstan_store_device_put(txn, d);
  }
  capstan__device__free_unpacked(d, NULL);
done:
  capstan__cert_request__free_unpacked(rec, NULL);
  return err;
}

int capstan_csr_handover(capstan_txn_t *txn, const char *device, uint8_t **der, size_t *len,
                         uint8_t cert_key[CAPSTAN_SERIAL_LEN], char md5[33]) {
  *der = NULL;
  *len = 0;
  uint8_t key[32];
  Capstan__CertRequest *rec;
  int err = latest_in(txn, device, CAPSTAN__CSR_STATUS__CSR_STATUS_ISSUED, key, &rec);
  if (err != 0) return err;
  Capstan__IssuedCert *c = NULL;
  if (!rec->has_cert_key || rec->cert_key.len != CAPSTAN_SERIAL_LEN) {
    err = CAPSTAN_ENOENT;
    goto done;
  }
  err = capstan_store_cert_get(txn, rec->cert_key.data, &c);
  if (err != 0) goto done;
  /* Checked when it came; not handed out once it expired or stopped being
   * the device's (stale, deleted): the install then starts over. */
  if (c->status != CAPSTAN__CERT_STATUS__CERT_STATUS_ISSUED ||
      (c->not_after != 0 && c->not_after <= (int64_t)time(NULL))) {
    err = CAPSTAN_ENOENT;
    goto done;
  }
  *der = malloc(c->der.len ? c->der.len : 1);
  if (*der == NULL) {
    err = CAPSTAN_ENOMEM;
    goto done;
  }
  memcpy(*der, c->der.data, c->der.len);
  *len = c->der.len;
  memcpy(cert_key, rec->cert_key.data, CAPSTAN_SERIAL_LEN);
  if (c->md5hash != NULL && strlen(c->md5hash) == 32) {
    memcpy(md5, c->md5hash, 33);
  } else {
    capstan_pki_md5hash(c->der.data, c->der.len, md5);
  }
done:
  if (c != NULL) capstan__issued_cert__free_unpacked(c, NULL);
  capstan__cert_request__free_unpacked(rec, NULL);
  return err;
}
