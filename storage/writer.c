/* The group-commit writer: one thread that runs many write requests in one
 * durable LMDB transaction and completes them on the loop thread. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "storage/internal.h"
#include "storage/pg_store.h"

static capstan_metric_t *m_commit_seconds, *m_commits, *m_batch_size, *m_writable;

/* An outage (commits failing) ends when a commit that wrote succeeds this
 * long after the last failure: on a nearly full disk small commits
 * succeed between failing large ones, and the operator should read one
 * "unavailable" and one "recovered", not a flapping pair per batch. */
#define RECOVERED_AFTER_SECONDS 3.0
/* How often an idle writer looks whether the environment needs reopening
 * (a reader on another thread met MDB_PANIC). */
#define IDLE_CHECK_MS 1000

typedef struct write_req {
  capstan_store_write_fn fn;
  capstan_store_done_fn done;
  void *arg;
  int status;
  capstan_store_key_t keys[CAPSTAN_STORE_SUBMIT_KEYS_MAX]; /* what fn reads */
  size_t nkeys;
  struct write_req *next;
} write_req_t;

/* The writer's state lives apart from the store because its uv_async_t must
 * outlive capstan_store_writer_stop until libuv's close callback. */
typedef struct writer {
  capstan_store_t *store;
  uv_async_t async;
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  write_req_t *queue_head, *queue_tail; /* submitted, not yet written */
  write_req_t *done_head, *done_tail;   /* written, done not yet called */
  bool stopping;
  bool idle;                   /* waiting for a request */
  struct timespec last_commit; /* CLOCK_MONOTONIC, when the last batch began */
  /* Commits failing (storage unavailable): set at the first failure,
   * cleared by a commit RECOVERED_AFTER_SECONDS after the last one. */
  _Atomic bool outage;
  _Atomic uint64_t failed_batches; /* batches that could not commit, ever */
  double last_failure;             /* capstan_now_seconds(); writer thread only */
  bool full_logged;                /* the map limit's hint, once per outage */
  bool reopen_logged;              /* storage_reopened, once per outage */
} writer_t;

/* ---- Group-commit writer ---------------------------------------------- */

/* The size gauge reads the store the server's writer runs on; metrics have
 * no unregister, so the gauge is registered once and follows this pointer. */
static _Atomic(capstan_store_t *) g_gauge_store;
static pthread_mutex_t g_gauge_lock = PTHREAD_MUTEX_INITIALIZER;

static double size_gauge(void *arg) {
  pthread_mutex_lock(&g_gauge_lock);
  capstan_store_t *s = atomic_load(&g_gauge_store);
  double v = s != NULL ? (double)capstan_store_size_bytes(s) : 0;
  pthread_mutex_unlock(&g_gauge_lock);
  return v;
}

static double map_gauge(void *arg) {
  pthread_mutex_lock(&g_gauge_lock);
  capstan_store_t *s = atomic_load(&g_gauge_store);
  double v = s == NULL ? 0 : arg != NULL ? (double)s->map_max : (double)s->map_size;
  pthread_mutex_unlock(&g_gauge_lock);
  return v;
}

static void register_metrics(void) {
  static const double batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};
  m_commit_seconds =
      capstan_metrics_histogram("capstan_storage_commit_duration_seconds",
                                "Time to write and durably commit one batch of storage requests",
                                "", capstan_buckets_fast, capstan_buckets_fast_n);
  m_commits = capstan_metrics_counter("capstan_storage_commits_total",
                                      "Group commits by the storage writer", "");
  m_batch_size =
      capstan_metrics_histogram("capstan_storage_batch_size", "Write requests per group commit", "",
                                batch_bounds, sizeof(batch_bounds) / sizeof(batch_bounds[0]));
  /* Error series exist from the start, so a rate() over them works before
   * the first error. */
  static const char *const ops[] = {"open",   "begin",  "get",   "put",  "delete", "iterate",
                                    "commit", "unpack", "audit", "stat", "grow"};
  for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
    char labels[64];
    snprintf(labels, sizeof(labels), "op=\"%s\"", ops[i]);
    capstan_metrics_counter("capstan_storage_errors_total",
                            "Storage operations that failed, by operation", labels);
  }
  capstan_metrics_gauge_fn("capstan_storage_size_bytes", "Bytes of the LMDB map in use", "",
                           size_gauge, NULL);
  capstan_metrics_gauge_fn("capstan_storage_map_bytes", "Size of the LMDB map now", "", map_gauge,
                           NULL);
  capstan_metrics_gauge_fn("capstan_storage_map_max_bytes",
                           "How far the LMDB map may grow (--store-max-mib)", "", map_gauge,
                           (void *)1);
  m_writable = capstan_metrics_gauge(
      "capstan_storage_writable",
      "1 while the store commits, 0 during an outage (full disk, I/O errors, map at its maximum)",
      "");
  capstan_metric_set(m_writable, 1);
}

