/* The CAPF protocol state machine (capf-protocol.md), one per connection.
 *
 * A session moves through the states below; each state that waits for the
 * phone has its own timer. States that wait for the server (a worker
 * verifying or signing, the store committing) have none: that work is
 * bounded by the server itself. Messages that arrive in a state that does
 * not expect them are protocol errors. */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "handlers/capf/internal.h"
#include "handlers/capf/wire.h"
#include "storage/devices.h"

#define CAPF_STATES(X)          \
  X(HANDSHAKE, "handshake")     \
  X(WAIT_AUTH, "wait_auth")     \
  X(VERIFYING, "verifying")     \
  X(THROTTLED, "throttled")     \
  X(WAIT_KEYGEN, "wait_keygen") \
  X(SIGNING, "signing")         \
  X(WAIT_STORE, "wait_store")   \
  X(WAIT_FETCH, "wait_fetch")   \
  X(WAIT_DELETE, "wait_delete") \
  X(RECORDING, "recording")     \
  X(CONCLUDING, "concluding")   \
  X(ENDING, "ending")           \
  X(CLOSING, "closing")

typedef enum {
#define X(id, name) ST_##id,
  CAPF_STATES(X)
#undef X
} capf_state_t;

static const char *const kStateNames[] = {
#define X(id, name) name,
    CAPF_STATES(X)
#undef X
};

static const char *state_name(capf_state_t st) {
  return kStateNames[st];
}

struct capf_session {
  capstan_capf_server_t *srv;
  capf_session_t *prev, *next; /* server's list */
  capstan_tls_conn_t *conn;    /* NULL once closed */
  uv_timer_t timer;
  capstan_throttle_waiter_t waiter;
  capf_pki_t *pki;
  struct sockaddr_storage peer;
  char peer_host[48];
  capf_state_t state;
  uint32_t session_id;
  /* Outstanding references: connection, timer handle, async jobs. */
  unsigned refs;
  /* Reassembly of a message split across reads; NULL when none pending. */
  uint8_t *rx;
  size_t rx_len;
  /* The device, once AUTH_RESPONSE named it. */
  char device[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1];
  Capstan__Operation operation;
  Capstan__AuthMode auth_mode;
  int key_alg;
  unsigned key_bits;
  /* The LSC being handed out, between signing and the phone's answer. */
  uint8_t serial[16];
  uint8_t *lsc_der;
  size_t lsc_len;
  uint8_t *lsc_spki;
  size_t lsc_spki_len;
  char lsc_md5[33];
  double started_at, keygen_started_at;
  unsigned holds_keygen_slot : 1;
  unsigned finished : 1;
  unsigned linked : 1;      /* in the server's list and counted in conntrack */
  unsigned handshaking : 1; /* holds one of the server's handshake slots */
  capf_op_label_t op_label;
  capf_result_t result;
  uint8_t end_reason; /* ST_ENDING: the END_SESSION reason once recorded */
};

static int64_t unix_now(void) {
  return (int64_t)time(NULL);
}

capf_session_t *capf_session_next(const capf_session_t *s) {
  return s->next;
}

/* --- Lifetime ------------------------------------------------------------- */

static void session_unref(capf_session_t *s) {
  if (--s->refs > 0) return;
  capf_pki_unref(s->pki);
  free(s->rx);
  free(s->lsc_der);
  free(s->lsc_spki);
  free(s);
}

static void on_timer_closed(uv_handle_t *h) {
  session_unref(h->data);
}

static void release_keygen_slot(capf_session_t *s) {
  if (!s->holds_keygen_slot) return;
  s->holds_keygen_slot = 0;
  capstan_throttle_release(&s->srv->throttle);
  capstan_metric_set(s->srv->m.keygen_active, s->srv->throttle.active);
  capstan_metric_set(s->srv->m.keygen_waiting, s->srv->throttle.waiting);
}

static void release_handshake_slot(capf_session_t *s) {
  if (!s->handshaking) return;
  s->handshaking = 0;
  capf_server_handshake_done(s->srv);
}

/* Records the session's outcome in metrics, once. */
static void finish(capf_session_t *s, capf_result_t result) {
  if (s->finished) return;
  s->finished = 1;
  s->result = result;
  capf_metrics_t *m = &s->srv->m;
  capstan_metric_inc(m->sessions[s->op_label][result]);
  capstan_metric_observe(m->session_duration, capstan_now_seconds() - s->started_at);
}

static void record_status(capf_session_t *s, Capstan__OpStatus status, const char *reason,
                          int count_attempt);

/* How a session can end while its device's operation is under way. */
typedef enum { END_DROPPED, END_TIMED_OUT, END_PROTOCOL } end_cause_t;

#define STEP_REASON(cause, step)                                \
  ((cause) == END_DROPPED     ? "phone disconnected " step      \
   : (cause) == END_TIMED_OUT ? "phone stopped answering " step \
                              : "protocol error from the phone " step)

/* The failure reason a device keeps when its session ends in |st| for
 * |cause|, so it is not left "in progress" forever; NULL when no operation
 * is under way in |st|. In ST_CONCLUDING the phone has given its final
 * answer and its outcome is being recorded: a drop or a stray message
 * there changes nothing about the operation. */
static const char *operation_failure(capf_state_t st, end_cause_t cause) {
  switch (st) {
    case ST_THROTTLED:
      return STEP_REASON(cause, "while held by the throttle");
    case ST_WAIT_KEYGEN:
      return STEP_REASON(cause, "during key generation");
    case ST_SIGNING:
    case ST_RECORDING:
      return STEP_REASON(cause, "while the server was working");
    case ST_WAIT_STORE:
      return STEP_REASON(cause, "before confirming it stored the certificate");
    case ST_WAIT_FETCH:
      return STEP_REASON(cause, "before sending its certificate");
    case ST_WAIT_DELETE:
      return STEP_REASON(cause, "before confirming the delete");
    default:
      return NULL;
  }
}

/* States where the phone is to speak and the server has no work in
 * flight: a session ending here may wait for its record. */
static int phones_turn(capf_state_t st) {
  return st == ST_WAIT_KEYGEN || st == ST_WAIT_STORE || st == ST_WAIT_FETCH || st == ST_WAIT_DELETE;
}

static void record_then_end(capf_session_t *s, Capstan__OpStatus status, const char *reason,
                            int count_attempt, uint8_t end_reason, capf_result_t result);

/* A phone that goes away in the middle of its operation leaves the device
 * failed with the step it stopped at. */
static void dropped_mid_operation(capf_session_t *s) {
  const char *reason = operation_failure(s->state, END_DROPPED);
  if (reason != NULL) record_status(s, CAPSTAN__OP_STATUS__OP_STATUS_FAILED, reason, 0);
}

