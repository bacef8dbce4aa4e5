/* The CAPF listener: admission, TLS contexts, the shared identity snapshot,
 * metrics, live settings and drain. The protocol itself is in session.c. */
#include <openssl/err.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/netaddr.h"
#include "core/identities.h"
#include "handlers/capf/internal.h"

#define CAPF_LISTEN_BACKLOG 4096
#define CAPF_CONNTRACK_BUCKETS 4096
/* After a keep-alive change, sessions set their own socket options this long:
 * a socket the kernel accepted before the change carries the old values,
 * and even a full backlog is accepted well within it. */
#define OWN_SOCKET_OPTIONS_MS (5 * 60 * 1000)

static const char *const kOpNames[] = {
#define X(id, name) name,
    CAPF_OPERATIONS(X)
#undef X
};
static const char *const kResultNames[] = {
#define X(id, name) name,
    CAPF_RESULTS(X)
#undef X
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
      SSL_SIGN_RSA_PSS_RSAE_SHA256, SSL_SIGN_RSA_PKCS1_SHA256,    SSL_SIGN_RSA_PSS_RSAE_SHA384,
      SSL_SIGN_RSA_PKCS1_SHA384,    SSL_SIGN_RSA_PSS_RSAE_SHA512, SSL_SIGN_RSA_PKCS1_SHA512,
      SSL_SIGN_RSA_PKCS1_SHA1,      SSL_SIGN_RSA_PKCS1_MD5_SHA1,
  };
  SSL_CTX *ctx = SSL_CTX_new(TLS_method());
  if (ctx == NULL) return NULL;
  const char *ciphers =
      legacy ? "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:"
               "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:"
               "AES128-GCM-SHA256:AES256-GCM-SHA384:AES256-SHA:AES128-SHA"
             : "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:"
               "ECDHE-RSA-CHACHA20-POLY1305";
  int ok =
      SSL_CTX_set_min_proto_version(ctx, legacy ? TLS1_VERSION : TLS1_2_VERSION) &&
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) &&
      SSL_CTX_set_strict_cipher_list(ctx, ciphers) && SSL_CTX_use_certificate(ctx, id->cert) &&
      SSL_CTX_set_signing_algorithm_prefs(ctx, kSigAlgs, sizeof(kSigAlgs) / sizeof(kSigAlgs[0]));
  for (size_t i = 0; ok && id->chain && i < sk_X509_num(id->chain); i++) {
    ok = SSL_CTX_add1_chain_cert(ctx, sk_X509_value(id->chain, i));
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
  char *dn = NULL;
  capstan_pki_dn_string(X509_get_subject_name(pki->ids->capf.cert), &dn);
  LOG_INFO("event=capf_identity_loaded subject=\"%s\" trust_anchors=%zu", dn ? dn : "?",
           sk_X509_num(pki->ids->capf_trust));
  free(dn);
  return 0;
}

/* --- Metrics -------------------------------------------------------------- */

