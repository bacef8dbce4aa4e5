/* Fuzz target for the PKI parsers that take phone bytes: SUDI_DATA
 * (capstan_pki_verify_sudi) and the phone's public key
 * (capstan_pki_check_public_key), plus signature verification with whatever
 * key the input yields. The first input byte selects the session id's low
 * byte; the rest is fed to every parser. Nothing here may crash, leak, or
 * leave BoringSSL errors queued. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "core/base/error.h"
#include "core/pki/pki.h"

static void check_key_requests(const uint8_t *data, size_t size) {
  static const struct {
    int alg;
    unsigned bits;
  } requests[] = {{CAPSTAN_KEY_RSA, 512},  {CAPSTAN_KEY_RSA, 1024}, {CAPSTAN_KEY_RSA, 2048},
                  {CAPSTAN_KEY_RSA, 4096}, {CAPSTAN_KEY_EC, 256},   {CAPSTAN_KEY_EC, 384},
                  {CAPSTAN_KEY_EC, 521}};
  for (size_t i = 0; i < sizeof(requests) / sizeof(requests[0]); i++) {
    EVP_PKEY *key = NULL;
    const char *why = NULL;
    int rc =
        capstan_pki_check_public_key(data, size, requests[i].alg, requests[i].bits, &key, &why);
    if (rc == 0) {
      if (key == NULL || why != NULL) abort();
      /* Use the key the way the server would: verify a signature that is
       * the input itself. It must refuse, never crash. */
      if (capstan_pki_verify_signed_data(key, CAPSTAN_HASH_SHA1, data, size, data, size) == 0) {
        abort();
      }
      EVP_PKEY_free(key);
    } else if (rc != CAPSTAN_EINVAL || key != NULL || why == NULL) {
      abort();
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint32_t session = 0x12345600u | (size > 0 ? data[0] : 0);
  const uint8_t *body = size > 0 ? data + 1 : data;
  size_t body_len = size > 0 ? size - 1 : 0;

  X509 *cert = NULL;
  int rc = capstan_pki_verify_sudi(body, body_len, session, &cert);
  if (rc == 0) {
    if (cert == NULL) abort();
    char *dn = NULL;
    if (capstan_pki_dn_string(X509_get_subject_name(cert), &dn) == 0) free(dn);
    X509_free(cert);
  } else if ((rc != CAPSTAN_EINVAL && rc != CAPSTAN_EACCES) || cert != NULL) {
    abort();
  }

  check_key_requests(body, body_len);

  /* Whatever parses as a certificate also goes through the name printer. */
  X509 *x = NULL;
  if (capstan_pki_parse_cert(body, body_len, &x) == 0) {
    char *dn = NULL;
    if (capstan_pki_dn_string(X509_get_subject_name(x), &dn) == 0) free(dn);
    if (capstan_pki_dn_string(X509_get_issuer_name(x), &dn) == 0) free(dn);
    uint8_t serial[64];
    size_t serial_len;
    (void)capstan_pki_serial_bytes(x, serial, sizeof(serial), &serial_len);
    X509_free(x);
  }
  if (ERR_peek_error() != 0) abort();
  return 0;
}