static void on_conn_closed(capstan_tls_conn_t *conn, void *arg, capstan_tls_close_reason_t why) {
  capf_session_t *s = arg;
  capstan_capf_server_t *srv = s->srv;
  if (!s->finished) {
    capf_result_t r = CAPF_RESULT_DISCONNECTED;
    if (why == CAPSTAN_TLS_CLOSE_HANDSHAKE_FAILED) {
      r = CAPF_RESULT_TLS_FAILED;
      capstan_metric_inc(srv->m.handshakes_failed);
    } else if (why == CAPSTAN_TLS_CLOSE_TLS_ERROR) {
      r = CAPF_RESULT_PROTOCOL_ERROR;
    }
    LOG_INFO("event=capf_session_dropped device=%s peer=%s state=%s reason=%s",
             s->device[0] ? s->device : "-", s->peer_host, state_name(s->state),
             capstan_tls_close_reason_name(why));
    dropped_mid_operation(s);
    finish(s, r);
  }
  s->conn = NULL;
  s->state = ST_CLOSING;
  release_handshake_slot(s);
  capstan_throttle_cancel(&srv->throttle, &s->waiter);
  release_keygen_slot(s);
  capstan_metric_set(srv->m.keygen_waiting, srv->throttle.waiting);
  if (s->linked) {
    if (s->prev)
      s->prev->next = s->next;
    else
      srv->sessions = s->next;
    if (s->next) s->next->prev = s->prev;
    s->linked = 0;
    capstan_conntrack_remove(&srv->conntrack, (struct sockaddr *)&s->peer);
    srv->nsessions--;
    capstan_metric_set(srv->m.sessions_active, srv->nsessions);
    capf_server_session_closed(srv);
  }
  uv_close((uv_handle_t *)&s->timer, on_timer_closed);
  session_unref(s);
}

/* Closes the connection after queued messages are written. */
static void close_session(capf_session_t *s, capf_result_t result) {
  finish(s, result);
  s->state = ST_CLOSING;
  uv_timer_stop(&s->timer);
  if (s->conn) capstan_tls_conn_close(s->conn, CAPSTAN_TLS_CLOSE_LOCAL);
}

void capf_session_abort(capf_session_t *s) {
  close_session(s, CAPF_RESULT_SHUTDOWN);
}

void capf_tcp_set_keepalive(uv_tcp_t *tcp, unsigned minutes) {
  unsigned secs = minutes * 60;
  uv_tcp_keepalive(tcp, 1, secs);
  /* libuv sets only the idle time; probes must also be N minutes apart. */
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)tcp, &fd) == 0) {
    int intvl = (int)secs, cnt = 4;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
  }
}

void capf_session_apply_keepalive(capf_session_t *s, unsigned minutes) {
  if (s->conn == NULL) return;
  capf_tcp_set_keepalive(capstan_tls_conn_tcp(s->conn), minutes);
}

/* --- Timers --------------------------------------------------------------- */

static void send_end_session(capf_session_t *s, uint8_t reason);
static void send_retry_later(capf_session_t *s);
static void end_with(capf_session_t *s, uint8_t reason, capf_result_t result);

static void on_timeout(uv_timer_t *t) {
  capf_session_t *s = t->data;
  capf_metrics_t *m = &s->srv->m;
  LOG_INFO("event=capf_timeout device=%s peer=%s state=%s", s->device[0] ? s->device : "-",
           s->peer_host, state_name(s->state));
  switch (s->state) {
    case ST_HANDSHAKE:
      capstan_metric_inc(m->handshakes_timeout);
      capstan_metric_inc(m->timeouts_handshake);
      close_session(s, CAPF_RESULT_TIMEOUT);
      return;
    case ST_THROTTLED:
      capstan_throttle_cancel(&s->srv->throttle, &s->waiter);
      capstan_metric_set(m->keygen_waiting, s->srv->throttle.waiting);
      capstan_metric_inc(m->throttled_retry_later);
      send_retry_later(s);
      close_session(s, CAPF_RESULT_RETRY_LATER);
      return;
    case ST_WAIT_KEYGEN:
      capstan_metric_inc(m->timeouts_keygen);
      break;
    default:
      capstan_metric_inc(m->timeouts_step);
      break;
  }
  /* Timers run only while the phone is to speak. */
  const char *why = operation_failure(s->state, END_TIMED_OUT);
  if (why != NULL) {
    record_then_end(s, CAPSTAN__OP_STATUS__OP_STATUS_FAILED, why, 0,
                    CAPSTAN_CAPF_REASON_INVALID_ELEMENT, CAPF_RESULT_TIMEOUT);
    return;
  }
  end_with(s, CAPSTAN_CAPF_REASON_INVALID_ELEMENT, CAPF_RESULT_TIMEOUT);
}

static void enter(capf_session_t *s, capf_state_t st, unsigned timeout_seconds) {
  s->state = st;
  if (timeout_seconds > 0) {
    uv_timer_start(&s->timer, on_timeout, (uint64_t)timeout_seconds * 1000, 0);
  } else {
    uv_timer_stop(&s->timer);
  }
}

/* --- Sending -------------------------------------------------------------- */

static int send_built(capf_session_t *s, capstan_capf_builder_t *b) {
  uint8_t *msg = NULL;
  size_t len = 0;
  int rc = capstan_capf_builder_finish(b, &msg, &len);
  if (rc == 0 && s->conn) rc = capstan_tls_conn_write(s->conn, msg, len);
  OPENSSL_free(msg);
  if (rc < 0)
    LOG_ERROR("event=capf_send_failed peer=%s error=%s", s->peer_host, capstan_strerror(rc));
  return rc;
}

static void send_simple(capf_session_t *s, int command) {
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, command, s->session_id, 1);
  send_built(s, &b);
}

static void send_end_session(capf_session_t *s, uint8_t reason) {
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_END_SESSION, s->session_id, 1);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, reason);
  send_built(s, &b);
}

static void send_retry_later(capf_session_t *s) {
  unsigned delay = s->srv->settings.retry_delay_seconds;
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_RETRY_LATER, s->session_id, 1);
  capstan_capf_builder_add_u16(&b, CAPSTAN_CAPF_EL_RETRY_DELAY,
                               (uint16_t)(delay > 65535 ? 65535 : delay));
  send_built(s, &b);
}

/* Ends the session with END_SESSION {REASON} and the given outcome. */
static void end_with(capf_session_t *s, uint8_t reason, capf_result_t result) {
  /* END_SESSION and close_notify leave in one write. */
  if (s->conn != NULL && s->state != ST_CLOSING) capstan_tls_conn_hold_output(s->conn);
  send_end_session(s, reason);
  close_session(s, result);
}

static void protocol_error(capf_session_t *s, const char *what) {
  LOG_WARN("event=capf_protocol_error device=%s peer=%s state=%s error=\"%s\"",
           s->device[0] ? s->device : "-", s->peer_host, state_name(s->state), what);
  capstan_metric_inc(s->srv->m.protocol_errors);
  const char *why = operation_failure(s->state, END_PROTOCOL);
  if (why != NULL && phones_turn(s->state)) {
    record_then_end(s, CAPSTAN__OP_STATUS__OP_STATUS_FAILED, why, 0,
                    CAPSTAN_CAPF_REASON_INVALID_ELEMENT, CAPF_RESULT_PROTOCOL_ERROR);
    return;
  }
  /* Server work is in flight: end now (its callbacks see a closing session)
   * and let the record follow. */
  if (why != NULL) record_status(s, CAPSTAN__OP_STATUS__OP_STATUS_FAILED, why, 0);
  end_with(s, CAPSTAN_CAPF_REASON_INVALID_ELEMENT, CAPF_RESULT_PROTOCOL_ERROR);
}

