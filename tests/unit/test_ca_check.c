/* capstan_ca_check_certificate: every rule, with certificates made here
 * with BoringSSL (EC P-256 keys: fast under the sanitizers too). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/ca/ca.h"

static EVP_PKEY *ec_key(void) {
  EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
  assert_non_null(ec);
  assert_int_equal(EC_KEY_generate_key(ec), 1);
  EVP_PKEY *k = EVP_PKEY_new();
  assert_int_equal(EVP_PKEY_assign_EC_KEY(k, ec), 1);
  return k;
}

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
  X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &ctx, nid, value);
  assert_non_null(ext);
  assert_int_equal(X509_add_ext(x, ext, -1), 1);
  X509_EXTENSION_free(ext);
}

/* |cn| NULL: no CN; |ku| NULL: no keyUsage; |issuer| NULL: self-signed. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, const char *ku, EVP_PKEY *signer,
                       X509 *issuer, int64_t not_before, int64_t not_after, int is_ca) {
  static long serial = 1;
  X509 *x = X509_new();
  assert_non_null(x);
  assert_int_equal(X509_set_version(x, X509_VERSION_3), 1);
  ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
  X509_NAME *name = X509_NAME_new();
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const uint8_t *)"capstan test", -1, -1, 0);
  if (cn) X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const uint8_t *)cn, -1, -1, 0);
  X509_set_subject_name(x, name);
  X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
  X509_NAME_free(name);
  ASN1_TIME_set(X509_getm_notBefore(x), (time_t)not_before);
  ASN1_TIME_set(X509_getm_notAfter(x), (time_t)not_after);
  assert_int_equal(X509_set_pubkey(x, key), 1);
  add_ext(x, issuer, NID_basic_constraints, is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
  if (ku) add_ext(x, issuer, NID_key_usage, ku);
  assert_true(X509_sign(x, signer, EVP_sha256()) > 0);
  return x;
}

static uint8_t *der_of(X509 *x, size_t *len) {
  uint8_t *buf = NULL;
  int n = i2d_X509(x, &buf);
  assert_true(n > 0);
  *len = (size_t)n;
  return buf;
}

static uint8_t *spki_of(EVP_PKEY *k, size_t *len) {
  uint8_t *buf = NULL;
  int n = i2d_PUBKEY(k, &buf);
  assert_true(n > 0);
  *len = (size_t)n;
  return buf;
}

typedef struct fixture {
  int64_t now;
  EVP_PKEY *root_key, *int_key, *other_key, *phone_key, *stranger_key;
  X509 *root, *intermediate, *other_root;
  STACK_OF(X509) * trust;
  uint8_t *spki;
  size_t spki_len;
} fixture_t;

static fixture_t F;

static int setup(void **state) {
  (void)state;
  F.now = (int64_t)time(NULL);
  F.root_key = ec_key();
  F.int_key = ec_key();
  F.other_key = ec_key();
  F.phone_key = ec_key();
  F.stranger_key = ec_key();
  const char *ca_ku = "critical,keyCertSign,cRLSign";
  F.root = make_cert(F.root_key, "test root", ca_ku, F.root_key, NULL, F.now - 3600,
                     F.now + 86400 * 365, 1);
  F.intermediate = make_cert(F.int_key, "test issuing", ca_ku, F.root_key, F.root, F.now - 3600,
                             F.now + 86400 * 365, 1);
  F.other_root = make_cert(F.other_key, "other root", ca_ku, F.other_key, NULL, F.now - 3600,
                           F.now + 86400 * 365, 1);
  F.trust = sk_X509_new_null();
  X509_up_ref(F.root);
  sk_X509_push(F.trust, F.root);
  F.spki = spki_of(F.phone_key, &F.spki_len);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  sk_X509_pop_free(F.trust, X509_free);
  X509_free(F.root);
  X509_free(F.intermediate);
  X509_free(F.other_root);
  EVP_PKEY_free(F.root_key);
  EVP_PKEY_free(F.int_key);
  EVP_PKEY_free(F.other_key);
  EVP_PKEY_free(F.phone_key);
  EVP_PKEY_free(F.stranger_key);
  OPENSSL_free(F.spki);
  return 0;
}

#define GOOD_KU "critical,digitalSignature,keyEncipherment"

/* Checks |x| for device "SEP001122334455" with the fixture's trust. */
static int check(X509 *x, STACK_OF(X509) * chain, STACK_OF(X509) * trust, const char **why) {
  size_t len;
  uint8_t *der = der_of(x, &len);
  int rc = capstan_ca_check_certificate(der, len, chain, F.spki, F.spki_len, "SEP001122334455",
                                        trust, F.now, why);
  OPENSSL_free(der);
  X509_free(x);
  return rc;
}

