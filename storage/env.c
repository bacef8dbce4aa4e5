/* The environment: opening the LMDB environment and its named databases,
 * transactions, and the mapping of LMDB's errors to ours. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "storage/internal.h"

const char *const capstan_store_db_names[CAPSTAN_DB_COUNT] = {
#define DB_NAME(id, name) name,
    CAPSTAN_STORE_DBS(DB_NAME)
#undef DB_NAME
};

/* ---- Errors and metrics ----------------------------------------------- */

void capstan_store_count_error(const char *op) {
  char labels[64];
  snprintf(labels, sizeof(labels), "op=\"%s\"", op);
  capstan_metric_inc(capstan_metrics_counter(
      "capstan_storage_errors_total", "Storage operations that failed, by operation", labels));
}

/* The one place LMDB codes become ours. */
int capstan_store_map_err(int rc, const char *op) {
  switch (rc) {
    case MDB_SUCCESS:
      return 0;
    case MDB_NOTFOUND:
      return CAPSTAN_ENOENT;
    case MDB_MAP_FULL:
      LOG_ERROR("event=storage_full op=%s error=\"%s\"", op, mdb_strerror(rc));
      capstan_store_count_error(op);
      return CAPSTAN_ENOSPC;
    case ENOMEM:
      capstan_store_count_error(op);
      return CAPSTAN_ENOMEM;
    default:
      LOG_ERROR("event=storage_error op=%s code=%d error=\"%s\"", op, rc, mdb_strerror(rc));
      capstan_store_count_error(op);
      return CAPSTAN_EIO;
  }
}

/* ---- Environment ------------------------------------------------------ */

/* The databases a store of an earlier release lacks (added since the
 * first): a backup it wrote must still restore. */
static bool added_later(int db) {
  return db == CAPSTAN_DB_CAPF_PREVIOUS || db == CAPSTAN_DB_AUDIT_DEVICE || db == CAPSTAN_DB_CSR;
}

int capstan_store_open_dbis(capstan_store_t *s, bool readonly) {
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, readonly ? MDB_RDONLY : 0, &txn);
  if (rc != 0) return capstan_store_map_err(rc, "open");
  for (int i = 0; i < CAPSTAN_DB_COUNT; i++) {
    /* The index holds each device's event keys as sorted 8-byte duplicates. */
    unsigned flags = i == CAPSTAN_DB_AUDIT_DEVICE ? MDB_DUPSORT | MDB_DUPFIXED : 0;
    rc = mdb_dbi_open(txn, capstan_store_db_names[i], (readonly ? 0 : MDB_CREATE) | flags,
                      &s->dbi[i]);
    if (rc == MDB_NOTFOUND && readonly && added_later(i)) {
      s->absent |= 1u << i;
      continue;
    }
    if (rc != 0) {
      mdb_txn_abort(txn);
      /* A read-only store (a backup) lacking one of the databases is not
       * a capstan store. */
      return rc == MDB_NOTFOUND ? CAPSTAN_EINVAL : capstan_store_map_err(rc, "open");
    }
  }
  capstan_txn_t t = {.mdb = txn, .store = s, .write = true};
  int err = readonly ? 0 : capstan_store_audit_reindex(&t);
  if (err != 0) {
    mdb_txn_abort(txn);
    return err;
  }
  rc = mdb_txn_commit(txn);
  return capstan_store_map_err(rc, "open");
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
    err = capstan_store_map_err(rc, "open");
    goto err;
  }
  if ((rc = mdb_env_set_maxdbs(s->env, MAX_DBS)) != 0 ||
      (rc = mdb_env_set_mapsize(s->env, CAPSTAN_STORE_MAP_SIZE)) != 0 ||
      (rc = mdb_env_set_maxreaders(s->env, 1022)) != 0) {
    err = capstan_store_map_err(rc, "open");
    goto err;
  }
  rc = mdb_env_open(s->env, dir, MDB_NOTLS, 0600);
  if (rc != 0) {
    LOG_ERROR("event=storage_open_failed dir=%s error=\"%s\"", dir, mdb_strerror(rc));
    err = rc == EACCES ? CAPSTAN_EACCES : capstan_store_map_err(rc, "open");
    goto err;
  }
  /* Readers left behind by killed CLI processes hold old pages. */
  int dead = 0;
  mdb_reader_check(s->env, &dead);
  if (dead > 0) LOG_INFO("event=storage_stale_readers_cleared count=%d", dead);
  err = capstan_store_open_dbis(s, false);
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
  free(store->actor);
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
  if (rc != 0) return capstan_store_map_err(rc, "begin");
  txn->mdb = t;
  txn->store = store;
  txn->write = write;
  return 0;
}

int capstan_store_commit(capstan_txn_t *txn) {
  if (txn->mdb == NULL) return CAPSTAN_EINVAL;
  int rc = mdb_txn_commit(txn->mdb);
  txn->mdb = NULL;
  return capstan_store_map_err(rc, "commit");
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
