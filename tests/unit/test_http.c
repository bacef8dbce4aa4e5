/* Tests for the HTTP server (handlers/http/server.h), the phone file route
 * (handlers/http/files.h) and the admin routes (handlers/admin/admin.h).
 *
 * The servers run on a libuv loop in a thread, on 127.0.0.1 with port 0.
 * Well-formed traffic comes from the real curl (a subprocess); hostile shapes
 * from raw sockets. Every wait is bounded (socket timeouts, curl
 * --max-time, bounded polling loops). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include <uv.h>

#include "core/base/error.h"
#include "core/files/source.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "handlers/admin/admin.h"
#include "handlers/http/files.h"
#include "handlers/http/server.h"

#define BIG_FILE_BYTES (1024 * 1024 + 123) /* several write chunks */
#define RAW_TIMEOUT_MS 3000
#define HEADER_TIMEOUT_MS 300
#define LIMITED_IDLE_MS 1000

/* ---- the test file source ------------------------------------------------ */

/* Files come from a temp directory; "denied.bin" is refused (EACCES),
 * "error.bin" fails (EIO), "async.bin" is answered later from a uv_timer,
 * "hold.bin" only when the test releases it. */
typedef struct async_open {
  uv_timer_t timer;
  capstan_file_cb cb;
  void *ctx;
} async_open_t;

static struct {
  char dir[256];
  uv_loop_t loop;
  pthread_t thread;
  uv_async_t wake;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  void (*call_fn)(void *);
  void *call_arg;
  int call_done;
  capstan_filesource_t src;
  capstan_http_server_t *phone;
  capstan_http_server_t *limited;
  capstan_http_server_t *echo;
  int echo_port;
  capstan_admin_t *admin;
  int phone_port, limited_port, admin_port;
  capstan_file_cb hold_cb;
  void *hold_ctx;
  int stopped;
} g;

static void async_closed(uv_handle_t *h) {
  free(h->data);
}

static void async_fire(uv_timer_t *t) {
  async_open_t *a = t->data;
  static const char body[] = "async body\n";
  a->cb(a->ctx, 0, capstan_blob_new((const uint8_t *)body, sizeof(body) - 1), CAPSTAN_FILE_OTHER);
  uv_close((uv_handle_t *)&a->timer, async_closed);
}

static void src_open(capstan_filesource_t *src, const char *name, capstan_file_cb cb, void *ctx) {
  if (strcmp(name, "denied.bin") == 0) {
    cb(ctx, CAPSTAN_EACCES, NULL, CAPSTAN_FILE_OTHER);
    return;
  }
  if (strcmp(name, "error.bin") == 0) {
    cb(ctx, CAPSTAN_EIO, NULL, CAPSTAN_FILE_OTHER);
    return;
  }
  if (strcmp(name, "hold.bin") == 0) {
    g.hold_cb = cb;
    g.hold_ctx = ctx;
    return;
  }
  if (strcmp(name, "async.bin") == 0) {
    async_open_t *a = calloc(1, sizeof(*a));
    if (a == NULL) {
      cb(ctx, CAPSTAN_ENOMEM, NULL, CAPSTAN_FILE_OTHER);
      return;
    }
    a->cb = cb;
    a->ctx = ctx;
    a->timer.data = a;
    uv_timer_init(&g.loop, &a->timer);
    uv_timer_start(&a->timer, async_fire, 50, 0);
    return;
  }
  char path[512];
  snprintf(path, sizeof(path), "%s/%s", g.dir, name);
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    cb(ctx, CAPSTAN_ENOENT, NULL, capstan_file_kind_of(name));
    return;
  }
  uint8_t *buf = malloc(BIG_FILE_BYTES);
  size_t n = buf ? fread(buf, 1, BIG_FILE_BYTES, f) : 0;
  fclose(f);
  capstan_blob_t *blob = buf ? capstan_blob_new(buf, n) : NULL;
  free(buf);
  if (blob == NULL) {
    cb(ctx, CAPSTAN_ENOMEM, NULL, CAPSTAN_FILE_OTHER);
    return;
  }
  cb(ctx, 0, blob, capstan_file_kind_of(name));
}

/* ---- the loop thread ------------------------------------------------------ */

static void on_wake(uv_async_t *a) {
  pthread_mutex_lock(&g.lock);
  void (*fn)(void *) = g.call_fn;
  void *arg = g.call_arg;
  g.call_fn = NULL;
  pthread_mutex_unlock(&g.lock);
  if (fn == NULL) return;
  fn(arg);
  pthread_mutex_lock(&g.lock);
  g.call_done = 1;
  pthread_cond_broadcast(&g.cond);
  pthread_mutex_unlock(&g.lock);
}

/* Runs fn(arg) on the loop thread and waits (bounded) for it. */
static void on_loop(void (*fn)(void *), void *arg) {
  pthread_mutex_lock(&g.lock);
  g.call_fn = fn;
  g.call_arg = arg;
  g.call_done = 0;
  pthread_mutex_unlock(&g.lock);
  uv_async_send(&g.wake);
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 10;
  pthread_mutex_lock(&g.lock);
  while (!g.call_done) {
    if (pthread_cond_timedwait(&g.cond, &g.lock, &deadline) == ETIMEDOUT) break;
  }
  int done = g.call_done;
  pthread_mutex_unlock(&g.lock);
  assert_true(done);
}

static void *loop_main(void *arg) {
  uv_run(&g.loop, UV_RUN_DEFAULT);
  return NULL;
}

static void custom_route(void *arg, const capstan_http_request_t *req,
                         capstan_http_response_t *res) {
  char body[256];
  int n = snprintf(body, sizeof(body), "custom path=%s query=%s\n", req->path, req->query);
  capstan_http_respond(res, 200, "text/plain", (const uint8_t *)body, (size_t)n);
}

/* The "echo" server allows any method and small bodies. */
static void echo_route(void *arg, const capstan_http_request_t *req, capstan_http_response_t *res) {
  char body[256];
  int n = snprintf(body, sizeof(body), "%s %s body=%.*s\n", req->method, req->path,
                   (int)req->body_len, req->body ? (const char *)req->body : "");
  capstan_http_respond(res, 200, "text/plain", (const uint8_t *)body, (size_t)n);
}

