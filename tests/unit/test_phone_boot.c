/* Tests of the simulated phone's boot sequence (bench/phone: downloads over
 * HTTP and TFTP, ITL and configuration checks, CAPF enrollment, encrypted
 * configuration) against the real server: the test starts the `capstan`
 * binary next to its own executable on loopback ports chosen by the kernel,
 * with a fresh data directory, and stops it at the end.
 *
 * The download clients are also checked against small hostile servers
 * written here (a thread with a blocking socket that sends one canned
 * answer), for the failures a real server does not produce.
 *
 * Every wait is bounded: server start-up, each download (timeouts), each
 * CAPF step, and the server's exit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/x509.h>

#include "bench/phone/phone.h"
#include "bench/phone/phone_pki.h"
#include "core/base/error.h"
#include "core/files/encconf.h"
#include "core/files/itl.h"
#include "core/files/sgnhdr.h"
#include "core/pki/pki.h"

#define START_TIMEOUT_MS 60000
#define STOP_TIMEOUT_MS 15000
#define STEP_TIMEOUT_MS 20000

#define DEV_HTTP "SEP00112233AA01" /* install, null, encrypted configuration */
#define DEV_TFTP "SEP00112233AA02" /* install, null, encrypted configuration */
#define DEV_NONE "SEP00112233AA03" /* no operation, plain configuration */
#define DEV_UNKNOWN "SEP00112233AAFF"

static char g_bin[PATH_MAX];
static char g_dir[64];
static pid_t g_server = -1;
static int g_http_port, g_tftp_port, g_capf_port;

/* ---- The server ------------------------------------------------------------ */

