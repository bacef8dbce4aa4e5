/* The online CA client against the independent test CAs
 * (tests/tools/test_est_ca.py, test_certsrv_ca.py), run as subprocesses
 * on loopback: real TLS, real HTTP, every behaviour the CAs offer. Every
 * wait is bounded; the CAs are stopped with SIGTERM at the end. The test
 * fails (never skips) when python3 or python3-cryptography is missing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/bytestring.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/x509v3.h>
#include <openssl/mem.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "core/base/error.h"
#include "core/base/metrics.h"
#include "core/ca/ca.h"
#include "core/ca/internal.h"

#define DEVICE "SEP001122334455"
#define READY_SECONDS 60

typedef struct test_ca {
  pid_t pid;
  int port;
  char dir[256];
  char url[64];
  uint8_t *root_pem;
  size_t root_len;
  STACK_OF(X509) * trust;
} test_ca_t;

static struct {
  char tmp[128];
  test_ca_t est, est_int, mscs;
  EVP_PKEY *phone;
  uint8_t *csr, *spki;
  size_t csr_len, spki_len;
  uv_loop_t loop;
} G;

/* ---- the test CAs as subprocesses ----------------------------------------- */

static uint8_t *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *buf = malloc((size_t)n + 1);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
  buf[n] = 0;
  fclose(f);
  *len = (size_t)n;
  return buf;
}

static STACK_OF(X509) * pem_certs(const uint8_t *pem, size_t len) {
  STACK_OF(X509) *out = sk_X509_new_null();
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  X509 *x;
  while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) sk_X509_push(out, x);
  BIO_free(bio);
  return out;
}

/* Starts |argv| with stdout on a pipe and stderr into |errlog|, and waits
 * (bounded) for its ready line {"port": N, ...}: the port. */
static pid_t spawn_ready(char *const argv[], const char *errlog, int *port) {
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(fds[1], 1);
    int e = open(errlog, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (e >= 0) dup2(e, 2);
    close(fds[0]);
    execv(argv[0], argv);
    _exit(127);
  }
  close(fds[1]);
  char line[1024];
  size_t n = 0;
  time_t deadline = time(NULL) + READY_SECONDS;
  while (n < sizeof line - 1 && !memchr(line, '\n', n)) {
    struct pollfd p = {fds[0], POLLIN, 0};
    int left = (int)(deadline - time(NULL));
    if (left <= 0 || poll(&p, 1, left * 1000) <= 0) break;
    ssize_t r = read(fds[0], line + n, sizeof line - 1 - n);
    if (r <= 0) break;
    n += (size_t)r;
  }
  close(fds[0]);
  line[n] = 0;
  const char *at = strstr(line, "\"port\": ");
  if (!at) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    size_t elen = 0;
    uint8_t *log = read_file(errlog, &elen);
    fail_msg("%s did not start (python3 and python3-cryptography are needed): %s", argv[1],
             log ? (char *)log : "(no stderr)");
  }
  *port = atoi(at + 8);
  return pid;
}

static void start_ca(test_ca_t *ca, const char *script, const char *name, const char *extra1,
                     const char *extra2) {
  const char *src = getenv("CAPSTAN_SOURCE_DIR");
  if (!src) fail_msg("CAPSTAN_SOURCE_DIR is not set (run the test through ctest)");
  char tool[512], root[300], tls[300], err[300];
  snprintf(tool, sizeof tool, "%s/tests/tools/%s", src, script);
  snprintf(ca->dir, sizeof ca->dir, "%s/%s", G.tmp, name);
  assert_int_equal(mkdir(ca->dir, 0700), 0);
  snprintf(root, sizeof root, "%s/root.pem", ca->dir);
  snprintf(tls, sizeof tls, "%s/tls.pem", ca->dir);
  snprintf(err, sizeof err, "%s/stderr.log", ca->dir);
  char *argv[12];
  int i = 0;
  argv[i++] = "/usr/bin/python3";
  argv[i++] = tool;
  argv[i++] = "--root-out";
  argv[i++] = root;
  argv[i++] = "--tls-cert-out";
  argv[i++] = tls;
  if (extra1) argv[i++] = (char *)extra1;
  if (extra2) argv[i++] = (char *)extra2;
  argv[i] = NULL;
  ca->pid = spawn_ready(argv, err, &ca->port);
  snprintf(ca->url, sizeof ca->url, "https://127.0.0.1:%d", ca->port);
  ca->root_pem = read_file(root, &ca->root_len);
  assert_non_null(ca->root_pem);
  ca->trust = pem_certs(ca->root_pem, ca->root_len);
  assert_int_equal(sk_X509_num(ca->trust), 1);
}

static void stop_ca(test_ca_t *ca) {
  if (ca->pid > 0) {
    kill(ca->pid, SIGTERM);
    int status;
    int waited = 0;
    for (int i = 0; i < 100; i++) {
      if (waitpid(ca->pid, &status, WNOHANG) == ca->pid) {
        waited = 1;
        break;
      }
      usleep(100000);
    }
    if (!waited) {
      kill(ca->pid, SIGKILL);
      waitpid(ca->pid, &status, 0);
    }
    ca->pid = 0;
  }
  free(ca->root_pem);
  sk_X509_pop_free(ca->trust, X509_free);
}

/* ---- the phone's key and request ------------------------------------------- */

static void make_phone(void) {
  RSA *rsa = RSA_new();
  BIGNUM *e = BN_new();
  BN_set_word(e, 65537);
  assert_int_equal(RSA_generate_key_ex(rsa, 2048, e, NULL), 1);
  BN_free(e);
  G.phone = EVP_PKEY_new();
  EVP_PKEY_assign_RSA(G.phone, rsa);
  X509_REQ *req = X509_REQ_new();
  X509_NAME *name = X509_NAME_new();
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const uint8_t *)DEVICE, -1, -1, 0);
  X509_REQ_set_subject_name(req, name);
  X509_NAME_free(name);
  X509_REQ_set_pubkey(req, G.phone);
  assert_true(X509_REQ_sign(req, G.phone, EVP_sha256()) > 0);
  uint8_t *der = NULL;
  int n = i2d_X509_REQ(req, &der);
  assert_true(n > 0);
  G.csr = der;
  G.csr_len = (size_t)n;
  X509_REQ_free(req);
  der = NULL;
  n = i2d_PUBKEY(G.phone, &der);
  assert_true(n > 0);
  G.spki = der;
  G.spki_len = (size_t)n;
}

/* ---- driving the client --------------------------------------------------------- */

typedef struct outcome {
  int called;
  capstan_ca_outcome_t outcome;
  char reason[CAPSTAN_CA_REASON_MAX + 1];
  int http_status;
  int has_cert, cert_matches;
  size_t chain_count;
  int64_t retry_at;
  char request_id[CAPSTAN_CA_REQUEST_ID_MAX + 1];
} outcome_t;

static void on_done(capstan_ca_request_t *req, const capstan_ca_result_t *r, void *data) {
  (void)req;
  outcome_t *o = data;
  o->called++;
  o->outcome = r->outcome;
  snprintf(o->reason, sizeof o->reason, "%s", r->reason);
  o->http_status = r->http_status;
  o->has_cert = r->cert_der != NULL;
  if (r->cert_der) {
    const uint8_t *p = r->cert_der;
    X509 *x = d2i_X509(NULL, &p, (long)r->cert_len);
    assert_non_null(x);
    uint8_t *spki = NULL;
    int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &spki);
    o->cert_matches = n > 0 && (size_t)n == G.spki_len && memcmp(spki, G.spki, G.spki_len) == 0;
    OPENSSL_free(spki);
    X509_free(x);
  }
  o->chain_count = r->chain_count;
  o->retry_at = r->retry_at;
  snprintf(o->request_id, sizeof o->request_id, "%s", r->request_id);
}

