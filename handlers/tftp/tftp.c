/* sendmmsg */
#define _GNU_SOURCE
#include "handlers/tftp/tftp.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <openssl/bytestring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "core/base/conntrack.h"
#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "core/base/netaddr.h"
#include "core/base/names.h"
#include "core/descriptors.h"
#include "core/memory_shortage.h"
#include "handlers/tftp/tftp_packet.h"

/* One receive buffer per server, shared by the listener and every transfer
 * socket: a datagram is consumed inside its receive callback. */
#define RECV_BUF_SIZE 65536
/* Buckets of the per-client-address table (power of two). */
#define CLIENT_BUCKETS 4096
/* A netascii transfer keeps |windowsize| encoded packets; cap that memory
 * by shrinking the window rather than trusting a large configuration. */
#define NETASCII_RING_MAX (1u << 20)
/* Room for an OACK: four options, each "name\0" + up to 20 digits + NUL. */
#define OACK_MAX 160
#define ERROR_PKT_MAX (4 + CAPSTAN_TFTP_ERROR_MSG_MAX + 1)
/* Receive buffer asked for the listener: phones booting together send
 * their requests in one burst, and the default (~200 KiB, a few hundred
 * small datagrams) drops most of a burst of thousands. Best effort: the
 * kernel caps it at net.core.rmem_max. */
#define LISTENER_RCVBUF (4 << 20)
/* drain_client: datagrams read per transfer socket, and their size (an
 * ACK or ERROR is far smaller; anything longer counts as truncated). */
#define DRAIN_TRANSFERS_MAX 16 /* transfers of one client read per request */
#define DRAIN_PER_TRANSFER 4
#define DRAIN_PKT_MAX 600
/* Blocks of a window sent with one sendmmsg. */
#define SEND_BATCH 64

#define TRANSFER_RESULTS(X) \
  X(OK, "ok")               \
  X(NOT_FOUND, "not_found") \
  X(DENIED, "denied")       \
  X(ERROR, "error")         \
  X(TIMEOUT, "timeout")

typedef enum {
#define X(id, name) RESULT_##id,
  TRANSFER_RESULTS(X)
#undef X
      RESULT_COUNT
} transfer_result_t;

static const char *const kResultNames[] = {
#define X(id, name) name,
    TRANSFER_RESULTS(X)
#undef X
};

#define TRANSFER_STATES(X)                           \
  X(OPENING, "opening") /* waiting for the source */ \
  X(SENDING, "sending") /* OACK or data in flight */ \
  X(CLOSING, "closing") /* handles closing */

typedef enum {
#define X(id, name) ST_##id,
  TRANSFER_STATES(X)
#undef X
} transfer_state_t;

CAPSTAN_DEFINE_NAME_FN(static, transfer_state_name, transfer_state_t, TRANSFER_STATES, "?")

typedef struct transfer transfer_t;

struct transfer {
  capstan_tftp_server_t *srv;
  /* The peer address's entry in srv->clients: its data is the list of the
   * address's transfers, linked through client_next/client_prev. */
  capstan_conntrack_entry_t *client;
  transfer_t *client_next, *client_prev;
  uv_udp_t sock;
  uv_os_fd_t fd; /* of |sock|: sends go straight to sendmsg/sendmmsg */
  uv_timer_t timer;
  int open_handles;
  int active;   /* counted in srv->active and the client */
  int read_one; /* a datagram was consumed in this read burst */
  transfer_state_t state;
  struct sockaddr_storage peer;
  capstan_tftp_request_t req; /* option values are rewritten to what we accept */
  unsigned oack_options;
  capstan_file_kind_t kind;
  capstan_blob_t *blob;
  uint64_t stream_len; /* bytes of the data stream (netascii: encoded) */
  uint32_t blksize, windowsize;
  /* Blocks are numbered absolutely from 0 (the OACK) and put on the wire
   * modulo 65536, so files over 65535 blocks roll over to 0. */
  uint64_t last_block;   /* the final (short, maybe empty) data block */
  uint64_t base;         /* first block not acknowledged */
  uint64_t high;         /* one past the highest block ever sent */
  uint64_t goback_until; /* no go-back until base reaches this */
  /* Netascii: encoder and ring of encoded packets (slot = block % window). */
  capstan_tftp_netascii_t na;
  uint8_t *ring;
  uint32_t *ring_len;
  /* Retransmission. */
  unsigned rto_ms, rto_min_ms, rto_max_ms;
  double srtt_ms, rttvar_ms;
  int have_rtt;
  int sample_valid;
  uint64_t sample_block, sample_at;
  unsigned retries;
  uint64_t deadline;  /* loop time when the in-flight window is due (see arm_timer) */
  uint64_t timer_due; /* loop time the libuv timer fires, if active */
  uint64_t bytes_sent;
  double started;
};

typedef struct {
  capstan_metric_t *requests[CAPSTAN_FILE_KIND_COUNT];
  capstan_metric_t *transfers[CAPSTAN_FILE_KIND_COUNT][RESULT_COUNT];
  capstan_metric_t *bytes[CAPSTAN_FILE_KIND_COUNT];
  capstan_metric_t *duration[CAPSTAN_FILE_KIND_COUNT];
  capstan_metric_t *active;
  capstan_metric_t *retransmits;
  capstan_metric_t *timeouts;
  capstan_metric_t *dup_acks;
  capstan_metric_t *options[CAPSTAN_TFTP_OPT_COUNT];
  capstan_metric_t *rejections[CAPSTAN_TFTP_REJECT_COUNT];
  capstan_metric_t *wrong_port;
  capstan_metric_t *large_requests;
} tftp_metrics_t;

