#include "core/files/itl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bytestring.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "core/base/error.h"
#include "core/pki/pki.h"

#define SET_WHY(s)               \
  do {                           \
    if (why != NULL) *why = (s); \
  } while (0)

/* What a record says about a certificate, computed from the certificate. */
typedef struct {
  char *subject, *issuer;
  uint8_t serial[CAPSTAN_SGN_MAX_SERIAL];
  size_t serial_len;
  uint8_t *public_key; /* OPENSSL_malloc'd */
  size_t public_key_len;
  const uint8_t *signature; /* points into the certificate */
  size_t signature_len;
  uint8_t *der; /* OPENSSL_malloc'd */
  size_t der_len;
} cert_fields_t;

static void cert_fields_cleanup(cert_fields_t *f) {
  free(f->subject);
  free(f->issuer);
  OPENSSL_free(f->public_key);
  OPENSSL_free(f->der);
  memset(f, 0, sizeof(*f));
}

/* PUBLIC_KEY: RSA as DER RSAPublicKey (PKCS#1), EC as the uncompressed
 * X9.62 point. */
static int encode_public_key(X509 *cert, cert_fields_t *f, const char **why) {
  EVP_PKEY *pk = X509_get_pubkey(cert);
  CBB cbb;
  int rc = CAPSTAN_EINVAL;
  CBB_zero(&cbb);
  if (pk == NULL) {
    SET_WHY("certificate without a usable public key");
    return CAPSTAN_EINVAL;
  }
  if (!CBB_init(&cbb, 600)) {
    rc = CAPSTAN_ENOMEM;
    goto done;
  }
  if (EVP_PKEY_id(pk) == EVP_PKEY_RSA) {
    if (!RSA_marshal_public_key(&cbb, EVP_PKEY_get0_RSA(pk))) {
      SET_WHY("cannot encode the RSA public key");
      goto done;
    }
  } else if (EVP_PKEY_id(pk) == EVP_PKEY_EC) {
    const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(pk);
    if (ec == NULL || EC_KEY_get0_public_key(ec) == NULL ||
        !EC_POINT_point2cbb(&cbb, EC_KEY_get0_group(ec), EC_KEY_get0_public_key(ec),
                            POINT_CONVERSION_UNCOMPRESSED, NULL)) {
      SET_WHY("cannot encode the EC public key");
      goto done;
    }
  } else {
    SET_WHY("certificate key is neither RSA nor EC");
    goto done;
  }
  if (!CBB_finish(&cbb, &f->public_key, &f->public_key_len)) {
    rc = CAPSTAN_ENOMEM;
    goto done;
  }
  rc = 0;
done:
  CBB_cleanup(&cbb);
  EVP_PKEY_free(pk);
  return rc;
}

static int cert_fields(X509 *cert, cert_fields_t *f, const char **why) {
  memset(f, 0, sizeof(*f));
  int rc = capstan_pki_dn_string(X509_get_subject_name(cert), &f->subject);
  if (rc == 0) rc = capstan_pki_dn_string(X509_get_issuer_name(cert), &f->issuer);
  if (rc != 0) {
    SET_WHY("cannot format the certificate's names");
    goto err;
  }
  if (strlen(f->subject) + 1 > CAPSTAN_SGN_MAX_NAME ||
      strlen(f->issuer) + 1 > CAPSTAN_SGN_MAX_NAME) {
    rc = CAPSTAN_EINVAL;
    SET_WHY("certificate name too long");
    goto err;
  }
  rc = capstan_pki_serial_bytes(cert, f->serial, sizeof(f->serial), &f->serial_len);
  if (rc != 0) {
    rc = CAPSTAN_EINVAL;
    SET_WHY("bad certificate serial number");
    goto err;
  }
  rc = encode_public_key(cert, f, why);
  if (rc != 0) goto err;
  const ASN1_BIT_STRING *sig = NULL;
  const X509_ALGOR *alg = NULL;
  X509_get0_signature(&sig, &alg, cert);
  if (sig == NULL || ASN1_STRING_length(sig) <= 0) {
    rc = CAPSTAN_EINVAL;
    SET_WHY("certificate without a signature");
    goto err;
  }
  f->signature = ASN1_STRING_get0_data(sig);
  f->signature_len = (size_t)ASN1_STRING_length(sig);
  int n = i2d_X509(cert, &f->der);
  if (n <= 0) {
    rc = CAPSTAN_EINVAL;
    SET_WHY("cannot encode the certificate");
    goto err;
  }
  f->der_len = (size_t)n;
  return 0;
err:
  cert_fields_cleanup(f);
  return rc;
}

