/* Encrypted configuration (core/files/encconf.h): field layout, padding,
 * decryption round trips, refusals. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <openssl/cipher.h>
#include <openssl/digest.h>

#include "core/base/error.h"
#include "core/files/encconf.h"
#include "tests/unit/test_files_common.h"

static test_id_t g_tftp;
static EVP_PKEY *g_phone1024, *g_phone2048;

static int setup(void **state) {
  (void)state;
  static const uint8_t s[] = {0x05, 0x06};
  g_tftp = test_identity(test_rsa_key(2048), "CN=tftp,O=Example", s, 2, NULL);
  g_phone1024 = test_rsa_key(1024);
  g_phone2048 = test_rsa_key(2048);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  test_identity_free(&g_tftp);
  EVP_PKEY_free(g_phone1024);
  EVP_PKEY_free(g_phone2048);
  return 0;
}

static capstan_encconf_params_t params(EVP_PKEY *phone, const char *cfg, size_t len, int hash) {
  capstan_encconf_params_t p;
  memset(&p, 0, sizeof(p));
  p.signer_cert = g_tftp.cert;
  p.phone_pub = phone;
  p.filename = "SEP001122334455.cnf.xml.enc.sgn";
  p.config = (const uint8_t *)cfg;
  p.config_len = len;
  p.enc_hash_alg = hash;
  p.sign_hash_alg = CAPSTAN_SGN_HASH_SHA512;
  p.timestamp = 1700000002u;
  return p;
}

/* Decrypts the payload with BoringSSL directly (no capstan code), returning
 * all of it, padding included. */
static uint8_t *raw_decrypt(const capstan_sgn_info_t *info, EVP_PKEY *phone) {
  uint8_t key[512];
  size_t key_len = sizeof(key);
  EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new(phone, NULL);
  assert_non_null(pctx);
  assert_true(EVP_PKEY_decrypt_init(pctx) > 0);
  assert_true(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) > 0);
  assert_true(EVP_PKEY_decrypt(pctx, key, &key_len, info->enc.wrapped_key.data,
                               info->enc.wrapped_key.len) > 0);
  EVP_PKEY_CTX_free(pctx);
  assert_int_equal(key_len, 16);
  uint8_t *out = malloc(info->payload.len);
  assert_non_null(out);
  EVP_CIPHER_CTX c;
  EVP_CIPHER_CTX_init(&c);
  int n1 = 0, n2 = 0;
  assert_true(EVP_DecryptInit_ex(&c, EVP_aes_128_cbc(), NULL, key, info->enc.iv.data));
  assert_true(EVP_CIPHER_CTX_set_padding(&c, 0));
  assert_true(EVP_DecryptUpdate(&c, out, &n1, info->payload.data, (int)info->payload.len));
  assert_true(EVP_DecryptFinal_ex(&c, out + n1, &n2));
  assert_int_equal((size_t)(n1 + n2), info->payload.len);
  EVP_CIPHER_CTX_cleanup(&c);
  return out;
}

/* Builds the file of |p| signed by the TFTP key and parses its header into
 * |info|; both must succeed. Returns the file (malloc'd), *len its length. */
static uint8_t *build_parsed(const capstan_encconf_params_t *p, size_t *len,
                             capstan_sgn_info_t *info) {
  uint8_t *file = NULL;
  const char *why = NULL;
  *len = 0;
  assert_int_equal(capstan_encconf_build(p, g_tftp.key, &file, len, &why), 0);
  assert_int_equal(capstan_sgn_parse(file, *len, info, &why), 0);
  return file;
}

static void round_trip(EVP_PKEY *phone, int bits, int hash, size_t cfg_len) {
  char *cfg = malloc(cfg_len + 1);
  assert_non_null(cfg);
  for (size_t i = 0; i < cfg_len; i++) cfg[i] = (char)('a' + i % 26);
  capstan_encconf_params_t p = params(phone, cfg, cfg_len, hash);
  size_t len;
  capstan_sgn_info_t info;
  uint8_t *file = build_parsed(&p, &len, &info);
  const char *why = NULL;
  assert_int_equal(info.version_major, 2);
  assert_int_equal(info.version_minor, 0);
  assert_true(info.has_encryption);
  assert_int_equal(info.enc.key_size_bits, bits);
  assert_int_equal(info.enc.wrapped_key.len, (size_t)bits / 8);
  assert_int_equal(info.enc.hash_alg, hash);
  assert_int_equal(info.enc.hash.len, hash == CAPSTAN_SGN_HASH_SHA1 ? 20 : 64);
  size_t pad = 16 - cfg_len % 16;
  assert_int_equal(info.enc.padding, pad);
  assert_int_equal(info.payload.len, cfg_len + pad);
  assert_int_equal(capstan_sgn_verify(file, len, g_tftp.key, &why), 0);

  /* Independent decryption: plaintext, then exactly |pad| bytes of 0x0D. */
  uint8_t *raw = raw_decrypt(&info, phone);
  assert_memory_equal(raw, cfg, cfg_len);
  for (size_t i = cfg_len; i < cfg_len + pad; i++) assert_int_equal(raw[i], 0x0D);
  uint8_t digest[64];
  unsigned dlen = 0;
  assert_true(EVP_Digest(cfg, cfg_len, digest, &dlen,
                         hash == CAPSTAN_SGN_HASH_SHA1 ? EVP_sha1() : EVP_sha512(), NULL));
  assert_memory_equal(digest, info.enc.hash.data, dlen);
  free(raw);

  uint8_t *plain = NULL;
  size_t plain_len = 0;
  assert_int_equal(capstan_encconf_decrypt(file, len, phone, &plain, &plain_len, &why), 0);
  assert_int_equal(plain_len, cfg_len);
  assert_memory_equal(plain, cfg, cfg_len);
  free(plain);
  free(file);
  free(cfg);
}

