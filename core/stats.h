/* Store-wide gauges for the maintenance window: devices by operation
 * status, stale LSCs, certificates expiring within 30 days. Computed every
 * few seconds on the thread pool (a read transaction over devices and
 * certificates), never on the loop. */
#ifndef CAPSTAN_CORE_STATS_H
#define CAPSTAN_CORE_STATS_H

#include <uv.h>

#include "storage/store.h"

typedef struct capstan_stats capstan_stats_t;

/* Starts the periodic computation. Returns 0 or CAPSTAN_ENOMEM. */
int capstan_stats_start(uv_loop_t *loop, capstan_store_t *store, unsigned interval_ms,
                        capstan_stats_t **out);

/* Stops; |done| runs when the timer is closed and no computation runs. */
void capstan_stats_stop(capstan_stats_t *st, void (*done)(void *arg), void *arg);

#endif