static void start_servers(void *arg) {
  int *rc = arg;
  capstan_http_config_t cfg;
  capstan_http_config_defaults(&cfg, "phone");
  cfg.header_timeout_ms = HEADER_TIMEOUT_MS;
  cfg.idle_timeout_ms = 5000;
  *rc = capstan_http_server_start(&g.loop, "127.0.0.1:0", &cfg, capstan_http_files_handler, &g.src,
                                  &g.phone);
  if (*rc != 0) return;
  capstan_http_config_defaults(&cfg, "limited");
  cfg.max_connections = 3;
  cfg.max_connections_per_address = 2;
  cfg.idle_timeout_ms = LIMITED_IDLE_MS;
  cfg.header_timeout_ms = 5000;
  cfg.max_requests_per_connection = 2;
  cfg.max_refusing = 2;
  *rc = capstan_http_server_start(&g.loop, "127.0.0.1:0", &cfg, capstan_http_files_handler, &g.src,
                                  &g.limited);
  if (*rc != 0) return;
  capstan_http_config_defaults(&cfg, "echo");
  cfg.allow_any_method = 1;
  cfg.max_body_bytes = 16;
  *rc = capstan_http_server_start(&g.loop, "127.0.0.1:0", &cfg, echo_route, NULL, &g.echo);
  if (*rc != 0) return;
  g.echo_port = capstan_http_server_port(g.echo);
  *rc = capstan_admin_start(&g.loop, "127.0.0.1:0", NULL, &g.admin);
  if (*rc != 0) return;
  *rc = capstan_admin_add_route(g.admin, "/custom", custom_route, NULL);
  if (*rc != 0) return;
  if (capstan_admin_add_route(g.admin, "/custom", custom_route, NULL) != CAPSTAN_EEXIST) *rc = -1;
  if (capstan_admin_add_route(g.admin, "nope", custom_route, NULL) != CAPSTAN_EINVAL) *rc = -1;
  g.phone_port = capstan_http_server_port(g.phone);
  g.limited_port = capstan_http_server_port(g.limited);
  g.admin_port = capstan_admin_port(g.admin);
}

static void write_file(const char *name, const void *data, size_t len) {
  char path[512];
  snprintf(path, sizeof(path), "%s/%s", g.dir, name);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
  fclose(f);
}

static const char kHello[] = "hello world\n";
static const char kCnf[] = "<device><fullConfig>true</fullConfig></device>\n";

static int group_setup(void **state) {
  capstan_log_init();
  snprintf(g.dir, sizeof(g.dir), "/tmp/capstan-test-http-XXXXXX");
  if (mkdtemp(g.dir) == NULL) return -1;
  write_file("hello.txt", kHello, strlen(kHello));
  write_file("SEP001122334455.cnf.xml", kCnf, strlen(kCnf));
  uint8_t *big = malloc(BIG_FILE_BYTES);
  if (big == NULL) return -1;
  uint32_t x = 12345;
  for (size_t i = 0; i < BIG_FILE_BYTES; i++) {
    x = x * 1103515245u + 12345u;
    big[i] = (uint8_t)(x >> 16);
  }
  write_file("big.bin", big, BIG_FILE_BYTES);
  free(big);
  g.src.open = src_open;
  pthread_mutex_init(&g.lock, NULL);
  pthread_cond_init(&g.cond, NULL);
  if (uv_loop_init(&g.loop) != 0) return -1;
  uv_async_init(&g.loop, &g.wake, on_wake);
  if (pthread_create(&g.thread, NULL, loop_main, NULL) != 0) return -1;
  int rc = -1;
  on_loop(start_servers, &rc);
  return rc;
}

static void on_stopped(void *arg) {
  (*(int *)arg)++;
}

static void stop_servers(void *arg) {
  capstan_http_server_stop(g.phone, on_stopped, &g.stopped);
  capstan_http_server_stop(g.limited, on_stopped, &g.stopped);
  capstan_http_server_stop(g.echo, on_stopped, &g.stopped);
  capstan_admin_stop(g.admin, on_stopped, &g.stopped);
}

static void close_wake(void *arg) {
  uv_close((uv_handle_t *)&g.wake, NULL);
}

static int group_teardown(void **state) {
  on_loop(stop_servers, NULL);
  /* Stops complete once their connections are closed (curl and raw
   * sockets are all closed by now). */
  for (int i = 0; i < 500; i++) {
    pthread_mutex_lock(&g.lock);
    int n = g.stopped;
    pthread_mutex_unlock(&g.lock);
    if (n == 4) break;
    usleep(10000);
  }
  assert_int_equal(g.stopped, 4);
  on_loop(close_wake, NULL);
  pthread_join(g.thread, NULL);
  /* Every handle was closed: the loop closes cleanly. */
  assert_int_equal(uv_loop_close(&g.loop), 0);
  char cmd[600];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g.dir);
  return system(cmd) == 0 ? 0 : -1;
}

/* ---- clients --------------------------------------------------------------- */

/* Runs a shell command, returns its stdout (static buffer). */
static const char *run(const char *fmt, ...) {
  static char out[256 * 1024];
  char cmd[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof(cmd), fmt, ap);
  va_end(ap);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  size_t n = fread(out, 1, sizeof(out) - 1, p);
  out[n] = '\0';
  pclose(p);
  return out;
}

/* curl GET of |path| on |port| into g.dir/out.bin; returns the status. */
static int curl_get(int port, const char *path) {
  const char *code =
      run("curl -s --max-time 10 --path-as-is -o '%s/out.bin' -w '%%{http_code}' "
          "'http://127.0.0.1:%d%s'",
          g.dir, port, path);
  return atoi(code);
}

/* curl GET of |path| on |port| into g.dir/out.bin, which must answer 200;
 * returns the response headers (run()'s buffer: until the next run()). */
static const char *curl_get_headers(int port, const char *path) {
  char hdr[600];
  snprintf(hdr, sizeof(hdr), "%s/headers.txt", g.dir);
  const char *code =
      run("curl -s --max-time 10 -D '%s' -o '%s/out.bin' -w '%%{http_code}' "
          "'http://127.0.0.1:%d%s'",
          hdr, g.dir, port, path);
  assert_string_equal(code, "200");
  return run("cat '%s'", hdr);
}

