#include "storage/devices.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "storage/internal.h"
#include "storage/pg_store.h"

#define SET(msg, field, v)  \
  do {                      \
    (msg)->has_##field = 1; \
    (msg)->field = (v);     \
  } while (0)

/* ---- The record enums are the vocabulary of core/base/phone.h ---------
 * records.proto numbers its enums as the base values; records already on
 * disk hold these numbers, so neither side may move. */
#define SAME(proto, base, what) \
  _Static_assert((int)(proto) == (int)(base), what " differs from base")
SAME(CAPSTAN__KEY_ALG__KEY_ALG_RSA, CAPSTAN_KEY_RSA, "KeyAlg RSA");
SAME(CAPSTAN__KEY_ALG__KEY_ALG_EC, CAPSTAN_KEY_EC, "KeyAlg EC");
SAME(CAPSTAN__AUTH_MODE__AUTH_MODE_NONE, CAPSTAN_AUTH_MODE_NONE, "AuthMode NONE");
SAME(CAPSTAN__AUTH_MODE__AUTH_MODE_STRING, CAPSTAN_AUTH_MODE_STRING, "AuthMode STRING");
SAME(CAPSTAN__AUTH_MODE__AUTH_MODE_NULL, CAPSTAN_AUTH_MODE_NULL_STRING, "AuthMode NULL");
SAME(CAPSTAN__AUTH_MODE__AUTH_MODE_LSC, CAPSTAN_AUTH_MODE_LSC, "AuthMode LSC");
SAME(CAPSTAN__AUTH_MODE__AUTH_MODE_MIC, CAPSTAN_AUTH_MODE_MIC, "AuthMode MIC");
SAME(CAPSTAN__CERT_TYPE__CERT_TYPE_UNKNOWN, CAPSTAN_CERT_UNKNOWN, "CertType UNKNOWN");
SAME(CAPSTAN__CERT_TYPE__CERT_TYPE_LSC, CAPSTAN_CERT_LSC, "CertType LSC");
SAME(CAPSTAN__CERT_TYPE__CERT_TYPE_MIC, CAPSTAN_CERT_MIC, "CertType MIC");
#undef SAME

Capstan__Device *capstan_device_new(const char *name) {
  Capstan__Device *d = malloc(sizeof(*d));
  if (d == NULL) return NULL;
  capstan__device__init(d);
  d->name = strdup(name != NULL ? name : "");
  if (d->name == NULL) {
    free(d);
    return NULL;
  }
  SET(d, schema_version, 1);
  SET(d, status, CAPSTAN__OP_STATUS__OP_STATUS_NONE);
  return d;
}

/* ---- Typed access -------------------------------------------------------- */

int capstan_store_device_get(capstan_txn_t *txn, const char *name, Capstan__Device **out) {
  size_t n;
  *out = NULL;
  int err = capstan_store_name_key(name, &n);
  if (err != 0) return err;
  return capstan_store_get(txn, CAPSTAN_DB_DEVICES, name, n, &capstan__device__descriptor,
                           (ProtobufCMessage **)out);
}

int capstan_store_device_put(capstan_txn_t *txn, const Capstan__Device *d) {
  if (d == NULL || !capstan_device_name_valid(d->name)) return CAPSTAN_EINVAL;
  return capstan_store_put(txn, CAPSTAN_DB_DEVICES, d->name, strlen(d->name), &d->base);
}

int capstan_store_device_delete(capstan_txn_t *txn, const char *name) {
  size_t n;
  int err = capstan_store_name_key(name, &n);
  if (err != 0) return err;
  return capstan_store_del(txn, CAPSTAN_DB_DEVICES, name, n);
}

typedef struct {
  capstan_store_device_fn fn;
  void *arg;
} in_progress_iter_t;

static int only_in_progress(const Capstan__Device *d, void *arg) {
  in_progress_iter_t *it = arg;
  return d->status == CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS ? it->fn(d, it->arg) : 0;
}

