/* The phone side of the PKI. See phone_pki.h. Only BoringSSL's public API
 * and core/pki/pki.h: nothing of the server's internals. */
#include "bench/phone/phone_pki.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/digest.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/base/error.h"

/* PKCS#1 v1.5 type 1 needs at least 8 bytes of 0xFF (RFC 8017 9.2 note 1). */
#define PKCS1_MIN_PAD 8
/* Largest RSA modulus we sign with, in bytes (RSA 8192). */
#define MAX_RSA_BYTES 1024
#define SERIAL_LEN 16
#define SECONDS_PER_DAY 86400
#define TEN_YEARS_DAYS 3650
/* Start an hour back, so that a peer whose clock is a little behind still
 * accepts the certificate. */
#define BACKDATE_SECONDS 3600
/* ub-common-name (RFC 5280). */
#define MAX_CN 64

static int fail(int err) {
  ERR_clear_error();
  return err;
}

int capstan_phone_sign(EVP_PKEY *key, int hash_id, const uint8_t *data, size_t data_len,
                       uint8_t **sig, size_t *sig_len) {
  if (sig == NULL || sig_len == NULL) return CAPSTAN_EINVAL;
  *sig = NULL;
  *sig_len = 0;
  const EVP_MD *type = capstan_pki_hash_md(hash_id);
  if (key == NULL || type == NULL || (data == NULL && data_len > 0)) return CAPSTAN_EINVAL;
  uint8_t md[EVP_MAX_MD_SIZE];
  unsigned md_len = 0;
  if (!EVP_Digest(data_len > 0 ? data : (const uint8_t *)"", data_len, md, &md_len, type, NULL)) {
    return fail(CAPSTAN_EINVAL);
  }
  uint8_t *out = NULL;
  size_t out_len = 0;
  if (EVP_PKEY_id(key) == EVP_PKEY_RSA) {
    RSA *rsa = EVP_PKEY_get0_RSA(key);
    size_t k = RSA_size(rsa);
    if (k > MAX_RSA_BYTES || md_len + 3 + PKCS1_MIN_PAD > k) return fail(CAPSTAN_ECRYPTO);
    uint8_t em[MAX_RSA_BYTES];
    em[0] = 0x00;
    em[1] = 0x01;
    memset(em + 2, 0xff, k - md_len - 3);
    em[k - md_len - 1] = 0x00;
    memcpy(em + (k - md_len), md, md_len);
    out = malloc(k);
    if (out == NULL) return fail(CAPSTAN_ENOMEM);
    if (!RSA_sign_raw(rsa, &out_len, out, k, em, k, RSA_NO_PADDING)) {
      free(out);
      return fail(CAPSTAN_ECRYPTO);
    }
  } else if (EVP_PKEY_id(key) == EVP_PKEY_EC) {
    const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(key);
    size_t max = ECDSA_size(ec);
    if (max == 0) return fail(CAPSTAN_ECRYPTO);
    out = malloc(max);
    if (out == NULL) return fail(CAPSTAN_ENOMEM);
    unsigned n = 0;
    if (!ECDSA_sign(0, md, md_len, out, &n, ec)) {
      free(out);
      return fail(CAPSTAN_ECRYPTO);
    }
    out_len = n;
  } else {
    return CAPSTAN_EINVAL;
  }
  *sig = out;
  *sig_len = out_len;
  return 0;
}

int capstan_phone_make_sudi(EVP_PKEY *key, const uint8_t *cert_der, size_t cert_len,
                            uint32_t session_id, uint8_t **out, size_t *out_len) {
  if (out == NULL || out_len == NULL) return CAPSTAN_EINVAL;
  *out = NULL;
  *out_len = 0;
  if (key == NULL || cert_der == NULL || cert_len == 0 || cert_len > CAPSTAN_PKI_MAX_CERT_DER) {
    return CAPSTAN_EINVAL;
  }
  /* What both signatures cover: session_id (little-endian) || cert DER. */
  size_t signed_len = 4 + cert_len;
  uint8_t *signed_bytes = malloc(signed_len);
  if (signed_bytes == NULL) return CAPSTAN_ENOMEM;
  signed_bytes[0] = (uint8_t)session_id;
  signed_bytes[1] = (uint8_t)(session_id >> 8);
  signed_bytes[2] = (uint8_t)(session_id >> 16);
  signed_bytes[3] = (uint8_t)(session_id >> 24);
  memcpy(signed_bytes + 4, cert_der, cert_len);
  uint8_t *s1 = NULL, *s2 = NULL;
  size_t s1_len = 0, s2_len = 0;
  int rc = capstan_phone_sign(key, CAPSTAN_HASH_SHA1, signed_bytes, signed_len, &s1, &s1_len);
  if (rc == 0) {
    rc = capstan_phone_sign(key, CAPSTAN_HASH_SHA512, signed_bytes, signed_len, &s2, &s2_len);
  }
  free(signed_bytes);
  if (rc == 0) {
    CBB cbb, child;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (!CBB_init(&cbb, cert_len + s1_len + s2_len + 9) || !CBB_add_u8(&cbb, 0x00) ||
        !CBB_add_u16_length_prefixed(&cbb, &child) || !CBB_add_bytes(&child, cert_der, cert_len) ||
        !CBB_add_u8(&cbb, CAPSTAN_HASH_SHA1) || !CBB_add_u16_length_prefixed(&cbb, &child) ||
        !CBB_add_bytes(&child, s1, s1_len) || !CBB_add_u8(&cbb, CAPSTAN_HASH_SHA512) ||
        !CBB_add_u16_length_prefixed(&cbb, &child) || !CBB_add_bytes(&child, s2, s2_len) ||
        !CBB_finish(&cbb, &buf, &len)) {
      CBB_cleanup(&cbb);
      rc = fail(CAPSTAN_ENOMEM);
    } else {
      /* Callers free() what we return; CBB memory is OPENSSL_free'd. */
      *out = malloc(len);
      if (*out == NULL) {
        rc = CAPSTAN_ENOMEM;
      } else {
        memcpy(*out, buf, len);
        *out_len = len;
      }
      OPENSSL_free(buf);
    }
  }
  free(s1);
  free(s2);
  return rc;
}

