/* The environment: opening the LMDB environment and its named databases,
 * transactions, and the mapping of LMDB's errors to ours. */
#define _GNU_SOURCE /* pthread_rwlockattr_setkind_np */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "storage/internal.h"
#include "storage/pg_store.h"

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

static _Thread_local bool t_quiet;
/* A process whose writer grows a full map (capstan_store_set_map called):
 * MAP_FULL is not yet a failure there. In a command it is. */
static _Atomic bool g_map_grows;

void capstan_store_quiet_errors(bool quiet) {
  t_quiet = quiet;
}

bool capstan_store_errors_quiet(void) {
  return t_quiet;
}

/* The one place LMDB codes become ours. */
int capstan_store_map_err(int rc, const char *op) {
  capstan_log_level_t level = t_quiet ? CAPSTAN_LOG_DEBUG : CAPSTAN_LOG_ERROR;
  switch (rc) {
    case MDB_SUCCESS:
      return 0;
    case MDB_NOTFOUND:
      return CAPSTAN_ENOENT;
    case MDB_MAP_FULL:
      /* In the server not yet a failure: its writer grows the map and
       * writes again; it logs and counts a map that cannot grow
       * (op="grow"). A command has no writer: it is the command's failure. */
      if (atomic_load(&g_map_grows) || t_quiet) {
        LOG_DEBUG("event=storage_full op=%s error=\"%s\"", op, mdb_strerror(rc));
      } else {
        LOG_ERROR(
            "event=storage_map_full op=%s error=\"%s\" hint=\"the store's map is full: "
            "the server grows it as it writes, up to --store-max-mib; raise that if the server "
            "says storage_map_full too\"",
            op, mdb_strerror(rc));
        capstan_store_count_error(op);
      }
      return CAPSTAN_ENOSPC;
    case ENOMEM:
      capstan_store_count_error(op);
      return CAPSTAN_ENOMEM;
    default:
      capstan_log(level, "event=storage_error op=%s code=%d error=\"%s\"", op, rc,
                  mdb_strerror(rc));
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

/* Creates and opens s->env on s->dir with the map at s->map_size, and its
 * named databases. |again|: this process opened it before (a reopen), so
 * the databases exist and are opened in a read transaction: a write
 * transaction would wait for a command's (LMDB has one writer across
 * processes) while the caller holds txn_lock exclusive, freezing every read
 * of the server, its loop's included. */
static int open_env(capstan_store_t *s, bool again) {
  int rc = mdb_env_create(&s->env);
  if (rc != 0) {
    s->env = NULL;
    return capstan_store_map_err(rc, "open");
  }
  if ((rc = mdb_env_set_maxdbs(s->env, MAX_DBS)) != 0 ||
      (rc = mdb_env_set_mapsize(s->env, s->map_size)) != 0 ||
      (rc = mdb_env_set_maxreaders(s->env, 1022)) != 0) {
    return capstan_store_map_err(rc, "open");
  }
  rc = mdb_env_open(s->env, s->dir, MDB_NOTLS, 0600);
  if (rc != 0) {
    LOG_ERROR("event=storage_open_failed dir=%s error=\"%s\"", s->dir, mdb_strerror(rc));
    return rc == EACCES ? CAPSTAN_EACCES : capstan_store_map_err(rc, "open");
  }
  MDB_envinfo info;
  if (mdb_env_info(s->env, &info) == 0) s->map_size = info.me_mapsize;
  /* Readers left behind by killed CLI processes hold old pages. */
  int dead = 0;
  mdb_reader_check(s->env, &dead);
  if (dead > 0) LOG_INFO("event=storage_stale_readers_cleared count=%d", dead);
  return capstan_store_open_dbis(s, again);
}

static int set_mapsize_locked(capstan_store_t *s, size_t size);

/* ---- Which back end: DIR/store.conf ------------------------------------ */

/* Reads the URL of DIR/store.conf into |url|: 0, CAPSTAN_ENOENT when the
 * directory has none, CAPSTAN_EINVAL (logged) when it cannot be used. */
static int read_store_conf(const char *dir, char *url, size_t len) {
  char path[4096], line[CAPSTAN_STORE_URL_MAX + 64];
  snprintf(path, sizeof(path), "%s/%s", dir, CAPSTAN_STORE_CONF);
  FILE *f = fopen(path, "re");
  if (f == NULL) return errno == ENOENT ? CAPSTAN_ENOENT : -errno;
  int err = CAPSTAN_EINVAL;
  while (fgets(line, sizeof(line), f) != NULL) {
    char *p = line;
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '#' || *p == '\n' || *p == '\0') continue;
    if (strncmp(p, "store", 5) != 0) break;
    p += 5;
    while (*p == ' ' || *p == '\t') p++;
    if (*p++ != '=') break;
    while (*p == ' ' || *p == '\t') p++;
    size_t n = strcspn(p, "\r\n");
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
    if (n == 0 || n >= len) break;
    memcpy(url, p, n);
    url[n] = '\0';
    err = 0;
    break;
  }
  fclose(f);
  if (err != 0) {
    LOG_ERROR("event=storage_conf_invalid path=%s hint=\"one line: store = postgresql://...\"",
              path);
  }
  return err;
}

/* Writes DIR/store.conf (0600, through a temporary file, synced). */
static int write_store_conf(const char *dir, const char *url) {
  char path[4096], tmp[4200];
  snprintf(path, sizeof(path), "%s/%s", dir, CAPSTAN_STORE_CONF);
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  /* 0600 from its creation: the URL may hold a password. */
  unlink(tmp);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return -errno;
  FILE *f = fdopen(fd, "w");
  if (f == NULL) {
    int err = -errno;
    close(fd);
    unlink(tmp);
    return err;
  }
  fprintf(f,
          "# The store of this data directory: a PostgreSQL database that several capstan\n"
          "# nodes may share (written by capstan init --store).\n"
          "store = %s\n",
          url);
  int err = fflush(f) != 0 || fsync(fileno(f)) != 0 ? -errno : 0;
  if (fclose(f) != 0 && err == 0) err = -errno;
  if (err == 0 && rename(tmp, path) != 0) err = -errno;
  if (err != 0) {
    unlink(tmp);
    LOG_ERROR("event=storage_conf_write_failed path=%s error=\"%s\"", path, strerror(-err));
  }
  return err;
}

static capstan_store_t *store_new(const char *dir) {
  capstan_store_t *s = calloc(1, sizeof(*s));
  if (s == NULL) return NULL;
  /* Reader-preferring (glibc's default, said here because it matters): a
   * thread may begin a read inside another while the writer waits to
   * resize, and must not deadlock there. */
  pthread_rwlockattr_t la;
  pthread_rwlockattr_init(&la);
  pthread_rwlockattr_setkind_np(&la, PTHREAD_RWLOCK_PREFER_READER_NP);
  pthread_rwlock_init(&s->txn_lock, &la);
  pthread_rwlockattr_destroy(&la);
  s->dir = strdup(dir);
  if (s->dir == NULL) {
    pthread_rwlock_destroy(&s->txn_lock);
    free(s);
    return NULL;
  }
  return s;
}

static int open_postgres(const char *dir, const char *url, unsigned flags, bool create,
                         capstan_store_t **out) {
  capstan_store_t *s = store_new(dir);
  if (s == NULL) return CAPSTAN_ENOMEM;
  int err = capstan_pg_open(url, create, (flags & CAPSTAN_STORE_MIGRATE) != 0, &s->pg);
  if (err == CAPSTAN_ENOENT) {
    LOG_ERROR(
        "event=postgres_store_missing dir=%s hint=\"the database named in %s/%s holds no "
        "capstan store: run 'capstan init --data-dir %s --store URL'\"",
        dir, dir, CAPSTAN_STORE_CONF, dir);
    err = CAPSTAN_EINVAL;
  }
  if (err == 0 && create) err = write_store_conf(dir, url);
  if (err != 0) {
    capstan_store_close(s);
    return err;
  }
  *out = s;
  return 0;
}

const char *capstan_store_backend(const capstan_store_t *store) {
  return store->pg != NULL ? "postgresql" : "lmdb";
}

const char *capstan_store_url(const capstan_store_t *store) {
  return store->pg != NULL ? capstan_pg_url(store->pg) : NULL;
}

/* ---- Nodes ---------------------------------------------------------------- */

int capstan_store_node_start(capstan_store_t *store, const char *name, const char *detail) {
  if (name == NULL || name[0] == '\0' || strlen(name) >= CAPSTAN_NODE_NAME_MAX) {
    return CAPSTAN_EINVAL;
  }
  char *copy = strdup(name);
  if (copy == NULL) return CAPSTAN_ENOMEM;
  free(store->node);
  store->node = copy;
  return store->pg != NULL ? capstan_pg_node_start(store->pg, name, detail) : 0;
}

const char *capstan_store_node_name(const capstan_store_t *store) {
  return store->node;
}

bool capstan_store_leader(capstan_store_t *store) {
  return store->pg == NULL || capstan_pg_leader(store->pg);
}

bool capstan_store_reachable(capstan_store_t *store) {
  return store->pg == NULL || !capstan_pg_down(store->pg);
}

int capstan_store_nodes(capstan_store_t *store, capstan_store_node_t **out, size_t *n) {
  if (store->pg != NULL) return capstan_pg_nodes(store->pg, store->node, out, n);
  *n = 0;
  *out = calloc(1, sizeof(**out));
  if (*out == NULL) return CAPSTAN_ENOMEM;
  if (store->node == NULL) return 0;
  capstan_store_node_t *self = *out;
  snprintf(self->name, sizeof(self->name), "%s", store->node);
  snprintf(self->version, sizeof(self->version), "%s", CAPSTAN_VERSION);
  self->pid = (int)getpid();
  self->alive = self->leader = self->self = true;
  *n = 1;
  return 0;
}

int capstan_store_live_nodes(capstan_txn_t *txn, char ***names, size_t *n) {
  *names = NULL;
  *n = 0;
  if (txn->pg == NULL) return 0; /* LMDB: this node is the only one */
  return capstan_pg_live_nodes(txn->pg, txn->store->node, names, n);
}

int capstan_store_open(const char *dir, unsigned flags, capstan_store_t **out) {
  return capstan_store_open_url(dir, NULL, flags, out);
}

int capstan_store_open_url(const char *dir, const char *url, unsigned flags,
                           capstan_store_t **out) {
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
  }
  char conf_url[CAPSTAN_STORE_URL_MAX];
  int conf = read_store_conf(dir, conf_url, sizeof(conf_url));
  bool want_pg = url != NULL && url[0] != '\0';
  if (conf == 0) {
    if (want_pg && strcmp(url, conf_url) != 0) {
      LOG_ERROR(
          "event=storage_conf_differs dir=%s hint=\"this directory's store is the one "
          "in %s/%s; use another directory for another store\"",
          dir, dir, CAPSTAN_STORE_CONF);
      return CAPSTAN_EEXIST;
    }
    return open_postgres(dir, conf_url, flags, false, out);
  }
  if (conf != CAPSTAN_ENOENT) return conf;
  char path[4096];
  snprintf(path, sizeof(path), "%s/data.mdb", dir);
  bool has_lmdb = stat(path, &st) == 0;
  if (!has_lmdb && !(flags & CAPSTAN_STORE_CREATE)) {
    /* An empty directory is not a store: do not create one as a side
     * effect of a read-only command. */
    return CAPSTAN_ENOENT;
  }
  if (!has_lmdb && url == NULL) {
    const char *env = getenv("CAPSTAN_STORE");
    if (env != NULL && env[0] != '\0') {
      url = env;
      want_pg = true;
    }
  }
  if (want_pg && has_lmdb) {
    LOG_ERROR(
        "event=storage_conf_differs dir=%s hint=\"this directory holds an LMDB store "
        "(data.mdb); use another directory for a PostgreSQL store\"",
        dir);
    return CAPSTAN_EEXIST;
  }
  if (want_pg) return open_postgres(dir, url, flags, true, out);

  capstan_store_t *s = store_new(dir);
  if (s == NULL) return CAPSTAN_ENOMEM;
  int err;
  s->map_size = s->map_max = CAPSTAN_STORE_MAP_SIZE;
  err = open_env(s, false);
  if (err != 0) goto err;
  /* Map at least what the server's map has grown to (0: the stored size),
   * not only the data (what LMDB rounds a smaller map up to): else a
   * command's write needing a new page fails although the server has
   * room. The server sets its own with capstan_store_set_map. */
  int rc = set_mapsize_locked(s, 0);
  if (rc == 0 && s->map_size < CAPSTAN_STORE_MAP_SIZE) {
    rc = set_mapsize_locked(s, CAPSTAN_STORE_MAP_SIZE);
  }
  if (s->env == NULL) {
    err = capstan_store_map_err(rc, "open");
    goto err;
  }
  s->map_max = s->map_size;
  *out = s;
  return 0;
err:
  capstan_store_close(s);
  return err;
}

