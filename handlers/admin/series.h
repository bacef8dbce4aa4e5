/* A ring buffer of timed samples of cumulative counters (enrollments,
 * downloads, ...), for the status page's rates and chart: one sample a
 * second, the newest |cap| kept (30 minutes at 1800).
 *
 * A sample is a time (monotonic seconds) and |ncols| counter values. Rates
 * are differences between two samples over the time between them, so a late
 * or missed tick only widens one interval. Counters only grow (process-wide
 * metrics); a value that goes down is read as no change.
 *
 * Plain memory, no locking: one thread (the loop) owns it. */
#ifndef CAPSTAN_HANDLERS_ADMIN_SERIES_H
#define CAPSTAN_HANDLERS_ADMIN_SERIES_H

#include <stddef.h>
#include <stdint.h>

#define CAPSTAN_SERIES_MAX_COLS 8

typedef struct capstan_series {
  size_t cap, ncols;
  size_t head;  /* index of the next write */
  size_t count; /* samples held, at most cap */
  uint64_t seq; /* samples ever appended */
  double *t;    /* cap times */
  double *v;    /* cap * ncols values, row by row */
} capstan_series_t;

/* Allocates room for |cap| (>= 2) samples of |ncols| (1 to
 * CAPSTAN_SERIES_MAX_COLS) columns. Returns 0, CAPSTAN_EINVAL or
 * CAPSTAN_ENOMEM (|s| is then zeroed). */
int capstan_series_init(capstan_series_t *s, size_t cap, size_t ncols);
/* Frees; safe on a zeroed series. */
void capstan_series_cleanup(capstan_series_t *s);

/* Appends a sample at |t| with |values| (ncols of them); the oldest goes
 * when the ring is full. A |t| not after the newest sample's replaces that
 * sample's values instead (a clock that did not move). */
void capstan_series_push(capstan_series_t *s, double t, const double *values);

/* Samples held. */
size_t capstan_series_count(const capstan_series_t *s);

/* The sample |age| places back from the newest (0: the newest): its time in
 * *t and, when |values| is not NULL, its values. Returns 0 or
 * CAPSTAN_ENOENT when there is no such sample. */
int capstan_series_at(const capstan_series_t *s, size_t age, double *t, double *values);

/* The rate of column |col| (per second) over the last |seconds|: from the
 * newest sample back to the newest one at least |seconds| older, or the
 * oldest held when none is. 0 with fewer than two samples. */
double capstan_series_rate(const capstan_series_t *s, size_t col, double seconds);

/* The increase of column |col| over the last |seconds| (as rate, without
 * the division). */
double capstan_series_delta(const capstan_series_t *s, size_t col, double seconds);

/* The chart: the rate of column |col| in consecutive intervals of |step|
 * samples, oldest first, at most |max| of them (fewer while the ring
 * fills). Intervals end at every |step|-th sample ever appended, so they
 * stay put as samples arrive (the newest, unfinished one is left out).
 * out_t[i] is the time of the interval's end, out_v[i] its rate per
 * second. Returns the number of intervals written. */
size_t capstan_series_steps(const capstan_series_t *s, size_t col, size_t step, double *out_t,
                            double *out_v, size_t max);

#endif
