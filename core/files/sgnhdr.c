/* Signed header writer and reader; layout and reading of the containers in
 * sgnhdr.h. */
#include "core/files/sgnhdr.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bytestring.h>
#include <openssl/digest.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/x509.h>

#include "core/base/error.h"
#include "core/pki/pki.h"

#define SET_WHY(s)               \
  do {                           \
    if (why != NULL) *why = (s); \
  } while (0)

int capstan_sgn_modulus_code(unsigned bits) {
  switch (bits) {
    case 512:
      return 0;
    case 1024:
      return 1;
    case 2048:
      return 2;
    case 4096:
      return 3;
    default:
      return -1;
  }
}

const EVP_MD *capstan_sgn_hash_md(int alg) {
  switch (alg) {
    case CAPSTAN_SGN_HASH_SHA1:
      return EVP_sha1();
    case CAPSTAN_SGN_HASH_SHA512:
      return EVP_sha512();
    default:
      return NULL;
  }
}

/* tag | u16 length | value */
static int add_tlv(CBB *cbb, uint8_t tag, const uint8_t *v, size_t n) {
  CBB child;
  return CBB_add_u8(cbb, tag) && CBB_add_u16_length_prefixed(cbb, &child) &&
         CBB_add_bytes(&child, v, n) && CBB_flush(cbb);
}

static int add_tlv_u8(CBB *cbb, uint8_t tag, uint8_t v) {
  return add_tlv(cbb, tag, &v, 1);
}

/* A NUL-terminated string field. */
static int add_tlv_str(CBB *cbb, uint8_t tag, const char *s) {
  return add_tlv(cbb, tag, (const uint8_t *)s, strlen(s) + 1);
}

void capstan_sgn_prepared_cleanup(capstan_sgn_prepared_t *prep) {
  if (prep == NULL) return;
  free(prep->tbs);
  memset(prep, 0, sizeof(*prep));
}