/* --- Durable records through the store's group-commit writer -------------- */

typedef enum {
  REC_STATUS,    /* set status (+reason), maybe count an attempt */
  REC_SEEN_CERT, /* the phone's certificate, seen and verified */
  REC_ISSUED,    /* a new LSC, before it goes to the phone */
  REC_INSTALLED, /* the phone stored it */
  REC_DELETED,   /* the phone deleted its LSC */
  REC_FETCHED,   /* troubleshoot done: certificate recorded */
} rec_kind_t;

typedef struct rec_job {
  capf_session_t *s;
  rec_kind_t kind;
  void (*then)(capf_session_t *s, int status);
  char device[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1];
  Capstan__OpStatus status;
  const char *reason; /* static string */
  int count_attempt;
  int64_t now;
  uint8_t serial[16];
  uint8_t *der;
  size_t der_len;
  uint8_t *spki;
  size_t spki_len;
  char md5[33];
  int cert_type;
  int64_t not_after;
} rec_job_t;

static void rec_job_free(rec_job_t *j) {
  free(j->der);
  free(j->spki);
  free(j);
}

/* Runs on the writer thread: only the job's own fields are touched. */
static int rec_apply(capstan_txn_t *txn, void *arg) {
  rec_job_t *j = arg;
  int rc = 0;
  switch (j->kind) {
    case REC_STATUS:
      return capstan_devices_set_status(txn, j->device, j->status, j->reason, j->now,
                                        j->count_attempt);
    case REC_SEEN_CERT:
      return capstan_devices_record_seen_cert(txn, j->device, j->der, j->der_len,
                                              (Capstan__CertType)j->cert_type, j->md5, j->spki,
                                              j->spki_len, j->now);
    case REC_ISSUED:
      return capstan_devices_record_issued(txn, j->device, j->serial, j->der, j->der_len,
                                           j->not_after, j->md5, j->now);
    case REC_INSTALLED:
      return capstan_devices_record_installed(txn, j->device, j->serial, j->spki, j->spki_len,
                                              j->md5, j->now);
    case REC_DELETED:
      return capstan_devices_record_deleted(txn, j->device, j->now);
    case REC_FETCHED:
      if (j->der != NULL) {
        rc = capstan_devices_record_seen_cert(txn, j->device, j->der, j->der_len,
                                              (Capstan__CertType)j->cert_type, j->md5, j->spki,
                                              j->spki_len, j->now);
        if (rc < 0) return rc;
      }
      return capstan_devices_set_status(txn, j->device, CAPSTAN__OP_STATUS__OP_STATUS_SUCCEEDED,
                                        j->reason, j->now, 0);
  }
  return CAPSTAN_EINVAL;
}

static void rec_done(void *arg, int status) {
  rec_job_t *j = arg;
  capf_session_t *s = j->s;
  if (status < 0) {
    LOG_ERROR("event=capf_record_failed device=%s kind=%d error=%s", j->device, (int)j->kind,
              capstan_strerror(status));
  }
  if (j->then && s->conn && s->state != ST_CLOSING) j->then(s, status);
  rec_job_free(j);
  session_unref(s);
}

static rec_job_t *rec_new(capf_session_t *s, rec_kind_t kind) {
  rec_job_t *j = calloc(1, sizeof(*j));
  if (j == NULL) return NULL;
  j->s = s;
  j->kind = kind;
  j->now = unix_now();
  memcpy(j->device, s->device, sizeof(j->device));
  return j;
}

/* Submits |j|; |then| (may be NULL) runs on the loop after the commit. */
static int rec_submit(capf_session_t *s, rec_job_t *j, void (*then)(capf_session_t *, int)) {
  if (j == NULL) return CAPSTAN_ENOMEM;
  j->then = then;
  s->refs++;
  int rc = capstan_store_submit(s->srv->store, rec_apply, j, rec_done);
  if (rc < 0) {
    s->refs--;
    rec_job_free(j);
  }
  return rc;
}

/* A status record for the device; NULL when out of memory. */
static rec_job_t *status_job(capf_session_t *s, Capstan__OpStatus status, const char *reason,
                             int count_attempt) {
  rec_job_t *j = rec_new(s, REC_STATUS);
  if (j == NULL) return NULL;
  j->status = status;
  j->reason = reason;
  j->count_attempt = count_attempt;
  return j;
}

static void record_status(capf_session_t *s, Capstan__OpStatus status, const char *reason,
                          int count_attempt) {
  rec_job_t *j = status_job(s, status, reason, count_attempt);
  if (j != NULL) rec_submit(s, j, NULL);
}

static void end_after_record(capf_session_t *s, int status) {
  (void)status; /* a failed write is logged by rec_done; the phone's answer stands */
  end_with(s, s->end_reason, s->result);
}

/* Records the outcome, then tells the phone: once a phone has its
 * END_SESSION, `device show` already says why. The result is counted now,
 * so a phone that drops while the record is written stays counted as what
 * happened to it. */
static void record_then_end(capf_session_t *s, Capstan__OpStatus status, const char *reason,
                            int count_attempt, uint8_t end_reason, capf_result_t result) {
  finish(s, result);
  s->end_reason = end_reason;
  rec_job_t *j = status_job(s, status, reason, count_attempt);
  enter(s, ST_ENDING, 0);
  if (rec_submit(s, j, end_after_record) < 0) end_with(s, end_reason, result);
}

static void fail_operation(capf_session_t *s, const char *reason, capf_result_t result) {
  LOG_INFO("event=capf_operation_failed device=%s peer=%s reason=\"%s\"", s->device, s->peer_host,
           reason);
  record_then_end(s, CAPSTAN__OP_STATUS__OP_STATUS_FAILED, reason, 0,
                  CAPSTAN_CAPF_REASON_INVALID_ELEMENT, result);
}

/* --- Work on the crypto workers ------------------------------------------- */

typedef struct work_job {
  uv_work_t req;
  capf_session_t *s;
  capf_pki_t *pki;
  void (*run)(struct work_job *j);
  void (*then)(capf_session_t *s, struct work_job *j);
  /* inputs */
  char device[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1];
  uint32_t session_id;
  uint8_t *cert_der;
  size_t cert_len;
  int cert_type;
  uint8_t *sig1;
  size_t sig1_len;
  uint8_t *sig2;
  size_t sig2_len;
  int sig2_hash;
  uint8_t *sudi;
  size_t sudi_len;
  int key_alg;
  unsigned key_bits;
  unsigned validity_days;
  /* outputs */
  int status;
  const char *why;
  uint8_t serial[16];
  uint8_t *out_der;
  size_t out_len;
  uint8_t *spki;
  size_t spki_len;
  char md5[33];
  int64_t not_after;
} work_job_t;