static void config_for(capstan_ca_config_t *cfg, const test_ca_t *ca) {
  capstan_ca_config_init(cfg);
  snprintf(cfg->url, sizeof cfg->url, "%s", ca->url);
  snprintf(cfg->username, sizeof cfg->username, "capf");
  snprintf(cfg->password, sizeof cfg->password, "secret");
  snprintf(cfg->template_name, sizeof cfg->template_name, "CapstanPhone");
  cfg->ca_bundle_pem = malloc(ca->root_len);
  memcpy(cfg->ca_bundle_pem, ca->root_pem, ca->root_len);
  cfg->ca_bundle_len = ca->root_len;
  cfg->timeout_seconds = 10;
}

/* Runs the loop until |o| is called or 30 s pass. */
static void run_until(outcome_t *o) {
  time_t deadline = time(NULL) + 30;
  while (!o->called && time(NULL) < deadline) uv_run(&G.loop, UV_RUN_ONCE);
  assert_int_equal(o->called, 1);
}

static outcome_t submit_cfg(capstan_issuer_t issuer, const capstan_ca_config_t *cfg,
                            const test_ca_t *ca, const char *request_id) {
  char err[256];
  capstan_ca_client_t *c = capstan_ca_client_new(&G.loop, issuer, cfg, err, sizeof err);
  if (!c) fail_msg("client: %s", err);
  outcome_t o;
  memset(&o, 0, sizeof o);
  capstan_ca_request_t *req = capstan_ca_submit(c, DEVICE, G.csr, G.csr_len, G.spki, G.spki_len,
                                                request_id, ca->trust, on_done, &o);
  assert_non_null(req);
  assert_int_equal(o.called, 0); /* never inside submit */
  run_until(&o);
  capstan_ca_health_t h;
  capstan_ca_client_health(c, &h);
  assert_int_equal(h.requests, 1);
  assert_int_equal(h.in_flight, 0);
  if (o.outcome == CAPSTAN_CA_ISSUED || o.outcome == CAPSTAN_CA_PENDING) {
    assert_int_equal(h.failures, 0);
    assert_true(h.last_success_at > 0);
  } else {
    assert_int_equal(h.failures, 1);
    assert_string_equal(h.last_error, o.reason);
  }
  assert_true(h.last_latency_seconds > 0);
  capstan_ca_client_free(c);
  uv_run(&G.loop, UV_RUN_DEFAULT);
  return o;
}

static outcome_t submit(capstan_issuer_t issuer, const test_ca_t *ca, const char *request_id) {
  capstan_ca_config_t cfg;
  config_for(&cfg, ca);
  outcome_t o = submit_cfg(issuer, &cfg, ca, request_id);
  capstan_ca_config_cleanup(&cfg);
  return o;
}

static void control_done(void *data, ca_http_outcome_t outcome, const char *error,
                         const ca_http_response_t *resp) {
  int *status = data;
  if (outcome != CA_HTTP_ANSWERED) fail_msg("control: %s", error);
  *status = resp->status;
}

static void control_via_done(void *data, ca_http_outcome_t outcome, const char *error,
                             const ca_http_response_t *resp) {
  struct {
    ca_http_outcome_t outcome;
    char *err;
    size_t errlen;
  } *r = data;
  r->outcome = outcome;
  snprintf(r->err, r->errlen, "%s", outcome == CA_HTTP_ANSWERED ? "" : error);
  if (outcome == CA_HTTP_ANSWERED && resp->status != 200) r->outcome = CA_HTTP_FAILED;
}

/* POST /control with |json| (the test CAs' behaviours). */
static void control(const test_ca_t *ca, const char *json) {
  ca_http_request_t rq;
  memset(&rq, 0, sizeof rq);
  rq.method = "POST";
  rq.host = "127.0.0.1";
  rq.port = (uint16_t)ca->port;
  rq.target = "/control";
  rq.content_type = "application/json";
  rq.body = (const uint8_t *)json;
  rq.body_len = strlen(json);
  char err[160];
  rq.ctx = ca_http_ctx_new(ca->root_pem, ca->root_len, err, sizeof err);
  assert_non_null(rq.ctx);
  rq.timeout_seconds = 10;
  int status = 0;
  assert_non_null(ca_http_start(&G.loop, &rq, control_done, &status));
  uv_run(&G.loop, UV_RUN_DEFAULT);
  SSL_CTX_free(rq.ctx);
  if (status != 200) fail_msg("control %s: HTTP %d", json, status);
}

/* One POST /control (a harmless query of the mode) to |host| with |cache|;
 * the outcome, and the error in |err|. */
static ca_http_outcome_t control_via(const test_ca_t *ca, const char *host, ca_addr_cache_t *cache,
                                     char *err, size_t errlen) {
  ca_http_request_t rq;
  memset(&rq, 0, sizeof rq);
  rq.method = "POST";
  rq.host = host;
  rq.port = (uint16_t)ca->port;
  rq.target = "/control";
  rq.content_type = "application/json";
  rq.body = (const uint8_t *)"{}";
  rq.body_len = 2;
  rq.ctx = ca_http_ctx_new(ca->root_pem, ca->root_len, err, errlen);
  assert_non_null(rq.ctx);
  rq.timeout_seconds = 10;
  rq.addr_cache = cache;
  struct {
    ca_http_outcome_t outcome;
    char *err;
    size_t errlen;
  } r = {CA_HTTP_TIMED_OUT, err, errlen};
  assert_non_null(ca_http_start(&G.loop, &rq, control_via_done, &r));
  uv_run(&G.loop, UV_RUN_DEFAULT);
  SSL_CTX_free(rq.ctx);
  return r.outcome;
}

static void reset(const test_ca_t *ca) {
  control(ca,
          "{\"mode\": \"issue\", \"reset_pending\": true, \"retry_after\": 1, "
          "\"retry_after_date\": false, \"pending_polls\": 1, \"status\": null, "
          "\"message\": \"refused by the test CA\", \"stall_seconds\": 60, \"chain\": false}");
}

static void expect(const outcome_t *o, capstan_ca_outcome_t want, const char *reason_part) {
  if (o->outcome != want || (reason_part && !strstr(o->reason, reason_part))) {
    fail_msg("expected %s \"%s\", got %s \"%s\"", capstan_ca_outcome_name(want),
             reason_part ? reason_part : "", capstan_ca_outcome_name(o->outcome), o->reason);
  }
  assert_null(strstr(o->reason, "secret")); /* the password never shows */
}

static struct {
  pid_t pid;
  int port;
  uint8_t *cert_pem;
  size_t cert_len;
} H;

static void start_hostile(void);

/* ---- setup -------------------------------------------------------------------- */

static int setup(void **state) {
  (void)state;
  snprintf(G.tmp, sizeof G.tmp, "/tmp/capstan-test-ca-XXXXXX");
  assert_non_null(mkdtemp(G.tmp));
  assert_int_equal(uv_loop_init(&G.loop), 0);
  start_ca(&G.est, "test_est_ca.py", "est", NULL, NULL);
  start_ca(&G.est_int, "test_est_ca.py", "est-int", "--intermediate", NULL);
  start_ca(&G.mscs, "test_certsrv_ca.py", "mscs", "--template", "CapstanPhone");
  start_hostile();
  make_phone();
  return 0;
}