static int run_cli(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run_cli(const char *fmt, ...) {
  char args[1024], cmd[PATH_MAX + 1200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof(args), fmt, ap);
  va_end(ap);
  snprintf(cmd, sizeof(cmd), "'%s' %s --data-dir '%s' >/dev/null 2>&1", g_bin, args, g_dir);
  return system(cmd);
}

static int find_int(const char *line, const char *key, int *out) {
  const char *p = strstr(line, key);
  if (p == NULL) return 0;
  *out = atoi(p + strlen(key));
  return *out > 0;
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Starts `capstan serve` with its stderr in a log file, and reads the log
 * until event=ready. */
static int start_server(void) {
  char log[128];
  snprintf(log, sizeof(log), "%s/server.log", g_dir);
  g_server = fork();
  if (g_server < 0) return -1;
  if (g_server == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) _exit(127);
    dup2(fd, 2);
    close(fd);
    execl(g_bin, g_bin, "serve", "--init", "--data-dir", g_dir, "--capf-listen", "127.0.0.1:0",
          "--admin-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--tftp-listen",
          "127.0.0.1:0", (char *)NULL);
    _exit(127);
  }
  char buf[16384];
  long deadline = now_ms() + START_TIMEOUT_MS;
  while (now_ms() < deadline) {
    usleep(50000);
    FILE *f = fopen(log, "r");
    if (f == NULL) continue;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *line = strstr(buf, "event=listeners");
    if (line != NULL) {
      find_int(line, "http_port=", &g_http_port);
      find_int(line, "tftp_port=", &g_tftp_port);
    }
    line = strstr(buf, "event=ready");
    if (line != NULL && strchr(line, '\n') != NULL && find_int(line, "capf_port=", &g_capf_port) &&
        g_http_port > 0 && g_tftp_port > 0) {
      return 0;
    }
    int status;
    if (waitpid(g_server, &status, WNOHANG) == g_server) {
      g_server = -1;
      break;
    }
  }
  fprintf(stderr, "capstan serve did not get ready; log:\n%s\n", buf);
  return -1;
}

static void stop_server(void) {
  if (g_server <= 0) return;
  kill(g_server, SIGTERM);
  long deadline = now_ms() + STOP_TIMEOUT_MS;
  int status;
  while (waitpid(g_server, &status, WNOHANG) == 0) {
    if (now_ms() > deadline) {
      kill(g_server, SIGKILL);
      waitpid(g_server, &status, 0);
      break;
    }
    usleep(20000);
  }
  g_server = -1;
}

static int group_setup(void **state) {
  (void)state;
  signal(SIGPIPE, SIG_IGN);
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return -1;
  self[n] = '\0';
  snprintf(g_bin, sizeof(g_bin), "%s/capstan", dirname(self));
  if (access(g_bin, X_OK) != 0) {
    fprintf(stderr, "no capstan binary at %s\n", g_bin);
    return -1;
  }
  snprintf(g_dir, sizeof(g_dir), "/tmp/capstan-test-boot-XXXXXX");
  if (mkdtemp(g_dir) == NULL) return -1;
  if (run_cli("device add " DEV_HTTP " --operation install --auth null --encrypted-config on") ||
      run_cli("device add " DEV_TFTP " --operation install --auth null --encrypted-config on") ||
      run_cli("device add " DEV_NONE " --operation none --auth null")) {
    fprintf(stderr, "capstan device add failed\n");
    return -1;
  }
  return start_server();
}

static int group_teardown(void **state) {
  (void)state;
  stop_server();
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
  if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", g_dir);
  return 0;
}

/* ---- Helpers --------------------------------------------------------------- */

static void loopback(struct sockaddr_storage *ss, int port) {
  memset(ss, 0, sizeof(*ss));
  assert_int_equal(uv_ip4_addr("127.0.0.1", port, (struct sockaddr_in *)ss), 0);
}

static void boot_config(capstan_phone_boot_config_t *bc, const char *name,
                        capstan_phone_transport_t t) {
  memset(bc, 0, sizeof(*bc));
  bc->phone.device_name = name;
  bc->phone.auth = CAPSTAN_PHONE_AUTH_NULL_STRING;
  bc->phone.step_timeout_ms = STEP_TIMEOUT_MS;
  bc->transport = t;
  loopback(&bc->file_addr, t == CAPSTAN_PHONE_TRANSPORT_HTTP ? g_http_port : g_tftp_port);
  bc->tftp_rto_ms = 500;
  bc->tftp_retries = 6;
}

static void md5_of(X509 *cert, char out[33]) {
  uint8_t *der = NULL;
  size_t len = 0;
  assert_int_equal(capstan_pki_cert_to_der(cert, &der, &len), 0);
  capstan_pki_md5hash(der, len, out);
  free(der);
}

static int contains(const uint8_t *data, size_t len, const char *needle) {
  size_t n = strlen(needle);
  for (size_t i = 0; i + n <= len; i++) {
    if (memcmp(data + i, needle, n) == 0) return 1;
  }
  return 0;
}

/* A certificate of the phone's own that the server has no record of. */
static void make_other_cert(const char *name, capstan_identity_t *ca, capstan_identity_t *other) {
  memset(ca, 0, sizeof(*ca));
  memset(other, 0, sizeof(*other));
  assert_int_equal(capstan_phone_create_test_ca("Unknown CA", ca), 0);
  assert_int_equal(capstan_pki_generate_key(CAPSTAN_KEY_EC, 256, &other->key), 0);
  uint8_t *der = NULL;
  size_t len = 0;
  assert_int_equal(capstan_phone_issue_test_leaf(ca, name, other->key, &der, &len), 0);
  assert_int_equal(capstan_pki_parse_cert(der, len, &other->cert), 0);
  free(der);
}

/* The whole story of a phone with an encrypted configuration: first boot
 * (empty certHash: enroll), second boot (certHash is its LSC: decrypt). */
static void enroll_then_decrypt(const char *name, capstan_phone_transport_t t, int capf_explicit) {
  capstan_phone_boot_config_t bc;
  boot_config(&bc, name, t);
  if (capf_explicit) {
    loopback(&bc.capf_addr, g_capf_port);
    bc.has_capf_addr = 1;
  }
  capstan_phone_boot_result_t r1;
  assert_int_equal(capstan_phone_boot_run_one(&bc, &r1), 0);
  if (r1.failure != CAPSTAN_PHONE_BOOT_NONE) fprintf(stderr, "boot 1: %s\n", r1.detail);
  assert_int_equal(r1.failure, CAPSTAN_PHONE_BOOT_NONE);
  assert_true(r1.steps[CAPSTAN_PHONE_STEP_ITL].ok);
  assert_false(r1.itl_fallback);
  assert_true(r1.itl_records >= 3); /* SAST, TFTP, CAPF */
  assert_non_null(r1.itl_signer);
  assert_non_null(r1.tftp_cert);
  assert_true(r1.steps[CAPSTAN_PHONE_STEP_CNF].ok);
  assert_true(r1.steps[CAPSTAN_PHONE_STEP_CNF].bytes > 0);
  assert_int_equal(r1.cert_hash, CAPSTAN_PHONE_HASH_EMPTY);
  assert_int_equal(r1.capf_auth_mode, 2);
  assert_true(r1.encr_config);
  assert_false(r1.full_config); /* the partial configuration */
  assert_false(r1.steps[CAPSTAN_PHONE_STEP_ENC].ran);
  assert_true(r1.capf_ran);
  assert_int_equal(r1.capf.kind, CAPSTAN_PHONE_RESULT_OK);
  assert_int_equal(r1.capf.operation, CAPSTAN_PHONE_OP_INSTALL);
  assert_int_equal(r1.capf.end_reason, 1);
  assert_true(r1.enrolled);
  assert_non_null(r1.lsc.cert);
  assert_int_equal(r1.files, 2);
  assert_int_equal(r1.connections, t == CAPSTAN_PHONE_TRANSPORT_HTTP ? 2 : 0);
  char md5[33];
  md5_of(r1.lsc.cert, md5);
  assert_string_equal(r1.lsc_md5, md5);

  /* The phone resets: it keeps its LSC and trusts the ITL it got. */
  capstan_phone_boot_config_t bc2 = bc;
  bc2.phone.lsc = r1.lsc;
  bc2.trusted_tftp = r1.itl_signer;
  bc2.http_keep_alive = 1; /* HTTP: the three files on one connection */
  capstan_phone_boot_result_t r2;
  assert_int_equal(capstan_phone_boot_run_one(&bc2, &r2), 0);
  if (r2.failure != CAPSTAN_PHONE_BOOT_NONE) fprintf(stderr, "boot 2: %s\n", r2.detail);
  assert_int_equal(r2.failure, CAPSTAN_PHONE_BOOT_NONE);
  assert_int_equal(r2.cert_hash, CAPSTAN_PHONE_HASH_MATCH);
  assert_string_equal(r2.server_hash, md5);
  assert_string_equal(r2.own_hash, md5);
  assert_int_equal(r2.capf_auth_mode, 0); /* the operation is done */
  assert_false(r2.capf_ran);
  assert_true(r2.steps[CAPSTAN_PHONE_STEP_ENC].ok);
  assert_true(r2.decrypted);
  assert_true(r2.full_config);
  assert_int_equal(r2.files, 3);
  assert_int_equal(r2.connections, t == CAPSTAN_PHONE_TRANSPORT_HTTP ? 1 : 0);
  assert_non_null(r2.config);
  char want[64];
  snprintf(want, sizeof(want), "<certHash>%s</certHash>", md5);
  assert_true(contains(r2.config, r2.config_len, want));
  assert_true(contains(r2.config, r2.config_len, "<encrConfig>true</encrConfig>"));
  assert_true(contains(r2.config, r2.config_len, "<capfList>"));
  assert_false(contains(r2.config, r2.config_len, "<fullConfig>false"));
  /* The same ITL signer as in the first boot. */
  assert_int_equal(X509_cmp(r2.itl_signer, r1.itl_signer), 0);
  assert_string_equal(r2.lsc_md5, md5);

  char json[4096];
  size_t jl = capstan_phone_boot_result_json(&r2, json, sizeof(json));
  assert_true(jl > 0 && jl < sizeof(json) - 1);
  assert_non_null(strstr(json, "\"decrypted\":true"));
  assert_non_null(strstr(json, "\"enc\":{\"ok\":true"));

  /* The same device with another certificate: mismatch. The operation is
   * done (capfAuthMode 0), so no CAPF session, and no encrypted file. */
  capstan_identity_t ca, other;
  make_other_cert(name, &ca, &other);
  capstan_phone_boot_config_t bc3 = bc2;
  bc3.phone.lsc = other;
  capstan_phone_boot_result_t r3;
  assert_int_equal(capstan_phone_boot_run_one(&bc3, &r3), 0);
  assert_int_equal(r3.failure, CAPSTAN_PHONE_BOOT_NONE);
  assert_int_equal(r3.cert_hash, CAPSTAN_PHONE_HASH_MISMATCH);
  assert_string_equal(r3.server_hash, md5);
  assert_false(r3.capf_ran);
  assert_false(r3.steps[CAPSTAN_PHONE_STEP_ENC].ran);
  assert_false(r3.full_config);
  capstan_phone_boot_result_cleanup(&r3);
  capstan_identity_cleanup(&other);
  capstan_identity_cleanup(&ca);

  capstan_phone_boot_result_cleanup(&r2);
  capstan_phone_boot_result_cleanup(&r1);
}

static void test_http_enroll_then_decrypt(void **state) {
  (void)state;
  enroll_then_decrypt(DEV_HTTP, CAPSTAN_PHONE_TRANSPORT_HTTP, 0);
}

static void test_tftp_enroll_then_decrypt(void **state) {
  (void)state;
  enroll_then_decrypt(DEV_TFTP, CAPSTAN_PHONE_TRANSPORT_TFTP, 1);
}

/* No operation scheduled: files only, no CAPF session even with an empty
 * certHash; the signed configuration is the full one. */
static void test_no_operation(void **state) {
  (void)state;
  for (int t = 0; t < 2; t++) {
    capstan_phone_boot_config_t bc;
    boot_config(&bc, DEV_NONE, t ? CAPSTAN_PHONE_TRANSPORT_TFTP : CAPSTAN_PHONE_TRANSPORT_HTTP);
    capstan_phone_boot_result_t r;
    assert_int_equal(capstan_phone_boot_run_one(&bc, &r), 0);
    assert_int_equal(r.failure, CAPSTAN_PHONE_BOOT_NONE);
    assert_int_equal(r.cert_hash, CAPSTAN_PHONE_HASH_EMPTY);
    assert_int_equal(r.capf_auth_mode, 0);
    assert_false(r.capf_ran);
    assert_false(r.encr_config);
    assert_true(r.full_config);
    assert_int_equal(r.files, 2);
    assert_true(contains(r.config, r.config_len, "<certHash></certHash>"));
    capstan_phone_boot_result_cleanup(&r);
  }
}

/* A phone with a certificate while the server has none on record: the hash
 * is empty; boot-only (and no operation anyway): no CAPF session. */
static void test_own_cert_boot_only(void **state) {
  (void)state;
  capstan_identity_t ca, other;
  make_other_cert(DEV_NONE, &ca, &other);
  X509 *leaf = other.cert;
  capstan_phone_boot_config_t bc;
  boot_config(&bc, DEV_NONE, CAPSTAN_PHONE_TRANSPORT_HTTP);
  bc.phone.lsc = other;
  bc.boot_only = 1;
  capstan_phone_boot_result_t r;
  assert_int_equal(capstan_phone_boot_run_one(&bc, &r), 0);
  assert_int_equal(r.failure, CAPSTAN_PHONE_BOOT_NONE);
  assert_int_equal(r.cert_hash, CAPSTAN_PHONE_HASH_EMPTY);
  char md5[33];
  md5_of(leaf, md5);
  assert_string_equal(r.own_hash, md5);
  assert_false(r.capf_ran);
  /* The phone keeps its certificate. */
  assert_string_equal(r.lsc_md5, md5);
  capstan_phone_boot_result_cleanup(&r);
  capstan_identity_cleanup(&other);
  capstan_identity_cleanup(&ca);
}

/* A device the server does not know: no ITLSEP file, so ITLFile.tlv; then
 * no configuration. */
static void test_unknown_device(void **state) {
  (void)state;
  for (int t = 0; t < 2; t++) {
    capstan_phone_boot_config_t bc;
    boot_config(&bc, DEV_UNKNOWN, t ? CAPSTAN_PHONE_TRANSPORT_TFTP : CAPSTAN_PHONE_TRANSPORT_HTTP);
    bc.boot_only = 1;
    capstan_phone_boot_result_t r;
    assert_int_equal(capstan_phone_boot_run_one(&bc, &r), 0);
    assert_true(r.itl_fallback);
    assert_true(r.steps[CAPSTAN_PHONE_STEP_ITL].ok);
    assert_int_equal(r.failure, CAPSTAN_PHONE_BOOT_CNF_FETCH);
    assert_int_equal(r.steps[CAPSTAN_PHONE_STEP_CNF].fetch_error, CAPSTAN_PHONE_FETCH_NOT_FOUND);
    assert_int_equal(r.steps[CAPSTAN_PHONE_STEP_CNF].code, t ? 1 : 404);
    assert_int_equal(r.files, 1);
    capstan_phone_boot_result_cleanup(&r);
  }
}

/* A phone that trusts another TFTP certificate refuses the ITL. */
static void test_untrusted_itl(void **state) {
  (void)state;
  capstan_identity_t tftp;
  assert_int_equal(capstan_pki_create_tftp(NULL, &tftp), 0);
  capstan_phone_boot_config_t bc;
  boot_config(&bc, DEV_NONE, CAPSTAN_PHONE_TRANSPORT_HTTP);
  bc.trusted_tftp = tftp.cert;
  capstan_phone_boot_result_t r;
  assert_int_equal(capstan_phone_boot_run_one(&bc, &r), 0);
  assert_int_equal(r.failure, CAPSTAN_PHONE_BOOT_ITL_UNTRUSTED);
  assert_false(r.steps[CAPSTAN_PHONE_STEP_CNF].ran);
  assert_int_equal(r.files, 1);
  capstan_phone_boot_result_cleanup(&r);
  capstan_identity_cleanup(&tftp);
}

/* ---- Download clients against hostile servers ------------------------------ */

typedef struct {
  int fd;
  int udp;
  const uint8_t *answer;
  size_t answer_len;
  int answer_twice; /* TFTP: answer from a second socket too (wrong TID) */
  char got[2048];   /* what the client sent first */
  size_t got_len;
} fake_t;

static void *fake_main(void *arg) {
  fake_t *f = arg;
  struct pollfd pfd = {.fd = f->fd, .events = POLLIN};
  if (poll(&pfd, 1, 10000) <= 0) return NULL;
  if (f->udp) {
    struct sockaddr_storage from;
    socklen_t fl = sizeof(from);
    ssize_t n = recvfrom(f->fd, f->got, sizeof(f->got), 0, (struct sockaddr *)&from, &fl);
    if (n > 0) f->got_len = (size_t)n;
    if (f->answer != NULL) {
      /* Answer from a new port, as a TFTP server does. */
      int s = socket(AF_INET, SOCK_DGRAM, 0);
      sendto(s, f->answer, f->answer_len, 0, (struct sockaddr *)&from, fl);
      usleep(100000);
      close(s);
    }
    return NULL;
  }
  int c = accept(f->fd, NULL, NULL);
  if (c < 0) return NULL;
  /* Read the request (until the blank line, bounded). */
  while (f->got_len < sizeof(f->got) - 1) {
    struct pollfd cp = {.fd = c, .events = POLLIN};
    if (poll(&cp, 1, 5000) <= 0) break;
    ssize_t n = read(c, f->got + f->got_len, sizeof(f->got) - 1 - f->got_len);
    if (n <= 0) break;
    f->got_len += (size_t)n;
    f->got[f->got_len] = '\0';
    if (strstr(f->got, "\r\n\r\n") != NULL) break;
  }
  if (f->answer != NULL) {
    ssize_t w = write(c, f->answer, f->answer_len);
    (void)w;
  }
  usleep(50000);
  close(c);
  return NULL;
}

/* A loopback listener on an ephemeral port. *port is always set (0 when it
 * fails), so no caller reads an uninitialised port in any build type. */
static int fake_listen(int udp, int *port) {
  *port = 0;
  int fd = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || (!udp && listen(fd, 4) != 0)) {
    close(fd);
    return -1;
  }
  socklen_t al = sizeof(a);
  if (getsockname(fd, (struct sockaddr *)&a, &al) != 0) {
    close(fd);
    return -1;
  }
  *port = ntohs(a.sin_port);
  return fd;
}

