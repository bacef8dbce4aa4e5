/* PKI: identities, (de)serialisation, names, serials, digests, keys.
 * Certificate building lives in cert.c, verification in verify.c. */
#include "core/pki/pki.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/md5.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/obj.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/base/error.h"
#include "core/pki/internal.h"

/* Largest DN string we produce: far above any real certificate name, and a
 * bound on what a hostile certificate can make us allocate. */
#define PKI_MAX_DN_STRING 16384
/* Largest private key (PKCS#8 DER) we accept: an RSA 8192 key is ~4.8 KiB. */
#define PKI_MAX_KEY_DER 8192
/* Longest chain we carry in an identity. */
#define PKI_MAX_CHAIN 8

int pki_cbb_finish_malloc(CBB *cbb, uint8_t **out, size_t *out_len) {
  uint8_t *buf = NULL;
  size_t len = 0;
  *out = NULL;
  *out_len = 0;
  if (!CBB_finish(cbb, &buf, &len)) {
    CBB_cleanup(cbb);
    return pki_fail(CAPSTAN_ENOMEM);
  }
  uint8_t *copy = malloc(len > 0 ? len : 1);
  if (copy == NULL) {
    OPENSSL_cleanse(buf, len);
    OPENSSL_free(buf);
    return pki_fail(CAPSTAN_ENOMEM);
  }
  memcpy(copy, buf, len);
  /* Private keys pass through here too: leave no copy behind. */
  OPENSSL_cleanse(buf, len);
  OPENSSL_free(buf);
  *out = copy;
  *out_len = len;
  return 0;
}

const EVP_MD *capstan_pki_hash_md(int hash_id) {
  switch (hash_id) {
    case CAPSTAN_HASH_SHA1:
      return EVP_sha1();
    case CAPSTAN_HASH_SHA256:
      return EVP_sha256();
    case CAPSTAN_HASH_SHA512:
      return EVP_sha512();
    default:
      return NULL;
  }
}

void capstan_identity_cleanup(capstan_identity_t *id) {
  if (id == NULL) return;
  X509_free(id->cert);
  EVP_PKEY_free(id->key);
  sk_X509_pop_free(id->chain, X509_free);
  memset(id, 0, sizeof(*id));
}

int capstan_identity_copy(const capstan_identity_t *src, capstan_identity_t *dst) {
  if (src == NULL || dst == NULL || src->cert == NULL || src->key == NULL) {
    return CAPSTAN_EINVAL;
  }
  memset(dst, 0, sizeof(*dst));
  if (src->chain != NULL) {
    dst->chain = sk_X509_new_null();
    if (dst->chain == NULL) return pki_fail(CAPSTAN_ENOMEM);
    for (size_t i = 0; i < sk_X509_num(src->chain); i++) {
      X509 *c = sk_X509_value(src->chain, i);
      if (!sk_X509_push(dst->chain, c)) {
        capstan_identity_cleanup(dst);
        return pki_fail(CAPSTAN_ENOMEM);
      }
      X509_up_ref(c);
    }
  }
  X509_up_ref(src->cert);
  dst->cert = src->cert;
  EVP_PKEY_up_ref(src->key);
  dst->key = src->key;
  return 0;
}

int capstan_pki_cert_to_der(const X509 *cert, uint8_t **der, size_t *len) {
  if (der == NULL || len == NULL) return CAPSTAN_EINVAL;
  *der = NULL;
  *len = 0;
  if (cert == NULL) return CAPSTAN_EINVAL;
  int n = i2d_X509((X509 *)cert, NULL);
  if (n <= 0) return pki_fail(CAPSTAN_ECRYPTO);
  uint8_t *buf = malloc((size_t)n);
  if (buf == NULL) return pki_fail(CAPSTAN_ENOMEM);
  uint8_t *p = buf;
  if (i2d_X509((X509 *)cert, &p) != n) {
    free(buf);
    return pki_fail(CAPSTAN_ECRYPTO);
  }
  *der = buf;
  *len = (size_t)n;
  return 0;
}

