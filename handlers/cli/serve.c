/* `capstan serve`: its command line and config file, turned into the
 * plain options of handlers/serve. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers/cli/cli.h"
#include "handlers/serve/serve.h"
#include "storage/store.h"

#define CONFIG_LINE_MAX 1024

/* The options as parsed: owned strings, freed by free_options. */
typedef struct serve_options {
  char *data_dir;
  char *capf_listen;
  char *admin_listen;
  char *http_listen;
  char *tftp_listen;
  char *files_dir;
  char *subject;
  unsigned drain_seconds;
} serve_options_t;

static void set_opt(char **field, const char *value) {
  free(*field);
  *field = strdup(value);
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: capstan serve [options]\n"
          "\n"
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
          "  --drain-seconds N       on SIGTERM, wait up to N s for sessions (default 30)\n"
          "  --config FILE           read the same keys from FILE, one 'key = value' a line;\n"
          "                          command-line options win\n"
          "\n"
          "Signals: SIGTERM/SIGINT drain and exit; SIGHUP reloads certificates and settings.\n"
          "Live settings: capstan config set KEY VALUE (applied within a second).\n"
          "Threads run as SCHED_BATCH (a woken thread does not preempt a signature in\n"
          "progress); `chrt --other --all-tasks --pid 0 PID` reverts to SCHED_OTHER.\n");
}

/* Reads "key = value" lines; '#' starts a comment. Keys are the long option
 * names. Returns 0, or 2 with a message naming the line. */
static int read_config(const char *path, serve_options_t *o) {
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    fprintf(stderr, "capstan serve: cannot read config file %s\n", path);
    return 2;
  }
  char line[CONFIG_LINE_MAX];
  int lineno = 0, rc = 0;
  while (fgets(line, sizeof(line), f) != NULL) {
    lineno++;
    char *hash = strchr(line, '#');
    if (hash) *hash = '\0';
    char *eq = strchr(line, '=');
    char *k = line, *v;
    while (*k == ' ' || *k == '\t') k++;
    if (*k == '\0' || *k == '\n' || *k == '\r') continue;
    if (eq == NULL) goto bad;
    *eq = '\0';
    v = eq + 1;
    for (char *e = eq - 1; e >= k && (*e == ' ' || *e == '\t'); e--) *e = '\0';
    while (*v == ' ' || *v == '\t') v++;
    for (char *e = v + strlen(v) - 1;
         e >= v && (*e == ' ' || *e == '\t' || *e == '\n' || *e == '\r'); e--)
      *e = '\0';
    if (strcmp(k, "data-dir") == 0)
      set_opt(&o->data_dir, v);
    else if (strcmp(k, "capf-listen") == 0)
      set_opt(&o->capf_listen, v);
    else if (strcmp(k, "admin-listen") == 0)
      set_opt(&o->admin_listen, v);
    else if (strcmp(k, "http-listen") == 0)
      set_opt(&o->http_listen, v);
    else if (strcmp(k, "tftp-listen") == 0)
      set_opt(&o->tftp_listen, v);
    else if (strcmp(k, "files-dir") == 0)
      set_opt(&o->files_dir, v);
    else if (strcmp(k, "subject") == 0)
      set_opt(&o->subject, v);
    else if (strcmp(k, "drain-seconds") == 0)
      o->drain_seconds = (unsigned)strtoul(v, NULL, 10);
    else
      goto bad;
    continue;
  bad:
    fprintf(stderr, "capstan serve: %s:%d: expected 'key = value' with a known key\n", path,
            lineno);
    rc = 2;
    break;
  }
  fclose(f);
  return rc;
}

static int parse_options(int argc, char **argv, serve_options_t *o) {
  static const struct option kOpts[] = {
      {"data-dir", required_argument, NULL, 'd'},
      {"capf-listen", required_argument, NULL, 'c'},
      {"admin-listen", required_argument, NULL, 'a'},
      {"http-listen", required_argument, NULL, 'w'},
      {"tftp-listen", required_argument, NULL, 't'},
      {"files-dir", required_argument, NULL, 'f'},
      {"subject", required_argument, NULL, 's'},
      {"drain-seconds", required_argument, NULL, 'D'},
      {"config", required_argument, NULL, 'C'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  /* Defaults, then the config file, then the command line. */
  set_opt(&o->data_dir, capstan_store_data_dir(NULL));
  set_opt(&o->capf_listen, CAPSTAN_SERVE_CAPF_LISTEN);
  set_opt(&o->admin_listen, CAPSTAN_SERVE_ADMIN_LISTEN);
  set_opt(&o->http_listen, CAPSTAN_SERVE_HTTP_LISTEN);
  set_opt(&o->tftp_listen, CAPSTAN_SERVE_TFTP_LISTEN);
  o->drain_seconds = CAPSTAN_SERVE_DRAIN_SECONDS;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", kOpts, NULL)) != -1) {
    if (c == 'C' && read_config(optarg, o) != 0) return 2;
    if (c == 'h') {
      usage(stdout);
      return -1;
    }
    if (c == '?') {
      usage(stderr);
      return 2;
    }
  }
  optind = 1;
  while ((c = getopt_long(argc, argv, "", kOpts, NULL)) != -1) {
    switch (c) {
      case 'd':
        set_opt(&o->data_dir, optarg);
        break;
      case 'c':
        set_opt(&o->capf_listen, optarg);
        break;
      case 'a':
        set_opt(&o->admin_listen, optarg);
        break;
      case 'w':
        set_opt(&o->http_listen, optarg);
        break;
      case 't':
        set_opt(&o->tftp_listen, optarg);
        break;
      case 'f':
        set_opt(&o->files_dir, optarg);
        break;
      case 's':
        set_opt(&o->subject, optarg);
        break;
      case 'D':
        o->drain_seconds = (unsigned)strtoul(optarg, NULL, 10);
        break;
      default:
        break;
    }
  }
  if (optind != argc) {
    fprintf(stderr, "capstan serve: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  return 0;
}

static void free_options(serve_options_t *o) {
  free(o->data_dir);
  free(o->capf_listen);
  free(o->admin_listen);
  free(o->http_listen);
  free(o->tftp_listen);
  free(o->files_dir);
  free(o->subject);
}

int capstan_cli_serve_main(int argc, char **argv) {
  serve_options_t o = {0};
  int rc = parse_options(argc, argv, &o);
  if (rc == 0) {
    capstan_serve_options_t opt = {
        .data_dir = o.data_dir,
        .capf_listen = o.capf_listen,
        .admin_listen = o.admin_listen,
        .http_listen = o.http_listen,
        .tftp_listen = o.tftp_listen,
        .files_dir = o.files_dir,
        .subject = o.subject,
        .drain_seconds = o.drain_seconds,
    };
    rc = capstan_serve_run(&opt);
  } else if (rc < 0) {
    rc = 0; /* --help */
  }
  free_options(&o);
  return rc;
}
