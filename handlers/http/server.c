/* HTTP/1.1 server: connection state machine around http_parser.
 *
 * One connection is, at any time, in one state:
 *   IDLE     waiting for the first byte of a request (reading; header timer
 *            on a new connection, idle timer between keep-alive requests)
 *   HEADERS  a request has begun, its header block is incomplete (reading;
 *            header timer, started at the first byte: slowloris bound)
 *   BODY     headers done, reading an allowed body (reading; header timer)
 *   HANDLER  the request went to the handler; not reading, no timer: the
 *            handler owns the response and must answer
 *   WRITING  the response is being written (write progress timer)
 *   LINGER   the last response is written and our side shut down; reads
 *            are discarded until the peer closes or the linger timer
 *            fires, so that unread request bytes do not turn our close
 *            into a reset that destroys the response at the client
 *   CLOSING  uv_close called; memory goes in the close callback
 *
 * The parser is paused at the end of the header block (so header bytes are
 * counted exactly and checked before anything else happens) and at the end
 * of each message (so pipelined requests are answered one at a time: bytes
 * after a complete request are copied aside, at most one read's worth, and
 * fed again once the response is written). */
#include "handlers/http/server.h"

#include <arpa/inet.h>
#include <http_parser.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/conntrack.h"
#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "core/base/netaddr.h"
#include "core/base/names.h"
#include "core/descriptors.h"
#include "core/memory_shortage.h"

#define READ_BUF_BYTES (64 * 1024)
#define LINGER_MS 2000 /* at most; see CONN_LINGER */
#define WRITE_CHUNK_BYTES (256 * 1024)
#define FIELD_NAME_MAX 24 /* longest header name we look at: transfer-encoding */
#define EXTRA_HEADERS_MAX 256
#define HEAD_BYTES_MAX (EXTRA_HEADERS_MAX + 512)
#define CONTENT_TYPE_MAX 128
#define ADDR_BUCKETS 4096
/* Connections the kernel holds until the loop accepts them (capped by
 * somaxconn): a reset storm arrives faster than a busy loop accepts, and an
 * overflowing backlog delays phones by SYN retransmits or resets them. */
#define LISTEN_BACKLOG 4096
/* How soon a connection left pending for want of memory is tried again. */
#define ACCEPT_RETRY_MS 100
#define PEER_TEXT_MAX (INET6_ADDRSTRLEN + 8)

/* Reads land here and are consumed before the read callback returns, so one
 * buffer per loop thread serves every connection of every server. */
static _Thread_local char g_read_buf[READ_BUF_BYTES];

/* --- Metrics label sets -------------------------------------------------- */

enum { METHOD_GET, METHOD_HEAD, METHOD_OTHER, METHOD_COUNT };
static const char *const kMethodLabels[METHOD_COUNT] = {"GET", "HEAD", "other"};
static const int kCodes[] = {200, 304, 400, 404, 405, 408, 413, 414, 431, 500, 503};
#define CODE_COUNT (sizeof(kCodes) / sizeof(kCodes[0]) + 1) /* + "other" */

enum { REJECT_NONE, REJECT_LIMIT_TOTAL, REJECT_LIMIT_PER_ADDRESS, REJECT_COUNT };
static const char *const kRejectLabels[REJECT_COUNT] = {"none", "limit_total", "limit_per_address"};
/* The setting behind each limit, after the server's settings prefix. */
static const char *const kRejectSettings[REJECT_COUNT] = {"", "max-connections",
                                                          "max-connections-per-address"};

/* --- States ------------------------------------------------------------- */

#define CONN_STATES(X)  \
  X(IDLE, "idle")       \
  X(HEADERS, "headers") \
  X(BODY, "body")       \
  X(HANDLER, "handler") \
  X(WRITING, "writing") \
  X(LINGER, "linger")   \
  X(CLOSING, "closing")

typedef enum {
#define X(id, name) CONN_##id,
  CONN_STATES(X)
#undef X
} conn_state_t;

CAPSTAN_DEFINE_NAME_FN(static, conn_state_name, conn_state_t, CONN_STATES, "unknown")

typedef enum { TIMER_NONE, TIMER_HEADER, TIMER_IDLE, TIMER_WRITE, TIMER_LINGER } timer_kind_t;

typedef struct conn conn_t;

/* Per-request state: allocated at the first byte of a request, freed when its
 * response is written, so idle connections hold none of it. */
struct capstan_http_response {
  conn_t *conn;
  capstan_http_request_t req;
  int method_idx; /* METHOD_* for metrics */
  int is_head;
  size_t url_len;
  uint8_t *body;
  size_t body_len, body_cap;
  /* response */
  int responded;
  int status;
  char extra[EXTRA_HEADERS_MAX + 1];
  size_t extra_len;
  capstan_http_done_fn done_fn;
  void *done_arg;
  capstan_blob_t *blob;
  char *head;
  size_t head_len;
  int head_sent;
  size_t body_total; /* bytes of body to send (0 for HEAD) */
  size_t body_off;
  size_t inflight_body;
  /* Buffers last: only the fields above are zeroed per request. */
  char url[CAPSTAN_HTTP_MAX_URL_BYTES + 1];
  char path[CAPSTAN_HTTP_MAX_URL_BYTES + 1];
  char query[CAPSTAN_HTTP_MAX_URL_BYTES + 1];
};

struct conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_write_t wreq;
  uv_shutdown_t sreq;
  http_parser parser;
  capstan_http_server_t *srv;
  conn_t *prev, *next;
  struct sockaddr_storage addr; /* peer, counted in srv->conntrack if in_list */
  conn_state_t state;
  timer_kind_t timer_kind;
  int open_handles;
  unsigned requests;
  capstan_http_response_t *rs;
  /* Pipelined bytes read past a complete request (only while one is
   * pending). */
  char *pending;
  size_t pending_off, pending_len;
  /* Per-message parse state. */
  size_t header_bytes;
  double started;
  int error_status;
  const char *error_reason;
  uint8_t field_len;
  char field[FIELD_NAME_MAX];
  unsigned field_overflow : 1;
  unsigned in_value : 1;
  unsigned prev_lf : 1;
  unsigned headers_done : 1;
  unsigned headers_done_now : 1;
  unsigned message_done : 1;
  unsigned close_after : 1;
  unsigned peer_eof : 1;
  unsigned reading : 1;
  unsigned in_list : 1;
  uint8_t refused; /* REJECT_*: over that limit, answered 503 whatever it asks */
  uint8_t cl_count, te_count;
  char peer[PEER_TEXT_MAX];
};

