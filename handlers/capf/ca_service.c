#include "handlers/capf/ca_service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "core/ca/ca.h"
#include "core/ca/requests.h"
#include "core/settings.h"

#define POLL_INTERVAL_MS 5000
/* Pending requests asked about at once: a CA that approves a backlog must
 * not see thousands of requests in one second from us. */
#define POLL_MAX_IN_FLIGHT 16
/* When a CA could not be reached about a pending request, ask again in: */
#define POLL_RETRY_UNREACHABLE_SECONDS 60
#define HEALTH_WRITE_SECONDS 10
/* The CA's chain is fetched when the client is made and then daily
 * (external-ca.md); after a failure, again within the hour. */
#define CHAIN_REFRESH_SECONDS 86400
#define CHAIN_RETRY_SECONDS 3600

/* A pending request the poller asks the CA about (copies: the scan's
 * transaction is over when it is submitted). */
typedef struct poll_item {
  capf_ca_service_t *svc;
  uint8_t key[32];
  char device[CAPSTAN_DEVICE_NAME_MAX + 1];
  uint8_t *csr_der;
  size_t csr_len;
  uint8_t *spki;
  size_t spki_len;
  char request_id[CAPSTAN_CA_REQUEST_ID_MAX + 1];
  unsigned issuer; /* the client that asks: the one of the issuer it was made for */
  capstan_ca_request_t *req;
  struct poll_item *next; /* in flight, or in a scan's list */
} poll_item_t;

/* The scan runs on the thread pool: thousands of requests are decoded
 * there, not on the loop. */
typedef struct scan_job {
  uv_work_t work;
  capf_ca_service_t *svc;
  unsigned issuers; /* poll requests made for these issuers (a bit each) */
  int64_t now;
  unsigned room; /* how many due requests to take */
  uint8_t skip[POLL_MAX_IN_FLIGHT][32];
  unsigned nskip;
  int status;
  poll_item_t *due;
} scan_job_t;

struct capf_ca_service {
  uv_loop_t *loop;
  capstan_store_t *store;
  capf_shared_t *shared;
  capf_ca_reset_fn reset;
  void *reset_arg;
  uv_timer_t timer;
  unsigned issuer; /* the cluster's setting */
  capstan_ca_config_t cfg;
  /* One client per online issuer the configured CA can serve (indexed by
   * capstan_issuer_t): the cluster's, and the other for devices that have
   * their own --issuer. |client| is the primary one (the cluster's issuer,
   * else EST): its health is written and its chain fetched daily. */
  capstan_ca_client_t *clients[CAPSTAN_ISSUER_OFFLINE + 1];
  capstan_ca_client_t *client;
  capf_pki_t *pki;
  poll_item_t *in_flight;
  unsigned n_in_flight;
  int scanning;
  int stopping;
  int64_t health_written_at;
  uint64_t health_requests_written;
  capstan_ca_request_t *chain_req; /* the chain being fetched */
  int64_t chain_due_at;            /* unix seconds */
};

static void item_free(poll_item_t *it) {
  if (it == NULL) return;
  free(it->csr_der);
  free(it->spki);
  free(it);
}

/* --- The client --------------------------------------------------------- */

