/* Tests of the simulated phone's certificate requests (the SIGN_CERT_REQUEST
 * extension of docs/spec/capf-protocol.md): the PKCS#10 builder and its
 * misbehaviour modes, the key file, and the phone's session against a small
 * scripted fake server (a thread with a blocking BoringSSL socket, as in
 * test_phone.c): online issuance, SIGN_CERT_REQUEST where it does not
 * belong, the offline CA (RETRY_LATER, then a hand-over in a later session
 * checked against the kept key), a refused hand-over that starts over, and
 * bad requests the server must reject.
 *
 * The server thread never calls cmocka: it records its first failure as a
 * string, and the main thread asserts on it after joining. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
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
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "bench/phone/phone.h"
#include "core/base/error.h"
#include "core/pki/pki.h"
#include "handlers/capf/wire.h"
#include "tests/unit/fake_capf_server.h"

#define IO_TIMEOUT_S FAKE_IO_TIMEOUT_S
#define NAME "SEP00AABBCCDDEE"

static capstan_identity_t g_capf; /* the fake server's CAPF identity (and "CA") */
static EVP_PKEY *g_rsa;           /* keys for the builder tests */
static EVP_PKEY *g_ec;
static char g_tmpdir[256];

static int group_setup(void **state) {
  (void)state;
  snprintf(g_tmpdir, sizeof(g_tmpdir), "/tmp/capstan-test-phone-csr-XXXXXX");
  if (mkdtemp(g_tmpdir) == NULL) return -1;
  if (capstan_pki_create_capf(NULL, &g_capf) != 0) return -1;
  if (capstan_pki_generate_key(CAPSTAN_KEY_RSA, 2048, &g_rsa) != 0) return -1;
  if (capstan_pki_generate_key(CAPSTAN_KEY_EC, 256, &g_ec) != 0) return -1;
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  capstan_identity_cleanup(&g_capf);
  EVP_PKEY_free(g_rsa);
  EVP_PKEY_free(g_ec);
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", g_tmpdir);
  return 0;
}

/* ---- Checking a request ------------------------------------------------------ */

typedef struct {
  int parses;
  int verifies;     /* its signature verifies with its own public key */
  int key_matches;  /* its public key is |key| */
  char cn[80];      /* subject CN ("" if none) */
  int subject_only; /* the subject holds exactly one attribute */
} csr_check_t;

static void check_csr(const uint8_t *der, size_t len, EVP_PKEY *key, csr_check_t *out) {
  memset(out, 0, sizeof(*out));
  const uint8_t *p = der;
  X509_REQ *req = d2i_X509_REQ(NULL, &p, (long)len);
  if (req == NULL || p != der + len) {
    X509_REQ_free(req);
    ERR_clear_error();
    return;
  }
  out->parses = 1;
  EVP_PKEY *pub = X509_REQ_get_pubkey(req);
  out->verifies = pub != NULL && X509_REQ_verify(req, pub) == 1;
  out->key_matches = pub != NULL && key != NULL && EVP_PKEY_cmp(pub, key) == 1;
  X509_NAME *subject = X509_REQ_get_subject_name(req);
  out->subject_only = X509_NAME_entry_count(subject) == 1;
  X509_NAME_get_text_by_NID(subject, NID_commonName, out->cn, sizeof(out->cn));
  EVP_PKEY_free(pub);
  X509_REQ_free(req);
  ERR_clear_error();
}

static void expect_csr(EVP_PKEY *key, capstan_phone_csr_mode_t mode, csr_check_t *c) {
  uint8_t *der = NULL;
  size_t len = 0;
  assert_int_equal(capstan_phone_make_csr(key, NAME, mode, &der, &len), 0);
  assert_non_null(der);
  assert_true(len > 0);
  check_csr(der, len, key, c);
  free(der);
}

