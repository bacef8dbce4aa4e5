/* The online CA (external-ca.md): an EST (RFC 7030) or Microsoft CA
 * ("certsrv") client that asks for phones' certificates, and the check
 * every certificate from a CA passes before it is recorded.
 *
 * Everything runs on one libuv loop and never blocks it: requests are
 * non-blocking HTTPS (BoringSSL over memory BIOs on uv_tcp_t; README
 * "Dependencies" says why not libcurl), each bounded by the configured
 * timeout. A CA that is down, slow or wrong costs its own requests only.
 * Loop thread only, except capstan_ca_check_certificate and
 * capstan_ca_run_sync, which touch nothing shared. */
#ifndef CAPSTAN_CORE_CA_CA_H
#define CAPSTAN_CORE_CA_CA_H

#include <openssl/base.h>
#include <openssl/x509.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/settings.h"
#include "storage/store.h"

#define CAPSTAN_CA_URL_MAX 1023
#define CAPSTAN_CA_LABEL_MAX 63
#define CAPSTAN_CA_TEMPLATE_MAX 127
#define CAPSTAN_CA_USER_MAX 255
#define CAPSTAN_CA_PASSWORD_MAX 255
#define CAPSTAN_CA_REQUEST_ID_MAX 63
#define CAPSTAN_CA_REASON_MAX 255
#define CAPSTAN_CA_DEFAULT_TIMEOUT_SECONDS 30
#define CAPSTAN_CA_DEFAULT_PHONE_WAIT_SECONDS 120
#define CAPSTAN_CA_DEFAULT_MAX_REQUESTS 64
/* Largest HTTP answer read from a CA (headers + body); more is an error. */
#define CAPSTAN_CA_MAX_RESPONSE (1024 * 1024)

/* How to reach the CA: records.proto's CaConfig as a plain struct. */
typedef struct capstan_ca_config {
  char url[CAPSTAN_CA_URL_MAX + 1]; /* https://host[:port][/path]; "" = not configured */
  char label[CAPSTAN_CA_LABEL_MAX + 1];
  char template_name[CAPSTAN_CA_TEMPLATE_MAX + 1];
  char username[CAPSTAN_CA_USER_MAX + 1];
  char password[CAPSTAN_CA_PASSWORD_MAX + 1]; /* never logged or printed */
  uint8_t *ca_bundle_pem;                     /* owned; NULL: the system's anchors */
  size_t ca_bundle_len;
  unsigned timeout_seconds;    /* each HTTP request; default 30 */
  unsigned phone_wait_seconds; /* longest a phone waits in its session; default 120 */
  unsigned max_requests;       /* exchanges with the CA at once; the rest queue; default 64 */
  uint8_t **chain_der;         /* owned: the CA's chain as last fetched (cacerts) */
  size_t *chain_lens;
  size_t chain_count;
  int64_t chain_fetched_at;
} capstan_ca_config_t;

void capstan_ca_config_init(capstan_ca_config_t *c);    /* empty, defaults */
void capstan_ca_config_cleanup(capstan_ca_config_t *c); /* frees, wipes the password */
int capstan_ca_config_copy(const capstan_ca_config_t *src, capstan_ca_config_t *dst);

/* Reads/writes the stored CaConfig (pki "ca") inside |txn|. Reading a
 * store without one gives an empty config (url ""), not an error. */
int capstan_ca_config_read(capstan_txn_t *txn, capstan_ca_config_t *out);
int capstan_ca_config_write(capstan_txn_t *txn, const capstan_ca_config_t *c);

/* How one exchange with the CA ended. */
typedef enum {
  CAPSTAN_CA_ISSUED,      /* a certificate that passed capstan_ca_check_certificate */
  CAPSTAN_CA_PENDING,     /* the CA will decide later: poll at retry_at */
  CAPSTAN_CA_REFUSED,     /* the CA said no (4xx/5xx, a denied disposition) */
  CAPSTAN_CA_UNAVAILABLE, /* could not connect, TLS failed, garbage answer */
  CAPSTAN_CA_TIMED_OUT,   /* no complete answer within timeout_seconds */
  CAPSTAN_CA_BAD_CERT,    /* answered with a certificate that failed the check */
} capstan_ca_outcome_t;