static void work_job_free(work_job_t *j) {
  free(j->cert_der);
  free(j->sig1);
  free(j->sig2);
  free(j->sudi);
  free(j->out_der);
  free(j->spki);
  capf_pki_unref(j->pki);
  free(j);
}

static void work_run(uv_work_t *req) {
  work_job_t *j = req->data;
  j->run(j);
}

static void work_after(uv_work_t *req, int status) {
  work_job_t *j = req->data;
  capf_session_t *s = j->s;
  if (status < 0) j->status = CAPSTAN_EIO;
  if (s->conn && s->state != ST_CLOSING) j->then(s, j);
  work_job_free(j);
  session_unref(s);
}

static uint8_t *dup_bytes(const uint8_t *p, size_t n) {
  uint8_t *d = malloc(n ? n : 1);
  if (d && n) memcpy(d, p, n);
  return d;
}

static int work_submit(capf_session_t *s, work_job_t *j) {
  j->s = s;
  j->pki = capf_pki_ref(s->pki);
  j->req.data = j;
  memcpy(j->device, s->device, sizeof(j->device));
  j->session_id = s->session_id;
  s->refs++;
  int rc = uv_queue_work(s->srv->loop, &j->req, work_run, work_after);
  if (rc < 0) {
    s->refs--;
    work_job_free(j);
  }
  return rc;
}

/* --- Operations after authentication -------------------------------------- */

static void send_keygen_request(capf_session_t *s) {
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_KEY_GEN_REQUEST, s->session_id, 1);
  if (s->key_alg == CAPSTAN__KEY_ALG__KEY_ALG_EC) {
    uint8_t curve = s->key_bits == 384   ? CAPSTAN_CAPF_CURVE_P384
                    : s->key_bits == 521 ? CAPSTAN_CAPF_CURVE_P521
                                         : CAPSTAN_CAPF_CURVE_P256;
    capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_KEY_TYPE, CAPSTAN_CAPF_KEY_EC);
    capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_EC_CURVE, curve);
  } else {
    capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_KEY_TYPE, CAPSTAN_CAPF_KEY_RSA);
    capstan_capf_builder_add_u16(&b, CAPSTAN_CAPF_EL_KEY_SIZE, (uint16_t)s->key_bits);
  }
  if (send_built(s, &b) < 0) {
    close_session(s, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  s->keygen_started_at = capstan_now_seconds();
  enter(s, ST_WAIT_KEYGEN, s->srv->settings.keygen_ceiling_seconds);
}

static void on_keygen_admitted(capstan_throttle_waiter_t *w) {
  capf_session_t *s = (capf_session_t *)((char *)w - offsetof(capf_session_t, waiter));
  s->holds_keygen_slot = 1;
  capstan_metric_inc(s->srv->m.throttled_admitted);
  capstan_metric_set(s->srv->m.keygen_active, s->srv->throttle.active);
  capstan_metric_set(s->srv->m.keygen_waiting, s->srv->throttle.waiting);
  send_keygen_request(s);
}

static void start_install(capf_session_t *s) {
  capstan_throttle_t *t = &s->srv->throttle;
  s->waiter.on_admitted = on_keygen_admitted;
  if (capstan_throttle_acquire(t, &s->waiter)) {
    s->holds_keygen_slot = 1;
    capstan_metric_set(s->srv->m.keygen_active, t->active);
    send_keygen_request(s);
    return;
  }
  /* Held: a slot or a token frees up, or the hold runs out (RETRY_LATER). */
  LOG_INFO("event=capf_throttled device=%s peer=%s waiting=%u", s->device, s->peer_host,
           t->waiting);
  capstan_metric_set(s->srv->m.keygen_waiting, t->waiting);
  enter(s, ST_THROTTLED, s->srv->settings.throttle_hold_seconds);
  if (s->srv->settings.throttle_hold_seconds == 0) uv_timer_start(&s->timer, on_timeout, 0, 0);
}

static void start_operation(capf_session_t *s) {
  record_status(s, CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS, NULL, 1);
  switch (s->operation) {
    case CAPSTAN__OPERATION__OPERATION_INSTALL:
      start_install(s);
      return;
    case CAPSTAN__OPERATION__OPERATION_TROUBLESHOOT:
      send_simple(s, CAPSTAN_CAPF_CMD_FETCH_CERT_REQUEST);
      enter(s, ST_WAIT_FETCH, s->srv->settings.step_timeout_seconds);
      return;
    case CAPSTAN__OPERATION__OPERATION_DELETE:
      send_simple(s, CAPSTAN_CAPF_CMD_DELETE_CERT_REQUEST);
      enter(s, ST_WAIT_DELETE, s->srv->settings.step_timeout_seconds);
      return;
    default:
      end_with(s, CAPSTAN_CAPF_REASON_NO_ACTION, CAPF_RESULT_NO_ACTION);
      return;
  }
}

/* After authentication: nothing scheduled, deadline passed, or go. */
static void authenticated(capf_session_t *s, const Capstan__Device *d) {
  if (s->operation == CAPSTAN__OPERATION__OPERATION_NONE) {
    end_with(s, CAPSTAN_CAPF_REASON_NO_ACTION, CAPF_RESULT_NO_ACTION);
    return;
  }
  if (d->completes_by > 0 && unix_now() > d->completes_by) {
    LOG_INFO("event=capf_operation_expired device=%s peer=%s", s->device, s->peer_host);
    record_then_end(s, CAPSTAN__OP_STATUS__OP_STATUS_EXPIRED, "operation deadline passed", 0,
                    CAPSTAN_CAPF_REASON_NO_ACTION, CAPF_RESULT_EXPIRED);
    return;
  }
  start_operation(s);
}

static void auth_failed(capf_session_t *s, const char *reason) {
  int mode = (int)s->auth_mode;
  if (mode >= 1 && mode <= 4) capstan_metric_inc(s->srv->m.auth_failures[mode]);
  LOG_WARN("event=capf_auth_failed device=%s peer=%s mode=%s reason=\"%s\"", s->device,
           s->peer_host, capstan_capf_auth_type_name(mode), reason);
  record_then_end(s, CAPSTAN__OP_STATUS__OP_STATUS_FAILED, reason, 1,
                  CAPSTAN_CAPF_REASON_INVALID_ELEMENT, CAPF_RESULT_AUTH_FAILED);
}

/* --- By existing certificate: verified on a worker ------------------------ */

/* The certificate must be the named device's own: an LSC's CN is the device
 * name (R8), a MIC's is "<model>-<device name>" (CP-7962G-SEP...). Without
 * this, a phone holding any trusted certificate could authenticate as any
 * device, get its LSC and have its configuration encrypted for its key. */
static int cert_names_device(X509 *cert, const char *device) {
  X509_NAME *subject = X509_get_subject_name(cert);
  int idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (idx < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, idx) >= 0) return 0;
  uint8_t *cn = NULL;
  int n = ASN1_STRING_to_UTF8(&cn, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx)));
  if (n < 0) return 0;
  size_t len = (size_t)n, dlen = strlen(device);
  int ok =
      (len == dlen && memcmp(cn, device, dlen) == 0) ||
      (len > dlen + 1 && cn[len - dlen - 1] == '-' && memcmp(cn + len - dlen, device, dlen) == 0);
  OPENSSL_free(cn);
  return ok;
}

