/* The CA client: one request is a short series of HTTPS exchanges
 * (EST: simpleenroll; certsrv: certfnsh.asp, then certnew.cer, and the
 * CA's chain when none is configured), then the check of what the CA
 * issued, then one done callback. Health and metrics are kept here. */
#include <openssl/err.h>
#include <openssl/mem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/base/metrics.h"
#include "core/ca/ca.h"
#include "core/ca/internal.h"

typedef enum { KIND_SUBMIT, KIND_CHAIN, KIND_AUTH } kind_t;

typedef enum {
  STEP_EST_ENROLL,
  STEP_EST_CACERTS,
  STEP_EST_AUTH,
  STEP_MSCS_SUBMIT,
  STEP_MSCS_CERT,
  STEP_MSCS_CERT_CHAIN, /* the CA's chain, to check a certificate with */
  STEP_MSCS_CHAIN,
  STEP_MSCS_AUTH,
} step_t;

struct capstan_ca_client {
  uv_loop_t *loop;
  capstan_issuer_t issuer;
  capstan_ca_config_t cfg;
  ca_url_t url;
  SSL_CTX *ctx;
  capstan_ca_request_t *requests; /* in flight, started or queued */
  /* At most cfg.max_requests exchanges run at once; later requests wait
   * here, oldest first (a thousand phones at once must not knock the CA
   * over with a thousand TLS connections). */
  unsigned active;
  capstan_ca_request_t *queue_head, *queue_tail;
  capstan_ca_health_t health;
  ca_addr_cache_t addrs; /* the CA's addresses as last resolved */
};

struct capstan_ca_request {
  capstan_ca_client_t *client;
  capstan_ca_request_t *prev, *next;
  capstan_ca_request_t *qprev, *qnext; /* the client's queue, while not started */
  unsigned holds_slot : 1;             /* one of the client's active slots */
  unsigned queued : 1;
  kind_t kind;
  step_t step;
  step_t first_step; /* what a queued request starts with */
  char device[CAPSTAN_SETTING_HOST_MAX + 1];
  uint8_t *csr, *spki;
  size_t csr_len, spki_len;
  char reqid[CAPSTAN_CA_REQUEST_ID_MAX + 1];
  STACK_OF(X509) * trust;
  capstan_ca_done_fn done;
  void *data;
  ca_http_t *http;
  double started;
  capstan_ca_result_t result;
  int result_taken; /* run_sync moved the result out */
};

static const char *mode_name(const capstan_ca_client_t *c) {
  return c->issuer == CAPSTAN_ISSUER_EST ? "est" : "mscs";
}

/* ---- the end of a request ------------------------------------------------ */

static void record(capstan_ca_client_t *c, const capstan_ca_result_t *r) {
  char labels[96];
  snprintf(labels, sizeof labels, "mode=\"%s\",result=\"%s\"", mode_name(c),
           capstan_ca_outcome_name(r->outcome));
  capstan_metric_inc(capstan_metrics_counter("capstan_ca_requests_total",
                                             "Exchanges with the online CA, by outcome", labels));
  snprintf(labels, sizeof labels, "mode=\"%s\"", mode_name(c));
  capstan_metric_observe(
      capstan_metrics_histogram("capstan_ca_request_duration_seconds",
                                "Time an exchange with the online CA took", labels,
                                capstan_buckets_slow, capstan_buckets_slow_n),
      r->latency_seconds);
  int reached = r->outcome != CAPSTAN_CA_UNAVAILABLE && r->outcome != CAPSTAN_CA_TIMED_OUT;
  capstan_metric_set(
      capstan_metrics_gauge("capstan_ca_up", "1 when the last exchange reached the online CA", ""),
      reached ? 1 : 0);
  int64_t now = (int64_t)time(NULL);
  c->health.requests++;
  c->health.last_latency_seconds = r->latency_seconds;
  if (r->outcome == CAPSTAN_CA_ISSUED || r->outcome == CAPSTAN_CA_PENDING) {
    c->health.last_success_at = now;
    capstan_metric_set(
        capstan_metrics_gauge("capstan_ca_last_success_timestamp_seconds",
                              "When an exchange with the online CA last succeeded (unix time)", ""),
        (double)now);
  } else {
    c->health.failures++;
    c->health.last_error_at = now;
    snprintf(c->health.last_error, sizeof c->health.last_error, "%s", r->reason);
  }
}

