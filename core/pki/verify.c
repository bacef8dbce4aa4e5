/* PKI: checking what phones send (public keys, signatures, SUDI data,
 * certificate chains). The phone side (signing, building SUDI_DATA) is the
 * simulator's: bench/phone/phone_pki.c. */
#include "core/pki/pki.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/digest.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "core/base/error.h"
#include "core/pki/internal.h"

/* PKCS#1 v1.5 type 1 needs at least 8 bytes of 0xFF (RFC 8017 9.2 note 1). */
#define PKCS1_MIN_PAD 8
/* Largest RSA modulus we do raw operations with, in bytes. */
#define MAX_RSA_BYTES (CAPSTAN_PKI_MAX_SIG)
/* Largest SUDI_DATA element. */
#define SUDI_MAX_TOTAL (CAPSTAN_PKI_MAX_CERT_DER + 2 * CAPSTAN_PKI_MAX_SIG + 16)

/* DER DigestInfo prefixes (RFC 8017 9.2 note 1), followed by the digest. */
static const uint8_t kPrefixSha1[] = {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e,
                                      0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14};
static const uint8_t kPrefixSha256[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                        0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
static const uint8_t kPrefixSha512[] = {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                        0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40};

static void digest_info_prefix(int hash_id, const uint8_t **p, size_t *len) {
  switch (hash_id) {
    case CAPSTAN_HASH_SHA1:
      *p = kPrefixSha1;
      *len = sizeof(kPrefixSha1);
      return;
    case CAPSTAN_HASH_SHA256:
      *p = kPrefixSha256;
      *len = sizeof(kPrefixSha256);
      return;
    default:
      *p = kPrefixSha512;
      *len = sizeof(kPrefixSha512);
      return;
  }
}

static int ec_curve_nid(unsigned key_bits) {
  switch (key_bits) {
    case 256:
      return NID_X9_62_prime256v1;
    case 384:
      return NID_secp384r1;
    case 521:
      return NID_secp521r1;
    default:
      return NID_undef;
  }
}

/* Whether the BoringSSL call that just failed on this thread (its error
 * queue cleared before) failed for want of memory, the machine's fault
 * rather than the input's: it says so, or it could not even say why
 * (recording an error allocates the thread's error state the first time;
 * a parse failure otherwise always names its reason). */
static int failed_for_memory(void) {
  int n = 0;
  for (uint32_t e; (e = ERR_get_error()) != 0; n++) {
    if (ERR_GET_REASON(e) == ERR_R_MALLOC_FAILURE) return 1;
  }
  return n == 0;
}

int capstan_pki_check_public_key(const uint8_t *spki, size_t len, int key_alg, unsigned key_bits,
                                 EVP_PKEY **out, const char **why) {
  const char *reason = NULL;
  int no_memory = 0;
  EVP_PKEY *key = NULL;
  if (out != NULL) *out = NULL;
  if (why != NULL) *why = NULL;
  if (out == NULL) return CAPSTAN_EINVAL;
  ERR_clear_error(); /* what fails below is this key's */
  if (!capstan_key_valid(key_alg, key_bits) ||
      (key_alg == CAPSTAN_KEY_EC && ec_curve_nid(key_bits) == NID_undef)) {
    reason = "unsupported key request";
    goto err;
  }
  if (spki == NULL || len == 0 || len > CAPSTAN_PKI_MAX_SPKI_DER) {
    reason = "malformed public key";
    goto err;
  }
  CBS cbs;
  CBS_init(&cbs, spki, len);
  key = EVP_parse_public_key(&cbs);
  if (key == NULL) no_memory = failed_for_memory();
  if (key == NULL || CBS_len(&cbs) != 0) {
    reason = "malformed public key";
    goto err;
  }
  int type = EVP_PKEY_id(key);
  if (key_alg == CAPSTAN_KEY_RSA) {
    if (type != EVP_PKEY_RSA) {
      reason = "key type mismatch";
      goto err;
    }
    const RSA *rsa = EVP_PKEY_get0_RSA(key);
    if (RSA_bits(rsa) != key_bits) {
      reason = "key size mismatch";
      goto err;
    }
    const BIGNUM *e = RSA_get0_e(rsa);
    /* Odd, at least 3, below 2^33: what every RSA implementation expects. */
    if (e == NULL || !BN_is_odd(e) || BN_num_bits(e) < 2 || BN_num_bits(e) > 33) {
      reason = "bad RSA exponent";
      goto err;
    }
  } else {
    if (type != EVP_PKEY_EC) {
      reason = "key type mismatch";
      goto err;
    }
    const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(key);
    const EC_GROUP *group = EC_KEY_get0_group(ec);
    if (group == NULL || EC_GROUP_get_curve_name(group) != ec_curve_nid(key_bits)) {
      reason = "curve mismatch";
      goto err;
    }
    /* The parser already refuses points off the curve; checking again keeps
     * that promise independent of the BoringSSL version. */
    if (!EC_KEY_check_key(ec)) {
      no_memory = failed_for_memory();
      reason = "malformed public key";
      goto err;
    }
  }
  *out = key;
  return 0;
err:
  EVP_PKEY_free(key);
  if (no_memory) {
    if (why != NULL) *why = "out of memory";
    return pki_fail(CAPSTAN_ENOMEM);
  }
  if (why != NULL) *why = reason;
  return pki_fail(CAPSTAN_EINVAL);
}

static int digest_of(int hash_id, const uint8_t *data, size_t data_len, uint8_t *md,
                     unsigned *md_len) {
  const EVP_MD *type = capstan_pki_hash_md(hash_id);
  if (type == NULL) return 0;
  if (data == NULL && data_len > 0) return 0;
  return EVP_Digest(data_len > 0 ? data : (const uint8_t *)"", data_len, md, md_len, type, NULL);
}

static int rsa_verify(RSA *rsa, int hash_id, const uint8_t *md, size_t md_len, const uint8_t *sig,
                      size_t sig_len) {
  size_t k = RSA_size(rsa);
  if (k == 0 || k > MAX_RSA_BYTES || sig_len == 0 || sig_len > k) return 0;
  uint8_t in[MAX_RSA_BYTES], em[MAX_RSA_BYTES];
  /* A signature with its leading zero bytes stripped is the same integer. */
  memset(in, 0, k - sig_len);
  memcpy(in + (k - sig_len), sig, sig_len);
  size_t em_len = 0;
  if (!RSA_verify_raw(rsa, &em_len, em, sizeof(em), in, k, RSA_NO_PADDING) || em_len != k) {
    return 0;
  }
  /* The padding is public data: plain comparisons are fine here. */
  if (em[0] != 0x00 || em[1] != 0x01) return 0;
  size_t i = 2;
  while (i < k && em[i] == 0xff) i++;
  if (i - 2 < PKCS1_MIN_PAD || i >= k || em[i] != 0x00) return 0;
  i++;
  const uint8_t *rest = em + i;
  size_t rest_len = k - i;
  if (rest_len == md_len) return CRYPTO_memcmp(rest, md, md_len) == 0;
  const uint8_t *prefix;
  size_t prefix_len;
  digest_info_prefix(hash_id, &prefix, &prefix_len);
  if (rest_len != prefix_len + md_len) return 0;
  /* Evaluate both comparisons before deciding, so timing says nothing about
   * which part differed. */
  int bad = CRYPTO_memcmp(rest, prefix, prefix_len) != 0;
  bad |= CRYPTO_memcmp(rest + prefix_len, md, md_len) != 0;
  return !bad;
}

int capstan_pki_verify_signed_data(EVP_PKEY *key, int hash_id, const uint8_t *data, size_t data_len,
                                   const uint8_t *sig, size_t sig_len) {
  uint8_t md[EVP_MAX_MD_SIZE];
  unsigned md_len = 0;
  if (key == NULL || sig == NULL || sig_len == 0 || sig_len > CAPSTAN_PKI_MAX_SIG ||
      !digest_of(hash_id, data, data_len, md, &md_len)) {
    return pki_fail(CAPSTAN_EACCES);
  }
  int ok = 0;
  switch (EVP_PKEY_id(key)) {
    case EVP_PKEY_RSA:
      ok = rsa_verify(EVP_PKEY_get0_RSA(key), hash_id, md, md_len, sig, sig_len);
      break;
    case EVP_PKEY_EC:
      ok = ECDSA_verify(0, md, md_len, sig, sig_len, EVP_PKEY_get0_EC_KEY(key)) == 1;
      break;
    default:
      ok = 0;
  }
  return ok ? 0 : pki_fail(CAPSTAN_EACCES);
}

int capstan_pki_verify_chain(X509 *cert, STACK_OF(X509) * untrusted_intermediates,
                             STACK_OF(X509) * trusted) {
  if (cert == NULL || trusted == NULL) return CAPSTAN_EINVAL;
  if (sk_X509_num(trusted) == 0) return CAPSTAN_EACCES;
  int rc = CAPSTAN_ENOMEM;
  X509_STORE_CTX *ctx = NULL;
  /* A fresh store per call: the trust list changes at run time and a store
   * of our own is never shared between threads. */
  X509_STORE *store = X509_STORE_new();
  if (store == NULL) goto done;
  for (size_t i = 0; i < sk_X509_num(trusted); i++) {
    /* Duplicates in the list are harmless; ignore their errors. */
    if (!X509_STORE_add_cert(store, sk_X509_value(trusted, i))) ERR_clear_error();
  }
  ctx = X509_STORE_CTX_new();
  if (ctx == NULL || !X509_STORE_CTX_init(ctx, store, cert, untrusted_intermediates)) goto done;
  /* Any listed certificate is an anchor, whether or not it is self-signed. */
  X509_STORE_CTX_set_flags(ctx, X509_V_FLAG_PARTIAL_CHAIN);
  rc = X509_verify_cert(ctx) == 1 ? 0 : CAPSTAN_EACCES;
done:
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  return rc != 0 ? pki_fail(rc) : 0;
}

/* session_id (little-endian) || cert DER: what SUDI signatures cover. */
static uint8_t *sudi_signed_bytes(uint32_t session_id, const uint8_t *cert, size_t cert_len,
                                  size_t *out_len) {
  uint8_t *buf = malloc(4 + cert_len);
  if (buf == NULL) return NULL;
  buf[0] = (uint8_t)session_id;
  buf[1] = (uint8_t)(session_id >> 8);
  buf[2] = (uint8_t)(session_id >> 16);
  buf[3] = (uint8_t)(session_id >> 24);
  memcpy(buf + 4, cert, cert_len);
  *out_len = 4 + cert_len;
  return buf;
}

int capstan_pki_verify_sudi(const uint8_t *sudi_data, size_t len, uint32_t session_id,
                            X509 **sudi_cert) {
  if (sudi_cert == NULL) return CAPSTAN_EINVAL;
  *sudi_cert = NULL;
  if (sudi_data == NULL || len == 0 || len > SUDI_MAX_TOTAL) return CAPSTAN_EINVAL;
  CBS in, cert, sig1, sig2;
  uint8_t tag0, tag1, tag2;
  CBS_init(&in, sudi_data, len);
  if (!CBS_get_u8(&in, &tag0) || tag0 != 0x00 || !CBS_get_u16_length_prefixed(&in, &cert) ||
      !CBS_get_u8(&in, &tag1) || tag1 != CAPSTAN_HASH_SHA1 ||
      !CBS_get_u16_length_prefixed(&in, &sig1) || !CBS_get_u8(&in, &tag2) ||
      (tag2 != CAPSTAN_HASH_SHA512 && tag2 != CAPSTAN_HASH_SHA256) ||
      !CBS_get_u16_length_prefixed(&in, &sig2) || CBS_len(&in) != 0) {
    return CAPSTAN_EINVAL;
  }
  if (CBS_len(&sig1) == 0 || CBS_len(&sig1) > CAPSTAN_PKI_MAX_SIG || CBS_len(&sig2) == 0 ||
      CBS_len(&sig2) > CAPSTAN_PKI_MAX_SIG) {
    return CAPSTAN_EINVAL;
  }
  X509 *x = NULL;
  int rc = capstan_pki_parse_cert(CBS_data(&cert), CBS_len(&cert), &x);
  if (rc != 0) return rc;
  EVP_PKEY *key = X509_get_pubkey(x);
  if (key == NULL) {
    X509_free(x);
    return pki_fail(CAPSTAN_EINVAL);
  }
  size_t signed_len = 0;
  uint8_t *signed_bytes =
      sudi_signed_bytes(session_id, CBS_data(&cert), CBS_len(&cert), &signed_len);
  if (signed_bytes == NULL) {
    rc = CAPSTAN_ENOMEM;
  } else if (capstan_pki_verify_signed_data(key, CAPSTAN_HASH_SHA1, signed_bytes, signed_len,
                                            CBS_data(&sig1), CBS_len(&sig1)) != 0 ||
             capstan_pki_verify_signed_data(key, tag2, signed_bytes, signed_len, CBS_data(&sig2),
                                            CBS_len(&sig2)) != 0) {
    rc = CAPSTAN_EACCES;
  }
  free(signed_bytes);
  EVP_PKEY_free(key);
  if (rc != 0) {
    X509_free(x);
    return pki_fail(rc);
  }
  *sudi_cert = x;
  return 0;
}
