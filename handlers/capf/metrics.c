/* The CAPF server's metrics and the names of session outcomes. */
#include <stdio.h>

#include "handlers/capf/internal.h"
#include "core/base/names.h"
#include "core/base/phone.h"

CAPSTAN_DEFINE_NAME_FN(, capf_op_label_name, capf_op_label_t, CAPF_OPERATIONS, "?")
CAPSTAN_DEFINE_NAME_FN(, capf_result_name, capf_result_t, CAPF_RESULTS, "?")

void capf_metrics_register(capf_metrics_t *m) {
  char labels[128];
  for (int op = 0; op < CAPF_OP_COUNT; op++) {
    for (int r = 0; r < CAPF_RESULT_COUNT; r++) {
      snprintf(labels, sizeof(labels), "operation=\"%s\",result=\"%s\"", capf_op_label_name(op),
               capf_result_name(r));
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
  for (int i = CAPSTAN_AUTH_MODE_STRING; i <= CAPSTAN_AUTH_MODE_MIC; i++) {
    snprintf(labels, sizeof(labels), "mode=\"%s\"", capstan_auth_mode_name(i));
    m->auth_failures[i] = capstan_metrics_counter("capstan_capf_auth_failures_total",
                                                  "Failed phone authentications by mode", labels);
  }
  const char *rj = "capstan_capf_connections_rejected_total";
  const char *rj_help =
      "CAPF connections refused, by reason (over a limit: told RETRY_LATER after the TLS "
      "handshake, or dropped past the flood ceiling)";
  m->rejected_total_limit = capstan_metrics_counter(rj, rj_help, "reason=\"limit_total\"");
  m->rejected_address_limit = capstan_metrics_counter(rj, rj_help, "reason=\"limit_per_address\"");
  m->rejected_ipv6 = capstan_metrics_counter(rj, rj_help, "reason=\"ipv6_disabled\"");
  m->rejected_draining = capstan_metrics_counter(rj, rj_help, "reason=\"draining\"");
  m->rejected_error = capstan_metrics_counter(rj, rj_help, "reason=\"error\"");
  const char *dr = "capstan_capf_connections_dropped_total";
  const char *dr_help =
      "CAPF connections over a limit closed at accept without RETRY_LATER because too many "
      "refusals were in their handshake (flood ceiling), by limit";
  m->dropped_total_limit = capstan_metrics_counter(dr, dr_help, "reason=\"limit_total\"");
  m->dropped_address_limit = capstan_metrics_counter(dr, dr_help, "reason=\"limit_per_address\"");
  m->waiting = capstan_metrics_gauge(
      "capstan_capf_connections_waiting",
      "CAPF connections accepted and admitted, waiting for a handshake slot (max-handshakes)",
      NULL);
  m->refusing = capstan_metrics_gauge(
      "capstan_capf_connections_refusing",
      "CAPF connections over a limit in their TLS handshake, to be told RETRY_LATER", NULL);
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
  m->certs_issued =
      capstan_metrics_counter("capstan_capf_certificates_issued_total",
                              "LSCs signed (or received from a CA) and recorded", NULL);
  const char *cr = "capstan_capf_cert_requests_total";
  const char *cr_help =
      "Phones' certificate requests for an external CA, by result (ok, rejected: a check "
      "failed, none: the phone made none)";
  m->csr_ok = capstan_metrics_counter(cr, cr_help, "result=\"ok\"");
  m->csr_rejected = capstan_metrics_counter(cr, cr_help, "result=\"rejected\"");
  m->csr_none = capstan_metrics_counter(cr, cr_help, "result=\"none\"");
  m->auth_lockouts = capstan_metrics_counter(
      "capstan_capf_auth_lockouts_total",
      "Devices whose operation was locked by wrong authentication strings in a row "
      "(auth-max-failures): no string is accepted until the operator re-arms it",
      NULL);
  m->auth_locked_refused = capstan_metrics_counter(
      "capstan_capf_auth_locked_refused_total",
      "Authentication strings refused unread because their device is locked", NULL);
  m->auth_delayed = capstan_metrics_counter(
      "capstan_capf_auth_delayed_total",
      "Wrong authentication strings answered after a delay (per address, doubling up to "
      "auth-delay-max-seconds)",
      NULL);
  m->handovers_refused = capstan_metrics_counter(
      "capstan_capf_handovers_refused_total",
      "Certificates from a CA that a phone refused in a later session (a new request follows)",
      NULL);
}
