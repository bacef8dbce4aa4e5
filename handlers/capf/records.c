/* The only file of handlers/capf that speaks the storage schema: it maps
 * Device records to capf_device_t and capf_record_t to the device
 * operations of storage/devices.h. */
#include "handlers/capf/records.h"

#include <openssl/mem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/base/names.h"
#include "core/pki/pki.h"
#include "core/ca/requests.h"
#include "storage/devices.h"

/* Numbers that cross from the schema to the session unchanged. */
_Static_assert((int)CAPF_OPERATION_NONE == (int)CAPSTAN__OPERATION__OPERATION_NONE &&
                   (int)CAPF_OPERATION_INSTALL == (int)CAPSTAN__OPERATION__OPERATION_INSTALL &&
                   (int)CAPF_OPERATION_DELETE == (int)CAPSTAN__OPERATION__OPERATION_DELETE &&
                   (int)CAPF_OPERATION_TROUBLESHOOT ==
                       (int)CAPSTAN__OPERATION__OPERATION_TROUBLESHOOT,
               "operation numbers");
_Static_assert((int)CAPSTAN_CAPF_AUTH_NONE == (int)CAPSTAN__AUTH_MODE__AUTH_MODE_NONE &&
                   (int)CAPSTAN_CAPF_AUTH_STRING == (int)CAPSTAN__AUTH_MODE__AUTH_MODE_STRING &&
                   (int)CAPSTAN_CAPF_AUTH_NULL_STRING == (int)CAPSTAN__AUTH_MODE__AUTH_MODE_NULL &&
                   (int)CAPSTAN_CAPF_AUTH_LSC == (int)CAPSTAN__AUTH_MODE__AUTH_MODE_LSC &&
                   (int)CAPSTAN_CAPF_AUTH_MIC == (int)CAPSTAN__AUTH_MODE__AUTH_MODE_MIC,
               "auth mode numbers are the wire's AUTH_TYPE");
_Static_assert(CAPSTAN_KEY_RSA == (int)CAPSTAN__KEY_ALG__KEY_ALG_RSA &&
                   CAPSTAN_KEY_EC == (int)CAPSTAN__KEY_ALG__KEY_ALG_EC,
               "key algorithm numbers");
_Static_assert((int)CAPSTAN_CAPF_CERT_LSC == (int)CAPSTAN__CERT_TYPE__CERT_TYPE_LSC &&
                   (int)CAPSTAN_CAPF_CERT_MIC == (int)CAPSTAN__CERT_TYPE__CERT_TYPE_MIC,
               "certificate type numbers are the wire's");

#define KEY_IN_ANOTHER_REQUEST "the phone's key is already in another device's certificate request"

CAPSTAN_DEFINE_NAME_FN(, capf_record_kind_name, capf_record_kind_t, CAPF_RECORD_KINDS, "?")

static void device_from_record(const Capstan__Device *d, capf_device_t *out) {
  *out = (capf_device_t){
      .operation = (capf_operation_t)d->operation,
      .auth_mode = (capstan_capf_auth_type_t)d->auth_mode,
      .key_alg = (int)d->key_alg,
      .key_bits = d->key_bits,
      .completes_by = d->completes_by,
      .issuer = d->issuer != 0 ? (int)d->issuer - 1 : -1,
      .auth_failures = d->auth_failures,
  };
  if (d->auth_string != NULL && strlen(d->auth_string) <= CAPF_AUTH_STRING_MAX) {
    strcpy(out->auth_string, d->auth_string);
  }
}

/* An install may continue a request an external CA has answered (or not
 * yet): the certificate waiting for the phone, or that one is pending. */
static int load_request(capstan_txn_t *txn, const char *name, capf_device_t *out) {
  int rc = capstan_csr_handover(txn, name, &out->handover_der, &out->handover_len,
                                out->handover_key, out->handover_md5);
  if (rc != CAPSTAN_ENOENT) return rc;
  capstan_cert_request_t req = {0};
  rc = capstan_csr_get_for_device(txn, name, &req);
  if (rc == 0) out->request_pending = req.status == CAPSTAN_CSR_PENDING;
  capstan_cert_request_cleanup(&req);
  return rc == CAPSTAN_ENOENT ? 0 : rc;
}

int capf_device_read(capstan_txn_t *txn, const char *name, capf_device_t *out) {
  *out = (capf_device_t){0};
  Capstan__Device *d = NULL;
  int rc = capstan_store_device_get(txn, name, &d);
  if (rc == 0) {
    device_from_record(d, out);
    if (d->operation == CAPSTAN__OPERATION__OPERATION_INSTALL && d->has_cert_request) {
      rc = load_request(txn, name, out);
    }
    capstan__device__free_unpacked(d, NULL);
  }
  if (rc < 0) capf_device_cleanup(out);
  return rc;
}

