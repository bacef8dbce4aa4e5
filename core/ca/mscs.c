/* Microsoft AD CS web enrollment ("certsrv") as external-ca.md says: the
 * certfnsh.asp form, and what its HTML pages mean. A page is hostile
 * input: it is searched for a few fixed markers only, every value taken
 * from it is bounded (a ReqID is digits, a message is cut and made
 * printable), and anything else is "a page capstan does not understand". */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/x509.h>

#include "core/base/error.h"
#include "core/ca/internal.h"

#define MESSAGE_MAX 200

/* ---- the request ------------------------------------------------------- */

typedef struct buf {
  char *p;
  size_t len, cap;
  int failed;
} buf_t;

static void put(buf_t *b, const char *s, size_t n) {
  if (b->failed) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->failed = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = 0;
}

static void put_str(buf_t *b, const char *s) {
  put(b, s, strlen(s));
}

/* application/x-www-form-urlencoded, as browsers write it. */
static void put_form_value(buf_t *b, const char *s, size_t n) {
  static const char hex[] = "0123456789ABCDEF";
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '*') {
      put(b, (const char *)&c, 1);
    } else if (c == ' ') {
      put(b, "+", 1);
    } else {
      char e[3] = {'%', hex[c >> 4], hex[c & 15]};
      put(b, e, 3);
    }
  }
}

static void put_field(buf_t *b, const char *name, const char *value, size_t len) {
  if (b->len) put(b, "&", 1);
  put_str(b, name);
  put(b, "=", 1);
  put_form_value(b, value, len);
}

char *ca_mscs_submit_body(const uint8_t *csr, size_t csr_len, const char *template_name,
                          size_t *out_len) {
  size_t b64_len;
  char *b64 = ca_base64_encode_lines(csr, csr_len, &b64_len);
  if (!b64) return NULL;
  buf_t pem = {0};
  put_str(&pem, "-----BEGIN CERTIFICATE REQUEST-----\r\n");
  put(&pem, b64, b64_len);
  put_str(&pem, "-----END CERTIFICATE REQUEST-----\r\n");
  free(b64);
  buf_t attrib = {0};
  put_str(&attrib, "CertificateTemplate:");
  put_str(&attrib, template_name);
  buf_t form = {0};
  if (!pem.failed && !attrib.failed) {
    put_field(&form, "Mode", "newreq", 6);
    put_field(&form, "CertRequest", pem.p, pem.len);
    put_field(&form, "CertAttrib", attrib.p, attrib.len);
    put_field(&form, "TargetStoreFlags", "0", 1);
    put_field(&form, "SaveCert", "yes", 3);
    const char *friendly = "Saved-Request Certificate";
    put_field(&form, "FriendlyType", friendly, strlen(friendly));
  }
  int failed = pem.failed || attrib.failed || form.failed;
  free(pem.p);
  free(attrib.p);
  if (failed) {
    free(form.p);
    return NULL;
  }
  *out_len = form.len;
  return form.p;
}

/* ---- the pages ---------------------------------------------------------- */

/* Case-insensitive search for |needle| in |hay| (not NUL-terminated). */
static const char *find_ci(const char *hay, size_t len, const char *needle) {
  size_t n = strlen(needle);
  if (n == 0 || n > len) return NULL;
  for (size_t i = 0; i + n <= len; i++) {
    if (strncasecmp(hay + i, needle, n) == 0) return hay + i;
  }
  return NULL;
}

int ca_mscs_reqid_valid(const char *reqid) {
  size_t n = strlen(reqid);
  if (n == 0 || n > CAPSTAN_CA_REQUEST_ID_MAX) return 0;
  for (size_t i = 0; i < n; i++) {
    if (reqid[i] < '0' || reqid[i] > '9') return 0;
  }
  return 1;
}

/* The digits at |p| (bounded by |end|) into |out|; the character after
 * them in *after. 0 when there are 1..CAPSTAN_CA_REQUEST_ID_MAX digits. */
