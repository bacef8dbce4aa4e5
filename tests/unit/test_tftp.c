/* TFTP server tests: a libuv loop in a thread runs the server on 127.0.0.1
 * (port 0) over a test file source; real clients (tftp-hpa, atftp, curl)
 * run as subprocesses, and a raw UDP socket plays a hostile or precise
 * client. Every wait is bounded. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "core/base/error.h"
#include "core/files/source.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "handlers/tftp/tftp.h"
#include "handlers/tftp/tftp_packet.h"

/* ---- fixture: files ------------------------------------------------------ */

#define MIB (1024 * 1024)
#define BIG_SIZE 600000 /* with blksize 8: 75001 blocks, past the 16-bit rollover */

static char g_dir[64];

typedef struct {
  const char *name;
  uint8_t *data;
  size_t len;
} test_file_t;

static test_file_t g_files[] = {
    {"small.txt", NULL, 0},    {"config.xml", NULL, 0}, {"firmware.bin", NULL, 0},
    {"empty.bin", NULL, 0},    {"exact.bin", NULL, 0},  {"exact1468.bin", NULL, 0},
    {"netascii.txt", NULL, 0}, {"big.bin", NULL, 0},
};
enum { F_SMALL, F_CONFIG, F_FIRMWARE, F_EMPTY, F_EXACT, F_EXACT1468, F_NETASCII, F_BIG, F_COUNT };

static uint64_t g_rng = 0x2545F4914F6CDD1Dull;
static uint8_t rnd8(void) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (uint8_t)(g_rng >> 24);
}

static void make_file(int idx, size_t len, int printable) {
  test_file_t *f = &g_files[idx];
  f->len = len;
  f->data = malloc(len ? len : 1);
  assert_non_null(f->data);
  for (size_t i = 0; i < len; i++) f->data[i] = printable ? (uint8_t)('a' + rnd8() % 26) : rnd8();
  char path[256];
  snprintf(path, sizeof(path), "%s/%s", g_dir, f->name);
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  assert_int_equal(fwrite(f->data, 1, len, fp), len);
  fclose(fp);
}

static int read_file(const char *path, uint8_t **out, size_t *len) {
  FILE *fp = fopen(path, "rb");
  if (fp == NULL) return -1;
  size_t cap = 4096, n = 0;
  uint8_t *buf = malloc(cap);
  for (;;) {
    if (n == cap) buf = realloc(buf, cap *= 2);
    size_t r = fread(buf + n, 1, cap - n, fp);
    if (r == 0) break;
    n += r;
  }
  fclose(fp);
  *out = buf;
  *len = n;
  return 0;
}

/* ---- fixture: file source -------------------------------------------------- */

static pthread_mutex_t g_name_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_last_name[300];

typedef struct {
  uv_timer_t timer;
  capstan_file_cb cb;
  void *ctx;
} async_open_t;

static capstan_blob_t *load_blob(const char *name) {
  char path[512];
  snprintf(path, sizeof(path), "%s/%s", g_dir, name);
  uint8_t *data;
  size_t len;
  if (read_file(path, &data, &len) != 0) return NULL;
  capstan_blob_t *b = capstan_blob_new(data, len);
  free(data);
  return b;
}

static void async_closed(uv_handle_t *h) {
  free(h->data);
}

static void async_fire(uv_timer_t *timer) {
  async_open_t *a = timer->data;
  capstan_blob_t *b = load_blob("config.xml");
  a->cb(a->ctx, b ? 0 : CAPSTAN_EIO, b, CAPSTAN_FILE_STATIC);
  uv_close((uv_handle_t *)&a->timer, async_closed);
}

/* Serves g_dir. "async.bin" answers config.xml after 30 ms from a timer;
 * "denied.bin" and names with '/' are refused (CAPSTAN_EACCES), as a real
 * source refuses traversal; "broken.bin" fails with CAPSTAN_EIO. */
static void test_source_open(capstan_filesource_t *src, const char *name, capstan_file_cb cb,
                             void *ctx) {
  pthread_mutex_lock(&g_name_lock);
  snprintf(g_last_name, sizeof(g_last_name), "%s", name);
  pthread_mutex_unlock(&g_name_lock);
  if (strcmp(name, "async.bin") == 0) {
    async_open_t *a = calloc(1, sizeof(*a));
    assert_non_null(a);
    a->cb = cb;
    a->ctx = ctx;
    uv_timer_init((uv_loop_t *)src->impl, &a->timer);
    a->timer.data = a;
    uv_timer_start(&a->timer, async_fire, 30, 0);
    return;
  }
  if (strcmp(name, "denied.bin") == 0 || strchr(name, '/') != NULL) {
    cb(ctx, CAPSTAN_EACCES, NULL, CAPSTAN_FILE_OTHER);
    return;
  }
  if (strcmp(name, "broken.bin") == 0) {
    cb(ctx, CAPSTAN_EIO, NULL, CAPSTAN_FILE_OTHER);
    return;
  }
  capstan_blob_t *b = load_blob(name);
  if (b == NULL) {
    cb(ctx, CAPSTAN_ENOENT, NULL, capstan_file_kind_of(name));
    return;
  }
  cb(ctx, 0, b, CAPSTAN_FILE_STATIC);
}

/* ---- fixture: loop thread ------------------------------------------------- */

static uv_loop_t g_loop;
static uv_async_t g_stop_async;
static pthread_t g_thread;
static capstan_filesource_t g_source;
/* main: the defaults; small: max 2 transfers; slow: a fixed 10 s RTO, so
 * that within a test only ACKs can cause a resend; short: 300 ms RTO and 3
 * retries, for the timeout test. */
static capstan_tftp_server_t *g_main, *g_small, *g_slow, *g_short;
static int g_port, g_small_port, g_slow_port, g_short_port;
static int g_stopped;

static void server_done(void *arg) {
  (*(int *)arg)++;
}

/* Runs fn(arg) on the loop thread and waits for it (servers are started and
 * stopped there). */
static pthread_mutex_t g_call_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_call_cond = PTHREAD_COND_INITIALIZER;
static uv_async_t g_call_async;
static void (*g_call_fn)(void *);
static void *g_call_arg;
static int g_call_done;

static void on_call(uv_async_t *a) {
  pthread_mutex_lock(&g_call_lock);
  void (*fn)(void *) = g_call_fn;
  void *arg = g_call_arg;
  pthread_mutex_unlock(&g_call_lock);
  if (fn == NULL) return;
  fn(arg);
  pthread_mutex_lock(&g_call_lock);
  g_call_fn = NULL;
  g_call_done = 1;
  pthread_cond_signal(&g_call_cond);
  pthread_mutex_unlock(&g_call_lock);
}

static void run_on_loop(void (*fn)(void *), void *arg) {
  pthread_mutex_lock(&g_call_lock);
  g_call_fn = fn;
  g_call_arg = arg;
  g_call_done = 0;
  pthread_mutex_unlock(&g_call_lock);
  uv_async_send(&g_call_async);
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 10;
  pthread_mutex_lock(&g_call_lock);
  while (!g_call_done) {
    if (pthread_cond_timedwait(&g_call_cond, &g_call_lock, &deadline) != 0) break;
  }
  int done = g_call_done;
  pthread_mutex_unlock(&g_call_lock);
  assert_true(done);
}

static void on_stop(uv_async_t *a) {
  capstan_tftp_server_stop(g_main, server_done, &g_stopped);
  capstan_tftp_server_stop(g_small, server_done, &g_stopped);
  capstan_tftp_server_stop(g_slow, server_done, &g_stopped);
  capstan_tftp_server_stop(g_short, server_done, &g_stopped);
  uv_close((uv_handle_t *)a, NULL);
  uv_close((uv_handle_t *)&g_call_async, NULL);
}

