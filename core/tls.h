/* TLS over a libuv TCP stream, for both roles (the CAPF server and the
 * simulated phone), with BoringSSL.
 *
 * Bytes never sit in per-connection BIO buffers: a custom BIO reads from the
 * chunk that libuv just delivered (the loop-wide read buffer) and collects
 * what BoringSSL writes into one output buffer that is handed to uv_write at
 * once. With BoringSSL releasing its own record buffers when empty, an idle
 * connection holds only the SSL object and its handles.
 *
 * Server-side private-key operations can run on worker threads: configure the
 * context with capstan_tls_ctx_set_async_key, and a handshake pauses while a
 * worker signs (or decrypts, for legacy RSA key exchange), then resumes.
 *
 * Everything here runs on the loop thread except the key operation itself. */
#ifndef CAPSTAN_CORE_TLS_H
#define CAPSTAN_CORE_TLS_H

#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct capstan_tls_conn capstan_tls_conn_t;

/* Why a connection closed; passed to on_close. X-macro for names. */
#define CAPSTAN_TLS_CLOSE_REASONS(X)      \
  X(LOCAL, "local")                       \
  X(PEER_EOF, "peer_closed")              \
  X(READ_ERROR, "read_error")             \
  X(WRITE_ERROR, "write_error")           \
  X(HANDSHAKE_FAILED, "handshake_failed") \
  X(TLS_ERROR, "tls_error")               \
  X(NO_MEMORY, "no_memory")

typedef enum {
#define X(id, name) CAPSTAN_TLS_CLOSE_##id,
  CAPSTAN_TLS_CLOSE_REASONS(X)
#undef X
} capstan_tls_close_reason_t;

const char *capstan_tls_close_reason_name(capstan_tls_close_reason_t reason);

typedef struct capstan_tls_callbacks {
  /* The handshake finished. The server speaks first in CAPF. */
  void (*on_handshake)(capstan_tls_conn_t *conn, void *arg);
  /* Decrypted application bytes; valid only during the call. */
  void (*on_data)(capstan_tls_conn_t *conn, void *arg, const uint8_t *data, size_t len);
  /* The connection is closed and all its handles released; the owner frees
   * its own state here. Called exactly once, after capstan_tls_conn_close or
   * after an error. */
  void (*on_close)(capstan_tls_conn_t *conn, void *arg, capstan_tls_close_reason_t reason);
} capstan_tls_callbacks_t;

/* Creates a connection in the zero state with its TCP handle initialised on
 * |loop|. |ctx| is referenced. The caller then either uv_accept()s into
 * capstan_tls_conn_tcp(conn) and calls capstan_tls_conn_start, or connects
 * with capstan_tls_conn_connect. Returns NULL on allocation failure. */
capstan_tls_conn_t *capstan_tls_conn_new(uv_loop_t *loop, SSL_CTX *ctx, int is_server,
                                         const capstan_tls_callbacks_t *cbs, void *arg);

uv_tcp_t *capstan_tls_conn_tcp(capstan_tls_conn_t *conn);
SSL *capstan_tls_conn_ssl(capstan_tls_conn_t *conn);

/* Starts reading (and, for a client, sends the ClientHello). Returns 0 or a
 * negative error; on error the caller must still capstan_tls_conn_close. */
int capstan_tls_conn_start(capstan_tls_conn_t *conn);

/* Client role: connects to |addr|, then starts. Errors arrive via on_close
 * with CAPSTAN_TLS_CLOSE_READ_ERROR. */
int capstan_tls_conn_connect(capstan_tls_conn_t *conn, const struct sockaddr *addr);

/* Encrypts |len| bytes as ONE TLS record (len must be at most 16384) and
 * queues it on the socket. Returns 0 or a negative error (the connection is
 * then closing). */
int capstan_tls_conn_write(capstan_tls_conn_t *conn, const uint8_t *data, size_t len);

/* Keeps what is written from now on until capstan_tls_conn_close, which
 * must follow in the same callback: a last message and close_notify then
 * leave in one write. */
void capstan_tls_conn_hold_output(capstan_tls_conn_t *conn);

/* Closes the connection: sends close_notify when the handshake finished,
 * lets queued writes drain, then closes the socket; on_close follows. Safe
 * to call more than once and from within callbacks. */
void capstan_tls_conn_close(capstan_tls_conn_t *conn, capstan_tls_close_reason_t reason);

/* Pauses / resumes reading from the socket (back-pressure). */
void capstan_tls_conn_pause_reading(capstan_tls_conn_t *conn);
void capstan_tls_conn_resume_reading(capstan_tls_conn_t *conn);

int capstan_tls_conn_handshake_done(const capstan_tls_conn_t *conn);
/* Bytes queued for the socket and not yet written. */
size_t capstan_tls_conn_write_queue_size(const capstan_tls_conn_t *conn);

/* Server contexts: configures |ctx| to run private-key operations for |key|
 * (the certificate's key) on the libuv thread pool of |loop|. The context
 * takes its own reference to |key|. Returns 0 or a negative error. */
int capstan_tls_ctx_set_async_key(SSL_CTX *ctx, EVP_PKEY *key, uv_loop_t *loop);

/* Counts of async key operations, for tests and metrics. */
uint64_t capstan_tls_async_key_ops(void);

#endif
