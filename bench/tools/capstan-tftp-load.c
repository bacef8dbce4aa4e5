/* capstan-tftp-load: TFTP download load generator.
 *
 *   capstan-tftp-load --server 127.0.0.1:PORT --file NAME --expect LOCALFILE
 *       --concurrency N --total M [--blksize B] [--windowsize W]
 *       [--timeout-ms T] [--retries R] [--procs P] [--mode addr|port]
 *
 * Keeps N RFC 1350 read transfers in flight until M have been started;
 * every received file is compared byte for byte with LOCALFILE. With
 * --blksize the RRQ carries "blksize B" and "tsize 0"; with --windowsize
 * also "windowsize W" (RFC 7440). The OACK decides what is used: options
 * the server did not acknowledge fall back to the RFC 1350 defaults. Lost
 * packets: a transfer without progress for T ms resends its last ACK (or
 * the RRQ), up to R times, then counts as a failure.
 *
 * The work is split over P processes (default 1), each with its own epoll
 * loop, so that the client is not the bottleneck on a multi-core machine.
 *
 * Transfer identity (--mode):
 *  - addr (default): every transfer has its own source address
 *    (127.16.0.0/12 upwards; loopback accepts all of 127/8), like phones
 *    that each have their own IP. Transfers share a few sockets per
 *    process (<= 64 transfers per socket), so that the client reads with
 *    recvmmsg and sends its ACKs with sendmmsg (IP_PKTINFO picks the
 *    source address per datagram). The server sees one (address, port)
 *    per transfer, as with real phones.
 *  - port: every transfer has its own socket on 127.0.0.1 (one address,
 *    N ports; one recvmsg and one sendmsg per packet).
 *
 * Prints one line: files=.. failures=.. secs=.. files_per_sec=.. p50_ms=..
 * p99_ms=.. max_ms=.. mib_per_sec=.. resends=.. failures_no_reply=.. (failed
 * transfers that never got a packet from the server) oack=.. (the options
 * of the first OACK received, "none" if the server sent none). Exit status 0 if
 * no failure. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PKT (65536 + 4)
#define BATCH 64              /* datagrams per recvmmsg / sendmmsg */
#define PER_SOCKET 64         /* transfers per shared socket (addr mode) */
#define TICK_MS 10            /* resolution of the retransmit deadlines */
#define RCVBUF (4 << 20)      /* socket receive buffer asked for */
#define REQ_MAX 600           /* bytes of an RRQ we build */
#define OACK_TEXT_MAX 200     /* bytes of the reported OACK */
#define ADDR_BASE 0x7f100001u /* 127.16.0.1: first per-transfer source address */

typedef struct xfer {
  int sock;           /* index into socks */
  struct in_addr src; /* addr mode: our source address */
  struct sockaddr_in tid;
  int have_tid;
  uint16_t expect; /* next DATA block (wire numbering) */
  uint32_t since_ack;
  int gap_acked; /* an ACK for a gap in the window was sent */
  size_t got;
  unsigned blksize, window;
  uint64_t started_ns, deadline_ms;
  uint8_t last[REQ_MAX]; /* last packet we sent (RRQ or ACK) */
  size_t last_len;
  int to_server; /* |last| goes to the listening port, not the TID */
  unsigned retries;
  int active;
} xfer_t;

typedef struct {
  int fd;
  unsigned cur;  /* port mode: the transfer using this socket */
  unsigned nout; /* queued datagrams */
  struct mmsghdr out[BATCH];
  struct iovec out_iov[BATCH];
  union {
    char buf[CMSG_SPACE(sizeof(struct in_pktinfo))];
    struct cmsghdr align;
  } out_ctl[BATCH];
  struct sockaddr_in out_to[BATCH];
} sock_t;