static void expect_fail(X509 *x, STACK_OF(X509) * chain, const char *sentence) {
  const char *why = NULL;
  assert_int_equal(check(x, chain, F.trust, &why), CAPSTAN_EACCES);
  assert_non_null(why);
  if (!strstr(why, sentence)) fail_msg("expected \"%s\", got \"%s\"", sentence, why);
}

static X509 *good_leaf(void) {
  return make_cert(F.phone_key, "SEP001122334455", GOOD_KU, F.root_key, F.root, F.now - 60,
                   F.now + 86400, 0);
}

static void test_good_certificate_passes(void **state) {
  (void)state;
  const char *why = "unset";
  assert_int_equal(check(good_leaf(), NULL, F.trust, &why), 0);
  assert_null(why);
}

static void test_device_name_is_case_insensitive(void **state) {
  (void)state;
  const char *why = NULL;
  X509 *x = make_cert(F.phone_key, "sep001122334455", GOOD_KU, F.root_key, F.root, F.now - 60,
                      F.now + 86400, 0);
  assert_int_equal(check(x, NULL, F.trust, &why), 0);
}

static void test_other_key_fails(void **state) {
  (void)state;
  expect_fail(make_cert(F.stranger_key, "SEP001122334455", GOOD_KU, F.root_key, F.root, F.now - 60,
                        F.now + 86400, 0),
              NULL, "certificate is for another key");
}

static void test_other_device_fails(void **state) {
  (void)state;
  expect_fail(make_cert(F.phone_key, "SEP999999999999", GOOD_KU, F.root_key, F.root, F.now - 60,
                        F.now + 86400, 0),
              NULL, "certificate names another device");
}

static void test_no_cn_fails(void **state) {
  (void)state;
  expect_fail(
      make_cert(F.phone_key, NULL, GOOD_KU, F.root_key, F.root, F.now - 60, F.now + 86400, 0), NULL,
      "certificate names no device");
}

static void test_no_key_usage_fails(void **state) {
  (void)state;
  expect_fail(make_cert(F.phone_key, "SEP001122334455", NULL, F.root_key, F.root, F.now - 60,
                        F.now + 86400, 0),
              NULL, "certificate has no keyUsage");
}

static void test_sign_only_fails(void **state) {
  (void)state;
  expect_fail(make_cert(F.phone_key, "SEP001122334455", "critical,digitalSignature", F.root_key,
                        F.root, F.now - 60, F.now + 86400, 0),
              NULL, "certificate lacks keyEncipherment");
}

static void test_encipher_only_fails(void **state) {
  (void)state;
  expect_fail(make_cert(F.phone_key, "SEP001122334455", "critical,keyEncipherment", F.root_key,
                        F.root, F.now - 60, F.now + 86400, 0),
              NULL, "certificate lacks digitalSignature");
}

static void test_expired_fails(void **state) {
  (void)state;
  expect_fail(make_cert(F.phone_key, "SEP001122334455", GOOD_KU, F.root_key, F.root,
                        F.now - 86400 * 30, F.now - 86400, 0),
              NULL, "certificate is not valid now (expired)");
}

