/* Unit tests for the CAPF state machine (handlers/capf/session.h), in
 * process and without sockets: a fake host implements the session's hooks
 * (it keeps what is sent, the armed timer, the records and jobs queued) and
 * the test plays both the phone and the server's store and workers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/mem.h>
#include <openssl/x509.h>
#include <time.h>
#include <uv.h>

#include "core/base/error.h"
#include "bench/phone/phone_pki.h"
#include "core/pki/pki.h"
#include "core/ca/requests.h"
#include "handlers/capf/session.h"

/* ---- the fake host ------------------------------------------------------- */

#define MAX_SENT 16
#define MAX_QUEUED 16
#define NO_TIMER UINT64_MAX

typedef struct fake {
  capf_session_t s; /* first: the hooks get back here by a cast */
  uint8_t *sent[MAX_SENT];
  size_t sent_len[MAX_SENT];
  int nsent;
  int held; /* hold_output was called before the last send */
  int closes;
  uint64_t timer_ms; /* NO_TIMER when stopped */
  int send_fails;
  /* The store: one device, or an error. */
  int load_rc;
  capf_device_t device;
  int loads;
  int load_later; /* a shared database: the read completes later (device_loaded) */
  int loads_pending;
  capf_record_t *records[MAX_QUEUED];
  int nrecords;
  int record_fails;
  capf_job_t *jobs[MAX_QUEUED];
  int njobs;
  /* The online CA: what the session asked, and whether it dropped it. */
  int ca_submits, ca_cancels, ca_fails;
  uint8_t ca_csr[64];
  size_t ca_csr_len;
  char ca_request_id[64];
} fake_t;

static fake_t *F(capf_session_t *s) {
  return (fake_t *)s;
}

static int hook_send(capf_session_t *s, const uint8_t *msg, size_t len) {
  fake_t *f = F(s);
  if (f->send_fails) return CAPSTAN_EIO;
  assert_true(f->nsent < MAX_SENT);
  f->sent[f->nsent] = malloc(len);
  memcpy(f->sent[f->nsent], msg, len);
  f->sent_len[f->nsent++] = len;
  return 0;
}
static void hook_hold_output(capf_session_t *s) {
  F(s)->held = 1;
}
static void hook_close(capf_session_t *s) {
  F(s)->closes++;
}
static void hook_start_timer(capf_session_t *s, uint64_t ms) {
  F(s)->timer_ms = ms;
}
static void hook_stop_timer(capf_session_t *s) {
  F(s)->timer_ms = NO_TIMER;
}
static int hook_load_device(capf_session_t *s, const char *name, capf_device_t *out) {
  fake_t *f = F(s);
  (void)name;
  f->loads++;
  if (f->load_later) {
    f->loads_pending++;
    return CAPF_LOAD_PENDING;
  }
  if (f->load_rc < 0) return f->load_rc;
  *out = f->device;
  /* Each load owns its copy, as capf_device_load's. */
  if (f->device.handover_der != NULL) {
    out->handover_der = malloc(f->device.handover_len);
    memcpy(out->handover_der, f->device.handover_der, f->device.handover_len);
  }
  return 0;
}
/* Completes the pending read as the host's reader would: the device (a
 * copy the host cleans up after the call) or load_rc. */
static void device_loaded(fake_t *f) {
  assert_int_equal(f->loads_pending, 1);
  f->loads_pending--;
  capf_device_t d = {0};
  if (f->load_rc == 0) {
    d = f->device;
    if (f->device.handover_der != NULL) {
      d.handover_der = malloc(f->device.handover_len);
      memcpy(d.handover_der, f->device.handover_der, f->device.handover_len);
    }
  }
  capf_session_device_loaded(&f->s, f->load_rc, f->load_rc == 0 ? &d : NULL);
  capf_device_cleanup(&d);
}

static int hook_record(capf_session_t *s, capf_record_t *r) {
  fake_t *f = F(s);
  if (f->record_fails) {
    capf_record_free(r);
    return CAPSTAN_EIO;
  }
  assert_true(f->nrecords < MAX_QUEUED);
  f->records[f->nrecords++] = r;
  return 0;
}
static int hook_work(capf_session_t *s, capf_job_t *j) {
  fake_t *f = F(s);
  assert_true(f->njobs < MAX_QUEUED);
  f->jobs[f->njobs++] = j;
  return 0;
}

static int hook_ca_submit(capf_session_t *s, const uint8_t *csr, size_t csr_len,
                          const uint8_t *spki, size_t spki_len, const char *request_id) {
  fake_t *f = F(s);
  (void)spki;
  (void)spki_len;
  if (f->ca_fails) return CAPSTAN_ENOENT;
  f->ca_submits++;
  assert_true(csr_len <= sizeof(f->ca_csr));
  memcpy(f->ca_csr, csr, csr_len);
  f->ca_csr_len = csr_len;
  snprintf(f->ca_request_id, sizeof(f->ca_request_id), "%s", request_id);
  return 0;
}
static void hook_ca_cancel(capf_session_t *s) {
  F(s)->ca_cancels++;
}

static const capf_session_hooks_t kFakeHooks = {
    .ca_submit = hook_ca_submit,
    .ca_cancel = hook_ca_cancel,
    .send = hook_send,
    .hold_output = hook_hold_output,
    .close = hook_close,
    .start_timer = hook_start_timer,
    .stop_timer = hook_stop_timer,
    .load_device = hook_load_device,
    .record = hook_record,
    .work = hook_work,
};

/* One server's shared state: real metrics and a real throttle. */
static uv_loop_t g_loop;
static capf_shared_t g_shared;

static int setup(void **state) {
  (void)state;
  assert_int_equal(uv_loop_init(&g_loop), 0);
  memset(&g_shared, 0, sizeof(g_shared));
  capf_metrics_register(&g_shared.m);
  g_shared.settings = (capf_settings_t){
      .validity_days = 365,
      .throttle_hold_seconds = 30,
      .retry_delay_seconds = 120,
      .keygen_ceiling_seconds = 90,
      .handshake_timeout_seconds = 10,
      .step_timeout_seconds = 20,
  };
  capstan_throttle_init(&g_shared.throttle, &g_loop, 8, 1000);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  capstan_throttle_close(&g_shared.throttle);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&g_loop), 0);
  return 0;
}

static fake_t *fake_make(capf_operation_t op, capstan_capf_auth_type_t mode, int refused) {
  fake_t *f = calloc(1, sizeof(*f));
  assert_non_null(f);
  f->timer_ms = NO_TIMER;
  f->device = (capf_device_t){
      .operation = op,
      .auth_mode = mode,
      .key_alg = CAPSTAN_KEY_RSA,
      .key_bits = 2048,
      .issuer = -1, /* the cluster's setting */
  };
  strcpy(f->device.auth_string, "123456");
  capf_session_init(&f->s, &kFakeHooks, &g_shared, "192.0.2.7");
  if (refused) capf_session_refuse(&f->s);
  capf_session_start(&f->s);
  return f;
}

static fake_t *fake_new(capf_operation_t op, capstan_capf_auth_type_t mode) {
  return fake_make(op, mode, 0);
}

/* Ends the fake as its host would: the connection reports its close, then
 * whatever is still queued completes (late), then the memory goes. */
static void fake_free(fake_t *f) {
  if (f->s.state != CAPF_ST_CLOSING || f->closes == 0) {
    capf_session_closed(&f->s, CAPSTAN_TLS_CLOSE_PEER_EOF);
  } else {
    capf_session_closed(&f->s, CAPSTAN_TLS_CLOSE_LOCAL);
  }
  for (int i = 0; i < f->nrecords; i++) {
    if (f->records[i] == NULL) continue;
    capf_session_recorded(&f->s, f->records[i], 0);
    capf_record_free(f->records[i]);
  }
  for (int i = 0; i < f->njobs; i++) {
    if (f->jobs[i] == NULL) continue;
    f->jobs[i]->status = CAPSTAN_EIO;
    capf_session_worked(&f->s, f->jobs[i]);
    capf_job_free(f->jobs[i]);
  }
  if (f->loads_pending > 0) device_loaded(f); /* late: the session is closed */
  for (int i = 0; i < f->nsent; i++) free(f->sent[i]);
  capf_session_cleanup(&f->s);
  free(f->device.handover_der);
  free(f);
}

static double outcome_count(capf_op_label_t op, capf_result_t r) {
  return capstan_metric_value(g_shared.m.sessions[op][r]);
}

/* ---- the phone's side ---------------------------------------------------- */

typedef struct {
  uint8_t *data;
  size_t len;
} msg_t;

static void phone_send(fake_t *f, capstan_capf_builder_t *b) {
  msg_t m;
  assert_int_equal(capstan_capf_builder_finish(b, &m.data, &m.len), 0);
  capf_session_received(&f->s, m.data, m.len);
  OPENSSL_free(m.data);
}

static void begin(fake_t *f, capstan_capf_builder_t *b, int command) {
  assert_int_equal(capstan_capf_builder_begin(b, command, f->s.session_id, 0), 0);
}

static void auth_response(fake_t *f, const char *name, const char *password) {
  capstan_capf_builder_t b;
  begin(f, &b, CAPSTAN_CAPF_CMD_AUTH_RESPONSE);
  capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_DEVICE_NAME, name, strlen(name));
  if (password != NULL) {
    capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_AUTH_PASSWORD, password, strlen(password));
  }
  phone_send(f, &b);
}

static void simple(fake_t *f, int command) {
  capstan_capf_builder_t b;
  begin(f, &b, command);
  phone_send(f, &b);
}

static void with_reason(fake_t *f, int command, uint8_t reason) {
  capstan_capf_builder_t b;
  begin(f, &b, command);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, reason);
  phone_send(f, &b);
}

static const uint8_t kPhoneKey[] = {0x30, 0x82, 0x01, 0x22, 0xaa, 0xbb};

static void keygen_response(fake_t *f) {
  capstan_capf_builder_t b;
  begin(f, &b, CAPSTAN_CAPF_CMD_KEY_GEN_RESPONSE);
  capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_PUBLIC_KEY, kPhoneKey, sizeof(kPhoneKey));
  phone_send(f, &b);
}

/* The phone's side of the handshake and authentication. */
static void authenticate(fake_t *f, const char *password) {
  capf_session_handshake_done(&f->s);
  auth_response(f, "SEP001122334455", password);
}

/* The |i|th message the server sent, parsed; the test fails if it is not
 * |command|. */
static capstan_capf_msg_t sent(fake_t *f, int i, int command) {
  capstan_capf_msg_t m;
  assert_true(i < f->nsent);
  assert_int_equal(capstan_capf_parse(f->sent[i], f->sent_len[i], &m), 0);
  assert_int_equal(m.command, command);
  assert_int_equal(m.session_id, f->s.session_id);
  return m;
}

/* Asserts the last message is END_SESSION with |reason|, sent with the close. */
static void assert_ended(fake_t *f, uint8_t reason) {
  capstan_capf_msg_t m = sent(f, f->nsent - 1, CAPSTAN_CAPF_CMD_END_SESSION);
  uint8_t got = 0xff;
  assert_int_equal(capstan_capf_get_reason(&m, &got), 0);
  assert_int_equal(got, reason);
  assert_true(f->held);
  assert_int_equal(f->closes, 1);
  assert_int_equal(f->s.state, CAPF_ST_CLOSING);
}

