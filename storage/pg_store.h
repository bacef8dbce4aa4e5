/* The PostgreSQL back end of the store (inside the storage layer only).
 *
 * The same named databases as LMDB, one table each (key k bytea primary
 * key, the packed record v bytea), with columns that let the database
 * hold the invariants itself: a device's status, a certificate's status
 * and 16-byte serial, a request's status, an audit event's device (which
 * also replaces LMDB's audit_device index). storage/pg_schema.c creates
 * and migrates them.
 *
 * Transactions keep LMDB's meaning, so the code above never knows which
 * back end it runs on:
 *  - a read transaction is a REPEATABLE READ READ ONLY snapshot;
 *  - a write transaction takes one advisory lock for its life: writers
 *    are serialised across every node and command, as LMDB serialises
 *    them across processes, so read-modify-write stays correct. The
 *    group-commit writer makes that one transaction per batch;
 *  - a commit is durable (synchronous_commit on) before it returns, and
 *    a transaction that wrote sends NOTIFY capstan_changes with it: every
 *    node's listener counts the change (capstan_store_txnid).
 * Connections come from a pool; one that fails is dropped, and while the
 * database is unreachable transactions fail fast (CAPSTAN_EIO) for a
 * second at a time instead of each waiting for a connect. */
#ifndef CAPSTAN_STORAGE_PG_STORE_H
#define CAPSTAN_STORAGE_PG_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "storage/pg_libpq.h"
#include "storage/records.h"
#include "storage/store.h"

typedef struct pg_store pg_store_t;
typedef struct pg_conn pg_conn_t;

/* The schema version this build writes (storage/pg_schema.c). */
#define CAPSTAN_PG_SCHEMA_VERSION 1

/* The channel every write transaction notifies. */
#define CAPSTAN_PG_CHANNEL "capstan_changes"

/* Advisory lock keys (the two-int form): the class is "caps". */
#define CAPSTAN_PG_LOCK_CLASS 0x63617073
#define CAPSTAN_PG_LOCK_WRITER 1 /* held by every write transaction */

/* Connects to |url| (a libpq URI or key=value string) and checks the
 * schema: with |create| a database without one gets it; a schema of an
 * older version is CAPSTAN_EINVAL with a hint to run `capstan store
 * migrate` (|migrate| true migrates it instead). */
int capstan_pg_open(const char *url, bool create, bool migrate, pg_store_t **out);
void capstan_pg_close(pg_store_t *pg);

/* The libpq URL as given (borrowed). */
const char *capstan_pg_url(const pg_store_t *pg);

/* Opens connections into the pool until it holds |n| (at most its
 * limit): a server's threads find them ready, and the descriptors it holds
 * stay what they were at start. A connect that fails is reported and ends
 * the filling. */
void capstan_pg_pool_fill(pg_store_t *pg, unsigned n);

/* Transactions: begin fills *out with a pooled connection inside BEGIN. */
int capstan_pg_begin(pg_store_t *pg, bool write, pg_conn_t **out);
int capstan_pg_commit(pg_store_t *pg, pg_conn_t *c);
void capstan_pg_abort(pg_store_t *pg, pg_conn_t *c);

/* Changes seen by this process: its own commits that wrote, and every
 * NOTIFY the listener received (and one each time it reconnects, as it may
 * have missed some). */
uint64_t capstan_pg_changes(pg_store_t *pg);
/* Starts the listener thread (the server). Idempotent. */
int capstan_pg_listen_start(pg_store_t *pg);
/* The database's size in bytes, 0 when it cannot be read. */
uint64_t capstan_pg_size_bytes(pg_store_t *pg);
/* Whether the last attempt to reach the database failed. */
bool capstan_pg_down(pg_store_t *pg);

/* Nodes (storage/store.h): the heartbeat and the leader lock are the
 * listener thread's. */
#define CAPSTAN_PG_LOCK_LEADER 2
int capstan_pg_node_start(pg_store_t *pg, const char *name, const char *detail);
bool capstan_pg_leader(pg_store_t *pg);
int capstan_pg_nodes(pg_store_t *pg, const char *self, capstan_store_node_t **out, size_t *n);
int capstan_pg_live_nodes(pg_conn_t *c, const char *self, char ***names, size_t *n);