int capstan_store_device_iterate_in_progress(capstan_txn_t *txn, capstan_store_device_fn fn,
                                             void *arg) {
  if (txn != NULL && txn->pg != NULL) {
    return capstan_pg_devices_in_progress(txn->pg, (int (*)(const void *, void *))fn, arg);
  }
  in_progress_iter_t it = {fn, arg};
  return capstan_store_device_iterate(txn, only_in_progress, &it);
}

int capstan_store_device_iterate(capstan_txn_t *txn, capstan_store_device_fn fn, void *arg) {
  return capstan_store_iterate_typed(txn, CAPSTAN_DB_DEVICES, &capstan__device__descriptor,
                                     (int (*)(const void *, void *))fn, arg);
}

typedef struct {
  const char *name;
  Capstan__Device **out;
} device_load_t;

static int device_load_fn(capstan_txn_t *txn, void *arg) {
  device_load_t *l = arg;
  return capstan_store_device_get(txn, l->name, l->out);
}

int capstan_store_device_load(capstan_store_t *store, const char *name, Capstan__Device **out) {
  device_load_t l = {name, out};
  *out = NULL;
  return capstan_store_read(store, device_load_fn, &l);
}

int capstan_store_cert_get(capstan_txn_t *txn, const uint8_t serial[CAPSTAN_SERIAL_LEN],
                           Capstan__IssuedCert **out) {
  return capstan_store_get(txn, CAPSTAN_DB_CERTS, serial, CAPSTAN_SERIAL_LEN,
                           &capstan__issued_cert__descriptor, (ProtobufCMessage **)out);
}

int capstan_store_cert_put(capstan_txn_t *txn, const Capstan__IssuedCert *c) {
  if (c == NULL || c->serial.len != CAPSTAN_SERIAL_LEN) return CAPSTAN_EINVAL;
  return capstan_store_put(txn, CAPSTAN_DB_CERTS, c->serial.data, c->serial.len, &c->base);
}

int capstan_store_cert_delete(capstan_txn_t *txn, const uint8_t serial[CAPSTAN_SERIAL_LEN]) {
  return capstan_store_del(txn, CAPSTAN_DB_CERTS, serial, CAPSTAN_SERIAL_LEN);
}

int capstan_store_cert_iterate(capstan_txn_t *txn, capstan_store_cert_fn fn, void *arg) {
  return capstan_store_iterate_typed(txn, CAPSTAN_DB_CERTS, &capstan__issued_cert__descriptor,
                                     (int (*)(const void *, void *))fn, arg);
}

/* ---- Name tables (one list each) -------------------------------------- */

typedef struct {
  int value;
  const char *name;
} name_entry_t;

static const char *table_name(const name_entry_t *t, size_t n, int v) {
  for (size_t i = 0; i < n; i++) {
    if (t[i].value == v) return t[i].name;
  }
  return "?";
}

static int table_parse(const name_entry_t *t, size_t n, const char *s, int *out) {
  if (s == NULL) return CAPSTAN_EINVAL;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(t[i].name, s) == 0) {
      *out = t[i].value;
      return 0;
    }
  }
  return CAPSTAN_EINVAL;
}

#define OPERATIONS(X)                                           \
  X(CAPSTAN__OPERATION__OPERATION_INSTALL, "install")           \
  X(CAPSTAN__OPERATION__OPERATION_DELETE, "delete")             \
  X(CAPSTAN__OPERATION__OPERATION_TROUBLESHOOT, "troubleshoot") \
  X(CAPSTAN__OPERATION__OPERATION_NONE, "none")
#define OP_STATUSES(X)                                        \
  X(CAPSTAN__OP_STATUS__OP_STATUS_PENDING, "pending")         \
  X(CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS, "in-progress") \
  X(CAPSTAN__OP_STATUS__OP_STATUS_SUCCEEDED, "succeeded")     \
  X(CAPSTAN__OP_STATUS__OP_STATUS_FAILED, "failed")           \
  X(CAPSTAN__OP_STATUS__OP_STATUS_EXPIRED, "expired")         \
  X(CAPSTAN__OP_STATUS__OP_STATUS_THROTTLED, "throttled")     \
  X(CAPSTAN__OP_STATUS__OP_STATUS_NONE, "none")