static void assert_status_record(fake_t *f, int i, capf_status_t status, const char *reason) {
  assert_true(i < f->nrecords);
  capf_record_t *r = f->records[i];
  assert_int_equal(r->kind, CAPF_RECORD_STATUS);
  assert_string_equal(r->device, "SEP001122334455");
  assert_string_equal(r->peer, "192.0.2.7"); /* for the audit event */
  assert_int_equal(r->status, status);
  if (reason == NULL) {
    assert_null(r->reason);
  } else {
    assert_non_null(r->reason);
    assert_string_equal(r->reason, reason);
  }
}

/* Commits record |i| with |status|, as the writer would. */
static void commit(fake_t *f, int i, int status) {
  assert_true(i < f->nrecords);
  capf_record_t *r = f->records[i];
  f->records[i] = NULL;
  capf_session_recorded(&f->s, r, status);
  capf_record_free(r);
}

/* Ends job |i| as a worker would (its outputs filled by the caller). */
static void work_done(fake_t *f, int i) {
  assert_true(i < f->njobs);
  capf_job_t *j = f->jobs[i];
  f->jobs[i] = NULL;
  capf_session_worked(&f->s, j);
  capf_job_free(j);
}

static const uint8_t kLsc[] = {0x30, 0x82, 0x00, 0x10, 1, 2, 3, 4, 5, 6, 7, 8};

/* Fills the issue job as the signer would. */
static void sign_ok(capf_job_t *j) {
  assert_int_equal(j->kind, CAPF_JOB_ISSUE);
  j->status = 0;
  j->u.issue.lsc_der = malloc(sizeof(kLsc));
  memcpy(j->u.issue.lsc_der, kLsc, sizeof(kLsc));
  j->u.issue.lsc_len = sizeof(kLsc);
  j->u.issue.lsc_spki = malloc(3);
  memcpy(j->u.issue.lsc_spki, "key", 3);
  j->u.issue.lsc_spki_len = 3;
  memset(j->u.issue.serial, 0x42, sizeof(j->u.issue.serial));
  strcpy(j->u.issue.md5, "0123456789abcdef0123456789abcdef");
  j->u.issue.not_after = 2000000000;
}

/* An install with the null string, signed by the worker: the ISSUED record
 * is queued and not yet committed. */
static fake_t *signed_install(void) {
  fake_t *f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  authenticate(f, NULL);
  keygen_response(f);
  sign_ok(f->jobs[0]);
  work_done(f, 0);
  return f;
}

/* ---- install / upgrade --------------------------------------------------- */

static void test_install_by_auth_string(void **state) {
  (void)state;
  double ok = outcome_count(CAPF_OP_INSTALL, CAPF_RESULT_OK);
  double issued = capstan_metric_value(g_shared.m.certs_issued);
  fake_t *f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_STRING);
  assert_int_equal(f->s.state, CAPF_ST_HANDSHAKE);
  assert_int_equal(f->timer_ms, 10000);

  capf_session_handshake_done(&f->s);
  capstan_capf_msg_t m = sent(f, 0, CAPSTAN_CAPF_CMD_AUTH_REQUEST);
  uint8_t v = 0;
  assert_int_equal(capstan_capf_get_version(&m, &v), 0);
  assert_int_equal(v, CAPSTAN_CAPF_PROTOCOL_VERSION);
  assert_int_equal(f->s.state, CAPF_ST_WAIT_AUTH);
  assert_int_equal(f->timer_ms, 20000);

  auth_response(f, "SEP001122334455", "123456");
  assert_string_equal(f->s.device, "SEP001122334455");
  assert_status_record(f, 0, CAPF_STATUS_IN_PROGRESS, NULL);
  assert_int_equal(f->records[0]->count_attempt, 1);
  assert_false(f->records[0]->awaited);
  m = sent(f, 1, CAPSTAN_CAPF_CMD_KEY_GEN_REQUEST);
  uint8_t key_type = 0xff;
  uint16_t key_size = 0;
  assert_int_equal(capstan_capf_get_key_type(&m, &key_type), 0);
  assert_int_equal(key_type, CAPSTAN_CAPF_KEY_RSA);
  assert_int_equal(capstan_capf_get_key_size(&m, &key_size), 0);
  assert_int_equal(key_size, 2048);
  assert_int_equal(f->s.state, CAPF_ST_WAIT_KEYGEN);
  assert_int_equal(f->timer_ms, 90000);
  commit(f, 0, 0); /* not awaited: changes nothing */
  assert_int_equal(f->s.state, CAPF_ST_WAIT_KEYGEN);

  simple(f, CAPSTAN_CAPF_CMD_REQUEST_IN_PROGRESS);
  assert_int_equal(f->s.state, CAPF_ST_WAIT_KEYGEN);
  assert_int_equal(f->nsent, 2);

  keygen_response(f);
  assert_int_equal(f->s.state, CAPF_ST_SIGNING);
  assert_int_equal(f->timer_ms, NO_TIMER);
  assert_int_equal(f->njobs, 1);
  capf_job_t *j = f->jobs[0];
  assert_int_equal(j->kind, CAPF_JOB_ISSUE);
  assert_string_equal(j->device, "SEP001122334455");
  assert_int_equal(j->u.issue.phone_spki_len, sizeof(kPhoneKey));
  assert_memory_equal(j->u.issue.phone_spki, kPhoneKey, sizeof(kPhoneKey));
  assert_int_equal(j->u.issue.key_bits, 2048);
  assert_int_equal(j->u.issue.validity_days, 365);
  simple(f, CAPSTAN_CAPF_CMD_REQUEST_IN_PROGRESS); /* the phone may say so while we sign */
  assert_int_equal(f->s.state, CAPF_ST_SIGNING);

  sign_ok(j);
  work_done(f, 0);
  assert_int_equal(capstan_metric_value(g_shared.m.certs_issued), issued + 1);
  assert_int_equal(f->s.state, CAPF_ST_RECORDING);
  assert_int_equal(f->nsent, 2); /* not before the record is durable */
  assert_int_equal(f->nrecords, 2);
  capf_record_t *r = f->records[1];
  assert_int_equal(r->kind, CAPF_RECORD_ISSUED);
  assert_true(r->awaited);
  assert_int_equal(r->der_len, sizeof(kLsc));
  assert_memory_equal(r->der, kLsc, sizeof(kLsc));
  assert_int_equal(r->serial[0], 0x42);
  assert_int_equal(r->not_after, 2000000000);

  commit(f, 1, 0);
  m = sent(f, 2, CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST);
  uint8_t type = 0;
  capstan_capf_slice_t der;
  assert_int_equal(capstan_capf_get_certificate(&m, &type, &der), 0);
  assert_int_equal(type, CAPSTAN_CAPF_CERT_LSC);
  assert_int_equal(der.len, sizeof(kLsc));
  assert_memory_equal(der.data, kLsc, sizeof(kLsc));
  assert_int_equal(f->s.state, CAPF_ST_WAIT_STORE);
  assert_int_equal(f->timer_ms, 20000);

  with_reason(f, CAPSTAN_CAPF_CMD_STORE_CERT_RESPONSE, CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE);
  assert_int_equal(f->s.state, CAPF_ST_CONCLUDING);
  r = f->records[2];
  assert_int_equal(r->kind, CAPF_RECORD_INSTALLED);
  assert_int_equal(r->spki_len, 3);
  assert_string_equal(r->md5, "0123456789abcdef0123456789abcdef");
  assert_int_equal(f->nsent, 3);
  assert_int_equal(f->closes, 0);

  commit(f, 2, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE);
  assert_true(f->s.finished);
  assert_int_equal(f->s.result, CAPF_RESULT_OK);
  assert_int_equal(outcome_count(CAPF_OP_INSTALL, CAPF_RESULT_OK), ok + 1);
  assert_int_equal(g_shared.throttle.active, 0); /* slot given back at KEY_GEN_RESPONSE */
  fake_free(f);
  assert_int_equal(outcome_count(CAPF_OP_INSTALL, CAPF_RESULT_OK), ok + 1); /* once */
}

static void test_install_ec_key_request(void **state) {
  (void)state;
  fake_t *f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  f->device.key_alg = CAPSTAN_KEY_EC;
  f->device.key_bits = 384;
  authenticate(f, NULL);
  capstan_capf_msg_t m = sent(f, 1, CAPSTAN_CAPF_CMD_KEY_GEN_REQUEST);
  uint8_t key_type = 0xff, curve = 0xff;
  assert_int_equal(capstan_capf_get_key_type(&m, &key_type), 0);
  assert_int_equal(key_type, CAPSTAN_CAPF_KEY_EC);
  assert_int_equal(capstan_capf_get_ec_curve(&m, &curve), 0);
  assert_int_equal(curve, CAPSTAN_CAPF_CURVE_P384);
  fake_free(f);
}

static void test_install_failures(void **state) {
  (void)state;
  /* The phone says its key generation failed (no PUBLIC_KEY). */
  fake_t *f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  authenticate(f, NULL);
  simple(f, CAPSTAN_CAPF_CMD_KEY_GEN_RESPONSE);
  assert_int_equal(f->s.state, CAPF_ST_ENDING);
  assert_status_record(f, 1, CAPF_STATUS_FAILED, "key generation failed on the phone");
  assert_int_equal(f->s.result, CAPF_RESULT_FAILED);
  simple(f, CAPSTAN_CAPF_CMD_AUTH_RESPONSE); /* not heard while ENDING */
  assert_int_equal(f->nsent, 2);
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  fake_free(f);

  /* The same, with a stray message in the same read right behind it: the
   * failure is recorded before the phone hears END_SESSION all the same. */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  authenticate(f, NULL);
  {
    msg_t a, b;
    capstan_capf_builder_t ba, bb;
    begin(f, &ba, CAPSTAN_CAPF_CMD_KEY_GEN_RESPONSE);
    assert_int_equal(capstan_capf_builder_finish(&ba, &a.data, &a.len), 0);
    begin(f, &bb, CAPSTAN_CAPF_CMD_AUTH_RESPONSE);
    assert_int_equal(capstan_capf_builder_finish(&bb, &b.data, &b.len), 0);
    uint8_t both[256];
    assert_true(a.len + b.len <= sizeof(both));
    memcpy(both, a.data, a.len);
    memcpy(both + a.len, b.data, b.len);
    capf_session_received(&f->s, both, a.len + b.len);
    OPENSSL_free(a.data);
    OPENSSL_free(b.data);
  }
  assert_int_equal(f->s.state, CAPF_ST_ENDING);
  assert_int_equal(f->nsent, 2); /* nothing yet: the record is not committed */
  assert_int_equal(f->closes, 0);
  assert_status_record(f, 1, CAPF_STATUS_FAILED, "key generation failed on the phone");
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->s.result, CAPF_RESULT_FAILED);
  fake_free(f);

  /* The signer refuses the key. */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  authenticate(f, NULL);
  keygen_response(f);
  f->jobs[0]->status = CAPSTAN_EINVAL;
  f->jobs[0]->why = "key size mismatch";
  work_done(f, 0);
  assert_status_record(f, 1, CAPF_STATUS_FAILED, "key size mismatch");
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->s.result, CAPF_RESULT_FAILED);
  fake_free(f);

  /* The ISSUED record does not commit (a full disk): the certificate never
   * leaves, and the phone is asked to come back. */
  f = signed_install();
  commit(f, 1, CAPSTAN_ENOSPC);
  capstan_capf_msg_t rl = sent(f, f->nsent - 1, CAPSTAN_CAPF_CMD_RETRY_LATER);
  (void)rl;
  assert_true(f->held);
  assert_int_equal(f->closes, 1);
  for (int i = 0; i < f->nsent; i++) {
    capstan_capf_msg_t m;
    assert_int_equal(capstan_capf_parse(f->sent[i], f->sent_len[i], &m), 0);
    assert_int_not_equal(m.command, CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST);
  }
  assert_int_equal(f->s.result, CAPF_RESULT_SERVER_ERROR);
  fake_free(f);

  /* The phone did not store the certificate. */
  f = signed_install();
  commit(f, 1, 0);
  with_reason(f, CAPSTAN_CAPF_CMD_STORE_CERT_RESPONSE, CAPSTAN_CAPF_REASON_NO_ACTION);
  assert_status_record(f, 2, CAPF_STATUS_FAILED, "phone did not store the certificate");
  commit(f, 2, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  fake_free(f);
}