typedef struct {
  capstan_phone_fetch_result_t res;
  int called;
  int kept; /* a connection was kept after the download */
} fetch_out_t;

static void on_fetch(capstan_phone_fetch_t *fetch, void *arg, capstan_phone_fetch_result_t *res) {
  (void)fetch;
  fetch_out_t *o = arg;
  o->res = *res;
  memset(res, 0, sizeof(*res));
  o->called++;
}

/* Runs one download against a fake server answering |answer|. */
static void fetch_against(int udp, const char *answer, size_t answer_len, size_t max_bytes,
                          fetch_out_t *out, fake_t *fake) {
  memset(fake, 0, sizeof(*fake));
  memset(out, 0, sizeof(*out));
  int port;
  fake->udp = udp;
  fake->fd = fake_listen(udp, &port);
  assert_true(fake->fd >= 0);
  fake->answer = (const uint8_t *)answer;
  fake->answer_len = answer_len;
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, fake_main, fake), 0);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  capstan_phone_fetch_config_t fc;
  memset(&fc, 0, sizeof(fc));
  fc.transport = udp ? CAPSTAN_PHONE_TRANSPORT_TFTP : CAPSTAN_PHONE_TRANSPORT_HTTP;
  loopback(&fc.addr, port);
  fc.name = "SEP001122334455.cnf.xml.sgn";
  fc.max_bytes = max_bytes;
  fc.timeout_ms = 3000;
  fc.tftp_rto_ms = 100;
  fc.tftp_retries = 2;
  assert_int_equal(capstan_phone_fetch_start(&loop, &fc, on_fetch, out, NULL), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  pthread_join(th, NULL);
  close(fake->fd);
  assert_int_equal(out->called, 1);
}

