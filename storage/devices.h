/* Device records and the domain operations on them: what a CAPF session
 * records when it issues, installs, deletes or reads a phone's certificate,
 * and the name tables of the record enums (for the CLI, logs and JSON).
 *
 * The txn-taking operations run inside a write transaction: either one of
 * the group-commit writer's (capstan_store_submit) or one of the CLI's
 * (capstan_store_begin). They read, change and write back whole records; a
 * failure leaves the caller to abort the transaction (the writer does so
 * for the one request). Every change of an issued certificate's status is
 * also an audit event of the device in the same transaction (storage/audit.h):
 * "cert_issued serial=HEX not_after=... md5=...", "cert_stale",
 * "cert_installed", "cert_deleted", each with the serial and why. Errors:
 * CAPSTAN_ENOENT when the device (or the certificate) does not exist,
 * CAPSTAN_EINVAL for bad arguments, or a store error (storage/store.h). */
#ifndef CAPSTAN_STORAGE_DEVICES_H
#define CAPSTAN_STORAGE_DEVICES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/base/phone.h" /* device names, auth modes, keys: one vocabulary */
#include "storage/records.h"

/* A new Device with the schema's defaults, the given name, status NONE and
 * schema_version set. Freed with capstan__device__free_unpacked(d, NULL).
 * NULL on allocation failure. */
Capstan__Device *capstan_device_new(const char *name);

/* ---- Name tables ------------------------------------------------------
 * name() returns a static string ("?" for a value outside the table);
 * parse() returns CAPSTAN_EINVAL for an unknown name; names() is the
 * comma-separated list of accepted names, for error messages. */
const char *capstan_operation_name(Capstan__Operation v);
int capstan_operation_parse(const char *s, Capstan__Operation *out);
const char *capstan_operation_names(void);

/* The record's enums are core/base/phone.h's values (storage/devices.c
 * asserts it), so their names come from there: capstan_auth_mode_name,
 * capstan_auth_mode_names, capstan_cert_type_name, capstan_key_name and
 * capstan_key_names take a record field as it is. The parsers below are
 * typed for the record's fields. */

/* Accepted: capstan_auth_mode_names() ("none" cannot be chosen). */
int capstan_auth_mode_parse(const char *s, Capstan__AuthMode *out);

const char *capstan_op_status_name(Capstan__OpStatus v); /* "in-progress", ... */
int capstan_op_status_parse(const char *s, Capstan__OpStatus *out);
const char *capstan_op_status_names(void);

const char *capstan_cert_status_name(Capstan__CertStatus v);

/* Accepted: capstan_key_names() (rsa512 ... ec521). */
int capstan_key_parse(const char *s, Capstan__KeyAlg *alg, uint32_t *bits);

/* ---- Domain operations (inside a write txn) --------------------------- */

/* Records a freshly signed LSC: stores IssuedCert{ISSUED} under |serial|,
 * marks any earlier certificate of the device that is still ISSUED (never
 * confirmed by the phone) STALE, and appends the serial to the device's
 * cert_history. |md5hex| may be NULL. Call, and wait for the commit, before
 * sending the certificate to the phone. */
int capstan_devices_record_issued(capstan_txn_t *txn, const char *name,
                                  const uint8_t serial[CAPSTAN_SERIAL_LEN], const uint8_t *der,
                                  size_t der_len, int64_t not_after, const char *md5hex,
                                  int64_t now);

/* Records the phone's confirmation that it stored the LSC |serial|: the
 * certificate becomes INSTALLED (an earlier INSTALLED one of the device
 * becomes DELETED: the phone replaced it); the device becomes SUCCEEDED with
 * last_operation = its operation and operation NONE; its current
 * certificate becomes this one (cert_der, LSC, md5hash from |md5hex| or
 * else from the IssuedCert, public_key = |spki|). CAPSTAN_ENOENT for an
 * unknown device or serial, CAPSTAN_EINVAL if the certificate belongs to
 * another device. */
int capstan_devices_record_installed(capstan_txn_t *txn, const char *name,
                                     const uint8_t serial[CAPSTAN_SERIAL_LEN], const uint8_t *spki,
                                     size_t spki_len, const char *md5hex, int64_t now);

/* Records the certificate a phone presented or sent (authentication by
 * existing certificate, troubleshoot, delete): it becomes the device's
 * current certificate. Status is not changed. |md5hex|, |spki| optional. */
