/* The server's identities: the CAPF certificate and the TFTP signing
 * certificate, created in the store when missing, and loaded from it as one
 * snapshot that every service shares the same way. */
#ifndef CAPSTAN_CORE_IDENTITIES_H
#define CAPSTAN_CORE_IDENTITIES_H

#include <openssl/x509.h>
#include <stdatomic.h>

#include "core/pki/pki.h"
#include "storage/store.h"

/* Creates whichever of the CAPF and TFTP identities |store| lacks (RSA 2048
 * key generation: about a second each). |subject_extra| ("O=Example,C=NZ")
 * may be NULL. Sets *created to the number of identities made. Returns 0 or
 * a negative error (logged). */
int capstan_init_identities(capstan_store_t *store, const char *subject_extra, int *created);

/* What capstan_identities_load reads; an identity asked for must exist. */
#define CAPSTAN_IDENTITIES_CAPF 1u       /* CAPF certificate, key and chain */
#define CAPSTAN_IDENTITIES_TFTP 2u       /* TFTP signing certificate and key */
#define CAPSTAN_IDENTITIES_CAPF_TRUST 4u /* capf_trust (implies CAPF) */

/* One snapshot of the identities as the store held them when it was loaded.
 * Read-only once loaded, so worker threads may use it; a reload builds a
 * new snapshot, and whoever holds a reference to the old one (a session in
 * flight, a file build) keeps using it until it drops the reference. */
typedef struct capstan_identities {
  _Atomic unsigned refs;
  capstan_identity_t capf; /* zeroed unless CAPSTAN_IDENTITIES_CAPF */
  X509 *capf_prev;         /* the CAPF certificate before the last change, or NULL */
  capstan_identity_t tftp; /* zeroed unless CAPSTAN_IDENTITIES_TFTP */
  /* Anchors for "authentication by existing certificate": the CAPF
   * certificate, its issuers, the previous CAPF certificate and the
   * uploaded certificates of purpose "capf-trust". NULL unless
   * CAPSTAN_IDENTITIES_CAPF_TRUST. */
  STACK_OF(X509) * capf_trust;
} capstan_identities_t;

/* Loads the identities |what| asks for (CAPSTAN_IDENTITIES_* ored) and the
 * previous CAPF certificate when there is one. On success *out holds one
 * reference (capstan_identities_unref). Returns 0, CAPSTAN_ENOENT when an
 * identity asked for is missing (run `capstan init`), or another negative
 * error (unparsable record, no memory). Logs nothing: the caller says which
 * service could not start. */
int capstan_identities_load(capstan_store_t *store, unsigned what, capstan_identities_t **out);

/* Takes a reference (any thread); returns |ids|. NULL is passed through. */
capstan_identities_t *capstan_identities_ref(capstan_identities_t *ids);

/* Drops a reference (any thread); the last frees the snapshot. NULL is
 * ignored. */
void capstan_identities_unref(capstan_identities_t *ids);

#endif
