/* Worker-thread crypto for CAPF sessions: verifying authentication by
 * existing certificate, issuing LSCs, and checking a phone's certificate
 * request for an external CA. Runs off the loop; touches only
 * its job. */
#include "handlers/capf/jobs.h"

#include <openssl/err.h>
#include <openssl/mem.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/base/log.h"

uint8_t *capf_dup_bytes(const uint8_t *p, size_t n) {
  uint8_t *d = malloc(n ? n : 1);
  if (d && n) memcpy(d, p, n);
  return d;
}

static capf_job_t *job_new(capf_job_kind_t kind, const char *device) {
  capf_job_t *j = calloc(1, sizeof(*j));
  if (j == NULL) return NULL;
  j->kind = kind;
  size_t n = strlen(device);
  if (n > CAPSTAN_CAPF_DEVICE_NAME_MAX) n = CAPSTAN_CAPF_DEVICE_NAME_MAX;
  memcpy(j->device, device, n);
  return j;
}

capf_job_t *capf_job_new_verify(const char *device, uint32_t session_id, int cert_type,
                                capstan_capf_slice_t cert, capstan_capf_slice_t sig1, int sig2_hash,
                                capstan_capf_slice_t sig2, const capstan_capf_slice_t *sudi) {
  capf_job_t *j = job_new(CAPF_JOB_VERIFY, device);
  if (j == NULL) return NULL;
  capf_verify_job_t *v = &j->u.verify;
  v->session_id = session_id;
  v->cert_type = cert_type;
  v->sig2_hash = sig2_hash;
  v->cert_der = capf_dup_bytes(cert.data, cert.len);
  v->cert_len = cert.len;
  v->sig1 = capf_dup_bytes(sig1.data, sig1.len);
  v->sig1_len = sig1.len;
  v->sig2 = capf_dup_bytes(sig2.data, sig2.len);
  v->sig2_len = sig2.len;
  if (sudi != NULL) {
    v->sudi = capf_dup_bytes(sudi->data, sudi->len);
    v->sudi_len = sudi->len;
  }
  if (!v->cert_der || !v->sig1 || !v->sig2 || (sudi != NULL && !v->sudi)) {
    capf_job_free(j);
    return NULL;
  }
  return j;
}

capf_job_t *capf_job_new_issue(const char *device, capstan_capf_slice_t phone_spki, int key_alg,
                               unsigned key_bits, unsigned validity_days) {
  capf_job_t *j = job_new(CAPF_JOB_ISSUE, device);
  if (j == NULL) return NULL;
  capf_issue_job_t *i = &j->u.issue;
  i->phone_spki = capf_dup_bytes(phone_spki.data, phone_spki.len);
  i->phone_spki_len = phone_spki.len;
  i->key_alg = key_alg;
  i->key_bits = key_bits;
  i->validity_days = validity_days;
  if (i->phone_spki == NULL) {
    capf_job_free(j);
    return NULL;
  }
  return j;
}

capf_job_t *capf_job_new_check_csr(const char *device, capstan_capf_slice_t csr,
                                   const uint8_t *phone_spki, size_t phone_spki_len, int key_alg,
                                   unsigned key_bits) {
  capf_job_t *j = job_new(CAPF_JOB_CHECK_CSR, device);
  if (j == NULL) return NULL;
  capf_csr_job_t *c = &j->u.csr;
  c->csr_der = capf_dup_bytes(csr.data, csr.len);
  c->csr_len = csr.len;
  c->phone_spki = capf_dup_bytes(phone_spki, phone_spki_len);
  c->phone_spki_len = phone_spki_len;
  c->key_alg = key_alg;
  c->key_bits = key_bits;
  if (c->csr_der == NULL || c->phone_spki == NULL) {
    capf_job_free(j);
    return NULL;
  }
  return j;
}

