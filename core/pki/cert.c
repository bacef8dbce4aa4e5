/* PKI: building certificates (CAPF, TFTP, LSC) and the CAPF CSR. */
#include "core/pki/pki.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/digest.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/obj.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/base/error.h"
#include "core/pki/internal.h"

#define SERIAL_LEN 16
#define SECONDS_PER_DAY 86400
#define TEN_YEARS_DAYS 3650
/* Self-made certificates start an hour back, LSCs five minutes back, so that
 * a peer whose clock is a little behind still accepts them. */
#define SELF_BACKDATE_SECONDS 3600
#define LSC_BACKDATE_SECONDS 300
/* ub-common-name / ub-organization-name (RFC 5280). */
#define MAX_ATTR_VALUE 64
/* An LSC's subject CN is the device name (R8): every device name fits. */
_Static_assert(CAPSTAN_DEVICE_NAME_MAX <= MAX_ATTR_VALUE,
               "a device name does not fit an LSC's common name (ub-common-name)");

/* Key usage bit numbers (RFC 5280 4.2.1.3). */
#define KU_BIT_DIGITAL_SIGNATURE 0
#define KU_BIT_KEY_ENCIPHERMENT 2
#define KU_BIT_KEY_CERT_SIGN 5

typedef struct {
  const X509_NAME *subject;
  const X509_NAME *issuer;             /* NULL: self-signed, issuer = subject */
  EVP_PKEY *public_key;                /* the key certified */
  EVP_PKEY *signer;                    /* the issuer's private key */
  const ASN1_OCTET_STRING *issuer_ski; /* for authorityKeyIdentifier; may be NULL */
  const uint8_t *serial;               /* SERIAL_LEN bytes, positive */
  int64_t not_before, not_after;
  int is_ca;        /* CA:TRUE pathlen:0 (critical) or CA:FALSE */
  unsigned ku_bits; /* bitmask of 1u << KU_BIT_* */
  const int *eku_nids;
  size_t eku_count;
  int omit_ski; /* a CSR asks for exactly its extensions; the CA adds the SKI */
} cert_spec_t;

/* 128 random bits with the top bit cleared (positive) and a non-zero first
 * byte, so that the DER INTEGER is exactly 16 bytes. */
static int random_serial(uint8_t serial[SERIAL_LEN]) {
  do {
    if (!RAND_bytes(serial, SERIAL_LEN)) return 0;
    serial[0] &= 0x7f;
  } while (serial[0] == 0);
  return 1;
}

static int random_hex8(char out[9]) {
  static const char hex[] = "0123456789abcdef";
  uint8_t b[4];
  if (!RAND_bytes(b, sizeof(b))) return 0;
  for (int i = 0; i < 4; i++) {
    out[2 * i] = hex[b[i] >> 4];
    out[2 * i + 1] = hex[b[i] & 0xf];
  }
  out[8] = '\0';
  return 1;
}

/* SHA-1 of the subjectPublicKey BIT STRING contents (RFC 5280 4.2.1.2,
 * method 1). */
static ASN1_OCTET_STRING *key_identifier(const EVP_PKEY *key) {
  CBB cbb;
  uint8_t *der = NULL;
  size_t der_len = 0;
  ASN1_OCTET_STRING *ski = NULL;
  if (!CBB_init(&cbb, 512)) return NULL;
  if (!EVP_marshal_public_key(&cbb, key) || !CBB_finish(&cbb, &der, &der_len)) {
    CBB_cleanup(&cbb);
    return NULL;
  }
  CBS spki, seq, bits;
  CBS_init(&spki, der, der_len);
  uint8_t unused;
  if (CBS_get_asn1(&spki, &seq, CBS_ASN1_SEQUENCE) && CBS_get_asn1(&seq, NULL, CBS_ASN1_SEQUENCE) &&
      CBS_get_asn1(&seq, &bits, CBS_ASN1_BITSTRING) && CBS_get_u8(&bits, &unused)) {
    uint8_t md[SHA_DIGEST_LENGTH];
    SHA1(CBS_data(&bits), CBS_len(&bits), md);
    ski = ASN1_OCTET_STRING_new();
    if (ski != NULL && !ASN1_OCTET_STRING_set(ski, md, sizeof(md))) {
      ASN1_OCTET_STRING_free(ski);
      ski = NULL;
    }
  }
  OPENSSL_free(der);
  return ski;
}

