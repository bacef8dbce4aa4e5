/* What the parts of the CAPF server share: the live settings, the metrics
 * and the key-generation throttle every session of a server uses
 * (capf_shared_t), and the identity snapshot connections present and
 * workers sign with (capf_pki_t). server.c owns both; nothing here reaches
 * back into the listener. */
#ifndef CAPSTAN_HANDLERS_CAPF_INTERNAL_H
#define CAPSTAN_HANDLERS_CAPF_INTERNAL_H

#include <openssl/ssl.h>
#include <stdatomic.h>

#include "core/base/metrics.h"
#include "handlers/capf/guessing.h"
#include "core/identities.h"
#include "core/throttle.h"

/* The identity sessions use, shared read-only with worker threads and
 * replaced as a whole on reload. Connections hold a reference for their
 * whole life, so a session in flight keeps the identity it started with. */
typedef struct capf_pki {
  _Atomic unsigned refs;
  capstan_identities_t *ids; /* the CAPF identity and CAPF-trust */
  SSL_CTX *ctx_modern;       /* TLS 1.2 and 1.3 */
  SSL_CTX *ctx_legacy;       /* also TLS 1.0/1.1 with AES-CBC-SHA, for old phones */
} capf_pki_t;

/* Take and drop references (any thread); the last unref frees. */
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

/* Static names for logs, tests and metric labels. */
const char *capf_op_label_name(capf_op_label_t op);
const char *capf_result_name(capf_result_t r);

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
  /* Over a limit and closed unanswered: the flood ceiling was reached. */
  capstan_metric_t *dropped_total_limit, *dropped_address_limit;
  capstan_metric_t *refusing; /* over a limit, in the handshake before RETRY_LATER */
  capstan_metric_t *waiting;  /* admitted, waiting for a handshake slot */
  capstan_metric_t *keygen_waiting, *keygen_active, *keygen_duration;
  capstan_metric_t *throttled_admitted, *throttled_retry_later;
  capstan_metric_t *protocol_errors;
  capstan_metric_t *timeouts_handshake, *timeouts_step, *timeouts_keygen;
  capstan_metric_t *certs_issued;
  /* External issuers: phones' certificate requests (accepted, rejected by
   * a check, not made) and hand-overs the phone refused. */
  capstan_metric_t *csr_ok, *csr_rejected, *csr_none, *handovers_refused;
  capstan_metric_t *connections_active;
  /* String guessing: devices locked by wrong strings, strings refused
   * unread because their device is locked, wrong strings answered late. */
  capstan_metric_t *auth_lockouts, *auth_locked_refused, *auth_delayed;
} capf_metrics_t;

/* Registers (or finds: the registry is process-wide) every CAPF metric. */
void capf_metrics_register(capf_metrics_t *m);

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
  unsigned max_handshakes;
  int legacy_tls;
  int enable_ipv6;
  unsigned issuer;                 /* capstan_issuer_t */
  unsigned ca_phone_wait_seconds;  /* the CA configuration's phone wait */
  unsigned auth_max_failures;      /* wrong strings in a row that lock a device */
  unsigned auth_delay_max_seconds; /* cap of the per-address delay; 0: none */
} capf_settings_t;

/* What every session of one server shares (loop thread only). */
typedef struct capf_shared {
  capf_settings_t settings;
  capf_metrics_t m;
  capstan_throttle_t throttle; /* phone key generations (R17) */
  /* The online CA's client for each issuer (indexed by capstan_issuer_t:
   * EST and MSCS when a CA is configured), else NULL. */
  struct capstan_ca_client *ca[4];
  /* Wrong authentication strings by peer address (the per-address delay). */
  capf_guess_table_t guesses;
  int draining; /* the server drains: no new wrong-string delay starts */
} capf_shared_t;

#endif