static int teardown(void **state) {
  (void)state;
  stop_ca(&G.est);
  stop_ca(&G.est_int);
  stop_ca(&G.mscs);
  test_ca_t h = {.pid = H.pid};
  stop_ca(&h);
  free(H.cert_pem);
  uv_run(&G.loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&G.loop), 0);
  EVP_PKEY_free(G.phone);
  OPENSSL_free(G.csr);
  OPENSSL_free(G.spki);
  char cmd[200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", G.tmp);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", G.tmp);
  return 0;
}

/* ---- EST ------------------------------------------------------------------------ */

static void test_est_issue(void **state) {
  (void)state;
  reset(&G.est);
  capstan_metric_t *issued = capstan_metrics_counter("capstan_ca_requests_total",
                                                     "Exchanges with the online CA, by outcome",
                                                     "mode=\"est\",result=\"issued\"");
  double before = capstan_metric_value(issued);
  outcome_t o = submit(CAPSTAN_ISSUER_EST, &G.est, NULL);
  expect(&o, CAPSTAN_CA_ISSUED, NULL);
  assert_int_equal(o.http_status, 200);
  assert_true(o.has_cert && o.cert_matches);
  assert_true(capstan_metric_value(issued) == before + 1);
  assert_true(capstan_metric_value(capstan_metrics_gauge(
                  "capstan_ca_up", "1 when the last exchange reached the online CA", "")) == 1);
  assert_true(capstan_metric_value(capstan_metrics_gauge(
                  "capstan_ca_last_success_timestamp_seconds",
                  "When an exchange with the online CA last succeeded (unix time)", "")) > 0);
}

static void test_est_issue_with_chain_picked_by_key(void **state) {
  (void)state;
  reset(&G.est_int);
  control(&G.est_int, "{\"chain\": true, \"cte\": false, \"wrap\": false}");
  outcome_t o = submit(CAPSTAN_ISSUER_EST, &G.est_int, NULL);
  expect(&o, CAPSTAN_CA_ISSUED, NULL);
  assert_true(o.has_cert && o.cert_matches);
  assert_int_equal(o.chain_count, 2); /* issuing CA and root, the leaf taken out */
  /* Without the chain in the answer, the intermediate is missing. */
  control(&G.est_int, "{\"chain\": false, \"cte\": true, \"wrap\": true}");
  o = submit(CAPSTAN_ISSUER_EST, &G.est_int, NULL);
  expect(&o, CAPSTAN_CA_BAD_CERT, "does not chain to CAPF-trust");
}

static void test_est_pending_seconds_then_issued(void **state) {
  (void)state;
  reset(&G.est);
  control(&G.est, "{\"mode\": \"pending\", \"retry_after\": 7, \"pending_polls\": 1}");
  int64_t now = (int64_t)time(NULL);
  outcome_t o = submit(CAPSTAN_ISSUER_EST, &G.est, NULL);
  expect(&o, CAPSTAN_CA_PENDING, NULL);
  assert_int_equal(o.http_status, 202);
  assert_true(o.retry_at >= now + 6 && o.retry_at <= now + 9);
  assert_string_equal(o.request_id, "");
  o = submit(CAPSTAN_ISSUER_EST, &G.est, NULL); /* the same request again */
  expect(&o, CAPSTAN_CA_ISSUED, NULL);
}

static void test_est_pending_http_date(void **state) {
  (void)state;
  reset(&G.est);
  control(&G.est, "{\"mode\": \"pending\", \"retry_after\": 120, \"retry_after_date\": true}");
  int64_t now = (int64_t)time(NULL);
  outcome_t o = submit(CAPSTAN_ISSUER_EST, &G.est, NULL);
  expect(&o, CAPSTAN_CA_PENDING, NULL);
  assert_true(o.retry_at >= now + 115 && o.retry_at <= now + 125);
}

static void test_est_refuse(void **state) {
  (void)state;
  reset(&G.est);
  control(&G.est, "{\"mode\": \"refuse\", \"message\": \"no certificates today\"}");
  outcome_t o = submit(CAPSTAN_ISSUER_EST, &G.est, NULL);
  expect(&o, CAPSTAN_CA_REFUSED, "CA refused: 403 no certificates today");
  assert_int_equal(o.http_status, 403);
}

static void test_est_stall_times_out(void **state) {
  (void)state;
  reset(&G.est);
  control(&G.est, "{\"mode\": \"stall\", \"stall_seconds\": 5}");
  capstan_ca_config_t cfg;
  config_for(&cfg, &G.est);
  cfg.timeout_seconds = 1;
  double t0 = capstan_now_seconds();
  outcome_t o = submit_cfg(CAPSTAN_ISSUER_EST, &cfg, &G.est, NULL);
  double took = capstan_now_seconds() - t0;
  capstan_ca_config_cleanup(&cfg);
  expect(&o, CAPSTAN_CA_TIMED_OUT, "CA timed out");
  assert_true(took < 4.0);
}

static void test_est_hangup(void **state) {
  (void)state;
  reset(&G.est);
  control(&G.est, "{\"mode\": \"hangup\"}");
  outcome_t o = submit(CAPSTAN_ISSUER_EST, &G.est, NULL);
  expect(&o, CAPSTAN_CA_UNAVAILABLE, "CA closed the connection without an answer");
  assert_int_equal(o.http_status, 0);
}

static void est_mode(const char *mode, const char *reason) {
  reset(&G.est);
  char json[100];
  snprintf(json, sizeof json, "{\"mode\": \"%s\"}", mode);
  control(&G.est, json);
  outcome_t o = submit(CAPSTAN_ISSUER_EST, &G.est, NULL);
  expect(&o, CAPSTAN_CA_BAD_CERT, reason);
  assert_false(o.has_cert);
}

static void test_est_wrong_certificates(void **state) {
  (void)state;
  est_mode("wrong-key", "CA returned a certificate for another key");
  est_mode("wrong-subject", "certificate names another device");
  est_mode("no-keyusage", "certificate has no keyUsage");
  est_mode("sign-only", "certificate lacks keyEncipherment");
  est_mode("wrong-ca", "certificate does not chain to CAPF-trust");
  est_mode("expired", "certificate is not valid now");
}

static void test_est_wrong_password(void **state) {
  (void)state;
  reset(&G.est);
  capstan_ca_config_t cfg;
  config_for(&cfg, &G.est);
  snprintf(cfg.password, sizeof cfg.password, "not-the-password");
  outcome_t o = submit_cfg(CAPSTAN_ISSUER_EST, &cfg, &G.est, NULL);
  expect(&o, CAPSTAN_CA_REFUSED, "401");
  assert_null(strstr(o.reason, "not-the-password"));
  capstan_ca_result_t r;
  assert_int_equal(capstan_ca_run_sync(CAPSTAN_ISSUER_EST, &cfg, CAPSTAN_CA_OP_AUTH, &r),
                   CAPSTAN_EIO);
  assert_int_equal(r.outcome, CAPSTAN_CA_REFUSED);
  assert_string_equal(r.reason, "HTTP 401: credentials refused");
  capstan_ca_result_cleanup(&r);
  capstan_ca_config_cleanup(&cfg);
}