struct capstan_http_server {
  uv_loop_t *loop;
  uv_tcp_t listener;
  capstan_http_config_t cfg;
  capstan_http_handler_fn handler;
  void *arg;
  int port;
  conn_t *conns;
  unsigned nconns;      /* accepted and admitted connections (in the list) */
  unsigned nrefusing;   /* connections in the list being told 503 (not in nconns) */
  unsigned alloc_conns; /* every conn_t not yet freed, admitted or not */
  int listener_open;
  /* A connection that could not be given memory stays pending (libuv
   * stops watching the listener meanwhile) and is accepted again later. */
  uv_timer_t accept_retry;
  int accept_retry_open;
  int stopping;
  void (*done)(void *arg);
  void *done_arg;
  capstan_log_limit_t reject_log[REJECT_COUNT];
  capstan_conntrack_t conntrack;
  capstan_metric_t *m_requests[METHOD_COUNT][CODE_COUNT];
  capstan_metric_t *m_active;
  capstan_metric_t *m_refusing;
  capstan_metric_t *m_rejected[REJECT_COUNT];
  capstan_metric_t *m_dropped[REJECT_COUNT];
  capstan_metric_t *m_bytes;
  capstan_metric_t *m_duration;
};

static http_parser_settings g_settings;
static void conn_close(conn_t *c);
static void conn_fail(conn_t *c, int status, const char *reason);
static void conn_start_reading(conn_t *c);
static void server_maybe_done(capstan_http_server_t *srv);

/* --- Config and addresses ------------------------------------------------ */

void capstan_http_config_defaults(capstan_http_config_t *cfg, const char *name) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->name = name;
  cfg->max_header_bytes = 8192;
  cfg->max_body_bytes = 0;
  cfg->header_timeout_ms = 10000;
  cfg->idle_timeout_ms = 30000;
  cfg->max_connections = 20000;
  cfg->max_connections_per_address = 64;
  cfg->retry_after_seconds = 10;
  cfg->max_refusing = 256;
  cfg->settings_prefix = NULL;
  cfg->max_requests_per_connection = 1000;
  cfg->allow_any_method = 0;
}

/* --- Metrics ------------------------------------------------------------- */

static int code_index(int status) {
  for (size_t i = 0; i < CODE_COUNT - 1; i++) {
    if (kCodes[i] == status) return (int)i;
  }
  return (int)CODE_COUNT - 1;
}

static void server_register_metrics(capstan_http_server_t *srv) {
  char labels[160];
  const char *name = srv->cfg.name;
  for (int m = 0; m < METHOD_COUNT; m++) {
    for (size_t i = 0; i < CODE_COUNT; i++) {
      char code[8];
      if (i < CODE_COUNT - 1) {
        snprintf(code, sizeof(code), "%d", kCodes[i]);
      } else {
        snprintf(code, sizeof(code), "other");
      }
      snprintf(labels, sizeof(labels), "server=\"%s\",method=\"%s\",code=\"%s\"", name,
               kMethodLabels[m], code);
      srv->m_requests[m][i] =
          capstan_metrics_counter("capstan_http_requests_total",
                                  "HTTP requests answered, by method and status code", labels);
    }
  }
  snprintf(labels, sizeof(labels), "server=\"%s\"", name);
  srv->m_active =
      capstan_metrics_gauge("capstan_http_connections_active", "Open HTTP connections", labels);
  srv->m_refusing = capstan_metrics_gauge(
      "capstan_http_connections_refusing",
      "HTTP connections over a limit being answered 503 now (not counted as open)", labels);
  srv->m_bytes = capstan_metrics_counter("capstan_http_bytes_sent_total",
                                         "Bytes written on HTTP connections", labels);
  srv->m_duration =
      capstan_metrics_histogram("capstan_http_request_duration_seconds",
                                "Time from the first byte of a request to the end of its response",
                                labels, capstan_buckets_fast, capstan_buckets_fast_n);
  for (int r = REJECT_NONE + 1; r < REJECT_COUNT; r++) {
    snprintf(labels, sizeof(labels), "server=\"%s\",reason=\"%s\"", name, kRejectLabels[r]);
    srv->m_rejected[r] = capstan_metrics_counter(
        "capstan_http_connections_rejected_total",
        "HTTP connections over a limit, by limit: answered 503 with Retry-After, or dropped",
        labels);
    srv->m_dropped[r] = capstan_metrics_counter(
        "capstan_http_connections_dropped_total",
        "HTTP connections over a limit closed at accept without an answer because too many "
        "refusals were being answered (flood ceiling), by limit",
        labels);
  }
}

/* --- Response ------------------------------------------------------------ */

static const char *http_date(void) {
  static _Thread_local char buf[40];
  static _Thread_local time_t last;
  static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  time_t now = time(NULL);
  if (now != last || buf[0] == '\0') {
    struct tm tm;
    gmtime_r(&now, &tm);
    snprintf(buf, sizeof(buf), "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday % 7],
             tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
             tm.tm_sec);
    last = now;
  }
  return buf;
}

static const char *reason_phrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Payload Too Large";
    case 414:
      return "URI Too Long";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    default:
      return http_status_str((enum http_status)status);
  }
}

static int header_text_ok(const char *s, size_t max) {
  size_t n = 0;
  for (; s[n] != '\0'; n++) {
    unsigned char ch = (unsigned char)s[n];
    if (n >= max || ch < 0x20 || ch == 0x7f) return 0;
  }
  return 1;
}