int capstan_pki_req_to_der(const X509_REQ *req, uint8_t **der, size_t *len) {
  if (der == NULL || len == NULL) return CAPSTAN_EINVAL;
  *der = NULL;
  *len = 0;
  if (req == NULL) return CAPSTAN_EINVAL;
  int n = i2d_X509_REQ((X509_REQ *)req, NULL);
  if (n <= 0) return pki_fail(CAPSTAN_ECRYPTO);
  uint8_t *buf = malloc((size_t)n);
  if (buf == NULL) return pki_fail(CAPSTAN_ENOMEM);
  uint8_t *p = buf;
  if (i2d_X509_REQ((X509_REQ *)req, &p) != n) {
    free(buf);
    return pki_fail(CAPSTAN_ECRYPTO);
  }
  *der = buf;
  *len = (size_t)n;
  return 0;
}

int capstan_pki_public_key_to_der(const EVP_PKEY *key, uint8_t **der, size_t *len) {
  if (der == NULL || len == NULL) return CAPSTAN_EINVAL;
  *der = NULL;
  *len = 0;
  if (key == NULL) return CAPSTAN_EINVAL;
  CBB cbb;
  if (!CBB_init(&cbb, 512)) return pki_fail(CAPSTAN_ENOMEM);
  if (!EVP_marshal_public_key(&cbb, key)) {
    CBB_cleanup(&cbb);
    return pki_fail(CAPSTAN_ECRYPTO);
  }
  return pki_cbb_finish_malloc(&cbb, der, len);
}

int capstan_identity_to_der(const capstan_identity_t *id, uint8_t **cert_der, size_t *cert_len,
                            uint8_t **key_der, size_t *key_len) {
  if (cert_der == NULL || cert_len == NULL || key_der == NULL || key_len == NULL) {
    return CAPSTAN_EINVAL;
  }
  *cert_der = NULL;
  *cert_len = 0;
  *key_der = NULL;
  *key_len = 0;
  if (id == NULL || id->cert == NULL || id->key == NULL) return CAPSTAN_EINVAL;
  int rc = capstan_pki_cert_to_der(id->cert, cert_der, cert_len);
  if (rc != 0) return rc;
  CBB cbb;
  if (!CBB_init(&cbb, 2048)) {
    rc = CAPSTAN_ENOMEM;
    goto err;
  }
  if (!EVP_marshal_private_key(&cbb, id->key)) {
    CBB_cleanup(&cbb);
    rc = CAPSTAN_ECRYPTO;
    goto err;
  }
  rc = pki_cbb_finish_malloc(&cbb, key_der, key_len);
  if (rc != 0) goto err;
  return 0;
err:
  free(*cert_der);
  *cert_der = NULL;
  *cert_len = 0;
  return pki_fail(rc);
}

int capstan_pki_parse_cert(const uint8_t *der, size_t len, X509 **out) {
  if (out == NULL) return CAPSTAN_EINVAL;
  *out = NULL;
  if (der == NULL || len == 0 || len > CAPSTAN_PKI_MAX_CERT_DER) return CAPSTAN_EINVAL;
  const uint8_t *p = der;
  X509 *cert = d2i_X509(NULL, &p, (long)len);
  if (cert == NULL) return pki_fail(CAPSTAN_EINVAL);
  if (p != der + len) {
    X509_free(cert);
    return pki_fail(CAPSTAN_EINVAL);
  }
  /* Parse the extensions now, while |cert| is ours alone: certificates end up
   * shared read-only between worker threads, and BoringSSL caches this parse
   * on first use. (A certificate whose extensions do not parse is kept: it
   * fails later where it matters, in chain verification.) */
  (void)X509_get_extension_flags(cert);
  EVP_PKEY_free(X509_get_pubkey(cert)); /* likewise the decoded public key */
  ERR_clear_error();
  *out = cert;
  return 0;
}