static int add_tlv(CBB *cbb, uint8_t tag, const uint8_t *v, size_t n) {
  CBB child;
  return CBB_add_u8(cbb, tag) && CBB_add_u16_length_prefixed(cbb, &child) &&
         CBB_add_bytes(&child, v, n) && CBB_flush(cbb);
}

static int add_tlv_str(CBB *cbb, uint8_t tag, const char *s) {
  return add_tlv(cbb, tag, (const uint8_t *)s, strlen(s) + 1);
}

/* Appends one record to |out|. */
static int add_record(CBB *out, X509 *cert, uint16_t role, const char *dns_name, const char **why) {
  cert_fields_t f;
  CBB body;
  uint8_t *b = NULL;
  size_t b_len = 0;
  CBB_zero(&body);
  int rc = cert_fields(cert, &f, why);
  if (rc != 0) return rc;
  rc = CAPSTAN_ENOMEM;
  uint8_t role_be[2] = {(uint8_t)(role >> 8), (uint8_t)role};
  if (!CBB_init(&body, f.der_len + 1024)) goto done;
  if (dns_name != NULL && !add_tlv_str(&body, CAPSTAN_ITL_TAG_DNS_NAME, dns_name)) goto err_len;
  if (!add_tlv_str(&body, CAPSTAN_ITL_TAG_SUBJECT_NAME, f.subject) ||
      !add_tlv(&body, CAPSTAN_ITL_TAG_ROLE, role_be, 2) ||
      !add_tlv_str(&body, CAPSTAN_ITL_TAG_ISSUER_NAME, f.issuer) ||
      !add_tlv(&body, CAPSTAN_ITL_TAG_SERIAL_NUMBER, f.serial, f.serial_len) ||
      !add_tlv(&body, CAPSTAN_ITL_TAG_PUBLIC_KEY, f.public_key, f.public_key_len) ||
      !add_tlv(&body, CAPSTAN_ITL_TAG_SIGNATURE, f.signature, f.signature_len) ||
      !add_tlv(&body, CAPSTAN_ITL_TAG_CERTIFICATE, f.der, f.der_len) ||
      !CBB_finish(&body, &b, &b_len))
    goto err_len;
  /* RECORD_LENGTH counts the whole record, its own 5 bytes included. */
  if (b_len + 5 > 0xffff) goto err_len;
  uint8_t rl[2] = {(uint8_t)((b_len + 5) >> 8), (uint8_t)(b_len + 5)};
  if (!add_tlv(out, CAPSTAN_ITL_TAG_RECORD_LENGTH, rl, 2) || !CBB_add_bytes(out, b, b_len))
    goto done;
  rc = 0;
  goto done;
err_len:
  /* CBB fails on both allocation failure and a u16 length overflow; a
   * field over 65535 bytes is the only realistic cause here. */
  rc = CAPSTAN_EINVAL;
  SET_WHY("ITL record field too long");
done:
  CBB_cleanup(&body);
  OPENSSL_free(b);
  cert_fields_cleanup(&f);
  return rc;
}

int capstan_itl_device_filename(const char *mac, char *out, size_t cap) {
  if (mac == NULL || strlen(mac) != 12) return CAPSTAN_EINVAL;
  for (size_t i = 0; i < 12; i++) {
    char c = mac[i];
    if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'))) return CAPSTAN_EINVAL;
  }
  if (cap < sizeof("ITLSEP0123456789AB.tlv")) return CAPSTAN_ERANGE;
  snprintf(out, cap, "ITLSEP%s.tlv", mac);
  return 0;
}

int capstan_itl_prepare(const capstan_itl_params_t *params, capstan_sgn_prepared_t *out,
                        const char **why) {
  CBB recs;
  uint8_t *payload = NULL;
  size_t payload_len = 0;
  int rc;
  if (params == NULL || params->signer_cert == NULL ||
      (params->entries == NULL && params->n_entries > 0)) {
    SET_WHY("missing parameter");
    return CAPSTAN_EINVAL;
  }
  if (params->n_entries + 1 > CAPSTAN_ITL_MAX_RECORDS) {
    SET_WHY("too many ITL entries");
    return CAPSTAN_EINVAL;
  }
  if (params->signer_version_minor > 1) {
    SET_WHY("SIGNER_VERSION must be 1.0 or 1.1");
    return CAPSTAN_EINVAL;
  }
  if (!CBB_init(&recs, 4096)) return CAPSTAN_ENOMEM;
  rc = add_record(&recs, params->signer_cert, CAPSTAN_ITL_ROLE_SAST, NULL, why);
  for (size_t i = 0; rc == 0 && i < params->n_entries; i++) {
    const capstan_itl_entry_t *e = &params->entries[i];
    if (e->cert == NULL) {
      SET_WHY("ITL entry without a certificate");
      rc = CAPSTAN_EINVAL;
    } else {
      rc = add_record(&recs, e->cert, e->role, e->dns_name, why);
    }
  }
  if (rc == 0 && !CBB_finish(&recs, &payload, &payload_len)) rc = CAPSTAN_ENOMEM;
  CBB_cleanup(&recs);
  if (rc != 0) return rc;

  capstan_sgn_params_t p;
  memset(&p, 0, sizeof(p));
  p.version_major = 1;
  p.version_minor = 2;
  p.has_signer_version = 1;
  p.signer_version_major = 1;
  p.signer_version_minor = params->signer_version_minor;
  p.signer_cert = params->signer_cert;
  p.hash_alg = params->hash_alg;
  p.filename = params->filename;
  p.timestamp = params->timestamp;
  p.payload = payload;
  p.payload_len = payload_len;
  rc = capstan_sgn_prepare(&p, out, why);
  OPENSSL_free(payload);
  return rc;
}

