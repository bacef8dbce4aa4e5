/* TCP options of CAPF connections. The listener carries them and accepted
 * sockets inherit them (Linux copies them at accept), so a connection sets
 * its own only for a while after a change (see capf_conn_start). */
#ifndef CAPSTAN_HANDLERS_CAPF_SOCKOPTS_H
#define CAPSTAN_HANDLERS_CAPF_SOCKOPTS_H

#include <uv.h>

/* Sets TCP keep-alive on |tcp|: first probe after |minutes| idle, then
 * every |minutes|, four probes. Failures are ignored: keep-alive is an
 * optimisation, the session timers still bound every wait. */
void capf_tcp_set_keepalive(uv_tcp_t *tcp, unsigned minutes);

/* Sets what a phone's connection needs: no Nagle delay (every CAPF
 * message is one write the phone waits for) and keep-alive. */
void capf_tcp_set_options(uv_tcp_t *tcp, unsigned keepalive_minutes);

#endif