static void test_round_trips(void **state) {
  (void)state;
  round_trip(g_phone1024, 1024, CAPSTAN_SGN_HASH_SHA1, 100);
  round_trip(g_phone2048, 2048, CAPSTAN_SGN_HASH_SHA1, 1);
  round_trip(g_phone1024, 1024, CAPSTAN_SGN_HASH_SHA512, 15);
  round_trip(g_phone2048, 2048, CAPSTAN_SGN_HASH_SHA512, 1000);
  round_trip(g_phone2048, 2048, CAPSTAN_SGN_HASH_SHA512, 0);
}

/* An aligned configuration gets a whole block of sixteen 0x0D. */
static void test_aligned_padding(void **state) {
  (void)state;
  round_trip(g_phone2048, 2048, CAPSTAN_SGN_HASH_SHA1, 32);
  round_trip(g_phone1024, 1024, CAPSTAN_SGN_HASH_SHA512, 16);
}

/* The encryption fields, byte by byte, right after TIMESTAMP. */
static void test_field_layout(void **state) {
  (void)state;
  static const char cfg[] = "<device></device>\n"; /* 18 bytes: 14 of padding */
  capstan_encconf_params_t p = params(g_phone1024, cfg, strlen(cfg), CAPSTAN_SGN_HASH_SHA1);
  size_t len;
  capstan_sgn_info_t info;
  uint8_t *file = build_parsed(&p, &len, &info);
  const char *why = NULL;
  /* FILENAME value, NUL, then TIMESTAMP (7 bytes), then field 16. */
  const uint8_t *f = info.filename.data + info.filename.len + 1 + 7;
  /* 16 holds 17 (3 + 28) and 21 (3 + 4 + 5 + 4 + 3 + 128) = 31 + 147 = 178 */
  static const uint8_t expect_a[] = {
      0x10, 0x00, 0xB2,       /* ENCRYPTION_INFO, 178 */
      0x11, 0x00, 0x1C,       /* ENCRYPTION_IV_INFO, 28 */
      0x12, 0x00, 0x01, 0x00, /* 18: 0 */
      0x13, 0x00, 0x10,       /* ENCRYPTION_IV, 16 bytes follow */
  };
  assert_memory_equal(f, expect_a, sizeof(expect_a));
  f += sizeof(expect_a) + 16;
  static const uint8_t expect_b[] = {
      0x14, 0x00, 0x02, 0x00, 0x0E, /* ENCRYPTION_PADDING 14 */
      0x15, 0x00, 0x90,             /* ENCRYPTION_KEY_INFO, 144 */
      0x16, 0x00, 0x01, 0x00,       /* 22: 0 */
      0x17, 0x00, 0x02, 0x04, 0x00, /* ENCRYPTION_KEY_SIZE 1024 */
      0x18, 0x00, 0x01, 0x01,       /* ENCRYPTION_KEY_ALGORITHM 1 */
      0x19, 0x00, 0x80,             /* ENCRYPTION_KEY, 128 bytes follow */
  };
  assert_memory_equal(f, expect_b, sizeof(expect_b));
  f += sizeof(expect_b) + 128;
  static const uint8_t expect_c[] = {
      0x1A, 0x00, 0x01, 0x01, /* ENCRYPTION_HASH_ALGORITHM SHA-1 */
      0x1B, 0x00, 0x14,       /* ENCRYPTION_HASH, 20 bytes follow */
  };
  assert_memory_equal(f, expect_c, sizeof(expect_c));
  f += sizeof(expect_c) + 20;
  /* Then 0..3 PADDING bytes and the payload. */
  assert_int_equal((size_t)(f - file) + info.padding_count, info.header_length);
  assert_int_equal(info.header_length % 4, 0);
  assert_ptr_equal(info.payload.data, file + info.header_length);

  /* Each of these breaks the encryption fields; the reader refuses it. */
  size_t f16 = (size_t)(info.filename.data - file) + info.filename.len + 1 + 7;
  struct {
    size_t off;
    uint8_t val;
  } smash[] = {
      {f16 + 2, 0xB3},        /* ENCRYPTION_INFO length one too many */
      {f16 + 5, 0x1B},        /* ENCRYPTION_IV_INFO length one too few */
      {f16 + 9, 0x01},        /* field 18 not 0 */
      {f16 + 33, 0x00},       /* ENCRYPTION_PADDING 0 */
      {f16 + 33, 0x11},       /* ENCRYPTION_PADDING 17 */
      {f16 + 40, 0x01},       /* field 22 not 0 */
      {f16 + 45, 0x01},       /* ENCRYPTION_KEY_SIZE 1025 */
      {f16 + 49, 0x02},       /* ENCRYPTION_KEY_ALGORITHM 2 */
      {f16 + 3 + 178 + 3, 2}, /* ENCRYPTION_HASH_ALGORITHM SHA-256 */
  };
  for (size_t i = 0; i < sizeof(smash) / sizeof(smash[0]); i++) {
    uint8_t saved = file[smash[i].off];
    assert_int_not_equal(saved, smash[i].val);
    file[smash[i].off] = smash[i].val;
    assert_int_equal(capstan_sgn_parse(file, len, &info, &why), CAPSTAN_EINVAL);
    file[smash[i].off] = saved;
  }
  assert_int_equal(capstan_sgn_parse(file, len, &info, &why), 0);
  free(file);
}

