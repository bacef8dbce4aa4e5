/* ITL files (core/files/itl.h): record layout, rules, round trips. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "core/base/error.h"
#include "core/files/itl.h"
#include "tests/unit/test_files_common.h"

static test_id_t g_ca, g_tftp, g_capf, g_capf_old;

static int setup(void **state) {
  (void)state;
  static const uint8_t s1[] = {0x01}, s2[] = {0x00, 0xA1, 0xB2}, s3[] = {0x33}, s4[] = {0x7E, 0x44};
  g_ca = test_identity(test_rsa_key(2048), "C=NZ,O=Example,CN=Root", s1, 1, NULL);
  /* DER serial 00 A1 B2: written as A1 B2. */
  g_tftp = test_identity(test_rsa_key(2048), "CN=tftp.example.net,OU=VTG,O=Example", s2, 3, &g_ca);
  g_capf = test_identity(test_rsa_key(2048), "CN=CAPF-1a2b3c4d,O=Example,C=NZ", s3, 1, NULL);
  g_capf_old = test_identity(test_ec_key(), "CN=CAPF-00000001,O=Example,C=NZ", s4, 2, NULL);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  test_identity_free(&g_ca);
  test_identity_free(&g_tftp);
  test_identity_free(&g_capf);
  test_identity_free(&g_capf_old);
  return 0;
}

static capstan_itl_entry_t g_entries[3];

static capstan_itl_params_t itl_params(const char *filename) {
  g_entries[0] = (capstan_itl_entry_t){g_tftp.cert, CAPSTAN_ITL_ROLE_TFTP, NULL};
  g_entries[1] = (capstan_itl_entry_t){g_capf.cert, CAPSTAN_ITL_ROLE_CAPF, "capf.example.net"};
  g_entries[2] = (capstan_itl_entry_t){g_capf_old.cert, CAPSTAN_ITL_ROLE_CAPF, NULL};
  capstan_itl_params_t p;
  memset(&p, 0, sizeof(p));
  p.signer_cert = g_tftp.cert;
  p.entries = g_entries;
  p.n_entries = 3;
  p.filename = filename;
  p.hash_alg = CAPSTAN_SGN_HASH_SHA512;
  p.signer_version_minor = 1;
  p.timestamp = 1700000001u;
  return p;
}

static void test_filename(void **state) {
  (void)state;
  char name[32];
  assert_int_equal(capstan_itl_device_filename("00112233AABB", name, sizeof(name)), 0);
  assert_string_equal(name, "ITLSEP00112233AABB.tlv");
  assert_int_equal(capstan_itl_device_filename("00112233aabb", name, sizeof(name)), CAPSTAN_EINVAL);
  assert_int_equal(capstan_itl_device_filename("00112233AAB", name, sizeof(name)), CAPSTAN_EINVAL);
  assert_int_equal(capstan_itl_device_filename("00112233AABB", name, 10), CAPSTAN_ERANGE);
}

