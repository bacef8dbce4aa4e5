#include "core/tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/names.h"
#include "core/memory_shortage.h"

/* Largest private-key result: RSA-4096 signature or decryption. */
#define KEY_OP_MAX_OUT 1024
/* A TLS record carries at most this much plaintext. */
#define TLS_MAX_PLAINTEXT 16384

typedef struct key_job {
  uv_work_t req;
  capstan_tls_conn_t *conn;
  EVP_PKEY *key;
  int is_decrypt;
  uint16_t sigalg;
  uint8_t *in;
  size_t in_len;
  size_t max_out;
  uint8_t out[KEY_OP_MAX_OUT];
  size_t out_len;
  int ok;
  int done;
} key_job_t;

typedef struct write_req {
  uv_write_t req;
  capstan_tls_conn_t *conn;
  size_t len;
  uint8_t data[];
} write_req_t;

struct capstan_tls_conn {
  uv_tcp_t tcp;
  uv_loop_t *loop;
  SSL *ssl;
  const capstan_tls_callbacks_t *cbs;
  void *arg;
  /* Input being fed to BoringSSL: the chunk libuv delivered, or the stash. */
  const uint8_t *in;
  size_t in_len;
  /* Input kept while a key operation pauses the handshake (rare). */
  uint8_t *stash;
  size_t stash_len;
  /* Output BoringSSL wrote during the current call, not yet on the socket. */
  uint8_t *out;
  size_t out_len, out_cap;
  size_t writes_pending;
  key_job_t *job;
  /* Things that must finish before the struct is freed: the handle's close
   * and an in-flight key job. */
  unsigned refs;
  unsigned is_server : 1;
  unsigned handshake_done : 1;
  unsigned closing : 1;
  unsigned handle_closing : 1;
  unsigned handle_closed : 1;
  unsigned reading : 1;
  unsigned user_paused : 1;
  unsigned in_drive : 1;
  unsigned hold_output : 1;
  capstan_tls_close_reason_t close_reason;
};

CAPSTAN_DEFINE_NAME_FN(, capstan_tls_close_reason_name, capstan_tls_close_reason_t,
                       CAPSTAN_TLS_CLOSE_REASONS, "?")

static _Atomic uint64_t g_async_key_ops;

uint64_t capstan_tls_async_key_ops(void) {
  return atomic_load(&g_async_key_ops);
}

/* --- The BIO that reads from the current chunk and collects output. ------- */

static BIO_METHOD *g_bio_method;
static pthread_once_t g_bio_once = PTHREAD_ONCE_INIT;

static int conn_bio_read(BIO *bio, char *buf, int len) {
  capstan_tls_conn_t *conn = BIO_get_data(bio);
  BIO_clear_retry_flags(bio);
  if (conn->in_len == 0) {
    BIO_set_retry_read(bio);
    return -1;
  }
  size_t n = (size_t)len < conn->in_len ? (size_t)len : conn->in_len;
  memcpy(buf, conn->in, n);
  conn->in += n;
  conn->in_len -= n;
  return (int)n;
}

static int conn_bio_write(BIO *bio, const char *buf, int len) {
  capstan_tls_conn_t *conn = BIO_get_data(bio);
  BIO_clear_retry_flags(bio);
  if (len <= 0) return 0;
  if (conn->out_len + (size_t)len > conn->out_cap) {
    size_t cap = conn->out_cap ? conn->out_cap : 2048;
    while (cap < conn->out_len + (size_t)len) cap *= 2;
    uint8_t *p = realloc(conn->out, cap);
    if (p == NULL) return -1;
    conn->out = p;
    conn->out_cap = cap;
  }
  memcpy(conn->out + conn->out_len, buf, (size_t)len);
  conn->out_len += (size_t)len;
  return len;
}

