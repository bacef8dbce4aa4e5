/* Fuzz target for the X.509 and PKCS#10 input the server parses: a
 * certificate from a phone (AUTH_RESPONSE, FETCH_CERT_RESPONSE), from a CA,
 * or imported by the operator (trust uploads, chains), and a phone's
 * certificate request. Runs, on the input:
 *   capstan_pki_parse_cert and what the server reads from a parsed
 *   certificate (md5hash, the R13 upload rules for each kind, self-signed,
 *   DN strings, serial, validity, public key), capstan_pki_verify_chain
 *   against a fixed trust set (one root) with the optional second part as
 *   an untrusted intermediate, capstan_ca_check_certificate (a CA's answer
 *   for the phone's key and name), capstan_pki_check_public_key,
 *   capstan_pki_verify_sudi, and the worker jobs of handlers/capf/jobs.c as
 *   the session runs them: check_csr (PKCS#10 parsed, its signature, key
 *   and name checked) and verify (authentication by existing certificate:
 *   both signatures, the chain, the name, SUDI).
 * Input: one flag byte, then the data; with flag 0x80 the data is two parts
 * (u16 big-endian length, first part, rest); with 0x01 the second part is
 * the verify job's signatures (u16 length, SIGNED_DATA, then SHA2 signature,
 * or with 0x04 u16 length, SHA2 signature, SUDI data). Seeds (made by
 * tests/fuzz/x509_seeds.py) chain to the fixed root in
 * fuzz_x509_fixtures.h. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "core/base/log.h"
#include "core/base/phone.h"
#include "core/ca/ca.h"
#include "core/pki/pki.h"
#include "handlers/capf/jobs.h"
#include "tests/fuzz/fuzz_x509_fixtures.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define DEVICE "SEP001122334455"
#define SESSION_ID 0x11223344u
#define NOW 1780000000 /* 2026-05-28: the seeds are valid then */

static STACK_OF(X509) * g_trust;
static int g_debug; /* FUZZ_DEBUG=1: what each check said */

static void init(void) {
  capstan_log_init();
  if (getenv("CAPSTAN_LOG_LEVEL") == NULL) capstan_log_set_level(CAPSTAN_LOG_ERROR);
  g_debug = getenv("FUZZ_DEBUG") != NULL;
  X509 *root = NULL;
  if (capstan_pki_parse_cert(kRootDer, sizeof(kRootDer), &root) != 0) abort();
  g_trust = sk_X509_new_null();
  if (g_trust == NULL || !sk_X509_push(g_trust, root)) abort();
}

/* Splits |p| into a u16-length-prefixed first part and the rest. */
static int split(const uint8_t *p, size_t n, capstan_capf_slice_t *a, capstan_capf_slice_t *b) {
  if (n < 2) return -1;
  size_t len = (size_t)p[0] << 8 | p[1];
  if (len > n - 2) return -1;
  a->data = p + 2;
  a->len = len;
  b->data = p + 2 + len;
  b->len = n - 2 - len;
  return 0;
}

static void certificate(capstan_capf_slice_t a, capstan_capf_slice_t b) {
  char md5[33];
  capstan_pki_md5hash(a.data, a.len, md5);
  if (strlen(md5) != 32) abort();
  X509 *cert = NULL, *inter = NULL;
  if (capstan_pki_parse_cert(a.data, a.len, &cert) != 0) return;
  const char *why = NULL;
  for (int kind = 0; kind <= 2; kind++) {
    why = NULL;
    if (capstan_pki_check_trust_upload(cert, kind, &why) != 0 && why == NULL) abort();
  }
  (void)capstan_pki_is_self_signed(cert);
  char *dn = NULL;
  if (capstan_pki_dn_string(X509_get_subject_name(cert), &dn) == 0) free(dn);
  dn = NULL;
  if (capstan_pki_dn_string(X509_get_issuer_name(cert), &dn) == 0) free(dn);
  uint8_t serial[64];
  size_t serial_len;
  (void)capstan_pki_serial_bytes(cert, serial, sizeof(serial), &serial_len);
  int64_t nb, na;
  (void)capstan_pki_cert_validity(cert, &nb, &na);
  EVP_PKEY *key = X509_get_pubkey(cert);
  if (key != NULL) {
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    if (capstan_pki_public_key_to_der(key, &spki, &spki_len) == 0) free(spki);
    EVP_PKEY_free(key);
  }
  STACK_OF(X509) *chain = NULL;
  if (b.len > 0 && capstan_pki_parse_cert(b.data, b.len, &inter) == 0) {
    chain = sk_X509_new_null();
    if (chain == NULL || !sk_X509_push(chain, inter)) abort();
    inter = NULL;
  }
  (void)capstan_pki_verify_chain(cert, chain, g_trust);
  why = NULL;
  if (g_debug)
    fprintf(stderr, "verify_chain: %d\n", capstan_pki_verify_chain(cert, chain, g_trust));
  if (capstan_ca_check_certificate(a.data, a.len, chain, kPhoneSpki, sizeof(kPhoneSpki), DEVICE,
                                   g_trust, NOW, &why) != 0 &&
      why == NULL) {
    abort();
  }
  if (g_debug) fprintf(stderr, "ca_check: %s\n", why ? why : "ok");
  sk_X509_pop_free(chain, X509_free);
  X509_free(cert);
}

