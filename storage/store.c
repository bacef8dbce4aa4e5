#include "storage/store.h"

#include <errno.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "storage/devices.h"

#define SETTINGS_KEY "settings"
#define MAX_DBS 16

static const char *const db_names[CAPSTAN_DB_COUNT] = {
#define DB_NAME(id, name) name,
    CAPSTAN_STORE_DBS(DB_NAME)
#undef DB_NAME
};

typedef struct write_req {
  capstan_store_write_fn fn;
  capstan_store_done_fn done;
  void *arg;
  int status;
  struct write_req *next;
} write_req_t;

/* The writer's state lives apart from the store because its uv_async_t must
 * outlive capstan_store_writer_stop until libuv's close callback. */
typedef struct writer {
  capstan_store_t *store;
  uv_async_t async;
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  write_req_t *queue_head, *queue_tail; /* submitted, not yet written */
  write_req_t *done_head, *done_tail;   /* written, done not yet called */
  bool stopping;
  bool idle;                   /* waiting for a request */
  struct timespec last_commit; /* CLOCK_MONOTONIC, when the last batch began */
} writer_t;

struct capstan_store {
  MDB_env *env;
  MDB_dbi dbi[CAPSTAN_DB_COUNT];
  writer_t *writer;
  char *dir;
};

/* ---- Errors and metrics ----------------------------------------------- */

static capstan_metric_t *m_commit_seconds, *m_commits, *m_batch_size;

static void count_error(const char *op) {
  char labels[64];
  snprintf(labels, sizeof(labels), "op=\"%s\"", op);
  capstan_metric_inc(capstan_metrics_counter(
      "capstan_storage_errors_total", "Storage operations that failed, by operation", labels));
}

/* The one place LMDB codes become ours. */
static int map_err(int rc, const char *op) {
  switch (rc) {
    case MDB_SUCCESS:
      return 0;
    case MDB_NOTFOUND:
      return CAPSTAN_ENOENT;
    case MDB_MAP_FULL:
      LOG_ERROR("event=storage_full op=%s error=\"%s\"", op, mdb_strerror(rc));
      count_error(op);
      return CAPSTAN_ENOSPC;
    case ENOMEM:
      count_error(op);
      return CAPSTAN_ENOMEM;
    default:
      LOG_ERROR("event=storage_error op=%s code=%d error=\"%s\"", op, rc, mdb_strerror(rc));
      count_error(op);
      return CAPSTAN_EIO;
  }
}

/* ---- Environment ------------------------------------------------------ */

static int open_dbis(capstan_store_t *s) {
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (rc != 0) return map_err(rc, "open");
  for (int i = 0; i < CAPSTAN_DB_COUNT; i++) {
    rc = mdb_dbi_open(txn, db_names[i], MDB_CREATE, &s->dbi[i]);
    if (rc != 0) {
      mdb_txn_abort(txn);
      return map_err(rc, "open");
    }
  }
  rc = mdb_txn_commit(txn);
  return map_err(rc, "open");
}

const char *capstan_store_data_dir(const char *opt) {
  if (opt != NULL && opt[0] != '\0') return opt;
  const char *env = getenv("CAPSTAN_DATA_DIR");
  if (env != NULL && env[0] != '\0') return env;
  return CAPSTAN_STORE_DEFAULT_DIR;
}