int capf_device_load(capstan_store_t *store, const char *name, capf_device_t *out) {
  *out = (capf_device_t){0};
  capstan_txn_t txn;
  int rc = capstan_store_begin(store, false, &txn);
  if (rc < 0) return rc;
  rc = capf_device_read(&txn, name, out);
  capstan_store_abort(&txn);
  return rc;
}

void capf_device_cleanup(capf_device_t *d) {
  free(d->handover_der);
  d->handover_der = NULL;
  d->handover_len = 0;
  OPENSSL_cleanse(d->auth_string, sizeof(d->auth_string));
}

capf_record_t *capf_record_new(capf_record_kind_t kind, const char *device) {
  capf_record_t *r = calloc(1, sizeof(*r));
  if (r == NULL) return NULL;
  r->kind = kind;
  r->now = (int64_t)time(NULL);
  size_t n = strlen(device);
  if (n > CAPSTAN_CAPF_DEVICE_NAME_MAX) n = CAPSTAN_CAPF_DEVICE_NAME_MAX;
  memcpy(r->device, device, n);
  return r;
}

void capf_record_free(capf_record_t *r) {
  if (r == NULL) return;
  free(r->der);
  free(r->spki);
  free(r);
}

static Capstan__OpStatus op_status(capf_status_t s) {
  switch (s) {
    case CAPF_STATUS_IN_PROGRESS:
      return CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS;
    case CAPF_STATUS_EXPIRED:
      return CAPSTAN__OP_STATUS__OP_STATUS_EXPIRED;
    case CAPF_STATUS_THROTTLED:
      return CAPSTAN__OP_STATUS__OP_STATUS_THROTTLED;
    case CAPF_STATUS_FAILED:
      break;
  }
  return CAPSTAN__OP_STATUS__OP_STATUS_FAILED;
}

static int audit_status(capstan_txn_t *txn, const capf_record_t *r) {
  const char *op = capstan_operation_name((Capstan__Operation)r->operation);
  switch (r->status) {
    case CAPF_STATUS_IN_PROGRESS:
      if (!r->count_attempt) return 0;
      return capstan_audit_appendf(txn, r->device, "attempt", "peer=%s operation=%s", r->peer, op);
    case CAPF_STATUS_EXPIRED:
      return capstan_audit_appendf(txn, r->device, "operation_expired",
                                   "peer=%s operation=%s reason=\"%s\"", r->peer, op,
                                   r->reason ? r->reason : "deadline passed");
    case CAPF_STATUS_THROTTLED:
      return capstan_audit_appendf(txn, r->device, "throttled",
                                   "peer=%s operation=%s retry_after=%lld", r->peer, op,
                                   (long long)r->retry_after);
    case CAPF_STATUS_FAILED:
      break;
  }
  return capstan_audit_appendf(txn, r->device, "attempt_failed",
                               "peer=%s operation=%s reason=\"%s\"", r->peer, op,
                               r->reason ? r->reason : "unknown");
}

static int audit_succeeded(capstan_txn_t *txn, const capf_record_t *r) {
  return capstan_audit_appendf(txn, r->device, "operation_succeeded", "peer=%s operation=%s",
                               r->peer, capstan_operation_name((Capstan__Operation)r->operation));
}

/* A wrong string, or one refused because the device is locked: the
 * count, the status (the lock reason once locked) and the audit events:
 * "attempt_failed" with the reason stored, and "auth_locked" when this
 * string locked the device. Never the string. */
static int apply_wrong_string(capstan_txn_t *txn, const capf_record_t *r) {
  char stored[CAPSTAN_AUTH_LOCKED_REASON_MAX];
  unsigned failures = 0;
  int counted = r->auth_string == CAPF_AUTH_STRING_WRONG;
  int rc = capstan_devices_wrong_string(txn, r->device, counted, r->auth_max_failures,
                                        r->reason ? r->reason : "authentication failed", r->now,
                                        stored, sizeof(stored), &failures);
  if (rc < 0) return rc;
  const char *op = capstan_operation_name((Capstan__Operation)r->operation);
  rc = capstan_audit_appendf(txn, r->device, "attempt_failed", "peer=%s operation=%s reason=\"%s\"",
                             r->peer, op, stored);
  if (rc == 0 && counted && r->auth_max_failures > 0 && failures == r->auth_max_failures) {
    rc = capstan_audit_appendf(txn, r->device, "auth_locked",
                               "peer=%s operation=%s wrong_strings=%u", r->peer, op, failures);
  }
  return rc;
}

