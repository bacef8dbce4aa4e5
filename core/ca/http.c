/* One HTTPS/1.1 exchange with a CA on the loop, never blocking it: resolve
 * (uv_getaddrinfo, unless the client's address cache answers), connect (uv_tcp_t, each address in
 * turn), TLS 1.2+ with BoringSSL over a BIO pair (the server name checked against the configured
 * bundle or the system's anchors), one request with "Connection: close", the answer parsed with
 * http-parser and capped at CAPSTAN_CA_MAX_RESPONSE. One timer bounds the whole exchange.
 *
 * The done callback always runs from the close callback of the last
 * handle, so never inside ca_http_start, and the struct is freed right
 * after: there is one way out. */
#include <arpa/inet.h>
#include <http_parser.h>
#include <limits.h>
#include <openssl/base64.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/base/error.h"
#include "core/ca/internal.h"
#include "core/descriptors.h"

/* The BIO pair's buffers: larger than one TLS record plus a socket read,
 * so one read always fits once BoringSSL has drained the previous one. */
#define BIO_PAIR_SIZE (64 * 1024)
#define READ_CHUNK (16 * 1024)
#define ERROR_MAX 300
#define HEADER_NAME_MAX 64

typedef enum { HDR_NONE, HDR_CONTENT_TYPE, HDR_RETRY_AFTER, HDR_OTHER } header_t;

struct ca_http {
  uv_loop_t *loop;
  uv_timer_t timer;
  uv_tcp_t tcp;
  uv_getaddrinfo_t gai;
  uv_connect_t connect;
  int tcp_open, gai_pending, open_handles;
  int last_connect_error;
  struct addrinfo *addrs, *next_addr;
  int addrs_ours;              /* from ca_addr_list, not the resolver */
  ca_addr_cache_t *addr_cache; /* the client's, or NULL */

  char host[CAPSTAN_CA_HOST_MAX + 1];
  uint16_t port;
  unsigned timeout_seconds;
  char *request; /* the whole request, headers and body */
  size_t request_len;
  int request_sent;

  SSL_CTX *ctx;
  SSL *ssl;
  BIO *net; /* our end of the pair: ciphertext to and from the socket */
  int handshake_done;

  http_parser parser;
  http_parser_settings settings;
  header_t header;
  char header_name[HEADER_NAME_MAX + 1];
  size_t header_name_len;
  int header_name_done;
  size_t received; /* plaintext bytes of the answer */
  int message_complete;
  ca_http_response_t resp;
  size_t body_cap;

  int finished, cancelled;
  ca_http_outcome_t outcome;
  char error[ERROR_MAX];
  ca_http_done_fn done;
  void *data;
};

typedef struct write_req {
  uv_write_t req;
  size_t len;
  uint8_t data[];
} write_req_t;

/* ---- ending ------------------------------------------------------------- */

static void release(ca_http_t *h) {
  if (h->open_handles > 0 || h->gai_pending) return;
  if (!h->cancelled && h->done) {
    h->done(h->data, h->outcome, h->outcome == CA_HTTP_ANSWERED ? "" : h->error,
            h->outcome == CA_HTTP_ANSWERED ? &h->resp : NULL);
  }
  if (h->addrs) {
    if (h->addrs_ours) {
      ca_addr_list_free(h->addrs);
    } else {
      uv_freeaddrinfo(h->addrs);
    }
  }
  SSL_free(h->ssl);
  BIO_free(h->net);
  SSL_CTX_free(h->ctx);
  if (h->request) {
    OPENSSL_cleanse(h->request, h->request_len); /* holds the credentials */
    free(h->request);
  }
  free(h->resp.body);
  free(h);
}

static void on_close(uv_handle_t *handle) {
  ca_http_t *h = handle->data;
  h->open_handles--;
  release(h);
}

static void finish(ca_http_t *h, ca_http_outcome_t outcome, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void finish(ca_http_t *h, ca_http_outcome_t outcome, const char *fmt, ...) {
  if (h->finished) return;
  h->finished = 1;
  h->outcome = outcome;
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->error, sizeof h->error, fmt, ap);
    va_end(ap);
  }
  if (h->gai_pending) uv_cancel((uv_req_t *)&h->gai);
  if (!uv_is_closing((uv_handle_t *)&h->timer)) uv_close((uv_handle_t *)&h->timer, on_close);
  if (h->tcp_open && !uv_is_closing((uv_handle_t *)&h->tcp)) {
    uv_close((uv_handle_t *)&h->tcp, on_close);
  }
}