static struct {
  /* configuration */
  struct sockaddr_in server;
  const char *file;
  uint8_t *expect;
  size_t expect_len;
  unsigned concurrency, total, blksize_opt, window_opt, timeout_ms, retries, procs;
  int addr_mode;
  /* per process */
  unsigned proc, my_total, my_conc;
  int ep;
  sock_t *socks;
  unsigned nsocks;
  xfer_t *x; /* my_total entries, index = local transfer number */
  unsigned started, done, failures, running;
  unsigned no_reply; /* failures that never got a packet from the server */
  uint64_t resends;
  double *lat_ms;
  char oack[OACK_TEXT_MAX];
  int have_oack_text;
  /* receive batch */
  struct mmsghdr in[BATCH];
  struct iovec in_iov[BATCH];
  union {
    char buf[CMSG_SPACE(sizeof(struct in_pktinfo))];
    struct cmsghdr align;
  } in_ctl[BATCH];
  struct sockaddr_in in_from[BATCH];
  uint8_t (*in_buf)[MAX_PKT];
} g;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ms(void) {
  return now_ns() / 1000000u;
}

/* Global transfer number of local transfer |i| (unique over processes). */
static unsigned global_index(unsigned i) {
  return g.proc + i * g.procs;
}

/* Source address of global transfer |k|: skips .0 and .255 last octets. */
static struct in_addr addr_of(unsigned k) {
  uint32_t a = ADDR_BASE + (k / 254) * 256 + (k % 254);
  struct in_addr in = {htonl(a)};
  return in;
}

static int local_of_addr(struct in_addr in, unsigned *i) {
  uint32_t a = ntohl(in.s_addr);
  if (a < ADDR_BASE) return 0;
  uint32_t d = a - ADDR_BASE;
  if ((d & 255) >= 254) return 0;
  unsigned k = (d >> 8) * 254 + (d & 255);
  if (k % g.procs != g.proc) return 0;
  *i = k / g.procs;
  return *i < g.started;
}

static void flush(sock_t *s) {
  unsigned off = 0;
  while (off < s->nout) {
    int n = sendmmsg(s->fd, s->out + off, s->nout - off, 0);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      break; /* dropped: the retransmit deadline covers it */
    }
    off += (unsigned)n;
  }
  s->nout = 0;
}

/* Queues |x|'s last packet on its socket (sent at the next flush). */
static void queue_last(xfer_t *x) {
  sock_t *s = &g.socks[x->sock];
  if (s->nout == BATCH) flush(s);
  unsigned j = s->nout++;
  struct msghdr *m = &s->out[j].msg_hdr;
  memset(m, 0, sizeof(*m));
  s->out_iov[j].iov_base = x->last;
  s->out_iov[j].iov_len = x->last_len;
  s->out_to[j] = x->to_server ? g.server : x->tid;
  m->msg_name = &s->out_to[j];
  m->msg_namelen = sizeof(struct sockaddr_in);
  m->msg_iov = &s->out_iov[j];
  m->msg_iovlen = 1;
  if (g.addr_mode) {
    memset(&s->out_ctl[j], 0, sizeof(s->out_ctl[j]));
    m->msg_control = s->out_ctl[j].buf;
    m->msg_controllen = sizeof(s->out_ctl[j].buf);
    struct cmsghdr *c = CMSG_FIRSTHDR(m);
    c->cmsg_level = IPPROTO_IP;
    c->cmsg_type = IP_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
    struct in_pktinfo pi;
    memset(&pi, 0, sizeof(pi));
    pi.ipi_spec_dst = x->src;
    memcpy(CMSG_DATA(c), &pi, sizeof(pi));
  }
  x->deadline_ms = now_ms() + g.timeout_ms;
}

static void send_ack(xfer_t *x, uint16_t block) {
  x->last[0] = 0;
  x->last[1] = 4;
  x->last[2] = (uint8_t)(block >> 8);
  x->last[3] = (uint8_t)block;
  x->last_len = 4;
  x->to_server = 0;
  queue_last(x);
}

static void start_one(unsigned slot);

static void finish(xfer_t *x, int ok) {
  if (!x->active) return;
  x->active = 0;
  if (ok) {
    g.lat_ms[g.done++] = (double)(now_ns() - x->started_ns) / 1e6;
  } else {
    g.failures++;
    if (!x->have_tid) g.no_reply++;
  }
  g.running--;
  if (!g.addr_mode) {
    /* The final ACK may still be queued: send it before closing. */
    flush(&g.socks[x->sock]);
    close(g.socks[x->sock].fd);
    g.socks[x->sock].fd = -1;
  }
  if (g.started < g.my_total) start_one((unsigned)x->sock);
}