void capstan_http_response_add_header(capstan_http_response_t *res, const char *line) {
  size_t n = strlen(line);
  if (res->responded || !header_text_ok(line, EXTRA_HEADERS_MAX) ||
      res->extra_len + n + 2 > EXTRA_HEADERS_MAX) {
    LOG_WARN("event=http_header_dropped server=%s", res->conn->srv->cfg.name);
    return;
  }
  memcpy(res->extra + res->extra_len, line, n);
  memcpy(res->extra + res->extra_len + n, "\r\n", 2);
  res->extra_len += n + 2;
  res->extra[res->extra_len] = '\0';
}

void capstan_http_response_on_done(capstan_http_response_t *res, capstan_http_done_fn fn,
                                   void *arg) {
  res->done_fn = fn;
  res->done_arg = arg;
}

static void on_timer(uv_timer_t *t);

static void timer_start(conn_t *c, timer_kind_t kind) {
  unsigned ms = kind == TIMER_HEADER ? c->srv->cfg.header_timeout_ms : c->srv->cfg.idle_timeout_ms;
  if (kind == TIMER_LINGER && ms > LINGER_MS) ms = LINGER_MS;
  /* A refused connection costs a slot of the flood ceiling: it gets less. */
  if (c->refused && ms > CAPSTAN_HTTP_REFUSING_TIMEOUT_MS) ms = CAPSTAN_HTTP_REFUSING_TIMEOUT_MS;
  c->timer_kind = kind;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void on_write(uv_write_t *req, int status);

static void conn_write_next(conn_t *c) {
  capstan_http_response_t *rs = c->rs;
  uv_buf_t bufs[2];
  unsigned n = 0;
  if (!rs->head_sent) bufs[n++] = uv_buf_init(rs->head, (unsigned)rs->head_len);
  rs->inflight_body = 0;
  if (rs->body_off < rs->body_total) {
    size_t chunk = rs->body_total - rs->body_off;
    if (chunk > WRITE_CHUNK_BYTES) chunk = WRITE_CHUNK_BYTES;
    /* libuv never writes through the base pointer; the cast drops const only. */
    bufs[n++] = uv_buf_init((char *)(uintptr_t)(rs->blob->data + rs->body_off), (unsigned)chunk);
    rs->inflight_body = chunk;
  }
  timer_start(c, TIMER_WRITE);
  int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, n, on_write);
  if (rc != 0) {
    LOG_INFO("event=http_write_failed server=%s peer=%s error=%s", c->srv->cfg.name, c->peer,
             uv_err_name(rc));
    rs->inflight_body = 0;
    conn_close(c);
  }
}

/* Ends the current request: metrics, done callback, frees per-request
 * state. |status| < 0 when the response could not be written. */
static void conn_end_request(conn_t *c, int status) {
  capstan_http_response_t *rs = c->rs;
  if (rs == NULL) return;
  c->rs = NULL;
  if (rs->responded) {
    capstan_metric_observe(c->srv->m_duration, capstan_now_seconds() - c->started);
    if (rs->done_fn) rs->done_fn(rs->done_arg, status, rs->body_off);
  }
  capstan_blob_unref(rs->blob);
  free(rs->head);
  free(rs->body);
  free(rs);
}

static void conn_reset_message(conn_t *c) {
  c->header_bytes = 0;
  c->error_status = 0;
  c->error_reason = NULL;
  c->field_len = 0;
  c->field_overflow = 0;
  c->in_value = 0;
  c->prev_lf = 0;
  c->headers_done = 0;
  c->headers_done_now = 0;
  c->message_done = 0;
  c->cl_count = 0;
  c->te_count = 0;
}

static size_t conn_process(conn_t *c, const char *data, size_t len);

static void on_shutdown(uv_shutdown_t *req, int status) {
  conn_t *c = req->data;
  if (status < 0 && c->state == CONN_LINGER) conn_close(c);
}

/* Ends a connection after its last response: shut down our side, then
 * drain what the peer still sends, until it closes or the timer fires. */
static void conn_linger(conn_t *c) {
  if (c->peer_eof || c->srv->stopping) {
    conn_close(c);
    return;
  }
  c->state = CONN_LINGER;
  if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    conn_close(c);
    return;
  }
  timer_start(c, TIMER_LINGER);
  conn_start_reading(c);
}

/* After a response is written: next request (pipelined bytes first), or
 * close. */
static void conn_after_response(conn_t *c) {
  conn_end_request(c, 0);
  if (c->close_after || c->srv->stopping) {
    conn_linger(c);
    return;
  }
  conn_reset_message(c);
  c->state = CONN_IDLE;
  timer_start(c, TIMER_IDLE);
  if (c->pending != NULL) {
    size_t n = conn_process(c, c->pending + c->pending_off, c->pending_len - c->pending_off);
    c->pending_off += n;
    if (c->state == CONN_CLOSING) return;
    if (c->pending_off >= c->pending_len || c->state == CONN_IDLE || c->state == CONN_HEADERS ||
        c->state == CONN_BODY) {
      /* Everything was consumed (the parser never stops early while
       * reading a request). */
      free(c->pending);
      c->pending = NULL;
      c->pending_off = c->pending_len = 0;
    }
  }
  if (c->state == CONN_IDLE || c->state == CONN_HEADERS || c->state == CONN_BODY) {
    if (c->peer_eof) {
      conn_close(c);
    } else {
      conn_start_reading(c);
    }
  }
}

static void on_write(uv_write_t *req, int status) {
  conn_t *c = req->data;
  capstan_http_response_t *rs = c->rs;
  if (status < 0) {
    if (status != UV_ECANCELED) {
      LOG_DEBUG("event=http_write_failed server=%s peer=%s error=%s", c->srv->cfg.name, c->peer,
                uv_err_name(status));
    }
    conn_end_request(c, status);
    conn_close(c);
    return;
  }
  size_t sent = rs->inflight_body + (rs->head_sent ? 0 : rs->head_len);
  capstan_metric_add(c->srv->m_bytes, (double)sent);
  rs->head_sent = 1;
  rs->body_off += rs->inflight_body;
  rs->inflight_body = 0;
  if (c->state == CONN_CLOSING) return;
  if (rs->body_off < rs->body_total) {
    conn_write_next(c);
    return;
  }
  uv_timer_stop(&c->timer);
  c->timer_kind = TIMER_NONE;
  conn_after_response(c);
}