static int set_time(X509 *x, int64_t t, int before) {
  ASN1_TIME *at = ASN1_TIME_set(NULL, (time_t)t);
  if (at == NULL) return 0;
  int ok = before ? X509_set1_notBefore(x, at) : X509_set1_notAfter(x, at);
  ASN1_TIME_free(at);
  return ok;
}

static int push_ext(STACK_OF(X509_EXTENSION) * sk, int nid, int crit, void *value) {
  X509_EXTENSION *ext = X509V3_EXT_i2d(nid, crit, value);
  if (ext == NULL) return 0;
  if (!sk_X509_EXTENSION_push(sk, ext)) {
    X509_EXTENSION_free(ext);
    return 0;
  }
  return 1;
}

/* The extensions of |s| in the order they appear in the certificate (or CSR):
 * basicConstraints, keyUsage, extendedKeyUsage, SKI, AKI. */
static STACK_OF(X509_EXTENSION) * make_extensions(const cert_spec_t *s) {
  int ok = 0;
  STACK_OF(X509_EXTENSION) *sk = sk_X509_EXTENSION_new_null();
  BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
  ASN1_BIT_STRING *ku = ASN1_BIT_STRING_new();
  EXTENDED_KEY_USAGE *eku = NULL;
  ASN1_OCTET_STRING *ski = NULL;
  AUTHORITY_KEYID *aki = NULL;
  if (sk == NULL || bc == NULL || ku == NULL) goto done;
  if (s->is_ca) {
    bc->ca = 1;
    bc->pathlen = ASN1_INTEGER_new();
    if (bc->pathlen == NULL || !ASN1_INTEGER_set(bc->pathlen, 0)) goto done;
  }
  /* CAs carry a critical basicConstraints (RFC 5280 4.2.1.9); leaves a
   * non-critical CA:FALSE, which is what phones and browsers expect. */
  if (!push_ext(sk, NID_basic_constraints, s->is_ca ? 1 : 0, bc)) goto done;
  for (int bit = 0; bit < 9; bit++) {
    if ((s->ku_bits & (1u << bit)) && !ASN1_BIT_STRING_set_bit(ku, bit, 1)) goto done;
  }
  if (!push_ext(sk, NID_key_usage, 1, ku)) goto done;
  if (s->eku_count > 0) {
    eku = sk_ASN1_OBJECT_new_null();
    if (eku == NULL) goto done;
    for (size_t i = 0; i < s->eku_count; i++) {
      ASN1_OBJECT *o = OBJ_nid2obj(s->eku_nids[i]);
      if (o == NULL || !sk_ASN1_OBJECT_push(eku, o)) goto done;
    }
    if (!push_ext(sk, NID_ext_key_usage, 0, eku)) goto done;
  }
  if (!s->omit_ski) {
    ski = key_identifier(s->public_key);
    if (ski == NULL || !push_ext(sk, NID_subject_key_identifier, 0, ski)) goto done;
  }
  if (s->issuer_ski != NULL) {
    aki = AUTHORITY_KEYID_new();
    if (aki == NULL) goto done;
    aki->keyid = ASN1_OCTET_STRING_dup(s->issuer_ski);
    if (aki->keyid == NULL || !push_ext(sk, NID_authority_key_identifier, 0, aki)) goto done;
  }
  ok = 1;
done:
  BASIC_CONSTRAINTS_free(bc);
  ASN1_BIT_STRING_free(ku);
  /* The objects come from OBJ_nid2obj's static table; freeing them is a
   * no-op, so pop_free is right either way. */
  sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
  ASN1_OCTET_STRING_free(ski);
  AUTHORITY_KEYID_free(aki);
  if (!ok) {
    sk_X509_EXTENSION_pop_free(sk, X509_EXTENSION_free);
    return NULL;
  }
  return sk;
}

static int add_extensions(X509 *x, const cert_spec_t *s) {
  STACK_OF(X509_EXTENSION) *sk = make_extensions(s);
  if (sk == NULL) return 0;
  int ok = 1;
  for (size_t i = 0; ok && i < sk_X509_EXTENSION_num(sk); i++) {
    ok = X509_add_ext(x, sk_X509_EXTENSION_value(sk, i), -1);
  }
  sk_X509_EXTENSION_pop_free(sk, X509_EXTENSION_free);
  return ok;
}

