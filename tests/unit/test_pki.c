/* Unit tests for core/pki: certificate content (CAPF, TFTP, LSC), public key
 * checks, phone signatures, SUDI data, names, chains, (de)serialisation.
 * RSA keys are made once in the group setup and shared, because RSA key
 * generation is slow under the sanitizers. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <openssl/asn1.h>
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
#include <openssl/obj.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "bench/phone/phone_pki.h"
#include "core/base/error.h"
#include "core/pki/pki.h"

#define CAPF_EXTRA "O=Example\\, Inc.,OU=Voice,L=Wellington,ST=WGN,C=NZ"

typedef struct {
  capstan_identity_t capf; /* RSA 2048, subject extra CAPF_EXTRA */
  capstan_identity_t tftp; /* RSA 2048 */
  capstan_identity_t ca;   /* test manufacturing CA, EC P-256 */
  EVP_PKEY *rsa2048;       /* a phone key */
  EVP_PKEY *rsa1024;
  EVP_PKEY *ec256, *ec384, *ec521;
} fixture_t;

static fixture_t fx;

static int group_setup(void **state) {
  (void)state;
  memset(&fx, 0, sizeof(fx));
  if (capstan_pki_create_capf(CAPF_EXTRA, &fx.capf) != 0) return -1;
  if (capstan_pki_create_tftp("O=Example,C=NZ", &fx.tftp) != 0) return -1;
  if (capstan_phone_create_test_ca("Test Manufacturing CA", &fx.ca) != 0) return -1;
  if (capstan_pki_generate_key(CAPSTAN_KEY_RSA, 2048, &fx.rsa2048) != 0) return -1;
  if (capstan_pki_generate_key(CAPSTAN_KEY_RSA, 1024, &fx.rsa1024) != 0) return -1;
  if (capstan_pki_generate_key(CAPSTAN_KEY_EC, 256, &fx.ec256) != 0) return -1;
  if (capstan_pki_generate_key(CAPSTAN_KEY_EC, 384, &fx.ec384) != 0) return -1;
  if (capstan_pki_generate_key(CAPSTAN_KEY_EC, 521, &fx.ec521) != 0) return -1;
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  capstan_identity_cleanup(&fx.capf);
  capstan_identity_cleanup(&fx.tftp);
  capstan_identity_cleanup(&fx.ca);
  EVP_PKEY_free(fx.rsa2048);
  EVP_PKEY_free(fx.rsa1024);
  EVP_PKEY_free(fx.ec256);
  EVP_PKEY_free(fx.ec384);
  EVP_PKEY_free(fx.ec521);
  return 0;
}

/* --- helpers ------------------------------------------------------------- */

static X509 *parse(const uint8_t *der, size_t len) {
  X509 *x = NULL;
  assert_int_equal(capstan_pki_parse_cert(der, len, &x), 0);
  assert_non_null(x);
  return x;
}

static void spki_of(const EVP_PKEY *key, uint8_t **der, size_t *len) {
  assert_int_equal(capstan_pki_public_key_to_der(key, der, len), 0);
  assert_non_null(*der);
  assert_true(*len > 0);
}

static char *name_text(const X509_NAME *name) {
  char *s = NULL;
  assert_int_equal(capstan_pki_dn_string(name, &s), 0);
  assert_non_null(s);
  return s;
}

/* The first entry of |nid| in |name| as UTF-8 (malloc'd), or NULL. */
static char *name_entry(const X509_NAME *name, int nid) {
  int i = X509_NAME_get_index_by_NID(name, nid, -1);
  if (i < 0) return NULL;
  uint8_t *utf8 = NULL;
  int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)));
  assert_true(n >= 0);
  char *s = malloc((size_t)n + 1);
  assert_non_null(s);
  memcpy(s, utf8, (size_t)n);
  s[n] = '\0';
  OPENSSL_free(utf8);
  return s;
}

static void assert_basic_constraints(X509 *x, int want_ca, long want_pathlen, int want_crit) {
  int crit = -1;
  BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(x, NID_basic_constraints, &crit, NULL);
  assert_non_null(bc);
  assert_int_equal(crit, want_crit);
  assert_int_equal(bc->ca != 0, want_ca);
  if (want_pathlen >= 0) {
    assert_non_null(bc->pathlen);
    assert_int_equal(ASN1_INTEGER_get(bc->pathlen), want_pathlen);
  } else {
    assert_null(bc->pathlen);
  }
  BASIC_CONSTRAINTS_free(bc);
}

/* Key usage bits 0..8 exactly equal to |bits| (bit numbers of RFC 5280). */
static void assert_key_usage(X509 *x, unsigned bits) {
  int crit = -1;
  ASN1_BIT_STRING *ku = X509_get_ext_d2i(x, NID_key_usage, &crit, NULL);
  assert_non_null(ku);
  assert_int_equal(crit, 1);
  for (int b = 0; b < 9; b++) {
    assert_int_equal(ASN1_BIT_STRING_get_bit(ku, b), (bits >> b) & 1);
  }
  ASN1_BIT_STRING_free(ku);
}

static void assert_eku(X509 *x, const int *nids, size_t n) {
  EXTENDED_KEY_USAGE *eku = X509_get_ext_d2i(x, NID_ext_key_usage, NULL, NULL);
  assert_non_null(eku);
  assert_int_equal(sk_ASN1_OBJECT_num(eku), n);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, i)), nids[i]);
  }
  sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
}

/* Seconds from notBefore to notAfter. */
static int64_t validity_seconds(const X509 *x) {
  int days = 0, secs = 0;
  assert_int_equal(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), X509_get0_notAfter(x)), 1);
  return (int64_t)days * 86400 + secs;
}

/* Seconds from |t| to the certificate's notAfter. */
static int64_t seconds_to_not_after(const X509 *x, int64_t t) {
  ASN1_TIME *at = ASN1_TIME_set(NULL, (time_t)t);
  assert_non_null(at);
  int days = 0, secs = 0;
  assert_int_equal(ASN1_TIME_diff(&days, &secs, at, X509_get0_notAfter(x)), 1);
  ASN1_TIME_free(at);
  return (int64_t)days * 86400 + secs;
}

static int is_lower_hex8(const char *s) {
  if (strlen(s) != 8) return 0;
  for (int i = 0; i < 8; i++) {
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
  }
  return 1;
}

/* The serial's DER INTEGER content: exactly 16 bytes, positive. */
static void assert_serial_16_positive(const X509 *x) {
  const ASN1_INTEGER *s = X509_get0_serialNumber(x);
  assert_int_equal(ASN1_STRING_type(s), V_ASN1_INTEGER);
  assert_int_equal(ASN1_STRING_length(s), 16);
  assert_true(ASN1_STRING_get0_data(s)[0] != 0);
  assert_true((ASN1_STRING_get0_data(s)[0] & 0x80) == 0);
  /* And on the wire: tag 02, length 16. */
  int n = i2d_ASN1_INTEGER(s, NULL);
  assert_int_equal(n, 18);
}

static STACK_OF(X509) * stack_of(X509 *a, X509 *b) {
  STACK_OF(X509) *sk = sk_X509_new_null();
  assert_non_null(sk);
  if (a != NULL) {
    X509_up_ref(a);
    assert_true(sk_X509_push(sk, a));
  }
  if (b != NULL) {
    X509_up_ref(b);
    assert_true(sk_X509_push(sk, b));
  }
  return sk;
}

/* A public key of exactly |bits| bits that is not a real RSA modulus (no
 * factors known): good enough for the size and exponent checks, and instant
 * to make, unlike generating 3072- and 4096-bit keys under ASan. */
static void fake_rsa_spki(int bits, unsigned long e_word, uint8_t **der, size_t *len) {
  BIGNUM *n = BN_new(), *e = BN_new();
  assert_non_null(n);
  assert_non_null(e);
  assert_true(BN_rand(n, bits, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ODD));
  assert_true(BN_set_word(e, e_word));
  RSA *rsa = RSA_new();
  assert_non_null(rsa);
  assert_true(RSA_set0_key(rsa, n, e, NULL));
  EVP_PKEY *pkey = EVP_PKEY_new();
  assert_non_null(pkey);
  assert_true(EVP_PKEY_assign_RSA(pkey, rsa));
  CBB cbb;
  uint8_t *buf;
  assert_true(CBB_init(&cbb, 256));
  assert_true(EVP_marshal_public_key(&cbb, pkey));
  assert_true(CBB_finish(&cbb, &buf, len));
  *der = malloc(*len);
  assert_non_null(*der);
  memcpy(*der, buf, *len);
  OPENSSL_free(buf);
  EVP_PKEY_free(pkey);
}

/* --- CAPF and TFTP certificates ------------------------------------------ */

static void test_capf_content(void **state) {
  (void)state;
  X509 *x = fx.capf.cert;
  const X509_NAME *subj = X509_get_subject_name(x);
  char *cn = name_entry(subj, NID_commonName);
  assert_non_null(cn);
  assert_int_equal(strlen(cn), 13);
  assert_memory_equal(cn, "CAPF-", 5);
  assert_true(is_lower_hex8(cn + 5));
  char *o = name_entry(subj, NID_organizationName);
  assert_string_equal(o, "Example, Inc.");
  char *c = name_entry(subj, NID_countryName);
  assert_string_equal(c, "NZ");
  /* Self-signed: issuer is the subject, the signature verifies. */
  assert_int_equal(X509_NAME_cmp(X509_get_issuer_name(x), subj), 0);
  assert_int_equal(X509_verify(x, fx.capf.key), 1);
  assert_int_equal(X509_get_signature_nid(x), NID_sha256WithRSAEncryption);
  assert_int_equal(EVP_PKEY_id(fx.capf.key), EVP_PKEY_RSA);
  assert_int_equal(RSA_bits(EVP_PKEY_get0_RSA(fx.capf.key)), 2048);
  assert_int_equal(X509_get_version(x), X509_VERSION_3);
  assert_basic_constraints(x, 1, 0, 1);
  assert_key_usage(x, (1u << 0) | (1u << 5));
  assert_null(X509_get_ext_d2i(x, NID_ext_key_usage, NULL, NULL));
  const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(x);
  assert_non_null(ski);
  assert_int_equal(ASN1_STRING_length(ski), 20);
  assert_serial_16_positive(x);
  /* now-1h .. +10 years */
  assert_int_equal(validity_seconds(x), 3650LL * 86400 + 3600);
  int64_t to_end = seconds_to_not_after(x, (int64_t)time(NULL));
  assert_true(to_end > 3650LL * 86400 - 120 && to_end <= 3650LL * 86400);
  free(cn);
  free(o);
  free(c);
}

static void test_capf_two_differ(void **state) {
  (void)state;
  /* No extra subject; CN and serial are random per certificate. */
  capstan_identity_t a = {0};
  assert_int_equal(capstan_pki_create_capf(NULL, &a), 0);
  char *s = name_text(X509_get_subject_name(a.cert));
  assert_int_equal(strlen(s), strlen("CN=CAPF-12345678"));
  assert_memory_equal(s, "CN=CAPF-", 8);
  char *s2 = name_text(X509_get_subject_name(fx.capf.cert));
  assert_memory_not_equal(s + 3, s2 + 3, 13);
  assert_int_not_equal(
      ASN1_INTEGER_cmp(X509_get0_serialNumber(a.cert), X509_get0_serialNumber(fx.capf.cert)), 0);
  free(s);
  free(s2);
  capstan_identity_cleanup(&a);
  assert_null(a.cert);
  assert_null(a.key);
}

static void test_subject_extra_refused(void **state) {
  (void)state;
  static const char *bad[] = {
      "CN=evil", "X=1",
      "C=NZL",   "O=",
      "O=a,",    ",O=a",
      "O",       "O=a,,C=NZ",
      "O=a\\q",  "O=a=b",
      "O=a+b",   "O=a\x01",
      "C=N",     "O=abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcde" /* 65 */,
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    capstan_identity_t id = {0};
    assert_int_equal(capstan_pki_create_capf(bad[i], &id), CAPSTAN_EINVAL);
    assert_null(id.cert);
    assert_null(id.key);
    assert_int_equal(capstan_pki_create_tftp(bad[i], &id), CAPSTAN_EINVAL);
    assert_int_equal(ERR_peek_error(), 0);
  }
}