static void test_tls_bundle_without_the_issuer(void **state) {
  (void)state;
  reset(&G.est);
  capstan_ca_config_t cfg;
  config_for(&cfg, &G.est);
  /* The other test CA's root: a valid bundle that did not issue this TLS certificate. */
  free(cfg.ca_bundle_pem);
  cfg.ca_bundle_pem = malloc(G.mscs.root_len);
  memcpy(cfg.ca_bundle_pem, G.mscs.root_pem, G.mscs.root_len);
  cfg.ca_bundle_len = G.mscs.root_len;
  outcome_t o = submit_cfg(CAPSTAN_ISSUER_EST, &cfg, &G.est, NULL);
  expect(&o, CAPSTAN_CA_UNAVAILABLE, "TLS: certificate verify failed");
  /* No bundle: the system's anchors, which do not hold the test CA either. */
  free(cfg.ca_bundle_pem);
  cfg.ca_bundle_pem = NULL;
  cfg.ca_bundle_len = 0;
  o = submit_cfg(CAPSTAN_ISSUER_EST, &cfg, &G.est, NULL);
  expect(&o, CAPSTAN_CA_UNAVAILABLE, "TLS: certificate verify failed");
  /* A bundle without a certificate is refused when the client is made. */
  cfg.ca_bundle_pem = (uint8_t *)strdup("not a certificate\n");
  cfg.ca_bundle_len = strlen((char *)cfg.ca_bundle_pem);
  char err[256];
  assert_null(capstan_ca_client_new(&G.loop, CAPSTAN_ISSUER_EST, &cfg, err, sizeof err));
  assert_string_equal(err, "TLS: the CA bundle holds no PEM certificate");
  capstan_ca_config_cleanup(&cfg);
}

static void test_tls_host_name_mismatch(void **state) {
  (void)state;
  /* The test CA's TLS certificate names localhost and 127.0.0.1. This
   * machine's own name, when it resolves to 127.0.0.1, reaches the same
   * listener under a name the certificate does not hold. */
  char host[256];
  assert_int_equal(gethostname(host, sizeof host), 0);
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_INET;
  int usable = strcmp(host, "localhost") != 0 && getaddrinfo(host, NULL, &hints, &res) == 0 &&
               res && ((struct sockaddr_in *)res->ai_addr)->sin_addr.s_addr == htonl(0x7f000001);
  if (res) freeaddrinfo(res);
  if (!usable) {
    /* Not silent: the run says this case was not exercised here. */
    fprintf(stderr,
            "NOTE: this host's name (%s) does not resolve to 127.0.0.1: host name "
            "mismatch NOT exercised in this run\n",
            host);
    return;
  }
  reset(&G.est);
  capstan_ca_config_t cfg;
  config_for(&cfg, &G.est);
  snprintf(cfg.url, sizeof cfg.url, "https://%s:%d", host, G.est.port);
  outcome_t o = submit_cfg(CAPSTAN_ISSUER_EST, &cfg, &G.est, NULL);
  expect(&o, CAPSTAN_CA_UNAVAILABLE, "TLS: certificate verify failed");
  assert_non_null(strstr(o.reason, "ostname mismatch"));
  /* localhost is in the certificate: the same CA is fine under that name. */
  snprintf(cfg.url, sizeof cfg.url, "https://localhost:%d", G.est.port);
  o = submit_cfg(CAPSTAN_ISSUER_EST, &cfg, &G.est, NULL);
  expect(&o, CAPSTAN_CA_ISSUED, NULL);
  capstan_ca_config_cleanup(&cfg);
}

/* A loopback port that was just free: bound, read, closed. */
static void closed_port(struct sockaddr_in *a) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  memset(a, 0, sizeof *a);
  a->sin_family = AF_INET;
  a->sin_addr.s_addr = htonl(0x7f000001);
  assert_int_equal(bind(s, (struct sockaddr *)a, sizeof *a), 0);
  socklen_t al = sizeof *a;
  getsockname(s, (struct sockaddr *)a, &al);
  close(s);
}

/* The CA's name is resolved once per CA_ADDR_CACHE_SECONDS (the resolver
 * runs on the thread pool the phones' work queues on), an address literal
 * never, and a cache whose addresses all fail is dropped. */
static void test_addresses_resolved_once(void **state) {
  (void)state;
  ca_addr_cache_t cache;
  memset(&cache, 0, sizeof cache);
  struct addrinfo *l = ca_addr_list("127.0.0.1", 443, NULL, 0);
  assert_non_null(l);
  assert_int_equal(l->ai_family, AF_INET);
  assert_int_equal(ntohs(((struct sockaddr_in *)l->ai_addr)->sin_port), 443);
  assert_null(l->ai_next);
  ca_addr_list_free(l);
  l = ca_addr_list("::1", 8443, NULL, 0);
  assert_non_null(l);
  assert_int_equal(l->ai_family, AF_INET6);
  assert_int_equal(ntohs(((struct sockaddr_in6 *)l->ai_addr)->sin6_port), 8443);
  ca_addr_list_free(l);
  assert_null(ca_addr_list("localhost", 443, NULL, 0));   /* no cache: resolve */
  assert_null(ca_addr_list("localhost", 443, &cache, 0)); /* empty cache: resolve */

  /* A name is resolved on the first exchange and kept. */
  char err[200];
  assert_int_equal(control_via(&G.est, "localhost", &cache, err, sizeof err), CA_HTTP_ANSWERED);
  assert_true(cache.count >= 1);
  uint64_t now = uv_now(&G.loop);
  assert_true(cache.expires_ms > now && cache.expires_ms <= now + CA_ADDR_CACHE_SECONDS * 1000u);
  l = ca_addr_list("localhost", (uint16_t)G.est.port, &cache, now);
  assert_non_null(l);
  ca_addr_list_free(l);
  assert_null(ca_addr_list("localhost", 443, &cache, cache.expires_ms)); /* expired */

  /* The next exchange connects to the cached addresses without resolving:
   * a cache that points elsewhere (a closed port on 127.0.0.1) shows it. */
  struct sockaddr_in a;
  closed_port(&a);
  memcpy(&cache.addr[0], &a, sizeof a);
  cache.len[0] = sizeof a;
  cache.count = 1;
  assert_int_equal(control_via(&G.est, "localhost", &cache, err, sizeof err), CA_HTTP_FAILED);
  assert_non_null(strstr(err, "connection refused"));
  assert_int_equal(cache.count, 0); /* dropped: every cached address failed */
  /* ... so the one after resolves again and reaches the CA. */
  assert_int_equal(control_via(&G.est, "localhost", &cache, err, sizeof err), CA_HTTP_ANSWERED);
  assert_true(cache.count >= 1);
}

static void test_connection_refused(void **state) {
  (void)state;
  struct sockaddr_in a;
  closed_port(&a);
  capstan_ca_config_t cfg;
  config_for(&cfg, &G.est);
  snprintf(cfg.url, sizeof cfg.url, "https://127.0.0.1:%d", ntohs(a.sin_port));
  outcome_t o = submit_cfg(CAPSTAN_ISSUER_EST, &cfg, &G.est, NULL);
  char want[100];
  snprintf(want, sizeof want, "connect to 127.0.0.1:%d: connection refused", ntohs(a.sin_port));
  expect(&o, CAPSTAN_CA_UNAVAILABLE, want);
  assert_true(capstan_metric_value(capstan_metrics_gauge(
                  "capstan_ca_up", "1 when the last exchange reached the online CA", "")) == 0);
  capstan_ca_config_cleanup(&cfg);
}

