/* The components that join the CAPF server in `capstan serve`: the admin
 * listener, the phone file service, and the HTTP and TFTP file servers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/base/error.h"
#include "core/files/service.h"
#include "core/base/log.h"
#include "core/base/netaddr.h"
#include "handlers/serve/serve.h"
#include "core/stats.h"
#include "handlers/admin/admin.h"
#include "handlers/http/files.h"
#include "handlers/http/server.h"
#include "handlers/tftp/tftp.h"

typedef struct components {
  capstan_admin_t *admin;
  capstan_files_service_t *files;
  capstan_http_server_t *http;
  capstan_tftp_server_t *tftp;
  capstan_stats_t *stats;
  unsigned stopping;
  void (*done)(void *);
  void *done_arg;
} components_t;

/* Store-wide gauges: fresh enough to watch a maintenance window. */
#define STATS_INTERVAL_MS 5000

static int enabled(const char *listen) {
  return listen != NULL && strcmp(listen, "off") != 0;
}

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

static void apply_settings(void *arg, const Capstan__Settings *s) {
  components_t *c = arg;
  if (c->files) capstan_files_service_apply_settings(c->files, s);
}

static void reload(void *arg) {
  components_t *c = arg;
  if (c->files) capstan_files_service_reload(c->files);
}

static void one_stopped(void *arg) {
  components_t *c = arg;
  if (--c->stopping > 0) return;
  capstan_files_service_free(c->files);
  void (*done)(void *) = c->done;
  void *done_arg = c->done_arg;
  free(c);
  if (done) done(done_arg);
}

static void drain(void *arg, uint64_t deadline_ms, void (*done)(void *), void *done_arg) {
  components_t *c = arg;
  c->done = done;
  c->done_arg = done_arg;
  c->stopping = 1;
  if (c->tftp) {
    c->stopping++;
    capstan_tftp_server_stop(c->tftp, one_stopped, c);
  }
  if (c->http) {
    c->stopping++;
    capstan_http_server_stop(c->http, one_stopped, c);
  }
  if (c->admin) {
    c->stopping++;
    capstan_admin_stop(c->admin, one_stopped, c);
  }
  if (c->stats) {
    c->stopping++;
    capstan_stats_stop(c->stats, one_stopped, c);
  }
  one_stopped(c);
}

int capstan_serve_start_components(const capstan_serve_env_t *env,
                                   capstan_serve_components_t *out) {
  memset(out, 0, sizeof(*out));
  components_t *c = calloc(1, sizeof(*c));
  if (c == NULL) return CAPSTAN_ENOMEM;
  out->arg = c;
  out->apply_settings = apply_settings;
  out->reload = reload;
  out->drain = drain;

  int rc = capstan_stats_start(env->loop, env->store, STATS_INTERVAL_MS, &c->stats);
  if (rc < 0) return rc;
  rc = capstan_admin_start(env->loop, env->admin_listen, NULL, &c->admin);
  if (rc < 0) {
    LOG_ERROR("event=admin_listen_failed address=%s error=%s", env->admin_listen,
              capstan_strerror(rc));
    return rc;
  }
  if (!enabled(env->http_listen) && !enabled(env->tftp_listen)) {
    LOG_INFO("event=listeners admin_port=%d http_port=0 tftp_port=0", capstan_admin_port(c->admin));
    return 0;
  }

  char host[256];
  default_capf_host(env->capf_listen, host, sizeof(host));
  capstan_files_config_t fcfg = {
      .static_dir = env->files_dir,
      .default_capf_host = host,
      .capf_port = (uint16_t)env->capf_port,
  };
  rc = capstan_files_service_new(env->loop, env->store, &fcfg, env->settings, &c->files);
  if (rc < 0) return rc;
  capstan_filesource_t *src = capstan_files_service_source(c->files);
  if (enabled(env->http_listen)) {
    capstan_http_config_t hcfg;
    capstan_http_config_defaults(&hcfg, "phone");
    rc = capstan_http_server_start(env->loop, env->http_listen, &hcfg, capstan_http_files_handler,
                                   src, &c->http);
    if (rc < 0) {
      LOG_ERROR("event=http_listen_failed address=%s error=%s", env->http_listen,
                capstan_strerror(rc));
      return rc;
    }
  }
  if (enabled(env->tftp_listen)) {
    capstan_tftp_config_t tcfg;
    capstan_tftp_config_defaults(&tcfg);
    rc = capstan_tftp_server_start(env->loop, env->tftp_listen, &tcfg, src, &c->tftp);
    if (rc < 0) {
      LOG_ERROR("event=tftp_listen_failed address=%s error=%s", env->tftp_listen,
                capstan_strerror(rc));
      return rc;
    }
  }
  LOG_INFO("event=listeners admin_port=%d http_port=%d tftp_port=%d capf_host=%s",
           capstan_admin_port(c->admin), c->http ? capstan_http_server_port(c->http) : 0,
           c->tftp ? capstan_tftp_server_port(c->tftp) : 0, host);
  return 0;
}