static void unlink_request(capstan_ca_request_t *req) {
  capstan_ca_client_t *c = req->client;
  if (req->prev) {
    req->prev->next = req->next;
  } else if (c->requests == req) {
    c->requests = req->next;
  }
  if (req->next) req->next->prev = req->prev;
  req->prev = req->next = NULL;
  if (c->health.in_flight) c->health.in_flight--;
}

static void request_free(capstan_ca_request_t *req) {
  if (!req->result_taken) capstan_ca_result_cleanup(&req->result);
  free(req->csr);
  free(req->spki);
  sk_X509_pop_free(req->trust, X509_free);
  free(req);
}

static int start_step(capstan_ca_request_t *req, step_t step);
static void complete(capstan_ca_request_t *req);

static void dequeue(capstan_ca_request_t *req) {
  capstan_ca_client_t *c = req->client;
  if (req->qprev) {
    req->qprev->qnext = req->qnext;
  } else {
    c->queue_head = req->qnext;
  }
  if (req->qnext) {
    req->qnext->qprev = req->qprev;
  } else {
    c->queue_tail = req->qprev;
  }
  req->qprev = req->qnext = NULL;
  req->queued = 0;
}

/* A started request left: the oldest queued ones take the free slots. */
static void release_slot(capstan_ca_client_t *c) {
  if (c->active) c->active--;
  while (c->queue_head && c->active < c->cfg.max_requests) {
    capstan_ca_request_t *next = c->queue_head;
    dequeue(next);
    if (start_step(next, next->first_step) != 0) {
      /* Out of memory: it waits at the head for the next free slot (or
       * its requester's own timer), rather than calling back from inside
       * whoever freed this slot. */
      next->queued = 1;
      next->qnext = c->queue_head;
      if (c->queue_head) {
        c->queue_head->qprev = next;
      } else {
        c->queue_tail = next;
      }
      c->queue_head = next;
      break;
    }
    next->holds_slot = 1;
    c->active++;
  }
}

/* Runs on the loop from an HTTP callback, so never inside submit. */
static void complete(capstan_ca_request_t *req) {
  capstan_ca_client_t *c = req->client;
  ERR_clear_error(); /* hostile answers leave parse errors; the loop's queue is shared */
  req->result.latency_seconds = capstan_now_seconds() - req->started;
  record(c, &req->result);
  unlink_request(req);
  /* Before done, which may free the client. */
  if (req->holds_slot) release_slot(c);
  req->done(req, &req->result, req->data);
  request_free(req);
}

/* ---- the check of an issued certificate ---------------------------------- */

/* Inline on the loop: parsing and one chain verification (a signature or
 * two) cost less than a millisecond; no thread hop is worth it. */
static void check_issued(capstan_ca_request_t *req) {
  capstan_ca_result_t *r = &req->result;
  STACK_OF(X509) *chain = sk_X509_new_null();
  if (!chain) {
    ca_result_set(r, CAPSTAN_CA_UNAVAILABLE, "out of memory checking the CA's certificate");
    return;
  }
  for (size_t i = 0; i < r->chain_count; i++) {
    const uint8_t *p = r->chain_der[i];
    X509 *x = d2i_X509(NULL, &p, (long)r->chain_lens[i]);
    if (x && !sk_X509_push(chain, x)) X509_free(x);
  }
  const char *why = NULL;
  int rc = capstan_ca_check_certificate(r->cert_der, r->cert_len, chain, req->spki, req->spki_len,
                                        req->device, req->trust, (int64_t)time(NULL), &why);
  sk_X509_pop_free(chain, X509_free);
  if (rc != 0) {
    if (why && strcmp(why, "certificate is for another key") == 0) {
      ca_result_set(r, CAPSTAN_CA_BAD_CERT, "CA returned a certificate for another key");
    } else {
      ca_result_set(r, CAPSTAN_CA_BAD_CERT, "CA returned a bad certificate: %s",
                    why ? why : "check failed");
    }
    free(r->cert_der);
    r->cert_der = NULL;
    r->cert_len = 0;
  }
}