static void *loop_thread(void *arg) {
  uv_run(&g_loop, UV_RUN_DEFAULT);
  return NULL;
}

static int group_setup(void **state) {
  capstan_log_init();
  signal(SIGPIPE, SIG_IGN);
  snprintf(g_dir, sizeof(g_dir), "/tmp/capstan-tftp-XXXXXX");
  if (mkdtemp(g_dir) == NULL) return -1;
  make_file(F_SMALL, 13, 1);
  make_file(F_CONFIG, 4096, 1);
  make_file(F_FIRMWARE, MIB, 0);
  make_file(F_EMPTY, 0, 0);
  make_file(F_EXACT, 1024, 0);
  make_file(F_EXACT1468, 1468 * 3, 0);
  make_file(F_BIG, BIG_SIZE, 0);
  {
    static const char text[] =
        "line one\nline two\r\nbare cr\rend\n\n\r\rtrailing text without newline";
    test_file_t *f = &g_files[F_NETASCII];
    f->len = sizeof(text) - 1;
    f->data = malloc(f->len);
    memcpy(f->data, text, f->len);
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", g_dir, f->name);
    FILE *fp = fopen(path, "wb");
    fwrite(f->data, 1, f->len, fp);
    fclose(fp);
  }
  if (uv_loop_init(&g_loop) != 0) return -1;
  g_source.open = test_source_open;
  g_source.impl = &g_loop;
  capstan_tftp_config_t cfg;
  capstan_tftp_config_defaults(&cfg);
  cfg.max_transfers_per_address = 8; /* the limit tests hold 8 */
  if (capstan_tftp_server_start(&g_loop, "127.0.0.1:0", &cfg, &g_source, &g_main) != 0) return -1;
  cfg.max_transfers = 2;
  if (capstan_tftp_server_start(&g_loop, "127.0.0.1:0", &cfg, &g_source, &g_small) != 0) return -1;
  capstan_tftp_config_defaults(&cfg);
  cfg.default_timeout_ms = 10000;
  cfg.min_timeout_ms = 10000;
  if (capstan_tftp_server_start(&g_loop, "127.0.0.1:0", &cfg, &g_source, &g_slow) != 0) return -1;
  capstan_tftp_config_defaults(&cfg);
  cfg.default_timeout_ms = 300;
  cfg.max_retries = 3;
  if (capstan_tftp_server_start(&g_loop, "127.0.0.1:0", &cfg, &g_source, &g_short) != 0) return -1;
  g_port = capstan_tftp_server_port(g_main);
  g_small_port = capstan_tftp_server_port(g_small);
  g_slow_port = capstan_tftp_server_port(g_slow);
  g_short_port = capstan_tftp_server_port(g_short);
  if (g_port <= 0 || g_small_port <= 0 || g_slow_port <= 0 || g_short_port <= 0) return -1;
  uv_async_init(&g_loop, &g_stop_async, on_stop);
  uv_async_init(&g_loop, &g_call_async, on_call);
  if (pthread_create(&g_thread, NULL, loop_thread, NULL) != 0) return -1;
  return 0;
}

static int group_teardown(void **state) {
  uv_async_send(&g_stop_async);
  pthread_join(g_thread, NULL);
  int rc = uv_loop_close(&g_loop);
  for (int i = 0; i < F_COUNT; i++) {
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", g_dir, g_files[i].name);
    unlink(path);
    free(g_files[i].data);
  }
  rmdir(g_dir);
  /* Every server called |done| and every handle is closed. */
  return (rc == 0 && g_stopped == 4) ? 0 : -1;
}

/* ---- metrics --------------------------------------------------------------- */

static double counter(const char *name, const char *labels) {
  return capstan_metric_value(capstan_metrics_counter(name, "", labels));
}

static double active_transfers(void) {
  return capstan_metric_value(capstan_metrics_gauge("capstan_tftp_active_transfers", "", NULL));
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Waits (at most |secs|) for every transfer to end. */
static void wait_idle(int secs) {
  for (int i = 0; i < secs * 100 && active_transfers() != 0; i++) sleep_ms(10);
  assert_true(active_transfers() == 0);
}

/* ---- subprocess clients ---------------------------------------------------- */

/* Runs argv with stdio on /dev/null; kills it after |secs|. Returns the
 * exit status, or -1 if it had to be killed. */
static int run(char *const argv[], int secs) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    dup2(devnull, 1);
    dup2(devnull, 2);
    execvp(argv[0], argv);
    _exit(127);
  }
  int status;
  for (int i = 0; i < secs * 100; i++) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    sleep_ms(10);
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

static void local_path(char *out, size_t cap, const char *tag) {
  snprintf(out, cap, "%s/out-%s", g_dir, tag);
}

static void assert_local_equals(const char *path, const uint8_t *data, size_t len) {
  uint8_t *got = NULL;
  size_t n = 0;
  assert_int_equal(read_file(path, &got, &n), 0);
  assert_int_equal(n, len);
  assert_memory_equal(got, data, len);
  free(got);
  unlink(path);
}

static void tftp_hpa_get(const char *name, const char *mode, const test_file_t *expect) {
  char port[16], local[256], cmd[600];
  snprintf(port, sizeof(port), "%d", g_port);
  local_path(local, sizeof(local), "hpa");
  unlink(local);
  snprintf(cmd, sizeof(cmd), "get %s %s", name, local);
  char *argv[] = {"tftp", "-m",  (char *)mode, "127.0.0.1", port,
                  "-c",   "get", (char *)name, local,       NULL};
  (void)cmd;
  assert_int_equal(run(argv, 60), 0);
  assert_local_equals(local, expect->data, expect->len);
}

static void atftp_get(const char *name, const char *const *opts, const test_file_t *expect) {
  char port[16], local[256];
  snprintf(port, sizeof(port), "%d", g_port);
  local_path(local, sizeof(local), "atftp");
  unlink(local);
  char *argv[32];
  int n = 0;
  argv[n++] = "atftp";
  argv[n++] = "--get";
  argv[n++] = "-r";
  argv[n++] = (char *)name;
  argv[n++] = "-l";
  argv[n++] = local;
  for (; opts && *opts; opts++) {
    argv[n++] = "--option";
    argv[n++] = (char *)*opts;
  }
  argv[n++] = "127.0.0.1";
  argv[n++] = port;
  argv[n] = NULL;
  assert_int_equal(run(argv, 60), 0);
  assert_local_equals(local, expect->data, expect->len);
}

static void curl_get_port(int port_num, const char *name, const char *blksize, const uint8_t *data,
                          size_t len) {
  char url[512], local[256];
  snprintf(url, sizeof(url), "tftp://127.0.0.1:%d/%s", port_num, name);
  local_path(local, sizeof(local), "curl");
  unlink(local);
  char *argv[] = {"curl",          "-s", "-S",  "--max-time", "30", "--tftp-blksize",
                  (char *)blksize, "-o", local, url,          NULL};
  assert_int_equal(run(argv, 60), 0);
  assert_local_equals(local, data, len);
}

static void curl_get(const char *name, const char *blksize, const test_file_t *expect) {
  curl_get_port(g_port, name, blksize, expect->data, expect->len);
}

/* After every hostile case: a normal client still downloads correctly. */
static void check_normal_download(void) {
  curl_get("config.xml", "1468", &g_files[F_CONFIG]);
}

/* ---- raw client ----------------------------------------------------------- */

static int raw_open(void) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  int big = 4 * MIB;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
  return fd;
}

static void raw_send(int fd, int port, const void *pkt, size_t len) {
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((uint16_t)port);
  assert_int_equal(sendto(fd, pkt, len, 0, (struct sockaddr *)&a, sizeof(a)), (ssize_t)len);
}

