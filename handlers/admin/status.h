/* The live status page of the admin listener (product.md R20; the fields
 * are documented in docs/status.md):
 *
 *   GET /status       one self-contained HTML page (inline CSS and script,
 *                     no external URL) that shows the data below and
 *                     refreshes itself from /status.json every 2 seconds;
 *   GET /status.json  the same data for scripts.
 *
 * The data: devices by operation status (a census of the store, see
 * census.h, at most a second old), enrollments, failures and file
 * downloads per second now and over the last 30 minutes (sampled once a
 * second from the metrics registry into a ring buffer, series.h), an
 * estimate of the time to completion, the slowest phones in progress and
 * the latest failures with their reasons, phones held by the key
 * generation throttle, the limits that refused anything, the CAPF
 * certificate and issuer mode, and the node: name, version, uptime.
 *
 * Loop thread only; store reads run on the libuv thread pool. */
#ifndef CAPSTAN_HANDLERS_ADMIN_STATUS_H
#define CAPSTAN_HANDLERS_ADMIN_STATUS_H

#include <uv.h>

#include "handlers/admin/census.h"
#include "handlers/admin/json.h"
#include "handlers/http/server.h"
#include "storage/store.h"

/* Samples kept: 30 minutes of one a second. */
#define CAPSTAN_STATUS_WINDOW_SECONDS 1800
/* The chart's interval. */
#define CAPSTAN_STATUS_CHART_STEP 5
/* "Now" rates are over this many seconds; the estimate of the time to
 * completion uses the rate over CAPSTAN_STATUS_ETA_SECONDS. */
#define CAPSTAN_STATUS_NOW_SECONDS 10
#define CAPSTAN_STATUS_ETA_SECONDS 300
/* A census older than this (and a store written since) is taken again. */
#define CAPSTAN_STATUS_CENSUS_MAX_AGE 1.0

typedef struct capstan_status capstan_status_t;

/* Starts sampling the metrics once a second on |loop|. Returns 0,
 * CAPSTAN_ENOMEM or a libuv error. */
int capstan_status_start(uv_loop_t *loop, capstan_store_t *store, capstan_status_t **out);

/* Stops sampling and frees |st| once no store read runs; |done| (may be
 * NULL) follows. Stop the HTTP server first: requests in flight refer to
 * |st|. */
void capstan_status_stop(capstan_status_t *st, void (*done)(void *arg), void *arg);

/* Routes; |arg| is the capstan_status_t. */
void capstan_status_route_page(void *arg, const capstan_http_request_t *req,
                               capstan_http_response_t *res);
void capstan_status_route_json(void *arg, const capstan_http_request_t *req,
                               capstan_http_response_t *res);
/* The device API's context (devices_api.h), owned by |st|. */
void *capstan_status_devices_api(capstan_status_t *st);

/* For tests: takes one sample of the metrics at monotonic time |t| (the
 * timer does so every second), and renders /status.json for |census| at
 * unix time |now| into |j|. */
void capstan_status_sample(capstan_status_t *st, double t);
void capstan_status_render(capstan_status_t *st, const capstan_census_t *census, double now,
                           capstan_json_t *j);

#endif
