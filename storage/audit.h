/* The audit log: what was done, when, and by whom. Every admin change and
 * every certificate event of a CAPF session appends an event inside the
 * transaction that makes the change, so an event is on record exactly when
 * its change is. Events are kept under unique, increasing nanosecond keys
 * (the AUDIT database) and the events that name a device are indexed by
 * device (AUDIT_DEVICE), so one device's history is read without a scan.
 * Old events are removed by capstan_audit_prune (the server runs it
 * periodically with the audit-retention-days setting).
 *
 * This header carries no record type: the server's layers use it with
 * plain strings. Errors as in storage/store.h. */
#ifndef CAPSTAN_STORAGE_AUDIT_H
#define CAPSTAN_STORAGE_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/store.h"

/* Event names that more than one file writes or reads. */
#define CAPSTAN_AUDIT_FILE_SERVED "file_served"
#define CAPSTAN_AUDIT_PRUNED "audit_pruned"

/* Events removed by one capstan_audit_prune call at most: one write
 * transaction stays short, and the server calls again while more remain. */
#define CAPSTAN_AUDIT_PRUNE_BATCH 10000

/* One event as read back. The strings are borrowed for the callback's
 * duration; NULL when absent. */
typedef struct capstan_audit_event {
  int64_t at_ns;      /* unix nanoseconds; unique and increasing: the log's order */
  const char *user;   /* who ran the admin command; NULL: the server */
  const char *device; /* the device it is about; NULL: none */
  const char *event;  /* e.g. "device_added", "cert_installed" */
  const char *detail; /* key=value words, never a secret */
} capstan_audit_event_t;

/* Every event appended through |store| from now on records |user| (the
 * admin CLI sets the Unix user that runs it; the server sets none). NULL
 * clears it. CAPSTAN_ENOMEM. */
int capstan_store_set_actor(capstan_store_t *store, const char *user);

/* Appends an event at |at_ns| (unix nanoseconds; 0 = now) inside the write
 * transaction |txn|, with the store's actor as its user. The key is |at_ns|,
 * or one more than the last key when the clock stepped back (several
 * processes write, and clocks step): an event never replaces another and the
 * log stays in write order. |device| and |detail| may be NULL. Never pass
 * secrets. */
int capstan_store_audit_append(capstan_txn_t *txn, int64_t at_ns, const char *device,
                               const char *event, const char *detail);
/* The same with a printf-style detail (truncated at 1,000 bytes). */
int capstan_audit_appendf(capstan_txn_t *txn, const char *device, const char *event,
                          const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Calls fn for each event at or after |since_ns| (0: from the first), in
 * order; only |device|'s events when |device| is not NULL (through the
 * index). fn returns 0 to go on, 1 to stop, or a negative error that the
 * query returns. */
typedef int (*capstan_audit_fn)(const capstan_audit_event_t *e, void *arg);
int capstan_audit_query(capstan_txn_t *txn, int64_t since_ns, const char *device,
                        capstan_audit_fn fn, void *arg);

/* Removes the events older than |retention_days| days before |now_ns|,
 * oldest first, at most |limit| of them (and their index entries), inside
 * the write transaction |txn|; when it removed any it appends one
 * "audit_pruned" event saying how many and up to when. *removed is the
 * count; *more is true when older events remain (call again).
 * retention_days 0 removes nothing. Replayable: the same arguments on the
 * same store remove the same events. */
int capstan_audit_prune(capstan_txn_t *txn, int64_t now_ns, unsigned retention_days, size_t limit,
                        size_t *removed, bool *more);

/* Records that the per-device file |file| of |device| was handed out at
 * |at_ns| (0 = now) for the first time since the device last changed:
 * writes "file_served" (detail "file=NAME") unless the device's history
 * before |at_ns| already has one for |file| after its last change. A change
 * is any event of the device but attempts, failures and expiries of a CAPF
 * session and file_served itself; the look back is bounded (a device with
 * hundreds of attempts since its last change gets the event again). Unlike
 * an append, the event goes under the first free key from |at_ns| on, so a
 * download noted before a change and written after it stays before it in
 * the log. *appended says whether it wrote. */
int capstan_audit_note_served(capstan_txn_t *txn, int64_t at_ns, const char *device,
                              const char *file, bool *appended);

#endif