int capstan_sgn_prepare(const capstan_sgn_params_t *p, capstan_sgn_prepared_t *out,
                        const char **why) {
  int rc = CAPSTAN_EINVAL;
  EVP_PKEY *pub = NULL;
  char *subject = NULL, *issuer = NULL;
  uint8_t *a = NULL, *b = NULL;
  size_t a_len = 0, b_len = 0;
  CBB ca, cb;
  CBB_zero(&ca);
  CBB_zero(&cb);
  capstan_sgn_prepared_cleanup(out);

  if (p == NULL || p->signer_cert == NULL || p->filename == NULL ||
      (p->payload == NULL && p->payload_len > 0) || (p->extra_fields == NULL && p->extra_len > 0)) {
    SET_WHY("missing parameter");
    return CAPSTAN_EINVAL;
  }
  if (p->hash_alg == CAPSTAN_SGN_HASH_SHA256) {
    SET_WHY("SHA-256 headers are rejected by verifiers: use SHA-1 or SHA-512");
    return CAPSTAN_EINVAL;
  }
  if (capstan_sgn_hash_md(p->hash_alg) == NULL) {
    SET_WHY("unknown hash algorithm");
    return CAPSTAN_EINVAL;
  }
  if (strlen(p->filename) + 1 > CAPSTAN_SGN_MAX_NAME || p->filename[0] == '\0') {
    SET_WHY("bad filename length");
    return CAPSTAN_EINVAL;
  }
  if (p->payload_len > CAPSTAN_SGN_MAX_FILE) {
    SET_WHY("payload too large");
    return CAPSTAN_EINVAL;
  }
  pub = X509_get_pubkey(p->signer_cert);
  if (pub == NULL || EVP_PKEY_id(pub) != EVP_PKEY_RSA) {
    SET_WHY("signer key is not RSA");
    goto err;
  }
  int code = capstan_sgn_modulus_code((unsigned)EVP_PKEY_bits(pub));
  if (code < 0) {
    SET_WHY("signer key size is not 512, 1024, 2048 or 4096 bits");
    goto err;
  }
  size_t sig_len = EVP_PKEY_size(pub);

  rc = capstan_pki_dn_string(X509_get_subject_name(p->signer_cert), &subject);
  if (rc == 0) rc = capstan_pki_dn_string(X509_get_issuer_name(p->signer_cert), &issuer);
  if (rc != 0) {
    SET_WHY("cannot format the signer's names");
    goto err;
  }
  if (strlen(subject) + 1 > CAPSTAN_SGN_MAX_NAME || strlen(issuer) + 1 > CAPSTAN_SGN_MAX_NAME) {
    rc = CAPSTAN_EINVAL;
    SET_WHY("signer name too long");
    goto err;
  }
  uint8_t serial[CAPSTAN_SGN_MAX_SERIAL];
  size_t serial_len;
  rc = capstan_pki_serial_bytes(p->signer_cert, serial, sizeof(serial), &serial_len);
  if (rc != 0) {
    rc = CAPSTAN_EINVAL;
    SET_WHY("bad signer serial number");
    goto err;
  }

  /* Part A: everything before SIGNATURE. HEADER_LENGTH's value sits at
   * offset 8 (VERSION is 5 bytes, then tag and length) and is patched. */
  rc = CAPSTAN_ENOMEM;
  uint8_t ver[2] = {p->version_major, p->version_minor};
  uint8_t zero16[2] = {0, 0};
  CBB info, sinfo, ainfo;
  if (!CBB_init(&ca, 256) || !add_tlv(&ca, CAPSTAN_SGN_TAG_VERSION, ver, 2) ||
      !add_tlv(&ca, CAPSTAN_SGN_TAG_HEADER_LENGTH, zero16, 2))
    goto err;
  if (p->has_signer_version) {
    uint8_t sv[2] = {p->signer_version_major, p->signer_version_minor};
    if (!add_tlv(&ca, CAPSTAN_SGN_TAG_SIGNER_VERSION, sv, 2)) goto err;
  }
  /* Containers: the CBB length prefix is exactly the byte count of the
   * fields held, which is how the spec defines the container lengths. */
  if (!CBB_add_u8(&ca, CAPSTAN_SGN_TAG_SIGNER_INFO) || !CBB_add_u16_length_prefixed(&ca, &info) ||
      !add_tlv_str(&info, CAPSTAN_SGN_TAG_SIGNER_NAME, subject) ||
      !add_tlv_str(&info, CAPSTAN_SGN_TAG_ISSUER_NAME, issuer) ||
      !add_tlv(&info, CAPSTAN_SGN_TAG_SERIAL_NUMBER, serial, serial_len) || !CBB_flush(&ca))
    goto err;
  if (!CBB_add_u8(&ca, CAPSTAN_SGN_TAG_SIGNATURE_INFO) ||
      !CBB_add_u16_length_prefixed(&ca, &sinfo) ||
      !add_tlv_u8(&sinfo, CAPSTAN_SGN_TAG_HASH_ALGORITHM, (uint8_t)p->hash_alg) ||
      !CBB_add_u8(&sinfo, CAPSTAN_SGN_TAG_SIGNATURE_ALGORITHM_INFO) ||
      !CBB_add_u16_length_prefixed(&sinfo, &ainfo) ||
      !add_tlv_u8(&ainfo, CAPSTAN_SGN_TAG_SIGNATURE_ALGORITHM, 0) ||
      !add_tlv_u8(&ainfo, CAPSTAN_SGN_TAG_SIGNATURE_MODULUS, (uint8_t)code) || !CBB_flush(&ca))
    goto err;
  if (!CBB_finish(&ca, &a, &a_len)) goto err;

  /* Part B: after SIGNATURE. */
  uint8_t ts[4] = {(uint8_t)(p->timestamp >> 24), (uint8_t)(p->timestamp >> 16),
                   (uint8_t)(p->timestamp >> 8), (uint8_t)p->timestamp};
  if (!CBB_init(&cb, 64 + p->extra_len) ||
      !add_tlv_str(&cb, CAPSTAN_SGN_TAG_FILENAME, p->filename) ||
      !add_tlv(&cb, CAPSTAN_SGN_TAG_TIMESTAMP, ts, 4) ||
      (p->extra_len > 0 && !CBB_add_bytes(&cb, p->extra_fields, p->extra_len)) ||
      !CBB_finish(&cb, &b, &b_len))
    goto err;

  size_t header_len = a_len + 3 + sig_len + b_len;
  size_t pad = (4 - header_len % 4) % 4;
  header_len += pad;
  if (header_len > CAPSTAN_SGN_MAX_HEADER) {
    rc = CAPSTAN_EINVAL;
    SET_WHY("header longer than 65535 bytes");
    goto err;
  }
  out->tbs_len = a_len + b_len + pad + p->payload_len;
  out->tbs = malloc(out->tbs_len);
  if (out->tbs == NULL) goto err;
  memcpy(out->tbs, a, a_len);
  out->tbs[8] = (uint8_t)(header_len >> 8);
  out->tbs[9] = (uint8_t)header_len;
  memcpy(out->tbs + a_len, b, b_len);
  memset(out->tbs + a_len + b_len, CAPSTAN_SGN_TAG_PADDING, pad);
  if (p->payload_len > 0) memcpy(out->tbs + a_len + b_len + pad, p->payload, p->payload_len);
  out->sig_offset = a_len;
  out->sig_len = sig_len;
  out->hash_alg = p->hash_alg;
  rc = 0;

err:
  if (rc != 0) {
    if (rc == CAPSTAN_ENOMEM) SET_WHY("out of memory");
    capstan_sgn_prepared_cleanup(out);
  }
  CBB_cleanup(&ca);
  CBB_cleanup(&cb);
  OPENSSL_free(a);
  OPENSSL_free(b);
  free(subject);
  free(issuer);
  EVP_PKEY_free(pub);
  return rc;
}

