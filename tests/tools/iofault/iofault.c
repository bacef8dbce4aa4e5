/* libcapstan-iofault: a test aid preloaded into `capstan serve`
 * (LD_PRELOAD) that makes writes and syncs of the files in one directory
 * fail, as a failing disk would, while a control file says so. It lets a
 * test turn I/O errors on and off under a running server.
 *
 *   CAPSTAN_IOFAULT_DIR      the directory whose files fail (the data dir)
 *   CAPSTAN_IOFAULT_CONTROL  the control file, read at every call:
 *                            missing or empty: no faults; otherwise the
 *                            errno ("EIO" or "ENOSPC") and what fails:
 *                              all   every write and sync (the default)
 *                              meta  only writes to LMDB's meta pages (the
 *                                    first two pages: offset below twice
 *                                    the OS page size, the size LMDB's
 *                                    pages have), the last write of a
 *                                    commit
 *                              sync  only fsync, fdatasync and msync
 *
 * Wrapped: write, writev (LMDB flushes runs of adjacent pages with lseek
 * and writev), pwrite, pwrite64, pwritev, pwritev64, pwritev2, pwritev64v2,
 * fsync, fdatasync, msync (msync names no file: it fails for every mapping
 * while on). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

typedef enum { SCOPE_ALL, SCOPE_META, SCOPE_SYNC } scope_t;
typedef enum { CALL_WRITE, CALL_SYNC } call_t;

/* The errno to fail with now (0: none) and its scope. */
static int fault_now(scope_t *scope) {
  const char *path = getenv("CAPSTAN_IOFAULT_CONTROL");
  if (path == NULL) return 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[64];
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  char what[16] = "", where[16] = "all";
  if (sscanf(buf, "%15s %15s", what, where) < 1) return 0;
  *scope = strcmp(where, "meta") == 0   ? SCOPE_META
           : strcmp(where, "sync") == 0 ? SCOPE_SYNC
                                        : SCOPE_ALL;
  if (strcmp(what, "EIO") == 0) return EIO;
  if (strcmp(what, "ENOSPC") == 0) return ENOSPC;
  return 0;
}

/* True when |fd| is a file inside CAPSTAN_IOFAULT_DIR. */
static int in_dir(int fd) {
  const char *dir = getenv("CAPSTAN_IOFAULT_DIR");
  if (dir == NULL || fd < 0) return 0;
  char real[PATH_MAX], link[64], target[PATH_MAX];
  if (realpath(dir, real) == NULL) return 0;
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof(target) - 1);
  if (n <= 0) return 0;
  target[n] = '\0';
  size_t len = strlen(real);
  return strncmp(target, real, len) == 0 && target[len] == '/';
}

/* The errno this call fails with, or 0 to let it through. */
static int should_fail(int fd, call_t call, off_t offset) {
  scope_t scope = SCOPE_ALL;
  int err = fault_now(&scope);
  if (err == 0) return 0;
  /* LMDB's pages are the OS page's size; the meta pages are the first two. */
  off_t meta_end = 2 * (off_t)sysconf(_SC_PAGESIZE);
  if (scope == SCOPE_META && (call != CALL_WRITE || offset < 0 || offset >= meta_end)) return 0;
  if (scope == SCOPE_SYNC && call != CALL_SYNC) return 0;
  if (fd >= 0 && !in_dir(fd)) return 0;
  return err;
}

#define REAL(name, type) ((type)dlsym(RTLD_NEXT, name))

ssize_t write(int fd, const void *buf, size_t count) {
  /* Not the meta scope: write has no offset, and LMDB writes pages with
   * pwrite. */
  int err = should_fail(fd, CALL_WRITE, -1);
  if (err != 0) {
    errno = err;
    return -1;
  }
  return REAL("write", ssize_t(*)(int, const void *, size_t))(fd, buf, count);
}

/* Where a write at the file position (write, writev) lands, for the meta
 * scope: -1 when unknown. */
static off_t position(int fd) {
  return lseek(fd, 0, SEEK_CUR);
}

ssize_t writev(int fd, const struct iovec *iov, int n) {
  int err = should_fail(fd, CALL_WRITE, position(fd));
  if (err != 0) {
    errno = err;
    return -1;
  }
  return REAL("writev", ssize_t(*)(int, const struct iovec *, int))(fd, iov, n);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
  int err = should_fail(fd, CALL_WRITE, offset);
  if (err != 0) {
    errno = err;
    return -1;
  }
  return REAL("pwrite", ssize_t(*)(int, const void *, size_t, off_t))(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
  int err = should_fail(fd, CALL_WRITE, offset);
  if (err != 0) {
    errno = err;
    return -1;
  }
  return REAL("pwrite64", ssize_t(*)(int, const void *, size_t, off_t))(fd, buf, count, offset);
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t offset) {
  int err = should_fail(fd, CALL_WRITE, offset);
  if (err != 0) {
    errno = err;
    return -1;
  }
  return REAL("pwritev", ssize_t(*)(int, const struct iovec *, int, off_t))(fd, iov, n, offset);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int n, off_t offset) {
  int err = should_fail(fd, CALL_WRITE, offset);
  if (err != 0) {
    errno = err;
    return -1;
  }
  return REAL("pwritev64", ssize_t(*)(int, const struct iovec *, int, off_t))(fd, iov, n, offset);
}

int fsync(int fd) {
  int err = should_fail(fd, CALL_SYNC, -1);
  if (err != 0) {
    errno = err;
    return -1;
  }
  return REAL("fsync", int (*)(int))(fd);
}

int fdatasync(int fd) {
  int err = should_fail(fd, CALL_SYNC, -1);
  if (err != 0) {
    errno = err;
    return -1;
  }
  return REAL("fdatasync", int (*)(int))(fd);
}

int msync(void *addr, size_t len, int flags) {
  int err = should_fail(-1, CALL_SYNC, -1);
  if (err != 0) {
    errno = err;
    return -1;
  }
  return REAL("msync", int (*)(void *, size_t, int))(addr, len, flags);
}

/* pwritev2 with an offset of -1 writes at the file position. */
ssize_t pwritev2(int fd, const struct iovec *iov, int n, off_t offset, int flags) {
  int err = should_fail(fd, CALL_WRITE, offset == -1 ? position(fd) : offset);
  if (err != 0) {
    errno = err;
    return -1;
  }
  return REAL("pwritev2", ssize_t(*)(int, const struct iovec *, int, off_t, int))(fd, iov, n,
                                                                                  offset, flags);
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int n, off_t offset, int flags) {
  int err = should_fail(fd, CALL_WRITE, offset == -1 ? position(fd) : offset);
  if (err != 0) {
    errno = err;
    return -1;
  }
  return REAL("pwritev64v2", ssize_t(*)(int, const struct iovec *, int, off_t, int))(fd, iov, n,
                                                                                     offset, flags);
}
