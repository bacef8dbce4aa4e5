/* `capstan serve`, the composition root: one process, one libuv loop, the
 * store's writer thread, and every listener from one table
 * (handlers/serve/listeners.c). The command line and the config file are
 * the CLI's (handlers/cli/serve.c); this layer takes a plain struct. */
#ifndef CAPSTAN_HANDLERS_SERVE_SERVE_H
#define CAPSTAN_HANDLERS_SERVE_SERVE_H

#include <stdbool.h>

/* What the server runs with. Strings are borrowed for the whole run;
 * "off" for http_listen or tftp_listen disables that listener. */
typedef struct capstan_serve_options {
  const char *data_dir;
  const char *capf_listen;
  const char *admin_listen;
  const char *http_listen;
  const char *tftp_listen;
  const char *files_dir; /* NULL: no static files */
  const char *subject;   /* for identities made at first start; may be NULL */
  bool init;             /* create the store and the identities when missing */
  unsigned drain_seconds;
  /* The store's map: its size at start and how far it grows when full
   * (MiB; at the maximum, writes fail and phones are told to retry). */
  unsigned store_map_mib;
  unsigned store_max_mib;
  /* With init: the PostgreSQL store to create or join (NULL: LMDB, or
   * $CAPSTAN_STORE). A store that exists already must be this one. */
  const char *store_url;
  /* This node's name among the nodes of a shared store (NULL: host:data
   * directory). */
  const char *node_name;
} capstan_serve_options_t;

/* The defaults `capstan serve --help` documents. */
#define CAPSTAN_SERVE_CAPF_LISTEN "[::]:3804"
#define CAPSTAN_SERVE_ADMIN_LISTEN "127.0.0.1:9464"
#define CAPSTAN_SERVE_HTTP_LISTEN "[::]:6970"
#define CAPSTAN_SERVE_TFTP_LISTEN "[::]:69"
#define CAPSTAN_SERVE_DRAIN_SECONDS 30
#define CAPSTAN_SERVE_DRAIN_SECONDS_MAX 3600
#define CAPSTAN_SERVE_STORE_MAP_MIB 4096    /* address space, not disk */
#define CAPSTAN_SERVE_STORE_MAX_MIB 65536   /* 64 GiB */
#define CAPSTAN_SERVE_STORE_MIB_MAX 1048576 /* 1 TiB: the largest either may be */

/* Runs the server in the foreground until SIGTERM or SIGINT has drained
 * it. Opens the store in opt->data_dir (with opt->init: creates it and its
 * identities when missing). The caller holds the data directory's lock
 * (storage/lock.h) for the whole run.
 * Returns the process exit code: 0 after a clean drain, 1 when it could not
 * start (logged). */
int capstan_serve_run(const capstan_serve_options_t *opt);

#endif