static int open_socket(struct in_addr bind_addr) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1, size = RCVBUF;
  (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
  if (g.addr_mode) (void)setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_addr = bind_addr;
  if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Starts the next transfer; port mode: on socket slot |slot| (free). */
static void start_one(unsigned slot) {
  unsigned i = g.started++;
  xfer_t *x = &g.x[i];
  memset(x, 0, sizeof(*x));
  x->active = 1;
  g.running++;
  x->started_ns = now_ns();
  x->expect = 1;
  x->blksize = 512;
  x->window = 1;
  if (g.addr_mode) {
    x->sock = (int)(i % g.nsocks);
    x->src = addr_of(global_index(i));
  } else {
    x->sock = (int)slot;
    g.socks[slot].cur = i;
    struct in_addr lo = {htonl(INADDR_LOOPBACK)};
    int fd = open_socket(lo);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)x->sock};
    if (fd < 0 || epoll_ctl(g.ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
      if (fd >= 0) close(fd);
      x->active = 0;
      g.running--;
      g.failures++;
      return;
    }
    g.socks[x->sock].fd = fd;
    g.socks[x->sock].nout = 0;
  }
  size_t n = 0;
  x->last[n++] = 0;
  x->last[n++] = 1;
  n += (size_t)snprintf((char *)x->last + n, sizeof(x->last) - n, "%s", g.file) + 1;
  memcpy(x->last + n, "octet", 6);
  n += 6;
  if (g.blksize_opt) {
    n += (size_t)snprintf((char *)x->last + n, sizeof(x->last) - n, "blksize") + 1;
    n += (size_t)snprintf((char *)x->last + n, sizeof(x->last) - n, "%u", g.blksize_opt) + 1;
    n += (size_t)snprintf((char *)x->last + n, sizeof(x->last) - n, "tsize") + 1;
    n += (size_t)snprintf((char *)x->last + n, sizeof(x->last) - n, "0") + 1;
  }
  if (g.window_opt) {
    n += (size_t)snprintf((char *)x->last + n, sizeof(x->last) - n, "windowsize") + 1;
    n += (size_t)snprintf((char *)x->last + n, sizeof(x->last) - n, "%u", g.window_opt) + 1;
  }
  x->last_len = n;
  x->to_server = 1;
  queue_last(x);
}

/* Applies the options of an OACK; records the first one for the report. */
static void on_oack(xfer_t *x, const uint8_t *p, size_t len) {
  size_t o = 0;
  const char *kv[2];
  int which = 0;
  size_t start = 0;
  for (size_t i = 0; i < len; i++) {
    if (p[i] != 0) continue;
    kv[which] = (const char *)p + start;
    start = i + 1;
    if (which == 0) {
      which = 1;
      continue;
    }
    which = 0;
    if (strcasecmp(kv[0], "blksize") == 0) x->blksize = (unsigned)strtoul(kv[1], NULL, 10);
    if (strcasecmp(kv[0], "windowsize") == 0) x->window = (unsigned)strtoul(kv[1], NULL, 10);
    if (!g.have_oack_text && o + strlen(kv[0]) + strlen(kv[1]) + 3 < sizeof(g.oack)) {
      o += (size_t)snprintf(g.oack + o, sizeof(g.oack) - o, "%s%s:%s", o ? "," : "", kv[0], kv[1]);
    }
  }
  if (x->blksize == 0) x->blksize = 512;
  if (x->window == 0) x->window = 1;
  g.have_oack_text = 1;
}