int capstan_store_open(const char *dir, unsigned flags, capstan_store_t **out) {
  *out = NULL;
  if (dir == NULL || dir[0] == '\0') return CAPSTAN_EINVAL;
  struct stat st;
  if (stat(dir, &st) != 0) {
    if (errno != ENOENT) return -errno;
    if (!(flags & CAPSTAN_STORE_CREATE)) return CAPSTAN_ENOENT;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
      int err = -errno;
      LOG_ERROR("event=storage_mkdir_failed dir=%s error=\"%s\"", dir, strerror(-err));
      return err;
    }
  } else if (!S_ISDIR(st.st_mode)) {
    return CAPSTAN_EINVAL;
  } else if (!(flags & CAPSTAN_STORE_CREATE)) {
    /* An empty directory is not a store: do not create one as a side
     * effect of a read-only command. */
    char path[4096];
    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    if (stat(path, &st) != 0) return CAPSTAN_ENOENT;
  }

  capstan_store_t *s = calloc(1, sizeof(*s));
  if (s == NULL) return CAPSTAN_ENOMEM;
  int err;
  s->dir = strdup(dir);
  if (s->dir == NULL) {
    err = CAPSTAN_ENOMEM;
    goto err;
  }
  int rc = mdb_env_create(&s->env);
  if (rc != 0) {
    err = map_err(rc, "open");
    goto err;
  }
  if ((rc = mdb_env_set_maxdbs(s->env, MAX_DBS)) != 0 ||
      (rc = mdb_env_set_mapsize(s->env, CAPSTAN_STORE_MAP_SIZE)) != 0 ||
      (rc = mdb_env_set_maxreaders(s->env, 1022)) != 0) {
    err = map_err(rc, "open");
    goto err;
  }
  rc = mdb_env_open(s->env, dir, MDB_NOTLS, 0600);
  if (rc != 0) {
    LOG_ERROR("event=storage_open_failed dir=%s error=\"%s\"", dir, mdb_strerror(rc));
    err = rc == EACCES ? CAPSTAN_EACCES : map_err(rc, "open");
    goto err;
  }
  /* Readers left behind by killed CLI processes hold old pages. */
  int dead = 0;
  mdb_reader_check(s->env, &dead);
  if (dead > 0) LOG_INFO("event=storage_stale_readers_cleared count=%d", dead);
  err = open_dbis(s);
  if (err != 0) goto err;
  *out = s;
  return 0;
err:
  capstan_store_close(s);
  return err;
}

void capstan_store_close(capstan_store_t *store) {
  if (store == NULL) return;
  if (store->writer != NULL) {
    LOG_ERROR("event=storage_close_with_writer hint=\"call capstan_store_writer_stop first\"");
    abort();
  }
  if (store->env != NULL) mdb_env_close(store->env);
  free(store->dir);
  free(store);
}

uint64_t capstan_store_txnid(capstan_store_t *store) {
  MDB_envinfo info;
  if (mdb_env_info(store->env, &info) != 0) return 0;
  return (uint64_t)info.me_last_txnid;
}

uint64_t capstan_store_size_bytes(capstan_store_t *store) {
  MDB_envinfo info;
  MDB_stat st;
  if (mdb_env_info(store->env, &info) != 0 || mdb_env_stat(store->env, &st) != 0) return 0;
  return ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
}

/* ---- Transactions ----------------------------------------------------- */

int capstan_store_begin(capstan_store_t *store, bool write, capstan_txn_t *txn) {
  memset(txn, 0, sizeof(*txn));
  MDB_txn *t = NULL;
  int rc = mdb_txn_begin(store->env, NULL, write ? 0 : MDB_RDONLY, &t);
  if (rc == MDB_MAP_RESIZED) {
    /* Another process grew the map: adopt its size and retry. */
    mdb_env_set_mapsize(store->env, 0);
    rc = mdb_txn_begin(store->env, NULL, write ? 0 : MDB_RDONLY, &t);
  }
  if (rc != 0) return map_err(rc, "begin");
  txn->mdb = t;
  txn->store = store;
  txn->write = write;
  return 0;
}

int capstan_store_commit(capstan_txn_t *txn) {
  if (txn->mdb == NULL) return CAPSTAN_EINVAL;
  int rc = mdb_txn_commit(txn->mdb);
  txn->mdb = NULL;
  return map_err(rc, "commit");
}

void capstan_store_abort(capstan_txn_t *txn) {
  if (txn == NULL || txn->mdb == NULL) return;
  mdb_txn_abort(txn->mdb);
  txn->mdb = NULL;
}

int capstan_store_read(capstan_store_t *store, capstan_store_txn_fn fn, void *arg) {
  capstan_txn_t txn;
  int err = capstan_store_begin(store, false, &txn);
  if (err != 0) return err;
  err = fn(&txn, arg);
  capstan_store_abort(&txn);
  return err;
}

int capstan_store_write(capstan_store_t *store, capstan_store_txn_fn fn, void *arg) {
  capstan_txn_t txn;
  int err = capstan_store_begin(store, true, &txn);
  if (err != 0) return err;
  err = fn(&txn, arg);
  if (err != 0) {
    capstan_store_abort(&txn);
    return err;
  }
  return capstan_store_commit(&txn);
}

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
    count_error("unpack");
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
  if (rc != 0) return map_err(rc, "get");
  return unpack(desc, &v, db_names[db], out);
}

