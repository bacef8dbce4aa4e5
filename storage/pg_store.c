/* The PostgreSQL back end: connections, transactions, records and the
 * audit log's reads (storage/pg_store.h). */
#define _GNU_SOURCE
#include "storage/pg_store.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "storage/internal.h"

/* Idle connections kept for reuse; more are opened when threads need them
 * at once and closed when they come back past this. */
#define POOL_IDLE_MAX 16
/* After a failed connect, transactions fail at once for this long rather
 * than each waiting for the database (the loop thread reads too). */
#define DOWN_RETRY_SECONDS 1.0
/* Statements prepared per connection (by their text's hash): the
 * extended protocol's unnamed statement is parsed and planned at every
 * use, which cost PostgreSQL 3-5 times the statement itself (measured with
 * pgbench: 201 us for a read transaction unprepared, 45 us prepared). */
#define STMTS_MAX 128
/* Rows fetched per query when iterating (keyset paging: the callback may
 * write between pages, in the same transaction). */
#define PAGE_ROWS 256
/* How often the listener reads the database's size (a gauge). */
#define SIZE_REFRESH_SECONDS 10
/* Answers owed before a write waits for them (the server's answers must
 * not fill the socket while this side only sends). */
#define INFLIGHT_MAX 256

/* A record read ahead for a write transaction (capstan_pg_read_ahead). */
typedef struct ahead {
  capstan_db_t db;
  uint8_t *key;
  size_t klen;
  uint8_t *val; /* packed (at least a byte allocated); NULL: no such record */
  size_t vlen;
  struct ahead *next;
} ahead_t;

struct pg_conn {
  PGconn *c;
  pg_store_t *pg;
  pg_conn_t *next;
  bool bad;   /* failed: closed instead of pooled */
  bool write; /* inside a write transaction */
  bool dirty; /* wrote something: NOTIFY at commit */
  /* A read transaction's BEGIN is sent with its first statement, in one
   * round trip (pipeline mode); until then nothing was sent. */
  bool need_begin;
  /* A read transaction's ROLLBACK was sent and its answer not yet read:
   * the next user of the connection reads it first (the reader does not
   * wait a round trip for it). */
  bool pending;
  uint64_t stmts[STMTS_MAX]; /* hashes of the statements prepared on |c| */
  int nstmts;
  /* A write transaction sends its writes without waiting for their
   * answers (pipeline mode): |inflight| answers are owed, read before the
   * next statement whose answer is needed, at the latest at commit. A
   * write's error is then seen there (capstan_pg_settle says which). */
  bool piped;
  int inflight;
  /* A statement of this write transaction failed: PostgreSQL has aborted
   * the transaction (unlike LMDB, where a failed read leaves it usable),
   * so it can only roll back, whatever the caller does next. */
  int failed;
  /* The audit log's last key, known in this write transaction (writers are
   * serialised: no other appends meanwhile). */
  bool audit_known;
  uint64_t audit_last;
  /* Records this write transaction read ahead, kept current by its own
   * puts and deletes: a get of one needs no round trip. Nothing else
   * changes them meanwhile: writers are serialised by the advisory lock. */
  ahead_t *ahead;
};

struct pg_store {
  const capstan_libpq_t *pq;
  char *url;
  pthread_mutex_t lock;
  pg_conn_t *idle;
  size_t idle_count;
  double down_until; /* under lock */
  bool down_said;    /* under lock: the outage is logged */
  _Atomic bool down; /* the last attempt to reach the database failed */
  _Atomic uint64_t changes;
  _Atomic uint64_t size_bytes; /* the database's size, as the listener last read it */
  pthread_t listener;
  _Atomic bool listening;
  _Atomic bool stopping;
  /* The node (capstan_pg_node_start); under lock. */
  char *node, *node_detail;
  _Atomic bool leader; /* the listener's connection holds the leader lock */
  bool beat_failed;    /* the listener thread's: the last heartbeat failed (logged) */
  /* The nodes table as the listener last read it (under lock): the status
   * page reads this copy, not the database, from the loop thread. */
  capstan_store_node_t *nodes;
  size_t nnodes;
  double nodes_at; /* capstan_now_seconds() of that read */
};

const capstan_libpq_t *capstan_pg_lib(const pg_store_t *pg) {
  return pg->pq;
}

const capstan_libpq_t *capstan_pg_lib_of(pg_conn_t *c) {
  return c->pg->pq;
}

PGconn *capstan_pg_raw(pg_conn_t *c) {
  return c->c;
}

const char *capstan_pg_url(const pg_store_t *pg) {
  return pg->url;
}

uint64_t capstan_pg_changes(pg_store_t *pg) {
  return atomic_load(&pg->changes);
}

bool capstan_pg_down(pg_store_t *pg) {
  return atomic_load(&pg->down);
}

/* ---- Errors ------------------------------------------------------------- */

/* One line of libpq's message (they end with a newline, some span two). */
static void one_line(const char *in, char *out, size_t len) {
  snprintf(out, len, "%s", in != NULL && in[0] != '\0' ? in : "unknown error");
  for (char *p = out; *p != '\0'; p++) {
    if (*p == '"') *p = '\'';
    if (*p == '\n' || *p == '\t') *p = (p[1] == '\0') ? '\0' : ' ';
  }
}

/* Maps a failed result (or none) to our codes; logs and counts under |op|.
 * A broken connection is marked so that it is not pooled again. */
static int fail(pg_store_t *pg, pg_conn_t *c, PGresult *r, const char *op) {
  const capstan_libpq_t *pq = pg->pq;
  const char *state = r != NULL ? pq->result_error_field(r, PG_DIAG_SQLSTATE) : NULL;
  char msg[300];
  one_line(r != NULL ? pq->result_error_message(r) : pq->error_message(c->c), msg, sizeof(msg));
  if (c->c == NULL || pq->status(c->c) != CONNECTION_OK) c->bad = true;
  int err = CAPSTAN_EIO;
  if (state != NULL && strncmp(state, "23", 2) == 0) err = CAPSTAN_EINVAL; /* a constraint */
  capstan_log(capstan_store_errors_quiet() ? CAPSTAN_LOG_DEBUG : CAPSTAN_LOG_ERROR,
              "event=storage_error op=%s backend=postgresql sqlstate=%s error=\"%s\"", op,
              state != NULL ? state : "none", msg);
  capstan_store_count_error(op);
  if (r != NULL) pq->clear(r);
  if (c->write && c->failed == 0) c->failed = err;
  return err;
}

/* ---- Connections -------------------------------------------------------- */

/* libpq's notices and warnings (a server that shuts down says so) go to
 * the log as one line, not to stderr. */
static void on_notice(void *arg, const char *message) {
  char msg[300];
  one_line(message, msg, sizeof(msg));
  LOG_WARN("event=postgres_notice message=\"%s\"", msg);
}

PGconn *capstan_pg_connect(pg_store_t *pg) {
  /* Defaults first: the URL's own settings (dbname is expanded in place)
   * override them. Bounded so that a database that is gone is noticed:
   * connect within 5 s, a peer that stops answering within 10 s. */
  const char *keys[] = {"connect_timeout",
                        "keepalives_idle",
                        "keepalives_interval",
                        "keepalives_count",
                        "tcp_user_timeout",
                        "application_name",
                        "dbname",
                        NULL};
  const char *vals[] = {"5", "10", "5", "3", "10000", "capstan", pg->url, NULL};
  capstan_libpq_thread();
  /* One connect at a time: libpq's libc keeps the resolver's state for the
   * threads its own libc started, and ours were not (unsure whether it is
   * shared; connects are rare, so they are serialised). */
  static pthread_mutex_t connecting = PTHREAD_MUTEX_INITIALIZER;
  pthread_mutex_lock(&connecting);
  PGconn *c = pg->pq->connectdb_params(keys, vals, 1);
  pthread_mutex_unlock(&connecting);
  if (c == NULL) return NULL;
  pg->pq->set_notice_processor(c, on_notice, NULL);
  if (pg->pq->status(c) != CONNECTION_OK) return c; /* the caller reports it */
  capstan_libpq_check_keys();
  /* Durable before a phone sees anything, whatever the server's default.
   * The server side notices a node whose host died (keepalives, user
   * timeout) and ends its session, so that its leader lock goes within
   * seconds, not the hours of the kernel's defaults. */
  PGresult *r = pg->pq->exec(c,
                             "SET synchronous_commit = on; SET tcp_keepalives_idle = 10; "
                             "SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3; "
                             "SET tcp_user_timeout = 10000; SET statement_timeout = 30000");
  pg->pq->clear(r);
  return c;
}