static void builder_modes(EVP_PKEY *key) {
  csr_check_t c;
  expect_csr(key, CAPSTAN_PHONE_CSR_OK, &c);
  assert_true(c.parses);
  assert_true(c.verifies);
  assert_true(c.key_matches);
  assert_string_equal(c.cn, NAME);
  assert_true(c.subject_only);

  expect_csr(key, CAPSTAN_PHONE_CSR_WRONG_KEY, &c);
  assert_true(c.parses);
  assert_true(c.verifies); /* a good request, for another key */
  assert_false(c.key_matches);
  assert_string_equal(c.cn, NAME);

  expect_csr(key, CAPSTAN_PHONE_CSR_WRONG_CN, &c);
  assert_true(c.parses);
  assert_true(c.verifies);
  assert_true(c.key_matches);
  assert_string_equal(c.cn, "SEP000000000000");

  expect_csr(key, CAPSTAN_PHONE_CSR_BAD_SIGNATURE, &c);
  assert_true(c.parses);
  assert_false(c.verifies);
  assert_true(c.key_matches);
  assert_string_equal(c.cn, NAME);

  expect_csr(key, CAPSTAN_PHONE_CSR_GARBAGE, &c);
  assert_false(c.parses);

  uint8_t *der = (uint8_t *)1;
  size_t len = 1;
  assert_int_equal(capstan_phone_make_csr(key, NAME, CAPSTAN_PHONE_CSR_REFUSE, &der, &len),
                   CAPSTAN_EINVAL);
  assert_null(der);
  assert_int_equal(len, 0);
  assert_int_equal(capstan_phone_make_csr(key, NAME, CAPSTAN_PHONE_CSR_SILENT, &der, &len),
                   CAPSTAN_EINVAL);
  assert_int_equal(capstan_phone_make_csr(NULL, NAME, CAPSTAN_PHONE_CSR_OK, &der, &len),
                   CAPSTAN_EINVAL);
  assert_int_equal(capstan_phone_make_csr(key, "", CAPSTAN_PHONE_CSR_OK, &der, &len),
                   CAPSTAN_EINVAL);
}

static void test_csr_builder_rsa(void **state) {
  (void)state;
  builder_modes(g_rsa);
  /* SHA-256 with RSA. */
  uint8_t *der = NULL;
  size_t len = 0;
  assert_int_equal(capstan_phone_make_csr(g_rsa, NAME, CAPSTAN_PHONE_CSR_OK, &der, &len), 0);
  const uint8_t *p = der;
  X509_REQ *req = d2i_X509_REQ(NULL, &p, (long)len);
  assert_non_null(req);
  assert_int_equal(X509_REQ_get_signature_nid(req), NID_sha256WithRSAEncryption);
  X509_REQ_free(req);
  free(der);
}

static void test_csr_builder_ec(void **state) {
  (void)state;
  builder_modes(g_ec);
  uint8_t *der = NULL;
  size_t len = 0;
  assert_int_equal(capstan_phone_make_csr(g_ec, NAME, CAPSTAN_PHONE_CSR_OK, &der, &len), 0);
  const uint8_t *p = der;
  X509_REQ *req = d2i_X509_REQ(NULL, &p, (long)len);
  assert_non_null(req);
  assert_int_equal(X509_REQ_get_signature_nid(req), NID_ecdsa_with_SHA256);
  X509_REQ_free(req);
  free(der);
  /* The device SEP000000000000 gets the other wrong name. */
  assert_int_equal(
      capstan_phone_make_csr(g_ec, "SEP000000000000", CAPSTAN_PHONE_CSR_WRONG_CN, &der, &len), 0);
  csr_check_t c;
  check_csr(der, len, g_ec, &c);
  assert_string_equal(c.cn, "SEPFFFFFFFFFFFF");
  free(der);
}

static void test_csr_mode_names(void **state) {
  (void)state;
  static const char *const names[] = {"ok",      "refuse", "wrong-key", "wrong-cn", "bad-signature",
                                      "garbage", "silent"};
  for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
    capstan_phone_csr_mode_t m;
    assert_int_equal(capstan_phone_parse_csr_mode(names[i], &m), 0);
    assert_int_equal(m, (capstan_phone_csr_mode_t)i);
    assert_string_equal(capstan_phone_csr_mode_name(m), names[i]);
  }
  capstan_phone_csr_mode_t m;
  assert_int_equal(capstan_phone_parse_csr_mode("bogus", &m), CAPSTAN_EINVAL);
  assert_int_equal(capstan_phone_parse_csr_mode(NULL, &m), CAPSTAN_EINVAL);
}

static void test_key_file(void **state) {
  (void)state;
  char path[400];
  snprintf(path, sizeof(path), "%s/pending.der", g_tmpdir);
  EVP_PKEY *k = NULL;
  assert_int_equal(capstan_phone_load_key_file(path, &k), CAPSTAN_ENOENT);
  assert_int_equal(capstan_phone_save_key_file(path, g_ec), 0);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_int_equal(capstan_phone_load_key_file(path, &k), 0);
  assert_int_equal(EVP_PKEY_cmp(k, g_ec), 1);
  EVP_PKEY_free(k);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  fputs("not a key", f);
  fclose(f);
  assert_int_equal(capstan_phone_load_key_file(path, &k), CAPSTAN_EINVAL);
  assert_null(k);
  unlink(path);
}

/* ---- The fake server ----------------------------------------------------------- */