/* The configured chain, when the CA sent none with the certificate. */
static void add_configured_chain(capstan_ca_request_t *req) {
  const capstan_ca_config_t *cfg = &req->client->cfg;
  capstan_ca_result_t *r = &req->result;
  if (r->chain_count) return;
  for (size_t i = 0; i < cfg->chain_count; i++) {
    if (ca_der_list_append(&r->chain_der, &r->chain_lens, &r->chain_count, cfg->chain_der[i],
                           cfg->chain_lens[i]) != 0) {
      return; /* the check then fails with a chain sentence */
    }
  }
}

/* ---- the exchanges -------------------------------------------------------- */

static void on_http_done(void *data, ca_http_outcome_t outcome, const char *error,
                         const ca_http_response_t *resp);

static int start_step(capstan_ca_request_t *req, step_t step) {
  capstan_ca_client_t *c = req->client;
  const capstan_ca_config_t *cfg = &c->cfg;
  char target[CAPSTAN_CA_PATH_MAX + 1];
  ca_http_request_t rq;
  memset(&rq, 0, sizeof rq);
  rq.host = c->url.host;
  rq.port = c->url.port;
  rq.target = target;
  rq.username = cfg->username;
  rq.password = cfg->password;
  rq.ctx = c->ctx;
  rq.timeout_seconds = cfg->timeout_seconds;
  rq.addr_cache = &c->addrs;
  rq.method = "GET";
  char *body = NULL;
  size_t body_len = 0;
  int n = 0;
  switch (step) {
    case STEP_EST_ENROLL:
    case STEP_EST_AUTH:
      if (ca_est_target(&c->url, cfg->label, "simpleenroll", target, sizeof target) != 0) return -1;
      rq.method = "POST";
      rq.content_type = "application/pkcs10";
      if (step == STEP_EST_ENROLL) {
        body = ca_est_enroll_body(req->csr, req->csr_len, &body_len);
        if (!body) return -1;
      }
      break;
    case STEP_EST_CACERTS:
      if (ca_est_target(&c->url, cfg->label, "cacerts", target, sizeof target) != 0) return -1;
      break;
    case STEP_MSCS_SUBMIT:
      n = snprintf(target, sizeof target, "%s/certsrv/certfnsh.asp", c->url.path);
      rq.method = "POST";
      rq.content_type = "application/x-www-form-urlencoded";
      body = ca_mscs_submit_body(req->csr, req->csr_len, cfg->template_name, &body_len);
      if (!body) return -1;
      break;
    case STEP_MSCS_CERT:
      n = snprintf(target, sizeof target, "%s/certsrv/certnew.cer?ReqID=%s&Enc=b64", c->url.path,
                   req->reqid);
      break;
    case STEP_MSCS_CERT_CHAIN:
    case STEP_MSCS_CHAIN:
      n = snprintf(target, sizeof target, "%s/certsrv/certnew.p7b?ReqID=CACert&Enc=b64",
                   c->url.path);
      break;
    case STEP_MSCS_AUTH:
      n = snprintf(target, sizeof target, "%s/certsrv/", c->url.path);
      break;
  }
  if (n < 0 || (size_t)n >= sizeof target) {
    free(body);
    return -1;
  }
  rq.body = (const uint8_t *)body;
  rq.body_len = body_len;
  req->step = step;
  req->http = ca_http_start(c->loop, &rq, on_http_done, req);
  free(body); /* copied by ca_http_start */
  return req->http ? 0 : -1;
}

static void credentials_answer(capstan_ca_request_t *req, const ca_http_response_t *resp) {
  capstan_ca_result_t *r = &req->result;
  r->http_status = resp->status;
  if (resp->status == 401 || resp->status == 403) {
    ca_result_set(r, CAPSTAN_CA_REFUSED, "HTTP %d: credentials refused", resp->status);
  } else if (req->step == STEP_MSCS_AUTH && resp->status != 200) {
    ca_result_set(r, CAPSTAN_CA_REFUSED, "HTTP %d from %s/certsrv/", resp->status,
                  req->client->url.path[0] ? req->client->url.path : "");
  } else {
    /* EST: an empty simpleenroll passed authentication if it was answered
     * with anything but 401/403 (normally 400, the request is empty). */
    ca_result_set(r, CAPSTAN_CA_ISSUED, "credentials accepted (HTTP %d)", resp->status);
  }
}

