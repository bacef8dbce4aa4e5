/* Signed header (core/files/sgnhdr.h) and .sgn files (core/files/sgn.h):
 * exact bytes, round trips, signatures, tampering, hostile headers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <pthread.h>

#include "core/base/error.h"
#include "core/files/sgn.h"
#include "core/files/sgnhdr.h"
#include "tests/unit/test_files_common.h"

static test_id_t g_1024; /* CN=T, serial 0x80, self-signed */
static test_id_t g_2048; /* CN=TFTP-x,O=Example,C=NZ issued by a CA */
static test_id_t g_ca;

static int setup(void **state) {
  (void)state;
  static const uint8_t s80[] = {0x80}, s1[] = {0x01}, s2[] = {0x12, 0x34, 0x56};
  g_1024 = test_identity(test_rsa_key(1024), "CN=T", s80, 1, NULL);
  g_ca = test_identity(test_rsa_key(2048), "C=NZ,O=Example,CN=Example Root", s1, 1, NULL);
  g_2048 = test_identity(test_rsa_key(2048), "CN=TFTP-x,O=Example,C=NZ", s2, 3, &g_ca);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  test_identity_free(&g_1024);
  test_identity_free(&g_2048);
  test_identity_free(&g_ca);
  return 0;
}

static capstan_sgn_params_t params_for(const test_id_t *id, const char *filename,
                                       const char *payload) {
  capstan_sgn_params_t p;
  memset(&p, 0, sizeof(p));
  p.version_major = 1;
  p.version_minor = 0;
  p.signer_cert = id->cert;
  p.hash_alg = CAPSTAN_SGN_HASH_SHA1;
  p.filename = filename;
  p.timestamp = 0x5F5E1000u;
  p.payload = (const uint8_t *)payload;
  p.payload_len = strlen(payload);
  return p;
}

/* The header of a small file, checked byte by byte against the spec. */
static void test_exact_layout(void **state) {
  (void)state;
  capstan_sgn_params_t p = params_for(&g_1024, "ab", "hello");
  uint8_t *file = NULL;
  size_t len = 0;
  const char *why = NULL;
  assert_int_equal(capstan_sgn_sign(&p, g_1024.key, &file, &len, &why), 0);

  static const uint8_t head[] = {
      0x01, 0x00, 0x02, 0x01, 0x00,                 /* VERSION 1.0 */
      0x02, 0x00, 0x02, 0x00, 0xC4,                 /* HEADER_LENGTH 196 */
      0x03, 0x00, 0x14,                             /* SIGNER_INFO: 8 + 8 + 4 */
      0x04, 0x00, 0x05, 'C',  'N',  '=', 'T', 0x00, /* SIGNER_NAME */
      0x06, 0x00, 0x05, 'C',  'N',  '=', 'T', 0x00, /* ISSUER_NAME */
      0x05, 0x00, 0x01, 0x80,                       /* SERIAL: DER 00 80, no leading 0 */
      0x07, 0x00, 0x0F,                             /* SIGNATURE_INFO, 15 */
      0x08, 0x00, 0x01, 0x01,                       /* HASH_ALGORITHM SHA-1 */
      0x09, 0x00, 0x08,                             /* SIGNATURE_ALGORITHM_INFO, 8 */
      0x0A, 0x00, 0x01, 0x00,                       /* SIGNATURE_ALGORITHM RSA */
      0x0B, 0x00, 0x01, 0x01,                       /* SIGNATURE_MODULUS 1024 */
      0x0C, 0x00, 0x80,                             /* SIGNATURE, 128 bytes */
  };
  static const uint8_t tail[] = {
      0x0E, 0x00, 0x03, 'a',  'b',  0x00,       /* FILENAME */
      0x0F, 0x00, 0x04, 0x5F, 0x5E, 0x10, 0x00, /* TIMESTAMP */
      0x0D,                                     /* PADDING to 196 */
      'h',  'e',  'l',  'l',  'o',
  };
  assert_int_equal(len, sizeof(head) + 128 + sizeof(tail));
  assert_memory_equal(file, head, sizeof(head));
  assert_memory_equal(file + sizeof(head) + 128, tail, sizeof(tail));

  /* The signature is RSA PKCS#1 v1.5 SHA-1 over the file without the
   * SIGNATURE field, checked here with BoringSSL directly. */
  size_t tbs_len = len - 131;
  uint8_t *tbs = malloc(tbs_len);
  assert_non_null(tbs);
  memcpy(tbs, file, 51);
  memcpy(tbs + 51, file + 182, len - 182);
  EVP_MD_CTX ctx;
  EVP_MD_CTX_init(&ctx);
  assert_true(EVP_DigestVerifyInit(&ctx, NULL, EVP_sha1(), NULL, g_1024.key));
  assert_true(EVP_DigestVerify(&ctx, file + 54, 128, tbs, tbs_len));
  EVP_MD_CTX_cleanup(&ctx);

  /* prepare/finish give the same bytes: tbs is the file minus SIGNATURE. */
  capstan_sgn_prepared_t prep;
  memset(&prep, 0, sizeof(prep));
  assert_int_equal(capstan_sgn_prepare(&p, &prep, &why), 0);
  assert_int_equal(prep.tbs_len, tbs_len);
  assert_memory_equal(prep.tbs, tbs, tbs_len);
  assert_int_equal(prep.sig_offset, 51);
  assert_int_equal(prep.sig_len, 128);
  uint8_t *again = NULL;
  size_t again_len = 0;
  assert_int_equal(capstan_sgn_finish(&prep, file + 54, 128, &again, &again_len), 0);
  assert_int_equal(again_len, len);
  assert_memory_equal(again, file, len);
  uint8_t *bad = NULL;
  size_t bad_len = 0;
  assert_int_equal(capstan_sgn_finish(&prep, file + 54, 127, &bad, &bad_len), CAPSTAN_EINVAL);
  assert_null(bad);
  free(again);
  capstan_sgn_prepared_cleanup(&prep);
  free(tbs);
  free(file);
}