void ca_http_cancel(ca_http_t *h) {
  if (!h) return;
  h->cancelled = 1;
  finish(h, CA_HTTP_FAILED, "cancelled");
}

static void on_timeout(uv_timer_t *t) {
  ca_http_t *h = t->data;
  finish(h, CA_HTTP_TIMED_OUT, "no complete answer from %s:%u within %u s", h->host,
         (unsigned)h->port, h->timeout_seconds);
}

/* ---- http-parser callbacks ---------------------------------------------- */

static int on_header_field(http_parser *p, const char *at, size_t len) {
  ca_http_t *h = p->data;
  if (h->header_name_done) { /* a new header starts */
    h->header_name_len = 0;
    h->header_name_done = 0;
    h->header = HDR_NONE;
  }
  size_t room = HEADER_NAME_MAX - h->header_name_len;
  size_t n = len < room ? len : room;
  memcpy(h->header_name + h->header_name_len, at, n);
  h->header_name_len += n;
  h->header_name[h->header_name_len] = 0;
  return 0;
}

static void append_bounded(char *dst, size_t cap, const char *at, size_t len) {
  size_t have = strlen(dst);
  size_t room = cap - 1 - have;
  size_t n = len < room ? len : room;
  memcpy(dst + have, at, n);
  dst[have + n] = 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  ca_http_t *h = p->data;
  if (!h->header_name_done) {
    h->header_name_done = 1;
    if (strcasecmp(h->header_name, "Content-Type") == 0) {
      h->header = HDR_CONTENT_TYPE;
      h->resp.content_type[0] = 0;
    } else if (strcasecmp(h->header_name, "Retry-After") == 0) {
      h->header = HDR_RETRY_AFTER;
      h->resp.retry_after[0] = 0;
    } else {
      h->header = HDR_OTHER;
    }
  }
  if (h->header == HDR_CONTENT_TYPE) {
    append_bounded(h->resp.content_type, sizeof h->resp.content_type, at, len);
  } else if (h->header == HDR_RETRY_AFTER) {
    append_bounded(h->resp.retry_after, sizeof h->resp.retry_after, at, len);
  }
  return 0;
}

static int on_headers_complete(http_parser *p) {
  ca_http_t *h = p->data;
  h->resp.status = (int)p->status_code;
  h->header_name_done = 1;
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  ca_http_t *h = p->data;
  if (len > CAPSTAN_CA_MAX_RESPONSE - h->resp.body_len) return 1; /* too big: stop */
  if (h->resp.body_len + len + 1 > h->body_cap) {
    size_t cap = h->body_cap ? h->body_cap : 4096;
    while (cap < h->resp.body_len + len + 1) cap *= 2;
    uint8_t *b = realloc(h->resp.body, cap);
    if (!b) return 1;
    h->resp.body = b;
    h->body_cap = cap;
  }
  memcpy(h->resp.body + h->resp.body_len, at, len);
  h->resp.body_len += len;
  h->resp.body[h->resp.body_len] = 0;
  return 0;
}

static int on_message_complete(http_parser *p) {
  ca_http_t *h = p->data;
  h->message_complete = 1;
  return 0;
}

/* ---- TLS pump ------------------------------------------------------------ */

static void on_write(uv_write_t *req, int status) {
  (void)status; /* a failed write shows up as a read error or EOF */
  free(req);
}

/* Moves what BoringSSL wrote into the pair onto the socket. */
static int flush_out(ca_http_t *h) {
  size_t pending;
  while ((pending = BIO_ctrl_pending(h->net)) > 0) {
    write_req_t *w = malloc(sizeof *w + pending);
    if (!w) return -1;
    int n = BIO_read(h->net, w->data, (int)pending);
    if (n <= 0) {
      free(w);
      return -1;
    }
    w->len = (size_t)n;
    uv_buf_t buf = uv_buf_init((char *)w->data, (unsigned)w->len);
    if (uv_write(&w->req, (uv_stream_t *)&h->tcp, &buf, 1, on_write) != 0) {
      free(w);
      return -1;
    }
  }
  return 0;
}

