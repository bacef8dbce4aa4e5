/* Cross-check with an independent implementation: capstan writes sample
 * files (.sgn, ITL, .enc.sgn for 1024/2048-bit phone keys with SHA-1 and
 * SHA-512) into a temporary directory with the certificates and keys, and
 * tests/tools/verify_files.py (Python, written from the spec, sharing no
 * code with core/files) must accept them, and refuse tampered copies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/base/error.h"
#include "core/files/encconf.h"
#include "core/files/itl.h"
#include "core/files/sgn.h"
#include "tests/unit/test_files_common.h"

static char g_dir[256];
static char g_script[1024];
static test_id_t g_tftp, g_tftp1024, g_capf, g_capf_old, g_ca;
static EVP_PKEY *g_phone1024, *g_phone2048;

static const char kConfig[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<device>\n  <fullConfig>true</fullConfig>\n  <certHash></certHash>\n</device>\n";

static void path_of(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", g_dir, name);
}

static void write_named(const char *name, const uint8_t *data, size_t len) {
  char p[512];
  path_of(p, sizeof(p), name);
  test_write_file(p, data, len);
}

static void write_cert(const char *name, X509 *cert) {
  char p[512];
  path_of(p, sizeof(p), name);
  FILE *f = fopen(p, "w");
  assert_non_null(f);
  assert_true(PEM_write_X509(f, cert));
  fclose(f);
}

static void write_key_pem(const char *name, EVP_PKEY *key) {
  char p[512];
  path_of(p, sizeof(p), name);
  FILE *f = fopen(p, "w");
  assert_non_null(f);
  assert_true(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL));
  fclose(f);
}

static void write_key_der(const char *name, EVP_PKEY *key) {
  uint8_t *der = NULL;
  int n = i2d_PrivateKey(key, &der);
  assert_true(n > 0);
  write_named(name, der, (size_t)n);
  OPENSSL_free(der);
}

/* Runs the verifier with |args| (paths relative to the temp dir are made
 * absolute by running in it); returns its exit status. */
static int verify(const char *args) {
  char cmd[4096];
  snprintf(cmd, sizeof(cmd), "cd '%s' && python3 '%s' %s", g_dir, g_script, args);
  int st = system(cmd);
  assert_true(st != -1 && WIFEXITED(st));
  return WEXITSTATUS(st);
}

static void find_script(void) {
  const char *src = getenv("CAPSTAN_SOURCE_DIR");
  if (src != NULL && src[0] != '\0') {
    snprintf(g_script, sizeof(g_script), "%s/tests/tools/verify_files.py", src);
    return;
  }
  /* __FILE__ is <source>/tests/unit/test_files_python.c in CMake builds. */
  snprintf(g_script, sizeof(g_script), "%s", __FILE__);
  char *cut = strstr(g_script, "tests/unit/test_files_python.c");
  assert_non_null(cut);
  snprintf(cut, sizeof(g_script) - (size_t)(cut - g_script), "tests/tools/verify_files.py");
}