static int build_cert(const cert_spec_t *s, X509 **out) {
  *out = NULL;
  X509 *x = X509_new();
  BIGNUM *bn = BN_bin2bn(s->serial, SERIAL_LEN, NULL);
  ASN1_INTEGER *serial = bn != NULL ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
  int ok = x != NULL && serial != NULL && X509_set_version(x, X509_VERSION_3) &&
           X509_set_serialNumber(x, serial) &&
           X509_set_issuer_name(x, (X509_NAME *)(s->issuer != NULL ? s->issuer : s->subject)) &&
           X509_set_subject_name(x, (X509_NAME *)s->subject) && set_time(x, s->not_before, 1) &&
           set_time(x, s->not_after, 0) && X509_set_pubkey(x, s->public_key) &&
           add_extensions(x, s) && X509_sign(x, s->signer, EVP_sha256()) > 0;
  BN_free(bn);
  ASN1_INTEGER_free(serial);
  if (!ok) {
    X509_free(x);
    return pki_fail(CAPSTAN_ECRYPTO);
  }
  /* Cache the parsed extensions before the certificate can be shared. */
  (void)X509_get_extension_flags(x);
  *out = x;
  return 0;
}

static int extra_nid(const char *key, size_t len) {
  static const struct {
    const char *name;
    int nid;
  } keys[] = {{"O", NID_organizationName},
              {"OU", NID_organizationalUnitName},
              {"L", NID_localityName},
              {"ST", NID_stateOrProvinceName},
              {"C", NID_countryName}};
  for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
    if (strlen(keys[i].name) == len && strncasecmp(keys[i].name, key, len) == 0) {
      return keys[i].nid;
    }
  }
  return NID_undef;
}

/* Appends the attributes of |extra| ("O=Example,OU=Voice,C=NZ") to |name|.
 * Spaces around keys and values are trimmed; "\," "\\" "\=" "\+" escape. */
static int add_subject_extra(X509_NAME *name, const char *extra) {
  if (extra == NULL) return 0;
  size_t total = strnlen(extra, CAPSTAN_PKI_MAX_SUBJECT_EXTRA + 1);
  if (total > CAPSTAN_PKI_MAX_SUBJECT_EXTRA) return CAPSTAN_EINVAL;
  size_t i = 0;
  while (i < total && extra[i] == ' ') i++;
  if (i == total) return 0; /* empty or blank: no extra attributes */
  while (i <= total) {
    /* Key. */
    while (i < total && extra[i] == ' ') i++;
    size_t key_start = i;
    while (i < total && extra[i] != '=' && extra[i] != ',') i++;
    size_t key_end = i;
    while (key_end > key_start && extra[key_end - 1] == ' ') key_end--;
    if (i >= total || extra[i] != '=') return CAPSTAN_EINVAL;
    int nid = extra_nid(extra + key_start, key_end - key_start);
    if (nid == NID_undef) return CAPSTAN_EINVAL;
    i++; /* '=' */
    /* Value, unescaped into |val|; |keep| marks the end of the last
     * significant (non-space or escaped) byte for trailing-space trimming. */
    char val[MAX_ATTR_VALUE + 1];
    size_t n = 0, keep = 0;
    while (i < total && extra[i] == ' ') i++;
    while (i < total && extra[i] != ',') {
      char c = extra[i++];
      int escaped = 0;
      if (c == '\\') {
        if (i >= total) return CAPSTAN_EINVAL;
        c = extra[i++];
        if (c != ',' && c != '\\' && c != '=' && c != '+' && c != ' ') return CAPSTAN_EINVAL;
        escaped = 1;
      } else if ((unsigned char)c < 0x20 || c == 0x7f || c == '=' || c == '+') {
        return CAPSTAN_EINVAL;
      }
      if (n >= MAX_ATTR_VALUE) return CAPSTAN_EINVAL;
      val[n++] = c;
      if (escaped || c != ' ') keep = n;
    }
    n = keep;
    if (n == 0) return CAPSTAN_EINVAL;
    if (nid == NID_countryName && n != 2) return CAPSTAN_EINVAL;
    if (!X509_NAME_add_entry_by_NID(name, nid, MBSTRING_UTF8, (const uint8_t *)val, (int)n, -1,
                                    0)) {
      return pki_fail(CAPSTAN_EINVAL);
    }
    if (i >= total) break;
    i++;                                   /* ',' */
    if (i >= total) return CAPSTAN_EINVAL; /* trailing comma */
  }
  return 0;
}