static int take_digits(const char *p, const char *end, char *out, size_t outlen,
                       const char **after) {
  size_t n = 0;
  while (p + n < end && p[n] >= '0' && p[n] <= '9') n++;
  if (n == 0 || n > CAPSTAN_CA_REQUEST_ID_MAX || n + 1 > outlen) return -1;
  memcpy(out, p, n);
  out[n] = 0;
  *after = p + n;
  return 0;
}

/* `The disposition message is "<text>"`: the text, entities for quotes
 * and ampersands decoded, cut and made printable. 0 when found. */
static int disposition(const char *page, size_t len, char *out, size_t outlen) {
  static const char marker[] = "The disposition message is \"";
  const char *m = find_ci(page, len, marker);
  if (!m) return -1;
  const char *p = m + sizeof marker - 1, *end = page + len;
  char raw[MESSAGE_MAX * 2];
  size_t n = 0;
  while (p < end && *p != '"' && n + 1 < sizeof raw) {
    static const struct {
      const char *entity;
      char c;
    } entities[] = {{"&amp;", '&'}, {"&quot;", '"'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&#39;", '\''}};
    int decoded = 0;
    for (size_t e = 0; e < sizeof entities / sizeof entities[0]; e++) {
      size_t el = strlen(entities[e].entity);
      if ((size_t)(end - p) >= el && strncmp(p, entities[e].entity, el) == 0) {
        raw[n++] = entities[e].c;
        p += el;
        decoded = 1;
        break;
      }
    }
    if (!decoded) raw[n++] = *p++;
  }
  /* Collapse runs of blanks (the CA writes "Module  0x80094800"). */
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (raw[i] == ' ' && o > 0 && raw[o - 1] == ' ') continue;
    raw[o++] = raw[i];
  }
  ca_sanitize_line(raw, o, MESSAGE_MAX, out, outlen);
  return out[0] ? 0 : -1;
}

static void http_refused(const ca_http_response_t *resp, capstan_ca_result_t *out) {
  char line[161];
  const char *body = (const char *)resp->body;
  if (resp->status == 401) {
    ca_result_set(out, CAPSTAN_CA_REFUSED, "CA refused: 401 credentials refused");
    return;
  }
  if (find_ci(body, resp->body_len, "<html")) {
    line[0] = 0; /* an HTML error page has no useful first line */
  } else {
    ca_sanitize_line(body, resp->body_len, 160, line, sizeof line);
  }
  ca_result_set(out, CAPSTAN_CA_REFUSED, "CA refused: %d%s%s", resp->status, line[0] ? " " : "",
                line);
}

static void pending(const char *reqid, int64_t now, capstan_ca_result_t *out) {
  snprintf(out->request_id, sizeof out->request_id, "%s", reqid);
  out->retry_at = now + CA_MSCS_POLL_SECONDS;
  ca_result_set(out, CAPSTAN_CA_PENDING, "CA holds request %s for approval", reqid);
}

int ca_mscs_submit_answer(const ca_http_response_t *resp, int64_t now, capstan_ca_result_t *out,
                          char *reqid, size_t reqid_len) {
  if (ca_http_expect_200(resp, out, http_refused) < 0) return 0;
  const char *page = (const char *)resp->body, *end = page + resp->body_len;
  /* Issued: a link to certnew.cer?ReqID=<n>& (or &amp;). */
  static const char link[] = "certnew.cer?ReqID=";
  const char *p = page;
  while ((p = find_ci(p, (size_t)(end - p), link)) != NULL) {
    const char *after;
    if (take_digits(p + sizeof link - 1, end, reqid, reqid_len, &after) == 0 && after < end &&
        *after == '&') {
      return 1;
    }
    p += sizeof link - 1;
  }
  char message[MESSAGE_MAX + 1];
  if (find_ci(page, resp->body_len, "Certificate Pending")) {
    static const char marker[] = "Your Request Id is ";
    const char *m = find_ci(page, resp->body_len, marker);
    const char *after;
    char id[CAPSTAN_CA_REQUEST_ID_MAX + 1];
    if (m && take_digits(m + sizeof marker - 1, end, id, sizeof id, &after) == 0 && after < end &&
        *after == '.') {
      pending(id, now, out);
      return 0;
    }
    ca_result_set(out, CAPSTAN_CA_UNAVAILABLE,
                  "CA says the request is pending but gives no request id");
    return 0;
  }
  if (disposition(page, resp->body_len, message, sizeof message) == 0) {
    ca_result_set(out, CAPSTAN_CA_REFUSED, "CA refused: %s", message);
    return 0;
  }
  ca_result_set(out, CAPSTAN_CA_UNAVAILABLE, "CA answered a page capstan does not understand");
  return 0;
}

/* The base64 between "-----BEGIN <label>-----" and "-----END", decoded. */
static uint8_t *pem_body(const ca_http_response_t *resp, const char *label, size_t *len) {
  char begin[64], endm[64];
  snprintf(begin, sizeof begin, "-----BEGIN %s-----", label);
  snprintf(endm, sizeof endm, "-----END %s-----", label);
  const char *page = (const char *)resp->body;
  const char *b = find_ci(page, resp->body_len, begin);
  if (!b) return NULL;
  b += strlen(begin);
  const char *e = find_ci(b, resp->body_len - (size_t)(b - page), endm);
  if (!e) return NULL;
  return ca_base64_decode_lenient((const uint8_t *)b, (size_t)(e - b), len);
}

void ca_mscs_cert_answer(const ca_http_response_t *resp, const char *reqid, int64_t now,
                         capstan_ca_result_t *out) {
  if (ca_http_expect_200(resp, out, http_refused) < 0) return;
  size_t len = 0;
  uint8_t *der = pem_body(resp, "CERTIFICATE", &len);
  if (!der && resp->body_len > 0 && resp->body[0] == 0x30) { /* Enc=bin by mistake: DER */
    der = malloc(resp->body_len);
    if (der) {
      memcpy(der, resp->body, resp->body_len);
      len = resp->body_len;
    }
  }
  if (der) {
    const uint8_t *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    if (x && p == der + len) {
      X509_free(x);
      out->cert_der = der;
      out->cert_len = len;
      ca_result_set(out, CAPSTAN_CA_ISSUED, "issued");
      return;
    }
    X509_free(x);
    free(der);
    ca_result_set(out, CAPSTAN_CA_UNAVAILABLE, "CA's certificate for request %s does not parse",
                  reqid);
    return;
  }
  /* An error page (200, as IIS does). */
  const char *page = (const char *)resp->body;
  if (find_ci(page, resp->body_len, "CERTSRV_E_REQUEST_PENDING") ||
      find_ci(page, resp->body_len, "Taken Under Submission")) {
    pending(reqid, now, out);
    return;
  }
  char message[MESSAGE_MAX + 1];
  if (disposition(page, resp->body_len, message, sizeof message) == 0) {
    ca_result_set(out, CAPSTAN_CA_REFUSED, "CA refused: %s", message);
    return;
  }
  ca_result_set(out, CAPSTAN_CA_UNAVAILABLE,
                "CA answered a page instead of the certificate for request %s", reqid);
}

void ca_mscs_chain_answer(const ca_http_response_t *resp, capstan_ca_result_t *out) {
  if (ca_http_expect_200(resp, out, http_refused) < 0) return;
  size_t len = 0;
  uint8_t *der = pem_body(resp, "PKCS7", &len);
  if (!der) der = ca_base64_decode_lenient(resp->body, resp->body_len, &len);
  if (!der) {
    ca_result_set(out, CAPSTAN_CA_UNAVAILABLE, "CA answered a page instead of its chain");
    return;
  }
  int rc = ca_pkcs7_certs(der, len, &out->chain_der, &out->chain_lens, &out->chain_count);
  free(der);
  if (rc != 0 || out->chain_count == 0) {
    ca_result_set(out, CAPSTAN_CA_UNAVAILABLE, "CA's chain is not a PKCS#7 certs-only bag");
    return;
  }
  ca_result_set(out, CAPSTAN_CA_ISSUED, "CA chain: %zu certificate%s", out->chain_count,
                out->chain_count == 1 ? "" : "s");
}