#define CERT_STATUSES(X)                                      \
  X(CAPSTAN__CERT_STATUS__CERT_STATUS_ISSUED, "issued")       \
  X(CAPSTAN__CERT_STATUS__CERT_STATUS_INSTALLED, "installed") \
  X(CAPSTAN__CERT_STATUS__CERT_STATUS_STALE, "stale")         \
  X(CAPSTAN__CERT_STATUS__CERT_STATUS_DELETED, "deleted")

#define ENTRY(v, n) {(int)(v), n},
#define LIST(v, n) n ","
static const name_entry_t operations[] = {OPERATIONS(ENTRY)};
static const name_entry_t op_statuses[] = {OP_STATUSES(ENTRY)};
static const name_entry_t cert_statuses[] = {CERT_STATUSES(ENTRY)};
static const char operation_list[] = OPERATIONS(LIST);
static const char op_status_list[] = OP_STATUSES(LIST);
#define COUNT(t) (sizeof(t) / sizeof((t)[0]))

const char *capstan_operation_name(Capstan__Operation v) {
  return table_name(operations, COUNT(operations), (int)v);
}
int capstan_operation_parse(const char *s, Capstan__Operation *out) {
  int v;
  int err = table_parse(operations, COUNT(operations), s, &v);
  if (err == 0) *out = (Capstan__Operation)v;
  return err;
}
const char *capstan_operation_names(void) {
  static char buf[sizeof(operation_list)];
  return capstan_name_list_text(operation_list, buf, sizeof(buf));
}

int capstan_auth_mode_parse(const char *s, Capstan__AuthMode *out) {
  int v;
  int err = capstan_auth_mode_from_name(s, &v);
  if (err == 0) *out = (Capstan__AuthMode)v;
  return err;
}

const char *capstan_op_status_name(Capstan__OpStatus v) {
  return table_name(op_statuses, COUNT(op_statuses), (int)v);
}
int capstan_op_status_parse(const char *s, Capstan__OpStatus *out) {
  int v;
  int err = table_parse(op_statuses, COUNT(op_statuses), s, &v);
  if (err == 0) *out = (Capstan__OpStatus)v;
  return err;
}
const char *capstan_op_status_names(void) {
  static char buf[sizeof(op_status_list)];
  return capstan_name_list_text(op_status_list, buf, sizeof(buf));
}

const char *capstan_cert_status_name(Capstan__CertStatus v) {
  return table_name(cert_statuses, COUNT(cert_statuses), (int)v);
}

int capstan_key_parse(const char *s, Capstan__KeyAlg *alg, uint32_t *bits) {
  int a;
  unsigned b;
  int err = capstan_key_from_name(s, &a, &b);
  if (err == 0) {
    *alg = (Capstan__KeyAlg)a;
    *bits = b;
  }
  return err;
}

/* ---- Domain operations ------------------------------------------------ */

static void serial_hex(const uint8_t *serial, char out[2 * CAPSTAN_SERIAL_LEN + 1]) {
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < CAPSTAN_SERIAL_LEN; i++) {
    out[2 * i] = hex[serial[i] >> 4];
    out[2 * i + 1] = hex[serial[i] & 15];
  }
  out[2 * CAPSTAN_SERIAL_LEN] = '\0';
}

/* Every change of a certificate's status is an audit event in the same
 * transaction ("cert_installed serial=... why"). */