/* Records read ahead per batch, at most: the transaction looks them up in
 * a list, and a batch of thousands (a writer far behind) reads the rest
 * one by one. */
#define READ_AHEAD_MAX 512

/* On PostgreSQL: the records the batch's requests named, read in one
 * query per table. An error is the transaction's (it can only roll
 * back); without memory the records are read one by one instead. */
static int read_ahead(capstan_txn_t *txn, write_req_t *batch) {
  capstan_store_key_t keys[READ_AHEAD_MAX];
  size_t n = 0;
  for (write_req_t *r = batch; r != NULL; r = r->next) {
    for (size_t i = 0; r->status == 0 && i < r->nkeys && n < READ_AHEAD_MAX; i++) {
      keys[n++] = r->keys[i];
    }
  }
  static const capstan_db_t kTables[] = {CAPSTAN_DB_DEVICES, CAPSTAN_DB_CERTS};
  int err = 0;
  for (size_t t = 0; t < sizeof(kTables) / sizeof(kTables[0]) && err == 0; t++) {
    err = capstan_pg_read_ahead(txn->pg, kTables[t], keys, n);
  }
  return err == CAPSTAN_ENOMEM ? 0 : err;
}

/* Runs every request of |batch| not yet failed in one write transaction.
 * Returns 0 when all succeeded and the transaction is open in |txn|, 1 when
 * the batch is to run again, the transaction aborted (a request failed:
 * its status set, its partial writes must not stay; or, on PostgreSQL, a
 * failure whose cause is to be found carefully), CAPSTAN_ENOSPC when the map is full (no request is
 * to blame: the batch may run again in a larger map), or a negative error
 * for the transaction itself. */
static int run_batch(writer_t *w, write_req_t *batch, capstan_txn_t *txn, bool *careful) {
  int err = capstan_store_begin(w->store, true, txn);
  if (err != 0) return err;
  if (txn->pg != NULL && (err = read_ahead(txn, batch)) != 0) {
    /* As a request's first read that failed (a connection broken after
     * BEGIN): once more carefully, on a new transaction. */
    capstan_store_abort(txn);
    if (*careful) return err;
    *careful = true;
    return 1;
  }
  for (write_req_t *r = batch; r != NULL; r = r->next) {
    if (r->status != 0) continue;
    int rc = r->fn(txn, r->arg);
    /* PostgreSQL answers a write later (storage/internal.h): replaying
     * carefully, each request's writes are answered before the next. */
    if (rc == 0 && *careful) rc = capstan_store_settle(txn);
    if (rc != 0) {
      capstan_store_abort(txn);
      if (rc == CAPSTAN_ENOSPC) return rc;
      /* On PostgreSQL an earlier request's write may be what failed
       * (answered late): find out carefully before blaming this one. */
      if (!*careful && w->store->pg != NULL) {
        *careful = true;
        return 1;
      }
      r->status = rc;
      return 1;
    }
  }
  /* A write that failed without its request knowing: find which by
   * running the batch again carefully. */
  if (!*careful && capstan_store_settle(txn) != 0) {
    capstan_store_abort(txn);
    *careful = true;
    return 1;
  }
  return 0;
}

/* The first failure of an outage is logged; the rest are counted only
 * (capstan_storage_errors_total) until the outage ends. */
