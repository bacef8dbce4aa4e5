#include "core/base/conntrack.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"

/* 16-byte key: IPv6 address, with IPv4 as IPv4-mapped. */
static int addr_key(const struct sockaddr *addr, uint8_t key[16]) {
  if (addr->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
    memset(key, 0, 10);
    key[10] = key[11] = 0xff;
    memcpy(key + 12, &in->sin_addr, 4);
    return 0;
  }
  if (addr->sa_family == AF_INET6) {
    memcpy(key, &((const struct sockaddr_in6 *)addr)->sin6_addr, 16);
    return 0;
  }
  return CAPSTAN_EINVAL;
}

static size_t hash_key(uint64_t seed, const uint8_t key[16], size_t n) {
  uint64_t h = 1469598103934665603ull ^ seed; /* FNV-1a, seeded */
  for (int i = 0; i < 16; i++) h = (h ^ key[i]) * 1099511628211ull;
  h ^= h >> 29;
  return (size_t)(h % n);
}

int capstan_conntrack_init(capstan_conntrack_t *ct, size_t nbuckets) {
  ct->buckets = calloc(nbuckets, sizeof(*ct->buckets));
  ct->nbuckets = nbuckets;
  ct->addresses = 0;
  /* Unpredictable enough from outside: the time to the nanosecond and
   * where this table lives. */
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  ct->seed = ((uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec) ^
             ((uint64_t)(uintptr_t)ct << 17);
  return ct->buckets ? 0 : CAPSTAN_ENOMEM;
}

void capstan_conntrack_cleanup(capstan_conntrack_t *ct) {
  for (size_t i = 0; i < ct->nbuckets && ct->buckets; i++) {
    capstan_conntrack_entry_t *e = ct->buckets[i];
    while (e) {
      capstan_conntrack_entry_t *next = e->next;
      free(e);
      e = next;
    }
  }
  free(ct->buckets);
  ct->buckets = NULL;
}

static capstan_conntrack_entry_t **find(const capstan_conntrack_t *ct, const uint8_t key[16]) {
  capstan_conntrack_entry_t **pp = &ct->buckets[hash_key(ct->seed, key, ct->nbuckets)];
  while (*pp && memcmp((*pp)->key, key, 16) != 0) pp = &(*pp)->next;
  return pp;
}

int capstan_conntrack_acquire(capstan_conntrack_t *ct, const struct sockaddr *addr, unsigned limit,
                              capstan_conntrack_entry_t **out) {
  uint8_t key[16];
  if (addr_key(addr, key) < 0) return CAPSTAN_EINVAL;
  capstan_conntrack_entry_t **pp = find(ct, key);
  if (*pp == NULL) {
    if (limit == 0) return CAPSTAN_EBUSY;
    capstan_conntrack_entry_t *e = calloc(1, sizeof(*e));
    if (e == NULL) return CAPSTAN_ENOMEM;
    memcpy(e->key, key, 16);
    *pp = e;
    ct->addresses++;
  } else if ((*pp)->count >= limit) {
    return CAPSTAN_EBUSY;
  }
  (*pp)->count++;
  if (out != NULL) *out = *pp;
  return 0;
}

void capstan_conntrack_release(capstan_conntrack_t *ct, capstan_conntrack_entry_t *e) {
  if (--e->count > 0) return;
  capstan_conntrack_entry_t **pp = find(ct, e->key);
  *pp = e->next;
  free(e);
  ct->addresses--;
}

capstan_conntrack_entry_t *capstan_conntrack_find(const capstan_conntrack_t *ct,
                                                  const struct sockaddr *addr) {
  uint8_t key[16];
  if (addr_key(addr, key) < 0) return NULL;
  return *find(ct, key);
}

int capstan_conntrack_add(capstan_conntrack_t *ct, const struct sockaddr *addr, unsigned limit) {
  return capstan_conntrack_acquire(ct, addr, limit, NULL);
}

void capstan_conntrack_remove(capstan_conntrack_t *ct, const struct sockaddr *addr) {
  capstan_conntrack_entry_t *e = capstan_conntrack_find(ct, addr);
  if (e != NULL) capstan_conntrack_release(ct, e);
}

unsigned capstan_conntrack_count(const capstan_conntrack_t *ct, const struct sockaddr *addr) {
  capstan_conntrack_entry_t *e = capstan_conntrack_find(ct, addr);
  return e != NULL ? e->count : 0;
}

void capstan_sockaddr_host(const struct sockaddr *addr, char *out, size_t cap) {
  if (cap == 0) return;
  out[0] = '\0';
  if (addr->sa_family == AF_INET) {
    inet_ntop(AF_INET, &((const struct sockaddr_in *)addr)->sin_addr, out, (socklen_t)cap);
  } else if (addr->sa_family == AF_INET6) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)addr)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a)) {
      inet_ntop(AF_INET, &a->s6_addr[12], out, (socklen_t)cap);
    } else {
      inet_ntop(AF_INET6, a, out, (socklen_t)cap);
    }
  } else {
    snprintf(out, cap, "unknown");
  }
}
