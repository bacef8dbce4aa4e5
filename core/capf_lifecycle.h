/* The CAPF certificate's life (capf-lifecycle.md, product.md R11-R13): the
 * changes an operator makes (regenerate, CSR for a pending key, import of a
 * CA-signed certificate, retire a previous certificate) and what they leave
 * in the store.
 *
 * Every change is one write transaction that also appends an audit event
 * (time, old and new serial and fingerprint) and bumps the settings' trust
 * generation, so a running server loads a new identity snapshot within a
 * second (handlers/serve/serve.c): sessions in flight keep the snapshot they
 * started with. Slow work (RSA key generation) happens before the
 * transaction. A refused change leaves the store as it was. */
#ifndef CAPSTAN_CORE_CAPF_LIFECYCLE_H
#define CAPSTAN_CORE_CAPF_LIFECYCLE_H

#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/pki/pki.h"

/* How many previous CAPF certificates may be trusted at once: the most an
 * ITL lists beside the TFTP and the live CAPF records. A regenerate or
 * import beyond it is refused (CAPSTAN_ERANGE) until one is retired. */
#define CAPSTAN_CAPF_MAX_PREVIOUS 8u
#include "storage/store.h"

#define CAPSTAN_TRUST_PURPOSE_CAPF "capf-trust"
#define CAPSTAN_TRUST_PURPOSE_CM "callmanager-trust"

/* A replaced CAPF certificate. */
typedef struct capstan_capf_previous {
  X509 *cert;
  int64_t replaced_at;
  int64_t trusted_until; /* replaced_at + capf-previous-trust-days */
  int64_t retired_at;    /* 0: not retired */
} capstan_capf_previous_t;

/* Everything `capstan cert capf show` tells. */
typedef struct capstan_capf_status {
  capstan_identity_t capf; /* the live certificate, key and chain (root last) */
  bool has_pending;
  char pending_key[16];  /* "rsa2048", ... */
  char *pending_subject; /* RFC 4514, malloc'd */
  int64_t pending_created_at;
  capstan_capf_previous_t *previous; /* still trusted at |now|, oldest first */
  size_t nprevious;
  unsigned previous_trust_days;
  /* A CA-signed CAPF's root (the last of the chain) in each trust store;
   * both true for a self-signed CAPF (implicitly trusted). */
  bool root_in_capf_trust, root_in_cm_trust;
} capstan_capf_status_t;

int capstan_capf_status_load(capstan_store_t *store, int64_t now, capstan_capf_status_t *out);
void capstan_capf_status_cleanup(capstan_capf_status_t *st);

/* The previous CAPF certificates still trusted at |now| inside |txn|
 * (not retired, now < trusted_until), oldest first, in *out (malloc'd array,
 * free with capstan_capf_previous_free), and the earliest trusted_until
 * among them in *until (0 with none). */
int capstan_capf_previous_trusted(capstan_txn_t *txn, int64_t now, capstan_capf_previous_t **out,
                                  size_t *n, int64_t *until);
void capstan_capf_previous_free(capstan_capf_previous_t *p, size_t n);

/* What a change did, for the operator: the certificate now live and the one
 * it replaced (references the caller frees with capstan_capf_change_cleanup). */
typedef struct capstan_capf_change {
  X509 *new_cert;
  X509 *old_cert;
  int64_t old_trusted_until; /* when the replaced one stops being trusted */
  /* Import only: the rule outcome (pki.h) and what is worth saying. */
  capstan_capf_import_t import;
  bool root_missing_capf_trust; /* the path's root is not in CAPF-trust */
  bool root_missing_cm_trust;   /* ... not in CallManager-trust */
  bool root_added;              /* --trust-root added it */
} capstan_capf_change_t;
void capstan_capf_change_cleanup(capstan_capf_change_t *ch);

/* A new key and self-signed CAPF certificate per |spec|. spec->key_bits 0
 * keeps the current key type; spec->subject_extra NULL keeps the current
 * O/OU/L/ST/C. */
