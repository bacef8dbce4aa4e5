/* The rows of `capstan serve`: the CAPF server, the store-wide gauges, the
 * admin listener, the phone file service and the HTTP and TFTP file
 * servers. Each row adapts one component to the table's five verbs. */
#include "handlers/serve/listeners.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/netaddr.h"
#include "handlers/http/files.h"

/* Store-wide gauges: fresh enough to watch a maintenance window. */
#define STATS_INTERVAL_MS 5000

static int enabled(const char *listen) {
  return listen != NULL && strcmp(listen, "off") != 0;
}

static void done_now(capstan_serve_done_fn done, void *arg) {
  if (done) done(arg);
}

/* The drain of a row whose component stops with |stop|(object, done, arg):
 * takes the object out of the context, then stops it (or is done at once
 * when the row never started). */
#define DRAIN_BY_STOP(fn, field, stop)                                                       \
  static void fn(capstan_serve_ctx_t *ctx, uint64_t deadline_ms, capstan_serve_done_fn done, \
                 void *arg) {                                                                \
    (void)deadline_ms; /* these finish at once or by their own bounds */                     \
    __typeof__(ctx->field) object = ctx->field;                                              \
    ctx->field = NULL;                                                                       \
    if (object == NULL) {                                                                    \
      done_now(done, arg);                                                                   \
      return;                                                                                \
    }                                                                                        \
    stop(object, done, arg);                                                                 \
  }

/* --- CAPF ------------------------------------------------------------------ */

static int capf_start(capstan_serve_ctx_t *ctx) {
  return capstan_capf_server_start(ctx->loop, ctx->store, ctx->opt->capf_listen, ctx->settings,
                                   &ctx->capf);
}

static void capf_apply(capstan_serve_ctx_t *ctx) {
  if (ctx->capf) capstan_capf_server_apply_settings(ctx->capf, ctx->settings);
}

static void capf_reload(capstan_serve_ctx_t *ctx) {
  if (ctx->capf) capstan_capf_server_reload(ctx->capf);
}

static void capf_drain(capstan_serve_ctx_t *ctx, uint64_t deadline_ms, capstan_serve_done_fn done,
                       void *arg) {
  capstan_capf_server_t *capf = ctx->capf;
  ctx->capf = NULL;
  if (capf == NULL) {
    done_now(done, arg);
    return;
  }
  capstan_capf_server_drain(capf, deadline_ms, done, arg);
}

/* --- Store-wide gauges ----------------------------------------------------- */

static int stats_start(capstan_serve_ctx_t *ctx) {
  return capstan_stats_start(ctx->loop, ctx->store, STATS_INTERVAL_MS, &ctx->stats);
}

DRAIN_BY_STOP(stats_drain, stats, capstan_stats_stop)

/* --- Admin listener -------------------------------------------------------- */

static int admin_start(capstan_serve_ctx_t *ctx) {
  capstan_http_config_t cfg;
  capstan_http_config_defaults(&cfg, "admin");
  cfg.max_connections = ctx->settings->admin_max_connections;
  cfg.max_connections_per_address = ctx->settings->admin_max_connections_per_address;
  cfg.retry_after_seconds = 1; /* scrapers and scripts on the operator's side */
  cfg.max_refusing = 64;
  cfg.settings_prefix = "admin-";
  cfg.uses_descriptor_reserve = 1; /* /metrics answers while phones are refused */
  int rc = capstan_admin_start(ctx->loop, ctx->opt->admin_listen, &cfg, &ctx->admin);
  if (rc == 0) rc = capstan_admin_enable_status(ctx->admin, ctx->loop, ctx->store);
  if (rc < 0) {
    LOG_ERROR("event=admin_listen_failed address=%s error=%s", ctx->opt->admin_listen,
              capstan_strerror(rc));
  }
  return rc;
}

static void admin_apply(capstan_serve_ctx_t *ctx) {
  if (ctx->admin) {
    capstan_admin_set_limits(ctx->admin, ctx->settings->admin_max_connections,
                             ctx->settings->admin_max_connections_per_address);
  }
}

DRAIN_BY_STOP(admin_drain, admin, capstan_admin_stop)

/* --- Phone file service (shared by HTTP and TFTP) --------------------------- */

/* capfList host when capf-host is not set: the CAPF listener's address,
 * or this machine's name when the listener is a wildcard. */
static void default_capf_host(const char *capf_listen, char *out, size_t cap) {
  struct sockaddr_storage addr;
  char buf[80];
  if (capstan_netaddr_parse(capf_listen, &addr) == 0) {
    capstan_netaddr_format((struct sockaddr *)&addr, buf, sizeof(buf));
    char *colon = strrchr(buf, ':');
    if (colon) *colon = '\0';
    const char *host = buf;
    if (buf[0] == '[') {
      host = buf + 1;
      char *end = strchr(buf, ']');
      if (end) *end = '\0';
    }
    if (strcmp(host, "0.0.0.0") != 0 && strcmp(host, "::") != 0) {
      snprintf(out, cap, "%s", host);
      return;
    }
  }
  if (gethostname(out, cap) != 0 || out[0] == '\0') snprintf(out, cap, "capstan");
  out[cap - 1] = '\0';
}

