#include "handlers/capf/connection.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/base/conntrack.h"
#include "core/base/error.h"
#include "core/base/log.h"
#include "handlers/capf/sockopts.h"

static capf_conn_t *conn_of(capf_session_t *s) {
  return (capf_conn_t *)((char *)s - offsetof(capf_conn_t, session));
}

static void conn_unref(capf_conn_t *c) {
  if (--c->refs > 0) return;
  capf_session_cleanup(&c->session);
  capf_pki_unref(c->pki);
  free(c);
}

static void handshake_over(capf_conn_t *c) {
  if (!c->handshake_pending) return;
  c->handshake_pending = 0;
  c->owner->handshake_over(c->owner_arg, c);
}

/* --- The session's hooks -------------------------------------------------- */

static int hook_send(capf_session_t *s, const uint8_t *msg, size_t len) {
  capf_conn_t *c = conn_of(s);
  /* Closed already: the phone is gone, there is no one to tell. */
  return c->tls != NULL ? capstan_tls_conn_write(c->tls, msg, len) : 0;
}

static void hook_hold_output(capf_session_t *s) {
  capf_conn_t *c = conn_of(s);
  if (c->tls != NULL) capstan_tls_conn_hold_output(c->tls);
}

static void hook_close(capf_session_t *s) {
  capf_conn_t *c = conn_of(s);
  if (c->tls != NULL) capstan_tls_conn_close(c->tls, CAPSTAN_TLS_CLOSE_LOCAL);
}

static void on_timer(uv_timer_t *t) {
  capf_session_timed_out(&((capf_conn_t *)t->data)->session);
}

static void hook_start_timer(capf_session_t *s, uint64_t ms) {
  uv_timer_start(&conn_of(s)->timer, on_timer, ms, 0);
}

static void hook_stop_timer(capf_session_t *s) {
  uv_timer_stop(&conn_of(s)->timer);
}

/* During a storage outage the writer (or, for a shared database that
 * cannot be reached, the store) has said so once. */
static void log_load_failure(capstan_store_t *store, const char *name, int rc) {
  if (rc >= 0 || rc == CAPSTAN_ENOENT) return;
  bool said = !capstan_store_available(store) || !capstan_store_reachable(store);
  capstan_log(said ? CAPSTAN_LOG_DEBUG : CAPSTAN_LOG_ERROR,
              "event=capf_store_read_failed device=%s error=%s", name, capstan_strerror(rc));
}

/* A device read on a reader thread (a shared database). */
typedef struct device_load {
  capf_conn_t *c;
  char name[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1];
  capf_device_t device;
} device_load_t;

static int read_device(capstan_txn_t *txn, void *arg) {
  device_load_t *l = arg;
  return capf_device_read(txn, l->name, &l->device);
}

static void on_device_read(void *arg, int status) {
  device_load_t *l = arg;
  capf_conn_t *c = l->c;
  log_load_failure(c->store, l->name, status);
  capf_session_device_loaded(&c->session, status, &l->device);
  capf_device_cleanup(&l->device);
  free(l);
  conn_unref(c);
}

static int hook_load_device(capf_session_t *s, const char *name, capf_device_t *out) {
  capf_conn_t *c = conn_of(s);
  if (!capstan_store_reads_wait(c->store)) {
    int rc = capf_device_load(c->store, name, out);
    log_load_failure(c->store, name, rc);
    return rc;
  }
  device_load_t *l = calloc(1, sizeof(*l));
  if (l == NULL) return CAPSTAN_ENOMEM;
  l->c = c;
  snprintf(l->name, sizeof(l->name), "%s", name);
  c->refs++;
  int rc = capstan_store_read_async(c->store, read_device, l, on_device_read);
  if (rc < 0) {
    c->refs--;
    free(l);
    return rc;
  }
  return CAPF_LOAD_PENDING;
}

static void on_recorded(void *arg, int status) {
  capf_record_t *r = arg;
  capf_conn_t *c = r->host;
  /* During a storage outage the writer has said so once; a line per
   * phone would bury it. */
  if (status < 0) {
    capstan_log(capstan_store_available(c->store) ? CAPSTAN_LOG_ERROR : CAPSTAN_LOG_DEBUG,
                "event=capf_record_failed device=%s kind=%s error=%s", r->device,
                capf_record_kind_name(r->kind), capstan_strerror(status));
  }
  capf_session_recorded(&c->session, r, status);
  capf_record_free(r);
  conn_unref(c);
}

