/* The data directory's lock and pid file: DIR/serve.pid.
 *
 * One `capstan serve` per store: serve holds a write lock on serve.pid for
 * its whole life and writes its pid there; a second serve on the same
 * directory is refused and told the holder's pid. `capstan restore` holds
 * the part of the lock that excludes a server while it replaces the store.
 * Admin commands take no lock: LMDB lets them share the store with the
 * running server. `capstan reload` asks the lock, not the file's text, which
 * process is the server (a pid file left by a killed server names a process
 * that holds no lock).
 *
 * The lock is a POSIX record lock (fcntl F_SETLK), so that F_GETLK names the
 * holder's pid; two byte ranges of the file:
 *   byte 0  the store is in use by a server or a restore (both take it)
 *   byte 1  a server runs (only serve takes it; reload asks for it)
 * The kernel drops the lock when the holder exits, however it exits.
 * A POSIX lock is also dropped when its process closes any descriptor of
 * the file: only this file's code opens serve.pid, and never in a process
 * that holds the lock.
 *
 * Whoever takes the lock checks afterwards that the path still names the
 * file it locked (a holder that exits unlinks the path before it unlocks),
 * so two processes never hold locks on two different serve.pid files. */
#ifndef CAPSTAN_STORAGE_LOCK_H
#define CAPSTAN_STORAGE_LOCK_H

#include <sys/types.h>

#define CAPSTAN_SERVE_PID_FILE "serve.pid"

typedef enum {
  CAPSTAN_DIRLOCK_SERVE,   /* a server: bytes 0 and 1, and the pid in the file */
  CAPSTAN_DIRLOCK_RESTORE, /* a restore: byte 0 only; the file stays empty */
} capstan_dirlock_kind_t;

typedef struct capstan_dirlock capstan_dirlock_t;

/* Takes the lock of the existing directory |dir| (creating serve.pid,
 * mode 0644). On success *out is owned by the caller (release it with
 * capstan_dirlock_release) and, for SERVE, the file holds "PID\n".
 * CAPSTAN_EBUSY when another process holds a conflicting lock: *holder is
 * its pid (0 when the kernel does not say); CAPSTAN_ENOENT when |dir| does
 * not exist; another negative errno otherwise. */
int capstan_dirlock_acquire(const char *dir, capstan_dirlock_kind_t kind, capstan_dirlock_t **out,
                            pid_t *holder);

/* Removes serve.pid and releases the lock. Accepts NULL. */
void capstan_dirlock_release(capstan_dirlock_t *lock);

/* The pid of the `capstan serve` running on |dir|: 0 and *pid, or
 * CAPSTAN_ENOENT when none holds the lock (no serve.pid, or one left by a
 * server that is gone: then *stale_pid is the pid it names, else 0), or
 * another negative errno. Never call it in a process that holds the lock. */
int capstan_dirlock_server(const char *dir, pid_t *pid, pid_t *stale_pid);

#endif