static void test_not_yet_valid_fails(void **state) {
  (void)state;
  expect_fail(make_cert(F.phone_key, "SEP001122334455", GOOD_KU, F.root_key, F.root, F.now + 86400,
                        F.now + 86400 * 30, 0),
              NULL, "certificate is not valid now (not yet valid)");
}

static void test_other_ca_fails(void **state) {
  (void)state;
  expect_fail(make_cert(F.phone_key, "SEP001122334455", GOOD_KU, F.other_key, F.other_root,
                        F.now - 60, F.now + 86400, 0),
              NULL, "certificate does not chain to CAPF-trust");
}

static void test_intermediate_through_chain(void **state) {
  (void)state;
  STACK_OF(X509) *chain = sk_X509_new_null();
  X509_up_ref(F.intermediate);
  sk_X509_push(chain, F.intermediate);
  const char *why = NULL;
  X509 *x = make_cert(F.phone_key, "SEP001122334455", GOOD_KU, F.int_key, F.intermediate,
                      F.now - 60, F.now + 86400, 0);
  assert_int_equal(check(x, chain, F.trust, &why), 0);
  /* Without the intermediate it does not chain. */
  x = make_cert(F.phone_key, "SEP001122334455", GOOD_KU, F.int_key, F.intermediate, F.now - 60,
                F.now + 86400, 0);
  expect_fail(x, NULL, "certificate does not chain to CAPF-trust");
  sk_X509_pop_free(chain, X509_free);
}

static void test_empty_trust_fails(void **state) {
  (void)state;
  const char *why = NULL;
  STACK_OF(X509) *empty = sk_X509_new_null();
  assert_int_equal(check(good_leaf(), NULL, empty, &why), CAPSTAN_EACCES);
  assert_non_null(strstr(why, "does not chain to CAPF-trust"));
  sk_X509_free(empty);
  assert_int_equal(check(good_leaf(), NULL, NULL, &why), CAPSTAN_EACCES);
}

static void test_garbage_fails(void **state) {
  (void)state;
  const char *why = NULL;
  static const uint8_t junk[] = {0x30, 0x03, 0x02, 0x01, 0x01, 0xff};
  assert_int_equal(capstan_ca_check_certificate(junk, sizeof junk, NULL, F.spki, F.spki_len,
                                                "SEP001122334455", F.trust, F.now, &why),
                   CAPSTAN_EACCES);
  assert_string_equal(why, "certificate does not parse");
  /* Trailing bytes after a good certificate are not accepted either. */
  size_t len;
  X509 *x = good_leaf();
  uint8_t *der = der_of(x, &len);
  uint8_t *longer = malloc(len + 1);
  memcpy(longer, der, len);
  longer[len] = 0;
  assert_int_equal(capstan_ca_check_certificate(longer, len + 1, NULL, F.spki, F.spki_len,
                                                "SEP001122334455", F.trust, F.now, &why),
                   CAPSTAN_EACCES);
  free(longer);
  OPENSSL_free(der);
  X509_free(x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_good_certificate_passes),
      cmocka_unit_test(test_device_name_is_case_insensitive),
      cmocka_unit_test(test_other_key_fails),
      cmocka_unit_test(test_other_device_fails),
      cmocka_unit_test(test_no_cn_fails),
      cmocka_unit_test(test_no_key_usage_fails),
      cmocka_unit_test(test_sign_only_fails),
      cmocka_unit_test(test_encipher_only_fails),
      cmocka_unit_test(test_expired_fails),
      cmocka_unit_test(test_not_yet_valid_fails),
      cmocka_unit_test(test_other_ca_fails),
      cmocka_unit_test(test_intermediate_through_chain),
      cmocka_unit_test(test_empty_trust_fails),
      cmocka_unit_test(test_garbage_fails),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
