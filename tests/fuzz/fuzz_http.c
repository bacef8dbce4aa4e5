/* Fuzz target for the HTTP server: each input is sent as the byte stream of
 * one TCP connection (then half-closed) to a real server on a loopback
 * socket, so the whole path runs: framing, http_parser, header checks, URL
 * decoding, pipelining, the file route, error responses, closing.
 * The server runs on a loop in this thread; a watchdog timer keeps each
 * loop turn short, and every input must end with the connection closed. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "core/base/error.h"
#include "core/files/source.h"
#include "core/base/log.h"
#include "handlers/http/files.h"
#include "handlers/http/server.h"

#define MAX_TURNS 5000 /* loop turns per input, each at most WATCHDOG_MS */
#define WATCHDOG_MS 20

static uv_loop_t g_loop;
static uv_timer_t g_watchdog;
static capstan_http_server_t *g_srv;
static capstan_filesource_t g_src;
static int g_port;
static int g_ready;
static int g_stopped;

static uint8_t g_big[300 * 1024];

static void src_open(capstan_filesource_t *src, const char *name, capstan_file_cb cb, void *ctx) {
  if (strcmp(name, "a") == 0) {
    cb(ctx, 0, capstan_blob_new((const uint8_t *)"x\n", 2), CAPSTAN_FILE_OTHER);
  } else if (strcmp(name, "big") == 0) {
    cb(ctx, 0, capstan_blob_new(g_big, sizeof(g_big)), CAPSTAN_FILE_STATIC);
  } else if (strcmp(name, "SEP001122334455.cnf.xml") == 0) {
    cb(ctx, 0, capstan_blob_new((const uint8_t *)"<device/>", 9), CAPSTAN_FILE_CNF);
  } else if (strcmp(name, "denied") == 0) {
    cb(ctx, CAPSTAN_EACCES, NULL, CAPSTAN_FILE_OTHER);
  } else if (strcmp(name, "error") == 0) {
    cb(ctx, CAPSTAN_EIO, NULL, CAPSTAN_FILE_OTHER);
  } else {
    cb(ctx, CAPSTAN_ENOENT, NULL, capstan_file_kind_of(name));
  }
}

static void on_watchdog(uv_timer_t *t) {}

static void on_stopped(void *arg) {
  g_stopped = 1;
  uv_close((uv_handle_t *)&g_watchdog, NULL);
}

/* At exit: stop the server and check that no handle is left behind. */
static void shutdown_server(void) {
  capstan_http_server_stop(g_srv, on_stopped, NULL);
  for (int i = 0; i < 1000 && uv_run(&g_loop, UV_RUN_ONCE) != 0; i++) {
  }
  if (!g_stopped || uv_loop_close(&g_loop) != 0) {
    fprintf(stderr, "fuzz_http: server did not stop cleanly\n");
    abort();
  }
}

static void init(void) {
  capstan_log_init();
  capstan_log_set_level(CAPSTAN_LOG_ERROR); /* refusals are expected here */
  for (size_t i = 0; i < sizeof(g_big); i++) g_big[i] = (uint8_t)(i * 31);
  g_src.open = src_open;
  if (uv_loop_init(&g_loop) != 0) abort();
  uv_timer_init(&g_loop, &g_watchdog);
  uv_timer_start(&g_watchdog, on_watchdog, WATCHDOG_MS, WATCHDOG_MS);
  capstan_http_config_t cfg;
  capstan_http_config_defaults(&cfg, "fuzz");
  cfg.header_timeout_ms = 2000;
  cfg.idle_timeout_ms = 2000;
  if (capstan_http_server_start(&g_loop, "127.0.0.1:0", &cfg, capstan_http_files_handler, &g_src,
                                &g_srv) != 0) {
    abort();
  }
  g_port = capstan_http_server_port(g_srv);
  atexit(shutdown_server);
  g_ready = 1;
}

/* A loopback connection to the server. Loopback connect completes in the
 * kernel backlog without the loop, but it can fail now and then (EINTR,
 * ephemeral ports in TIME_WAIT, a full backlog): the harness retries,
 * turning the loop meanwhile so the server accepts and closes, and never
 * aborts for its own socket's sake. -1 when it could not connect. */
static int connect_to_server(void) {
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)g_port);
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  for (int attempt = 0; attempt < 100; attempt++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd >= 0) {
      if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) return fd;
      int err = errno;
      close(fd);
      if (attempt == 10) fprintf(stderr, "fuzz_http: connect: %s (retrying)\n", strerror(err));
    }
    uv_run(&g_loop, UV_RUN_NOWAIT);
    usleep(attempt < 10 ? 1000 : 20000);
  }
  fprintf(stderr, "fuzz_http: could not connect to the server; input skipped\n");
  return -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!g_ready) init();
  int fd = connect_to_server();
  if (fd < 0) return 0; /* the harness's own trouble, not the server's: skip */
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  size_t off = 0;
  int shut = 0, eof = 0;
  char sink[65536];
  for (int turn = 0;; turn++) {
    if (turn >= MAX_TURNS) {
      fprintf(stderr, "fuzz_http: connection not closed after %d loop turns\n", turn);
      abort();
    }
    while (off < size) {
      ssize_t n = send(fd, data + off, size - off, MSG_NOSIGNAL);
      if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        off = size; /* the server closed early: fine */
        break;
      }
      off += (size_t)n;
    }
    if (off >= size && !shut) {
      shutdown(fd, SHUT_WR);
      shut = 1;
    }
    for (;;) {
      ssize_t n = recv(fd, sink, sizeof(sink), 0);
      if (n > 0) continue;
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) eof = 1;
      break;
    }
    if (eof && capstan_http_server_connections(g_srv) == 0) break;
    uv_run(&g_loop, UV_RUN_ONCE);
  }
  close(fd);
  return 0;
}