static void tls_error(ca_http_t *h, const char *during) {
  long vr = SSL_get_verify_result(h->ssl);
  if (vr != X509_V_OK) {
    ERR_clear_error(); /* the loop thread's queue is shared with the listeners */
    finish(h, CA_HTTP_FAILED, "TLS: certificate verify failed (%s)",
           X509_verify_cert_error_string(vr));
    return;
  }
  uint32_t e = ERR_peek_last_error();
  char buf[160];
  if (e) {
    ERR_error_string_n(e, buf, sizeof buf);
  } else {
    snprintf(buf, sizeof buf, "no detail");
  }
  ERR_clear_error();
  finish(h, CA_HTTP_FAILED, "TLS: %s with %s:%u failed (%s)", during, h->host, (unsigned)h->port,
         buf);
}

static void feed_parser(ca_http_t *h, const char *data, size_t len) {
  if (h->message_complete) return; /* trailing bytes after the answer are ignored */
  if (len == 0) {
    /* The end of the stream: it completes an answer without a length;
     * anything else is reported by the caller as a cut answer. */
    http_parser_execute(&h->parser, &h->settings, NULL, 0);
    return;
  }
  h->received += len;
  if (h->received > CAPSTAN_CA_MAX_RESPONSE) {
    finish(h, CA_HTTP_FAILED, "the CA's answer is larger than %d bytes", CAPSTAN_CA_MAX_RESPONSE);
    return;
  }
  size_t n = http_parser_execute(&h->parser, &h->settings, data, len);
  if (h->message_complete) return;
  if (n != len || HTTP_PARSER_ERRNO(&h->parser) != HPE_OK) {
    enum http_errno e = HTTP_PARSER_ERRNO(&h->parser);
    if (e == HPE_CB_body) {
      finish(h, CA_HTTP_FAILED, "the CA's answer is larger than %d bytes", CAPSTAN_CA_MAX_RESPONSE);
    } else {
      finish(h, CA_HTTP_FAILED, "the CA's answer is not valid HTTP (%s)",
             http_errno_description(e));
    }
  }
}

/* Drives the handshake, sends the request once, reads what there is. */
static void pump(ca_http_t *h) {
  if (h->finished) return;
  /* SSL_get_error reads the thread's error queue, which the loop's other
   * users share: start clean so their leftovers are not taken for ours. */
  ERR_clear_error();
  if (!h->handshake_done) {
    int r = SSL_do_handshake(h->ssl);
    if (r != 1) {
      int err = SSL_get_error(h->ssl, r);
      if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
        tls_error(h, "handshake");
        return;
      }
    } else {
      h->handshake_done = 1;
    }
  }
  if (h->handshake_done && !h->request_sent) {
    size_t off = 0;
    while (off < h->request_len) {
      size_t chunk = h->request_len - off;
      if (chunk > 16384) chunk = 16384;
      int r = SSL_write(h->ssl, h->request + off, (int)chunk);
      if (r <= 0) {
        int err = SSL_get_error(h->ssl, r);
        if (err == SSL_ERROR_WANT_WRITE && flush_out(h) == 0) continue;
        tls_error(h, "sending the request");
        return;
      }
      off += (size_t)r;
      if (flush_out(h) != 0) {
        finish(h, CA_HTTP_FAILED, "sending to %s:%u failed", h->host, (unsigned)h->port);
        return;
      }
    }
    h->request_sent = 1;
  }
  while (h->handshake_done && !h->finished && !h->message_complete) {
    char buf[READ_CHUNK];
    int r = SSL_read(h->ssl, buf, sizeof buf);
    if (r > 0) {
      feed_parser(h, buf, (size_t)r);
      continue;
    }
    int err = SSL_get_error(h->ssl, r);
    if (err == SSL_ERROR_WANT_READ) break;
    if (err == SSL_ERROR_ZERO_RETURN) { /* close_notify: the end of the answer */
      feed_parser(h, NULL, 0);
      if (!h->finished && !h->message_complete) {
        finish(h, CA_HTTP_FAILED,
               h->received ? "CA closed the connection in the middle of its answer"
                           : "CA closed the connection without an answer");
      }
      break;
    }
    tls_error(h, "reading the answer");
    return;
  }
  if (h->finished) return;
  if (flush_out(h) != 0) {
    finish(h, CA_HTTP_FAILED, "sending to %s:%u failed", h->host, (unsigned)h->port);
    return;
  }
  if (h->message_complete) finish(h, CA_HTTP_ANSWERED, NULL);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  (void)handle;
  (void)suggested;
  buf->base = malloc(READ_CHUNK);
  buf->len = buf->base ? READ_CHUNK : 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  ca_http_t *h = stream->data;
  if (nread < 0) {
    free(buf->base);
    if (h->finished) return;
    if (!h->handshake_done) {
      finish(h, CA_HTTP_FAILED, "TLS: %s:%u closed the connection during the handshake", h->host,
             (unsigned)h->port);
    } else if (nread == UV_EOF) {
      /* Without close_notify: an HTTP/1.1 answer without a length ends here. */
      feed_parser(h, NULL, 0);
      if (!h->finished && !h->message_complete) {
        finish(h, CA_HTTP_FAILED,
               h->received ? "CA closed the connection in the middle of its answer"
                           : "CA closed the connection without an answer");
      } else if (!h->finished) {
        finish(h, CA_HTTP_ANSWERED, NULL);
      }
    } else {
      finish(h, CA_HTTP_FAILED, "reading from %s:%u: %s", h->host, (unsigned)h->port,
             uv_strerror((int)nread));
    }
    return;
  }
  size_t off = 0;
  while (!h->finished && off < (size_t)nread) {
    int n = BIO_write(h->net, buf->base + off, (int)((size_t)nread - off));
    if (n <= 0) {
      finish(h, CA_HTTP_FAILED, "TLS: input buffer full");
      break;
    }
    off += (size_t)n;
    pump(h);
  }
  free(buf->base);
}