static void test_http_client(void **state) {
  (void)state;
  static const struct {
    const char *answer;
    size_t max;
    capstan_phone_fetch_error_t want;
    const char *body;
  } cases[] = {
      {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", 0,
       CAPSTAN_PHONE_FETCH_NONE, "hello"},
      {"HTTP/1.1 200 OK\r\ncontent-length:   0  \r\n\r\n", 0, CAPSTAN_PHONE_FETCH_NONE, ""},
      {"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 0, CAPSTAN_PHONE_FETCH_NOT_FOUND,
       NULL},
      {"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", 0, CAPSTAN_PHONE_FETCH_SERVER_ERROR, NULL},
      {"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", 0, CAPSTAN_PHONE_FETCH_CLOSED, NULL},
      {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\ntoo long", 0, CAPSTAN_PHONE_FETCH_BAD_RESPONSE,
       NULL},
      {"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", 100, CAPSTAN_PHONE_FETCH_TOO_LARGE, NULL},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 0,
       CAPSTAN_PHONE_FETCH_BAD_RESPONSE, NULL},
      {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 0,
       CAPSTAN_PHONE_FETCH_BAD_RESPONSE, NULL},
      {"HTTP/1.1 200 OK\r\n\r\nno length", 0, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, NULL},
      {"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", 0, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, NULL},
      {"ICY 200 OK\r\n\r\n", 0, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, NULL},
      {"HTTP/1.1 2x0 OK\r\n\r\n", 0, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, NULL},
      {"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", 0, CAPSTAN_PHONE_FETCH_BAD_RESPONSE, NULL},
      {"HTTP/1.1 200 OK\r\nContent-Le", 0, CAPSTAN_PHONE_FETCH_CLOSED, NULL},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    fetch_out_t out;
    fake_t fake;
    fetch_against(0, cases[i].answer, strlen(cases[i].answer), cases[i].max, &out, &fake);
    if (out.res.error != cases[i].want) {
      fprintf(stderr, "case %zu: got %s (%s)\n", i, capstan_phone_fetch_error_name(out.res.error),
              out.res.detail);
    }
    assert_int_equal(out.res.error, cases[i].want);
    /* The request is a well-formed GET of the name. */
    assert_non_null(strstr(fake.got, "GET /SEP001122334455.cnf.xml.sgn HTTP/1.1\r\n"));
    assert_non_null(strstr(fake.got, "\r\nHost: 127.0.0.1:"));
    if (cases[i].body != NULL) {
      assert_int_equal(out.res.len, strlen(cases[i].body));
      assert_memory_equal(out.res.body, cases[i].body, out.res.len);
    } else {
      assert_null(out.res.body);
    }
    capstan_phone_fetch_result_cleanup(&out.res);
  }
}

/* A header block over the cap. */
static void test_http_header_cap(void **state) {
  (void)state;
  size_t n = CAPSTAN_PHONE_HTTP_MAX_HEADER + 100;
  char *answer = malloc(n + 1);
  assert_non_null(answer);
  memcpy(answer, "HTTP/1.1 200 OK\r\nX: ", 20);
  memset(answer + 20, 'a', n - 20);
  answer[n] = '\0';
  fetch_out_t out;
  fake_t fake;
  fetch_against(0, answer, n, 0, &out, &fake);
  assert_int_equal(out.res.error, CAPSTAN_PHONE_FETCH_BAD_RESPONSE);
  capstan_phone_fetch_result_cleanup(&out.res);
  free(answer);
}

static void test_tftp_client(void **state) {
  (void)state;
  /* The request: RRQ name octet blksize 1428 tsize 0. */
  fetch_out_t out;
  fake_t fake;
  static const char err1[] = "\0\5\0\1File not found";
  fetch_against(1, err1, sizeof(err1), 0, &out, &fake);
  assert_int_equal(out.res.error, CAPSTAN_PHONE_FETCH_NOT_FOUND);
  assert_int_equal(out.res.code, 1);
  static const char rrq[] =
      "\0\1SEP001122334455.cnf.xml.sgn\0octet\0blksize\0"
      "1428\0tsize\0"
      "0";
  assert_int_equal(fake.got_len, sizeof(rrq));
  assert_memory_equal(fake.got, rrq, sizeof(rrq));
  capstan_phone_fetch_result_cleanup(&out.res);

  /* An OACK with an option we did not ask for. */
  static const char oack[] =
      "\0\6windowsize\0"
      "8";
  fetch_against(1, oack, sizeof(oack), 0, &out, &fake);
  assert_int_equal(out.res.error, CAPSTAN_PHONE_FETCH_BAD_RESPONSE);
  capstan_phone_fetch_result_cleanup(&out.res);

  /* A tsize over the cap. */
  static const char big[] =
      "\0\6tsize\0"
      "999999";
  fetch_against(1, big, sizeof(big), 1000, &out, &fake);
  assert_int_equal(out.res.error, CAPSTAN_PHONE_FETCH_TOO_LARGE);
  capstan_phone_fetch_result_cleanup(&out.res);

  /* An unknown opcode. */
  static const char junk[] = "\0\11junk";
  fetch_against(1, junk, sizeof(junk), 0, &out, &fake);
  assert_int_equal(out.res.error, CAPSTAN_PHONE_FETCH_BAD_RESPONSE);
  capstan_phone_fetch_result_cleanup(&out.res);

  /* One short block without OACK: the server ignored the options (blksize
   * 512), and the file is complete. */
  static const char data[] = "\0\3\0\1hello";
  fetch_against(1, data, sizeof(data) - 1, 0, &out, &fake);
  assert_int_equal(out.res.error, CAPSTAN_PHONE_FETCH_NONE);
  assert_int_equal(out.res.len, 5);
  assert_memory_equal(out.res.body, "hello", 5);
  capstan_phone_fetch_result_cleanup(&out.res);

  /* Nobody answers: the request is resent, then the download times out. */
  fetch_against(1, NULL, 0, 0, &out, &fake);
  assert_int_equal(out.res.error, CAPSTAN_PHONE_FETCH_TIMEOUT);
  assert_int_equal(out.res.retransmits, 2);
  capstan_phone_fetch_result_cleanup(&out.res);
}

