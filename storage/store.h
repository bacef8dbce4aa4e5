/* The capstan store: one LMDB environment in the data directory, holding
 * protobuf-c records (storage/records.proto) in named databases.
 *
 * Several processes share the environment: the server and any number of
 * admin CLI commands. LMDB serialises writers (one write transaction at a
 * time across all processes) and lets readers run alongside. The server
 * notices changes made by others through capstan_store_txnid().
 *
 * Two ways to write:
 *  - synchronously (CLI, start-up, tests): capstan_store_begin(write) ...
 *    capstan_store_commit(), or capstan_store_write(store, fn, arg);
 *  - through the group-commit writer (server): capstan_store_submit() from
 *    the loop thread; many requests share one durable commit and each is
 *    completed on the loop thread after that commit. A failing request
 *    leaves no partial writes (the batch is replayed without it).
 *
 * This header carries no record type: the records (storage/records.h)
 * are for the code that maps them to the plain structs the rest of the
 * server takes.
 *
 * Errors (core/base/error.h): CAPSTAN_ENOENT no such record, CAPSTAN_ENOSPC store
 * full (map size reached), CAPSTAN_EINVAL bad argument (e.g. a record missing
 * a required field), CAPSTAN_ENOMEM, CAPSTAN_EIO anything else (logged with
 * LMDB's text, counted in capstan_storage_errors_total{op=...}). */
#ifndef CAPSTAN_STORAGE_STORE_H
#define CAPSTAN_STORAGE_STORE_H

#include <lmdb.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct capstan_store capstan_store_t;

/* The named databases. Keys:
 *   DEVICES   device name (no NUL)           -> Device
 *   CERTS     16-byte serial                 -> IssuedCert
 *   PKI       "capf" | "tftp"                -> Identity
 *             "capf_pending"                 -> PendingCapfKey
 *   TRUST     32-byte SHA-256 of the DER     -> TrustCert
 *   CAPF_PREVIOUS 32-byte SHA-256 of the DER -> PreviousCapf
 *   TEMPLATES template name                  -> Template
 *   SETTINGS  "settings"                     -> Settings
 *   AUDIT     8-byte big-endian unix ns      -> AuditEvent
 *   AUDIT_DEVICE device name -> the AUDIT keys of its events (sorted
 *             duplicates of 8 bytes each: an index, storage/audit.h)
 *   CSR       32-byte SHA-256 of the request's public key -> CertRequest
 *   (PKI also holds "ca" -> CaConfig and "ca_health" -> CaHealth) */
#define CAPSTAN_STORE_DBS(X)        \
  X(DEVICES, "devices")             \
  X(CERTS, "certs")                 \
  X(PKI, "pki")                     \
  X(TRUST, "trust")                 \
  X(TEMPLATES, "templates")         \
  X(SETTINGS, "settings")           \
  X(AUDIT, "audit")                 \
  X(CAPF_PREVIOUS, "capf_previous") \
  X(AUDIT_DEVICE, "audit_device")   \
  X(CSR, "csr")

typedef enum {
#define CAPSTAN_STORE_DB_ENUM(id, name) CAPSTAN_DB_##id,
  CAPSTAN_STORE_DBS(CAPSTAN_STORE_DB_ENUM)
#undef CAPSTAN_STORE_DB_ENUM
      CAPSTAN_DB_COUNT
} capstan_db_t;

/* Identity keys in the PKI database. */
#define CAPSTAN_IDENTITY_CAPF "capf"
#define CAPSTAN_IDENTITY_TFTP "tftp"
#define CAPSTAN_PKI_CA_CONFIG "ca"
#define CAPSTAN_PKI_CA_HEALTH "ca_health"

#define CAPSTAN_SERIAL_LEN 16
#define CAPSTAN_STORE_MAP_SIZE ((size_t)4 << 30) /* 4 GiB of address space */
#define CAPSTAN_STORE_DEFAULT_DIR "./capstan-data"

/* The data directory every command and the server use: |opt| (--data-dir)
 * if given, else $CAPSTAN_DATA_DIR, else CAPSTAN_STORE_DEFAULT_DIR. The
 * result is borrowed. */
const char *capstan_store_data_dir(const char *opt);

