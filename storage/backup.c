/* Backup and restore of the store (storage/store.h): LMDB's compacting
 * copy into a private file, opening such a file read-only, and installing
 * it as a data directory's store. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "storage/internal.h"
#include "storage/pg_store.h"
#include "storage/records.h"

#define PATH_MAX_LEN 4096

/* fsync of the directory holding |path|, so a rename in it is durable. */
static int sync_parent(const char *path) {
  char copy[PATH_MAX_LEN];
  snprintf(copy, sizeof(copy), "%s", path);
  int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -errno;
  int err = fsync(fd) == 0 ? 0 : -errno;
  close(fd);
  return err;
}

/* ---- Copying a store whole (the PostgreSQL back end's backup and restore) */

/* The record type under |key| of |db| (the pki database holds several). */
static const ProtobufCMessageDescriptor *record_type(capstan_db_t db, const void *key,
                                                     size_t klen) {
  switch (db) {
    case CAPSTAN_DB_DEVICES:
      return &capstan__device__descriptor;
    case CAPSTAN_DB_CERTS:
      return &capstan__issued_cert__descriptor;
    case CAPSTAN_DB_TRUST:
      return &capstan__trust_cert__descriptor;
    case CAPSTAN_DB_TEMPLATES:
      return &capstan__template__descriptor;
    case CAPSTAN_DB_SETTINGS:
      return &capstan__settings__descriptor;
    case CAPSTAN_DB_AUDIT:
      return &capstan__audit_event__descriptor;
    case CAPSTAN_DB_CAPF_PREVIOUS:
      return &capstan__previous_capf__descriptor;
    case CAPSTAN_DB_CSR:
      return &capstan__cert_request__descriptor;
    case CAPSTAN_DB_PKI: {
      static const struct {
        const char *key;
        const ProtobufCMessageDescriptor *type;
      } kPki[] = {{CAPSTAN_IDENTITY_CAPF, &capstan__identity__descriptor},
                  {CAPSTAN_IDENTITY_TFTP, &capstan__identity__descriptor},
                  {"capf_pending", &capstan__pending_capf_key__descriptor},
                  {CAPSTAN_PKI_CA_CONFIG, &capstan__ca_config__descriptor},
                  {CAPSTAN_PKI_CA_HEALTH, &capstan__ca_health__descriptor}};
      for (size_t i = 0; i < sizeof(kPki) / sizeof(kPki[0]); i++) {
        if (klen == strlen(kPki[i].key) && memcmp(key, kPki[i].key, klen) == 0) {
          return kPki[i].type;
        }
      }
      return NULL;
    }
    default:
      return NULL; /* audit_device: rebuilt from the audit log */
  }
}

typedef struct {
  capstan_txn_t *to;
  capstan_db_t db;
  size_t copied;
} copy_t;

static int copy_one(const void *key, size_t klen, const void *val, size_t vlen, void *arg) {
  copy_t *c = arg;
  const ProtobufCMessageDescriptor *type = record_type(c->db, key, klen);
  if (type == NULL) {
    LOG_WARN("event=storage_copy_skipped db=%s key_bytes=%zu reason=\"unknown record\"",
             capstan_store_db_names[c->db], klen);
    return 0;
  }
  /* Through the record's type: the PostgreSQL tables keep a status or a
   * device beside it. Unknown fields of a newer release are kept. */
  ProtobufCMessage *msg = protobuf_c_message_unpack(type, NULL, vlen, val);
  if (msg == NULL) {
    LOG_ERROR("event=storage_record_unreadable db=%s type=%s bytes=%zu",
              capstan_store_db_names[c->db], type->name, vlen);
    return CAPSTAN_EIO;
  }
  int err = capstan_store_put(c->to, c->db, key, klen, msg);
  protobuf_c_message_free_unpacked(msg, NULL);
  if (err == 0) c->copied++;
  return err;
}

