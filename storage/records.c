/* Record access: protobuf-c messages packed under keys of the named
 * databases, generic and typed (storage/records.h). */
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/phone.h"
#include "storage/internal.h"
#include "storage/records.h"

/* ---- Generic records -------------------------------------------------- */

static int check_db(const capstan_txn_t *txn, capstan_db_t db) {
  if (txn == NULL || txn->mdb == NULL || (int)db < 0 || db >= CAPSTAN_DB_COUNT) {
    return CAPSTAN_EINVAL;
  }
  return 0;
}

static int unpack(const ProtobufCMessageDescriptor *desc, const MDB_val *v, const char *dbname,
                  ProtobufCMessage **out) {
  *out = protobuf_c_message_unpack(desc, NULL, v->mv_size, v->mv_data);
  if (*out == NULL) {
    /* Either a corrupt record or no memory; both are storage failures. */
    LOG_ERROR("event=storage_record_unreadable db=%s type=%s bytes=%zu", dbname, desc->name,
              v->mv_size);
    capstan_store_count_error("unpack");
    return CAPSTAN_EIO;
  }
  return 0;
}

int capstan_store_get(capstan_txn_t *txn, capstan_db_t db, const void *key, size_t klen,
                      const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out) {
  *out = NULL;
  int err = check_db(txn, db);
  if (err != 0) return err;
  if (klen == 0 || klen > 511) return CAPSTAN_EINVAL;
  MDB_val k = {.mv_size = klen, .mv_data = (void *)key}, v;
  int rc = mdb_get(txn->mdb, txn->store->dbi[db], &k, &v);
  if (rc != 0) return capstan_store_map_err(rc, "get");
  return unpack(desc, &v, capstan_store_db_names[db], out);
}

int capstan_store_put(capstan_txn_t *txn, capstan_db_t db, const void *key, size_t klen,
                      const ProtobufCMessage *msg) {
  int err = check_db(txn, db);
  if (err != 0) return err;
  if (!txn->write || klen == 0 || klen > 511 || msg == NULL) return CAPSTAN_EINVAL;
  if (!protobuf_c_message_check(msg)) {
    LOG_ERROR("event=storage_record_incomplete db=%s type=%s", capstan_store_db_names[db],
              msg->descriptor->name);
    return CAPSTAN_EINVAL;
  }
  size_t n = protobuf_c_message_get_packed_size(msg);
  MDB_val k = {.mv_size = klen, .mv_data = (void *)key};
  /* Pack straight into the space LMDB reserves for the value. A message
   * of all defaults packs to zero bytes, which LMDB stores as is. */
  MDB_val v = {.mv_size = n, .mv_data = NULL};
  int rc = mdb_put(txn->mdb, txn->store->dbi[db], &k, &v, MDB_RESERVE);
  if (rc != 0) return capstan_store_map_err(rc, "put");
  if (n > 0) protobuf_c_message_pack(msg, v.mv_data);
  return 0;
}

int capstan_store_del(capstan_txn_t *txn, capstan_db_t db, const void *key, size_t klen) {
  int err = check_db(txn, db);
  if (err != 0) return err;
  if (!txn->write || klen == 0 || klen > 511) return CAPSTAN_EINVAL;
  MDB_val k = {.mv_size = klen, .mv_data = (void *)key};
  return capstan_store_map_err(mdb_del(txn->mdb, txn->store->dbi[db], &k, NULL), "delete");
}

int capstan_store_iterate(capstan_txn_t *txn, capstan_db_t db,
                          const ProtobufCMessageDescriptor *desc, capstan_store_iter_fn fn,
                          void *arg) {
  int err = check_db(txn, db);
  if (err != 0) return err;
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn->mdb, txn->store->dbi[db], &cur);
  if (rc != 0) return capstan_store_map_err(rc, "iterate");
  MDB_val k, v;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    ProtobufCMessage *msg;
    err = unpack(desc, &v, capstan_store_db_names[db], &msg);
    if (err != 0) break;
    err = fn(k.mv_data, k.mv_size, msg, arg);
    protobuf_c_message_free_unpacked(msg, NULL);
    if (err != 0) break;
  }
  mdb_cursor_close(cur);
  if (err > 0) return 0; /* stopped by fn */
  if (err < 0) return err;
  return rc == MDB_NOTFOUND ? 0 : capstan_store_map_err(rc, "iterate");
}