/* Resizes the open environment's map to |size| (LMDB keeps it at least as
 * large as the data) and updates map_size; the caller holds txn_lock
 * exclusive. LMDB 0.9.24 unmaps the old map before it maps the new one,
 * and when that mmap fails (ENOMEM under an address-space limit: ulimit -v,
 * LimitAS=) it leaves the environment with no map and its meta page
 * pointers dangling: the next transaction would crash. So the environment
 * is then closed and opened again at the size it had; when even that
 * fails it stays closed and broken (transactions fail with CAPSTAN_EIO and
 * the writer's reopen tries again). Returns LMDB's code for the resize. */
static int set_mapsize_locked(capstan_store_t *s, size_t size) {
  MDB_envinfo info;
  int rc = mdb_env_set_mapsize(s->env, size);
  if (rc == 0) {
    if (mdb_env_info(s->env, &info) == 0) s->map_size = info.me_mapsize;
    return 0;
  }
  mdb_env_close(s->env);
  s->env = NULL;
  if (open_env(s, true) == 0) return rc; /* open_env set map_size from the old one */
  if (s->env != NULL) mdb_env_close(s->env);
  s->env = NULL;
  atomic_store(&s->broken, true);
  return rc;
}

int capstan_store_set_map(capstan_store_t *s, size_t size, size_t max) {
  if (s == NULL || size == 0 || max < size) return CAPSTAN_EINVAL;
  if (s->pg != NULL) return 0; /* no map: PostgreSQL grows by itself */
  pthread_rwlock_wrlock(&s->txn_lock);
  int rc = s->env == NULL ? MDB_PANIC : set_mapsize_locked(s, size);
  s->map_max = max > s->map_size ? max : s->map_size;
  s->map_set = true;
  atomic_store(&g_map_grows, true);
  pthread_rwlock_unlock(&s->txn_lock);
  return capstan_store_map_err(rc, "open");
}