static void on_packet(xfer_t *x, const struct sockaddr_in *from, const uint8_t *p, size_t len) {
  if (!x->active || len < 4) return;
  if (!x->have_tid) {
    x->tid = *from;
    x->have_tid = 1;
  } else if (from->sin_port != x->tid.sin_port || from->sin_addr.s_addr != x->tid.sin_addr.s_addr) {
    return; /* another transfer ID: ignore */
  }
  uint16_t op = (uint16_t)((p[0] << 8) | p[1]);
  if (op == 6 && x->expect == 1 && x->got == 0) { /* OACK */
    if (x->to_server) on_oack(x, p + 2, len - 2);
    x->retries = 0;
    send_ack(x, 0);
    return;
  }
  if (op != 3) { /* ERROR or nonsense */
    finish(x, 0);
    return;
  }
  uint16_t block = (uint16_t)((p[2] << 8) | p[3]);
  if (block != x->expect) {
    /* A block ahead of the one expected: one was lost inside the window.
     * RFC 7440: acknowledge the last block received in order, once. */
    uint16_t ahead = (uint16_t)(block - x->expect);
    if (ahead < x->window && !x->gap_acked) {
      x->gap_acked = 1;
      x->since_ack = 0;
      send_ack(x, (uint16_t)(x->expect - 1));
    }
    return; /* duplicate: the deadline handles loss */
  }
  size_t n = len - 4;
  if (n > x->blksize || x->got + n > g.expect_len || memcmp(g.expect + x->got, p + 4, n) != 0) {
    finish(x, 0);
    return;
  }
  x->got += n;
  x->expect++;
  x->retries = 0;
  x->gap_acked = 0;
  int last = n < x->blksize;
  if (last || ++x->since_ack >= x->window) {
    x->since_ack = 0;
    send_ack(x, block);
  } else {
    x->deadline_ms = now_ms() + g.timeout_ms;
  }
  if (last) finish(x, x->got == g.expect_len);
}

static void read_socket(unsigned si) {
  sock_t *s = &g.socks[si];
  for (int rounds = 0; rounds < 8 && s->fd >= 0; rounds++) {
    for (unsigned j = 0; j < BATCH; j++) {
      struct msghdr *m = &g.in[j].msg_hdr;
      g.in_iov[j].iov_base = g.in_buf[j];
      g.in_iov[j].iov_len = MAX_PKT;
      m->msg_name = &g.in_from[j];
      m->msg_namelen = sizeof(g.in_from[j]);
      m->msg_iov = &g.in_iov[j];
      m->msg_iovlen = 1;
      m->msg_control = g.in_ctl[j].buf;
      m->msg_controllen = sizeof(g.in_ctl[j].buf);
      m->msg_flags = 0;
    }
    int n = recvmmsg(s->fd, g.in, g.addr_mode ? BATCH : 1, MSG_DONTWAIT, NULL);
    if (n <= 0) break;
    for (int j = 0; j < n; j++) {
      struct msghdr *m = &g.in[j].msg_hdr;
      if (m->msg_namelen < sizeof(struct sockaddr_in) || g.in_from[j].sin_family != AF_INET) {
        continue;
      }
      unsigned i;
      if (g.addr_mode) {
        struct in_addr dst = {0};
        int found = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c != NULL; c = CMSG_NXTHDR(m, c)) {
          if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
            struct in_pktinfo pi;
            memcpy(&pi, CMSG_DATA(c), sizeof(pi));
            dst = pi.ipi_addr;
            found = 1;
          }
        }
        if (!found || !local_of_addr(dst, &i)) continue;
      } else {
        i = s->cur;
      }
      on_packet(&g.x[i], &g.in_from[j], g.in_buf[j], g.in[j].msg_len);
      if (s->fd < 0) break; /* port mode: the transfer ended */
    }
    if (s->fd >= 0) flush(s);
    if (!g.addr_mode || n < BATCH) break;
  }
}

static void check_deadlines(void) {
  uint64_t now = now_ms();
  for (unsigned i = 0; i < g.started; i++) {
    xfer_t *x = &g.x[i];
    if (!x->active || x->deadline_ms > now) continue;
    if (++x->retries > g.retries) {
      finish(x, 0);
      continue;
    }
    g.resends++;
    queue_last(x);
  }
  for (unsigned s = 0; s < g.nsocks; s++) {
    if (g.socks[s].fd >= 0) flush(&g.socks[s]);
  }
}

