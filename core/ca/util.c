/* What the EST and certsrv clients share: lenient base64, PKCS#7 bags,
 * lists of DER certificates, hostile text made printable, results. */
#include <openssl/base64.h>
#include <openssl/bytestring.h>
#include <openssl/mem.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/ca/internal.h"

static int b64_value(uint8_t c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

uint8_t *ca_base64_decode_lenient(const uint8_t *in, size_t len, size_t *out_len) {
  *out_len = 0;
  uint8_t *out = malloc(len / 4 * 3 + 3);
  if (!out) return NULL;
  uint32_t acc = 0;
  int bits = 0, padding = 0;
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    uint8_t c = in[i];
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
    if (c == '=') {
      padding++;
      continue;
    }
    int v = b64_value(c);
    if (v < 0 || padding) { /* garbage, or data after the padding */
      free(out);
      return NULL;
    }
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = (uint8_t)(acc >> bits);
    }
  }
  if (padding > 2 || bits >= 6) { /* a lone sextet is not a byte */
    free(out);
    return NULL;
  }
  *out_len = n;
  return out;
}

char *ca_base64_encode_lines(const uint8_t *in, size_t len, size_t *out_len) {
  size_t enc_len;
  if (!EVP_EncodedLength(&enc_len, len)) return NULL;
  uint8_t *enc = malloc(enc_len);
  if (!enc) return NULL;
  size_t n = EVP_EncodeBlock(enc, in, len);
  size_t lines = n / 64 + 1;
  char *out = malloc(n + lines * 2 + 1);
  if (!out) {
    free(enc);
    return NULL;
  }
  size_t o = 0;
  for (size_t i = 0; i < n; i += 64) {
    size_t chunk = n - i < 64 ? n - i : 64;
    memcpy(out + o, enc + i, chunk);
    o += chunk;
    out[o++] = '\r';
    out[o++] = '\n';
  }
  out[o] = 0;
  free(enc);
  *out_len = o;
  return out;
}

int ca_der_list_append(uint8_t ***ders, size_t **lens, size_t *count, const uint8_t *der,
                       size_t len) {
  uint8_t **d = realloc(*ders, (*count + 1) * sizeof *d);
  if (!d) return CAPSTAN_ENOMEM;
  *ders = d;
  size_t *l = realloc(*lens, (*count + 1) * sizeof *l);
  if (!l) return CAPSTAN_ENOMEM;
  *lens = l;
  uint8_t *copy = malloc(len ? len : 1);
  if (!copy) return CAPSTAN_ENOMEM;
  memcpy(copy, der, len);
  d[*count] = copy;
  l[*count] = len;
  (*count)++;
  return 0;
}

void ca_der_list_free(uint8_t **ders, size_t *lens, size_t count) {
  for (size_t i = 0; i < count; i++) free(ders[i]);
  free(ders);
  free(lens);
}

int ca_pkcs7_certs(const uint8_t *der, size_t len, uint8_t ***ders, size_t **lens, size_t *count) {
  STACK_OF(X509) *certs = sk_X509_new_null();
  if (!certs) return CAPSTAN_ENOMEM;
  CBS cbs;
  CBS_init(&cbs, der, len);
  int rc = 0;
  if (!PKCS7_get_certificates(certs, &cbs) || CBS_len(&cbs) != 0) {
    rc = CAPSTAN_EPROTO;
    goto out;
  }
  for (size_t i = 0; i < sk_X509_num(certs); i++) {
    uint8_t *buf = NULL;
    int n = i2d_X509(sk_X509_value(certs, i), &buf);
    if (n <= 0) {
      rc = CAPSTAN_ENOMEM;
      goto out;
    }
    rc = ca_der_list_append(ders, lens, count, buf, (size_t)n);
    OPENSSL_free(buf);
    if (rc != 0) goto out;
  }
out:
  sk_X509_pop_free(certs, X509_free);
  return rc;
}

void ca_sanitize_line(const char *text, size_t len, size_t max, char *out, size_t outlen) {
  size_t o = 0;
  if (outlen == 0) return;
  /* Leading blank lines are skipped: the first line that says something. */
  size_t i = 0;
  while (i < len && (text[i] == '\r' || text[i] == '\n' || text[i] == ' ' || text[i] == '\t')) i++;
  for (; i < len && o + 1 < outlen && o < max; i++) {
    unsigned char c = (unsigned char)text[i];
    if (c == '\r' || c == '\n' || c == 0) break;
    out[o++] = (c < 0x20 || c == 0x7f || c >= 0x80) ? '?' : (char)c;
  }
  while (o > 0 && out[o - 1] == ' ') o--;
  out[o] = 0;
}

void ca_result_set(capstan_ca_result_t *r, capstan_ca_outcome_t o, const char *fmt, ...) {
  r->outcome = o;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->reason, sizeof r->reason, fmt, ap);
  va_end(ap);
}

uint8_t *ca_cert_spki(X509 *x, size_t *len) {
  uint8_t *buf = NULL;
  int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &buf);
  if (n <= 0) return NULL;
  *len = (size_t)n;
  return buf; /* OPENSSL_malloc'd: OPENSSL_free */
}

int ca_http_expect_200(const ca_http_response_t *resp, capstan_ca_result_t *out,
                       ca_refusal_fn refuse) {
  out->http_status = resp->status;
  if (resp->status == 200) return 0;
  if (resp->status >= 400) {
    refuse(resp, out);
  } else {
    ca_result_set(out, CAPSTAN_CA_UNAVAILABLE, "CA answered an unexpected HTTP %d", resp->status);
  }
  return -1;
}
