/* Phones' certificate requests kept for a CA (external-ca.md "Offline CA",
 * and online requests a CA left pending): records.proto's CertRequest as a
 * plain struct, and every change to them, each inside the caller's write
 * transaction with its audit event. The session (handlers/capf/records.c),
 * the server's poller and `capstan csr` all change requests through here.
 *
 * A request is keyed by the SHA-256 of its public key: a certificate is
 * matched to its request by key (R10) with one lookup. A device points at
 * its latest request (Device.cert_request); a newer request supersedes the
 * older (STALE). */
#ifndef CAPSTAN_CORE_CA_REQUESTS_H
#define CAPSTAN_CORE_CA_REQUESTS_H

#include <openssl/base.h>
#include <openssl/x509.h>
#include <stddef.h>
#include <stdint.h>

#include "core/base/phone.h"
#include "storage/store.h"

/* records.proto's CsrStatus. */
typedef enum {
  CAPSTAN_CSR_PENDING = 0,
  CAPSTAN_CSR_ISSUED = 1,
  CAPSTAN_CSR_STALE = 2,
  CAPSTAN_CSR_INSTALLED = 3,
  CAPSTAN_CSR_FAILED = 4,
} capstan_csr_status_t;

/* "pending", "issued", "stale", "installed", "failed". */
const char *capstan_csr_status_name(capstan_csr_status_t st);
int capstan_csr_status_parse(const char *name, capstan_csr_status_t *out);

typedef struct capstan_cert_request {
  uint8_t key[32]; /* SHA-256 of spki */
  char device[CAPSTAN_DEVICE_NAME_MAX + 1];
  uint8_t *csr_der; /* owned */
  size_t csr_len;
  uint8_t *spki; /* owned */
  size_t spki_len;
  int64_t created_at, status_changed_at;
  capstan_csr_status_t status;
  unsigned issuer; /* capstan_issuer_t it was made for */
  char ca_request_id[64];
  int64_t next_poll_at;
  unsigned polls;
  char reason[256];
  int has_cert;
  uint8_t cert_key[CAPSTAN_SERIAL_LEN]; /* certs database key (has_cert) */
} capstan_cert_request_t;

void capstan_cert_request_cleanup(capstan_cert_request_t *r);

/* The key of a request for |spki|. */
void capstan_csr_key(const uint8_t *spki, size_t spki_len, uint8_t out[32]);

/* A phone's checked request becomes |device|'s pending request (issuer,
 * created at |now|; the same request again from the same device keeps its
 * first created_at, so a phone that retries does not look younger. The
 * device must exist: CAPSTAN_ENOENT otherwise. Issuer,
 * and for an online CA's "pending" its request id, next poll and the CA's
 * words in |reason|; NULL/0 otherwise). The device's earlier request, if
 * pending or issued and not this one, becomes STALE ("superseded by a
 * newer request"; an issued certificate of it becomes stale too). The
 * device's status becomes PENDING with a reason an operator understands
 * ("waiting for the offline CA: capstan csr export" / "waiting for the CA
 * to approve request 42"). Audit: csr_pending. CAPSTAN_EEXIST: another
 * device's pending or issued request has this key (nothing changes). */
int capstan_csr_record_pending(capstan_txn_t *txn, const char *device, const uint8_t *csr_der,
                               size_t csr_len, const uint8_t *spki, size_t spki_len,
                               unsigned issuer, const char *ca_request_id, int64_t next_poll_at,
                               const char *reason, int64_t now);

/* The CA issued |cert_der| (already checked with
 * capstan_ca_check_certificate) for the request |key|: the certificate is
 * recorded like a self-signed LSC (certs database keyed by
 * capstan_csr_cert_key, device history, cert_issued audit event), the
 * request becomes ISSUED with it, and the phone gets it in its next
 * session (the device's status says so when this is its latest request).
 * CAPSTAN_ENOENT: no such request (or its device is gone); CAPSTAN_EEXIST
 * when the request is not PENDING (stale, failed, already issued);
 * CAPSTAN_EINVAL when |cert_der| does not parse or is not for the
 * request's key. These refusals come before any write. */
int capstan_csr_record_issued(capstan_txn_t *txn, const uint8_t key[32], const uint8_t *cert_der,
                              size_t cert_len, const uint8_t *const *chain_der,
                              const size_t *chain_lens, size_t chain_count, int64_t now);

/* The 16-byte certs-database key of a certificate from an external CA:
 * its own serial when that is 16 bytes, else the first 16 bytes of the
 * SHA-256 of its DER (a CA's serial may be 1 to 20 bytes). */
void capstan_csr_cert_key(const uint8_t *cert_der, size_t cert_len,
                          uint8_t out[CAPSTAN_SERIAL_LEN]);

/* The CA refused, or answered with a certificate that failed a check:
 * the request becomes FAILED with |reason|, and so does the device
 * (status FAILED, the same reason). */
int capstan_csr_record_failed(capstan_txn_t *txn, const uint8_t key[32], const char *reason,
                              int64_t now);

/* Still pending after a poll: next poll time, count, the CA's words. */
int capstan_csr_record_polled(capstan_txn_t *txn, const uint8_t key[32], int64_t next_poll_at,
                              const char *ca_request_id, const char *reason, int64_t now);

/* The phone refused the handed-over certificate: its request and the
 * certificate become STALE ("the phone refused the certificate").
 * CAPSTAN_ENOENT when the device's latest request is not ISSUED. */
int capstan_csr_record_refused_by_phone(capstan_txn_t *txn, const char *device, int64_t now);

/* The phone stored it: the request becomes INSTALLED (the certificate's
 * own record is the session's: capstan_devices_record_installed).
 * CAPSTAN_ENOENT when the device's latest request is not ISSUED. */
int capstan_csr_record_installed(capstan_txn_t *txn, const char *device, int64_t now);

/* Reads one request. CAPSTAN_ENOENT when there is none. */
int capstan_csr_get(capstan_txn_t *txn, const uint8_t key[32], capstan_cert_request_t *out);
/* |device|'s latest request (Device.cert_request). CAPSTAN_ENOENT: none. */
int capstan_csr_get_for_device(capstan_txn_t *txn, const char *device, capstan_cert_request_t *out);

/* Calls |fn| for every request (key order); |fn| returning non-zero stops
 * the walk and is returned. The request is valid only during the call. */
typedef int (*capstan_csr_visit_fn)(const capstan_cert_request_t *r, void *arg);
int capstan_csr_each(capstan_txn_t *txn, capstan_csr_visit_fn fn, void *arg);

/* Pending requests, and the oldest one's created_at (0 when none). */
int capstan_csr_count_pending(capstan_txn_t *txn, uint64_t *count, int64_t *oldest);

/* Deletes one request (audit csr_deleted); the device's pointer is cleared
 * when it is its latest. */
int capstan_csr_delete(capstan_txn_t *txn, const uint8_t key[32], int64_t now);

/* The certificate waiting for |device|'s next session: its latest request
 * is ISSUED. Fills |der| (owned), its certs key and md5hash. ENOENT: none. */
int capstan_csr_handover(capstan_txn_t *txn, const char *device, uint8_t **der, size_t *len,
                         uint8_t cert_key[CAPSTAN_SERIAL_LEN], char md5[33]);

#endif