int capstan_capf_regenerate(capstan_store_t *store, const capstan_capf_spec_t *spec,
                            capstan_capf_change_t *out);

/* A PKCS#10 CSR (DER, malloc'd) for the live key and subject, or, with
 * |new_key|, for a new pending key of |key_alg|/|key_bits| (0: the current
 * type). An earlier pending key is replaced only with |replace_pending|
 * (its certificate may be at the CA): CAPSTAN_EBUSY otherwise, nothing
 * changed. |subject_extra| (NULL: the current O/OU/L/ST/C) gives a new
 * subject with a new CAPF- CN. */
int capstan_capf_csr(capstan_store_t *store, bool new_key, bool replace_pending, int key_alg,
                     unsigned key_bits, const char *subject_extra, uint8_t **der, size_t *der_len);

#define CAPSTAN_CAPF_IMPORT_TRUST_ROOT 0x100u /* add the root to both stores */

/* Imports the CA-signed certificate |cert_der| for the pending key, else the
 * live key, with |chain| (may be NULL) and the trust stores as the path.
 * |flags|: CAPSTAN_PKI_IMPORT_STRICT, CAPSTAN_CAPF_IMPORT_TRUST_ROOT.
 * Returns 0; CAPSTAN_EINVAL with out->import.rule/why set when a rule
 * refuses it (rule 0 with why "already the CAPF certificate" for the live
 * one; why "the CAPF changed during the import" when another change
 * committed first); or a store error. */
int capstan_capf_import(capstan_store_t *store, const uint8_t *cert_der, size_t cert_len,
                        STACK_OF(X509) * chain, unsigned flags, capstan_capf_change_t *out);

/* Stops trusting the previous CAPF certificate whose serial (magnitude,
 * big-endian) is |serial|, before its time. *holding is set to the number
 * of devices whose current LSC that certificate issued and the live one
 * cannot vouch for: those fail "LSC invalid" on their next operation by
 * existing certificate. *retired (may be NULL) gets a reference to it.
 * Returns 0 (retired), CAPSTAN_ENOENT (no previous certificate still
 * trusted has that serial), CAPSTAN_EBUSY (devices hold LSCs from it and
 * !|force|: nothing changed), or a store error. */
int capstan_capf_retire(capstan_store_t *store, const uint8_t *serial, size_t serial_len,
                        bool force, size_t *holding, X509 **retired);

/* Adds |cert| to the trust store |purpose| inside |txn| (the record keeps
 * its other stores); sets *added when it was not there. */
int capstan_trust_store_add(capstan_txn_t *txn, X509 *cert, const char *purpose, int64_t now,
                            bool *added);

/* What removing |cert| from a trust store would break, inside |txn|:
 * |*holding|, devices whose current LSC |cert| issued (and the live CAPF
 * did not), which then fail "by existing certificate"; |*in_live_chain|,
 * whether |cert| is above the live CAPF (a CA-signed CAPF's root or
 * intermediate: CUCM needs its root in CallManager-trust). */
int capstan_trust_removal_impact(capstan_txn_t *txn, X509 *cert, size_t *holding,
                                 bool *in_live_chain);

/* Inside |txn|: every previous CAPF certificate whose window of |days|
 * has ended at |now| is marked retired (with an audit event), so that a
 * window once ended stays ended when capf-previous-trust-days grows again.
 * The settings change calls it with the smaller of the old and new value. */
int capstan_capf_previous_end_elapsed(capstan_txn_t *txn, int64_t now, unsigned days,
                                      size_t *ended);

/* When the first previous CAPF certificate still trusted at |now| stops
 * being trusted (unix seconds), or 0 when none is (or the store cannot be
 * read): the moment a running server loads a new snapshot. */
int64_t capstan_capf_previous_trust_ends(capstan_store_t *store, int64_t now);

/* Logs a warning when the live CAPF certificate has fewer than 30 days
 * left (or has expired). Returns its notAfter (0 when unreadable). */
int64_t capstan_capf_check_expiry(capstan_store_t *store, int64_t now);

#endif
