/* capstan-httpd-harness: the phone HTTP file server and the admin listener
 * on one loop, with an in-memory file source, for load generators (wrk).
 *
 *   capstan-httpd-harness [--listen 127.0.0.1:0] [--admin 127.0.0.1:0]
 *
 * Serves SEP001122334455.cnf.xml (4 KiB), ITLSEP001122334455.tlv (5 KiB),
 * SEP001122334455.cnf.xml.sgn (6 KiB) and firmware.loads (1 MiB); other
 * names are 404. Prints "ready phone_port=N admin_port=M" on stdout once
 * listening; stops cleanly on SIGINT/SIGTERM. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/base/error.h"
#include "core/files/source.h"
#include "core/base/log.h"
#include "handlers/admin/admin.h"
#include "handlers/http/files.h"
#include "handlers/http/server.h"

typedef struct {
  const char *name;
  size_t size;
  capstan_file_kind_t kind;
  capstan_blob_t *blob;
} file_t;

static file_t g_files[] = {
    {"SEP001122334455.cnf.xml", 4096, CAPSTAN_FILE_CNF, NULL},
    {"ITLSEP001122334455.tlv", 5120, CAPSTAN_FILE_ITL, NULL},
    {"SEP001122334455.cnf.xml.sgn", 6144, CAPSTAN_FILE_CNF_SGN, NULL},
    {"firmware.loads", 1024 * 1024, CAPSTAN_FILE_STATIC, NULL},
};
#define NFILES (sizeof(g_files) / sizeof(g_files[0]))

static capstan_http_server_t *g_phone;
static capstan_admin_t *g_admin;
static uv_signal_t g_sigint, g_sigterm;
static int g_stops;

static void src_open(capstan_filesource_t *src, const char *name, capstan_file_cb cb, void *ctx) {
  for (size_t i = 0; i < NFILES; i++) {
    if (strcmp(name, g_files[i].name) == 0) {
      cb(ctx, 0, capstan_blob_ref(g_files[i].blob), g_files[i].kind);
      return;
    }
  }
  cb(ctx, CAPSTAN_ENOENT, NULL, capstan_file_kind_of(name));
}

static void on_stopped(void *arg) {
  if (++g_stops == 2) {
    uv_close((uv_handle_t *)&g_sigint, NULL);
    uv_close((uv_handle_t *)&g_sigterm, NULL);
  }
}

static void on_signal(uv_signal_t *s, int signum) {
  uv_signal_stop(&g_sigint);
  uv_signal_stop(&g_sigterm);
  capstan_http_server_stop(g_phone, on_stopped, NULL);
  capstan_admin_stop(g_admin, on_stopped, NULL);
}

int main(int argc, char **argv) {
  const char *listen = "127.0.0.1:0", *admin = "127.0.0.1:0";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--listen") == 0) {
      listen = argv[i + 1];
    } else if (strcmp(argv[i], "--admin") == 0) {
      admin = argv[i + 1];
    } else {
      fprintf(stderr, "usage: %s [--listen HOST:PORT] [--admin HOST:PORT]\n", argv[0]);
      return 2;
    }
  }
  capstan_log_init();
  for (size_t i = 0; i < NFILES; i++) {
    uint8_t *buf = malloc(g_files[i].size);
    if (buf == NULL) return 1;
    for (size_t j = 0; j < g_files[i].size; j++) buf[j] = (uint8_t)('a' + j % 26);
    g_files[i].blob = capstan_blob_new(buf, g_files[i].size);
    free(buf);
    if (g_files[i].blob == NULL) return 1;
  }
  capstan_filesource_t src = {.open = src_open};
  uv_loop_t *loop = uv_default_loop();
  capstan_http_config_t cfg;
  capstan_http_config_defaults(&cfg, "phone");
  cfg.max_connections_per_address = 20000; /* the load comes from one address */
  int rc =
      capstan_http_server_start(loop, listen, &cfg, capstan_http_files_handler, &src, &g_phone);
  if (rc == 0) rc = capstan_admin_start(loop, admin, NULL, &g_admin);
  if (rc != 0) {
    fprintf(stderr, "start failed: %s\n", capstan_strerror(rc));
    return 1;
  }
  uv_signal_init(loop, &g_sigint);
  uv_signal_init(loop, &g_sigterm);
  uv_signal_start(&g_sigint, on_signal, SIGINT);
  uv_signal_start(&g_sigterm, on_signal, SIGTERM);
  printf("ready phone_port=%d admin_port=%d\n", capstan_http_server_port(g_phone),
         capstan_admin_port(g_admin));
  fflush(stdout);
  uv_run(loop, UV_RUN_DEFAULT);
  for (size_t i = 0; i < NFILES; i++) capstan_blob_unref(g_files[i].blob);
  return uv_loop_close(loop) == 0 ? 0 : 1;
}