static void verify_cert_auth_run(work_job_t *j) {
  X509 *cert = NULL;
  EVP_PKEY *key = NULL;
  X509 *sudi = NULL;
  j->status = CAPSTAN_EACCES;
  j->why = "authentication failed";
  if (capstan_pki_parse_cert(j->cert_der, j->cert_len, &cert) < 0) {
    j->why = "certificate malformed";
    goto out;
  }
  key = X509_get_pubkey(cert);
  if (key == NULL) goto out;
  /* auth_data = DEVICE_NAME | 0x00 | certificate DER */
  size_t name_len = strlen(j->device);
  size_t data_len = name_len + 1 + j->cert_len;
  uint8_t *data = malloc(data_len);
  if (data == NULL) goto out;
  memcpy(data, j->device, name_len);
  data[name_len] = 0;
  memcpy(data + name_len + 1, j->cert_der, j->cert_len);
  int ok =
      capstan_pki_verify_signed_data(key, CAPSTAN_CAPF_HASH_SHA1, data, data_len, j->sig1,
                                     j->sig1_len) == 0 &&
      capstan_pki_verify_signed_data(key, j->sig2_hash, data, data_len, j->sig2, j->sig2_len) == 0;
  free(data);
  if (!ok) goto out;
  if (capstan_pki_verify_chain(cert, NULL, j->pki->ids->capf_trust) < 0) {
    j->why = j->cert_type == CAPSTAN_CAPF_CERT_MIC ? "MIC invalid" : "LSC invalid";
    goto out;
  }
  if (!cert_names_device(cert, j->device)) {
    j->why = "certificate issued to another device";
    goto out;
  }
  if (j->sudi != NULL) {
    if (capstan_pki_verify_sudi(j->sudi, j->sudi_len, j->session_id, &sudi) < 0) {
      j->why = "SUDI signature invalid";
      goto out;
    }
    /* The SUDI counts only when its issuer is trusted; an untrusted SUDI is
     * not a failure, just not a second identity. */
    if (capstan_pki_verify_chain(sudi, NULL, j->pki->ids->capf_trust) < 0) {
      LOG_DEBUG("event=capf_sudi_untrusted device=%s", j->device);
    }
  }
  if (capstan_pki_public_key_to_der(key, &j->spki, &j->spki_len) < 0) {
    j->status = CAPSTAN_ENOMEM;
    goto out;
  }
  capstan_pki_md5hash(j->cert_der, j->cert_len, j->md5);
  j->status = 0;
  j->why = NULL;
out:
  X509_free(sudi);
  EVP_PKEY_free(key);
  X509_free(cert);
}

/* Reads the session's device and takes the operation, mode and key from it.
 * Returns the record (caller frees), or NULL after ending the session: END
 * 9 for an unknown device, 7 when the store cannot be read. */
static Capstan__Device *load_device(capf_session_t *s) {
  Capstan__Device *d = NULL;
  int rc = capstan_store_device_load(s->srv->store, s->device, &d);
  if (rc == CAPSTAN_ENOENT) {
    LOG_INFO("event=capf_unknown_device device=%s peer=%s", s->device, s->peer_host);
    end_with(s, CAPSTAN_CAPF_REASON_UNKNOWN_DEVICE, CAPF_RESULT_UNKNOWN_DEVICE);
    return NULL;
  }
  if (rc < 0) {
    LOG_ERROR("event=capf_store_read_failed device=%s error=%s", s->device, capstan_strerror(rc));
    end_with(s, CAPSTAN_CAPF_REASON_INVALID_ELEMENT, CAPF_RESULT_SERVER_ERROR);
    return NULL;
  }
  s->operation = d->operation;
  s->auth_mode = d->auth_mode;
  s->key_alg = d->key_alg;
  s->key_bits = d->key_bits;
  return d;
}

