/* Record access: protobuf-c messages packed under keys of the named
 * databases, generic and typed (storage/records.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "storage/internal.h"
#include "storage/pg_store.h"
#include "storage/records.h"

/* ---- Generic records -------------------------------------------------- */

int capstan_store_check_db(const capstan_txn_t *txn, capstan_db_t db) {
  if (txn == NULL || (txn->mdb == NULL && txn->pg == NULL) || (int)db < 0 ||
      db >= CAPSTAN_DB_COUNT) {
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
  int err = capstan_store_check_db(txn, db);
  if (err != 0) return err;
  if (klen == 0 || klen > 511) return CAPSTAN_EINVAL;
  if (CAPSTAN_STORE_ABSENT(txn, db)) return CAPSTAN_ENOENT;
  if (txn->pg != NULL) return capstan_pg_get(txn->pg, db, key, klen, desc, out);
  MDB_val k = {.mv_size = klen, .mv_data = (void *)key}, v;
  int rc = mdb_get(txn->mdb, txn->store->dbi[db], &k, &v);
  if (rc != 0) return capstan_store_map_err(rc, "get");
  return unpack(desc, &v, capstan_store_db_names[db], out);
}

int capstan_store_put(capstan_txn_t *txn, capstan_db_t db, const void *key, size_t klen,
                      const ProtobufCMessage *msg) {
  int err = capstan_store_check_db(txn, db);
  if (err != 0) return err;
  if (!txn->write || klen == 0 || klen > 511 || msg == NULL) return CAPSTAN_EINVAL;
  if (!protobuf_c_message_check(msg)) {
    LOG_ERROR("event=storage_record_incomplete db=%s type=%s", capstan_store_db_names[db],
              msg->descriptor->name);
    return CAPSTAN_EINVAL;
  }
  if (txn->pg != NULL) return capstan_pg_put(txn->pg, db, key, klen, msg);
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
  int err = capstan_store_check_db(txn, db);
  if (err != 0) return err;
  if (!txn->write || klen == 0 || klen > 511) return CAPSTAN_EINVAL;
  if (txn->pg != NULL) return capstan_pg_del(txn->pg, db, key, klen);
  MDB_val k = {.mv_size = klen, .mv_data = (void *)key};
  return capstan_store_map_err(mdb_del(txn->mdb, txn->store->dbi[db], &k, NULL), "delete");
}

int capstan_store_iterate(capstan_txn_t *txn, capstan_db_t db,
                          const ProtobufCMessageDescriptor *desc, capstan_store_iter_fn fn,
                          void *arg) {
  return capstan_store_iterate_after(txn, db, NULL, 0, desc, fn, arg);
}

int capstan_store_iterate_after(capstan_txn_t *txn, capstan_db_t db, const void *after, size_t alen,
                                const ProtobufCMessageDescriptor *desc, capstan_store_iter_fn fn,
                                void *arg) {
  int err = capstan_store_check_db(txn, db);
  if (err != 0) return err;
  if (after != NULL && (alen == 0 || alen > 511)) return CAPSTAN_EINVAL;
  if (CAPSTAN_STORE_ABSENT(txn, db)) return 0;
  if (txn->pg != NULL) return capstan_pg_iterate_after(txn->pg, db, after, alen, desc, fn, arg);
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn->mdb, txn->store->dbi[db], &cur);
  if (rc != 0) return capstan_store_map_err(rc, "iterate");
  MDB_val k = {.mv_size = alen, .mv_data = (void *)after}, v;
  if (after == NULL) {
    rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
  } else {
    /* The first key >= |after|; past it when it is |after| itself. */
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (rc == 0 && k.mv_size == alen && memcmp(k.mv_data, after, alen) == 0) {
      rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
  }
  for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
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

int capstan_store_iterate_raw(capstan_txn_t *txn, capstan_db_t db, capstan_store_raw_fn fn,
                              void *arg) {
  int err = capstan_store_check_db(txn, db);
  if (err != 0) return err;
  if (CAPSTAN_STORE_ABSENT(txn, db)) return 0;
  if (txn->pg != NULL) return capstan_pg_iterate_raw(txn->pg, db, fn, arg);
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn->mdb, txn->store->dbi[db], &cur);
  if (rc != 0) return capstan_store_map_err(rc, "iterate");
  MDB_val k, v;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && err == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    err = fn(k.mv_data, k.mv_size, v.mv_data, v.mv_size, arg);
  }
  mdb_cursor_close(cur);
  if (err != 0) return err > 0 ? 0 : err;
  return rc == MDB_NOTFOUND ? 0 : capstan_store_map_err(rc, "iterate");
}

int capstan_store_count(capstan_txn_t *txn, capstan_db_t db, uint64_t *out) {
  *out = 0;
  int err = capstan_store_check_db(txn, db);
  if (err != 0) return err;
  if (CAPSTAN_STORE_ABSENT(txn, db)) return 0;
  if (txn->pg != NULL) return capstan_pg_count(txn->pg, db, out);
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

int capstan_store_iterate_typed(capstan_txn_t *txn, capstan_db_t db,
                                const ProtobufCMessageDescriptor *desc,
                                int (*fn)(const void *msg, void *arg), void *arg) {
  typed_iter_t t = {fn, arg};
  return capstan_store_iterate(txn, db, desc, typed_iter, &t);
}

int capstan_store_name_key(const char *name, size_t *len) {
  if (name == NULL) return CAPSTAN_EINVAL;
  *len = strlen(name);
  return (*len == 0 || *len > 255) ? CAPSTAN_EINVAL : 0;
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
