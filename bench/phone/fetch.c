/* File downloads for the simulated phone: a minimal HTTP/1.1 GET client and
 * a minimal TFTP read client, both on libuv. See phone.h. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bytestring.h>

#include "bench/phone/phone.h"
#include "core/base/error.h"

#define FETCH_DEFAULT_TIMEOUT_MS 30000
#define TFTP_DEFAULT_RTO_MS 1000
#define TFTP_DEFAULT_RETRIES 5
#define TFTP_DEFAULT_BLKSIZE 1428
#define TFTP_RFC_BLKSIZE 512
#define TFTP_MIN_BLKSIZE 8
#define TFTP_MAX_BLKSIZE 65464
#define TFTP_RTO_BACKOFF_CAP 8 /* the retransmission timeout grows to 8 x at most */
/* An RRQ: opcode, name, mode, two options with their values. */
#define TFTP_MAX_REQUEST (2 + CAPSTAN_PHONE_FETCH_MAX_NAME + 1 + 6 + 8 + 6 + 6 + 21)
/* Read buffer: a whole datagram of the largest block, or a TCP read. */
#define READ_BUF_SIZE (TFTP_MAX_BLKSIZE + 4)
#define HTTP_MAX_REQUEST (CAPSTAN_PHONE_FETCH_MAX_NAME + 160)

enum { TFTP_RRQ = 1, TFTP_DATA = 3, TFTP_ACK = 4, TFTP_ERROR = 5, TFTP_OACK = 6 };

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define NAME_ENTRY(id, name) name,
static const char *const g_transport_names[] = {CAPSTAN_PHONE_TRANSPORTS(NAME_ENTRY)};
static const char *const g_fetch_error_names[] = {CAPSTAN_PHONE_FETCH_ERRORS(NAME_ENTRY)};
#undef NAME_ENTRY

const char *capstan_phone_transport_name(capstan_phone_transport_t t) {
  return (unsigned)t < COUNT(g_transport_names) ? g_transport_names[t] : "unknown";
}

int capstan_phone_parse_transport(const char *name, capstan_phone_transport_t *out) {
  for (unsigned i = 0; i < COUNT(g_transport_names); i++) {
    if (name != NULL && strcasecmp(name, g_transport_names[i]) == 0) {
      *out = (capstan_phone_transport_t)i;
      return 0;
    }
  }
  return CAPSTAN_EINVAL;
}

const char *capstan_phone_fetch_error_name(capstan_phone_fetch_error_t err) {
  return (unsigned)err < COUNT(g_fetch_error_names) ? g_fetch_error_names[err] : "unknown";
}

/* An HTTP connection: its own object so that it can outlive a download and
 * serve the next one (keep-alive). Freed in its close callback. */
struct capstan_phone_http_conn {
  uv_tcp_t tcp;
  capstan_phone_fetch_t *owner; /* the download using it, NULL when idle */
  unsigned requests;            /* requests sent on it */
};

static void on_conn_closed(uv_handle_t *h);

static capstan_phone_http_conn_t *conn_new(uv_loop_t *loop) {
  capstan_phone_http_conn_t *c = calloc(1, sizeof(*c));
  if (c == NULL) return NULL;
  if (uv_tcp_init(loop, &c->tcp) != 0) {
    free(c);
    return NULL;
  }
  c->tcp.data = c;
  return c;
}

/* Closes |c|; |owner| (may be NULL) is told when it is closed. */
static void conn_close(capstan_phone_http_conn_t *c, capstan_phone_fetch_t *owner) {
  c->owner = owner;
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

void capstan_phone_http_conn_close(capstan_phone_http_conn_t *conn) {
  if (conn != NULL) conn_close(conn, NULL);
}

void capstan_phone_fetch_result_cleanup(capstan_phone_fetch_result_t *res) {
  if (res == NULL) return;
  free(res->body);
  capstan_phone_http_conn_close(res->conn);
  memset(res, 0, sizeof(*res));
}

struct capstan_phone_fetch {
  uv_loop_t *loop;
  capstan_phone_fetch_config_t cfg;
  char name[CAPSTAN_PHONE_FETCH_MAX_NAME + 1];
  capstan_phone_fetch_cb cb;
  void *cb_arg;
  uint64_t t0;
  int handles_open;
  int closing;
  uv_timer_t timer;
  uv_udp_t udp; /* TFTP */

  /* HTTP */
  capstan_phone_http_conn_t *conn;
  int reused;       /* |conn| served an earlier download */
  int retried;      /* a reused connection failed: one new connection */
  int got_response; /* a byte of the response came */
  int server_close; /* the response says the connection ends */
  uv_connect_t connect_req;
  uv_write_t write_req;
  char request[HTTP_MAX_REQUEST];
  size_t request_len;
  uint8_t *hdr; /* the response header block while it arrives */
  size_t hdr_len;
  int have_headers;
  size_t content_length;

  /* TFTP */
  uint8_t last[TFTP_MAX_REQUEST]; /* the last packet sent, for resends */
  size_t last_len;
  struct sockaddr_storage peer; /* the server's transfer address, once known */
  int have_peer;
  int options_sent, options_done;
  uint16_t blksize;
  uint16_t next_block;
  unsigned retries;
  uint64_t rto_ms;

  /* The body as it arrives (HTTP: Content-Length bytes; TFTP: grows). */
  uint8_t *body;
  size_t body_len, body_cap;

  capstan_phone_fetch_result_t res;
};

/* Reads land in one buffer per thread and are consumed at once. */
static _Thread_local uint8_t g_read_buf[READ_BUF_SIZE];

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  buf->base = (char *)g_read_buf;
  buf->len = sizeof(g_read_buf);
}

