/* The one per-address table of the listeners: how many connections (or
 * transfers) each peer address has open, for per-address limits, and a
 * slot for the listener's own per-address state (TFTP keeps its transfers
 * there). IPv4 and IPv4-mapped IPv6 addresses are the same peer; ports do
 * not count. Buckets are chosen by a hash seeded per table, so a peer that
 * picks its IPv6 addresses cannot pile them into one bucket. Loop thread
 * only. */
#ifndef CAPSTAN_CORE_BASE_CONNTRACK_H
#define CAPSTAN_CORE_BASE_CONNTRACK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* One address with at least one connection. */
typedef struct capstan_conntrack_entry {
  uint8_t key[16]; /* the IPv6 address, IPv4 as IPv4-mapped */
  unsigned count;  /* read-only: connections counted */
  void *data;      /* the caller's; NULL when the entry is made */
  struct capstan_conntrack_entry *next;
} capstan_conntrack_entry_t;

typedef struct capstan_conntrack {
  capstan_conntrack_entry_t **buckets;
  size_t nbuckets;
  size_t addresses; /* entries in the table */
  uint64_t seed;
} capstan_conntrack_t;

/* CAPSTAN_ENOMEM when the buckets cannot be allocated. cleanup frees every
 * entry (not what their data points to) and accepts a zeroed table. */
int capstan_conntrack_init(capstan_conntrack_t *ct, size_t nbuckets);
void capstan_conntrack_cleanup(capstan_conntrack_t *ct);

/* Counts one more connection from |addr| unless it already has |limit|:
 * returns 0, CAPSTAN_EBUSY (limit reached), CAPSTAN_EINVAL (not an IP
 * address) or CAPSTAN_ENOMEM. */
int capstan_conntrack_add(capstan_conntrack_t *ct, const struct sockaddr *addr, unsigned limit);
/* Counts one connection from |addr| less (it must have been added). */
void capstan_conntrack_remove(capstan_conntrack_t *ct, const struct sockaddr *addr);
unsigned capstan_conntrack_count(const capstan_conntrack_t *ct, const struct sockaddr *addr);

/* The same with the entry in hand, for callers that keep state in it:
 * acquire counts like add and sets *out to the address's entry; release
 * counts one less and frees the entry (invalidating it) at zero; find
 * returns the entry or NULL. */
int capstan_conntrack_acquire(capstan_conntrack_t *ct, const struct sockaddr *addr, unsigned limit,
                              capstan_conntrack_entry_t **out);
void capstan_conntrack_release(capstan_conntrack_t *ct, capstan_conntrack_entry_t *e);
capstan_conntrack_entry_t *capstan_conntrack_find(const capstan_conntrack_t *ct,
                                                  const struct sockaddr *addr);

/* Writes the address without port ("192.0.2.1", "2001:db8::1") for logs. */
void capstan_sockaddr_host(const struct sockaddr *addr, char *out, size_t cap);

#endif