static void test_fetch_refused_and_bad_names(void **state) {
  (void)state;
  /* A port nobody listens on (bound, then closed). */
  int port;
  int fd = fake_listen(0, &port);
  assert_true(fd >= 0);
  close(fd);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  capstan_phone_fetch_config_t fc;
  memset(&fc, 0, sizeof(fc));
  fc.transport = CAPSTAN_PHONE_TRANSPORT_HTTP;
  loopback(&fc.addr, port);
  fc.name = "ITLFile.tlv";
  fetch_out_t out;
  memset(&out, 0, sizeof(out));
  assert_int_equal(capstan_phone_fetch_start(&loop, &fc, on_fetch, &out, NULL), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(out.called, 1);
  assert_int_equal(out.res.error, CAPSTAN_PHONE_FETCH_CONNECT);
  capstan_phone_fetch_result_cleanup(&out.res);
  const char *bad[] = {"", "../etc/passwd", "a b", "x\r\nHost: evil", NULL};
  for (int i = 0; i < 5; i++) {
    fc.name = bad[i];
    assert_int_equal(capstan_phone_fetch_start(&loop, &fc, on_fetch, &out, NULL), CAPSTAN_EINVAL);
  }
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- HTTP keep-alive ------------------------------------------------------- */

/* A server that answers requests with canned answers in order, on as many
 * connections as it takes; an answer may close its connection after it. */
typedef struct {
  int fd;
  const char *answers[4];
  int close_after[4];
  int n;
  int conns, requests;
  int saw_keep_alive;
} ka_fake_t;

static int read_request(int c, char *buf, size_t cap) {
  size_t len = 0;
  while (len < cap - 1) {
    struct pollfd cp = {.fd = c, .events = POLLIN};
    if (poll(&cp, 1, 5000) <= 0) return -1;
    ssize_t n = read(c, buf + len, cap - 1 - len);
    if (n <= 0) return -1;
    len += (size_t)n;
    buf[len] = '\0';
    if (strstr(buf, "\r\n\r\n") != NULL) return 0;
  }
  return -1;
}

static void *ka_main(void *arg) {
  ka_fake_t *k = arg;
  int answered = 0;
  while (answered < k->n && k->conns < 3) {
    struct pollfd pfd = {.fd = k->fd, .events = POLLIN};
    if (poll(&pfd, 1, 5000) <= 0) break;
    int c = accept(k->fd, NULL, NULL);
    if (c < 0) break;
    k->conns++;
    char req[2048];
    while (answered < k->n && read_request(c, req, sizeof(req)) == 0) {
      k->requests++;
      if (strstr(req, "\r\nConnection: keep-alive\r\n") != NULL) k->saw_keep_alive++;
      ssize_t w = write(c, k->answers[answered], strlen(k->answers[answered]));
      (void)w;
      if (k->close_after[answered++]) break;
    }
    /* Wait for the client to close (bounded), then close. */
    struct pollfd cp = {.fd = c, .events = POLLIN};
    if (answered >= k->n) poll(&cp, 1, 2000);
    close(c);
  }
  return NULL;
}

static void ka_fetch(uv_loop_t *loop, int port, capstan_phone_http_conn_t *reuse,
                     fetch_out_t *out) {
  memset(out, 0, sizeof(*out));
  capstan_phone_fetch_config_t fc;
  memset(&fc, 0, sizeof(fc));
  fc.transport = CAPSTAN_PHONE_TRANSPORT_HTTP;
  loopback(&fc.addr, port);
  fc.name = "ITLFile.tlv";
  fc.timeout_ms = 5000;
  fc.keep_alive = 1;
  fc.reuse = reuse;
  assert_int_equal(capstan_phone_fetch_start(loop, &fc, on_fetch, out, NULL), 0);
  uv_run(loop, UV_RUN_DEFAULT);
  assert_int_equal(out->called, 1);
}

static void ka_run(ka_fake_t *k, fetch_out_t *o1, fetch_out_t *o2) {
  int port;
  k->fd = fake_listen(0, &port);
  assert_true(k->fd >= 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, ka_main, k), 0);
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  ka_fetch(&loop, port, NULL, o1);
  capstan_phone_http_conn_t *conn = o1->res.conn;
  o1->res.conn = NULL;
  if (conn != NULL) {
    /* Let the server's close (if it closes) arrive first. */
    usleep(100000);
    ka_fetch(&loop, port, conn, o2);
  }
  /* Close what is kept, so that the server thread ends. */
  o2->kept = o2->res.conn != NULL;
  capstan_phone_http_conn_close(o2->res.conn);
  o2->res.conn = NULL;
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  pthread_join(th, NULL);
  close(k->fd);
}

static void test_http_keep_alive(void **state) {
  (void)state;
  ka_fake_t k = {.answers = {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none",
                             "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"},
                 .n = 2};
  fetch_out_t o1, o2;
  memset(&o2, 0, sizeof(o2));
  ka_run(&k, &o1, &o2);
  assert_int_equal(o1.res.error, CAPSTAN_PHONE_FETCH_NONE);
  assert_true(o1.res.new_connection);
  assert_memory_equal(o1.res.body, "one", 3);
  assert_int_equal(o2.called, 1);
  assert_int_equal(o2.res.error, CAPSTAN_PHONE_FETCH_NONE);
  assert_false(o2.res.new_connection);
  assert_int_equal(o2.res.len, 3);
  assert_memory_equal(o2.res.body, "two", 3);
  assert_true(o2.kept);
  assert_int_equal(k.conns, 1);
  assert_int_equal(k.requests, 2);
  assert_int_equal(k.saw_keep_alive, 2);
  capstan_phone_fetch_result_cleanup(&o1.res);
  capstan_phone_fetch_result_cleanup(&o2.res);
}

/* The server closed the kept connection: the second download starts again
 * on a new connection. */
static void test_http_keep_alive_retry(void **state) {
  (void)state;
  ka_fake_t k = {.answers = {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none",
                             "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"},
                 .close_after = {1, 0},
                 .n = 2};
  fetch_out_t o1, o2;
  memset(&o2, 0, sizeof(o2));
  ka_run(&k, &o1, &o2);
  assert_int_equal(o1.res.error, CAPSTAN_PHONE_FETCH_NONE);
  assert_int_equal(o2.called, 1);
  if (o2.res.error != CAPSTAN_PHONE_FETCH_NONE) fprintf(stderr, "%s\n", o2.res.detail);
  assert_int_equal(o2.res.error, CAPSTAN_PHONE_FETCH_NONE);
  assert_true(o2.res.new_connection);
  assert_memory_equal(o2.res.body, "two", 3);
  assert_int_equal(k.conns, 2);
  assert_int_equal(k.requests, 2);
  capstan_phone_fetch_result_cleanup(&o1.res);
  capstan_phone_fetch_result_cleanup(&o2.res);
}

/* "Connection: close" from the server: nothing is kept. */
static void test_http_keep_alive_refused(void **state) {
  (void)state;
  ka_fake_t k = {
      .answers = {"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\none"},
      .close_after = {1},
      .n = 1};
  fetch_out_t o1, o2;
  memset(&o2, 0, sizeof(o2));
  ka_run(&k, &o1, &o2);
  assert_int_equal(o1.res.error, CAPSTAN_PHONE_FETCH_NONE);
  assert_null(o1.res.conn);
  assert_int_equal(o2.called, 0);
  capstan_phone_fetch_result_cleanup(&o1.res);
}

/* ---- The boot against files made here --------------------------------------- */

/* An HTTP file server in a thread serving a table of files made by the test
 * (Connection: close, 404 for others), so that the boot's checks can be
 * driven with files the real server never produces. */
#define FAKE_MAX_FILES 4
#define FAKE_NAME "SEP0011223344CC"

typedef struct {
  const char *name;
  uint8_t *data;
  size_t len;
} fake_file_t;

typedef struct {
  int fd;
  fake_file_t files[FAKE_MAX_FILES];
  volatile int stop;
  int requests;
} files_fake_t;

static void *files_main(void *arg) {
  files_fake_t *ff = arg;
  while (!ff->stop) {
    struct pollfd pfd = {.fd = ff->fd, .events = POLLIN};
    if (poll(&pfd, 1, 50) <= 0) continue;
    int c = accept(ff->fd, NULL, NULL);
    if (c < 0) continue;
    char req[2048];
    if (read_request(c, req, sizeof(req)) == 0) {
      ff->requests++;
      const fake_file_t *hit = NULL;
      for (int i = 0; i < FAKE_MAX_FILES; i++) {
        const fake_file_t *f = &ff->files[i];
        char line[300];
        if (f->name == NULL) continue;
        snprintf(line, sizeof(line), "GET /%s HTTP/1.1\r\n", f->name);
        if (strncmp(req, line, strlen(line)) == 0) hit = f;
      }
      char head[128];
      int n = snprintf(head, sizeof(head), "HTTP/1.1 %s\r\nContent-Length: %zu\r\n\r\n",
                       hit ? "200 OK" : "404 Not Found", hit ? hit->len : 0);
      ssize_t w = write(c, head, (size_t)n);
      if (hit != NULL && hit->len > 0) w = write(c, hit->data, hit->len);
      (void)w;
    }
    close(c);
  }
  return NULL;
}

static capstan_identity_t g_tftp, g_evil, g_phone_ca, g_phone;
static char g_phone_md5[33];

static int fake_group_setup(void **state) {
  (void)state;
  if (capstan_pki_create_tftp(NULL, &g_tftp) != 0 || capstan_pki_create_tftp(NULL, &g_evil) != 0 ||
      capstan_phone_create_test_ca("Phone CA", &g_phone_ca) != 0 ||
      capstan_pki_generate_key(CAPSTAN_KEY_RSA, 1024, &g_phone.key) != 0) {
    return -1;
  }
  uint8_t *der = NULL;
  size_t len = 0;
  if (capstan_phone_issue_test_leaf(&g_phone_ca, FAKE_NAME, g_phone.key, &der, &len) != 0 ||
      capstan_pki_parse_cert(der, len, &g_phone.cert) != 0) {
    free(der);
    return -1;
  }
  capstan_pki_md5hash(der, len, g_phone_md5);
  free(der);
  return 0;
}

static int fake_group_teardown(void **state) {
  (void)state;
  capstan_identity_cleanup(&g_tftp);
  capstan_identity_cleanup(&g_evil);
  capstan_identity_cleanup(&g_phone_ca);
  capstan_identity_cleanup(&g_phone);
  return 0;
}

/* An ITL named |fname| listing |tftp| (and signed by |signer_key|). */
static fake_file_t make_itl(const char *name, const char *fname, X509 *tftp, EVP_PKEY *signer_key) {
  capstan_itl_entry_t e = {.cert = tftp, .role = CAPSTAN_ITL_ROLE_TFTP};
  capstan_itl_params_t p = {.signer_cert = tftp,
                            .entries = &e,
                            .n_entries = 1,
                            .filename = fname,
                            .hash_alg = CAPSTAN_SGN_HASH_SHA1,
                            .timestamp = 1700000000};
  fake_file_t f = {.name = name};
  const char *why = NULL;
  assert_int_equal(capstan_itl_build(&p, signer_key, &f.data, &f.len, &why), 0);
  return f;
}

static fake_file_t make_sgn(const char *name, const char *fname, const char *xml, EVP_PKEY *key) {
  capstan_sgn_params_t p = {.version_major = 1,
                            .signer_cert = g_tftp.cert,
                            .hash_alg = CAPSTAN_SGN_HASH_SHA1,
                            .filename = fname,
                            .timestamp = 1700000000,
                            .payload = (const uint8_t *)xml,
                            .payload_len = strlen(xml)};
  fake_file_t f = {.name = name};
  const char *why = NULL;
  assert_int_equal(capstan_sgn_sign(&p, key, &f.data, &f.len, &why), 0);
  return f;
}

static fake_file_t make_enc(const char *xml, EVP_PKEY *phone_pub, EVP_PKEY *key) {
  capstan_encconf_params_t p = {.signer_cert = g_tftp.cert,
                                .phone_pub = phone_pub,
                                .filename = FAKE_NAME ".cnf.xml.enc.sgn",
                                .config = (const uint8_t *)xml,
                                .config_len = strlen(xml),
                                .enc_hash_alg = CAPSTAN_SGN_HASH_SHA1,
                                .sign_hash_alg = CAPSTAN_SGN_HASH_SHA1,
                                .timestamp = 1700000000};
  fake_file_t f = {.name = FAKE_NAME ".cnf.xml.enc.sgn"};
  const char *why = NULL;
  assert_int_equal(capstan_encconf_build(&p, key, &f.data, &f.len, &why), 0);
  return f;
}

#define ITL_NAME "ITL" FAKE_NAME ".tlv"
#define CNF_NAME FAKE_NAME ".cnf.xml.sgn"
#define PLAIN_CNF "<device><capfAuthMode>0</capfAuthMode><certHash></certHash></device>"

/* Boots FAKE_NAME (with the test's phone certificate if |with_lsc|) against
 * |files|; frees the files. */
static void fake_boot(fake_file_t *files, int n, int with_lsc, X509 *trusted,
                      capstan_phone_boot_result_t *r) {
  files_fake_t ff;
  memset(&ff, 0, sizeof(ff));
  for (int i = 0; i < n; i++) ff.files[i] = files[i];
  int port;
  ff.fd = fake_listen(0, &port);
  assert_true(ff.fd >= 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, files_main, &ff), 0);
  capstan_phone_boot_config_t bc;
  memset(&bc, 0, sizeof(bc));
  bc.phone.device_name = FAKE_NAME;
  bc.phone.step_timeout_ms = 5000;
  if (with_lsc) bc.phone.lsc = g_phone;
  bc.transport = CAPSTAN_PHONE_TRANSPORT_HTTP;
  loopback(&bc.file_addr, port);
  bc.boot_only = 1;
  bc.trusted_tftp = trusted;
  int rc = capstan_phone_boot_run_one(&bc, r);
  ff.stop = 1;
  pthread_join(th, NULL);
  close(ff.fd);
  for (int i = 0; i < n; i++) free(files[i].data);
  assert_int_equal(rc, 0);
}

