#include "core/base/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/base/log.h"

typedef enum { KIND_COUNTER, KIND_GAUGE, KIND_GAUGE_FN, KIND_HISTOGRAM } metric_kind_t;

struct capstan_metric {
  metric_kind_t kind;
  char *name;
  char *help;
  char *labels;
  /* counters and gauges: value as double bits, updated by CAS */
  _Atomic uint64_t value_bits;
  capstan_metric_fn fn;
  void *fn_arg;
  int fn_counter; /* KIND_GAUGE_FN rendered as a counter (capstan_metrics_counter_fn) */
  size_t nbounds;
  double bounds[CAPSTAN_METRICS_MAX_BUCKETS];
  _Atomic uint64_t buckets[CAPSTAN_METRICS_MAX_BUCKETS + 1];
  _Atomic uint64_t count;
  struct capstan_metric *next;
};

const double capstan_buckets_fast[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                       0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
const size_t capstan_buckets_fast_n = sizeof(capstan_buckets_fast) / sizeof(double);
const double capstan_buckets_slow[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1,    2.5,  5,   10,
                                       30,   60,   120, 300,  600, 1200, 1800, 3600};
const size_t capstan_buckets_slow_n = sizeof(capstan_buckets_slow) / sizeof(double);

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static capstan_metric_t *g_head, *g_tail;

static uint64_t to_bits(double v) {
  uint64_t b;
  memcpy(&b, &v, sizeof(b));
  return b;
}
static double from_bits(uint64_t b) {
  double v;
  memcpy(&v, &b, sizeof(v));
  return v;
}

static capstan_metric_t *register_metric(metric_kind_t kind, const char *name, const char *help,
                                         const char *labels) {
  if (labels == NULL) labels = "";
  pthread_mutex_lock(&g_lock);
  capstan_metric_t *m;
  for (m = g_head; m != NULL; m = m->next) {
    if (strcmp(m->name, name) != 0) continue;
    if (m->kind != kind) {
      LOG_ERROR("event=metric_type_conflict name=%s", name);
      pthread_mutex_unlock(&g_lock);
      return NULL;
    }
    if (strcmp(m->labels, labels) == 0) {
      pthread_mutex_unlock(&g_lock);
      return m;
    }
  }
  m = calloc(1, sizeof(*m));
  if (m == NULL) goto err;
  m->kind = kind;
  m->name = strdup(name);
  m->help = strdup(help ? help : "");
  m->labels = strdup(labels);
  if (!m->name || !m->help || !m->labels) goto err;
  /* Keep series of one family together so HELP/TYPE print once. */
  capstan_metric_t *last_of_family = NULL;
  for (capstan_metric_t *it = g_head; it != NULL; it = it->next) {
    if (strcmp(it->name, name) == 0) last_of_family = it;
  }
  if (last_of_family != NULL) {
    m->next = last_of_family->next;
    last_of_family->next = m;
    if (g_tail == last_of_family) g_tail = m;
  } else if (g_tail == NULL) {
    g_head = g_tail = m;
  } else {
    g_tail->next = m;
    g_tail = m;
  }
  pthread_mutex_unlock(&g_lock);
  return m;
err:
  pthread_mutex_unlock(&g_lock);
  if (m) {
    free(m->name);
    free(m->help);
    free(m->labels);
    free(m);
  }
  return NULL;
}

capstan_metric_t *capstan_metrics_counter(const char *name, const char *help, const char *labels) {
  return register_metric(KIND_COUNTER, name, help, labels);
}

capstan_metric_t *capstan_metrics_gauge(const char *name, const char *help, const char *labels) {
  return register_metric(KIND_GAUGE, name, help, labels);
}

capstan_metric_t *capstan_metrics_gauge_fn(const char *name, const char *help, const char *labels,
                                           capstan_metric_fn fn, void *arg) {
  capstan_metric_t *m = register_metric(KIND_GAUGE_FN, name, help, labels);
  if (m != NULL) {
    m->fn = fn;
    m->fn_arg = arg;
  }
  return m;
}

capstan_metric_t *capstan_metrics_counter_fn(const char *name, const char *help, const char *labels,
                                             capstan_metric_fn fn, void *arg) {
  capstan_metric_t *m = capstan_metrics_gauge_fn(name, help, labels, fn, arg);
  if (m != NULL) m->fn_counter = 1;
  return m;
}

capstan_metric_t *capstan_metrics_histogram(const char *name, const char *help, const char *labels,
                                            const double *bounds, size_t nbounds) {
  if (nbounds > CAPSTAN_METRICS_MAX_BUCKETS) nbounds = CAPSTAN_METRICS_MAX_BUCKETS;
  capstan_metric_t *m = register_metric(KIND_HISTOGRAM, name, help, labels);
  if (m != NULL && m->nbounds == 0) {
    memcpy(m->bounds, bounds, nbounds * sizeof(double));
    m->nbounds = nbounds;
  }
  return m;
}

static void atomic_add_double(_Atomic uint64_t *bits, double v) {
  uint64_t old = atomic_load_explicit(bits, memory_order_relaxed);
  while (!atomic_compare_exchange_weak_explicit(bits, &old, to_bits(from_bits(old) + v),
                                                memory_order_relaxed, memory_order_relaxed)) {
  }
}

void capstan_metric_inc(capstan_metric_t *m) {
  capstan_metric_add(m, 1);
}

void capstan_metric_add(capstan_metric_t *m, double v) {
  if (m == NULL) return;
  atomic_add_double(&m->value_bits, v);
}

void capstan_metric_set(capstan_metric_t *m, double v) {
  if (m == NULL) return;
  atomic_store_explicit(&m->value_bits, to_bits(v), memory_order_relaxed);
}

void capstan_metric_observe(capstan_metric_t *m, double v) {
  if (m == NULL || m->kind != KIND_HISTOGRAM) return;
  size_t i = 0;
  while (i < m->nbounds && v > m->bounds[i]) i++;
  atomic_fetch_add_explicit(&m->buckets[i], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&m->count, 1, memory_order_relaxed);
  atomic_add_double(&m->value_bits, v);
}

double capstan_metric_value(const capstan_metric_t *m) {
  if (m == NULL) return 0;
  if (m->kind == KIND_GAUGE_FN) return m->fn(m->fn_arg);
  return from_bits(
      atomic_load_explicit(&((capstan_metric_t *)m)->value_bits, memory_order_relaxed));
}

uint64_t capstan_metric_count(const capstan_metric_t *m) {
  return m == NULL ? 0
                   : atomic_load_explicit(&((capstan_metric_t *)m)->count, memory_order_relaxed);
}

/* A growable output buffer for rendering. */
typedef struct {
  char *data;
  size_t len, cap;
  int failed;
} out_t;

__attribute__((format(printf, 2, 3))) static void outf(out_t *o, const char *fmt, ...) {
  if (o->failed) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->data + o->len, o->cap - o->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      o->failed = 1;
      return;
    }
    if ((size_t)n < o->cap - o->len) {
      o->len += (size_t)n;
      return;
    }
    size_t cap = o->cap * 2 + (size_t)n + 1;
    char *d = realloc(o->data, cap);
    if (d == NULL) {
      o->failed = 1;
      return;
    }
    o->data = d;
    o->cap = cap;
  }
}

