/* The census reads device records (storage/devices.h): it is one of the
 * files that map records to the plain structs of a handler. */
#include "handlers/admin/census.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "core/ca/requests.h"
#include "core/identities.h"
#include "core/pki/pki.h"
#include "core/settings.h"
#include "storage/devices.h"

#define X(id)                                                                         \
  _Static_assert((int)CAPSTAN_CENSUS_##id == (int)CAPSTAN__OP_STATUS__OP_STATUS_##id, \
                 "census status " #id " is the record's");
CAPSTAN_CENSUS_STATUSES(X)
#undef X

const char *capstan_census_status_name(capstan_census_status_t s) {
  return capstan_op_status_name((Capstan__OpStatus)s);
}

/* ---- The scan ---------------------------------------------------------- */

/* Distinct reasons counted during a scan before the rest go to "other". */
#define SCAN_REASONS 64

typedef struct scan {
  capstan_census_t *out;
  capstan_census_reason_t reasons[SCAN_REASONS];
  size_t n_reasons;
} scan_t;

static void copy_str(char *dst, size_t cap, const char *src) {
  snprintf(dst, cap, "%s", src != NULL ? src : "");
}

static void fill(capstan_census_device_t *e, const Capstan__Device *d, int64_t since) {
  copy_str(e->name, sizeof(e->name), d->name);
  copy_str(e->operation, sizeof(e->operation), capstan_operation_name(d->operation));
  e->since = since;
  e->attempts = d->attempts;
  copy_str(e->reason, sizeof(e->reason), d->status_reason);
}

/* Whether a device at |since| named |name| goes before |e| in a list kept
 * oldest first (|oldest|) or newest first; names break ties. */
static int before(const capstan_census_device_t *e, int64_t since, const char *name, int oldest) {
  if (since != e->since) return oldest ? since < e->since : since > e->since;
  return strcmp(name, e->name) < 0;
}

/* Keeps the CAPSTAN_CENSUS_TOP first devices of a list in order. */
static void top_insert(capstan_census_device_t *list, size_t *n, const Capstan__Device *d,
                       int64_t since, int oldest) {
  size_t pos = *n;
  while (pos > 0 && before(&list[pos - 1], since, d->name, oldest)) pos--;
  if (pos >= CAPSTAN_CENSUS_TOP) return;
  size_t last = *n < CAPSTAN_CENSUS_TOP ? *n : CAPSTAN_CENSUS_TOP - 1;
  memmove(&list[pos + 1], &list[pos], (last - pos) * sizeof(*list));
  fill(&list[pos], d, since);
  if (*n < CAPSTAN_CENSUS_TOP) (*n)++;
}

static void count_reason(scan_t *s, const char *reason) {
  if (reason == NULL || reason[0] == '\0') {
    s->out->other_reasons++;
    return;
  }
  for (size_t i = 0; i < s->n_reasons; i++) {
    if (strncmp(s->reasons[i].reason, reason, CAPSTAN_CENSUS_REASON_MAX - 1) == 0) {
      s->reasons[i].count++;
      return;
    }
  }
  if (s->n_reasons == SCAN_REASONS) {
    s->out->other_reasons++;
    return;
  }
  copy_str(s->reasons[s->n_reasons].reason, CAPSTAN_CENSUS_REASON_MAX, reason);
  s->reasons[s->n_reasons++].count = 1;
}

static int by_count(const void *a, const void *b) {
  const capstan_census_reason_t *x = a, *y = b;
  if (x->count != y->count) return x->count > y->count ? -1 : 1;
  return strcmp(x->reason, y->reason);
}

static int64_t first_set(int64_t a, int64_t b, int64_t c) {
  return a != 0 ? a : b != 0 ? b : c;
}

static int count_device(const Capstan__Device *d, void *arg) {
  scan_t *s = arg;
  capstan_census_t *c = s->out;
  c->total++;
  if ((unsigned)d->status < CAPSTAN_CENSUS_NSTATUS) c->by_status[d->status]++;
  switch (d->status) {
    case CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS:
      top_insert(c->slowest, &c->n_slowest, d,
                 first_set(d->last_attempt_at, d->status_changed_at, d->updated_at), 1);
      break;
    case CAPSTAN__OP_STATUS__OP_STATUS_FAILED:
      top_insert(c->failures, &c->n_failures, d,
                 first_set(d->status_changed_at, d->last_attempt_at, d->updated_at), 0);
      count_reason(s, d->status_reason);
      break;
    default:
      break;
  }
  return 0;
}

static void read_capf(capstan_txn_t *txn, capstan_census_capf_t *out) {
  capstan_identity_t id = {0};
  memset(out, 0, sizeof(*out));
  if (capstan_identity_get(txn, CAPSTAN_IDENTITY_CAPF, &id) != 0) return;
  char *dn = NULL;
  if (capstan_pki_dn_string(X509_get_subject_name(id.cert), &dn) == 0) {
    copy_str(out->subject, sizeof(out->subject), dn);
  }
  free(dn);
  dn = NULL;
  if (capstan_pki_dn_string(X509_get_issuer_name(id.cert), &dn) == 0) {
    copy_str(out->issuer, sizeof(out->issuer), dn);
  }
  free(dn);
  capstan_pki_cert_validity(id.cert, &out->not_before, &out->not_after);
  EVP_PKEY *pub = X509_get_pubkey(id.cert);
  capstan_pki_key_name(pub, out->key, sizeof(out->key));
  EVP_PKEY_free(pub);
  out->self_signed = capstan_pki_is_self_signed(id.cert);
  out->chain = id.chain != NULL ? sk_X509_num(id.chain) : 0;
  out->present = 1;
  capstan_identity_cleanup(&id);
}

static int read_issuer(capstan_txn_t *txn, capstan_census_issuer_t *out) {
  memset(out, 0, sizeof(*out));
  capstan_settings_t settings;
  int rc = capstan_settings_read(txn, &settings);
  if (rc < 0) return rc;
  out->issuer = settings.issuer;
  Capstan__CaConfig *cfg = NULL;
  rc = capstan_store_ca_config_get(txn, &cfg);
  if (rc == 0) {
    copy_str(out->ca_url, sizeof(out->ca_url), cfg->url != NULL ? cfg->url : "");
    capstan__ca_config__free_unpacked(cfg, NULL);
  } else if (rc != CAPSTAN_ENOENT) {
    return rc;
  }
  Capstan__CaHealth *h = NULL;
  rc = capstan_store_ca_health_get(txn, &h);
  if (rc == CAPSTAN_ENOENT) return 0;
  if (rc < 0) return rc;
  out->has_health = 1;
  out->last_success_at = h->last_success_at;
  out->last_error_at = h->last_error_at;
  copy_str(out->last_error, sizeof(out->last_error), h->last_error != NULL ? h->last_error : "");
  out->last_latency_ms = h->last_latency_ms;
  capstan__ca_health__free_unpacked(h, NULL);
  return 0;
}

static int scan_txn(capstan_txn_t *txn, void *arg) {
  scan_t *s = arg;
  int rc = capstan_store_device_iterate(txn, count_device, s);
  if (rc < 0) return rc;
  read_capf(txn, &s->out->capf);
  rc = read_issuer(txn, &s->out->issuer);
  if (rc < 0) return rc;
  return capstan_csr_count_pending(txn, &s->out->csr_pending, &s->out->csr_oldest_at);
}

int capstan_census_scan(capstan_store_t *store, capstan_census_t *out) {
  memset(out, 0, sizeof(*out));
  scan_t *s = calloc(1, sizeof(*s));
  if (s == NULL) return CAPSTAN_ENOMEM;
  s->out = out;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  out->at = (int64_t)tv.tv_sec;
  out->at_mono = capstan_now_seconds();
  out->txnid = capstan_store_txnid(store);
  int rc = capstan_store_read(store, scan_txn, s);
  if (rc == 0) {
    qsort(s->reasons, s->n_reasons, sizeof(s->reasons[0]), by_count);
    size_t keep = s->n_reasons < CAPSTAN_CENSUS_REASONS ? s->n_reasons : CAPSTAN_CENSUS_REASONS;
    memcpy(out->reasons, s->reasons, keep * sizeof(s->reasons[0]));
    out->n_reasons = keep;
    for (size_t i = keep; i < s->n_reasons; i++) out->other_reasons += s->reasons[i].count;
  }
  out->scan_seconds = capstan_now_seconds() - out->at_mono;
  free(s);
  return rc;
}

/* ---- The cache --------------------------------------------------------- */

typedef struct waiter {
  struct waiter *next;
  capstan_census_fn fn;
  void *arg;
} waiter_t;

struct capstan_census_cache {
  uv_loop_t *loop;
  capstan_store_t *store;
  capstan_census_t *latest; /* NULL until the first scan succeeds */
  capstan_census_t *next;   /* filled by the worker */
  int next_rc;
  uv_work_t work;
  int running;
  waiter_t *head, *tail; /* waiting for the running scan */
  int freeing;
  void (*done)(void *arg);
  void *done_arg;
};

int capstan_census_cache_new(uv_loop_t *loop, capstan_store_t *store,
                             capstan_census_cache_t **out) {
  capstan_census_cache_t *c = calloc(1, sizeof(*c));
  if (c == NULL) return CAPSTAN_ENOMEM;
  c->next = calloc(1, sizeof(*c->next));
  if (c->next == NULL) {
    free(c);
    return CAPSTAN_ENOMEM;
  }
  c->loop = loop;
  c->store = store;
  c->work.data = c;
  *out = c;
  return 0;
}

static void finish_free(capstan_census_cache_t *c) {
  void (*done)(void *) = c->done;
  void *arg = c->done_arg;
  free(c->latest);
  free(c->next);
  free(c);
  if (done) done(arg);
}

static void work_run(uv_work_t *req) {
  capstan_census_cache_t *c = req->data;
  c->next_rc = capstan_census_scan(c->store, c->next);
}

static void work_done(uv_work_t *req, int status) {
  capstan_census_cache_t *c = req->data;
  c->running = 0;
  int rc = status < 0 ? status : c->next_rc;
  if (rc == 0) {
    capstan_census_t *old = c->latest;
    c->latest = c->next;
    c->next = old != NULL ? old : calloc(1, sizeof(*c->next)); /* NULL: start_scan retries */
  } else {
    LOG_WARN("event=status_census_failed error=%s", capstan_strerror(rc));
  }
  /* Detach first: a callback may ask again. */
  waiter_t *w = c->head;
  c->head = c->tail = NULL;
  while (w != NULL) {
    waiter_t *nx = w->next;
    /* A failed scan still answers with the last good census. */
    if (c->latest != NULL) {
      w->fn(w->arg, c->latest, 0);
    } else {
      w->fn(w->arg, NULL, rc < 0 ? rc : CAPSTAN_EIO);
    }
    free(w);
    w = nx;
  }
  if (c->freeing) finish_free(c);
}

static int start_scan(capstan_census_cache_t *c) {
  if (c->next == NULL) {
    c->next = calloc(1, sizeof(*c->next));
    if (c->next == NULL) return CAPSTAN_ENOMEM;
  }
  int rc = uv_queue_work(c->loop, &c->work, work_run, work_done);
  if (rc < 0) return rc;
  c->running = 1;
  return 0;
}

int capstan_census_get(capstan_census_cache_t *c, double max_age, capstan_census_fn fn, void *arg) {
  capstan_census_t *l = c->latest;
  if (l != NULL && !c->freeing &&
      (capstan_store_txnid(c->store) == l->txnid || capstan_now_seconds() - l->at_mono < max_age)) {
    fn(arg, l, 0);
    return 0;
  }
  if (!c->running) {
    int rc = c->freeing ? CAPSTAN_EINVAL : start_scan(c);
    if (rc < 0) {
      if (l == NULL) return rc;
      fn(arg, l, 0); /* stale beats nothing */
      return 0;
    }
  }
  waiter_t *w = calloc(1, sizeof(*w));
  if (w == NULL) {
    if (l == NULL) return CAPSTAN_ENOMEM;
    fn(arg, l, 0);
    return 0;
  }
  w->fn = fn;
  w->arg = arg;
  if (c->tail) {
    c->tail->next = w;
  } else {
    c->head = w;
  }
  c->tail = w;
  return 0;
}

void capstan_census_cache_free(capstan_census_cache_t *c, void (*done)(void *arg), void *arg) {
  if (c == NULL) {
    if (done) done(arg);
    return;
  }
  c->freeing = 1;
  c->done = done;
  c->done_arg = arg;
  if (!c->running) finish_free(c);
}
