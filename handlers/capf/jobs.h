/* The crypto a CAPF session hands to worker threads, one struct per job:
 * checking a phone's "authentication by existing certificate"
 * (capf_verify_job_t) and signing its LSC (capf_issue_job_t). A job owns
 * copies of its inputs, so the session and the message it came from may go
 * away while it runs; the run functions touch nothing else. */
#ifndef CAPSTAN_HANDLERS_CAPF_JOBS_H
#define CAPSTAN_HANDLERS_CAPF_JOBS_H

#include <openssl/x509.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/pki/pki.h"
#include "handlers/capf/wire.h"
#include "storage/store.h"

/* Inputs: the AUTH_RESPONSE's certificate, signatures and SUDI data.
 * Outputs: the certificate's public key and MD5 for the device record. */
typedef struct capf_verify_job {
  uint32_t session_id; /* what the SUDI signature covers */
  uint8_t *cert_der;
  size_t cert_len;
  int cert_type; /* CAPSTAN_CAPF_CERT_LSC or _MIC */
  uint8_t *sig1;
  size_t sig1_len;
  uint8_t *sig2;
  size_t sig2_len;
  int sig2_hash;
  uint8_t *sudi; /* NULL when the phone sent none */
  size_t sudi_len;
  STACK_OF(X509) * trust;         /* anchors; borrowed from the identity snapshot */
  STACK_OF(X509) * intermediates; /* untrusted (the online CA's chain); borrowed, may be NULL */
  uint8_t *spki;
  size_t spki_len;
  char md5[33];
} capf_verify_job_t;

/* Inputs: the phone's new public key and the key it was asked for.
 * Outputs: the signed LSC. */
typedef struct capf_issue_job {
  uint8_t *phone_spki;
  size_t phone_spki_len;
  int key_alg;
  unsigned key_bits;
  unsigned validity_days;
  const capstan_identity_t *capf; /* signer; borrowed from the identity snapshot */
  uint8_t serial[CAPSTAN_SERIAL_LEN];
  uint8_t *lsc_der;
  size_t lsc_len;
  uint8_t *lsc_spki;
  size_t lsc_spki_len;
  char md5[33];
  int64_t not_after;
} capf_issue_job_t;

/* Inputs: the phone's certificate request (CERT_REQUEST, extension) and the
 * public key of its KEY_GEN_RESPONSE, and the key the device asked for.
 * The request is checked before anything goes to a CA (capf-protocol.md
 * "Certificate requests from the phone"). */
typedef struct capf_csr_job {
  uint8_t *csr_der;
  size_t csr_len;
  uint8_t *phone_spki;
  size_t phone_spki_len;
  int key_alg;
  unsigned key_bits;
} capf_csr_job_t;

typedef enum { CAPF_JOB_VERIFY, CAPF_JOB_ISSUE, CAPF_JOB_CHECK_CSR } capf_job_kind_t;

/* A job as the session and its host pass it around: which one, for which
 * device, and how it ended. */
typedef struct capf_job {
  uv_work_t req; /* the host's: how it queues the job (req.data is free) */
  capf_job_kind_t kind;
  char device[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1];
  int status;      /* 0, or a negative error: CAPSTAN_EACCES refused, ENOMEM, EIO */
  const char *why; /* static reason when status < 0, for the device record */
  union {
    capf_verify_job_t verify;
    capf_issue_job_t issue;
    capf_csr_job_t csr;
  } u;
} capf_job_t;

/* A verify job for |device| with copies of the message's fields. |sudi|
 * may be NULL. NULL when out of memory. */
capf_job_t *capf_job_new_verify(const char *device, uint32_t session_id, int cert_type,
                                capstan_capf_slice_t cert, capstan_capf_slice_t sig1, int sig2_hash,
                                capstan_capf_slice_t sig2, const capstan_capf_slice_t *sudi);

/* An issue job for |device| with a copy of the phone's public key. NULL
 * when out of memory. */
capf_job_t *capf_job_new_issue(const char *device, capstan_capf_slice_t phone_spki, int key_alg,
                               unsigned key_bits, unsigned validity_days);

/* A CSR check job for |device| with copies of the request and the phone's
 * public key. NULL when out of memory. */
capf_job_t *capf_job_new_check_csr(const char *device, capstan_capf_slice_t csr,
                                   const uint8_t *phone_spki, size_t phone_spki_len, int key_alg,
                                   unsigned key_bits);

/* Runs |j| (a worker thread): sets status, why and the outputs. The
 * borrowed trust or signer must have been filled in by the host. */
void capf_job_run(capf_job_t *j);

/* Frees |j| and every buffer it still owns (NULL it to keep one). NULL is
 * ignored. */
void capf_job_free(capf_job_t *j);

/* A copy of |n| bytes (malloc; 1 byte for n == 0), or NULL. */
uint8_t *capf_dup_bytes(const uint8_t *p, size_t n);

#endif