static int add_cn(X509_NAME *name, const char *cn, size_t len) {
  if (len == 0 || len > MAX_ATTR_VALUE) return CAPSTAN_EINVAL;
  if (!X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, (const uint8_t *)cn,
                                  (int)len, -1, 0)) {
    return pki_fail(CAPSTAN_EINVAL);
  }
  return 0;
}

/* Appends the O/OU/L/ST/C attributes of |src| to |dst|, as they are (type
 * and bytes), in their order. */
static int copy_naming(X509_NAME *dst, const X509_NAME *src) {
  for (int i = 0; i < X509_NAME_entry_count(src); i++) {
    X509_NAME_ENTRY *e = X509_NAME_get_entry(src, i);
    int nid = OBJ_obj2nid(X509_NAME_ENTRY_get_object(e));
    if (nid == NID_organizationName || nid == NID_organizationalUnitName ||
        nid == NID_localityName || nid == NID_stateOrProvinceName || nid == NID_countryName) {
      if (!X509_NAME_add_entry(dst, e, -1, 0)) return CAPSTAN_ENOMEM;
    }
  }
  return 0;
}

/* |prefix| + 8 random lower-case hex digits as CN, then |subject_extra|
 * (or, without one, the naming attributes of |like|). */
static int random_subject(const char *prefix, const char *subject_extra, const X509_NAME *like,
                          X509_NAME **out) {
  *out = NULL;
  X509_NAME *subject = X509_NAME_new();
  char cn[32], hex[9];
  if (subject == NULL) return pki_fail(CAPSTAN_ENOMEM);
  int rc = CAPSTAN_ECRYPTO;
  if (random_hex8(hex)) {
    int n = snprintf(cn, sizeof(cn), "%s%s", prefix, hex);
    rc = add_cn(subject, cn, (size_t)n);
  }
  if (rc == 0 && subject_extra == NULL && like != NULL) {
    rc = copy_naming(subject, like);
  } else if (rc == 0) {
    rc = add_subject_extra(subject, subject_extra);
  }
  if (rc != 0) {
    X509_NAME_free(subject);
    return pki_fail(rc);
  }
  *out = subject;
  return 0;
}

int capstan_pki_capf_subject(const char *subject_extra, X509_NAME **out) {
  if (out == NULL) return CAPSTAN_EINVAL;
  return random_subject("CAPF-", subject_extra, NULL, out);
}

int capstan_pki_capf_subject_like(const X509_NAME *like, X509_NAME **out) {
  if (out == NULL || like == NULL) return CAPSTAN_EINVAL;
  return random_subject("CAPF-", NULL, like, out);
}

/* The keys a CAPF may have (capf-lifecycle.md "The CAPF certificate"). */
static int capf_key_allowed(int key_alg, unsigned key_bits) {
  if (key_alg == CAPSTAN_KEY_RSA) return key_bits == 2048 || key_bits == 3072 || key_bits == 4096;
  if (key_alg == CAPSTAN_KEY_EC) return key_bits == 256 || key_bits == 384;
  return 0;
}

typedef struct {
  const char *prefix;
  const char *subject_extra;
  const X509_NAME *subject_like;
  int key_alg;
  unsigned key_bits;
  unsigned days;
  int is_ca;
  unsigned ku_bits;
  const int *eku;
  size_t eku_count;
} self_signed_t;