static void expect_failure(fake_file_t *files, int n, int with_lsc,
                           capstan_phone_boot_failure_t want, const char *detail_part) {
  capstan_phone_boot_result_t r;
  fake_boot(files, n, with_lsc, NULL, &r);
  if (r.failure != want) {
    fprintf(stderr, "want %s, got %s: %s\n", capstan_phone_boot_failure_name(want),
            capstan_phone_boot_failure_name(r.failure), r.detail);
  }
  assert_int_equal(r.failure, want);
  if (detail_part != NULL) assert_non_null(strstr(r.detail, detail_part));
  capstan_phone_boot_result_cleanup(&r);
}

static void test_fake_good_boot(void **state) {
  (void)state;
  fake_file_t f[] = {make_itl(ITL_NAME, ITL_NAME, g_tftp.cert, g_tftp.key),
                     make_sgn(CNF_NAME, CNF_NAME, PLAIN_CNF, g_tftp.key)};
  capstan_phone_boot_result_t r;
  fake_boot(f, 2, 0, NULL, &r);
  assert_int_equal(r.failure, CAPSTAN_PHONE_BOOT_NONE);
  assert_int_equal(r.itl_records, 2);
  assert_int_equal(X509_cmp(r.itl_signer, g_tftp.cert), 0);
  assert_int_equal(r.cert_hash, CAPSTAN_PHONE_HASH_EMPTY);
  assert_int_equal(r.config_len, strlen(PLAIN_CNF));
  assert_memory_equal(r.config, PLAIN_CNF, r.config_len);
  capstan_phone_boot_result_cleanup(&r);

  /* Trusting the signer: accepted; trusting another: refused. */
  fake_file_t g[] = {make_itl(ITL_NAME, ITL_NAME, g_tftp.cert, g_tftp.key),
                     make_sgn(CNF_NAME, CNF_NAME, PLAIN_CNF, g_tftp.key)};
  fake_boot(g, 2, 0, g_tftp.cert, &r);
  assert_int_equal(r.failure, CAPSTAN_PHONE_BOOT_NONE);
  capstan_phone_boot_result_cleanup(&r);
  fake_file_t h[] = {make_itl(ITL_NAME, ITL_NAME, g_tftp.cert, g_tftp.key)};
  fake_boot(h, 1, 0, g_evil.cert, &r);
  assert_int_equal(r.failure, CAPSTAN_PHONE_BOOT_ITL_UNTRUSTED);
  capstan_phone_boot_result_cleanup(&r);
}