static int set_cert_status(capstan_txn_t *txn, Capstan__IssuedCert *c, Capstan__CertStatus st,
                           int64_t now, const char *why) {
  SET(c, status, st);
  SET(c, status_changed_at, now);
  int err = capstan_store_cert_put(txn, c);
  if (err != 0 || c->serial.len != CAPSTAN_SERIAL_LEN) return err;
  char hex[2 * CAPSTAN_SERIAL_LEN + 1], event[32];
  serial_hex(c->serial.data, hex);
  snprintf(event, sizeof(event), "cert_%s", capstan_cert_status_name(st));
  return capstan_audit_appendf(txn, c->device, event, "serial=%s%s%s", hex, why ? " " : "",
                               why ? why : "");
}

/* Moves every certificate of |d|'s history whose status is |from| (other
 * than |except|) to |to|, saying |why| in its audit event. A serial whose
 * record is gone is skipped: the operator may have deleted stale
 * certificates. */
static int move_history(capstan_txn_t *txn, const Capstan__Device *d, const uint8_t *except,
                        const Capstan__CertStatus *from, size_t nfrom, Capstan__CertStatus to,
                        int64_t now, const char *why) {
  for (size_t i = 0; i < d->n_cert_history; i++) {
    const ProtobufCBinaryData *s = &d->cert_history[i];
    if (s->len != CAPSTAN_SERIAL_LEN) continue;
    if (except != NULL && memcmp(s->data, except, CAPSTAN_SERIAL_LEN) == 0) continue;
    Capstan__IssuedCert *c;
    int err = capstan_store_cert_get(txn, s->data, &c);
    if (err == CAPSTAN_ENOENT) continue;
    if (err != 0) return err;
    for (size_t j = 0; j < nfrom; j++) {
      if (c->status == from[j]) {
        err = set_cert_status(txn, c, to, now, why);
        break;
      }
    }
    capstan__issued_cert__free_unpacked(c, NULL);
    if (err != 0) return err;
  }
  return 0;
}

static int history_append(Capstan__Device *d, const uint8_t serial[CAPSTAN_SERIAL_LEN]) {
  for (size_t i = 0; i < d->n_cert_history; i++) {
    if (d->cert_history[i].len == CAPSTAN_SERIAL_LEN &&
        memcmp(d->cert_history[i].data, serial, CAPSTAN_SERIAL_LEN) == 0) {
      return 0;
    }
  }
  ProtobufCBinaryData *h =
      realloc(d->cert_history, (d->n_cert_history + 1) * sizeof(ProtobufCBinaryData));
  if (h == NULL) return CAPSTAN_ENOMEM;
  d->cert_history = h;
  uint8_t *copy = malloc(CAPSTAN_SERIAL_LEN);
  if (copy == NULL) return CAPSTAN_ENOMEM;
  memcpy(copy, serial, CAPSTAN_SERIAL_LEN);
  h[d->n_cert_history].data = copy;
  h[d->n_cert_history].len = CAPSTAN_SERIAL_LEN;
  d->n_cert_history++;
  return 0;
}