static void test_tftp_content(void **state) {
  (void)state;
  X509 *x = fx.tftp.cert;
  char *cn = name_entry(X509_get_subject_name(x), NID_commonName);
  assert_non_null(cn);
  assert_int_equal(strlen(cn), 13);
  assert_memory_equal(cn, "TFTP-", 5);
  assert_true(is_lower_hex8(cn + 5));
  char *dn = name_text(X509_get_subject_name(x));
  assert_string_equal(dn + 13 + 3, ",O=Example,C=NZ");
  assert_int_equal(X509_verify(x, fx.tftp.key), 1);
  assert_int_equal(X509_get_signature_nid(x), NID_sha256WithRSAEncryption);
  assert_int_equal(RSA_bits(EVP_PKEY_get0_RSA(fx.tftp.key)), 2048);
  assert_basic_constraints(x, 0, -1, 0);
  assert_key_usage(x, (1u << 0) | (1u << 2));
  static const int eku[] = {NID_server_auth, NID_client_auth};
  assert_eku(x, eku, 2);
  assert_int_equal(validity_seconds(x), 3650LL * 86400 + 3600);
  assert_serial_16_positive(x);
  free(cn);
  free(dn);
}

/* --- LSC ----------------------------------------------------------------- */

static void check_lsc(EVP_PKEY *phone_key, unsigned days) {
  const char *device = "SEP58971ECC97C1";
  uint8_t serial[16], serial2[16];
  uint8_t *der = NULL, *der2 = NULL;
  size_t len = 0, len2 = 0;
  int64_t not_after = 0, not_after2 = 0;
  int64_t before = (int64_t)time(NULL);
  assert_int_equal(
      capstan_pki_issue_lsc(&fx.capf, device, phone_key, days, serial, &der, &len, &not_after), 0);
  int64_t after = (int64_t)time(NULL);
  assert_int_equal(ERR_peek_error(), 0);
  X509 *x = parse(der, len);

  /* Subject: CN = device name, then O/OU/L/ST/C from the CAPF in order. */
  char *dn = name_text(X509_get_subject_name(x));
  assert_string_equal(dn, "CN=SEP58971ECC97C1,O=Example\\, Inc.,OU=Voice,L=Wellington,ST=WGN,C=NZ");
  char *o = name_entry(X509_get_subject_name(x), NID_organizationName);
  assert_string_equal(o, "Example, Inc.");
  /* Issuer = CAPF subject. */
  assert_int_equal(X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(fx.capf.cert)), 0);
  /* Serial: 16 bytes, positive, equal to what the call reported. */
  assert_serial_16_positive(x);
  assert_memory_equal(ASN1_STRING_get0_data(X509_get0_serialNumber(x)), serial, 16);
  assert_true((serial[0] & 0x80) == 0);
  uint8_t sb[32];
  size_t sb_len = 0;
  assert_int_equal(capstan_pki_serial_bytes(x, sb, sizeof(sb), &sb_len), 0);
  assert_int_equal(sb_len, 16);
  assert_memory_equal(sb, serial, 16);
  /* Validity: now-5min .. now+days. */
  assert_int_equal(validity_seconds(x), (int64_t)days * 86400 + 300);
  assert_true(not_after >= before + (int64_t)days * 86400);
  assert_true(not_after <= after + (int64_t)days * 86400);
  assert_int_equal(seconds_to_not_after(x, not_after), 0);
  /* Extensions. */
  assert_basic_constraints(x, 0, -1, 0);
  assert_key_usage(x, (1u << 0) | (1u << 2));
  static const int eku[] = {NID_server_auth, NID_client_auth, NID_ipsecEndSystem};
  assert_eku(x, eku, 3);
  EXTENDED_KEY_USAGE *ekus = X509_get_ext_d2i(x, NID_ext_key_usage, NULL, NULL);
  char oid[64];
  assert_true(OBJ_obj2txt(oid, sizeof(oid), sk_ASN1_OBJECT_value(ekus, 2), 1) > 0);
  assert_string_equal(oid, "1.3.6.1.5.5.7.3.5");
  sk_ASN1_OBJECT_pop_free(ekus, ASN1_OBJECT_free);
  AUTHORITY_KEYID *aki = X509_get_ext_d2i(x, NID_authority_key_identifier, NULL, NULL);
  assert_non_null(aki);
  assert_non_null(aki->keyid);
  assert_int_equal(ASN1_OCTET_STRING_cmp(aki->keyid, X509_get0_subject_key_id(fx.capf.cert)), 0);
  AUTHORITY_KEYID_free(aki);
  assert_non_null(X509_get0_subject_key_id(x));
  /* Signed with SHA-256 by the CAPF key, certifying the phone's key. */
  assert_int_equal(X509_get_signature_nid(x), NID_sha256WithRSAEncryption);
  assert_int_equal(X509_verify(x, fx.capf.key), 1);
  assert_int_equal(X509_verify(x, fx.tftp.key), 0);
  ERR_clear_error();
  EVP_PKEY *pub = X509_get_pubkey(x);
  assert_int_equal(EVP_PKEY_cmp(pub, phone_key), 1);
  EVP_PKEY_free(pub);
  /* Chains to the CAPF. */
  STACK_OF(X509) *trusted = stack_of(fx.capf.cert, NULL);
  assert_int_equal(capstan_pki_verify_chain(x, NULL, trusted), 0);
  sk_X509_pop_free(trusted, X509_free);

  /* A second issue gets a different serial. */
  assert_int_equal(
      capstan_pki_issue_lsc(&fx.capf, device, phone_key, days, serial2, &der2, &len2, &not_after2),
      0);
  assert_memory_not_equal(serial, serial2, 16);
  X509 *x2 = parse(der2, len2);
  assert_int_not_equal(ASN1_INTEGER_cmp(X509_get0_serialNumber(x), X509_get0_serialNumber(x2)), 0);

  X509_free(x);
  X509_free(x2);
  free(der);
  free(der2);
  free(dn);
  free(o);
}

static void test_lsc_rsa2048(void **state) {
  (void)state;
  check_lsc(fx.rsa2048, 1825);
}

static void test_lsc_ec256(void **state) {
  (void)state;
  check_lsc(fx.ec256, 1);
}

static void test_lsc_refused_args(void **state) {
  (void)state;
  uint8_t serial[16];
  uint8_t *der = (uint8_t *)"x";
  size_t len = 9;
  int64_t na = 7;
  assert_int_equal(capstan_pki_issue_lsc(&fx.capf, "SEP1", fx.ec256, 0, serial, &der, &len, &na),
                   CAPSTAN_EINVAL);
  assert_null(der);
  assert_int_equal(len, 0);
  assert_int_equal(na, 0);
  assert_int_equal(capstan_pki_issue_lsc(&fx.capf, "SEP1", fx.ec256, 1826, serial, &der, &len, &na),
                   CAPSTAN_EINVAL);
  assert_int_equal(capstan_pki_issue_lsc(&fx.capf, "", fx.ec256, 10, serial, &der, &len, &na),
                   CAPSTAN_EINVAL);
  char longname[66];
  memset(longname, 'A', 65);
  longname[65] = '\0';
  assert_int_equal(capstan_pki_issue_lsc(&fx.capf, longname, fx.ec256, 10, serial, &der, &len, &na),
                   CAPSTAN_EINVAL);
  /* Not UTF-8. */
  assert_int_equal(
      capstan_pki_issue_lsc(&fx.capf, "SEP\xff\xfe", fx.ec256, 10, serial, &der, &len, &na),
      CAPSTAN_EINVAL);
  assert_int_equal(capstan_pki_issue_lsc(&fx.capf, "SEP1", NULL, 10, serial, &der, &len, &na),
                   CAPSTAN_EINVAL);
  capstan_identity_t empty = {0};
  assert_int_equal(capstan_pki_issue_lsc(&empty, "SEP1", fx.ec256, 10, serial, &der, &len, &na),
                   CAPSTAN_EINVAL);
  assert_null(der);
  assert_int_equal(ERR_peek_error(), 0);
}

/* Several worker threads issue LSCs with one shared, read-only CAPF. */
#define LSC_THREADS 4
#define LSC_PER_THREAD 3

static STACK_OF(X509) * shared_trust;

static void *lsc_worker(void *arg) {
  intptr_t failures = 0;
  (void)arg;
  for (int i = 0; i < LSC_PER_THREAD; i++) {
    uint8_t serial[16];
    uint8_t *der = NULL;
    size_t len = 0;
    int64_t na = 0;
    if (capstan_pki_issue_lsc(&fx.capf, "SEPAABBCCDDEEFF", fx.ec384, 30, serial, &der, &len, &na) !=
        0) {
      failures++;
      continue;
    }
    X509 *x = NULL;
    if (capstan_pki_parse_cert(der, len, &x) != 0 || X509_verify(x, fx.capf.key) != 1 ||
        capstan_pki_verify_chain(x, NULL, shared_trust) != 0) {
      failures++;
    }
    X509_free(x);
    /* Signature checks with a key shared by all threads. */
    uint8_t *sig = NULL;
    size_t sig_len = 0;
    if (capstan_phone_sign(fx.rsa1024, 3, der, len, &sig, &sig_len) != 0 ||
        capstan_pki_verify_signed_data(fx.rsa1024, 3, der, len, sig, sig_len) != 0 ||
        capstan_pki_verify_signed_data(fx.rsa1024, 1, der, len, sig, sig_len) != CAPSTAN_EACCES) {
      failures++;
    }
    free(sig);
    free(der);
    if (ERR_peek_error() != 0) failures++;
  }
  return (void *)failures;
}

static void test_lsc_concurrent(void **state) {
  (void)state;
  pthread_t t[LSC_THREADS];
  shared_trust = stack_of(fx.ca.cert, fx.capf.cert);
  for (int i = 0; i < LSC_THREADS; i++) {
    assert_int_equal(pthread_create(&t[i], NULL, lsc_worker, NULL), 0);
  }
  for (int i = 0; i < LSC_THREADS; i++) {
    void *ret = NULL;
    assert_int_equal(pthread_join(t[i], &ret), 0);
    assert_int_equal((intptr_t)ret, 0);
  }
  sk_X509_pop_free(shared_trust, X509_free);
  shared_trust = NULL;
}

/* --- public key checks ----------------------------------------------------- */

static void expect_key_refused(const uint8_t *der, size_t len, int alg, unsigned bits,
                               const char *reason) {
  EVP_PKEY *out = (EVP_PKEY *)1;
  const char *why = NULL;
  assert_int_equal(capstan_pki_check_public_key(der, len, alg, bits, &out, &why), CAPSTAN_EINVAL);
  assert_null(out);
  assert_non_null(why);
  assert_string_equal(why, reason);
  assert_int_equal(ERR_peek_error(), 0);
}

static void expect_key_ok(const uint8_t *der, size_t len, int alg, unsigned bits) {
  EVP_PKEY *out = NULL;
  const char *why = "unset";
  assert_int_equal(capstan_pki_check_public_key(der, len, alg, bits, &out, &why), 0);
  assert_non_null(out);
  assert_null(why);
  EVP_PKEY_free(out);
}