int capstan_store_count(capstan_txn_t *txn, capstan_db_t db, uint64_t *out) {
  *out = 0;
  int err = check_db(txn, db);
  if (err != 0) return err;
  MDB_stat st;
  int rc = mdb_stat(txn->mdb, txn->store->dbi[db], &st);
  if (rc != 0) return capstan_store_map_err(rc, "stat");
  *out = st.ms_entries;
  return 0;
}

/* ---- Typed records ---------------------------------------------------- */

/* Typed iteration: adapts the generic callback to a typed one. */
typedef struct {
  int (*fn)(const void *msg, void *arg);
  void *arg;
} typed_iter_t;

static int typed_iter(const void *key, size_t klen, const ProtobufCMessage *msg, void *arg) {
  typed_iter_t *t = arg;
  return t->fn(msg, t->arg);
}

static int iterate_typed(capstan_txn_t *txn, capstan_db_t db,
                         const ProtobufCMessageDescriptor *desc,
                         int (*fn)(const void *msg, void *arg), void *arg) {
  typed_iter_t t = {fn, arg};
  return capstan_store_iterate(txn, db, desc, typed_iter, &t);
}

static int name_key(const char *name, size_t *len) {
  if (name == NULL) return CAPSTAN_EINVAL;
  *len = strlen(name);
  return (*len == 0 || *len > 255) ? CAPSTAN_EINVAL : 0;
}

int capstan_store_device_get(capstan_txn_t *txn, const char *name, Capstan__Device **out) {
  size_t n;
  *out = NULL;
  int err = name_key(name, &n);
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
  int err = name_key(name, &n);
  if (err != 0) return err;
  return capstan_store_del(txn, CAPSTAN_DB_DEVICES, name, n);
}

int capstan_store_device_iterate(capstan_txn_t *txn, capstan_store_device_fn fn, void *arg) {
  return iterate_typed(txn, CAPSTAN_DB_DEVICES, &capstan__device__descriptor,
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
  return iterate_typed(txn, CAPSTAN_DB_CERTS, &capstan__issued_cert__descriptor,
                       (int (*)(const void *, void *))fn, arg);
}

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

int capstan_store_template_get(capstan_txn_t *txn, const char *name, Capstan__Template **out) {
  size_t n;
  *out = NULL;
  int err = name_key(name, &n);
  if (err != 0) return err;
  return capstan_store_get(txn, CAPSTAN_DB_TEMPLATES, name, n, &capstan__template__descriptor,
                           (ProtobufCMessage **)out);
}

int capstan_store_template_put(capstan_txn_t *txn, const Capstan__Template *t) {
  size_t n;
  if (t == NULL || name_key(t->name, &n) != 0) return CAPSTAN_EINVAL;
  return capstan_store_put(txn, CAPSTAN_DB_TEMPLATES, t->name, n, &t->base);
}

int capstan_store_template_delete(capstan_txn_t *txn, const char *name) {
  size_t n;
  int err = name_key(name, &n);
  if (err != 0) return err;
  return capstan_store_del(txn, CAPSTAN_DB_TEMPLATES, name, n);
}

int capstan_store_template_iterate(capstan_txn_t *txn, capstan_store_template_fn fn, void *arg) {
  return iterate_typed(txn, CAPSTAN_DB_TEMPLATES, &capstan__template__descriptor,
                       (int (*)(const void *, void *))fn, arg);
}

int capstan_store_settings_get(capstan_txn_t *txn, Capstan__Settings **out) {
  int err = capstan_store_get(txn, CAPSTAN_DB_SETTINGS, SETTINGS_KEY, strlen(SETTINGS_KEY),
                              &capstan__settings__descriptor, (ProtobufCMessage **)out);
  if (err != CAPSTAN_ENOENT) return err;
  /* Unpacking nothing gives a message with every default of the schema. */
  *out = capstan__settings__unpack(NULL, 0, NULL);
  return *out == NULL ? CAPSTAN_ENOMEM : 0;
}

int capstan_store_settings_put(capstan_txn_t *txn, const Capstan__Settings *s) {
  if (s == NULL) return CAPSTAN_EINVAL;
  return capstan_store_put(txn, CAPSTAN_DB_SETTINGS, SETTINGS_KEY, strlen(SETTINGS_KEY), &s->base);
}

static int settings_load_fn(capstan_txn_t *txn, void *arg) {
  return capstan_store_settings_get(txn, arg);
}

int capstan_store_settings_load(capstan_store_t *store, Capstan__Settings **out) {
  *out = NULL;
  return capstan_store_read(store, settings_load_fn, out);
}

static void be64(uint8_t out[8], uint64_t v) {
  for (int i = 7; i >= 0; i--) {
    out[i] = (uint8_t)v;
    v >>= 8;
  }
}

static uint64_t rd_be64(const uint8_t in[8]) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | in[i];
  return v;
}