int capstan_sgn_compute(const capstan_sgn_prepared_t *prep, EVP_PKEY *key, uint8_t *sig,
                        size_t sig_cap) {
  if (prep == NULL || prep->tbs == NULL || key == NULL || sig_cap < prep->sig_len)
    return CAPSTAN_EINVAL;
  if (EVP_PKEY_id(key) != EVP_PKEY_RSA || (size_t)EVP_PKEY_size(key) != prep->sig_len)
    return CAPSTAN_EINVAL;
  const EVP_MD *md = capstan_sgn_hash_md(prep->hash_alg);
  if (md == NULL) return CAPSTAN_EINVAL;
  EVP_MD_CTX ctx;
  EVP_MD_CTX_init(&ctx);
  size_t n = sig_cap;
  int ok = EVP_DigestSignInit(&ctx, NULL, md, NULL, key) &&
           EVP_DigestSign(&ctx, sig, &n, prep->tbs, prep->tbs_len) && n == prep->sig_len;
  EVP_MD_CTX_cleanup(&ctx);
  return ok ? 0 : CAPSTAN_ECRYPTO;
}

int capstan_sgn_finish(const capstan_sgn_prepared_t *prep, const uint8_t *sig, size_t sig_len,
                       uint8_t **out, size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  if (prep == NULL || prep->tbs == NULL || sig == NULL || sig_len != prep->sig_len)
    return CAPSTAN_EINVAL;
  size_t total = prep->tbs_len + 3 + sig_len;
  uint8_t *buf = malloc(total);
  if (buf == NULL) return CAPSTAN_ENOMEM;
  size_t off = prep->sig_offset;
  memcpy(buf, prep->tbs, off);
  buf[off] = CAPSTAN_SGN_TAG_SIGNATURE;
  buf[off + 1] = (uint8_t)(sig_len >> 8);
  buf[off + 2] = (uint8_t)sig_len;
  memcpy(buf + off + 3, sig, sig_len);
  memcpy(buf + off + 3 + sig_len, prep->tbs + off, prep->tbs_len - off);
  *out = buf;
  *out_len = total;
  return 0;
}

int capstan_sgn_sign_prepared(capstan_sgn_prepared_t *prep, EVP_PKEY *key, uint8_t **out,
                              size_t *out_len, const char **why) {
  uint8_t sig[CAPSTAN_SGN_MAX_SIGNATURE];
  int rc = capstan_sgn_compute(prep, key, sig, sizeof(sig));
  if (rc != 0) {
    SET_WHY(rc == CAPSTAN_EINVAL ? "signing key does not match the signer certificate"
                                 : "RSA signing failed");
  } else {
    rc = capstan_sgn_finish(prep, sig, prep->sig_len, out, out_len);
    if (rc != 0) SET_WHY("out of memory");
  }
  capstan_sgn_prepared_cleanup(prep);
  return rc;
}