/* Receives one datagram within |ms|; returns its length or -1. */
static ssize_t raw_recv(int fd, uint8_t *buf, size_t cap, int ms, int *from_port) {
  struct pollfd p = {fd, POLLIN, 0};
  if (poll(&p, 1, ms) <= 0) return -1;
  struct sockaddr_in a;
  socklen_t alen = sizeof(a);
  ssize_t n = recvfrom(fd, buf, cap, 0, (struct sockaddr *)&a, &alen);
  if (n >= 0 && from_port) *from_port = ntohs(a.sin_port);
  return n;
}

static size_t build_rrq(uint8_t *buf, const char *name, const char *mode, const char *const *opts) {
  size_t n = 0;
  buf[n++] = 0;
  buf[n++] = 1;
  memcpy(buf + n, name, strlen(name) + 1);
  n += strlen(name) + 1;
  memcpy(buf + n, mode, strlen(mode) + 1);
  n += strlen(mode) + 1;
  for (; opts && *opts; opts++) {
    memcpy(buf + n, *opts, strlen(*opts) + 1);
    n += strlen(*opts) + 1;
  }
  return n;
}

static void send_ack(int fd, int port, uint16_t block) {
  uint8_t ack[4] = {0, 4, (uint8_t)(block >> 8), (uint8_t)block};
  raw_send(fd, port, ack, 4);
}

static void send_err(int fd, int port) {
  static const uint8_t err[] = {0, 5, 0, 0, 'b', 'y', 'e', 0};
  raw_send(fd, port, err, sizeof(err));
}

/* Expects an ERROR packet with |code| (and |msg| if not NULL). */
static void expect_error(int fd, uint16_t code, const char *msg) {
  uint8_t buf[600];
  ssize_t n = raw_recv(fd, buf, sizeof(buf), 3000, NULL);
  assert_true(n >= 5);
  assert_int_equal(buf[0], 0);
  assert_int_equal(buf[1], 5);
  assert_int_equal((buf[2] << 8) | buf[3], code);
  assert_int_equal(buf[n - 1], 0);
  if (msg != NULL) assert_string_equal((const char *)buf + 4, msg);
}

typedef struct {
  char oack[512]; /* "name=value;..." of the OACK, "" if none */
  uint64_t packets;
  uint64_t blocks_seen_twice;
} raw_stats_t;

/* Downloads |name| with a raw RRQ; |ws| is the window size the client
 * assumes (1 unless negotiated). Returns the data, or NULL on failure. */
static uint8_t *raw_download(int port, const char *name, const char *mode, const char *const *opts,
                             size_t *len, raw_stats_t *st) {
  int fd = raw_open();
  uint8_t pkt[70000];
  size_t n = build_rrq(pkt, name, mode, opts);
  raw_send(fd, port, pkt, n);
  size_t cap = 1 << 16, got = 0;
  uint8_t *out = malloc(cap);
  unsigned blksize = 512, ws = 1, in_window = 0;
  uint16_t expect = 1;
  int tid = -1, fails = 0;
  memset(st, 0, sizeof(*st));
  for (;;) {
    int from;
    ssize_t r = raw_recv(fd, pkt, sizeof(pkt), 1000, &from);
    if (r < 0) {
      if (++fails > 5 || tid < 0) goto fail;
      send_ack(fd, tid, (uint16_t)(expect - 1));
      continue;
    }
    if (tid < 0) tid = from;
    if (from != tid || r < 4) goto fail;
    st->packets++;
    uint16_t op = (uint16_t)((pkt[0] << 8) | pkt[1]);
    if (op == 6 && expect == 1 && got == 0) {
      /* OACK: "name\0value\0"... rendered as "name=value;..." */
      size_t o = 0, i = 2;
      while (i < (size_t)r) {
        const char *k = (const char *)pkt + i;
        size_t kl = strnlen(k, (size_t)r - i);
        if (i + kl >= (size_t)r) goto fail;
        const char *v = k + kl + 1;
        size_t vl = strnlen(v, (size_t)r - i - kl - 1);
        if (i + kl + 1 + vl >= (size_t)r) goto fail;
        if (strcmp(k, "blksize") == 0) blksize = (unsigned)atoi(v);
        if (strcmp(k, "windowsize") == 0) ws = (unsigned)atoi(v);
        o += (size_t)snprintf(st->oack + o, sizeof(st->oack) - o, "%s=%s;", k, v);
        if (o >= sizeof(st->oack)) goto fail;
        i += kl + vl + 2;
      }
      send_ack(fd, tid, 0);
      continue;
    }
    if (op != 3) goto fail;
    uint16_t block = (uint16_t)((pkt[2] << 8) | pkt[3]);
    size_t plen = (size_t)r - 4;
    if (block != expect) {
      st->blocks_seen_twice++;
      send_ack(fd, tid, (uint16_t)(expect - 1));
      in_window = 0;
      continue;
    }
    fails = 0;
    if (got + plen > cap) out = realloc(out, cap = (got + plen) * 2);
    memcpy(out + got, pkt + 4, plen);
    got += plen;
    expect++;
    in_window++;
    if (plen < blksize) {
      send_ack(fd, tid, block);
      break;
    }
    if (in_window >= ws) {
      send_ack(fd, tid, block);
      in_window = 0;
    }
  }
  close(fd);
  *len = got;
  return out;
fail:
  close(fd);
  free(out);
  return NULL;
}

static void raw_download_expect(int port, const char *name, const char *mode,
                                const char *const *opts, const uint8_t *data, size_t len,
                                const char *oack) {
  raw_stats_t st;
  size_t n;
  uint8_t *got = raw_download(port, name, mode, opts, &n, &st);
  assert_non_null(got);
  assert_int_equal(n, len);
  assert_memory_equal(got, data, len);
  assert_string_equal(st.oack, oack);
  free(got);
}

/* ---- tests: real clients --------------------------------------------------- */

static void test_tftp_hpa_client(void **state) {
  tftp_hpa_get("small.txt", "binary", &g_files[F_SMALL]);
  tftp_hpa_get("config.xml", "binary", &g_files[F_CONFIG]);
  tftp_hpa_get("firmware.bin", "binary", &g_files[F_FIRMWARE]);
  tftp_hpa_get("empty.bin", "binary", &g_files[F_EMPTY]);
  tftp_hpa_get("exact.bin", "binary", &g_files[F_EXACT]);
  /* netascii: the client decodes CR LF / CR NUL back to the original. */
  tftp_hpa_get("netascii.txt", "netascii", &g_files[F_NETASCII]);
  wait_idle(5);
}

static void test_atftp_client(void **state) {
  static const char *const opts[] = {"blksize 1468", "tsize enable", "windowsize 4", NULL};
  static const char *const plain[] = {"blksize disable", "tsize disable", NULL};
  atftp_get("small.txt", opts, &g_files[F_SMALL]);
  atftp_get("config.xml", opts, &g_files[F_CONFIG]);
  atftp_get("firmware.bin", opts, &g_files[F_FIRMWARE]);
  atftp_get("empty.bin", opts, &g_files[F_EMPTY]);
  atftp_get("exact1468.bin", opts, &g_files[F_EXACT1468]);
  atftp_get("exact.bin", plain, &g_files[F_EXACT]);
  wait_idle(5);
}

static void test_curl_client(void **state) {
  double before = counter("capstan_tftp_transfers_total", "kind=\"static\",result=\"ok\"");
  curl_get("small.txt", "1468", &g_files[F_SMALL]);
  curl_get("config.xml", "1468", &g_files[F_CONFIG]);
  curl_get("firmware.bin", "1468", &g_files[F_FIRMWARE]);
  curl_get("empty.bin", "512", &g_files[F_EMPTY]);
  curl_get("exact.bin", "512", &g_files[F_EXACT]);
  curl_get("exact1468.bin", "1468", &g_files[F_EXACT1468]);
  /* The source answers this one later, from a timer. */
  curl_get("async.bin", "1468", &g_files[F_CONFIG]);
  wait_idle(5);
  assert_true(counter("capstan_tftp_transfers_total", "kind=\"static\",result=\"ok\"") >=
              before + 7);
}