static void note_failure(writer_t *w, int err, size_t n) {
  w->last_failure = capstan_now_seconds();
  atomic_fetch_add(&w->failed_batches, 1);
  capstan_metric_set(m_writable, 0);
  if (err == CAPSTAN_ENOSPC) capstan_store_count_error("grow");
  if (err == CAPSTAN_ENOSPC && !w->full_logged) {
    w->full_logged = true;
    LOG_ERROR(
        "event=storage_map_full map_bytes=%zu max_bytes=%zu hint=\"the store reached its "
        "maximum size: raise it with capstan serve --store-max-mib (or store-max-mib in the "
        "config file) and restart the server\"",
        (size_t)w->store->map_size, (size_t)w->store->map_max);
  }
  if (atomic_exchange(&w->outage, true)) {
    LOG_DEBUG("event=storage_batch_failed requests=%zu error=\"%s\"", n, capstan_strerror(err));
    return;
  }
  LOG_ERROR(
      "event=storage_unavailable requests=%zu error=\"%s\" hint=\"commits fail: phones are "
      "told to retry later, files are served from what is stored; the server recovers by "
      "itself once the cause is gone (the storage error above says which)\"",
      n, capstan_strerror(err));
}

static void note_success(writer_t *w, bool wrote) {
  if (!atomic_load(&w->outage) || !wrote) return;
  if (capstan_now_seconds() - w->last_failure < RECOVERED_AFTER_SECONDS) return;
  atomic_store(&w->outage, false);
  w->full_logged = w->reopen_logged = false;
  atomic_store(&w->store->broken_said, false);
  capstan_metric_set(m_writable, 1);
  LOG_WARN("event=storage_recovered failed_batches=%llu",
           (unsigned long long)atomic_load(&w->failed_batches));
}

/* LMDB refuses every transaction after a failed write of its meta page
 * (MDB_PANIC): the environment must be opened again. Logged once per
 * outage (a failing disk fails every commit's meta page). */
static bool reopen_if_broken(writer_t *w) {
  if (!atomic_load(&w->store->broken)) return false;
  int err = capstan_store_reopen(w->store);
  if (!w->reopen_logged) {
    w->reopen_logged = true;
    capstan_log(err == 0 ? CAPSTAN_LOG_WARN : CAPSTAN_LOG_ERROR,
                "event=storage_reopened dir=%s error=\"%s\"", w->store->dir,
                err == 0 ? "none" : capstan_strerror(err));
  }
  return err == 0;
}

/* After a failed commit: whether it broke the environment (a read
 * transaction says MDB_PANIC), so that it is reopened at once rather than
 * when the next transaction, perhaps a phone's read, fails. */
static void check_broken(writer_t *w) {
  capstan_txn_t txn;
  if (capstan_store_begin(w->store, false, &txn) == 0) capstan_store_abort(&txn);
  reopen_if_broken(w);
}

/* Writes one batch; sets each request's status. All requests share one
 * transaction and one fsync (group commit). A request that fails is dropped
 * and the others are applied again from scratch: failures are rare, and
 * this keeps a failing request's partial writes out without LMDB's nested
 * transactions, which cost a 2 MiB allocation each and made large batches
 * slow. Request functions only read their argument, so replaying is safe. */
static void write_batch(writer_t *w, write_req_t *batch, size_t n) {
  double t0 = capstan_now_seconds();
  capstan_txn_t txn;
  int err;
  capstan_store_adopt_map(w->store);
  bool reopened = reopen_if_broken(w), adopted = false;
  capstan_store_quiet_errors(atomic_load(&w->outage));
  uint64_t txnid = capstan_store_txnid(w->store);
  for (write_req_t *r = batch; r != NULL; r = r->next) r->status = 0;
  bool careful = false;
  for (;;) {
    err = run_batch(w, batch, &txn, &careful);
    if (err == 1) continue;
    if (err == 0) err = capstan_store_commit(&txn);
    /* A full map grows (no transaction of ours is open now) and the batch
     * runs again in it; at the maximum the batch fails (map full). A grow
     * that failed otherwise (the larger map could not be mapped: logged as
     * storage_map_grow_failed) fails the batch with its own error, so that
     * it is not reported as the maximum reached. */
    if (err == CAPSTAN_ENOSPC) {
      int grown = capstan_store_grow_map(w->store);
      if (grown == 0) continue;
      if (grown != CAPSTAN_ENOSPC) err = grown;
    }
    if (err != 0 && !adopted && atomic_load(&w->store->resized)) {
      capstan_store_adopt_map(w->store); /* another process grew the store */
      adopted = true;
      continue;
    }
    if (err != 0 && !reopened && (reopened = reopen_if_broken(w))) continue;
    break;
  }
  if (err != 0) {
    note_failure(w, err, n);
    check_broken(w);
    for (write_req_t *r = batch; r != NULL; r = r->next) {
      if (r->status == 0) r->status = err;
    }
  } else {
    note_success(w, capstan_store_txnid(w->store) != txnid);
  }
  capstan_metric_observe(m_commit_seconds, capstan_now_seconds() - t0);
  capstan_metric_inc(m_commits);
  capstan_metric_observe(m_batch_size, (double)n);
}

