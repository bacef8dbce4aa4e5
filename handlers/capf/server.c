/* The CAPF listener: accepting and admitting connections, the identity
 * snapshot and its TLS contexts, live settings and drain. A connection
 * (connection.c) runs the protocol (session.c); this file never looks
 * inside a session. */
#include <openssl/err.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/netaddr.h"
#include "core/descriptors.h"
#include "core/memory_shortage.h"
#include "core/identities.h"
#include "handlers/capf/admission.h"
#include "handlers/capf/ca_service.h"
#include "handlers/capf/capf.h"
#include "handlers/capf/connection.h"
#include "handlers/capf/internal.h"
#include "handlers/capf/sockopts.h"

#define CAPF_LISTEN_BACKLOG 4096
#define CAPF_CONNTRACK_BUCKETS 4096
/* Connections over a limit in their handshake at once, to be told
 * RETRY_LATER (the flood ceiling): past it a refused connection is closed
 * at accept, as a flood from one address would otherwise hold every
 * refusal, and each costs a private-key operation. Kept apart from
 * max-handshakes, so refusals never delay an admitted phone's handshake
 * slot. */
#define CAPF_MAX_REFUSING 64
/* How soon a connection left pending for want of memory is tried again. */
#define ACCEPT_RETRY_MS 100
/* After a keep-alive change, sessions set their own socket options this long:
 * a socket the kernel accepted before the change carries the old values,
 * and even a full backlog is accepted well within it. */
#define OWN_SOCKET_OPTIONS_MS (5 * 60 * 1000)

struct capstan_capf_server {
  uv_loop_t *loop;
  uv_tcp_t listener;
  int port;
  capstan_store_t *store;
  capf_pki_t *pki;           /* what new connections present; each keeps its own */
  capf_shared_t shared;      /* settings, metrics, throttle: read by sessions */
  capf_ca_service_t *ca_svc; /* the online CA client and the pending-request poller */
  capf_admission_t admission;
  capf_conn_t *conns; /* every started connection, for keep-alive updates and drain */
  unsigned nsessions; /* admitted connections (the limits count these) */
  unsigned nrefusing; /* connections over a limit, in the list, to be told RETRY_LATER */
  int draining;
  uv_timer_t drain_timer;
  void (*drain_done)(void *arg);
  void *drain_arg;
  unsigned handles_open; /* listener, drain timer, throttle timer, accept retry timer */
  /* A connection that could not be given memory stays pending (libuv
   * stops watching the listener meanwhile) and is accepted again later. */
  uv_timer_t accept_retry;
  /* Admission of handshakes: at most max-handshakes run at once, so in a
   * storm the workers finish the sessions already started instead of
   * spreading over all of them and timing everyone out. An admitted
   * connection beyond that waits here, oldest first, accepted but not
   * started (no TLS, no timer): the kernel's backlog (at most somaxconn)
   * would overflow in a storm of thousands and reset phones. Bounded by
   * max-connections, since they count as admitted. */
  unsigned handshaking;
  capf_conn_t *wait_head, *wait_tail;
  unsigned nwaiting;
  /* Accepted sockets inherit TCP_NODELAY and keep-alive from the listener;
   * until this time (loop ms) after a keep-alive change, sessions set their
   * own, because the kernel accepted some sockets before the change. */
  int listening;
  uint64_t own_socket_options_until_ms;
};

/* --- Identity snapshot ---------------------------------------------------- */

capf_pki_t *capf_pki_ref(capf_pki_t *pki) {
  if (pki) atomic_fetch_add(&pki->refs, 1);
  return pki;
}

void capf_pki_unref(capf_pki_t *pki) {
  if (pki == NULL || atomic_fetch_sub(&pki->refs, 1) != 1) return;
  SSL_CTX_free(pki->ctx_modern);
  SSL_CTX_free(pki->ctx_legacy);
  capstan_identities_unref(pki->ids);
  free(pki);
}