/* ---- delete, troubleshoot, none ------------------------------------------ */

static void test_delete(void **state) {
  (void)state;
  double ok = outcome_count(CAPF_OP_DELETE, CAPF_RESULT_OK);
  fake_t *f = fake_new(CAPF_OPERATION_DELETE, CAPSTAN_CAPF_AUTH_STRING);
  authenticate(f, "123456");
  sent(f, 1, CAPSTAN_CAPF_CMD_DELETE_CERT_REQUEST);
  assert_int_equal(f->s.state, CAPF_ST_WAIT_DELETE);
  with_reason(f, CAPSTAN_CAPF_CMD_DELETE_CERT_RESPONSE, CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE);
  assert_int_equal(f->records[1]->kind, CAPF_RECORD_DELETED);
  assert_int_equal(f->s.state, CAPF_ST_CONCLUDING);
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE);
  assert_int_equal(outcome_count(CAPF_OP_DELETE, CAPF_RESULT_OK), ok + 1);
  fake_free(f);

  /* The phone would not delete. */
  f = fake_new(CAPF_OPERATION_DELETE, CAPSTAN_CAPF_AUTH_STRING);
  authenticate(f, "123456");
  with_reason(f, CAPSTAN_CAPF_CMD_DELETE_CERT_RESPONSE, CAPSTAN_CAPF_REASON_NO_ACTION);
  assert_status_record(f, 1, CAPF_STATUS_FAILED, "phone did not delete its certificate");
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  fake_free(f);
}

static void fetch_response_with(fake_t *f, const uint8_t *der, size_t len) {
  capstan_capf_builder_t b;
  begin(f, &b, CAPSTAN_CAPF_CMD_FETCH_CERT_RESPONSE);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE);
  capstan_capf_builder_add_certificate(&b, CAPSTAN_CAPF_CERT_MIC, der, len);
  phone_send(f, &b);
}

static void test_troubleshoot(void **state) {
  (void)state;
  capstan_identity_t ca = {0};
  assert_int_equal(capstan_phone_create_test_ca("Test Manufacturing CA", &ca), 0);
  uint8_t *der = NULL;
  size_t der_len = 0;
  assert_int_equal(capstan_pki_cert_to_der(ca.cert, &der, &der_len), 0);
  char md5[33];
  capstan_pki_md5hash(der, der_len, md5);

  /* The phone sends its certificate. */
  double ok = outcome_count(CAPF_OP_TROUBLESHOOT, CAPF_RESULT_OK);
  fake_t *f = fake_new(CAPF_OPERATION_TROUBLESHOOT, CAPSTAN_CAPF_AUTH_STRING);
  authenticate(f, "123456");
  sent(f, 1, CAPSTAN_CAPF_CMD_FETCH_CERT_REQUEST);
  assert_int_equal(f->s.state, CAPF_ST_WAIT_FETCH);
  fetch_response_with(f, der, der_len);
  capf_record_t *r = f->records[1];
  assert_int_equal(r->kind, CAPF_RECORD_FETCHED);
  assert_null(r->reason);
  assert_int_equal(r->cert_type, CAPSTAN_CAPF_CERT_MIC);
  assert_int_equal(r->der_len, der_len);
  assert_memory_equal(r->der, der, der_len);
  assert_string_equal(r->md5, md5);
  assert_non_null(r->spki);
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_NO_ACTION);
  assert_int_equal(outcome_count(CAPF_OP_TROUBLESHOOT, CAPF_RESULT_OK), ok + 1);
  fake_free(f);

  /* The phone has none. */
  f = fake_new(CAPF_OPERATION_TROUBLESHOOT, CAPSTAN_CAPF_AUTH_STRING);
  authenticate(f, "123456");
  with_reason(f, CAPSTAN_CAPF_CMD_FETCH_CERT_RESPONSE, CAPSTAN_CAPF_REASON_NO_ACTION);
  r = f->records[1];
  assert_int_equal(r->kind, CAPF_RECORD_FETCHED);
  assert_null(r->der);
  assert_string_equal(r->reason, "phone reported no certificate");
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_NO_ACTION);
  fake_free(f);

  /* REASON=1 with a certificate that does not parse: a protocol error that
   * the device record keeps. */
  f = fake_new(CAPF_OPERATION_TROUBLESHOOT, CAPSTAN_CAPF_AUTH_STRING);
  authenticate(f, "123456");
  fetch_response_with(f, (const uint8_t *)"not a certificate", 17);
  assert_int_equal(f->s.state, CAPF_ST_ENDING);
  assert_status_record(f, 1, CAPF_STATUS_FAILED,
                       "protocol error from the phone before sending its certificate");
  assert_int_equal(f->s.result, CAPF_RESULT_PROTOCOL_ERROR);
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  fake_free(f);

  free(der);
  capstan_identity_cleanup(&ca);
}

static void test_nothing_to_do(void **state) {
  (void)state;
  double none = outcome_count(CAPF_OP_NONE, CAPF_RESULT_NO_ACTION);
  fake_t *f = fake_new(CAPF_OPERATION_NONE, CAPSTAN_CAPF_AUTH_STRING);
  authenticate(f, "123456");
  assert_ended(f, CAPSTAN_CAPF_REASON_NO_ACTION);
  assert_int_equal(f->nrecords, 0);
  assert_int_equal(outcome_count(CAPF_OP_NONE, CAPF_RESULT_NO_ACTION), none + 1);
  fake_free(f);
}

static void test_deadline_passed(void **state) {
  (void)state;
  fake_t *f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_STRING);
  f->device.completes_by = (int64_t)time(NULL) - 60;
  authenticate(f, "123456");
  assert_int_equal(f->s.state, CAPF_ST_ENDING);
  assert_status_record(f, 0, CAPF_STATUS_EXPIRED, "operation deadline passed");
  assert_int_equal(f->nsent, 1); /* END_SESSION waits for the record */
  commit(f, 0, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_NO_ACTION);
  assert_int_equal(f->s.result, CAPF_RESULT_EXPIRED);
  fake_free(f);
}

static void test_unknown_device_and_store_error(void **state) {
  (void)state;
  fake_t *f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_STRING);
  f->load_rc = CAPSTAN_ENOENT;
  authenticate(f, "123456");
  assert_ended(f, CAPSTAN_CAPF_REASON_UNKNOWN_DEVICE);
  assert_int_equal(f->s.result, CAPF_RESULT_UNKNOWN_DEVICE);
  assert_int_equal(f->nrecords, 0);
  fake_free(f);

  /* The store cannot be read (a failing disk): the phone comes back. */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_STRING);
  f->load_rc = CAPSTAN_EIO;
  authenticate(f, "123456");
  sent(f, f->nsent - 1, CAPSTAN_CAPF_CMD_RETRY_LATER);
  assert_true(f->held);
  assert_int_equal(f->closes, 1);
  assert_int_equal(f->s.result, CAPF_RESULT_SERVER_ERROR);
  assert_int_equal(f->nrecords, 0);
  fake_free(f);
}

/* ---- authentication failures and by certificate -------------------------- */

static void test_auth_failures(void **state) {
  (void)state;
  double failures = capstan_metric_value(g_shared.m.auth_failures[CAPSTAN_CAPF_AUTH_STRING]);
  fake_t *f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_STRING);
  authenticate(f, "654321");
  assert_int_equal(f->s.state, CAPF_ST_ENDING);
  assert_status_record(f, 0, CAPF_STATUS_FAILED, "authentication failed");
  assert_int_equal(f->records[0]->count_attempt, 1);
  assert_true(f->records[0]->awaited);
  assert_int_equal(capstan_metric_value(g_shared.m.auth_failures[CAPSTAN_CAPF_AUTH_STRING]),
                   failures + 1);
  commit(f, 0, CAPSTAN_EIO); /* a failed write still ends the session the same way */
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->s.result, CAPF_RESULT_AUTH_FAILED);
  fake_free(f);

  /* No password at all. */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_STRING);
  authenticate(f, NULL);
  assert_status_record(f, 0, CAPF_STATUS_FAILED, "authentication failed");
  fake_free(f);

  /* A record without an auth string lets nobody in, not even "". */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_STRING);
  f->device.auth_string[0] = '\0';
  authenticate(f, "");
  assert_status_record(f, 0, CAPF_STATUS_FAILED, "authentication failed");
  fake_free(f);

  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NONE);
  authenticate(f, "123456");
  assert_status_record(f, 0, CAPF_STATUS_FAILED, "device has no authentication mode");
  fake_free(f);

  /* LSC mode without the certificate and signatures. */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_LSC);
  authenticate(f, NULL);
  assert_status_record(f, 0, CAPF_STATUS_FAILED,
                       "certificate, SIGNED_DATA or SHA2_SIGNED_DATA missing or malformed");
  assert_int_equal(f->njobs, 0);
  fake_free(f);
}

static const uint8_t kAuthCert[] = {0x30, 0x03, 1, 2, 3};

/* The phone's side of the handshake and an AUTH_RESPONSE by LSC. */
static void send_cert_auth(fake_t *f) {
  static const uint8_t sig[] = {9, 9, 9, 9};
  capf_session_handshake_done(&f->s);
  capstan_capf_builder_t b;
  begin(f, &b, CAPSTAN_CAPF_CMD_AUTH_RESPONSE);
  capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_DEVICE_NAME, "SEP001122334455", 15);
  capstan_capf_builder_add_certificate(&b, CAPSTAN_CAPF_CERT_LSC, kAuthCert, sizeof(kAuthCert));
  capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_SIGNED_DATA, sig, sizeof(sig));
  capstan_capf_builder_add_sha2_signed_data(&b, CAPSTAN_CAPF_HASH_SHA512, sig, sizeof(sig));
  phone_send(f, &b);
}

static void auth_by_certificate(fake_t *f) {
  send_cert_auth(f);
  assert_int_equal(f->s.state, CAPF_ST_VERIFYING);
  assert_int_equal(f->timer_ms, NO_TIMER);
  assert_int_equal(f->njobs, 1);
  capf_job_t *j = f->jobs[0];
  assert_int_equal(j->kind, CAPF_JOB_VERIFY);
  assert_int_equal(j->u.verify.session_id, f->s.session_id);
  assert_int_equal(j->u.verify.cert_len, sizeof(kAuthCert));
  assert_memory_equal(j->u.verify.cert_der, kAuthCert, sizeof(kAuthCert));
  assert_int_equal(j->u.verify.sig2_hash, CAPSTAN_CAPF_HASH_SHA512);
  assert_null(j->u.verify.sudi);
}