/* Signs the file of |p| with |key| and parses its header into |info|; both
 * must succeed. Returns the file (malloc'd), *len its length. */
static uint8_t *sign_parsed(const capstan_sgn_params_t *p, EVP_PKEY *key, size_t *len,
                            capstan_sgn_info_t *info) {
  uint8_t *file = NULL;
  const char *why = NULL;
  *len = 0;
  assert_int_equal(capstan_sgn_sign(p, key, &file, len, &why), 0);
  assert_int_equal(capstan_sgn_parse(file, *len, info, &why), 0);
  return file;
}

static void test_round_trip_and_verify(void **state) {
  (void)state;
  capstan_sgn_params_t p = params_for(&g_2048, "SEP001122334455.cnf.xml.sgn", "<device/>\n");
  p.hash_alg = CAPSTAN_SGN_HASH_SHA512;
  size_t len;
  capstan_sgn_info_t info;
  uint8_t *file = sign_parsed(&p, g_2048.key, &len, &info);
  const char *why = NULL;
  assert_int_equal(info.version_major, 1);
  assert_int_equal(info.version_minor, 0);
  assert_int_equal(info.header_length % 4, 0);
  assert_int_equal(info.header_length, len - 10);
  assert_false(info.has_signer_version);
  assert_int_equal(info.signer_name.len, strlen("CN=TFTP-x,O=Example,C=NZ"));
  assert_memory_equal(info.signer_name.data, "CN=TFTP-x,O=Example,C=NZ", info.signer_name.len);
  assert_int_equal(info.issuer_name.len, strlen("C=NZ,O=Example,CN=Example Root"));
  assert_memory_equal(info.issuer_name.data, "C=NZ,O=Example,CN=Example Root",
                      info.issuer_name.len);
  static const uint8_t serial[] = {0x12, 0x34, 0x56};
  assert_int_equal(info.serial.len, 3);
  assert_memory_equal(info.serial.data, serial, 3);
  assert_int_equal(info.hash_alg, CAPSTAN_SGN_HASH_SHA512);
  assert_int_equal(info.signature_modulus, 2);
  assert_int_equal(info.signature.len, 256);
  assert_int_equal(info.filename.len, strlen("SEP001122334455.cnf.xml.sgn"));
  assert_memory_equal(info.filename.data, "SEP001122334455.cnf.xml.sgn", info.filename.len);
  assert_int_equal(info.timestamp, 0x5F5E1000u);
  assert_false(info.has_encryption);
  assert_true(info.padding_count <= 3);
  assert_int_equal(info.payload.len, 10);
  assert_memory_equal(info.payload.data, "<device/>\n", 10);

  assert_int_equal(capstan_sgn_verify(file, len, g_2048.key, &why), 0);
  assert_int_equal(capstan_sgn_verify_cert(file, len, g_2048.cert, &why), 0);
  /* Another certificate: names differ. */
  assert_int_equal(capstan_sgn_verify_cert(file, len, g_ca.cert, &why), CAPSTAN_EACCES);
  assert_non_null(strstr(why, "SIGNER_NAME"));
  /* Same key and names, other serial. */
  static const uint8_t other_serial[] = {0x12, 0x34, 0x57};
  X509 *twin = test_cert(g_2048.key, "CN=TFTP-x,O=Example,C=NZ", other_serial, 3, &g_ca);
  assert_int_equal(capstan_sgn_verify_cert(file, len, twin, &why), CAPSTAN_EACCES);
  assert_non_null(strstr(why, "SERIAL_NUMBER"));
  X509_free(twin);
  /* Wrong key of the same size. */
  assert_int_equal(capstan_sgn_verify(file, len, g_ca.key, &why), CAPSTAN_EACCES);
  /* Wrong key size. */
  assert_int_equal(capstan_sgn_verify(file, len, g_1024.key, &why), CAPSTAN_EINVAL);

  /* Tampering anywhere outside the SIGNATURE value breaks the signature:
   * payload, FILENAME, TIMESTAMP, and the signature itself. */
  size_t ts_off = (size_t)(info.filename.data - file) + info.filename.len + 1 + 3;
  size_t where[] = {len - 1, info.sig_field_offset + info.sig_field_len + 4, ts_off + 3,
                    info.sig_field_offset + 10};
  for (size_t i = 0; i < sizeof(where) / sizeof(where[0]); i++) {
    file[where[i]] ^= 0x01;
    assert_int_equal(capstan_sgn_verify(file, len, g_2048.key, &why), CAPSTAN_EACCES);
    file[where[i]] ^= 0x01;
  }
  /* A header byte that breaks the structure is refused as malformed. */
  file[0] ^= 0x01;
  assert_int_equal(capstan_sgn_verify(file, len, g_2048.key, &why), CAPSTAN_EINVAL);
  file[0] ^= 0x01;
  assert_int_equal(capstan_sgn_verify(file, len, g_2048.key, &why), 0);
  free(file);
}