static void fetch_free(capstan_phone_fetch_t *f) {
  free(f->hdr);
  free(f->body);
  free(f);
}

static void fetch_handle_closed(capstan_phone_fetch_t *f) {
  if (--f->handles_open > 0) return;
  f->res.total_ms = (double)(uv_hrtime() - f->t0) / 1e6;
  if (f->res.error == CAPSTAN_PHONE_FETCH_NONE) {
    f->res.body = f->body;
    f->res.len = f->body_len;
    f->body = NULL;
  }
  if (f->cb != NULL) f->cb(f, f->cb_arg, &f->res);
  capstan_phone_fetch_result_cleanup(&f->res);
  fetch_free(f);
}

static void on_handle_closed(uv_handle_t *h) {
  fetch_handle_closed(h->data);
}

static void on_conn_closed(uv_handle_t *h) {
  capstan_phone_http_conn_t *c = h->data;
  capstan_phone_fetch_t *owner = c->owner;
  free(c);
  if (owner != NULL) fetch_handle_closed(owner);
}

/* Ends the download: success when |err| is NONE. Only the first call counts. */
static void finish(capstan_phone_fetch_t *f, capstan_phone_fetch_error_t err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void finish(capstan_phone_fetch_t *f, capstan_phone_fetch_error_t err, const char *fmt,
                   ...) {
  if (f->closing) return;
  f->closing = 1;
  f->res.error = err;
  if (fmt != NULL) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->res.detail, sizeof(f->res.detail), fmt, ap);
    va_end(ap);
  }
  uv_timer_stop(&f->timer);
  f->handles_open = 1;
  uv_close((uv_handle_t *)&f->timer, on_handle_closed);
  if (f->cfg.transport == CAPSTAN_PHONE_TRANSPORT_TFTP) {
    f->handles_open++;
    uv_close((uv_handle_t *)&f->udp, on_handle_closed);
  } else if (f->conn != NULL) {
    if (err == CAPSTAN_PHONE_FETCH_NONE && f->cfg.keep_alive && !f->server_close) {
      /* The connection goes with the result, for the next download. */
      uv_read_stop((uv_stream_t *)&f->conn->tcp);
      f->conn->owner = NULL;
      f->res.conn = f->conn;
    } else {
      f->handles_open++;
      conn_close(f->conn, f);
    }
    f->conn = NULL;
  }
}

static uint64_t step_timeout(const capstan_phone_fetch_t *f) {
  return f->cfg.timeout_ms ? f->cfg.timeout_ms : FETCH_DEFAULT_TIMEOUT_MS;
}

static size_t max_bytes(const capstan_phone_fetch_t *f) {
  return f->cfg.max_bytes ? f->cfg.max_bytes : CAPSTAN_PHONE_FETCH_DEFAULT_MAX;
}

/* ---- HTTP ------------------------------------------------------------------ */

static void on_http_timer(uv_timer_t *t) {
  capstan_phone_fetch_t *f = t->data;
  finish(f, CAPSTAN_PHONE_FETCH_TIMEOUT, "no progress in %llu ms (%s)",
         (unsigned long long)step_timeout(f),
         f->have_headers ? "body" : (f->hdr_len ? "header" : "waiting for the response"));
}

static void http_arm(capstan_phone_fetch_t *f) {
  if (!f->closing) uv_timer_start(&f->timer, on_http_timer, step_timeout(f), 0);
}

/* Reads one header line (up to CRLF) from |cbs| into |line|; 0 if there is
 * no complete line. */
static int cbs_get_line(CBS *cbs, CBS *line) {
  const uint8_t *data = CBS_data(cbs);
  size_t len = CBS_len(cbs);
  for (size_t i = 0; i + 1 < len; i++) {
    if (data[i] == '\r' && data[i + 1] == '\n') {
      if (!CBS_get_bytes(cbs, line, i)) return 0;
      return CBS_skip(cbs, 2);
    }
  }
  return 0;
}