size_t capstan_store_map_size(capstan_store_t *s) {
  return s->map_size;
}

size_t capstan_store_map_max(capstan_store_t *s) {
  return s->map_max;
}

/* capstan_store_grow_map with txn_lock held exclusive. */
static int grow_map_locked(capstan_store_t *s) {
  int err = CAPSTAN_ENOSPC;
  if (s->env == NULL) {
    err = CAPSTAN_EIO; /* a failed reopen: the writer reopens it first */
  } else if (s->map_size < s->map_max) {
    size_t old = s->map_size;
    size_t next = old * 2 < s->map_max ? old * 2 : s->map_max;
    int rc = set_mapsize_locked(s, next);
    if (rc == 0) {
      LOG_INFO("event=storage_map_grown from_bytes=%zu to_bytes=%zu max_bytes=%zu", old, next,
               s->map_max);
    } else {
      /* Not the map being full: the address space (or memory) refused the
       * larger map, and raising --store-max-mib would not help. Quiet
       * (debug) while the writer is in an outage, like the other errors. */
      capstan_log(t_quiet ? CAPSTAN_LOG_DEBUG : CAPSTAN_LOG_ERROR,
                  "event=storage_map_grow_failed from_bytes=%zu to_bytes=%zu error=\"%s\" "
                  "store=%s hint=\"the process may not map more memory (ulimit -v, LimitAS=)\"",
                  old, next, mdb_strerror(rc), s->env != NULL ? "reopened" : "closed");
    }
    err = capstan_store_map_err(rc, "grow");
    /* ENOSPC would read as "at the maximum" to the caller. */
    if (err == CAPSTAN_ENOSPC) err = CAPSTAN_EIO;
  }
  return err;
}

