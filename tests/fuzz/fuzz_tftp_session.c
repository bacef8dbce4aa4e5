/* Fuzz target for the TFTP server's transfers (handlers/tftp/tftp.c): a
 * real server on a loopback UDP port, in this thread, and an input that is
 * a client's script: a read request built from the input (file, mode,
 * options and their values, or raw bytes), then events: ACK the last DATA
 * block (or one near it, or any number), ERROR, raw bytes to the transfer
 * port, a packet from another port (wrong transfer ID), the request again,
 * raw bytes to the listener, a short wait (the retransmit timers are a few
 * milliseconds here). So option negotiation, ACK/ERROR handling, windows,
 * go-back, duplicate ACKs, transfer-ID checks and timeouts all run.
 *
 * Checked: every DATA packet is at most the negotiated block size and, for
 * octet transfers, carries exactly the file's bytes for its block number;
 * another port only ever hears ERROR 5; every transfer ends (the client's
 * ERROR, or the retransmit limit) within a bounded time; nothing leaks. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "core/files/source.h"
#include "handlers/tftp/tftp.h"
#include "handlers/tftp/tftp_packet.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                               \
  do {                                                                                            \
    if (!(cond)) {                                                                                \
      fprintf(stderr, "fuzz_tftp_session: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                                    \
    }                                                                                             \
  } while (0)

#define MAX_BLKSIZE 1468
#define MAX_PORTS 512

static uv_loop_t g_loop;
static capstan_tftp_server_t *g_srv;
static capstan_filesource_t g_src;
static int g_port;
static int g_ready, g_stopped;
static capstan_metric_t *g_active;

typedef struct {
  const char *name;
  int status;
  uint8_t *data;
  size_t len;
} file_t;

static file_t g_files[] = {
    {"a", 0, NULL, 2},
    {"SEP001122334455.cnf.xml", 0, NULL, 512},
    {"big", 0, NULL, 5000},
    {"nl.txt", 0, NULL, 700},
    {"empty", 0, NULL, 0},
    {"denied", CAPSTAN_EACCES, NULL, 0},
    {"error", CAPSTAN_EIO, NULL, 0},
    {"missing", CAPSTAN_ENOENT, NULL, 0},
};
#define NFILES (sizeof(g_files) / sizeof(g_files[0]))

static void src_open(capstan_filesource_t *src, const char *name, capstan_file_cb cb, void *ctx) {
  (void)src;
  for (size_t i = 0; i < NFILES; i++) {
    if (strcmp(name, g_files[i].name) != 0) continue;
    if (g_files[i].status < 0) {
      cb(ctx, g_files[i].status, NULL, capstan_file_kind_of(name));
    } else {
      cb(ctx, 0, capstan_blob_new(g_files[i].data, g_files[i].len), capstan_file_kind_of(name));
    }
    return;
  }
  cb(ctx, CAPSTAN_ENOENT, NULL, capstan_file_kind_of(name));
}

static void on_stopped(void *arg) {
  (void)arg;
  g_stopped = 1;
}

static void shutdown_server(void) {
  capstan_tftp_server_stop(g_srv, on_stopped, NULL);
  for (int i = 0; i < 100000 && !g_stopped; i++) uv_run(&g_loop, UV_RUN_ONCE);
  if (!g_stopped || uv_loop_close(&g_loop) != 0) {
    fprintf(stderr, "fuzz_tftp_session: server did not stop cleanly\n");
    abort();
  }
}

static void init(void) {
  capstan_log_init();
  if (getenv("CAPSTAN_LOG_LEVEL") == NULL) capstan_log_set_level(CAPSTAN_LOG_ERROR);
  for (size_t i = 0; i < NFILES; i++) {
    g_files[i].data = malloc(g_files[i].len + 1);
    CHECK(g_files[i].data != NULL);
    for (size_t k = 0; k < g_files[i].len; k++) {
      /* nl.txt: line ends and lone CRs for netascii; the others: bytes. */
      g_files[i].data[k] = i == 3 ? (uint8_t)("ab\ncd\r\ne\rf"[k % 10]) : (uint8_t)(k * 7 + i);
    }
  }
  g_src.open = src_open;
  if (uv_loop_init(&g_loop) != 0) abort();
  capstan_tftp_config_t cfg;
  capstan_tftp_config_defaults(&cfg);
  cfg.max_blksize = MAX_BLKSIZE;
  cfg.max_windowsize = 8;
  cfg.max_transfers = 4;
  cfg.max_transfers_per_address = 3;
  cfg.retry_after_seconds = 1;
  cfg.default_timeout_ms = 2;
  cfg.min_timeout_ms = 1;
  cfg.max_retries = 2;
  if (capstan_tftp_server_start(&g_loop, "127.0.0.1:0", &cfg, &g_src, &g_srv) != 0) abort();
  g_port = capstan_tftp_server_port(g_srv);
  g_active = capstan_metrics_gauge("capstan_tftp_active_transfers", "", NULL);
  atexit(shutdown_server);
  g_ready = 1;
}