int capstan_devices_record_issued(capstan_txn_t *txn, const char *name,
                                  const uint8_t serial[CAPSTAN_SERIAL_LEN], const uint8_t *der,
                                  size_t der_len, int64_t not_after, const char *md5hex,
                                  int64_t now) {
  if (serial == NULL || der == NULL || der_len == 0) return CAPSTAN_EINVAL;
  Capstan__Device *d;
  int err = capstan_store_device_get(txn, name, &d);
  if (err != 0) return err;
  char hex[2 * CAPSTAN_SERIAL_LEN + 1], why[96];
  serial_hex(serial, hex);
  snprintf(why, sizeof(why), "superseded_by=%s (never confirmed by the phone)", hex);
  static const Capstan__CertStatus issued[] = {CAPSTAN__CERT_STATUS__CERT_STATUS_ISSUED};
  err = move_history(txn, d, serial, issued, 1, CAPSTAN__CERT_STATUS__CERT_STATUS_STALE, now, why);
  if (err != 0) goto done;

  Capstan__IssuedCert c = CAPSTAN__ISSUED_CERT__INIT;
  SET(&c, schema_version, 1);
  c.serial.data = (uint8_t *)serial;
  c.serial.len = CAPSTAN_SERIAL_LEN;
  c.device = d->name;
  c.der.data = (uint8_t *)der;
  c.der.len = der_len;
  SET(&c, status, CAPSTAN__CERT_STATUS__CERT_STATUS_ISSUED);
  SET(&c, issued_at, now);
  SET(&c, not_after, not_after);
  SET(&c, status_changed_at, now);
  c.md5hash = (char *)md5hex;
  err = capstan_store_cert_put(txn, &c);
  if (err != 0) goto done;
  char until[32] = "-";
  time_t na = (time_t)not_after;
  struct tm tm;
  if (not_after != 0 && gmtime_r(&na, &tm) != NULL) {
    strftime(until, sizeof(until), "%Y-%m-%dT%H:%M:%SZ", &tm);
  }
  err = capstan_audit_appendf(txn, d->name, "cert_issued", "serial=%s not_after=%s md5=%s", hex,
                              until, md5hex != NULL ? md5hex : "-");
  if (err != 0) goto done;

  err = history_append(d, serial);
  if (err != 0) goto done;
  SET(d, updated_at, now);
  err = capstan_store_device_put(txn, d);
done:
  capstan__device__free_unpacked(d, NULL);
  return err;
}

static int complete_operation(Capstan__Device *d, int64_t now) {
  if (d->status != CAPSTAN__OP_STATUS__OP_STATUS_SUCCEEDED) SET(d, status_changed_at, now);
  SET(d, status, CAPSTAN__OP_STATUS__OP_STATUS_SUCCEEDED);
  SET(d, last_operation, d->operation);
  SET(d, operation, CAPSTAN__OPERATION__OPERATION_NONE);
  SET(d, updated_at, now);
  return capstan_record_set_string(&d->status_reason, NULL);
}

int capstan_devices_record_installed(capstan_txn_t *txn, const char *name,
                                     const uint8_t serial[CAPSTAN_SERIAL_LEN], const uint8_t *spki,
                                     size_t spki_len, const char *md5hex, int64_t now) {
  if (serial == NULL) return CAPSTAN_EINVAL;
  Capstan__Device *d = NULL;
  Capstan__IssuedCert *c = NULL;
  int err = capstan_store_device_get(txn, name, &d);
  if (err != 0) return err;
  err = capstan_store_cert_get(txn, serial, &c);
  if (err != 0) goto done;
  if (c->device == NULL || strcmp(c->device, d->name) != 0) {
    LOG_WARN("event=cert_device_mismatch device=%s", d->name);
    err = CAPSTAN_EINVAL;
    goto done;
  }
  char hex[2 * CAPSTAN_SERIAL_LEN + 1], why[96];
  serial_hex(serial, hex);
  snprintf(why, sizeof(why), "replaced_by=%s (on the phone)", hex);
  static const Capstan__CertStatus installed[] = {CAPSTAN__CERT_STATUS__CERT_STATUS_INSTALLED};
  err = move_history(txn, d, serial, installed, 1, CAPSTAN__CERT_STATUS__CERT_STATUS_DELETED, now,
                     why);
  if (err != 0) goto done;
  err = set_cert_status(txn, c, CAPSTAN__CERT_STATUS__CERT_STATUS_INSTALLED, now, NULL);
  if (err != 0) goto done;

  if ((err = capstan_record_set_bytes(&d->cert_der, &d->has_cert_der, c->der.data, c->der.len)) ||
      (err = capstan_record_set_string(&d->md5hash, md5hex != NULL ? md5hex : c->md5hash)) ||
      (err = capstan_record_set_bytes(&d->public_key, &d->has_public_key, spki, spki_len)) ||
      (err = history_append(d, serial)) || (err = complete_operation(d, now))) {
    goto done;
  }
  SET(d, cert_type, CAPSTAN__CERT_TYPE__CERT_TYPE_LSC);
  SET(d, cert_seen_at, now);
  err = capstan_store_device_put(txn, d);
done:
  capstan__issued_cert__free_unpacked(c, NULL);
  capstan__device__free_unpacked(d, NULL);
  return err;
}