typedef enum {
  SC_ONLINE,           /* KEY_GEN, SIGN_CERT, STORE (certificate for the request), END 1 */
  SC_SIGN_EARLY,       /* SIGN_CERT_REQUEST right after AUTH_RESPONSE */
  SC_SIGN_ELEMENT,     /* KEY_GEN, then SIGN_CERT_REQUEST carrying an element */
  SC_SIGN_TWICE,       /* KEY_GEN, SIGN_CERT, SIGN_CERT again */
  SC_OFFLINE,          /* KEY_GEN, SIGN_CERT, RETRY_LATER {3600} */
  SC_HANDOVER,         /* STORE (the certificate for g_offline_key), END 1 */
  SC_HANDOVER_RESTART, /* STORE refused, then KEY_GEN, SIGN_CERT, STORE, END 1 */
  SC_BAD_REQUEST,      /* KEY_GEN, SIGN_CERT, then END |end_reason| */
  SC_BAD_REQUEST_STORE /* KEY_GEN, SIGN_CERT, then STORE whatever came */
} scenario_t;

typedef struct {
  fake_server_t fs; /* first: the server's script gets back here by a cast */
  scenario_t scenario;
  int end_reason;         /* SC_BAD_REQUEST */
  EVP_PKEY *handover_key; /* SC_HANDOVER*: the key to certify */
  /* What the server saw. */
  EVP_PKEY *sent_key; /* the last PUBLIC_KEY of KEY_GEN_RESPONSE */
  uint8_t *csr;       /* the last CERT_REQUEST (malloc'd) */
  size_t csr_len;
  int sign_reason;      /* REASON of SIGN_CERT_RESPONSE, -1 if none */
  int sign_had_request; /* it carried CERT_REQUEST */
  int store_reasons[4]; /* REASON of each STORE_CERT_RESPONSE */
  unsigned stores;
  uint8_t *issued; /* the last certificate sent (DER) */
  size_t issued_len;
} fake_t;

#define CHECK(f, cond, ...) FAKE_CHECK(&(f)->fs, cond, __VA_ARGS__)

/* A message with no element, or one u8/u16 element. Not server-side
 * checked, so that SIGN_CERT_REQUEST can be built whatever wire.c says. */
static int fake_send_cmd(fake_t *f, SSL *ssl, int cmd, int tag, int value, int u16) {
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, cmd, f->fs.session_id, 0);
  if (tag >= 0 && u16) capstan_capf_builder_add_u16(&b, tag, (uint16_t)value);
  if (tag >= 0 && !u16) capstan_capf_builder_add_u8(&b, tag, (uint8_t)value);
  return fake_send(&f->fs, ssl, &b);
}

static int fake_read(fake_t *f, SSL *ssl, uint8_t *buf, size_t cap, capstan_capf_msg_t *m,
                     int want_cmd) {
  if (fake_read_msg(&f->fs, ssl, buf, cap, m, NULL, capstan_capf_command_name(want_cmd)) != 0) {
    return -1;
  }
  CHECK(f, m->command == want_cmd, "server: expected %s, got %s",
        capstan_capf_command_name(want_cmd), capstan_capf_command_name(m->command));
  return 0;
}

static int fake_keygen(fake_t *f, SSL *ssl, uint8_t *buf, size_t cap) {
  capstan_capf_msg_t m;
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_KEY_GEN_REQUEST, f->fs.session_id, 1);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_KEY_TYPE, CAPSTAN_CAPF_KEY_EC);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_EC_CURVE, 0);
  if (fake_send(&f->fs, ssl, &b) != 0) return -1;
  if (fake_read(f, ssl, buf, cap, &m, CAPSTAN_CAPF_CMD_KEY_GEN_RESPONSE) != 0) return -1;
  capstan_capf_slice_t spki;
  CHECK(f, capstan_capf_get_public_key(&m, &spki) == 0, "server: no PUBLIC_KEY");
  EVP_PKEY_free(f->sent_key);
  f->sent_key = NULL;
  const char *why = NULL;
  CHECK(f,
        capstan_pki_check_public_key(spki.data, spki.len, CAPSTAN_KEY_EC, 256, &f->sent_key,
                                     &why) == 0,
        "server: public key refused: %s", why ? why : "?");
  return 0;
}

static int fake_sign(fake_t *f, SSL *ssl, uint8_t *buf, size_t cap) {
  capstan_capf_msg_t m;
  if (fake_send_cmd(f, ssl, CAPSTAN_CAPF_CMD_SIGN_CERT_REQUEST, -1, 0, 0) != 0) return -1;
  if (fake_read(f, ssl, buf, cap, &m, CAPSTAN_CAPF_CMD_SIGN_CERT_RESPONSE) != 0) return -1;
  uint8_t reason;
  CHECK(f, capstan_capf_get_reason(&m, &reason) == 0, "server: SIGN_CERT_RESPONSE without REASON");
  f->sign_reason = reason;
  capstan_capf_slice_t req;
  f->sign_had_request = capstan_capf_get_cert_request(&m, &req) == 0;
  CHECK(f, m.element_count == 1u + (unsigned)f->sign_had_request,
        "server: SIGN_CERT_RESPONSE with other elements");
  free(f->csr);
  f->csr = NULL;
  f->csr_len = 0;
  if (f->sign_had_request) {
    f->csr = malloc(req.len);
    CHECK(f, f->csr != NULL, "server: malloc");
    memcpy(f->csr, req.data, req.len);
    f->csr_len = req.len;
  }
  return 0;
}