/* ---- tests: raw protocol --------------------------------------------------- */

static void test_raw_options(void **state) {
  const test_file_t *cfg = &g_files[F_CONFIG];
  char tsize[64];
  /* No options: no OACK, 512-byte blocks. */
  raw_download_expect(g_port, "config.xml", "octet", NULL, cfg->data, cfg->len, "");
  /* Mode is case-insensitive. */
  raw_download_expect(g_port, "config.xml", "OcTeT", NULL, cfg->data, cfg->len, "");
  /* Option names are case-insensitive; the OACK uses our spelling. */
  static const char *const o1[] = {"BlkSize", "1024", "TSIZE", "0", NULL};
  snprintf(tsize, sizeof(tsize), "blksize=1024;tsize=%zu;", cfg->len);
  raw_download_expect(g_port, "config.xml", "octet", o1, cfg->data, cfg->len, tsize);
  /* Clamped to max_blksize / max_windowsize. */
  static const char *const o2[] = {"blksize", "65464", "windowsize", "100", NULL};
  raw_download_expect(g_port, "firmware.bin", "octet", o2, g_files[F_FIRMWARE].data,
                      g_files[F_FIRMWARE].len, "blksize=1468;windowsize=16;");
  static const char *const o3[] = {"blksize", "8", "timeout", "3", NULL};
  raw_download_expect(g_port, "small.txt", "octet", o3, g_files[F_SMALL].data, g_files[F_SMALL].len,
                      "blksize=8;timeout=3;");
  /* Out of range, non-numeric, value-less, duplicated and unknown options
   * are ignored: no OACK at all, plain 512-byte transfer. */
  static const char *const bad[][7] = {
      {"blksize", "0", NULL},
      {"blksize", "7", NULL},
      {"blksize", "65465", NULL},
      {"blksize", "99999999", NULL},
      {"blksize", "99999999999999999999999", NULL},
      {"blksize", "-512", NULL},
      {"blksize", "", NULL},
      {"windowsize", "0", NULL},
      {"windowsize", "65536", NULL},
      {"timeout", "0", NULL},
      {"timeout", "256", NULL},
      {"blksize", "1024", "blksize", "1024", NULL},
      {"multicast", "1", "foo", "bar", NULL},
      {"blksize", NULL},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    raw_download_expect(g_port, "config.xml", "octet", bad[i], cfg->data, cfg->len, "");
  }
  /* Partly valid: only the valid option is acknowledged. */
  static const char *const o4[] = {"blksize", "1", "tsize", "0", "windowsize", "2", NULL};
  snprintf(tsize, sizeof(tsize), "tsize=%zu;windowsize=2;", cfg->len);
  raw_download_expect(g_port, "config.xml", "octet", o4, cfg->data, cfg->len, tsize);
  /* Exact multiples of the block size end with an empty data block. */
  static const char *const o5[] = {"blksize", "1468", "windowsize", "3", NULL};
  raw_download_expect(g_port, "exact1468.bin", "octet", o5, g_files[F_EXACT1468].data,
                      g_files[F_EXACT1468].len, "blksize=1468;windowsize=3;");
  raw_download_expect(g_port, "empty.bin", "octet", o5, (const uint8_t *)"", 0,
                      "blksize=1468;windowsize=3;");
  wait_idle(5);
  assert_true(counter("capstan_tftp_options_negotiated_total", "option=\"windowsize\"") >= 3);
  check_normal_download();
}

/* The netascii wire form of |f| (LF -> CR LF, CR -> CR NUL) into |enc|
 * (room for 2 * f->len bytes); returns its length. */
static size_t encode_netascii(const test_file_t *f, uint8_t *enc) {
  size_t n = 0;
  for (size_t i = 0; i < f->len; i++) {
    if (f->data[i] == '\n') {
      enc[n++] = '\r';
      enc[n++] = '\n';
    } else if (f->data[i] == '\r') {
      enc[n++] = '\r';
      enc[n++] = 0;
    } else {
      enc[n++] = f->data[i];
    }
  }
  return n;
}

static void test_raw_netascii(void **state) {
  const test_file_t *f = &g_files[F_NETASCII];
  uint8_t enc[256];
  size_t n = encode_netascii(f, enc);
  raw_download_expect(g_port, "netascii.txt", "netascii", NULL, enc, n, "");
  /* Tiny blocks and a window: pairs straddle blocks; tsize is the encoded
   * size. */
  static const char *const o[] = {"blksize", "8", "windowsize", "3", "tsize", "0", NULL};
  char oack[96];
  snprintf(oack, sizeof(oack), "blksize=8;tsize=%zu;windowsize=3;", n);
  raw_download_expect(g_port, "netascii.txt", "NETASCII", o, enc, n, oack);
  wait_idle(5);
  check_normal_download();
}

static void test_raw_rollover(void **state) {
  /* 75001 blocks of 8 bytes: block numbers wrap from 65535 to 0. */
  static const char *const o[] = {"blksize", "8", "windowsize", "16", NULL};
  raw_download_expect(g_slow_port, "big.bin", "octet", o, g_files[F_BIG].data, g_files[F_BIG].len,
                      "blksize=8;windowsize=16;");
  wait_idle(5);
}

static void test_not_found_denied_error(void **state) {
  uint8_t pkt[600];
  int fd = raw_open();
  double nf = counter("capstan_tftp_transfers_total", "kind=\"other\",result=\"not_found\"");
  size_t n = build_rrq(pkt, "nope.bin", "octet", NULL);
  raw_send(fd, g_port, pkt, n);
  expect_error(fd, 1, "File not found");
  /* Traversal names go to the source unchanged; it refuses them. */
  n = build_rrq(pkt, "../../etc/passwd", "octet", NULL);
  raw_send(fd, g_port, pkt, n);
  expect_error(fd, 2, "Access violation");
  pthread_mutex_lock(&g_name_lock);
  assert_string_equal(g_last_name, "../../etc/passwd");
  pthread_mutex_unlock(&g_name_lock);
  n = build_rrq(pkt, "denied.bin", "octet", NULL);
  raw_send(fd, g_port, pkt, n);
  expect_error(fd, 2, "Access violation");
  n = build_rrq(pkt, "broken.bin", "octet", NULL);
  raw_send(fd, g_port, pkt, n);
  expect_error(fd, 0, NULL);
  /* A 255-byte name is allowed (and not found); 256 bytes is refused. */
  char name[300];
  memset(name, 'a', 255);
  name[255] = '\0';
  n = build_rrq(pkt, name, "octet", NULL);
  raw_send(fd, g_port, pkt, n);
  expect_error(fd, 1, "File not found");
  close(fd);
  wait_idle(5);
  assert_true(counter("capstan_tftp_transfers_total", "kind=\"other\",result=\"not_found\"") >=
              nf + 2);
  check_normal_download();
}