void capstan_http_respond_blob(capstan_http_response_t *res, int status, const char *content_type,
                               capstan_blob_t *blob) {
  conn_t *c = res->conn;
  if (res->responded) {
    LOG_ERROR("event=http_double_response server=%s", c->srv->cfg.name);
    capstan_blob_unref(blob);
    return;
  }
  res->responded = 1;
  res->status = status;
  res->blob = blob;
  capstan_metric_inc(c->srv->m_requests[res->method_idx][code_index(status)]);

  size_t body_len = blob ? blob->len : 0;
  int keep = !c->close_after && !c->srv->stopping;
  if (!keep) c->close_after = 1;
  const char *conn_hdr = "";
  if (!keep) {
    conn_hdr = "Connection: close\r\n";
  } else if (c->parser.http_major == 1 && c->parser.http_minor == 0) {
    conn_hdr = "Connection: keep-alive\r\n";
  }
  char ctype[CONTENT_TYPE_MAX + 32] = "";
  if (content_type != NULL && header_text_ok(content_type, CONTENT_TYPE_MAX)) {
    snprintf(ctype, sizeof(ctype), "Content-Type: %s\r\n", content_type);
  }
  res->head = malloc(HEAD_BYTES_MAX);
  if (res->head == NULL) {
    capstan_memory_shortage_note("http");
    c->state = CONN_WRITING; /* nothing to write; end as a failed write */
    conn_end_request(c, CAPSTAN_ENOMEM);
    conn_close(c);
    return;
  }
  int n =
      snprintf(res->head, HEAD_BYTES_MAX,
               "HTTP/1.1 %d %s\r\nServer: capstan\r\nDate: %s\r\nCache-Control: no-store\r\n"
               "Content-Length: %zu\r\n%s%s%s\r\n",
               status, reason_phrase(status), http_date(), body_len, ctype, res->extra, conn_hdr);
  if (n < 0 || n >= HEAD_BYTES_MAX) n = 0; /* cannot happen: every part is bounded */
  res->head_len = (size_t)n;
  res->body_total = res->is_head ? 0 : body_len;
  c->state = CONN_WRITING;
  conn_write_next(c);
}

void capstan_http_respond(capstan_http_response_t *res, int status, const char *content_type,
                          const uint8_t *body, size_t len) {
  capstan_blob_t *blob = NULL;
  if (len > 0) {
    blob = capstan_blob_new(body, len);
    if (blob == NULL) {
      capstan_memory_shortage_note("http");
      status = 503;
      content_type = NULL;
    }
  }
  capstan_http_respond_blob(res, status, content_type, blob);
}

/* --- Request parsing ----------------------------------------------------- */

static int conn_set_error(conn_t *c, int status, const char *reason) {
  if (c->error_status == 0) {
    c->error_status = status;
    c->error_reason = reason;
  }
  return -1; /* stops the parser */
}

static int method_index(unsigned method) {
  if (method == HTTP_GET) return METHOD_GET;
  if (method == HTTP_HEAD) return METHOD_HEAD;
  return METHOD_OTHER;
}

static capstan_http_response_t *request_new(conn_t *c) {
  capstan_http_response_t *rs = malloc(sizeof(*rs));
  if (rs == NULL) return NULL;
  memset(rs, 0, offsetof(capstan_http_response_t, url));
  rs->url[0] = rs->path[0] = rs->query[0] = '\0';
  rs->conn = c;
  rs->method_idx = METHOD_OTHER;
  return rs;
}

static int on_message_begin(http_parser *p) {
  conn_t *c = p->data;
  if (c->rs == NULL) {
    c->rs = request_new(c);
    if (c->rs == NULL) {
      capstan_memory_shortage_note("http");
      return conn_set_error(c, -1, "out_of_memory");
    }
  }
  c->state = CONN_HEADERS;
  c->requests++;
  c->started = capstan_now_seconds();
  if (c->timer_kind != TIMER_HEADER) timer_start(c, TIMER_HEADER);
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  conn_t *c = p->data;
  capstan_http_response_t *rs = c->rs;
  /* The method is known once the URL starts. */
  rs->method_idx = method_index(p->method);
  rs->is_head = p->method == HTTP_HEAD;
  if (len > CAPSTAN_HTTP_MAX_URL_BYTES - rs->url_len) {
    return conn_set_error(c, 414, "url_too_long");
  }
  memcpy(rs->url + rs->url_len, at, len);
  rs->url_len += len;
  return 0;
}

/* RFC 9110 token characters. */
static int is_tchar(unsigned char ch) {
  if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) return 1;
  return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
  conn_t *c = p->data;
  if (c->in_value) {
    c->in_value = 0;
    c->field_len = 0;
    c->field_overflow = 0;
  }
  for (size_t i = 0; i < len; i++) {
    /* http_parser (non-strict build) lets spaces into field names. */
    if (!is_tchar((unsigned char)at[i])) return conn_set_error(c, 400, "invalid_header_name");
  }
  for (size_t i = 0; i < len && !c->field_overflow; i++) {
    if (c->field_len >= FIELD_NAME_MAX) {
      c->field_overflow = 1;
      break;
    }
    char ch = at[i];
    if (ch >= 'A' && ch <= 'Z') ch = (char)(ch - 'A' + 'a');
    c->field[c->field_len++] = ch;
  }
  return 0;
}

static int field_is(const conn_t *c, const char *name) {
  size_t n = strlen(name);
  return !c->field_overflow && c->field_len == n && memcmp(c->field, name, n) == 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  conn_t *c = p->data;
  if (c->in_value) return 0; /* continuation of the same value */
  c->in_value = 1;
  if (field_is(c, "content-length")) {
    if (++c->cl_count > 1) return conn_set_error(c, 400, "duplicate_content_length");
  } else if (field_is(c, "transfer-encoding")) {
    c->te_count++;
  }
  if (c->cl_count > 0 && c->te_count > 0) {
    return conn_set_error(c, 400, "content_length_with_transfer_encoding");
  }
  return 0;
}