/* ---- A small CA ------------------------------------------------------------ */

/* 128 random bits, positive, first byte non-zero: a 16-byte DER INTEGER. */
static int set_random_serial(X509 *x) {
  uint8_t serial[SERIAL_LEN];
  do {
    if (!RAND_bytes(serial, sizeof(serial))) return 0;
    serial[0] &= 0x7f;
  } while (serial[0] == 0);
  BIGNUM *bn = BN_bin2bn(serial, sizeof(serial), NULL);
  ASN1_INTEGER *i = bn != NULL ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
  int ok = i != NULL && X509_set_serialNumber(x, i);
  ASN1_INTEGER_free(i);
  BN_free(bn);
  return ok;
}

static int set_times(X509 *x) {
  int64_t now = (int64_t)time(NULL);
  ASN1_TIME *nb = ASN1_TIME_set(NULL, (time_t)(now - BACKDATE_SECONDS));
  ASN1_TIME *na = ASN1_TIME_set(NULL, (time_t)(now + (int64_t)TEN_YEARS_DAYS * SECONDS_PER_DAY));
  int ok = nb != NULL && na != NULL && X509_set1_notBefore(x, nb) && X509_set1_notAfter(x, na);
  ASN1_TIME_free(nb);
  ASN1_TIME_free(na);
  return ok;
}

/* Adds the extension |nid| = |value| in OpenSSL's configuration syntax;
 * |issuer| and |x| give key identifiers their keys. */
static int add_ext(X509 *x, X509 *issuer, int nid, const char *value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
  X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &ctx, nid, value);
  int ok = ext != NULL && X509_add_ext(x, ext, -1);
  X509_EXTENSION_free(ext);
  return ok;
}

/* A certificate for |key| named CN=|cn|, issued by |issuer| (NULL:
 * self-signed) and signed by |signer| with SHA-256. */
static X509 *make_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *signer, int is_ca) {
  X509 *x = X509_new();
  X509_NAME *name = X509_NAME_new();
  size_t cn_len = strnlen(cn, MAX_CN + 1);
  int ok = x != NULL && name != NULL && cn_len > 0 && cn_len <= MAX_CN &&
           X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, (const uint8_t *)cn,
                                      (int)cn_len, -1, 0) &&
           X509_set_version(x, X509_VERSION_3) && set_random_serial(x) &&
           X509_set_subject_name(x, name) &&
           X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : name) &&
           set_times(x) && X509_set_pubkey(x, key);
  X509 *iss = issuer != NULL ? issuer : x;
  if (ok && is_ca) {
    ok = add_ext(x, iss, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") &&
         add_ext(x, iss, NID_key_usage, "critical,digitalSignature,keyCertSign") &&
         add_ext(x, iss, NID_subject_key_identifier, "hash");
  } else if (ok) {
    ok = add_ext(x, iss, NID_basic_constraints, "CA:FALSE") &&
         add_ext(x, iss, NID_key_usage, "critical,digitalSignature,keyEncipherment") &&
         add_ext(x, iss, NID_ext_key_usage, "serverAuth,clientAuth") &&
         add_ext(x, iss, NID_subject_key_identifier, "hash") &&
         add_ext(x, iss, NID_authority_key_identifier, "keyid:always");
  }
  ok = ok && X509_sign(x, signer, EVP_sha256()) > 0;
  X509_NAME_free(name);
  if (!ok) {
    X509_free(x);
    return NULL;
  }
  return x;
}

int capstan_phone_create_test_ca(const char *cn, capstan_identity_t *out) {
  if (out == NULL) return CAPSTAN_EINVAL;
  memset(out, 0, sizeof(*out));
  if (cn == NULL || strstr(cn, "CAPF-") != NULL) return CAPSTAN_EINVAL;
  size_t cn_len = strnlen(cn, MAX_CN + 1);
  if (cn_len == 0 || cn_len > MAX_CN) return CAPSTAN_EINVAL;
  EVP_PKEY *key = NULL;
  int rc = capstan_pki_generate_key(CAPSTAN_KEY_EC, 256, &key);
  if (rc != 0) return rc;
  X509 *cert = make_cert(cn, key, NULL, key, 1);
  if (cert == NULL) {
    EVP_PKEY_free(key);
    return fail(CAPSTAN_ECRYPTO);
  }
  out->cert = cert;
  out->key = key;
  return 0;
}

int capstan_phone_issue_test_leaf(const capstan_identity_t *ca, const char *cn, EVP_PKEY *key,
                                  uint8_t **der, size_t *der_len) {
  if (der == NULL || der_len == NULL) return CAPSTAN_EINVAL;
  *der = NULL;
  *der_len = 0;
  if (ca == NULL || ca->cert == NULL || ca->key == NULL || cn == NULL || key == NULL) {
    return CAPSTAN_EINVAL;
  }
  size_t cn_len = strnlen(cn, MAX_CN + 1);
  if (cn_len == 0 || cn_len > MAX_CN) return CAPSTAN_EINVAL;
  X509 *cert = make_cert(cn, key, ca->cert, ca->key, 0);
  if (cert == NULL) return fail(CAPSTAN_ECRYPTO);
  int rc = capstan_pki_cert_to_der(cert, der, der_len);
  X509_free(cert);
  return rc;
}
