/* Tests of the simulated phone (bench/phone) against a small fake CAPF
 * server written here: a thread with a blocking BoringSSL server socket on
 * 127.0.0.1 that plays one scripted session and checks the phone's messages
 * byte for byte. This tests the simulator, not the real server.
 *
 * The server thread never calls cmocka: it records the first failure as a
 * string, and the main thread asserts on it after joining. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "bench/phone/phone.h"
#include "bench/phone/phone_pki.h"
#include "core/base/error.h"
#include "core/pki/pki.h"
#include "handlers/capf/wire.h"
#include "tests/unit/fake_capf_server.h"

#define IO_TIMEOUT_S FAKE_IO_TIMEOUT_S
#define NAME "SEP001122334455"

/* ---- Shared fixtures ------------------------------------------------------ */

static capstan_identity_t g_capf;  /* the fake server's CAPF identity */
static capstan_identity_t g_other; /* an unrelated CA, for a failed verify */
static char g_tmpdir[256];
static char g_capf_pem[300], g_other_pem[300];

static int write_pem(const char *path, X509 *cert) {
  FILE *f = fopen(path, "w");
  if (f == NULL) return -1;
  int ok = PEM_write_X509(f, cert);
  fclose(f);
  return ok ? 0 : -1;
}

static int group_setup(void **state) {
  (void)state;
  snprintf(g_tmpdir, sizeof(g_tmpdir), "/tmp/capstan-test-phone-XXXXXX");
  if (mkdtemp(g_tmpdir) == NULL) return -1;
  if (capstan_pki_create_capf(NULL, &g_capf) != 0) return -1;
  if (capstan_phone_create_test_ca("Other CA", &g_other) != 0) return -1;
  snprintf(g_capf_pem, sizeof(g_capf_pem), "%s/capf.pem", g_tmpdir);
  snprintf(g_other_pem, sizeof(g_other_pem), "%s/other.pem", g_tmpdir);
  if (write_pem(g_capf_pem, g_capf.cert) != 0 || write_pem(g_other_pem, g_other.cert) != 0) {
    return -1;
  }
  return 0;
}

static void rm_rf(const char *dir) {
  char cmd[600];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
}

static int group_teardown(void **state) {
  (void)state;
  capstan_identity_cleanup(&g_capf);
  capstan_identity_cleanup(&g_other);
  rm_rf(g_tmpdir);
  return 0;
}

/* ---- The fake server ------------------------------------------------------- */

typedef enum {
  SC_INSTALL,       /* full install flow */
  SC_FETCH,         /* FETCH_CERT_REQUEST, expects the phone's certificate */
  SC_DELETE,        /* DELETE_CERT_REQUEST */
  SC_END_9,         /* unknown device */
  SC_RETRY_LATER,   /* RETRY_LATER {RETRY_DELAY=30} */
  SC_BAD_TAG,       /* AUTH_REQUEST carrying a tag the server may not send */
  SC_WRONG_SESSION, /* second message with another session id */
  SC_GARBAGE,       /* bytes that are not CAPF */
  SC_CLOSE_EARLY,   /* close after AUTH_RESPONSE without END_SESSION */
  SC_SILENT,        /* handshake, then nothing */
  SC_SPLIT,         /* AUTH_REQUEST split across two TLS records, then END 0 */
  SC_HANDSHAKE_ONLY /* the handshake is expected to fail */
} scenario_t;

typedef struct {
  fake_server_t fs; /* first: the server's script gets back here by a cast */
  scenario_t scenario;
  /* What the phone must send. */
  capstan_phone_auth_t auth;
  const char *auth_string;
  int key_alg;
  unsigned key_bits;
  int expect_in_progress;
  const uint8_t *expect_cert; /* by-certificate auth: the DER it must send */
  size_t expect_cert_len;
  int expect_cert_type;
  EVP_PKEY *expect_cert_key; /* to verify its signatures */
  int expect_sudi;
  /* What the server saw and did. */
  uint8_t *issued; /* the LSC it sent (DER, malloc'd) */
  size_t issued_len;
} fake_t;

#define CHECK(f, cond, ...) FAKE_CHECK(&(f)->fs, cond, __VA_ARGS__)

static int fake_send_simple(fake_t *f, SSL *ssl, int cmd, uint32_t sid, int tag, int value) {
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, cmd, sid, 1);
  if (tag >= 0) capstan_capf_builder_add_u8(&b, tag, (uint8_t)value);
  return fake_send(&f->fs, ssl, &b);
}

/* Reads one message, which must arrive alone in one TLS record. */
static int fake_read(fake_t *f, SSL *ssl, uint8_t *buf, size_t cap, size_t *len,
                     capstan_capf_msg_t *m) {
  return fake_read_msg(&f->fs, ssl, buf, cap, m, len, NULL);
}