static int cbs_eq_nocase(const CBS *cbs, const char *s) {
  size_t n = strlen(s);
  return CBS_len(cbs) == n && strncasecmp((const char *)CBS_data(cbs), s, n) == 0;
}

static int is_ows(uint8_t c) {
  return c == ' ' || c == '\t';
}

static void cbs_trim(CBS *cbs) {
  while (CBS_len(cbs) > 0 && is_ows(CBS_data(cbs)[0])) CBS_skip(cbs, 1);
  size_t n = CBS_len(cbs);
  while (n > 0 && is_ows(CBS_data(cbs)[n - 1])) n--;
  CBS_init(cbs, CBS_data(cbs), n);
}

/* Decimal digits only, at most 12 of them (bodies are far smaller). */
static int cbs_get_decimal(const CBS *cbs, uint64_t *out) {
  size_t n = CBS_len(cbs);
  if (n == 0 || n > 12) return 0;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t c = CBS_data(cbs)[i];
    if (c < '0' || c > '9') return 0;
    v = v * 10 + (uint64_t)(c - '0');
  }
  *out = v;
  return 1;
}

/* Parses the header block (status line to the empty line, CRLFs included).
 * Returns 1 when the body should follow, 0 when finish() was called. */
static int http_parse_headers(capstan_phone_fetch_t *f, const uint8_t *block, size_t len) {
  CBS cbs, line;
  CBS_init(&cbs, block, len);
  if (!cbs_get_line(&cbs, &line)) goto bad;
  /* "HTTP/1.x SP 3DIGIT [SP reason]" */
  CBS version, code;
  if (!CBS_get_bytes(&line, &version, 8) || !CBS_get_bytes(&line, &code, 4) ||
      memcmp(CBS_data(&version), "HTTP/1.", 7) != 0 || CBS_data(&version)[7] < '0' ||
      CBS_data(&version)[7] > '9' || CBS_data(&code)[0] != ' ') {
    finish(f, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, "malformed status line");
    return 0;
  }
  CBS_skip(&code, 1);
  uint64_t status;
  if (!cbs_get_decimal(&code, &status) || status < 100 || status > 999 ||
      (CBS_len(&line) > 0 && CBS_data(&line)[0] != ' ')) {
    finish(f, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, "malformed status code");
    return 0;
  }
  f->res.code = (int)status;
  if (CBS_data(&version)[7] == '0') f->server_close = 1; /* HTTP/1.0: no keep-alive asked */
  int have_length = 0;
  uint64_t length = 0;
  for (;;) {
    if (!cbs_get_line(&cbs, &line)) goto bad;
    if (CBS_len(&line) == 0) break;
    const uint8_t *colon = memchr(CBS_data(&line), ':', CBS_len(&line));
    if (colon == NULL || colon == CBS_data(&line)) {
      finish(f, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, "malformed header line");
      return 0;
    }
    CBS hname, value;
    CBS_get_bytes(&line, &hname, (size_t)(colon - CBS_data(&line)));
    CBS_skip(&line, 1);
    value = line;
    cbs_trim(&value);
    if (cbs_eq_nocase(&hname, "Content-Length")) {
      uint64_t v;
      if (have_length || !cbs_get_decimal(&value, &v)) {
        finish(f, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, "bad or repeated Content-Length");
        return 0;
      }
      have_length = 1;
      length = v;
    } else if (cbs_eq_nocase(&hname, "Connection")) {
      if (cbs_eq_nocase(&value, "close")) f->server_close = 1;
    } else if (cbs_eq_nocase(&hname, "Transfer-Encoding")) {
      finish(f, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, "Transfer-Encoding is not supported");
      return 0;
    }
  }
  if (CBS_len(&cbs) != 0) goto bad; /* the block ends at the empty line */
  if (status == 404) {
    finish(f, CAPSTAN_PHONE_FETCH_NOT_FOUND, "HTTP 404");
    return 0;
  }
  if (status != 200) {
    finish(f, CAPSTAN_PHONE_FETCH_SERVER_ERROR, "HTTP %d", (int)status);
    return 0;
  }
  if (!have_length) {
    finish(f, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, "no Content-Length");
    return 0;
  }
  if (length > max_bytes(f)) {
    finish(f, CAPSTAN_PHONE_FETCH_TOO_LARGE, "Content-Length %llu over the cap %zu",
           (unsigned long long)length, max_bytes(f));
    return 0;
  }
  f->content_length = (size_t)length;
  f->body = malloc(f->content_length ? f->content_length : 1);
  if (f->body == NULL) {
    finish(f, CAPSTAN_PHONE_FETCH_INTERNAL, "out of memory");
    return 0;
  }
  f->body_cap = f->content_length;
  f->have_headers = 1;
  return 1;
bad:
  finish(f, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, "malformed header block");
  return 0;
}