static int hook_record(capf_session_t *s, capf_record_t *r) {
  capf_conn_t *c = conn_of(s);
  r->host = c;
  c->refs++;
  /* On a shared database what it reads is read with the rest of the batch. */
  capstan_store_key_t keys[CAPSTAN_STORE_SUBMIT_KEYS_MAX];
  size_t nkeys = capf_record_reads(r, keys);
  int rc = capstan_store_submit_reading(c->store, capf_record_apply, r, on_recorded, keys, nkeys);
  if (rc < 0) {
    c->refs--;
    capf_record_free(r);
  }
  return rc;
}

static void work_run(uv_work_t *req) {
  capf_job_run((capf_job_t *)((char *)req - offsetof(capf_job_t, req)));
}

static void work_after(uv_work_t *req, int status) {
  capf_job_t *j = (capf_job_t *)((char *)req - offsetof(capf_job_t, req));
  capf_conn_t *c = req->data;
  if (status < 0) j->status = CAPSTAN_EIO; /* cancelled: never ran */
  capf_session_worked(&c->session, j);
  capf_job_free(j);
  conn_unref(c);
}

static int hook_work(capf_session_t *s, capf_job_t *j) {
  capf_conn_t *c = conn_of(s);
  /* The connection's snapshot outlives the job: it is released only when
   * the last job is done. */
  if (j->kind == CAPF_JOB_VERIFY) {
    j->u.verify.trust = c->pki->ids->capf_trust;
    j->u.verify.intermediates = c->pki->ids->capf_intermediates;
  } else if (j->kind == CAPF_JOB_ISSUE) {
    j->u.issue.capf = &c->pki->ids->capf;
  }
  j->req.data = c;
  c->refs++;
  int rc = uv_queue_work(c->loop, &j->req, work_run, work_after);
  if (rc < 0) {
    c->refs--;
    capf_job_free(j);
  }
  return rc;
}

static void on_ca_done(capstan_ca_request_t *req, const capstan_ca_result_t *r, void *data) {
  (void)req;
  capf_conn_t *c = data;
  c->ca_req = NULL;
  capf_session_ca_answered(&c->session, r);
  conn_unref(c);
}

static int hook_ca_submit(capf_session_t *s, const uint8_t *csr, size_t csr_len,
                          const uint8_t *spki, size_t spki_len, const char *request_id) {
  capf_conn_t *c = conn_of(s);
  capstan_ca_client_t *ca = s->issuer < 4 ? s->shared->ca[s->issuer] : NULL;
  if (ca == NULL) return CAPSTAN_ENOENT;
  /* The issued certificate must chain to CAPF-trust as this session knows
   * it (its snapshot outlives the request: the request holds a reference
   * to the connection). */
  c->ca_req = capstan_ca_submit(ca, s->device, csr, csr_len, spki, spki_len, request_id,
                                c->pki->ids->capf_trust, on_ca_done, c);
  if (c->ca_req == NULL) return CAPSTAN_ENOMEM;
  c->refs++;
  return 0;
}

static void hook_ca_cancel(capf_session_t *s) {
  capf_conn_t *c = conn_of(s);
  if (c->ca_req == NULL) return;
  capstan_ca_cancel(c->ca_req);
  c->ca_req = NULL;
  conn_unref(c);
}

void capf_conn_ca_reset(capf_conn_t *c) {
  if (c->ca_req == NULL) return;
  capstan_ca_cancel(c->ca_req);
  c->ca_req = NULL;
  capstan_ca_result_t r = {.outcome = CAPSTAN_CA_UNAVAILABLE};
  snprintf(r.reason, sizeof(r.reason), "CA unavailable: the CA configuration changed");
  capf_session_ca_answered(&c->session, &r);
  conn_unref(c);
}

static const capf_session_hooks_t kHooks = {
    .send = hook_send,
    .hold_output = hook_hold_output,
    .close = hook_close,
    .start_timer = hook_start_timer,
    .stop_timer = hook_stop_timer,
    .load_device = hook_load_device,
    .record = hook_record,
    .work = hook_work,
    .ca_submit = hook_ca_submit,
    .ca_cancel = hook_ca_cancel,
};

