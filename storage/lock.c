/* The data directory's lock and pid file (storage/lock.h). */
#include "storage/lock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/base/error.h"

/* Byte ranges of the lock (storage/lock.h). */
#define BYTE_IN_USE 0
#define BYTE_SERVER 1
/* A holder that exits unlinks the path between our open and our lock: try
 * the new file, a few times. */
#define ACQUIRE_TRIES 8

struct capstan_dirlock {
  int fd;
  char path[4096];
};

static int lock_path(const char *dir, char *out, size_t len) {
  if (dir == NULL || dir[0] == '\0') return CAPSTAN_EINVAL;
  int n = snprintf(out, len, "%s/%s", dir, CAPSTAN_SERVE_PID_FILE);
  return n < 0 || (size_t)n >= len ? CAPSTAN_ERANGE : 0;
}

static struct flock range(short type, off_t start, off_t len) {
  struct flock fl;
  memset(&fl, 0, sizeof(fl));
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = start;
  fl.l_len = len;
  return fl;
}

/* The pid of a lock that conflicts with a write lock on [start, start+len)
 * of |fd|: 0 and *pid (0 when the kernel does not name one), or
 * CAPSTAN_ENOENT when nothing conflicts. */
static int conflicting_holder(int fd, off_t start, off_t len, pid_t *pid) {
  struct flock fl = range(F_WRLCK, start, len);
  if (fcntl(fd, F_GETLK, &fl) != 0) return -errno;
  if (fl.l_type == F_UNLCK) return CAPSTAN_ENOENT;
  *pid = fl.l_pid > 0 ? fl.l_pid : 0;
  return 0;
}

/* True when |fd| is still the file at |path|. */
static int same_file(int fd, const char *path) {
  struct stat a, b;
  if (fstat(fd, &a) != 0 || stat(path, &b) != 0) return 0;
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

static int write_pid(int fd) {
  char buf[32];
  int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) != 0) return -errno;
  if (pwrite(fd, buf, (size_t)n, 0) != n) return errno ? -errno : CAPSTAN_EIO;
  return 0;
}

int capstan_dirlock_acquire(const char *dir, capstan_dirlock_kind_t kind, capstan_dirlock_t **out,
                            pid_t *holder) {
  *out = NULL;
  if (holder) *holder = 0;
  capstan_dirlock_t *l = calloc(1, sizeof(*l));
  if (l == NULL) return CAPSTAN_ENOMEM;
  l->fd = -1;
  int err = lock_path(dir, l->path, sizeof(l->path));
  if (err < 0) goto err;
  off_t len = kind == CAPSTAN_DIRLOCK_SERVE ? 2 : 1;
  for (int attempt = 0; attempt < ACQUIRE_TRIES; attempt++) {
    l->fd = open(l->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (l->fd < 0) {
      err = -errno;
      goto err;
    }
    struct flock fl = range(F_WRLCK, BYTE_IN_USE, len);
    if (fcntl(l->fd, F_SETLK, &fl) != 0) {
      err = errno == EACCES || errno == EAGAIN ? CAPSTAN_EBUSY : -errno;
      pid_t pid = 0;
      if (err == CAPSTAN_EBUSY && holder) {
        if (conflicting_holder(l->fd, BYTE_IN_USE, len, &pid) == 0) *holder = pid;
      }
      goto err;
    }
    if (same_file(l->fd, l->path)) {
      if (kind == CAPSTAN_DIRLOCK_SERVE && (err = write_pid(l->fd)) < 0) goto err;
      *out = l;
      return 0;
    }
    /* The file we locked was unlinked by a holder on its way out. */
    close(l->fd);
    l->fd = -1;
  }
  err = CAPSTAN_EBUSY;
err:
  if (l->fd >= 0) close(l->fd);
  free(l);
  return err;
}

void capstan_dirlock_release(capstan_dirlock_t *lock) {
  if (lock == NULL) return;
  /* Unlink first, unlock after: whoever locks the old file later sees that
   * the path no longer names it. */
  if (same_file(lock->fd, lock->path)) unlink(lock->path);
  close(lock->fd);
  free(lock);
}

int capstan_dirlock_server(const char *dir, pid_t *pid, pid_t *stale_pid) {
  char path[4096];
  *pid = 0;
  if (stale_pid) *stale_pid = 0;
  int err = lock_path(dir, path, sizeof(path));
  if (err < 0) return err;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  err = conflicting_holder(fd, BYTE_SERVER, 1, pid);
  if (err == CAPSTAN_ENOENT && stale_pid) {
    char buf[32] = {0};
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    if (n > 0) *stale_pid = (pid_t)strtol(buf, NULL, 10);
  }
  close(fd);
  return err;
}
