#include "handlers/admin/admin.h"

#include <openssl/base.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "core/base/process_metrics.h"
#include "handlers/admin/devices_api.h"
#include "handlers/admin/json.h"
#include "handlers/admin/status.h"

#ifndef CAPSTAN_VERSION
#define CAPSTAN_VERSION "unknown"
#endif

#define STR2(x) #x
#define STR(x) STR2(x)
#ifdef BORINGSSL_API_VERSION
#define BORINGSSL_LABEL "api-" STR(BORINGSSL_API_VERSION)
#else
#define BORINGSSL_LABEL "unknown"
#endif

typedef struct route {
  char *path;
  capstan_http_handler_fn fn;
  void *arg;
  int prefix; /* matches every path that starts with |path| */
} route_t;

struct capstan_admin {
  capstan_http_server_t *http;
  capstan_status_t *status; /* NULL until capstan_admin_enable_status */
  route_t routes[CAPSTAN_ADMIN_MAX_ROUTES];
  size_t nroutes;
  void (*done)(void *arg);
  void *done_arg;
};

static void blob_free_rendered(capstan_blob_t *blob) {
  free((void *)(uintptr_t)blob->data);
  free(blob);
}

void capstan_admin_respond_owned(capstan_http_response_t *res, int status, const char *content_type,
                                 char *body, size_t len) {
  capstan_blob_t *blob = malloc(sizeof(*blob));
  if (blob == NULL) {
    free(body);
    capstan_http_respond(res, 503, NULL, NULL, 0);
    return;
  }
  /* Hand the buffer over without a copy. */
  blob->data = (const uint8_t *)body;
  blob->len = len;
  blob->refs = 1;
  blob->free_fn = blob_free_rendered;
  capstan_http_respond_blob(res, status, content_type, blob);
}

void capstan_admin_json_error(capstan_http_response_t *res, int status, const char *message) {
  capstan_json_t j;
  capstan_json_init(&j);
  capstan_json_open(&j, '{');
  capstan_json_kstr(&j, "error", message);
  capstan_json_close(&j, '}');
  capstan_json_raw(&j, "\n", 1);
  char *body = NULL;
  size_t len = 0;
  if (capstan_json_take(&j, &body, &len) < 0) {
    capstan_http_respond(res, 503, NULL, NULL, 0);
    return;
  }
  capstan_admin_respond_owned(res, status, "application/json; charset=utf-8", body, len);
}

/* The buffer of the last /metrics answer, kept for the next one once
 * written: a scrape then needs no new memory, so /metrics still answers
 * while the process is out of memory (capstan_memory_exhausted says so).
 * Loop thread only; never freed. */
static struct {
  char *buf;
  size_t cap;
  capstan_blob_t blob;
  int in_use; /* an answer is being written from it */
} g_metrics_page;

static void metrics_page_written(capstan_blob_t *blob) {
  (void)blob;
  g_metrics_page.in_use = 0;
}

