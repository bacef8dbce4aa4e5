/* Listener addresses as operators write them: "127.0.0.1:9464",
 * "0.0.0.0:3804", "[::]:6970", "[::1]:0", "[fe80::1%eth0]:69" (a link-local
 * address with its interface, by name or index). "localhost:69" is NOT
 * accepted (no name resolution on the loop): literal addresses only. One
 * rule for every listener. */
#ifndef CAPSTAN_CORE_BASE_NETADDR_H
#define CAPSTAN_CORE_BASE_NETADDR_H

#include <stddef.h>
#include <sys/socket.h>

/* Parses |host_port| into |out|. Returns 0 or CAPSTAN_EINVAL. */
int capstan_netaddr_parse(const char *host_port, struct sockaddr_storage *out);

/* Writes "host:port" or "[v6]:port" for |addr| into |out|. */
void capstan_netaddr_format(const struct sockaddr *addr, char *out, size_t cap);

/* Port of |addr| (host order), or -1. */
int capstan_netaddr_port(const struct sockaddr *addr);

#endif