/* ---- connect ------------------------------------------------------------- */

/* Adds the PEM certificates in |pem| to |store|: how many. */
static int add_pem_certs(X509_STORE *store, const uint8_t *pem, size_t len) {
  if (len > INT_MAX) return 0;
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  if (!bio) return 0;
  int added = 0;
  X509 *x;
  while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
    if (X509_STORE_add_cert(store, x)) added++;
    X509_free(x);
  }
  ERR_clear_error(); /* the end of the PEM stream is an "error" */
  BIO_free(bio);
  return added;
}

/* Debian's bundle of the system's anchors (ca-certificates). */
#define SYSTEM_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

SSL_CTX *ca_http_ctx_new(const uint8_t *bundle, size_t len, char *err, size_t errlen) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_method());
  if (!ctx) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  X509_STORE *store = SSL_CTX_get_cert_store(ctx);
  if (bundle && len) {
    if (add_pem_certs(store, bundle, len) == 0) {
      snprintf(err, errlen, "the CA bundle holds no PEM certificate");
      SSL_CTX_free(ctx);
      return NULL;
    }
  } else if (!X509_STORE_load_locations(store, SYSTEM_BUNDLE, NULL) &&
             !SSL_CTX_set_default_verify_paths(ctx)) {
    ERR_clear_error();
    snprintf(err, errlen, "no CA bundle is set and the system's (%s) cannot be read",
             SYSTEM_BUNDLE);
    SSL_CTX_free(ctx);
    return NULL;
  }
  ERR_clear_error();
  return ctx;
}

static void try_connect(ca_http_t *h);

/* A failed attempt's handle is closed before the next address is tried:
 * the uv_tcp_t is reused, and may not be initialised again while closing. */
static void on_close_then_retry(uv_handle_t *handle) {
  ca_http_t *h = handle->data;
  h->open_handles--;
  if (h->finished) {
    release(h);
    return;
  }
  try_connect(h);
}

static void attempt_failed(ca_http_t *h, int error) {
  h->last_connect_error = error;
  h->tcp_open = 0;
  uv_close((uv_handle_t *)&h->tcp, on_close_then_retry);
}

static void on_connect(uv_connect_t *req, int status) {
  ca_http_t *h = req->data;
  if (h->finished) return;
  if (status != 0) {
    attempt_failed(h, status);
    return;
  }
  if (uv_read_start((uv_stream_t *)&h->tcp, on_alloc, on_read) != 0) {
    finish(h, CA_HTTP_FAILED, "connect to %s:%u: cannot read", h->host, (unsigned)h->port);
    return;
  }
  pump(h);
}