static void on_http_done(void *data, ca_http_outcome_t outcome, const char *error,
                         const ca_http_response_t *resp) {
  capstan_ca_request_t *req = data;
  capstan_ca_result_t *r = &req->result;
  req->http = NULL;
  if (outcome == CA_HTTP_TIMED_OUT) {
    ca_result_set(r, CAPSTAN_CA_TIMED_OUT, "CA timed out: %s", error);
    complete(req);
    return;
  }
  if (outcome != CA_HTTP_ANSWERED) {
    ca_result_set(r, CAPSTAN_CA_UNAVAILABLE, "CA unavailable: %s", error);
    complete(req);
    return;
  }
  int64_t now = (int64_t)time(NULL);
  switch (req->step) {
    case STEP_EST_ENROLL:
      ca_est_enroll_answer(resp, req->spki, req->spki_len, now, r);
      if (r->outcome == CAPSTAN_CA_ISSUED) {
        add_configured_chain(req);
        check_issued(req);
      }
      break;
    case STEP_EST_CACERTS:
      ca_est_cacerts_answer(resp, r);
      break;
    case STEP_MSCS_CHAIN:
      ca_mscs_chain_answer(resp, r);
      break;
    case STEP_EST_AUTH:
    case STEP_MSCS_AUTH:
      credentials_answer(req, resp);
      break;
    case STEP_MSCS_SUBMIT:
      if (ca_mscs_submit_answer(resp, now, r, req->reqid, sizeof req->reqid) == 1) {
        if (start_step(req, STEP_MSCS_CERT) == 0) return;
        ca_result_set(r, CAPSTAN_CA_UNAVAILABLE, "out of memory asking for the certificate");
      }
      break;
    case STEP_MSCS_CERT:
      ca_mscs_cert_answer(resp, req->reqid, now, r);
      if (r->outcome == CAPSTAN_CA_ISSUED) {
        if (req->client->cfg.chain_count == 0 && start_step(req, STEP_MSCS_CERT_CHAIN) == 0) return;
        add_configured_chain(req);
        check_issued(req);
      }
      break;
    case STEP_MSCS_CERT_CHAIN: {
      /* Best effort: without the chain the check says it does not chain. */
      capstan_ca_result_t chain;
      memset(&chain, 0, sizeof chain);
      ca_mscs_chain_answer(resp, &chain);
      if (chain.outcome == CAPSTAN_CA_ISSUED) {
        ca_der_list_free(r->chain_der, r->chain_lens, r->chain_count);
        r->chain_der = chain.chain_der;
        r->chain_lens = chain.chain_lens;
        r->chain_count = chain.chain_count;
        chain.chain_der = NULL;
        chain.chain_lens = NULL;
        chain.chain_count = 0;
      }
      capstan_ca_result_cleanup(&chain);
      r->http_status = resp->status;
      ca_result_set(r, CAPSTAN_CA_ISSUED, "issued");
      check_issued(req);
      break;
    }
  }
  complete(req);
}

/* ---- the client ------------------------------------------------------------ */

static int label_valid(const char *label) {
  for (const char *p = label; *p; p++) {
    char ch = *p;
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '-' || ch == '_' || ch == '.')) {
      return 0;
    }
  }
  return 1;
}

capstan_ca_client_t *capstan_ca_client_new(uv_loop_t *loop, capstan_issuer_t issuer,
                                           const capstan_ca_config_t *cfg, char *err,
                                           size_t errlen) {
  if (issuer != CAPSTAN_ISSUER_EST && issuer != CAPSTAN_ISSUER_MSCS) {
    snprintf(err, errlen, "an online CA client is for issuer est or mscs");
    return NULL;
  }
  capstan_ca_client_t *c = calloc(1, sizeof *c);
  if (!c) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  c->loop = loop;
  c->issuer = issuer;
  if (ca_url_parse(cfg->url, &c->url, err, errlen) != 0) {
    free(c);
    return NULL;
  }
  if (issuer == CAPSTAN_ISSUER_EST && !label_valid(cfg->label)) {
    snprintf(err, errlen, "the EST label may hold letters, digits, '-', '_' and '.' only");
    free(c);
    return NULL;
  }
  if (issuer == CAPSTAN_ISSUER_MSCS && !cfg->template_name[0]) {
    snprintf(err, errlen, "the Microsoft CA needs a certificate template name");
    free(c);
    return NULL;
  }
  char why[160];
  c->ctx = ca_http_ctx_new(cfg->ca_bundle_pem, cfg->ca_bundle_len, why, sizeof why);
  if (!c->ctx) {
    snprintf(err, errlen, "TLS: %s", why);
    free(c);
    return NULL;
  }
  if (capstan_ca_config_copy(cfg, &c->cfg) != 0) {
    snprintf(err, errlen, "out of memory");
    SSL_CTX_free(c->ctx);
    free(c);
    return NULL;
  }
  return c;
}

