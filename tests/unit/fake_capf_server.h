/* A scripted fake CAPF server for the phone simulator's unit tests
 * (test_phone.c, test_phone_csr.c): one TLS connection on a loopback port,
 * served on a thread by the test's script, which reads and writes CAPF
 * messages with the helpers below and keeps the first failure it meets.
 * Header-only (static functions): each test program includes it once. */
#ifndef CAPSTAN_TESTS_UNIT_FAKE_CAPF_SERVER_H
#define CAPSTAN_TESTS_UNIT_FAKE_CAPF_SERVER_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/mem.h>
#include <openssl/ssl.h>

#include "bench/phone/phone.h"
#include "core/pki/pki.h"
#include "handlers/capf/wire.h"

/* Every wait of the fake server and of the phone under test. */
#define FAKE_IO_TIMEOUT_S 20

typedef struct fake_server {
  int listen_fd;
  uint16_t port;
  SSL_CTX *ctx;
  uint32_t session_id;
  /* The test's script, run once the handshake is done. */
  int (*script)(struct fake_server *fs, SSL *ssl);
  /* The handshake is expected to fail: then the script never runs. */
  int expect_handshake_failure;
  char failure[256]; /* the first thing that went wrong, "" if none */
  int finished;      /* the script ran to its end */
} fake_server_t;

static void fake_fail(fake_server_t *fs, const char *fmt, ...) {
  if (fs->failure[0] != '\0') return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(fs->failure, sizeof(fs->failure), fmt, ap);
  va_end(ap);
}

/* In a script step: on a failed |cond| note the failure and return -1. */
#define FAKE_CHECK(fs, cond, ...)   \
  do {                              \
    if (!(cond)) {                  \
      fake_fail((fs), __VA_ARGS__); \
      return -1;                    \
    }                               \
  } while (0)

static int fake_send(fake_server_t *fs, SSL *ssl, capstan_capf_builder_t *b) {
  uint8_t *msg = NULL;
  size_t len = 0;
  FAKE_CHECK(fs, capstan_capf_builder_finish(b, &msg, &len) == 0, "server: cannot build");
  int n = SSL_write(ssl, msg, (int)len);
  OPENSSL_free(msg);
  FAKE_CHECK(fs, n == (int)len, "server: SSL_write failed");
  return 0;
}

/* Reads one phone message, which must arrive alone in one TLS record and
 * carry the session's id; |len| (may be NULL) gets its length, |waiting_for|
 * (may be NULL) names what was expected in a failure. */
static int fake_read_msg(fake_server_t *fs, SSL *ssl, uint8_t *buf, size_t cap,
                         capstan_capf_msg_t *m, size_t *len, const char *waiting_for) {
  int n = SSL_read(ssl, buf, (int)cap);
  FAKE_CHECK(fs, n > 0, "server: read failed or peer closed (%d)%s%s", SSL_get_error(ssl, n),
             waiting_for ? " waiting for " : "", waiting_for ? waiting_for : "");
  size_t ml = 0;
  FAKE_CHECK(fs, capstan_capf_frame(buf, (size_t)n, &ml) == 0 && ml == (size_t)n,
             "server: a record that is not exactly one message (%d bytes)", n);
  FAKE_CHECK(fs, capstan_capf_parse(buf, ml, m) == 0, "server: malformed phone message");
  FAKE_CHECK(fs, m->session_id == fs->session_id, "server: phone used session id 0x%08x",
             (unsigned)m->session_id);
  if (len != NULL) *len = ml;
  return 0;
}

/* Listens on a free loopback port with |id| as the server's certificate. */
static void fake_server_listen(fake_server_t *fs, const capstan_identity_t *id) {
  fs->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fs->listen_fd >= 0);
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(fs->listen_fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
  assert_int_equal(listen(fs->listen_fd, 4), 0);
  socklen_t sl = sizeof(sin);
  assert_int_equal(getsockname(fs->listen_fd, (struct sockaddr *)&sin, &sl), 0);
  fs->port = ntohs(sin.sin_port);
  fs->ctx = SSL_CTX_new(TLS_method());
  assert_non_null(fs->ctx);
  assert_true(SSL_CTX_set_min_proto_version(fs->ctx, TLS1_2_VERSION));
  assert_true(SSL_CTX_use_certificate(fs->ctx, id->cert));
  assert_true(SSL_CTX_use_PrivateKey(fs->ctx, id->key));
}

static void fake_server_cleanup(fake_server_t *fs) {
  close(fs->listen_fd);
  SSL_CTX_free(fs->ctx);
}

/* The server's thread: one connection, the handshake, the script. */
static void *fake_server_main(void *arg) {
  fake_server_t *fs = arg;
  struct pollfd pfd = {.fd = fs->listen_fd, .events = POLLIN};
  if (poll(&pfd, 1, FAKE_IO_TIMEOUT_S * 1000) != 1) {
    fake_fail(fs, "server: no connection");
    return NULL;
  }
  int fd = accept(fs->listen_fd, NULL, NULL);
  if (fd < 0) {
    fake_fail(fs, "server: accept failed");
    return NULL;
  }
  struct timeval tv = {.tv_sec = FAKE_IO_TIMEOUT_S, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  SSL *ssl = SSL_new(fs->ctx);
  if (ssl == NULL || !SSL_set_fd(ssl, fd)) {
    fake_fail(fs, "server: SSL_new");
  } else if (SSL_accept(ssl) != 1) {
    if (fs->expect_handshake_failure) {
      fs->finished = 1;
    } else {
      fake_fail(fs, "server: handshake failed");
    }
  } else if (fs->expect_handshake_failure) {
    fake_fail(fs, "server: the handshake should have failed");
  } else {
    fs->script(fs, ssl);
    SSL_shutdown(ssl);
  }
  SSL_free(ssl);
  close(fd);
  ERR_clear_error();
  return NULL;
}

/* Runs the fake server on a thread and one phone (|cfg|) on this one; the
 * test fails with the server's failure, if any. */
static void fake_server_run_pair(fake_server_t *fs, const capstan_phone_config_t *cfg,
                                 capstan_phone_result_t *res) {
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, fake_server_main, fs), 0);
  int rc = capstan_phone_run_one(cfg, res);
  pthread_join(th, NULL);
  assert_int_equal(rc, 0);
  if (fs->failure[0] != '\0') fail_msg("%s", fs->failure);
}

#endif