/* STORE_CERT_REQUEST with a certificate for |key|; records the answer. */
static int fake_store(fake_t *f, SSL *ssl, uint8_t *buf, size_t cap, EVP_PKEY *key) {
  capstan_capf_msg_t m;
  uint8_t serial[16];
  int64_t not_after;
  free(f->issued);
  f->issued = NULL;
  CHECK(f,
        capstan_pki_issue_lsc(&g_capf, NAME, key, 365, serial, &f->issued, &f->issued_len,
                              &not_after) == 0,
        "server: cannot issue");
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST, f->fs.session_id, 1);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_CERTIFICATE_TYPE, 1);
  capstan_capf_builder_add_certificate(&b, 1, f->issued, f->issued_len);
  if (fake_send(&f->fs, ssl, &b) != 0) return -1;
  if (fake_read(f, ssl, buf, cap, &m, CAPSTAN_CAPF_CMD_STORE_CERT_RESPONSE) != 0) return -1;
  uint8_t reason;
  CHECK(f, capstan_capf_get_reason(&m, &reason) == 0, "server: STORE_CERT_RESPONSE w/o REASON");
  CHECK(f, f->stores < 4, "server: too many stores");
  f->store_reasons[f->stores++] = reason;
  return 0;
}

/* The public key of the request the phone sent (the online CA's view). */
static EVP_PKEY *csr_key(const fake_t *f) {
  const uint8_t *p = f->csr;
  X509_REQ *req = d2i_X509_REQ(NULL, &p, (long)f->csr_len);
  EVP_PKEY *k = req != NULL ? X509_REQ_get_pubkey(req) : NULL;
  X509_REQ_free(req);
  ERR_clear_error();
  return k;
}

