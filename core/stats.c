#include "core/stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "core/ca/requests.h"
#include "storage/devices.h"
#include <string.h>

#define EXPIRY_WINDOW_SECONDS (30 * 86400)
/* Every OpStatus value, 0..THROTTLED; labelled by capstan_op_status_name,
 * the spelling of the CLI (`--status in-progress`). */
#define NSTATUS (CAPSTAN__OP_STATUS__OP_STATUS_THROTTLED + 1)

struct capstan_stats {
  uv_loop_t *loop;
  capstan_store_t *store;
  uv_timer_t timer;
  uv_work_t work;
  int running;
  int stopping;
  void (*done)(void *);
  void *done_arg;
  /* Filled on the worker, published on the loop. */
  double by_status[NSTATUS];
  double stale, expiring, certs, devices, csr_pending;
  /* Devices whose "completes by" deadline passed with the operation
   * unfinished: marked expired by a write after the scan. */
  char **overdue;
  size_t n_overdue, cap_overdue;
  int sweeping;
  int ok;
  capstan_metric_t *g_status[NSTATUS], *g_stale, *g_expiring, *g_devices, *g_csr_pending;
};

typedef struct scan {
  capstan_stats_t *st;
  int64_t now;
} scan_t;

static int count_device(const Capstan__Device *d, void *arg) {
  capstan_stats_t *st = ((scan_t *)arg)->st;
  unsigned s = (unsigned)d->status;
  if (s < NSTATUS) st->by_status[s]++;
  st->devices++;
  int open = d->status == CAPSTAN__OP_STATUS__OP_STATUS_PENDING ||
             d->status == CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS ||
             d->status == CAPSTAN__OP_STATUS__OP_STATUS_THROTTLED ||
             d->status == CAPSTAN__OP_STATUS__OP_STATUS_FAILED;
  if (open && d->operation != CAPSTAN__OPERATION__OPERATION_NONE && d->completes_by > 0 &&
      d->completes_by < ((scan_t *)arg)->now) {
    if (st->n_overdue == st->cap_overdue) {
      size_t cap = st->cap_overdue ? st->cap_overdue * 2 : 64;
      char **p = realloc(st->overdue, cap * sizeof(*p));
      if (p == NULL) return 0;
      st->overdue = p;
      st->cap_overdue = cap;
    }
    st->overdue[st->n_overdue] = strdup(d->name);
    if (st->overdue[st->n_overdue]) st->n_overdue++;
  }
  return 0;
}

static void free_overdue(capstan_stats_t *st) {
  for (size_t i = 0; i < st->n_overdue; i++) free(st->overdue[i]);
  st->n_overdue = 0;
}

/* Writer thread: marks the overdue devices expired (re-checked inside the
 * write transaction: a device may have finished meanwhile). */
static int expire_overdue(capstan_txn_t *txn, void *arg) {
  capstan_stats_t *st = arg;
  int64_t now = (int64_t)time(NULL);
  for (size_t i = 0; i < st->n_overdue; i++) {
    Capstan__Device *d = NULL;
    if (capstan_store_device_get(txn, st->overdue[i], &d) < 0) continue;
    int still = (d->status == CAPSTAN__OP_STATUS__OP_STATUS_PENDING ||
                 d->status == CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS ||
                 d->status == CAPSTAN__OP_STATUS__OP_STATUS_THROTTLED ||
                 d->status == CAPSTAN__OP_STATUS__OP_STATUS_FAILED) &&
                d->completes_by > 0 && d->completes_by < now;
    capstan__device__free_unpacked(d, NULL);
    if (!still) continue;
    int rc = capstan_devices_set_status(txn, st->overdue[i], CAPSTAN__OP_STATUS__OP_STATUS_EXPIRED,
                                        "operation deadline passed", now, false);
    if (rc < 0) return rc;
  }
  return 0;
}

static void finish_stop(capstan_stats_t *st);

static void expire_done(void *arg, int status) {
  capstan_stats_t *st = arg;
  if (status == 0 && st->n_overdue > 0) {
    LOG_INFO("event=operations_expired devices=%zu", st->n_overdue);
  }
  free_overdue(st);
  st->sweeping = 0;
  if (st->stopping && !st->running) finish_stop(st);
}

static int count_cert(const Capstan__IssuedCert *c, void *arg) {
  scan_t *scan = arg;
  capstan_stats_t *st = scan->st;
  st->certs++;
  if (c->status == CAPSTAN__CERT_STATUS__CERT_STATUS_STALE) st->stale++;
  if ((c->status == CAPSTAN__CERT_STATUS__CERT_STATUS_INSTALLED ||
       c->status == CAPSTAN__CERT_STATUS__CERT_STATUS_ISSUED) &&
      c->not_after > scan->now && c->not_after - scan->now <= EXPIRY_WINDOW_SECONDS) {
    st->expiring++;
  }
  return 0;
}