static void csr_job(capstan_capf_slice_t a) {
  capf_job_t *j =
      capf_job_new_check_csr(DEVICE, a, kPhoneSpki, sizeof(kPhoneSpki), CAPSTAN_KEY_RSA, 2048);
  if (j == NULL) abort();
  capf_job_run(j);
  if (j->status != 0 && j->why == NULL) abort();
  if (g_debug) fprintf(stderr, "check_csr: %d %s\n", j->status, j->why ? j->why : "");
  capf_job_free(j);
}

static void verify_job(capstan_capf_slice_t cert, capstan_capf_slice_t sigs, uint8_t flags) {
  capstan_capf_slice_t sig1, sig2, rest, sudi;
  int has_sudi = 0;
  if (split(sigs.data, sigs.len, &sig1, &rest) != 0) return;
  if (flags & 0x04) {
    if (split(rest.data, rest.len, &sig2, &sudi) != 0) return;
    has_sudi = 1;
  } else {
    sig2 = rest;
  }
  int hash = 1 + ((flags >> 3) & 3);
  capf_job_t *j = capf_job_new_verify(
      DEVICE, SESSION_ID, (flags & 0x02) ? CAPSTAN_CAPF_CERT_MIC : CAPSTAN_CAPF_CERT_LSC, cert,
      sig1, hash == 4 ? 3 : hash, sig2, has_sudi ? &sudi : NULL);
  if (j == NULL) abort();
  j->u.verify.trust = g_trust;
  capf_job_run(j);
  if (j->status != 0 && j->why == NULL) abort();
  if (g_debug) fprintf(stderr, "verify: %d %s\n", j->status, j->why ? j->why : "");
  if (j->status == 0 && (j->u.verify.spki == NULL || strlen(j->u.verify.md5) != 32)) abort();
  capf_job_free(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (g_trust == NULL) init();
  if (size < 1) return 0;
  uint8_t flags = data[0];
  capstan_capf_slice_t a = {data + 1, size - 1}, b = {NULL, 0};
  if ((flags & 0x80) && split(data + 1, size - 1, &a, &b) != 0) return 0;
  certificate(a, b);
  csr_job(a);
  static const struct {
    int alg;
    unsigned bits;
  } kKeys[] = {{CAPSTAN_KEY_RSA, 2048},
               {CAPSTAN_KEY_RSA, 1024},
               {CAPSTAN_KEY_EC, 256},
               {CAPSTAN_KEY_EC, 384}};
  for (size_t i = 0; i < sizeof(kKeys) / sizeof(kKeys[0]); i++) {
    EVP_PKEY *key = NULL;
    const char *why = NULL;
    if (capstan_pki_check_public_key(a.data, a.len, kKeys[i].alg, kKeys[i].bits, &key, &why) == 0) {
      EVP_PKEY_free(key);
    } else if (why == NULL) {
      abort();
    }
  }
  X509 *sudi = NULL;
  if (capstan_pki_verify_sudi(a.data, a.len, SESSION_ID, &sudi) == 0) X509_free(sudi);
  if (flags & 0x01) verify_job(a, b, flags);
  ERR_clear_error();
  return 0;
}