struct capstan_tftp_server {
  uv_loop_t *loop;
  uv_udp_t listener;
  struct sockaddr_storage bind_addr; /* listener address, port 0: for transfers */
  int port;
  capstan_tftp_config_t cfg;
  capstan_filesource_t *files;
  unsigned active; /* transfers counted against the limits */
  unsigned alive;  /* transfer structs not yet freed */
  int stopping, listener_closed;
  void (*done)(void *arg);
  void *done_arg;
  capstan_conntrack_t clients; /* transfers in progress per peer address */
  tftp_metrics_t m;
  capstan_log_limit_t busy_log[2]; /* 0: limit_total, 1: limit_per_address */
  uint8_t rbuf[RECV_BUF_SIZE];
};

static const double kDurationBuckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                          0.5,   1,      2.5,   5,    10,    30,   60,  300};

void capstan_tftp_config_defaults(capstan_tftp_config_t *cfg) {
  cfg->max_blksize = 1468;
  cfg->max_windowsize = 16;
  cfg->max_transfers = 20000;
  cfg->max_transfers_per_address = 2000; /* 1,000 phones behind one NAT at once */
  cfg->retry_after_seconds = 10;
  cfg->default_timeout_ms = 1000;
  cfg->max_retries = 5;
  /* Loopback and LAN RTTs would otherwise give an RTO of a millisecond and
   * a resend on any scheduling hiccup. */
  cfg->min_timeout_ms = 200;
}

/* ---- metrics -------------------------------------------------------------- */

static void metrics_register(tftp_metrics_t *m) {
  char labels[96];
  for (int k = 0; k < CAPSTAN_FILE_KIND_COUNT; k++) {
    const char *kind = capstan_file_kind_name((capstan_file_kind_t)k);
    snprintf(labels, sizeof(labels), "kind=\"%s\"", kind);
    m->requests[k] =
        capstan_metrics_counter("capstan_tftp_requests_total", "TFTP read requests.", labels);
    m->bytes[k] = capstan_metrics_counter(
        "capstan_tftp_bytes_sent_total", "TFTP data payload bytes sent, resends included.", labels);
    m->duration[k] = capstan_metrics_histogram(
        "capstan_tftp_transfer_duration_seconds", "TFTP transfer duration, request to end.", labels,
        kDurationBuckets, sizeof(kDurationBuckets) / sizeof(kDurationBuckets[0]));
    for (int r = 0; r < RESULT_COUNT; r++) {
      snprintf(labels, sizeof(labels), "kind=\"%s\",result=\"%s\"", kind, kResultNames[r]);
      m->transfers[k][r] = capstan_metrics_counter("capstan_tftp_transfers_total",
                                                   "TFTP transfers ended, by result.", labels);
    }
  }
  m->active =
      capstan_metrics_gauge("capstan_tftp_active_transfers", "TFTP transfers in progress.", NULL);
  m->retransmits = capstan_metrics_counter("capstan_tftp_retransmits_total",
                                           "TFTP packets sent again (timeout or go-back).", NULL);
  m->timeouts = capstan_metrics_counter("capstan_tftp_timeouts_total",
                                        "TFTP transfers abandoned after max retries.", NULL);
  m->dup_acks = capstan_metrics_counter("capstan_tftp_duplicate_acks_ignored_total",
                                        "TFTP duplicate or stale ACKs ignored.", NULL);
  for (int o = 0; o < CAPSTAN_TFTP_OPT_COUNT; o++) {
    snprintf(labels, sizeof(labels), "option=\"%s\"",
             capstan_tftp_option_name((capstan_tftp_option_t)o));
    m->options[o] = capstan_metrics_counter("capstan_tftp_options_negotiated_total",
                                            "TFTP options acknowledged in an OACK.", labels);
  }
  for (int r = 1; r < CAPSTAN_TFTP_REJECT_COUNT; r++) {
    snprintf(labels, sizeof(labels), "reason=\"%s\"",
             capstan_tftp_reject_name((capstan_tftp_reject_t)r));
    m->rejections[r] =
        capstan_metrics_counter("capstan_tftp_rejections_total", "TFTP requests refused.", labels);
  }
  m->wrong_port = capstan_metrics_counter(
      "capstan_tftp_wrong_port_packets_total",
      "Packets to a transfer port from another address/port (answered with error 5).", NULL);
  m->large_requests = capstan_metrics_counter(
      "capstan_tftp_large_requests_total",
      "TFTP requests over the RFC 1350 limit of 512 bytes (accepted up to 1024).", NULL);
}

/* ---- addresses ------------------------------------------------------------ */

static socklen_t addr_len(const struct sockaddr *sa) {
  return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static int same_peer(const struct sockaddr_storage *a, const struct sockaddr *b) {
  if (a->ss_family != b->sa_family) return 0;
  if (b->sa_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
    const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
  }
  const struct sockaddr_in *x = (const struct sockaddr_in *)a;
  const struct sockaddr_in *y = (const struct sockaddr_in *)b;
  return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
}

/* Names are peer-chosen: keep logs one line of key=value by escaping
 * anything but plain printable characters. */
static void escape_name(const char *in, char *out, size_t cap) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  for (const unsigned char *p = (const unsigned char *)in; *p && o + 4 < cap; p++) {
    if (*p > 0x20 && *p < 0x7f && *p != '"' && *p != '\\' && *p != '%' && *p != '=') {
      out[o++] = (char)*p;
    } else {
      out[o++] = '%';
      out[o++] = hex[*p >> 4];
      out[o++] = hex[*p & 15];
    }
  }
  out[o] = '\0';
}

/* ---- sending -------------------------------------------------------------- */