static int on_headers_complete(http_parser *p) {
  conn_t *c = p->data;
  c->headers_done = 1;
  c->headers_done_now = 1;
  /* Pause so that the header block is checked (size, method, body, URL)
   * before anything after it is parsed. */
  http_parser_pause(p, 1);
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  conn_t *c = p->data;
  capstan_http_response_t *rs = c->rs;
  size_t max = c->srv->cfg.max_body_bytes;
  if (len > max - rs->body_len) return conn_set_error(c, 413, "body_too_large");
  if (rs->body_len + len > rs->body_cap) {
    /* Content-Length is known (and checked against max) up front; chunked
     * bodies grow, never past max. */
    size_t cap = (p->flags & F_CONTENTLENGTH) ? (size_t)p->content_length : rs->body_cap * 2;
    if (cap < rs->body_len + len) cap = rs->body_len + len;
    if (cap < 256 && max >= 256) cap = 256;
    if (cap > max) cap = max;
    uint8_t *grown = realloc(rs->body, cap);
    if (grown == NULL) {
      capstan_memory_shortage_note("http");
      return conn_set_error(c, 503, "out_of_memory");
    }
    rs->body = grown;
    rs->body_cap = cap;
  }
  memcpy(rs->body + rs->body_len, at, len);
  rs->body_len += len;
  return 0;
}

static int on_message_complete(http_parser *p) {
  conn_t *c = p->data;
  c->message_done = 1;
  http_parser_pause(p, 1);
  return 0;
}

static int hexval(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* Splits the request target into a decoded path and a raw query. Returns
 * 0 or a reason for a 400. */
static const char *parse_target(capstan_http_response_t *rs) {
  for (size_t i = 0; i < rs->url_len; i++) {
    unsigned char ch = (unsigned char)rs->url[i];
    if (ch < 0x20 || ch == 0x7f) return "control_character_in_url";
  }
  struct http_parser_url u;
  http_parser_url_init(&u);
  if (http_parser_parse_url(rs->url, rs->url_len, 0, &u) != 0) return "invalid_url";
  if (!(u.field_set & (1 << UF_PATH))) return "no_path";
  const char *src = rs->url + u.field_data[UF_PATH].off;
  size_t n = u.field_data[UF_PATH].len;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)src[i];
    if (ch == '%') {
      if (n - i < 3) return "bad_percent_encoding";
      int hi = hexval(src[i + 1]), lo = hexval(src[i + 2]);
      if (hi < 0 || lo < 0) return "bad_percent_encoding";
      ch = (unsigned char)(hi * 16 + lo);
      i += 2;
      if (ch < 0x20 || ch == 0x7f) return "control_character_in_path";
    }
    rs->path[o++] = (char)ch;
  }
  rs->path[o] = '\0';
  if (o == 0 || rs->path[0] != '/') return "no_path";
  rs->query[0] = '\0';
  if (u.field_set & (1 << UF_QUERY)) {
    memcpy(rs->query, rs->url + u.field_data[UF_QUERY].off, u.field_data[UF_QUERY].len);
    rs->query[u.field_data[UF_QUERY].len] = '\0';
  }
  return NULL;
}

/* Checks a complete header block. Returns 0 to go on, or fails the
 * connection and returns -1. */
static int conn_check_headers(conn_t *c) {
  const capstan_http_config_t *cfg = &c->srv->cfg;
  http_parser *p = &c->parser;
  if (c->header_bytes > cfg->max_header_bytes) {
    conn_fail(c, 431, "header_too_large");
    return -1;
  }
  if (p->http_major != 1) {
    conn_fail(c, 400, "unsupported_version");
    return -1;
  }
  if (!cfg->allow_any_method && p->method != HTTP_GET && p->method != HTTP_HEAD) {
    conn_fail(c, 405, "method_not_allowed");
    return -1;
  }
  int has_cl = (p->flags & F_CONTENTLENGTH) != 0;
  if ((c->cl_count > 0 || has_cl) && (c->te_count > 0 || p->uses_transfer_encoding)) {
    conn_fail(c, 400, "content_length_with_transfer_encoding");
    return -1;
  }
  if (((p->flags & F_CHUNKED) || p->uses_transfer_encoding) && cfg->max_body_bytes == 0) {
    conn_fail(c, 413, "body_not_allowed");
    return -1;
  }
  if (has_cl && p->content_length > 0 && p->content_length > cfg->max_body_bytes) {
    conn_fail(c, 413, "body_too_large");
    return -1;
  }
  const char *bad = parse_target(c->rs);
  if (bad != NULL) {
    conn_fail(c, 400, bad);
    return -1;
  }
  if (has_cl || (p->flags & F_CHUNKED)) c->state = CONN_BODY;
  return 0;
}

/* The answer of a connection over a limit, whatever it asked: come back
 * later. The connection closes after it. */
static void conn_respond_busy(conn_t *c) {
  capstan_http_server_t *srv = c->srv;
  unsigned delay = srv->cfg.retry_after_seconds;
  c->close_after = 1;
  char line[48], body[160];
  snprintf(line, sizeof(line), "Retry-After: %u", delay);
  capstan_http_response_add_header(c->rs, line);
  int n = snprintf(body, sizeof(body), "503 Service Unavailable: %s, retry in %u s\n",
                   c->refused == REJECT_LIMIT_PER_ADDRESS ? "too many connections from this address"
                                                          : "too many connections",
                   delay);
  capstan_http_respond(c->rs, 503, "text/plain; charset=utf-8", (const uint8_t *)body,
                       n > 0 ? (size_t)n : 0);
}