static char *read_out(size_t *len) {
  char path[512];
  snprintf(path, sizeof(path), "%s/out.bin", g.dir);
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  char *buf = malloc(BIG_FILE_BYTES + 1);
  assert_non_null(buf);
  *len = fread(buf, 1, BIG_FILE_BYTES + 1, f);
  buf[*len < BIG_FILE_BYTES ? *len : BIG_FILE_BYTES] = '\0';
  fclose(f);
  return buf;
}

static void assert_phone_alive(void) {
  assert_int_equal(curl_get(g.phone_port, "/hello.txt"), 200);
  size_t len;
  char *body = read_out(&len);
  assert_int_equal(len, strlen(kHello));
  assert_memory_equal(body, kHello, len);
  free(body);
}

static int raw_connect_from(int port, const char *src_ip) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct timeval tv = {RAW_TIMEOUT_MS / 1000, (RAW_TIMEOUT_MS % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  if (src_ip != NULL) {
    inet_pton(AF_INET, src_ip, &sa.sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  }
  sa.sin_port = htons((uint16_t)port);
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  return fd;
}

static int raw_connect(int port) {
  return raw_connect_from(port, NULL);
}

static void raw_send(int fd, const void *data, size_t len) {
  const char *p = data;
  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n <= 0) return; /* the server may close early on hostile input */
    p += n;
    len -= (size_t)n;
  }
}

/* Reads until the peer closes, an error, a timeout or |cap|. Returns the
 * length; *closed is 1 if the peer closed (EOF), 2 if it reset. */
static size_t raw_read_all(int fd, char *buf, size_t cap, int *closed) {
  size_t len = 0;
  *closed = 0;
  while (len < cap - 1) {
    ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
    if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE))) {
      *closed = n == 0 ? 1 : 2;
      break;
    }
    if (n < 0) break; /* timeout */
    len += (size_t)n;
  }
  buf[len] = '\0';
  return len;
}

/* Reads one response (headers and Content-Length body). Returns its total
 * length (0 if none) and the status in *status. */
static size_t raw_read_response(int fd, char *buf, size_t cap, int *status) {
  size_t len = 0;
  *status = 0;
  for (;;) {
    buf[len] = '\0';
    char *end = strstr(buf, "\r\n\r\n");
    if (end != NULL) {
      const char *cl = strstr(buf, "Content-Length: ");
      size_t body = cl && cl < end ? strtoul(cl + 16, NULL, 10) : 0;
      size_t total = (size_t)(end - buf) + 4 + body;
      if (strncmp(buf, "HEAD", 4) == 0) total = (size_t)(end - buf) + 4;
      if (len >= total) {
        sscanf(buf, "HTTP/1.1 %d", status);
        return total;
      }
    }
    if (len >= cap - 1) return 0;
    ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
    if (n <= 0) return 0;
    len += (size_t)n;
  }
}

/* Sends |len| bytes of |req| on a new connection to |port| and reads into
 * |buf| until the server closes the connection, which it asserts. Returns
 * the length read. */
static size_t raw_exchange(int port, const void *req, size_t len, char *buf, size_t cap) {
  int fd = raw_connect(port);
  raw_send(fd, req, len);
  int closed;
  size_t got = raw_read_all(fd, buf, cap, &closed);
  close(fd);
  assert_true(closed);
  return got;
}

/* The status of the first response in |buf| (0 if none). */
static int first_status(const char *buf) {
  int status = 0;
  sscanf(buf, "HTTP/1.1 %d", &status);
  return status;
}

/* Sends |req| on a new connection, reads until close; returns the status of
 * the first response and asserts that the server closed the connection. */
static int raw_exchange_closed(const void *req, size_t len) {
  static char buf[65536];
  raw_exchange(g.phone_port, req, len, buf, sizeof(buf));
  return first_status(buf);
}

static int raw_status_on(int port, const char *req, char *buf, size_t cap) {
  raw_exchange(port, req, strlen(req), buf, cap);
  return first_status(buf);
}

static int raw_status(const char *req) {
  return raw_exchange_closed(req, strlen(req));
}

/* Value of a series in the Prometheus text from the admin listener, or -1. */
static double scrape(const char *series) {
  const char *text = run("curl -s --max-time 10 'http://127.0.0.1:%d/metrics'", g.admin_port);
  size_t n = strlen(series);
  for (const char *p = text; p != NULL && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
    if (strncmp(p, series, n) == 0 && p[n] == ' ') return strtod(p + n + 1, NULL);
  }
  return -1;
}

static int read_flag(int *flag) {
  pthread_mutex_lock(&g.lock);
  int v = *flag;
  pthread_mutex_unlock(&g.lock);
  return v;
}

static double counter(const char *name, const char *labels) {
  return capstan_metric_value(capstan_metrics_counter(name, "", labels));
}

/* ---- tests: well-formed traffic with curl ------------------------------------ */

static void test_get_file(void **state) {
  const char *h = curl_get_headers(g.phone_port, "/hello.txt");
  size_t len;
  char *body = read_out(&len);
  assert_int_equal(len, strlen(kHello));
  assert_memory_equal(body, kHello, len);
  free(body);
  assert_non_null(strstr(h, "Content-Type: application/octet-stream\r\n"));
  assert_non_null(strstr(h, "Content-Length: 12\r\n"));
  assert_non_null(strstr(h, "Cache-Control: no-store\r\n"));
  assert_non_null(strstr(h, "Server: capstan\r\n"));
  assert_non_null(strstr(h, "Date: "));
}

static void test_get_cnf_xml(void **state) {
  const char *ct =
      run("curl -s --max-time 10 -o /dev/null -w '%%{http_code} %%{content_type}' "
          "'http://127.0.0.1:%d/SEP001122334455.cnf.xml'",
          g.phone_port);
  assert_string_equal(ct, "200 text/xml");
  double ok = counter("capstan_http_files_requests_total", "kind=\"cnf\",result=\"ok\"");
  assert_true(ok >= 1);
}