static void test_check_rsa_sizes(void **state) {
  (void)state;
  static const unsigned sizes[] = {512, 1024, 2048, 3072, 4096};
  const size_t n = sizeof(sizes) / sizeof(sizes[0]);
  for (size_t i = 0; i < n; i++) {
    uint8_t *der;
    size_t len;
    fake_rsa_spki((int)sizes[i], 65537, &der, &len);
    for (size_t j = 0; j < n; j++) {
      if (i == j) {
        expect_key_ok(der, len, CAPSTAN_KEY_RSA, sizes[j]);
      } else {
        expect_key_refused(der, len, CAPSTAN_KEY_RSA, sizes[j], "key size mismatch");
      }
    }
    expect_key_refused(der, len, CAPSTAN_KEY_EC, 256, "key type mismatch");
    free(der);
  }
  /* Real keys too, and the returned key is the one sent. */
  uint8_t *der;
  size_t len;
  spki_of(fx.rsa2048, &der, &len);
  EVP_PKEY *out = NULL;
  assert_int_equal(capstan_pki_check_public_key(der, len, CAPSTAN_KEY_RSA, 2048, &out, NULL), 0);
  assert_int_equal(EVP_PKEY_cmp(out, fx.rsa2048), 1);
  EVP_PKEY_free(out);
  free(der);
  spki_of(fx.rsa1024, &der, &len);
  expect_key_ok(der, len, CAPSTAN_KEY_RSA, 1024);
  expect_key_refused(der, len, CAPSTAN_KEY_RSA, 2048, "key size mismatch");
  free(der);
}

static void test_check_rsa_exponent(void **state) {
  (void)state;
  uint8_t *der;
  size_t len;
  fake_rsa_spki(2048, 3, &der, &len);
  expect_key_ok(der, len, CAPSTAN_KEY_RSA, 2048);
  free(der);
  /* An even exponent or e = 1 is not an RSA key anyone can use. BoringSSL's
   * parser may already refuse some; either way it is refused. */
  static const unsigned long bad_e[] = {65536, 1};
  for (size_t i = 0; i < 2; i++) {
    fake_rsa_spki(2048, bad_e[i], &der, &len);
    EVP_PKEY *out = NULL;
    const char *why = NULL;
    assert_int_equal(capstan_pki_check_public_key(der, len, CAPSTAN_KEY_RSA, 2048, &out, &why),
                     CAPSTAN_EINVAL);
    assert_null(out);
    assert_true(strcmp(why, "bad RSA exponent") == 0 || strcmp(why, "malformed public key") == 0);
    free(der);
  }
}

static void test_check_ec_curves(void **state) {
  (void)state;
  EVP_PKEY *keys[] = {fx.ec256, fx.ec384, fx.ec521};
  static const unsigned bits[] = {256, 384, 521};
  for (size_t i = 0; i < 3; i++) {
    uint8_t *der;
    size_t len;
    spki_of(keys[i], &der, &len);
    for (size_t j = 0; j < 3; j++) {
      if (i == j) {
        expect_key_ok(der, len, CAPSTAN_KEY_EC, bits[j]);
      } else {
        expect_key_refused(der, len, CAPSTAN_KEY_EC, bits[j], "curve mismatch");
      }
    }
    expect_key_refused(der, len, CAPSTAN_KEY_RSA, 2048, "key type mismatch");
    /* Trailing byte after the SPKI. */
    uint8_t *longer = malloc(len + 1);
    assert_non_null(longer);
    memcpy(longer, der, len);
    longer[len] = 0;
    expect_key_refused(longer, len + 1, CAPSTAN_KEY_EC, bits[i], "malformed public key");
    /* Truncated. */
    expect_key_refused(der, len - 1, CAPSTAN_KEY_EC, bits[i], "malformed public key");
    /* Point moved off the curve: flip a bit of the last coordinate byte. */
    memcpy(longer, der, len);
    longer[len - 1] ^= 0x01;
    expect_key_refused(longer, len, CAPSTAN_KEY_EC, bits[i], "malformed public key");
    free(longer);
    free(der);
  }
}

static void test_check_garbage(void **state) {
  (void)state;
  static const uint8_t garbage[] = {0x30, 0x03, 0x02, 0x01, 0x05};
  expect_key_refused(garbage, sizeof(garbage), CAPSTAN_KEY_RSA, 2048, "malformed public key");
  expect_key_refused((const uint8_t *)"hello", 5, CAPSTAN_KEY_EC, 256, "malformed public key");
  expect_key_refused(NULL, 0, CAPSTAN_KEY_RSA, 2048, "malformed public key");
  uint8_t *der;
  size_t len;
  spki_of(fx.rsa2048, &der, &len);
  uint8_t *longer = malloc(len + 2);
  assert_non_null(longer);
  memcpy(longer, der, len);
  longer[len] = 0x05;
  longer[len + 1] = 0x00;
  expect_key_refused(longer, len + 2, CAPSTAN_KEY_RSA, 2048, "malformed public key");
  /* Requests outside the protocol's sizes/curves. */
  expect_key_refused(der, len, CAPSTAN_KEY_RSA, 1536, "unsupported key request");
  expect_key_refused(der, len, CAPSTAN_KEY_EC, 224, "unsupported key request");
  expect_key_refused(der, len, 7, 2048, "unsupported key request");
  free(longer);
  free(der);
}

/* --- signed data ------------------------------------------------------------ */

static const uint8_t kAuthData[] = "SEP58971ECC97C1\0<certificate DER would follow>";

static void roundtrip(EVP_PKEY *key, int hash_id) {
  uint8_t *sig = NULL;
  size_t sig_len = 0;
  assert_int_equal(capstan_phone_sign(key, hash_id, kAuthData, sizeof(kAuthData), &sig, &sig_len),
                   0);
  assert_non_null(sig);
  assert_int_equal(
      capstan_pki_verify_signed_data(key, hash_id, kAuthData, sizeof(kAuthData), sig, sig_len), 0);
  /* Tampered data. */
  uint8_t data[sizeof(kAuthData)];
  memcpy(data, kAuthData, sizeof(data));
  data[3] ^= 0x01;
  assert_int_equal(capstan_pki_verify_signed_data(key, hash_id, data, sizeof(data), sig, sig_len),
                   CAPSTAN_EACCES);
  /* Another hash id over the same data. */
  int other = hash_id == CAPSTAN_HASH_SHA1 ? CAPSTAN_HASH_SHA512 : CAPSTAN_HASH_SHA1;
  assert_int_equal(
      capstan_pki_verify_signed_data(key, other, kAuthData, sizeof(kAuthData), sig, sig_len),
      CAPSTAN_EACCES);
  /* Tampered signature. */
  sig[sig_len / 2] ^= 0x40;
  assert_int_equal(
      capstan_pki_verify_signed_data(key, hash_id, kAuthData, sizeof(kAuthData), sig, sig_len),
      CAPSTAN_EACCES);
  sig[sig_len / 2] ^= 0x40;
  /* Truncated and extended signatures. */
  assert_int_equal(
      capstan_pki_verify_signed_data(key, hash_id, kAuthData, sizeof(kAuthData), sig, sig_len - 1),
      CAPSTAN_EACCES);
  uint8_t *longer = malloc(sig_len + 1);
  assert_non_null(longer);
  memcpy(longer, sig, sig_len);
  longer[sig_len] = 0;
  assert_int_equal(capstan_pki_verify_signed_data(key, hash_id, kAuthData, sizeof(kAuthData),
                                                  longer, sig_len + 1),
                   CAPSTAN_EACCES);
  /* Unknown hash id. */
  assert_int_equal(
      capstan_pki_verify_signed_data(key, 4, kAuthData, sizeof(kAuthData), sig, sig_len),
      CAPSTAN_EACCES);
  assert_int_equal(ERR_peek_error(), 0);
  free(longer);
  free(sig);
}

static void test_signed_data_rsa(void **state) {
  (void)state;
  roundtrip(fx.rsa2048, CAPSTAN_HASH_SHA1);
  roundtrip(fx.rsa2048, CAPSTAN_HASH_SHA512);
  roundtrip(fx.rsa2048, CAPSTAN_HASH_SHA256);
  roundtrip(fx.rsa1024, CAPSTAN_HASH_SHA1);
}

static void test_signed_data_ec(void **state) {
  (void)state;
  roundtrip(fx.ec256, CAPSTAN_HASH_SHA1);
  roundtrip(fx.ec256, CAPSTAN_HASH_SHA512);
  roundtrip(fx.ec521, CAPSTAN_HASH_SHA512);
}

static void test_signed_data_wrong_key(void **state) {
  (void)state;
  uint8_t *sig = NULL;
  size_t sig_len = 0;
  assert_int_equal(capstan_phone_sign(fx.rsa2048, 1, kAuthData, sizeof(kAuthData), &sig, &sig_len),
                   0);
  assert_int_equal(
      capstan_pki_verify_signed_data(fx.capf.key, 1, kAuthData, sizeof(kAuthData), sig, sig_len),
      CAPSTAN_EACCES);
  assert_int_equal(
      capstan_pki_verify_signed_data(fx.ec256, 1, kAuthData, sizeof(kAuthData), sig, sig_len),
      CAPSTAN_EACCES);
  free(sig);
  assert_int_equal(ERR_peek_error(), 0);
}

/* The standard PKCS#1 v1.5 signature (DigestInfo inside the padding) is
 * accepted as well as the phones' bare digest. */
static void test_signed_data_digestinfo(void **state) {
  (void)state;
  static const struct {
    int hash_id, nid;
    const EVP_MD *(*md)(void);
  } cases[] = {{1, NID_sha1, EVP_sha1}, {2, NID_sha256, EVP_sha256}, {3, NID_sha512, EVP_sha512}};
  RSA *rsa = EVP_PKEY_get0_RSA(fx.rsa2048);
  for (size_t i = 0; i < 3; i++) {
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    assert_true(EVP_Digest(kAuthData, sizeof(kAuthData), md, &md_len, cases[i].md(), NULL));
    uint8_t sig[256];
    unsigned sig_len = 0;
    assert_true(RSA_sign(cases[i].nid, md, md_len, sig, &sig_len, rsa));
    assert_int_equal(capstan_pki_verify_signed_data(fx.rsa2048, cases[i].hash_id, kAuthData,
                                                    sizeof(kAuthData), sig, sig_len),
                     0);
    /* A DigestInfo naming another hash is refused. */
    int other = cases[i].hash_id == 1 ? 3 : 1;
    assert_int_equal(capstan_pki_verify_signed_data(fx.rsa2048, other, kAuthData, sizeof(kAuthData),
                                                    sig, sig_len),
                     CAPSTAN_EACCES);
  }
}

/* Raw-sign an encoded message |em| (RSA_size bytes). */
static void raw_sign(EVP_PKEY *key, const uint8_t *em, uint8_t *sig, size_t *sig_len) {
  RSA *rsa = EVP_PKEY_get0_RSA(key);
  assert_true(RSA_sign_raw(rsa, sig_len, sig, RSA_size(rsa), em, RSA_size(rsa), RSA_NO_PADDING));
}

