/* Unit tests for capstan's one vocabulary of phone concepts
 * (core/base/phone.h). The agreement with the storage schema and the CAPF
 * wire values is checked at compile time (storage/devices.c,
 * handlers/capf/wire.c); these tests check the tables and rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/base/error.h"
#include "core/base/phone.h"

static void test_keys(void **state) {
  (void)state;
  assert_string_equal(capstan_key_alg_name(CAPSTAN_KEY_RSA), "rsa");
  assert_string_equal(capstan_key_alg_name(CAPSTAN_KEY_EC), "ec");
  assert_string_equal(capstan_key_alg_name(7), "?");
  static const unsigned rsa[] = {512, 1024, 2048, 3072, 4096};
  for (size_t i = 0; i < sizeof(rsa) / sizeof(rsa[0]); i++) {
    assert_true(capstan_key_valid(CAPSTAN_KEY_RSA, rsa[i]));
    assert_false(capstan_key_valid(CAPSTAN_KEY_EC, rsa[i]));
  }
  static const unsigned ec[] = {256, 384, 521};
  for (size_t i = 0; i < sizeof(ec) / sizeof(ec[0]); i++) {
    assert_true(capstan_key_valid(CAPSTAN_KEY_EC, ec[i]));
    assert_false(capstan_key_valid(CAPSTAN_KEY_RSA, ec[i]));
  }
  assert_false(capstan_key_valid(CAPSTAN_KEY_RSA, 8192));
  assert_false(capstan_key_valid(2, 2048));
  assert_string_equal(capstan_key_name(CAPSTAN_KEY_EC, 521), "ec521");
  assert_string_equal(capstan_key_name(CAPSTAN_KEY_EC, 512), "?");
  assert_string_equal(capstan_key_names(),
                      "rsa512,rsa1024,rsa2048,rsa3072,rsa4096,ec256,ec384,ec521");
  int alg = -1;
  unsigned bits = 0;
  assert_int_equal(capstan_key_from_name("rsa3072", &alg, &bits), 0);
  assert_int_equal(alg, CAPSTAN_KEY_RSA);
  assert_int_equal(bits, 3072);
  assert_int_equal(capstan_key_from_name("RSA3072", &alg, &bits), CAPSTAN_EINVAL);
  assert_int_equal(capstan_key_from_name(NULL, &alg, &bits), CAPSTAN_EINVAL);
}

static void test_hashes_and_cert_types(void **state) {
  (void)state;
  assert_int_equal(CAPSTAN_HASH_SHA1, 1);
  assert_int_equal(CAPSTAN_HASH_SHA256, 2);
  assert_int_equal(CAPSTAN_HASH_SHA512, 3);
  assert_string_equal(capstan_hash_name(CAPSTAN_HASH_SHA512), "sha512");
  assert_string_equal(capstan_hash_name(0), "?");
  assert_string_equal(capstan_cert_type_name(CAPSTAN_CERT_UNKNOWN), "unknown");
  assert_string_equal(capstan_cert_type_name(CAPSTAN_CERT_LSC), "lsc");
  assert_string_equal(capstan_cert_type_name(CAPSTAN_CERT_MIC), "mic");
  assert_string_equal(capstan_cert_type_name(3), "?");
}

static void test_auth_modes(void **state) {
  (void)state;
  assert_string_equal(capstan_auth_mode_name(CAPSTAN_AUTH_MODE_NONE), "none");
  assert_string_equal(capstan_auth_mode_name(CAPSTAN_AUTH_MODE_NULL_STRING), "null");
  assert_string_equal(capstan_auth_mode_name(CAPSTAN_AUTH_MODE_MAX + 1), "?");
  assert_string_equal(capstan_auth_mode_names(), "string,null,lsc,mic");
  int mode = -1;
  assert_int_equal(capstan_auth_mode_from_name("mic", &mode), 0);
  assert_int_equal(mode, CAPSTAN_AUTH_MODE_MIC);
  assert_int_equal(capstan_auth_mode_from_name("none", &mode), CAPSTAN_EINVAL);
  assert_int_equal(capstan_auth_mode_from_name(NULL, &mode), CAPSTAN_EINVAL);
  assert_int_equal(mode, CAPSTAN_AUTH_MODE_MIC);
  assert_true(capstan_auth_string_valid("0000"));
  assert_false(capstan_auth_string_valid("000"));
}

static void test_device_names(void **state) {
  (void)state;
  char name[CAPSTAN_DEVICE_NAME_MAX + 2];
  memset(name, 'a', sizeof(name));
  name[CAPSTAN_DEVICE_NAME_MAX] = '\0';
  assert_true(capstan_device_name_valid(name));
  name[CAPSTAN_DEVICE_NAME_MAX] = 'a';
  name[CAPSTAN_DEVICE_NAME_MAX + 1] = '\0';
  assert_false(capstan_device_name_valid(name));
  assert_true(capstan_device_name_valid("SEP58971ECC97C1"));
  assert_false(capstan_device_name_valid("SEP58971ecc97c1"));
  /* Not a MAC name (a non-hex letter), so lower case is fine. */
  assert_true(capstan_device_name_valid("SEP58971ecc97cx"));
}