int capstan_devices_record_seen_cert(capstan_txn_t *txn, const char *name, const uint8_t *der,
                                     size_t der_len, Capstan__CertType cert_type,
                                     const char *md5hex, const uint8_t *spki, size_t spki_len,
                                     int64_t now);

/* Sets the operation status. |reason| NULL clears status_reason. With
 * |count_attempt| the attempt counter grows and last_attempt_at = now.
 * SUCCEEDED also completes the operation: last_operation = operation,
 * operation = NONE. status_changed_at moves only when the status changes. */
int capstan_devices_set_status(capstan_txn_t *txn, const char *name, Capstan__OpStatus status,
                               const char *reason, int64_t now, bool count_attempt);

/* String guessing (the setting auth-max-failures). The status reason of
 * a device locked by |failures| wrong strings in a row:
 * "locked: 5 wrong authentication strings; capstan device set NAME
 * --operation install re-arms it" (CAPSTAN_AUTH_LOCKED_REASON_MAX is
 * enough). */
#define CAPSTAN_AUTH_LOCKED_REASON_MAX 160
void capstan_auth_locked_reason(unsigned failures, const char *name, Capstan__Operation op,
                                char *buf, size_t len);

/* A wrong authentication string for |name| (|counted|), or a string
 * refused unread because the device is locked (!|counted|): with
 * |counted| auth_failures grows by one. The status becomes FAILED with
 * |reason|, or with the lock reason once auth_failures reaches |max|; the
 * attempt is counted. The reason stored is copied into |stored| (len
 * bytes, may be NULL) and *failures (may be NULL) is the count. */
int capstan_devices_wrong_string(capstan_txn_t *txn, const char *name, bool counted, unsigned max,
                                 const char *reason, int64_t now, char *stored, size_t len,
                                 unsigned *failures);

/* A right authentication string: auth_failures back to 0. Nothing else
 * changes. */
int capstan_devices_clear_wrong_strings(capstan_txn_t *txn, const char *name, int64_t now);

/* The status reason of a throttled device: "retry after HH:MM:SS UTC"
 * (|retry_after| in unix seconds), into |buf| of len bytes
 * (CAPSTAN_THROTTLED_REASON_MAX is enough). */
#define CAPSTAN_THROTTLED_REASON_MAX 48
void capstan_throttled_reason(int64_t retry_after, char *buf, size_t len);

/* The phone was sent RETRY_LATER by the key generation throttle: status
 * THROTTLED, retry_after and the reason above; the attempt was counted
 * when it began. Any later status clears retry_after. */
int capstan_devices_set_throttled(capstan_txn_t *txn, const char *name, int64_t retry_after,
                                  int64_t now);

/* Start-up, before any session: every device still IN_PROGRESS (its
 * server stopped during the operation: killed, crashed, or cut off at the
 * drain deadline) becomes FAILED with CAPSTAN_REASON_INTERRUPTED. Its
 * operation stays scheduled, so the phone's next session runs it again, as
 * after any failed attempt. *count is how many changed. */
int capstan_devices_reconcile_interrupted(capstan_txn_t *txn, int64_t now, size_t *count);

/* The running server's repair after a storage outage: every device
 * IN_PROGRESS whose name is not in |live| (the devices of the sessions
 * running now, sorted with capstan_devices_sort_names; may be NULL when
 * |nlive| is 0) becomes FAILED with |reason|, its audit log saying
 * at=|at|; its operation stays scheduled, as above. *failed is how many
 * changed, *skipped (may be NULL) how many were left to their sessions. */
int capstan_devices_fail_in_progress(capstan_txn_t *txn, int64_t now, const char *reason,
                                     const char *at, char *const *live, size_t nlive,
                                     size_t *failed, size_t *skipped);

/* Sorts |names| for capstan_devices_fail_in_progress. */
void capstan_devices_sort_names(char **names, size_t n);

/* Records a completed delete operation: the device's current LSC fields
 * are cleared (a MIC on record is kept), every certificate of its history
 * that is ISSUED or INSTALLED becomes DELETED, and the status is SUCCEEDED
 * (operation NONE, last_operation DELETE). */
int capstan_devices_record_deleted(capstan_txn_t *txn, const char *name, int64_t now);

/* Re-arms a device for its operation: status PENDING (NONE when the
 * operation is NONE), reason cleared, attempts 0, wrong authentication
 * strings 0 (a locked device accepts strings again). Does not write. */
void capstan_device_rearm(Capstan__Device *d, int64_t now);

#endif