/* Runs this process's share; returns 0 or -1 on setup failure. */
static int run_proc(void) {
  g.ep = epoll_create1(EPOLL_CLOEXEC);
  if (g.ep < 0) return -1;
  g.x = calloc(g.my_total, sizeof(xfer_t));
  g.lat_ms = calloc(g.my_total ? g.my_total : 1, sizeof(double));
  g.in_buf = malloc((size_t)BATCH * MAX_PKT);
  g.nsocks = g.addr_mode ? (g.my_conc + PER_SOCKET - 1) / PER_SOCKET : g.my_conc;
  if (g.nsocks == 0) g.nsocks = 1;
  g.socks = calloc(g.nsocks, sizeof(sock_t));
  if (g.x == NULL || g.lat_ms == NULL || g.in_buf == NULL || g.socks == NULL) return -1;
  for (unsigned s = 0; s < g.nsocks; s++) {
    g.socks[s].fd = -1;
    if (!g.addr_mode) continue;
    struct in_addr any = {htonl(INADDR_ANY)};
    g.socks[s].fd = open_socket(any);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = s};
    if (g.socks[s].fd < 0 || epoll_ctl(g.ep, EPOLL_CTL_ADD, g.socks[s].fd, &ev) != 0) return -1;
  }
  for (unsigned i = 0; i < g.my_conc && g.started < g.my_total; i++) start_one(i);
  for (unsigned s = 0; s < g.nsocks; s++) {
    if (g.socks[s].fd >= 0) flush(&g.socks[s]);
  }
  uint64_t next_tick = now_ms() + TICK_MS;
  struct epoll_event evs[256];
  while (g.running > 0) {
    uint64_t now = now_ms();
    int wait = next_tick > now ? (int)(next_tick - now) : 0;
    int n = epoll_wait(g.ep, evs, 256, wait);
    for (int e = 0; e < n; e++) read_socket(evs[e].data.u32);
    if (now_ms() >= next_tick) {
      check_deadlines();
      next_tick = now_ms() + TICK_MS;
    }
  }
  return 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int write_all(int fd, const void *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p = (const char *)p + w;
    n -= (size_t)w;
  }
  return 0;
}

static int read_all(int fd, void *p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p = (char *)p + r;
    n -= (size_t)r;
  }
  return 0;
}

