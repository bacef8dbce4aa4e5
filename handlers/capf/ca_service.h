/* The CAPF server's side of an external CA (external-ca.md): the online
 * CA client its sessions ask (capf_shared_t.ca), made again when the
 * `issuer` setting or the CA configuration (`capstan ca set`) changes, and
 * the poller that keeps asking an online CA about requests it left
 * pending, so that the phone finds its certificate at its next session.
 * It also writes the CA's health record (`capstan ca show`, the status
 * page). Loop thread only. */
#ifndef CAPSTAN_HANDLERS_CAPF_CA_SERVICE_H
#define CAPSTAN_HANDLERS_CAPF_CA_SERVICE_H

#include <uv.h>

#include "handlers/capf/internal.h"
#include "storage/store.h"

typedef struct capf_ca_service capf_ca_service_t;

/* Called before a client is replaced: every session must drop its request
 * to the old one (capf_conn_ca_reset). */
typedef void (*capf_ca_reset_fn)(void *arg);

/* Starts the service; its poll timer runs every second. NULL when out of
 * memory. */
capf_ca_service_t *capf_ca_service_start(uv_loop_t *loop, capstan_store_t *store,
                                         capf_shared_t *shared, capf_ca_reset_fn reset,
                                         void *reset_arg);

/* Settings or the store changed: re-reads the CA configuration, and
 * makes a new client when |issuer| or the configuration differ from the
 * current one. |pki| is the CAPF-trust the poller checks certificates
 * against (a reference is kept). */
void capf_ca_service_update(capf_ca_service_t *svc, unsigned issuer, capf_pki_t *pki);

/* Stops polling, drops the client, and frees the service once its
 * handles are closed. */
void capf_ca_service_stop(capf_ca_service_t *svc);

#endif
