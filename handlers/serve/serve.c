/* `capstan serve`: the server process. One libuv loop owns every listener;
 * the store's writer thread and the libuv thread pool do the rest.
 *
 * Life cycle: open (and if needed initialise) the store, start the writer,
 * start the listeners, run. SIGHUP reloads certificates and settings;
 * admin commands' setting changes are noticed by polling the store's
 * transaction id once a second. SIGTERM/SIGINT drain: stop accepting, let
 * sessions finish up to --drain-seconds, then exit 0. */
#define _GNU_SOURCE /* sched_getaffinity */
#include "handlers/serve/serve.h"

#include <errno.h>
#include <getopt.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "core/base/error.h"
#include "core/identities.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "handlers/capf/capf.h"
#include "storage/store.h"

#define SETTINGS_POLL_MS 1000
#define CONFIG_LINE_MAX 1024

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

typedef struct server {
  serve_options_t opt;
  uv_loop_t *loop;
  capstan_store_t *store;
  Capstan__Settings *settings;
  uint64_t settings_txnid;
  uint64_t trust_generation; /* Settings.trust_generation last applied */
  capstan_capf_server_t *capf;
  capstan_serve_components_t extra;
  uv_signal_t sigterm, sigint, sighup;
  uv_timer_t poll;
  int stopping;
  unsigned draining; /* components still draining */
} server_t;

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
  set_opt(&o->capf_listen, "[::]:3804");
  set_opt(&o->admin_listen, "127.0.0.1:9464");
  set_opt(&o->http_listen, "[::]:6970");
  set_opt(&o->tftp_listen, "[::]:69");
  o->drain_seconds = 30;
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

/* --- Live settings -------------------------------------------------------- */

static int settings_equal(const Capstan__Settings *a, const Capstan__Settings *b) {
  size_t na = capstan__settings__get_packed_size(a), nb = capstan__settings__get_packed_size(b);
  if (na != nb) return 0;
  uint8_t *pa = malloc(na ? na : 1), *pb = malloc(nb ? nb : 1);
  int eq = pa && pb && capstan__settings__pack(a, pa) == na &&
           capstan__settings__pack(b, pb) == nb && memcmp(pa, pb, na) == 0;
  free(pa);
  free(pb);
  return eq;
}

static void apply_settings(server_t *srv) {
  Capstan__Settings *s = NULL;
  if (capstan_store_settings_load(srv->store, &s) < 0) return;
  /* Most transactions are not about settings: say so only on a change, so
   * an operator (or a test) can see when a `config set` took effect. */
  if (srv->settings != NULL && !settings_equal(srv->settings, s)) {
    LOG_INFO(
        "event=settings_applied keepalive_minutes=%u validity_days=%u "
        "max_concurrent_keygen=%u max_new_keygen_per_second=%u legacy_tls=%d "
        "enable_ipv6=%d capf_host=\"%s\"",
        s->keepalive_minutes, s->validity_days, s->max_concurrent_keygen,
        s->max_new_keygen_per_second, s->legacy_tls, s->enable_ipv6,
        s->capf_host ? s->capf_host : "");
  }
  capstan__settings__free_unpacked(srv->settings, NULL);
  srv->settings = s;
  if (srv->capf) capstan_capf_server_apply_settings(srv->capf, s);
  if (srv->extra.apply_settings) srv->extra.apply_settings(srv->extra.arg, s);
  /* `capstan trust` bumps the generation with every change: reload the
   * trust stores as SIGHUP would, without the operator sending it. */
  if (s->trust_generation != srv->trust_generation) {
    srv->trust_generation = s->trust_generation;
    LOG_INFO("event=reload cause=trust_changed generation=%llu",
             (unsigned long long)s->trust_generation);
    if (srv->capf) capstan_capf_server_reload(srv->capf);
    if (srv->extra.reload) srv->extra.reload(srv->extra.arg);
  }
}

static void on_poll(uv_timer_t *t) {
  server_t *srv = t->data;
  uint64_t txnid = capstan_store_txnid(srv->store);
  if (txnid == srv->settings_txnid) return;
  srv->settings_txnid = txnid;
  apply_settings(srv);
}

/* --- Signals and drain ---------------------------------------------------- */

static void on_component_drained(void *arg) {
  server_t *srv = arg;
  if (--srv->draining > 0) return;
  LOG_INFO("event=drained");
  uv_close((uv_handle_t *)&srv->sigterm, NULL);
  uv_close((uv_handle_t *)&srv->sigint, NULL);
  uv_close((uv_handle_t *)&srv->sighup, NULL);
  uv_close((uv_handle_t *)&srv->poll, NULL);
  /* Sessions are gone: commit what they queued, then let the loop end. */
  capstan_store_writer_stop(srv->store);
}

static void stop_server(server_t *srv) {
  if (srv->stopping) return;
  srv->stopping = 1;
  uint64_t deadline_ms = (uint64_t)srv->opt.drain_seconds * 1000;
  LOG_INFO("event=stopping drain_seconds=%u", srv->opt.drain_seconds);
  srv->draining = 1; /* held until every component is asked */
  if (srv->capf) {
    srv->draining++;
    capstan_capf_server_drain(srv->capf, deadline_ms, on_component_drained, srv);
    srv->capf = NULL;
  }
  if (srv->extra.drain) {
    /* The components may free their state as soon as they stop, well before
     * the CAPF sessions drain: no settings or reloads reach them after this
     * (the settings poll and SIGHUP stay live until everything drained). */
    srv->extra.apply_settings = NULL;
    srv->extra.reload = NULL;
    srv->draining++;
    srv->extra.drain(srv->extra.arg, deadline_ms, on_component_drained, srv);
  }
  on_component_drained(srv);
}