/* A transaction: the LMDB transaction plus the store it belongs to (the
 * named database handles). Fill it with capstan_store_begin; inside the
 * writer's fn it is given to you. Treat the fields as read-only. */
typedef struct capstan_txn {
  MDB_txn *mdb;
  struct pg_conn *pg; /* the PostgreSQL back end's transaction instead */
  capstan_store_t *store;
  bool write;
} capstan_txn_t;

/* ---- Environment ----------------------------------------------------- */

/* Flags for capstan_store_open. */
#define CAPSTAN_STORE_CREATE 1u  /* create |dir| (mode 0700) if it is missing */
#define CAPSTAN_STORE_MIGRATE 2u /* PostgreSQL: migrate an older schema */

/* The file in a data directory that puts its store in PostgreSQL: one
 * line "store = URL" (a libpq URI or key=value string). Without it the
 * store is LMDB's data.mdb in the directory. */
#define CAPSTAN_STORE_CONF "store.conf"
#define CAPSTAN_STORE_URL_MAX 1024

/* Opens (and with CAPSTAN_STORE_CREATE creates) the environment in |dir|.
 * Without CREATE a missing directory or environment gives CAPSTAN_ENOENT.
 * On success *out is owned by the caller: capstan_store_close. */
int capstan_store_open(const char *dir, unsigned flags, capstan_store_t **out);

/* As capstan_store_open; with CAPSTAN_STORE_CREATE and a directory that
 * has no store yet, |url| (when not NULL or empty; else $CAPSTAN_STORE if
 * set) puts the store in that PostgreSQL database: DIR/store.conf is
 * written (mode 0600: a URL may hold a password) and the database gets
 * capstan's schema, or is joined as it is when it holds a capstan store
 * already (several nodes share one); |url| "" creates LMDB whatever
 * $CAPSTAN_STORE says. A directory that has a store keeps
 * it: a different |url| is CAPSTAN_EEXIST (logged). */
int capstan_store_open_url(const char *dir, const char *url, unsigned flags, capstan_store_t **out);

/* "lmdb" or "postgresql". */
const char *capstan_store_backend(const capstan_store_t *store);
/* The PostgreSQL URL (borrowed), NULL for LMDB. */
const char *capstan_store_url(const capstan_store_t *store);

/* Closes the environment. Accepts NULL. The writer must have been stopped
 * and no transaction may be open. */
void capstan_store_close(capstan_store_t *store);

/* The id of the last committed write transaction, by any process. It grows
 * with every commit, so a change means someone wrote. */
uint64_t capstan_store_txnid(capstan_store_t *store);

/* Bytes of the map in use (last page number * page size). */
uint64_t capstan_store_size_bytes(capstan_store_t *store);

/* The map (the most the store can hold) starts at |size| bytes and the
 * server's writer grows it, doubling, up to |max| when it fills (a write
 * then fails with CAPSTAN_ENOSPC only at |max|). Never below what the
 * store holds already. Call before the writer starts, with no transaction
 * open. Without it the map is CAPSTAN_STORE_MAP_SIZE and does not grow. */
int capstan_store_set_map(capstan_store_t *store, size_t size, size_t max);
size_t capstan_store_map_size(capstan_store_t *store);
size_t capstan_store_map_max(capstan_store_t *store);

/* ---- Nodes: several servers on one store ------------------------------ */

/* A node whose heartbeat is older than this is dead: another node takes
 * over its work (the heartbeat is written every CAPSTAN_NODE_HEARTBEAT_MS). */
#define CAPSTAN_NODE_DEAD_SECONDS 10
#define CAPSTAN_NODE_HEARTBEAT_MS 2000
#define CAPSTAN_NODE_NAME_MAX 128

typedef struct {
  char name[CAPSTAN_NODE_NAME_MAX];
  char version[32];
  char detail[256]; /* what the node says of itself: its addresses */
  int pid;
  int64_t started_at;   /* unix seconds */
  double heartbeat_age; /* seconds since its last heartbeat, by the store's clock */
  bool alive;           /* heartbeat_age below CAPSTAN_NODE_DEAD_SECONDS */
  bool leader;          /* runs the once-only work (another node: as its heartbeat said) */
  bool self;            /* this process */
} capstan_store_node_t;