void capf_job_free(capf_job_t *j) {
  if (j == NULL) return;
  switch (j->kind) {
    case CAPF_JOB_VERIFY:
      free(j->u.verify.cert_der);
      free(j->u.verify.sig1);
      free(j->u.verify.sig2);
      free(j->u.verify.sudi);
      free(j->u.verify.spki);
      break;
    case CAPF_JOB_ISSUE:
      free(j->u.issue.phone_spki);
      free(j->u.issue.lsc_der);
      free(j->u.issue.lsc_spki);
      break;
    case CAPF_JOB_CHECK_CSR:
      free(j->u.csr.csr_der);
      free(j->u.csr.phone_spki);
      break;
  }
  free(j);
}

/* The certificate must be the named device's own: an LSC's CN is the device
 * name (R8), a MIC's is "<model>-<device name>" (CP-7962G-SEP...). Without
 * this, a phone holding any trusted certificate could authenticate as any
 * device, get its LSC and have its configuration encrypted for its key. */
static int cert_names_device(X509 *cert, const char *device) {
  X509_NAME *subject = X509_get_subject_name(cert);
  int idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (idx < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, idx) >= 0) return 0;
  uint8_t *cn = NULL;
  int n = ASN1_STRING_to_UTF8(&cn, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx)));
  if (n < 0) return 0;
  size_t len = (size_t)n, dlen = strlen(device);
  int ok =
      (len == dlen && memcmp(cn, device, dlen) == 0) ||
      (len > dlen + 1 && cn[len - dlen - 1] == '-' && memcmp(cn + len - dlen, device, dlen) == 0);
  OPENSSL_free(cn);
  return ok;
}

static void verify_run(capf_job_t *j) {
  capf_verify_job_t *v = &j->u.verify;
  X509 *cert = NULL;
  EVP_PKEY *key = NULL;
  X509 *sudi = NULL;
  j->status = CAPSTAN_EACCES;
  j->why = "authentication failed";
  if (capstan_pki_parse_cert(v->cert_der, v->cert_len, &cert) < 0) {
    j->why = "certificate malformed";
    goto out;
  }
  key = X509_get_pubkey(cert);
  if (key == NULL) goto out;
  /* auth_data = DEVICE_NAME | 0x00 | certificate DER */
  size_t name_len = strlen(j->device);
  size_t data_len = name_len + 1 + v->cert_len;
  uint8_t *data = malloc(data_len);
  if (data == NULL) goto out;
  memcpy(data, j->device, name_len);
  data[name_len] = 0;
  memcpy(data + name_len + 1, v->cert_der, v->cert_len);
  int ok =
      capstan_pki_verify_signed_data(key, CAPSTAN_CAPF_HASH_SHA1, data, data_len, v->sig1,
                                     v->sig1_len) == 0 &&
      capstan_pki_verify_signed_data(key, v->sig2_hash, data, data_len, v->sig2, v->sig2_len) == 0;
  free(data);
  if (!ok) goto out;
  if (capstan_pki_verify_chain(cert, v->intermediates, v->trust) < 0) {
    j->why = v->cert_type == CAPSTAN_CAPF_CERT_MIC ? "MIC invalid" : "LSC invalid";
    goto out;
  }
  if (!cert_names_device(cert, j->device)) {
    j->why = "certificate issued to another device";
    goto out;
  }
  if (v->sudi != NULL) {
    if (capstan_pki_verify_sudi(v->sudi, v->sudi_len, v->session_id, &sudi) < 0) {
      j->why = "SUDI signature invalid";
      goto out;
    }
    /* The SUDI counts only when its issuer is trusted; an untrusted SUDI is
     * not a failure, just not a second identity. */
    if (capstan_pki_verify_chain(sudi, NULL, v->trust) < 0) {
      LOG_DEBUG("event=capf_sudi_untrusted device=%s", j->device);
    }
  }
  if (capstan_pki_public_key_to_der(key, &v->spki, &v->spki_len) < 0) {
    j->status = CAPSTAN_ENOMEM;
    goto out;
  }
  capstan_pki_md5hash(v->cert_der, v->cert_len, v->md5);
  j->status = 0;
  j->why = NULL;
out:
  X509_free(sudi);
  EVP_PKEY_free(key);
  X509_free(cert);
}

