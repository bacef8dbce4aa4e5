/* core/tls.c: a real handshake over 127.0.0.1 between a server connection
 * with an asynchronous private key and a client connection, both on one
 * loop, then one message each way. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <stdint.h>

#include <cmocka.h>

#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <string.h>
#include <uv.h>

#include "bench/phone/phone_pki.h"
#include "core/pki/pki.h"
#include "core/tls.h"

#define TEST_TIMEOUT_MS 20000

typedef struct test_ctx {
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_timer_t watchdog;
  SSL_CTX *server_ctx, *client_ctx;
  capstan_tls_conn_t *server, *client;
  int server_closed, client_closed;
  int client_got_hello, server_got_reply;
  int timed_out;
} test_ctx_t;

static void close_all(test_ctx_t *t) {
  if (t->server && !t->server_closed) capstan_tls_conn_close(t->server, CAPSTAN_TLS_CLOSE_LOCAL);
  if (t->client && !t->client_closed) capstan_tls_conn_close(t->client, CAPSTAN_TLS_CLOSE_LOCAL);
  if (!uv_is_closing((uv_handle_t *)&t->listener)) uv_close((uv_handle_t *)&t->listener, NULL);
  if (!uv_is_closing((uv_handle_t *)&t->watchdog)) uv_close((uv_handle_t *)&t->watchdog, NULL);
}

static void server_handshake(capstan_tls_conn_t *conn, void *arg) {
  (void)arg;
  capstan_tls_conn_write(conn, (const uint8_t *)"hello", 5);
}

static void server_data(capstan_tls_conn_t *conn, void *arg, const uint8_t *data, size_t len) {
  (void)conn;
  test_ctx_t *t = arg;
  if (len == 5 && memcmp(data, "reply", 5) == 0) t->server_got_reply = 1;
  close_all(t);
}

static void server_close(capstan_tls_conn_t *conn, void *arg, capstan_tls_close_reason_t why) {
  (void)conn;
  (void)why;
  test_ctx_t *t = arg;
  t->server_closed = 1;
  close_all(t);
}

static void client_data(capstan_tls_conn_t *conn, void *arg, const uint8_t *data, size_t len) {
  test_ctx_t *t = arg;
  if (len == 5 && memcmp(data, "hello", 5) == 0) t->client_got_hello = 1;
  capstan_tls_conn_write(conn, (const uint8_t *)"reply", 5);
}

static void client_close(capstan_tls_conn_t *conn, void *arg, capstan_tls_close_reason_t why) {
  (void)conn;
  (void)why;
  test_ctx_t *t = arg;
  t->client_closed = 1;
  close_all(t);
}

static const capstan_tls_callbacks_t kServerCbs = {
    .on_handshake = server_handshake, .on_data = server_data, .on_close = server_close};
static const capstan_tls_callbacks_t kClientCbs = {.on_data = client_data,
                                                   .on_close = client_close};

static void on_connection(uv_stream_t *listener, int status) {
  test_ctx_t *t = listener->data;
  assert_int_equal(status, 0);
  t->server = capstan_tls_conn_new(&t->loop, t->server_ctx, 1, &kServerCbs, t);
  assert_non_null(t->server);
  assert_int_equal(uv_accept(listener, (uv_stream_t *)capstan_tls_conn_tcp(t->server)), 0);
  assert_int_equal(capstan_tls_conn_start(t->server), 0);
}

static void on_watchdog(uv_timer_t *timer) {
  test_ctx_t *t = timer->data;
  t->timed_out = 1;
  close_all(t);
}

/* The server context must keep the key usable for as long as it lives,
 * even after the caller dropped its own reference: live connections hold
 * the context after the identity that configured it is gone (reload). */
/* Listens on 127.0.0.1, port 0, with |data| on the handle, and starts a
 * watchdog; |bound| gets the address to connect to. */