/* Notes that the database answered (again). */
static void note_up(pg_store_t *pg) {
  if (!atomic_load(&pg->down)) return;
  pthread_mutex_lock(&pg->lock);
  bool said = pg->down_said;
  pg->down_said = false;
  pg->down_until = 0;
  atomic_store(&pg->down, false);
  pthread_mutex_unlock(&pg->lock);
  if (said) LOG_WARN("event=postgres_reachable");
}

static void conn_free(pg_store_t *pg, pg_conn_t *c);

/* A connect failed (or the listener's connection broke): the database is
 * unreachable. The pooled connections go with it: a thread that took one
 * would wait for its dead socket (tcp_user_timeout) instead of failing
 * at once. */
static void note_down(pg_store_t *pg, const char *why) {
  pthread_mutex_lock(&pg->lock);
  pg->down_until = capstan_now_seconds() + DOWN_RETRY_SECONDS;
  bool say = !pg->down_said;
  pg->down_said = true;
  atomic_store(&pg->down, true);
  pg_conn_t *idle = pg->idle;
  pg->idle = NULL;
  pg->idle_count = 0;
  pthread_mutex_unlock(&pg->lock);
  while (idle != NULL) {
    pg_conn_t *next = idle->next;
    conn_free(pg, idle);
    idle = next;
  }
  if (say) {
    LOG_ERROR(
        "event=postgres_unreachable error=\"%s\" hint=\"new operations are told to retry "
        "later and files are served from what this node has; it reconnects by itself\"",
        why);
  }
}

static void ahead_free(pg_conn_t *c);

static void conn_free(pg_store_t *pg, pg_conn_t *c) {
  if (c == NULL) return;
  ahead_free(c);
  if (c->c != NULL) pg->pq->finish(c->c);
  free(c);
}

static pg_conn_t *conn_new(pg_store_t *pg);

/* A pooled connection, or a new one; NULL (reported) when none. */
static pg_conn_t *conn_get(pg_store_t *pg, bool *pooled) {
  pthread_mutex_lock(&pg->lock);
  pg_conn_t *c = pg->idle;
  if (c != NULL) {
    pg->idle = c->next;
    pg->idle_count--;
  }
  /* While the database is unreachable: in the server the listener thread
   * reconnects (and ends the outage), so no other thread waits for a
   * connect (the loop thread reads: a connect to a host that drops
   * packets takes connect_timeout); a command tries again after a second. */
  bool wait = c == NULL &&
              (pg->listening ? atomic_load(&pg->down) : capstan_now_seconds() < pg->down_until);
  pthread_mutex_unlock(&pg->lock);
  *pooled = c != NULL;
  if (c != NULL) return c;
  if (wait) {
    capstan_store_count_error("connect");
    return NULL;
  }
  return conn_new(pg);
}

/* A new connection; NULL (reported) when none. */
static pg_conn_t *conn_new(pg_store_t *pg) {
  pg_conn_t *c = calloc(1, sizeof(*c));
  if (c == NULL) return NULL;
  c->pg = pg;
  c->c = capstan_pg_connect(pg);
  if (c->c == NULL || pg->pq->status(c->c) != CONNECTION_OK) {
    char msg[300];
    one_line(c->c != NULL ? pg->pq->error_message(c->c) : "out of memory", msg, sizeof(msg));
    capstan_store_count_error("connect");
    note_down(pg, msg);
    conn_free(pg, c);
    return NULL;
  }
  note_up(pg);
  return c;
}

/* Replaces |a|'s record with the |vlen| bytes at |val| (taken; at least
 * one byte allocated; NULL: there is no record). The old copy is wiped:
 * device records hold authentication strings. */
static void ahead_set(ahead_t *a, uint8_t *val, size_t vlen) {
  if (a->val != NULL) explicit_bzero(a->val, a->vlen);
  free(a->val);
  a->val = val;
  a->vlen = val != NULL ? vlen : 0;
}

static void ahead_free(pg_conn_t *c) {
  while (c->ahead != NULL) {
    ahead_t *next = c->ahead->next;
    free(c->ahead->key);
    ahead_set(c->ahead, NULL, 0);
    free(c->ahead);
    c->ahead = next;
  }
}

static ahead_t *ahead_find(pg_conn_t *c, capstan_db_t db, const void *key, size_t klen) {
  for (ahead_t *a = c->ahead; a != NULL; a = a->next) {
    if (a->db == db && a->klen == klen && memcmp(a->key, key, klen) == 0) return a;
  }
  return NULL;
}

static void conn_put(pg_store_t *pg, pg_conn_t *c) {
  ahead_free(c);
  if (c->bad || (!c->pending && pg->pq->transaction_status(c->c) != PQTRANS_IDLE)) {
    conn_free(pg, c);
    return;
  }
  c->next = NULL;
  c->write = c->dirty = c->need_begin = c->piped = c->audit_known = false;
  c->inflight = c->failed = 0;
  pthread_mutex_lock(&pg->lock);
  if (pg->idle_count < POOL_IDLE_MAX) {
    c->next = pg->idle;
    pg->idle = c;
    pg->idle_count++;
    c = NULL;
  }
  pthread_mutex_unlock(&pg->lock);
  conn_free(pg, c);
}

void capstan_pg_pool_fill(pg_store_t *pg, unsigned n) {
  if (n > POOL_IDLE_MAX) n = POOL_IDLE_MAX;
  capstan_libpq_thread();
  for (;;) {
    pthread_mutex_lock(&pg->lock);
    bool full = pg->idle_count >= n;
    pthread_mutex_unlock(&pg->lock);
    if (full) return;
    pg_conn_t *c = conn_new(pg);
    if (c == NULL) return; /* reported; the pool fills as it is used */
    conn_put(pg, c);
  }
}

/* ---- Transactions ------------------------------------------------------- */

/* Reads the answer of a ROLLBACK sent earlier (see pending); false when
 * the connection is no longer usable. */
static bool drain(pg_store_t *pg, pg_conn_t *c) {
  if (!c->pending) return true;
  c->pending = false;
  bool ok = true;
  PGresult *r;
  while ((r = pg->pq->get_result(c->c)) != NULL) {
    if (pg->pq->result_status(r) != PGRES_COMMAND_OK) ok = false;
    pg->pq->clear(r);
  }
  return ok && pg->pq->status(c->c) == CONNECTION_OK &&
         pg->pq->transaction_status(c->c) == PQTRANS_IDLE;
}

int capstan_pg_begin(pg_store_t *pg, bool write, pg_conn_t **out) {
  *out = NULL;
  capstan_libpq_thread(); /* a pooled connection may be used by a new thread */
  /* A pooled connection may have died with the database (a restart): drop
   * it and take the next, up to a fresh one. */
  for (int attempt = 0; attempt <= POOL_IDLE_MAX + 1; attempt++) {
    bool pooled;
    pg_conn_t *c = conn_get(pg, &pooled);
    if (c == NULL) return CAPSTAN_EIO;
    if (!drain(pg, c)) {
      conn_free(pg, c);
      continue;
    }
    c->write = write;
    c->dirty = false;
    if (!write) {
      /* Sent with the first statement (begin_with). */
      c->need_begin = true;
      *out = c;
      return 0;
    }
    PGresult *r = pg->pq->exec(
        c->c,
        "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL statement_timeout = 0; SELECT "
        "pg_advisory_xact_lock(1667330163, 1)");
    ExecStatusType st = r != NULL ? pg->pq->result_status(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
      pg->pq->clear(r);
      *out = c;
      return 0;
    }
    if (pooled && pg->pq->status(c->c) != CONNECTION_OK) {
      if (r != NULL) pg->pq->clear(r);
      conn_free(pg, c);
      continue;
    }
    int err = fail(pg, c, r, "begin");
    conn_free(pg, c);
    return err;
  }
  return CAPSTAN_EIO;
}

#define READ_BEGIN "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

/* The name of |sql| prepared on |c| (its hash), preparing it on first
 * use; false (c->bad set when the connection broke) on failure. A
 * statement that cannot be cached (the cache full) is prepared under the
 * unnamed name, as libpq's exec_params would. Returns 0 or the error
 * (logged; c->bad when the connection broke). */
static uint64_t stmt_hash(const char *sql) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (const char *p = sql; *p != '\0'; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
  return h;
}

/* Whether |sql| is prepared on |c| (its name in |name|). */
static bool is_prepared(const pg_conn_t *c, const char *sql, char name[24]) {
  uint64_t h = stmt_hash(sql);
  for (int i = 0; i < c->nstmts; i++) {
    if (c->stmts[i] == h) {
      snprintf(name, 24, "c%016llx", (unsigned long long)h);
      return true;
    }
  }
  return false;
}

