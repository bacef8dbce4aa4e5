/* Inside core/ca: the HTTPS client (http.c), the EST and certsrv
 * protocols (est.c, mscs.c) and the helpers they share (util.c). Not for
 * use outside core/ca. */
#ifndef CAPSTAN_CORE_CA_INTERNAL_H
#define CAPSTAN_CORE_CA_INTERNAL_H

#include <netdb.h>
#include <stddef.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "core/ca/ca.h"

#define CAPSTAN_CA_HOST_MAX 253
#define CAPSTAN_CA_PATH_MAX 2047
#define CAPSTAN_CA_USER_AGENT "Mozilla/5.0 (compatible; capstan)"

/* ---- URL ---------------------------------------------------------------- */

/* "https://host[:port][/path]" split; |path| without its trailing '/' ("" for
 * none). IPv6 literals in brackets. 0, or CAPSTAN_EINVAL with |err| set. */
typedef struct ca_url {
  char host[CAPSTAN_CA_HOST_MAX + 1];
  uint16_t port;
  char path[CAPSTAN_CA_URL_MAX + 1];
} ca_url_t;
int ca_url_parse(const char *url, ca_url_t *out, char *err, size_t errlen);

/* ---- HTTPS client ------------------------------------------------------- */

typedef struct ca_http ca_http_t;

/* The CA's addresses as last resolved, kept by its client. uv_getaddrinfo
 * runs on libuv's thread pool, the pool the phones' signatures and TLS
 * handshakes queue on: under a load of phones every exchange with the CA
 * waited seconds behind them for its name before connecting (measured:
 * 5-17 s per exchange, bench/RESULTS.md). So a name is resolved at most
 * once per CA_ADDR_CACHE_SECONDS (as libcurl caches for 60 s), an address
 * literal never, and a cache whose every address refused is dropped. */
#define CA_ADDR_CACHE_MAX 8
#define CA_ADDR_CACHE_SECONDS 60
typedef struct ca_addr_cache {
  struct sockaddr_storage addr[CA_ADDR_CACHE_MAX];
  socklen_t len[CA_ADDR_CACHE_MAX];
  size_t count;
  uint64_t expires_ms; /* uv_now() */
} ca_addr_cache_t;
/* The cache from a resolver's answer (TCP, IPv4 and IPv6 only). */
void ca_addr_cache_fill(ca_addr_cache_t *c, const struct addrinfo *res, uint64_t now_ms);
/* A fresh address list (free with ca_addr_list_free) for |host|: its own
 * address when it is a literal, else the cache's when not expired; NULL
 * when it must be resolved (or out of memory). */
struct addrinfo *ca_addr_list(const char *host, uint16_t port, const ca_addr_cache_t *c,
                              uint64_t now_ms);
void ca_addr_list_free(struct addrinfo *list);

typedef struct ca_http_request {
  const char *method; /* "GET" or "POST" */
  const char *host;
  uint16_t port;
  const char *target;       /* path and query, starting with '/' */
  const char *content_type; /* POST only */
  const uint8_t *body;
  size_t body_len;
  const char *username; /* Basic authentication when non-empty */
  const char *password;
  SSL_CTX *ctx; /* from ca_http_ctx_new; the exchange takes a reference */
  unsigned timeout_seconds;
  /* The client's (may be NULL): read at the start, written by a live
   * exchange only, so a client that cancels its exchanges may free it. */
  ca_addr_cache_t *addr_cache;
} ca_http_request_t;

typedef enum {
  CA_HTTP_ANSWERED,  /* a complete HTTP answer (any status) */
  CA_HTTP_FAILED,    /* resolve, connect, TLS, protocol or size error */
  CA_HTTP_TIMED_OUT, /* no complete answer in timeout_seconds */
} ca_http_outcome_t;

typedef struct ca_http_response {
  int status;
  char content_type[128];
  char retry_after[128];
  uint8_t *body; /* NUL-terminated (not counted in body_len) */
  size_t body_len;
} ca_http_response_t;

/* |error| is a plain sentence for FAILED/TIMED_OUT ("connect to h:443:
 * connection refused"); never holds the password. |resp| is valid during
 * the call only. */
typedef void (*ca_http_done_fn)(void *data, ca_http_outcome_t outcome, const char *error,
                                const ca_http_response_t *resp);

/* The TLS client context for a CA: TLS 1.2 or later, the server's
 * certificate verified against the PEM |bundle|, or with none the system's
 * anchors (Debian's ca-certificates bundle). Built once per client: the
 * bundle is parsed and the system's file read then, never per request.
 * NULL with |err| set. */
SSL_CTX *ca_http_ctx_new(const uint8_t *bundle, size_t len, char *err, size_t errlen);

/* Starts one exchange on |loop|; everything in |rq| is copied. |done| runs
 * exactly once from a later loop callback unless ca_http_cancel comes
 * first. NULL when out of memory. */