static capstan_ca_request_t *request_new(capstan_ca_client_t *c, kind_t kind,
                                         capstan_ca_done_fn done, void *data) {
  capstan_ca_request_t *req = calloc(1, sizeof *req);
  if (!req) return NULL;
  req->client = c;
  req->kind = kind;
  req->done = done;
  req->data = data;
  req->started = capstan_now_seconds();
  return req;
}

static capstan_ca_request_t *request_launch(capstan_ca_request_t *req, step_t step) {
  capstan_ca_client_t *c = req->client;
  unsigned limit = c->cfg.max_requests ? c->cfg.max_requests : CAPSTAN_CA_DEFAULT_MAX_REQUESTS;
  c->cfg.max_requests = limit;
  if (c->active < limit) {
    if (start_step(req, step) != 0) {
      request_free(req);
      return NULL;
    }
    req->holds_slot = 1;
    c->active++;
  } else {
    /* Its time at the CA starts when it does: the HTTP timeout is per
     * exchange; the requester's own timer bounds the wait. */
    req->first_step = step;
    req->queued = 1;
    req->qprev = c->queue_tail;
    if (c->queue_tail) {
      c->queue_tail->qnext = req;
    } else {
      c->queue_head = req;
    }
    c->queue_tail = req;
  }
  req->next = c->requests;
  if (c->requests) c->requests->prev = req;
  c->requests = req;
  c->health.in_flight++;
  return req;
}

capstan_ca_request_t *capstan_ca_submit(capstan_ca_client_t *c, const char *device,
                                        const uint8_t *csr_der, size_t csr_len,
                                        const uint8_t *phone_spki, size_t spki_len,
                                        const char *request_id, STACK_OF(X509) * trust,
                                        capstan_ca_done_fn done, void *data) {
  int poll = request_id && request_id[0];
  if (!c || !device || strlen(device) > CAPSTAN_SETTING_HOST_MAX || !done) return NULL;
  if (poll && (c->issuer != CAPSTAN_ISSUER_MSCS || !ca_mscs_reqid_valid(request_id))) return NULL;
  if (!poll && (!csr_der || csr_len == 0)) return NULL;
  capstan_ca_request_t *req = request_new(c, KIND_SUBMIT, done, data);
  if (!req) return NULL;
  snprintf(req->device, sizeof req->device, "%s", device);
  req->csr = malloc(csr_len ? csr_len : 1);
  req->spki = malloc(spki_len ? spki_len : 1);
  req->trust = trust ? X509_chain_up_ref(trust) : sk_X509_new_null();
  if (!req->csr || !req->spki || !req->trust) {
    request_free(req);
    return NULL;
  }
  if (csr_len) memcpy(req->csr, csr_der, csr_len);
  req->csr_len = csr_len;
  if (spki_len) memcpy(req->spki, phone_spki, spki_len);
  req->spki_len = spki_len;
  step_t step;
  if (c->issuer == CAPSTAN_ISSUER_EST) {
    step = STEP_EST_ENROLL;
  } else if (poll) {
    snprintf(req->reqid, sizeof req->reqid, "%s", request_id);
    step = STEP_MSCS_CERT;
  } else {
    step = STEP_MSCS_SUBMIT;
  }
  return request_launch(req, step);
}

capstan_ca_request_t *capstan_ca_fetch_chain(capstan_ca_client_t *c, capstan_ca_done_fn done,
                                             void *data) {
  if (!c || !done) return NULL;
  capstan_ca_request_t *req = request_new(c, KIND_CHAIN, done, data);
  if (!req) return NULL;
  return request_launch(req, c->issuer == CAPSTAN_ISSUER_EST ? STEP_EST_CACERTS : STEP_MSCS_CHAIN);
}