static void test_auth_by_certificate(void **state) {
  (void)state;
  fake_t *f = fake_new(CAPF_OPERATION_DELETE, CAPSTAN_CAPF_AUTH_LSC);
  auth_by_certificate(f);
  assert_int_equal(f->loads, 1);
  simple(f, CAPSTAN_CAPF_CMD_REQUEST_IN_PROGRESS);
  assert_int_equal(f->s.state, CAPF_ST_VERIFYING);
  capf_job_t *j = f->jobs[0];
  j->status = 0;
  j->u.verify.spki = malloc(2);
  memcpy(j->u.verify.spki, "pk", 2);
  j->u.verify.spki_len = 2;
  strcpy(j->u.verify.md5, "fedcba9876543210fedcba9876543210");
  work_done(f, 0);
  assert_int_equal(f->loads, 2); /* read again: the operator may have changed it */
  capf_record_t *r = f->records[0];
  assert_int_equal(r->kind, CAPF_RECORD_SEEN_CERT);
  assert_false(r->awaited);
  assert_int_equal(r->cert_type, CAPSTAN_CAPF_CERT_LSC);
  assert_int_equal(r->spki_len, 2);
  assert_string_equal(r->md5, "fedcba9876543210fedcba9876543210");
  assert_status_record(f, 1, CAPF_STATUS_IN_PROGRESS, NULL);
  sent(f, 1, CAPSTAN_CAPF_CMD_DELETE_CERT_REQUEST);
  assert_int_equal(f->s.state, CAPF_ST_WAIT_DELETE);
  fake_free(f);

  /* The worker refuses the certificate. */
  double failures = capstan_metric_value(g_shared.m.auth_failures[CAPSTAN_CAPF_AUTH_LSC]);
  f = fake_new(CAPF_OPERATION_DELETE, CAPSTAN_CAPF_AUTH_LSC);
  auth_by_certificate(f);
  f->jobs[0]->status = CAPSTAN_EACCES;
  f->jobs[0]->why = "LSC invalid";
  work_done(f, 0);
  assert_status_record(f, 0, CAPF_STATUS_FAILED, "LSC invalid");
  assert_int_equal(capstan_metric_value(g_shared.m.auth_failures[CAPSTAN_CAPF_AUTH_LSC]),
                   failures + 1);
  commit(f, 0, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->s.result, CAPF_RESULT_AUTH_FAILED);
  fake_free(f);

  /* The worker could not run: a server error, not the phone's fault. */
  f = fake_new(CAPF_OPERATION_DELETE, CAPSTAN_CAPF_AUTH_LSC);
  auth_by_certificate(f);
  f->jobs[0]->status = CAPSTAN_EIO;
  work_done(f, 0);
  assert_int_equal(f->s.state, CAPF_ST_CLOSING);
  assert_int_equal(f->closes, 1);
  assert_int_equal(f->nrecords, 0);
  assert_int_equal(f->s.result, CAPF_RESULT_SERVER_ERROR);
  fake_free(f);
}

/* ---- the device read later (a shared database) ---------------------------- */

/* A session whose device read completes later (device_loaded) with |rc|,
 * after the phone authenticated with |password|. */
static fake_t *authenticated_later(capstan_capf_auth_type_t mode, int rc, const char *password) {
  fake_t *f = fake_new(CAPF_OPERATION_INSTALL, mode);
  f->load_later = 1;
  f->load_rc = rc;
  authenticate(f, password);
  return f;
}

static void test_device_read_later(void **state) {
  (void)state;
  /* The string is checked once the device is known, from the kept
   * AUTH_RESPONSE; the loop is not held meanwhile, the step timer runs. */
  fake_t *f = authenticated_later(CAPSTAN_CAPF_AUTH_STRING, 0, "123456");
  assert_int_equal(f->s.state, CAPF_ST_LOADING);
  assert_int_equal(f->timer_ms, 20000);
  assert_int_equal(f->nsent, 1);
  assert_int_equal(f->nrecords, 0);
  simple(f, CAPSTAN_CAPF_CMD_REQUEST_IN_PROGRESS); /* allowed while it loads */
  assert_int_equal(f->s.state, CAPF_ST_LOADING);
  device_loaded(f);
  assert_null(f->s.auth_msg);
  assert_status_record(f, 0, CAPF_STATUS_IN_PROGRESS, NULL);
  sent(f, 1, CAPSTAN_CAPF_CMD_KEY_GEN_REQUEST);
  assert_int_equal(f->s.state, CAPF_ST_WAIT_KEYGEN);
  fake_free(f);

  /* A wrong string, found after the read. */
  f = authenticated_later(CAPSTAN_CAPF_AUTH_STRING, 0, "654321");
  device_loaded(f);
  assert_status_record(f, 0, CAPF_STATUS_FAILED, "authentication failed");
  assert_int_equal(f->s.state, CAPF_ST_ENDING);
  fake_free(f);

  /* Unknown device, and a store that cannot be read: as when read at once. */
  f = authenticated_later(CAPSTAN_CAPF_AUTH_STRING, CAPSTAN_ENOENT, "123456");
  device_loaded(f);
  assert_ended(f, CAPSTAN_CAPF_REASON_UNKNOWN_DEVICE);
  fake_free(f);
  f = authenticated_later(CAPSTAN_CAPF_AUTH_STRING, CAPSTAN_EIO, "123456");
  device_loaded(f);
  sent(f, f->nsent - 1, CAPSTAN_CAPF_CMD_RETRY_LATER);
  assert_int_equal(f->s.result, CAPF_RESULT_SERVER_ERROR);
  assert_int_equal(f->nrecords, 0);
  fake_free(f);

  /* A store that does not answer within a step: RETRY_LATER, and the
   * late answer changes nothing. */
  f = authenticated_later(CAPSTAN_CAPF_AUTH_STRING, 0, "123456");
  capf_session_timed_out(&f->s);
  sent(f, f->nsent - 1, CAPSTAN_CAPF_CMD_RETRY_LATER);
  assert_int_equal(f->s.state, CAPF_ST_CLOSING);
  assert_int_equal(f->s.result, CAPF_RESULT_SERVER_ERROR);
  assert_null(f->s.auth_msg);
  int nsent = f->nsent;
  device_loaded(f);
  assert_int_equal(f->nsent, nsent);
  assert_int_equal(f->nrecords, 0);
  fake_free(f);

  /* Any other message while it loads is the phone's protocol error. */
  f = authenticated_later(CAPSTAN_CAPF_AUTH_NULL_STRING, 0, NULL);
  keygen_response(f);
  assert_int_equal(f->s.state, CAPF_ST_CLOSING);
  assert_int_equal(f->s.result, CAPF_RESULT_PROTOCOL_ERROR);
  fake_free(f); /* the read completes after the close: ignored */

  /* The phone hangs up while it loads. */
  f = authenticated_later(CAPSTAN_CAPF_AUTH_STRING, 0, "123456");
  capf_session_closed(&f->s, CAPSTAN_TLS_CLOSE_PEER_EOF);
  assert_int_equal(f->s.result, CAPF_RESULT_DISCONNECTED);
  device_loaded(f);
  assert_int_equal(f->nsent, 1);
  assert_int_equal(f->nrecords, 0);
  fake_free(f);

  /* By certificate: read, verified, read again (the operator may have
   * changed it meanwhile). */
  f = fake_new(CAPF_OPERATION_DELETE, CAPSTAN_CAPF_AUTH_LSC);
  f->load_later = 1;
  send_cert_auth(f);
  assert_int_equal(f->s.state, CAPF_ST_LOADING);
  device_loaded(f);
  assert_int_equal(f->s.state, CAPF_ST_VERIFYING);
  assert_int_equal(f->njobs, 1);
  assert_int_equal(f->jobs[0]->u.verify.cert_len, sizeof(kAuthCert));
  assert_memory_equal(f->jobs[0]->u.verify.cert_der, kAuthCert, sizeof(kAuthCert));
  f->jobs[0]->status = 0;
  work_done(f, 0);
  assert_int_equal(f->s.state, CAPF_ST_RELOADING);
  assert_int_equal(f->timer_ms, 20000);
  assert_int_equal(f->loads, 2);
  f->device.operation = CAPF_OPERATION_NONE; /* cancelled meanwhile */
  device_loaded(f);
  assert_int_equal(f->s.result, CAPF_RESULT_NO_ACTION);
  assert_int_equal(f->s.state, CAPF_ST_CLOSING);
  fake_free(f);
}

/* ---- throttling ---------------------------------------------------------- */

static void test_throttle_admits_in_turn(void **state) {
  (void)state;
  capstan_throttle_configure(&g_shared.throttle, 1, 1000);
  double admitted = capstan_metric_value(g_shared.m.throttled_admitted);
  fake_t *a = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  fake_t *b = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  authenticate(a, NULL);
  assert_int_equal(a->s.state, CAPF_ST_WAIT_KEYGEN);
  authenticate(b, NULL);
  assert_int_equal(b->s.state, CAPF_ST_THROTTLED);
  assert_int_equal(b->timer_ms, 30000);
  assert_int_equal(b->nsent, 1); /* only AUTH_REQUEST */
  assert_int_equal(g_shared.throttle.waiting, 1);
  simple(b, CAPSTAN_CAPF_CMD_REQUEST_IN_PROGRESS); /* allowed while held */
  assert_int_equal(b->s.state, CAPF_ST_THROTTLED);

  keygen_response(a); /* a's slot frees up and goes to b */
  assert_int_equal(b->s.state, CAPF_ST_WAIT_KEYGEN);
  sent(b, 1, CAPSTAN_CAPF_CMD_KEY_GEN_REQUEST);
  assert_int_equal(b->timer_ms, 90000);
  assert_int_equal(capstan_metric_value(g_shared.m.throttled_admitted), admitted + 1);
  assert_int_equal(g_shared.throttle.active, 1);

  fake_free(b); /* drops during key generation: the slot comes back */
  assert_int_equal(g_shared.throttle.active, 0);
  fake_free(a);
  capstan_throttle_configure(&g_shared.throttle, 8, 1000);
}

static void test_throttle_retry_later(void **state) {
  (void)state;
  capstan_throttle_configure(&g_shared.throttle, 1, 1000);
  double retry = outcome_count(CAPF_OP_INSTALL, CAPF_RESULT_RETRY_LATER);
  fake_t *a = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  fake_t *b = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  authenticate(a, NULL);
  authenticate(b, NULL);
  assert_int_equal(b->s.state, CAPF_ST_THROTTLED);
  capf_session_timed_out(&b->s); /* the hold ran out */
  capstan_capf_msg_t m = sent(b, 1, CAPSTAN_CAPF_CMD_RETRY_LATER);
  uint16_t delay = 0;
  assert_int_equal(capstan_capf_get_retry_delay(&m, &delay), 0);
  assert_int_equal(delay, 120);
  /* The device says when the phone is due back, not "in progress". */
  assert_status_record(b, 1, CAPF_STATUS_THROTTLED, NULL);
  assert_int_equal(b->records[1]->retry_after, b->records[1]->now + 120);
  assert_int_equal(b->records[1]->count_attempt, 0);
  assert_int_equal(b->closes, 1);
  assert_int_equal(b->s.result, CAPF_RESULT_RETRY_LATER);
  assert_int_equal(g_shared.throttle.waiting, 0);
  assert_int_equal(outcome_count(CAPF_OP_INSTALL, CAPF_RESULT_RETRY_LATER), retry + 1);
  fake_free(b);

  /* A hold of 0 seconds: RETRY_LATER on the next loop iteration. */
  g_shared.settings.throttle_hold_seconds = 0;
  fake_t *c = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  authenticate(c, NULL);
  assert_int_equal(c->s.state, CAPF_ST_THROTTLED);
  assert_int_equal(c->timer_ms, 0);
  fake_free(c); /* hangs up while held: the operation is recorded failed */
  g_shared.settings.throttle_hold_seconds = 30;

  fake_free(a);
  assert_int_equal(g_shared.throttle.active, 0);
  capstan_throttle_configure(&g_shared.throttle, 8, 1000);
}