/* Reads the answers of the writes sent so far in |c|'s write transaction
 * (they are sent without waiting): the first failure, or 0. */
int capstan_pg_settle(pg_conn_t *c);

/* Records (storage/records.h semantics). */
int capstan_pg_get(pg_conn_t *c, capstan_db_t db, const void *key, size_t klen,
                   const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out);
int capstan_pg_put(pg_conn_t *c, capstan_db_t db, const void *key, size_t klen,
                   const ProtobufCMessage *msg);
int capstan_pg_del(pg_conn_t *c, capstan_db_t db, const void *key, size_t klen);
int capstan_pg_iterate_after(pg_conn_t *c, capstan_db_t db, const void *after, size_t alen,
                             const ProtobufCMessageDescriptor *desc, capstan_store_iter_fn fn,
                             void *arg);
int capstan_pg_count(pg_conn_t *c, capstan_db_t db, uint64_t *out);
/* The devices whose status is IN_PROGRESS, by the partial index: fn gets
 * each unpacked Device (valid during the call); returns as iterate. */
int capstan_pg_devices_in_progress(pg_conn_t *c, int (*fn)(const void *msg, void *arg), void *arg);
int capstan_pg_iterate_raw(pg_conn_t *c, capstan_db_t db, capstan_store_raw_fn fn, void *arg);
/* Deletes every record of every table (a restore replaces the store);
 * the nodes and the schema stay. */
int capstan_pg_clear(pg_conn_t *c);
/* Reads the records of |db| named in |keys| (others are skipped) in one
 * query, for the rest of this write transaction (see pg_conn's |ahead|). */
int capstan_pg_read_ahead(pg_conn_t *c, capstan_db_t db, const capstan_store_key_t *keys, size_t n);

/* The audit log (storage/audit.c keeps the rules; these are its reads). */
int capstan_pg_audit_last(pg_conn_t *c, uint64_t *last, bool *any);
int capstan_pg_audit_key_taken(pg_conn_t *c, uint64_t key, bool *taken);
/* Events in key order from |from| on, all or |device|'s: fn(key, event). */
typedef int (*capstan_pg_audit_fn)(uint64_t key, const Capstan__AuditEvent *e, void *arg);
int capstan_pg_audit_scan(pg_conn_t *c, const char *device, uint64_t from, capstan_pg_audit_fn fn,
                          void *arg);
/* |device|'s events before |before|, newest first, at most |max|. */
int capstan_pg_audit_scan_back(pg_conn_t *c, const char *device, uint64_t before, int max,
                               capstan_pg_audit_fn fn, void *arg);
/* Removes up to |limit| events older than |before|; *more when some remain. */
int capstan_pg_audit_prune(pg_conn_t *c, uint64_t before, size_t limit, size_t *removed,
                           bool *more);

/* ---- Inside the back end (pg_store.c, pg_schema.c, pg_cluster.c) ---- */

const capstan_libpq_t *capstan_pg_lib(const pg_store_t *pg);
PGconn *capstan_pg_raw(pg_conn_t *c);
/* Runs |sql| (no parameters); CAPSTAN_EIO (logged under |op|) on failure. */
int capstan_pg_exec(pg_conn_t *c, const char *sql, const char *op);
/* A new connection to |pg|'s database outside the pool (NULL: logged). */
PGconn *capstan_pg_connect(pg_store_t *pg);
/* Checks the schema inside a transaction of |c|: 0 when current, 1 when it
 * created or migrated it (|create|, |migrate|: allowed to), CAPSTAN_EBUSY
 * when it would need to and may not (the caller retries in a write
 * transaction; |write|: it is one), CAPSTAN_ENOENT when there is none and |create| is false,
 * CAPSTAN_EINVAL for a schema this build cannot use (logged). */
int capstan_pg_schema_check(pg_conn_t *c, bool write, bool create, bool migrate);
const capstan_libpq_t *capstan_pg_lib_of(pg_conn_t *c);

#endif