static void test_malformed_requests(void **state) {
  double malformed = counter("capstan_tftp_rejections_total", "reason=\"malformed\"");
  double opcode = counter("capstan_tftp_rejections_total", "reason=\"bad_opcode\"");
  double badname = counter("capstan_tftp_rejections_total", "reason=\"bad_name\"");
  double badmode = counter("capstan_tftp_rejections_total", "reason=\"bad_mode\"");
  double oversized = counter("capstan_tftp_rejections_total", "reason=\"oversized\"");
  double large = counter("capstan_tftp_large_requests_total", "");
  int fd = raw_open();
  struct {
    const char *bytes;
    size_t len;
  } cases[] = {
      {"", 0},                 /* empty datagram */
      {"\0", 1},               /* truncated opcode */
      {"\0\1", 2},             /* RRQ without a name */
      {"\0\1file", 6},         /* name without NUL */
      {"\0\1file\0", 7},       /* no mode */
      {"\0\1file\0octet", 12}, /* mode without NUL */
      {"\0\1file\0octet\0blksize\0"
       "512",
       24},                          /* value without NUL */
      {"\0\0file\0octet\0", 13},     /* opcode 0 */
      {"\0\6file\0octet\0", 13},     /* opcode 6 (OACK) */
      {"\0\377file\0octet\0", 13},   /* opcode 255 */
      {"\0\3\0\1data", 8},           /* DATA to the listener */
      {"\0\4\0\1", 4},               /* ACK to the listener */
      {"\0\1\0octet\0", 9},          /* empty name */
      {"\0\1fi\1le\0octet\0", 15},   /* control character */
      {"\0\1fi\177le\0octet\0", 15}, /* DEL */
      {"\0\1file\0mail\0", 12},      /* mode mail */
      {"\0\1file\0octets\0", 14},    /* unknown mode */
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    raw_send(fd, g_port, cases[i].bytes, cases[i].len);
    expect_error(fd, 4, "Illegal TFTP operation");
  }
  uint8_t pkt[1500];
  /* 256-byte name. */
  char name[300];
  memset(name, 'b', 256);
  name[256] = '\0';
  size_t n = build_rrq(pkt, name, "octet", NULL);
  raw_send(fd, g_port, pkt, n);
  expect_error(fd, 4, "Illegal TFTP operation");
  /* Over 1024 bytes: refused. */
  memset(pkt, 'x', sizeof(pkt));
  memcpy(pkt, "\0\1config.xml\0octet\0", 19);
  pkt[1099] = 0;
  raw_send(fd, g_port, pkt, 1100);
  expect_error(fd, 4, "Illegal TFTP operation");
  /* An ERROR packet to the listener is never answered. */
  raw_send(fd, g_port, "\0\5\0\0x\0", 6);
  uint8_t buf[600];
  assert_true(raw_recv(fd, buf, sizeof(buf), 300, NULL) < 0);
  close(fd);
  /* 513..1024 bytes: accepted (unknown padding option ignored), counted. */
  char pad[700];
  memset(pad, 'p', 650);
  pad[650] = '\0';
  const char *opts[] = {"padding", pad, NULL};
  raw_download_expect(g_port, "config.xml", "octet", opts, g_files[F_CONFIG].data,
                      g_files[F_CONFIG].len, "");
  assert_true(counter("capstan_tftp_rejections_total", "reason=\"malformed\"") >= malformed + 7);
  assert_true(counter("capstan_tftp_rejections_total", "reason=\"bad_opcode\"") >= opcode + 6);
  assert_true(counter("capstan_tftp_rejections_total", "reason=\"bad_name\"") >= badname + 4);
  assert_true(counter("capstan_tftp_rejections_total", "reason=\"bad_mode\"") >= badmode + 2);
  assert_true(counter("capstan_tftp_rejections_total", "reason=\"oversized\"") >= oversized + 1);
  assert_true(counter("capstan_tftp_large_requests_total", "") >= large + 1);
  wait_idle(5);
  check_normal_download();
}

static void test_write_request(void **state) {
  double before = counter("capstan_tftp_rejections_total", "reason=\"write_request\"");
  int fd = raw_open();
  uint8_t pkt[100];
  size_t n = build_rrq(pkt, "upload.bin", "octet", NULL);
  pkt[1] = 2;
  raw_send(fd, g_port, pkt, n);
  expect_error(fd, 2, "write requests are not supported");
  close(fd);
  assert_true(counter("capstan_tftp_rejections_total", "reason=\"write_request\"") == before + 1);
  /* The real client reports the failure. */
  char port[16], local[256];
  snprintf(port, sizeof(port), "%d", g_port);
  snprintf(local, sizeof(local), "%s/small.txt", g_dir);
  char *argv[] = {"tftp", "-m", "binary", "127.0.0.1", port, "-c", "put", local, "up.bin", NULL};
  (void)run(argv, 30);
  assert_true(counter("capstan_tftp_rejections_total", "reason=\"write_request\"") == before + 2);
  check_normal_download();
}

/* Starts a raw transfer of |name| and returns the socket after receiving
 * the first DATA block; *tid gets the transfer port. */
static int start_held_transfer(int port, const char *name, int *tid) {
  const test_file_t *f = NULL;
  for (int i = 0; i < F_COUNT; i++) {
    if (strcmp(g_files[i].name, name) == 0) f = &g_files[i];
  }
  assert_non_null(f);
  int fd = raw_open();
  uint8_t pkt[2000];
  size_t n = build_rrq(pkt, name, "octet", NULL);
  raw_send(fd, port, pkt, n);
  ssize_t r = raw_recv(fd, pkt, sizeof(pkt), 3000, tid);
  assert_int_equal(r, 516);
  assert_int_equal(pkt[1], 3);
  assert_int_equal(pkt[3], 1);
  assert_memory_equal(pkt + 4, f->data, 512);
  return fd;
}

/* Sends an RRQ with |opts| to the slow server, expects its OACK and
 * acknowledges it; returns the socket, *tid gets the transfer port. */
static int start_acked_oack(const char *name, const char *mode, const char *const *opts, int *tid) {
  int fd = raw_open();
  uint8_t pkt[2000];
  size_t n = build_rrq(pkt, name, mode, opts);
  raw_send(fd, g_slow_port, pkt, n);
  assert_true(raw_recv(fd, pkt, sizeof(pkt), 3000, tid) > 2);
  assert_int_equal(pkt[1], 6);
  send_ack(fd, *tid, 0);
  return fd;
}

/* Finishes a held transfer of config.xml (block 1 received): acknowledges
 * blocks 1-8, checking blocks 2-9 as they come, ACKs the last, closes. */
static void finish_held_config(int fd, int tid) {
  uint8_t pkt[600];
  for (int b = 1; b <= 8; b++) {
    send_ack(fd, tid, (uint16_t)b);
    ssize_t r = raw_recv(fd, pkt, sizeof(pkt), 3000, NULL);
    assert_int_equal(r, b == 8 ? 4 : 516);
    assert_int_equal(pkt[3], b + 1);
    if (r > 4) assert_memory_equal(pkt + 4, g_files[F_CONFIG].data + b * 512, 512);
  }
  send_ack(fd, tid, 9);
  close(fd);
}