static long conn_bio_ctrl(BIO *bio, int cmd, long larg, void *parg) {
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int conn_bio_create(BIO *bio) {
  BIO_set_init(bio, 1);
  return 1;
}

static void make_bio_method(void) {
  g_bio_method = BIO_meth_new(BIO_TYPE_SOURCE_SINK, "capstan-uv");
  if (g_bio_method == NULL) return;
  BIO_meth_set_read(g_bio_method, conn_bio_read);
  BIO_meth_set_write(g_bio_method, conn_bio_write);
  BIO_meth_set_ctrl(g_bio_method, conn_bio_ctrl);
  BIO_meth_set_create(g_bio_method, conn_bio_create);
}

/* --- Lifetime ------------------------------------------------------------- */

static void conn_free(capstan_tls_conn_t *conn) {
  SSL_free(conn->ssl);
  free(conn->stash);
  free(conn->out);
  if (conn->job) {
    free(conn->job->in);
    free(conn->job);
  }
  free(conn);
}

static void conn_unref(capstan_tls_conn_t *conn) {
  if (--conn->refs == 0) conn_free(conn);
}

capstan_tls_conn_t *capstan_tls_conn_new(uv_loop_t *loop, SSL_CTX *ctx, int is_server,
                                         const capstan_tls_callbacks_t *cbs, void *arg) {
  pthread_once(&g_bio_once, make_bio_method);
  if (g_bio_method == NULL) return NULL;
  capstan_tls_conn_t *conn = calloc(1, sizeof(*conn));
  if (conn == NULL) return NULL;
  conn->loop = loop;
  conn->cbs = cbs;
  conn->arg = arg;
  conn->is_server = is_server ? 1 : 0;
  conn->ssl = SSL_new(ctx);
  BIO *bio = BIO_new(g_bio_method);
  if (conn->ssl == NULL || bio == NULL) {
    BIO_free(bio);
    SSL_free(conn->ssl);
    free(conn);
    ERR_clear_error();
    return NULL;
  }
  BIO_set_data(bio, conn);
  SSL_set_bio(conn->ssl, bio, bio); /* one reference for both directions */
  SSL_set_app_data(conn->ssl, conn);
  if (is_server) {
    SSL_set_accept_state(conn->ssl);
    /* Drop certificate and configuration copies once the handshake is done:
     * an idle session should hold as little as possible. */
    SSL_set_shed_handshake_config(conn->ssl, 1);
  } else {
    SSL_set_connect_state(conn->ssl);
  }
  uv_tcp_init(loop, &conn->tcp);
  conn->tcp.data = conn;
  conn->refs = 1;
  return conn;
}

uv_tcp_t *capstan_tls_conn_tcp(capstan_tls_conn_t *conn) {
  return &conn->tcp;
}
SSL *capstan_tls_conn_ssl(capstan_tls_conn_t *conn) {
  return conn->ssl;
}
int capstan_tls_conn_handshake_done(const capstan_tls_conn_t *conn) {
  return conn->handshake_done;
}
size_t capstan_tls_conn_write_queue_size(const capstan_tls_conn_t *conn) {
  return conn->writes_pending;
}

static void on_handle_closed(uv_handle_t *handle) {
  capstan_tls_conn_t *conn = handle->data;
  conn->handle_closed = 1;
  if (conn->cbs->on_close) conn->cbs->on_close(conn, conn->arg, conn->close_reason);
  conn_unref(conn);
}

static void close_handle(capstan_tls_conn_t *conn) {
  if (conn->handle_closing) return;
  conn->handle_closing = 1;
  uv_close((uv_handle_t *)&conn->tcp, on_handle_closed);
}

/* --- Output --------------------------------------------------------------- */

static void on_write_done(uv_write_t *req, int status) {
  write_req_t *wr = (write_req_t *)req;
  capstan_tls_conn_t *conn = wr->conn;
  conn->writes_pending -= wr->len;
  free(wr);
  if (status < 0 && !conn->closing) {
    LOG_DEBUG("event=tls_write_failed error=%s", uv_strerror(status));
    capstan_tls_conn_close(conn, CAPSTAN_TLS_CLOSE_WRITE_ERROR);
    return;
  }
}

/* Moves what BoringSSL wrote onto the socket as one write. The socket
 * almost always has room, so the bytes go straight to the kernel
 * (uv_try_write: no allocation, no copy, no change to the poll set); only
 * what the kernel would not take is copied into a queued uv_write. Bytes
 * already queued go first, so the order on the wire is kept. */
static int flush_output(capstan_tls_conn_t *conn) {
  if (conn->out_len == 0 || conn->handle_closing) {
    conn->out_len = 0;
    return 0;
  }
  size_t sent = 0;
  if (conn->writes_pending == 0) {
    uv_buf_t whole = uv_buf_init((char *)conn->out, (unsigned)conn->out_len);
    /* On an error the bytes are queued anyway: uv_write meets the same
     * error and reports it through on_write_done, as before. */
    int n = uv_try_write((uv_stream_t *)&conn->tcp, &whole, 1);
    if (n > 0) sent = (size_t)n;
  }
  size_t rest = conn->out_len - sent;
  write_req_t *wr = NULL;
  if (rest > 0) {
    wr = malloc(sizeof(*wr) + rest);
    if (wr == NULL) {
      /* Part may be on the wire already: drop the rest so the close that
       * follows does not send that part twice. */
      conn->out_len = 0;
      return CAPSTAN_ENOMEM;
    }
    memcpy(wr->data, conn->out + sent, rest);
    wr->len = rest;
    wr->conn = conn;
  }
  conn->out_len = 0;
  /* Handshake flights are a few KiB; do not keep that capacity around. */
  if (conn->out_cap > 4096) {
    free(conn->out);
    conn->out = NULL;
    conn->out_cap = 0;
  }
  if (wr == NULL) return 0;
  uv_buf_t buf = uv_buf_init((char *)wr->data, (unsigned)wr->len);
  int rc = uv_write(&wr->req, (uv_stream_t *)&conn->tcp, &buf, 1, on_write_done);
  if (rc < 0) {
    free(wr);
    return rc;
  }
  conn->writes_pending += wr->len;
  return 0;
}

/* --- Input and the state machine ------------------------------------------ */

static void log_tls_failure(capstan_tls_conn_t *conn, const char *what) {
  uint32_t err = ERR_peek_last_error();
  char buf[160];
  ERR_error_string_n(err, buf, sizeof(buf));
  LOG_DEBUG("event=tls_%s reason=\"%s\"", what, err ? buf : "none");
  /* The machine's fault, not the peer's: reported as a condition. */
  for (uint32_t e; (e = ERR_get_error()) != 0;) {
    if (ERR_GET_REASON(e) == ERR_R_MALLOC_FAILURE) {
      capstan_memory_shortage_note("tls");
      break;
    }
  }
  ERR_clear_error();
}

static void start_reading(capstan_tls_conn_t *conn);
static void stop_reading(capstan_tls_conn_t *conn);

/* Runs BoringSSL over whatever input is available. */
static void drive(capstan_tls_conn_t *conn) {
  if (conn->closing) {
    conn->in_len = 0;
    return;
  }
  conn->in_drive = 1;
  if (!conn->handshake_done) {
    int r = SSL_do_handshake(conn->ssl);
    if (r != 1) {
      int err = SSL_get_error(conn->ssl, r);
      if (flush_output(conn) < 0) goto fail_write;
      if (err == SSL_ERROR_WANT_READ) goto out;
      /* A worker is signing: no input is needed until it is done. Reading
       * stays on (turning it off and on costs two system calls per
       * handshake); a peer that sends anyway is handled in on_read. */
      if (err == SSL_ERROR_WANT_PRIVATE_KEY_OPERATION) goto out;
      log_tls_failure(conn, "handshake_failed");
      conn->in_drive = 0;
      capstan_tls_conn_close(conn, CAPSTAN_TLS_CLOSE_HANDSHAKE_FAILED);
      return;
    }
    conn->handshake_done = 1;
    if (flush_output(conn) < 0) goto fail_write;
    if (conn->cbs->on_handshake) conn->cbs->on_handshake(conn, conn->arg);
    if (conn->closing) goto out;
  }
  for (;;) {
    uint8_t plain[TLS_MAX_PLAINTEXT];
    int n = SSL_read(conn->ssl, plain, sizeof(plain));
    if (n > 0) {
      if (conn->cbs->on_data) conn->cbs->on_data(conn, conn->arg, plain, (size_t)n);
      if (conn->closing) break;
      continue;
    }
    int err = SSL_get_error(conn->ssl, n);
    if (err == SSL_ERROR_WANT_READ) break;
    if (flush_output(conn) < 0) goto fail_write;
    conn->in_drive = 0;
    if (err == SSL_ERROR_ZERO_RETURN) {
      capstan_tls_conn_close(conn, CAPSTAN_TLS_CLOSE_PEER_EOF);
    } else {
      log_tls_failure(conn, "read_failed");
      capstan_tls_conn_close(conn, CAPSTAN_TLS_CLOSE_TLS_ERROR);
    }
    return;
  }
  if (flush_output(conn) < 0) goto fail_write;
out:
  conn->in_drive = 0;
  return;
fail_write:
  conn->in_drive = 0;
  capstan_tls_conn_close(conn, CAPSTAN_TLS_CLOSE_NO_MEMORY);
}

/* Feeds |len| bytes, keeping what BoringSSL could not take yet. */
static void feed(capstan_tls_conn_t *conn, const uint8_t *data, size_t len) {
  if (conn->stash_len > 0 && len > 0) {
    uint8_t *p = realloc(conn->stash, conn->stash_len + len);
    if (p == NULL) {
      capstan_tls_conn_close(conn, CAPSTAN_TLS_CLOSE_NO_MEMORY);
      return;
    }
    memcpy(p + conn->stash_len, data, len);
    conn->stash = p;
    conn->stash_len += len;
  }
  if (conn->stash_len > 0) {
    data = conn->stash;
    len = conn->stash_len;
  }
  conn->in = data;
  conn->in_len = len;
  drive(conn);
  size_t left = conn->in_len;
  const uint8_t *rest = conn->in;
  conn->in = NULL;
  conn->in_len = 0;
  if (conn->closing) left = 0;
  if (data == conn->stash) {
    if (left == 0) {
      free(conn->stash);
      conn->stash = NULL;
      conn->stash_len = 0;
    } else {
      memmove(conn->stash, rest, left);
      conn->stash_len = left;
    }
  } else if (left > 0) {
    conn->stash = malloc(left);
    if (conn->stash == NULL) {
      capstan_tls_conn_close(conn, CAPSTAN_TLS_CLOSE_NO_MEMORY);
      return;
    }
    memcpy(conn->stash, rest, left);
    conn->stash_len = left;
  }
}

/* One loop-wide read buffer: reads are consumed at once, so idle connections
 * hold none. */
static uint8_t g_read_buf[65536];

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  buf->base = (char *)g_read_buf;
  buf->len = sizeof(g_read_buf);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  capstan_tls_conn_t *conn = stream->data;
  if (nread == 0) return;
  if (nread < 0) {
    capstan_tls_conn_close(
        conn, nread == UV_EOF ? CAPSTAN_TLS_CLOSE_PEER_EOF : CAPSTAN_TLS_CLOSE_READ_ERROR);
    return;
  }
  feed(conn, (const uint8_t *)buf->base, (size_t)nread);
  /* Input that arrived during a key operation waits in the stash; stop
   * reading until the operation is done so the stash stays one read. */
  if (conn->job != NULL && conn->stash_len > 0 && !conn->closing) stop_reading(conn);
}