static void listen_loopback(uv_loop_t *loop, uv_tcp_t *listener, uv_timer_t *watchdog, void *data,
                            uv_connection_cb on_conn, uv_timer_cb on_timeout,
                            struct sockaddr_storage *bound) {
  struct sockaddr_in addr;
  assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &addr), 0);
  assert_int_equal(uv_tcp_init(loop, listener), 0);
  listener->data = data;
  assert_int_equal(uv_tcp_bind(listener, (const struct sockaddr *)&addr, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)listener, 4, on_conn), 0);
  int len = sizeof(*bound);
  assert_int_equal(uv_tcp_getsockname(listener, (struct sockaddr *)bound, &len), 0);
  uv_timer_init(loop, watchdog);
  watchdog->data = data;
  uv_timer_start(watchdog, on_timeout, TEST_TIMEOUT_MS, 0);
}

static void test_async_key_outlives_caller_reference(void **state) {
  (void)state;
  test_ctx_t t;
  memset(&t, 0, sizeof(t));
  assert_int_equal(uv_loop_init(&t.loop), 0);

  capstan_identity_t id = {0};
  assert_int_equal(capstan_phone_create_test_ca("tls test server", &id), 0);
  t.server_ctx = SSL_CTX_new(TLS_method());
  assert_non_null(t.server_ctx);
  assert_true(SSL_CTX_use_certificate(t.server_ctx, id.cert));
  assert_int_equal(capstan_tls_ctx_set_async_key(t.server_ctx, id.key, &t.loop), 0);
  /* The identity goes away (as a reloaded CAPF snapshot does). */
  capstan_identity_cleanup(&id);

  t.client_ctx = SSL_CTX_new(TLS_method());
  assert_non_null(t.client_ctx);

  uint64_t ops_before = capstan_tls_async_key_ops();
  struct sockaddr_storage bound;
  listen_loopback(&t.loop, &t.listener, &t.watchdog, &t, on_connection, on_watchdog, &bound);

  t.client = capstan_tls_conn_new(&t.loop, t.client_ctx, 0, &kClientCbs, &t);
  assert_non_null(t.client);
  assert_int_equal(capstan_tls_conn_connect(t.client, (const struct sockaddr *)&bound), 0);

  uv_run(&t.loop, UV_RUN_DEFAULT);
  assert_false(t.timed_out);
  assert_true(t.client_got_hello);
  assert_true(t.server_got_reply);
  assert_true(capstan_tls_async_key_ops() > ops_before);

  assert_int_equal(uv_loop_close(&t.loop), 0);
  SSL_CTX_free(t.server_ctx);
  SSL_CTX_free(t.client_ctx);
}

/* --- A peer that sends while the server's key operation runs ------------- */

typedef struct junk_ctx {
  uv_loop_t loop;
  uv_tcp_t listener, raw;
  uv_connect_t connect;
  uv_write_t write;
  uv_timer_t watchdog;
  SSL_CTX *server_ctx;
  capstan_tls_conn_t *server;
  uint8_t *payload;
  size_t payload_len;
  int server_closed, raw_eof, timed_out;
  capstan_tls_close_reason_t why;
} junk_ctx_t;

static void junk_server_close(capstan_tls_conn_t *conn, void *arg, capstan_tls_close_reason_t why) {
  (void)conn;
  junk_ctx_t *t = arg;
  t->server_closed = 1;
  t->why = why;
  if (!uv_is_closing((uv_handle_t *)&t->listener)) uv_close((uv_handle_t *)&t->listener, NULL);
}

static const capstan_tls_callbacks_t kJunkServerCbs = {.on_close = junk_server_close};

static void junk_on_connection(uv_stream_t *listener, int status) {
  junk_ctx_t *t = listener->data;
  assert_int_equal(status, 0);
  t->server = capstan_tls_conn_new(&t->loop, t->server_ctx, 1, &kJunkServerCbs, t);
  assert_non_null(t->server);
  assert_int_equal(uv_accept(listener, (uv_stream_t *)capstan_tls_conn_tcp(t->server)), 0);
  assert_int_equal(capstan_tls_conn_start(t->server), 0);
}

static void junk_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  static char b[65536];
  (void)suggested;
  *buf = uv_buf_init(b, sizeof(b));
}

static void junk_raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  junk_ctx_t *t = s->data;
  if (n >= 0) return;
  t->raw_eof = 1;
  uv_close((uv_handle_t *)&t->raw, NULL);
  if (!uv_is_closing((uv_handle_t *)&t->watchdog)) uv_close((uv_handle_t *)&t->watchdog, NULL);
}