/* A self-signed certificate with a fresh key and CN |prefix| + 8 hex digits. */
static int create_self_signed(const self_signed_t *want, capstan_identity_t *out) {
  if (out == NULL) return CAPSTAN_EINVAL;
  memset(out, 0, sizeof(*out));
  int rc;
  EVP_PKEY *key = NULL;
  X509 *cert = NULL;
  X509_NAME *subject = NULL;
  uint8_t serial[SERIAL_LEN];
  if (!random_serial(serial)) return pki_fail(CAPSTAN_ECRYPTO);
  /* Check the caller's subject before paying for a key. */
  rc = random_subject(want->prefix, want->subject_extra, want->subject_like, &subject);
  if (rc != 0) return rc;
  if ((rc = capstan_pki_generate_key(want->key_alg, want->key_bits, &key)) != 0) goto err;
  int64_t now = (int64_t)time(NULL);
  cert_spec_t spec = {
      .subject = subject,
      .public_key = key,
      .signer = key,
      .serial = serial,
      .not_before = now - SELF_BACKDATE_SECONDS,
      .not_after = now + (int64_t)want->days * SECONDS_PER_DAY,
      .is_ca = want->is_ca,
      .ku_bits = want->ku_bits,
      .eku_nids = want->eku,
      .eku_count = want->eku_count,
  };
  if ((rc = build_cert(&spec, &cert)) != 0) goto err;
  X509_NAME_free(subject);
  out->cert = cert;
  out->key = key;
  return 0;
err:
  X509_NAME_free(subject);
  EVP_PKEY_free(key);
  return pki_fail(rc);
}

int capstan_pki_create_capf_spec(const capstan_capf_spec_t *spec, capstan_identity_t *out) {
  if (out != NULL) memset(out, 0, sizeof(*out));
  if (spec == NULL || out == NULL) return CAPSTAN_EINVAL;
  unsigned bits = spec->key_bits != 0 ? spec->key_bits : 2048;
  int alg = spec->key_bits != 0 ? spec->key_alg : CAPSTAN_KEY_RSA;
  unsigned days = spec->days != 0 ? spec->days : TEN_YEARS_DAYS;
  if (!capf_key_allowed(alg, bits) || days > CAPSTAN_PKI_CAPF_MAX_DAYS) return CAPSTAN_EINVAL;
  self_signed_t want = {
      .prefix = "CAPF-",
      .subject_extra = spec->subject_extra,
      .subject_like = spec->subject_like,
      .key_alg = alg,
      .key_bits = bits,
      .days = days,
      .is_ca = 1,
      .ku_bits = (1u << KU_BIT_DIGITAL_SIGNATURE) | (1u << KU_BIT_KEY_CERT_SIGN),
  };
  return create_self_signed(&want, out);
}

int capstan_pki_create_capf(const char *subject_extra, capstan_identity_t *out) {
  capstan_capf_spec_t spec = {.key_alg = CAPSTAN_KEY_RSA,
                              .key_bits = 2048,
                              .days = TEN_YEARS_DAYS,
                              .subject_extra = subject_extra};
  return capstan_pki_create_capf_spec(&spec, out);
}

int capstan_pki_create_tftp(const char *subject_extra, capstan_identity_t *out) {
  static const int eku[] = {NID_server_auth, NID_client_auth};
  self_signed_t want = {
      .prefix = "TFTP-",
      .subject_extra = subject_extra,
      .key_alg = CAPSTAN_KEY_RSA,
      .key_bits = 2048,
      .days = TEN_YEARS_DAYS,
      .ku_bits = (1u << KU_BIT_DIGITAL_SIGNATURE) | (1u << KU_BIT_KEY_ENCIPHERMENT),
      .eku = eku,
      .eku_count = 2,
  };
  return create_self_signed(&want, out);
}

/* Issue a leaf under |issuer| with subject |subject|. */
static int issue_leaf(const capstan_identity_t *issuer, const X509_NAME *subject, EVP_PKEY *key,
                      int64_t not_before, int64_t not_after, const uint8_t serial[SERIAL_LEN],
                      const int *eku, size_t eku_count, uint8_t **der, size_t *der_len) {
  X509 *cert = NULL;
  cert_spec_t spec = {
      .subject = subject,
      .issuer = X509_get_subject_name(issuer->cert),
      .public_key = key,
      .signer = issuer->key,
      /* X509_get0_subject_key_id caches the parsed extensions under a lock
       * inside BoringSSL, so it is safe on a shared certificate. */
      .issuer_ski = X509_get0_subject_key_id(issuer->cert),
      .serial = serial,
      .not_before = not_before,
      .not_after = not_after,
      .is_ca = 0,
      .ku_bits = (1u << KU_BIT_DIGITAL_SIGNATURE) | (1u << KU_BIT_KEY_ENCIPHERMENT),
      .eku_nids = eku,
      .eku_count = eku_count,
  };
  int rc = build_cert(&spec, &cert);
  if (rc != 0) return rc;
  rc = capstan_pki_cert_to_der(cert, der, der_len);
  X509_free(cert);
  return rc;
}

