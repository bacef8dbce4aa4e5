/* `capstan serve` and the hook through which the phone file servers and the
 * admin listener join the server process. */
#ifndef CAPSTAN_HANDLERS_SERVE_SERVE_H
#define CAPSTAN_HANDLERS_SERVE_SERVE_H

#include <stdint.h>
#include <uv.h>

#include "storage/records.pb-c.h"
#include "storage/store.h"

struct capstan_capf_server;

/* What components get at start. Strings live for the whole run. */
typedef struct capstan_serve_env {
  uv_loop_t *loop;
  capstan_store_t *store;
  const Capstan__Settings *settings; /* valid during start only */
  const char *admin_listen;
  const char *http_listen; /* "off" disables */
  const char *tftp_listen; /* "off" disables */
  const char *files_dir;   /* may be NULL */
  const char *capf_listen;
  int capf_port;
  struct capstan_capf_server *capf;
  double start_time; /* unix seconds */
} capstan_serve_env_t;

/* Components started beside the CAPF server; every callback may be NULL. */
typedef struct capstan_serve_components {
  void *arg;
  void (*apply_settings)(void *arg, const Capstan__Settings *s);
  void (*reload)(void *arg);
  /* Stop accepting, finish in-flight work up to |deadline_ms|, close every
   * handle, then call done(done_arg) once. */
  void (*drain)(void *arg, uint64_t deadline_ms, void (*done)(void *), void *done_arg);
} capstan_serve_components_t;

/* Starts the admin listener and the phone file servers. Defined in
 * core/components.c; a weak default starts nothing. */
int capstan_serve_start_components(const capstan_serve_env_t *env, capstan_serve_components_t *out);

int capstan_serve_main(int argc, char **argv);

#endif