/* Connects to the next address, or fails with the last attempt's error. */
static void try_connect(ca_http_t *h) {
  while (h->next_addr) {
    struct addrinfo *ai = h->next_addr;
    h->next_addr = ai->ai_next;
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    if (uv_tcp_init(h->loop, &h->tcp) != 0) break;
    h->tcp.data = h;
    h->tcp_open = 1;
    h->open_handles++;
    h->connect.data = h;
    int r = uv_tcp_connect(&h->connect, &h->tcp, ai->ai_addr, on_connect);
    if (r != 0) {
      capstan_descriptors_note(r, "ca_client"); /* the condition, logged once */
      attempt_failed(h, r);
    }
    return;
  }
  /* Every cached address failed: the CA may have moved; resolve anew next time. */
  if (h->addrs_ours && h->addr_cache) h->addr_cache->count = 0;
  finish(h, CA_HTTP_FAILED, "connect to %s:%u: %s", h->host, (unsigned)h->port,
         h->last_connect_error ? uv_strerror(h->last_connect_error) : "no usable address");
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  ca_http_t *h = req->data;
  h->gai_pending = 0;
  if (h->finished) {
    if (res) uv_freeaddrinfo(res);
    release(h);
    return;
  }
  if (status != 0) {
    finish(h, CA_HTTP_FAILED, "resolve %s: %s", h->host, uv_strerror(status));
    return;
  }
  h->addrs = res;
  h->next_addr = res;
  if (h->addr_cache) ca_addr_cache_fill(h->addr_cache, res, uv_now(h->loop));
  try_connect(h);
}

void ca_addr_cache_fill(ca_addr_cache_t *c, const struct addrinfo *res, uint64_t now_ms) {
  c->count = 0;
  for (const struct addrinfo *ai = res; ai && c->count < CA_ADDR_CACHE_MAX; ai = ai->ai_next) {
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    if (ai->ai_addrlen > sizeof c->addr[0]) continue;
    memcpy(&c->addr[c->count], ai->ai_addr, ai->ai_addrlen);
    c->len[c->count] = ai->ai_addrlen;
    c->count++;
  }
  c->expires_ms = now_ms + CA_ADDR_CACHE_SECONDS * 1000u;
}

/* One entry of a list we build: the addrinfo and the address it points to. */
typedef struct addr_entry {
  struct addrinfo ai;
  struct sockaddr_storage ss;
} addr_entry_t;

static struct addrinfo *addr_list_append(struct addrinfo **head, struct addrinfo **tail,
                                         const void *sa, socklen_t len) {
  addr_entry_t *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  memcpy(&e->ss, sa, len);
  e->ai.ai_family = ((const struct sockaddr *)sa)->sa_family;
  e->ai.ai_socktype = SOCK_STREAM;
  e->ai.ai_addr = (struct sockaddr *)&e->ss;
  e->ai.ai_addrlen = len;
  if (*tail) {
    (*tail)->ai_next = &e->ai;
  } else {
    *head = &e->ai;
  }
  *tail = &e->ai;
  return &e->ai;
}

void ca_addr_list_free(struct addrinfo *list) {
  while (list) {
    struct addrinfo *next = list->ai_next;
    free((addr_entry_t *)(void *)list); /* ai is the entry's first member */
    list = next;
  }
}

struct addrinfo *ca_addr_list(const char *host, uint16_t port, const ca_addr_cache_t *c,
                              uint64_t now_ms) {
  struct addrinfo *head = NULL, *tail = NULL;
  struct sockaddr_in v4;
  struct sockaddr_in6 v6;
  memset(&v4, 0, sizeof v4);
  memset(&v6, 0, sizeof v6);
  if (inet_pton(AF_INET, host, &v4.sin_addr) == 1) {
    v4.sin_family = AF_INET;
    v4.sin_port = htons(port);
    return addr_list_append(&head, &tail, &v4, sizeof v4);
  }
  if (inet_pton(AF_INET6, host, &v6.sin6_addr) == 1) {
    v6.sin6_family = AF_INET6;
    v6.sin6_port = htons(port);
    return addr_list_append(&head, &tail, &v6, sizeof v6);
  }
  if (!c || c->count == 0 || now_ms >= c->expires_ms) return NULL;
  for (size_t i = 0; i < c->count; i++) {
    if (!addr_list_append(&head, &tail, &c->addr[i], c->len[i])) {
      ca_addr_list_free(head);
      return NULL;
    }
  }
  return head;
}

/* ---- start ------------------------------------------------------------------ */