static void register_metrics(capf_metrics_t *m) {
  char labels[128];
  for (int op = 0; op < CAPF_OP_COUNT; op++) {
    for (int r = 0; r < CAPF_RESULT_COUNT; r++) {
      snprintf(labels, sizeof(labels), "operation=\"%s\",result=\"%s\"", kOpNames[op],
               kResultNames[r]);
      m->sessions[op][r] =
          capstan_metrics_counter("capstan_capf_sessions_total",
                                  "CAPF sessions by scheduled operation and outcome", labels);
    }
  }
  m->sessions_active =
      capstan_metrics_gauge("capstan_capf_sessions_active", "CAPF sessions open now", NULL);
  m->session_duration = capstan_metrics_histogram("capstan_capf_session_duration_seconds",
                                                  "CAPF session duration, connect to close", NULL,
                                                  capstan_buckets_slow, capstan_buckets_slow_n);
  const char *hs = "capstan_capf_handshakes_total";
  const char *hs_help = "CAPF TLS handshakes by result";
  m->handshakes_ok = capstan_metrics_counter(hs, hs_help, "result=\"ok\"");
  m->handshakes_failed = capstan_metrics_counter(hs, hs_help, "result=\"failed\"");
  m->handshakes_timeout = capstan_metrics_counter(hs, hs_help, "result=\"timeout\"");
  m->handshakes_legacy_refused = capstan_metrics_counter(hs, hs_help, "result=\"legacy_refused\"");
  m->handshake_duration = capstan_metrics_histogram("capstan_capf_handshake_duration_seconds",
                                                    "CAPF TLS handshake duration", NULL,
                                                    capstan_buckets_fast, capstan_buckets_fast_n);
  static const char *const kModes[] = {"none", "string", "null", "lsc", "mic"};
  for (int i = 1; i <= 4; i++) {
    snprintf(labels, sizeof(labels), "mode=\"%s\"", kModes[i]);
    m->auth_failures[i] = capstan_metrics_counter("capstan_capf_auth_failures_total",
                                                  "Failed phone authentications by mode", labels);
  }
  const char *rj = "capstan_capf_connections_rejected_total";
  const char *rj_help = "CAPF connections refused before a session, by reason";
  m->rejected_total_limit = capstan_metrics_counter(rj, rj_help, "reason=\"limit_total\"");
  m->rejected_address_limit = capstan_metrics_counter(rj, rj_help, "reason=\"limit_per_address\"");
  m->rejected_ipv6 = capstan_metrics_counter(rj, rj_help, "reason=\"ipv6_disabled\"");
  m->rejected_draining = capstan_metrics_counter(rj, rj_help, "reason=\"draining\"");
  m->rejected_error = capstan_metrics_counter(rj, rj_help, "reason=\"error\"");
  m->keygen_waiting = capstan_metrics_gauge("capstan_capf_keygen_waiting",
                                            "Phones held, waiting for a key generation slot", NULL);
  m->keygen_active =
      capstan_metrics_gauge("capstan_capf_keygen_active", "Phones generating a key now", NULL);
  m->keygen_duration = capstan_metrics_histogram(
      "capstan_capf_keygen_duration_seconds", "Phone key generation time, request to response",
      NULL, capstan_buckets_slow, capstan_buckets_slow_n);
  const char *th = "capstan_capf_throttled_total";
  const char *th_help = "Phones held by the key generation throttle, by how the hold ended";
  m->throttled_admitted = capstan_metrics_counter(th, th_help, "result=\"admitted\"");
  m->throttled_retry_later = capstan_metrics_counter(th, th_help, "result=\"retry_later\"");
  m->protocol_errors = capstan_metrics_counter("capstan_capf_protocol_errors_total",
                                               "Malformed or out-of-order CAPF messages", NULL);
  const char *to = "capstan_capf_timeouts_total";
  const char *to_help = "CAPF sessions ended by a timer, by timer";
  m->timeouts_handshake = capstan_metrics_counter(to, to_help, "timer=\"handshake\"");
  m->timeouts_step = capstan_metrics_counter(to, to_help, "timer=\"step\"");
  m->timeouts_keygen = capstan_metrics_counter(to, to_help, "timer=\"keygen\"");
  m->certs_issued = capstan_metrics_counter("capstan_capf_certificates_issued_total",
                                            "LSCs signed and recorded", NULL);
}

/* --- Settings ------------------------------------------------------------- */

void capstan_capf_server_apply_settings(capstan_capf_server_t *srv, const capstan_settings_t *s) {
  capf_settings_t *c = &srv->settings;
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
  c->legacy_tls = s->legacy_tls;
  c->enable_ipv6 = s->enable_ipv6;
  capstan_throttle_configure(&srv->throttle, s->max_concurrent_keygen,
                             s->max_new_keygen_per_second);
  if (old_keepalive != c->keepalive_minutes) {
    if (srv->listening) {
      capf_tcp_set_keepalive(&srv->listener, c->keepalive_minutes);
      srv->own_socket_options_until_ms = uv_now(srv->loop) + OWN_SOCKET_OPTIONS_MS;
    }
    for (capf_session_t *it = srv->sessions; it != NULL; it = capf_session_next(it)) {
      capf_session_apply_keepalive(it, c->keepalive_minutes);
    }
    if (old_keepalive != 0) {
      LOG_INFO("event=capf_keepalive_changed minutes=%u sessions=%u", c->keepalive_minutes,
               srv->nsessions);
    }
  }
}