static void test_ack_storm(void **state) {
  wait_idle(10);
  double rexmit = counter("capstan_tftp_retransmits_total", "");
  double dups = counter("capstan_tftp_duplicate_acks_ignored_total", "");
  int tid = 0;
  /* On the slow server the RTO is 10 s: within this test only ACKs could
   * cause a resend, so there must be none at all. Phase 1: duplicates of
   * ACK 0 (the request) while block 1 is outstanding. */
  int fd = start_held_transfer(g_slow_port, "firmware.bin", &tid);
  uint8_t pkt[600];
  for (int i = 0; i < 1000; i++) send_ack(fd, tid, 0);
  send_ack(fd, tid, 40000); /* a block never sent */
  assert_true(raw_recv(fd, pkt, sizeof(pkt), 300, NULL) < 0);
  /* Phase 2: 1000 duplicate ACKs of block 1 while block 2 is outstanding. */
  send_ack(fd, tid, 1);
  assert_int_equal(raw_recv(fd, pkt, sizeof(pkt), 3000, NULL), 516);
  assert_int_equal(pkt[3], 2);
  assert_memory_equal(pkt + 4, g_files[F_FIRMWARE].data + 512, 512);
  for (int i = 0; i < 1000; i++) send_ack(fd, tid, 1);
  assert_true(raw_recv(fd, pkt, sizeof(pkt), 300, NULL) < 0);
  assert_true(counter("capstan_tftp_retransmits_total", "") == rexmit);
  /* Some of the 2000 may be dropped by the kernel; most arrive. */
  assert_true(counter("capstan_tftp_duplicate_acks_ignored_total", "") >= dups + 200);
  /* Then finish the download normally. */
  size_t got = 1024;
  uint16_t block = 2;
  uint8_t *out = malloc(MIB);
  memcpy(out, g_files[F_FIRMWARE].data, 1024); /* blocks 1-2 were compared on receipt */
  for (;;) {
    send_ack(fd, tid, block);
    ssize_t r = raw_recv(fd, pkt, sizeof(pkt), 3000, NULL);
    assert_true(r >= 4);
    assert_int_equal((pkt[2] << 8) | pkt[3], (uint16_t)(block + 1));
    size_t plen = r >= 4 ? (size_t)r - 4 : 0;
    assert_true(got + plen <= MIB);
    memcpy(out + got, pkt + 4, plen);
    got += plen;
    block++;
    if (r < 516) break;
  }
  send_ack(fd, tid, block);
  assert_int_equal(got, MIB);
  assert_memory_equal(out, g_files[F_FIRMWARE].data, MIB);
  free(out);
  close(fd);
  wait_idle(5);
  assert_true(counter("capstan_tftp_retransmits_total", "") == rexmit);
  check_normal_download();
}

static void test_window_goback_once(void **state) {
  wait_idle(10);
  double rexmit = counter("capstan_tftp_retransmits_total", "");
  static const char *const o[] = {"blksize", "512", "windowsize", "4", NULL};
  int tid = 0;
  int fd = start_acked_oack("config.xml", "octet", o, &tid);
  uint8_t pkt[2000];
  for (int b = 1; b <= 4; b++) {
    assert_int_equal(raw_recv(fd, pkt, sizeof(pkt), 3000, NULL), 516);
    assert_int_equal(pkt[3], b);
  }
  /* Pretend block 2 was lost: ACK 1, three times. The server goes back to
   * block 2 once (resends 2, 3, 4 and sends 5), ignoring the repeats. */
  send_ack(fd, tid, 1);
  send_ack(fd, tid, 1);
  send_ack(fd, tid, 1);
  for (int b = 2; b <= 5; b++) {
    assert_int_equal(raw_recv(fd, pkt, sizeof(pkt), 3000, NULL), 516);
    assert_int_equal(pkt[3], b);
    assert_memory_equal(pkt + 4, g_files[F_CONFIG].data + (b - 1) * 512, 512);
  }
  assert_true(raw_recv(fd, pkt, sizeof(pkt), 300, NULL) < 0);
  assert_true(counter("capstan_tftp_retransmits_total", "") == rexmit + 3);
  /* Finish: 4096 bytes = blocks 1-8 and an empty block 9. */
  send_ack(fd, tid, 5);
  for (int b = 6; b <= 9; b++) {
    ssize_t r = raw_recv(fd, pkt, sizeof(pkt), 3000, NULL);
    assert_int_equal(r, b == 9 ? 4 : 516);
    assert_int_equal(pkt[3], b);
  }
  send_ack(fd, tid, 9);
  close(fd);
  wait_idle(5);
  check_normal_download();
}

/* Netascii keeps the encoded packets of the window: a go-back resends the
 * very same bytes, and the encoder goes on where it was. */
static void test_netascii_goback(void **state) {
  wait_idle(10);
  uint8_t enc[256];
  size_t len = encode_netascii(&g_files[F_NETASCII], enc);
  size_t blocks = len / 8 + 1;
  static const char *const o[] = {"blksize", "8", "windowsize", "4", NULL};
  int tid = 0;
  int fd = start_acked_oack("netascii.txt", "netascii", o, &tid);
  uint8_t pkt[2000];
  for (int b = 1; b <= 4; b++) {
    assert_int_equal(raw_recv(fd, pkt, sizeof(pkt), 3000, NULL), 12);
    assert_int_equal(pkt[3], b);
    assert_memory_equal(pkt + 4, enc + (b - 1) * 8, 8);
  }
  send_ack(fd, tid, 1);
  uint8_t got[256];
  memcpy(got, enc, 8);
  size_t have = 8;
  uint16_t next = 2;
  for (;;) {
    ssize_t r = raw_recv(fd, pkt, sizeof(pkt), 3000, NULL);
    assert_true(r >= 4 && r <= 12);
    assert_int_equal((pkt[2] << 8) | pkt[3], next);
    size_t plen = r >= 4 && r <= 12 ? (size_t)r - 4 : 0;
    assert_true(have + plen <= sizeof(got));
    memcpy(got + have, pkt + 4, plen);
    have += plen;
    next++;
    if (r < 12) {
      send_ack(fd, tid, (uint16_t)(next - 1));
      break;
    }
    /* The window after the go-back is 2-5; then windows of 4. */
    if ((next - 2) % 4 == 0) send_ack(fd, tid, (uint16_t)(next - 1));
  }
  assert_int_equal(next - 1, blocks);
  assert_int_equal(have, len);
  assert_memory_equal(got, enc, len);
  close(fd);
  wait_idle(5);
}

static void test_wrong_port(void **state) {
  double wrong = counter("capstan_tftp_wrong_port_packets_total", "");
  int tid = 0;
  int fd = start_held_transfer(g_slow_port, "config.xml", &tid);
  int intruder = raw_open();
  send_ack(intruder, tid, 1);
  expect_error(intruder, 5, "Unknown transfer ID");
  /* An intruder's ERROR packet does not end the transfer either. */
  send_err(intruder, tid);
  close(intruder);
  finish_held_config(fd, tid);
  wait_idle(5);
  assert_true(counter("capstan_tftp_wrong_port_packets_total", "") == wrong + 2);
  check_normal_download();
}

static void test_client_stops_acking(void **state) {
  wait_idle(10);
  double timeouts = counter("capstan_tftp_timeouts_total", "");
  double result = counter("capstan_tftp_transfers_total", "kind=\"static\",result=\"timeout\"");
  double rexmit = counter("capstan_tftp_retransmits_total", "");
  int tid = 0;
  int fd = start_held_transfer(g_short_port, "firmware.bin", &tid);
  assert_true(active_transfers() == 1);
  /* No ACK: block 1 comes back max_retries (3) times, then nothing. */
  uint8_t pkt[600];
  int copies = 0;
  while (raw_recv(fd, pkt, sizeof(pkt), 2500, NULL) == 516) {
    assert_int_equal(pkt[3], 1);
    copies++;
    assert_true(copies <= 3);
  }
  assert_int_equal(copies, 3);
  wait_idle(10);
  close(fd);
  assert_true(counter("capstan_tftp_timeouts_total", "") == timeouts + 1);
  assert_true(counter("capstan_tftp_transfers_total", "kind=\"static\",result=\"timeout\"") ==
              result + 1);
  assert_true(counter("capstan_tftp_retransmits_total", "") == rexmit + 3);
  check_normal_download();
}