static void http_body(capstan_phone_fetch_t *f, const uint8_t *data, size_t len) {
  if (len > f->content_length - f->body_len) {
    finish(f, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, "more bytes than Content-Length");
    return;
  }
  memcpy(f->body + f->body_len, data, len);
  f->body_len += len;
  if (f->body_len == f->content_length) finish(f, CAPSTAN_PHONE_FETCH_NONE, NULL);
}

/* Finds the end of the header block ("\r\n\r\n") in |data|; returns the
 * offset just past it, or 0. */
static size_t header_end(const uint8_t *data, size_t len) {
  for (size_t i = 0; i + 3 < len; i++) {
    if (data[i] == '\r' && data[i + 1] == '\n' && data[i + 2] == '\r' && data[i + 3] == '\n') {
      return i + 4;
    }
  }
  return 0;
}

static void http_data(capstan_phone_fetch_t *f, const uint8_t *data, size_t len) {
  if (f->have_headers) {
    http_body(f, data, len);
    return;
  }
  /* Collect the header block, bounded by the cap. */
  size_t room = CAPSTAN_PHONE_HTTP_MAX_HEADER - f->hdr_len;
  size_t take = len < room ? len : room;
  if (f->hdr == NULL) {
    f->hdr = malloc(CAPSTAN_PHONE_HTTP_MAX_HEADER);
    if (f->hdr == NULL) {
      finish(f, CAPSTAN_PHONE_FETCH_INTERNAL, "out of memory");
      return;
    }
  }
  /* Search from 3 bytes before the new data: the terminator may straddle. */
  size_t from = f->hdr_len > 3 ? f->hdr_len - 3 : 0;
  memcpy(f->hdr + f->hdr_len, data, take);
  f->hdr_len += take;
  size_t end = header_end(f->hdr + from, f->hdr_len - from);
  if (end == 0) {
    if (f->hdr_len == CAPSTAN_PHONE_HTTP_MAX_HEADER) {
      finish(f, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, "header block over %u bytes",
             CAPSTAN_PHONE_HTTP_MAX_HEADER);
    }
    return;
  }
  end += from;
  /* Bytes of this read past the header block belong to the body. */
  size_t consumed_from_data = end - (f->hdr_len - take);
  if (!http_parse_headers(f, f->hdr, end)) return;
  free(f->hdr);
  f->hdr = NULL;
  f->hdr_len = 0;
  if (consumed_from_data < len) {
    http_body(f, data + consumed_from_data, len - consumed_from_data);
  } else if (f->content_length == 0) {
    finish(f, CAPSTAN_PHONE_FETCH_NONE, NULL);
  }
}

static void http_connect(capstan_phone_fetch_t *f);

/* A kept connection the server closed meanwhile fails before any byte of
 * the response: that is not the server refusing the file, so the download
 * starts again once on a new connection. Returns 1 if it did. */
static int http_retry(capstan_phone_fetch_t *f) {
  if (!f->reused || f->retried || f->got_response) return 0;
  f->retried = 1;
  f->reused = 0;
  conn_close(f->conn, NULL);
  f->conn = NULL;
  http_connect(f);
  return 1;
}

static void on_http_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  capstan_phone_http_conn_t *c = s->data;
  capstan_phone_fetch_t *f = c->owner;
  if (f == NULL || f->closing || f->conn != c) return;
  if (nread < 0 && http_retry(f)) return;
  if (nread == UV_EOF) {
    finish(f, CAPSTAN_PHONE_FETCH_CLOSED, "server closed after %zu of %s bytes", f->body_len,
           f->have_headers ? "the" : "the header's");
    return;
  }
  if (nread < 0) {
    finish(f, CAPSTAN_PHONE_FETCH_CLOSED, "read: %s", uv_strerror((int)nread));
    return;
  }
  if (nread == 0) return;
  f->got_response = 1;
  http_arm(f);
  http_data(f, (const uint8_t *)buf->base, (size_t)nread);
}

static void on_http_written(uv_write_t *req, int status) {
  capstan_phone_fetch_t *f = req->data;
  if (status >= 0 || status == UV_ECANCELED || f->closing) return;
  if (http_retry(f)) return;
  finish(f, CAPSTAN_PHONE_FETCH_CLOSED, "write: %s", uv_strerror(status));
}