static void test_signed_data_bad_padding(void **state) {
  (void)state;
  RSA *rsa = EVP_PKEY_get0_RSA(fx.rsa2048);
  size_t k = RSA_size(rsa);
  uint8_t md[20];
  unsigned md_len = 0;
  assert_true(EVP_Digest(kAuthData, sizeof(kAuthData), md, &md_len, EVP_sha1(), NULL));
  uint8_t good[256], em[256], sig[256];
  size_t sig_len = 0;
  assert_int_equal(k, 256);
  good[0] = 0x00;
  good[1] = 0x01;
  memset(good + 2, 0xff, k - 20 - 3);
  good[k - 21] = 0x00;
  memcpy(good + k - 20, md, 20);
  /* Sanity: the hand-made encoding verifies. */
  raw_sign(fx.rsa2048, good, sig, &sig_len);
  assert_int_equal(
      capstan_pki_verify_signed_data(fx.rsa2048, 1, kAuthData, sizeof(kAuthData), sig, sig_len), 0);
  /* Block type 2 instead of 1. */
  memcpy(em, good, k);
  em[1] = 0x02;
  raw_sign(fx.rsa2048, em, sig, &sig_len);
  assert_int_equal(
      capstan_pki_verify_signed_data(fx.rsa2048, 1, kAuthData, sizeof(kAuthData), sig, sig_len),
      CAPSTAN_EACCES);
  /* A non-FF byte inside the padding. */
  memcpy(em, good, k);
  em[40] = 0xfe;
  raw_sign(fx.rsa2048, em, sig, &sig_len);
  assert_int_equal(
      capstan_pki_verify_signed_data(fx.rsa2048, 1, kAuthData, sizeof(kAuthData), sig, sig_len),
      CAPSTAN_EACCES);
  /* No 00 separator: the digest is preceded by an FF. */
  memcpy(em, good, k);
  em[k - 21] = 0xff;
  raw_sign(fx.rsa2048, em, sig, &sig_len);
  assert_int_equal(
      capstan_pki_verify_signed_data(fx.rsa2048, 1, kAuthData, sizeof(kAuthData), sig, sig_len),
      CAPSTAN_EACCES);
  /* Fewer than eight FF bytes: 00 01 FF*4 00 then junk and the digest. */
  memset(em, 0, k);
  em[1] = 0x01;
  memset(em + 2, 0xff, 4);
  em[6] = 0x00;
  memcpy(em + k - 20, md, 20);
  raw_sign(fx.rsa2048, em, sig, &sig_len);
  assert_int_equal(
      capstan_pki_verify_signed_data(fx.rsa2048, 1, kAuthData, sizeof(kAuthData), sig, sig_len),
      CAPSTAN_EACCES);
  /* Extra byte between the separator and the digest. */
  memcpy(em, good, k);
  em[k - 22] = 0x00;
  em[k - 21] = 0x07;
  raw_sign(fx.rsa2048, em, sig, &sig_len);
  assert_int_equal(
      capstan_pki_verify_signed_data(fx.rsa2048, 1, kAuthData, sizeof(kAuthData), sig, sig_len),
      CAPSTAN_EACCES);
  /* Block type 0 (00 00 FF..): not a signature block. */
  memcpy(em, good, k);
  em[1] = 0x00;
  raw_sign(fx.rsa2048, em, sig, &sig_len);
  assert_int_equal(
      capstan_pki_verify_signed_data(fx.rsa2048, 1, kAuthData, sizeof(kAuthData), sig, sig_len),
      CAPSTAN_EACCES);
  assert_int_equal(ERR_peek_error(), 0);
}

static void test_phone_sign_layout(void **state) {
  (void)state;
  /* The phone's RSA signature is the raw operation on 00 01 FF..FF 00 ||
   * bare digest: recover it with the public key and compare. */
  uint8_t *sig = NULL;
  size_t sig_len = 0;
  assert_int_equal(capstan_phone_sign(fx.rsa1024, CAPSTAN_HASH_SHA512, kAuthData, sizeof(kAuthData),
                                      &sig, &sig_len),
                   0);
  assert_int_equal(sig_len, 128);
  RSA *rsa = EVP_PKEY_get0_RSA(fx.rsa1024);
  uint8_t em[128];
  size_t em_len = 0;
  assert_true(RSA_verify_raw(rsa, &em_len, em, sizeof(em), sig, sig_len, RSA_NO_PADDING));
  assert_int_equal(em_len, 128);
  uint8_t md[64];
  unsigned md_len = 0;
  assert_true(EVP_Digest(kAuthData, sizeof(kAuthData), md, &md_len, EVP_sha512(), NULL));
  assert_int_equal(em[0], 0x00);
  assert_int_equal(em[1], 0x01);
  for (size_t i = 2; i < 128 - 64 - 1; i++) assert_int_equal(em[i], 0xff);
  assert_int_equal(em[128 - 64 - 1], 0x00);
  assert_memory_equal(em + 128 - 64, md, 64);
  free(sig);
  /* EC: a DER ECDSA signature BoringSSL verifies. */
  assert_int_equal(
      capstan_phone_sign(fx.ec384, CAPSTAN_HASH_SHA1, kAuthData, sizeof(kAuthData), &sig, &sig_len),
      0);
  assert_true(EVP_Digest(kAuthData, sizeof(kAuthData), md, &md_len, EVP_sha1(), NULL));
  assert_int_equal(ECDSA_verify(0, md, md_len, sig, sig_len, EVP_PKEY_get0_EC_KEY(fx.ec384)), 1);
  free(sig);
  /* Unknown hash id. */
  sig = (uint8_t *)1;
  assert_int_equal(capstan_phone_sign(fx.ec384, 9, kAuthData, sizeof(kAuthData), &sig, &sig_len),
                   CAPSTAN_EINVAL);
  assert_null(sig);
}

/* --- SUDI ------------------------------------------------------------------ */

static void test_sudi_roundtrip(void **state) {
  (void)state;
  EVP_PKEY *keys[] = {fx.rsa2048, fx.ec256};
  for (size_t k = 0; k < 2; k++) {
    uint8_t *cert = NULL, *sudi = NULL;
    size_t cert_len = 0, sudi_len = 0;
    assert_int_equal(
        capstan_phone_issue_test_leaf(&fx.ca, "CP-8845-SEP58971ECC97C1", keys[k], &cert, &cert_len),
        0);
    assert_int_equal(capstan_phone_make_sudi(keys[k], cert, cert_len, 0x12345678, &sudi, &sudi_len),
                     0);
    /* Layout: 00 | len | cert | 01 | len | sig | 03 | len | sig. */
    assert_int_equal(sudi[0], 0x00);
    assert_int_equal((sudi[1] << 8) | sudi[2], cert_len);
    assert_memory_equal(sudi + 3, cert, cert_len);
    assert_int_equal(sudi[3 + cert_len], 0x01);

    X509 *x = NULL;
    assert_int_equal(capstan_pki_verify_sudi(sudi, sudi_len, 0x12345678, &x), 0);
    assert_non_null(x);
    X509 *want = parse(cert, cert_len);
    assert_int_equal(X509_cmp(x, want), 0);
    /* The SUDI certificate chains to the manufacturing CA, not to the CAPF. */
    STACK_OF(X509) *ca = stack_of(fx.ca.cert, NULL);
    STACK_OF(X509) *capf = stack_of(fx.capf.cert, NULL);
    assert_int_equal(capstan_pki_verify_chain(x, NULL, ca), 0);
    assert_int_equal(capstan_pki_verify_chain(x, NULL, capf), CAPSTAN_EACCES);
    sk_X509_pop_free(ca, X509_free);
    sk_X509_pop_free(capf, X509_free);
    X509_free(x);
    X509_free(want);

    /* Another session id: the signatures do not cover it. */
    x = (X509 *)1;
    assert_int_equal(capstan_pki_verify_sudi(sudi, sudi_len, 0x12345679, &x), CAPSTAN_EACCES);
    assert_null(x);
    /* Byte order: the big-endian reading of the id must not verify. */
    assert_int_equal(capstan_pki_verify_sudi(sudi, sudi_len, 0x78563412, &x), CAPSTAN_EACCES);
    /* Tamper with the last signature byte. */
    sudi[sudi_len - 1] ^= 0x01;
    assert_int_equal(capstan_pki_verify_sudi(sudi, sudi_len, 0x12345678, &x), CAPSTAN_EACCES);
    sudi[sudi_len - 1] ^= 0x01;
    /* Tamper with the first signature. */
    sudi[3 + cert_len + 3 + 4] ^= 0x80;
    assert_int_equal(capstan_pki_verify_sudi(sudi, sudi_len, 0x12345678, &x), CAPSTAN_EACCES);
    sudi[3 + cert_len + 3 + 4] ^= 0x80;
    /* Malformed: truncated, trailing byte, wrong tags, bad certificate. */
    assert_int_equal(capstan_pki_verify_sudi(sudi, sudi_len - 1, 0x12345678, &x), CAPSTAN_EINVAL);
    uint8_t *longer = malloc(sudi_len + 1);
    assert_non_null(longer);
    memcpy(longer, sudi, sudi_len);
    longer[sudi_len] = 0;
    assert_int_equal(capstan_pki_verify_sudi(longer, sudi_len + 1, 0x12345678, &x), CAPSTAN_EINVAL);
    free(longer);
    sudi[0] = 0x05;
    assert_int_equal(capstan_pki_verify_sudi(sudi, sudi_len, 0x12345678, &x), CAPSTAN_EINVAL);
    sudi[0] = 0x00;
    sudi[3 + cert_len] = 0x02;
    assert_int_equal(capstan_pki_verify_sudi(sudi, sudi_len, 0x12345678, &x), CAPSTAN_EINVAL);
    sudi[3 + cert_len] = 0x01;
    sudi[3] ^= 0xff; /* the certificate's outer tag */
    assert_int_equal(capstan_pki_verify_sudi(sudi, sudi_len, 0x12345678, &x), CAPSTAN_EINVAL);
    sudi[3] ^= 0xff;
    assert_int_equal(capstan_pki_verify_sudi(sudi, sudi_len, 0x12345678, &x), 0);
    X509_free(x);
    assert_int_equal(capstan_pki_verify_sudi(NULL, 0, 1, &x), CAPSTAN_EINVAL);
    assert_int_equal(ERR_peek_error(), 0);
    free(cert);
    free(sudi);
  }
}

/* SUDI_DATA built by hand from the spec, independently of make_sudi: the
 * signed bytes are the session id little-endian, then the certificate. */
static void test_sudi_by_hand(void **state) {
  (void)state;
  uint8_t *cert = NULL;
  size_t cert_len = 0;
  assert_int_equal(capstan_phone_issue_test_leaf(&fx.ca, "SUDI", fx.ec256, &cert, &cert_len), 0);
  uint8_t *msg = malloc(cert_len + 4);
  assert_non_null(msg);
  msg[0] = 0x04;
  msg[1] = 0x03;
  msg[2] = 0x02;
  msg[3] = 0x01;
  memcpy(msg + 4, cert, cert_len);
  uint8_t *s1, *s3;
  size_t s1_len, s3_len;
  assert_int_equal(capstan_phone_sign(fx.ec256, 1, msg, cert_len + 4, &s1, &s1_len), 0);
  assert_int_equal(capstan_phone_sign(fx.ec256, 3, msg, cert_len + 4, &s3, &s3_len), 0);
  CBB cbb, child;
  uint8_t *sudi;
  size_t sudi_len;
  assert_true(CBB_init(&cbb, 0));
  assert_true(CBB_add_u8(&cbb, 0) && CBB_add_u16_length_prefixed(&cbb, &child) &&
              CBB_add_bytes(&child, cert, cert_len) && CBB_add_u8(&cbb, 1) &&
              CBB_add_u16_length_prefixed(&cbb, &child) && CBB_add_bytes(&child, s1, s1_len) &&
              CBB_add_u8(&cbb, 3) && CBB_add_u16_length_prefixed(&cbb, &child) &&
              CBB_add_bytes(&child, s3, s3_len) && CBB_finish(&cbb, &sudi, &sudi_len));
  X509 *x = NULL;
  assert_int_equal(capstan_pki_verify_sudi(sudi, sudi_len, 0x01020304, &x), 0);
  X509_free(x);
  /* The two signatures swapped in place: SHA-1 slot holds the SHA-512 one. */
  OPENSSL_free(sudi);
  assert_true(CBB_init(&cbb, 0));
  assert_true(CBB_add_u8(&cbb, 0) && CBB_add_u16_length_prefixed(&cbb, &child) &&
              CBB_add_bytes(&child, cert, cert_len) && CBB_add_u8(&cbb, 1) &&
              CBB_add_u16_length_prefixed(&cbb, &child) && CBB_add_bytes(&child, s3, s3_len) &&
              CBB_add_u8(&cbb, 3) && CBB_add_u16_length_prefixed(&cbb, &child) &&
              CBB_add_bytes(&child, s1, s1_len) && CBB_finish(&cbb, &sudi, &sudi_len));
  assert_int_equal(capstan_pki_verify_sudi(sudi, sudi_len, 0x01020304, &x), CAPSTAN_EACCES);
  OPENSSL_free(sudi);
  free(s1);
  free(s3);
  free(msg);
  free(cert);
}

