/* EST (RFC 7030) as external-ca.md says: the paths, the simpleenroll
 * body, and what the CA's answers mean. The answers are hostile input:
 * base64 is decoded leniently (RFC 8951) but strictly bounded, and the
 * PKCS#7 bag is parsed by BoringSSL. */
#include <openssl/mem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/ca/internal.h"

#define RETRY_DEFAULT_SECONDS 60
#define RETRY_MAX_SECONDS 86400
#define REFUSAL_TEXT_MAX 160

int ca_est_target(const ca_url_t *u, const char *label, const char *op, char *out, size_t outlen) {
  int n;
  if (label && label[0]) {
    n = snprintf(out, outlen, "%s/.well-known/est/%s/%s", u->path, label, op);
  } else {
    n = snprintf(out, outlen, "%s/.well-known/est/%s", u->path, op);
  }
  return (n < 0 || (size_t)n >= outlen) ? CAPSTAN_EINVAL : 0;
}

char *ca_est_enroll_body(const uint8_t *csr, size_t len, size_t *out_len) {
  return ca_base64_encode_lines(csr, len, out_len);
}

static int parse_http_date(const char *s, int64_t *out) {
  /* IMF-fixdate only ("Sun, 06 Nov 1994 08:49:37 GMT"), as RFC 9110 asks
   * senders to use. */
  static const char *months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  char wd[4], mon[4], zone[4];
  int day, year, hh, mm, ss;
  if (sscanf(s, "%3s, %d %3s %d %d:%d:%d %3s", wd, &day, mon, &year, &hh, &mm, &ss, zone) != 8) {
    return -1;
  }
  if (strcmp(zone, "GMT") != 0) return -1;
  int m = -1;
  for (int i = 0; i < 12; i++) {
    if (strcmp(mon, months[i]) == 0) m = i;
  }
  if (m < 0 || day < 1 || day > 31 || year < 1970 || year > 9999 || hh < 0 || hh > 23 || mm < 0 ||
      mm > 59 || ss < 0 || ss > 60) {
    return -1;
  }
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  tm.tm_year = year - 1900;
  tm.tm_mon = m;
  tm.tm_mday = day;
  tm.tm_hour = hh;
  tm.tm_min = mm;
  tm.tm_sec = ss;
  *out = (int64_t)timegm(&tm);
  return 0;
}

int64_t ca_retry_after_seconds(const char *value, int64_t now) {
  const char *p = value;
  while (*p == ' ' || *p == '\t') p++;
  int64_t delay;
  if (*p >= '0' && *p <= '9') {
    int64_t v = 0;
    while (*p >= '0' && *p <= '9') {
      if (v < RETRY_MAX_SECONDS * 10) v = v * 10 + (*p - '0'); /* saturates */
      p++;
    }
    while (*p == ' ' || *p == '\t') p++;
    if (*p != 0) return RETRY_DEFAULT_SECONDS;
    delay = v;
  } else {
    int64_t at;
    if (*p == 0 || parse_http_date(p, &at) != 0) return RETRY_DEFAULT_SECONDS;
    delay = at - now; /* a date in the past is clamped below */
  }
  if (delay < 1) delay = 1;
  if (delay > RETRY_MAX_SECONDS) delay = RETRY_MAX_SECONDS;
  return delay;
}

/* The answer's body as DER: base64 (the norm) or, leniently, DER. */
static uint8_t *body_der(const ca_http_response_t *resp, size_t *len) {
  if (resp->body_len > 0 && resp->body[0] == 0x30) { /* a DER SEQUENCE, not base64 */
    uint8_t *copy = malloc(resp->body_len);
    if (!copy) return NULL;
    memcpy(copy, resp->body, resp->body_len);
    *len = resp->body_len;
    return copy;
  }
  return ca_base64_decode_lenient(resp->body, resp->body_len, len);
}

