/* `capstan serve`: its command line and config file, turned into the
 * plain options of handlers/serve. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers/cli/cli.h"
#include "handlers/serve/serve.h"
#include "storage/store.h"

#define CONFIG_LINE_MAX 1024

/* The options; a config file takes the same names as keys (and
 * data-dir). */
enum {
  OPT_CAPF_LISTEN,
  OPT_ADMIN_LISTEN,
  OPT_HTTP_LISTEN,
  OPT_TFTP_LISTEN,
  OPT_FILES_DIR,
  OPT_SUBJECT,
  OPT_DRAIN_SECONDS,
  OPT_CONFIG,
  NOPTS
};

/* Values read from --config files (owned, later files win). */
typedef struct {
  char *value[NOPTS];
  char *data_dir;
} serve_file_t;

static int read_config(void *ctx, const char *path, char *why, size_t whylen);

static const capstan_cli_opt_t serve_opts[NOPTS] = {
    [OPT_CAPF_LISTEN] = {"capf-listen", true, NULL},
    [OPT_ADMIN_LISTEN] = {"admin-listen", true, NULL},
    [OPT_HTTP_LISTEN] = {"http-listen", true, NULL},
    [OPT_TFTP_LISTEN] = {"tftp-listen", true, NULL},
    [OPT_FILES_DIR] = {"files-dir", true, NULL},
    [OPT_SUBJECT] = {"subject", true, NULL},
    [OPT_DRAIN_SECONDS] = {"drain-seconds", true, NULL},
    [OPT_CONFIG] = {"config", true, read_config},
};

/* Where a config-file key goes: a slot of |f|, or NULL for an unknown key
 * (config itself included: files do not nest). */
static char **config_slot(serve_file_t *f, const char *key) {
  if (strcmp(key, "data-dir") == 0) return &f->data_dir;
  for (int i = 0; i < NOPTS; i++) {
    if (i != OPT_CONFIG && strcmp(key, serve_opts[i].name) == 0) return &f->value[i];
  }
  return NULL;
}

static void trim_right(char *s) {
  for (char *e = s + strlen(s); e > s && strchr(" \t\r\n", e[-1]) != NULL; e--) e[-1] = '\0';
}

/* The set function of --config: reads "key = value" lines ('#' starts a
 * comment) into the serve_file_t |ctx|. A file it cannot read, or a line
 * without a known key, is a usage error naming the line. */
static int read_config(void *ctx, const char *path, char *why, size_t whylen) {
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    snprintf(why, whylen, "cannot read config file %s", path);
    return -1;
  }
  char line[CONFIG_LINE_MAX];
  int lineno = 0, rc = 0;
  while (rc == 0 && fgets(line, sizeof(line), f) != NULL) {
    lineno++;
    char *hash = strchr(line, '#');
    if (hash) *hash = '\0';
    char *k = line + strspn(line, " \t");
    if (*k == '\0' || *k == '\n' || *k == '\r') continue;
    char *eq = strchr(k, '='), **slot = NULL;
    if (eq != NULL) {
      *eq = '\0';
      trim_right(k);
      slot = config_slot(ctx, k);
    }
    if (slot == NULL) {
      snprintf(why, whylen, "%s:%d: expected 'key = value' with a known key", path, lineno);
      rc = -1;
      break;
    }
    char *v = eq + 1 + strspn(eq + 1, " \t");
    trim_right(v);
    free(*slot);
    *slot = strdup(v);
    if (*slot == NULL) {
      snprintf(why, whylen, "out of memory");
      rc = -1;
    }
  }
  fclose(f);
  return rc;
}

/* An option's value: the command line, else a config file, else |def|. */
static const char *pick(const capstan_cli_t *c, int opt, const char *def) {
  const serve_file_t *file = c->ctx;
  if (c->value[opt] != NULL) return c->value[opt];
  return file->value[opt] != NULL ? file->value[opt] : def;
}