/* --- names, digests, serials ------------------------------------------------ */

static void test_md5hash(void **state) {
  (void)state;
  char out[33];
  memset(out, 'x', sizeof(out));
  capstan_pki_md5hash((const uint8_t *)"", 0, out);
  assert_string_equal(out, "d41d8cd98f00b204e9800998ecf8427e");
  capstan_pki_md5hash(NULL, 0, out);
  assert_string_equal(out, "d41d8cd98f00b204e9800998ecf8427e");
  capstan_pki_md5hash((const uint8_t *)"abc", 3, out);
  assert_string_equal(out, "900150983cd24fb0d6963f7d28e17f72");
  capstan_pki_md5hash((const uint8_t *)"The quick brown fox jumps over the lazy dog", 43, out);
  assert_string_equal(out, "9e107d9d372bb6826bd81d3542a419d6");
}

static void add_utf8(X509_NAME *name, int nid, const char *v, size_t len, int set) {
  assert_true(
      X509_NAME_add_entry_by_NID(name, nid, MBSTRING_UTF8, (const uint8_t *)v, (int)len, -1, set));
}

static void test_dn_string(void **state) {
  (void)state;
  X509_NAME *name = X509_NAME_new();
  assert_non_null(name);
  add_utf8(name, NID_commonName, "#lead, and trail ", 17, 0);
  add_utf8(name, NID_organizationName, "a+b;c<d>e\"f\\g", 13, 0);
  add_utf8(name, NID_organizationalUnitName, " x", 2, 0);
  add_utf8(name, NID_localityName, "Z\xc3\xbcrich", 7, 0);
  add_utf8(name, NID_stateOrProvinceName, "nul\0in", 6, 0);
  add_utf8(name, NID_countryName, "NZ", 2, 0);
  /* Multi-valued RDN: joins the previous one. */
  add_utf8(name, NID_organizationalUnitName, "Voice", 5, -1);
  /* An attribute type without a short name: dotted OID and #hex DER. */
  assert_true(
      X509_NAME_add_entry_by_txt(name, "1.2.3.4", MBSTRING_UTF8, (const uint8_t *)"hi", 2, -1, 0));
  char *s = name_text(name);
  assert_string_equal(s,
                      "CN=\\#lead\\, and trail\\ ,O=a\\+b\\;c\\<d\\>e\\\"f\\\\g,OU=\\ x,"
                      "L=Z\xc3\xbcrich,ST=nul\\00in,C=NZ+OU=Voice,1.2.3.4=#0C026869");
  free(s);
  X509_NAME_free(name);

  /* Certificate order, not reversed. */
  s = name_text(X509_get_subject_name(fx.capf.cert));
  assert_memory_equal(s, "CN=CAPF-", 8);
  assert_string_equal(s + 16, ",O=Example\\, Inc.,OU=Voice,L=Wellington,ST=WGN,C=NZ");
  free(s);

  name = X509_NAME_new();
  s = (char *)1;
  assert_int_equal(capstan_pki_dn_string(name, &s), 0);
  assert_string_equal(s, "");
  free(s);
  X509_NAME_free(name);
  assert_int_equal(capstan_pki_dn_string(NULL, &s), CAPSTAN_EINVAL);
  assert_null(s);
}

static void test_serial_bytes(void **state) {
  (void)state;
  uint8_t out[20];
  size_t len = 0;
  assert_int_equal(capstan_pki_serial_bytes(fx.capf.cert, out, sizeof(out), &len), 0);
  assert_int_equal(len, 16);
  assert_true(out[0] != 0);
  assert_memory_equal(out, ASN1_STRING_get0_data(X509_get0_serialNumber(fx.capf.cert)), 16);
  assert_int_equal(capstan_pki_serial_bytes(fx.capf.cert, out, 15, &len), CAPSTAN_ERANGE);
  /* A small serial with a high bit: DER has a leading 00, the output not. */
  X509 *x = X509_new();
  assert_non_null(x);
  ASN1_INTEGER *i = ASN1_INTEGER_new();
  assert_true(ASN1_INTEGER_set(i, 0x80ff));
  assert_true(X509_set_serialNumber(x, i));
  assert_int_equal(capstan_pki_serial_bytes(x, out, sizeof(out), &len), 0);
  assert_int_equal(len, 2);
  assert_int_equal(out[0], 0x80);
  assert_int_equal(out[1], 0xff);
  assert_true(ASN1_INTEGER_set(i, -5));
  assert_true(X509_set_serialNumber(x, i));
  assert_int_equal(capstan_pki_serial_bytes(x, out, sizeof(out), &len), CAPSTAN_EINVAL);
  ASN1_INTEGER_free(i);
  X509_free(x);
}

/* --- chains ------------------------------------------------------------------ */

static void test_chain(void **state) {
  (void)state;
  uint8_t serial[16];
  uint8_t *der = NULL, *leaf_der = NULL;
  size_t len = 0, leaf_len = 0;
  int64_t na;
  assert_int_equal(
      capstan_pki_issue_lsc(&fx.capf, "SEP001122334455", fx.ec256, 365, serial, &der, &len, &na),
      0);
  X509 *lsc = parse(der, len);
  assert_int_equal(capstan_phone_issue_test_leaf(&fx.ca, "MIC", fx.ec384, &leaf_der, &leaf_len), 0);
  X509 *mic = parse(leaf_der, leaf_len);

  /* A certificate from another CA is refused. */
  STACK_OF(X509) *only_ca = stack_of(fx.ca.cert, NULL);
  assert_int_equal(capstan_pki_verify_chain(lsc, NULL, only_ca), CAPSTAN_EACCES);
  assert_int_equal(capstan_pki_verify_chain(mic, NULL, only_ca), 0);
  /* A trust list with several anchors (previous CAPF kept, MIC CA). */
  STACK_OF(X509) *both = stack_of(fx.ca.cert, fx.capf.cert);
  assert_int_equal(capstan_pki_verify_chain(lsc, NULL, both), 0);
  assert_int_equal(capstan_pki_verify_chain(mic, NULL, both), 0);
  /* The TFTP certificate (not a CA) cannot be an issuer anchor for the LSC. */
  STACK_OF(X509) *tftp = stack_of(fx.tftp.cert, NULL);
  assert_int_equal(capstan_pki_verify_chain(lsc, NULL, tftp), CAPSTAN_EACCES);
  /* Empty trust list. */
  STACK_OF(X509) *none = sk_X509_new_null();
  assert_int_equal(capstan_pki_verify_chain(lsc, NULL, none), CAPSTAN_EACCES);
  /* The CAPF offered as an untrusted intermediate does not make it trusted. */
  STACK_OF(X509) *untrusted = stack_of(fx.capf.cert, NULL);
  assert_int_equal(capstan_pki_verify_chain(lsc, untrusted, only_ca), CAPSTAN_EACCES);
  assert_int_equal(ERR_peek_error(), 0);

  sk_X509_pop_free(only_ca, X509_free);
  sk_X509_pop_free(both, X509_free);
  sk_X509_pop_free(tftp, X509_free);
  sk_X509_pop_free(none, X509_free);
  sk_X509_pop_free(untrusted, X509_free);
  X509_free(lsc);
  X509_free(mic);
  free(der);
  free(leaf_der);
}

static void test_test_ca_content(void **state) {
  (void)state;
  X509 *x = fx.ca.cert;
  assert_basic_constraints(x, 1, 0, 1);
  assert_key_usage(x, (1u << 0) | (1u << 5));
  assert_int_equal(X509_verify(x, fx.ca.key), 1);
  char *s = name_text(X509_get_subject_name(x));
  assert_string_equal(s, "CN=Test Manufacturing CA");
  free(s);
  capstan_identity_t bad = {0};
  assert_int_equal(capstan_phone_create_test_ca("Evil CAPF-CA", &bad), CAPSTAN_EINVAL);
  assert_null(bad.cert);
}

/* --- identity (de)serialisation --------------------------------------------- */

static void test_identity_der(void **state) {
  (void)state;
  uint8_t *cert = NULL, *key = NULL;
  size_t cert_len = 0, key_len = 0;
  assert_int_equal(capstan_identity_to_der(&fx.capf, &cert, &cert_len, &key, &key_len), 0);
  capstan_identity_t back = {0};
  assert_int_equal(capstan_identity_from_der(cert, cert_len, key, key_len, &back), 0);
  assert_int_equal(X509_cmp(back.cert, fx.capf.cert), 0);
  assert_int_equal(EVP_PKEY_cmp(back.key, fx.capf.key), 1);
  assert_null(back.chain);
  /* The restored key still signs LSCs that verify under the original. */
  uint8_t serial[16];
  uint8_t *lsc = NULL;
  size_t lsc_len = 0;
  int64_t na;
  assert_int_equal(capstan_pki_issue_lsc(&back, "SEP0", fx.ec256, 5, serial, &lsc, &lsc_len, &na),
                   0);
  X509 *x = parse(lsc, lsc_len);
  assert_int_equal(X509_verify(x, fx.capf.key), 1);
  X509_free(x);
  free(lsc);
  capstan_identity_cleanup(&back);

  /* Key from another identity: refused. */
  uint8_t *cert2 = NULL, *key2 = NULL;
  size_t cert2_len = 0, key2_len = 0;
  assert_int_equal(capstan_identity_to_der(&fx.tftp, &cert2, &cert2_len, &key2, &key2_len), 0);
  assert_int_equal(capstan_identity_from_der(cert, cert_len, key2, key2_len, &back),
                   CAPSTAN_EINVAL);
  assert_null(back.cert);
  assert_null(back.key);
  /* Trailing bytes on either part: refused. */
  uint8_t *longer = malloc(key_len + 1);
  assert_non_null(longer);
  memcpy(longer, key, key_len);
  longer[key_len] = 0;
  assert_int_equal(capstan_identity_from_der(cert, cert_len, longer, key_len + 1, &back),
                   CAPSTAN_EINVAL);
  free(longer);
  longer = malloc(cert_len + 1);
  assert_non_null(longer);
  memcpy(longer, cert, cert_len);
  longer[cert_len] = 0;
  assert_int_equal(capstan_identity_from_der(longer, cert_len + 1, key, key_len, &back),
                   CAPSTAN_EINVAL);
  free(longer);
  /* Garbage key. */
  assert_int_equal(capstan_identity_from_der(cert, cert_len, cert, cert_len, &back),
                   CAPSTAN_EINVAL);
  assert_int_equal(ERR_peek_error(), 0);
  OPENSSL_cleanse(key, key_len);
  OPENSSL_cleanse(key2, key2_len);
  free(cert);
  free(key);
  free(cert2);
  free(key2);
}

static void test_identity_chain_and_copy(void **state) {
  (void)state;
  uint8_t *leaf = NULL;
  size_t leaf_len = 0;
  assert_int_equal(capstan_phone_issue_test_leaf(&fx.ca, "leaf", fx.ec256, &leaf, &leaf_len), 0);
  capstan_identity_t id = {0};
  id.cert = parse(leaf, leaf_len);
  EVP_PKEY_up_ref(fx.ec256);
  id.key = fx.ec256;
  uint8_t *ca_der = NULL;
  size_t ca_len = 0;
  assert_int_equal(capstan_pki_cert_to_der(fx.ca.cert, &ca_der, &ca_len), 0);
  const uint8_t *ders[] = {ca_der};
  assert_int_equal(capstan_identity_set_chain_der(&id, ders, &ca_len, 1), 0);
  assert_int_equal(sk_X509_num(id.chain), 1);

  capstan_identity_t copy = {0};
  assert_int_equal(capstan_identity_copy(&id, &copy), 0);
  capstan_identity_cleanup(&id);
  /* The copy holds its own references. */
  uint8_t **out = NULL;
  size_t *lens = NULL, count = 0;
  assert_int_equal(capstan_identity_chain_to_der(&copy, &out, &lens, &count), 0);
  assert_int_equal(count, 1);
  assert_int_equal(lens[0], ca_len);
  assert_memory_equal(out[0], ca_der, ca_len);
  capstan_pki_der_array_free(out, lens, count);
  /* A bad chain element leaves the identity unchanged. */
  const uint8_t *bad[] = {ca_der, (const uint8_t *)"junk"};
  size_t bad_lens[] = {ca_len, 4};
  assert_int_equal(capstan_identity_set_chain_der(&copy, bad, bad_lens, 2), CAPSTAN_EINVAL);
  assert_int_equal(sk_X509_num(copy.chain), 1);
  capstan_identity_cleanup(&copy);
  free(leaf);
  free(ca_der);
}