void capstan_ca_cancel(capstan_ca_request_t *req) {
  if (!req) return;
  capstan_ca_client_t *c = req->client;
  ca_http_cancel(req->http); /* its done callback will not run */
  req->http = NULL;
  if (req->queued) dequeue(req);
  unlink_request(req);
  int held = req->holds_slot;
  request_free(req);
  if (held) release_slot(c);
}

int capstan_ca_client_set_chain(capstan_ca_client_t *c, const uint8_t *const *der,
                                const size_t *lens, size_t count) {
  uint8_t **d = NULL;
  size_t *l = NULL, n = 0;
  for (size_t i = 0; i < count; i++) {
    if (ca_der_list_append(&d, &l, &n, der[i], lens[i]) != 0) {
      ca_der_list_free(d, l, n);
      return CAPSTAN_ENOMEM;
    }
  }
  /* Requests copy the configured chain when their answer comes, on this
   * thread: nothing holds the old one. */
  ca_der_list_free(c->cfg.chain_der, c->cfg.chain_lens, c->cfg.chain_count);
  c->cfg.chain_der = d;
  c->cfg.chain_lens = l;
  c->cfg.chain_count = n;
  return 0;
}

void capstan_ca_client_health(const capstan_ca_client_t *c, capstan_ca_health_t *out) {
  *out = c->health;
}

void capstan_ca_client_free(capstan_ca_client_t *c) {
  if (!c) return;
  /* The queue first, so that cancelling a started request starts none. */
  while (c->queue_head) capstan_ca_cancel(c->queue_head);
  while (c->requests) capstan_ca_cancel(c->requests);
  /* The cancelled exchanges own copies of what they need and close their
   * handles on the loop by themselves; nothing here waits for them. */
  capstan_ca_config_cleanup(&c->cfg);
  SSL_CTX_free(c->ctx); /* exchanges still closing hold their own reference */
  free(c);
}

/* ---- the CLI's synchronous operations -------------------------------------- */

typedef struct sync_state {
  capstan_ca_result_t *out;
  int done;
} sync_state_t;

static void sync_done(capstan_ca_request_t *req, const capstan_ca_result_t *result, void *data) {
  sync_state_t *s = data;
  (void)result;
  *s->out = req->result; /* moved, not copied */
  req->result_taken = 1;
  s->done = 1;
}

int capstan_ca_run_sync(capstan_issuer_t issuer, const capstan_ca_config_t *cfg, capstan_ca_op_t op,
                        capstan_ca_result_t *out) {
  memset(out, 0, sizeof *out);
  uv_loop_t loop;
  if (uv_loop_init(&loop) != 0) {
    ca_result_set(out, CAPSTAN_CA_UNAVAILABLE, "cannot start an event loop");
    return CAPSTAN_EIO;
  }
  char err[CAPSTAN_CA_REASON_MAX + 1] = "";
  int rc = CAPSTAN_EIO;
  capstan_ca_client_t *c = capstan_ca_client_new(&loop, issuer, cfg, err, sizeof err);
  if (!c) {
    ca_result_set(out, CAPSTAN_CA_UNAVAILABLE, "%s", err);
    rc = CAPSTAN_EINVAL;
  } else {
    sync_state_t s = {out, 0};
    capstan_ca_request_t *req =
        request_new(c, op == CAPSTAN_CA_OP_CHAIN ? KIND_CHAIN : KIND_AUTH, sync_done, &s);
    step_t step;
    if (op == CAPSTAN_CA_OP_CHAIN) {
      step = issuer == CAPSTAN_ISSUER_EST ? STEP_EST_CACERTS : STEP_MSCS_CHAIN;
    } else {
      step = issuer == CAPSTAN_ISSUER_EST ? STEP_EST_AUTH : STEP_MSCS_AUTH;
    }
    if (!req || !request_launch(req, step)) {
      ca_result_set(out, CAPSTAN_CA_UNAVAILABLE, "out of memory");
      rc = CAPSTAN_ENOMEM;
    } else {
      while (!s.done && uv_run(&loop, UV_RUN_ONCE)) {
      }
      rc = s.done && out->outcome == CAPSTAN_CA_ISSUED ? 0 : CAPSTAN_EIO;
    }
    capstan_ca_client_free(c);
  }
  uv_run(&loop, UV_RUN_DEFAULT); /* lets closing handles finish */
  uv_loop_close(&loop);
  return rc;
}