static int build_request(ca_http_t *h, const ca_http_request_t *rq) {
  char auth[800] = ""; /* base64 of 511 bytes is 684 */
  if (rq->username && rq->username[0]) {
    char cred[CAPSTAN_CA_USER_MAX + CAPSTAN_CA_PASSWORD_MAX + 2];
    int n = snprintf(cred, sizeof cred, "%s:%s", rq->username, rq->password ? rq->password : "");
    if (n < 0 || (size_t)n >= sizeof cred) return -1;
    uint8_t enc[((CAPSTAN_CA_USER_MAX + CAPSTAN_CA_PASSWORD_MAX + 2) / 3 + 1) * 4 + 1];
    size_t elen = EVP_EncodeBlock(enc, (const uint8_t *)cred, (size_t)n);
    snprintf(auth, sizeof auth, "Authorization: Basic %.*s\r\n", (int)elen, enc);
    OPENSSL_cleanse(cred, sizeof cred);
    OPENSSL_cleanse(enc, sizeof enc);
  }
  int is_v6 = strchr(rq->host, ':') != NULL;
  char hostport[CAPSTAN_CA_HOST_MAX + 16];
  if (rq->port == 443) {
    snprintf(hostport, sizeof hostport, is_v6 ? "[%s]" : "%s", rq->host);
  } else {
    snprintf(hostport, sizeof hostport, is_v6 ? "[%s]:%u" : "%s:%u", rq->host, (unsigned)rq->port);
  }
  char ctype[160] = "";
  if (rq->content_type) {
    snprintf(ctype, sizeof ctype, "Content-Type: %s\r\n", rq->content_type);
  }
  int is_post = strcmp(rq->method, "POST") == 0;
  char length[48] = "";
  if (is_post) snprintf(length, sizeof length, "Content-Length: %zu\r\n", rq->body_len);
  char head[4096];
  int n = snprintf(head, sizeof head,
                   "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nAccept: */*\r\n%s%s%s"
                   "Connection: close\r\n\r\n",
                   rq->method, rq->target, hostport, CAPSTAN_CA_USER_AGENT, auth, ctype, length);
  OPENSSL_cleanse(auth, sizeof auth);
  if (n < 0 || (size_t)n >= sizeof head) return -1;
  size_t body_len = is_post ? rq->body_len : 0;
  h->request = malloc((size_t)n + body_len);
  if (!h->request) {
    OPENSSL_cleanse(head, sizeof head);
    return -1;
  }
  memcpy(h->request, head, (size_t)n);
  if (body_len) memcpy(h->request + n, rq->body, body_len);
  h->request_len = (size_t)n + body_len;
  OPENSSL_cleanse(head, sizeof head);
  return 0;
}

/* Sets up TLS; a sentence in h->error on failure. */
static int setup_tls(ca_http_t *h, const ca_http_request_t *rq) {
  if (!rq->ctx || !SSL_CTX_up_ref(rq->ctx)) return -1;
  h->ctx = rq->ctx;
  h->ssl = SSL_new(h->ctx);
  if (!h->ssl) return -1;
  BIO *inner = NULL;
  if (!BIO_new_bio_pair(&inner, BIO_PAIR_SIZE, &h->net, BIO_PAIR_SIZE)) return -1;
  SSL_set_bio(h->ssl, inner, inner);
  SSL_set_connect_state(h->ssl);
  X509_VERIFY_PARAM *param = SSL_get0_param(h->ssl);
  uint8_t ip[16];
  if (inet_pton(AF_INET, h->host, ip) == 1 || inet_pton(AF_INET6, h->host, ip) == 1) {
    if (!X509_VERIFY_PARAM_set1_ip_asc(param, h->host)) return -1;
  } else {
    if (!SSL_set_tlsext_host_name(h->ssl, h->host)) return -1;
    if (!X509_VERIFY_PARAM_set1_host(param, h->host, strlen(h->host))) return -1;
  }
  return 0;
}