/* ---- the client ------------------------------------------------------------ */

typedef struct {
  const uint8_t *p;
  size_t n;
} in_t;

static uint8_t u8(in_t *in) {
  if (in->n == 0) return 0;
  in->n--;
  return *in->p++;
}
static size_t take(in_t *in, size_t max, const uint8_t **out) {
  size_t want = u8(in);
  if (want > max) want = max;
  if (want > in->n) want = in->n;
  *out = in->p;
  in->p += want;
  in->n -= want;
  return want;
}

typedef struct {
  int fd, intruder;
  int tid;                       /* the transfer's port, once heard from */
  int intruder_tid;              /* a transfer the other port asked for */
  int port, intruder_port;       /* the client's own ports */
  int intruder_ports[MAX_PORTS]; /* every transfer the other port started */
  int nintruder_ports;
  int intruder_asked;   /* the other port sent something to the listener */
  int ports[MAX_PORTS]; /* every transfer port heard from */
  int nports;
  int file;         /* index in g_files, or -1 */
  int octet;        /* octet mode: DATA contents are checked */
  unsigned blksize; /* as negotiated (OACK), else 512 */
  uint16_t last_block;
  int got_data;
} client_t;

static int udp_socket(void) {
  for (int i = 0; i < 100; i++) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd >= 0) {
      struct sockaddr_in sa = {0};
      sa.sin_family = AF_INET;
      inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
      if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        return fd;
      }
      close(fd);
    }
    usleep(1000);
  }
  return -1;
}

static int local_port(int fd) {
  struct sockaddr_in sa;
  socklen_t len = sizeof(sa);
  if (getsockname(fd, (struct sockaddr *)&sa, &len) != 0) return -1;
  return ntohs(sa.sin_port);
}

static void send_to(int fd, int port, const void *pkt, size_t len) {
  if (port <= 0) return;
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  (void)sendto(fd, pkt, len, 0, (struct sockaddr *)&sa, sizeof(sa));
}

/* The blksize an OACK grants (0 when it names none). */
static unsigned oack_blksize(const uint8_t *p, size_t len) {
  size_t off = 2;
  while (off < len) {
    const char *name = (const char *)p + off;
    size_t nl = strnlen(name, len - off);
    if (off + nl + 1 >= len) break;
    const char *val = name + nl + 1;
    size_t vl = strnlen(val, len - off - nl - 1);
    if (strncasecmp(name, "blksize", nl) == 0 && nl == 7 && vl < 8) {
      char tmp[8];
      memcpy(tmp, val, vl);
      tmp[vl] = '\0';
      return (unsigned)atoi(tmp);
    }
    off += nl + 1 + vl + 1;
  }
  return 0;
}

static void check_data(client_t *c, const uint8_t *p, size_t len) {
  CHECK(len >= 4);
  size_t payload = len - 4;
  CHECK(payload <= MAX_BLKSIZE);
  CHECK(payload <= c->blksize);
  uint16_t blk = (uint16_t)(p[2] << 8 | p[3]);
  CHECK(blk != 0 || c->got_data); /* block 0 only after a wrap */
  c->last_block = blk;
  c->got_data = 1;
  if (c->file < 0 || !c->octet || blk == 0) return;
  const file_t *f = &g_files[c->file];
  size_t off = (size_t)(blk - 1) * c->blksize;
  if (off > f->len) return; /* a wrapped counter: not checked */
  size_t want = f->len - off < c->blksize ? f->len - off : c->blksize;
  CHECK(payload == want);
  CHECK(payload == 0 || memcmp(p + 4, f->data + off, payload) == 0);
}