/* A connection over a connection limit: after the handshake the phone hears
 * RETRY_LATER {RETRY_DELAY} (with the close), before any authentication:
 * no device is read, nothing is recorded. Its handshake timer is short. */
static void test_refused_over_limit(void **state) {
  (void)state;
  double retry = outcome_count(CAPF_OP_UNKNOWN, CAPF_RESULT_RETRY_LATER);
  double ok = capstan_metric_value(g_shared.m.handshakes_ok);
  fake_t *f = fake_make(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING, 1);
  assert_int_equal(f->timer_ms, CAPF_REFUSED_HANDSHAKE_SECONDS * 1000);
  capf_session_handshake_done(&f->s);
  assert_int_equal(f->nsent, 1);
  capstan_capf_msg_t m = sent(f, 0, CAPSTAN_CAPF_CMD_RETRY_LATER);
  uint16_t delay = 0;
  assert_int_equal(capstan_capf_get_retry_delay(&m, &delay), 0);
  assert_int_equal(delay, 120);
  assert_true(f->held);
  assert_int_equal(f->closes, 1);
  assert_int_equal(f->s.state, CAPF_ST_CLOSING);
  assert_int_equal(f->s.result, CAPF_RESULT_RETRY_LATER);
  assert_int_equal(f->loads, 0);
  assert_int_equal(f->nrecords, 0);
  assert_int_equal(outcome_count(CAPF_OP_UNKNOWN, CAPF_RESULT_RETRY_LATER), retry + 1);
  assert_int_equal(capstan_metric_value(g_shared.m.handshakes_ok), ok + 1);
  /* Whatever the phone says next is not heard. */
  auth_response(f, "SEP001122334455", NULL);
  assert_int_equal(f->nsent, 1);
  assert_int_equal(f->loads, 0);
  fake_free(f);

  /* A handshake timeout shorter than the refusal's bound is kept. */
  g_shared.settings.handshake_timeout_seconds = 2;
  f = fake_make(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING, 1);
  assert_int_equal(f->timer_ms, 2000);
  capf_session_timed_out(&f->s); /* the phone never finished its handshake */
  assert_int_equal(f->nsent, 0);
  assert_int_equal(f->s.result, CAPF_RESULT_TIMEOUT);
  fake_free(f);
  g_shared.settings.handshake_timeout_seconds = 10;
}

/* ---- timeouts ------------------------------------------------------------ */

static void test_timeouts(void **state) {
  (void)state;
  double hs = capstan_metric_value(g_shared.m.timeouts_handshake);
  fake_t *f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  capf_session_timed_out(&f->s);
  assert_int_equal(f->nsent, 0); /* no TLS yet: nothing to say */
  assert_int_equal(f->closes, 1);
  assert_int_equal(f->s.result, CAPF_RESULT_TIMEOUT);
  assert_int_equal(capstan_metric_value(g_shared.m.timeouts_handshake), hs + 1);
  fake_free(f);

  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  capf_session_handshake_done(&f->s);
  capf_session_timed_out(&f->s);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->nrecords, 0); /* no device yet */
  fake_free(f);

  double kg = capstan_metric_value(g_shared.m.timeouts_keygen);
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  authenticate(f, NULL);
  capf_session_timed_out(&f->s);
  assert_int_equal(f->s.state, CAPF_ST_ENDING);
  assert_status_record(f, 1, CAPF_STATUS_FAILED, "phone stopped answering during key generation");
  assert_int_equal(capstan_metric_value(g_shared.m.timeouts_keygen), kg + 1);
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->s.result, CAPF_RESULT_TIMEOUT);
  assert_int_equal(g_shared.throttle.active, 1); /* until the connection is gone */
  fake_free(f);
  assert_int_equal(g_shared.throttle.active, 0);

  f = signed_install();
  commit(f, 1, 0);
  capf_session_timed_out(&f->s);
  assert_status_record(f, 2, CAPF_STATUS_FAILED,
                       "phone stopped answering before confirming it stored the certificate");
  commit(f, 2, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  fake_free(f);

  f = fake_new(CAPF_OPERATION_TROUBLESHOOT, CAPSTAN_CAPF_AUTH_NULL_STRING);
  authenticate(f, NULL);
  capf_session_timed_out(&f->s);
  assert_status_record(f, 1, CAPF_STATUS_FAILED,
                       "phone stopped answering before sending its certificate");
  fake_free(f);
}

/* ---- string guessing ----------------------------------------------------- */

static void set_guessing(unsigned max_failures, unsigned delay_max) {
  g_shared.settings.auth_max_failures = max_failures;
  g_shared.settings.auth_delay_max_seconds = delay_max;
  memset(&g_shared.guesses, 0, sizeof(g_shared.guesses));
}

static fake_t *fake_from(const char *peer, unsigned auth_failures) {
  fake_t *f = calloc(1, sizeof(*f));
  assert_non_null(f);
  f->timer_ms = NO_TIMER;
  f->device = (capf_device_t){
      .operation = CAPF_OPERATION_INSTALL,
      .auth_mode = CAPSTAN_CAPF_AUTH_STRING,
      .key_alg = CAPSTAN_KEY_RSA,
      .key_bits = 2048,
      .issuer = -1,
      .auth_failures = auth_failures,
  };
  strcpy(f->device.auth_string, "123456");
  capf_session_init(&f->s, &kFakeHooks, &g_shared, peer);
  capf_session_start(&f->s);
  return f;
}

/* A wrong string: recorded (counted against the device), then held in
 * DELAYING for |delay_ms| on the session's timer, then END_SESSION 7. */
static void wrong_string_delayed(fake_t *f, uint64_t delay_ms) {
  authenticate(f, "654321");
  assert_int_equal(f->s.state, CAPF_ST_ENDING);
  assert_int_equal(f->nrecords, 1);
  capf_record_t *r = f->records[0];
  assert_int_equal(r->auth_string, CAPF_AUTH_STRING_WRONG);
  assert_int_equal(r->auth_max_failures, g_shared.settings.auth_max_failures);
  assert_int_equal(r->count_attempt, 1);
  assert_true(r->awaited);
  commit(f, 0, 0);
  assert_int_equal(f->s.state, CAPF_ST_DELAYING);
  assert_int_equal(f->timer_ms, delay_ms);
  assert_int_equal(f->nsent, 1); /* AUTH_REQUEST only: the answer waits */
  assert_int_equal(f->closes, 0);
  /* Whatever the phone says meanwhile is not heard. */
  auth_response(f, "SEP001122334455", "123456");
  assert_int_equal(f->s.state, CAPF_ST_DELAYING);
  assert_int_equal(f->loads, 1);
  capf_session_timed_out(&f->s);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->s.result, CAPF_RESULT_AUTH_FAILED);
}