static void start_reading(capstan_tls_conn_t *conn) {
  if (conn->reading || conn->closing || conn->user_paused || conn->job) return;
  if (uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read) == 0) conn->reading = 1;
}

static void stop_reading(capstan_tls_conn_t *conn) {
  if (!conn->reading) return;
  uv_read_stop((uv_stream_t *)&conn->tcp);
  conn->reading = 0;
}

void capstan_tls_conn_pause_reading(capstan_tls_conn_t *conn) {
  conn->user_paused = 1;
  stop_reading(conn);
}

void capstan_tls_conn_resume_reading(capstan_tls_conn_t *conn) {
  conn->user_paused = 0;
  start_reading(conn);
}

int capstan_tls_conn_start(capstan_tls_conn_t *conn) {
  conn->tcp.data = conn;
  start_reading(conn);
  if (!conn->reading) return CAPSTAN_EIO;
  if (!conn->is_server) drive(conn); /* sends the ClientHello */
  return 0;
}

static void on_connected(uv_connect_t *req, int status) {
  capstan_tls_conn_t *conn = req->data;
  free(req);
  if (conn->closing) return;
  if (status < 0) {
    LOG_DEBUG("event=tls_connect_failed error=%s", uv_strerror(status));
    capstan_tls_conn_close(conn, CAPSTAN_TLS_CLOSE_READ_ERROR);
    return;
  }
  if (capstan_tls_conn_start(conn) < 0) capstan_tls_conn_close(conn, CAPSTAN_TLS_CLOSE_READ_ERROR);
}