static void check_modulus(int bits, int code) {
  static const uint8_t s[] = {0x42};
  test_id_t id = test_identity(test_rsa_key(bits), "CN=M", s, 1, NULL);
  capstan_sgn_params_t p = params_for(&id, "m", "x");
  size_t len;
  capstan_sgn_info_t info;
  uint8_t *file = sign_parsed(&p, id.key, &len, &info);
  const char *why = NULL;
  assert_int_equal(info.signature_modulus, code);
  assert_int_equal(info.signature.len, (size_t)bits / 8);
  assert_int_equal(info.header_length % 4, 0);
  assert_int_equal(capstan_sgn_verify(file, len, id.key, &why), 0);
  free(file);
  test_identity_free(&id);
}

static void test_modulus_sizes(void **state) {
  (void)state;
  check_modulus(1024, 1);
  check_modulus(2048, 2);
  check_modulus(4096, 3);
  assert_int_equal(capstan_sgn_modulus_code(512), 0);
  assert_int_equal(capstan_sgn_modulus_code(3072), -1);
  /* A 3072-bit signer has no SIGNATURE_MODULUS code: refused. */
  static const uint8_t s[] = {0x42};
  test_id_t id = test_identity(test_rsa_key(3072), "CN=M", s, 1, NULL);
  capstan_sgn_params_t p = params_for(&id, "m", "x");
  uint8_t *file = NULL;
  size_t len = 0;
  const char *why = NULL;
  assert_int_equal(capstan_sgn_sign(&p, id.key, &file, &len, &why), CAPSTAN_EINVAL);
  assert_null(file);
  test_identity_free(&id);
}

