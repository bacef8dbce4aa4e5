/* capstan-audit-seed: writes one audit event dated in the past into a data
 * directory, for the integration test of the audit retention (a test aid,
 * never installed: the server has no clock of its own to shift).
 *
 *   capstan-audit-seed DATA_DIR AGE_SECONDS EVENT [DEVICE [DETAIL]]
 *
 * The event is dated AGE_SECONDS before now. Events are kept in time
 * order, so it must be older than every event already in the log: seed a
 * fresh data directory, oldest first. Exit 0, or 1 with the reason. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/base/error.h"
#include "storage/audit.h"
#include "storage/store.h"

typedef struct {
  int64_t at;
  const char *event, *device, *detail;
  int64_t last;
} seed_t;

static int last_fn(const capstan_audit_event_t *e, void *arg) {
  ((seed_t *)arg)->last = e->at_ns;
  return 0;
}

static int seed_fn(capstan_txn_t *txn, void *arg) {
  seed_t *s = arg;
  int err = capstan_audit_query(txn, 0, NULL, last_fn, s);
  if (err != 0) return err;
  if (s->last >= s->at) return CAPSTAN_ERANGE;
  return capstan_store_audit_append(txn, s->at, s->device, s->event, s->detail);
}

int main(int argc, char **argv) {
  if (argc < 4 || argc > 6) {
    fprintf(stderr, "usage: capstan-audit-seed DATA_DIR AGE_SECONDS EVENT [DEVICE [DETAIL]]\n");
    return 2;
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int64_t now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
  seed_t s = {
      .at = now - strtoll(argv[2], NULL, 10) * 1000000000,
      .event = argv[3],
      .device = argc > 4 ? argv[4] : NULL,
      .detail = argc > 5 ? argv[5] : NULL,
  };
  capstan_store_t *store;
  int err = capstan_store_open(argv[1], CAPSTAN_STORE_CREATE, &store);
  if (err == 0) {
    capstan_store_set_actor(store, "capstan-audit-seed");
    err = capstan_store_write(store, seed_fn, &s);
    capstan_store_close(store);
  }
  if (err == CAPSTAN_ERANGE) {
    fprintf(stderr, "capstan-audit-seed: the log already has newer events: seed oldest first\n");
    return 1;
  }
  if (err != 0) {
    fprintf(stderr, "capstan-audit-seed: %s\n", capstan_strerror(err));
    return 1;
  }
  return 0;
}