int capstan_tls_conn_connect(capstan_tls_conn_t *conn, const struct sockaddr *addr) {
  uv_connect_t *req = malloc(sizeof(*req));
  if (req == NULL) return CAPSTAN_ENOMEM;
  req->data = conn;
  int rc = uv_tcp_connect(req, &conn->tcp, addr, on_connected);
  if (rc < 0) free(req);
  return rc;
}

int capstan_tls_conn_write(capstan_tls_conn_t *conn, const uint8_t *data, size_t len) {
  if (conn->closing || !conn->handshake_done) return CAPSTAN_EIO;
  if (len == 0 || len > TLS_MAX_PLAINTEXT) return CAPSTAN_EINVAL;
  int n = SSL_write(conn->ssl, data, (int)len);
  if (n != (int)len) {
    log_tls_failure(conn, "write_failed");
    capstan_tls_conn_close(conn, CAPSTAN_TLS_CLOSE_TLS_ERROR);
    return CAPSTAN_EIO;
  }
  if (!conn->in_drive && !conn->hold_output && flush_output(conn) < 0) {
    capstan_tls_conn_close(conn, CAPSTAN_TLS_CLOSE_NO_MEMORY);
    return CAPSTAN_ENOMEM;
  }
  return 0;
}

void capstan_tls_conn_hold_output(capstan_tls_conn_t *conn) {
  conn->hold_output = 1;
}