static void test_parse_cert(void **state) {
  (void)state;
  uint8_t *der = NULL;
  size_t len = 0;
  assert_int_equal(capstan_pki_cert_to_der(fx.tftp.cert, &der, &len), 0);
  X509 *x = NULL;
  assert_int_equal(capstan_pki_parse_cert(der, len, &x), 0);
  X509_free(x);
  assert_int_equal(capstan_pki_parse_cert(der, len - 1, &x), CAPSTAN_EINVAL);
  assert_null(x);
  assert_int_equal(capstan_pki_parse_cert(der, 0, &x), CAPSTAN_EINVAL);
  assert_int_equal(capstan_pki_parse_cert((const uint8_t *)"\x30\x00", 2, &x), CAPSTAN_EINVAL);
  assert_int_equal(ERR_peek_error(), 0);
  free(der);
}

static void test_generate_key_args(void **state) {
  (void)state;
  EVP_PKEY *k = (EVP_PKEY *)1;
  assert_int_equal(capstan_pki_generate_key(CAPSTAN_KEY_EC, 255, &k), CAPSTAN_EINVAL);
  assert_null(k);
  assert_int_equal(capstan_pki_generate_key(CAPSTAN_KEY_RSA, 100, &k), CAPSTAN_EINVAL);
  assert_int_equal(capstan_pki_generate_key(5, 256, &k), CAPSTAN_EINVAL);
  assert_int_equal(capstan_pki_generate_key(CAPSTAN_KEY_EC, 384, &k), 0);
  assert_int_equal(EC_GROUP_get_curve_name(EC_KEY_get0_group(EVP_PKEY_get0_EC_KEY(k))),
                   NID_secp384r1);
  EVP_PKEY_free(k);
  assert_int_equal(capstan_pki_generate_key(CAPSTAN_KEY_RSA, 512, &k), 0);
  assert_int_equal(RSA_bits(EVP_PKEY_get0_RSA(k)), 512);
  /* 512-bit RSA cannot carry a padded SHA-512 digest. */
  uint8_t *sig = NULL;
  size_t sig_len = 0;
  assert_int_equal(
      capstan_phone_sign(k, CAPSTAN_HASH_SHA512, kAuthData, sizeof(kAuthData), &sig, &sig_len),
      CAPSTAN_ECRYPTO);
  assert_int_equal(
      capstan_phone_sign(k, CAPSTAN_HASH_SHA1, kAuthData, sizeof(kAuthData), &sig, &sig_len), 0);
  assert_int_equal(capstan_pki_verify_signed_data(k, CAPSTAN_HASH_SHA1, kAuthData,
                                                  sizeof(kAuthData), sig, sig_len),
                   0);
  free(sig);
  EVP_PKEY_free(k);
  assert_int_equal(ERR_peek_error(), 0);
}

/* --- validity, CSR, CA-signed CAPF import, trust uploads, PEM ---------------- */

static void test_cert_validity(void **state) {
  (void)state;
  int64_t nb = 0, na = 0, now = (int64_t)time(NULL);
  assert_int_equal(capstan_pki_cert_validity(fx.capf.cert, &nb, &na), 0);
  assert_true(nb <= now - 3600 && nb > now - 3600 - 600);
  assert_int_equal(na - nb, 3650LL * 86400 + 3600);
  uint8_t serial[16];
  uint8_t *der = NULL;
  size_t len = 0;
  int64_t lsc_na = 0;
  assert_int_equal(
      capstan_pki_issue_lsc(&fx.capf, "SEPV", fx.ec256, 90, serial, &der, &len, &lsc_na), 0);
  X509 *x = parse(der, len);
  assert_int_equal(capstan_pki_cert_validity(x, NULL, &na), 0);
  assert_int_equal(na, lsc_na);
  assert_int_equal(capstan_pki_cert_validity(x, &nb, NULL), 0);
  assert_int_equal(lsc_na - nb, 90LL * 86400 + 300);
  X509_free(x);
  free(der);
}

/* A certificate made directly with BoringSSL (independent of the code under
 * test): subject CN=|cn| (or |subject| when non-NULL), key |pub|, signed by
 * |issuer| with SHA-256, CA:TRUE with |pathlen| (-1: none) when |ca|,
 * keyUsage |ku| (bit numbers) when non-zero. */
/* Set to make the next certificates' constraints non-critical. */
static int make_cert_noncritical;

static uint8_t *make_cert_md(const capstan_identity_t *issuer, const X509_NAME *subject,
                             const char *cn, EVP_PKEY *pub, int ca, long pathlen, unsigned ku,
                             const EVP_MD *md, size_t *len) {
  X509 *x = X509_new();
  assert_non_null(x);
  assert_true(X509_set_version(x, X509_VERSION_3));
  assert_true(ASN1_INTEGER_set(X509_get_serialNumber(x), 4242));
  X509_NAME *name = subject != NULL ? X509_NAME_dup((X509_NAME *)subject) : X509_NAME_new();
  assert_non_null(name);
  if (subject == NULL) add_utf8(name, NID_commonName, cn, strlen(cn), 0);
  assert_true(X509_set_subject_name(x, name));
  X509_NAME_free(name);
  /* No issuer: self-signed with |pub| (which then holds a private key). */
  assert_true(X509_set_issuer_name(
      x, issuer != NULL ? X509_get_subject_name(issuer->cert) : X509_get_subject_name(x)));
  assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), -3600));
  assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 365));
  assert_true(X509_set_pubkey(x, pub));
  if (ca) {
    BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
    bc->ca = 1;
    if (pathlen >= 0) {
      bc->pathlen = ASN1_INTEGER_new();
      assert_true(ASN1_INTEGER_set(bc->pathlen, pathlen));
    }
    assert_true(X509_add1_ext_i2d(x, NID_basic_constraints, bc, !make_cert_noncritical,
                                  X509V3_ADD_DEFAULT));
    BASIC_CONSTRAINTS_free(bc);
  }
  if (ku != 0) {
    ASN1_BIT_STRING *bits = ASN1_BIT_STRING_new();
    for (int b = 0; b < 9; b++) {
      if (ku & (1u << b)) assert_true(ASN1_BIT_STRING_set_bit(bits, b, 1));
    }
    assert_true(
        X509_add1_ext_i2d(x, NID_key_usage, bits, !make_cert_noncritical, X509V3_ADD_DEFAULT));
    ASN1_BIT_STRING_free(bits);
  }
  assert_true(X509_sign(x, issuer != NULL ? issuer->key : pub, md) > 0);
  uint8_t *der = NULL;
  assert_int_equal(capstan_pki_cert_to_der(x, &der, len), 0);
  X509_free(x);
  return der;
}

static uint8_t *make_cert(const capstan_identity_t *issuer, const X509_NAME *subject,
                          const char *cn, EVP_PKEY *pub, int ca, long pathlen, unsigned ku,
                          size_t *len) {
  return make_cert_md(issuer, subject, cn, pub, ca, pathlen, ku, EVP_sha256(), len);
}

#define KU_CA ((1u << 0) | (1u << 5))

static void test_capf_csr(void **state) {
  (void)state;
  X509_NAME *subject = NULL;
  assert_int_equal(capstan_pki_capf_subject("O=Example,C=NZ", &subject), 0);
  EVP_PKEY *keys[] = {fx.capf.key, fx.ec256};
  for (size_t k = 0; k < 2; k++) {
    uint8_t *der = NULL;
    size_t len = 0;
    assert_int_equal(capstan_pki_make_capf_csr(keys[k], subject, &der, &len), 0);
    const uint8_t *p = der;
    X509_REQ *req = d2i_X509_REQ(NULL, &p, (long)len);
    assert_non_null(req);
    assert_ptr_equal(p, der + len);
    assert_int_equal(X509_REQ_verify(req, keys[k]), 1);
    int md = NID_undef, pk = NID_undef;
    assert_true(OBJ_find_sigid_algs(X509_REQ_get_signature_nid(req), &md, &pk));
    assert_int_equal(md, NID_sha256);
    assert_int_equal(X509_NAME_cmp(X509_REQ_get_subject_name(req), subject), 0);
    EVP_PKEY *pub = X509_REQ_get_pubkey(req);
    assert_int_equal(EVP_PKEY_cmp(pub, keys[k]), 1);
    EVP_PKEY_free(pub);
    /* Exactly the three extensions of capf-lifecycle.md, no more. */
    STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(req);
    assert_non_null(exts);
    assert_int_equal(sk_X509_EXTENSION_num(exts), 3);
    int crit = 0;
    BASIC_CONSTRAINTS *bc = X509V3_get_d2i(exts, NID_basic_constraints, &crit, NULL);
    assert_non_null(bc);
    assert_int_equal(crit, 1);
    assert_true(bc->ca);
    assert_int_equal(ASN1_INTEGER_get(bc->pathlen), 0);
    BASIC_CONSTRAINTS_free(bc);
    ASN1_BIT_STRING *ku = X509V3_get_d2i(exts, NID_key_usage, &crit, NULL);
    assert_non_null(ku);
    assert_int_equal(crit, 1);
    for (int bit = 0; bit < 9; bit++) {
      assert_int_equal(ASN1_BIT_STRING_get_bit(ku, bit), bit == 0 || bit == 5);
    }
    ASN1_BIT_STRING_free(ku);
    EXTENDED_KEY_USAGE *eku = X509V3_get_d2i(exts, NID_ext_key_usage, &crit, NULL);
    assert_non_null(eku);
    assert_int_equal(crit, 0);
    assert_int_equal(sk_ASN1_OBJECT_num(eku), 2);
    assert_int_equal(OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, 0)), NID_server_auth);
    assert_int_equal(OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, 1)), NID_ipsecEndSystem);
    sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_REQ_free(req);

    /* PEM for the operator, and back. */
    char *pem = NULL;
    assert_int_equal(capstan_pki_pem_encode("CERTIFICATE REQUEST", der, len, &pem), 0);
    assert_memory_equal(pem, "-----BEGIN CERTIFICATE REQUEST-----\n", 36);
    uint8_t **ders = NULL;
    size_t *lens = NULL, count = 0;
    assert_int_equal(capstan_pki_pem_decode((const uint8_t *)pem, strlen(pem),
                                            "CERTIFICATE REQUEST", &ders, &lens, &count),
                     0);
    assert_int_equal(count, 1);
    assert_int_equal(lens[0], len);
    assert_memory_equal(ders[0], der, len);
    capstan_pki_der_array_free(ders, lens, count);
    free(pem);
    free(der);
  }
  /* The CN is CAPF- and 8 hex digits, then the extra attributes. */
  char cn[64];
  assert_int_equal(X509_NAME_get_text_by_NID(subject, NID_commonName, cn, sizeof(cn)), 13);
  assert_memory_equal(cn, "CAPF-", 5);
  assert_int_equal(strspn(cn + 5, "0123456789abcdef"), 8);
  X509_NAME_free(subject);
  assert_int_equal(capstan_pki_capf_subject("X=1", &subject), CAPSTAN_EINVAL);
  assert_null(subject);
}

