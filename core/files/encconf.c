#include "core/files/encconf.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bytestring.h>
#include <openssl/cipher.h>
#include <openssl/digest.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "core/base/error.h"

#define SET_WHY(s)               \
  do {                           \
    if (why != NULL) *why = (s); \
  } while (0)

#define AES_KEY_LEN 16
#define AES_BLOCK 16
#define MAX_WRAPPED (4096 / 8)

int capstan_encconf_key_usable(EVP_PKEY *phone_pub, const char **why) {
  if (phone_pub == NULL) {
    SET_WHY("no phone key on record");
    return CAPSTAN_EINVAL;
  }
  if (EVP_PKEY_id(phone_pub) == EVP_PKEY_EC) {
    SET_WHY(CAPSTAN_ENCCONF_EC_REASON);
    return CAPSTAN_EINVAL;
  }
  if (EVP_PKEY_id(phone_pub) != EVP_PKEY_RSA) {
    SET_WHY("phone key is neither RSA nor EC");
    return CAPSTAN_EINVAL;
  }
  if (EVP_PKEY_size(phone_pub) > MAX_WRAPPED || EVP_PKEY_bits(phone_pub) < 512) {
    SET_WHY("phone RSA key size not supported");
    return CAPSTAN_EINVAL;
  }
  return 0;
}

static int add_tlv(CBB *cbb, uint8_t tag, const uint8_t *v, size_t n) {
  CBB child;
  return CBB_add_u8(cbb, tag) && CBB_add_u16_length_prefixed(cbb, &child) &&
         CBB_add_bytes(&child, v, n) && CBB_flush(cbb);
}

static int add_tlv_u8(CBB *cbb, uint8_t tag, uint8_t v) {
  return add_tlv(cbb, tag, &v, 1);
}

static int add_tlv_u16(CBB *cbb, uint8_t tag, uint16_t v) {
  uint8_t be[2] = {(uint8_t)(v >> 8), (uint8_t)v};
  return add_tlv(cbb, tag, be, 2);
}

/* The fields 16..27. */
static int encode_fields(CBB *cbb, const uint8_t iv[AES_BLOCK], uint16_t padding,
                         const uint8_t *wrapped, size_t wrapped_len, int hash_alg,
                         const uint8_t *digest, size_t digest_len) {
  CBB info, iv_info, key_info;
  return CBB_add_u8(cbb, CAPSTAN_SGN_TAG_ENCRYPTION_INFO) &&
         CBB_add_u16_length_prefixed(cbb, &info) &&
         CBB_add_u8(&info, CAPSTAN_SGN_TAG_ENCRYPTION_IV_INFO) &&
         CBB_add_u16_length_prefixed(&info, &iv_info) &&
         add_tlv_u8(&iv_info, CAPSTAN_SGN_TAG_ENCRYPTION_IV_ZERO, 0) &&
         add_tlv(&iv_info, CAPSTAN_SGN_TAG_ENCRYPTION_IV, iv, AES_BLOCK) &&
         add_tlv_u16(&iv_info, CAPSTAN_SGN_TAG_ENCRYPTION_PADDING, padding) &&
         CBB_add_u8(&info, CAPSTAN_SGN_TAG_ENCRYPTION_KEY_INFO) &&
         CBB_add_u16_length_prefixed(&info, &key_info) &&
         add_tlv_u8(&key_info, CAPSTAN_SGN_TAG_ENCRYPTION_KEY_ZERO, 0) &&
         add_tlv_u16(&key_info, CAPSTAN_SGN_TAG_ENCRYPTION_KEY_SIZE, (uint16_t)(wrapped_len * 8)) &&
         add_tlv_u8(&key_info, CAPSTAN_SGN_TAG_ENCRYPTION_KEY_ALGORITHM, 1) &&
         add_tlv(&key_info, CAPSTAN_SGN_TAG_ENCRYPTION_KEY, wrapped, wrapped_len) &&
         CBB_flush(cbb) &&
         add_tlv_u8(cbb, CAPSTAN_SGN_TAG_ENCRYPTION_HASH_ALGORITHM, (uint8_t)hash_alg) &&
         add_tlv(cbb, CAPSTAN_SGN_TAG_ENCRYPTION_HASH, digest, digest_len) && CBB_flush(cbb);
}