/* --- TLS ------------------------------------------------------------------ */

static void on_handshake(capstan_tls_conn_t *tls, void *arg) {
  (void)tls;
  capf_conn_t *c = arg;
  handshake_over(c);
  capf_session_handshake_done(&c->session);
}

static void on_data(capstan_tls_conn_t *tls, void *arg, const uint8_t *data, size_t len) {
  (void)tls;
  capf_conn_t *c = arg;
  capf_session_received(&c->session, data, len);
}

static void on_timer_closed(uv_handle_t *h) {
  conn_unref(h->data);
}

static void on_tls_closed(capstan_tls_conn_t *tls, void *arg, capstan_tls_close_reason_t why) {
  (void)tls;
  capf_conn_t *c = arg;
  c->tls = NULL;
  if (c->started) {
    capf_session_closed(&c->session, why);
    handshake_over(c);
    c->owner->closed(c->owner_arg, c);
  }
  uv_close((uv_handle_t *)&c->timer, on_timer_closed);
  conn_unref(c);
}

static const capstan_tls_callbacks_t kTlsCallbacks = {
    .on_handshake = on_handshake,
    .on_data = on_data,
    .on_close = on_tls_closed,
};

/* --- Life ----------------------------------------------------------------- */

capf_conn_t *capf_conn_new(uv_loop_t *loop, capstan_store_t *store, capf_pki_t *pki, int legacy_tls,
                           capf_shared_t *shared, const capf_conn_owner_t *owner, void *owner_arg) {
  capf_conn_t *c = calloc(1, sizeof(*c));
  if (c == NULL) return NULL;
  SSL_CTX *ctx = legacy_tls ? pki->ctx_legacy : pki->ctx_modern;
  c->tls = capstan_tls_conn_new(loop, ctx, 1, &kTlsCallbacks, c);
  if (c->tls == NULL) {
    free(c);
    return NULL;
  }
  c->loop = loop;
  c->store = store;
  c->pki = capf_pki_ref(pki);
  c->owner = owner;
  c->owner_arg = owner_arg;
  c->session.shared = shared;
  c->refs = 2; /* TLS connection + timer */
  uv_timer_init(loop, &c->timer);
  c->timer.data = c;
  return c;
}

int capf_conn_accept(capf_conn_t *c, uv_stream_t *listener) {
  uv_tcp_t *tcp = capstan_tls_conn_tcp(c->tls);
  int rc = uv_accept(listener, (uv_stream_t *)tcp);
  int namelen = sizeof(c->peer);
  if (rc == 0) rc = uv_tcp_getpeername(tcp, (struct sockaddr *)&c->peer, &namelen);
  if (rc < 0) return rc;
  char host[sizeof(c->session.peer_host)];
  capstan_sockaddr_host((struct sockaddr *)&c->peer, host, sizeof(host));
  capf_session_init(&c->session, &kHooks, c->session.shared, host);
  return 0;
}

const struct sockaddr *capf_conn_peer(const capf_conn_t *c) {
  return (const struct sockaddr *)&c->peer;
}

void capf_conn_discard(capf_conn_t *c) {
  capstan_tls_conn_close(c->tls, CAPSTAN_TLS_CLOSE_LOCAL);
}

void capf_conn_start(capf_conn_t *c, int own_socket_options, unsigned keepalive_minutes) {
  c->started = 1;
  c->handshake_pending = 1;
  if (own_socket_options) capf_tcp_set_options(capstan_tls_conn_tcp(c->tls), keepalive_minutes);
  capf_session_start(&c->session);
  if (capstan_tls_conn_start(c->tls) < 0) capf_session_abort(&c->session, CAPF_RESULT_SERVER_ERROR);
}

void capf_conn_set_keepalive(capf_conn_t *c, unsigned minutes) {
  if (c->tls != NULL) capf_tcp_set_keepalive(capstan_tls_conn_tcp(c->tls), minutes);
}

void capf_conn_abort(capf_conn_t *c) {
  capf_session_abort(&c->session, CAPF_RESULT_SHUTDOWN);
}
