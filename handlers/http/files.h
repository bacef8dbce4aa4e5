/* The phone file route of the HTTP server: GET/HEAD of "/<name>" through a
 * file source (core/files/source.h).
 *
 * Names are one path segment of at most CAPSTAN_HTTP_FILES_MAX_NAME bytes:
 * a name with '/', '\\', "..", a leading '.', or a control character is
 * answered 404 without detail (and counted as denied). Answers: 200 with
 * application/octet-stream (text/xml for *.cnf.xml), 404 for not found and
 * refused names (the reason is logged, not sent), 500 for errors producing
 * the file, 503 if memory runs out. Method checks (405) are the server's.
 *
 * Metrics: capstan_http_files_requests_total{kind,result} (result
 * ok|not_found|denied|error), capstan_http_files_bytes_sent_total{kind},
 * capstan_http_files_duration_seconds{kind} (request to last byte written),
 * capstan_http_files_active (lookups and transfers in progress). */
#ifndef CAPSTAN_HANDLERS_HTTP_FILES_H
#define CAPSTAN_HANDLERS_HTTP_FILES_H

#include "core/files/source.h"
#include "handlers/http/server.h"

#define CAPSTAN_HTTP_FILES_MAX_NAME 255

/* Route handler for capstan_http_server_start: |arg| is the
 * capstan_filesource_t*, which must outlive the server. */
void capstan_http_files_handler(void *arg, const capstan_http_request_t *req,
                                capstan_http_response_t *res);

/* Returns 1 if |name| is an acceptable file name (see above), else 0. */
int capstan_http_files_name_ok(const char *name);

#endif