static void route_metrics(void *arg, const capstan_http_request_t *req,
                          capstan_http_response_t *res) {
  size_t len = 0;
  if (!g_metrics_page.in_use &&
      capstan_metrics_render_into(&g_metrics_page.buf, &g_metrics_page.cap, &len) == 0) {
    g_metrics_page.in_use = 1;
    g_metrics_page.blob = (capstan_blob_t){.data = (const uint8_t *)g_metrics_page.buf,
                                           .len = len,
                                           .refs = 1,
                                           .free_fn = metrics_page_written};
    capstan_http_respond_blob(res, 200, "text/plain; version=0.0.4; charset=utf-8",
                              &g_metrics_page.blob);
    return;
  }
  /* An answer is still being written from it: this one renders on its own. */
  char *text = NULL;
  int rc = capstan_metrics_render(&text, &len);
  if (rc < 0) {
    LOG_WARN("event=metrics_render_failed error=%s", capstan_strerror(rc));
    capstan_http_respond(res, 503, NULL, NULL, 0);
    return;
  }
  capstan_admin_respond_owned(res, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
}

static void route_healthz(void *arg, const capstan_http_request_t *req,
                          capstan_http_response_t *res) {
  capstan_http_respond(res, 200, "text/plain; charset=utf-8", (const uint8_t *)"ok\n", 3);
}

static void admin_handler(void *arg, const capstan_http_request_t *req,
                          capstan_http_response_t *res) {
  capstan_admin_t *admin = arg;
  for (size_t i = 0; i < admin->nroutes; i++) {
    if (!admin->routes[i].prefix && strcmp(admin->routes[i].path, req->path) == 0) {
      admin->routes[i].fn(admin->routes[i].arg, req, res);
      return;
    }
  }
  for (size_t i = 0; i < admin->nroutes; i++) {
    const route_t *r = &admin->routes[i];
    if (r->prefix && strncmp(r->path, req->path, strlen(r->path)) == 0) {
      r->fn(r->arg, req, res);
      return;
    }
  }
  capstan_http_respond(res, 404, "text/plain; charset=utf-8", (const uint8_t *)"not found\n", 10);
}

static int add_route(capstan_admin_t *admin, const char *path, capstan_http_handler_fn fn,
                     void *arg, int prefix) {
  if (path == NULL || path[0] != '/' || fn == NULL) return CAPSTAN_EINVAL;
  for (size_t i = 0; i < admin->nroutes; i++) {
    if (admin->routes[i].prefix == prefix && strcmp(admin->routes[i].path, path) == 0) {
      return CAPSTAN_EEXIST;
    }
  }
  if (admin->nroutes >= CAPSTAN_ADMIN_MAX_ROUTES) return CAPSTAN_EINVAL;
  char *copy = strdup(path);
  if (copy == NULL) return CAPSTAN_ENOMEM;
  admin->routes[admin->nroutes++] = (route_t){copy, fn, arg, prefix};
  return 0;
}

int capstan_admin_add_route(capstan_admin_t *admin, const char *path, capstan_http_handler_fn fn,
                            void *arg) {
  return add_route(admin, path, fn, arg, 0);
}

int capstan_admin_add_prefix_route(capstan_admin_t *admin, const char *prefix,
                                   capstan_http_handler_fn fn, void *arg) {
  return add_route(admin, prefix, fn, arg, 1);
}

int capstan_admin_enable_status(capstan_admin_t *admin, uv_loop_t *loop, capstan_store_t *store) {
  if (admin->status != NULL) return CAPSTAN_EEXIST;
  capstan_status_t *st = NULL;
  int rc = capstan_status_start(loop, store, &st);
  if (rc < 0) return rc;
  void *api = capstan_status_devices_api(st);
  rc = capstan_admin_add_route(admin, "/status", capstan_status_route_page, st);
  if (rc == 0) rc = capstan_admin_add_route(admin, "/status.json", capstan_status_route_json, st);
  if (rc == 0)
    rc = capstan_admin_add_route(admin, "/api/devices", capstan_devices_api_list_route, api);
  if (rc == 0) {
    rc =
        capstan_admin_add_prefix_route(admin, "/api/devices/", capstan_devices_api_show_route, api);
  }
  /* Routes already added stay: they answer once the status is there. */
  admin->status = st;
  return rc;
}

static void register_process_metrics(void) {
  capstan_process_metrics_register();
  capstan_metric_t *info =
      capstan_metrics_gauge("capstan_build_info", "Build information; the value is always 1",
                            "version=\"" CAPSTAN_VERSION "\",boringssl=\"" BORINGSSL_LABEL "\"");
  capstan_metric_set(info, 1);
  capstan_metric_t *start = capstan_metrics_gauge(
      "capstan_process_start_time_seconds", "Start time of the process since the unix epoch", "");
  /* The first admin start in a process is the process start, to a few ms. */
  if (capstan_metric_value(start) == 0) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    capstan_metric_set(start, (double)tv.tv_sec + tv.tv_usec / 1e6);
  }
}

static void admin_free(capstan_admin_t *admin) {
  for (size_t i = 0; i < admin->nroutes; i++) free(admin->routes[i].path);
  free(admin);
}

int capstan_admin_start(uv_loop_t *loop, const char *host_port, const capstan_http_config_t *cfg,
                        capstan_admin_t **out) {
  capstan_http_config_t defaults;
  *out = NULL;
  if (cfg == NULL) {
    capstan_http_config_defaults(&defaults, "admin");
    defaults.max_connections = 256;
    defaults.max_connections_per_address = 64;
    /* Scrapers and scripts on the operator's side: a second is plenty. */
    defaults.retry_after_seconds = 1;
    defaults.max_refusing = 64;
    defaults.settings_prefix = "admin-";
    /* The operator reads /metrics most when phones are being refused. */
    defaults.uses_descriptor_reserve = 1;
    cfg = &defaults;
  }
  capstan_admin_t *admin = calloc(1, sizeof(*admin));
  if (admin == NULL) return CAPSTAN_ENOMEM;
  int rc = capstan_admin_add_route(admin, "/metrics", route_metrics, NULL);
  if (rc == 0) rc = capstan_admin_add_route(admin, "/healthz", route_healthz, NULL);
  if (rc != 0) goto err;
  register_process_metrics();
  rc = capstan_http_server_start(loop, host_port, cfg, admin_handler, admin, &admin->http);
  if (rc != 0) goto err;
  *out = admin;
  return 0;
err:
  admin_free(admin);
  return rc;
}

int capstan_admin_port(const capstan_admin_t *admin) {
  return capstan_http_server_port(admin->http);
}

void capstan_admin_set_limits(capstan_admin_t *admin, unsigned max_connections,
                              unsigned max_connections_per_address) {
  capstan_http_server_set_limits(admin->http, max_connections, max_connections_per_address, 0);
}

static void on_status_stopped(void *arg) {
  capstan_admin_t *admin = arg;
  void (*done)(void *) = admin->done;
  void *done_arg = admin->done_arg;
  admin_free(admin);
  if (done) done(done_arg);
}

/* Every response has been given: nothing refers to the status any more. */
static void on_http_stopped(void *arg) {
  capstan_admin_t *admin = arg;
  capstan_status_stop(admin->status, on_status_stopped, admin);
}

void capstan_admin_stop(capstan_admin_t *admin, void (*done)(void *arg), void *arg) {
  if (admin == NULL) return;
  admin->done = done;
  admin->done_arg = arg;
  capstan_http_server_stop(admin->http, on_http_stopped, admin);
}
