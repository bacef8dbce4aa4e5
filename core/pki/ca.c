/* PKI: CA-signed CAPF import checks (R12), trust-store upload rules (R13),
 * certificate validity, PEM. */
#include "core/pki/pki.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/obj.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
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

/* The CA rules: CA:TRUE (with pathlen 0 when |need_pathlen0|), keyUsage
 * with digitalSignature and keyCertSign. Parses the extensions afresh (no
 * reliance on a cache shared between threads). */
static const char *ca_rule_failure(const X509 *x, int need_pathlen0) {
  const char *why = NULL;
  int crit = 0;
  BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(x, NID_basic_constraints, &crit, NULL);
  ASN1_BIT_STRING *ku = NULL;
  if (bc == NULL || !bc->ca) {
    why = "basicConstraints CA:TRUE missing";
  } else if (need_pathlen0 &&
             (bc->pathlen == NULL || ASN1_STRING_type(bc->pathlen) != V_ASN1_INTEGER ||
              ASN1_INTEGER_get(bc->pathlen) != 0)) {
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
  } else if (kind == CAPSTAN_PKI_UPLOAD_CA || kind == CAPSTAN_PKI_UPLOAD_ISSUING_CA) {
    reason = ca_rule_failure(cert, kind == CAPSTAN_PKI_UPLOAD_ISSUING_CA);
    if (reason == NULL && cn_has_capf(cert, 0)) reason = "CN containing CAPF- is reserved";
  } else if (kind == CAPSTAN_PKI_UPLOAD_IPSEC) {
    if (X509_NAME_cmp(X509_get_issuer_name(cert), X509_get_subject_name(cert)) != 0) {
      BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(cert, NID_basic_constraints, NULL, NULL);
      if (bc != NULL && bc->ca) reason = "IPsec certificate signed by a CA must not be CA:TRUE";
      BASIC_CONSTRAINTS_free(bc);
      ERR_clear_error();
    }
  } else {
    reason = "unknown upload kind";
  }
  if (reason == NULL) return 0;
  if (why != NULL) *why = reason;
  return pki_fail(CAPSTAN_EINVAL);
}

/* ---- Importing a CA-signed CAPF certificate ------------------------------ */

int capstan_pki_cert_sha256(const X509 *cert, uint8_t out[32]) {
  uint8_t *der = NULL;
  size_t len = 0;
  int rc = capstan_pki_cert_to_der(cert, &der, &len);
  if (rc != 0) return rc;
  SHA256(der, len, out);
  free(der);
  return 0;
}

/* Whether |issuer|'s key verifies |x|'s signature and names match. */
static int signed_by(X509 *x, X509 *issuer) {
  if (X509_NAME_cmp(X509_get_subject_name(issuer), X509_get_issuer_name(x)) != 0) return 0;
  EVP_PKEY *pub = X509_get_pubkey(issuer);
  int ok = pub != NULL && X509_verify(x, pub) == 1;
  EVP_PKEY_free(pub);
  ERR_clear_error();
  return ok;
}

int capstan_pki_is_self_signed(X509 *cert) {
  return cert != NULL && signed_by(cert, cert);
}

void capstan_pki_key_name(const EVP_PKEY *key, char *buf, size_t len) {
  if (buf == NULL || len == 0) return;
  snprintf(buf, len, "unknown");
  if (key == NULL) return;
  if (EVP_PKEY_id(key) == EVP_PKEY_RSA) {
    snprintf(buf, len, "rsa%d", EVP_PKEY_bits(key));
  } else if (EVP_PKEY_id(key) == EVP_PKEY_EC) {
    const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(key);
    const EC_GROUP *g = ec != NULL ? EC_KEY_get0_group(ec) : NULL;
    int nid = g != NULL ? EC_GROUP_get_curve_name(g) : NID_undef;
    if (nid == NID_X9_62_prime256v1) snprintf(buf, len, "ec256");
    if (nid == NID_secp384r1) snprintf(buf, len, "ec384");
    if (nid == NID_secp521r1) snprintf(buf, len, "ec521");
  }
}

/* Rule 6: SHA-256 or stronger. RSA-PSS and others whose digest is not in
 * the signature OID are refused rather than guessed at. */