/* Builds the AUTH_RESPONSE the phone must send for string/null modes. */
static size_t expected_auth_response(const fake_t *f, uint8_t *out, size_t cap) {
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_AUTH_RESPONSE, f->fs.session_id, 0);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, 1);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_VERSION, 3);
  capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_DEVICE_NAME, NAME, strlen(NAME));
  if (f->auth == CAPSTAN_PHONE_AUTH_STRING) {
    capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_AUTH_PASSWORD, f->auth_string,
                                    strlen(f->auth_string));
  } else if (f->auth != CAPSTAN_PHONE_AUTH_NULL_ABSENT) {
    capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_AUTH_PASSWORD, "", 0);
  }
  uint8_t *msg = NULL;
  size_t len = 0;
  if (capstan_capf_builder_finish(&b, &msg, &len) != 0 || len > cap) return 0;
  memcpy(out, msg, len);
  OPENSSL_free(msg);
  return len;
}

static int check_cert_auth(fake_t *f, const capstan_capf_msg_t *m) {
  uint8_t type;
  capstan_capf_slice_t der, sig1, sig2;
  uint8_t hash;
  CHECK(f, capstan_capf_get_certificate(m, &type, &der) == 0, "server: no CERTIFICATE");
  CHECK(f, type == f->expect_cert_type, "server: certificate type %u", type);
  CHECK(f, der.len == f->expect_cert_len && memcmp(der.data, f->expect_cert, der.len) == 0,
        "server: not the expected certificate");
  CHECK(f, capstan_capf_get_signed_data(m, &sig1) == 0, "server: no SIGNED_DATA");
  CHECK(f, capstan_capf_get_sha2_signed_data(m, &hash, &sig2) == 0 && hash == 3,
        "server: no SHA2_SIGNED_DATA with hash id 3");
  size_t data_len = strlen(NAME) + 1 + der.len;
  uint8_t *data = malloc(data_len);
  CHECK(f, data != NULL, "server: malloc");
  memcpy(data, NAME, strlen(NAME) + 1);
  memcpy(data + strlen(NAME) + 1, der.data, der.len);
  int v1 = capstan_pki_verify_signed_data(f->expect_cert_key, CAPSTAN_HASH_SHA1, data, data_len,
                                          sig1.data, sig1.len);
  int v2 = capstan_pki_verify_signed_data(f->expect_cert_key, CAPSTAN_HASH_SHA512, data, data_len,
                                          sig2.data, sig2.len);
  free(data);
  CHECK(f, v1 == 0, "server: SIGNED_DATA does not verify");
  CHECK(f, v2 == 0, "server: SHA2_SIGNED_DATA does not verify");
  if (f->expect_sudi) {
    capstan_capf_slice_t sudi;
    X509 *sudi_cert = NULL;
    CHECK(f, capstan_capf_get_sudi_data(m, &sudi) == 0, "server: no SUDI_DATA");
    CHECK(f, capstan_pki_verify_sudi(sudi.data, sudi.len, f->fs.session_id, &sudi_cert) == 0,
          "server: SUDI_DATA does not verify");
    X509_free(sudi_cert);
  } else {
    CHECK(f, !capstan_capf_msg_has(m, CAPSTAN_CAPF_EL_SUDI_DATA), "server: unexpected SUDI");
  }
  return 0;
}

static int run_install(fake_t *f, SSL *ssl, uint8_t *buf, size_t cap) {
  size_t len;
  capstan_capf_msg_t m;
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_KEY_GEN_REQUEST, f->fs.session_id, 1);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_KEY_TYPE, (uint8_t)f->key_alg);
  if (f->key_alg == CAPSTAN_KEY_RSA) {
    capstan_capf_builder_add_u16(&b, CAPSTAN_CAPF_EL_KEY_SIZE, (uint16_t)f->key_bits);
  } else {
    capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_EC_CURVE,
                                f->key_bits == 256   ? 0
                                : f->key_bits == 384 ? 1
                                                     : 2);
  }
  if (fake_send(&f->fs, ssl, &b) != 0) return -1;
  if (fake_read(f, ssl, buf, cap, &len, &m) != 0) return -1;
  if (f->expect_in_progress) {
    /* Exactly 55 11 <sid> 00 00. */
    uint8_t want[8] = {0x55,
                       0x11,
                       (uint8_t)(f->fs.session_id >> 24),
                       (uint8_t)(f->fs.session_id >> 16),
                       (uint8_t)(f->fs.session_id >> 8),
                       (uint8_t)f->fs.session_id,
                       0,
                       0};
    CHECK(f, len == 8 && memcmp(buf, want, 8) == 0, "server: bad REQUEST_IN_PROGRESS");
    if (fake_read(f, ssl, buf, cap, &len, &m) != 0) return -1;
  }
  CHECK(f, m.command == CAPSTAN_CAPF_CMD_KEY_GEN_RESPONSE, "server: expected KEY_GEN_RESPONSE");
  CHECK(f, m.present == (1u << CAPSTAN_CAPF_EL_PUBLIC_KEY) && m.unknown_count == 0,
        "server: KEY_GEN_RESPONSE must carry only PUBLIC_KEY");
  capstan_capf_slice_t spki;
  CHECK(f, capstan_capf_get_public_key(&m, &spki) == 0, "server: no PUBLIC_KEY");
  EVP_PKEY *key = NULL;
  const char *why = NULL;
  CHECK(f,
        capstan_pki_check_public_key(spki.data, spki.len, f->key_alg, f->key_bits, &key, &why) == 0,
        "server: public key refused: %s", why ? why : "?");
  uint8_t serial[16];
  int64_t not_after;
  int rc = capstan_pki_issue_lsc(&g_capf, NAME, key, 365, serial, &f->issued, &f->issued_len,
                                 &not_after);
  EVP_PKEY_free(key);
  CHECK(f, rc == 0, "server: cannot issue");
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST, f->fs.session_id, 1);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_CERTIFICATE_TYPE, 1);
  capstan_capf_builder_add_certificate(&b, 1, f->issued, f->issued_len);
  if (fake_send(&f->fs, ssl, &b) != 0) return -1;
  if (fake_read(f, ssl, buf, cap, &len, &m) != 0) return -1;
  uint8_t want[12] = {0x55, 0x0a, 0, 0, 0, 0, 0x00, 0x04, 0x01, 0x00, 0x01, 0x01};
  want[2] = (uint8_t)(f->fs.session_id >> 24);
  want[3] = (uint8_t)(f->fs.session_id >> 16);
  want[4] = (uint8_t)(f->fs.session_id >> 8);
  want[5] = (uint8_t)f->fs.session_id;
  CHECK(f, len == 12 && memcmp(buf, want, 12) == 0, "server: bad STORE_CERT_RESPONSE");
  return fake_send_simple(f, ssl, CAPSTAN_CAPF_CMD_END_SESSION, f->fs.session_id,
                          CAPSTAN_CAPF_EL_REASON, 1);
}