/* Copies every record of |from| into |to| (which the caller emptied). */
static int copy_store(capstan_txn_t *from, capstan_txn_t *to) {
  size_t total = 0;
  for (int db = 0; db < CAPSTAN_DB_COUNT; db++) {
    if (db == CAPSTAN_DB_AUDIT_DEVICE) continue;
    copy_t c = {.to = to, .db = (capstan_db_t)db};
    int err = capstan_store_iterate_raw(from, (capstan_db_t)db, copy_one, &c);
    if (err != 0) return err;
    total += c.copied;
  }
  LOG_INFO("event=storage_copied records=%zu from=%s to=%s", total,
           capstan_store_backend(from->store), capstan_store_backend(to->store));
  /* An LMDB copy indexes its audit log by device (an empty index is
   * rebuilt from the log). */
  return to->pg == NULL ? capstan_store_audit_reindex(to) : 0;
}

static void remove_lmdb_dir(const char *dir) {
  char path[PATH_MAX_LEN + 16];
  snprintf(path, sizeof(path), "%s/data.mdb", dir);
  unlink(path);
  snprintf(path, sizeof(path), "%s/lock.mdb", dir);
  unlink(path);
  rmdir(dir);
}

/* A PostgreSQL store's backup is the same LMDB file as an LMDB store's:
 * its records copied (one read transaction: a snapshot, the nodes go on
 * writing) into a temporary LMDB store beside |path|, then that store's
 * compacted copy. `capstan restore` takes it into either back end. */
static int backup_postgres(capstan_store_t *store, const char *path, uint64_t *bytes) {
  char dir[PATH_MAX_LEN];
  int n = snprintf(dir, sizeof(dir), "%s.tmpdir-%ld", path, (long)getpid());
  if (n < 0 || (size_t)n >= sizeof(dir)) return CAPSTAN_ERANGE;
  remove_lmdb_dir(dir);
  capstan_store_t *copy = NULL;
  int err = capstan_store_open_url(dir, "", CAPSTAN_STORE_CREATE, &copy);
  if (err != 0) return err;
  /* Room for the whole copy in one transaction: twice the database's size
   * (its pages hold more than the records), at least the default map. */
  size_t need = (size_t)capstan_store_size_bytes(store) * 2;
  if (need > CAPSTAN_STORE_MAP_SIZE) {
    err = capstan_store_set_map(copy, need, need);
    if (err != 0) {
      capstan_store_close(copy);
      remove_lmdb_dir(dir);
      return err;
    }
  }
  capstan_txn_t from, to;
  err = capstan_store_begin(store, false, &from);
  if (err == 0) {
    err = capstan_store_begin(copy, true, &to);
    if (err == 0) {
      err = copy_store(&from, &to);
      if (err == 0) {
        err = capstan_store_commit(&to);
      } else {
        capstan_store_abort(&to);
      }
    }
    capstan_store_abort(&from);
  }
  if (err == 0) err = capstan_store_backup(copy, path, bytes);
  capstan_store_close(copy);
  remove_lmdb_dir(dir);
  return err;
}

int capstan_store_backup(capstan_store_t *store, const char *path, uint64_t *bytes) {
  if (store->pg != NULL) return backup_postgres(store, path, bytes);
  char tmp[PATH_MAX_LEN];
  int n = snprintf(tmp, sizeof(tmp), "%s.tmp-%ld", path, (long)getpid());
  if (n < 0 || (size_t)n >= sizeof(tmp)) return CAPSTAN_ERANGE;
  /* 0600 from the start: the copy holds private keys, and no other user
   * may open it between its creation and a later chmod. */
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return -errno;
  int err = 0;
  int rc = mdb_env_copyfd2(store->env, fd, MDB_CP_COMPACT);
  if (rc == MDB_MAP_RESIZED && ftruncate(fd, 0) == 0 && lseek(fd, 0, SEEK_SET) == 0) {
    /* The server wrote past this process's map since it opened (it grew
     * the map): adopt the size the store needs and copy again, once. */
    atomic_store(&store->resized, true);
    capstan_store_adopt_map(store);
    rc = store->env != NULL ? mdb_env_copyfd2(store->env, fd, MDB_CP_COMPACT) : MDB_PANIC;
  }
  if (rc != 0) {
    LOG_ERROR("event=storage_backup_failed path=%s error=\"%s\"", path, mdb_strerror(rc));
    err = rc > 0 ? -rc : capstan_store_map_err(rc, "backup");
  }
  struct stat st;
  if (err == 0 && fsync(fd) != 0) err = -errno;
  if (err == 0 && fstat(fd, &st) != 0) err = -errno;
  if (close(fd) != 0 && err == 0) err = -errno;
  if (err == 0 && rename(tmp, path) != 0) err = -errno;
  if (err != 0) {
    unlink(tmp);
    return err;
  }
  if (bytes != NULL) *bytes = (uint64_t)st.st_size;
  return sync_parent(path);
}