int capstan_sgn_sign(const capstan_sgn_params_t *params, EVP_PKEY *key, uint8_t **out,
                     size_t *out_len, const char **why) {
  capstan_sgn_prepared_t prep;
  memset(&prep, 0, sizeof(prep));
  *out = NULL;
  *out_len = 0;
  int rc = capstan_sgn_prepare(params, &prep, why);
  if (rc != 0) return rc;
  return capstan_sgn_sign_prepared(&prep, key, out, out_len, why);
}

/* ---- Reader ------------------------------------------------------------- */

/* Reads one `tag | u16 len | value` field that must carry |tag|. */
static int get_field(CBS *cbs, uint8_t tag, CBS *val) {
  uint8_t t;
  return CBS_get_u8(cbs, &t) && t == tag && CBS_get_u16_length_prefixed(cbs, val);
}

/* A field whose value must be exactly |n| bytes. */
static int get_field_n(CBS *cbs, uint8_t tag, size_t n, CBS *val) {
  return get_field(cbs, tag, val) && CBS_len(val) == n;
}

static int get_field_u8(CBS *cbs, uint8_t tag, uint8_t *v) {
  CBS val;
  return get_field_n(cbs, tag, 1, &val) && CBS_get_u8(&val, v);
}

static int get_field_u16(CBS *cbs, uint8_t tag, uint16_t *v) {
  CBS val;
  return get_field_n(cbs, tag, 2, &val) && CBS_get_u16(&val, v);
}

/* Container header for a container stepped into: returns its length. */
static int get_container(CBS *cbs, uint8_t tag, uint16_t *clen) {
  uint8_t t;
  return CBS_get_u8(cbs, &t) && t == tag && CBS_get_u16(cbs, clen) && CBS_len(cbs) >= *clen;
}

/* A NUL-terminated string: non-empty, one NUL, at the end. */
static int get_string(CBS *cbs, uint8_t tag, capstan_sgn_bytes_t *out) {
  CBS val, body;
  uint8_t nul;
  if (!get_field(cbs, tag, &val) || CBS_len(&val) < 2 || CBS_len(&val) > CAPSTAN_SGN_MAX_NAME)
    return 0;
  if (!CBS_get_bytes(&val, &body, CBS_len(&val) - 1) || !CBS_get_u8(&val, &nul) || nul != 0 ||
      CBS_contains_zero_byte(&body))
    return 0;
  out->data = CBS_data(&body);
  out->len = CBS_len(&body);
  return 1;
}