static void test_client_limit(void **state) {
  wait_idle(10);
  double before = counter("capstan_tftp_rejections_total", "reason=\"limit_per_address\"");
  int fds[8], tids[8] = {0};
  for (int i = 0; i < 8; i++) fds[i] = start_held_transfer(g_port, "firmware.bin", &tids[i]);
  assert_true(active_transfers() == 8);
  int extra = raw_open();
  uint8_t pkt[100];
  size_t n = build_rrq(pkt, "small.txt", "octet", NULL);
  raw_send(extra, g_port, pkt, n);
  expect_error(extra, 0, "server busy (too many transfers from this address), retry in 10 s");
  close(extra);
  assert_true(counter("capstan_tftp_rejections_total", "reason=\"limit_per_address\"") ==
              before + 1);
  /* The clients abort: everything is released. */
  for (int i = 0; i < 8; i++) {
    send_err(fds[i], tids[i]);
    close(fds[i]);
  }
  wait_idle(10);
  check_normal_download();
}

/* Sent from the loop thread while the loop is busy, so that both datagrams
 * are waiting when it polls: the new RRQ first, then the ERROR aborting
 * one of the client's transfers. */
typedef struct {
  int new_fd, old_fd, old_tid;
  const uint8_t *rrq;
  size_t rrq_len;
  int port; /* the server's; 0: the main one */
} abort_resend_t;

static void send_rrq_then_abort(void *arg) {
  abort_resend_t *a = arg;
  struct sockaddr_in to = {0};
  to.sin_family = AF_INET;
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  to.sin_port = htons((uint16_t)(a->port ? a->port : g_port));
  (void)sendto(a->new_fd, a->rrq, a->rrq_len, 0, (struct sockaddr *)&to, sizeof(to));
  static const uint8_t err[] = {0, 5, 0, 0, 'b', 'y', 'e', 0};
  to.sin_port = htons((uint16_t)a->old_tid);
  (void)sendto(a->old_fd, err, sizeof(err), 0, (struct sockaddr *)&to, sizeof(to));
}

/* A client at its limit aborts a transfer and at once asks again from a
 * new port: the ERROR waiting on the transfer socket is read before the
 * request is counted against the limit. */
static void test_client_limit_abort_then_request(void **state) {
  wait_idle(10);
  double busy = counter("capstan_tftp_rejections_total", "reason=\"limit_per_address\"");
  double aborted = counter("capstan_tftp_transfers_total", "kind=\"static\",result=\"error\"");
  int fds[8], tids[8] = {0};
  for (int i = 0; i < 8; i++) fds[i] = start_held_transfer(g_port, "firmware.bin", &tids[i]);
  assert_true(active_transfers() == 8);
  int extra = raw_open();
  uint8_t rrq[100];
  abort_resend_t a = {extra, fds[0], tids[0], rrq, build_rrq(rrq, "small.txt", "octet", NULL), 0};
  run_on_loop(send_rrq_then_abort, &a);
  uint8_t pkt[600];
  int tid = 0;
  ssize_t r = raw_recv(extra, pkt, sizeof(pkt), 3000, &tid);
  assert_int_equal(r, 4 + 13);
  assert_int_equal(pkt[1], CAPSTAN_TFTP_OP_DATA);
  assert_memory_equal(pkt + 4, g_files[F_SMALL].data, 13);
  send_ack(extra, tid, 1);
  close(extra);
  assert_true(counter("capstan_tftp_rejections_total", "reason=\"limit_per_address\"") == busy);
  assert_true(counter("capstan_tftp_transfers_total", "kind=\"static\",result=\"error\"") ==
              aborted + 1);
  for (int i = 0; i < 8; i++) {
    if (i > 0) send_err(fds[i], tids[i]);
    close(fds[i]);
  }
  wait_idle(10);
  check_normal_download();
}

typedef struct {
  unsigned total, per_address, retry_after;
} limits_t;

static void set_main_limits(void *arg) {
  const limits_t *l = arg;
  capstan_tftp_server_set_limits(g_main, l->total, l->per_address, l->retry_after);
}

/* The limits change live: a transfer running when its address's share
 * shrinks to 1 goes on; the next request from that address hears "busy,
 * retry in 3 s"; raised again, the same request is served. */
static void test_limits_live(void **state) {
  wait_idle(10);
  double busy = counter("capstan_tftp_rejections_total", "reason=\"limit_per_address\"");
  int tid = 0;
  int held = start_held_transfer(g_port, "firmware.bin", &tid);
  run_on_loop(set_main_limits, &(limits_t){0, 1, 3});
  int extra = raw_open();
  uint8_t pkt[600];
  size_t n = build_rrq(pkt, "small.txt", "octet", NULL);
  raw_send(extra, g_port, pkt, n);
  expect_error(extra, 0, "server busy (too many transfers from this address), retry in 3 s");
  assert_true(counter("capstan_tftp_rejections_total", "reason=\"limit_per_address\"") == busy + 1);
  /* The running transfer was not cut: block 2 follows the ACK of 1. */
  send_ack(held, tid, 1);
  int tid2 = 0;
  ssize_t r = raw_recv(held, pkt, sizeof(pkt), 3000, &tid2);
  assert_int_equal(r, 516);
  assert_int_equal(pkt[3], 2);
  assert_int_equal(tid2, tid);
  /* Raised: the client that was told to come back is served. */
  run_on_loop(set_main_limits, &(limits_t){0, 8, 10});
  raw_send(extra, g_port, pkt, build_rrq(pkt, "small.txt", "octet", NULL));
  r = raw_recv(extra, pkt, sizeof(pkt), 3000, &tid2);
  assert_int_equal(r, 4 + 13);
  assert_int_equal(pkt[1], CAPSTAN_TFTP_OP_DATA);
  send_ack(extra, tid2, 1);
  close(extra);
  send_err(held, tid);
  close(held);
  wait_idle(10);
  check_normal_download();
}

/* The same at the total limit (a storm of as many phones as the limit):
 * the transfer a client just ended is not counted against its next
 * request. */
static void test_total_limit_end_then_request(void **state) {
  wait_idle(10);
  double busy = counter("capstan_tftp_rejections_total", "reason=\"limit_total\"");
  int t1 = 0, t2 = 0;
  int a = start_held_transfer(g_small_port, "firmware.bin", &t1);
  int b = start_held_transfer(g_small_port, "firmware.bin", &t2);
  int extra = raw_open();
  uint8_t rrq[100];
  abort_resend_t ar = {extra, a, t1, rrq, build_rrq(rrq, "small.txt", "octet", NULL), g_small_port};
  run_on_loop(send_rrq_then_abort, &ar);
  uint8_t pkt[600];
  int tid = 0;
  ssize_t r = raw_recv(extra, pkt, sizeof(pkt), 3000, &tid);
  assert_int_equal(r, 4 + 13);
  assert_int_equal(pkt[1], CAPSTAN_TFTP_OP_DATA);
  send_ack(extra, tid, 1);
  close(extra);
  assert_true(counter("capstan_tftp_rejections_total", "reason=\"limit_total\"") == busy);
  send_err(b, t2);
  close(a);
  close(b);
  wait_idle(10);
}

static void test_total_limit(void **state) {
  wait_idle(10);
  double before = counter("capstan_tftp_rejections_total", "reason=\"limit_total\"");
  int t1 = 0, t2 = 0;
  int a = start_held_transfer(g_small_port, "firmware.bin", &t1);
  int b = start_held_transfer(g_small_port, "firmware.bin", &t2);
  int c = raw_open();
  uint8_t pkt[100];
  size_t n = build_rrq(pkt, "small.txt", "octet", NULL);
  raw_send(c, g_small_port, pkt, n);
  expect_error(c, 0, "server busy (too many transfers), retry in 10 s");
  assert_true(counter("capstan_tftp_rejections_total", "reason=\"limit_total\"") == before + 1);
  send_err(a, t1);
  send_err(b, t2);
  close(a);
  close(b);
  wait_idle(10);
  /* Room again on the small server. */
  raw_send(c, g_small_port, pkt, n);
  ssize_t r = raw_recv(c, pkt, sizeof(pkt), 3000, &t1);
  assert_int_equal(r, 4 + 13);
  assert_memory_equal(pkt + 4, g_files[F_SMALL].data, 13);
  send_ack(c, t1, 1);
  close(c);
  wait_idle(10);
  curl_get_port(g_small_port, "config.xml", "1468", g_files[F_CONFIG].data, g_files[F_CONFIG].len);
}

