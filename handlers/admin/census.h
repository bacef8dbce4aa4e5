/* The census of the store for the status page: devices by operation
 * status, the slowest phones in progress, the latest failures and their
 * reasons, and the live CAPF certificate. One read transaction over every
 * device record (about 10 ms for 40,000 on the development machine), run on
 * the libuv thread pool, never on the loop.
 *
 * capstan_census_get hands out the latest census when it is fresh (the
 * store has not been written since it was taken, or it is younger than
 * |max_age|) and otherwise takes a new one first; requests that arrive
 * while a scan runs share it. So a page watched by many operators costs at
 * most one scan a second, and an idle store none. */
#ifndef CAPSTAN_HANDLERS_ADMIN_CENSUS_H
#define CAPSTAN_HANDLERS_ADMIN_CENSUS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/base/phone.h"
#include "storage/store.h"

/* Operation statuses, numbered as the device record's (census.c asserts
 * it); their names are the CLI's ("in-progress"). */
#define CAPSTAN_CENSUS_STATUSES(X) \
  X(NONE)                          \
  X(PENDING)                       \
  X(IN_PROGRESS)                   \
  X(SUCCEEDED)                     \
  X(FAILED)                        \
  X(EXPIRED)                       \
  X(THROTTLED)
typedef enum {
#define X(id) CAPSTAN_CENSUS_##id,
  CAPSTAN_CENSUS_STATUSES(X)
#undef X
      CAPSTAN_CENSUS_NSTATUS
} capstan_census_status_t;

/* "none", "pending", "in-progress", "succeeded", "failed", "expired",
 * "throttled". */
const char *capstan_census_status_name(capstan_census_status_t s);

#define CAPSTAN_CENSUS_TOP 10         /* devices per list */
#define CAPSTAN_CENSUS_REASONS 8      /* failure reasons counted apart */
#define CAPSTAN_CENSUS_REASON_MAX 128 /* bytes kept of a reason */

/* One device of a list. */
typedef struct capstan_census_device {
  char name[CAPSTAN_DEVICE_NAME_MAX + 1];
  char operation[16]; /* "install", ... (the scheduled one) */
  int64_t since;      /* in progress: the attempt's start; failed: when it failed */
  uint32_t attempts;
  char reason[CAPSTAN_CENSUS_REASON_MAX]; /* "" when none */
} capstan_census_device_t;

typedef struct capstan_census_reason {
  char reason[CAPSTAN_CENSUS_REASON_MAX];
  uint64_t count;
} capstan_census_reason_t;

/* The live CAPF certificate. */
typedef struct capstan_census_capf {
  int present;
  int self_signed; /* otherwise signed by an enterprise CA */
  char subject[256], issuer[256];
  char key[16]; /* "rsa2048", ... */
  int64_t not_before, not_after;
  size_t chain; /* certificates above it sent in the handshake */
} capstan_census_capf_t;

/* Who signs LSCs (the `issuer` setting) and, for an online CA, how it is
 * doing as the server last wrote it (CaHealth). */
typedef struct capstan_census_issuer {
  unsigned issuer;  /* capstan_issuer_t */
  char ca_url[256]; /* "" when no CA is configured */
  int has_health;
  int64_t last_success_at, last_error_at;
  char last_error[256];
  uint32_t last_latency_ms;
} capstan_census_issuer_t;

typedef struct capstan_census {
  int64_t at;          /* unix seconds when the scan began */
  double at_mono;      /* the same, monotonic (capstan_now_seconds) */
  double scan_seconds; /* how long the scan took */
  uint64_t txnid;      /* the store's transaction id before the scan */
  uint64_t total;
  uint64_t by_status[CAPSTAN_CENSUS_NSTATUS];
  /* In progress, longest running first (oldest attempt). */
  size_t n_slowest;
  capstan_census_device_t slowest[CAPSTAN_CENSUS_TOP];
  /* Failed, newest first. */
  size_t n_failures;
  capstan_census_device_t failures[CAPSTAN_CENSUS_TOP];
  /* Reasons of the failed devices, most frequent first; the rest, and
   * failures without a reason, in other_reasons. */
  size_t n_reasons;
  capstan_census_reason_t reasons[CAPSTAN_CENSUS_REASONS];
  uint64_t other_reasons;
  capstan_census_capf_t capf;
  capstan_census_issuer_t issuer;
  /* Phones' certificate requests waiting for a CA (core/ca/requests.h),
   * and when the oldest of them was made (0 when none). */
  uint64_t csr_pending;
  int64_t csr_oldest_at;
} capstan_census_t;

/* Takes a census of |store| now, on the calling thread (the thread pool
 * calls it; so do tests). |out| is overwritten. Returns 0 or a store error;
 * a CAPF identity that is missing or does not parse leaves capf.present 0
 * and is no error. */
int capstan_census_scan(capstan_store_t *store, capstan_census_t *out);

/* ---- The cached census (loop thread) ---------------------------------- */

typedef struct capstan_census_cache capstan_census_cache_t;

/* Called on the loop with the census (valid during the call only), or NULL
 * and a negative error when none could be taken. */
typedef void (*capstan_census_fn)(void *arg, const capstan_census_t *census, int status);

int capstan_census_cache_new(uv_loop_t *loop, capstan_store_t *store, capstan_census_cache_t **out);

/* Calls |fn| with a census no older than |max_age| seconds, or with the
 * latest one when the store has not been written since. Either at once or
 * after a scan on the thread pool. Returns 0 (|fn| will be called exactly
 * once) or CAPSTAN_ENOMEM / a libuv error (it will not). */
int capstan_census_get(capstan_census_cache_t *c, double max_age, capstan_census_fn fn, void *arg);

/* Frees the cache once no scan runs; |done| (may be NULL) follows. Every
 * pending |fn| is called before. */
void capstan_census_cache_free(capstan_census_cache_t *c, void (*done)(void *arg), void *arg);

#endif