int capstan_store_put(capstan_txn_t *txn, capstan_db_t db, const void *key, size_t klen,
                      const ProtobufCMessage *msg) {
  int err = check_db(txn, db);
  if (err != 0) return err;
  if (!txn->write || klen == 0 || klen > 511 || msg == NULL) return CAPSTAN_EINVAL;
  if (!protobuf_c_message_check(msg)) {
    LOG_ERROR("event=storage_record_incomplete db=%s type=%s", db_names[db], msg->descriptor->name);
    return CAPSTAN_EINVAL;
  }
  size_t n = protobuf_c_message_get_packed_size(msg);
  MDB_val k = {.mv_size = klen, .mv_data = (void *)key};
  /* Pack straight into the space LMDB reserves for the value. A message
   * of all defaults packs to zero bytes, which LMDB stores as is. */
  MDB_val v = {.mv_size = n, .mv_data = NULL};
  int rc = mdb_put(txn->mdb, txn->store->dbi[db], &k, &v, MDB_RESERVE);
  if (rc != 0) return map_err(rc, "put");
  if (n > 0) protobuf_c_message_pack(msg, v.mv_data);
  return 0;
}

int capstan_store_del(capstan_txn_t *txn, capstan_db_t db, const void *key, size_t klen) {
  int err = check_db(txn, db);
  if (err != 0) return err;
  if (!txn->write || klen == 0 || klen > 511) return CAPSTAN_EINVAL;
  MDB_val k = {.mv_size = klen, .mv_data = (void *)key};
  return map_err(mdb_del(txn->mdb, txn->store->dbi[db], &k, NULL), "delete");
}

int capstan_store_iterate(capstan_txn_t *txn, capstan_db_t db,
                          const ProtobufCMessageDescriptor *desc, capstan_store_iter_fn fn,
                          void *arg) {
  int err = check_db(txn, db);
  if (err != 0) return err;
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn->mdb, txn->store->dbi[db], &cur);
  if (rc != 0) return map_err(rc, "iterate");
  MDB_val k, v;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    ProtobufCMessage *msg;
    err = unpack(desc, &v, db_names[db], &msg);
    if (err != 0) break;
    err = fn(k.mv_data, k.mv_size, msg, arg);
    protobuf_c_message_free_unpacked(msg, NULL);
    if (err != 0) break;
  }
  mdb_cursor_close(cur);
  if (err > 0) return 0; /* stopped by fn */
  if (err < 0) return err;
  return rc == MDB_NOTFOUND ? 0 : map_err(rc, "iterate");
}

int capstan_store_count(capstan_txn_t *txn, capstan_db_t db, uint64_t *out) {
  *out = 0;
  int err = check_db(txn, db);
  if (err != 0) return err;
  MDB_stat st;
  int rc = mdb_stat(txn->mdb, txn->store->dbi[db], &st);
  if (rc != 0) return map_err(rc, "stat");
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
  if (rc != 0) return map_err(rc, "audit");
  MDB_val k, v;
  rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
  mdb_cursor_close(cur);
  if (rc == 0 && k.mv_size == 8) {
    uint64_t last = rd_be64(k.mv_data);
    if (key <= last) key = last + 1;
  } else if (rc != 0 && rc != MDB_NOTFOUND) {
    return map_err(rc, "audit");
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

/* ---- Group-commit writer ---------------------------------------------- */

/* The size gauge reads the store the server's writer runs on; metrics have
 * no unregister, so the gauge is registered once and follows this pointer. */
static _Atomic(capstan_store_t *) g_gauge_store;
static pthread_mutex_t g_gauge_lock = PTHREAD_MUTEX_INITIALIZER;

static double size_gauge(void *arg) {
  pthread_mutex_lock(&g_gauge_lock);
  capstan_store_t *s = atomic_load(&g_gauge_store);
  double v = s != NULL ? (double)capstan_store_size_bytes(s) : 0;
  pthread_mutex_unlock(&g_gauge_lock);
  return v;
}

static void register_metrics(void) {
  static const double batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};
  m_commit_seconds =
      capstan_metrics_histogram("capstan_storage_commit_duration_seconds",
                                "Time to write and durably commit one batch of storage requests",
                                "", capstan_buckets_fast, capstan_buckets_fast_n);
  m_commits = capstan_metrics_counter("capstan_storage_commits_total",
                                      "Group commits by the storage writer", "");
  m_batch_size =
      capstan_metrics_histogram("capstan_storage_batch_size", "Write requests per group commit", "",
                                batch_bounds, sizeof(batch_bounds) / sizeof(batch_bounds[0]));
  /* Error series exist from the start, so a rate() over them works before
   * the first error. */
  static const char *const ops[] = {"open",    "begin",  "get",    "put",   "delete",
                                    "iterate", "commit", "unpack", "audit", "stat"};
  for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
    char labels[64];
    snprintf(labels, sizeof(labels), "op=\"%s\"", ops[i]);
    capstan_metrics_counter("capstan_storage_errors_total",
                            "Storage operations that failed, by operation", labels);
  }
  capstan_metrics_gauge_fn("capstan_storage_size_bytes", "Bytes of the LMDB map in use", "",
                           size_gauge, NULL);
}