/* Sends the request on f->conn and reads the answer. */
static void http_send(capstan_phone_fetch_t *f) {
  uv_buf_t b = uv_buf_init(f->request, (unsigned)f->request_len);
  f->write_req.data = f;
  f->conn->owner = f;
  f->conn->requests++;
  int rc = uv_write(&f->write_req, (uv_stream_t *)&f->conn->tcp, &b, 1, on_http_written);
  if (rc == 0) rc = uv_read_start((uv_stream_t *)&f->conn->tcp, on_alloc, on_http_read);
  if (rc != 0) {
    if (http_retry(f)) return;
    finish(f, CAPSTAN_PHONE_FETCH_CLOSED, "cannot send the request: %s", uv_strerror(rc));
    return;
  }
  http_arm(f);
}

static void on_http_connect(uv_connect_t *req, int status) {
  capstan_phone_fetch_t *f = req->data;
  if (status == UV_ECANCELED || f->closing) return;
  if (status < 0) {
    finish(f, CAPSTAN_PHONE_FETCH_CONNECT, "connect: %s", uv_strerror(status));
    return;
  }
  http_send(f);
}

/* Opens a new connection for the download. */
static void http_connect(capstan_phone_fetch_t *f) {
  f->res.new_connection = 1;
  f->conn = conn_new(f->loop);
  if (f->conn == NULL) {
    finish(f, CAPSTAN_PHONE_FETCH_INTERNAL, "out of memory");
    return;
  }
  f->conn->owner = f;
  f->connect_req.data = f;
  int rc = 0;
  if (f->cfg.has_bind) {
    rc = uv_tcp_bind(&f->conn->tcp, (const struct sockaddr *)&f->cfg.bind_addr, 0);
    if (rc != 0) {
      finish(f, CAPSTAN_PHONE_FETCH_CONNECT, "bind: %s", uv_strerror(rc));
      return;
    }
  }
  rc = uv_tcp_connect(&f->connect_req, &f->conn->tcp, (const struct sockaddr *)&f->cfg.addr,
                      on_http_connect);
  if (rc != 0) {
    finish(f, CAPSTAN_PHONE_FETCH_CONNECT, "connect: %s", uv_strerror(rc));
    return;
  }
  http_arm(f);
}

static void http_start(capstan_phone_fetch_t *f) {
  char host[INET6_ADDRSTRLEN + 2] = "";
  int port = 0;
  if (f->cfg.addr.ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&f->cfg.addr;
    char ip[INET6_ADDRSTRLEN];
    uv_ip6_name(a, ip, sizeof(ip));
    snprintf(host, sizeof(host), "[%s]", ip);
    port = ntohs(a->sin6_port);
  } else {
    const struct sockaddr_in *a = (const struct sockaddr_in *)&f->cfg.addr;
    uv_ip4_name(a, host, sizeof(host));
    port = ntohs(a->sin_port);
  }
  int n = snprintf(f->request, sizeof(f->request),
                   "GET /%s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: capstan-phone\r\n"
                   "Connection: %s\r\n\r\n",
                   f->name, host, port, f->cfg.keep_alive ? "keep-alive" : "close");
  f->request_len = (size_t)n; /* fits: the name is bounded */
  if (f->cfg.reuse != NULL) {
    f->conn = f->cfg.reuse;
    f->cfg.reuse = NULL;
    f->reused = 1;
    http_send(f);
    return;
  }
  http_connect(f);
}

/* ---- TFTP ------------------------------------------------------------------ */

static void on_tftp_timer(uv_timer_t *t);

static void tftp_arm(capstan_phone_fetch_t *f) {
  if (!f->closing) uv_timer_start(&f->timer, on_tftp_timer, f->rto_ms, 0);
}

static int same_addr(const struct sockaddr *a, const struct sockaddr_storage *b, int with_port) {
  if (a->sa_family != b->ss_family) return 0;
  if (a->sa_family == AF_INET) {
    const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
    return x->sin_addr.s_addr == y->sin_addr.s_addr && (!with_port || x->sin_port == y->sin_port);
  }
  if (a->sa_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a,
                              *y = (const struct sockaddr_in6 *)b;
    return memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0 &&
           (!with_port || x->sin6_port == y->sin6_port);
  }
  return 0;
}

static const struct sockaddr *tftp_dest(const capstan_phone_fetch_t *f) {
  return (const struct sockaddr *)(f->have_peer ? &f->peer : &f->cfg.addr);
}

/* Sends |pkt| to |to|. A datagram the kernel will not take now is as good
 * as lost: the retransmission timer covers both. */
static void tftp_send_to(capstan_phone_fetch_t *f, const uint8_t *pkt, size_t len,
                         const struct sockaddr *to) {
  uv_buf_t b = uv_buf_init((char *)pkt, (unsigned)len);
  (void)uv_udp_try_send(&f->udp, &b, 1, to);
}