int capstan_identity_from_der(const uint8_t *cert_der, size_t cert_len, const uint8_t *key_der,
                              size_t key_len, capstan_identity_t *out) {
  if (out == NULL) return CAPSTAN_EINVAL;
  memset(out, 0, sizeof(*out));
  if (key_der == NULL || key_len == 0 || key_len > PKI_MAX_KEY_DER) return CAPSTAN_EINVAL;
  X509 *cert = NULL;
  int rc = capstan_pki_parse_cert(cert_der, cert_len, &cert);
  if (rc != 0) return rc;
  CBS cbs;
  CBS_init(&cbs, key_der, key_len);
  EVP_PKEY *key = EVP_parse_private_key(&cbs);
  if (key == NULL || CBS_len(&cbs) != 0) {
    rc = CAPSTAN_EINVAL;
    goto err;
  }
  EVP_PKEY *pub = X509_get_pubkey(cert);
  int match = pub != NULL && EVP_PKEY_cmp(pub, key) == 1;
  EVP_PKEY_free(pub);
  if (!match) {
    rc = CAPSTAN_EINVAL;
    goto err;
  }
  out->cert = cert;
  out->key = key;
  return 0;
err:
  X509_free(cert);
  EVP_PKEY_free(key);
  return pki_fail(rc);
}

void capstan_pki_der_array_free(uint8_t **ders, size_t *lens, size_t count) {
  if (ders != NULL) {
    for (size_t i = 0; i < count; i++) free(ders[i]);
  }
  free(ders);
  free(lens);
}

int capstan_identity_chain_to_der(const capstan_identity_t *id, uint8_t ***ders, size_t **lens,
                                  size_t *count) {
  if (ders == NULL || lens == NULL || count == NULL) return CAPSTAN_EINVAL;
  *ders = NULL;
  *lens = NULL;
  *count = 0;
  if (id == NULL) return CAPSTAN_EINVAL;
  size_t n = id->chain != NULL ? sk_X509_num(id->chain) : 0;
  if (n == 0) return 0;
  uint8_t **d = calloc(n, sizeof(*d));
  size_t *l = calloc(n, sizeof(*l));
  if (d == NULL || l == NULL) {
    free(d);
    free(l);
    return pki_fail(CAPSTAN_ENOMEM);
  }
  for (size_t i = 0; i < n; i++) {
    int rc = capstan_pki_cert_to_der(sk_X509_value(id->chain, i), &d[i], &l[i]);
    if (rc != 0) {
      capstan_pki_der_array_free(d, l, n);
      return rc;
    }
  }
  *ders = d;
  *lens = l;
  *count = n;
  return 0;
}

int capstan_identity_set_chain_der(capstan_identity_t *id, const uint8_t *const *ders,
                                   const size_t *lens, size_t count) {
  if (id == NULL || (count > 0 && (ders == NULL || lens == NULL)) || count > PKI_MAX_CHAIN) {
    return CAPSTAN_EINVAL;
  }
  STACK_OF(X509) *chain = NULL;
  if (count > 0) {
    chain = sk_X509_new_null();
    if (chain == NULL) return pki_fail(CAPSTAN_ENOMEM);
    for (size_t i = 0; i < count; i++) {
      X509 *c = NULL;
      int rc = capstan_pki_parse_cert(ders[i], lens[i], &c);
      if (rc != 0) {
        sk_X509_pop_free(chain, X509_free);
        return rc;
      }
      if (!sk_X509_push(chain, c)) {
        X509_free(c);
        sk_X509_pop_free(chain, X509_free);
        return pki_fail(CAPSTAN_ENOMEM);
      }
    }
  }
  sk_X509_pop_free(id->chain, X509_free);
  id->chain = chain;
  return 0;
}

void capstan_pki_md5hash(const uint8_t *der, size_t len, char out[33]) {
  static const char hex[] = "0123456789abcdef";
  uint8_t digest[MD5_DIGEST_LENGTH];
  MD5(len > 0 ? der : (const uint8_t *)"", len, digest);
  for (size_t i = 0; i < MD5_DIGEST_LENGTH; i++) {
    out[2 * i] = hex[digest[i] >> 4];
    out[2 * i + 1] = hex[digest[i] & 0xf];
  }
  out[32] = '\0';
}

/* Attribute type names that RFC 4514 (section 3) and common practice print
 * by name; anything else is printed as a dotted OID with a #hex value. */
