/* The records of the store (storage/records.proto): generic and typed
 * access inside a transaction of storage/store.h.
 *
 * Only the storage layer and the code that maps records to the plain
 * structs of core and handlers include this header (tests/layers checks
 * the list). Records returned by the get functions are unpacked copies that
 * the caller owns and frees with the protobuf-c free function of its type,
 * e.g. capstan__device__free_unpacked(d, NULL). They stay valid after the
 * transaction ends. Errors as in storage/store.h. */
#ifndef CAPSTAN_STORAGE_RECORDS_H
#define CAPSTAN_STORAGE_RECORDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/audit.h"
#include "storage/records.pb-c.h"
#include "storage/store.h"

/* ---- Generic record access ------------------------------------------- */

/* Unpacks the record under |key| as a |desc| message into *out (caller
 * frees with protobuf_c_message_free_unpacked(*out, NULL)). */
int capstan_store_get(capstan_txn_t *txn, capstan_db_t db, const void *key, size_t klen,
                      const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out);
/* Packs |msg| (its required fields must be set) under |key|, replacing. */
int capstan_store_put(capstan_txn_t *txn, capstan_db_t db, const void *key, size_t klen,
                      const ProtobufCMessage *msg);
/* CAPSTAN_ENOENT when absent. */
int capstan_store_del(capstan_txn_t *txn, capstan_db_t db, const void *key, size_t klen);
/* Calls fn for each record in key order. |msg| is only valid during the
 * call (it is freed after). fn returns 0 to go on, 1 to stop (iterate then
 * returns 0), or a negative error that iterate returns. */
typedef int (*capstan_store_iter_fn)(const void *key, size_t klen, const ProtobufCMessage *msg,
                                     void *arg);
int capstan_store_iterate(capstan_txn_t *txn, capstan_db_t db,
                          const ProtobufCMessageDescriptor *desc, capstan_store_iter_fn fn,
                          void *arg);
/* The same from the first key after |after| (|alen| bytes, compared as
 * bytes: for names, in name order), or from the first when |after| is
 * NULL: a cursor for paging. */
int capstan_store_iterate_after(capstan_txn_t *txn, capstan_db_t db, const void *after, size_t alen,
                                const ProtobufCMessageDescriptor *desc, capstan_store_iter_fn fn,
                                void *arg);

/* The same over the packed records, unread: for copying a store whole
 * (backup, restore). */
typedef int (*capstan_store_raw_fn)(const void *key, size_t klen, const void *val, size_t vlen,
                                    void *arg);
int capstan_store_iterate_raw(capstan_txn_t *txn, capstan_db_t db, capstan_store_raw_fn fn,
                              void *arg);

/* ---- Typed records ---------------------------------------------------- */

/* Devices, keyed by name. put rejects a name that fails
 * capstan_device_name_valid (CAPSTAN_EINVAL). */
int capstan_store_device_get(capstan_txn_t *txn, const char *name, Capstan__Device **out);
int capstan_store_device_put(capstan_txn_t *txn, const Capstan__Device *d);
int capstan_store_device_delete(capstan_txn_t *txn, const char *name);
typedef int (*capstan_store_device_fn)(const Capstan__Device *d, void *arg);
int capstan_store_device_iterate(capstan_txn_t *txn, capstan_store_device_fn fn, void *arg);
/* The devices IN_PROGRESS only (the repairs' query; PostgreSQL answers it
 * from a partial index instead of reading every device). */
int capstan_store_device_iterate_in_progress(capstan_txn_t *txn, capstan_store_device_fn fn,
                                             void *arg);
/* Opens its own read transaction. */
int capstan_store_device_load(capstan_store_t *store, const char *name, Capstan__Device **out);

/* Issued certificates, keyed by their 16-byte serial (c->serial.len must be
 * CAPSTAN_SERIAL_LEN). */
int capstan_store_cert_get(capstan_txn_t *txn, const uint8_t serial[CAPSTAN_SERIAL_LEN],
                           Capstan__IssuedCert **out);
int capstan_store_cert_put(capstan_txn_t *txn, const Capstan__IssuedCert *c);
int capstan_store_cert_delete(capstan_txn_t *txn, const uint8_t serial[CAPSTAN_SERIAL_LEN]);
typedef int (*capstan_store_cert_fn)(const Capstan__IssuedCert *c, void *arg);
int capstan_store_cert_iterate(capstan_txn_t *txn, capstan_store_cert_fn fn, void *arg);

/* Identities: |which| is CAPSTAN_IDENTITY_CAPF or _TFTP. */
int capstan_store_identity_get(capstan_txn_t *txn, const char *which, Capstan__Identity **out);
int capstan_store_identity_put(capstan_txn_t *txn, const char *which, const Capstan__Identity *id);
int capstan_store_identity_delete(capstan_txn_t *txn, const char *which);
int capstan_store_identity_load(capstan_store_t *store, const char *which, Capstan__Identity **out);

/* The pending CAPF key (at most one; `cert capf csr --new-key`). */
int capstan_store_capf_pending_get(capstan_txn_t *txn, Capstan__PendingCapfKey **out);
int capstan_store_capf_pending_put(capstan_txn_t *txn, const Capstan__PendingCapfKey *p);
int capstan_store_capf_pending_delete(capstan_txn_t *txn);