static int run_script(fake_t *f, SSL *ssl) {
  static uint8_t buf[CAPSTAN_CAPF_MAX_MESSAGE];
  size_t len;
  capstan_capf_msg_t m;
  capstan_capf_builder_t b;
  uint32_t sid = f->fs.session_id;

  switch (f->scenario) {
    case SC_SILENT:
      /* Wait for the phone to give up (it closes the connection). */
      SSL_read(ssl, buf, sizeof(buf));
      return 0;
    case SC_GARBAGE: {
      const uint8_t junk[] = {0x16, 0x03, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00};
      CHECK(f, SSL_write(ssl, junk, sizeof(junk)) == (int)sizeof(junk), "server: write");
      SSL_read(ssl, buf, sizeof(buf));
      return 0;
    }
    case SC_BAD_TAG:
      capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_AUTH_REQUEST, sid, 0);
      capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_VERSION, 3);
      capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_AUTH_TYPE, 0);
      capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_DEVICE_NAME, "x", 1);
      if (fake_send(&f->fs, ssl, &b) != 0) return -1;
      SSL_read(ssl, buf, sizeof(buf));
      return 0;
    case SC_SPLIT: {
      /* One message in two records: the phone must reassemble it. */
      capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_AUTH_REQUEST, sid, 1);
      capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_VERSION, 3);
      capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_AUTH_TYPE, 0);
      uint8_t *msg = NULL;
      size_t ml = 0;
      CHECK(f, capstan_capf_builder_finish(&b, &msg, &ml) == 0, "server: build");
      int ok = SSL_write(ssl, msg, 5) == 5 && SSL_write(ssl, msg + 5, (int)ml - 5) == (int)ml - 5;
      OPENSSL_free(msg);
      CHECK(f, ok, "server: write");
      break;
    }
    default:
      capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_AUTH_REQUEST, sid, 1);
      capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_VERSION, 3);
      capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_AUTH_TYPE, 0);
      if (fake_send(&f->fs, ssl, &b) != 0) return -1;
  }

  /* AUTH_RESPONSE. */
  if (fake_read(f, ssl, buf, sizeof(buf), &len, &m) != 0) return -1;
  CHECK(f, m.command == CAPSTAN_CAPF_CMD_AUTH_RESPONSE, "server: expected AUTH_RESPONSE, got %s",
        capstan_capf_command_name(m.command));
  if (f->auth == CAPSTAN_PHONE_AUTH_LSC || f->auth == CAPSTAN_PHONE_AUTH_MIC) {
    uint8_t v;
    char name[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1];
    capstan_capf_slice_t pw;
    CHECK(f, capstan_capf_get_reason(&m, &v) == 0 && v == 1, "server: REASON");
    CHECK(f, capstan_capf_get_version(&m, &v) == 0 && v == 3, "server: VERSION");
    CHECK(f, capstan_capf_get_device_name(&m, name) == 0 && strcmp(name, NAME) == 0,
          "server: DEVICE_NAME");
    CHECK(f, capstan_capf_get_auth_password(&m, &pw) == 0 && pw.len == 0, "server: password");
    if (check_cert_auth(f, &m) != 0) return -1;
  } else {
    uint8_t want[128];
    size_t want_len = expected_auth_response(f, want, sizeof(want));
    CHECK(f, want_len > 0 && len == want_len && memcmp(buf, want, len) == 0,
          "server: AUTH_RESPONSE bytes differ from the expected ones");
  }

  switch (f->scenario) {
    case SC_INSTALL:
      if (run_install(f, ssl, buf, sizeof(buf)) != 0) return -1;
      break;
    case SC_FETCH: {
      if (fake_send_simple(f, ssl, CAPSTAN_CAPF_CMD_FETCH_CERT_REQUEST, sid, -1, 0) != 0) return -1;
      if (fake_read(f, ssl, buf, sizeof(buf), &len, &m) != 0) return -1;
      CHECK(f, m.command == CAPSTAN_CAPF_CMD_FETCH_CERT_RESPONSE, "server: expected FETCH resp");
      uint8_t reason, type;
      capstan_capf_slice_t der;
      CHECK(f, capstan_capf_get_reason(&m, &reason) == 0, "server: FETCH without REASON");
      if (f->expect_cert != NULL && f->expect_cert_type == CAPSTAN_CAPF_CERT_LSC) {
        CHECK(f, reason == 1, "server: FETCH reason %u", reason);
        CHECK(f,
              capstan_capf_get_certificate(&m, &type, &der) == 0 && type == 1 &&
                  der.len == f->expect_cert_len && memcmp(der.data, f->expect_cert, der.len) == 0,
              "server: FETCH certificate differs");
      } else {
        CHECK(f, reason == 7 && !capstan_capf_msg_has(&m, CAPSTAN_CAPF_EL_CERTIFICATE),
              "server: FETCH without an LSC must say 7");
      }
      if (fake_send_simple(f, ssl, CAPSTAN_CAPF_CMD_END_SESSION, sid, CAPSTAN_CAPF_EL_REASON, 0)) {
        return -1;
      }
      break;
    }
    case SC_DELETE: {
      if (fake_send_simple(f, ssl, CAPSTAN_CAPF_CMD_DELETE_CERT_REQUEST, sid, -1, 0)) return -1;
      if (fake_read(f, ssl, buf, sizeof(buf), &len, &m) != 0) return -1;
      uint8_t want[12] = {0x55, 0x0e, 0, 0, 0, 0, 0x00, 0x04, 0x01, 0x00, 0x01, 0x01};
      memcpy(want + 2, buf + 2, 4); /* session id checked by fake_read */
      CHECK(f, len == 12 && memcmp(buf, want, 12) == 0, "server: bad DELETE_CERT_RESPONSE");
      if (fake_send_simple(f, ssl, CAPSTAN_CAPF_CMD_END_SESSION, sid, CAPSTAN_CAPF_EL_REASON, 1)) {
        return -1;
      }
      break;
    }
    case SC_END_9:
      if (fake_send_simple(f, ssl, CAPSTAN_CAPF_CMD_END_SESSION, sid, CAPSTAN_CAPF_EL_REASON, 9)) {
        return -1;
      }
      break;
    case SC_SPLIT:
      if (fake_send_simple(f, ssl, CAPSTAN_CAPF_CMD_END_SESSION, sid, CAPSTAN_CAPF_EL_REASON, 0)) {
        return -1;
      }
      break;
    case SC_RETRY_LATER:
      capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_RETRY_LATER, sid, 1);
      capstan_capf_builder_add_u16(&b, CAPSTAN_CAPF_EL_RETRY_DELAY, 30);
      if (fake_send(&f->fs, ssl, &b) != 0) return -1;
      break;
    case SC_WRONG_SESSION:
      if (fake_send_simple(f, ssl, CAPSTAN_CAPF_CMD_END_SESSION, sid + 1, CAPSTAN_CAPF_EL_REASON,
                           0)) {
        return -1;
      }
      break;
    case SC_CLOSE_EARLY:
      break;
    default:
      fake_fail(&f->fs, "server: unexpected scenario");
      return -1;
  }
  f->fs.finished = 1;
  if (f->scenario == SC_CLOSE_EARLY) return 0; /* close without END_SESSION */
  /* Wait for the phone's close so that nothing is cut short. */
  SSL_read(ssl, buf, sizeof(buf));
  return 0;
}

