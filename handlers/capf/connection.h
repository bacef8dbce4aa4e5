/* One accepted CAPF connection: a session (session.h) bound to a TLS
 * connection, a libuv timer, the store's group-commit writer and the
 * thread pool. This is the real implementation of the session's hooks.
 *
 * Lifetime: the server creates it (capf_conn_new), accepts into it, then
 * either discards it (refused) or starts it. Its memory lives until the
 * TLS connection, the timer and every record and job of its session are
 * done; the server hears of the close through its owner callbacks and must
 * forget the connection there. Loop thread only. */
#ifndef CAPSTAN_HANDLERS_CAPF_CONNECTION_H
#define CAPSTAN_HANDLERS_CAPF_CONNECTION_H

#include <sys/socket.h>
#include <uv.h>

#include "core/tls.h"
#include "handlers/capf/internal.h"
#include "handlers/capf/session.h"
#include "storage/store.h"

typedef struct capf_conn capf_conn_t;

/* What a started connection tells the server that accepted it. */
typedef struct capf_conn_owner {
  /* The TLS handshake of |c| is over (done, failed or abandoned): its slot
   * is free. Once per started connection. */
  void (*handshake_over)(void *arg, capf_conn_t *c);
  /* The started connection closed: drop it from every list now. */
  void (*closed)(void *arg, capf_conn_t *c);
} capf_conn_owner_t;

struct capf_conn {
  capf_session_t session;
  capstan_tls_conn_t *tls; /* NULL once closed */
  uv_timer_t timer;        /* the session's timer */
  uv_loop_t *loop;
  capstan_store_t *store;
  capf_pki_t *pki; /* the identity this connection started with (a reference) */
  const capf_conn_owner_t *owner;
  void *owner_arg;
  struct sockaddr_storage peer;
  capf_conn_t *prev, *next;     /* the server's list of started connections */
  capf_conn_t *wait_next;       /* the server's queue of connections not yet started */
  capstan_ca_request_t *ca_req; /* the session's request to the online CA, if any */
  unsigned
      refs; /* TLS connection, timer, records, jobs, a device read and a CA request in flight */
  unsigned started : 1;
  unsigned handshake_pending : 1;
  unsigned refusing : 1; /* the server's: over a limit, to be told RETRY_LATER */
};

/* A connection in the zero state, presenting |pki|'s certificate with the
 * legacy or modern TLS context. NULL when out of memory. */
capf_conn_t *capf_conn_new(uv_loop_t *loop, capstan_store_t *store, capf_pki_t *pki, int legacy_tls,
                           capf_shared_t *shared, const capf_conn_owner_t *owner, void *owner_arg);

/* Accepts the pending connection of |listener| and learns the peer. On
 * failure (a negative error) the caller discards it. */
int capf_conn_accept(capf_conn_t *c, uv_stream_t *listener);

/* The peer, once accepted. */
const struct sockaddr *capf_conn_peer(const capf_conn_t *c);

/* Closes a connection that was never started: no session outcome. */
void capf_conn_discard(capf_conn_t *c);

/* Starts the session: TLS handshake and its timer. With
 * |own_socket_options| the socket gets TCP_NODELAY and keep-alive itself
 * (it may predate a keep-alive change the listener carries). */
void capf_conn_start(capf_conn_t *c, int own_socket_options, unsigned keepalive_minutes);

/* Sets TCP keep-alive on an open connection. */
void capf_conn_set_keepalive(capf_conn_t *c, unsigned minutes);

/* Ends the session now (drain deadline): END_SESSION is not sent. */
void capf_conn_abort(capf_conn_t *c);

/* The online CA client is being replaced (its configuration changed): the
 * request in flight, if any, is dropped and the session hears "CA
 * unavailable" (the phone is told to come back). */
void capf_conn_ca_reset(capf_conn_t *c);

#endif