static void junk_written(uv_write_t *req, int status) {
  (void)req;
  (void)status;
}

static void junk_connected(uv_connect_t *req, int status) {
  junk_ctx_t *t = req->data;
  assert_int_equal(status, 0);
  uv_buf_t b = uv_buf_init((char *)t->payload, (unsigned)t->payload_len);
  assert_int_equal(uv_write(&t->write, (uv_stream_t *)&t->raw, &b, 1, junk_written), 0);
  assert_int_equal(uv_read_start((uv_stream_t *)&t->raw, junk_alloc, junk_raw_read), 0);
}

static void junk_watchdog(uv_timer_t *timer) {
  junk_ctx_t *t = timer->data;
  t->timed_out = 1;
  if (t->server && !t->server_closed) capstan_tls_conn_close(t->server, CAPSTAN_TLS_CLOSE_LOCAL);
  if (!uv_is_closing((uv_handle_t *)&t->raw)) uv_close((uv_handle_t *)&t->raw, NULL);
  if (!uv_is_closing((uv_handle_t *)&t->listener)) uv_close((uv_handle_t *)&t->listener, NULL);
  uv_close((uv_handle_t *)timer, NULL);
}

/* A real ClientHello followed at once by 256 KiB of junk: the junk lands
 * while a worker signs for the handshake. The server holds at most one read
 * of it, finishes the key operation, then ends the connection as a failed
 * handshake; nothing leaks (the sanitizer build runs this too). */
static void test_input_during_key_operation(void **state) {
  (void)state;
  junk_ctx_t t;
  memset(&t, 0, sizeof(t));
  assert_int_equal(uv_loop_init(&t.loop), 0);
  capstan_identity_t id = {0};
  assert_int_equal(capstan_phone_create_test_ca("tls junk server", &id), 0);
  t.server_ctx = SSL_CTX_new(TLS_method());
  assert_true(SSL_CTX_use_certificate(t.server_ctx, id.cert));
  assert_int_equal(capstan_tls_ctx_set_async_key(t.server_ctx, id.key, &t.loop), 0);
  capstan_identity_cleanup(&id);

  /* The ClientHello, from a client SSL writing into memory. */
  SSL_CTX *client_ctx = SSL_CTX_new(TLS_method());
  SSL *client = SSL_new(client_ctx);
  BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
  SSL_set_bio(client, rbio, wbio);
  SSL_set_connect_state(client);
  assert_int_equal(SSL_do_handshake(client), -1);
  const uint8_t *hello;
  size_t hello_len;
  assert_true(BIO_mem_contents(wbio, &hello, &hello_len));
  assert_true(hello_len > 0);
  t.payload_len = hello_len + 256 * 1024;
  t.payload = malloc(t.payload_len);
  assert_non_null(t.payload);
  memcpy(t.payload, hello, hello_len);
  memset(t.payload + hello_len, 0x17, t.payload_len - hello_len);
  SSL_free(client);
  SSL_CTX_free(client_ctx);

  uint64_t ops_before = capstan_tls_async_key_ops();
  struct sockaddr_storage bound;
  listen_loopback(&t.loop, &t.listener, &t.watchdog, &t, junk_on_connection, junk_watchdog, &bound);
  uv_tcp_init(&t.loop, &t.raw);
  t.raw.data = &t;
  t.connect.data = &t;
  assert_int_equal(
      uv_tcp_connect(&t.connect, &t.raw, (const struct sockaddr *)&bound, junk_connected), 0);

  uv_run(&t.loop, UV_RUN_DEFAULT);
  assert_false(t.timed_out);
  assert_true(t.server_closed);
  assert_true(t.raw_eof);
  assert_int_equal(t.why, CAPSTAN_TLS_CLOSE_HANDSHAKE_FAILED);
  /* The junk arrived while the key operation ran, which still completed. */
  assert_true(capstan_tls_async_key_ops() > ops_before);
  assert_int_equal(uv_loop_close(&t.loop), 0);
  SSL_CTX_free(t.server_ctx);
  free(t.payload);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_async_key_outlives_caller_reference),
      cmocka_unit_test(test_input_during_key_operation),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