static int fake_script(fake_server_t *fs, SSL *ssl) {
  return run_script((fake_t *)fs, ssl);
}

static void fake_init(fake_t *f, scenario_t sc) {
  memset(f, 0, sizeof(*f));
  f->scenario = sc;
  f->fs.session_id = 0x5eed0000u | (uint32_t)sc;
  f->auth = CAPSTAN_PHONE_AUTH_NULL_STRING;
  f->key_alg = CAPSTAN_KEY_EC;
  f->key_bits = 256;
  f->fs.script = fake_script;
  f->fs.expect_handshake_failure = sc == SC_HANDSHAKE_ONLY;
  fake_server_listen(&f->fs, &g_capf);
}

static void fake_cleanup(fake_t *f) {
  fake_server_cleanup(&f->fs);
  free(f->issued);
}

static void phone_config(capstan_phone_config_t *cfg, const fake_t *f) {
  memset(cfg, 0, sizeof(*cfg));
  char addr[64];
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", f->fs.port);
  assert_int_equal(capstan_phone_parse_addr(addr, &cfg->addr), 0);
  cfg->device_name = NAME;
  cfg->auth = f->auth;
  cfg->auth_string = f->auth_string;
  cfg->step_timeout_ms = IO_TIMEOUT_S * 1000;
}

