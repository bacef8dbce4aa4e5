/* Running out of file descriptors (RLIMIT_NOFILE), as one condition of the
 * whole process rather than an error of each connection.
 *
 * The process keeps a reserve of its descriptor limit for its own work
 * (files it reads, TFTP transfer sockets, the connection to a CA, the
 * store): a connection accepted into the reserve is closed at once, and so
 * is every new connection while the process is short, so that idle
 * connections cannot starve the phones already in a session. The condition
 * is logged once when it starts (event=descriptors_exhausted) and once when
 * it ends (event=descriptors_recovered), and shown in /metrics:
 *
 *   capstan_descriptors_exhausted       gauge    1 while short of descriptors
 *   capstan_descriptors_refused_total   counter  connections closed and
 *                                                transfers or files refused
 *                                                for want of a descriptor
 *
 * A timer looks twice a second: otherwise the process would not know when
 * libuv, out of descriptors at accept, closes connections by itself; and
 * while short, it counts the open descriptors and ends the condition when
 * they are well below the limit again (or the limit was raised): no
 * restart. Loop thread only. */
#ifndef CAPSTAN_CORE_DESCRIPTORS_H
#define CAPSTAN_CORE_DESCRIPTORS_H

#include <uv.h>

/* Registers the metrics and keeps one spare descriptor (see descriptors.c).
 * Returns 0 or a negative error. capstan_descriptors_stop closes the
 * timer; both are called once by `capstan serve`. */
int capstan_descriptors_start(uv_loop_t *loop);
void capstan_descriptors_stop(void);

/* Whether a connection just accepted on |fd| by listener |where| ("capf",
 * "http", ...) may proceed: 0, or CAPSTAN_EBUSY when the process is short of
 * descriptors (the caller closes the connection at once; counted here). */
int capstan_descriptors_admit(int fd, const char *where);

/* Whether |err| (libuv's or ours, negative errno) means the process or the
 * system ran out of descriptors. */
int capstan_descriptors_is_exhaustion(int err);

/* A call made for |where| failed with |err|: when it is an exhaustion, the
 * condition starts (logged once) and the refusal is counted; otherwise
 * nothing. Returns whether it was one. */
int capstan_descriptors_note(int err, const char *where);

/* For a listener whose accept failed with EMFILE after libuv's own reserve
 * descriptor was used up: gives up the spare descriptor so that the next
 * accept succeeds and the caller's admit closes it (else libuv would call
 * back with EMFILE again at once, for ever). The spare is taken back by
 * capstan_descriptors_admit and by the timer. */
void capstan_descriptors_release_spare(void);

/* Whether the condition holds now (loop thread: the status page). */
int capstan_descriptors_exhausted_now(void);

#endif