/* Runs every request of |batch| not yet failed in one write transaction.
 * Returns 0 when all succeeded and the transaction is open in |txn|, 1 when
 * a request failed (its status set, the transaction aborted: its partial
 * writes must not stay), or a negative error for the transaction itself. */
static int run_batch(writer_t *w, write_req_t *batch, capstan_txn_t *txn) {
  int err = capstan_store_begin(w->store, true, txn);
  if (err != 0) return err;
  for (write_req_t *r = batch; r != NULL; r = r->next) {
    if (r->status != 0) continue;
    int rc = r->fn(txn, r->arg);
    if (rc != 0) {
      r->status = rc;
      capstan_store_abort(txn);
      return 1;
    }
  }
  return 0;
}

/* Writes one batch; sets each request's status. All requests share one
 * transaction and one fsync (group commit). A request that fails is dropped
 * and the others are applied again from scratch: failures are rare, and
 * this keeps a failing request's partial writes out without LMDB's nested
 * transactions, which cost a 2 MiB allocation each and made large batches
 * slow. Request functions only read their argument, so replaying is safe. */
static void write_batch(writer_t *w, write_req_t *batch, size_t n) {
  double t0 = capstan_now_seconds();
  capstan_txn_t txn;
  int err;
  for (write_req_t *r = batch; r != NULL; r = r->next) r->status = 0;
  for (;;) {
    err = run_batch(w, batch, &txn);
    if (err != 1) break;
  }
  if (err == 0) err = capstan_store_commit(&txn);
  if (err != 0) {
    LOG_ERROR("event=storage_batch_failed requests=%zu error=\"%s\"", n, capstan_strerror(err));
    for (write_req_t *r = batch; r != NULL; r = r->next) {
      if (r->status == 0) r->status = err;
    }
  }
  capstan_metric_observe(m_commit_seconds, capstan_now_seconds() - t0);
  capstan_metric_inc(m_commits);
  capstan_metric_observe(m_batch_size, (double)n);
}

/* Under sustained load the writer starts a commit at most every
 * COMMIT_SPACING_MS, so each fsync carries more requests. Every commit costs
 * two fdatasyncs and their device round trips, which on a virtual machine
 * cost far more CPU than the writes themselves: spacing commits 10-20 ms
 * apart cut the server's CPU per enrollment by 8-10% at 1,000 phones (see
 * bench/RESULTS.md). A request that comes later than that after the last
 * commit began is written at once; otherwise it waits at most the rest of
 * the interval, which phones (seconds per step) never notice. */
#define COMMIT_SPACING_MS 20

static void wait_for_spacing(writer_t *w) {
  struct timespec due = w->last_commit;
  due.tv_nsec += COMMIT_SPACING_MS * 1000000L;
  if (due.tv_nsec >= 1000000000L) {
    due.tv_sec++;
    due.tv_nsec -= 1000000000L;
  }
  /* Returns at once when |due| has passed; submissions do not wake a
   * spacing writer, a stop does. */
  while (!w->stopping && pthread_cond_timedwait(&w->cond, &w->lock, &due) != ETIMEDOUT) {
  }
}

