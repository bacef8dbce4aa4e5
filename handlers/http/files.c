#include "handlers/http/files.h"

#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"

/* Retry-After of a 503 when the machine is short of memory or descriptors:
 * such a shortage passes in seconds or needs an operator. */
#define BUSY_RETRY_AFTER_SECONDS "10"

#define RESULTS(X)          \
  X(OK, "ok")               \
  X(NOT_FOUND, "not_found") \
  X(DENIED, "denied")       \
  X(ERROR, "error")

typedef enum {
#define X(id, name) RESULT_##id,
  RESULTS(X)
#undef X
      RESULT_COUNT
} result_t;

static const char *const kResultNames[RESULT_COUNT] = {
#define X(id, name) name,
    RESULTS(X)
#undef X
};

/* Metrics are registered once, on first use, from the loop thread. */
static struct {
  int ready;
  capstan_metric_t *requests[CAPSTAN_FILE_KIND_COUNT][RESULT_COUNT];
  capstan_metric_t *bytes[CAPSTAN_FILE_KIND_COUNT];
  capstan_metric_t *duration[CAPSTAN_FILE_KIND_COUNT];
  capstan_metric_t *active;
} g_m;

static void metrics_init(void) {
  if (g_m.ready) return;
  char labels[96];
  for (int k = 0; k < CAPSTAN_FILE_KIND_COUNT; k++) {
    const char *kind = capstan_file_kind_name((capstan_file_kind_t)k);
    for (int r = 0; r < RESULT_COUNT; r++) {
      snprintf(labels, sizeof(labels), "kind=\"%s\",result=\"%s\"", kind, kResultNames[r]);
      g_m.requests[k][r] =
          capstan_metrics_counter("capstan_http_files_requests_total",
                                  "Phone file requests over HTTP, by kind and result", labels);
    }
    snprintf(labels, sizeof(labels), "kind=\"%s\"", kind);
    g_m.bytes[k] = capstan_metrics_counter("capstan_http_files_bytes_sent_total",
                                           "Phone file body bytes written over HTTP", labels);
    g_m.duration[k] = capstan_metrics_histogram(
        "capstan_http_files_duration_seconds",
        "Phone file requests over HTTP, from request to last byte written", labels,
        capstan_buckets_fast, capstan_buckets_fast_n);
  }
  g_m.active = capstan_metrics_gauge("capstan_http_files_active",
                                     "Phone file requests over HTTP in progress", "");
  g_m.ready = 1;
}

/* One per request; lives until the response is written or abandoned (the
 * server's done callback), since the file source and the connection both
 * refer to it until then. */
typedef struct file_req {
  capstan_http_response_t *res;
  capstan_file_kind_t kind;
  int xml; /* the name ends in .cnf.xml */
  double started;
  char peer[64];
} file_req_t;

int capstan_http_files_name_ok(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n > CAPSTAN_HTTP_FILES_MAX_NAME || name[0] == '.') return 0;
  if (strstr(name, "..") != NULL) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)name[i];
    if (ch < 0x20 || ch == 0x7f || ch == '/' || ch == '\\') return 0;
  }
  return 1;
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

static void on_done(void *arg, int status, size_t body_sent) {
  file_req_t *fr = arg;
  capstan_metric_add(g_m.bytes[fr->kind], (double)body_sent);
  capstan_metric_observe(g_m.duration[fr->kind], capstan_now_seconds() - fr->started);
  capstan_metric_add(g_m.active, -1);
  if (status < 0) {
    LOG_DEBUG("event=http_file_aborted peer=%s kind=%s sent=%zu", fr->peer,
              capstan_file_kind_name(fr->kind), body_sent);
  }
  free(fr);
}

static void respond_text(capstan_http_response_t *res, int status, const char *text) {
  capstan_http_respond(res, status, "text/plain; charset=utf-8", (const uint8_t *)text,
                       strlen(text));
}

static void on_file(void *ctx, int status, capstan_blob_t *blob, capstan_file_kind_t kind) {
  file_req_t *fr = ctx;
  capstan_http_response_t *res = fr->res;
  if ((unsigned)kind < CAPSTAN_FILE_KIND_COUNT) fr->kind = kind;
  capstan_http_response_on_done(res, on_done, fr);
  if (status == 0) {
    capstan_metric_inc(g_m.requests[fr->kind][RESULT_OK]);
    capstan_http_respond_blob(res, 200, fr->xml ? "text/xml" : "application/octet-stream", blob);
    return;
  }
  capstan_blob_unref(blob);
  const char *kind_name = capstan_file_kind_name(fr->kind);
  if (status == CAPSTAN_ENOENT) {
    capstan_metric_inc(g_m.requests[fr->kind][RESULT_NOT_FOUND]);
    LOG_DEBUG("event=http_file_not_found peer=%s kind=%s", fr->peer, kind_name);
    respond_text(res, 404, "file not found\n");
  } else if (status == CAPSTAN_EACCES) {
    capstan_metric_inc(g_m.requests[fr->kind][RESULT_DENIED]);
    LOG_INFO("event=http_file_denied peer=%s kind=%s reason=source_refused", fr->peer, kind_name);
    respond_text(res, 404, "file not found\n");
  } else if (status == CAPSTAN_EBUSY) {
    /* The machine is short of memory or descriptors (logged where it was
     * met): the phone comes back. */
    capstan_metric_inc(g_m.requests[fr->kind][RESULT_ERROR]);
    capstan_http_response_add_header(res, "Retry-After: " BUSY_RETRY_AFTER_SECONDS);
    respond_text(res, 503, "server busy, retry later\n");
  } else {
    capstan_metric_inc(g_m.requests[fr->kind][RESULT_ERROR]);
    LOG_WARN("event=http_file_error peer=%s kind=%s error=%s", fr->peer, kind_name,
             capstan_strerror(status));
    respond_text(res, 500, "internal error\n");
  }
}

void capstan_http_files_handler(void *arg, const capstan_http_request_t *req,
                                capstan_http_response_t *res) {
  capstan_filesource_t *src = arg;
  metrics_init();
  const char *name = req->path[0] == '/' ? req->path + 1 : "";
  if (!capstan_http_files_name_ok(name)) {
    capstan_metric_inc(g_m.requests[CAPSTAN_FILE_OTHER][RESULT_DENIED]);
    LOG_INFO("event=http_file_denied peer=%s reason=bad_name", req->peer);
    respond_text(res, 404, "file not found\n");
    return;
  }
  file_req_t *fr = calloc(1, sizeof(*fr));
  if (fr == NULL) {
    LOG_WARN("event=http_oom route=files");
    capstan_http_respond(res, 503, NULL, NULL, 0);
    return;
  }
  fr->res = res;
  fr->kind = capstan_file_kind_of(name);
  /* Phones parse plain configuration files as XML: say so. */
  fr->xml = ends_with(name, ".cnf.xml");
  fr->started = capstan_now_seconds();
  snprintf(fr->peer, sizeof(fr->peer), "%s", req->peer ? req->peer : "?");
  capstan_metric_add(g_m.active, 1);
  src->open(src, name, on_file, fr);
}