static void reject(capstan_tftp_server_t *srv, const struct sockaddr *to,
                   capstan_tftp_reject_t reason, uint16_t code, const char *msg) {
  capstan_metric_inc(srv->m.rejections[reason]);
  if (capstan_log_enabled(CAPSTAN_LOG_DEBUG)) {
    char peer[96];
    capstan_netaddr_format(to, peer, sizeof(peer));
    LOG_DEBUG("event=tftp_request_rejected peer=%s reason=%s", peer,
              capstan_tftp_reject_name(reason));
  }
  if (code == UINT16_MAX) return; /* never answer an ERROR packet */
  uint8_t pkt[ERROR_PKT_MAX];
  size_t n = capstan_tftp_build_error(pkt, sizeof(pkt), code, msg);
  uv_buf_t b = uv_buf_init((char *)pkt, (unsigned)n);
  if (n > 0) (void)uv_udp_try_send(&srv->listener, &b, 1, to);
}

/* A request beyond a limit: error 0 with a message that says to come back
 * (phones show it; nothing else in TFTP carries a delay), counted, and
 * logged at most once per limit per CAPSTAN_LOG_LIMIT_MS. */
static void reject_busy(capstan_tftp_server_t *srv, const struct sockaddr *to,
                        capstan_tftp_reject_t reason) {
  int total = reason == CAPSTAN_TFTP_REJECT_LIMIT_TOTAL;
  char msg[80];
  snprintf(msg, sizeof(msg), "server busy (%s), retry in %u s",
           total ? "too many transfers" : "too many transfers from this address",
           srv->cfg.retry_after_seconds);
  reject(srv, to, reason, CAPSTAN_TFTP_ERR_UNDEFINED, msg);
  uint64_t held;
  if (!capstan_log_limit_pass(&srv->busy_log[total ? 0 : 1], uv_now(srv->loop), &held)) return;
  char peer[96];
  capstan_netaddr_format(to, peer, sizeof(peer));
  LOG_WARN(
      "event=tftp_request_refused peer=%s reason=%s limit=%u answer=busy retry_after=%u "
      "active=%u also_refused=%llu hint=\"a higher limit: capstan config set %s N\"",
      peer, capstan_tftp_reject_name(reason),
      total ? srv->cfg.max_transfers : srv->cfg.max_transfers_per_address,
      srv->cfg.retry_after_seconds, srv->active, (unsigned long long)held,
      total ? "tftp-max-transfers" : "tftp-max-transfers-per-address");
}

static void send_error_to(uv_udp_t *sock, const struct sockaddr *to, uint16_t code,
                          const char *msg) {
  uint8_t pkt[ERROR_PKT_MAX];
  size_t n = capstan_tftp_build_error(pkt, sizeof(pkt), code, msg);
  uv_buf_t b = uv_buf_init((char *)pkt, (unsigned)n);
  /* Best effort: a lost error packet ends in a client timeout. */
  if (n > 0) (void)uv_udp_try_send(sock, &b, 1, to);
}

/* Fills |iov| (1 or 2 entries; |hdr| holds the 4-byte DATA header) with
 * block |b| (0: the OACK, built into |hdr|, which then has OACK_MAX
 * bytes). Octet blocks are a slice of the immutable blob, never copied.
 * For netascii, a block at |*fresh_from| (the next never-sent block) is
 * encoded into its ring slot and advances |*fresh_from|; later sends
 * reuse the slot. Returns the number of iovecs. */
static int prepare_block(transfer_t *t, uint64_t b, uint64_t *fresh_from, uint8_t *hdr,
                         struct iovec iov[2]) {
  if (b == 0) {
    size_t n = capstan_tftp_build_oack(hdr, OACK_MAX, t->oack_options, &t->req);
    iov[0].iov_base = hdr;
    iov[0].iov_len = n;
    if (b == *fresh_from) (*fresh_from)++;
    return 1;
  }
  hdr[0] = 0;
  hdr[1] = CAPSTAN_TFTP_OP_DATA;
  hdr[2] = (uint8_t)(b >> 8);
  hdr[3] = (uint8_t)b;
  size_t payload;
  int niov;
  if (t->ring != NULL) {
    size_t slot = (size_t)(b % t->windowsize);
    uint8_t *pkt = t->ring + slot * ((size_t)t->blksize + 4);
    if (b == *fresh_from) {
      memcpy(pkt, hdr, 4);
      t->ring_len[slot] = (uint32_t)capstan_tftp_netascii_fill(&t->na, t->blob->data, t->blob->len,
                                                               pkt + 4, t->blksize);
    }
    payload = t->ring_len[slot];
    iov[0].iov_base = pkt;
    iov[0].iov_len = payload + 4;
    niov = 1;
  } else {
    uint64_t off = (b - 1) * t->blksize;
    payload = t->stream_len - off < t->blksize ? (size_t)(t->stream_len - off) : t->blksize;
    iov[0].iov_base = hdr;
    iov[0].iov_len = 4;
    iov[1].iov_base = (void *)(t->blob->data + off);
    iov[1].iov_len = payload;
    niov = payload > 0 ? 2 : 1;
  }
  if (b == *fresh_from) (*fresh_from)++;
  t->bytes_sent += payload;
  return niov;
}

/* Sends blocks [from, from + n) (n <= SEND_BATCH) in one sendmmsg (one
 * sendmsg for a single block). Returns 0, or -1 if not every block went
 * out (a full socket buffer: the rest counts as lost, the timer resends). */