static int strong_signature(const X509 *x) {
  int md = NID_undef, pk = NID_undef;
  if (!OBJ_find_sigid_algs(X509_get_signature_nid(x), &md, &pk)) return 0;
  return md == NID_sha256 || md == NID_sha384 || md == NID_sha512;
}

static int valid_at(const X509 *x, int64_t now) {
  int64_t nb = 0, na = 0;
  return capstan_pki_cert_validity(x, &nb, &na) == 0 && nb <= now && now < na;
}

/* The certificate of |candidates| that issued |x|: subject == x's issuer
 * and its key verifies x's signature. NULL when none does. */
static X509 *find_issuer(X509 *x, STACK_OF(X509) * candidates) {
  for (size_t i = 0; candidates != NULL && i < sk_X509_num(candidates); i++) {
    X509 *c = sk_X509_value(candidates, i);
    if (signed_by(x, c)) return c;
  }
  return NULL;
}

static int ext_critical(const X509 *x, int nid) {
  int i = X509_get_ext_by_NID(x, nid, -1);
  return i >= 0 && X509_EXTENSION_get_critical(X509_get_ext(x, i));
}

/* Rule 5's "a CA": CA:TRUE, and keyCertSign when keyUsage is present (a CA
 * without keyUsage verifies under RFC 5280; digitalSignature is a trust-store
 * rule, not a path rule). */
static int chain_ca(const X509 *x) {
  BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(x, NID_basic_constraints, NULL, NULL);
  int crit = 0;
  ASN1_BIT_STRING *ku = X509_get_ext_d2i(x, NID_key_usage, &crit, NULL);
  int ok = bc != NULL && bc->ca &&
           (ku != NULL ? ASN1_BIT_STRING_get_bit(ku, KU_BIT_KEY_CERT_SIGN)
                       : X509_get_ext_by_NID(x, NID_key_usage, -1) < 0);
  BASIC_CONSTRAINTS_free(bc);
  ASN1_BIT_STRING_free(ku);
  ERR_clear_error();
  return ok;
}

/* RFC 5280 6.1.4 (l)-(m): a CA with pathlen N allows N CA certificates
 * below it before the end entity. |below| counts the CAs under |x|, the
 * CAPF included. */
static int pathlen_allows(const X509 *x, size_t below) {
  BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(x, NID_basic_constraints, NULL, NULL);
  int ok = bc != NULL && bc->ca;
  if (ok && bc->pathlen != NULL) {
    long n = ASN1_INTEGER_get(bc->pathlen);
    ok = ASN1_STRING_type(bc->pathlen) == V_ASN1_INTEGER && n >= 0 && (size_t)n >= below;
  }
  BASIC_CONSTRAINTS_free(bc);
  ERR_clear_error();
  return ok;
}

static int refuse(capstan_capf_import_t *out, int rule, const char *why) {
  capstan_identity_cleanup(&out->id);
  out->rule = rule;
  out->why = why;
  out->warning = NULL;
  return pki_fail(CAPSTAN_EINVAL);
}

/* Rule 5 and 7: the path above |cert| through |candidates| to a
 * self-signed root, into out->id.chain (nearest first). */
static int build_path(X509 *cert, STACK_OF(X509) * candidates, int64_t now,
                      capstan_capf_import_t *out) {
  out->id.chain = sk_X509_new_null();
  if (out->id.chain == NULL) return pki_fail(CAPSTAN_ENOMEM);
  X509 *x = cert;
  while (!capstan_pki_is_self_signed(x)) {
    if (sk_X509_num(out->id.chain) == CAPSTAN_PKI_MAX_CHAIN) {
      return refuse(out, 5, "the chain does not reach a self-signed root within 8 certificates");
    }
    X509 *up = find_issuer(x, candidates);
    if (up == NULL) {
      return refuse(out, 5,
                    "the chain does not build to a self-signed root: an issuer is in neither "
                    "--chain nor the trust store (give every CA above the CAPF, the root "
                    "included, in --chain)");
    }
    if (!X509_up_ref(up)) return pki_fail(CAPSTAN_ENOMEM);
    if (!sk_X509_push(out->id.chain, up)) {
      X509_free(up);
      return pki_fail(CAPSTAN_ENOMEM);
    }
    size_t below = sk_X509_num(out->id.chain);
    if (!chain_ca(up)) {
      return refuse(out, 5, "a certificate of the chain is not a CA (CA:TRUE with keyCertSign)");
    }
    if (!valid_at(up, now)) {
      return refuse(out, 5, "a certificate of the chain is expired or not yet valid");
    }
    if (!pathlen_allows(up, below)) {
      return refuse(out, 5,
                    "a CA of the chain has a pathlen that does not allow the CAPF below it");
    }
    x = up;
  }
  return 0;
}

