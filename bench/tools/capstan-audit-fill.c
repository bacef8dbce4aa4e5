/* capstan-audit-fill: fills a data directory's audit log with synthetic
 * events, to measure `capstan device history`, `capstan audit list` and the
 * retention prune on a log of a realistic size (bench/RESULTS.md).
 *
 *   capstan-audit-fill DATA_DIR EVENTS DEVICES DAYS
 *
 * Writes EVENTS events spread evenly over the DAYS days before now, each
 * about one of DEVICES devices (SEP000000000000 + i, in turn) with a detail
 * like a CAPF session's, in transactions of 10,000. The log must be empty
 * or older than the first of them. Prints the time it took. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/base/error.h"
#include "storage/audit.h"
#include "storage/store.h"

#define BATCH 10000

typedef struct {
  int64_t first, step;
  long from, to, devices;
} fill_t;

static int fill_fn(capstan_txn_t *txn, void *arg) {
  const fill_t *f = arg;
  static const char *const kEvents[] = {"attempt", "cert_issued", "cert_installed",
                                        "operation_succeeded", "file_served"};
  for (long i = f->from; i < f->to; i++) {
    char device[32], detail[128];
    snprintf(device, sizeof(device), "SEP%012lX", (unsigned long)(i % f->devices));
    snprintf(detail, sizeof(detail), "peer=10.%ld.%ld.%ld serial=%032lx", (i >> 16) & 255,
             (i >> 8) & 255, i & 255, (unsigned long)i);
    int err =
        capstan_store_audit_append(txn, f->first + i * f->step, device, kEvents[i % 5], detail);
    if (err != 0) return err;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: capstan-audit-fill DATA_DIR EVENTS DEVICES DAYS\n");
    return 2;
  }
  long events = atol(argv[2]), devices = atol(argv[3]), days = atol(argv[4]);
  if (events <= 0 || devices <= 0 || days <= 0) return 2;
  struct timespec ts, t0, t1;
  clock_gettime(CLOCK_REALTIME, &ts);
  int64_t now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
  int64_t span = (int64_t)days * 86400 * 1000000000;
  capstan_store_t *store;
  int err = capstan_store_open(argv[1], CAPSTAN_STORE_CREATE, &store);
  if (err != 0) {
    fprintf(stderr, "capstan-audit-fill: %s\n", capstan_strerror(err));
    return 1;
  }
  clock_gettime(CLOCK_MONOTONIC, &t0);
  fill_t f = {.first = now - span, .step = span / events, .devices = devices};
  for (f.from = 0; err == 0 && f.from < events; f.from = f.to) {
    f.to = f.from + BATCH < events ? f.from + BATCH : events;
    err = capstan_store_write(store, fill_fn, &f);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  capstan_store_close(store);
  if (err != 0) {
    fprintf(stderr, "capstan-audit-fill: %s\n", capstan_strerror(err));
    return 1;
  }
  printf("wrote %ld events about %ld devices over %ld days in %.2f s\n", events, devices, days,
         (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
  return 0;
}