static int send_blocks(transfer_t *t, uint64_t from, unsigned n) {
  struct mmsghdr msgs[SEND_BATCH];
  struct iovec iov[SEND_BATCH][2];
  uint8_t hdrs[SEND_BATCH][4];
  uint8_t oack[OACK_MAX];
  uint64_t fresh_from = t->high;
  memset(msgs, 0, sizeof(msgs[0]) * n);
  for (unsigned i = 0; i < n; i++) {
    uint64_t b = from + i;
    struct msghdr *m = &msgs[i].msg_hdr;
    m->msg_iov = iov[i];
    m->msg_iovlen = (size_t)prepare_block(t, b, &fresh_from, b == 0 ? oack : hdrs[i], iov[i]);
    m->msg_name = &t->peer;
    m->msg_namelen = addr_len((const struct sockaddr *)&t->peer);
  }
  unsigned sent = 0;
  while (sent < n) {
    int r = n - sent == 1 ? (sendmsg(t->fd, &msgs[sent].msg_hdr, 0) >= 0 ? 1 : -1)
                          : sendmmsg(t->fd, msgs + sent, n - sent, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    sent += (unsigned)r;
  }
  return 0;
}

static void on_timer(uv_timer_t *timer);

/* The retransmit deadline moves forward on every ACK; restarting the
 * libuv timer each time would cost two heap operations per packet. The
 * timer is only started when it is not running or would fire after the
 * new deadline; when it fires early, on_timer re-arms it. */
static void arm_timer(transfer_t *t) {
  t->deadline = uv_now(t->srv->loop) + t->rto_ms;
  if (!uv_is_active((uv_handle_t *)&t->timer) || t->timer_due > t->deadline) {
    uv_timer_start(&t->timer, on_timer, t->rto_ms, 0);
    t->timer_due = t->deadline;
  }
}

/* Sends blocks from |from| (<= high) to the end of the window: resends of
 * blocks already sent, then new ones, batched. Then arms the retransmit
 * deadline. */
static void send_window(transfer_t *t, uint64_t from) {
  uint64_t limit = t->base == 0 ? 1 : t->base + t->windowsize;
  if (limit > t->last_block + 1) limit = t->last_block + 1;
  uint64_t b = from;
  while (b < limit) {
    unsigned n = limit - b > SEND_BATCH ? SEND_BATCH : (unsigned)(limit - b);
    int rc = send_blocks(t, b, n);
    /* Blocks that did not go out count as sent and lost, like a datagram
     * dropped on the way: the retransmit timer resends them. */
    for (unsigned i = 0; i < n; i++, b++) {
      if (b == t->high) {
        t->high = b + 1;
        if (!t->sample_valid) {
          t->sample_valid = 1;
          t->sample_block = b;
          t->sample_at = uv_now(t->srv->loop);
        }
      } else {
        capstan_metric_inc(t->srv->m.retransmits);
      }
    }
    if (rc < 0) break;
  }
  arm_timer(t);
}

/* ---- transfer lifetime ---------------------------------------------------- */

static void maybe_done(capstan_tftp_server_t *srv) {
  if (!srv->stopping || !srv->listener_closed || srv->alive > 0) return;
  void (*done)(void *) = srv->done;
  void *arg = srv->done_arg;
  capstan_conntrack_cleanup(&srv->clients);
  free(srv);
  if (done != NULL) done(arg);
}

static void on_transfer_handle_closed(uv_handle_t *h) {
  transfer_t *t = h->data;
  if (--t->open_handles > 0) return;
  capstan_tftp_server_t *srv = t->srv;
  capstan_blob_unref(t->blob);
  free(t->ring);
  free(t->ring_len);
  free(t);
  srv->alive--;
  maybe_done(srv);
}

/* Closes the handles (|handles|: 1 = timer only, 2 = timer and socket); the
 * memory goes in the last close callback. */
static void transfer_release(transfer_t *t, int handles) {
  t->state = ST_CLOSING;
  t->open_handles = handles;
  uv_timer_stop(&t->timer);
  uv_close((uv_handle_t *)&t->timer, on_transfer_handle_closed);
  if (handles > 1) {
    uv_udp_recv_stop(&t->sock);
    uv_close((uv_handle_t *)&t->sock, on_transfer_handle_closed);
  }
}

static void transfer_unlink(transfer_t *t) {
  capstan_tftp_server_t *srv = t->srv;
  if (!t->active) return;
  t->active = 0;
  capstan_conntrack_entry_t *c = t->client;
  if (t->client_prev != NULL) {
    t->client_prev->client_next = t->client_next;
  } else {
    c->data = t->client_next;
  }
  if (t->client_next != NULL) t->client_next->client_prev = t->client_prev;
  capstan_conntrack_release(&srv->clients, c);
  srv->active--;
  capstan_metric_add(srv->m.active, -1);
}

static void transfer_finish(transfer_t *t, transfer_result_t result) {
  capstan_tftp_server_t *srv = t->srv;
  if (t->state == ST_CLOSING) return;
  double secs = capstan_now_seconds() - t->started;
  capstan_metric_inc(srv->m.transfers[t->kind][result]);
  capstan_metric_add(srv->m.bytes[t->kind], (double)t->bytes_sent);
  capstan_metric_observe(srv->m.duration[t->kind], secs);
  if (result == RESULT_TIMEOUT) capstan_metric_inc(srv->m.timeouts);
  capstan_log_level_t level = result == RESULT_OK ? CAPSTAN_LOG_DEBUG
                              : (result == RESULT_NOT_FOUND || result == RESULT_DENIED)
                                  ? CAPSTAN_LOG_INFO
                                  : CAPSTAN_LOG_WARN;
  if (capstan_log_enabled(level)) {
    char peer[96], name[CAPSTAN_TFTP_NAME_MAX * 3 + 1];
    capstan_netaddr_format((const struct sockaddr *)&t->peer, peer, sizeof(peer));
    escape_name(t->req.filename, name, sizeof(name));
    capstan_log(level,
                "event=tftp_transfer_done file=%s peer=%s kind=%s result=%s bytes=%llu "
                "ms=%.1f state=%s",
                name, peer, capstan_file_kind_name(t->kind), kResultNames[result],
                (unsigned long long)t->bytes_sent, secs * 1e3, transfer_state_name(t->state));
  }
  transfer_unlink(t);
  transfer_release(t, 2);
}

static void on_timer(uv_timer_t *timer) {
  transfer_t *t = timer->data;
  if (t->state != ST_SENDING) return;
  uint64_t now = uv_now(t->srv->loop);
  if (now < t->deadline) { /* progress since the timer was started */
    uv_timer_start(&t->timer, on_timer, t->deadline - now, 0);
    t->timer_due = t->deadline;
    return;
  }
  if (t->retries >= t->srv->cfg.max_retries) {
    transfer_finish(t, RESULT_TIMEOUT);
    return;
  }
  t->retries++;
  t->rto_ms = t->rto_ms * 2 > t->rto_max_ms ? t->rto_max_ms : t->rto_ms * 2;
  t->sample_valid = 0; /* Karn: no sample across a resend */
  send_window(t, t->base);
}

static void rtt_sample(transfer_t *t) {
  double r = (double)(uv_now(t->srv->loop) - t->sample_at);
  if (!t->have_rtt) {
    t->srtt_ms = r;
    t->rttvar_ms = r / 2;
    t->have_rtt = 1;
  } else {
    double d = t->srtt_ms > r ? t->srtt_ms - r : r - t->srtt_ms;
    t->rttvar_ms = 0.75 * t->rttvar_ms + 0.25 * d;
    t->srtt_ms = 0.875 * t->srtt_ms + 0.125 * r;
  }
  double var = 4 * t->rttvar_ms < 1 ? 1 : 4 * t->rttvar_ms;
  double rto = t->srtt_ms + var;
  if (rto < t->rto_min_ms) rto = t->rto_min_ms;
  if (rto > t->rto_max_ms) rto = t->rto_max_ms;
  t->rto_ms = (unsigned)rto;
}

static void on_ack(transfer_t *t, uint16_t n) {
  /* The acknowledged block: the highest one sent that matches |n| modulo
   * 65536. Anything below |base| is a duplicate or stale. */
  uint64_t top = t->high - 1;
  uint16_t delta = (uint16_t)((uint16_t)top - n);
  if (delta > top || top - delta < t->base) {
    capstan_metric_inc(t->srv->m.dup_acks);
    return;
  }
  uint64_t acked = top - delta;
  t->retries = 0;
  if (t->sample_valid && acked >= t->sample_block) {
    rtt_sample(t);
    t->sample_valid = 0;
  }
  t->base = acked + 1;
  if (t->base > t->last_block) {
    transfer_finish(t, RESULT_OK);
    return;
  }
  if (t->base == t->high) {
    send_window(t, t->high);
  } else if (t->base >= t->goback_until) {
    /* RFC 7440: the client missed base; go back to it, once per window. */
    t->sample_valid = 0;
    send_window(t, t->base);
    t->goback_until = t->high;
  } else {
    send_window(t, t->high);
  }
}

static void alloc_listener(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  capstan_tftp_server_t *srv = h->data;
  *buf = uv_buf_init((char *)srv->rbuf, sizeof(srv->rbuf));
}

/* A transfer socket holds at most one packet that matters (the peer's ACK):
 * after one datagram, an empty buffer ends libuv's read burst (documented:
 * the receive callback gets UV_ENOBUFS) instead of a recvmsg that would
 * only say EAGAIN. Anything still queued stays readable (level-triggered
 * poll) and is read on the next loop iteration. */
static void alloc_transfer(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  transfer_t *t = h->data;
  if (t->read_one) {
    t->read_one = 0;
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  *buf = uv_buf_init((char *)t->srv->rbuf, sizeof(t->srv->rbuf));
}

/* Handles one datagram that reached transfer |t|'s socket. */
static void transfer_packet(transfer_t *t, const uint8_t *pkt, size_t len,
                            const struct sockaddr *addr, int partial) {
  CBS cbs;
  uint16_t op = 0, block;
  CBS_init(&cbs, pkt, len);
  int have_op = CBS_get_u16(&cbs, &op);
  if (!same_peer(&t->peer, addr)) {
    capstan_metric_inc(t->srv->m.wrong_port);
    if (!(have_op && op == CAPSTAN_TFTP_OP_ERROR)) {
      send_error_to(&t->sock, addr, CAPSTAN_TFTP_ERR_UNKNOWN_TID, "Unknown transfer ID");
    }
    return;
  }
  /* While the source has not answered, nothing from the peer matters (it
   * cannot know this port yet), and the transfer must stay alive for the
   * source's callback anyway. */
  if (!have_op || partial || t->state != ST_SENDING) return;
  if (op == CAPSTAN_TFTP_OP_ACK) {
    /* A malformed ACK is dropped: the retransmit timer covers it. */
    if (!CBS_get_u16(&cbs, &block) || CBS_len(&cbs) != 0) return;
    on_ack(t, block);
  } else if (op == CAPSTAN_TFTP_OP_ERROR) {
    /* The client gave up (e.g. it refused our OACK). */
    transfer_finish(t, RESULT_ERROR);
  }
  /* Anything else from the peer is ignored. */
}

static void on_transfer_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                             const struct sockaddr *addr, unsigned flags) {
  transfer_t *t = h->data;
  if (nread < 0 || addr == NULL || t->state == ST_CLOSING) return;
  t->read_one = 1;
  transfer_packet(t, (const uint8_t *)buf->base, (size_t)nread, addr,
                  (flags & UV_UDP_PARTIAL) != 0);
}

/* Before refusing a client over its transfer limit: reads what is already
 * waiting on its transfer sockets. A client that aborts a transfer (ERROR
 * to the transfer port) and at once asks again from a new port must not
 * get "server busy" only because the listener's datagrams were read
 * first. At most DRAIN_PER_TRANSFER datagrams per transfer; packets are
 * handled exactly as in on_transfer_recv (an ACK moves its transfer on). */
static void drain_client(capstan_tftp_server_t *srv, capstan_conntrack_entry_t *c) {
  transfer_t *t = c->data;
  /* Bounded: a request (whose source may be forged) must not cost a system
   * call per transfer of a busy address at the peak of a storm. */
  for (int drained = 0; t != NULL && drained < DRAIN_TRANSFERS_MAX; drained++) {
    /* Handling a packet can only end |t| itself (and free |c| when |t| was
     * its last transfer, in which case |next| is NULL). */
    transfer_t *next = t->client_next;
    for (int i = 0; i < DRAIN_PER_TRANSFER && t->state != ST_CLOSING; i++) {
      uint8_t pkt[DRAIN_PKT_MAX];
      struct sockaddr_storage from;
      socklen_t flen = sizeof(from);
      ssize_t n = recvfrom(t->fd, pkt, sizeof(pkt), MSG_DONTWAIT | MSG_TRUNC,
                           (struct sockaddr *)&from, &flen);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) break;
      int partial = (size_t)n > sizeof(pkt);
      transfer_packet(t, pkt, partial ? sizeof(pkt) : (size_t)n, (const struct sockaddr *)&from,
                      partial);
    }
    t = next;
  }
}

