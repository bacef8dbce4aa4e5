/* Inside the storage layer only: the environment's state, shared by the
 * files that own its parts (env.c: environment, transactions and error
 * mapping; records.c: record access; writer.c: the group-commit writer). */
#ifndef CAPSTAN_STORAGE_INTERNAL_H
#define CAPSTAN_STORAGE_INTERNAL_H

#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>
#include <uv.h>

#include <protobuf-c/protobuf-c.h>

#include "storage/store.h"

#define SETTINGS_KEY "settings"
#define MAX_DBS 16

extern const char *const capstan_store_db_names[CAPSTAN_DB_COUNT];

typedef struct writer writer_t;
typedef struct reader reader_t;
typedef struct pg_store pg_store_t;

struct capstan_store {
  /* The back end: PostgreSQL when |pg| is set (DIR/store.conf names it),
   * else the LMDB environment |env|. */
  pg_store_t *pg;
  MDB_env *env;
  MDB_dbi dbi[CAPSTAN_DB_COUNT];
  /* Databases a read-only store (a backup) does not have because an
   * earlier release wrote it (a bit per capstan_db_t): they read empty. */
  uint32_t absent;
  writer_t *writer;
  reader_t *reader; /* PostgreSQL, with a writer: reads for the loop thread */
  /* Every transaction of this process holds this shared, from begin to
   * commit or abort: LMDB may resize or reopen the map only while no
   * transaction of the process is active, so the writer takes it
   * exclusive for that (capstan_store_grow_map, capstan_store_reopen). */
  pthread_rwlock_t txn_lock;
  _Atomic size_t map_size;  /* the map's size now */
  _Atomic size_t map_max;   /* how far capstan_store_grow_map may take it */
  _Atomic bool broken;      /* LMDB said MDB_PANIC: only a reopen helps */
  _Atomic bool broken_said; /* event=storage_broken logged in this outage */
  _Atomic bool resized;     /* another process wrote past the map: adopt it */
  /* capstan_store_set_map set this process's own map and maximum (the
   * server). Else (a command) the map follows the stored one: the largest
   * any process used, which LMDB keeps in the meta page. */
  bool map_set;
  char *dir;
  char *actor; /* stamped on audit events as their user; NULL: none */
  char *node;  /* capstan_store_node_start's name (the server); NULL: none */
};

/* Opens the named databases of |s| (creating them unless |readonly|).
 * Read-only, a database an earlier release did not have reads as empty
 * (|absent|); any other missing one is CAPSTAN_EINVAL: not a capstan store. */
int capstan_store_open_dbis(capstan_store_t *s, bool readonly);

/* Doubles the map, up to map_max, once every transaction of this process
 * has ended (the caller holds none). CAPSTAN_ENOSPC when it is at map_max
 * already; another error when the larger map could not be mapped (logged
 * as storage_map_grow_failed): the environment is then open again at its
 * old size or, if that failed too, closed and broken until a reopen. */
int capstan_store_grow_map(capstan_store_t *s);

/* When a transaction met a map another process grew and could not adopt
 * it (a transaction of this process was open), adopts it, waiting until
 * none is open: the writer calls it holding none. */
void capstan_store_adopt_map(capstan_store_t *s);

/* Closes and opens the environment again, once every transaction of this
 * process has ended (the caller holds none): after a failed write of the
 * meta page LMDB refuses every transaction (MDB_PANIC) until then. */
int capstan_store_reopen(capstan_store_t *s);

/* The reader threads of a server on PostgreSQL (reader.c), started and
 * stopped with its writer; on LMDB there are none. */
int capstan_store_readers_start(capstan_store_t *store, uv_loop_t *loop);
void capstan_store_readers_stop(capstan_store_t *store);

/* While set on a thread, failures it maps are logged at debug level only
 * (still counted): the writer says once that the store is unavailable
 * instead of once per request. */
void capstan_store_quiet_errors(bool quiet);

/* The answers of |txn|'s writes so far: PostgreSQL sends a write
 * transaction's writes without waiting for each answer, so a failed write
 * is known only here (or at commit). 0 or the first failure; always 0 on
 * LMDB, whose writes answer at once. */
int capstan_store_settle(capstan_txn_t *txn);

/* Whether this thread's storage errors are logged at debug level. */
bool capstan_store_errors_quiet(void);

/* Counts a failed operation in capstan_storage_errors_total{op}. */
void capstan_store_count_error(const char *op);

/* The one place LMDB codes become ours (storage/store.h lists them);
 * failures are logged and counted under |op|. */
int capstan_store_map_err(int rc, const char *op);

/* True when |db| is absent from |txn|'s read-only store (reads as empty). */
#define CAPSTAN_STORE_ABSENT(txn, db) (((txn)->store->absent >> (db)) & 1u)

/* CAPSTAN_EINVAL unless |txn| is open and |db| is one of the databases. */
int capstan_store_check_db(const capstan_txn_t *txn, capstan_db_t db);

/* Typed iteration over |db|: fn gets each unpacked message (valid during
 * the call). Returns as capstan_store_iterate. */
int capstan_store_iterate_typed(capstan_txn_t *txn, capstan_db_t db,
                                const ProtobufCMessageDescriptor *desc,
                                int (*fn)(const void *msg, void *arg), void *arg);

/* Builds the AUDIT_DEVICE index from the AUDIT database when the index is
 * empty and the log is not (a store written before the index existed).
 * Inside the write transaction that opens the databases. */
int capstan_store_audit_reindex(capstan_txn_t *txn);

/* A name key (device, template): 1..255 bytes. CAPSTAN_EINVAL otherwise. */
int capstan_store_name_key(const char *name, size_t *len);

#endif