static void test_create_capf_spec(void **state) {
  (void)state;
  capstan_identity_t id = {0};
  capstan_capf_spec_t ec = {
      .key_alg = CAPSTAN_KEY_EC, .key_bits = 384, .days = 30, .subject_extra = "O=Example"};
  assert_int_equal(capstan_pki_create_capf_spec(&ec, &id), 0);
  char name[16];
  capstan_pki_key_name(id.key, name, sizeof(name));
  assert_string_equal(name, "ec384");
  assert_true(capstan_pki_is_self_signed(id.cert));
  int64_t nb = 0, na = 0;
  assert_int_equal(capstan_pki_cert_validity(id.cert, &nb, &na), 0);
  assert_int_equal(na - nb, 30LL * 86400 + 3600);
  assert_non_null(X509_get0_subject_key_id(id.cert));
  capstan_identity_cleanup(&id);
  capstan_pki_key_name(fx.capf.key, name, sizeof(name));
  assert_string_equal(name, "rsa2048");
  assert_false(capstan_pki_is_self_signed(NULL));
  /* Keys a CAPF may not have, and validity beyond the bound. */
  capstan_capf_spec_t bad[] = {
      {.key_alg = CAPSTAN_KEY_RSA, .key_bits = 1024},
      {.key_alg = CAPSTAN_KEY_EC, .key_bits = 521},
      {.key_alg = CAPSTAN_KEY_RSA, .key_bits = 2048, .days = CAPSTAN_PKI_CAPF_MAX_DAYS + 1},
      {.key_alg = CAPSTAN_KEY_RSA, .key_bits = 2048, .subject_extra = "CN=x"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(capstan_pki_create_capf_spec(&bad[i], &id), CAPSTAN_EINVAL);
    assert_null(id.cert);
  }
}

static STACK_OF(X509) *
    parsed_stack(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len) {
  STACK_OF(X509) *sk = sk_X509_new_null();
  assert_non_null(sk);
  if (a != NULL) assert_true(sk_X509_push(sk, parse(a, a_len)));
  if (b != NULL) assert_true(sk_X509_push(sk, parse(b, b_len)));
  return sk;
}

/* Checks |der| as an import for |keys| through |cands| at |now|; returns the
 * refused rule (-1: accepted) and frees the result. */
static int import_rule(EVP_PKEY *const *keys, size_t nkeys, const uint8_t *der, size_t len,
                       STACK_OF(X509) * cands, int64_t now, unsigned flags) {
  capstan_capf_import_t imp;
  int rc = capstan_pki_check_capf_import(keys, nkeys, der, len, cands, now, flags, &imp);
  int rule = rc == 0 ? -1 : imp.rule;
  if (rc != 0) {
    assert_int_equal(rc, CAPSTAN_EINVAL);
    assert_non_null(imp.why);
    assert_null(imp.id.cert);
  }
  capstan_capf_import_cleanup(&imp);
  return rule;
}

static void test_import_capf(void **state) {
  (void)state;
  const X509_NAME *capf_name = X509_get_subject_name(fx.capf.cert);
  int64_t now = (int64_t)time(NULL);
  /* The enterprise root (no pathlen) and an intermediate (pathlen 1). */
  size_t root_len = 0, inter_len = 0, len = 0;
  uint8_t *root = make_cert(NULL, NULL, "Enterprise Root", fx.ec384, 1, -1, KU_CA, &root_len);
  capstan_identity_t root_id = {.cert = parse(root, root_len), .key = fx.ec384};
  uint8_t *inter = make_cert(&root_id, NULL, "Voice Issuing", fx.ec256, 1, 1, KU_CA, &inter_len);
  capstan_identity_t inter_id = {.cert = parse(inter, inter_len), .key = fx.ec256};
  STACK_OF(X509) *cands = parsed_stack(root, root_len, inter, inter_len);

  /* Accepted for the current key (second of the list): chain inter, root. */
  uint8_t *good = make_cert(&inter_id, capf_name, NULL, fx.capf.key, 1, 0, KU_CA, &len);
  EVP_PKEY *keys[] = {fx.rsa2048, fx.capf.key};
  capstan_capf_import_t imp;
  assert_int_equal(capstan_pki_check_capf_import(keys, 2, good, len, cands, now, 0, &imp), 0);
  assert_null(imp.warning);
  assert_int_equal(imp.key_index, 1);
  assert_int_equal(EVP_PKEY_cmp(imp.id.key, fx.capf.key), 1);
  assert_int_equal(sk_X509_num(imp.id.chain), 2);
  assert_int_equal(X509_cmp(sk_X509_value(imp.id.chain, 0), inter_id.cert), 0);
  assert_int_equal(X509_cmp(sk_X509_value(imp.id.chain, 1), root_id.cert), 0);
  /* LSCs from it verify to the root with the root as the only anchor. */
  uint8_t serial[16], *lsc = NULL;
  size_t lsc_len = 0;
  int64_t na;
  assert_int_equal(
      capstan_pki_issue_lsc(&imp.id, "SEPIMPORT0001", fx.ec256, 30, serial, &lsc, &lsc_len, &na),
      0);
  X509 *x = parse(lsc, lsc_len);
  STACK_OF(X509) *roots = stack_of(root_id.cert, NULL);
  STACK_OF(X509) *path = stack_of(imp.id.cert, inter_id.cert);
  assert_int_equal(capstan_pki_verify_chain(x, path, roots), 0);
  assert_int_equal(capstan_pki_verify_chain(x, NULL, roots), CAPSTAN_EACCES);
  sk_X509_pop_free(roots, X509_free);
  sk_X509_pop_free(path, X509_free);
  X509_free(x);
  free(lsc);
  /* A CA-signed CAPF certificate is not an acceptable IPsec upload. */
  const char *why = NULL;
  assert_int_equal(capstan_pki_check_trust_upload(imp.id.cert, CAPSTAN_PKI_UPLOAD_IPSEC, &why),
                   CAPSTAN_EINVAL);
  assert_string_equal(why, "IPsec certificate signed by a CA must not be CA:TRUE");
  capstan_capf_import_cleanup(&imp);

  /* The pending key (first of the list) matches too. */
  uint8_t *pending = make_cert(&inter_id, capf_name, NULL, fx.rsa2048, 1, 0, KU_CA, &len);
  assert_int_equal(capstan_pki_check_capf_import(keys, 2, pending, len, cands, now, 0, &imp), 0);
  assert_int_equal(imp.key_index, 0);
  capstan_capf_import_cleanup(&imp);
  EVP_PKEY *no_pending[] = {NULL, fx.capf.key};
  assert_int_equal(import_rule(no_pending, 2, pending, len, cands, now, 0), 1);
  free(pending);

  /* Rule 4 by the clock: not yet valid, expired, close to expiry. */
  size_t good_len = 0;
  free(good);
  good = make_cert(&inter_id, capf_name, NULL, fx.capf.key, 1, 0, KU_CA, &good_len);
  assert_int_equal(import_rule(keys, 2, good, good_len, cands, now - 7200, 0), 4);
  assert_int_equal(import_rule(keys, 2, good, good_len, cands, now + 366 * 86400LL, 0), 4);
  int64_t late = now + 350 * 86400LL;
  assert_int_equal(capstan_pki_check_capf_import(keys, 2, good, good_len, cands, late, 0, &imp), 0);
  assert_string_equal(imp.warning, "the certificate expires in fewer than 30 days");
  capstan_capf_import_cleanup(&imp);
  assert_int_equal(import_rule(keys, 2, good, good_len, cands, late, CAPSTAN_PKI_IMPORT_STRICT), 4);

  /* Rule 5: a missing issuer, a CA that may not have a CA below it, and an
   * issuer that is not a CA. */
  STACK_OF(X509) *only_inter = parsed_stack(inter, inter_len, NULL, 0);
  assert_int_equal(import_rule(keys, 2, good, good_len, only_inter, now, 0), 5);
  assert_int_equal(import_rule(keys, 2, good, good_len, NULL, now, 0), 5);
  sk_X509_pop_free(only_inter, X509_free);
  uint8_t *tight = make_cert(&root_id, NULL, "Tight Issuing", fx.ec521, 1, 0, KU_CA, &len);
  capstan_identity_t tight_id = {.cert = parse(tight, len), .key = fx.ec521};
  STACK_OF(X509) *tight_cands = parsed_stack(root, root_len, tight, len);
  uint8_t *under_tight = make_cert(&tight_id, capf_name, NULL, fx.capf.key, 1, 0, KU_CA, &len);
  assert_int_equal(import_rule(keys, 2, under_tight, len, tight_cands, now, 0), 5);
  free(under_tight);
  uint8_t *under_leaf = make_cert(&fx.tftp, capf_name, NULL, fx.capf.key, 1, 0, KU_CA, &len);
  STACK_OF(X509) *leaf_cands = stack_of(fx.tftp.cert, NULL);
  assert_int_equal(import_rule(keys, 2, under_leaf, len, leaf_cands, now, 0), 5);
  free(under_leaf);
  sk_X509_pop_free(leaf_cands, X509_free);
  /* The manufacturing-style CA with pathlen 0 cannot sign a CAPF either. */
  uint8_t *under_ca = make_cert(&fx.ca, capf_name, NULL, fx.capf.key, 1, 0, KU_CA, &len);
  STACK_OF(X509) *ca_cands = stack_of(fx.ca.cert, NULL);
  assert_int_equal(import_rule(keys, 2, under_ca, len, ca_cands, now, 0), 5);
  free(under_ca);
  sk_X509_pop_free(ca_cands, X509_free);

  /* A root with keyCertSign but no digitalSignature is still a CA on the
   * path (the trust-store rule is stricter, the path rule is RFC 5280's). */
  size_t plain_len = 0;
  uint8_t *plain = make_cert(NULL, NULL, "Plain Root", fx.ec521, 1, -1, 1u << 5, &plain_len);
  capstan_identity_t plain_id = {.cert = parse(plain, plain_len), .key = fx.ec521};
  STACK_OF(X509) *plain_cands = parsed_stack(plain, plain_len, NULL, 0);
  uint8_t *under_plain = make_cert(&plain_id, capf_name, NULL, fx.capf.key, 1, 0, KU_CA, &len);
  assert_int_equal(import_rule(keys, 2, under_plain, len, plain_cands, now, 0), -1);
  assert_int_equal(capstan_pki_check_trust_upload(plain_id.cert, CAPSTAN_PKI_UPLOAD_CA, NULL),
                   CAPSTAN_EINVAL);
  free(under_plain);
  sk_X509_pop_free(plain_cands, X509_free);
  X509_free(plain_id.cert);
  free(plain);

  /* Rules 2 and 3 also want both constraints critical (phones fail TLS). */
  make_cert_noncritical = 1;
  uint8_t *loose = make_cert(&inter_id, capf_name, NULL, fx.capf.key, 1, 0, KU_CA, &len);
  make_cert_noncritical = 0;
  assert_int_equal(import_rule(keys, 2, loose, len, cands, now, 0), 2);
  free(loose);

  /* Rule 6: SHA-1 on the CAPF itself. */
  uint8_t *sha1 =
      make_cert_md(&inter_id, capf_name, NULL, fx.capf.key, 1, 0, KU_CA, EVP_sha1(), &len);
  assert_int_equal(import_rule(keys, 2, sha1, len, cands, now, 0), 6);
  free(sha1);
  /* Rule 7: a CA named CAPF- above the CAPF. */
  size_t fake_len = 0;
  uint8_t *fake_root = make_cert(NULL, NULL, "Corp CAPF-Root", fx.ec521, 1, -1, KU_CA, &fake_len);
  capstan_identity_t fake_id = {.cert = parse(fake_root, fake_len), .key = fx.ec521};
  STACK_OF(X509) *fake_cands = parsed_stack(fake_root, fake_len, NULL, 0);
  uint8_t *under_fake = make_cert(&fake_id, capf_name, NULL, fx.capf.key, 1, 0, KU_CA, &len);
  assert_int_equal(import_rule(keys, 2, under_fake, len, fake_cands, now, 0), 7);
  free(under_fake);
  sk_X509_pop_free(fake_cands, X509_free);
  X509_free(fake_id.cert);
  free(fake_root);

  /* Rules 0-3 on the certificate itself. */
  assert_int_equal(import_rule(keys, 2, (const uint8_t *)"x", 1, cands, now, 0), 0);
  assert_int_equal(import_rule(keys, 2, root, root_len, cands, now, 0), 1);
  EVP_PKEY *only_other[] = {fx.rsa2048};
  assert_int_equal(import_rule(only_other, 1, good, good_len, cands, now, 0), 1);
  struct {
    const char *cn;
    int ca;
    long pathlen;
    unsigned ku;
    int rule;
  } bad[] = {
      {"Enterprise Voice", 1, 0, KU_CA, 2},
      {NULL, 0, -1, KU_CA, 2},
      {NULL, 1, -1, KU_CA, 2},
      {NULL, 1, 1, KU_CA, 2},
      {NULL, 1, 0, 1u << 5, 3},
      {NULL, 1, 0, 0, 3},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    uint8_t *der = make_cert(&inter_id, bad[i].cn ? NULL : capf_name, bad[i].cn, fx.capf.key,
                             bad[i].ca, bad[i].pathlen, bad[i].ku, &len);
    assert_int_equal(import_rule(keys, 2, der, len, cands, now, 0), bad[i].rule);
    free(der);
  }
  assert_int_equal(ERR_peek_error(), 0);
  sk_X509_pop_free(tight_cands, X509_free);
  X509_free(tight_id.cert);
  free(tight);
  sk_X509_pop_free(cands, X509_free);
  X509_free(inter_id.cert);
  X509_free(root_id.cert);
  free(good);
  free(inter);
  free(root);
}

static void test_trust_upload(void **state) {
  (void)state;
  const char *why = "unset";
  assert_int_equal(capstan_pki_check_trust_upload(fx.ca.cert, CAPSTAN_PKI_UPLOAD_CA, &why), 0);
  assert_null(why);
  assert_int_equal(capstan_pki_check_trust_upload(fx.capf.cert, CAPSTAN_PKI_UPLOAD_CA, &why),
                   CAPSTAN_EINVAL);
  assert_string_equal(why, "CN containing CAPF- is reserved");
  assert_int_equal(capstan_pki_check_trust_upload(fx.tftp.cert, CAPSTAN_PKI_UPLOAD_CA, &why),
                   CAPSTAN_EINVAL);
  assert_string_equal(why, "basicConstraints CA:TRUE missing");
  size_t len = 0;
  /* A CA above a CA-signed CAPF needs room below it; one that signs LSCs
   * directly must have pathlen 0. */
  uint8_t *der = make_cert(&fx.ca, NULL, "Intermediate", fx.ec384, 1, 2, KU_CA, &len);
  X509 *x = parse(der, len);
  assert_int_equal(capstan_pki_check_trust_upload(x, CAPSTAN_PKI_UPLOAD_CA, &why), 0);
  assert_int_equal(capstan_pki_check_trust_upload(x, CAPSTAN_PKI_UPLOAD_ISSUING_CA, &why),
                   CAPSTAN_EINVAL);
  assert_string_equal(why, "basicConstraints pathlen must be 0");
  assert_int_equal(capstan_pki_check_trust_upload(fx.ca.cert, CAPSTAN_PKI_UPLOAD_ISSUING_CA, &why),
                   0);
  X509_free(x);
  free(der);
  der = make_cert(&fx.ca, NULL, "Voice CA", fx.ec384, 1, 0, 1u << 5, &len);
  x = parse(der, len);
  assert_int_equal(capstan_pki_check_trust_upload(x, CAPSTAN_PKI_UPLOAD_CA, &why), CAPSTAN_EINVAL);
  assert_string_equal(why, "keyUsage must include digitalSignature and keyCertSign");
  X509_free(x);
  free(der);
  /* A CA named "Corp CAPF-Root": reserved, even in the middle. */
  der = make_cert(&fx.ca, NULL, "Corp CAPF-Root", fx.ec384, 1, 0, KU_CA, &len);
  x = parse(der, len);
  assert_int_equal(capstan_pki_check_trust_upload(x, CAPSTAN_PKI_UPLOAD_CA, &why), CAPSTAN_EINVAL);
  assert_string_equal(why, "CN containing CAPF- is reserved");
  X509_free(x);
  free(der);
  /* IPsec: a CA-signed leaf without CA:TRUE is fine; self-signed CA:TRUE too. */
  der = make_cert(&fx.ca, NULL, "ipsec-gw", fx.ec384, 0, -1, 0, &len);
  x = parse(der, len);
  assert_int_equal(capstan_pki_check_trust_upload(x, CAPSTAN_PKI_UPLOAD_IPSEC, &why), 0);
  X509_free(x);
  free(der);
  assert_int_equal(capstan_pki_check_trust_upload(fx.ca.cert, CAPSTAN_PKI_UPLOAD_IPSEC, &why), 0);
  assert_int_equal(capstan_pki_check_trust_upload(fx.ca.cert, 9, &why), CAPSTAN_EINVAL);
  assert_int_equal(ERR_peek_error(), 0);
}

static void test_pem(void **state) {
  (void)state;
  uint8_t *a = NULL, *b = NULL;
  size_t a_len = 0, b_len = 0;
  assert_int_equal(capstan_pki_cert_to_der(fx.capf.cert, &a, &a_len), 0);
  assert_int_equal(capstan_pki_cert_to_der(fx.ca.cert, &b, &b_len), 0);
  char *pa = NULL, *pb = NULL, *pr = NULL;
  assert_int_equal(capstan_pki_pem_encode("CERTIFICATE", a, a_len, &pa), 0);
  assert_int_equal(capstan_pki_pem_encode("CERTIFICATE", b, b_len, &pb), 0);
  assert_int_equal(capstan_pki_pem_encode("CERTIFICATE REQUEST", b, b_len, &pr), 0);
  /* Every line at most 64 columns. */
  for (char *line = pa; *line;) {
    char *nl = strchr(line, '\n');
    assert_non_null(nl);
    assert_true(nl - line <= 64);
    line = nl + 1;
  }
  /* A bundle: text, a certificate, a CSR, another certificate. */
  size_t total = strlen(pa) + strlen(pb) + strlen(pr) + 64;
  char *bundle = malloc(total);
  assert_non_null(bundle);
  snprintf(bundle, total, "Subject: whatever\n%s%s\n%s", pa, pr, pb);
  uint8_t **ders = NULL;
  size_t *lens = NULL, count = 0;
  assert_int_equal(capstan_pki_pem_decode((const uint8_t *)bundle, strlen(bundle), "CERTIFICATE",
                                          &ders, &lens, &count),
                   0);
  assert_int_equal(count, 2);
  assert_int_equal(lens[0], a_len);
  assert_memory_equal(ders[0], a, a_len);
  assert_int_equal(lens[1], b_len);
  assert_memory_equal(ders[1], b, b_len);
  capstan_pki_der_array_free(ders, lens, count);
  /* No such block, or a damaged one. */
  assert_int_equal(capstan_pki_pem_decode((const uint8_t *)bundle, strlen(bundle), "PRIVATE KEY",
                                          &ders, &lens, &count),
                   CAPSTAN_EINVAL);
  assert_null(ders);
  assert_int_equal(count, 0);
  pa[40] = '*';
  assert_int_equal(
      capstan_pki_pem_decode((const uint8_t *)pa, strlen(pa), "CERTIFICATE", &ders, &lens, &count),
      CAPSTAN_EINVAL);
  /* Truncated: END line missing. */
  assert_int_equal(capstan_pki_pem_decode((const uint8_t *)pb, strlen(pb) - 30, "CERTIFICATE",
                                          &ders, &lens, &count),
                   CAPSTAN_EINVAL);
  assert_int_equal(ERR_peek_error(), 0);
  free(bundle);
  free(pa);
  free(pb);
  free(pr);
  free(a);
  free(b);
}

/* --write-fuzz-seeds DIR: write the seed corpus of tests/fuzz/fuzz_pki_sudi.c
 * (first byte: low byte of the session id 0x123456xx; then the input). */
static int write_seed(const char *dir, const char *name, uint8_t first, const uint8_t *body,
                      size_t len) {
  char path[4096];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (f == NULL) return -1;
  int ok = fwrite(&first, 1, 1, f) == 1 && fwrite(body, 1, len, f) == len;
  return (fclose(f) == 0 && ok) ? 0 : -1;
}

static int write_fuzz_seeds(const char *dir) {
  if (group_setup(NULL) != 0) return 1;
  int rc = 0;
  EVP_PKEY *keys[] = {fx.ec256, fx.rsa1024};
  const char *sudi_names[] = {"sudi_ec256", "sudi_rsa1024"};
  const char *spki_names[] = {"spki_ec256", "spki_rsa1024"};
  for (size_t i = 0; i < 2 && rc == 0; i++) {
    uint8_t *cert = NULL, *sudi = NULL, *spki = NULL;
    size_t cert_len = 0, sudi_len = 0, spki_len = 0;
    uint8_t low = (uint8_t)(0x78 + i);
    if (capstan_phone_issue_test_leaf(&fx.ca, "SUDI-SEP58971ECC97C1", keys[i], &cert, &cert_len) !=
            0 ||
        capstan_phone_make_sudi(keys[i], cert, cert_len, 0x12345600u | low, &sudi, &sudi_len) !=
            0 ||
        capstan_pki_public_key_to_der(keys[i], &spki, &spki_len) != 0 ||
        write_seed(dir, sudi_names[i], low, sudi, sudi_len) != 0 ||
        write_seed(dir, spki_names[i], 0, spki, spki_len) != 0) {
      rc = 1;
    }
    free(cert);
    free(sudi);
    free(spki);
  }
  group_teardown(NULL);
  return rc;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--write-fuzz-seeds") == 0) return write_fuzz_seeds(argv[2]);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_capf_content),
      cmocka_unit_test(test_capf_two_differ),
      cmocka_unit_test(test_subject_extra_refused),
      cmocka_unit_test(test_tftp_content),
      cmocka_unit_test(test_lsc_rsa2048),
      cmocka_unit_test(test_lsc_ec256),
      cmocka_unit_test(test_lsc_refused_args),
      cmocka_unit_test(test_lsc_concurrent),
      cmocka_unit_test(test_check_rsa_sizes),
      cmocka_unit_test(test_check_rsa_exponent),
      cmocka_unit_test(test_check_ec_curves),
      cmocka_unit_test(test_check_garbage),
      cmocka_unit_test(test_signed_data_rsa),
      cmocka_unit_test(test_signed_data_ec),
      cmocka_unit_test(test_signed_data_wrong_key),
      cmocka_unit_test(test_signed_data_digestinfo),
      cmocka_unit_test(test_signed_data_bad_padding),
      cmocka_unit_test(test_phone_sign_layout),
      cmocka_unit_test(test_sudi_roundtrip),
      cmocka_unit_test(test_sudi_by_hand),
      cmocka_unit_test(test_md5hash),
      cmocka_unit_test(test_dn_string),
      cmocka_unit_test(test_serial_bytes),
      cmocka_unit_test(test_chain),
      cmocka_unit_test(test_test_ca_content),
      cmocka_unit_test(test_identity_der),
      cmocka_unit_test(test_identity_chain_and_copy),
      cmocka_unit_test(test_parse_cert),
      cmocka_unit_test(test_generate_key_args),
      cmocka_unit_test(test_cert_validity),
      cmocka_unit_test(test_capf_csr),
      cmocka_unit_test(test_create_capf_spec),
      cmocka_unit_test(test_import_capf),
      cmocka_unit_test(test_trust_upload),
      cmocka_unit_test(test_pem),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