static void test_refusals(void **state) {
  (void)state;
  uint8_t *file = NULL;
  size_t len = 0;
  const char *why = NULL;
  capstan_sgn_params_t p = params_for(&g_2048, "a", "b");
  p.hash_alg = CAPSTAN_SGN_HASH_SHA256;
  assert_int_equal(capstan_sgn_sign(&p, g_2048.key, &file, &len, &why), CAPSTAN_EINVAL);
  assert_non_null(strstr(why, "SHA-256"));
  p.hash_alg = 7;
  assert_int_equal(capstan_sgn_sign(&p, g_2048.key, &file, &len, &why), CAPSTAN_EINVAL);
  /* Signing key that does not match the certificate's size. */
  p = params_for(&g_2048, "a", "b");
  assert_int_equal(capstan_sgn_sign(&p, g_1024.key, &file, &len, &why), CAPSTAN_EINVAL);
  /* EC signer. */
  static const uint8_t s[] = {0x01};
  test_id_t ec = test_identity(test_ec_key(), "CN=EC", s, 1, NULL);
  p = params_for(&ec, "a", "b");
  assert_int_equal(capstan_sgn_sign(&p, ec.key, &file, &len, &why), CAPSTAN_EINVAL);
  test_identity_free(&ec);
  /* A header that would not fit HEADER_LENGTH's 16 bits. */
  char big[1100];
  memset(big, 'n', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  p = params_for(&g_2048, big, "b");
  assert_int_equal(capstan_sgn_sign(&p, g_2048.key, &file, &len, &why), CAPSTAN_EINVAL);
  assert_null(file);
}

/* Builds a valid 1024-bit file for the hostile tests. */
static uint8_t *small_file(size_t *len) {
  capstan_sgn_params_t p = params_for(&g_1024, "ab", "hello");
  uint8_t *file = NULL;
  const char *why = NULL;
  assert_int_equal(capstan_sgn_sign(&p, g_1024.key, &file, len, &why), 0);
  return file;
}

static void test_hostile_headers(void **state) {
  (void)state;
  size_t len;
  uint8_t *file = small_file(&len);
  capstan_sgn_info_t info;
  const char *why = NULL;
  assert_int_equal(capstan_sgn_parse(file, len, &info, &why), 0);

  /* Every truncation inside the header fails cleanly. */
  for (size_t n = 0; n < 196; n++)
    assert_int_equal(capstan_sgn_parse(file, n, &info, &why), CAPSTAN_EINVAL);
  /* Truncating the payload only is still a well-formed header. */
  assert_int_equal(capstan_sgn_parse(file, 196, &info, &why), 0);
  assert_int_equal(info.payload.len, 0);

  struct {
    size_t off;
    uint8_t val;
  } smash[] = {
      {4, 1},      /* VERSION 1.1 */
      {9, 0xC5},   /* HEADER_LENGTH not a multiple of 4 */
      {9, 0xC8},   /* HEADER_LENGTH 200: PADDING would run into the payload */
      {9, 0xC0},   /* HEADER_LENGTH 192: cuts the fields */
      {12, 0x15},  /* SIGNER_INFO length not matching its fields */
      {35, 0x0E},  /* SIGNATURE_INFO length 14 */
      {42, 0x09},  /* SIGNATURE_ALGORITHM_INFO length 9 */
      {39, 2},     /* HASH_ALGORITHM SHA-256: parses, but verify refuses */
      {46, 1},     /* SIGNATURE_ALGORITHM not RSA */
      {50, 2},     /* SIGNATURE_MODULUS says 2048 */
      {20, 'x'},   /* SIGNER_NAME not NUL-terminated */
      {16, 0},     /* SIGNER_NAME with a NUL inside */
      {32, 0},     /* serial with a leading zero is fine only when 1 byte: 00 */
      {195, 0},    /* PADDING byte not 13 */
      {182, 0x0F}, /* FILENAME tag wrong */
  };
  for (size_t i = 0; i < sizeof(smash) / sizeof(smash[0]); i++) {
    uint8_t saved = file[smash[i].off];
    file[smash[i].off] = smash[i].val;
    int rc = capstan_sgn_parse(file, len, &info, &why);
    if (smash[i].off == 39 || smash[i].off == 32) {
      assert_int_equal(rc, 0);
      assert_int_not_equal(capstan_sgn_verify(file, len, g_1024.key, &why), 0);
    } else {
      assert_int_equal(rc, CAPSTAN_EINVAL);
    }
    file[smash[i].off] = saved;
  }
  assert_int_equal(capstan_sgn_verify(file, len, g_1024.key, &why), 0);
  free(file);
}

static void test_sgnfile(void **state) {
  (void)state;
  static const char cnf[] = "<device>\n  <fullConfig>true</fullConfig>\n</device>\n";
  uint8_t *file = NULL;
  size_t len = 0;
  const char *why = NULL;
  assert_int_equal(capstan_sgnfile_build("SEP0011223344AA.cnf.xml", (const uint8_t *)cnf,
                                         strlen(cnf), g_2048.cert, g_2048.key,
                                         CAPSTAN_SGN_HASH_SHA1, 1700000000u, &file, &len, &why),
                   0);
  capstan_sgn_info_t info;
  assert_int_equal(capstan_sgnfile_parse(file, len, &info, &why), 0);
  assert_int_equal(info.filename.len, strlen("SEP0011223344AA.cnf.xml.sgn"));
  assert_memory_equal(info.filename.data, "SEP0011223344AA.cnf.xml.sgn", info.filename.len);
  assert_int_equal(info.payload.len, strlen(cnf));
  assert_memory_equal(info.payload.data, cnf, strlen(cnf));
  assert_int_equal(info.timestamp, 1700000000u);
  assert_int_equal(capstan_sgn_verify(file, len, g_2048.key, &why), 0);

  /* prepare + compute + finish (the worker-thread path) = build. */
  capstan_sgn_prepared_t prep;
  memset(&prep, 0, sizeof(prep));
  assert_int_equal(
      capstan_sgnfile_prepare("SEP0011223344AA.cnf.xml", (const uint8_t *)cnf, strlen(cnf),
                              g_2048.cert, CAPSTAN_SGN_HASH_SHA1, 1700000000u, &prep, &why),
      0);
  uint8_t sig[CAPSTAN_SGN_MAX_SIGNATURE];
  assert_int_equal(capstan_sgn_compute(&prep, g_2048.key, sig, sizeof(sig)), 0);
  uint8_t *file2 = NULL;
  size_t len2 = 0;
  assert_int_equal(capstan_sgn_finish(&prep, sig, prep.sig_len, &file2, &len2), 0);
  /* PKCS#1 v1.5 is deterministic: identical files. */
  assert_int_equal(len2, len);
  assert_memory_equal(file2, file, len);
  capstan_sgn_prepared_cleanup(&prep);
  capstan_sgn_prepared_cleanup(&prep); /* idempotent */
  free(file2);

  assert_int_equal(capstan_sgnfile_build("", (const uint8_t *)"x", 1, g_2048.cert, g_2048.key,
                                         CAPSTAN_SGN_HASH_SHA1, 0, &file2, &len2, &why),
                   CAPSTAN_EINVAL);
  free(file);
}

typedef struct {
  const capstan_sgn_prepared_t *prep;
  EVP_PKEY *key;
  uint8_t sig[CAPSTAN_SGN_MAX_SIGNATURE];
  int rc;
} sign_job_t;

static void *sign_thread(void *arg) {
  sign_job_t *j = arg;
  j->rc = capstan_sgn_compute(j->prep, j->key, j->sig, sizeof(j->sig));
  return NULL;
}

/* The split the server uses: prepare on the loop thread, the RSA operation
 * on a worker, finish back on the loop thread. */
static void test_sign_on_worker_thread(void **state) {
  (void)state;
  capstan_sgn_params_t p = params_for(&g_2048, "w.sgn", "payload");
  capstan_sgn_prepared_t prep;
  memset(&prep, 0, sizeof(prep));
  const char *why = NULL;
  assert_int_equal(capstan_sgn_prepare(&p, &prep, &why), 0);
  sign_job_t jobs[2] = {{&prep, g_2048.key, {0}, -1}, {&prep, g_2048.key, {0}, -1}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&t[i], NULL, sign_thread, &jobs[i]), 0);
  for (int i = 0; i < 2; i++) assert_int_equal(pthread_join(t[i], NULL), 0);
  assert_int_equal(jobs[0].rc, 0);
  assert_int_equal(jobs[1].rc, 0);
  assert_memory_equal(jobs[0].sig, jobs[1].sig, prep.sig_len);
  uint8_t *file = NULL;
  size_t len = 0;
  assert_int_equal(capstan_sgn_finish(&prep, jobs[0].sig, prep.sig_len, &file, &len), 0);
  assert_int_equal(capstan_sgn_verify_cert(file, len, g_2048.cert, &why), 0);
  /* A signature too small for the buffer contract is refused. */
  uint8_t small[16];
  assert_int_equal(capstan_sgn_compute(&prep, g_2048.key, small, sizeof(small)), CAPSTAN_EINVAL);
  capstan_sgn_prepared_cleanup(&prep);
  free(file);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_exact_layout),          cmocka_unit_test(test_round_trip_and_verify),
      cmocka_unit_test(test_modulus_sizes),         cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_hostile_headers),       cmocka_unit_test(test_sgnfile),
      cmocka_unit_test(test_sign_on_worker_thread),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