static void on_file(void *ctx, int status, capstan_blob_t *blob, capstan_file_kind_t kind) {
  transfer_t *t = ctx;
  capstan_tftp_server_t *srv = t->srv;
  t->kind = (unsigned)kind < CAPSTAN_FILE_KIND_COUNT ? kind : CAPSTAN_FILE_OTHER;
  const struct sockaddr *peer = (const struct sockaddr *)&t->peer;
  if (status != 0 || blob == NULL) {
    capstan_blob_unref(blob);
    if (status == CAPSTAN_ENOENT) {
      send_error_to(&t->sock, peer, CAPSTAN_TFTP_ERR_NOT_FOUND, "File not found");
      transfer_finish(t, RESULT_NOT_FOUND);
    } else if (status == CAPSTAN_EACCES) {
      send_error_to(&t->sock, peer, CAPSTAN_TFTP_ERR_ACCESS, "Access violation");
      transfer_finish(t, RESULT_DENIED);
    } else if (status == CAPSTAN_EBUSY) {
      send_error_to(&t->sock, peer, CAPSTAN_TFTP_ERR_UNDEFINED, "server busy");
      transfer_finish(t, RESULT_ERROR);
    } else {
      send_error_to(&t->sock, peer, CAPSTAN_TFTP_ERR_UNDEFINED, "Error reading file");
      transfer_finish(t, RESULT_ERROR);
    }
    return;
  }
  t->blob = blob;
  capstan_tftp_request_t *req = &t->req;
  unsigned opts = req->options;
  t->blksize = CAPSTAN_TFTP_BLKSIZE_DEFAULT;
  if (opts & (1u << CAPSTAN_TFTP_OPT_BLKSIZE)) {
    if (req->blksize > srv->cfg.max_blksize) req->blksize = srv->cfg.max_blksize;
    t->blksize = req->blksize;
  }
  t->windowsize = 1;
  if (opts & (1u << CAPSTAN_TFTP_OPT_WINDOWSIZE)) {
    if (req->windowsize > srv->cfg.max_windowsize) req->windowsize = srv->cfg.max_windowsize;
    if (req->netascii) {
      uint32_t fit = NETASCII_RING_MAX / (t->blksize + 4);
      if (fit < 1) fit = 1;
      if (req->windowsize > fit) req->windowsize = fit;
    }
    t->windowsize = req->windowsize;
  }
  t->stream_len =
      req->netascii ? capstan_tftp_netascii_size(blob->data, blob->len) : (uint64_t)blob->len;
  /* curl refuses an OACK with tsize 0 (it takes 0 for "unknown"): for an
   * empty file tsize is simply not acknowledged. */
  if (t->stream_len == 0) opts &= ~(1u << CAPSTAN_TFTP_OPT_TSIZE);
  if (opts & (1u << CAPSTAN_TFTP_OPT_TSIZE)) req->tsize = t->stream_len;
  t->rto_max_ms = srv->cfg.default_timeout_ms;
  if (opts & (1u << CAPSTAN_TFTP_OPT_TIMEOUT)) t->rto_max_ms = req->timeout * 1000u;
  t->rto_ms = t->rto_max_ms;
  t->rto_min_ms = t->rto_max_ms < srv->cfg.min_timeout_ms ? t->rto_max_ms : srv->cfg.min_timeout_ms;
  t->last_block = t->stream_len / t->blksize + 1;
  if (req->netascii) {
    t->ring = malloc((size_t)t->windowsize * (t->blksize + 4));
    t->ring_len = calloc(t->windowsize, sizeof(uint32_t));
    if (t->ring == NULL || t->ring_len == NULL) {
      send_error_to(&t->sock, peer, CAPSTAN_TFTP_ERR_UNDEFINED, "server busy");
      transfer_finish(t, RESULT_ERROR);
      return;
    }
  }
  t->oack_options = opts;
  for (int o = 0; o < CAPSTAN_TFTP_OPT_COUNT; o++) {
    if (opts & (1u << o)) capstan_metric_inc(srv->m.options[o]);
  }
  t->state = ST_SENDING;
  t->base = t->high = opts ? 0 : 1;
  send_window(t, t->base);
}