/* AES-128-CBC without cipher padding (the input is already block-aligned). */
static int aes_cbc(int enc, const uint8_t key[AES_KEY_LEN], const uint8_t iv[AES_BLOCK],
                   const uint8_t *in, size_t len, uint8_t *out) {
  EVP_CIPHER_CTX ctx;
  EVP_CIPHER_CTX_init(&ctx);
  int n1 = 0, n2 = 0;
  int ok = len % AES_BLOCK == 0 && len <= CAPSTAN_SGN_MAX_FILE + AES_BLOCK &&
           EVP_CipherInit_ex(&ctx, EVP_aes_128_cbc(), NULL, key, iv, enc) &&
           EVP_CIPHER_CTX_set_padding(&ctx, 0) && EVP_CipherUpdate(&ctx, out, &n1, in, (int)len) &&
           EVP_CipherFinal_ex(&ctx, out + n1, &n2) && (size_t)(n1 + n2) == len;
  EVP_CIPHER_CTX_cleanup(&ctx);
  return ok;
}

int capstan_encconf_prepare(const capstan_encconf_params_t *p, capstan_sgn_prepared_t *out,
                            const char **why) {
  uint8_t key[AES_KEY_LEN], iv[AES_BLOCK];
  uint8_t wrapped[MAX_WRAPPED];
  size_t wrapped_len = sizeof(wrapped);
  uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned digest_len = 0;
  uint8_t *plain = NULL, *cipher = NULL, *fields = NULL;
  size_t fields_len = 0;
  EVP_PKEY_CTX *pctx = NULL;
  CBB cbb;
  CBB_zero(&cbb);
  int rc = CAPSTAN_EINVAL;

  if (p == NULL || p->signer_cert == NULL || p->filename == NULL ||
      (p->config == NULL && p->config_len > 0)) {
    SET_WHY("missing parameter");
    return CAPSTAN_EINVAL;
  }
  rc = capstan_encconf_key_usable(p->phone_pub, why);
  if (rc != 0) return rc;
  const EVP_MD *md = capstan_sgn_hash_md(p->enc_hash_alg);
  if (md == NULL) {
    SET_WHY("ENCRYPTION_HASH_ALGORITHM must be SHA-1 or SHA-512");
    return CAPSTAN_EINVAL;
  }
  if (p->config_len > CAPSTAN_SGN_MAX_FILE) {
    SET_WHY("configuration too large");
    return CAPSTAN_EINVAL;
  }
  /* 1..16 bytes of 0x0D: a whole block when the configuration is aligned. */
  size_t pad = AES_BLOCK - p->config_len % AES_BLOCK;
  size_t total = p->config_len + pad;
  rc = CAPSTAN_ENOMEM;
  plain = malloc(total);
  cipher = malloc(total);
  if (plain == NULL || cipher == NULL) goto done;
  if (p->config_len > 0) memcpy(plain, p->config, p->config_len);
  memset(plain + p->config_len, 0x0D, pad);

  rc = CAPSTAN_ECRYPTO;
  if (!EVP_Digest(p->config, p->config_len, digest, &digest_len, md, NULL)) {
    SET_WHY("hashing failed");
    goto done;
  }
  if (!RAND_bytes(key, sizeof(key)) || !RAND_bytes(iv, sizeof(iv)) ||
      !aes_cbc(1, key, iv, plain, total, cipher)) {
    SET_WHY("AES encryption failed");
    goto done;
  }
  pctx = EVP_PKEY_CTX_new(p->phone_pub, NULL);
  if (pctx == NULL || EVP_PKEY_encrypt_init(pctx) <= 0 ||
      EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0 ||
      EVP_PKEY_encrypt(pctx, wrapped, &wrapped_len, key, sizeof(key)) <= 0) {
    SET_WHY("wrapping the AES key with the phone key failed");
    goto done;
  }
  rc = CAPSTAN_ENOMEM;
  if (!CBB_init(&cbb, 64 + wrapped_len + digest_len) ||
      !encode_fields(&cbb, iv, (uint16_t)pad, wrapped, wrapped_len, p->enc_hash_alg, digest,
                     digest_len) ||
      !CBB_finish(&cbb, &fields, &fields_len)) {
    SET_WHY("out of memory");
    goto done;
  }

  capstan_sgn_params_t sp;
  memset(&sp, 0, sizeof(sp));
  sp.version_major = 2;
  sp.version_minor = 0;
  sp.signer_cert = p->signer_cert;
  sp.hash_alg = p->sign_hash_alg;
  sp.filename = p->filename;
  sp.timestamp = p->timestamp;
  sp.extra_fields = fields;
  sp.extra_len = fields_len;
  sp.payload = cipher;
  sp.payload_len = total;
  rc = capstan_sgn_prepare(&sp, out, why);

done:
  if (rc == CAPSTAN_ECRYPTO) ERR_clear_error();
  OPENSSL_cleanse(key, sizeof(key));
  if (plain != NULL) OPENSSL_cleanse(plain, total);
  free(plain);
  free(cipher);
  OPENSSL_free(fields);
  CBB_cleanup(&cbb);
  EVP_PKEY_CTX_free(pctx);
  return rc;
}