static void test_string_guessing(void **state) {
  (void)state;
  set_guessing(3, 30);
  double delayed = capstan_metric_value(g_shared.m.auth_delayed);
  double lockouts = capstan_metric_value(g_shared.m.auth_lockouts);
  double refused = capstan_metric_value(g_shared.m.auth_locked_refused);
  double failures = capstan_metric_value(g_shared.m.auth_failures[CAPSTAN_CAPF_AUTH_STRING]);

  /* One address: 1 s, 2 s, 4 s, ... */
  fake_t *f = fake_from("192.0.2.7", 0);
  wrong_string_delayed(f, 1000);
  fake_free(f);
  f = fake_from("192.0.2.7", 1);
  wrong_string_delayed(f, 2000);
  fake_free(f);
  /* Another address starts at 1 s. */
  f = fake_from("198.51.100.1", 0);
  wrong_string_delayed(f, 1000);
  fake_free(f);
  assert_int_equal(capstan_metric_value(g_shared.m.auth_delayed), delayed + 3);
  assert_int_equal(capstan_metric_value(g_shared.m.auth_lockouts), lockouts);

  /* The device's third wrong string in a row locks it. */
  f = fake_from("192.0.2.7", 2);
  wrong_string_delayed(f, 4000);
  assert_int_equal(capstan_metric_value(g_shared.m.auth_lockouts), lockouts + 1);
  fake_free(f);

  /* Locked: even the right string is refused, unread and at once. */
  f = fake_from("192.0.2.99", 3);
  authenticate(f, "123456");
  assert_int_equal(f->s.state, CAPF_ST_ENDING);
  assert_int_equal(f->nrecords, 1);
  assert_int_equal(f->records[0]->auth_string, CAPF_AUTH_STRING_LOCKED);
  assert_int_equal(f->records[0]->status, CAPF_STATUS_FAILED);
  commit(f, 0, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->nsent, 2); /* no KEY_GEN_REQUEST */
  assert_int_equal(capstan_metric_value(g_shared.m.auth_locked_refused), refused + 1);
  fake_free(f);

  /* The right string below the limit: no delay, the count is reset. */
  f = fake_from("192.0.2.7", 2);
  authenticate(f, "123456");
  assert_int_equal(f->s.state, CAPF_ST_WAIT_KEYGEN);
  assert_int_equal(f->records[0]->kind, CAPF_RECORD_STRING_OK);
  assert_false(f->records[0]->awaited);
  assert_status_record(f, 1, CAPF_STATUS_IN_PROGRESS, NULL);
  fake_free(f);
  /* ... and none when there was nothing to reset. */
  f = fake_from("192.0.2.7", 0);
  authenticate(f, "123456");
  assert_int_equal(f->s.state, CAPF_ST_WAIT_KEYGEN);
  assert_int_equal(f->nrecords, 1);
  assert_status_record(f, 0, CAPF_STATUS_IN_PROGRESS, NULL);
  fake_free(f);

  /* The phone hangs up while it is held: nothing more is recorded. */
  f = fake_from("192.0.2.50", 0);
  authenticate(f, "000000");
  commit(f, 0, 0);
  assert_int_equal(f->s.state, CAPF_ST_DELAYING);
  capf_session_closed(&f->s, CAPSTAN_TLS_CLOSE_PEER_EOF);
  assert_int_equal(f->s.state, CAPF_ST_CLOSING);
  assert_int_equal(f->nrecords, 1);
  assert_int_equal(f->s.result, CAPF_RESULT_AUTH_FAILED);
  fake_free(f);

  /* The server drains: a phone held by the delay is answered at once. */
  f = fake_from("192.0.2.51", 0);
  authenticate(f, "000000");
  commit(f, 0, 0);
  assert_int_equal(f->s.state, CAPF_ST_DELAYING);
  capf_session_draining(&f->s);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  fake_free(f);
  /* A failure still being recorded when the drain begins is not held. */
  f = fake_from("192.0.2.52", 0);
  authenticate(f, "000000");
  assert_int_equal(f->s.state, CAPF_ST_ENDING);
  g_shared.draining = 1;
  capf_session_draining(&f->s);
  assert_int_equal(f->s.state, CAPF_ST_ENDING);
  commit(f, 0, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  g_shared.draining = 0;
  fake_free(f);
  f = fake_from("192.0.2.51", 0); /* any other state goes on */
  capf_session_handshake_done(&f->s);
  capf_session_draining(&f->s);
  assert_int_equal(f->s.state, CAPF_ST_WAIT_AUTH);
  fake_free(f);

  /* The cap, and no delay at all with auth-delay-max-seconds 0. */
  set_guessing(1000, 3);
  for (int i = 0; i < 3; i++) {
    f = fake_from("203.0.113.5", 0);
    wrong_string_delayed(f, i == 0 ? 1000 : i == 1 ? 2000 : 3000);
    fake_free(f);
  }
  set_guessing(3, 0);
  f = fake_from("203.0.113.5", 0);
  authenticate(f, "654321");
  commit(f, 0, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  fake_free(f);
  assert_int_equal(capstan_metric_value(g_shared.m.auth_failures[CAPSTAN_CAPF_AUTH_STRING]),
                   failures + 12);
  set_guessing(0, 0);
}

static void test_guess_table(void **state) {
  (void)state;
  static capf_guess_table_t t;
  unsigned n = 0;
  assert_int_equal(capf_guess_wrong(&t, "a", 100.0, 30, &n), 1000);
  assert_int_equal(n, 1);
  assert_int_equal(capf_guess_wrong(&t, "a", 101.0, 30, &n), 2000);
  assert_int_equal(capf_guess_wrong(&t, "a", 102.0, 30, &n), 4000);
  assert_int_equal(n, 3);
  /* A quiet minute halves the count (3 -> 1), two quarter it. */
  assert_int_equal(capf_guess_wrong(&t, "a", 162.5, 30, &n), 2000);
  assert_int_equal(n, 2);
  assert_int_equal(capf_guess_wrong(&t, "a", 400.0, 30, &n), 1000);
  /* The table stays bounded: many addresses, the oldest makes room. */
  char host[32];
  for (int i = 0; i < CAPF_GUESS_ADDRESSES * 3; i++) {
    snprintf(host, sizeof(host), "10.0.%d.%d", i / 256, i % 256);
    assert_int_equal(capf_guess_wrong(&t, host, 500.0 + i * 0.001, 30, &n), 1000);
  }
  assert_int_equal(t.used, CAPF_GUESS_ADDRESSES);
  /* No delay, nothing counted. */
  assert_int_equal(capf_guess_wrong(&t, "b", 600.0, 0, &n), 0);
  assert_int_equal(n, 0);
  /* The cap holds however many wrong strings. */
  for (int i = 0; i < 100; i++) capf_guess_wrong(&t, "c", 700.0, 30, &n);
  assert_int_equal(capf_guess_wrong(&t, "c", 700.0, 30, &n), 30000);
}

/* ---- protocol errors ----------------------------------------------------- */

static void test_protocol_errors(void **state) {
  (void)state;
  double errors = capstan_metric_value(g_shared.m.protocol_errors);

  /* A message that is not the one the state waits for. */
  fake_t *f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  capf_session_handshake_done(&f->s);
  with_reason(f, CAPSTAN_CAPF_CMD_STORE_CERT_RESPONSE, 1);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->s.result, CAPF_RESULT_PROTOCOL_ERROR);
  assert_int_equal(capstan_metric_value(g_shared.m.protocol_errors), errors + 1);
  fake_free(f);

  /* The wrong session id. */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  capf_session_handshake_done(&f->s);
  capstan_capf_builder_t b;
  assert_int_equal(
      capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_AUTH_RESPONSE, f->s.session_id + 1, 0), 0);
  capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_DEVICE_NAME, "SEP001122334455", 15);
  phone_send(f, &b);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->loads, 0);
  fake_free(f);

  /* The wrong session id when it is the phone's turn mid-operation. */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  authenticate(f, NULL);
  assert_int_equal(
      capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_KEY_GEN_RESPONSE, f->s.session_id + 1, 0), 0);
  capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_PUBLIC_KEY, kPhoneKey, sizeof(kPhoneKey));
  phone_send(f, &b);
  assert_int_equal(f->s.state, CAPF_ST_ENDING);
  assert_status_record(f, 1, CAPF_STATUS_FAILED,
                       "protocol error from the phone during key generation");
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->njobs, 0);
  fake_free(f);

  /* Not CAPF at all. */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  capf_session_handshake_done(&f->s);
  capf_session_received(&f->s, (const uint8_t *)"GET / HTTP/1.1\r\n", 16);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  fake_free(f);

  /* A header announcing more than a phone may send. */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  capf_session_handshake_done(&f->s);
  const uint8_t big[] = {0x55, 0x02, 0, 0, 0, 1, 0xff, 0xff};
  capf_session_received(&f->s, big, sizeof(big));
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  fake_free(f);

  /* A known element that is malformed, though the mode does not need it:
   * a null-string device's AUTH_RESPONSE with a CERTIFICATE whose prefix
   * lies (0x01 0xffff 0x00 0x01, then two bytes). */
  double before = capstan_metric_value(g_shared.m.protocol_errors);
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  capf_session_handshake_done(&f->s);
  begin(f, &b, CAPSTAN_CAPF_CMD_AUTH_RESPONSE);
  capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_DEVICE_NAME, "SEP001122334455", 15);
  static const uint8_t bad_cert[] = {0x01, 0xff, 0xff, 0x00, 0x01, 0xaa, 0xbb};
  capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_CERTIFICATE, bad_cert, sizeof(bad_cert));
  phone_send(f, &b);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->s.result, CAPF_RESULT_PROTOCOL_ERROR);
  assert_int_equal(f->loads, 0);
  assert_int_equal(f->nsent, 2); /* AUTH_REQUEST, END_SESSION: no KEY_GEN_REQUEST */
  assert_int_equal(capstan_metric_value(g_shared.m.protocol_errors), before + 1);
  fake_free(f);

  /* The same mid-operation (a KEY_SIZE of one byte in KEY_GEN_RESPONSE):
   * the device is failed with the reason. */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  authenticate(f, NULL);
  begin(f, &b, CAPSTAN_CAPF_CMD_KEY_GEN_RESPONSE);
  capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_PUBLIC_KEY, kPhoneKey, sizeof(kPhoneKey));
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_KEY_SIZE, 8);
  phone_send(f, &b);
  assert_int_equal(f->s.state, CAPF_ST_ENDING);
  assert_status_record(f, 1, CAPF_STATUS_FAILED,
                       "protocol error from the phone during key generation");
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->njobs, 0);
  fake_free(f);

  /* A malformed SUDI_DATA with certificate authentication: no job. */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_LSC);
  capf_session_handshake_done(&f->s);
  begin(f, &b, CAPSTAN_CAPF_CMD_AUTH_RESPONSE);
  capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_DEVICE_NAME, "SEP001122334455", 15);
  static const uint8_t bad_sudi[] = {0x00, 0x00, 0x01, 0xaa, 0x01};
  capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_SUDI_DATA, bad_sudi, sizeof(bad_sudi));
  phone_send(f, &b);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->njobs, 0);
  fake_free(f);

  /* AUTH_RESPONSE without a device name, and from a newer protocol. */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  capf_session_handshake_done(&f->s);
  simple(f, CAPSTAN_CAPF_CMD_AUTH_RESPONSE);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_string_equal(f->s.device, "");
  fake_free(f);
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  capf_session_handshake_done(&f->s);
  begin(f, &b, CAPSTAN_CAPF_CMD_AUTH_RESPONSE);
  capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_DEVICE_NAME, "SEP001122334455", 15);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_VERSION, CAPSTAN_CAPF_PROTOCOL_VERSION + 1);
  phone_send(f, &b);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->s.result, CAPF_RESULT_PROTOCOL_ERROR);
  fake_free(f);

  /* Speaking while the server works: the session ends at once and the
   * record of the interrupted step follows on the side. */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  authenticate(f, NULL);
  keygen_response(f);
  assert_int_equal(f->s.state, CAPF_ST_SIGNING);
  keygen_response(f);
  assert_status_record(f, 1, CAPF_STATUS_FAILED,
                       "protocol error from the phone while the server was working");
  assert_false(f->records[1]->awaited);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  sign_ok(f->jobs[0]);
  work_done(f, 0); /* late: the session is closing */
  assert_int_equal(f->nrecords, 2);
  assert_int_equal(f->nsent, 3);
  fake_free(f);

  /* A wrong message when it is the phone's turn: recorded first. */
  f = fake_new(CAPF_OPERATION_DELETE, CAPSTAN_CAPF_AUTH_NULL_STRING);
  authenticate(f, NULL);
  keygen_response(f);
  assert_int_equal(f->s.state, CAPF_ST_ENDING);
  assert_status_record(f, 1, CAPF_STATUS_FAILED,
                       "protocol error from the phone before confirming the delete");
  assert_int_equal(f->nsent, 2);
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  fake_free(f);
}

/* A message split in every place still reads as one. */
static void test_split_reads(void **state) {
  (void)state;
  fake_t *f = fake_new(CAPF_OPERATION_DELETE, CAPSTAN_CAPF_AUTH_STRING);
  capf_session_handshake_done(&f->s);
  capstan_capf_builder_t b;
  begin(f, &b, CAPSTAN_CAPF_CMD_AUTH_RESPONSE);
  capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_DEVICE_NAME, "SEP001122334455", 15);
  capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_AUTH_PASSWORD, "123456", 6);
  uint8_t *msg = NULL;
  size_t len = 0;
  assert_int_equal(capstan_capf_builder_finish(&b, &msg, &len), 0);
  for (size_t i = 0; i < len; i++) {
    assert_int_equal(f->s.state, CAPF_ST_WAIT_AUTH);
    capf_session_received(&f->s, msg + i, 1);
  }
  OPENSSL_free(msg);
  assert_int_equal(f->s.state, CAPF_ST_WAIT_DELETE);
  assert_null(f->s.rx);
  fake_free(f);
}

/* ---- hang-ups and shutdown ----------------------------------------------- */

static void test_peer_hangs_up(void **state) {
  (void)state;
  double failed = capstan_metric_value(g_shared.m.handshakes_failed);
  fake_t *f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  capf_session_closed(&f->s, CAPSTAN_TLS_CLOSE_HANDSHAKE_FAILED);
  assert_int_equal(f->s.result, CAPF_RESULT_TLS_FAILED);
  assert_int_equal(capstan_metric_value(g_shared.m.handshakes_failed), failed + 1);
  assert_int_equal(f->nsent, 0);
  fake_free(f);

  /* Mid-operation: the device keeps the step it stopped at. */
  double dropped = outcome_count(CAPF_OP_INSTALL, CAPF_RESULT_DISCONNECTED);
  f = signed_install();
  commit(f, 1, 0);
  assert_int_equal(f->s.state, CAPF_ST_WAIT_STORE);
  capf_session_closed(&f->s, CAPSTAN_TLS_CLOSE_PEER_EOF);
  assert_status_record(f, 2, CAPF_STATUS_FAILED,
                       "phone disconnected before confirming it stored the certificate");
  assert_int_equal(f->s.result, CAPF_RESULT_DISCONNECTED);
  assert_int_equal(outcome_count(CAPF_OP_INSTALL, CAPF_RESULT_DISCONNECTED), dropped + 1);
  assert_int_equal(f->nsent, 3); /* nothing sent to a phone that left */
  fake_free(f);

  /* After its final answer: nothing about the operation changes. */
  f = fake_new(CAPF_OPERATION_DELETE, CAPSTAN_CAPF_AUTH_NULL_STRING);
  authenticate(f, NULL);
  with_reason(f, CAPSTAN_CAPF_CMD_DELETE_CERT_RESPONSE, CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE);
  capf_session_closed(&f->s, CAPSTAN_TLS_CLOSE_PEER_EOF);
  assert_int_equal(f->nrecords, 2); /* IN_PROGRESS, DELETED: no failure */
  commit(f, 1, 0);                  /* late commit: no END_SESSION to a closed session */
  assert_int_equal(f->nsent, 2);
  fake_free(f);

  /* While the outcome is recorded: it stays what it was. */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_STRING);
  authenticate(f, "000000");
  capf_session_closed(&f->s, CAPSTAN_TLS_CLOSE_PEER_EOF);
  assert_int_equal(f->s.result, CAPF_RESULT_AUTH_FAILED);
  assert_int_equal(f->nrecords, 1);
  fake_free(f);
}