void capstan_tls_conn_close(capstan_tls_conn_t *conn, capstan_tls_close_reason_t reason) {
  if (conn->closing) return;
  conn->closing = 1;
  conn->close_reason = reason;
  stop_reading(conn);
  if (conn->handshake_done && reason == CAPSTAN_TLS_CLOSE_LOCAL) {
    SSL_shutdown(conn->ssl); /* queues close_notify */
    ERR_clear_error();
  }
  if (flush_output(conn) < 0) conn->out_len = 0;
  /* libuv writes at once when it can, so what was written is in the kernel
   * and leaves even after the close. Bytes libuv still holds belong to a
   * peer that stopped reading: waiting for them would let it hold the
   * connection open, so they are dropped. */
  close_handle(conn);
}

/* --- Asynchronous private key --------------------------------------------- */

typedef struct async_key_config {
  EVP_PKEY *key;
  uv_loop_t *loop;
} async_key_config_t;

static int g_ctx_ex_index = -1;
static pthread_once_t g_ex_once = PTHREAD_ONCE_INIT;

static void free_key_config(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int index, long argl,
                            void *argp) {
  async_key_config_t *cfg = ptr;
  if (cfg != NULL) EVP_PKEY_free(cfg->key);
  free(cfg);
}

static void make_ex_index(void) {
  g_ctx_ex_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, free_key_config);
}

static void key_job_work(uv_work_t *req) {
  key_job_t *job = req->data;
  if (job->is_decrypt) {
    RSA *rsa = EVP_PKEY_get0_RSA(job->key);
    job->ok = rsa != NULL && RSA_decrypt(rsa, &job->out_len, job->out, job->max_out, job->in,
                                         job->in_len, RSA_NO_PADDING);
  } else {
    EVP_MD_CTX ctx;
    EVP_MD_CTX_init(&ctx);
    EVP_PKEY_CTX *pctx = NULL;
    const EVP_MD *md = SSL_get_signature_algorithm_digest(job->sigalg);
    size_t len = job->max_out;
    job->ok = md != NULL && EVP_DigestSignInit(&ctx, &pctx, md, NULL, job->key) &&
              (!SSL_is_signature_algorithm_rsa_pss(job->sigalg) ||
               (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) &&
                EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, -1))) &&
              EVP_DigestSign(&ctx, job->out, &len, job->in, job->in_len);
    job->out_len = len;
    EVP_MD_CTX_cleanup(&ctx);
  }
  if (!job->ok) ERR_clear_error();
  atomic_fetch_add(&g_async_key_ops, 1);
}