static const char *dn_short_name(int nid) {
  switch (nid) {
    case NID_commonName:
      return "CN";
    case NID_localityName:
      return "L";
    case NID_stateOrProvinceName:
      return "ST";
    case NID_organizationName:
      return "O";
    case NID_organizationalUnitName:
      return "OU";
    case NID_countryName:
      return "C";
    case NID_streetAddress:
      return "STREET";
    case NID_domainComponent:
      return "DC";
    case NID_userId:
      return "UID";
    case NID_serialNumber:
      return "SERIALNUMBER";
    case NID_pkcs9_emailAddress:
      return "emailAddress";
    case NID_title:
      return "T";
    case NID_givenName:
      return "GN";
    case NID_surname:
      return "SN";
    default:
      return NULL;
  }
}

static int dn_add_hex_byte(CBB *out, uint8_t b) {
  static const char hex[] = "0123456789ABCDEF";
  return CBB_add_u8(out, (uint8_t)hex[b >> 4]) && CBB_add_u8(out, (uint8_t)hex[b & 0xf]);
}

/* RFC 4514 section 2.4 escaping of one UTF-8 attribute value. */
static int dn_add_escaped(CBB *out, const uint8_t *v, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint8_t c = v[i];
    int ok;
    if (c == ',' || c == '+' || c == '"' || c == '\\' || c == '<' || c == '>' || c == ';' ||
        (i == 0 && (c == ' ' || c == '#')) || (i + 1 == n && c == ' ')) {
      ok = CBB_add_u8(out, '\\') && CBB_add_u8(out, c);
    } else if (c < 0x20 || c == 0x7f) {
      /* NUL must be escaped; other controls are escaped so that the string
       * stays printable in file headers and logs. */
      ok = CBB_add_u8(out, '\\') && dn_add_hex_byte(out, c);
    } else {
      ok = CBB_add_u8(out, c);
    }
    if (!ok) return 0;
  }
  return 1;
}

/* "#" followed by the hex of the value's DER (RFC 4514 section 2.4, for types
 * printed as dotted OIDs and values that do not convert to UTF-8). */
static int dn_add_hex_value(CBB *out, const ASN1_STRING *s) {
  int type = ASN1_STRING_type(s);
  if (type <= 0 || type > 30) return 0;
  CBB der, body;
  uint8_t *buf = NULL;
  size_t len = 0;
  if (!CBB_init(&der, 64)) return 0;
  if (!CBB_add_asn1(&der, &body, (unsigned)type) ||
      !CBB_add_bytes(&body, ASN1_STRING_get0_data(s), (size_t)ASN1_STRING_length(s)) ||
      !CBB_finish(&der, &buf, &len)) {
    CBB_cleanup(&der);
    return 0;
  }
  int ok = CBB_add_u8(out, '#');
  for (size_t i = 0; ok && i < len; i++) ok = dn_add_hex_byte(out, buf[i]);
  OPENSSL_free(buf);
  return ok;
}

int capstan_pki_dn_string(const X509_NAME *name, char **out) {
  if (out == NULL) return CAPSTAN_EINVAL;
  *out = NULL;
  if (name == NULL) return CAPSTAN_EINVAL;
  CBB cbb;
  if (!CBB_init(&cbb, 128)) return pki_fail(CAPSTAN_ENOMEM);
  int rc = CAPSTAN_ENOMEM;
  int count = X509_NAME_entry_count(name);
  int prev_set = -1;
  for (int i = 0; i < count; i++) {
    const X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
    const ASN1_OBJECT *obj = X509_NAME_ENTRY_get_object(e);
    const ASN1_STRING *val = X509_NAME_ENTRY_get_data(e);
    int set = X509_NAME_ENTRY_set(e);
    if (i > 0 && !CBB_add_u8(&cbb, set == prev_set ? '+' : ',')) goto err;
    prev_set = set;
    const char *sn = dn_short_name(OBJ_obj2nid(obj));
    if (sn != NULL) {
      if (!CBB_add_bytes(&cbb, (const uint8_t *)sn, strlen(sn)) || !CBB_add_u8(&cbb, '=')) {
        goto err;
      }
      uint8_t *utf8 = NULL;
      int n = ASN1_STRING_to_UTF8(&utf8, val);
      if (n >= 0) {
        int ok = dn_add_escaped(&cbb, utf8, (size_t)n);
        OPENSSL_free(utf8);
        if (!ok) goto err;
      } else {
        ERR_clear_error();
        if (!dn_add_hex_value(&cbb, val)) {
          rc = CAPSTAN_EINVAL;
          goto err;
        }
      }
    } else {
      char oid[128];
      int n = OBJ_obj2txt(oid, sizeof(oid), obj, 1 /* always dotted */);
      if (n <= 0 || (size_t)n >= sizeof(oid)) {
        rc = CAPSTAN_EINVAL;
        goto err;
      }
      if (!CBB_add_bytes(&cbb, (const uint8_t *)oid, (size_t)n) || !CBB_add_u8(&cbb, '=')) {
        goto err;
      }
      if (!dn_add_hex_value(&cbb, val)) {
        rc = CAPSTAN_EINVAL;
        goto err;
      }
    }
    if (CBB_len(&cbb) > PKI_MAX_DN_STRING) {
      rc = CAPSTAN_EINVAL;
      goto err;
    }
  }
  if (!CBB_add_u8(&cbb, '\0')) goto err;
  size_t len;
  rc = pki_cbb_finish_malloc(&cbb, (uint8_t **)out, &len);
  return rc;
err:
  CBB_cleanup(&cbb);
  return pki_fail(rc);
}