static int parse_encryption(CBS *hdr, capstan_sgn_enc_info_t *enc, const char **why) {
  CBS info, iv_info, key_info, v;
  uint8_t u8;
  if (!get_field(hdr, CAPSTAN_SGN_TAG_ENCRYPTION_INFO, &info) ||
      !get_field(&info, CAPSTAN_SGN_TAG_ENCRYPTION_IV_INFO, &iv_info) ||
      !get_field(&info, CAPSTAN_SGN_TAG_ENCRYPTION_KEY_INFO, &key_info) || CBS_len(&info) != 0) {
    SET_WHY("bad ENCRYPTION_INFO");
    return 0;
  }
  if (!get_field_u8(&iv_info, CAPSTAN_SGN_TAG_ENCRYPTION_IV_ZERO, &u8) || u8 != 0 ||
      !get_field_n(&iv_info, CAPSTAN_SGN_TAG_ENCRYPTION_IV, 16, &v) ||
      !get_field_u16(&iv_info, CAPSTAN_SGN_TAG_ENCRYPTION_PADDING, &enc->padding) ||
      CBS_len(&iv_info) != 0 || enc->padding < 1 || enc->padding > 16) {
    SET_WHY("bad ENCRYPTION_IV_INFO");
    return 0;
  }
  enc->iv.data = CBS_data(&v);
  enc->iv.len = CBS_len(&v);
  if (!get_field_u8(&key_info, CAPSTAN_SGN_TAG_ENCRYPTION_KEY_ZERO, &u8) || u8 != 0 ||
      !get_field_u16(&key_info, CAPSTAN_SGN_TAG_ENCRYPTION_KEY_SIZE, &enc->key_size_bits) ||
      !get_field_u8(&key_info, CAPSTAN_SGN_TAG_ENCRYPTION_KEY_ALGORITHM, &enc->key_algorithm) ||
      enc->key_algorithm != 1 || !get_field(&key_info, CAPSTAN_SGN_TAG_ENCRYPTION_KEY, &v) ||
      CBS_len(&key_info) != 0 || CBS_len(&v) == 0 || CBS_len(&v) > CAPSTAN_SGN_MAX_SIGNATURE ||
      (size_t)enc->key_size_bits != CBS_len(&v) * 8) {
    SET_WHY("bad ENCRYPTION_KEY_INFO");
    return 0;
  }
  enc->wrapped_key.data = CBS_data(&v);
  enc->wrapped_key.len = CBS_len(&v);
  if (!get_field_u8(hdr, CAPSTAN_SGN_TAG_ENCRYPTION_HASH_ALGORITHM, &enc->hash_alg) ||
      !get_field(hdr, CAPSTAN_SGN_TAG_ENCRYPTION_HASH, &v) ||
      !((enc->hash_alg == CAPSTAN_SGN_HASH_SHA1 && CBS_len(&v) == 20) ||
        (enc->hash_alg == CAPSTAN_SGN_HASH_SHA512 && CBS_len(&v) == 64))) {
    SET_WHY("bad ENCRYPTION_HASH");
    return 0;
  }
  enc->hash.data = CBS_data(&v);
  enc->hash.len = CBS_len(&v);
  return 1;
}

