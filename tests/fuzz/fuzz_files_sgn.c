/* Fuzz target for the signed-file readers: the header (capstan_sgn_parse),
 * .sgn, ITL (records and the certificate cross-check) and, for VERSION 2.0
 * headers, the encryption fields. Seeds: capstan-written .sgn, ITL and
 * .enc.sgn files in tests/fuzz/corpus/fuzz_files_sgn/; the .enc.sgn seeds are
 * encrypted for the test-only phone key below, so mutations reach the AES,
 * padding and hash checks of capstan_encconf_decrypt. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "core/files/encconf.h"
#include "core/files/itl.h"
#include "core/files/sgn.h"
#include "core/files/sgnhdr.h"

/* A throwaway 1024-bit RSA key, used only by this fuzz target. */
static const char kPhoneKey[] =
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIICXAIBAAKBgQCs/+x324b7+3J02aYAOG+1pl9WxgXLCRaixo4XCMhGzH0hm8kA\n"
    "z91MmC1szZOyCkrwSEe1zf/p4R/ViNkSAhJv4JcfQN18eWSJ+BVX9+5W6Bpb0HrO\n"
    "ABmP00fgQtxb7tvdM8VuZqI7MCiiw1cZgF9ayfSWkqFiC4PTYIXgM2eWHQIDAQAB\n"
    "AoGAE9nJ6HboJkHUAFR5F81iBBXzGqHeSE3iqwrdgwce9ADC2vhlOBKh8ggELlfo\n"
    "eqVzs96XW+UnWE7cuEPbpJVYSA2q/MgoKT2H5BGDYBSvHVEZHMuIvU3iaoIjAc3B\n"
    "UKDPTfXF4THuqG9r86wfJAjP0p90wqhSuuql/YRMJ4c54AECQQDju4ieghKq3esN\n"
    "YOaVDBR3V+KPCy7BzfcziOMKcXrbdUGcmWAUCCXcynSdLd1tbNOjw1uNuUQ8T5cC\n"
    "d80dt7BdAkEAwnkwq/45rlnnCgr+LyqiTAwTyWr2tiJ1nASS+06cX6iOWGcwXyJx\n"
    "/J1CBwS8WRR0HCL/NBxLpt3l9SWjT2AgwQJAO1OSjsCR/mNbpZuV1kRUXJbPlbYz\n"
    "ExgGCy3g/8p6WAue8R3fsrhArNktMflN0wDjzajKBAy8ov2U+HafP9unnQJBAIAW\n"
    "TC1sI1enlRmzRdmRDhZiegHWtqodpjLdfGWTUEFdBmxJgr2WNVd5yExRHTDa3OLP\n"
    "ViFfZaCBVH2Tja2xFcECQEG7EsyfUr7yXFFxtYhZv+WdPDb9ydPvLQpYoNoxG+MC\n"
    "0wgvYoKj+4l6rUMKz4wguVUZX30P3KI0nHU9uplrWgY=\n"
    "-----END RSA PRIVATE KEY-----\n";

static EVP_PKEY *phone_key(void) {
  static EVP_PKEY *key;
  if (key == NULL) {
    BIO *bio = BIO_new_mem_buf(kPhoneKey, -1);
    key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (key == NULL) abort();
  }
  return key;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *why = NULL;
  capstan_sgn_info_t info;
  if (capstan_sgn_parse(data, size, &info, &why) == 0) {
    /* Every range the reader returns lies inside the input. */
    const capstan_sgn_bytes_t *ranges[] = {
        &info.signer_name, &info.issuer_name,     &info.serial,
        &info.signature,   &info.filename,        &info.payload,
        &info.enc.iv,      &info.enc.wrapped_key, &info.enc.hash};
    for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
      const capstan_sgn_bytes_t *r = ranges[i];
      if (r->data != NULL && (r->data < data || r->data + r->len > data + size)) abort();
    }
    if (info.sig_field_offset + info.sig_field_len > info.header_length) abort();
    if (info.has_encryption) {
      uint8_t *plain = NULL;
      size_t plain_len = 0;
      if (capstan_encconf_decrypt(data, size, phone_key(), &plain, &plain_len, &why) == 0 &&
          plain_len >= info.payload.len)
        abort();
      free(plain);
    }
  }
  (void)capstan_sgnfile_parse(data, size, &info, &why);
  capstan_itl_info_t *itl = malloc(sizeof(*itl));
  if (itl == NULL) return 0;
  if (capstan_itl_parse(data, size, itl, &why) == 0) {
    for (size_t i = 0; i < itl->n_records; i++)
      (void)capstan_itl_check_record(&itl->records[i], &why);
  }
  free(itl);
  return 0;
}