static int prepared(pg_conn_t *c, const char *sql, int n, char name[24]) {
  if (is_prepared(c, sql, name)) return 0;
  uint64_t h = stmt_hash(sql);
  bool keep = c->nstmts < STMTS_MAX;
  if (keep) {
    snprintf(name, 24, "c%016llx", (unsigned long long)h);
  } else {
    name[0] = '\0';
  }
  const capstan_libpq_t *pq = c->pg->pq;
  PGresult *r = pq->prepare(c->c, name, sql, n, NULL);
  if (r == NULL || pq->result_status(r) != PGRES_COMMAND_OK) return fail(c->pg, c, r, "prepare");
  pq->clear(r);
  if (keep) c->stmts[c->nstmts++] = h;
  return 0;
}

/* ---- A write transaction's pipeline -------------------------------------- */

/* Reads the answers owed for the writes sent so far, asking the server for
 * them first when |request|. Returns the first error (logged) or 0. */
static int collect(pg_conn_t *c, bool request) {
  const capstan_libpq_t *pq = c->pg->pq;
  if (c->inflight == 0) return 0;
  if (request && (!pq->send_flush_request(c->c) || pq->flush(c->c) != 0)) {
    c->inflight = 0;
    c->bad = true;
    return fail(c->pg, c, NULL, "put");
  }
  int err = 0;
  while (c->inflight > 0) {
    PGresult *r = pq->get_result(c->c);
    if (r == NULL) {
      c->bad = true;
      if (err == 0) err = fail(c->pg, c, NULL, "put");
      break;
    }
    ExecStatusType st = pq->result_status(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || err != 0) {
      pq->clear(r); /* after the first error the rest are "aborted" */
    } else {
      err = fail(c->pg, c, r, "put");
    }
    if ((r = pq->get_result(c->c)) != NULL) { /* the NULL that ends each answer */
      pq->clear(r);
      c->bad = true;
      if (err == 0) err = CAPSTAN_EIO;
      break;
    }
    c->inflight--;
  }
  c->inflight = 0;
  return err;
}

/* Leaves pipeline mode after a failure or to abort: a sync ends the
 * pipeline's aborted state, every answer owed is read and dropped. */
static void pipe_reset(pg_conn_t *c) {
  const capstan_libpq_t *pq = c->pg->pq;
  if (!c->piped) return;
  c->piped = false;
  if (c->bad || !pq->pipeline_sync(c->c)) {
    c->bad = true;
    return;
  }
  bool synced = false;
  for (int i = 0; i < 2 * c->inflight + 8 && !synced; i++) {
    PGresult *r = pq->get_result(c->c);
    if (r == NULL) continue;
    synced = pq->result_status(r) == PGRES_PIPELINE_SYNC;
    pq->clear(r);
  }
  c->inflight = 0;
  if (!synced || !pq->exit_pipeline(c->c)) c->bad = true;
}

/* Leaves pipeline mode with every answer read: for statements that need
 * their answer at once (PQexec, PQprepare). Returns a write's error. */
static int unpipe(pg_conn_t *c) {
  if (!c->piped) return 0;
  int err = collect(c, true);
  if (err != 0) {
    pipe_reset(c);
    return err;
  }
  c->piped = false;
  if (!c->pg->pq->exit_pipeline(c->c)) {
    c->bad = true;
    return fail(c->pg, c, NULL, "put");
  }
  return 0;
}

/* Sends a write of a write transaction without waiting for its answer. */
static int send_write(pg_conn_t *c, const char *sql, int n, const char *const *vals,
                      const int *lens) {
  const capstan_libpq_t *pq = c->pg->pq;
  static const int formats[4] = {1, 1, 1, 1};
  char name[24];
  if (!is_prepared(c, sql, name)) {
    int err = unpipe(c);
    if (err == 0) err = prepared(c, sql, n, name);
    if (err != 0) return err;
  }
  if (!c->piped) {
    if (!pq->enter_pipeline(c->c)) {
      c->bad = true;
      return fail(c->pg, c, NULL, "put");
    }
    c->piped = true;
  }
  if (!pq->send_query_prepared(c->c, name, n, vals, lens, formats, 1)) {
    c->bad = true;
    return fail(c->pg, c, NULL, "put");
  }
  c->inflight++;
  c->dirty = true;
  return c->inflight >= INFLIGHT_MAX ? collect(c, true) : 0;
}

/* A read (or a write whose answer is needed) inside a piped write
 * transaction: sent behind the writes, one round trip for all. */
static PGresult *piped_read(pg_conn_t *c, const char *name, int n, const char *const *vals,
                            const int *lens, const int *formats, int *err) {
  const capstan_libpq_t *pq = c->pg->pq;
  if (!pq->send_query_prepared(c->c, name, n, vals, lens, formats, 1) ||
      !pq->send_flush_request(c->c) || pq->flush(c->c) != 0) {
    c->bad = true;
    *err = fail(c->pg, c, NULL, "get");
    return NULL;
  }
  *err = collect(c, false);
  PGresult *r = pq->get_result(c->c);
  PGresult *end = r != NULL ? pq->get_result(c->c) : NULL;
  if (r == NULL || end != NULL) {
    if (end != NULL) pq->clear(end);
    if (r != NULL) pq->clear(r);
    c->bad = true;
    if (*err == 0) *err = fail(c->pg, c, NULL, "get");
    return NULL;
  }
  if (*err != 0) {
    /* An earlier write failed: the pipeline discards everything until a
     * sync, so end it now (the transaction can only roll back). */
    pq->clear(r);
    pipe_reset(c);
    return NULL;
  }
  return r;
}

int capstan_pg_settle(pg_conn_t *c) {
  int err = c->piped ? collect(c, true) : 0;
  if (err != 0) pipe_reset(c);
  return c->failed != 0 ? c->failed : err;
}

#define READ_BEGIN "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

/* A read transaction's BEGIN and its first statement |name| (prepared) in
 * one round trip (pipeline mode). Returns the statement's result (any
 * status), or NULL when the exchange failed (the connection is then bad). */
static PGresult *begin_with(pg_conn_t *c, const char *name, int n, const char *const *vals,
                            const int *lens, const int *formats, int result_format) {
  const capstan_libpq_t *pq = c->pg->pq;
  char begin[24];
  if (prepared(c, READ_BEGIN, 0, begin) != 0) return NULL;
  c->need_begin = false;
  if (!pq->enter_pipeline(c->c)) return NULL;
  PGresult *out = NULL;
  bool ok = pq->send_query_prepared(c->c, begin, 0, NULL, NULL, NULL, 0) &&
            pq->send_query_prepared(c->c, name, n, vals, lens, formats, result_format) &&
            pq->pipeline_sync(c->c);
  /* Results: BEGIN's, NULL, the statement's, NULL, then the sync. */
  for (int step = 0; ok && step < 3; step++) {
    PGresult *r = pq->get_result(c->c);
    if (r == NULL) {
      ok = false;
      break;
    }
    ExecStatusType st = pq->result_status(r);
    if (step == 0) {
      ok = st == PGRES_COMMAND_OK;
      pq->clear(r);
    } else if (step == 1) {
      out = r;
    } else {
      ok = st == PGRES_PIPELINE_SYNC;
      pq->clear(r);
      break;
    }
    if (step < 2 && (r = pq->get_result(c->c)) != NULL) { /* the NULL after each */
      pq->clear(r);
      ok = false;
    }
  }
  if (!ok || !pq->exit_pipeline(c->c)) {
    if (out != NULL) pq->clear(out);
    c->bad = true;
    return NULL;
  }
  return out;
}

/* For the statements sent with PQexec: the read transaction's BEGIN first. */
static int ensure_begun(pg_conn_t *c) {
  if (!c->need_begin) return 0;
  c->need_begin = false;
  PGresult *r = c->pg->pq->exec(c->c, READ_BEGIN);
  if (r != NULL && c->pg->pq->result_status(r) == PGRES_COMMAND_OK) {
    c->pg->pq->clear(r);
    return 0;
  }
  return fail(c->pg, c, r, "begin");
}

/* Ends a read transaction: nothing to send when no statement ran, else a
 * ROLLBACK whose answer the connection's next user reads. */
static void end_read(pg_store_t *pg, pg_conn_t *c) {
  if (!c->bad && !c->need_begin) {
    if (pg->pq->send_query(c->c, "ROLLBACK")) {
      c->pending = true;
    } else {
      c->bad = true;
    }
  }
  conn_put(pg, c);
}