static void *writer_main(void *arg) {
  writer_t *w = arg;
  pthread_mutex_lock(&w->lock);
  for (;;) {
    while (w->queue_head == NULL && !w->stopping) {
      w->idle = true;
      pthread_cond_wait(&w->cond, &w->lock);
      w->idle = false;
    }
    if (w->queue_head == NULL) break; /* stopping and drained */
    wait_for_spacing(w);
    write_req_t *batch = w->queue_head;
    w->queue_head = w->queue_tail = NULL;
    pthread_mutex_unlock(&w->lock);

    size_t n = 0;
    write_req_t *last = NULL;
    for (write_req_t *r = batch; r != NULL; r = r->next) {
      n++;
      last = r;
    }
    clock_gettime(CLOCK_MONOTONIC, &w->last_commit); /* the condvar's clock */
    write_batch(w, batch, n);

    pthread_mutex_lock(&w->lock);
    if (w->done_tail != NULL) {
      w->done_tail->next = batch;
    } else {
      w->done_head = batch;
    }
    w->done_tail = last;
    uv_async_send(&w->async);
  }
  pthread_mutex_unlock(&w->lock);
  return NULL;
}

static void run_done(writer_t *w) {
  pthread_mutex_lock(&w->lock);
  write_req_t *r = w->done_head;
  w->done_head = w->done_tail = NULL;
  pthread_mutex_unlock(&w->lock);
  while (r != NULL) {
    write_req_t *next = r->next;
    if (r->done != NULL) r->done(r->arg, r->status);
    free(r);
    r = next;
  }
}

static void on_async(uv_async_t *h) {
  run_done(h->data);
}

static void on_async_closed(uv_handle_t *h) {
  writer_t *w = h->data;
  pthread_mutex_destroy(&w->lock);
  pthread_cond_destroy(&w->cond);
  free(w);
}

int capstan_store_writer_start(capstan_store_t *store, uv_loop_t *loop) {
  if (store == NULL || loop == NULL || store->writer != NULL) return CAPSTAN_EINVAL;
  writer_t *w = calloc(1, sizeof(*w));
  if (w == NULL) return CAPSTAN_ENOMEM;
  w->store = store;
  pthread_mutex_init(&w->lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&w->cond, &ca);
  pthread_condattr_destroy(&ca);
  int rc = uv_async_init(loop, &w->async, on_async);
  if (rc != 0) {
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    free(w);
    return rc;
  }
  w->async.data = w;
  register_metrics();
  rc = pthread_create(&w->thread, NULL, writer_main, w);
  if (rc != 0) {
    uv_close((uv_handle_t *)&w->async, on_async_closed);
    return -rc;
  }
  pthread_mutex_lock(&g_gauge_lock);
  atomic_store(&g_gauge_store, store);
  pthread_mutex_unlock(&g_gauge_lock);
  store->writer = w;
  return 0;
}

int capstan_store_submit(capstan_store_t *store, capstan_store_write_fn fn, void *arg,
                         capstan_store_done_fn done) {
  if (store == NULL || fn == NULL) return CAPSTAN_EINVAL;
  writer_t *w = store->writer;
  if (w == NULL) return CAPSTAN_EINVAL;
  write_req_t *r = calloc(1, sizeof(*r));
  if (r == NULL) return CAPSTAN_ENOMEM;
  r->fn = fn;
  r->arg = arg;
  r->done = done;
  pthread_mutex_lock(&w->lock);
  if (w->stopping) {
    pthread_mutex_unlock(&w->lock);
    free(r);
    return CAPSTAN_EINVAL;
  }
  if (w->queue_tail != NULL) {
    w->queue_tail->next = r;
  } else {
    w->queue_head = r;
  }
  w->queue_tail = r;
  /* Only an idle writer needs waking; a busy or spacing one takes the
   * request with its next batch. */
  if (w->idle) pthread_cond_signal(&w->cond);
  pthread_mutex_unlock(&w->lock);
  return 0;
}

void capstan_store_writer_stop(capstan_store_t *store) {
  if (store == NULL || store->writer == NULL) return;
  writer_t *w = store->writer;
  pthread_mutex_lock(&w->lock);
  w->stopping = true;
  pthread_cond_signal(&w->cond);
  pthread_mutex_unlock(&w->lock);
  pthread_join(w->thread, NULL);
  run_done(w);
  pthread_mutex_lock(&g_gauge_lock);
  if (atomic_load(&g_gauge_store) == store) atomic_store(&g_gauge_store, NULL);
  pthread_mutex_unlock(&g_gauge_lock);
  store->writer = NULL;
  uv_close((uv_handle_t *)&w->async, on_async_closed);
}
