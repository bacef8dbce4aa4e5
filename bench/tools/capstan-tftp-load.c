/* capstan-tftp-load: TFTP download load generator (one libuv loop).
 *
 *   capstan-tftp-load --server 127.0.0.1:PORT --file NAME --expect LOCALFILE
 *       --concurrency N --total M [--blksize B] [--timeout-ms T] [--retries R]
 *
 * Keeps N RFC 1350 read transfers in flight (each on its own UDP socket)
 * until M have been started; every received file is compared byte for byte
 * with LOCALFILE. With --blksize the RRQ carries "blksize B" and "tsize 0"
 * and the OACK is handled. Lost packets: the client resends its last ACK
 * (or the RRQ) after T ms, up to R times, then counts a failure.
 *
 * Prints one line: files=.. failures=.. secs=.. files_per_sec=.. p50_ms=..
 * p99_ms=.. max_ms=.. mib_per_sec=.. Exit status 0 if no failure. */
#include <arpa/inet.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define MAX_PKT 65536 + 4

typedef struct client {
  uv_udp_t sock;
  uv_timer_t timer;
  struct sockaddr_in tid;
  int have_tid;
  uint16_t expect; /* next DATA block */
  size_t got;
  uint64_t started_ns;
  uint8_t last[600]; /* last packet we sent (RRQ or ACK) */
  size_t last_len;
  int to_server; /* last packet goes to the listening port, not the TID */
  unsigned retries;
  unsigned blksize;
  int closing;
  int read_one;
} client_t;

static struct {
  uv_loop_t *loop;
  struct sockaddr_in server;
  const char *file;
  uint8_t *expect;
  size_t expect_len;
  unsigned concurrency, total, blksize_opt, timeout_ms, retries;
  unsigned started, done, failures, running;
  double *lat_ms;
  uint64_t t0;
  uint8_t rbuf[MAX_PKT];
} g;

static void start_one(void);

static void on_closed(uv_handle_t *h) {
  client_t *c = h->data;
  if (++c->closing == 3) free(c);
}

static void finish(client_t *c, int ok) {
  if (c->closing) return;
  c->closing = 1;
  if (ok) {
    g.lat_ms[g.done] = (double)(uv_hrtime() - c->started_ns) / 1e6;
    g.done++;
  } else {
    g.failures++;
  }
  g.running--;
  uv_udp_recv_stop(&c->sock);
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->sock, on_closed);
  uv_close((uv_handle_t *)&c->timer, on_closed);
  if (g.started < g.total) start_one();
}

static void send_last(client_t *c) {
  uv_buf_t b = uv_buf_init((char *)c->last, (unsigned)c->last_len);
  const struct sockaddr *to =
      c->to_server ? (const struct sockaddr *)&g.server : (const struct sockaddr *)&c->tid;
  (void)uv_udp_try_send(&c->sock, &b, 1, to);
  uv_timer_again(&c->timer);
}

static void send_ack(client_t *c, uint16_t block) {
  c->last[0] = 0;
  c->last[1] = 4;
  c->last[2] = (uint8_t)(block >> 8);
  c->last[3] = (uint8_t)block;
  c->last_len = 4;
  c->to_server = 0;
  send_last(c);
}

static void on_timer(uv_timer_t *t) {
  client_t *c = t->data;
  if (++c->retries > g.retries) {
    finish(c, 0);
    return;
  }
  send_last(c);
}

/* One datagram per read burst: an empty buffer ends it (UV_ENOBUFS) and
 * saves a recvmsg that would return EAGAIN; more data stays readable. */
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  client_t *c = h->data;
  if (c->read_one) {
    c->read_one = 0;
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  *buf = uv_buf_init((char *)g.rbuf, sizeof(g.rbuf));
}

static void on_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *addr,
                    unsigned flags) {
  client_t *c = h->data;
  if (nread < 0 || addr == NULL) return;
  c->read_one = 1;
  if (nread < 4 || c->closing || addr->sa_family != AF_INET) return;
  const struct sockaddr_in *from = (const struct sockaddr_in *)addr;
  if (!c->have_tid) {
    c->tid = *from;
    c->have_tid = 1;
  } else if (from->sin_port != c->tid.sin_port) {
    return;
  }
  const uint8_t *p = (const uint8_t *)buf->base;
  uint16_t op = (uint16_t)((p[0] << 8) | p[1]);
  if (op == 6 && c->expect == 1 && c->got == 0) { /* OACK */
    c->retries = 0;
    send_ack(c, 0);
    return;
  }
  if (op != 3) { /* ERROR or nonsense */
    finish(c, 0);
    return;
  }
  uint16_t block = (uint16_t)((p[2] << 8) | p[3]);
  if (block != c->expect) return; /* duplicate: the timer handles loss */
  size_t n = (size_t)nread - 4;
  if (c->got + n > g.expect_len || memcmp(g.expect + c->got, p + 4, n) != 0) {
    finish(c, 0);
    return;
  }
  c->got += n;
  c->expect++;
  c->retries = 0;
  send_ack(c, block);
  if (n < c->blksize) finish(c, c->got == g.expect_len);
}