/* Refuses TLS 1.0/1.1-only hellos on the modern context with a log line that
 * says how to allow them. */
static enum ssl_select_cert_result_t select_cert_modern(const SSL_CLIENT_HELLO *hello) {
  const uint8_t *ext;
  size_t ext_len;
  int has_supported_versions =
      SSL_early_callback_ctx_extension_get(hello, TLSEXT_TYPE_supported_versions, &ext, &ext_len);
  if (hello->version >= TLS1_2_VERSION || has_supported_versions) return ssl_select_cert_success;
  LOG_WARN(
      "event=capf_legacy_tls_refused client_version=0x%04x "
      "hint=\"old phones need TLS 1.0: capstan config set legacy-tls on\"",
      hello->version);
  capstan_metric_inc(capstan_metrics_counter("capstan_capf_handshakes_total",
                                             "CAPF TLS handshakes by result",
                                             "result=\"legacy_refused\""));
  return ssl_select_cert_error;
}

static SSL_CTX *make_ctx(const capstan_identity_t *id, uv_loop_t *loop, int legacy) {
  static const uint16_t kSigAlgs[] = {
      SSL_SIGN_RSA_PSS_RSAE_SHA256,
      SSL_SIGN_RSA_PKCS1_SHA256,
      SSL_SIGN_RSA_PSS_RSAE_SHA384,
      SSL_SIGN_RSA_PKCS1_SHA384,
      SSL_SIGN_RSA_PSS_RSAE_SHA512,
      SSL_SIGN_RSA_PKCS1_SHA512,
      SSL_SIGN_RSA_PKCS1_SHA1,
      SSL_SIGN_RSA_PKCS1_MD5_SHA1,
      SSL_SIGN_ECDSA_SECP256R1_SHA256,
      SSL_SIGN_ECDSA_SECP384R1_SHA384,
      SSL_SIGN_ECDSA_SHA1,
  };
  SSL_CTX *ctx = SSL_CTX_new(TLS_method());
  if (ctx == NULL) return NULL;
  /* The suites for the CAPF's key type: RSA by default, ECDSA when the
   * operator chose an EC CAPF (capstan cert capf regenerate --key ec256). */
  int ec = EVP_PKEY_id(id->key) == EVP_PKEY_EC;
  const char *ciphers =
      ec       ? (legacy ? "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                           "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA:"
                           "ECDHE-ECDSA-AES256-SHA"
                         : "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                           "ECDHE-ECDSA-CHACHA20-POLY1305")
      : legacy ? "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:"
                 "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:"
                 "AES128-GCM-SHA256:AES256-GCM-SHA384:AES256-SHA:AES128-SHA"
               : "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:"
                 "ECDHE-RSA-CHACHA20-POLY1305";
  int ok =
      SSL_CTX_set_min_proto_version(ctx, legacy ? TLS1_VERSION : TLS1_2_VERSION) &&
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) &&
      SSL_CTX_set_strict_cipher_list(ctx, ciphers) && SSL_CTX_use_certificate(ctx, id->cert) &&
      SSL_CTX_set_signing_algorithm_prefs(ctx, kSigAlgs, sizeof(kSigAlgs) / sizeof(kSigAlgs[0]));
  /* A CA-signed CAPF goes out with its intermediates, not the root: the
   * peer must already hold the root (capf-lifecycle.md). */
  for (size_t i = 0; ok && id->chain && i < sk_X509_num(id->chain); i++) {
    X509 *c = sk_X509_value(id->chain, i);
    if (!capstan_pki_is_self_signed(c)) ok = SSL_CTX_add1_chain_cert(ctx, c);
  }
  if (!ok || capstan_tls_ctx_set_async_key(ctx, id->key, loop) < 0) {
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
  }
  /* Phones do not resume sessions; no cache, no tickets, nothing to hold. */
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_num_tickets(ctx, 0);
  if (!legacy) SSL_CTX_set_select_certificate_cb(ctx, select_cert_modern);
  return ctx;
}