/* Sends a packet and keeps it for resends. */
static void tftp_send(capstan_phone_fetch_t *f, const uint8_t *pkt, size_t len) {
  memcpy(f->last, pkt, len);
  f->last_len = len;
  tftp_send_to(f, f->last, f->last_len, tftp_dest(f));
}

static void tftp_send_error(capstan_phone_fetch_t *f, uint16_t code, const char *msg,
                            const struct sockaddr *to) {
  uint8_t pkt[64];
  CBB cbb;
  size_t len = 0;
  if (!CBB_init_fixed(&cbb, pkt, sizeof(pkt)) || !CBB_add_u16(&cbb, TFTP_ERROR) ||
      !CBB_add_u16(&cbb, code) || !CBB_add_bytes(&cbb, (const uint8_t *)msg, strlen(msg) + 1) ||
      !CBB_finish(&cbb, NULL, &len)) {
    CBB_cleanup(&cbb);
    return;
  }
  tftp_send_to(f, pkt, len, to);
}

static void tftp_ack(capstan_phone_fetch_t *f, uint16_t block) {
  uint8_t pkt[4] = {0, TFTP_ACK, (uint8_t)(block >> 8), (uint8_t)block};
  tftp_send(f, pkt, sizeof(pkt));
}

static void on_tftp_timer(uv_timer_t *t) {
  capstan_phone_fetch_t *f = t->data;
  unsigned max = f->cfg.tftp_retries ? f->cfg.tftp_retries : TFTP_DEFAULT_RETRIES;
  if (f->retries >= max) {
    finish(f, CAPSTAN_PHONE_FETCH_TIMEOUT, "no answer after %u resends (%s)", f->retries,
           f->have_peer ? "transfer" : "request");
    return;
  }
  f->retries++;
  f->res.retransmits++;
  uint64_t base = f->cfg.tftp_rto_ms ? f->cfg.tftp_rto_ms : TFTP_DEFAULT_RTO_MS;
  if (f->rto_ms < base * TFTP_RTO_BACKOFF_CAP) f->rto_ms *= 2;
  tftp_send_to(f, f->last, f->last_len, tftp_dest(f));
  tftp_arm(f);
}

/* New data came: the retry count and back-off start again. */
static void tftp_progress(capstan_phone_fetch_t *f) {
  f->retries = 0;
  f->rto_ms = f->cfg.tftp_rto_ms ? f->cfg.tftp_rto_ms : TFTP_DEFAULT_RTO_MS;
}

/* "name\0value\0" pairs of an OACK. Only options we asked for may come back,
 * each at most once, with a value we can live with. */
static void tftp_oack(capstan_phone_fetch_t *f, CBS *pkt) {
  int seen_blksize = 0, seen_tsize = 0;
  while (CBS_len(pkt) > 0) {
    const uint8_t *p = CBS_data(pkt);
    const uint8_t *nul = memchr(p, 0, CBS_len(pkt));
    CBS name, value;
    if (nul == NULL || !CBS_get_bytes(pkt, &name, (size_t)(nul - p)) || !CBS_skip(pkt, 1)) break;
    p = CBS_data(pkt);
    nul = memchr(p, 0, CBS_len(pkt));
    if (nul == NULL || !CBS_get_bytes(pkt, &value, (size_t)(nul - p)) || !CBS_skip(pkt, 1)) {
      goto bad;
    }
    uint64_t v;
    if (!cbs_get_decimal(&value, &v)) goto bad;
    if (cbs_eq_nocase(&name, "blksize") && !seen_blksize && f->options_sent) {
      if (v < TFTP_MIN_BLKSIZE || v > f->blksize) goto bad;
      f->blksize = (uint16_t)v;
      seen_blksize = 1;
    } else if (cbs_eq_nocase(&name, "tsize") && !seen_tsize && f->options_sent) {
      seen_tsize = 1;
      if (v > max_bytes(f)) {
        tftp_send_error(f, 3, "file too large", tftp_dest(f));
        finish(f, CAPSTAN_PHONE_FETCH_TOO_LARGE, "tsize %llu over the cap %zu",
               (unsigned long long)v, max_bytes(f));
        return;
      }
    } else {
      goto bad;
    }
  }
  if (CBS_len(pkt) != 0) goto bad;
  f->options_done = 1;
  tftp_progress(f);
  tftp_ack(f, 0);
  tftp_arm(f);
  return;
bad:
  tftp_send_error(f, 8, "bad option acknowledgement", tftp_dest(f));
  finish(f, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, "bad OACK");
}

