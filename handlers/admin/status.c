#define _GNU_SOURCE /* memmem */
#include "handlers/admin/status.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "core/descriptors.h"
#include "core/memory_shortage.h"
#include "core/settings.h"
#include "handlers/admin/admin.h"
#include "handlers/admin/devices_api.h"
#include "handlers/admin/series.h"

#ifndef CAPSTAN_VERSION
#define CAPSTAN_VERSION "unknown"
#endif

#define JSON_TYPE "application/json; charset=utf-8"
#define SAMPLE_MS 1000
/* One more sample than seconds: the window is between the oldest and the
 * newest. */
#define WINDOW_SAMPLES (CAPSTAN_STATUS_WINDOW_SECONDS + 1)
#define CHART_POINTS (CAPSTAN_STATUS_WINDOW_SECONDS / CAPSTAN_STATUS_CHART_STEP)
/* Limits: each refusal counter's last minute. */
#define LIMIT_SECONDS 60
#define LIMIT_SAMPLES (LIMIT_SECONDS + 1)
#define MAX_LIMITS 48

/* The page (status.html, compiled in by the build) and where the data of
 * the first paint goes. */
extern const char capstan_status_page[];
extern const size_t capstan_status_page_len;
static const char kPageMarker[] = "/*STATUS_JSON*/";
/* The page may load nothing from anywhere but this listener. */
static const char kPageCsp[] =
    "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'";

/* The sampled columns: cumulative counters summed over their series. */
#define STATUS_COLS(X)                                                             \
  X(ENROLLMENTS, "enrollments") /* CAPF sessions that completed their operation */ \
  X(FAILURES, "failures")       /* CAPF sessions that failed (see is_failure) */   \
  X(DOWNLOADS, "downloads")     /* phone files served whole, HTTP and TFTP */      \
  X(RETRY_LATER, "retry_later") /* phones the key generation throttle sent away */ \
  X(REJECTED, "rejected")       /* connections and requests refused by a limit */

enum {
#define X(id, name) COL_##id,
  STATUS_COLS(X)
#undef X
      NCOLS
};
static const char *const kColNames[NCOLS] = {
#define X(id, name) name,
    STATUS_COLS(X)
#undef X
};

/* One refusal counter series ("limits that are biting"). */
typedef struct limit {
  char name[96];
  char labels[160];
  double total;
  capstan_series_t s; /* one column, the last minute */
} limit_t;

struct capstan_status {
  uv_loop_t *loop;
  capstan_store_t *store;
  capstan_census_cache_t *census;
  capstan_devices_api_t api;
  capstan_series_t series;
  limit_t limits[MAX_LIMITS];
  size_t nlimits;
  uv_timer_t timer;
  char node[256];
  void (*done)(void *arg);
  void *done_arg;
};

/* ---- Reading the metrics ------------------------------------------------ */

/* The value of label |key| in |labels| (key="value",...) into |out|; "" when
 * absent. */