static int run_script(fake_t *f, SSL *ssl) {
  static uint8_t buf[CAPSTAN_CAPF_MAX_MESSAGE];
  capstan_capf_msg_t m;
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_AUTH_REQUEST, f->fs.session_id, 1);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_VERSION, 3);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_AUTH_TYPE, 0);
  if (fake_send(&f->fs, ssl, &b) != 0) return -1;
  if (fake_read(f, ssl, buf, sizeof(buf), &m, CAPSTAN_CAPF_CMD_AUTH_RESPONSE) != 0) return -1;

  switch (f->scenario) {
    case SC_SIGN_EARLY:
      if (fake_send_cmd(f, ssl, CAPSTAN_CAPF_CMD_SIGN_CERT_REQUEST, -1, 0, 0) != 0) return -1;
      f->fs.finished = 1;
      SSL_read(ssl, buf, sizeof(buf)); /* the phone closes */
      return 0;
    case SC_SIGN_ELEMENT:
      if (fake_keygen(f, ssl, buf, sizeof(buf)) != 0) return -1;
      if (fake_send_cmd(f, ssl, CAPSTAN_CAPF_CMD_SIGN_CERT_REQUEST, CAPSTAN_CAPF_EL_REASON, 1, 0)) {
        return -1;
      }
      f->fs.finished = 1;
      SSL_read(ssl, buf, sizeof(buf));
      return 0;
    case SC_SIGN_TWICE:
      if (fake_keygen(f, ssl, buf, sizeof(buf)) != 0) return -1;
      if (fake_sign(f, ssl, buf, sizeof(buf)) != 0) return -1;
      if (fake_send_cmd(f, ssl, CAPSTAN_CAPF_CMD_SIGN_CERT_REQUEST, -1, 0, 0) != 0) return -1;
      f->fs.finished = 1;
      SSL_read(ssl, buf, sizeof(buf));
      return 0;
    case SC_ONLINE: {
      if (fake_keygen(f, ssl, buf, sizeof(buf)) != 0) return -1;
      if (fake_sign(f, ssl, buf, sizeof(buf)) != 0) return -1;
      EVP_PKEY *k = csr_key(f);
      CHECK(f, k != NULL, "server: the request does not parse");
      int rc = fake_store(f, ssl, buf, sizeof(buf), k);
      EVP_PKEY_free(k);
      if (rc != 0) return -1;
      break;
    }
    case SC_OFFLINE:
      if (fake_keygen(f, ssl, buf, sizeof(buf)) != 0) return -1;
      if (fake_sign(f, ssl, buf, sizeof(buf)) != 0) return -1;
      if (fake_send_cmd(f, ssl, CAPSTAN_CAPF_CMD_RETRY_LATER, CAPSTAN_CAPF_EL_RETRY_DELAY, 3600,
                        1) != 0) {
        return -1;
      }
      f->fs.finished = 1;
      SSL_read(ssl, buf, sizeof(buf));
      return 0;
    case SC_HANDOVER:
      if (fake_store(f, ssl, buf, sizeof(buf), f->handover_key) != 0) return -1;
      break;
    case SC_HANDOVER_RESTART: {
      if (fake_store(f, ssl, buf, sizeof(buf), f->handover_key) != 0) return -1;
      CHECK(f, f->store_reasons[0] != 1, "server: the phone took the hand-over");
      if (fake_keygen(f, ssl, buf, sizeof(buf)) != 0) return -1;
      if (fake_sign(f, ssl, buf, sizeof(buf)) != 0) return -1;
      EVP_PKEY *k = csr_key(f);
      CHECK(f, k != NULL, "server: the request does not parse");
      int rc = fake_store(f, ssl, buf, sizeof(buf), k);
      EVP_PKEY_free(k);
      if (rc != 0) return -1;
      break;
    }
    case SC_BAD_REQUEST:
      if (fake_keygen(f, ssl, buf, sizeof(buf)) != 0) return -1;
      if (fake_sign(f, ssl, buf, sizeof(buf)) != 0) return -1;
      if (fake_send_cmd(f, ssl, CAPSTAN_CAPF_CMD_END_SESSION, CAPSTAN_CAPF_EL_REASON, f->end_reason,
                        0) != 0) {
        return -1;
      }
      f->fs.finished = 1;
      SSL_read(ssl, buf, sizeof(buf));
      return 0;
    case SC_BAD_REQUEST_STORE:
      if (fake_keygen(f, ssl, buf, sizeof(buf)) != 0) return -1;
      if (fake_sign(f, ssl, buf, sizeof(buf)) != 0) return -1;
      {
        /* A server that certifies the key from KEY_GEN_RESPONSE although
         * the request was bad: the phone must say this is wrong. */
        capstan_capf_builder_t sb;
        uint8_t serial[16];
        int64_t na;
        free(f->issued);
        f->issued = NULL;
        CHECK(f,
              capstan_pki_issue_lsc(&g_capf, NAME, f->sent_key, 365, serial, &f->issued,
                                    &f->issued_len, &na) == 0,
              "server: cannot issue");
        capstan_capf_builder_begin(&sb, CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST, f->fs.session_id, 1);
        capstan_capf_builder_add_u8(&sb, CAPSTAN_CAPF_EL_CERTIFICATE_TYPE, 1);
        capstan_capf_builder_add_certificate(&sb, 1, f->issued, f->issued_len);
        if (fake_send(&f->fs, ssl, &sb) != 0) return -1;
      }
      f->fs.finished = 1;
      SSL_read(ssl, buf, sizeof(buf));
      return 0;
  }
  if (fake_send_cmd(f, ssl, CAPSTAN_CAPF_CMD_END_SESSION, CAPSTAN_CAPF_EL_REASON, 1, 0) != 0) {
    return -1;
  }
  f->fs.finished = 1;
  SSL_read(ssl, buf, sizeof(buf));
  return 0;
}

static int fake_script(fake_server_t *fs, SSL *ssl) {
  return run_script((fake_t *)fs, ssl);
}

static void fake_init(fake_t *f, scenario_t sc) {
  memset(f, 0, sizeof(*f));
  f->scenario = sc;
  f->fs.session_id = 0xc5a00000u | (uint32_t)sc;
  f->sign_reason = -1;
  f->fs.script = fake_script;
  fake_server_listen(&f->fs, &g_capf);
}

static void fake_cleanup(fake_t *f) {
  fake_server_cleanup(&f->fs);
  EVP_PKEY_free(f->sent_key);
  free(f->csr);
  free(f->issued);
}

static void phone_config(capstan_phone_config_t *cfg, const fake_t *f) {
  memset(cfg, 0, sizeof(*cfg));
  char addr[64];
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", f->fs.port);
  assert_int_equal(capstan_phone_parse_addr(addr, &cfg->addr), 0);
  cfg->device_name = NAME;
  cfg->auth = CAPSTAN_PHONE_AUTH_NULL_STRING;
  cfg->step_timeout_ms = IO_TIMEOUT_S * 1000;
}

static void run_pair(fake_t *f, const capstan_phone_config_t *cfg, capstan_phone_result_t *res) {
  fake_server_run_pair(&f->fs, cfg, res);
  assert_true(f->fs.finished);
}

/* ---- Session tests --------------------------------------------------------------- */