ca_http_t *ca_http_start(uv_loop_t *loop, const ca_http_request_t *rq, ca_http_done_fn done,
                         void *data) {
  ca_http_t *h = calloc(1, sizeof *h);
  if (!h) return NULL;
  h->loop = loop;
  h->done = done;
  h->data = data;
  h->port = rq->port;
  if (uv_timer_init(loop, &h->timer) != 0) {
    free(h);
    return NULL;
  }
  h->timer.data = h;
  h->open_handles = 1;
  h->timeout_seconds =
      rq->timeout_seconds ? rq->timeout_seconds : CAPSTAN_CA_DEFAULT_TIMEOUT_SECONDS;

  http_parser_init(&h->parser, HTTP_RESPONSE);
  h->parser.data = h;
  http_parser_settings_init(&h->settings);
  h->settings.on_header_field = on_header_field;
  h->settings.on_header_value = on_header_value;
  h->settings.on_headers_complete = on_headers_complete;
  h->settings.on_body = on_body;
  h->settings.on_message_complete = on_message_complete;

  if (strlen(rq->host) > CAPSTAN_CA_HOST_MAX) {
    finish(h, CA_HTTP_FAILED, "the CA host name is too long");
    return h;
  }
  snprintf(h->host, sizeof h->host, "%s", rq->host);
  if (build_request(h, rq) != 0) {
    finish(h, CA_HTTP_FAILED, "the request to the CA cannot be built");
    return h;
  }
  if (setup_tls(h, rq) != 0) {
    ERR_clear_error();
    finish(h, CA_HTTP_FAILED, "%s", h->error[0] ? h->error : "TLS: setup failed");
    return h;
  }
  uv_timer_start(&h->timer, on_timeout, (uint64_t)h->timeout_seconds * 1000, 0);

  h->addr_cache = rq->addr_cache;
  struct addrinfo *known = ca_addr_list(h->host, h->port, h->addr_cache, uv_now(loop));
  if (known) {
    h->addrs = known;
    h->next_addr = known;
    h->addrs_ours = 1;
    try_connect(h); /* its failures too end through close callbacks */
    return h;
  }
  char port[8];
  snprintf(port, sizeof port, "%u", (unsigned)h->port);
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  h->gai.data = h;
  int r = uv_getaddrinfo(loop, &h->gai, on_resolved, h->host, port, &hints);
  if (r != 0) {
    finish(h, CA_HTTP_FAILED, "resolve %s: %s", h->host, uv_strerror(r));
    return h;
  }
  h->gai_pending = 1;
  return h;
}

/* ---- URL -------------------------------------------------------------------- */

int ca_url_parse(const char *url, ca_url_t *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  static const char scheme[] = "https://";
  if (strncasecmp(url, scheme, sizeof scheme - 1) != 0) {
    snprintf(err, errlen, "the CA URL must start with https://");
    return CAPSTAN_EINVAL;
  }
  const char *p = url + sizeof scheme - 1;
  const char *host_start, *host_end;
  if (*p == '[') {
    host_start = p + 1;
    host_end = strchr(host_start, ']');
    if (!host_end) {
      snprintf(err, errlen, "the CA URL has an unterminated [IPv6 address]");
      return CAPSTAN_EINVAL;
    }
    p = host_end + 1;
  } else {
    host_start = p;
    while (*p && *p != ':' && *p != '/' && *p != '?' && *p != '#') p++;
    host_end = p;
  }
  size_t hl = (size_t)(host_end - host_start);
  if (hl == 0 || hl > CAPSTAN_CA_HOST_MAX) {
    snprintf(err, errlen, "the CA URL has no host name");
    return CAPSTAN_EINVAL;
  }
  for (const char *c = host_start; c < host_end; c++) {
    if (*c <= ' ' || *c == '@' || *c == '%' || (unsigned char)*c >= 0x7f) {
      snprintf(err, errlen, "the CA URL's host name holds an invalid character");
      return CAPSTAN_EINVAL;
    }
  }
  memcpy(out->host, host_start, hl);
  out->port = 443;
  if (*p == ':') {
    p++;
    unsigned long port = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9' && digits < 6)
      port = port * 10 + (unsigned long)(*p++ - '0'), digits++;
    if (!digits || port == 0 || port > 65535) {
      snprintf(err, errlen, "the CA URL's port is not a number from 1 to 65535");
      return CAPSTAN_EINVAL;
    }
    out->port = (uint16_t)port;
  }
  if (*p && *p != '/') {
    snprintf(err, errlen, "the CA URL must be https://host[:port][/path]");
    return CAPSTAN_EINVAL;
  }
  size_t pl = strlen(p);
  while (pl > 0 && p[pl - 1] == '/') pl--;
  for (size_t i = 0; i < pl; i++) {
    if (p[i] <= ' ' || p[i] == '?' || p[i] == '#' || (unsigned char)p[i] >= 0x7f) {
      snprintf(err, errlen, "the CA URL's path holds an invalid character (no query or fragment)");
      return CAPSTAN_EINVAL;
    }
  }
  memcpy(out->path, p, pl);
  return 0;
}
