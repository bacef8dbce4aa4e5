/* Reads off the loop thread. On a shared PostgreSQL store every read is a
 * network round trip: a phone's session that read its device on the loop
 * stopped every other session for that long (about a tenth of the loop's
 * time at 1,000 concurrent phones). A few reader threads run such reads
 * and complete them on the loop thread, as the writer does its writes. On
 * LMDB a read is a lookup in mapped memory and stays on the loop. */
#include <pthread.h>
#include <stdlib.h>

#include "core/base/error.h"
#include "storage/internal.h"
#include "storage/pg_store.h"

/* Reads waiting on the network at once. Each holds one pooled database
 * connection while it runs; the crypto pool is not used for them, so a
 * read never waits behind signatures and never holds up one. */
#define READER_THREADS 4

typedef struct read_req {
  capstan_store_txn_fn fn;
  capstan_store_read_done_fn done;
  void *arg;
  int status;
  struct read_req *next;
} read_req_t;

/* Apart from the store for the same reason as the writer: its uv_async_t
 * outlives capstan_store_readers_stop until libuv's close callback. */
struct reader {
  capstan_store_t *store;
  uv_async_t async;
  pthread_t threads[READER_THREADS];
  size_t started;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  read_req_t *queue_head, *queue_tail; /* submitted, not yet read */
  read_req_t *done_head, *done_tail;   /* read, done not yet called */
  bool stopping;
};

static void *reader_main(void *arg) {
  reader_t *r = arg;
  pthread_mutex_lock(&r->lock);
  for (;;) {
    while (r->queue_head == NULL && !r->stopping) pthread_cond_wait(&r->cond, &r->lock);
    read_req_t *q = r->queue_head;
    if (q == NULL) break; /* stopping and drained */
    r->queue_head = q->next;
    if (r->queue_head == NULL) r->queue_tail = NULL;
    pthread_mutex_unlock(&r->lock);

    q->status = capstan_store_read(r->store, q->fn, q->arg);
    q->next = NULL;

    pthread_mutex_lock(&r->lock);
    if (r->done_tail != NULL) {
      r->done_tail->next = q;
    } else {
      r->done_head = q;
    }
    r->done_tail = q;
    uv_async_send(&r->async);
  }
  pthread_mutex_unlock(&r->lock);
  return NULL;
}

static void run_done(reader_t *r) {
  pthread_mutex_lock(&r->lock);
  read_req_t *q = r->done_head;
  r->done_head = r->done_tail = NULL;
  pthread_mutex_unlock(&r->lock);
  while (q != NULL) {
    read_req_t *next = q->next;
    q->done(q->arg, q->status);
    free(q);
    q = next;
  }
}

static void on_async(uv_async_t *h) {
  run_done(h->data);
}

static void on_async_closed(uv_handle_t *h) {
  reader_t *r = h->data;
  pthread_mutex_destroy(&r->lock);
  pthread_cond_destroy(&r->cond);
  free(r);
}

/* Ends the threads after every queued read (each bounded: a read
 * statement times out after 30 s, pg_store.c; once the database is known
 * to be down they fail at once), calls every done, and closes the handle. */
static void readers_end(reader_t *r) {
  pthread_mutex_lock(&r->lock);
  r->stopping = true;
  pthread_cond_broadcast(&r->cond);
  pthread_mutex_unlock(&r->lock);
  for (size_t i = 0; i < r->started; i++) pthread_join(r->threads[i], NULL);
  run_done(r);
  uv_close((uv_handle_t *)&r->async, on_async_closed);
}

int capstan_store_readers_start(capstan_store_t *store, uv_loop_t *loop) {
  if (store->reader != NULL) return CAPSTAN_EINVAL;
  if (store->pg == NULL) return 0; /* LMDB: reads stay on the loop */
  reader_t *r = calloc(1, sizeof(*r));
  if (r == NULL) return CAPSTAN_ENOMEM;
  r->store = store;
  pthread_mutex_init(&r->lock, NULL);
  pthread_cond_init(&r->cond, NULL);
  int rc = uv_async_init(loop, &r->async, on_async);
  if (rc != 0) {
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->cond);
    free(r);
    return rc;
  }
  r->async.data = r;
  for (; r->started < READER_THREADS; r->started++) {
    rc = pthread_create(&r->threads[r->started], NULL, reader_main, r);
    if (rc != 0) {
      readers_end(r);
      return -rc;
    }
  }
  store->reader = r;
  /* One connection for each reader, the loop thread and the writer. */
  capstan_pg_pool_fill(store->pg, READER_THREADS + 2);
  return 0;
}

void capstan_store_readers_stop(capstan_store_t *store) {
  if (store->reader == NULL) return;
  readers_end(store->reader);
  store->reader = NULL;
}

bool capstan_store_reads_wait(const capstan_store_t *store) {
  return store->reader != NULL;
}

int capstan_store_read_async(capstan_store_t *store, capstan_store_txn_fn fn, void *arg,
                             capstan_store_read_done_fn done) {
  reader_t *r = store->reader;
  if (r == NULL || fn == NULL || done == NULL) return CAPSTAN_EINVAL;
  read_req_t *q = calloc(1, sizeof(*q));
  if (q == NULL) return CAPSTAN_ENOMEM;
  q->fn = fn;
  q->arg = arg;
  q->done = done;
  pthread_mutex_lock(&r->lock);
  if (r->stopping) {
    pthread_mutex_unlock(&r->lock);
    free(q);
    return CAPSTAN_EINVAL;
  }
  if (r->queue_tail != NULL) {
    r->queue_tail->next = q;
  } else {
    r->queue_head = q;
  }
  r->queue_tail = q;
  pthread_cond_signal(&r->cond);
  pthread_mutex_unlock(&r->lock);
  return 0;
}