static void issue_run(capf_job_t *j) {
  capf_issue_job_t *i = &j->u.issue;
  EVP_PKEY *key = NULL;
  j->status = capstan_pki_check_public_key(i->phone_spki, i->phone_spki_len, i->key_alg,
                                           i->key_bits, &key, &j->why);
  if (j->status < 0) return;
  j->status = capstan_pki_issue_lsc(i->capf, j->device, key, i->validity_days, i->serial,
                                    &i->lsc_der, &i->lsc_len, &i->not_after);
  if (j->status == 0) {
    capstan_pki_md5hash(i->lsc_der, i->lsc_len, i->md5);
    j->status = capstan_pki_public_key_to_der(key, &i->lsc_spki, &i->lsc_spki_len);
  } else {
    j->why = "signing the LSC failed";
  }
  EVP_PKEY_free(key);
}

/* The request's CN must be exactly the device name (an LSC names its
 * device, R8; a MIC-style "<model>-<name>" is not a request's subject). */
static int request_names_device(X509_REQ *req, const char *device) {
  X509_NAME *subject = X509_REQ_get_subject_name(req);
  int idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (idx < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, idx) >= 0) return 0;
  uint8_t *cn = NULL;
  int n = ASN1_STRING_to_UTF8(&cn, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx)));
  if (n < 0) return 0;
  int ok = (size_t)n == strlen(device) && memcmp(cn, device, (size_t)n) == 0;
  OPENSSL_free(cn);
  return ok;
}

/* Everything capf-protocol.md asks of a phone's request before a CA sees
 * it: the key is the one the device asked for and the phone sent in
 * KEY_GEN_RESPONSE, the request is signed by that key, and it names the
 * device. */
static void check_csr_run(capf_job_t *j) {
  capf_csr_job_t *c = &j->u.csr;
  EVP_PKEY *phone_key = NULL, *req_key = NULL;
  X509_REQ *req = NULL;
  uint8_t *req_spki = NULL;
  size_t req_spki_len = 0;
  j->status = capstan_pki_check_public_key(c->phone_spki, c->phone_spki_len, c->key_alg,
                                           c->key_bits, &phone_key, &j->why);
  if (j->status < 0) goto out;
  j->status = CAPSTAN_EACCES;
  const uint8_t *p = c->csr_der;
  req = d2i_X509_REQ(NULL, &p, (long)c->csr_len);
  if (req == NULL || p != c->csr_der + c->csr_len) {
    j->why = "certificate request malformed";
    goto out;
  }
  req_key = X509_REQ_get_pubkey(req);
  if (req_key == NULL || capstan_pki_public_key_to_der(req_key, &req_spki, &req_spki_len) < 0) {
    j->why = "certificate request malformed";
    goto out;
  }
  if (X509_REQ_verify(req, req_key) != 1) {
    j->why = "certificate request signature invalid";
    goto out;
  }
  if (req_spki_len != c->phone_spki_len || memcmp(req_spki, c->phone_spki, req_spki_len) != 0) {
    j->why = "certificate request is for another key";
    goto out;
  }
  if (!request_names_device(req, j->device)) {
    j->why = "certificate request names another device";
    goto out;
  }
  j->status = 0;
  j->why = NULL;
out:
  ERR_clear_error();
  free(req_spki);
  EVP_PKEY_free(req_key);
  EVP_PKEY_free(phone_key);
  X509_REQ_free(req);
}

void capf_job_run(capf_job_t *j) {
  switch (j->kind) {
    case CAPF_JOB_VERIFY:
      verify_run(j);
      return;
    case CAPF_JOB_ISSUE:
      issue_run(j);
      return;
    case CAPF_JOB_CHECK_CSR:
      check_csr_run(j);
      return;
  }
}
