/* Wrong authentication strings by peer address (guessing.h). */
#include "handlers/capf/guessing.h"

#include <stdio.h>
#include <string.h>

/* The count as it stands at |now|: halved per quiet period. */
static unsigned decayed(const capf_guess_entry_t *e, double now) {
  double quiet = now - e->last;
  if (quiet < CAPF_GUESS_DECAY_SECONDS) return e->wrong;
  double periods = quiet / CAPF_GUESS_DECAY_SECONDS;
  if (periods >= 32) return 0;
  return e->wrong >> (unsigned)periods;
}

static capf_guess_entry_t *slot_for(capf_guess_table_t *t, const char *host, double now) {
  capf_guess_entry_t *free_slot = NULL, *oldest = NULL;
  for (size_t i = 0; i < CAPF_GUESS_ADDRESSES; i++) {
    capf_guess_entry_t *e = &t->e[i];
    if (e->host[0] == '\0' || decayed(e, now) == 0) {
      if (e->host[0] != '\0' && strcmp(e->host, host) == 0) return e;
      if (free_slot == NULL) free_slot = e;
      continue;
    }
    if (strcmp(e->host, host) == 0) return e;
    if (oldest == NULL || e->last < oldest->last) oldest = e;
  }
  capf_guess_entry_t *e = free_slot != NULL ? free_slot : oldest;
  if (e->host[0] == '\0') t->used++;
  snprintf(e->host, sizeof(e->host), "%s", host);
  e->wrong = 0;
  e->last = now;
  return e;
}

unsigned long capf_guess_wrong(capf_guess_table_t *t, const char *host, double now,
                               unsigned max_seconds, unsigned *wrong) {
  if (wrong != NULL) *wrong = 0;
  if (max_seconds == 0) return 0;
  capf_guess_entry_t *e = slot_for(t, host, now);
  unsigned n = decayed(e, now);
  if (n < 64) n++;
  e->wrong = n;
  e->last = now;
  if (wrong != NULL) *wrong = n;
  unsigned long cap = (unsigned long)max_seconds * 1000;
  unsigned long ms = n - 1 >= 20 ? cap : 1000ul << (n - 1);
  return ms < cap ? ms : cap;
}