/* Under sustained load the writer starts a commit at most every
 * COMMIT_SPACING_MS, so each fsync carries more requests. Every commit costs
 * two fdatasyncs and their device round trips, which on a virtual machine
 * cost far more CPU than the writes themselves: spacing commits 10-20 ms
 * apart cut the server's CPU per enrollment by 8-10% at 1,000 phones (see
 * bench/RESULTS.md). A request that comes later than that after the last
 * commit began is written at once; otherwise it waits at most the rest of
 * the interval, which phones (seconds per step) never notice. */
#define COMMIT_SPACING_MS 20

static void wait_for_spacing(writer_t *w) {
  struct timespec due = w->last_commit;
  due.tv_nsec += COMMIT_SPACING_MS * 1000000L;
  if (due.tv_nsec >= 1000000000L) {
    due.tv_sec++;
    due.tv_nsec -= 1000000000L;
  }
  /* Returns at once when |due| has passed; submissions do not wake a
   * spacing writer, a stop does. */
  while (!w->stopping && pthread_cond_timedwait(&w->cond, &w->lock, &due) != ETIMEDOUT) {
  }
}

static void *writer_main(void *arg) {
  writer_t *w = arg;
  pthread_mutex_lock(&w->lock);
  for (;;) {
    while (w->queue_head == NULL && !w->stopping) {
      w->idle = true;
      struct timespec due;
      clock_gettime(CLOCK_MONOTONIC, &due);
      due.tv_sec += IDLE_CHECK_MS / 1000;
      pthread_cond_timedwait(&w->cond, &w->lock, &due);
      w->idle = false;
      /* Readers fail until the environment is opened again (or the map a
       * CLI grew is adopted): do not wait for a write to do it. */
      if (atomic_load(&w->store->broken) || atomic_load(&w->store->resized)) {
        pthread_mutex_unlock(&w->lock);
        capstan_store_adopt_map(w->store);
        reopen_if_broken(w);
        pthread_mutex_lock(&w->lock);
      }
    }
    if (w->queue_head == NULL) break; /* stopping and drained */
    wait_for_spacing(w);
    write_req_t *batch = w->queue_head;
    w->queue_head = w->queue_tail = NULL;
    pthread_mutex_unlock(&w->lock);

    size_t n = 0;
    write_req_t *last = NULL;
    for (write_req_t *r = batch; r != NULL; r = r->next) {
      n++;
      last = r;
    }
    clock_gettime(CLOCK_MONOTONIC, &w->last_commit); /* the condvar's clock */
    write_batch(w, batch, n);

    pthread_mutex_lock(&w->lock);
    if (w->done_tail != NULL) {
      w->done_tail->next = batch;
    } else {
      w->done_head = batch;
    }
    w->done_tail = last;
    uv_async_send(&w->async);
  }
  pthread_mutex_unlock(&w->lock);
  return NULL;
}

static void run_done(writer_t *w) {
  pthread_mutex_lock(&w->lock);
  write_req_t *r = w->done_head;
  w->done_head = w->done_tail = NULL;
  pthread_mutex_unlock(&w->lock);
  while (r != NULL) {
    write_req_t *next = r->next;
    if (r->done != NULL) r->done(r->arg, r->status);
    free(r);
    r = next;
  }
}

static void on_async(uv_async_t *h) {
  run_done(h->data);
}

static void on_async_closed(uv_handle_t *h) {
  writer_t *w = h->data;
  pthread_mutex_destroy(&w->lock);
  pthread_cond_destroy(&w->cond);
  free(w);
}

static double gauge_reachable(void *arg) {
  return capstan_store_reachable(arg) ? 1 : 0;
}

static double gauge_leader(void *arg) {
  return capstan_store_leader(arg) ? 1 : 0;
}