int capstan_sgn_parse(const uint8_t *file, size_t len, capstan_sgn_info_t *out, const char **why) {
  memset(out, 0, sizeof(*out));
  CBS cbs, hdr, v;
  uint16_t clen;
  if (file == NULL || len > CAPSTAN_SGN_MAX_FILE + CAPSTAN_SGN_MAX_HEADER) {
    SET_WHY("file too large");
    return CAPSTAN_EINVAL;
  }
  CBS_init(&cbs, file, len);
  if (!get_field_n(&cbs, CAPSTAN_SGN_TAG_VERSION, 2, &v) || !CBS_get_u8(&v, &out->version_major) ||
      !CBS_get_u8(&v, &out->version_minor)) {
    SET_WHY("no VERSION");
    return CAPSTAN_EINVAL;
  }
  int v10 = out->version_major == 1 && out->version_minor == 0;
  int v12 = out->version_major == 1 && out->version_minor == 2;
  int v20 = out->version_major == 2 && out->version_minor == 0;
  if (!v10 && !v12 && !v20) {
    SET_WHY("unsupported VERSION");
    return CAPSTAN_EINVAL;
  }
  if (!get_field_u16(&cbs, CAPSTAN_SGN_TAG_HEADER_LENGTH, &out->header_length)) {
    SET_WHY("no HEADER_LENGTH");
    return CAPSTAN_EINVAL;
  }
  /* 10 bytes of VERSION and HEADER_LENGTH are already read. */
  if (out->header_length % 4 != 0 || out->header_length < 10 || out->header_length > len ||
      !CBS_get_bytes(&cbs, &hdr, out->header_length - 10u)) {
    SET_WHY("bad HEADER_LENGTH");
    return CAPSTAN_EINVAL;
  }
  out->payload.data = CBS_data(&cbs);
  out->payload.len = CBS_len(&cbs);

  if (v12) {
    if (!get_field_n(&hdr, CAPSTAN_SGN_TAG_SIGNER_VERSION, 2, &v) ||
        !CBS_get_u8(&v, &out->signer_version_major) ||
        !CBS_get_u8(&v, &out->signer_version_minor)) {
      SET_WHY("VERSION 1.2 without SIGNER_VERSION");
      return CAPSTAN_EINVAL;
    }
    out->has_signer_version = 1;
  }

  /* SIGNER_INFO: stepped into; its fields must end where its length says. */
  if (!get_container(&hdr, CAPSTAN_SGN_TAG_SIGNER_INFO, &clen)) {
    SET_WHY("no SIGNER_INFO");
    return CAPSTAN_EINVAL;
  }
  size_t end = CBS_len(&hdr) - clen;
  if (!get_string(&hdr, CAPSTAN_SGN_TAG_SIGNER_NAME, &out->signer_name) ||
      !get_string(&hdr, CAPSTAN_SGN_TAG_ISSUER_NAME, &out->issuer_name) ||
      !get_field(&hdr, CAPSTAN_SGN_TAG_SERIAL_NUMBER, &v) || CBS_len(&v) == 0 ||
      CBS_len(&v) > CAPSTAN_SGN_MAX_SERIAL || (CBS_len(&v) > 1 && CBS_data(&v)[0] == 0) ||
      CBS_len(&hdr) != end) {
    SET_WHY("bad SIGNER_INFO");
    return CAPSTAN_EINVAL;
  }
  out->serial.data = CBS_data(&v);
  out->serial.len = CBS_len(&v);

  /* SIGNATURE_INFO (15) holding HASH_ALGORITHM and SIGNATURE_ALGORITHM_INFO
   * (8) holding SIGNATURE_ALGORITHM and SIGNATURE_MODULUS. */
  uint16_t alen;
  if (!get_container(&hdr, CAPSTAN_SGN_TAG_SIGNATURE_INFO, &clen) || clen != 15 ||
      !get_field_u8(&hdr, CAPSTAN_SGN_TAG_HASH_ALGORITHM, &out->hash_alg) ||
      !get_container(&hdr, CAPSTAN_SGN_TAG_SIGNATURE_ALGORITHM_INFO, &alen) || alen != 8 ||
      !get_field_u8(&hdr, CAPSTAN_SGN_TAG_SIGNATURE_ALGORITHM, &out->signature_algorithm) ||
      !get_field_u8(&hdr, CAPSTAN_SGN_TAG_SIGNATURE_MODULUS, &out->signature_modulus)) {
    SET_WHY("bad SIGNATURE_INFO");
    return CAPSTAN_EINVAL;
  }
  if (out->hash_alg < 1 || out->hash_alg > 3 || out->signature_algorithm != 0 ||
      out->signature_modulus > 3) {
    SET_WHY("unknown hash, signature algorithm or modulus");
    return CAPSTAN_EINVAL;
  }

  out->sig_field_offset = (size_t)(CBS_data(&hdr) - file);
  if (!get_field(&hdr, CAPSTAN_SGN_TAG_SIGNATURE, &v) ||
      CBS_len(&v) != (64u << out->signature_modulus)) {
    SET_WHY("SIGNATURE missing or not the size SIGNATURE_MODULUS says");
    return CAPSTAN_EINVAL;
  }
  out->signature.data = CBS_data(&v);
  out->signature.len = CBS_len(&v);
  out->sig_field_len = 3 + CBS_len(&v);

  if (!get_string(&hdr, CAPSTAN_SGN_TAG_FILENAME, &out->filename)) {
    SET_WHY("bad FILENAME");
    return CAPSTAN_EINVAL;
  }
  if (!get_field_n(&hdr, CAPSTAN_SGN_TAG_TIMESTAMP, 4, &v) || !CBS_get_u32(&v, &out->timestamp)) {
    SET_WHY("bad TIMESTAMP");
    return CAPSTAN_EINVAL;
  }
  if (v20) {
    if (!parse_encryption(&hdr, &out->enc, why)) return CAPSTAN_EINVAL;
    out->has_encryption = 1;
  }
  /* What is left must be 0..3 PADDING bytes. */
  uint8_t b;
  while (CBS_get_u8(&hdr, &b)) {
    if (b != CAPSTAN_SGN_TAG_PADDING || ++out->padding_count > 3) {
      SET_WHY("unexpected bytes at the end of the header");
      return CAPSTAN_EINVAL;
    }
  }
  return 0;
}