static void format_value(char *buf, size_t n, double v) {
  if (isinf(v)) {
    snprintf(buf, n, v > 0 ? "+Inf" : "-Inf");
  } else if (v == floor(v) && fabs(v) < 1e15) {
    snprintf(buf, n, "%.0f", v);
  } else {
    snprintf(buf, n, "%.9g", v);
  }
}

static void render_series(out_t *o, const capstan_metric_t *m) {
  char v[64];
  const char *sep = m->labels[0] ? "," : "";
  if (m->kind != KIND_HISTOGRAM) {
    format_value(v, sizeof(v), capstan_metric_value(m));
    if (m->labels[0])
      outf(o, "%s{%s} %s\n", m->name, m->labels, v);
    else
      outf(o, "%s %s\n", m->name, v);
    return;
  }
  uint64_t cum = 0;
  for (size_t i = 0; i <= m->nbounds; i++) {
    cum += atomic_load_explicit(&((capstan_metric_t *)m)->buckets[i], memory_order_relaxed);
    if (i < m->nbounds)
      format_value(v, sizeof(v), m->bounds[i]);
    else
      snprintf(v, sizeof(v), "+Inf");
    outf(o, "%s_bucket{%s%sle=\"%s\"} %llu\n", m->name, m->labels, sep, v, (unsigned long long)cum);
  }
  format_value(v, sizeof(v), capstan_metric_value(m));
  if (m->labels[0]) {
    outf(o, "%s_sum{%s} %s\n%s_count{%s} %llu\n", m->name, m->labels, v, m->name, m->labels,
         (unsigned long long)capstan_metric_count(m));
  } else {
    outf(o, "%s_sum %s\n%s_count %llu\n", m->name, v, m->name,
         (unsigned long long)capstan_metric_count(m));
  }
}

int capstan_metrics_render(char **out, size_t *len) {
  char *buf = NULL;
  size_t cap = 0;
  int rc = capstan_metrics_render_into(&buf, &cap, len);
  if (rc < 0) {
    free(buf);
    return rc;
  }
  *out = buf;
  return 0;
}

int capstan_metrics_render_into(char **buf, size_t *cap, size_t *len) {
  out_t o = {.data = *buf, .cap = *cap};
  if (o.data == NULL || o.cap == 0) {
    o.data = malloc(4096);
    if (o.data == NULL) return CAPSTAN_ENOMEM;
    o.cap = 4096;
  }
  static const char *const kTypes[] = {"counter", "gauge", "gauge", "histogram"};
  pthread_mutex_lock(&g_lock);
  const char *family = NULL;
  for (capstan_metric_t *m = g_head; m != NULL; m = m->next) {
    if (family == NULL || strcmp(family, m->name) != 0) {
      outf(&o, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name,
           m->fn_counter ? "counter" : kTypes[m->kind]);
      family = m->name;
    }
    render_series(&o, m);
  }
  pthread_mutex_unlock(&g_lock);
  *buf = o.data;
  *cap = o.cap;
  if (o.failed) return CAPSTAN_ENOMEM;
  *len = o.len;
  return 0;
}

void capstan_metrics_foreach(capstan_metrics_visit_fn fn, void *arg) {
  static const capstan_metric_type_t kTypes[] = {CAPSTAN_METRIC_COUNTER, CAPSTAN_METRIC_GAUGE,
                                                 CAPSTAN_METRIC_GAUGE, CAPSTAN_METRIC_HISTOGRAM};
  pthread_mutex_lock(&g_lock);
  for (capstan_metric_t *m = g_head; m != NULL; m = m->next) {
    fn(arg, m->name, m->labels, m->fn_counter ? CAPSTAN_METRIC_COUNTER : kTypes[m->kind], m);
  }
  pthread_mutex_unlock(&g_lock);
}

double capstan_now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