static void on_signal(uv_signal_t *h, int signum) {
  server_t *srv = h->data;
  if (signum == SIGHUP) {
    LOG_INFO("event=reload signal=SIGHUP");
    apply_settings(srv);
    if (srv->capf) capstan_capf_server_reload(srv->capf);
    if (srv->extra.reload) srv->extra.reload(srv->extra.arg);
    return;
  }
  stop_server(srv);
}

static double process_start_time;

int capstan_serve_main(int argc, char **argv) {
  server_t srv = {0};
  int rc = parse_options(argc, argv, &srv.opt);
  if (rc != 0) {
    free_options(&srv.opt);
    return rc < 0 ? 0 : rc;
  }
  signal(SIGPIPE, SIG_IGN);
  /* Every phone holds a socket: take every descriptor the system allows. */
  struct rlimit nofile;
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  /* Crypto runs on libuv's thread pool: one thread per core this process
   * may run on (its CPU affinity, so a server pinned with taskset or a
   * cpuset does not oversubscribe its cores), set before the pool starts.
   * An operator may override it. */
  if (getenv("UV_THREADPOOL_SIZE") == NULL) {
    cpu_set_t cpus;
    long n = sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus)
                                                            : sysconf(_SC_NPROCESSORS_ONLN);
    char buf[24];
    snprintf(buf, sizeof(buf), "%ld", n < 1 ? 1 : (n > 64 ? 64 : n));
    setenv("UV_THREADPOOL_SIZE", buf, 1);
  }
  /* SCHED_BATCH, inherited by every thread started from here on: a thread
   * woken by a packet or a finished job no longer preempts a crypto worker
   * in the middle of a signature; it runs at the worker's next scheduling
   * point and then handles everything that arrived meanwhile in one pass.
   * Under load that cuts the server's context switches from about 3.3 to
   * 1.25 per enrollment (bench/RESULTS.md, run 4); an idle core still runs
   * a woken thread at once. The priority (nice value) is unchanged. */
  struct sched_param no_priority = {0};
  if (sched_setscheduler(0, SCHED_BATCH, &no_priority) != 0) {
    LOG_WARN("event=sched_batch_unavailable error=\"%s\"", strerror(errno));
  }
  process_start_time = (double)time(NULL);
  int exit_code = 1;
  rc = capstan_store_open(srv.opt.data_dir, CAPSTAN_STORE_CREATE, &srv.store);
  if (rc < 0) {
    LOG_ERROR("event=store_open_failed dir=%s error=%s", srv.opt.data_dir, capstan_strerror(rc));
    goto out;
  }
  int created = 0;
  if (capstan_init_identities(srv.store, srv.opt.subject, &created) < 0) goto out;
  if (created) LOG_INFO("event=initialised dir=%s identities=%d", srv.opt.data_dir, created);
  srv.loop = uv_default_loop();
  if (capstan_store_writer_start(srv.store, srv.loop) < 0) goto out;
  srv.settings_txnid = capstan_store_txnid(srv.store);
  if (capstan_store_settings_load(srv.store, &srv.settings) < 0) goto out_writer;
  srv.trust_generation = srv.settings->trust_generation;

  uv_signal_init(srv.loop, &srv.sigterm);
  uv_signal_init(srv.loop, &srv.sigint);
  uv_signal_init(srv.loop, &srv.sighup);
  srv.sigterm.data = srv.sigint.data = srv.sighup.data = &srv;
  /* Handles first: a failed start drains through the same path. */
  uv_signal_start(&srv.sigterm, on_signal, SIGTERM);
  uv_signal_start(&srv.sigint, on_signal, SIGINT);
  uv_signal_start(&srv.sighup, on_signal, SIGHUP);
  uv_timer_init(srv.loop, &srv.poll);
  srv.poll.data = &srv;
  uv_timer_start(&srv.poll, on_poll, SETTINGS_POLL_MS, SETTINGS_POLL_MS);
  rc = capstan_capf_server_start(srv.loop, srv.store, srv.opt.capf_listen, srv.settings, &srv.capf);
  if (rc < 0) {
    stop_server(&srv);
    uv_run(srv.loop, UV_RUN_DEFAULT);
    goto out_writer;
  }
  capstan_serve_env_t env = {
      .loop = srv.loop,
      .store = srv.store,
      .settings = srv.settings,
      .admin_listen = srv.opt.admin_listen,
      .http_listen = srv.opt.http_listen,
      .tftp_listen = srv.opt.tftp_listen,
      .files_dir = srv.opt.files_dir,
      .capf_listen = srv.opt.capf_listen,
      .capf_port = capstan_capf_server_port(srv.capf),
      .capf = srv.capf,
      .start_time = process_start_time,
  };
  rc = capstan_serve_start_components(&env, &srv.extra);
  if (rc < 0) {
    stop_server(&srv);
    uv_run(srv.loop, UV_RUN_DEFAULT);
    goto out_writer;
  }
  LOG_INFO("event=ready version=%s data_dir=%s capf=%s capf_port=%d pid=%d", CAPSTAN_VERSION,
           srv.opt.data_dir, srv.opt.capf_listen, capstan_capf_server_port(srv.capf),
           (int)getpid());
  uv_run(srv.loop, UV_RUN_DEFAULT);
  exit_code = 0;
out_writer:
  capstan_store_writer_stop(srv.store);
  uv_run(srv.loop, UV_RUN_DEFAULT);
  uv_loop_close(srv.loop);
out:
  capstan__settings__free_unpacked(srv.settings, NULL);
  capstan_store_close(srv.store);
  free_options(&srv.opt);
  LOG_INFO("event=exit code=%d", exit_code);
  return exit_code;
}