/* Replaced CAPF certificates, keyed by the SHA-256 of cert_der (computed
 * here). */
int capstan_store_capf_previous_get(capstan_txn_t *txn, const uint8_t sha256[32],
                                    Capstan__PreviousCapf **out);
int capstan_store_capf_previous_put(capstan_txn_t *txn, const Capstan__PreviousCapf *p);
typedef int (*capstan_store_capf_previous_fn)(const Capstan__PreviousCapf *p, void *arg);
int capstan_store_capf_previous_iterate(capstan_txn_t *txn, capstan_store_capf_previous_fn fn,
                                        void *arg);

/* Trust certificates, keyed by the SHA-256 of their DER (computed here). */
int capstan_store_trust_get(capstan_txn_t *txn, const uint8_t sha256[32], Capstan__TrustCert **out);
int capstan_store_trust_put(capstan_txn_t *txn, const Capstan__TrustCert *t);
int capstan_store_trust_delete(capstan_txn_t *txn, const uint8_t sha256[32]);
typedef int (*capstan_store_trust_fn)(const uint8_t sha256[32], const Capstan__TrustCert *t,
                                      void *arg);
int capstan_store_trust_iterate(capstan_txn_t *txn, capstan_store_trust_fn fn, void *arg);

/* Whether |t| is in the trust store |purpose| ("capf-trust",
 * "callmanager-trust"); a record of schema 1 is in its |purpose| only, and
 * one with neither field counts as CAPF-trust. */
bool capstan_store_trust_in(const Capstan__TrustCert *t, const char *purpose);
/* Puts |t| (a record read from the store or being built) in |purpose| too,
 * moving a schema 1 |purpose| into |purposes|. CAPSTAN_ENOMEM. */
int capstan_store_trust_add_purpose(Capstan__TrustCert *t, const char *purpose);
/* Takes |t| out of |purpose|; *left is set to the stores it is still in. */
int capstan_store_trust_remove_purpose(Capstan__TrustCert *t, const char *purpose, size_t *left);

/* Configuration templates, keyed by name. */
int capstan_store_template_get(capstan_txn_t *txn, const char *name, Capstan__Template **out);
int capstan_store_template_put(capstan_txn_t *txn, const Capstan__Template *t);
int capstan_store_template_delete(capstan_txn_t *txn, const char *name);
typedef int (*capstan_store_template_fn)(const Capstan__Template *t, void *arg);
int capstan_store_template_iterate(capstan_txn_t *txn, capstan_store_template_fn fn, void *arg);

/* Settings: get never returns CAPSTAN_ENOENT; when nothing is stored *out
 * holds the defaults of records.proto. Caller frees with
 * capstan__settings__free_unpacked(*out, NULL). */
int capstan_store_settings_get(capstan_txn_t *txn, Capstan__Settings **out);
int capstan_store_settings_put(capstan_txn_t *txn, const Capstan__Settings *s);
int capstan_store_settings_load(capstan_store_t *store, Capstan__Settings **out);

/* Phones' certificate requests (csr database), keyed by the SHA-256 of
 * their public key (core/ca/requests.h computes it). put needs device,
 * csr_der and public_key. */
int capstan_store_csr_get(capstan_txn_t *txn, const uint8_t key[32], Capstan__CertRequest **out);
int capstan_store_csr_put(capstan_txn_t *txn, const uint8_t key[32], const Capstan__CertRequest *r);
int capstan_store_csr_delete(capstan_txn_t *txn, const uint8_t key[32]);
typedef int (*capstan_store_csr_fn)(const uint8_t key[32], const Capstan__CertRequest *r,
                                    void *arg);
int capstan_store_csr_iterate(capstan_txn_t *txn, capstan_store_csr_fn fn, void *arg);

/* The online CA's configuration (pki "ca") and its health as the server
 * last wrote it (pki "ca_health"). get gives CAPSTAN_ENOENT when none is
 * stored. */
int capstan_store_ca_config_get(capstan_txn_t *txn, Capstan__CaConfig **out);
int capstan_store_ca_config_put(capstan_txn_t *txn, const Capstan__CaConfig *c);
int capstan_store_ca_health_get(capstan_txn_t *txn, Capstan__CaHealth **out);
int capstan_store_ca_health_put(capstan_txn_t *txn, const Capstan__CaHealth *h);

/* Audit events: appended with capstan_store_audit_append (storage/audit.h,
 * which also reads, queries and prunes them as plain structs). */
typedef int (*capstan_store_audit_fn)(const Capstan__AuditEvent *e, void *arg);
int capstan_store_audit_iterate(capstan_txn_t *txn, capstan_store_audit_fn fn, void *arg);

/* Replace a string / bytes field of a record obtained from the store or
 * made by a constructor such as capstan_device_new (fields are each
 * malloc'd, so the protobuf-c free function frees them). |v| NULL clears
 * the field.
 * CAPSTAN_ENOMEM on allocation failure (the field is unchanged). */
int capstan_record_set_string(char **field, const char *v);
int capstan_record_set_bytes(ProtobufCBinaryData *field, protobuf_c_boolean *has, const void *data,
                             size_t len);

#endif