static void usage(void) {
  fprintf(stderr,
          "usage: capstan-tftp-load --server HOST:PORT --file NAME --expect LOCALFILE\n"
          "       --concurrency N --total M [--blksize B] [--windowsize W] [--timeout-ms T]\n"
          "       [--retries R] [--procs P] [--mode addr|port]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *server = NULL, *expect = NULL;
  g.concurrency = 100;
  g.total = 1000;
  g.timeout_ms = 1000;
  g.retries = 5;
  g.procs = 1;
  g.addr_mode = 1;
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
    } else if (strcmp(k, "--windowsize") == 0) {
      g.window_opt = (unsigned)strtoul(v, NULL, 10);
    } else if (strcmp(k, "--timeout-ms") == 0) {
      g.timeout_ms = (unsigned)strtoul(v, NULL, 10);
    } else if (strcmp(k, "--retries") == 0) {
      g.retries = (unsigned)strtoul(v, NULL, 10);
    } else if (strcmp(k, "--procs") == 0) {
      g.procs = (unsigned)strtoul(v, NULL, 10);
    } else if (strcmp(k, "--mode") == 0) {
      if (strcmp(v, "addr") == 0) {
        g.addr_mode = 1;
      } else if (strcmp(v, "port") == 0) {
        g.addr_mode = 0;
      } else {
        usage();
      }
    } else {
      usage();
    }
  }
  if (server == NULL || g.file == NULL || expect == NULL || g.total == 0 || g.concurrency == 0 ||
      g.procs == 0 || g.procs > 64 || strlen(g.file) > 255 || g.total > 1000000) {
    usage();
  }
  char host[64];
  const char *colon = strrchr(server, ':');
  if (colon == NULL || (size_t)(colon - server) >= sizeof(host)) usage();
  memcpy(host, server, (size_t)(colon - server));
  host[colon - server] = '\0';
  memset(&g.server, 0, sizeof(g.server));
  g.server.sin_family = AF_INET;
  g.server.sin_port = htons((uint16_t)atoi(colon + 1));
  if (inet_pton(AF_INET, host, &g.server.sin_addr) != 1) usage();
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

  /* Each process: its share of the concurrency and of the total; it sends
   * back "done failures resends oack_len oack latencies[done]". */
  int pipes[64];
  pid_t pids[64];
  uint64_t t0 = now_ns();
  for (unsigned p = 0; p < g.procs; p++) {
    int fds[2];
    if (pipe(fds) != 0) return 2;
    pid_t pid = fork();
    if (pid < 0) return 2;
    if (pid == 0) {
      close(fds[0]);
      g.proc = p;
      g.my_total = g.total / g.procs + (p < g.total % g.procs);
      g.my_conc = g.concurrency / g.procs + (p < g.concurrency % g.procs);
      if (g.my_conc == 0) g.my_conc = 1;
      if (run_proc() != 0) {
        perror("capstan-tftp-load: setup");
        _exit(3);
      }
      uint32_t hdr[5] = {g.done, g.failures, (uint32_t)g.resends, g.no_reply,
                         g.have_oack_text ? (uint32_t)strlen(g.oack) : UINT32_MAX};
      if (write_all(fds[1], hdr, sizeof(hdr)) != 0 ||
          (g.have_oack_text && write_all(fds[1], g.oack, strlen(g.oack)) != 0) ||
          write_all(fds[1], g.lat_ms, g.done * sizeof(double)) != 0) {
        _exit(3);
      }
      _exit(0);
    }
    close(fds[1]);
    pipes[p] = fds[0];
    pids[p] = pid;
  }
  double *lat = calloc(g.total, sizeof(double));
  unsigned done = 0, failures = 0, no_reply = 0;
  uint64_t resends = 0;
  char oack[OACK_TEXT_MAX] = "";
  int have_oack = 0, bad = 0;
  for (unsigned p = 0; p < g.procs; p++) {
    uint32_t hdr[5];
    if (lat == NULL || read_all(pipes[p], hdr, sizeof(hdr)) != 0 || hdr[0] > g.total - done) {
      bad = 1;
    } else {
      if (hdr[4] != UINT32_MAX) {
        char tmp[OACK_TEXT_MAX];
        if (hdr[4] >= sizeof(tmp) || read_all(pipes[p], tmp, hdr[4]) != 0) {
          bad = 1;
        } else if (!have_oack) {
          memcpy(oack, tmp, hdr[4]);
          oack[hdr[4]] = '\0';
          have_oack = 1;
        }
      }
      if (!bad && read_all(pipes[p], lat + done, hdr[0] * sizeof(double)) != 0) bad = 1;
      if (!bad) {
        done += hdr[0];
        failures += hdr[1];
        resends += hdr[2];
        no_reply += hdr[3];
      }
    }
    close(pipes[p]);
  }
  for (unsigned p = 0; p < g.procs; p++) {
    int st;
    waitpid(pids[p], &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) bad = 1;
  }
  double secs = (double)(now_ns() - t0) / 1e9;
  if (bad) {
    fprintf(stderr, "capstan-tftp-load: a worker process failed\n");
    return 2;
  }
  failures += g.total - done - failures; /* never started (setup failure) */
  qsort(lat, done, sizeof(double), cmp_double);
  /* Nearest-rank percentiles. */
  double p50 = done ? lat[(size_t)ceil(0.50 * done) - 1] : 0;
  double p99 = done ? lat[(size_t)ceil(0.99 * done) - 1] : 0;
  double mx = done ? lat[done - 1] : 0;
  printf(
      "files=%u failures=%u secs=%.3f files_per_sec=%.1f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f "
      "mib_per_sec=%.1f resends=%llu failures_no_reply=%u oack=%s\n",
      done, failures, secs, done / secs, p50, p99, mx,
      (double)done * (double)g.expect_len / secs / (1024.0 * 1024.0), (unsigned long long)resends,
      no_reply, have_oack ? oack : "none");
  free(lat);
  free(g.expect);
  return failures ? 1 : 0;
}