static void test_head(void **state) {
  const char *h = run("curl -s --max-time 10 -I 'http://127.0.0.1:%d/big.bin'", g.phone_port);
  assert_non_null(strstr(h, "HTTP/1.1 200 OK\r\n"));
  char want[64];
  snprintf(want, sizeof(want), "Content-Length: %d\r\n", BIG_FILE_BYTES);
  assert_non_null(strstr(h, want));
  /* Raw: the HEAD response is the header block and nothing more. */
  static char buf[65536];
  const char *req = "HEAD /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  size_t len = raw_exchange(g.phone_port, req, strlen(req), buf, sizeof(buf));
  assert_non_null(strstr(buf, "Content-Length: 12\r\n"));
  assert_non_null(strstr(buf, "Connection: close\r\n"));
  char *end = strstr(buf, "\r\n\r\n");
  assert_non_null(end);
  assert_int_equal(len, (size_t)(end - buf) + 4);
}

static void test_not_found_denied_error(void **state) {
  double nf0 = counter("capstan_http_files_requests_total", "kind=\"other\",result=\"not_found\"");
  double den0 = counter("capstan_http_files_requests_total", "kind=\"other\",result=\"denied\"");
  double err0 = counter("capstan_http_files_requests_total", "kind=\"other\",result=\"error\"");
  double c404 =
      counter("capstan_http_requests_total", "server=\"phone\",method=\"GET\",code=\"404\"");
  assert_int_equal(curl_get(g.phone_port, "/missing.bin"), 404);
  size_t len;
  char *body = read_out(&len);
  assert_string_equal(body, "file not found\n");
  free(body);
  assert_int_equal(curl_get(g.phone_port, "/denied.bin"), 404);
  body = read_out(&len);
  assert_string_equal(body, "file not found\n"); /* no detail */
  free(body);
  assert_int_equal(curl_get(g.phone_port, "/error.bin"), 500);
  assert_int_equal(curl_get(g.phone_port, "/"), 404);
  assert_int_equal(
      counter("capstan_http_files_requests_total", "kind=\"other\",result=\"not_found\""), nf0 + 1);
  assert_int_equal(counter("capstan_http_files_requests_total", "kind=\"other\",result=\"denied\""),
                   den0 + 2);
  assert_int_equal(counter("capstan_http_files_requests_total", "kind=\"other\",result=\"error\""),
                   err0 + 1);
  assert_int_equal(
      counter("capstan_http_requests_total", "server=\"phone\",method=\"GET\",code=\"404\""),
      c404 + 3);
}

static void test_async_and_big(void **state) {
  assert_int_equal(curl_get(g.phone_port, "/async.bin"), 200);
  size_t len;
  char *body = read_out(&len);
  assert_string_equal(body, "async body\n");
  free(body);
  assert_int_equal(curl_get(g.phone_port, "/big.bin"), 200);
  const char *same = run("cmp '%s/out.bin' '%s/big.bin' && echo same", g.dir, g.dir);
  assert_string_equal(same, "same\n");
}

static void test_keep_alive_reuses_connection(void **state) {
  const char *out =
      run("curl -s --max-time 10 --http1.1 -o /dev/null -o /dev/null "
          "-w '%%{http_code} %%{num_connects}\\n' 'http://127.0.0.1:%d/hello.txt' "
          "'http://127.0.0.1:%d/async.bin'",
          g.phone_port, g.phone_port);
  assert_string_equal(out, "200 1\n200 0\n");
  /* HTTP/1.0 without keep-alive: closed after the response. */
  static char buf[4096];
  const char *req = "GET /hello.txt HTTP/1.0\r\n\r\n";
  raw_exchange(g.phone_port, req, strlen(req), buf, sizeof(buf));
  assert_non_null(strstr(buf, "200 OK"));
  /* HTTP/1.0 asking for keep-alive: kept, and told so. */
  int fd = raw_connect(g.phone_port);
  req = "GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
  int status;
  for (int i = 0; i < 2; i++) {
    raw_send(fd, req, strlen(req));
    assert_true(raw_read_response(fd, buf, sizeof(buf), &status) > 0);
    assert_int_equal(status, 200);
    assert_non_null(strstr(buf, "Connection: keep-alive\r\n"));
  }
  close(fd);
}

static void test_pipelined_in_order(void **state) {
  /* The first request is answered later (timer) than the second would be:
   * the answers still come in request order. */
  const char *req =
      "GET /async.bin HTTP/1.1\r\nHost: x\r\n\r\n"
      "HEAD /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  static char buf[8192];
  raw_exchange(g.phone_port, req, strlen(req), buf, sizeof(buf));
  char *a = strstr(buf, "async body\n");
  char *h = strstr(buf, "Content-Length: 12\r\n");
  char *w = strstr(buf, "hello world\n");
  assert_non_null(a);
  assert_non_null(h);
  assert_non_null(w);
  assert_true(a < h && h < w);
  /* Exactly three responses, the HEAD one without a body. */
  int n = 0;
  for (char *p = buf; (p = strstr(p, "HTTP/1.1 200")) != NULL; p++) n++;
  assert_int_equal(n, 3);
  assert_null(strstr(w + 1, "hello world\n"));
}

/* ---- tests: hostile shapes ---------------------------------------------------- */