static void test_round_trip(void **state) {
  (void)state;
  capstan_itl_params_t p = itl_params("ITLSEP00112233AABB.tlv");
  uint8_t *file = NULL;
  size_t len = 0;
  const char *why = NULL;
  assert_int_equal(capstan_itl_build(&p, g_tftp.key, &file, &len, &why), 0);

  /* The header starts VERSION 1.2, HEADER_LENGTH, SIGNER_VERSION 1.1. */
  static const uint8_t head[] = {0x01, 0x00, 0x02, 0x01, 0x02, 0x02, 0x00, 0x02};
  static const uint8_t sv[] = {0x1C, 0x00, 0x02, 0x01, 0x01, 0x03};
  assert_memory_equal(file, head, sizeof(head));
  assert_memory_equal(file + 10, sv, sizeof(sv));

  capstan_itl_info_t *itl = malloc(sizeof(*itl));
  assert_non_null(itl);
  assert_int_equal(capstan_itl_parse(file, len, itl, &why), 0);
  assert_int_equal(itl->header.signer_version_major, 1);
  assert_int_equal(itl->header.signer_version_minor, 1);
  assert_int_equal(itl->header.hash_alg, CAPSTAN_SGN_HASH_SHA512);
  assert_int_equal(itl->n_records, 4);
  static const uint8_t serial[] = {0xA1, 0xB2};
  assert_int_equal(itl->header.serial.len, 2);
  assert_memory_equal(itl->header.serial.data, serial, 2);

  uint16_t roles[] = {CAPSTAN_ITL_ROLE_SAST, CAPSTAN_ITL_ROLE_TFTP, CAPSTAN_ITL_ROLE_CAPF,
                      CAPSTAN_ITL_ROLE_CAPF};
  X509 *certs[] = {g_tftp.cert, g_tftp.cert, g_capf.cert, g_capf_old.cert};
  for (size_t i = 0; i < 4; i++) {
    const capstan_itl_record_t *r = &itl->records[i];
    assert_int_equal(r->role, roles[i]);
    assert_int_equal(capstan_itl_check_record(r, &why), 0);
    uint8_t *der = NULL;
    int n = i2d_X509(certs[i], &der);
    assert_int_equal(r->certificate.len, (size_t)n);
    assert_memory_equal(r->certificate.data, der, (size_t)n);
    OPENSSL_free(der);
  }
  assert_memory_equal(itl->records[0].serial.data, serial, 2);
  assert_int_equal(itl->records[0].subject_name.len,
                   strlen("CN=tftp.example.net,OU=VTG,O=Example"));
  assert_memory_equal(itl->records[0].subject_name.data, "CN=tftp.example.net,OU=VTG,O=Example",
                      itl->records[0].subject_name.len);
  assert_memory_equal(itl->records[0].issuer_name.data, "C=NZ,O=Example,CN=Root",
                      itl->records[0].issuer_name.len);
  assert_null(itl->records[0].dns_name.data);
  assert_int_equal(itl->records[2].dns_name.len, strlen("capf.example.net"));
  assert_memory_equal(itl->records[2].dns_name.data, "capf.example.net", 16);

  /* RSA PUBLIC_KEY is the PKCS#1 RSAPublicKey DER. */
  CBB cbb;
  uint8_t *pk = NULL;
  size_t pk_len = 0;
  assert_true(CBB_init(&cbb, 300));
  assert_true(RSA_marshal_public_key(&cbb, EVP_PKEY_get0_RSA(g_capf.key)));
  assert_true(CBB_finish(&cbb, &pk, &pk_len));
  assert_int_equal(itl->records[2].public_key.len, pk_len);
  assert_memory_equal(itl->records[2].public_key.data, pk, pk_len);
  OPENSSL_free(pk);
  /* EC PUBLIC_KEY is the uncompressed P-256 point: 04 | X | Y. */
  assert_int_equal(itl->records[3].public_key.len, 65);
  assert_int_equal(itl->records[3].public_key.data[0], 0x04);

  /* Record layout of the first record: RECORD_LENGTH counts itself, then
   * SUBJECT_NAME, ROLE 0, ISSUER_NAME, SERIAL_NUMBER in that order. */
  const uint8_t *rec = itl->header.payload.data;
  assert_int_equal(rec[0], CAPSTAN_ITL_TAG_RECORD_LENGTH);
  assert_int_equal(rec[1], 0);
  assert_int_equal(rec[2], 2);
  assert_int_equal((size_t)((rec[3] << 8) | rec[4]), itl->records[0].record_length);
  assert_ptr_equal(itl->records[1].subject_name.data, rec + itl->records[0].record_length + 5 + 3);
  size_t subj = strlen("CN=tftp.example.net,OU=VTG,O=Example") + 1;
  assert_int_equal(rec[5], CAPSTAN_ITL_TAG_SUBJECT_NAME);
  assert_int_equal((rec[6] << 8) | rec[7], subj);
  static const uint8_t role0[] = {CAPSTAN_ITL_TAG_ROLE,       0x00, 0x02, 0x00, 0x00,
                                  CAPSTAN_ITL_TAG_ISSUER_NAME};
  assert_memory_equal(rec + 8 + subj, role0, sizeof(role0));

  assert_int_equal(capstan_sgn_verify(file, len, g_tftp.key, &why), 0);
  file[len - 3] ^= 0x40; /* inside the last certificate's signature */
  assert_int_equal(capstan_sgn_verify(file, len, g_tftp.key, &why), CAPSTAN_EACCES);
  assert_int_equal(capstan_itl_parse(file, len, itl, &why), 0);
  assert_int_equal(capstan_itl_check_record(&itl->records[3], &why), CAPSTAN_EINVAL);
  file[len - 3] ^= 0x40;
  free(itl);
  free(file);
}