/* Names the server of this process |name| (unique among the nodes of the
 * store and the same across its restarts: the default is host:data
 * directory) with |detail|. On PostgreSQL its
 * row in the nodes table is written now and every heartbeat after, and it
 * competes for the once-only work (an advisory lock held by its listener
 * connection: when the node dies the database drops it and another node
 * takes it within a heartbeat). Devices it puts in progress carry its
 * name. On LMDB the node is alone and always the leader. */
int capstan_store_node_start(capstan_store_t *store, const char *name, const char *detail);
/* The name given to capstan_store_node_start, or NULL. */
const char *capstan_store_node_name(const capstan_store_t *store);
/* Whether this node runs the work that must happen once per store
 * (expiry checks, CA polling, audit retention, repairing what a dead node
 * left in progress). Always true on LMDB. */
bool capstan_store_leader(capstan_store_t *store);
/* Every node of the store, this one included (on LMDB, this one only).
 * *out is the caller's to free(). */
int capstan_store_nodes(capstan_store_t *store, capstan_store_node_t **out, size_t *n);
/* Inside |txn|: the names of the nodes alive now, other than this one
 * (empty on LMDB), sorted; free each and the array. */
int capstan_store_live_nodes(capstan_txn_t *txn, char ***names, size_t *n);
/* Whether the store is reachable (PostgreSQL: the last attempt to reach
 * the database succeeded; LMDB: always). */
bool capstan_store_reachable(capstan_store_t *store);

/* ---- Backup and restore ---------------------------------------------- */

/* Writes a consistent, compacted copy of |store| (one read transaction:
 * writers, the running server's included, go on meanwhile) to the file
 * |path|: through a temporary file beside it, created mode 0600 (the copy
 * holds the identities' private keys), fsynced, then renamed over |path|
 * and the directory fsynced. The file is an LMDB data file that
 * capstan_store_open_backup opens. *bytes (may be NULL) is its size. A
 * PostgreSQL store's backup is the same kind of file: its records, read
 * in one snapshot, in an LMDB store.
 * Errors: a negative errno (the temporary file is removed), or a store
 * error. */
int capstan_store_backup(capstan_store_t *store, const char *path, uint64_t *bytes);

/* Opens the backup file |path| read-only (nothing is written to it or
 * beside it). CAPSTAN_EINVAL when it is not an LMDB file holding capstan's
 * databases, CAPSTAN_ENOENT when it does not exist. Read transactions work
 * as on any store; close it with capstan_store_close. */
int capstan_store_open_backup(const char *path, capstan_store_t **out);

/* Makes the contents of |from| (a backup opened as above) the store of the
 * existing directory |dir|: a compacted copy to DIR/data.mdb as
 * capstan_store_backup writes it, replacing any store there, and LMDB's
 * lock file of the replaced store removed (a process that still has the old
 * store open keeps the old file, not a mix). The caller holds the
 * directory's restore lock (storage/lock.h), so no server runs on it.
 * A directory whose store is in PostgreSQL gets the backup's records in
 * place of every record there, in one transaction: stop every node of
 * that store first (the lock guards this directory only). */
int capstan_store_install(capstan_store_t *from, const char *dir);

/* ---- Transactions ----------------------------------------------------- */

/* Starts a read (write=false) or write transaction. Read transactions are
 * not tied to a thread (MDB_NOTLS) but must be used by one thread at a
 * time. A write transaction blocks while another process writes. */
int capstan_store_begin(capstan_store_t *store, bool write, capstan_txn_t *txn);
/* Commits (durably: fsync) and ends |txn|; on failure it is aborted. */
int capstan_store_commit(capstan_txn_t *txn);
/* Ends |txn| without writing. Safe on a zeroed or ended txn. */
void capstan_store_abort(capstan_txn_t *txn);

/* Runs fn inside one transaction: a read transaction for capstan_store_read,
 * a write transaction committed when fn returns 0 (aborted otherwise) for
 * capstan_store_write. Returns fn's error or the commit's. Without a
 * writer started, capstan_store_write grows a full map (up to its maximum,
 * capstan_store_set_map) and runs fn again: fn must be replayable, as the
 * writer's functions. CAPSTAN_ENOSPC: full at the maximum. */
typedef int (*capstan_store_txn_fn)(capstan_txn_t *txn, void *arg);
int capstan_store_read(capstan_store_t *store, capstan_store_txn_fn fn, void *arg);
int capstan_store_write(capstan_store_t *store, capstan_store_txn_fn fn, void *arg);

