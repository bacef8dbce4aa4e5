/* PKI: CA-signed CAPF import (R12), trust-store upload rules (R13),
 * certificate validity, PEM. */
#include "core/pki/pki.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/base/error.h"
#include "core/pki/internal.h"

#define KU_BIT_DIGITAL_SIGNATURE 0
#define KU_BIT_KEY_CERT_SIGN 5
/* Longest PEM label we look for ("CERTIFICATE REQUEST" and the like). */
#define MAX_PEM_LABEL 64

int capstan_pki_cert_validity(const X509 *cert, int64_t *not_before, int64_t *not_after) {
  if (cert == NULL) return CAPSTAN_EINVAL;
  ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
  if (epoch == NULL) return pki_fail(CAPSTAN_ENOMEM);
  const ASN1_TIME *t[2] = {X509_get0_notBefore(cert), X509_get0_notAfter(cert)};
  int64_t *o[2] = {not_before, not_after};
  int rc = 0;
  for (int i = 0; i < 2 && rc == 0; i++) {
    int days = 0, secs = 0;
    if (t[i] == NULL || !ASN1_TIME_diff(&days, &secs, epoch, t[i])) {
      rc = CAPSTAN_EINVAL;
    } else if (o[i] != NULL) {
      *o[i] = (int64_t)days * 86400 + secs;
    }
  }
  ASN1_TIME_free(epoch);
  return rc != 0 ? pki_fail(rc) : 0;
}

/* The CA rules shared by R12 (imported CAPF) and R13 (uploaded CAs): CA:TRUE
 * with pathlen 0, keyUsage with digitalSignature and keyCertSign. Parses the
 * extensions afresh (no reliance on a cache shared between threads). */
static const char *ca_rule_failure(const X509 *x) {
  const char *why = NULL;
  int crit = 0;
  BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(x, NID_basic_constraints, &crit, NULL);
  ASN1_BIT_STRING *ku = NULL;
  if (bc == NULL || !bc->ca) {
    why = "basicConstraints CA:TRUE missing";
  } else if (bc->pathlen == NULL || ASN1_STRING_type(bc->pathlen) != V_ASN1_INTEGER ||
             ASN1_INTEGER_get(bc->pathlen) != 0) {
    why = "basicConstraints pathlen must be 0";
  } else {
    ku = X509_get_ext_d2i(x, NID_key_usage, &crit, NULL);
    if (ku == NULL || !ASN1_BIT_STRING_get_bit(ku, KU_BIT_DIGITAL_SIGNATURE) ||
        !ASN1_BIT_STRING_get_bit(ku, KU_BIT_KEY_CERT_SIGN)) {
      why = "keyUsage must include digitalSignature and keyCertSign";
    }
  }
  BASIC_CONSTRAINTS_free(bc);
  ASN1_BIT_STRING_free(ku);
  ERR_clear_error();
  return why;
}

/* Whether a commonName of |x| starts with (|prefix_only|) or contains
 * "CAPF-". Values that do not convert to UTF-8 count as not matching. */
static int cn_has_capf(const X509 *x, int prefix_only) {
  const X509_NAME *name = X509_get_subject_name(x);
  int found = 0;
  for (int i = -1; (i = X509_NAME_get_index_by_NID(name, NID_commonName, i)) >= 0;) {
    uint8_t *utf8 = NULL;
    int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)));
    if (n < 0) {
      ERR_clear_error();
      continue;
    }
    if (prefix_only) {
      found |= n >= 5 && memcmp(utf8, "CAPF-", 5) == 0;
    } else {
      for (int j = 0; j + 5 <= n; j++) found |= memcmp(utf8 + j, "CAPF-", 5) == 0;
    }
    OPENSSL_free(utf8);
  }
  return found;
}

int capstan_pki_check_trust_upload(const X509 *cert, int kind, const char **why) {
  const char *reason = NULL;
  if (why != NULL) *why = NULL;
  if (cert == NULL) {
    reason = "no certificate";
  } else if (kind == CAPSTAN_PKI_UPLOAD_CA) {
    reason = ca_rule_failure(cert);
    if (reason == NULL && cn_has_capf(cert, 0)) reason = "CN containing CAPF- is reserved";
  } else if (kind == CAPSTAN_PKI_UPLOAD_IPSEC) {
    if (X509_NAME_cmp(X509_get_issuer_name(cert), X509_get_subject_name(cert)) != 0) {
      BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(cert, NID_basic_constraints, NULL, NULL);
      if (bc != NULL && bc->ca) reason = "IPsec certificate signed by a CA must not be CA:TRUE";
      BASIC_CONSTRAINTS_free(bc);
    }
  } else {
    reason = "unknown upload kind";
  }
  if (reason == NULL) return 0;
  if (why != NULL) *why = reason;
  return pki_fail(CAPSTAN_EINVAL);
}