/* Runs the fake server in a thread and one phone in this thread. */
static void run_pair(fake_t *f, const capstan_phone_config_t *cfg, capstan_phone_result_t *res) {
  fake_server_run_pair(&f->fs, cfg, res);
  if (res->kind == CAPSTAN_PHONE_RESULT_ERROR) {
    fprintf(stderr, "phone: %s: %s\n", capstan_phone_error_name(res->error), res->detail);
  }
}

static SSL_CTX *phone_ctx(const char *pem) {
  char err[256];
  SSL_CTX *ctx = capstan_phone_ssl_ctx_new(pem, err, sizeof(err));
  assert_non_null(ctx);
  return ctx;
}

/* ---- Tests -------------------------------------------------------------------- */

static void install_and_check(capstan_phone_auth_t auth, const char *auth_string, int key_alg,
                              unsigned bits, uint64_t delay_ms, capstan_phone_result_t *res) {
  fake_t f;
  fake_init(&f, SC_INSTALL);
  f.auth = auth;
  f.auth_string = auth_string;
  f.key_alg = key_alg;
  f.key_bits = bits;
  f.expect_in_progress = delay_ms > 0;
  capstan_phone_config_t cfg;
  phone_config(&cfg, &f);
  cfg.keygen_delay_ms = delay_ms;
  cfg.ssl_ctx = phone_ctx(g_capf_pem); /* verifies the fake server */
  run_pair(&f, &cfg, res);
  SSL_CTX_free(cfg.ssl_ctx);
  assert_true(f.fs.finished);
  assert_int_equal(res->kind, CAPSTAN_PHONE_RESULT_OK);
  assert_int_equal(res->operation, CAPSTAN_PHONE_OP_INSTALL);
  assert_int_equal(res->end_reason, 1);
  assert_int_equal(res->error, CAPSTAN_PHONE_ERR_NONE);
  assert_int_equal(res->session_id, f.fs.session_id);
  assert_int_equal(res->sent_in_progress, delay_ms > 0);
  assert_int_equal(res->key_alg, key_alg);
  assert_int_equal(res->key_bits, bits);
  /* The phone holds exactly the certificate the server issued. */
  assert_non_null(res->lsc.cert);
  assert_non_null(res->lsc.key);
  char md5[33];
  capstan_pki_md5hash(f.issued, f.issued_len, md5);
  assert_string_equal(res->lsc_md5, md5);
  assert_int_equal(res->received_cert_len, f.issued_len);
  assert_memory_equal(res->received_cert, f.issued, f.issued_len);
  fake_cleanup(&f);
}

static void test_install_null_ec(void **state) {
  (void)state;
  capstan_phone_result_t res;
  install_and_check(CAPSTAN_PHONE_AUTH_NULL_STRING, NULL, CAPSTAN_KEY_EC, 256, 0, &res);
  char json[1024];
  capstan_phone_result_json(&res, json, sizeof(json));
  assert_non_null(strstr(json, "\"result\":\"ok\",\"reason\":1,\"operation\":\"install\""));
  assert_non_null(strstr(json, res.lsc_md5));
  capstan_phone_result_cleanup(&res);
}

static void test_install_string_rsa_with_delay(void **state) {
  (void)state;
  capstan_phone_result_t res;
  install_and_check(CAPSTAN_PHONE_AUTH_STRING, "123456", CAPSTAN_KEY_RSA, 1024, 50, &res);
  assert_int_equal(EVP_PKEY_id(res.lsc.key), EVP_PKEY_RSA);
  capstan_phone_result_cleanup(&res);
}

static void test_install_absent_password_p384(void **state) {
  (void)state;
  capstan_phone_result_t res;
  install_and_check(CAPSTAN_PHONE_AUTH_NULL_ABSENT, NULL, CAPSTAN_KEY_EC, 384, 0, &res);
  capstan_phone_result_cleanup(&res);
}

/* The fake expects authentication |auth| by certificate: |der| of |type|,
 * whose key |key| signs the phone's messages. */
static void fake_expect_cert(fake_t *f, capstan_phone_auth_t auth, const uint8_t *der,
                             size_t der_len, int type, EVP_PKEY *key) {
  f->auth = auth;
  f->expect_cert = der;
  f->expect_cert_len = der_len;
  f->expect_cert_type = type;
  f->expect_cert_key = key;
}

/* Runs scenario |sc| with a phone that authenticates by its LSC |lsc|
 * (|der| is its certificate); the session must end in a result. */
static void run_lsc_session(scenario_t sc, const capstan_identity_t *lsc, const uint8_t *der,
                            size_t der_len, capstan_phone_result_t *res) {
  fake_t f;
  fake_init(&f, sc);
  fake_expect_cert(&f, CAPSTAN_PHONE_AUTH_LSC, der, der_len, CAPSTAN_CAPF_CERT_LSC, lsc->key);
  capstan_phone_config_t cfg;
  phone_config(&cfg, &f);
  cfg.lsc = *lsc;
  run_pair(&f, &cfg, res);
  assert_true(f.fs.finished);
  assert_int_equal(res->kind, CAPSTAN_PHONE_RESULT_OK);
  fake_cleanup(&f);
}