int capstan_devices_record_seen_cert(capstan_txn_t *txn, const char *name, const uint8_t *der,
                                     size_t der_len, Capstan__CertType cert_type,
                                     const char *md5hex, const uint8_t *spki, size_t spki_len,
                                     int64_t now) {
  if (der == NULL || der_len == 0) return CAPSTAN_EINVAL;
  Capstan__Device *d;
  int err = capstan_store_device_get(txn, name, &d);
  if (err != 0) return err;
  if ((err = capstan_record_set_bytes(&d->cert_der, &d->has_cert_der, der, der_len)) ||
      (err = capstan_record_set_string(&d->md5hash, md5hex)) ||
      (err = capstan_record_set_bytes(&d->public_key, &d->has_public_key, spki, spki_len))) {
    goto done;
  }
  SET(d, cert_type, cert_type);
  SET(d, cert_seen_at, now);
  SET(d, updated_at, now);
  err = capstan_store_device_put(txn, d);
done:
  capstan__device__free_unpacked(d, NULL);
  return err;
}

int capstan_devices_set_status(capstan_txn_t *txn, const char *name, Capstan__OpStatus status,
                               const char *reason, int64_t now, bool count_attempt) {
  Capstan__Device *d;
  int err = capstan_store_device_get(txn, name, &d);
  if (err != 0) return err;
  if (status == CAPSTAN__OP_STATUS__OP_STATUS_SUCCEEDED) {
    err = complete_operation(d, now);
  } else {
    if (d->status != status) SET(d, status_changed_at, now);
    SET(d, status, status);
    SET(d, updated_at, now);
  }
  if (status != CAPSTAN__OP_STATUS__OP_STATUS_THROTTLED) {
    d->has_retry_after = 0;
    d->retry_after = 0;
  }
  if (err == 0 && reason != NULL) err = capstan_record_set_string(&d->status_reason, reason);
  if (err == 0 && reason == NULL) err = capstan_record_set_string(&d->status_reason, NULL);
  if (err == 0) {
    bool mine = status == CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS;
    err = capstan_record_set_string(&d->in_progress_node,
                                    mine ? capstan_store_node_name(txn->store) : NULL);
  }
  if (err == 0 && count_attempt) {
    SET(d, attempts, d->attempts + 1);
    SET(d, last_attempt_at, now);
  }
  if (err == 0) err = capstan_store_device_put(txn, d);
  capstan__device__free_unpacked(d, NULL);
  return err;
}

void capstan_auth_locked_reason(unsigned failures, const char *name, Capstan__Operation op,
                                char *buf, size_t len) {
  snprintf(buf, len,
           "locked: %u wrong authentication strings; capstan device set %s --operation %s "
           "re-arms it",
           failures, name,
           op == CAPSTAN__OPERATION__OPERATION_NONE ? "install" : capstan_operation_name(op));
}

int capstan_devices_wrong_string(capstan_txn_t *txn, const char *name, bool counted, unsigned max,
                                 const char *reason, int64_t now, char *stored, size_t len,
                                 unsigned *failures) {
  Capstan__Device *d;
  int err = capstan_store_device_get(txn, name, &d);
  if (err != 0) return err;
  unsigned n = d->auth_failures;
  if (counted && n < UINT32_MAX) n++;
  SET(d, auth_failures, n);
  char locked[CAPSTAN_AUTH_LOCKED_REASON_MAX];
  if (max > 0 && n >= max) {
    capstan_auth_locked_reason(n, name, d->operation, locked, sizeof(locked));
    reason = locked;
  }
  if (d->status != CAPSTAN__OP_STATUS__OP_STATUS_FAILED) SET(d, status_changed_at, now);
  SET(d, status, CAPSTAN__OP_STATUS__OP_STATUS_FAILED);
  SET(d, updated_at, now);
  d->has_retry_after = 0;
  d->retry_after = 0;
  err = capstan_record_set_string(&d->status_reason, reason);
  if (err == 0) {
    SET(d, attempts, d->attempts + 1);
    SET(d, last_attempt_at, now);
    err = capstan_store_device_put(txn, d);
  }
  if (err == 0 && stored != NULL && len > 0) snprintf(stored, len, "%s", reason ? reason : "");
  if (err == 0 && failures != NULL) *failures = n;
  capstan__device__free_unpacked(d, NULL);
  return err;
}

