/* capstan-tftpd-harness: runs capstan's TFTP server alone, serving one
 * directory, for benchmarks and manual tests until the full server exists.
 *
 *   capstan-tftpd-harness --listen 127.0.0.1:6969 --dir DIR
 *       [--max-transfers N] [--max-per-client N] [--timeout-ms N]
 *
 * The file source is deliberately simple: names with '/' or a leading '.'
 * are refused, a file is read from DIR on its first request and then kept
 * in memory as a blob (the real server serves generated files from a
 * cache too). SIGINT/SIGTERM stop it cleanly. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/base/error.h"
#include "core/files/source.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "handlers/tftp/tftp.h"

#define CACHE_MAX 64

typedef struct {
  const char *dir;
  struct {
    char name[256];
    capstan_blob_t *blob;
  } cache[CACHE_MAX];
  int n;
} dir_source_t;

static capstan_blob_t *read_blob(const char *dir, const char *name) {
  char path[4096];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  FILE *fp = fopen(path, "rb");
  if (fp == NULL) return NULL;
  size_t cap = 65536, len = 0;
  uint8_t *buf = malloc(cap);
  for (;;) {
    if (buf == NULL) break;
    if (len == cap) {
      uint8_t *nb = realloc(buf, cap * 2);
      if (nb == NULL) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
    size_t r = fread(buf + len, 1, cap - len, fp);
    if (r == 0) break;
    len += r;
  }
  fclose(fp);
  if (buf == NULL) return NULL;
  capstan_blob_t *blob = capstan_blob_new(buf, len);
  free(buf);
  return blob;
}

static void dir_open(capstan_filesource_t *src, const char *name, capstan_file_cb cb, void *ctx) {
  dir_source_t *ds = src->impl;
  if (name[0] == '.' || strchr(name, '/') != NULL) {
    cb(ctx, CAPSTAN_EACCES, NULL, CAPSTAN_FILE_OTHER);
    return;
  }
  for (int i = 0; i < ds->n; i++) {
    if (strcmp(ds->cache[i].name, name) == 0) {
      cb(ctx, 0, capstan_blob_ref(ds->cache[i].blob), CAPSTAN_FILE_STATIC);
      return;
    }
  }
  capstan_blob_t *blob = read_blob(ds->dir, name);
  if (blob == NULL) {
    cb(ctx, CAPSTAN_ENOENT, NULL, capstan_file_kind_of(name));
    return;
  }
  if (ds->n < CACHE_MAX) {
    snprintf(ds->cache[ds->n].name, sizeof(ds->cache[ds->n].name), "%s", name);
    ds->cache[ds->n].blob = capstan_blob_ref(blob);
    ds->n++;
  }
  cb(ctx, 0, blob, CAPSTAN_FILE_STATIC);
}

static capstan_tftp_server_t *g_srv;
static uv_signal_t g_sigint, g_sigterm;

static void on_stopped(void *arg) {
  uv_close((uv_handle_t *)&g_sigint, NULL);
  uv_close((uv_handle_t *)&g_sigterm, NULL);
}

static void on_signal(uv_signal_t *s, int signum) {
  if (g_srv == NULL) return;
  capstan_tftp_server_stop(g_srv, on_stopped, NULL);
  g_srv = NULL;
}

static void usage(void) {
  fprintf(stderr,
          "usage: capstan-tftpd-harness --listen HOST:PORT --dir DIR [--max-transfers N]\n"
          "       [--max-per-client N] [--timeout-ms N]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *listen = NULL;
  static dir_source_t ds;
  capstan_tftp_config_t cfg;
  capstan_tftp_config_defaults(&cfg);
  for (int i = 1; i < argc; i++) {
    if (i + 1 >= argc) usage();
    if (strcmp(argv[i], "--listen") == 0) {
      listen = argv[++i];
    } else if (strcmp(argv[i], "--dir") == 0) {
      ds.dir = argv[++i];
    } else if (strcmp(argv[i], "--max-transfers") == 0) {
      cfg.max_transfers = (unsigned)strtoul(argv[++i], NULL, 10);
    } else if (strcmp(argv[i], "--max-per-client") == 0) {
      cfg.max_transfers_per_address = (unsigned)strtoul(argv[++i], NULL, 10);
    } else if (strcmp(argv[i], "--timeout-ms") == 0) {
      cfg.default_timeout_ms = (unsigned)strtoul(argv[++i], NULL, 10);
    } else {
      usage();
    }
  }
  if (listen == NULL || ds.dir == NULL) usage();
  capstan_log_init();
  signal(SIGPIPE, SIG_IGN);
  uv_loop_t *loop = uv_default_loop();
  capstan_filesource_t src = {dir_open, &ds};
  int rc = capstan_tftp_server_start(loop, listen, &cfg, &src, &g_srv);
  if (rc != 0) {
    fprintf(stderr, "capstan-tftpd-harness: cannot listen on %s: %s\n", listen, uv_strerror(rc));
    return 1;
  }
  printf("port=%d\n", capstan_tftp_server_port(g_srv));
  fflush(stdout);
  uv_signal_init(loop, &g_sigint);
  uv_signal_init(loop, &g_sigterm);
  uv_signal_start(&g_sigint, on_signal, SIGINT);
  uv_signal_start(&g_sigterm, on_signal, SIGTERM);
  uv_run(loop, UV_RUN_DEFAULT);
  for (int i = 0; i < ds.n; i++) capstan_blob_unref(ds.cache[i].blob);
  /* The TFTP metrics, for the benchmark log. */
  char *text;
  size_t len;
  if (capstan_metrics_render(&text, &len) == 0) {
    for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
      if (strncmp(line, "capstan_tftp_", 13) == 0 && strstr(line, "_bucket") == NULL) {
        fprintf(stderr, "%s\n", line);
      }
    }
    free(text);
  }
  uv_loop_close(loop);
  return 0;
}