int capstan_pg_commit(pg_store_t *pg, pg_conn_t *c) {
  if (!c->write) {
    end_read(pg, c);
    return 0;
  }
  /* The writes' answers first: one that failed fails the commit, as does
   * any earlier failure in the transaction. */
  int err = unpipe(c);
  if (err == 0) err = c->failed;
  if (err != 0) {
    capstan_pg_abort(pg, c);
    return err;
  }
  /* A transaction that wrote tells every node, in the same commit. */
  const char *sql = c->write && c->dirty ? "NOTIFY " CAPSTAN_PG_CHANNEL "; COMMIT" : "COMMIT";
  PGresult *r = pg->pq->exec(c->c, sql);
  if (r == NULL || pg->pq->result_status(r) != PGRES_COMMAND_OK) {
    /* A COMMIT that failed, or whose answer was lost with the connection:
     * the outcome is unknown, and the caller treats it as not written. */
    err = fail(pg, c, r, "commit");
  } else if (strcmp(pg->pq->cmd_status(r), "COMMIT") != 0) {
    /* PostgreSQL answers COMMIT of an aborted transaction with ROLLBACK. */
    LOG_ERROR(
        "event=storage_error op=commit backend=postgresql error=\"the transaction was "
        "rolled back (%s)\"",
        pg->pq->cmd_status(r));
    capstan_store_count_error("commit");
    pg->pq->clear(r);
    err = CAPSTAN_EIO;
  } else {
    pg->pq->clear(r);
    if (c->dirty) atomic_fetch_add(&pg->changes, 1);
  }
  conn_put(pg, c);
  return err;
}

void capstan_pg_abort(pg_store_t *pg, pg_conn_t *c) {
  if (c == NULL) return;
  if (!c->write) {
    end_read(pg, c);
    return;
  }
  pipe_reset(c);
  if (!c->bad) {
    PGresult *r = pg->pq->exec(c->c, "ROLLBACK");
    if (r == NULL || pg->pq->result_status(r) != PGRES_COMMAND_OK) c->bad = true;
    if (r != NULL) pg->pq->clear(r);
  }
  conn_put(pg, c);
}

/* ---- Queries ------------------------------------------------------------ */

/* Runs |sql| with up to 4 binary parameters; results in binary. Returns the
 * result (PGRES_TUPLES_OK or COMMAND_OK) or NULL after fail(). */
static PGresult *query(pg_conn_t *c, const char *sql, int n, const void *const *vals,
                       const int *lens, const char *op, int *err) {
  pg_store_t *pg = c->pg;
  const int formats[4] = {1, 1, 1, 1};
  PGresult *r = NULL;
  char name[24];
  bool fresh_try = c->need_begin;
  int perr = 0;
  if (c->piped && is_prepared(c, sql, name)) {
    /* Behind the writes in flight, one round trip for all. */
    r = piped_read(c, name, n, (const char *const *)vals, lens, formats, &perr);
    if (r == NULL) {
      *err = perr; /* logged */
      return NULL;
    }
  } else {
    perr = unpipe(c);
    if (perr == 0) perr = prepared(c, sql, n, name);
    if (perr == 0) {
      r = c->need_begin
              ? begin_with(c, name, n, (const char *const *)vals, lens, formats, 1)
              : pg->pq->exec_prepared(c->c, name, n, (const char *const *)vals, lens, formats, 1);
    }
  }
  if (r == NULL && c->bad && fresh_try && !atomic_load(&pg->down)) {
    /* A pooled connection the database dropped (a restart): nothing of
     * the transaction ran yet, so it starts again on a new one. */
    PGconn *fresh = capstan_pg_connect(pg);
    if (fresh != NULL && pg->pq->status(fresh) == CONNECTION_OK) {
      pg->pq->finish(c->c);
      c->c = fresh;
      c->bad = false;
      c->need_begin = true;
      c->nstmts = 0;
      perr = prepared(c, sql, n, name);
      if (perr == 0) r = begin_with(c, name, n, (const char *const *)vals, lens, formats, 1);
    } else if (fresh != NULL) {
      pg->pq->finish(fresh);
    }
  }
  if (perr != 0) {
    /* Reported by prepared(). */
    *err = perr;
    return NULL;
  }
  ExecStatusType st = r != NULL ? pg->pq->result_status(r) : PGRES_FATAL_ERROR;
  if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
    /* The database answers: an outage seen on another connection is over
     * (the pool may never need a new connection to find out). */
    note_up(pg);
    *err = 0;
    return r;
  }
  *err = fail(pg, c, r, op);
  return NULL;
}

int capstan_pg_exec(pg_conn_t *c, const char *sql, const char *op) {
  pg_store_t *pg = c->pg;
  int err = unpipe(c);
  if (err == 0) err = ensure_begun(c);
  if (err != 0) return err;
  PGresult *r = pg->pq->exec(c->c, sql);
  ExecStatusType st = r != NULL ? pg->pq->result_status(r) : PGRES_FATAL_ERROR;
  if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
    pg->pq->clear(r);
    return 0;
  }
  return fail(pg, c, r, op);
}

static uint64_t rd_be64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
  return v;
}

static void wr_be64(uint8_t out[8], uint64_t v) {
  for (int i = 7; i >= 0; i--) {
    out[i] = (uint8_t)v;
    v >>= 8;
  }
}

static int unpack_bytes(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t n,
                        const char *dbname, ProtobufCMessage **out) {
  *out = protobuf_c_message_unpack(desc, NULL, n, data);
  if (*out == NULL) {
    LOG_ERROR("event=storage_record_unreadable db=%s type=%s bytes=%zu backend=postgresql", dbname,
              desc->name, n);
    capstan_store_count_error("unpack");
    return CAPSTAN_EIO;
  }
  return 0;
}

static int unpack(pg_conn_t *c, const ProtobufCMessageDescriptor *desc, const PGresult *r, int row,
                  int col, const char *dbname, ProtobufCMessage **out) {
  const capstan_libpq_t *pq = c->pg->pq;
  return unpack_bytes(desc, (const uint8_t *)pq->getvalue(r, row, col),
                      (size_t)pq->getlength(r, row, col), dbname, out);
}

/* The table of |db|; AUDIT_DEVICE has none (the audit table's device
 * column is the index). */
static const char *table(capstan_db_t db) {
  return capstan_store_db_names[db];
}

int capstan_pg_get(pg_conn_t *c, capstan_db_t db, const void *key, size_t klen,
                   const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out) {
  const ahead_t *a = c->failed == 0 && !c->bad ? ahead_find(c, db, key, klen) : NULL;
  if (a != NULL) {
    return a->val != NULL ? unpack_bytes(desc, a->val, a->vlen, table(db), out) : CAPSTAN_ENOENT;
  }
  char sql[128];
  snprintf(sql, sizeof(sql), "SELECT v FROM %s WHERE k = $1", table(db));
  const void *vals[] = {key};
  int lens[] = {(int)klen}, err;
  PGresult *r = query(c, sql, 1, vals, lens, "get", &err);
  if (r == NULL) return err;
  if (c->pg->pq->ntuples(r) == 0) {
    err = CAPSTAN_ENOENT;
  } else {
    err = unpack(c, desc, r, 0, 0, table(db), out);
  }
  c->pg->pq->clear(r);
  return err;
}

/* The text of an enum's value, for the status columns (their CHECK lists
 * the same names, pg_schema.c). */
static const char *enum_name(const ProtobufCEnumDescriptor *d, int value) {
  const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(d, value);
  return v != NULL ? v->name : "unknown";
}

