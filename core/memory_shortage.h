/* Running out of memory (a cgroup limit, RLIMIT_AS, an overcommitted
 * host), as one condition of the whole process: the sessions that cannot
 * allocate end (phones are told to come back where the protocol allows)
 * and each such failure is reported here, which logs the condition once
 * when it starts (event=memory_exhausted) and once when it ends
 * (event=memory_recovered), and shows it in /metrics:
 *
 *   capstan_memory_exhausted                   gauge    1 while short of memory
 *   capstan_memory_allocation_failures_total   counter  failures reported
 *
 * The condition ends when no failure was reported for a while and a probe
 * reservation of address space succeeds again: no restart. Loop thread
 * only. */
#ifndef CAPSTAN_CORE_MEMORY_SHORTAGE_H
#define CAPSTAN_CORE_MEMORY_SHORTAGE_H

#include <uv.h>

/* Registers the metrics and the recovery timer; 0 or a negative error.
 * capstan_memory_shortage_stop closes the timer. Called once by `capstan
 * serve`; without them, capstan_memory_shortage_note only logs. */
int capstan_memory_shortage_start(uv_loop_t *loop);
void capstan_memory_shortage_stop(void);

/* An allocation made for |where| ("capf_accept", "files", ...) failed. */
void capstan_memory_shortage_note(const char *where);

/* Whether the condition holds now (loop thread: the status page). */
int capstan_memory_shortage_now(void);

#endif