static void refused(const ca_http_response_t *resp, capstan_ca_result_t *out) {
  char line[REFUSAL_TEXT_MAX + 1];
  ca_sanitize_line((const char *)resp->body, resp->body_len, REFUSAL_TEXT_MAX, line, sizeof line);
  if (resp->status == 401) {
    ca_result_set(out, CAPSTAN_CA_REFUSED, "CA refused: 401 credentials refused%s%s",
                  line[0] ? ": " : "", line);
  } else {
    ca_result_set(out, CAPSTAN_CA_REFUSED, "CA refused: %d%s%s", resp->status, line[0] ? " " : "",
                  line);
  }
}

/* The answer's certs-only bag, every certificate into out->chain_der. */
static int bag_from_answer(const ca_http_response_t *resp, capstan_ca_result_t *out) {
  size_t der_len = 0;
  uint8_t *der = body_der(resp, &der_len);
  if (!der) {
    ca_result_set(out, CAPSTAN_CA_UNAVAILABLE, "CA answered %d with a body that is not base64",
                  resp->status);
    return -1;
  }
  int rc = ca_pkcs7_certs(der, der_len, &out->chain_der, &out->chain_lens, &out->chain_count);
  free(der);
  if (rc == CAPSTAN_ENOMEM) {
    ca_result_set(out, CAPSTAN_CA_UNAVAILABLE, "out of memory reading the CA's answer");
    return -1;
  }
  if (rc != 0) {
    ca_result_set(out, CAPSTAN_CA_UNAVAILABLE,
                  "CA answered %d with something that is not a PKCS#7 certs-only bag",
                  resp->status);
    return -1;
  }
  if (out->chain_count == 0) {
    ca_result_set(out, CAPSTAN_CA_UNAVAILABLE, "CA answered %d with an empty PKCS#7 bag",
                  resp->status);
    return -1;
  }
  return 0;
}

static int spki_matches(const uint8_t *der, size_t len, const uint8_t *spki, size_t spki_len) {
  const uint8_t *p = der;
  X509 *x = d2i_X509(NULL, &p, (long)len);
  if (!x) return 0;
  size_t l = 0;
  uint8_t *s = ca_cert_spki(x, &l);
  int match = s && l == spki_len && memcmp(s, spki, l) == 0;
  OPENSSL_free(s);
  X509_free(x);
  return match;
}

void ca_est_enroll_answer(const ca_http_response_t *resp, const uint8_t *spki, size_t spki_len,
                          int64_t now, capstan_ca_result_t *out) {
  out->http_status = resp->status;
  if (resp->status == 202) {
    out->retry_at = now + ca_retry_after_seconds(resp->retry_after, now);
    ca_result_set(out, CAPSTAN_CA_PENDING, "CA will decide later (asked to retry in %lld s)",
                  (long long)(out->retry_at - now));
    return;
  }
  if (ca_http_expect_200(resp, out, refused) < 0) return;
  if (bag_from_answer(resp, out) != 0) return;
  /* A certs-only bag has no order: the phone's certificate is the one
   * with the phone's key; the others are the chain. */
  for (size_t i = 0; i < out->chain_count; i++) {
    if (spki_matches(out->chain_der[i], out->chain_lens[i], spki, spki_len)) {
      out->cert_der = out->chain_der[i];
      out->cert_len = out->chain_lens[i];
      memmove(&out->chain_der[i], &out->chain_der[i + 1],
              (out->chain_count - i - 1) * sizeof out->chain_der[0]);
      memmove(&out->chain_lens[i], &out->chain_lens[i + 1],
              (out->chain_count - i - 1) * sizeof out->chain_lens[0]);
      out->chain_count--;
      ca_result_set(out, CAPSTAN_CA_ISSUED, "issued");
      return;
    }
  }
  ca_result_set(out, CAPSTAN_CA_BAD_CERT, "CA returned a certificate for another key");
}

void ca_est_cacerts_answer(const ca_http_response_t *resp, capstan_ca_result_t *out) {
  if (ca_http_expect_200(resp, out, refused) < 0) return;
  if (bag_from_answer(resp, out) != 0) return;
  ca_result_set(out, CAPSTAN_CA_ISSUED, "CA chain: %zu certificate%s", out->chain_count,
                out->chain_count == 1 ? "" : "s");
}