static void test_online_request(void **state) {
  (void)state;
  fake_t f;
  fake_init(&f, SC_ONLINE);
  capstan_phone_config_t cfg;
  capstan_phone_result_t res;
  phone_config(&cfg, &f);
  run_pair(&f, &cfg, &res);
  /* The request: for the key of KEY_GEN_RESPONSE, CN = device, verifies. */
  assert_int_equal(f.sign_reason, 1);
  assert_true(f.sign_had_request);
  csr_check_t c;
  check_csr(f.csr, f.csr_len, f.sent_key, &c);
  assert_true(c.parses);
  assert_true(c.verifies);
  assert_true(c.key_matches);
  assert_string_equal(c.cn, NAME);
  assert_int_equal(f.stores, 1);
  assert_int_equal(f.store_reasons[0], 1);
  assert_int_equal(res.kind, CAPSTAN_PHONE_RESULT_OK);
  assert_int_equal(res.end_reason, 1);
  assert_true(res.csr_requested);
  assert_true(res.csr_sent);
  assert_false(res.handover);
  assert_true(res.lsc_stored);
  assert_null(res.pending_key);
  assert_non_null(res.lsc.cert);
  char md5[33];
  capstan_pki_md5hash(f.issued, f.issued_len, md5);
  assert_string_equal(res.lsc_md5, md5);
  char json[2048];
  capstan_phone_result_json(&res, json, sizeof(json));
  assert_non_null(strstr(json, "\"csr_sent\":true"));
  assert_non_null(strstr(json, "\"lsc_stored\":true"));
  assert_non_null(strstr(json, "\"handover\":false"));
  capstan_phone_result_cleanup(&res);
  fake_cleanup(&f);
}

static void expect_protocol_error(scenario_t sc, const char *detail) {
  fake_t f;
  fake_init(&f, sc);
  capstan_phone_config_t cfg;
  capstan_phone_result_t res;
  phone_config(&cfg, &f);
  run_pair(&f, &cfg, &res);
  assert_int_equal(res.kind, CAPSTAN_PHONE_RESULT_ERROR);
  assert_int_equal(res.error, CAPSTAN_PHONE_ERR_PROTOCOL);
  if (strstr(res.detail, detail) == NULL) fail_msg("detail: %s", res.detail);
  capstan_phone_result_cleanup(&res);
  fake_cleanup(&f);
}

static void test_sign_request_out_of_place(void **state) {
  (void)state;
  expect_protocol_error(SC_SIGN_EARLY, "unexpected SIGN_CERT_REQUEST in state WAIT_OPERATION");
  /* The server-side tag rule (SIGN_CERT_REQUEST carries none) catches it. */
  expect_protocol_error(SC_SIGN_ELEMENT,
                        "SIGN_CERT_REQUEST: tag REASON not allowed from the server");
  expect_protocol_error(SC_SIGN_TWICE, "unexpected SIGN_CERT_REQUEST in state WAIT_CA");
}

/* Offline CA: session 1 ends in RETRY_LATER after the request, the key is
 * kept in the key file; session 2 (a new phone run) gets the certificate
 * without KEY_GEN_REQUEST and checks it against that key. */