int capstan_pki_check_capf_import(EVP_PKEY *const *keys, size_t nkeys, const uint8_t *cert_der,
                                  size_t cert_len, STACK_OF(X509) * candidates, int64_t now,
                                  unsigned flags, capstan_capf_import_t *out) {
  if (out == NULL) return CAPSTAN_EINVAL;
  memset(out, 0, sizeof(*out));
  X509 *cert = NULL;
  if (cert_der == NULL || capstan_pki_parse_cert(cert_der, cert_len, &cert) != 0) {
    return refuse(out, 0, "not a DER or PEM X.509 certificate");
  }
  out->id.cert = cert;
  /* 1: the key. */
  EVP_PKEY *pub = X509_get_pubkey(cert);
  size_t match = nkeys;
  for (size_t i = 0; pub != NULL && keys != NULL && i < nkeys && match == nkeys; i++) {
    if (keys[i] != NULL && EVP_PKEY_cmp(pub, keys[i]) == 1) match = i;
  }
  EVP_PKEY_free(pub);
  ERR_clear_error();
  if (match == nkeys)
    return refuse(out, 1, "its public key is not the pending or current CAPF key");
  /* 2 and 3: a CAPF is a CA that may sign only end entities. */
  const char *why = ca_rule_failure(cert, 1);
  if (why != NULL) return refuse(out, strncmp(why, "keyUsage", 8) == 0 ? 3 : 2, why);
  if (!cn_has_capf(cert, 1)) return refuse(out, 2, "the subject CN must start with CAPF-");
  /* Phones fail TLS with a CAPF whose constraints are not critical
   * (capf-lifecycle.md "The CAPF certificate"): part of rules 2 and 3. */
  if (!ext_critical(cert, NID_basic_constraints)) {
    return refuse(out, 2, "basicConstraints must be critical");
  }
  if (!ext_critical(cert, NID_key_usage)) return refuse(out, 3, "keyUsage must be critical");
  /* 4: in date, with room to run. */
  int64_t nb = 0, na = 0;
  if (capstan_pki_cert_validity(cert, &nb, &na) != 0) {
    return refuse(out, 4, "its validity dates cannot be read");
  }
  if (nb > now) return refuse(out, 4, "it is not valid yet (notBefore is in the future)");
  if (na <= now) return refuse(out, 4, "it has expired");
  if (na - now < (int64_t)CAPSTAN_PKI_IMPORT_WARN_DAYS * 86400) {
    if (flags & CAPSTAN_PKI_IMPORT_STRICT) {
      return refuse(out, 4, "it expires in fewer than 30 days (--strict)");
    }
    out->warning = "the certificate expires in fewer than 30 days";
  }
  /* 5 and 7: the path. */
  int rc = build_path(cert, candidates, now, out);
  if (rc != 0) return rc;
  /* 6: every signature on the path, the root's own included. */
  int strong = strong_signature(cert);
  for (size_t i = 0; strong && i < sk_X509_num(out->id.chain); i++) {
    strong = strong_signature(sk_X509_value(out->id.chain, i));
  }
  if (!strong) {
    return refuse(out, 6, "a signature on the chain is weaker than SHA-256 (or not recognised)");
  }
  for (size_t i = 0; i < sk_X509_num(out->id.chain); i++) {
    if (cn_has_capf(sk_X509_value(out->id.chain, i), 0)) {
      return refuse(out, 7, "a CA of the chain has a CN containing CAPF- (reserved for the CAPF)");
    }
  }
  EVP_PKEY_up_ref(keys[match]);
  out->id.key = keys[match];
  out->key_index = match;
  (void)X509_get_extension_flags(cert); /* cache before the identity is shared */
  return 0;
}

void capstan_capf_import_cleanup(capstan_capf_import_t *imp) {
  if (imp == NULL) return;
  capstan_identity_cleanup(&imp->id);
  memset(imp, 0, sizeof(*imp));
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