int capstan_pki_serial_bytes(const X509 *cert, uint8_t *out, size_t cap, size_t *len) {
  if (len == NULL) return CAPSTAN_EINVAL;
  *len = 0;
  if (cert == NULL || out == NULL) return CAPSTAN_EINVAL;
  const ASN1_INTEGER *serial = X509_get0_serialNumber(cert);
  if (serial == NULL || ASN1_STRING_type(serial) == V_ASN1_NEG_INTEGER) return CAPSTAN_EINVAL;
  const uint8_t *p = ASN1_STRING_get0_data(serial);
  size_t n = (size_t)ASN1_STRING_length(serial);
  while (n > 0 && p[0] == 0) {
    p++;
    n--;
  }
  if (n == 0) {
    if (cap < 1) return CAPSTAN_ERANGE;
    out[0] = 0;
    *len = 1;
    return 0;
  }
  if (n > cap) return CAPSTAN_ERANGE;
  memcpy(out, p, n);
  *len = n;
  return 0;
}

int capstan_pki_generate_key(int key_alg, unsigned key_bits, EVP_PKEY **out) {
  if (out == NULL) return CAPSTAN_EINVAL;
  *out = NULL;
  EVP_PKEY *pkey = EVP_PKEY_new();
  if (pkey == NULL) return pki_fail(CAPSTAN_ENOMEM);
  int rc = CAPSTAN_ECRYPTO;
  if (key_alg == CAPSTAN_KEY_RSA) {
    if (key_bits < 512 || key_bits > 8192) {
      rc = CAPSTAN_EINVAL;
      goto err;
    }
    RSA *rsa = RSA_new();
    BIGNUM *e = BN_new();
    int ok = rsa != NULL && e != NULL && BN_set_word(e, RSA_F4) &&
             RSA_generate_key_ex(rsa, (int)key_bits, e, NULL) && EVP_PKEY_assign_RSA(pkey, rsa);
    BN_free(e);
    if (!ok) {
      RSA_free(rsa);
      goto err;
    }
  } else if (key_alg == CAPSTAN_KEY_EC) {
    int nid = key_bits == 256   ? NID_X9_62_prime256v1
              : key_bits == 384 ? NID_secp384r1
              : key_bits == 521 ? NID_secp521r1
                                : NID_undef;
    if (nid == NID_undef) {
      rc = CAPSTAN_EINVAL;
      goto err;
    }
    EC_KEY *ec = EC_KEY_new_by_curve_name(nid);
    if (ec == NULL || !EC_KEY_generate_key(ec) || !EVP_PKEY_assign_EC_KEY(pkey, ec)) {
      EC_KEY_free(ec);
      goto err;
    }
  } else {
    rc = CAPSTAN_EINVAL;
    goto err;
  }
  *out = pkey;
  return 0;
err:
  EVP_PKEY_free(pkey);
  return pki_fail(rc);
}
