/* The CAPF server: TLS listener on 3804 and the protocol state machine of
 * capf-protocol.md, one session per connection, all on the loop thread.
 * Crypto runs on the libuv thread pool; durable writes go through the
 * store's group-commit writer (capstan_store_submit). */
#ifndef CAPSTAN_HANDLERS_CAPF_CAPF_H
#define CAPSTAN_HANDLERS_CAPF_CAPF_H

#include <uv.h>

#include "core/settings.h"
#include "storage/store.h"

typedef struct capstan_capf_server capstan_capf_server_t;

/* Starts listening on |host_port| ("0.0.0.0:3804", "[::]:3804",
 * "127.0.0.1:0"). Loads the CAPF identity and CAPF-trust from |store| (which
 * must have its writer started) and applies |settings|. Returns 0 or a
 * negative error with a log line saying what to do. */
int capstan_capf_server_start(uv_loop_t *loop, capstan_store_t *store, const char *host_port,
                              const capstan_settings_t *settings, capstan_capf_server_t **out);

/* Bound port (useful with port 0). */
int capstan_capf_server_port(const capstan_capf_server_t *srv);

/* Applies live settings: keep-alive (also on open connections), throttle
 * bounds, timers, limits, legacy TLS, IPv6. */
void capstan_capf_server_apply_settings(capstan_capf_server_t *srv, const capstan_settings_t *s);

/* Reloads the CAPF identity and trust store from the store (SIGHUP, or a
 * regenerated certificate). Sessions in flight keep the identity they
 * started with. Returns 0 or a negative error (the old identity stays). */
int capstan_capf_server_reload(capstan_capf_server_t *srv);

/* Stops accepting; sessions in flight may finish until |deadline_ms| passes,
 * then the rest are closed. |done| runs once every handle is closed and the
 * server is freed. */
void capstan_capf_server_drain(capstan_capf_server_t *srv, uint64_t deadline_ms,
                               void (*done)(void *arg), void *arg);

/* Sessions open now (for the status page and tests). */
unsigned capstan_capf_server_sessions(const capstan_capf_server_t *srv);

/* The device names of the sessions open now that will still record their
 * outcome (they have named their device and not finished), as an array of *n strings the caller
 * frees (each and the array). srv may be NULL (no CAPF listener): none. 0 or CAPSTAN_ENOMEM. */
int capstan_capf_server_live_devices(const capstan_capf_server_t *srv, char ***names, size_t *n);

#endif