static void key_job_done(uv_work_t *req, int status) {
  key_job_t *job = req->data;
  capstan_tls_conn_t *conn = job->conn;
  job->done = 1;
  if (status < 0) job->ok = 0;
  if (conn->handle_closing) {
    /* The connection went away while the worker ran. */
    conn_unref(conn);
    return;
  }
  conn->refs--;
  /* Resume the handshake: BoringSSL calls complete() from here. */
  feed(conn, NULL, 0);
  start_reading(conn);
}

static enum ssl_private_key_result_t start_key_job(SSL *ssl, int is_decrypt, uint16_t sigalg,
                                                   const uint8_t *in, size_t in_len,
                                                   size_t max_out) {
  capstan_tls_conn_t *conn = SSL_get_app_data(ssl);
  async_key_config_t *cfg = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), g_ctx_ex_index);
  if (cfg == NULL || conn == NULL || conn->job != NULL) return ssl_private_key_failure;
  key_job_t *job = calloc(1, sizeof(*job));
  if (job == NULL) return ssl_private_key_failure;
  job->in = malloc(in_len ? in_len : 1);
  if (job->in == NULL) {
    free(job);
    return ssl_private_key_failure;
  }
  memcpy(job->in, in, in_len);
  job->in_len = in_len;
  job->max_out = max_out < KEY_OP_MAX_OUT ? max_out : KEY_OP_MAX_OUT;
  job->key = cfg->key;
  job->is_decrypt = is_decrypt;
  job->sigalg = sigalg;
  job->conn = conn;
  job->req.data = job;
  if (uv_queue_work(conn->loop, &job->req, key_job_work, key_job_done) < 0) {
    free(job->in);
    free(job);
    return ssl_private_key_failure;
  }
  conn->job = job;
  conn->refs++;
  return ssl_private_key_retry;
}

static enum ssl_private_key_result_t key_sign(SSL *ssl, uint8_t *out, size_t *out_len,
                                              size_t max_out, uint16_t sigalg, const uint8_t *in,
                                              size_t in_len) {
  return start_key_job(ssl, 0, sigalg, in, in_len, max_out);
}

static enum ssl_private_key_result_t key_decrypt(SSL *ssl, uint8_t *out, size_t *out_len,
                                                 size_t max_out, const uint8_t *in, size_t in_len) {
  return start_key_job(ssl, 1, 0, in, in_len, max_out);
}

static enum ssl_private_key_result_t key_complete(SSL *ssl, uint8_t *out, size_t *out_len,
                                                  size_t max_out) {
  capstan_tls_conn_t *conn = SSL_get_app_data(ssl);
  key_job_t *job = conn ? conn->job : NULL;
  if (job == NULL) return ssl_private_key_failure;
  if (!job->done) return ssl_private_key_retry;
  enum ssl_private_key_result_t result = ssl_private_key_failure;
  if (job->ok && job->out_len <= max_out) {
    memcpy(out, job->out, job->out_len);
    *out_len = job->out_len;
    result = ssl_private_key_success;
  }
  conn->job = NULL;
  free(job->in);
  free(job);
  return result;
}

static const SSL_PRIVATE_KEY_METHOD kAsyncKeyMethod = {
    .sign = key_sign,
    .decrypt = key_decrypt,
    .complete = key_complete,
};

int capstan_tls_ctx_set_async_key(SSL_CTX *ctx, EVP_PKEY *key, uv_loop_t *loop) {
  pthread_once(&g_ex_once, make_ex_index);
  if (g_ctx_ex_index < 0) return CAPSTAN_ENOMEM;
  async_key_config_t *cfg = calloc(1, sizeof(*cfg));
  if (cfg == NULL) return CAPSTAN_ENOMEM;
  /* The context holds its own reference: connections keep the context (and
   * a worker may still be signing) after the identity that configured it is
   * freed, for example on a reload. */
  EVP_PKEY_up_ref(key);
  cfg->key = key;
  cfg->loop = loop;
  if (!SSL_CTX_set_ex_data(ctx, g_ctx_ex_index, cfg)) {
    EVP_PKEY_free(key);
    free(cfg);
    return CAPSTAN_ENOMEM;
  }
  SSL_CTX_set_private_key_method(ctx, &kAsyncKeyMethod);
  return 0;
}