/* Everything waiting for the client and the intruder. */
static void drain(client_t *c) {
  uint8_t buf[65536];
  for (;;) {
    struct sockaddr_in from;
    socklen_t fl = sizeof(from);
    ssize_t n = recvfrom(c->fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl);
    if (n < 0) break;
    int port = ntohs(from.sin_port);
    if (port == c->intruder_port) continue; /* the harness's own packet (a reused port) */
    CHECK(n >= 4);
    uint16_t op = (uint16_t)(buf[0] << 8 | buf[1]);
    if (op != CAPSTAN_TFTP_OP_DATA && op != CAPSTAN_TFTP_OP_OACK && op != CAPSTAN_TFTP_OP_ERROR) {
      /* Not a server's packet (the server builds no ACK or request). From
       * the listener or a transfer port it would be a bug; from a port this
       * input never heard from it is a datagram of the harness's own (seen
       * twice in a campaign, with ports reused across inputs, never
       * reproduced): ignored. */
      int known = port == g_port;
      for (int i = 0; i < c->nports; i++) known |= c->ports[i] == port;
      if (known) {
        fprintf(stderr, "fuzz_tftp_session: op %u from server port %d\n", op, port);
        abort();
      }
      continue;
    }
    if (op == CAPSTAN_TFTP_OP_ERROR) CHECK(buf[n - 1] == 0);
    if (port == g_port) {
      CHECK(op == CAPSTAN_TFTP_OP_ERROR); /* the listener only refuses */
      continue;
    }
    if (op != CAPSTAN_TFTP_OP_ERROR && port != c->tid) {
      /* A new transfer (the request again once the last one ended): the
       * client follows the latest and remembers every port to end them. */
      c->tid = port;
      if (c->nports < MAX_PORTS) c->ports[c->nports++] = port;
    }
    if (op == CAPSTAN_TFTP_OP_OACK) {
      unsigned b = oack_blksize(buf, (size_t)n);
      CHECK(b == 0 || (b >= 8 && b <= MAX_BLKSIZE));
      if (b) c->blksize = b;
    } else if (op == CAPSTAN_TFTP_OP_DATA) {
      check_data(c, buf, (size_t)n);
    }
  }
  for (;;) {
    struct sockaddr_in from;
    socklen_t fl = sizeof(from);
    ssize_t n = recvfrom(c->intruder, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl);
    if (n < 0) break;
    CHECK(n >= 4 && buf[0] == 0);
    int port = ntohs(from.sin_port);
    if (!c->intruder_asked) {
      /* It asked for nothing: it hears errors only (unknown transfer ID). */
      CHECK(buf[1] == CAPSTAN_TFTP_OP_ERROR);
    } else if (port != g_port && buf[1] != CAPSTAN_TFTP_OP_ERROR) {
      /* Its own transfer (which may have the port an ended transfer of
       * the client had: the kernel reuses ephemeral ports). */
      c->intruder_tid = port;
      int known = 0;
      for (int i = 0; i < c->nintruder_ports; i++) known |= c->intruder_ports[i] == port;
      if (!known && c->nintruder_ports < MAX_PORTS) c->intruder_ports[c->nintruder_ports++] = port;
    }
  }
}

static void pump(client_t *c) {
  for (int i = 0; i < 4; i++) {
    uv_run(&g_loop, UV_RUN_NOWAIT);
    drain(c);
  }
}

static const char *const kModes[] = {"octet", "netascii", "NetAscii", "mail",
                                     "",      "OCTET",    "x",        "octet"};

static size_t put(uint8_t *p, size_t off, size_t cap, const char *s) {
  size_t n = strlen(s) + 1;
  if (off + n > cap) return off;
  memcpy(p + off, s, n);
  return off + n;
}

/* A read request from the input's choices. */
static size_t build_request(in_t *in, client_t *c, uint8_t *p, size_t cap) {
  uint8_t fsel = u8(in), mode = u8(in), opts = u8(in);
  size_t off = 0;
  p[off++] = 0;
  p[off++] = (fsel & 0x80) ? CAPSTAN_TFTP_OP_WRQ : CAPSTAN_TFTP_OP_RRQ;
  c->file = (int)(fsel % NFILES);
  off = put(p, off, cap, g_files[c->file].name);
  off = put(p, off, cap, kModes[mode & 7]);
  c->octet = strcasecmp(kModes[mode & 7], "octet") == 0;
  char v[16];
  static const char *const kNames[] = {"blksize", "timeout", "tsize", "windowsize",
                                       "BLKSIZE", "foo",     "tsize", "blksize"};
  for (int i = 0; i < 8; i++) {
    if (!(opts & (1u << i))) continue;
    unsigned val = (unsigned)(u8(in) | u8(in) << 8);
    if (i == 2 || i == 6) val = val % 4 ? 0 : val; /* tsize is 0 in a request */
    snprintf(v, sizeof(v), "%u", val);
    off = put(p, off, cap, kNames[i]);
    off = put(p, off, cap, (mode & 0x80) ? "" : v);
  }
  return off;
}

