#include "core/throttle.h"

static void refill(capstan_throttle_t *t) {
  uint64_t now = uv_now(t->loop);
  double elapsed = (double)(now - t->last_refill_ms) / 1000.0;
  t->last_refill_ms = now;
  t->tokens += elapsed * t->per_second;
  if (t->tokens > t->per_second) t->tokens = t->per_second;
}

static int can_admit(capstan_throttle_t *t) {
  return t->active < t->max_concurrent && t->tokens >= 1.0;
}

static void dequeue(capstan_throttle_t *t, capstan_throttle_waiter_t *w) {
  if (w->prev)
    w->prev->next = w->next;
  else
    t->head = w->next;
  if (w->next)
    w->next->prev = w->prev;
  else
    t->tail = w->prev;
  w->prev = w->next = NULL;
  w->queued = 0;
  t->waiting--;
}

static void on_timer(uv_timer_t *timer);

/* Grants slots to waiters while the bounds allow, then arms the timer for
 * the next token if phones are still waiting for one. */
static void admit_waiters(capstan_throttle_t *t) {
  refill(t);
  while (t->head != NULL && can_admit(t)) {
    capstan_throttle_waiter_t *w = t->head;
    dequeue(t, w);
    t->active++;
    t->tokens -= 1.0;
    w->on_admitted(w);
  }
  if (t->head != NULL && t->active < t->max_concurrent) {
    double need = 1.0 - t->tokens;
    uint64_t ms = (uint64_t)(need * 1000.0 / t->per_second) + 1;
    uv_timer_start(&t->timer, on_timer, ms, 0);
  }
}

static void on_timer(uv_timer_t *timer) {
  admit_waiters(timer->data);
}

void capstan_throttle_init(capstan_throttle_t *t, uv_loop_t *loop, unsigned max_concurrent,
                           unsigned per_second) {
  *t = (capstan_throttle_t){.loop = loop};
  uv_timer_init(loop, &t->timer);
  t->timer.data = t;
  t->last_refill_ms = uv_now(loop);
  capstan_throttle_configure(t, max_concurrent, per_second);
  t->tokens = t->per_second;
}

void capstan_throttle_close(capstan_throttle_t *t) {
  uv_close((uv_handle_t *)&t->timer, NULL);
}

void capstan_throttle_configure(capstan_throttle_t *t, unsigned max_concurrent,
                                unsigned per_second) {
  t->max_concurrent = max_concurrent ? max_concurrent : 1;
  t->per_second = per_second ? per_second : 1;
  admit_waiters(t);
}

int capstan_throttle_acquire(capstan_throttle_t *t, capstan_throttle_waiter_t *w) {
  refill(t);
  if (t->head == NULL && can_admit(t)) {
    t->active++;
    t->tokens -= 1.0;
    return 1;
  }
  /* Queue only: admission happens later, never inside this call, so the
   * caller can rely on 0 meaning "held". */
  w->prev = t->tail;
  w->next = NULL;
  if (t->tail)
    t->tail->next = w;
  else
    t->head = w;
  t->tail = w;
  w->queued = 1;
  t->waiting++;
  if (!uv_is_active((uv_handle_t *)&t->timer)) uv_timer_start(&t->timer, on_timer, 0, 0);
  return 0;
}

void capstan_throttle_cancel(capstan_throttle_t *t, capstan_throttle_waiter_t *w) {
  if (w->queued) dequeue(t, w);
}

void capstan_throttle_release(capstan_throttle_t *t) {
  if (t->active > 0) t->active--;
  admit_waiters(t);
}