static void test_fake_itl_failures(void **state) {
  (void)state;
  /* Neither ITL exists. */
  expect_failure(NULL, 0, 0, CAPSTAN_PHONE_BOOT_ITL_FETCH, "ITLFile.tlv: not_found");
  /* Only the cluster ITL: the phone falls back to it. */
  fake_file_t a[] = {make_itl("ITLFile.tlv", "ITLFile.tlv", g_tftp.cert, g_tftp.key),
                     make_sgn(CNF_NAME, CNF_NAME, PLAIN_CNF, g_tftp.key)};
  capstan_phone_boot_result_t r;
  fake_boot(a, 2, 0, NULL, &r);
  assert_int_equal(r.failure, CAPSTAN_PHONE_BOOT_NONE);
  assert_true(r.itl_fallback);
  capstan_phone_boot_result_cleanup(&r);
  /* Signed with a key that is not the signer's. */
  fake_file_t b[] = {make_itl(ITL_NAME, ITL_NAME, g_tftp.cert, g_evil.key)};
  expect_failure(b, 1, 0, CAPSTAN_PHONE_BOOT_ITL_SIGNATURE, NULL);
  /* FILENAME is another file's. */
  fake_file_t c[] = {make_itl(ITL_NAME, "ITLFile.tlv", g_tftp.cert, g_tftp.key)};
  expect_failure(c, 1, 0, CAPSTAN_PHONE_BOOT_ITL_INVALID, "FILENAME");
  /* Not an ITL at all. */
  fake_file_t d[] = {make_sgn(ITL_NAME, ITL_NAME, PLAIN_CNF, g_tftp.key)};
  expect_failure(d, 1, 0, CAPSTAN_PHONE_BOOT_ITL_INVALID, NULL);
  /* A byte changed after signing (in the last record's certificate
   * signature): a record check or the signature catches it. */
  fake_file_t e[] = {make_itl(ITL_NAME, ITL_NAME, g_tftp.cert, g_tftp.key)};
  e[0].data[e[0].len - 10] ^= 0x01;
  capstan_phone_boot_result_t re;
  fake_boot(e, 1, 0, NULL, &re);
  assert_true(re.failure == CAPSTAN_PHONE_BOOT_ITL_INVALID ||
              re.failure == CAPSTAN_PHONE_BOOT_ITL_SIGNATURE);
  capstan_phone_boot_result_cleanup(&re);
}