int capstan_sgn_verify(const uint8_t *file, size_t len, EVP_PKEY *signer_pub, const char **why) {
  capstan_sgn_info_t info;
  int rc = capstan_sgn_parse(file, len, &info, why);
  if (rc != 0) return rc;
  const EVP_MD *md = capstan_sgn_hash_md(info.hash_alg);
  if (md == NULL) {
    SET_WHY("hash algorithm not accepted (SHA-256 is rejected)");
    return CAPSTAN_EINVAL;
  }
  if (signer_pub == NULL || EVP_PKEY_id(signer_pub) != EVP_PKEY_RSA ||
      capstan_sgn_modulus_code((unsigned)EVP_PKEY_bits(signer_pub)) != info.signature_modulus ||
      (size_t)EVP_PKEY_size(signer_pub) != info.signature.len) {
    SET_WHY("signer key is not RSA of the size SIGNATURE_MODULUS says");
    return CAPSTAN_EINVAL;
  }
  size_t tbs_len = len - info.sig_field_len;
  uint8_t *tbs = malloc(tbs_len > 0 ? tbs_len : 1);
  if (tbs == NULL) {
    SET_WHY("out of memory");
    return CAPSTAN_ENOMEM;
  }
  memcpy(tbs, file, info.sig_field_offset);
  memcpy(tbs + info.sig_field_offset, file + info.sig_field_offset + info.sig_field_len,
         len - info.sig_field_offset - info.sig_field_len);
  EVP_MD_CTX ctx;
  EVP_MD_CTX_init(&ctx);
  int ok = EVP_DigestVerifyInit(&ctx, NULL, md, NULL, signer_pub) &&
           EVP_DigestVerify(&ctx, info.signature.data, info.signature.len, tbs, tbs_len);
  EVP_MD_CTX_cleanup(&ctx);
  free(tbs);
  if (!ok) {
    ERR_clear_error();
    SET_WHY("signature does not verify");
    return CAPSTAN_EACCES;
  }
  return 0;
}

static int same_str(const capstan_sgn_bytes_t *b, const char *s) {
  return b->len == strlen(s) && memcmp(b->data, s, b->len) == 0;
}

int capstan_sgn_verify_cert(const uint8_t *file, size_t len, X509 *signer_cert, const char **why) {
  capstan_sgn_info_t info;
  char *subject = NULL, *issuer = NULL;
  uint8_t serial[CAPSTAN_SGN_MAX_SERIAL];
  size_t serial_len = 0;
  EVP_PKEY *pub = NULL;
  int rc = capstan_sgn_parse(file, len, &info, why);
  if (rc != 0) return rc;
  if (signer_cert == NULL) {
    SET_WHY("no signer certificate");
    return CAPSTAN_EINVAL;
  }
  rc = capstan_pki_dn_string(X509_get_subject_name(signer_cert), &subject);
  if (rc == 0) rc = capstan_pki_dn_string(X509_get_issuer_name(signer_cert), &issuer);
  if (rc == 0) rc = capstan_pki_serial_bytes(signer_cert, serial, sizeof(serial), &serial_len);
  if (rc != 0) {
    SET_WHY("cannot read the signer certificate's names or serial");
    goto done;
  }
  rc = CAPSTAN_EACCES;
  if (!same_str(&info.signer_name, subject)) {
    SET_WHY("SIGNER_NAME is not the certificate's subject");
  } else if (!same_str(&info.issuer_name, issuer)) {
    SET_WHY("ISSUER_NAME is not the certificate's issuer");
  } else if (info.serial.len != serial_len || memcmp(info.serial.data, serial, serial_len) != 0) {
    SET_WHY("SERIAL_NUMBER is not the certificate's");
  } else if ((pub = X509_get_pubkey(signer_cert)) == NULL) {
    rc = CAPSTAN_EINVAL;
    SET_WHY("signer certificate without a usable key");
  } else {
    rc = capstan_sgn_verify(file, len, pub, why);
  }
done:
  EVP_PKEY_free(pub);
  free(subject);
  free(issuer);
  return rc;
}
