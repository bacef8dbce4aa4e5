/* Admission of CAPF connections: whether an accepted connection may become
 * a session (drain, IPv6 setting, total and per-address limits), and the
 * log of refusals, which a storm must not flood. One per server, loop
 * thread only. */
#ifndef CAPSTAN_HANDLERS_CAPF_ADMISSION_H
#define CAPSTAN_HANDLERS_CAPF_ADMISSION_H

#include <stdint.h>
#include <sys/socket.h>

#include "core/base/conntrack.h"

#define CAPF_REFUSALS(X)                                                                 \
  X(NONE, "admitted")                                                                    \
  X(DRAINING, "draining")                                                                \
  X(IPV6, "ipv6 disabled (capstan config set enable-ipv6 on)")                           \
  X(TOTAL_LIMIT, "connection limit reached (max-connections)")                           \
  X(ADDRESS_LIMIT, "per-address connection limit reached (max-connections-per-address)") \
  X(NO_MEMORY, "out of memory")

typedef enum {
#define X(id, text) CAPF_REFUSE_##id,
  CAPF_REFUSALS(X)
#undef X
      CAPF_REFUSE_COUNT
} capf_refusal_t;

/* What the operator reads in the log for |r|. */
const char *capf_refusal_text(capf_refusal_t r);

typedef struct capf_admission {
  capstan_conntrack_t per_address; /* connections open per peer address */
  /* Refusal log: one line a second at most, with the number of refusals
   * it stands for. Per server, so two servers (tests) do not share it. */
  uint64_t last_log_ms;
  unsigned unlogged;
} capf_admission_t;

/* What the decision reads besides the peer. */
typedef struct capf_admission_input {
  int draining;
  int enable_ipv6;
  unsigned open_sessions;
  unsigned max_connections;
  unsigned max_per_address;
} capf_admission_input_t;

/* 0 or CAPSTAN_ENOMEM. */
int capf_admission_init(capf_admission_t *a, unsigned buckets);
void capf_admission_cleanup(capf_admission_t *a);

/* Decides for |peer|. CAPF_REFUSE_NONE counts the peer's address as open
 * until capf_admission_leave. */
capf_refusal_t capf_admission_decide(capf_admission_t *a, const struct sockaddr *peer,
                                     const capf_admission_input_t *in);

/* An admitted connection from |peer| closed. */
void capf_admission_leave(capf_admission_t *a, const struct sockaddr *peer);

/* Logs the refusal of |peer_host| at |now_ms| (loop time), or counts it
 * into the next line when one was logged less than a second ago. */
void capf_admission_log_refusal(capf_admission_t *a, uint64_t now_ms, const char *peer_host,
                                capf_refusal_t r);

#endif