int capstan_pg_put(pg_conn_t *c, capstan_db_t db, const void *key, size_t klen,
                   const ProtobufCMessage *msg) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  uint8_t one = 0, *buf = n > 0 ? malloc(n) : &one;
  if (buf == NULL) return CAPSTAN_ENOMEM;
  if (n > 0) protobuf_c_message_pack(msg, buf);
  /* The columns beside the record that the schema's constraints check. */
  const char *extra = NULL, *extra_val = NULL;
  switch (db) {
    case CAPSTAN_DB_DEVICES:
      extra = "status";
      extra_val =
          enum_name(&capstan__op_status__descriptor, (int)((const Capstan__Device *)msg)->status);
      break;
    case CAPSTAN_DB_CERTS:
      extra = "status";
      extra_val = enum_name(&capstan__cert_status__descriptor,
                            (int)((const Capstan__IssuedCert *)msg)->status);
      break;
    case CAPSTAN_DB_CSR:
      extra = "status";
      extra_val = enum_name(&capstan__csr_status__descriptor,
                            (int)((const Capstan__CertRequest *)msg)->status);
      break;
    case CAPSTAN_DB_AUDIT:
      extra = "device";
      extra_val = ((const Capstan__AuditEvent *)msg)->device;
      break;
    default:
      break;
  }
  char sql[256];
  const void *vals[3] = {key, buf, extra_val};
  int lens[3] = {(int)klen, (int)n, extra_val != NULL ? (int)strlen(extra_val) : 0};
  if (extra != NULL) {
    snprintf(sql, sizeof(sql),
             "INSERT INTO %s (k, v, %s) VALUES ($1, $2, $3) ON CONFLICT (k) DO UPDATE SET v = "
             "EXCLUDED.v, %s = EXCLUDED.%s",
             table(db), extra, extra, extra);
  } else {
    snprintf(sql, sizeof(sql),
             "INSERT INTO %s (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
             table(db));
  }
  /* Sent without waiting for the answer (collected before the next read
   * or at commit). */
  int err = send_write(c, sql, extra != NULL ? 3 : 2, (const char *const *)vals, lens);
  ahead_t *a = err == 0 ? ahead_find(c, db, key, klen) : NULL;
  if (a != NULL) {
    uint8_t *val = n > 0 ? buf : malloc(1); /* the copy takes the packed record */
    if (val == NULL) err = CAPSTAN_ENOMEM;  /* the transaction then fails */
    ahead_set(a, val, n);
  } else if (n > 0) {
    free(buf);
  }
  if (err == 0 && db == CAPSTAN_DB_AUDIT && klen == 8 && c->audit_known) {
    uint64_t k = rd_be64(key);
    if (k > c->audit_last) c->audit_last = k;
  }
  return err;
}

int capstan_pg_del(pg_conn_t *c, capstan_db_t db, const void *key, size_t klen) {
  char sql[128];
  snprintf(sql, sizeof(sql), "DELETE FROM %s WHERE k = $1", table(db));
  const void *vals[] = {key};
  int lens[] = {(int)klen}, err;
  PGresult *r = query(c, sql, 1, vals, lens, "delete", &err);
  if (r == NULL) return err;
  const char *count = c->pg->pq->cmd_tuples(r);
  err = count != NULL && strcmp(count, "0") == 0 ? CAPSTAN_ENOENT : 0;
  c->pg->pq->clear(r);
  if (err == 0) c->dirty = true;
  ahead_t *a = ahead_find(c, db, key, klen);
  if (a != NULL) ahead_set(a, NULL, 0);
  return err;
}

/* Every (key, packed record) of |db|'s table from the first key after
 * |after| (NULL: from the first), in key order, a page at a time (keyset
 * paging: |fn| may write between pages, in the same transaction). |fn|
 * returns 0 to go on, > 0 to stop, < 0 an error that the scan returns. */
typedef int (*row_fn)(const uint8_t *key, size_t klen, const PGresult *r, int row, void *arg);

static int scan_pages(pg_conn_t *c, capstan_db_t db, const void *after, size_t alen, row_fn fn,
                      void *arg) {
  const capstan_libpq_t *pq = c->pg->pq;
  char first[128], next[128];
  snprintf(first, sizeof(first), "SELECT k, v FROM %s ORDER BY k LIMIT %d", table(db), PAGE_ROWS);
  snprintf(next, sizeof(next), "SELECT k, v FROM %s WHERE k > $1 ORDER BY k LIMIT %d", table(db),
           PAGE_ROWS);
  /* The last key of the page before (keys are at most 511 bytes). */
  uint8_t last[512];
  size_t last_len = 0;
  bool from_start = after == NULL;
  if (!from_start) {
    if (alen == 0 || alen > sizeof(last)) return CAPSTAN_EINVAL;
    memcpy(last, after, alen);
    last_len = alen;
  }
  for (;;) {
    const void *vals[] = {last};
    int lens[] = {(int)last_len}, err;
    PGresult *r =
        query(c, from_start ? first : next, from_start ? 0 : 1, vals, lens, "iterate", &err);
    if (r == NULL) return err;
    from_start = false;
    int rows = pq->ntuples(r);
    for (int i = 0; i < rows && err == 0; i++) {
      size_t kl = (size_t)pq->getlength(r, i, 0);
      if (kl == 0 || kl > sizeof(last)) continue; /* not a key of ours: skipped */
      memcpy(last, pq->getvalue(r, i, 0), kl);
      last_len = kl;
      err = fn(last, kl, r, i, arg);
    }
    pq->clear(r);
    if (err > 0) return 0; /* stopped by fn */
    if (err < 0) return err;
    if (rows < PAGE_ROWS) return 0;
  }
}

typedef struct {
  pg_conn_t *c;
  capstan_db_t db;
  const ProtobufCMessageDescriptor *desc;
  capstan_store_iter_fn fn;
  void *arg;
} typed_scan_t;

static int typed_row(const uint8_t *key, size_t klen, const PGresult *r, int row, void *arg) {
  typed_scan_t *t = arg;
  ProtobufCMessage *msg;
  int err = unpack(t->c, t->desc, r, row, 1, table(t->db), &msg);
  if (err != 0) return err;
  err = t->fn(key, klen, msg, t->arg);
  protobuf_c_message_free_unpacked(msg, NULL);
  return err;
}

int capstan_pg_iterate_after(pg_conn_t *c, capstan_db_t db, const void *after, size_t alen,
                             const ProtobufCMessageDescriptor *desc, capstan_store_iter_fn fn,
                             void *arg) {
  typed_scan_t t = {c, db, desc, fn, arg};
  return scan_pages(c, db, after, alen, typed_row, &t);
}

typedef struct {
  const capstan_libpq_t *pq;
  capstan_store_raw_fn fn;
  void *arg;
} raw_scan_t;

static int raw_row(const uint8_t *key, size_t klen, const PGresult *r, int row, void *arg) {
  raw_scan_t *t = arg;
  return t->fn(key, klen, t->pq->getvalue(r, row, 1), (size_t)t->pq->getlength(r, row, 1), t->arg);
}

int capstan_pg_iterate_raw(pg_conn_t *c, capstan_db_t db, capstan_store_raw_fn fn, void *arg) {
  raw_scan_t t = {c->pg->pq, fn, arg};
  return scan_pages(c, db, NULL, 0, raw_row, &t);
}

int capstan_pg_devices_in_progress(pg_conn_t *c, int (*fn)(const void *msg, void *arg), void *arg) {
  const capstan_libpq_t *pq = c->pg->pq;
  int err;
  PGresult *r =
      query(c, "SELECT k, v FROM devices WHERE status = 'OP_STATUS_IN_PROGRESS' ORDER BY k", 0,
            NULL, NULL, "iterate", &err);
  if (r == NULL) return err;
  int rows = pq->ntuples(r);
  for (int i = 0; i < rows && err == 0; i++) {
    ProtobufCMessage *msg;
    err = unpack(c, &capstan__device__descriptor, r, i, 1, "devices", &msg);
    if (err != 0) break;
    err = fn(msg, arg);
    protobuf_c_message_free_unpacked(msg, NULL);
  }
  pq->clear(r);
  return err > 0 ? 0 : err;
}

int capstan_pg_read_ahead(pg_conn_t *c, capstan_db_t db, const capstan_store_key_t *keys,
                          size_t n) {
  if (!c->write || n == 0) return 0;
  /* The keys, hex, comma-separated: one text parameter whatever their
   * number (the statement stays one prepared statement). */
  size_t len = 0;
  for (size_t i = 0; i < n; i++) len += 2 * keys[i].klen + 1;
  char *list = malloc(len + 1);
  if (list == NULL) return CAPSTAN_ENOMEM;
  static const char hex[] = "0123456789abcdef";
  size_t at = 0, asked = 0;
  int err = 0;
  for (size_t i = 0; i < n && err == 0; i++) {
    const capstan_store_key_t *k = &keys[i];
    if (k->db != db || k->klen == 0 || ahead_find(c, db, k->key, k->klen) != NULL) continue;
    ahead_t *a = calloc(1, sizeof(*a));
    uint8_t *copy = malloc(k->klen);
    if (a == NULL || copy == NULL) {
      free(a);
      free(copy);
      err = CAPSTAN_ENOMEM;
      break;
    }
    memcpy(copy, k->key, k->klen);
    *a = (ahead_t){.db = db, .key = copy, .klen = k->klen, .next = c->ahead};
    c->ahead = a;
    if (asked++ > 0) list[at++] = ',';
    for (size_t j = 0; j < k->klen; j++) {
      list[at++] = hex[copy[j] >> 4];
      list[at++] = hex[copy[j] & 15];
    }
  }
  if (err == 0 && asked > 0) {
    char sql[192];
    snprintf(sql, sizeof(sql),
             "SELECT k, v FROM %s WHERE k = ANY(ARRAY(SELECT decode(h, 'hex') FROM "
             "unnest(string_to_array($1::text, ',')) AS h))",
             table(db));
    const void *vals[] = {list};
    int lens[] = {(int)at};
    PGresult *r = query(c, sql, 1, vals, lens, "get", &err);
    const capstan_libpq_t *pq = c->pg->pq;
    for (int i = 0; r != NULL && i < pq->ntuples(r); i++) {
      ahead_t *a = ahead_find(c, db, pq->getvalue(r, i, 0), (size_t)pq->getlength(r, i, 0));
      size_t vlen = (size_t)pq->getlength(r, i, 1);
      if (a == NULL || a->val != NULL) continue;
      uint8_t *val = malloc(vlen > 0 ? vlen : 1);
      if (val == NULL) {
        err = CAPSTAN_ENOMEM;
        break;
      }
      memcpy(val, pq->getvalue(r, i, 1), vlen);
      ahead_set(a, val, vlen);
    }
    if (r != NULL) pq->clear(r);
  }
  free(list);
  /* What could not be read ahead is read when it is asked for. */
  if (err != 0) ahead_free(c);
  return err;
}