static void verify_cert_auth_done(capf_session_t *s, work_job_t *j) {
  if (j->status == CAPSTAN_ENOMEM || j->status == CAPSTAN_EIO) {
    close_session(s, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  if (j->status < 0) {
    auth_failed(s, j->why);
    return;
  }
  /* Record the certificate the phone holds (certHash for its config). */
  rec_job_t *r = rec_new(s, REC_SEEN_CERT);
  if (r != NULL) {
    r->der = j->cert_der;
    r->der_len = j->cert_len;
    r->cert_type = j->cert_type;
    r->spki = j->spki;
    r->spki_len = j->spki_len;
    memcpy(r->md5, j->md5, sizeof(r->md5));
    j->cert_der = NULL;
    j->spki = NULL;
    rec_submit(s, r, NULL);
  }
  /* The device record was read before the worker ran; read it again so a
   * change made meanwhile (operation cancelled) is honoured. */
  Capstan__Device *d = load_device(s);
  if (d == NULL) return;
  authenticated(s, d);
  capstan__device__free_unpacked(d, NULL);
}

static int start_cert_auth(capf_session_t *s, const capstan_capf_msg_t *m) {
  uint8_t type = 0, hash = 0;
  capstan_capf_slice_t der, sig1, sig2, sudi;
  if (capstan_capf_get_certificate(m, &type, &der) < 0 ||
      capstan_capf_get_signed_data(m, &sig1) < 0 ||
      capstan_capf_get_sha2_signed_data(m, &hash, &sig2) < 0) {
    return CAPSTAN_EACCES;
  }
  work_job_t *j = calloc(1, sizeof(*j));
  if (j == NULL) return CAPSTAN_ENOMEM;
  j->run = verify_cert_auth_run;
  j->then = verify_cert_auth_done;
  j->cert_type = type;
  j->sig2_hash = hash;
  j->cert_der = dup_bytes(der.data, der.len);
  j->cert_len = der.len;
  j->sig1 = dup_bytes(sig1.data, sig1.len);
  j->sig1_len = sig1.len;
  j->sig2 = dup_bytes(sig2.data, sig2.len);
  j->sig2_len = sig2.len;
  if (capstan_capf_get_sudi_data(m, &sudi) == 0) {
    j->sudi = dup_bytes(sudi.data, sudi.len);
    j->sudi_len = sudi.len;
  }
  if (!j->cert_der || !j->sig1 || !j->sig2 || (j->sudi_len && !j->sudi)) {
    free(j->cert_der);
    free(j->sig1);
    free(j->sig2);
    free(j->sudi);
    free(j);
    return CAPSTAN_ENOMEM;
  }
  enter(s, ST_VERIFYING, 0);
  return work_submit(s, j);
}

/* --- Message handlers, one per state that reads -------------------------- */

/* Constant-time comparison of the typed string with the record: compare
 * digests so neither content nor length leaks through timing. */
static int auth_string_matches(const capstan_capf_slice_t *typed, const char *expected) {
  uint8_t a[SHA256_DIGEST_LENGTH], b[SHA256_DIGEST_LENGTH];
  SHA256(typed->data, typed->len, a);
  SHA256((const uint8_t *)expected, strlen(expected), b);
  return CRYPTO_memcmp(a, b, sizeof(a)) == 0 && expected[0] != '\0';
}

static void on_auth_response(capf_session_t *s, const capstan_capf_msg_t *m) {
  uint8_t version = 0;
  if (m->command != CAPSTAN_CAPF_CMD_AUTH_RESPONSE) {
    protocol_error(s, "expected AUTH_RESPONSE");
    return;
  }
  if (capstan_capf_get_device_name(m, s->device) < 0) {
    s->device[0] = '\0';
    protocol_error(s, "AUTH_RESPONSE without a valid DEVICE_NAME");
    return;
  }
  if (capstan_capf_get_version(m, &version) == 0 && version > CAPSTAN_CAPF_PROTOCOL_VERSION) {
    LOG_WARN("event=capf_version_refused device=%s peer=%s version=%u", s->device, s->peer_host,
             version);
    end_with(s, CAPSTAN_CAPF_REASON_INVALID_ELEMENT, CAPF_RESULT_PROTOCOL_ERROR);
    return;
  }
  Capstan__Device *d = load_device(s);
  if (d == NULL) return;
  int rc;
  switch (d->operation) {
    case CAPSTAN__OPERATION__OPERATION_INSTALL:
      s->op_label = CAPF_OP_INSTALL;
      break;
    case CAPSTAN__OPERATION__OPERATION_DELETE:
      s->op_label = CAPF_OP_DELETE;
      break;
    case CAPSTAN__OPERATION__OPERATION_TROUBLESHOOT:
      s->op_label = CAPF_OP_TROUBLESHOOT;
      break;
    default:
      s->op_label = CAPF_OP_NONE;
      break;
  }
  capstan_capf_slice_t typed = {0};
  switch (d->auth_mode) {
    case CAPSTAN__AUTH_MODE__AUTH_MODE_STRING:
      if (capstan_capf_get_auth_password(m, &typed) < 0 || d->auth_string == NULL ||
          !auth_string_matches(&typed, d->auth_string)) {
        auth_failed(s, "authentication failed");
        break;
      }
      authenticated(s, d);
      break;
    case CAPSTAN__AUTH_MODE__AUTH_MODE_LSC:
    case CAPSTAN__AUTH_MODE__AUTH_MODE_MIC:
      rc = start_cert_auth(s, m);
      if (rc == CAPSTAN_EACCES) {
        auth_failed(s, "certificate, SIGNED_DATA or SHA2_SIGNED_DATA missing or malformed");
      } else if (rc < 0) {
        close_session(s, CAPF_RESULT_SERVER_ERROR);
      }
      break;
    case CAPSTAN__AUTH_MODE__AUTH_MODE_NULL: /* nothing more to check */
      authenticated(s, d);
      break;
    default: /* a record without a usable mode lets nobody in */
      auth_failed(s, "device has no authentication mode");
      break;
  }
  capstan__device__free_unpacked(d, NULL);
}

/* Install: check the key and sign the LSC on a worker. */
static void issue_lsc_run(work_job_t *j) {
  EVP_PKEY *key = NULL;
  j->status = capstan_pki_check_public_key(j->cert_der, j->cert_len, j->key_alg, j->key_bits, &key,
                                           &j->why);
  if (j->status < 0) return;
  j->status = capstan_pki_issue_lsc(&j->pki->ids->capf, j->device, key, j->validity_days, j->serial,
                                    &j->out_der, &j->out_len, &j->not_after);
  if (j->status == 0) {
    capstan_pki_md5hash(j->out_der, j->out_len, j->md5);
    j->status = capstan_pki_public_key_to_der(key, &j->spki, &j->spki_len);
  } else {
    j->why = "signing the LSC failed";
  }
  EVP_PKEY_free(key);
}

static void after_issued_recorded(capf_session_t *s, int status) {
  if (status < 0) {
    /* Never hand out a certificate that is not on record. */
    end_with(s, CAPSTAN_CAPF_REASON_INVALID_ELEMENT, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST, s->session_id, 1);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_CERTIFICATE_TYPE, CAPSTAN_CAPF_CERT_LSC);
  capstan_capf_builder_add_certificate(&b, CAPSTAN_CAPF_CERT_LSC, s->lsc_der, s->lsc_len);
  if (send_built(s, &b) < 0) {
    close_session(s, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  enter(s, ST_WAIT_STORE, s->srv->settings.step_timeout_seconds);
}

static void issue_lsc_done(capf_session_t *s, work_job_t *j) {
  if (j->status < 0) {
    fail_operation(s, j->why ? j->why : "LSC issue failed", CAPF_RESULT_FAILED);
    return;
  }
  capstan_metric_inc(s->srv->m.certs_issued);
  s->lsc_der = j->out_der;
  s->lsc_len = j->out_len;
  s->lsc_spki = j->spki;
  s->lsc_spki_len = j->spki_len;
  memcpy(s->serial, j->serial, sizeof(s->serial));
  memcpy(s->lsc_md5, j->md5, sizeof(s->lsc_md5));
  j->out_der = NULL;
  j->spki = NULL;
  rec_job_t *r = rec_new(s, REC_ISSUED);
  if (r != NULL) {
    memcpy(r->serial, s->serial, sizeof(r->serial));
    r->der = dup_bytes(s->lsc_der, s->lsc_len);
    r->der_len = s->lsc_len;
    r->not_after = j->not_after;
    memcpy(r->md5, s->lsc_md5, sizeof(r->md5));
    if (r->der == NULL) {
      rec_job_free(r);
      r = NULL;
    }
  }
  enter(s, ST_RECORDING, 0);
  if (rec_submit(s, r, after_issued_recorded) < 0) {
    end_with(s, CAPSTAN_CAPF_REASON_INVALID_ELEMENT, CAPF_RESULT_SERVER_ERROR);
  }
}

static void on_keygen_message(capf_session_t *s, const capstan_capf_msg_t *m) {
  if (m->command == CAPSTAN_CAPF_CMD_REQUEST_IN_PROGRESS) {
    LOG_DEBUG("event=capf_keygen_in_progress device=%s", s->device);
    return;
  }
  if (m->command != CAPSTAN_CAPF_CMD_KEY_GEN_RESPONSE) {
    protocol_error(s, "expected KEY_GEN_RESPONSE");
    return;
  }
  capstan_metric_observe(s->srv->m.keygen_duration, capstan_now_seconds() - s->keygen_started_at);
  release_keygen_slot(s);
  capstan_capf_slice_t spki;
  if (capstan_capf_get_public_key(m, &spki) < 0) {
    fail_operation(s, "key generation failed on the phone", CAPF_RESULT_FAILED);
    return;
  }
  work_job_t *j = calloc(1, sizeof(*j));
  if (j == NULL || (j->cert_der = dup_bytes(spki.data, spki.len)) == NULL) {
    free(j);
    close_session(s, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  j->cert_len = spki.len;
  j->key_alg = s->key_alg;
  j->key_bits = s->key_bits;
  j->validity_days = s->srv->settings.validity_days;
  j->run = issue_lsc_run;
  j->then = issue_lsc_done;
  enter(s, ST_SIGNING, 0);
  if (work_submit(s, j) < 0) close_session(s, CAPF_RESULT_SERVER_ERROR);
}

static void after_final_record(capf_session_t *s, int status) {
  if (status < 0) {
    end_with(s, CAPSTAN_CAPF_REASON_INVALID_ELEMENT, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  uint8_t reason = s->operation == CAPSTAN__OPERATION__OPERATION_TROUBLESHOOT
                       ? CAPSTAN_CAPF_REASON_NO_ACTION
                       : CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE;
  LOG_INFO("event=capf_operation_succeeded device=%s peer=%s operation=%s", s->device, s->peer_host,
           s->op_label == CAPF_OP_INSTALL  ? "install"
           : s->op_label == CAPF_OP_DELETE ? "delete"
                                           : "troubleshoot");
  end_with(s, reason, CAPF_RESULT_OK);
}

static void on_store_response(capf_session_t *s, const capstan_capf_msg_t *m) {
  uint8_t reason = 0;
  if (m->command != CAPSTAN_CAPF_CMD_STORE_CERT_RESPONSE) {
    protocol_error(s, "expected STORE_CERT_RESPONSE");
    return;
  }
  if (capstan_capf_get_reason(m, &reason) < 0 || reason != CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE) {
    fail_operation(s, "phone did not store the certificate", CAPF_RESULT_FAILED);
    return;
  }
  rec_job_t *r = rec_new(s, REC_INSTALLED);
  if (r != NULL) {
    memcpy(r->serial, s->serial, sizeof(r->serial));
    r->spki = dup_bytes(s->lsc_spki, s->lsc_spki_len);
    r->spki_len = s->lsc_spki_len;
    memcpy(r->md5, s->lsc_md5, sizeof(r->md5));
  }
  enter(s, ST_CONCLUDING, 0);
  if (rec_submit(s, r, after_final_record) < 0) close_session(s, CAPF_RESULT_SERVER_ERROR);
}

static void on_fetch_response(capf_session_t *s, const capstan_capf_msg_t *m) {
  uint8_t reason = 0, type = 0;
  capstan_capf_slice_t der;
  if (m->command != CAPSTAN_CAPF_CMD_FETCH_CERT_RESPONSE) {
    protocol_error(s, "expected FETCH_CERT_RESPONSE");
    return;
  }
  rec_job_t *r = rec_new(s, REC_FETCHED);
  if (r == NULL) {
    close_session(s, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  if (capstan_capf_get_reason(m, &reason) == 0 &&
      reason == CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE) {
    /* REASON=1 says a certificate follows: a missing or malformed one is a
     * bad element, not "the phone has none". */
    if (capstan_capf_get_certificate(m, &type, &der) < 0) {
      rec_job_free(r);
      protocol_error(s, "FETCH_CERT_RESPONSE certificate missing or malformed");
      return;
    }
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    if (capstan_pki_parse_cert(der.data, der.len, &cert) < 0 ||
        (key = X509_get_pubkey(cert)) == NULL ||
        capstan_pki_public_key_to_der(key, &r->spki, &r->spki_len) < 0) {
      EVP_PKEY_free(key);
      X509_free(cert);
      rec_job_free(r);
      protocol_error(s, "FETCH_CERT_RESPONSE certificate malformed");
      return;
    }
    EVP_PKEY_free(key);
    X509_free(cert);
    r->der = dup_bytes(der.data, der.len);
    r->der_len = der.len;
    r->cert_type = type;
    capstan_pki_md5hash(der.data, der.len, r->md5);
    r->reason = NULL;
  } else {
    r->reason = "phone reported no certificate";
  }
  enter(s, ST_CONCLUDING, 0);
  if (rec_submit(s, r, after_final_record) < 0) close_session(s, CAPF_RESULT_SERVER_ERROR);
}

static void on_delete_response(capf_session_t *s, const capstan_capf_msg_t *m) {
  uint8_t reason = 0;
  if (m->command != CAPSTAN_CAPF_CMD_DELETE_CERT_RESPONSE) {
    protocol_error(s, "expected DELETE_CERT_RESPONSE");
    return;
  }
  if (capstan_capf_get_reason(m, &reason) < 0 || reason != CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE) {
    fail_operation(s, "phone did not delete its certificate", CAPF_RESULT_FAILED);
    return;
  }
  enter(s, ST_CONCLUDING, 0);
  if (rec_submit(s, rec_new(s, REC_DELETED), after_final_record) < 0) {
    close_session(s, CAPF_RESULT_SERVER_ERROR);
  }
}

static void on_message(capf_session_t *s, const uint8_t *msg, size_t len) {
  capstan_capf_msg_t m;
  if (capstan_capf_parse(msg, len, &m) < 0) {
    protocol_error(s, "malformed message");
    return;
  }
  if (m.session_id != s->session_id) {
    protocol_error(s, "wrong session id");
    return;
  }
  if (capstan_log_enabled(CAPSTAN_LOG_DEBUG)) {
    char desc[256];
    capstan_capf_msg_describe(&m, desc, sizeof(desc));
    LOG_DEBUG("event=capf_message device=%s state=%s msg=\"%s\"", s->device, state_name(s->state),
              desc);
  }
  switch (s->state) {
    case ST_WAIT_AUTH:
      on_auth_response(s, &m);
      break;
    case ST_WAIT_KEYGEN:
      on_keygen_message(s, &m);
      break;
    case ST_WAIT_STORE:
      on_store_response(s, &m);
      break;
    case ST_WAIT_FETCH:
      on_fetch_response(s, &m);
      break;
    case ST_WAIT_DELETE:
      on_delete_response(s, &m);
      break;
    case ST_THROTTLED:
    case ST_VERIFYING:
    case ST_SIGNING:
    case ST_RECORDING:
    case ST_CONCLUDING:
      /* The phone must wait for the server here. */
      if (m.command == CAPSTAN_CAPF_CMD_REQUEST_IN_PROGRESS) break;
      protocol_error(s, "message while the server is working");
      break;
    default:
      break;
  }
}

/* Frames the decrypted stream into messages. Complete messages are handled
 * straight from the read buffer; only a partial tail is copied. */
static void on_data(capstan_tls_conn_t *conn, void *arg, const uint8_t *data, size_t len) {
  capf_session_t *s = arg;
  /* The outcome is being recorded and END_SESSION follows: nothing the
   * phone says now changes it. */
  if (s->state == ST_ENDING) return;
  const uint8_t *buf = data;
  size_t avail = len;
  if (s->rx != NULL) {
    if (s->rx_len + len > CAPF_MAX_PHONE_MESSAGE) {
      protocol_error(s, "message too long");
      return;
    }
    uint8_t *p = realloc(s->rx, s->rx_len + len);
    if (p == NULL) {
      close_session(s, CAPF_RESULT_SERVER_ERROR);
      return;
    }
    memcpy(p + s->rx_len, data, len);
    s->rx = p;
    s->rx_len += len;
    buf = s->rx;
    avail = s->rx_len;
  }
  size_t off = 0;
  while (off < avail && s->state != ST_CLOSING) {
    size_t msg_len = 0;
    int rc = capstan_capf_frame_max(buf + off, avail - off, CAPF_MAX_PHONE_MESSAGE, &msg_len);
    if (rc == CAPSTAN_CAPF_NEED_MORE) break;
    if (rc < 0) {
      protocol_error(s, rc == CAPSTAN_ERANGE ? "message too long" : "wrong protocol id");
      break;
    }
    on_message(s, buf + off, msg_len);
    off += msg_len;
  }
  size_t left = s->state == ST_CLOSING ? 0 : avail - off;
  if (left == 0) {
    free(s->rx);
    s->rx = NULL;
    s->rx_len = 0;
  } else if (buf == s->rx) {
    memmove(s->rx, s->rx + off, left);
    s->rx_len = left;
  } else {
    s->rx = dup_bytes(buf + off, left);
    s->rx_len = s->rx ? left : 0;
    if (s->rx == NULL) close_session(s, CAPF_RESULT_SERVER_ERROR);
  }
}

static void on_handshake(capstan_tls_conn_t *conn, void *arg) {
  capf_session_t *s = arg;
  capf_metrics_t *m = &s->srv->m;
  release_handshake_slot(s);
  capstan_metric_inc(m->handshakes_ok);
  capstan_metric_observe(m->handshake_duration, capstan_now_seconds() - s->started_at);
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_AUTH_REQUEST, s->session_id, 1);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_VERSION, CAPSTAN_CAPF_PROTOCOL_VERSION);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_AUTH_TYPE, CAPSTAN_CAPF_AUTH_NONE);
  if (send_built(s, &b) < 0) {
    close_session(s, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  enter(s, ST_WAIT_AUTH, s->srv->settings.step_timeout_seconds);
}

static const capstan_tls_callbacks_t kConnCallbacks = {
    .on_handshake = on_handshake,
    .on_data = on_data,
    .on_close = on_conn_closed,
};

/* --- Start ---------------------------------------------------------------- */

void capf_session_start(capstan_capf_server_t *srv, uv_stream_t *listener) {
  capf_session_t *s = calloc(1, sizeof(*s));
  capf_pki_t *pki = srv->pki;
  SSL_CTX *ctx = srv->settings.legacy_tls ? pki->ctx_legacy : pki->ctx_modern;
  capstan_tls_conn_t *conn = s ? capstan_tls_conn_new(srv->loop, ctx, 1, &kConnCallbacks, s) : NULL;
  if (conn == NULL) {
    /* Accept and drop so the listener does not spin on a pending socket. */
    uv_tcp_t *tmp = malloc(sizeof(*tmp));
    if (tmp != NULL) {
      uv_tcp_init(srv->loop, tmp);
      if (uv_accept(listener, (uv_stream_t *)tmp) == 0) LOG_ERROR("event=capf_accept_no_memory");
      uv_close((uv_handle_t *)tmp, (uv_close_cb)free);
    }
    capstan_metric_inc(srv->m.rejected_error);
    free(s);
    return;
  }
  s->srv = srv;
  s->conn = conn;
  s->state = ST_HANDSHAKE;
  s->started_at = capstan_now_seconds();
  s->op_label = CAPF_OP_UNKNOWN;
  s->refs = 2; /* connection + timer */
  uv_timer_init(srv->loop, &s->timer);
  s->timer.data = s;
  do {
    RAND_bytes((uint8_t *)&s->session_id, sizeof(s->session_id));
  } while (s->session_id == 0);

  uv_tcp_t *tcp = capstan_tls_conn_tcp(conn);
  int rc = uv_accept(listener, (uv_stream_t *)tcp);
  int namelen = sizeof(s->peer);
  if (rc == 0) rc = uv_tcp_getpeername(tcp, (struct sockaddr *)&s->peer, &namelen);
  if (rc < 0) {
    capstan_metric_inc(srv->m.rejected_error);
    s->finished = 1; /* not a session: no outcome to count */
    capstan_tls_conn_close(conn, CAPSTAN_TLS_CLOSE_READ_ERROR);
    return;
  }
  capstan_sockaddr_host((struct sockaddr *)&s->peer, s->peer_host, sizeof(s->peer_host));

  /* Admission: IPv6 setting, total and per-address limits, drain. */
  const char *refuse = NULL;
  capstan_metric_t *counter = NULL;
  const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&s->peer;
  if (srv->draining) {
    refuse = "draining";
    counter = srv->m.rejected_draining;
  } else if (!srv->settings.enable_ipv6 && s->peer.ss_family == AF_INET6 &&
             !IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
    refuse = "ipv6 disabled (capstan config set enable-ipv6 on)";
    counter = srv->m.rejected_ipv6;
  } else if (srv->nsessions >= srv->settings.max_connections) {
    refuse = "connection limit reached (max-connections)";
    counter = srv->m.rejected_total_limit;
  } else if ((rc = capstan_conntrack_add(&srv->conntrack, (struct sockaddr *)&s->peer,
                                         srv->settings.max_connections_per_address)) < 0) {
    refuse = rc == CAPSTAN_EBUSY ? "per-address connection limit reached "
                                   "(max-connections-per-address)"
                                 : "out of memory";
    counter = rc == CAPSTAN_EBUSY ? srv->m.rejected_address_limit : srv->m.rejected_error;
  }
  if (refuse != NULL) {
    /* A storm of refusals must not flood the log: one line a second, with
     * the number of refusals it stands for. */
    static uint64_t last_log_ms;
    static unsigned suppressed;
    uint64_t now_ms = uv_now(srv->loop);
    if (last_log_ms == 0 || now_ms - last_log_ms >= 1000) {
      LOG_WARN("event=capf_connection_rejected peer=%s reason=\"%s\" also_refused=%u", s->peer_host,
               refuse, suppressed);
      last_log_ms = now_ms;
      suppressed = 0;
    } else {
      suppressed++;
    }
    capstan_metric_inc(counter);
    s->finished = 1;
    capstan_tls_conn_close(conn, CAPSTAN_TLS_CLOSE_LOCAL);
    return;
  }
  s->pki = capf_pki_ref(pki);
  /* Link into the server's list. */
  s->next = srv->sessions;
  if (srv->sessions) srv->sessions->prev = s;
  srv->sessions = s;
  s->linked = 1;
  srv->nsessions++;
  s->handshaking = 1;
  srv->handshaking++;
  capstan_metric_set(srv->m.sessions_active, srv->nsessions);
  if (uv_now(srv->loop) < srv->own_socket_options_until_ms) {
    uv_tcp_nodelay(tcp, 1);
    capf_session_apply_keepalive(s, srv->settings.keepalive_minutes);
  }
  enter(s, ST_HANDSHAKE, srv->settings.handshake_timeout_seconds);
  if (capstan_tls_conn_start(conn) < 0) close_session(s, CAPF_RESULT_SERVER_ERROR);
}