static void stop_loop(uv_timer_t *t) {
  uv_stop(t->loop);
}

static void test_cancel_in_flight(void **state) {
  (void)state;
  reset(&G.est);
  control(&G.est, "{\"mode\": \"stall\", \"stall_seconds\": 3}");
  capstan_ca_config_t cfg;
  config_for(&cfg, &G.est);
  char err[256];
  capstan_ca_client_t *c =
      capstan_ca_client_new(&G.loop, CAPSTAN_ISSUER_EST, &cfg, err, sizeof err);
  assert_non_null(c);
  outcome_t o1, o2;
  memset(&o1, 0, sizeof o1);
  memset(&o2, 0, sizeof o2);
  capstan_ca_request_t *r1 = capstan_ca_submit(c, DEVICE, G.csr, G.csr_len, G.spki, G.spki_len,
                                               NULL, G.est.trust, on_done, &o1);
  capstan_ca_request_t *r2 = capstan_ca_submit(c, DEVICE, G.csr, G.csr_len, G.spki, G.spki_len,
                                               NULL, G.est.trust, on_done, &o2);
  assert_non_null(r1);
  assert_non_null(r2);
  capstan_ca_health_t h;
  capstan_ca_client_health(c, &h);
  assert_int_equal(h.in_flight, 2);
  /* Cancel one right away (still resolving) and one mid-exchange. */
  capstan_ca_cancel(r1);
  uv_timer_t t;
  uv_timer_init(&G.loop, &t);
  uv_timer_start(&t, stop_loop, 500, 0);
  uv_run(&G.loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&t, NULL);
  capstan_ca_cancel(r2);
  capstan_ca_client_health(c, &h);
  assert_int_equal(h.in_flight, 0);
  /* A third request left in flight is cancelled by the client's free. */
  outcome_t o3;
  memset(&o3, 0, sizeof o3);
  assert_non_null(capstan_ca_submit(c, DEVICE, G.csr, G.csr_len, G.spki, G.spki_len, NULL,
                                    G.est.trust, on_done, &o3));
  capstan_ca_client_free(c);
  uv_run(&G.loop, UV_RUN_DEFAULT);
  assert_int_equal(o1.called + o2.called + o3.called, 0);
  capstan_ca_config_cleanup(&cfg);
}

/* max_requests 2: four requests to a CA that answers each after 1 s run two
 * at a time (the last two cannot finish before 2 s); a queued request
 * cancelled gets no callback and frees its place. */
static void test_requests_at_once_are_bounded(void **state) {
  (void)state;
  reset(&G.est);
  control(&G.est, "{\"mode\": \"stall\", \"stall_seconds\": 1}");
  capstan_ca_config_t cfg;
  config_for(&cfg, &G.est);
  cfg.max_requests = 2;
  char err[256];
  capstan_ca_client_t *c =
      capstan_ca_client_new(&G.loop, CAPSTAN_ISSUER_EST, &cfg, err, sizeof err);
  assert_non_null(c);
  outcome_t o[5];
  double done_at[5];
  memset(o, 0, sizeof o);
  capstan_ca_request_t *r[5];
  double t0 = capstan_now_seconds();
  for (int i = 0; i < 5; i++) {
    r[i] = capstan_ca_submit(c, DEVICE, G.csr, G.csr_len, G.spki, G.spki_len, NULL, G.est.trust,
                             on_done, &o[i]);
    assert_non_null(r[i]);
  }
  capstan_ca_cancel(r[3]); /* queued: dropped without a callback */
  capstan_ca_health_t h;
  capstan_ca_client_health(c, &h);
  assert_int_equal(h.in_flight, 4);
  int idx[] = {0, 1, 2, 4};
  time_t deadline = time(NULL) + 30;
  for (int k = 0; k < 4; k++) {
    while (!o[idx[k]].called && time(NULL) < deadline) uv_run(&G.loop, UV_RUN_ONCE);
    assert_int_equal(o[idx[k]].called, 1);
    done_at[idx[k]] = capstan_now_seconds() - t0;
    expect(&o[idx[k]], CAPSTAN_CA_ISSUED, "issued");
  }
  assert_int_equal(o[3].called, 0);
  /* The queued two started only when the first two were done. */
  assert_true(done_at[2] >= 1.9);
  assert_true(done_at[4] >= 1.9);
  capstan_ca_client_health(c, &h);
  assert_int_equal(h.in_flight, 0);
  capstan_ca_client_free(c);
  uv_run(&G.loop, UV_RUN_DEFAULT);
  capstan_ca_config_cleanup(&cfg);
}

static void test_fetch_chain_on_the_loop(void **state) {
  (void)state;
  const test_ca_t *cas[] = {&G.est_int, &G.mscs};
  capstan_issuer_t issuers[] = {CAPSTAN_ISSUER_EST, CAPSTAN_ISSUER_MSCS};
  size_t want[] = {2, 1};
  for (int i = 0; i < 2; i++) {
    reset(cas[i]);
    capstan_ca_config_t cfg;
    config_for(&cfg, cas[i]);
    char err[256];
    capstan_ca_client_t *c = capstan_ca_client_new(&G.loop, issuers[i], &cfg, err, sizeof err);
    assert_non_null(c);
    outcome_t o;
    memset(&o, 0, sizeof o);
    assert_non_null(capstan_ca_fetch_chain(c, on_done, &o));
    assert_int_equal(o.called, 0);
    run_until(&o);
    expect(&o, CAPSTAN_CA_ISSUED, "CA chain");
    assert_int_equal(o.chain_count, want[i]);
    assert_false(o.has_cert);
    capstan_ca_client_free(c);
    uv_run(&G.loop, UV_RUN_DEFAULT);
    capstan_ca_config_cleanup(&cfg);
  }
}

typedef struct free_in_done {
  capstan_ca_client_t *client;
  int called;
} free_in_done_t;

static void done_frees_client(capstan_ca_request_t *req, const capstan_ca_result_t *r, void *data) {
  (void)req;
  (void)r;
  free_in_done_t *f = data;
  f->called++;
  capstan_ca_client_free(f->client); /* the other request is cancelled */
}

static void test_done_may_free_the_client(void **state) {
  (void)state;
  reset(&G.est);
  capstan_ca_config_t cfg;
  config_for(&cfg, &G.est);
  char err[256];
  free_in_done_t f = {capstan_ca_client_new(&G.loop, CAPSTAN_ISSUER_EST, &cfg, err, sizeof err), 0};
  assert_non_null(f.client);
  assert_non_null(capstan_ca_fetch_chain(f.client, done_frees_client, &f));
  assert_non_null(capstan_ca_fetch_chain(f.client, done_frees_client, &f));
  time_t deadline = time(NULL) + 30;
  while (!f.called && time(NULL) < deadline) uv_run(&G.loop, UV_RUN_ONCE);
  uv_run(&G.loop, UV_RUN_DEFAULT);
  assert_int_equal(f.called, 1);
  capstan_ca_config_cleanup(&cfg);
}