int capstan_devices_clear_wrong_strings(capstan_txn_t *txn, const char *name, int64_t now) {
  Capstan__Device *d;
  int err = capstan_store_device_get(txn, name, &d);
  if (err != 0) return err;
  if (d->auth_failures != 0 || d->has_auth_failures) {
    d->has_auth_failures = 0;
    d->auth_failures = 0;
    SET(d, updated_at, now);
    err = capstan_store_device_put(txn, d);
  }
  capstan__device__free_unpacked(d, NULL);
  return err;
}

void capstan_throttled_reason(int64_t retry_after, char *buf, size_t len) {
  time_t t = (time_t)retry_after;
  struct tm tm;
  if (gmtime_r(&t, &tm) == NULL) {
    snprintf(buf, len, "retry later");
    return;
  }
  snprintf(buf, len, "retry after %02d:%02d:%02d UTC", tm.tm_hour, tm.tm_min, tm.tm_sec);
}

int capstan_devices_set_throttled(capstan_txn_t *txn, const char *name, int64_t retry_after,
                                  int64_t now) {
  char reason[CAPSTAN_THROTTLED_REASON_MAX];
  capstan_throttled_reason(retry_after, reason, sizeof(reason));
  int err = capstan_devices_set_status(txn, name, CAPSTAN__OP_STATUS__OP_STATUS_THROTTLED, reason,
                                       now, false);
  if (err != 0) return err;
  Capstan__Device *d;
  if ((err = capstan_store_device_get(txn, name, &d)) != 0) return err;
  SET(d, retry_after, retry_after);
  err = capstan_store_device_put(txn, d);
  capstan__device__free_unpacked(d, NULL);
  return err;
}

typedef struct {
  char **names;
  size_t n, cap;
  int err;
  /* Other nodes alive now (sorted): their devices are theirs to end. */
  char **others;
  size_t nothers, theirs;
  const char *self;
} name_list_t;

static int name_cmp(const void *a, const void *b);

static int collect_in_progress(const Capstan__Device *d, void *arg) {
  name_list_t *l = arg;
  if (d->status != CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS) return 0;
  const char *owner = d->in_progress_node;
  if (owner != NULL && l->nothers > 0 && (l->self == NULL || strcmp(owner, l->self) != 0) &&
      bsearch(&owner, l->others, l->nothers, sizeof(*l->others), name_cmp) != NULL) {
    l->theirs++;
    return 0;
  }
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    char **p = realloc(l->names, cap * sizeof(*p));
    if (p == NULL) {
      l->err = CAPSTAN_ENOMEM;
      return 1;
    }
    l->names = p;
    l->cap = cap;
  }
  if ((l->names[l->n] = strdup(d->name)) == NULL) {
    l->err = CAPSTAN_ENOMEM;
    return 1;
  }
  l->n++;
  return 0;
}

static int name_cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