static void test_abort_and_send_failure(void **state) {
  (void)state;
  fake_t *f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  authenticate(f, NULL);
  capf_session_abort(&f->s, CAPF_RESULT_SHUTDOWN);
  assert_int_equal(f->s.state, CAPF_ST_CLOSING);
  assert_int_equal(f->closes, 1);
  assert_int_equal(f->nsent, 2); /* no END_SESSION */
  assert_int_equal(f->s.result, CAPF_RESULT_SHUTDOWN);
  assert_int_equal(f->timer_ms, NO_TIMER);
  /* Cut off in key generation: the device says the server stopped. */
  assert_int_equal(f->nrecords, 2);
  assert_status_record(f, 1, CAPF_STATUS_FAILED, CAPSTAN_REASON_INTERRUPTED);
  capf_session_timed_out(&f->s); /* a late timer changes nothing */
  assert_int_equal(f->nsent, 2);
  fake_free(f);

  /* Before authentication nothing is under way: nothing to record. */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  capf_session_handshake_done(&f->s);
  capf_session_abort(&f->s, CAPF_RESULT_SHUTDOWN);
  assert_int_equal(f->nrecords, 0);
  fake_free(f);

  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  f->send_fails = 1;
  capf_session_handshake_done(&f->s);
  assert_int_equal(f->s.state, CAPF_ST_CLOSING);
  assert_int_equal(f->s.result, CAPF_RESULT_SERVER_ERROR);
  fake_free(f);

  /* The store cannot take the record an ending waits for: end at once. */
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_STRING);
  f->record_fails = 1;
  authenticate(f, "999999");
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->s.result, CAPF_RESULT_AUTH_FAILED);
  fake_free(f);
}

/* ---- external issuers (external-ca.md, capf-protocol.md extension) ------- */

static const uint8_t kCsr[] = {0x30, 0x0a, 'c', 's', 'r', 1, 2, 3, 4, 5, 6, 7};

static void sign_cert_response(fake_t *f, uint8_t reason, int with_request) {
  capstan_capf_builder_t b;
  begin(f, &b, CAPSTAN_CAPF_CMD_SIGN_CERT_RESPONSE);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, reason);
  if (with_request)
    capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_CERT_REQUEST, kCsr, sizeof(kCsr));
  phone_send(f, &b);
}

/* Up to SIGN_CERT_REQUEST: an install with |issuer|, key generated. */
static fake_t *external_install(unsigned issuer) {
  g_shared.settings.issuer = issuer;
  g_shared.settings.ca_phone_wait_seconds = 120;
  fake_t *f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  authenticate(f, NULL);
  keygen_response(f);
  assert_int_equal(f->njobs, 0); /* nothing is signed here */
  sent(f, 2, CAPSTAN_CAPF_CMD_SIGN_CERT_REQUEST);
  assert_int_equal(f->s.state, CAPF_ST_WAIT_CSR);
  assert_int_equal(f->timer_ms, 20000); /* the step timer */
  assert_int_equal(g_shared.throttle.active, 0);
  return f;
}

/* The phone's request, checked by the worker with |status|/|why|. */
static void csr_checked(fake_t *f, int status, const char *why) {
  sign_cert_response(f, CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE, 1);
  assert_int_equal(f->s.state, CAPF_ST_CHECKING_CSR);
  assert_int_equal(f->njobs, 1);
  capf_job_t *j = f->jobs[0];
  assert_int_equal(j->kind, CAPF_JOB_CHECK_CSR);
  assert_memory_equal(j->u.csr.csr_der, kCsr, sizeof(kCsr));
  assert_memory_equal(j->u.csr.phone_spki, kPhoneKey, sizeof(kPhoneKey));
  assert_int_equal(j->u.csr.key_bits, 2048);
  j->status = status;
  j->why = why;
  work_done(f, 0);
}

/* Asserts the last message is RETRY_LATER, sent with the close. */
static void assert_retry_later(fake_t *f) {
  capstan_capf_msg_t m = sent(f, f->nsent - 1, CAPSTAN_CAPF_CMD_RETRY_LATER);
  uint16_t delay = 0;
  assert_int_equal(capstan_capf_get_retry_delay(&m, &delay), 0);
  assert_int_equal(delay, 120);
  assert_true(f->held);
  assert_int_equal(f->closes, 1);
  assert_int_equal(f->s.state, CAPF_ST_CLOSING);
}

static void test_external_offline_request(void **state) {
  (void)state;
  double ok = capstan_metric_value(g_shared.m.csr_ok);
  fake_t *f = external_install(CAPSTAN_ISSUER_OFFLINE);
  simple(f, CAPSTAN_CAPF_CMD_REQUEST_IN_PROGRESS); /* allowed while it makes the request */
  csr_checked(f, 0, NULL);
  assert_int_equal(capstan_metric_value(g_shared.m.csr_ok), ok + 1);
  /* Kept as pending before the phone hears anything. */
  assert_int_equal(f->s.state, CAPF_ST_ENDING);
  assert_int_equal(f->nrecords, 2);
  capf_record_t *r = f->records[1];
  assert_int_equal(r->kind, CAPF_RECORD_CSR_PENDING);
  assert_true(r->awaited);
  assert_int_equal(r->der_len, sizeof(kCsr));
  assert_memory_equal(r->der, kCsr, sizeof(kCsr));
  assert_int_equal(r->spki_len, sizeof(kPhoneKey));
  assert_int_equal(r->issuer, CAPSTAN_ISSUER_OFFLINE);
  assert_non_null(strstr(r->reason, "offline CA"));
  assert_int_equal(f->nsent, 3);
  commit(f, 1, 0);
  assert_retry_later(f);
  assert_int_equal(f->s.result, CAPF_RESULT_RETRY_LATER);
  assert_int_equal(f->ca_submits, 0);
  fake_free(f);

  /* Its next session, the request still pending: RETRY_LATER at once, no
   * new key (that would make the exported request stale). */
  g_shared.settings.issuer = CAPSTAN_ISSUER_OFFLINE;
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  f->device.request_pending = 1;
  authenticate(f, NULL);
  assert_int_equal(f->nrecords, 0);
  assert_retry_later(f);
  fake_free(f);

  /* A device of its own issuer (--issuer) follows it, not the setting. */
  g_shared.settings.issuer = CAPSTAN_ISSUER_CAPF;
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  f->device.issuer = CAPSTAN_ISSUER_OFFLINE;
  authenticate(f, NULL);
  keygen_response(f);
  sent(f, 2, CAPSTAN_CAPF_CMD_SIGN_CERT_REQUEST);
  fake_free(f);
  g_shared.settings.issuer = CAPSTAN_ISSUER_OFFLINE;
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  f->device.issuer = CAPSTAN_ISSUER_CAPF;
  authenticate(f, NULL);
  keygen_response(f);
  assert_int_equal(f->njobs, 1); /* signed by the CAPF */
  assert_int_equal(f->jobs[0]->kind, CAPF_JOB_ISSUE);
  fake_free(f);

  /* The issuer is back at capf: the pending request no longer holds it. */
  g_shared.settings.issuer = CAPSTAN_ISSUER_CAPF;
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  f->device.request_pending = 1;
  authenticate(f, NULL);
  sent(f, 1, CAPSTAN_CAPF_CMD_KEY_GEN_REQUEST);
  fake_free(f);
}

static void test_external_phone_without_request(void **state) {
  (void)state;
  const char *cannot = "phone cannot make a certificate request";
  double none = capstan_metric_value(g_shared.m.csr_none);
  /* REASON=7 alone. */
  fake_t *f = external_install(CAPSTAN_ISSUER_OFFLINE);
  sign_cert_response(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT, 0);
  assert_status_record(f, 1, CAPF_STATUS_FAILED, cannot);
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  fake_free(f);
  /* REASON=1 without the request. */
  f = external_install(CAPSTAN_ISSUER_EST);
  sign_cert_response(f, CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE, 0);
  assert_status_record(f, 1, CAPF_STATUS_FAILED, cannot);
  fake_free(f);
  /* Another command. */
  f = external_install(CAPSTAN_ISSUER_EST);
  keygen_response(f);
  assert_status_record(f, 1, CAPF_STATUS_FAILED, cannot);
  fake_free(f);
  /* Nothing before the step timer: also counted as a step timeout. */
  double step = capstan_metric_value(g_shared.m.timeouts_step);
  f = external_install(CAPSTAN_ISSUER_MSCS);
  capf_session_timed_out(&f->s);
  assert_int_equal(capstan_metric_value(g_shared.m.timeouts_step), step + 1);
  assert_status_record(f, 1, CAPF_STATUS_FAILED, cannot);
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->ca_submits, 0); /* nothing went to a CA */
  fake_free(f);
  assert_int_equal(capstan_metric_value(g_shared.m.csr_none), none + 4);

  /* A request that fails a check: its reason, END 7, no CA. */
  double rejected = capstan_metric_value(g_shared.m.csr_rejected);
  f = external_install(CAPSTAN_ISSUER_EST);
  csr_checked(f, CAPSTAN_EACCES, "certificate request is for another key");
  assert_status_record(f, 1, CAPF_STATUS_FAILED, "certificate request is for another key");
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->ca_submits, 0);
  assert_int_equal(capstan_metric_value(g_shared.m.csr_rejected), rejected + 1);
  fake_free(f);

  /* The phone leaves while it makes the request. */
  f = external_install(CAPSTAN_ISSUER_OFFLINE);
  capf_session_closed(&f->s, CAPSTAN_TLS_CLOSE_PEER_EOF);
  assert_status_record(f, 1, CAPF_STATUS_FAILED,
                       "phone disconnected before sending its certificate request");
  fake_free(f);
}

/* A certificate with a real structure (the session reads its validity and
 * public key), made once. */
static uint8_t *g_cert;
static size_t g_cert_len;
static void make_cert(void) {
  if (g_cert != NULL) return;
  capstan_identity_t id = {0};
  assert_int_equal(capstan_pki_create_capf(NULL, &id), 0);
  assert_int_equal(capstan_pki_cert_to_der(id.cert, &g_cert, &g_cert_len), 0);
  capstan_identity_cleanup(&id);
}

static void ca_answer(fake_t *f, capstan_ca_outcome_t outcome, const char *reason, int64_t retry_at,
                      const char *request_id) {
  capstan_ca_result_t r = {.outcome = outcome, .retry_at = retry_at};
  snprintf(r.reason, sizeof(r.reason), "%s", reason);
  snprintf(r.request_id, sizeof(r.request_id), "%s", request_id);
  if (outcome == CAPSTAN_CA_ISSUED) {
    make_cert();
    r.cert_der = g_cert;
    r.cert_len = g_cert_len;
  }
  capf_session_ca_answered(&f->s, &r);
}