static void test_run_sync_chain_est(void **state) {
  (void)state;
  reset(&G.est_int);
  capstan_ca_config_t cfg;
  config_for(&cfg, &G.est_int);
  capstan_ca_result_t r;
  int rc = capstan_ca_run_sync(CAPSTAN_ISSUER_EST, &cfg, CAPSTAN_CA_OP_CHAIN, &r);
  if (rc != 0) fail_msg("run_sync: %s", r.reason);
  assert_int_equal(r.outcome, CAPSTAN_CA_ISSUED);
  assert_int_equal(r.chain_count, 2);
  capstan_ca_result_cleanup(&r);
  assert_int_equal(capstan_ca_run_sync(CAPSTAN_ISSUER_EST, &cfg, CAPSTAN_CA_OP_AUTH, &r), 0);
  capstan_ca_result_cleanup(&r);
  capstan_ca_config_cleanup(&cfg);
  /* Not https: refused before any connection. */
  capstan_ca_config_init(&cfg);
  snprintf(cfg.url, sizeof cfg.url, "http://127.0.0.1:1");
  assert_int_equal(capstan_ca_run_sync(CAPSTAN_ISSUER_EST, &cfg, CAPSTAN_CA_OP_CHAIN, &r),
                   CAPSTAN_EINVAL);
  assert_string_equal(r.reason, "the CA URL must start with https://");
  capstan_ca_result_cleanup(&r);
}

/* ---- certsrv ---------------------------------------------------------------------- */

static void test_mscs_issue(void **state) {
  (void)state;
  reset(&G.mscs);
  outcome_t o = submit(CAPSTAN_ISSUER_MSCS, &G.mscs, NULL);
  expect(&o, CAPSTAN_CA_ISSUED, NULL);
  assert_true(o.has_cert && o.cert_matches);
  assert_int_equal(o.chain_count, 1); /* fetched: no chain configured */
}

static void test_mscs_plain_link(void **state) {
  (void)state;
  reset(&G.mscs);
  control(&G.mscs, "{\"issued_link\": \"plain\"}");
  outcome_t o = submit(CAPSTAN_ISSUER_MSCS, &G.mscs, NULL);
  expect(&o, CAPSTAN_CA_ISSUED, NULL);
  control(&G.mscs, "{\"issued_link\": \"amp\"}");
  o = submit(CAPSTAN_ISSUER_MSCS, &G.mscs, NULL);
  expect(&o, CAPSTAN_CA_ISSUED, NULL);
  control(&G.mscs, "{\"issued_link\": \"both\"}");
}

static void test_mscs_pending_then_poll(void **state) {
  (void)state;
  reset(&G.mscs);
  control(&G.mscs, "{\"mode\": \"pending\", \"pending_polls\": 1}");
  int64_t now = (int64_t)time(NULL);
  outcome_t o = submit(CAPSTAN_ISSUER_MSCS, &G.mscs, NULL);
  expect(&o, CAPSTAN_CA_PENDING, NULL);
  assert_true(o.request_id[0] != 0);
  assert_true(o.retry_at >= now + 59 && o.retry_at <= now + 62);
  char reqid[CAPSTAN_CA_REQUEST_ID_MAX + 1];
  snprintf(reqid, sizeof reqid, "%s", o.request_id);
  o = submit(CAPSTAN_ISSUER_MSCS, &G.mscs, reqid); /* still pending */
  expect(&o, CAPSTAN_CA_PENDING, NULL);
  assert_string_equal(o.request_id, reqid);
  o = submit(CAPSTAN_ISSUER_MSCS, &G.mscs, reqid);
  expect(&o, CAPSTAN_CA_ISSUED, NULL);
  assert_true(o.cert_matches);
}

static void test_mscs_denied(void **state) {
  (void)state;
  reset(&G.mscs);
  control(&G.mscs, "{\"mode\": \"refuse\", \"message\": \"Denied by Policy Module  0x80094012\"}");
  outcome_t o = submit(CAPSTAN_ISSUER_MSCS, &G.mscs, NULL);
  expect(&o, CAPSTAN_CA_REFUSED, "CA refused: Denied by Policy Module 0x80094012");
}

static void test_mscs_template_refused(void **state) {
  (void)state;
  reset(&G.mscs);
  capstan_ca_config_t cfg;
  config_for(&cfg, &G.mscs);
  snprintf(cfg.template_name, sizeof cfg.template_name, "WebServer");
  outcome_t o = submit_cfg(CAPSTAN_ISSUER_MSCS, &cfg, &G.mscs, NULL);
  expect(&o, CAPSTAN_CA_REFUSED, "0x80094800");
  capstan_ca_config_cleanup(&cfg);
}

static void test_mscs_wrong_key_and_password(void **state) {
  (void)state;
  reset(&G.mscs);
  control(&G.mscs, "{\"mode\": \"wrong-key\"}");
  outcome_t o = submit(CAPSTAN_ISSUER_MSCS, &G.mscs, NULL);
  expect(&o, CAPSTAN_CA_BAD_CERT, "CA returned a certificate for another key");
  reset(&G.mscs);
  capstan_ca_config_t cfg;
  config_for(&cfg, &G.mscs);
  snprintf(cfg.password, sizeof cfg.password, "wrong");
  o = submit_cfg(CAPSTAN_ISSUER_MSCS, &cfg, &G.mscs, NULL);
  expect(&o, CAPSTAN_CA_REFUSED, "401");
  capstan_ca_config_cleanup(&cfg);
}

static void test_run_sync_mscs(void **state) {
  (void)state;
  reset(&G.mscs);
  capstan_ca_config_t cfg;
  config_for(&cfg, &G.mscs);
  capstan_ca_result_t r;
  int rc = capstan_ca_run_sync(CAPSTAN_ISSUER_MSCS, &cfg, CAPSTAN_CA_OP_CHAIN, &r);
  if (rc != 0) fail_msg("run_sync: %s", r.reason);
  assert_int_equal(r.chain_count, 1);
  capstan_ca_result_cleanup(&r);
  assert_int_equal(capstan_ca_run_sync(CAPSTAN_ISSUER_MSCS, &cfg, CAPSTAN_CA_OP_AUTH, &r), 0);
  capstan_ca_result_cleanup(&r);
  snprintf(cfg.password, sizeof cfg.password, "wrong");
  assert_int_equal(capstan_ca_run_sync(CAPSTAN_ISSUER_MSCS, &cfg, CAPSTAN_CA_OP_CHAIN, &r),
                   CAPSTAN_EIO);
  expect(&(outcome_t){.outcome = r.outcome}, CAPSTAN_CA_REFUSED, NULL);
  capstan_ca_result_cleanup(&r);
  capstan_ca_config_cleanup(&cfg);
}

/* ---- parsing on its own (hostile input) ------------------------------------------ */

static void test_retry_after_parsing(void **state) {
  (void)state;
  int64_t now = 1700000000;
  assert_int_equal(ca_retry_after_seconds("30", now), 30);
  assert_int_equal(ca_retry_after_seconds("", now), 60);
  assert_int_equal(ca_retry_after_seconds("soon", now), 60);
  assert_int_equal(ca_retry_after_seconds("12x", now), 60);
  assert_int_equal(ca_retry_after_seconds("0", now), 1);
  assert_int_equal(ca_retry_after_seconds("99999999999999999999", now), 86400);
  /* 1700000000 is Tue, 14 Nov 2023 22:13:20 GMT. */
  assert_int_equal(ca_retry_after_seconds("Tue, 14 Nov 2023 22:15:20 GMT", now), 120);
  assert_int_equal(ca_retry_after_seconds("Tue, 14 Nov 2023 22:00:00 GMT", now), 1);
}