int capstan_devices_fail_in_progress(capstan_txn_t *txn, int64_t now, const char *reason,
                                     const char *at, char *const *live, size_t nlive,
                                     size_t *failed, size_t *skipped) {
  *failed = 0;
  if (skipped != NULL) *skipped = 0;
  /* Names first, writes after: no record changes under the cursor. */
  name_list_t l = {.self = capstan_store_node_name(txn->store)};
  int err = capstan_store_live_nodes(txn, &l.others, &l.nothers);
  if (err == 0) err = capstan_store_device_iterate_in_progress(txn, collect_in_progress, &l);
  if (err == 0) err = l.err;
  size_t n = 0, kept = l.theirs;
  for (size_t i = 0; err == 0 && i < l.n; i++) {
    if (nlive > 0 && bsearch(&l.names[i], live, nlive, sizeof(*live), name_cmp) != NULL) {
      kept++; /* its session is still running: it ends the attempt itself */
      continue;
    }
    err = capstan_devices_set_status(txn, l.names[i], CAPSTAN__OP_STATUS__OP_STATUS_FAILED, reason,
                                     now, false);
    /* The attempt's outcome, as a session that ended would have written. */
    if (err == 0) {
      err = capstan_audit_appendf(txn, l.names[i], "attempt_failed", "reason=\"%s\" at=%s", reason,
                                  at);
    }
    n++;
  }
  if (err == 0) {
    *failed = n;
    if (skipped != NULL) *skipped = kept;
  }
  for (size_t i = 0; i < l.n; i++) free(l.names[i]);
  free(l.names);
  for (size_t i = 0; i < l.nothers; i++) free(l.others[i]);
  free(l.others);
  return err;
}

void capstan_devices_sort_names(char **names, size_t n) {
  if (n > 1) qsort(names, n, sizeof(*names), name_cmp);
}

int capstan_devices_reconcile_interrupted(capstan_txn_t *txn, int64_t now, size_t *count) {
  return capstan_devices_fail_in_progress(txn, now, CAPSTAN_REASON_INTERRUPTED, "startup", NULL, 0,
                                          count, NULL);
}

int capstan_devices_record_deleted(capstan_txn_t *txn, const char *name, int64_t now) {
  Capstan__Device *d;
  int err = capstan_store_device_get(txn, name, &d);
  if (err != 0) return err;
  static const Capstan__CertStatus live[] = {CAPSTAN__CERT_STATUS__CERT_STATUS_ISSUED,
                                             CAPSTAN__CERT_STATUS__CERT_STATUS_INSTALLED};
  err = move_history(txn, d, NULL, live, 2, CAPSTAN__CERT_STATUS__CERT_STATUS_DELETED, now,
                     "(deleted by the phone)");
  if (err != 0) goto done;
  if (d->cert_type == CAPSTAN__CERT_TYPE__CERT_TYPE_LSC || !d->has_cert_type) {
    if ((err = capstan_record_set_bytes(&d->cert_der, &d->has_cert_der, NULL, 0)) ||
        (err = capstan_record_set_string(&d->md5hash, NULL)) ||
        (err = capstan_record_set_bytes(&d->public_key, &d->has_public_key, NULL, 0))) {
      goto done;
    }
    d->has_cert_type = 0;
    d->cert_type = CAPSTAN__CERT_TYPE__CERT_TYPE_UNKNOWN;
    d->has_cert_seen_at = 0;
    d->cert_seen_at = 0;
  }
  SET(d, operation, CAPSTAN__OPERATION__OPERATION_DELETE);
  err = complete_operation(d, now);
  if (err == 0) err = capstan_store_device_put(txn, d);
done:
  capstan__device__free_unpacked(d, NULL);
  return err;
}

void capstan_device_rearm(Capstan__Device *d, int64_t now) {
  Capstan__OpStatus st = d->operation == CAPSTAN__OPERATION__OPERATION_NONE
                             ? CAPSTAN__OP_STATUS__OP_STATUS_NONE
                             : CAPSTAN__OP_STATUS__OP_STATUS_PENDING;
  if (d->status != st || !d->has_status) SET(d, status_changed_at, now);
  SET(d, status, st);
  SET(d, attempts, 0);
  d->has_auth_failures = 0; /* a re-armed operation accepts strings again */
  d->auth_failures = 0;
  free(d->status_reason);
  d->status_reason = NULL;
  d->has_retry_after = 0;
  d->retry_after = 0;
  SET(d, updated_at, now);
}