/* Builds a snapshot: the identities and CAPF-trust (core/identities.h) and
 * the two TLS contexts that present the CAPF certificate. */
static int load_pki(capstan_capf_server_t *srv, capf_pki_t **out) {
  capf_pki_t *pki = calloc(1, sizeof(*pki));
  if (pki == NULL) return CAPSTAN_ENOMEM;
  atomic_init(&pki->refs, 1);
  int rc = capstan_identities_load(srv->store, CAPSTAN_IDENTITIES_CAPF_TRUST, &pki->ids);
  if (rc < 0) {
    LOG_ERROR("event=capf_identity_missing error=%s hint=\"run capstan init\"",
              capstan_strerror(rc));
    goto err;
  }
  pki->ctx_modern = make_ctx(&pki->ids->capf, srv->loop, 0);
  pki->ctx_legacy = make_ctx(&pki->ids->capf, srv->loop, 1);
  if (pki->ctx_modern == NULL || pki->ctx_legacy == NULL) {
    rc = CAPSTAN_ENOMEM;
    goto err;
  }
  *out = pki;
  return 0;
err:
  capf_pki_unref(pki);
  return rc;
}

int capstan_capf_server_reload(capstan_capf_server_t *srv) {
  capf_pki_t *pki = NULL;
  int rc = load_pki(srv, &pki);
  if (rc < 0) {
    LOG_ERROR("event=capf_reload_failed error=%s", capstan_strerror(rc));
    return rc;
  }
  capf_pki_unref(srv->pki);
  srv->pki = pki;
  /* `capstan ca set` moves the trust generation too: the CA configuration
   * is read again with the trust it checks certificates against. */
  capf_ca_service_update(srv->ca_svc, srv->shared.settings.issuer, pki);
  /* Operators alert on this (capf-lifecycle.md: a CAPF that expires stops
   * every enrollment). */
  int64_t not_after = 0;
  if (capstan_pki_cert_validity(pki->ids->capf.cert, NULL, &not_after) == 0) {
    capstan_metric_set(
        capstan_metrics_gauge("capstan_capf_certificate_expiry_timestamp_seconds",
                              "When the live CAPF certificate expires (unix seconds)", ""),
        (double)not_after);
  }
  char *dn = NULL;
  capstan_pki_dn_string(X509_get_subject_name(pki->ids->capf.cert), &dn);
  LOG_INFO("event=capf_identity_loaded subject=\"%s\" trust_anchors=%zu", dn ? dn : "?",
           sk_X509_num(pki->ids->capf_trust));
  free(dn);
  return 0;
}

/* --- Settings ------------------------------------------------------------- */

static void start_waiting(capstan_capf_server_t *srv);

