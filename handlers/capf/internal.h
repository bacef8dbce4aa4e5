/* Private sharing between the CAPF listener (server.c) and the protocol
 * state machine (session.c). */
#ifndef CAPSTAN_HANDLERS_CAPF_INTERNAL_H
#define CAPSTAN_HANDLERS_CAPF_INTERNAL_H

#include <openssl/ssl.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "core/base/conntrack.h"
#include "core/base/metrics.h"
#include "core/identities.h"
#include "core/pki/pki.h"
#include "core/throttle.h"
#include "core/tls.h"
#include "handlers/capf/capf.h"

/* Largest message a phone may send: a certificate, two signatures and SUDI
 * data fit well inside. Anything longer is refused before it is buffered. */
#define CAPF_MAX_PHONE_MESSAGE 16384

/* TLS handshakes in progress at most (see capstan_capf_server.handshaking). */
#define CAPF_MAX_HANDSHAKES 256

/* The identity sessions use, shared read-only with worker threads and
 * replaced as a whole on reload. Sessions hold a reference. */
typedef struct capf_pki {
  _Atomic unsigned refs;
  capstan_identities_t *ids; /* the CAPF identity and CAPF-trust */
  SSL_CTX *ctx_modern;       /* TLS 1.2 and 1.3 */
  SSL_CTX *ctx_legacy;       /* also TLS 1.0/1.1 with AES-CBC-SHA, for old phones */
} capf_pki_t;

capf_pki_t *capf_pki_ref(capf_pki_t *pki);
void capf_pki_unref(capf_pki_t *pki);

/* Session outcome labels: operation x result (fixed sets). */
#define CAPF_OPERATIONS(X) \
  X(UNKNOWN, "unknown")    \
  X(NONE, "none")          \
  X(INSTALL, "install")    \
  X(DELETE, "delete")      \
  X(TROUBLESHOOT, "troubleshoot")

typedef enum {
#define X(id, name) CAPF_OP_##id,
  CAPF_OPERATIONS(X)
#undef X
      CAPF_OP_COUNT
} capf_op_label_t;

#define CAPF_RESULTS(X)               \
  X(OK, "ok")                         \
  X(NO_ACTION, "no_action")           \
  X(EXPIRED, "expired")               \
  X(UNKNOWN_DEVICE, "unknown_device") \
  X(AUTH_FAILED, "auth_failed")       \
  X(FAILED, "failed")                 \
  X(RETRY_LATER, "retry_later")       \
  X(PROTOCOL_ERROR, "protocol_error") \
  X(TIMEOUT, "timeout")               \
  X(DISCONNECTED, "disconnected")     \
  X(TLS_FAILED, "tls_failed")         \
  X(SERVER_ERROR, "server_error")     \
  X(SHUTDOWN, "shutdown")

typedef enum {
#define X(id, name) CAPF_RESULT_##id,
  CAPF_RESULTS(X)
#undef X
      CAPF_RESULT_COUNT
} capf_result_t;

typedef struct capf_metrics {
  capstan_metric_t *sessions[CAPF_OP_COUNT][CAPF_RESULT_COUNT];
  capstan_metric_t *sessions_active;
  capstan_metric_t *session_duration;
  capstan_metric_t *handshakes_ok, *handshakes_failed, *handshakes_timeout,
      *handshakes_legacy_refused;
  capstan_metric_t *handshake_duration;
  capstan_metric_t *auth_failures[5]; /* by AUTH_TYPE: 1 string .. 4 mic */
  capstan_metric_t *rejected_total_limit, *rejected_address_limit, *rejected_ipv6,
      *rejected_draining, *rejected_error;
  capstan_metric_t *keygen_waiting, *keygen_active, *keygen_duration;
  capstan_metric_t *throttled_admitted, *throttled_retry_later;
  capstan_metric_t *protocol_errors;
  capstan_metric_t *timeouts_handshake, *timeouts_step, *timeouts_keygen;
  capstan_metric_t *certs_issued;
  capstan_metric_t *connections_active;
} capf_metrics_t;

typedef struct capf_session capf_session_t;

/* Live settings the sessions read, copied from capstan_settings_t. */
typedef struct capf_settings {
  unsigned keepalive_minutes;
  unsigned validity_days;
  unsigned throttle_hold_seconds;
  unsigned retry_delay_seconds;
  unsigned keygen_ceiling_seconds;
  unsigned handshake_timeout_seconds;
  unsigned step_timeout_seconds;
  unsigned max_connections;
  unsigned max_connections_per_address;
  int legacy_tls;
  int enable_ipv6;
} capf_settings_t;

struct capstan_capf_server {
  uv_loop_t *loop;
  uv_tcp_t listener;
  int port;
  capstan_store_t *store;
  capf_pki_t *pki;
  capf_settings_t settings;
  capstan_throttle_t throttle;
  capstan_conntrack_t conntrack;
  capf_metrics_t m;
  capf_session_t *sessions; /* every open session, for keep-alive updates and drain */
  unsigned nsessions;
  int draining;
  uv_timer_t drain_timer;
  void (*drain_done)(void *arg);
  void *drain_arg;
  unsigned handles_open; /* listener, drain timer, throttle timer */
  /* Admission of handshakes: at most CAPF_MAX_HANDSHAKES run at once. A
   * connection beyond that is left unaccepted (libuv stops watching the
   * listener until it is accepted), so in a storm the kernel backlog holds
   * the newcomers and the workers finish the sessions already started
   * instead of spreading over all of them and timing everyone out. */
  unsigned handshaking;
  int accept_deferred;
  /* Accepted sockets inherit TCP_NODELAY and keep-alive from the listener;
   * until this time (loop ms) after a keep-alive change, sessions set their
   * own, because the kernel accepted some sockets before the change. */
  int listening;
  uint64_t own_socket_options_until_ms;
};

/* Starts a session on an accepted, counted connection. On failure the
 * connection is closed and uncounted. */
void capf_session_start(capstan_capf_server_t *srv, uv_stream_t *listener);

/* Ends a session now (drain deadline): END_SESSION is not sent. */
void capf_session_abort(capf_session_t *s);

/* A handshake slot was freed: accepts a deferred connection, if any. */
void capf_server_handshake_done(capstan_capf_server_t *srv);

/* Sets TCP keep-alive on |tcp|: first probe after |minutes| idle, then
 * every |minutes|, four probes. */
void capf_tcp_set_keepalive(uv_tcp_t *tcp, unsigned minutes);

/* Sets TCP keep-alive on the session's socket. */
void capf_session_apply_keepalive(capf_session_t *s, unsigned minutes);

/* Called by session.c after a session left the list (drain completion). */
void capf_server_session_closed(capstan_capf_server_t *srv);

capf_session_t *capf_session_next(const capf_session_t *s);

#endif
