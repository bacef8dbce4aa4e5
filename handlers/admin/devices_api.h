/* The read-only device API of the admin listener:
 *
 *   GET /api/devices[?status=S][&limit=N][&after=NAME]
 *       devices in name order, |limit| (1-1000, default 100) at most, those
 *       after the name |after| (the previous page's "next"); only those in
 *       operation status S ("pending", "in-progress" or "in_progress",
 *       "succeeded", "failed", "expired", "none") when given.
 *       200 {"devices":[...],"count":N,"limit":N,"status":S|null,
 *            "after":NAME|null,"next":NAME|null}
 *       400 {"error":"..."} for an unknown parameter or a bad value.
 *   GET /api/devices/NAME
 *       200 the device, with its certificate history; 404 {"error":...}.
 *
 * A device is shown as `capstan device show --json` shows it: never its
 * authentication string (only whether one is set), nor its certificate or
 * configuration bytes. Store reads run on the libuv thread pool. */
#ifndef CAPSTAN_HANDLERS_ADMIN_DEVICES_API_H
#define CAPSTAN_HANDLERS_ADMIN_DEVICES_API_H

#include <uv.h>

#include "core/base/phone.h"
#include "handlers/admin/json.h"
#include "handlers/http/server.h"
#include "storage/store.h"

#define CAPSTAN_DEVICES_API_DEFAULT_LIMIT 100
#define CAPSTAN_DEVICES_API_MAX_LIMIT 1000

typedef struct capstan_devices_query {
  int status; /* a capstan_census_status_t, or -1 for any */
  unsigned limit;
  char after[CAPSTAN_DEVICE_NAME_MAX + 1]; /* "" for the first page */
} capstan_devices_query_t;

/* Parses the raw query string (without '?'; percent-encoded). Returns 0,
 * or CAPSTAN_EINVAL with *why saying what is wrong (a static string). */
int capstan_devices_query_parse(const char *query, capstan_devices_query_t *q, const char **why);

/* The list page for |q| as a JSON object, in a read transaction of its
 * own. Returns 0 or a store error. */
int capstan_devices_list_json(capstan_store_t *store, const capstan_devices_query_t *q,
                              capstan_json_t *j);

/* The device |name| as a JSON object. CAPSTAN_ENOENT when there is none. */
int capstan_devices_show_json(capstan_store_t *store, const char *name, capstan_json_t *j);

/* What the routes need; the arg of both. */
typedef struct capstan_devices_api {
  uv_loop_t *loop;
  capstan_store_t *store;
} capstan_devices_api_t;

/* Route for "/api/devices". */
void capstan_devices_api_list_route(void *api, const capstan_http_request_t *req,
                                    capstan_http_response_t *res);
/* Route for the prefix "/api/devices/". */
void capstan_devices_api_show_route(void *api, const capstan_http_request_t *req,
                                    capstan_http_response_t *res);

#endif