void capstan_capf_server_apply_settings(capstan_capf_server_t *srv, const capstan_settings_t *s) {
  capf_settings_t *c = &srv->shared.settings;
  unsigned old_keepalive = c->keepalive_minutes;
  c->keepalive_minutes = s->keepalive_minutes;
  c->validity_days = s->validity_days;
  c->throttle_hold_seconds = s->throttle_hold_seconds;
  c->retry_delay_seconds = s->retry_delay_seconds;
  c->keygen_ceiling_seconds = s->keygen_ceiling_seconds;
  c->handshake_timeout_seconds = s->handshake_timeout_seconds;
  c->step_timeout_seconds = s->step_timeout_seconds;
  c->max_connections = s->max_connections;
  c->max_connections_per_address = s->max_connections_per_address;
  unsigned old_handshakes = c->max_handshakes;
  c->max_handshakes = s->max_handshakes;
  c->legacy_tls = s->legacy_tls;
  c->enable_ipv6 = s->enable_ipv6;
  c->auth_max_failures = s->auth_max_failures;
  c->auth_delay_max_seconds = s->auth_delay_max_seconds;
  unsigned old_issuer = c->issuer;
  c->issuer = s->issuer;
  if (old_issuer != c->issuer) {
    LOG_INFO("event=capf_issuer issuer=%s", capstan_issuer_name(c->issuer));
    capf_ca_service_update(srv->ca_svc, c->issuer, srv->pki);
  }
  capstan_throttle_configure(&srv->shared.throttle, s->max_concurrent_keygen,
                             s->max_new_keygen_per_second);
  /* More handshakes allowed: start connections that wait for a slot. */
  if (old_handshakes != 0 && c->max_handshakes > old_handshakes) start_waiting(srv);
  if (old_keepalive != c->keepalive_minutes) {
    if (srv->listening) {
      capf_tcp_set_keepalive(&srv->listener, c->keepalive_minutes);
      srv->own_socket_options_until_ms = uv_now(srv->loop) + OWN_SOCKET_OPTIONS_MS;
    }
    for (capf_conn_t *it = srv->conns; it != NULL; it = it->next) {
      capf_conn_set_keepalive(it, c->keepalive_minutes);
    }
    for (capf_conn_t *it = srv->wait_head; it != NULL; it = it->wait_next) {
      capf_conn_set_keepalive(it, c->keepalive_minutes);
    }
    if (old_keepalive != 0) {
      LOG_INFO("event=capf_keepalive_changed minutes=%u sessions=%u", c->keepalive_minutes,
               srv->nsessions);
    }
  }
}

/* --- Listener ------------------------------------------------------------- */

/* Starts an accepted connection's session (TLS handshake and its timer);
 * from now on it is in the list and its close is reported. */
static void start_conn(capstan_capf_server_t *srv, capf_conn_t *c) {
  c->next = srv->conns;
  if (srv->conns) srv->conns->prev = c;
  srv->conns = c;
  if (!c->refusing) srv->handshaking++; /* refusals have their own ceiling */
  capf_conn_start(c, uv_now(srv->loop) < srv->own_socket_options_until_ms,
                  srv->shared.settings.keepalive_minutes);
}

/* Starts waiting connections, oldest first, while handshake slots are free. */
static void start_waiting(capstan_capf_server_t *srv) {
  while (srv->wait_head != NULL && !srv->draining &&
         srv->handshaking < srv->shared.settings.max_handshakes) {
    capf_conn_t *c = srv->wait_head;
    srv->wait_head = c->wait_next;
    if (srv->wait_head == NULL) srv->wait_tail = NULL;
    c->wait_next = NULL;
    srv->nwaiting--;
    start_conn(srv, c);
  }
  capstan_metric_set(srv->shared.m.waiting, srv->nwaiting);
}

/* Drain: connections that never started are closed (as the kernel closes
 * its backlog with the listener). */
static void close_waiting(capstan_capf_server_t *srv) {
  while (srv->wait_head != NULL) {
    capf_conn_t *c = srv->wait_head;
    srv->wait_head = c->wait_next;
    c->wait_next = NULL;
    srv->nwaiting--;
    capf_admission_leave(&srv->admission, capf_conn_peer(c));
    srv->nsessions--;
    capstan_metric_inc(srv->shared.m.rejected_draining);
    capf_conn_discard(c);
  }
  srv->wait_tail = NULL;
  capstan_metric_set(srv->shared.m.waiting, 0);
  capstan_metric_set(srv->shared.m.sessions_active, srv->nsessions);
}

static void on_handshake_over(void *arg, capf_conn_t *c) {
  capstan_capf_server_t *srv = arg;
  if (c->refusing) return;
  srv->handshaking--;
  start_waiting(srv);
}

static void finish_drain(capstan_capf_server_t *srv);

static void on_conn_closed(void *arg, capf_conn_t *c) {
  capstan_capf_server_t *srv = arg;
  if (c->prev)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
  if (c->refusing) {
    srv->nrefusing--;
    capstan_metric_set(srv->shared.m.refusing, srv->nrefusing);
  } else {
    capf_admission_leave(&srv->admission, capf_conn_peer(c));
    srv->nsessions--;
    capstan_metric_set(srv->shared.m.sessions_active, srv->nsessions);
  }
  if (srv->draining == 1 && srv->nsessions == 0 && srv->nrefusing == 0) finish_drain(srv);
}