static void test_lenient_base64(void **state) {
  (void)state;
  size_t n;
  const char *in = " aGVs\r\nbG8g\nd29y bGQ=\r\n";
  uint8_t *out = ca_base64_decode_lenient((const uint8_t *)in, strlen(in), &n);
  assert_non_null(out);
  assert_int_equal(n, 11);
  assert_memory_equal(out, "hello world", 11);
  free(out);
  out = ca_base64_decode_lenient((const uint8_t *)"aGVsbG8", 7, &n); /* no padding */
  assert_non_null(out);
  assert_int_equal(n, 5);
  free(out);
  assert_null(ca_base64_decode_lenient((const uint8_t *)"<html>", 6, &n));
  assert_null(ca_base64_decode_lenient((const uint8_t *)"aGVs=bG8=", 9, &n));
}

static void page(const char *body, ca_http_response_t *resp) {
  memset(resp, 0, sizeof *resp);
  resp->status = 200;
  resp->body = (uint8_t *)body;
  resp->body_len = strlen(body);
}

static void test_mscs_pages(void **state) {
  (void)state;
  ca_http_response_t resp;
  capstan_ca_result_t r;
  char id[CAPSTAN_CA_REQUEST_ID_MAX + 1];
  memset(&r, 0, sizeof r);
  page("<a href=\"certnew.cer?ReqID=42&amp;Enc=b64\">", &resp);
  assert_int_equal(ca_mscs_submit_answer(&resp, 0, &r, id, sizeof id), 1);
  assert_string_equal(id, "42");
  page("certnew.cer?ReqID=&x certnew.cer?ReqID=7&", &resp);
  assert_int_equal(ca_mscs_submit_answer(&resp, 0, &r, id, sizeof id), 1);
  assert_string_equal(id, "7");
  page("certnew.cer?ReqID=12345678901234567890123456789012345678901234567890123456789012345&",
       &resp); /* too long a ReqID */
  assert_int_equal(ca_mscs_submit_answer(&resp, 0, &r, id, sizeof id), 0);
  assert_int_equal(r.outcome, CAPSTAN_CA_UNAVAILABLE);
  page("Certificate Pending ... Your Request Id is 19.", &resp);
  assert_int_equal(ca_mscs_submit_answer(&resp, 100, &r, id, sizeof id), 0);
  assert_int_equal(r.outcome, CAPSTAN_CA_PENDING);
  assert_string_equal(r.request_id, "19");
  assert_int_equal(r.retry_at, 160);
  page("Certificate Pending, no id", &resp);
  ca_mscs_submit_answer(&resp, 0, &r, id, sizeof id);
  assert_int_equal(r.outcome, CAPSTAN_CA_UNAVAILABLE);
  page("The disposition message is \"a &quot;b&quot;\x01\nc", &resp); /* unterminated */
  ca_mscs_submit_answer(&resp, 0, &r, id, sizeof id);
  assert_int_equal(r.outcome, CAPSTAN_CA_REFUSED);
  assert_string_equal(r.reason, "CA refused: a \"b\"?");
  page("<html>nothing known</html>", &resp);
  ca_mscs_submit_answer(&resp, 0, &r, id, sizeof id);
  assert_int_equal(r.outcome, CAPSTAN_CA_UNAVAILABLE);
  page("<html>Error</html>", &resp);
  resp.status = 500;
  ca_mscs_submit_answer(&resp, 0, &r, id, sizeof id);
  assert_int_equal(r.outcome, CAPSTAN_CA_REFUSED);
  assert_string_equal(r.reason, "CA refused: 500");
  page("<html>... Taken Under Submission 0x80094003 ...</html>", &resp);
  ca_mscs_cert_answer(&resp, "5", 0, &r);
  assert_int_equal(r.outcome, CAPSTAN_CA_PENDING);
  page("<html>who knows</html>", &resp);
  ca_mscs_cert_answer(&resp, "5", 0, &r);
  assert_int_equal(r.outcome, CAPSTAN_CA_UNAVAILABLE);
  page("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", &resp);
  ca_mscs_cert_answer(&resp, "5", 0, &r);
  assert_int_equal(r.outcome, CAPSTAN_CA_UNAVAILABLE);
  assert_null(r.cert_der);
}

static void test_est_garbage_answers(void **state) {
  (void)state;
  ca_http_response_t resp;
  capstan_ca_result_t r;
  memset(&r, 0, sizeof r);
  page("<html>not base64</html>", &resp);
  ca_est_enroll_answer(&resp, G.spki, G.spki_len, 0, &r);
  assert_int_equal(r.outcome, CAPSTAN_CA_UNAVAILABLE);
  page("aGVsbG8gd29ybGQ=", &resp); /* base64, not PKCS#7 */
  ca_est_enroll_answer(&resp, G.spki, G.spki_len, 0, &r);
  assert_int_equal(r.outcome, CAPSTAN_CA_UNAVAILABLE);
  page("\r\n\r\nService Unavailable\r\nmore", &resp);
  resp.status = 503;
  ca_est_enroll_answer(&resp, G.spki, G.spki_len, 0, &r);
  assert_int_equal(r.outcome, CAPSTAN_CA_REFUSED);
  assert_string_equal(r.reason, "CA refused: 503 Service Unavailable");
  capstan_ca_result_cleanup(&r);
}