static void test_fake_cnf_failures(void **state) {
  (void)state;
  struct {
    const char *fname;
    const char *xml;
    int evil;
    capstan_phone_boot_failure_t want;
    const char *detail;
  } cases[] = {
      {CNF_NAME, PLAIN_CNF, 1, CAPSTAN_PHONE_BOOT_CNF_SIGNATURE, NULL},
      {"SEP0011223344DD.cnf.xml.sgn", PLAIN_CNF, 0, CAPSTAN_PHONE_BOOT_CNF_SIGNATURE, "FILENAME"},
      {CNF_NAME, "<phone/>", 0, CAPSTAN_PHONE_BOOT_CNF_INVALID, "root"},
      {CNF_NAME, "<device>", 0, CAPSTAN_PHONE_BOOT_CNF_INVALID, "well-formed"},
      {CNF_NAME,
       "<!DOCTYPE device [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;\">]>"
       "<device><certHash>&b;&b;</certHash></device>",
       0, CAPSTAN_PHONE_BOOT_CNF_INVALID, "DOCTYPE"},
      {CNF_NAME,
       "<device><certHash>"
       "0123456789012345678901234567890123456789"
       "0123456789012345678901234567890123456789</certHash></device>",
       0, CAPSTAN_PHONE_BOOT_CNF_INVALID, "too long"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    fake_file_t f[] = {
        make_itl(ITL_NAME, ITL_NAME, g_tftp.cert, g_tftp.key),
        make_sgn(CNF_NAME, cases[i].fname, cases[i].xml, cases[i].evil ? g_evil.key : g_tftp.key)};
    expect_failure(f, 2, 0, cases[i].want, cases[i].detail);
  }
}

#define ENC_PARTIAL                                                                  \
  "<device><fullConfig>false</fullConfig><capfAuthMode>0</capfAuthMode><certHash>%s" \
  "</certHash><encrConfig>true</encrConfig></device>"
#define ENC_FULL                                                                  \
  "<device><capfAuthMode>0</capfAuthMode><certHash>%s</certHash><encrConfig>true" \
  "</encrConfig><secret>full</secret></device>"

static void test_fake_encrypted(void **state) {
  (void)state;
  char partial[512], full[512];
  snprintf(partial, sizeof(partial), ENC_PARTIAL, g_phone_md5);
  snprintf(full, sizeof(full), ENC_FULL, g_phone_md5);
  EVP_PKEY *pub = X509_get_pubkey(g_phone.cert);
  assert_non_null(pub);
  EVP_PKEY *other = NULL;
  assert_int_equal(capstan_pki_generate_key(CAPSTAN_KEY_RSA, 1024, &other), 0);

  /* The whole path: match, fetch, verify, decrypt. */
  fake_file_t a[] = {make_itl(ITL_NAME, ITL_NAME, g_tftp.cert, g_tftp.key),
                     make_sgn(CNF_NAME, CNF_NAME, partial, g_tftp.key),
                     make_enc(full, pub, g_tftp.key)};
  capstan_phone_boot_result_t r;
  fake_boot(a, 3, 1, NULL, &r);
  assert_int_equal(r.failure, CAPSTAN_PHONE_BOOT_NONE);
  assert_int_equal(r.cert_hash, CAPSTAN_PHONE_HASH_MATCH);
  assert_true(r.decrypted);
  assert_true(r.full_config);
  assert_int_equal(r.config_len, strlen(full));
  assert_memory_equal(r.config, full, r.config_len);
  capstan_phone_boot_result_cleanup(&r);

  /* Without its certificate the phone does not ask for the file. */
  fake_file_t b[] = {make_itl(ITL_NAME, ITL_NAME, g_tftp.cert, g_tftp.key),
                     make_sgn(CNF_NAME, CNF_NAME, partial, g_tftp.key)};
  fake_boot(b, 2, 0, NULL, &r);
  assert_int_equal(r.failure, CAPSTAN_PHONE_BOOT_NONE);
  assert_int_equal(r.cert_hash, CAPSTAN_PHONE_HASH_MISMATCH);
  assert_false(r.steps[CAPSTAN_PHONE_STEP_ENC].ran);
  assert_false(r.full_config);
  capstan_phone_boot_result_cleanup(&r);

  /* Encrypted for another key. */
  fake_file_t c[] = {make_itl(ITL_NAME, ITL_NAME, g_tftp.cert, g_tftp.key),
                     make_sgn(CNF_NAME, CNF_NAME, partial, g_tftp.key),
                     make_enc(full, other, g_tftp.key)};
  expect_failure(c, 3, 1, CAPSTAN_PHONE_BOOT_ENC_DECRYPT, NULL);
  /* Signed by another key. */
  fake_file_t d[] = {make_itl(ITL_NAME, ITL_NAME, g_tftp.cert, g_tftp.key),
                     make_sgn(CNF_NAME, CNF_NAME, partial, g_tftp.key),
                     make_enc(full, pub, g_evil.key)};
  expect_failure(d, 3, 1, CAPSTAN_PHONE_BOOT_ENC_SIGNATURE, NULL);
  /* Decrypts to a partial configuration. */
  fake_file_t e[] = {make_itl(ITL_NAME, ITL_NAME, g_tftp.cert, g_tftp.key),
                     make_sgn(CNF_NAME, CNF_NAME, partial, g_tftp.key),
                     make_enc(partial, pub, g_tftp.key)};
  expect_failure(e, 3, 1, CAPSTAN_PHONE_BOOT_ENC_INVALID, "partial");
  /* Missing. */
  fake_file_t g[] = {make_itl(ITL_NAME, ITL_NAME, g_tftp.cert, g_tftp.key),
                     make_sgn(CNF_NAME, CNF_NAME, partial, g_tftp.key)};
  expect_failure(g, 2, 1, CAPSTAN_PHONE_BOOT_ENC_FETCH, "not_found");
  EVP_PKEY_free(other);
  EVP_PKEY_free(pub);
}

int main(void) {
  const struct CMUnitTest clients[] = {
      cmocka_unit_test(test_http_client),
      cmocka_unit_test(test_http_header_cap),
      cmocka_unit_test(test_tftp_client),
      cmocka_unit_test(test_fetch_refused_and_bad_names),
      cmocka_unit_test(test_http_keep_alive),
      cmocka_unit_test(test_http_keep_alive_retry),
      cmocka_unit_test(test_http_keep_alive_refused),
  };
  const struct CMUnitTest boot[] = {
      cmocka_unit_test(test_http_enroll_then_decrypt),
      cmocka_unit_test(test_tftp_enroll_then_decrypt),
      cmocka_unit_test(test_no_operation),
      cmocka_unit_test(test_own_cert_boot_only),
      cmocka_unit_test(test_unknown_device),
      cmocka_unit_test(test_untrusted_itl),
  };
  const struct CMUnitTest fake[] = {
      cmocka_unit_test(test_fake_good_boot),
      cmocka_unit_test(test_fake_itl_failures),
      cmocka_unit_test(test_fake_cnf_failures),
      cmocka_unit_test(test_fake_encrypted),
  };
  int failed = cmocka_run_group_tests_name("phone_fetch", clients, NULL, NULL);
  failed +=
      cmocka_run_group_tests_name("phone_boot_checks", fake, fake_group_setup, fake_group_teardown);
  failed += cmocka_run_group_tests_name("phone_boot", boot, group_setup, group_teardown);
  return failed;
}