static const capf_conn_owner_t kConnOwner = {
    .handshake_over = on_handshake_over,
    .closed = on_conn_closed,
};

static capstan_metric_t *refusal_counter(capf_metrics_t *m, capf_refusal_t r) {
  switch (r) {
    case CAPF_REFUSE_DRAINING:
      return m->rejected_draining;
    case CAPF_REFUSE_IPV6:
      return m->rejected_ipv6;
    case CAPF_REFUSE_TOTAL_LIMIT:
      return m->rejected_total_limit;
    case CAPF_REFUSE_ADDRESS_LIMIT:
      return m->rejected_address_limit;
    default:
      return m->rejected_error;
  }
}

static void on_accept_retry(uv_timer_t *t);

/* Accepts the pending connection and starts its session (or queues it for
 * a handshake slot), or refuses it. */
static void accept_one(capstan_capf_server_t *srv) {
  capf_metrics_t *m = &srv->shared.m;
  uv_stream_t *listener = (uv_stream_t *)&srv->listener;
  capf_conn_t *c = capf_conn_new(srv->loop, srv->store, srv->pki, srv->shared.settings.legacy_tls,
                                 &srv->shared, &kConnOwner, srv);
  if (c == NULL) {
    /* Accepting needs no memory, but closing what was accepted would need
     * a handle: leave the connection pending and come back to it. */
    capstan_memory_shortage_note("capf_accept");
    uv_timer_start(&srv->accept_retry, on_accept_retry, ACCEPT_RETRY_MS, 0);
    return;
  }
  if (capf_conn_accept(c, listener) < 0) {
    capstan_metric_inc(m->rejected_error);
    capf_conn_discard(c);
    return;
  }
  uv_os_fd_t fd = -1;
  uv_fileno((uv_handle_t *)capstan_tls_conn_tcp(c->tls), &fd);
  if (capstan_descriptors_admit(fd, "capf") < 0) {
    capf_conn_discard(c);
    return;
  }
  const capf_settings_t *set = &srv->shared.settings;
  capf_admission_input_t in = {
      .draining = srv->draining,
      .enable_ipv6 = set->enable_ipv6,
      .open_sessions = srv->nsessions,
      .max_connections = set->max_connections,
      .max_per_address = set->max_connections_per_address,
  };
  capf_refusal_t refusal = capf_admission_decide(&srv->admission, capf_conn_peer(c), &in);
  int over_limit = refusal == CAPF_REFUSE_TOTAL_LIMIT || refusal == CAPF_REFUSE_ADDRESS_LIMIT;
  if (refusal != CAPF_REFUSE_NONE) {
    capstan_metric_inc(refusal_counter(m, refusal));
    /* A phone over a limit is told to come back rather than cut off, up
     * to the flood ceiling; anything else is closed at once. */
    int answer = over_limit && srv->nrefusing < CAPF_MAX_REFUSING;
    if (over_limit && !answer) {
      capstan_metric_inc(refusal == CAPF_REFUSE_TOTAL_LIMIT ? m->dropped_total_limit
                                                            : m->dropped_address_limit);
    }
    capf_admission_log_refusal(&srv->admission, uv_now(srv->loop), c->session.peer_host, refusal,
                               answer ? set->retry_delay_seconds : 0,
                               refusal == CAPF_REFUSE_TOTAL_LIMIT ? set->max_connections
                               : refusal == CAPF_REFUSE_ADDRESS_LIMIT
                                   ? set->max_connections_per_address
                                   : 0);
    if (!answer) {
      capf_conn_discard(c);
      return;
    }
    c->refusing = 1;
    capf_session_refuse(&c->session);
    srv->nrefusing++;
    capstan_metric_set(m->refusing, srv->nrefusing);
    start_conn(srv, c);
    return;
  }
  srv->nsessions++;
  capstan_metric_set(m->sessions_active, srv->nsessions);
  if (srv->wait_head == NULL && srv->handshaking < set->max_handshakes) {
    start_conn(srv, c);
    return;
  }
  if (srv->wait_tail != NULL) {
    srv->wait_tail->wait_next = c;
  } else {
    srv->wait_head = c;
  }
  srv->wait_tail = c;
  srv->nwaiting++;
  capstan_metric_set(m->waiting, srv->nwaiting);
}

