#include "handlers/admin/series.h"

#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"

int capstan_series_init(capstan_series_t *s, size_t cap, size_t ncols) {
  memset(s, 0, sizeof(*s));
  if (cap < 2 || ncols == 0 || ncols > CAPSTAN_SERIES_MAX_COLS) return CAPSTAN_EINVAL;
  s->t = calloc(cap, sizeof(*s->t));
  s->v = calloc(cap * ncols, sizeof(*s->v));
  if (s->t == NULL || s->v == NULL) {
    capstan_series_cleanup(s);
    return CAPSTAN_ENOMEM;
  }
  s->cap = cap;
  s->ncols = ncols;
  return 0;
}

void capstan_series_cleanup(capstan_series_t *s) {
  free(s->t);
  free(s->v);
  memset(s, 0, sizeof(*s));
}

/* The ring index of the sample |age| back from the newest. */
static size_t slot(const capstan_series_t *s, size_t age) {
  return (s->head + s->cap - 1 - age) % s->cap;
}

void capstan_series_push(capstan_series_t *s, double t, const double *values) {
  if (s->cap == 0) return;
  size_t i;
  if (s->count > 0 && t <= s->t[slot(s, 0)]) {
    i = slot(s, 0);
  } else {
    i = s->head;
    s->t[i] = t;
    s->head = (s->head + 1) % s->cap;
    if (s->count < s->cap) s->count++;
    s->seq++;
  }
  memcpy(s->v + i * s->ncols, values, s->ncols * sizeof(*values));
}

size_t capstan_series_count(const capstan_series_t *s) {
  return s->count;
}

int capstan_series_at(const capstan_series_t *s, size_t age, double *t, double *values) {
  if (age >= s->count) return CAPSTAN_ENOENT;
  size_t i = slot(s, age);
  if (t != NULL) *t = s->t[i];
  if (values != NULL) memcpy(values, s->v + i * s->ncols, s->ncols * sizeof(*values));
  return 0;
}

static double value(const capstan_series_t *s, size_t age, size_t col) {
  return s->v[slot(s, age) * s->ncols + col];
}

/* The age of the newest sample at least |seconds| older than the newest,
 * or of the oldest held. */
static size_t back_to(const capstan_series_t *s, double seconds) {
  double newest = s->t[slot(s, 0)];
  size_t age = 1;
  while (age + 1 < s->count && newest - s->t[slot(s, age)] < seconds) age++;
  return age;
}

static double increase(double newer, double older) {
  return newer > older ? newer - older : 0;
}

double capstan_series_delta(const capstan_series_t *s, size_t col, double seconds) {
  if (s->count < 2 || col >= s->ncols) return 0;
  size_t age = back_to(s, seconds);
  return increase(value(s, 0, col), value(s, age, col));
}

double capstan_series_rate(const capstan_series_t *s, size_t col, double seconds) {
  if (s->count < 2 || col >= s->ncols) return 0;
  size_t age = back_to(s, seconds);
  double dt = s->t[slot(s, 0)] - s->t[slot(s, age)];
  if (dt <= 0) return 0;
  return increase(value(s, 0, col), value(s, age, col)) / dt;
}

size_t capstan_series_steps(const capstan_series_t *s, size_t col, size_t step, double *out_t,
                            double *out_v, size_t max) {
  if (step == 0 || col >= s->ncols || s->count == 0) return 0;
  /* The newest sample that ends an interval: sequence numbers (seq - 1 -
   * age) that are multiples of |step|. */
  size_t first = (size_t)((s->seq - 1) % step);
  if (first + step >= s->count) return 0;
  size_t n = (s->count - 1 - first) / step;
  if (n > max) n = max;
  /* Interval k (0: newest) runs from age first+(k+1)*step to first+k*step;
   * written oldest first. */
  for (size_t k = 0; k < n; k++) {
    size_t newer = first + k * step, older = newer + step;
    double dt = s->t[slot(s, newer)] - s->t[slot(s, older)];
    double d = increase(value(s, newer, col), value(s, older, col));
    out_t[n - 1 - k] = s->t[slot(s, newer)];
    out_v[n - 1 - k] = dt > 0 ? d / dt : 0;
  }
  return n;
}