/* Install, then authenticate with the new LSC and let the server fetch it,
 * then delete it, then fetch again (the phone has none). */
static void test_lsc_auth_fetch_delete(void **state) {
  (void)state;
  capstan_phone_result_t res;
  install_and_check(CAPSTAN_PHONE_AUTH_NULL_STRING, NULL, CAPSTAN_KEY_EC, 256, 0, &res);
  capstan_identity_t lsc = res.lsc;
  memset(&res.lsc, 0, sizeof(res.lsc));
  capstan_phone_result_cleanup(&res);
  uint8_t *der = NULL;
  size_t der_len = 0;
  assert_int_equal(capstan_pki_cert_to_der(lsc.cert, &der, &der_len), 0);

  run_lsc_session(SC_FETCH, &lsc, der, der_len, &res);
  assert_int_equal(res.operation, CAPSTAN_PHONE_OP_FETCH);
  assert_int_equal(res.end_reason, 0);
  assert_non_null(res.lsc.cert); /* still there */
  capstan_phone_result_cleanup(&res);

  run_lsc_session(SC_DELETE, &lsc, der, der_len, &res);
  assert_int_equal(res.operation, CAPSTAN_PHONE_OP_DELETE);
  assert_int_equal(res.end_reason, 1);
  assert_null(res.lsc.cert);
  assert_string_equal(res.lsc_md5, "");
  capstan_phone_result_cleanup(&res);

  /* A phone without an LSC answers FETCH with REASON=7. */
  fake_t f;
  fake_init(&f, SC_FETCH);
  capstan_phone_config_t cfg;
  phone_config(&cfg, &f);
  run_pair(&f, &cfg, &res);
  assert_true(f.fs.finished);
  assert_int_equal(res.kind, CAPSTAN_PHONE_RESULT_OK);
  assert_int_equal(res.operation, CAPSTAN_PHONE_OP_FETCH);
  capstan_phone_result_cleanup(&res);
  fake_cleanup(&f);

  free(der);
  capstan_identity_cleanup(&lsc);
}

/* MIC auth with SUDI: the MIC comes from a test manufacturing CA. */
static void test_mic_auth_with_sudi(void **state) {
  (void)state;
  capstan_identity_t ca = {0}, mic = {0}, sudi = {0};
  assert_int_equal(capstan_phone_create_test_ca("Test Manufacturing CA", &ca), 0);
  uint8_t *der = NULL, *sudi_der = NULL;
  size_t der_len = 0, sudi_len = 0;
  assert_int_equal(capstan_pki_generate_key(CAPSTAN_KEY_EC, 256, &mic.key), 0);
  assert_int_equal(capstan_phone_issue_test_leaf(&ca, NAME, mic.key, &der, &der_len), 0);
  assert_int_equal(capstan_pki_parse_cert(der, der_len, &mic.cert), 0);
  assert_int_equal(capstan_pki_generate_key(CAPSTAN_KEY_EC, 256, &sudi.key), 0);
  assert_int_equal(capstan_phone_issue_test_leaf(&ca, "SUDI", sudi.key, &sudi_der, &sudi_len), 0);
  assert_int_equal(capstan_pki_parse_cert(sudi_der, sudi_len, &sudi.cert), 0);

  fake_t f;
  fake_init(&f, SC_END_9);
  fake_expect_cert(&f, CAPSTAN_PHONE_AUTH_MIC, der, der_len, CAPSTAN_CAPF_CERT_MIC, mic.key);
  f.expect_sudi = 1;
  capstan_phone_config_t cfg;
  capstan_phone_result_t res;
  phone_config(&cfg, &f);
  cfg.mic = mic;
  cfg.sudi = sudi;
  run_pair(&f, &cfg, &res);
  assert_true(f.fs.finished);
  assert_int_equal(res.kind, CAPSTAN_PHONE_RESULT_END);
  assert_int_equal(res.end_reason, 9);
  assert_int_equal(res.operation, CAPSTAN_PHONE_OP_NONE);
  capstan_phone_result_cleanup(&res);
  fake_cleanup(&f);
  free(der);
  free(sudi_der);
  capstan_identity_cleanup(&ca);
  capstan_identity_cleanup(&mic);
  capstan_identity_cleanup(&sudi);
}

static void expect_error(scenario_t sc, capstan_phone_error_t want, uint64_t step_timeout_ms,
                         const char *pem, capstan_phone_result_t *res) {
  fake_t f;
  fake_init(&f, sc);
  capstan_phone_config_t cfg;
  phone_config(&cfg, &f);
  if (step_timeout_ms) cfg.step_timeout_ms = step_timeout_ms;
  cfg.ssl_ctx = pem ? phone_ctx(pem) : NULL;
  run_pair(&f, &cfg, res);
  SSL_CTX_free(cfg.ssl_ctx);
  assert_int_equal(res->kind, CAPSTAN_PHONE_RESULT_ERROR);
  assert_int_equal(res->error, want);
  assert_true(res->detail[0] != '\0');
  fake_cleanup(&f);
}