int capstan_store_grow_map(capstan_store_t *s) {
  if (s->pg != NULL) return CAPSTAN_EIO;
  pthread_rwlock_wrlock(&s->txn_lock);
  int err = grow_map_locked(s);
  pthread_rwlock_unlock(&s->txn_lock);
  return err;
}

int capstan_store_reopen(capstan_store_t *s) {
  if (s->pg != NULL) return 0;
  pthread_rwlock_wrlock(&s->txn_lock);
  mdb_env_close(s->env);
  s->env = NULL;
  int err = open_env(s, true);
  /* A fresh environment maps what the store holds: nothing left to adopt. */
  atomic_store(&s->resized, false);
  if (err == 0) {
    atomic_store(&s->broken, false);
  } else if (s->env != NULL) {
    /* Still broken: transactions fail (env NULL) until a reopen works. */
    mdb_env_close(s->env);
    s->env = NULL;
  }
  pthread_rwlock_unlock(&s->txn_lock);
  return err;
}

void capstan_store_close(capstan_store_t *store) {
  if (store == NULL) return;
  if (store->writer != NULL) {
    LOG_ERROR("event=storage_close_with_writer hint=\"call capstan_store_writer_stop first\"");
    abort();
  }
  if (store->env != NULL) mdb_env_close(store->env);
  capstan_pg_close(store->pg);
  pthread_rwlock_destroy(&store->txn_lock);
  free(store->dir);
  free(store->actor);
  free(store->node);
  free(store);
}