size_t capf_record_reads(const capf_record_t *r,
                         capstan_store_key_t keys[CAPSTAN_STORE_SUBMIT_KEYS_MAX]) {
  keys[0] = (capstan_store_key_t){CAPSTAN_DB_DEVICES, r->device, strlen(r->device)};
  if (r->kind != CAPF_RECORD_INSTALLED) return 1;
  keys[1] = (capstan_store_key_t){CAPSTAN_DB_CERTS, r->serial, sizeof(r->serial)};
  return 2;
}

int capf_record_apply(capstan_txn_t *txn, void *arg) {
  const capf_record_t *r = arg;
  int rc = 0;
  switch (r->kind) {
    case CAPF_RECORD_STATUS:
      if (r->auth_string != CAPF_AUTH_STRING_NONE) return apply_wrong_string(txn, r);
      if (r->status == CAPF_STATUS_THROTTLED) {
        rc = capstan_devices_set_throttled(txn, r->device, r->retry_after, r->now);
        return rc < 0 ? rc : audit_status(txn, r);
      }
      rc = capstan_devices_set_status(txn, r->device, op_status(r->status), r->reason, r->now,
                                      r->count_attempt);
      return rc < 0 ? rc : audit_status(txn, r);
    case CAPF_RECORD_STRING_OK:
      return capstan_devices_clear_wrong_strings(txn, r->device, r->now);
    case CAPF_RECORD_SEEN_CERT:
      rc = capstan_devices_record_seen_cert(txn, r->device, r->der, r->der_len,
                                            (Capstan__CertType)r->cert_type, r->md5, r->spki,
                                            r->spki_len, r->now);
      if (rc < 0) return rc;
      return capstan_audit_appendf(txn, r->device, "cert_seen", "peer=%s type=%s md5=%s", r->peer,
                                   capstan_cert_type_name(r->cert_type), r->md5[0] ? r->md5 : "-");
    case CAPF_RECORD_ISSUED:
      return capstan_devices_record_issued(txn, r->device, r->serial, r->der, r->der_len,
                                           r->not_after, r->md5, r->now);
    case CAPF_RECORD_INSTALLED:
      rc = capstan_devices_record_installed(txn, r->device, r->serial, r->spki, r->spki_len, r->md5,
                                            r->now);
      if (rc == 0 && r->handover) rc = capstan_csr_record_installed(txn, r->device, r->now);
      return rc < 0 ? rc : audit_succeeded(txn, r);
    case CAPF_RECORD_CSR_PENDING:
      rc = capstan_csr_record_pending(txn, r->device, r->der, r->der_len, r->spki, r->spki_len,
                                      r->issuer, r->ca_request_id, r->next_poll_at, r->reason,
                                      r->now);
      if (rc != CAPSTAN_EEXIST) return rc;
      /* Another device's request holds this key: this one fails, that one
       * is untouched. */
      rc = capstan_devices_set_status(txn, r->device, CAPSTAN__OP_STATUS__OP_STATUS_FAILED,
                                      KEY_IN_ANOTHER_REQUEST, r->now, 0);
      return rc < 0 ? rc
                    : capstan_audit_appendf(txn, r->device, "attempt_failed",
                                            "peer=%s operation=install reason=\"%s\"", r->peer,
                                            KEY_IN_ANOTHER_REQUEST);
    case CAPF_RECORD_HANDOVER_REFUSED:
      rc = capstan_csr_record_refused_by_phone(txn, r->device, r->now);
      return rc < 0
                 ? rc
                 : capstan_audit_appendf(
                       txn, r->device, "attempt_failed", "peer=%s operation=install reason=\"%s\"",
                       r->peer, "the phone refused the certificate; a new request follows");
    case CAPF_RECORD_DELETED:
      rc = capstan_devices_record_deleted(txn, r->device, r->now);
      return rc < 0 ? rc : audit_succeeded(txn, r);
    case CAPF_RECORD_FETCHED:
      if (r->der != NULL) {
        rc = capstan_devices_record_seen_cert(txn, r->device, r->der, r->der_len,
                                              (Capstan__CertType)r->cert_type, r->md5, r->spki,
                                              r->spki_len, r->now);
        if (rc < 0) return rc;
      }
      rc = capstan_devices_set_status(txn, r->device, CAPSTAN__OP_STATUS__OP_STATUS_SUCCEEDED,
                                      r->reason, r->now, 0);
      if (rc < 0) return rc;
      rc = r->der != NULL
               ? capstan_audit_appendf(txn, r->device, "cert_fetched", "peer=%s type=%s md5=%s",
                                       r->peer, capstan_cert_type_name(r->cert_type), r->md5)
               : capstan_audit_appendf(txn, r->device, "cert_fetched", "peer=%s none reason=\"%s\"",
                                       r->peer, r->reason ? r->reason : "no certificate");
      return rc < 0 ? rc : audit_succeeded(txn, r);
  }
  return CAPSTAN_EINVAL;
}
