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

int capstan_store_backup(capstan_store_t *store, const char *path, uint64_t *bytes) {
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

int capstan_store_install(capstan_store_t *from, const char *dir) {
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