int capstan_store_audit_append(capstan_txn_t *txn, int64_t at_ns, const char *device,
                               const char *event, const char *detail) {
  int err = check_db(txn, CAPSTAN_DB_AUDIT);
  if (err != 0) return err;
  if (!txn->write || event == NULL) return CAPSTAN_EINVAL;
  if (at_ns <= 0) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    at_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
  }
  /* Clocks of several processes (and NTP) can step back; keep keys
   * increasing so events are never overwritten and stay in write order. */
  uint64_t key = (uint64_t)at_ns;
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn->mdb, txn->store->dbi[CAPSTAN_DB_AUDIT], &cur);
  if (rc != 0) return capstan_store_map_err(rc, "audit");
  MDB_val k, v;
  rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
  mdb_cursor_close(cur);
  if (rc == 0 && k.mv_size == 8) {
    uint64_t last = rd_be64(k.mv_data);
    if (key <= last) key = last + 1;
  } else if (rc != 0 && rc != MDB_NOTFOUND) {
    return capstan_store_map_err(rc, "audit");
  }
  Capstan__AuditEvent e = CAPSTAN__AUDIT_EVENT__INIT;
  e.has_at = 1;
  e.at = (int64_t)key;
  e.device = (char *)device;
  e.event = (char *)event;
  e.detail = (char *)detail;
  uint8_t kb[8];
  be64(kb, key);
  return capstan_store_put(txn, CAPSTAN_DB_AUDIT, kb, sizeof(kb), &e.base);
}

int capstan_store_audit_iterate(capstan_txn_t *txn, capstan_store_audit_fn fn, void *arg) {
  return iterate_typed(txn, CAPSTAN_DB_AUDIT, &capstan__audit_event__descriptor,
                       (int (*)(const void *, void *))fn, arg);
}

/* ---- Field helpers ---------------------------------------------------- */

int capstan_record_set_string(char **field, const char *v) {
  char *copy = NULL;
  if (v != NULL) {
    copy = strdup(v);
    if (copy == NULL) return CAPSTAN_ENOMEM;
  }
  free(*field);
  *field = copy;
  return 0;
}

int capstan_record_set_bytes(ProtobufCBinaryData *field, protobuf_c_boolean *has, const void *data,
                             size_t len) {
  uint8_t *copy = NULL;
  if (data != NULL && len > 0) {
    copy = malloc(len);
    if (copy == NULL) return CAPSTAN_ENOMEM;
    memcpy(copy, data, len);
  }
  free(field->data);
  field->data = copy;
  field->len = copy != NULL ? len : 0;
  if (has != NULL) *has = copy != NULL;
  return 0;
}