/* "issued", "pending", "refused", "unavailable", "timeout", "bad_cert":
 * the |result| label of capstan_ca_requests_total. */
const char *capstan_ca_outcome_name(capstan_ca_outcome_t o);

typedef struct capstan_ca_result {
  capstan_ca_outcome_t outcome;
  /* For the device record and the operator, e.g. "CA unavailable",
   * "CA refused: 403 not allowed", "CA timed out", "CA returned a
   * certificate for another key". Never holds the password. */
  char reason[CAPSTAN_CA_REASON_MAX + 1];
  int http_status; /* 0 when no answer was read */
  /* ISSUED: the certificate and the issuers the CA sent with it (owned). */
  uint8_t *cert_der;
  size_t cert_len;
  uint8_t **chain_der;
  size_t *chain_lens;
  size_t chain_count;
  /* PENDING: when to ask again (unix seconds), and the CA's request id
   * (MSCS ReqID; "" for EST, which is asked again with the same request). */
  int64_t retry_at;
  char request_id[CAPSTAN_CA_REQUEST_ID_MAX + 1];
  double latency_seconds; /* the whole exchange */
} capstan_ca_result_t;

void capstan_ca_result_cleanup(capstan_ca_result_t *r);

/* What a certificate from a CA must be (external-ca.md): its public key is
 * |phone_spki| (DER SubjectPublicKeyInfo), its subject's CN is |device|,
 * keyUsage holds digitalSignature and keyEncipherment, it is valid at
 * |now|, and it chains (through |chain|, may be NULL) to a certificate in
 * |trust| (CAPF-trust). 0, or CAPSTAN_EACCES with *why set to a static
 * sentence ("certificate is for another key", "certificate names another
 * device", "certificate lacks keyEncipherment", "certificate is not valid
 * now", "certificate does not chain to CAPF-trust", ...). Any thread. */
int capstan_ca_check_certificate(const uint8_t *der, size_t len, STACK_OF(X509) * chain,
                                 const uint8_t *phone_spki, size_t spki_len, const char *device,
                                 STACK_OF(X509) * trust, int64_t now, const char **why);

typedef struct capstan_ca_client capstan_ca_client_t;
typedef struct capstan_ca_request capstan_ca_request_t;

typedef void (*capstan_ca_done_fn)(capstan_ca_request_t *req, const capstan_ca_result_t *result,
                                   void *data);

/* A client for |issuer| (EST or MSCS) with a copy of |cfg|, on |loop|.
 * NULL when out of memory or |cfg| is unusable (*err says why, e.g. "the
 * CA URL must start with https://"). Metrics are registered on first use:
 * capstan_ca_requests_total{mode,result},
 * capstan_ca_request_duration_seconds{mode}, capstan_ca_up (1 when the last
 * exchange reached the CA), capstan_ca_last_success_timestamp_seconds.
 * The TLS context is built here: the bundle parsed (a bundle without a
 * certificate is refused) or, with none, Debian's ca-certificates bundle
 * read from disk once. */
capstan_ca_client_t *capstan_ca_client_new(uv_loop_t *loop, capstan_issuer_t issuer,
                                           const capstan_ca_config_t *cfg, char *err,
                                           size_t errlen);

/* Asks the CA to sign |csr_der| (the phone's checked PKCS#10) for
 * |device|, whose key is |phone_spki|; with |request_id| non-empty (an MSCS
 * request left pending) asks for that request's certificate instead. An
 * issued certificate is checked against |trust| (a reference is taken
 * while the request runs) before it is reported. |done| runs exactly once,
 * on the loop, from a later callback (never inside this call), unless the
 * request is cancelled first. Returns the request (owned by the client
 * until done returns or cancel) or NULL when out of memory or the
 * arguments are unusable (no CSR, a request id with EST or not made of
 * digits). EST has no request id: a pending EST request is polled by
 * submitting the same CSR again. An MSCS certificate is checked with the
 * configured chain, or with the CA's chain (certnew.p7b?ReqID=CACert)
 * fetched for it when none is configured: up to three exchanges, each
 * bounded by timeout_seconds (a caller with a deadline keeps its own timer
 * and cancels). */