static void test_offline_handover(void **state) {
  (void)state;
  char key_file[400];
  snprintf(key_file, sizeof(key_file), "%s/offline-key.der", g_tmpdir);
  unlink(key_file);

  fake_t f;
  fake_init(&f, SC_OFFLINE);
  capstan_phone_config_t cfg;
  capstan_phone_result_t res;
  phone_config(&cfg, &f);
  cfg.key_file = key_file;
  run_pair(&f, &cfg, &res);
  assert_int_equal(res.kind, CAPSTAN_PHONE_RESULT_ERROR);
  assert_int_equal(res.error, CAPSTAN_PHONE_ERR_RETRY_LATER);
  assert_int_equal(res.retry_delay, 3600);
  assert_true(res.csr_sent);
  assert_true(res.key_file_written);
  assert_false(res.lsc_stored);
  assert_null(res.lsc.cert);
  assert_non_null(res.pending_key);
  assert_int_equal(EVP_PKEY_cmp(res.pending_key, f.sent_key), 1);
  EVP_PKEY *on_disk = NULL;
  assert_int_equal(capstan_phone_load_key_file(key_file, &on_disk), 0);
  assert_int_equal(EVP_PKEY_cmp(on_disk, f.sent_key), 1);
  char json[2048];
  capstan_phone_result_json(&res, json, sizeof(json));
  assert_non_null(strstr(json, "\"retry_delay\":3600"));
  assert_non_null(strstr(json, "\"csr_sent\":true"));
  assert_non_null(strstr(json, "\"pending_key\":true"));
  EVP_PKEY *requested = csr_key(&f);
  assert_non_null(requested);
  capstan_phone_result_cleanup(&res);
  fake_cleanup(&f);

  /* Session 2: the certificate for the request's key. */
  fake_init(&f, SC_HANDOVER);
  f.handover_key = requested;
  phone_config(&cfg, &f);
  cfg.key_file = key_file;
  run_pair(&f, &cfg, &res);
  assert_int_equal(f.stores, 1);
  assert_int_equal(f.store_reasons[0], 1);
  assert_int_equal(res.kind, CAPSTAN_PHONE_RESULT_OK);
  assert_int_equal(res.operation, CAPSTAN_PHONE_OP_INSTALL);
  assert_true(res.handover);
  assert_true(res.lsc_stored);
  assert_false(res.csr_sent);
  assert_null(res.pending_key);
  assert_int_equal(res.key_alg, -1);
  assert_non_null(res.lsc.key);
  assert_int_equal(EVP_PKEY_cmp(res.lsc.key, on_disk), 1);
  capstan_phone_result_cleanup(&res);
  fake_cleanup(&f);

  /* A hand-over to a phone without that key (no key file): refused, as
   * a certificate that is not the phone's. */
  unlink(key_file);
  fake_init(&f, SC_HANDOVER);
  f.handover_key = requested;
  phone_config(&cfg, &f);
  run_pair(&f, &cfg, &res);
  assert_int_equal(f.store_reasons[0], 7);
  assert_int_equal(res.kind, CAPSTAN_PHONE_RESULT_ERROR);
  assert_int_equal(res.error, CAPSTAN_PHONE_ERR_BAD_CERT);
  assert_true(res.handover);
  assert_false(res.lsc_stored);
  assert_int_equal(res.stores_refused, 1);
  capstan_phone_result_cleanup(&res);
  fake_cleanup(&f);

  /* The same phone given the key as pending_key (no file) takes it. */
  fake_init(&f, SC_HANDOVER);
  f.handover_key = requested;
  phone_config(&cfg, &f);
  cfg.pending_key = on_disk;
  run_pair(&f, &cfg, &res);
  assert_int_equal(f.store_reasons[0], 1);
  assert_int_equal(res.kind, CAPSTAN_PHONE_RESULT_OK);
  assert_true(res.lsc_stored);
  capstan_phone_result_cleanup(&res);
  fake_cleanup(&f);

  EVP_PKEY_free(requested);
  EVP_PKEY_free(on_disk);
}

/* --refuse-store on a hand-over: the phone keeps its state, the server
 * starts over with KEY_GEN_REQUEST in the same session, and the new key
 * replaces the old one in the key file. */
static void test_refused_handover_restarts(void **state) {
  (void)state;
  char key_file[400];
  snprintf(key_file, sizeof(key_file), "%s/refuse-key.der", g_tmpdir);
  assert_int_equal(capstan_phone_save_key_file(key_file, g_ec), 0);
  fake_t f;
  fake_init(&f, SC_HANDOVER_RESTART);
  f.handover_key = g_ec;
  capstan_phone_config_t cfg;
  capstan_phone_result_t res;
  phone_config(&cfg, &f);
  cfg.key_file = key_file;
  cfg.refuse_store = 1;
  run_pair(&f, &cfg, &res);
  assert_int_equal(f.stores, 2);
  assert_int_equal(f.store_reasons[0], 7);
  assert_int_equal(f.store_reasons[1], 1);
  assert_int_equal(res.kind, CAPSTAN_PHONE_RESULT_OK);
  assert_int_equal(res.error, CAPSTAN_PHONE_ERR_NONE);
  assert_int_equal(res.end_reason, 1);
  assert_true(res.handover);
  assert_int_equal(res.stores_refused, 1);
  assert_true(res.csr_sent);
  assert_true(res.lsc_stored);
  assert_true(res.key_file_written);
  assert_int_equal(EVP_PKEY_cmp(res.lsc.key, f.sent_key), 1);
  assert_int_equal(EVP_PKEY_cmp(res.lsc.key, g_ec), 0); /* not the old key */
  EVP_PKEY *on_disk = NULL;
  assert_int_equal(capstan_phone_load_key_file(key_file, &on_disk), 0);
  assert_int_equal(EVP_PKEY_cmp(on_disk, f.sent_key), 1);
  EVP_PKEY_free(on_disk);
  capstan_phone_result_cleanup(&res);
  fake_cleanup(&f);
}

/* Each bad request mode: what the server receives, and the phone's view of
 * the server's answer (END_SESSION 7: fine; 1, or a STORE: wrong). */
