/* Metrics registry, rendered in the Prometheus text exposition format.
 *
 * Modules register their metrics once (at start-up) and keep the returned
 * pointer; updates are lock-free atomics, safe from any thread. Registering
 * the same (name, labels) twice returns the same metric, so a module may
 * look a series up lazily. Labels are a preformatted, fixed string such as
 * `operation="install",result="ok"`: label values must come from a small
 * fixed set (never a device name or an address).
 *
 * Metrics live for the life of the process; there is no unregister. */
#ifndef CAPSTAN_CORE_BASE_METRICS_H
#define CAPSTAN_CORE_BASE_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef struct capstan_metric capstan_metric_t;

/* Computed at scrape time (e.g. LMDB size); runs on the scraping thread. */
typedef double (*capstan_metric_fn)(void *arg);

/* Each returns NULL only on allocation failure or when |name| was already
 * registered with another type (a programming error, logged). */
capstan_metric_t *capstan_metrics_counter(const char *name, const char *help, const char *labels);
capstan_metric_t *capstan_metrics_gauge(const char *name, const char *help, const char *labels);
capstan_metric_t *capstan_metrics_gauge_fn(const char *name, const char *help, const char *labels,
                                           capstan_metric_fn fn, void *arg);
/* A counter computed at scrape time (e.g. the process's CPU seconds): |fn|
 * must return a value that never decreases during the process's life. */
capstan_metric_t *capstan_metrics_counter_fn(const char *name, const char *help, const char *labels,
                                             capstan_metric_fn fn, void *arg);
/* |bounds| are the upper bounds of the buckets, ascending; +Inf is implied.
 * At most CAPSTAN_METRICS_MAX_BUCKETS. */
#define CAPSTAN_METRICS_MAX_BUCKETS 24
capstan_metric_t *capstan_metrics_histogram(const char *name, const char *help, const char *labels,
                                            const double *bounds, size_t nbounds);

/* Standard bucket sets, in seconds. */
extern const double capstan_buckets_fast[]; /* 100us .. 10s, for commits, handshakes */
extern const size_t capstan_buckets_fast_n;
extern const double capstan_buckets_slow[]; /* 10ms .. 1h, for sessions and keygen */
extern const size_t capstan_buckets_slow_n;

/* Updates accept NULL metrics (a failed registration is not fatal). */
void capstan_metric_inc(capstan_metric_t *m);
void capstan_metric_add(capstan_metric_t *m, double v);
void capstan_metric_set(capstan_metric_t *m, double v);
void capstan_metric_observe(capstan_metric_t *m, double v);
double capstan_metric_value(const capstan_metric_t *m);   /* counter/gauge value */
uint64_t capstan_metric_count(const capstan_metric_t *m); /* histogram count */

/* Renders every metric. On success *out is a malloc'd buffer the caller
 * frees and *len its length. */
int capstan_metrics_render(char **out, size_t *len);
/* The same into the caller's malloc'd buffer *buf of *cap bytes (NULL and 0
 * for none), grown as needed: afterwards *buf and *cap describe the buffer,
 * which the caller still owns and frees, on failure too. A buffer kept
 * from one call to the next renders without allocating. */
int capstan_metrics_render_into(char **buf, size_t *cap, size_t *len);

/* Every registered series, in rendering order, for readers inside the
 * process (the status page): |fn| gets the family name, the preformatted
 * labels ("" for none), the type and the series, whose value it may read
 * (capstan_metric_value, capstan_metric_count). Runs under the registry's
 * lock: |fn| must not register metrics. Any thread. */
typedef enum {
  CAPSTAN_METRIC_COUNTER, /* counter_fn series too */
  CAPSTAN_METRIC_GAUGE,   /* gauge_fn series too */
  CAPSTAN_METRIC_HISTOGRAM,
} capstan_metric_type_t;
typedef void (*capstan_metrics_visit_fn)(void *arg, const char *name, const char *labels,
                                         capstan_metric_type_t type, const capstan_metric_t *m);
void capstan_metrics_foreach(capstan_metrics_visit_fn fn, void *arg);

/* Monotonic seconds, for durations. */
double capstan_now_seconds(void);

#endif