int capstan_pki_issue_lsc(const capstan_identity_t *capf, const char *device_name,
                          EVP_PKEY *phone_key, unsigned validity_days, uint8_t serial[16],
                          uint8_t **der, size_t *der_len, int64_t *not_after) {
  static const int eku[] = {NID_server_auth, NID_client_auth, NID_ipsecEndSystem};
  if (der == NULL || der_len == NULL) return CAPSTAN_EINVAL;
  *der = NULL;
  *der_len = 0;
  if (not_after != NULL) *not_after = 0;
  if (capf == NULL || capf->cert == NULL || capf->key == NULL || device_name == NULL ||
      phone_key == NULL || serial == NULL || not_after == NULL ||
      validity_days < CAPSTAN_PKI_LSC_MIN_DAYS || validity_days > CAPSTAN_PKI_LSC_MAX_DAYS) {
    return CAPSTAN_EINVAL;
  }
  int type = EVP_PKEY_id(phone_key);
  if (type != EVP_PKEY_RSA && type != EVP_PKEY_EC) return CAPSTAN_EINVAL;
  size_t name_len = strnlen(device_name, CAPSTAN_DEVICE_NAME_MAX + 1);
  if (name_len == 0 || name_len > CAPSTAN_DEVICE_NAME_MAX) return CAPSTAN_EINVAL;

  X509_NAME *subject = X509_NAME_new();
  if (subject == NULL) return pki_fail(CAPSTAN_ENOMEM);
  int rc = add_cn(subject, device_name, name_len);
  if (rc != 0) goto err;
  if ((rc = copy_naming(subject, X509_get_subject_name(capf->cert))) != 0) goto err;
  uint8_t s[SERIAL_LEN];
  if (!random_serial(s)) {
    rc = CAPSTAN_ECRYPTO;
    goto err;
  }
  int64_t now = (int64_t)time(NULL);
  int64_t end = now + (int64_t)validity_days * SECONDS_PER_DAY;
  rc = issue_leaf(capf, subject, phone_key, now - LSC_BACKDATE_SECONDS, end, s, eku, 3, der,
                  der_len);
  if (rc != 0) goto err;
  X509_NAME_free(subject);
  memcpy(serial, s, SERIAL_LEN);
  *not_after = end;
  return 0;
err:
  X509_NAME_free(subject);
  return pki_fail(rc);
}

int capstan_pki_make_capf_csr(EVP_PKEY *key, const X509_NAME *subject, uint8_t **der,
                              size_t *der_len) {
  static const int eku[] = {NID_server_auth, NID_ipsecEndSystem};
  if (der == NULL || der_len == NULL) return CAPSTAN_EINVAL;
  *der = NULL;
  *der_len = 0;
  if (key == NULL || subject == NULL) return CAPSTAN_EINVAL;
  /* Exactly the three requested extensions of capf-lifecycle.md: the CA
   * adds the identifiers itself. */
  cert_spec_t spec = {
      .public_key = key,
      .is_ca = 1,
      .ku_bits = (1u << KU_BIT_DIGITAL_SIGNATURE) | (1u << KU_BIT_KEY_CERT_SIGN),
      .eku_nids = eku,
      .eku_count = 2,
      .omit_ski = 1,
  };
  int rc = CAPSTAN_ECRYPTO;
  STACK_OF(X509_EXTENSION) *exts = make_extensions(&spec);
  X509_REQ *req = X509_REQ_new();
  if (exts == NULL || req == NULL || !X509_REQ_set_version(req, X509_REQ_VERSION_1) ||
      !X509_REQ_set_subject_name(req, (X509_NAME *)subject) || !X509_REQ_set_pubkey(req, key) ||
      !X509_REQ_add_extensions(req, exts) || !X509_REQ_sign(req, key, EVP_sha256())) {
    goto done;
  }
  rc = capstan_pki_req_to_der(req, der, der_len);
done:
  X509_REQ_free(req);
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  return rc != 0 ? pki_fail(rc) : 0;
}