static void conn_dispatch(conn_t *c) {
  capstan_http_server_t *srv = c->srv;
  capstan_http_response_t *rs = c->rs;
  http_parser *p = &c->parser;
  if (c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
  uv_timer_stop(&c->timer);
  c->timer_kind = TIMER_NONE;
  c->state = CONN_HANDLER;
  int keep = http_should_keep_alive(p) && !p->upgrade && !c->peer_eof && !srv->stopping &&
             c->requests < srv->cfg.max_requests_per_connection;
  if (!keep) c->close_after = 1;
  rs->req.method = http_method_str((enum http_method)p->method);
  rs->req.path = rs->path;
  rs->req.query = rs->query;
  rs->req.keep_alive = keep;
  rs->req.head = rs->is_head;
  rs->req.body = rs->body;
  rs->req.body_len = rs->body_len;
  rs->req.peer = c->peer;
  LOG_DEBUG("event=http_request server=%s peer=%s method=%s path_len=%zu", srv->cfg.name, c->peer,
            rs->req.method, strlen(rs->path));
  if (c->refused) {
    conn_respond_busy(c);
    return;
  }
  srv->handler(srv->arg, &rs->req, rs);
}

/* Feeds bytes to the parser until they are consumed, a request is
 * dispatched, or the connection fails. Returns the bytes consumed. */
static size_t conn_process(conn_t *c, const char *data, size_t len) {
  size_t off = 0;
  while (off < len &&
         (c->state == CONN_IDLE || c->state == CONN_HEADERS || c->state == CONN_BODY)) {
    int in_head = !c->headers_done;
    size_t n = http_parser_execute(&c->parser, &g_settings, data + off, len - off);
    if (in_head) {
      /* obs-fold: a header line starting with SP or HT is refused (RFC
       * 7230 3.2.4); http_parser would join it to the previous value. */
      for (size_t i = 0; i < n; i++) {
        char ch = data[off + i];
        if (c->prev_lf && (ch == ' ' || ch == '\t')) {
          conn_set_error(c, 400, "obs_fold");
          break;
        }
        c->prev_lf = ch == '\n';
      }
      c->header_bytes += n;
    }
    off += n;
    if (c->error_status != 0) {
      conn_fail(c, c->error_status, c->error_reason);
      return off;
    }
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e == HPE_PAUSED) {
      http_parser_pause(&c->parser, 0);
      if (c->headers_done_now) {
        c->headers_done_now = 0;
        if (conn_check_headers(c) != 0) return off;
      }
      if (c->message_done) {
        conn_dispatch(c);
        return off;
      }
      continue;
    }
    if (e != HPE_OK) {
      conn_fail(c, e == HPE_HEADER_OVERFLOW ? 431 : 400, http_errno_name(e));
      return off;
    }
    if (n == 0) break; /* no progress without an error: should not happen */
  }
  if (!c->headers_done && c->header_bytes > c->srv->cfg.max_header_bytes &&
      c->state != CONN_CLOSING) {
    conn_fail(c, 431, "header_too_large");
  }
  return off;
}

/* Answers an error the server decided itself; the connection closes after. */
static void conn_fail(conn_t *c, int status, const char *reason) {
  capstan_http_server_t *srv = c->srv;
  if (c->state == CONN_CLOSING || c->state == CONN_HANDLER || c->state == CONN_WRITING) return;
  LOG_INFO("event=http_request_refused server=%s peer=%s status=%d reason=%s", srv->cfg.name,
           c->peer, status, reason ? reason : "unknown");
  c->close_after = 1;
  if (c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
  if (status <= 0) {
    conn_close(c);
    return;
  }
  if (c->rs == NULL) {
    c->rs = request_new(c);
    if (c->rs == NULL) {
      conn_close(c);
      return;
    }
    c->started = capstan_now_seconds();
  }
  c->state = CONN_HANDLER;
  if (status == 405) capstan_http_response_add_header(c->rs, "Allow: GET, HEAD");
  char body[64];
  int n = snprintf(body, sizeof(body), "%d %s\n", status, reason_phrase(status));
  capstan_http_respond(c->rs, status, "text/plain; charset=utf-8", (const uint8_t *)body,
                       n > 0 ? (size_t)n : 0);
}

/* --- Connection I/O ------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  buf->base = g_read_buf;
  buf->len = sizeof(g_read_buf);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  conn_t *c = stream->data;
  if (nread == 0) return;
  if (c->state == CONN_LINGER) {
    if (nread < 0) conn_close(c);
    return; /* discarded */
  }
  if (nread < 0) {
    if (nread != UV_EOF) {
      LOG_DEBUG("event=http_read_error server=%s peer=%s error=%s", c->srv->cfg.name, c->peer,
                uv_err_name((int)nread));
    }
    c->peer_eof = 1;
    uv_read_stop(stream);
    c->reading = 0;
    if (c->state == CONN_IDLE || c->state == CONN_HEADERS || c->state == CONN_BODY) {
      conn_close(c);
    }
    return; /* HANDLER/WRITING: the response is still written, then close */
  }
  size_t len = (size_t)nread;
  size_t n = conn_process(c, buf->base, len);
  if (n < len && !c->close_after && (c->state == CONN_HANDLER || c->state == CONN_WRITING)) {
    /* Pipelined bytes after a complete request: keep them aside. */
    c->pending = malloc(len - n);
    if (c->pending == NULL) {
      c->close_after = 1; /* answer this request, drop the rest */
      return;
    }
    memcpy(c->pending, buf->base + n, len - n);
    c->pending_off = 0;
    c->pending_len = len - n;
  }
}

static void conn_start_reading(conn_t *c) {
  if (c->reading || c->state == CONN_CLOSING) return;
  int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (rc != 0) {
    conn_close(c);
    return;
  }
  c->reading = 1;
}

static void on_timer(uv_timer_t *t) {
  conn_t *c = t->data;
  timer_kind_t kind = c->timer_kind;
  c->timer_kind = TIMER_NONE;
  switch (kind) {
    case TIMER_HEADER:
      if (c->state == CONN_HEADERS || c->state == CONN_BODY) {
        conn_fail(c, 408, "header_timeout");
      } else if (c->state == CONN_IDLE) {
        LOG_DEBUG("event=http_timeout server=%s peer=%s state=%s", c->srv->cfg.name, c->peer,
                  conn_state_name(c->state));
        conn_close(c);
      }
      break;
    case TIMER_IDLE:
      if (c->state == CONN_IDLE) conn_close(c);
      break;
    case TIMER_LINGER:
      conn_close(c);
      break;
    case TIMER_WRITE:
      LOG_INFO("event=http_write_timeout server=%s peer=%s", c->srv->cfg.name, c->peer);
      conn_close(c);
      break;
    case TIMER_NONE:
      break;
  }
}