int capstan_pg_clear(pg_conn_t *c) {
  ahead_free(c);
  char sql[512];
  size_t n = 0;
  for (int db = 0; db < CAPSTAN_DB_COUNT; db++) {
    if (db == CAPSTAN_DB_AUDIT_DEVICE) continue;
    n += (size_t)snprintf(sql + n, sizeof(sql) - n, "DELETE FROM %s;", table(db));
  }
  c->dirty = true;
  return capstan_pg_exec(c, sql, "restore");
}

/* An int8 column of a binary result. */
static uint64_t int8_at(const capstan_libpq_t *pq, const PGresult *r, int row, int col) {
  if (pq->getisnull(r, row, col) || pq->getlength(r, row, col) != 8) return 0;
  return rd_be64((const uint8_t *)pq->getvalue(r, row, col));
}

int capstan_pg_count(pg_conn_t *c, capstan_db_t db, uint64_t *out) {
  char sql[128];
  if (db == CAPSTAN_DB_AUDIT_DEVICE) {
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM audit WHERE device IS NOT NULL");
  } else {
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", table(db));
  }
  int err;
  PGresult *r = query(c, sql, 0, NULL, NULL, "stat", &err);
  if (r == NULL) return err;
  *out = c->pg->pq->ntuples(r) == 1 ? int8_at(c->pg->pq, r, 0, 0) : 0;
  c->pg->pq->clear(r);
  return 0;
}

/* ---- The audit log ------------------------------------------------------ */

int capstan_pg_audit_last(pg_conn_t *c, uint64_t *last, bool *any) {
  if (c->write && c->audit_known) {
    *any = true;
    *last = c->audit_last;
    return 0;
  }
  int err;
  PGresult *r =
      query(c, "SELECT k FROM audit ORDER BY k DESC LIMIT 1", 0, NULL, NULL, "audit", &err);
  if (r == NULL) return err;
  const capstan_libpq_t *pq = c->pg->pq;
  *any = pq->ntuples(r) == 1 && pq->getlength(r, 0, 0) == 8;
  *last = *any ? rd_be64((const uint8_t *)pq->getvalue(r, 0, 0)) : 0;
  pq->clear(r);
  /* Writers are serialised: what this transaction appends is the rest. */
  if (c->write && *any) {
    c->audit_known = true;
    c->audit_last = *last;
  }
  return 0;
}

int capstan_pg_audit_key_taken(pg_conn_t *c, uint64_t key, bool *taken) {
  uint8_t kb[8];
  wr_be64(kb, key);
  const void *vals[] = {kb};
  int lens[] = {8}, err;
  PGresult *r = query(c, "SELECT 1 FROM audit WHERE k = $1", 1, vals, lens, "audit", &err);
  if (r == NULL) return err;
  *taken = c->pg->pq->ntuples(r) > 0;
  c->pg->pq->clear(r);
  return 0;
}

/* Calls fn for each row (k, v) of |r|; the return as fn's (> 0 stops). */
static int deliver_rows(pg_conn_t *c, PGresult *r, capstan_pg_audit_fn fn, void *arg,
                        uint64_t *last) {
  const capstan_libpq_t *pq = c->pg->pq;
  int rows = pq->ntuples(r), err = 0;
  for (int i = 0; i < rows && err == 0; i++) {
    if (pq->getlength(r, i, 0) != 8) continue;
    uint64_t key = rd_be64((const uint8_t *)pq->getvalue(r, i, 0));
    *last = key;
    ProtobufCMessage *msg;
    err = unpack(c, &capstan__audit_event__descriptor, r, i, 1, "audit", &msg);
    if (err != 0) break;
    err = fn(key, (const Capstan__AuditEvent *)msg, arg);
    protobuf_c_message_free_unpacked(msg, NULL);
  }
  return err;
}

int capstan_pg_audit_scan(pg_conn_t *c, const char *device, uint64_t from, capstan_pg_audit_fn fn,
                          void *arg) {
  char sql[160];
  snprintf(sql, sizeof(sql), "SELECT k, v FROM audit WHERE k >= $1%s ORDER BY k LIMIT %d",
           device != NULL ? " AND device = $2" : "", PAGE_ROWS);
  uint8_t kb[8];
  wr_be64(kb, from);
  for (;;) {
    const void *vals[] = {kb, device};
    int lens[] = {8, device != NULL ? (int)strlen(device) : 0}, err;
    PGresult *r = query(c, sql, device != NULL ? 2 : 1, vals, lens, "audit", &err);
    if (r == NULL) return err;
    int rows = c->pg->pq->ntuples(r);
    uint64_t last = 0;
    err = deliver_rows(c, r, fn, arg, &last);
    c->pg->pq->clear(r);
    if (err > 0) return 0;
    if (err < 0) return err;
    if (rows < PAGE_ROWS || last == UINT64_MAX) return 0;
    wr_be64(kb, last + 1);
  }
}

int capstan_pg_audit_scan_back(pg_conn_t *c, const char *device, uint64_t before, int max,
                               capstan_pg_audit_fn fn, void *arg) {
  char sql[160];
  snprintf(sql, sizeof(sql),
           "SELECT k, v FROM audit WHERE device = $2 AND k < $1 ORDER BY k DESC LIMIT %d", max);
  uint8_t kb[8];
  wr_be64(kb, before);
  const void *vals[] = {kb, device};
  int lens[] = {8, (int)strlen(device)}, err;
  PGresult *r = query(c, sql, 2, vals, lens, "audit", &err);
  if (r == NULL) return err;
  uint64_t last = 0;
  err = deliver_rows(c, r, fn, arg, &last);
  c->pg->pq->clear(r);
  return err < 0 ? err : 0;
}

int capstan_pg_audit_prune(pg_conn_t *c, uint64_t before, size_t limit, size_t *removed,
                           bool *more) {
  *removed = 0;
  *more = false;
  uint8_t kb[8];
  wr_be64(kb, before);
  char sql[200];
  snprintf(sql, sizeof(sql),
           "DELETE FROM audit WHERE k IN (SELECT k FROM audit WHERE k < $1 ORDER BY k LIMIT %zu)",
           limit);
  const void *vals[] = {kb};
  int lens[] = {8}, err;
  PGresult *r = query(c, sql, 1, vals, lens, "audit", &err);
  if (r == NULL) return err;
  *removed = (size_t)strtoull(c->pg->pq->cmd_tuples(r), NULL, 10);
  c->pg->pq->clear(r);
  if (*removed > 0) c->dirty = true;
  r = query(c, "SELECT 1 FROM audit WHERE k < $1 LIMIT 1", 1, vals, lens, "audit", &err);
  if (r == NULL) return err;
  *more = c->pg->pq->ntuples(r) > 0;
  c->pg->pq->clear(r);
  return 0;
}

/* ---- The listener ------------------------------------------------------- */

/* Waits up to |ms| for |fd| to be readable; false when stopping. */
static bool wait_readable(pg_store_t *pg, int fd, int ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  if (fd >= 0) poll(&p, 1, ms);
  return !atomic_load(&pg->stopping);
}

static void sleep_unless_stopping(pg_store_t *pg, int ms) {
  for (int i = 0; i < ms / 100 && !atomic_load(&pg->stopping); i++) usleep(100 * 1000);
}

/* The node's row: inserted or refreshed (heartbeat); its session also
 * asks for the leader lock while it does not hold it. */