static void test_device_name_forms(void **state) {
  (void)state;
  assert_int_equal(capstan_device_name_form("SEP58971ECC97C1"), CAPSTAN_DEVICE_NAME_MAC);
  assert_int_equal(capstan_device_name_form("SEP58971ecc97c1"), CAPSTAN_DEVICE_NAME_MAC_LOWER);
  assert_int_equal(capstan_device_name_form("sep58971ECC97C1"), CAPSTAN_DEVICE_NAME_MAC_LOWER);
  /* Short, long, or not hex: a SEP name that is no phone's. */
  assert_int_equal(capstan_device_name_form("SEP1234"), CAPSTAN_DEVICE_NAME_BAD_SEP);
  assert_int_equal(capstan_device_name_form("SEP"), CAPSTAN_DEVICE_NAME_BAD_SEP);
  assert_int_equal(capstan_device_name_form("SEP58971ECC97C12"), CAPSTAN_DEVICE_NAME_BAD_SEP);
  assert_int_equal(capstan_device_name_form("SEP58971ecc97cx"), CAPSTAN_DEVICE_NAME_BAD_SEP);
  assert_int_equal(capstan_device_name_form("SEP58971ECC97G1"), CAPSTAN_DEVICE_NAME_BAD_SEP);
  assert_int_equal(capstan_device_name_form("Sep-lab"), CAPSTAN_DEVICE_NAME_BAD_SEP);
  /* Other forms real devices use, and lab names. */
  assert_int_equal(capstan_device_name_form("CSFjdoe"), CAPSTAN_DEVICE_NAME_OTHER);
  assert_int_equal(capstan_device_name_form("ATA58971ECC97C1"), CAPSTAN_DEVICE_NAME_OTHER);
  assert_int_equal(capstan_device_name_form("phone-1.lab_2"), CAPSTAN_DEVICE_NAME_OTHER);
  assert_int_equal(capstan_device_name_form("SE"), CAPSTAN_DEVICE_NAME_OTHER);
  assert_int_equal(capstan_device_name_form("1phone"), CAPSTAN_DEVICE_NAME_INVALID);
  assert_int_equal(capstan_device_name_form(""), CAPSTAN_DEVICE_NAME_INVALID);
  assert_int_equal(capstan_device_name_form(NULL), CAPSTAN_DEVICE_NAME_INVALID);

  char out[CAPSTAN_DEVICE_NAME_MAX + 1];
  assert_true(capstan_device_name_canonical("sep58971ecc97c1", out, sizeof(out)));
  assert_string_equal(out, "SEP58971ECC97C1");
  assert_true(capstan_device_name_canonical("CSFjdoe", out, sizeof(out)));
  assert_string_equal(out, "CSFjdoe");
  assert_false(capstan_device_name_canonical("SEP58971ECC97C1", out, 15));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_keys),
      cmocka_unit_test(test_hashes_and_cert_types),
      cmocka_unit_test(test_auth_modes),
      cmocka_unit_test(test_device_names),
      cmocka_unit_test(test_device_name_forms),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