int capstan_itl_build(const capstan_itl_params_t *params, EVP_PKEY *signer_key, uint8_t **out,
                      size_t *out_len, const char **why) {
  capstan_sgn_prepared_t prep;
  memset(&prep, 0, sizeof(prep));
  *out = NULL;
  *out_len = 0;
  int rc = capstan_itl_prepare(params, &prep, why);
  if (rc != 0) return rc;
  return capstan_sgn_sign_prepared(&prep, signer_key, out, out_len, why);
}

/* ---- Reader ------------------------------------------------------------- */

static int set_once(capstan_sgn_bytes_t *dst, const CBS *val) {
  if (dst->data != NULL) return 0;
  dst->data = CBS_data(val);
  dst->len = CBS_len(val);
  return 1;
}

/* NUL-terminated, non-empty, one NUL at the end; stored without it. */
static int set_string_once(capstan_sgn_bytes_t *dst, const CBS *val) {
  CBS body = *val;
  if (CBS_len(val) < 2 || CBS_len(val) > CAPSTAN_SGN_MAX_NAME) return 0;
  CBS_init(&body, CBS_data(val), CBS_len(val) - 1);
  if (CBS_data(val)[CBS_len(val) - 1] != 0 || CBS_contains_zero_byte(&body)) return 0;
  return set_once(dst, &body);
}

static int parse_record(CBS *recs, capstan_itl_record_t *r, const char **why) {
  CBS val, body;
  uint8_t tag;
  memset(r, 0, sizeof(*r));
  if (!CBS_get_u8(recs, &tag) || tag != CAPSTAN_ITL_TAG_RECORD_LENGTH ||
      !CBS_get_u16_length_prefixed(recs, &val) || !CBS_get_u16(&val, &r->record_length) ||
      CBS_len(&val) != 0 || r->record_length < 5 ||
      !CBS_get_bytes(recs, &body, r->record_length - 5u)) {
    SET_WHY("bad RECORD_LENGTH");
    return 0;
  }
  int have_role = 0;
  while (CBS_len(&body) > 0) {
    if (!CBS_get_u8(&body, &tag) || !CBS_get_u16_length_prefixed(&body, &val)) {
      SET_WHY("truncated record field");
      return 0;
    }
    int ok;
    switch (tag) {
      case CAPSTAN_ITL_TAG_DNS_NAME:
        ok = set_string_once(&r->dns_name, &val);
        break;
      case CAPSTAN_ITL_TAG_SUBJECT_NAME:
        ok = set_string_once(&r->subject_name, &val);
        break;
      case CAPSTAN_ITL_TAG_ROLE:
        ok = !have_role && CBS_get_u16(&val, &r->role) && CBS_len(&val) == 0;
        have_role = 1;
        break;
      case CAPSTAN_ITL_TAG_ISSUER_NAME:
        ok = set_string_once(&r->issuer_name, &val);
        break;
      case CAPSTAN_ITL_TAG_SERIAL_NUMBER:
        ok = CBS_len(&val) >= 1 && CBS_len(&val) <= CAPSTAN_SGN_MAX_SERIAL &&
             set_once(&r->serial, &val);
        break;
      case CAPSTAN_ITL_TAG_PUBLIC_KEY:
        ok = CBS_len(&val) > 0 && set_once(&r->public_key, &val);
        break;
      case CAPSTAN_ITL_TAG_SIGNATURE:
        ok = CBS_len(&val) > 0 && set_once(&r->signature, &val);
        break;
      case CAPSTAN_ITL_TAG_CERTIFICATE:
        ok = CBS_len(&val) > 0 && set_once(&r->certificate, &val);
        break;
      case CAPSTAN_ITL_TAG_IP_ADDRESS:
        ok = set_once(&r->ip_address, &val);
        break;
      case CAPSTAN_ITL_TAG_CERTIFICATE_HASH:
        ok = set_once(&r->certificate_hash, &val);
        break;
      case CAPSTAN_ITL_TAG_HASH_ALGORITHM:
        ok = !r->has_hash_algorithm && CBS_get_u8(&val, &r->hash_algorithm) && CBS_len(&val) == 0;
        r->has_hash_algorithm = 1;
        break;
      default:
        ok = 0;
        break;
    }
    if (!ok) {
      SET_WHY("bad, repeated or unknown record field");
      return 0;
    }
  }
  if (r->subject_name.data == NULL || !have_role || r->issuer_name.data == NULL ||
      r->serial.data == NULL || r->public_key.data == NULL || r->signature.data == NULL ||
      r->certificate.data == NULL) {
    SET_WHY("record misses a mandatory field");
    return 0;
  }
  return 1;
}

