/* The admin listener (default 127.0.0.1:9464): /metrics (Prometheus text),
 * /healthz, the status page and its JSON (/status, /status.json, the device
 * API under /api/devices: status.h, devices_api.h) once
 * capstan_admin_enable_status is called, and routes other modules add.
 * Unknown paths get 404; methods other than GET and HEAD get 405 (from the
 * HTTP server). Loop thread only. */
#ifndef CAPSTAN_HANDLERS_ADMIN_ADMIN_H
#define CAPSTAN_HANDLERS_ADMIN_ADMIN_H

#include <uv.h>

#include "handlers/http/server.h"
#include "storage/store.h"

#define CAPSTAN_ADMIN_DEFAULT_ADDRESS "127.0.0.1:9464"
#define CAPSTAN_ADMIN_MAX_ROUTES 64

typedef struct capstan_admin capstan_admin_t;

/* Starts the admin server on |host_port| with |cfg| (NULL: the HTTP
 * defaults named "admin", at most 256 connections, 64 from one address,
 * Retry-After: 1 when refused for a limit). Registers
 * capstan_build_info{version,boringssl} = 1 and
 * capstan_process_start_time_seconds (unix time of this call). On success
 * *out is owned by the caller until capstan_admin_stop. Returns 0 or the
 * error of capstan_http_server_start / CAPSTAN_ENOMEM. */
int capstan_admin_start(uv_loop_t *loop, const char *host_port, const capstan_http_config_t *cfg,
                        capstan_admin_t **out);

/* Routes |path| (exact match on the decoded path, without query, e.g.
 * "/status") to |fn| with |arg|. |path| is copied. Returns 0,
 * CAPSTAN_EEXIST if the path is taken, CAPSTAN_EINVAL if it does not start
 * with '/' or CAPSTAN_ADMIN_MAX_ROUTES is reached, CAPSTAN_ENOMEM. */
int capstan_admin_add_route(capstan_admin_t *admin, const char *path, capstan_http_handler_fn fn,
                            void *arg);

/* Routes every path that starts with |prefix| (e.g. "/api/devices/") and
 * matches no exact route to |fn|. Errors as capstan_admin_add_route. */
int capstan_admin_add_prefix_route(capstan_admin_t *admin, const char *prefix,
                                   capstan_http_handler_fn fn, void *arg);

/* Serves the status page, /status.json and the device API from |store|
 * (which must outlive the admin server). Returns 0 or the error of
 * capstan_status_start / capstan_admin_add_route. */
int capstan_admin_enable_status(capstan_admin_t *admin, uv_loop_t *loop, capstan_store_t *store);

/* Responds with |body| (|len| bytes, malloc'd), taking it over: it is freed
 * when the write ends, or at once when the response cannot be made (then
 * 503). */
void capstan_admin_respond_owned(capstan_http_response_t *res, int status, const char *content_type,
                                 char *body, size_t len);

/* Responds |status| with {"error": |message|} (application/json). */
void capstan_admin_json_error(capstan_http_response_t *res, int status, const char *message);

/* The bound port. */
int capstan_admin_port(const capstan_admin_t *admin);

/* Changes the connection limits live (capstan_http_server_set_limits; 0
 * leaves a limit unchanged). */
void capstan_admin_set_limits(capstan_admin_t *admin, unsigned max_connections,
                              unsigned max_connections_per_address);

/* Stops the server (see capstan_http_server_stop), then the status page's
 * sampling, and frees |admin|; |done| (may be NULL) is called once
 * everything is closed. */
void capstan_admin_stop(capstan_admin_t *admin, void (*done)(void *arg), void *arg);

#endif
