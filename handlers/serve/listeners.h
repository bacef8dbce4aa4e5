/* The table of what `capstan serve` runs: each row starts a listener (or a
 * service listeners share), applies live settings to it, reloads its
 * certificates, and drains it. serve.c walks the table for every life-cycle
 * step; a new listener is one more row in listeners.c and its object's
 * field in capstan_serve_ctx_t. */
#ifndef CAPSTAN_HANDLERS_SERVE_LISTENERS_H
#define CAPSTAN_HANDLERS_SERVE_LISTENERS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/files/service.h"
#include "core/settings.h"
#include "core/stats.h"
#include "handlers/admin/admin.h"
#include "handlers/capf/capf.h"
#include "handlers/http/server.h"
#include "handlers/serve/serve.h"
#include "handlers/tftp/tftp.h"
#include "storage/store.h"

/* What the rows share: the process's loop, store and options, and each
 * row's object (NULL until started, or when disabled). */
typedef struct capstan_serve_ctx {
  uv_loop_t *loop;
  capstan_store_t *store;
  const capstan_serve_options_t *opt;
  const capstan_settings_t *settings; /* current; valid during each call */
  capstan_capf_server_t *capf;
  capstan_stats_t *stats;
  capstan_admin_t *admin;
  capstan_files_service_t *files;
  capstan_http_server_t *http;
  capstan_tftp_server_t *tftp;
  char capf_host[256]; /* capfList host when the capf-host setting is empty */
} capstan_serve_ctx_t;

typedef void (*capstan_serve_done_fn)(void *arg);

/* One row. start is called in table order and returns 0 (also when the row
 * is disabled by its option, leaving its object NULL) or an error (logged).
 * apply_settings and reload may be NULL and do nothing for a row whose
 * object is NULL. drain stops accepting, finishes work in flight up to
 * |deadline_ms|, releases the row's object (setting it NULL) and then
 * calls done(arg) once, at once when there is nothing to drain. The rows
 * of one stage drain together, stage after stage: 0 the CAPF sessions
 * (bounded by --drain-seconds), 1 the listeners that keep answering
 * meanwhile (admin, phone files over HTTP and TFTP) and the gauges they
 * serve, 2 the services those listeners use (the file service). */
typedef struct capstan_serve_listener {
  const char *name;
  unsigned stage;
  int (*start)(capstan_serve_ctx_t *ctx);
  void (*apply_settings)(capstan_serve_ctx_t *ctx);
  void (*reload)(capstan_serve_ctx_t *ctx);
  void (*drain)(capstan_serve_ctx_t *ctx, uint64_t deadline_ms, capstan_serve_done_fn done,
                void *arg);
} capstan_serve_listener_t;

#define CAPSTAN_SERVE_STAGES 3

extern const capstan_serve_listener_t capstan_serve_listeners[];
extern const size_t capstan_serve_listener_count;

/* One line with the bound ports, once every row has started (tests and
 * operators read it). */
void capstan_serve_log_listeners(const capstan_serve_ctx_t *ctx);

#endif
