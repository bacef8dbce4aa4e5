#include "core/base/conntrack.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"

struct capstan_conntrack_entry {
  uint8_t key[16];
  unsigned count;
  capstan_conntrack_entry_t *next;
};

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

static size_t hash_key(const uint8_t key[16], size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (int i = 0; i < 16; i++) h = (h ^ key[i]) * 1099511628211ull;
  return (size_t)(h % n);
}

int capstan_conntrack_init(capstan_conntrack_t *ct, size_t nbuckets) {
  ct->buckets = calloc(nbuckets, sizeof(*ct->buckets));
  ct->nbuckets = nbuckets;
  ct->addresses = 0;
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
  capstan_conntrack_entry_t **pp = &ct->buckets[hash_key(key, ct->nbuckets)];
  while (*pp && memcmp((*pp)->key, key, 16) != 0) pp = &(*pp)->next;
  return pp;
}

int capstan_conntrack_add(capstan_conntrack_t *ct, const struct sockaddr *addr, unsigned limit) {
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
  return 0;
}

void capstan_conntrack_remove(capstan_conntrack_t *ct, const struct sockaddr *addr) {
  uint8_t key[16];
  if (addr_key(addr, key) < 0) return;
  capstan_conntrack_entry_t **pp = find(ct, key);
  if (*pp == NULL) return;
  if (--(*pp)->count == 0) {
    capstan_conntrack_entry_t *e = *pp;
    *pp = e->next;
    free(e);
    ct->addresses--;
  }
}

unsigned capstan_conntrack_count(const capstan_conntrack_t *ct, const struct sockaddr *addr) {
  uint8_t key[16];
  if (addr_key(addr, key) < 0) return 0;
  capstan_conntrack_entry_t **pp = find(ct, key);
  return *pp ? (*pp)->count : 0;
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