/* Starts a transfer for a validated RRQ from |peer|. */
static void transfer_start(capstan_tftp_server_t *srv, const capstan_tftp_request_t *req,
                           const struct sockaddr *peer) {
  transfer_t *t = calloc(1, sizeof(*t));
  if (t == NULL) {
    capstan_memory_shortage_note("tftp");
    reject(srv, peer, CAPSTAN_TFTP_REJECT_RESOURCES, CAPSTAN_TFTP_ERR_UNDEFINED, "server busy");
    return;
  }
  t->srv = srv;
  t->req = *req;
  memcpy(&t->peer, peer, addr_len(peer));
  t->kind = capstan_file_kind_of(req->filename);
  t->state = ST_OPENING;
  srv->alive++;
  uv_timer_init(srv->loop, &t->timer);
  t->timer.data = t;
  int family = srv->bind_addr.ss_family;
  int rc = uv_udp_init_ex(srv->loop, &t->sock, family);
  if (rc != 0) {
    capstan_descriptors_note(rc, "tftp");
    transfer_release(t, 1);
    reject(srv, peer, CAPSTAN_TFTP_REJECT_RESOURCES, CAPSTAN_TFTP_ERR_UNDEFINED, "server busy");
    return;
  }
  t->sock.data = t;
  if (family == AF_INET6) {
    uv_os_fd_t fd;
    int off = 0;
    if (uv_fileno((uv_handle_t *)&t->sock, &fd) == 0) {
      (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
    }
  }
  rc = uv_udp_bind(&t->sock, (const struct sockaddr *)&srv->bind_addr, 0);
  if (rc == 0) rc = uv_fileno((uv_handle_t *)&t->sock, &t->fd);
  if (rc == 0) rc = capstan_descriptors_admit(t->fd, "tftp");
  if (rc == 0) rc = uv_udp_recv_start(&t->sock, alloc_transfer, on_transfer_recv);
  capstan_conntrack_entry_t *c = NULL;
  if (rc == 0) rc = capstan_conntrack_acquire(&srv->clients, peer, UINT_MAX, &c);
  if (rc != 0) {
    transfer_release(t, 2);
    reject(srv, peer, CAPSTAN_TFTP_REJECT_RESOURCES, CAPSTAN_TFTP_ERR_UNDEFINED, "server busy");
    return;
  }
  t->client = c;
  t->client_next = c->data;
  if (t->client_next != NULL) t->client_next->client_prev = t;
  c->data = t;
  t->active = 1;
  srv->active++;
  capstan_metric_add(srv->m.active, 1);
  capstan_metric_inc(srv->m.requests[t->kind]);
  t->started = capstan_now_seconds();
  /* The source may call back before returning: |t| is complete by now and
   * is not touched after this call. */
  srv->files->open(srv->files, t->req.filename, on_file, t);
}

static void on_listener_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                             const struct sockaddr *addr, unsigned flags) {
  capstan_tftp_server_t *srv = h->data;
  if (nread < 0 || addr == NULL || srv->stopping) return;
  const uint8_t *pkt = (const uint8_t *)buf->base;
  size_t len = (size_t)nread;
  if (flags & UV_UDP_PARTIAL) {
    reject(srv, addr, CAPSTAN_TFTP_REJECT_OVERSIZED, CAPSTAN_TFTP_ERR_ILLEGAL_OP,
           "Illegal TFTP operation");
    return;
  }
  capstan_tftp_request_t req;
  capstan_tftp_reject_t why = capstan_tftp_parse_request(pkt, len, &req);
  if (why != CAPSTAN_TFTP_REJECT_NONE) {
    int is_error = len >= 2 && pkt[0] == 0 && pkt[1] == CAPSTAN_TFTP_OP_ERROR;
    reject(srv, addr, why, is_error ? UINT16_MAX : CAPSTAN_TFTP_ERR_ILLEGAL_OP,
           "Illegal TFTP operation");
    return;
  }
  if (req.opcode == CAPSTAN_TFTP_OP_WRQ) {
    reject(srv, addr, CAPSTAN_TFTP_REJECT_WRITE_REQUEST, CAPSTAN_TFTP_ERR_ACCESS,
           "write requests are not supported");
    return;
  }
  if (len > CAPSTAN_TFTP_RFC_REQUEST_MAX) capstan_metric_inc(srv->m.large_requests);
  capstan_conntrack_entry_t *client = capstan_conntrack_find(&srv->clients, addr);
  if (client != NULL) {
    for (transfer_t *t = client->data; t != NULL; t = t->client_next) {
      if (same_peer(&t->peer, addr)) return; /* the client resent its request */
    }
  }
  /* A client that just finished a transfer (its last ACK waits on the
   * transfer socket) and at once asks for its next file must not be
   * refused for a transfer that is over: read its sockets first. In a storm
   * of as many phones as the total limit, each phone's ITL transfer would
   * otherwise still count when its configuration is asked for. */
  if (client != NULL && (srv->active >= srv->cfg.max_transfers ||
                         client->count >= srv->cfg.max_transfers_per_address)) {
    drain_client(srv, client);
    client = capstan_conntrack_find(&srv->clients, addr); /* it may be gone */
  }
  if (srv->active >= srv->cfg.max_transfers) {
    reject_busy(srv, addr, CAPSTAN_TFTP_REJECT_LIMIT_TOTAL);
    return;
  }
  if (client != NULL && client->count >= srv->cfg.max_transfers_per_address) {
    reject_busy(srv, addr, CAPSTAN_TFTP_REJECT_LIMIT_PER_ADDRESS);
    return;
  }
  transfer_start(srv, &req, addr);
}

