#include "handlers/capf/admission.h"

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/names.h"

CAPSTAN_DEFINE_NAME_FN(, capf_refusal_text, capf_refusal_t, CAPF_REFUSALS, "?")

int capf_admission_init(capf_admission_t *a, unsigned buckets) {
  memset(a->log, 0, sizeof(a->log));
  return capstan_conntrack_init(&a->per_address, buckets);
}

void capf_admission_cleanup(capf_admission_t *a) {
  capstan_conntrack_cleanup(&a->per_address);
}

capf_refusal_t capf_admission_decide(capf_admission_t *a, const struct sockaddr *peer,
                                     const capf_admission_input_t *in) {
  if (in->draining) return CAPF_REFUSE_DRAINING;
  const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)peer;
  if (!in->enable_ipv6 && peer->sa_family == AF_INET6 && !IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
    return CAPF_REFUSE_IPV6;
  }
  if (in->open_sessions >= in->max_connections) return CAPF_REFUSE_TOTAL_LIMIT;
  int rc = capstan_conntrack_add(&a->per_address, peer, in->max_per_address);
  if (rc == CAPSTAN_EBUSY) return CAPF_REFUSE_ADDRESS_LIMIT;
  if (rc < 0) return CAPF_REFUSE_NO_MEMORY;
  return CAPF_REFUSE_NONE;
}

void capf_admission_leave(capf_admission_t *a, const struct sockaddr *peer) {
  capstan_conntrack_remove(&a->per_address, peer);
}

void capf_admission_log_refusal(capf_admission_t *a, uint64_t now_ms, const char *peer_host,
                                capf_refusal_t r, unsigned retry_delay, unsigned limit) {
  uint64_t held;
  if ((unsigned)r >= CAPF_REFUSE_COUNT || !capstan_log_limit_pass(&a->log[r], now_ms, &held)) {
    return;
  }
  char answer[48] = "answer=closed";
  if (retry_delay > 0)
    snprintf(answer, sizeof(answer), "answer=retry_later retry_delay=%u", retry_delay);
  char lim[24] = "";
  if (limit > 0) snprintf(lim, sizeof(lim), " limit=%u", limit);
  LOG_WARN("event=capf_connection_rejected peer=%s reason=\"%s\"%s %s also_refused=%llu", peer_host,
           capf_refusal_text(r), lim, answer, (unsigned long long)held);
}
