/* Admission of CAPF connections: whether an accepted connection may become
 * a session (drain, IPv6 setting, total and per-address limits), and the
 * log of refusals, which a storm must not flood. One per server, loop
 * thread only. What a refused connection hears is the server's choice
 * (server.c): over a limit, RETRY_LATER after its handshake. */
#ifndef CAPSTAN_HANDLERS_CAPF_ADMISSION_H
#define CAPSTAN_HANDLERS_CAPF_ADMISSION_H

#include <stdint.h>
#include <sys/socket.h>

#include "core/base/conntrack.h"
#include "core/base/log.h"

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
  /* Refusal log: one line per reason per CAPSTAN_LOG_LIMIT_MS at most, with
   * the number held back. Per server, so two servers (tests) do not share
   * it. */
  capstan_log_limit_t log[CAPF_REFUSE_COUNT];
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
 * into the next line of its reason when one was logged less than
 * CAPSTAN_LOG_LIMIT_MS ago. |retry_delay| is the RETRY_DELAY the phone
 * will hear, 0 when the connection is closed unanswered; |limit| the
 * limit's value (0: not a limit). */
void capf_admission_log_refusal(capf_admission_t *a, uint64_t now_ms, const char *peer_host,
                                capf_refusal_t r, unsigned retry_delay, unsigned limit);

#endif
