/* Throttle for phone key generations (R17): at most |max_concurrent| phones
 * generating keys at once, and at most |per_second| new ones per second
 * (a token bucket with a burst of one second's worth). Phones beyond the
 * bounds wait in FIFO order; the caller bounds the wait with its own timer
 * and calls capstan_throttle_cancel when it gives up.
 *
 * Loop thread only. Bounds can change at any time (live settings). */
#ifndef CAPSTAN_CORE_THROTTLE_H
#define CAPSTAN_CORE_THROTTLE_H

#include <stdint.h>
#include <uv.h>

typedef struct capstan_throttle_waiter {
  struct capstan_throttle_waiter *prev, *next;
  /* Called on the loop when a slot is granted to a waiting phone. */
  void (*on_admitted)(struct capstan_throttle_waiter *w);
  int queued;
} capstan_throttle_waiter_t;

typedef struct capstan_throttle {
  uv_loop_t *loop;
  uv_timer_t timer; /* fires when the next token is due and phones wait */
  unsigned max_concurrent;
  unsigned per_second;
  unsigned active;
  unsigned waiting;
  double tokens;
  uint64_t last_refill_ms;
  capstan_throttle_waiter_t *head, *tail;
} capstan_throttle_t;

void capstan_throttle_init(capstan_throttle_t *t, uv_loop_t *loop, unsigned max_concurrent,
                           unsigned per_second);
/* Closes the timer handle; waiters must have been cancelled. */
void capstan_throttle_close(capstan_throttle_t *t);
void capstan_throttle_configure(capstan_throttle_t *t, unsigned max_concurrent,
                                unsigned per_second);

/* Takes a slot now and returns 1, or queues |w| and returns 0 (on_admitted
 * follows when a slot is granted). */
int capstan_throttle_acquire(capstan_throttle_t *t, capstan_throttle_waiter_t *w);
/* Removes a queued waiter (no-op when not queued). */
void capstan_throttle_cancel(capstan_throttle_t *t, capstan_throttle_waiter_t *w);
/* Gives back a slot taken by acquire or granted by on_admitted. */
void capstan_throttle_release(capstan_throttle_t *t);

#endif
