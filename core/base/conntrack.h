/* Connection counts per peer address, for per-address limits. IPv4 and
 * IPv4-mapped IPv6 addresses count as the same peer. Loop thread only. */
#ifndef CAPSTAN_CORE_BASE_CONNTRACK_H
#define CAPSTAN_CORE_BASE_CONNTRACK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct capstan_conntrack_entry capstan_conntrack_entry_t;

typedef struct capstan_conntrack {
  capstan_conntrack_entry_t **buckets;
  size_t nbuckets;
  size_t addresses;
} capstan_conntrack_t;

int capstan_conntrack_init(capstan_conntrack_t *ct, size_t nbuckets);
void capstan_conntrack_cleanup(capstan_conntrack_t *ct);

/* Counts one more connection from |addr| unless it already has |limit|:
 * returns 0, CAPSTAN_EBUSY (limit reached) or CAPSTAN_ENOMEM. */
int capstan_conntrack_add(capstan_conntrack_t *ct, const struct sockaddr *addr, unsigned limit);
/* Counts one connection from |addr| less (it must have been added). */
void capstan_conntrack_remove(capstan_conntrack_t *ct, const struct sockaddr *addr);
unsigned capstan_conntrack_count(const capstan_conntrack_t *ct, const struct sockaddr *addr);

/* Writes the address without port ("192.0.2.1", "2001:db8::1") for logs. */
void capstan_sockaddr_host(const struct sockaddr *addr, char *out, size_t cap);

#endif