/* ---- server --------------------------------------------------------------- */

static void on_listener_closed(uv_handle_t *h) {
  capstan_tftp_server_t *srv = h->data;
  srv->listener_closed = 1;
  maybe_done(srv);
}

static void on_failed_start_closed(uv_handle_t *h) {
  capstan_tftp_server_t *srv = h->data;
  capstan_conntrack_cleanup(&srv->clients);
  free(srv);
}

int capstan_tftp_server_start(uv_loop_t *loop, const char *host_port,
                              const capstan_tftp_config_t *cfg, capstan_filesource_t *files,
                              capstan_tftp_server_t **out) {
  struct sockaddr_storage addr;
  int rc = capstan_netaddr_parse(host_port, &addr);
  if (rc != 0) return rc;
  capstan_tftp_server_t *srv = calloc(1, sizeof(*srv));
  if (srv == NULL) return CAPSTAN_ENOMEM;
  capstan_tftp_config_defaults(&srv->cfg);
  if (cfg != NULL) {
    if (cfg->max_blksize) srv->cfg.max_blksize = cfg->max_blksize;
    if (cfg->max_windowsize) srv->cfg.max_windowsize = cfg->max_windowsize;
    if (cfg->max_transfers) srv->cfg.max_transfers = cfg->max_transfers;
    if (cfg->max_transfers_per_address) {
      srv->cfg.max_transfers_per_address = cfg->max_transfers_per_address;
    }
    if (cfg->retry_after_seconds) srv->cfg.retry_after_seconds = cfg->retry_after_seconds;
    if (cfg->default_timeout_ms) srv->cfg.default_timeout_ms = cfg->default_timeout_ms;
    if (cfg->max_retries) srv->cfg.max_retries = cfg->max_retries;
    if (cfg->min_timeout_ms) srv->cfg.min_timeout_ms = cfg->min_timeout_ms;
  }
  if (srv->cfg.max_blksize < CAPSTAN_TFTP_BLKSIZE_MIN)
    srv->cfg.max_blksize = CAPSTAN_TFTP_BLKSIZE_MIN;
  if (srv->cfg.max_blksize > CAPSTAN_TFTP_BLKSIZE_MAX)
    srv->cfg.max_blksize = CAPSTAN_TFTP_BLKSIZE_MAX;
  srv->loop = loop;
  srv->files = files;
  metrics_register(&srv->m);
  rc = capstan_conntrack_init(&srv->clients, CLIENT_BUCKETS);
  if (rc == 0) rc = uv_udp_init_ex(loop, &srv->listener, addr.ss_family);
  if (rc != 0) {
    capstan_conntrack_cleanup(&srv->clients);
    free(srv);
    return rc;
  }
  srv->listener.data = srv;
  if (addr.ss_family == AF_INET6) {
    uv_os_fd_t fd;
    int off = 0;
    if (uv_fileno((uv_handle_t *)&srv->listener, &fd) == 0) {
      (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
    }
  }
  rc = uv_udp_bind(&srv->listener, (const struct sockaddr *)&addr, 0);
  struct sockaddr_storage bound;
  int blen = sizeof(bound);
  if (rc == 0) rc = uv_udp_getsockname(&srv->listener, (struct sockaddr *)&bound, &blen);
  if (rc == 0) rc = uv_udp_recv_start(&srv->listener, alloc_listener, on_listener_recv);
  if (rc == 0) {
    int size = LISTENER_RCVBUF;
    (void)uv_recv_buffer_size((uv_handle_t *)&srv->listener, &size);
  }
  if (rc != 0) {
    uv_close((uv_handle_t *)&srv->listener, on_failed_start_closed);
    return rc;
  }
  srv->port = capstan_netaddr_port((const struct sockaddr *)&bound);
  srv->bind_addr = addr;
  if (addr.ss_family == AF_INET6) {
    ((struct sockaddr_in6 *)&srv->bind_addr)->sin6_port = 0;
  } else {
    ((struct sockaddr_in *)&srv->bind_addr)->sin_port = 0;
  }
  LOG_INFO("event=tftp_listening addr=%s port=%d", host_port, srv->port);
  *out = srv;
  return 0;
}

void capstan_tftp_server_stop(capstan_tftp_server_t *srv, void (*done)(void *arg), void *arg) {
  if (srv == NULL || srv->stopping) return;
  srv->stopping = 1;
  srv->done = done;
  srv->done_arg = arg;
  uv_udp_recv_stop(&srv->listener);
  uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
}

void capstan_tftp_server_set_limits(capstan_tftp_server_t *srv, unsigned max_transfers,
                                    unsigned max_transfers_per_address,
                                    unsigned retry_after_seconds) {
  capstan_tftp_config_t *cfg = &srv->cfg;
  if ((max_transfers == 0 || max_transfers == cfg->max_transfers) &&
      (max_transfers_per_address == 0 ||
       max_transfers_per_address == cfg->max_transfers_per_address) &&
      (retry_after_seconds == 0 || retry_after_seconds == cfg->retry_after_seconds)) {
    return; /* nothing changes: no log line */
  }
  if (max_transfers) cfg->max_transfers = max_transfers;
  if (max_transfers_per_address) cfg->max_transfers_per_address = max_transfers_per_address;
  if (retry_after_seconds) cfg->retry_after_seconds = retry_after_seconds;
  LOG_INFO(
      "event=tftp_limits max_transfers=%u max_transfers_per_address=%u retry_after=%u active=%u",
      cfg->max_transfers, cfg->max_transfers_per_address, cfg->retry_after_seconds, srv->active);
}

int capstan_tftp_server_port(const capstan_tftp_server_t *srv) {
  return srv->port;
}