static void test_retry_later(void **state) {
  (void)state;
  capstan_phone_result_t res;
  expect_error(SC_RETRY_LATER, CAPSTAN_PHONE_ERR_RETRY_LATER, 0, NULL, &res);
  assert_int_equal(res.retry_delay, 30);
  capstan_phone_result_cleanup(&res);
}

static void test_server_protocol_errors(void **state) {
  (void)state;
  capstan_phone_result_t res;
  expect_error(SC_BAD_TAG, CAPSTAN_PHONE_ERR_PROTOCOL, 0, NULL, &res);
  assert_non_null(strstr(res.detail, "DEVICE_NAME"));
  capstan_phone_result_cleanup(&res);
  expect_error(SC_WRONG_SESSION, CAPSTAN_PHONE_ERR_PROTOCOL, 0, NULL, &res);
  assert_non_null(strstr(res.detail, "session id"));
  capstan_phone_result_cleanup(&res);
  expect_error(SC_GARBAGE, CAPSTAN_PHONE_ERR_PROTOCOL, 0, NULL, &res);
  capstan_phone_result_cleanup(&res);
  expect_error(SC_CLOSE_EARLY, CAPSTAN_PHONE_ERR_CLOSED, 0, NULL, &res);
  capstan_phone_result_cleanup(&res);
}

static void test_split_message_is_reassembled(void **state) {
  (void)state;
  fake_t f;
  fake_init(&f, SC_SPLIT);
  capstan_phone_config_t cfg;
  capstan_phone_result_t res;
  phone_config(&cfg, &f);
  run_pair(&f, &cfg, &res);
  assert_true(f.fs.finished);
  assert_int_equal(res.kind, CAPSTAN_PHONE_RESULT_END);
  assert_int_equal(res.end_reason, 0);
  capstan_phone_result_cleanup(&res);
  fake_cleanup(&f);
}

static void test_timeout(void **state) {
  (void)state;
  capstan_phone_result_t res;
  expect_error(SC_SILENT, CAPSTAN_PHONE_ERR_TIMEOUT, 200, NULL, &res);
  capstan_phone_result_cleanup(&res);
}

static void test_tls_verify_failure(void **state) {
  (void)state;
  capstan_phone_result_t res;
  expect_error(SC_HANDSHAKE_ONLY, CAPSTAN_PHONE_ERR_TLS, 0, g_other_pem, &res);
  capstan_phone_result_cleanup(&res);
}

static void test_connect_failure(void **state) {
  (void)state;
  /* A port nobody listens on: bind, read the port, close. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
  socklen_t sl = sizeof(sin);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
  close(fd);
  capstan_phone_config_t cfg;
  memset(&cfg, 0, sizeof(cfg));
  char addr[64];
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(sin.sin_port));
  assert_int_equal(capstan_phone_parse_addr(addr, &cfg.addr), 0);
  cfg.device_name = NAME;
  cfg.step_timeout_ms = IO_TIMEOUT_S * 1000;
  capstan_phone_result_t res;
  assert_int_equal(capstan_phone_run_one(&cfg, &res), 0);
  assert_int_equal(res.kind, CAPSTAN_PHONE_RESULT_ERROR);
  assert_int_equal(res.error, CAPSTAN_PHONE_ERR_CONNECT);
  capstan_phone_result_cleanup(&res);
}

static void test_bad_config_refused(void **state) {
  (void)state;
  capstan_phone_config_t cfg;
  memset(&cfg, 0, sizeof(cfg));
  assert_int_equal(capstan_phone_parse_addr("127.0.0.1:1", &cfg.addr), 0);
  capstan_phone_result_t res;
  /* No name. */
  assert_int_equal(capstan_phone_run_one(&cfg, &res), CAPSTAN_EINVAL);
  /* Certificate auth without a certificate. */
  cfg.device_name = NAME;
  cfg.auth = CAPSTAN_PHONE_AUTH_LSC;
  assert_int_equal(capstan_phone_run_one(&cfg, &res), CAPSTAN_EINVAL);
}