static void tftp_data(capstan_phone_fetch_t *f, uint16_t block, CBS *payload) {
  if (!f->options_done) {
    /* DATA without OACK: the server took no option (RFC 2347). */
    f->options_done = 1;
    f->blksize = TFTP_RFC_BLKSIZE;
  }
  if (block == (uint16_t)(f->next_block - 1)) {
    /* Our ACK was lost or late: acknowledge again. */
    tftp_ack(f, block);
    return;
  }
  if (block != f->next_block) return; /* out of order: wait for the resend */
  size_t len = CBS_len(payload);
  if (len > f->blksize) {
    tftp_send_error(f, 4, "block larger than blksize", tftp_dest(f));
    finish(f, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, "block %u of %zu bytes over blksize %u", block, len,
           f->blksize);
    return;
  }
  if (len > max_bytes(f) - f->body_len) {
    tftp_send_error(f, 3, "file too large", tftp_dest(f));
    finish(f, CAPSTAN_PHONE_FETCH_TOO_LARGE, "file over the cap %zu", max_bytes(f));
    return;
  }
  if (f->body_len + len > f->body_cap) {
    size_t cap = f->body_cap ? f->body_cap * 2 : 4096;
    while (cap < f->body_len + len) cap *= 2;
    if (cap > max_bytes(f)) cap = max_bytes(f);
    uint8_t *nb = realloc(f->body, cap ? cap : 1);
    if (nb == NULL) {
      finish(f, CAPSTAN_PHONE_FETCH_INTERNAL, "out of memory");
      return;
    }
    f->body = nb;
    f->body_cap = cap;
  }
  if (len > 0) memcpy(f->body + f->body_len, CBS_data(payload), len);
  f->body_len += len;
  tftp_progress(f);
  tftp_ack(f, block);
  f->next_block++;
  if (len < f->blksize) {
    finish(f, CAPSTAN_PHONE_FETCH_NONE, NULL);
  } else {
    tftp_arm(f); /* the timer runs from the last progress */
  }
}

static void on_tftp_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                         const struct sockaddr *from, unsigned flags) {
  capstan_phone_fetch_t *f = h->data;
  if (f->closing || from == NULL || nread < 0) return; /* errors: the timer decides */
  if (flags & UV_UDP_PARTIAL) return;                  /* cannot be ours: too large */
  if (f->have_peer ? !same_addr(from, &f->peer, 1) : !same_addr(from, &f->cfg.addr, 0)) {
    tftp_send_error(f, 5, "Unknown transfer ID", from);
    return;
  }
  CBS pkt;
  uint16_t opcode;
  CBS_init(&pkt, (const uint8_t *)buf->base, (size_t)nread);
  if (!CBS_get_u16(&pkt, &opcode)) return;
  if (!f->have_peer) {
    memcpy(&f->peer, from,
           from->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    f->peer.ss_family = from->sa_family;
    f->have_peer = 1;
  }
  switch (opcode) {
    case TFTP_DATA: {
      uint16_t block;
      if (!CBS_get_u16(&pkt, &block)) break;
      tftp_data(f, block, &pkt);
      return;
    }
    case TFTP_OACK:
      if (f->options_done) return; /* a resent OACK: our ACK 0 will be resent too */
      tftp_oack(f, &pkt);
      return;
    case TFTP_ERROR: {
      uint16_t code;
      if (!CBS_get_u16(&pkt, &code)) break;
      /* The message is NUL-terminated text; show what is printable. */
      char msg[64];
      size_t n = 0;
      while (CBS_len(&pkt) > 0 && n + 1 < sizeof(msg)) {
        uint8_t c;
        CBS_get_u8(&pkt, &c);
        if (c == 0) break;
        msg[n++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
      }
      msg[n] = '\0';
      f->res.code = code;
      finish(f, code == 1 ? CAPSTAN_PHONE_FETCH_NOT_FOUND : CAPSTAN_PHONE_FETCH_SERVER_ERROR,
             "TFTP error %u: %s", code, msg);
      return;
    }
    default:
      break;
  }
  tftp_send_error(f, 4, "Illegal TFTP operation", from);
  finish(f, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, "unexpected or malformed packet (opcode %u)", opcode);
}

static void tftp_start(capstan_phone_fetch_t *f) {
  uint16_t want = f->cfg.tftp_blksize ? f->cfg.tftp_blksize : TFTP_DEFAULT_BLKSIZE;
  f->blksize = want;
  f->next_block = 1;
  f->rto_ms = f->cfg.tftp_rto_ms ? f->cfg.tftp_rto_ms : TFTP_DEFAULT_RTO_MS;
  f->options_sent = want != TFTP_RFC_BLKSIZE;
  uint8_t pkt[TFTP_MAX_REQUEST];
  CBB cbb;
  size_t len = 0;
  char num[8];
  snprintf(num, sizeof(num), "%u", want);
  int ok = CBB_init_fixed(&cbb, pkt, sizeof(pkt)) && CBB_add_u16(&cbb, TFTP_RRQ) &&
           CBB_add_bytes(&cbb, (const uint8_t *)f->name, strlen(f->name) + 1) &&
           CBB_add_bytes(&cbb, (const uint8_t *)"octet", 6);
  if (ok && f->options_sent) {
    ok = CBB_add_bytes(&cbb, (const uint8_t *)"blksize", 8) &&
         CBB_add_bytes(&cbb, (const uint8_t *)num, strlen(num) + 1) &&
         CBB_add_bytes(&cbb, (const uint8_t *)"tsize", 6) &&
         CBB_add_bytes(&cbb, (const uint8_t *)"0", 2);
  }
  if (!ok || !CBB_finish(&cbb, NULL, &len)) {
    CBB_cleanup(&cbb);
    finish(f, CAPSTAN_PHONE_FETCH_INTERNAL, "cannot build the request");
    return;
  }
  if (!f->options_sent) f->options_done = 1;
  int rc = 0;
  if (f->cfg.has_bind) {
    rc = uv_udp_bind(&f->udp, (const struct sockaddr *)&f->cfg.bind_addr, 0);
  } else {
    struct sockaddr_storage any;
    memset(&any, 0, sizeof(any));
    if (f->cfg.addr.ss_family == AF_INET6) {
      uv_ip6_addr("::", 0, (struct sockaddr_in6 *)&any);
    } else {
      uv_ip4_addr("0.0.0.0", 0, (struct sockaddr_in *)&any);
    }
    rc = uv_udp_bind(&f->udp, (const struct sockaddr *)&any, 0);
  }
  if (rc == 0) rc = uv_udp_recv_start(&f->udp, on_alloc, on_tftp_recv);
  if (rc != 0) {
    finish(f, CAPSTAN_PHONE_FETCH_CONNECT, "udp: %s", uv_strerror(rc));
    return;
  }
  tftp_send(f, pkt, len);
  tftp_arm(f);
}

/* ---- Start / abort -------------------------------------------------------- */

static int name_ok(const char *name) {
  size_t n = name != NULL ? strlen(name) : 0;
  if (n == 0 || n > CAPSTAN_PHONE_FETCH_MAX_NAME) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '-' || c == '_')) {
      return 0;
    }
  }
  return 1;
}