static void heartbeat(pg_store_t *pg, PGconn *conn) {
  const capstan_libpq_t *pq = pg->pq;
  pthread_mutex_lock(&pg->lock);
  char *name = pg->node != NULL ? strdup(pg->node) : NULL;
  char *detail = pg->node_detail != NULL ? strdup(pg->node_detail) : NULL;
  pthread_mutex_unlock(&pg->lock);
  if (name == NULL) {
    free(detail);
    return;
  }
  if (!atomic_load(&pg->leader)) {
    PGresult *r = pq->exec(conn, "SELECT pg_try_advisory_lock(1667330163, 2)");
    bool got = r != NULL && pq->result_status(r) == PGRES_TUPLES_OK && pq->ntuples(r) == 1 &&
               strcmp(pq->getvalue(r, 0, 0), "t") == 0;
    if (r != NULL) pq->clear(r);
    if (got) {
      atomic_store(&pg->leader, true);
      LOG_INFO(
          "event=cluster_leader node=%s hint=\"this node runs the once-only work: expiry "
          "checks, CA polling, audit retention, repairs of dead nodes' devices\"",
          name);
    }
  }
  char pid[16];
  snprintf(pid, sizeof(pid), "%d", (int)getpid());
  const char *vals[] = {name, pid, CAPSTAN_VERSION, detail != NULL ? detail : "",
                        atomic_load(&pg->leader) ? "t" : "f"};
  PGresult *r = pq->exec_params(
      conn,
      "INSERT INTO nodes (name, started_at, heartbeat_at, pid, version, detail, leader) "
      "VALUES ($1, now(), now(), $2::int, $3, $4, $5::boolean) ON CONFLICT (name) DO UPDATE SET "
      "heartbeat_at = now(), pid = EXCLUDED.pid, version = EXCLUDED.version, "
      "detail = EXCLUDED.detail, leader = EXCLUDED.leader, started_at = CASE WHEN nodes.pid = "
      "EXCLUDED.pid THEN nodes.started_at ELSE now() END",
      5, NULL, vals, NULL, NULL, 0);
  bool ok = r != NULL && pq->result_status(r) == PGRES_COMMAND_OK;
  if (!ok && !pg->beat_failed) {
    char msg[300];
    one_line(r != NULL ? pq->result_error_message(r) : pq->error_message(conn), msg, sizeof(msg));
    LOG_ERROR(
        "event=cluster_heartbeat_failed node=%s error=\"%s\" hint=\"other nodes will take "
        "this node for dead\"",
        name, msg);
  }
  pg->beat_failed = !ok;
  if (r != NULL) pq->clear(r);
  free(name);
  free(detail);
}

static void read_size(pg_store_t *pg, PGconn *conn);
static void read_nodes(pg_store_t *pg, PGconn *conn);

/* The listener thread: counts every NOTIFY of the channel (each is a
 * commit somewhere that may change what this node serves: settings,
 * trust, identities, a device's files), writes the node's heartbeat and
 * holds the leader lock on the same connection, so that the lock goes
 * when the node can no longer say it is alive. Reconnects by itself,
 * counting one change for what it may have missed. */
static void *listener_main(void *arg) {
  pg_store_t *pg = arg;
  const capstan_libpq_t *pq = pg->pq;
  capstan_libpq_thread();
  PGconn *conn = NULL;
  double next_beat = 0, next_size = 0;
  while (!atomic_load(&pg->stopping)) {
    if (conn == NULL) {
      conn = capstan_pg_connect(pg);
      PGresult *r = NULL;
      if (conn != NULL && pq->status(conn) == CONNECTION_OK) {
        r = pq->exec(conn, "LISTEN " CAPSTAN_PG_CHANNEL);
      }
      if (r == NULL || pq->result_status(r) != PGRES_COMMAND_OK) {
        char msg[300];
        one_line(conn != NULL ? pq->error_message(conn) : "out of memory", msg, sizeof(msg));
        note_down(pg, msg);
        if (r != NULL) pq->clear(r);
        if (conn != NULL) pq->finish(conn);
        conn = NULL;
        sleep_unless_stopping(pg, 1000);
        continue;
      }
      pq->clear(r);
      note_up(pg);
      atomic_fetch_add(&pg->changes, 1);
      next_beat = next_size = 0;
    }
    if (capstan_now_seconds() >= next_size) {
      read_size(pg, conn);
      next_size = capstan_now_seconds() + SIZE_REFRESH_SECONDS;
    }
    if (capstan_now_seconds() >= next_beat) {
      heartbeat(pg, conn);
      read_nodes(pg, conn);
      next_beat = capstan_now_seconds() + CAPSTAN_NODE_HEARTBEAT_MS / 1000.0;
      /* The heartbeat went through: the database answers, whatever failed
       * on other connections (their threads do not reconnect meanwhile). */
      if (pq->status(conn) == CONNECTION_OK) note_up(pg);
    }
    if (!wait_readable(pg, pq->socket(conn), 200)) break;
    if (!pq->consume_input(conn) || pq->status(conn) != CONNECTION_OK) {
      char msg[300];
      one_line(pq->error_message(conn), msg, sizeof(msg));
      note_down(pg, msg);
      pq->finish(conn);
      conn = NULL;
      if (atomic_exchange(&pg->leader, false)) {
        LOG_WARN(
            "event=cluster_leader_lost hint=\"the connection to the database broke; "
            "another node takes the once-only work\"");
      }
      continue;
    }
    PGnotify *n;
    while ((n = pq->notifies(conn)) != NULL) {
      atomic_fetch_add(&pg->changes, 1);
      pq->freemem(n);
    }
  }
  if (conn != NULL) {
    /* A node that stops says so: its row goes (a dead node's stays, and
     * shows as dead). */
    pthread_mutex_lock(&pg->lock);
    char *name = pg->node != NULL ? strdup(pg->node) : NULL;
    pthread_mutex_unlock(&pg->lock);
    if (name != NULL) {
      const char *vals[] = {name};
      PGresult *r =
          pq->exec_params(conn, "DELETE FROM nodes WHERE name = $1", 1, NULL, vals, NULL, NULL, 0);
      if (r != NULL) pq->clear(r);
      free(name);
    }
    pq->finish(conn);
  }
  atomic_store(&pg->leader, false);
  return NULL;
}

int capstan_pg_node_start(pg_store_t *pg, const char *name, const char *detail) {
  char *n = strdup(name), *d = strdup(detail != NULL ? detail : "");
  if (n == NULL || d == NULL) {
    free(n);
    free(d);
    return CAPSTAN_ENOMEM;
  }
  pthread_mutex_lock(&pg->lock);
  free(pg->node);
  free(pg->node_detail);
  pg->node = n;
  pg->node_detail = d;
  pthread_mutex_unlock(&pg->lock);
  return capstan_pg_listen_start(pg);
}

bool capstan_pg_leader(pg_store_t *pg) {
  return atomic_load(&pg->leader);
}

/* Copies |v| into |out| (truncated). */
static void copy_text(char *out, size_t len, const char *v) {
  snprintf(out, len, "%s", v != NULL ? v : "");
}

#define NODES_SQL                                                             \
  "SELECT name, version, detail, pid, extract(epoch FROM started_at)::int8, " \
  "extract(epoch FROM now() - heartbeat_at)::float8, leader FROM nodes ORDER BY name"

/* The rows of NODES_SQL (text results from the database: copied with
 * truncation, numbers parsed); leader as each node's heartbeat said. */
static capstan_store_node_t *nodes_from(const capstan_libpq_t *pq, const PGresult *r, size_t *n) {
  int rows = pq->ntuples(r);
  capstan_store_node_t *nodes = calloc(rows > 0 ? (size_t)rows : 1, sizeof(*nodes));
  *n = nodes != NULL ? (size_t)rows : 0;
  for (int i = 0; nodes != NULL && i < rows; i++) {
    capstan_store_node_t *nd = &nodes[i];
    copy_text(nd->name, sizeof(nd->name), pq->getvalue(r, i, 0));
    copy_text(nd->version, sizeof(nd->version), pq->getvalue(r, i, 1));
    copy_text(nd->detail, sizeof(nd->detail), pq->getvalue(r, i, 2));
    nd->pid = atoi(pq->getvalue(r, i, 3));
    nd->started_at = strtoll(pq->getvalue(r, i, 4), NULL, 10);
    nd->heartbeat_age = strtod(pq->getvalue(r, i, 5), NULL);
    nd->leader = strcmp(pq->getvalue(r, i, 6), "t") == 0;
  }
  return nodes;
}