static void test_config_validation(void **state) {
  (void)state;
  capstan_ca_config_t cfg;
  capstan_ca_config_init(&cfg);
  char err[256];
  static const struct {
    const char *url;
    const char *why;
  } bad[] = {
      {"", "https://"},
      {"http://ca", "https://"},
      {"https://", "no host"},
      {"https://ca:0", "port"},
      {"https://ca:70000", "port"},
      {"https://ca/x?y", "path"},
      {"https://ca x/", "invalid character"},
      {"https://user@ca/", "invalid character"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    snprintf(cfg.url, sizeof cfg.url, "%s", bad[i].url);
    assert_null(capstan_ca_client_new(&G.loop, CAPSTAN_ISSUER_EST, &cfg, err, sizeof err));
    if (!strstr(err, bad[i].why)) fail_msg("%s: %s", bad[i].url, err);
  }
  snprintf(cfg.url, sizeof cfg.url, "https://[::1]:8443/est/");
  capstan_ca_client_t *c =
      capstan_ca_client_new(&G.loop, CAPSTAN_ISSUER_EST, &cfg, err, sizeof err);
  assert_non_null(c);
  capstan_ca_client_free(c);
  /* certsrv needs a template. */
  assert_null(capstan_ca_client_new(&G.loop, CAPSTAN_ISSUER_MSCS, &cfg, err, sizeof err));
  assert_non_null(strstr(err, "template"));
  assert_null(capstan_ca_client_new(&G.loop, CAPSTAN_ISSUER_CAPF, &cfg, err, sizeof err));
  snprintf(cfg.label, sizeof cfg.label, "a/b");
  assert_null(capstan_ca_client_new(&G.loop, CAPSTAN_ISSUER_EST, &cfg, err, sizeof err));
  capstan_ca_config_cleanup(&cfg);
}

/* ---- a hostile HTTPS server: answers no CA would give ---------------------------- */

/* Python (stdlib only) on loopback; the first path segment picks the
 * answer. Each connection in its own thread, so a silent one blocks none. */
static const char HOSTILE_PY[] =
    "import socket, ssl, sys, threading, time\n"
    "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
    "ctx.load_cert_chain(sys.argv[1], sys.argv[2])\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(16)\n"
    "ANSWERS = {\n"
    "  b'/big/': b'HTTP/1.1 200 OK\\r\\nContent-Length: 2097152\\r\\n\\r\\n' + b'A' * 2097152,\n"
    "  b'/garbage/': b'SMTP ready\\r\\n\\r\\n',\n"
    "  b'/eof/': b'HTTP/1.1 403 Forbidden\\r\\nContent-Type: text/plain\\r\\n\\r\\nnot you\\n',\n"
    "  b'/midway/': b'HTTP/1.1 200 OK\\r\\nContent-Length: 100\\r\\n\\r\\nshort',\n"
    "  b'/headers/': b'HTTP/1.1 200 OK\\r\\nX-Big: ' + b'h' * 200000 + b'\\r\\n\\r\\n',\n"
    "}\n"
    "def serve(c):\n"
    "    try:\n"
    "        t = ctx.wrap_socket(c, server_side=True)\n"
    "        data = b''\n"
    "        while b'\\r\\n\\r\\n' not in data:\n"
    "            d = t.recv(65536)\n"
    "            if not d: break\n"
    "            data += d\n"
    "        path = data.split(b' ')[1] if data.count(b' ') > 1 else b'/'\n"
    "        for k, v in ANSWERS.items():\n"
    "            if path.startswith(k):\n"
    "                t.sendall(v)\n"
    "        if path.startswith(b'/silent/'): time.sleep(5)\n"
    "    except Exception:\n"
    "        pass\n"
    "    finally:\n"
    "        c.close()\n"
    "print('{\"port\": %d}' % s.getsockname()[1], flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    threading.Thread(target=serve, args=(c,), daemon=True).start()\n";

/* A self-signed EC certificate for 127.0.0.1, written as cert.pem/key.pem. */
static void hostile_cert(const char *cert_path, const char *key_path) {
  EVP_PKEY *key = EVP_PKEY_new();
  EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
  assert_int_equal(EC_KEY_generate_key(ec), 1);
  EVP_PKEY_assign_EC_KEY(key, ec);
  X509 *x = X509_new();
  X509_set_version(x, X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
  X509_NAME *name = X509_NAME_new();
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const uint8_t *)"hostile", -1, -1, 0);
  X509_set_subject_name(x, name);
  X509_set_issuer_name(x, name);
  X509_NAME_free(name);
  ASN1_TIME_set(X509_getm_notBefore(x), time(NULL) - 3600);
  ASN1_TIME_set(X509_getm_notAfter(x), time(NULL) + 86400);
  X509_set_pubkey(x, key);
  X509V3_CTX v3;
  X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
  X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &v3, NID_subject_alt_name, "IP:127.0.0.1");
  assert_non_null(ext);
  X509_add_ext(x, ext, -1);
  X509_EXTENSION_free(ext);
  assert_true(X509_sign(x, key, EVP_sha256()) > 0);
  BIO *b = BIO_new_file(cert_path, "w");
  PEM_write_bio_X509(b, x);
  BIO_free(b);
  b = BIO_new_file(key_path, "w");
  PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL);
  BIO_free(b);
  X509_free(x);
  EVP_PKEY_free(key);
}

static void start_hostile(void) {
  char cert[300], key[300], err[300];
  snprintf(cert, sizeof cert, "%s/hostile-cert.pem", G.tmp);
  snprintf(key, sizeof key, "%s/hostile-key.pem", G.tmp);
  snprintf(err, sizeof err, "%s/hostile-stderr.log", G.tmp);
  hostile_cert(cert, key);
  char *argv[] = {"/usr/bin/python3", "-c", (char *)HOSTILE_PY, cert, key, NULL};
  H.pid = spawn_ready(argv, err, &H.port);
  H.cert_pem = read_file(cert, &H.cert_len);
  assert_non_null(H.cert_pem);
}

static capstan_ca_result_t hostile(const char *mode, unsigned timeout) {
  capstan_ca_config_t cfg;
  capstan_ca_config_init(&cfg);
  snprintf(cfg.url, sizeof cfg.url, "https://127.0.0.1:%d/%s", H.port, mode);
  cfg.ca_bundle_pem = malloc(H.cert_len);
  memcpy(cfg.ca_bundle_pem, H.cert_pem, H.cert_len);
  cfg.ca_bundle_len = H.cert_len;
  cfg.timeout_seconds = timeout;
  capstan_ca_result_t r;
  assert_int_not_equal(capstan_ca_run_sync(CAPSTAN_ISSUER_EST, &cfg, CAPSTAN_CA_OP_CHAIN, &r), 0);
  capstan_ca_config_cleanup(&cfg);
  return r;
}

static void expect_result(capstan_ca_result_t *r, capstan_ca_outcome_t want, const char *part) {
  if (r->outcome != want || !strstr(r->reason, part)) {
    fail_msg("expected %s \"%s\", got %s \"%s\"", capstan_ca_outcome_name(want), part,
             capstan_ca_outcome_name(r->outcome), r->reason);
  }
  capstan_ca_result_cleanup(r);
}

static void test_hostile_answers(void **state) {
  (void)state;
  capstan_ca_result_t r = hostile("big", 10);
  expect_result(&r, CAPSTAN_CA_UNAVAILABLE, "larger than 1048576 bytes");
  r = hostile("garbage", 10);
  expect_result(&r, CAPSTAN_CA_UNAVAILABLE, "not valid HTTP");
  r = hostile("headers", 10);
  expect_result(&r, CAPSTAN_CA_UNAVAILABLE, "not valid HTTP");
  r = hostile("midway", 10);
  expect_result(&r, CAPSTAN_CA_UNAVAILABLE, "in the middle of its answer");
  /* A body that ends with the connection (no length, no close_notify). */
  r = hostile("eof", 10);
  expect_result(&r, CAPSTAN_CA_REFUSED, "CA refused: 403 not you");
  r = hostile("silent", 1);
  expect_result(&r, CAPSTAN_CA_TIMED_OUT, "CA timed out");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_retry_after_parsing),
      cmocka_unit_test(test_lenient_base64),
      cmocka_unit_test(test_mscs_pages),
      cmocka_unit_test(test_est_garbage_answers),
      cmocka_unit_test(test_config_validation),
      cmocka_unit_test(test_est_issue),
      cmocka_unit_test(test_est_issue_with_chain_picked_by_key),
      cmocka_unit_test(test_est_pending_seconds_then_issued),
      cmocka_unit_test(test_est_pending_http_date),
      cmocka_unit_test(test_est_refuse),
      cmocka_unit_test(test_est_stall_times_out),
      cmocka_unit_test(test_est_hangup),
      cmocka_unit_test(test_est_wrong_certificates),
      cmocka_unit_test(test_est_wrong_password),
      cmocka_unit_test(test_tls_bundle_without_the_issuer),
      cmocka_unit_test(test_tls_host_name_mismatch),
      cmocka_unit_test(test_addresses_resolved_once),
      cmocka_unit_test(test_connection_refused),
      cmocka_unit_test(test_cancel_in_flight),
      cmocka_unit_test(test_requests_at_once_are_bounded),
      cmocka_unit_test(test_fetch_chain_on_the_loop),
      cmocka_unit_test(test_done_may_free_the_client),
      cmocka_unit_test(test_run_sync_chain_est),
      cmocka_unit_test(test_mscs_issue),
      cmocka_unit_test(test_mscs_plain_link),
      cmocka_unit_test(test_mscs_pending_then_poll),
      cmocka_unit_test(test_mscs_denied),
      cmocka_unit_test(test_mscs_template_refused),
      cmocka_unit_test(test_mscs_wrong_key_and_password),
      cmocka_unit_test(test_run_sync_mscs),
      cmocka_unit_test(test_hostile_answers),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