static void label_value(const char *labels, const char *key, char *out, size_t cap) {
  size_t klen = strlen(key);
  const char *p = labels;
  out[0] = '\0';
  while (p != NULL && *p != '\0') {
    if (strncmp(p, key, klen) == 0 && p[klen] == '=' && p[klen + 1] == '"') {
      const char *v = p + klen + 2;
      const char *end = strchr(v, '"');
      size_t n = end != NULL ? (size_t)(end - v) : strlen(v);
      if (n >= cap) n = cap - 1;
      memcpy(out, v, n);
      out[n] = '\0';
      return;
    }
    /* Next label: past the closing quote of this value. */
    p = strchr(p, '"');
    if (p != NULL) p = strchr(p + 1, '"');
    if (p != NULL) p = strchr(p, ',');
    if (p != NULL) p++;
  }
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Counters of refusals: every family named *_rejected_total,
 * *_rejections_total or *_refused_total, whatever listener registers it. */
static int is_refusal(const char *name) {
  return ends_with(name, "_rejected_total") || ends_with(name, "_rejections_total") ||
         ends_with(name, "_refused_total");
}

/* CAPF session results that are failures of the phone's operation or
 * session; ok, no_action, retry_later (counted apart) and shutdown are
 * not. */
static int is_failure(const char *result) {
  static const char *const kFailures[] = {"expired",      "unknown_device", "auth_failed",
                                          "failed",       "protocol_error", "timeout",
                                          "disconnected", "tls_failed",     "server_error"};
  for (size_t i = 0; i < sizeof(kFailures) / sizeof(kFailures[0]); i++) {
    if (strcmp(result, kFailures[i]) == 0) return 1;
  }
  return 0;
}

typedef struct reading {
  double cols[NCOLS];
  double sessions_active, keygen_active, keygen_waiting, start_time, files_active;
  capstan_status_t *st; /* when set, the limits are sampled at |t| */
  double t;
} reading_t;

static void track_limit(capstan_status_t *st, const char *name, const char *labels, double v,
                        double t) {
  limit_t *l = NULL;
  for (size_t i = 0; i < st->nlimits; i++) {
    if (strcmp(st->limits[i].name, name) == 0 && strcmp(st->limits[i].labels, labels) == 0) {
      l = &st->limits[i];
      break;
    }
  }
  if (l == NULL) {
    if (st->nlimits == MAX_LIMITS || v == 0) return; /* tracked from its first refusal */
    if (strlen(name) >= sizeof(l->name) || strlen(labels) >= sizeof(l->labels)) return;
    l = &st->limits[st->nlimits];
    if (capstan_series_init(&l->s, LIMIT_SAMPLES, 1) < 0) return;
    strcpy(l->name, name);
    strcpy(l->labels, labels);
    /* It was 0 before: the first refusals count in the last minute. */
    capstan_series_push(&l->s, t - 1, &(double){0});
    st->nlimits++;
  }
  l->total = v;
  capstan_series_push(&l->s, t, &v);
}

static void visit(void *arg, const char *name, const char *labels, capstan_metric_type_t type,
                  const capstan_metric_t *m) {
  reading_t *r = arg;
  if (strncmp(name, "capstan_", 8) != 0 || type == CAPSTAN_METRIC_HISTOGRAM) return;
  double v = capstan_metric_value(m);
  char result[32];
  if (type == CAPSTAN_METRIC_GAUGE) {
    if (strcmp(name, "capstan_capf_sessions_active") == 0) {
      r->sessions_active = v;
    } else if (strcmp(name, "capstan_capf_keygen_active") == 0) {
      r->keygen_active = v;
    } else if (strcmp(name, "capstan_capf_keygen_waiting") == 0) {
      r->keygen_waiting = v;
    } else if (strcmp(name, "capstan_process_start_time_seconds") == 0) {
      r->start_time = v;
    } else if (strcmp(name, "capstan_http_files_active") == 0 ||
               strcmp(name, "capstan_tftp_active_transfers") == 0) {
      r->files_active += v;
    }
    return;
  }
  if (strcmp(name, "capstan_capf_sessions_total") == 0) {
    label_value(labels, "result", result, sizeof(result));
    if (strcmp(result, "ok") == 0) {
      r->cols[COL_ENROLLMENTS] += v;
    } else if (is_failure(result)) {
      r->cols[COL_FAILURES] += v;
    }
  } else if (strcmp(name, "capstan_http_files_requests_total") == 0 ||
             strcmp(name, "capstan_tftp_transfers_total") == 0) {
    label_value(labels, "result", result, sizeof(result));
    if (strcmp(result, "ok") == 0) r->cols[COL_DOWNLOADS] += v;
  } else if (strcmp(name, "capstan_capf_throttled_total") == 0) {
    label_value(labels, "result", result, sizeof(result));
    if (strcmp(result, "retry_later") == 0) {
      r->cols[COL_RETRY_LATER] += v;
      if (r->st != NULL) track_limit(r->st, name, labels, v, r->t);
    }
  } else if (is_refusal(name)) {
    r->cols[COL_REJECTED] += v;
    if (r->st != NULL) track_limit(r->st, name, labels, v, r->t);
  }
}

static void read_metrics(reading_t *r) {
  capstan_metrics_foreach(visit, r);
}

void capstan_status_sample(capstan_status_t *st, double t) {
  reading_t r = {.st = st, .t = t};
  read_metrics(&r);
  capstan_series_push(&st->series, t, r.cols);
}

static void on_timer(uv_timer_t *timer) {
  capstan_status_t *st = timer->data;
  capstan_status_sample(st, capstan_now_seconds());
}

/* ---- Rendering ------------------------------------------------------------ */

static void render_node(capstan_json_t *j, const capstan_status_t *st, const reading_t *r,
                        double now) {
  capstan_json_key(j, "node");
  capstan_json_open(j, '{');
  capstan_json_kstr(j, "name", st->node);
  capstan_json_kstr(j, "version", CAPSTAN_VERSION);
  capstan_json_kint(j, "pid", (int64_t)getpid());
  capstan_json_ktime(j, "started_at", (int64_t)r->start_time);
  capstan_json_kint(j, "uptime_seconds",
                    r->start_time > 0 && now > r->start_time ? (int64_t)(now - r->start_time) : 0);
  capstan_json_close(j, '}');
}

static void render_devices(capstan_json_t *j, const capstan_status_t *st,
                           const capstan_census_t *c) {
  /* The CLI's order (`capstan report status`). */
  static const capstan_census_status_t kOrder[] = {
      CAPSTAN_CENSUS_PENDING,   CAPSTAN_CENSUS_IN_PROGRESS, CAPSTAN_CENSUS_THROTTLED,
      CAPSTAN_CENSUS_SUCCEEDED, CAPSTAN_CENSUS_FAILED,      CAPSTAN_CENSUS_EXPIRED,
      CAPSTAN_CENSUS_NONE};
  capstan_json_key(j, "devices");
  capstan_json_open(j, '{');
  capstan_json_kuint(j, "total", c->total);
  capstan_json_key(j, "by_status");
  capstan_json_open(j, '{');
  for (size_t i = 0; i < sizeof(kOrder) / sizeof(kOrder[0]); i++) {
    capstan_json_kuint(j, capstan_census_status_name(kOrder[i]), c->by_status[kOrder[i]]);
  }
  capstan_json_close(j, '}');
  capstan_json_ktime(j, "counted_at", c->at);
  double age = capstan_now_seconds() - c->at_mono;
  capstan_json_knum(j, "age_seconds", age > 0 ? age : 0, 1);
  capstan_json_knum(j, "scan_ms", c->scan_seconds * 1000, 1);
  /* Unchanged: the counts are those of the store now, whatever their age. */
  capstan_json_kbool(j, "store_changed_since", capstan_store_txnid(st->store) != c->txnid);
  capstan_json_close(j, '}');
}

/* Whether the store takes writes (R26: a full disk, I/O errors or the map
 * at its maximum show here as well as in the log and the metrics). */
static void render_storage(capstan_json_t *j, const capstan_status_t *st) {
  capstan_json_key(j, "storage");
  capstan_json_open(j, '{');
  capstan_json_kbool(j, "writable", capstan_store_available(st->store));
  capstan_json_kuint(j, "failed_batches", capstan_store_failed_batches(st->store));
  capstan_json_kuint(j, "size_bytes", capstan_store_size_bytes(st->store));
  capstan_json_kuint(j, "map_bytes", capstan_store_map_size(st->store));
  capstan_json_kuint(j, "map_max_bytes", capstan_store_map_max(st->store));
  capstan_json_kstr(j, "backend", capstan_store_backend(st->store));
  capstan_json_kbool(j, "reachable", capstan_store_reachable(st->store));
  capstan_json_close(j, '}');
}

/* Every node of the store (several share a PostgreSQL store; on LMDB this
 * one): its heartbeat, and which runs the once-only work. Throttle bounds
 * and the other figures of this page are this node's own. */
static void render_nodes(capstan_json_t *j, const capstan_status_t *st) {
  capstan_store_node_t *nodes = NULL;
  size_t n = 0;
  int err = capstan_store_nodes(st->store, &nodes, &n);
  capstan_json_key(j, "nodes");
  capstan_json_open(j, '[');
  for (size_t i = 0; err == 0 && i < n; i++) {
    const capstan_store_node_t *nd = &nodes[i];
    capstan_json_open(j, '{');
    capstan_json_kstr(j, "name", nd->name);
    capstan_json_kbool(j, "self", nd->self);
    capstan_json_kbool(j, "alive", nd->alive);
    capstan_json_kbool(j, "leader", nd->leader);
    capstan_json_knum(j, "heartbeat_age_seconds", nd->heartbeat_age, 1);
    capstan_json_kint(j, "pid", nd->pid);
    capstan_json_kstr(j, "version", nd->version);
    capstan_json_ktime(j, "started_at", nd->started_at);
    capstan_json_kstr(j, "detail", nd->detail);
    capstan_json_close(j, '}');
  }
  capstan_json_close(j, ']');
  free(nodes);
}

/* The process's own resources (R26): out of descriptors or of memory, each
 * a condition of the whole server, as logged and in the metrics. */
static void render_resources(capstan_json_t *j) {
  capstan_json_key(j, "resources");
  capstan_json_open(j, '{');
  capstan_json_kbool(j, "descriptors_exhausted", capstan_descriptors_exhausted_now());
  capstan_json_kbool(j, "memory_exhausted", capstan_memory_shortage_now());
  capstan_json_close(j, '}');
}

static void render_progress(capstan_json_t *j, const capstan_status_t *st,
                            const capstan_census_t *c, double now) {
  /* Throttled phones come back (RETRY_LATER): they are still to do. */
  uint64_t remaining = c->by_status[CAPSTAN_CENSUS_PENDING] +
                       c->by_status[CAPSTAN_CENSUS_IN_PROGRESS] +
                       c->by_status[CAPSTAN_CENSUS_THROTTLED];
  uint64_t done = c->by_status[CAPSTAN_CENSUS_SUCCEEDED];
  uint64_t failed = c->by_status[CAPSTAN_CENSUS_FAILED];
  uint64_t expired = c->by_status[CAPSTAN_CENSUS_EXPIRED];
  uint64_t scheduled = remaining + done + failed + expired;
  double rate =
      capstan_series_rate(&st->series, COL_ENROLLMENTS, (double)CAPSTAN_STATUS_ETA_SECONDS);
  capstan_json_key(j, "progress");
  capstan_json_open(j, '{');
  capstan_json_kuint(j, "scheduled", scheduled);
  capstan_json_kuint(j, "remaining", remaining);
  capstan_json_kuint(j, "succeeded", done);
  capstan_json_kuint(j, "failed", failed);
  capstan_json_kuint(j, "expired", expired);
  capstan_json_knum(j, "percent_done", scheduled > 0 ? 100.0 * (double)done / (double)scheduled : 0,
                    1);
  capstan_json_knum(j, "rate_per_second", rate, 2);
  capstan_json_kint(j, "rate_window_seconds", CAPSTAN_STATUS_ETA_SECONDS);
  if (remaining == 0) {
    capstan_json_kint(j, "eta_seconds", 0);
    capstan_json_ktime(j, "eta_at", (int64_t)now);
  } else if (rate > 0) {
    double eta = (double)remaining / rate;
    capstan_json_kint(j, "eta_seconds", (int64_t)llround(eta));
    capstan_json_ktime(j, "eta_at", (int64_t)(now + eta));
  } else {
    capstan_json_knull(j, "eta_seconds");
    capstan_json_knull(j, "eta_at");
  }
  capstan_json_close(j, '}');
}

static void render_cols(capstan_json_t *j, const char *key, const capstan_status_t *st,
                        double seconds, int delta) {
  capstan_json_key(j, key);
  capstan_json_open(j, '{');
  for (int i = 0; i < NCOLS; i++) {
    if (delta) {
      capstan_json_knum(j, kColNames[i], capstan_series_delta(&st->series, (size_t)i, seconds), 0);
    } else {
      capstan_json_knum(j, kColNames[i], capstan_series_rate(&st->series, (size_t)i, seconds), 2);
    }
  }
  capstan_json_close(j, '}');
}

static void render_rates(capstan_json_t *j, const capstan_status_t *st, const reading_t *r,
                         double now) {
  const capstan_series_t *s = &st->series;
  double newest = 0, oldest = 0;
  size_t n = capstan_series_count(s);
  capstan_series_at(s, 0, &newest, NULL);
  capstan_series_at(s, n > 0 ? n - 1 : 0, &oldest, NULL);
  capstan_json_key(j, "rates");
  capstan_json_open(j, '{');
  capstan_json_kint(j, "now_seconds", CAPSTAN_STATUS_NOW_SECONDS);
  render_cols(j, "now", st, CAPSTAN_STATUS_NOW_SECONDS, 0);
  capstan_json_kint(j, "window_seconds", (int64_t)(newest - oldest + 0.5));
  render_cols(j, "window", st, CAPSTAN_STATUS_WINDOW_SECONDS, 0);
  capstan_json_key(j, "totals");
  capstan_json_open(j, '{');
  for (int i = 0; i < NCOLS; i++) capstan_json_knum(j, kColNames[i], r->cols[i], 0);
  capstan_json_close(j, '}');
  /* The chart: one point per interval, oldest first. */
  double t[CHART_POINTS], v[CHART_POINTS];
  capstan_json_key(j, "chart");
  capstan_json_open(j, '{');
  capstan_json_kint(j, "step_seconds", CAPSTAN_STATUS_CHART_STEP);
  capstan_json_kint(j, "span_seconds", CAPSTAN_STATUS_WINDOW_SECONDS);
  size_t points = 0;
  double mono_now = capstan_now_seconds();
  for (int i = 0; i < NCOLS; i++) {
    points = capstan_series_steps(s, (size_t)i, CAPSTAN_STATUS_CHART_STEP, t, v, CHART_POINTS);
    capstan_json_key(j, kColNames[i]);
    capstan_json_open(j, '[');
    for (size_t k = 0; k < points; k++) capstan_json_num(j, v[k], 2);
    capstan_json_close(j, ']');
  }
  /* Unix times of the points' ends (the same for every column). */
  capstan_json_key(j, "t");
  capstan_json_open(j, '[');
  for (size_t k = 0; k < points; k++) capstan_json_num(j, now - (mono_now - t[k]), 1);
  capstan_json_close(j, ']');
  capstan_json_close(j, '}');
  capstan_json_close(j, '}');
}

static void render_throttle(capstan_json_t *j, const capstan_status_t *st, const reading_t *r) {
  capstan_json_key(j, "capf");
  capstan_json_open(j, '{');
  capstan_json_knum(j, "sessions_active", r->sessions_active, 0);
  capstan_json_knum(j, "keygen_active", r->keygen_active, 0);
  capstan_json_knum(j, "throttled_now", r->keygen_waiting, 0);
  capstan_json_knum(j, "retry_later_last_minute",
                    capstan_series_delta(&st->series, COL_RETRY_LATER, LIMIT_SECONDS), 0);
  capstan_json_knum(j, "retry_later_total", r->cols[COL_RETRY_LATER], 0);
  capstan_json_knum(j, "file_transfers_active", r->files_active, 0);
  capstan_json_close(j, '}');
}

static void render_device_list(capstan_json_t *j, const char *key,
                               const capstan_census_device_t *list, size_t n, const char *when,
                               double now) {
  capstan_json_key(j, key);
  capstan_json_open(j, '[');
  for (size_t i = 0; i < n; i++) {
    const capstan_census_device_t *d = &list[i];
    capstan_json_open(j, '{');
    capstan_json_kstr(j, "name", d->name);
    capstan_json_kstr(j, "operation", d->operation);
    capstan_json_ktime(j, when, d->since);
    capstan_json_kint(
        j, "seconds",
        d->since > 0 && now > (double)d->since ? (int64_t)(now - (double)d->since) : 0);
    capstan_json_kuint(j, "attempts", d->attempts);
    capstan_json_kstr(j, "reason", d->reason[0] ? d->reason : NULL);
    capstan_json_close(j, '}');
  }
  capstan_json_close(j, ']');
}

static void render_reasons(capstan_json_t *j, const capstan_census_t *c) {
  capstan_json_key(j, "failure_reasons");
  capstan_json_open(j, '[');
  for (size_t i = 0; i < c->n_reasons; i++) {
    capstan_json_open(j, '{');
    capstan_json_kstr(j, "reason", c->reasons[i].reason);
    capstan_json_kuint(j, "count", c->reasons[i].count);
    capstan_json_close(j, '}');
  }
  if (c->other_reasons > 0) {
    capstan_json_open(j, '{');
    capstan_json_knull(j, "reason");
    capstan_json_kuint(j, "count", c->other_reasons);
    capstan_json_close(j, '}');
  }
  capstan_json_close(j, ']');
}

static void render_limits(capstan_json_t *j, const capstan_status_t *st) {
  capstan_json_key(j, "limits");
  capstan_json_open(j, '[');
  for (size_t i = 0; i < st->nlimits; i++) {
    const limit_t *l = &st->limits[i];
    char listener[32] = "", server[32], reason[48];
    /* capstan_<listener>_...: capf, http, tftp; the HTTP servers by name. */
    const char *p = l->name + strlen("capstan_");
    size_t n = strcspn(p, "_");
    if (n >= sizeof(listener)) n = sizeof(listener) - 1;
    memcpy(listener, p, n);
    listener[n] = '\0';
    label_value(l->labels, "server", server, sizeof(server));
    if (server[0] != '\0' && strcmp(server, "phone") != 0) {
      snprintf(listener, sizeof(listener), "%s", server);
    }
    label_value(l->labels, "reason", reason, sizeof(reason));
    if (reason[0] == '\0') label_value(l->labels, "result", reason, sizeof(reason));
    double minute = capstan_series_delta(&l->s, 0, LIMIT_SECONDS);
    capstan_json_open(j, '{');
    capstan_json_kstr(j, "listener", listener);
    capstan_json_kstr(j, "reason", reason);
    capstan_json_kstr(j, "metric", l->name);
    capstan_json_kstr(j, "labels", l->labels);
    capstan_json_knum(j, "total", l->total, 0);
    capstan_json_knum(j, "last_minute", minute, 0);
    capstan_json_kbool(j, "biting", minute > 0);
    capstan_json_close(j, '}');
  }
  capstan_json_close(j, ']');
}

static void render_capf(capstan_json_t *j, const capstan_census_t *c, double now) {
  const capstan_census_capf_t *f = &c->capf;
  capstan_json_key(j, "capf_certificate");
  if (!f->present) {
    capstan_json_null(j);
  } else {
    capstan_json_open(j, '{');
    capstan_json_kstr(j, "subject", f->subject);
    capstan_json_kstr(j, "issuer", f->issuer);
    capstan_json_kstr(j, "key", f->key);
    capstan_json_ktime(j, "not_before", f->not_before);
    capstan_json_ktime(j, "not_after", f->not_after);
    capstan_json_knum(j, "days_left", floor(((double)f->not_after - now) / 86400.0), 0);
    capstan_json_kbool(j, "expired", (double)f->not_after <= now);
    capstan_json_kstr(j, "signed_by", f->self_signed ? "self" : "ca");
    capstan_json_kuint(j, "chain_length", f->chain);
    capstan_json_close(j, '}');
  }
  /* Who signs LSCs (the issuer setting), and how an online CA is doing. */
  const capstan_census_issuer_t *is = &c->issuer;
  capstan_json_key(j, "issuer");
  capstan_json_open(j, '{');
  capstan_json_kstr(j, "mode", capstan_issuer_name(is->issuer));
  char label[320];
  switch (is->issuer) {
    case CAPSTAN_ISSUER_EST:
    case CAPSTAN_ISSUER_MSCS:
      snprintf(label, sizeof(label), "%s %s",
               is->issuer == CAPSTAN_ISSUER_EST ? "EST CA" : "Microsoft CA",
               is->ca_url[0] ? is->ca_url : "(not configured: capstan ca set)");
      break;
    case CAPSTAN_ISSUER_OFFLINE:
      snprintf(label, sizeof(label), "offline CA (capstan csr export / import)");
      break;
    default:
      snprintf(label, sizeof(label), "%s",
               !f->present      ? "CAPF (no certificate)"
               : f->self_signed ? "self-signed CAPF"
                                : "CA-signed CAPF");
      break;
  }
  capstan_json_kstr(j, "label", label);
  capstan_json_key(j, "ca_health");
  if (!CAPSTAN_ISSUER_IS_ONLINE(is->issuer) || !is->has_health) {
    capstan_json_null(j);
  } else {
    capstan_json_open(j, '{');
    capstan_json_ktime(j, "last_success_at", is->last_success_at);
    capstan_json_ktime(j, "last_error_at", is->last_error_at);
    capstan_json_kstr(j, "last_error", is->last_error[0] ? is->last_error : NULL);
    capstan_json_kuint(j, "last_latency_ms", is->last_latency_ms);
    /* Up: the last exchange reached the CA and did not fail. */
    capstan_json_kbool(j, "up",
                       is->last_success_at != 0 && is->last_success_at >= is->last_error_at);
    capstan_json_close(j, '}');
  }
  capstan_json_close(j, '}');
}

/* Requests waiting for a CA (offline: for the operator's `capstan csr
 * export`), and how long the oldest has waited. */
static void render_requests(capstan_json_t *j, const capstan_census_t *c, double now) {
  capstan_json_key(j, "certificate_requests");
  capstan_json_open(j, '{');
  capstan_json_kuint(j, "pending", c->csr_pending);
  if (c->csr_pending > 0 && c->csr_oldest_at > 0) {
    capstan_json_ktime(j, "oldest_pending_at", c->csr_oldest_at);
    double age = now - (double)c->csr_oldest_at;
    capstan_json_knum(j, "oldest_pending_age_seconds", age > 0 ? floor(age) : 0, 0);
  } else {
    capstan_json_knull(j, "oldest_pending_at");
    capstan_json_knull(j, "oldest_pending_age_seconds");
  }
  capstan_json_close(j, '}');
}

void capstan_status_render(capstan_status_t *st, const capstan_census_t *c, double now,
                           capstan_json_t *j) {
  reading_t r = {0};
  read_metrics(&r);
  capstan_json_open(j, '{');
  capstan_json_kint(j, "schema_version", 1);
  capstan_json_ktime(j, "generated_at", (int64_t)now);
  render_node(j, st, &r, now);
  render_devices(j, st, c);
  render_storage(j, st);
  render_nodes(j, st);
  render_resources(j);
  render_progress(j, st, c, now);
  render_rates(j, st, &r, now);
  render_throttle(j, st, &r);
  render_device_list(j, "slowest_in_progress", c->slowest, c->n_slowest, "since", now);
  render_device_list(j, "latest_failures", c->failures, c->n_failures, "at", now);
  render_reasons(j, c);
  render_limits(j, st);
  render_capf(j, c, now);
  render_requests(j, c, now);
  capstan_json_close(j, '}');
}

/* ---- Routes -------------------------------------------------------------- */

typedef struct pending {
  capstan_status_t *st;
  capstan_http_response_t *res;
  int page;
} pending_t;

static double wall_now(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

/* The page with |json| in place of the marker. */
static int assemble_page(const char *json, size_t len, char **out, size_t *out_len) {
  const char *page = capstan_status_page;
  size_t plen = capstan_status_page_len;
  const char *mark = memmem(page, plen, kPageMarker, sizeof(kPageMarker) - 1);
  if (mark == NULL) return CAPSTAN_EINVAL;
  size_t head = (size_t)(mark - page), tail = plen - head - (sizeof(kPageMarker) - 1);
  char *buf = malloc(head + len + tail + 1);
  if (buf == NULL) return CAPSTAN_ENOMEM;
  memcpy(buf, page, head);
  memcpy(buf + head, json, len);
  memcpy(buf + head + len, mark + sizeof(kPageMarker) - 1, tail);
  buf[head + len + tail] = '\0';
  *out = buf;
  *out_len = head + len + tail;
  return 0;
}

static void on_census(void *arg, const capstan_census_t *census, int status) {
  pending_t *p = arg;
  if (census == NULL) {
    capstan_admin_json_error(p->res, 503, "the store could not be read");
    free(p);
    return;
  }
  capstan_json_t j;
  capstan_json_init(&j);
  capstan_status_render(p->st, census, wall_now(), &j);
  char *json = NULL, *page = NULL;
  size_t len = 0, page_len = 0;
  int rc = capstan_json_take(&j, &json, &len);
  if (rc == 0 && !p->page) {
    capstan_admin_respond_owned(p->res, 200, JSON_TYPE, json, len);
    json = NULL;
  } else if (rc == 0 && (rc = assemble_page(json, len, &page, &page_len)) == 0) {
    capstan_http_response_add_header(p->res, kPageCsp);
    capstan_admin_respond_owned(p->res, 200, "text/html; charset=utf-8", page, page_len);
  } else {
    LOG_WARN("event=status_render_failed error=%s", capstan_strerror(rc));
    capstan_admin_json_error(p->res, 503, "out of memory");
  }
  free(json);
  free(p);
}

static void route(capstan_status_t *st, capstan_http_response_t *res, int page) {
  pending_t *p = calloc(1, sizeof(*p));
  if (p == NULL) {
    capstan_admin_json_error(res, 503, "out of memory");
    return;
  }
  p->st = st;
  p->res = res;
  p->page = page;
  int rc = capstan_census_get(st->census, CAPSTAN_STATUS_CENSUS_MAX_AGE, on_census, p);
  if (rc < 0) {
    LOG_WARN("event=status_census_failed error=%s", capstan_strerror(rc));
    capstan_admin_json_error(res, 503, "the store could not be read");
    free(p);
  }
}

void capstan_status_route_page(void *arg, const capstan_http_request_t *req,
                               capstan_http_response_t *res) {
  route(arg, res, 1);
}

void capstan_status_route_json(void *arg, const capstan_http_request_t *req,
                               capstan_http_response_t *res) {
  route(arg, res, 0);
}

void *capstan_status_devices_api(capstan_status_t *st) {
  return &st->api;
}

/* ---- Life cycle ---------------------------------------------------------- */

static void status_free(capstan_status_t *st) {
  capstan_series_cleanup(&st->series);
  for (size_t i = 0; i < st->nlimits; i++) capstan_series_cleanup(&st->limits[i].s);
  free(st);
}

int capstan_status_start(uv_loop_t *loop, capstan_store_t *store, capstan_status_t **out) {
  *out = NULL;
  capstan_status_t *st = calloc(1, sizeof(*st));
  if (st == NULL) return CAPSTAN_ENOMEM;
  st->loop = loop;
  st->store = store;
  st->api = (capstan_devices_api_t){loop, store};
  if (gethostname(st->node, sizeof(st->node) - 1) != 0 || st->node[0] == '\0') {
    snprintf(st->node, sizeof(st->node), "capstan");
  }
  int rc = capstan_series_init(&st->series, WINDOW_SAMPLES, NCOLS);
  if (rc == 0) rc = capstan_census_cache_new(loop, store, &st->census);
  if (rc < 0) {
    status_free(st);
    return rc;
  }
  uv_timer_init(loop, &st->timer);
  st->timer.data = st;
  /* The first sample at once: rates need a start. */
  capstan_status_sample(st, capstan_now_seconds());
  uv_timer_start(&st->timer, on_timer, SAMPLE_MS, SAMPLE_MS);
  *out = st;
  return 0;
}

static void on_census_freed(void *arg) {
  capstan_status_t *st = arg;
  void (*done)(void *) = st->done;
  void *done_arg = st->done_arg;
  status_free(st);
  if (done) done(done_arg);
}

static void on_timer_closed(uv_handle_t *h) {
  capstan_status_t *st = h->data;
  capstan_census_cache_free(st->census, on_census_freed, st);
}

void capstan_status_stop(capstan_status_t *st, void (*done)(void *arg), void *arg) {
  if (st == NULL) {
    if (done) done(arg);
    return;
  }
  st->done = done;
  st->done_arg = arg;
  uv_timer_stop(&st->timer);
  uv_close((uv_handle_t *)&st->timer, on_timer_closed);
}
