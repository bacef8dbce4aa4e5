#include "handlers/admin/admin.h"

#include <openssl/base.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"

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
} route_t;

struct capstan_admin {
  capstan_http_server_t *http;
  route_t routes[CAPSTAN_ADMIN_MAX_ROUTES];
  size_t nroutes;
  void (*done)(void *arg);
  void *done_arg;
};

static void blob_free_rendered(capstan_blob_t *blob) {
  free((void *)(uintptr_t)blob->data);
  free(blob);
}

static void route_metrics(void *arg, const capstan_http_request_t *req,
                          capstan_http_response_t *res) {
  char *text = NULL;
  size_t len = 0;
  int rc = capstan_metrics_render(&text, &len);
  capstan_blob_t *blob = rc == 0 ? malloc(sizeof(*blob)) : NULL;
  if (blob == NULL) {
    free(text);
    LOG_WARN("event=metrics_render_failed error=%s", capstan_strerror(rc ? rc : CAPSTAN_ENOMEM));
    capstan_http_respond(res, 503, NULL, NULL, 0);
    return;
  }
  /* Hand the rendered buffer over without a copy. */
  blob->data = (const uint8_t *)text;
  blob->len = len;
  blob->refs = 1;
  blob->free_fn = blob_free_rendered;
  capstan_http_respond_blob(res, 200, "text/plain; version=0.0.4; charset=utf-8", blob);
}

static void route_healthz(void *arg, const capstan_http_request_t *req,
                          capstan_http_response_t *res) {
  capstan_http_respond(res, 200, "text/plain; charset=utf-8", (const uint8_t *)"ok\n", 3);
}

static void admin_handler(void *arg, const capstan_http_request_t *req,
                          capstan_http_response_t *res) {
  capstan_admin_t *admin = arg;
  for (size_t i = 0; i < admin->nroutes; i++) {
    if (strcmp(admin->routes[i].path, req->path) == 0) {
      admin->routes[i].fn(admin->routes[i].arg, req, res);
      return;
    }
  }
  capstan_http_respond(res, 404, "text/plain; charset=utf-8", (const uint8_t *)"not found\n", 10);
}

int capstan_admin_add_route(capstan_admin_t *admin, const char *path, capstan_http_handler_fn fn,
                            void *arg) {
  if (path == NULL || path[0] != '/' || fn == NULL) return CAPSTAN_EINVAL;
  for (size_t i = 0; i < admin->nroutes; i++) {
    if (strcmp(admin->routes[i].path, path) == 0) return CAPSTAN_EEXIST;
  }
  if (admin->nroutes >= CAPSTAN_ADMIN_MAX_ROUTES) return CAPSTAN_EINVAL;
  char *copy = strdup(path);
  if (copy == NULL) return CAPSTAN_ENOMEM;
  admin->routes[admin->nroutes++] = (route_t){copy, fn, arg};
  return 0;
}

static void register_process_metrics(void) {
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

static void on_http_stopped(void *arg) {
  capstan_admin_t *admin = arg;
  void (*done)(void *) = admin->done;
  void *done_arg = admin->done_arg;
  admin_free(admin);
  if (done) done(done_arg);
}

void capstan_admin_stop(capstan_admin_t *admin, void (*done)(void *arg), void *arg) {
  if (admin == NULL) return;
  admin->done = done;
  admin->done_arg = arg;
  capstan_http_server_stop(admin->http, on_http_stopped, admin);
}