static void on_accept_retry(uv_timer_t *t) {
  capstan_capf_server_t *srv = t->data;
  if (srv->listening) accept_one(srv);
}

static void on_connection(uv_stream_t *listener, int status) {
  capstan_capf_server_t *srv = listener->data;
  if (status < 0) {
    if (capstan_descriptors_note(status, "capf")) {
      capstan_descriptors_release_spare();
      return;
    }
    LOG_WARN("event=capf_accept_failed error=%s", uv_strerror(status));
    return;
  }
  accept_one(srv);
}

/* The online CA client is about to be replaced: sessions drop their
 * requests to it. */
static void reset_ca_requests(void *arg) {
  capstan_capf_server_t *srv = arg;
  capf_conn_t *it = srv->conns;
  while (it != NULL) {
    capf_conn_t *next = it->next;
    capf_conn_ca_reset(it);
    it = next;
  }
}

int capstan_capf_server_start(uv_loop_t *loop, capstan_store_t *store, const char *host_port,
                              const capstan_settings_t *settings, capstan_capf_server_t **out) {
  struct sockaddr_storage addr;
  if (capstan_netaddr_parse(host_port, &addr) < 0) {
    LOG_ERROR("event=capf_bad_listen_address value=\"%s\" hint=\"use HOST:PORT, [V6]:PORT\"",
              host_port);
    return CAPSTAN_EINVAL;
  }
  capstan_capf_server_t *srv = calloc(1, sizeof(*srv));
  if (srv == NULL) return CAPSTAN_ENOMEM;
  srv->loop = loop;
  srv->store = store;
  capf_metrics_register(&srv->shared.m);
  int rc = capf_admission_init(&srv->admission, CAPF_CONNTRACK_BUCKETS);
  if (rc < 0) goto err_free;
  rc = capstan_capf_server_reload(srv);
  if (rc < 0) goto err_free;
  capstan_throttle_init(&srv->shared.throttle, loop, settings->max_concurrent_keygen,
                        settings->max_new_keygen_per_second);
  capstan_capf_server_apply_settings(srv, settings);
  srv->ca_svc = capf_ca_service_start(loop, store, &srv->shared, reset_ca_requests, srv);
  if (srv->ca_svc == NULL) {
    rc = CAPSTAN_ENOMEM;
    goto err_free;
  }
  capf_ca_service_update(srv->ca_svc, srv->shared.settings.issuer, srv->pki);
  uv_tcp_init(loop, &srv->listener);
  uv_timer_init(loop, &srv->drain_timer);
  srv->drain_timer.data = srv;
  uv_timer_init(loop, &srv->accept_retry);
  srv->accept_retry.data = srv;
  srv->listener.data = srv;
  srv->handles_open = 4;
  rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&addr, 0);
  if (rc == 0) {
    /* Accepted sockets inherit these (Linux copies them at accept): seven
     * system calls a phone saved. */
    capf_tcp_set_options(&srv->listener, srv->shared.settings.keepalive_minutes);
    srv->listening = 1;
  }
  if (rc == 0) rc = uv_listen((uv_stream_t *)&srv->listener, CAPF_LISTEN_BACKLOG, on_connection);
  if (rc < 0) {
    LOG_ERROR("event=capf_listen_failed address=%s error=%s", host_port, uv_strerror(rc));
    /* Leave the server to be freed by drain so handles close properly. */
    capstan_capf_server_drain(srv, 0, NULL, NULL);
    return rc;
  }
  struct sockaddr_storage bound;
  int len = sizeof(bound);
  uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &len);
  srv->port = capstan_netaddr_port((struct sockaddr *)&bound);
  *out = srv;
  return 0;
