#include "core/base/netaddr.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"

#define HOST_MAX 64

int capstan_netaddr_parse(const char *host_port, struct sockaddr_storage *out) {
  char host[HOST_MAX];
  const char *port_str;
  size_t n = strlen(host_port);
  if (n == 0 || n > HOST_MAX + 8) return CAPSTAN_EINVAL;
  if (host_port[0] == '[') {
    const char *close = strchr(host_port, ']');
    if (close == NULL || close[1] != ':') return CAPSTAN_EINVAL;
    size_t hl = (size_t)(close - host_port - 1);
    if (hl == 0 || hl >= sizeof(host)) return CAPSTAN_EINVAL;
    memcpy(host, host_port + 1, hl);
    host[hl] = '\0';
    port_str = close + 2;
  } else {
    const char *colon = strrchr(host_port, ':');
    if (colon == NULL || strchr(host_port, ':') != colon) return CAPSTAN_EINVAL;
    size_t hl = (size_t)(colon - host_port);
    if (hl == 0 || hl >= sizeof(host)) return CAPSTAN_EINVAL;
    memcpy(host, host_port, hl);
    host[hl] = '\0';
    port_str = colon + 1;
  }
  char *end = NULL;
  long port = strtol(port_str, &end, 10);
  if (*port_str == '\0' || *end != '\0' || port < 0 || port > 65535) return CAPSTAN_EINVAL;
  memset(out, 0, sizeof(*out));
  struct sockaddr_in *in4 = (struct sockaddr_in *)out;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
  if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons((uint16_t)port);
    return 0;
  }
  /* A link-local IPv6 address names its interface: "[fe80::1%eth0]:69". */
  char *zone = strchr(host, '%');
  if (zone != NULL) *zone++ = '\0';
  if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    if (zone != NULL) {
      char *zend = NULL;
      unsigned long index = strtoul(zone, &zend, 10);
      if (*zone == '\0' || *zend != '\0') index = if_nametoindex(zone);
      if (index == 0 || index > UINT32_MAX) return CAPSTAN_EINVAL;
      in6->sin6_scope_id = (uint32_t)index;
    }
    return 0;
  }
  return CAPSTAN_EINVAL;
}

void capstan_netaddr_format(const struct sockaddr *addr, char *out, size_t cap) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (addr->sa_family == AF_INET) {
    const struct sockaddr_in *in4 = (const struct sockaddr_in *)addr;
    inet_ntop(AF_INET, &in4->sin_addr, host, sizeof(host));
    snprintf(out, cap, "%s:%u", host, ntohs(in4->sin_port));
  } else if (addr->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    snprintf(out, cap, "[%s]:%u", host, ntohs(in6->sin6_port));
  } else {
    snprintf(out, cap, "unknown");
  }
}

int capstan_netaddr_port(const struct sockaddr *addr) {
  if (addr->sa_family == AF_INET) return ntohs(((const struct sockaddr_in *)addr)->sin_port);
  if (addr->sa_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)addr)->sin6_port);
  return -1;
}