static void on_conn_closed(uv_handle_t *h) {
  conn_t *c = h->data;
  if (--c->open_handles > 0) return;
  capstan_http_server_t *srv = c->srv;
  conn_end_request(c, UV_ECANCELED);
  free(c->pending);
  if (c->in_list) {
    if (c->prev) c->prev->next = c->next;
    if (c->next) c->next->prev = c->prev;
    if (srv->conns == c) srv->conns = c->next;
    if (c->refused) {
      srv->nrefusing--;
      capstan_metric_set(srv->m_refusing, srv->nrefusing);
    } else {
      srv->nconns--;
      capstan_metric_set(srv->m_active, srv->nconns);
      capstan_conntrack_remove(&srv->conntrack, (const struct sockaddr *)&c->addr);
    }
  }
  free(c);
  srv->alloc_conns--;
  server_maybe_done(srv);
}

static void conn_close(conn_t *c) {
  if (c->state == CONN_CLOSING) return;
  if (c->state == CONN_HANDLER) {
    /* The handler owns the response; close once it is written. */
    c->close_after = 1;
    return;
  }
  LOG_DEBUG("event=http_close server=%s peer=%s state=%s requests=%u", c->srv->cfg.name, c->peer,
            conn_state_name(c->state), c->requests);
  c->state = CONN_CLOSING;
  c->reading = 0;
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
  uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

/* --- Listener ------------------------------------------------------------ */

/* Counts and logs a connection over limit |reason|; |dropped| when it is
 * closed unanswered (flood ceiling) rather than told 503. */
static void server_reject(capstan_http_server_t *srv, conn_t *c, int reason, int dropped) {
  capstan_metric_inc(srv->m_rejected[reason]);
  if (dropped) capstan_metric_inc(srv->m_dropped[reason]);
  uint64_t held;
  if (!capstan_log_limit_pass(&srv->reject_log[reason], uv_now(srv->loop), &held)) return;
  unsigned limit = reason == REJECT_LIMIT_TOTAL ? srv->cfg.max_connections
                                                : srv->cfg.max_connections_per_address;
  const char *prefix = srv->cfg.settings_prefix;
  char hint[128] = "";
  if (prefix != NULL) {
    snprintf(hint, sizeof(hint), " hint=\"a higher limit: capstan config set %s%s N\"", prefix,
             kRejectSettings[reason]);
  }
  LOG_WARN(
      "event=http_connection_refused server=%s peer=%s reason=%s limit=%u answer=%s "
      "retry_after=%u active=%u refusing=%u also_refused=%llu%s",
      srv->cfg.name, c->peer, kRejectLabels[reason], limit, dropped ? "closed" : "503",
      srv->cfg.retry_after_seconds, srv->nconns, srv->nrefusing, (unsigned long long)held, hint);
}

static void accept_one(capstan_http_server_t *srv);

static void on_connection(uv_stream_t *listener, int status) {
  capstan_http_server_t *srv = listener->data;
  if (status < 0) {
    if (capstan_descriptors_note(status, srv->cfg.name)) {
      capstan_descriptors_release_spare();
      return;
    }
    LOG_WARN("event=http_accept_failed server=%s error=%s", srv->cfg.name, uv_err_name(status));
    return;
  }
  accept_one(srv);
}

static void on_accept_retry(uv_timer_t *t) {
  capstan_http_server_t *srv = t->data;
  if (!srv->stopping) accept_one(srv);
}

/* Accepts the pending connection and starts reading it, or refuses it. */
static void accept_one(capstan_http_server_t *srv) {
  uv_stream_t *listener = (uv_stream_t *)&srv->listener;
  conn_t *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    /* Accepting needs no memory, but closing what was accepted would need
     * a handle: leave the connection pending and come back to it. */
    capstan_memory_shortage_note("http_accept");
    uv_timer_start(&srv->accept_retry, on_accept_retry, ACCEPT_RETRY_MS, 0);
    return;
  }
  srv->alloc_conns++;
  c->srv = srv;
  c->tcp.data = c;
  c->timer.data = c;
  c->wreq.data = c;
  c->sreq.data = c;
  c->parser.data = c;
  uv_tcp_init(srv->loop, &c->tcp);
  uv_timer_init(srv->loop, &c->timer);
  c->open_handles = 2;
  if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  uv_os_fd_t fd = -1;
  uv_fileno((uv_handle_t *)&c->tcp, &fd);
  if (!srv->cfg.uses_descriptor_reserve && capstan_descriptors_admit(fd, srv->cfg.name) < 0) {
    conn_close(c);
    return;
  }
  int salen = sizeof(c->addr);
  uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&c->addr, &salen);
  capstan_netaddr_format((const struct sockaddr *)&c->addr, c->peer, sizeof(c->peer));
  if (srv->stopping) {
    conn_close(c);
    return;
  }
  int rc = 0;
  if (srv->nconns >= srv->cfg.max_connections) {
    c->refused = REJECT_LIMIT_TOTAL;
  } else {
    rc = capstan_conntrack_add(&srv->conntrack, (const struct sockaddr *)&c->addr,
                               srv->cfg.max_connections_per_address);
    if (rc == CAPSTAN_EBUSY) {
      c->refused = REJECT_LIMIT_PER_ADDRESS;
      rc = 0;
    }
  }
  if (c->refused && srv->nrefusing >= srv->cfg.max_refusing) {
    /* A flood: answering every refusal would cost as much as serving. */
    server_reject(srv, c, c->refused, 1);
    conn_close(c);
    return;
  }
  if (c->refused) server_reject(srv, c, c->refused, 0);
  if (rc != 0) {
    LOG_WARN("event=http_accept_refused server=%s peer=%s error=%s", srv->cfg.name, c->peer,
             capstan_strerror(rc));
    conn_close(c);
    return;
  }
  c->in_list = 1;
  c->next = srv->conns;
  if (srv->conns) srv->conns->prev = c;
  srv->conns = c;
  if (c->refused) {
    srv->nrefusing++;
    capstan_metric_set(srv->m_refusing, srv->nrefusing);
  } else {
    srv->nconns++;
    capstan_metric_set(srv->m_active, srv->nconns);
  }
  uv_tcp_nodelay(&c->tcp, 1);
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  c->state = CONN_IDLE;
  timer_start(c, TIMER_HEADER);
  conn_start_reading(c);
}