int capstan_itl_parse(const uint8_t *file, size_t len, capstan_itl_info_t *out, const char **why) {
  memset(out, 0, sizeof(*out));
  int rc = capstan_sgn_parse(file, len, &out->header, why);
  if (rc != 0) return rc;
  if (out->header.version_major != 1 || out->header.version_minor != 2 ||
      !out->header.has_signer_version || out->header.signer_version_major != 1 ||
      out->header.signer_version_minor > 1) {
    SET_WHY("not an ITL header (VERSION 1.2, SIGNER_VERSION 1.0/1.1)");
    return CAPSTAN_EINVAL;
  }
  CBS recs;
  CBS_init(&recs, out->header.payload.data, out->header.payload.len);
  while (CBS_len(&recs) > 0) {
    if (out->n_records == CAPSTAN_ITL_MAX_RECORDS) {
      SET_WHY("too many records");
      return CAPSTAN_EINVAL;
    }
    if (!parse_record(&recs, &out->records[out->n_records], why)) return CAPSTAN_EINVAL;
    out->n_records++;
  }
  if (out->n_records == 0) {
    SET_WHY("ITL without records");
    return CAPSTAN_EINVAL;
  }
  const capstan_itl_record_t *first = &out->records[0];
  if (first->role != CAPSTAN_ITL_ROLE_SAST) {
    SET_WHY("first record is not the signer (SAST)");
    return CAPSTAN_EINVAL;
  }
  if (first->serial.len != out->header.serial.len ||
      memcmp(first->serial.data, out->header.serial.data, first->serial.len) != 0) {
    SET_WHY("SAST record serial differs from the header's SERIAL_NUMBER");
    return CAPSTAN_EINVAL;
  }
  return 0;
}

static int same(const capstan_sgn_bytes_t *b, const void *data, size_t len) {
  return b->len == len && memcmp(b->data, data, len) == 0;
}

int capstan_itl_check_record(const capstan_itl_record_t *rec, const char **why) {
  const uint8_t *p = rec->certificate.data;
  if (p == NULL || rec->certificate.len > 0xffff) {
    SET_WHY("no certificate");
    return CAPSTAN_EINVAL;
  }
  X509 *cert = d2i_X509(NULL, &p, (long)rec->certificate.len);
  if (cert == NULL || p != rec->certificate.data + rec->certificate.len) {
    X509_free(cert);
    SET_WHY("CERTIFICATE is not one DER certificate");
    return CAPSTAN_EINVAL;
  }
  cert_fields_t f;
  int rc = cert_fields(cert, &f, why);
  if (rc != 0) {
    X509_free(cert);
    return rc;
  }
  rc = CAPSTAN_EINVAL; /* f.signature points into |cert|: freed last */
  if (!same(&rec->subject_name, f.subject, strlen(f.subject)))
    SET_WHY("SUBJECT_NAME differs from the certificate");
  else if (!same(&rec->issuer_name, f.issuer, strlen(f.issuer)))
    SET_WHY("ISSUER_NAME differs from the certificate");
  else if (!same(&rec->serial, f.serial, f.serial_len))
    SET_WHY("SERIAL_NUMBER differs from the certificate");
  else if (!same(&rec->public_key, f.public_key, f.public_key_len))
    SET_WHY("PUBLIC_KEY differs from the certificate");
  else if (!same(&rec->signature, f.signature, f.signature_len))
    SET_WHY("SIGNATURE differs from the certificate");
  else
    rc = 0;
  cert_fields_cleanup(&f);
  X509_free(cert);
  return rc;
}