int capstan_pki_import_capf_cert(const capstan_identity_t *capf, const uint8_t *cert_der,
                                 size_t cert_len, const uint8_t *const *chain_ders,
                                 const size_t *chain_lens, size_t chain_count,
                                 capstan_identity_t *out, const char **why) {
  const char *reason = NULL;
  int rc = CAPSTAN_EINVAL;
  capstan_identity_t id = {0};
  EVP_PKEY *pub = NULL;
  if (why != NULL) *why = NULL;
  if (out == NULL) return CAPSTAN_EINVAL;
  memset(out, 0, sizeof(*out));
  if (capf == NULL || capf->key == NULL) {
    reason = "no CAPF key";
    goto err;
  }
  if (capstan_pki_parse_cert(cert_der, cert_len, &id.cert) != 0) {
    reason = "certificate malformed";
    goto err;
  }
  pub = X509_get_pubkey(id.cert);
  if (pub == NULL || EVP_PKEY_cmp(pub, capf->key) != 1) {
    reason = "key does not match the CAPF key";
    goto err;
  }
  if (!cn_has_capf(id.cert, 1)) {
    reason = "CN must start with CAPF-";
    goto err;
  }
  if ((reason = ca_rule_failure(id.cert)) != NULL) goto err;
  if (chain_count == 0) {
    reason = "chain missing";
    goto err;
  }
  rc = capstan_identity_set_chain_der(&id, chain_ders, chain_lens, chain_count);
  if (rc != 0) {
    reason = rc == CAPSTAN_ENOMEM ? "out of memory" : "chain certificate malformed";
    goto err;
  }
  /* The chain is both the path and the anchors: what is checked here is that
   * it links up and is in date; whether the enterprise root is trusted by
   * phones is the ITL's business. */
  rc = capstan_pki_verify_chain(id.cert, id.chain, id.chain);
  if (rc != 0) {
    reason = "chain does not build";
    goto err;
  }
  EVP_PKEY_up_ref(capf->key);
  id.key = capf->key;
  EVP_PKEY_free(pub);
  *out = id;
  return 0;
err:
  EVP_PKEY_free(pub);
  capstan_identity_cleanup(&id);
  if (why != NULL) *why = reason;
  return pki_fail(rc != 0 ? rc : CAPSTAN_EINVAL);
}

int capstan_pki_pem_encode(const char *label, const uint8_t *der, size_t len, char **pem) {
  if (pem == NULL) return CAPSTAN_EINVAL;
  *pem = NULL;
  if (label == NULL || der == NULL || len == 0 || len > CAPSTAN_PKI_MAX_PEM_TEXT) {
    return CAPSTAN_EINVAL;
  }
  BIO *bio = BIO_new(BIO_s_mem());
  if (bio == NULL) return pki_fail(CAPSTAN_ENOMEM);
  int rc = CAPSTAN_ENOMEM;
  const uint8_t *data = NULL;
  size_t n = 0;
  if (PEM_write_bio(bio, label, "", der, (long)len) <= 0 || !BIO_mem_contents(bio, &data, &n)) {
    goto done;
  }
  char *s = malloc(n + 1);
  if (s == NULL) goto done;
  memcpy(s, data, n);
  s[n] = '\0';
  *pem = s;
  rc = 0;
done:
  BIO_free(bio);
  return rc != 0 ? pki_fail(rc) : 0;
}

int capstan_pki_pem_decode(const uint8_t *text, size_t len, const char *label, uint8_t ***ders,
                           size_t **lens, size_t *count) {
  if (ders == NULL || lens == NULL || count == NULL) return CAPSTAN_EINVAL;
  *ders = NULL;
  *lens = NULL;
  *count = 0;
  if (text == NULL || label == NULL || len == 0 || len > CAPSTAN_PKI_MAX_PEM_TEXT ||
      strlen(label) > MAX_PEM_LABEL) {
    return CAPSTAN_EINVAL;
  }
  uint8_t **d = calloc(CAPSTAN_PKI_MAX_PEM_BLOCKS, sizeof(*d));
  size_t *l = calloc(CAPSTAN_PKI_MAX_PEM_BLOCKS, sizeof(*l));
  BIO *bio = BIO_new_mem_buf(text, (int)len);
  size_t n = 0;
  int rc = CAPSTAN_ENOMEM;
  if (d == NULL || l == NULL || bio == NULL) goto err;
  for (;;) {
    char *name = NULL, *header = NULL;
    uint8_t *data = NULL;
    long data_len = 0;
    if (!PEM_read_bio(bio, &name, &header, &data, &data_len)) {
      /* End of input is the normal way out; anything else is malformed. */
      uint32_t e = ERR_peek_last_error();
      rc = (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)
               ? 0
               : CAPSTAN_EINVAL;
      ERR_clear_error();
      break;
    }
    int want = strcmp(name, label) == 0;
    OPENSSL_free(name);
    OPENSSL_free(header);
    if (want) {
      if (n == CAPSTAN_PKI_MAX_PEM_BLOCKS || data_len <= 0) {
        OPENSSL_free(data);
        rc = CAPSTAN_EINVAL;
        break;
      }
      d[n] = malloc((size_t)data_len);
      if (d[n] == NULL) {
        OPENSSL_free(data);
        rc = CAPSTAN_ENOMEM;
        break;
      }
      memcpy(d[n], data, (size_t)data_len);
      l[n] = (size_t)data_len;
      n++;
    }
    OPENSSL_free(data);
  }
  if (rc != 0) goto err;
  if (n == 0) {
    rc = CAPSTAN_EINVAL;
    goto err;
  }
  BIO_free(bio);
  *ders = d;
  *lens = l;
  *count = n;
  return 0;
err:
  BIO_free(bio);
  capstan_pki_der_array_free(d, l, n);
  return pki_fail(rc);
}