/* --- Listener ------------------------------------------------------------- */

static void on_connection(uv_stream_t *listener, int status) {
  capstan_capf_server_t *srv = listener->data;
  if (status < 0) {
    LOG_WARN("event=capf_accept_failed error=%s", uv_strerror(status));
    return;
  }
  if (srv->handshaking >= CAPF_MAX_HANDSHAKES) {
    srv->accept_deferred = 1; /* accepted when a handshake finishes */
    return;
  }
  capf_session_start(srv, listener);
}

void capf_server_handshake_done(capstan_capf_server_t *srv) {
  srv->handshaking--;
  if (srv->accept_deferred && !srv->draining && srv->handshaking < CAPF_MAX_HANDSHAKES) {
    srv->accept_deferred = 0;
    capf_session_start(srv, (uv_stream_t *)&srv->listener);
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
  register_metrics(&srv->m);
  int rc = capstan_conntrack_init(&srv->conntrack, CAPF_CONNTRACK_BUCKETS);
  if (rc < 0) goto err_free;
  rc = capstan_capf_server_reload(srv);
  if (rc < 0) goto err_free;
  capstan_throttle_init(&srv->throttle, loop, settings->max_concurrent_keygen,
                        settings->max_new_keygen_per_second);
  capstan_capf_server_apply_settings(srv, settings);
  uv_tcp_init(loop, &srv->listener);
  uv_timer_init(loop, &srv->drain_timer);
  srv->drain_timer.data = srv;
  srv->listener.data = srv;
  srv->handles_open = 3;
  rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&addr, 0);
  if (rc == 0) {
    /* Accepted sockets inherit these (Linux copies them at accept): seven
     * system calls a phone saved. */
    uv_tcp_nodelay(&srv->listener, 1);
    capf_tcp_set_keepalive(&srv->listener, srv->settings.keepalive_minutes);
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
  capstan_conntrack_cleanup(&srv->conntrack);
  free(srv);
  return rc;
}

int capstan_capf_server_port(const capstan_capf_server_t *srv) {
  return srv->port;
}

unsigned capstan_capf_server_sessions(const capstan_capf_server_t *srv) {
  return srv->nsessions;
}

/* --- Drain ---------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h) {
  capstan_capf_server_t *srv = h->data;
  if (--srv->handles_open > 0) return;
  void (*done)(void *) = srv->drain_done;
  void *arg = srv->drain_arg;
  capf_pki_unref(srv->pki);
  capstan_conntrack_cleanup(&srv->conntrack);
  free(srv);
  if (done) done(arg);
}

static void finish_drain(capstan_capf_server_t *srv) {
  if (srv->draining != 1) return;
  srv->draining = 2;
  srv->throttle.timer.data = srv;
  uv_close((uv_handle_t *)&srv->throttle.timer, on_handle_closed);
  uv_close((uv_handle_t *)&srv->drain_timer, on_handle_closed);
}

void capf_server_session_closed(capstan_capf_server_t *srv) {
  if (srv->draining == 1 && srv->nsessions == 0) finish_drain(srv);
}

static void on_drain_deadline(uv_timer_t *t) {
  capstan_capf_server_t *srv = t->data;
  LOG_WARN("event=capf_drain_deadline sessions_closed=%u", srv->nsessions);
  capf_session_t *it = srv->sessions;
  while (it != NULL) {
    capf_session_t *next = capf_session_next(it);
    capf_session_abort(it);
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
  LOG_INFO("event=capf_draining sessions=%u deadline_ms=%llu", srv->nsessions,
           (unsigned long long)deadline_ms);
  if (srv->nsessions == 0) {
    finish_drain(srv);
  } else {
    uv_timer_start(&srv->drain_timer, on_drain_deadline, deadline_ms, 0);
  }
}
