/* Test identities for the tests/unit/test_files_*.c tests: RSA/EC keys and
 * X.509 certificates made directly with BoringSSL. Included by one .c per
 * executable, so everything is static. */
#ifndef CAPSTAN_TEST_FILES_COMMON_H
#define CAPSTAN_TEST_FILES_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

typedef struct {
  EVP_PKEY *key;
  X509 *cert;
} test_id_t;

static __attribute__((unused)) EVP_PKEY *test_rsa_key(int bits) {
  RSA *rsa = RSA_new();
  BIGNUM *e = BN_new();
  EVP_PKEY *pk = EVP_PKEY_new();
  if (rsa == NULL || e == NULL || pk == NULL || !BN_set_word(e, RSA_F4) ||
      !RSA_generate_key_ex(rsa, bits, e, NULL) || !EVP_PKEY_assign_RSA(pk, rsa)) {
    fprintf(stderr, "RSA key generation failed\n");
    abort();
  }
  BN_free(e);
  return pk;
}

static __attribute__((unused)) EVP_PKEY *test_ec_key(void) {
  EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
  EVP_PKEY *pk = EVP_PKEY_new();
  if (ec == NULL || pk == NULL || !EC_KEY_generate_key(ec) || !EVP_PKEY_assign_EC_KEY(pk, ec)) {
    fprintf(stderr, "EC key generation failed\n");
    abort();
  }
  return pk;
}

/* Adds comma-separated "K=V" pairs of |dn| (no escaping needed in tests) to
 * |name| in the order given (certificate order). */
static __attribute__((unused)) void test_name(X509_NAME *name, const char *dn) {
  char buf[256];
  snprintf(buf, sizeof(buf), "%s", dn);
  for (char *save = NULL, *part = strtok_r(buf, ",", &save); part != NULL;
       part = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(part, '=');
    if (eq == NULL) abort();
    *eq = '\0';
    if (!X509_NAME_add_entry_by_txt(name, part, MBSTRING_UTF8, (const uint8_t *)eq + 1, -1, -1, 0))
      abort();
  }
}

/* A certificate for |key| with subject |dn| and |serial| (big-endian
 * bytes), signed by |issuer| (NULL: self-signed). */
static __attribute__((unused)) X509 *test_cert(EVP_PKEY *key, const char *dn, const uint8_t *serial,
                                               size_t serial_len, const test_id_t *issuer) {
  X509 *x = X509_new();
  BIGNUM *bn = BN_bin2bn(serial, serial_len, NULL);
  ASN1_INTEGER *sn = BN_to_ASN1_INTEGER(bn, NULL);
  if (x == NULL || sn == NULL || !X509_set_version(x, X509_VERSION_3) ||
      !X509_set_serialNumber(x, sn))
    abort();
  test_name(X509_get_subject_name(x), dn);
  if (!X509_set_issuer_name(
          x, issuer ? X509_get_subject_name(issuer->cert) : X509_get_subject_name(x)))
    abort();
  if (!X509_gmtime_adj(X509_getm_notBefore(x), 0) ||
      !X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 365) || !X509_set_pubkey(x, key) ||
      !X509_sign(x, issuer ? issuer->key : key, EVP_sha256()))
    abort();
  ASN1_INTEGER_free(sn);
  BN_free(bn);
  return x;
}

static __attribute__((unused)) test_id_t test_identity(EVP_PKEY *key, const char *dn,
                                                       const uint8_t *serial, size_t serial_len,
                                                       const test_id_t *issuer) {
  test_id_t id = {key, test_cert(key, dn, serial, serial_len, issuer)};
  return id;
}

static __attribute__((unused)) void test_identity_free(test_id_t *id) {
  EVP_PKEY_free(id->key);
  X509_free(id->cert);
  id->key = NULL;
  id->cert = NULL;
}

/* Writes |len| bytes to |path|; aborts on failure. */
static __attribute__((unused)) void test_write_file(const char *path, const uint8_t *data,
                                                    size_t len) {
  FILE *f = fopen(path, "wb");
  if (f == NULL || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
    fprintf(stderr, "cannot write %s\n", path);
    abort();
  }
}

#endif