static void test_refusals(void **state) {
  (void)state;
  EVP_PKEY *ec = test_ec_key();
  const char *why = NULL;
  uint8_t *file = NULL;
  size_t len = 0;
  assert_int_equal(capstan_encconf_key_usable(ec, &why), CAPSTAN_EINVAL);
  assert_string_equal(why, "phone key is EC: encrypted configuration needs an RSA key");
  capstan_encconf_params_t p = params(ec, "x", 1, CAPSTAN_SGN_HASH_SHA1);
  why = NULL;
  assert_int_equal(capstan_encconf_build(&p, g_tftp.key, &file, &len, &why), CAPSTAN_EINVAL);
  assert_string_equal(why, CAPSTAN_ENCCONF_EC_REASON);
  assert_null(file);
  assert_int_equal(capstan_encconf_key_usable(g_phone2048, &why), 0);
  p = params(g_phone2048, "x", 1, CAPSTAN_SGN_HASH_SHA256);
  assert_int_equal(capstan_encconf_build(&p, g_tftp.key, &file, &len, &why), CAPSTAN_EINVAL);
  p = params(NULL, "x", 1, CAPSTAN_SGN_HASH_SHA1);
  assert_int_equal(capstan_encconf_build(&p, g_tftp.key, &file, &len, &why), CAPSTAN_EINVAL);
  EVP_PKEY_free(ec);
}

static void test_decrypt_failures(void **state) {
  (void)state;
  static const char cfg[] = "<device><x>1</x></device>";
  capstan_encconf_params_t p = params(g_phone2048, cfg, strlen(cfg), CAPSTAN_SGN_HASH_SHA512);
  uint8_t *file = NULL, *plain = NULL;
  size_t len = 0, plain_len = 0;
  const char *why = NULL;
  assert_int_equal(capstan_encconf_build(&p, g_tftp.key, &file, &len, &why), 0);
  /* Another phone's key (same size) cannot unwrap it. */
  EVP_PKEY *other = test_rsa_key(2048);
  assert_int_not_equal(capstan_encconf_decrypt(file, len, other, &plain, &plain_len, &why), 0);
  assert_null(plain);
  EVP_PKEY_free(other);
  /* A key of another size is refused before trying. */
  assert_int_equal(capstan_encconf_decrypt(file, len, g_phone1024, &plain, &plain_len, &why),
                   CAPSTAN_EACCES);
  /* A flipped ciphertext bit in the first block garbles the plaintext:
   * hash mismatch. In the last block it garbles the padding. */
  capstan_sgn_info_t info;
  assert_int_equal(capstan_sgn_parse(file, len, &info, &why), 0);
  size_t off = info.header_length;
  file[off] ^= 0x01;
  assert_int_equal(capstan_encconf_decrypt(file, len, g_phone2048, &plain, &plain_len, &why),
                   CAPSTAN_EACCES);
  assert_non_null(strstr(why, "HASH"));
  file[off] ^= 0x01;
  file[len - 1] ^= 0x01;
  assert_int_equal(capstan_encconf_decrypt(file, len, g_phone2048, &plain, &plain_len, &why),
                   CAPSTAN_EACCES);
  file[len - 1] ^= 0x01;
  /* Payload not a whole number of blocks. */
  assert_int_equal(capstan_encconf_decrypt(file, len - 1, g_phone2048, &plain, &plain_len, &why),
                   CAPSTAN_EINVAL);
  assert_int_equal(capstan_encconf_decrypt(file, len, g_phone2048, &plain, &plain_len, &why), 0);
  assert_int_equal(plain_len, strlen(cfg));
  free(plain);
  free(file);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trips),      cmocka_unit_test(test_aligned_padding),
      cmocka_unit_test(test_field_layout),     cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_decrypt_failures),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