static int setup(void **state) {
  (void)state;
  find_script();
  if (access(g_script, R_OK) != 0) {
    fprintf(stderr, "verifier not found at %s\n", g_script);
    return -1;
  }
  const char *tmp = getenv("TMPDIR");
  snprintf(g_dir, sizeof(g_dir), "%s/capstan-files-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
  if (mkdtemp(g_dir) == NULL) return -1;
  static const uint8_t s1[] = {0x01}, s2[] = {0x00, 0xF0, 0x0D}, s3[] = {0x77}, s4[] = {0x78},
                       s5[] = {0x05, 0x55};
  g_ca = test_identity(test_rsa_key(2048), "C=NZ,O=Example Ltd,CN=Example Root", s1, 1, NULL);
  g_tftp = test_identity(test_rsa_key(2048), "CN=tftp.example.net,OU=Voice,O=Example Ltd,C=NZ", s2,
                         3, &g_ca);
  g_tftp1024 = test_identity(test_rsa_key(1024), "CN=#old-tftp ,O=Ex+am;p<l>e\"q", s5, 2, NULL);
  g_capf = test_identity(test_rsa_key(2048), "CN=CAPF-1a2b3c4d,O=Example,C=NZ", s3, 1, NULL);
  g_capf_old = test_identity(test_ec_key(), "CN=CAPF-99999999,O=Example,C=NZ", s4, 1, NULL);
  g_phone1024 = test_rsa_key(1024);
  g_phone2048 = test_rsa_key(2048);
  write_cert("tftp.pem", g_tftp.cert);
  write_cert("tftp1024.pem", g_tftp1024.cert);
  write_cert("capf.pem", g_capf.cert);
  write_cert("capf_old.pem", g_capf_old.cert);
  write_key_pem("phone1024.pem", g_phone1024);
  write_key_der("phone2048.der", g_phone2048);
  write_named("SEP001122334455.cnf.xml", (const uint8_t *)kConfig, strlen(kConfig));
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[512];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
  test_identity_free(&g_tftp);
  test_identity_free(&g_tftp1024);
  test_identity_free(&g_capf);
  test_identity_free(&g_capf_old);
  test_identity_free(&g_ca);
  EVP_PKEY_free(g_phone1024);
  EVP_PKEY_free(g_phone2048);
  return 0;
}

/* Writes |name| and a copy "bad-<name>" with byte |flip| (from the end when
 * negative) changed. */
static void write_with_tampered(const char *name, uint8_t *data, size_t len, long flip) {
  write_named(name, data, len);
  size_t at = flip < 0 ? len - (size_t)(-flip) : (size_t)flip;
  data[at] ^= 0x01;
  char bad[256];
  snprintf(bad, sizeof(bad), "bad-%s", name);
  write_named(bad, data, len);
  data[at] ^= 0x01;
}

static void test_sgn(void **state) {
  (void)state;
  uint8_t *file = NULL;
  size_t len = 0;
  const char *why = NULL;
  assert_int_equal(capstan_sgnfile_build("SEP001122334455.cnf.xml", (const uint8_t *)kConfig,
                                         strlen(kConfig), g_tftp.cert, g_tftp.key,
                                         CAPSTAN_SGN_HASH_SHA1, 1700000000u, &file, &len, &why),
                   0);
  write_with_tampered("SEP001122334455.cnf.xml.sgn", file, len, -5);
  free(file);
  assert_int_equal(capstan_sgnfile_build("other.bin", (const uint8_t *)"\x00\x01\x02", 3,
                                         g_tftp1024.cert, g_tftp1024.key, CAPSTAN_SGN_HASH_SHA512,
                                         1700000000u, &file, &len, &why),
                   0);
  /* Byte 9 is HEADER_LENGTH's low byte. */
  write_with_tampered("other.bin.sgn", file, len, 9);
  free(file);

  assert_int_equal(verify("sgn SEP001122334455.cnf.xml.sgn --signer-cert tftp.pem"
                          " --name SEP001122334455.cnf.xml.sgn --content SEP001122334455.cnf.xml"),
                   0);
  assert_int_equal(verify("sgn other.bin.sgn --signer-cert tftp1024.pem --name other.bin.sgn"), 0);
  /* Refusals: tampered payload, broken HEADER_LENGTH, wrong signer. */
  assert_int_equal(verify("sgn bad-SEP001122334455.cnf.xml.sgn --signer-cert tftp.pem"), 1);
  assert_int_equal(verify("sgn bad-other.bin.sgn --signer-cert tftp1024.pem"), 1);
  assert_int_equal(verify("sgn SEP001122334455.cnf.xml.sgn --signer-cert capf.pem"), 1);
}

static void test_itl(void **state) {
  (void)state;
  capstan_itl_entry_t entries[] = {
      {g_tftp.cert, CAPSTAN_ITL_ROLE_TFTP, NULL},
      {g_capf.cert, CAPSTAN_ITL_ROLE_CAPF, "capf.example.net"},
      {g_capf_old.cert, CAPSTAN_ITL_ROLE_CAPF, NULL},
  };
  capstan_itl_params_t p;
  memset(&p, 0, sizeof(p));
  p.signer_cert = g_tftp.cert;
  p.entries = entries;
  p.n_entries = 3;
  p.hash_alg = CAPSTAN_SGN_HASH_SHA512;
  p.signer_version_minor = 1;
  p.timestamp = 1700000000u;
  const char *names[] = {"ITLSEP001122334455.tlv", "ITLFile.tlv"};
  for (int i = 0; i < 2; i++) {
    uint8_t *file = NULL;
    size_t len = 0;
    const char *why = NULL;
    p.filename = names[i];
    if (i == 1) p.hash_alg = CAPSTAN_SGN_HASH_SHA1;
    assert_int_equal(capstan_itl_build(&p, g_tftp.key, &file, &len, &why), 0);
    write_with_tampered(names[i], file, len, -40);
    free(file);
  }
  assert_int_equal(verify("itl ITLSEP001122334455.tlv --signer-cert tftp.pem"
                          " --name ITLSEP001122334455.tlv --signer-version 1.1"
                          " --expect SAST:tftp.pem --expect TFTP:tftp.pem --expect CAPF:capf.pem"
                          " --expect CAPF:capf_old.pem"),
                   0);
  assert_int_equal(verify("itl ITLFile.tlv --signer-cert tftp.pem --name ITLFile.tlv"), 0);
  assert_int_equal(verify("itl bad-ITLFile.tlv --signer-cert tftp.pem"), 1);
  /* Expectations the file does not meet are refused too. */
  assert_int_equal(verify("itl ITLFile.tlv --signer-cert tftp.pem --expect TFTP:capf.pem"), 1);
  assert_int_equal(verify("itl ITLFile.tlv --signer-cert tftp.pem --name ITLSEP0.tlv"), 1);
}

static void write_enc(const char *name, EVP_PKEY *phone, int enc_hash, int sign_hash,
                      const char *cfg, size_t cfg_len) {
  capstan_encconf_params_t p;
  memset(&p, 0, sizeof(p));
  p.signer_cert = g_tftp.cert;
  p.phone_pub = phone;
  p.filename = name;
  p.config = (const uint8_t *)cfg;
  p.config_len = cfg_len;
  p.enc_hash_alg = enc_hash;
  p.sign_hash_alg = sign_hash;
  p.timestamp = 1700000000u;
  uint8_t *file = NULL;
  size_t len = 0;
  const char *why = NULL;
  assert_int_equal(capstan_encconf_build(&p, g_tftp.key, &file, &len, &why), 0);
  write_with_tampered(name, file, len, -1);
  free(file);
}

static void test_enc(void **state) {
  (void)state;
  static const char aligned[] = "<device><a>123456789</a></device"; /* 32 bytes, bad XML is fine */
  assert_int_equal(strlen(aligned), 32);
  write_named("aligned.txt", (const uint8_t *)aligned, 32);
  write_enc("SEP000000001024.cnf.xml.enc.sgn", g_phone1024, CAPSTAN_SGN_HASH_SHA1,
            CAPSTAN_SGN_HASH_SHA1, kConfig, strlen(kConfig));
  write_enc("SEP000000002048.cnf.xml.enc.sgn", g_phone2048, CAPSTAN_SGN_HASH_SHA512,
            CAPSTAN_SGN_HASH_SHA512, kConfig, strlen(kConfig));
  write_enc("SEP00000000A1GN.cnf.xml.enc.sgn", g_phone2048, CAPSTAN_SGN_HASH_SHA1,
            CAPSTAN_SGN_HASH_SHA512, aligned, 32);

  assert_int_equal(verify("enc SEP000000001024.cnf.xml.enc.sgn --signer-cert tftp.pem"
                          " --phone-key phone1024.pem --enc-hash sha1"
                          " --name SEP000000001024.cnf.xml.enc.sgn"
                          " --plaintext SEP001122334455.cnf.xml"),
                   0);
  assert_int_equal(verify("enc SEP000000002048.cnf.xml.enc.sgn --signer-cert tftp.pem"
                          " --phone-key phone2048.der --enc-hash sha512"
                          " --plaintext SEP001122334455.cnf.xml"),
                   0);
  assert_int_equal(verify("enc SEP00000000A1GN.cnf.xml.enc.sgn --signer-cert tftp.pem"
                          " --phone-key phone2048.der --enc-hash sha1 --plaintext aligned.txt"),
                   0);
  /* Tampered ciphertext, the wrong phone's key, the wrong expected hash. */
  assert_int_equal(verify("enc bad-SEP000000002048.cnf.xml.enc.sgn --signer-cert tftp.pem"
                          " --phone-key phone2048.der"),
                   1);
  assert_int_equal(verify("enc SEP000000001024.cnf.xml.enc.sgn --signer-cert tftp.pem"
                          " --phone-key phone2048.der"),
                   1);
  assert_int_equal(verify("enc SEP000000002048.cnf.xml.enc.sgn --signer-cert tftp.pem"
                          " --phone-key phone2048.der --enc-hash sha1"),
                   1);
  /* A signed file is not an encrypted one. */
  assert_int_equal(verify("enc SEP001122334455.cnf.xml.sgn --signer-cert tftp.pem"
                          " --phone-key phone2048.der"),
                   1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sgn),
      cmocka_unit_test(test_itl),
      cmocka_unit_test(test_enc),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