err_free:
  capf_pki_unref(srv->pki);
  capf_admission_cleanup(&srv->admission);
  free(srv);
  return rc;
}

int capstan_capf_server_port(const capstan_capf_server_t *srv) {
  return srv->port;
}

unsigned capstan_capf_server_sessions(const capstan_capf_server_t *srv) {
  return srv->nsessions;
}

int capstan_capf_server_live_devices(const capstan_capf_server_t *srv, char ***names, size_t *n) {
  *names = NULL;
  *n = 0;
  size_t count = 0;
  for (capf_conn_t *c = srv != NULL ? srv->conns : NULL; c != NULL; c = c->next) count++;
  if (count == 0) return 0;
  char **out = calloc(count, sizeof(*out));
  if (out == NULL) return CAPSTAN_ENOMEM;
  size_t k = 0;
  for (capf_conn_t *c = srv->conns; c != NULL; c = c->next) {
    /* A finished session has queued its last record already. */
    if (c->session.device[0] == '\0' || c->session.finished) continue;
    if ((out[k] = strdup(c->session.device)) == NULL) {
      for (size_t i = 0; i < k; i++) free(out[i]);
      free(out);
      return CAPSTAN_ENOMEM;
    }
    k++;
  }
  *names = out;
  *n = k;
  return 0;
}

/* --- Drain ---------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h) {
  capstan_capf_server_t *srv = h->data;
  if (--srv->handles_open > 0) return;
  void (*done)(void *) = srv->drain_done;
  void *arg = srv->drain_arg;
  capf_pki_unref(srv->pki);
  capf_admission_cleanup(&srv->admission);
  free(srv);
  if (done) done(arg);
}

static void finish_drain(capstan_capf_server_t *srv) {
  if (srv->draining != 1) return;
  srv->draining = 2;
  capf_ca_service_stop(srv->ca_svc);
  srv->ca_svc = NULL;
  srv->shared.throttle.timer.data = srv;
  uv_close((uv_handle_t *)&srv->shared.throttle.timer, on_handle_closed);
  uv_close((uv_handle_t *)&srv->drain_timer, on_handle_closed);
  uv_close((uv_handle_t *)&srv->accept_retry, on_handle_closed);
}

static void on_drain_deadline(uv_timer_t *t) {
  capstan_capf_server_t *srv = t->data;
  LOG_WARN("event=capf_drain_deadline sessions_closed=%u", srv->nsessions);
  capf_conn_t *it = srv->conns;
  while (it != NULL) {
    capf_conn_t *next = it->next;
    capf_conn_abort(it);
    it = next;
  }
}

void capstan_capf_server_drain(capstan_capf_server_t *srv, uint64_t deadline_ms,
                               void (*done)(void *arg), void *arg) {
  if (srv->draining) return;
  srv->draining = 1;
  srv->drain_done = done;
  srv->drain_arg = arg;
  srv->listening = 0;
  uv_close((uv_handle_t *)&srv->listener, on_handle_closed);
  close_waiting(srv);
  /* Phones held only by the wrong-string delay are answered now, and
   * those whose failure is still being recorded are not held. */
  srv->shared.draining = 1;
  for (capf_conn_t *it = srv->conns; it != NULL;) {
    capf_conn_t *next = it->next;
    capf_session_draining(&it->session);
    it = next;
  }
  LOG_INFO("event=capf_draining sessions=%u deadline_ms=%llu", srv->nsessions + srv->nrefusing,
           (unsigned long long)deadline_ms);
  if (srv->nsessions == 0 && srv->nrefusing == 0) {
    finish_drain(srv);
  } else {
    uv_timer_start(&srv->drain_timer, on_drain_deadline, deadline_ms, 0);
  }
}