/* Writes the settings record again as it is: a write that changes
 * nothing, whose commit shows that the store takes writes. */
int capstan_store_touch(capstan_txn_t *txn);

/* Number of records in |db|. */
int capstan_store_count(capstan_txn_t *txn, capstan_db_t db, uint64_t *out);

/* ---- Group-commit writer (server) ------------------------------------ */

/* Runs on the writer thread inside the batch's write transaction. A
 * non-zero return drops only this request: the batch is run again without
 * it, so fn may be called more than once and must be replayable (read its
 * argument, write only through |txn|, no side effects outside the store).
 * Must not block on the loop thread. */
typedef int (*capstan_store_write_fn)(capstan_txn_t *txn, void *arg);
/* Called on the loop thread after the batch's commit: |status| is fn's
 * error, or the commit's error if the batch failed to commit, else 0 (the
 * changes are durable). */
typedef void (*capstan_store_done_fn)(void *arg, int status);

/* Starts the writer thread; done callbacks run on |loop|. Registers the
 * storage metrics. On PostgreSQL also starts the reader threads of
 * capstan_store_read_async and opens their connections (the connects
 * happen here, on the caller's thread). CAPSTAN_EINVAL if already
 * started. */
int capstan_store_writer_start(capstan_store_t *store, uv_loop_t *loop);
/* Queues fn. Call from the loop thread (or any thread). Returns an error
 * (and never calls done) when the writer is not running or allocation
 * fails; otherwise done is called exactly once, later. */
int capstan_store_submit(capstan_store_t *store, capstan_store_write_fn fn, void *arg,
                         capstan_store_done_fn done);
/* A record a write request reads, named when it is submitted. */
typedef struct capstan_store_key {
  capstan_db_t db;
  const void *key;
  size_t klen;
} capstan_store_key_t;
#define CAPSTAN_STORE_SUBMIT_KEYS_MAX 2
/* capstan_store_submit for a request that reads the records |keys| name
 * (at most CAPSTAN_STORE_SUBMIT_KEYS_MAX; the keys' bytes must stay valid
 * until done): on PostgreSQL the writer reads every record its batch names
 * in one query per table before running the batch, rather than in a round
 * trip per read inside the cluster's one write transaction. */
int capstan_store_submit_reading(capstan_store_t *store, capstan_store_write_fn fn, void *arg,
                                 capstan_store_done_fn done, const capstan_store_key_t *keys,
                                 size_t nkeys);
/* Reads for the loop thread. True when a read waits on the network (a
 * shared PostgreSQL store, with the writer started): the loop thread then
 * reads with capstan_store_read_async, not capstan_store_read. False on
 * LMDB, whose reads are lookups in mapped memory. */
bool capstan_store_reads_wait(const capstan_store_t *store);
/* Called on the loop thread with fn's status (or the read transaction's
 * error). */
typedef void (*capstan_store_read_done_fn)(void *arg, int status);
/* Runs fn in a read transaction on a reader thread: fn must only read
 * |arg| and the store. Returns an error (done never called) when there
 * are no readers or allocation fails; otherwise done is called exactly
 * once, later, at the latest by capstan_store_writer_stop. */
int capstan_store_read_async(capstan_store_t *store, capstan_store_txn_fn fn, void *arg,
                             capstan_store_read_done_fn done);
/* False during a storage outage: from the first batch that failed to
 * commit (or the first transaction refused as MDB_PANIC) until one commits
 * again some seconds after the last failure
 * (logged once each way: event=storage_unavailable, event=storage_recovered;
 * gauge capstan_storage_writable). Callers log their own failures quietly
 * meanwhile. True without a writer. */
bool capstan_store_available(capstan_store_t *store);
/* Batches that failed to commit since the writer started. */
uint64_t capstan_store_failed_batches(capstan_store_t *store);

/* Call on the loop thread. Ends the reader threads first (each queued
 * read runs; their done callbacks run here and may still submit writes),
 * then writes every queued request, calls every pending done callback (on
 * this thread, before returning), stops the thread and closes its libuv
 * handles: run the loop once more afterwards
 * (uv_run) so the handle's memory is released. No-op if not started. */
void capstan_store_writer_stop(capstan_store_t *store);

#endif