static int scan_store(capstan_txn_t *txn, void *arg) {
  int rc = capstan_store_device_iterate(txn, count_device, arg);
  if (rc == 0) rc = capstan_store_cert_iterate(txn, count_cert, arg);
  if (rc == 0) {
    uint64_t pending = 0;
    int64_t oldest = 0;
    rc = capstan_csr_count_pending(txn, &pending, &oldest);
    ((scan_t *)arg)->st->csr_pending = (double)pending;
  }
  return rc;
}

static void work_run(uv_work_t *req) {
  capstan_stats_t *st = req->data;
  for (int i = 0; i < NSTATUS; i++) st->by_status[i] = 0;
  st->stale = st->expiring = st->certs = st->devices = st->csr_pending = 0;
  free_overdue(st);
  scan_t scan = {.st = st, .now = (int64_t)time(NULL)};
  st->ok = capstan_store_read(st->store, scan_store, &scan) == 0;
}

static void on_timer_closed(uv_handle_t *h) {
  capstan_stats_t *st = h->data;
  void (*done)(void *) = st->done;
  void *arg = st->done_arg;
  free_overdue(st);
  free(st->overdue);
  free(st);
  if (done) done(arg);
}

static void finish_stop(capstan_stats_t *st) {
  uv_close((uv_handle_t *)&st->timer, on_timer_closed);
}

static void work_done(uv_work_t *req, int status) {
  capstan_stats_t *st = req->data;
  st->running = 0;
  if (st->stopping) {
    if (!st->sweeping) finish_stop(st);
    return;
  }
  if (status < 0 || !st->ok) return;
  if (st->n_overdue > 0) {
    st->sweeping = 1;
    if (capstan_store_submit(st->store, expire_overdue, st, expire_done) < 0) {
      st->sweeping = 0;
      free_overdue(st);
    }
  }
  for (int i = 0; i < NSTATUS; i++) capstan_metric_set(st->g_status[i], st->by_status[i]);
  capstan_metric_set(st->g_stale, st->stale);
  capstan_metric_set(st->g_expiring, st->expiring);
  capstan_metric_set(st->g_devices, st->devices);
  capstan_metric_set(st->g_csr_pending, st->csr_pending);
}

static void on_timer(uv_timer_t *t) {
  capstan_stats_t *st = t->data;
  if (st->running || st->sweeping) return; /* still busy: skip a beat */
  st->running = 1;
  st->work.data = st;
  if (uv_queue_work(st->loop, &st->work, work_run, work_done) < 0) st->running = 0;
}

int capstan_stats_start(uv_loop_t *loop, capstan_store_t *store, unsigned interval_ms,
                        capstan_stats_t **out) {
  capstan_stats_t *st = calloc(1, sizeof(*st));
  if (st == NULL) return CAPSTAN_ENOMEM;
  st->loop = loop;
  st->store = store;
  char labels[48];
  for (int i = 0; i < NSTATUS; i++) {
    snprintf(labels, sizeof(labels), "status=\"%s\"", capstan_op_status_name((Capstan__OpStatus)i));
    st->g_status[i] = capstan_metrics_gauge(
        "capstan_devices", "Devices by certificate operation status (store scan)", labels);
  }
  st->g_devices =
      capstan_metrics_gauge("capstan_devices_total_records", "Device records in the store", NULL);
  st->g_stale = capstan_metrics_gauge(
      "capstan_certs_stale", "LSCs issued, never confirmed by the phone, superseded", NULL);
  st->g_expiring = capstan_metrics_gauge("capstan_certs_expiring_30d",
                                         "Issued or installed LSCs expiring within 30 days", NULL);
  st->g_csr_pending = capstan_metrics_gauge(
      "capstan_csr_pending", "Phones' certificate requests waiting for a CA (store scan)", NULL);
  uv_timer_init(loop, &st->timer);
  st->timer.data = st;
  uv_timer_start(&st->timer, on_timer, 0, interval_ms);
  *out = st;
  return 0;
}

void capstan_stats_stop(capstan_stats_t *st, void (*done)(void *arg), void *arg) {
  st->stopping = 1;
  st->done = done;
  st->done_arg = arg;
  uv_timer_stop(&st->timer);
  if (!st->running && !st->sweeping) finish_stop(st);
}