static void test_parse_helpers(void **state) {
  (void)state;
  struct sockaddr_storage ss;
  assert_int_equal(capstan_phone_parse_addr("127.0.0.1:3804", &ss), 0);
  assert_int_equal(ss.ss_family, AF_INET);
  assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 3804);
  assert_int_equal(capstan_phone_parse_addr("[::1]:3804", &ss), 0);
  assert_int_equal(ss.ss_family, AF_INET6);
  assert_int_equal(capstan_phone_parse_addr("localhost:1", &ss), 0);
  assert_int_equal(capstan_phone_parse_addr("127.0.0.1", &ss), CAPSTAN_EINVAL);
  assert_int_equal(capstan_phone_parse_addr("127.0.0.1:0", &ss), CAPSTAN_EINVAL);
  assert_int_equal(capstan_phone_parse_addr("127.0.0.1:65536", &ss), CAPSTAN_EINVAL);
  assert_int_equal(capstan_phone_parse_addr("[::1:3804", &ss), CAPSTAN_EINVAL);
  assert_int_equal(capstan_phone_parse_addr("example.com:3804", &ss), CAPSTAN_EINVAL);
  int alg;
  unsigned bits;
  assert_int_equal(capstan_phone_parse_key_spec("rsa2048", &alg, &bits), 0);
  assert_int_equal(alg, CAPSTAN_KEY_RSA);
  assert_int_equal(bits, 2048);
  assert_int_equal(capstan_phone_parse_key_spec("ec384", &alg, &bits), 0);
  assert_int_equal(alg, CAPSTAN_KEY_EC);
  assert_int_equal(bits, 384);
  assert_int_equal(capstan_phone_parse_key_spec("p521", &alg, &bits), 0);
  assert_int_equal(bits, 521);
  assert_int_equal(capstan_phone_parse_key_spec("rsa2000", &alg, &bits), CAPSTAN_EINVAL);
  assert_int_equal(capstan_phone_parse_key_spec("ec255", &alg, &bits), CAPSTAN_EINVAL);
  assert_int_equal(capstan_phone_parse_key_spec("dsa1024", &alg, &bits), CAPSTAN_EINVAL);
  capstan_phone_auth_t mode;
  assert_int_equal(capstan_phone_parse_auth("lsc", &mode), 0);
  assert_int_equal(mode, CAPSTAN_PHONE_AUTH_LSC);
  assert_int_equal(capstan_phone_parse_auth("null", &mode), 0);
  assert_int_equal(mode, CAPSTAN_PHONE_AUTH_NULL_STRING);
  assert_int_equal(capstan_phone_parse_auth("bogus", &mode), CAPSTAN_EINVAL);
}

static void test_keypool_cache(void **state) {
  (void)state;
  char dir[400];
  snprintf(dir, sizeof(dir), "%s/keys", g_tmpdir);
  capstan_phone_keypool_t *pool = capstan_phone_keypool_new(dir, 2);
  assert_non_null(pool);
  EVP_PKEY *a = NULL, *b = NULL, *c = NULL;
  assert_int_equal(capstan_phone_keypool_get(pool, CAPSTAN_KEY_EC, 256, &a), 0);
  assert_int_equal(capstan_phone_keypool_get(pool, CAPSTAN_KEY_EC, 256, &b), 0);
  assert_int_equal(capstan_phone_keypool_get(pool, CAPSTAN_KEY_EC, 256, &c), 0);
  assert_int_equal(EVP_PKEY_cmp(a, b), 0); /* two different keys, then round robin */
  assert_int_equal(EVP_PKEY_cmp(a, c), 1);
  assert_int_equal(capstan_phone_keypool_get(pool, CAPSTAN_KEY_EC, 255, &c), CAPSTAN_EINVAL);
  capstan_phone_keypool_free(pool);
  char path[600];
  struct stat st;
  snprintf(path, sizeof(path), "%s/ec256-0.der", dir);
  assert_int_equal(stat(path, &st), 0);
  snprintf(path, sizeof(path), "%s/ec256-1.der", dir);
  assert_int_equal(stat(path, &st), 0);
  /* A new pool on the same directory loads the same keys. */
  pool = capstan_phone_keypool_new(dir, 2);
  assert_int_equal(capstan_phone_keypool_prewarm(pool, CAPSTAN_KEY_EC, 256, 2), 0);
  EVP_PKEY *d = NULL, *e = NULL;
  assert_int_equal(capstan_phone_keypool_get(pool, CAPSTAN_KEY_EC, 256, &d), 0);
  assert_int_equal(capstan_phone_keypool_get(pool, CAPSTAN_KEY_EC, 256, &e), 0);
  assert_int_equal(EVP_PKEY_cmp(a, d), 1);
  assert_int_equal(EVP_PKEY_cmp(b, e), 1);
  /* A corrupt cache file is replaced, not trusted. */
  capstan_phone_keypool_free(pool);
  snprintf(path, sizeof(path), "%s/ec384-0.der", dir);
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  fputs("not a key", fp);
  fclose(fp);
  pool = capstan_phone_keypool_new(dir, 1);
  EVP_PKEY *g = NULL;
  assert_int_equal(capstan_phone_keypool_get(pool, CAPSTAN_KEY_EC, 384, &g), 0);
  assert_int_equal(EVP_PKEY_bits(g), 384);
  capstan_phone_keypool_free(pool);
  EVP_PKEY_free(a);
  EVP_PKEY_free(b);
  EVP_PKEY_free(c);
  EVP_PKEY_free(d);
  EVP_PKEY_free(e);
  EVP_PKEY_free(g);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_helpers),
      cmocka_unit_test(test_keypool_cache),
      cmocka_unit_test(test_install_null_ec),
      cmocka_unit_test(test_install_string_rsa_with_delay),
      cmocka_unit_test(test_install_absent_password_p384),
      cmocka_unit_test(test_lsc_auth_fetch_delete),
      cmocka_unit_test(test_mic_auth_with_sudi),
      cmocka_unit_test(test_retry_later),
      cmocka_unit_test(test_server_protocol_errors),
      cmocka_unit_test(test_split_message_is_reassembled),
      cmocka_unit_test(test_timeout),
      cmocka_unit_test(test_tls_verify_failure),
      cmocka_unit_test(test_connect_failure),
      cmocka_unit_test(test_bad_config_refused),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