int capstan_store_writer_start(capstan_store_t *store, uv_loop_t *loop) {
  if (store == NULL || loop == NULL || store->writer != NULL) return CAPSTAN_EINVAL;
  /* A server on a shared store hears the other nodes' commits. */
  if (store->pg != NULL && capstan_pg_listen_start(store->pg) != 0) return CAPSTAN_ENOMEM;
  /* On LMDB both are 1: the store is local, and the node is alone. */
  capstan_metrics_gauge_fn("capstan_store_reachable",
                           "1 while the store answers (a shared PostgreSQL database: 0 while this "
                           "node cannot reach it)",
                           "", gauge_reachable, store);
  capstan_metrics_gauge_fn("capstan_cluster_leader",
                           "1 on the node that runs the once-only work of the store (on LMDB, the "
                           "only node)",
                           "", gauge_leader, store);
  writer_t *w = calloc(1, sizeof(*w));
  if (w == NULL) return CAPSTAN_ENOMEM;
  w->store = store;
  pthread_mutex_init(&w->lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&w->cond, &ca);
  pthread_condattr_destroy(&ca);
  int rc = uv_async_init(loop, &w->async, on_async);
  if (rc != 0) {
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    free(w);
    return rc;
  }
  w->async.data = w;
  register_metrics();
  rc = pthread_create(&w->thread, NULL, writer_main, w);
  if (rc != 0) {
    uv_close((uv_handle_t *)&w->async, on_async_closed);
    return -rc;
  }
  pthread_mutex_lock(&g_gauge_lock);
  atomic_store(&g_gauge_store, store);
  pthread_mutex_unlock(&g_gauge_lock);
  store->writer = w;
  rc = capstan_store_readers_start(store, loop);
  if (rc != 0) {
    capstan_store_writer_stop(store);
    return rc;
  }
  return 0;
}

int capstan_store_submit(capstan_store_t *store, capstan_store_write_fn fn, void *arg,
                         capstan_store_done_fn done) {
  return capstan_store_submit_reading(store, fn, arg, done, NULL, 0);
}

int capstan_store_submit_reading(capstan_store_t *store, capstan_store_write_fn fn, void *arg,
                                 capstan_store_done_fn done, const capstan_store_key_t *keys,
                                 size_t nkeys) {
  if (store == NULL || fn == NULL || nkeys > CAPSTAN_STORE_SUBMIT_KEYS_MAX) return CAPSTAN_EINVAL;
  writer_t *w = store->writer;
  if (w == NULL) return CAPSTAN_EINVAL;
  write_req_t *r = calloc(1, sizeof(*r));
  if (r == NULL) return CAPSTAN_ENOMEM;
  r->fn = fn;
  r->arg = arg;
  r->done = done;
  for (size_t i = 0; i < nkeys; i++) r->keys[i] = keys[i];
  r->nkeys = nkeys;
  pthread_mutex_lock(&w->lock);
  if (w->stopping) {
    pthread_mutex_unlock(&w->lock);
    free(r);
    return CAPSTAN_EINVAL;
  }
  if (w->queue_tail != NULL) {
    w->queue_tail->next = r;
  } else {
    w->queue_head = r;
  }
  w->queue_tail = r;
  /* Only an idle writer needs waking; a busy or spacing one takes the
   * request with its next batch. */
  if (w->idle) pthread_cond_signal(&w->cond);
  pthread_mutex_unlock(&w->lock);
  return 0;
}

bool capstan_store_available(capstan_store_t *store) {
  writer_t *w = store->writer;
  /* Broken counts from the first transaction that met it, which may come
   * before the writer has noted the failed commit. */
  return !atomic_load(&store->broken) && (w == NULL || !atomic_load(&w->outage));
}

uint64_t capstan_store_failed_batches(capstan_store_t *store) {
  writer_t *w = store->writer;
  return w == NULL ? 0 : atomic_load(&w->failed_batches);
}

void capstan_store_writer_stop(capstan_store_t *store) {
  if (store == NULL || store->writer == NULL) return;
  /* Readers first: what their done callbacks do may queue writes. */
  capstan_store_readers_stop(store);
  writer_t *w = store->writer;
  pthread_mutex_lock(&w->lock);
  w->stopping = true;
  pthread_cond_signal(&w->cond);
  pthread_mutex_unlock(&w->lock);
  pthread_join(w->thread, NULL);
  run_done(w);
  pthread_mutex_lock(&g_gauge_lock);
  if (atomic_load(&g_gauge_store) == store) atomic_store(&g_gauge_store, NULL);
  pthread_mutex_unlock(&g_gauge_lock);
  store->writer = NULL;
  uv_close((uv_handle_t *)&w->async, on_async_closed);
}
