/* A small HTTP/1.1 server on one libuv loop, parsed by http_parser.
 *
 * Used twice: the admin listener (metrics, health, status) and the phone file
 * server (GET/HEAD of phone files). The server owns framing, limits and
 * errors; a single route handler owns the answer to each well-formed request.
 *
 * Behaviour, for every server:
 * - keep-alive (HTTP/1.1 default, "Connection: close" honoured, HTTP/1.0 only
 *   when it asks for keep-alive); pipelined requests are answered in order:
 *   the connection stops reading while a response is pending;
 * - every response carries Content-Length, Cache-Control: no-store, Date and
 *   Server: capstan; HEAD gets the headers a GET would get and no body;
 * - errors answered by the server itself, after which the connection closes:
 *   400 malformed (parser errors, Content-Length with Transfer-Encoding,
 *   duplicate Content-Length, obs-fold, control characters or %00 in the
 *   path, bad percent-encoding), 405 for methods other than GET/HEAD (unless
 *   cfg.allow_any_method), 408 when the header block does not arrive within
 *   header_timeout_ms, 413 for bodies over max_body_bytes, 414 for request
 *   targets over CAPSTAN_HTTP_MAX_URL_BYTES, 431 for header blocks over
 *   max_header_bytes;
 * - reads land in one loop-wide buffer consumed at once; an idle connection
 *   holds no buffer (only its handle, timer and parser state);
 * - connection limits (max_connections in all, max_connections_per_address
 *   from one IP address, IPv4-mapped IPv6 counted as IPv4): a connection
 *   beyond one is not cut off but told to come back: its request is read
 *   (header timer at most CAPSTAN_HTTP_REFUSING_TIMEOUT_MS) and answered 503 with
 *   Retry-After: retry_after_seconds and Connection: close, whatever it
 *   asked. Such refusals do not count against the limits; at most
 *   max_refusing are answered at once, and a connection beyond that (a
 *   flood) is closed at accept. Every refusal is counted in
 *   capstan_http_connections_rejected_total{server,reason} (reason
 *   limit_total or limit_per_address), the ones closed unanswered also in
 *   capstan_http_connections_dropped_total{server,reason} (those being
 *   answered: the gauge capstan_http_connections_refusing), and logged at
 *   most once per reason per CAPSTAN_LOG_LIMIT_MS with the number held
 *   back.
 *
 * Everything runs on the loop thread; nothing here is thread-safe. */
#ifndef CAPSTAN_HANDLERS_HTTP_SERVER_H
#define CAPSTAN_HANDLERS_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/files/source.h"

/* Hard cap on the request target (path and query, as sent). */
#define CAPSTAN_HTTP_MAX_URL_BYTES 2048

/* A connection refused for a limit has this long (at most the header
 * timeout) to send its request and hear the 503. */
#define CAPSTAN_HTTP_REFUSING_TIMEOUT_MS 5000

typedef struct capstan_http_server capstan_http_server_t;

/* A parsed request. It and its strings stay valid until the handler's
 * response has been given (capstan_http_respond*); copy what is needed
 * later. */
typedef struct capstan_http_request {
  const char *method;  /* "GET", "HEAD", ... */
  const char *path;    /* percent-decoded, NUL-terminated, without query; no
                          NUL or control characters; starts with '/' */
  const char *query;   /* raw (not decoded) query, without '?'; may be "" */
  int keep_alive;      /* the connection stays open after the response */
  int head;            /* method is HEAD: the server sends no body */
  const uint8_t *body; /* request body (only if max_body_bytes > 0), or NULL */
  size_t body_len;
  const char *peer; /* peer address as text, for logs */
} capstan_http_request_t;

/* Opaque; owned by the connection. Valid from the handler call until one
 * capstan_http_respond* call, which hands it back. */
typedef struct capstan_http_response capstan_http_response_t;

/* Route handler: called on the loop thread for each well-formed request;
 * must eventually call exactly one capstan_http_respond* on |res|, either
 * before returning or later on the loop thread. The connection waits for it
 * (even if the peer has gone, and even during capstan_http_server_stop). */
typedef void (*capstan_http_handler_fn)(void *arg, const capstan_http_request_t *req,
                                        capstan_http_response_t *res);