static int run_serve(capstan_cli_t *c) {
  serve_file_t *file = c->ctx;
  if (c->data_dir == NULL) c->data_dir = file->data_dir;
  const char *drain = pick(c, OPT_DRAIN_SECONDS, NULL);
  unsigned drain_seconds = CAPSTAN_SERVE_DRAIN_SECONDS;
  if (drain != NULL) {
    /* A typo here would otherwise drain for 0 s and cut every phone off. */
    char *end = NULL;
    unsigned long v = drain[0] >= '0' && drain[0] <= '9' ? strtoul(drain, &end, 10) : ULONG_MAX;
    if (end == NULL || *end != '\0' || v > CAPSTAN_SERVE_DRAIN_SECONDS_MAX) {
      return capstan_cli_usage_error(
          c, "--drain-seconds must be a whole number from 0 to %u, got '%s'",
          CAPSTAN_SERVE_DRAIN_SECONDS_MAX, drain);
    }
    drain_seconds = (unsigned)v;
  }
  capstan_serve_options_t opt = {
      .data_dir = capstan_cli_data_dir(c),
      .capf_listen = pick(c, OPT_CAPF_LISTEN, CAPSTAN_SERVE_CAPF_LISTEN),
      .admin_listen = pick(c, OPT_ADMIN_LISTEN, CAPSTAN_SERVE_ADMIN_LISTEN),
      .http_listen = pick(c, OPT_HTTP_LISTEN, CAPSTAN_SERVE_HTTP_LISTEN),
      .tftp_listen = pick(c, OPT_TFTP_LISTEN, CAPSTAN_SERVE_TFTP_LISTEN),
      .files_dir = pick(c, OPT_FILES_DIR, NULL),
      .subject = pick(c, OPT_SUBJECT, NULL),
      .drain_seconds = drain_seconds,
  };
  return capstan_serve_run(&opt);
}

int capstan_cli_serve_main(int argc, char **argv) {
  static const capstan_cli_sub_t subs[] = {
      {NULL, ~UINT64_C(0), false, 0, 0, NULL, run_serve},
  };
  static const capstan_cli_cmd_t cmd = {
      .name = "serve",
      .usage = "capstan serve [options]",
      .help =
          "Runs the CAPF server and the phone file servers in the foreground, logging to\n"
          "stderr. An empty data directory is initialised first (as `capstan init`).\n"
          "\n"
          "  --data-dir DIR          data directory (default ./capstan-data or $CAPSTAN_DATA_DIR)\n"
          "  --capf-listen H:P       CAPF TLS listener (default [::]:3804)\n"
          "  --admin-listen H:P      metrics/status listener (default 127.0.0.1:9464)\n"
          "  --http-listen H:P       phone file HTTP listener (default [::]:6970; 'off')\n"
          "  --tftp-listen H:P       phone file TFTP listener (default [::]:69; 'off')\n"
          "  --files-dir DIR         static files (firmware, ringtones) served to phones\n"
          "  --subject \"O=..,C=..\"   subject attributes for certificates made at first start\n"
          "  --drain-seconds N       on SIGTERM, wait up to N s (0-3600) for sessions (default "
          "30)\n"
          "  --config FILE           read the same keys from FILE, one 'key = value' a line;\n"
          "                          command-line options win\n"
          "\n"
          "Signals: SIGTERM/SIGINT drain and exit; SIGHUP reloads certificates and settings.\n"
          "Live settings: capstan config set KEY VALUE (applied within a second).\n"
          "Threads run as SCHED_BATCH (a woken thread does not preempt a signature in\n"
          "progress); `chrt --other --all-tasks --pid 0 PID` reverts to SCHED_OTHER.",
      .opts = serve_opts,
      .nopts = NOPTS,
      .subs = subs,
      .nsubs = CAPSTAN_CLI_COUNT(subs),
  };
  serve_file_t file = {0};
  int rc = capstan_cli_run(&cmd, argc, argv, &file);
  for (int i = 0; i < NOPTS; i++) free(file.value[i]);
  free(file.data_dir);
  return rc;
}