static void run_input(in_t *in) {
  client_t c = {.fd = udp_socket(), .intruder = udp_socket(), .file = -1, .blksize = 512};
  if (c.fd < 0 || c.intruder < 0) {
    if (c.fd >= 0) close(c.fd);
    if (c.intruder >= 0) close(c.intruder);
    return;
  }
  c.port = local_port(c.fd);
  c.intruder_port = local_port(c.intruder);
  uint8_t pkt[1100];
  size_t len = build_request(in, &c, pkt, sizeof(pkt));
  send_to(c.fd, g_port, pkt, len);
  pump(&c);
  while (in->n > 0) {
    uint8_t ev = u8(in);
    const uint8_t *bytes;
    size_t n;
    uint8_t a[4];
    switch ((ev & 0x0f) % 10) {
      case 0:
      case 1: /* ACK what came last, or a block near it */
        a[0] = 0;
        a[1] = CAPSTAN_TFTP_OP_ACK;
        {
          uint16_t b = (uint16_t)(c.last_block - ((ev & 0x0f) == 1 ? (ev >> 4) : 0));
          a[2] = (uint8_t)(b >> 8);
          a[3] = (uint8_t)b;
        }
        send_to(c.fd, c.tid, a, 4);
        break;
      case 2: /* ACK any block */
        a[0] = 0;
        a[1] = CAPSTAN_TFTP_OP_ACK;
        a[2] = u8(in);
        a[3] = u8(in);
        send_to(c.fd, c.tid, a, 4);
        break;
      case 3: { /* ERROR */
        uint8_t e[8] = {0, CAPSTAN_TFTP_OP_ERROR, 0, u8(in), 'x', 0};
        send_to(c.fd, c.tid, e, (ev & 0x10) ? 6 : 4);
        break;
      }
      case 4: /* raw bytes to the transfer port */
        n = take(in, 600, &bytes);
        send_to(c.fd, c.tid, bytes, n);
        break;
      case 5: /* another port speaks to the transfer */
        a[0] = 0;
        a[1] = CAPSTAN_TFTP_OP_ACK;
        a[2] = (uint8_t)(c.last_block >> 8);
        a[3] = (uint8_t)c.last_block;
        send_to(c.intruder, c.tid, a, 4);
        break;
      case 6: /* the request again (a retransmission), or from the other port */
        if (ev & 0x10) c.intruder_asked = 1;
        send_to((ev & 0x10) ? c.intruder : c.fd, g_port, pkt, len);
        break;
      case 7: /* raw bytes to the listener */
        n = take(in, 600, &bytes);
        c.intruder_asked = 1; /* raw bytes may be a request */
        send_to(c.intruder, g_port, bytes, n);
        break;
      case 8: { /* a while: the retransmit timer may fire */
        struct timespec ts = {0, (long)(1 + (ev >> 4) % 3) * 1000000L};
        nanosleep(&ts, NULL);
        break;
      }
      case 9: /* ACK 0: the OACK's answer */
        a[0] = 0;
        a[1] = CAPSTAN_TFTP_OP_ACK;
        a[2] = a[3] = 0;
        send_to(c.fd, c.tid, a, 4);
        break;
    }
    pump(&c);
  }
  /* The client gives up: every transfer ends (its ERROR, or the retransmit
   * limit for one whose port it never heard), in bounded time. */
  uint8_t e[5] = {0, CAPSTAN_TFTP_OP_ERROR, 0, 0, 0};
  for (int i = 0; i < c.nports; i++) send_to(c.fd, c.ports[i], e, sizeof(e));
  for (int i = 0; i < c.nintruder_ports; i++)
    send_to(c.intruder, c.intruder_ports[i], e, sizeof(e));
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    pump(&c);
    if (capstan_metric_value(g_active) == 0) break;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (t1.tv_sec - t0.tv_sec > 10) {
      fprintf(stderr,
              "fuzz_tftp_session: %g transfer(s) did not end in 10 s (client %d knew %d "
              "transfer ports, the other port %d)\n",
              capstan_metric_value(g_active), c.port, c.nports, c.nintruder_ports);
      abort();
    }
    /* Not UV_RUN_ONCE: a negotiated timeout may be minutes long, and a
     * transfer the client can end must end now. */
    struct timespec ts = {0, 1000000L};
    nanosleep(&ts, NULL);
  }
  close(c.fd);
  close(c.intruder);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!g_ready) init();
  in_t in = {data, size};
  run_input(&in);
  return 0;
}