static void test_external_online_issued(void **state) {
  (void)state;
  fake_t *f = external_install(CAPSTAN_ISSUER_EST);
  csr_checked(f, 0, NULL);
  assert_int_equal(f->s.state, CAPF_ST_ASKING_CA);
  assert_int_equal(f->ca_submits, 1);
  assert_memory_equal(f->ca_csr, kCsr, sizeof(kCsr));
  assert_string_equal(f->ca_request_id, "");
  assert_true(f->timer_ms > 118000 && f->timer_ms <= 120000); /* the phone's wait */
  simple(f, CAPSTAN_CAPF_CMD_REQUEST_IN_PROGRESS);
  assert_int_equal(f->s.state, CAPF_ST_ASKING_CA);

  ca_answer(f, CAPSTAN_CA_ISSUED, "", 0, "");
  /* Recorded before the phone sees it, keyed as capstan_csr_cert_key says. */
  assert_int_equal(f->s.state, CAPF_ST_RECORDING);
  assert_int_equal(f->nsent, 3);
  capf_record_t *r = f->records[1];
  assert_int_equal(r->kind, CAPF_RECORD_ISSUED);
  assert_true(r->awaited);
  assert_int_equal(r->der_len, g_cert_len);
  assert_memory_equal(r->der, g_cert, g_cert_len);
  uint8_t key[CAPSTAN_SERIAL_LEN];
  capstan_csr_cert_key(g_cert, g_cert_len, key);
  assert_memory_equal(r->serial, key, sizeof(key));
  char md5[33];
  capstan_pki_md5hash(g_cert, g_cert_len, md5);
  assert_string_equal(r->md5, md5);
  assert_true(r->not_after > 0);
  commit(f, 1, 0);
  capstan_capf_msg_t m = sent(f, 3, CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST);
  uint8_t type = 0;
  capstan_capf_slice_t der;
  assert_int_equal(capstan_capf_get_certificate(&m, &type, &der), 0);
  assert_int_equal(der.len, g_cert_len);
  with_reason(f, CAPSTAN_CAPF_CMD_STORE_CERT_RESPONSE, CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE);
  r = f->records[2];
  assert_int_equal(r->kind, CAPF_RECORD_INSTALLED);
  assert_false(r->handover);
  assert_int_equal(r->spki_len, sizeof(kPhoneKey));
  commit(f, 2, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE);
  assert_int_equal(f->s.result, CAPF_RESULT_OK);
  assert_int_equal(f->ca_cancels, 0);
  fake_free(f);
}

static void test_external_online_pending_and_failures(void **state) {
  (void)state;
  /* Pending, due within the phone's wait: asked again in the session. */
  fake_t *f = external_install(CAPSTAN_ISSUER_MSCS);
  csr_checked(f, 0, NULL);
  ca_answer(f, CAPSTAN_CA_PENDING, "CA: pending", (int64_t)time(NULL) + 2, "42");
  assert_int_equal(f->s.state, CAPF_ST_CA_RETRY);
  assert_true(f->timer_ms <= 2000 && f->timer_ms >= 900);
  capf_session_timed_out(&f->s);
  assert_int_equal(f->s.state, CAPF_ST_ASKING_CA);
  assert_int_equal(f->ca_submits, 2);
  assert_string_equal(f->ca_request_id, "42");
  /* Then the CA says no: failed with its words, and the phone comes back. */
  ca_answer(f, CAPSTAN_CA_REFUSED, "CA refused: Denied by Policy Module", 0, "");
  assert_status_record(f, 1, CAPF_STATUS_FAILED, "CA refused: Denied by Policy Module");
  commit(f, 1, 0);
  assert_retry_later(f);
  assert_int_equal(f->s.result, CAPF_RESULT_FAILED);
  fake_free(f);

  /* Pending beyond the wait: kept for the poller with its request id. */
  f = external_install(CAPSTAN_ISSUER_MSCS);
  csr_checked(f, 0, NULL);
  int64_t later = (int64_t)time(NULL) + 3600;
  ca_answer(f, CAPSTAN_CA_PENDING, "CA: request 77 pending", later, "77");
  capf_record_t *r = f->records[1];
  assert_int_equal(r->kind, CAPF_RECORD_CSR_PENDING);
  assert_string_equal(r->ca_request_id, "77");
  assert_int_equal(r->next_poll_at, later);
  assert_int_equal(r->issuer, CAPSTAN_ISSUER_MSCS);
  commit(f, 1, 0);
  assert_retry_later(f);
  assert_int_equal(f->s.result, CAPF_RESULT_RETRY_LATER);
  fake_free(f);

  /* The CA does not answer within the phone's wait: dropped, kept pending. */
  f = external_install(CAPSTAN_ISSUER_EST);
  csr_checked(f, 0, NULL);
  capf_session_timed_out(&f->s);
  assert_int_equal(f->ca_cancels, 1);
  assert_int_equal(f->records[1]->kind, CAPF_RECORD_CSR_PENDING);
  ca_answer(f, CAPSTAN_CA_ISSUED, "", 0, ""); /* a late answer is nobody's */
  commit(f, 1, 0);
  assert_retry_later(f);
  fake_free(f);

  /* Unavailable, timed out, a bad certificate: failed with the reason. */
  const capstan_ca_outcome_t bad[] = {CAPSTAN_CA_UNAVAILABLE, CAPSTAN_CA_TIMED_OUT,
                                      CAPSTAN_CA_BAD_CERT};
  const char *why[] = {"CA unavailable", "CA timed out",
                       "CA returned a certificate for another key"};
  for (int i = 0; i < 3; i++) {
    f = external_install(CAPSTAN_ISSUER_EST);
    csr_checked(f, 0, NULL);
    ca_answer(f, bad[i], why[i], 0, "");
    assert_status_record(f, 1, CAPF_STATUS_FAILED, why[i]);
    assert_int_equal(f->nsent, 3); /* no certificate, nothing yet */
    commit(f, 1, 0);
    assert_retry_later(f);
    fake_free(f);
  }

  /* No CA configured. */
  f = external_install(CAPSTAN_ISSUER_EST);
  f->ca_fails = 1;
  csr_checked(f, 0, NULL);
  assert_status_record(f, 1, CAPF_STATUS_FAILED,
                       "CA unavailable: no CA is configured (capstan ca set)");
  fake_free(f);

  /* The phone leaves while the CA is asked: the request is dropped. */
  f = external_install(CAPSTAN_ISSUER_EST);
  csr_checked(f, 0, NULL);
  capf_session_closed(&f->s, CAPSTAN_TLS_CLOSE_PEER_EOF);
  assert_int_equal(f->ca_cancels, 1);
  assert_status_record(f, 1, CAPF_STATUS_FAILED, "phone disconnected while the CA was asked");
  fake_free(f);

  /* An online CA takes RSA keys only: no key generation for an EC device. */
  g_shared.settings.issuer = CAPSTAN_ISSUER_EST;
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  f->device.key_alg = CAPSTAN_KEY_EC;
  f->device.key_bits = 256;
  authenticate(f, NULL);
  assert_status_record(f, 1, CAPF_STATUS_FAILED, "EC keys are not supported with an online CA");
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->nsent, 2); /* AUTH_REQUEST, END_SESSION */
  fake_free(f);
  g_shared.settings.issuer = CAPSTAN_ISSUER_CAPF;
}

static void test_external_handover(void **state) {
  (void)state;
  make_cert();
  g_shared.settings.issuer = CAPSTAN_ISSUER_OFFLINE;
  /* Stored: INSTALLED, marked as a hand-over. */
  fake_t *f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  f->device.handover_der = malloc(g_cert_len);
  memcpy(f->device.handover_der, g_cert, g_cert_len);
  f->device.handover_len = g_cert_len;
  memset(f->device.handover_key, 0x5a, sizeof(f->device.handover_key));
  strcpy(f->device.handover_md5, "00112233445566778899aabbccddeeff");
  authenticate(f, NULL);
  capstan_capf_msg_t m = sent(f, 1, CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST);
  uint8_t type = 0;
  capstan_capf_slice_t der;
  assert_int_equal(capstan_capf_get_certificate(&m, &type, &der), 0);
  assert_int_equal(der.len, g_cert_len);
  assert_memory_equal(der.data, g_cert, g_cert_len);
  assert_int_equal(f->s.state, CAPF_ST_WAIT_STORE);
  with_reason(f, CAPSTAN_CAPF_CMD_STORE_CERT_RESPONSE, CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE);
  capf_record_t *r = f->records[1];
  assert_int_equal(r->kind, CAPF_RECORD_INSTALLED);
  assert_true(r->handover);
  assert_int_equal(r->serial[0], 0x5a);
  assert_string_equal(r->md5, "00112233445566778899aabbccddeeff");
  assert_true(r->spki_len > 0);
  commit(f, 1, 0);
  assert_ended(f, CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE);
  fake_free(f);

  /* Refused: the old request goes stale and a new key is asked for in the
   * same session. */
  double refused = capstan_metric_value(g_shared.m.handovers_refused);
  f = fake_new(CAPF_OPERATION_INSTALL, CAPSTAN_CAPF_AUTH_NULL_STRING);
  f->device.handover_der = malloc(g_cert_len);
  memcpy(f->device.handover_der, g_cert, g_cert_len);
  f->device.handover_len = g_cert_len;
  authenticate(f, NULL);
  with_reason(f, CAPSTAN_CAPF_CMD_STORE_CERT_RESPONSE, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  assert_int_equal(f->s.state, CAPF_ST_RESTARTING);
  assert_int_equal(f->records[1]->kind, CAPF_RECORD_HANDOVER_REFUSED);
  assert_true(f->records[1]->awaited);
  assert_int_equal(f->nsent, 2);
  assert_int_equal(capstan_metric_value(g_shared.m.handovers_refused), refused + 1);
  commit(f, 1, 0);
  sent(f, 2, CAPSTAN_CAPF_CMD_KEY_GEN_REQUEST);
  assert_int_equal(f->s.state, CAPF_ST_WAIT_KEYGEN);
  keygen_response(f);
  sent(f, 3, CAPSTAN_CAPF_CMD_SIGN_CERT_REQUEST);
  fake_free(f);
  g_shared.settings.issuer = CAPSTAN_ISSUER_CAPF;
  free(g_cert);
  g_cert = NULL;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_install_by_auth_string),
      cmocka_unit_test(test_install_ec_key_request),
      cmocka_unit_test(test_install_failures),
      cmocka_unit_test(test_delete),
      cmocka_unit_test(test_troubleshoot),
      cmocka_unit_test(test_nothing_to_do),
      cmocka_unit_test(test_deadline_passed),
      cmocka_unit_test(test_unknown_device_and_store_error),
      cmocka_unit_test(test_auth_failures),
      cmocka_unit_test(test_auth_by_certificate),
      cmocka_unit_test(test_device_read_later),
      cmocka_unit_test(test_throttle_admits_in_turn),
      cmocka_unit_test(test_throttle_retry_later),
      cmocka_unit_test(test_refused_over_limit),
      cmocka_unit_test(test_timeouts),
      cmocka_unit_test(test_protocol_errors),
      cmocka_unit_test(test_string_guessing),
      cmocka_unit_test(test_guess_table),
      cmocka_unit_test(test_split_reads),
      cmocka_unit_test(test_peer_hangs_up),
      cmocka_unit_test(test_abort_and_send_failure),
      cmocka_unit_test(test_external_offline_request),
      cmocka_unit_test(test_external_phone_without_request),
      cmocka_unit_test(test_external_online_issued),
      cmocka_unit_test(test_external_online_pending_and_failures),
      cmocka_unit_test(test_external_handover),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