static void test_smuggling_shapes(void **state) {
  double c400 =
      counter("capstan_http_requests_total", "server=\"phone\",method=\"GET\",code=\"400\"");
  assert_int_equal(raw_status("GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                              "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
                   400);
  assert_phone_alive();
  assert_int_equal(raw_status("GET /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                              "Content-Length: 5\r\n\r\n0\r\n\r\n"),
                   400);
  assert_int_equal(raw_status("GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                              "Content-Length: 0\r\n\r\n"),
                   400);
  assert_int_equal(raw_status("GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                              "Content-Length: 2\r\n\r\nabc"),
                   400);
  assert_int_equal(raw_status("GET /hello.txt HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n"), 400);
  assert_int_equal(raw_status("GET /hello.txt HTTP/1.1\r\nHost: x\r\n\tX-A: b\r\n\r\n"), 400);
  assert_int_equal(raw_status("GET /hello.txt HTTP/2.0\r\nHost: x\r\n\r\n"), 400);
  assert_true(counter("capstan_http_requests_total",
                      "server=\"phone\",method=\"GET\",code=\"400\"") >= c400 + 7);
  assert_phone_alive();
}

static void test_oversized(void **state) {
  static char req[12000];
  char pad[9001];
  memset(pad, 'a', 9000);
  pad[9000] = '\0';
  snprintf(req, sizeof(req), "GET /hello.txt HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", pad);
  assert_int_equal(raw_status(req), 431);
  assert_phone_alive();
  /* Many small headers that add up. */
  size_t n = (size_t)snprintf(req, sizeof(req), "GET /hello.txt HTTP/1.1\r\n");
  for (int i = 0; i < 900; i++) n += (size_t)snprintf(req + n, sizeof(req) - n, "X-%03d: v\r\n", i);
  snprintf(req + n, sizeof(req) - n, "\r\n");
  assert_int_equal(raw_status(req), 431);
  /* A 3000-byte URL. */
  memset(pad, 'b', 3000);
  pad[3000] = '\0';
  snprintf(req, sizeof(req), "GET /%s HTTP/1.1\r\nHost: x\r\n\r\n", pad);
  assert_int_equal(raw_status(req), 414);
  assert_phone_alive();
  /* Exactly at the URL cap is fine (404: no such file). */
  memset(pad, 'c', CAPSTAN_HTTP_MAX_URL_BYTES - 1);
  pad[CAPSTAN_HTTP_MAX_URL_BYTES - 1] = '\0';
  snprintf(req, sizeof(req), "GET /%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", pad);
  assert_int_equal(raw_status(req), 404);
  assert_true(
      counter("capstan_http_requests_total", "server=\"phone\",method=\"GET\",code=\"431\"") >= 2);
}

static void test_methods_and_bodies(void **state) {
  static char buf[4096];
  const char *req = "POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
  raw_exchange(g.phone_port, req, strlen(req), buf, sizeof(buf));
  assert_non_null(strstr(buf, "HTTP/1.1 405 Method Not Allowed\r\n"));
  assert_non_null(strstr(buf, "Allow: GET, HEAD\r\n"));
  /* curl's POST too. */
  const char *code =
      run("curl -s --max-time 10 -o /dev/null -w '%%{http_code}' -d x=1 "
          "'http://127.0.0.1:%d/hello.txt'",
          g.phone_port);
  assert_string_equal(code, "405");
  assert_int_equal(raw_status("DELETE /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
  assert_int_equal(
      raw_status("GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789"),
      413);
  assert_int_equal(raw_status("GET /hello.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                              "\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
                   413);
  /* An empty body is no body. */
  assert_int_equal(raw_status("GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                              "Connection: close\r\n\r\n"),
                   200);
  assert_true(counter("capstan_http_requests_total",
                      "server=\"phone\",method=\"other\",code=\"405\"") >= 3);
  assert_phone_alive();
}

static void test_allowed_bodies(void **state) {
  static char buf[4096];
  const char *code =
      run("curl -s --max-time 10 -o '%s/out.bin' -w '%%{http_code}' -H 'Expect:' -d hello "
          "'http://127.0.0.1:%d/x'",
          g.dir, g.echo_port);
  assert_string_equal(code, "200");
  size_t len;
  char *body = read_out(&len);
  assert_string_equal(body, "POST /x body=hello\n");
  free(body);
  assert_int_equal(raw_status_on(g.echo_port,
                                 "PUT /y HTTP/1.1\r\nConnection: close\r\nTransfer-Encoding: "
                                 "chunked\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n",
                                 buf, sizeof(buf)),
                   200);
  assert_non_null(strstr(buf, "PUT /y body=abcdefgh\n"));
  /* Over max_body_bytes (16): by Content-Length at once, or by chunks. */
  assert_int_equal(raw_status_on(g.echo_port,
                                 "POST /z HTTP/1.1\r\nContent-Length: 17\r\n\r\n"
                                 "0123456789abcdefg",
                                 buf, sizeof(buf)),
                   413);
  assert_int_equal(raw_status_on(g.echo_port,
                                 "POST /z HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 "a\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n",
                                 buf, sizeof(buf)),
                   413);
  /* Pipelined after a body. */
  assert_int_equal(raw_status_on(g.echo_port,
                                 "POST /1 HTTP/1.1\r\nContent-Length: 2\r\n\r\nab"
                                 "DELETE /2 HTTP/1.1\r\nConnection: close\r\n\r\n",
                                 buf, sizeof(buf)),
                   200);
  char *first = strstr(buf, "POST /1 body=ab\n");
  char *second = strstr(buf, "DELETE /2 body=\n");
  assert_non_null(first);
  assert_non_null(second);
  assert_true(first < second);
}

/* A refused request followed by unread bytes: the error still arrives
 * (the server drains before closing instead of resetting). */
static void test_error_survives_unread_bytes(void **state) {
  static char req[200000];
  static char buf[4096];
  size_t n = (size_t)snprintf(req, sizeof(req), "POST /x HTTP/1.1\r\nHost: x\r\n\r\n");
  memset(req + n, 'z', sizeof(req) - n);
  int fd = raw_connect(g.phone_port);
  raw_send(fd, req, sizeof(req));
  int closed;
  raw_read_all(fd, buf, sizeof(buf), &closed);
  close(fd);
  assert_non_null(strstr(buf, "HTTP/1.1 405 "));
  assert_int_equal(closed, 1); /* an orderly close, not a reset */
}

static void test_garbage(void **state) {
  assert_int_equal(raw_status("HELLO WORLD\r\n\r\n"), 400);
  assert_int_equal(raw_status("GET\r\n\r\n"), 400);
  assert_int_equal(raw_status("GET / HTTP/1.1 extra\r\n\r\n"), 400);
  assert_int_equal(raw_status("GET /a\x01"
                              "b HTTP/1.1\r\nHost: x\r\n\r\n"),
                   400);
  assert_int_equal(raw_status("GET /hello.txt HTTP/1.1\r\nHo st: x\r\n\r\n"), 400);
  assert_int_equal(raw_status("GET /hello.txt HTTP/1.1\r\nHost: x\x7f\r\n\r\n"), 400);
  /* 10,000 bytes of random garbage: refused and closed. */
  static uint8_t junk[10000];
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < sizeof(junk); i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    junk[i] = (uint8_t)x;
  }
  int status = raw_exchange_closed(junk, sizeof(junk));
  assert_true(status == 400 || status == 0);
  assert_phone_alive();
}

static void test_path_checks(void **state) {
  assert_int_equal(
      raw_status("GET /../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 404);
  assert_int_equal(raw_status("GET /%2e%2e/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                   404);
  assert_int_equal(
      raw_status("GET /%2e%2e%2fetc%2fpasswd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
      404);
  assert_int_equal(raw_status("GET /.hidden HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                   404);
  assert_int_equal(raw_status("GET /a%5cb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 404);
  /* Percent-decoding: an encoded name is found; %00 and controls refused. */
  assert_int_equal(curl_get(g.phone_port, "/hell%6f.txt?x=1"), 200);
  assert_int_equal(raw_status("GET /hello%00.txt HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
  assert_int_equal(raw_status("GET /hello%0a.txt HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
  assert_int_equal(raw_status("GET /hello%zz HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
  assert_int_equal(raw_status("GET /hello% HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
  /* Absolute-form targets are served by path. */
  assert_int_equal(
      raw_status("GET http://x/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 200);
  assert_int_equal(capstan_http_files_name_ok("ITLSEP001122334455.tlv"), 1);
  assert_int_equal(capstan_http_files_name_ok("a..b"), 0);
  assert_int_equal(capstan_http_files_name_ok(""), 0);
  char longname[300];
  memset(longname, 'a', 256);
  longname[256] = '\0';
  assert_int_equal(capstan_http_files_name_ok(longname), 0);
  longname[255] = '\0';
  assert_int_equal(capstan_http_files_name_ok(longname), 1);
  assert_phone_alive();
}

static void test_slowloris(void **state) {
  static char buf[4096];
  double c408 =
      counter("capstan_http_requests_total", "server=\"phone\",method=\"GET\",code=\"408\"");
  int fd = raw_connect(g.phone_port);
  const char *half = "GET /hello.txt HTTP/1.1\r\nHost: x\r\nX-Slow: ";
  raw_send(fd, half, strlen(half));
  /* Trickle a byte now and then: it must not extend the deadline. */
  for (int i = 0; i < 3; i++) {
    usleep(HEADER_TIMEOUT_MS * 1000 / 4);
    raw_send(fd, "a", 1);
  }
  int closed;
  raw_read_all(fd, buf, sizeof(buf), &closed);
  close(fd);
  assert_true(closed);
  assert_non_null(strstr(buf, "HTTP/1.1 408 "));
  assert_int_equal(
      counter("capstan_http_requests_total", "server=\"phone\",method=\"GET\",code=\"408\""),
      c408 + 1);
  /* A connection that sends nothing is closed too, silently. */
  fd = raw_connect(g.phone_port);
  size_t len = raw_read_all(fd, buf, sizeof(buf), &closed);
  close(fd);
  assert_true(closed);
  assert_int_equal(len, 0);
  assert_phone_alive();
}

/* A connection over a limit is told to come back: 503 with Retry-After and
 * Connection: close, whatever it asked; counted by limit. */
static void expect_busy(int fd, const char *retry_after) {
  static char buf[4096];
  const char *req = "GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n";
  raw_send(fd, req, strlen(req));
  int closed;
  raw_read_all(fd, buf, sizeof(buf), &closed);
  assert_true(closed);
  assert_int_equal(first_status(buf), 503);
  char want[64];
  snprintf(want, sizeof(want), "\r\nRetry-After: %s\r\n", retry_after);
  assert_non_null(strstr(buf, want));
  assert_non_null(strstr(buf, "\r\nConnection: close\r\n"));
  assert_non_null(strstr(buf, "retry in "));
}

static double limited_rejected(const char *reason) {
  char labels[96];
  snprintf(labels, sizeof(labels), "server=\"limited\",reason=\"%s\"", reason);
  return counter("capstan_http_connections_rejected_total", labels);
}

static double limited_gauge(const char *name) {
  return capstan_metric_value(capstan_metrics_gauge(name, "", "server=\"limited\""));
}

/* Bounded poll until gauge |name| of the limited server is |want|. */
static void wait_limited_gauge(const char *name, double want) {
  int ok = 0;
  for (int i = 0; i < 250 && !ok; i++) {
    ok = limited_gauge(name) == want;
    if (!ok) usleep(20000);
  }
  assert_true(ok);
}

static void test_connection_limits(void **state) {
  static char buf[4096];
  int status;
  const char *req = "GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n";
  double per0 = limited_rejected("limit_per_address");
  double tot0 = limited_rejected("limit_total");
  double busy0 =
      counter("capstan_http_requests_total", "server=\"limited\",method=\"GET\",code=\"503\"");
  int fds[5];
  /* Two from 127.0.0.1 are admitted (each answers a request). */
  for (int i = 0; i < 2; i++) {
    fds[i] = raw_connect_from(g.limited_port, "127.0.0.1");
    raw_send(fds[i], req, strlen(req));
    assert_true(raw_read_response(fds[i], buf, sizeof(buf), &status) > 0);
    assert_int_equal(status, 200);
  }
  /* A third from the same address is told to come back, then closed. */
  fds[2] = raw_connect_from(g.limited_port, "127.0.0.1");
  expect_busy(fds[2], "10");
  /* Another address fits in the total (3)... */
  fds[3] = raw_connect_from(g.limited_port, "127.0.0.2");
  raw_send(fds[3], req, strlen(req));
  assert_true(raw_read_response(fds[3], buf, sizeof(buf), &status) > 0);
  assert_int_equal(status, 200);
  /* ...and the next one is over it. */
  fds[4] = raw_connect_from(g.limited_port, "127.0.0.3");
  expect_busy(fds[4], "10");
  assert_int_equal(limited_rejected("limit_per_address"), per0 + 1);
  assert_int_equal(limited_rejected("limit_total"), tot0 + 1);
  assert_int_equal(
      counter("capstan_http_requests_total", "server=\"limited\",method=\"GET\",code=\"503\""),
      busy0 + 2);
  /* Refusals are not open connections. */
  assert_int_equal(limited_gauge("capstan_http_connections_active"), 3);
  /* max_requests_per_connection = 2: the second answer says close. */
  raw_send(fds[0], req, strlen(req));
  assert_true(raw_read_response(fds[0], buf, sizeof(buf), &status) > 0);
  assert_non_null(strstr(buf, "Connection: close\r\n"));
  int closed;
  assert_int_equal(raw_read_all(fds[0], buf, sizeof(buf), &closed), 0);
  assert_true(closed);
  /* Idle keep-alive connections are closed after the idle timeout. */
  assert_int_equal(raw_read_all(fds[1], buf, sizeof(buf), &closed), 0);
  assert_true(closed);
  for (int i = 0; i < 5; i++) close(fds[i]);
  /* Once closed, the slots are free again (bounded poll). */
  wait_limited_gauge("capstan_http_connections_active", 0);
  wait_limited_gauge("capstan_http_connections_refusing", 0);
  const char *code =
      run("curl -s --max-time 10 -o /dev/null -w '%%{http_code}' "
          "'http://127.0.0.1:%d/hello.txt'",
          g.limited_port);
  assert_string_equal(code, "200");
}

typedef struct {
  unsigned total, per_address, retry_after;
} limits_t;

static void set_limited(void *arg) {
  const limits_t *l = arg;
  capstan_http_server_set_limits(g.limited, l->total, l->per_address, l->retry_after);
}

/* Limits change live: open connections stay when a limit shrinks below
 * them, new ones follow the new value at once; raised again, the same
 * client gets through. Past the flood ceiling (max_refusing = 2 on this
 * server) a refused connection is closed at accept without an answer. */
static void test_limits_live(void **state) {
  static char buf[4096];
  int status, closed;
  const char *req = "GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n";
  int open1 = raw_connect_from(g.limited_port, "127.0.0.1");
  raw_send(open1, req, strlen(req));
  assert_true(raw_read_response(open1, buf, sizeof(buf), &status) > 0);
  assert_int_equal(status, 200);
  /* Shrink: one in all, Retry-After 7. */
  on_loop(set_limited, &(limits_t){1, 1, 7});
  int over = raw_connect_from(g.limited_port, "127.0.0.4");
  expect_busy(over, "7");
  close(over);
  /* The connection already open is not cut. */
  raw_send(open1, req, strlen(req));
  assert_true(raw_read_response(open1, buf, sizeof(buf), &status) > 0);
  assert_int_equal(status, 200);
  close(open1);
  wait_limited_gauge("capstan_http_connections_active", 0);
  wait_limited_gauge("capstan_http_connections_refusing", 0);

  /* The flood ceiling: two silent refused connections are being answered;
   * a third is closed at once, counted as dropped. */
  int hold = raw_connect_from(g.limited_port, "127.0.0.5"); /* admitted: the one slot */
  raw_send(hold, "G", 1);
  wait_limited_gauge("capstan_http_connections_active", 1);
  double dropped0 = counter("capstan_http_connections_dropped_total",
                            "server=\"limited\",reason=\"limit_total\"");
  int silent[2];
  for (int i = 0; i < 2; i++) silent[i] = raw_connect_from(g.limited_port, "127.0.0.6");
  wait_limited_gauge("capstan_http_connections_refusing", 2);
  int flood = raw_connect_from(g.limited_port, "127.0.0.6");
  raw_send(flood, req, strlen(req));
  assert_int_equal(raw_read_all(flood, buf, sizeof(buf), &closed), 0);
  assert_true(closed);
  close(flood);
  assert_int_equal(counter("capstan_http_connections_dropped_total",
                           "server=\"limited\",reason=\"limit_total\""),
                   dropped0 + 1);
  /* The silent ones still hear their 503 when they ask. */
  expect_busy(silent[0], "7");
  close(silent[0]);
  close(silent[1]);
  close(hold);
  wait_limited_gauge("capstan_http_connections_active", 0);
  wait_limited_gauge("capstan_http_connections_refusing", 0);

  /* Raised again: the client that was refused gets through. */
  on_loop(set_limited, &(limits_t){3, 2, 10});
  int back = raw_connect_from(g.limited_port, "127.0.0.4");
  raw_send(back, req, strlen(req));
  assert_true(raw_read_response(back, buf, sizeof(buf), &status) > 0);
  assert_int_equal(status, 200);
  close(back);
  wait_limited_gauge("capstan_http_connections_active", 0);
}

/* ---- tests: admin ---------------------------------------------------------- */

static void test_admin(void **state) {
  const char *h = curl_get_headers(g.admin_port, "/metrics");
  assert_non_null(strstr(h, "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
  size_t len;
  char *text = read_out(&len);
  assert_non_null(strstr(text, "# TYPE capstan_http_requests_total counter"));
  const char *info =
      strstr(text, "capstan_build_info{version=\"" CAPSTAN_VERSION "\",boringssl=\"api-");
  assert_non_null(info);
  assert_non_null(strstr(info, "\"} 1\n"));
  assert_non_null(strstr(text, "capstan_process_start_time_seconds "));
  assert_non_null(strstr(text, "capstan_http_request_duration_seconds_bucket{server=\"phone\""));
  assert_non_null(strstr(text, "capstan_http_files_duration_seconds_bucket{kind=\"other\""));
  free(text);
  assert_true(scrape("capstan_http_requests_total{server=\"phone\",method=\"GET\",code=\"200\"}") >=
              1);
  assert_true(scrape("capstan_http_requests_total{server=\"phone\",method=\"GET\",code=\"400\"}") >=
              1);
  assert_true(scrape("capstan_http_files_requests_total{kind=\"other\",result=\"ok\"}") >= 1);
  assert_true(scrape("capstan_http_bytes_sent_total{server=\"phone\"}") > BIG_FILE_BYTES);
  assert_true(scrape("capstan_http_files_bytes_sent_total{kind=\"other\"}") > BIG_FILE_BYTES);
  assert_true(scrape("capstan_http_connections_active{server=\"admin\"}") >= 1);
  assert_true(scrape("capstan_http_files_active") == 0);
  assert_true(scrape("capstan_process_start_time_seconds") > 1.6e9);

  assert_int_equal(curl_get(g.admin_port, "/healthz"), 200);
  text = read_out(&len);
  assert_string_equal(text, "ok\n");
  free(text);
  assert_int_equal(curl_get(g.admin_port, "/nope"), 404);
  assert_int_equal(curl_get(g.admin_port, "/custom?a=b%20c"), 200);
  text = read_out(&len);
  assert_string_equal(text, "custom path=/custom query=a=b%20c\n");
  free(text);
  const char *code =
      run("curl -s --max-time 10 -o /dev/null -w '%%{http_code}' -X POST "
          "'http://127.0.0.1:%d/metrics'",
          g.admin_port);
  assert_string_equal(code, "405");
}

/* ---- tests: IPv6 listener ----------------------------------------------------- */

static capstan_http_server_t *g_v6_srv;
static int g_v6_done;

static void v6_start(void *arg) {
  capstan_http_config_t cfg;
  capstan_http_config_defaults(&cfg, "v6");
  *(int *)arg = capstan_http_server_start(&g.loop, "[::1]:0", &cfg, capstan_http_files_handler,
                                          &g.src, &g_v6_srv);
}

static void v6_stop(void *arg) {
  capstan_http_server_stop(g_v6_srv, on_stopped, &g_v6_done);
}

static void bad_addresses(void *arg) {
  capstan_http_config_t cfg;
  capstan_http_server_t *srv = NULL;
  int *bad = arg;
  capstan_http_config_defaults(&cfg, "bad");
  const char *addrs[] = {"localhost:80", "127.0.0.1", "[::1]", "127.0.0.1:99999", ""};
  for (size_t i = 0; i < sizeof(addrs) / sizeof(addrs[0]); i++) {
    if (capstan_http_server_start(&g.loop, addrs[i], &cfg, capstan_http_files_handler, &g.src,
                                  &srv) == CAPSTAN_EINVAL &&
        srv == NULL) {
      (*bad)++;
    }
  }
  /* A port in use: the bind error comes back, the half-made server is
   * freed by the loop (LeakSanitizer checks). */
  char taken[32];
  snprintf(taken, sizeof(taken), "127.0.0.1:%d", g.phone_port);
  if (capstan_http_server_start(&g.loop, taken, &cfg, capstan_http_files_handler, &g.src, &srv) ==
          UV_EADDRINUSE &&
      srv == NULL) {
    (*bad)++;
  }
  cfg.max_connections = 0;
  if (capstan_http_server_start(&g.loop, "127.0.0.1:0", &cfg, capstan_http_files_handler, &g.src,
                                &srv) == CAPSTAN_EINVAL) {
    (*bad)++;
  }
}

static void test_ipv6_and_addresses(void **state) {
  int rc = -1;
  on_loop(v6_start, &rc);
  assert_int_equal(rc, 0);
  const char *code =
      run("curl -s -g --max-time 10 -o /dev/null -w '%%{http_code}' "
          "'http://[::1]:%d/hello.txt'",
          capstan_http_server_port(g_v6_srv));
  assert_string_equal(code, "200");
  on_loop(v6_stop, NULL);
  for (int i = 0; i < 200 && !read_flag(&g_v6_done); i++) usleep(10000);
  assert_int_equal(read_flag(&g_v6_done), 1);
  int bad = 0;
  on_loop(bad_addresses, &bad);
  assert_int_equal(bad, 7);
}

/* ---- tests: stop with a request in flight ----------------------------------- */

static capstan_http_server_t *g_stop_srv;
static int g_stop_port, g_stop_done;

static void stop_start(void *arg) {
  capstan_http_config_t cfg;
  capstan_http_config_defaults(&cfg, "stoptest");
  *(int *)arg = capstan_http_server_start(&g.loop, "127.0.0.1:0", &cfg, capstan_http_files_handler,
                                          &g.src, &g_stop_srv);
  if (*(int *)arg == 0) g_stop_port = capstan_http_server_port(g_stop_srv);
}

static void stop_stop(void *arg) {
  capstan_http_server_stop(g_stop_srv, on_stopped, &g_stop_done);
}

static void stop_release(void *arg) {
  static const char body[] = "held\n";
  capstan_file_cb cb = g.hold_cb;
  g.hold_cb = NULL;
  cb(g.hold_ctx, 0, capstan_blob_new((const uint8_t *)body, sizeof(body) - 1), CAPSTAN_FILE_STATIC);
}

static void test_stop_lets_inflight_finish(void **state) {
  static char buf[4096];
  int rc = -1;
  on_loop(stop_start, &rc);
  assert_int_equal(rc, 0);
  int idle = raw_connect(g_stop_port);
  int busy = raw_connect(g_stop_port);
  const char *req = "GET /hold.bin HTTP/1.1\r\nHost: x\r\n\r\n";
  raw_send(busy, req, strlen(req));
  /* Wait (bounded) until the request reached the file source. */
  int held = 0;
  for (int i = 0; i < 200 && !held; i++) {
    pthread_mutex_lock(&g.lock);
    held = g.hold_cb != NULL;
    pthread_mutex_unlock(&g.lock);
    if (!held) usleep(10000);
  }
  assert_true(held);
  on_loop(stop_stop, NULL);
  int closed;
  assert_int_equal(raw_read_all(idle, buf, sizeof(buf), &closed), 0);
  assert_true(closed);
  assert_int_equal(read_flag(&g_stop_done), 0);
  on_loop(stop_release, NULL);
  raw_read_all(busy, buf, sizeof(buf), &closed);
  assert_true(closed);
  assert_non_null(strstr(buf, "HTTP/1.1 200 OK\r\n"));
  assert_non_null(strstr(buf, "Connection: close\r\n"));
  assert_non_null(strstr(buf, "\r\n\r\nheld\n"));
  close(idle);
  close(busy);
  int done = 0;
  for (int i = 0; i < 200 && !done; i++) {
    done = read_flag(&g_stop_done);
    if (!done) usleep(10000);
  }
  assert_int_equal(done, 1);
  assert_true(counter("capstan_http_files_requests_total", "kind=\"static\",result=\"ok\"") >= 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_get_file),
      cmocka_unit_test(test_get_cnf_xml),
      cmocka_unit_test(test_head),
      cmocka_unit_test(test_not_found_denied_error),
      cmocka_unit_test(test_async_and_big),
      cmocka_unit_test(test_keep_alive_reuses_connection),
      cmocka_unit_test(test_pipelined_in_order),
      cmocka_unit_test(test_smuggling_shapes),
      cmocka_unit_test(test_oversized),
      cmocka_unit_test(test_methods_and_bodies),
      cmocka_unit_test(test_allowed_bodies),
      cmocka_unit_test(test_error_survives_unread_bytes),
      cmocka_unit_test(test_garbage),
      cmocka_unit_test(test_path_checks),
      cmocka_unit_test(test_slowloris),
      cmocka_unit_test(test_connection_limits),
      cmocka_unit_test(test_limits_live),
      cmocka_unit_test(test_admin),
      cmocka_unit_test(test_ipv6_and_addresses),
      cmocka_unit_test(test_stop_lets_inflight_finish),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
