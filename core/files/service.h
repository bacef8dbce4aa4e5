/* The phone file service: the file source (core/files/source.h) behind the
 * TFTP and HTTP servers. It produces each per-device file from the device's
 * current state on demand:
 *
 *   ITLFile.tlv, ITLSEP<MAC>.tlv   signed by the TFTP identity, listing the
 *                                  TFTP, CAPF and previous CAPF certificates
 *   <dev>.cnf.xml                  the completed configuration (unencrypted
 *                                  devices only)
 *   <dev>.cnf.xml.sgn              signed full configuration, or signed
 *                                  partial one for encrypted devices
 *   <dev>.cnf.xml.enc.sgn          encrypted for the phone's RSA key
 *
 * and anything else from the static directory. Signed files are cached by
 * the content they sign: a change of state shows in the next download, and
 * an unchanged file is never signed twice. Signing runs on the libuv thread
 * pool, and concurrent requests for the same file wait for one signature.
 *
 * The first download of each signed per-device file (ITLSEP, .cnf.xml.sgn,
 * .cnf.xml.enc.sgn) after it or its device changed is an audit event of the
 * device ("file_served file=NAME", storage/audit.h): noted in memory, and
 * written once a second in one request to the storage writer, which keeps
 * one event per file since the device's last change. Other downloads write
 * nothing; the plain .cnf.xml is not noted.
 *
 * Loop thread only. */
#ifndef CAPSTAN_CORE_FILES_SERVICE_H
#define CAPSTAN_CORE_FILES_SERVICE_H

#include <stdint.h>
#include <uv.h>

#include "core/files/source.h"
#include "core/settings.h"
#include "storage/store.h"

typedef struct capstan_files_service capstan_files_service_t;

typedef struct capstan_files_config {
  const char *static_dir;        /* NULL: no static files */
  const char *default_capf_host; /* capfList host when the capf-host setting is empty */
  uint16_t capf_port;            /* capfList phonePort */
} capstan_files_config_t;

/* Creates the service and loads the TFTP and CAPF identities from |store|.
 * Returns 0 or a negative error (logged). */
int capstan_files_service_new(uv_loop_t *loop, capstan_store_t *store,
                              const capstan_files_config_t *cfg, const capstan_settings_t *settings,
                              capstan_files_service_t **out);

/* The file source to hand to the servers; owned by the service. */
capstan_filesource_t *capstan_files_service_source(capstan_files_service_t *svc);

/* capf-host and the digest setting. */
void capstan_files_service_apply_settings(capstan_files_service_t *svc,
                                          const capstan_settings_t *s);

/* Reloads the identities (SIGHUP, new CAPF certificate). */
int capstan_files_service_reload(capstan_files_service_t *svc);

/* Frees the service once no signing job is in flight (jobs in flight finish
 * first; their requests are answered). */
void capstan_files_service_free(capstan_files_service_t *svc);

#endif