static void start_one(void) {
  client_t *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    g.failures++;
    return;
  }
  g.started++;
  g.running++;
  c->started_ns = uv_hrtime();
  c->expect = 1;
  c->blksize = g.blksize_opt ? g.blksize_opt : 512;
  uv_udp_init(g.loop, &c->sock);
  uv_timer_init(g.loop, &c->timer);
  c->sock.data = c->timer.data = c;
  struct sockaddr_in any;
  uv_ip4_addr("0.0.0.0", 0, &any);
  if (uv_udp_bind(&c->sock, (const struct sockaddr *)&any, 0) != 0 ||
      uv_udp_recv_start(&c->sock, alloc_cb, on_recv) != 0) {
    finish(c, 0);
    return;
  }
  size_t n = 0;
  c->last[n++] = 0;
  c->last[n++] = 1;
  n += (size_t)snprintf((char *)c->last + n, sizeof(c->last) - n, "%s", g.file) + 1;
  memcpy(c->last + n, "octet", 6);
  n += 6;
  if (g.blksize_opt) {
    n += (size_t)snprintf((char *)c->last + n, sizeof(c->last) - n, "blksize") + 1;
    n += (size_t)snprintf((char *)c->last + n, sizeof(c->last) - n, "%u", g.blksize_opt) + 1;
    n += (size_t)snprintf((char *)c->last + n, sizeof(c->last) - n, "tsize") + 1;
    n += (size_t)snprintf((char *)c->last + n, sizeof(c->last) - n, "0") + 1;
  }
  c->last_len = n;
  c->to_server = 1;
  uv_timer_start(&c->timer, on_timer, g.timeout_ms, g.timeout_ms);
  send_last(c);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void usage(void) {
  fprintf(stderr,
          "usage: capstan-tftp-load --server HOST:PORT --file NAME --expect LOCALFILE\n"
          "       --concurrency N --total M [--blksize B] [--timeout-ms T] [--retries R]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *server = NULL, *expect = NULL;
  g.concurrency = 100;
  g.total = 1000;
  g.timeout_ms = 1000;
  g.retries = 5;
  for (int i = 1; i < argc; i++) {
    if (i + 1 >= argc) usage();
    const char *k = argv[i], *v = argv[++i];
    if (strcmp(k, "--server") == 0) {
      server = v;
    } else if (strcmp(k, "--file") == 0) {
      g.file = v;
    } else if (strcmp(k, "--expect") == 0) {
      expect = v;
    } else if (strcmp(k, "--concurrency") == 0) {
      g.concurrency = (unsigned)strtoul(v, NULL, 10);
    } else if (strcmp(k, "--total") == 0) {
      g.total = (unsigned)strtoul(v, NULL, 10);
    } else if (strcmp(k, "--blksize") == 0) {
      g.blksize_opt = (unsigned)strtoul(v, NULL, 10);
    } else if (strcmp(k, "--timeout-ms") == 0) {
      g.timeout_ms = (unsigned)strtoul(v, NULL, 10);
    } else if (strcmp(k, "--retries") == 0) {
      g.retries = (unsigned)strtoul(v, NULL, 10);
    } else {
      usage();
    }
  }
  if (server == NULL || g.file == NULL || expect == NULL || g.total == 0 || g.concurrency == 0 ||
      strlen(g.file) > 255) {
    usage();
  }
  char host[64];
  const char *colon = strrchr(server, ':');
  if (colon == NULL || (size_t)(colon - server) >= sizeof(host)) usage();
  memcpy(host, server, (size_t)(colon - server));
  host[colon - server] = '\0';
  if (uv_ip4_addr(host, atoi(colon + 1), &g.server) != 0) usage();
  FILE *fp = fopen(expect, "rb");
  if (fp == NULL) {
    perror(expect);
    return 2;
  }
  fseek(fp, 0, SEEK_END);
  g.expect_len = (size_t)ftell(fp);
  fseek(fp, 0, SEEK_SET);
  g.expect = malloc(g.expect_len + 1);
  if (g.expect == NULL || fread(g.expect, 1, g.expect_len, fp) != g.expect_len) return 2;
  fclose(fp);
  g.lat_ms = calloc(g.total, sizeof(double));
  g.loop = uv_default_loop();
  g.t0 = uv_hrtime();
  for (unsigned i = 0; i < g.concurrency && g.started < g.total; i++) start_one();
  uv_run(g.loop, UV_RUN_DEFAULT);
  double secs = (double)(uv_hrtime() - g.t0) / 1e9;
  qsort(g.lat_ms, g.done, sizeof(double), cmp_double);
  double p50 = g.done ? g.lat_ms[(size_t)ceil(0.50 * g.done) - 1] : 0;
  /* Nearest-rank percentiles. */
  double p99 = g.done ? g.lat_ms[(size_t)ceil(0.99 * g.done) - 1] : 0;
  double mx = g.done ? g.lat_ms[g.done - 1] : 0;
  printf(
      "files=%u failures=%u secs=%.3f files_per_sec=%.1f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f "
      "mib_per_sec=%.1f\n",
      g.done, g.failures, secs, g.done / secs, p50, p99, mx,
      (double)g.done * (double)g.expect_len / secs / (1024.0 * 1024.0));
  uv_loop_close(g.loop);
  free(g.lat_ms);
  free(g.expect);
  return g.failures ? 1 : 0;
}