int capstan_store_open_backup(const char *path, capstan_store_t **out) {
  *out = NULL;
  struct stat st;
  if (stat(path, &st) != 0) return -errno;
  if (!S_ISREG(st.st_mode)) return CAPSTAN_EINVAL;
  capstan_store_t *s = calloc(1, sizeof(*s));
  if (s == NULL) return CAPSTAN_ENOMEM;
  pthread_rwlock_init(&s->txn_lock, NULL);
  int err;
  s->dir = strdup(path);
  if (s->dir == NULL) {
    err = CAPSTAN_ENOMEM;
    goto err;
  }
  int rc = mdb_env_create(&s->env);
  if (rc == 0) rc = mdb_env_set_maxdbs(s->env, MAX_DBS);
  if (rc == 0) rc = mdb_env_set_mapsize(s->env, CAPSTAN_STORE_MAP_SIZE);
  if (rc != 0) {
    err = capstan_store_map_err(rc, "open");
    goto err;
  }
  /* No lock file: nothing but this process reads the backup. */
  rc = mdb_env_open(s->env, path, MDB_NOSUBDIR | MDB_RDONLY | MDB_NOLOCK | MDB_NOTLS, 0600);
  if (rc != 0) {
    /* Not an LMDB file (MDB_INVALID, MDB_VERSION_MISMATCH, a short file). */
    err = rc == EACCES ? CAPSTAN_EACCES : rc == ENOENT ? CAPSTAN_ENOENT : CAPSTAN_EINVAL;
    goto err;
  }
  err = capstan_store_open_dbis(s, true);
  if (err != 0) goto err;
  *out = s;
  return 0;
err:
  capstan_store_close(s);
  return err;
}

/* Into a PostgreSQL store: every record replaced by the backup's, in one
 * transaction (all or nothing). */
static int install_postgres(capstan_store_t *from, capstan_store_t *into) {
  capstan_txn_t src, dst;
  int err = capstan_store_begin(from, false, &src);
  if (err != 0) return err;
  err = capstan_store_begin(into, true, &dst);
  if (err == 0) {
    err = capstan_pg_clear(dst.pg);
    if (err == 0) err = copy_store(&src, &dst);
    if (err == 0) {
      err = capstan_store_commit(&dst);
    } else {
      capstan_store_abort(&dst);
    }
  }
  capstan_store_abort(&src);
  return err;
}

int capstan_store_install(capstan_store_t *from, const char *dir) {
  char conf[PATH_MAX_LEN];
  struct stat st;
  snprintf(conf, sizeof(conf), "%s/%s", dir, CAPSTAN_STORE_CONF);
  if (stat(conf, &st) == 0) {
    capstan_store_t *into = NULL;
    int err = capstan_store_open(dir, 0, &into);
    if (err == 0) err = install_postgres(from, into);
    capstan_store_close(into);
    return err;
  }
  char data[PATH_MAX_LEN], lock[PATH_MAX_LEN];
  int n = snprintf(data, sizeof(data), "%s/data.mdb", dir);
  int m = snprintf(lock, sizeof(lock), "%s/lock.mdb", dir);
  if (n < 0 || (size_t)n >= sizeof(data) || m < 0 || (size_t)m >= sizeof(lock)) {
    return CAPSTAN_ERANGE;
  }
  int err = capstan_store_backup(from, data, NULL);
  if (err != 0) return err;
  /* The next open makes a new lock file for the new data file. */
  if (unlink(lock) != 0 && errno != ENOENT) return -errno;
  return sync_parent(data);
}