int capstan_encconf_build(const capstan_encconf_params_t *params, EVP_PKEY *signer_key,
                          uint8_t **out, size_t *out_len, const char **why) {
  capstan_sgn_prepared_t prep;
  memset(&prep, 0, sizeof(prep));
  *out = NULL;
  *out_len = 0;
  int rc = capstan_encconf_prepare(params, &prep, why);
  if (rc != 0) return rc;
  return capstan_sgn_sign_prepared(&prep, signer_key, out, out_len, why);
}

int capstan_encconf_decrypt(const uint8_t *file, size_t len, EVP_PKEY *phone_priv, uint8_t **plain,
                            size_t *plain_len, const char **why) {
  capstan_sgn_info_t info;
  uint8_t key[MAX_WRAPPED];
  size_t key_len = sizeof(key);
  uint8_t *buf = NULL;
  EVP_PKEY_CTX *pctx = NULL;
  int rc;
  *plain = NULL;
  *plain_len = 0;
  rc = capstan_sgn_parse(file, len, &info, why);
  if (rc != 0) return rc;
  if (!info.has_encryption) {
    SET_WHY("not an encrypted file (VERSION 2.0)");
    return CAPSTAN_EINVAL;
  }
  const capstan_sgn_enc_info_t *enc = &info.enc;
  size_t n = info.payload.len;
  if (n == 0 || n % AES_BLOCK != 0 || enc->padding > n) {
    SET_WHY("payload is not a whole number of AES blocks");
    return CAPSTAN_EINVAL;
  }
  if (phone_priv == NULL || EVP_PKEY_id(phone_priv) != EVP_PKEY_RSA ||
      (size_t)EVP_PKEY_size(phone_priv) != enc->wrapped_key.len) {
    SET_WHY("phone key is not RSA of the wrapped key's size");
    return CAPSTAN_EACCES;
  }
  rc = CAPSTAN_EACCES;
  pctx = EVP_PKEY_CTX_new(phone_priv, NULL);
  if (pctx == NULL || EVP_PKEY_decrypt_init(pctx) <= 0 ||
      EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0 ||
      EVP_PKEY_decrypt(pctx, key, &key_len, enc->wrapped_key.data, enc->wrapped_key.len) <= 0 ||
      key_len != AES_KEY_LEN) {
    SET_WHY("cannot unwrap the AES key with this phone key");
    goto done;
  }
  buf = malloc(n);
  if (buf == NULL) {
    rc = CAPSTAN_ENOMEM;
    SET_WHY("out of memory");
    goto done;
  }
  if (!aes_cbc(0, key, enc->iv.data, info.payload.data, n, buf)) {
    rc = CAPSTAN_ECRYPTO;
    SET_WHY("AES decryption failed");
    goto done;
  }
  size_t plen = n - enc->padding;
  for (size_t i = plen; i < n; i++) {
    if (buf[i] != 0x0D) {
      SET_WHY("padding is not ENCRYPTION_PADDING bytes of 0x0D");
      goto done;
    }
  }
  uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned digest_len = 0;
  const EVP_MD *md = capstan_sgn_hash_md(enc->hash_alg);
  if (md == NULL || !EVP_Digest(buf, plen, digest, &digest_len, md, NULL) ||
      digest_len != enc->hash.len || CRYPTO_memcmp(digest, enc->hash.data, digest_len) != 0) {
    SET_WHY("ENCRYPTION_HASH does not match the decrypted configuration");
    goto done;
  }
  *plain = buf;
  *plain_len = plen;
  buf = NULL;
  rc = 0;
done:
  ERR_clear_error();
  OPENSSL_cleanse(key, sizeof(key));
  free(buf);
  EVP_PKEY_CTX_free(pctx);
  return rc;
}

const char *capstan_encconf_unavailable_reason(bool encrypted, const uint8_t *spki,
                                               size_t spki_len) {
  if (!encrypted) return NULL;
  if (spki == NULL || spki_len == 0) return "no certificate on record: waiting for a CAPF session";
  const uint8_t *p = spki;
  EVP_PKEY *key = d2i_PUBKEY(NULL, &p, (long)spki_len);
  if (key == NULL) return "public key on record is unreadable";
  const char *why = NULL;
  capstan_encconf_key_usable(key, &why);
  EVP_PKEY_free(key);
  return why;
}
