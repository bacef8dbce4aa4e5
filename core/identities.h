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
  /* The replaced CAPF certificates still trusted when the snapshot was
   * loaded (capf-lifecycle.md "Renewal and roll-over"), oldest first; never
   * NULL. They are CAPF records in ITL files and anchors in capf_trust. */
  STACK_OF(X509) * capf_previous;
  /* When the first of them stops being trusted (unix seconds), so the
   * server loads a new snapshot then; 0 when none is trusted. */
  int64_t capf_previous_until;
  capstan_identity_t tftp; /* zeroed unless CAPSTAN_IDENTITIES_TFTP */
  /* Anchors for "authentication by existing certificate": the CAPF
   * certificate, its issuers, the trusted previous CAPF certificates and
   * the uploaded certificates in the CAPF-trust store. NULL unless
   * CAPSTAN_IDENTITIES_CAPF_TRUST. */
  STACK_OF(X509) * capf_trust;
  /* Not anchors: the online CA's chain as last fetched (CaConfig), so that
   * an LSC an issuing CA under a trusted root signed still builds its path
   * (by existing certificate). Empty unless CAPSTAN_IDENTITIES_CAPF_TRUST. */
  STACK_OF(X509) * capf_intermediates;
} capstan_identities_t;

/* Loads the identities |what| asks for (CAPSTAN_IDENTITIES_* ored) and the
 * previous CAPF certificates still trusted now. On success *out holds one
 * reference (capstan_identities_unref). Returns 0, CAPSTAN_ENOENT when an
 * identity asked for is missing (run `capstan init`), or another negative
 * error (unparsable record, no memory). Logs nothing: the caller says which
 * service could not start. */
int capstan_identities_load(capstan_store_t *store, unsigned what, capstan_identities_t **out);

/* Reads the identity |which| (CAPSTAN_IDENTITY_CAPF or _TFTP: certificate,
 * key and chain) inside |txn| into |id| (zeroed by the caller; cleaned up
 * with capstan_identity_cleanup). CAPSTAN_ENOENT when missing,
 * CAPSTAN_EINVAL when the record does not parse. */
int capstan_identity_get(capstan_txn_t *txn, const char *which, capstan_identity_t *id);

/* The record of |id| (certificate, PKCS#8 key, chain) with created_at
 * |now|, for capstan_store_identity_put; its buffers are malloc'd: release
 * with capstan_identity_record_free. Declared with an opaque pointer so this
 * header stays free of the schema. */
struct Capstan__Identity;
int capstan_identity_record(const capstan_identity_t *id, int64_t now,
                            struct Capstan__Identity *out);
void capstan_identity_record_free(struct Capstan__Identity *rec);

/* Takes a reference (any thread); returns |ids|. NULL is passed through. */
capstan_identities_t *capstan_identities_ref(capstan_identities_t *ids);

/* Drops a reference (any thread); the last frees the snapshot. NULL is
 * ignored. */
void capstan_identities_unref(capstan_identities_t *ids);

#endif