static void test_both_names_same_content(void **state) {
  (void)state;
  capstan_itl_params_t p1 = itl_params("ITLSEP00112233AABB.tlv");
  capstan_itl_params_t p2 = itl_params("ITLFile.tlv");
  uint8_t *f1 = NULL, *f2 = NULL;
  size_t l1 = 0, l2 = 0;
  const char *why = NULL;
  assert_int_equal(capstan_itl_build(&p1, g_tftp.key, &f1, &l1, &why), 0);
  assert_int_equal(capstan_itl_build(&p2, g_tftp.key, &f2, &l2, &why), 0);
  capstan_itl_info_t *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
  assert_non_null(a);
  assert_non_null(b);
  assert_int_equal(capstan_itl_parse(f1, l1, a, &why), 0);
  assert_int_equal(capstan_itl_parse(f2, l2, b, &why), 0);
  assert_int_equal(b->header.filename.len, strlen("ITLFile.tlv"));
  assert_memory_equal(b->header.filename.data, "ITLFile.tlv", b->header.filename.len);
  assert_int_equal(a->header.payload.len, b->header.payload.len);
  assert_memory_equal(a->header.payload.data, b->header.payload.data, a->header.payload.len);
  assert_int_equal(capstan_sgn_verify(f2, l2, g_tftp.key, &why), 0);
  free(a);
  free(b);
  free(f1);
  free(f2);
}

static void test_rules(void **state) {
  (void)state;
  const char *why = NULL;
  uint8_t *file = NULL;
  size_t len = 0;
  capstan_itl_params_t p = itl_params("ITLFile.tlv");
  p.signer_version_minor = 2;
  assert_int_equal(capstan_itl_build(&p, g_tftp.key, &file, &len, &why), CAPSTAN_EINVAL);
  p = itl_params("ITLFile.tlv");
  p.n_entries = CAPSTAN_ITL_MAX_RECORDS;
  assert_int_equal(capstan_itl_build(&p, g_tftp.key, &file, &len, &why), CAPSTAN_EINVAL);

  /* SIGNER_VERSION 1.0, no entries: only the SAST record. */
  p = itl_params("ITLFile.tlv");
  p.n_entries = 0;
  p.signer_version_minor = 0;
  p.hash_alg = CAPSTAN_SGN_HASH_SHA1;
  assert_int_equal(capstan_itl_build(&p, g_tftp.key, &file, &len, &why), 0);
  capstan_itl_info_t *itl = malloc(sizeof(*itl));
  assert_non_null(itl);
  assert_int_equal(capstan_itl_parse(file, len, itl, &why), 0);
  assert_int_equal(itl->n_records, 1);
  assert_int_equal(itl->header.signer_version_minor, 0);

  /* The SAST rule: change the first record's ROLE (after its SUBJECT_NAME)
   * and the reader refuses it. */
  size_t role_off = (size_t)(itl->records[0].subject_name.data - file) +
                    itl->records[0].subject_name.len + 1 + 3 + 1;
  file[role_off] = CAPSTAN_ITL_ROLE_TFTP;
  assert_int_equal(capstan_itl_parse(file, len, itl, &why), CAPSTAN_EINVAL);
  assert_non_null(strstr(why, "SAST"));
  file[role_off] = CAPSTAN_ITL_ROLE_SAST;
  /* Serial mismatch between header and SAST record. */
  size_t serial_off = (size_t)(itl->records[0].serial.data - file);
  file[serial_off] ^= 1;
  assert_int_equal(capstan_itl_parse(file, len, itl, &why), CAPSTAN_EINVAL);
  assert_non_null(strstr(why, "serial"));
  file[serial_off] ^= 1;
  /* RECORD_LENGTH one too long / short. */
  size_t rl_off = (size_t)(itl->header.payload.data - file) + 4;
  file[rl_off]++;
  assert_int_equal(capstan_itl_parse(file, len, itl, &why), CAPSTAN_EINVAL);
  file[rl_off] -= 2;
  assert_int_equal(capstan_itl_parse(file, len, itl, &why), CAPSTAN_EINVAL);
  file[rl_off]++;
  assert_int_equal(capstan_itl_parse(file, len, itl, &why), 0);
  /* Every truncation of the records fails. */
  for (size_t n = itl->header.header_length + 1; n < len; n += 7)
    assert_int_equal(capstan_itl_parse(file, n, itl, &why), CAPSTAN_EINVAL);
  /* An ITL without records. */
  assert_int_equal(capstan_itl_parse(file, itl->header.header_length, itl, &why), CAPSTAN_EINVAL);
  free(itl);
  free(file);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_filename),
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_both_names_same_content),
      cmocka_unit_test(test_rules),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