static void init_parser_settings(void) {
  http_parser_settings_init(&g_settings);
  g_settings.on_message_begin = on_message_begin;
  g_settings.on_url = on_url;
  g_settings.on_header_field = on_header_field;
  g_settings.on_header_value = on_header_value;
  g_settings.on_headers_complete = on_headers_complete;
  g_settings.on_body = on_body;
  g_settings.on_message_complete = on_message_complete;
}

static void on_failed_listener_closed(uv_handle_t *h) {
  capstan_http_server_t *srv = h->data;
  capstan_conntrack_cleanup(&srv->conntrack);
  free(srv);
}

int capstan_http_server_start(uv_loop_t *loop, const char *host_port,
                              const capstan_http_config_t *cfg, capstan_http_handler_fn handler,
                              void *arg, capstan_http_server_t **out) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  struct sockaddr_storage sa;
  int rc;
  *out = NULL;
  if (cfg == NULL || cfg->name == NULL || handler == NULL || cfg->max_connections == 0 ||
      cfg->max_connections_per_address == 0 || cfg->max_requests_per_connection == 0 ||
      cfg->retry_after_seconds == 0 || cfg->max_refusing == 0 || cfg->header_timeout_ms == 0 ||
      cfg->idle_timeout_ms == 0 || cfg->max_header_bytes == 0) {
    return CAPSTAN_EINVAL;
  }
  rc = capstan_netaddr_parse(host_port, &sa);
  if (rc != 0) return rc;
  pthread_once(&once, init_parser_settings);
  capstan_http_server_t *srv = calloc(1, sizeof(*srv));
  if (srv == NULL) return CAPSTAN_ENOMEM;
  srv->loop = loop;
  srv->cfg = *cfg;
  srv->handler = handler;
  srv->arg = arg;
  if (capstan_conntrack_init(&srv->conntrack, ADDR_BUCKETS) != 0) {
    free(srv);
    return CAPSTAN_ENOMEM;
  }
  server_register_metrics(srv);
  uv_tcp_init(loop, &srv->listener);
  srv->listener.data = srv;
  srv->listener_open = 1;
  rc = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&sa, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&srv->listener, LISTEN_BACKLOG, on_connection);
  if (rc != 0) {
    LOG_ERROR("event=http_listen_failed server=%s address=%s error=%s", cfg->name, host_port,
              uv_err_name(rc));
    /* The listener handle lives in |srv|: free it in the close callback. */
    uv_close((uv_handle_t *)&srv->listener, on_failed_listener_closed);
    return rc;
  }
  uv_timer_init(loop, &srv->accept_retry);
  srv->accept_retry.data = srv;
  srv->accept_retry_open = 1;
  struct sockaddr_storage bound;
  int blen = sizeof(bound);
  if (uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &blen) == 0) {
    srv->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                            : ntohs(((struct sockaddr_in *)&bound)->sin_port);
  }
  LOG_INFO("event=http_listening server=%s address=%s port=%d", cfg->name, host_port, srv->port);
  *out = srv;
  return 0;
}

void capstan_http_server_set_limits(capstan_http_server_t *srv, unsigned max_connections,
                                    unsigned max_connections_per_address,
                                    unsigned retry_after_seconds) {
  capstan_http_config_t *cfg = &srv->cfg;
  if ((max_connections == 0 || max_connections == cfg->max_connections) &&
      (max_connections_per_address == 0 ||
       max_connections_per_address == cfg->max_connections_per_address) &&
      (retry_after_seconds == 0 || retry_after_seconds == cfg->retry_after_seconds)) {
    return; /* nothing changes: no log line */
  }
  if (max_connections) cfg->max_connections = max_connections;
  if (max_connections_per_address) cfg->max_connections_per_address = max_connections_per_address;
  if (retry_after_seconds) cfg->retry_after_seconds = retry_after_seconds;
  LOG_INFO(
      "event=http_limits server=%s max_connections=%u max_connections_per_address=%u "
      "retry_after=%u active=%u",
      cfg->name, cfg->max_connections, cfg->max_connections_per_address, cfg->retry_after_seconds,
      srv->nconns);
}

int capstan_http_server_port(const capstan_http_server_t *srv) {
  return srv->port;
}

unsigned capstan_http_server_connections(const capstan_http_server_t *srv) {
  return srv->nconns;
}

static void server_maybe_done(capstan_http_server_t *srv) {
  if (!srv->stopping || srv->listener_open || srv->accept_retry_open || srv->alloc_conns > 0) {
    return;
  }
  void (*done)(void *) = srv->done;
  void *done_arg = srv->done_arg;
  capstan_conntrack_cleanup(&srv->conntrack);
  LOG_INFO("event=http_stopped server=%s", srv->cfg.name);
  free(srv);
  if (done) done(done_arg);
}

static void on_listener_closed(uv_handle_t *h) {
  capstan_http_server_t *srv = h->data;
  srv->listener_open = 0;
  server_maybe_done(srv);
}

static void on_accept_retry_closed(uv_handle_t *h) {
  capstan_http_server_t *srv = h->data;
  srv->accept_retry_open = 0;
  server_maybe_done(srv);
}

void capstan_http_server_stop(capstan_http_server_t *srv, void (*done)(void *arg), void *arg) {
  if (srv == NULL || srv->stopping) return;
  srv->stopping = 1;
  srv->done = done;
  srv->done_arg = arg;
  uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
  uv_close((uv_handle_t *)&srv->accept_retry, on_accept_retry_closed);
  conn_t *next;
  for (conn_t *c = srv->conns; c != NULL; c = next) {
    next = c->next;
    if (c->state == CONN_HANDLER || c->state == CONN_WRITING) {
      c->close_after = 1;
    } else {
      conn_close(c);
    }
  }
}