ca_http_t *ca_http_start(uv_loop_t *loop, const ca_http_request_t *rq, ca_http_done_fn done,
                         void *data);
/* |done| will not run; the exchange is dropped and freed when its handles
 * are closed. */
void ca_http_cancel(ca_http_t *h);

/* ---- shared helpers (util.c) -------------------------------------------- */

/* Base64 decoded leniently (RFC 8951): whitespace anywhere is skipped,
 * padding optional. NULL on garbage or out of memory; *out_len set. */
uint8_t *ca_base64_decode_lenient(const uint8_t *in, size_t len, size_t *out_len);
/* Base64 with lines of 64 characters and CRLF line ends; malloc'd, NUL-terminated. */
char *ca_base64_encode_lines(const uint8_t *in, size_t len, size_t *out_len);

/* The certificates in a DER PKCS#7 certs-only bag, as malloc'd DER copies
 * appended to the list (ders, lens, count). 0 or CAPSTAN_EPROTO / CAPSTAN_ENOMEM. */
int ca_pkcs7_certs(const uint8_t *der, size_t len, uint8_t ***ders, size_t **lens, size_t *count);
/* Appends a copy of |der| to a list of DER blobs. */
int ca_der_list_append(uint8_t ***ders, size_t **lens, size_t *count, const uint8_t *der,
                       size_t len);
void ca_der_list_free(uint8_t **ders, size_t *lens, size_t count);

/* |text| (hostile) cut at its first line, control characters replaced,
 * at most |max| bytes, written into |out| (NUL-terminated). */
void ca_sanitize_line(const char *text, size_t len, size_t max, char *out, size_t outlen);

/* Sets result->outcome and a formatted reason. */
void ca_result_set(capstan_ca_result_t *r, capstan_ca_outcome_t o, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Every answer but 200 ends the exchange: 4xx/5xx as the CA's refusal
 * (|refuse| words it for EST or certsrv), anything else as unexpected.
 * Sets out->http_status; 0 for a 200, -1 when |out| holds the outcome. */
typedef void (*ca_refusal_fn)(const ca_http_response_t *resp, capstan_ca_result_t *out);
int ca_http_expect_200(const ca_http_response_t *resp, capstan_ca_result_t *out,
                       ca_refusal_fn refuse);

/* The DER SubjectPublicKeyInfo of |x| (OPENSSL_free it), or NULL. */
uint8_t *ca_cert_spki(X509 *x, size_t *len);

/* ---- EST (est.c) -------------------------------------------------------- */

/* "{base path}/.well-known/est/[{label}/]{op}" */
int ca_est_target(const ca_url_t *u, const char *label, const char *op, char *out, size_t outlen);
/* The simpleenroll body: the request as base64 DER. malloc'd. */
char *ca_est_enroll_body(const uint8_t *csr, size_t len, size_t *out_len);
/* An enroll answer: ISSUED (cert picked by |spki|, the rest as chain;
 * not yet checked), PENDING, REFUSED, UNAVAILABLE or BAD_CERT. */
void ca_est_enroll_answer(const ca_http_response_t *resp, const uint8_t *spki, size_t spki_len,
                          int64_t now, capstan_ca_result_t *out);
/* A cacerts answer: ISSUED with every certificate in out->chain_der. */
void ca_est_cacerts_answer(const ca_http_response_t *resp, capstan_ca_result_t *out);
/* Retry-After (delta seconds or HTTP date) as a delay in seconds,
 * clamped to [1, 86400]; 60 when missing or garbage. */
int64_t ca_retry_after_seconds(const char *value, int64_t now);

/* ---- Microsoft certsrv (mscs.c) ----------------------------------------- */

#define CA_MSCS_POLL_SECONDS 60

/* The certfnsh.asp form body; malloc'd. NULL when out of memory. */
char *ca_mscs_submit_body(const uint8_t *csr, size_t csr_len, const char *template_name,
                          size_t *out_len);
/* The certfnsh.asp answer. Returns 1 with |reqid| set when the page says
 * issued (fetch certnew.cer next); 0 with |out| set otherwise (PENDING with
 * request_id and retry_at, REFUSED, UNAVAILABLE). */
int ca_mscs_submit_answer(const ca_http_response_t *resp, int64_t now, capstan_ca_result_t *out,
                          char *reqid, size_t reqid_len);
/* The certnew.cer answer: ISSUED with cert_der (unchecked), or PENDING
 * (request_id kept) / REFUSED / UNAVAILABLE. */
void ca_mscs_cert_answer(const ca_http_response_t *resp, const char *reqid, int64_t now,
                         capstan_ca_result_t *out);
/* The certnew.p7b?ReqID=CACert&Enc=b64 answer: ISSUED with the chain. */
void ca_mscs_chain_answer(const ca_http_response_t *resp, capstan_ca_result_t *out);
/* A ReqID is 1..CAPSTAN_CA_REQUEST_ID_MAX decimal digits. */
int ca_mscs_reqid_valid(const char *reqid);

#endif