static int files_start(capstan_serve_ctx_t *ctx) {
  if (!enabled(ctx->opt->http_listen) && !enabled(ctx->opt->tftp_listen)) return 0;
  default_capf_host(ctx->opt->capf_listen, ctx->capf_host, sizeof(ctx->capf_host));
  capstan_files_config_t cfg = {
      .static_dir = ctx->opt->files_dir,
      .default_capf_host = ctx->capf_host,
      .capf_port = (uint16_t)(ctx->capf ? capstan_capf_server_port(ctx->capf) : 0),
  };
  return capstan_files_service_new(ctx->loop, ctx->store, &cfg, ctx->settings, &ctx->files);
}

static void files_apply(capstan_serve_ctx_t *ctx) {
  if (ctx->files) capstan_files_service_apply_settings(ctx->files, ctx->settings);
}

static void files_reload(capstan_serve_ctx_t *ctx) {
  if (ctx->files) capstan_files_service_reload(ctx->files);
}

static void files_drain(capstan_serve_ctx_t *ctx, uint64_t deadline_ms, capstan_serve_done_fn done,
                        void *arg) {
  /* Stage 1: the servers that read files have stopped. Signing jobs and
   * device reads in flight finish inside the service before its memory
   * goes. */
  capstan_files_service_free(ctx->files);
  ctx->files = NULL;
  done_now(done, arg);
}

/* --- HTTP and TFTP file servers -------------------------------------------- */

static int http_start(capstan_serve_ctx_t *ctx) {
  if (!enabled(ctx->opt->http_listen)) return 0;
  capstan_http_config_t cfg;
  capstan_http_config_defaults(&cfg, "phone");
  cfg.max_connections = ctx->settings->http_max_connections;
  cfg.max_connections_per_address = ctx->settings->http_max_connections_per_address;
  cfg.retry_after_seconds = ctx->settings->files_retry_after_seconds;
  cfg.settings_prefix = "http-";
  int rc =
      capstan_http_server_start(ctx->loop, ctx->opt->http_listen, &cfg, capstan_http_files_handler,
                                capstan_files_service_source(ctx->files), &ctx->http);
  if (rc < 0) {
    LOG_ERROR("event=http_listen_failed address=%s error=%s", ctx->opt->http_listen,
              capstan_strerror(rc));
  }
  return rc;
}

static void http_apply(capstan_serve_ctx_t *ctx) {
  if (ctx->http) {
    capstan_http_server_set_limits(ctx->http, ctx->settings->http_max_connections,
                                   ctx->settings->http_max_connections_per_address,
                                   ctx->settings->files_retry_after_seconds);
  }
}

DRAIN_BY_STOP(http_drain, http, capstan_http_server_stop)

static int tftp_start(capstan_serve_ctx_t *ctx) {
  if (!enabled(ctx->opt->tftp_listen)) return 0;
  capstan_tftp_config_t cfg;
  capstan_tftp_config_defaults(&cfg);
  cfg.max_transfers = ctx->settings->tftp_max_transfers;
  cfg.max_transfers_per_address = ctx->settings->tftp_max_transfers_per_address;
  cfg.retry_after_seconds = ctx->settings->files_retry_after_seconds;
  int rc = capstan_tftp_server_start(ctx->loop, ctx->opt->tftp_listen, &cfg,
                                     capstan_files_service_source(ctx->files), &ctx->tftp);
  if (rc < 0) {
    LOG_ERROR("event=tftp_listen_failed address=%s error=%s", ctx->opt->tftp_listen,
              capstan_strerror(rc));
  }
  return rc;
}

static void tftp_apply(capstan_serve_ctx_t *ctx) {
  if (ctx->tftp) {
    capstan_tftp_server_set_limits(ctx->tftp, ctx->settings->tftp_max_transfers,
                                   ctx->settings->tftp_max_transfers_per_address,
                                   ctx->settings->files_retry_after_seconds);
  }
}

DRAIN_BY_STOP(tftp_drain, tftp, capstan_tftp_server_stop)

/* --- The table ------------------------------------------------------------- */

/* In start order: the file service needs the CAPF port; HTTP and TFTP need
 * the file service. Drain stages: CAPF sessions finish first (stage 0)
 * while /healthz, /metrics and the phone files keep answering (phones that
 * rebooted still boot); then those listeners stop (1); then the file
 * service they read (2). */
const capstan_serve_listener_t capstan_serve_listeners[] = {
    {"capf", 0, capf_start, capf_apply, capf_reload, capf_drain},
    {"stats", 1, stats_start, NULL, NULL, stats_drain},
    {"admin", 1, admin_start, admin_apply, NULL, admin_drain},
    {"files", 2, files_start, files_apply, files_reload, files_drain},
    {"http", 1, http_start, http_apply, NULL, http_drain},
    {"tftp", 1, tftp_start, tftp_apply, NULL, tftp_drain},
};
const size_t capstan_serve_listener_count =
    sizeof(capstan_serve_listeners) / sizeof(capstan_serve_listeners[0]);

void capstan_serve_log_listeners(const capstan_serve_ctx_t *ctx) {
  LOG_INFO("event=listeners admin_port=%d http_port=%d tftp_port=%d%s%s",
           ctx->admin ? capstan_admin_port(ctx->admin) : 0,
           ctx->http ? capstan_http_server_port(ctx->http) : 0,
           ctx->tftp ? capstan_tftp_server_port(ctx->tftp) : 0, ctx->files ? " capf_host=" : "",
           ctx->files ? ctx->capf_host : "");
}