/* Optional: |fn| is called once when the response given on |res| has been
 * fully written (status 0) or abandoned (negative: peer gone, timeout,
 * server stopping). |body_sent| counts body bytes written (0 for HEAD).
 * Call before capstan_http_respond*. */
typedef void (*capstan_http_done_fn)(void *arg, int status, size_t body_sent);
void capstan_http_response_on_done(capstan_http_response_t *res, capstan_http_done_fn fn,
                                   void *arg);

/* Responds with a copy of |body| (|len| bytes; may be NULL if len is 0).
 * |content_type| may be NULL (no Content-Type header). If the copy cannot be
 * allocated the response becomes a 503 without body. */
void capstan_http_respond(capstan_http_response_t *res, int status, const char *content_type,
                          const uint8_t *body, size_t len);

/* Responds with |blob| as the body without copying: takes over the caller's
 * reference (released when the write ends). |blob| may be NULL (empty). */
void capstan_http_respond_blob(capstan_http_response_t *res, int status, const char *content_type,
                               capstan_blob_t *blob);

/* Adds one extra response header line (e.g. "Allow: GET, HEAD"), without
 * CRLF; at most 256 bytes in total per response, longer is dropped (logged).
 * Call before capstan_http_respond*. */
void capstan_http_response_add_header(capstan_http_response_t *res, const char *line);

typedef struct capstan_http_config {
  const char *name;                     /* "admin" or "phone": metrics label (not copied:
                                           must be a string literal or outlive the server) */
  size_t max_header_bytes;              /* default 8192 -> 431 */
  size_t max_body_bytes;                /* default 0: bodies refused -> 413 */
  unsigned header_timeout_ms;           /* default 10000 -> 408 and close */
  unsigned idle_timeout_ms;             /* keep-alive idle, and write progress; default 30000 */
  unsigned max_connections;             /* default 20000 (live: capstan_http_server_set_limits) */
  unsigned max_connections_per_address; /* default 64 (live) */
  unsigned retry_after_seconds;         /* Retry-After of a 503 for a limit; default 10 (live) */
  unsigned max_refusing;                /* refused connections being answered at once, beyond
                                           which more are closed at accept; default 256 */
  const char *settings_prefix;          /* "http-": names the settings in log hints ("http-max-
                                           connections"); NULL: no hint. Not copied. */
  unsigned max_requests_per_connection; /* default 1000, then Connection: close */
  int allow_any_method;                 /* default 0: the server answers 405 to
                                           anything but GET and HEAD */
  int uses_descriptor_reserve;          /* default 0: connections are closed at accept while
                                           the process is short of descriptors
                                           (core/descriptors.h); 1 for the admin listener, so
                                           /metrics answers meanwhile */
} capstan_http_config_t;

/* Fills |cfg| with the defaults above and |name|. */
void capstan_http_config_defaults(capstan_http_config_t *cfg, const char *name);

/* Starts listening on |host_port| ("127.0.0.1:9464", "[::]:6970",
 * "[::1]:0"; port 0 picks a free port). |handler| gets every well-formed
 * request with |arg|. On success *out is the server, owned by the caller
 * until capstan_http_server_stop. Returns 0, CAPSTAN_EINVAL for a bad
 * address or config, CAPSTAN_ENOMEM, or the libuv error of bind/listen. */
int capstan_http_server_start(uv_loop_t *loop, const char *host_port,
                              const capstan_http_config_t *cfg, capstan_http_handler_fn handler,
                              void *arg, capstan_http_server_t **out);

/* Changes the connection limits and the Retry-After of a running server
 * (live settings): new connections follow them; connections already open
 * stay open, also when a limit shrinks below their number. A zero limit
 * leaves that one unchanged. */
void capstan_http_server_set_limits(capstan_http_server_t *srv, unsigned max_connections,
                                    unsigned max_connections_per_address,
                                    unsigned retry_after_seconds);

/* The bound port (useful with port 0). */
int capstan_http_server_port(const capstan_http_server_t *srv);

/* Number of open connections. */
unsigned capstan_http_server_connections(const capstan_http_server_t *srv);

/* Stops listening, closes idle connections, lets in-flight responses finish
 * (then closes those connections), and frees the server; |done| (may be
 * NULL) is called on the loop thread once every handle is closed. */
void capstan_http_server_stop(capstan_http_server_t *srv, void (*done)(void *arg), void *arg);

#endif
