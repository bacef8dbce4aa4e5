/* `capstan serve`: its command line and config file, turned into the
 * plain options of handlers/serve; the data directory's checks (a new store
 * only with --init, or in the default directory) and its lock (one server
 * per store, its pid in DIR/serve.pid) around the server's run. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/base/error.h"
#include "handlers/cli/cli.h"
#include "handlers/serve/serve.h"
#include "storage/lock.h"
#include "storage/records.h"
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
  OPT_STORE_MAP_MIB,
  OPT_STORE_MAX_MIB,
  OPT_CONFIG,
  OPT_INIT,
  OPT_STORE,
  OPT_NODE_NAME,
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
    [OPT_STORE_MAP_MIB] = {"store-map-mib", true, NULL},
    [OPT_STORE_MAX_MIB] = {"store-max-mib", true, NULL},
    [OPT_CONFIG] = {"config", true, read_config},
    [OPT_INIT] = {"init", false, NULL},
    [OPT_STORE] = {"store", true, NULL},
    [OPT_NODE_NAME] = {"node-name", true, NULL},
};

/* Where a config-file key goes: a slot of |f|, or NULL for an unknown key
 * (config itself included: files do not nest; init neither: creating a
 * store is a decision for one command line, not for every start). */
static char **config_slot(serve_file_t *f, const char *key) {
  if (strcmp(key, "data-dir") == 0) return &f->data_dir;
  for (int i = 0; i < NOPTS; i++) {
    if (i != OPT_CONFIG && i != OPT_INIT && strcmp(key, serve_opts[i].name) == 0) {
      return &f->value[i];
    }
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

int capstan_cli_serve_read_config(const char *path, char *why, size_t whylen) {
  serve_file_t f = {0};
  int rc = read_config(&f, path, why, whylen);
  for (int i = 0; i < NOPTS; i++) free(f.value[i]);
  free(f.data_dir);
  return rc;
}

/* An option's value: the command line, else a config file, else |def|. */
static const char *pick(const capstan_cli_t *c, int opt, const char *def) {
  const serve_file_t *file = c->ctx;
  if (c->value[opt] != NULL) return c->value[opt];
  return file->value[opt] != NULL ? file->value[opt] : def;
}

/* --- The data directory ----------------------------------------------------- */

typedef enum { DIR_MISSING, DIR_NOT_DIR, DIR_EMPTY, DIR_OTHER, DIR_STORE } dir_state_t;

/* What |dir| holds. A serve.pid left by a server that never made a store
 * does not count as content. 0, or a negative errno when it cannot tell. */
static int dir_state(const char *dir, dir_state_t *out) {
  struct stat st;
  if (stat(dir, &st) != 0) {
    if (errno != ENOENT) return -errno;
    *out = DIR_MISSING;
    return 0;
  }
  if (!S_ISDIR(st.st_mode)) {
    *out = DIR_NOT_DIR;
    return 0;
  }
  char path[PATH_MAX];
  snprintf(path, sizeof(path), "%s/data.mdb", dir);
  bool lmdb = stat(path, &st) == 0;
  snprintf(path, sizeof(path), "%s/%s", dir, CAPSTAN_STORE_CONF);
  if (lmdb || stat(path, &st) == 0) {
    *out = DIR_STORE;
    return 0;
  }
  bool content = false;
  int err = capstan_cli_dir_has_content(dir, &content);
  if (err != 0) return err;
  *out = content ? DIR_OTHER : DIR_EMPTY;
  return 0;
}

/* An existing store must already hold both identities: creating them is
 * what --init is for. */
static int check_identities(const char *dir) {
  capstan_store_t *store = NULL;
  int err = capstan_store_open(dir, 0, &store);
  if (err < 0) {
    capstan_cli_error("serve: cannot open the store in '%s': %s", dir, capstan_strerror(err));
    return CAPSTAN_EXIT_ERROR;
  }
  static const char *const kWhich[] = {CAPSTAN_IDENTITY_CAPF, CAPSTAN_IDENTITY_TFTP};
  const char *missing = NULL;
  for (size_t i = 0; i < 2 && missing == NULL && err == 0; i++) {
    Capstan__Identity *id = NULL;
    err = capstan_store_identity_load(store, kWhich[i], &id);
    if (err == CAPSTAN_ENOENT) {
      missing = kWhich[i];
      err = 0;
    }
    capstan__identity__free_unpacked(id, NULL);
  }
  capstan_store_close(store);
  if (err < 0) {
    capstan_cli_error("serve: cannot read the identities in '%s': %s", dir, capstan_strerror(err));
    return CAPSTAN_EXIT_ERROR;
  }
  if (missing != NULL) {
    capstan_cli_error(
        "serve: the store in '%s' has no %s identity yet: add --init to create it "
        "(phones that trust another server's certificates will not trust it)",
        dir, strcmp(missing, CAPSTAN_IDENTITY_CAPF) == 0 ? "CAPF" : "TFTP");
    return CAPSTAN_EXIT_USAGE;
  }
  return 0;
}

/* A mistyped --data-dir must not start a server with new CAPF and TFTP
 * identities, which phones that trust the real ones reject: a missing,
 * empty or foreign directory, or a store without identities, is refused
 * unless --init is given or it is the default directory (the README's
 * first start). Sets *create when the server may make the store. Returns 0
 * or the exit code after saying why. */
static int check_data_dir(const capstan_cli_t *c, const char *dir, bool *create) {
  *create = capstan_cli_has(c, OPT_INIT) || capstan_cli_is_default_data_dir(dir);
  dir_state_t st;
  int err = dir_state(dir, &st);
  if (err < 0) {
    capstan_cli_error("serve: cannot read the data directory '%s': %s", dir, strerror(-err));
    return CAPSTAN_EXIT_ERROR;
  }
  if (st == DIR_NOT_DIR) {
    capstan_cli_error("serve: the data directory '%s' is not a directory", dir);
    return CAPSTAN_EXIT_USAGE;
  }
  if (st == DIR_STORE) return *create ? 0 : check_identities(dir);
  if (*create) {
    if (st == DIR_MISSING && mkdir(dir, 0700) != 0 && errno != EEXIST) {
      capstan_cli_error("serve: cannot create the data directory '%s': %s", dir, strerror(errno));
      return CAPSTAN_EXIT_ERROR;
    }
    return 0;
  }
  capstan_cli_error(
      "serve: the data directory '%s' %s. Not starting: a new store would get new CAPF and TFTP "
      "identities, which phones that trust the existing ones reject. Check the path; to create a "
      "new store there, add --init",
      dir,
      st == DIR_MISSING ? "does not exist"
      : st == DIR_EMPTY ? "is empty"
                        : "holds no capstan store (no data.mdb or store.conf)");
  return CAPSTAN_EXIT_USAGE;
}

/* One server per store: the lock is held until the process ends. */
static int take_lock(const char *dir, capstan_dirlock_t **lock) {
  pid_t holder = 0, server = 0;
  int err = capstan_dirlock_acquire(dir, CAPSTAN_DIRLOCK_SERVE, lock, &holder);
  if (err == 0) return 0;
  if (err != CAPSTAN_EBUSY) {
    capstan_cli_error("serve: cannot lock '%s/%s': %s", dir, CAPSTAN_SERVE_PID_FILE,
                      capstan_strerror(err));
  } else if (capstan_dirlock_server(dir, &server, NULL) == 0) {
    capstan_cli_error(
        "serve: another capstan serve (pid %ld) is already running on '%s': one "
        "server per store (stop it first; 'capstan reload --data-dir %s' makes it "
        "re-read its certificates and settings)",
        (long)server, dir, dir);
  } else {
    capstan_cli_error(
        "serve: '%s' is locked by process %ld (a capstan restore?): try again when "
        "it has finished",
        dir, (long)holder);
  }
  return CAPSTAN_EXIT_ERROR;
}

/* A whole number from |min| to |max| in *out (unchanged when |text| is
 * NULL); false for anything else: a typo must not become 0. */
static bool parse_bounded(const char *text, unsigned min, unsigned max, unsigned *out) {
  if (text == NULL) return true;
  char *end = NULL;
  unsigned long v = text[0] >= '0' && text[0] <= '9' ? strtoul(text, &end, 10) : ULONG_MAX;
  if (end == NULL || *end != '\0' || v < min || v > max) return false;
  *out = (unsigned)v;
  return true;
}

static int run_serve(capstan_cli_t *c) {
  serve_file_t *file = c->ctx;
  if (c->data_dir == NULL) c->data_dir = file->data_dir;
  const char *drain = pick(c, OPT_DRAIN_SECONDS, NULL);
  unsigned drain_seconds = CAPSTAN_SERVE_DRAIN_SECONDS;
  /* A typo here would otherwise drain for 0 s and cut every phone off. */
  if (!parse_bounded(drain, 0, CAPSTAN_SERVE_DRAIN_SECONDS_MAX, &drain_seconds)) {
    return capstan_cli_usage_error(c,
                                   "--drain-seconds must be a whole number from 0 to %u, got '%s'",
                                   CAPSTAN_SERVE_DRAIN_SECONDS_MAX, drain);
  }
  const char *map = pick(c, OPT_STORE_MAP_MIB, NULL), *max = pick(c, OPT_STORE_MAX_MIB, NULL);
  unsigned map_mib = CAPSTAN_SERVE_STORE_MAP_MIB, max_mib = CAPSTAN_SERVE_STORE_MAX_MIB;
  if (!parse_bounded(map, 1, CAPSTAN_SERVE_STORE_MIB_MAX, &map_mib) ||
      !parse_bounded(max, 1, CAPSTAN_SERVE_STORE_MIB_MAX, &max_mib)) {
    return capstan_cli_usage_error(c,
                                   "--store-map-mib and --store-max-mib must be whole numbers "
                                   "from 1 to %u",
                                   CAPSTAN_SERVE_STORE_MIB_MAX);
  }
  /* Only a maximum given: the map starts there when that is smaller. */
  if (map == NULL && map_mib > max_mib) map_mib = max_mib;
  if (map_mib > max_mib) {
    return capstan_cli_usage_error(c, "--store-map-mib (%u) is larger than --store-max-mib (%u)",
                                   map_mib, max_mib);
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
      .store_map_mib = map_mib,
      .store_max_mib = max_mib,
      .store_url = pick(c, OPT_STORE, NULL),
      .node_name = pick(c, OPT_NODE_NAME, NULL),
  };
  int rc = check_data_dir(c, opt.data_dir, &opt.init);
  if (rc != 0) return rc;
  capstan_dirlock_t *lock = NULL;
  if ((rc = take_lock(opt.data_dir, &lock)) != 0) return rc;
  rc = capstan_serve_run(&opt);
  capstan_dirlock_release(lock);
  return rc;
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
          "stderr. The data directory must hold a store made by `capstan init` (or\n"
          "`capstan restore`): a missing or empty directory is refused (exit 2) unless\n"
          "--init is given, so that a mistyped path never starts a server with new CAPF\n"
          "and TFTP identities. Only the default ./capstan-data is initialised without it.\n"
          "One server per store: a second serve on the same directory is refused; the\n"
          "running one's pid is in DIR/serve.pid while it runs.\n"
          "\n"
          "  --data-dir DIR          data directory (default ./capstan-data or $CAPSTAN_DATA_DIR)\n"
          "  --init                  create the directory, the store and the identities when\n"
          "                          missing (as `capstan init`)\n"
          "  --capf-listen H:P       CAPF TLS listener (default [::]:3804)\n"
          "  --admin-listen H:P      metrics/status listener (default 127.0.0.1:9464)\n"
          "  --http-listen H:P       phone file HTTP listener (default [::]:6970; 'off')\n"
          "  --tftp-listen H:P       phone file TFTP listener (default [::]:69; 'off')\n"
          "  --files-dir DIR         static files (firmware, ringtones) served to phones\n"
          "  --subject \"O=..,C=..\"   subject attributes for certificates made by --init\n"
          "  --drain-seconds N       on SIGTERM, wait up to N s (0-3600) for sessions (default "
          "30)\n"
          "  --store-max-mib N       the most the store may hold, in MiB (default 65536): its\n"
          "                          map grows to it as it fills; past it phones are told to\n"
          "                          retry later (event=storage_map_full)\n"
          "  --store-map-mib N       the store's map at start, in MiB (default 4096)\n"
          "  --store URL             with --init: put the store in PostgreSQL (a libpq URL;\n"
          "                          default $CAPSTAN_STORE), or join the capstan store that\n"
          "                          database holds: several nodes share one store (see\n"
          "                          'capstan init --help'); the map options are LMDB's only\n"
          "  --node-name NAME        this node's name among the nodes of a shared store\n"
          "                          (default host:data-dir); keep it across restarts\n"
          "  --config FILE           read the same keys from FILE, one 'key = value' a line;\n"
          "                          command-line options win\n"
          "\n"
          "Signals: SIGTERM/SIGINT drain and exit: CAPF sessions finish (new ones are\n"
          "refused) while /healthz, /metrics and phone files keep answering; SIGHUP\n"
          "reloads certificates and settings: `capstan reload --data-dir DIR` sends it to\n"
          "the server of DIR.\n"
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