int capstan_phone_fetch_start(uv_loop_t *loop, const capstan_phone_fetch_config_t *cfg,
                              capstan_phone_fetch_cb cb, void *arg, capstan_phone_fetch_t **out) {
  if (out != NULL) *out = NULL;
  if (!name_ok(cfg->name) || (cfg->addr.ss_family != AF_INET && cfg->addr.ss_family != AF_INET6) ||
      (cfg->transport != CAPSTAN_PHONE_TRANSPORT_HTTP &&
       cfg->transport != CAPSTAN_PHONE_TRANSPORT_TFTP) ||
      (cfg->transport == CAPSTAN_PHONE_TRANSPORT_TFTP && cfg->reuse != NULL) ||
      (cfg->reuse != NULL && cfg->reuse->owner != NULL) ||
      (cfg->tftp_blksize != 0 &&
       (cfg->tftp_blksize < TFTP_MIN_BLKSIZE || cfg->tftp_blksize > TFTP_MAX_BLKSIZE))) {
    if (cfg->reuse != NULL && cfg->reuse->owner == NULL) capstan_phone_http_conn_close(cfg->reuse);
    return CAPSTAN_EINVAL;
  }
  capstan_phone_fetch_t *f = calloc(1, sizeof(*f));
  if (f == NULL) {
    capstan_phone_http_conn_close(cfg->reuse);
    return CAPSTAN_ENOMEM;
  }
  f->loop = loop;
  f->cfg = *cfg;
  snprintf(f->name, sizeof(f->name), "%s", cfg->name);
  f->cfg.name = f->name;
  f->cb = cb;
  f->cb_arg = arg;
  f->res.code = -1;
  f->t0 = uv_hrtime();
  if (cfg->transport == CAPSTAN_PHONE_TRANSPORT_TFTP) {
    int rc = uv_udp_init_ex(loop, &f->udp, cfg->addr.ss_family);
    if (rc != 0) {
      free(f);
      return rc == UV_ENOMEM ? CAPSTAN_ENOMEM : CAPSTAN_EINVAL;
    }
    f->udp.data = f;
  }
  uv_timer_init(loop, &f->timer);
  f->timer.data = f;
  if (out != NULL) *out = f;
  if (cfg->transport == CAPSTAN_PHONE_TRANSPORT_HTTP) {
    http_start(f);
  } else {
    tftp_start(f);
  }
  return 0;
}

void capstan_phone_fetch_abort(capstan_phone_fetch_t *f) {
  if (f == NULL || f->closing) return;
  finish(f, CAPSTAN_PHONE_FETCH_ABORTED, "aborted");
}