static void test_duplicate_request(void **state) {
  wait_idle(10);
  double reqs = counter("capstan_tftp_requests_total", "kind=\"other\"");
  int fd = raw_open();
  uint8_t pkt[600];
  size_t n = build_rrq(pkt, "small.txt", "octet", NULL);
  raw_send(fd, g_slow_port, pkt, n);
  raw_send(fd, g_slow_port, pkt, n);
  int tid = 0;
  assert_int_equal(raw_recv(fd, pkt, sizeof(pkt), 3000, &tid), 4 + 13);
  /* A second transfer would send a second block 1. */
  assert_true(raw_recv(fd, pkt, sizeof(pkt), 300, NULL) < 0);
  assert_true(counter("capstan_tftp_requests_total", "kind=\"other\"") == reqs + 1);
  send_ack(fd, tid, 1);
  close(fd);
  wait_idle(5);
  check_normal_download();
}

/* ---- tests: server lifecycle ------------------------------------------------ */

typedef struct {
  const char *addr;
  capstan_tftp_config_t cfg;
  capstan_tftp_server_t *srv;
  int rc;
  int port;
  int done; /* set by |done|, read by the test thread: atomic */
} lifecycle_t;

static void do_start(void *arg) {
  lifecycle_t *l = arg;
  l->rc = capstan_tftp_server_start(&g_loop, l->addr, &l->cfg, &g_source, &l->srv);
  if (l->rc == 0) l->port = capstan_tftp_server_port(l->srv);
}

static void lifecycle_done(void *arg) {
  __atomic_store_n(&((lifecycle_t *)arg)->done, 1, __ATOMIC_SEQ_CST);
}

static void do_stop(void *arg) {
  lifecycle_t *l = arg;
  capstan_tftp_server_stop(l->srv, lifecycle_done, l);
}

static int wait_done(lifecycle_t *l, int secs) {
  for (int i = 0; i < secs * 100 && !__atomic_load_n(&l->done, __ATOMIC_SEQ_CST); i++) {
    sleep_ms(10);
  }
  return __atomic_load_n(&l->done, __ATOMIC_SEQ_CST);
}

static void test_bad_addresses(void **state) {
  static const char *const bad[] = {
      "",        "127.0.0.1", "127.0.0.1:",   "127.0.0.1:x", "127.0.0.1:70000", "127.0.0.1:123456",
      "[::1]69", "[::1:69",   "localhost:69", "::1:69",      "1.2.3:69"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    lifecycle_t l = {.addr = bad[i]};
    capstan_tftp_config_defaults(&l.cfg);
    run_on_loop(do_start, &l);
    assert_int_equal(l.rc, CAPSTAN_EINVAL);
    assert_null(l.srv);
  }
  /* A port already in use: a libuv error, nothing left behind (LSan). */
  char busy[32];
  snprintf(busy, sizeof(busy), "127.0.0.1:%d", g_port);
  lifecycle_t l = {.addr = busy};
  capstan_tftp_config_defaults(&l.cfg);
  run_on_loop(do_start, &l);
  assert_int_equal(l.rc, UV_EADDRINUSE);
}

static int have_ipv6_loopback(void) {
  int fd = socket(AF_INET6, SOCK_DGRAM, 0);
  if (fd < 0) return 0;
  struct sockaddr_in6 a = {0};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  int ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
  close(fd);
  return ok;
}

static void test_ipv6_dual_stack(void **state) {
  if (!have_ipv6_loopback()) {
    skip();
    return;
  }
  lifecycle_t l = {.addr = "[::]:0"};
  capstan_tftp_config_defaults(&l.cfg);
  run_on_loop(do_start, &l);
  assert_int_equal(l.rc, 0);
  /* IPv4 client on the dual-stack listener (v4-mapped peer). */
  curl_get_port(l.port, "config.xml", "1468", g_files[F_CONFIG].data, g_files[F_CONFIG].len);
  /* IPv6 client. */
  char url[128], local[256];
  snprintf(url, sizeof(url), "tftp://[::1]:%d/small.txt", l.port);
  local_path(local, sizeof(local), "curl6");
  char *argv[] = {"curl", "-s", "-S", "--max-time", "30", "-o", local, url, NULL};
  assert_int_equal(run(argv, 60), 0);
  assert_local_equals(local, g_files[F_SMALL].data, g_files[F_SMALL].len);
  wait_idle(5);
  run_on_loop(do_stop, &l);
  assert_true(wait_done(&l, 10));
}

static void test_stop_with_transfer_in_flight(void **state) {
  wait_idle(10);
  lifecycle_t l = {.addr = "127.0.0.1:0"};
  capstan_tftp_config_defaults(&l.cfg);
  l.cfg.default_timeout_ms = 10000;
  l.cfg.min_timeout_ms = 10000;
  run_on_loop(do_start, &l);
  assert_int_equal(l.rc, 0);
  int tid = 0;
  int fd = start_held_transfer(l.port, "config.xml", &tid);
  run_on_loop(do_stop, &l);
  /* No new requests once stopped... */
  int other = raw_open();
  uint8_t pkt[600];
  size_t n = build_rrq(pkt, "small.txt", "octet", NULL);
  raw_send(other, l.port, pkt, n);
  assert_true(raw_recv(other, pkt, sizeof(pkt), 300, NULL) < 0);
  close(other);
  /* ...but the transfer in flight finishes, and only then is it done. */
  assert_false(__atomic_load_n(&l.done, __ATOMIC_SEQ_CST));
  assert_true(active_transfers() == 1);
  finish_held_config(fd, tid);
  assert_true(wait_done(&l, 10));
  wait_idle(5);
}

static void test_metrics_render(void **state) {
  char *text;
  size_t len;
  assert_int_equal(capstan_metrics_render(&text, &len), 0);
  assert_non_null(strstr(text, "capstan_tftp_transfers_total{kind=\"static\",result=\"ok\"}"));
  assert_non_null(strstr(text, "capstan_tftp_transfer_duration_seconds_bucket"));
  assert_non_null(strstr(text, "capstan_tftp_options_negotiated_total{option=\"blksize\"}"));
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tftp_hpa_client),
      cmocka_unit_test(test_atftp_client),
      cmocka_unit_test(test_curl_client),
      cmocka_unit_test(test_raw_options),
      cmocka_unit_test(test_raw_netascii),
      cmocka_unit_test(test_raw_rollover),
      cmocka_unit_test(test_not_found_denied_error),
      cmocka_unit_test(test_malformed_requests),
      cmocka_unit_test(test_write_request),
      cmocka_unit_test(test_ack_storm),
      cmocka_unit_test(test_window_goback_once),
      cmocka_unit_test(test_netascii_goback),
      cmocka_unit_test(test_wrong_port),
      cmocka_unit_test(test_client_stops_acking),
      cmocka_unit_test(test_client_limit),
      cmocka_unit_test(test_client_limit_abort_then_request),
      cmocka_unit_test(test_total_limit),
      cmocka_unit_test(test_total_limit_end_then_request),
      cmocka_unit_test(test_limits_live),
      cmocka_unit_test(test_duplicate_request),
      cmocka_unit_test(test_bad_addresses),
      cmocka_unit_test(test_ipv6_dual_stack),
      cmocka_unit_test(test_stop_with_transfer_in_flight),
      cmocka_unit_test(test_metrics_render),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