capstan_ca_request_t *capstan_ca_submit(capstan_ca_client_t *c, const char *device,
                                        const uint8_t *csr_der, size_t csr_len,
                                        const uint8_t *phone_spki, size_t spki_len,
                                        const char *request_id, STACK_OF(X509) * trust,
                                        capstan_ca_done_fn done, void *data);

/* Fetches the CA's chain on the loop (EST cacerts; MSCS
 * certnew.p7b?ReqID=CACert&Enc=b64), e.g. daily: |done| gets ISSUED with
 * the certificates in chain_der (cert_der NULL), or the failure. Same
 * rules as capstan_ca_submit; cancel with capstan_ca_cancel. */
capstan_ca_request_t *capstan_ca_fetch_chain(capstan_ca_client_t *c, capstan_ca_done_fn done,
                                             void *data);

/* Replaces the chain the client completes a CA's answer with when the
 * answer holds none (the daily fetch of the CA's chain). 0 or
 * CAPSTAN_ENOMEM (the old chain stays). */
int capstan_ca_client_set_chain(capstan_ca_client_t *c, const uint8_t *const *der,
                                const size_t *lens, size_t count);

/* The requester went away: |done| will not run; the exchange is dropped.
 * Not from inside |done| (the request ends when done returns). */
void capstan_ca_cancel(capstan_ca_request_t *req);

/* Health, as the status page and `ca show` report it. A success is an
 * exchange that ended ISSUED or PENDING; any other outcome is a failure
 * (last_error holds its reason). */
typedef struct capstan_ca_health {
  int64_t last_success_at, last_error_at; /* unix seconds, 0 = never */
  char last_error[CAPSTAN_CA_REASON_MAX + 1];
  double last_latency_seconds;
  uint64_t requests, failures;
  unsigned in_flight;
} capstan_ca_health_t;
void capstan_ca_client_health(const capstan_ca_client_t *c, capstan_ca_health_t *out);

/* Stores |h| as the CA's health record (pki "ca_health", CaHealth)
 * inside |txn|: the server writes it for `capstan ca show` and the status
 * page (in_flight is not stored). */
int capstan_ca_health_write(capstan_txn_t *txn, const capstan_ca_health_t *h);

/* Cancels every request (no done callback runs) and frees the client once
 * its handles are closed (the loop must run on). NULL is ignored. */
void capstan_ca_client_free(capstan_ca_client_t *c);

/* For the CLI (`ca test`, `ca set`): runs one operation on a private loop
 * and returns when it ends. CAPSTAN_CA_OP_CHAIN fetches the CA's chain
 * (EST cacerts; MSCS certnew.p7b?ReqID=CACert), which also proves the CA
 * is reachable and, for MSCS, that the credentials work (every certsrv
 * page needs them); CAPSTAN_CA_OP_AUTH checks the credentials (EST: a
 * simpleenroll with an empty body must not answer 401/403...). The result
 * says plainly what failed ("connect to ca.example.com:443: connection
 * refused", "TLS: certificate verify failed: host name mismatch",
 * "HTTP 401: credentials refused"). */
/* Returns 0 when the operation succeeded (out->outcome is then ISSUED:
 * for CHAIN, out->chain_der holds the CA's certificates; for AUTH, reason
 * says "credentials accepted (HTTP n)"); CAPSTAN_EINVAL when |cfg| is
 * unusable, CAPSTAN_ENOMEM, or CAPSTAN_EIO with out->outcome and
 * out->reason saying what failed. |out| is always set: clean it up. */
typedef enum { CAPSTAN_CA_OP_CHAIN, CAPSTAN_CA_OP_AUTH } capstan_ca_op_t;
int capstan_ca_run_sync(capstan_issuer_t issuer, const capstan_ca_config_t *cfg, capstan_ca_op_t op,
                        capstan_ca_result_t *out);

#endif