static void test_bad_request_modes(void **state) {
  (void)state;
  static const capstan_phone_csr_mode_t modes[] = {
      CAPSTAN_PHONE_CSR_REFUSE,        CAPSTAN_PHONE_CSR_WRONG_KEY, CAPSTAN_PHONE_CSR_WRONG_CN,
      CAPSTAN_PHONE_CSR_BAD_SIGNATURE, CAPSTAN_PHONE_CSR_GARBAGE,
  };
  for (unsigned i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
    fake_t f;
    fake_init(&f, SC_BAD_REQUEST);
    f.end_reason = 7;
    capstan_phone_config_t cfg;
    capstan_phone_result_t res;
    phone_config(&cfg, &f);
    cfg.csr_mode = modes[i];
    run_pair(&f, &cfg, &res);
    csr_check_t c;
    if (modes[i] == CAPSTAN_PHONE_CSR_REFUSE) {
      assert_int_equal(f.sign_reason, 7);
      assert_false(f.sign_had_request);
      assert_false(res.csr_sent);
    } else {
      assert_int_equal(f.sign_reason, 1);
      assert_true(f.sign_had_request);
      assert_true(res.csr_sent);
      check_csr(f.csr, f.csr_len, f.sent_key, &c);
      switch (modes[i]) {
        case CAPSTAN_PHONE_CSR_WRONG_KEY:
          assert_true(c.verifies);
          assert_false(c.key_matches);
          break;
        case CAPSTAN_PHONE_CSR_WRONG_CN:
          assert_true(c.verifies && c.key_matches);
          assert_string_equal(c.cn, "SEP000000000000");
          break;
        case CAPSTAN_PHONE_CSR_BAD_SIGNATURE:
          assert_true(c.parses && c.key_matches);
          assert_false(c.verifies);
          break;
        default:
          assert_false(c.parses);
      }
    }
    assert_true(res.csr_requested);
    assert_int_equal(res.kind, CAPSTAN_PHONE_RESULT_OK);
    assert_int_equal(res.end_reason, 7);
    assert_false(res.lsc_stored);
    assert_non_null(res.pending_key);
    capstan_phone_result_cleanup(&res);
    fake_cleanup(&f);
  }

  /* END_SESSION 1 after a refused request: the server claims a success. */
  fake_t f;
  fake_init(&f, SC_BAD_REQUEST);
  f.end_reason = 1;
  capstan_phone_config_t cfg;
  capstan_phone_result_t res;
  phone_config(&cfg, &f);
  cfg.csr_mode = CAPSTAN_PHONE_CSR_REFUSE;
  run_pair(&f, &cfg, &res);
  assert_int_equal(res.error, CAPSTAN_PHONE_ERR_PROTOCOL);
  assert_non_null(strstr(res.detail, "END_SESSION REASON=1"));
  capstan_phone_result_cleanup(&res);
  fake_cleanup(&f);

  /* A certificate after a bad request: the server did not check it. */
  fake_init(&f, SC_BAD_REQUEST_STORE);
  phone_config(&cfg, &f);
  cfg.csr_mode = CAPSTAN_PHONE_CSR_BAD_SIGNATURE;
  run_pair(&f, &cfg, &res);
  assert_int_equal(res.error, CAPSTAN_PHONE_ERR_PROTOCOL);
  assert_non_null(strstr(res.detail, "unexpected STORE_CERT_REQUEST in state WAIT_REJECT"));
  assert_false(res.lsc_stored);
  capstan_phone_result_cleanup(&res);
  fake_cleanup(&f);
}

/* silent: no answer; the phone waits (ca_wait) for the server to end. */
static void test_silent_mode(void **state) {
  (void)state;
  fake_t f;
  fake_init(&f, SC_BAD_REQUEST);
  f.end_reason = 7;
  capstan_phone_config_t cfg;
  capstan_phone_result_t res;
  phone_config(&cfg, &f);
  cfg.csr_mode = CAPSTAN_PHONE_CSR_SILENT;
  /* The fake waits for an answer that never comes: its read times out
   * (IO_TIMEOUT_S), so the phone's own wait runs out first. */
  cfg.step_timeout_ms = 300;
  cfg.ca_wait_ms = 300;
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, fake_server_main, &f.fs), 0);
  assert_int_equal(capstan_phone_run_one(&cfg, &res), 0);
  pthread_join(th, NULL);
  /* The fake failed reading SIGN_CERT_RESPONSE: that is the point. */
  assert_non_null(strstr(f.fs.failure, "SIGN_CERT_RESPONSE"));
  assert_int_equal(res.kind, CAPSTAN_PHONE_RESULT_ERROR);
  assert_int_equal(res.error, CAPSTAN_PHONE_ERR_TIMEOUT);
  assert_non_null(strstr(res.detail, "WAIT_REJECT"));
  assert_true(res.csr_requested);
  assert_false(res.csr_sent);
  capstan_phone_result_cleanup(&res);
  fake_cleanup(&f);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_csr_builder_rsa),   cmocka_unit_test(test_csr_builder_ec),
      cmocka_unit_test(test_csr_mode_names),    cmocka_unit_test(test_key_file),
      cmocka_unit_test(test_online_request),    cmocka_unit_test(test_sign_request_out_of_place),
      cmocka_unit_test(test_offline_handover),  cmocka_unit_test(test_refused_handover_restarts),
      cmocka_unit_test(test_bad_request_modes), cmocka_unit_test(test_silent_mode),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
