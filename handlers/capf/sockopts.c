#include "handlers/capf/sockopts.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

void capf_tcp_set_keepalive(uv_tcp_t *tcp, unsigned minutes) {
  unsigned secs = minutes * 60;
  uv_tcp_keepalive(tcp, 1, secs);
  /* libuv sets only the idle time; probes must also be N minutes apart. */
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)tcp, &fd) == 0) {
    int intvl = (int)secs, cnt = 4;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
  }
}

void capf_tcp_set_options(uv_tcp_t *tcp, unsigned keepalive_minutes) {
  uv_tcp_nodelay(tcp, 1);
  capf_tcp_set_keepalive(tcp, keepalive_minutes);
}
