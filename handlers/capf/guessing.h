/* Wrong authentication strings by peer address: how long the server waits
 * before it answers the next wrong string from an address, so a guesser
 * that tries device after device (or waits out each lock) gets ever
 * slower. The delay doubles from 1 s with each wrong string (1, 2, 4, ...,
 * up to a cap) and the count halves for each quiet minute, so a phone user
 * who mistyped once is not held up later. A fixed table of
 * CAPF_GUESS_ADDRESSES addresses; when it is full the address heard from
 * longest ago makes room. Loop thread only; no allocation. */
#ifndef CAPSTAN_HANDLERS_CAPF_GUESSING_H
#define CAPSTAN_HANDLERS_CAPF_GUESSING_H

#include <stddef.h>

#define CAPF_GUESS_ADDRESSES 1024
/* Quiet time that halves an address's count of wrong strings. */
#define CAPF_GUESS_DECAY_SECONDS 60.0
#define CAPF_GUESS_HOST_MAX 47

typedef struct capf_guess_entry {
  char host[CAPF_GUESS_HOST_MAX + 1]; /* "" when free */
  unsigned wrong;                     /* wrong strings, decayed to |last| */
  double last;                        /* capstan_now_seconds of the latest */
} capf_guess_entry_t;

typedef struct capf_guess_table {
  capf_guess_entry_t e[CAPF_GUESS_ADDRESSES];
  size_t used;
} capf_guess_table_t;

/* Counts one more wrong string from |host| at |now| (seconds, monotonic)
 * and returns the delay before it is answered, in milliseconds: 1000 *
 * 2^(wrong - 1) after the decay, at most |max_seconds| * 1000 (0: no
 * delay, nothing counted). *wrong (may be NULL) is the address's count. */
unsigned long capf_guess_wrong(capf_guess_table_t *t, const char *host, double now,
                               unsigned max_seconds, unsigned *wrong);

#endif
