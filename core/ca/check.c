/* The check every certificate from a CA passes before it is recorded
 * (external-ca.md): the phone's key, the device's name, the key usage
 * phones need, valid now, chaining to CAPF-trust. A CA that is wrong (or
 * an offline import that is) must never reach a phone: each rule fails
 * with its own sentence so the operator knows what to fix at the CA. */
#include <openssl/err.h>
#include <openssl/mem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/base/error.h"
#include "core/ca/ca.h"
#include "core/ca/internal.h"

/* The subject's only CN equals |device| (device names are
 * case-insensitive, as CUCM's are). */
static const char *check_device(X509 *x, const char *device) {
  X509_NAME *name = X509_get_subject_name(x);
  int i = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (i < 0) return "certificate names no device (no CN)";
  if (X509_NAME_get_index_by_NID(name, NID_commonName, i) >= 0) {
    return "certificate names more than one device (several CNs)";
  }
  const ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
  unsigned char *utf8 = NULL;
  int n = ASN1_STRING_to_UTF8(&utf8, cn);
  if (n < 0) return "certificate's CN does not parse";
  int same = device && (size_t)n == strlen(device) && memchr(utf8, 0, (size_t)n) == NULL &&
             strncasecmp((const char *)utf8, device, (size_t)n) == 0;
  OPENSSL_free(utf8);
  return same ? NULL : "certificate names another device";
}

static const char *check_key_usage(X509 *x) {
  if (!(X509_get_extension_flags(x) & EXFLAG_KUSAGE)) {
    /* An invalid extension also shows up here: BoringSSL marks it. */
    if (X509_get_extension_flags(x) & EXFLAG_INVALID)
      return "certificate's extensions do not parse";
    return "certificate has no keyUsage (digitalSignature and keyEncipherment are needed)";
  }
  uint32_t ku = X509_get_key_usage(x);
  if (!(ku & KU_DIGITAL_SIGNATURE)) return "certificate lacks digitalSignature";
  if (!(ku & KU_KEY_ENCIPHERMENT)) return "certificate lacks keyEncipherment";
  return NULL;
}

static const char *check_validity(X509 *x, int64_t now) {
  time_t t = (time_t)now;
  int r = X509_cmp_time(X509_get0_notBefore(x), &t);
  if (r == 0) return "certificate's notBefore does not parse";
  if (r > 0) return "certificate is not valid now (not yet valid)";
  r = X509_cmp_time(X509_get0_notAfter(x), &t);
  if (r == 0) return "certificate's notAfter does not parse";
  if (r < 0) return "certificate is not valid now (expired)";
  return NULL;
}

static const char *check_chain(X509 *x, STACK_OF(X509) * chain, STACK_OF(X509) * trust,
                               int64_t now) {
  if (!trust || sk_X509_num(trust) == 0)
    return "certificate does not chain to CAPF-trust (it is empty)";
  X509_STORE *store = X509_STORE_new();
  X509_STORE_CTX *ctx = X509_STORE_CTX_new();
  const char *why = "certificate does not chain to CAPF-trust";
  if (!store || !ctx) {
    why = "out of memory checking the certificate's chain";
    goto out;
  }
  for (size_t i = 0; i < sk_X509_num(trust); i++) {
    X509_STORE_add_cert(store, sk_X509_value(trust, i));
  }
  if (!X509_STORE_CTX_init(ctx, store, x, chain)) {
    why = "out of memory checking the certificate's chain";
    goto out;
  }
  /* An intermediate placed in CAPF-trust is an anchor of its own. */
  X509_STORE_CTX_set_flags(ctx, X509_V_FLAG_PARTIAL_CHAIN);
  X509_STORE_CTX_set_time(ctx, 0, (time_t)now);
  if (X509_verify_cert(ctx) == 1) why = NULL;
out:
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  return why;
}

int capstan_ca_check_certificate(const uint8_t *der, size_t len, STACK_OF(X509) * chain,
                                 const uint8_t *phone_spki, size_t spki_len, const char *device,
                                 STACK_OF(X509) * trust, int64_t now, const char **why) {
  const uint8_t *p = der;
  X509 *x = der ? d2i_X509(NULL, &p, (long)len) : NULL;
  if (!x || p != der + len) {
    X509_free(x);
    ERR_clear_error();
    *why = "certificate does not parse";
    return CAPSTAN_EACCES;
  }
  const char *fail = NULL;
  size_t l = 0;
  uint8_t *spki = ca_cert_spki(x, &l);
  if (!spki || !phone_spki || l != spki_len || memcmp(spki, phone_spki, l) != 0) {
    fail = "certificate is for another key";
  }
  OPENSSL_free(spki);
  if (!fail) fail = check_device(x, device);
  if (!fail) fail = check_key_usage(x);
  if (!fail) fail = check_validity(x, now);
  if (!fail) fail = check_chain(x, chain, trust, now);
  X509_free(x);
  ERR_clear_error(); /* a failed check leaves BoringSSL errors behind */
  if (fail) {
    *why = fail;
    return CAPSTAN_EACCES;
  }
  *why = NULL;
  return 0;
}