static int bytes_equal(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen) {
  return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

/* What a client is made from (the chain and the phone wait are not). */
static int same_connection(const capstan_ca_config_t *a, const capstan_ca_config_t *b) {
  return strcmp(a->url, b->url) == 0 && strcmp(a->label, b->label) == 0 &&
         strcmp(a->template_name, b->template_name) == 0 && strcmp(a->username, b->username) == 0 &&
         strcmp(a->password, b->password) == 0 &&
         bytes_equal(a->ca_bundle_pem, a->ca_bundle_len, b->ca_bundle_pem, b->ca_bundle_len) &&
         a->timeout_seconds == b->timeout_seconds && a->max_requests == b->max_requests;
}

static void drop_client(capf_ca_service_t *svc) {
  if (svc->clients[CAPSTAN_ISSUER_EST] == NULL && svc->clients[CAPSTAN_ISSUER_MSCS] == NULL) return;
  if (svc->chain_req != NULL) capstan_ca_cancel(svc->chain_req);
  svc->chain_req = NULL;
  /* Sessions and the poller let go of their requests first: the client
   * drops its requests without calling anyone back. */
  svc->reset(svc->reset_arg);
  while (svc->in_flight != NULL) {
    poll_item_t *it = svc->in_flight;
    svc->in_flight = it->next;
    capstan_ca_cancel(it->req);
    item_free(it);
  }
  svc->n_in_flight = 0;
  for (unsigned i = 0; i <= CAPSTAN_ISSUER_OFFLINE; i++) {
    capstan_ca_client_free(svc->clients[i]);
    svc->clients[i] = NULL;
    svc->shared->ca[i] = NULL;
  }
  svc->client = NULL;
}

/* Makes the client of |issuer| (EST or MSCS) for |cfg|; a failure is
 * logged when |loud| (the cluster's own issuer), else only noted. */
static void make_client(capf_ca_service_t *svc, unsigned issuer, const capstan_ca_config_t *cfg,
                        int loud) {
  char err[256] = "";
  capstan_ca_client_t *c =
      capstan_ca_client_new(svc->loop, (capstan_issuer_t)issuer, cfg, err, sizeof(err));
  if (c == NULL) {
    if (loud) {
      LOG_ERROR("event=ca_client_failed issuer=%s error=\"%s\"", capstan_issuer_name(issuer),
                err[0] ? err : "out of memory");
    } else {
      LOG_DEBUG("event=ca_client_unavailable issuer=%s error=\"%s\"", capstan_issuer_name(issuer),
                err);
    }
    return;
  }
  LOG_INFO("event=ca_client_ready issuer=%s url=%s", capstan_issuer_name(issuer), cfg->url);
  svc->clients[issuer] = c;
  svc->shared->ca[issuer] = c;
}

void capf_ca_service_update(capf_ca_service_t *svc, unsigned issuer, capf_pki_t *pki) {
  if (svc == NULL || svc->stopping) return;
  if (pki != svc->pki) {
    capf_pki_t *old = svc->pki;
    svc->pki = capf_pki_ref(pki);
    if (old != NULL) capf_pki_unref(old);
  }
  capstan_ca_config_t cfg;
  capstan_ca_config_init(&cfg);
  capstan_txn_t txn;
  int rc = capstan_store_begin(svc->store, false, &txn);
  if (rc == 0) {
    rc = capstan_ca_config_read(&txn, &cfg);
    capstan_store_abort(&txn);
  }
  if (rc < 0) {
    LOG_ERROR("event=ca_config_read_failed error=%s", capstan_strerror(rc));
    capstan_ca_config_cleanup(&cfg);
    return;
  }
  svc->shared->settings.ca_phone_wait_seconds = cfg.phone_wait_seconds;
  int configured = cfg.url[0] != '\0';
  int same = configured && svc->cfg.url[0] != '\0' && same_connection(&cfg, &svc->cfg);
  if (same) {
    /* `capstan ca test` stored a newer chain: the clients complete answers
     * with it from now on. */
    for (unsigned i = 0; cfg.chain_count > 0 && i <= CAPSTAN_ISSUER_OFFLINE; i++) {
      if (svc->clients[i] == NULL) continue;
      capstan_ca_client_set_chain(svc->clients[i], (const uint8_t *const *)cfg.chain_der,
                                  cfg.chain_lens, cfg.chain_count);
    }
  } else {
    drop_client(svc);
    if (configured) {
      /* Devices may have an online issuer of their own (--issuer) even
       * when the cluster's is capf or offline: both protocols are ready
       * when the CA's settings allow them (certsrv needs a template). */
      make_client(svc, CAPSTAN_ISSUER_EST, &cfg, issuer == CAPSTAN_ISSUER_EST);
      make_client(svc, CAPSTAN_ISSUER_MSCS, &cfg, issuer == CAPSTAN_ISSUER_MSCS);
      svc->chain_due_at = cfg.chain_fetched_at + CHAIN_REFRESH_SECONDS;
    }
  }
  /* The cluster's issuer only chooses the primary client: a change of it
   * lets the requests in flight go on. */
  svc->client =
      svc->clients[issuer == CAPSTAN_ISSUER_MSCS ? CAPSTAN_ISSUER_MSCS : CAPSTAN_ISSUER_EST];
  if (CAPSTAN_ISSUER_IS_ONLINE(issuer) && svc->clients[issuer] == NULL &&
      (issuer != svc->issuer || !same)) {
    LOG_WARN("event=ca_not_configured issuer=%s hint=\"capstan ca set --url ...%s\"",
             capstan_issuer_name(issuer), issuer == CAPSTAN_ISSUER_MSCS ? " --template NAME" : "");
  }
  svc->issuer = issuer;
  capstan_ca_config_cleanup(&svc->cfg);
  svc->cfg = cfg; /* takes its buffers */
}

/* --- Results of the poller ---------------------------------------------- */

/* What the poller writes for one answer (the writer thread reads it). */
typedef struct poll_write {
  uint8_t key[32];
  char device[CAPSTAN_DEVICE_NAME_MAX + 1];
  capstan_ca_outcome_t outcome;
  char reason[CAPSTAN_CA_REASON_MAX + 1];
  char request_id[CAPSTAN_CA_REQUEST_ID_MAX + 1]; /* the CA's id, once it gave one */
  uint8_t *cert_der;
  size_t cert_len;
  uint8_t **chain_der;
  size_t *chain_lens;
  size_t chain_count;
  int64_t next_poll_at;
  int64_t now;
} poll_write_t;

static void poll_write_free(poll_write_t *w) {
  free(w->cert_der);
  for (size_t i = 0; i < w->chain_count; i++) free(w->chain_der[i]);
  free(w->chain_der);
  free(w->chain_lens);
  free(w);
}

static int poll_write_apply(capstan_txn_t *txn, void *arg) {
  const poll_write_t *w = arg;
  switch (w->outcome) {
    case CAPSTAN_CA_ISSUED:
      return capstan_csr_record_issued(txn, w->key, w->cert_der, w->cert_len,
                                       (const uint8_t *const *)w->chain_der, w->chain_lens,
                                       w->chain_count, w->now);
    case CAPSTAN_CA_REFUSED:
    case CAPSTAN_CA_BAD_CERT:
      return capstan_csr_record_failed(txn, w->key, w->reason, w->now);
    default:
      return capstan_csr_record_polled(txn, w->key, w->next_poll_at, w->request_id, w->reason,
                                       w->now);
  }
}

static void poll_written(void *arg, int status) {
  poll_write_t *w = arg;
  if (status < 0 && status != CAPSTAN_ENOENT && status != CAPSTAN_EEXIST) {
    LOG_ERROR("event=ca_poll_record_failed device=%s error=%s", w->device,
              capstan_strerror(status));
  } else if (status == 0 && w->outcome == CAPSTAN_CA_ISSUED) {
    LOG_INFO("event=ca_request_issued device=%s note=\"the phone gets it at its next session\"",
             w->device);
  }
  poll_write_free(w);
}

static poll_write_t *poll_write_new(const poll_item_t *it, const capstan_ca_result_t *r) {
  poll_write_t *w = calloc(1, sizeof(*w));
  if (w == NULL) return NULL;
  memcpy(w->key, it->key, sizeof(w->key));
  snprintf(w->device, sizeof(w->device), "%s", it->device);
  w->outcome = r->outcome;
  snprintf(w->reason, sizeof(w->reason), "%s", r->reason);
  snprintf(w->request_id, sizeof(w->request_id), "%s", r->request_id);
  w->now = (int64_t)time(NULL);
  w->next_poll_at = r->outcome == CAPSTAN_CA_PENDING && r->retry_at > 0
                        ? r->retry_at
                        : w->now + POLL_RETRY_UNREACHABLE_SECONDS;
  if (r->outcome != CAPSTAN_CA_ISSUED) return w;
  w->cert_der = malloc(r->cert_len);
  w->chain_der = calloc(r->chain_count + 1, sizeof(*w->chain_der));
  w->chain_lens = calloc(r->chain_count + 1, sizeof(*w->chain_lens));
  if (w->cert_der == NULL || w->chain_der == NULL || w->chain_lens == NULL) goto oom;
  memcpy(w->cert_der, r->cert_der, r->cert_len);
  w->cert_len = r->cert_len;
  for (size_t i = 0; i < r->chain_count; i++) {
    w->chain_der[i] = malloc(r->chain_lens[i]);
    if (w->chain_der[i] == NULL) goto oom;
    w->chain_count = i + 1;
    memcpy(w->chain_der[i], r->chain_der[i], r->chain_lens[i]);
    w->chain_lens[i] = r->chain_lens[i];
  }
  return w;
oom:
  poll_write_free(w);
  return NULL;
}

static void on_poll_answer(capstan_ca_request_t *req, const capstan_ca_result_t *r, void *data) {
  (void)req;
  poll_item_t *it = data;
  capf_ca_service_t *svc = it->svc;
  for (poll_item_t **p = &svc->in_flight; *p != NULL; p = &(*p)->next) {
    if (*p == it) {
      *p = it->next;
      svc->n_in_flight--;
      break;
    }
  }
  LOG_INFO("event=ca_poll device=%s result=%s reason=\"%s\"", it->device,
           capstan_ca_outcome_name(r->outcome), r->reason);
  poll_write_t *w = poll_write_new(it, r);
  if (w == NULL || capstan_store_submit(svc->store, poll_write_apply, w, poll_written) < 0) {
    LOG_ERROR("event=ca_poll_record_failed device=%s error=%s", it->device,
              capstan_strerror(w == NULL ? CAPSTAN_ENOMEM : CAPSTAN_EIO));
    if (w != NULL) poll_write_free(w);
  }
  item_free(it);
}

/* --- The scan ------------------------------------------------------------ */

typedef struct scan_visit {
  scan_job_t *job;
  poll_item_t **tail;
  unsigned taken;
} scan_visit_t;

static int in_skip(const scan_job_t *j, const uint8_t key[32]) {
  for (unsigned i = 0; i < j->nskip; i++) {
    if (memcmp(j->skip[i], key, 32) == 0) return 1;
  }
  return 0;
}

static int scan_visit(const capstan_cert_request_t *r, void *arg) {
  scan_visit_t *v = arg;
  scan_job_t *j = v->job;
  if (r->status != CAPSTAN_CSR_PENDING) return 0;
  if (v->taken >= j->room || r->issuer > 31 || !((j->issuers >> r->issuer) & 1u) ||
      r->next_poll_at > j->now || in_skip(j, r->key)) {
    return 0;
  }
  poll_item_t *it = calloc(1, sizeof(*it));
  if (it == NULL) return 0;
  memcpy(it->key, r->key, sizeof(it->key));
  snprintf(it->device, sizeof(it->device), "%s", r->device);
  snprintf(it->request_id, sizeof(it->request_id), "%s", r->ca_request_id);
  it->issuer = r->issuer;
  it->csr_der = malloc(r->csr_len ? r->csr_len : 1);
  it->spki = malloc(r->spki_len ? r->spki_len : 1);
  if (it->csr_der == NULL || it->spki == NULL) {
    item_free(it);
    return 0;
  }
  memcpy(it->csr_der, r->csr_der, r->csr_len);
  it->csr_len = r->csr_len;
  memcpy(it->spki, r->spki, r->spki_len);
  it->spki_len = r->spki_len;
  *v->tail = it;
  v->tail = &it->next;
  v->taken++;
  return 0;
}

static void scan_run(uv_work_t *w) {
  scan_job_t *j = (scan_job_t *)w;
  capstan_txn_t txn;
  j->status = capstan_store_begin(j->svc->store, false, &txn);
  if (j->status < 0) return;
  scan_visit_t v = {.job = j, .tail = &j->due};
  j->status = capstan_csr_each(&txn, scan_visit, &v);
  capstan_store_abort(&txn);
}

static void scan_done(uv_work_t *w, int status) {
  scan_job_t *j = (scan_job_t *)w;
  capf_ca_service_t *svc = j->svc;
  svc->scanning = 0;
  if (status == 0 && j->status < 0) {
    LOG_ERROR("event=ca_poll_scan_failed error=%s", capstan_strerror(j->status));
  }
  while (j->due != NULL) {
    poll_item_t *it = j->due;
    j->due = it->next;
    it->next = NULL;
    /* The clients may have changed while the scan ran. */
    capstan_ca_client_t *client =
        it->issuer <= CAPSTAN_ISSUER_OFFLINE && !svc->stopping ? svc->clients[it->issuer] : NULL;
    if (client == NULL || svc->pki == NULL) {
      item_free(it);
      continue;
    }
    it->svc = svc;
    it->req =
        capstan_ca_submit(client, it->device, it->csr_der, it->csr_len, it->spki, it->spki_len,
                          it->request_id, svc->pki->ids->capf_trust, on_poll_answer, it);
    if (it->req == NULL) {
      item_free(it);
      continue;
    }
    it->next = svc->in_flight;
    svc->in_flight = it;
    svc->n_in_flight++;
  }
  free(j);
  if (svc->stopping == 2) { /* stopped while the scan ran */
    capstan_ca_config_cleanup(&svc->cfg);
    free(svc);
  }
}

/* --- Health -------------------------------------------------------------- */

static int health_apply(capstan_txn_t *txn, void *arg) {
  return capstan_ca_health_write(txn, arg);
}

static void health_written(void *arg, int status) {
  if (status < 0) LOG_WARN("event=ca_health_write_failed error=%s", capstan_strerror(status));
  free(arg);
}

static void write_health(capf_ca_service_t *svc, int64_t now) {
  if (svc->client == NULL || now - svc->health_written_at < HEALTH_WRITE_SECONDS) return;
  capstan_ca_health_t *h = malloc(sizeof(*h));
  if (h == NULL) return;
  capstan_ca_client_health(svc->client, h);
  if (h->requests == svc->health_requests_written) {
    free(h);
    return;
  }
  svc->health_written_at = now;
  svc->health_requests_written = h->requests;
  if (capstan_store_submit(svc->store, health_apply, h, health_written) < 0) free(h);
}

/* --- The CA's chain, daily -------------------------------------------------- */

typedef struct chain_write {
  uint8_t **der;
  size_t *lens;
  size_t count;
  int64_t now;
} chain_write_t;

static void chain_write_free(chain_write_t *w) {
  for (size_t i = 0; i < w->count; i++) free(w->der[i]);
  free(w->der);
  free(w->lens);
  free(w);
}

/* Onto the stored configuration as it is now (an operator's `ca set` may
 * have changed other fields meanwhile). */
static int chain_apply(capstan_txn_t *txn, void *arg) {
  chain_write_t *w = arg;
  capstan_ca_config_t cfg;
  int rc = capstan_ca_config_read(txn, &cfg);
  if (rc < 0) return rc;
  int changed = cfg.chain_count != w->count;
  for (size_t i = 0; !changed && i < w->count; i++) {
    changed = !bytes_equal(cfg.chain_der[i], cfg.chain_lens[i], w->der[i], w->lens[i]);
  }
  for (size_t i = 0; i < cfg.chain_count; i++) free(cfg.chain_der[i]);
  free(cfg.chain_der);
  free(cfg.chain_lens);
  cfg.chain_der = w->der;
  cfg.chain_lens = w->lens;
  cfg.chain_count = w->count;
  cfg.chain_fetched_at = w->now;
  rc = capstan_ca_config_write(txn, &cfg);
  cfg.chain_der = NULL; /* still the request's: a replayed batch writes it again */
  cfg.chain_lens = NULL;
  cfg.chain_count = 0;
  capstan_ca_config_cleanup(&cfg);
  /* A new chain: sessions take it for "by existing certificate" at the
   * reload this causes (core/identities.c). */
  if (rc == 0 && changed) rc = capstan_settings_bump_trust_generation(txn);
  return rc;
}

static void chain_written(void *arg, int status) {
  if (status < 0) LOG_WARN("event=ca_chain_write_failed error=%s", capstan_strerror(status));
  chain_write_free(arg);
}

static void on_chain(capstan_ca_request_t *req, const capstan_ca_result_t *r, void *data) {
  (void)req;
  capf_ca_service_t *svc = data;
  svc->chain_req = NULL;
  int64_t now = (int64_t)time(NULL);
  if (r->outcome != CAPSTAN_CA_ISSUED || r->chain_count == 0) {
    LOG_WARN("event=ca_chain_failed reason=\"%s\" retry_in=%d", r->reason, CHAIN_RETRY_SECONDS);
    svc->chain_due_at = now + CHAIN_RETRY_SECONDS;
    return;
  }
  svc->chain_due_at = now + CHAIN_REFRESH_SECONDS;
  chain_write_t *w = calloc(1, sizeof(*w));
  if (w == NULL) return;
  w->now = now;
  w->der = calloc(r->chain_count, sizeof(*w->der));
  w->lens = calloc(r->chain_count, sizeof(*w->lens));
  if (w->der == NULL || w->lens == NULL) {
    chain_write_free(w);
    return;
  }
  for (size_t i = 0; i < r->chain_count; i++) {
    w->der[i] = malloc(r->chain_lens[i]);
    if (w->der[i] == NULL) {
      chain_write_free(w);
      return;
    }
    w->count = i + 1;
    memcpy(w->der[i], r->chain_der[i], r->chain_lens[i]);
    w->lens[i] = r->chain_lens[i];
  }
  LOG_INFO("event=ca_chain_fetched certificates=%zu", w->count);
  for (unsigned i = 0; i <= CAPSTAN_ISSUER_OFFLINE; i++) {
    if (svc->clients[i] == NULL) continue;
    capstan_ca_client_set_chain(svc->clients[i], (const uint8_t *const *)w->der, w->lens, w->count);
  }
  if (capstan_store_submit(svc->store, chain_apply, w, chain_written) < 0) chain_write_free(w);
}

static void refresh_chain(capf_ca_service_t *svc, int64_t now) {
  if (svc->client == NULL || svc->chain_req != NULL || now < svc->chain_due_at) return;
  svc->chain_req = capstan_ca_fetch_chain(svc->client, on_chain, svc);
  if (svc->chain_req == NULL) svc->chain_due_at = now + CHAIN_RETRY_SECONDS;
}

/* --- Timer --------------------------------------------------------------- */

static void on_tick(uv_timer_t *t) {
  capf_ca_service_t *svc = t->data;
  if (svc->stopping || svc->scanning) return;
  int64_t now = (int64_t)time(NULL);
  refresh_chain(svc, now);
  /* Several nodes on one store: one of them (the leader) writes the CA's
   * health and polls the CA for what waits, not every node the same. */
  if (!capstan_store_leader(svc->store)) return;
  write_health(svc, now);
  /* Only an online CA is polled; core/stats.c counts what waits. */
  unsigned issuers = 0;
  for (unsigned i = 0; i <= CAPSTAN_ISSUER_OFFLINE; i++) {
    if (svc->clients[i] != NULL) issuers |= 1u << i;
  }
  if (issuers == 0 || svc->n_in_flight >= POLL_MAX_IN_FLIGHT) return;
  scan_job_t *j = calloc(1, sizeof(*j));
  if (j == NULL) return;
  j->svc = svc;
  j->issuers = issuers;
  j->now = now;
  j->room = POLL_MAX_IN_FLIGHT - svc->n_in_flight;
  for (poll_item_t *it = svc->in_flight; it != NULL && j->nskip < POLL_MAX_IN_FLIGHT;
       it = it->next) {
    memcpy(j->skip[j->nskip++], it->key, 32);
  }
  if (uv_queue_work(svc->loop, &j->work, scan_run, scan_done) < 0) {
    free(j);
    return;
  }
  svc->scanning = 1;
}

capf_ca_service_t *capf_ca_service_start(uv_loop_t *loop, capstan_store_t *store,
                                         capf_shared_t *shared, capf_ca_reset_fn reset,
                                         void *reset_arg) {
  capf_ca_service_t *svc = calloc(1, sizeof(*svc));
  if (svc == NULL) return NULL;
  svc->loop = loop;
  svc->store = store;
  svc->shared = shared;
  svc->reset = reset;
  svc->reset_arg = reset_arg;
  capstan_ca_config_init(&svc->cfg);
  uv_timer_init(loop, &svc->timer);
  svc->timer.data = svc;
  uv_timer_start(&svc->timer, on_tick, 0, POLL_INTERVAL_MS);
  return svc;
}

static void on_timer_closed(uv_handle_t *h) {
  capf_ca_service_t *svc = h->data;
  if (svc->scanning) {
    /* The scan's completion still needs the service: it is freed there. */
    svc->stopping = 2;
    return;
  }
  capstan_ca_config_cleanup(&svc->cfg);
  free(svc);
}

void capf_ca_service_stop(capf_ca_service_t *svc) {
  if (svc == NULL) return;
  svc->stopping = 1;
  drop_client(svc);
  if (svc->pki != NULL) capf_pki_unref(svc->pki);
  svc->pki = NULL;
  uv_close((uv_handle_t *)&svc->timer, on_timer_closed);
}
