/* TEMPORARY — DELETE AT MERGE. The real definitions of these ca.h
 * functions live on the CA-client branch (core/ca/config.c and the
 * client); they are here only so that the csrstore branch builds and its
 * tests run before that branch lands. capstan_ca_run_sync here does not
 * talk to any CA: it always fails with "CA client not merged yet". */
#include <openssl/bytestring.h>
#include <openssl/mem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/ca/ca.h"
#include "core/pki/pki.h"

void capstan_ca_config_init(capstan_ca_config_t *c) {
  memset(c, 0, sizeof(*c));
  c->timeout_seconds = CAPSTAN_CA_DEFAULT_TIMEOUT_SECONDS;
  c->phone_wait_seconds = CAPSTAN_CA_DEFAULT_PHONE_WAIT_SECONDS;
}

void capstan_ca_config_cleanup(capstan_ca_config_t *c) {
  if (c == NULL) return;
  free(c->ca_bundle_pem);
  for (size_t i = 0; i < c->chain_count; i++) free(c->chain_der[i]);
  free(c->chain_der);
  free(c->chain_lens);
  OPENSSL_cleanse(c->password, sizeof(c->password));
  memset(c, 0, sizeof(*c));
}

int capstan_ca_config_copy(const capstan_ca_config_t *src, capstan_ca_config_t *dst) {
  *dst = *src;
  dst->ca_bundle_pem = NULL;
  dst->chain_der = NULL;
  dst->chain_lens = NULL;
  dst->chain_count = 0;
  if (src->ca_bundle_len > 0) {
    dst->ca_bundle_pem = malloc(src->ca_bundle_len);
    if (dst->ca_bundle_pem == NULL) goto nomem;
    memcpy(dst->ca_bundle_pem, src->ca_bundle_pem, src->ca_bundle_len);
  }
  if (src->chain_count > 0) {
    dst->chain_der = calloc(src->chain_count, sizeof(*dst->chain_der));
    dst->chain_lens = calloc(src->chain_count, sizeof(*dst->chain_lens));
    if (dst->chain_der == NULL || dst->chain_lens == NULL) goto nomem;
    for (size_t i = 0; i < src->chain_count; i++) {
      dst->chain_der[i] = malloc(src->chain_lens[i] ? src->chain_lens[i] : 1);
      if (dst->chain_der[i] == NULL) goto nomem;
      memcpy(dst->chain_der[i], src->chain_der[i], src->chain_lens[i]);
      dst->chain_lens[i] = src->chain_lens[i];
      dst->chain_count++;
    }
  }
  return 0;
nomem:
  capstan_ca_config_cleanup(dst);
  return CAPSTAN_ENOMEM;
}

void capstan_ca_result_cleanup(capstan_ca_result_t *r) {
  if (r == NULL) return;
  free(r->cert_der);
  for (size_t i = 0; i < r->chain_count; i++) free(r->chain_der[i]);
  free(r->chain_der);
  free(r->chain_lens);
  memset(r, 0, sizeof(*r));
}

int capstan_ca_check_certificate(const uint8_t *der, size_t len, STACK_OF(X509) * chain,
                                 const uint8_t *phone_spki, size_t spki_len, const char *device,
                                 STACK_OF(X509) * trust, int64_t now, const char **why) {
  *why = "certificate is unreadable";
  X509 *cert = NULL;
  if (capstan_pki_parse_cert(der, len, &cert) != 0) return CAPSTAN_EACCES;
  int rc = CAPSTAN_EACCES;
  uint8_t *spki = NULL;
  size_t n = 0;
  EVP_PKEY *key = X509_get_pubkey(cert);
  int keyrc = key != NULL ? capstan_pki_public_key_to_der(key, &spki, &n) : CAPSTAN_EINVAL;
  EVP_PKEY_free(key);
  if (keyrc != 0 || n != spki_len || memcmp(spki, phone_spki, n) != 0) {
    *why = "certificate is for another key";
    goto done;
  }
  char cn[256];
  int cnlen =
      X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
  if (cnlen <= 0 || (size_t)cnlen != strlen(cn) || strcmp(cn, device) != 0) {
    *why = "certificate names another device";
    goto done;
  }
  uint32_t ku = X509_get_key_usage(cert);
  if (!(X509_get_extension_flags(cert) & EXFLAG_KUSAGE) || !(ku & KU_DIGITAL_SIGNATURE)) {
    *why = "certificate lacks digitalSignature";
    goto done;
  }
  if (!(ku & KU_KEY_ENCIPHERMENT)) {
    *why = "certificate lacks keyEncipherment";
    goto done;
  }
  int64_t nb = 0, na = 0;
  if (capstan_pki_cert_validity(cert, &nb, &na) != 0 || now < nb || now > na) {
    *why = "certificate is not valid now";
    goto done;
  }
  if (trust == NULL || capstan_pki_verify_chain(cert, chain, trust) != 0) {
    *why = "certificate does not chain to CAPF-trust";
    goto done;
  }
  *why = NULL;
  rc = 0;
done:
  free(spki);
  X509_free(cert);
  return rc;
}

int capstan_ca_run_sync(capstan_issuer_t issuer, const capstan_ca_config_t *cfg, capstan_ca_op_t op,
                        capstan_ca_result_t *out) {
  (void)issuer;
  (void)cfg;
  (void)op;
  memset(out, 0, sizeof(*out));
  out->outcome = CAPSTAN_CA_UNAVAILABLE;
  strcpy(out->reason, "CA client not merged yet");
  return CAPSTAN_EIO;
}