/* Both read the environment, which the writer may be reopening: under
 * txn_lock, as a transaction would. */
uint64_t capstan_store_txnid(capstan_store_t *store) {
  if (store->pg != NULL) return capstan_pg_changes(store->pg);
  MDB_envinfo info;
  pthread_rwlock_rdlock(&store->txn_lock);
  int rc = store->env != NULL ? mdb_env_info(store->env, &info) : EINVAL;
  pthread_rwlock_unlock(&store->txn_lock);
  return rc == 0 ? (uint64_t)info.me_last_txnid : 0;
}

uint64_t capstan_store_size_bytes(capstan_store_t *store) {
  if (store->pg != NULL) return capstan_pg_size_bytes(store->pg);
  MDB_envinfo info;
  MDB_stat st;
  pthread_rwlock_rdlock(&store->txn_lock);
  int rc = store->env != NULL ? mdb_env_info(store->env, &info) : EINVAL;
  if (rc == 0) rc = mdb_env_stat(store->env, &st);
  pthread_rwlock_unlock(&store->txn_lock);
  return rc == 0 ? ((uint64_t)info.me_last_pgno + 1) * st.ms_psize : 0;
}

/* ---- Transactions ----------------------------------------------------- */

/* Takes the map size the store needs now that another process wrote past
 * ours: what the store holds (LMDB rounds a smaller size up to it), not
 * the other process's map, so that this one's maximum still holds. The
 * caller holds txn_lock exclusive. */
static void adopt_map(capstan_store_t *store) {
  atomic_store(&store->resized, false);
  if (store->env == NULL) return; /* a failed reopen: the next one adopts it */
  int rc = set_mapsize_locked(store, store->map_size);
  if (rc != 0) {
    capstan_log(t_quiet ? CAPSTAN_LOG_DEBUG : CAPSTAN_LOG_ERROR,
                "event=storage_map_adopt_failed map_bytes=%zu error=\"%s\" store=%s",
                (size_t)store->map_size, mdb_strerror(rc),
                store->env != NULL ? "reopened" : "closed");
    capstan_store_count_error("grow");
  }
}

void capstan_store_adopt_map(capstan_store_t *store) {
  if (!atomic_load(&store->resized)) return;
  pthread_rwlock_wrlock(&store->txn_lock);
  adopt_map(store);
  pthread_rwlock_unlock(&store->txn_lock);
}