/* The listener's read of the nodes table, kept for capstan_pg_nodes. */
static void read_nodes(pg_store_t *pg, PGconn *conn) {
  const capstan_libpq_t *pq = pg->pq;
  PGresult *r = pq->exec(conn, NODES_SQL);
  size_t n = 0;
  capstan_store_node_t *nodes =
      r != NULL && pq->result_status(r) == PGRES_TUPLES_OK ? nodes_from(pq, r, &n) : NULL;
  if (r != NULL) pq->clear(r);
  if (nodes == NULL) return;
  pthread_mutex_lock(&pg->lock);
  free(pg->nodes);
  pg->nodes = nodes;
  pg->nnodes = n;
  pg->nodes_at = capstan_now_seconds();
  pthread_mutex_unlock(&pg->lock);
}

int capstan_pg_nodes(pg_store_t *pg, const char *self, capstan_store_node_t **out, size_t *n) {
  *out = NULL;
  *n = 0;
  capstan_store_node_t *nodes = NULL;
  double age = 0;
  pthread_mutex_lock(&pg->lock);
  bool cached = pg->listening && pg->nodes_at > 0;
  pthread_mutex_unlock(&pg->lock);
  if (cached) {
    /* The server: the listener's copy, aged since it was read. */
    pthread_mutex_lock(&pg->lock);
    nodes = calloc(pg->nnodes > 0 ? pg->nnodes : 1, sizeof(*nodes));
    if (nodes != NULL && pg->nnodes > 0) memcpy(nodes, pg->nodes, pg->nnodes * sizeof(*nodes));
    if (nodes != NULL) *n = pg->nnodes;
    age = pg->nnodes > 0 ? capstan_now_seconds() - pg->nodes_at : 0;
    pthread_mutex_unlock(&pg->lock);
  } else {
    /* A command, or a server whose listener has not read it yet: now. */
    pg_conn_t *c;
    int err = capstan_pg_begin(pg, false, &c);
    if (err == 0) err = ensure_begun(c);
    if (err != 0) {
      if (c != NULL) capstan_pg_abort(pg, c);
      return err;
    }
    PGresult *r = pg->pq->exec(c->c, NODES_SQL);
    if (r == NULL || pg->pq->result_status(r) != PGRES_TUPLES_OK) {
      err = fail(pg, c, r, "nodes");
      capstan_pg_abort(pg, c);
      return err;
    }
    nodes = nodes_from(pg->pq, r, n);
    pg->pq->clear(r);
    capstan_pg_abort(pg, c);
  }
  if (nodes == NULL) return CAPSTAN_ENOMEM;
  for (size_t i = 0; i < *n; i++) {
    capstan_store_node_t *nd = &nodes[i];
    nd->heartbeat_age += age;
    nd->self = self != NULL && strcmp(nd->name, self) == 0;
    /* This process is alive whatever its last written heartbeat says. */
    nd->alive = nd->self || nd->heartbeat_age < CAPSTAN_NODE_DEAD_SECONDS;
    /* Our own from the lock itself; others' as their last heartbeat said. */
    nd->leader = nd->self ? capstan_pg_leader(pg) : nd->alive && nd->leader;
  }
  *out = nodes;
  return 0;
}

int capstan_pg_live_nodes(pg_conn_t *c, const char *self, char ***names, size_t *n) {
  *names = NULL;
  *n = 0;
  char dead[16];
  snprintf(dead, sizeof(dead), "%d", CAPSTAN_NODE_DEAD_SECONDS);
  const char *vals[] = {self != NULL ? self : "", dead};
  const capstan_libpq_t *pq = c->pg->pq;
  /* In the writer's batch the writes before may be in flight. */
  int err = unpipe(c);
  if (err == 0) err = ensure_begun(c);
  if (err != 0) return err;
  PGresult *r =
      pq->exec_params(c->c,
                      "SELECT name FROM nodes WHERE name <> $1 AND heartbeat_at > now() - "
                      "make_interval(secs => $2::int) ORDER BY name COLLATE \"C\"",
                      2, NULL, vals, NULL, NULL, 0);
  if (r == NULL || pq->result_status(r) != PGRES_TUPLES_OK) return fail(c->pg, c, r, "nodes");
  int rows = pq->ntuples(r);
  char **out = calloc(rows > 0 ? (size_t)rows : 1, sizeof(*out));
  for (int i = 0; out != NULL && i < rows; i++) {
    if ((out[i] = strdup(pq->getvalue(r, i, 0))) == NULL) err = CAPSTAN_ENOMEM;
  }
  pq->clear(r);
  if (out == NULL || err != 0) {
    for (int i = 0; out != NULL && i < rows; i++) free(out[i]);
    free(out);
    return CAPSTAN_ENOMEM;
  }
  *names = out;
  *n = (size_t)rows;
  return 0;
}

int capstan_pg_listen_start(pg_store_t *pg) {
  if (pg->listening) return 0;
  /* The size gauge has a value from the start; the listener refreshes it. */
  atomic_store(&pg->size_bytes, capstan_pg_size_bytes(pg));
  atomic_store(&pg->listening, true);
  if (pthread_create(&pg->listener, NULL, listener_main, pg) != 0) {
    atomic_store(&pg->listening, false);
    return CAPSTAN_ENOMEM;
  }
  return 0;
}

/* The database's size on the listener's connection (no other thread waits
 * for it: the metrics and the status page read the last value). */
static void read_size(pg_store_t *pg, PGconn *conn) {
  const capstan_libpq_t *pq = pg->pq;
  PGresult *r = pq->exec(conn, "SELECT pg_database_size(current_database())");
  if (r != NULL && pq->result_status(r) == PGRES_TUPLES_OK && pq->ntuples(r) == 1) {
    atomic_store(&pg->size_bytes, strtoull(pq->getvalue(r, 0, 0), NULL, 10));
  }
  if (r != NULL) pq->clear(r);
}

uint64_t capstan_pg_size_bytes(pg_store_t *pg) {
  if (pg->listening) return atomic_load(&pg->size_bytes);
  /* A command: read it now. */
  pg_conn_t *c;
  if (capstan_pg_begin(pg, false, &c) != 0) return 0;
  int err;
  PGresult *r =
      query(c, "SELECT pg_database_size(current_database())::int8", 0, NULL, NULL, "stat", &err);
  uint64_t n = 0;
  if (r != NULL) {
    n = pg->pq->ntuples(r) == 1 ? int8_at(pg->pq, r, 0, 0) : 0;
    pg->pq->clear(r);
  }
  capstan_pg_abort(pg, c);
  return n;
}

/* ---- Open and close ----------------------------------------------------- */

int capstan_pg_open(const char *url, bool create, bool migrate, pg_store_t **out) {
  *out = NULL;
  const capstan_libpq_t *pq = capstan_libpq();
  if (pq == NULL) return CAPSTAN_EIO;
  if (!pq->conninfo_valid(url)) {
    LOG_ERROR(
        "event=postgres_url_invalid hint=\"a libpq URI (postgresql://user@host:port/db"
        "?sslmode=verify-full) or key=value string\"");
    return CAPSTAN_EINVAL;
  }
  pg_store_t *pg = calloc(1, sizeof(*pg));
  if (pg == NULL) return CAPSTAN_ENOMEM;
  pg->pq = pq;
  pthread_mutex_init(&pg->lock, NULL);
  pg->url = strdup(url);
  if (pg->url == NULL) {
    capstan_pg_close(pg);
    return CAPSTAN_ENOMEM;
  }
  /* Most opens find the schema current (a read); creating or migrating it
   * is done in a write transaction, so two nodes initialising one database
   * at once do it one after the other. */
  int err = 0;
  for (int write = 0; write < 2; write++) {
    pg_conn_t *c;
    err = capstan_pg_begin(pg, write == 1, &c);
    if (err != 0) break;
    err = capstan_pg_schema_check(c, write == 1, create, migrate);
    if (err == 1) {
      c->dirty = true; /* a change: running nodes hear of it */
      err = 0;
    }
    if (err == CAPSTAN_EBUSY && write == 0) {
      capstan_pg_abort(pg, c);
      continue; /* needs a write */
    }
    if (err == 0) {
      err = capstan_pg_commit(pg, c);
    } else {
      capstan_pg_abort(pg, c);
    }
    break;
  }
  if (err != 0) {
    capstan_pg_close(pg);
    return err;
  }
  *out = pg;
  return 0;
}

void capstan_pg_close(pg_store_t *pg) {
  if (pg == NULL) return;
  if (pg->listening) {
    atomic_store(&pg->stopping, true);
    pthread_join(pg->listener, NULL);
  }
  while (pg->idle != NULL) {
    pg_conn_t *c = pg->idle;
    pg->idle = c->next;
    conn_free(pg, c);
  }
  pthread_mutex_destroy(&pg->lock);
  free(pg->node);
  free(pg->node_detail);
  free(pg->nodes);
  free(pg->url);
  free(pg);
}