int capstan_store_begin(capstan_store_t *store, bool write, capstan_txn_t *txn) {
  memset(txn, 0, sizeof(*txn));
  if (store->pg != NULL) {
    int err = capstan_pg_begin(store->pg, write, &txn->pg);
    if (err != 0) return err;
    txn->store = store;
    txn->write = write;
    return 0;
  }
  MDB_txn *t = NULL;
  pthread_rwlock_rdlock(&store->txn_lock);
  /* No environment: a reopen after MDB_PANIC failed; the writer tries again. */
  int rc =
      store->env == NULL ? MDB_PANIC : mdb_txn_begin(store->env, NULL, write ? 0 : MDB_RDONLY, &t);
  if (rc == MDB_MAP_RESIZED) {
    /* Another process wrote past our map. It may be adopted only with no
     * transaction of this process open: at once when none is, else (this
     * thread may hold one) by the writer, which waits for that. */
    pthread_rwlock_unlock(&store->txn_lock);
    if (pthread_rwlock_trywrlock(&store->txn_lock) == 0) {
      adopt_map(store);
      pthread_rwlock_unlock(&store->txn_lock);
    } else {
      atomic_store(&store->resized, true);
    }
    pthread_rwlock_rdlock(&store->txn_lock);
    /* Unlocked meanwhile: a failed adopt or reopen may have closed it. */
    rc = store->env == NULL ? MDB_PANIC
                            : mdb_txn_begin(store->env, NULL, write ? 0 : MDB_RDONLY, &t);
  }
  if (rc == MDB_PANIC) {
    /* A failed write of the meta page: every transaction is refused until
     * the writer opens the environment again. Said once per outage (the
     * writer clears broken_said when it ends), whichever thread meets it. */
    if (!atomic_exchange(&store->broken, true) && !atomic_exchange(&store->broken_said, true)) {
      LOG_ERROR(
          "event=storage_broken error=\"%s\" hint=\"a write of the store failed; the "
          "server opens it again\"",
          mdb_strerror(rc));
    }
    capstan_store_count_error("begin");
    pthread_rwlock_unlock(&store->txn_lock);
    return CAPSTAN_EIO;
  }
  if (rc != 0) {
    pthread_rwlock_unlock(&store->txn_lock);
    return capstan_store_map_err(rc, "begin");
  }
  txn->mdb = t;
  txn->store = store;
  txn->write = write;
  return 0;
}

int capstan_store_commit(capstan_txn_t *txn) {
  if (txn->pg != NULL) {
    int err = capstan_pg_commit(txn->store->pg, txn->pg);
    txn->pg = NULL;
    return err;
  }
  if (txn->mdb == NULL) return CAPSTAN_EINVAL;
  int rc = mdb_txn_commit(txn->mdb);
  txn->mdb = NULL;
  pthread_rwlock_unlock(&txn->store->txn_lock);
  return capstan_store_map_err(rc, "commit");
}

void capstan_store_abort(capstan_txn_t *txn) {
  if (txn != NULL && txn->pg != NULL) {
    capstan_pg_abort(txn->store->pg, txn->pg);
    txn->pg = NULL;
    return;
  }
  if (txn == NULL || txn->mdb == NULL) return;
  mdb_txn_abort(txn->mdb);
  txn->mdb = NULL;
  pthread_rwlock_unlock(&txn->store->txn_lock);
}

int capstan_store_settle(capstan_txn_t *txn) {
  return txn->pg != NULL ? capstan_pg_settle(txn->pg) : 0;
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
  for (;;) {
    capstan_txn_t txn;
    int err = capstan_store_begin(store, true, &txn);
    if (err != 0) return err;
    err = fn(&txn, arg);
    if (err != 0) {
      capstan_store_abort(&txn);
    } else {
      err = capstan_store_commit(&txn);
    }
    /* Without a writer (a command, or the server before its writer
     * starts) nothing else grows a full map: grow it here and write again
     * (fn only reads its argument, as the writer's requests). Only when
     * no transaction of this process is open (this thread may hold one):
     * else the map cannot be resized and the write stays full. */
    if (err != CAPSTAN_ENOSPC || store->writer != NULL) return err;
    if (pthread_rwlock_trywrlock(&store->txn_lock) != 0) return err;
    int grown;
    if (store->map_set) {
      grown = grow_map_locked(store);
    } else {
      /* A command: the server may have grown the map since it opened. */
      size_t before = store->map_size;
      grown = store->env == NULL ? MDB_PANIC : set_mapsize_locked(store, 0);
      if (grown == 0 && store->map_size <= before) grown = CAPSTAN_ENOSPC;
      if (grown == 0) store->map_max = store->map_size;
    }
    pthread_rwlock_unlock(&store->txn_lock);
    if (grown != 0) return err;
  }
}
